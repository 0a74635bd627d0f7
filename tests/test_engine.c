/* test_engine.c - the generation engine on a tiny random-weight model: ids the
 * tokenizer does not define are never sampled, one user's failure ends that user
 * alone, streamed text holds back what could still become a stop string, the
 * message when the KV caches do not fit counts every user, and the scheduler
 * (submit / step / cancel): answers independent of the load, chunked prefill that
 * keeps decoders going, cancellation, the queue bound, prompts over the context
 * and the choice of the slot with the longest cached prefix; and the paged KV
 * pool: preemption and recomputation giving the same tokens, queueing while the
 * pool is full, eviction of the least recently used cached prefix, refusal of a
 * prompt that can never fit, and the block accounting under a random load. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <cjson/cJSON.h>

#include "engine_policy.h"
#include "gpo.h"
#include "test_common.h"

static struct tiny_env g_env; /* the model and the tokenizer */
static gpo_model *g_model;
static gpo_tokenizer *g_tok; /* the real o200k tokenizer */

static int setup(void **state) {
    (void)state;
    if (tiny_env_open(&g_env, "engine") != 0) return -1;
    g_model = g_env.model;
    g_tok = g_env.tok;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    return tiny_env_close(&g_env);
}

/* A harmony prompt for text: system, user, then "<|start|>assistant". */
static void render_prompt(const gpo_tokenizer *t, const char *text, struct gpo_ids *out) {
    struct gpo_conv conv;
    gpo_conv_init(&conv);
    struct gpo_chat_turn turn = {GPO_ROLE_USER, text};
    assert_int_equal(gpo_conv_build(&conv, NULL, GPO_REASONING_LOW, "2025-01-01", &turn, 1), GPO_OK);
    assert_int_equal(gpo_harmony_render(t, &conv, out), GPO_OK);
    gpo_conv_free(&conv);
}

static void init_user(struct gpo_gen_user *u, const struct gpo_ids *prompt, float temperature,
                      uint64_t seed, int64_t max_tokens) {
    memset(u, 0, sizeof *u);
    u->prompt = prompt->ids;
    u->n_prompt = prompt->n;
    gpo_sampler_params_default(&u->sampling);
    u->sampling.temperature = temperature;
    u->sampling.seed = seed;
    u->max_tokens = max_tokens;
}

static gpo_engine *new_engine(const gpo_tokenizer *t, size_t n_slots, enum gpo_path path) {
    struct gpo_engine_opts eo = {.max_seq_len = 512, .ubatch = 64, .n_threads = 1, .path = path};
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, t, &eo, n_slots, &e), GPO_OK);
    return e;
}

/* ------------------------------------------------------------------------- */
/* Ids without a token                                                       */

/* GPT-2's byte-level alphabet: the character that stands for byte b. */
static unsigned byte_char(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
    return 256 + n;
}

/* A tokenizer.json with the 256 byte tokens (ids 0..255) and harmony's special
 * tokens (199998..200018): every id between is a hole. */
static void write_holey_tokenizer(const char *path) {
    static const char *specials[] = {"<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>",
        "<|reserved_200001|>", "<|return|>", "<|constrain|>", "<|reserved_200004|>", "<|channel|>",
        "<|start|>", "<|end|>", "<|message|>", "<|reserved_200009|>", "<|reserved_200010|>",
        "<|reserved_200011|>", "<|call|>", "<|reserved_200013|>", "<|reserved_200014|>",
        "<|reserved_200015|>", "<|reserved_200016|>", "<|reserved_200017|>", "<|endofprompt|>"};
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (unsigned b = 0; b < 256; b++) {
        unsigned c = byte_char(b);
        char key[4] = {0};
        if (c < 0x80) key[0] = (char)c;
        else {
            key[0] = (char)(0xc0 | (c >> 6));
            key[1] = (char)(0x80 | (c & 0x3f));
        }
        cJSON_AddNumberToObject(vocab, key, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < 21; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 199998 + i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    char *txt = cJSON_PrintUnformatted(root);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(txt, f);
    fclose(f);
    free(txt);
    cJSON_Delete(root);
}

static void test_undefined_ids_never_sampled(void **state) {
    (void)state;
    char path[300];
    snprintf(path, sizeof path, "%s/holey.json", g_env.dir);
    write_holey_tokenizer(path);
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load(path, &t), GPO_OK);
    assert_int_equal(gpo_tokenizer_n_tokens(t), 200019);
    struct gpo_ids prompt = {0};
    render_prompt(t, "Hi", &prompt);

    /* At temperature 1 nearly every draw from the random logits would be a hole. */
    enum { N = 2 };
    gpo_engine *e = new_engine(t, N, GPO_PATH_FAST);
    struct gpo_gen_user u[N];
    for (int i = 0; i < N; i++) init_user(&u[i], &prompt, 1.0f, 11 + (uint64_t)i, 24);
    assert_int_equal(gpo_engine_run(e, u, N, NULL, NULL, NULL), GPO_OK);
    for (int i = 0; i < N; i++) {
        assert_true(u[i].finish != GPO_FINISH_ERROR);
        assert_int_equal(u[i].error, GPO_OK);
        assert_true(u[i].generated.n > 0);
        for (size_t j = 0; j < u[i].generated.n; j++)
            assert_int_equal(gpo_tokenizer_token_bytes(t, u[i].generated.ids[j], NULL, NULL), GPO_OK);
        gpo_gen_user_free(&u[i]);
    }
    gpo_engine_free(e);
    gpo_ids_free(&prompt);
    gpo_tokenizer_free(t);
}

/* ------------------------------------------------------------------------- */
/* One user's failure                                                        */

/* A copy of the tiny model whose embedding row `id` is NaN: a corrupt row that
 * only the users whose prompt holds that id ever read. */
static gpo_model *load_model_with_nan_row(int32_t id) {
    char src[300], dst[300], cmd[1024];
    snprintf(src, sizeof src, "%s/m", g_env.dir);
    snprintf(dst, sizeof dst, "%s/nan", g_env.dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dst, src, dst);
    assert_int_equal(system(cmd), 0);
    char file[400];
    snprintf(file, sizeof file, "%s/model.safetensors", dst);
    FILE *f = fopen(file, "r+b");
    assert_non_null(f);
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, f), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    char *hdr = calloc(hlen + 1, 1);
    assert_int_equal(fread(hdr, 1, hlen, f), hlen);
    cJSON *h = cJSON_Parse(hdr);
    free(hdr);
    const cJSON *emb = cJSON_GetObjectItemCaseSensitive(h, "model.embed_tokens.weight");
    assert_non_null(emb);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(emb, "dtype")->valuestring, "BF16");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(emb, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(emb, "data_offsets");
    int64_t d_model = (int64_t)cJSON_GetArrayItem(shape, 1)->valuedouble;
    uint64_t at = 8 + hlen + (uint64_t)cJSON_GetArrayItem(offs, 0)->valuedouble + (uint64_t)id * (uint64_t)d_model * 2;
    cJSON_Delete(h);
    assert_int_equal(fseek(f, (long)at, SEEK_SET), 0);
    for (int64_t i = 0; i < d_model; i++) {
        unsigned char nan_bf16[2] = {0xc0, 0x7f};
        assert_int_equal(fwrite(nan_bf16, 1, 2, f), 2);
    }
    assert_int_equal(fclose(f), 0);
    gpo_model *m = NULL;
    assert_int_equal(gpo_model_load(dst, NULL, &m), GPO_OK);
    return m;
}

