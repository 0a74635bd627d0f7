/* gpo_sampler.h - choosing the next token from logits (spec 7): greedy,
 * temperature, top-k, top-p, min-p, repetition/presence/frequency penalties,
 * a banned-id mask, log-probabilities, and the stop rules of a harmony turn.
 * Included by gpo.h. */
#ifndef GPO_SAMPLER_H
#define GPO_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GPO_MAX_LOGPROBS 20
/* Longest penalty window (its ring costs 4 bytes an id); longer than any context. */
#define GPO_MAX_PENALTY_WINDOW (1 << 24)
/* Temperatures below this are greedy, like 0: 1/T stays far from overflow, and
 * at T = 1e-6 a logit gap of 1e-4 already makes odds of e^-100. */
#define GPO_SAMPLER_MIN_TEMPERATURE 1e-6f

struct gpo_sampler_params {
    float temperature;        /* 0 (or < GPO_SAMPLER_MIN_TEMPERATURE) = greedy argmax
                                 (ties go to the lowest id) */
    int32_t top_k;            /* keep the k most likely ids; 0 = off */
    float top_p;              /* keep the smallest most-likely set with mass >= top_p; 1 = off */
    float min_p;              /* drop ids with p < min_p * p_max; 0 = off */
    float presence_penalty;   /* OpenAI: logit -= presence if the id occurred; 0 = off */
    float frequency_penalty;  /* OpenAI: logit -= frequency * count; 0 = off */
    float repetition_penalty; /* HF/llama.cpp: positive logits /= r, negative *= r; 1 = off */
    int32_t penalty_window;   /* penalties look at the last N accepted ids; 0 = all of them;
                                 at most GPO_MAX_PENALTY_WINDOW */
    int32_t penalty_min_special; /* ids >= this are never penalised (199998: harmony's
                                    formatting tokens); <= 0 = penalise every id */
    uint64_t seed;
    int32_t n_logprobs;       /* top entries reported by gpo_sampler_sample (0..20) */
};

/* T = 1, top_p = 1, no top-k/min-p, no penalties, window 0, specials exempt,
 * seed 0, no log-probabilities: the engine default of spec 7. */
void gpo_sampler_params_default(struct gpo_sampler_params *p);

typedef struct gpo_sampler gpo_sampler;

/* Every buffer is allocated here for n_vocab ids; gpo_sampler_sample allocates
 * nothing.  banned (n_vocab bytes, non-zero = never sample) is copied; NULL bans
 * nothing.  Invalid parameters are GPO_ERR_ARG naming the field. */
enum gpo_status gpo_sampler_create(const struct gpo_sampler_params *p, int64_t n_vocab,
                                   const uint8_t *banned, gpo_sampler **out);
void gpo_sampler_free(gpo_sampler *s);
const struct gpo_sampler_params *gpo_sampler_get_params(const gpo_sampler *s);
/* Ban (1) or allow (0) one id. */
enum gpo_status gpo_sampler_ban(gpo_sampler *s, int32_t id, int banned);
/* Forget the accepted ids and restart the random stream from the seed. */
void gpo_sampler_reset(gpo_sampler *s);
/* Record a generated id for the penalties.  Call it once per generated token
 * (the sampler does not do it on its own, so a caller may leave out ids it does
 * not want penalised). */
enum gpo_status gpo_sampler_accept(gpo_sampler *s, int32_t id);

struct gpo_logprobs {
    float chosen;                  /* log-probability of the sampled id */
    int32_t n;                     /* entries in ids/lps, most likely first */
    int32_t ids[GPO_MAX_LOGPROBS];
    float lps[GPO_MAX_LOGPROBS];
};

/* Pick the next id from logits[n_vocab] (not modified).  Order: banned ids masked,
 * penalties, then greedy when temperature is 0 (or below
 * GPO_SAMPLER_MIN_TEMPERATURE), else logits / T, top-k, softmax, top-p, min-p and a
 * draw from the renormalised rest.  NaN logits count as -inf, +inf ones as FLT_MAX
 * (several are equally likely), and a penalty never makes a finite logit infinite.
 * lp (may be NULL) gets the log-softmax of the masked raw logits (before penalties
 * and temperature): the chosen id's value and the n_logprobs most likely ids (ties:
 * lowest id first).
 * GPO_ERR_ARG when every id is banned or -inf/NaN. */
enum gpo_status gpo_sampler_sample(gpo_sampler *s, const float *logits, int32_t *out_id,
                                   struct gpo_logprobs *lp);

/* ------------------------------------------------------------------------- */
/* Sampling from candidates                                                  */

/* Most candidates a row can be asked for; a larger top_k needs the whole row. */
#define GPO_CAND_MAX 256

