/* gpo_engine.h - the generation engine, a scheduler of requests: requests are
 * submitted at any time, each forward step (gpo_engine_step) runs one token batch
 * holding one decode token per generating request and prompt chunks of the others
 * within a per-step token budget, and requests end or are cancelled at step
 * boundaries.  Per-request sampling, harmony parsing and stop rules; KV-cache reuse
 * of a common prefix; an abort flag; timing metrics.  gpo_engine_run is the same
 * machinery for a fixed set of users.  Included by gpo.h. */
#ifndef GPO_ENGINE_H
#define GPO_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpo_engine gpo_engine;

/* A rank's share of a model spread over several processes, and its rank groups
 * (the library's mesh.h). */
struct gpo_mesh_shard;
struct gpo_mesh_groups;

struct gpo_engine_opts {
    int64_t max_seq_len; /* positions one request may reach (default 4096) */
    int64_t ubatch;      /* tokens per forward step (default 512) */
    int n_threads;       /* 0 = all cores */
    enum gpo_path path;  /* GPO_PATH_FAST by default for generation */
    int64_t max_queue;   /* submitted requests that may wait for a free slot beyond
                            the free slots: 0 = no limit, < 0 = none may wait */
    double prefill_itl;  /* > 1: while requests are generating, prompt chunks are sized
                            so a step takes at most this many times a decode-only
                            step (from running estimates of both), keeping their
                            inter-token latency bounded during a long prefill; 0 =
                            prompts take the whole ubatch budget */
    uint64_t kv_memory;  /* bytes of the KV block pool all requests share; 0 = what
                            memory is available after the weights, less a margin,
                            at least one max_seq_len request and at most what
                            n_slots of them can use (gpo_engine_kv_plan) */
    /* A multi-rank model (NULL, NULL: the whole model in this process).  Rank 0
     * of groups->model leads: it schedules, samples and is the only one that takes
     * submit and step; the others run gpo_engine_follow.  Every member must make
     * its engine with the same options and slots; the leader's KV pool size is
     * used by all. */
    const struct gpo_mesh_shard *shard;
    const struct gpo_mesh_groups *groups;
};

/* How an engine lays out its KV memory.  The full-attention layers of every
 * request live in one pool of blocks of block_tokens positions (each block holds
 * those positions of all full layers); requests take blocks as they grow and give
 * them back when they end.  The sliding-window layers keep a ring per slot. */
struct gpo_kv_plan {
    int64_t block_tokens;
    uint64_t block_bytes; /* one block */
    int64_t blocks;       /* in the pool */
    uint64_t pool_bytes;  /* blocks x block_bytes */
    uint64_t ring_bytes;  /* the sliding-window rings of one slot */
    int64_t max_tokens;   /* blocks x block_tokens: positions all requests hold at once */
    int64_t max_seq_len;  /* positions one request may reach */
};
/* The plan of gpo_engine_create with these options (NULL: defaults) and slots;
 * GPO_ERR_ARG when kv_memory is less than one block. */
enum gpo_status gpo_engine_kv_plan(const gpo_model *m, const struct gpo_engine_opts *opts,
                                   size_t n_slots, struct gpo_kv_plan *out);

/* n_slots requests can run at once; each slot keeps the KV blocks of its last
 * request between requests so a continued conversation only prefills what
 * changed (blocks that other requests may take back, least recently used first). */
enum gpo_status gpo_engine_create(const gpo_model *m, const gpo_tokenizer *t,
                                  const struct gpo_engine_opts *opts, size_t n_slots,
                                  gpo_engine **out);
void gpo_engine_free(gpo_engine *e);
/* The flag is checked between layers and steps; when it becomes non-zero every
 * unfinished request (running or queued) ends with finish reason GPO_FINISH_ABORTED
 * ("aborted") and aborted set. */
void gpo_engine_set_abort(gpo_engine *e, volatile sig_atomic_t *flag);
const char *gpo_engine_kernels(const gpo_engine *e);
/* Bytes of the KV pool and all the slots' rings. */
uint64_t gpo_engine_kv_bytes(const gpo_engine *e);
/* The KV memory of the full-attention layers, in blocks of block_tokens
 * positions. */
struct gpo_kv_pool_stats {
    int64_t block_tokens;  /* positions per block */
    int64_t blocks_total;
    int64_t blocks_used;   /* held by running or queued requests */
    int64_t blocks_cached; /* held only by idle slots' cached prefixes (reclaimable) */
    uint64_t bytes_total;  /* the pool's bytes plus the sliding-window rings */
};
void gpo_engine_kv_pool(const gpo_engine *e, struct gpo_kv_pool_stats *out);
/* Forget slot i's cached tokens (its next request prefills from scratch); a slot
 * a request is running in is left alone. */
void gpo_engine_reset_slot(gpo_engine *e, size_t slot);

/* How many bytes of text[0..len) can be shown while more text may still follow:
 * len less the longest tail that is the start of one of stops[0..n_stops) (empty
 * strings ignored), moved back to the start of a UTF-8 character.  The engine
 * uses it for gpo_gen_user.final_stream_n. */