static void test_one_user_failure_ends_that_user_only(void **state) {
    (void)state;
    struct gpo_ids bad = {0}, good = {0};
    render_prompt(g_tok, "Hello", &bad);
    render_prompt(g_tok, "What is the capital of France?", &good);
    /* The first id of "Hello" after the rendered prefix; the good prompt lacks it. */
    struct gpo_ids hello = {0};
    assert_int_equal(gpo_tokenizer_encode(g_tok, "Hello", 5, 0, &hello), GPO_OK);
    int32_t poison = hello.ids[0];
    for (size_t j = 0; j < good.n; j++) assert_int_not_equal(good.ids[j], poison);
    gpo_model *m = load_model_with_nan_row(poison);

    /* The good user alone, then next to the failing one: same tokens. */
    struct gpo_engine_opts eo = {.max_seq_len = 512, .ubatch = 64, .n_threads = 1, .path = GPO_PATH_EXACT};
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(m, g_tok, &eo, 2, &e), GPO_OK);
    struct gpo_gen_user alone, u[2];
    init_user(&alone, &good, 0.0f, 1, 8);
    assert_int_equal(gpo_engine_run(e, &alone, 1, NULL, NULL, NULL), GPO_OK);
    assert_int_equal(alone.generated.n, 8);
    gpo_engine_reset_slot(e, 0);

    init_user(&u[0], &bad, 0.0f, 1, 8);
    init_user(&u[1], &good, 0.0f, 1, 8);
    struct gpo_gen_stats st;
    assert_int_equal(gpo_engine_run(e, u, 2, NULL, NULL, &st), GPO_OK);
    assert_int_equal(u[0].finish, GPO_FINISH_ERROR);
    assert_string_equal(gpo_finish_name(u[0].finish), "error");
    assert_int_not_equal(u[0].error, GPO_OK);
    assert_non_null(strstr(u[0].error_msg, "logits"));
    assert_int_equal(u[0].generated.n, 0);
    assert_int_equal(u[1].finish, GPO_FINISH_LENGTH);
    assert_int_equal(u[1].error, GPO_OK);
    assert_int_equal(u[1].generated.n, alone.generated.n);
    assert_memory_equal(u[1].generated.ids, alone.generated.ids, alone.generated.n * sizeof(int32_t));
    assert_int_equal(st.n_generated, 8);

    gpo_gen_user_free(&alone);
    gpo_gen_user_free(&u[0]);
    gpo_gen_user_free(&u[1]);
    gpo_engine_free(e);
    gpo_model_free(m);
    gpo_ids_free(&bad);
    gpo_ids_free(&good);
    gpo_ids_free(&hello);
}

/* ------------------------------------------------------------------------- */
/* Streaming that never shows a stop string                                  */

static size_t safe1(const char *text, const char *stop) {
    const char *stops[] = {stop};
    return gpo_stop_safe_len(text, strlen(text), stops, 1);
}

static void test_safe_len_holds_back_stop_starts(void **state) {
    (void)state;
    /* No stop string: everything may be shown. */
    assert_int_equal(gpo_stop_safe_len("abc", 3, NULL, 0), 3);
    assert_int_equal(gpo_stop_safe_len("", 0, NULL, 0), 0);
    /* The tail is the start of the stop string. */
    assert_int_equal(safe1("Hello wor", "world"), 6);
    assert_int_equal(safe1("Hello w", "world"), 6);
    assert_int_equal(safe1("Hello ", "world"), 6);
    /* Only tails count, not a start in the middle that went on differently. */
    assert_int_equal(safe1("Hello wox", "world"), 9);
    /* The longest tail that could still match: "aab" needs both a's held. */
    assert_int_equal(safe1("xaa", "aab"), 1);
    /* A text shorter than the stop string. */
    assert_int_equal(safe1("wo", "world"), 0);
    /* Empty stop strings are ignored. */
    assert_int_equal(safe1("abc", ""), 3);
    /* Several stop strings: the longest tail of any of them. */
    const char *two[] = {"END", "xyz"};
    assert_int_equal(gpo_stop_safe_len("abcxy", 5, two, 2), 3);
    assert_int_equal(gpo_stop_safe_len("abcEN", 5, two, 2), 3);
    assert_int_equal(gpo_stop_safe_len("abcE", 4, two, 2), 3);
    const char *nested[] = {"b", "abc"};
    assert_int_equal(gpo_stop_safe_len("xxab", 4, nested, 2), 2);
    /* UTF-8: a stop string made of multi-byte characters. */
    assert_int_equal(safe1("caf\xc3\xa9 \xc3\xa9t", "\xc3\xa9t\xc3\xa9!"), 6);
    /* A stop string that starts inside a character never splits it. */
    assert_int_equal(safe1("ab\xc3\xa9", "\xa9z"), 2);
}

/* A stop string met over several tokens: simulate the engine's growing text. */
static void test_safe_len_across_pieces(void **state) {
    (void)state;
    const char *pieces[] = {"The an", "swer is", " 4", "2", " or", " ST", "O"};
    const char *stops[] = {"STOP", "42!"};
    char text[128] = "";
    size_t shown = 0;
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        strcat(text, pieces[i]);
        size_t safe = gpo_stop_safe_len(text, strlen(text), stops, 2);
        assert_true(safe >= shown);
        shown = safe;
        /* What is shown never holds the start of an unfinished stop string. */
        if (i == 2 || i == 3) assert_int_equal(shown, strlen("The answer is "));
        if (i == 4) assert_int_equal(shown, strlen("The answer is 42 or"));
        if (i >= 5) assert_int_equal(shown, strlen("The answer is 42 or "));
    }
    /* A stop string that began ("42") but never completed is shown later. */
    const char *p2[] = {"4", "2", "?"};
    text[0] = 0;
    for (size_t i = 0; i < 3; i++) {
        strcat(text, p2[i]);
        shown = gpo_stop_safe_len(text, strlen(text), stops, 2);
    }
    assert_int_equal(shown, 3);
}

struct stream_log {
    const struct gpo_gen_user *u;
    size_t last_n;
    int calls, bad;
    const char *stop;
    char shown[4096];
};

