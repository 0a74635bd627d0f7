/* test_gguf.c - the GGUF container: writer -> reader round trips of every KV type
 * and of tensors of each type, typed lookups and their lossless conversions, a
 * small file truncated at every byte, hand-made hostile files (each refused with
 * its own status and a message naming the problem), writer misuse, and split
 * sets (joined, a missing part, parts that disagree). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "util.h"

static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/gpo_test_gguf_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    return rm_tree(tmpdir);
}

static void tmp_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", tmpdir, name);
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void expect_error(enum gpo_status got, enum gpo_status want, const char *needle) {
    if (got != want || !strstr(gpo_last_error(), needle))
        fail_msg("got %s '%s', expected %s with '%s'", gpo_status_name(got), gpo_last_error(),
                 gpo_status_name(want), needle);
}

/* Tensor bytes: a pattern that differs per tensor and per byte. */
static uint8_t pattern(int t, uint64_t i) { return (uint8_t)(i * 7 + (uint64_t)t * 31 + 1); }

/* ------------------------------------------------------------------------- */
/* Round trip                                                                */

struct tdecl {
    const char *name;
    uint32_t type;
    int n_dims;
    int64_t ne[4];
};

static const struct tdecl round_trip_tensors[] = {
    {"f32.weight", GPO_GGML_F32, 1, {7}},
    {"f16.weight", GPO_GGML_F16, 2, {5, 3}},
    {"bf16.weight", GPO_GGML_BF16, 2, {4, 6}},
    {"q8.weight", GPO_GGML_Q8_0, 2, {64, 3}},
    {"mxfp4.weight", GPO_GGML_MXFP4, 3, {32, 2, 3}},
    {"q4k.weight", 12 /* Q4_K */, 1, {256}},
    {"empty.bias", GPO_GGML_F32, 2, {0, 4}},
    {"scalar", GPO_GGML_I32, 0, {0}},
};
#define N_RT (sizeof round_trip_tensors / sizeof round_trip_tensors[0])

/* Write a file with one KV of every type, arrays of every element type, and the
 * round-trip tensors, data written in 5-byte pieces. */
static void write_round_trip(const char *path, uint32_t alignment) {
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    uint8_t u8 = 200;
    int8_t i8 = -5;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int32_t i32 = -7;
    int64_t i64 = -(1ll << 40);
    double f64 = 0.1;
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.u8", GPO_GGUF_U8, &u8), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.i8", GPO_GGUF_I8, &i8), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.u16", GPO_GGUF_U16, &u16), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.i16", GPO_GGUF_I16, &i16), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_u32(&w, "t.u32", 4000000000u), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.i32", GPO_GGUF_I32, &i32), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_f32(&w, "t.f32", 1.5f), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_bool(&w, "t.bool", 1), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_str(&w, "t.str", "gpt-oss"), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_u64(&w, "t.u64", UINT64_MAX), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.i64", GPO_GGUF_I64, &i64), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.f64", GPO_GGUF_F64, &f64), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_strn(&w, "t.nul", "a\0b", 3), GPO_OK);
    double huge = 1e300;
    assert_int_equal(gpo_gguf_writer_kv(&w, "t.huge", GPO_GGUF_F64, &huge), GPO_OK);
    if (alignment) assert_int_equal(gpo_gguf_writer_kv_u32(&w, "general.alignment", alignment),
                                    GPO_OK);
    /* Arrays of every scalar element type: elements 0..4 of the type's size. */
    for (uint32_t et = 0; et < GPO_GGUF_TYPE_COUNT_; et++) {
        if (et == GPO_GGUF_STRING || et == GPO_GGUF_ARRAY) continue;
        uint8_t data[5 * 8];
        size_t sz = gpo_gguf_type_size(et);
        for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 3);
        if (et == GPO_GGUF_BOOL)
            for (size_t i = 0; i < 5; i++) data[i] = (uint8_t)(i & 1);
        char key[32];
        snprintf(key, sizeof key, "arr.%s", gpo_gguf_type_name(et));
        assert_int_equal(gpo_gguf_writer_kv_arr(&w, key, et, data, 5), GPO_OK);
        (void)sz;
    }
    const char *strs[] = {"Ġ Ġ", "", "<|start|>"};
    assert_int_equal(gpo_gguf_writer_kv_arr_str(&w, "arr.STRING", strs, NULL, 3), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_arr(&w, "arr.empty", GPO_GGUF_I32, NULL, 0), GPO_OK);
    for (size_t t = 0; t < N_RT; t++) {
        const struct tdecl *d = &round_trip_tensors[t];
        assert_int_equal(gpo_gguf_writer_declare(&w, d->name, d->type, d->n_dims, d->ne), GPO_OK);
    }
    for (size_t t = 0; t < N_RT; t++) {
        const struct tdecl *d = &round_trip_tensors[t];
        uint64_t nb;
        assert_int_equal(gpo_ggml_nbytes(d->type, d->n_dims, d->ne, &nb), 0);
        uint8_t piece[5];
        for (uint64_t i = 0; i < nb; i += 5) {
            uint64_t n = nb - i < 5 ? nb - i : 5;
            for (uint64_t k = 0; k < n; k++) piece[k] = pattern((int)t, i + k);
            assert_int_equal(gpo_gguf_writer_write(&w, piece, n), GPO_OK);
        }
    }
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
}

