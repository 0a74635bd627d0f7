/* moe.c - the mixture-of-experts block of one layer (spec 2.7): the router for
 * every token, top-k, the selected experts' clamped SwiGLU MLPs and their
 * weighted sum.  A shard routes every token (the router is replicated) but runs
 * only its experts [expert0, expert1); the pass sums the shards' partial sums
 * (forward.c). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "forward_impl.h"

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
    gpo_swiglu_ref(out, gate, lin, step, n_ff, alpha, limit);
}

void gpo_swiglu(float *out, const float *h, int64_t n_ff, float alpha, float limit) {
    gpo_swiglu_pairs(out, h, h + 1, 2, n_ff, alpha, limit);
}

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
    const uint8_t *b = gpo_xmat_blocks(w, e);
    if (w->layout == GPO_MXFP4_GGML) {
        if (in->q16)
            k->matmul_mxfp4_ggml_q16(y, ldy, b, in->q16, in->ld, n_tok, r0, r1, w->cols);
        else if (in->q8)
            k->matmul_mxfp4_ggml_q8(y, ldy, b, in->q8, in->ld, n_tok, r0, r1, w->cols);
        else
            k->matmul_mxfp4_ggml(y, ldy, b, in->f, in->ld, n_tok, r0, r1, w->cols);
        return;
    }
    const uint8_t *s = gpo_xmat_scales(w, e);
    if (in->q16)
        k->matmul_mxfp4_q16(y, ldy, b, s, in->q16, in->ld, n_tok, r0, r1, w->cols);
    else if (in->q8)
        k->matmul_mxfp4_q8(y, ldy, b, s, in->q8, in->ld, n_tok, r0, r1, w->cols);
    else
        k->matmul_mxfp4(y, ldy, b, s, in->f, in->ld, n_tok, r0, r1, w->cols);
}

/* y[t*ldy + (r - r0)] += bias[base + r] for rows [r0, r1) and n_tok tokens: each bias
 * value read once for all the tokens. */
static void add_bias(float *y, int64_t ldy, int64_t n_tok, const struct gpo_tview *bias,
                     int64_t base, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const float v = gpo_tview_get(bias, base + r);
        for (int64_t t = 0; t < n_tok; t++) y[t * ldy + (r - r0)] += v;
    }
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
    add_bias(y, ldy, n_tok, &w->bias, e * w->bias_stride, r0, r1);
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

/* The items of a MoE sweep over experts [e0, e1): the blocks of `blk` units (or
 * rows) of the n of every expert of the range that has tokens, in ascending expert
 * order.  Threads claim them in chunks (gpo_fwd_claim); sweep_items counts them and
 * chunk_runs turns a claimed chunk [a, b) into runs [run_a, run_b) of units of
 * experts run_e, at most one per expert.  The smallest chunk: 4 blocks, so the
 * per-call costs (preparing the activations, a gather) stay small. */
#define MOE_CLAIM_MIN 4

static int64_t sweep_items(const int64_t *off, int64_t e0, int64_t e1, int64_t n, int64_t blk) {
    int64_t cnt = 0;
    for (int64_t e = e0; e < e1; e++)
        if (off[e + 1] > off[e]) cnt += (n + blk - 1) / blk;
    return cnt;
}

static int64_t chunk_runs(const int64_t *off, int64_t e0, int64_t e1, int64_t n, int64_t blk,
                          int64_t a, int64_t b, int64_t *run_e, int64_t *run_a, int64_t *run_b) {
    const int64_t nblk = (n + blk - 1) / blk;
    int64_t cnt = 0, base = 0; /* base: the first item of expert e */
    for (int64_t e = e0; e < e1 && base < b; e++) {
        if (off[e + 1] == off[e]) continue;
        const int64_t lo = gpo_max_i64(a, base), hi = gpo_min_i64(b, base + nblk);
        if (lo < hi) {
            run_e[cnt] = e;
            run_a[cnt] = (lo - base) * blk;
            run_b[cnt] = gpo_min_i64(n, (hi - base) * blk);
            cnt++;
        }
        base += nblk;
    }
    return cnt;
}

