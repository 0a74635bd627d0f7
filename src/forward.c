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
    /* experts, grouped */
    int64_t *ex_off;   /* [E+1] */
    int32_t *ex_tok;   /* [T*K] token of each (expert, slot) */
    float *ex_w;       /* [T*K] */
    int32_t *ex_cur;   /* [E] */
    float *xe;         /* [T][H] gathered inputs of one expert */
    float *h1;         /* [T][2F] */
    float *act;        /* [T][F] */
    float *z;          /* [T][H] */
    struct gpo_q8_block *xq; /* [T][F/32] quantised SwiGLU outputs (fast path) */
    struct gpo_q16_block *tq;  /* [T][H/32] quantised expert inputs (fast path) */
    struct gpo_q16_block *xeq; /* [T][H/32] the same, gathered for one expert */
    /* output selection */
    int64_t *out_tok;  /* [T] tokens whose logits are wanted */
    /* attention scratch per thread */
    float *ascratch;   /* [n_threads][ATTN_CHUNK + head_dim] */
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
    x->ex_off = xalloc((E + 1) * 8, &fail);
    x->ex_tok = xalloc(T * K * 4, &fail);
    x->ex_w = xalloc(T * K * 4, &fail);
    x->ex_cur = xalloc(E * 4, &fail);
    x->xe = xalloc(T * H * 4, &fail);
    x->h1 = xalloc(T * 2 * F * 4, &fail);
    x->act = xalloc(T * F * 4, &fail);
    x->z = xalloc(T * H * 4, &fail);
    x->xq = xalloc(T * (F / 32) * sizeof(struct gpo_q8_block), &fail);
    x->tq = xalloc(T * (H / 32) * sizeof(struct gpo_q16_block), &fail);
    x->xeq = xalloc(T * (H / 32) * sizeof(struct gpo_q16_block), &fail);
    x->out_tok = xalloc(T * 8, &fail);
    x->ascratch = xalloc((size_t)o.n_threads * (ATTN_CHUNK + D) * 4, &fail);
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
    void *bufs[] = {x->inv_freq, x->tok_id, x->tok_pos, x->tok_seq, x->x,      x->t,
                    x->q,        x->kb,     x->vb,      x->att,     x->o,      x->rl,
                    x->sel,      x->selw,   x->y,       x->cs,      x->ex_off, x->ex_tok,
                    x->ex_w,     x->ex_cur, x->xe,      x->h1,      x->act,    x->z,
                    x->xq,       x->out_tok, x->ascratch, x->tq,   x->xeq};
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

