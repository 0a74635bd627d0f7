/* harmony.c - the harmony chat format (spec 6): conversations, the prompt
 * renderer (openai/harmony's render rules, checked against
 * tests/fixtures/harmony), a JSON loader, and a streaming parser that splits the
 * model's generated ids into channel messages and survives malformed output. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpo.h"
#include "util.h"

#define DEFAULT_IDENTITY "You are ChatGPT, a large language model trained by OpenAI."
#define DEFAULT_CUTOFF "2024-06"
#define DEFAULT_CHANNELS "analysis, commentary, final"
#define CONSTRAIN_TEXT "<|constrain|>"
#define TOK_ASSISTANT_TEXT "assistant"

/* ------------------------------------------------------------------------- */
/* Names                                                                     */

static const char *const role_names[] = {"system", "developer", "user", "assistant", "tool"};

const char *gpo_role_name(enum gpo_role r) {
    if ((int)r < 0 || (size_t)r >= sizeof role_names / sizeof *role_names) return "?";
    return role_names[r];
}

int gpo_role_parse(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof role_names / sizeof *role_names; i++)
        if (strlen(role_names[i]) == len && memcmp(role_names[i], name, len) == 0) return (int)i;
    return -1;
}

const char *gpo_reasoning_name(enum gpo_reasoning r) {
    switch (r) {
    case GPO_REASONING_LOW: return "low";
    case GPO_REASONING_DEFAULT:
    case GPO_REASONING_MEDIUM: return "medium";
    case GPO_REASONING_HIGH: return "high";
    default: return "";
    }
}

int gpo_reasoning_parse(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "low")) return GPO_REASONING_LOW;
    if (!strcmp(name, "medium")) return GPO_REASONING_MEDIUM;
    if (!strcmp(name, "high")) return GPO_REASONING_HIGH;
    return -1;
}

enum gpo_hchannel gpo_hchannel_of(const char *name) {
    if (!name) return GPO_CH_NONE;
    if (!strcmp(name, "analysis")) return GPO_CH_ANALYSIS;
    if (!strcmp(name, "commentary")) return GPO_CH_COMMENTARY;
    if (!strcmp(name, "final")) return GPO_CH_FINAL;
    return GPO_CH_OTHER;
}

void gpo_harmony_today(char out[11]) {
    time_t now = time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm) || strftime(out, 11, "%Y-%m-%d", &tm) != 10)
        memcpy(out, "1970-01-01", 11);
}

/* ------------------------------------------------------------------------- */
/* Conversations                                                             */

/* strdup that keeps NULL as NULL; *ok becomes 0 when memory runs out. */
static const char *dup_opt(const char *s, int *ok) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *ok = 0;
    return d;
}

static void free_msg_strings(struct gpo_hmsg *m) {
    free((char *)m->content);
    free((char *)m->channel);
    free((char *)m->recipient);
    free((char *)m->content_type);
    free((char *)m->name);
    free((char *)m->tools);
    free((char *)m->sys.model_identity);
    free((char *)m->sys.knowledge_cutoff);
    free((char *)m->sys.current_date);
    free((char *)m->sys.valid_channels);
}

void gpo_conv_init(struct gpo_conv *c) {
    memset(c, 0, sizeof *c);
    c->auto_drop_analysis = 1;
}

void gpo_conv_truncate(struct gpo_conv *c, size_t n) {
    while (c->n > n) free_msg_strings(&c->msgs[--c->n]);
}

void gpo_conv_free(struct gpo_conv *c) {
    gpo_conv_truncate(c, 0);
    free(c->msgs);
    gpo_conv_init(c);
}

enum gpo_status gpo_conv_add(struct gpo_conv *c, const struct gpo_hmsg *m) {
    if (!c || !m) return gpo_fail(GPO_ERR_ARG, "harmony: NULL conversation or message");
    if ((int)m->role < GPO_ROLE_SYSTEM || m->role > GPO_ROLE_TOOL)
        return gpo_fail(GPO_ERR_ARG, "harmony: message role %d is not a role", (int)m->role);
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 8;
        struct gpo_hmsg *q = realloc(c->msgs, nc * sizeof *q);
        if (!q) return gpo_fail(GPO_ERR_NOMEM, "harmony: out of memory adding a message");
        c->msgs = q;
        c->cap = nc;
    }
    int ok = 1;
    struct gpo_hmsg d = {.role = m->role};
    d.content = dup_opt(m->content, &ok);
    d.channel = dup_opt(m->channel, &ok);
    d.recipient = dup_opt(m->recipient, &ok);
    d.content_type = dup_opt(m->content_type, &ok);
    d.name = dup_opt(m->name, &ok);
    d.tools = dup_opt(m->tools, &ok);
    d.sys.model_identity = dup_opt(m->sys.model_identity, &ok);
    d.sys.knowledge_cutoff = dup_opt(m->sys.knowledge_cutoff, &ok);
    d.sys.current_date = dup_opt(m->sys.current_date, &ok);
    d.sys.reasoning = m->sys.reasoning;
    d.sys.valid_channels = dup_opt(m->sys.valid_channels, &ok);
    d.sys.channel_optional = m->sys.channel_optional;
    if (!ok) {
        free_msg_strings(&d);
        return gpo_fail(GPO_ERR_NOMEM, "harmony: out of memory copying a message");
    }
    c->msgs[c->n++] = d;
    return GPO_OK;
}

enum gpo_status gpo_conv_add_text(struct gpo_conv *c, enum gpo_role role, const char *content) {
    struct gpo_hmsg m = {.role = role, .content = content};
    if (role == GPO_ROLE_ASSISTANT) m.channel = "final";
    return gpo_conv_add(c, &m);
}

