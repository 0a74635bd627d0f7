/* openai.c - OpenAI request/response bodies (see openai.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "openai.h"

int oai_err(struct oai_error *err, int http, const char *type, const char *param,
            const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->http = http;
    err->type = type;
    err->param = param;
    err->code = code;
    return -1;
}

#define BAD(param, ...) oai_err(err, 400, "invalid_request_error", param, NULL, __VA_ARGS__)

static void calls_free(struct oai_call *calls, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(calls[i].id);
        free(calls[i].name);
        free(calls[i].arguments);
    }
    free(calls);
}

void oai_chat_free(struct oai_chat *c) {
    for (size_t i = 0; i < c->n_turns; i++) free((char *)c->turns[i].content);
    free(c->turns);
    for (size_t i = 0; c->extra && i < c->n_extra; i++) {
        calls_free(c->extra[i].calls, c->extra[i].n_calls);
        free(c->extra[i].tool_name);
    }
    free(c->extra);
    free(c->tools);
    free(c->model);
    for (size_t i = 0; i < c->n_stops; i++) free(c->stops[i]);
    memset(c, 0, sizeof *c);
}

/* A number field in [lo, hi]; absent or null leaves *out alone.  1 ok, -1 error. */
static int get_num(const cJSON *o, const char *name, double lo, double hi, double *out,
                   struct oai_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return BAD(name, "'%s' must be a number", name);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return BAD(name, "'%s' must be between %g and %g, not %g", name, lo, hi, v->valuedouble);
    *out = v->valuedouble;
    return 1;
}

static int get_int(const cJSON *o, const char *name, double lo, double hi, int64_t *out,
                   int *given, struct oai_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return BAD(name, "'%s' must be an integer", name);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return BAD(name, "'%s' must be between %.0f and %.0f, not %.0f", name, lo, hi,
                   v->valuedouble);
    *out = (int64_t)v->valuedouble;
    if (given) *given = 1;
    return 1;
}

static int get_bool(const cJSON *o, const char *name, int *out, struct oai_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsBool(v)) return BAD(name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 1;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...}
 * parts (joined), or null (allowed = 1 for assistant messages).  Returns a
 * malloc'd string or NULL with *err set. */
static char *message_content(const cJSON *c, size_t idx, int null_ok, char *param,
                             struct oai_error *err) {
    if (!c || cJSON_IsNull(c)) {
        if (null_ok) return strdup("");
        BAD(param, "messages[%zu].content is required", idx);
        return NULL;
    }
    if (cJSON_IsString(c)) return strdup(c->valuestring);
    if (!cJSON_IsArray(c)) {
        BAD(param, "messages[%zu].content must be a string or an array of text parts", idx);
        return NULL;
    }
    size_t n = 0, k = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
            !cJSON_IsString(text)) {
            BAD(param, "messages[%zu].content[%zu] must be {\"type\": \"text\", \"text\": "
                "string} (only text parts are supported)", idx, k);
            return NULL;
        }
        n += strlen(text->valuestring);
        k++;
    }
    char *s = malloc(n + 1);
    if (!s) return NULL;
    n = 0;
    cJSON_ArrayForEach(p, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + n, t, l);
        n += l;
    }
    s[n] = 0;
    return s;
}

static char *dup_or_fail(const char *v, struct oai_error *err) {
    char *d = strdup(v);
    if (!d) oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    return d;
}

