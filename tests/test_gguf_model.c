/* test_gguf_model.c - GGUF models bound to the forward pass.  The tiny-a fixture is
 * written as GGUF here (its loaded views, tensor for tensor, as llama.cpp names
 * them: dense types as stored or Q8_0, experts repacked to GGML blocks with gate
 * and up apart, as two tensors or as one), loaded with gpo_model_load, and its
 * logits compared bit for bit with the safetensors checkpoint's: prefill and
 * incremental, exact and fast paths.  Broken files (a tensor missing, misshapen or
 * of the wrong type, another architecture, a .gguf that is not GGUF) give errors
 * that name the problem. */
#include <math.h>
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

#include "test_common.h"
#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_meta.h"
#include "gpo.h"
#include "kvcache.h"
#include "mesh.h"
#include "model.h"
#include "util.h"

#define FIX "tests/fixtures/tiny-a"

static char tmpdir[64];

/* ------------------------------------------------------------------------- */
/* Writing a loaded model as GGUF                                             */

/* How to write (and, for the error tests, to break) the file. */
struct wopts {
    int fused;              /* ffn_gate_up_exps instead of ffn_gate_exps + ffn_up_exps */
    const char *drop;       /* a tensor left out */
    const char *bad_shape;  /* a 2-D tensor written with its dimensions swapped */
    const char *bad_type;   /* a tensor declared I8 (its bytes kept, its size matching) */
    const char *arch;       /* general.architecture instead of gpt-oss (7 bytes, patched in) */
    const struct gpo_tview *embd; /* token_embd.weight from this view instead */
};

/* One tensor to write: bytes at data, or owned bytes built here. */
struct wt {
    char name[GPO_GGUF_MAX_NAME + 1];
    uint32_t type;
    int nd;
    int64_t ne[3];
    const void *data;
    uint64_t nbytes;
    void *owned;
};

struct wlist {
    struct wt t[512];
    int n;
};

static uint32_t ggml_of(enum gpo_dtype dt) {
    switch (dt) {
    case GPO_DT_F32: return GPO_GGML_F32;
    case GPO_DT_F16: return GPO_GGML_F16;
    case GPO_DT_BF16: return GPO_GGML_BF16;
    case GPO_DT_Q8_0:
    case GPO_DT_Q8_0X16: return GPO_GGML_Q8_0;
    default: fail_msg("no ggml type for dtype %d", (int)dt); return 0;
    }
}

static uint64_t view_bytes(const struct gpo_tview *v) {
    if (v->dtype == GPO_DT_Q8_0 || v->dtype == GPO_DT_Q8_0X16)
        return (uint64_t)v->rows * (uint64_t)(v->cols / 32) * sizeof(struct gpo_q8_0_block);
    return (uint64_t)v->rows * (uint64_t)v->cols * gpo_dtype_size(v->dtype);
}

static struct wt *add(struct wlist *w, const char *name, int layer) {
    assert_true(w->n < 512);
    struct wt *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, name, layer);
    return t;
}

/* A dense view: ne {cols, rows}, or {cols} for a vector. */
static void add_view(struct wlist *w, const char *name, int layer, const struct gpo_tview *v,
                     int vector) {
    struct wt *t = add(w, name, layer);
    t->type = ggml_of(v->dtype);
    t->nd = vector ? 1 : 2;
    t->ne[0] = v->cols;
    t->ne[1] = v->rows;
    t->data = v->data;
    t->nbytes = view_bytes(v);
    if (v->dtype == GPO_DT_Q8_0X16) {
        /* repacked at load: written back as the Q8_0 rows it holds */
        struct gpo_q8_0_block *rows = malloc(t->nbytes);
        assert_non_null(rows);
        for (int64_t r = 0; r < v->rows; r++)
            gpo_q8_0x16_row(rows + r * (v->cols / 32), v->data, r, v->cols);
        t->data = t->owned = rows;
    }
}

/* Whether a load repacks Q8_0 dense matrices as Q8_0x16 on this CPU (the best
 * kernel table reads them). */
static int repacks_dense(void) {
    const struct gpo_kernels *k = gpo_kernels_chosen();
    return k && k != gpo_kernels_ref() && k->matmul_q8_0x16_q8 != NULL;
}

/* Rows [row0, row0 + 2*n) step 2 (interleaved gate/up: row0 0 = gate, 1 = up) of
 * every expert, as GGML blocks; `fused` puts gate and up of an expert one after
 * the other. */
static void add_experts(struct wlist *w, const char *name, int layer, const struct gpo_xmat *x,
                        int64_t E, int64_t F, int g, int fused) {
    const int64_t nb = x->cols / 32;
    const size_t gb = (size_t)nb * GPO_MXFP4_GGML_BLOCK_BYTES;
    const int64_t rows = fused ? 2 * F : F;
    struct wt *t = add(w, name, layer);
    t->type = GPO_GGML_MXFP4;
    t->nd = 3;
    t->ne[0] = x->cols;
    t->ne[1] = rows;
    t->ne[2] = E;
    t->nbytes = (uint64_t)E * (uint64_t)rows * gb;
    uint8_t *dst = malloc(t->nbytes);
    assert_non_null(dst);
    for (int64_t e = 0; e < E; e++)
        for (int gg = fused ? 0 : g; gg <= (fused ? 1 : g); gg++)
            for (int64_t r = 0; r < F; r++) {
                const int64_t src_row = 2 * r + gg, dst_row = (fused ? gg * F : 0) + r;
                gpo_mxfp4_to_ggml(dst + ((size_t)e * (size_t)rows + (size_t)dst_row) * gb,
                                  x->blocks + e * x->blocks_stride + (size_t)src_row * (size_t)nb * 16,
                                  x->scales + e * x->scales_stride + (size_t)src_row * (size_t)nb, nb);
            }
    t->data = t->owned = dst;
}

