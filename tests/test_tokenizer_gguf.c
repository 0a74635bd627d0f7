/* test_tokenizer_gguf.c - the tokenizer as GGUF metadata arrays: tokenizer.json
 * exported to the tokenizer.ggml.* arrays and loaded back gives the same ids and
 * bytes on every golden case in both modes; the arrays have the layout llama.cpp's
 * converter writes (types, padding, merges equal to tokenizer.json's, special
 * ids); GPT-2 byte-to-unicode for all 256 bytes; and hostile vocabularies are
 * refused with a message that names the key and the id. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"
#include "tokenizer_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gpo.h"
#include "util.h"

#define FIXTURES "tests/fixtures/tokenizer/"
#define N_VOCAB 201088 /* embedding rows of gpt-oss */

static gpo_tokenizer *tok_json; /* from tokenizer.json */
static gpo_tokenizer *tok_gguf; /* from the exported arrays */
static struct gpo_tok_vocab vocab;
static char tok_path[4096];

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */

static int same_ids(const struct gpo_ids *a, const int32_t *b, size_t n) {
    return a->n == n && (n == 0 || memcmp(a->ids, b, n * sizeof *b) == 0);
}

static int str_eq(struct gpo_tok_str s, const char *lit) {
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static int32_t type_of(const struct gpo_tok_vocab *v, uint64_t i) {
    int32_t t;
    memcpy(&t, (const char *)v->types + 4 * i, 4);
    return t;
}

static int group_setup(void **state) {
    (void)state;
    if (gpo_tokenizer_find(NULL, NULL, tok_path, sizeof tok_path) != GPO_OK ||
        gpo_tokenizer_load(tok_path, &tok_json) != GPO_OK) {
        fprintf(stderr, "%s\n", gpo_last_error());
        return -1;
    }
    double t0 = gpo_now();
    if (gpo_tokenizer_export_vocab(tok_json, N_VOCAB, &vocab) != GPO_OK) {
        fprintf(stderr, "export: %s\n", gpo_last_error());
        return -1;
    }
    double t1 = gpo_now();
    if (gpo_tokenizer_load_vocab(&vocab, &tok_gguf) != GPO_OK) {
        fprintf(stderr, "load_vocab: %s\n", gpo_last_error());
        return -1;
    }
    printf("[ MEASURE  ] export %.3f s, load from arrays (merges checked) %.3f s\n", t1 - t0,
           gpo_now() - t1);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    gpo_tokenizer_free(tok_gguf);
    gpo_tokenizer_free(tok_json);
    gpo_tok_vocab_free(&vocab);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Round trip through the arrays                                             */

/* Every case, in both modes, gives the same ids from both tokenizers; in its
 * own file's mode those are the golden ids; the goldens decode to the text. */
static void run_both(const char *file, int golden_flags) {
    size_t n, bad = 0;
    struct gcase *cs = load_cases(file, &n);
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        struct gcase *c = &cs[i];
        for (int flags = 0; flags <= GPO_ENCODE_SPECIAL; flags += GPO_ENCODE_SPECIAL) {
            struct gpo_ids a = {0}, b = {0};
            assert_int_equal(gpo_tokenizer_encode(tok_json, c->text, c->len, flags, &a), GPO_OK);
            assert_int_equal(gpo_tokenizer_encode(tok_gguf, c->text, c->len, flags, &b), GPO_OK);
            int golden = flags == golden_flags;
            if (!same_ids(&a, b.ids, b.n) || (golden && !same_ids(&b, c->ids, c->n_ids))) {
                fprintf(stderr, "%s:%d: ids differ (flags %d)\n", file, c->line, flags);
                bad++;
            }
            gpo_ids_free(&a);
            gpo_ids_free(&b);
        }
        struct gpo_str s = {0};
        assert_int_equal(gpo_tokenizer_decode(tok_gguf, c->ids, c->n_ids, &s), GPO_OK);
        if (s.n != c->len || memcmp(s.s, c->text, c->len) != 0) {
            fprintf(stderr, "%s:%d: decode differs\n", file, c->line);
            bad++;
        }
        gpo_str_free(&s);
    }
    printf("[ INFO     ] %s: %zu cases, both modes\n", file, n);
    free_cases(cs, n);
    assert_int_equal(bad, 0);
}

static void test_goldens_ordinary(void **state) {
    (void)state;
    run_both(FIXTURES "cases.jsonl", 0);
}

static void test_goldens_special(void **state) {
    (void)state;
    run_both(FIXTURES "specials.jsonl", GPO_ENCODE_SPECIAL);
}

/* Every id has the same bytes and the same special flag; padding has none. */
static void test_same_tokens(void **state) {
    (void)state;
    int32_t n = gpo_tokenizer_n_tokens(tok_json);
    assert_int_equal(n, 200019);
    assert_int_equal(gpo_tokenizer_n_tokens(tok_gguf), n);
    for (int32_t id = 0; id < n; id++) {
        const char *a, *b;
        size_t la, lb;
        assert_int_equal(gpo_tokenizer_token_bytes(tok_json, id, &a, &la), GPO_OK);
        assert_int_equal(gpo_tokenizer_token_bytes(tok_gguf, id, &b, &lb), GPO_OK);
        if (la != lb || memcmp(a, b, la) != 0) fail_msg("token %d differs", (int)id);
        assert_int_equal(gpo_tokenizer_is_special(tok_json, id),
                         gpo_tokenizer_is_special(tok_gguf, id));
    }
    const int32_t pads[] = {200019, 200500, N_VOCAB - 1, N_VOCAB};
    for (size_t k = 0; k < sizeof pads / sizeof *pads; k++) {
        struct gpo_str s = {0};
        assert_int_equal(gpo_tokenizer_decode(tok_gguf, &pads[k], 1, &s), GPO_ERR_TOKEN);
        gpo_str_free(&s);
    }
    assert_int_equal(gpo_tokenizer_special_id(tok_gguf, "<|call|>"), GPO_TOK_CALL);
    assert_int_equal(gpo_tokenizer_special_id(tok_gguf, "[PAD200019]"), -1);
}

/* The arrays as llama.cpp's converter writes them for gpt-oss (spec 4.5). */
static void test_export_layout(void **state) {
    (void)state;
    assert_true(str_eq(vocab.model, "gpt2") && str_eq(vocab.pre, "gpt-4o"));
    assert_int_equal(vocab.n_tokens, N_VOCAB);
    assert_int_equal(vocab.n_types, N_VOCAB);
    assert_true(str_eq(vocab.tokens[0], "!"));
    assert_true(str_eq(vocab.tokens[220], "\xc4\xa0")); /* " " as U+0120 */
    assert_true(str_eq(vocab.tokens[198], "\xc4\x8a")); /* "\n" as U+010A */
    assert_true(str_eq(vocab.tokens[200006], "<|start|>"));
    assert_true(str_eq(vocab.tokens[200019], "[PAD200019]"));
    assert_true(str_eq(vocab.tokens[N_VOCAB - 1], "[PAD201087]"));
    for (uint64_t i = 0; i < N_VOCAB; i++) {
        int32_t want = i < 199998 ? GPO_TOKTYPE_NORMAL
                       : i <= 200018 ? GPO_TOKTYPE_CONTROL
                                     : GPO_TOKTYPE_UNUSED;
        if (type_of(&vocab, i) != want)
            fail_msg("token_type[%llu] = %d", (unsigned long long)i, type_of(&vocab, i));
    }
    assert_int_equal(vocab.bos_id, 199998);
    assert_int_equal(vocab.eos_id, 200002);
    assert_int_equal(vocab.pad_id, 199999);
    assert_int_equal(vocab.n_merges, 446189);
    assert_true(str_eq(vocab.merges[0], "\xc4\xa0 \xc4\xa0"));
}

/* The derived merges are tokenizer.json's model.merges, entry for entry. */
static void test_merges_equal_tokenizer_json(void **state) {
    (void)state;
    size_t len;
    char *buf = read_all(tok_path, &len);
    assert_non_null(buf);
    const char *m = strstr(buf, "\"merges\"");
    assert_non_null(m);
    m = strchr(m, '[');
    cJSON *arr = cJSON_ParseWithLength(m, len - (size_t)(m - buf));
    assert_true(cJSON_IsArray(arr));
    assert_int_equal((uint64_t)cJSON_GetArraySize(arr), vocab.n_merges);
    uint64_t i = 0;
    char want[1024];
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        /* Either "a b" strings or [a, b] pairs, depending on the tokenizers version. */
        if (cJSON_IsString(it)) {
            snprintf(want, sizeof want, "%s", it->valuestring);
        } else {
            assert_int_equal(cJSON_GetArraySize(it), 2);
            snprintf(want, sizeof want, "%s %s", cJSON_GetArrayItem(it, 0)->valuestring,
                     cJSON_GetArrayItem(it, 1)->valuestring);
        }
        if (!str_eq(vocab.merges[i], want))
            fail_msg("merge %llu: want \"%s\"", (unsigned long long)i, want);
        i++;
    }
    cJSON_Delete(arr);
    free(buf);
}