static void on_token_check(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct stream_log *l = ud;
    (void)user;
    (void)id;
    (void)ev;
    size_t n = l->u->final_stream_n;
    l->calls++;
    if (n < l->last_n || n > l->u->final_text.n) l->bad = 1;
    if (n > l->last_n) {
        memcpy(l->shown + l->last_n, l->u->final_text.s + l->last_n, n - l->last_n);
        l->shown[n] = 0;
        l->last_n = n;
    }
    if (strstr(l->shown, l->stop)) l->bad = 1;
}

/* Where each token's final text ended. */
struct piece_ends {
    const struct gpo_gen_user *u;
    size_t ends[256];
    int n;
};

static void on_token_ends(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct piece_ends *pe = ud;
    (void)user;
    (void)id;
    (void)ev;
    if (pe->n < 256 && (pe->n == 0 || pe->ends[pe->n - 1] != pe->u->final_text.n))
        pe->ends[pe->n++] = pe->u->final_text.n;
}

/* The engine's final_stream_n with a stop string taken from the model's own
 * output: it grows, never shows the stop string, and ends at the cut text. */
static void test_final_stream_n_in_engine(void **state) {
    (void)state;
    struct gpo_ids prompt = {0};
    render_prompt(g_tok, "Tell me a story", &prompt);
    gpo_engine *e = new_engine(g_tok, 1, GPO_PATH_FAST);
    struct gpo_gen_user u;
    init_user(&u, &prompt, 0.0f, 1, 40);
    struct piece_ends pe = {.u = &u};
    assert_int_equal(gpo_engine_run(e, &u, 1, on_token_ends, &pe, NULL), GPO_OK);
    assert_true(u.final_text.n > 12);
    assert_int_equal(u.final_stream_n, u.final_text.n);
    /* A stop string across the boundary of two tokens' texts in the middle: two
     * characters either side of it. */
    size_t mid = 0;
    for (int i = 0; i < pe.n; i++)
        if (pe.ends[i] >= 4 && pe.ends[i] + 4 <= u.final_text.n && (!mid || pe.ends[i] <= u.final_text.n / 2))
            mid = pe.ends[i];
    assert_true(mid > 0);
    size_t at = mid, end = mid;
    for (int k = 0; k < 2; k++) {
        do at--; while (at > 0 && ((unsigned char)u.final_text.s[at] & 0xc0) == 0x80);
        do end++; while (end < u.final_text.n && ((unsigned char)u.final_text.s[end] & 0xc0) == 0x80);
    }
    char stop[64];
    snprintf(stop, sizeof stop, "%.*s", (int)(end - at), u.final_text.s + at);
    char *first = strstr(u.final_text.s, stop);
    size_t cut = (size_t)(first - u.final_text.s);
    gpo_gen_user_free(&u);

    const char *stops[] = {stop};
    init_user(&u, &prompt, 0.0f, 1, 40);
    u.stops = stops;
    u.n_stops = 1;
    struct stream_log l = {.u = &u, .stop = stop};
    assert_int_equal(gpo_engine_run(e, &u, 1, on_token_check, &l, NULL), GPO_OK);
    assert_int_equal(u.finish, GPO_FINISH_STOP);
    assert_int_equal(u.final_text.n, cut);
    assert_int_equal(u.final_stream_n, cut);
    assert_int_equal(l.bad, 0);
    assert_true(l.calls > 0);
    assert_int_equal(l.last_n, cut);
    assert_memory_equal(l.shown, u.final_text.s, cut);
    gpo_gen_user_free(&u);
    gpo_engine_free(e);
    gpo_ids_free(&prompt);
}

/* ------------------------------------------------------------------------- */
/* KV caches that do not fit                                                 */

static void test_kv_nomem_counts_every_user(void **state) {
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    skip(); /* the address limit below would starve the sanitizer's own maps */
#else
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* 256 users x 4096 positions need far more than 1 GiB of address space. */
        struct rlimit rl = {(rlim_t)1 << 30, (rlim_t)1 << 30};
        close(fds[0]);
        char msg[512] = "";
        if (setrlimit(RLIMIT_AS, &rl) == 0) {
            struct gpo_engine_opts eo = {.max_seq_len = 4096, .ubatch = 64, .n_threads = 1};
            gpo_engine *e = NULL;
            enum gpo_status s = gpo_engine_create(g_model, g_tok, &eo, 256, &e);
            snprintf(msg, sizeof msg, "%d %s", (int)s, s == GPO_OK ? "" : gpo_last_error());
        }
        ssize_t w = write(fds[1], msg, strlen(msg));
        _exit(w >= 0 ? 0 : 1);
    }
    close(fds[1]);
    char buf[512] = "";
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    int wst;
    waitpid(pid, &wst, 0);
    assert_true(n > 0);
    buf[n] = 0;
    char want[32];
    snprintf(want, sizeof want, "%d ", (int)GPO_ERR_NOMEM);
    assert_true(strncmp(buf, want, strlen(want)) == 0);
    assert_non_null(strstr(buf, "256 users"));
    assert_non_null(strstr(buf, "in all"));
#endif
}

/* ------------------------------------------------------------------------- */
/* The scheduler                                                             */

static gpo_engine *new_engine_opts(size_t n_slots, int64_t ubatch, int64_t max_queue) {
    struct gpo_engine_opts eo = {.max_seq_len = 512, .ubatch = ubatch, .n_threads = 1,
                                 .path = GPO_PATH_FAST, .max_queue = max_queue};
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, n_slots, &e), GPO_OK);
    return e;
}

static gpo_req *submit(gpo_engine *e, const struct gpo_ids *p, float temperature, uint64_t seed,
                       int64_t max_tokens) {
    struct gpo_request rq = {.prompt = p->ids, .n_prompt = p->n, .max_tokens = max_tokens};
    gpo_sampler_params_default(&rq.sampling);
    rq.sampling.temperature = temperature;
    rq.sampling.seed = seed;
    gpo_req *h = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_OK);
    assert_non_null(h);
    return h;
}

static void drain(gpo_engine *e) {
    size_t left = 1;
    while (left > 0) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
}

/* The request alone in a fresh engine: its generated ids. */
static void tokens_alone(const struct gpo_ids *p, float temperature, uint64_t seed,
                         int64_t max_tokens, int64_t ubatch, struct gpo_ids *out) {
    gpo_engine *e = new_engine_opts(1, ubatch, 0);
    gpo_req *h = submit(e, p, temperature, seed, max_tokens);
    drain(e);
    assert_int_equal(gpo_req_state(h), GPO_REQ_DONE);
    const struct gpo_gen_user *o = gpo_req_output(h);
    assert_int_equal(o->error, GPO_OK);
    out->n = 0;
    assert_int_equal(gpo_ids_append(out, o->generated.ids, o->generated.n), GPO_OK);
    gpo_engine_release(e, h);
    gpo_engine_free(e);
}

static uint64_t lcg(uint64_t *x) {
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return *x >> 33;
}

