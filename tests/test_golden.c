/* test_golden.c - logits of the tiny-a fixture against OpenAI's float32 reference,
 * for both checkpoint layouts, prefill and incremental decoding, the exact, ref
 * and fast paths; per-layer hidden states and expert choices of seq0 to localise a
 * mismatch; and bit-identical results across thread counts and batch make-up. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "test_common.h"
#include <cjson/cJSON.h>

#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpo.h"
#include "model.h"

#define FIX "tests/fixtures/tiny-a"
#define N_SEQ 4
#define TOL 1e-3

static float *load_f32(const char *name, int seq, size_t *n) {
    char path[256];
    snprintf(path, sizeof path, FIX "/golden/seq%d.%s", seq, name);
    size_t len;
    float *p = read_all(path, &len);
    if (n) *n = len / 4;
    return p;
}

/* Logits of every position of ids, in chunks of `chunk` tokens. */
static float *run_logits(gpo_model *m, const struct gpo_ids *ids, int64_t chunk, enum gpo_path path,
                         int threads) {
    const struct gpo_config *c = gpo_model_config(m);
    gpo_ctx *ctx;
    gpo_kv *kv;
    struct gpo_ctx_opts o = {.max_tokens = chunk, .max_seqs = 1, .n_threads = threads, .path = path};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)ids->n, &kv), GPO_OK);
    float *lg = malloc(ids->n * (size_t)c->n_vocab * 4);
    for (size_t i = 0; i < ids->n; i += (size_t)chunk) {
        int64_t cnt = (int64_t)(ids->n - i) < chunk ? (int64_t)(ids->n - i) : chunk;
        struct gpo_seq_batch b = {kv, ids->ids + i, cnt, GPO_LOGITS_ALL};
        assert_int_equal(gpo_forward(ctx, &b, 1, lg + i * (size_t)c->n_vocab), GPO_OK);
    }
    assert_int_equal(gpo_kv_len(kv), (int64_t)ids->n);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    return lg;
}

static int argmax(const float *x, int64_t n) {
    int best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int)i;
    return best;
}

/* Max |a - b| and the number of rows whose argmax agrees. */
static double compare(const float *a, const float *b, size_t rows, int64_t V, size_t *agree) {
    double mx = 0;
    *agree = 0;
    for (size_t r = 0; r < rows; r++) {
        for (int64_t v = 0; v < V; v++) {
            double d = fabs((double)a[r * V + v] - b[r * V + v]);
            if (!(d <= mx)) mx = d; /* NaN propagates */
        }
        *agree += argmax(a + r * V, V) == argmax(b + r * V, V);
    }
    return mx;
}

/* The accuracy criterion of lossy paths: max |dlogit|, RMS of dlogit and the mean
 * KL(golden || candidate) of the next-token distributions, each at or under what
 * OpenAI's own bf16 run gives against its float32 golden.  Argmax flips at
 * near-ties are expected and reported only. */
struct err {
    double max, rms, kl;
    size_t agree;
};

static double log_softmax_at(const float *x, int64_t V, double *lse) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; v++) mx = fmax(mx, (double)x[v]);
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += exp((double)x[v] - mx);
    *lse = mx + log(s);
    return mx;
}

static struct err errors(const float *got, const float *gold, size_t rows, int64_t V) {
    struct err e = {0};
    e.max = compare(got, gold, rows, V, &e.agree);
    double sq = 0, kl = 0;
    for (size_t r = 0; r < rows; r++) {
        const float *a = got + r * V, *b = gold + r * V;
        double la, lb;
        log_softmax_at(a, V, &la);
        log_softmax_at(b, V, &lb);
        for (int64_t v = 0; v < V; v++) {
            const double d = (double)a[v] - b[v];
            sq += d * d;
            const double pb = (double)b[v] - lb; /* log p_gold */
            kl += exp(pb) * (pb - ((double)a[v] - la));
        }
    }
    e.rms = sqrt(sq / ((double)rows * (double)V));
    e.kl = kl / (double)rows;
    return e;
}

static void print_err(const char *what, const struct err *e, size_t rows) {
    printf("  %-22s max|d| %.4f  rms %.5f  mean KL %.3g  argmax %zu/%zu\n", what, e->max, e->rms,
           e->kl, e->agree, rows);
}

