/* attention.c - the attention block of one layer (spec 2.6): q, k and v
 * projections with RoPE, attention with sinks and a sliding window against the KV
 * cache, and the output projection.  A shard computes its query heads, its KV
 * heads (its cache holds only those) and the product of its columns of wo; the
 * pass sums the shards' partial products (forward.c). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "forward_impl.h"
#include "kvcache.h"

int64_t gpo_attn_first_key(const struct gpo_config *c, int64_t layer, int64_t p) {
    return c->layer_sliding[layer] ? gpo_max_i64(0, p - c->sliding_window + 1) : 0;
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

void gpo_attn_qkv(struct gpo_ctx *x, const struct gpo_layer *L, int64_t l, int64_t n_tok) {
    const struct gpo_config *c = &x->m->cfg;
    const struct fwd_part *P = &x->part;
    const int64_t H = c->n_embd, D = c->head_dim, half = D / 2, T = x->max_tokens;
    float *kbl = x->kb + (size_t)l * T * P->kvd, *vbl = x->vb + (size_t)l * T * P->kvd;
    /* The part's heads of the three projections as one list, a share of whole heads
     * per thread, so the thread that made a head ropes it.  row0 is the part's first
     * row of the matrix (and of its bias). */
    const struct {
        const struct gpo_tview *w, *b;
        float *y;
        int64_t ld, n_heads, row0;
        int rope;
    } mats[3] = {{&L->wq, &L->bq, x->q, P->qd, P->n_head, P->head0 * D, 1},
                 {&L->wk, &L->bk, kbl, P->kvd, P->n_head_kv, P->kv_head0 * D, 1},
                 {&L->wv, &L->bv, vbl, P->kvd, P->n_head_kv, P->kv_head0 * D, 0}};
    int64_t h0, h1, base = 0;
    gpo_fwd_share(P->n_head + 2 * P->n_head_kv, &h0, &h1);
    for (int mi = 0; mi < 3; base += mats[mi].n_heads, mi++) {
        const int64_t a = gpo_max_i64(h0, base) - base,
                      b = gpo_min_i64(h1, base + mats[mi].n_heads) - base;
        if (b <= a) continue;
        const struct gpo_tview W = gpo_fwd_row_view(mats[mi].w, mats[mi].row0, mats[mi].n_heads * D);
        float *y = mats[mi].y;
        const int64_t ld = mats[mi].ld;
        x->k->matmul[W.dtype](y, ld, W.data, x->t, H, n_tok, a * D, b * D, W.cols);
        for (int64_t i = 0; i < n_tok; i++) {
            for (int64_t r = a * D; r < b * D; r++)
                y[i * ld + r] += gpo_tview_get(mats[mi].b, mats[mi].row0 + r);
            if (mats[mi].rope) {
                const float *cv = x->cs + i * D;
                gpo_rope_apply(y + i * ld + a * D, b - a, D, cv, cv + half);
            }
        }
    }
}

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
        *run = gpo_min_i64(gpo_kv_row(si->kv, l, j, &k, &v), si->p0 - j);
        *kp = k;
        *vp = v;
    }
}

/* One query head of one token: online softmax over keys lo..p with the sink as an
 * extra logit in the denominator only (spec 2.6).  g is the head's KV head within
 * the part. */
static void attend_one(const struct gpo_ctx *x, const struct seq_info *si, int64_t l, int64_t p,
                       const float *q, int64_t g, float sink, float *out, float *scratch) {
    const struct gpo_config *c = &x->m->cfg;
    const int64_t D = c->head_dim, kvd = x->part.kvd, T = x->max_tokens;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t lo = gpo_attn_first_key(c, l, p);
    float *s = scratch, *acc = scratch + ATTN_CHUNK;
    float mx = sink, sum = 1.0f;
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t c0 = lo; c0 <= p;) {
        int64_t c1 = gpo_min_i64(p + 1, (c0 / ATTN_CHUNK + 1) * ATTN_CHUNK);
        /* scores of the chunk, in contiguous runs */
        for (int64_t j = c0; j < c1;) {
            const float *kp, *vp;
            int64_t run;
            kv_at(x, si, l, j, T, kvd, &kp, &vp, &run);
            int64_t n = gpo_min_i64(run, c1 - j);
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
            int64_t n = gpo_min_i64(run, c1 - j);
            x->k->attn_accum(acc, s + (j - c0), vp + g * D, kvd, n, D);
            j += n;
        }
        c0 = c1;
    }
    for (int64_t d = 0; d < D; d++) out[d] = acc[d] / sum;
}

void gpo_attn_heads(struct gpo_ctx *x, const struct gpo_layer *L, const struct seq_info *si,
                    int64_t l, int64_t n_tok, float *scratch) {
    const struct gpo_config *c = &x->m->cfg;
    const struct fwd_part *P = &x->part;
    const int64_t D = c->head_dim, G = c->n_head / c->n_head_kv, nh = P->n_head, qd = P->qd;
#pragma omp for schedule(static) collapse(2) nowait
    for (int64_t i = 0; i < n_tok; i++)
        for (int64_t h = 0; h < nh; h++)
            attend_one(x, &si[x->tok_seq[i]], l, x->tok_pos[i], x->q + i * qd + h * D, h / G,
                       gpo_tview_get(&L->sinks, P->head0 + h), x->att + i * qd + h * D, scratch);
}

/* Bytes from the start of a row of W to its column col (a multiple of the block
 * size for Q8_0: the part's columns are whole heads). */
static size_t col_offset(const struct gpo_tview *W, int64_t col) {
    if (W->dtype == GPO_DT_Q8_0) return (size_t)(col / GPO_QK) * sizeof(struct gpo_q8_0_block);
    return (size_t)col * gpo_dtype_size(W->dtype);
}

void gpo_attn_out(struct gpo_ctx *x, struct thr_stat *ts, const struct gpo_layer *L, int64_t n_tok) {
    const struct fwd_part *P = &x->part;
    const struct gpo_tview *W = &L->wo;
    const int64_t H = x->m->cfg.n_embd;
    int64_t r0, r1;
    gpo_fwd_rows(W->rows, &r0, &r1);
    if (r1 > r0 && !P->sharded) {
        x->k->matmul[W->dtype](x->o, H, W->data, x->att, P->qd, n_tok, r0, r1, W->cols);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) x->o[t * H + r] += gpo_tview_get(&L->bo, r);
    } else if (r1 > r0) {
        /* The part's columns [head0 * D, + qd) of each row: a view that keeps the
         * full row stride, one row per kernel call (a row's value never depends on
         * the rows computed with it), so nothing is copied and only those columns
         * are read. */
        const size_t rb = gpo_tview_row_bytes(W), c0 = col_offset(W, P->head0 * x->m->cfg.head_dim);
        for (int64_t r = r0; r < r1; r++)
            x->k->matmul[W->dtype](x->o + r, H, (const uint8_t *)W->data + (size_t)r * rb + c0,
                                   x->att, P->qd, n_tok, 0, 1, P->qd);
    }
    gpo_fwd_barrier(ts);
}
