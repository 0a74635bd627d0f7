/* forward.c - the transformer forward pass over a token batch, read top to bottom
 * like the spec (section 2): embed -> per layer (the attention block of
 * attention.c, residual; the MoE block of moe.c, residual) -> final norm ->
 * unembedding.  All tuning lives in the kernels; this file only schedules the
 * blocks over threads (one OpenMP team for the whole pass) and, for a rank's
 * shard of a multi-rank mesh (mesh.h), sums the shards' partial results between
 * sweeps. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "forward_impl.h"
#include "kvcache.h"
#include "model.h"
#include "util.h"

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

/* ------------------------------------------------------------------------- */
/* Context                                                                   */

/* What this context computes: the whole model, or the shard's heads, experts and
 * vocabulary rows, checked against the model so a wrong plan fails here. */
static enum gpo_status part_of(const struct gpo_config *c, const struct gpo_mesh_shard *s,
                               const struct gpo_mesh_groups *g, struct fwd_part *P) {
    const int64_t G = c->n_head / c->n_head_kv, D = c->head_dim;
    *P = (struct fwd_part){.n_head = c->n_head, .n_head_kv = c->n_head_kv, .expert1 = c->n_expert,
                           .vocab1 = c->n_vocab};
    if (s) {
        if (s->kv_head0 < 0 || s->kv_head1 > c->n_head_kv || s->kv_head1 <= s->kv_head0 ||
            s->head0 != s->kv_head0 * G || s->head1 != s->kv_head1 * G)
            return gpo_fail(GPO_ERR_ARG, "shard KV heads [%lld, %lld) and query heads [%lld, %lld) "
                            "do not fit the model's %lld KV heads of %lld query heads each",
                            (long long)s->kv_head0, (long long)s->kv_head1, (long long)s->head0,
                            (long long)s->head1, (long long)c->n_head_kv, (long long)G);
        if (s->expert0 < 0 || s->expert1 > c->n_expert || s->expert1 <= s->expert0)
            return gpo_fail(GPO_ERR_ARG, "shard experts [%lld, %lld) are not within the model's %lld",
                            (long long)s->expert0, (long long)s->expert1, (long long)c->n_expert);
        if (s->vocab0 < 0 || s->vocab1 > c->n_vocab || s->vocab1 < s->vocab0)
            return gpo_fail(GPO_ERR_ARG, "shard vocabulary rows [%lld, %lld) are not within the "
                            "model's %lld", (long long)s->vocab0, (long long)s->vocab1,
                            (long long)c->n_vocab);
        *P = (struct fwd_part){.sharded = 1, .head0 = s->head0, .n_head = s->head1 - s->head0,
                               .kv_head0 = s->kv_head0, .n_head_kv = s->kv_head1 - s->kv_head0,
                               .expert0 = s->expert0, .expert1 = s->expert1,
                               .vocab0 = s->vocab0, .vocab1 = s->vocab1};
        if (g) {
            P->model = g->model;
            P->tp = g->tp;
            P->ep = g->ep;
        }
    }
    P->qd = P->n_head * D;
    P->kvd = P->n_head_kv * D;
    return GPO_OK;
}

static void *xalloc(size_t n, int *fail) {
    void *p = gpo_aligned_alloc(n);
    if (!p) *fail = 1;
    else memset(p, 0, n);
    return p;
}

/* Whether a q, k, v or output projection or the unembedding is stored as Q8_0 (1),
 * some of them repacked as Q8_0x16 (2). */
