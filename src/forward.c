/* forward.c - the transformer forward pass over a token batch, read top to bottom
 * like the spec (section 2): embed -> per layer (rmsnorm, qkv, rope, attention with
 * sinks and sliding window, out-proj, residual; rmsnorm, router top-k, experts,
 * residual) -> final norm -> unembedding.  All tuning lives in the kernels; this
 * file only schedules them over threads (one OpenMP team for the whole pass). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "kvcache.h"
#include "model.h"
#include "util.h"

/* Attention processes keys in chunks aligned to absolute key positions, so the
 * online-softmax rescaling points do not depend on how tokens were batched. */
#define ATTN_CHUNK 64

/* The MoE work items: blocks of MOE_UP_BLOCK units of one expert's first projection
 * (its gate and linear rows, so the SwiGLU of those units follows at once; a whole
 * int8 block of its output), blocks of MOE_DOWN_BLOCK rows of its down projection.
 * A thread's up projection scratch holds all 2*n_ff rows for MOE_SCRATCH_TOKENS
 * tokens: an expert with more tokens is computed in chunks of units.  Few large
 * kernel calls matter: 128-unit chunks cost 10-25% of a 16-token prefill. */
#define MOE_UP_BLOCK 32
#define MOE_DOWN_BLOCK 32
#define MOE_SCRATCH_TOKENS 64

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

void gpo_rope_inv_freq(const struct gpo_config *c, float *inv_freq, float *concentration) {
    const int64_t half = c->head_dim / 2;
    const double base = c->rope_theta, s = c->rope_factor, two_pi = 2.0 * M_PI;
    if (s > 1.0) {
        /* YaRN (spec 2.5): blend extrapolated and interpolated frequencies with a ramp
         * between the unrounded correction bounds low and high. */
        double low = (double)half * log((double)c->rope_orig_ctx / (c->rope_beta_fast * two_pi)) / log(base);
        double high = (double)half * log((double)c->rope_orig_ctx / (c->rope_beta_slow * two_pi)) / log(base);
        for (int64_t j = 0; j < half; j++) {
            double freq = pow(base, (double)(2 * j) / (double)c->head_dim);
            double ramp = ((double)j - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            inv_freq[j] = (float)((1.0 - ramp) / freq + ramp / (s * freq));
        }
        *concentration = (float)(0.1 * log(s) + 1.0);
    } else {
        for (int64_t j = 0; j < half; j++)
            inv_freq[j] = (float)(1.0 / pow(base, (double)(2 * j) / (double)c->head_dim));
        *concentration = 1.0f;
    }
}

void gpo_rope_apply(float *u, int64_t n_heads, int64_t head_dim, const float *cosv,
                    const float *sinv) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *x = u + h * head_dim;
        for (int64_t j = 0; j < half; j++) {
            float a = x[j], b = x[j + half];
            x[j] = a * cosv[j] - b * sinv[j];
            x[j + half] = b * cosv[j] + a * sinv[j];
        }
    }
}

void gpo_rmsnorm(float *out, const float *x, const struct gpo_tview *scale, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * gpo_tview_get(scale, i);
}

/* Router order: a larger logit first, equal logits by lower index (like the Metal
 * reference), so the choice never depends on how the selection runs. */