enum gpo_status gpo_conv_build(struct gpo_conv *c, const char *developer,
                               enum gpo_reasoning effort, const char *date,
                               const struct gpo_chat_turn *turns, size_t n_turns) {
    enum gpo_status st = GPO_OK;
    struct gpo_str instr = {0};
    if (!c || (n_turns && !turns)) return gpo_fail(GPO_ERR_ARG, "harmony: NULL argument");
    if (c->n) return gpo_fail(GPO_ERR_ARG, "harmony: gpo_conv_build needs an empty conversation");

    struct gpo_hmsg sys = {.role = GPO_ROLE_SYSTEM};
    sys.sys.reasoning = effort;
    sys.sys.current_date = date;
    if ((st = gpo_conv_add(c, &sys)) != GPO_OK) goto fail;

    /* An OpenAI-style system prompt is harmony's developer message (spec 6.3). */
    if (developer && *developer) {
        if ((st = gpo_str_append(&instr, developer, strlen(developer))) != GPO_OK) goto fail;
    }
    for (size_t i = 0; i < n_turns; i++) {
        if (turns[i].role != GPO_ROLE_SYSTEM && turns[i].role != GPO_ROLE_DEVELOPER) continue;
        const char *t = turns[i].content;
        if (!t || !*t) continue;
        if (instr.n && (st = gpo_str_append(&instr, "\n\n", 2)) != GPO_OK) goto fail;
        if ((st = gpo_str_append(&instr, t, strlen(t))) != GPO_OK) goto fail;
    }
    if (instr.n) {
        struct gpo_hmsg dev = {.role = GPO_ROLE_DEVELOPER, .content = instr.s};
        if ((st = gpo_conv_add(c, &dev)) != GPO_OK) goto fail;
    }
    for (size_t i = 0; i < n_turns; i++) {
        enum gpo_role r = turns[i].role;
        if (r == GPO_ROLE_SYSTEM || r == GPO_ROLE_DEVELOPER) continue;
        if (r != GPO_ROLE_USER && r != GPO_ROLE_ASSISTANT) {
            st = gpo_fail(GPO_ERR_ARG,
                          "harmony: turn %zu has role %s; only system, developer, user and "
                          "assistant turns can be built (add tool messages with gpo_conv_add)",
                          i, gpo_role_name(r));
            goto fail;
        }
        if ((st = gpo_conv_add_text(c, r, turns[i].content ? turns[i].content : "")) != GPO_OK)
            goto fail;
    }
    gpo_str_free(&instr);
    return GPO_OK;
fail:
    gpo_str_free(&instr);
    gpo_conv_truncate(c, 0);
    return st;
}

/* ------------------------------------------------------------------------- */
/* JSON loader                                                               */

/* A string field: absent -> *out unchanged, *present = 0; null -> allowed only when
 * null_ok (*out = NULL); anything else but a string is an error. */
static enum gpo_status json_str(const cJSON *obj, const char *key, size_t idx, int null_ok,
                                const char **out, int *present) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (present) *present = v != NULL;
    if (!v) return GPO_OK;
    if (cJSON_IsNull(v) && null_ok) {
        *out = NULL;
        return GPO_OK;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return gpo_fail(GPO_ERR_JSON, "conversation: messages[%zu].%s must be a string%s", idx,
                        key, null_ok ? " or null" : "");
    *out = v->valuestring;
    return GPO_OK;
}

static int key_allowed(const char *key, const char *const *allowed) {
    for (; *allowed; allowed++)
        if (!strcmp(key, *allowed)) return 1;
    return 0;
}

static enum gpo_status parse_json_message(const cJSON *jm, size_t idx, struct gpo_conv *c) {
    static const char *const sys_keys[] = {"role", "reasoning_effort", "current_date",
                                           "knowledge_cutoff", "model_identity",
                                           "valid_channels", "channel_required", NULL};
    static const char *const dev_keys[] = {"role", "instructions", "content", "channel",
                                           "recipient", "content_type", NULL};
    static const char *const msg_keys[] = {"role", "content", "channel", "recipient",
                                           "content_type", NULL};
    static const char *const tool_keys[] = {"role", "content", "channel", "recipient",
                                            "content_type", "name", NULL};
    enum gpo_status st = GPO_OK;
    struct gpo_str chans = {0};
    if (!cJSON_IsObject(jm))
        return gpo_fail(GPO_ERR_JSON, "conversation: messages[%zu] must be an object", idx);
    const cJSON *jr = cJSON_GetObjectItemCaseSensitive(jm, "role");
    if (!jr) return gpo_fail(GPO_ERR_JSON, "conversation: messages[%zu] has no role", idx);
    if (!cJSON_IsString(jr) || !jr->valuestring)
        return gpo_fail(GPO_ERR_JSON, "conversation: messages[%zu].role must be a string", idx);
    int role = gpo_role_parse(jr->valuestring, strlen(jr->valuestring));
    if (role < 0)
        return gpo_fail(GPO_ERR_JSON,
                        "conversation: messages[%zu] has unknown role \"%s\" (expected system, "
                        "developer, user, assistant or tool)",
                        idx, jr->valuestring);
    const char *const *allowed = role == GPO_ROLE_SYSTEM      ? sys_keys
                                 : role == GPO_ROLE_DEVELOPER ? dev_keys
                                 : role == GPO_ROLE_TOOL      ? tool_keys
                                                              : msg_keys;
    for (const cJSON *f = jm->child; f; f = f->next)
        if (!f->string || !key_allowed(f->string, allowed))
            return gpo_fail(GPO_ERR_JSON,
                            "conversation: messages[%zu] (%s) has unexpected field \"%s\"%s", idx,
                            jr->valuestring, f->string ? f->string : "?",
                            role == GPO_ROLE_SYSTEM && f->string && !strcmp(f->string, "content")
                                ? " (put a system prompt in a developer message's instructions)"
                                : "");