static void check_tensors(const struct gpo_gguf *g, uint32_t alignment) {
    assert_int_equal(g->n_tensors, N_RT);
    for (size_t t = 0; t < N_RT; t++) {
        const struct tdecl *d = &round_trip_tensors[t];
        const struct gpo_gguf_tensor *x = gpo_gguf_find(g, d->name);
        assert_non_null(x);
        assert_ptr_equal(x, &g->tensors[t]);
        assert_int_equal(x->type, d->type);
        assert_int_equal(x->n_dims, d->n_dims);
        for (int k = 0; k < 4; k++) assert_int_equal(x->ne[k], k < d->n_dims ? d->ne[k] : 1);
        uint64_t nb;
        assert_int_equal(gpo_ggml_nbytes(d->type, d->n_dims, d->ne, &nb), 0);
        assert_int_equal(x->nbytes, nb);
        assert_int_equal(x->offset % alignment, 0);
        assert_int_equal(((uintptr_t)x->data) % alignment, 0);
        for (uint64_t i = 0; i < nb; i++)
            if (x->data[i] != pattern((int)t, i)) fail_msg("%s byte %llu", d->name,
                                                            (unsigned long long)i);
    }
    assert_null(gpo_gguf_find(g, "absent.weight"));
    /* Sizes as ggml defines them. */
    assert_int_equal(g->tensors[3].nbytes, 2 * 34 * 3);  /* Q8_0 [64, 3] */
    assert_int_equal(g->tensors[4].nbytes, 17 * 2 * 3);  /* MXFP4 [32, 2, 3] */
    assert_int_equal(g->tensors[5].nbytes, 144);         /* Q4_K [256] */
}

static void check_kvs(const struct gpo_gguf *g) {
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f;
    double d;
    int b;
    struct gpo_gguf_str s;
    /* Exact reads and lossless conversions. */
    assert_int_equal(gpo_gguf_get_u32(g, "t.u8", &u32), GPO_OK);
    assert_int_equal(u32, 200);
    assert_int_equal(gpo_gguf_get_i32(g, "t.i8", &i32), GPO_OK);
    assert_int_equal(i32, -5);
    assert_int_equal(gpo_gguf_get_u32(g, "t.u16", &u32), GPO_OK);
    assert_int_equal(u32, 60000);
    assert_int_equal(gpo_gguf_get_i64(g, "t.i16", &i64), GPO_OK);
    assert_int_equal(i64, -30000);
    assert_int_equal(gpo_gguf_get_i64(g, "t.u32", &i64), GPO_OK);
    assert_int_equal(i64, 4000000000ll);
    assert_int_equal(gpo_gguf_get_u64(g, "t.u64", &u64), GPO_OK);
    assert_true(u64 == UINT64_MAX);
    assert_int_equal(gpo_gguf_get_i64(g, "t.i64", &i64), GPO_OK);
    assert_true(i64 == -(1ll << 40));
    assert_int_equal(gpo_gguf_get_f32(g, "t.f32", &f), GPO_OK);
    assert_true(f == 1.5f);
    assert_int_equal(gpo_gguf_get_f64(g, "t.f32", &d), GPO_OK);
    assert_true(d == 1.5);
    assert_int_equal(gpo_gguf_get_f64(g, "t.f64", &d), GPO_OK);
    assert_true(d == 0.1);
    assert_int_equal(gpo_gguf_get_f32(g, "t.u16", &f), GPO_OK);
    assert_true(f == 60000.0f);
    assert_int_equal(gpo_gguf_get_bool(g, "t.bool", &b), GPO_OK);
    assert_int_equal(b, 1);
    assert_int_equal(gpo_gguf_get_str(g, "t.str", &s), GPO_OK);
    assert_true(gpo_gguf_str_eq(s, "gpt-oss"));
    assert_int_equal(gpo_gguf_find_kv(g, "t.str")->nbytes, 8 + 7);
    assert_int_equal(gpo_gguf_find_kv(g, "t.u16")->nbytes, 2);
    assert_int_equal(gpo_gguf_get_str(g, "t.nul", &s), GPO_OK);
    assert_int_equal(s.len, 3);
    assert_memory_equal(s.s, "a\0b", 3);
    /* Lossy or mistyped reads fail with a message naming the key; *out is untouched. */
    u32 = 123;
    expect_error(gpo_gguf_get_u32(g, "t.i8", &u32), GPO_ERR_CONFIG, "'t.i8' is -5");
    assert_int_equal(u32, 123);
    expect_error(gpo_gguf_get_i32(g, "t.u32", &i32), GPO_ERR_CONFIG, "t.u32");
    expect_error(gpo_gguf_get_i64(g, "t.u64", &i64), GPO_ERR_CONFIG, "t.u64");
    expect_error(gpo_gguf_get_f32(g, "t.f64", &f), GPO_ERR_CONFIG, "t.f64");
    expect_error(gpo_gguf_get_f32(g, "t.huge", &f), GPO_ERR_CONFIG, "'t.huge' is 1.0000000000000001e+300");
    expect_error(gpo_gguf_get_u32(g, "t.u64", &u32), GPO_ERR_CONFIG,
                 "'t.u64' is 18446744073709551615, out of range");
    expect_error(gpo_gguf_get_u32(g, "t.str", &u32), GPO_ERR_CONFIG, "'t.str' is STRING");
    expect_error(gpo_gguf_get_str(g, "t.u32", &s), GPO_ERR_CONFIG, "'t.u32' is U32");
    expect_error(gpo_gguf_get_bool(g, "t.u8", &b), GPO_ERR_CONFIG, "t.u8");
    expect_error(gpo_gguf_get_u32(g, "arr.U32", &u32), GPO_ERR_CONFIG, "ARRAY of U32");
    expect_error(gpo_gguf_get_u32(g, "no.such.key", &u32), GPO_ERR_NOT_FOUND, "no.such.key");
    /* Arrays, not copied. */
    for (uint32_t et = 0; et < GPO_GGUF_TYPE_COUNT_; et++) {
        if (et == GPO_GGUF_STRING || et == GPO_GGUF_ARRAY) continue;
        char key[32];
        snprintf(key, sizeof key, "arr.%s", gpo_gguf_type_name(et));
        struct gpo_gguf_arr a;
        assert_int_equal(gpo_gguf_get_arr(g, key, et, &a), GPO_OK);
        assert_int_equal(a.n, 5);
        assert_int_equal(a.elem_type, et);
        assert_int_equal(a.nbytes, 5 * gpo_gguf_type_size(et));
        const struct gpo_gguf_kv *kv = gpo_gguf_find_kv(g, key);
        assert_non_null(kv);
        assert_ptr_equal(a.data, kv->data);
        assert_int_equal(kv->nbytes, a.nbytes); /* from data to the end of the value */
        for (size_t i = 0; i < a.nbytes; i++)
            assert_int_equal(a.data[i], et == GPO_GGUF_BOOL ? (i & 1) : (uint8_t)(i * 3));
    }
    struct gpo_gguf_arr a;
    assert_int_equal(gpo_gguf_get_arr(g, "arr.I16", GPO_GGUF_I16, &a), GPO_OK);
    assert_int_equal(gpo_gguf_arr_i64(&a, 1, &i64), GPO_OK);
    assert_int_equal(i64, 6 | (9 << 8)); /* bytes 6, 9 little-endian */
    expect_error(gpo_gguf_arr_i64(&a, 5, &i64), GPO_ERR_ARG, "index 5");
    expect_error(gpo_gguf_get_arr(g, "arr.I16", GPO_GGUF_U8, &a), GPO_ERR_CONFIG, "ARRAY of I16");
    assert_int_equal(gpo_gguf_get_arr(g, "arr.empty", GPO_GGUF_TYPE_COUNT_, &a), GPO_OK);
    assert_int_equal(a.n, 0);
    assert_int_equal(gpo_gguf_get_arr(g, "arr.STRING", GPO_GGUF_STRING, &a), GPO_OK);
    struct gpo_gguf_str_iter it;
    gpo_gguf_str_iter_init(&it, &a);
    const char *want[] = {"Ġ Ġ", "", "<|start|>"};
    int n = 0;
    while (gpo_gguf_str_next(&it, &s)) {
        assert_true(n < 3);
        assert_true(gpo_gguf_str_eq(s, want[n]));
        n++;
    }
    assert_int_equal(n, 3);
}

