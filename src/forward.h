/* forward.h - the element-wise pieces of the forward pass, exported for unit
 * tests (spec section 2).  Internal to the library. */
#ifndef GPO_FORWARD_H
#define GPO_FORWARD_H

#include "gpo.h"
#include "model.h"

/* YaRN inverse frequencies [head_dim/2] and the concentration (spec 2.5). */
void gpo_rope_inv_freq(const struct gpo_config *c, float *inv_freq, float *concentration);
/* Rotate n_heads head vectors in place with half-split pairs (j, j + head_dim/2). */
void gpo_rope_apply(float *u, int64_t n_heads, int64_t head_dim, const float *cosv,
                    const float *sinv);
/* out = x / rms(x) * scale (scale applied as stored, no 1+ offset). */
void gpo_rmsnorm(float *out, const float *x, const struct gpo_tview *scale, int64_t n, float eps);
/* The k largest of n logits (ties to the lowest index), descending, then softmax over them. */
void gpo_topk_softmax(const float *logits, int64_t n, int64_t k, int32_t *idx, float *w);
/* Interleaved clamped SwiGLU: gate = h[2u] clamped above, linear = h[2u+1] clamped both ways. */
void gpo_swiglu(float *out, const float *h, int64_t n_ff, float alpha, float limit);
/* The same on any arrangement of the pairs: gate = gate[u*step], linear = lin[u*step]
 * (interleaved: lin = gate + 1, step 2; gate rows then linear rows: lin = gate + n_ff,
 * step 1).  Bit-identical to gpo_swiglu on the same values. */
void gpo_swiglu_pairs(float *out, const float *gate, const float *lin, int64_t step,
                      int64_t n_ff, float alpha, float limit);
/* First key position a query at position p sees in layer l (the sliding window
 * holds sliding_window keys including the query's own). */
int64_t gpo_attn_first_key(const struct gpo_config *c, int64_t layer, int64_t p);
/* Plain two-pass attention of one head over n_keys contiguous keys/values (row
 * stride ld) with a sink logit in the denominator only; head_dim <= 1024.  The
 * readable twin of the online-softmax loop in the forward pass. */
void gpo_attention_head_ref(float *out, const float *q, const float *k, const float *v,
                            int64_t n_keys, int64_t ld, int64_t head_dim, float sink);
int gpo_ctx_threads(const gpo_ctx *ctx);

/* What a caller that samples wants of each output row of gpo_forward (rows in
 * the order of the logits): the whole row, or only its sampling candidates.  A
 * shard of a multi-rank mesh then sends its own k best of the row instead of its
 * columns (gpo_sampler_cand_k says which k stands for the row). */
struct gpo_fwd_cands {
    const int32_t *k;      /* [rows] 0 = the whole row into logits; 1..GPO_CAND_MAX = its
                              k best (gpo_cand_select) into c instead */
    const uint8_t *banned; /* [n_vocab] ids never candidates (the sampler's mask); NULL = none */
    struct gpo_cand *c;    /* [rows][GPO_CAND_MAX] out: min(k, n_finite) best, best first */
    int32_t *n;            /* [rows] out: candidates of the row */
    int64_t *n_finite;     /* [rows] out: the row's finite, unbanned logits */
};

/* gpo_forward with per-row candidates (fc may be NULL: every row whole).  The
 * candidates and the whole rows reach member 0 of the model group (the engine's
 * leader; every member gets the whole rows); a row with k > 0 leaves its logits
 * row partly written.  logits may be NULL when every row asks for candidates. */
enum gpo_status gpo_forward_cands(gpo_ctx *ctx, const struct gpo_seq_batch *seqs, int64_t n_seqs,
                                  float *logits, const struct gpo_fwd_cands *fc);
/* Bytes of the shard's packed wo columns the context holds (0 for a part with
 * every head). */
uint64_t gpo_ctx_wo_packed_bytes(const gpo_ctx *ctx);

/* How the forward pass spent its threads, summed over the gpo_forward calls since
 * the context was made or the counters reset.  A barrier is a point every thread of
 * the team waits at (the end of the parallel region counts as one); the time a
 * thread waits there is the idle time at the end of the sweep before it, so
 * barrier_s / (n_threads * wall_s) is the fraction of the team's time spent idle. */
struct gpo_ctx_stats {
    int64_t calls;    /* forward calls that ran the pass (tokens > 0) */
    int64_t tokens;   /* tokens of those calls */
    int64_t barriers; /* barriers crossed, each counted once (not once per thread) */
    int n_threads;    /* the team size the calls ran with */
    double wall_s;    /* seconds inside the parallel region */
    double barrier_s; /* thread-seconds spent waiting at barriers, summed over threads */
};
void gpo_ctx_stats(const gpo_ctx *ctx, struct gpo_ctx_stats *out);
void gpo_ctx_stats_reset(gpo_ctx *ctx);

#endif
