/* cmd_info.c - `gptoss info`: a checkpoint's configuration, tensors, bytes by
 * group and the memory plan (mapped weights + KV cache at a chosen length). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "kernels/kernels.h"

static void usage(void) {
    printf("usage: gptoss info [-m DIR] [--max-seq-len N]\n"
           "\n"
           "Prints the configuration, tensor count, bytes by group, the kernels this CPU\n"
           "would use, and the memory plan.\n"
           "\n"
           "  -m, --model DIR     checkpoint folder (default: $GPT_DIR, then $HF_MODEL)\n"
           "  --max-seq-len N     KV cache length for the memory plan (default 4096)\n"
           "  --dense bf16|q8     show the plan with dense weights requantised to 8 bits\n"
           "  -h, --help          show this help\n");
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

/* A count with three significant digits and a unit that fits: "26.2 M", "3.61 B". */
static const char *count_str(uint64_t n, char *buf, size_t cap) {
    static const char *const units[] = {"", " K", " M", " B", " T"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 999.5 && u + 1 < sizeof units / sizeof *units) {
        v /= 1000.0;
        u++;
    }
    if (u == 0) snprintf(buf, cap, "%llu", (unsigned long long)n);
    else snprintf(buf, cap, v < 9.995 ? "%.2f%s" : v < 99.95 ? "%.1f%s" : "%.0f%s", v, units[u]);
    return buf;
}

int cmd_info(int argc, char **argv) {
    const char *model_arg = NULL, *v;
    int64_t max_seq = 4096;
    struct gpo_load_opts lo = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(model_arg = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--max-seq-len")) {
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, (int64_t)1 << 30, &max_seq))
                return cli_usage_error("info", "--max-seq-len needs a positive number, not '%s'", v);
        } else if (cli_is(a, "--dense")) {
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (strcmp(v, "bf16") && strcmp(v, "q8"))
                return cli_usage_error("info", "--dense must be bf16 or q8, not '%s'", v);
            lo.dense_q8 = !strcmp(v, "q8");
        } else {
            return cli_usage_error("info", "unknown option '%s'", a);
        }
    }
    char dir[4096];
    gpo_model *m = NULL;
    enum gpo_status s = gpo_model_resolve_dir(model_arg, dir, sizeof dir);
    if (s != GPO_OK) return cli_status(s, "cannot find the model");
    if ((s = gpo_model_load(dir, &lo, &m)) != GPO_OK) return cli_status(s, "cannot load the model from %s", dir);
    const struct gpo_config *c = gpo_model_config(m);
    struct gpo_model_info inf;
    gpo_model_get_info(m, &inf);
    if (max_seq > c->max_position) {
        fprintf(stderr, "gptoss: warning: --max-seq-len %lld exceeds the model's context; using %lld\n",
                (long long)max_seq, (long long)c->max_position);
        max_seq = c->max_position;
    }
    /* A GGUF model is named by the path given (its file), not its folder. */
    const int gguf = strcmp(gpo_model_layout(m), "gguf") == 0;
    printf("model:            %s (%s layout, %lld files)\n", gguf ? dir : gpo_model_dir(m), gpo_model_layout(m),
           (long long)inf.n_files);
    printf("layers:           %lld (sliding window %lld on layers", (long long)c->n_layer,
           (long long)c->sliding_window);
    int printed = 0;
    for (int64_t l = 0; l < c->n_layer && printed < 6; l++)
        if (c->layer_sliding[l]) printf("%s %lld", printed++ ? "," : "", (long long)l);
    printf("%s)\n", printed >= 6 ? ", ..." : "");
    printf("hidden:           %lld\n", (long long)c->n_embd);
    printf("heads:            %lld query, %lld key/value, head_dim %lld\n", (long long)c->n_head,
           (long long)c->n_head_kv, (long long)c->head_dim);
    printf("experts:          %lld, %lld per token, intermediate %lld\n", (long long)c->n_expert,
           (long long)c->n_expert_used, (long long)c->n_ff);
    printf("vocabulary:       %lld\n", (long long)c->n_vocab);
    printf("context:          %lld (YaRN factor %g over %lld, theta %g, beta %g/%g)\n",
           (long long)c->max_position, c->rope_factor, (long long)c->rope_orig_ctx, c->rope_theta,
           c->rope_beta_fast, c->rope_beta_slow);
    printf("swiglu:           alpha %g, limit %g; rms eps %g\n", c->swiglu_alpha, c->swiglu_limit,
           c->rms_eps);
    char total[32], active[32];
    printf("parameters:       %s total, %s active per token\n", count_str(inf.n_params, total, sizeof total),
           count_str(inf.n_params_active, active, sizeof active));
    printf("tensors:          %lld\n", (long long)inf.n_tensors);
    printf("bytes:            %.2f GiB in tensors (%llu B), %.2f GiB mapped\n", gib(inf.bytes_tensors),
           (unsigned long long)inf.bytes_tensors, gib(inf.bytes_mapped));
    printf("  embedding       %.3f GiB  %s\n", gib(inf.bytes_embedding), inf.type_embedding);
    printf("  unembedding     %.3f GiB  %s\n", gib(inf.bytes_unembedding), inf.type_unembedding);
    printf("  attention       %.3f GiB  %s (q, k, v, out)\n", gib(inf.bytes_attention),
           inf.type_attention);
    printf("  router          %.3f GiB  %s\n", gib(inf.bytes_router), inf.type_router);
    printf("  experts         %.3f GiB  %s (with scales and biases)\n", gib(inf.bytes_experts),
           inf.type_experts);
    printf("  norms           %.6f GiB  %s\n", gib(inf.bytes_norms), inf.type_norms);
    printf("per decoded token %.3f GiB of weights read (%llu B)\n", gib(inf.bytes_per_token),
           (unsigned long long)inf.bytes_per_token);
    uint64_t kvb = gpo_kv_bytes_for(c, max_seq);
    printf("memory plan:      %.2f GiB mapped weights + %.3f GiB KV cache (fp32, %lld tokens) per sequence\n",
           gib(inf.bytes_mapped), gib(kvb), (long long)max_seq);
    if (inf.bytes_converted)
        printf("                  + %.2f GiB of --dense q8 copies\n", gib(inf.bytes_converted));
    gpo_ctx *ctx = NULL;
    struct gpo_ctx_opts o = {.max_tokens = 1, .max_seqs = 1};
    if (gpo_ctx_create(m, &o, &ctx) == GPO_OK) {
        printf("kernels:          %s\n", gpo_ctx_kernels(ctx));
        printf("                  why: %s; CPU: %s\n", gpo_kernels_why(), gpo_cpu_features());
        gpo_ctx_free(ctx);
    }
    gpo_model_free(m);
    return 0;
}