static void add_bias(struct wlist *w, const char *name, int layer, const struct gpo_xmat *x,
                     int64_t E, int64_t F, int g, int fused) {
    const size_t es = gpo_dtype_size(x->bias.dtype);
    const int64_t rows = fused ? 2 * F : F;
    struct wt *t = add(w, name, layer);
    t->type = ggml_of(x->bias.dtype);
    t->nd = 2;
    t->ne[0] = rows;
    t->ne[1] = E;
    t->nbytes = (uint64_t)E * (uint64_t)rows * es;
    uint8_t *dst = malloc(t->nbytes);
    assert_non_null(dst);
    const uint8_t *src = x->bias.data;
    for (int64_t e = 0; e < E; e++)
        for (int gg = fused ? 0 : g; gg <= (fused ? 1 : g); gg++)
            for (int64_t r = 0; r < F; r++)
                memcpy(dst + ((size_t)e * (size_t)rows + (size_t)((fused ? gg * F : 0) + r)) * es,
                       src + ((size_t)e * (size_t)x->bias_stride + (size_t)(2 * r + gg)) * es, es);
    t->data = t->owned = dst;
}

/* The whole model m (safetensors, as loaded) in llama.cpp's names. */
static void collect(struct wlist *w, const gpo_model *m, const struct wopts *o) {
    const struct gpo_config *c = &m->cfg;
    const int64_t E = c->n_expert, F = c->n_ff, H = c->n_embd;
    w->n = 0;
    add_view(w, "token_embd.weight", 0, o->embd ? o->embd : &m->embedding, 0);
    for (int l = 0; l < c->n_layer; l++) {
        const struct gpo_layer *L = &m->layers[l];
        add_view(w, "blk.%d.attn_norm.weight", l, &L->attn_norm, 1);
        add_view(w, "blk.%d.attn_q.weight", l, &L->wq, 0);
        add_view(w, "blk.%d.attn_q.bias", l, &L->bq, 1);
        add_view(w, "blk.%d.attn_k.weight", l, &L->wk, 0);
        add_view(w, "blk.%d.attn_k.bias", l, &L->bk, 1);
        add_view(w, "blk.%d.attn_v.weight", l, &L->wv, 0);
        add_view(w, "blk.%d.attn_v.bias", l, &L->bv, 1);
        add_view(w, "blk.%d.attn_output.weight", l, &L->wo, 0);
        add_view(w, "blk.%d.attn_output.bias", l, &L->bo, 1);
        add_view(w, "blk.%d.attn_sinks.weight", l, &L->sinks, 1);
        add_view(w, "blk.%d.post_attention_norm.weight", l, &L->mlp_norm, 1);
        add_view(w, "blk.%d.ffn_gate_inp.weight", l, &L->router_w, 0);
        add_view(w, "blk.%d.ffn_gate_inp.bias", l, &L->router_b, 1);
        assert_int_equal(L->gate_up, GPO_GATE_UP_INTERLEAVED);
        const struct gpo_xmat *x1 = &L->mlp1[0];
        if (o->fused) {
            add_experts(w, "blk.%d.ffn_gate_up_exps.weight", l, x1, E, F, 0, 1);
            add_bias(w, "blk.%d.ffn_gate_up_exps.bias", l, x1, E, F, 0, 1);
        } else {
            add_experts(w, "blk.%d.ffn_gate_exps.weight", l, x1, E, F, 0, 0);
            add_bias(w, "blk.%d.ffn_gate_exps.bias", l, x1, E, F, 0, 0);
            add_experts(w, "blk.%d.ffn_up_exps.weight", l, x1, E, F, 1, 0);
            add_bias(w, "blk.%d.ffn_up_exps.bias", l, x1, E, F, 1, 0);
        }
        /* The down projection as stored: all H rows of each expert, repacked. */
        const struct gpo_xmat *x2 = &L->mlp2;
        struct wt *t = add(w, "blk.%d.ffn_down_exps.weight", l);
        const int64_t nb = F / 32;
        t->type = GPO_GGML_MXFP4;
        t->nd = 3;
        t->ne[0] = F;
        t->ne[1] = H;
        t->ne[2] = E;
        t->nbytes = (uint64_t)(E * H * nb) * GPO_MXFP4_GGML_BLOCK_BYTES;
        t->data = t->owned = malloc(t->nbytes);
        assert_non_null(t->owned);
        gpo_mxfp4_to_ggml(t->owned, x2->blocks, x2->scales, E * H * nb);
        t = add(w, "blk.%d.ffn_down_exps.bias", l);
        t->type = ggml_of(x2->bias.dtype);
        t->nd = 2;
        t->ne[0] = H;
        t->ne[1] = E;
        t->data = x2->bias.data;
        t->nbytes = (uint64_t)(E * H) * gpo_dtype_size(x2->bias.dtype);
    }
    add_view(w, "output_norm.weight", 0, &m->final_norm, 1);
    add_view(w, "output.weight", 0, &m->unembedding, 0);
}

static void free_list(struct wlist *w) {
    for (int i = 0; i < w->n; i++) free(w->t[i].owned);
    w->n = 0;
}

/* Replace the value of general.architecture (the "gpt-oss" after the key) in place. */
static void patch_arch(const char *path, const char *arch) {
    size_t n;
    char *buf = read_all(path, &n);
    assert_non_null(buf);
    assert_int_equal(strlen(arch), strlen(GPO_GGUF_ARCH));
    char *k = memmem(buf, n, "general.architecture", 20);
    assert_non_null(k);
    char *v = memmem(k, n - (size_t)(k - buf), GPO_GGUF_ARCH, strlen(GPO_GGUF_ARCH));
    assert_non_null(v);
    memcpy(v, arch, strlen(arch));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    fclose(f);
    free(buf);
}

