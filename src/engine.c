/* engine.c - the generation engine as a scheduler: requests are submitted at any
 * time and queued FIFO; each step takes free slots for queued requests (the slot
 * whose cache shares the longest prefix with the prompt), then runs one forward
 * pass holding one decode token per generating request and prompt chunks of the
 * others within the ubatch budget; logits are sampled per request, parsed as
 * harmony and checked against the stop rules.  Slots keep their KV cache so a
 * continued conversation only prefills from the first changed token.
 * gpo_engine_run is submit-all then step-until-idle, so there is one generation
 * loop.  A request's tokens do not depend on what else runs: the forward pass
 * gives the same bits whatever the batch and chunking, and each request samples
 * with its own RNG. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_policy.h"
#include "forward.h"
#include "kvpool.h"
#include "mesh.h"
#include "model.h"
#include "util.h"

struct slot {
    gpo_kv *kv;            /* paged: its blocks are in the engine's pool */
    struct gpo_ids cached; /* the tokens whose keys are in kv, in order */
    struct gpo_req *req;   /* the request running here, or NULL when free */
    uint64_t last_used;    /* when a request last took the slot (the engine's clock) */
};

struct gpo_req {
    struct gpo_gen_user own;  /* inputs (copies) and outputs of a submitted request */
    struct gpo_gen_user *u;   /* &own, or the caller's user for gpo_engine_run */
    int borrowed;             /* u, its prompt and stops belong to the caller */
    gpo_token_fn cb;
    void *ud;
    size_t tag;
    enum gpo_req_state state;
    int cancelled;
    int64_t slot;             /* index of its slot, -1 when it has none */
    gpo_sampler *sampler;
    gpo_hparser *parser;
    size_t next_prompt;       /* prompt tokens (of feed_ids) already in the cache */
    struct gpo_ids resume;    /* after a preemption: the prompt and every generated id,
                                 prefilled again in place of the prompt */
    int32_t pending;          /* sampled id to feed next, or -1 */
    double t_submit;
    double t_prev;            /* time of the previous token */
    double decode_sum;        /* sum of inter-token times after the first */
    int64_t decode_n;
    struct gpo_req *prev, *next; /* every handle, in submission order */
};

struct gpo_engine {
    const gpo_model *m;
    const gpo_tokenizer *tok;
    struct gpo_engine_opts opts;
    gpo_ctx *ctx;
    struct gpo_kv_pool *pool;
    struct slot *slots;
    size_t n_slots;
    uint8_t *banned;
    float *logits; /* [n_slots][n_vocab] */
    volatile sig_atomic_t *abort_flag;
    struct gpo_req *head, *tail; /* every handle not yet released */
    size_t n_running, n_queued;
    uint64_t clock;              /* counts slot assignments, for least-recently-used */
    struct gpo_seq_batch *batch; /* [n_slots] */
    struct gpo_req **batch_req;  /* [n_slots] */
    /* Sampling candidates instead of whole rows (in a model group of several
     * ranks): per sequence of the step and per output row the k asked for (0 =
     * the whole row), and what the leader gets back per row. */
    int32_t *seq_k, *row_k;      /* [n_slots] */
    struct gpo_cand *cands;      /* [n_slots][GPO_CAND_MAX] */
    int32_t *cand_n;             /* [n_slots] */
    int64_t *cand_nf;            /* [n_slots] */
    struct gpo_gen_stats totals;
    /* Running estimates for sizing prompt chunks (opts.prefill_itl): seconds of a
     * decode-only step and seconds per prompt token on top of one. */
    double est_decode_s, est_tok_s;
    /* Several ranks hold the model: the group, this rank's part in it, the KV
     * operations done since the last plan (leader) and the plan's words. */
    const gpo_dist_comm *group; /* NULL alone or in a group of one */
    int follower;
    int stopped;                /* the leader sent the end */
    enum gpo_status log_error;  /* an operation could not be logged: out of step */
    struct gpo_ids kv_ops;      /* [op, slot, n] triples */
    struct gpo_ids plan;
    struct gpo_seq_batch *follow_batch; /* [n_slots] */
};

/* The harmony mask plus every id the tokenizer does not define: the vocabulary
 * has holes below its size as well as rows beyond it, and the parser cannot read
 * such an id back. */
static void ban_undefined_ids(uint8_t *banned, int64_t n_vocab, const gpo_tokenizer *t) {
    int64_t n_tokens = t ? gpo_tokenizer_n_tokens(t) : 0;
    gpo_sampler_harmony_mask(banned, n_vocab, n_tokens);
    for (int64_t i = 0; t && i < n_vocab && i < n_tokens; i++)
        if (!banned[i] && gpo_tokenizer_token_bytes(t, (int32_t)i, NULL, NULL) != GPO_OK) banned[i] = 1;
}

/* ------------------------------------------------------------------------- */
/* KV operations, logged for the followers                                   */

enum { KV_OP_REWIND = 1, KV_OP_RESERVE = 2 };

/* The leader of a group logs every change its scheduling makes to a slot's
 * blocks, in order; the followers replay the log before the next pass.  Only
 * operations that succeeded are logged: one that failed changed nothing, here
 * or there. */
static void log_kv_op(gpo_engine *e, const struct slot *sl, int32_t op, int64_t n) {
    if (!e->group || e->follower) return;
    const int32_t w[3] = {op, (int32_t)(sl - e->slots), (int32_t)n};
    enum gpo_status s = gpo_ids_append(&e->kv_ops, w, 3);
    if (s != GPO_OK && e->log_error == GPO_OK) e->log_error = s;
}

static enum gpo_status slot_rewind(gpo_engine *e, struct slot *sl, int64_t n_keep) {
    GPO_TRY(gpo_kv_rewind(sl->kv, n_keep));
    log_kv_op(e, sl, KV_OP_REWIND, n_keep);
    return GPO_OK;
}

static enum gpo_status slot_reserve(gpo_engine *e, struct slot *sl, int64_t n_pos) {
    GPO_TRY(gpo_kv_reserve(sl->kv, n_pos));
    log_kv_op(e, sl, KV_OP_RESERVE, n_pos);
    return GPO_OK;
}

/* This rank's part in a model group of several ranks: member 0 leads. */
static enum gpo_status join_group(gpo_engine *e) {
    const struct gpo_mesh_groups *g = e->opts.groups;
    if (!g || gpo_dist_comm_size(g->model) < 2) return GPO_OK;
    e->group = g->model;
    e->follower = gpo_dist_comm_rank(g->model) != 0;
    e->follow_batch = calloc(e->n_slots, sizeof *e->follow_batch);
    if (!e->follow_batch) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    return GPO_OK;
}

