/* test_shard.c - the sharded forward pass in one process: the shard of a 1x1 mesh
 * runs the sharded schedule (embedding and partial sums through the collectives,
 * wo by columns, bo after the sum, the expert range) and must give the bits of
 * the whole-model pass on the tiny-a fixture, for both paths, several thread
 * counts and batch make-ups; KV caches and pools of a shard hold only its KV
 * heads; a TP shard's packed wo holds its columns and gives the bits of the strided
 * view; shards and caches that do not fit are refused with their numbers.
 * Several ranks are tested under mpirun by tests/e2e_mpi_forward.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "forward.h"
#include "forward_impl.h"
#include "gpo.h"
#include "gpo_engine.h"
#include "kvpool.h"
#include "mesh.h"
#include "test_common.h"

#define FIX "tests/fixtures/tiny-a"
#define N_SEQ 4
#define TOL 1e-3

static gpo_model *g_model;

static int setup(void **state) {
    (void)state;
    gpo_set_log_level(GPO_LOG_ERROR);
    return gpo_model_load(FIX, NULL, &g_model) == GPO_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    gpo_model_free(g_model);
    return 0;
}

/* Rank `rank`'s shard of mesh tp x ep (one replica) of model m. */
static void shard_in(const gpo_model *m, int tp, int ep, int rank, struct gpo_mesh_shard *s) {
    const struct gpo_config *c = gpo_model_config(m);
    struct gpo_mesh mesh = {.tp = tp, .ep = ep, .dp = 1};
    struct gpo_mesh_weights w;
    assert_int_equal(gpo_mesh_validate(c, &mesh, tp * ep), GPO_OK);
    gpo_mesh_weights_of_model(m, &w);
    gpo_mesh_shard_of(c, &mesh, &w, rank, s);
}

static void shard_of(int tp, int ep, int rank, struct gpo_mesh_shard *s) {
    shard_in(g_model, tp, ep, rank, s);
}

/* The logits of every position of the golden sequences: one after the other in
 * chunks of `chunk` tokens, or (chunk 0) all four prefilled in one batch. */
static float *run(const struct gpo_mesh_shard *shard, const struct gpo_mesh_groups *g,
                  enum gpo_path path, int threads, int64_t chunk, size_t *rows_out) {
    const int64_t V = gpo_model_config(g_model)->n_vocab;
    struct gpo_ids ids[N_SEQ] = {{0}};
    size_t rows = 0;
    for (int s = 0; s < N_SEQ; s++) {
        load_golden_ids(s, &ids[s]);
        rows += ids[s].n;
    }
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)rows, .max_seqs = N_SEQ, .n_threads = threads,
                             .path = path, .shard = shard, .groups = g};
    assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_OK);
    float *lg = malloc(rows * (size_t)V * sizeof *lg);
    assert_non_null(lg);
    gpo_kv *kv[N_SEQ];
    struct gpo_seq_batch b[N_SEQ];
    size_t row = 0;
    for (int s = 0; s < N_SEQ; s++) {
        assert_int_equal(gpo_kv_create_shard(g_model, shard, (int64_t)ids[s].n, 0, &kv[s]), GPO_OK);
        b[s] = (struct gpo_seq_batch){kv[s], ids[s].ids, (int64_t)ids[s].n, GPO_LOGITS_ALL};
        for (int64_t i = 0; chunk > 0 && i < (int64_t)ids[s].n; i += chunk) {
            struct gpo_seq_batch p = b[s];
            p.tokens += i;
            p.n_tokens = (int64_t)ids[s].n - i < chunk ? (int64_t)ids[s].n - i : chunk;
            assert_int_equal(gpo_forward(ctx, &p, 1, lg + (row + (size_t)i) * (size_t)V), GPO_OK);
        }
        row += ids[s].n;
    }
    if (chunk == 0) assert_int_equal(gpo_forward(ctx, b, N_SEQ, lg), GPO_OK);
    for (int s = 0; s < N_SEQ; s++) {
        gpo_kv_free(kv[s]);
        gpo_ids_free(&ids[s]);
    }
    gpo_ctx_free(ctx);
    *rows_out = rows;
    return lg;
}