static void test_round_trip(void **state) {
    (void)state;
    uint32_t aligns[] = {0, 64, 1};
    for (size_t k = 0; k < 3; k++) {
        char path[512];
        tmp_path(path, sizeof path, "rt.gguf");
        write_round_trip(path, aligns[k]);
        char tmp[520];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        assert_false(file_exists(tmp));
        struct gpo_gguf g = {0};
        assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
        assert_int_equal(g.n_files, 1);
        assert_int_equal(g.files[0].version, 3);
        uint32_t al = aligns[k] ? aligns[k] : 32;
        assert_int_equal(g.files[0].alignment, al);
        assert_int_equal(g.files[0].data_start % al, 0);
        check_kvs(&g);
        check_tensors(&g, al);
        /* Every value's bytes lie inside the file, the last one too. */
        for (size_t i = 0; i < g.n_kv; i++)
            assert_true(g.kv[i].data + g.kv[i].nbytes <= g.files[0].map + g.files[0].size);
        /* The file ends with the last tensor's padding, as llama.cpp's writers leave it. */
        const struct gpo_gguf_tensor *last = &g.tensors[N_RT - 1];
        uint64_t end = last->offset + last->nbytes;
        assert_int_equal(g.files[0].size, end + (al - end % al) % al);
        gpo_gguf_close(&g);
        assert_null(g.files);
    }
}

/* A file with no tensors and no KVs is valid. */
static void test_empty_file(void **state) {
    (void)state;
    char path[512];
    tmp_path(path, sizeof path, "empty.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, path), GPO_OK);
    assert_int_equal(g.n_tensors, 0);
    assert_int_equal(g.n_kv, 0);
    gpo_gguf_close(&g);
}

/* Every proper prefix of a valid file that cuts into the header or a tensor's
 * data is refused with a message; prefixes that only drop the final padding
 * still parse.  Each prefix sits in a buffer of exactly its size, so the address
 * sanitizer sees any read past it. */
static void test_truncated(void **state) {
    (void)state;
    char path[512];
    tmp_path(path, sizeof path, "trunc.gguf");
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_str(&w, "general.architecture", "gpt-oss"), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv_u32(&w, "gpt-oss.block_count", 2), GPO_OK);
    const char *strs[] = {"a", "bc"};
    assert_int_equal(gpo_gguf_writer_kv_arr_str(&w, "tokenizer.ggml.tokens", strs, NULL, 2),
                     GPO_OK);
    int32_t types[2] = {1, 3};
    assert_int_equal(gpo_gguf_writer_kv_arr(&w, "tokenizer.ggml.token_type", GPO_GGUF_I32, types,
                                            2),
                     GPO_OK);
    int64_t ne1[1] = {3}, ne2[2] = {32, 1};
    assert_int_equal(gpo_gguf_writer_declare(&w, "a.bias", GPO_GGML_F32, 1, ne1), GPO_OK);
    assert_int_equal(gpo_gguf_writer_declare(&w, "b.weight", GPO_GGML_Q8_0, 2, ne2), GPO_OK);
    uint8_t data[64];
    for (int i = 0; i < 64; i++) data[i] = (uint8_t)i;
    assert_int_equal(gpo_gguf_writer_write(&w, data, 12), GPO_OK);
    assert_int_equal(gpo_gguf_writer_write(&w, data, 34), GPO_OK);
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    size_t size;
    uint8_t *full = read_all_or_fail(path, &size);
    struct gpo_gguf_file f;
    assert_int_equal(gpo_gguf_parse(full, size, "full", &f), GPO_OK);
    uint64_t end = f.tensors[1].offset + f.tensors[1].nbytes;
    gpo_gguf_file_free(&f);
    for (size_t len = 0; len < size; len++) {
        uint8_t *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        memcpy(buf, full, len);
        gpo_clear_error();
        enum gpo_status s = gpo_gguf_parse(buf, len, "cut", &f);
        if (len < end) {
            if (s == GPO_OK || gpo_last_error()[0] == 0)
                fail_msg("prefix of %zu bytes: %s '%s'", len, gpo_status_name(s),
                         gpo_last_error());
            assert_null(f.kv);
            assert_null(f.tensors);
        } else {
            assert_int_equal(s, GPO_OK);
            gpo_gguf_file_free(&f);
        }
        free(buf);
    }
    free(full);
    /* Through the file API too: a short file names its size. */
    char cut[512];
    tmp_path(cut, sizeof cut, "short.gguf");
    FILE *fp = fopen(cut, "wb");
    assert_non_null(fp);
    fwrite("GGUF", 1, 4, fp);
    fclose(fp);
    struct gpo_gguf g = {0};
    expect_error(gpo_gguf_open(&g, cut), GPO_ERR_TRUNCATED, "4 bytes");
    tmp_path(cut, sizeof cut, "missing.gguf");
    expect_error(gpo_gguf_open(&g, cut), GPO_ERR_NOT_FOUND, "missing.gguf");
    assert_int_equal(gpo_gguf_open(&g, tmpdir) != GPO_OK, 1);
    assert_non_null(strstr(gpo_last_error(), "folder"));
}

