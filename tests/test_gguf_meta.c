/* test_gguf_meta.c - GGUF metadata <-> configuration and tokenizer: the tiny
 * fixture's config.json and the real tokenizer written as gpt-oss.* and
 * tokenizer.ggml.* keys read back equal (every config field; the same ids as
 * tokenizer.json on the tokenizer cases, the same bytes for every id); the 20b and
 * 120b shapes round-trip; the keys, types and order llama.cpp's converter writes;
 * optional keys and their defaults; bad metadata refused naming the key and value;
 * the tensor table checked (both expert layouts accepted; a missing, misshapen,
 * wrongly typed or surplus tensor named). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_meta.h"
#include "model.h"
#include "util.h"

#define TOK_CASES "tests/fixtures/tokenizer/"

static char tmpdir[256];
static gpo_tokenizer *tok_json;

static int group_setup(void **state) {
    (void)state;
    char path[4096];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/gpo_test_gguf_meta_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    if (gpo_tokenizer_find(NULL, NULL, path, sizeof path) != GPO_OK ||
        gpo_tokenizer_load(path, &tok_json) != GPO_OK) {
        fprintf(stderr, "%s\n", gpo_last_error());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    gpo_tokenizer_free(tok_json);
    return rm_tree(tmpdir);
}

static void tmp_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", tmpdir, name);
}

static void expect_error(enum gpo_status got, enum gpo_status want, const char *n1,
                         const char *n2) {
    const char *msg = gpo_last_error();
    if (got != want || !strstr(msg, n1) || (n2 && !strstr(msg, n2)))
        fail_msg("got %s '%s', expected %s with '%s' '%s'", gpo_status_name(got), msg,
                 gpo_status_name(want), n1, n2 ? n2 : "");
    printf("[ INFO     ] refused: %s\n", msg);
}

/* Every field of struct gpo_config, by name, so a failure says which. */
static void assert_config_equal(const struct gpo_config *a, const struct gpo_config *b) {
#define SAME(f)                                                                                \
    if (a->f != b->f) fail_msg("config field " #f " differs: %g vs %g", (double)a->f, (double)b->f)
    SAME(n_layer);
    SAME(n_embd);
    SAME(n_head);
    SAME(n_head_kv);
    SAME(head_dim);
    SAME(n_expert);
    SAME(n_expert_used);
    SAME(n_ff);
    SAME(n_vocab);
    SAME(sliding_window);
    SAME(max_position);
    SAME(rope_theta);
    SAME(rope_factor);
    SAME(rope_beta_fast);
    SAME(rope_beta_slow);
    SAME(rope_orig_ctx);
    SAME(rms_eps);
    SAME(swiglu_limit);
    SAME(swiglu_alpha);
    SAME(eos_id);
    SAME(pad_id);
#undef SAME
    for (int l = 0; l < GPO_MAX_LAYERS; l++)
        if (a->layer_sliding[l] != b->layer_sliding[l])
            fail_msg("layer_sliding[%d] differs: %d vs %d", l, a->layer_sliding[l],
                     b->layer_sliding[l]);
}

static void parse_config(const char *json, struct gpo_config *cfg) {
    if (gpo_config_parse(json, strlen(json), "test config", cfg) != GPO_OK)
        fail_msg("%s", gpo_last_error());
}

/* Zero bytes for tensor data. */
static enum gpo_status write_zeros(struct gpo_gguf_writer *w, uint64_t n) {
    static const uint8_t zero[4096];
    while (n > 0) {
        uint64_t k = n < sizeof zero ? n : sizeof zero;
        GPO_TRY(gpo_gguf_writer_write(w, zero, k));
        n -= k;
    }
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* The tiny fixture: config and tokenizer                                    */

static void test_tiny_round_trip(void **state) {
    (void)state;
    size_t len;
    char *json = read_all_or_fail("tests/fixtures/tiny-a/config.json", &len);
    struct gpo_config want, got;
    parse_config(json, &want);
    free(json);

    char path[512];
    tmp_path(path, sizeof path, "tiny.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_write_config(&w, &want, "tiny-a"), GPO_OK);
    uint32_t ft;
    assert_int_equal(gpo_gguf_file_type(GPO_GGML_BF16, &ft), 0);
    assert_int_equal(gpo_gguf_writer_kv_u32(&w, "general.file_type", ft), GPO_OK);
    double t0 = gpo_now();
    assert_int_equal(gpo_gguf_write_tokenizer(&w, tok_json, 0), GPO_OK);
    /* The vocabulary size then comes from the embedding rows, as in a model file. */
    const int64_t ne[2] = {want.n_embd, want.n_vocab};
    uint64_t nbytes;
    assert_int_equal(gpo_ggml_nbytes(GPO_GGML_BF16, 2, ne, &nbytes), 0);
    assert_int_equal(gpo_gguf_writer_declare(&w, "token_embd.weight", GPO_GGML_BF16, 2, ne),
                     GPO_OK);
    assert_int_equal(write_zeros(&w, nbytes), GPO_OK);
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    double t1 = gpo_now();

    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    if (gpo_gguf_read_config(&g, &got) != GPO_OK) fail_msg("%s", gpo_last_error());
    assert_config_equal(&want, &got);
    assert_int_equal(got.eos_id, 999); /* config.json's, not the tokenizer's <|return|> */
    assert_int_equal(got.pad_id, 998);
    assert_int_equal(got.layer_sliding[0], 1);
    assert_int_equal(got.layer_sliding[1], 0);

    /* The tokenizer keys as llama.cpp's converter writes them. */
    struct gpo_gguf_str s;
    struct gpo_gguf_arr a;
    assert_true(gpo_gguf_has_tokenizer(&g));
    assert_int_equal(gpo_gguf_get_str(&g, "tokenizer.ggml.model", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "gpt2"));
    assert_int_equal(gpo_gguf_get_str(&g, "tokenizer.ggml.pre", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "gpt-4o"));
    assert_int_equal(gpo_gguf_get_arr(&g, "tokenizer.ggml.tokens", GPO_GGUF_STRING, &a), GPO_OK);
    assert_int_equal(a.n, 200019);
    assert_int_equal(gpo_gguf_get_arr(&g, "tokenizer.ggml.token_type", GPO_GGUF_I32, &a), GPO_OK);
    assert_int_equal(a.n, 200019);
    assert_int_equal(gpo_gguf_get_arr(&g, "tokenizer.ggml.merges", GPO_GGUF_STRING, &a), GPO_OK);
    assert_int_equal(a.n, 446189);
    const struct gpo_gguf_kv *kv = gpo_gguf_find_kv(&g, "tokenizer.ggml.bos_token_id");
    assert_true(kv && kv->type == GPO_GGUF_U32);
    uint32_t id;
    assert_int_equal(gpo_gguf_get_u32(&g, "tokenizer.ggml.bos_token_id", &id), GPO_OK);
    assert_int_equal(id, 199998);
    kv = gpo_gguf_find_kv(&g, "tokenizer.ggml.eos_token_id");
    assert_true(kv && kv->type == GPO_GGUF_U32);

    double t2 = gpo_now();
    gpo_tokenizer *tok = NULL;
    if (gpo_gguf_read_tokenizer(&g, &tok) != GPO_OK) fail_msg("%s", gpo_last_error());
    printf("[ MEASURE  ] write %.3f s, read tokenizer %.3f s\n", t1 - t0, gpo_now() - t2);
    gpo_gguf_close(&g);

    /* Every id: the same bytes and the same special flag. */
    int32_t n = gpo_tokenizer_n_tokens(tok_json);
    assert_int_equal(gpo_tokenizer_n_tokens(tok), n);
    for (int32_t i = 0; i < n; i++) {
        const char *pa, *pb;
        size_t la, lb;
        assert_int_equal(gpo_tokenizer_token_bytes(tok_json, i, &pa, &la), GPO_OK);
        assert_int_equal(gpo_tokenizer_token_bytes(tok, i, &pb, &lb), GPO_OK);
        if (la != lb || memcmp(pa, pb, la) != 0) fail_msg("token %d differs", (int)i);
        assert_int_equal(gpo_tokenizer_is_special(tok_json, i), gpo_tokenizer_is_special(tok, i));
    }

    /* The tokenizer cases, in both modes: the golden ids from both tokenizers. */
    const char *files[] = {TOK_CASES "cases.jsonl", TOK_CASES "specials.jsonl"};
    size_t n_cases = 0;
    for (int f = 0; f < 2; f++) {
        char *buf = read_all_or_fail(files[f], &len);
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            cJSON *j = cJSON_Parse(line);
            assert_non_null(j);
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
            assert_true(cJSON_IsString(text) && cJSON_IsArray(ids));
            for (int flags = 0; flags <= GPO_ENCODE_SPECIAL; flags += GPO_ENCODE_SPECIAL) {
                struct gpo_ids x = {0}, y = {0};
                const char *t = text->valuestring;
                assert_int_equal(gpo_tokenizer_encode(tok_json, t, strlen(t), flags, &x), GPO_OK);
                assert_int_equal(gpo_tokenizer_encode(tok, t, strlen(t), flags, &y), GPO_OK);
                if (x.n != y.n || (x.n && memcmp(x.ids, y.ids, x.n * sizeof *x.ids) != 0))
                    fail_msg("%s: ids differ for \"%s\" (flags %d)", files[f], t, flags);
                gpo_ids_free(&x);
                gpo_ids_free(&y);
            }
            n_cases++;
            cJSON_Delete(j);
        }
        free(buf);
    }
    printf("[ INFO     ] %zu tokenizer cases, both modes, identical ids\n", n_cases);
    assert_true(n_cases >= 400);
    gpo_tokenizer_free(tok);
}

/* ------------------------------------------------------------------------- */
/* The real shapes                                                           */

static void round_trip_config(const struct gpo_config *want, const char *name) {
    char path[512];
    tmp_path(path, sizeof path, name);
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    if (gpo_gguf_write_config(&w, want, name) != GPO_OK) fail_msg("%s", gpo_last_error());
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    struct gpo_config got;
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    if (gpo_gguf_read_config(&g, &got) != GPO_OK) fail_msg("%s", gpo_last_error());
    assert_config_equal(want, &got);
    gpo_gguf_close(&g);
}

/* HF config.json of a preset (the shapes of spec 1.1). */
static void preset_config(int n_layer, int n_expert, struct gpo_config *cfg) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"model_type\": \"gpt_oss\", \"num_hidden_layers\": %d, \"num_local_experts\": %d,"
             " \"num_experts_per_tok\": 4, \"hidden_size\": 2880, \"intermediate_size\": 2880,"
             " \"head_dim\": 64, \"num_attention_heads\": 64, \"num_key_value_heads\": 8,"
             " \"vocab_size\": 201088, \"max_position_embeddings\": 131072,"
             " \"rope_theta\": 150000.0, \"rope_scaling\": {\"rope_type\": \"yarn\","
             " \"factor\": 32.0, \"beta_fast\": 32.0, \"beta_slow\": 1.0,"
             " \"original_max_position_embeddings\": 4096, \"truncate\": false},"
             " \"sliding_window\": 128, \"rms_norm_eps\": 1e-05, \"swiglu_limit\": 7.0,"
             " \"eos_token_id\": 200002, \"pad_token_id\": 199999}",
             n_layer, n_expert);
    parse_config(json, cfg);
}

