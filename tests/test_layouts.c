/* test_layouts.c - one forward pass for every way a file may store the experts.
 * The tiny-a fixture's experts are rebuilt in memory in each GGUF arrangement
 * (GGML MXFP4 blocks; gate and up interleaved, as two tensors, or as one tensor of
 * all gate rows then all up rows; biases split to match), the model's layer views
 * are pointed at them, and the logits must equal, bit for bit, those of the
 * safetensors views: exact, fast and reference paths, prefill of two sequences in
 * one batch and a decode step, on 1 thread and on 3 (whose row split crosses the
 * seam between gate and up rows). */
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

#include "forward.h"
#include "gpo.h"
#include "model.h"
#include "safetensors.h"

#define FIX "tests/fixtures/tiny-a"

/* ------------------------------------------------------------------------- */
/* The experts of one layer in the other arrangements                         */

/* Buffers of one layer's rebuilt experts, freed with the layouts. */
struct layer_bufs {
    uint8_t *mlp1_ggml;   /* [E][2F] GGML blocks, interleaved rows as stored */
    uint8_t *gate, *up;   /* [E][F] GGML blocks each */
    uint8_t *fused;       /* [E][2F]: F gate rows, then F up rows */
    uint8_t *gate_b, *up_b, *fused_b; /* biases to match */
    uint8_t *st_blocks, *st_scales;   /* [E][2F] safetensors layout, gate then up */
    uint8_t *mlp2_ggml;   /* [E][H] GGML blocks */
};

enum arrangement {
    ARR_ST,          /* as loaded: safetensors, interleaved */
    ARR_GGML_INTER,  /* GGML blocks, interleaved (gate_up as stored) */
    ARR_GGML_TWO,    /* GGML blocks, ffn_gate_exps + ffn_up_exps */
    ARR_GGML_FUSED,  /* GGML blocks, ffn_gate_up_exps (gate rows then up rows) */
    ARR_ST_FUSED,    /* safetensors blocks, gate rows then up rows */
    ARR_COUNT
};
static const char *arr_name[ARR_COUNT] = {"safetensors", "ggml interleaved", "ggml gate+up",
                                          "ggml fused", "st gate|up"};

struct layouts {
    gpo_model *m;
    struct gpo_layer *orig;  /* the layers as loaded */
    struct layer_bufs *bufs; /* per layer */
};

/* Row r of the gate (g = 0) or up (g = 1) units of an interleaved stack: row 2r + g. */
static void copy_rows_deinterleaved(uint8_t *dst, const uint8_t *src, int64_t E, int64_t F,
                                    size_t row_bytes, int g, int64_t dst_rows, int64_t dst_row0) {
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = 0; r < F; r++)
            memcpy(dst + ((size_t)e * dst_rows + dst_row0 + r) * row_bytes,
                   src + ((size_t)e * 2 * F + 2 * r + g) * row_bytes, row_bytes);
}