/* ------------------------------------------------------------------------- */
/* Hand-made hostile files                                                   */

struct bb {
    uint8_t *p;
    size_t n, cap;
};

static void bb_put(struct bb *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u32(struct bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(struct bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(struct bb *b, const char *s) {
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}
static void bb_pad(struct bb *b, size_t align) {
    while (b->n % align) bb_put(b, "", 1);
}
static void bb_zeros(struct bb *b, size_t n) {
    for (size_t i = 0; i < n; i++) bb_put(b, "\x55", 1);
}
static void bb_hdr(struct bb *b, uint64_t n_t, uint64_t n_kv) {
    b->n = 0;
    bb_put(b, "GGUF", 4);
    bb_u32(b, 3);
    bb_u64(b, n_t);
    bb_u64(b, n_kv);
}
static void bb_kv_u32(struct bb *b, const char *key, uint32_t v) {
    bb_str(b, key);
    bb_u32(b, GPO_GGUF_U32);
    bb_u32(b, v);
}
static void bb_tensor(struct bb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, uint64_t offset) {
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) bb_u64(b, ne[i]);
    bb_u32(b, type);
    bb_u64(b, offset);
}

/* Parse b from a buffer of exactly its size and expect the given failure. */
static void bb_expect(struct bb *b, enum gpo_status want, const char *needle) {
    uint8_t *buf = malloc(b->n ? b->n : 1);
    assert_non_null(buf);
    memcpy(buf, b->p, b->n);
    struct gpo_gguf_file f;
    gpo_clear_error();
    expect_error(gpo_gguf_parse(buf, b->n, "bad.gguf", &f), want, needle);
    assert_null(f.kv);
    free(buf);
}

static void test_bad_header(void **state) {
    (void)state;
    struct bb b = {0};
    bb_hdr(&b, 0, 0);
    memcpy(b.p, "GGUG", 4);
    bb_expect(&b, GPO_ERR_HEADER, "not a GGUF file");
    bb_hdr(&b, 0, 0);
    b.p[4] = 1;
    bb_expect(&b, GPO_ERR_HEADER, "version 1 is not supported");
    bb_hdr(&b, 0, 0);
    b.p[4] = 4;
    bb_expect(&b, GPO_ERR_HEADER, "version 4 is not supported");
    bb_hdr(&b, 0, 0);
    b.p[4] = 0;
    b.p[7] = 3;
    bb_expect(&b, GPO_ERR_HEADER, "big-endian");
    /* Version 2 has the same layout as 3. */
    bb_hdr(&b, 0, 0);
    b.p[4] = 2;
    uint8_t *copy = malloc(b.n);
    memcpy(copy, b.p, b.n);
    struct gpo_gguf_file f;
    assert_int_equal(gpo_gguf_parse(copy, b.n, "v2", &f), GPO_OK);
    assert_int_equal(f.version, 2);
    gpo_gguf_file_free(&f);
    free(copy);
    /* Counts no file of this size can hold. */
    bb_hdr(&b, 0, 1ull << 60);
    bb_expect(&b, GPO_ERR_TRUNCATED, "1152921504606846976 KV pairs");
    bb_hdr(&b, UINT64_MAX, 0);
    bb_expect(&b, GPO_ERR_TRUNCATED, "18446744073709551615 tensors");
    bb_hdr(&b, 1, 3);
    bb_zeros(&b, 60);
    bb_expect(&b, GPO_ERR_TRUNCATED, "3 KV pairs and 1 tensors");
    free(b.p);
}

static void test_bad_kvs(void **state) {
    (void)state;
    struct bb b = {0};
    /* A key length far past the end. */
    bb_hdr(&b, 0, 1);
    bb_u64(&b, 1ull << 62);
    bb_zeros(&b, 16);
    bb_expect(&b, GPO_ERR_TRUNCATED, "a key at byte offset 24 is 4611686018427387904 bytes");
    /* A value type out of range. */
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.type");
    bb_u32(&b, 13);
    bb_u32(&b, 0);
    bb_expect(&b, GPO_ERR_HEADER, "key 'k.type' at byte offset 24: unknown value type 13");
    /* A string value longer than the file. */
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.s");
    bb_u32(&b, GPO_GGUF_STRING);
    bb_u64(&b, 100);
    bb_put(&b, "abc", 3);
    bb_expect(&b, GPO_ERR_TRUNCATED, "a string value at byte offset 39 is 100 bytes");
    /* Arrays: of arrays, of an unknown type, too long, strings too many. */
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.nest");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u64(&b, 1);
    bb_zeros(&b, 16);
    bb_expect(&b, GPO_ERR_HEADER, "'k.nest' at byte offset 24: array of arrays");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.unk");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, 77);
    bb_u64(&b, 1);
    bb_zeros(&b, 16);
    bb_expect(&b, GPO_ERR_HEADER, "type 77");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.long");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, GPO_GGUF_U64);
    bb_u64(&b, 1ull << 61); /* times 8 overflows */
    bb_zeros(&b, 16);
    bb_expect(&b, GPO_ERR_TRUNCATED, "'k.long': 2305843009213693952 elements of U64");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.strs");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, GPO_GGUF_STRING);
    bb_u64(&b, 3);
    bb_str(&b, "x");
    bb_expect(&b, GPO_ERR_TRUNCATED, "'k.strs': 3 strings");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.strs");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, GPO_GGUF_STRING);
    bb_u64(&b, 2);
    bb_str(&b, "x");
    bb_u64(&b, 9);
    bb_zeros(&b, 8);
    bb_expect(&b, GPO_ERR_TRUNCATED, "an array string");
    /* Bools other than 0 and 1. */
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.b");
    bb_u32(&b, GPO_GGUF_BOOL);
    bb_put(&b, "\x02", 1);
    bb_expect(&b, GPO_ERR_HEADER, "'k.b': bool value is 2");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "k.bs");
    bb_u32(&b, GPO_GGUF_ARRAY);
    bb_u32(&b, GPO_GGUF_BOOL);
    bb_u64(&b, 2);
    bb_put(&b, "\x01\x07", 2);
    bb_expect(&b, GPO_ERR_HEADER, "bool element 1 is 7");
    /* Duplicate and empty keys. */
    bb_hdr(&b, 0, 2);
    bb_kv_u32(&b, "gpt-oss.block_count", 1);
    bb_kv_u32(&b, "gpt-oss.block_count", 2);
    bb_expect(&b, GPO_ERR_HEADER, "key 'gpt-oss.block_count' appears twice (byte offsets 24 and");
    bb_hdr(&b, 0, 1);
    bb_kv_u32(&b, "", 1);
    bb_expect(&b, GPO_ERR_HEADER, "empty key at byte offset 24");
    /* Alignment: not a power of two, zero, wrong type. */
    bb_hdr(&b, 0, 1);
    bb_kv_u32(&b, "general.alignment", 48);
    bb_expect(&b, GPO_ERR_HEADER, "'general.alignment' is 48, not a power of two");
    bb_hdr(&b, 0, 1);
    bb_kv_u32(&b, "general.alignment", 0);
    bb_expect(&b, GPO_ERR_HEADER, "'general.alignment' is 0");
    bb_hdr(&b, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GPO_GGUF_U64);
    bb_u64(&b, 32);
    bb_expect(&b, GPO_ERR_HEADER, "'general.alignment' is U64, not U32");
    free(b.p);
}

/* A file with tensor infos ti (built by fn) then data_len bytes of data. */
static void test_bad_tensors(void **state) {
    (void)state;
    struct bb b = {0};
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    /* Too many dimensions. */
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.five", 5, ne, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_SHAPE, "tensor 't.five' has 5 dimensions (at most 4)");
    /* Unknown or removed types. */
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.unk", 2, ne, 99, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_DTYPE, "tensor 't.unk' has unknown ggml type 99");
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.q42", 2, ne, 4, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_DTYPE, "unknown ggml type 4");
    /* ne[0] not a whole number of blocks. */
    uint64_t ne33[2] = {33, 1};
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.q8", 2, ne33, GPO_GGML_Q8_0, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_SHAPE, "'t.q8' of type Q8_0: ne[0] = 33 is not a multiple of its block "
                                 "size 32");
    /* A negative dimension, and a size that overflows. */
    uint64_t neg[2] = {4, 1ull << 63};
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.neg", 2, neg, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_expect(&b, GPO_ERR_SHAPE, "'t.neg': dimension 1 is 9223372036854775808");
    uint64_t big[3] = {1ull << 32, 1ull << 32, 4};
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.big", 3, big, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_expect(&b, GPO_ERR_OVERFLOW, "'t.big': size overflows");
    /* Names: too long, empty, with a NUL. */
    char longname[80];
    memset(longname, 'x', 64);
    longname[64] = 0;
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, longname, 1, ne, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_HEADER, "(64 bytes; 1 to 63");
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "", 1, ne, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_HEADER, "tensor name '' at byte offset 24");
    bb_hdr(&b, 1, 0);
    bb_u64(&b, 3);
    bb_put(&b, "a\0b", 3);
    bb_u32(&b, 1);
    bb_u64(&b, 32);
    bb_u32(&b, GPO_GGML_F32);
    bb_u64(&b, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_HEADER, "tensor name 'a?b'");
    /* Data past the end of the file, an offset that overflows, a misaligned offset. */
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.out", 2, ne, GPO_GGML_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 255);
    bb_expect(&b, GPO_ERR_OFFSET, "tensor 't.out': data at offset 0 + 256 bytes");
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.far", 2, ne, GPO_GGML_F32, UINT64_MAX - 31);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    bb_expect(&b, GPO_ERR_OFFSET, "tensor 't.far'");
    bb_hdr(&b, 1, 0);
    bb_tensor(&b, "t.mis", 2, ne, GPO_GGML_F32, 16);
    bb_pad(&b, 32);
    bb_zeros(&b, 512);
    bb_expect(&b, GPO_ERR_OFFSET, "'t.mis': data offset 16 is not a multiple of the alignment 32");
    /* Overlapping data (listed out of order), and a duplicate name. */
    bb_hdr(&b, 3, 0);
    bb_tensor(&b, "t.c", 2, ne, GPO_GGML_F32, 512);
    bb_tensor(&b, "t.a", 2, ne, GPO_GGML_F32, 0);
    bb_tensor(&b, "t.b", 2, ne, GPO_GGML_F32, 224);
    bb_pad(&b, 32);
    bb_zeros(&b, 1024);
    bb_expect(&b, GPO_ERR_OFFSET, "overlapping data: tensor 't.a' (bytes");
    assert_non_null(strstr(gpo_last_error(), "tensor 't.b'"));
    bb_hdr(&b, 2, 0);
    bb_tensor(&b, "t.same", 2, ne, GPO_GGML_F32, 0);
    bb_tensor(&b, "t.same", 2, ne, GPO_GGML_F32, 256);
    bb_pad(&b, 32);
    bb_zeros(&b, 512);
    bb_expect(&b, GPO_ERR_HEADER, "tensor 't.same' appears twice");
    /* The same layouts with sane offsets parse: the checks above are not too strict. */
    bb_hdr(&b, 3, 0);
    bb_tensor(&b, "t.c", 2, ne, GPO_GGML_F32, 512);
    bb_tensor(&b, "t.a", 2, ne, GPO_GGML_F32, 0);
    bb_tensor(&b, "t.b", 2, ne, GPO_GGML_F32, 256);
    bb_pad(&b, 32);
    bb_zeros(&b, 768);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open_mem(&g, b.p, b.n, "ok"), GPO_OK);
    assert_int_equal(g.n_tensors, 3);
    assert_int_equal(gpo_gguf_find(&g, "t.b")->offset, g.files[0].data_start + 256);
    gpo_gguf_close(&g);
    free(b.p);
}

