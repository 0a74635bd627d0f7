/* test_openai.c - the pure request/response functions of `gptoss serve`
 * (app/openai.c): parsing chat and text-completion bodies into turns and
 * sampling parameters, the 400 errors naming the field, the JSON/SSE answers
 * with their logprobs, forced function-call headers, which generated tokens are
 * content, and the Prometheus text of /metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

/* The app's file is compiled in: test binaries link only libgpo.a. */
#include "../app/openai.c"

static struct gpo_sampler_params defaults(void) {
    struct gpo_sampler_params sp;
    gpo_sampler_params_default(&sp);
    sp.seed = 42;
    return sp;
}

static int parse(const char *body, struct oai_chat *c, struct oai_error *e) {
    struct gpo_sampler_params sp = defaults();
    return oai_parse_chat(body, strlen(body), &sp, GPO_REASONING_MEDIUM, c, e);
}

static void test_full_request(void **st) {
    struct oai_chat c;
    struct oai_error e;
    const char *body =
        "{\"model\": \"m\", \"messages\": ["
        "{\"role\": \"system\", \"content\": \"S\"},"
        "{\"role\": \"developer\", \"content\": [{\"type\": \"text\", \"text\": \"D1\"},"
        " {\"type\": \"text\", \"text\": \"D2\"}]},"
        "{\"role\": \"user\", \"content\": \"U\"},"
        "{\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"r\"}],"
        "\"temperature\": 0.5, \"top_p\": 0.9, \"max_tokens\": 7, \"seed\": 9,"
        "\"stop\": [\"a\", \"b\"], \"reasoning_effort\": \"low\", \"stream\": true,"
        "\"stream_options\": {\"include_usage\": true}, \"n\": 1, \"tools\": []}";
    assert_int_equal(parse(body, &c, &e), 0);
    assert_string_equal(c.model, "m");
    assert_int_equal(c.n_turns, 4);
    assert_int_equal(c.turns[0].role, GPO_ROLE_SYSTEM);
    assert_string_equal(c.turns[1].content, "D1D2");
    assert_int_equal(c.turns[2].role, GPO_ROLE_USER);
    assert_string_equal(c.turns[3].content, "");
    assert_true(c.sp.temperature == 0.5f && c.sp.top_p == 0.9f);
    assert_int_equal(c.max_tokens, 7);
    assert_true(c.seed_given && c.sp.seed == 9);
    assert_int_equal(c.n_stops, 2);
    assert_string_equal(c.stops[1], "b");
    assert_int_equal(c.reasoning, GPO_REASONING_LOW);
    assert_true(c.stream && c.include_usage);
    oai_chat_free(&c);
}

static void test_defaults(void **st) {
    struct oai_chat c;
    struct oai_error e;
    assert_int_equal(parse("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}],"
                           " \"max_completion_tokens\": 3, \"stop\": \"x\"}", &c, &e), 0);
    assert_null(c.model);
    assert_true(c.sp.temperature == 1.0f && c.sp.seed == 42 && !c.seed_given);
    assert_int_equal(c.max_tokens, 3);
    assert_int_equal(c.n_stops, 1);
    assert_int_equal(c.reasoning, GPO_REASONING_MEDIUM);
    assert_false(c.stream);
    oai_chat_free(&c);
}