/* A function name as harmony can render it after "functions.". */
static int name_ok(const char *s) {
    if (!*s || strlen(s) > 64) return 0;
    for (; *s; s++)
        if (!(*s == '_' || *s == '-' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9')))
            return 0;
    return 1;
}

/* An assistant message's tool_calls: [{"id", "type": "function", "function":
 * {"name", "arguments": string}}]. */
static int parse_calls(const cJSON *tc, size_t idx, struct oai_turn_extra *x,
                       struct oai_error *err) {
    if (!cJSON_IsArray(tc)) return BAD("messages", "messages[%zu].tool_calls must be an array", idx);
    size_t n = (size_t)cJSON_GetArraySize(tc);
    if (!n) return 0;
    if (!(x->calls = calloc(n, sizeof *x->calls)))
        return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *c;
    cJSON_ArrayForEach(c, tc) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(f, "arguments");
        if (!cJSON_IsObject(c) || !cJSON_IsString(id) || !cJSON_IsObject(f) ||
            !cJSON_IsString(name) || !name_ok(name->valuestring) || !cJSON_IsString(args))
            return BAD("messages", "messages[%zu].tool_calls[%zu] must be {\"id\": string, "
                       "\"type\": \"function\", \"function\": {\"name\": a function name, "
                       "\"arguments\": string}}", idx, x->n_calls);
        struct oai_call *k = &x->calls[x->n_calls++];
        if (!(k->id = dup_or_fail(id->valuestring, err)) ||
            !(k->name = dup_or_fail(name->valuestring, err)) ||
            !(k->arguments = dup_or_fail(args->valuestring, err)))
            return -1;
    }
    return 0;
}

/* The function a tool message answers: its "name", else the call its
 * tool_call_id names in an earlier assistant message. */
static int tool_name(const cJSON *m, struct oai_chat *out, size_t idx, struct oai_error *err) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
    if (cJSON_IsString(name) && name_ok(name->valuestring))
        return (out->extra[idx].tool_name = dup_or_fail(name->valuestring, err)) ? 0 : -1;
    if (!cJSON_IsString(id))
        return BAD("messages", "messages[%zu] (tool) needs a tool_call_id string", idx);
    for (size_t i = idx; i-- > 0;)
        for (size_t k = 0; k < out->extra[i].n_calls; k++)
            if (!strcmp(out->extra[i].calls[k].id, id->valuestring))
                return (out->extra[idx].tool_name =
                            dup_or_fail(out->extra[i].calls[k].name, err)) ? 0 : -1;
    return BAD("messages", "messages[%zu].tool_call_id '%.64s' names no earlier tool call", idx,
               id->valuestring);
}

static int parse_messages(const cJSON *msgs, struct oai_chat *out, struct oai_error *err) {
    if (!msgs) return BAD("messages", "'messages' is required");
    if (!cJSON_IsArray(msgs)) return BAD("messages", "'messages' must be an array");
    size_t n = (size_t)cJSON_GetArraySize(msgs);
    if (n == 0) return BAD("messages", "'messages' must hold at least one message");
    out->turns = calloc(n, sizeof *out->turns);
    out->extra = calloc(n, sizeof *out->extra);
    if (!out->turns || !out->extra)
        return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    out->n_extra = n;
    const cJSON *m;
    size_t i = 0;
    cJSON_ArrayForEach(m, msgs) {
        if (!cJSON_IsObject(m)) return BAD("messages", "messages[%zu] must be an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role)) return BAD("messages", "messages[%zu].role must be a string", i);
        const char *r = role->valuestring;
        enum gpo_role gr;
        if (!strcmp(r, "system")) gr = GPO_ROLE_SYSTEM;
        else if (!strcmp(r, "developer")) gr = GPO_ROLE_DEVELOPER;
        else if (!strcmp(r, "user")) gr = GPO_ROLE_USER;
        else if (!strcmp(r, "assistant")) gr = GPO_ROLE_ASSISTANT;
        else if (!strcmp(r, "tool")) gr = GPO_ROLE_TOOL;
        else
            return BAD("messages", "messages[%zu].role must be system, developer, user, "
                       "assistant or tool, not '%s'", i, r);
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (tc && !cJSON_IsNull(tc) && gr != GPO_ROLE_ASSISTANT)
            return BAD("messages", "messages[%zu]: only assistant messages have tool_calls", i);
        if (tc && !cJSON_IsNull(tc) && parse_calls(tc, i, &out->extra[i], err)) return -1;
        if (gr == GPO_ROLE_TOOL && tool_name(m, out, i, err)) return -1;
        char *content = message_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i,
                                        gr == GPO_ROLE_ASSISTANT, "messages", err);
        if (!content) return -1;
        out->turns[i].role = gr;
        out->turns[i].content = content;
        out->n_turns = ++i;
        if (!gpo_utf8_valid(content, strlen(content)))
            return BAD("messages", "messages[%zu].content is not valid UTF-8", i - 1);
    }
    return 0;
}

