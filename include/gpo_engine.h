/* gpo_engine.h - the generation engine: several users decoded together in one
 * token batch per step, prompts prefilled in chunks, per-user sampling, harmony
 * parsing and stop rules, KV-cache reuse of a common prefix across runs, an abort
 * flag, and timing metrics.  Included by gpo.h. */
#ifndef GPO_ENGINE_H
#define GPO_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpo_engine gpo_engine;

struct gpo_engine_opts {
    int64_t max_seq_len; /* KV cache per user (default 4096) */
    int64_t ubatch;      /* tokens per forward step (default 512) */
    int n_threads;       /* 0 = all cores */
    enum gpo_path path;  /* GPO_PATH_FAST by default for generation */
};

/* n_slots users can be served at once; each slot keeps its KV cache between runs
 * so a continued conversation only prefills what changed. */
enum gpo_status gpo_engine_create(const gpo_model *m, const gpo_tokenizer *t,
                                  const struct gpo_engine_opts *opts, size_t n_slots,
                                  gpo_engine **out);
void gpo_engine_free(gpo_engine *e);
/* The flag is checked between layers and steps; when it becomes non-zero the run
 * ends with every unfinished user's finish reason GPO_FINISH_ABORTED ("aborted")
 * and aborted set. */
void gpo_engine_set_abort(gpo_engine *e, volatile sig_atomic_t *flag);
const char *gpo_engine_kernels(const gpo_engine *e);
/* Bytes of all the slots' KV caches. */
uint64_t gpo_engine_kv_bytes(const gpo_engine *e);
/* Forget slot i's cached tokens (its next run prefills from scratch). */
void gpo_engine_reset_slot(gpo_engine *e, size_t slot);

/* How many bytes of text[0..len) can be shown while more text may still follow:
 * len less the longest tail that is the start of one of stops[0..n_stops) (empty
 * strings ignored), moved back to the start of a UTF-8 character.  The engine
 * uses it for gpo_gen_user.final_stream_n. */
size_t gpo_stop_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops);

/* One user of a run.  Fill the inputs; the outputs are owned by the struct and
 * freed by gpo_gen_user_free. */
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
    double t_first;               /* seconds from the start of the run to the first token */
    double t_done;                /* seconds from the start to the last token */
};
void gpo_gen_user_free(struct gpo_gen_user *u);

/* Called for every generated token (from the calling thread). */
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

/* Run users[0..n) (user i in slot i) until each finishes.  Prompts longer than the
 * KV cache are GPO_ERR_CONTEXT before anything runs.  A failure that belongs to one
 * user (sampling, parsing or recording its token) ends that user alone with finish
 * GPO_FINISH_ERROR and its error fields set, and the run goes on for the others;
 * only failures of the shared forward pass end the run with an error status.  Ids
 * the tokenizer does not define (holes in the vocabulary, rows beyond it) and the
 * ids harmony reserves are never sampled. */
enum gpo_status gpo_engine_run(gpo_engine *e, struct gpo_gen_user *users, size_t n,
                               gpo_token_fn on_token, void *ud, struct gpo_gen_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
