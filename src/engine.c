/* engine.c - generation over several users at once: each forward step is one
 * token batch holding prefill chunks (up to ubatch tokens) and one decode token
 * per user; logits are sampled per user, parsed as harmony and checked against
 * the stop rules.  Slots keep their KV cache so a continued conversation only
 * prefills from the first changed token. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"
#include "model.h"
#include "util.h"

/* Extra ring slots so a continued conversation can rewind past the last answer
 * without prefilling everything again (costs margin x 4 KiB per sliding layer). */
#define GPO_ENGINE_RING_MARGIN 1024

struct slot {
    gpo_kv *kv;
    struct gpo_ids cached; /* the tokens whose keys are in kv, in order */
};

struct gpo_engine {
    const gpo_model *m;
    const gpo_tokenizer *tok;
    struct gpo_engine_opts opts;
    gpo_ctx *ctx;
    struct slot *slots;
    size_t n_slots;
    uint8_t *banned;
    float *logits; /* [n_slots][n_vocab] */
    volatile sig_atomic_t *abort_flag;
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
    struct gpo_ctx_opts co = {.max_tokens = max_tokens, .max_seqs = (int64_t)n_slots,
                              .n_threads = e->opts.n_threads, .path = e->opts.path};
    if ((s = gpo_ctx_create(m, &co, &e->ctx)) != GPO_OK) goto fail;
    e->n_slots = n_slots;
    e->slots = calloc(n_slots, sizeof *e->slots);
    e->banned = calloc((size_t)c->n_vocab, 1);
    e->logits = malloc(n_slots * (size_t)c->n_vocab * sizeof(float));
    if (!e->slots || !e->banned || !e->logits) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory for %zu users", n_slots);
        goto fail;
    }
    for (size_t i = 0; i < n_slots; i++)
        if ((s = gpo_kv_create_ex(m, e->opts.max_seq_len, GPO_ENGINE_RING_MARGIN, &e->slots[i].kv)) != GPO_OK) {
            /* One cache's size says little when many users need one each. */
            if (s == GPO_ERR_NOMEM) {
                double each = (double)gpo_kv_bytes_for_ex(c, e->opts.max_seq_len, GPO_ENGINE_RING_MARGIN);
                s = gpo_fail(GPO_ERR_NOMEM,
                             "cannot allocate the KV caches: %zu users x %.1f MiB (%lld positions "
                             "each) = %.1f MiB in all; lower the users or the context length",
                             n_slots, each / 1048576.0, (long long)e->opts.max_seq_len,
                             each * (double)n_slots / 1048576.0);
            }
            goto fail;
        }
    ban_undefined_ids(e->banned, c->n_vocab, t);
    *out = e;
    return GPO_OK;
fail:
    gpo_engine_free(e);
    return s;
}

void gpo_engine_free(gpo_engine *e) {
    if (!e) return;
    for (size_t i = 0; e->slots && i < e->n_slots; i++) {
        gpo_kv_free(e->slots[i].kv);
        gpo_ids_free(&e->slots[i].cached);
    }
    free(e->slots);
    free(e->banned);
    free(e->logits);
    gpo_ctx_free(e->ctx);
    free(e);
}

void gpo_engine_set_abort(gpo_engine *e, volatile sig_atomic_t *flag) {
    e->abort_flag = flag;
    gpo_ctx_set_abort(e->ctx, flag);
}

const char *gpo_engine_kernels(const gpo_engine *e) { return gpo_ctx_kernels(e->ctx); }

uint64_t gpo_engine_kv_bytes(const gpo_engine *e) {
    uint64_t b = 0;
    for (size_t i = 0; i < e->n_slots; i++) b += gpo_kv_bytes(e->slots[i].kv);
    return b;
}

void gpo_engine_reset_slot(gpo_engine *e, size_t slot) {
    if (slot >= e->n_slots) return;
    gpo_kv_rewind(e->slots[slot].kv, 0);
    e->slots[slot].cached.n = 0;
}

void gpo_gen_user_free(struct gpo_gen_user *u) {
    gpo_ids_free(&u->generated);
    gpo_str_free(&u->final_text);
    gpo_str_free(&u->analysis_text);
    gpo_str_free(&u->raw_text);
}

/* Per-user state of a run. */
struct run_user {
    struct gpo_gen_user *u;
    struct slot *slot;
    gpo_sampler *sampler;
    gpo_hparser *parser;
    size_t next_prompt;   /* prompt tokens already in the cache */
    int32_t pending;      /* sampled id to feed next, or -1 */
    int done;
    double t_prev;        /* time of the previous token */
    double decode_sum;    /* sum of inter-token times after the first */
    int64_t decode_n;
};

/* Keep the longest common prefix of the slot's cached tokens and the prompt, and
 * always leave at least the last prompt token to run (its logits are needed). */
