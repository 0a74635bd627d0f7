/* test_convert.c - GGUF files written by gpo_convert_gguf and gpo_mkmodel_gguf,
 * read back with the GGUF reader: the tensor table of llama.cpp's converter
 * (names, types, shapes, checked by gpo_gguf_check_shapes and here by type), the
 * configuration keys giving back the source's configuration, every tensor's bytes
 * against the safetensors source (MXFP4 repacked with gate rows even and up rows
 * odd, biases split alike, q/k/v cut from the fused qkv, Q8_0 rows as
 * gpo_quantize_row_q8_0 makes them), both source layouts giving the same tensors,
 * logits of the BF16 file bit-identical to the checkpoint's, the tokenizer arrays
 * of a mkmodel file giving tokenizer.json's ids, dense matrices stored as F32 or
 * F16 written as stored, as BF16 and as Q8_0, and the errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "convert.h"
#include "gguf.h"
#include "gguf_meta.h"
#include "gpo.h"
#include "kernels/kernels.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

#define FIX "tests/fixtures/tiny-a"

static char dir[256];
static char p_hf[300], p_orig[300], p_q8[300];

static int setup(void **state) {
    snprintf(dir, sizeof dir, "/tmp/gpo_test_convert.XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(p_hf, sizeof p_hf, "%s/hf.gguf", dir);
    snprintf(p_orig, sizeof p_orig, "%s/orig.gguf", dir);
    snprintf(p_q8, sizeof p_q8, "%s/q8.gguf", dir);
    gpo_set_log_level(GPO_LOG_ERROR);
    struct gpo_convert_opts o = {.src_dir = FIX, .dst_path = p_hf};
    if (gpo_convert_gguf(&o) != GPO_OK) return -1;
    o.src_dir = FIX "/original";
    o.dst_path = p_orig;
    if (gpo_convert_gguf(&o) != GPO_OK) return -1;
    o.src_dir = FIX;
    o.dst_path = p_q8;
    o.dense = GPO_DENSE_Q8;
    return gpo_convert_gguf(&o) == GPO_OK ? 0 : -1;
}

static int teardown(void **state) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const struct gpo_gguf_tensor *must_find(const struct gpo_gguf *g, const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const struct gpo_gguf_tensor *t = gpo_gguf_find(g, name);
    if (!t) fail_msg("tensor %s missing", name);
    return t;
}

/* ------------------------------------------------------------------------- */

/* The table passes the loader's own check, and every group has its type. */
static void check_table(const char *path, uint32_t dense_type) {
    struct gpo_gguf g = {0};
    struct gpo_config cfg;
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    assert_int_equal(gpo_gguf_read_config(&g, &cfg), GPO_OK);
    assert_int_equal(gpo_gguf_check_shapes(&g, &cfg), GPO_OK);
    assert_int_equal(g.n_tensors, 3 + 19 * cfg.n_layer);
    for (size_t i = 0; i < g.n_tensors; i++) {
        const struct gpo_gguf_tensor *t = &g.tensors[i];
        uint32_t want = GPO_GGML_F32;
        if (strstr(t->name, "_exps.weight"))
            want = GPO_GGML_MXFP4;
        else if (strstr(t->name, "attn_q.weight") || strstr(t->name, "attn_k.weight") ||
                 strstr(t->name, "attn_v.weight") || strstr(t->name, "attn_output.weight") ||
                 !strcmp(t->name, "output.weight"))
            want = dense_type;
        else if (!strcmp(t->name, "token_embd.weight")) /* Q8_0 files keep it as stored */
            want = GPO_GGML_BF16;
        if (t->type != want)
            fail_msg("%s: type %s, expected %s", t->name, gpo_ggml_type_name(t->type),
                     gpo_ggml_type_name(want));
    }
    uint32_t ft = 0, qv = 0;
    struct gpo_gguf_str arch;
    assert_int_equal(gpo_gguf_get_u32(&g, "general.file_type", &ft), GPO_OK);
    assert_int_equal(ft, GPO_GGUF_FTYPE_MXFP4_MOE);
    assert_int_equal(gpo_gguf_get_u32(&g, "general.quantization_version", &qv), GPO_OK);
    assert_int_equal(qv, 2);
    assert_int_equal(gpo_gguf_get_str(&g, "general.architecture", &arch), GPO_OK);
    assert_true(gpo_gguf_str_eq(arch, "gpt-oss"));
    gpo_gguf_close(&g);
}

