/* test_schedule.c - the forward pass's schedule (forward.c): one team, a fixed
 * number of barriers per layer, MoE work items split over the threads.  Logits
 * are bit-identical for any thread count and any batch make-up on the tiny-a
 * fixture (exact and fast paths, the interleaved safetensors layout and the
 * separate gate/up GGUF layout), and the barrier counters of gpo_ctx_stats say
 * what the schedule says: 7 barriers per layer plus 2 per call. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "test_common.h"

#include "convert.h"
#include "forward.h"
#include "gpo.h"

#define FIX "tests/fixtures/tiny-a"
#define N_SEQ 4

/* The barriers one forward call crosses: the embedding sweep, seven sweeps per
 * layer, the end of the region. */
static int64_t barriers_per_call(const struct gpo_config *c) { return 7 * c->n_layer + 2; }

static char g_gguf[256]; /* tiny-a converted to GGUF (gate and up rows separate) */

static int setup(void **st) {
    (void)st;
    char tmpl[] = "/tmp/gpo_sched_XXXXXX";
    if (!mkdtemp(tmpl)) return -1;
    snprintf(g_gguf, sizeof g_gguf, "%s/tiny.gguf", tmpl);
    struct gpo_convert_opts o = {.src_dir = FIX, .dst_path = g_gguf};
    return gpo_convert_gguf(&o) == GPO_OK ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    char dir[256];
    snprintf(dir, sizeof dir, "%s", g_gguf);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    rm_tree(dir);
    return 0;
}

/* Logits of every position of ids, fed in chunks of `chunk` tokens. */
static float *run_logits(gpo_model *m, const struct gpo_ids *ids, int64_t chunk, enum gpo_path path,
                         int threads) {
    const int64_t V = gpo_model_config(m)->n_vocab;
    gpo_ctx *ctx;
    gpo_kv *kv;
    struct gpo_ctx_opts o = {.max_tokens = chunk, .max_seqs = 1, .n_threads = threads, .path = path};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)ids->n, &kv), GPO_OK);
    float *lg = malloc(ids->n * (size_t)V * 4);
    assert_non_null(lg);
    for (size_t i = 0; i < ids->n; i += (size_t)chunk) {
        int64_t cnt = (int64_t)(ids->n - i) < chunk ? (int64_t)(ids->n - i) : chunk;
        struct gpo_seq_batch b = {kv, ids->ids + i, cnt, GPO_LOGITS_ALL};
        assert_int_equal(gpo_forward(ctx, &b, 1, lg + i * (size_t)V), GPO_OK);
    }
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    return lg;
}

/* 1, 2 and 3 threads, whole prompt or in chunks: the same bits. */
static void threads_case(const char *dir, enum gpo_path path) {
    gpo_model *m;
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    const size_t bytes = ids.n * (size_t)V * 4;
    float *a = run_logits(m, &ids, (int64_t)ids.n, path, 1);
    const struct {
        int64_t chunk;
        int threads;
    } runs[] = {{(int64_t)ids.n, 2}, {(int64_t)ids.n, 3}, {5, 2}, {7, 3}, {1, 2}, {1, 3}};
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        float *b = run_logits(m, &ids, runs[r].chunk, path, runs[r].threads);
        assert_memory_equal(a, b, bytes);
        free(b);
    }
    free(a);
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

static void test_threads_exact(void **st) { (void)st; threads_case(FIX, GPO_PATH_EXACT); }
static void test_threads_fast(void **st) { (void)st; threads_case(FIX, GPO_PATH_FAST); }
static void test_threads_gguf_exact(void **st) { (void)st; threads_case(g_gguf, GPO_PATH_EXACT); }
static void test_threads_gguf_fast(void **st) { (void)st; threads_case(g_gguf, GPO_PATH_FAST); }

/* A token's logits do not depend on the batch it comes in: the four golden
 * sequences prefilled together and alone, then decode steps of all four, of two
 * pairs and of each alone, with 2 and 3 threads. */