/* All 256 bytes: distinct characters, the spec 5.3 anchors, and a vocabulary made
 * of them maps back to the bytes. */
static void test_byte_to_unicode(void **state) {
    (void)state;
    char chars[256][2];
    size_t lens[256];
    for (int b = 0; b < 256; b++) {
        lens[b] = gpo_byte_to_unicode((unsigned char)b, chars[b]);
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        if (printable && b < 128) assert_true(lens[b] == 1 && chars[b][0] == (char)b);
        else assert_int_equal(lens[b], 2);
        for (int a = 0; a < b; a++)
            assert_false(lens[a] == lens[b] && memcmp(chars[a], chars[b], lens[b]) == 0);
        /* The exported single-byte tokens use the same characters. */
        int32_t id = -1;
        for (int32_t k = 0; k < 256 && id < 0; k++) {
            const char *p;
            size_t n;
            assert_int_equal(gpo_tokenizer_token_bytes(tok_json, k, &p, &n), GPO_OK);
            if (n == 1 && (unsigned char)p[0] == b) id = k;
        }
        assert_true(id >= 0);
        assert_int_equal(vocab.tokens[id].len, lens[b]);
        assert_memory_equal(vocab.tokens[id].ptr, chars[b], lens[b]);
    }
    assert_memory_equal(chars[' '], "\xc4\xa0", 2);  /* U+0120 */
    assert_memory_equal(chars[0], "\xc4\x80", 2);    /* U+0100 */
    assert_memory_equal(chars[173], "\xc5\x83", 2);  /* U+0143, the last */
    assert_memory_equal(chars[0xe9], "\xc3\xa9", 2); /* printable: itself */

    struct gpo_tok_str toks[256];
    int32_t types[256];
    for (int b = 0; b < 256; b++) {
        toks[b] = (struct gpo_tok_str){chars[b], lens[b]};
        types[b] = GPO_TOKTYPE_NORMAL;
    }
    struct gpo_tok_vocab v = {.model = {"gpt2", 4}, .pre = {"gpt-4o", 6}, .n_tokens = 256,
                              .tokens = toks, .n_types = 256, .types = types,
                              .bos_id = -1, .eos_id = -1, .pad_id = -1};
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load_vocab(&v, &t), GPO_OK);
    for (int32_t b = 0; b < 256; b++) {
        const char *p;
        size_t n;
        assert_int_equal(gpo_tokenizer_token_bytes(t, b, &p, &n), GPO_OK);
        assert_true(n == 1 && (unsigned char)p[0] == b);
    }
    gpo_tokenizer_free(t);
}