static void build_layouts(struct layouts *ly, gpo_model *m) {
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t E = c->n_expert, F = c->n_ff, H = c->n_embd, L = c->n_layer;
    ly->m = m;
    ly->orig = malloc((size_t)L * sizeof *ly->orig);
    ly->bufs = calloc((size_t)L, sizeof *ly->bufs);
    assert_non_null(ly->orig);
    assert_non_null(ly->bufs);
    memcpy(ly->orig, m->layers, (size_t)L * sizeof *ly->orig);
    for (int64_t l = 0; l < L; l++) {
        const struct gpo_layer *O = &ly->orig[l];
        struct layer_bufs *b = &ly->bufs[l];
        assert_int_equal(O->gate_up, GPO_GATE_UP_INTERLEAVED);
        assert_int_equal(O->mlp1[0].layout, GPO_MXFP4_SPLIT);
        assert_int_equal(O->mlp1[0].rows, 2 * F);
        const int64_t nb1 = H / 32, nb2 = F / 32;
        const size_t g1 = (size_t)nb1 * GPO_MXFP4_GGML_BLOCK_BYTES, g2 = (size_t)nb2 * GPO_MXFP4_GGML_BLOCK_BYTES;
        const size_t es = gpo_dtype_size(O->mlp1[0].bias.dtype);
        b->mlp1_ggml = malloc((size_t)E * 2 * F * g1);
        b->gate = malloc((size_t)E * F * g1);
        b->up = malloc((size_t)E * F * g1);
        b->fused = malloc((size_t)E * 2 * F * g1);
        b->gate_b = malloc((size_t)E * F * es);
        b->up_b = malloc((size_t)E * F * es);
        b->fused_b = malloc((size_t)E * 2 * F * es);
        b->st_blocks = malloc((size_t)E * 2 * F * nb1 * 16);
        b->st_scales = malloc((size_t)E * 2 * F * nb1);
        b->mlp2_ggml = malloc((size_t)E * H * g2);
        assert_true(b->mlp1_ggml && b->gate && b->up && b->fused && b->gate_b && b->up_b &&
                    b->fused_b && b->st_blocks && b->st_scales && b->mlp2_ggml);
        /* GGML blocks of the whole stacks: one repacking call each. */
        gpo_mxfp4_to_ggml(b->mlp1_ggml, O->mlp1[0].blocks, O->mlp1[0].scales, E * 2 * F * nb1);
        gpo_mxfp4_to_ggml(b->mlp2_ggml, O->mlp2.blocks, O->mlp2.scales, E * H * nb2);
        /* Gate/up apart, as two tensors and as one, weights and biases alike. */
        copy_rows_deinterleaved(b->gate, b->mlp1_ggml, E, F, g1, 0, F, 0);
        copy_rows_deinterleaved(b->up, b->mlp1_ggml, E, F, g1, 1, F, 0);
        copy_rows_deinterleaved(b->fused, b->mlp1_ggml, E, F, g1, 0, 2 * F, 0);
        copy_rows_deinterleaved(b->fused, b->mlp1_ggml, E, F, g1, 1, 2 * F, F);
        const uint8_t *bias = O->mlp1[0].bias.data;
        copy_rows_deinterleaved(b->gate_b, bias, E, F, es, 0, F, 0);
        copy_rows_deinterleaved(b->up_b, bias, E, F, es, 1, F, 0);
        copy_rows_deinterleaved(b->fused_b, bias, E, F, es, 0, 2 * F, 0);
        copy_rows_deinterleaved(b->fused_b, bias, E, F, es, 1, 2 * F, F);
        copy_rows_deinterleaved(b->st_blocks, O->mlp1[0].blocks, E, F, (size_t)nb1 * 16, 0, 2 * F, 0);
        copy_rows_deinterleaved(b->st_blocks, O->mlp1[0].blocks, E, F, (size_t)nb1 * 16, 1, 2 * F, F);
        copy_rows_deinterleaved(b->st_scales, O->mlp1[0].scales, E, F, (size_t)nb1, 0, 2 * F, 0);
        copy_rows_deinterleaved(b->st_scales, O->mlp1[0].scales, E, F, (size_t)nb1, 1, 2 * F, F);
    }
}

static struct gpo_tview bias_view(const void *data, enum gpo_dtype dt, int64_t E, int64_t n) {
    return (struct gpo_tview){.data = data, .dtype = dt, .rows = E, .cols = n};
}

/* Point every layer's expert views at arrangement a (the binders' helpers build them). */
static void use_layout(struct layouts *ly, enum arrangement a) {
    struct gpo_model *m = ly->m;
    const struct gpo_config *c = &m->cfg;
    const int64_t E = c->n_expert, F = c->n_ff, H = c->n_embd;
    for (int64_t l = 0; l < c->n_layer; l++) {
        struct gpo_layer *L = &m->layers[l];
        const struct gpo_layer *O = &ly->orig[l];
        const struct layer_bufs *b = &ly->bufs[l];
        const enum gpo_dtype dt = O->mlp1[0].bias.dtype;
        *L = *O;
        if (a == ARR_ST) continue;
        /* The loaded views cover whole [E][rows] bias tensors. */
        const struct gpo_tview b1 = O->mlp1[0].bias, b2 = O->mlp2.bias;
        L->mlp2 = gpo_xmat_ggml(b->mlp2_ggml, H, 0, H, F, &b2);
        struct gpo_tview gb = bias_view(b->gate_b, dt, E, F), ub = bias_view(b->up_b, dt, E, F),
                         fb = bias_view(b->fused_b, dt, E, 2 * F);
        switch (a) {
        case ARR_GGML_INTER:
            L->mlp1[0] = gpo_xmat_ggml(b->mlp1_ggml, 2 * F, 0, 2 * F, H, &b1);
            break;
        case ARR_GGML_TWO:
            L->gate_up = GPO_GATE_UP_SEPARATE;
            L->mlp1[0] = gpo_xmat_ggml(b->gate, F, 0, F, H, &gb);
            L->mlp1[1] = gpo_xmat_ggml(b->up, F, 0, F, H, &ub);
            break;
        case ARR_GGML_FUSED:
            L->gate_up = GPO_GATE_UP_SEPARATE;
            L->mlp1[0] = gpo_xmat_ggml(b->fused, 2 * F, 0, F, H, &fb);
            L->mlp1[1] = gpo_xmat_ggml(b->fused, 2 * F, F, F, H, &fb);
            break;
        case ARR_ST_FUSED:
            L->gate_up = GPO_GATE_UP_SEPARATE;
            L->mlp2 = O->mlp2;
            L->mlp1[0] = gpo_xmat_split(b->st_blocks, b->st_scales, 2 * F, 0, F, H, &fb);
            L->mlp1[1] = gpo_xmat_split(b->st_blocks, b->st_scales, 2 * F, F, F, H, &fb);
            break;
        default: break;
        }
    }
}