static void batch_case(const char *dir, enum gpo_path path, int threads) {
    gpo_model *m;
    assert_int_equal(gpo_model_load(dir, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids[N_SEQ] = {{0}};
    size_t total = 0;
    for (int s = 0; s < N_SEQ; s++) {
        load_golden_ids(s, &ids[s]);
        total += ids[s].n;
    }
    /* Reference: each sequence alone, one thread, then two decode tokens alone. */
    const int32_t next[2][N_SEQ] = {{7, 8, 9, 10}, {11, 12, 13, 14}};
    float *alone[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        struct gpo_ids full = {0};
        for (size_t i = 0; i < ids[s].n; i++) gpo_ids_push(&full, ids[s].ids[i]);
        gpo_ids_push(&full, next[0][s]);
        gpo_ids_push(&full, next[1][s]);
        alone[s] = run_logits(m, &full, 1, path, 1);
        gpo_ids_free(&full);
    }

    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)total, .max_seqs = N_SEQ, .n_threads = threads,
                             .path = path};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    gpo_kv *kv[N_SEQ];
    struct gpo_seq_batch sb[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        assert_int_equal(gpo_kv_create(m, (int64_t)ids[s].n + 2, &kv[s]), GPO_OK);
        sb[s] = (struct gpo_seq_batch){kv[s], ids[s].ids, (int64_t)ids[s].n, GPO_LOGITS_ALL};
    }
    float *all = malloc(total * (size_t)V * 4);
    assert_non_null(all);
    assert_int_equal(gpo_forward(ctx, sb, N_SEQ, all), GPO_OK);
    size_t off = 0;
    for (int s = 0; s < N_SEQ; s++) {
        assert_memory_equal(alone[s], all + off * V, ids[s].n * (size_t)V * 4);
        off += ids[s].n;
    }
    /* First decode token: all four in one step. */
    for (int s = 0; s < N_SEQ; s++) sb[s] = (struct gpo_seq_batch){kv[s], &next[0][s], 1, GPO_LOGITS_LAST};
    assert_int_equal(gpo_forward(ctx, sb, N_SEQ, all), GPO_OK);
    for (int s = 0; s < N_SEQ; s++)
        assert_memory_equal(alone[s] + ids[s].n * V, all + (size_t)s * V, (size_t)V * 4);
    /* Second decode token: sequences 3 and 0 together, then 1 and 2. */
    const int pairs[2][2] = {{3, 0}, {1, 2}};
    for (int p = 0; p < 2; p++) {
        struct gpo_seq_batch two[2];
        for (int j = 0; j < 2; j++) {
            int s = pairs[p][j];
            two[j] = (struct gpo_seq_batch){kv[s], &next[1][s], 1, GPO_LOGITS_LAST};
        }
        assert_int_equal(gpo_forward(ctx, two, 2, all), GPO_OK);
        for (int j = 0; j < 2; j++) {
            int s = pairs[p][j];
            assert_memory_equal(alone[s] + (ids[s].n + 1) * V, all + (size_t)j * V, (size_t)V * 4);
        }
    }
    for (int s = 0; s < N_SEQ; s++) {
        gpo_kv_free(kv[s]);
        gpo_ids_free(&ids[s]);
        free(alone[s]);
    }
    free(all);
    gpo_ctx_free(ctx);
    gpo_model_free(m);
}

static void test_batch_exact(void **st) {
    (void)st;
    batch_case(FIX, GPO_PATH_EXACT, 2);
    batch_case(FIX, GPO_PATH_EXACT, 3);
}
static void test_batch_fast(void **st) {
    (void)st;
    batch_case(FIX, GPO_PATH_FAST, 2);
    batch_case(FIX, GPO_PATH_FAST, 3);
}
static void test_batch_gguf(void **st) {
    (void)st;
    batch_case(g_gguf, GPO_PATH_EXACT, 2);
    batch_case(g_gguf, GPO_PATH_FAST, 3);
}

static void count_trace(void *user, enum gpo_trace_point pt, int64_t layer, int64_t tok,
                        const void *data, int64_t n) {
    (void)pt; (void)layer; (void)tok; (void)data; (void)n;
    ++*(int64_t *)user;
}

/* The counters: 7 barriers per layer + 2 per call whatever the batch, the thread
 * count or the path; sane times; reset at will; accumulated over calls. */
static void test_counters(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t V = c->n_vocab, per_call = barriers_per_call(c);
    assert_int_equal(per_call, 30); /* tiny-a: 4 layers */
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    float *lg = malloc(ids.n * (size_t)V * 4);
    assert_non_null(lg);
    const enum gpo_path paths[2] = {GPO_PATH_EXACT, GPO_PATH_FAST};
    for (int threads = 1; threads <= 3; threads++)
        for (int pi = 0; pi < 2; pi++) {
            gpo_ctx *ctx;
            gpo_kv *kv;
            struct gpo_ctx_opts o = {.max_tokens = (int64_t)ids.n, .max_seqs = 1,
                                     .n_threads = threads, .path = paths[pi]};
            assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
            assert_int_equal(gpo_kv_create(m, (int64_t)ids.n + 4, &kv), GPO_OK);
            struct gpo_ctx_stats s;
            gpo_ctx_stats(ctx, &s);
            assert_int_equal(s.calls, 0);
            assert_int_equal(s.barriers, 0);
            assert_true(s.wall_s == 0.0 && s.barrier_s == 0.0);

            /* A prefill of the whole prompt. */
            struct gpo_seq_batch b = {kv, ids.ids, (int64_t)ids.n - 2, GPO_LOGITS_ALL};
            assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_OK);
            gpo_ctx_stats(ctx, &s);
            assert_int_equal(s.calls, 1);
            assert_int_equal(s.tokens, (int64_t)ids.n - 2);
            assert_int_equal(s.barriers, per_call);
            assert_int_equal(s.n_threads, threads);
            assert_true(s.wall_s > 0.0);
            assert_true(s.barrier_s >= 0.0);
            /* nobody waits longer than the region lasts */
            assert_true(s.barrier_s <= threads * s.wall_s * (1.0 + 1e-9));

            /* Reset, then two decode steps (one with no logits, one traced): the
             * count per call does not move. */
            gpo_ctx_stats_reset(ctx);
            gpo_ctx_stats(ctx, &s);
            assert_int_equal(s.calls, 0);
            assert_int_equal(s.barriers, 0);
            assert_true(s.wall_s == 0.0 && s.barrier_s == 0.0);
            b = (struct gpo_seq_batch){kv, ids.ids + ids.n - 2, 1, GPO_LOGITS_NONE};
            assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_OK);
            int64_t n_traced = 0;
            gpo_ctx_set_trace(ctx, count_trace, &n_traced);
            b = (struct gpo_seq_batch){kv, ids.ids + ids.n - 1, 1, GPO_LOGITS_LAST};
            assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_OK);
            gpo_ctx_set_trace(ctx, NULL, NULL);
            assert_int_equal(n_traced, 1 + 5 * c->n_layer); /* embed, 5 points per layer */
            gpo_ctx_stats(ctx, &s);
            assert_int_equal(s.calls, 2);
            assert_int_equal(s.tokens, 2);
            assert_int_equal(s.barriers, 2 * per_call);
            assert_true(s.wall_s > 0.0 && s.barrier_s >= 0.0);
            assert_true(s.barrier_s <= threads * s.wall_s * (1.0 + 1e-9));

            /* A call that fails validation runs no pass and counts nothing. */
            int32_t bad = (int32_t)V;
            b = (struct gpo_seq_batch){kv, &bad, 1, GPO_LOGITS_LAST};
            assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_ERR_TOKEN);
            gpo_ctx_stats(ctx, &s);
            assert_int_equal(s.calls, 2);
            assert_int_equal(s.barriers, 2 * per_call);
            gpo_kv_free(kv);
            gpo_ctx_free(ctx);
        }
    free(lg);
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