/* Write m as GGUF at path, broken as o says. */
static void write_gguf(const gpo_model *m, const char *path, const struct wopts *o) {
    static struct wlist w;
    collect(&w, m, o);
    struct gpo_gguf_writer wr;
    assert_int_equal(gpo_gguf_writer_open(&wr, path), GPO_OK);
    assert_int_equal(gpo_gguf_write_config(&wr, &m->cfg, "tiny-a"), GPO_OK);
    for (int i = 0; i < w.n; i++) {
        struct wt *t = &w.t[i];
        if (o->drop && strcmp(t->name, o->drop) == 0) continue;
        int64_t ne[3] = {t->ne[0], t->ne[1], t->ne[2]};
        uint32_t type = t->type;
        if (o->bad_shape && strcmp(t->name, o->bad_shape) == 0) {
            ne[0] = t->ne[1];
            ne[1] = t->ne[0];
        }
        if (o->bad_type && strcmp(t->name, o->bad_type) == 0) {
            /* I8 with as many elements as the tensor has bytes */
            type = GPO_GGML_I8;
            ne[0] = (int64_t)t->nbytes;
            ne[1] = ne[2] = 1;
        }
        assert_int_equal(gpo_gguf_writer_declare(&wr, t->name, type, t->nd, ne), GPO_OK);
    }
    for (int i = 0; i < w.n; i++) {
        struct wt *t = &w.t[i];
        if (o->drop && strcmp(t->name, o->drop) == 0) continue;
        assert_int_equal(gpo_gguf_writer_write(&wr, t->data, t->nbytes), GPO_OK);
    }
    assert_int_equal(gpo_gguf_writer_close(&wr), GPO_OK);
    free_list(&w);
    if (o->arch) patch_arch(path, o->arch);
}

/* Write m as a split set of two parts, as gguf-split does (the metadata in the
 * first part, split.no / split.count / split.tensors.count in both): the tensors
 * before `cut` in PREFIX-00001-of-00002.gguf, the rest in -00002-of-00002.gguf. */
static void write_split(const gpo_model *m, const char *prefix, int cut) {
    static struct wlist w;
    collect(&w, m, &(struct wopts){0});
    assert_true(cut > 0 && cut < w.n);
    for (int part = 0; part < 2; part++) {
        char path[256];
        snprintf(path, sizeof path, "%s-%05d-of-00002.gguf", prefix, part + 1);
        struct gpo_gguf_writer wr;
        assert_int_equal(gpo_gguf_writer_open(&wr, path), GPO_OK);
        if (part == 0) assert_int_equal(gpo_gguf_write_config(&wr, &m->cfg, "tiny-a"), GPO_OK);
        uint16_t no = (uint16_t)part, count = 2;
        int32_t total = w.n;
        assert_int_equal(gpo_gguf_writer_kv(&wr, "split.no", GPO_GGUF_U16, &no), GPO_OK);
        assert_int_equal(gpo_gguf_writer_kv(&wr, "split.count", GPO_GGUF_U16, &count), GPO_OK);
        assert_int_equal(gpo_gguf_writer_kv(&wr, "split.tensors.count", GPO_GGUF_I32, &total), GPO_OK);
        const int i0 = part ? cut : 0, i1 = part ? w.n : cut;
        for (int i = i0; i < i1; i++)
            assert_int_equal(gpo_gguf_writer_declare(&wr, w.t[i].name, w.t[i].type, w.t[i].nd,
                                                     w.t[i].ne), GPO_OK);
        for (int i = i0; i < i1; i++)
            assert_int_equal(gpo_gguf_writer_write(&wr, w.t[i].data, w.t[i].nbytes), GPO_OK);
        assert_int_equal(gpo_gguf_writer_close(&wr), GPO_OK);
    }
    free_list(&w);
}

/* ------------------------------------------------------------------------- */
/* Runs                                                                       */

/* Logits of a prefill of seq0 and seq3 in one batch (every position), one decode
 * step of both, then seq0 again one token at a time.  *rows counts the rows. */
static float *run_pass(gpo_model *m, enum gpo_path path, size_t *rows) {
    const int64_t V = gpo_model_config(m)->n_vocab;
    struct gpo_ids a = {0}, b = {0};
    load_golden_ids(0, &a);
    load_golden_ids(3, &b);
    const size_t n = a.n + b.n + 2 + a.n;
    gpo_ctx *ctx;
    gpo_kv *kv[3];
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)(a.n + b.n), .max_seqs = 2,
                             .n_threads = 2, .path = path};
    assert_int_equal(gpo_ctx_create(m, &o, &ctx), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)a.n + 1, &kv[0]), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)b.n + 1, &kv[1]), GPO_OK);
    assert_int_equal(gpo_kv_create(m, (int64_t)a.n, &kv[2]), GPO_OK);
    float *lg = malloc(n * (size_t)V * 4);
    assert_non_null(lg);
    struct gpo_seq_batch pre[2] = {{kv[0], a.ids, (int64_t)a.n, GPO_LOGITS_ALL},
                                   {kv[1], b.ids, (int64_t)b.n, GPO_LOGITS_ALL}};
    assert_int_equal(gpo_forward(ctx, pre, 2, lg), GPO_OK);
    size_t at = a.n + b.n;
    int32_t next[2] = {7, 123};
    struct gpo_seq_batch step[2] = {{kv[0], &next[0], 1, GPO_LOGITS_LAST},
                                    {kv[1], &next[1], 1, GPO_LOGITS_LAST}};
    assert_int_equal(gpo_forward(ctx, step, 2, lg + at * (size_t)V), GPO_OK);
    at += 2;
    for (size_t i = 0; i < a.n; i++, at++) {
        struct gpo_seq_batch one = {kv[2], a.ids + i, 1, GPO_LOGITS_LAST};
        assert_int_equal(gpo_forward(ctx, &one, 1, lg + at * (size_t)V), GPO_OK);
    }
    for (int i = 0; i < 3; i++) gpo_kv_free(kv[i]);
    gpo_ctx_free(ctx);
    gpo_ids_free(&a);
    gpo_ids_free(&b);
    *rows = n;
    return lg;
}