/* y[t][r] = W x[t] (+ bias) for all rows, split over the team; ends with a barrier. */
static void par_matmul(const struct gpo_kernels *k, float *y, int64_t ldy,
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
#pragma omp barrier
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

/* The first projection of expert e for n_tok tokens: this thread's share [r0, r1)
 * of the 2F output rows h[t*2F + r], bias added.  The rows are in the order the
 * layer stores them (interleaved gate/linear pairs, or all gate rows then all
 * linear rows); a share that crosses from the gate matrix into the linear one is
 * computed as its two pieces. */
static void expert_mlp1(const struct gpo_kernels *k, const struct gpo_layer *L, int64_t e,
                        float *h, int64_t F, const struct xin *in, int64_t n_tok, int64_t r0,
                        int64_t r1) {
    const int n_mats = L->gate_up == GPO_GATE_UP_SEPARATE ? 2 : 1;
    int64_t off = 0; /* first output row of this matrix */
    for (int i = 0; i < n_mats; off += L->mlp1[i].rows, i++) {
        const struct gpo_xmat *w = &L->mlp1[i];
        const int64_t a = max_i64(r0, off) - off, b = min_i64(r1, off + w->rows) - off;
        if (b <= a) continue;
        float *y = h + off;
        expert_matmul(k, w, e, y, 2 * F, in, n_tok, a, b);
        for (int64_t j = 0; j < n_tok; j++)
            for (int64_t r = a; r < b; r++)
                y[j * 2 * F + r] += gpo_tview_get(&w->bias, e * w->bias_stride + r);
    }
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
        int64_t slot = gpo_kv_slot(si->kv, l, j);
        *kp = si->kv->k[l] + slot * kvd;
        *vp = si->kv->v[l] + slot * kvd;
        *run = si->kv->sliding[l] ? min_i64(si->kv->ring - slot, si->p0 - j) : si->p0 - j;
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
            if (b->logits == GPO_LOGITS_ALL || (b->logits == GPO_LOGITS_LAST && i == b->n_tokens - 1))
                x->out_tok[n_out++] = ti;
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

#pragma omp parallel num_threads(x->n_threads)
    {
        int64_t r0, r1;
        float *ascr = x->ascratch + (size_t)omp_get_thread_num() * (ATTN_CHUNK + D);

        /* Embedding and RoPE tables. */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_tok; i++) {
            gpo_to_f32(x->x + i * H, (const uint8_t *)m->embedding.data +
                                         (size_t)x->tok_id[i] * gpo_tview_row_bytes(&m->embedding),
                       m->embedding.dtype, H);
            float *cv = x->cs + i * D, *sv = cv + half;
            for (int64_t j = 0; j < half; j++) {
                float th = (float)x->tok_pos[i] * x->inv_freq[j];
                cv[j] = cosf(th) * x->concentration;
                sv[j] = sinf(th) * x->concentration;
            }
        }
#pragma omp single
        for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_EMBED, -1, i, x->x + i * H, H);

        for (int64_t l = 0; l < c->n_layer && !aborted; l++) {
            const struct gpo_layer *L = &m->layers[l];
            float *kbl = x->kb + (size_t)l * T * KVD, *vbl = x->vb + (size_t)l * T * KVD;

            /* Attention block. */
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_tok; i++)
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &L->attn_norm, H, c->rms_eps);
            par_matmul(k, x->q, QD, &L->wq, &L->bq, x->t, H, n_tok);
            par_matmul(k, kbl, KVD, &L->wk, &L->bk, x->t, H, n_tok);
            par_matmul(k, vbl, KVD, &L->wv, &L->bv, x->t, H, n_tok);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_tok; i++) {
                const float *cv = x->cs + i * D;
                gpo_rope_apply(x->q + i * QD, c->n_head, D, cv, cv + half);
                gpo_rope_apply(kbl + i * KVD, c->n_head_kv, D, cv, cv + half);
            }
#pragma omp for schedule(static) collapse(2)
            for (int64_t i = 0; i < n_tok; i++)
                for (int64_t h = 0; h < c->n_head; h++)
                    attend_one(x, &si[x->tok_seq[i]], l, x->tok_pos[i], x->q + i * QD + h * D, h / G,
                               gpo_tview_get(&L->sinks, h), x->att + i * QD + h * D, ascr);
            par_matmul(k, x->o, H, &L->wo, &L->bo, x->att, QD, n_tok);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_tok; i++) {
                for (int64_t d = 0; d < H; d++) x->x[i * H + d] += x->o[i * H + d];
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &L->mlp_norm, H, c->rms_eps);
                if (fast) k->quantize_q16(x->tq + i * (H / 32), x->t + i * H, H);
            }

            /* Router: top-k on the raw logits, softmax over the k selected. */
            par_matmul(k, x->rl, E, &L->router_w, &L->router_b, x->t, H, n_tok);