static void test_presets_round_trip(void **state) {
    (void)state;
    struct gpo_config c;
    preset_config(24, 32, &c);
    round_trip_config(&c, "20b.gguf");
    preset_config(36, 128, &c);
    round_trip_config(&c, "120b.gguf");

    /* Non-default values take the optional keys: betas, a sliding pattern. */
    c.rope_beta_fast = 16.0;
    c.rope_beta_slow = 2.0;
    for (int l = 0; l < c.n_layer; l++) c.layer_sliding[l] = l % 3 == 0;
    round_trip_config(&c, "120b-odd.gguf");
    /* No scaling at all. */
    c.rope_factor = 1.0;
    round_trip_config(&c, "120b-noscale.gguf");
}

/* The 20b keys with the types and values of spec 4.5, in the converter's order. */
static void test_keys_as_converter(void **state) {
    (void)state;
    struct gpo_config c;
    preset_config(24, 32, &c);
    char path[512];
    tmp_path(path, sizeof path, "20b-keys.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_write_config(&w, &c, "Gpt Oss 20b"), GPO_OK);
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    static const struct {
        const char *key;
        uint32_t type;
        double value;
    } want[] = {
        {"gpt-oss.block_count", GPO_GGUF_U32, 24},
        {"gpt-oss.context_length", GPO_GGUF_U32, 131072},
        {"gpt-oss.embedding_length", GPO_GGUF_U32, 2880},
        {"gpt-oss.feed_forward_length", GPO_GGUF_U32, 2880},
        {"gpt-oss.attention.head_count", GPO_GGUF_U32, 64},
        {"gpt-oss.attention.head_count_kv", GPO_GGUF_U32, 8},
        {"gpt-oss.rope.freq_base", GPO_GGUF_F32, 150000},
        {"gpt-oss.attention.layer_norm_rms_epsilon", GPO_GGUF_F32, (double)1e-5f},
        {"gpt-oss.expert_count", GPO_GGUF_U32, 32},
        {"gpt-oss.expert_used_count", GPO_GGUF_U32, 4},
        {"gpt-oss.attention.key_length", GPO_GGUF_U32, 64},
        {"gpt-oss.attention.value_length", GPO_GGUF_U32, 64},
        {"gpt-oss.attention.sliding_window", GPO_GGUF_U32, 128},
        {"gpt-oss.expert_feed_forward_length", GPO_GGUF_U32, 2880},
        {"gpt-oss.rope.scaling.factor", GPO_GGUF_F32, 32},
        {"gpt-oss.rope.scaling.original_context_length", GPO_GGUF_U32, 4096},
        {"general.quantization_version", GPO_GGUF_U32, 2},
        {"tokenizer.ggml.eos_token_id", GPO_GGUF_U32, 200002},
        {"tokenizer.ggml.padding_token_id", GPO_GGUF_U32, 199999},
    };
    const struct gpo_gguf_kv *prev = NULL;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const struct gpo_gguf_kv *kv = gpo_gguf_find_kv(&g, want[i].key);
        if (!kv || kv->type != want[i].type)
            fail_msg("key %s missing or of the wrong type", want[i].key);
        double v;
        assert_int_equal(gpo_gguf_get_f64(&g, want[i].key, &v), GPO_OK);
        if (v != want[i].value) fail_msg("key %s is %g, want %g", want[i].key, v, want[i].value);
        if (prev && kv < prev) fail_msg("key %s is out of the converter's order", want[i].key);
        prev = kv;
    }
    struct gpo_gguf_str s;
    assert_int_equal(gpo_gguf_get_str(&g, "general.architecture", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "gpt-oss"));
    assert_int_equal(gpo_gguf_get_str(&g, "general.name", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "Gpt Oss 20b"));
    assert_int_equal(gpo_gguf_get_str(&g, "gpt-oss.rope.scaling.type", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "yarn"));
    /* Default values leave the optional keys out, as the converter does. */
    assert_null(gpo_gguf_find_kv(&g, "gpt-oss.rope.scaling.yarn_beta_fast"));
    assert_null(gpo_gguf_find_kv(&g, "gpt-oss.rope.scaling.yarn_beta_slow"));
    assert_null(gpo_gguf_find_kv(&g, "gpt-oss.attention.sliding_window_pattern"));
    gpo_gguf_close(&g);

    uint32_t ft = 99;
    assert_int_equal(gpo_gguf_file_type(GPO_GGML_Q8_0, &ft), 0);
    assert_int_equal(ft, 7);
    assert_int_equal(gpo_gguf_file_type(GPO_GGML_F16, &ft), 0);
    assert_int_equal(ft, 1);
    assert_int_equal(gpo_gguf_file_type(GPO_GGML_MXFP4, &ft), -1);
}