    struct gpo_hmsg m = {.role = (enum gpo_role)role};
    int present = 0;
    if (role == GPO_ROLE_SYSTEM) {
        const char *effort = NULL;
        GPO_TRY(json_str(jm, "reasoning_effort", idx, 0, &effort, &present));
        if (present) {
            int e = gpo_reasoning_parse(effort);
            if (e < 0)
                return gpo_fail(GPO_ERR_JSON,
                                "conversation: messages[%zu].reasoning_effort \"%s\" is not low, "
                                "medium or high",
                                idx, effort);
            m.sys.reasoning = (enum gpo_reasoning)e;
        }
        GPO_TRY(json_str(jm, "current_date", idx, 1, &m.sys.current_date, NULL));
        /* null omits the line; the C struct spells that "". */
        GPO_TRY(json_str(jm, "model_identity", idx, 1, &m.sys.model_identity, &present));
        if (present && !m.sys.model_identity) m.sys.model_identity = "";
        GPO_TRY(json_str(jm, "knowledge_cutoff", idx, 1, &m.sys.knowledge_cutoff, &present));
        if (present && !m.sys.knowledge_cutoff) m.sys.knowledge_cutoff = "";
        const cJSON *jc = cJSON_GetObjectItemCaseSensitive(jm, "valid_channels");
        if (jc) {
            if (!cJSON_IsArray(jc))
                return gpo_fail(GPO_ERR_JSON,
                                "conversation: messages[%zu].valid_channels must be an array of "
                                "strings",
                                idx);
            if ((st = gpo_str_append(&chans, "", 0)) != GPO_OK) goto done;
            size_t k = 0;
            for (const cJSON *e = jc->child; e; e = e->next, k++) {
                if (!cJSON_IsString(e) || !e->valuestring) {
                    st = gpo_fail(GPO_ERR_JSON,
                                  "conversation: messages[%zu].valid_channels[%zu] must be a "
                                  "string",
                                  idx, k);
                    goto done;
                }
                if (k && (st = gpo_str_append(&chans, ", ", 2)) != GPO_OK) goto done;
                if ((st = gpo_str_append(&chans, e->valuestring, strlen(e->valuestring))) !=
                    GPO_OK)
                    goto done;
            }
            m.sys.valid_channels = chans.s;
        }
        const cJSON *jq = cJSON_GetObjectItemCaseSensitive(jm, "channel_required");
        if (jq) {
            if (!cJSON_IsBool(jq)) {
                st = gpo_fail(GPO_ERR_JSON,
                              "conversation: messages[%zu].channel_required must be true or false",
                              idx);
                goto done;
            }
            m.sys.channel_optional = cJSON_IsFalse(jq);
        }
    } else {
        if (role == GPO_ROLE_DEVELOPER) {
            int has_instr = 0, has_content = 0;
            const char *instr = NULL, *content = NULL;
            GPO_TRY(json_str(jm, "instructions", idx, 0, &instr, &has_instr));
            GPO_TRY(json_str(jm, "content", idx, 0, &content, &has_content));
            if (has_instr && has_content)
                return gpo_fail(GPO_ERR_JSON,
                                "conversation: messages[%zu] (developer) has both instructions "
                                "and content",
                                idx);
            m.content = has_instr ? instr : content;
        } else {
            GPO_TRY(json_str(jm, "content", idx, 0, &m.content, &present));
            if (!present)
                return gpo_fail(GPO_ERR_JSON, "conversation: messages[%zu] (%s) has no content",
                                idx, jr->valuestring);
        }
        GPO_TRY(json_str(jm, "channel", idx, 1, &m.channel, NULL));
        GPO_TRY(json_str(jm, "recipient", idx, 1, &m.recipient, NULL));
        GPO_TRY(json_str(jm, "content_type", idx, 1, &m.content_type, NULL));
        if (role == GPO_ROLE_TOOL) {
            GPO_TRY(json_str(jm, "name", idx, 0, &m.name, &present));
            if (!present || !m.name[0])
                return gpo_fail(GPO_ERR_JSON,
                                "conversation: messages[%zu] (tool) needs a non-empty name "
                                "(e.g. \"functions.get_weather\")",
                                idx);
        }
    }
    st = gpo_conv_add(c, &m);
done:
    gpo_str_free(&chans);
    return st;
}

enum gpo_status gpo_conv_from_json(const char *json, size_t len, struct gpo_conv *c) {
    enum gpo_status st = GPO_OK;
    cJSON *root = NULL;
    if (!c) return gpo_fail(GPO_ERR_ARG, "conversation: NULL output");
    gpo_conv_init(c);
    if (!json) return gpo_fail(GPO_ERR_ARG, "conversation: NULL input");
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        const char *at = end ? end : cJSON_GetErrorPtr();
        size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0;
        return gpo_fail(GPO_ERR_JSON, "conversation: malformed JSON near byte %zu", off);
    }
    if (!cJSON_IsObject(root)) {
        st = gpo_fail(GPO_ERR_JSON, "conversation: the top level must be an object");
        goto fail;
    }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(root, "auto_drop_analysis");
    if (jd) {
        if (!cJSON_IsBool(jd)) {
            st = gpo_fail(GPO_ERR_JSON, "conversation: auto_drop_analysis must be true or false");
            goto fail;
        }
        c->auto_drop_analysis = cJSON_IsTrue(jd);
    }
    const cJSON *jms = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!jms) {
        st = gpo_fail(GPO_ERR_JSON, "conversation: no \"messages\" array");
        goto fail;
    }
    if (!cJSON_IsArray(jms)) {
        st = gpo_fail(GPO_ERR_JSON, "conversation: \"messages\" must be an array");
        goto fail;
    }
    size_t idx = 0;
    for (const cJSON *jm = jms->child; jm; jm = jm->next, idx++)
        if ((st = parse_json_message(jm, idx, c)) != GPO_OK) goto fail;
    cJSON_Delete(root);
    return GPO_OK;