enum gpo_status gpo_engine_create(const gpo_model *m, const gpo_tokenizer *t,
                                  const struct gpo_engine_opts *opts, size_t n_slots,
                                  gpo_engine **out) {
    enum gpo_status s;
    const struct gpo_config *c = gpo_model_config(m);
    *out = NULL;
    if (n_slots == 0 || n_slots > 4096) return gpo_fail(GPO_ERR_ARG, "engine needs 1..4096 users, not %zu", n_slots);
    struct gpo_engine *e = calloc(1, sizeof *e);
    if (!e) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    e->m = m;
    e->tok = t;
    e->opts = opts ? *opts : (struct gpo_engine_opts){.path = GPO_PATH_FAST};
    if (e->opts.max_seq_len <= 0) e->opts.max_seq_len = 4096;
    if (e->opts.max_seq_len > c->max_position) e->opts.max_seq_len = c->max_position;
    if (e->opts.ubatch <= 0) e->opts.ubatch = 512;
    /* A step holds at least one decode token per user. */
    int64_t max_tokens = e->opts.ubatch > (int64_t)n_slots ? e->opts.ubatch : (int64_t)n_slots;
    /* With a shard the pass runs this rank's part and meets the others'. */
    struct gpo_ctx_opts co = {.max_tokens = max_tokens, .max_seqs = (int64_t)n_slots,
                              .n_threads = e->opts.n_threads, .path = e->opts.path,
                              .shard = e->opts.shard,
                              .groups = e->opts.shard ? e->opts.groups : NULL};
    if ((s = gpo_ctx_create(m, &co, &e->ctx)) != GPO_OK) goto fail;
    e->n_slots = n_slots;
    e->slots = calloc(n_slots, sizeof *e->slots);
    e->banned = calloc((size_t)c->n_vocab, 1);
    e->logits = malloc(n_slots * (size_t)c->n_vocab * sizeof(float));
    e->batch = calloc(n_slots, sizeof *e->batch);
    e->batch_req = calloc(n_slots, sizeof *e->batch_req);
    e->seq_k = calloc(n_slots, sizeof *e->seq_k);
    e->row_k = calloc(n_slots, sizeof *e->row_k);
    e->cands = malloc(n_slots * GPO_CAND_MAX * sizeof *e->cands);
    e->cand_n = calloc(n_slots, sizeof *e->cand_n);
    e->cand_nf = calloc(n_slots, sizeof *e->cand_nf);
    if (!e->slots || !e->banned || !e->logits || !e->batch || !e->batch_req || !e->seq_k ||
        !e->row_k || !e->cands || !e->cand_n || !e->cand_nf) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory for %zu users", n_slots);
        goto fail;
    }
    if ((s = join_group(e)) != GPO_OK) goto fail;
    struct gpo_kv_plan plan;
    if ((s = gpo_engine_kv_plan(m, &e->opts, n_slots, &plan)) != GPO_OK) goto fail;
    /* The default pool follows each rank's free memory; the leader's count of
     * blocks is everyone's, so that the block tables can match. */
    if (e->group && (s = gpo_dist_bcast(e->group, &plan.blocks, sizeof plan.blocks, 0)) != GPO_OK)
        goto fail;
    if ((s = gpo_kv_pool_create(c, e->opts.shard, plan.blocks, plan.block_tokens,
                                &e->pool)) != GPO_OK)
        goto kv_nomem;
    for (size_t i = 0; i < n_slots; i++)
        if ((s = gpo_kv_create_paged(m, e->opts.shard, e->pool, e->opts.max_seq_len,
                                     GPO_ENGINE_RING_MARGIN, &e->slots[i].kv)) != GPO_OK)
            goto kv_nomem;
    ban_undefined_ids(e->banned, c->n_vocab, t);
    *out = e;
    return GPO_OK;
kv_nomem:
    /* One part's size says little when many users need rings and blocks. */
    if (s == GPO_ERR_NOMEM)
        s = gpo_fail(GPO_ERR_NOMEM,
                     "cannot allocate the KV memory: a pool of %lld blocks x %.2f MiB (%lld "
                     "positions each) + %zu users x %.1f MiB of sliding-window rings = %.1f MiB "
                     "in all; lower the KV memory, the users or the context length",
                     (long long)plan.blocks, (double)plan.block_bytes / 1048576.0,
                     (long long)plan.block_tokens, n_slots, (double)plan.ring_bytes / 1048576.0,
                     ((double)plan.pool_bytes + (double)plan.ring_bytes * (double)n_slots) /
                         1048576.0);
fail:
    e->stopped = 1; /* the followers hear of it through the caller's abort */
    gpo_engine_free(e);
    return s;
}

static void req_free(gpo_engine *e, struct gpo_req *r);

void gpo_engine_free(gpo_engine *e) {
    if (!e) return;
    /* Followers wait for the end; after a failed broadcast it fails at once. */
    if (e->group && !e->follower && !e->stopped && e->slots) gpo_engine_stop_followers(e);
    /* Handles the caller did not release go with the engine. */
    while (e->head) req_free(e, e->head);
    for (size_t i = 0; e->slots && i < e->n_slots; i++) {
        gpo_kv_free(e->slots[i].kv);
        gpo_ids_free(&e->slots[i].cached);
    }
    gpo_kv_pool_free(e->pool); /* after the caches, which give their blocks back */
    free(e->slots);
    free(e->banned);
    free(e->logits);
    free(e->batch);
    free(e->batch_req);
    free(e->seq_k);
    free(e->row_k);
    free(e->cands);
    free(e->cand_n);
    free(e->cand_nf);
    free(e->follow_batch);
    gpo_ids_free(&e->kv_ops);
    gpo_ids_free(&e->plan);
    gpo_ctx_free(e->ctx);
    free(e);
}

void gpo_engine_set_abort(gpo_engine *e, volatile sig_atomic_t *flag) {
    e->abort_flag = flag;
    /* A pass the followers run too must not stop half-way on the leader alone. */
    if (!e->group) gpo_ctx_set_abort(e->ctx, flag);
}

const char *gpo_engine_kernels(const gpo_engine *e) { return gpo_ctx_kernels(e->ctx); }

uint64_t gpo_engine_kv_bytes(const gpo_engine *e) {
    uint64_t b = e->pool->bytes;
    for (size_t i = 0; i < e->n_slots; i++) b += gpo_kv_bytes(e->slots[i].kv);
    return b;
}

void gpo_engine_kv_pool(const gpo_engine *e, struct gpo_kv_pool_stats *out) {
    *out = (struct gpo_kv_pool_stats){.block_tokens = e->pool->block_tokens,
                                      .blocks_total = e->pool->n_blocks,
                                      .bytes_total = gpo_engine_kv_bytes(e)};
    /* Queued requests hold no blocks: only slots do. */
    for (size_t i = 0; i < e->n_slots; i++) {
        if (e->slots[i].req) out->blocks_used += e->slots[i].kv->n_blocks;
        else out->blocks_cached += e->slots[i].kv->n_blocks;
    }
}

void gpo_engine_reset_slot(gpo_engine *e, size_t slot) {
    /* A running request's cache is its own until it ends. */
    if (slot >= e->n_slots || e->slots[slot].req) return;
    slot_rewind(e, &e->slots[slot], 0);
    e->slots[slot].cached.n = 0;
}

void gpo_gen_user_free(struct gpo_gen_user *u) {
    gpo_ids_free(&u->generated);
    gpo_str_free(&u->final_text);
    gpo_str_free(&u->analysis_text);
    gpo_str_free(&u->raw_text);
    free(u->logprobs);
    u->logprobs = NULL;
    u->n_logprobs = u->cap_logprobs = 0;
}

/* Keep the sampler's log-probabilities of one generated token. */
static enum gpo_status push_logprobs(struct gpo_gen_user *u, const struct gpo_logprobs *lp) {
    if (u->n_logprobs == u->cap_logprobs) {
        size_t cap = u->cap_logprobs ? 2 * u->cap_logprobs : 64;
        struct gpo_logprobs *a = realloc(u->logprobs, cap * sizeof *a);
        if (!a) return gpo_fail(GPO_ERR_NOMEM, "out of memory for log-probabilities");
        u->logprobs = a;
        u->cap_logprobs = cap;
    }
    u->logprobs[u->n_logprobs++] = *lp;
    return GPO_OK;
}