static inline int topk_better(const float *l, int32_t a, int32_t b) {
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

/* Restore the heap h[0..n) below i; h[0] is the worst index kept. */
static void topk_down(const float *l, int32_t *h, int64_t n, int64_t i) {
    for (;;) {
        int64_t c = 2 * i + 1, w = i;
        if (c < n && topk_better(l, h[w], h[c])) w = c;
        if (c + 1 < n && topk_better(l, h[w], h[c + 1])) w = c + 1;
        if (w == i) return;
        int32_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

void gpo_topk_softmax(const float *logits, int64_t n, int64_t k, int32_t *idx, float *w) {
    /* A k-element heap over the n logits (O(n log k)), then a heap sort of the
     * kept ones into descending order. */
    if (k > n) k = n;
    if (k <= 0) return;
    for (int64_t e = 0; e < k; e++) idx[e] = (int32_t)e;
    for (int64_t j = k / 2; j-- > 0;) topk_down(logits, idx, k, j);
    for (int64_t e = k; e < n; e++)
        if (topk_better(logits, (int32_t)e, idx[0])) {
            idx[0] = (int32_t)e;
            topk_down(logits, idx, k, 0);
        }
    for (int64_t m = k - 1; m > 0; m--) {
        int32_t t = idx[0];
        idx[0] = idx[m];
        idx[m] = t;
        topk_down(logits, idx, m, 0);
    }
    float mx = logits[idx[0]], sum = 0.0f;
    for (int64_t i = 0; i < k; i++) {
        w[i] = expf(logits[idx[i]] - mx);
        sum += w[i];
    }
    for (int64_t i = 0; i < k; i++) w[i] /= sum;
}

void gpo_swiglu_pairs(float *out, const float *gate, const float *lin, int64_t step,
                      int64_t n_ff, float alpha, float limit) {
    for (int64_t u = 0; u < n_ff; u++) {
        float xg = gate[u * step], xl = lin[u * step];
        xg = fminf(xg, limit);
        xl = fminf(fmaxf(xl, -limit), limit);
        out[u] = xg / (1.0f + expf(-alpha * xg)) * (xl + 1.0f);
    }
}

void gpo_swiglu(float *out, const float *h, int64_t n_ff, float alpha, float limit) {
    gpo_swiglu_pairs(out, h, h + 1, 2, n_ff, alpha, limit);
}

int64_t gpo_attn_first_key(const struct gpo_config *c, int64_t layer, int64_t p) {
    return c->layer_sliding[layer] ? max_i64(0, p - c->sliding_window + 1) : 0;
}

void gpo_attention_head_ref(float *out, const float *q, const float *k, const float *v,
                            int64_t n_keys, int64_t ld, int64_t head_dim, float sink) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    double mx = sink;
    for (int64_t j = 0; j < n_keys; j++) {
        double sc = 0.0;
        for (int64_t d = 0; d < head_dim; d++) sc += (double)q[d] * k[j * ld + d];
        if (sc * scale > mx) mx = sc * scale;
    }
    double den = exp(sink - mx);
    for (int64_t d = 0; d < head_dim; d++) out[d] = 0.0f;
    double acc[1024] = {0};
    for (int64_t j = 0; j < n_keys; j++) {
        double sc = 0.0;
        for (int64_t d = 0; d < head_dim; d++) sc += (double)q[d] * k[j * ld + d];
        double p = exp(sc * scale - mx);
        den += p;
        for (int64_t d = 0; d < head_dim && d < 1024; d++) acc[d] += p * v[j * ld + d];
    }
    for (int64_t d = 0; d < head_dim && d < 1024; d++) out[d] = (float)(acc[d] / den);
}

/* ------------------------------------------------------------------------- */
/* Context                                                                   */

/* One thread's barrier counters, a cache line of its own. */
struct thr_stat {
    double wait; /* seconds waiting in barriers */
    int64_t n;   /* barriers crossed */
    double end;  /* when it reached the end of the parallel region */
    char pad[64 - 3 * 8];
};

struct gpo_ctx {
    const struct gpo_model *m;
    const struct gpo_kernels *k;
    struct gpo_kernels ktab; /* the chosen table, gaps filled from the reference */
    enum gpo_path path;
    int n_threads;
    int64_t max_tokens, max_seqs;
    volatile sig_atomic_t *abort_flag;
    gpo_trace_fn trace;
    void *trace_user;
    float *inv_freq;
    float concentration;

    /* per token of the batch */
    int32_t *tok_id;
    int64_t *tok_pos;
    int32_t *tok_seq;
    float *x;     /* [T][H] residual */
    float *t;     /* [T][H] normed */
    float *q;     /* [T][QD] */
    float *kb;    /* [n_layer][T][KVD] new keys of this batch, committed at the end */
    float *vb;    /* [n_layer][T][KVD] */
    float *att;   /* [T][QD] */
    float *o;     /* [T][H] */
    float *rl;    /* [T][E] router logits */
    int32_t *sel; /* [T][K] */
    float *selw;  /* [T][K] */
    float *y;     /* [T][H] MoE output */
    float *cs;    /* [T][D/2] cos, then [T][D/2] sin */
    /* Experts.  A slot is one (expert, token) pair of the batch; slots are ordered
     * by expert, then token, so each expert's tokens are a contiguous run of them. */
    struct gpo_q16_block *tq; /* [T][H/32] quantised expert inputs (fast path) */
    float *act;               /* [T*K][F] SwiGLU outputs per slot (exact path) */
    struct gpo_q8_block *xq;  /* [T*K][F/32] the same quantised (fast path) */
    float *z;                 /* [T*K][H] down projection outputs per slot, bias added */
    /* per thread: every thread groups the batch by expert itself (the same result
     * for all), which saves the barrier a shared grouping would need */
    int64_t *g_off;  /* [n_threads][2*(E+1)] first slot of each expert, then cursors */
    int32_t *g_tok;  /* [n_threads][T*K] token of each slot */
    int32_t *g_slot; /* [n_threads][T*K] slot of token i's j-th expert */
    int64_t *g_run;  /* [n_threads][3*E] the thread's runs of a sweep (moe_runs) */
    float *xg;       /* [n_threads][T*H] one expert's inputs gathered (f32 or q16 rows) */
    float *hs;       /* [n_threads][hs_cap] up projection outputs of one chunk */
    float *as;       /* [n_threads][F] one token's SwiGLU outputs (fast path) */
    int64_t hs_cap;  /* floats: 2F units x MOE_SCRATCH_TOKENS, at least 2 x 32 x T */
    /* output selection */
    int64_t *out_tok;  /* [T] tokens whose logits are wanted */
    int64_t *out_idx;  /* [T] each token's row of logits, or -1 */
    /* attention scratch per thread */
    float *ascratch;   /* [n_threads][ATTN_CHUNK + head_dim] */
    /* scheduling counters */
    struct thr_stat *tstat; /* [n_threads] */
    struct gpo_ctx_stats stats;
};

static void *xalloc(size_t n, int *fail) {
    void *p = gpo_aligned_alloc(n);
    if (!p) *fail = 1;
    else memset(p, 0, n);
    return p;
}

enum gpo_status gpo_ctx_create(const gpo_model *m, const struct gpo_ctx_opts *opts, gpo_ctx **out) {
    const struct gpo_config *c = gpo_model_config(m);
    struct gpo_ctx_opts o = opts ? *opts : (struct gpo_ctx_opts){0};
    *out = NULL;
    if (o.max_tokens <= 0) o.max_tokens = 512;
    if (o.max_seqs <= 0) o.max_seqs = 64;
    if (o.max_tokens > (1 << 20) || o.max_seqs > (1 << 20))
        return gpo_fail(GPO_ERR_ARG, "max_tokens/max_seqs too large");
    if (o.n_threads <= 0) o.n_threads = omp_get_num_procs();
    /* The expert loop trusts the layer views: check them once here. */
    for (int64_t l = 0; l < c->n_layer; l++)
        GPO_TRY(gpo_layer_check_experts(&m->layers[l], l, c));
    struct gpo_ctx *x = calloc(1, sizeof *x);
    if (!x) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    x->m = m;
    x->path = o.path;
    x->n_threads = o.n_threads;
    x->stats.n_threads = o.n_threads;
    x->max_tokens = o.max_tokens;
    x->max_seqs = o.max_seqs;
    const struct gpo_kernels *sel =
        o.path == GPO_PATH_REF ? gpo_kernels_ref() : gpo_kernels_select(getenv("GPTOSS_KERNELS"));
    if (!sel) sel = gpo_kernels_select(NULL);
    /* A SIMD table may leave an operation to the reference. */
    x->ktab = *sel;
    gpo_kernels_complete(&x->ktab);
    x->k = &x->ktab;

    const size_t T = (size_t)o.max_tokens, H = (size_t)c->n_embd, E = (size_t)c->n_expert,
                 K = (size_t)c->n_expert_used, F = (size_t)c->n_ff, D = (size_t)c->head_dim,
                 QD = (size_t)(c->n_head * c->head_dim), KVD = (size_t)(c->n_head_kv * c->head_dim),
                 NL = (size_t)c->n_layer;
    int fail = 0;
    x->inv_freq = xalloc(D / 2 * 4, &fail);
    x->tok_id = xalloc(T * 4, &fail);
    x->tok_pos = xalloc(T * 8, &fail);
    x->tok_seq = xalloc(T * 4, &fail);
    x->x = xalloc(T * H * 4, &fail);
    x->t = xalloc(T * H * 4, &fail);
    x->q = xalloc(T * QD * 4, &fail);
    x->kb = xalloc(NL * T * KVD * 4, &fail);
    x->vb = xalloc(NL * T * KVD * 4, &fail);
    x->att = xalloc(T * QD * 4, &fail);
    x->o = xalloc(T * H * 4, &fail);
    x->rl = xalloc(T * E * 4, &fail);
    x->sel = xalloc(T * K * 4, &fail);
    x->selw = xalloc(T * K * 4, &fail);
    x->y = xalloc(T * H * 4, &fail);
    x->cs = xalloc(T * D * 4, &fail);
    const size_t NT = (size_t)o.n_threads;
    if (o.path == GPO_PATH_FAST) {
        x->tq = xalloc(T * (H / 32) * sizeof(struct gpo_q16_block), &fail);
        x->xq = xalloc(T * K * (F / 32) * sizeof(struct gpo_q8_block), &fail);
    } else {
        x->act = xalloc(T * K * F * 4, &fail);
    }
    x->z = xalloc(T * K * H * 4, &fail);
    x->g_off = xalloc(NT * 2 * (E + 1) * 8, &fail);
    x->g_tok = xalloc(NT * T * K * 4, &fail);
    x->g_slot = xalloc(NT * T * K * 4, &fail);
    x->g_run = xalloc(NT * 3 * E * 8, &fail);
    x->xg = xalloc(NT * T * H * 4, &fail); /* f32 rows; q16 rows take 68/128 of that */
    x->hs_cap = (int64_t)(2 * F * (T < MOE_SCRATCH_TOKENS ? T : MOE_SCRATCH_TOKENS));
    if (x->hs_cap < (int64_t)(2 * MOE_UP_BLOCK * T)) x->hs_cap = (int64_t)(2 * MOE_UP_BLOCK * T);
    x->hs = xalloc(NT * (size_t)x->hs_cap * 4, &fail);
    x->as = xalloc(NT * F * 4, &fail);
    x->out_tok = xalloc(T * 8, &fail);
    x->out_idx = xalloc(T * 8, &fail);
    x->ascratch = xalloc((size_t)o.n_threads * (ATTN_CHUNK + D) * 4, &fail);
    x->tstat = xalloc((size_t)o.n_threads * sizeof *x->tstat, &fail);
    if (fail) {
        gpo_ctx_free(x);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate forward buffers for %zu tokens", T);
    }
    gpo_rope_inv_freq(c, x->inv_freq, &x->concentration);
    *out = x;
    return GPO_OK;
}

void gpo_ctx_free(gpo_ctx *x) {
    if (!x) return;
    void *bufs[] = {x->inv_freq, x->tok_id, x->tok_pos, x->tok_seq, x->x,     x->t,
                    x->q,        x->kb,     x->vb,      x->att,     x->o,     x->rl,
                    x->sel,      x->selw,   x->y,       x->cs,      x->tq,    x->act,
                    x->xq,       x->z,      x->g_off,   x->g_tok,   x->g_slot, x->xg,
                    x->hs,       x->as,     x->out_tok, x->out_idx, x->ascratch, x->tstat,
                    x->g_run};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gpo_aligned_free(bufs[i]);
    free(x);
}

void gpo_ctx_set_abort(gpo_ctx *ctx, volatile sig_atomic_t *flag) { ctx->abort_flag = flag; }
void gpo_ctx_set_trace(gpo_ctx *ctx, gpo_trace_fn fn, void *user) {
    ctx->trace = fn;
    ctx->trace_user = user;
}
const char *gpo_ctx_kernels(const gpo_ctx *ctx) { return ctx->k->name; }
int gpo_ctx_threads(const gpo_ctx *ctx) { return ctx->n_threads; }

void gpo_ctx_stats(const gpo_ctx *ctx, struct gpo_ctx_stats *out) { *out = ctx->stats; }
void gpo_ctx_stats_reset(gpo_ctx *ctx) {
    ctx->stats = (struct gpo_ctx_stats){.n_threads = ctx->n_threads};
}

/* ------------------------------------------------------------------------- */
/* Work splitting inside the parallel region                                 */

/* This thread's share [r0, r1) of n rows, in multiples of 8 rows so SIMD kernels
 * work on whole tiles. */
static void my_rows(int64_t n, int64_t *r0, int64_t *r1) {
    int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t chunk = (n + nth - 1) / nth;
    chunk = (chunk + 7) & ~(int64_t)7;
    *r0 = min_i64(n, (int64_t)tid * chunk);
    *r1 = min_i64(n, *r0 + chunk);
}

/* This thread's share [i0, i1) of n items (tokens, heads), contiguous. */
static void my_share(int64_t n, int64_t *i0, int64_t *i1) {
    int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t chunk = (n + nth - 1) / nth;
    *i0 = min_i64(n, (int64_t)tid * chunk);
    *i1 = min_i64(n, *i0 + chunk);
}

/* A team barrier that counts itself and the time this thread waits at it. */
static void tbar(struct thr_stat *ts) {
    double t0 = omp_get_wtime();
#pragma omp barrier
    ts->wait += omp_get_wtime() - t0;
    ts->n++;
}

/* y[t][r] = W x[t] (+ bias) for all rows, split over the team; ends with a barrier. */
static void par_matmul(struct thr_stat *ts, const struct gpo_kernels *k, float *y, int64_t ldy,
                       const struct gpo_tview *W, const struct gpo_tview *bias, const float *x,
                       int64_t ldx, int64_t n_tok) {
    int64_t r0, r1;
    my_rows(W->rows, &r0, &r1);
    if (r1 > r0) {
        k->matmul[W->dtype](y, ldy, W->data, x, ldx, n_tok, r0, r1, W->cols);
        if (bias)
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = r0; r < r1; r++) y[t * ldy + r] += gpo_tview_get(bias, r);
    }
    tbar(ts);
}

/* ------------------------------------------------------------------------- */
/* Experts                                                                   */

/* The activations of an expert matmul: f32 rows (the exact path), or int16 or int8
 * blocks (the fast path); exactly one of f, q16, q8 is set.  Row t is at + t*ld. */
struct xin {
    const float *f;
    const struct gpo_q16_block *q16;
    const struct gpo_q8_block *q8;
    int64_t ld;
};

/* Rows [r0, r1) of expert e of w times n_tok activations into y[t*ldy + r].  The
 * storage layout is chosen here, once per call; the kernels of both layouts give
 * the same bits on the same logical weights. */
static void expert_matmul(const struct gpo_kernels *k, const struct gpo_xmat *w, int64_t e,
                          float *y, int64_t ldy, const struct xin *in, int64_t n_tok, int64_t r0,
                          int64_t r1) {
    const uint8_t *b = w->blocks + (size_t)e * w->blocks_stride;
    if (w->layout == GPO_MXFP4_GGML) {
        if (in->q16)
            k->matmul_mxfp4_ggml_q16(y, ldy, b, in->q16, in->ld, n_tok, r0, r1, w->cols);
        else if (in->q8)
            k->matmul_mxfp4_ggml_q8(y, ldy, b, in->q8, in->ld, n_tok, r0, r1, w->cols);
        else
            k->matmul_mxfp4_ggml(y, ldy, b, in->f, in->ld, n_tok, r0, r1, w->cols);
        return;
    }
    const uint8_t *s = w->scales + (size_t)e * w->scales_stride;
    if (in->q16)
        k->matmul_mxfp4_q16(y, ldy, b, s, in->q16, in->ld, n_tok, r0, r1, w->cols);
    else if (in->q8)
        k->matmul_mxfp4_q8(y, ldy, b, s, in->q8, in->ld, n_tok, r0, r1, w->cols);
    else
        k->matmul_mxfp4(y, ldy, b, s, in->f, in->ld, n_tok, r0, r1, w->cols);
}

/* Rows [r0, r1) of expert e of w, bias added, for n_tok tokens into
 * y[t*ldy + (r - r0)]: the kernel sees the matrix from row r0 on, so y holds just
 * these rows.  Each row's bits are those of the whole-matrix call (the kernels'
 * contract: a row's value never depends on the rows computed with it). */
static void expert_rows(const struct gpo_kernels *k, const struct gpo_xmat *w, int64_t e,
                        int64_t r0, int64_t r1, float *y, int64_t ldy, const struct xin *in,
                        int64_t n_tok) {
    struct gpo_xmat v = *w;
    const int64_t nb = w->cols / 32;
    v.blocks += (size_t)r0 * (size_t)nb * (w->layout == GPO_MXFP4_GGML ? GPO_MXFP4_GGML_BLOCK_BYTES : 16);
    if (w->layout != GPO_MXFP4_GGML) v.scales += (size_t)r0 * (size_t)nb;
    expert_matmul(k, &v, e, y, ldy, in, n_tok, 0, r1 - r0);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++)
            y[t * ldy + (r - r0)] += gpo_tview_get(&w->bias, e * w->bias_stride + r);
}