static int has_q8_0_dense(const struct gpo_model *m) {
    int any = 0;
    for (int64_t l = 0; l <= m->cfg.n_layer; l++) {
        const struct gpo_tview *v[4] = {&m->unembedding};
        if (l < m->cfg.n_layer) {
            const struct gpo_layer *L = &m->layers[l];
            v[0] = &L->wq, v[1] = &L->wk, v[2] = &L->wv, v[3] = &L->wo;
        }
        for (int i = 0; i < 4 && v[i]; i++) {
            if (v[i]->dtype == GPO_DT_Q8_0X16) return 2;
            if (v[i]->dtype == GPO_DT_Q8_0) any = 1;
        }
    }
    return any;
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
    struct fwd_part part;
    GPO_TRY(part_of(c, o.shard, o.groups, &part));
    /* The expert loop trusts the layer views: check them once here, and that they
     * hold the experts this context runs. */
    for (int64_t l = 0; l < c->n_layer; l++) {
        GPO_TRY(gpo_layer_check_experts(&m->layers[l], l, c));
        GPO_TRY(gpo_layer_holds_experts(&m->layers[l], part.expert0, part.expert1));
    }
    struct gpo_ctx *x = calloc(1, sizeof *x);
    if (!x) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    x->m = m;
    x->part = part;
    x->path = o.path;
    x->n_threads = o.n_threads;
    x->stats.n_threads = o.n_threads;
    x->max_tokens = o.max_tokens;
    x->max_seqs = o.max_seqs;
    const struct gpo_kernels *sel = o.path == GPO_PATH_REF ? gpo_kernels_ref() : gpo_kernels_chosen();
    /* A SIMD table may leave an operation to the reference. */
    x->ktab = *sel;
    gpo_kernels_complete(&x->ktab);
    x->k = &x->ktab;

    const size_t T = (size_t)o.max_tokens, H = (size_t)c->n_embd, E = (size_t)c->n_expert,
                 K = (size_t)c->n_expert_used, F = (size_t)c->n_ff, D = (size_t)c->head_dim,
                 QD = (size_t)part.qd, KVD = (size_t)part.kvd,
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
    /* Integer activations for Q8_0 dense matrices (and Q8_0x16 ones when the table
     * has their kernels; else all of them take f32 activations). */
    const int q8 = has_q8_0_dense(m);
    x->dq = o.path == GPO_PATH_FAST && x->ktab.matmul_q8_0_q8 && x->ktab.matmul_q8_0_q16s &&
            (q8 == 1 || (x->ktab.matmul_q8_0x16_q8 && x->ktab.matmul_q8_0x16_q16s)) &&
            H % 32 == 0 && QD % 32 == 0 && D % 32 == 0 && q8;
    if (x->dq) {
        x->tq16s = xalloc(T * (H / 32) * sizeof(struct gpo_q16s_block), &fail);
        x->attq16s = xalloc(T * (QD / 32) * sizeof(struct gpo_q16s_block), &fail);
        x->tq8 = xalloc(T * (H / 32) * sizeof(struct gpo_q8_block), &fail);
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
    x->ascratch = xalloc((size_t)o.n_threads * ATTN_SCRATCH(D) * 4, &fail);
    x->tstat = xalloc((size_t)o.n_threads * sizeof *x->tstat, &fail);
    x->n_claims = (int64_t)c->n_layer * CLAIMS_PER_LAYER + 1;
    x->claim = xalloc((size_t)x->n_claims * sizeof *x->claim, &fail);
    if (fail) {
        gpo_ctx_free(x);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate forward buffers for %zu tokens", T);
    }
    gpo_rope_inv_freq(c, x->inv_freq, &x->concentration);
    enum gpo_status ps = gpo_attn_pack_wo(x);
    if (ps != GPO_OK) {
        gpo_ctx_free(x);
        return ps;
    }
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
                    x->g_run,    x->tq16s,  x->attq16s, x->tq8,     x->claim};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gpo_aligned_free(bufs[i]);
    gpo_attn_free_wo(x);
    free(x->lg);
    free(x->lg_pack);
    free(x->cd_pack);
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

void gpo_fwd_share(int64_t n, int64_t *i0, int64_t *i1) {
    int nth = omp_get_num_threads(), tid = omp_get_thread_num();
    int64_t chunk = (n + nth - 1) / nth;
    *i0 = gpo_min_i64(n, (int64_t)tid * chunk);
    *i1 = gpo_min_i64(n, *i0 + chunk);
}

int gpo_fwd_claim(struct fwd_claim *c, int64_t n, int64_t align, int64_t min_chunk, int64_t *a,
                  int64_t *b) {
    const int64_t nth = omp_get_num_threads();
    int64_t cur = atomic_load_explicit(&c->next, memory_order_relaxed);
    for (;;) {
        if (cur >= n) return 0;
        int64_t len = gpo_max_i64((n - cur + 2 * nth - 1) / (2 * nth), min_chunk);
        int64_t end = (cur + len + align - 1) / align * align;
        end = gpo_min_i64(end, n);
        if (atomic_compare_exchange_weak_explicit(&c->next, &cur, end, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *a = cur;
            *b = end;
            return 1;
        }
    }
}

struct fwd_claim *gpo_fwd_claim_of(struct gpo_ctx *x, int64_t l, int which) {
    return &x->claim[l * CLAIMS_PER_LAYER + (l < x->m->cfg.n_layer ? which : 0)];
}

void gpo_fwd_barrier(struct thr_stat *ts) {
    double t0 = omp_get_wtime();
#pragma omp barrier
    ts->wait += omp_get_wtime() - t0;
    ts->n++;
}

struct gpo_tview gpo_fwd_row_view(const struct gpo_tview *W, int64_t r0, int64_t n) {
    struct gpo_tview v = *W;
    v.data = (const uint8_t *)W->data + (size_t)r0 * gpo_tview_row_bytes(W);
    v.rows = n;
    return v;
}

/* ------------------------------------------------------------------------- */
/* Collectives of a shard                                                    */

/* The sum of every member's buf over group g, made by the team's master thread
 * while the others wait at the barrier that ends it (one thread communicates at a
 * time: MPI_THREAD_SERIALIZED).  A failure stops the layers; its message stays for
 * the caller. */
static void team_reduce(struct thr_stat *ts, const gpo_dist_comm *g, float *buf,
                        size_t n, enum gpo_status *dist_st, volatile int *aborted) {
    if (omp_get_thread_num() == 0 && *dist_st == GPO_OK) {
        *dist_st = gpo_dist_allreduce_sum(g, buf, n);
        if (*dist_st != GPO_OK) *aborted = 1;
    }
    gpo_fwd_barrier(ts);
}

/* Room for n floats in *buf (grown, never shrunk). */
static enum gpo_status reserve_floats(float **buf, size_t *cap, size_t n) {
    if (n <= *cap) return GPO_OK;
    float *p = realloc(*buf, n * sizeof *p);
    if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory for %zu logits", n);
    *buf = p;
    *cap = n;
    return GPO_OK;
}

static int64_t cand_k(const struct gpo_fwd_cands *fc, int64_t t) { return fc ? fc->k[t] : 0; }

/* Candidate rows travel as one header entry (id: the sender's count of finite
 * logits in the row) and k entries, the sender's min(k, n_finite) best first
 * and zeros after them. */
static void pack_cands(const struct gpo_ctx *x, const float *logits, int64_t n_out,
                       const struct gpo_fwd_cands *fc, int64_t v0, int64_t nv, struct gpo_cand *out) {
    const int64_t V = x->m->cfg.n_vocab;
    for (int64_t t = 0; t < n_out; t++) {
        const int64_t k = cand_k(fc, t);
        if (k == 0) continue;
        int64_t nf;
        int64_t m = gpo_cand_select(logits + t * V + v0, nv, v0, fc->banned, k, out + 1, &nf);
        out[0] = (struct gpo_cand){0.0f, (int32_t)nf};
        memset(out + 1 + m, 0, (size_t)(k - m) * sizeof *out);
        out += 1 + k;
    }
}

/* The leader's rows: each candidate row merged with one sender's packed list
 * (both best first), keeping the k best. */
static void merge_cands(int64_t n_out, const struct gpo_fwd_cands *fc, const struct gpo_cand *in) {
    struct gpo_cand keep[GPO_CAND_MAX];
    for (int64_t t = 0; t < n_out; t++) {
        const int64_t k = cand_k(fc, t);
        if (k == 0) continue;
        const int64_t nf = in[0].id, m = nf < k ? nf : k;
        struct gpo_cand *c = fc->c + t * GPO_CAND_MAX;
        const struct gpo_cand *o = in + 1;
        int64_t i = 0, j = 0, n = 0;
        while (n < k && (i < fc->n[t] || j < m))
            keep[n++] = j == m || (i < fc->n[t] && gpo_cand_better(&c[i], &o[j])) ? c[i++] : o[j++];
        memcpy(c, keep, (size_t)n * sizeof *c);
        fc->n[t] = (int32_t)n;
        fc->n_finite[t] += nf;
        in += 1 + k;
    }
}

/* The n_out output rows of a shard: member j broadcasts its vocabulary range,
 * then its columns of the whole rows (packed) to every member, then its
 * candidates of the other rows, which member 0 (the one that samples) merges. */
static enum gpo_status gather_logits(struct gpo_ctx *x, float *logits, int64_t n_out,
                                     const struct gpo_fwd_cands *fc) {
    const struct fwd_part *P = &x->part;
    const int64_t V = x->m->cfg.n_vocab;
    const int n = gpo_dist_comm_size(P->model), me = gpo_dist_comm_rank(P->model);
    int64_t n_whole = 0, n_cand = 0;
    for (int64_t t = 0; t < n_out; t++) {
        n_whole += cand_k(fc, t) == 0;
        n_cand += cand_k(fc, t) > 0 ? 1 + cand_k(fc, t) : 0;
    }
    if (n_cand > 0) {
        if (x->cd_pack_cap < (size_t)n_cand) {
            struct gpo_cand *p = realloc(x->cd_pack, (size_t)n_cand * sizeof *p);
            if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory for %lld candidates", (long long)n_cand);
            x->cd_pack = p;
            x->cd_pack_cap = (size_t)n_cand;
        }
        for (int64_t t = 0; me == 0 && t < n_out; t++) {
            fc->n[t] = 0;
            fc->n_finite[t] = 0;
        }
    }
    for (int j = 0; j < n; j++) {
        int64_t range[2] = {P->vocab0, P->vocab1};
        GPO_TRY(gpo_dist_bcast(P->model, range, sizeof range, j));
        const int64_t v0 = range[0], nv = range[1] - range[0];
        if (v0 < 0 || nv < 0 || range[1] > V)
            return gpo_fail(GPO_ERR_INTERNAL, "rank %d of the model group holds vocabulary rows "
                            "[%lld, %lld), outside the %lld of the model", j, (long long)v0,
                            (long long)range[1], (long long)V);
        if (n_whole > 0) {
            const size_t cnt = (size_t)n_whole * (size_t)nv;
            GPO_TRY(reserve_floats(&x->lg_pack, &x->lg_pack_cap, cnt));
            float *pk = x->lg_pack;
            for (int64_t t = 0; j == me && t < n_out; t++) {
                if (cand_k(fc, t) > 0) continue;
                memcpy(pk, logits + t * V + v0, (size_t)nv * sizeof *pk);
                pk += nv;
            }
            GPO_TRY(gpo_dist_bcast(P->model, x->lg_pack, cnt * sizeof *logits, j));
            pk = x->lg_pack;
            for (int64_t t = 0; j != me && t < n_out; t++) {
                if (cand_k(fc, t) > 0) continue;
                memcpy(logits + t * V + v0, pk, (size_t)nv * sizeof *pk);
                pk += nv;
            }
        }
        if (n_cand > 0) {
            if (j == me) pack_cands(x, logits, n_out, fc, v0, nv, x->cd_pack);
            GPO_TRY(gpo_dist_bcast(P->model, x->cd_pack, (size_t)n_cand * sizeof *x->cd_pack, j));
            if (me == 0) merge_cands(n_out, fc, x->cd_pack);
        }
    }
    return GPO_OK;
}

/* A whole-model pass's candidate rows, chosen from its whole rows. */
static void local_cands(struct gpo_ctx *x, const float *logits, int64_t n_out,
                        const struct gpo_fwd_cands *fc) {
    const int64_t V = x->m->cfg.n_vocab;
    for (int64_t t = 0; t < n_out; t++) {
        if (cand_k(fc, t) == 0) continue;
        fc->n[t] = (int32_t)gpo_cand_select(logits + t * V, V, 0, fc->banned, cand_k(fc, t),
                                            fc->c + t * GPO_CAND_MAX, &fc->n_finite[t]);
    }
}

/* ------------------------------------------------------------------------- */
/* The pass                                                                  */

static void trace(const struct gpo_ctx *x, enum gpo_trace_point pt, int64_t l, int64_t tok,
                  const void *data, int64_t n) {
    if (x->trace) x->trace(x->trace_user, pt, l, tok, data, n);
}

/* Token i's embedding row into the residual. */
static void embed_row(struct gpo_ctx *x, int64_t i) {
    const struct gpo_tview *E = &x->m->embedding;
    const int64_t H = x->m->cfg.n_embd;
    gpo_to_f32(x->x + i * H, (const uint8_t *)E->data + (size_t)x->tok_id[i] * gpo_tview_row_bytes(E),
               E->dtype, H);
}

/* A shard's embedding: the rows of its vocabulary, zeros for the others, summed
 * over the model group, where exactly one member holds each token's row. */
static enum gpo_status embed_shard(struct gpo_ctx *x, int64_t n_tok) {
    const struct fwd_part *P = &x->part;
    const int64_t H = x->m->cfg.n_embd;
    for (int64_t i = 0; i < n_tok; i++) {
        if (x->tok_id[i] >= P->vocab0 && x->tok_id[i] < P->vocab1) embed_row(x, i);
        else memset(x->x + i * H, 0, (size_t)H * sizeof *x->x);
    }
    return gpo_dist_allreduce_sum(P->model, x->x, (size_t)(n_tok * H));
}

/* Row j of x->t quantised for the Q8_0 dense matrices (when dq): for q, k and v
 * (int16, split) or for the unembedding (int8, offset). */
static void quant_t(struct gpo_ctx *x, int64_t j, int unembed) {
    if (!x->dq) return;
    const int64_t H = x->m->cfg.n_embd;
    if (unembed) {
        struct gpo_q8_block *q = x->tq8 + j * (H / 32);
        x->k->quantize_q8(q, x->t + j * H, H);
        gpo_q8_offset(q, H / 32);
    } else {
        gpo_quantize_q16s(x->k, x->tq16s + j * (H / 32), x->t + j * H, H);
    }
}

/* Token i after the MoE block: the residual, then the next layer's attention norm
 * (after the last layer the final norm of a row whose logits are wanted). */
static void moe_residual(struct gpo_ctx *x, const struct gpo_layer *next, int64_t i) {
    const struct gpo_model *m = x->m;
    const int64_t H = m->cfg.n_embd;
    float *xi = x->x + i * H;
    const float *y = x->y + i * H;
    for (int64_t d = 0; d < H; d++) xi[d] += y[d];
    if (next) {
        gpo_rmsnorm(x->t + i * H, xi, &next->attn_norm, H, m->cfg.rms_eps);
        quant_t(x, i, 0);
    } else if (x->out_idx[i] >= 0) {
        gpo_rmsnorm(x->t + x->out_idx[i] * H, xi, &m->final_norm, H, m->cfg.rms_eps);
        quant_t(x, x->out_idx[i], 1);
    }
}

enum gpo_status gpo_forward(gpo_ctx *x, const struct gpo_seq_batch *seqs, int64_t n_seqs,
                            float *logits) {
    return gpo_forward_cands(x, seqs, n_seqs, logits, NULL);
}

enum gpo_status gpo_forward_cands(gpo_ctx *x, const struct gpo_seq_batch *seqs, int64_t n_seqs,
                                  float *logits, const struct gpo_fwd_cands *fc) {
    const struct gpo_model *m = x->m;
    const struct gpo_config *c = &m->cfg;
    const struct fwd_part *P = &x->part;
    const int64_t H = c->n_embd, D = c->head_dim, KVD = P->kvd, E = c->n_expert,
                  K = c->n_expert_used, V = c->n_vocab, T = x->max_tokens, half = D / 2;
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
            st = gpo_fail(GPO_ERR_ARG, "sequence %lld: KV cache of %lld floats per position was "
                          "made for another model or shard (this context's: %lld)", (long long)s,
                          (long long)b->kv->kv_dim, (long long)KVD);
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
    for (int64_t t = 0; t < n_out; t++)
        if (cand_k(fc, t) < 0 || cand_k(fc, t) > GPO_CAND_MAX) {
            st = gpo_fail(GPO_ERR_ARG, "output row %lld asks for %d sampling candidates; 0..%d",
                          (long long)t, fc->k[t], GPO_CAND_MAX);
            goto done;
        }
    if (n_out > 0 && !logits) {
        /* A shard's other ranks need room for the gathered rows even when their
         * caller keeps no logits, and candidates are chosen from rows. */
        if (!P->sharded && !fc) {
            st = gpo_fail(GPO_ERR_ARG, "logits requested but no output buffer given");
            goto done;
        }
        if ((st = reserve_floats(&x->lg, &x->lg_cap, (size_t)n_out * (size_t)V)) != GPO_OK) goto done;
        logits = x->lg;
    }
    if (n_tok == 0) goto done;
    if (P->sharded && (st = embed_shard(x, n_tok)) != GPO_OK) goto done;

    volatile int aborted = 0;
    enum gpo_status dist_st = GPO_OK;
    /* Every rank of a shard must run every collective: only the whole-model pass
     * stops between layers. */
    volatile sig_atomic_t *abort_flag = P->sharded ? NULL : x->abort_flag;
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
     * depend on the thread count or on the batch (the kernels' contract).
     *
     * A shard computes its heads, experts and vocabulary rows only.  Its embedding
     * is summed over the model group before the region; in each layer the master
     * thread sums the partial output projections over the TP group after sweep 3
     * (bo added once, after the sum) and sweep 7 splits around the sum of the
     * partial expert sums over the EP group: three more barriers per layer, and the
     * logit rows are gathered after the region. */
    for (int i = 0; i < x->n_threads; i++) x->tstat[i] = (struct thr_stat){0};
    for (int64_t i = 0; i < x->n_claims; i++) atomic_init(&x->claim[i].next, 0);
    int team = 1;
    const double t_start = omp_get_wtime();
#pragma omp parallel num_threads(x->n_threads)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        int64_t r0, r1, i0, i1;
        float *ascr = x->ascratch + (size_t)tid * ATTN_SCRATCH(D);
        struct thr_stat *ts = &x->tstat[tid];
        struct moe_thread mt;
        gpo_moe_thread(x, tid, &mt);
        if (tid == 0) team = nth;

        /* Embedding, RoPE tables, layer 0's attention norm. */
        gpo_fwd_share(n_tok, &i0, &i1);
        for (int64_t i = i0; i < i1; i++) {
            if (!P->sharded) embed_row(x, i);
            float *cv = x->cs + i * D, *sv = cv + half;
            for (int64_t j = 0; j < half; j++) {
                float th = (float)x->tok_pos[i] * x->inv_freq[j];
                cv[j] = cosf(th) * x->concentration;
                sv[j] = sinf(th) * x->concentration;
            }
            if (c->n_layer > 0) {
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &m->layers[0].attn_norm, H, c->rms_eps);
                quant_t(x, i, 0);
            } else if (x->out_idx[i] >= 0) {
                gpo_rmsnorm(x->t + x->out_idx[i] * H, x->x + i * H, &m->final_norm, H, c->rms_eps);
                quant_t(x, x->out_idx[i], 1);
            }
        }
        gpo_fwd_barrier(ts);
        /* Traces read what the sweeps after them no longer write. */
        if (tid == 0 && x->trace)
            for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_EMBED, -1, i, x->x + i * H, H);

        for (int64_t l = 0; l < c->n_layer && !aborted; l++) {
            const struct gpo_layer *L = &m->layers[l];

            /* 1-3. The attention block: q, k, v with RoPE; attention; the output
             * projection (ends with its barrier), summed over the TP group. */
            gpo_attn_qkv(x, L, l, n_tok);
            gpo_fwd_barrier(ts);
            gpo_attn_heads(x, L, si, l, n_tok, ascr);
            gpo_fwd_barrier(ts);
            gpo_attn_out(x, ts, L, n_tok);
            if (P->sharded) team_reduce(ts, P->tp, x->o, (size_t)(n_tok * H), &dist_st, &aborted);

            /* 4. Per token: residual, norm, router logits and top-k (softmax over the
             * k selected).  The router runs on this thread's tokens at once. */
            gpo_fwd_share(n_tok, &i0, &i1);
            for (int64_t i = i0; i < i1; i++) {
                if (P->sharded)
                    for (int64_t d = 0; d < H; d++) x->o[i * H + d] += gpo_tview_get(&L->bo, d);
                for (int64_t d = 0; d < H; d++) x->x[i * H + d] += x->o[i * H + d];
                gpo_rmsnorm(x->t + i * H, x->x + i * H, &L->mlp_norm, H, c->rms_eps);
                if (fast) k->quantize_q16(x->tq + i * (H / 32), x->t + i * H, H);
            }
            gpo_moe_route(x, L, i0, i1);
            gpo_fwd_barrier(ts);
            if (tid == 0 && x->trace)
                for (int64_t i = 0; i < n_tok; i++) {
                    trace(x, GPO_TRACE_ATTN_RESIDUAL, l, i, x->x + i * H, H);
                    trace(x, GPO_TRACE_ROUTER_LOGITS, l, i, x->rl + i * E, E);
                    trace(x, GPO_TRACE_EXPERTS, l, i, x->sel + i * K, K);
                    trace(x, GPO_TRACE_EXPERT_WEIGHTS, l, i, x->selw + i * K, K);
                }

            /* 5-6. The MoE block's experts: up projection with SwiGLU, down
             * projection (each ends with its barrier). */
            gpo_moe_group(x, &mt, n_tok);
            gpo_moe_up(x, ts, &mt, L);
            gpo_moe_down(x, ts, &mt, L);

            /* 7. Per token: its experts' outputs weighted, summed in ascending expert
             * order (a shard's partial sums then summed over the EP group), then the
             * residual; and the next norm. */
            const struct gpo_layer *next = l + 1 < c->n_layer ? &m->layers[l + 1] : NULL;
            gpo_fwd_share(n_tok, &i0, &i1);
            for (int64_t i = i0; i < i1; i++) {
                gpo_moe_combine(x, &mt, i);
                if (!P->sharded) moe_residual(x, next, i);
            }
            if (P->sharded) {
                gpo_fwd_barrier(ts);
                team_reduce(ts, P->ep, x->y, (size_t)(n_tok * H), &dist_st, &aborted);
                for (int64_t i = i0; i < i1; i++) moe_residual(x, next, i);
            }
            /* Everybody reads `aborted` after the barrier, before tid 0 can write it again. */
            if (tid == 0 && abort_flag && *abort_flag) aborted = 1;
            gpo_fwd_barrier(ts);
            if (tid == 0 && x->trace)
                for (int64_t i = 0; i < n_tok; i++) trace(x, GPO_TRACE_BLOCK_RESIDUAL, l, i, x->x + i * H, H);
        }

        /* The unembedding of the part's vocabulary rows of the rows whose logits are
         * wanted (normed above); the end of the region is its barrier. */
        if (!aborted && n_out > 0) {
            const struct gpo_tview *W = &m->unembedding;
            /* The fast path rounds the normed rows to bf16 for BF16 weights, as for
             * q, k and v (GPO_FWD_F32_KERNEL).  A Q8_0 unembedding takes int8
             * activations (q/k/v and the output projection take int16 ones, see
             * attention.c) through 16-row vpdpbusd tiles, about 2.5x the f32
             * kernel's rate at 8 tokens, within test_golden's --dense q8 bounds. */
            const gpo_matmul_fn mm = GPO_FWD_F32_KERNEL(x, W->dtype);
            const gpo_matmul_q8_0_q8_fn q8 = GPO_FWD_INT_KERNEL(x, W->dtype, q8);
            struct fwd_claim *cl = gpo_fwd_claim_of(x, c->n_layer, 0);
            while (gpo_fwd_claim(cl, P->vocab1 - P->vocab0, 16, 256, &r0, &r1)) {
                r0 += P->vocab0;
                r1 += P->vocab0;
                if (q8)
                    q8(logits, V, W->data, x->tq8, H / 32, n_out, r0, r1, W->cols);
                else
                    mm(logits, V, W->data, x->t, H, n_out, r0, r1, W->cols);
            }
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
    if (dist_st != GPO_OK) {
        st = dist_st; /* the collective's message names the rank and peer */
        goto done;
    }
    if (aborted) {
        st = gpo_fail(GPO_ERR_ABORTED, "forward pass aborted");
        goto done;
    }
    if (P->sharded && n_out > 0 && (st = gather_logits(x, logits, n_out, fc)) != GPO_OK) goto done;
    if (!P->sharded && fc) local_cands(x, logits, n_out, fc);

    /* Commit the new keys and values; a sliding ring only keeps its last slots. */
    for (int64_t s = 0; s < n_seqs; s++) {
        struct gpo_kv *kv = seqs[s].kv;
        const int64_t n = seqs[s].n_tokens, p0 = si[s].p0;
        for (int64_t l = 0; l < c->n_layer; l++) {
            int64_t first = kv->sliding[l] ? gpo_max_i64(0, n - kv->ring) : 0;
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
