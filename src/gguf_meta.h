/* gguf_meta.h - GGUF metadata of the "gpt-oss" architecture (spec 4.5): the
 * gpt-oss.* keys <-> struct gpo_config, the tensor table checked against a
 * configuration, and the tokenizer.ggml.* keys <-> gpo_tokenizer.  Internal to
 * the library.
 *
 * Loading a GGUF model:
 *     struct gpo_gguf g = {0};
 *     GPO_TRY(gpo_gguf_open(&g, path));
 *     struct gpo_config cfg;
 *     s = gpo_gguf_read_config(&g, &cfg);           // keys, then gpo_config_validate
 *     if (s == GPO_OK) s = gpo_gguf_check_shapes(&g, &cfg); // names, shapes, types
 *     // bind the tensors (gpo_gguf_find) ...
 *     gpo_tokenizer *tok;                           // when no tokenizer.json is given
 *     if (s == GPO_OK && gpo_gguf_has_tokenizer(&g)) s = gpo_gguf_read_tokenizer(&g, &tok);
 *
 * Writing one (gpt-oss convert / mkmodel --format gguf):
 *     gpo_gguf_writer_open(&w, path);
 *     gpo_gguf_write_config(&w, &cfg, "Gpt Oss 20b");
 *     gpo_gguf_file_type(dense_type, &ft);  gpo_gguf_writer_kv_u32(&w, "general.file_type", ft);
 *     gpo_gguf_write_tokenizer(&w, tok, cfg.n_vocab);
 *     declare and write the tensors (names as gpo_gguf_check_shapes expects), close.
 * The keys, their types and their order are those of llama.cpp's converter
 * (convert_hf_to_gguf.py, GptOssModel), so llama.cpp loads what is written. */
#ifndef GPO_GGUF_META_H
#define GPO_GGUF_META_H

#include <stdint.h>

#include "gguf.h"
#include "gpo.h"

/* general.architecture of the files this engine reads and writes. */
#define GPO_GGUF_ARCH "gpt-oss"

/* The configuration from the gpt-oss.* keys; every failure is GPO_ERR_CONFIG
 * (GPO_ERR_NOT_GPTOSS for another architecture, GPO_ERR_SHAPE for a
 * token_embd.weight that is not 2-D) with a message naming the file, the key and
 * its value.
 *
 * Required: general.architecture = "gpt-oss" (Ollama's "gptoss" dialect and any
 * other architecture are refused by name), block_count, context_length
 * (-> max_position), embedding_length, expert_feed_forward_length (or, in its
 * absence, feed_forward_length; the expert one wins when both are present),
 * attention.head_count, attention.key_length (= head_dim; value_length, when
 * present, must equal it), rope.freq_base, attention.layer_norm_rms_epsilon,
 * expert_count, expert_used_count, attention.sliding_window.
 * Optional: attention.head_count_kv (default: head_count, as llama.cpp);
 * rope.scaling.type: "yarn" needs rope.scaling.factor and
 * rope.scaling.original_context_length, "none" or absent means no scaling (a
 * factor other than 1 without a type would be llama.cpp's linear scaling, which
 * gpt-oss does not use: refused, as is any other type); rope.scaling.yarn_beta_fast
 * / yarn_beta_slow (default 32 / 1); attention.sliding_window_pattern, either a
 * u32 period P as llama.cpp reads it (layer l slides when l % P < P - 1; 0: all
 * layers) or an array of n_layer BOOLs (default: period 2, even layers slide).
 * The YaRN ramp always uses the reference's unrounded bounds (spec 2.5), whatever
 * converter wrote the file: llama.cpp's own knobs (rope.scaling.yarn_ext_factor,
 * yarn_attn_factor, yarn_log_multiplier, its rounding of the bounds) are not
 * read.  n_vocab is token_embd.weight's ne[1] when
 * that tensor exists, else gpt-oss.vocab_size, else the length of
 * tokenizer.ggml.tokens.  eos_id / pad_id come from tokenizer.ggml.eos_token_id /
 * padding_token_id (-1 when absent).  SwiGLU alpha / limit are not stored in GGUF:
 * the model's 1.702 / 7.0.  Ends with gpo_config_validate.  Tensor shapes are not
 * looked at beyond n_vocab: that is gpo_gguf_check_shapes. */
enum gpo_status gpo_gguf_read_config(const struct gpo_gguf *g, struct gpo_config *cfg);

