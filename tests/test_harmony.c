/* test_harmony.c - the harmony renderer against every conversation of
 * tests/fixtures/harmony/cases.jsonl, the JSON loader's errors, the convenience
 * builder, and the streaming parser on well-formed, tool-call, truncated,
 * malformed and UTF-8-splitting outputs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gpo.h"

#define CASES "tests/fixtures/harmony/cases.jsonl"

static gpo_tokenizer *tok;

static int setup(void **state) {
    (void)state;
    char path[4096];
    if (gpo_tokenizer_find(NULL, NULL, path, sizeof path) != GPO_OK) {
        fprintf(stderr, "tokenizer not found: %s\n", gpo_last_error());
        return -1;
    }
    if (gpo_tokenizer_load(path, &tok) != GPO_OK) {
        fprintf(stderr, "tokenizer load failed: %s\n", gpo_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    gpo_tokenizer_free(tok);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */

/* Append the ordinary-text ids of s. */
static void text(struct gpo_ids *ids, const char *s) {
    assert_int_equal(gpo_tokenizer_encode(tok, s, strlen(s), 0, ids), GPO_OK);
}

static void id(struct gpo_ids *ids, int32_t v) { assert_int_equal(gpo_ids_push(ids, v), GPO_OK); }

/* Collected results of feeding ids to a parser. */
struct run {
    gpo_hparser *p;
    struct gpo_str per_channel[5]; /* text streamed per enum gpo_hchannel */
    int n_started, n_done, turn_done, recovered_events;
};

static void run_ids(struct run *r, const int32_t *ids, size_t n, int finish) {
    memset(r, 0, sizeof *r);
    assert_int_equal(gpo_hparser_create(tok, &r->p), GPO_OK);
    for (size_t i = 0; i < n; i++) {
        struct gpo_hevent ev;
        assert_int_equal(gpo_hparser_push(r->p, ids[i], &ev), GPO_OK);
        assert_non_null(ev.text);
        if (ev.text_len) {
            assert_true(ev.msg >= 0);
            assert_int_equal(gpo_str_append(&r->per_channel[ev.channel], ev.text, ev.text_len),
                             GPO_OK);
        }
        r->n_started += ev.msg_started;
        r->n_done += ev.msg_done;
        r->turn_done |= ev.turn_done;
        r->recovered_events += ev.recovered;
    }
    if (finish) {
        struct gpo_hevent ev;
        assert_int_equal(gpo_hparser_finish(r->p, &ev), GPO_OK);
        if (ev.text_len)
            assert_int_equal(gpo_str_append(&r->per_channel[ev.channel], ev.text, ev.text_len),
                             GPO_OK);
        r->n_done += ev.msg_done;
        r->n_started += ev.msg_started;
    }
}

static void run_free(struct run *r) {
    gpo_hparser_free(r->p);
    for (int i = 0; i < 5; i++) gpo_str_free(&r->per_channel[i]);
}

static const char *chan_text(struct run *r, enum gpo_hchannel c) {
    return r->per_channel[c].s ? r->per_channel[c].s : "";
}

static void assert_msg(const struct gpo_hparsed *m, const char *channel, const char *recipient,
                       const char *ctype, const char *content, int32_t end) {
    assert_non_null(m);
    if (channel)
        assert_string_equal(m->msg.channel, channel);
    else
        assert_null(m->msg.channel);
    if (recipient)
        assert_string_equal(m->msg.recipient, recipient);
    else
        assert_null(m->msg.recipient);
    if (ctype)
        assert_string_equal(m->msg.content_type, ctype);
    else
        assert_null(m->msg.content_type);
    assert_string_equal(m->msg.content, content);
    assert_int_equal(m->content_len, strlen(content));
    assert_int_equal(m->end_token, end);
}

/* ------------------------------------------------------------------------- */
/* Renderer                                                                  */