static void test_table_bf16(void **state) { check_table(p_hf, GPO_GGML_BF16); }
static void test_table_q8(void **state) { check_table(p_q8, GPO_GGML_Q8_0); }

/* The keys give back the checkpoint's configuration. */
static void test_config_round_trip(void **state) {
    gpo_model *m;
    struct gpo_gguf g = {0};
    struct gpo_config c;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    assert_int_equal(gpo_gguf_open(&g, p_hf), GPO_OK);
    assert_int_equal(gpo_gguf_read_config(&g, &c), GPO_OK);
    const struct gpo_config *a = gpo_model_config(m);
    assert_int_equal(c.n_layer, a->n_layer);
    assert_int_equal(c.n_embd, a->n_embd);
    assert_int_equal(c.n_head, a->n_head);
    assert_int_equal(c.n_head_kv, a->n_head_kv);
    assert_int_equal(c.head_dim, a->head_dim);
    assert_int_equal(c.n_expert, a->n_expert);
    assert_int_equal(c.n_expert_used, a->n_expert_used);
    assert_int_equal(c.n_ff, a->n_ff);
    assert_int_equal(c.n_vocab, a->n_vocab);
    assert_int_equal(c.sliding_window, a->sliding_window);
    assert_int_equal(c.max_position, a->max_position);
    assert_int_equal(c.rope_orig_ctx, a->rope_orig_ctx);
    assert_true(c.rope_theta == a->rope_theta && c.rope_factor == a->rope_factor);
    assert_true(c.rms_eps == a->rms_eps);
    assert_memory_equal(c.layer_sliding, a->layer_sliding, (size_t)a->n_layer);
    gpo_gguf_close(&g);
    gpo_model_free(m);
}