/* Each bad body is a 400 whose param (or message) names the problem. */
static void test_errors(void **st) {
    static const struct {
        const char *body, *param, *in_message;
    } cases[] = {
        {"{\"messages\": [", NULL, "JSON"},
        {"[1, 2]", NULL, "object"},
        {"{}", "messages", "required"},
        {"{\"messages\": []}", "messages", "at least one"},
        {"{\"messages\": \"hi\"}", "messages", "array"},
        {"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "messages", "robot"},
        {"{\"messages\": [{\"role\": \"user\"}]}", "messages", "content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages", "content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
         "messages", "text"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": \"hot\"}",
         "temperature", "number"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 3}",
         "temperature", "between"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 1.5}",
         "max_tokens", "integer"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 0}",
         "max_tokens", "between"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 2}", "n", "only"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [1]}", "stop",
         "string"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": "
         "[\"a\", \"b\", \"c\", \"d\", \"e\"]}", "stop", "at most"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": 1}", "stream",
         "boolean"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"reasoning_effort\": "
         "\"max\"}", "reasoning_effort", "low"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_p\": 0}", "top_p",
         "above"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", "tools",
         "must be"},
        {"{\"messages\": [{\"role\": \"tool\", \"content\": \"x\", \"tool_call_id\": \"c9\"}]}",
         "messages", "no earlier tool call"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": 3}",
         "tool_choice", "none, auto"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": null, \"tool_calls\": "
         "[{\"id\": \"c\", \"function\": {\"name\": \"a b\", \"arguments\": \"{}\"}}]}]}",
         "messages", "tool_calls[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"\\udc00\"}]}", NULL, "JSON"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", "messages", "UTF-8"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": 1}",
         "logprobs", "boolean"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true,"
         " \"top_logprobs\": 21}", "top_logprobs", "between 0 and 20"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
         "top_logprobs", "needs 'logprobs'"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": "
         "\"required\"}", "tool_choice", "at least one function"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
         "\"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": {\"type\": "
         "\"function\", \"function\": {\"name\": \"g\"}}}", "tool_choice", "'g', which is not"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
         "\"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": {\"type\": "
         "\"function\"}}", "tool_choice", "none, auto"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct oai_chat c;
        struct oai_error e;
        memset(&e, 0, sizeof e);
        int rc = parse(cases[i].body, &c, &e);
        if (rc != -1 || e.http != 400) fail_msg("case %zu (%s) was accepted", i, cases[i].body);
        if (cases[i].param && !e.param) fail_msg("case %zu: no param (%s)", i, e.message);
        if (cases[i].param && strcmp(e.param, cases[i].param))
            fail_msg("case %zu: param %s, not %s", i, e.param, cases[i].param);
        if (cases[i].in_message && !strstr(e.message, cases[i].in_message))
            fail_msg("case %zu: message '%s' lacks '%s'", i, e.message, cases[i].in_message);
        assert_null(c.turns); /* freed on failure */
    }
}

static void test_responses(void **st) {
    struct oai_result r = {.id = "chatcmpl-1", .model = "m", .created = 5, .content = "h\"i",
                           .content_len = 3, .reasoning = "think", .reasoning_len = 5,
                           .finish = "stop", .prompt_tokens = 10, .completion_tokens = 4};
    char *s = oai_chat_response_json(&r);
    cJSON *j = cJSON_Parse(s);
    assert_non_null(j);
    cJSON *m = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                   "message");
    assert_string_equal(cJSON_GetObjectItem(m, "content")->valuestring, "h\"i");
    assert_string_equal(cJSON_GetObjectItem(m, "reasoning_content")->valuestring, "think");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint,
                     14);
    cJSON_Delete(j);
    free(s);

    s = oai_chat_chunk_sse(&r, 0, "ab", 1, NULL, 0, 0, NULL, 0);
    assert_true(!strncmp(s, "data: {", 7) && !strcmp(s + strlen(s) - 2, "\n\n"));
    assert_non_null(strstr(s, "\"delta\":{\"content\":\"a\"}"));
    free(s);
    s = oai_chat_chunk_sse(&r, 0, NULL, 0, NULL, 0, 0, NULL, 1);
    assert_non_null(strstr(s, "\"choices\":[]"));
    assert_non_null(strstr(s, "\"usage\""));
    free(s);

    struct oai_error e;
    oai_err(&e, 400, "invalid_request_error", "temperature", NULL, "bad %d", 1);
    s = oai_error_json(&e);
    assert_string_equal(s, "{\"error\":{\"message\":\"bad 1\",\"type\":\"invalid_request_error\","
                           "\"param\":\"temperature\",\"code\":null}}");
    free(s);
    assert_string_equal(oai_finish_reason(GPO_FINISH_CONTEXT), "length");
    assert_string_equal(oai_finish_reason(GPO_FINISH_STOP), "stop");
}

