/* attention.c - the attention block of one layer (spec 2.6): q, k and v
 * projections with RoPE, attention with sinks and a sliding window against the KV
 * cache, and the output projection.  A shard computes its query heads, its KV
 * heads (its cache holds only those) and the product of its columns of wo; the
 * pass sums the shards' partial products (forward.c). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "forward_impl.h"
#include "kvcache.h"
#include "util.h"

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
    /* The part's heads of the three projections as one list, claimed in chunks of
     * whole heads, so the thread that made a head ropes it.  row0 is the part's first
     * row of the matrix (and of its bias). */
    const struct {
        const struct gpo_tview *w, *b;
        float *y;
        int64_t ld, n_heads, row0;
        int rope;
    } mats[3] = {{&L->wq, &L->bq, x->q, P->qd, P->n_head, P->head0 * D, 1},
                 {&L->wk, &L->bk, kbl, P->kvd, P->n_head_kv, P->kv_head0 * D, 1},
                 {&L->wv, &L->bv, vbl, P->kvd, P->n_head_kv, P->kv_head0 * D, 0}};
    int64_t h0, h1;
    struct fwd_claim *cl = gpo_fwd_claim_of(x, l, CLAIM_QKV);
    while (gpo_fwd_claim(cl, P->n_head + 2 * P->n_head_kv, 1, 2, &h0, &h1)) {
        for (int64_t mi = 0, base = 0; mi < 3; base += mats[mi].n_heads, mi++) {
            const int64_t a = gpo_max_i64(h0, base) - base,
                          b = gpo_min_i64(h1, base + mats[mi].n_heads) - base;
            if (b <= a) continue;
            const struct gpo_tview W =
                gpo_fwd_row_view(mats[mi].w, mats[mi].row0, mats[mi].n_heads * D);
            float *y = mats[mi].y;
            const int64_t ld = mats[mi].ld;
            const gpo_matmul_q8_0_q16s_fn q16s = GPO_FWD_INT_KERNEL(x, W.dtype, q16s);
            if (q16s)
                q16s(y, ld, W.data, x->tq16s, H / 32, n_tok, a * D, b * D, W.cols);
            else
                GPO_FWD_F32_KERNEL(x, W.dtype)(y, ld, W.data, x->t, H, n_tok, a * D, b * D, W.cols);
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

/* A run of key positions [j, j + n) of one chunk contiguous in memory: the key
 * and value rows of position j (stride kvd). */
struct kv_run {
    int64_t j, n;
    const float *k, *v;
};

/* The runs of positions [c0, c1) of layer l, in order; returns their number (at
 * most c1 - c0). */
static int64_t chunk_runs(const struct gpo_ctx *x, const struct seq_info *si, int64_t l,
                          int64_t c0, int64_t c1, struct kv_run *runs) {
    int64_t nr = 0;
    for (int64_t j = c0; j < c1; nr++) {
        int64_t run;
        kv_at(x, si, l, j, x->max_tokens, x->part.kvd, &runs[nr].k, &runs[nr].v, &run);
        runs[nr].j = j;
        runs[nr].n = gpo_min_i64(run, c1 - j);
        j += runs[nr].n;
    }
    return nr;
}

/* One query head of one token: an online softmax over keys lo..p with the sink as
 * an extra logit in the denominator only (spec 2.6).  s holds the scores of one
 * chunk, acc the weighted sum of the values. */
struct attn_row {
    const float *q;
    float *out, *s, *acc;
    float mx, sum;
    int64_t lo, p;
};

/* fmaxf(m, v) (v when m is NaN, m when v is), without the library call. */
static inline float max_f(float m, float v) { return v > m || m != m ? v : m; }

/* The scores of keys [a, b) of a chunk (inside its runs) for n rows of one token:
 * row i's query at rows->q + i * D, its scores at rows->s + i * lds from key a on.
 * One kernel call per run reads the keys once for all the rows. */
static void token_scores(const struct gpo_kernels *k, const struct attn_row *rows, int64_t n,
                         int64_t lds, const struct kv_run *runs, int64_t nr, int64_t a, int64_t b,
                         int64_t goff, int64_t kvd, int64_t D, float scale) {
    for (int64_t i = 0; i < nr; i++) {
        const int64_t j0 = gpo_max_i64(a, runs[i].j), j1 = gpo_min_i64(b, runs[i].j + runs[i].n);
        if (j1 > j0)
            k->attn_scores_rows(rows->s + (j0 - a), lds, rows->q, D, n,
                                runs[i].k + (j0 - runs[i].j) * kvd + goff, kvd, j1 - j0, D, scale);
    }
}

/* Keys [a, b) of one chunk into row r, whose scores are in r->s: the rescaling when
 * the maximum grows, the exponentials, the weighted values.  A row gets the same
 * operations in the same order whichever rows are computed with it and however the
 * chunk's keys are laid out in memory (no kernel's result depends on how the keys
 * are split over calls, or on the other queries of attn_scores_rows). */
static void row_update(const struct gpo_kernels *k, struct attn_row *r, const struct kv_run *runs,
                       int64_t nr, int64_t a, int64_t b, int64_t goff, int64_t kvd, int64_t D) {
    float *s = r->s;
    float cmax = r->mx;
    for (int64_t j = 0; j < b - a; j++) cmax = max_f(cmax, s[j]);
    if (cmax > r->mx) {
        float f = expf(r->mx - cmax);
        r->sum *= f;
        for (int64_t d = 0; d < D; d++) r->acc[d] *= f;
        r->mx = cmax;
    }
    for (int64_t j = 0; j < b - a; j++) {
        s[j] = expf(s[j] - r->mx);
        r->sum += s[j];
    }
    for (int64_t i = 0; i < nr; i++) {
        const int64_t j0 = gpo_max_i64(a, runs[i].j), j1 = gpo_min_i64(b, runs[i].j + runs[i].n);
        if (j1 > j0)
            k->attn_accum(r->acc, s + (j0 - a), runs[i].v + (j0 - runs[i].j) * kvd + goff, kvd,
                          j1 - j0, D);
    }
}

/* Rows of one sequence and one KV head g (part-local), nh consecutive heads of each
 * token (their scratch at stride ATTN_CHUNK + D), against the keys of all of them,
 * chunk by chunk: each chunk of keys and values is read from memory once for all
 * the rows instead of once per row.  The chunks are aligned to absolute positions
 * (a row's first one starts at its lo), so every row is computed as it would be
 * alone. */
static void attend_rows(const struct gpo_ctx *x, const struct seq_info *si, int64_t l, int64_t g,
                        struct attn_row *rows, int64_t n_rows, int64_t nh) {
    const int64_t D = x->m->cfg.head_dim, kvd = x->part.kvd;
    const float scale = 1.0f / sqrtf((float)D);
    struct kv_run runs[ATTN_CHUNK];
    int64_t lo = INT64_MAX, hi = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        lo = gpo_min_i64(lo, rows[r].lo);
        hi = gpo_max_i64(hi, rows[r].p + 1);
    }
    for (int64_t c0 = lo, c1; c0 < hi; c0 = c1) {
        c1 = gpo_min_i64(hi, (c0 / ATTN_CHUNK + 1) * ATTN_CHUNK);
        const int64_t nr = chunk_runs(x, si, l, c0, c1, runs);
        for (int64_t t = 0; t < n_rows; t += nh) {
            /* the token's rows share their keys */
            const int64_t a = gpo_max_i64(c0, rows[t].lo), b = gpo_min_i64(c1, rows[t].p + 1);
            if (a >= b) continue;
            token_scores(x->k, &rows[t], nh, ATTN_CHUNK + D, runs, nr, a, b, g * D, kvd, D, scale);
            for (int64_t r = t; r < t + nh; r++) row_update(x->k, &rows[r], runs, nr, a, b, g * D, kvd, D);
        }
    }
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t d = 0; d < D; d++) rows[r].out[d] = rows[r].acc[d] / rows[r].sum;
        if (x->dq) /* the head's blocks of the output projection's input */
            gpo_quantize_q16s(x->k, x->attq16s + (rows[r].out - x->att) / 32, rows[r].out, D);
    }
}