/* ------------------------------------------------------------------------- */
/* A small vocabulary, and what breaks it                                    */

/* ids 0..255: the bytes; 256 "ab", 257 "abc", 258 "<|x|>" CONTROL, 259 UNUSED,
 * 260 "[PAD260]" USER_DEFINED (old padding), 261 "<u>" USER_DEFINED. */
#define SMALL_N 262
struct small {
    char chars[256][2];
    struct gpo_tok_str toks[SMALL_N];
    int32_t types[SMALL_N];
    struct gpo_tok_str merges[3];
    struct gpo_tok_vocab v;
};

static void small_init(struct small *s) {
    memset(s, 0, sizeof *s);
    for (int b = 0; b < 256; b++) {
        size_t n = gpo_byte_to_unicode((unsigned char)b, s->chars[b]);
        s->toks[b] = (struct gpo_tok_str){s->chars[b], n};
        s->types[b] = GPO_TOKTYPE_NORMAL;
    }
    const char *extra[] = {"ab", "abc", "<|x|>", "[PAD259]", "[PAD260]", "<u>"};
    const int32_t ty[] = {GPO_TOKTYPE_NORMAL, GPO_TOKTYPE_NORMAL, GPO_TOKTYPE_CONTROL,
                          GPO_TOKTYPE_UNUSED, GPO_TOKTYPE_USER_DEFINED,
                          GPO_TOKTYPE_USER_DEFINED};
    for (int k = 0; k < 6; k++) {
        s->toks[256 + k] = (struct gpo_tok_str){extra[k], strlen(extra[k])};
        s->types[256 + k] = ty[k];
    }
    /* "ab" = a+b; "abc" = a+bc? no ("bc" is not a token) = ab+c. */
    s->merges[0] = (struct gpo_tok_str){"a b", 3};
    s->merges[1] = (struct gpo_tok_str){"ab c", 4};
    s->v = (struct gpo_tok_vocab){.model = {"gpt2", 4}, .pre = {"gpt-4o", 6},
                                  .n_tokens = SMALL_N, .tokens = s->toks, .n_types = SMALL_N,
                                  .types = s->types, .n_merges = 2, .merges = s->merges,
                                  .bos_id = 258, .eos_id = 258, .pad_id = -1};
}