static void test_tools(void **st) {
    struct oai_chat c;
    struct oai_error e;
    const char *body =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris?\"},"
        "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"call_1\","
        " \"type\": \"function\", \"function\": {\"name\": \"get_weather\","
        " \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
        "{\"role\": \"tool\", \"tool_call_id\": \"call_1\", \"content\": \"20 C\"}],"
        "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
        " \"description\": \"Gets the weather.\", \"parameters\": {\"type\": \"object\","
        " \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"The city\"},"
        " \"unit\": {\"type\": \"string\", \"enum\": [\"c\", \"f\"], \"default\": \"c\"},"
        " \"days\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}},"
        " \"required\": [\"city\"]}}},"
        " {\"type\": \"function\", \"function\": {\"name\": \"now\"}}]}";
    assert_int_equal(parse(body, &c, &e), 0);
    assert_string_equal(c.tools,
        "# Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Gets the weather.\ntype get_weather = (_: {\n// The city\ncity: string,\n"
        "unit?: \"c\" | \"f\", // default: \"c\"\ndays?: number[],\n}) => any;\n\n"
        "type now = () => any;\n\n} // namespace functions");
    assert_string_equal(c.extra[2].tool_name, "get_weather");
    assert_int_equal(c.extra[1].n_calls, 1);
    assert_string_equal(c.extra[1].calls[0].arguments, "{\"city\": \"Paris\"}");

    struct gpo_conv conv;
    gpo_conv_init(&conv);
    assert_int_equal(oai_build_conv(&c, NULL, NULL, &conv), GPO_OK);
    assert_int_equal(conv.n, 5); /* system, developer (tools), user, call, result */
    assert_int_equal(conv.msgs[1].role, GPO_ROLE_DEVELOPER);
    assert_string_equal(conv.msgs[1].tools, c.tools);
    assert_string_equal(conv.msgs[3].recipient, "functions.get_weather");
    assert_string_equal(conv.msgs[3].channel, "commentary");
    assert_string_equal(conv.msgs[3].content_type, "<|constrain|>json");
    assert_int_equal(conv.msgs[4].role, GPO_ROLE_TOOL);
    assert_string_equal(conv.msgs[4].name, "functions.get_weather");
    assert_string_equal(conv.msgs[4].recipient, "assistant");
    gpo_conv_free(&conv);
    oai_chat_free(&c);

    /* Parsed output: a complete message to functions.NAME is a call. */
    struct gpo_hparsed m = {.complete = 1};
    m.msg.recipient = "functions.get_weather";
    const char *name = NULL;
    assert_true(oai_is_call(&m, &name));
    assert_string_equal(name, "get_weather");
    m.msg.recipient = "browser.search";
    assert_false(oai_is_call(&m, &name));
    m.msg.recipient = "functions.x";
    m.complete = 0;
    assert_false(oai_is_call(&m, &name));

    struct oai_call call = {.id = "call_1", .name = "f", .arguments = "{}"};
    struct oai_result r = {.id = "x", .model = "m", .finish = "tool_calls", .calls = &call,
                           .n_calls = 1};
    char *js = oai_chat_response_json(&r);
    assert_non_null(strstr(js, "\"content\":null"));
    assert_non_null(strstr(js, "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
                               "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]"));
    free(js);
    js = oai_chat_chunk_sse(&r, 0, NULL, 0, NULL, 0, 1, NULL, 0);
    assert_non_null(strstr(js, "\"tool_calls\":[{\"index\":0,"));
    free(js);
}