/* Every tensor's bytes against the safetensors views. */
static void test_data_matches_source(void **state) {
    gpo_model *m;
    struct gpo_gguf g = {0}, q = {0};
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    assert_int_equal(gpo_gguf_open(&g, p_hf), GPO_OK);
    assert_int_equal(gpo_gguf_open(&q, p_q8), GPO_OK);
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t H = c->n_embd, I = c->n_ff, E = c->n_expert;

    /* Dense matrices: BF16 byte for byte; Q8_0 as the row quantiser makes them. */
    const struct gpo_tview *dense[] = {&m->embedding, &m->unembedding, &m->layers[1].wk,
                                       &m->layers[2].wo};
    const char *dname[] = {"token_embd.weight", "output.weight", "blk.1.attn_k.weight",
                           "blk.2.attn_output.weight"};
    for (int i = 0; i < 4; i++) {
        const struct gpo_tview *v = dense[i];
        const struct gpo_gguf_tensor *t = must_find(&g, "%s", dname[i]);
        assert_int_equal(v->dtype, GPO_DT_BF16);
        assert_int_equal(t->nbytes, (uint64_t)(v->rows * v->cols * 2));
        assert_memory_equal(t->data, v->data, t->nbytes);
        const struct gpo_gguf_tensor *tq = must_find(&q, "%s", dname[i]);
        if (v == &m->embedding) { /* the Q8_0 file keeps the embedding as stored */
            assert_int_equal(tq->type, GPO_GGML_BF16);
            assert_memory_equal(tq->data, v->data, t->nbytes);
            continue;
        }
        const size_t rb = (size_t)(v->cols / GPO_QK) * sizeof(struct gpo_q8_0_block);
        struct gpo_q8_0_block *row = malloc(rb);
        assert_non_null(row);
        for (int64_t r = 0; r < v->rows; r++) {
            gpo_quantize_row_q8_0(row, (const uint8_t *)v->data + r * v->cols * 2, v->dtype,
                                  v->cols);
            assert_memory_equal(tq->data + (size_t)r * rb, row, rb);
        }
        free(row);
    }
    for (int64_t l = 0; l < c->n_layer; l++) {
        const struct gpo_layer *L = &m->layers[l];
        /* Small tensors: F32 of the BF16 values. */
        const struct gpo_gguf_tensor *t = must_find(&g, "blk.%lld.attn_sinks.weight", (long long)l);
        for (int64_t h = 0; h < c->n_head; h++)
            assert_true(((const float *)(const void *)t->data)[h] == gpo_tview_get(&L->sinks, h));
        t = must_find(&g, "blk.%lld.ffn_gate_inp.weight", (long long)l);
        for (int64_t i = 0; i < E * H; i += 7)
            assert_true(((const float *)(const void *)t->data)[i] ==
                        gpo_tview_get(&L->router_w, i));
        /* Experts: gate = even rows, up = odd rows, down as is; biases alike. */
        const struct gpo_gguf_tensor *tg = must_find(&g, "blk.%lld.ffn_gate_exps.weight",
                                                     (long long)l);
        const struct gpo_gguf_tensor *tu = must_find(&g, "blk.%lld.ffn_up_exps.weight",
                                                     (long long)l);
        const struct gpo_gguf_tensor *td = must_find(&g, "blk.%lld.ffn_down_exps.weight",
                                                     (long long)l);
        const struct gpo_gguf_tensor *bg = must_find(&g, "blk.%lld.ffn_gate_exps.bias",
                                                     (long long)l);
        const struct gpo_gguf_tensor *bu = must_find(&g, "blk.%lld.ffn_up_exps.bias",
                                                     (long long)l);
        const struct gpo_xmat *x1 = &L->mlp1[0], *x2 = &L->mlp2;
        const int64_t nb1 = H / 32, nb2 = I / 32;
        uint8_t codes[4096], scales[256];
        assert_true(nb1 * 16 <= (int64_t)sizeof codes && nb2 * 16 <= (int64_t)sizeof codes);
        for (int64_t e = 0; e < E; e++) {
            for (int64_t r = 0; r < 2 * I; r++) {
                const struct gpo_gguf_tensor *tt = r % 2 ? tu : tg;
                const uint8_t *gb = tt->data + ((size_t)(e * I + r / 2) * (size_t)nb1) * 17;
                gpo_mxfp4_from_ggml(codes, scales, gb, nb1);
                assert_memory_equal(codes, x1->blocks + e * x1->blocks_stride + r * nb1 * 16,
                                    (size_t)nb1 * 16);
                assert_memory_equal(scales, x1->scales + e * x1->scales_stride + r * nb1,
                                    (size_t)nb1);
                const float *bias = (const float *)(const void *)(r % 2 ? bu : bg)->data;
                assert_true(bias[e * I + r / 2] ==
                            gpo_tview_get(&x1->bias, e * x1->bias_stride + r));
            }
            for (int64_t r = 0; r < H; r++) {
                gpo_mxfp4_from_ggml(codes, scales,
                                    td->data + ((size_t)(e * H + r) * (size_t)nb2) * 17, nb2);
                assert_memory_equal(codes, x2->blocks + e * x2->blocks_stride + r * nb2 * 16,
                                    (size_t)nb2 * 16);
                assert_memory_equal(scales, x2->scales + e * x2->scales_stride + r * nb2,
                                    (size_t)nb2);
            }
        }
    }
    gpo_gguf_close(&q);
    gpo_gguf_close(&g);
    gpo_model_free(m);
}