/* ------------------------------------------------------------------------- */
/* Hand-written metadata: optional keys, and what is refused                 */

enum kvtype { KV_U32, KV_F32, KV_STR, KV_BOOLS, KV_DROP };

struct kvdef {
    const char *key;
    enum kvtype type;
    double num;
    const char *str; /* KV_STR: the string; KV_BOOLS: "1010..." */
};

/* A small valid configuration, written key by key. */
static const struct kvdef base_kvs[] = {
    {"general.architecture", KV_STR, 0, "gpt-oss"},
    {"gpt-oss.vocab_size", KV_U32, 300, NULL},
    {"gpt-oss.block_count", KV_U32, 3, NULL},
    {"gpt-oss.context_length", KV_U32, 4096, NULL},
    {"gpt-oss.embedding_length", KV_U32, 64, NULL},
    {"gpt-oss.feed_forward_length", KV_U32, 64, NULL},
    {"gpt-oss.attention.head_count", KV_U32, 4, NULL},
    {"gpt-oss.attention.head_count_kv", KV_U32, 2, NULL},
    {"gpt-oss.rope.freq_base", KV_F32, 150000, NULL},
    {"gpt-oss.attention.layer_norm_rms_epsilon", KV_F32, 1e-5, NULL},
    {"gpt-oss.expert_count", KV_U32, 4, NULL},
    {"gpt-oss.expert_used_count", KV_U32, 2, NULL},
    {"gpt-oss.attention.key_length", KV_U32, 64, NULL},
    {"gpt-oss.attention.value_length", KV_U32, 64, NULL},
    {"gpt-oss.attention.sliding_window", KV_U32, 16, NULL},
    {"gpt-oss.expert_feed_forward_length", KV_U32, 64, NULL},
    {"gpt-oss.rope.scaling.type", KV_STR, 0, "yarn"},
    {"gpt-oss.rope.scaling.factor", KV_F32, 32, NULL},
    {"gpt-oss.rope.scaling.original_context_length", KV_U32, 4096, NULL},
};
#define N_BASE (sizeof base_kvs / sizeof *base_kvs)

