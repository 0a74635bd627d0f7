/* cmd_render.c - `gptoss render`: a harmony conversation in JSON (the form of
 * tests/fixtures/harmony/cases.jsonl) to the prompt ids the model is fed, printed
 * space-separated on one line; --text prints the rendered text instead. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void render_usage(void) {
    printf("usage: gptoss render [-m DIR | --tokenizer FILE] [--text] CONV.json\n"
           "\n"
           "Renders one harmony conversation to the token ids of its prompt, ending with\n"
           "<|start|>assistant, and prints them on one line separated by spaces.\n"
           "CONV.json (\"-\" for stdin) holds one object:\n"
           "  {\"messages\": [{\"role\": \"system\", \"reasoning_effort\": \"low\",\n"
           "                 \"current_date\": \"2025-06-28\"},\n"
           "                {\"role\": \"developer\", \"instructions\": \"...\"},\n"
           "                {\"role\": \"user\", \"content\": \"...\"},\n"
           "                {\"role\": \"assistant\", \"channel\": \"final\", \"content\": \"...\"}],\n"
           "   \"auto_drop_analysis\": true}\n"
           "Messages may also carry channel, recipient, content_type; tool messages a name.\n"
           "\n"
           "  -m, --model DIR     use DIR/tokenizer.json (default: $GPT_DIR, then $HF_MODEL,\n"
           "                      when set; then $GPTOSS_TOKENIZER, then the copy that\n"
           "                      'make deps' installs)\n"
           "  --tokenizer FILE    use this tokenizer.json\n"
           "  --text              print the rendered text (special tokens as <|...|>)\n"
           "  -h, --help          show this help\n");
}

/* Find and load the tokenizer.  A model folder is consulted only when -m is given
 * or $GPT_DIR/$HF_MODEL is set; an unusable folder from the environment is
 * skipped (rendering needs no weights), while a bad -m is an error. */
int cmd_render(int argc, char **argv) {
    const char *model_arg = NULL, *tok_arg = NULL, *conv_path = NULL;
    int as_text = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            render_usage();
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(model_arg = cli_value("render", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(tok_arg = cli_value("render", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--text")) {
            as_text = 1;
        } else if (a[0] == '-' && a[1] != 0) {
            return cli_usage_error("render", "unknown option %s", a);
        } else if (conv_path) {
            return cli_usage_error("render", "only one conversation file may be given");
        } else {
            conv_path = a;
        }
    }
    if (!conv_path) return cli_usage_error("render", "no conversation file given");

    int rc = CLI_EXIT_FAIL;
    gpo_tokenizer *tok = NULL;
    struct gpo_conv conv;
    struct gpo_ids ids = {0};
    struct gpo_str text = {0};
    enum gpo_status s;
    gpo_conv_init(&conv);
    size_t len = 0;
    char *json = cli_read_file(conv_path, &len);
    if (!json) goto done;
    /* Parse before loading the tokenizer, so bad input fails fast. */
    if ((s = gpo_conv_from_json(json, len, &conv)) != GPO_OK) {
        rc = cli_status(s, "cannot read the conversation in %s", conv_path);
        goto done;
    }
    if (cli_open_tokenizer(model_arg, tok_arg, &tok)) goto done;
    if ((s = gpo_harmony_render(tok, &conv, &ids)) != GPO_OK) {
        rc = cli_status(s, "cannot render %s", conv_path);
        goto done;
    }
    if (as_text) {
        if ((s = gpo_tokenizer_decode(tok, ids.ids, ids.n, &text)) != GPO_OK) {
            rc = cli_status(s, "cannot decode the rendered ids");
            goto done;
        }
        fwrite(text.s, 1, text.n, stdout);
        fputc('\n', stdout);
    } else {
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
        printf("\n");
    }
    if (fflush(stdout) != 0) {
        rc = cli_error("cannot write the output");
        goto done;
    }
    rc = 0;
done:
    free(json);
    gpo_str_free(&text);
    gpo_ids_free(&ids);
    gpo_conv_free(&conv);
    gpo_tokenizer_free(tok);
    return rc;
}