static int parse_stop(const cJSON *v, struct oai_chat *out, struct oai_error *err) {
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        if (!(out->stops[0] = strdup(v->valuestring)))
            return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
        out->n_stops = 1;
        return 0;
    }
    if (!cJSON_IsArray(v)) return BAD("stop", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(v) > OAI_MAX_STOPS)
        return BAD("stop", "'stop' holds at most %d strings", OAI_MAX_STOPS);
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s)) return BAD("stop", "'stop' must be a string or an array of strings");
        if (!(out->stops[out->n_stops] = strdup(s->valuestring)))
            return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
        out->n_stops++;
    }
    return 0;
}

/* Append to a growing string; -1 when out of memory. */
static int put(struct gpo_str *b, const char *s) {
    return gpo_str_append(b, s, strlen(s)) == GPO_OK ? 0 : -1;
}

/* A JSON schema as the TypeScript-like type harmony shows the model. */
static int ts_type(const cJSON *schema, struct gpo_str *b, int depth) {
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    const char *t = cJSON_IsString(type) ? type->valuestring : "";
    if (cJSON_IsArray(en) && cJSON_GetArraySize(en) > 0) {
        const cJSON *v;
        int first = 1;
        cJSON_ArrayForEach(v, en) {
            char *js = cJSON_PrintUnformatted(v);
            if (!js) return -1;
            int rc = (!first && put(b, " | ")) || put(b, js);
            free(js);
            if (rc) return -1;
            first = 0;
        }
        return 0;
    }
    if (!strcmp(t, "string")) return put(b, "string");
    if (!strcmp(t, "number") || !strcmp(t, "integer")) return put(b, "number");
    if (!strcmp(t, "boolean")) return put(b, "boolean");
    if (!strcmp(t, "null")) return put(b, "null");
    if (!strcmp(t, "array")) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
        if (!cJSON_IsObject(items) || depth > 8) return put(b, "any[]");
        if (ts_type(items, b, depth + 1)) return -1;
        return put(b, "[]");
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    if ((!strcmp(t, "object") || cJSON_IsObject(props)) && cJSON_IsObject(props) && depth <= 8) {
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
        if (put(b, "{\n")) return -1;
        const cJSON *p;
        cJSON_ArrayForEach(p, props) {
            const cJSON *desc = cJSON_GetObjectItemCaseSensitive(p, "description");
            const cJSON *def = cJSON_GetObjectItemCaseSensitive(p, "default");
            int required = 0;
            const cJSON *r;
            cJSON_ArrayForEach(r, req) {
                if (cJSON_IsString(r) && !strcmp(r->valuestring, p->string)) required = 1;
            }
            if (cJSON_IsString(desc) && (put(b, "// ") || put(b, desc->valuestring) || put(b, "\n")))
                return -1;
            if (put(b, p->string) || put(b, required ? ": " : "?: ") || ts_type(p, b, depth + 1))
                return -1;
            if (put(b, ",")) return -1;
            if (def) {
                char *js = cJSON_PrintUnformatted(def);
                int rc = !js || put(b, " // default: ") || put(b, js);
                free(js);
                if (rc) return -1;
            }
            if (put(b, "\n")) return -1;
        }
        return put(b, "}");
    }
    return put(b, !strcmp(t, "object") ? "object" : "any");
}