/* The original layout (fused qkv) gives the same tensors as the HF layout. */
static void test_layouts_same_tensors(void **state) {
    struct gpo_gguf a = {0}, b = {0};
    assert_int_equal(gpo_gguf_open(&a, p_hf), GPO_OK);
    assert_int_equal(gpo_gguf_open(&b, p_orig), GPO_OK);
    assert_int_equal(a.n_tensors, b.n_tensors);
    for (size_t i = 0; i < a.n_tensors; i++) {
        const struct gpo_gguf_tensor *x = &a.tensors[i], *y = gpo_gguf_find(&b, x->name);
        if (!y) fail_msg("%s missing from the original layout's file", x->name);
        assert_int_equal(x->type, y->type);
        assert_memory_equal(x->ne, y->ne, sizeof x->ne);
        if (memcmp(x->data, y->data, x->nbytes) != 0) fail_msg("%s differs", x->name);
    }
    gpo_gguf_close(&b);
    gpo_gguf_close(&a);
}

/* Logits of the BF16 file, prefill and one token at a time, bit for bit those of
 * the checkpoint. */
static void logits_of_opts(const char *path, const struct gpo_load_opts *lo, int incremental,
                           float *out, const int32_t *ids, int64_t n) {
    gpo_model *m;
    gpo_ctx *ctx;
    gpo_kv *kv;
    assert_int_equal(gpo_model_load(path, lo, &m), GPO_OK);
    struct gpo_ctx_opts co = {.n_threads = 1};
    assert_int_equal(gpo_ctx_create(m, &co, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, 64, &kv), GPO_OK);
    const int64_t V = gpo_model_config(m)->n_vocab;
    if (incremental) {
        for (int64_t i = 0; i < n; i++) {
            struct gpo_seq_batch sb = {kv, ids + i, 1, GPO_LOGITS_ALL};
            assert_int_equal(gpo_forward(ctx, &sb, 1, out + i * V), GPO_OK);
        }
    } else {
        struct gpo_seq_batch sb = {kv, ids, n, GPO_LOGITS_ALL};
        assert_int_equal(gpo_forward(ctx, &sb, 1, out), GPO_OK);
    }
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_model_free(m);
}

static void logits_of(const char *path, int incremental, float *out, const int32_t *ids,
                      int64_t n) {
    logits_of_opts(path, NULL, incremental, out, ids, n);
}

static void test_logits_bit_identical(void **state) {
    const int32_t ids[] = {1, 5, 17, 200, 999, 3, 42, 7, 8, 9};
    const int64_t n = 10, V = 1000;
    float *a = malloc(sizeof(float) * (size_t)(n * V)), *b = malloc(sizeof(float) * (size_t)(n * V));
    assert_non_null(a);
    assert_non_null(b);
    for (int inc = 0; inc < 2; inc++) {
        logits_of(FIX, inc, a, ids, n);
        logits_of(p_hf, inc, b, ids, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)(n * V));
        logits_of(p_orig, inc, b, ids, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)(n * V));
    }
    free(a);
    free(b);
}

/* The Q8_0 file (attention and output Q8_0, the embedding as stored) gives exactly
 * the logits of --dense q8 on the checkpoint, prefill and one token at a time;
 * --dense q8 on the file itself changes nothing. */
static void test_q8_logits_equal_dense_q8(void **state) {
    const int32_t ids[] = {1, 5, 17, 200, 999, 3, 42, 7, 8, 9};
    const int64_t n = 10, V = 1000;
    const struct gpo_load_opts q8 = {.dense_q8 = 1};
    float *a = malloc(sizeof(float) * (size_t)(n * V)), *b = malloc(sizeof(float) * (size_t)(n * V));
    float *c = malloc(sizeof(float) * (size_t)(n * V));
    assert_true(a && b && c);
    for (int inc = 0; inc < 2; inc++) {
        logits_of_opts(FIX, &q8, inc, a, ids, n);
        logits_of(p_q8, inc, b, ids, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)(n * V));
        logits_of_opts(p_q8, &q8, inc, b, ids, n);
        assert_memory_equal(a, b, sizeof(float) * (size_t)(n * V));
        /* and the quantisation shows: the BF16 checkpoint's logits differ */
        logits_of(FIX, inc, c, ids, n);
        assert_true(memcmp(a, c, sizeof(float) * (size_t)(n * V)) != 0);
    }
    free(a);
    free(b);
    free(c);
}

/* mkmodel's GGUF: the same tensors as converting its safetensors checkpoint, and
 * a tokenizer whose ids are tokenizer.json's. */
