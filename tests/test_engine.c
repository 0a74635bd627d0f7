/* test_engine.c - the generation engine on a tiny random-weight model: ids the
 * tokenizer does not define are never sampled, one user's failure ends that user
 * alone, streamed text holds back what could still become a stop string, and the
 * message when the KV caches do not fit counts every user. */
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

#include "gpo.h"

static char g_dir[256];      /* temporary folder: the model and a small tokenizer */
static gpo_model *g_model;
static gpo_tokenizer *g_tok; /* the real o200k tokenizer */

static int setup(void **state) {
    (void)state;
    char tmpl[] = "/tmp/gpo_engine_XXXXXX";
    if (!mkdtemp(tmpl)) return -1;
    snprintf(g_dir, sizeof g_dir, "%s", tmpl);
    char mdir[300], tpath[4096];
    snprintf(mdir, sizeof mdir, "%s/m", g_dir);
    gpo_set_log_level(GPO_LOG_ERROR);
    struct gpo_mkmodel_opts mo = {.preset = "tiny", .out_dir = mdir, .seed = 3, .layout_hf = 1};
    if (gpo_mkmodel(&mo) != GPO_OK) return -1;
    if (gpo_model_load(mdir, NULL, &g_model) != GPO_OK) return -1;
    if (gpo_tokenizer_find(NULL, NULL, tpath, sizeof tpath) != GPO_OK) return -1;
    if (gpo_tokenizer_load(tpath, &g_tok) != GPO_OK) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    gpo_tokenizer_free(g_tok);
    gpo_model_free(g_model);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
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
    snprintf(path, sizeof path, "%s/holey.json", g_dir);
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
    snprintf(src, sizeof src, "%s/m", g_dir);
    snprintf(dst, sizeof dst, "%s/nan", g_dir);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_nomem_counts_every_user),
        cmocka_unit_test(test_undefined_ids_never_sampled),
        cmocka_unit_test(test_one_user_failure_ends_that_user_only),
        cmocka_unit_test(test_safe_len_holds_back_stop_starts),
        cmocka_unit_test(test_safe_len_across_pieces),
        cmocka_unit_test(test_final_stream_n_in_engine),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