fail:
    cJSON_Delete(root);
    gpo_conv_free(c);
    return st;
}

/* ------------------------------------------------------------------------- */
/* Rendering                                                                 */

static enum gpo_status text_into(const gpo_tokenizer *t, const char *s, size_t n,
                                 struct gpo_ids *out) {
    if (n == 0) return GPO_OK;
    /* Ordinary text only: special-token strings in content must stay text. */
    return gpo_tokenizer_encode(t, s, n, 0, out);
}

static enum gpo_status cstr_into(const gpo_tokenizer *t, const char *s, struct gpo_ids *out) {
    return s ? text_into(t, s, strlen(s), out) : GPO_OK;
}

static enum gpo_status append_cstr(struct gpo_str *b, const char *s) {
    return gpo_str_append(b, s, strlen(s));
}

/* The text of a system message: sections joined by a blank line (spec 6.2). */
static enum gpo_status system_text(const struct gpo_hsystem *s, int function_tools,
                                   struct gpo_str *b) {
    const char *ident = s->model_identity ? s->model_identity : DEFAULT_IDENTITY;
    const char *cutoff = s->knowledge_cutoff ? s->knowledge_cutoff : DEFAULT_CUTOFF;
    const char *chans = s->valid_channels ? s->valid_channels : DEFAULT_CHANNELS;
    int top = 0;
    GPO_TRY(gpo_str_append(b, "", 0));
    if (*ident) {
        GPO_TRY(append_cstr(b, ident));
        top = 1;
    }
    if (*cutoff) {
        if (top) GPO_TRY(append_cstr(b, "\n"));
        GPO_TRY(append_cstr(b, "Knowledge cutoff: "));
        GPO_TRY(append_cstr(b, cutoff));
        top = 1;
    }
    if (s->current_date && *s->current_date) {
        if (top) GPO_TRY(append_cstr(b, "\n"));
        GPO_TRY(append_cstr(b, "Current date: "));
        GPO_TRY(append_cstr(b, s->current_date));
    }
    if (s->reasoning != GPO_REASONING_NONE) {
        if (b->n) GPO_TRY(append_cstr(b, "\n\n"));
        GPO_TRY(append_cstr(b, "Reasoning: "));
        GPO_TRY(append_cstr(b, gpo_reasoning_name(s->reasoning)));
    }
    if (*chans) {
        if (b->n) GPO_TRY(append_cstr(b, "\n\n"));
        GPO_TRY(append_cstr(b, "# Valid channels: "));
        GPO_TRY(append_cstr(b, chans));
        GPO_TRY(append_cstr(b, "."));
        if (!s->channel_optional)
            GPO_TRY(append_cstr(b, " Channel must be included for every message."));
        if (function_tools)
            GPO_TRY(append_cstr(
                b, "\nCalls to these tools must go to the commentary channel: 'functions'."));
    }
    return GPO_OK;
}

static enum gpo_status developer_text(const struct gpo_hmsg *m, struct gpo_str *b) {
    GPO_TRY(gpo_str_append(b, "", 0));
    if (m->content) {
        GPO_TRY(append_cstr(b, "# Instructions\n\n"));
        GPO_TRY(append_cstr(b, m->content));
    }
    if (m->tools && *m->tools) {
        if (b->n) GPO_TRY(append_cstr(b, "\n\n"));
        GPO_TRY(append_cstr(b, m->tools));
    }
    return GPO_OK;
}