static uint64_t expected_step_bytes(const gpo_model *m, int64_t users) {
    const struct gpo_config *c = &m->cfg;
    const struct gpo_model_info *inf = &m->info;
    uint64_t per_expert = inf->bytes_experts / (uint64_t)(c->n_layer * c->n_expert);
    /* Expected distinct experts per layer when each user picks n_expert_used of them. */
    double p_unused = pow(1.0 - (double)c->n_expert_used / (double)c->n_expert, (double)users);
    double experts = (double)c->n_expert * (1.0 - p_unused);
    return inf->bytes_per_token - (uint64_t)(c->n_layer * c->n_expert_used) * per_expert +
           (uint64_t)(experts * (double)c->n_layer * (double)per_expert) +
           (uint64_t)(users - 1) * (inf->bytes_embedding / (uint64_t)c->n_vocab);
}

size_t gpo_stop_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops) {
    size_t held = 0;
    for (size_t k = 0; k < n_stops; k++) {
        size_t sl = stops[k] ? strlen(stops[k]) : 0;
        /* Tails shorter than the stop string that equal its start, longest first. */
        size_t most = sl - (sl > 0);
        if (most > len) most = len;
        for (size_t t = most; t > held; t--)
            if (memcmp(text + len - t, stops[k], t) == 0) {
                held = t;
                break;
            }
    }
    size_t safe = len - held;
    /* A stop string that starts inside a character must not cut it in two. */
    while (safe > 0 && safe < len && ((unsigned char)text[safe] & 0xc0) == 0x80) safe--;
    return safe;
}

/* The request's turn is over: the whole final text may be shown.  Its slot is
 * let go by retire() once the step is done with it. */
static void finish_user(struct gpo_req *r, enum gpo_finish f) {
    r->u->finish = f;
    r->u->final_stream_n = r->u->final_text.n;
    r->state = GPO_REQ_DONE;
    r->pending = -1;
}

/* A failure of this request alone (its sampling, parsing or texts): it ends with
 * GPO_FINISH_ERROR and the reason, while the others go on. */
static void fail_user(struct gpo_req *r, enum gpo_status s) {
    struct gpo_gen_user *u = r->u;
    const char *why = gpo_last_error();
    snprintf(u->error_msg, sizeof u->error_msg, "%s", why && why[0] ? why : gpo_status_str(s));
    u->error = s;
    finish_user(r, GPO_FINISH_ERROR);
    gpo_log(GPO_LOG_WARN, "user %zu stopped after %zu tokens: %s", r->tag, u->generated.n,
            u->error_msg);
}

/* Give back what a finished request held: its slot (the cache stays for prefix
 * reuse) and its sampler and parser; the outputs stay until release. */
static void retire(gpo_engine *e, struct gpo_req *r) {
    if (r->slot >= 0 && e->slots[r->slot].req == r) {
        e->slots[r->slot].req = NULL;
        e->n_running--;
    } else if (r->slot < 0 && r->sampler) {
        e->n_queued--; /* it ended before it got a slot */
    }
    gpo_sampler_free(r->sampler);
    gpo_hparser_free(r->parser);
    r->sampler = NULL;
    r->parser = NULL;
}

static void end_aborted(gpo_engine *e, struct gpo_req *r) {
    finish_user(r, GPO_FINISH_ABORTED);
    r->u->aborted = 1;
    retire(e, r);
}

/* Every unfinished request ends as aborted (the abort flag). */
static void abort_all(gpo_engine *e) {
    for (struct gpo_req *r = e->head; r; r = r->next)
        if (r->state != GPO_REQ_DONE) end_aborted(e, r);
}

/* The ids a request prefills: its prompt, or after a preemption the prompt and
 * the ids it generated, whose keys it lost. */
static const int32_t *feed_ids(const struct gpo_req *r) {
    return r->resume.n ? r->resume.ids : r->u->prompt;
}
static size_t feed_n(const struct gpo_req *r) { return r->resume.n ? r->resume.n : r->u->n_prompt; }

/* Keep the longest common prefix of the slot's cached tokens and the prompt, and
 * always leave at least the last prompt token to run (its logits are needed). */
static size_t common_prefix(const struct slot *sl, const struct gpo_req *r) {
    const int32_t *ids = feed_ids(r);
    size_t common = 0, n = feed_n(r), lim = sl->cached.n < n ? sl->cached.n : n;
    while (common < lim && sl->cached.ids[common] == ids[common]) common++;
    return common;
}

static void reuse_prefix(gpo_engine *e, struct slot *sl, struct gpo_req *r) {
    size_t common = common_prefix(sl, r);
    if (common >= feed_n(r)) common = feed_n(r) - 1;
    if (slot_rewind(e, sl, (int64_t)common) != GPO_OK) {
        gpo_log(GPO_LOG_INFO, "cannot reuse %zu cached tokens (%s); prefilling the whole prompt",
                common, gpo_last_error());
        slot_rewind(e, sl, 0);
        common = 0;
    }
    sl->cached.n = common;
    r->next_prompt = common;
    /* A recomputation after a preemption is not a reuse of the prompt. */
    if (!r->resume.n) r->u->n_reused = (int64_t)common;
}

/* Forget an idle slot's cached tokens and give its blocks back. */
static void clear_slot(gpo_engine *e, struct slot *sl) {
    slot_rewind(e, sl, 0);
    sl->cached.n = 0;
}

/* Blocks held by idle slots' cached prefixes: the pool may take them back. */
static int64_t idle_blocks(const gpo_engine *e) {
    int64_t n = 0;
    for (size_t i = 0; i < e->n_slots; i++)
        if (!e->slots[i].req) n += e->slots[i].kv->n_blocks;
    return n;
}

/* Take back the blocks of the least recently used idle slot that has any;
 * returns 0 when no idle slot holds blocks. */
static int evict_idle(gpo_engine *e) {
    struct slot *lru = NULL;
    for (size_t i = 0; i < e->n_slots; i++) {
        struct slot *sl = &e->slots[i];
        if (!sl->req && sl->kv->n_blocks > 0 && (!lru || sl->last_used < lru->last_used)) lru = sl;
    }
    if (lru) clear_slot(e, lru);
    return lru != NULL;
}

/* Blocks for n_pos positions of kv, taking back idle slots' blocks as needed;
 * the caller has checked that the free and idle blocks are enough. */
static enum gpo_status reserve_evicting(gpo_engine *e, struct slot *sl, int64_t n_pos) {
    while (gpo_kv_blocks_short(sl->kv, n_pos) > e->pool->n_free && evict_idle(e)) {}
    return slot_reserve(e, sl, n_pos);
}

/* Give the request the free slot whose cache shares the longest prefix with its
 * prompt; among equals the least recently used, so that other conversations'
 * caches live longest.  The blocks of its whole prompt are taken now.  Returns 0
 * when no slot is free or the free and idle slots' blocks are too few. */
static int take_slot(gpo_engine *e, struct gpo_req *r) {
    int64_t best = -1;
    size_t best_common = 0;
    const int64_t B = e->pool->block_tokens, need = ((int64_t)feed_n(r) + B - 1) / B;
    /* The chosen slot keeps part of its blocks and frees the rest, so the prompt
     * fits exactly when it fits in the free blocks and all idle slots' blocks. */
    if (need > e->pool->n_free + idle_blocks(e)) return 0;
    for (size_t i = 0; i < e->n_slots; i++) {
        const struct slot *sl = &e->slots[i];
        if (sl->req) continue;
        size_t c = common_prefix(sl, r);
        if (best < 0 || c > best_common ||
            (c == best_common && sl->last_used < e->slots[best].last_used)) {
            best = (int64_t)i;
            best_common = c;
        }
    }
    if (best < 0) return 0;
    struct slot *sl = &e->slots[best];
    sl->req = r;
    sl->last_used = ++e->clock;
    r->slot = best;
    r->state = GPO_REQ_PREFILL;
    e->n_queued--;
    e->n_running++;
    reuse_prefix(e, sl, r);
    enum gpo_status s = reserve_evicting(e, sl, (int64_t)feed_n(r));
    if (s != GPO_OK) {
        fail_user(r, s);
        retire(e, r);
    }
    return 1;
}

