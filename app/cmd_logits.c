/* cmd_logits.c - `gptoss logits`: the logits of every position of a token list,
 * as raw little-endian float32 [n_tokens, n_vocab], computed either as one
 * prefill batch or token by token through the KV cache.  Under mpirun every rank
 * runs its shard of the pass; rank 0 reads the ids, shares them and writes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dist.h"
#include "kvcache.h"
#include "shard_plan.h"

static void usage(void) {
    printf("usage: gptoss logits [-m DIR] --tokens IDS -o OUT.f32 [options]\n"
           "\n"
           "Writes the logits of every position as little-endian float32, shape\n"
           "[n_tokens, n_vocab], row-major.\n"
           "\n"
           "  -m, --model DIR      checkpoint folder (default: $GPT_DIR, then $HF_MODEL)\n"
           "  --tokens IDS         token ids separated by commas or spaces\n"
           "  --tokens-file FILE   read the ids from a file ('-' for stdin)\n"
           "  -o, --out FILE       output file ('-' = standard output)\n"
           "  --mode MODE          prefill (all tokens in one batch, default) or\n"
           "                       incremental (one token at a time through the KV cache)\n"
           "  --ubatch N           prefill chunk size in tokens (default: all tokens)\n"
           "  --exact              the exact fp32 path (default)\n"
           "  --fast               the fast path (activations rounded within bf16 error)\n"
           "  --ref                the plain scalar reference kernels\n"
           "  --dense bf16|q8      dense weights as stored (default) or requantised to 8 bits\n"
           "  -t, --threads N      threads (default: all cores)\n"
           "%s"
           "  -h, --help           show this help\n",
           shard_plan_help);
}

/* Rank 0's token ids from --tokens or --tokens-file; 0 after printing the error. */
static int read_ids(const char *tokens, const char *tokens_file, int64_t n_vocab, char **text,
                    struct gpo_ids *ids) {
    if (tokens_file && !(*text = cli_read_file(tokens_file, NULL))) return 0;
    if (!cli_parse_ids(tokens ? tokens : *text, n_vocab, ids)) return 0;
    if (ids->n == 0) {
        cli_error("no token ids given");
        return 0;
    }
    return 1;
}

/* Rank 0's ids to every rank (a count, then the ids; -1 when rank 0 has none). */
static int share_ids(struct gpo_ids *ids, int have) {
    int64_t n = have ? (int64_t)ids->n : -1;
    const int from_me = gpo_dist_rank() == 0;
    if (!from_me) gpo_ids_free(ids);
    void *buf = ids->ids;
    enum gpo_status s = gpo_dist_bcast_counted(NULL, &buf, &n, sizeof *ids->ids, 0);
    if (!from_me) {
        ids->ids = buf;
        ids->n = ids->cap = n > 0 ? (size_t)n : 0;
    }
    if (s != GPO_OK) return cli_status(s, "cannot share the token ids");
    return n < 0 ? CLI_EXIT_FAIL : 0; /* n < 0: rank 0 said why */
}