static void put_kv(struct gpo_gguf_writer *w, const struct kvdef *d) {
    enum gpo_status s = GPO_OK;
    if (d->type == KV_U32) s = gpo_gguf_writer_kv_u32(w, d->key, (uint32_t)d->num);
    if (d->type == KV_F32) s = gpo_gguf_writer_kv_f32(w, d->key, (float)d->num);
    if (d->type == KV_STR) s = gpo_gguf_writer_kv_str(w, d->key, d->str);
    if (d->type == KV_BOOLS) {
        uint8_t b[16];
        size_t n = strlen(d->str);
        for (size_t k = 0; k < n; k++) b[k] = d->str[k] == '1';
        s = gpo_gguf_writer_kv_arr(w, d->key, GPO_GGUF_BOOL, b, n);
    }
    assert_int_equal(s, GPO_OK);
}

/* Write base_kvs with each of over[0..n) replacing (KV_DROP: removing) the key of
 * the same name, or added when base_kvs lacks it; read the configuration back. */
static enum gpo_status read_variant(const struct kvdef *over, size_t n, struct gpo_config *cfg) {
    char path[512];
    tmp_path(path, sizeof path, "variant.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    for (size_t i = 0; i < N_BASE; i++) {
        const struct kvdef *d = &base_kvs[i];
        for (size_t k = 0; k < n; k++)
            if (strcmp(over[k].key, d->key) == 0) d = &over[k];
        put_kv(&w, d);
    }
    for (size_t k = 0; k < n; k++) {
        int in_base = 0;
        for (size_t i = 0; i < N_BASE; i++) in_base |= strcmp(over[k].key, base_kvs[i].key) == 0;
        if (!in_base) put_kv(&w, &over[k]);
    }
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    enum gpo_status s = gpo_gguf_read_config(&g, cfg);
    gpo_gguf_close(&g);
    return s;
}

#define VARIANT(cfg, ...)                                                                      \
    read_variant((const struct kvdef[]){__VA_ARGS__},                                           \
                 sizeof((const struct kvdef[]){__VA_ARGS__}) / sizeof(struct kvdef), cfg)

