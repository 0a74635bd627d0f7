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
    free(c->tool_name);
    for (size_t i = 0; i < c->n_tool_names; i++) free(c->tool_names[i]);
    free(c->tool_names);
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

static int parse_stop(const cJSON *v, char **stops, size_t *n_stops, struct oai_error *err) {
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        if (!(stops[0] = strdup(v->valuestring)))
            return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
        *n_stops = 1;
        return 0;
    }
    if (!cJSON_IsArray(v)) return BAD("stop", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(v) > OAI_MAX_STOPS)
        return BAD("stop", "'stop' holds at most %d strings", OAI_MAX_STOPS);
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s)) return BAD("stop", "'stop' must be a string or an array of strings");
        if (!(stops[*n_stops] = strdup(s->valuestring)))
            return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
        (*n_stops)++;
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
    if (!(out->tool_names = calloc((size_t)cJSON_GetArraySize(tools), sizeof *out->tool_names)))
        oom = 1;
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
        if (!oom && !(out->tool_names[out->n_tool_names++] = strdup(name->valuestring))) oom = 1;
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

/* temperature, top_p, presence/frequency_penalty and seed over the defaults in *sp. */
static int parse_sampling(const cJSON *root, struct gpo_sampler_params *sp, int *seed_given,
                          struct oai_error *err) {
    double d = sp->temperature;
    if (get_num(root, "temperature", 0, 2, &d, err) < 0) return -1;
    sp->temperature = (float)d;
    d = sp->top_p;
    if (get_num(root, "top_p", 0, 1, &d, err) < 0) return -1;
    sp->top_p = (float)d;
    if (d <= 0) return BAD("top_p", "'top_p' must be above 0");
    d = sp->presence_penalty;
    if (get_num(root, "presence_penalty", -2, 2, &d, err) < 0) return -1;
    sp->presence_penalty = (float)d;
    d = sp->frequency_penalty;
    if (get_num(root, "frequency_penalty", -2, 2, &d, err) < 0) return -1;
    sp->frequency_penalty = (float)d;
    int64_t n = 0;
    /* Seeds are kept below 2^53 so a JSON number holds them exactly. */
    if (get_int(root, "seed", -9007199254740991.0, 9007199254740991.0, &n, seed_given, err) < 0)
        return -1;
    if (*seed_given) sp->seed = (uint64_t)n;
    return 0;
}

static int parse_n(const cJSON *root, struct oai_error *err) {
    int64_t n = 1;
    if (get_int(root, "n", 1, 128, &n, NULL, err) < 0) return -1;
    return n != 1 ? BAD("n", "only 'n' = 1 is supported") : 0;
}

static int parse_stream(const cJSON *root, int *stream, int *include_usage,
                        struct oai_error *err) {
    if (get_bool(root, "stream", stream, err) < 0) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (!so || cJSON_IsNull(so)) return 0;
    if (!cJSON_IsObject(so)) return BAD("stream_options", "'stream_options' must be an object");
    return get_bool(so, "include_usage", include_usage, err) < 0 ? -1 : 0;
}

int oai_tool_known(char *const *names, size_t n, const char *name) {
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(names[i], name)) return 1;
    return 0;
}

/* "none", "auto", "required" or {"type": "function", "function": {"name": N}}
 * with N among `tools` (parsed before). */
