/* cmd_tokenize.c - `gptoss tokenize` (UTF-8 text on stdin to token ids, or JSON
 * lines {"text": ...} to {"ids": [...]}) and `gptoss detokenize` (ids to the exact
 * text bytes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"

static void tokenize_usage(void) {
    printf("usage: gptoss tokenize [-m DIR | --tokenizer FILE] [--special] [--jsonl]\n"
           "\n"
           "Reads UTF-8 text from stdin exactly as given (a trailing newline is text too)\n"
           "and prints its token ids on one line, separated by spaces.\n"
           "\n"
           "  -m, --model DIR     use DIR/tokenizer.json (default: $GPT_DIR, then $HF_MODEL,\n"
           "                      when set; then $GPTOSS_TOKENIZER, then the copy that\n"
           "                      'make deps' installs)\n"
           "  --tokenizer FILE    use this tokenizer.json\n"
           "  --special           turn special-token strings such as <|start|> into their\n"
           "                      ids (default: every byte is ordinary text)\n"
           "  --jsonl             read one JSON object {\"text\": \"...\"} per line and write\n"
           "                      {\"ids\": [...]} per line\n"
           "  -h, --help          show this help\n");
}

static void detokenize_usage(void) {
    printf("usage: gptoss detokenize [-m DIR | --tokenizer FILE] [--ids \"1 2 3\"]\n"
           "\n"
           "Writes the text bytes of token ids to stdout, with nothing added.  The ids\n"
           "come from --ids, else from stdin, separated by spaces, commas or newlines.\n"
           "\n"
           "  -m, --model DIR     use DIR/tokenizer.json (default: $GPT_DIR, then $HF_MODEL,\n"
           "                      when set; then $GPTOSS_TOKENIZER, then the copy that\n"
           "                      'make deps' installs)\n"
           "  --tokenizer FILE    use this tokenizer.json\n"
           "  --ids LIST          the ids, e.g. \"200006 1428 200008\" or \"1,2,3\"\n"
           "  -h, --help          show this help\n");
}

/* Find and load the tokenizer.  A model folder is consulted only when -m is given or
 * $GPT_DIR/$HF_MODEL is set; an unusable folder from the environment is skipped
 * (tokenizing needs no weights), while a bad -m is an error. */
/* ------------------------------------------------------------------------- */
/* JSON strings with embedded NULs.  cJSON hands strings back NUL-terminated, which
 * would cut "a\u0000b" short, so the "text" member is decoded here (after cJSON has
 * checked that the line is well-formed JSON). */

static int hex4(const char *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d == 16) return 0;
        *v = *v * 16 + d;
    }
    return 1;
}

/* Decode the string literal at *pp (at its quote) into out; *pp ends after it.
 * Returns 0 on a malformed escape or an unpaired surrogate. */
static int json_string(const char **pp, struct gpo_str *out) {
    const char *p = *pp + 1;
    for (;;) {
        const char *q = p;
        while (*q && *q != '"' && *q != '\\') q++;
        if (gpo_str_append(out, p, (size_t)(q - p)) != GPO_OK) return 0;
        p = q;
        if (*p == '"') break;
        if (*p != '\\') return 0;
        char e = p[1], c;
        p += 2;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (!hex4(p, &u)) return 0;
            p += 4;
            if (u >= 0xdc00 && u <= 0xdfff) return 0;
            if (u >= 0xd800 && u <= 0xdbff) {
                if (p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return 0;
                p += 6;
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            }
            char b[4];
            size_t n;
            if (u < 0x80) {
                b[0] = (char)u;
                n = 1;
            } else if (u < 0x800) {
                b[0] = (char)(0xc0 | (u >> 6));
                b[1] = (char)(0x80 | (u & 0x3f));
                n = 2;
            } else if (u < 0x10000) {
                b[0] = (char)(0xe0 | (u >> 12));
                b[1] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[2] = (char)(0x80 | (u & 0x3f));
                n = 3;
            } else {
                b[0] = (char)(0xf0 | (u >> 18));
                b[1] = (char)(0x80 | ((u >> 12) & 0x3f));
                b[2] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[3] = (char)(0x80 | (u & 0x3f));
                n = 4;
            }
            if (gpo_str_append(out, b, n) != GPO_OK) return 0;
            continue;
        }
        default: return 0;
        }
        if (gpo_str_append(out, &c, 1) != GPO_OK) return 0;
    }
    *pp = p + 1;
    return 1;
}

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    return p;
}

/* Skip one JSON value of a line cJSON has already accepted. */
static const char *skip_value(const char *p) {
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++)
            if (*p == '\\' && p[1]) p++;
        return *p ? p + 1 : p;
    }
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; *p; p++) {
            if (*p == '"') {
                p = skip_value(p) - 1;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if ((*p == '}' || *p == ']') && --depth == 0) {
                return p + 1;
            }
        }
        return p;
    }
    while (*p && !strchr(",}] \t\r\n", *p)) p++;
    return p;
}

/* The "text" member of the object on this line, into text.  0 if absent or not a
 * string. */