static void test_helpers(void **st) {
    assert_int_equal(oai_utf8_whole("ab", 2), 2);
    assert_int_equal(oai_utf8_whole("a\xC3", 2), 1);
    assert_int_equal(oai_utf8_whole("a\xC3\xA9", 3), 3);
    assert_int_equal(oai_utf8_whole("a\xE7\xBD", 3), 1);
    assert_int_equal(oai_utf8_whole("\xF0\x9F\x98\x80", 4), 4);
    assert_int_equal(oai_utf8_whole("\xF0\x9F\x98", 3), 0);
    assert_true(oai_key_equal("secret", 6, "secret", 6));
    assert_false(oai_key_equal("secreT", 6, "secret", 6));
    assert_false(oai_key_equal("secret!", 7, "secret", 6));
    assert_false(oai_key_equal("", 0, "secret", 6));
}

static gpo_tokenizer *g_tok; /* the real o200k tokenizer */

static int setup(void **st) {
    char path[4096];
    if (gpo_tokenizer_find(NULL, NULL, path, sizeof path) != GPO_OK) return -1;
    return gpo_tokenizer_load(path, &g_tok) == GPO_OK ? 0 : -1;
}

static int teardown(void **st) {
    gpo_tokenizer_free(g_tok);
    return 0;
}

static void test_logprobs_and_tool_choice(void **st) {
    struct oai_chat c;
    struct oai_error e;
    assert_int_equal(parse("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}],"
                           " \"logprobs\": true, \"top_logprobs\": 20}", &c, &e), 0);
    assert_true(c.logprobs && c.top_logprobs == 20 && c.sp.n_logprobs == 20);
    oai_chat_free(&c);
    assert_int_equal(parse("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}],"
                           " \"logprobs\": true}", &c, &e), 0);
    assert_true(c.logprobs && c.top_logprobs == 0 && c.sp.n_logprobs == 0);
    oai_chat_free(&c);

    const char *tools = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": ["
                        "{\"type\": \"function\", \"function\": {\"name\": \"f\"}},"
                        "{\"type\": \"function\", \"function\": {\"name\": \"g\"}}], "
                        "\"tool_choice\": %s}";
    static const struct {
        const char *choice;
        enum oai_tool_choice want;
    } cases[] = {{"\"auto\"", OAI_TOOLS_AUTO}, {"\"none\"", OAI_TOOLS_NONE},
                 {"\"required\"", OAI_TOOLS_REQUIRED},
                 {"{\"type\": \"function\", \"function\": {\"name\": \"g\"}}", OAI_TOOLS_NAMED}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[512];
        snprintf(body, sizeof body, tools, cases[i].choice);
        assert_int_equal(parse(body, &c, &e), 0);
        assert_int_equal(c.tool_choice, cases[i].want);
        assert_int_equal(c.n_tool_names, 2);
        assert_true(oai_tool_known(c.tool_names, c.n_tool_names, "f") &&
                    oai_tool_known(c.tool_names, c.n_tool_names, "g"));
        assert_false(oai_tool_known(c.tool_names, c.n_tool_names, "h"));
        if (cases[i].want == OAI_TOOLS_NAMED) assert_string_equal(c.tool_name, "g");
        else assert_null(c.tool_name);
        oai_chat_free(&c);
    }
}

/* The decoded text of ids[from..n). */
static char *decode(const struct gpo_ids *ids, size_t from) {
    struct gpo_str s = {0};
    assert_int_equal(gpo_tokenizer_decode(g_tok, ids->ids + from, ids->n - from, &s), GPO_OK);
    assert_int_equal(gpo_str_append(&s, "", 0), GPO_OK);
    return s.s;
}