/* Free what a running request holds and queue it again ahead of the requests
 * submitted after it (the queue is taken in submission order): it prefills its
 * prompt and generated ids again, which gives the same keys as the forward pass
 * does not depend on the batch, then samples on with the state it kept. */
static void preempt(gpo_engine *e, struct gpo_req *r) {
    struct slot *sl = &e->slots[r->slot];
    struct gpo_gen_user *u = r->u;
    r->resume.n = 0;
    if (u->generated.n > 0 &&
        (gpo_ids_append(&r->resume, u->prompt, u->n_prompt) != GPO_OK ||
         gpo_ids_append(&r->resume, u->generated.ids, u->generated.n) != GPO_OK)) {
        fail_user(r, GPO_ERR_NOMEM);
        retire(e, r);
        clear_slot(e, sl);
        return;
    }
    gpo_log(GPO_LOG_INFO, "user %zu preempted after %zu tokens: the KV pool is full", r->tag,
            u->generated.n);
    sl->req = NULL;
    clear_slot(e, sl);
    r->slot = -1;
    r->state = GPO_REQ_QUEUED;
    r->pending = -1;
    r->next_prompt = 0;
    e->n_running--;
    e->n_queued++;
}

/* The youngest running request that holds blocks. */
static struct gpo_req *youngest_holder(gpo_engine *e) {
    for (struct gpo_req *r = e->tail; r; r = r->prev)
        if ((r->state == GPO_REQ_PREFILL || r->state == GPO_REQ_DECODE) &&
            e->slots[r->slot].kv->n_blocks > 0)
            return r;
    return NULL;
}

/* A block for the next token of every generating request, oldest first: from the
 * free blocks, else from idle slots' cached prefixes, else by preempting the
 * youngest running request (possibly the one that needs the block).  A request
 * always fits alone (accept_token ends it before it outgrows the pool), so the
 * preemptions end once it is the youngest holder. */
static void grow_running(gpo_engine *e) {
    for (struct gpo_req *r = e->head; r; r = r->next) {
        if (r->state != GPO_REQ_DECODE) continue;
        gpo_kv *kv = e->slots[r->slot].kv;
        while (r->state == GPO_REQ_DECODE &&
               gpo_kv_blocks_short(kv, kv->len + 1) > e->pool->n_free && !evict_idle(e)) {
            struct gpo_req *v = youngest_holder(e);
            if (!v) break;
            preempt(e, v);
        }
        if (r->state != GPO_REQ_DECODE) continue;
        enum gpo_status s = slot_reserve(e, &e->slots[r->slot], kv->len + 1);
        if (s != GPO_OK) {
            fail_user(r, s);
            retire(e, r);
        }
    }
}

/* Record one sampled id: parser, texts, stop rules; finishes the request when a
 * stop rule, the token limit or the context ends its turn. */
static enum gpo_status accept_token(gpo_engine *e, struct gpo_req *r, int32_t id, double now) {
    struct gpo_gen_user *u = r->u;
    gpo_kv *kv = e->slots[r->slot].kv;
    struct gpo_hevent ev;
    GPO_TRY(gpo_ids_push(&u->generated, id));
    GPO_TRY(gpo_sampler_accept(r->sampler, id));
    GPO_TRY(gpo_hparser_push(r->parser, id, &ev));
    const char *bytes;
    size_t blen;
    if (gpo_tokenizer_token_bytes(e->tok, id, &bytes, &blen) == GPO_OK)
        GPO_TRY(gpo_str_append(&u->raw_text, bytes, blen));
    size_t prev_final = u->final_text.n;
    if (ev.text_len > 0) {
        if (ev.channel == GPO_CH_ANALYSIS)
            GPO_TRY(gpo_str_append(&u->analysis_text, ev.text, ev.text_len));
        else if (ev.channel == GPO_CH_FINAL)
            GPO_TRY(gpo_str_append(&u->final_text, ev.text, ev.text_len));
    }
    if (ev.recovered) u->recovered = 1;
    if (u->generated.n == 1) u->t_first = now;
    else {
        r->decode_sum += now - r->t_prev;
        r->decode_n++;
    }
    r->t_prev = now;
    u->t_done = now;

