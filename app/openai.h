/* openai.h - the OpenAI API's request and response bodies for `gptoss serve`:
 * pure functions (no I/O, no engine) from a JSON body to a conversation and
 * sampling parameters, and from results to JSON, so they can be unit-tested and
 * fuzzed on their own. */
#ifndef GPO_OPENAI_H
#define GPO_OPENAI_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#define OAI_MAX_STOPS 4 /* OpenAI's own limit on `stop` */

/* A function call of an assistant message (in a request's history or an answer). */
struct oai_call {
    char *id, *name, *arguments;
};

/* What a turn holds beyond role and content. */
struct oai_turn_extra {
    struct oai_call *calls; /* assistant tool_calls */
    size_t n_calls;
    char *tool_name;        /* tool messages: the function the result is for */
};

/* auto: the model may call a function; none: `tools` are not shown to it;
 * required: it must call one of them; named: it must call tool_name. */
enum oai_tool_choice { OAI_TOOLS_AUTO = 0, OAI_TOOLS_NONE, OAI_TOOLS_REQUIRED, OAI_TOOLS_NAMED };

#define OAI_MAX_TOP_LOGPROBS 20       /* chat completions' top_logprobs */
#define OAI_MAX_LEGACY_LOGPROBS 5     /* legacy completions' logprobs */
#define OAI_DEFAULT_LEGACY_MAX_TOKENS 16 /* legacy completions' max_tokens when absent */

/* A parsed /v1/chat/completions body.  Strings are owned (oai_chat_free). */
struct oai_chat {
    struct gpo_chat_turn *turns; /* system/developer/user/assistant/tool, content owned */
    struct oai_turn_extra *extra; /* [n_turns] (n_extra allocated) */
    size_t n_turns, n_extra;
    char *tools;                   /* harmony's "# Tools ... namespace functions" section
                                      rendered from `tools`, or NULL */
    enum oai_tool_choice tool_choice;
    char *model;                   /* NULL when absent */
    enum gpo_reasoning reasoning;  /* the server default unless reasoning_effort is given */
    struct gpo_sampler_params sp;  /* the server defaults with the request's fields over them */
    int seed_given;
    int64_t max_tokens;            /* 0 = until the context is full */
    char *stops[OAI_MAX_STOPS];
    size_t n_stops;
    int stream, include_usage;
    int logprobs;                  /* `logprobs`: report the content tokens' log-probabilities */
    int top_logprobs;              /* 0..20 most likely alternatives per token (sp.n_logprobs) */
    char *tool_name;               /* OAI_TOOLS_NAMED: the function the answer must call */
    char **tool_names;             /* the names of `tools`, [n_tool_names] */
    size_t n_tool_names;
};

/* What went wrong with a request, as an OpenAI error object's fields. */
struct oai_error {
    int http;          /* status to answer with */
    char message[512];
    const char *type;  /* "invalid_request_error", ... */
    const char *param; /* the field, or NULL */
    const char *code;  /* or NULL */
};

/* Parse body[0..len) into *out (zeroed first); defaults come from sp and
 * reasoning.  0 on success; -1 with *err filled (400, naming the field) for
 * malformed JSON, wrong types, values out of range and unsupported features
 * (top_logprobs outside 0..20 or without logprobs, a tool_choice naming a
 * function that is not among `tools`, required/named without tools). */
int oai_parse_chat(const char *body, size_t len, const struct gpo_sampler_params *sp,
                   enum gpo_reasoning reasoning, struct oai_chat *out, struct oai_error *err);
void oai_chat_free(struct oai_chat *c);

/* The harmony conversation of a parsed request: system message (effort, date),
 * developer message (developer + the system/developer turns, and the tools
 * section unless tool_choice is none), then the turns; assistant tool calls become
 * commentary messages to functions.NAME with <|constrain|>json, tool results
 * messages from functions.NAME.  Without tools it is gpo_conv_build's. */
enum gpo_status oai_build_conv(const struct oai_chat *c, const char *developer, const char *date,
                               struct gpo_conv *out);

/* Is name one of names[0..n) (a request's tool_names)? */
int oai_tool_known(char *const *names, size_t n, const char *name);

/* The ids a forced function call ends the prompt with, after the rendered
 * "<|start|>assistant" (appended to out): for a name, the whole header
 * "<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>", so the
 * model writes the arguments; for NULL (tool_choice required) the header up to
 * "to=functions." so the model writes the name.  The engine's harmony parser is
 * given the same ids (gpo_request.parser_prefix). */
enum gpo_status oai_call_header(const gpo_tokenizer *t, const char *name, struct gpo_ids *out);

/* Is the parsed message a function call ("functions.NAME" recipient)?  Then
 * *name points into its recipient. */
int oai_is_call(const struct gpo_hparsed *m, const char **name);