size_t gpo_stop_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops);

/* One user of gpo_engine_run, and the outputs of a submitted request.  Fill the
 * inputs; the outputs are owned by the struct and freed by gpo_gen_user_free. */
struct gpo_gen_user {
    /* inputs */
    const int32_t *prompt;
    size_t n_prompt;
    struct gpo_sampler_params sampling;
    int64_t max_tokens; /* generated tokens at most; 0 = until the context is full */
    const char *const *stops;
    size_t n_stops;
    /* outputs */
    struct gpo_ids generated;     /* every sampled id, stop token included */
    struct gpo_str final_text;    /* final-channel text (cut at a stop string) */
    size_t final_stream_n;        /* bytes of final_text safe to show while streaming: no
                                     stop string can still begin before this point (it
                                     only grows; = final_text.n once finished).  Updated
                                     before each on_token call. */
    struct gpo_str analysis_text; /* analysis-channel text */
    struct gpo_str raw_text;      /* everything, special tokens written as text */
    enum gpo_finish finish;       /* GPO_FINISH_ERROR: this user failed (see error); the
                                     other users of the run went on */
    enum gpo_status error;        /* why this user failed (GPO_OK unless finish is ERROR) */
    char error_msg[256];          /* the detail of that failure */
    int recovered;                /* the harmony parser recovered from malformed output */
    int aborted;
    int64_t n_reused;             /* prompt tokens taken from the slot's cache */
    double t_first;               /* seconds from the submission (the start of the run)
                                     to the first token */
    double t_done;                /* seconds from the submission to the last token */
    /* log-probabilities (a submitted request's `logprobs`): input, then outputs */
    int want_logprobs;            /* record one entry per generated token */
    struct gpo_logprobs *logprobs; /* [n_logprobs]: the sampler's values for generated.ids[i]
                                     (top entries: sampling.n_logprobs) */
    size_t n_logprobs, cap_logprobs;
};
void gpo_gen_user_free(struct gpo_gen_user *u);

/* Called for every generated token (from the calling thread, inside
 * gpo_engine_step or gpo_engine_run).  `user` is the user's index for
 * gpo_engine_run, the request's tag for gpo_engine_submit.  id is -1 for the text
 * the harmony parser gives out at the end of a turn. */
typedef void (*gpo_token_fn)(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev);

struct gpo_gen_stats {
    double t_total;          /* wall time of the run */
    double avg_ttft;         /* mean over users of t_first */
    double avg_decode_ms;    /* mean time between tokens after the first, per user */
    double tok_s_user;       /* 1000 / avg_decode_ms */
    double tok_s_total;      /* tok_s_user * users */
    int64_t n_prefill;       /* prompt tokens run through the model */
    int64_t n_generated;     /* tokens generated over all users */
    int64_t n_steps;         /* forward steps */
    uint64_t weight_bytes;   /* weight bytes the decode steps had to read (estimate) */
    double decode_seconds;   /* time spent in decode-only steps */
};

/* Run users[0..n) until each finishes: every user is submitted (outputs written in
 * place), then the engine steps until idle.  The engine must be idle and n at most
 * its slots, so every user runs from the first step when the KV pool holds them
 * all (else some wait for blocks, as submitted requests do).  Prompts longer than
 * max_seq_len or the pool are GPO_ERR_CONTEXT before anything runs.  A failure that belongs to one
 * user (sampling, parsing or recording its token) ends that user alone with finish
 * GPO_FINISH_ERROR and its error fields set, and the run goes on for the others;
 * only failures of the shared forward pass end the run with an error status.  Ids
 * the tokenizer does not define (holes in the vocabulary, rows beyond it) and the
 * ids harmony reserves are never sampled. */
enum gpo_status gpo_engine_run(gpo_engine *e, struct gpo_gen_user *users, size_t n,
                               gpo_token_fn on_token, void *ud, struct gpo_gen_stats *stats);

/* ------------------------------------------------------------------------- */
/* Requests                                                                  */

typedef struct gpo_req gpo_req;

struct gpo_request {
    const int32_t *prompt; /* copied at submit */
    size_t n_prompt;
    struct gpo_sampler_params sampling; /* the seed makes the request's own RNG */
    int64_t max_tokens;    /* generated tokens at most; 0 = until the context is full */
    const char *const *stops; /* copied at submit */
    size_t n_stops;
    gpo_token_fn on_token; /* may be NULL; may cancel requests, never submit, step or release */
    void *ud;
    size_t tag;            /* passed to on_token as `user` */
    int logprobs;          /* record log-probabilities (gpo_gen_user.logprobs); they are
                              there before on_token sees the token */
    /* Ids the harmony parser reads before the generated ones, when the prompt ends
     * inside an assistant header it opened (a forced tool call:
     * "<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>");
     * read at submit.  The model's output then parses as that message. */
    const int32_t *parser_prefix;
    size_t n_parser_prefix;
};

enum gpo_req_state {
    GPO_REQ_QUEUED = 0, /* waiting for a free slot */
    GPO_REQ_PREFILL,    /* in a slot, prompt partly in the cache */
    GPO_REQ_DECODE,     /* generating */
    GPO_REQ_DONE,       /* finished: the outputs are final */
};

