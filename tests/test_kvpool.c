/* test_kvpool.c - the paged KV memory on a tiny random-weight model: a paged
 * cache gives the same logits bits as a contiguous one (blocks of several sizes,
 * scattered over the pool, sliding-window rings wrapping many times), the pool's
 * block accounting (reserve, refusal without side effects, rewind, free), and the
 * pool arithmetic of gpo_engine_kv_plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gpo.h"
#include "kvpool.h"
#include "test_common.h"

static char g_dir[256];
static gpo_model *g_model;

static int setup(void **state) {
    (void)state;
    char tmpl[] = "/tmp/gpo_kvpool_XXXXXX";
    if (!mkdtemp(tmpl)) return -1;
    snprintf(g_dir, sizeof g_dir, "%s", tmpl);
    char mdir[300];
    snprintf(mdir, sizeof mdir, "%s/m", g_dir);
    gpo_set_log_level(GPO_LOG_ERROR);
    struct gpo_mkmodel_opts mo = {.preset = "tiny", .out_dir = mdir, .seed = 5, .layout_hf = 1};
    if (gpo_mkmodel(&mo) != GPO_OK) return -1;
    if (gpo_model_load(mdir, NULL, &g_model) != GPO_OK) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    gpo_model_free(g_model);
    return rm_tree(g_dir) == 0 ? 0 : -1;
}

static uint64_t lcg(uint64_t *x) {
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return *x >> 33;
}

static int64_t n_full_layers(const struct gpo_config *c) {
    int64_t n = 0;
    for (int64_t l = 0; l < c->n_layer; l++) n += !c->layer_sliding[l];
    return n;
}

/* ------------------------------------------------------------------------- */
/* Same bits as a contiguous cache                                           */

/* N tokens in chunks of varying size (single tokens, chunks crossing block and
 * attention-chunk boundaries) through a contiguous cache and a paged one whose
 * blocks are interleaved with another sequence's, so its block table jumps
 * around the pool; every logits row must be the same bits.  Rings of
 * sliding_window slots (no margin) wrap many times. */
static void paged_vs_contiguous(enum gpo_path path, int64_t block_tokens) {
    const struct gpo_config *c = gpo_model_config(g_model);
    enum { N = 150, MAX_CHUNK = 40 };
    const int64_t V = c->n_vocab;
    gpo_ctx *ctx = NULL;
    struct gpo_ctx_opts co = {.max_tokens = MAX_CHUNK, .max_seqs = 2, .n_threads = 1, .path = path};
    assert_int_equal(gpo_ctx_create(g_model, &co, &ctx), GPO_OK);
    gpo_kv *flat = NULL, *paged = NULL, *other = NULL;
    assert_int_equal(gpo_kv_create_ex(g_model, N, 0, &flat), GPO_OK);
    struct gpo_kv_pool *pool = NULL;
    const int64_t per_seq = (N + block_tokens - 1) / block_tokens;
    assert_int_equal(gpo_kv_pool_create(c, NULL, 2 * per_seq, block_tokens, &pool), GPO_OK);
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, pool, N, 0, &paged), GPO_OK);
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, pool, N, 0, &other), GPO_OK);
    assert_true(paged->ring < N / 4); /* the rings wrap several times */

    int32_t toks[N];
    uint64_t seed = 11;
    for (int i = 0; i < N; i++) toks[i] = (int32_t)(lcg(&seed) % 50000);
    float *la = malloc((size_t)MAX_CHUNK * V * sizeof(float));
    float *lb = malloc((size_t)MAX_CHUNK * V * sizeof(float));
    assert_non_null(la);
    assert_non_null(lb);
    int64_t pos = 0, chunks = 0;
    while (pos < N) {
        int64_t n = (int64_t)(lcg(&seed) % 4 == 0 ? 1 + lcg(&seed) % MAX_CHUNK : 1);
        if (n > N - pos) n = N - pos;
        /* One block for the other sequence between ours: ids interleave. */
        if (other->n_blocks * block_tokens < N)
            assert_int_equal(gpo_kv_reserve(other, other->n_blocks * block_tokens + 1), GPO_OK);
        assert_int_equal(gpo_kv_reserve(paged, pos + n), GPO_OK);
        struct gpo_seq_batch a = {flat, toks + pos, n, GPO_LOGITS_ALL};
        struct gpo_seq_batch b = {paged, toks + pos, n, GPO_LOGITS_ALL};
        assert_int_equal(gpo_forward(ctx, &a, 1, la), GPO_OK);
        assert_int_equal(gpo_forward(ctx, &b, 1, lb), GPO_OK);
        assert_memory_equal(la, lb, (size_t)n * V * sizeof(float));
        pos += n;
        chunks++;
    }
    assert_true(chunks > 20);
    assert_int_equal(gpo_kv_len(paged), N);
    assert_int_equal(paged->n_blocks, per_seq);
    /* The table is not one run of consecutive blocks. */
    int jumps = 0;
    for (int64_t i = 1; i < paged->n_blocks; i++)
        jumps += paged->blocks[i] != paged->blocks[i - 1] + 1;
    assert_true(jumps > 0);
    /* A batch may not run past the blocks a paged cache holds. */
    int32_t one = 1;
    struct gpo_kv_pool *small = NULL;
    gpo_kv *tight = NULL;
    assert_int_equal(gpo_kv_pool_create(c, NULL, 1, block_tokens, &small), GPO_OK);
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, small, N, 0, &tight), GPO_OK);
    struct gpo_seq_batch t = {tight, &one, 1, GPO_LOGITS_LAST};
    assert_int_equal(gpo_forward(ctx, &t, 1, la), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "KV blocks hold 0"));

    gpo_kv_free(tight);
    gpo_kv_pool_free(small);
    free(la);
    free(lb);
    gpo_kv_free(flat);
    gpo_kv_free(paged);
    gpo_kv_free(other);
    assert_int_equal(pool->n_free, pool->n_blocks);
    gpo_kv_pool_free(pool);
    gpo_ctx_free(ctx);
}