static void test_types(void **state) {
    (void)state;
    uint32_t blck, size;
    assert_true(gpo_ggml_type_info(GPO_GGML_MXFP4, &blck, &size));
    assert_int_equal(blck, 32);
    assert_int_equal(size, 17);
    assert_true(gpo_ggml_type_info(GPO_GGML_Q8_0, &blck, &size));
    assert_int_equal(size, 34);
    assert_true(gpo_ggml_type_info(GPO_GGML_BF16, &blck, &size));
    assert_int_equal(size, 2);
    assert_false(gpo_ggml_type_info(4, &blck, &size));
    assert_false(gpo_ggml_type_info(1000, &blck, &size));
    assert_string_equal(gpo_ggml_type_name(GPO_GGML_MXFP4), "MXFP4");
    assert_null(gpo_ggml_type_name(5));
    enum gpo_dtype dt;
    assert_true(gpo_ggml_to_dtype(GPO_GGML_Q8_0, &dt));
    assert_int_equal(dt, GPO_DT_Q8_0);
    assert_int_equal(sizeof(struct gpo_q8_0_block), 34);
    assert_true(gpo_ggml_to_dtype(GPO_GGML_BF16, &dt));
    assert_int_equal(dt, GPO_DT_BF16);
    assert_false(gpo_ggml_to_dtype(GPO_GGML_MXFP4, &dt));
    int64_t ne[3] = {2880, 2880, 32};
    uint64_t nb;
    assert_int_equal(gpo_ggml_nbytes(GPO_GGML_MXFP4, 3, ne, &nb), 0);
    assert_int_equal(nb, 90ull * 17 * 2880 * 32); /* 1530 bytes a row, spec 4.5 */
    ne[0] = 2881;
    assert_int_equal(gpo_ggml_nbytes(GPO_GGML_MXFP4, 3, ne, &nb), -2);
    assert_string_equal(gpo_gguf_type_name(GPO_GGUF_F64), "F64");
    assert_string_equal(gpo_gguf_type_name(99), "?");
}