static void test_fixture_cases(void **state) {
    (void)state;
    size_t len;
    char *all = read_all(CASES, &len);
    assert_non_null(all);
    int n_cases = 0;
    for (char *line = all; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line) {
            cJSON *root = cJSON_Parse(line);
            assert_non_null(root);
            const char *name = cJSON_GetObjectItem(root, "name")->valuestring;
            cJSON *want = cJSON_GetObjectItem(root, "prompt_ids");
            assert_true(cJSON_IsArray(want));

            struct gpo_conv c;
            enum gpo_status st = gpo_conv_from_json(line, strlen(line), &c);
            if (st != GPO_OK) fail_msg("%s: load: %s", name, gpo_last_error());
            struct gpo_ids ids = {0};
            st = gpo_harmony_render(tok, &c, &ids);
            if (st != GPO_OK) fail_msg("%s: render: %s", name, gpo_last_error());
            size_t n_want = (size_t)cJSON_GetArraySize(want);
            if (ids.n != n_want) fail_msg("%s: %zu ids, want %zu", name, ids.n, n_want);
            size_t k = 0;
            for (cJSON *e = want->child; e; e = e->next, k++)
                if (ids.ids[k] != (int32_t)e->valueint)
                    fail_msg("%s: id %zu is %d, want %d", name, k, ids.ids[k], e->valueint);
            /* Every prompt ends with <|start|>assistant. */
            assert_int_equal(ids.ids[ids.n - 2], GPO_TOK_START);
            assert_int_equal(ids.ids[ids.n - 1], 173781);
            gpo_ids_free(&ids);
            gpo_conv_free(&c);
            cJSON_Delete(root);
            n_cases++;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(all);
    assert_int_equal(n_cases, 24);
}

/* The spec 6.5 prompt built with the convenience builder and with gpo_conv_add. */
static void test_builder(void **state) {
    (void)state;
    static const int32_t spec[] = {
        200006, 17360,  200008, 3575,  553,   17554, 162016, 11,     261,   4410,  6439,
        2359,   22203,  656,    7788,  17527, 558,   87447,  100594, 25,    220,   1323,
        19,     12,     3218,   198,   6576,  3521,  25,     220,    1323,  20,    12,
        3218,   12,     2029,   279,   30377, 289,   25,     14093,  279,   2,     13888,
        18403,  25,     8450,   11,    49159, 11,    1721,   13,     21030, 2804,  413,
        7360,   395,    1753,   3176,  13,    200007, 200006, 1428,   200008, 4827, 382,
        220,    17,     659,    220,   17,    30,    200007, 200006, 173781};
    struct gpo_chat_turn turns[] = {{GPO_ROLE_USER, "What is 2 + 2?"}};
    struct gpo_conv c;
    gpo_conv_init(&c);
    assert_int_equal(gpo_conv_build(&c, NULL, GPO_REASONING_MEDIUM, "2025-06-28", turns, 1),
                     GPO_OK);
    assert_int_equal(c.n, 2); /* no developer message without instructions */
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_harmony_render(tok, &c, &ids), GPO_OK);
    assert_int_equal(ids.n, sizeof spec / sizeof *spec);
    assert_memory_equal(ids.ids, spec, sizeof spec);
    gpo_ids_free(&ids);
    gpo_conv_free(&c);

    /* An OpenAI "system" turn becomes developer instructions, joined with the
     * explicit developer text; assistant turns go to the final channel. */
    struct gpo_chat_turn t2[] = {{GPO_ROLE_SYSTEM, "Be terse."},
                                 {GPO_ROLE_USER, "Hi"},
                                 {GPO_ROLE_ASSISTANT, "Hello."},
                                 {GPO_ROLE_USER, "Bye"}};
    assert_int_equal(gpo_conv_build(&c, "Speak English.", GPO_REASONING_LOW, NULL, t2, 4), GPO_OK);
    assert_int_equal(c.n, 5);
    assert_int_equal(c.msgs[1].role, GPO_ROLE_DEVELOPER);
    assert_string_equal(c.msgs[1].content, "Speak English.\n\nBe terse.");
    assert_int_equal(c.msgs[3].role, GPO_ROLE_ASSISTANT);
    assert_string_equal(c.msgs[3].channel, "final");
    assert_int_equal(gpo_harmony_render(tok, &c, &ids), GPO_OK);

    /* Same thing written by hand. */
    struct gpo_ids want = {0};
    id(&want, GPO_TOK_START);
    text(&want, "system");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: "
                "2024-06\n\nReasoning: low\n\n# Valid channels: analysis, commentary, final. "
                "Channel must be included for every message.");
    id(&want, GPO_TOK_END);
    id(&want, GPO_TOK_START);
    text(&want, "developer");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "# Instructions\n\nSpeak English.\n\nBe terse.");
    id(&want, GPO_TOK_END);
    id(&want, GPO_TOK_START);
    text(&want, "user");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "Hi");
    id(&want, GPO_TOK_END);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    id(&want, GPO_TOK_CHANNEL);
    text(&want, "final");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "Hello.");
    id(&want, GPO_TOK_END);
    id(&want, GPO_TOK_START);
    text(&want, "user");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "Bye");
    id(&want, GPO_TOK_END);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    assert_int_equal(ids.n, want.n);
    assert_memory_equal(ids.ids, want.ids, want.n * sizeof *want.ids);
    gpo_ids_free(&want);
    gpo_ids_free(&ids);

    /* Tool turns cannot be built; the conversation is left empty. */
    struct gpo_chat_turn t3[] = {{GPO_ROLE_USER, "x"}, {GPO_ROLE_TOOL, "y"}};
    gpo_conv_free(&c);
    assert_int_equal(gpo_conv_build(&c, NULL, GPO_REASONING_DEFAULT, NULL, t3, 2), GPO_ERR_ARG);
    assert_int_equal(c.n, 0);
    gpo_conv_free(&c);
}

/* Tool call and tool result rendering (spec 6.1, 6.4), the constrain token, and
 * system fields other than the defaults. */
