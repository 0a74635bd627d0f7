/* model.h - the loaded model: configuration, the safetensors files it maps, and
 * per-layer views of every weight (pointers into the mapping, never copies).
 * Internal to the library. */
#ifndef GPO_MODEL_H
#define GPO_MODEL_H

#include "gpo.h"
#include "kernels/kernels.h"
#include "safetensors.h"

/* A read-only view of a weight: `rows` x `cols` elements of `dtype`, row-major.
 * Vectors have rows = 1. */
struct gpo_tview {
    const void *data;
    enum gpo_dtype dtype;
    int64_t rows, cols;
};

/* Element i of a float-typed view (F32, F16 or BF16). */
float gpo_tview_get(const struct gpo_tview *v, int64_t i);

struct gpo_layer {
    struct gpo_tview attn_norm;  /* [n_embd] */
    struct gpo_tview wq, wk, wv; /* [n_head*head_dim | n_head_kv*head_dim, n_embd] */
    struct gpo_tview bq, bk, bv; /* biases */
    struct gpo_tview sinks;      /* [n_head] */
    struct gpo_tview wo, bo;     /* [n_embd, n_head*head_dim], [n_embd] */
    struct gpo_tview mlp_norm;   /* [n_embd] */
    struct gpo_tview router_w;   /* [n_expert, n_embd] */
    struct gpo_tview router_b;   /* [n_expert] */
    /* Experts (MXFP4): mlp1 rows interleave gate (even) and linear (odd) units. */
    const uint8_t *mlp1_blocks;  /* [n_expert, 2*n_ff, n_embd/32, 16] */
    const uint8_t *mlp1_scales;  /* [n_expert, 2*n_ff, n_embd/32] */
    struct gpo_tview mlp1_bias;  /* [n_expert, 2*n_ff] */
    const uint8_t *mlp2_blocks;  /* [n_expert, n_embd, n_ff/32, 16] */
    const uint8_t *mlp2_scales;  /* [n_expert, n_embd, n_ff/32] */
    struct gpo_tview mlp2_bias;  /* [n_expert, n_embd] */
};

struct gpo_model {
    struct gpo_config cfg;
    char *dir;          /* folder the weights were read from */
    const char *layout; /* "hf" or "original" */
    struct gpo_st st;
    struct gpo_tview embedding;   /* [n_vocab, n_embd] */
    struct gpo_tview final_norm;  /* [n_embd] */
    struct gpo_tview unembedding; /* [n_vocab, n_embd] */
    struct gpo_layer *layers;
    struct gpo_model_info info;
    int locked; /* 1 when every mapped file is locked in memory (--mlock) */
    void *converted; /* one allocation holding the --dense q8 copies */
};

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
