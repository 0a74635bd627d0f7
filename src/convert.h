/* convert.h - writing GPT-OSS weights as a GGUF file that llama.cpp loads: the
 * tensor names, ggml types, shapes and metadata of llama.cpp's converter
 * (convert_hf_to_gguf.py, GptOssModel; spec 4.4 and 4.5).  Internal to the
 * library; the CLI's `convert` and `mkmodel --format gguf` call it.
 *
 * Two entry points:
 *     gpo_convert_gguf(&opts)       a safetensors checkpoint (HF or original/ layout)
 *     gpo_mkmodel_gguf(&opts)       random weights of a preset (mkmodel.c), never
 *                                   written as safetensors first
 * Both stream tensor by tensor through gpo_gguf_write_weights, which reads the
 * weights from a gpo_wsource (the HF tensors of spec 4.2, addressed by layer and
 * gpo_wid) and holds at most a few MiB plus one expert's gate/up matrix in memory.
 *
 * What is written (H = n_embd, Q = n_head*head_dim, K = n_head_kv*head_dim,
 * I = n_ff, E = n_expert, V = n_vocab; ne innermost first), in this order:
 *     token_embd.weight [H, V]                                  dense
 *     per layer N: blk.N.attn_norm.weight [H]                   F32
 *       attn_q.weight [H, Q], attn_k/attn_v.weight [H, K]       dense (q/k/v split
 *                                                               from a fused qkv)
 *       attn_q/k/v.bias [Q]/[K]/[K]                             F32
 *       attn_output.weight [Q, H], .bias [H]                    dense, F32
 *       attn_sinks.weight [n_head]                              F32
 *       post_attention_norm.weight [H]                          F32
 *       ffn_gate_inp.weight [H, E], .bias [E]                   F32 (the router)
 *       ffn_gate_exps.weight [H, I, E], .bias [I, E]            MXFP4, F32: the even
 *                                                               (gate) rows of mlp1
 *       ffn_up_exps.weight [H, I, E], .bias [I, E]              the odd (up) rows
 *       ffn_down_exps.weight [I, H, E], .bias [H, E]            MXFP4, F32
 *     output_norm.weight [H]                                    F32
 *     output.weight [H, V]                                      dense
 * "dense" is the stored type (BF16, F16 or F32: copied byte for byte), BF16, or
 * Q8_0 (the bytes of GGML's quantize_row_q8_0, as the --dense q8 kernels use).
 * With Q8_0, token_embd.weight stays as stored, as --dense q8 keeps it: the
 * embedding is read one row per token, so 8 bits would save no time, and on the
 * test fixture they double the logit error (seq3: max |dlogit| 0.81 -> 1.51).
 * llama.cpp reads either type there.
 * MXFP4 experts are repacked losslessly into GGML's 17-byte blocks.  Metadata:
 * gpo_gguf_write_config (general.*, gpt-oss.*), general.file_type = 38
 * (LLAMA_FTYPE_MOSTLY_MXFP4_MOE, what llama.cpp's converter declares for a source
 * with MXFP4 experts whatever the dense type) and gpo_gguf_write_tokenizer
 * (tokenizer.ggml.*) when a tokenizer is given. */
#ifndef GPO_CONVERT_H
#define GPO_CONVERT_H

#include <stdint.h>

#include "gpo.h"

/* llama.cpp's LLAMA_FTYPE_MOSTLY_MXFP4_MOE. */
#define GPO_GGUF_FTYPE_MXFP4_MOE 38u

/* The type of the dense matrices (embedding, unembedding, attention). */
enum gpo_dense {
    GPO_DENSE_STORED = 0, /* as the source stores them (BF16, F16 or F32) */
    GPO_DENSE_BF16,
    GPO_DENSE_Q8,
};

/* Parse "bf16" / "q8" / "q8_0" (any case) / "stored"; 0 on an unknown name. */
int gpo_dense_parse(const char *s, enum gpo_dense *out);

/* The weights of one model, as the HF layout names them (spec 4.2); layer -1 for
 * the global ones.  The order of the per-layer ids is that of spec 4.2. */