/* `tools` as harmony's developer-message section (spec 6.3). */
static int render_tools(const cJSON *tools, struct oai_chat *out, struct oai_error *err) {
    if (!cJSON_IsArray(tools)) return BAD("tools", "'tools' must be an array");
    if (!cJSON_GetArraySize(tools)) return 0;
    struct gpo_str b = {0};
    int oom = put(&b, "# Tools\n\n## functions\n\nnamespace functions {\n\n");
    const cJSON *t;
    size_t i = 0;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(f, "description");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(f, "parameters");
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
            !cJSON_IsObject(f) || !cJSON_IsString(name) || !name_ok(name->valuestring) ||
            (desc && !cJSON_IsString(desc)) || (params && !cJSON_IsObject(params))) {
            gpo_str_free(&b);
            return BAD("tools", "tools[%zu] must be {\"type\": \"function\", \"function\": "
                       "{\"name\": letters, digits, _ or -, \"description\": string, "
                       "\"parameters\": JSON schema object}}", i);
        }
        if (desc) oom |= put(&b, "// ") || put(&b, desc->valuestring) || put(&b, "\n");
        oom |= put(&b, "type ") || put(&b, name->valuestring);
        const cJSON *props = params ? cJSON_GetObjectItemCaseSensitive(params, "properties") : NULL;
        if (cJSON_IsObject(props) && cJSON_GetArraySize(props) > 0)
            oom |= put(&b, " = (_: ") || ts_type(params, &b, 0) || put(&b, ") => any;\n\n");
        else
            oom |= put(&b, " = () => any;\n\n");
        i++;
    }
    oom |= put(&b, "} // namespace functions");
    if (oom) {
        gpo_str_free(&b);
        return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    out->tools = b.s;
    return 0;
}

static int parse_chat_obj(const cJSON *root, struct oai_chat *out, struct oai_error *err) {
    if (!cJSON_IsObject(root)) return BAD(NULL, "the request body must be a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) return BAD("model", "'model' must be a string");
        if (!(out->model = strdup(model->valuestring)))
            return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (parse_messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), out, err)) return -1;
    double d;
    d = out->sp.temperature;
    if (get_num(root, "temperature", 0, 2, &d, err) < 0) return -1;
    out->sp.temperature = (float)d;
    d = out->sp.top_p;
    if (get_num(root, "top_p", 0, 1, &d, err) < 0) return -1;
    out->sp.top_p = (float)d;
    if (d <= 0) return BAD("top_p", "'top_p' must be above 0");
    d = out->sp.presence_penalty;
    if (get_num(root, "presence_penalty", -2, 2, &d, err) < 0) return -1;
    out->sp.presence_penalty = (float)d;
    d = out->sp.frequency_penalty;
    if (get_num(root, "frequency_penalty", -2, 2, &d, err) < 0) return -1;
    out->sp.frequency_penalty = (float)d;
    int64_t n = 0;
    /* Seeds are kept below 2^53 so a JSON number holds them exactly. */
    if (get_int(root, "seed", -9007199254740991.0, 9007199254740991.0, &n, &out->seed_given,
                err) < 0)
        return -1;
    if (out->seed_given) out->sp.seed = (uint64_t)n;
    int given = 0;
    if (get_int(root, "max_tokens", 1, (double)(1 << 30), &out->max_tokens, &given, err) < 0)
        return -1;
    if (get_int(root, "max_completion_tokens", 1, (double)(1 << 30), &out->max_tokens, &given,
                err) < 0)
        return -1;
    n = 1;
    if (get_int(root, "n", 1, 128, &n, NULL, err) < 0) return -1;
    if (n != 1) return BAD("n", "only 'n' = 1 is supported");
    if (parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"), out, err)) return -1;
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(root, "reasoning_effort");
    if (re && !cJSON_IsNull(re)) {
        int r = cJSON_IsString(re) ? gpo_reasoning_parse(re->valuestring) : -1;
        if (r < 0) return BAD("reasoning_effort", "'reasoning_effort' must be low, medium or high");
        out->reasoning = (enum gpo_reasoning)r;
    }
    if (get_bool(root, "stream", &out->stream, err) < 0) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return BAD("stream_options", "'stream_options' must be an object");
        if (get_bool(so, "include_usage", &out->include_usage, err) < 0) return -1;
    }
    int lp = 0;
    if (get_bool(root, "logprobs", &lp, err) < 0) return -1;
    if (lp) return BAD("logprobs", "'logprobs' is not supported yet");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (choice && !cJSON_IsNull(choice)) {
        const char *v = cJSON_IsString(choice) ? choice->valuestring : NULL;
        if (v && !strcmp(v, "none")) out->tool_choice = OAI_TOOLS_NONE;
        else if (v && !strcmp(v, "auto")) out->tool_choice = OAI_TOOLS_AUTO;
        else if ((v && !strcmp(v, "required")) || cJSON_IsObject(choice))
            out->tool_choice = OAI_TOOLS_REQUIRED;
        else
            return BAD("tool_choice", "'tool_choice' must be none, auto, required or "
                       "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (tools && !cJSON_IsNull(tools) && render_tools(tools, out, err)) return -1;
    return 0;
}

int oai_parse_chat(const char *body, size_t len, const struct gpo_sampler_params *sp,
                   enum gpo_reasoning reasoning, struct oai_chat *out, struct oai_error *err) {
    memset(out, 0, sizeof *out);
    out->sp = *sp;
    out->reasoning = reasoning;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return BAD(NULL, "the request body is not valid JSON (near byte %zu)", at);
    }
    int rc = parse_chat_obj(root, out, err);
    cJSON_Delete(root);
    if (rc) oai_chat_free(out);
    return rc;
}