/* The golden logits of the four sequences, one after the other. */
static float *golden(size_t rows) {
    const int64_t V = gpo_model_config(g_model)->n_vocab;
    float *all = malloc(rows * (size_t)V * sizeof *all);
    assert_non_null(all);
    size_t at = 0;
    for (int s = 0; s < N_SEQ; s++) {
        char path[256];
        size_t n;
        snprintf(path, sizeof path, FIX "/golden/seq%d.logits.f32", s);
        float *g = read_all_or_fail(path, &n);
        assert_true(at + n / sizeof *g <= rows * (size_t)V);
        memcpy(all + at, g, n);
        at += n / sizeof *g;
        free(g);
    }
    assert_int_equal(at, rows * (size_t)V);
    return all;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] > b[i] ? (double)a[i] - b[i] : (double)b[i] - a[i];
        if (!(d <= mx)) mx = d;
    }
    return mx;
}

/* The whole model as the shard of a 1x1 mesh: the same bits as without a shard,
 * whatever the thread count, chunking and batch make-up, and within the golden
 * tolerance of the fixture. */
static void test_whole_shard_bits(void **st) {
    (void)st;
    const int64_t V = gpo_model_config(g_model)->n_vocab;
    struct gpo_mesh_shard shard;
    shard_of(1, 1, 0, &shard);
    struct gpo_mesh mesh = {1, 1, 1};
    struct gpo_mesh_groups g;
    assert_int_equal(gpo_mesh_groups_open(&mesh, &g), GPO_OK);
    const enum gpo_path paths[2] = {GPO_PATH_EXACT, GPO_PATH_FAST};
    for (int pi = 0; pi < 2; pi++) {
        size_t rows;
        float *whole = run(NULL, NULL, paths[pi], 2, 1 << 20, &rows);
        const size_t n = rows * (size_t)V;
        const struct {
            int threads;
            int64_t chunk;
        } cases[] = {{1, 1 << 20}, {3, 1 << 20}, {2, 1}, {2, 5}, {3, 0}};
        for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
            size_t r2;
            float *sh = run(&shard, &g, paths[pi], cases[ci].threads, cases[ci].chunk, &r2);
            assert_int_equal(r2, rows);
            if (memcmp(sh, whole, n * sizeof *sh) != 0)
                fail_msg("path %d, %d threads, chunk %lld: the 1x1 shard differs from the whole "
                         "model by %g", pi, cases[ci].threads, (long long)cases[ci].chunk,
                         max_diff(sh, whole, n));
            free(sh);
        }
        if (paths[pi] == GPO_PATH_EXACT) {
            float *gold = golden(rows);
            double d = max_diff(whole, gold, n);
            printf("  1x1 shard, exact path: max|d| %.3g against the fixture\n", d);
            assert_true(d <= TOL);
            free(gold);
        }
        free(whole);
    }
    gpo_mesh_groups_close(&g);
}

/* Caches and pools of a shard hold its KV heads only, and do not mix with caches
 * of other shards. */
