/* cmd_info.c - `gptoss info`: a checkpoint's configuration, tensors, bytes by
 * group and the memory plan (mapped weights + KV cache at a chosen length). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "dist.h"
#include "kernels/kernels.h"
#include "mesh.h"

static void usage(void) {
    printf("usage: gptoss info [-m DIR] [--max-seq-len N] [--mesh TPxEP [--dp D]] [--ranks N]\n"
           "\n"
           "Prints the configuration, tensor count, bytes by group, the kernels this CPU\n"
           "would use, and the memory plan.\n"
           "\n"
           "  -m, --model DIR     checkpoint folder (default: $GPT_DIR, then $HF_MODEL)\n"
           "  --max-seq-len N     KV cache length for the memory plan (default 4096)\n"
           "  --dense bf16|q8     show the plan with dense weights requantised to 8 bits\n"
           "  --kv-memory GiB     KV pool of the plan (default: as serve sizes it from the\n"
           "                      memory available)\n"
           "  --parallel N        requests at once for the pool plan (default 4)\n"
           "  --mesh TPxEP        the multi-rank plan: TP tensor-parallel (KV-head groups) times\n"
           "                      EP expert-parallel ranks per replica; per rank its heads,\n"
           "                      experts, vocabulary rows and resident weight bytes\n"
           "  --dp D              replicas of the mesh (data parallel; default: the ranks left)\n"
           "  --ranks N           plan for N ranks (default: the ranks of this mpirun job, else\n"
           "                      TP x EP x DP); without --mesh the default mesh for N\n"
           "  -h, --help          show this help\n");
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }
static double mib(uint64_t b) { return (double)b / (1024.0 * 1024.0); }

/* The mesh to plan: the one given (DP from --dp, else the ranks TP x EP leaves
 * of --ranks or the mpirun job, else 1), or the default for the rank count. */
static enum gpo_status choose_mesh(const struct gpo_config *c, int64_t dp, int64_t ranks,
                                   struct gpo_mesh *mesh) {
    if (!mesh->tp) return gpo_mesh_default(c, (int)ranks, mesh);
    const int64_t group = (int64_t)mesh->tp * mesh->ep;
    if (dp) mesh->dp = (int)dp;
    else mesh->dp = ranks && ranks % group == 0 ? (int)(ranks / group) : 1;
    return gpo_mesh_validate(c, mesh, ranks ? (int)ranks : (int)(group * mesh->dp));
}

/* The multi-rank plan, one line per rank (ranges inclusive).  Under mpirun the
 * host of each rank of the job is shown too. */