enum gpo_status oai_build_conv(const struct oai_chat *c, const char *developer, const char *date,
                               struct gpo_conv *out) {
    int special = c->tools != NULL;
    for (size_t i = 0; i < c->n_turns; i++)
        if (c->turns[i].role == GPO_ROLE_TOOL || c->extra[i].n_calls) special = 1;
    if (!special) return gpo_conv_build(out, developer, c->reasoning, date, c->turns, c->n_turns);
    /* gpo_conv_build's system and developer messages, then every turn by hand. */
    enum gpo_status st;
    struct gpo_str instr = {0};
    struct gpo_hmsg sys = {.role = GPO_ROLE_SYSTEM};
    sys.sys.reasoning = c->reasoning;
    sys.sys.current_date = date;
    if ((st = gpo_conv_add(out, &sys)) != GPO_OK) goto fail;
    if (developer && *developer && put(&instr, developer)) goto oom;
    for (size_t i = 0; i < c->n_turns; i++) {
        const struct gpo_chat_turn *t = &c->turns[i];
        if ((t->role != GPO_ROLE_SYSTEM && t->role != GPO_ROLE_DEVELOPER) || !*t->content) continue;
        if ((instr.n && put(&instr, "\n\n")) || put(&instr, t->content)) goto oom;
    }
    const char *tools = c->tool_choice == OAI_TOOLS_NONE ? NULL : c->tools;
    if (instr.n || tools) {
        struct gpo_hmsg dev = {.role = GPO_ROLE_DEVELOPER, .content = instr.n ? instr.s : NULL,
                               .tools = tools};
        if ((st = gpo_conv_add(out, &dev)) != GPO_OK) goto fail;
    }
    for (size_t i = 0; i < c->n_turns; i++) {
        const struct gpo_chat_turn *t = &c->turns[i];
        const struct oai_turn_extra *x = &c->extra[i];
        char who[80];
        switch (t->role) {
        case GPO_ROLE_USER:
            st = gpo_conv_add_text(out, t->role, t->content);
            break;
        case GPO_ROLE_ASSISTANT:
            st = GPO_OK;
            if (*t->content || !x->n_calls) st = gpo_conv_add_text(out, t->role, t->content);
            for (size_t k = 0; st == GPO_OK && k < x->n_calls; k++) {
                snprintf(who, sizeof who, "functions.%s", x->calls[k].name);
                struct gpo_hmsg m = {.role = GPO_ROLE_ASSISTANT, .content = x->calls[k].arguments,
                                     .channel = "commentary", .recipient = who,
                                     .content_type = "<|constrain|>json"};
                st = gpo_conv_add(out, &m);
            }
            break;
        case GPO_ROLE_TOOL: {
            snprintf(who, sizeof who, "functions.%s", x->tool_name);
            struct gpo_hmsg m = {.role = GPO_ROLE_TOOL, .content = t->content, .name = who,
                                 .recipient = "assistant", .channel = "commentary"};
            st = gpo_conv_add(out, &m);
            break;
        }
        default:
            st = GPO_OK;
        }
        if (st != GPO_OK) goto fail;
    }
    gpo_str_free(&instr);
    return GPO_OK;
oom:
    st = GPO_ERR_NOMEM;
fail:
    gpo_str_free(&instr);
    gpo_conv_truncate(out, 0);
    return st;
}