/* How many of m's dense matrices (q, k, v, out, unembedding) the load copied out of
 * the file mapping into m->dense_copy. */
static int dense_copies(const gpo_model *m) {
    const uint8_t *d = m->dense_copy;
    const struct gpo_tview *v[4 * GPO_MAX_LAYERS + 1];
    int n = 0, in = 0;
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        const struct gpo_layer *L = &m->layers[l];
        v[n++] = &L->wq;
        v[n++] = &L->wk;
        v[n++] = &L->wv;
        v[n++] = &L->wo;
    }
    v[n++] = &m->unembedding;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = v[i]->data;
        in += d && p >= d && p < d + m->dense_copy_bytes;
    }
    return in;
}

/* Whether every expert view of m is `layout`, holding experts [e0, e1). */
static int experts_are(const gpo_model *m, enum gpo_mxfp4_layout layout, int64_t e0, int64_t e1) {
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        const struct gpo_layer *L = &m->layers[l];
        const struct gpo_xmat *v[3] = {&L->mlp1[0], &L->mlp1[1], &L->mlp2};
        for (int i = 0; i < 3; i++)
            if (v[i]->layout != layout || v[i]->expert0 != e0 || v[i]->expert1 != e1) return 0;
    }
    return 1;
}

/* The GGUF written from src (loaded with lo) gives src's logits, bit for bit, on
 * the exact and the fast path, its experts repacked at load (the default) and read
 * in place (no_repack); the GGUF is loaded with lo's other options too. */