/* Check the tensor table against cfg: every tensor llama.cpp names for gpt-oss is
 * present with its shape (ggml ne, innermost first; trailing dimensions of 1 may
 * be left out or added, as llama.cpp compares all four ne) and an allowed type,
 * and no other tensor is there.  With H = n_embd, Q = n_head*head_dim, K = n_head_kv*head_dim,
 * I = n_ff, E = n_expert, V = n_vocab:
 *     token_embd.weight, output.weight [H, V]                         dense
 *     output_norm.weight [H]                                          small
 *     blk.N.attn_norm.weight, blk.N.post_attention_norm.weight [H]    small
 *     blk.N.attn_q.weight [H, Q], .bias [Q]                           dense, small
 *     blk.N.attn_k.weight / attn_v.weight [H, K], .bias [K]           dense, small
 *     blk.N.attn_output.weight [Q, H], .bias [H]                      dense, small
 *     blk.N.attn_sinks.weight [n_head]                                small
 *     blk.N.ffn_gate_inp.weight [H, E], .bias [E]                     small
 *     blk.N.ffn_gate_exps.weight, ffn_up_exps.weight [H, I, E]        MXFP4
 *       with .bias [I, E]                                             small
 *     or blk.N.ffn_gate_up_exps.weight [H, 2I, E], .bias [2I, E]      (gate rows, then up rows)
 *     blk.N.ffn_down_exps.weight [I, H, E], .bias [H, E]              MXFP4, small
 * dense = F32, F16, BF16 or Q8_0; small = F32, F16 or BF16 (llama.cpp's converter
 * writes F32).  Each layer may use either expert layout, not both.  Errors:
 * GPO_ERR_MISSING_TENSOR, GPO_ERR_SHAPE (the tensor, its shape and the expected
 * one), GPO_ERR_DTYPE (the tensor, its type and the allowed ones), GPO_ERR_CONFIG
 * for a tensor that does not belong (named). */
enum gpo_status gpo_gguf_check_shapes(const struct gpo_gguf *g, const struct gpo_config *cfg);

/* Declare the metadata of cfg, as llama.cpp's converter writes it:
 * general.architecture, general.name (when name is non-NULL),
 * general.quantization_version = 2, and the gpt-oss.* keys above (u32 counts, f32
 * floats, rope.scaling.type a string: "yarn" when rope_factor > 1, else "none"),
 * plus gpt-oss.vocab_size (gguf-py's add_vocab_size key, which llama.cpp reads
 * too), so that the configuration is whole without tensors or a tokenizer.
 * yarn_beta_fast / yarn_beta_slow are written only when they differ from 32 / 1,
 * sliding_window_pattern only (as a BOOL array) when layer_sliding is not the
 * even-layers rule, so a converter's usual file gets exactly the usual keys.
 * cfg->eos_id / pad_id (when >= 0) go to tokenizer.ggml.eos_token_id /
 * padding_token_id; call this before gpo_gguf_write_tokenizer so that they win
 * over the tokenizer's own.  general.file_type is the caller's (see
 * gpo_gguf_file_type).  gpo_gguf_read_config gives cfg back field for field. */
enum gpo_status gpo_gguf_write_config(struct gpo_gguf_writer *w, const struct gpo_config *cfg,
                                      const char *name);

/* llama.cpp's general.file_type (LlamaFileType) for a file whose dense matrices
 * have ggml type dense_type: F32 0, F16 1, Q8_0 7, BF16 32 (what the converter
 * writes for that --outtype; the experts stay MXFP4).  -1 for another type. */
int gpo_gguf_file_type(uint32_t dense_type, uint32_t *out);

/* 1 if the file carries a tokenizer (tokenizer.ggml.tokens is present). */
int gpo_gguf_has_tokenizer(const struct gpo_gguf *g);

/* The tokenizer from tokenizer.ggml.model, .pre, .tokens (STRING array),
 * .token_type (I32 array), .merges (STRING array, optional) and
 * .bos/eos/padding_token_id (optional), via gpo_tokenizer_load_vocab: ids equal
 * to the tokenizer.json ones for the same vocabulary.  The string arrays are read
 * in place (only (pointer, length) index arrays are allocated, and freed before
 * return); the token types are passed as stored.  GPO_ERR_TOKENIZER naming the
 * key for a missing key or a wrong type; load_vocab's errors otherwise. */
enum gpo_status gpo_gguf_read_tokenizer(const struct gpo_gguf *g, gpo_tokenizer **out);

/* Declare the tokenizer.ggml.* keys for t as llama.cpp's converter writes them:
 * model "gpt2", pre "gpt-4o", tokens padded to n_vocab entries (0: exactly the
 * tokenizer's ids; else at least that many), token_type as I32, merges, and
 * bos/eos/padding_token_id as U32 (each skipped when the tokenizer lacks it or the
 * key is already declared, e.g. by gpo_gguf_write_config). */
enum gpo_status gpo_gguf_write_tokenizer(struct gpo_gguf_writer *w, const gpo_tokenizer *t,
                                         int64_t n_vocab);

#endif
