/* mesh.c - the multi-rank plan (mesh.h): valid and default meshes, each rank's
 * head, expert and vocabulary ranges, and its resident weight bytes from the
 * weights' element types and shapes. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh.h"
#include "model.h"
#include "util.h"

/* Bytes of n values of a dense type (gpo_dense_bytes). */
static uint64_t elem_bytes(enum gpo_dtype dt, int64_t n) { return (uint64_t)gpo_dense_bytes(dt, n); }

static uint64_t view_bytes(const struct gpo_tview *v) {
    return (uint64_t)v->rows * gpo_tview_row_bytes(v);
}

/* One expert of an expert projection: MXFP4 blocks of 32 values in 17 bytes
 * (16 code bytes and one scale, split or in GGML's blocks), and its bias. */
static uint64_t xmat_expert_bytes(const struct gpo_xmat *x) {
    return (uint64_t)x->rows * (uint64_t)(x->cols / 32) * 17 + elem_bytes(x->bias.dtype, x->rows);
}

void gpo_mesh_weights_of_model(const gpo_model *model, struct gpo_mesh_weights *w) {
    const struct gpo_config *c = &model->cfg;
    const int64_t G = c->n_head / c->n_head_kv, D = c->head_dim, H = c->n_embd;
    memset(w, 0, sizeof *w);
    w->embedding_row = gpo_tview_row_bytes(&model->embedding);
    w->unembedding_row = gpo_tview_row_bytes(&model->unembedding);
    w->final_norm = view_bytes(&model->final_norm);
    for (int64_t l = 0; l < c->n_layer; l++) {
        const struct gpo_layer *L = &model->layers[l];
        w->layer_replicated[l] = view_bytes(&L->attn_norm) + view_bytes(&L->bo) +
                                 view_bytes(&L->mlp_norm) + view_bytes(&L->router_w) +
                                 view_bytes(&L->router_b);
        w->layer_kv_head[l] = (uint64_t)(G * D) * gpo_tview_row_bytes(&L->wq) +
                              (uint64_t)D * (gpo_tview_row_bytes(&L->wk) + gpo_tview_row_bytes(&L->wv)) +
                              elem_bytes(L->bq.dtype, G * D) + elem_bytes(L->bk.dtype, D) +
                              elem_bytes(L->bv.dtype, D) + elem_bytes(L->sinks.dtype, G) +
                              (uint64_t)H * elem_bytes(L->wo.dtype, G * D);
        w->layer_wo_kv_head[l] = (uint64_t)H * elem_bytes(L->wo.dtype, G * D);
        w->layer_expert[l] = xmat_expert_bytes(&L->mlp1[0]) + xmat_expert_bytes(&L->mlp2);
        if (L->gate_up == GPO_GATE_UP_SEPARATE) w->layer_expert[l] += xmat_expert_bytes(&L->mlp1[1]);
    }
}

void gpo_mesh_weights_of_config(const struct gpo_config *c, struct gpo_mesh_weights *w) {
    const uint64_t bf = 2, G = (uint64_t)(c->n_head / c->n_head_kv), D = (uint64_t)c->head_dim;
    const uint64_t H = (uint64_t)c->n_embd, E = (uint64_t)c->n_expert, F = (uint64_t)c->n_ff;
    memset(w, 0, sizeof *w);
    w->embedding_row = w->unembedding_row = H * bf;
    w->final_norm = H * bf;
    for (int64_t l = 0; l < c->n_layer; l++) {
        /* attn norm, bo, mlp norm; router weight and bias */
        w->layer_replicated[l] = 3 * H * bf + E * H * bf + E * bf;
        /* q rows (G heads) and k, v rows with their biases, G sinks, wo columns */
        w->layer_kv_head[l] = (G * D + 2 * D) * (H + 1) * bf + G * bf + H * G * D * bf;
        w->layer_wo_kv_head[l] = H * G * D * bf;
        /* gate+up (2F rows of H) and down (H rows of F): 17 bytes per 32 values */
        w->layer_expert[l] = 2 * F * (H / 32) * 17 + 2 * F * bf + H * (F / 32) * 17 + H * bf;
    }
}

uint64_t gpo_mesh_weights_total(const struct gpo_config *c, const struct gpo_mesh_weights *w) {
    uint64_t t = (w->embedding_row + w->unembedding_row) * (uint64_t)c->n_vocab + w->final_norm;
    for (int64_t l = 0; l < c->n_layer; l++)
        t += w->layer_replicated[l] + w->layer_kv_head[l] * (uint64_t)c->n_head_kv +
             w->layer_expert[l] * (uint64_t)c->n_expert;
    return t;
}