static void test_paged_logits_bit_identical(void **state) {
    (void)state;
    /* 16 (the engine's), 32, and 5, whose runs cross the attention chunks. */
    paged_vs_contiguous(GPO_PATH_FAST, 16);
    paged_vs_contiguous(GPO_PATH_EXACT, 32);
    paged_vs_contiguous(GPO_PATH_FAST, 5);
}

/* ------------------------------------------------------------------------- */
/* Block accounting                                                          */

static void test_pool_accounting(void **state) {
    (void)state;
    const struct gpo_config *c = gpo_model_config(g_model);
    enum { B = 4, BLOCKS = 10, MAX = 32 };
    struct gpo_kv_pool *p = NULL;
    gpo_kv *a = NULL, *b = NULL;
    assert_int_equal(gpo_kv_pool_create(c, NULL, BLOCKS, B, &p), GPO_OK);
    assert_int_equal(p->bytes, (uint64_t)BLOCKS * gpo_kv_block_bytes(c, B));
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, p, MAX, 0, &a), GPO_OK);
    assert_int_equal(gpo_kv_create_paged(g_model, NULL, p, MAX, 0, &b), GPO_OK);
    /* A paged cache owns only its rings. */
    assert_int_equal(gpo_kv_bytes(a), gpo_kv_ring_bytes(c, MAX, 0));
    assert_true(gpo_kv_bytes(a) < gpo_kv_bytes_for(c, MAX));

    assert_int_equal(gpo_kv_blocks_short(a, 9), 3);
    assert_int_equal(gpo_kv_reserve(a, 9), GPO_OK);
    assert_int_equal(a->n_blocks, 3);
    assert_int_equal(p->n_free, 7);
    assert_int_equal(gpo_kv_reserve(a, 12), GPO_OK); /* already held */
    assert_int_equal(p->n_free, 7);
    /* Short of blocks: refused with the numbers, nothing taken. */
    assert_int_equal(gpo_kv_reserve(b, 30), GPO_ERR_NOMEM);
    assert_non_null(strstr(gpo_last_error(), "8 more KV blocks"));
    assert_non_null(strstr(gpo_last_error(), "7 of 10 free"));
    assert_int_equal(b->n_blocks, 0);
    assert_int_equal(p->n_free, 7);
    assert_int_equal(gpo_kv_reserve(b, 28), GPO_OK);
    assert_int_equal(p->n_free, 0);
    assert_int_equal(a->n_blocks + b->n_blocks + p->n_free, BLOCKS);
    /* Beyond the cache's own cap. */
    assert_int_equal(gpo_kv_reserve(a, MAX + 1), GPO_ERR_CONTEXT);
    /* Rewinding keeps the blocks of the positions kept. */
    a->len = 9; /* as if 9 tokens had run */
    assert_int_equal(gpo_kv_rewind(a, 5), GPO_OK);
    assert_int_equal(a->n_blocks, 2);
    assert_int_equal(p->n_free, 1);
    assert_int_equal(gpo_kv_rewind(a, 0), GPO_OK);
    assert_int_equal(a->n_blocks, 0);
    assert_int_equal(p->n_free, 3);
    /* Every block is handed out once: the ids held are distinct. */
    assert_int_equal(gpo_kv_reserve(a, 12), GPO_OK);
    uint8_t seen[BLOCKS] = {0};
    for (int64_t i = 0; i < a->n_blocks; i++) seen[a->blocks[i]]++;
    for (int64_t i = 0; i < b->n_blocks; i++) seen[b->blocks[i]]++;
    for (int i = 0; i < BLOCKS; i++) assert_int_equal(seen[i], 1);
    gpo_kv_free(b);
    assert_int_equal(p->n_free, 7);
    gpo_kv_free(a);
    assert_int_equal(p->n_free, BLOCKS);
    gpo_kv_pool_free(p);
}