/* A prompt whose text is `n` short sentences (a long prompt for small n). */
static void long_prompt(size_t n, struct gpo_ids *out) {
    char *text = calloc(n * 40 + 1, 1);
    for (size_t i = 0; i < n; i++)
        sprintf(text + strlen(text), "Sentence %zu is about the sea. ", i);
    render_prompt(g_tok, text, out);
    free(text);
}

/* (1) The same request alone and among 3-15 others that join and leave at random
 * steps (some cancelled, some sharing its prompt so that the prefix cache is
 * used), with a small step budget that chunks the prompts: the same tokens, greedy
 * and sampled. */
static void test_tokens_independent_of_load(void **state) {
    (void)state;
    enum { NP = 4 };
    const char *texts[NP] = {"What is the capital of France?", "Tell me a story", "Hi",
                             "Count from one to twenty, slowly, and explain each number."};
    struct gpo_ids prompts[NP + 1] = {{0}};
    for (int i = 0; i < NP; i++) render_prompt(g_tok, texts[i], &prompts[i]);
    long_prompt(12, &prompts[NP]);
    size_t total_cancelled = 0, total_chunked = 0;
    for (int mode = 0; mode < 2; mode++) {
        float temp = mode == 0 ? 0.0f : 1.0f;
        for (uint64_t round = 0; round < 3; round++) {
            const struct gpo_ids *target_p = &prompts[(round + (uint64_t)mode) % (NP + 1)];
            uint64_t seed = 100 + round;
            struct gpo_ids alone = {0};
            tokens_alone(target_p, temp, seed, 24, 512, &alone);
            assert_true(alone.n > 0);

            uint64_t rng = 0x9e3779b97f4a7c15ull ^ (round * 7 + (uint64_t)mode);
            gpo_engine *e = new_engine_opts(16, 8 + (int64_t)(lcg(&rng) % 24), 0);
            size_t n_others = 3 + lcg(&rng) % 13, submitted = 0, target_at = lcg(&rng) % 6;
            gpo_req *others[16] = {0}, *target = NULL;
            size_t step = 0, left = 1, n_cancelled = 0;
            while (left > 0 || submitted < n_others || !target) {
                if (!target && step == target_at) target = submit(e, target_p, temp, seed, 24);
                if (submitted < n_others && lcg(&rng) % 3 == 0) {
                    const struct gpo_ids *p = &prompts[lcg(&rng) % (NP + 1)];
                    float t = lcg(&rng) % 2 ? 1.0f : 0.0f;
                    others[submitted++] = submit(e, p, t, lcg(&rng), 1 + (int64_t)(lcg(&rng) % 30));
                }
                if (submitted > 0 && lcg(&rng) % 7 == 0) {
                    gpo_req *victim = others[lcg(&rng) % submitted];
                    if (gpo_req_state(victim) != GPO_REQ_DONE) n_cancelled++;
                    gpo_engine_cancel(e, victim);
                }
                assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
                step++;
                assert_true(step < 2000);
            }
            const struct gpo_gen_user *o = gpo_req_output(target);
            assert_int_equal(gpo_req_state(target), GPO_REQ_DONE);
            assert_int_equal(o->error, GPO_OK);
            assert_int_equal(o->generated.n, alone.n);
            assert_memory_equal(o->generated.ids, alone.ids, alone.n * sizeof(int32_t));
            for (size_t i = 0; i < submitted; i++) {
                const struct gpo_gen_user *oo = gpo_req_output(others[i]);
                assert_int_equal(gpo_req_state(others[i]), GPO_REQ_DONE);
                assert_true(oo->finish != GPO_FINISH_NONE && oo->finish != GPO_FINISH_ERROR);
                gpo_engine_release(e, others[i]);
            }
            total_cancelled += n_cancelled;
            total_chunked += o->n_reused + 8 < (int64_t)target_p->n; /* prefilled over steps */
            gpo_engine_release(e, target);
            assert_int_equal(gpo_engine_n_running(e) + gpo_engine_n_queued(e), 0);
            gpo_engine_free(e);
            gpo_ids_free(&alone);
        }
    }
    /* The schedules did cancel requests and did chunk the target's prompt. */
    assert_true(total_cancelled > 0);
    assert_true(total_chunked > 0);
    for (int i = 0; i <= NP; i++) gpo_ids_free(&prompts[i]);
}

/* (2) Chunked prefill: with a budget of 8 tokens a long prompt submitted while
 * another request decodes takes many steps, and the decoding request gets a token
 * on every one of them; the chunked prompt gives the tokens of an unchunked run. */
static void test_chunked_prefill_keeps_decoding(void **state) {
    (void)state;
    struct gpo_ids shortp = {0}, longp = {0}, alone = {0};
    render_prompt(g_tok, "Tell me a story", &shortp);
    long_prompt(20, &longp);
    assert_true(longp.n > 120);
    tokens_alone(&longp, 0.0f, 1, 6, 512, &alone);

    gpo_engine *e = new_engine_opts(2, 8, 0);
    gpo_req *a = submit(e, &shortp, 0.0f, 1, 0);
    size_t left;
    while (gpo_req_state(a) != GPO_REQ_DECODE) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    gpo_req *b = submit(e, &longp, 0.0f, 1, 6);
    int prefill_steps = 0;
    while (gpo_req_state(b) != GPO_REQ_DONE) {
        size_t before = gpo_req_output(a)->generated.n;
        int prefilling = gpo_req_state(b) != GPO_REQ_DECODE;
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        assert_int_equal(gpo_req_state(a), GPO_REQ_DECODE);
        assert_int_equal(gpo_req_output(a)->generated.n, before + 1);
        prefill_steps += prefilling && gpo_req_output(b)->generated.n == 0;
    }
    /* 7 prompt tokens a step next to the decoder's one. */
    assert_true(prefill_steps >= (int)(longp.n / 7) - 1);
    const struct gpo_gen_user *ob = gpo_req_output(b);
    assert_int_equal(ob->generated.n, alone.n);
    assert_memory_equal(ob->generated.ids, alone.ids, alone.n * sizeof(int32_t));
    gpo_engine_cancel(e, a);
    drain(e);
    gpo_engine_release(e, a);
    gpo_engine_release(e, b);
    gpo_engine_free(e);
    gpo_ids_free(&shortp);
    gpo_ids_free(&longp);
    gpo_ids_free(&alone);
}

/* (2b) Time-sized chunks (prefill_itl): the long prompt is split by the engine's
 * own cost estimates, which vary from run to run; the decoding request still gets
 * a token every step and both answers equal their unchunked runs. */
