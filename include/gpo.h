/* gpo.h - the public C API of gptoss, an inference engine for GPT-OSS models.
 *
 * Every fallible call returns enum gpo_status; results come back through *_out
 * parameters.  On failure gpo_last_error() gives a message naming what was wrong
 * (the file, tensor, field or offset).  The library never exits and never writes
 * to stdout; diagnostics go through gpo_log().
 *
 * Thread-safety: a gpo_model is immutable after loading and may be shared.  A
 * gpo_ctx, gpo_kv, gpo_sampler or harmony parser is used by one thread at a time.
 */
#ifndef GPO_H
#define GPO_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Status codes                                                              */

#define GPO_STATUS_MAP(X)                                                      \
    X(OK, "success")                                                           \
    X(ERR_ARG, "invalid argument")                                             \
    X(ERR_NOMEM, "out of memory")                                              \
    X(ERR_IO, "I/O error")                                                     \
    X(ERR_NOT_FOUND, "not found")                                              \
    X(ERR_NOT_GPTOSS, "not a GPT-OSS checkpoint")                              \
    X(ERR_JSON, "malformed JSON")                                              \
    X(ERR_TRUNCATED, "truncated file")                                         \
    X(ERR_HEADER, "malformed safetensors header")                              \
    X(ERR_OFFSET, "tensor data offsets out of range or overlapping")           \
    X(ERR_OVERFLOW, "size overflow")                                           \
    X(ERR_DTYPE, "unsupported or unexpected dtype")                            \
    X(ERR_SHAPE, "unexpected tensor shape")                                    \
    X(ERR_MISSING_TENSOR, "missing tensor")                                    \
    X(ERR_CONFIG, "invalid model configuration")                               \
    X(ERR_CONTEXT, "context length exceeded")                                  \
    X(ERR_TOKENIZER, "tokenizer error")                                        \
    X(ERR_UTF8, "invalid UTF-8")                                               \
    X(ERR_TOKEN, "token id out of range")                                      \
    X(ERR_ABORTED, "aborted")                                                  \
    X(ERR_UNSUPPORTED, "unsupported operation")                                \
    X(ERR_INTERNAL, "internal error")                                          \
    X(ERR_BUSY, "busy: the queue is full")

enum gpo_status {
#define GPO_STATUS_ENUM_(name, msg) GPO_##name,
    GPO_STATUS_MAP(GPO_STATUS_ENUM_)
#undef GPO_STATUS_ENUM_
    GPO_STATUS_COUNT_
};

/* "GPO_ERR_IO" for GPO_ERR_IO; "GPO_UNKNOWN" for values outside the enum. */
const char *gpo_status_name(enum gpo_status s);
/* A short English description of the status ("I/O error"). */
const char *gpo_status_str(enum gpo_status s);
/* The detailed message of the last failure in the calling thread ("" if none). */
const char *gpo_last_error(void);

/* ------------------------------------------------------------------------- */
/* Logging (to stderr by default)                                            */