/* ------------------------------------------------------------------------- */
/* The plan                                                                  */

static void test_plan_arithmetic(void **state) {
    (void)state;
    const struct gpo_config *c = gpo_model_config(g_model);
    const int64_t kvd = c->n_head_kv * c->head_dim, max_seq = 200;
    const uint64_t block = (uint64_t)n_full_layers(c) * 2 * 16 * (uint64_t)kvd * 4;
    struct gpo_kv_plan pl;
    struct gpo_engine_opts o = {.max_seq_len = max_seq, .kv_memory = block * 10 + block / 2};
    assert_int_equal(gpo_engine_kv_plan(g_model, &o, 4, &pl), GPO_OK);
    assert_int_equal(pl.block_tokens, 16);
    assert_int_equal(pl.block_bytes, block);
    assert_int_equal(pl.blocks, 10);
    assert_int_equal(pl.pool_bytes, 10 * block);
    assert_int_equal(pl.max_tokens, 160);
    assert_int_equal(pl.max_seq_len, max_seq);
    int64_t n_sliding = c->n_layer - n_full_layers(c);
    int64_t ring = c->sliding_window + 1024 < max_seq ? c->sliding_window + 1024 : max_seq;
    assert_int_equal(pl.ring_bytes, (uint64_t)(n_sliding * ring * kvd * 2 * 4));
    /* More than 4 slots of max_seq_len can use: capped (13 blocks each). */
    o.kv_memory = block * 1000;
    assert_int_equal(gpo_engine_kv_plan(g_model, &o, 4, &pl), GPO_OK);
    assert_int_equal(pl.blocks, 4 * 13);
    /* Less than a block: refused with the numbers. */
    o.kv_memory = block - 1;
    assert_int_equal(gpo_engine_kv_plan(g_model, &o, 4, &pl), GPO_ERR_ARG);
    char want[64];
    snprintf(want, sizeof want, "%llu bytes", (unsigned long long)(block - 1));
    assert_non_null(strstr(gpo_last_error(), want));
    /* The default lies between one request and every slot at max_seq_len. */
    o.kv_memory = 0;
    assert_int_equal(gpo_engine_kv_plan(g_model, &o, 4, &pl), GPO_OK);
    assert_true(pl.blocks >= 13 && pl.blocks <= 4 * 13);
    /* An engine made with a plan has its pool. */
    o.kv_memory = block * 7;
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, NULL, &o, 3, &e), GPO_OK);
    struct gpo_kv_pool_stats st;
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.block_tokens, 16);
    assert_int_equal(st.blocks_total, 7);
    assert_int_equal(st.blocks_used + st.blocks_cached, 0);
    assert_int_equal(st.bytes_total, 7 * block + 3 * pl.ring_bytes);
    assert_int_equal(gpo_engine_kv_bytes(e), st.bytes_total);
    gpo_engine_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged_logits_bit_identical),
        cmocka_unit_test(test_pool_accounting),
        cmocka_unit_test(test_plan_arithmetic),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
