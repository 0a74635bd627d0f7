/* test_mesh.c - the multi-rank plan: for the 20b and 120b configurations and the
 * tiny fixture, every valid mesh of 1-8 ranks (and a few larger) shards the KV
 * heads, experts and vocabulary rows so that each replica covers every one
 * exactly once, the per-rank bytes add up to the model's, the byte units agree
 * with the loader's tensor table, and invalid meshes are refused with the list
 * of valid ones. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "convert.h"
#include "mesh.h"
#include "model.h"
#include "test_common.h"

static struct gpo_config config_20b(void) {
    struct gpo_config c = {
        .n_layer = 24, .n_embd = 2880, .n_head = 64, .n_head_kv = 8, .head_dim = 64,
        .n_expert = 32, .n_expert_used = 4, .n_ff = 2880, .n_vocab = 201088,
    };
    return c;
}

static struct gpo_config config_120b(void) {
    struct gpo_config c = config_20b();
    c.n_layer = 36;
    c.n_expert = 128;
    return c;
}

/* Every shard of every replica of mesh m: ranges inside their bounds, each KV
 * head, expert and vocabulary row held exactly once per replica (KV heads once
 * per EP slot, experts once per TP slot), and the bytes of a replica's shards
 * adding up to the whole model's. */
static void check_plan(const struct gpo_config *c, const struct gpo_mesh *m,
                       const struct gpo_mesh_weights *w) {
    const int M = m->tp * m->ep, N = M * m->dp;
    const int64_t G = c->n_head / c->n_head_kv;
    uint8_t *heads = calloc((size_t)(c->n_head_kv * m->ep), 1);
    uint8_t *experts = calloc((size_t)(c->n_expert * m->tp), 1);
    uint8_t *vocab = calloc((size_t)c->n_vocab, 1);
    assert_true(heads && experts && vocab);
    const uint64_t total = gpo_mesh_weights_total(c, w);
    for (int d = 0; d < m->dp; d++) {
        memset(heads, 0, (size_t)(c->n_head_kv * m->ep));
        memset(experts, 0, (size_t)(c->n_expert * m->tp));
        memset(vocab, 0, (size_t)c->n_vocab);
        uint64_t att = 0, exp = 0, voc = 0, repl = 0;
        for (int mr = 0; mr < M; mr++) {
            struct gpo_mesh_shard s;
            const int r = d * M + mr;
            gpo_mesh_shard_of(c, m, w, r, &s);
            assert_int_equal(s.rank, r);
            assert_int_equal(s.dp_rank, d);
            assert_int_equal(s.model_rank, mr);
            assert_int_equal(s.ep_rank * m->tp + s.tp_rank, mr);
            assert_true(s.kv_head0 >= 0 && s.kv_head0 < s.kv_head1 && s.kv_head1 <= c->n_head_kv);
            assert_true(s.expert0 >= 0 && s.expert0 < s.expert1 && s.expert1 <= c->n_expert);
            assert_true(s.vocab0 >= 0 && s.vocab0 <= s.vocab1 && s.vocab1 <= c->n_vocab);
            /* Query heads, q rows and k/v rows follow the KV heads. */
            assert_int_equal(s.head0, s.kv_head0 * G);
            assert_int_equal(s.head1, s.kv_head1 * G);
            assert_int_equal(s.q_row0, s.head0 * c->head_dim);
            assert_int_equal(s.q_row1, s.head1 * c->head_dim);
            assert_int_equal(s.kv_row0, s.kv_head0 * c->head_dim);
            assert_int_equal(s.kv_row1, s.kv_head1 * c->head_dim);
            for (int64_t h = s.kv_head0; h < s.kv_head1; h++) heads[s.ep_rank * c->n_head_kv + h]++;
            for (int64_t e = s.expert0; e < s.expert1; e++) experts[s.tp_rank * c->n_expert + e]++;
            for (int64_t v = s.vocab0; v < s.vocab1; v++) vocab[v]++;
            assert_int_equal(s.bytes_total, s.bytes_attention + s.bytes_experts + s.bytes_vocab +
                                                s.bytes_replicated + s.bytes_packed);
            /* The embedding's share: its rows of the vocabulary, within bytes_vocab. */
            assert_int_equal(s.bytes_embedding, (uint64_t)(s.vocab1 - s.vocab0) * w->embedding_row);
            assert_true(s.bytes_embedding < s.bytes_vocab);
            if (mr) assert_int_equal(s.bytes_replicated, repl);
            repl = s.bytes_replicated;
            /* The EP ranks of a TP slot hold the same heads, the TP ranks of an EP
             * slot the same experts: count each once. */
            if (s.ep_rank == 0) att += s.bytes_attention;
            if (s.tp_rank == 0) exp += s.bytes_experts;
            voc += s.bytes_vocab;
        }
        for (int64_t i = 0; i < c->n_head_kv * m->ep; i++) assert_int_equal(heads[i], 1);
        for (int64_t i = 0; i < c->n_expert * m->tp; i++) assert_int_equal(experts[i], 1);
        for (int64_t i = 0; i < c->n_vocab; i++) assert_int_equal(vocab[i], 1);
        assert_int_equal(att + exp + voc + repl, total);
    }
    (void)N;
    free(heads);
    free(experts);
    free(vocab);
}