static void golden_case(const char *dir, const char *label, enum gpo_path path, int incremental) {
    gpo_model *m;
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    for (int s = 0; s < N_SEQ; s++) {
        struct gpo_ids ids = {0};
        load_golden_ids(s, &ids);
        size_t ng;
        float *gold = load_f32("logits.f32", s, &ng);
        assert_non_null(gold);
        assert_int_equal(ng, ids.n * (size_t)V);
        float *lg = run_logits(m, &ids, incremental ? 1 : (int64_t)ids.n, path, 0);
        size_t agree;
        double d = compare(lg, gold, ids.n, V, &agree);
        printf("  %-9s %-6s %-11s seq%d: max|d| %.3g, argmax %zu/%zu\n", label,
               path == GPO_PATH_REF ? "ref" : path == GPO_PATH_FAST ? "fast" : "exact",
               incremental ? "incremental" : "prefill", s, d, agree, ids.n);
        assert_true(d <= TOL);
        assert_int_equal(agree, ids.n);
        free(lg);
        free(gold);
        gpo_ids_free(&ids);
    }
    gpo_model_free(m);
}

static void test_hf_prefill(void **st) { (void)st; golden_case(FIX, "hf", GPO_PATH_EXACT, 0); }
static void test_hf_incremental(void **st) { (void)st; golden_case(FIX, "hf", GPO_PATH_EXACT, 1); }
static void test_orig_prefill(void **st) { (void)st; golden_case(FIX "/original", "original", GPO_PATH_EXACT, 0); }
static void test_orig_incremental(void **st) { (void)st; golden_case(FIX "/original", "original", GPO_PATH_EXACT, 1); }
static void test_ref_path(void **st) {
    (void)st;
    golden_case(FIX, "hf", GPO_PATH_REF, 0);
    golden_case(FIX "/original", "original", GPO_PATH_REF, 1);
}

/* The fast path may round activations; it must stay within the error of the
 * reference's own bf16 run on seq0 (the sequence the fixture has a bf16 run of):
 * max |dlogit|, RMS and mean KL. */
static void test_fast_path(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    for (int s = 0; s < 1; s++) {
        struct gpo_ids ids = {0};
        load_golden_ids(s, &ids);
        float *gold = load_f32("logits.f32", s, NULL), *bf = load_f32("logits_bf16ref.f32", s, NULL);
        assert_non_null(bf);
        const struct err eb = errors(bf, gold, ids.n, V);
        float *lg = run_logits(m, &ids, (int64_t)ids.n, GPO_PATH_FAST, 0);
        const struct err ef = errors(lg, gold, ids.n, V);
        char what[64];
        snprintf(what, sizeof what, "bf16 reference seq%d", s);
        print_err(what, &eb, ids.n);
        snprintf(what, sizeof what, "fast path seq%d", s);
        print_err(what, &ef, ids.n);
        assert_true(ef.max <= eb.max);
        assert_true(ef.rms <= eb.rms);
        assert_true(ef.kl <= eb.kl);
        free(lg);
        free(gold);
        free(bf);
        gpo_ids_free(&ids);
    }
    gpo_model_free(m);
}

/* --dense q8 requantises the BF16 matrices, which costs accuracy: report its
 * error on every sequence.  The bounds only catch a broken kernel or layout (the
 * fixture's list of known mistakes starts at max|d| ~1.2); the measured errors
 * (max |d| 0.06 to 0.81, RMS up to 1.5x and mean KL up to 2x the bf16 reference's
 * on seq0, at seq3) are of the order of the bf16 reference's. */