static void free_layouts(struct layouts *ly) {
    use_layout(ly, ARR_ST);
    for (int64_t l = 0; l < ly->m->cfg.n_layer; l++) {
        struct layer_bufs *b = &ly->bufs[l];
        void *p[] = {b->mlp1_ggml, b->gate, b->up, b->fused, b->gate_b, b->up_b,
                     b->fused_b, b->st_blocks, b->st_scales, b->mlp2_ggml};
        for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    }
    free(ly->bufs);
    free(ly->orig);
}

/* ------------------------------------------------------------------------- */
/* Runs                                                                       */

/* Logits of a prefill of seq0 and seq3 in one batch (every position), then one
 * decode step of both in one batch (fixed tokens, so the step does not depend on
 * the logits under test).  *rows is the number of logit rows returned. */
static float *run_pass(gpo_model *m, enum gpo_path path, int threads, size_t *rows) {
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids a = {0}, b = {0};
    load_golden_ids(0, &a);
    load_golden_ids(3, &b);
    const size_t n = a.n + b.n + 2;
    gpo_ctx *ctx;
    gpo_kv *kv[2];
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)(a.n + b.n), .max_seqs = 2,
                             .n_threads = threads, .path = path};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)a.n + 1, &kv[0]), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)b.n + 1, &kv[1]), GPO_OK);
    float *lg = malloc(n * (size_t)V * 4);
    assert_non_null(lg);
    struct gpo_seq_batch pre[2] = {{kv[0], a.ids, (int64_t)a.n, GPO_LOGITS_ALL},
                                   {kv[1], b.ids, (int64_t)b.n, GPO_LOGITS_ALL}};
    assert_int_equal(gpo_forward(ctx, pre, 2, lg), GPO_OK);
    int32_t next[2] = {7, 123};
    struct gpo_seq_batch step[2] = {{kv[0], &next[0], 1, GPO_LOGITS_LAST},
                                    {kv[1], &next[1], 1, GPO_LOGITS_LAST}};
    assert_int_equal(gpo_forward(ctx, step, 2, lg + (a.n + b.n) * (size_t)V), GPO_OK);
    gpo_kv_free(kv[0]);
    gpo_kv_free(kv[1]);
    gpo_ctx_free(ctx);
    gpo_ids_free(&a);
    gpo_ids_free(&b);
    *rows = n;
    return lg;
}

static const char *path_name(enum gpo_path p) {
    return p == GPO_PATH_REF ? "ref" : p == GPO_PATH_FAST ? "fast" : "exact";
}

/* A path and a thread count to run every arrangement on. */
struct run_case {
    enum gpo_path path;
    int threads;
};

/* Every arrangement against the safetensors views, on each case: the logits must
 * be the same bytes. */