/* ------------------------------------------------------------------------- */
/* Writer misuse                                                             */

static void test_writer_misuse(void **state) {
    (void)state;
    char path[512], tmp[520];
    tmp_path(path, sizeof path, "misuse.gguf");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_true(file_exists(tmp));
    assert_int_equal(gpo_gguf_writer_kv_u32(&w, "a.b", 1), GPO_OK);
    expect_error(gpo_gguf_writer_kv_u32(&w, "a.b", 2), GPO_ERR_ARG, "key 'a.b' declared twice");
    expect_error(gpo_gguf_writer_kv_u32(&w, "", 2), GPO_ERR_ARG, "empty GGUF key");
    expect_error(gpo_gguf_writer_kv_u32(&w, "general.alignment", 24), GPO_ERR_ARG,
                 "power of two");
    expect_error(gpo_gguf_writer_kv(&w, "x.s", GPO_GGUF_STRING, "x"), GPO_ERR_ARG,
                 "not a scalar");
    expect_error(gpo_gguf_writer_kv_arr(&w, "x.a", GPO_GGUF_ARRAY, NULL, 0), GPO_ERR_ARG,
                 "array of ARRAY");
    int64_t ne[2] = {32, 2}, bad[2] = {31, 2};
    assert_int_equal(gpo_gguf_writer_declare(&w, "t", GPO_GGML_Q8_0, 2, ne), GPO_OK);
    expect_error(gpo_gguf_writer_declare(&w, "t", GPO_GGML_F32, 2, ne), GPO_ERR_ARG,
                 "tensor 't' declared twice");
    expect_error(gpo_gguf_writer_declare(&w, "u", GPO_GGML_MXFP4, 2, bad), GPO_ERR_SHAPE,
                 "ne[0] = 31");
    expect_error(gpo_gguf_writer_declare(&w, "u", 4, 2, ne), GPO_ERR_DTYPE, "unknown ggml type 4");
    expect_error(gpo_gguf_writer_declare(&w, "u", GPO_GGML_F32, 5, ne), GPO_ERR_SHAPE,
                 "5 dimensions");
    uint8_t data[100] = {0};
    assert_int_equal(gpo_gguf_writer_write(&w, data, 60), GPO_OK);
    expect_error(gpo_gguf_writer_kv_u32(&w, "late", 1), GPO_ERR_ARG, "after data");
    expect_error(gpo_gguf_writer_declare(&w, "late", GPO_GGML_F32, 2, ne), GPO_ERR_ARG,
                 "after data");
    expect_error(gpo_gguf_writer_write(&w, data, 9), GPO_ERR_ARG, "1 bytes written beyond");
    /* The failed write did not close it; a short tensor makes close fail and delete. */
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    assert_true(file_exists(path));
    unlink(path);
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_gguf_writer_declare(&w, "t", GPO_GGML_Q8_0, 2, ne), GPO_OK);
    assert_int_equal(gpo_gguf_writer_write(&w, data, 10), GPO_OK);
    expect_error(gpo_gguf_writer_close(&w), GPO_ERR_ARG, "tensor 't' got 10 of its 68 bytes");
    assert_false(file_exists(path));
    assert_false(file_exists(tmp));
    /* Abort leaves neither file, and an existing PATH untouched. */
    FILE *fp = fopen(path, "wb");
    fputs("old", fp);
    fclose(fp);
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    gpo_gguf_writer_abort(&w);
    assert_false(file_exists(tmp));
    size_t n;
    uint8_t *old = read_all_or_fail(path, &n);
    assert_int_equal(n, 3);
    free(old);
    char nodir[512];
    tmp_path(nodir, sizeof nodir, "no/such/dir.gguf");
    expect_error(gpo_gguf_writer_open(&w, nodir), GPO_ERR_IO, "cannot create");
}