enum gpo_status gpo_harmony_render_message(const gpo_tokenizer *t, const struct gpo_hmsg *m,
                                           int function_tools, struct gpo_ids *out) {
    enum gpo_status st = GPO_OK;
    struct gpo_str b = {0};
    if (!t || !m || !out) return gpo_fail(GPO_ERR_ARG, "harmony: NULL argument to render");
    if (m->role == GPO_ROLE_TOOL && (!m->name || !*m->name))
        return gpo_fail(GPO_ERR_ARG, "harmony: a tool message needs the tool's name");

    if ((st = gpo_ids_push(out, GPO_TOK_START)) != GPO_OK) goto done;
    /* A tool message's header names the tool instead of a role. */
    st = cstr_into(t, m->role == GPO_ROLE_TOOL ? m->name : gpo_role_name(m->role), out);
    if (st != GPO_OK) goto done;
    if (m->recipient && strcmp(m->recipient, "all") != 0) {
        if ((st = append_cstr(&b, " to=")) != GPO_OK || (st = append_cstr(&b, m->recipient)))
            goto done;
        if ((st = text_into(t, b.s, b.n, out)) != GPO_OK) goto done;
        b.n = 0;
    }
    if (m->channel) {
        if ((st = gpo_ids_push(out, GPO_TOK_CHANNEL)) != GPO_OK) goto done;
        if ((st = cstr_into(t, m->channel, out)) != GPO_OK) goto done;
    }
    if (m->content_type) {
        size_t cl = strlen(CONSTRAIN_TEXT);
        if (!strncmp(m->content_type, CONSTRAIN_TEXT, cl)) {
            /* " <|constrain|>json": the marker is a special token, the rest text. */
            if ((st = text_into(t, " ", 1, out)) != GPO_OK) goto done;
            if ((st = gpo_ids_push(out, GPO_TOK_CONSTRAIN)) != GPO_OK) goto done;
            if ((st = cstr_into(t, m->content_type + cl, out)) != GPO_OK) goto done;
        } else {
            if ((st = append_cstr(&b, " ")) != GPO_OK || (st = append_cstr(&b, m->content_type)))
                goto done;
            if ((st = text_into(t, b.s, b.n, out)) != GPO_OK) goto done;
            b.n = 0;
        }
    }
    if ((st = gpo_ids_push(out, GPO_TOK_MESSAGE)) != GPO_OK) goto done;
    if (m->role == GPO_ROLE_SYSTEM) {
        if ((st = system_text(&m->sys, function_tools, &b)) != GPO_OK) goto done;
        st = text_into(t, b.s, b.n, out);
    } else if (m->role == GPO_ROLE_DEVELOPER) {
        if ((st = developer_text(m, &b)) != GPO_OK) goto done;
        st = text_into(t, b.s, b.n, out);
    } else {
        st = cstr_into(t, m->content, out);
    }
    if (st != GPO_OK) goto done;
    /* An assistant message addressed to someone is a tool call (spec 6.1). */
    st = gpo_ids_push(out, m->role == GPO_ROLE_ASSISTANT && m->recipient ? GPO_TOK_CALL
                                                                          : GPO_TOK_END);
done:
    gpo_str_free(&b);
    return st;
}

static int is_channel(const struct gpo_hmsg *m, const char *ch) {
    return m->channel && !strcmp(m->channel, ch);
}

enum gpo_status gpo_harmony_render(const gpo_tokenizer *t, const struct gpo_conv *c,
                                   struct gpo_ids *out) {
    if (!t || !c || !out) return gpo_fail(GPO_ERR_ARG, "harmony: NULL argument to render");
    int function_tools = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->msgs[i].role == GPO_ROLE_DEVELOPER && c->msgs[i].tools && *c->msgs[i].tools)
            function_tools = 1;

    /* harmony's auto_drop_analysis (render_conversation_into): only when the last
     * assistant message is on final, drop analysis messages before the FIRST final
     * message; analysis between two finals stays. */
    int last_assistant_final = 0;
    for (size_t i = c->n; i-- > 0;)
        if (c->msgs[i].role == GPO_ROLE_ASSISTANT) {
            last_assistant_final = is_channel(&c->msgs[i], "final");
            break;
        }
    size_t first_final = c->n;
    for (size_t i = 0; i < c->n; i++)
        if (is_channel(&c->msgs[i], "final")) {
            first_final = i;
            break;
        }
    int drop = c->auto_drop_analysis && last_assistant_final;

    size_t n0 = out->n;
    for (size_t i = 0; i < c->n; i++) {
        if (drop && i < first_final && is_channel(&c->msgs[i], "analysis")) continue;
        enum gpo_status st = gpo_harmony_render_message(t, &c->msgs[i], function_tools, out);
        if (st != GPO_OK) {
            out->n = n0;
            return gpo_fail_ctx(st, "harmony: rendering message %zu (%s)", i,
                                gpo_role_name(c->msgs[i].role));
        }
    }
    enum gpo_status st = gpo_ids_push(out, GPO_TOK_START);
    if (st == GPO_OK) st = text_into(t, TOK_ASSISTANT_TEXT, strlen(TOK_ASSISTANT_TEXT), out);
    if (st != GPO_OK) out->n = n0;
    return st;
}

/* ------------------------------------------------------------------------- */
/* Streaming parser                                                          */

/* Header bytes are kept with the special tokens as marker bytes; control bytes
 * never occur in a valid header, so they cannot be confused with text. */
#define MARK_CHANNEL '\x01'
#define MARK_CONSTRAIN '\x02'
/* Longer headers are taken for text the model wrote without a header. */
#define MAX_HEADER 256

enum pstate {
    PS_HEADER,       /* reading a header (after the prompt or after <|start|>) */
    PS_CONTENT,      /* inside a message's content */
    PS_EXPECT_START, /* after <|end|>: only <|start|> (or the end of the turn) may follow */
    PS_DONE,         /* the turn ended, or finish was called */
};

struct pmsg {
    struct gpo_hparsed pub;
    struct gpo_str content;
    char *channel, *recipient, *content_type, *name;
};

struct gpo_hparser {
    const gpo_tokenizer *tok;
    int32_t n_tokens;
    enum pstate state;
    struct pmsg *msgs;
    size_t n, cap;
    struct gpo_str hdr;     /* current header, specials as marker bytes */
    struct gpo_ids seg_ids; /* text ids of the header's current segment */
    int hdr_has_role;       /* the header began with <|start|>, so it names a role */
    int hdr_markers;
    struct gpo_detok detok;
    struct gpo_str scratch; /* text appended during the current push */
    int done;
    int32_t end_token;
    int recovered;
};

enum gpo_status gpo_hparser_create(const gpo_tokenizer *t, gpo_hparser **out) {
    if (!out) return gpo_fail(GPO_ERR_ARG, "harmony parser: out is NULL");
    *out = NULL;
    if (!t) return gpo_fail(GPO_ERR_ARG, "harmony parser: tokenizer is NULL");
    gpo_hparser *p = calloc(1, sizeof *p);
    if (!p) return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
    p->tok = t;
    p->n_tokens = gpo_tokenizer_n_tokens(t);
    if (gpo_str_append(&p->scratch, "", 0) != GPO_OK ||
        gpo_str_append(&p->hdr, "", 0) != GPO_OK) {
        gpo_hparser_free(p);
        return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
    }
    gpo_hparser_reset(p);
    *out = p;
    return GPO_OK;
}

