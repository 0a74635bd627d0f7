/* test_openai.c - the pure request/response functions of `gptoss serve`
 * (app/openai.c): parsing chat bodies into turns and sampling parameters, the
 * 400 errors naming the field, and the JSON/SSE answers. */
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_request), cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_responses),
        cmocka_unit_test(test_tools),        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