/* ------------------------------------------------------------------------- */
/* Split sets                                                                */

/* Write part `no` (0-based) of a `count`-part set named NAME-0000K-of-0000N.gguf,
 * holding tensors "p<no>.t<j>" for j < n_t.  split.no/split.count are written as
 * llama.cpp's gguf-split writes them (U16), split.tensors.count as I32. */
static void write_part(const char *name, int no, int count, int written_no, int n_t,
                       int total) {
    char path[512], base[256];
    snprintf(base, sizeof base, "%s-%05d-of-%05d.gguf", name, no + 1, count);
    tmp_path(path, sizeof path, base);
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, path), GPO_OK);
    uint16_t sno = (uint16_t)written_no, scount = (uint16_t)count;
    int32_t stotal = total;
    if (no == 0) assert_int_equal(gpo_gguf_writer_kv_str(&w, "general.architecture", "gpt-oss"),
                                  GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "split.no", GPO_GGUF_U16, &sno), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "split.count", GPO_GGUF_U16, &scount), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "split.tensors.count", GPO_GGUF_I32, &stotal),
                     GPO_OK);
    int64_t ne[1] = {4};
    for (int j = 0; j < n_t; j++) {
        char tn[32];
        snprintf(tn, sizeof tn, "p%d.t%d", no, j);
        assert_int_equal(gpo_gguf_writer_declare(&w, tn, GPO_GGML_F32, 1, ne), GPO_OK);
    }
    for (int j = 0; j < n_t; j++) {
        float v[4] = {(float)no, (float)j, 1.0f, 2.0f};
        assert_int_equal(gpo_gguf_writer_write(&w, v, sizeof v), GPO_OK);
    }
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
}

