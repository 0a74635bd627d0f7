/* test_engine_api.c - what a submitted request can ask of the engine beyond
 * tokens, on a tiny random-weight model: the sampler's log-probabilities of
 * every generated token (checked against the softmax of the model's own logits),
 * nothing recorded when they are not asked for, and a prompt that ends inside an
 * assistant header the parser is told about (a forced tool call). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gpo.h"
#include "test_common.h"

static struct tiny_env g_env; /* the model and the tokenizer */
static gpo_model *g_model;
static gpo_tokenizer *g_tok;

static int setup(void **state) {
    (void)state;
    if (tiny_env_open(&g_env, "engine_api") != 0) return -1;
    g_model = g_env.model;
    g_tok = g_env.tok;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    return tiny_env_close(&g_env);
}

static void render_prompt(const char *text, struct gpo_ids *out) {
    struct gpo_conv conv;
    gpo_conv_init(&conv);
    struct gpo_chat_turn turn = {GPO_ROLE_USER, text};
    assert_int_equal(gpo_conv_build(&conv, NULL, GPO_REASONING_LOW, "2025-01-01", &turn, 1),
                     GPO_OK);
    assert_int_equal(gpo_harmony_render(g_tok, &conv, out), GPO_OK);
    gpo_conv_free(&conv);
}

static gpo_engine *new_engine(size_t n_slots) {
    struct gpo_engine_opts eo = {.max_seq_len = 256, .ubatch = 64, .n_threads = 1,
                                 .path = GPO_PATH_FAST};
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, n_slots, &e), GPO_OK);
    return e;
}

static void run_to_end(gpo_engine *e, gpo_req *h) {
    size_t left = 1;
    for (int i = 0; i < 1000 && left; i++) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(gpo_req_state(h), GPO_REQ_DONE);
}

static struct gpo_request request(const struct gpo_ids *p, float temperature, int n_top) {
    struct gpo_request rq = {.prompt = p->ids, .n_prompt = p->n, .max_tokens = 6};
    gpo_sampler_params_default(&rq.sampling);
    rq.sampling.temperature = temperature;
    rq.sampling.seed = 11;
    rq.sampling.n_logprobs = n_top;
    rq.logprobs = 1;
    return rq;
}

/* One entry per generated token; each chosen value <= 0; top entries sorted and
 * each a probability; exp of the top entries sums to <= 1; at temperature 0 the
 * chosen id is the first top entry with the same value. */
static void test_logprobs_recorded(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    render_prompt("Hello", &p);
    gpo_engine *e = new_engine(1);
    for (int greedy = 0; greedy < 2; greedy++) {
        struct gpo_request rq = request(&p, greedy ? 0.0f : 1.0f, 5);
        gpo_req *h = NULL;
        assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_OK);
        run_to_end(e, h);
        const struct gpo_gen_user *u = gpo_req_output(h);
        assert_true(u->generated.n > 0);
        assert_int_equal(u->n_logprobs, u->generated.n);
        for (size_t i = 0; i < u->n_logprobs; i++) {
            const struct gpo_logprobs *lp = &u->logprobs[i];
            assert_true(isfinite(lp->chosen) && lp->chosen <= 0.0f);
            assert_int_equal(lp->n, 5);
            double mass = 0;
            int found = 0;
            for (int k = 0; k < lp->n; k++) {
                assert_true(lp->lps[k] <= 0.0f);
                if (k) assert_true(lp->lps[k] <= lp->lps[k - 1]);
                mass += exp((double)lp->lps[k]);
                if (lp->ids[k] == u->generated.ids[i]) {
                    assert_true(lp->lps[k] == lp->chosen);
                    found = 1;
                }
            }
            assert_true(mass <= 1.0 + 1e-5);
            if (greedy) {
                assert_int_equal(lp->ids[0], u->generated.ids[i]);
                assert_true(found);
            } else if (!found) {
                /* A token outside the top 5 is no more likely than the fifth. */
                assert_true(lp->chosen <= lp->lps[lp->n - 1]);
            }
        }
        gpo_engine_release(e, h);
    }
    gpo_engine_free(e);
    gpo_ids_free(&p);
}

/* The recorded values are the log-softmax of the model's logits for the same
 * positions (computed here from gpo_forward over the prompt and the answer). */