static void test_render_tools(void **state) {
    (void)state;
    struct gpo_ids got = {0}, want = {0};
    struct gpo_hmsg call = {.role = GPO_ROLE_ASSISTANT,
                            .channel = "commentary",
                            .recipient = "functions.get_weather",
                            .content_type = "<|constrain|>json",
                            .content = "{\"location\":\"Tokyo\"}"};
    assert_int_equal(gpo_harmony_render_message(tok, &call, 0, &got), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    text(&want, " to=functions.get_weather");
    id(&want, GPO_TOK_CHANNEL);
    text(&want, "commentary");
    text(&want, " ");
    id(&want, GPO_TOK_CONSTRAIN);
    text(&want, "json");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "{\"location\":\"Tokyo\"}");
    id(&want, GPO_TOK_CALL); /* an assistant message with a recipient is a call */
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);
    /* commentary is two tokens (spec 6.5). */
    assert_int_equal(got.ids[8], 12606);
    assert_int_equal(got.ids[9], 815);
    got.n = want.n = 0;

    struct gpo_hmsg result = {.role = GPO_ROLE_TOOL,
                              .name = "functions.get_weather",
                              .recipient = "assistant",
                              .channel = "commentary",
                              .content = "{\"sunny\": true}"};
    assert_int_equal(gpo_harmony_render_message(tok, &result, 0, &got), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "functions.get_weather");
    text(&want, " to=assistant");
    id(&want, GPO_TOK_CHANNEL);
    text(&want, "commentary");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "{\"sunny\": true}");
    id(&want, GPO_TOK_END);
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);
    got.n = want.n = 0;

    /* A plain content type is " " + type as one text piece. */
    struct gpo_hmsg typed = {.role = GPO_ROLE_USER, .content_type = "json", .content = "{}"};
    assert_int_equal(gpo_harmony_render_message(tok, &typed, 0, &got), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "user");
    text(&want, " json");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "{}");
    id(&want, GPO_TOK_END);
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);
    got.n = want.n = 0;

    /* System fields: custom identity, no cutoff, no reasoning, custom channels,
     * function tools line; a tool message without a name is refused. */
    struct gpo_hmsg sys = {.role = GPO_ROLE_SYSTEM};
    sys.sys.model_identity = "You are a test.";
    sys.sys.knowledge_cutoff = "";
    sys.sys.current_date = "2030-01-02";
    sys.sys.reasoning = GPO_REASONING_NONE;
    sys.sys.valid_channels = "final";
    sys.sys.channel_optional = 1;
    assert_int_equal(gpo_harmony_render_message(tok, &sys, 1, &got), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "system");
    id(&want, GPO_TOK_MESSAGE);
    text(&want, "You are a test.\nCurrent date: 2030-01-02\n\n# Valid channels: final.\nCalls "
                "to these tools must go to the commentary channel: 'functions'.");
    id(&want, GPO_TOK_END);
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);

    struct gpo_hmsg noname = {.role = GPO_ROLE_TOOL, .content = "x"};
    assert_int_equal(gpo_harmony_render_message(tok, &noname, 0, &got), GPO_ERR_ARG);
    gpo_ids_free(&got);
    gpo_ids_free(&want);
}

/* auto_drop_analysis: only analysis before the FIRST final, only when the last
 * assistant message is final. */
static void test_auto_drop(void **state) {
    (void)state;
    struct gpo_conv c;
    gpo_conv_init(&c);
    struct gpo_hmsg a1 = {.role = GPO_ROLE_ASSISTANT, .channel = "analysis", .content = "think1"};
    struct gpo_hmsg f1 = {.role = GPO_ROLE_ASSISTANT, .channel = "final", .content = "ans1"};
    struct gpo_hmsg a2 = {.role = GPO_ROLE_ASSISTANT, .channel = "analysis", .content = "think2"};
    struct gpo_hmsg f2 = {.role = GPO_ROLE_ASSISTANT, .channel = "final", .content = "ans2"};
    assert_int_equal(gpo_conv_add_text(&c, GPO_ROLE_USER, "q1"), GPO_OK);
    assert_int_equal(gpo_conv_add(&c, &a1), GPO_OK);
    assert_int_equal(gpo_conv_add(&c, &f1), GPO_OK);
    assert_int_equal(gpo_conv_add_text(&c, GPO_ROLE_USER, "q2"), GPO_OK);
    assert_int_equal(gpo_conv_add(&c, &a2), GPO_OK);
    assert_int_equal(gpo_conv_add(&c, &f2), GPO_OK);

    struct gpo_ids got = {0}, want = {0};
    assert_int_equal(gpo_harmony_render(tok, &c, &got), GPO_OK);
    /* think1 dropped, think2 (between two finals) kept. */
    size_t keep[] = {0, 2, 3, 4, 5};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(gpo_harmony_render_message(tok, &c.msgs[keep[i]], 0, &want), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);

    /* The last assistant message is analysis: nothing is dropped. */
    gpo_conv_truncate(&c, 5);
    got.n = want.n = 0;
    assert_int_equal(gpo_harmony_render(tok, &c, &got), GPO_OK);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(gpo_harmony_render_message(tok, &c.msgs[i], 0, &want), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);

    /* auto_drop_analysis off keeps everything. */
    assert_int_equal(gpo_conv_add(&c, &f2), GPO_OK);
    c.auto_drop_analysis = 0;
    got.n = want.n = 0;
    assert_int_equal(gpo_harmony_render(tok, &c, &got), GPO_OK);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(gpo_harmony_render_message(tok, &c.msgs[i], 0, &want), GPO_OK);
    id(&want, GPO_TOK_START);
    text(&want, "assistant");
    assert_int_equal(got.n, want.n);
    assert_memory_equal(got.ids, want.ids, want.n * sizeof *want.ids);
    gpo_ids_free(&got);
    gpo_ids_free(&want);
    gpo_conv_free(&c);
}