static void test_mkmodel_gguf(void **state) {
    char tok_path[4096], st_dir[300], a[300], b[300];
    if (gpo_tokenizer_find(NULL, NULL, tok_path, sizeof tok_path) != GPO_OK) {
        print_message("no tokenizer.json (make deps installs it): skipped\n");
        skip();
    }
    snprintf(st_dir, sizeof st_dir, "%s/tiny", dir);
    snprintf(a, sizeof a, "%s/tiny.gguf", dir);
    snprintf(b, sizeof b, "%s/tiny-conv.gguf", dir);
    struct gpo_mkmodel_gguf_opts mo = {.preset = "tiny", .path = a, .seed = 7,
                                       .dense = GPO_DENSE_BF16};
    assert_int_equal(gpo_mkmodel_gguf(&mo), GPO_OK);
    struct gpo_mkmodel_opts so = {.preset = "tiny", .out_dir = st_dir, .seed = 7, .layout_hf = 1};
    assert_int_equal(gpo_mkmodel(&so), GPO_OK);
    struct gpo_convert_opts co = {.src_dir = st_dir, .dst_path = b};
    assert_int_equal(gpo_convert_gguf(&co), GPO_OK);

    struct gpo_gguf ga = {0}, gb = {0};
    struct gpo_config cfg;
    assert_int_equal(gpo_gguf_open(&ga, a), GPO_OK);
    assert_int_equal(gpo_gguf_open(&gb, b), GPO_OK);
    assert_int_equal(gpo_gguf_read_config(&ga, &cfg), GPO_OK);
    assert_int_equal(gpo_gguf_check_shapes(&ga, &cfg), GPO_OK);
    assert_int_equal(ga.n_tensors, gb.n_tensors);
    for (size_t i = 0; i < ga.n_tensors; i++) {
        const struct gpo_gguf_tensor *x = &ga.tensors[i], *y = gpo_gguf_find(&gb, x->name);
        assert_non_null(y);
        assert_int_equal(x->type, y->type);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes) != 0) fail_msg("%s differs", x->name);
    }

    /* The tokenizer arrays: one entry per embedding row, and the same ids. */
    struct gpo_gguf_arr toks, types;
    assert_int_equal(gpo_gguf_get_arr(&ga, "tokenizer.ggml.tokens", GPO_GGUF_STRING, &toks),
                     GPO_OK);
    assert_int_equal(toks.n, (uint64_t)cfg.n_vocab);
    assert_int_equal(gpo_gguf_get_arr(&ga, "tokenizer.ggml.token_type", GPO_GGUF_I32, &types),
                     GPO_OK);
    assert_int_equal(types.n, (uint64_t)cfg.n_vocab);
    gpo_tokenizer *tg, *tj;
    assert_int_equal(gpo_gguf_read_tokenizer(&ga, &tg), GPO_OK);
    assert_int_equal(gpo_tokenizer_load(tok_path, &tj), GPO_OK);
    const char *text = "Hello world! <|start|>user<|message|>Grüße, 12345 tokens\n\n  ok";
    struct gpo_ids x = {0}, y = {0};
    assert_int_equal(gpo_tokenizer_encode(tg, text, strlen(text), 1, &x), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tj, text, strlen(text), 1, &y), GPO_OK);
    assert_int_equal(x.n, y.n);
    assert_memory_equal(x.ids, y.ids, x.n * sizeof *x.ids);
    gpo_ids_free(&x);
    gpo_ids_free(&y);
    gpo_tokenizer_free(tg);
    gpo_tokenizer_free(tj);
    gpo_gguf_close(&gb);
    gpo_gguf_close(&ga);
}

/* Sources whose dense matrices are F32 (the embedding) or F16 (the unembedding):
 * as stored they are copied in their type; as BF16 they are rounded to nearest
 * even; as Q8_0 quantised from their own type. */
struct wide_source {
    struct gpo_wsource inner;
    const struct gpo_model *m;
};