static void test_dense_q8(void **st) {
    (void)st;
    gpo_model *m;
    struct gpo_load_opts lo = {.dense_q8 = 1};
    assert_int_equal(gpo_model_load(FIX, &lo, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids0 = {0};
    load_golden_ids(0, &ids0);
    float *gold0 = load_f32("logits.f32", 0, NULL), *bf = load_f32("logits_bf16ref.f32", 0, NULL);
    const struct err eb = errors(bf, gold0, ids0.n, V);
    print_err("bf16 reference seq0", &eb, ids0.n);
    for (int path = 0; path < 2; path++)
        for (int s = 0; s < N_SEQ; s++) {
            struct gpo_ids ids = {0};
            load_golden_ids(s, &ids);
            float *gold = load_f32("logits.f32", s, NULL);
            float *lg = run_logits(m, &ids, (int64_t)ids.n, path ? GPO_PATH_FAST : GPO_PATH_EXACT, 0);
            const struct err e = errors(lg, gold, ids.n, V);
            char what[64];
            snprintf(what, sizeof what, "dense q8 %s seq%d", path ? "fast" : "exact", s);
            print_err(what, &e, ids.n);
            assert_true(e.max < 1.0);
            assert_true(e.rms <= 2.0 * eb.rms);
            assert_true(e.kl <= 3.0 * eb.kl);
            free(lg);
            free(gold);
            gpo_ids_free(&ids);
        }
    free(gold0);
    free(bf);
    gpo_ids_free(&ids0);
    gpo_model_free(m);
}

/* Per-layer states of seq0 through the trace hook. */
struct trace_buf {
    int64_t H, E, K, T;
    float *hidden;      /* [5][T][H] */
    float *hidden_attn; /* [4][T][H] */
    float *router;      /* [4][T][E] */
    int32_t *experts;   /* [4][T][K] */
    float *weights;     /* [4][T][K] */
};

static void on_trace(void *user, enum gpo_trace_point pt, int64_t l, int64_t tok, const void *data,
                     int64_t n) {
    struct trace_buf *b = user;
    switch (pt) {
    case GPO_TRACE_EMBED: memcpy(b->hidden + tok * b->H, data, (size_t)n * 4); break;
    case GPO_TRACE_BLOCK_RESIDUAL: memcpy(b->hidden + ((l + 1) * b->T + tok) * b->H, data, (size_t)n * 4); break;
    case GPO_TRACE_ATTN_RESIDUAL: memcpy(b->hidden_attn + (l * b->T + tok) * b->H, data, (size_t)n * 4); break;
    case GPO_TRACE_ROUTER_LOGITS: memcpy(b->router + (l * b->T + tok) * b->E, data, (size_t)n * 4); break;
    case GPO_TRACE_EXPERTS: memcpy(b->experts + (l * b->T + tok) * b->K, data, (size_t)n * 4); break;
    case GPO_TRACE_EXPERT_WEIGHTS: memcpy(b->weights + (l * b->T + tok) * b->K, data, (size_t)n * 4); break;
    }
}

static double max_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= mx)) mx = d;
    }
    return mx;
}

static void test_seq0_layers(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const struct gpo_config *c = gpo_model_config(m);
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    struct trace_buf b = {.H = c->n_embd, .E = c->n_expert, .K = c->n_expert_used, .T = (int64_t)ids.n};
    const int64_t L = c->n_layer, T = b.T;
    b.hidden = calloc((size_t)((L + 1) * T * b.H), 4);
    b.hidden_attn = calloc((size_t)(L * T * b.H), 4);
    b.router = calloc((size_t)(L * T * b.E), 4);
    b.experts = calloc((size_t)(L * T * b.K), 4);
    b.weights = calloc((size_t)(L * T * b.K), 4);
    gpo_ctx *ctx;
    gpo_kv *kv;
    struct gpo_ctx_opts o = {.max_tokens = T, .max_seqs = 1};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, T, &kv), GPO_OK);
    gpo_ctx_set_trace(ctx, on_trace, &b);
    struct gpo_seq_batch sb = {kv, ids.ids, T, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &sb, 1, NULL), GPO_OK);

    float *gh = load_f32("hidden.f32", 0, NULL), *gha = load_f32("hidden_attn.f32", 0, NULL);
    float *gr = load_f32("router_logits.f32", 0, NULL), *gw = load_f32("expert_weights.f32", 0, NULL);
    int32_t *ge = (int32_t *)load_f32("experts.i32", 0, NULL);
    assert_non_null(gh);
    for (int64_t l = 0; l <= L; l++) {
        double d = max_diff(b.hidden + l * T * b.H, gh + l * T * b.H, (size_t)(T * b.H));
        printf("  hidden[%lld] max|d| %.3g\n", (long long)l, d);
        assert_true(d < 1e-4);
    }
    for (int64_t l = 0; l < L; l++) {
        double da = max_diff(b.hidden_attn + l * T * b.H, gha + l * T * b.H, (size_t)(T * b.H));
        double dr = max_diff(b.router + l * T * b.E, gr + l * T * b.E, (size_t)(T * b.E));
        printf("  layer %lld: after attention max|d| %.3g, router logits max|d| %.3g\n", (long long)l, da, dr);
        assert_true(da < 1e-4);
        assert_true(dr < 1e-4);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < b.K; j++) {
                /* same order (descending logit) as the reference's sorted topk */
                size_t off = (size_t)((l * T + t) * b.K + j);
                assert_int_equal(b.experts[off], ge[off]);
                assert_true(fabs(b.weights[off] - gw[off]) < 1e-5);
            }
    }
    free(gh); free(gha); free(gr); free(gw); free(ge);
    free(b.hidden); free(b.hidden_attn); free(b.router); free(b.experts); free(b.weights);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