static void expect_json_error(const char *json, const char *fragment) {
    struct gpo_conv c;
    enum gpo_status st = gpo_conv_from_json(json, strlen(json), &c);
    if (st != GPO_ERR_JSON) fail_msg("%s: status %s, want GPO_ERR_JSON", json, gpo_status_name(st));
    if (!strstr(gpo_last_error(), fragment))
        fail_msg("%s: message \"%s\" lacks \"%s\"", json, gpo_last_error(), fragment);
    assert_int_equal(c.n, 0);
    gpo_conv_free(&c);
}

static void test_json_errors(void **state) {
    (void)state;
    expect_json_error("{\"messages\": [", "malformed JSON");
    expect_json_error("[1, 2]", "top level must be an object");
    expect_json_error("{}", "no \"messages\"");
    expect_json_error("{\"messages\": {}}", "must be an array");
    expect_json_error("{\"messages\": [42]}", "messages[0] must be an object");
    expect_json_error("{\"messages\": [{\"content\": \"x\"}]}", "messages[0] has no role");
    expect_json_error("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}",
                      "unknown role \"bot\"");
    expect_json_error("{\"messages\": [{\"role\": 3, \"content\": \"x\"}]}", "role must be a string");
    expect_json_error("{\"messages\": [{\"role\": \"user\"}]}", "messages[0] (user) has no content");
    expect_json_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                      "{\"role\": \"user\", \"content\": 5}]}",
                      "messages[1].content must be a string");
    expect_json_error("{\"messages\": [{\"role\": \"system\", \"reasoning_effort\": \"max\"}]}",
                      "reasoning_effort \"max\"");
    expect_json_error("{\"messages\": [{\"role\": \"system\", \"content\": \"hi\"}]}",
                      "unexpected field \"content\"");
    expect_json_error("{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"chanel\": \"f\"}]}",
                      "unexpected field \"chanel\"");
    expect_json_error("{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "needs a non-empty name");
    expect_json_error("{\"messages\": [], \"auto_drop_analysis\": 1}", "auto_drop_analysis");
    expect_json_error("{\"messages\": [{\"role\": \"system\", \"valid_channels\": [\"a\", 2]}]}",
                      "valid_channels[1]");

    /* A valid object with every optional field. */
    const char *ok = "{\"messages\": [{\"role\": \"system\", \"reasoning_effort\": \"high\", "
                     "\"model_identity\": null, \"valid_channels\": [\"analysis\", \"final\"], "
                     "\"channel_required\": false},"
                     "{\"role\": \"developer\", \"content\": \"Be brief.\"},"
                     "{\"role\": \"assistant\", \"channel\": \"commentary\", \"recipient\": "
                     "\"functions.f\", \"content_type\": \"<|constrain|>json\", \"content\": \"{}\"},"
                     "{\"role\": \"tool\", \"name\": \"functions.f\", \"recipient\": \"assistant\", "
                     "\"channel\": \"commentary\", \"content\": \"42\"}], "
                     "\"auto_drop_analysis\": false, \"name\": \"ignored\"}";
    struct gpo_conv c;
    assert_int_equal(gpo_conv_from_json(ok, strlen(ok), &c), GPO_OK);
    assert_int_equal(c.n, 4);
    assert_int_equal(c.auto_drop_analysis, 0);
    assert_int_equal(c.msgs[0].sys.reasoning, GPO_REASONING_HIGH);
    assert_string_equal(c.msgs[0].sys.model_identity, "");
    assert_string_equal(c.msgs[0].sys.valid_channels, "analysis, final");
    assert_int_equal(c.msgs[0].sys.channel_optional, 1);
    assert_string_equal(c.msgs[1].content, "Be brief.");
    assert_string_equal(c.msgs[2].recipient, "functions.f");
    assert_string_equal(c.msgs[2].content_type, "<|constrain|>json");
    assert_string_equal(c.msgs[3].name, "functions.f");
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_harmony_render(tok, &c, &ids), GPO_OK);
    assert_true(ids.n > 20);
    gpo_ids_free(&ids);
    gpo_conv_free(&c);
}

/* ------------------------------------------------------------------------- */
/* Parser                                                                    */