static enum gpo_dtype wide_dtype(void *user, int64_t layer, enum gpo_wid id) {
    struct wide_source *w = user;
    if (id == GPO_WID_EMBED) return GPO_DT_F32;
    if (id == GPO_WID_UNEMBED) return GPO_DT_F16;
    return w->inner.dtype(w->inner.user, layer, id);
}

static enum gpo_status wide_read(void *user, int64_t layer, enum gpo_wid id, uint64_t off,
                                 uint64_t len, void *buf, const void **out) {
    struct wide_source *w = user;
    if (id != GPO_WID_EMBED && id != GPO_WID_UNEMBED)
        return w->inner.read(w->inner.user, layer, id, off, len, buf, out);
    const struct gpo_tview *v = id == GPO_WID_EMBED ? &w->m->embedding : &w->m->unembedding;
    const uint64_t es = id == GPO_WID_EMBED ? 4 : 2;
    for (uint64_t i = 0; i < len / es; i++) {
        const float f = gpo_tview_get(v, (int64_t)(off / es + i));
        if (es == 4) {
            memcpy((uint8_t *)buf + 4 * i, &f, 4);
        } else {
            const uint16_t h = f32_to_f16(f);
            memcpy((uint8_t *)buf + 2 * i, &h, 2);
        }
    }
    *out = buf;
    return GPO_OK;
}

static void test_dense_types_from_f32_f16(void **state) {
    gpo_model *m;
    assert_int_equal(gpo_model_load(FIX, NULL, &m), GPO_OK);
    struct wide_source ws = {.m = m};
    gpo_wsource_of_model(m, &ws.inner);
    struct gpo_wsource src = {.cfg = ws.inner.cfg, .user = &ws, .dtype = wide_dtype,
                              .read = wide_read};
    const int64_t n = m->embedding.rows * m->embedding.cols;
    const enum gpo_dense kinds[] = {GPO_DENSE_STORED, GPO_DENSE_BF16, GPO_DENSE_Q8};
    for (int k = 0; k < 3; k++) {
        char path[300];
        snprintf(path, sizeof path, "%s/wide%d.gguf", dir, k);
        struct gpo_gguf_out o = {.path = path, .dense = kinds[k]};
        assert_int_equal(gpo_gguf_write_weights(&src, &o), GPO_OK);
        struct gpo_gguf g = {0};
        assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
        const struct gpo_gguf_tensor *te = must_find(&g, "token_embd.weight");
        const struct gpo_gguf_tensor *to = must_find(&g, "output.weight");
        const struct gpo_gguf_tensor *tq = must_find(&g, "blk.0.attn_q.weight");
        if (kinds[k] == GPO_DENSE_STORED) {
            /* Copied: F32 and F16 stay, the BF16 attention stays BF16. */
            assert_int_equal(te->type, GPO_GGML_F32);
            assert_int_equal(to->type, GPO_GGML_F16);
            assert_int_equal(tq->type, GPO_GGML_BF16);
            for (int64_t i = 0; i < n; i += 5) {
                assert_true(((const float *)(const void *)te->data)[i] ==
                            gpo_tview_get(&m->embedding, i));
                uint16_t h;
                memcpy(&h, to->data + 2 * i, 2);
                assert_int_equal(h, f32_to_f16(gpo_tview_get(&m->unembedding, i)));
            }
        } else if (kinds[k] == GPO_DENSE_BF16) {
            /* BF16 values widened to F32 come back exactly; F16 ones are rounded. */
            assert_int_equal(te->type, GPO_GGML_BF16);
            assert_int_equal(to->type, GPO_GGML_BF16);
            assert_memory_equal(te->data, m->embedding.data, (size_t)n * 2);
            for (int64_t i = 0; i < n; i += 5) {
                uint16_t b;
                memcpy(&b, to->data + 2 * i, 2);
                float f = f16_to_f32(f32_to_f16(gpo_tview_get(&m->unembedding, i)));
                assert_int_equal(b, f32_to_bf16(f));
            }
        } else {
            /* The embedding stays F32, as stored; Q8_0 of the F16 unembedding values
             * equals Q8_0 of the F16 row. */
            assert_int_equal(te->type, GPO_GGML_F32);
            assert_int_equal(to->type, GPO_GGML_Q8_0);
            for (int64_t i = 0; i < n; i += 5)
                assert_true(((const float *)(const void *)te->data)[i] ==
                            gpo_tview_get(&m->embedding, i));
            const int64_t cols = m->unembedding.cols;
            const size_t rb = (size_t)(cols / GPO_QK) * sizeof(struct gpo_q8_0_block);
            struct gpo_q8_0_block *row = malloc(rb);
            uint16_t *h = malloc((size_t)cols * 2);
            assert_true(row && h);
            for (int64_t r = 0; r < m->unembedding.rows; r += 3) {
                for (int64_t i = 0; i < cols; i++)
                    h[i] = f32_to_f16(gpo_tview_get(&m->unembedding, r * cols + i));
                gpo_quantize_row_q8_0(row, h, GPO_DT_F16, cols);
                assert_memory_equal(to->data + (size_t)r * rb, row, rb);
            }
            free(h);
            free(row);
        }
        gpo_gguf_close(&g);
    }
    gpo_model_free(m);
}