static void test_prefill_itl_same_tokens(void **state) {
    (void)state;
    struct gpo_ids shortp = {0}, longp = {0}, alone_a = {0}, alone_b = {0};
    render_prompt(g_tok, "Tell me a story", &shortp);
    long_prompt(40, &longp);
    tokens_alone(&shortp, 0.0f, 1, 40, 512, &alone_a);
    tokens_alone(&longp, 0.0f, 1, 6, 512, &alone_b);

    struct gpo_engine_opts eo = {.max_seq_len = 512, .ubatch = 512, .n_threads = 1,
                                 .path = GPO_PATH_FAST, .prefill_itl = 3.0};
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, 2, &e), GPO_OK);
    gpo_req *a = submit(e, &shortp, 0.0f, 1, 40);
    size_t left;
    /* a few decode-only steps give the engine its estimate of one */
    for (int i = 0; i < 4 || gpo_req_state(a) != GPO_REQ_DECODE; i++)
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    gpo_req *b = submit(e, &longp, 0.0f, 1, 6);
    int prompt_steps = 0;
    while (gpo_req_state(b) != GPO_REQ_DONE && gpo_req_state(a) != GPO_REQ_DONE) {
        size_t before = gpo_req_output(a)->generated.n;
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        assert_int_equal(gpo_req_output(a)->generated.n, before + 1);
        prompt_steps += gpo_req_output(b)->generated.n == 0;
    }
    drain(e);
    printf("  a %zu-token prompt next to a decoding request: %d steps\n", longp.n, prompt_steps);
    const struct gpo_gen_user *oa = gpo_req_output(a), *ob = gpo_req_output(b);
    assert_int_equal(oa->generated.n, alone_a.n);
    assert_memory_equal(oa->generated.ids, alone_a.ids, alone_a.n * sizeof(int32_t));
    assert_int_equal(ob->generated.n, alone_b.n);
    assert_memory_equal(ob->generated.ids, alone_b.ids, alone_b.n * sizeof(int32_t));
    gpo_engine_release(e, a);
    gpo_engine_release(e, b);
    gpo_engine_free(e);
    gpo_ids_free(&shortp);
    gpo_ids_free(&longp);
    gpo_ids_free(&alone_a);
    gpo_ids_free(&alone_b);
}

/* (2c) The size of a step's prompt chunk (gpo_prefill_cap): with estimates of 0.1 s
 * per decode-only step and 0.01 s per prompt token, --prefill-itl 2.5 leaves 0.15 s,
 * 15 tokens (so the 16-token minimum), while the waiting requests are no more than
 * the generating ones; a burst of 7 prompts next to 1 generating request may take 7
 * times as much; nothing generating, no option or no estimates: the whole budget. */
static void test_prefill_cap(void **state) {
    (void)state;
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.01, 4, 1, 508), GPO_PREFILL_MIN_CHUNK);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.01, 4, 4, 508), GPO_PREFILL_MIN_CHUNK);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.001, 4, 2, 508), 150);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.001, 2, 4, 510), 300);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.01, 1, 7, 511), 105);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.001, 1, 7, 511), 511);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.01, 0, 7, 512), 512);
    assert_int_equal(gpo_prefill_cap(0.0, 0.1, 0.01, 1, 7, 511), 511);
    assert_int_equal(gpo_prefill_cap(2.5, 0.0, 0.01, 1, 1, 511), 511);
    assert_int_equal(gpo_prefill_cap(2.5, 0.1, 0.01, 4, 1, 8), 8);
}

/* (3) Cancelling a running request frees its slot for the queued one and reports
 * aborted; a queued request cancelled ends at once; release of an unfinished
 * request cancels it (and ASan sees nothing leak). */
static void test_cancel_frees_slot(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    render_prompt(g_tok, "Hi", &p);
    gpo_engine *e = new_engine_opts(1, 512, 0); /* the prompt in one step */
    gpo_req *a = submit(e, &p, 0.0f, 1, 0);
    gpo_req *b = submit(e, &p, 0.0f, 1, 4);
    gpo_req *c = submit(e, &p, 0.0f, 1, 4);
    size_t left;
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(left, 3);
    assert_int_equal(gpo_req_state(a), GPO_REQ_DECODE);
    assert_int_equal(gpo_req_slot(a), 0);
    assert_int_equal(gpo_req_state(b), GPO_REQ_QUEUED);
    assert_int_equal(gpo_req_slot(b), -1);
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(gpo_req_state(b), GPO_REQ_QUEUED);

    gpo_engine_cancel(e, c); /* queued: ends now */
    assert_int_equal(gpo_req_state(c), GPO_REQ_DONE);
    assert_int_equal(gpo_req_output(c)->finish, GPO_FINISH_ABORTED);
    assert_int_equal(gpo_req_output(c)->generated.n, 0);
    assert_int_equal(gpo_engine_n_queued(e), 1);

    size_t a_tokens = gpo_req_output(a)->generated.n;
    gpo_engine_cancel(e, a); /* running: ends at the next step */
    assert_int_equal(gpo_req_state(a), GPO_REQ_DECODE);
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(gpo_req_state(a), GPO_REQ_DONE);
    assert_int_equal(gpo_req_output(a)->finish, GPO_FINISH_ABORTED);
    assert_string_equal(gpo_finish_name(gpo_req_output(a)->finish), "aborted");
    assert_int_equal(gpo_req_output(a)->aborted, 1);
    assert_int_equal(gpo_req_output(a)->generated.n, a_tokens);
    assert_int_equal(gpo_req_slot(b), 0);
    assert_true(gpo_req_state(b) == GPO_REQ_DECODE || gpo_req_state(b) == GPO_REQ_DONE);
    assert_int_equal(gpo_req_output(b)->generated.n, 1);
    /* The same prompt in the same slot: everything but its last token reused. */
    assert_int_equal(gpo_req_output(b)->n_reused, (int64_t)p.n - 1);
    drain(e);
    assert_int_equal(gpo_req_output(b)->finish, GPO_FINISH_LENGTH);

    /* Released while running: cancelled and freed. */
    gpo_req *d = submit(e, &p, 0.0f, 1, 0);
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    gpo_engine_release(e, d);
    assert_int_equal(gpo_engine_n_running(e), 0);
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(left, 0);
    /* Left unreleased: the engine frees it. */
    submit(e, &p, 0.0f, 1, 0);
    gpo_engine_release(e, a);
    gpo_engine_release(e, b);
    gpo_engine_release(e, c);
    gpo_engine_free(e);
    gpo_ids_free(&p);
}

/* (4) The queue bound counts requests waiting beyond the free slots. */
static void test_queue_bound(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    render_prompt(g_tok, "Hi", &p);
    gpo_engine *e = new_engine_opts(1, 64, 1);
    gpo_req *a = submit(e, &p, 0.0f, 1, 0), *b = submit(e, &p, 0.0f, 1, 0), *c = NULL;
    struct gpo_request rq = {.prompt = p.ids, .n_prompt = p.n};
    gpo_sampler_params_default(&rq.sampling);
    assert_int_equal(gpo_engine_submit(e, &rq, &c), GPO_ERR_BUSY);
    assert_null(c);
    assert_non_null(strstr(gpo_last_error(), "queue is full"));
    size_t left;
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK); /* a runs, b waits */
    assert_int_equal(gpo_engine_submit(e, &rq, &c), GPO_ERR_BUSY);
    gpo_engine_cancel(e, b);
    assert_int_equal(gpo_engine_submit(e, &rq, &c), GPO_OK);
    gpo_engine_release(e, a);
    gpo_engine_release(e, b);
    gpo_engine_release(e, c);
    gpo_engine_free(e);

    /* max_queue < 0: only as many as there are free slots. */
    e = new_engine_opts(2, 64, -1);
    a = submit(e, &p, 0.0f, 1, 0);
    b = submit(e, &p, 0.0f, 1, 0);
    c = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &c), GPO_ERR_BUSY);
    gpo_engine_free(e); /* frees a and b */
    gpo_ids_free(&p);
}

