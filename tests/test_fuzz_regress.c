/* test_fuzz_regress.c - inputs found by the fuzz targets (`make fuzz`, tests/fuzz_*.c)
 * that once crashed or broke a contract, kept as unit tests so they stay fixed.
 * Text that must not be read past its end is placed right before an inaccessible
 * page, so an overread crashes here even without the address sanitizer. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gpo.h"
#include "util.h"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */

/* n bytes of text that end exactly where an inaccessible page begins. */
struct guarded {
    char *text;
    void *map;
    size_t map_len;
};

static struct guarded guarded_copy(const char *text, size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (n + page - 1) / page + 1;
    struct guarded g = {0};
    g.map_len = (data_pages + 1) * page;
    g.map = mmap(NULL, g.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(g.map != MAP_FAILED);
    char *guard = (char *)g.map + data_pages * page;
    assert_int_equal(mprotect(guard, page, PROT_NONE), 0);
    g.text = guard - n;
    memcpy(g.text, text, n);
    return g;
}

static void guarded_free(struct guarded *g) { munmap(g->map, g->map_len); }

/* GPT-2's byte-to-character map: the vocabulary key of byte b. */
static void byte_key(int b, char out[3]) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    int cp = b;
    if (!printable) {
        int extra = 0;
        for (int c = 0; c < b; c++) {
            int pc = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174;
            if (!pc) extra++;
        }
        cp = 256 + extra;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

/* Write a tokenizer.json with the 256 byte tokens (ids 0..255), the given Split
 * regex (NULL: none) and one added token (NULL: none) with id 256; returns the
 * path of a temporary file the caller removes. */
static char *write_tokenizer(const char *regex, const char *added_content) {
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char key[3];
        byte_key(b, key);
        cJSON_AddNumberToObject(vocab, key, b);
    }
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    if (added_content) {
        cJSON *tok = cJSON_CreateObject();
        cJSON_AddNumberToObject(tok, "id", 256);
        cJSON_AddStringToObject(tok, "content", added_content);
        cJSON_AddItemToArray(added, tok);
    }
    if (regex) {
        cJSON *pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
        cJSON_AddStringToObject(pt, "type", "Split");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(pt, "pattern"), "Regex", regex);
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    assert_non_null(json);
    char *path = strdup("/tmp/gpo_fuzz_regress_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(json);
    assert_int_equal(write(fd, json, n), (ssize_t)n);
    close(fd);
    cJSON_free(json);
    return path;
}

/* Encode text (placed before a guard page) and check that it decodes back. */
static void check_round_trip(const gpo_tokenizer *t, const char *text, int flags) {
    size_t n = strlen(text);
    struct guarded g = guarded_copy(text, n);
    struct gpo_ids ids = {0};
    struct gpo_str back = {0};
    assert_int_equal(gpo_tokenizer_encode(t, g.text, n, flags, &ids), GPO_OK);
    assert_int_equal(gpo_tokenizer_decode(t, ids.ids, ids.n, &back), GPO_OK);
    assert_int_equal(back.n, n);
    assert_memory_equal(back.s, text, n);
    gpo_str_free(&back);
    gpo_ids_free(&ids);
    guarded_free(&g);
}

/* ------------------------------------------------------------------------- */
/* Tokenizer (fuzz_tokenizer_load)                                           */

/* A declared pre-tokenizer regex that matches the empty string at the end of the
 * text ("x|$" on "a") made the encoder step over a character at the end and read
 * one byte past the text. */
static void test_regex_empty_match_at_end(void **state) {
    (void)state;
    const char *const patterns[] = {"x|$", "x|\\z", "(?!.)", "b|(?=$)"};
    for (size_t i = 0; i < sizeof patterns / sizeof *patterns; i++) {
        char *path = write_tokenizer(patterns[i], NULL);
        gpo_tokenizer *t = NULL;
        assert_int_equal(gpo_tokenizer_load(path, &t), GPO_OK);
        check_round_trip(t, "a", 0);
        check_round_trip(t, "hello b", 0);
        check_round_trip(t, "caf\xc3\xa9", 0);
        gpo_tokenizer_free(t);
        unlink(path);
        free(path);
    }
}

/* An added token whose text is not valid UTF-8 (here a lone continuation byte)
 * matched in the middle of a character, so the text around it went to the regex
 * as broken UTF-8 and came back with bytes missing.  Such a tokenizer.json is
 * refused. */
static void test_added_token_not_utf8(void **state) {
    (void)state;
    const char *const bad[] = {"\xa9", "<|x\xc3|>", "\xed\xa0\x80", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *path = write_tokenizer(NULL, bad[i]);
        gpo_tokenizer *t = NULL;
        gpo_clear_error();
        assert_int_equal(gpo_tokenizer_load(path, &t), GPO_ERR_TOKENIZER);
        assert_null(t);
        assert_non_null(strstr(gpo_last_error(), "added_tokens[0]"));
        assert_non_null(strstr(gpo_last_error(), "UTF-8"));
        unlink(path);
        free(path);
    }
    /* Valid UTF-8, even outside ASCII, still loads and round-trips. */
    char *path = write_tokenizer(NULL, "<|\xc3\xa9|>");
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load(path, &t), GPO_OK);
    check_round_trip(t, "caf\xc3\xa9<|\xc3\xa9|>x", GPO_ENCODE_SPECIAL);
    gpo_tokenizer_free(t);
    unlink(path);
    free(path);
}

/* ------------------------------------------------------------------------- */
/* Sampler (fuzz_sampler)                                                    */

/* A repetition penalty below 1 multiplies a positive logit; near FLT_MAX that
 * overflowed to +inf, the next draw computed inf - inf = NaN for the most likely
 * id, min-p then removed every candidate and the draw read before the candidate
 * list.  The penalised id must stay the only (and so the sampled) candidate. */
static void test_penalty_overflow_min_p(void **state) {
    (void)state;
    enum { NV = 16, HUGE_ID = 5 };
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.temperature = 0.7f;
    p.min_p = 0.05f;
    p.repetition_penalty = 0.05f;
    p.seed = 831;
    uint8_t banned[NV] = {0};
    banned[0] = banned[3] = 1; /* a read before the list finds id 0: banned */
    float logits[NV];
    for (int i = 0; i < NV; i++) logits[i] = (float)(i % 4) - 1.5f;
    logits[HUGE_ID] = 2.6e38f;
    gpo_sampler *s = NULL;
    assert_int_equal(gpo_sampler_create(&p, NV, banned, &s), GPO_OK);
    for (int step = 0; step < 3; step++) {
        int32_t id = -1;
        assert_int_equal(gpo_sampler_sample(s, logits, &id, NULL), GPO_OK);
        assert_int_equal(id, HUGE_ID);
        assert_int_equal(gpo_sampler_accept(s, id), GPO_OK);
    }
    gpo_sampler_free(s);
}

int main(void) {
    gpo_set_log_level(GPO_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regex_empty_match_at_end),
        cmocka_unit_test(test_added_token_not_utf8),
        cmocka_unit_test(test_penalty_overflow_min_p),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