enum gpo_log_level { GPO_LOG_ERROR = 0, GPO_LOG_WARN, GPO_LOG_INFO, GPO_LOG_DEBUG };
typedef void (*gpo_log_fn)(enum gpo_log_level level, const char *msg, void *user);
void gpo_log(enum gpo_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void gpo_set_log_level(enum gpo_log_level level);
/* Install a callback that receives every message at or below the level; NULL restores stderr. */
void gpo_set_log_callback(gpo_log_fn fn, void *user);

/* Monotonic clock in seconds. */
double gpo_now(void);

/* ------------------------------------------------------------------------- */
/* Growable buffers shared by the tokenizer, harmony and the engine          */

struct gpo_ids {
    int32_t *ids;
    size_t n, cap;
};
enum gpo_status gpo_ids_push(struct gpo_ids *v, int32_t id);
enum gpo_status gpo_ids_append(struct gpo_ids *v, const int32_t *ids, size_t n);
void gpo_ids_free(struct gpo_ids *v);

/* A byte string, always NUL-terminated when s != NULL. */
struct gpo_str {
    char *s;
    size_t n, cap;
};
enum gpo_status gpo_str_append(struct gpo_str *v, const char *bytes, size_t n);
void gpo_str_free(struct gpo_str *v);

/* ------------------------------------------------------------------------- */
/* Model configuration                                                       */

#define GPO_MAX_LAYERS 256

struct gpo_config {
    int64_t n_layer;
    int64_t n_embd;        /* hidden size H */
    int64_t n_head;        /* query heads */
    int64_t n_head_kv;     /* key/value heads */
    int64_t head_dim;
    int64_t n_expert;
    int64_t n_expert_used; /* experts per token */
    int64_t n_ff;          /* expert intermediate size */
    int64_t n_vocab;
    int64_t sliding_window;
    int64_t max_position;  /* max_position_embeddings (context the model supports) */
    double rope_theta;
    double rope_factor;    /* YaRN scaling factor */
    double rope_beta_fast;
    double rope_beta_slow;
    int64_t rope_orig_ctx; /* initial_context_length */
    float rms_eps;
    float swiglu_limit;
    float swiglu_alpha;
    int32_t eos_id;        /* -1 if not given */
    int32_t pad_id;        /* -1 if not given */
    uint8_t layer_sliding[GPO_MAX_LAYERS]; /* 1 for sliding-window layers */
};

/* ------------------------------------------------------------------------- */
/* Model                                                                     */

typedef struct gpo_model gpo_model;

struct gpo_load_opts {
    int mlock;    /* lock the mapped weights in memory */
    int prefetch; /* read every mapped page once at load (with progress to the log) */
    int dense_q8; /* requantise the BF16 attention and unembedding matrices to 8-bit
                     blocks (Q8_0 layout) at load: a third fewer bytes per token, at the
                     cost of a copy of those weights and a small logit error */
    int no_repack; /* keep a GGUF model's experts in the file's GGML blocks, read in
                      place.  By default they are copied at load into split code and
                      scale bytes, which the kernels read faster (the same values, the
                      same results); the mapped pages they replace are released, so the
                      resident size stays that of the file.  Where the chosen kernel
                      table reads them, Q8_0 dense matrices (a GGUF's or --dense q8's)
                      are repacked too, as Q8_0x16 (kernels.h), and BF16/F16/F32 ones
                      (q, k, v, out, unembedding; either format) are copied out of the
                      mapping, which one core streams faster; no_repack keeps them */
};

/* Resolve the model folder: `arg` if non-NULL, else $GPT_DIR, else $HF_MODEL (which
 * must be a local folder or GGUF file).  Writes the chosen path to out. */
enum gpo_status gpo_model_resolve_dir(const char *arg, char *out, size_t out_size);

/* Load a checkpoint folder (HF layout, original/ layout, or a folder holding only
 * original/), or a GGUF model: a .gguf file, the first part of a split set, or a
 * folder holding one.  Validates every header, name, dtype, shape and offset first.
 * opts may be NULL. */
enum gpo_status gpo_model_load(const char *dir, const struct gpo_load_opts *opts,
                               gpo_model **out);
void gpo_model_free(gpo_model *m);
/* Repack experts [expert0, expert1) of a GGUF model loaded with no_repack, as the
 * load does for all of them by default: for a rank that runs only those experts
 * (expert parallel), which is then all a context on this model may run.  Does
 * nothing for a safetensors model or experts repacked already; GPO_ERR_ARG when
 * other experts were repacked before. */
enum gpo_status gpo_model_repack_experts(gpo_model *m, int64_t expert0, int64_t expert1);
const struct gpo_config *gpo_model_config(const gpo_model *m);
/* The folder the weights came from and the layout name ("hf", "original" or "gguf"). */
const char *gpo_model_dir(const gpo_model *m);
const char *gpo_model_layout(const gpo_model *m);

struct gpo_model_info {
    int64_t n_tensors;
    int64_t n_files;
    uint64_t bytes_mapped;     /* size of all mapped files */
    uint64_t bytes_tensors;    /* sum of tensor payloads */
    uint64_t bytes_embedding;
    uint64_t bytes_unembedding;
    uint64_t bytes_attention;  /* qkv, out, sinks, norms of attention */
    uint64_t bytes_router;
    uint64_t bytes_experts;    /* MXFP4 blocks + scales + expert biases */
    uint64_t bytes_norms;      /* mlp norms and the final norm */
    uint64_t bytes_per_token;  /* weight bytes one decoded token must read */
    int64_t n_params;
    int64_t n_params_active;
    uint64_t bytes_converted;  /* memory held by --dense q8 copies (0 without) */
    uint64_t bytes_repacked;   /* memory held by the repacked experts and the dense
                                  matrices copied as Q8_0x16 (0 without); the
                                  mapped pages they replace are not resident */
    uint64_t bytes_released;   /* the mapped bytes those copies (--dense q8 and the
                                  repacked experts) replace, let go after the copy */
    /* The element type each group is read as ("BF16", "Q8_0", "F32", ...; the
     * experts "MXFP4" or "MXFP4, GGML blocks"), after any --dense q8 conversion. */
    char type_embedding[24], type_unembedding[24], type_attention[24], type_router[24],
        type_experts[24], type_norms[24];
};
void gpo_model_get_info(const gpo_model *m, struct gpo_model_info *info);

/* ------------------------------------------------------------------------- */
/* KV cache (one per sequence)                                               */

typedef struct gpo_kv gpo_kv;

/* Full-attention layers hold max_seq_len positions; sliding layers a ring of
 * sliding_window slots.  max_seq_len may not exceed the model's max_position. */
enum gpo_status gpo_kv_create(const gpo_model *m, int64_t max_seq_len, gpo_kv **out);
/* The same with `margin` extra slots in each sliding-window ring, so that the
 * cache can be rewound up to `margin` tokens (chat turns, speculative runs). */
enum gpo_status gpo_kv_create_ex(const gpo_model *m, int64_t max_seq_len, int64_t margin,
                                 gpo_kv **out);
void gpo_kv_free(gpo_kv *kv);
int64_t gpo_kv_len(const gpo_kv *kv);      /* tokens already in the cache */
int64_t gpo_kv_capacity(const gpo_kv *kv); /* max_seq_len */
uint64_t gpo_kv_bytes(const gpo_kv *kv);
/* Bytes gpo_kv_create would allocate, for memory plans; UINT64_MAX when the
 * size does not fit in 64 bits. */
uint64_t gpo_kv_bytes_for(const struct gpo_config *c, int64_t max_seq_len);
uint64_t gpo_kv_bytes_for_ex(const struct gpo_config *c, int64_t max_seq_len, int64_t margin);
/* Drop every token at position >= n_keep.  Fails with GPO_ERR_UNSUPPORTED when a
 * sliding-window ring has already overwritten keys the next token would need; the
 * caller then clears the cache (n_keep = 0 always works) and prefills again. */
enum gpo_status gpo_kv_rewind(gpo_kv *kv, int64_t n_keep);

/* ------------------------------------------------------------------------- */
/* Forward pass over a token batch                                           */

typedef struct gpo_ctx gpo_ctx;

enum gpo_path {
    GPO_PATH_EXACT = 0, /* fp32 activations, SIMD kernels (default for logits) */
    GPO_PATH_FAST,      /* may round activations within the bf16 reference's error */
    GPO_PATH_REF,       /* the plain scalar reference kernels */
};

/* A multi-rank shard (mesh.h); only its pointers pass through this header. */
struct gpo_mesh_shard;
struct gpo_mesh_groups;
struct gpo_ctx_opts {
    int64_t max_tokens; /* tokens per forward call (ubatch); 0 = 512 */
    int64_t max_seqs;   /* sequences per forward call; 0 = 64 */
    int n_threads;      /* 0 = all cores */
    enum gpo_path path;
    const struct gpo_mesh_shard *shard;   /* NULL: the whole model on this process */
    const struct gpo_mesh_groups *groups; /* with shard: the groups to reduce over */
};

enum gpo_status gpo_ctx_create(const gpo_model *m, const struct gpo_ctx_opts *opts,
                               gpo_ctx **out);
void gpo_ctx_free(gpo_ctx *ctx);
/* A flag checked between layers; when it becomes non-zero gpo_forward returns
 * GPO_ERR_ABORTED and leaves every KV cache as it was before the call. */
void gpo_ctx_set_abort(gpo_ctx *ctx, volatile sig_atomic_t *flag);
/* The name of the kernel set in use ("avx2", "ref", ...). */
const char *gpo_ctx_kernels(const gpo_ctx *ctx);

enum gpo_logits_mode { GPO_LOGITS_NONE = 0, GPO_LOGITS_LAST, GPO_LOGITS_ALL };

/* One sequence's share of a batch: n_tokens new tokens that continue its cache. */
struct gpo_seq_batch {
    gpo_kv *kv;
    const int32_t *tokens;
    int64_t n_tokens;
    enum gpo_logits_mode logits;
};

/* Run the new tokens of every sequence through the model as one token batch and
 * append their keys and values to each sequence's cache.  Logits rows are written
 * to `logits` in sequence order ([rows, n_vocab]): n_tokens rows for
 * GPO_LOGITS_ALL, one for GPO_LOGITS_LAST, none for GPO_LOGITS_NONE.
 * A sequence may appear at most once per call. */
enum gpo_status gpo_forward(gpo_ctx *ctx, const struct gpo_seq_batch *seqs, int64_t n_seqs,
                            float *logits);

/* Tracing, for tests that localise a mismatch: called during gpo_forward with
 * per-token values.  `token` indexes the batch (sequence order). */
enum gpo_trace_point {
    GPO_TRACE_EMBED,          /* residual after the embedding, float[n_embd] (layer -1) */
    GPO_TRACE_ATTN_RESIDUAL,  /* residual after attention of `layer`, float[n_embd] */
    GPO_TRACE_BLOCK_RESIDUAL, /* residual after the whole block, float[n_embd] */
    GPO_TRACE_ROUTER_LOGITS,  /* float[n_expert] */
    GPO_TRACE_EXPERTS,        /* int32[n_expert_used], descending logit order */
    GPO_TRACE_EXPERT_WEIGHTS, /* float[n_expert_used] */
};
typedef void (*gpo_trace_fn)(void *user, enum gpo_trace_point point, int64_t layer,
                             int64_t token, const void *data, int64_t n);
void gpo_ctx_set_trace(gpo_ctx *ctx, gpo_trace_fn fn, void *user);

/* ------------------------------------------------------------------------- */
/* Random checkpoints of the real shapes                                     */

struct gpo_mkmodel_opts {
    const char *preset; /* "tiny", "20b", "120b" */
    const char *out_dir;
    uint64_t seed;
    int layout_hf;       /* write config.json + model.safetensors (+ index) */
    int layout_original; /* write original/config.json + model.safetensors */
};
enum gpo_status gpo_mkmodel(const struct gpo_mkmodel_opts *opts);

#ifdef __cplusplus
}
#endif

/* Text side of the API, one header per module. */
#include "gpo_tokenizer.h"
#include "gpo_harmony.h"
#include "gpo_sampler.h"
#include "gpo_engine.h"

#endif /* GPO_H */