static void test_small_vocab(void **state) {
    (void)state;
    struct small s;
    small_init(&s);
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load_vocab(&s.v, &t), GPO_OK);
    assert_int_equal(gpo_tokenizer_n_tokens(t), 262);
    struct gpo_ids ids = {0};
    const char text[] = "abc<|x|>ab<u>[PAD260]";
    assert_int_equal(gpo_tokenizer_encode(t, text, strlen(text), GPO_ENCODE_SPECIAL, &ids), GPO_OK);
    /* "abc" "<|x|>" "ab" "<u>" then "[PAD260]" as ordinary text: "[", "PAD", "260", "]"
     * pieces, each BPE'd to single bytes. */
    const int32_t want[] = {257, 258, 256, 261, '[', 'P', 'A', 'D', '2', '6', '0', ']'};
    assert_true(same_ids(&ids, want, sizeof want / sizeof *want));
    ids.n = 0;
    assert_int_equal(gpo_tokenizer_encode(t, "<|x|>", 5, 0, &ids), GPO_OK);
    const int32_t plain[] = {'<', '|', 'x', '|', '>'};
    assert_true(same_ids(&ids, plain, 5));
    gpo_ids_free(&ids);
    assert_true(gpo_tokenizer_is_special(t, 258) && gpo_tokenizer_is_special(t, 261));
    for (int32_t id = 259; id <= 260; id++)
        assert_int_equal(gpo_tokenizer_token_bytes(t, id, NULL, NULL), GPO_ERR_TOKEN);
    gpo_tokenizer_free(t);

    /* Without merges, ranks alone: the same result. */
    s.v.n_merges = 0;
    s.v.merges = NULL;
    assert_int_equal(gpo_tokenizer_load_vocab(&s.v, &t), GPO_OK);
    gpo_tokenizer_free(t);
}

/* Load s->v, expect failure with status st and a message containing every needle. */
static void expect_refused(struct small *s, enum gpo_status st, const char *n1, const char *n2) {
    gpo_tokenizer *t = (gpo_tokenizer *)1;
    enum gpo_status got = gpo_tokenizer_load_vocab(&s->v, &t);
    const char *msg = gpo_last_error();
    if (got != st || t != NULL || !strstr(msg, n1) || (n2 && !strstr(msg, n2)))
        fail_msg("status %d (want %d), message \"%s\" (want \"%s\", \"%s\")", (int)got, (int)st,
                 msg, n1, n2 ? n2 : "");
    printf("[ INFO     ] refused: %s\n", msg);
}