static void test_kv_shard(void **st) {
    (void)st;
    const struct gpo_config *c = gpo_model_config(g_model);
    struct gpo_mesh_shard s0, s1;
    shard_of(2, 1, 0, &s0);
    shard_of(2, 1, 1, &s1);
    assert_int_equal(s0.kv_head1 - s0.kv_head0, c->n_head_kv / 2);
    gpo_kv *whole, *half;
    assert_int_equal(gpo_kv_create_shard(g_model, NULL, 64, 0, &whole), GPO_OK);
    assert_int_equal(gpo_kv_create_shard(g_model, &s1, 64, 0, &half), GPO_OK);
    assert_int_equal(whole->kv_dim, c->n_head_kv * c->head_dim);
    assert_int_equal(half->kv_dim, (c->n_head_kv / 2) * c->head_dim);
    assert_int_equal(2 * gpo_kv_bytes(half), gpo_kv_bytes(whole));
    assert_int_equal(gpo_kv_bytes(whole), gpo_kv_bytes_for(c, 64));

    struct gpo_kv_pool *pool, *pool_all;
    assert_int_equal(gpo_kv_pool_create(c, &s0, 8, 16, &pool), GPO_OK);
    assert_int_equal(gpo_kv_pool_create(c, NULL, 8, 16, &pool_all), GPO_OK);
    assert_int_equal(pool->kv_dim, half->kv_dim);
    assert_int_equal(2 * pool->bytes, pool_all->bytes);
    gpo_kv *paged;
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, pool, 64, 0, &paged), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "shard"));
    assert_int_equal(gpo_kv_create_paged(g_model, &s0, pool, 64, 0, &paged), GPO_OK);
    assert_int_equal(paged->kv_dim, half->kv_dim);
    assert_int_equal(gpo_kv_reserve(paged, 20), GPO_OK);
    assert_int_equal(pool->n_free, 6);
    gpo_kv_free(paged);
    gpo_kv_pool_free(pool);
    gpo_kv_pool_free(pool_all);

    /* The engine's plan sizes a shard's blocks and rings by its heads. */
    struct gpo_engine_opts eo = {.max_seq_len = 256, .kv_memory = 1 << 20};
    struct gpo_kv_plan all, part;
    assert_int_equal(gpo_engine_kv_plan(g_model, &eo, 2, &all), GPO_OK);
    eo.shard = &s0;
    assert_int_equal(gpo_engine_kv_plan(g_model, &eo, 2, &part), GPO_OK);
    assert_int_equal(2 * part.block_bytes, all.block_bytes);
    assert_int_equal(2 * part.ring_bytes, all.ring_bytes);
    assert_int_equal(part.blocks, all.blocks); /* both capped at 2 x 256 positions */

    /* A sharded pass refuses a cache of every head, naming both sizes. */
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = 4, .max_seqs = 1, .n_threads = 1, .shard = &s0};
    assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_OK);
    const int32_t tok[1] = {5};
    struct gpo_seq_batch b = {whole, tok, 1, GPO_LOGITS_NONE};
    assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "128 floats per position"));
    assert_non_null(strstr(gpo_last_error(), "(this context's: 64)"));
    assert_int_equal(gpo_kv_len(whole), 0);
    gpo_ctx_free(ctx);
    gpo_kv_free(whole);
    gpo_kv_free(half);
}

/* A shard's pass crosses three barriers more per layer than the whole model's:
 * the sum after attention, and the MoE's partial sums before and after theirs. */
static void test_shard_barriers(void **st) {
    (void)st;
    const struct gpo_config *c = gpo_model_config(g_model);
    struct gpo_mesh_shard shard;
    shard_of(1, 1, 0, &shard);
    const int32_t tok[3] = {5, 7, 11};
    for (int sharded = 0; sharded < 2; sharded++) {
        gpo_ctx *ctx;
        gpo_kv *kv;
        struct gpo_ctx_opts o = {.max_tokens = 3, .max_seqs = 1, .n_threads = 2,
                                 .shard = sharded ? &shard : NULL};
        assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_OK);
        assert_int_equal(gpo_kv_create_shard(g_model, o.shard, 8, 0, &kv), GPO_OK);
        struct gpo_seq_batch b = {kv, tok, 3, GPO_LOGITS_NONE};
        assert_int_equal(gpo_forward(ctx, &b, 1, NULL), GPO_OK);
        struct gpo_ctx_stats cs;
        gpo_ctx_stats(ctx, &cs);
        assert_int_equal(cs.calls, 1);
        assert_int_equal(cs.barriers, (sharded ? 10 : 7) * c->n_layer + 2);
        gpo_kv_free(kv);
        gpo_ctx_free(ctx);
    }
}