/* An id and its value: a logit as the sampler sees it (banned ids and NaN never,
 * +inf as FLT_MAX); inside the sampler the same pair carries probabilities. */
struct gpo_cand {
    float v;
    int32_t id;
};

/* The sampler's order: larger value first, the lower id on ties. */
static inline int gpo_cand_better(const struct gpo_cand *a, const struct gpo_cand *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

/* The k best (sampler's order) of logits[0..n), whose ids are id0 + i: banned ids
 * (banned[id0 + i] != 0; banned may be NULL) and NaN/-inf skipped, +inf as
 * FLT_MAX.  Writes min(k, finite) candidates to c, best first, and returns their
 * number; *n_finite gets the count of finite, unbanned logits.  k >= 1. */
int64_t gpo_cand_select(const float *logits, int64_t n, int64_t id0, const uint8_t *banned,
                        int64_t k, struct gpo_cand *c, int64_t *n_finite);
/* Put c[0..n) in the sampler's order, best first (allocates nothing). */
void gpo_cand_sort(struct gpo_cand *c, int64_t n);

/* How many candidates of a row stand for the whole row when sampling with s: 1
 * when greedy, top_k when temperature sampling keeps at most top_k <=
 * GPO_CAND_MAX ids, else 0: the whole row is needed (penalties, log-probabilities,
 * top_k 0 or above GPO_CAND_MAX, or a ban changed since creation). */
int32_t gpo_sampler_cand_k(const gpo_sampler *s);

/* gpo_sampler_sample on a row given by its best candidates: c[0..n) (any order)
 * holds the min(k, n_finite) best of the row's n_finite finite logits after the
 * banned mask the sampler was created with, k = gpo_sampler_cand_k(s) > 0.  The
 * same id and random stream as gpo_sampler_sample on the whole row.  GPO_ERR_ARG
 * when k is 0, when the candidates are too few, banned or not finite, or when
 * n_finite is 0. */
enum gpo_status gpo_sampler_sample_top(gpo_sampler *s, const struct gpo_cand *c, int64_t n,
                                       int64_t n_finite, int32_t *out_id);

/* Write to out[n_vocab] the logits the sampler draws from, before temperature:
 * banned ids (and NaN) as -inf, +inf as FLT_MAX, then the penalties of the
 * accepted ids.  For inspection and tests; gpo_sampler_sample does the same
 * internally. */
void gpo_sampler_process(const gpo_sampler *s, const float *logits, float *out);

/* Fill mask[0..n_vocab) with the ids never to sample in a harmony turn (spec 5.4):
 * 199998, 200000, 200001, 200004, 200009..200011 and every id >= 200013, plus every
 * id >= n_tokens (the tokenizer's size; <= 0 = no limit).  <|call|> 200012,
 * <|return|>, <|end|>, <|endoftext|> and the formatting tokens stay allowed. */
void gpo_sampler_harmony_mask(uint8_t *mask, int64_t n_vocab, int64_t n_tokens);

/* ------------------------------------------------------------------------- */
/* Stopping                                                                  */

enum gpo_finish {
    GPO_FINISH_NONE = 0, /* not finished */
    GPO_FINISH_STOP,     /* a stop token or stop string */
    GPO_FINISH_LENGTH,   /* the token limit was reached */
    GPO_FINISH_CONTEXT,  /* the context (KV cache) is full */
    GPO_FINISH_ABORTED,  /* interrupted (abort flag) before any other reason */
    GPO_FINISH_ERROR,    /* this user failed (the engine says why); the others went on */
};
/* "stop", "length", "context", "aborted", "error" ("" for NONE). */
const char *gpo_finish_name(enum gpo_finish f);

/* Is id a stop token: <|return|> 200002, <|call|> 200012 or <|endoftext|> 199999?
 * <|end|> 200007 never is: it only ends the analysis message. */
int gpo_is_stop_token(int32_t id);

/* Should generation stop after token id?  final_text[0..final_len) is the
 * final-channel text decoded so far (including this token's), prev_len its length
 * before this token: only matches that end after prev_len are searched for, so the
 * cost per token stays small.  Returns GPO_FINISH_STOP for a stop token or when one
 * of stops[0..n_stops) occurs (empty strings are ignored); then *stop_at (may be
 * NULL) is the offset of the earliest match in final_text (where the answer should
 * be cut), or final_len for a stop token.  Otherwise GPO_FINISH_NONE. */
enum gpo_finish gpo_stop_check(int32_t id, const char *final_text, size_t final_len,
                               size_t prev_len, const char *const *stops, size_t n_stops,
                               size_t *stop_at);

#ifdef __cplusplus
}
#endif
#endif