/* The spec 6.5 expected output: analysis, then final, then <|return|>. */
static void test_parse_spec_output(void **state) {
    (void)state;
    static const int32_t out[] = {200005, 35644, 200008, 1844,  31064,  25,     392,   4827,  382,
                                  220,    17,    659,    220,   17,     16842,  12295, 81645, 13,
                                  51441,  6052,  13,     200007, 200006, 173781, 200005, 17196,
                                  200008, 17,    659,    220,   17,     314,    220,   19,    13,
                                  200002};
    struct run r;
    run_ids(&r, out, sizeof out / sizeof *out, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 2);
    assert_msg(gpo_hparser_message(r.p, 0), "analysis", NULL, NULL,
               "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.", GPO_TOK_END);
    assert_msg(gpo_hparser_message(r.p, 1), "final", NULL, NULL, "2 + 2 = 4.", GPO_TOK_RETURN);
    assert_int_equal(gpo_hparser_message(r.p, 0)->channel, GPO_CH_ANALYSIS);
    assert_int_equal(gpo_hparser_message(r.p, 1)->channel, GPO_CH_FINAL);
    assert_int_equal(gpo_hparser_message(r.p, 1)->msg.role, GPO_ROLE_ASSISTANT);
    assert_string_equal(chan_text(&r, GPO_CH_FINAL), "2 + 2 = 4.");
    assert_string_equal(chan_text(&r, GPO_CH_ANALYSIS),
                        "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.");
    assert_int_equal(r.n_started, 2);
    assert_int_equal(r.n_done, 2);
    assert_true(r.turn_done);
    assert_true(gpo_hparser_done(r.p));
    assert_int_equal(gpo_hparser_end_token(r.p), GPO_TOK_RETURN);
    assert_false(gpo_hparser_recovered(r.p));
    assert_int_equal(r.recovered_events, 0);

    /* Tokens after the end of the turn are ignored. */
    struct gpo_hevent ev;
    assert_int_equal(gpo_hparser_push(r.p, 17, &ev), GPO_OK);
    assert_int_equal(ev.text_len, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 2);

    /* History for the next turn: without analysis, rendered with <|end|>. */
    struct gpo_conv c;
    gpo_conv_init(&c);
    assert_int_equal(gpo_hparser_to_conv(r.p, &c, 0), GPO_OK);
    assert_int_equal(c.n, 1);
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_harmony_render_message(tok, &c.msgs[0], 0, &ids), GPO_OK);
    static const int32_t hist[] = {200006, 173781, 200005, 17196, 200008, 17, 659,
                                   220,    17,     314,    220,   19,     13, 200007};
    assert_int_equal(ids.n, sizeof hist / sizeof *hist);
    assert_memory_equal(ids.ids, hist, sizeof hist);
    gpo_ids_free(&ids);
    gpo_conv_free(&c);
    assert_int_equal(gpo_hparser_to_conv(r.p, &c, 1), GPO_OK);
    assert_int_equal(c.n, 2);
    gpo_conv_free(&c);

    /* reset starts a fresh turn. */
    gpo_hparser_reset(r.p);
    assert_int_equal(gpo_hparser_n_messages(r.p), 0);
    assert_false(gpo_hparser_done(r.p));
    assert_int_equal(gpo_hparser_push(r.p, GPO_TOK_CHANNEL, &ev), GPO_OK);
    assert_int_equal(ev.msg, -1);
    run_free(&r);
}