/* Errors: an existing file is kept without force; a missing source and a bad
 * preset are named; a failed run leaves no file. */
static void test_errors(void **state) {
    char path[300], tmp[310];
    snprintf(path, sizeof path, "%s/exists.gguf", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("keep", f);
    fclose(f);
    struct gpo_convert_opts o = {.src_dir = FIX, .dst_path = path};
    assert_int_equal(gpo_convert_gguf(&o), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "already exists"));
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 4);
    struct gpo_mkmodel_gguf_opts mo = {.preset = "tiny", .path = path};
    assert_int_equal(gpo_mkmodel_gguf(&mo), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "already exists"));

    o.force = 1;
    assert_int_equal(gpo_convert_gguf(&o), GPO_OK);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 4);

    snprintf(path, sizeof path, "%s/none.gguf", dir);
    o.src_dir = "/nonexistent/model";
    o.dst_path = path;
    assert_int_not_equal(gpo_convert_gguf(&o), GPO_OK);
    assert_non_null(strstr(gpo_last_error(), "/nonexistent/model"));
    assert_int_not_equal(stat(path, &sb), 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(stat(tmp, &sb), 0);

    /* A GGUF file is not a source. */
    o.src_dir = p_hf;
    assert_int_equal(gpo_convert_gguf(&o), GPO_ERR_UNSUPPORTED);
    assert_non_null(strstr(gpo_last_error(), "not a safetensors checkpoint"));

    /* An explicit tokenizer with more ids than the model's 1000 rows. */
    char tok_path[4096];
    if (gpo_tokenizer_find(NULL, NULL, tok_path, sizeof tok_path) == GPO_OK) {
        o.src_dir = FIX;
        o.tokenizer_path = tok_path;
        assert_int_equal(gpo_convert_gguf(&o), GPO_ERR_TOKENIZER);
        assert_non_null(strstr(gpo_last_error(), "vocabulary has 1000"));
        assert_int_not_equal(stat(path, &sb), 0);
    }

    mo.preset = "7b";
    mo.path = path;
    assert_int_equal(gpo_mkmodel_gguf(&mo), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "'7b'"));

    enum gpo_dense d;
    assert_true(gpo_dense_parse("BF16", &d) && d == GPO_DENSE_BF16);
    assert_true(gpo_dense_parse("q8_0", &d) && d == GPO_DENSE_Q8);
    assert_false(gpo_dense_parse("q4", &d));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_bf16),
        cmocka_unit_test(test_table_q8),
        cmocka_unit_test(test_config_round_trip),
        cmocka_unit_test(test_data_matches_source),
        cmocka_unit_test(test_layouts_same_tensors),
        cmocka_unit_test(test_logits_bit_identical),
        cmocka_unit_test(test_q8_logits_equal_dense_q8),
        cmocka_unit_test(test_mkmodel_gguf),
        cmocka_unit_test(test_dense_types_from_f32_f16),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
