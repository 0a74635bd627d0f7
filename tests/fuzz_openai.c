/* fuzz_openai.c - libFuzzer target for the request-body handling of `gptoss
 * serve` (app/openai.c, `make fuzz`): each input is a /v1/chat/completions body
 * (oai_parse_chat, oai_build_conv and the harmony renderer with the real
 * tokenizer, as a server handler does) and a /v1/completions body
 * (oai_parse_completion, the prompt text encoded as the server does).  Any body must either be refused with a
 * filled OpenAI error (4xx naming a message, an error object that is valid JSON)
 * or give a request whose fields lie in their documented ranges, whose turns
 * are valid UTF-8 text, and whose conversation renders into ids of the
 * vocabulary (a render failure is a 400 as well, never a crash).  The answer
 * objects built from the parsed text must be JSON that parses back to it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz_common.h"
#include "openai.h"
#include "util.h"

static const gpo_tokenizer *tok;
static struct gpo_sampler_params defaults;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_tokenizer();
    gpo_sampler_params_default(&defaults);
    return 0;
}

static void check_error(const struct oai_error *e) {
    FUZZ_CHECK(e->http == 400 || e->http == 500);
    FUZZ_CHECK(e->message[0] != 0 && e->type != NULL);
    char *js = oai_error_json(e);
    FUZZ_CHECK(js != NULL);
    cJSON *root = cJSON_Parse(js);
    FUZZ_CHECK(root != NULL);
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "error"), "message");
    FUZZ_CHECK(cJSON_IsString(msg));
    cJSON_Delete(root);
    free(js);
}

static void check_fields(const struct oai_chat *c) {
    FUZZ_CHECK(c->n_turns >= 1 && c->n_turns <= c->n_extra && c->turns && c->extra);
    for (size_t i = 0; i < c->n_turns; i++) {
        const char *s = c->turns[i].content;
        FUZZ_CHECK(s != NULL && gpo_utf8_valid(s, strlen(s)));
        FUZZ_CHECK(c->turns[i].role == GPO_ROLE_ASSISTANT || c->extra[i].n_calls == 0);
        FUZZ_CHECK(c->turns[i].role != GPO_ROLE_TOOL || c->extra[i].tool_name != NULL);
    }
    FUZZ_CHECK(c->n_stops <= OAI_MAX_STOPS);
    for (size_t i = 0; i < c->n_stops; i++) FUZZ_CHECK(c->stops[i] != NULL);
    FUZZ_CHECK(c->sp.temperature >= 0 && c->sp.temperature <= 2);
    FUZZ_CHECK(c->sp.top_p > 0 && c->sp.top_p <= 1);
    FUZZ_CHECK(c->max_tokens >= 0 && c->max_tokens <= ((int64_t)1 << 30));
    FUZZ_CHECK(c->reasoning >= GPO_REASONING_LOW && c->reasoning <= GPO_REASONING_HIGH);
}

/* The answer objects built from the request's text parse back to that text. */
static void check_answer(const struct oai_chat *c) {
    const char *text = c->turns[c->n_turns - 1].content;
    size_t n = oai_utf8_whole(text, strlen(text));
    FUZZ_CHECK(n == strlen(text));
    struct oai_result r = {.id = "chatcmpl-fuzz", .model = c->model ? c->model : "m",
                           .content = text, .content_len = n, .finish = "stop",
                           .prompt_tokens = 1, .completion_tokens = 1};
    char *js = oai_chat_response_json(&r);
    FUZZ_CHECK(js != NULL);
    cJSON *root = cJSON_Parse(js);
    FUZZ_CHECK(root != NULL);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ch, "message"), "content");
    FUZZ_CHECK(cJSON_IsString(content) && !strcmp(content->valuestring, text));
    cJSON_Delete(root);
    free(js);
    char *sse = oai_chat_chunk_sse(&r, 1, text, n, NULL, 0, 0, NULL, 0);
    FUZZ_CHECK(sse != NULL && !strncmp(sse, "data: ", 6));
    size_t len = strlen(sse);
    FUZZ_CHECK(len >= 8 && !strcmp(sse + len - 2, "\n\n"));
    sse[len - 2] = 0;
    root = cJSON_Parse(sse + 6);
    FUZZ_CHECK(root != NULL);
    cJSON_Delete(root);
    free(sse);
}

static void check_render(const struct oai_chat *c) {
    struct gpo_conv conv;
    gpo_conv_init(&conv);
    enum gpo_status s = oai_build_conv(c, "Be brief.", "2025-06-28", &conv);
    struct gpo_ids ids = {0};
    if (s == GPO_OK) s = gpo_harmony_render(tok, &conv, &ids);
    /* A refusal is answered as a 400 with the library's message. */
    FUZZ_CHECK(s == GPO_OK || gpo_last_error()[0] != 0);
    if (s == GPO_OK) {
        int32_t nt = gpo_tokenizer_n_tokens(tok);
        FUZZ_CHECK(ids.n > 0);
        for (size_t i = 0; i < ids.n; i++) FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < nt);
    }
    gpo_ids_free(&ids);
    gpo_conv_free(&conv);
}

static void fuzz_chat(const char *body, size_t size) {
    struct oai_chat c;
    struct oai_error e;
    memset(&e, 0, sizeof e);
    if (oai_parse_chat(body, size, &defaults, GPO_REASONING_MEDIUM, &c, &e)) {
        check_error(&e);
        /* Nothing is left owned after a refusal. */
        FUZZ_CHECK(c.turns == NULL && c.n_turns == 0 && c.tools == NULL);
        return;
    }
    check_fields(&c);
    check_answer(&c);
    check_render(&c);
    oai_chat_free(&c);
}

/* A legacy completion: a text prompt (valid UTF-8, encoded into the vocabulary)
 * or non-negative ids (the engine checks them against the vocabulary). */
static void fuzz_completion(const char *body, size_t size) {
    struct oai_completion c;
    struct oai_error e;
    memset(&e, 0, sizeof e);
    if (oai_parse_completion(body, size, &defaults, &c, &e)) {
        check_error(&e);
        FUZZ_CHECK(c.prompt == NULL && c.prompt_ids == NULL);
        return;
    }
    FUZZ_CHECK((c.prompt != NULL) != (c.n_prompt_ids > 0));
    for (size_t i = 0; i < c.n_prompt_ids; i++) FUZZ_CHECK(c.prompt_ids[i] >= 0);
    FUZZ_CHECK(c.logprobs >= -1 && c.logprobs <= OAI_MAX_LEGACY_LOGPROBS);
    FUZZ_CHECK(c.max_tokens >= 0 && c.n_stops <= OAI_MAX_STOPS);
    FUZZ_CHECK(c.sp.temperature >= 0 && c.sp.temperature <= 2);
    if (c.prompt) {
        FUZZ_CHECK(gpo_utf8_valid(c.prompt, strlen(c.prompt)));
        struct gpo_ids ids = {0};
        if (gpo_tokenizer_encode(tok, c.prompt, strlen(c.prompt), 0, &ids) == GPO_OK)
            for (size_t i = 0; i < ids.n; i++)
                FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < gpo_tokenizer_n_tokens(tok));
        gpo_ids_free(&ids);
    }
    oai_completion_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_chat((const char *)data, size);
    fuzz_completion((const char *)data, size);
    return 0;
}