static void test_parse_tool_call(void **state) {
    (void)state;
    const char *args = "{\"location\":\"San Francisco\"}";
    for (int variant = 0; variant < 3; variant++) {
        struct gpo_ids ids = {0};
        id(&ids, GPO_TOK_CHANNEL);
        text(&ids, "analysis");
        id(&ids, GPO_TOK_MESSAGE);
        text(&ids, "Need weather.");
        id(&ids, GPO_TOK_END);
        id(&ids, GPO_TOK_START);
        text(&ids, "assistant");
        if (variant == 0) {
            /* recipient before the channel, as harmony renders it */
            text(&ids, " to=functions.get_weather");
            id(&ids, GPO_TOK_CHANNEL);
            text(&ids, "commentary");
            text(&ids, " ");
        } else if (variant == 1) {
            /* recipient after the channel, as the model often writes it */
            id(&ids, GPO_TOK_CHANNEL);
            text(&ids, "commentary to=functions.get_weather ");
        } else {
            /* no space before <|constrain|> */
            id(&ids, GPO_TOK_CHANNEL);
            text(&ids, "commentary");
            text(&ids, " to=functions.get_weather");
        }
        id(&ids, GPO_TOK_CONSTRAIN);
        text(&ids, "json");
        id(&ids, GPO_TOK_MESSAGE);
        text(&ids, args);
        id(&ids, GPO_TOK_CALL);

        struct run r;
        run_ids(&r, ids.ids, ids.n, 0);
        assert_int_equal(gpo_hparser_n_messages(r.p), 2);
        assert_msg(gpo_hparser_message(r.p, 0), "analysis", NULL, NULL, "Need weather.",
                   GPO_TOK_END);
        const struct gpo_hparsed *m = gpo_hparser_message(r.p, 1);
        assert_msg(m, "commentary", "functions.get_weather", "<|constrain|>json", args,
                   GPO_TOK_CALL);
        assert_int_equal(m->channel, GPO_CH_COMMENTARY);
        assert_int_equal(m->msg.role, GPO_ROLE_ASSISTANT);
        assert_true(r.turn_done);
        assert_int_equal(gpo_hparser_end_token(r.p), GPO_TOK_CALL);
        assert_false(gpo_hparser_recovered(r.p));
        assert_string_equal(chan_text(&r, GPO_CH_COMMENTARY), args);

        /* The call renders back into history with <|call|>. */
        struct gpo_conv c;
        gpo_conv_init(&c);
        assert_int_equal(gpo_hparser_to_conv(r.p, &c, 1), GPO_OK);
        assert_int_equal(c.n, 2);
        struct gpo_ids back = {0};
        assert_int_equal(gpo_harmony_render_message(tok, &c.msgs[1], 0, &back), GPO_OK);
        assert_int_equal(back.ids[back.n - 1], GPO_TOK_CALL);
        if (variant == 0) {
            /* Identical to what the model produced after "<|start|>". */
            size_t off = ids.n - back.n;
            assert_memory_equal(back.ids, ids.ids + off, back.n * sizeof *back.ids);
        }
        gpo_ids_free(&back);
        gpo_conv_free(&c);
        run_free(&r);
        gpo_ids_free(&ids);
    }

    /* The first header may carry the recipient too ("<|start|>assistant" came from
     * the prompt). */
    struct gpo_ids ids = {0};
    text(&ids, " to=functions.lookup");
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "commentary json");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "{}");
    id(&ids, GPO_TOK_CALL);
    struct run r;
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "commentary", "functions.lookup", "json", "{}",
               GPO_TOK_CALL);
    assert_false(gpo_hparser_recovered(r.p));
    run_free(&r);
    gpo_ids_free(&ids);
}

static void test_parse_truncated(void **state) {
    (void)state;
    struct gpo_ids ids = {0};
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "analysis");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "Thinking about it");
    struct run r;
    run_ids(&r, ids.ids, ids.n, 0);
    /* While open, the message is visible but not complete. */
    const struct gpo_hparsed *m = gpo_hparser_message(r.p, 0);
    assert_non_null(m);
    assert_false(m->complete);
    assert_string_equal(m->msg.content, "Thinking about it");
    assert_false(gpo_hparser_done(r.p));
    struct gpo_hevent ev;
    assert_int_equal(gpo_hparser_finish(r.p, &ev), GPO_OK);
    assert_true(ev.msg_done);
    m = gpo_hparser_message(r.p, 0);
    assert_true(m->complete);
    assert_int_equal(m->end_token, -1);
    assert_false(gpo_hparser_done(r.p));
    assert_false(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* Cut off inside a header: the partial header is dropped. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "analysis");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "ok");
    id(&ids, GPO_TOK_END);
    id(&ids, GPO_TOK_START);
    text(&ids, "assistant");
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "fin");
    run_ids(&r, ids.ids, ids.n, 1);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "analysis", NULL, NULL, "ok", GPO_TOK_END);
    assert_false(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* Cut off in the middle of a UTF-8 character: finish emits U+FFFD, never
     * broken bytes. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "final");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "x");
    id(&ids, 4103); /* first two bytes of U+1FAE0 */
    run_ids(&r, ids.ids, ids.n, 1);
    m = gpo_hparser_message(r.p, 0);
    assert_string_equal(m->msg.content, "x\xef\xbf\xbd");
    assert_string_equal(chan_text(&r, GPO_CH_FINAL), "x\xef\xbf\xbd");
    run_free(&r);
    gpo_ids_free(&ids);
}