static int parse_tool_choice(const cJSON *choice, struct oai_chat *out, struct oai_error *err) {
    if (!choice || cJSON_IsNull(choice)) return 0;
    const char *v = cJSON_IsString(choice) ? choice->valuestring : NULL;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(choice, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
    if (v && !strcmp(v, "none")) out->tool_choice = OAI_TOOLS_NONE;
    else if (v && !strcmp(v, "auto")) out->tool_choice = OAI_TOOLS_AUTO;
    else if (v && !strcmp(v, "required")) out->tool_choice = OAI_TOOLS_REQUIRED;
    else if (cJSON_IsObject(choice) && cJSON_IsObject(f) && cJSON_IsString(name))
        out->tool_choice = OAI_TOOLS_NAMED;
    else
        return BAD("tool_choice", "'tool_choice' must be none, auto, required or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    if ((out->tool_choice == OAI_TOOLS_REQUIRED || out->tool_choice == OAI_TOOLS_NAMED) &&
        !out->n_tool_names)
        return BAD("tool_choice", "'tool_choice' %s needs at least one function in 'tools'",
                   out->tool_choice == OAI_TOOLS_NAMED ? "naming a function" : "required");
    if (out->tool_choice != OAI_TOOLS_NAMED) return 0;
    if (!oai_tool_known(out->tool_names, out->n_tool_names, name->valuestring))
        return BAD("tool_choice", "'tool_choice' names the function '%.64s', which is not "
                   "among 'tools'", name->valuestring);
    return (out->tool_name = dup_or_fail(name->valuestring, err)) ? 0 : -1;
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
    if (parse_sampling(root, &out->sp, &out->seed_given, err)) return -1;
    int given = 0;
    if (get_int(root, "max_tokens", 1, (double)(1 << 30), &out->max_tokens, &given, err) < 0)
        return -1;
    if (get_int(root, "max_completion_tokens", 1, (double)(1 << 30), &out->max_tokens, &given,
                err) < 0)
        return -1;
    if (parse_n(root, err) || parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"),
                                         out->stops, &out->n_stops, err))
        return -1;
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(root, "reasoning_effort");
    if (re && !cJSON_IsNull(re)) {
        int r = cJSON_IsString(re) ? gpo_reasoning_parse(re->valuestring) : -1;
        if (r < 0) return BAD("reasoning_effort", "'reasoning_effort' must be low, medium or high");
        out->reasoning = (enum gpo_reasoning)r;
    }
    if (parse_stream(root, &out->stream, &out->include_usage, err)) return -1;
    if (get_bool(root, "logprobs", &out->logprobs, err) < 0) return -1;
    int64_t top = 0;
    int top_given = 0;
    if (get_int(root, "top_logprobs", 0, OAI_MAX_TOP_LOGPROBS, &top, &top_given, err) < 0)
        return -1;
    if (top_given && !out->logprobs)
        return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    out->top_logprobs = (int)top;
    out->sp.n_logprobs = (int32_t)top;
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (tools && !cJSON_IsNull(tools) && render_tools(tools, out, err)) return -1;
    return parse_tool_choice(cJSON_GetObjectItemCaseSensitive(root, "tool_choice"), out, err);
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

enum gpo_status oai_call_header(const gpo_tokenizer *t, const char *name, struct gpo_ids *out) {
    /* The recipient after the channel, as the models write their calls.  An
     * assistant turn may start on commentary (spec 6): the analysis message the
     * model would have written first is simply skipped, not made up. */
    char text[96];
    snprintf(text, sizeof text, "commentary to=functions.%s%s", name ? name : "", name ? " " : "");
    enum gpo_status s = gpo_ids_push(out, GPO_TOK_CHANNEL);
    if (s == GPO_OK) s = gpo_tokenizer_encode(t, text, strlen(text), 0, out);
    if (s != GPO_OK || !name) return s;
    if ((s = gpo_ids_push(out, GPO_TOK_CONSTRAIN)) == GPO_OK &&
        (s = gpo_tokenizer_encode(t, "json", 4, 0, out)) == GPO_OK)
        s = gpo_ids_push(out, GPO_TOK_MESSAGE);
    return s;
}

static int idx_push(struct oai_content_tokens *t, size_t i) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        size_t *a = realloc(t->idx, cap * sizeof *a);
        if (!a) return -1;
        t->idx = a;
        t->cap = cap;
    }
    t->idx[t->n++] = i;
    return 0;
}

