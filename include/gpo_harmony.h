/* gpo_harmony.h - the harmony chat format of GPT-OSS (spec 6): a conversation
 * model, the renderer that turns it into prompt ids, a JSON loader, and the
 * streaming parser that splits generated ids into channel messages.
 * Included by gpo.h. */
#ifndef GPO_HARMONY_H
#define GPO_HARMONY_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Conversation model                                                        */

enum gpo_role {
    GPO_ROLE_SYSTEM = 0,
    GPO_ROLE_DEVELOPER,
    GPO_ROLE_USER,
    GPO_ROLE_ASSISTANT,
    GPO_ROLE_TOOL, /* a tool's output; the header carries the tool name instead of a role */
};

/* "system", "developer", "user", "assistant", "tool"; "?" outside the enum. */
const char *gpo_role_name(enum gpo_role r);
/* The role named by name[0..len), or -1. */
int gpo_role_parse(const char *name, size_t len);

enum gpo_reasoning {
    GPO_REASONING_DEFAULT = 0, /* medium, harmony's default */
    GPO_REASONING_LOW,
    GPO_REASONING_MEDIUM,
    GPO_REASONING_HIGH,
    GPO_REASONING_NONE, /* omit the "Reasoning:" line */
};
/* "low", "medium", "high" (DEFAULT gives "medium", NONE gives ""). */
const char *gpo_reasoning_name(enum gpo_reasoning r);
/* The effort named by name ("low", "medium", "high"), or -1. */
int gpo_reasoning_parse(const char *name);

/* Fields of the system message (spec 6.2).  Zero-initialised means harmony's
 * SystemContent::default() without a date. */
struct gpo_hsystem {
    const char *model_identity;   /* NULL: "You are ChatGPT, ..."; "": line omitted */
    const char *knowledge_cutoff; /* NULL: "2024-06"; "": line omitted */
    const char *current_date;     /* NULL or "": no "Current date:" line */
    enum gpo_reasoning reasoning;
    const char *valid_channels;   /* NULL: "analysis, commentary, final"; "": no channel section */
    int channel_optional;         /* 1 drops "Channel must be included for every message." */
};

/* One message.  Which fields are used depends on the role:
 *   system     sys only (content is ignored);
 *   developer  content = the instructions (rendered "# Instructions\n\n{content}"),
 *              tools = an optional pre-rendered "# Tools\n\n## functions\n\nnamespace ..."
 *              section (when set, the system message gains the line that sends
 *              function calls to the commentary channel);
 *   user, assistant, tool  content as given;
 *   tool       name = the tool ("functions.get_weather"), rendered instead of a role.
 * channel, recipient and content_type apply to every non-system role.  A
 * content_type starting with "<|constrain|>" is rendered as the special token
 * 200003 followed by the rest as text.  An assistant message with a recipient is a
 * tool call and ends with <|call|> instead of <|end|>. */
struct gpo_hmsg {
    enum gpo_role role;
    const char *content;      /* NULL counts as "" */
    const char *channel;      /* NULL: no <|channel|> */
    const char *recipient;    /* NULL: no " to=..." */
    const char *content_type; /* NULL: none */
    const char *name;         /* tool messages: the tool name */
    const char *tools;        /* developer messages: pre-rendered tools section */
    struct gpo_hsystem sys;   /* system messages */
};

/* A conversation owns copies of every string of its messages. */
struct gpo_conv {
    struct gpo_hmsg *msgs;
    size_t n, cap;
    /* Drop analysis messages before the first final one when the last assistant
     * message is on the final channel (spec 6.4).  gpo_conv_init sets it to 1. */
    int auto_drop_analysis;
};

void gpo_conv_init(struct gpo_conv *c);
void gpo_conv_free(struct gpo_conv *c); /* leaves an empty, initialised conversation */
/* Append a copy of m (all strings are copied). */
enum gpo_status gpo_conv_add(struct gpo_conv *c, const struct gpo_hmsg *m);
/* Shorthand for a message with only role and content (assistant messages go to
 * the final channel). */
enum gpo_status gpo_conv_add_text(struct gpo_conv *c, enum gpo_role role, const char *content);
/* Drop every message from index n on (undo in a chat loop). */
void gpo_conv_truncate(struct gpo_conv *c, size_t n);

/* A plain chat turn for gpo_conv_build: OpenAI-style roles. */
struct gpo_chat_turn {
    enum gpo_role role; /* SYSTEM or DEVELOPER (become developer instructions), USER, ASSISTANT */
    const char *content;
};

/* Build a conversation for the CLI or a server: a system message with the given
 * effort and date (NULL: no date line), then one developer message whose
 * instructions are `developer` followed by the content of every SYSTEM/DEVELOPER
 * turn (joined by a blank line; no developer message when all are empty), then the
 * user turns and the assistant turns (as final-channel answers) in order.  c must be
 * empty (freshly initialised); on failure it is left empty. */
enum gpo_status gpo_conv_build(struct gpo_conv *c, const char *developer,
                               enum gpo_reasoning effort, const char *date,
                               const struct gpo_chat_turn *turns, size_t n_turns);