static void test_call_header(void **st) {
    struct gpo_ids h = {0};
    assert_int_equal(oai_call_header(g_tok, "get_weather", &h), GPO_OK);
    assert_true(h.n > 4);
    assert_int_equal(h.ids[0], GPO_TOK_CHANNEL);
    assert_int_equal(h.ids[h.n - 1], GPO_TOK_MESSAGE);
    char *txt = decode(&h, 0);
    assert_string_equal(txt, "<|channel|>commentary to=functions.get_weather <|constrain|>json"
                             "<|message|>");
    free(txt);
    /* The header parses as a function call whose content is what follows. */
    gpo_hparser *p = NULL;
    assert_int_equal(gpo_hparser_create(g_tok, &p), GPO_OK);
    for (size_t i = 0; i < h.n; i++) assert_int_equal(gpo_hparser_push(p, h.ids[i], NULL), GPO_OK);
    struct gpo_ids args = {0};
    assert_int_equal(gpo_tokenizer_encode(g_tok, "{\"city\": \"Paris\"}", 17, 0, &args), GPO_OK);
    assert_int_equal(gpo_ids_push(&args, GPO_TOK_CALL), GPO_OK);
    for (size_t i = 0; i < args.n; i++)
        assert_int_equal(gpo_hparser_push(p, args.ids[i], NULL), GPO_OK);
    const char *name = NULL;
    assert_int_equal(gpo_hparser_n_messages(p), 1);
    const struct gpo_hparsed *m = gpo_hparser_message(p, 0);
    assert_true(oai_is_call(m, &name));
    assert_string_equal(name, "get_weather");
    assert_memory_equal(m->msg.content, "{\"city\": \"Paris\"}", 17);
    gpo_hparser_free(p);
    gpo_ids_free(&args);

    /* required: the header stops where the model writes the name. */
    h.n = 0;
    assert_int_equal(oai_call_header(g_tok, NULL, &h), GPO_OK);
    txt = decode(&h, 0);
    assert_string_equal(txt, "<|channel|>commentary to=functions.");
    free(txt);
    gpo_ids_free(&h);
}

/* Content tokens from a stream of parser events: a proper header is dropped, an
 * analysis message is not content, text the parser recovered at the end (header
 * tokens that never became a header) is. */
static void test_content_tracking(void **st) {
    struct oai_content_tokens t = {0};
    struct gpo_hevent hdr = {.msg = -1};
    struct gpo_hevent ana = {.msg = 0, .channel = GPO_CH_ANALYSIS, .text_len = 1};
    struct gpo_hevent start = {.msg = 1, .channel = GPO_CH_FINAL, .msg_started = 1};
    struct gpo_hevent fin = {.msg = 1, .channel = GPO_CH_FINAL, .text = "a", .text_len = 1};
    struct gpo_hevent held = {.msg = 1, .channel = GPO_CH_FINAL}; /* bytes of a cut character */
    struct gpo_hevent end = {.msg = 1, .channel = GPO_CH_FINAL, .msg_done = 1, .turn_done = 1};
    size_t i = 0;
    assert_int_equal(oai_content_track(&t, i++, 1, 0, &ana), 0);    /* 0: analysis text */
    assert_int_equal(oai_content_track(&t, i++, 2, 1, &hdr), 0);    /* 1: <|start|> */
    assert_int_equal(oai_content_track(&t, i++, 3, 0, &hdr), 0);    /* 2: assistant */
    assert_int_equal(oai_content_track(&t, i++, 4, 1, &start), 0);  /* 3: <|message|> */
    assert_int_equal(oai_content_track(&t, i++, 5, 0, &fin), 0);    /* 4: content */
    assert_int_equal(oai_content_track(&t, i++, 6, 0, &held), 0);   /* 5: content, held */
    assert_int_equal(oai_content_track(&t, i++, 200002, 1, &end), 0); /* 6: <|return|> */
    assert_int_equal(t.n, 2);
    assert_int_equal(t.idx[0], 4);
    assert_int_equal(t.idx[1], 5);
    oai_content_free(&t);

    /* Plain text with no header: recovered at the end of the turn (id -1). */
    struct gpo_hevent rec = {.msg = 0, .channel = GPO_CH_FINAL, .text = "xyz", .text_len = 3,
                             .msg_started = 1, .recovered = 1};
    for (i = 0; i < 3; i++) assert_int_equal(oai_content_track(&t, i, 7, 0, &hdr), 0);
    assert_int_equal(t.n, 0);
    assert_int_equal(oai_content_track(&t, 0, -1, 0, &rec), 0);
    assert_int_equal(t.n, 3);
    assert_int_equal(t.idx[2], 2);
    oai_content_free(&t);

    /* Recovered by the first token itself: it starts the message and is text. */
    assert_int_equal(oai_content_track(&t, 0, 8, 0, &rec), 0);
    assert_int_equal(t.n, 1);
    oai_content_free(&t);
}