/* -t 1 and -t 2, and prefill chunking, give bit-identical logits. */
static void test_threads_bitexact(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    float *a = run_logits(m, &ids, (int64_t)ids.n, GPO_PATH_EXACT, 1);
    float *b = run_logits(m, &ids, (int64_t)ids.n, GPO_PATH_EXACT, 2);
    float *c = run_logits(m, &ids, 5, GPO_PATH_EXACT, 2);
    float *d = run_logits(m, &ids, 1, GPO_PATH_EXACT, 3);
    assert_memory_equal(a, b, ids.n * (size_t)V * 4);
    assert_memory_equal(a, c, ids.n * (size_t)V * 4);
    assert_memory_equal(a, d, ids.n * (size_t)V * 4);
    free(a); free(b); free(c); free(d);
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

/* All four sequences in one token batch equal each run alone, bit for bit; then
 * one decode step of all four together equals each alone. */
static void test_batch_invariance(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids[N_SEQ] = {{0}};
    size_t total = 0;
    for (int s = 0; s < N_SEQ; s++) {
        load_golden_ids(s, &ids[s]);
        total += ids[s].n;
    }
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)total, .max_seqs = N_SEQ, .n_threads = 2};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    gpo_kv *kv[N_SEQ];
    struct gpo_seq_batch sb[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        assert_int_equal(gpo_kv_create(m, (int64_t)ids[s].n + 1, &kv[s]), GPO_OK);
        sb[s] = (struct gpo_seq_batch){kv[s], ids[s].ids, (int64_t)ids[s].n, GPO_LOGITS_ALL};
    }
    float *all = malloc(total * (size_t)V * 4);
    assert_int_equal(gpo_forward(ctx, sb, N_SEQ, all), GPO_OK);
    size_t off = 0;
    for (int s = 0; s < N_SEQ; s++) {
        float *alone = run_logits(m, &ids[s], (int64_t)ids[s].n, GPO_PATH_EXACT, 1);
        assert_memory_equal(alone, all + off * V, ids[s].n * (size_t)V * 4);
        off += ids[s].n;
        free(alone);
    }
    /* one more token for everybody, decoded together */
    int32_t next[N_SEQ] = {7, 8, 9, 10};
    for (int s = 0; s < N_SEQ; s++) sb[s] = (struct gpo_seq_batch){kv[s], &next[s], 1, GPO_LOGITS_LAST};
    assert_int_equal(gpo_forward(ctx, sb, N_SEQ, all), GPO_OK);
    for (int s = 0; s < N_SEQ; s++) {
        gpo_ids_push(&ids[s], next[s]);
        float *alone = run_logits(m, &ids[s], (int64_t)ids[s].n, GPO_PATH_EXACT, 2);
        assert_memory_equal(alone + (ids[s].n - 1) * V, all + (size_t)s * V, (size_t)V * 4);
        free(alone);
        gpo_kv_free(kv[s]);
        gpo_ids_free(&ids[s]);
    }
    free(all);
    gpo_ctx_free(ctx);
    gpo_model_free(m);
}