/* (5) A prompt over the context is refused at submission, with the numbers. */
static void test_prompt_too_long(void **state) {
    (void)state;
    struct gpo_ids p = {0};
    for (int i = 0; i < 600; i++) assert_int_equal(gpo_ids_push(&p, 1000 + i), GPO_OK);
    gpo_engine *e = new_engine_opts(1, 64, 0);
    struct gpo_request rq = {.prompt = p.ids, .n_prompt = p.n};
    gpo_sampler_params_default(&rq.sampling);
    gpo_req *h = (gpo_req *)&rq;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_ERR_CONTEXT);
    assert_null(h);
    assert_non_null(strstr(gpo_last_error(), "600 tokens"));
    assert_non_null(strstr(gpo_last_error(), "512"));
    assert_int_equal(gpo_engine_n_queued(e), 0);
    rq.n_prompt = 0;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_ERR_ARG);
    gpo_engine_free(e);
    gpo_ids_free(&p);
}

/* (6) A continued conversation takes the slot holding its longest prefix, and the
 * request with nothing in common takes the least recently used slot. */
static void test_prefix_reuse_picks_longest(void **state) {
    (void)state;
    const char *texts[3] = {"What is the capital of France?", "Tell me a story", "Hi"};
    struct gpo_ids p[3] = {{0}}, cont = {0}, other = {0};
    for (int i = 0; i < 3; i++) render_prompt(g_tok, texts[i], &p[i]);
    gpo_engine *e = new_engine_opts(3, 64, 0);
    gpo_req *h[3];
    for (int i = 0; i < 3; i++) h[i] = submit(e, &p[i], 0.0f, 1, 6);
    drain(e);
    for (int i = 0; i < 3; i++) assert_int_equal(gpo_req_slot(h[i]), i);

    /* The second conversation continued: its prompt, its answer, more tokens. */
    const struct gpo_gen_user *o1 = gpo_req_output(h[1]);
    assert_int_equal(gpo_ids_append(&cont, p[1].ids, p[1].n), GPO_OK);
    assert_int_equal(gpo_ids_append(&cont, o1->generated.ids, o1->generated.n), GPO_OK);
    struct gpo_ids more = {0};
    render_prompt(g_tok, "And then?", &more);
    assert_int_equal(gpo_ids_append(&cont, more.ids, more.n), GPO_OK);
    gpo_req *c = submit(e, &cont, 0.0f, 1, 4);
    size_t left;
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(gpo_req_slot(c), 1);
    /* The cache holds the prompt and every answer token but the last (never fed). */
    assert_int_equal(gpo_req_output(c)->n_reused, (int64_t)(p[1].n + o1->generated.n - 1));
    drain(e);

    /* Only the shared harmony header in common with every slot: slot 0 was used
     * longest ago. */
    long_prompt(3, &other);
    gpo_req *d = submit(e, &other, 0.0f, 1, 2);
    drain(e);
    assert_int_equal(gpo_req_slot(d), 0);
    assert_true(gpo_req_output(d)->n_reused > 0);
    assert_true(gpo_req_output(d)->n_reused < (int64_t)other.n);

    for (int i = 0; i < 3; i++) gpo_engine_release(e, h[i]);
    gpo_engine_release(e, c);
    gpo_engine_release(e, d);
    gpo_engine_free(e);
    for (int i = 0; i < 3; i++) gpo_ids_free(&p[i]);
    gpo_ids_free(&cont);
    gpo_ids_free(&more);
    gpo_ids_free(&other);
}

/* ------------------------------------------------------------------------- */
/* The KV pool                                                               */

/* An engine whose pool holds `blocks` blocks. */
static gpo_engine *new_engine_pool(size_t n_slots, int64_t ubatch, int64_t blocks) {
    struct gpo_engine_opts eo = {.max_seq_len = 512, .ubatch = ubatch, .n_threads = 1,
                                 .path = GPO_PATH_FAST};
    struct gpo_kv_plan pl;
    assert_int_equal(gpo_engine_kv_plan(g_model, &eo, n_slots, &pl), GPO_OK);
    eo.kv_memory = (uint64_t)blocks * pl.block_bytes;
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, n_slots, &e), GPO_OK);
    struct gpo_kv_pool_stats st;
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.blocks_total, blocks);
    return e;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* n ids that no harmony prompt shares a prefix with. */
static void raw_prompt(int32_t first, size_t n, struct gpo_ids *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(gpo_ids_push(out, first + (int32_t)(i * 7)), GPO_OK);
}

/* The pool between steps: a prefilling request holds the blocks of everything it
 * prefills (taken when it starts), a generating one those of its cache (every
 * token but the last sampled), queued and finished ones none; used and cached
 * never exceed the total. */
static void check_accounting(gpo_engine *e, gpo_req *const *reqs, size_t n) {
    struct gpo_kv_pool_stats st;
    gpo_engine_kv_pool(e, &st);
    const int64_t B = st.block_tokens;
    int64_t want = 0;
    for (size_t i = 0; i < n; i++) {
        if (!reqs[i]) continue;
        const struct gpo_gen_user *o = gpo_req_output(reqs[i]);
        int64_t fed = (int64_t)(o->n_prompt + o->generated.n);
        if (gpo_req_state(reqs[i]) == GPO_REQ_PREFILL) want += ceil_div(fed, B);
        else if (gpo_req_state(reqs[i]) == GPO_REQ_DECODE) want += ceil_div(fed - 1, B);
    }
    assert_int_equal(st.blocks_used, want);
    assert_true(st.blocks_cached >= 0);
    assert_true(st.blocks_used + st.blocks_cached <= st.blocks_total);
}

/* Every slot's cached prefix dropped: the whole pool is free again. */
static void check_all_free(gpo_engine *e, size_t n_slots) {
    struct gpo_kv_pool_stats st;
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.blocks_used, 0);
    for (size_t i = 0; i < n_slots; i++) gpo_engine_reset_slot(e, i);
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.blocks_used + st.blocks_cached, 0);
}

/* (7) A pool too small for the requests together: a running request that needs
 * a block preempts the youngest (back to the queue, later recomputed from its
 * prompt and tokens), and every request still gives the tokens it gives alone,
 * greedy and sampled. */