/* The packed wo of rank `rank` of mesh tp x 1 on model m: the plan's bytes; the
 * part's columns of every row as stored; and the product over all rows in one
 * kernel call gives, bit for bit, what one call per row through the strided view
 * of those columns gives (the path the packed copy replaced), for a decode, a
 * small and a panel-sized batch, and agrees with the scalar reference kernel.
 * Returns the packed bytes. */
static uint64_t check_packed_wo(const gpo_model *m, int tp, int rank) {
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t H = c->n_embd, T = 64;
    struct gpo_mesh_shard s;
    shard_in(m, tp, 1, rank, &s);
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = T, .max_seqs = 1, .n_threads = 2, .shard = &s};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    const struct gpo_ctx *x = ctx;
    assert_int_equal(gpo_ctx_wo_packed_bytes(ctx), s.bytes_packed);
    if (tp == 1) {
        assert_null(x->wo_pack);
        assert_int_equal(s.bytes_packed, 0);
        gpo_ctx_free(ctx);
        return 0;
    }
    const int64_t col0 = s.q_row0, qd = s.q_row1 - s.q_row0;
    float *att = malloc((size_t)(T * qd) * sizeof *att), *y = malloc((size_t)(T * H) * sizeof *y),
          *y_view = malloc((size_t)(T * H) * sizeof *y), *y_ref = malloc((size_t)(T * H) * sizeof *y);
    assert_true(att && y && y_view && y_ref);
    uint32_t seed = 12345u + (uint32_t)rank;
    for (int64_t i = 0; i < T * qd; i++) {
        seed = seed * 1664525u + 1013904223u;
        att[i] = (float)((int32_t)(seed >> 8) % 2001 - 1000) / 500.0f;
    }
    uint64_t sum = 0;
    for (int64_t l = 0; l < c->n_layer; l++) {
        const struct gpo_tview *W = &m->layers[l].wo, *Pk = &x->wo_pack[l];
        assert_int_equal(Pk->dtype, W->dtype);
        assert_int_equal(Pk->rows, W->rows);
        assert_int_equal(Pk->cols, qd);
        /* Bytes before the part's first column, and of its columns, in one row. */
        const struct gpo_tview lead = {NULL, W->dtype, 1, col0};
        const size_t rb = gpo_tview_row_bytes(W), c0 = gpo_tview_row_bytes(&lead),
                     pb = gpo_tview_row_bytes(Pk);
        sum += (uint64_t)pb * (uint64_t)Pk->rows;
        const uint8_t *src = W->data, *dst = Pk->data;
        /* Row views of the part's columns: of W as stored, or (Q8_0x16, repacked at
         * load) its rows unpacked, whose Q8_0 kernel gives the Q8_0x16 one's bits. */
        size_t vb = rb, v0 = c0;
        enum gpo_dtype vt = W->dtype;
        uint8_t *unpacked = NULL;
        if (W->dtype == GPO_DT_Q8_0X16) {
            const int64_t nb = W->cols / 32, pn = qd / 32;
            struct gpo_q8_0_block *full = malloc((size_t)nb * sizeof *full),
                                  *part = malloc((size_t)pn * sizeof *part);
            unpacked = malloc((size_t)W->rows * pb);
            assert_true(full && part && unpacked);
            for (int64_t r = 0; r < W->rows; r++) {
                gpo_q8_0x16_row(full, src, r, W->cols);
                gpo_q8_0x16_row(part, dst, r, qd);
                assert_memory_equal(part, full + col0 / 32, pb);
                memcpy(unpacked + (size_t)r * pb, part, pb);
            }
            free(full);
            free(part);
            src = unpacked, vb = pb, v0 = 0, vt = GPO_DT_Q8_0;
        } else {
            for (int64_t r = 0; r < W->rows; r++)
                assert_memory_equal(dst + (size_t)r * pb, src + (size_t)r * rb + c0, pb);
        }
        const int64_t batches[] = {1, 5, T};
        for (size_t bi = 0; bi < sizeof batches / sizeof *batches; bi++) {
            const int64_t n = batches[bi];
            x->k->matmul[W->dtype](y, H, Pk->data, att, qd, n, 0, H, qd);
            for (int64_t r = 0; r < W->rows; r++)
                x->k->matmul[vt](y_view + r, H, src + (size_t)r * vb + v0, att, qd, n, 0, 1, qd);
            if (memcmp(y, y_view, (size_t)(n * H) * sizeof *y) != 0)
                fail_msg("mesh %dx1 rank %d layer %lld, %lld tokens: the packed wo differs from the "
                         "strided view by %g", tp, rank, (long long)l, (long long)n,
                         max_diff(y, y_view, (size_t)(n * H)));
            gpo_kernels_ref()->matmul[W->dtype](y_ref, H, Pk->data, att, qd, n, 0, H, qd);
            for (int64_t i = 0; i < n * H; i++)
                assert_true(fabs((double)y[i] - y_ref[i]) <= 1e-4 * (1.0 + fabs((double)y_ref[i])));
        }
        free(unpacked);
    }
    assert_int_equal(sum, s.bytes_packed);
    free(att);
    free(y);
    free(y_view);
    free(y_ref);
    gpo_ctx_free(ctx);
    return sum;
}