/* The work items of gpo_attn_heads: blocks of *tb consecutive tokens times slices
 * of *hg query heads of one KV head, at most ATTN_BLOCK_ROWS rows each.  Smaller
 * blocks when there would be too few items to keep every thread busy (decoding). */
static void item_shape(int64_t n_tok, int64_t n_kv, int64_t G, int n_threads, int64_t *tb,
                       int64_t *hg) {
    *hg = gpo_min_i64(G, ATTN_BLOCK_ROWS);
    *tb = ATTN_BLOCK_ROWS / *hg;
    const int64_t want = 4 * (int64_t)n_threads;
    while (*tb > 1 && (n_tok + *tb - 1) / *tb * n_kv * ((G + *hg - 1) / *hg) < want) *tb /= 2;
    while (*hg > 1 && n_tok * n_kv * ((G + *hg - 1) / *hg) < want) *hg = (*hg + 1) / 2;
}

void gpo_attn_heads(struct gpo_ctx *x, const struct gpo_layer *L, const struct seq_info *si,
                    int64_t l, int64_t n_tok, float *scratch) {
    const struct gpo_config *c = &x->m->cfg;
    const struct fwd_part *P = &x->part;
    const int64_t D = c->head_dim, G = c->n_head / c->n_head_kv, qd = P->qd, n_kv = P->n_head_kv;
    int64_t tb, hg;
    item_shape(n_tok, n_kv, G, x->n_threads, &tb, &hg);
    const int64_t n_slice = (G + hg - 1) / hg, per_block = n_kv * n_slice;
    const int64_t n_items = (n_tok + tb - 1) / tb * per_block;
    /* Dynamic, the last tokens' blocks first: a later token has more keys. */
#pragma omp for schedule(dynamic) nowait
    for (int64_t it = 0; it < n_items; it++) {
        const int64_t blk = (n_items - 1 - it) / per_block, g = it % per_block / n_slice;
        const int64_t h0 = g * G + it % n_slice * hg, h1 = gpo_min_i64(h0 + hg, (g + 1) * G);
        const int64_t i1 = gpo_min_i64(n_tok, (blk + 1) * tb);
        struct attn_row rows[ATTN_BLOCK_ROWS];
        /* the block's tokens of one sequence at a time */
        for (int64_t i0 = blk * tb, ie; i0 < i1; i0 = ie) {
            for (ie = i0 + 1; ie < i1 && x->tok_seq[ie] == x->tok_seq[i0];) ie++;
            int64_t n = 0;
            for (int64_t i = i0; i < ie; i++)
                for (int64_t h = h0; h < h1; h++, n++) {
                    float *s = scratch + n * (ATTN_CHUNK + D);
                    rows[n] = (struct attn_row){
                        .q = x->q + i * qd + h * D, .out = x->att + i * qd + h * D, .s = s,
                        .acc = s + ATTN_CHUNK, .mx = gpo_tview_get(&L->sinks, P->head0 + h),
                        .sum = 1.0f, .lo = gpo_attn_first_key(c, l, x->tok_pos[i]),
                        .p = x->tok_pos[i]};
                    for (int64_t d = 0; d < D; d++) rows[n].acc[d] = 0.0f;
                }
            attend_rows(x, &si[x->tok_seq[i0]], l, g, rows, n, h1 - h0);
        }
    }
}