/* Many sequences of one token each, more than a thread has experts for: every
 * expert of the layer is busy with a different token count, so the items of the
 * MoE sweeps are split inside experts.  Each row equals its sequence decoded
 * alone. */
static void test_uneven_experts(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    enum { NS = 13 };
    int32_t toks[NS];
    for (int s = 0; s < NS; s++) toks[s] = (int32_t)((s * 37 + 5) % V);
    for (int pi = 0; pi < 2; pi++) {
        const enum gpo_path path = pi ? GPO_PATH_FAST : GPO_PATH_EXACT;
        gpo_ctx *ctx;
        struct gpo_ctx_opts o = {.max_tokens = NS, .max_seqs = NS, .n_threads = 3, .path = path};
        assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
        gpo_kv *kv[NS];
        struct gpo_seq_batch sb[NS];
        for (int s = 0; s < NS; s++) {
            assert_int_equal(gpo_kv_create(m, 1, &kv[s]), GPO_OK);
            sb[s] = (struct gpo_seq_batch){kv[s], &toks[s], 1, GPO_LOGITS_LAST};
        }
        float *all = malloc((size_t)NS * V * 4);
        assert_non_null(all);
        assert_int_equal(gpo_forward(ctx, sb, NS, all), GPO_OK);
        for (int s = 0; s < NS; s++) {
            struct gpo_ids one = {0};
            gpo_ids_push(&one, toks[s]);
            float *alone = run_logits(m, &one, 1, path, 2);
            assert_memory_equal(alone, all + (size_t)s * V, (size_t)V * 4);
            free(alone);
            gpo_ids_free(&one);
            gpo_kv_free(kv[s]);
        }
        free(all);
        gpo_ctx_free(ctx);
    }
    gpo_model_free(m);
}

/* A prefill long enough that experts get more tokens than a thread's up
 * projection scratch holds at full width (MOE_SCRATCH_TOKENS, 64), so their units
 * are computed in chunks: still the bits of one token at a time. */
static void test_long_prefill(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids ids = {0};
    uint32_t h = 12345;
    for (int i = 0; i < 300; i++) {
        h = h * 1664525u + 1013904223u;
        assert_int_equal(gpo_ids_push(&ids, (int32_t)((h >> 8) % (uint32_t)V)), GPO_OK);
    }
    for (int pi = 0; pi < 2; pi++) {
        const enum gpo_path path = pi ? GPO_PATH_FAST : GPO_PATH_EXACT;
        float *a = run_logits(m, &ids, 1, path, 1);
        float *b = run_logits(m, &ids, (int64_t)ids.n, path, 2);
        float *c = run_logits(m, &ids, 97, path, 3);
        assert_memory_equal(a, b, ids.n * (size_t)V * 4);
        assert_memory_equal(a, c, ids.n * (size_t)V * 4);
        free(a); free(b); free(c);
    }
    gpo_ids_free(&ids);
    gpo_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_exact),      cmocka_unit_test(test_threads_fast),
        cmocka_unit_test(test_threads_gguf_exact), cmocka_unit_test(test_threads_gguf_fast),
        cmocka_unit_test(test_batch_exact),        cmocka_unit_test(test_batch_fast),
        cmocka_unit_test(test_batch_gguf),         cmocka_unit_test(test_counters),
        cmocka_unit_test(test_uneven_experts),     cmocka_unit_test(test_long_prefill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