static void test_parse_malformed(void **state) {
    (void)state;
    struct gpo_ids ids = {0};
    struct run r;

    /* 1. Content where a header is expected: no header at all. */
    text(&ids, "Hello there.\nSecond line.");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, "Hello there.\nSecond line.",
               GPO_TOK_RETURN);
    assert_true(gpo_hparser_message(r.p, 0)->recovered);
    assert_true(gpo_hparser_recovered(r.p));
    assert_true(r.recovered_events > 0);
    assert_true(r.turn_done);
    assert_string_equal(chan_text(&r, GPO_CH_FINAL), "Hello there.\nSecond line.");
    run_free(&r);

    /* 2. <|message|> missing: the header runs into an end token. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "final 2 + 2 = 4");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, "final 2 + 2 = 4",
               GPO_TOK_RETURN);
    assert_true(gpo_hparser_recovered(r.p));
    assert_true(gpo_hparser_done(r.p));
    run_free(&r);

    /* 3. An unknown special (reserved 200004) inside a header, then content. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "analysis");
    id(&ids, 200004);
    text(&ids, "still talking");
    id(&ids, GPO_TOK_END);
    run_ids(&r, ids.ids, ids.n, 1);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, "analysisstill talking",
               GPO_TOK_END);
    assert_true(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* 4. Text after <|end|> without <|start|>, then a well-formed message again. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "analysis");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "think");
    id(&ids, GPO_TOK_END);
    text(&ids, "The answer is 4.");
    id(&ids, GPO_TOK_END);
    id(&ids, GPO_TOK_START);
    text(&ids, "assistant");
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "final");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "4");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 3);
    assert_msg(gpo_hparser_message(r.p, 0), "analysis", NULL, NULL, "think", GPO_TOK_END);
    assert_false(gpo_hparser_message(r.p, 0)->recovered);
    assert_msg(gpo_hparser_message(r.p, 1), "final", NULL, NULL, "The answer is 4.", GPO_TOK_END);
    assert_true(gpo_hparser_message(r.p, 1)->recovered);
    assert_msg(gpo_hparser_message(r.p, 2), "final", NULL, NULL, "4", GPO_TOK_RETURN);
    assert_false(gpo_hparser_message(r.p, 2)->recovered);
    assert_true(gpo_hparser_recovered(r.p));
    assert_string_equal(chan_text(&r, GPO_CH_FINAL), "The answer is 4.4");
    assert_string_equal(chan_text(&r, GPO_CH_ANALYSIS), "think");
    run_free(&r);

    /* 5. Empty channel name: the content after <|message|> is kept as final. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "text");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, "text", GPO_TOK_RETURN);
    assert_true(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* 6. Plain text then the stream ends (no stop token at all). */
    ids.n = 0;
    text(&ids, " just words");
    run_ids(&r, ids.ids, ids.n, 1);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, " just words", -1);
    assert_true(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* 7. <|start|> inside content closes the message; specials inside content are
     * dropped; the model skipping "<|start|>assistant" after <|end|> is accepted. */
    ids.n = 0;
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "analysis");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "a");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "b");
    id(&ids, GPO_TOK_START);
    text(&ids, "assistant");
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "commentary");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "c");
    id(&ids, GPO_TOK_END);
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "final");
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "d");
    id(&ids, 200500); /* outside the tokenizer: an unknown special */
    id(&ids, GPO_TOK_ENDOFTEXT);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 3);
    assert_msg(gpo_hparser_message(r.p, 0), "analysis", NULL, NULL, "ab", -1);
    assert_true(gpo_hparser_message(r.p, 0)->complete);
    assert_msg(gpo_hparser_message(r.p, 1), "commentary", NULL, NULL, "c", GPO_TOK_END);
    assert_msg(gpo_hparser_message(r.p, 2), "final", NULL, NULL, "d", GPO_TOK_ENDOFTEXT);
    assert_true(gpo_hparser_done(r.p));
    assert_true(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* 8. An assistant message without a channel is shown as the answer. */
    ids.n = 0;
    id(&ids, GPO_TOK_MESSAGE);
    text(&ids, "Hi!");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_msg(gpo_hparser_message(r.p, 0), "final", NULL, NULL, "Hi!", GPO_TOK_RETURN);
    assert_true(gpo_hparser_message(r.p, 0)->recovered);
    assert_string_equal(chan_text(&r, GPO_CH_FINAL), "Hi!");
    run_free(&r);

    /* 9. A very long header (no newline, no special) is taken for text. */
    ids.n = 0;
    for (int i = 0; i < 100; i++) text(&ids, " word");
    id(&ids, GPO_TOK_RETURN);
    run_ids(&r, ids.ids, ids.n, 0);
    assert_int_equal(gpo_hparser_n_messages(r.p), 1);
    assert_int_equal(gpo_hparser_message(r.p, 0)->content_len, 500);
    assert_true(gpo_hparser_recovered(r.p));
    run_free(&r);

    /* A negative id is an error, not a recovery. */
    gpo_hparser *p;
    assert_int_equal(gpo_hparser_create(tok, &p), GPO_OK);
    assert_int_equal(gpo_hparser_push(p, -5, NULL), GPO_ERR_TOKEN);
    gpo_hparser_free(p);
    gpo_ids_free(&ids);
}

