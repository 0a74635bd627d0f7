/* cli.c - shared helpers of the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "dist.h"

/* Under mpirun an error names the rank and host it happened on: a rank that cannot
 * open its model stops the job, and the others only see that it ended. */
static void error_prefix(void) {
    if (gpo_dist_size() > 1)
        fprintf(stderr, "gptoss: rank %d (%s): error: ", gpo_dist_rank(), gpo_dist_host());
    else
        fputs("gptoss: error: ", stderr);
}

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    error_prefix();
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_FAIL;
}

int cli_status(enum gpo_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    error_prefix();
    vfprintf(stderr, fmt, ap);
    const char *detail = gpo_last_error();
    fprintf(stderr, ": %s\n", detail && detail[0] ? detail : gpo_status_str(s));
    va_end(ap);
    return CLI_EXIT_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "gptoss %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nRun 'gptoss %s --help' for usage.\n", cmd);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

FILE *cli_open_out(const char *path, const char *what, int binary) {
    if (!path || !path[0]) {
        cli_error("%s: empty output path", what);
        return NULL;
    }
    if (strcmp(path, "-") == 0) return stdout;
    FILE *f = fopen(path, binary ? "wb" : "w");
    if (!f) cli_error("%s: cannot write %s: %s", what, path, strerror(errno));
    return f;
}

int cli_close_out(FILE *f, const char *path) {
    if (!f) return 0;
    int bad = ferror(f);
    if (f == stdout) {
        bad |= fflush(f) != 0;
    } else {
        bad |= fclose(f) != 0;
    }
    if (bad) {
        cli_error("writing %s failed: %s", strcmp(path, "-") == 0 ? "standard output" : path,
                  strerror(errno));
        return CLI_EXIT_FAIL;
    }
    return 0;
}

int cli_is(const char *arg, const char *name) {
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == 0 || arg[n] == '=');
}

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    const char *eq = strchr(argv[*i], '=');
    if (argv[*i][0] == '-' && argv[*i][1] == '-' && eq) return eq + 1;
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    (*i)++;
    return argv[*i];
}

int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int cli_parse_f64(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int cli_parse_ids(const char *s, int64_t n_vocab, struct gpo_ids *out) {
    const char *p = s;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (n_vocab > 0 && v >= n_vocab)) {
            if (end != p && n_vocab > 0 && v >= n_vocab)
                cli_error("token id %lld is out of range (vocabulary has %lld ids)", v,
                          (long long)n_vocab);
            else
                cli_error("cannot parse token ids near '%.20s'", p);
            return 0;
        }
        if (*end && *end != ',' && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            cli_error("cannot parse token ids near '%.20s'", p);
            return 0;
        }
        if (gpo_ids_push(out, (int32_t)v) != GPO_OK) return 0;
        p = end;
    }
    return 1;
}

char *cli_read_file(const char *path, size_t *len_out) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        cli_error("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf || err) {
        free(buf);
        cli_error("cannot read %s", path);
        return NULL;
    }
    buf[n] = 0;
    if (len_out) *len_out = n;
    return buf;
}

static int is_folder(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cli_model_tokenizer(const char *model_path, const char *tok_arg, gpo_tokenizer **out) {
    char folder[4096], beside[4200];
    struct stat st;
    *out = NULL;
    if (tok_arg || !model_path || stat(model_path, &st) != 0) return 0;
    snprintf(folder, sizeof folder, "%s", model_path);
    if (!S_ISDIR(st.st_mode)) {
        /* a file: its folder */
        char *slash = strrchr(folder, '/');
        if (slash) *slash = 0;
        else snprintf(folder, sizeof folder, ".");
        if (!folder[0]) snprintf(folder, sizeof folder, "/");
    }
    /* A tokenizer.json beside the model wins over the one in its metadata. */
    snprintf(beside, sizeof beside, "%s/tokenizer.json", folder);
    if (access(beside, F_OK) == 0) return 0;
    enum gpo_status s = gpo_tokenizer_load_model(model_path, out);
    if (s == GPO_OK) return 1;
    if (s == GPO_ERR_NOT_FOUND) return 0;
    cli_status(s, "cannot load the tokenizer of the model %s", model_path);
    return -1;
}

int cli_open_tokenizer(const char *model_arg, const char *tok_arg, gpo_tokenizer **out) {
    char dir[4096], path[4096];
    const char *model_dir = NULL;
    enum gpo_status s;
    const char *gd = getenv("GPT_DIR"), *hf = getenv("HF_MODEL");
    if (!tok_arg && (model_arg || (gd && *gd) || (hf && *hf))) {
        s = gpo_model_resolve_dir(model_arg, dir, sizeof dir);
        if (s == GPO_OK) model_dir = dir;
        else if (model_arg) return cli_status(s, "cannot use the model folder");
        else fprintf(stderr, "gptoss: warning: ignoring the model folder: %s\n", gpo_last_error());
    }
    int own = cli_model_tokenizer(model_dir, tok_arg, out);
    if (own) return own < 0;
    if (model_dir && !is_folder(model_dir)) {
        /* a GGUF file without a tokenizer: look beside it */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        model_dir = slash ? dir : ".";
    }
    if ((s = gpo_tokenizer_find(tok_arg, model_dir, path, sizeof path)) != GPO_OK)
        return cli_status(s, "cannot find tokenizer.json");
    if ((s = gpo_tokenizer_load(path, out)) != GPO_OK)
        return cli_status(s, "cannot load the tokenizer");
    return 0;
}
