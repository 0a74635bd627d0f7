/* cmd_convert.c - `gptoss convert SRC DST.gguf`: a safetensors checkpoint (HF or
 * original/ layout) written as a GGUF file with the names, types and metadata of
 * llama.cpp's converter, so llama.cpp and Ollama load it.  Progress on stderr. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "convert.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: gptoss convert SRC DST.gguf [options]\n"
            "\n"
            "Write the checkpoint in folder SRC (HF layout, original/ layout, or a folder\n"
            "holding only original/) as one GGUF file, as llama.cpp's converter would: the\n"
            "experts stay MXFP4 (repacked into GGML blocks, gate and up rows separated),\n"
            "norms, biases, sinks and the router become F32, and the tokenizer goes into\n"
            "the metadata.  The file is written as DST.gguf.tmp and renamed when complete.\n"
            "\n"
            "  --dense TYPE      type of the embedding, unembedding and attention matrices:\n"
            "                    bf16 or q8 (Q8_0, as ggml-org's files); default: as stored\n"
            "  --tokenizer FILE  tokenizer.json to embed (default: SRC's, else the pinned copy)\n"
            "  --force           replace DST if it exists\n"
            "  --quiet, -q       no progress messages\n"
            "  --help, -h        this help\n");
}

int cmd_convert(int argc, char **argv) {
    const char *cmd = "convert";
    struct gpo_convert_opts o = {0};
    const char *pos[2] = {NULL, NULL};
    int n_pos = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (cli_is(a, "--dense")) {
            const char *v = cli_value(cmd, argc, argv, &i);
            if (!v) return CLI_EXIT_USAGE;
            if (!gpo_dense_parse(v, &o.dense))
                return cli_usage_error(cmd, "--dense takes bf16 or q8, not '%s'", v);
        } else if (cli_is(a, "--tokenizer")) {
            if (!(o.tokenizer_path = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--force")) {
            o.force = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(cmd, "unknown option '%s'", a);
        } else if (n_pos < 2) {
            pos[n_pos++] = a;
        } else {
            return cli_usage_error(cmd, "one source and one destination expected, '%s' is extra",
                                   a);
        }
    }
    if (n_pos < 2) return cli_usage_error(cmd, "SRC and DST.gguf are required");
    o.src_dir = pos[0];
    o.dst_path = pos[1];
    if (quiet) gpo_set_log_level(GPO_LOG_WARN);
    enum gpo_status s = gpo_convert_gguf(&o);
    if (s != GPO_OK) return cli_status(s, "convert %s to %s failed", o.src_dir, o.dst_path);
    return 0;
}