/* Every TP rank packs its columns of wo once at context creation; together they
 * hold each column once.  BF16 as stored, and Q8_0 blocks under --dense q8. */
static void test_packed_wo(void **st) {
    (void)st;
    gpo_model *q8;
    struct gpo_load_opts lo = {.dense_q8 = 1};
    assert_int_equal(gpo_model_load(FIX, &lo, &q8), GPO_OK);
    const gpo_model *models[2] = {g_model, q8};
    for (int mi = 0; mi < 2; mi++) {
        const gpo_model *m = models[mi];
        const struct gpo_config *c = gpo_model_config(m);
        uint64_t wo = 0, packed = 0;
        for (int64_t l = 0; l < c->n_layer; l++)
            wo += (uint64_t)m->layers[l].wo.rows * gpo_tview_row_bytes(&m->layers[l].wo);
        assert_int_equal(check_packed_wo(m, 1, 0), 0);
        for (int r = 0; r < 2; r++) packed += check_packed_wo(m, 2, r);
        assert_int_equal(packed, wo);
    }
    assert_int_equal(g_model->layers[0].wo.dtype, GPO_DT_BF16);
    /* (repacked as Q8_0x16 where the best kernel table reads that layout) */
    const struct gpo_kernels *kt = gpo_kernels_select(NULL);
    const int x16 = kt && kt != gpo_kernels_ref() && kt->matmul_q8_0x16_q8;
    assert_int_equal(q8->layers[0].wo.dtype, x16 ? GPO_DT_Q8_0X16 : GPO_DT_Q8_0);
    gpo_model_free(q8);
}

/* Shards that do not fit the model are refused naming the range. */
static void test_bad_shards(void **st) {
    (void)st;
    const struct gpo_config *c = gpo_model_config(g_model);
    struct gpo_mesh_shard s;
    gpo_ctx *ctx = NULL;
    struct gpo_ctx_opts o = {.max_tokens = 4, .max_seqs = 1, .n_threads = 1, .shard = &s};

    shard_of(1, 2, 1, &s);
    s.expert1 = c->n_expert + 2;
    assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "experts [4, 10) are not within the model's 8"));

    shard_of(2, 1, 1, &s);
    s.head0 = 1; /* not the first query head of KV head 1 */
    assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "query heads [1, 4)"));

    shard_of(2, 2, 3, &s);
    s.vocab1 = c->n_vocab + 1;
    assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "vocabulary rows [750, 1001)"));

    shard_of(2, 1, 0, &s);
    s.kv_head1 = s.kv_head0;
    gpo_kv *kv = NULL;
    assert_int_equal(gpo_kv_create_shard(g_model, &s, 8, 0, &kv), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "KV heads [0, 0)"));
    assert_null(kv);
    assert_null(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_shard_bits),
        cmocka_unit_test(test_kv_shard),
        cmocka_unit_test(test_shard_barriers),
        cmocka_unit_test(test_packed_wo),
        cmocka_unit_test(test_bad_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
