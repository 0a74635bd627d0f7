/* server.c - `gptoss serve`'s HTTP side and engine thread (see server.h).
 *
 * Threads: libmicrohttpd runs one thread per connection.  A handler reads the
 * body, validates it and renders the prompt (the tokenizer is read-only), then
 * posts a job to the inbox under srv->mu and waits on the job's condition
 * variable.  The engine thread alone calls engine functions: it submits what
 * the inbox holds, cancels jobs whose client went away, steps while work exists
 * and sleeps on srv->wake when idle.  Token callbacks (engine thread) copy the
 * new text into the job under srv->mu, so handlers never read engine memory.
 * A job has two references, the handler's and the engine's; the last one frees. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "cli.h"
#include "openai.h"
#include "server.h"

enum job_state { JOB_PENDING = 0, JOB_RUNNING, JOB_DONE, JOB_REJECTED };

/* Seconds a connection may stay silent while its request arrives (or between
 * requests): slow senders are cut off.  Lifted while the request is answered, so
 * a long generation is never cut. */
#define SERVE_IDLE_TIMEOUT 10u
/* Seconds a stopping server gives its connections to send the answers it ended. */
#define SERVE_DRAIN_SECONDS 5
/* Milliseconds an idle engine waits after a request arrives for others sent with it
 * (a step with a prompt in it takes a second or more on a CPU). */
#define SERVE_COALESCE_MS 20

struct server;

/* What a job answers: a chat completion, or a legacy text completion (the raw
 * decoded continuation, its stop strings checked here). */
enum job_kind { JOB_CHAT = 0, JOB_TEXT };

struct job {
    struct server *srv;
    /* inputs, set before posting */
    enum job_kind kind;
    struct gpo_ids prompt;
    struct gpo_ids prefix;   /* a forced call's opened header (also the prompt's end) */
    char **tool_names;       /* tool_choice required: the functions the model may name */
    size_t n_tool_names;
    int want_logprobs;
    double t_post;           /* when the handler posted it (time to first token) */
    struct gpo_sampler_params sp;
    int64_t max_tokens;
    char *stops[OAI_MAX_STOPS];
    size_t n_stops;
    int want_calls;          /* the request offered tools: parse function calls */
    /* engine thread only */
    gpo_req *h;
    struct job *next;        /* inbox or active list */
    int cancelled;
    struct oai_content_tokens content; /* chat: which generated tokens are content */
    struct gpo_str raw;      /* text: the decoded continuation (cut at a stop string) */
    int stop_hit;            /* text: a stop string ended it */
    double t_last;           /* time of the previous token (inter-token latency) */
    /* shared, under srv->mu */
    pthread_cond_t cv;
    enum job_state state;
    enum gpo_status status;  /* why it was rejected */
    char msg[256];
    struct gpo_str final, analysis; /* copies of what may be shown */
    enum gpo_finish finish;
    int64_t n_generated;
    struct oai_call *calls;  /* function calls of the answer (set when done) */
    size_t n_calls;
    int32_t *lp_ids;         /* logprobs: the answer's tokens so far and their values */
    struct gpo_logprobs *lps;
    size_t n_lp, cap_lp;
    int gone;                /* the client went away */
    int refs;
};

/* Routes as /metrics labels them (unknown paths are one label). */
enum route_id { R_CHAT = 0, R_TEXT, R_MODELS, R_HEALTH, R_METRICS, R_OTHER, R_COUNT };
static const char *const route_names[R_COUNT] = {"/v1/chat/completions", "/v1/completions",
                                                 "/v1/models", "/health", "/metrics", "other"};
#define METRIC_CODES 24 /* distinct (route, status) pairs kept */