int oai_content_track(struct oai_content_tokens *t, size_t index, int32_t id, int special,
                      const struct gpo_hevent *ev) {
    if (id >= 0 && ev->msg < 0) { /* a header token: wait and see */
        if (!t->n_pend) t->pend_from = index;
        t->n_pend = index - t->pend_from + 1;
        return 0;
    }
    if (ev->channel != GPO_CH_FINAL || (ev->msg_started && !ev->text_len)) {
        t->n_pend = 0; /* the header was one: its tokens are no content */
        return 0;
    }
    /* Final-channel text: header tokens still waiting were recovered into it. */
    for (size_t k = 0; k < t->n_pend; k++)
        if (idx_push(t, t->pend_from + k)) return -1;
    t->n_pend = 0;
    /* A token that both completes a header and brings text (recovery) counts. */
    if (id >= 0 && !special && (!ev->msg_started || ev->text_len)) return idx_push(t, index);
    return 0;
}

void oai_content_free(struct oai_content_tokens *t) {
    free(t->idx);
    memset(t, 0, sizeof *t);
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

/* A token's bytes as a JSON string: bytes that are not whole UTF-8 characters
 * (a character split over tokens) become U+FFFD, as OpenAI shows them. */
static cJSON *token_string(const char *b, size_t n) {
    struct gpo_str s = {0};
    int oom = gpo_str_append(&s, "", 0) != GPO_OK;
    for (size_t i = 0; i < n && !oom;) {
        unsigned char c = (unsigned char)b[i];
        size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        if (len && i + len <= n && gpo_utf8_valid(b + i, len)) {
            oom = gpo_str_append(&s, b + i, len) != GPO_OK;
            i += len;
        } else {
            oom = gpo_str_append(&s, "\xEF\xBF\xBD", 3) != GPO_OK;
            i++;
        }
    }
    cJSON *j = oom ? NULL : cJSON_CreateString(s.s);
    gpo_str_free(&s);
    return j;
}

static void token_bytes(const struct oai_logprobs *l, int32_t id, const char **b, size_t *n) {
    if (gpo_tokenizer_token_bytes(l->tok, id, b, n) != GPO_OK) {
        *b = "";
        *n = 0;
    }
}

/* {token, logprob, bytes} of one id (top: without its own top_logprobs). */
static cJSON *logprob_entry(const struct oai_logprobs *l, int32_t id, float lp) {
    const char *b;
    size_t n;
    token_bytes(l, id, &b, &n);
    cJSON *e = cJSON_CreateObject();
    cJSON_AddItemToObject(e, "token", token_string(b, n));
    cJSON_AddNumberToObject(e, "logprob", (double)lp);
    cJSON *bytes = cJSON_AddArrayToObject(e, "bytes");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((double)(unsigned char)b[i]));
    return e;
}

/* The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}. */
static void add_chat_logprobs(cJSON *choice, const struct oai_logprobs *l) {
    if (!l) {
        cJSON_AddNullToObject(choice, "logprobs");
        return;
    }
    cJSON *content = cJSON_AddArrayToObject(cJSON_AddObjectToObject(choice, "logprobs"), "content");
    for (size_t i = 0; i < l->n; i++) {
        cJSON *e = logprob_entry(l, l->ids[i], l->lps[i].chosen);
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < l->top && k < l->lps[i].n; k++)
            cJSON_AddItemToArray(top, logprob_entry(l, l->lps[i].ids[k], l->lps[i].lps[k]));
        cJSON_AddItemToArray(content, e);
    }
}

/* The legacy shape: {tokens, token_logprobs, top_logprobs: [{token: logprob}],
 * text_offset}. */