/* Load one conversation object in the fixture form
 *   {"messages": [{"role": "system", "reasoning_effort": "low", "current_date": "..."},
 *                 {"role": "developer", "instructions": "..."},
 *                 {"role": "user", "content": "..."},
 *                 {"role": "assistant", "channel": "final", "content": "..."},
 *                 {"role": "tool", "name": "functions.f", "recipient": "assistant",
 *                  "channel": "commentary", "content": "..."}],
 *    "auto_drop_analysis": true}
 * System fields: model_identity, knowledge_cutoff (null omits the line),
 * current_date, reasoning_effort, valid_channels (array of strings),
 * channel_required (bool).  Developer: instructions (or content).  Other roles:
 * content (required), channel, recipient, content_type; tool also name (required).
 * Unknown message fields, unknown roles and wrong types are GPO_ERR_JSON with a
 * message naming the message index and field.  Other top-level fields are ignored.
 * c is initialised by the call (and left empty on failure). */
enum gpo_status gpo_conv_from_json(const char *json, size_t len, struct gpo_conv *c);

/* Today's local date as "YYYY-MM-DD" (out must hold 11 bytes). */
void gpo_harmony_today(char out[11]);

/* ------------------------------------------------------------------------- */
/* Rendering                                                                 */

/* Append the prompt ids of the conversation followed by "<|start|>assistant"
 * (200006, 173781), the prompt for the model's next turn.  Role names, channels
 * and content are encoded separately as ordinary text (special-token strings in
 * content stay text); formatting tokens are inserted by id. */
enum gpo_status gpo_harmony_render(const gpo_tokenizer *t, const struct gpo_conv *c,
                                   struct gpo_ids *out);
/* Append the ids of one message (<|start|> ... <|end|> or <|call|>).
 * function_tools adds the commentary-channel line to a system message. */
enum gpo_status gpo_harmony_render_message(const gpo_tokenizer *t, const struct gpo_hmsg *m,
                                           int function_tools, struct gpo_ids *out);

/* ------------------------------------------------------------------------- */
/* Streaming parser of generated ids                                         */

enum gpo_hchannel {
    GPO_CH_NONE = 0, /* the message had no <|channel|> */
    GPO_CH_ANALYSIS,
    GPO_CH_COMMENTARY,
    GPO_CH_FINAL,
    GPO_CH_OTHER,
};
enum gpo_hchannel gpo_hchannel_of(const char *name); /* NULL -> NONE */

/* A message of the generated turn.  An assistant message without a channel or
 * recipient gets channel "final" and the recovered flag.  The pointers stay
 * valid until the next push/finish/reset of the parser (content grows while the
 * message is open). */
struct gpo_hparsed {
    struct gpo_hmsg msg;        /* role, channel, recipient, content_type, name, content */
    size_t content_len;
    enum gpo_hchannel channel;
    int32_t end_token;          /* GPO_TOK_END/RETURN/CALL/ENDOFTEXT; -1 while open or if cut off */
    int complete;               /* the message ended (with end_token, or -1 when cut off) */
    int recovered;              /* built by recovery from malformed output (channel "final") */
};

/* What one pushed token did.  At most one message is touched per token. */
struct gpo_hevent {
    int msg;                 /* index of the message touched, or -1 (header tokens) */
    enum gpo_hchannel channel; /* its channel */
    const char *text;        /* text appended to its content by this token ("" if none) */
    size_t text_len;
    int msg_started;         /* its header was completed by this token */
    int msg_done;            /* it was completed by this token */
    int turn_done;           /* <|return|>, <|call|> or <|endoftext|> ended the turn */
    int recovered;           /* malformed output was recovered by this token */
};

typedef struct gpo_hparser gpo_hparser;

/* The parser expects the model's output right after the prompt's
 * "<|start|>assistant": the first header starts without <|start|> and with the
 * assistant role already given. */
enum gpo_status gpo_hparser_create(const gpo_tokenizer *t, gpo_hparser **out);
void gpo_hparser_free(gpo_hparser *p);
/* Forget every message and expect a new turn. */
void gpo_hparser_reset(gpo_hparser *p);
/* Feed one generated id.  ev (may be NULL) is overwritten.  Malformed output never
 * fails: the rest of the malformed message becomes text of a "final" message and
 * the recovered flags are set.  Tokens after the end of the turn are ignored.
 * Fails only for a negative id (GPO_ERR_TOKEN) or out of memory. */
enum gpo_status gpo_hparser_push(gpo_hparser *p, int32_t id, struct gpo_hevent *ev);
/* End of stream without a stop token (length limit, abort): emit any held bytes and
 * close the open message with end_token -1.  A header with no special token yet
 * (plain text the model wrote without any header) becomes a recovered final message;
 * a cut-off header otherwise is dropped. */
enum gpo_status gpo_hparser_finish(gpo_hparser *p, struct gpo_hevent *ev);
size_t gpo_hparser_n_messages(const gpo_hparser *p);
const struct gpo_hparsed *gpo_hparser_message(const gpo_hparser *p, size_t i);
int gpo_hparser_done(const gpo_hparser *p);      /* the turn ended (<|return|>, <|call|>, EOT) */
int32_t gpo_hparser_end_token(const gpo_hparser *p); /* the token that ended it, or -1 */
int gpo_hparser_recovered(const gpo_hparser *p); /* recovery happened in this turn */
/* Append the complete messages of the turn to c, for the history of a chat loop
 * (the renderer ends them with <|end|>, or <|call|> for tool calls, never with
 * <|return|>, as harmony requires).  keep_analysis = 0 leaves out analysis
 * messages: harmony only drops analysis before the conversation's FIRST final
 * message, so a chat loop that wants earlier turns' reasoning gone must not add it. */
enum gpo_status gpo_hparser_to_conv(const gpo_hparser *p, struct gpo_conv *c, int keep_analysis);

#ifdef __cplusplus
}
#endif
#endif