static const double ttft_le[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

/* What /metrics shows, under srv->mu: counters and histograms grow from the
 * threads that see the events; the gauges are the engine thread's snapshot after
 * each step (handler threads never call the engine). */
struct metrics {
    struct req_count {
        int route;
        unsigned code;
        uint64_t n;
    } req[METRIC_CODES];
    size_t n_req;
    uint64_t prompt_tokens, generated_tokens;
    struct oai_histogram ttft, itl;
    size_t queued, running;
    struct gpo_kv_pool_stats kv;
};

struct server {
    const struct serve_cfg *cfg;
    struct metrics met;
    struct gen_env env;
    gpo_engine *eng;
    char model_name[256];
    int64_t max_seq_len;      /* the engine's, for the context check */
    const char *date;
    char datebuf[11];
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* the engine thread's */
    struct job *inbox, *inbox_tail;
    int stopping;
    size_t answering;         /* posted requests whose answer is not yet sent */
    atomic_int ready;
    volatile sig_atomic_t abort_flag;
    atomic_uint_fast64_t next_id;
};

/* ------------------------------------------------------------------------- */
/* Jobs                                                                      */

static void job_unref_locked(struct job *j) {
    if (--j->refs > 0) return;
    gpo_ids_free(&j->prompt);
    gpo_ids_free(&j->prefix);
    for (size_t i = 0; i < j->n_tool_names; i++) free(j->tool_names[i]);
    free(j->tool_names);
    oai_content_free(&j->content);
    gpo_str_free(&j->raw);
    free(j->lp_ids);
    free(j->lps);
    for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
    gpo_str_free(&j->final);
    gpo_str_free(&j->analysis);
    for (size_t i = 0; i < j->n_calls; i++) {
        free(j->calls[i].id);
        free(j->calls[i].name);
        free(j->calls[i].arguments);
    }
    free(j->calls);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void job_unref(struct job *j) {
    struct server *srv = j->srv;
    pthread_mutex_lock(&srv->mu);
    job_unref_locked(j);
    pthread_mutex_unlock(&srv->mu);
}

/* Copy the new showable text of the request into the job (srv->mu held). */
static void job_copy_locked(struct job *j, const struct gpo_gen_user *u, int final) {
    size_t fn = final ? u->final_text.n : u->final_stream_n;
    if (fn > j->final.n && u->final_text.s)
        gpo_str_append(&j->final, u->final_text.s + j->final.n, fn - j->final.n);
    if (u->analysis_text.n > j->analysis.n && u->analysis_text.s)
        gpo_str_append(&j->analysis, u->analysis_text.s + j->analysis.n,
                       u->analysis_text.n - j->analysis.n);
    j->n_generated = (int64_t)u->generated.n;
}

/* Add generated token i to the answer's logprobs (srv->mu held). */
static void lp_push_locked(struct job *j, const struct gpo_gen_user *u, size_t i) {
    if (i >= u->n_logprobs) return;
    if (j->n_lp == j->cap_lp) {
        size_t cap = j->cap_lp ? 2 * j->cap_lp : 64;
        int32_t *ids = realloc(j->lp_ids, cap * sizeof *ids);
        if (ids) j->lp_ids = ids;
        struct gpo_logprobs *lps = ids ? realloc(j->lps, cap * sizeof *lps) : NULL;
        if (!lps) return; /* out of memory: the entry is left out */
        j->lps = lps;
        j->cap_lp = cap;
    }
    j->lp_ids[j->n_lp] = u->generated.ids[i];
    j->lps[j->n_lp++] = u->logprobs[i];
}

/* A chat token: its logprobs when it is part of the content (srv->mu held). */
static void chat_token_locked(struct job *j, const struct gpo_gen_user *u, int32_t id,
                              const struct gpo_hevent *ev) {
    if (j->want_logprobs) {
        size_t i = u->generated.n - 1;
        int special = id >= 0 && gpo_tokenizer_is_special(j->srv->env.tok, id);
        oai_content_track(&j->content, i, id, special, ev);
        while (j->n_lp < j->content.n) {
            size_t before = j->n_lp;
            lp_push_locked(j, u, j->content.idx[j->n_lp]);
            if (j->n_lp == before) break;
        }
    }
    job_copy_locked(j, u, 0);
}

/* A text-completion token: appended to the raw text, whose stop strings end the
 * request (cancelled: it ends before its next token); what can no longer become
 * a stop string is shown (srv->mu held). */
static void text_token_locked(struct job *j, const struct gpo_gen_user *u, int32_t id) {
    const char *b;
    size_t n;
    if (id < 0 || j->stop_hit || gpo_is_stop_token(id) ||
        gpo_tokenizer_token_bytes(j->srv->env.tok, id, &b, &n) != GPO_OK)
        return;
    size_t prev = j->raw.n, at = 0;
    if (gpo_str_append(&j->raw, b, n) != GPO_OK) return;
    if (j->want_logprobs) lp_push_locked(j, u, u->generated.n - 1);
    if (gpo_stop_check(0, j->raw.s, j->raw.n, prev, (const char *const *)j->stops, j->n_stops,
                       &at) == GPO_FINISH_STOP) {
        j->raw.n = at;
        j->raw.s[at] = 0;
        j->stop_hit = 1;
        gpo_engine_cancel(j->srv->eng, j->h);
    }
    size_t safe = j->stop_hit ? j->raw.n
                              : gpo_stop_safe_len(j->raw.s, j->raw.n,
                                                  (const char *const *)j->stops, j->n_stops);
    if (safe > j->final.n) gpo_str_append(&j->final, j->raw.s + j->final.n, safe - j->final.n);
    j->n_generated = (int64_t)u->generated.n;
}

static void on_token(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct job *j = ud;
    struct server *srv = j->srv;
    const struct gpo_gen_user *u = gpo_req_output(j->h);
    double now = gpo_now();
    pthread_mutex_lock(&srv->mu);
    if (id >= 0) {
        if (u->generated.n == 1) oai_hist_observe(&srv->met.ttft, now - j->t_post);
        else oai_hist_observe(&srv->met.itl, now - j->t_last);
        j->t_last = now;
    }
    if (j->kind == JOB_TEXT) text_token_locked(j, u, id);
    else chat_token_locked(j, u, id, ev);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&srv->mu);
}

/* ------------------------------------------------------------------------- */
/* The engine thread                                                         */

static uint64_t random_u53(void);

/* The function calls of a finished answer: its ids parsed again as harmony
 * messages (the engine keeps only the final and analysis text). */
static void find_calls(struct server *srv, struct job *j, const struct gpo_gen_user *u,
                       struct gpo_str *text) {
    gpo_hparser *p = NULL;
    if (gpo_hparser_create(srv->env.tok, &p) != GPO_OK) return;
    /* A forced call's header was part of the prompt: read as the model's own. */
    for (size_t i = 0; i < j->prefix.n; i++)
        if (gpo_hparser_push(p, j->prefix.ids[i], NULL) != GPO_OK) break;
    for (size_t i = 0; i < u->generated.n; i++)
        if (gpo_hparser_push(p, u->generated.ids[i], NULL) != GPO_OK) break;
    if (!gpo_hparser_done(p)) gpo_hparser_finish(p, NULL);
    size_t n = gpo_hparser_n_messages(p), k = 0;
    struct oai_call *calls = n ? calloc(n, sizeof *calls) : NULL;
    for (size_t i = 0; calls && i < n; i++) {
        const struct gpo_hparsed *m = gpo_hparser_message(p, i);
        const char *name;
        if (!oai_is_call(m, &name)) continue;
        if (j->n_tool_names && !oai_tool_known(j->tool_names, j->n_tool_names, name)) {
            /* tool_choice required, and the model named no function of the
             * request: its arguments are shown as text. */
            gpo_str_append(text, m->msg.content ? m->msg.content : "", m->content_len);
            continue;
        }
        char id[40];
        snprintf(id, sizeof id, "call_%013llx", (unsigned long long)random_u53());
        struct oai_call *c = &calls[k++];
        c->id = strdup(id);
        c->name = strdup(name);
        c->arguments = strndup(m->msg.content ? m->msg.content : "", m->content_len);
        if (!c->id || !c->name || !c->arguments) { /* out of memory: drop this call */
            free(c->id);
            free(c->name);
            free(c->arguments);
            k--;
        }
    }
    gpo_hparser_free(p);
    j->calls = calls;
    j->n_calls = k;
}

/* The engine's gauges for /metrics (engine thread, srv->mu held). */
static void metrics_snapshot_locked(struct server *srv) {
    srv->met.queued = gpo_engine_n_queued(srv->eng);
    srv->met.running = gpo_engine_n_running(srv->eng);
    gpo_engine_kv_pool(srv->eng, &srv->met.kv);
}

static void job_finish(struct server *srv, struct job *j, int aborted) {
    const struct gpo_gen_user *u = gpo_req_output(j->h);
    struct gpo_str text = {0};
    /* The calls are written before the state says done, read by the handler only
     * after.  A forced call cut off by the token limit is shown as far as it got,
     * with finish_reason length, as OpenAI does. */
    int cut = u->finish == GPO_FINISH_LENGTH || u->finish == GPO_FINISH_CONTEXT;
    if (j->want_calls && (u->finish == GPO_FINISH_STOP || (j->prefix.n && cut)))
        find_calls(srv, j, u, &text);
    pthread_mutex_lock(&srv->mu);
    if (j->kind == JOB_CHAT) job_copy_locked(j, u, 1);
    else if (j->raw.n > j->final.n)
        gpo_str_append(&j->final, j->raw.s + j->final.n, j->raw.n - j->final.n);
    if (text.n) gpo_str_append(&j->final, text.s, text.n);
    gpo_str_free(&text);
    j->n_generated = (int64_t)u->generated.n;
    srv->met.prompt_tokens += j->prompt.n;
    srv->met.generated_tokens += u->generated.n;
    j->finish = aborted && u->finish == GPO_FINISH_NONE ? GPO_FINISH_ABORTED : u->finish;
    if (j->stop_hit) j->finish = GPO_FINISH_STOP;
    if (j->finish == GPO_FINISH_ERROR) snprintf(j->msg, sizeof j->msg, "%s", u->error_msg);
    pthread_mutex_unlock(&srv->mu);
    gpo_engine_release(srv->eng, j->h);
    j->h = NULL;
    pthread_mutex_lock(&srv->mu);
    /* The gauges no longer count the request when its client hears it ended. */
    metrics_snapshot_locked(srv);
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&srv->mu);
    job_unref(j);
}