/* Fill *err; returns -1 so callers can `return oai_err(...)`. */
int oai_err(struct oai_error *err, int http, const char *type, const char *param,
            const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* {"error": {"message", "type", "param", "code"}} as a malloc'd string (NULL: out of memory). */
char *oai_error_json(const struct oai_error *err);

/* "stop" or "length" for a finished request (context full counts as length). */
const char *oai_finish_reason(enum gpo_finish f);

/* Log-probabilities of the tokens of an answer, for the JSON answers. */
struct oai_logprobs {
    const gpo_tokenizer *tok;        /* for the tokens' bytes */
    const int32_t *ids;              /* [n] the chosen tokens */
    const struct gpo_logprobs *lps;  /* [n] the sampler's values for them */
    size_t n;
    int top;                         /* alternatives shown per token (at most lps[i].n) */
    size_t text_offset;              /* legacy shape: offset of ids[0]'s text in the answer,
                                        in characters */
};

/* The results of one chat completion (or, with the legacy functions below, one
 * text completion: content is the text). */
struct oai_result {
    const char *id;         /* "chatcmpl-..." */
    const char *model;
    int64_t created;        /* Unix seconds */
    const char *content;    /* final channel */
    size_t content_len;
    const char *reasoning;  /* analysis channel; NULL or empty: no reasoning_content */
    size_t reasoning_len;
    const char *finish;     /* "stop", "length", "tool_calls" */
    int64_t prompt_tokens, completion_tokens;
    const struct oai_call *calls; /* function calls of the answer */
    size_t n_calls;
    const struct oai_logprobs *logprobs; /* NULL: "logprobs": null; in a chunk, the
                                            tokens of that chunk's content */
};
/* The non-streaming chat.completion object. */
char *oai_chat_response_json(const struct oai_result *r);
/* One chat.completion.chunk: delta with role (when role), content and
 * reasoning_content (each when non-NULL), tool_calls (when r->n_calls and calls
 * is set), finish_reason (when finish); with usage set, the usage chunk (empty
 * choices).  Returned as "data: {...}\n\n". */
char *oai_chat_chunk_sse(const struct oai_result *r, int role, const char *content,
                         size_t content_len, const char *reasoning, size_t reasoning_len,
                         int calls, const char *finish, int usage);

/* Which generated tokens make the answer's content (final channel), for
 * logprobs, decided from the parser's events in order: header tokens wait until
 * their header completes (then they are dropped) or until the parser recovers
 * them as final text (then they are content); final-channel text tokens are
 * content; special tokens never are. */
struct oai_content_tokens {
    size_t *idx;           /* indexes of content tokens among the generated ones */
    size_t n, cap;
    size_t pend_from, n_pend; /* header tokens not placed yet */
};
/* Feed the event of generated token `index` (id; special: a special token), or
 * of the parser's end-of-turn text (id -1, index ignored).  -1 out of memory. */
int oai_content_track(struct oai_content_tokens *t, size_t index, int32_t id, int special,
                      const struct gpo_hevent *ev);
void oai_content_free(struct oai_content_tokens *t);

/* ------------------------------------------------------------------------- */
/* POST /v1/completions (legacy text completions)                            */

/* A parsed /v1/completions body.  Owned strings (oai_completion_free). */
struct oai_completion {
    char *model;
    char *prompt;                 /* the prompt text, or NULL when given as token ids */
    int32_t *prompt_ids;          /* `prompt` as an array of token ids */
    size_t n_prompt_ids;
    struct gpo_sampler_params sp;
    int seed_given;
    int64_t max_tokens;           /* OAI_DEFAULT_LEGACY_MAX_TOKENS unless given */
    char *stops[OAI_MAX_STOPS];
    size_t n_stops;
    int stream, include_usage;
    int logprobs;                 /* -1: none; 0..5 alternatives per token */
};
/* Parse body[0..len): prompt (string or array of ids), max_tokens, temperature,
 * top_p, presence/frequency_penalty, stop, seed, logprobs, stream,
 * stream_options, n = 1; echo and suffix only as false/null.  0 or -1 with *err
 * (400 naming the field). */
int oai_parse_completion(const char *body, size_t len, const struct gpo_sampler_params *sp,
                         struct oai_completion *out, struct oai_error *err);
void oai_completion_free(struct oai_completion *c);
/* The text_completion object: choices[0] = {text, index, logprobs (legacy
 * {tokens, token_logprobs, top_logprobs, text_offset} or null), finish_reason}. */
char *oai_completion_response_json(const struct oai_result *r);
/* One streamed text_completion chunk ("data: {...}\n\n"): text[0..len), its
 * logprobs (r->logprobs), finish when non-NULL; usage: the usage chunk. */
char *oai_completion_chunk_sse(const struct oai_result *r, const char *text, size_t len,
                               const char *finish, int usage);

/* ------------------------------------------------------------------------- */
/* GET /metrics: Prometheus' text exposition format                          */

#define OAI_HIST_MAX_BUCKETS 16

/* A histogram with fixed upper bounds (seconds); counts per bucket are kept
 * apart and made cumulative when written. */
struct oai_histogram {
    const double *le;  /* increasing upper bounds [n_le]; +Inf is implied */
    size_t n_le;       /* at most OAI_HIST_MAX_BUCKETS */
    uint64_t counts[OAI_HIST_MAX_BUCKETS + 1]; /* [n_le]: above the last bound */
    double sum;
    uint64_t count;
};
void oai_hist_observe(struct oai_histogram *h, double v);
/* "# HELP name help" and "# TYPE name type" lines (type: counter, gauge,
 * histogram).  0, or -1 out of memory (for all three). */
int oai_metric_head(struct gpo_str *b, const char *name, const char *type, const char *help);
/* One sample line "name{labels} value" (labels NULL or "": none). */
int oai_metric_sample(struct gpo_str *b, const char *name, const char *labels, double v);
/* The head, the cumulative name_bucket{le="..."} lines ending with le="+Inf",
 * name_sum and name_count. */
int oai_metric_histogram(struct gpo_str *b, const char *name, const char *help,
                         const struct oai_histogram *h);

/* Bytes of s[0..n) that end on a whole UTF-8 character (a cut sequence at the
 * end is held back). */
size_t oai_utf8_whole(const char *s, size_t n);

/* Characters (code points) of s[0..n): bytes that are not UTF-8 continuation
 * bytes, so a character split over tokens counts in the token holding its lead
 * byte (the legacy text_offset counts characters). */
size_t oai_utf8_chars(const char *s, size_t n);

/* Compare two strings in time that depends only on their lengths (API keys). */
int oai_key_equal(const char *given, size_t given_len, const char *key, size_t key_len);

#endif