static void check_same_logits(const struct gpo_load_opts *lo, const struct wopts *wo,
                              const char *what) {
    gpo_model *st, *gg, *gn;
    char path[128];
    snprintf(path, sizeof path, "%s/model.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, lo, &st), GPO_OK);
    write_gguf(st, path, wo);
    struct gpo_load_opts in_place = lo ? *lo : (struct gpo_load_opts){0};
    in_place.no_repack = 1;
    assert_int_equal(gpo_model_load(path, &in_place, &gn), GPO_OK);
    assert_int_equal(gpo_model_load(path, lo, &gg), GPO_OK);
    assert_string_equal(gpo_model_layout(gg), "gguf");
    assert_string_equal(gpo_model_dir(gg), tmpdir);
    assert_memory_equal(&st->cfg, &gg->cfg, sizeof st->cfg);
    /* views into the mapping, not copies (but Q8_0 ones repacked as Q8_0x16) */
    const struct gpo_gguf_tensor *t = gpo_gguf_find(&gg->gguf, "blk.1.attn_q.weight");
    assert_non_null(t);
    if (gg->layers[1].wq.dtype == GPO_DT_Q8_0X16) {
        assert_true(repacks_dense());
        const uint8_t *d = gg->dense_x16, *q = gg->layers[1].wq.data;
        assert_true(q >= d && q < d + gg->dense_x16_bytes);
        const struct gpo_gguf_tensor *tn = gpo_gguf_find(&gn->gguf, "blk.1.attn_q.weight");
        assert_non_null(tn);
        assert_ptr_equal(gn->layers[1].wq.data, tn->data); /* no_repack: in place */
        assert_int_equal(gn->layers[1].wq.dtype, GPO_DT_Q8_0);
    } else {
        /* float-typed: copied out of the mapping into memory of their own */
        const uint8_t *d = gg->dense_copy, *q = gg->layers[1].wq.data;
        assert_non_null(d);
        assert_true(q >= d && q < d + gg->dense_copy_bytes);
        assert_memory_equal(q, t->data, (size_t)gg->layers[1].wq.rows *
                                            gpo_tview_row_bytes(&gg->layers[1].wq));
        const struct gpo_gguf_tensor *tn = gpo_gguf_find(&gn->gguf, "blk.1.attn_q.weight");
        assert_non_null(tn);
        assert_ptr_equal(gn->layers[1].wq.data, tn->data); /* no_repack: in place */
        assert_null(gn->dense_copy);
    }
    assert_int_equal(gg->layers[1].wq.dtype, st->layers[1].wq.dtype);
    assert_int_equal(gg->layers[0].gate_up, GPO_GATE_UP_SEPARATE);
    /* repacked: split code and scale bytes of every expert, in memory of its own */
    const int64_t E = st->cfg.n_expert;
    assert_true(experts_are(gn, GPO_MXFP4_GGML, 0, E));
    assert_true(experts_are(gg, GPO_MXFP4_SPLIT, 0, E));
    assert_non_null(gg->repacked);
    const uint8_t *pg = gg->repacked, *pe = pg + gg->repacked_bytes;
    assert_true(gg->layers[1].mlp2.blocks >= pg && gg->layers[1].mlp2.scales < pe);
    const int64_t V = st->cfg.n_vocab;
    const enum gpo_path paths[2] = {GPO_PATH_EXACT, GPO_PATH_FAST};
    for (int p = 0; p < 2; p++) {
        size_t r1, r2, r3;
        float *want = run_pass(st, paths[p], &r1);
        float *got = run_pass(gg, paths[p], &r2);
        float *in = run_pass(gn, paths[p], &r3);
        assert_int_equal(r1, r2);
        assert_int_equal(r1, r3);
        int same = memcmp(want, got, r1 * (size_t)V * 4) == 0;
        int same_in = memcmp(want, in, r1 * (size_t)V * 4) == 0;
        printf("  %-26s %-5s prefill+decode+incremental: repacked %s, in place %s\n", what,
               paths[p] == GPO_PATH_FAST ? "fast" : "exact", same ? "bit-identical" : "DIFFERENT",
               same_in ? "bit-identical" : "DIFFERENT");
        assert_true(same);
        assert_true(same_in);
        free(want);
        free(got);
        free(in);
    }
    /* The figures of the report agree where the formats store the same bytes. */
    struct gpo_model_info a, b;
    gpo_model_get_info(st, &a);
    gpo_model_get_info(gg, &b);
    assert_int_equal(a.bytes_attention, b.bytes_attention);
    assert_int_equal(a.bytes_embedding, b.bytes_embedding);
    assert_int_equal(a.bytes_unembedding, b.bytes_unembedding);
    assert_int_equal(a.bytes_router, b.bytes_router);
    assert_int_equal(a.bytes_norms, b.bytes_norms);
    /* GGML blocks hold the same bytes as safetensors blocks + scales */
    assert_int_equal(a.bytes_experts, b.bytes_experts);
    assert_int_equal(a.bytes_per_token, b.bytes_per_token);
    assert_int_equal(a.n_params_active, b.n_params_active);
    assert_int_equal(b.n_files, 1);
    /* the repacked bytes are the MXFP4 bytes of the file: blocks and scales */
    assert_string_equal(b.type_experts, "MXFP4, repacked");
    uint64_t mxfp4 = 0;
    for (int64_t l = 0; l < st->cfg.n_layer; l++) {
        const struct gpo_layer *L = &st->layers[l];
        mxfp4 += (uint64_t)(E * L->mlp1[0].rows * L->mlp1[0].cols / 32 * 17 +
                            E * L->mlp2.rows * L->mlp2.cols / 32 * 17);
    }
    /* and the Q8_0 dense matrices copied as Q8_0x16, where they are, and the
     * float-typed ones copied as they are */
    assert_int_equal(b.bytes_repacked, mxfp4 + gg->dense_x16_bytes + gg->dense_copy_bytes);
    assert_true(gg->dense_x16_bytes == 0 || repacks_dense());
    /* the KV pool's plan takes the released mapped bytes off the model's (kvpool.c);
     * a GGUF's dense matrices are never converted here (Q8_0 already, or BF16 as the
     * source was loaded) */
    assert_int_equal(b.bytes_released, mxfp4 + gg->dense_x16_bytes + gg->dense_copy_bytes);
    gpo_model_get_info(gn, &b);
    assert_string_equal(b.type_experts, "MXFP4, GGML blocks");
    assert_int_equal(b.bytes_repacked, 0);
    assert_int_equal(b.bytes_released, 0);
    gpo_model_free(gn);
    gpo_model_free(gg);
    gpo_model_free(st);
    unlink(path);
}

/* The repack drops the mapped pages of the experts it copied: after the load none
 * of them is mapped in this process, with or without --mlock (whose lock leaves
 * them out and takes the copy instead); the copy is resident. */
static void test_gguf_repack_releases_pages(void **s) {
    (void)s;
    gpo_model *st;
    char path[128];
    snprintf(path, sizeof path, "%s/model.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){0});
    const int64_t L = st->cfg.n_layer;
    gpo_model_free(st);
    for (int lock = 0; lock < 2; lock++) {
        gpo_model *m;
        const struct gpo_load_opts lo = {.mlock = lock, .prefetch = 1};
        assert_int_equal(gpo_model_load(path, &lo, &m), GPO_OK);
        /* gate, up, down per layer, and the float-typed dense matrices copied */
        assert_int_equal(m->n_replaced, 3 * L + dense_copies(m));
        assert_true(dense_copies(m) == 0 || dense_copies(m) == 4 * L + 1);
        long mapped = 0;
        size_t bytes = 0;
        for (int i = 0; i < m->n_replaced; i++) {
            const long pr = present_pages(m->replaced[i].p, m->replaced[i].n);
            if (pr < 0) {
                gpo_model_free(m);
                skip();
            }
            mapped += pr;
            bytes += m->replaced[i].n;
        }
        const long pg = sysconf(_SC_PAGESIZE);
        const long copy = present_pages(m->repacked, m->repacked_bytes);
        printf("  mlock %d (locked: %d): %d ranges, %zu KiB replaced, %ld pages still mapped; "
               "copy %ld of %zu pages resident\n", lock, gpo_model_locked(m), m->n_replaced,
               bytes / 1024, mapped, copy, (m->repacked_bytes + (size_t)pg - 1) / (size_t)pg);
        assert_int_equal(mapped, 0);
        assert_int_equal(copy, (long)((m->repacked_bytes + (size_t)pg - 1) / (size_t)pg));
        if (m->dense_copy)
            assert_int_equal(present_pages(m->dense_copy, m->dense_copy_bytes),
                             (long)((m->dense_copy_bytes + (size_t)pg - 1) / (size_t)pg));
        gpo_model_free(m);
    }
    unlink(path);
}

/* One rank's experts: a model loaded with no_repack repacks experts [1, 3) only;
 * a context for all experts is refused, a shard of those experts gives the bits
 * of the same shard on the model read in place; the range cannot grow later. */
static void test_gguf_repack_range(void **s) {
    (void)s;
    gpo_model *st, *a, *b;
    char path[128];
    snprintf(path, sizeof path, "%s/model.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){.fused = 1});
    const struct gpo_load_opts lo = {.no_repack = 1};
    assert_int_equal(gpo_model_load(path, &lo, &a), GPO_OK);
    assert_int_equal(gpo_model_load(path, &lo, &b), GPO_OK);
    const int64_t E = st->cfg.n_expert;
    assert_true(E >= 4);
    assert_int_equal(gpo_model_repack_experts(b, 1, 3), GPO_OK);
    assert_true(experts_are(b, GPO_MXFP4_SPLIT, 1, 3));
    assert_int_equal(gpo_model_repack_experts(b, 1, 2), GPO_OK); /* held already */
    assert_int_equal(gpo_model_repack_experts(b, 0, 3), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "repacked for experts 1-2 only"));
    assert_int_equal(gpo_model_repack_experts(b, 2, E + 1), GPO_ERR_ARG);
    gpo_ctx *ctx;
    assert_int_equal(gpo_ctx_create(b, NULL, &ctx), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "holds only experts 1-2"));
    /* a shard of experts [1, 3): every head and vocabulary row, no collectives */
    const struct gpo_config *c = &st->cfg;
    struct gpo_mesh_shard sh = {.kv_head0 = 0, .kv_head1 = c->n_head_kv, .head0 = 0,
                                .head1 = c->n_head, .q_row0 = 0, .q_row1 = c->n_head * c->head_dim,
                                .kv_row0 = 0, .kv_row1 = c->n_head_kv * c->head_dim,
                                .expert0 = 1, .expert1 = 3, .vocab0 = 0, .vocab1 = c->n_vocab};
    float *out[2];
    gpo_model *ms[2] = {a, b};
    const int32_t ids[5] = {12, 7, 99, 3, 41};
    for (int i = 0; i < 2; i++) {
        struct gpo_ctx_opts o = {.max_tokens = 5, .max_seqs = 1, .n_threads = 2,
                                 .path = GPO_PATH_FAST, .shard = &sh};
        gpo_kv *kv;
        assert_int_equal(gpo_ctx_create(ms[i], &o, &ctx), GPO_OK);
        assert_int_equal(gpo_kv_create_shard(ms[i], &sh, 8, 0, &kv), GPO_OK);
        out[i] = malloc((size_t)c->n_vocab * 5 * 4);
        assert_non_null(out[i]);
        struct gpo_seq_batch sb = {kv, ids, 5, GPO_LOGITS_ALL};
        assert_int_equal(gpo_forward(ctx, &sb, 1, out[i]), GPO_OK);
        gpo_kv_free(kv);
        gpo_ctx_free(ctx);
    }
    assert_memory_equal(out[0], out[1], (size_t)c->n_vocab * 5 * 4);
    free(out[0]);
    free(out[1]);
    gpo_model_free(b);
    gpo_model_free(a);
    gpo_model_free(st);
    unlink(path);
}

/* Dense matrices as stored (BF16), experts as ffn_gate_exps + ffn_up_exps. */
static void test_gguf_bf16_bit_identical(void **s) {
    (void)s;
    check_same_logits(NULL, &(struct wopts){0}, "bf16, gate+up");
}

/* The same with one fused ffn_gate_up_exps tensor per layer. */
static void test_gguf_fused_bit_identical(void **s) {
    (void)s;
    check_same_logits(NULL, &(struct wopts){.fused = 1}, "bf16, fused gate_up");
}

/* Q8_0 dense matrices (the --dense q8 blocks) give exactly the --dense q8 logits of
 * the safetensors checkpoint; --dense q8 on such a file changes nothing. */
static void test_gguf_q8_0_dense(void **s) {
    (void)s;
    struct gpo_load_opts lo = {.dense_q8 = 1};
    check_same_logits(&lo, &(struct wopts){0}, "q8_0 dense (--dense q8)");
    /* Without --dense q8 the GGUF is read as stored: still Q8_0, and no copies. */
    gpo_model *st, *gg;
    char path[128];
    snprintf(path, sizeof path, "%s/q8.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, &lo, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){0});
    assert_int_equal(gpo_model_load(path, NULL, &gg), GPO_OK);
    /* (wo repacked as Q8_0x16 where the kernels read that; the unembedding's 1000
     * rows are not a multiple of 16, so it stays as stored) */
    assert_int_equal(gg->layers[0].wo.dtype, repacks_dense() ? GPO_DT_Q8_0X16 : GPO_DT_Q8_0);
    assert_int_equal(gg->unembedding.dtype, GPO_DT_Q8_0);
    assert_null(gg->converted);
    struct gpo_model_info a, b;
    gpo_model_get_info(st, &a);
    gpo_model_get_info(gg, &b);
    assert_int_equal(a.bytes_per_token, b.bytes_per_token);
    assert_int_equal(b.bytes_converted, 0);
    gpo_model_free(gg);
    /* The repack follows the table the contexts run: with $GPTOSS_KERNELS=avx2
     * (which has no Q8_0x16 kernels) the matrices stay Q8_0. */
    const struct gpo_kernels *avx2 = gpo_kernels_select("avx2");
    if (avx2 && !avx2->matmul_q8_0x16_q8) {
        const char *old = getenv("GPTOSS_KERNELS");
        char *saved = old ? strdup(old) : NULL;
        setenv("GPTOSS_KERNELS", "avx2", 1);
        assert_true(gpo_kernels_chosen() == avx2);
        assert_int_equal(gpo_model_load(path, NULL, &gg), GPO_OK);
        assert_int_equal(gg->layers[0].wo.dtype, GPO_DT_Q8_0);
        assert_null(gg->dense_x16);
        gpo_model_free(gg);
        if (saved) setenv("GPTOSS_KERNELS", saved, 1);
        else unsetenv("GPTOSS_KERNELS");
        free(saved);
    }
    gpo_model_free(st);
    unlink(path);
}

/* --dense q8 on a BF16 GGUF requantises at load, as on safetensors. */
static void test_gguf_dense_q8_at_load(void **s) {
    (void)s;
    gpo_model *st, *gg, *stq, *ggq;
    char path[128];
    snprintf(path, sizeof path, "%s/bf16.gguf", tmpdir);
    struct gpo_load_opts lo = {.dense_q8 = 1};
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){0});
    gpo_model_free(st);
    assert_int_equal(gpo_model_load(FIX, &lo, &stq), GPO_OK);
    assert_int_equal(gpo_model_load(path, &lo, &ggq), GPO_OK);
    assert_int_equal(ggq->layers[2].wk.dtype, repacks_dense() ? GPO_DT_Q8_0X16 : GPO_DT_Q8_0);
    assert_non_null(ggq->converted);
    size_t r1, r2;
    float *want = run_pass(stq, GPO_PATH_EXACT, &r1);
    float *got = run_pass(ggq, GPO_PATH_EXACT, &r2);
    assert_int_equal(r1, r2);
    assert_memory_equal(want, got, r1 * (size_t)stq->cfg.n_vocab * 4);
    struct gpo_model_info a, b;
    gpo_model_get_info(stq, &a);
    gpo_model_get_info(ggq, &b);
    assert_int_equal(a.bytes_converted, b.bytes_converted);
    assert_int_equal(a.bytes_per_token, b.bytes_per_token);
    free(want);
    free(got);
    gpo_model_free(ggq);
    gpo_model_free(stq);
    (void)gg;
    unlink(path);
}