/* Errors: context overflow, bad token ids, shared caches; the cache is unchanged. */
static void test_forward_errors(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    gpo_ctx *ctx;
    gpo_kv *kv;
    assert_int_equal(gpo_ctx_create(m, NULL, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, 4, &kv), GPO_OK);
    int32_t toks[5] = {1, 2, 3, 4, 5};
    struct gpo_seq_batch b = {kv, toks, 5, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_ERR_CONTEXT);
    assert_non_null(strstr(gpo_last_error(), "max_seq_len"));
    int32_t bad[1] = {1000};
    b = (struct gpo_seq_batch){kv, bad, 1, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_ERR_TOKEN);
    struct gpo_seq_batch two[2] = {{kv, toks, 1, GPO_LOGITS_NONE}, {kv, toks, 1, GPO_LOGITS_NONE}};
    assert_int_equal(gpo_forward(ctx, two, 2, NULL), GPO_ERR_ARG);
    assert_int_equal(gpo_kv_len(kv), 0);
    gpo_kv *big;
    assert_int_equal(gpo_kv_create(m, 1 << 30, &big), GPO_ERR_CONTEXT);
    assert_null(big);
    /* abort leaves the cache as it was */
    volatile int flag = 1;
    gpo_ctx_set_abort(ctx, &flag);
    b = (struct gpo_seq_batch){kv, toks, 2, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_ERR_ABORTED);
    assert_int_equal(gpo_kv_len(kv), 0);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_model_free(m);
}

/* Rewinding: a ring with a margin can go back that far and recompute the same
 * logits; a plain ring refuses once it has wrapped. */
static void test_rewind(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    const int64_t T = (int64_t)ids.n;
    float *want = run_logits(m, &ids, T, GPO_PATH_EXACT, 2);
    gpo_ctx *ctx;
    gpo_kv *plain, *wide;
    struct gpo_ctx_opts o = {.max_tokens = T, .max_seqs = 1};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, T, &plain), GPO_OK);
    assert_int_equal(gpo_kv_create_ex(m, T, 16, &wide), GPO_OK);
    struct gpo_seq_batch b = {plain, ids.ids, T, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_OK);
    b.kv = wide;
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_OK);
    assert_int_equal(gpo_kv_rewind(plain, T - 10), GPO_ERR_UNSUPPORTED);
    assert_int_equal(gpo_kv_len(plain), T);
    assert_int_equal(gpo_kv_rewind(plain, T - 1), GPO_OK);
    assert_int_equal(gpo_kv_rewind(wide, T - 20), GPO_ERR_UNSUPPORTED);
    assert_int_equal(gpo_kv_rewind(wide, T - 10), GPO_OK);
    float *lg = malloc(10 * (size_t)V * 4);
    b = (struct gpo_seq_batch){wide, ids.ids + T - 10, 10, GPO_LOGITS_ALL};
    assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_OK);
    assert_memory_equal(lg, want + (T - 10) * V, 10 * (size_t)V * 4);
    assert_int_equal(gpo_kv_rewind(wide, 0), GPO_OK);
    free(lg);
    free(want);
    gpo_kv_free(plain);
    gpo_kv_free(wide);
    gpo_ctx_free(ctx);
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

/* ------------------------------------------------------------------------- */
/* Loading: paths, layer counts, odd tensors, mlock, KV limits                */

/* A scratch model folder: the fixture's weights (linked) and its config.json
 * with `edit` applied (NULL: unchanged). */
static void make_variant(char *dir, size_t size, void (*edit)(cJSON *)) {
    snprintf(dir, size, "/tmp/gpo_golden_XXXXXX");
    assert_non_null(mkdtemp(dir));
    char src[4096], dst[4096];
    assert_non_null(realpath(FIX "/model.safetensors", src));
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    assert_int_equal(symlink(src, dst), 0);
    char *text = read_all(FIX "/config.json", NULL);
    assert_non_null(text);
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    assert_non_null(cfg);
    if (edit) edit(cfg);
    char *out = cJSON_Print(cfg);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    FILE *f = fopen(dst, "w");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
    free(out);
    cJSON_Delete(cfg);
}