/* Group the batch by expert: off[e] is expert e's first slot (off[E] = n_tok*K),
 * tok[s] the token of slot s, slot[i*K + j] the slot of token i's j-th expert.  A
 * counting sort that keeps token order, so every expert sees its tokens ascending. */
static void group_experts(const int32_t *sel, int64_t n_tok, int64_t K, int64_t E, int64_t *off,
                          int32_t *tok, int32_t *slot) {
    int64_t *cur = off + E + 1;
    memset(off, 0, (size_t)(E + 1) * sizeof *off);
    for (int64_t i = 0; i < n_tok * K; i++) off[sel[i] + 1]++;
    for (int64_t e = 0; e < E; e++) off[e + 1] += off[e];
    memcpy(cur, off, (size_t)E * sizeof *off);
    for (int64_t i = 0; i < n_tok * K; i++) {
        int64_t s = cur[sel[i]]++;
        tok[s] = (int32_t)(i / K);
        slot[i] = (int32_t)s;
    }
}

static int64_t ceil_div(int64_t a, int64_t d) { return a >= 0 ? (a + d - 1) / d : -(-a / d); }

/* One thread's items of a MoE sweep.  The items, in their fixed order, are the
 * blocks of `blk` of the n units (or rows) of every expert that has tokens, in
 * ascending expert order; an item weighs its units x the expert's tokens.  Thread
 * tid of nth takes the items whose starting weight p (the weight of the items before
 * it) has p * nth / W == tid, W the total: a contiguous stretch of the list, so
 * each thread gets one run [a, b) of units of at most every expert; *run_e[i],
 * a[i], b[i] list them (at most E).  The result bits do not depend on who computes
 * an item: each output element is one kernel call's on its own row. */