static void reuse_prefix(struct run_user *r) {
    struct slot *sl = r->slot;
    const struct gpo_gen_user *u = r->u;
    size_t common = 0, lim = sl->cached.n < u->n_prompt ? sl->cached.n : u->n_prompt;
    while (common < lim && sl->cached.ids[common] == u->prompt[common]) common++;
    if (common >= u->n_prompt) common = u->n_prompt - 1;
    if (gpo_kv_rewind(sl->kv, (int64_t)common) != GPO_OK) {
        gpo_log(GPO_LOG_INFO, "cannot reuse %zu cached tokens (%s); prefilling the whole prompt",
                common, gpo_last_error());
        gpo_kv_rewind(sl->kv, 0);
        common = 0;
    }
    sl->cached.n = common;
    r->next_prompt = common;
    r->u->n_reused = (int64_t)common;
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

/* The user's turn is over: the whole final text may be shown. */
static void finish_user(struct run_user *r, enum gpo_finish f) {
    r->u->finish = f;
    r->u->final_stream_n = r->u->final_text.n;
    r->done = 1;
}

/* A failure of this user alone (its sampling, parsing or texts): it ends with
 * GPO_FINISH_ERROR and the reason, while the other users go on. */
static void fail_user(struct run_user *r, size_t idx, enum gpo_status s) {
    struct gpo_gen_user *u = r->u;
    const char *why = gpo_last_error();
    snprintf(u->error_msg, sizeof u->error_msg, "%s", why && why[0] ? why : gpo_status_str(s));
    u->error = s;
    finish_user(r, GPO_FINISH_ERROR);
    r->pending = -1;
    gpo_log(GPO_LOG_WARN, "user %zu stopped after %zu tokens: %s", idx, u->generated.n, u->error_msg);
}

/* Record one sampled id: parser, texts, stop rules; marks the user done when a
 * stop rule, the token limit or the context ends its turn. */
static enum gpo_status accept_token(gpo_engine *e, struct run_user *r, size_t idx, int32_t id,
                                    double now, gpo_token_fn cb, void *ud) {
    struct gpo_gen_user *u = r->u;
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
    } else if (gpo_kv_len(r->slot->kv) + 1 > gpo_kv_capacity(r->slot->kv)) {
        f = GPO_FINISH_CONTEXT;
    }
    if (f == GPO_FINISH_NONE) {
        size_t safe = gpo_stop_safe_len(u->final_text.s, u->final_text.n, u->stops, u->n_stops);
        if (safe > u->final_stream_n) u->final_stream_n = safe;
        if (cb) cb(ud, idx, id, &ev);
        r->pending = id;
        return GPO_OK;
    }
    finish_user(r, f);
    if (cb) cb(ud, idx, id, &ev);
    struct gpo_hevent fev;
    GPO_TRY(gpo_hparser_finish(r->parser, &fev));
    if (fev.text_len > 0 && fev.channel == GPO_CH_FINAL && f != GPO_FINISH_STOP) {
        GPO_TRY(gpo_str_append(&u->final_text, fev.text, fev.text_len));
        u->final_stream_n = u->final_text.n;
        if (cb) cb(ud, idx, -1, &fev);
    } else if (fev.text_len > 0 && fev.channel == GPO_CH_ANALYSIS) {
        GPO_TRY(gpo_str_append(&u->analysis_text, fev.text, fev.text_len));
        if (cb) cb(ud, idx, -1, &fev);
    }
    if (gpo_hparser_recovered(r->parser)) u->recovered = 1;
    return GPO_OK;
}