int cmd_logits(int argc, char **argv) {
    const char *model_arg = NULL, *tokens = NULL, *tokens_file = NULL, *out_path = NULL;
    const char *mode = "prefill";
    int64_t threads = 0, ubatch = 0;
    enum gpo_path path = GPO_PATH_EXACT;
    struct gpo_load_opts lo = {0};
    struct gen_opts go = {0}; /* only its mesh and replicas */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int took = shard_plan_arg("logits", &go, argc, argv, &i);
        if (took < 0) return CLI_EXIT_USAGE;
        if (took) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(model_arg = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokens")) {
            if (!(tokens = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--tokens-file")) {
            if (!(tokens_file = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "-o") || cli_is(a, "--out")) {
            if (!(out_path = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (cli_is(a, "--mode")) {
            if (!(mode = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (strcmp(mode, "prefill") && strcmp(mode, "incremental"))
                return cli_usage_error("logits", "--mode must be prefill or incremental, not '%s'", mode);
        } else if (!strcmp(a, "-t") || cli_is(a, "--threads")) {
            if (!(v = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 4096, &threads))
                return cli_usage_error("logits", "--threads needs a number from 1 to 4096, not '%s'", v);
        } else if (cli_is(a, "--ubatch")) {
            if (!(v = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 1 << 20, &ubatch))
                return cli_usage_error("logits", "--ubatch needs a positive number, not '%s'", v);
        } else if (cli_is(a, "--dense")) {
            if (!(v = cli_value("logits", argc, argv, &i))) return CLI_EXIT_USAGE;
            if (strcmp(v, "bf16") && strcmp(v, "q8"))
                return cli_usage_error("logits", "--dense must be bf16 or q8, not '%s'", v);
            lo.dense_q8 = !strcmp(v, "q8");
        } else if (!strcmp(a, "--exact")) {
            path = GPO_PATH_EXACT;
        } else if (!strcmp(a, "--fast")) {
            path = GPO_PATH_FAST;
        } else if (!strcmp(a, "--ref")) {
            path = GPO_PATH_REF;
        } else {
            return cli_usage_error("logits", "unknown option '%s'", a);
        }
    }
    if (!tokens && !tokens_file) return cli_usage_error("logits", "--tokens is required");
    if (!out_path) return cli_usage_error("logits", "-o OUT.f32 is required");

    int rc = CLI_EXIT_FAIL;
    enum gpo_status s;
    char dir[4096];
    char *tok_text = NULL;
    gpo_model *m = NULL;
    gpo_ctx *ctx = NULL;
    gpo_kv *kv = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    struct gpo_ids ids = {0};
    struct gen_dist d = {0};
    const int writer = gpo_dist_rank() == 0;

    /* Opened first, so an output that cannot be written fails before any work. */
    if (writer && !(f = cli_open_out(out_path, "-o", 1))) goto cleanup;
    if ((s = gpo_model_resolve_dir(model_arg, dir, sizeof dir)) != GPO_OK) {
        rc = cli_status(s, "cannot find the model");
        goto cleanup;
    }
    lo.no_repack = gen_load_opts(&go).no_repack;
    if ((s = gpo_model_load(dir, &lo, &m)) != GPO_OK) {
        rc = cli_status(s, "cannot load the model from %s", dir);
        goto cleanup;
    }
    const struct gpo_config *c = gpo_model_config(m);
    if ((rc = gen_dist_open(&d, &go, m)) != 0) goto cleanup;
    rc = CLI_EXIT_FAIL;
    shard_plan_print(&d, m);
    const int have = writer && read_ids(tokens, tokens_file, c->n_vocab, &tok_text, &ids);
    if (gpo_dist_size() > 1 && (rc = share_ids(&ids, have)) != 0) goto cleanup;
    rc = CLI_EXIT_FAIL;
    if (!have && writer) goto cleanup;
    const int64_t n = (int64_t)ids.n, V = c->n_vocab;
    if (n > c->max_position) {
        rc = cli_error("%lld tokens exceed the model's context of %lld", (long long)n,
                       (long long)c->max_position);
        goto cleanup;
    }
    int incremental = !strcmp(mode, "incremental");
    int64_t chunk = incremental ? 1 : (ubatch > 0 ? ubatch : n);
    if (chunk > n) chunk = n;
    const struct gpo_mesh_shard *shard = d.open ? &d.shard : NULL;
    struct gpo_ctx_opts o = {.max_tokens = chunk, .max_seqs = 1, .n_threads = (int)threads,
                             .path = path, .shard = shard, .groups = d.open ? &d.groups : NULL};
    if ((s = gpo_ctx_create(m, &o, &ctx)) != GPO_OK) {
        rc = cli_status(s, "cannot create a context");
        goto cleanup;
    }
    if ((s = gpo_kv_create_shard(m, shard, n, 0, &kv)) != GPO_OK) {
        rc = cli_status(s, "cannot create the KV cache");
        goto cleanup;
    }
    /* The other ranks' shards keep the gathered rows in their contexts. */
    if (writer) logits = malloc((size_t)n * (size_t)V * sizeof *logits);
    if (writer && !logits) {
        rc = cli_error("out of memory for %lld x %lld logits", (long long)n, (long long)V);
        goto cleanup;
    }
    for (int64_t i = 0; i < n; i += chunk) {
        int64_t cnt = n - i < chunk ? n - i : chunk;
        struct gpo_seq_batch b = {.kv = kv, .tokens = ids.ids + i, .n_tokens = cnt, .logits = GPO_LOGITS_ALL};
        if ((s = gpo_forward(ctx, &b, 1, logits ? logits + (size_t)i * V : NULL)) != GPO_OK) {
            rc = cli_status(s, "forward pass failed at token %lld", (long long)i);
            goto cleanup;
        }
    }
    if (!writer) {
        rc = 0;
        goto cleanup;
    }
    fwrite(logits, sizeof *logits, (size_t)n * V, f);
    FILE *done = f;
    f = NULL;
    if (cli_close_out(done, out_path) != 0) goto cleanup;
    fprintf(stderr, "gptoss: wrote %lld x %lld logits to %s (%s mode, kernels %s)\n", (long long)n,
            (long long)V, strcmp(out_path, "-") ? out_path : "standard output", mode,
            gpo_ctx_kernels(ctx));
    rc = 0;

cleanup:
    if (f && f != stdout) {
        fclose(f);
        if (rc != 0) remove(out_path); /* no partial or empty output left behind */
    }
    free(logits);
    free(tok_text);
    gpo_ids_free(&ids);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gen_dist_close(&d);
    gpo_model_free(m);
    return rc;
}