static void add_legacy_logprobs(cJSON *choice, const struct oai_logprobs *l) {
    if (!l) {
        cJSON_AddNullToObject(choice, "logprobs");
        return;
    }
    cJSON *o = cJSON_AddObjectToObject(choice, "logprobs");
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    size_t off = l->text_offset;
    for (size_t i = 0; i < l->n; i++) {
        const char *b;
        size_t n;
        token_bytes(l, l->ids[i], &b, &n);
        cJSON_AddItemToArray(tokens, token_string(b, n));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber((double)l->lps[i].chosen));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += oai_utf8_chars(b, n);
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < l->top && k < l->lps[i].n; k++) {
            token_bytes(l, l->lps[i].ids[k], &b, &n);
            cJSON *key = token_string(b, n);
            if (key && !cJSON_GetObjectItemCaseSensitive(top, key->valuestring))
                cJSON_AddNumberToObject(top, key->valuestring, (double)l->lps[i].lps[k]);
            cJSON_Delete(key);
        }
        cJSON_AddItemToArray(tops, top);
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
    add_chat_logprobs(c, r->logprobs);
    cJSON_AddStringToObject(c, "finish_reason", r->finish);
    add_usage(root, r);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* root as "data: {...}\n\n" (root is freed). */
static char *sse_event(cJSON *root) {
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
        add_chat_logprobs(c, r->logprobs);
        if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
        else cJSON_AddNullToObject(c, "finish_reason");
    }
    return sse_event(root);
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

size_t oai_utf8_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
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

/* ------------------------------------------------------------------------- */
/* POST /v1/completions                                                      */

void oai_completion_free(struct oai_completion *c) {
    free(c->model);
    free(c->prompt);
    free(c->prompt_ids);
    for (size_t i = 0; i < c->n_stops; i++) free(c->stops[i]);
    memset(c, 0, sizeof *c);
}

/* `prompt`: a string, or an array of token ids (one prompt: n = 1). */
static int parse_prompt(const cJSON *p, struct oai_completion *out, struct oai_error *err) {
    if (!p || cJSON_IsNull(p)) return BAD("prompt", "'prompt' is required");
    if (cJSON_IsString(p)) {
        if (!gpo_utf8_valid(p->valuestring, strlen(p->valuestring)))
            return BAD("prompt", "'prompt' is not valid UTF-8");
        return (out->prompt = dup_or_fail(p->valuestring, err)) ? 0 : -1;
    }
    size_t n = cJSON_IsArray(p) ? (size_t)cJSON_GetArraySize(p) : 0;
    if (!n)
        return BAD("prompt", "'prompt' must be a string or a non-empty array of token ids "
                   "(one prompt only)");
    if (!(out->prompt_ids = malloc(n * sizeof *out->prompt_ids)))
        return oai_err(err, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *v;
    cJSON_ArrayForEach(v, p) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
            v->valuedouble > INT32_MAX)
            return BAD("prompt", "'prompt'[%zu] must be a token id (an integer >= 0); one "
                       "prompt only", out->n_prompt_ids);
        out->prompt_ids[out->n_prompt_ids++] = (int32_t)v->valuedouble;
    }
    return 0;
}

/* A field this server does not implement may be given only as its default. */
static int only_default(const cJSON *root, const char *name, const char *why,
                        struct oai_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return 0;
    return BAD(name, "'%s' is not supported: %s", name, why);
}

static int parse_completion_obj(const cJSON *root, struct oai_completion *out,
                                struct oai_error *err) {
    if (!cJSON_IsObject(root)) return BAD(NULL, "the request body must be a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) return BAD("model", "'model' must be a string");
        if (!(out->model = dup_or_fail(model->valuestring, err))) return -1;
    }
    if (parse_prompt(cJSON_GetObjectItemCaseSensitive(root, "prompt"), out, err)) return -1;
    if (only_default(root, "echo", "only false (the prompt is not repeated)", err) ||
        only_default(root, "suffix", "only null", err))
        return -1;
    if (parse_sampling(root, &out->sp, &out->seed_given, err)) return -1;
    out->max_tokens = OAI_DEFAULT_LEGACY_MAX_TOKENS;
    if (get_int(root, "max_tokens", 1, (double)(1 << 30), &out->max_tokens, NULL, err) < 0)
        return -1;
    int64_t best_of = 1;
    if (get_int(root, "best_of", 1, 128, &best_of, NULL, err) < 0) return -1;
    if (best_of != 1) return BAD("best_of", "only 'best_of' = 1 is supported");
    if (parse_n(root, err) || parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"),
                                         out->stops, &out->n_stops, err))
        return -1;
    if (parse_stream(root, &out->stream, &out->include_usage, err)) return -1;
    int64_t lp = -1;
    if (get_int(root, "logprobs", 0, OAI_MAX_LEGACY_LOGPROBS, &lp, NULL, err) < 0) return -1;
    out->logprobs = (int)lp;
    out->sp.n_logprobs = lp > 0 ? (int32_t)lp : 0;
    return 0;
}