static int64_t moe_runs(const int64_t *off, int64_t E, int64_t n, int64_t blk, int tid, int nth,
                        int64_t *run_e, int64_t *run_a, int64_t *run_b) {
    const int64_t W = off[E] * n, lo = (int64_t)tid * W, hi = (int64_t)(tid + 1) * W;
    const int64_t nblk = (n + blk - 1) / blk;
    int64_t cnt = 0;
    for (int64_t e = 0; e < E; e++) {
        const int64_t ne = off[e + 1] - off[e], base = off[e] * n * nth;
        if (ne == 0) continue;
        /* block b starts at weight off[e]*n + ne*b*blk */
        const int64_t step = ne * blk * nth;
        int64_t b0 = ceil_div(lo - base, step), b1 = ceil_div(hi - base, step);
        b0 = min_i64(max_i64(b0, 0), nblk);
        b1 = min_i64(max_i64(b1, 0), nblk);
        if (b1 <= b0) continue;
        run_e[cnt] = e;
        run_a[cnt] = b0 * blk;
        run_b[cnt] = min_i64(n, b1 * blk);
        cnt++;
    }
    return cnt;
}

/* ------------------------------------------------------------------------- */
/* Attention                                                                 */

struct seq_info {
    const struct gpo_kv *kv;
    int64_t p0;   /* cache length before this batch */
    int64_t base; /* index of the sequence's first token in the batch */
};

