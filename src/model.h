/* model.h - the loaded model: configuration, the safetensors files it maps, and
 * per-layer views of every weight (pointers into the mapping, never copies).
 * Internal to the library. */
#ifndef GPO_MODEL_H
#define GPO_MODEL_H

#include "gpo.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "safetensors.h"
#include "util.h"

/* A read-only view of a weight: `rows` x `cols` elements of `dtype`, row-major.
 * Vectors have rows = 1. */
struct gpo_tview {
    const void *data;
    enum gpo_dtype dtype;
    int64_t rows, cols;
};

/* Q8_0 blocks, in place or repacked 16 rows at a time (the same bytes per row). */
static inline int gpo_dtype_is_q8_0(enum gpo_dtype dt) {
    return dt == GPO_DT_Q8_0 || dt == GPO_DT_Q8_0X16;
}

/* Bytes of n consecutive values of a row of a dense type (Q8_0: n/32 blocks, n a
 * multiple of 32). */
static inline size_t gpo_dense_bytes(enum gpo_dtype dt, int64_t n) {
    if (gpo_dtype_is_q8_0(dt)) return (size_t)(n / GPO_QK) * sizeof(struct gpo_q8_0_block);
    return (size_t)n * gpo_dtype_size(dt);
}

/* Bytes of one row of a view. */
static inline size_t gpo_tview_row_bytes(const struct gpo_tview *v) {
    return gpo_dense_bytes(v->dtype, v->cols);
}

/* Element i of a float-typed view (F32, F16 or BF16).  Inline: the forward pass reads
 * biases with it inside its loops. */
static inline float gpo_tview_get(const struct gpo_tview *v, int64_t i) {
    switch (v->dtype) {
    case GPO_DT_F32: return ((const float *)v->data)[i];
    case GPO_DT_BF16: return bf16_to_f32(((const uint16_t *)v->data)[i]);
    case GPO_DT_F16: return f16_to_f32(((const uint16_t *)v->data)[i]);
    default: return 0.0f; /* binding only admits the three float types */
    }
}

/* How an expert weight stack stores its MXFP4 values (the values are the same). */
enum gpo_mxfp4_layout {
    GPO_MXFP4_SPLIT, /* safetensors: code bytes [rows][cols/32][16] and E8M0 scale
                        bytes [rows][cols/32] in two arrays */
    GPO_MXFP4_GGML,  /* GGUF: [rows][cols/32] struct gpo_mxfp4_ggml_block (scale byte,
                        then 16 split-nibble code bytes), one array */
};

/* One projection of all n_expert experts, as views into the mapped tensors (never
 * copies): expert e is a rows x cols MXFP4 matrix whose rows are contiguous and
 * start at blocks + e*blocks_stride (its scales at scales + e*scales_stride), and
 * its bias is elements e*bias_stride + [0, rows) of `bias`.  The strides let a view
 * cover part of each expert of a bigger tensor: the gate half of a fused GGUF
 * ffn_gate_up_exps tensor is the first n_ff of every 2*n_ff rows (gpo_xmat_ggml
 * with row0 = 0, then row0 = n_ff for the up half). */
struct gpo_xmat {
    enum gpo_mxfp4_layout layout;
    const uint8_t *blocks;  /* SPLIT: code bytes; GGML: 17-byte blocks */
    const uint8_t *scales;  /* SPLIT only (NULL for GGML) */
    size_t blocks_stride;   /* bytes from one expert's blocks to the next's */
    size_t scales_stride;   /* the same for the scales (SPLIT) */
    int64_t rows, cols;     /* of one expert; cols is a multiple of 32 */
    struct gpo_tview bias;  /* F32, F16 or BF16 */
    int64_t bias_stride;    /* elements from one expert's bias to the next's */
    /* The experts [expert0, expert1) the view holds: all of them (0, n_expert) as
     * bound, or one rank's range after gpo_model_repack_experts, whose copy starts
     * at expert0 (expert e's blocks at blocks + (e - expert0)*blocks_stride). */
    int64_t expert0, expert1;
};

/* Expert e's code bytes (GGML: its blocks) and, for SPLIT, its scale bytes. */
static inline const uint8_t *gpo_xmat_blocks(const struct gpo_xmat *w, int64_t e) {
    return w->blocks + (size_t)(e - w->expert0) * w->blocks_stride;
}
static inline const uint8_t *gpo_xmat_scales(const struct gpo_xmat *w, int64_t e) {
    return w->scales + (size_t)(e - w->expert0) * w->scales_stride;
}

/* How the first expert projection holds the gate and linear (up) units.  Either
 * way unit u's output is SwiGLU(gate_u, linear_u); only the order of the rows
 * differs, and with it where the kernels write them. */
enum gpo_gate_up {
    /* One matrix of 2*n_ff rows, even rows gate and odd rows linear (both
     * safetensors layouts): mlp1[0]. */
    GPO_GATE_UP_INTERLEAVED,
    /* Two matrices of n_ff rows: mlp1[0] the gate, mlp1[1] the linear units.
     * GGUF's ffn_gate_exps / ffn_up_exps pair, or the two halves of a fused
     * ffn_gate_up_exps tensor (all gate rows, then all up rows). */
    GPO_GATE_UP_SEPARATE,
};

/* Views for the binders (model.c), for any tensor stored as [E][rows_per_expert]
 * rows of which this view takes rows [row0, row0 + rows) of every expert.
 * gpo_xmat_split: safetensors code bytes and scale bytes; gpo_xmat_ggml: GGML
 * blocks.  `bias` views the whole [E][rows_per_expert] bias tensor (rows = E,
 * cols = rows_per_expert); the result views its matching part. */