/* Bytes from the start of a row of W to its column col (a multiple of the block
 * size for Q8_0: the part's columns are whole heads). */
static size_t col_offset(const struct gpo_tview *W, int64_t col) {
    return gpo_dense_bytes(W->dtype, col);
}

enum gpo_status gpo_attn_pack_wo(struct gpo_ctx *x) {
    const struct gpo_config *c = &x->m->cfg;
    const struct fwd_part *P = &x->part;
    const int64_t col0 = P->head0 * c->head_dim;
    if (!P->sharded || P->n_head == c->n_head) return GPO_OK;
    uint64_t total = 0;
    for (int64_t l = 0; l < c->n_layer; l++) {
        const struct gpo_tview *W = &x->m->layers[l].wo;
        if (gpo_dtype_is_q8_0(W->dtype) &&
            (col0 % GPO_QK || P->qd % GPO_QK))
            return gpo_fail(GPO_ERR_UNSUPPORTED, "layer %lld: wo columns [%lld, %lld) of a shard "
                            "are not whole Q8_0 blocks of %d", (long long)l, (long long)col0,
                            (long long)(col0 + P->qd), GPO_QK);
        total += (uint64_t)W->rows * col_offset(W, P->qd);
    }
    x->wo_pack = calloc((size_t)c->n_layer, sizeof *x->wo_pack);
    x->wo_buf = gpo_aligned_alloc(total ? total : 1);
    if (!x->wo_pack || !x->wo_buf) {
        gpo_attn_free_wo(x);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate %.1f MiB for the shard's wo columns",
                        (double)total / 1048576.0);
    }
    uint8_t *dst = x->wo_buf;
    for (int64_t l = 0; l < c->n_layer; l++) {
        const struct gpo_tview *W = &x->m->layers[l].wo;
        const size_t rb = gpo_tview_row_bytes(W), c0 = col_offset(W, col0), pb = col_offset(W, P->qd);
        const uint8_t *src = W->data;
        /* Only the part's bytes of each row are read, so the other columns' pages of
         * the mapping stay untouched (but for the pages the row edges share). */
        if (W->dtype == GPO_DT_Q8_0X16) {
            /* A 16-row group at a time: its rows unpacked, the part's blocks of them
             * packed again. */
            const int64_t nb = W->cols / GPO_QK, b0 = col0 / GPO_QK, pn = P->qd / GPO_QK;
            struct gpo_q8_0_block *rows = malloc((size_t)(nb + GPO_Q8X16_ROWS * pn) * sizeof *rows);
            if (!rows) {
                gpo_attn_free_wo(x);
                return gpo_fail(GPO_ERR_NOMEM, "cannot allocate the shard's wo columns");
            }
            struct gpo_q8_0_block *part = rows + nb;
            for (int64_t g = 0; g < W->rows / GPO_Q8X16_ROWS; g++) {
                for (int i = 0; i < GPO_Q8X16_ROWS; i++) {
                    gpo_q8_0x16_row(rows, src, g * GPO_Q8X16_ROWS + i, W->cols);
                    memcpy(part + i * pn, rows + b0, (size_t)pn * sizeof *rows);
                }
                gpo_q8_0x16_pack(dst + (size_t)g * GPO_Q8X16_ROWS * pb, part, GPO_Q8X16_ROWS, P->qd);
            }
            free(rows);
        } else {
#pragma omp parallel for schedule(static) num_threads(x->n_threads)
            for (int64_t r = 0; r < W->rows; r++)
                memcpy(dst + (size_t)r * pb, src + (size_t)r * rb + c0, pb);
        }
        x->wo_pack[l] = (struct gpo_tview){dst, W->dtype, W->rows, P->qd};
        dst += (size_t)W->rows * pb;
    }
    x->wo_bytes = total;
    gpo_log(GPO_LOG_INFO, "packed wo: %.1f MiB (columns [%lld, %lld) of every layer)",
            (double)total / 1048576.0, (long long)col0, (long long)(col0 + P->qd));
    return GPO_OK;
}