/* Two tokens with two alternatives each, in both shapes. */
static void test_logprobs_json(void **st) {
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_tokenizer_encode(g_tok, "Hi there", 8, 0, &ids), GPO_OK);
    assert_int_equal(ids.n, 2);
    struct gpo_logprobs lps[2] = {
        {.chosen = -0.5f, .n = 2, .ids = {ids.ids[0], ids.ids[1]}, .lps = {-0.5f, -1.5f}},
        {.chosen = -2.0f, .n = 2, .ids = {ids.ids[0], ids.ids[1]}, .lps = {-1.0f, -2.0f}},
    };
    struct oai_logprobs l = {.tok = g_tok, .ids = ids.ids, .lps = lps, .n = 2, .top = 2};
    struct oai_result r = {.id = "x", .model = "m", .content = "Hi there", .content_len = 8,
                           .finish = "stop", .logprobs = &l};
    char *s = oai_chat_response_json(&r);
    cJSON *j = cJSON_Parse(s);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "logprobs"), "content");
    assert_int_equal(cJSON_GetArraySize(content), 2);
    cJSON *e1 = cJSON_GetArrayItem(content, 1);
    assert_string_equal(cJSON_GetObjectItem(e1, "token")->valuestring, " there");
    assert_true(cJSON_GetObjectItem(e1, "logprob")->valuedouble == -2.0);
    cJSON *bytes = cJSON_GetObjectItem(e1, "bytes");
    assert_int_equal(cJSON_GetArraySize(bytes), 6);
    assert_int_equal(cJSON_GetArrayItem(bytes, 0)->valueint, ' ');
    cJSON *top = cJSON_GetObjectItem(e1, "top_logprobs");
    assert_int_equal(cJSON_GetArraySize(top), 2);
    cJSON *top0 = cJSON_GetArrayItem(top, 0);
    assert_string_equal(cJSON_GetObjectItem(top0, "token")->valuestring, "Hi");
    cJSON_Delete(j);
    free(s);

    /* The streamed chunk carries the same entries. */
    s = oai_chat_chunk_sse(&r, 0, "Hi there", 8, NULL, 0, 0, NULL, 0);
    assert_non_null(strstr(s, "\"logprobs\":{\"content\":[{\"token\":\"Hi\""));
    free(s);

    l.text_offset = 4;
    s = oai_completion_response_json(&r);
    j = cJSON_Parse(s);
    assert_string_equal(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    assert_string_equal(cJSON_GetObjectItem(ch, "text")->valuestring, "Hi there");
    cJSON *lo = cJSON_GetObjectItem(ch, "logprobs");
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(lo, "tokens"), 1)->valuestring,
                        " there");
    cJSON *tlp = cJSON_GetObjectItem(lo, "token_logprobs");
    assert_true(cJSON_GetArrayItem(tlp, 0)->valuedouble == -0.5);
    cJSON *offs = cJSON_GetObjectItem(lo, "text_offset");
    assert_int_equal(cJSON_GetArrayItem(offs, 0)->valueint, 4);
    assert_int_equal(cJSON_GetArrayItem(offs, 1)->valueint, 6);
    assert_int_equal(oai_utf8_chars("a\xC3\xA9\xF0\x9F\x98\x80", 7), 3);
    assert_int_equal(oai_utf8_chars("\x9F\x98", 2), 0);
    cJSON *t1 = cJSON_GetArrayItem(cJSON_GetObjectItem(lo, "top_logprobs"), 1);
    assert_true(cJSON_GetObjectItem(t1, " there")->valuedouble == -2.0);
    assert_true(cJSON_GetObjectItem(t1, "Hi")->valuedouble == -1.0);
    cJSON_Delete(j);
    free(s);

    /* Half a character is shown as U+FFFD, its bytes as they are. */
    struct gpo_ids e = {0};
    assert_int_equal(gpo_tokenizer_encode(g_tok, "\xF0\x9F\x98\x80", 4, 0, &e), GPO_OK);
    const char *b;
    size_t n;
    assert_int_equal(gpo_tokenizer_token_bytes(g_tok, e.ids[0], &b, &n), GPO_OK);
    if (n < 4) { /* the emoji is split over tokens */
        cJSON *js = token_string(b, n);
        assert_non_null(strstr(js->valuestring, "\xEF\xBF\xBD"));
        cJSON_Delete(js);
    }
    cJSON *js = token_string("a\xC3", 2);
    assert_string_equal(js->valuestring, "a\xEF\xBF\xBD");
    cJSON_Delete(js);
    gpo_ids_free(&e);
    gpo_ids_free(&ids);
}