/* Queue a request (FIFO).  The prompt must hold 1 .. max_seq_len - 1 ids of the
 * vocabulary and, with one generated token, fit in the whole KV pool, else
 * GPO_ERR_ARG / GPO_ERR_TOKEN / GPO_ERR_CONTEXT (with the numbers) at once.  When
 * max_queue requests already wait beyond the free slots it is GPO_ERR_BUSY with a
 * message saying the queue is full (nothing is queued).  At a step where the
 * requests ahead of it have started and the pool has blocks for its whole prompt
 * (free, or taken back from idle slots' cached prefixes, least recently used
 * first) it takes the free slot whose cached tokens share the longest prefix with
 * its prompt (ties: the least recently used slot) and reuses that prefix's keys
 * and values.  A running request that needs a block when none is left preempts
 * the youngest running request (possibly itself): its blocks are freed and it
 * waits at the head of the queue, then prefills its prompt and the tokens it
 * generated again and goes on with the same sampler, so its tokens do not change.
 * *out stays valid, also after the request finishes, until gpo_engine_release or
 * gpo_engine_free. */
enum gpo_status gpo_engine_submit(gpo_engine *e, const struct gpo_request *req, gpo_req **out);

/* One forward pass over every running request: one token per generating request,
 * then prompt chunks of the prefilling ones, oldest first, within what is left of
 * the ubatch budget, so long prompts are spread over several steps while the
 * others keep getting a token every step.  Queued requests take the free slots
 * first; cancelled ones end.  Samples, parses, applies the stop rules, calls
 * on_token and ends finished requests (their slot is free, its cache kept for
 * prefix reuse).  *n_left (may be NULL): requests still running or queued; 0 =
 * idle (a step of an idle engine does nothing).  A failure of one request ends it
 * alone (GPO_FINISH_ERROR); a failure of the forward pass ends the requests of the
 * step with GPO_FINISH_ERROR, clears their slots and is returned. */
enum gpo_status gpo_engine_step(gpo_engine *e, size_t *n_left);

/* End the request at the next step (at once when it is still queued) with finish
 * GPO_FINISH_ABORTED and aborted set, freeing its slot (its KV blocks stay as the
 * slot's cached prefix, which the pool takes back when it needs them); nothing
 * for a finished one.
 * The handle stays valid until released. */
void gpo_engine_cancel(gpo_engine *e, gpo_req *r);
/* Free the handle and its outputs; a request still running or queued is cancelled
 * first.  NULL is ignored. */
void gpo_engine_release(gpo_engine *e, gpo_req *r);

enum gpo_req_state gpo_req_state(const gpo_req *r);
/* The request's outputs (the input fields mirror the request; prompt and stops
 * point to the engine's copies).  Valid until the handle is released; they grow
 * during steps and are final in state GPO_REQ_DONE. */
const struct gpo_gen_user *gpo_req_output(const gpo_req *r);
/* The slot the request runs or ran in; -1 while queued or when it never ran. */
int64_t gpo_req_slot(const gpo_req *r);

/* Requests running and queued. */
size_t gpo_engine_n_running(const gpo_engine *e);
size_t gpo_engine_n_queued(const gpo_engine *e);
/* Totals since the engine was made (the timing averages stay 0: they are per run). */
void gpo_engine_totals(const gpo_engine *e, struct gpo_gen_stats *out);

/* ------------------------------------------------------------------------- */
/* Leader and followers                                                      */

/* Several ranks hold one model (gpo_engine_opts.groups).  The leader decides
 * everything; before each forward pass it broadcasts the step's plan to the
 * model group: the KV block operations its scheduling did since the last plan
 * (rewinds and reservations per slot, in order, so that every rank's block
 * tables stay identical), then per sequence its slot, tokens, cache length and
 * logits mode.  The followers apply the operations, check that their caches
 * agree with the leader's (lengths and the pool's free blocks) and run the same
 * gpo_forward.  Preemption, cancellation, prefix reuse and the end of a request
 * reach them only as operations; nothing they do depends on time.  The abort
 * flag of a multi-rank engine is only read between steps, never inside a pass
 * the followers run too. */

/* 1 on the leader (and an engine alone), 0 on a follower. */
int gpo_engine_is_leader(const gpo_engine *e);
/* A follower's loop: runs the leader's plans until the leader sends the end
 * (gpo_engine_stop_followers), then returns GPO_OK.  A plan that disagrees with
 * this rank's caches, or a failed pass or broadcast, returns an error naming
 * this rank and host; the caller then ends the job (gpo_dist_abort). */
enum gpo_status gpo_engine_follow(gpo_engine *e);
/* Leader: send the end to the followers (once; gpo_engine_free does it when the
 * caller did not).  The end carries every slot's cache length, which the
 * followers check a last time.  Nothing on an engine alone. */
enum gpo_status gpo_engine_stop_followers(gpo_engine *e);

#ifdef __cplusplus
}
#endif
#endif