int oai_is_call(const struct gpo_hparsed *m, const char **name) {
    const char *r = m->msg.recipient;
    if (!m->complete || !r || strncmp(r, "functions.", 10) || !r[10]) return 0;
    *name = r + 10;
    return 1;
}

char *oai_error_json(const struct oai_error *err) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    if (!e) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : "invalid_request_error");
    if (err->param) cJSON_AddStringToObject(e, "param", err->param);
    else cJSON_AddNullToObject(e, "param");
    if (err->code) cJSON_AddStringToObject(e, "code", err->code);
    else cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

const char *oai_finish_reason(enum gpo_finish f) {
    return f == GPO_FINISH_LENGTH || f == GPO_FINISH_CONTEXT ? "length" : "stop";
}

/* cJSON strings need a NUL: a copy of s[0..n). */
static cJSON *add_str_n(cJSON *o, const char *name, const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (!c) return NULL;
    if (n) memcpy(c, s, n);
    c[n] = 0;
    cJSON *r = cJSON_AddStringToObject(o, name, c);
    free(c);
    return r;
}

static void add_usage(cJSON *root, const struct oai_result *r) {
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)r->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(r->prompt_tokens + r->completion_tokens));
}

static cJSON *head(const struct oai_result *r, const char *object) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", r->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", r->model);
    cJSON_AddStringToObject(root, "system_fingerprint", "gptoss");
    return root;
}

static void add_calls(cJSON *o, const struct oai_result *r, int indexed) {
    cJSON *a = cJSON_AddArrayToObject(o, "tool_calls");
    for (size_t i = 0; i < r->n_calls; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(a, c);
        if (indexed) cJSON_AddNumberToObject(c, "index", (double)i);
        cJSON_AddStringToObject(c, "id", r->calls[i].id);
        cJSON_AddStringToObject(c, "type", "function");
        cJSON *f = cJSON_AddObjectToObject(c, "function");
        cJSON_AddStringToObject(f, "name", r->calls[i].name);
        cJSON_AddStringToObject(f, "arguments", r->calls[i].arguments);
    }
}

char *oai_chat_response_json(const struct oai_result *r) {
    cJSON *root = head(r, "chat.completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *m = cJSON_AddObjectToObject(c, "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    if (r->n_calls && !r->content_len) cJSON_AddNullToObject(m, "content");
    else add_str_n(m, "content", r->content ? r->content : "", r->content ? r->content_len : 0);
    if (r->reasoning && r->reasoning_len) add_str_n(m, "reasoning_content", r->reasoning, r->reasoning_len);
    if (r->n_calls) add_calls(m, r, 0);
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", r->finish);
    add_usage(root, r);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *oai_chat_chunk_sse(const struct oai_result *r, int role, const char *content,
                         size_t content_len, const char *reasoning, size_t reasoning_len,
                         int calls, const char *finish, int usage) {
    cJSON *root = head(r, "chat.completion.chunk");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    if (usage) {
        add_usage(root, r);
    } else {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, c);
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (content) add_str_n(d, "content", content, content_len);
        if (reasoning) add_str_n(d, "reasoning_content", reasoning, reasoning_len);
        if (calls && r->n_calls) add_calls(d, r, 1);
        cJSON_AddNullToObject(c, "logprobs");
        if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
        else cJSON_AddNullToObject(c, "finish_reason");
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) return NULL;
    size_t n = strlen(js);
    char *s = malloc(n + 9);
    if (s) {
        memcpy(s, "data: ", 6);
        memcpy(s + 6, js, n);
        memcpy(s + 6 + n, "\n\n", 3);
    }
    free(js);
    return s;
}

size_t oai_utf8_whole(const char *s, size_t n) {
    /* Look back at most 3 bytes for the lead byte of the last character. */
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return back ? 0 : n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return back + 1 >= need ? n : i - 1;
}

int oai_key_equal(const char *given, size_t given_len, const char *key, size_t key_len) {
    /* Every byte of the key is compared whatever the input, so the time says
     * nothing about how much of a guess was right. */
    volatile unsigned char diff = (unsigned char)(given_len != key_len);
    for (size_t i = 0; i < key_len; i++) {
        unsigned char g = given_len ? (unsigned char)given[i % given_len] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)key[i]);
    }
    return diff == 0;
}