    /* The stop rules come before the callback, so that final_stream_n never shows
     * a stop string or the start of one. */
    size_t stop_at = u->final_text.n;
    enum gpo_finish f = gpo_stop_check(id, u->final_text.s ? u->final_text.s : "", u->final_text.n,
                                       prev_final, u->stops, u->n_stops, &stop_at);
    if (f == GPO_FINISH_NONE && ev.turn_done) f = GPO_FINISH_STOP;
    if (f != GPO_FINISH_NONE) {
        if (stop_at < u->final_text.n) {
            u->final_text.n = stop_at;
            u->final_text.s[stop_at] = 0;
        }
    } else if (u->max_tokens > 0 && (int64_t)u->generated.n >= u->max_tokens) {
        f = GPO_FINISH_LENGTH;
    } else if (gpo_kv_len(kv) + 1 > gpo_kv_capacity(kv) ||
               gpo_kv_len(kv) + 1 > e->pool->n_blocks * e->pool->block_tokens) {
        f = GPO_FINISH_CONTEXT;
    }
    if (f == GPO_FINISH_NONE) {
        size_t safe = gpo_stop_safe_len(u->final_text.s, u->final_text.n, u->stops, u->n_stops);
        if (safe > u->final_stream_n) u->final_stream_n = safe;
        r->pending = id;
        r->state = GPO_REQ_DECODE;
        if (r->cb) r->cb(r->ud, r->tag, id, &ev);
        return GPO_OK;
    }
    finish_user(r, f);
    if (r->cb) r->cb(r->ud, r->tag, id, &ev);
    struct gpo_hevent fev;
    GPO_TRY(gpo_hparser_finish(r->parser, &fev));
    if (fev.text_len > 0 && fev.channel == GPO_CH_FINAL && f != GPO_FINISH_STOP) {
        GPO_TRY(gpo_str_append(&u->final_text, fev.text, fev.text_len));
        u->final_stream_n = u->final_text.n;
        if (r->cb) r->cb(r->ud, r->tag, -1, &fev);
    } else if (fev.text_len > 0 && fev.channel == GPO_CH_ANALYSIS) {
        GPO_TRY(gpo_str_append(&u->analysis_text, fev.text, fev.text_len));
        if (r->cb) r->cb(r->ud, r->tag, -1, &fev);
    }
    if (gpo_hparser_recovered(r->parser)) u->recovered = 1;
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Requests                                                                  */

/* Requests and steps are the leader's: a follower only runs plans. */
static enum gpo_status leader_only(const gpo_engine *e, const char *what) {
    if (!e->follower) return GPO_OK;
    return gpo_fail(GPO_ERR_ARG, "rank %d (%s): %s on a follower engine, which only runs the "
                    "leader's plans (gpo_engine_follow)", gpo_dist_rank(), gpo_dist_host(), what);
}

/* `who` prefixes the messages ("user 3: " for gpo_engine_run). */
static enum gpo_status check_prompt(const gpo_engine *e, const int32_t *prompt, size_t n,
                                    const char *who) {
    const struct gpo_config *c = gpo_model_config(e->m);
    if (n == 0 || !prompt) return gpo_fail(GPO_ERR_ARG, "%sthe prompt is empty", who);
    if ((int64_t)n >= e->opts.max_seq_len)
        return gpo_fail(GPO_ERR_CONTEXT,
                        "%sthe prompt has %zu tokens but the context holds %lld "
                        "(raise --max-seq-len, up to %lld)", who, n,
                        (long long)e->opts.max_seq_len, (long long)c->max_position);
    const int64_t B = e->pool->block_tokens, pool_tokens = e->pool->n_blocks * B;
    if ((int64_t)n + 1 > pool_tokens)
        return gpo_fail(GPO_ERR_CONTEXT,
                        "%sthe prompt has %zu tokens; with one generated token it needs %lld KV "
                        "blocks of %lld positions but the whole pool holds %lld blocks (%lld "
                        "positions; raise --kv-memory)", who, n, (long long)((int64_t)n / B + 1),
                        (long long)B, (long long)e->pool->n_blocks, (long long)pool_tokens);
    for (size_t j = 0; j < n; j++)
        if (prompt[j] < 0 || prompt[j] >= c->n_vocab)
            return gpo_fail(GPO_ERR_TOKEN, "%sprompt token %d is outside the vocabulary", who,
                            prompt[j]);
    return GPO_OK;
}

static void req_free(gpo_engine *e, struct gpo_req *r) {
    if (r->state != GPO_REQ_DONE) end_aborted(e, r);
    gpo_ids_free(&r->resume);
    if (r->prev) r->prev->next = r->next;
    else e->head = r->next;
    if (r->next) r->next->prev = r->prev;
    else e->tail = r->prev;
    if (!r->borrowed) {
        gpo_gen_user_free(&r->own);
        free((void *)r->own.prompt);
        for (size_t i = 0; i < r->own.n_stops; i++) free((void *)r->own.stops[i]);
        free((void *)r->own.stops);
    }
    free(r);
}

/* Queue r (its user's inputs set, outputs cleared) as a new request. */
static enum gpo_status enqueue(gpo_engine *e, struct gpo_req *r, double t_submit) {
    const struct gpo_config *c = gpo_model_config(e->m);
    enum gpo_status s;
    r->slot = -1;
    r->pending = -1;
    r->state = GPO_REQ_QUEUED;
    r->t_submit = t_submit;
    /* Made now so that bad sampling parameters are refused at submission. */
    if ((s = gpo_sampler_create(&r->u->sampling, c->n_vocab, e->banned, &r->sampler)) != GPO_OK ||
        (s = gpo_hparser_create(e->tok, &r->parser)) != GPO_OK) {
        gpo_sampler_free(r->sampler);
        gpo_hparser_free(r->parser);
        r->sampler = NULL;
        r->parser = NULL;
        return s;
    }
    r->prev = e->tail;
    if (e->tail) e->tail->next = r;
    else e->head = r;
    e->tail = r;
    e->n_queued++;
    return GPO_OK;
}

enum gpo_status gpo_engine_submit(gpo_engine *e, const struct gpo_request *req, gpo_req **out) {
    enum gpo_status s;
    *out = NULL;
    GPO_TRY(leader_only(e, "submit"));
    GPO_TRY(check_prompt(e, req->prompt, req->n_prompt, ""));
    if (req->n_stops > 0 && !req->stops)
        return gpo_fail(GPO_ERR_ARG, "%zu stop strings but no array", req->n_stops);
    size_t n_free = e->n_slots - e->n_running;
    size_t may_wait = e->opts.max_queue < 0 ? 0 : (size_t)e->opts.max_queue;
    if (e->opts.max_queue != 0 && e->n_queued + 1 > n_free + may_wait)
        return gpo_fail(GPO_ERR_BUSY,
                        "the queue is full: %zu requests wait for %zu free slots (at most %zu may "
                        "wait beyond them)", e->n_queued, n_free, may_wait);
    struct gpo_req *r = calloc(1, sizeof *r);
    if (!r) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    r->u = &r->own;
    r->own.sampling = req->sampling;
    r->own.max_tokens = req->max_tokens;
    r->own.want_logprobs = req->logprobs;
    r->cb = req->on_token;
    r->ud = req->ud;
    r->tag = req->tag;
    int32_t *prompt = malloc(req->n_prompt * sizeof *prompt);
    const char **stops = req->n_stops ? calloc(req->n_stops, sizeof *stops) : NULL;
    r->own.prompt = prompt;
    r->own.stops = stops;
    if (!prompt || (req->n_stops && !stops)) goto nomem;
    memcpy(prompt, req->prompt, req->n_prompt * sizeof *prompt);
    r->own.n_prompt = req->n_prompt;
    for (size_t i = 0; i < req->n_stops; i++, r->own.n_stops++)
        if (!(stops[i] = strdup(req->stops[i] ? req->stops[i] : ""))) goto nomem;
    if ((s = enqueue(e, r, gpo_now())) != GPO_OK) {
        r->state = GPO_REQ_DONE; /* not in the list: nothing to end */
        goto fail;
    }
    /* The header the prompt opened goes to the parser as if the model wrote it. */
    for (size_t i = 0; i < req->n_parser_prefix; i++)
        if ((s = gpo_hparser_push(r->parser, req->parser_prefix[i], NULL)) != GPO_OK) {
            fail_user(r, s);
            retire(e, r);
            break;
        }
    *out = r;
    return GPO_OK;
nomem:
    s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
fail:
    gpo_gen_user_free(&r->own);
    free(prompt);
    for (size_t i = 0; i < r->own.n_stops; i++) free((void *)stops[i]);
    free(stops);
    free(r);
    return s;
}

void gpo_engine_cancel(gpo_engine *e, gpo_req *r) {
    if (!r || r->state == GPO_REQ_DONE) return;
    /* A queued request holds nothing the step uses: it ends now.  A running one
     * ends at the start of the next step, so that a callback may cancel any
     * request while the step walks the batch. */
    if (r->state == GPO_REQ_QUEUED) end_aborted(e, r);
    else r->cancelled = 1;
}

void gpo_engine_release(gpo_engine *e, gpo_req *r) {
    if (r) req_free(e, r);
}

enum gpo_req_state gpo_req_state(const gpo_req *r) { return r->state; }
const struct gpo_gen_user *gpo_req_output(const gpo_req *r) { return r->u; }
int64_t gpo_req_slot(const gpo_req *r) { return r->slot; }
size_t gpo_engine_n_running(const gpo_engine *e) { return e->n_running; }
size_t gpo_engine_n_queued(const gpo_engine *e) { return e->n_queued; }
void gpo_engine_totals(const gpo_engine *e, struct gpo_gen_stats *out) { *out = e->totals; }

/* ------------------------------------------------------------------------- */
/* One step                                                                  */

static enum gpo_status send_plan(gpo_engine *e, const struct gpo_seq_batch *batch, int64_t nb);

/* The forward pass failed for the requests of the batch: their caches may hold
 * part of the step, so their slots start again from nothing. */
static void fail_batch(gpo_engine *e, int64_t nb, enum gpo_status s) {
    for (int64_t b = 0; b < nb; b++) {
        struct gpo_req *r = e->batch_req[b];
        struct slot *sl = &e->slots[r->slot];
        fail_user(r, s);
        slot_rewind(e, sl, 0);
        sl->cached.n = 0;
        retire(e, r);
    }
}

static int64_t n_tok_of(const struct gpo_seq_batch *batch, int64_t nb) {
    int64_t n = 0;
    for (int64_t b = 0; b < nb; b++) n += batch[b].n_tokens;
    return n;
}

/* The prompt tokens of a step (engine_policy.h). */
int64_t gpo_prefill_cap(double prefill_itl, double est_decode_s, double est_tok_s,
                        int64_t n_decode, int64_t n_prefill, int64_t budget) {
    if (n_decode == 0 || prefill_itl <= 1.0 || est_decode_s <= 0 || est_tok_s <= 0) return budget;
    const double share = n_prefill > n_decode ? (double)n_prefill / (double)n_decode : 1.0;
    const double room = (prefill_itl - 1.0) * est_decode_s * share / est_tok_s;
    int64_t cap = room > (double)budget ? budget : (int64_t)room;
    if (cap < GPO_PREFILL_MIN_CHUNK) cap = GPO_PREFILL_MIN_CHUNK;
    return cap < budget ? cap : budget;
}

/* Update the estimates with a step of `seconds` that ran n_decode generating
 * requests and n_prompt prompt tokens (moving averages, weight 1/4). */
static void learn_step_cost(gpo_engine *e, double seconds, int64_t n_decode, int64_t n_prompt) {
    const double w = 0.25;
    if (n_prompt == 0) {
        if (n_decode > 0)
            e->est_decode_s = e->est_decode_s > 0 ? e->est_decode_s + w * (seconds - e->est_decode_s)
                                                  : seconds;
        return;
    }
    double tok = (seconds - (n_decode > 0 ? e->est_decode_s : 0.0)) / (double)n_prompt;
    if (tok <= 0) return;
    e->est_tok_s = e->est_tok_s > 0 ? e->est_tok_s + w * (tok - e->est_tok_s) : tok;
}

/* How many candidates stand for request r's next row (0: the whole row).  Only
 * a model group of several ranks gains: its members send their candidates
 * instead of their columns of the row. */
static int32_t req_cand_k(const gpo_engine *e, const struct gpo_req *r) {
    if (!e->group || r->u->want_logprobs) return 0;
    return gpo_sampler_cand_k(r->sampler);
}

/* The step's output rows as gpo_forward_cands takes them, from the sequences'
 * e->seq_k; NULL when every row is wanted whole. */
static const struct gpo_fwd_cands *step_cands(gpo_engine *e, const struct gpo_seq_batch *batch,
                                              int64_t nb, struct gpo_fwd_cands *fc) {
    int64_t row = 0;
    int any = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (batch[b].logits == GPO_LOGITS_NONE) continue;
        if (batch[b].logits != GPO_LOGITS_LAST) return NULL; /* rows of every token: whole */
        e->row_k[row++] = e->seq_k[b];
        any |= e->seq_k[b] > 0;
    }
    if (!any) return NULL;
    *fc = (struct gpo_fwd_cands){e->row_k, e->banned, e->cands, e->cand_n, e->cand_nf};
    return fc;
}