static void print_plan(const gpo_model *m, const struct gpo_mesh *mesh, int64_t max_seq) {
    const struct gpo_config *c = gpo_model_config(m);
    const int n = mesh->tp * mesh->ep * mesh->dp;
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_model(m, &w);
    const uint64_t kvb = gpo_kv_bytes_for(c, max_seq);
    printf("mesh:             %dx%d (TP x EP), DP %d: %d rank%s, %.2f GiB of weights in all\n", mesh->tp,
           mesh->ep, mesh->dp, n, n == 1 ? "" : "s", gib(gpo_mesh_weights_total(c, &w)));
    printf("resident weight bytes per rank in MiB (KV: the cache of one %lld-token sequence):\n",
           (long long)max_seq);
    printf("%5s %-12s %3s %3s %3s %8s %8s %8s %15s %10s %10s %10s %10s %10s %10s %10s\n", "rank", "host", "tp", "ep",
           "dp", "kv heads", "q heads", "experts", "vocab rows", "attention", "experts", "vocabulary",
           "replicated", "packed wo", "total", "KV");
    for (int r = 0; r < n; r++) {
        struct gpo_mesh_shard s;
        gpo_mesh_shard_of(c, mesh, &w, r, &s);
        char kv[24], q[24], ex[24], voc[32];
        snprintf(kv, sizeof kv, "%lld-%lld", (long long)s.kv_head0, (long long)s.kv_head1 - 1);
        snprintf(q, sizeof q, "%lld-%lld", (long long)s.head0, (long long)s.head1 - 1);
        snprintf(ex, sizeof ex, "%lld-%lld", (long long)s.expert0, (long long)s.expert1 - 1);
        snprintf(voc, sizeof voc, "%lld-%lld", (long long)s.vocab0, (long long)s.vocab1 - 1);
        /* A rank keeps the keys and values of its KV heads only. */
        const double kv_share = (double)(s.kv_head1 - s.kv_head0) / (double)c->n_head_kv;
        printf("%5d %-12.12s %3d %3d %3d %8s %8s %8s %15s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f\n", r,
               gpo_dist_size() > 1 && r < gpo_dist_size() ? gpo_dist_host_of(r) : "-", s.tp_rank, s.ep_rank,
               s.dp_rank, kv, q, ex, voc, mib(s.bytes_attention), mib(s.bytes_experts), mib(s.bytes_vocab),
               mib(s.bytes_replicated), mib(s.bytes_packed), mib(s.bytes_total), mib(kvb) * kv_share);
    }
    printf("each rank maps every file and touches only its shard: wo by the columns of its heads\n"
           "(with TP > 1 copied once into the packed wo), the embedding and unembedding by its\n"
           "vocabulary rows\n");
}

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
    int64_t max_seq = 4096, ranks = 0, dp = 0;
    struct gpo_load_opts lo = {0};
    struct gpo_engine_opts eo = {0};
    int64_t parallel = 4;
    struct gpo_mesh mesh = {0};
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
        } else if (cli_is(a, "--kv-memory")) {
            double g;
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_f64(v, 1e-6, 1 << 20, &g))
                return cli_usage_error("info", "--kv-memory needs GiB in (0, 2^20], not '%s'", v);
            eo.kv_memory = (uint64_t)(g * 1073741824.0);
        } else if (cli_is(a, "--parallel")) {
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 4096, &parallel))
                return cli_usage_error("info", "--parallel needs a number in [1, 4096], not '%s'", v);
        } else if (cli_is(a, "--mesh")) {
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (gpo_mesh_parse(v, &mesh) != GPO_OK) return cli_usage_error("info", "--%s", gpo_last_error());
        } else if (cli_is(a, "--dp") || cli_is(a, "--ranks")) {
            int is_dp = cli_is(a, "--dp");
            if (!(v = cli_value("info", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, GPO_MESH_MAX_RANKS, is_dp ? &dp : &ranks))
                return cli_usage_error("info", "%s needs a number in [1, %d], not '%s'", is_dp ? "--dp" : "--ranks",
                                       GPO_MESH_MAX_RANKS, v);
        } else {
            return cli_usage_error("info", "unknown option '%s'", a);
        }
    }
    if (dp && !mesh.tp) return cli_usage_error("info", "--dp needs --mesh TPxEP");
    /* Only rank 0 of an mpirun job prints; the plan is the same arithmetic on all. */
    if (gpo_dist_rank() != 0 && !freopen("/dev/null", "w", stdout))
        return cli_error("cannot silence rank %d's output", gpo_dist_rank());
    if (!ranks && gpo_dist_size() > 1) ranks = gpo_dist_size();
    char dir[4096];
    gpo_model *m = NULL;
    enum gpo_status s = gpo_model_resolve_dir(model_arg, dir, sizeof dir);
    if (s != GPO_OK) return cli_status(s, "cannot find the model");
    lo.no_repack = 1; /* what the file holds; the commands that run it repack */
    if ((s = gpo_model_load(dir, &lo, &m)) != GPO_OK) return cli_status(s, "cannot load the model from %s", dir);
    const struct gpo_config *c = gpo_model_config(m);
    if ((mesh.tp || ranks) && (s = choose_mesh(c, dp, ranks, &mesh)) != GPO_OK) {
        gpo_model_free(m);
        return gpo_dist_rank() == 0 ? cli_usage_error("info", "%s", gpo_last_error()) : CLI_EXIT_USAGE;
    }
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
    if (!strcmp(inf.type_experts, "MXFP4, GGML blocks"))
        printf("                  (the commands that run the model repack the experts at load into\n"
               "                  memory of their own, and let their mapped pages go; --no-repack\n"
               "                  reads them in place)\n");
    eo.max_seq_len = max_seq;
    struct gpo_kv_plan kp;
    if (gpo_engine_kv_plan(m, &eo, (size_t)parallel, &kp) == GPO_OK) {
        printf("KV pool:          %lld blocks of %lld positions x %.3f MiB = %.2f GiB (%s), %lld "
               "positions at once\n", (long long)kp.blocks, (long long)kp.block_tokens,
               (double)kp.block_bytes / 1048576.0, gib(kp.pool_bytes),
               eo.kv_memory ? "--kv-memory" : "default", (long long)kp.max_tokens);
        printf("                  + %lld x %.1f MiB sliding-window rings (--parallel); at most %lld "
               "positions per request\n", (long long)parallel, (double)kp.ring_bytes / 1048576.0,
               (long long)kp.max_seq_len);
    } else {
        printf("KV pool:          %s\n", gpo_last_error());
    }
    gpo_ctx *ctx = NULL;
    struct gpo_ctx_opts o = {.max_tokens = 1, .max_seqs = 1};
    if (gpo_ctx_create(m, &o, &ctx) == GPO_OK) {
        printf("kernels:          %s\n", gpo_ctx_kernels(ctx));
        printf("                  why: %s; CPU: %s\n", gpo_kernels_why(), gpo_cpu_features());
        gpo_ctx_free(ctx);
    }
    if (mesh.tp) print_plan(m, &mesh, max_seq);
    gpo_model_free(m);
    return 0;
}