static void pmsg_free(struct pmsg *m) {
    gpo_str_free(&m->content);
    free(m->channel);
    free(m->recipient);
    free(m->content_type);
    free(m->name);
}

void gpo_hparser_reset(gpo_hparser *p) {
    for (size_t i = 0; i < p->n; i++) pmsg_free(&p->msgs[i]);
    p->n = 0;
    p->state = PS_HEADER;
    p->hdr.n = 0;
    p->hdr.s[0] = 0;
    p->seg_ids.n = 0;
    p->hdr_has_role = 0;
    p->hdr_markers = 0;
    memset(&p->detok, 0, sizeof p->detok);
    p->done = 0;
    p->end_token = -1;
    p->recovered = 0;
}

void gpo_hparser_free(gpo_hparser *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) pmsg_free(&p->msgs[i]);
    free(p->msgs);
    gpo_str_free(&p->hdr);
    gpo_ids_free(&p->seg_ids);
    gpo_str_free(&p->scratch);
    free(p);
}

size_t gpo_hparser_n_messages(const gpo_hparser *p) { return p->n; }
const struct gpo_hparsed *gpo_hparser_message(const gpo_hparser *p, size_t i) {
    return i < p->n ? &p->msgs[i].pub : NULL;
}
int gpo_hparser_done(const gpo_hparser *p) { return p->done; }
int32_t gpo_hparser_end_token(const gpo_hparser *p) { return p->end_token; }
int gpo_hparser_recovered(const gpo_hparser *p) { return p->recovered; }

static void header_reset(gpo_hparser *p, int has_role) {
    p->hdr.n = 0;
    p->hdr.s[0] = 0;
    p->seg_ids.n = 0;
    p->hdr_has_role = has_role;
    p->hdr_markers = 0;
}

static void sync_pub(struct pmsg *m) {
    m->pub.msg.content = m->content.s ? m->content.s : "";
    m->pub.content_len = m->content.n;
}

/* Open a new message; takes ownership of the strings. */
static enum gpo_status open_msg(gpo_hparser *p, enum gpo_role role, char *name, char *channel,
                                char *recipient, char *content_type, int recovered,
                                struct gpo_hevent *ev) {
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 8;
        struct pmsg *q = realloc(p->msgs, nc * sizeof *q);
        if (!q) {
            free(name);
            free(channel);
            free(recipient);
            free(content_type);
            return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
        }
        p->msgs = q;
        p->cap = nc;
    }
    struct pmsg *m = &p->msgs[p->n];
    memset(m, 0, sizeof *m);
    m->name = name;
    m->channel = channel;
    m->recipient = recipient;
    m->content_type = content_type;
    m->pub.msg.role = role;
    m->pub.msg.name = name;
    m->pub.msg.channel = channel;
    m->pub.msg.recipient = recipient;
    m->pub.msg.content_type = content_type;
    m->pub.channel = gpo_hchannel_of(channel);
    m->pub.end_token = -1;
    m->pub.recovered = recovered;
    if (gpo_str_append(&m->content, "", 0) != GPO_OK) {
        pmsg_free(m);
        return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
    }
    sync_pub(m);
    p->n++;
    memset(&p->detok, 0, sizeof p->detok);
    p->state = PS_CONTENT;
    ev->msg = (int)(p->n - 1);
    ev->channel = m->pub.channel;
    ev->msg_started = 1;
    return GPO_OK;
}

/* Append the bytes [n0, content.n) of the open message to the event text. */
static enum gpo_status note_text(gpo_hparser *p, struct pmsg *m, size_t n0,
                                 struct gpo_hevent *ev) {
    sync_pub(m);
    ev->msg = (int)(m - p->msgs);
    ev->channel = m->pub.channel;
    if (m->content.n > n0)
        return gpo_str_append(&p->scratch, m->content.s + n0, m->content.n - n0);
    return GPO_OK;
}

static enum gpo_status content_token(gpo_hparser *p, int32_t id, struct gpo_hevent *ev) {
    struct pmsg *m = &p->msgs[p->n - 1];
    size_t n0 = m->content.n;
    enum gpo_status st = gpo_detok_step(p->tok, &p->detok, id, &m->content);
    if (st != GPO_OK) return st;
    return note_text(p, m, n0, ev);
}

