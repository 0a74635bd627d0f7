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

enum oai_tool_choice { OAI_TOOLS_AUTO = 0, OAI_TOOLS_NONE, OAI_TOOLS_REQUIRED };

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
 * malformed JSON, wrong types, values out of range and unsupported features. */
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

/* The results of one chat completion. */
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

/* Bytes of s[0..n) that end on a whole UTF-8 character (a cut sequence at the
 * end is held back). */
size_t oai_utf8_whole(const char *s, size_t n);

/* Compare two strings in time that depends only on their lengths (API keys). */
int oai_key_equal(const char *given, size_t given_len, const char *key, size_t key_len);

#endif