static void remove_variant(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void set_layers(cJSON *cfg, int n) {
    cJSON_ReplaceItemInObject(cfg, "num_hidden_layers", cJSON_CreateNumber(n));
    cJSON_DeleteItemFromObject(cfg, "layer_types");
}
static void three_layers(cJSON *cfg) { set_layers(cfg, 3); }
static void five_layers(cJSON *cfg) { set_layers(cfg, 5); }

/* A model path that is a file says so (and GGUF by name); a layer count that
 * differs from the tensors names both numbers. */
static void test_load_errors(void **st) {
    (void)st;
    gpo_model *m = NULL;
    assert_int_equal(gpo_model_load(FIX "/config.json", NULL, &m), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "is a file"));
    assert_non_null(strstr(gpo_last_error(), "config.json"));
    char gguf[] = "/tmp/gpo_golden_XXXXXX.gguf";
    int fd = mkstemps(gguf, 5);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gpo_model_load(gguf, NULL, &m), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "does not start with the GGUF magic"));
    char out[4096];
    assert_int_equal(gpo_model_resolve_dir(gguf, out, sizeof out), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "GGUF"));
    unlink(gguf);
    assert_null(m);

    char dir[64];
    make_variant(dir, sizeof dir, three_layers);
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_ERR_CONFIG);
    assert_non_null(strstr(gpo_last_error(), "num_hidden_layers 3"));
    assert_non_null(strstr(gpo_last_error(), "hold 4 layers"));
    remove_variant(dir);
    make_variant(dir, sizeof dir, five_layers);
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_ERR_CONFIG);
    assert_non_null(strstr(gpo_last_error(), "num_hidden_layers 5"));
    assert_non_null(strstr(gpo_last_error(), "hold 4 layers"));
    remove_variant(dir);
    assert_null(m);
}

/* A tensor with a zero dimension next to huge ones is empty: loading counts it
 * as 0 parameters without overflowing (a sanitizer build aborts on that). */
static void test_load_empty_huge_tensor(void **st) {
    (void)st;
    gpo_model *m = NULL;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    struct gpo_model_info want;
    gpo_model_get_info(m, &want);
    gpo_model_free(m);

    char dir[64], path[128];
    make_variant(dir, sizeof dir, NULL);
    static const char *const shapes[] = {"[0,1099511627776,1099511627776]",
                                         "[1099511627776,1099511627776,0]",
                                         "[4194304,0,4194304,4194304]"};
    for (int i = 0; i < 3; i++) {
        char h[256];
        int n = snprintf(h, sizeof h,
                         "{\"odd%d\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,0]}}",
                         i, shapes[i]);
        while (n % 8) h[n++] = ' ';
        snprintf(path, sizeof path, "%s/odd%d.safetensors", dir, i);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        for (int b = 0; b < 8; b++) fputc((int)(((uint64_t)n >> (8 * b)) & 0xff), f);
        fwrite(h, 1, (size_t)n, f);
        fclose(f);
    }
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_OK);
    struct gpo_model_info got;
    gpo_model_get_info(m, &got);
    assert_int_equal(got.n_params, want.n_params);
    assert_int_equal(got.n_tensors, want.n_tensors + 3);
    gpo_model_free(m);
    remove_variant(dir);
}

/* Whether mlock of the weights works here, tried on the model's own mappings. */
static int mlock_works(const gpo_model *m) {
    for (int i = 0; i < m->st.n_files; i++)
        if (mlock(m->st.files[i].map, m->st.files[i].size) != 0) return 0;
    return 1;
}

/* --dense q8 drops the mapped BF16 pages its copies replace: after the load none of
 * them is mapped in this process (they were all read to make the copies), the
 * logits are those of a load that keeps them (test_dense_q8 checks the figures),
 * and the other mapped tensors are untouched. */