static int fits(const struct gpo_config *c, int tp, int ep) {
    return tp >= 1 && ep >= 1 && c->n_head_kv % tp == 0 && c->n_expert % ep == 0;
}

size_t gpo_mesh_list(const struct gpo_config *c, int n_ranks, struct gpo_mesh *out, size_t cap) {
    size_t n = 0;
    for (int tp = 1; tp <= n_ranks && tp <= c->n_head_kv; tp++)
        for (int ep = 1; (int64_t)tp * ep <= n_ranks && ep <= c->n_expert; ep++) {
            if (!fits(c, tp, ep) || n_ranks % (tp * ep)) continue;
            if (n < cap) out[n] = (struct gpo_mesh){tp, ep, n_ranks / (tp * ep)};
            n++;
        }
    return n;
}

/* "1x1 --dp 4, 1x2 --dp 2, 1x4 --dp 1" into buf. */
static void list_text(const struct gpo_config *c, int n_ranks, char *buf, size_t cap) {
    struct gpo_mesh ms[64];
    size_t n = gpo_mesh_list(c, n_ranks, ms, sizeof ms / sizeof *ms), used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && i < sizeof ms / sizeof *ms && used + 1 < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%dx%d --dp %d", i ? ", " : "", ms[i].tp,
                                 ms[i].ep, ms[i].dp);
    if (n > sizeof ms / sizeof *ms && used + 1 < cap) snprintf(buf + used, cap - used, ", ...");
}

enum gpo_status gpo_mesh_validate(const struct gpo_config *c, const struct gpo_mesh *m, int n_ranks) {
    if (n_ranks < 1 || n_ranks > GPO_MESH_MAX_RANKS)
        return gpo_fail(GPO_ERR_ARG, "the number of ranks must be in [1, %d], not %d", GPO_MESH_MAX_RANKS,
                        n_ranks);
    char why[160] = "";
    if (m->tp < 1 || m->ep < 1 || m->dp < 1)
        snprintf(why, sizeof why, "TP, EP and DP must be at least 1");
    else if (c->n_head_kv % m->tp)
        snprintf(why, sizeof why, "TP %d does not divide the %lld KV heads", m->tp, (long long)c->n_head_kv);
    else if (c->n_expert % m->ep)
        snprintf(why, sizeof why, "EP %d does not divide the %lld experts", m->ep, (long long)c->n_expert);
    else if ((int64_t)m->tp * m->ep * m->dp != n_ranks)
        snprintf(why, sizeof why, "TP x EP x DP = %lld, not the %d ranks", (long long)m->tp * m->ep * m->dp,
                 n_ranks);
    if (!why[0]) return GPO_OK;
    char valid[1024];
    list_text(c, n_ranks, valid, sizeof valid);
    return gpo_fail(GPO_ERR_ARG, "mesh %dx%d --dp %d does not fit: %s; valid meshes for %d rank%s and this model: %s",
                    m->tp, m->ep, m->dp, why, n_ranks, n_ranks == 1 ? "" : "s", valid);
}

enum gpo_status gpo_mesh_default(const struct gpo_config *c, int n_ranks, struct gpo_mesh *out) {
    if (n_ranks < 1 || n_ranks > GPO_MESH_MAX_RANKS)
        return gpo_fail(GPO_ERR_ARG, "the number of ranks must be in [1, %d], not %d", GPO_MESH_MAX_RANKS,
                        n_ranks);
    struct gpo_mesh best = {1, 1, n_ranks}, ms[256];
    size_t n = gpo_mesh_list(c, n_ranks, ms, sizeof ms / sizeof *ms);
    for (size_t i = 0; i < n && i < sizeof ms / sizeof *ms; i++) {
        int64_t size = (int64_t)ms[i].tp * ms[i].ep, best_size = (int64_t)best.tp * best.ep;
        if (size > best_size || (size == best_size && ms[i].ep > best.ep)) best = ms[i];
    }
    *out = best;
    return GPO_OK;
}