static void check_all_layouts(gpo_model *m, const struct run_case *cases, int n_cases) {
    struct layouts ly;
    build_layouts(&ly, m);
    const int64_t V = m->cfg.n_vocab;
    for (int i = 0; i < n_cases; i++) {
        const struct run_case *rc = &cases[i];
        use_layout(&ly, ARR_ST);
        size_t rows, rows2;
        float *want = run_pass(m, rc->path, rc->threads, &rows);
        for (int a = ARR_ST + 1; a < ARR_COUNT; a++) {
            use_layout(&ly, (enum arrangement)a);
            float *got = run_pass(m, rc->path, rc->threads, &rows2);
            assert_int_equal(rows, rows2);
            int same = memcmp(want, got, rows * (size_t)V * 4) == 0;
            printf("  %-5s -t %d %-16s: %s\n", path_name(rc->path), rc->threads, arr_name[a],
                   same ? "bit-identical" : "DIFFERENT");
            assert_true(same);
            free(got);
        }
        free(want);
    }
    /* The comparison sees the views: gate and up swapped give other logits. */
    use_layout(&ly, ARR_ST);
    size_t rows;
    float *want = run_pass(m, GPO_PATH_EXACT, 1, &rows);
    use_layout(&ly, ARR_GGML_TWO);
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        struct gpo_xmat t = m->layers[l].mlp1[0];
        m->layers[l].mlp1[0] = m->layers[l].mlp1[1];
        m->layers[l].mlp1[1] = t;
    }
    float *got = run_pass(m, GPO_PATH_EXACT, 1, &rows);
    assert_true(memcmp(want, got, rows * (size_t)V * 4) != 0);
    free(want);
    free(got);
    free_layouts(&ly);
}

static void test_layouts_bit_identical(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    /* 3 threads split the 2F = 192 rows at 64 and 128, so one thread's share
     * crosses from the gate rows into the up rows (F = 96).  Oversubscribed teams
     * are slow on a small machine: one case of them. */
    const struct run_case cases[] = {{GPO_PATH_EXACT, 1}, {GPO_PATH_FAST, 1}, {GPO_PATH_REF, 1},
                                     {GPO_PATH_FAST, 3}};
    check_all_layouts(m, cases, (int)(sizeof cases / sizeof *cases));
    gpo_model_free(m);
}

/* --dense q8 leaves the experts alone; its Q8_0 attention and unembedding must
 * combine with every expert arrangement the same way. */
static void test_layouts_dense_q8(void **st) {
    (void)st;
    gpo_model *m;
    struct gpo_load_opts lo = {.dense_q8 = 1};
    assert_int_equal(gpo_model_load(FIX, &lo, &m), GPO_OK);
    /* (Q8_0x16 where the best kernel table reads that layout) */
    const struct gpo_kernels *kt = gpo_kernels_select(NULL);
    const int x16 = kt && kt != gpo_kernels_ref() && kt->matmul_q8_0x16_q8;
    assert_int_equal(m->layers[0].wq.dtype, x16 ? GPO_DT_Q8_0X16 : GPO_DT_Q8_0);
    const struct run_case cases[] = {{GPO_PATH_EXACT, 1}, {GPO_PATH_FAST, 1}};
    check_all_layouts(m, cases, 2);
    gpo_model_free(m);
}

/* With GGUF-arranged experts the model still matches OpenAI's reference logits
 * within the golden tolerance (seq0, one token at a time). */
static void test_layouts_golden_tolerance(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    struct layouts ly;
    build_layouts(&ly, m);
    use_layout(&ly, ARR_GGML_FUSED);
    const int64_t V = m->cfg.n_vocab;
    struct gpo_ids ids = {0};
    load_golden_ids(0, &ids);
    size_t ng;
    float *gold = read_all(FIX "/golden/seq0.logits.f32", &ng);
    assert_non_null(gold);
    assert_int_equal(ng, ids.n * (size_t)V * 4);
    gpo_ctx *ctx;
    gpo_kv *kv;
    struct gpo_ctx_opts o = {.max_tokens = 1, .max_seqs = 1, .n_threads = 2};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)ids.n, &kv), GPO_OK);
    float *lg = malloc((size_t)V * 4);
    double mx = 0;
    for (size_t i = 0; i < ids.n; i++) {
        struct gpo_seq_batch b = {kv, ids.ids + i, 1, GPO_LOGITS_LAST};
        assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_OK);
        for (int64_t v = 0; v < V; v++) {
            double d = fabs((double)lg[v] - gold[i * (size_t)V + (size_t)v]);
            if (!(d <= mx)) mx = d;
        }
    }
    printf("  ggml fused, exact, incremental seq0: max|d| %.3g\n", mx);
    assert_true(mx <= 1e-3);
    free(lg);
    free(gold);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_ids_free(&ids);
    free_layouts(&ly);
    gpo_model_free(m);
}