/* A Q8_0 token_embd.weight (as in ggml-org's files) is read in place: the rows the
 * tokens pick are dequantised as ggml does (f16(d) * q), so the logits equal those
 * of the checkpoint whose embedding holds those values as F32. */
static void test_gguf_q8_0_embedding(void **s) {
    (void)s;
    gpo_model *st, *gg;
    char path[128];
    snprintf(path, sizeof path, "%s/embd.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    const struct gpo_tview orig = st->embedding;
    const int64_t V = orig.rows, H = orig.cols, nb = H / 32;
    struct gpo_q8_0_block *q = malloc((size_t)(V * nb) * sizeof *q);
    float *f = malloc((size_t)(V * H) * sizeof *f);
    assert_true(q && f);
    for (int64_t r = 0; r < V; r++)
        gpo_quantize_row_q8_0(q + r * nb, (const uint8_t *)orig.data + (size_t)r * (size_t)H * 2,
                              orig.dtype, H);
    /* the reference dequantisation, written out here */
    for (int64_t i = 0; i < V * H; i++) f[i] = f16_to_f32(q[i / 32].d) * (float)q[i / 32].qs[i % 32];
    const struct gpo_tview qv = {.data = q, .dtype = GPO_DT_Q8_0, .rows = V, .cols = H};
    write_gguf(st, path, &(struct wopts){.embd = &qv});
    assert_int_equal(gpo_model_load(path, NULL, &gg), GPO_OK);
    assert_int_equal(gg->embedding.dtype, GPO_DT_Q8_0);
    st->embedding = (struct gpo_tview){.data = f, .dtype = GPO_DT_F32, .rows = V, .cols = H};
    size_t r1, r2;
    float *want = run_pass(st, GPO_PATH_EXACT, &r1);
    float *got = run_pass(gg, GPO_PATH_EXACT, &r2);
    assert_int_equal(r1, r2);
    assert_memory_equal(want, got, r1 * (size_t)st->cfg.n_vocab * 4);
    /* and the embedding matters: the BF16 one gives other logits */
    st->embedding = orig;
    float *other = run_pass(st, GPO_PATH_EXACT, &r1);
    assert_true(memcmp(other, got, r1 * (size_t)st->cfg.n_vocab * 4) != 0);
    free(want);
    free(got);
    free(other);
    free(q);
    free(f);
    gpo_model_free(gg);
    gpo_model_free(st);
    unlink(path);
}

/* A split set loads from its first part, its tensors bound in whichever part holds
 * them (the cut falls inside layer 1), with the same logits. */
static void test_gguf_split_set(void **s) {
    (void)s;
    gpo_model *st, *gg;
    char prefix[128], first[160], second[160];
    snprintf(prefix, sizeof prefix, "%s/split", tmpdir);
    snprintf(first, sizeof first, "%s-00001-of-00002.gguf", prefix);
    snprintf(second, sizeof second, "%s-00002-of-00002.gguf", prefix);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_split(st, prefix, 30);
    assert_int_equal(gpo_model_load(first, NULL, &gg), GPO_OK);
    struct gpo_model_info inf;
    gpo_model_get_info(gg, &inf);
    assert_int_equal(inf.n_files, 2);
    assert_ptr_equal(gg->gguf.files[gpo_gguf_find(&gg->gguf, "output.weight")->file].map,
                     gg->gguf.files[1].map);
    size_t r1, r2;
    float *want = run_pass(st, GPO_PATH_EXACT, &r1);
    float *got = run_pass(gg, GPO_PATH_EXACT, &r2);
    assert_int_equal(r1, r2);
    assert_memory_equal(want, got, r1 * (size_t)st->cfg.n_vocab * 4);
    free(want);
    free(got);
    gpo_model_free(gg);
    /* the folder holding the set names its first part */
    assert_int_equal(gpo_model_load(tmpdir, NULL, &gg), GPO_OK);
    assert_int_equal(gg->gguf.n_files, 2);
    gpo_model_free(gg);
    /* a missing part is named */
    unlink(second);
    assert_int_equal(gpo_model_load(first, NULL, &gg), GPO_ERR_NOT_FOUND);
    printf("  %s\n", gpo_last_error());
    assert_non_null(strstr(gpo_last_error(), "00002-of-00002"));
    gpo_model_free(st);
    unlink(first);
}

/* A GGUF model still matches OpenAI's reference logits within the golden tolerance
 * (seq0, one token at a time), loaded from the folder that holds it. */
static void test_gguf_golden_tolerance(void **s) {
    (void)s;
    gpo_model *st, *m;
    char path[128];
    snprintf(path, sizeof path, "%s/only.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){.fused = 1});
    gpo_model_free(st);
    assert_int_equal(gpo_model_load(tmpdir, NULL, &m), GPO_OK);
    assert_string_equal(gpo_model_layout(m), "gguf");
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
    assert_non_null(lg);
    double mx = 0;
    for (size_t i = 0; i < ids.n; i++) {
        struct gpo_seq_batch b = {kv, ids.ids + i, 1, GPO_LOGITS_LAST};
        assert_int_equal(gpo_forward(ctx, &b, 1, lg), GPO_OK);
        for (int64_t v = 0; v < V; v++) {
            double d = fabs((double)lg[v] - gold[i * (size_t)V + (size_t)v]);
            if (!(d <= mx)) mx = d;
        }
    }
    printf("  gguf (fused), exact, incremental seq0 vs golden: max|d| %.3g\n", mx);
    assert_true(mx <= 1e-3);
    free(lg);
    free(gold);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_ids_free(&ids);
    gpo_model_free(m);
    unlink(path);
}

/* Write a broken file and expect status `want` with `needle` in the message. */
static void expect_error(const struct wopts *wo, enum gpo_status want, const char *needle) {
    gpo_model *st, *m = NULL;
    char path[128];
    snprintf(path, sizeof path, "%s/bad.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, wo);
    gpo_model_free(st);
    enum gpo_status s = gpo_model_load(path, NULL, &m);
    printf("  %s\n", gpo_last_error());
    assert_int_equal(s, want);
    assert_null(m);
    assert_non_null(strstr(gpo_last_error(), needle));
    unlink(path);
}

static void test_gguf_bad_files(void **s) {
    (void)s;
    expect_error(&(struct wopts){.drop = "blk.2.ffn_up_exps.weight"}, GPO_ERR_MISSING_TENSOR,
                 "blk.2.ffn_up_exps.weight");
    expect_error(&(struct wopts){.drop = "output.weight"}, GPO_ERR_MISSING_TENSOR, "output.weight");
    expect_error(&(struct wopts){.bad_shape = "blk.3.attn_output.weight"}, GPO_ERR_SHAPE,
                 "blk.3.attn_output.weight");
    expect_error(&(struct wopts){.bad_type = "blk.0.attn_sinks.weight"}, GPO_ERR_DTYPE,
                 "blk.0.attn_sinks.weight");
    expect_error(&(struct wopts){.bad_type = "blk.1.ffn_down_exps.weight"}, GPO_ERR_DTYPE,
                 "blk.1.ffn_down_exps.weight");
    expect_error(&(struct wopts){.arch = "gpt-neo"}, GPO_ERR_NOT_GPTOSS, "gpt-neo");
}

/* A file named .gguf that is not GGUF, and a folder with no model at all. */
static void test_not_gguf(void **s) {
    (void)s;
    char path[128];
    snprintf(path, sizeof path, "%s/fake.gguf", tmpdir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("not a model", f);
    fclose(f);
    gpo_model *m = NULL;
    assert_int_equal(gpo_model_load(path, NULL, &m), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "GGUF magic"));
    char dir[128];
    assert_int_equal(gpo_model_resolve_dir(path, dir, sizeof dir), GPO_ERR_NOT_FOUND);
    unlink(path);
    gpo_tokenizer *t = NULL;
    /* nothing to take a tokenizer from */
    assert_int_equal(gpo_tokenizer_load_model(tmpdir, &t), GPO_ERR_NOT_FOUND);
    assert_null(t);
}

/* resolve_dir accepts a GGUF file as the model path; a file without tokenizer
 * keys has no tokenizer to give. */
static void test_resolve_and_no_tokenizer(void **s) {
    (void)s;
    gpo_model *st;
    char path[128], out[256];
    snprintf(path, sizeof path, "%s/notok.gguf", tmpdir);
    assert_int_equal(gpo_model_load(FIX, NULL, &st), GPO_OK);
    write_gguf(st, path, &(struct wopts){0});
    gpo_model_free(st);
    assert_int_equal(gpo_model_resolve_dir(path, out, sizeof out), GPO_OK);
    assert_string_equal(out, path);
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load_model(path, &t), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "no tokenizer"));
    assert_null(t);
    unlink(path);
}

static int setup(void **s) {
    (void)s;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/gpo_gguf_model_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **s) {
    (void)s;
    return rmdir(tmpdir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_bf16_bit_identical),
        cmocka_unit_test(test_gguf_fused_bit_identical),
        cmocka_unit_test(test_gguf_repack_range),
        cmocka_unit_test(test_gguf_repack_releases_pages),
        cmocka_unit_test(test_gguf_q8_0_dense),
        cmocka_unit_test(test_gguf_dense_q8_at_load),
        cmocka_unit_test(test_gguf_q8_0_embedding),
        cmocka_unit_test(test_gguf_split_set),
        cmocka_unit_test(test_gguf_golden_tolerance),
        cmocka_unit_test(test_gguf_bad_files),
        cmocka_unit_test(test_not_gguf),
        cmocka_unit_test(test_resolve_and_no_tokenizer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