static void test_logprobs_match_model(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    render_prompt("Why?", &p);
    gpo_engine *e = new_engine(1);
    struct gpo_request rq = request(&p, 0.0f, 3);
    rq.max_tokens = 3;
    gpo_req *h = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_OK);
    run_to_end(e, h);
    const struct gpo_gen_user *u = gpo_req_output(h);
    assert_int_equal(u->n_logprobs, 3);

    const int64_t V = gpo_model_config(g_model)->n_vocab;
    struct gpo_ids all = {0};
    assert_int_equal(gpo_ids_append(&all, p.ids, p.n), GPO_OK);
    assert_int_equal(gpo_ids_append(&all, u->generated.ids, u->generated.n), GPO_OK);
    gpo_ctx *ctx = NULL;
    struct gpo_ctx_opts co = {.max_tokens = 256, .max_seqs = 1, .n_threads = 1,
                              .path = GPO_PATH_FAST};
    assert_int_equal(gpo_ctx_create(g_model, &co, &ctx), GPO_OK);
    gpo_kv *kv = NULL;
    assert_int_equal(gpo_kv_create(g_model, 256, &kv), GPO_OK);
    float *logits = malloc((size_t)all.n * (size_t)V * sizeof *logits);
    assert_non_null(logits);
    struct gpo_seq_batch b = {kv, all.ids, (int64_t)all.n, GPO_LOGITS_ALL};
    assert_int_equal(gpo_forward(ctx, &b, 1, logits), GPO_OK);
    uint8_t *banned = calloc((size_t)V, 1);
    assert_non_null(banned);
    gpo_sampler_harmony_mask(banned, V, gpo_tokenizer_n_tokens(g_tok));
    for (size_t i = 0; i < u->n_logprobs; i++) {
        const float *row = logits + (p.n - 1 + i) * (size_t)V;
        double mx = -INFINITY, sum = 0;
        for (int64_t v = 0; v < V; v++)
            if (!banned[v] && row[v] > mx) mx = row[v];
        for (int64_t v = 0; v < V; v++)
            if (!banned[v]) sum += exp((double)row[v] - mx);
        double want = (double)row[u->generated.ids[i]] - mx - log(sum);
        /* Batched prefill and step-by-step decoding give the same bits; the
         * sampler's float log-softmax differs from this double one by rounding. */
        assert_true(fabs(want - (double)u->logprobs[i].chosen) < 1e-3);
    }
    free(banned);
    free(logits);
    gpo_kv_free(kv);
    gpo_ctx_free(ctx);
    gpo_ids_free(&all);
    gpo_engine_release(e, h);
    gpo_engine_free(e);
    gpo_ids_free(&p);
}

static void test_no_logprobs_unless_asked(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    render_prompt("Hello", &p);
    gpo_engine *e = new_engine(1);
    struct gpo_request rq = request(&p, 0.0f, 0);
    rq.logprobs = 0;
    gpo_req *h = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_OK);
    run_to_end(e, h);
    const struct gpo_gen_user *u = gpo_req_output(h);
    assert_true(u->generated.n > 0);
    assert_int_equal(u->n_logprobs, 0);
    assert_null(u->logprobs);
    gpo_engine_release(e, h);
    gpo_engine_free(e);
    gpo_ids_free(&p);
}

/* The ids of an opened function-call header, as a forced tool call ends its
 * prompt: <|channel|>commentary to=functions.f <|constrain|>json<|message|>. */
static void call_header(struct gpo_ids *h) {
    assert_int_equal(gpo_ids_push(h, GPO_TOK_CHANNEL), GPO_OK);
    const char *txt = "commentary to=functions.f ";
    assert_int_equal(gpo_tokenizer_encode(g_tok, txt, strlen(txt), 0, h), GPO_OK);
    assert_int_equal(gpo_ids_push(h, GPO_TOK_CONSTRAIN), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(g_tok, "json", 4, 0, h), GPO_OK);
    assert_int_equal(gpo_ids_push(h, GPO_TOK_MESSAGE), GPO_OK);
}

/* With the header as parser prefix, the output is the content of a commentary
 * message to functions.f: nothing reaches the final text (without it, the same
 * tokens would be recovered into final text). */
static void test_parser_prefix(void **state) {
    (void)state;
    struct gpo_ids p = {0}, hdr = {0};
    render_prompt("Call f", &p);
    call_header(&hdr);
    assert_int_equal(gpo_ids_append(&p, hdr.ids, hdr.n), GPO_OK);
    gpo_engine *e = new_engine(2);
    gpo_req *with = NULL, *without = NULL;
    struct gpo_request rq = request(&p, 0.0f, 0);
    rq.logprobs = 0;
    rq.max_tokens = 5;
    assert_int_equal(gpo_engine_submit(e, &rq, &without), GPO_OK);
    rq.parser_prefix = hdr.ids;
    rq.n_parser_prefix = hdr.n;
    assert_int_equal(gpo_engine_submit(e, &rq, &with), GPO_OK);
    size_t left = 2;
    for (int i = 0; i < 1000 && left; i++) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    const struct gpo_gen_user *uw = gpo_req_output(with), *uo = gpo_req_output(without);
    /* The same tokens either way: the prefix changes only how they are read. */
    assert_int_equal(uw->generated.n, uo->generated.n);
    assert_memory_equal(uw->generated.ids, uo->generated.ids, uw->generated.n * sizeof(int32_t));
    assert_int_equal(uw->final_text.n, 0);
    assert_int_equal(uw->analysis_text.n, 0);

    /* Parsed again the same way, the output is one message to functions.f. */
    gpo_hparser *hp = NULL;
    assert_int_equal(gpo_hparser_create(g_tok, &hp), GPO_OK);
    for (size_t i = 0; i < hdr.n; i++)
        assert_int_equal(gpo_hparser_push(hp, hdr.ids[i], NULL), GPO_OK);
    for (size_t i = 0; i < uw->generated.n; i++)
        assert_int_equal(gpo_hparser_push(hp, uw->generated.ids[i], NULL), GPO_OK);
    if (!gpo_hparser_done(hp)) assert_int_equal(gpo_hparser_finish(hp, NULL), GPO_OK);
    assert_true(gpo_hparser_n_messages(hp) >= 1);
    const struct gpo_hparsed *m = gpo_hparser_message(hp, 0);
    assert_string_equal(m->msg.recipient, "functions.f");
    assert_int_equal(m->channel, GPO_CH_COMMENTARY);
    gpo_hparser_free(hp);

    gpo_engine_release(e, with);
    gpo_engine_release(e, without);
    gpo_engine_free(e);
    gpo_ids_free(&hdr);
    gpo_ids_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs_recorded),
        cmocka_unit_test(test_logprobs_match_model),
        cmocka_unit_test(test_no_logprobs_unless_asked),
        cmocka_unit_test(test_parser_prefix),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