static void test_dense_q8_releases_pages(void **st) {
    (void)st;
    gpo_model *m;
    struct gpo_load_opts lo = {.dense_q8 = 1};
    assert_int_equal(gpo_model_load(FIX, &lo, &m), GPO_OK);
    const int64_t L = gpo_model_config(m)->n_layer;
    assert_int_equal(m->n_replaced, 4 * L + 1); /* q, k, v, out per layer; the unembedding */
    long total = 0;
    for (int i = 0; i < m->n_replaced; i++) {
        const long pr = present_pages(m->replaced[i].p, m->replaced[i].n);
        if (pr < 0) {
            gpo_model_free(m);
            skip();
        }
        total += pr;
    }
    size_t bytes = 0;
    for (int i = 0; i < m->n_replaced; i++) bytes += m->replaced[i].n;
    printf("  %d ranges, %zu KiB replaced, %ld pages still mapped\n", m->n_replaced, bytes / 1024,
           total);
    assert_int_equal(total, 0);
    /* the BF16 bytes let go: 64 per 32 weights, against the copies' 34 (kvpool.c's
     * plan takes them off the mapped bytes) */
    struct gpo_model_info inf;
    gpo_model_get_info(m, &inf);
    assert_true(inf.bytes_converted > 0);
    assert_true(inf.bytes_released * 34 == inf.bytes_converted * 64);
    /* the embedding (kept as stored) is still read in place */
    assert_int_equal(m->embedding.dtype, GPO_DT_BF16);
    volatile float x = gpo_tview_get(&m->embedding, 0);
    (void)x;
    assert_true(present_pages(m->embedding.data, 1) == 1);
    gpo_model_free(m);
}

/* `locked` is set exactly when every file was locked: with the normal limits,
 * and in a child process without CAP_IPC_LOCK and with RLIMIT_MEMLOCK 0, where
 * mlock fails even for root. */
static void test_mlock_state(void **st) {
    (void)st;
    struct gpo_load_opts lo = {.mlock = 1};
    gpo_model *m = NULL;
    gpo_set_log_level(GPO_LOG_ERROR);
    assert_int_equal(gpo_model_load(FIX, &lo, &m), GPO_OK);
    assert_int_equal(gpo_model_locked(m), mlock_works(m));
    gpo_model_free(m);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct caps[2];
        if (syscall(SYS_capget, &hdr, caps) == 0) {
            caps[0].effective &= ~(1u << CAP_IPC_LOCK);
            caps[0].permitted &= ~(1u << CAP_IPC_LOCK);
            caps[0].inheritable &= ~(1u << CAP_IPC_LOCK);
            syscall(SYS_capset, &hdr, caps);
        }
        struct rlimit rl = {0, 0};
        setrlimit(RLIMIT_MEMLOCK, &rl);
        gpo_model *c = NULL;
        if (gpo_model_load(FIX, &lo, &c) != GPO_OK) _exit(2);
        int locked = gpo_model_locked(c), works = mlock_works(c);
        _exit(locked == works ? (works ? 10 : 0) : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 10) print_message("mlock still works without CAP_IPC_LOCK here\n");
    assert_true(WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 10);
    gpo_set_log_level(GPO_LOG_INFO);
}

/* A KV cache larger than the machine is refused before allocating, with its
 * size and the limit. */
static void test_kv_limit(void **st) {
    (void)st;
    gpo_model *m = NULL;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    m->cfg.max_position = GPO_MAX_POSITIONS;
    uint64_t need = gpo_kv_bytes_for(&m->cfg, GPO_MAX_POSITIONS);
    uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (need > phys) {
        gpo_kv *kv = NULL;
        assert_int_equal(gpo_kv_create(m, GPO_MAX_POSITIONS, &kv), GPO_ERR_NOMEM);
        assert_null(kv);
        assert_non_null(strstr(gpo_last_error(), "1073741824 positions x 4 layers"));
        assert_non_null(strstr(gpo_last_error(), "GB of memory"));
    }
    gpo_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_prefill),        cmocka_unit_test(test_hf_incremental),
        cmocka_unit_test(test_orig_prefill),      cmocka_unit_test(test_orig_incremental),
        cmocka_unit_test(test_ref_path),          cmocka_unit_test(test_fast_path),
        cmocka_unit_test(test_seq0_layers),       cmocka_unit_test(test_threads_bitexact),
        cmocka_unit_test(test_batch_invariance),  cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_rewind),            cmocka_unit_test(test_dense_q8),
        cmocka_unit_test(test_load_errors),       cmocka_unit_test(test_load_empty_huge_tensor),
        cmocka_unit_test(test_mlock_state),       cmocka_unit_test(test_dense_q8_releases_pages),       cmocka_unit_test(test_kv_limit),
    };
    return cmocka_run_group_tests_name("golden", tests, NULL, NULL);
}