/* The runs of the next chunk this thread claims of sweep `which` (CLAIM_UP or
 * CLAIM_DOWN) of layer L, n units (or rows) per expert in blocks of blk: their count,
 * or -1 once the sweep is all claimed. */
static int64_t claim_runs(struct gpo_ctx *x, struct moe_thread *mt, const struct gpo_layer *L,
                          int which, int64_t n, int64_t blk) {
    const int64_t e_lo = x->part.expert0, e_hi = x->part.expert1;
    int64_t a, b;
    if (!gpo_fwd_claim(gpo_fwd_claim_of(x, L - x->m->layers, which),
                       sweep_items(mt->g_off, e_lo, e_hi, n, blk), 1, MOE_CLAIM_MIN, &a, &b))
        return -1;
    return chunk_runs(mt->g_off, e_lo, e_hi, n, blk, a, b, mt->run_e, mt->run_a, mt->run_b);
}

void gpo_moe_thread(const struct gpo_ctx *x, int tid, struct moe_thread *mt) {
    const struct gpo_config *c = &x->m->cfg;
    const size_t T = (size_t)x->max_tokens, H = (size_t)c->n_embd, E = (size_t)c->n_expert,
                 K = (size_t)c->n_expert_used, F = (size_t)c->n_ff;
    mt->g_off = x->g_off + (size_t)tid * 2 * (E + 1);
    mt->g_tok = x->g_tok + (size_t)tid * T * K;
    mt->g_slot = x->g_slot + (size_t)tid * T * K;
    mt->run_e = x->g_run + (size_t)tid * 3 * E;
    mt->run_a = mt->run_e + E;
    mt->run_b = mt->run_a + E;
    mt->xg = x->xg + (size_t)tid * T * H;
    mt->hs = x->hs + (size_t)tid * (size_t)x->hs_cap;
    mt->as = x->as + (size_t)tid * F;
}

void gpo_moe_route(struct gpo_ctx *x, const struct gpo_layer *L, int64_t i0, int64_t i1) {
    const struct gpo_config *c = &x->m->cfg;
    const int64_t H = c->n_embd, E = c->n_expert, K = c->n_expert_used;
    if (i1 <= i0) return;
    const struct gpo_tview *W = &L->router_w;
    x->k->matmul[W->dtype](x->rl + i0 * E, E, W->data, x->t + i0 * H, H, i1 - i0, 0, E, W->cols);
    for (int64_t i = i0; i < i1; i++) {
        for (int64_t r = 0; r < E; r++) x->rl[i * E + r] += gpo_tview_get(&L->router_b, r);
        gpo_topk_softmax(x->rl + i * E, E, K, x->sel + i * K, x->selw + i * K);
    }
}

void gpo_moe_group(const struct gpo_ctx *x, struct moe_thread *mt, int64_t n_tok) {
    const struct gpo_config *c = &x->m->cfg;
    group_experts(x->sel, n_tok, c->n_expert_used, c->n_expert, mt->g_off, mt->g_tok, mt->g_slot);
}