/* Every valid mesh of 1-8 ranks and of a few larger counts. */
static void check_all_meshes(const struct gpo_config *c, const struct gpo_mesh_weights *w) {
    static const int counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
        struct gpo_mesh ms[256];
        size_t n = gpo_mesh_list(c, counts[k], ms, 256);
        assert_true(n >= 1 && n <= 256);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(gpo_mesh_validate(c, &ms[i], counts[k]), GPO_OK);
            check_plan(c, &ms[i], w);
        }
    }
}

static void test_plan_20b(void **state) {
    (void)state;
    struct gpo_config c = config_20b();
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_config(&c, &w);
    check_all_meshes(&c, &w);
}

static void test_plan_120b(void **state) {
    (void)state;
    struct gpo_config c = config_120b();
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_config(&c, &w);
    check_all_meshes(&c, &w);
}

/* The tiny fixture in both safetensors layouts: the byte units read from the
 * model's tensors add up to the loader's own count of tensor bytes, equal the
 * ones assumed from the configuration (the fixture is BF16 with MXFP4 experts,
 * as the official checkpoints), and every mesh covers it. */
static void test_plan_tiny_fixture(void **state) {
    (void)state;
    const char *dirs[] = {"tests/fixtures/tiny-a", "tests/fixtures/tiny-a/original"};
    for (size_t i = 0; i < 2; i++) {
        gpo_model *m = NULL;
        assert_int_equal(gpo_model_load(dirs[i], NULL, &m), GPO_OK);
        const struct gpo_config *c = gpo_model_config(m);
        struct gpo_model_info inf;
        gpo_model_get_info(m, &inf);
        struct gpo_mesh_weights wm, wc;
        gpo_mesh_weights_of_model(m, &wm);
        gpo_mesh_weights_of_config(c, &wc);
        assert_int_equal(gpo_mesh_weights_total(c, &wm), inf.bytes_tensors);
        assert_memory_equal(&wm, &wc, sizeof wm);
        check_all_meshes(c, &wm);
        gpo_model_free(m);
    }
}

/* GGUF files of the fixture, with BF16 and Q8_0 dense matrices (GGML's MXFP4
 * blocks, F32 biases): the units read from the views still add up to the
 * loader's tensor bytes, so the plan follows the types actually stored. */
static void test_plan_gguf(void **state) {
    (void)state;
    char dir[] = "/tmp/gpo_mesh_XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    gpo_set_log_level(GPO_LOG_ERROR); /* the converter's progress lines */
    const enum gpo_dense dense[] = {GPO_DENSE_STORED, GPO_DENSE_Q8};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/m%zu.gguf", dir, i);
        struct gpo_convert_opts o = {.src_dir = "tests/fixtures/tiny-a", .dst_path = path, .dense = dense[i]};
        assert_int_equal(gpo_convert_gguf(&o), GPO_OK);
        gpo_model *m = NULL;
        assert_int_equal(gpo_model_load(path, NULL, &m), GPO_OK);
        struct gpo_model_info inf;
        gpo_model_get_info(m, &inf);
        struct gpo_mesh_weights w;
        gpo_mesh_weights_of_model(m, &w);
        assert_int_equal(gpo_mesh_weights_total(gpo_model_config(m), &w), inf.bytes_tensors);
        check_all_meshes(gpo_model_config(m), &w);
        gpo_model_free(m);
    }
    assert_int_equal(rm_tree(dir), 0);
}

/* Expert parallelism over 4 ranks: each holds a quarter of the experts and of
 * the vocabulary, all the attention heads; its bytes are its share. */
static void test_ep4_shares(void **state) {
    (void)state;
    struct gpo_config c = config_20b();
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_config(&c, &w);
    struct gpo_mesh m = {1, 4, 1}, def;
    assert_int_equal(gpo_mesh_default(&c, 4, &def), GPO_OK);
    assert_memory_equal(&def, &m, sizeof m);
    uint64_t experts_all = 0;
    for (int l = 0; l < c.n_layer; l++) experts_all += w.layer_expert[l] * (uint64_t)c.n_expert;
    for (int r = 0; r < 4; r++) {
        struct gpo_mesh_shard s;
        gpo_mesh_shard_of(&c, &m, &w, r, &s);
        assert_int_equal(s.expert0, r * 8);
        assert_int_equal(s.expert1, r * 8 + 8);
        assert_int_equal(s.kv_head0, 0);
        assert_int_equal(s.kv_head1, 8);
        assert_int_equal(s.vocab1 - s.vocab0, c.n_vocab / 4);
        assert_int_equal(s.bytes_experts * 4, experts_all);
    }
}