static void test_hostile(void **state) {
    (void)state;
    struct small s;
    const enum gpo_status E = GPO_ERR_TOKENIZER;

    small_init(&s);
    s.v.model = (struct gpo_tok_str){"llama", 5};
    expect_refused(&s, E, "tokenizer.ggml.model", "\"llama\"");
    small_init(&s);
    s.v.pre = (struct gpo_tok_str){"qwen2", 5};
    expect_refused(&s, E, "tokenizer.ggml.pre", "\"qwen2\"");
    small_init(&s);
    s.v.pre = (struct gpo_tok_str){NULL, 0};
    expect_refused(&s, E, "tokenizer.ggml.pre", "missing");

    small_init(&s);
    s.v.n_types = SMALL_N - 1;
    expect_refused(&s, E, "tokenizer.ggml.token_type has 261 entries", "262");
    small_init(&s);
    s.v.types = NULL;
    expect_refused(&s, E, "tokenizer.ggml.token_type is missing", NULL);
    small_init(&s);
    s.v.n_tokens = s.v.n_types = (uint64_t)1 << 40;
    expect_refused(&s, E, "tokenizer.ggml.tokens has 1099511627776 entries", "limit");
    small_init(&s);
    s.v.n_tokens = s.v.n_types = 0;
    expect_refused(&s, E, "tokenizer.ggml.tokens is missing or empty", NULL);

    small_init(&s);
    s.types[7] = GPO_TOKTYPE_BYTE;
    expect_refused(&s, E, "tokenizer.ggml.token_type[7] is 6", NULL);
    small_init(&s);
    s.types[9] = 99;
    expect_refused(&s, E, "tokenizer.ggml.token_type[9] is 99", NULL);
    small_init(&s);
    s.types[9] = GPO_TOKTYPE_UNKNOWN;
    expect_refused(&s, E, "tokenizer.ggml.token_type[9] is 2", NULL);

    /* Strings outside the byte-to-unicode mapping. */
    small_init(&s);
    s.toks[256] = (struct gpo_tok_str){"a b", 3}; /* a raw space is not a byte character */
    expect_refused(&s, E, "tokenizer.ggml.tokens[256]", "byte offset 1");
    small_init(&s);
    s.toks[256] = (struct gpo_tok_str){"a\xc5\x84", 3}; /* U+0144, one past the last */
    expect_refused(&s, E, "tokenizer.ggml.tokens[256]", "not a GPT-2 byte-to-unicode");
    small_init(&s);
    s.toks[257] = (struct gpo_tok_str){"ab\xc4", 3}; /* truncated character */
    expect_refused(&s, E, "tokenizer.ggml.tokens[257]", "byte offset 2");
    small_init(&s);
    s.toks[256] = (struct gpo_tok_str){"a\0b", 3}; /* NUL is U+0100 in the mapping */
    expect_refused(&s, E, "tokenizer.ggml.tokens[256]", "\\x00");
    small_init(&s);
    s.toks[256] = (struct gpo_tok_str){"", 0};
    expect_refused(&s, E, "tokenizer.ggml.tokens[256] is empty", NULL);
    small_init(&s);
    s.toks[258] = (struct gpo_tok_str){"<|\xff|>", 5};
    expect_refused(&s, E, "tokenizer.ggml.tokens[258] (an added token) is not valid UTF-8", NULL);

    /* Duplicates. */
    small_init(&s);
    s.toks[257] = s.toks[256];
    expect_refused(&s, E, "ids 256 and 257 have the same bytes", NULL);
    small_init(&s);
    s.toks[261] = s.toks[258];
    expect_refused(&s, E, "added tokens 258 and 261 are both \"<|x|>\"", NULL);

    /* A byte without a token, and special ids that name nothing. */
    small_init(&s);
    s.types['q'] = GPO_TOKTYPE_UNUSED;
    expect_refused(&s, E, "has no token for byte 0x71", NULL);
    small_init(&s);
    s.v.bos_id = 5000;
    expect_refused(&s, E, "tokenizer.ggml.bos_token_id is 5000", NULL);
    small_init(&s);
    s.v.pad_id = 259; /* padding */
    expect_refused(&s, E, "tokenizer.ggml.padding_token_id is 259", NULL);

    /* Merges that are not the ranks' own. */
    small_init(&s);
    s.merges[0] = (struct gpo_tok_str){"ab c", 4};
    s.merges[1] = (struct gpo_tok_str){"a b", 3};
    expect_refused(&s, E, "tokenizer.ggml.merges[1] \"a b\" makes id 256 after", "id 257");
    small_init(&s);
    s.v.n_merges = 1;
    expect_refused(&s, E, "tokenizer.ggml.merges has 1 entries", "2 ways");
    small_init(&s);
    s.merges[1] = (struct gpo_tok_str){"abc", 3};
    expect_refused(&s, E, "tokenizer.ggml.merges[1] \"abc\" is not two tokens", NULL);
    small_init(&s);
    s.merges[1] = (struct gpo_tok_str){"b c", 3};
    expect_refused(&s, E, "tokenizer.ggml.merges[1] \"b c\"", "not all tokens");
    small_init(&s);
    s.merges[1] = s.merges[0];
    expect_refused(&s, E, "tokenizer.ggml.merges[1] \"a b\" repeats", NULL);
    small_init(&s);
    s.merges[1] = (struct gpo_tok_str){"ab  c", 5};
    expect_refused(&s, E, "tokenizer.ggml.merges[1]", "not two tokens");

    /* NULL arguments. */
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load_vocab(NULL, &t), GPO_ERR_ARG);
    small_init(&s);
    assert_int_equal(gpo_tokenizer_load_vocab(&s.v, NULL), GPO_ERR_ARG);
    struct gpo_tok_vocab v;
    assert_int_equal(gpo_tokenizer_export_vocab(tok_json, 100, &v), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "200019"));
    gpo_tok_vocab_free(&v); /* empty after a failure: harmless */
}