enum gpo_status gpo_engine_run(gpo_engine *e, struct gpo_gen_user *users, size_t n,
                               gpo_token_fn on_token, void *ud, struct gpo_gen_stats *stats) {
    const struct gpo_config *c = gpo_model_config(e->m);
    const int64_t V = c->n_vocab;
    enum gpo_status s = GPO_OK;
    struct run_user *ru = NULL;
    struct gpo_seq_batch *batch = NULL;
    size_t *batch_user = NULL;
    struct gpo_gen_stats st = {0};

    if (n == 0 || n > e->n_slots)
        return gpo_fail(GPO_ERR_ARG, "%zu users for an engine with %zu slots", n, e->n_slots);
    for (size_t i = 0; i < n; i++) {
        if (users[i].n_prompt == 0 || !users[i].prompt)
            return gpo_fail(GPO_ERR_ARG, "user %zu has an empty prompt", i);
        if ((int64_t)users[i].n_prompt >= e->opts.max_seq_len)
            return gpo_fail(GPO_ERR_CONTEXT,
                            "user %zu: the prompt has %zu tokens but the context holds %lld "
                            "(raise --max-seq-len, up to %lld)", i, users[i].n_prompt,
                            (long long)e->opts.max_seq_len, (long long)c->max_position);
        for (size_t j = 0; j < users[i].n_prompt; j++)
            if (users[i].prompt[j] < 0 || users[i].prompt[j] >= V)
                return gpo_fail(GPO_ERR_TOKEN, "user %zu: prompt token %d is outside the vocabulary", i,
                                users[i].prompt[j]);
    }
    ru = calloc(n, sizeof *ru);
    batch = calloc(n, sizeof *batch);
    batch_user = calloc(n, sizeof *batch_user);
    if (!ru || !batch || !batch_user) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        struct run_user *r = &ru[i];
        r->u = &users[i];
        r->slot = &e->slots[i];
        r->pending = -1;
        users[i].finish = GPO_FINISH_NONE;
        users[i].generated.n = users[i].final_text.n = users[i].analysis_text.n = users[i].raw_text.n = 0;
        users[i].final_stream_n = 0;
        users[i].recovered = users[i].aborted = 0;
        users[i].error = GPO_OK;
        users[i].error_msg[0] = 0;
        if ((s = gpo_sampler_create(&users[i].sampling, V, e->banned, &r->sampler)) != GPO_OK) goto cleanup;
        if ((s = gpo_hparser_create(e->tok, &r->parser)) != GPO_OK) goto cleanup;
        reuse_prefix(r);
    }

    double t0 = gpo_now();
    for (;;) {
        /* Schedule one step: one decode token per generating user first, then
         * prefill chunks within the ubatch budget. */
        int64_t budget = e->opts.ubatch, nb = 0;
        int any_active = 0, prefill_in_step = 0;
        for (size_t i = 0; i < n; i++) {
            struct run_user *r = &ru[i];
            if (r->done) continue;
            any_active = 1;
            if (r->pending >= 0) {
                batch[nb] = (struct gpo_seq_batch){r->slot->kv, &r->pending, 1, GPO_LOGITS_LAST};
                batch_user[nb++] = i;
                budget--;
            }
        }
        if (!any_active) break;
        for (size_t i = 0; i < n && budget > 0; i++) {
            struct run_user *r = &ru[i];
            if (r->done || r->pending >= 0) continue;
            size_t left = r->u->n_prompt - r->next_prompt;
            int64_t take = (int64_t)left < budget ? (int64_t)left : budget;
            batch[nb] = (struct gpo_seq_batch){r->slot->kv, r->u->prompt + r->next_prompt, take,
                                               take == (int64_t)left ? GPO_LOGITS_LAST : GPO_LOGITS_NONE};
            batch_user[nb++] = i;
            budget -= take;
            prefill_in_step = 1;
            st.n_prefill += take;
        }
        double ts = gpo_now();
        s = gpo_forward(e->ctx, batch, nb, e->logits);
        if (s == GPO_ERR_ABORTED) {
            for (size_t i = 0; i < n; i++)
                if (!ru[i].done) {
                    finish_user(&ru[i], GPO_FINISH_ABORTED);
                    users[i].aborted = 1;
                }
            s = GPO_OK;
            break;
        }
        if (s != GPO_OK) goto cleanup;
        double now = gpo_now();
        st.n_steps++;
        if (!prefill_in_step) {
            st.decode_seconds += now - ts;
            st.weight_bytes += expected_step_bytes(e->m, nb);
        }
        /* Record what went in the cache, then sample where logits came out. */
        int64_t row = 0;
        for (int64_t b = 0; b < nb; b++) {
            struct run_user *r = &ru[batch_user[b]];
            if ((s = gpo_ids_append(&r->slot->cached, batch[b].tokens, (size_t)batch[b].n_tokens)) != GPO_OK)
                goto cleanup;
            if (r->pending >= 0) {
                r->pending = -1;
            } else {
                r->next_prompt += (size_t)batch[b].n_tokens;
            }
            if (batch[b].logits == GPO_LOGITS_NONE) continue;
            int32_t id;
            enum gpo_status us = gpo_sampler_sample(r->sampler, e->logits + row * V, &id, NULL);
            row++;
            if (us == GPO_OK) {
                st.n_generated++;
                us = accept_token(e, r, batch_user[b], id, now - t0, on_token, ud);
            }
            if (us != GPO_OK) fail_user(r, batch_user[b], us);
        }
        if (e->abort_flag && *e->abort_flag) {
            for (size_t i = 0; i < n; i++)
                if (!ru[i].done) {
                    finish_user(&ru[i], GPO_FINISH_ABORTED);
                    users[i].aborted = 1;
                }
        }
    }
    st.t_total = gpo_now() - t0;
    double ttft = 0, dsum = 0;
    int64_t dn = 0;
    for (size_t i = 0; i < n; i++) {
        ttft += users[i].t_first;
        dsum += ru[i].decode_sum;
        dn += ru[i].decode_n;
    }
    st.avg_ttft = ttft / (double)n;
    st.avg_decode_ms = dn > 0 ? 1000.0 * dsum / (double)dn : 0.0;
    st.tok_s_user = st.avg_decode_ms > 0 ? 1000.0 / st.avg_decode_ms : 0.0;
    st.tok_s_total = st.tok_s_user * (double)n;

cleanup:
    for (size_t i = 0; ru && i < n; i++) {
        gpo_sampler_free(ru[i].sampler);
        gpo_hparser_free(ru[i].parser);
    }
    free(ru);
    free(batch);
    free(batch_user);
    if (stats) *stats = st;
    return s;
}