void gpo_moe_up(struct gpo_ctx *x, struct thr_stat *ts, struct moe_thread *mt,
                const struct gpo_layer *L) {
    const struct gpo_config *c = &x->m->cfg;
    const struct gpo_kernels *k = x->k;
    const int64_t H = c->n_embd, F = c->n_ff;
    const int fast = x->path == GPO_PATH_FAST;
    const int64_t *g_off = mt->g_off;
    const int32_t *g_tok = mt->g_tok;
    float *xg = mt->xg, *hs = mt->hs, *as = mt->as;
    /* Unit u's gate and linear rows are 2u and 2u + 1 of mlp1[0] when the layer
     * interleaves them, else row u of mlp1[0] and of mlp1[1]; either way a chunk of
     * units leaves gate and linear outputs side by side in hs. */
    const int sep = L->gate_up == GPO_GATE_UP_SEPARATE;
    int64_t n_runs;
    while ((n_runs = claim_runs(x, mt, L, CLAIM_UP, F, MOE_UP_BLOCK)) >= 0) {
        for (int64_t ri = 0; ri < n_runs; ri++) {
            const int64_t e = mt->run_e[ri], e0 = g_off[e], ne = g_off[e + 1] - e0;
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
            for (int64_t u0 = mt->run_a[ri]; u0 < mt->run_b[ri]; u0 += chunk) {
                const int64_t u1 = gpo_min_i64(mt->run_b[ri], u0 + chunk), nu = u1 - u0;
                if (sep) {
                    expert_rows(k, &L->mlp1[0], e, u0, u1, hs, 2 * nu, &in, ne);
                    expert_rows(k, &L->mlp1[1], e, u0, u1, hs + nu, 2 * nu, &in, ne);
                } else {
                    expert_rows(k, &L->mlp1[0], e, 2 * u0, 2 * u1, hs, 2 * nu, &in, ne);
                }
                for (int64_t j = 0; j < ne; j++) {
                    const float *g = hs + j * 2 * nu;
                    float *out = fast ? as : x->act + (size_t)(e0 + j) * F + u0;
                    /* the exact path keeps libm's expf (the reference) */
                    (fast ? k->swiglu : gpo_swiglu_ref)(out, g, sep ? g + nu : g + 1,
                                                        sep ? 1 : 2, nu, c->swiglu_alpha,
                                                        c->swiglu_limit);
                    if (fast) k->quantize_q8(x->xq + (size_t)(e0 + j) * (F / 32) + u0 / 32, as, nu);
                }
            }
        }
    }
    gpo_fwd_barrier(ts);
}

void gpo_moe_down(struct gpo_ctx *x, struct thr_stat *ts, struct moe_thread *mt,
                  const struct gpo_layer *L) {
    const struct gpo_config *c = &x->m->cfg;
    const int64_t H = c->n_embd, F = c->n_ff;
    const int fast = x->path == GPO_PATH_FAST;
    const int64_t *g_off = mt->g_off;
    int64_t n_runs;
    while ((n_runs = claim_runs(x, mt, L, CLAIM_DOWN, H, MOE_DOWN_BLOCK)) >= 0) {
        for (int64_t ri = 0; ri < n_runs; ri++) {
            const int64_t e = mt->run_e[ri], e0 = g_off[e], ne = g_off[e + 1] - e0;
            const struct xin in =
                fast ? (struct xin){.q8 = x->xq + (size_t)e0 * (F / 32), .ld = F / 32}
                     : (struct xin){.f = x->act + (size_t)e0 * F, .ld = F};
            const struct gpo_xmat *w2 = &L->mlp2;
            float *z = x->z + (size_t)e0 * H;
            expert_matmul(x->k, w2, e, z, H, &in, ne, mt->run_a[ri], mt->run_b[ri]);
            add_bias(z + mt->run_a[ri], H, ne, &w2->bias, e * w2->bias_stride, mt->run_a[ri],
                     mt->run_b[ri]);
        }
    }
    gpo_fwd_barrier(ts);
}

void gpo_moe_combine(struct gpo_ctx *x, const struct moe_thread *mt, int64_t i) {
    const struct gpo_config *c = &x->m->cfg;
    const int64_t H = c->n_embd, K = c->n_expert_used;
    const int64_t e_lo = x->part.expert0, e_hi = x->part.expert1;
    const int32_t *se = x->sel + i * K;
    float *y = x->y + i * H;
    for (int64_t d = 0; d < H; d++) y[d] = 0.0f;
    for (int64_t n = 0, prev = -1; n < K; n++) {
        int64_t jb = -1; /* the smallest expert above prev */
        for (int64_t j = 0; j < K; j++)
            if (se[j] > prev && (jb < 0 || se[j] < se[jb])) jb = j;
        prev = se[jb];
        if (prev < e_lo || prev >= e_hi) continue; /* another shard's expert */
        const float w = x->selw[i * K + jb];
        const float *z = x->z + (size_t)mt->g_slot[i * K + jb] * H;
        for (int64_t d = 0; d < H; d++) y[d] += w * z[d];
    }
}