enum gpo_status gpo_engine_step(gpo_engine *e, size_t *n_left) {
    const int64_t V = gpo_model_config(e->m)->n_vocab;
    struct gpo_gen_stats *st = &e->totals;
    enum gpo_status s = GPO_OK;
    GPO_TRY(leader_only(e, "step"));
    if (e->abort_flag && *e->abort_flag) abort_all(e);
    /* Cancelled requests end first so that their slots go to the queue (their
     * blocks stay as a cached prefix, which the pool may take back). */
    for (struct gpo_req *r = e->head; r; r = r->next)
        if (r->state != GPO_REQ_DONE && r->cancelled) end_aborted(e, r);
    /* Running requests grow before queued ones start; the queue is FIFO, so a
     * request whose prompt does not fit yet holds back those behind it. */
    grow_running(e);
    for (struct gpo_req *r = e->head; r && e->n_running < e->n_slots; r = r->next)
        if (r->state == GPO_REQ_QUEUED && !take_slot(e, r)) break;

    /* One decode token per generating request first, then prefill chunks within
     * the ubatch budget, oldest request first. */
    int64_t budget = e->opts.ubatch, nb = 0, n_prefill = 0;
    int prefill_in_step = 0;
    struct gpo_seq_batch *batch = e->batch;
    for (struct gpo_req *r = e->head; r; r = r->next)
        if (r->state == GPO_REQ_DECODE) {
            gpo_kv *kv = e->slots[r->slot].kv;
            batch[nb] = (struct gpo_seq_batch){kv, &r->pending, 1, GPO_LOGITS_LAST};
            e->batch_req[nb++] = r;
            budget--;
        } else if (r->state == GPO_REQ_PREFILL) {
            n_prefill++;
        }
    const int64_t n_decode = nb;
    budget = gpo_prefill_cap(e->opts.prefill_itl, e->est_decode_s, e->est_tok_s, n_decode,
                             n_prefill, budget);
    for (struct gpo_req *r = e->head; r && budget > 0; r = r->next) {
        if (r->state != GPO_REQ_PREFILL) continue;
        size_t left = feed_n(r) - r->next_prompt;
        int64_t take = (int64_t)left < budget ? (int64_t)left : budget;
        enum gpo_logits_mode lm = take == (int64_t)left ? GPO_LOGITS_LAST : GPO_LOGITS_NONE;
        batch[nb] = (struct gpo_seq_batch){e->slots[r->slot].kv, feed_ids(r) + r->next_prompt,
                                           take, lm};
        e->batch_req[nb++] = r;
        budget -= take;
        prefill_in_step = 1;
    }
    if (nb == 0) goto done;

    for (int64_t b = 0; b < nb; b++)
        e->seq_k[b] = batch[b].logits == GPO_LOGITS_LAST ? req_cand_k(e, e->batch_req[b]) : 0;
    struct gpo_fwd_cands fc_buf;
    const struct gpo_fwd_cands *fc = step_cands(e, batch, nb, &fc_buf);
    double ts = gpo_now();
    s = e->group ? send_plan(e, batch, nb) : GPO_OK;
    if (s == GPO_OK) s = gpo_forward_cands(e->ctx, batch, nb, e->logits, fc);
    if (s == GPO_ERR_ABORTED) {
        /* The caches are as they were before the call. */
        abort_all(e);
        s = GPO_OK;
        goto done;
    }
    if (s != GPO_OK) {
        fail_batch(e, nb, s);
        goto done;
    }
    double now = gpo_now();
    st->n_steps++;
    learn_step_cost(e, now - ts, n_decode, prefill_in_step ? n_tok_of(batch, nb) - n_decode : 0);
    if (!prefill_in_step) {
        st->decode_seconds += now - ts;
        st->weight_bytes += expected_step_bytes(e->m, nb);
    }
    /* Record what went in the cache, then sample where logits came out. */
    int64_t row = 0;
    for (int64_t b = 0; b < nb; b++) {
        struct gpo_req *r = e->batch_req[b];
        struct slot *sl = &e->slots[r->slot];
        if (gpo_ids_append(&sl->cached, batch[b].tokens, (size_t)batch[b].n_tokens) != GPO_OK) {
            /* The cache holds keys the record lacks: forget both. */
            slot_rewind(e, sl, 0);
            sl->cached.n = 0;
            fail_user(r, GPO_ERR_NOMEM);
            if (batch[b].logits != GPO_LOGITS_NONE) row++;
            retire(e, r);
            continue;
        }
        if (r->state == GPO_REQ_DECODE) r->pending = -1;
        else {
            r->next_prompt += (size_t)batch[b].n_tokens;
            st->n_prefill += batch[b].n_tokens;
        }
        if (batch[b].logits == GPO_LOGITS_NONE) continue;
        int32_t id;
        struct gpo_logprobs lp;
        struct gpo_logprobs *lpp = r->u->want_logprobs ? &lp : NULL;
        enum gpo_status us =
            fc && e->row_k[row] > 0
                ? gpo_sampler_sample_top(r->sampler, e->cands + row * GPO_CAND_MAX,
                                         e->cand_n[row], e->cand_nf[row], &id)
                : gpo_sampler_sample(r->sampler, e->logits + row * V, &id, lpp);
        row++;
        if (us == GPO_OK && lpp) us = push_logprobs(r->u, lpp);
        if (us == GPO_OK) {
            st->n_generated++;
            us = accept_token(e, r, id, now - r->t_submit);
        }
        if (us != GPO_OK) fail_user(r, us);
        if (r->state == GPO_REQ_DONE) retire(e, r);
    }
    if (e->abort_flag && *e->abort_flag) abort_all(e);
done:
    if (n_left) *n_left = e->n_running + e->n_queued;
    return s;
}