struct gpo_xmat gpo_xmat_split(const uint8_t *blocks, const uint8_t *scales,
                               int64_t rows_per_expert, int64_t row0, int64_t rows,
                               int64_t cols, const struct gpo_tview *bias);
struct gpo_xmat gpo_xmat_ggml(const void *blocks, int64_t rows_per_expert, int64_t row0,
                              int64_t rows, int64_t cols, const struct gpo_tview *bias);
/* Both set expert0 = 0 and expert1 = bias->rows (every expert of the tensor). */

struct gpo_layer;
/* Checks that layer `layer`'s expert views agree with the configuration (shapes,
 * arrangement, storage pointers), so the forward pass can trust them; every binder
 * calls it, and gpo_ctx_create again.  Fails with GPO_ERR_SHAPE naming the view. */
enum gpo_status gpo_layer_check_experts(const struct gpo_layer *L, int64_t layer,
                                        const struct gpo_config *c);
/* GPO_ERR_ARG, naming both ranges, unless every expert view of layer L holds experts
 * [expert0, expert1) (a model repacked for one rank holds only that rank's). */
enum gpo_status gpo_layer_holds_experts(const struct gpo_layer *L, int64_t expert0,
                                        int64_t expert1);

struct gpo_layer {
    struct gpo_tview attn_norm;  /* [n_embd] */
    struct gpo_tview wq, wk, wv; /* [n_head*head_dim | n_head_kv*head_dim, n_embd] */
    struct gpo_tview bq, bk, bv; /* biases */
    struct gpo_tview sinks;      /* [n_head] */
    struct gpo_tview wo, bo;     /* [n_embd, n_head*head_dim], [n_embd] */
    struct gpo_tview mlp_norm;   /* [n_embd] */
    struct gpo_tview router_w;   /* [n_expert, n_embd] */
    struct gpo_tview router_b;   /* [n_expert] */
    /* Experts: the first projection (gate and linear units, n_embd columns) in the
     * arrangement `gate_up` names, and the down projection (n_embd rows, n_ff
     * columns).  Every layout of both file formats binds to these views. */
    enum gpo_gate_up gate_up;
    struct gpo_xmat mlp1[2]; /* INTERLEAVED: mlp1[0], 2*n_ff rows; SEPARATE: gate, up */
    struct gpo_xmat mlp2;
};

struct gpo_model {
    struct gpo_config cfg;
    char *dir;          /* folder the weights were read from */
    const char *layout; /* "hf", "original" or "gguf" */
    struct gpo_st st;   /* safetensors files (empty for a GGUF model) */
    struct gpo_gguf gguf; /* the GGUF file or split set (zeroed for safetensors) */
    char *file;         /* the GGUF file opened (first part of a split set); NULL otherwise */
    struct gpo_tview embedding;   /* [n_vocab, n_embd] */
    struct gpo_tview final_norm;  /* [n_embd] */
    struct gpo_tview unembedding; /* [n_vocab, n_embd] */
    struct gpo_layer *layers;
    struct gpo_model_info info;
    int locked; /* 1 when every mapped file is locked in memory (--mlock) */
    void *converted; /* one allocation holding the --dense q8 copies */
    /* The mapped bytes the --dense q8 copies replace (page-rounded), dropped from
     * memory after the conversion and after --prefetch. */
    struct gpo_range {
        const uint8_t *p;
        size_t n;
    } *replaced;
    int n_replaced, cap_replaced;
    /* The GGUF experts copied into the split layout (gpo_model_repack_experts):
     * one allocation, the experts [repacked0, repacked1) of every layer. */
    void *repacked;
    size_t repacked_bytes;
    int64_t repacked0, repacked1;
    /* The Q8_0 dense matrices of a GGUF file copied as Q8_0x16 (repack_dense in
     * model.c; --dense q8 copies are repacked in place instead). */
    void *dense_x16;
    size_t dense_x16_bytes;
    /* The float-typed (BF16, F16, F32) dense matrices copied out of the file
     * mappings into anonymous memory (copy_dense in model.c). */
    void *dense_copy;
    size_t dense_copy_bytes;
};

/* model_gguf.c: open the GGUF file (or the first part of a split set) at `path`,
 * read its configuration (gguf_meta.h), check every tensor's name, shape and type,
 * and bind the layers as views into the mapping, as model.c's safetensors binder
 * does; fills m->cfg, dir, file, layout ("gguf"), gguf, layers and info.  m starts
 * zeroed; on failure gpo_model_free(m) releases what was set. */
enum gpo_status gpo_model_bind_gguf(struct gpo_model *m, const char *path);
/* The byte and parameter figures derived from the per-group ones (bytes per
 * decoded token, active parameters); both binders call it last. */
void gpo_model_finish_info(struct gpo_model *m);

/* Whether the load locked every weight file in memory (gpo_load_opts.mlock). */
int gpo_model_locked(const gpo_model *m);

/* Experts chosen per token: the real models use 4; the router's selection and
 * its per-token buffers are sized for at most this many. */
#define GPO_MAX_EXPERTS_USED 64
/* Positions a model may declare (max_position_embeddings, or the YaRN context
 * when that is absent): 2^30, far above the real 131072, keeps KV sizes finite. */
#define GPO_MAX_POSITIONS ((int64_t)1 << 30)

/* config.c: parse a config.json text (HF or original field names) into cfg.
 * `label` names the file in error messages. */
enum gpo_status gpo_config_parse(const char *json, size_t len, const char *label,
                                 struct gpo_config *cfg);
/* Checks that the dimensions are positive, consistent and within sane bounds. */
enum gpo_status gpo_config_validate(const struct gpo_config *cfg, const char *label);

#endif