/* A character split across tokens never shows up half in a streamed event. */
static void test_parse_utf8_split(void **state) {
    (void)state;
    const char *s = "Melting \xf0\x9f\xab\xa0 face \xe4\xb6\xb5!";
    struct gpo_ids ids = {0};
    id(&ids, GPO_TOK_CHANNEL);
    text(&ids, "final");
    id(&ids, GPO_TOK_MESSAGE);
    size_t c0 = ids.n;
    text(&ids, s);
    size_t c1 = ids.n;
    id(&ids, GPO_TOK_RETURN);

    /* The test is only meaningful if some content token ends inside a character. */
    int split = 0;
    for (size_t i = c0; i < c1; i++) {
        const char *b;
        size_t l;
        assert_int_equal(gpo_tokenizer_token_bytes(tok, ids.ids[i], &b, &l), GPO_OK);
        if (!gpo_utf8_valid(b, l)) split = 1;
    }
    assert_true(split);

    gpo_hparser *p;
    assert_int_equal(gpo_hparser_create(tok, &p), GPO_OK);
    struct gpo_str all = {0};
    int n_events = 0;
    for (size_t i = 0; i < ids.n; i++) {
        struct gpo_hevent ev;
        assert_int_equal(gpo_hparser_push(p, ids.ids[i], &ev), GPO_OK);
        /* Every streamed piece is complete UTF-8 on its own. */
        assert_true(gpo_utf8_valid(ev.text, ev.text_len));
        if (ev.text_len) {
            n_events++;
            assert_int_equal(ev.channel, GPO_CH_FINAL);
            assert_int_equal(gpo_str_append(&all, ev.text, ev.text_len), GPO_OK);
        }
    }
    assert_true(n_events >= 3);
    assert_string_equal(all.s, s);
    assert_string_equal(gpo_hparser_message(p, 0)->msg.content, s);
    assert_false(gpo_hparser_recovered(p));
    gpo_str_free(&all);
    gpo_hparser_free(p);
    gpo_ids_free(&ids);
}

/* Random streams of formatting tokens, text and partial UTF-8 never fail, and
 * every streamed piece and every message stays valid UTF-8. */
static void test_parse_random(void **state) {
    (void)state;
    static const int32_t pool[] = {
        GPO_TOK_CHANNEL, GPO_TOK_MESSAGE, GPO_TOK_START, GPO_TOK_END, GPO_TOK_CONSTRAIN,
        GPO_TOK_RETURN, GPO_TOK_CALL, GPO_TOK_ENDOFTEXT, 200004, 200500, 173781, 35644,
        17196, 12606, 815, 316, 28, 4108, 220, 198, 17, 4103, 104, 254, 160, 114, 113, 1844};
    const size_t n_pool = sizeof pool / sizeof *pool;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    gpo_hparser *p;
    assert_int_equal(gpo_hparser_create(tok, &p), GPO_OK);
    for (int round = 0; round < 2000; round++) {
        gpo_hparser_reset(p);
        int len = 1 + round % 40;
        for (int i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            struct gpo_hevent ev;
            assert_int_equal(gpo_hparser_push(p, pool[x % n_pool], &ev), GPO_OK);
            assert_true(gpo_utf8_valid(ev.text, ev.text_len));
            if (ev.text_len) assert_true(ev.msg >= 0 && (size_t)ev.msg < gpo_hparser_n_messages(p));
        }
        struct gpo_hevent ev;
        assert_int_equal(gpo_hparser_finish(p, &ev), GPO_OK);
        assert_true(gpo_utf8_valid(ev.text, ev.text_len));
        for (size_t m = 0; m < gpo_hparser_n_messages(p); m++) {
            const struct gpo_hparsed *pm = gpo_hparser_message(p, m);
            assert_true(pm->complete);
            assert_true(gpo_utf8_valid(pm->msg.content, pm->content_len));
        }
        /* What the parser produced can be rendered back. */
        struct gpo_conv c;
        gpo_conv_init(&c);
        assert_int_equal(gpo_hparser_to_conv(p, &c, 1), GPO_OK);
        struct gpo_ids ids = {0};
        assert_int_equal(gpo_harmony_render(tok, &c, &ids), GPO_OK);
        gpo_ids_free(&ids);
        gpo_conv_free(&c);
    }
    gpo_hparser_free(p);
}

static void test_names(void **state) {
    (void)state;
    assert_string_equal(gpo_role_name(GPO_ROLE_DEVELOPER), "developer");
    assert_int_equal(gpo_role_parse("assistant", 9), GPO_ROLE_ASSISTANT);
    assert_int_equal(gpo_role_parse("assist", 6), -1);
    assert_int_equal(gpo_reasoning_parse("high"), GPO_REASONING_HIGH);
    assert_int_equal(gpo_reasoning_parse("extreme"), -1);
    assert_string_equal(gpo_reasoning_name(GPO_REASONING_DEFAULT), "medium");
    assert_int_equal(gpo_hchannel_of("final"), GPO_CH_FINAL);
    assert_int_equal(gpo_hchannel_of("summary"), GPO_CH_OTHER);
    assert_int_equal(gpo_hchannel_of(NULL), GPO_CH_NONE);
    char today[11];
    gpo_harmony_today(today);
    assert_int_equal(strlen(today), 10);
    assert_int_equal(today[4], '-');
    assert_int_equal(today[7], '-');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_cases),     cmocka_unit_test(test_builder),
        cmocka_unit_test(test_render_tools),      cmocka_unit_test(test_auto_drop),
        cmocka_unit_test(test_json_errors),       cmocka_unit_test(test_parse_spec_output),
        cmocka_unit_test(test_parse_tool_call),   cmocka_unit_test(test_parse_truncated),
        cmocka_unit_test(test_parse_malformed),   cmocka_unit_test(test_parse_utf8_split),
        cmocka_unit_test(test_parse_random),      cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