static void test_pool_preemption_same_tokens(void **state) {
    (void)state;
    struct gpo_ids p[2] = {{0}}, alone[2] = {{0}};
    raw_prompt(1000, 30, &p[0]);
    raw_prompt(5000, 30, &p[1]);
    for (int mode = 0; mode < 2; mode++) {
        float temp = mode ? 1.0f : 0.0f;
        for (int i = 0; i < 2; i++) tokens_alone(&p[i], temp, 7 + (uint64_t)i, 40, 512, &alone[i]);
        /* 30 + 40 positions need 5 blocks each; the pool has 6. */
        gpo_engine *e = new_engine_pool(2, 64, 6);
        gpo_req *h[2];
        for (int i = 0; i < 2; i++) h[i] = submit(e, &p[i], temp, 7 + (uint64_t)i, 40);
        size_t left = 1;
        int preempted = 0;
        while (left > 0) {
            enum gpo_req_state before = gpo_req_state(h[1]);
            assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
            check_accounting(e, h, 2);
            if (before == GPO_REQ_DECODE && gpo_req_state(h[1]) == GPO_REQ_QUEUED) {
                preempted++;
                assert_int_equal(gpo_req_slot(h[1]), -1);
                assert_int_equal(gpo_req_state(h[0]), GPO_REQ_DECODE); /* the older goes on */
            }
        }
        assert_true(preempted > 0);
        for (int i = 0; i < 2; i++) {
            const struct gpo_gen_user *o = gpo_req_output(h[i]);
            assert_int_equal(o->error, GPO_OK);
            assert_int_equal(o->generated.n, alone[i].n);
            assert_memory_equal(o->generated.ids, alone[i].ids, alone[i].n * sizeof(int32_t));
            gpo_engine_release(e, h[i]);
        }
        check_all_free(e, 2);
        gpo_engine_free(e);
    }
    for (int i = 0; i < 2; i++) {
        gpo_ids_free(&p[i]);
        gpo_ids_free(&alone[i]);
    }
}

/* (8) A queued request whose prompt does not fit waits although a slot is free,
 * starts when the running one ends (taking back its cached blocks) and gives the
 * tokens it gives alone. */
static void test_pool_queue_when_full(void **state) {
    (void)state;
    struct gpo_ids pa = {0}, pb = {0}, alone = {0};
    raw_prompt(1000, 40, &pa);
    raw_prompt(9000, 40, &pb);
    tokens_alone(&pb, 0.0f, 3, 8, 512, &alone);
    gpo_engine *e = new_engine_pool(2, 64, 4); /* 64 positions: one request at a time */
    gpo_req *h[2] = {submit(e, &pa, 0.0f, 2, 8), submit(e, &pb, 0.0f, 3, 8)};
    size_t left = 1;
    int waited = 0;
    while (gpo_req_state(h[0]) != GPO_REQ_DONE) {
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        check_accounting(e, h, 2);
        if (gpo_req_state(h[0]) != GPO_REQ_DONE) {
            assert_int_equal(gpo_req_state(h[1]), GPO_REQ_QUEUED);
            assert_int_equal(gpo_engine_n_running(e), 1); /* a slot stays free */
            waited++;
        }
    }
    assert_true(waited >= 7);
    struct gpo_kv_pool_stats st;
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.blocks_cached, ceil_div(40 + 8 - 1, 16)); /* the finished one's */
    assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_true(gpo_req_state(h[1]) != GPO_REQ_QUEUED);
    gpo_engine_kv_pool(e, &st);
    assert_int_equal(st.blocks_cached, 0); /* taken back for the prompt */
    drain(e);
    const struct gpo_gen_user *o = gpo_req_output(h[1]);
    assert_int_equal(o->generated.n, alone.n);
    assert_memory_equal(o->generated.ids, alone.ids, alone.n * sizeof(int32_t));
    for (int i = 0; i < 2; i++) gpo_engine_release(e, h[i]);
    check_all_free(e, 2);
    gpo_engine_free(e);
    gpo_ids_free(&pa);
    gpo_ids_free(&pb);
    gpo_ids_free(&alone);
}

/* (9) Cached prefixes under pressure: the least recently used idle slot gives
 * its blocks back first, so its conversation is prefilled again while the other
 * one is still reused; with room for everything both are reused. */
static void test_pool_evicts_lru_prefix(void **state) {
    (void)state;
    struct gpo_ids pa = {0}, pb = {0}, pc = {0}, more = {0}, cont[2] = {{0}};
    render_prompt(g_tok, "What is the capital of France?", &pa);
    render_prompt(g_tok, "Tell me a story", &pb);
    render_prompt(g_tok, "And then?", &more);
    raw_prompt(3000, 100, &pc);
    const int64_t ca = ceil_div((int64_t)pa.n + 3, 16), cb = ceil_div((int64_t)pb.n + 3, 16);
    for (int small = 0; small < 2; small++) {
        /* small: after A and B, one block short of C's prompt. */
        int64_t blocks = small ? ca + cb + ceil_div(100, 16) - 1 : 3 * 32;
        gpo_engine *e = new_engine_pool(3, 64, blocks);
        /* Together, so that each gets a slot of its own; A takes its slot first. */
        gpo_req *a = submit(e, &pa, 0.0f, 1, 4), *b = submit(e, &pb, 0.0f, 1, 4);
        drain(e);
        assert_int_equal(gpo_req_output(a)->generated.n, 4);
        assert_int_equal(gpo_req_output(b)->generated.n, 4);
        struct gpo_kv_pool_stats st;
        gpo_engine_kv_pool(e, &st);
        assert_int_equal(st.blocks_cached, ca + cb);
        gpo_req *c = submit(e, &pc, 0.0f, 1, 2);
        drain(e);
        gpo_engine_kv_pool(e, &st);
        assert_int_equal(st.blocks_used, 0);
        /* A, used longest ago, lost its blocks in the small pool. */
        assert_int_equal(st.blocks_cached, (small ? 0 : ca) + cb + ceil_div(101, 16));
        const struct gpo_gen_user *o[2] = {gpo_req_output(a), gpo_req_output(b)};
        const struct gpo_ids *pp[2] = {&pa, &pb};
        /* B first: A's continuation would take B's slot, which shares the most. */
        for (int i = 1; i >= 0; i--) {
            cont[i].n = 0;
            assert_int_equal(gpo_ids_append(&cont[i], pp[i]->ids, pp[i]->n), GPO_OK);
            assert_int_equal(gpo_ids_append(&cont[i], o[i]->generated.ids, o[i]->generated.n),
                             GPO_OK);
            assert_int_equal(gpo_ids_append(&cont[i], more.ids, more.n), GPO_OK);
            gpo_req *h = submit(e, &cont[i], 0.0f, 1, 1);
            drain(e);
            int64_t full = (int64_t)(pp[i]->n + o[i]->generated.n - 1);
            if (small && i == 0) assert_true(gpo_req_output(h)->n_reused < (int64_t)pp[i]->n);
            else assert_int_equal(gpo_req_output(h)->n_reused, full);
            gpo_engine_release(e, h);
        }
        gpo_engine_release(e, a);
        gpo_engine_release(e, b);
        gpo_engine_release(e, c);
        check_all_free(e, 3);
        gpo_engine_free(e);
    }
    gpo_ids_free(&pa);
    gpo_ids_free(&pb);
    gpo_ids_free(&pc);
    gpo_ids_free(&more);
    for (int i = 0; i < 2; i++) gpo_ids_free(&cont[i]);
}