void gpo_attn_free_wo(struct gpo_ctx *x) {
    gpo_aligned_free(x->wo_buf);
    free(x->wo_pack);
    x->wo_buf = NULL;
    x->wo_pack = NULL;
    x->wo_bytes = 0;
}

uint64_t gpo_ctx_wo_packed_bytes(const gpo_ctx *x) { return x->wo_bytes; }

void gpo_attn_out(struct gpo_ctx *x, struct thr_stat *ts, const struct gpo_layer *L, int64_t n_tok) {
    const struct fwd_part *P = &x->part;
    const int64_t H = x->m->cfg.n_embd;
    /* The part's own matrix when it has some of the heads, else wo as stored (its
     * columns are all the part's).  L is one of the model's layers. */
    const struct gpo_tview *W = x->wo_pack ? &x->wo_pack[L - x->m->layers] : &L->wo;
    int64_t r0, r1;
    struct fwd_claim *cl = gpo_fwd_claim_of(x, L - x->m->layers, CLAIM_OUT);
    while (gpo_fwd_claim(cl, W->rows, 16, 64, &r0, &r1)) {
        const gpo_matmul_q8_0_q16s_fn q16s = GPO_FWD_INT_KERNEL(x, W->dtype, q16s);
        if (q16s)
            q16s(x->o, H, W->data, x->attq16s, P->qd / 32, n_tok, r0, r1, W->cols);
        else
            /* f32 activations on both paths: rounding them to bf16 here as well as
             * for q/k/v took the fast path past the bf16 reference's max |dlogit| on
             * the golden fixture (0.56 against 0.50; either one alone: 0.16). */
            x->k->matmul[W->dtype](x->o, H, W->data, x->att, P->qd, n_tok, r0, r1, W->cols);
        if (!P->sharded)
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = r0; r < r1; r++) x->o[t * H + r] += gpo_tview_get(&L->bo, r);
    }
    gpo_fwd_barrier(ts);
}