/* ------------------------------------------------------------------------- */
/* A fixed set of users                                                      */

enum gpo_status gpo_engine_run(gpo_engine *e, struct gpo_gen_user *users, size_t n,
                               gpo_token_fn on_token, void *ud, struct gpo_gen_stats *stats) {
    enum gpo_status s = GPO_OK;
    struct gpo_gen_stats st = {0};
    struct gpo_req **reqs = NULL;
    if (stats) *stats = st;
    GPO_TRY(leader_only(e, "run"));
    if (n == 0 || n > e->n_slots)
        return gpo_fail(GPO_ERR_ARG, "%zu users for an engine with %zu slots", n, e->n_slots);
    if (e->n_running + e->n_queued > 0)
        return gpo_fail(GPO_ERR_ARG, "the engine is busy with %zu requests",
                        e->n_running + e->n_queued);
    for (size_t i = 0; i < n; i++) {
        char who[40];
        snprintf(who, sizeof who, "user %zu: ", i);
        GPO_TRY(check_prompt(e, users[i].prompt, users[i].n_prompt, who));
    }
    if (!(reqs = calloc(n, sizeof *reqs))) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    struct gpo_gen_stats t_start = e->totals;
    double t0 = gpo_now();
    for (size_t i = 0; i < n; i++) {
        struct gpo_gen_user *u = &users[i];
        u->finish = GPO_FINISH_NONE;
        u->generated.n = u->final_text.n = u->analysis_text.n = u->raw_text.n = 0;
        u->final_stream_n = 0;
        u->n_logprobs = 0;
        u->recovered = u->aborted = 0;
        u->error = GPO_OK;
        u->error_msg[0] = 0;
        u->n_reused = 0;
        u->t_first = u->t_done = 0;
        struct gpo_req *r = calloc(1, sizeof *r);
        if (!r) {
            s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        r->u = u;
        r->borrowed = 1;
        r->cb = on_token;
        r->ud = ud;
        r->tag = i;
        if ((s = enqueue(e, r, t0)) != GPO_OK) {
            free(r);
            goto cleanup;
        }
        reqs[i] = r;
    }
    size_t left = n;
    while (left > 0 && s == GPO_OK) s = gpo_engine_step(e, &left);
    if (s != GPO_OK) goto cleanup;

    st.t_total = gpo_now() - t0;
    st.n_prefill = e->totals.n_prefill - t_start.n_prefill;
    st.n_generated = e->totals.n_generated - t_start.n_generated;
    st.n_steps = e->totals.n_steps - t_start.n_steps;
    st.weight_bytes = e->totals.weight_bytes - t_start.weight_bytes;
    st.decode_seconds = e->totals.decode_seconds - t_start.decode_seconds;
    double ttft = 0, dsum = 0;
    int64_t dn = 0;
    for (size_t i = 0; i < n; i++) {
        ttft += users[i].t_first;
        dsum += reqs[i]->decode_sum;
        dn += reqs[i]->decode_n;
    }
    st.avg_ttft = ttft / (double)n;
    st.avg_decode_ms = dn > 0 ? 1000.0 * dsum / (double)dn : 0.0;
    st.tok_s_user = st.avg_decode_ms > 0 ? 1000.0 / st.avg_decode_ms : 0.0;
    st.tok_s_total = st.tok_s_user * (double)n;
    if (stats) *stats = st;

cleanup:
    for (size_t i = 0; i < n; i++)
        if (reqs[i]) req_free(e, reqs[i]);
    free(reqs);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Plans: the leader's steps as the followers run them                        */

/* A plan is a header of PLAN_HEAD int64 then n_words int32: the logged KV
 * operations ([op, slot, n] each), then for a step per sequence [slot,
 * n_tokens, logits mode, cache length before the pass, sampling candidates k]
 * and its tokens, for the end every slot's cache length. */
enum { PLAN_STEP = 1, PLAN_END = 2 };
enum { H_KIND, H_WORDS, H_OPS, H_SEQS, H_FREE, H_STEP, PLAN_HEAD };
#define SEQ_WORDS 5
/* The leader may wait for its users as long as it likes (a chat's next line, a
 * server's next request), so a follower waits for the next plan without the
 * collective deadline; a leader that dies ends the job through mpirun. */
#define PLAN_IDLE_WAIT 1e9

static enum gpo_status broadcast_plan(gpo_engine *e, int64_t kind, int64_t n_ops, int64_t n_seqs) {
    int64_t head[PLAN_HEAD] = {kind, (int64_t)e->plan.n, n_ops, n_seqs, e->pool->n_free,
                               e->totals.n_steps};
    GPO_TRY(gpo_dist_bcast(e->group, head, sizeof head, 0));
    if (e->plan.n) GPO_TRY(gpo_dist_bcast(e->group, e->plan.ids, e->plan.n * sizeof(int32_t), 0));
    e->kv_ops.n = 0;
    return GPO_OK;
}

/* The plan starts with the operations logged since the last one. */
static enum gpo_status plan_begin(gpo_engine *e) {
    if (e->log_error != GPO_OK)
        return gpo_fail(e->log_error, "rank %d (%s): a KV operation could not be recorded, so "
                        "the followers' caches would be out of step",
                        gpo_dist_rank(), gpo_dist_host());
    e->plan.n = 0;
    return e->kv_ops.n ? gpo_ids_append(&e->plan, e->kv_ops.ids, e->kv_ops.n) : GPO_OK;
}

static enum gpo_status send_plan(gpo_engine *e, const struct gpo_seq_batch *batch, int64_t nb) {
    GPO_TRY(plan_begin(e));
    const int64_t n_ops = (int64_t)e->plan.n / 3;
    for (int64_t b = 0; b < nb; b++) {
        const int32_t w[SEQ_WORDS] = {(int32_t)e->batch_req[b]->slot, (int32_t)batch[b].n_tokens,
                                      (int32_t)batch[b].logits, (int32_t)gpo_kv_len(batch[b].kv),
                                      e->seq_k[b]};
        GPO_TRY(gpo_ids_append(&e->plan, w, SEQ_WORDS));
        GPO_TRY(gpo_ids_append(&e->plan, batch[b].tokens, (size_t)batch[b].n_tokens));
    }
    return broadcast_plan(e, PLAN_STEP, n_ops, nb);
}

enum gpo_status gpo_engine_stop_followers(gpo_engine *e) {
    if (!e->group || e->follower || e->stopped) return GPO_OK;
    e->stopped = 1;
    GPO_TRY(plan_begin(e));
    const int64_t n_ops = (int64_t)e->plan.n / 3;
    for (size_t i = 0; i < e->n_slots; i++)
        GPO_TRY(gpo_ids_push(&e->plan, (int32_t)gpo_kv_len(e->slots[i].kv)));
    return broadcast_plan(e, PLAN_END, n_ops, 0);
}

int gpo_engine_is_leader(const gpo_engine *e) { return !e->follower; }

/* A plan that does not fit this rank's engine, or disagrees with its caches. */
static enum gpo_status out_of_step(const int64_t *head, const char *what, long long got,
                                   long long want) {
    return gpo_fail(GPO_ERR_IO, "rank %d (%s): step %lld of the leader: %s is %lld here but %lld "
                    "on the leader: the ranks are out of step", gpo_dist_rank(), gpo_dist_host(),
                    (long long)head[H_STEP], what, got, want);
}

static enum gpo_status receive_plan(gpo_engine *e, int64_t *head) {
    const double deadline = gpo_dist_timeout();
    GPO_TRY(gpo_dist_set_timeout(PLAN_IDLE_WAIT));
    enum gpo_status s = gpo_dist_bcast(e->group, head, PLAN_HEAD * sizeof *head, 0);
    gpo_dist_set_timeout(deadline);
    GPO_TRY(s);
    /* Words: the operations, and at most every slot's sequence and a step's tokens. */
    const int64_t n_slots = (int64_t)e->n_slots;
    const int64_t cap = head[H_OPS] * 3 + n_slots * (SEQ_WORDS + 1) +
                        (e->opts.ubatch > n_slots ? e->opts.ubatch : n_slots);
    if ((head[H_KIND] != PLAN_STEP && head[H_KIND] != PLAN_END) || head[H_OPS] < 0 ||
        head[H_OPS] > (1 << 24) || head[H_SEQS] < 0 || head[H_SEQS] > (int64_t)e->n_slots ||
        head[H_WORDS] < head[H_OPS] * 3 || head[H_WORDS] > cap)
        return gpo_fail(GPO_ERR_IO, "rank %d (%s): a plan of kind %lld with %lld words, %lld "
                        "KV operations and %lld sequences does not fit an engine of %zu slots",
                        gpo_dist_rank(), gpo_dist_host(), (long long)head[H_KIND],
                        (long long)head[H_WORDS], (long long)head[H_OPS], (long long)head[H_SEQS],
                        e->n_slots);
    e->plan.n = 0;
    for (int64_t i = 0; i < head[H_WORDS]; i++) GPO_TRY(gpo_ids_push(&e->plan, 0));
    if (e->plan.n) GPO_TRY(gpo_dist_bcast(e->group, e->plan.ids, e->plan.n * sizeof(int32_t), 0));
    return GPO_OK;
}

/* Replay the leader's KV operations; the free blocks must then agree. */
static enum gpo_status apply_ops(gpo_engine *e, const int64_t *head) {
    const int32_t *w = e->plan.ids;
    for (int64_t i = 0; i < head[H_OPS]; i++, w += 3) {
        if (w[1] < 0 || (size_t)w[1] >= e->n_slots ||
            (w[0] != KV_OP_REWIND && w[0] != KV_OP_RESERVE))
            return gpo_fail(GPO_ERR_IO, "rank %d (%s): step %lld of the leader: KV operation %d "
                            "on slot %d does not fit an engine of %zu slots", gpo_dist_rank(),
                            gpo_dist_host(), (long long)head[H_STEP], w[0], w[1], e->n_slots);
        struct slot *sl = &e->slots[w[1]];
        enum gpo_status s = w[0] == KV_OP_REWIND ? gpo_kv_rewind(sl->kv, w[2])
                                                 : gpo_kv_reserve(sl->kv, w[2]);
        if (s != GPO_OK) return out_of_step(head, "a KV operation's status", s, GPO_OK);
    }
    if (e->pool->n_free != head[H_FREE])
        return out_of_step(head, "the free KV blocks", (long long)e->pool->n_free,
                           (long long)head[H_FREE]);
    return GPO_OK;
}

/* The end: every slot's cache length must agree with the leader's. */
static enum gpo_status check_end(const gpo_engine *e, const int64_t *head) {
    const int32_t *len = e->plan.ids + head[H_OPS] * 3;
    if (head[H_WORDS] != head[H_OPS] * 3 + (int64_t)e->n_slots)
        return out_of_step(head, "the slots of the end", head[H_WORDS] - head[H_OPS] * 3,
                           (long long)e->n_slots);
    for (size_t i = 0; i < e->n_slots; i++)
        if (gpo_kv_len(e->slots[i].kv) != len[i])
            return out_of_step(head, "a slot's cache length", (long long)gpo_kv_len(e->slots[i].kv),
                               len[i]);
    return GPO_OK;
}

/* The step's sequences as this rank's batch; each cache must hold what the
 * leader's does. */
static enum gpo_status plan_batch(gpo_engine *e, const int64_t *head) {
    const int32_t *w = e->plan.ids + head[H_OPS] * 3, *end = e->plan.ids + e->plan.n;
    for (int64_t b = 0; b < head[H_SEQS]; b++) {
        if (end - w < SEQ_WORDS || w[0] < 0 || (size_t)w[0] >= e->n_slots || w[1] < 1 ||
            w[1] > end - w - SEQ_WORDS || w[2] < GPO_LOGITS_NONE || w[2] > GPO_LOGITS_ALL ||
            w[4] < 0 || w[4] > GPO_CAND_MAX || (w[4] > 0 && w[2] != GPO_LOGITS_LAST))
            return gpo_fail(GPO_ERR_IO, "rank %d (%s): step %lld of the leader: sequence %lld "
                            "(slot %d) does not fit an engine of %zu slots or the plan's %zu words "
                            "(or asks for candidates of more than %d or of all tokens)",
                            gpo_dist_rank(), gpo_dist_host(), (long long)head[H_STEP], (long long)b,
                            end - w >= 1 ? w[0] : -1, e->n_slots, e->plan.n, GPO_CAND_MAX);
        gpo_kv *kv = e->slots[w[0]].kv;
        if (gpo_kv_len(kv) != w[3])
            return out_of_step(head, "a cache's length", (long long)gpo_kv_len(kv), w[3]);
        e->follow_batch[b] = (struct gpo_seq_batch){kv, w + SEQ_WORDS, w[1],
                                                    (enum gpo_logits_mode)w[2]};
        e->seq_k[b] = w[4];
        w += SEQ_WORDS + w[1];
    }
    return GPO_OK;
}

enum gpo_status gpo_engine_follow(gpo_engine *e) {
    if (!e->follower)
        return gpo_fail(GPO_ERR_ARG, "gpo_engine_follow on an engine that leads or runs alone");
    for (;;) {
        int64_t head[PLAN_HEAD];
        GPO_TRY(receive_plan(e, head));
        GPO_TRY(apply_ops(e, head));
        if (head[H_KIND] == PLAN_END) {
            GPO_TRY(check_end(e, head));
            gpo_log(GPO_LOG_INFO,
                    "rank %d (%s): followed %lld steps, caches in step with the leader",
                    gpo_dist_rank(), gpo_dist_host(), (long long)e->totals.n_steps);
            return GPO_OK;
        }
        GPO_TRY(plan_batch(e, head));
        struct gpo_fwd_cands fc;
        enum gpo_status s =
            gpo_forward_cands(e->ctx, e->follow_batch, head[H_SEQS], e->logits,
                              step_cands(e, e->follow_batch, head[H_SEQS], &fc));
        if (s != GPO_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", gpo_last_error());
            return gpo_fail(s, "rank %d (%s): the forward pass of step %lld failed: %s",
                            gpo_dist_rank(), gpo_dist_host(), (long long)head[H_STEP], why);
        }
        e->totals.n_steps++;
    }
}