static void test_split(void **state) {
    (void)state;
    char first[512], second[512], third[512];
    tmp_path(first, sizeof first, "m-00001-of-00003.gguf");
    tmp_path(second, sizeof second, "m-00002-of-00003.gguf");
    tmp_path(third, sizeof third, "m-00003-of-00003.gguf");
    write_part("m", 0, 3, 0, 2, 6);
    write_part("m", 1, 3, 1, 1, 6);
    write_part("m", 2, 3, 2, 3, 6);
    struct gpo_gguf g = {0};
    assert_int_equal(gpo_gguf_open(&g, first), GPO_OK);
    assert_int_equal(g.n_files, 3);
    assert_int_equal(g.n_tensors, 6);
    struct gpo_gguf_str arch;
    assert_int_equal(gpo_gguf_get_str(&g, "general.architecture", &arch), GPO_OK);
    assert_true(gpo_gguf_str_eq(arch, "gpt-oss"));
    for (int no = 0; no < 3; no++)
        for (int j = 0; j < (no == 0 ? 2 : no == 1 ? 1 : 3); j++) {
            char tn[32];
            snprintf(tn, sizeof tn, "p%d.t%d", no, j);
            const struct gpo_gguf_tensor *t = gpo_gguf_find(&g, tn);
            assert_non_null(t);
            assert_int_equal(t->file, no);
            assert_true(t->data >= g.files[no].map &&
                        t->data + t->nbytes <= g.files[no].map + g.files[no].size);
            float v[4];
            memcpy(v, t->data, sizeof v);
            assert_true(v[0] == (float)no && v[1] == (float)j && v[3] == 2.0f);
        }
    gpo_gguf_close(&g);
    /* Only the first part can be opened. */
    expect_error(gpo_gguf_open(&g, second), GPO_ERR_ARG, "is part 2 of a 3-part split set");
    /* A renamed first part does not follow the naming rule. */
    char renamed[512];
    tmp_path(renamed, sizeof renamed, "renamed.gguf");
    assert_int_equal(rename(first, renamed), 0);
    expect_error(gpo_gguf_open(&g, renamed), GPO_ERR_HEADER, "PREFIX-00001-of-00003.gguf");
    assert_int_equal(rename(renamed, first), 0);
    /* The tensor total disagrees with split.tensors.count. */
    write_part("m", 2, 3, 2, 2, 6);
    expect_error(gpo_gguf_open(&g, first), GPO_ERR_MISSING_TENSOR,
                 "split.tensors.count is 6 but the 3 parts hold 5");
    /* A part that claims another position. */
    write_part("m", 2, 3, 1, 3, 6);
    expect_error(gpo_gguf_open(&g, first), GPO_ERR_HEADER,
                 "split.no 1, split.count 3; expected part 3 of 3");
    assert_non_null(strstr(gpo_last_error(), "m-00003-of-00003.gguf"));
    /* A missing part. */
    assert_int_equal(unlink(third), 0);
    expect_error(gpo_gguf_open(&g, first), GPO_ERR_NOT_FOUND, "part 3 of 3");
    assert_non_null(strstr(gpo_last_error(), "m-00003-of-00003.gguf) is missing"));
    assert_null(g.files);
    /* The same tensor name in two parts. */
    write_part("d", 0, 2, 0, 1, 2);
    write_part("d", 1, 2, 1, 1, 2);
    char d1[512], d2[512];
    tmp_path(d1, sizeof d1, "d-00001-of-00002.gguf");
    tmp_path(d2, sizeof d2, "d-00002-of-00002.gguf");
    assert_int_equal(gpo_gguf_open(&g, d1), GPO_OK);
    gpo_gguf_close(&g);
    /* Rewrite part 2 holding part 1's tensor name. */
    struct gpo_gguf_writer w;
    assert_int_equal(gpo_gguf_writer_open(&w, d2), GPO_OK);
    uint16_t sno = 1, scount = 2;
    assert_int_equal(gpo_gguf_writer_kv(&w, "split.no", GPO_GGUF_U16, &sno), GPO_OK);
    assert_int_equal(gpo_gguf_writer_kv(&w, "split.count", GPO_GGUF_U16, &scount), GPO_OK);
    int64_t ne[1] = {4};
    assert_int_equal(gpo_gguf_writer_declare(&w, "p0.t0", GPO_GGML_F32, 1, ne), GPO_OK);
    float v[4] = {0};
    assert_int_equal(gpo_gguf_writer_write(&w, v, sizeof v), GPO_OK);
    assert_int_equal(gpo_gguf_writer_close(&w), GPO_OK);
    expect_error(gpo_gguf_open(&g, d1), GPO_ERR_HEADER, "tensor 'p0.t0' is in both");
}

/* The fuzzing seeds are valid files, so that the fuzzer starts from inputs that
 * reach the tensor table and the data checks. */
static void test_fuzz_seeds(void **state) {
    (void)state;
    const char *seeds[] = {"model.gguf", "split_align64.gguf", "empty.gguf", "v2_arrays.gguf"};
    for (size_t i = 0; i < 4; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/fuzz/corpus/gguf/%s", seeds[i]);
        struct gpo_gguf g = {0};
        if (gpo_gguf_open(&g, path) != GPO_OK) fail_msg("%s: %s", path, gpo_last_error());
        if (i == 0) {
            const struct gpo_gguf_tensor *t = gpo_gguf_find(&g, "blk.0.ffn_gate_exps.weight");
            assert_non_null(t);
            assert_int_equal(t->type, GPO_GGML_MXFP4);
            assert_int_equal(t->nbytes, 17 * 4);
        }
        if (i == 3) assert_int_equal(g.files[0].version, 2);
        gpo_gguf_close(&g);
    }
}

static void test_find_file(void **state) {
    (void)state;
    char dir[256], path[600], out[700];
    snprintf(dir, sizeof dir, "%.200s/findme", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    expect_error(gpo_gguf_find_file(dir, out, sizeof out), GPO_ERR_NOT_FOUND, "no *.gguf file");
    /* A split set counts once, through its first part. */
    const char *names[] = {"x-00002-of-00002.gguf", "x-00001-of-00002.gguf", "notes.txt"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        fputs(i < 2 ? "GGUF" : "text", fp);
        fclose(fp);
    }
    assert_int_equal(gpo_gguf_find_file(dir, out, sizeof out), GPO_OK);
    snprintf(path, sizeof path, "%s/x-00001-of-00002.gguf", dir);
    assert_string_equal(out, path);
    assert_true(gpo_gguf_sniff(path));
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    assert_false(gpo_gguf_sniff(path));
    assert_false(gpo_gguf_sniff(dir));
    snprintf(path, sizeof path, "%s/y.gguf", dir);
    FILE *fp = fopen(path, "wb");
    fclose(fp);
    assert_false(gpo_gguf_sniff(path));
    expect_error(gpo_gguf_find_file(dir, out, sizeof out), GPO_ERR_ARG,
                 "holds 2 GGUF models (x-00001-of-00002.gguf, y.gguf)");
    tmp_path(path, sizeof path, "nodir");
    expect_error(gpo_gguf_find_file(path, out, sizeof out), GPO_ERR_NOT_FOUND, "nodir");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_kvs),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_fuzz_seeds),
        cmocka_unit_test(test_find_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