/* The key/value rows of absolute position j for layer l: from this batch when
 * j >= p0, else from the cache.  *run is how many following positions are
 * contiguous in memory (stride kvd). */
static void kv_at(const struct gpo_ctx *x, const struct seq_info *si, int64_t l, int64_t j,
                  int64_t T, int64_t kvd, const float **kp, const float **vp, int64_t *run) {
    if (j >= si->p0) {
        int64_t row = si->base + (j - si->p0);
        *kp = x->kb + ((size_t)l * T + row) * kvd;
        *vp = x->vb + ((size_t)l * T + row) * kvd;
        *run = INT64_MAX;
    } else {
        float *k, *v;
        *run = min_i64(gpo_kv_row(si->kv, l, j, &k, &v), si->p0 - j);
        *kp = k;
        *vp = v;
    }
}

/* One query head of one token: online softmax over keys lo..p with the sink as an
 * extra logit in the denominator only (spec 2.6). */
static void attend_one(const struct gpo_ctx *x, const struct seq_info *si, int64_t l, int64_t p,
                       const float *q, int64_t g, float sink, float *out, float *scratch) {
    const struct gpo_config *c = &x->m->cfg;
    const int64_t D = c->head_dim, kvd = c->n_head_kv * D, T = x->max_tokens;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t lo = gpo_attn_first_key(c, l, p);
    float *s = scratch, *acc = scratch + ATTN_CHUNK;
    float mx = sink, sum = 1.0f;
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t c0 = lo; c0 <= p;) {
        int64_t c1 = min_i64(p + 1, (c0 / ATTN_CHUNK + 1) * ATTN_CHUNK);
        /* scores of the chunk, in contiguous runs */
        for (int64_t j = c0; j < c1;) {
            const float *kp, *vp;
            int64_t run;
            kv_at(x, si, l, j, T, kvd, &kp, &vp, &run);
            int64_t n = min_i64(run, c1 - j);
            x->k->attn_scores(s + (j - c0), q, kp + g * D, kvd, n, D, scale);
            j += n;
        }
        float cmax = mx;
        for (int64_t j = 0; j < c1 - c0; j++) cmax = fmaxf(cmax, s[j]);
        if (cmax > mx) {
            float r = expf(mx - cmax);
            sum *= r;
            for (int64_t d = 0; d < D; d++) acc[d] *= r;
            mx = cmax;
        }
        for (int64_t j = 0; j < c1 - c0; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        for (int64_t j = c0; j < c1;) {
            const float *kp, *vp;
            int64_t run;
            kv_at(x, si, l, j, T, kvd, &kp, &vp, &run);
            int64_t n = min_i64(run, c1 - j);
            x->k->attn_accum(acc, s + (j - c0), vp + g * D, kvd, n, D);
            j += n;
        }
        c0 = c1;
    }
    for (int64_t d = 0; d < D; d++) out[d] = acc[d] / sum;
}

/* ------------------------------------------------------------------------- */
/* The pass                                                                  */

static void trace(const struct gpo_ctx *x, enum gpo_trace_point pt, int64_t l, int64_t tok,
                  const void *data, int64_t n) {
    if (x->trace) x->trace(x->trace_user, pt, l, tok, data, n);
}