enum gpo_wid {
    GPO_WID_EMBED,      /* [V, H] */
    GPO_WID_FINAL_NORM, /* [H] */
    GPO_WID_UNEMBED,    /* [V, H] */
    GPO_WID_ATTN_NORM,  /* [H] */
    GPO_WID_Q, GPO_WID_Q_B, GPO_WID_K, GPO_WID_K_B, GPO_WID_V, GPO_WID_V_B,
    GPO_WID_O, GPO_WID_O_B, /* [H, Q], [H] */
    GPO_WID_SINKS,          /* [n_head] */
    GPO_WID_MLP_NORM,       /* [H] */
    GPO_WID_ROUTER, GPO_WID_ROUTER_B, /* [E, H], [E] */
    GPO_WID_GU_BLOCKS,  /* U8 [E, 2I, H/32, 16], gate (even) and up (odd) rows interleaved */
    GPO_WID_GU_SCALES,  /* U8 [E, 2I, H/32] */
    GPO_WID_GU_BIAS,    /* [E, 2I] */
    GPO_WID_DN_BLOCKS,  /* U8 [E, H, I/32, 16] */
    GPO_WID_DN_SCALES,  /* U8 [E, H, I/32] */
    GPO_WID_DN_BIAS,    /* [E, H] */
    GPO_WID_COUNT_
};

/* Where gpo_gguf_write_weights reads the weights from. */
struct gpo_wsource {
    const struct gpo_config *cfg;
    void *user;
    /* The stored dtype of a weight: F32, F16 or BF16 for the float ones (U8 for
     * blocks and scales is implied and not asked). */
    enum gpo_dtype (*dtype)(void *user, int64_t layer, enum gpo_wid id);
    /* Bytes [off, off + len) of the weight, row-major as in spec 4.2: *out points
     * at them, either into the source's own storage or into buf (len bytes,
     * provided by the caller).  For the expert tensors ([E, ...]) a request never
     * crosses from one expert to the next. */
    enum gpo_status (*read)(void *user, int64_t layer, enum gpo_wid id, uint64_t off,
                            uint64_t len, void *buf, const void **out);
};

/* A safetensors model loaded by gpo_model_load (HF or original layout) as a
 * source: every read points into its mapping (buf is not used). */
struct gpo_model;
void gpo_wsource_of_model(const struct gpo_model *m, struct gpo_wsource *out);

struct gpo_gguf_out {
    const char *path;            /* the .gguf to write (as PATH.tmp, renamed at the end) */
    enum gpo_dense dense;
    const gpo_tokenizer *tok;    /* NULL: no tokenizer.ggml.* keys */
    const char *name;            /* general.name; NULL for none */
    const char *what;            /* names the job in progress lines ("convert") */
};

/* Declare everything listed above and stream the data from src.  On failure
 * nothing is left at out->path (the writer's tmp file is removed). */
enum gpo_status gpo_gguf_write_weights(const struct gpo_wsource *src,
                                       const struct gpo_gguf_out *out);

struct gpo_convert_opts {
    const char *src_dir;        /* a model folder gpo_model_load accepts */
    const char *dst_path;       /* the .gguf file */
    enum gpo_dense dense;
    const char *tokenizer_path; /* NULL: the folder's tokenizer.json or the pinned
                                   default (gpo_tokenizer_find); one must exist.  A
                                   default one with more ids than the model's
                                   vocabulary (a small test model) is left out with a
                                   warning; an explicit one is then an error */
    int force;                  /* replace an existing dst_path */
};

/* Convert a safetensors checkpoint to GGUF.  GPO_ERR_ARG if dst_path exists and
 * force is not set (nothing is touched); the loader's errors for a bad source;
 * GPO_ERR_DTYPE naming the tensor when --dense q8 meets a row length that is not
 * a multiple of 32.  Progress goes to the log (INFO) every two seconds. */
enum gpo_status gpo_convert_gguf(const struct gpo_convert_opts *opts);

struct gpo_mkmodel_gguf_opts {
    const char *preset; /* "tiny", "20b", "120b" */
    const char *path;   /* the .gguf file */
    uint64_t seed;
    enum gpo_dense dense; /* STORED means BF16, the released checkpoints' type */
    const char *tokenizer_path; /* NULL: the pinned default; when none is found the
                                   file gets no tokenizer and a warning is logged */
    int force;
};

/* mkmodel.c: random weights of a preset straight into a GGUF, the same values
 * gpo_mkmodel writes as safetensors for the same seed (so converting that
 * checkpoint gives the same file). */
enum gpo_status gpo_mkmodel_gguf(const struct gpo_mkmodel_gguf_opts *opts);

#endif