/* (10) A prompt that with one generated token exceeds the whole pool is refused
 * at once with the numbers; one that fits runs until the pool is full and ends
 * with finish "context", its tokens those of a large pool. */
static void test_pool_refuses_never_fits(void **state) {
    (void)state;
    struct gpo_ids p = {0}, alone = {0};
    gpo_engine *e = new_engine_pool(2, 64, 4); /* 64 positions */
    raw_prompt(100, 64, &p);
    struct gpo_request rq = {.prompt = p.ids, .n_prompt = p.n, .max_tokens = 0};
    gpo_sampler_params_default(&rq.sampling);
    gpo_req *h = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_ERR_CONTEXT);
    assert_null(h);
    assert_non_null(strstr(gpo_last_error(), "64 tokens"));
    assert_non_null(strstr(gpo_last_error(), "5 KV blocks of 16 positions"));
    assert_non_null(strstr(gpo_last_error(), "holds 4 blocks (64 positions"));
    assert_int_equal(gpo_engine_n_queued(e), 0);

    raw_prompt(100, 60, &p);
    tokens_alone(&p, 0.0f, 1, 5, 512, &alone);
    h = submit(e, &p, 0.0f, 1, 0);
    drain(e);
    const struct gpo_gen_user *o = gpo_req_output(h);
    assert_int_equal(o->finish, GPO_FINISH_CONTEXT);
    /* 60 prompt and 4 generated tokens in the cache, and the last one sampled. */
    assert_int_equal(o->generated.n, 5);
    assert_memory_equal(o->generated.ids, alone.ids, 5 * sizeof(int32_t));
    gpo_engine_release(e, h);
    check_all_free(e, 2);
    gpo_engine_free(e);
    gpo_ids_free(&p);
    gpo_ids_free(&alone);
}

/* (11) Requests joining, growing, cancelled and preempted at random steps in a
 * pool that holds about two of them: the accounting holds after every step, the
 * blocks are all back at the end, and every request that was not cancelled gives
 * the tokens it gives alone (a cancelled one a prefix of them). */
static void test_pool_random_load(void **state) {
    (void)state;
    enum { NR = 8 };
    const char *texts[4] = {"What is the capital of France?", "Tell me a story", "Hi",
                            "Count from one to twenty."};
    struct gpo_ids p[4] = {{0}}, alone[NR] = {{0}};
    for (int i = 0; i < 4; i++) render_prompt(g_tok, texts[i], &p[i]);
    uint64_t rng = 42;
    const struct gpo_ids *rp[NR];
    float temp[NR];
    int64_t max_tok[NR];
    int64_t most = 0;
    for (int i = 0; i < NR; i++) {
        rp[i] = &p[lcg(&rng) % 4];
        temp[i] = lcg(&rng) % 2 ? 1.0f : 0.0f;
        max_tok[i] = 8 + (int64_t)(lcg(&rng) % 30);
        tokens_alone(rp[i], temp[i], 50 + (uint64_t)i, max_tok[i], 512, &alone[i]);
        if ((int64_t)rp[i]->n + max_tok[i] > most) most = (int64_t)rp[i]->n + max_tok[i];
    }
    gpo_engine *e = new_engine_pool(4, 24, ceil_div(most, 16) + 3);
    gpo_req *h[NR] = {0};
    int submitted = 0, cancelled[NR] = {0}, preempted = 0;
    size_t left = 1, step = 0;
    while (left > 0 || submitted < NR) {
        if (submitted < NR && lcg(&rng) % 2 == 0) {
            h[submitted] = submit(e, rp[submitted], temp[submitted], 50 + (uint64_t)submitted,
                                  max_tok[submitted]);
            submitted++;
        }
        if (submitted > 0 && lcg(&rng) % 25 == 0) {
            int v = (int)(lcg(&rng) % (uint64_t)submitted);
            if (gpo_req_state(h[v]) != GPO_REQ_DONE) cancelled[v] = 1;
            gpo_engine_cancel(e, h[v]);
        }
        enum gpo_req_state before[NR];
        for (int i = 0; i < submitted; i++) before[i] = gpo_req_state(h[i]);
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        check_accounting(e, h, (size_t)submitted);
        for (int i = 0; i < submitted; i++)
            preempted += before[i] != GPO_REQ_QUEUED && gpo_req_state(h[i]) == GPO_REQ_QUEUED;
        assert_true(++step < 3000);
    }
    assert_true(preempted > 0);
    for (int i = 0; i < NR; i++) {
        const struct gpo_gen_user *o = gpo_req_output(h[i]);
        assert_int_equal(gpo_req_state(h[i]), GPO_REQ_DONE);
        assert_int_equal(o->error, GPO_OK);
        if (cancelled[i]) assert_true(o->generated.n <= alone[i].n);
        else assert_int_equal(o->generated.n, alone[i].n);
        assert_memory_equal(o->generated.ids, alone[i].ids, o->generated.n * sizeof(int32_t));
        gpo_engine_release(e, h[i]);
        gpo_ids_free(&alone[i]);
    }
    check_all_free(e, 4);
    gpo_engine_free(e);
    for (int i = 0; i < 4; i++) gpo_ids_free(&p[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_nomem_counts_every_user),
        cmocka_unit_test(test_undefined_ids_never_sampled),
        cmocka_unit_test(test_one_user_failure_ends_that_user_only),
        cmocka_unit_test(test_safe_len_holds_back_stop_starts),
        cmocka_unit_test(test_safe_len_across_pieces),
        cmocka_unit_test(test_final_stream_n_in_engine),
        cmocka_unit_test(test_tokens_independent_of_load),
        cmocka_unit_test(test_chunked_prefill_keeps_decoding),
        cmocka_unit_test(test_prefill_itl_same_tokens),
        cmocka_unit_test(test_prefill_cap),
        cmocka_unit_test(test_cancel_frees_slot),
        cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_prompt_too_long),
        cmocka_unit_test(test_prefix_reuse_picks_longest),
        cmocka_unit_test(test_pool_preemption_same_tokens),
        cmocka_unit_test(test_pool_queue_when_full),
        cmocka_unit_test(test_pool_evicts_lru_prefix),
        cmocka_unit_test(test_pool_refuses_never_fits),
        cmocka_unit_test(test_pool_random_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
