/* engine_policy.h - the engine's scheduling rules that are pure functions of its
 * state, so tests can check them without timing a model. */
#ifndef GPO_ENGINE_POLICY_H
#define GPO_ENGINE_POLICY_H

#include <stdint.h>

/* The smallest prompt chunk of a step with requests generating: a prompt always
 * advances. */
#define GPO_PREFILL_MIN_CHUNK 16

/* Prompt tokens a step may take, of `budget` left after the decode tokens, when
 * n_decode requests are generating and n_prefill are waiting for their first token.
 * With prefill_itl > 1 (the serve option --prefill-itl), as many as keep the step
 * within prefill_itl times a decode-only step by the running estimates (est_decode_s
 * seconds for such a step, est_tok_s per prompt token), at least
 * GPO_PREFILL_MIN_CHUNK; otherwise, with nothing generating or without estimates yet,
 * the whole budget.
 *
 * The time a step may add grows with the waiting requests when they outnumber the
 * generating ones (n_prefill / n_decode times as much).  A long prompt among
 * generating requests still comes in small chunks, so they keep their pace; a burst
 * of short prompts next to one generating request is taken a prompt or more per
 * step, not a few tokens at a time while that one request decodes alone, which
 * would hold back every other user's first token and the throughput with it (a
 * small chunk reads the weights of nearly every expert for a few tokens).  Which
 * tokens share a step never changes an answer (the pass is batch-invariant), only
 * when it comes. */
int64_t gpo_prefill_cap(double prefill_itl, double est_decode_s, double est_tok_s,
                        int64_t n_decode, int64_t n_prefill, int64_t budget);

#endif /* GPO_ENGINE_POLICY_H */