enum gpo_status gpo_mesh_parse(const char *s, struct gpo_mesh *out) {
    /* Digits only: strtol alone would take signs and spaces. */
    char *end;
    long tp = 0, ep = 0;
    int ok = isdigit((unsigned char)s[0]);
    if (ok) {
        tp = strtol(s, &end, 10);
        ok = (*end == 'x' || *end == 'X') && isdigit((unsigned char)end[1]);
    }
    if (ok) {
        ep = strtol(end + 1, &end, 10);
        ok = !*end;
    }
    if (!ok || tp < 1 || ep < 1 || tp > GPO_MESH_MAX_RANKS || ep > GPO_MESH_MAX_RANKS)
        return gpo_fail(GPO_ERR_ARG, "mesh must be TPxEP with both in [1, %d] (e.g. 2x4), not '%s'",
                        GPO_MESH_MAX_RANKS, s);
    *out = (struct gpo_mesh){(int)tp, (int)ep, 1};
    return GPO_OK;
}

/* Part `i` of `parts` equal ranges of [0, n): [*a, *b). */
static void split_range(int64_t n, int i, int parts, int64_t *a, int64_t *b) {
    *a = n * i / parts;
    *b = n * (i + 1) / parts;
}

void gpo_mesh_shard_of(const struct gpo_config *c, const struct gpo_mesh *m,
                       const struct gpo_mesh_weights *w, int rank, struct gpo_mesh_shard *s) {
    const int M = m->tp * m->ep;
    const int64_t G = c->n_head / c->n_head_kv, D = c->head_dim;
    memset(s, 0, sizeof *s);
    s->rank = rank;
    s->dp_rank = rank / M;
    s->model_rank = rank % M;
    s->ep_rank = s->model_rank / m->tp;
    s->tp_rank = s->model_rank % m->tp;
    split_range(c->n_head_kv, s->tp_rank, m->tp, &s->kv_head0, &s->kv_head1);
    s->head0 = s->kv_head0 * G;
    s->head1 = s->kv_head1 * G;
    s->q_row0 = s->head0 * D;
    s->q_row1 = s->head1 * D;
    s->kv_row0 = s->kv_head0 * D;
    s->kv_row1 = s->kv_head1 * D;
    split_range(c->n_expert, s->ep_rank, m->ep, &s->expert0, &s->expert1);
    split_range(c->n_vocab, s->model_rank, M, &s->vocab0, &s->vocab1);
    const uint64_t kv = (uint64_t)(s->kv_head1 - s->kv_head0), ne = (uint64_t)(s->expert1 - s->expert0);
    s->bytes_replicated = w->final_norm;
    for (int64_t l = 0; l < c->n_layer; l++) {
        s->bytes_replicated += w->layer_replicated[l];
        s->bytes_attention += w->layer_kv_head[l] * kv;
        s->bytes_experts += w->layer_expert[l] * ne;
        if (m->tp > 1) s->bytes_packed += w->layer_wo_kv_head[l] * kv;
    }
    s->bytes_vocab = (w->embedding_row + w->unembedding_row) * (uint64_t)(s->vocab1 - s->vocab0);
    s->bytes_embedding = w->embedding_row * (uint64_t)(s->vocab1 - s->vocab0);
    s->bytes_total = s->bytes_replicated + s->bytes_attention + s->bytes_experts + s->bytes_vocab +
                     s->bytes_packed;
}

enum gpo_status gpo_mesh_groups_open(const struct gpo_mesh *m, struct gpo_mesh_groups *g) {
    memset(g, 0, sizeof *g);
    const int n = gpo_dist_size(), r = gpo_dist_rank(), M = m->tp * m->ep;
    if ((int64_t)M * m->dp != n)
        return gpo_fail(GPO_ERR_ARG, "mesh %dx%d --dp %d needs %lld ranks, the job has %d", m->tp, m->ep,
                        m->dp, (long long)M * m->dp, n);
    const int dp = r / M, mr = r % M, ep = mr / m->tp, tp = mr % m->tp;
    enum gpo_status s = gpo_dist_split(NULL, dp, mr, &g->model);
    if (s == GPO_OK) s = gpo_dist_split(NULL, dp * m->ep + ep, tp, &g->tp);
    if (s == GPO_OK) s = gpo_dist_split(NULL, dp * m->tp + tp, ep, &g->ep);
    if (s == GPO_OK) s = gpo_dist_split(NULL, mr, dp, &g->dp);
    if (s != GPO_OK) gpo_mesh_groups_close(g);
    return s;
}

void gpo_mesh_groups_close(struct gpo_mesh_groups *g) {
    gpo_dist_comm_free(g->model);
    gpo_dist_comm_free(g->tp);
    gpo_dist_comm_free(g->ep);
    gpo_dist_comm_free(g->dp);
    memset(g, 0, sizeof *g);
}