enum gpo_status gpo_forward(gpo_ctx *x, const struct gpo_seq_batch *seqs, int64_t n_seqs,
                            float *logits) {
    const struct gpo_model *m = x->m;
    const struct gpo_config *c = &m->cfg;
    const int64_t H = c->n_embd, D = c->head_dim, QD = c->n_head * D, KVD = c->n_head_kv * D,
                  E = c->n_expert, K = c->n_expert_used, F = c->n_ff, V = c->n_vocab,
                  T = x->max_tokens, G = c->n_head / c->n_head_kv, half = D / 2;
    const struct gpo_kernels *k = x->k;
    struct seq_info si_buf[64], *si = si_buf;

    if (n_seqs < 0 || (n_seqs > 0 && !seqs)) return gpo_fail(GPO_ERR_ARG, "gpo_forward: bad sequence list");
    if (n_seqs > x->max_seqs)
        return gpo_fail(GPO_ERR_ARG, "%lld sequences in one batch; the context allows %lld",
                        (long long)n_seqs, (long long)x->max_seqs);
    if (n_seqs > 64) {
        si = malloc((size_t)n_seqs * sizeof *si);
        if (!si) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    }
    /* Validate the whole batch before touching any cache. */
    int64_t n_tok = 0, n_out = 0;
    enum gpo_status st = GPO_OK;
    for (int64_t s = 0; s < n_seqs; s++) {
        const struct gpo_seq_batch *b = &seqs[s];
        if (!b->kv || b->n_tokens < 0 || (b->n_tokens > 0 && !b->tokens)) {
            st = gpo_fail(GPO_ERR_ARG, "sequence %lld of the batch is malformed", (long long)s);
            goto done;
        }
        for (int64_t r = 0; r < s; r++)
            if (seqs[r].kv == b->kv) {
                st = gpo_fail(GPO_ERR_ARG, "sequences %lld and %lld of the batch share a KV cache",
                              (long long)r, (long long)s);
                goto done;
            }
        if (b->kv->n_layer != c->n_layer || b->kv->kv_dim != KVD) {
            st = gpo_fail(GPO_ERR_ARG, "sequence %lld: KV cache was made for another model", (long long)s);
            goto done;
        }
        if (b->kv->len + b->n_tokens > b->kv->max_seq) {
            st = gpo_fail(GPO_ERR_CONTEXT,
                          "sequence %lld would reach %lld tokens but its KV cache holds %lld (max_seq_len)",
                          (long long)s, (long long)(b->kv->len + b->n_tokens), (long long)b->kv->max_seq);
            goto done;
        }
        if (b->kv->len + b->n_tokens > gpo_kv_room(b->kv)) {
            st = gpo_fail(GPO_ERR_ARG,
                          "sequence %lld would reach %lld tokens but its KV blocks hold %lld "
                          "(reserve them first)",
                          (long long)s, (long long)(b->kv->len + b->n_tokens),
                          (long long)gpo_kv_room(b->kv));
            goto done;
        }
        for (int64_t i = 0; i < b->n_tokens; i++)
            if (b->tokens[i] < 0 || b->tokens[i] >= V) {
                st = gpo_fail(GPO_ERR_TOKEN, "token id %d at index %lld of sequence %lld is outside the vocabulary of %lld",
                              b->tokens[i], (long long)i, (long long)s, (long long)V);
                goto done;
            }
        n_tok += b->n_tokens;
        if (n_tok > T) {
            st = gpo_fail(GPO_ERR_ARG, "batch of more than %lld tokens (the context's max_tokens)",
                          (long long)T);
            goto done;
        }
        si[s] = (struct seq_info){.kv = b->kv, .p0 = b->kv->len, .base = n_tok - b->n_tokens};
        for (int64_t i = 0; i < b->n_tokens; i++) {
            int64_t ti = si[s].base + i;
            x->tok_id[ti] = b->tokens[i];
            x->tok_pos[ti] = si[s].p0 + i;
            x->tok_seq[ti] = (int32_t)s;
            x->out_idx[ti] = -1;
            if (b->logits == GPO_LOGITS_ALL || (b->logits == GPO_LOGITS_LAST && i == b->n_tokens - 1)) {
                x->out_idx[ti] = n_out;
                x->out_tok[n_out++] = ti;
            }
        }
    }
    if (n_out > 0 && !logits) {
        st = gpo_fail(GPO_ERR_ARG, "logits requested but no output buffer given");
        goto done;
    }
    if (n_tok == 0) goto done;

    volatile int aborted = 0;
    /* The fast path feeds the experts integer activations: the up projection's
     * input as int16 blocks (nearly exact), the down projection's input (the
     * SwiGLU output) as int8 blocks.  int8 for the up projection's input too
     * measured worse than OpenAI's bf16 run on the tiny-a fixture. */
    const int fast = x->path == GPO_PATH_FAST;

    /* The schedule: one team for the whole pass, and per layer seven sweeps, each
     * ended by one barrier (the only synchronisation):
     *   1. q, k and v projections as one list of heads, RoPE by the thread that made
     *      the head;
     *   2. attention, per (token, head);
     *   3. the output projection;
     *   4. per token: residual, norm, router logits, top-k;
     *   5. MoE up: items (expert, block of units) of every selected expert, the
     *      SwiGLU of each block right after its gate and linear rows;
     *   6. MoE down: items (expert, block of rows), per-slot outputs;
     *   7. per token: the weighted sum over its experts in ascending expert order,
     *      the residual, and the next layer's attention norm (after the last layer
     *      the final norm of the rows whose logits are wanted).
     * Before the layers one sweep embeds (and norms for layer 0); after them the
     * unembedding ends with the region.  So a call crosses 7 * n_layer + 2 barriers
     * whatever its batch.  Every output element is computed by one thread, by one
     * kernel call on its own row, and sums run in a fixed order, so the bits do not
     * depend on the thread count or on the batch (the kernels' contract). */
    for (int i = 0; i < x->n_threads; i++) x->tstat[i] = (struct thr_stat){0};
    int team = 1;
    const double t_start = omp_get_wtime();
#pragma omp parallel num_threads(x->n_threads)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t r0, r1, i0, i1;
        float *ascr = x->ascratch + (size_t)tid * (ATTN_CHUNK + D);
        struct thr_stat *ts = &x->tstat[tid];
        int64_t *g_off = x->g_off + (size_t)tid * 2 * (E + 1);
        int32_t *g_tok = x->g_tok + (size_t)tid * T * K, *g_slot = x->g_slot + (size_t)tid * T * K;
        int64_t *run_e = x->g_run + (size_t)tid * 3 * E, *run_a = run_e + E, *run_b = run_a + E;
        float *xg = x->xg + (size_t)tid * T * H;
        float *hs = x->hs + (size_t)tid * x->hs_cap;
        float *as = x->as + (size_t)tid * F;
        if (tid == 0) team = nth;

        /* Embedding, RoPE tables, layer 0's attention norm. */
        my_share(n_tok, &i0, &i1);
        for (int64_t i = i0; i < i1; i++) {
            gpo_to_f32(x->x + i * H, (const uint8_t *)m->embedding.data +
                                         (size_t)x->tok_id[i] * gpo_tview_row_bytes(&m->embedding),
                       m->embedding.dtype, H);
            float *cv = x->cs + i * D, *sv = cv + half;
            for (int64_t j = 0; j < half; j++) {
                float th = (float)x->tok_pos[i] * x->inv_freq[j];
                cv[j] = cosf(th) * x->concentration;
                sv[j] = sinf(th) * x->concentration;
            }
            if (c->n_layer > 0)
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &m->layers[0].attn_norm, H, c->rms_eps);
            else if (x->out_idx[i] >= 0)
                gpo_rmsnorm(x->t + x->out_idx[i] * H, x->x + i * H, &m->final_norm, H, c->rms_eps);
        }
        tbar(ts);
        /* Traces read what the sweeps after them no longer write. */
        if (tid == 0 && x->trace)
            for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_EMBED, -1, i, x->x + i * H, H);

        for (int64_t l = 0; l < c->n_layer && !aborted; l++) {
            const struct gpo_layer *L = &m->layers[l];
            float *kbl = x->kb + (size_t)l * T * KVD, *vbl = x->vb + (size_t)l * T * KVD;

            /* 1. q, k, v: the heads of the three projections as one list, a share of
             * whole heads per thread, so the thread that made a head ropes it. */
            {
                const struct {
                    const struct gpo_tview *w, *b;
                    float *y;
                    int64_t ld, n_heads;
                    int rope;
                } mats[3] = {{&L->wq, &L->bq, x->q, QD, c->n_head, 1},
                             {&L->wk, &L->bk, kbl, KVD, c->n_head_kv, 1},
                             {&L->wv, &L->bv, vbl, KVD, c->n_head_kv, 0}};
                int64_t h0, h1, base = 0;
                my_share(c->n_head + 2 * c->n_head_kv, &h0, &h1);
                for (int mi = 0; mi < 3; base += mats[mi].n_heads, mi++) {
                    const int64_t a = max_i64(h0, base) - base,
                                  b = min_i64(h1, base + mats[mi].n_heads) - base;
                    if (b <= a) continue;
                    const struct gpo_tview *W = mats[mi].w;
                    float *y = mats[mi].y;
                    const int64_t ld = mats[mi].ld;
                    k->matmul[W->dtype](y, ld, W->data, x->t, H, n_tok, a * D, b * D, W->cols);
                    for (int64_t i = 0; i < n_tok; i++) {
                        for (int64_t r = a * D; r < b * D; r++)
                            y[i * ld + r] += gpo_tview_get(mats[mi].b, r);
                        if (mats[mi].rope) {
                            const float *cv = x->cs + i * D;
                            gpo_rope_apply(y + i * ld + a * D, b - a, D, cv, cv + half);
                        }
                    }
                }
            }
            tbar(ts);

            /* 2. Attention. */
#pragma omp for schedule(static) collapse(2) nowait
            for (int64_t i = 0; i < n_tok; i++)
                for (int64_t h = 0; h < c->n_head; h++)
                    attend_one(x, &si[x->tok_seq[i]], l, x->tok_pos[i], x->q + i * QD + h * D, h / G,
                               gpo_tview_get(&L->sinks, h), x->att + i * QD + h * D, ascr);
            tbar(ts);

            /* 3. Output projection. */
            par_matmul(ts, k, x->o, H, &L->wo, &L->bo, x->att, QD, n_tok);

            /* 4. Per token: residual, norm, router logits and top-k (softmax over the
             * k selected).  The router runs on this thread's tokens at once. */
            my_share(n_tok, &i0, &i1);
            for (int64_t i = i0; i < i1; i++) {
                for (int64_t d = 0; d < H; d++) x->x[i * H + d] += x->o[i * H + d];
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &L->mlp_norm, H, c->rms_eps);
                if (fast) k->quantize_q16(x->tq + i * (H / 32), x->t + i * H, H);
            }
            if (i1 > i0) {
                const struct gpo_tview *W = &L->router_w;
                k->matmul[W->dtype](x->rl + i0 * E, E, W->data, x->t + i0 * H, H, i1 - i0, 0, E,
                                    W->cols);
                for (int64_t i = i0; i < i1; i++) {
                    for (int64_t r = 0; r < E; r++) x->rl[i * E + r] += gpo_tview_get(&L->router_b, r);
                    gpo_topk_softmax(x->rl + i * E, E, K, x->sel + i * K, x->selw + i * K);
                }
            }
            tbar(ts);
            if (tid == 0 && x->trace)
                for (int64_t i = 0; i < n_tok; i++) {
                    trace(x, GPO_TRACE_ATTN_RESIDUAL, l, i, x->x + i * H, H);
                    trace(x, GPO_TRACE_ROUTER_LOGITS, l, i, x->rl + i * E, E);
                    trace(x, GPO_TRACE_EXPERTS, l, i, x->sel + i * K, K);
                    trace(x, GPO_TRACE_EXPERT_WEIGHTS, l, i, x->selw + i * K, K);
                }
            group_experts(x->sel, n_tok, K, E, g_off, g_tok, g_slot);

            /* 5. MoE up: this thread's items, one run of units per expert.  Unit u's
             * gate and linear rows are 2u and 2u + 1 of mlp1[0] when the layer
             * interleaves them, else row u of mlp1[0] and of mlp1[1]; either way a
             * chunk of units leaves gate and linear outputs side by side in hs. */
            const int sep = L->gate_up == GPO_GATE_UP_SEPARATE;
            int64_t n_runs = moe_runs(g_off, E, F, MOE_UP_BLOCK, tid, nth, run_e, run_a, run_b);
            for (int64_t ri = 0; ri < n_runs; ri++) {
                const int64_t e = run_e[ri], e0 = g_off[e], ne = g_off[e + 1] - e0;
                /* The expert's inputs: in place when its tokens are consecutive (always
                 * for one token), else gathered into this thread's buffer. */
                int consecutive = 1;
                for (int64_t j = 1; j < ne; j++) consecutive &= g_tok[e0 + j] == g_tok[e0] + j;
                struct xin in;
                if (fast) {
                    struct gpo_q16_block *q = (struct gpo_q16_block *)xg;
                    in = (struct xin){.q16 = x->tq + (size_t)g_tok[e0] * (H / 32), .ld = H / 32};
                    if (!consecutive) {
                        for (int64_t j = 0; j < ne; j++)
                            memcpy(q + j * (H / 32), x->tq + (size_t)g_tok[e0 + j] * (H / 32),
                                   (size_t)(H / 32) * sizeof *q);
                        in.q16 = q;
                    }
                } else {
                    in = (struct xin){.f = x->t + (size_t)g_tok[e0] * H, .ld = H};
                    if (!consecutive) {
                        for (int64_t j = 0; j < ne; j++)
                            memcpy(xg + j * H, x->t + (size_t)g_tok[e0 + j] * H, (size_t)H * 4);
                        in.f = xg;
                    }
                }
                /* as many units per kernel call as the scratch holds for ne tokens */
                const int64_t chunk = x->hs_cap / (2 * ne) / MOE_UP_BLOCK * MOE_UP_BLOCK;
                for (int64_t u0 = run_a[ri]; u0 < run_b[ri]; u0 += chunk) {
                    const int64_t u1 = min_i64(run_b[ri], u0 + chunk), nu = u1 - u0;
                    if (sep) {
                        expert_rows(k, &L->mlp1[0], e, u0, u1, hs, 2 * nu, &in, ne);
                        expert_rows(k, &L->mlp1[1], e, u0, u1, hs + nu, 2 * nu, &in, ne);
                    } else {
                        expert_rows(k, &L->mlp1[0], e, 2 * u0, 2 * u1, hs, 2 * nu, &in, ne);
                    }
                    for (int64_t j = 0; j < ne; j++) {
                        const float *g = hs + j * 2 * nu;
                        float *out = fast ? as : x->act + (size_t)(e0 + j) * F + u0;
                        gpo_swiglu_pairs(out, g, sep ? g + nu : g + 1, sep ? 1 : 2, nu,
                                         c->swiglu_alpha, c->swiglu_limit);
                        if (fast)
                            k->quantize_q8(x->xq + (size_t)(e0 + j) * (F / 32) + u0 / 32, as, nu);
                    }
                }
            }
            tbar(ts);

            /* 6. MoE down: this thread's items into the slots' rows of z. */
            n_runs = moe_runs(g_off, E, H, MOE_DOWN_BLOCK, tid, nth, run_e, run_a, run_b);
            for (int64_t ri = 0; ri < n_runs; ri++) {
                const int64_t e = run_e[ri], e0 = g_off[e], ne = g_off[e + 1] - e0;
                const struct xin in = fast ? (struct xin){.q8 = x->xq + (size_t)e0 * (F / 32), .ld = F / 32}
                                           : (struct xin){.f = x->act + (size_t)e0 * F, .ld = F};
                const struct gpo_xmat *w2 = &L->mlp2;
                float *z = x->z + (size_t)e0 * H;
                expert_matmul(k, w2, e, z, H, &in, ne, run_a[ri], run_b[ri]);
                for (int64_t j = 0; j < ne; j++)
                    for (int64_t r = run_a[ri]; r < run_b[ri]; r++)
                        z[j * H + r] += gpo_tview_get(&w2->bias, e * w2->bias_stride + r);
            }
            tbar(ts);

            /* 7. Per token: its experts' outputs weighted, summed in ascending expert
             * order, then the residual; and the next norm. */
            const struct gpo_layer *next = l + 1 < c->n_layer ? &m->layers[l + 1] : NULL;
            my_share(n_tok, &i0, &i1);
            for (int64_t i = i0; i < i1; i++) {
                const int32_t *se = x->sel + i * K;
                float *y = x->y + i * H, *xi = x->x + i * H;
                for (int64_t d = 0; d < H; d++) y[d] = 0.0f;
                for (int64_t n = 0, prev = -1; n < K; n++) {
                    int64_t jb = -1; /* the smallest expert above prev */
                    for (int64_t j = 0; j < K; j++)
                        if (se[j] > prev && (jb < 0 || se[j] < se[jb])) jb = j;
                    prev = se[jb];
                    const float w = x->selw[i * K + jb];
                    const float *z = x->z + (size_t)g_slot[i * K + jb] * H;
                    for (int64_t d = 0; d < H; d++) y[d] += w * z[d];
                }
                for (int64_t d = 0; d < H; d++) xi[d] += y[d];
                if (next)
                    gpo_rmsnorm(x->t + i * H, xi, &next->attn_norm, H, c->rms_eps);
                else if (x->out_idx[i] >= 0)
                    gpo_rmsnorm(x->t + x->out_idx[i] * H, xi, &m->final_norm, H, c->rms_eps);
            }
            /* Everybody reads `aborted` after the barrier, before tid 0 can write it again. */
            if (tid == 0 && x->abort_flag && *x->abort_flag) aborted = 1;
            tbar(ts);
            if (tid == 0 && x->trace)
                for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_BLOCK_RESIDUAL, l, i, x->x + i * H, H);
        }

        /* The unembedding of the rows whose logits are wanted (normed above); the end
         * of the region is its barrier. */
        if (!aborted && n_out > 0) {
            const struct gpo_tview *W = &m->unembedding;
            my_rows(W->rows, &r0, &r1);
            /* The fast path may round the normed rows to bf16 for BF16 weights
             * (vdpbf16ps): within the bf16 reference's error on the golden logits,
             * and faster per weight byte when decoding.  Only here: prefill unembeds
             * its last rows alone, and the q/k/v and output projections at 512-token
             * prefill run faster on the f32 kernels. */
            gpo_matmul_fn mm = k->matmul[W->dtype];
            if (fast && W->dtype == GPO_DT_BF16 && k->matmul_bf16_dot) mm = k->matmul_bf16_dot;
            if (r1 > r0) mm(logits, V, W->data, x->t, H, n_out, r0, r1, W->cols);
        }
        ts->end = omp_get_wtime();
    }
    /* The end of the region is a barrier too: each thread waited there from its
     * own end until the last one's. */
    const double t_join = omp_get_wtime();
    x->stats.calls++;
    x->stats.tokens += n_tok;
    x->stats.n_threads = team;
    x->stats.wall_s += t_join - t_start;
    x->stats.barriers += x->tstat[0].n + 1;
    for (int i = 0; i < team; i++) x->stats.barrier_s += x->tstat[i].wait + (t_join - x->tstat[i].end);
    if (aborted) {
        st = gpo_fail(GPO_ERR_ABORTED, "forward pass aborted");
        goto done;
    }

    /* Commit the new keys and values; a sliding ring only keeps its last slots. */
    for (int64_t s = 0; s < n_seqs; s++) {
        struct gpo_kv *kv = seqs[s].kv;
        const int64_t n = seqs[s].n_tokens, p0 = si[s].p0;
        for (int64_t l = 0; l < c->n_layer; l++) {
            int64_t first = kv->sliding[l] ? max_i64(0, n - kv->ring) : 0;
            for (int64_t i = first; i < n; i++) {
                float *kd, *vd;
                gpo_kv_row(kv, l, p0 + i, &kd, &vd);
                size_t src = ((size_t)l * T + si[s].base + i) * KVD;
                memcpy(kd, x->kb + src, (size_t)KVD * 4);
                memcpy(vd, x->vb + src, (size_t)KVD * 4);
            }
        }
        kv->len += n;
    }

done:
    if (si != si_buf) free(si);
    return st;
}