static void test_optional_keys(void **state) {
    (void)state;
    struct gpo_config c;
    assert_int_equal(read_variant(NULL, 0, &c), GPO_OK);
    assert_int_equal(c.n_vocab, 300);
    assert_int_equal(c.n_layer, 3);
    assert_int_equal(c.max_position, 4096);
    assert_true(c.rope_factor == 32.0 && c.rope_beta_fast == 32.0 && c.rope_beta_slow == 1.0);
    assert_true(c.swiglu_alpha == 1.702f && c.swiglu_limit == 7.0f);
    assert_int_equal(c.eos_id, -1);
    assert_int_equal(c.pad_id, -1);
    assert_true(c.layer_sliding[0] && !c.layer_sliding[1] && c.layer_sliding[2]);

    /* head_count_kv defaults to head_count; feed_forward_length stands in for the
     * expert one, which wins when both are there. */
    assert_int_equal(VARIANT(&c, {"gpt-oss.attention.head_count_kv", KV_DROP, 0, NULL}), GPO_OK);
    assert_int_equal(c.n_head_kv, 4);
    assert_int_equal(VARIANT(&c, {"gpt-oss.expert_feed_forward_length", KV_DROP, 0, NULL},
                             {"gpt-oss.feed_forward_length", KV_U32, 96, NULL}), GPO_OK);
    assert_int_equal(c.n_ff, 96);
    assert_int_equal(VARIANT(&c, {"gpt-oss.feed_forward_length", KV_U32, 96, NULL}), GPO_OK);
    assert_int_equal(c.n_ff, 64);

    /* No scaling: no type and no factor, or type "none". */
    assert_int_equal(VARIANT(&c, {"gpt-oss.rope.scaling.type", KV_DROP, 0, NULL},
                             {"gpt-oss.rope.scaling.factor", KV_DROP, 0, NULL}), GPO_OK);
    assert_true(c.rope_factor == 1.0);
    assert_int_equal(VARIANT(&c, {"gpt-oss.rope.scaling.type", KV_STR, 0, "none"},
                             {"gpt-oss.rope.scaling.factor", KV_F32, 1, NULL}), GPO_OK);
    assert_true(c.rope_factor == 1.0);

    /* YaRN betas, token ids, the vocabulary from the tokens array. */
    assert_int_equal(VARIANT(&c, {"gpt-oss.rope.scaling.yarn_beta_fast", KV_F32, 24, NULL},
                             {"gpt-oss.rope.scaling.yarn_beta_slow", KV_F32, 2, NULL},
                             {"tokenizer.ggml.eos_token_id", KV_U32, 7, NULL},
                             {"tokenizer.ggml.padding_token_id", KV_U32, 9, NULL}), GPO_OK);
    assert_true(c.rope_beta_fast == 24.0 && c.rope_beta_slow == 2.0);
    assert_true(c.eos_id == 7 && c.pad_id == 9);

    /* The sliding pattern as llama.cpp's period (l % P < P - 1), or one BOOL per layer. */
    const char *pat = "gpt-oss.attention.sliding_window_pattern";
    assert_int_equal(VARIANT(&c, {pat, KV_U32, 3, NULL}), GPO_OK);
    assert_true(c.layer_sliding[0] && c.layer_sliding[1] && !c.layer_sliding[2]);
    assert_int_equal(VARIANT(&c, {pat, KV_U32, 0, NULL}), GPO_OK);
    assert_true(c.layer_sliding[0] && c.layer_sliding[1] && c.layer_sliding[2]);
    assert_int_equal(VARIANT(&c, {pat, KV_BOOLS, 0, "011"}), GPO_OK);
    assert_true(!c.layer_sliding[0] && c.layer_sliding[1] && c.layer_sliding[2]);
}

