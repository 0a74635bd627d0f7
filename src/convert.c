/* convert.c - GGUF files as llama.cpp's converter writes them (see convert.h),
 * from any gpo_wsource: a loaded safetensors checkpoint here, random weights in
 * mkmodel.c.  Every tensor is streamed in pieces of a few MiB (one expert's
 * gate/up matrix at most), so converting the 120b model needs little memory. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "convert.h"
#include "gguf.h"
#include "gguf_meta.h"
#include "kernels/kernels.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

/* Source bytes per piece of a dense tensor. */
#define PIECE (4u << 20)

int gpo_dense_parse(const char *s, enum gpo_dense *out) {
    if (!s) return 0;
    if (!strcasecmp(s, "bf16")) {
        *out = GPO_DENSE_BF16;
    } else if (!strcasecmp(s, "q8") || !strcasecmp(s, "q8_0")) {
        *out = GPO_DENSE_Q8;
    } else if (!strcasecmp(s, "stored")) {
        *out = GPO_DENSE_STORED;
    } else {
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------- */
/* The tensor table                                                          */

enum kind {
    K_DENSE,   /* a matrix in the dense type */
    K_F32,     /* a vector or matrix forced to F32 */
    K_EXPERTS, /* MXFP4: [E][rows][cols] from the split blocks and scales */
    K_XBIAS,   /* F32: [E][rows] from an expert bias */
};

struct job {
    char name[GPO_GGUF_MAX_NAME + 1];
    enum kind kind;
    int64_t layer;
    enum gpo_wid id, id_scales;
    int64_t rows, cols; /* of the whole matrix (K_DENSE, K_F32) or of one expert */
    /* Experts: every `step`-th source row starting at `first` (gate: 0, 2; up: 1,
     * 2; down: 0, 1); src_rows source rows per expert. */
    int64_t n_expert, first, step, src_rows;
    uint32_t type;
};

struct jobs {
    struct job *j;
    size_t n, cap;
};

static struct job *job_push(struct jobs *js) {
    if (gpo_grow((void **)&js->j, &js->cap, js->n + 1, sizeof *js->j) != GPO_OK) return NULL;
    struct job *j = &js->j[js->n++];
    memset(j, 0, sizeof *j);
    return j;
}

static uint32_t ggml_of_dtype(enum gpo_dtype dt) {
    switch (dt) {
    case GPO_DT_F32: return GPO_GGML_F32;
    case GPO_DT_F16: return GPO_GGML_F16;
    default: return GPO_GGML_BF16;
    }
}

static int float_dtype(enum gpo_dtype dt) {
    return dt == GPO_DT_F32 || dt == GPO_DT_F16 || dt == GPO_DT_BF16;
}

static enum gpo_status add(struct jobs *js, const struct gpo_wsource *src, enum gpo_dense dense,
                           int64_t layer, const char *suffix, enum kind kind, enum gpo_wid id,
                           int64_t rows, int64_t cols) {
    struct job *j = job_push(js);
    if (!j) return gpo_fail(GPO_ERR_NOMEM, "out of memory listing tensors");
    if (layer < 0)
        snprintf(j->name, sizeof j->name, "%s", suffix);
    else
        snprintf(j->name, sizeof j->name, "blk.%lld.%s", (long long)layer, suffix);
    j->kind = kind;
    j->layer = layer;
    j->id = id;
    j->rows = rows;
    j->cols = cols;
    j->type = GPO_GGML_F32;
    if (kind == K_DENSE) {
        enum gpo_dtype dt = src->dtype(src->user, layer, id);
        if (!float_dtype(dt))
            return gpo_fail(GPO_ERR_DTYPE, "%s: source dtype %s, expected BF16, F16 or F32",
                            j->name, gpo_dtype_name(dt));
        j->type = dense == GPO_DENSE_Q8     ? GPO_GGML_Q8_0
                  : dense == GPO_DENSE_BF16 ? GPO_GGML_BF16
                                            : ggml_of_dtype(dt);
        if (j->type == GPO_GGML_Q8_0 && cols % GPO_QK != 0)
            return gpo_fail(GPO_ERR_DTYPE,
                            "%s: rows of %lld elements cannot be Q8_0 (a multiple of %d is needed)",
                            j->name, (long long)cols, GPO_QK);
    }
    return GPO_OK;
}

static enum gpo_status add_experts(struct jobs *js, int64_t layer, const char *suffix,
                                   enum gpo_wid blocks, int64_t n_expert, int64_t rows,
                                   int64_t cols, int64_t first, int64_t step) {
    struct job *j = job_push(js);
    if (!j) return gpo_fail(GPO_ERR_NOMEM, "out of memory listing tensors");
    snprintf(j->name, sizeof j->name, "blk.%lld.%s", (long long)layer, suffix);
    j->kind = blocks == GPO_WID_GU_BIAS || blocks == GPO_WID_DN_BIAS ? K_XBIAS : K_EXPERTS;
    j->type = j->kind == K_XBIAS ? GPO_GGML_F32 : GPO_GGML_MXFP4;
    j->layer = layer;
    j->id = blocks;
    j->id_scales = blocks + 1; /* GU_SCALES follows GU_BLOCKS, DN_SCALES DN_BLOCKS */
    j->n_expert = n_expert;
    j->rows = rows;
    j->cols = cols;
    j->first = first;
    j->step = step;
    j->src_rows = rows * step;
    return GPO_OK;
}

/* The tensors of convert.h's list, in its order. */
static enum gpo_status list_jobs(const struct gpo_wsource *src, enum gpo_dense dense,
                                 struct jobs *js) {
    const struct gpo_config *c = src->cfg;
    const int64_t H = c->n_embd, Q = c->n_head * c->head_dim, K = c->n_head_kv * c->head_dim;
    const int64_t I = c->n_ff, E = c->n_expert, V = c->n_vocab;
    if (H % 32 != 0 || I % 32 != 0)
        return gpo_fail(GPO_ERR_SHAPE, "hidden size %lld and expert size %lld must be multiples "
                        "of 32 for MXFP4", (long long)H, (long long)I);
    /* The embedding stays as stored under Q8_0, as --dense q8 keeps it (convert.h). */
    GPO_TRY(add(js, src, dense == GPO_DENSE_Q8 ? GPO_DENSE_STORED : dense, -1, "token_embd.weight",
                K_DENSE, GPO_WID_EMBED, V, H));
    for (int64_t l = 0; l < c->n_layer; l++) {
        GPO_TRY(add(js, src, dense, l, "attn_norm.weight", K_F32, GPO_WID_ATTN_NORM, 1, H));
        GPO_TRY(add(js, src, dense, l, "attn_q.weight", K_DENSE, GPO_WID_Q, Q, H));
        GPO_TRY(add(js, src, dense, l, "attn_q.bias", K_F32, GPO_WID_Q_B, 1, Q));
        GPO_TRY(add(js, src, dense, l, "attn_k.weight", K_DENSE, GPO_WID_K, K, H));
        GPO_TRY(add(js, src, dense, l, "attn_k.bias", K_F32, GPO_WID_K_B, 1, K));
        GPO_TRY(add(js, src, dense, l, "attn_v.weight", K_DENSE, GPO_WID_V, K, H));
        GPO_TRY(add(js, src, dense, l, "attn_v.bias", K_F32, GPO_WID_V_B, 1, K));
        GPO_TRY(add(js, src, dense, l, "attn_output.weight", K_DENSE, GPO_WID_O, H, Q));
        GPO_TRY(add(js, src, dense, l, "attn_output.bias", K_F32, GPO_WID_O_B, 1, H));
        GPO_TRY(add(js, src, dense, l, "attn_sinks.weight", K_F32, GPO_WID_SINKS, 1, c->n_head));
        GPO_TRY(add(js, src, dense, l, "post_attention_norm.weight", K_F32, GPO_WID_MLP_NORM, 1,
                    H));
        GPO_TRY(add(js, src, dense, l, "ffn_gate_inp.weight", K_F32, GPO_WID_ROUTER, E, H));
        GPO_TRY(add(js, src, dense, l, "ffn_gate_inp.bias", K_F32, GPO_WID_ROUTER_B, 1, E));
        GPO_TRY(add_experts(js, l, "ffn_gate_exps.weight", GPO_WID_GU_BLOCKS, E, I, H, 0, 2));
        GPO_TRY(add_experts(js, l, "ffn_gate_exps.bias", GPO_WID_GU_BIAS, E, I, 1, 0, 2));
        GPO_TRY(add_experts(js, l, "ffn_up_exps.weight", GPO_WID_GU_BLOCKS, E, I, H, 1, 2));
        GPO_TRY(add_experts(js, l, "ffn_up_exps.bias", GPO_WID_GU_BIAS, E, I, 1, 1, 2));
        GPO_TRY(add_experts(js, l, "ffn_down_exps.weight", GPO_WID_DN_BLOCKS, E, H, I, 0, 1));
        GPO_TRY(add_experts(js, l, "ffn_down_exps.bias", GPO_WID_DN_BIAS, E, H, 1, 0, 1));
    }
    GPO_TRY(add(js, src, dense, -1, "output_norm.weight", K_F32, GPO_WID_FINAL_NORM, 1, H));
    GPO_TRY(add(js, src, dense, -1, "output.weight", K_DENSE, GPO_WID_UNEMBED, V, H));
    return GPO_OK;
}

/* ggml ne of a job: vectors 1-D, matrices {cols, rows}, experts {cols, rows, E}
 * (biases {rows, E}). */
static int job_ne(const struct job *j, int64_t *ne) {
    switch (j->kind) {
    case K_DENSE:
    case K_F32:
        ne[0] = j->cols;
        ne[1] = j->rows;
        return j->rows == 1 ? 1 : 2;
    case K_EXPERTS:
        ne[0] = j->cols;
        ne[1] = j->rows;
        ne[2] = j->n_expert;
        return 3;
    case K_XBIAS:
        ne[0] = j->rows;
        ne[1] = j->n_expert;
        return 2;
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Streaming the data                                                        */

struct stream {
    const struct gpo_wsource *src;
    struct gpo_gguf_writer *w;
    uint8_t *in, *out; /* scratch buffers of cap_in / cap_out bytes */
    size_t cap_in, cap_out;
    uint64_t done, total;
    double t0, last;
    const char *what;
};

static enum gpo_status reserve(uint8_t **buf, size_t *cap, uint64_t need) {
    if (need <= *cap) return GPO_OK;
    if (need > SIZE_MAX / 2) return gpo_fail(GPO_ERR_OVERFLOW, "buffer of %llu bytes",
                                             (unsigned long long)need);
    uint8_t *p = realloc(*buf, (size_t)need);
    if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory (%llu bytes)", (unsigned long long)need);
    *buf = p;
    *cap = (size_t)need;
    return GPO_OK;
}

static void progress(struct stream *st, int force) {
    double now = gpo_now();
    if (!force && now - st->last < 2.0) return;
    st->last = now;
    double dt = now - st->t0 > 1e-9 ? now - st->t0 : 1e-9;
    gpo_log(GPO_LOG_INFO, "%s: %.2f of %.2f GB written (%.0f%%), %.0f MB/s", st->what,
            (double)st->done / 1e9, (double)st->total / 1e9,
            st->total ? 100.0 * (double)st->done / (double)st->total : 100.0,
            (double)st->done / 1e6 / dt);
}

static enum gpo_status emit(struct stream *st, const void *data, uint64_t n) {
    GPO_TRY(gpo_gguf_writer_write(st->w, data, n));
    st->done += n;
    progress(st, 0);
    return GPO_OK;
}

/* One row of n elements of dtype dt to ggml type `type` at out; the bytes written
 * in *n_out. */
static void convert_row(uint8_t *out, const uint8_t *row, enum gpo_dtype dt, int64_t n,
                        uint32_t type, uint64_t *n_out) {
    const size_t es = gpo_dtype_size(dt);
    if (type == ggml_of_dtype(dt)) {
        memcpy(out, row, (size_t)n * es);
        *n_out = (uint64_t)n * es;
    } else if (type == GPO_GGML_F32) {
        gpo_to_f32((float *)(void *)out, row, dt, n);
        *n_out = (uint64_t)n * 4;
    } else if (type == GPO_GGML_BF16) {
        /* From F32 or F16: through f32 (exact for F16), rounded to nearest even. */
        for (int64_t i = 0; i < n; i++) {
            float f;
            gpo_to_f32(&f, row + (size_t)i * es, dt, 1);
            uint16_t b = f32_to_bf16(f);
            memcpy(out + 2 * i, &b, 2);
        }
        *n_out = (uint64_t)n * 2;
    } else { /* Q8_0 */
        gpo_quantize_row_q8_0((struct gpo_q8_0_block *)(void *)out, row, dt, n);
        *n_out = (uint64_t)(n / GPO_QK) * sizeof(struct gpo_q8_0_block);
    }
}

/* A matrix (or vector) of float rows, some rows at a time. */
static enum gpo_status stream_rows(struct stream *st, const struct job *j) {
    const struct gpo_wsource *src = st->src;
    const enum gpo_dtype dt = src->dtype(src->user, j->layer, j->id);
    if (!float_dtype(dt))
        return gpo_fail(GPO_ERR_DTYPE, "%s: source dtype %s, expected BF16, F16 or F32", j->name,
                        gpo_dtype_name(dt));
    const uint64_t row_bytes = (uint64_t)j->cols * gpo_dtype_size(dt);
    int64_t per = (int64_t)(PIECE / row_bytes);
    if (per < 1) per = 1;
    if (per > j->rows) per = j->rows;
    /* F32 output is at most twice a BF16 input; Q8_0 is smaller. */
    GPO_TRY(reserve(&st->in, &st->cap_in, (uint64_t)per * row_bytes));
    GPO_TRY(reserve(&st->out, &st->cap_out, (uint64_t)per * (uint64_t)j->cols * 4));
    for (int64_t r = 0; r < j->rows; r += per) {
        const int64_t nr = j->rows - r < per ? j->rows - r : per;
        const void *p;
        GPO_TRY(src->read(src->user, j->layer, j->id, (uint64_t)r * row_bytes,
                          (uint64_t)nr * row_bytes, st->in, &p));
        uint64_t n_out = 0;
        for (int64_t k = 0; k < nr; k++) {
            uint64_t n;
            convert_row(st->out + n_out, (const uint8_t *)p + (uint64_t)k * row_bytes, dt,
                        j->cols, j->type, &n);
            n_out += n;
        }
        GPO_TRY(emit(st, st->out, n_out));
    }
    return GPO_OK;
}

/* MXFP4 experts: per expert, the selected rows of the split blocks and scales
 * repacked into GGML blocks. */
static enum gpo_status stream_experts(struct stream *st, const struct job *j) {
    const struct gpo_wsource *src = st->src;
    const int64_t nb = j->cols / 32;                      /* blocks per row */
    const uint64_t blk_bytes = (uint64_t)j->src_rows * (uint64_t)nb * 16;
    const uint64_t scl_bytes = (uint64_t)j->src_rows * (uint64_t)nb;
    const uint64_t out_bytes = (uint64_t)j->rows * (uint64_t)nb * 17;
    GPO_TRY(reserve(&st->in, &st->cap_in, blk_bytes + scl_bytes));
    GPO_TRY(reserve(&st->out, &st->cap_out, out_bytes));
    for (int64_t e = 0; e < j->n_expert; e++) {
        const void *pb, *ps;
        GPO_TRY(src->read(src->user, j->layer, j->id, (uint64_t)e * blk_bytes, blk_bytes, st->in,
                          &pb));
        GPO_TRY(src->read(src->user, j->layer, j->id_scales, (uint64_t)e * scl_bytes, scl_bytes,
                          st->in + blk_bytes, &ps));
        for (int64_t r = 0; r < j->rows; r++) {
            const int64_t sr = j->first + r * j->step;
            gpo_mxfp4_to_ggml(st->out + (uint64_t)r * (uint64_t)nb * 17,
                              (const uint8_t *)pb + (uint64_t)sr * (uint64_t)nb * 16,
                              (const uint8_t *)ps + (uint64_t)sr * (uint64_t)nb, nb);
        }
        GPO_TRY(emit(st, st->out, out_bytes));
    }
    return GPO_OK;
}

/* An expert bias [E][src_rows] to F32 [E][rows], every step-th element. */
static enum gpo_status stream_xbias(struct stream *st, const struct job *j) {
    const struct gpo_wsource *src = st->src;
    const enum gpo_dtype dt = src->dtype(src->user, j->layer, j->id);
    if (!float_dtype(dt))
        return gpo_fail(GPO_ERR_DTYPE, "%s: source dtype %s, expected BF16, F16 or F32", j->name,
                        gpo_dtype_name(dt));
    const size_t es = gpo_dtype_size(dt);
    const uint64_t in_bytes = (uint64_t)j->src_rows * es;
    GPO_TRY(reserve(&st->in, &st->cap_in, in_bytes));
    GPO_TRY(reserve(&st->out, &st->cap_out, (uint64_t)j->rows * 4));
    for (int64_t e = 0; e < j->n_expert; e++) {
        const void *p;
        GPO_TRY(src->read(src->user, j->layer, j->id, (uint64_t)e * in_bytes, in_bytes, st->in,
                          &p));
        float *o = (float *)(void *)st->out;
        for (int64_t r = 0; r < j->rows; r++)
            gpo_to_f32(&o[r], (const uint8_t *)p + (uint64_t)(j->first + r * j->step) * es, dt,
                       1);
        GPO_TRY(emit(st, st->out, (uint64_t)j->rows * 4));
    }
    return GPO_OK;
}

enum gpo_status gpo_gguf_write_weights(const struct gpo_wsource *src,
                                       const struct gpo_gguf_out *out) {
    if (!src || !src->cfg || !src->read || !src->dtype || !out || !out->path)
        return gpo_fail(GPO_ERR_ARG, "gguf writer: missing source or output");
    struct jobs js = {0};
    struct gpo_gguf_writer w = {0};
    struct stream st = {.src = src, .w = &w, .what = out->what ? out->what : "gguf"};
    enum gpo_status s = list_jobs(src, out->dense, &js);
    if (s == GPO_OK) s = gpo_gguf_writer_open(&w, out->path);
    if (s != GPO_OK) {
        free(js.j);
        return s;
    }
    s = gpo_gguf_write_config(&w, src->cfg, out->name);
    if (s == GPO_OK) s = gpo_gguf_writer_kv_u32(&w, "general.file_type", GPO_GGUF_FTYPE_MXFP4_MOE);
    if (s == GPO_OK && out->tok) s = gpo_gguf_write_tokenizer(&w, out->tok, src->cfg->n_vocab);
    for (size_t i = 0; i < js.n && s == GPO_OK; i++) {
        int64_t ne[GPO_GGUF_MAX_DIMS];
        int nd = job_ne(&js.j[i], ne);
        uint64_t nbytes = 0;
        if (gpo_ggml_nbytes(js.j[i].type, nd, ne, &nbytes) != 0) {
            s = gpo_fail(GPO_ERR_OVERFLOW, "%s: size overflow", js.j[i].name);
            break;
        }
        st.total += nbytes;
        s = gpo_gguf_writer_declare(&w, js.j[i].name, js.j[i].type, nd, ne);
    }
    st.t0 = st.last = gpo_now();
    for (size_t i = 0; i < js.n && s == GPO_OK; i++) {
        const struct job *j = &js.j[i];
        switch (j->kind) {
        case K_DENSE:
        case K_F32: s = stream_rows(&st, j); break;
        case K_EXPERTS: s = stream_experts(&st, j); break;
        case K_XBIAS: s = stream_xbias(&st, j); break;
        }
    }
    if (s == GPO_OK) {
        s = gpo_gguf_writer_close(&w);
        if (s == GPO_OK) progress(&st, 1);
    } else {
        gpo_gguf_writer_abort(&w);
    }
    free(st.in);
    free(st.out);
    free(js.j);
    return s;
}

/* ------------------------------------------------------------------------- */
/* A loaded safetensors model as a source                                    */

/* The view of a non-expert weight. */
static const struct gpo_tview *model_view(const struct gpo_model *m, int64_t layer,
                                          enum gpo_wid id) {
    if (layer < 0) {
        switch (id) {
        case GPO_WID_EMBED: return &m->embedding;
        case GPO_WID_FINAL_NORM: return &m->final_norm;
        case GPO_WID_UNEMBED: return &m->unembedding;
        default: return NULL;
        }
    }
    const struct gpo_layer *L = &m->layers[layer];
    switch (id) {
    case GPO_WID_ATTN_NORM: return &L->attn_norm;
    case GPO_WID_Q: return &L->wq;
    case GPO_WID_Q_B: return &L->bq;
    case GPO_WID_K: return &L->wk;
    case GPO_WID_K_B: return &L->bk;
    case GPO_WID_V: return &L->wv;
    case GPO_WID_V_B: return &L->bv;
    case GPO_WID_O: return &L->wo;
    case GPO_WID_O_B: return &L->bo;
    case GPO_WID_SINKS: return &L->sinks;
    case GPO_WID_MLP_NORM: return &L->mlp_norm;
    case GPO_WID_ROUTER: return &L->router_w;
    case GPO_WID_ROUTER_B: return &L->router_b;
    case GPO_WID_GU_BIAS: return &L->mlp1[0].bias;
    case GPO_WID_DN_BIAS: return &L->mlp2.bias;
    default: return NULL;
    }
}

static enum gpo_dtype model_dtype(void *user, int64_t layer, enum gpo_wid id) {
    const struct gpo_tview *v = model_view(user, layer, id);
    return v ? v->dtype : GPO_DT_U8;
}

/* Views are contiguous row-major (the q/k/v views of a fused qkv are row ranges
 * of it); the expert tensors are read one expert at a time through the strides
 * of the expert views. */
static enum gpo_status model_read(void *user, int64_t layer, enum gpo_wid id, uint64_t off,
                                  uint64_t len, void *buf, const void **out) {
    const struct gpo_model *m = user;
    (void)buf;
    if (id >= GPO_WID_GU_BLOCKS && layer >= 0) {
        const struct gpo_layer *L = &m->layers[layer];
        if (L->gate_up != GPO_GATE_UP_INTERLEAVED || L->mlp1[0].layout != GPO_MXFP4_SPLIT)
            return gpo_fail(GPO_ERR_UNSUPPORTED, "layer %lld: experts not in the safetensors "
                            "layout", (long long)layer);
        const struct gpo_xmat *x = id <= GPO_WID_GU_BIAS ? &L->mlp1[0] : &L->mlp2;
        const uint64_t nb = (uint64_t)x->cols / 32;
        uint64_t per;
        const uint8_t *base;
        size_t stride;
        switch (id) {
        case GPO_WID_GU_BLOCKS:
        case GPO_WID_DN_BLOCKS:
            per = (uint64_t)x->rows * nb * 16, base = x->blocks, stride = x->blocks_stride;
            break;
        case GPO_WID_GU_SCALES:
        case GPO_WID_DN_SCALES:
            per = (uint64_t)x->rows * nb, base = x->scales, stride = x->scales_stride;
            break;
        default: /* biases */
            per = (uint64_t)x->rows * gpo_dtype_size(x->bias.dtype);
            base = x->bias.data;
            stride = (size_t)x->bias_stride * gpo_dtype_size(x->bias.dtype);
            break;
        }
        const uint64_t e = off / per;
        if (e >= (uint64_t)m->cfg.n_expert || off % per + len > per)
            return gpo_fail(GPO_ERR_INTERNAL, "layer %lld: read of %llu bytes at %llu crosses "
                            "an expert", (long long)layer, (unsigned long long)len,
                            (unsigned long long)off);
        *out = base + e * stride + off % per;
        return GPO_OK;
    }
    const struct gpo_tview *v = model_view(m, layer, id);
    const uint64_t size = v ? (uint64_t)v->rows * (uint64_t)v->cols * gpo_dtype_size(v->dtype) : 0;
    if (!v || off > size || len > size - off)
        return gpo_fail(GPO_ERR_INTERNAL, "weight %d of layer %lld: read of %llu bytes at %llu "
                        "outside it", (int)id, (long long)layer, (unsigned long long)len,
                        (unsigned long long)off);
    *out = (const uint8_t *)v->data + off;
    return GPO_OK;
}

void gpo_wsource_of_model(const struct gpo_model *m, struct gpo_wsource *out) {
    out->cfg = &m->cfg;
    out->user = (void *)(uintptr_t)m; /* read only: the callbacks take it back as const */
    out->dtype = model_dtype;
    out->read = model_read;
}

/* general.name from the folder: "gpt-oss-20b" for /x/gpt-oss-20b or
 * /x/gpt-oss-20b/original. */
static void name_from_dir(const char *dir, char *out, size_t size) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", dir);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    char *base = strrchr(tmp, '/');
    if (base && !strcmp(base + 1, "original") && base > tmp) {
        *base = 0;
        base = strrchr(tmp, '/');
    }
    const char *src = base ? base + 1 : tmp;
    size_t len = strlen(src);
    if (len >= size) len = size - 1; /* a long name is cut, never overflowed */
    memcpy(out, src, len);
    out[len] = 0;
}

enum gpo_status gpo_convert_gguf(const struct gpo_convert_opts *opts) {
    if (!opts || !opts->src_dir || !opts->dst_path || !opts->dst_path[0])
        return gpo_fail(GPO_ERR_ARG, "convert needs a source folder and a destination file");
    struct stat sb;
    if (!opts->force && lstat(opts->dst_path, &sb) == 0)
        return gpo_fail(GPO_ERR_ARG, "%s already exists (use --force to replace it)",
                        opts->dst_path);
    if (stat(opts->src_dir, &sb) != 0)
        return gpo_fail(GPO_ERR_NOT_FOUND, "source %s: %s", opts->src_dir, strerror(errno));

    gpo_model *m = NULL;
    gpo_tokenizer *tok = NULL;
    char tok_path[4096], name[256];
    GPO_TRY(gpo_model_load(opts->src_dir, NULL, &m));
    if (strcmp(m->layout, "hf") && strcmp(m->layout, "original")) {
        enum gpo_status e = gpo_fail(GPO_ERR_UNSUPPORTED, "%s is not a safetensors checkpoint "
                                     "(%s layout): only safetensors folders are converted",
                                     opts->src_dir, m->layout);
        gpo_model_free(m);
        return e;
    }
    enum gpo_status s = gpo_tokenizer_find(opts->tokenizer_path, opts->src_dir, tok_path,
                                           sizeof tok_path);
    if (s == GPO_OK) s = gpo_tokenizer_load(tok_path, &tok);
    /* A tokenizer with more ids than the embedding has rows cannot be described
     * by the file (llama.cpp checks that they agree): an explicit one is an
     * error, a default one (say the real tokenizer beside a small test model) is
     * left out, and the file then needs a tokenizer.json to run. */
    if (s == GPO_OK && gpo_tokenizer_n_tokens(tok) > m->cfg.n_vocab) {
        if (opts->tokenizer_path) {
            s = gpo_fail(GPO_ERR_TOKENIZER, "%s defines %d token ids, the model's vocabulary "
                         "has %lld", tok_path, (int)gpo_tokenizer_n_tokens(tok),
                         (long long)m->cfg.n_vocab);
        } else {
            gpo_log(GPO_LOG_WARN, "convert: %s defines %d token ids, more than the model's %lld: "
                    "the file gets no tokenizer", tok_path, (int)gpo_tokenizer_n_tokens(tok),
                    (long long)m->cfg.n_vocab);
            gpo_tokenizer_free(tok);
            tok = NULL;
        }
    }
    if (s == GPO_OK) {
        name_from_dir(m->dir ? m->dir : opts->src_dir, name, sizeof name);
        struct gpo_wsource src;
        gpo_wsource_of_model(m, &src);
        struct gpo_gguf_out out = {.path = opts->dst_path, .dense = opts->dense, .tok = tok,
                                   .name = name, .what = "convert"};
        gpo_log(GPO_LOG_INFO, "convert: %s (%s layout) -> %s, tokenizer %s", opts->src_dir,
                m->layout, opts->dst_path, tok ? tok_path : "none");
        s = gpo_gguf_write_weights(&src, &out);
    }
    gpo_tokenizer_free(tok);
    gpo_model_free(m);
    return s;
}