/* An exported small tokenizer loads back the same (merges included). */
static void test_small_round_trip(void **state) {
    (void)state;
    struct small s;
    small_init(&s);
    gpo_tokenizer *t = NULL, *u = NULL;
    assert_int_equal(gpo_tokenizer_load_vocab(&s.v, &t), GPO_OK);
    struct gpo_tok_vocab v;
    assert_int_equal(gpo_tokenizer_export_vocab(t, 0, &v), GPO_OK);
    assert_int_equal(v.n_tokens, 262);
    assert_int_equal(v.n_merges, 2);
    assert_true(str_eq(v.merges[0], "a b") && str_eq(v.merges[1], "ab c"));
    assert_true(str_eq(v.tokens[259], "[PAD259]") && type_of(&v, 259) == GPO_TOKTYPE_UNUSED);
    assert_true(str_eq(v.tokens[260], "[PAD260]") && type_of(&v, 260) == GPO_TOKTYPE_UNUSED);
    assert_true(type_of(&v, 261) == GPO_TOKTYPE_CONTROL);
    assert_int_equal(v.bos_id, -1); /* no <|startoftext|> here */
    assert_int_equal(gpo_tokenizer_load_vocab(&v, &u), GPO_OK);
    for (int32_t id = 0; id < 262; id++) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        assert_int_equal(gpo_tokenizer_token_bytes(t, id, &a, &la),
                         gpo_tokenizer_token_bytes(u, id, &b, &lb));
        assert_true(la == lb && (la == 0 || memcmp(a, b, la) == 0));
    }
    gpo_tokenizer_free(u);
    gpo_tokenizer_free(t);
    gpo_tok_vocab_free(&v);
    assert_null(v.owned);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens_ordinary),
        cmocka_unit_test(test_goldens_special),
        cmocka_unit_test(test_same_tokens),
        cmocka_unit_test(test_export_layout),
        cmocka_unit_test(test_merges_equal_tokenizer_json),
        cmocka_unit_test(test_byte_to_unicode),
        cmocka_unit_test(test_small_vocab),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_small_round_trip),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