static void test_bad_metadata(void **state) {
    (void)state;
    struct gpo_config c;
    const enum gpo_status E = GPO_ERR_CONFIG, N = GPO_ERR_NOT_GPTOSS;
    expect_error(VARIANT(&c, {"general.architecture", KV_STR, 0, "llama"}), N, "\"llama\"",
                 "not \"gpt-oss\"");
    expect_error(VARIANT(&c, {"general.architecture", KV_STR, 0, "gptoss"}), N, "\"gptoss\"",
                 "Ollama");
    expect_error(VARIANT(&c, {"general.architecture", KV_STR, 0, "bad\x01name"}), N, "bad\\x01name",
                 NULL);
    expect_error(VARIANT(&c, {"general.architecture", KV_DROP, 0, NULL}), N,
                 "'general.architecture' is missing", NULL);
    expect_error(VARIANT(&c, {"general.architecture", KV_U32, 1, NULL}), E, "general.architecture",
                 "STRING");
    expect_error(VARIANT(&c, {"gpt-oss.block_count", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.block_count' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.block_count", KV_STR, 0, "3"}), E, "gpt-oss.block_count",
                 "STRING");
    expect_error(VARIANT(&c, {"gpt-oss.block_count", KV_U32, 0, NULL}), E, "gpt-oss.block_count",
                 "is 0, outside [1, 256]");
    expect_error(VARIANT(&c, {"gpt-oss.attention.layer_norm_rms_epsilon", KV_STR, 0, "x"}), E,
                 "layer_norm_rms_epsilon", "STRING");
    expect_error(VARIANT(&c, {"gpt-oss.rope.freq_base", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.rope.freq_base' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.attention.key_length", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.attention.key_length' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.attention.value_length", KV_U32, 128, NULL}), E,
                 "gpt-oss.attention.value_length' is 128", "key_length is 64");
    expect_error(VARIANT(&c, {"gpt-oss.expert_feed_forward_length", KV_DROP, 0, NULL},
                         {"gpt-oss.feed_forward_length", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.feed_forward_length' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.rope.scaling.type", KV_STR, 0, "linear"}), E,
                 "gpt-oss.rope.scaling.type", "\"linear\"");
    expect_error(VARIANT(&c, {"gpt-oss.rope.scaling.type", KV_DROP, 0, NULL}), E,
                 "gpt-oss.rope.scaling.factor' is 32", "absent");
    expect_error(VARIANT(&c, {"gpt-oss.rope.scaling.factor", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.rope.scaling.factor' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.rope.scaling.original_context_length", KV_DROP, 0, NULL}), E,
                 "'gpt-oss.rope.scaling.original_context_length' is missing", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.rope.scaling.factor", KV_F32, 0.5, NULL}), E,
                 "gpt-oss.rope.scaling.factor' is 0.5", "outside");
    expect_error(VARIANT(&c, {"gpt-oss.expert_used_count", KV_U32, 8, NULL}), E,
                 "8 experts per token but only 4 experts", NULL);
    expect_error(VARIANT(&c, {"gpt-oss.attention.sliding_window_pattern", KV_BOOLS, 0, "10"}), E,
                 "sliding_window_pattern", "3 BOOLs");
    expect_error(VARIANT(&c, {"gpt-oss.vocab_size", KV_DROP, 0, NULL}), E,
                 "vocabulary size is unknown", NULL);
    expect_error(VARIANT(&c, {"tokenizer.ggml.eos_token_id", KV_STR, 0, "x"}), E,
                 "tokenizer.ggml.eos_token_id", "STRING");
    /* gpo_config_validate's checks come last. */
    expect_error(VARIANT(&c, {"gpt-oss.embedding_length", KV_U32, 65, NULL}), E,
                 "not a multiple of 32", NULL);
}

/* ------------------------------------------------------------------------- */
/* The tensor table                                                          */

/* H 32, 2 heads of 16 (Q 32), 1 KV head (K 16), I 32, 2 experts, 8 tokens, 2 layers. */
static const char small_json[] =
    "{\"model_type\": \"gpt_oss\", \"num_hidden_layers\": 2, \"num_local_experts\": 2,"
    " \"num_experts_per_tok\": 2, \"hidden_size\": 32, \"intermediate_size\": 32,"
    " \"head_dim\": 16, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"vocab_size\": 8, \"sliding_window\": 4}";

struct tdef {
    char name[64];
    uint32_t type;
    int n_dims;
    int64_t ne[3];
};

static void add_def(struct tdef *t, size_t *n, const char *name, uint32_t type, int n_dims,
                    int64_t a, int64_t b, int64_t c) {
    struct tdef *d = &t[(*n)++];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->type = type;
    d->n_dims = n_dims;
    d->ne[0] = a;
    d->ne[1] = b;
    d->ne[2] = c;
}

/* Drop tensor `name` (the last one takes its place). */
static void drop_def(struct tdef *t, size_t *n, const char *name);

/* The tensors of small_json's model; fused_layer (-1: none) uses ffn_gate_up_exps. */
static size_t model_tensors(struct tdef *t, int fused_layer) {
    const uint32_t F = GPO_GGML_F32, B = GPO_GGML_BF16, M = GPO_GGML_MXFP4;
    size_t n = 0;
#define T(nm, ty, nd, a, b, c) add_def(t, &n, nm, ty, nd, a, b, c)
    T("token_embd.weight", GPO_GGML_Q8_0, 2, 32, 8, 1);
    T("output_norm.weight", F, 1, 32, 1, 1);
    T("output.weight", B, 2, 32, 8, 1);
    for (int l = 0; l < 2; l++) {
        struct {
            const char *s;
            uint32_t ty;
            int nd;
            int64_t a, b, c;
        } L[] = {
            {"attn_norm.weight", F, 1, 32, 1, 1},  {"attn_q.weight", B, 2, 32, 32, 1},
            {"attn_q.bias", F, 1, 32, 1, 1},       {"attn_k.weight", GPO_GGML_F16, 2, 32, 16, 1},
            {"attn_k.bias", F, 1, 16, 1, 1},       {"attn_v.weight", F, 2, 32, 16, 1},
            {"attn_v.bias", F, 1, 16, 1, 1},       {"attn_output.weight", B, 2, 32, 32, 1},
            {"attn_output.bias", F, 1, 32, 1, 1},  {"attn_sinks.weight", F, 1, 2, 1, 1},
            {"post_attention_norm.weight", F, 1, 32, 1, 1},
            {"ffn_gate_inp.weight", F, 2, 32, 2, 1}, {"ffn_gate_inp.bias", F, 1, 2, 1, 1},
            {"ffn_gate_exps.weight", M, 3, 32, 32, 2}, {"ffn_gate_exps.bias", F, 2, 32, 2, 1},
            {"ffn_up_exps.weight", M, 3, 32, 32, 2}, {"ffn_up_exps.bias", F, 2, 32, 2, 1},
            {"ffn_gate_up_exps.weight", M, 3, 32, 64, 2}, {"ffn_gate_up_exps.bias", F, 2, 64, 2, 1},
            {"ffn_down_exps.weight", M, 3, 32, 32, 2}, {"ffn_down_exps.bias", F, 2, 32, 2, 1},
        };
        for (size_t k = 0; k < sizeof L / sizeof *L; k++) {
            int fused = strstr(L[k].s, "gate_up") != NULL;
            int split = !fused && (strstr(L[k].s, "gate_exps") || strstr(L[k].s, "up_exps"));
            if ((l == fused_layer && split) || (l != fused_layer && fused)) continue;
            char nm[64];
            snprintf(nm, sizeof nm, "blk.%d.%s", l, L[k].s);
            T(nm, L[k].ty, L[k].nd, L[k].a, L[k].b, L[k].c);
        }
    }
#undef T
    return n;
}

/* Write the tensors (zeros) with the small config and check their shapes. */
static enum gpo_status check_model(const struct tdef *t, size_t n) {
    struct gpo_config cfg;
    parse_config(small_json, &cfg);
    char path[512];
    tmp_path(path, sizeof path, "shapes.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_write_config(&w, &cfg, NULL), GPO_OK);
    for (size_t i = 0; i < n; i++)
        if (gpo_gguf_writer_declare(&w, t[i].name, t[i].type, t[i].n_dims, t[i].ne) != GPO_OK)
            fail_msg("%s", gpo_last_error());
    for (size_t i = 0; i < n; i++) {
        uint64_t nb;
        assert_int_equal(gpo_ggml_nbytes(t[i].type, t[i].n_dims, t[i].ne, &nb), 0);
        assert_int_equal(write_zeros(&w, nb), GPO_OK);
    }
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    struct gpo_config got;
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    enum gpo_status s = gpo_gguf_read_config(&g, &got);
    if (s == GPO_OK) assert_config_equal(&cfg, &got);
    if (s == GPO_OK) s = gpo_gguf_check_shapes(&g, &got);
    gpo_gguf_close(&g);
    return s;
}

static struct tdef *find_def(struct tdef *t, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0) return &t[i];
    fail_msg("no tensor %s in the test model", name);
    return NULL;
}

static void drop_def(struct tdef *t, size_t *n, const char *name) {
    struct tdef *d = find_def(t, *n, name);
    *d = t[--*n];
}

static void test_check_shapes(void **state) {
    (void)state;
    struct tdef t[64];
    size_t n = model_tensors(t, -1);
    if (check_model(t, n) != GPO_OK) fail_msg("%s", gpo_last_error());
    /* ffn_gate_up_exps in layer 1, separate gate/up in layer 0. */
    n = model_tensors(t, 1);
    if (check_model(t, n) != GPO_OK) fail_msg("%s", gpo_last_error());

    /* Missing. */
    n = model_tensors(t, -1);
    drop_def(t, &n, "blk.1.attn_sinks.weight");
    expect_error(check_model(t, n), GPO_ERR_MISSING_TENSOR, "'blk.1.attn_sinks.weight' is missing",
                 "[2]");
    n = model_tensors(t, 1);
    drop_def(t, &n, "blk.1.ffn_gate_up_exps.bias");
    expect_error(check_model(t, n), GPO_ERR_MISSING_TENSOR,
                 "'blk.1.ffn_gate_up_exps.bias' is missing", "[64, 2]");
    n = model_tensors(t, -1);
    drop_def(t, &n, "output.weight");
    expect_error(check_model(t, n), GPO_ERR_MISSING_TENSOR, "'output.weight' is missing", NULL);

    /* Misshapen. */
    n = model_tensors(t, -1);
    find_def(t, n, "blk.0.attn_k.weight")->ne[1] = 32;
    expect_error(check_model(t, n), GPO_ERR_SHAPE, "'blk.0.attn_k.weight' has shape [32, 32]",
                 "expected [32, 16]");
    n = model_tensors(t, -1);
    struct tdef *d = find_def(t, n, "blk.1.ffn_down_exps.weight");
    d->n_dims = 2;
    d->ne[2] = 1;
    expect_error(check_model(t, n), GPO_ERR_SHAPE,
                 "'blk.1.ffn_down_exps.weight' has shape [32, 32]", "expected [32, 32, 2]");
    n = model_tensors(t, -1);
    d = find_def(t, n, "blk.0.attn_q.bias");
    d->n_dims = 2;
    d->ne[1] = 1; /* an added trailing 1 is the same shape */
    if (check_model(t, n) != GPO_OK) fail_msg("%s", gpo_last_error());


    /* Wrongly typed. */
    n = model_tensors(t, -1);
    find_def(t, n, "blk.0.ffn_up_exps.weight")->type = GPO_GGML_Q8_0;
    expect_error(check_model(t, n), GPO_ERR_DTYPE, "'blk.0.ffn_up_exps.weight' is Q8_0", "MXFP4");
    n = model_tensors(t, -1);
    find_def(t, n, "blk.1.ffn_gate_inp.bias")->type = GPO_GGML_I32;
    expect_error(check_model(t, n), GPO_ERR_DTYPE, "'blk.1.ffn_gate_inp.bias' is I32",
                 "F32, F16 or BF16");
    n = model_tensors(t, -1);
    find_def(t, n, "blk.1.attn_v.weight")->type = GPO_GGML_MXFP4;
    expect_error(check_model(t, n), GPO_ERR_DTYPE, "'blk.1.attn_v.weight' is MXFP4",
                 "F32, F16, BF16 or Q8_0");

    /* Surplus: a third layer, an unknown name, both expert layouts. */
    n = model_tensors(t, -1);
    t[n++] = (struct tdef){"blk.2.attn_norm.weight", GPO_GGML_F32, 1, {32, 1, 1}};
    expect_error(check_model(t, n), GPO_ERR_CONFIG, "'blk.2.attn_norm.weight' is not part",
                 "2 layers");
    n = model_tensors(t, -1);
    t[n++] = (struct tdef){"rope_freqs.weight", GPO_GGML_F32, 1, {8, 1, 1}};
    expect_error(check_model(t, n), GPO_ERR_CONFIG, "'rope_freqs.weight' is not part", NULL);
    n = model_tensors(t, -1);
    t[n++] = (struct tdef){"blk.01.attn_norm.weight", GPO_GGML_F32, 1, {32, 1, 1}};
    expect_error(check_model(t, n), GPO_ERR_CONFIG, "'blk.01.attn_norm.weight' is not part", NULL);
    n = model_tensors(t, -1);
    t[n++] = (struct tdef){"blk.0.ffn_gate_up_exps.weight", GPO_GGML_MXFP4, 3, {32, 64, 2}};
    expect_error(check_model(t, n), GPO_ERR_CONFIG, "'blk.0.ffn_gate_exps.weight' and "
                 "'blk.0.ffn_gate_up_exps.weight'", "one expert layout");

    /* NULL arguments. */
    struct gpo_config cfg;
    assert_int_equal(gpo_gguf_check_shapes(NULL, &cfg), GPO_ERR_ARG);
    assert_int_equal(gpo_gguf_read_config(NULL, &cfg), GPO_ERR_ARG);
}

/* ------------------------------------------------------------------------- */
/* Tokenizer keys that are missing or of the wrong type                      */

static enum gpo_status read_tok_variant(const char *drop, const char *as_u32) {
    char path[512];
    tmp_path(path, sizeof path, "tok.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    const char *toks[256];
    char chars[256][3];
    int32_t types[256];
    for (int b = 0; b < 256; b++) {
        size_t k = gpo_byte_to_unicode((unsigned char)b, chars[b]);
        chars[b][k] = 0;
        toks[b] = chars[b];
        types[b] = GPO_TOKTYPE_NORMAL;
    }
    const char *keys[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.eos_token_id"};
    for (int k = 0; k < 5; k++) {
        enum gpo_status s;
        if (drop && strcmp(drop, keys[k]) == 0) continue;
        if (as_u32 && strcmp(as_u32, keys[k]) == 0) s = gpo_gguf_writer_kv_u32(&w, keys[k], 1);
        else if (k == 0) s = gpo_gguf_writer_kv_str(&w, keys[k], "gpt2");
        else if (k == 1) s = gpo_gguf_writer_kv_str(&w, keys[k], "gpt-4o");
        else if (k == 2) s = gpo_gguf_writer_kv_arr_str(&w, keys[k], toks, NULL, 256);
        else if (k == 3) s = gpo_gguf_writer_kv_arr(&w, keys[k], GPO_GGUF_I32, types, 256);
        else s = gpo_gguf_writer_kv_u32(&w, keys[k], 65);
        assert_int_equal(s, GPO_OK);
    }
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    gpo_tokenizer *t = (gpo_tokenizer *)1;
    enum gpo_status s = gpo_gguf_read_tokenizer(&g, &t);
    if (s == GPO_OK) {
        struct gpo_ids ids = {0};
        assert_int_equal(gpo_tokenizer_encode(t, "hi", 2, 0, &ids), GPO_OK);
        assert_int_equal(ids.n, 2);
        assert_int_equal(ids.ids[0], 'h');
        gpo_ids_free(&ids);
        gpo_tokenizer_free(t);
    } else {
        assert_null(t);
    }
    gpo_gguf_close(&g);
    return s;
}

static void test_tokenizer_keys(void **state) {
    (void)state;
    const enum gpo_status E = GPO_ERR_TOKENIZER;
    assert_int_equal(read_tok_variant(NULL, NULL), GPO_OK);
    expect_error(read_tok_variant("tokenizer.ggml.model", NULL), E,
                 "'tokenizer.ggml.model' is missing", NULL);
    expect_error(read_tok_variant("tokenizer.ggml.tokens", NULL), E,
                 "'tokenizer.ggml.tokens' is missing", NULL);
    expect_error(read_tok_variant("tokenizer.ggml.token_type", NULL), E,
                 "'tokenizer.ggml.token_type' is missing", NULL);
    expect_error(read_tok_variant("tokenizer.ggml.pre", NULL), E, "tokenizer.ggml.pre", "missing");
    expect_error(read_tok_variant(NULL, "tokenizer.ggml.model"), E, "tokenizer.ggml.model",
                 "STRING");
    expect_error(read_tok_variant(NULL, "tokenizer.ggml.tokens"), E, "tokenizer.ggml.tokens",
                 "ARRAY of STRING");
    expect_error(read_tok_variant(NULL, "tokenizer.ggml.token_type"), E,
                 "tokenizer.ggml.token_type", "ARRAY of I32");

    struct gpo_gguf_writer w;
    char path[512];
    tmp_path(path, sizeof path, "never.gguf");
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_write_tokenizer(&w, tok_json, -1), GPO_ERR_ARG);
    assert_int_equal(gpo_gguf_write_tokenizer(&w, tok_json, 100), GPO_ERR_ARG);
    gpo_gguf_writer_abort(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_round_trip),
        cmocka_unit_test(test_presets_round_trip),
        cmocka_unit_test(test_keys_as_converter),
        cmocka_unit_test(test_optional_keys),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_check_shapes),
        cmocka_unit_test(test_tokenizer_keys),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