static void test_default_mesh(void **state) {
    (void)state;
    const struct gpo_config cs[] = {config_20b(), config_120b()};
    for (size_t k = 0; k < 2; k++)
        for (int n = 1; n <= 64; n++) {
            struct gpo_mesh d, ms[256];
            assert_int_equal(gpo_mesh_default(&cs[k], n, &d), GPO_OK);
            assert_int_equal(gpo_mesh_validate(&cs[k], &d, n), GPO_OK);
            /* No valid mesh has a bigger model group, or as big with more EP. */
            size_t cnt = gpo_mesh_list(&cs[k], n, ms, 256);
            for (size_t i = 0; i < cnt; i++) {
                int a = ms[i].tp * ms[i].ep, b = d.tp * d.ep;
                assert_true(a < b || (a == b && ms[i].ep <= d.ep));
            }
        }
    struct gpo_mesh d;
    assert_int_equal(gpo_mesh_default(&cs[0], 0, &d), GPO_ERR_ARG);
}

/* gpo_mesh_list holds exactly the meshes gpo_mesh_validate accepts. */
static void test_list_matches_validate(void **state) {
    (void)state;
    struct gpo_config c = config_20b();
    for (int n = 1; n <= 16; n++) {
        size_t accepted = 0;
        for (int tp = 1; tp <= n; tp++)
            for (int ep = 1; ep <= n; ep++)
                for (int dp = 1; dp <= n; dp++) {
                    struct gpo_mesh m = {tp, ep, dp};
                    accepted += gpo_mesh_validate(&c, &m, n) == GPO_OK;
                }
        assert_int_equal(gpo_mesh_list(&c, n, NULL, 0), accepted);
    }
}

/* A refused mesh says which rule it breaks and lists every valid mesh. */
static void test_invalid_meshes(void **state) {
    (void)state;
    struct gpo_config c = config_20b();
    const struct {
        struct gpo_mesh m;
        int n;
        const char *why;
    } cases[] = {
        {{3, 1, 1}, 3, "TP 3 does not divide the 8 KV heads"},
        {{1, 3, 2}, 6, "EP 3 does not divide the 32 experts"},
        {{2, 2, 1}, 8, "TP x EP x DP = 4, not the 8 ranks"},
        {{0, 1, 1}, 1, "at least 1"},
        {{16, 1, 1}, 16, "TP 16 does not divide the 8 KV heads"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        assert_int_equal(gpo_mesh_validate(&c, &cases[i].m, cases[i].n), GPO_ERR_ARG);
        const char *e = gpo_last_error();
        assert_non_null(strstr(e, cases[i].why));
        assert_non_null(strstr(e, "valid meshes for"));
        struct gpo_mesh ms[64];
        size_t n = gpo_mesh_list(&c, cases[i].n, ms, 64);
        for (size_t k = 0; k < n; k++) {
            char one[48];
            snprintf(one, sizeof one, "%dx%d --dp %d", ms[k].tp, ms[k].ep, ms[k].dp);
            assert_non_null(strstr(e, one));
        }
    }
    struct gpo_mesh m = {1, 1, 1};
    assert_int_equal(gpo_mesh_validate(&c, &m, 0), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "number of ranks"));
}

static void test_parse(void **state) {
    (void)state;
    struct gpo_mesh m;
    assert_int_equal(gpo_mesh_parse("2x4", &m), GPO_OK);
    assert_true(m.tp == 2 && m.ep == 4 && m.dp == 1);
    assert_int_equal(gpo_mesh_parse("1X8", &m), GPO_OK);
    assert_true(m.tp == 1 && m.ep == 8);
    const char *bad[] = {"", "2", "x4", "2x", "0x1", "2x4x", "-1x2", "2x 4", "99999x1", "axb"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(gpo_mesh_parse(bad[i], &m), GPO_ERR_ARG);
        assert_non_null(strstr(gpo_last_error(), "TPxEP"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_20b),          cmocka_unit_test(test_plan_120b),
        cmocka_unit_test(test_plan_tiny_fixture), cmocka_unit_test(test_plan_gguf),
        cmocka_unit_test(test_ep4_shares),
        cmocka_unit_test(test_default_mesh),      cmocka_unit_test(test_list_matches_validate),
        cmocka_unit_test(test_invalid_meshes),    cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