/* gpo_swiglu_pairs on the halves of a de-interleaved vector gives gpo_swiglu's bits,
 * across the clamps (gate above the limit, linear beyond both ends). */
static void test_swiglu_pairs(void **st) {
    (void)st;
    enum { N = 64 };
    float h[2 * N], sep[2 * N], a[N], b[N];
    for (int u = 0; u < N; u++) {
        h[2 * u] = (float)(u - 32) * 0.37f;          /* gate: -11.8 .. 11.5 */
        h[2 * u + 1] = (float)((u * 17) % 64 - 32) * 0.29f; /* linear: -9.3 .. 9.0 */
        sep[u] = h[2 * u];
        sep[N + u] = h[2 * u + 1];
    }
    gpo_swiglu(a, h, N, 1.702f, 7.0f);
    gpo_swiglu_pairs(b, sep, sep + N, 1, N, 1.702f, 7.0f);
    assert_memory_equal(a, b, sizeof a);
    /* and a value worked by hand: gate 1, linear 2 */
    float g = 1.0f, l = 2.0f, out;
    gpo_swiglu_pairs(&out, &g, &l, 1, 1, 1.702f, 7.0f);
    assert_true(fabs(out - 3.0 / (1.0 + exp(-1.702))) < 1e-6);
}

/* The view helpers address the right rows, bias elements and strides. */
static void test_xmat_views(void **st) {
    (void)st;
    uint16_t bias[3 * 8];
    struct gpo_tview bv = {.data = bias, .dtype = GPO_DT_BF16, .rows = 3, .cols = 8};
    static uint8_t blk[3 * 8 * 2 * GPO_MXFP4_GGML_BLOCK_BYTES];
    /* ffn_gate_up_exps of 3 experts, 8 rows (4 gate + 4 up) of 64 columns: the up half */
    struct gpo_xmat g = gpo_xmat_ggml(blk, 8, 4, 4, 64, &bv);
    assert_int_equal(g.layout, GPO_MXFP4_GGML);
    assert_ptr_equal(g.blocks, blk + 4 * 2 * GPO_MXFP4_GGML_BLOCK_BYTES);
    assert_int_equal(g.blocks_stride, 8 * 2 * GPO_MXFP4_GGML_BLOCK_BYTES);
    assert_int_equal(g.rows, 4);
    assert_int_equal(g.cols, 64);
    assert_ptr_equal(g.bias.data, bias + 4);
    assert_int_equal(g.bias_stride, 8);
    static uint8_t sc[3 * 8 * 2];
    struct gpo_xmat s = gpo_xmat_split(blk, sc, 8, 4, 4, 64, &bv);
    assert_int_equal(s.layout, GPO_MXFP4_SPLIT);
    assert_ptr_equal(s.blocks, blk + 4 * 2 * 16);
    assert_ptr_equal(s.scales, sc + 4 * 2);
    assert_int_equal(s.blocks_stride, 8 * 2 * 16);
    assert_int_equal(s.scales_stride, 8 * 2);
    assert_ptr_equal(s.bias.data, bias + 4);
}

/* A view that disagrees with the configuration is refused before any pass runs,
 * with the layer and the view named. */
static void test_bad_views_refused(void **st) {
    (void)st;
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    struct layouts ly;
    build_layouts(&ly, m);
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = 4, .n_threads = 1};
    /* separate gate/up whose up matrix has the interleaved row count */
    use_layout(&ly, ARR_GGML_TWO);
    m->layers[2].mlp1[1].rows = 2 * m->cfg.n_ff;
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_ERR_SHAPE);
    assert_non_null(strstr(gpo_last_error(), "layer 2: the up experts are 192 x 128"));
    /* GGML storage is one array, but safetensors storage needs its scales */
    use_layout(&ly, ARR_ST);
    m->layers[1].mlp2.scales = NULL;
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_ERR_SHAPE);
    assert_non_null(strstr(gpo_last_error(), "layer 1: the down experts' view is incomplete"));
    use_layout(&ly, ARR_GGML_FUSED);
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    gpo_ctx_free(ctx);
    free_layouts(&ly);
    gpo_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swiglu_pairs),
        cmocka_unit_test(test_xmat_views),
        cmocka_unit_test(test_layouts_bit_identical),
        cmocka_unit_test(test_layouts_dense_q8),
        cmocka_unit_test(test_layouts_golden_tolerance),
        cmocka_unit_test(test_bad_views_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