#pragma omp single
            {
                for (int64_t i = 0; i < n_tok; i++) {
                    gpo_topk_softmax(x->rl + i * E, E, K, x->sel + i * K, x->selw + i * K);
                    trace(x, GPO_TRACE_ATTN_RESIDUAL, l, i, x->x + i * H, H);
                    trace(x, GPO_TRACE_ROUTER_LOGITS, l, i, x->rl + i * E, E);
                    trace(x, GPO_TRACE_EXPERTS, l, i, x->sel + i * K, K);
                    trace(x, GPO_TRACE_EXPERT_WEIGHTS, l, i, x->selw + i * K, K);
                }
                /* Group the batch by expert (counting sort, token order kept). */
                memset(x->ex_off, 0, (size_t)(E + 1) * sizeof *x->ex_off);
                for (int64_t i = 0; i < n_tok * K; i++) x->ex_off[x->sel[i] + 1]++;
                for (int64_t e = 0; e < E; e++) x->ex_off[e + 1] += x->ex_off[e];
                for (int64_t e = 0; e < E; e++) x->ex_cur[e] = (int32_t)x->ex_off[e];
                for (int64_t i = 0; i < n_tok; i++)
                    for (int64_t j = 0; j < K; j++) {
                        int32_t e = x->sel[i * K + j];
                        x->ex_tok[x->ex_cur[e]] = (int32_t)i;
                        x->ex_w[x->ex_cur[e]++] = x->selw[i * K + j];
                    }
                memset(x->y, 0, (size_t)n_tok * H * sizeof *x->y);
            }

            /* Experts in ascending order, each over all its tokens at once, so every
             * selected expert's weights are read once per step and each token sums
             * its experts in the same order whatever the batch.  Unit u's gate and
             * linear outputs are h1[2u] and h1[2u + 1] when the layer interleaves
             * them, else h1[u] and h1[F + u]. */
            const int sep = L->gate_up == GPO_GATE_UP_SEPARATE;
            const int64_t lin_off = sep ? F : 1, gu_step = sep ? 1 : 2;
            const struct xin in1 = fast ? (struct xin){.q16 = x->xeq, .ld = H / 32}
                                        : (struct xin){.f = x->xe, .ld = H};
            const struct xin in2 = fast ? (struct xin){.q8 = x->xq, .ld = F / 32}
                                        : (struct xin){.f = x->act, .ld = F};
            for (int64_t e = 0; e < E; e++) {
                const int64_t e0 = x->ex_off[e], ne = x->ex_off[e + 1] - e0;
                if (ne == 0) continue;
#pragma omp for schedule(static)
                for (int64_t j = 0; j < ne; j++) {
                    if (fast)
                        memcpy(x->xeq + j * (H / 32), x->tq + (size_t)x->ex_tok[e0 + j] * (H / 32),
                               (size_t)(H / 32) * sizeof *x->xeq);
                    else
                        memcpy(x->xe + j * H, x->t + (size_t)x->ex_tok[e0 + j] * H, (size_t)H * 4);
                }
                my_rows(2 * F, &r0, &r1);
                if (r1 > r0) expert_mlp1(k, L, e, x->h1, F, &in1, ne, r0, r1);
#pragma omp barrier
#pragma omp for schedule(static)
                for (int64_t j = 0; j < ne; j++) {
                    const float *hj = x->h1 + j * 2 * F;
                    gpo_swiglu_pairs(x->act + j * F, hj, hj + lin_off, gu_step, F, c->swiglu_alpha,
                                     c->swiglu_limit);
                    if (fast) k->quantize_q8(x->xq + j * (F / 32), x->act + j * F, F);
                }
                my_rows(H, &r0, &r1);
                if (r1 > r0) {
                    const struct gpo_xmat *w2 = &L->mlp2;
                    expert_matmul(k, w2, e, x->z, H, &in2, ne, r0, r1);
                    /* Each thread owns rows r0..r1 of every token's output, so the
                     * scatter-add needs no lock and keeps a fixed order. */
                    for (int64_t j = 0; j < ne; j++) {
                        float w = x->ex_w[e0 + j];
                        float *yt = x->y + (size_t)x->ex_tok[e0 + j] * H;
                        for (int64_t r = r0; r < r1; r++)
                            yt[r] += w * (x->z[j * H + r] +
                                          gpo_tview_get(&w2->bias, e * w2->bias_stride + r));
                    }
                }
#pragma omp barrier
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_tok; i++)
                for (int64_t d = 0; d < H; d++) x->x[i * H + d] += x->y[i * H + d];
#pragma omp single
            {
                for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_BLOCK_RESIDUAL, l, i, x->x + i * H, H);
                if (x->abort_flag && *x->abort_flag) aborted = 1;
            }
        }

        /* Final norm and unembedding of the rows whose logits are wanted. */
        if (!aborted && n_out > 0) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_out; i++)
                gpo_rmsnorm(x->t + i * H, x->x + x->out_tok[i] * H, &m->final_norm, H, c->rms_eps);
            par_matmul(k, logits, V, &m->unembedding, NULL, x->t, H, n_out);
        }
    }
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
                int64_t slot = gpo_kv_slot(kv, l, p0 + i);
                size_t src = ((size_t)l * T + si[s].base + i) * KVD;
                memcpy(kv->k[l] + slot * KVD, x->kb + src, (size_t)KVD * 4);
                memcpy(kv->v[l] + slot * KVD, x->vb + src, (size_t)KVD * 4);
            }
        }
        kv->len += n;
    }

done:
    if (si != si_buf) free(si);
    return st;
}