static int line_text(const char *line, struct gpo_str *text) {
    const char *p = skip_ws(line);
    if (*p != '{') return 0;
    p = skip_ws(p + 1);
    struct gpo_str key = {0};
    int ok = 0;
    while (*p == '"') {
        key.n = 0;
        if (!json_string(&p, &key)) break;
        p = skip_ws(p);
        if (*p != ':') break;
        p = skip_ws(p + 1);
        if (key.s && key.n == 4 && memcmp(key.s, "text", 4) == 0) {
            ok = *p == '"' && json_string(&p, text);
            break;
        }
        p = skip_ws(skip_value(p));
        if (*p != ',') break;
        p = skip_ws(p + 1);
    }
    gpo_str_free(&key);
    return ok;
}

static int tokenize_jsonl(gpo_tokenizer *tok, char *in, size_t len, int flags) {
    struct gpo_str text = {0};
    struct gpo_ids ids = {0};
    int rc = 0;
    size_t line_no = 0;
    for (char *s = in; s < in + len;) {
        char *e = memchr(s, '\n', (size_t)(in + len - s));
        if (e) *e = 0;
        line_no++;
        const char *q = skip_ws(s);
        if (*q) {
            cJSON *j = cJSON_Parse(s);
            int is_obj = cJSON_IsObject(j);
            cJSON_Delete(j);
            text.n = 0;
            if (!is_obj) {
                rc = cli_error("stdin line %zu is not a JSON object", line_no);
                break;
            }
            if (!line_text(s, &text)) {
                rc = cli_error("stdin line %zu has no string member \"text\"", line_no);
                break;
            }
            ids.n = 0;
            enum gpo_status st = gpo_tokenizer_encode(tok, text.s ? text.s : "", text.n, flags, &ids);
            if (st != GPO_OK) {
                rc = cli_status(st, "cannot tokenize the text of stdin line %zu", line_no);
                break;
            }
            fputs("{\"ids\": [", stdout);
            for (size_t i = 0; i < ids.n; i++) printf(i ? ", %d" : "%d", (int)ids.ids[i]);
            fputs("]}\n", stdout);
        }
        if (!e) break;
        s = e + 1;
    }
    gpo_str_free(&text);
    gpo_ids_free(&ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model_arg = NULL, *tok_arg = NULL;
    int special = 0, jsonl = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            tokenize_usage();
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(model_arg = cli_value("tokenize", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(tok_arg = cli_value("tokenize", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--special")) {
            special = 1;
        } else if (!strcmp(a, "--jsonl")) {
            jsonl = 1;
        } else {
            return cli_usage_error("tokenize", "unknown option '%s'", a);
        }
    }
    gpo_tokenizer *tok = NULL;
    int rc = cli_open_tokenizer(model_arg, tok_arg, &tok);
    if (rc) return rc;
    size_t len = 0;
    char *in = cli_read_file("-", &len);
    if (!in) {
        gpo_tokenizer_free(tok);
        return CLI_EXIT_FAIL;
    }
    int flags = special ? GPO_ENCODE_SPECIAL : 0;
    if (jsonl) {
        rc = tokenize_jsonl(tok, in, len, flags);
    } else {
        struct gpo_ids ids = {0};
        enum gpo_status st = gpo_tokenizer_encode(tok, in, len, flags, &ids);
        if (st != GPO_OK) {
            rc = cli_status(st, "cannot tokenize stdin");
        } else {
            for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", (int)ids.ids[i]);
            putchar('\n');
        }
        gpo_ids_free(&ids);
    }
    if (rc == 0 && fflush(stdout) != 0) rc = cli_error("cannot write to stdout");
    free(in);
    gpo_tokenizer_free(tok);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    const char *model_arg = NULL, *tok_arg = NULL, *ids_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            detokenize_usage();
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(model_arg = cli_value("detokenize", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokenizer")) {
            if (!(tok_arg = cli_value("detokenize", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--ids")) {
            if (!(ids_arg = cli_value("detokenize", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else {
            return cli_usage_error("detokenize", "unknown option '%s'", a);
        }
    }
    gpo_tokenizer *tok = NULL;
    int rc = cli_open_tokenizer(model_arg, tok_arg, &tok);
    if (rc) return rc;
    char *in = NULL;
    if (!ids_arg) {
        size_t len;
        if (!(in = cli_read_file("-", &len))) {
            gpo_tokenizer_free(tok);
            return CLI_EXIT_FAIL;
        }
        if (strlen(in) != len) {
            free(in);
            gpo_tokenizer_free(tok);
            return cli_error("stdin holds a NUL byte; expected token ids");
        }
    }
    struct gpo_ids ids = {0};
    struct gpo_str text = {0};
    if (!cli_parse_ids(ids_arg ? ids_arg : in, gpo_tokenizer_n_tokens(tok), &ids)) {
        rc = CLI_EXIT_FAIL; /* cli_parse_ids has said what is wrong */
    } else {
        enum gpo_status st = gpo_tokenizer_decode(tok, ids.ids, ids.n, &text);
        if (st != GPO_OK) rc = cli_status(st, "cannot detokenize");
        else if (fwrite(text.s, 1, text.n, stdout) != text.n || fflush(stdout) != 0)
            rc = cli_error("cannot write to stdout");
    }
    gpo_ids_free(&ids);
    gpo_str_free(&text);
    free(in);
    gpo_tokenizer_free(tok);
    return rc;
}