static void *engine_main(void *arg) {
    struct server *srv = arg;
    struct job *active = NULL;
    pthread_mutex_lock(&srv->mu);
    int worked = 0;
    for (;;) {
        if (worked && !srv->stopping && !srv->inbox && !active) {
            /* Going idle: hand back what the allocator keeps of the requests'
             * memory.  With a thread per connection glibc spreads allocations over
             * many arenas whose freed pages otherwise stay resident, so the RSS of
             * a server that has served a burst would not come back down. */
            pthread_mutex_unlock(&srv->mu);
            malloc_trim(0);
            pthread_mutex_lock(&srv->mu);
            worked = 0;
            continue;
        }
        while (!srv->stopping && !srv->inbox && !active)
            pthread_cond_wait(&srv->wake, &srv->mu);
        if (!active && !srv->stopping) {
            /* Waking from idle: requests sent together reach the handlers a few
             * milliseconds apart.  Wait SERVE_COALESCE_MS for the others, so that
             * their prompts share the first step instead of one starting alone and
             * the rest waiting behind a step (seconds, with a prompt in it). */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += SERVE_COALESCE_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (!srv->stopping && pthread_cond_timedwait(&srv->wake, &srv->mu, &until) == 0) {
            }
        }
        worked = 1;
        struct job *in = srv->inbox;
        srv->inbox = srv->inbox_tail = NULL;
        int stopping = srv->stopping;
        pthread_mutex_unlock(&srv->mu);

        while (in) {
            struct job *j = in;
            in = in->next;
            j->next = NULL;
            struct gpo_request rq = {.prompt = j->prompt.ids, .n_prompt = j->prompt.n,
                                     .sampling = j->sp, .max_tokens = j->max_tokens,
                                     .stops = (const char *const *)j->stops,
                                     /* text completions check theirs on the raw text */
                                     .n_stops = j->kind == JOB_CHAT ? j->n_stops : 0,
                                     .on_token = on_token, .ud = j,
                                     .logprobs = j->want_logprobs,
                                     .parser_prefix = j->prefix.ids,
                                     .n_parser_prefix = j->prefix.n};
            enum gpo_status s = stopping ? GPO_ERR_BUSY
                                         : gpo_engine_submit(srv->eng, &rq, &j->h);
            pthread_mutex_lock(&srv->mu);
            if (s != GPO_OK) {
                j->state = JOB_REJECTED;
                j->status = s;
                snprintf(j->msg, sizeof j->msg, "%s",
                         stopping ? "the server is shutting down" : gpo_last_error());
                pthread_cond_broadcast(&j->cv);
                job_unref_locked(j);
            } else {
                j->state = JOB_RUNNING;
                pthread_cond_broadcast(&j->cv);
                j->next = active;
                active = j;
            }
            pthread_mutex_unlock(&srv->mu);
        }

        /* Clients that went away: their requests end at the next step. */
        pthread_mutex_lock(&srv->mu);
        for (struct job *j = active; j; j = j->next)
            if (j->gone && !j->cancelled) {
                gpo_engine_cancel(srv->eng, j->h);
                j->cancelled = 1;
            }
        pthread_mutex_unlock(&srv->mu);
        if (stopping) srv->abort_flag = 1;

        enum gpo_status s = GPO_OK;
        if (active) {
            size_t left = 0;
            s = gpo_engine_step(srv->eng, &left);
            if (s != GPO_OK && !stopping)
                fprintf(stderr, "gptoss serve: a forward step failed: %s\n", gpo_last_error());
        }
        /* Hand finished requests back; when stopping and the step failed (aborted),
         * everything left ends now. */
        struct job **pp = &active;
        while (*pp) {
            struct job *j = *pp;
            int end = gpo_req_state(j->h) == GPO_REQ_DONE || (stopping && s != GPO_OK);
            if (end) {
                *pp = j->next;
                job_finish(srv, j, stopping);
            } else {
                pp = &j->next;
            }
        }
        pthread_mutex_lock(&srv->mu);
        metrics_snapshot_locked(srv);
        if (srv->stopping && !active && !srv->inbox) break;
    }
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

/* Post a job and wait until it is submitted or rejected.  0 when running. */
static int post_job(struct server *srv, struct job *j) {
    pthread_mutex_lock(&srv->mu);
    if (srv->stopping) {
        j->state = JOB_REJECTED;
        j->status = GPO_ERR_BUSY;
        snprintf(j->msg, sizeof j->msg, "the server is shutting down");
        j->refs--;
        pthread_mutex_unlock(&srv->mu);
        return -1;
    }
    if (srv->inbox_tail) srv->inbox_tail->next = j;
    else srv->inbox = j;
    srv->inbox_tail = j;
    j->t_post = gpo_now();
    pthread_cond_signal(&srv->wake);
    while (j->state == JOB_PENDING) pthread_cond_wait(&j->cv, &srv->mu);
    int rc = j->state == JOB_REJECTED ? -1 : 0;
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

static void job_mark_gone(struct job *j) {
    struct server *srv = j->srv;
    pthread_mutex_lock(&srv->mu);
    j->gone = 1;
    pthread_cond_signal(&srv->wake);
    pthread_mutex_unlock(&srv->mu);
}

/* ------------------------------------------------------------------------- */
/* HTTP                                                                      */

struct conn {
    struct server *srv;
    char *body;
    size_t n, cap;
    int too_big;
    struct job *job;   /* streaming: the handler's reference, dropped at completion */
    struct MHD_Connection *mhd; /* to see whether a waiting stream's client is still there */
    /* streaming state */
    char id[48];
    int64_t created, n_prompt;
    int include_usage;
    int sent_role, finished;
    size_t sent_final, sent_analysis;
    size_t sent_lp, lp_offset; /* logprob entries sent; text offset of the next one */
    size_t lp_bytes;           /* bytes of the entries sent */
    int want_logprobs, top_logprobs;
    enum route_id route;
    unsigned status;           /* the HTTP status queued, 0 before */
    int answering;             /* counted in srv->answering */
    char *out;
    size_t out_n, out_pos, out_cap;
};

/* The connection whose request this thread is answering: with one thread per
 * connection, the handler that queues a response runs on its connection's own
 * thread, so the status can be kept for /metrics without passing it around. */
static _Thread_local struct conn *current;

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, struct MHD_Response *r) {
    if (current) current->status = status;
    return MHD_queue_response(c, status, r);
}

static enum MHD_Result send_body(struct MHD_Connection *c, unsigned status, char *body,
                                 const char *type) {
    if (!body) return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ok = queue(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *root) {
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return send_body(c, status, s, "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *c, const struct oai_error *e,
                                  const char *retry_after) {
    char *s = oai_error_json(e);
    if (!s) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    if (e->http == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ok = queue(c, (unsigned)e->http, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result fail(struct MHD_Connection *c, int http, const char *type,
                            const char *param, const char *code, const char *msg) {
    struct oai_error e;
    oai_err(&e, http, type, param, code, "%s", msg);
    return send_error(c, &e, http == 503 ? "1" : NULL);
}

static uint64_t random_u53(void) {
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x)
        x = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    return x >> 11;
}

/* Is the client still there?  A closed connection reads as end of file. */
static int client_alive(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 1;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return 0;
    char b;
    ssize_t got = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return got != 0;
}

/* Wait up to 200 ms for news of the job (srv->mu held).  A client found gone
 * meanwhile is marked so, and the engine cancels its request at the next step,
 * even while it is still queued or being prefilled. */
static void job_wait_alive(struct MHD_Connection *c, struct job *j) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 200 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&j->cv, &j->srv->mu, &ts);
    if (j->state != JOB_DONE && !j->gone && !client_alive(c)) {
        j->gone = 1;
        pthread_cond_signal(&j->srv->wake);
    }
}

static enum MHD_Result reject(struct MHD_Connection *c, struct job *j) {
    /* Read under no lock: a rejected job is no longer touched by the engine. */
    const char *param = j->kind == JOB_TEXT ? "prompt" : "messages";
    if (j->status == GPO_ERR_BUSY)
        return fail(c, 503, "server_error", NULL, "server_busy", j->msg);
    if (j->status == GPO_ERR_CONTEXT)
        return fail(c, 400, "invalid_request_error", param, "context_length_exceeded", j->msg);
    if (j->status == GPO_ERR_TOKEN)
        return fail(c, 400, "invalid_request_error", param, NULL, j->msg);
    if (j->status == GPO_ERR_ARG)
        return fail(c, 400, "invalid_request_error", NULL, NULL, j->msg);
    return fail(c, 500, "server_error", NULL, NULL, j->msg);
}

/* Append bytes to the connection's SSE buffer. */
static int out_put(struct conn *cn, const char *s) {
    if (!s) return -1;
    size_t n = strlen(s);
    if (cn->out_n + n > cn->out_cap) {
        size_t nc = (cn->out_n + n) * 2;
        char *o = realloc(cn->out, nc);
        if (!o) return -1;
        cn->out = o;
        cn->out_cap = nc;
    }
    memcpy(cn->out + cn->out_n, s, n);
    cn->out_n += n;
    return 0;
}

static int out_chunk(struct conn *cn, char *sse) {
    int rc = out_put(cn, sse);
    free(sse);
    return rc;
}

/* The log-probabilities of the answer's tokens [from, from + n), copied. */
struct lp_copy {
    int32_t *ids;
    struct gpo_logprobs *lps;
    size_t n;
};

/* How many of the logprob entries from `from` on (whose text starts at byte
 * from_bytes of the answer) start before byte `limit`: the text shown so far, or
 * the whole answer, which a stop string may have cut inside the last tokens. */
static size_t lp_shown(const struct job *j, size_t from, size_t from_bytes, size_t limit) {
    size_t k = from, at = from_bytes;
    for (; k < j->n_lp && at < limit; k++) {
        const char *b;
        size_t bn = 0;
        if (gpo_tokenizer_token_bytes(j->srv->env.tok, j->lp_ids[k], &b, &bn) != GPO_OK) bn = 0;
        at += bn;
    }
    return k - from;
}

static void lp_copy_locked(const struct job *j, size_t from, size_t n, struct lp_copy *out) {
    out->ids = n ? malloc(n * sizeof *out->ids) : NULL;
    out->lps = n ? malloc(n * sizeof *out->lps) : NULL;
    out->n = out->ids && out->lps ? n : 0;
    if (!out->n) { /* nothing, or out of memory: the entries wait for the next chunk */
        free(out->ids);
        free(out->lps);
        out->ids = NULL;
        out->lps = NULL;
        return;
    }
    memcpy(out->ids, j->lp_ids + from, n * sizeof *out->ids);
    memcpy(out->lps, j->lps + from, n * sizeof *out->lps);
}

/* The new text of the answer as one chunk of its kind, with its logprobs. */
static int text_chunk(struct conn *cn, struct oai_result *r, const char *text, size_t n,
                      const struct lp_copy *lc) {
    const gpo_tokenizer *tok = cn->srv->env.tok;
    struct oai_logprobs lp = {.tok = tok, .ids = lc->ids, .lps = lc->lps, .n = lc->n,
                              .top = cn->top_logprobs, .text_offset = cn->lp_offset};
    r->logprobs = cn->want_logprobs ? &lp : NULL;
    char *sse = cn->job->kind == JOB_CHAT
                    ? oai_chat_chunk_sse(r, 0, text ? text : "", n, NULL, 0, 0, NULL, 0)
                    : oai_completion_chunk_sse(r, text, n, NULL, 0);
    r->logprobs = NULL;
    for (size_t i = 0; i < lc->n; i++) {
        const char *b;
        size_t bn;
        if (gpo_tokenizer_token_bytes(tok, lc->ids[i], &b, &bn) != GPO_OK) continue;
        cn->lp_offset += oai_utf8_chars(b, bn);
        cn->lp_bytes += bn;
    }
    cn->sent_lp += lc->n;
    return out_chunk(cn, sse);
}

/* "tool_calls" when the answer ended in function calls (read once done). */
static const char *finish_reason(const struct job *j) {
    return j->n_calls && j->finish == GPO_FINISH_STOP ? "tool_calls" : oai_finish_reason(j->finish);
}

/* The closing chunks: the failure, or the calls, the finish reason and usage. */
static int last_chunks(struct conn *cn, struct oai_result *r, enum gpo_finish finish,
                       const char *emsg) {
    struct job *j = cn->job;
    int rc = 0;
    if (finish == GPO_FINISH_ERROR) {
        struct oai_error e;
        oai_err(&e, 500, "server_error", NULL, NULL, "generation failed: %s", emsg);
        char *js = oai_error_json(&e);
        rc |= out_put(cn, "data: ");
        rc |= out_put(cn, js);
        rc |= out_put(cn, "\n\n");
        free(js);
    } else if (j->kind == JOB_TEXT) {
        rc |= out_chunk(cn, oai_completion_chunk_sse(r, "", 0, oai_finish_reason(finish), 0));
        if (cn->include_usage) rc |= out_chunk(cn, oai_completion_chunk_sse(r, NULL, 0, NULL, 1));
    } else {
        r->calls = j->calls;
        r->n_calls = j->n_calls;
        if (r->n_calls)
            rc |= out_chunk(cn, oai_chat_chunk_sse(r, 0, NULL, 0, NULL, 0, 1, NULL, 0));
        rc |= out_chunk(cn, oai_chat_chunk_sse(r, 0, NULL, 0, NULL, 0, 0, finish_reason(j), 0));
        if (cn->include_usage)
            rc |= out_chunk(cn, oai_chat_chunk_sse(r, 0, NULL, 0, NULL, 0, 0, NULL, 1));
    }
    rc |= out_put(cn, "data: [DONE]\n\n");
    cn->finished = 1;
    return rc;
}

/* Fill the SSE buffer with what is new: waits for tokens.  -1 on failure. */
static int sse_fill(struct conn *cn) {
    struct server *srv = cn->srv;
    struct job *j = cn->job;
    struct oai_result r = {.id = cn->id, .model = srv->model_name, .created = cn->created};
    cn->out_n = cn->out_pos = 0;
    if (!cn->sent_role && j->kind == JOB_CHAT) {
        cn->sent_role = 1;
        return out_chunk(cn, oai_chat_chunk_sse(&r, 1, "", 0, NULL, 0, 0, NULL, 0));
    }
    char *fin = NULL, *ana = NULL;
    size_t fn = 0, an = 0;
    struct lp_copy lc = {0};
    int done;
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        done = j->state == JOB_DONE;
        size_t fw = done ? j->final.n : oai_utf8_whole(j->final.s, j->final.n);
        size_t aw = done ? j->analysis.n : oai_utf8_whole(j->analysis.s, j->analysis.n);
        if (done || fw > cn->sent_final || aw > cn->sent_analysis) {
            if (fw > cn->sent_final && (fin = malloc(fw - cn->sent_final))) {
                fn = fw - cn->sent_final;
                memcpy(fin, j->final.s + cn->sent_final, fn);
            }
            if (aw > cn->sent_analysis && (ana = malloc(aw - cn->sent_analysis))) {
                an = aw - cn->sent_analysis;
                memcpy(ana, j->analysis.s + cn->sent_analysis, an);
            }
            cn->sent_final = fw;
            cn->sent_analysis = aw;
            lp_copy_locked(j, cn->sent_lp, lp_shown(j, cn->sent_lp, cn->lp_bytes, fw), &lc);
            break;
        }
        job_wait_alive(cn->mhd, j);
    }
    enum gpo_finish finish = j->finish;
    r.prompt_tokens = cn->n_prompt;
    r.completion_tokens = j->n_generated;
    char emsg[256];
    snprintf(emsg, sizeof emsg, "%s", j->msg);
    pthread_mutex_unlock(&srv->mu);
    int rc = 0;
    if (an) rc |= out_chunk(cn, oai_chat_chunk_sse(&r, 0, NULL, 0, ana, an, 0, NULL, 0));
    if (fn || lc.n) rc |= text_chunk(cn, &r, fin, fn, &lc);
    free(fin);
    free(ana);
    free(lc.ids);
    free(lc.lps);
    if (done) rc |= last_chunks(cn, &r, finish, emsg);
    return rc ? -1 : 0;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct conn *cn = cls;
    while (cn->out_pos == cn->out_n) {
        if (cn->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (sse_fill(cn) < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = cn->out_n - cn->out_pos;
    if (n > max) n = max;
    memcpy(buf, cn->out + cn->out_pos, n);
    cn->out_pos += n;
    return (ssize_t)n;
}

/* A job with the handler's and the engine's references. */
/* Move a parsed request's stop strings into the job (the request no longer owns
 * them). */
static void job_take_stops(struct job *j, char **stops, size_t *n) {
    for (size_t i = 0; i < *n; i++) {
        j->stops[i] = stops[i];
        stops[i] = NULL;
    }
    j->n_stops = *n;
    *n = 0;
}

static struct job *job_new(struct server *srv, enum job_kind kind) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->srv = srv;
    j->kind = kind;
    j->refs = 2;
    pthread_cond_init(&j->cv, NULL);
    return j;
}

/* A job that was never posted. */
static void job_drop(struct job *j) {
    j->refs = 1;
    job_unref(j);
}

/* The finished answer of a job, as one JSON object. */
static enum MHD_Result answer(struct MHD_Connection *c, struct conn *cn, struct job *j) {
    struct server *srv = cn->srv;
    if (j->finish == GPO_FINISH_ERROR) return fail(c, 500, "server_error", NULL, NULL, j->msg);
    struct oai_logprobs lp = {.tok = srv->env.tok, .ids = j->lp_ids, .lps = j->lps,
                              .n = lp_shown(j, 0, 0, j->final.n), .top = cn->top_logprobs};
    struct oai_result r = {.id = cn->id, .model = srv->model_name, .created = cn->created,
                           .content = j->final.s, .content_len = j->final.n,
                           .reasoning = j->analysis.s, .reasoning_len = j->analysis.n,
                           .finish = finish_reason(j),
                           .prompt_tokens = cn->n_prompt, .completion_tokens = j->n_generated,
                           .calls = j->calls, .n_calls = j->n_calls,
                           .logprobs = cn->want_logprobs ? &lp : NULL};
    char *body = j->kind == JOB_CHAT ? oai_chat_response_json(&r)
                                     : oai_completion_response_json(&r);
    return send_body(c, MHD_HTTP_OK, body, "application/json");
}

/* Check that the prompt leaves room, post the job and answer: streamed as it
 * comes, or whole when done.  param names the prompt's field in errors. */
static enum MHD_Result run_job(struct MHD_Connection *c, struct conn *cn, struct job *j,
                               int stream, const char *param) {
    struct server *srv = cn->srv;
    struct oai_error e;
    int64_t n_prompt = (int64_t)j->prompt.n;
    if (n_prompt >= srv->max_seq_len) {
        oai_err(&e, 400, "invalid_request_error", param, "context_length_exceeded",
                "This model's maximum context length is %lld tokens, but the %s takes %lld "
                "tokens (at most %lld leave room for one generated token)",
                (long long)srv->max_seq_len, param, (long long)n_prompt,
                (long long)srv->max_seq_len - 1);
        job_drop(j);
        return send_error(c, &e, NULL);
    }
    if (post_job(srv, j) != 0) {
        enum MHD_Result ok = reject(c, j);
        job_unref(j);
        return ok;
    }
    /* Counted until MHD reports the answer sent (on_completed): shutdown waits. */
    pthread_mutex_lock(&srv->mu);
    srv->answering++;
    cn->answering = 1;
    pthread_mutex_unlock(&srv->mu);
    snprintf(cn->id, sizeof cn->id, "%s-%llx%06llx", j->kind == JOB_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)atomic_fetch_add(&srv->next_id, 1),
             (unsigned long long)(random_u53() & 0xFFFFFF));
    cn->created = (int64_t)time(NULL);
    cn->n_prompt = n_prompt;
    if (stream) {
        cn->job = j;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                                                   sse_read, cn, NULL);
        if (!r) return MHD_NO; /* the job is dropped at completion */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ok = queue(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ok;
    }
    /* Wait for the answer, looking now and then whether the client is still there. */
    pthread_mutex_lock(&srv->mu);
    while (j->state != JOB_DONE) job_wait_alive(c, j);
    pthread_mutex_unlock(&srv->mu);
    /* Done: the engine no longer writes the job. */
    enum MHD_Result ok = j->gone ? MHD_NO : answer(c, cn, j);
    job_unref(j);
    return ok;
}

/* tool_choice required or named: the prompt ends inside the call's header, and
 * only the functions of the request count as calls (required). */
static enum gpo_status force_call(struct server *srv, struct oai_chat *req, struct job *j) {
    if (req->tool_choice != OAI_TOOLS_REQUIRED && req->tool_choice != OAI_TOOLS_NAMED)
        return GPO_OK;
    int named = req->tool_choice == OAI_TOOLS_NAMED;
    enum gpo_status s = oai_call_header(srv->env.tok, named ? req->tool_name : NULL, &j->prefix);
    if (s == GPO_OK) s = gpo_ids_append(&j->prompt, j->prefix.ids, j->prefix.n);
    if (s == GPO_OK && !named) {
        j->tool_names = req->tool_names;
        j->n_tool_names = req->n_tool_names;
        req->tool_names = NULL;
        req->n_tool_names = 0;
    }
    return s;
}

static enum MHD_Result chat_completions(struct MHD_Connection *c, struct conn *cn) {
    struct server *srv = cn->srv;
    struct oai_error e;
    struct oai_chat req;
    if (oai_parse_chat(cn->body ? cn->body : "", cn->n, &srv->cfg->o->sp, srv->cfg->o->reasoning,
                       &req, &e))
        return send_error(c, &e, NULL);
    if (!req.seed_given) req.sp.seed = random_u53();
    struct job *j = job_new(srv, JOB_CHAT);
    if (!j) {
        oai_chat_free(&req);
        return fail(c, 500, "server_error", NULL, NULL, "out of memory");
    }
    struct gpo_conv conv;
    gpo_conv_init(&conv);
    enum gpo_status s = oai_build_conv(&req, srv->cfg->o->developer, srv->date, &conv);
    j->want_calls = req.tools && req.tool_choice != OAI_TOOLS_NONE;
    if (s == GPO_OK) s = gpo_harmony_render(srv->env.tok, &conv, &j->prompt);
    gpo_conv_free(&conv);
    if (s == GPO_OK) s = force_call(srv, &req, j);
    j->sp = req.sp;
    j->max_tokens = req.max_tokens;
    j->want_logprobs = cn->want_logprobs = req.logprobs;
    cn->top_logprobs = req.top_logprobs;
    job_take_stops(j, req.stops, &req.n_stops);
    int stream = req.stream;
    cn->include_usage = req.include_usage;
    oai_chat_free(&req);
    if (s != GPO_OK) {
        job_drop(j);
        return fail(c, 400, "invalid_request_error", "messages", NULL, gpo_last_error());
    }
    return run_job(c, cn, j, stream, "messages");
}

static enum MHD_Result text_completions(struct MHD_Connection *c, struct conn *cn) {
    struct server *srv = cn->srv;
    struct oai_error e;
    struct oai_completion req;
    if (oai_parse_completion(cn->body ? cn->body : "", cn->n, &srv->cfg->o->sp, &req, &e))
        return send_error(c, &e, NULL);
    if (!req.seed_given) req.sp.seed = random_u53();
    struct job *j = job_new(srv, JOB_TEXT);
    if (!j) {
        oai_completion_free(&req);
        return fail(c, 500, "server_error", NULL, NULL, "out of memory");
    }
    /* The text as it is: no chat template, special-token text stays text. */
    enum gpo_status s = req.prompt ? gpo_tokenizer_encode(srv->env.tok, req.prompt,
                                                          strlen(req.prompt), 0, &j->prompt)
                                   : gpo_ids_append(&j->prompt, req.prompt_ids, req.n_prompt_ids);
    j->sp = req.sp;
    j->max_tokens = req.max_tokens;
    j->want_logprobs = cn->want_logprobs = req.logprobs >= 0;
    cn->top_logprobs = req.logprobs > 0 ? req.logprobs : 0;
    job_take_stops(j, req.stops, &req.n_stops);
    int stream = req.stream;
    cn->include_usage = req.include_usage;
    oai_completion_free(&req);
    if (s == GPO_OK && !j->prompt.n) {
        job_drop(j);
        return fail(c, 400, "invalid_request_error", "prompt", NULL, "'prompt' is empty");
    }
    if (s != GPO_OK) {
        job_drop(j);
        return fail(c, 400, "invalid_request_error", "prompt", NULL, gpo_last_error());
    }
    return run_job(c, cn, j, stream, "prompt");
}

static enum MHD_Result models(struct MHD_Connection *c, struct server *srv) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", srv->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "gptoss");
    return send_json(c, MHD_HTTP_OK, root);
}

static enum MHD_Result fail_method(struct MHD_Connection *c, const char *method,
                                   const char *url) {
    char msg[300];
    snprintf(msg, sizeof msg, "Method %.10s is not allowed on %.200s", method, url);
    return fail(c, 405, "invalid_request_error", NULL, "method_not_allowed", msg);
}

/* One more answer with this status on this route (srv->mu held). */
static void count_request_locked(struct metrics *m, enum route_id route, unsigned code) {
    size_t i = 0;
    while (i < m->n_req && (m->req[i].route != (int)route || m->req[i].code != code)) i++;
    if (i == m->n_req) {
        if (m->n_req == METRIC_CODES) return; /* a full table: the rarest pairs are left out */
        m->req[m->n_req++] = (struct req_count){.route = (int)route, .code = code};
    }
    m->req[i].n++;
}

/* The /metrics page from a copy of the numbers taken under the lock. */
static char *metrics_text(const struct metrics *m, const char *model) {
    struct gpo_str b = {0};
    char labels[160];
    int rc = oai_metric_head(&b, "gptoss_requests_total", "counter",
                             "HTTP requests answered, by route and status code");
    for (size_t i = 0; i < m->n_req; i++) {
        snprintf(labels, sizeof labels, "route=\"%s\",code=\"%u\"", route_names[m->req[i].route],
                 m->req[i].code);
        rc |= oai_metric_sample(&b, "gptoss_requests_total", labels, (double)m->req[i].n);
    }
    snprintf(labels, sizeof labels, "model=\"%.100s\"", model);
    rc |= oai_metric_head(&b, "gptoss_prompt_tokens_total", "counter",
                          "Prompt tokens of finished requests");
    rc |= oai_metric_sample(&b, "gptoss_prompt_tokens_total", labels, (double)m->prompt_tokens);
    rc |= oai_metric_head(&b, "gptoss_generation_tokens_total", "counter",
                          "Tokens generated by finished requests");
    rc |= oai_metric_sample(&b, "gptoss_generation_tokens_total", labels,
                            (double)m->generated_tokens);
    rc |= oai_metric_histogram(&b, "gptoss_time_to_first_token_seconds",
                               "Seconds from a request's arrival to its first token", &m->ttft);
    rc |= oai_metric_histogram(&b, "gptoss_inter_token_latency_seconds",
                               "Seconds between consecutive tokens of a request", &m->itl);
    static const struct {
        const char *name, *help;
    } gauges[] = {
        {"gptoss_requests_queued", "Requests waiting for a free slot"},
        {"gptoss_requests_running", "Requests in the running batch"},
        {"gptoss_kv_blocks_total", "KV cache blocks of the pool"},
        {"gptoss_kv_blocks_used", "KV blocks held by running or queued requests"},
        {"gptoss_kv_blocks_cached", "KV blocks held only by cached prefixes (reclaimable)"},
        {"gptoss_kv_block_tokens", "Positions per KV block"},
        {"gptoss_kv_bytes", "Bytes of the KV pool and the sliding-window rings"},
    };
    double values[] = {(double)m->queued, (double)m->running, (double)m->kv.blocks_total,
                       (double)m->kv.blocks_used, (double)m->kv.blocks_cached,
                       (double)m->kv.block_tokens, (double)m->kv.bytes_total};
    for (size_t i = 0; i < sizeof gauges / sizeof *gauges; i++) {
        rc |= oai_metric_head(&b, gauges[i].name, "gauge", gauges[i].help);
        rc |= oai_metric_sample(&b, gauges[i].name, NULL, values[i]);
    }
    if (rc) {
        gpo_str_free(&b);
        return NULL;
    }
    return b.s;
}

static enum MHD_Result metrics_page(struct MHD_Connection *c, struct server *srv) {
    pthread_mutex_lock(&srv->mu);
    struct metrics m = srv->met;
    pthread_mutex_unlock(&srv->mu);
    char *s = metrics_text(&m, srv->model_name);
    if (!s) return fail(c, 500, "server_error", NULL, NULL, "out of memory");
    return send_body(c, MHD_HTTP_OK, s, "text/plain; version=0.0.4; charset=utf-8");
}

/* Authorization: Bearer KEY, compared in constant time. */
static int authorized(struct MHD_Connection *c, const char *key) {
    if (!key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    return oai_key_equal(h, strlen(h), key, strlen(key));
}

static enum MHD_Result route(struct MHD_Connection *c, struct conn *cn, const char *url,
                             const char *method) {
    struct server *srv = cn->srv;
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    char msg[300];
    current = cn;
    cn->route = R_OTHER;
    for (int i = 0; i < R_OTHER; i++)
        if (!strcmp(url, route_names[i])) cn->route = (enum route_id)i;
    if (cn->route == R_METRICS) return get ? metrics_page(c, srv) : fail_method(c, method, url);
    if (!strcmp(url, "/health")) {
        if (!get) goto wrong_method;
        cJSON *root = cJSON_CreateObject();
        int ready = atomic_load(&srv->ready);
        cJSON_AddStringToObject(root, "status", ready ? "ok" : "loading");
        return send_json(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, root);
    }
    int mods = cn->route == R_MODELS;
    if (cn->route == R_OTHER) {
        snprintf(msg, sizeof msg, "Unknown route %.10s %.200s", method, url);
        return fail(c, 404, "invalid_request_error", NULL, "not_found", msg);
    }
    if (mods ? !get : !post) goto wrong_method;
    if (!authorized(c, srv->cfg->api_key))
        return fail(c, 401, "invalid_request_error", NULL, "invalid_api_key",
                    "Incorrect or missing API key (send it as Authorization: Bearer KEY)");
    if (cn->too_big) {
        snprintf(msg, sizeof msg, "The request body is over the limit of %zu bytes",
                 srv->cfg->body_limit);
        return fail(c, 413, "invalid_request_error", NULL, "request_too_large", msg);
    }
    if (!atomic_load(&srv->ready))
        return fail(c, 503, "server_error", NULL, "loading", "The model is still loading");
    if (mods) return models(c, srv);
    if (cn->route == R_TEXT) return text_completions(c, cn);
    return chat_completions(c, cn);
wrong_method:
    return fail_method(c, method, url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls) {
    struct server *srv = cls;
    struct conn *cn = *con_cls;
    if (!cn) {
        if (!(cn = calloc(1, sizeof *cn))) return MHD_NO;
        cn->srv = srv;
        cn->mhd = c;
        *con_cls = cn;
        /* A declared length over the limit is answered before the body is read. */
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->cfg->body_limit) cn->too_big = 1;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        if (!cn->too_big && cn->n + n > srv->cfg->body_limit) {
            cn->too_big = 1;
        }
        if (!cn->too_big) {
            if (cn->n + n + 1 > cn->cap) {
                size_t nc = (cn->n + n + 1) * 2;
                char *b = realloc(cn->body, nc);
                if (!b) return MHD_NO;
                cn->body = b;
                cn->cap = nc;
            }
            memcpy(cn->body + cn->n, upload_data, n);
            cn->n += n;
            cn->body[cn->n] = 0;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    return route(c, cn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct conn *cn = *con_cls;
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, SERVE_IDLE_TIMEOUT);
    if (!cn) return;
    if (cn->status || cn->answering) {
        struct server *srv = cn->srv;
        pthread_mutex_lock(&srv->mu);
        if (cn->status) count_request_locked(&srv->met, cn->route, cn->status);
        if (cn->answering) {
            srv->answering--;
            pthread_cond_broadcast(&srv->wake);
        }
        pthread_mutex_unlock(&srv->mu);
    }
    if (current == cn) current = NULL;
    if (cn->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) job_mark_gone(cn->job);
        job_unref(cn->job);
    }
    free(cn->body);
    free(cn->out);
    free(cn);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------------- */

int serve_run(const struct serve_cfg *cfg) {
    struct server *srv = calloc(1, sizeof *srv);
    if (!srv) return cli_error("out of memory");
    srv->cfg = cfg;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->wake, NULL);
    atomic_init(&srv->ready, 0);
    atomic_init(&srv->next_id, 1);
    srv->met.ttft = (struct oai_histogram){.le = ttft_le, .n_le = sizeof ttft_le / sizeof *ttft_le};
    srv->met.itl = (struct oai_histogram){.le = itl_le, .n_le = sizeof itl_le / sizeof *itl_le};
    int rc = CLI_EXIT_FAIL;

    /* Every thread started from here on leaves SIGINT and SIGTERM to sigwait. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        free(srv);
        return cli_error("--host must be an IPv4 or IPv6 address, not '%s'", cfg->host);
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)512, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_CONNECTION_TIMEOUT, SERVE_IDLE_TIMEOUT, MHD_OPTION_END);
    if (!d) {
        free(srv);
        return cli_error("cannot listen on %s port %d: %s", cfg->host, cfg->port, strerror(errno));
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : cfg->port;
    fprintf(stderr, "gptoss serve: listening on http://%s%s%s:%d (loading the model)\n",
            strchr(cfg->host, ':') ? "[" : "", cfg->host, strchr(cfg->host, ':') ? "]" : "",
            port);

    pthread_t engine_thread;
    int engine_started = 0;
    struct gen_dist dist = {0};
    const struct gen_opts *o = cfg->o;
    if (gen_env_open(&srv->env, o) != 0) goto out;
    /* Under mpirun the other ranks follow this one's engine (cmd_serve.c). */
    if (gen_dist_open(&dist, cfg->o, srv->env.m) != 0) goto out;
    if ((rc = gen_dist_one_replica("serve", &dist)) != 0) goto out;
    rc = CLI_EXIT_FAIL;
    enum gpo_status s;
    struct gpo_engine_opts eo = o->eo;
    eo.max_queue = cfg->max_queue;
    if ((s = gpo_engine_create(srv->env.m, srv->env.tok, &eo, cfg->parallel, &srv->eng)) !=
        GPO_OK) {
        rc = cli_status(s, "cannot set up the engine");
        goto out;
    }
    if (!o->verbose) gpo_set_log_level(GPO_LOG_WARN);
    gpo_engine_set_abort(srv->eng, &srv->abort_flag);
    int64_t limit = gpo_model_config(srv->env.m)->max_position;
    srv->max_seq_len = eo.max_seq_len < limit ? eo.max_seq_len : limit;
    srv->date = gen_date(o, srv->datebuf);
    if (cfg->model_name) {
        snprintf(srv->model_name, sizeof srv->model_name, "%s", cfg->model_name);
    } else {
        const char *base = strrchr(srv->env.dir, '/');
        base = base && base[1] ? base + 1 : srv->env.dir;
        snprintf(srv->model_name, sizeof srv->model_name, "%s", base);
    }
    if (pthread_create(&engine_thread, NULL, engine_main, srv) != 0) {
        rc = cli_error("cannot start the engine thread");
        goto out;
    }
    engine_started = 1;
    atomic_store(&srv->ready, 1);
    fprintf(stderr, "gptoss serve: ready: model %s, %zu slots of %lld tokens, kernels %s\n",
            srv->model_name, cfg->parallel, (long long)srv->max_seq_len,
            gpo_engine_kernels(srv->eng));

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "gptoss serve: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
    rc = 0;
out:
    /* End the requests in flight (they finish as aborted), then the connections. */
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    pthread_cond_broadcast(&srv->wake);
    pthread_mutex_unlock(&srv->mu);
    if (engine_started) pthread_join(engine_thread, NULL);
    /* The requests ended above are answered; let their connections send the
     * answers (a few seconds at most) before the daemon closes them. */
    pthread_mutex_lock(&srv->mu);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SERVE_DRAIN_SECONDS;
    while (srv->answering > 0 && pthread_cond_timedwait(&srv->wake, &srv->mu, &until) == 0) {
    }
    pthread_mutex_unlock(&srv->mu);
    MHD_stop_daemon(d);
    gpo_engine_free(srv->eng);
    gen_dist_close(&dist);
    gen_env_close(&srv->env);
    pthread_cond_destroy(&srv->wake);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
    return rc;
}