static enum gpo_status close_msg(gpo_hparser *p, int32_t end_token, struct gpo_hevent *ev) {
    struct pmsg *m = &p->msgs[p->n - 1];
    size_t n0 = m->content.n;
    enum gpo_status st = gpo_detok_flush(&p->detok, &m->content);
    if (st != GPO_OK) return st;
    m->pub.end_token = end_token;
    m->pub.complete = 1;
    ev->msg_done = 1;
    return note_text(p, m, n0, ev);
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Malformed output: open a "final" message flagged as recovered whose content
 * starts with the text of the header segment read so far. */
static enum gpo_status recover(gpo_hparser *p, struct gpo_hevent *ev) {
    p->recovered = 1;
    ev->recovered = 1;
    char *ch = strdup("final");
    if (!ch) return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
    GPO_TRY(open_msg(p, GPO_ROLE_ASSISTANT, NULL, ch, NULL, NULL, 1, ev));
    for (size_t i = 0; i < p->seg_ids.n; i++) GPO_TRY(content_token(p, p->seg_ids.ids[i], ev));
    header_reset(p, 0);
    return GPO_OK;
}

/* Split the header into its parts (spec 6.1): an optional role word, then
 * " to=R" and a content type anywhere, a channel word after <|channel|>, and
 * the constraint after <|constrain|>.  Returns 0 when it is not a valid header. */
static int parse_header(const gpo_hparser *p, enum gpo_role *role, char **name, char **channel,
                        char **recipient, char **ctype) {
    const char *h = p->hdr.s;
    size_t n = p->hdr.n, i = 0;
    int seg_kind = p->hdr_has_role ? 'r' : 'c'; /* role, continuation, channel, constrain */
    int first_word = 1;
    *role = GPO_ROLE_ASSISTANT;
    while (i <= n) {
        if (i == n || h[i] == MARK_CHANNEL || h[i] == MARK_CONSTRAIN) {
            if (seg_kind == 'r' && first_word) return 0; /* <|start|> without a role */
            if (seg_kind == 'h' && first_word) return 0; /* <|channel|> without a name */
            if (seg_kind == 'k' && first_word) {
                /* "<|constrain|>" with nothing after it */
                if (*ctype) return 0;
                if (!(*ctype = strdup(CONSTRAIN_TEXT))) return 0;
            }
            if (i == n) break;
            seg_kind = h[i] == MARK_CHANNEL ? 'h' : 'k';
            if (seg_kind == 'h' && *channel) return 0; /* two channels */
            first_word = 1;
            i++;
            continue;
        }
        if (h[i] == ' ') {
            i++;
            continue;
        }
        size_t w0 = i;
        while (i < n && h[i] != ' ' && h[i] != MARK_CHANNEL && h[i] != MARK_CONSTRAIN) i++;
        const char *w = h + w0;
        size_t wl = i - w0;
        if (first_word && seg_kind == 'r') {
            int r = gpo_role_parse(w, wl);
            if (r < 0 || r == GPO_ROLE_TOOL) {
                /* An unknown author is a tool's name, as in harmony. */
                *role = GPO_ROLE_TOOL;
                if (!(*name = dup_n(w, wl))) return 0;
            } else {
                *role = (enum gpo_role)r;
            }
        } else if (first_word && seg_kind == 'h') {
            if (!(*channel = dup_n(w, wl))) return 0;
        } else if (first_word && seg_kind == 'k') {
            if (*ctype) return 0;
            size_t cl = strlen(CONSTRAIN_TEXT);
            if (!(*ctype = malloc(cl + wl + 1))) return 0;
            memcpy(*ctype, CONSTRAIN_TEXT, cl);
            memcpy(*ctype + cl, w, wl);
            (*ctype)[cl + wl] = 0;
        } else if (wl >= 3 && !memcmp(w, "to=", 3)) {
            if (*recipient || wl == 3) return 0;
            if (!(*recipient = dup_n(w + 3, wl - 3))) return 0;
        } else {
            if (*ctype) return 0;
            if (!(*ctype = dup_n(w, wl))) return 0;
        }
        first_word = 0;
    }
    return 1;
}

static int is_end_token(int32_t id) {
    return id == GPO_TOK_END || id == GPO_TOK_RETURN || id == GPO_TOK_CALL ||
           id == GPO_TOK_ENDOFTEXT;
}

static enum gpo_status dispatch(gpo_hparser *p, int32_t id, int special, struct gpo_hevent *ev);

static enum gpo_status header_message(gpo_hparser *p, struct gpo_hevent *ev) {
    enum gpo_role role;
    char *name = NULL, *channel = NULL, *recipient = NULL, *ctype = NULL;
    /* A header split inside a character is no header (its names must be text). */
    if (!gpo_utf8_valid(p->hdr.s, p->hdr.n) ||
        !parse_header(p, &role, &name, &channel, &recipient, &ctype)) {
        free(name);
        free(channel);
        free(recipient);
        free(ctype);
        /* The content follows anyway; keep it as final text. */
        return recover(p, ev);
    }
    header_reset(p, 0);
    int recovered = 0;
    if (role == GPO_ROLE_ASSISTANT && !channel && !recipient) {
        /* The system message requires a channel; an assistant message without
         * one (and not a tool call) is shown as the answer rather than lost. */
        if (!(channel = strdup("final"))) {
            free(name);
            free(ctype);
            return gpo_fail(GPO_ERR_NOMEM, "harmony parser: out of memory");
        }
        recovered = 1;
        p->recovered = 1;
        ev->recovered = 1;
    }
    return open_msg(p, role, name, channel, recipient, ctype, recovered, ev);
}

static enum gpo_status header_token(gpo_hparser *p, int32_t id, int special,
                                    struct gpo_hevent *ev) {
    if (special) {
        if (id == GPO_TOK_MESSAGE) return header_message(p, ev);
        if (id == GPO_TOK_CHANNEL || id == GPO_TOK_CONSTRAIN) {
            GPO_TRY(gpo_str_append(&p->hdr, id == GPO_TOK_CHANNEL ? "\x01" : "\x02", 1));
            p->hdr_markers++;
            p->seg_ids.n = 0;
            return GPO_OK;
        }
        if (id == GPO_TOK_START && p->seg_ids.n == 0) {
            /* A fresh <|start|> abandons an empty header. */
            p->recovered = 1;
            ev->recovered = 1;
            header_reset(p, 1);
            return GPO_OK;
        }
        /* An end token, <|start|> or an unknown special inside a header: keep the
         * text read so far as final content, then let the token act there. */
        GPO_TRY(recover(p, ev));
        return dispatch(p, id, special, ev);
    }
    const char *b;
    size_t len;
    GPO_TRY(gpo_tokenizer_token_bytes(p->tok, id, &b, &len));
    int bad = p->hdr.n + len > MAX_HEADER;
    for (size_t i = 0; i < len && !bad; i++)
        if ((unsigned char)b[i] < 0x20 || (unsigned char)b[i] == 0x7f) bad = 1;
    /* After the prompt's "<|start|>assistant" the role is already given, so header
     * text there can only be " to=..." or " <content type>". */
    if (!p->hdr_has_role && p->hdr_markers == 0 && p->hdr.n == 0 && len > 0 && b[0] != ' ')
        bad = 1;
    if (bad) {
        GPO_TRY(recover(p, ev));
        return dispatch(p, id, special, ev);
    }
    GPO_TRY(gpo_str_append(&p->hdr, b, len));
    return gpo_ids_push(&p->seg_ids, id);
}

static enum gpo_status dispatch(gpo_hparser *p, int32_t id, int special, struct gpo_hevent *ev) {
    switch (p->state) {
    case PS_HEADER: return header_token(p, id, special, ev);
    case PS_CONTENT:
        if (!special) return content_token(p, id, ev);
        if (is_end_token(id)) {
            GPO_TRY(close_msg(p, id, ev));
            if (id == GPO_TOK_END) {
                p->state = PS_EXPECT_START;
            } else {
                p->state = PS_DONE;
                p->done = 1;
                p->end_token = id;
                ev->turn_done = 1;
            }
            return GPO_OK;
        }
        if (id == GPO_TOK_START) {
            /* A new message without <|end|>: close this one as cut off. */
            p->recovered = 1;
            ev->recovered = 1;
            p->msgs[p->n - 1].pub.recovered = 1;
            GPO_TRY(close_msg(p, -1, ev));
            p->state = PS_HEADER;
            header_reset(p, 1);
            return GPO_OK;
        }
        /* Other specials have no meaning inside content: drop them. */
        p->recovered = 1;
        ev->recovered = 1;
        p->msgs[p->n - 1].pub.recovered = 1;
        return GPO_OK;
    case PS_EXPECT_START:
        if (special && id == GPO_TOK_START) {
            p->state = PS_HEADER;
            header_reset(p, 1);
            return GPO_OK;
        }
        if (special && (id == GPO_TOK_RETURN || id == GPO_TOK_CALL || id == GPO_TOK_ENDOFTEXT)) {
            p->state = PS_DONE;
            p->done = 1;
            p->end_token = id;
            ev->turn_done = 1;
            return GPO_OK;
        }
        p->recovered = 1;
        ev->recovered = 1;
        if (special && id == GPO_TOK_CHANNEL) {
            /* "<|end|><|channel|>final...": the model skipped "<|start|>assistant". */
            p->state = PS_HEADER;
            header_reset(p, 0);
            return header_token(p, id, special, ev);
        }
        if (special && id == GPO_TOK_END) return GPO_OK;
        /* Text (or a stray special) where <|start|> belongs: the rest is final text. */
        header_reset(p, 0);
        GPO_TRY(recover(p, ev));
        return dispatch(p, id, special, ev);
    case PS_DONE: return GPO_OK;
    }
    return gpo_fail(GPO_ERR_INTERNAL, "harmony parser: bad state %d", (int)p->state);
}

static void event_init(gpo_hparser *p, struct gpo_hevent *ev) {
    memset(ev, 0, sizeof *ev);
    ev->msg = -1;
    p->scratch.n = 0;
    p->scratch.s[0] = 0;
}

static void event_done(gpo_hparser *p, struct gpo_hevent *ev) {
    ev->text = p->scratch.s;
    ev->text_len = p->scratch.n;
}

enum gpo_status gpo_hparser_push(gpo_hparser *p, int32_t id, struct gpo_hevent *ev_out) {
    struct gpo_hevent local;
    struct gpo_hevent *ev = ev_out ? ev_out : &local;
    event_init(p, ev);
    if (id < 0) {
        event_done(p, ev);
        return gpo_fail(GPO_ERR_TOKEN, "harmony parser: negative token id %d", id);
    }
    /* Ids the tokenizer does not know (reserved slots of the 201088-row vocabulary)
     * behave as unknown specials. */
    int special = id >= p->n_tokens || gpo_tokenizer_is_special(p->tok, id);
    enum gpo_status st = dispatch(p, id, special, ev);
    event_done(p, ev);
    return st;
}

enum gpo_status gpo_hparser_finish(gpo_hparser *p, struct gpo_hevent *ev_out) {
    struct gpo_hevent local;
    struct gpo_hevent *ev = ev_out ? ev_out : &local;
    event_init(p, ev);
    enum gpo_status st = GPO_OK;
    if (p->state == PS_CONTENT) {
        st = close_msg(p, -1, ev);
    } else if (p->state == PS_HEADER && p->hdr_markers == 0 && p->seg_ids.n > 0) {
        /* Plain text with no header at all: show it as the answer. */
        st = recover(p, ev);
        if (st == GPO_OK) st = close_msg(p, -1, ev);
    }
    p->state = PS_DONE;
    event_done(p, ev);
    return st;
}

enum gpo_status gpo_hparser_to_conv(const gpo_hparser *p, struct gpo_conv *c, int keep_analysis) {
    for (size_t i = 0; i < p->n; i++) {
        if (!p->msgs[i].pub.complete) continue;
        if (!keep_analysis && p->msgs[i].pub.channel == GPO_CH_ANALYSIS) continue;
        GPO_TRY(gpo_conv_add(c, &p->msgs[i].pub.msg));
    }
    return GPO_OK;
}