int oai_parse_completion(const char *body, size_t len, const struct gpo_sampler_params *sp,
                         struct oai_completion *out, struct oai_error *err) {
    memset(out, 0, sizeof *out);
    out->sp = *sp;
    out->logprobs = -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return BAD(NULL, "the request body is not valid JSON (near byte %zu)", at);
    }
    int rc = parse_completion_obj(root, out, err);
    cJSON_Delete(root);
    if (rc) oai_completion_free(out);
    return rc;
}

/* choices[0] of a text completion (or of one chunk). */
static void add_text_choice(cJSON *root, const struct oai_result *r, const char *text, size_t n,
                            const char *finish) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "choices"), c);
    add_str_n(c, "text", text ? text : "", text ? n : 0);
    cJSON_AddNumberToObject(c, "index", 0);
    add_legacy_logprobs(c, r->logprobs);
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
}

char *oai_completion_response_json(const struct oai_result *r) {
    cJSON *root = head(r, "text_completion");
    add_text_choice(root, r, r->content, r->content_len, r->finish);
    add_usage(root, r);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *oai_completion_chunk_sse(const struct oai_result *r, const char *text, size_t len,
                               const char *finish, int usage) {
    cJSON *root = head(r, "text_completion");
    if (usage) {
        cJSON_AddArrayToObject(root, "choices");
        add_usage(root, r);
    } else {
        add_text_choice(root, r, text, len, finish);
    }
    return sse_event(root);
}

/* ------------------------------------------------------------------------- */
/* GET /metrics                                                              */

void oai_hist_observe(struct oai_histogram *h, double v) {
    size_t i = 0;
    while (i < h->n_le && v > h->le[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

int oai_metric_head(struct gpo_str *b, const char *name, const char *type, const char *help) {
    int rc = put(b, "# HELP ") || put(b, name) || put(b, " ") || put(b, help);
    rc = rc || put(b, "\n# TYPE ") || put(b, name) || put(b, " ") || put(b, type) || put(b, "\n");
    return rc ? -1 : 0;
}

int oai_metric_sample(struct gpo_str *b, const char *name, const char *labels, double v) {
    char num[64];
    /* %.17g keeps integers exact and round-trips every double. */
    snprintf(num, sizeof num, " %.17g\n", v);
    int rc = put(b, name);
    if (!rc && labels && *labels) rc = put(b, "{") || put(b, labels) || put(b, "}");
    return rc || put(b, num) ? -1 : 0;
}

int oai_metric_histogram(struct gpo_str *b, const char *name, const char *help,
                         const struct oai_histogram *h) {
    char metric[128], le[48];
    if (oai_metric_head(b, name, "histogram", help)) return -1;
    snprintf(metric, sizeof metric, "%s_bucket", name);
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->n_le; i++) {
        cum += h->counts[i];
        if (i < h->n_le) snprintf(le, sizeof le, "le=\"%g\"", h->le[i]);
        else snprintf(le, sizeof le, "le=\"+Inf\"");
        if (oai_metric_sample(b, metric, le, (double)cum)) return -1;
    }
    snprintf(metric, sizeof metric, "%s_sum", name);
    if (oai_metric_sample(b, metric, NULL, h->sum)) return -1;
    snprintf(metric, sizeof metric, "%s_count", name);
    return oai_metric_sample(b, metric, NULL, (double)h->count);
}