static int parse_text(const char *body, struct oai_completion *c, struct oai_error *e) {
    struct gpo_sampler_params sp = defaults();
    return oai_parse_completion(body, strlen(body), &sp, c, e);
}

static void test_completion_request(void **st) {
    struct oai_completion c;
    struct oai_error e;
    assert_int_equal(parse_text("{\"model\": \"m\", \"prompt\": \"Once\"}", &c, &e), 0);
    assert_string_equal(c.prompt, "Once");
    assert_int_equal(c.max_tokens, OAI_DEFAULT_LEGACY_MAX_TOKENS);
    assert_int_equal(c.logprobs, -1);
    assert_false(c.stream);
    oai_completion_free(&c);
    assert_int_equal(parse_text("{\"prompt\": [1, 2, 3], \"max_tokens\": 4, \"temperature\": 0,"
                                " \"top_p\": 0.5, \"seed\": 7, \"stop\": [\"x\"], \"logprobs\": 3,"
                                " \"echo\": false, \"suffix\": null, \"stream\": true,"
                                " \"stream_options\": {\"include_usage\": true}}", &c, &e), 0);
    assert_null(c.prompt);
    assert_int_equal(c.n_prompt_ids, 3);
    assert_int_equal(c.prompt_ids[2], 3);
    assert_int_equal(c.max_tokens, 4);
    assert_true(c.sp.temperature == 0 && c.sp.top_p == 0.5f && c.seed_given && c.sp.seed == 7);
    assert_int_equal(c.n_stops, 1);
    assert_true(c.logprobs == 3 && c.sp.n_logprobs == 3);
    assert_true(c.stream && c.include_usage);
    oai_completion_free(&c);

    static const struct {
        const char *body, *param, *in_message;
    } bad[] = {
        {"{}", "prompt", "required"},
        {"{\"prompt\": 5}", "prompt", "string"},
        {"{\"prompt\": []}", "prompt", "non-empty"},
        {"{\"prompt\": [\"a\", \"b\"]}", "prompt", "token id"},
        {"{\"prompt\": [1, -2]}", "prompt", "token id"},
        {"{\"prompt\": \"\xff\"}", "prompt", "UTF-8"},
        {"{\"prompt\": \"x\", \"echo\": true}", "echo", "only false"},
        {"{\"prompt\": \"x\", \"suffix\": \"y\"}", "suffix", "not supported"},
        {"{\"prompt\": \"x\", \"logprobs\": 6}", "logprobs", "between 0 and 5"},
        {"{\"prompt\": \"x\", \"logprobs\": true}", "logprobs", "integer"},
        {"{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "between"},
        {"{\"prompt\": \"x\", \"n\": 2}", "n", "only"},
        {"{\"prompt\": \"x\", \"best_of\": 3}", "best_of", "only"},
        {"{\"prompt\": \"x\", \"temperature\": -1}", "temperature", "between"},
        {"{\"prompt\": \"x\", \"stop\": 3}", "stop", "string"},
        {"{\"prompt\": ", NULL, "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&e, 0, sizeof e);
        if (parse_text(bad[i].body, &c, &e) != -1 || e.http != 400)
            fail_msg("case %zu (%s) was accepted", i, bad[i].body);
        if (bad[i].param && (!e.param || strcmp(e.param, bad[i].param)))
            fail_msg("case %zu: param %s, not %s", i, e.param ? e.param : "-", bad[i].param);
        if (!strstr(e.message, bad[i].in_message))
            fail_msg("case %zu: message '%s' lacks '%s'", i, e.message, bad[i].in_message);
        assert_null(c.prompt_ids);
    }
}

static void test_completion_response(void **st) {
    struct oai_result r = {.id = "cmpl-1", .model = "m", .created = 3, .content = "ab",
                           .content_len = 2, .finish = "length", .prompt_tokens = 2,
                           .completion_tokens = 16};
    char *s = oai_completion_response_json(&r);
    assert_string_equal(s, "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":3,"
                           "\"model\":\"m\",\"system_fingerprint\":\"gptoss\",\"choices\":[{"
                           "\"text\":\"ab\",\"index\":0,\"logprobs\":null,\"finish_reason\":"
                           "\"length\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":16,"
                           "\"total_tokens\":18}}");
    free(s);
    s = oai_completion_chunk_sse(&r, "b", 1, NULL, 0);
    assert_true(!strncmp(s, "data: {", 7) && !strcmp(s + strlen(s) - 2, "\n\n"));
    assert_non_null(
        strstr(s, "\"text\":\"b\",\"index\":0,\"logprobs\":null,\"finish_reason\":null"));
    free(s);
    s = oai_completion_chunk_sse(&r, NULL, 0, NULL, 1);
    assert_non_null(strstr(s, "\"choices\":[],\"usage\":{"));
    free(s);
}

/* The histogram's lines are cumulative and end with +Inf equal to the count. */
static void test_metrics_text(void **st) {
    static const double le[] = {0.1, 1, 10};
    struct oai_histogram h = {.le = le, .n_le = 3};
    const double obs[] = {0.05, 0.1, 0.5, 5, 50, 2};
    for (size_t i = 0; i < 6; i++) oai_hist_observe(&h, obs[i]);
    struct gpo_str b = {0};
    assert_int_equal(oai_metric_histogram(&b, "t_seconds", "Some time", &h), 0);
    assert_int_equal(oai_metric_head(&b, "g", "gauge", "A gauge"), 0);
    assert_int_equal(oai_metric_sample(&b, "g", "a=\"1\"", 3), 0);
    assert_int_equal(gpo_str_append(&b, "", 0), GPO_OK);
    assert_string_equal(b.s, "# HELP t_seconds Some time\n# TYPE t_seconds histogram\n"
                             "t_seconds_bucket{le=\"0.1\"} 2\nt_seconds_bucket{le=\"1\"} 3\n"
                             "t_seconds_bucket{le=\"10\"} 5\nt_seconds_bucket{le=\"+Inf\"} 6\n"
                             "t_seconds_sum 57.649999999999999\nt_seconds_count 6\n"
                             "# HELP g A gauge\n# TYPE g gauge\ng{a=\"1\"} 3\n");
    gpo_str_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_request), cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_responses),
        cmocka_unit_test(test_tools),        cmocka_unit_test(test_helpers),
        cmocka_unit_test(test_logprobs_and_tool_choice),
        cmocka_unit_test(test_call_header),
        cmocka_unit_test(test_content_tracking),
        cmocka_unit_test(test_logprobs_json),
        cmocka_unit_test(test_completion_request),
        cmocka_unit_test(test_completion_response),
        cmocka_unit_test(test_metrics_text),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
