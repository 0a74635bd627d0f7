/* test_safetensors.c - the safetensors layer: writer/parser round trips, every
 * class of malformed file with its own status and a message naming the problem,
 * sharded folders through index.json, the real-format fixture, and the random
 * checkpoint writer (mkmodel) checked against the spec's name and shape lists. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test_common.h"

#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

static char tmpdir[256];

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/gpo_test_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    return rm_tree(tmpdir);
}

static void tmp_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A file image: 8-byte length, the header text, then data_len bytes 0..255 repeating. */
static uint8_t *make_image(const char *header, size_t data_len, size_t *size) {
    size_t h = strlen(header);
    uint8_t *buf = malloc(8 + h + data_len + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (uint8_t)i;
    *size = 8 + h + data_len;
    return buf;
}

/* Parse an image and check the status and that the message holds every needle. */
static void expect_parse(const char *header, size_t data_len, enum gpo_status want, ...) {
    size_t size;
    uint8_t *buf = make_image(header, data_len, &size);
    struct gpo_st_tensor *t = NULL;
    size_t n = 0;
    enum gpo_status s = gpo_st_parse(buf, size, "bad.safetensors", &t, &n);
    if (s != want)
        fail_msg("header %s: got %s (%s), want %s", header, gpo_status_name(s), gpo_last_error(),
                 gpo_status_name(want));
    if (want == GPO_OK) {
        gpo_st_free_tensors(t, n);
    } else {
        assert_null(t);
        assert_int_equal(n, 0);
        const char *msg = gpo_last_error();
        if (!strstr(msg, "bad.safetensors")) fail_msg("message lacks the file: %s", msg);
        va_list ap;
        va_start(ap, want);
        for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;)
            if (!strstr(msg, needle)) fail_msg("message '%s' lacks '%s'", msg, needle);
        va_end(ap);
    }
    free(buf);
}

#define BF16_2x2 "{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":"

/* ------------------------------------------------------------------------- */

static void test_dtype_names(void **state) {
    (void)state;
    static const char *names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                                  "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2"};
    static const size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 2, 4, 8, 1, 1, 1};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        enum gpo_dtype dt;
        assert_true(gpo_dtype_from_name(names[i], &dt));
        assert_string_equal(gpo_dtype_name(dt), names[i]);
        assert_int_equal(gpo_dtype_size(dt), sizes[i]);
    }
    enum gpo_dtype dt;
    assert_false(gpo_dtype_from_name("bf16", &dt));
    assert_false(gpo_dtype_from_name("Q4_0", &dt));
    assert_int_equal(gpo_dtype_size(GPO_DT_COUNT_), 0);
}

struct decl {
    const char *name;
    enum gpo_dtype dt;
    int n_dims;
    int64_t shape[3];
    uint64_t nbytes;
};

static const struct decl round_trip[] = {
    {"a.weight", GPO_DT_BF16, 2, {3, 5}, 30},
    {"b.blocks", GPO_DT_U8, 3, {2, 3, 16}, 96},
    {"c.scalar", GPO_DT_F32, 0, {0}, 4},
    {"d.empty", GPO_DT_F16, 2, {0, 7}, 0},
    {"e.ids", GPO_DT_I64, 1, {4}, 32},
    {"f \"quoted\" \\ name\x01", GPO_DT_BF16, 1, {3}, 6},
};
#define N_RT (sizeof round_trip / sizeof *round_trip)

/* Write the round-trip tensors with byte i of the data stream = i*7+3, in pieces
 * of 5 bytes that straddle tensor boundaries. */
static void write_round_trip(const char *path) {
    struct gpo_st_writer w;
    assert_int_equal(gpo_st_writer_open(&w, path), GPO_OK);
    uint64_t total = 0;
    for (size_t i = 0; i < N_RT; i++) {
        assert_int_equal(gpo_st_writer_declare(&w, round_trip[i].name, round_trip[i].dt,
                                               round_trip[i].n_dims, round_trip[i].shape),
                         GPO_OK);
        total += round_trip[i].nbytes;
    }
    for (uint64_t at = 0; at < total; at += 5) {
        uint8_t piece[5];
        uint64_t n = total - at < 5 ? total - at : 5;
        for (uint64_t k = 0; k < n; k++) piece[k] = (uint8_t)((at + k) * 7 + 3);
        assert_int_equal(gpo_st_writer_write(&w, piece, n), GPO_OK);
    }
    assert_int_equal(gpo_st_writer_close(&w), GPO_OK);
}

static void test_round_trip(void **state) {
    (void)state;
    char path[512];
    tmp_path(path, sizeof path, "rt.safetensors");
    write_round_trip(path);

    size_t size;
    uint8_t *img = read_all_or_fail(path, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | img[i];
    assert_int_equal(hlen % 8, 0); /* padded so the data starts aligned */
    assert_true(strstr((const char *)img + 8, "\"__metadata__\":{\"format\":\"pt\"}") != NULL);

    struct gpo_st st = {0};
    assert_int_equal(gpo_st_add_file(&st, path), GPO_OK);
    assert_int_equal(st.n_files, 1);
    assert_int_equal(st.n_tensors, N_RT);
    assert_int_equal(st.files[0].size, size);
    uint64_t stream = 0;
    for (size_t i = 0; i < N_RT; i++) {
        const struct gpo_st_tensor *t = gpo_st_find(&st, round_trip[i].name);
        assert_non_null(t);
        assert_string_equal(t->name, round_trip[i].name);
        assert_int_equal(t->dtype, round_trip[i].dt);
        assert_int_equal(t->n_dims, round_trip[i].n_dims);
        for (int d = 0; d < t->n_dims; d++) assert_int_equal(t->shape[d], round_trip[i].shape[d]);
        assert_int_equal(t->nbytes, round_trip[i].nbytes);
        assert_int_equal(t->offset, 8 + hlen + stream); /* packed in declaration order */
        assert_ptr_equal(t->data, st.files[0].map + t->offset);
        for (uint64_t k = 0; k < t->nbytes; k++)
            assert_int_equal(t->data[k], (uint8_t)((stream + k) * 7 + 3));
        stream += t->nbytes;
    }
    assert_int_equal(size, 8 + hlen + stream);
    assert_null(gpo_st_find(&st, "a.weigh"));
    assert_null(gpo_st_find(&st, "__metadata__"));

    /* A second file with a name already present is refused and leaves st unchanged. */
    char path2[512];
    tmp_path(path2, sizeof path2, "rt2.safetensors");
    write_round_trip(path2);
    assert_int_equal(gpo_st_add_file(&st, path2), GPO_ERR_HEADER);
    assert_non_null(strstr(gpo_last_error(), "a.weight"));
    assert_non_null(strstr(gpo_last_error(), "rt2.safetensors"));
    assert_int_equal(st.n_files, 1);
    assert_int_equal(st.n_tensors, N_RT);
    assert_non_null(gpo_st_find(&st, "e.ids"));

    /* The parser on the same bytes in memory agrees. */
    struct gpo_st_tensor *t;
    size_t n;
    assert_int_equal(gpo_st_parse(img, size, "mem", &t, &n), GPO_OK);
    assert_int_equal(n, N_RT);
    assert_ptr_equal(t[0].data, img + 8 + hlen);
    gpo_st_free_tensors(t, n);

    gpo_st_close(&st);
    assert_int_equal(st.n_tensors, 0);
    assert_null(st.files);
    free(img);
    unlink(path);
    unlink(path2);
}

static void test_writer_misuse(void **state) {
    (void)state;
    char path[512];
    tmp_path(path, sizeof path, "misuse.safetensors");
    struct gpo_st_writer w;
    int64_t shape[2] = {2, 2};
    uint8_t data[16] = {0};
    struct stat sb;

    /* Duplicate and invalid declarations. */
    assert_int_equal(gpo_st_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_st_writer_declare(&w, "x", GPO_DT_BF16, 2, shape), GPO_OK);
    assert_int_equal(gpo_st_writer_declare(&w, "x", GPO_DT_BF16, 2, shape), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "declared twice"));
    assert_int_equal(gpo_st_writer_declare(&w, "__metadata__", GPO_DT_U8, 2, shape), GPO_ERR_ARG);
    int64_t neg[1] = {-1};
    assert_int_equal(gpo_st_writer_declare(&w, "n", GPO_DT_U8, 1, neg), GPO_ERR_SHAPE);
    int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
    assert_int_equal(gpo_st_writer_declare(&w, "h", GPO_DT_U8, 2, huge), GPO_ERR_OVERFLOW);
    /* Too many bytes. */
    assert_int_equal(gpo_st_writer_write(&w, data, 8), GPO_OK);
    assert_int_equal(gpo_st_writer_write(&w, data, 1), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "beyond the declared"));
    /* Declaring after data was written. */
    assert_int_equal(gpo_st_writer_declare(&w, "late", GPO_DT_U8, 2, shape), GPO_ERR_ARG);
    gpo_st_writer_abort(&w);
    assert_int_not_equal(stat(path, &sb), 0); /* abort deletes the file */

    /* Closing with bytes missing fails, names the tensor and deletes the file. */
    assert_int_equal(gpo_st_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_st_writer_declare(&w, "x", GPO_DT_BF16, 2, shape), GPO_OK);
    assert_int_equal(gpo_st_writer_declare(&w, "y", GPO_DT_BF16, 2, shape), GPO_OK);
    assert_int_equal(gpo_st_writer_write(&w, data, 12), GPO_OK);
    assert_int_equal(gpo_st_writer_close(&w), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "'y' got 4 of its 8 bytes"));
    assert_int_not_equal(stat(path, &sb), 0);
    gpo_st_writer_abort(&w); /* harmless after a failed close */

    /* An empty file (no tensors) is valid. */
    assert_int_equal(gpo_st_writer_open(&w, path), GPO_OK);
    assert_int_equal(gpo_st_writer_close(&w), GPO_OK);
    struct gpo_st st = {0};
    assert_int_equal(gpo_st_add_file(&st, path), GPO_OK);
    assert_int_equal(st.n_tensors, 0);
    gpo_st_close(&st);
    unlink(path);

    char bad[512];
    tmp_path(bad, sizeof bad, "no/such/folder/x.safetensors");
    assert_int_equal(gpo_st_writer_open(&w, bad), GPO_ERR_IO);
    assert_non_null(strstr(gpo_last_error(), "no/such/folder"));
}

/* A valid file cut short at many points: each cut fails with the status of what
 * it cut through. */
static void test_truncated(void **state) {
    (void)state;
    char path[512], cut[512];
    tmp_path(path, sizeof path, "full.safetensors");
    tmp_path(cut, sizeof cut, "cut.safetensors");
    write_round_trip(path);
    size_t size;
    uint8_t *img = read_all_or_fail(path, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | img[i];

    const size_t cuts[] = {0, 1, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1,
                           size - 7, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        size_t n = cuts[i];
        enum gpo_status want;
        const char *needle;
        if (n < 8) {
            want = GPO_ERR_TRUNCATED;
            needle = "too short";
        } else if (n < 8 + hlen) {
            want = GPO_ERR_TRUNCATED;
            needle = "header length";
        } else {
            want = GPO_ERR_OFFSET; /* a tensor now ends past the data */
            needle = "past the end of the data";
        }
        /* In memory, from a heap copy of exactly n bytes (so ASan sees over-reads). */
        uint8_t *part = malloc(n ? n : 1);
        memcpy(part, img, n);
        struct gpo_st_tensor *t;
        size_t nt;
        enum gpo_status s = gpo_st_parse(part, n, "cut", &t, &nt);
        if (s != want)
            fail_msg("cut at %zu: got %s, want %s", n, gpo_status_name(s), gpo_status_name(want));
        assert_non_null(strstr(gpo_last_error(), needle));
        free(part);
        /* And as a file on disk. */
        write_bytes(cut, img, n);
        struct gpo_st st = {0};
        s = gpo_st_add_file(&st, cut);
        assert_int_equal(s, want);
        assert_non_null(strstr(gpo_last_error(), cut));
        assert_int_equal(st.n_files, 0);
        gpo_st_close(&st);
    }
    free(img);
    unlink(path);
    unlink(cut);
}

static void test_header_past_eof(void **state) {
    (void)state;
    uint8_t buf[64] = {0};
    uint64_t hlen = UINT64_C(1) << 40;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hlen >> (8 * i));
    struct gpo_st_tensor *t;
    size_t n;
    assert_int_equal(gpo_st_parse(buf, sizeof buf, "big.safetensors", &t, &n), GPO_ERR_TRUNCATED);
    assert_non_null(strstr(gpo_last_error(), "1099511627776"));
    assert_non_null(strstr(gpo_last_error(), "big.safetensors"));
    /* One byte more than the file holds. */
    buf[0] = 57;
    for (int i = 1; i < 8; i++) buf[i] = 0;
    assert_int_equal(gpo_st_parse(buf, sizeof buf, "big.safetensors", &t, &n), GPO_ERR_TRUNCATED);
    assert_non_null(strstr(gpo_last_error(), "57"));
    /* UINT64_MAX must not wrap around. */
    memset(buf, 0xff, 8);
    assert_int_equal(gpo_st_parse(buf, sizeof buf, "big.safetensors", &t, &n), GPO_ERR_TRUNCATED);
}

static void test_offsets(void **state) {
    (void)state;
    /* Overlapping tensors: the message names both. */
    expect_parse("{\"first\":" BF16_2x2 "[0,8]},\"second\":" BF16_2x2 "[4,12]}}", 16,
                 GPO_ERR_OFFSET, "overlaps", "first", "second", "[4, 12]", NULL);
    /* The same range twice. */
    expect_parse("{\"p\":" BF16_2x2 "[0,8]},\"q\":" BF16_2x2 "[0,8]}}", 8, GPO_ERR_OFFSET,
                 "overlaps", NULL);
    /* Adjacent is fine, gaps are fine, empty tensors own no bytes. */
    expect_parse("{\"p\":" BF16_2x2 "[0,8]},\"q\":" BF16_2x2 "[8,16]}}", 16, GPO_OK);
    expect_parse("{\"p\":" BF16_2x2 "[8,16]},\"q\":" BF16_2x2 "[24,32]}}", 40, GPO_OK);
    expect_parse("{\"p\":" BF16_2x2 "[0,8]},\"z\":{\"dtype\":\"U8\",\"shape\":[0],"
                 "\"data_offsets\":[4,4]}}",
                 8, GPO_OK);
    /* Outside the data section. */
    expect_parse("{\"far\":" BF16_2x2 "[8,16]}}", 12, GPO_ERR_OFFSET, "far", "[8, 16]",
                 "past the end of the data section (12 bytes)", NULL);
    /* end before begin. */
    expect_parse("{\"rev\":" BF16_2x2 "[8,0]}}", 16, GPO_ERR_OFFSET, "rev", "end before", NULL);
    /* end - begin != prod(shape) * size. */
    expect_parse("{\"short\":" BF16_2x2 "[0,6]}}", 16, GPO_ERR_OFFSET, "short", "span 6 bytes",
                 "needs 8", NULL);
    expect_parse("{\"long\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16,
                 GPO_ERR_OFFSET, "long", "needs 12", NULL);
    /* A scalar (empty shape) holds one element. */
    expect_parse("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, GPO_OK);
}

static void test_overflow(void **state) {
    (void)state;
    expect_parse("{\"huge\":{\"dtype\":\"BF16\",\"shape\":[1099511627776,1099511627776],"
                 "\"data_offsets\":[0,8]}}",
                 8, GPO_ERR_OVERFLOW, "huge", "[1099511627776, 1099511627776]", NULL);
    expect_parse("{\"h2\":{\"dtype\":\"F64\",\"shape\":[4503599627370495,4096],"
                 "\"data_offsets\":[0,8]}}",
                 8, GPO_ERR_OVERFLOW, "h2", NULL);
    /* A zero dimension makes the product zero, not an overflow. */
    expect_parse("{\"z\":{\"dtype\":\"BF16\",\"shape\":[1099511627776,1099511627776,0],"
                 "\"data_offsets\":[0,0]}}",
                 0, GPO_OK);
}

static void test_dtype(void **state) {
    (void)state;
    expect_parse("{\"qt\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                 GPO_ERR_DTYPE, "qt", "Q4_K", NULL);
    expect_parse("{\"lc\":{\"dtype\":\"bf16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                 GPO_ERR_DTYPE, "bf16", NULL);
    expect_parse("{\"num\":{\"dtype\":16,\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                 GPO_ERR_HEADER, "num", "dtype", NULL);
    expect_parse("{\"e4\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]},"
                 "\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[2,4]},"
                 "\"u\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[8,16]}}",
                 16, GPO_OK);
}

static void test_bad_json(void **state) {
    (void)state;
    expect_parse("{\"a\": {\"dtype\": ", 0, GPO_ERR_JSON, "not valid JSON", NULL);
    expect_parse("", 0, GPO_ERR_JSON, NULL);
    expect_parse("        ", 0, GPO_ERR_JSON, NULL);
    expect_parse("{} x", 0, GPO_ERR_JSON, "0x78", NULL);
    expect_parse("{}\0abc", 0, GPO_OK); /* the header is "{}" (strlen stops at NUL) */
    expect_parse("{}      ", 0, GPO_OK);
    expect_parse("{\"__metadata__\":{\"format\":\"pt\"}}   ", 0, GPO_OK);
    expect_parse("[1, 2]", 0, GPO_ERR_HEADER, "not a JSON object", NULL);
    expect_parse("42", 0, GPO_ERR_HEADER, NULL);
}

static void test_duplicates(void **state) {
    (void)state;
    expect_parse("{\"twin\":" BF16_2x2 "[0,8]},\"twin\":" BF16_2x2 "[8,16]}}", 16,
                 GPO_ERR_HEADER, "duplicate", "twin", NULL);
    expect_parse("{\"__metadata__\":{},\"__metadata__\":{}}", 0, GPO_ERR_HEADER,
                 "__metadata__", NULL);
    expect_parse("{\"k\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                 1, GPO_ERR_HEADER, "twice", NULL);
}

static void test_bad_numbers(void **state) {
    (void)state;
    expect_parse("{\"frac\":" BF16_2x2 "[0.5,8.5]}}", 16, GPO_ERR_HEADER, "frac", "data_offsets[0]",
                 "0.5", NULL);
    expect_parse("{\"neg\":" BF16_2x2 "[-8,0]}}", 16, GPO_ERR_HEADER, "neg", "-8", NULL);
    expect_parse("{\"big\":" BF16_2x2 "[0,9007199254740992]}}", 16, GPO_ERR_HEADER, "big",
                 "data_offsets[1]", NULL);
    expect_parse("{\"bigger\":" BF16_2x2 "[18446744073709551608,18446744073709551616]}}", 16,
                 GPO_ERR_HEADER, "bigger", NULL);
    expect_parse("{\"inf\":" BF16_2x2 "[0,1e400]}}", 16, GPO_ERR_HEADER, "inf", NULL);
    expect_parse("{\"str\":" BF16_2x2 "[\"0\",8]}}", 16, GPO_ERR_HEADER, "str", "\"0\"", NULL);
    expect_parse("{\"one\":" BF16_2x2 "[0]}}", 16, GPO_ERR_HEADER, "one", "array of 1", NULL);
    expect_parse("{\"three\":" BF16_2x2 "[0,8,16]}}", 16, GPO_ERR_HEADER, "three", NULL);
    expect_parse("{\"obj\":" BF16_2x2 "{\"a\":0}}}", 16, GPO_ERR_HEADER, "obj", NULL);
    expect_parse("{\"sfrac\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 2,
                 GPO_ERR_HEADER, "sfrac", "shape[0]", "1.5", NULL);
    expect_parse("{\"sneg\":{\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,1]}}", 2,
                 GPO_ERR_HEADER, "sneg", "shape[1]", "-1", NULL);
    /* 1e3 is an exact integer written with an exponent: accepted. */
    expect_parse("{\"e\":{\"dtype\":\"U8\",\"shape\":[1e3],\"data_offsets\":[0,1000]}}", 1000,
                 GPO_OK);
}

static void test_malformed_entries(void **state) {
    (void)state;
    expect_parse("{\"notobj\":[1,2]}", 0, GPO_ERR_HEADER, "notobj", "not an object", NULL);
    expect_parse("{\"nodt\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, GPO_ERR_HEADER, "nodt",
                 "missing 'dtype'", NULL);
    expect_parse("{\"nosh\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, GPO_ERR_HEADER, "nosh",
                 "missing 'shape'", NULL);
    expect_parse("{\"noof\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, GPO_ERR_HEADER, "noof",
                 "missing 'data_offsets'", NULL);
    expect_parse("{\"shs\":{\"dtype\":\"U8\",\"shape\":\"[1]\",\"data_offsets\":[0,1]}}", 1,
                 GPO_ERR_HEADER, "shs", "not an array", NULL);
    expect_parse("{\"nine\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                 "\"data_offsets\":[0,1]}}",
                 1, GPO_ERR_HEADER, "nine", "9 dimensions", NULL);
    expect_parse("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                 GPO_ERR_HEADER, "empty name", NULL);
    expect_parse("{\"__metadata__\":{\"format\":1}}", 0, GPO_ERR_HEADER, "__metadata__", "format",
                 NULL);
    expect_parse("{\"__metadata__\":[\"pt\"]}", 0, GPO_ERR_HEADER, "__metadata__", NULL);
    /* Unknown keys in an entry are ignored, as the reference crate does. */
    expect_parse("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[]}}", 1,
                 GPO_OK);
}

/* ------------------------------------------------------------------------- */
/* Folders                                                                   */

static void write_simple(const char *path, const char *const *names, size_t n) {
    struct gpo_st_writer w;
    int64_t shape[1] = {4};
    uint8_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(gpo_st_writer_open(&w, path), GPO_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(gpo_st_writer_declare(&w, names[i], GPO_DT_BF16, 1, shape), GPO_OK);
    for (size_t i = 0; i < n; i++) assert_int_equal(gpo_st_writer_write(&w, data, 8), GPO_OK);
    assert_int_equal(gpo_st_writer_close(&w), GPO_OK);
}

static void make_sharded(const char *dir, const char *index) {
    static const char *const a[] = {"alpha", "beta"}, *const b[] = {"gamma"};
    char path[600];
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/model-00000-of-00001.safetensors", dir);
    write_simple(path, a, 2);
    snprintf(path, sizeof path, "%s/model-00001-of-00001.safetensors", dir);
    write_simple(path, b, 1);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_bytes(path, index, strlen(index));
}

static void remove_dir(const char *dir) { rm_tree(dir); }

#define SHARD0 "\"model-00000-of-00001.safetensors\""
#define SHARD1 "\"model-00001-of-00001.safetensors\""

static void expect_dir(const char *name, const char *index, enum gpo_status want,
                       const char *needle) {
    char dir[512];
    tmp_path(dir, sizeof dir, name);
    make_sharded(dir, index);
    struct gpo_st st = {0};
    enum gpo_status s = gpo_st_open_dir(&st, dir);
    if (s != want)
        fail_msg("%s: got %s (%s), want %s", name, gpo_status_name(s), gpo_last_error(),
                 gpo_status_name(want));
    if (needle && !strstr(gpo_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", gpo_last_error(), needle);
    if (want != GPO_OK) {
        assert_int_equal(st.n_files, 0); /* closed on failure */
        assert_null(st.tensors);
    }
    gpo_st_close(&st);
    remove_dir(dir);
}

static void test_open_dir_index(void **state) {
    (void)state;
    char dir[512];
    tmp_path(dir, sizeof dir, "sharded");
    make_sharded(dir, "{\"metadata\":{\"total_size\":24},\"weight_map\":{\"alpha\":" SHARD0
                      ",\"beta\":" SHARD0 ",\"gamma\":" SHARD1 "}}");
    struct gpo_st st = {0};
    assert_int_equal(gpo_st_open_dir(&st, dir), GPO_OK);
    assert_int_equal(st.n_files, 2);
    assert_int_equal(st.n_tensors, 3);
    const struct gpo_st_tensor *g = gpo_st_find(&st, "gamma");
    assert_non_null(g);
    assert_non_null(strstr(st.files[g->file].path, "model-00001-of-00001"));
    assert_int_equal(g->data[0], 1);
    assert_int_equal(gpo_st_find(&st, "alpha")->file, gpo_st_find(&st, "beta")->file);
    gpo_st_close(&st);
    remove_dir(dir);

    expect_dir("missing_shard",
               "{\"weight_map\":{\"alpha\":" SHARD0 ",\"delta\":\"model-00009.safetensors\"}}",
               GPO_ERR_NOT_FOUND, "model-00009.safetensors");
    expect_dir("missing_tensor",
               "{\"weight_map\":{\"alpha\":" SHARD0 ",\"omega\":" SHARD1 "}}",
               GPO_ERR_MISSING_TENSOR, "omega");
    expect_dir("wrong_shard", "{\"weight_map\":{\"alpha\":" SHARD1 ",\"gamma\":" SHARD0 "}}",
               GPO_ERR_MISSING_TENSOR, "alpha");
    expect_dir("bad_index", "{\"weight_map\":{\"alpha\":", GPO_ERR_JSON, "index.json");
    expect_dir("no_map", "{\"metadata\":{}}", GPO_ERR_JSON, "weight_map");
    expect_dir("not_string", "{\"weight_map\":{\"alpha\":3}}", GPO_ERR_JSON, "alpha");
    expect_dir("escape", "{\"weight_map\":{\"alpha\":\"../x.safetensors\"}}", GPO_ERR_JSON,
               "alpha");
    expect_dir("empty_map", "{\"weight_map\":{}}", GPO_ERR_NOT_FOUND, "maps no tensors");
}

static void test_open_dir_plain(void **state) {
    (void)state;
    static const char *const a[] = {"w1", "w2"}, *const b[] = {"w3"}, *const c[] = {"w2"};
    char dir[512], path[600];
    tmp_path(dir, sizeof dir, "plain");
    assert_int_equal(mkdir(dir, 0755), 0);
    struct gpo_st st = {0};
    assert_int_equal(gpo_st_open_dir(&st, dir), GPO_ERR_NOT_FOUND);
    assert_non_null(strstr(gpo_last_error(), "no *.safetensors"));

    snprintf(path, sizeof path, "%s/b.safetensors", dir);
    write_simple(path, b, 1);
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    write_simple(path, a, 2);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    write_bytes(path, "x", 1);
    assert_int_equal(gpo_st_open_dir(&st, dir), GPO_OK);
    assert_int_equal(st.n_files, 2);
    assert_int_equal(st.n_tensors, 3);
    assert_non_null(strstr(st.files[0].path, "a.safetensors")); /* name order */
    assert_int_equal(gpo_st_find(&st, "w3")->file, 1);
    gpo_st_close(&st);

    /* The same name in two files. */
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
    write_simple(path, c, 1);
    assert_int_equal(gpo_st_open_dir(&st, dir), GPO_ERR_HEADER);
    assert_non_null(strstr(gpo_last_error(), "'w2'"));
    assert_non_null(strstr(gpo_last_error(), "c.safetensors"));
    assert_int_equal(st.n_files, 0);
    remove_dir(dir);

    tmp_path(dir, sizeof dir, "does-not-exist");
    assert_int_equal(gpo_st_open_dir(&st, dir), GPO_ERR_NOT_FOUND);
}

/* A FIFO named like an input file is refused at once with a message naming the
 * path and what it is; opening it for reading must not wait for a writer (the
 * alarm turns a hang into a failure). */
static void expect_fifo_refused(enum gpo_status s, const char *path) {
    if (s != GPO_ERR_IO) fail_msg("%s: got %s (%s)", path, gpo_status_name(s), gpo_last_error());
    if (!strstr(gpo_last_error(), path) || !strstr(gpo_last_error(), "FIFO"))
        fail_msg("message '%s' lacks '%s' or 'FIFO'", gpo_last_error(), path);
}

static void test_fifo_inputs(void **state) {
    (void)state;
    char dir[512], path[600];
    tmp_path(dir, sizeof dir, "fifo");
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(mkfifo(path, 0644), 0);
    alarm(10);
    struct gpo_st st = {0};
    expect_fifo_refused(gpo_st_add_file(&st, path), path);
    expect_fifo_refused(gpo_st_open_dir(&st, dir), path);
    char *text = NULL;
    size_t len = 0;
    expect_fifo_refused(gpo_read_file(path, 1 << 20, &text, &len), path);
    assert_null(text);
    /* The shard index too. */
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    assert_int_equal(mkfifo(path, 0644), 0);
    expect_fifo_refused(gpo_st_open_dir(&st, dir), path);
    alarm(0);
    /* A folder is named as one. */
    assert_int_equal(gpo_read_file(dir, 1 << 20, &text, &len), GPO_ERR_IO);
    assert_non_null(strstr(gpo_last_error(), "a folder"));
    remove_dir(dir);
}

/* ------------------------------------------------------------------------- */
/* Real-format checkpoints                                                   */

struct dims {
    int64_t L, H, Nq, Nkv, D, E, I, V;
};

/* Original name suffix -> HF name suffix(es) (spec 4.4). */
static const struct {
    const char *orig;
    const char *hf[3];
} name_map[] = {
    {"attn.norm.scale", {"input_layernorm.weight"}},
    {"attn.qkv.weight",
     {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}},
    {"attn.qkv.bias", {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}},
    {"attn.sinks", {"self_attn.sinks"}},
    {"attn.out.weight", {"self_attn.o_proj.weight"}},
    {"attn.out.bias", {"self_attn.o_proj.bias"}},
    {"mlp.norm.scale", {"post_attention_layernorm.weight"}},
    {"mlp.gate.weight", {"mlp.router.weight"}},
    {"mlp.gate.bias", {"mlp.router.bias"}},
    {"mlp.mlp1_weight.blocks", {"mlp.experts.gate_up_proj_blocks"}},
    {"mlp.mlp1_weight.scales", {"mlp.experts.gate_up_proj_scales"}},
    {"mlp.mlp1_bias", {"mlp.experts.gate_up_proj_bias"}},
    {"mlp.mlp2_weight.blocks", {"mlp.experts.down_proj_blocks"}},
    {"mlp.mlp2_weight.scales", {"mlp.experts.down_proj_scales"}},
    {"mlp.mlp2_bias", {"mlp.experts.down_proj_bias"}},
};

static void expect_tensor(const struct gpo_st *st, const char *name, enum gpo_dtype dt, int n_dims,
                          int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    const struct gpo_st_tensor *t = gpo_st_find(st, name);
    if (!t) fail_msg("missing tensor %s", name);
    if (t->dtype != dt) fail_msg("%s: dtype %s", name, gpo_dtype_name(t->dtype));
    int64_t want[4] = {d0, d1, d2, d3};
    assert_int_equal(t->n_dims, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (t->shape[i] != want[i])
            fail_msg("%s: dim %d is %lld, want %lld", name, i, (long long)t->shape[i],
                     (long long)want[i]);
}

/* Every HF tensor of spec 4.2 with its dtype and shape, and nothing else. */
static void check_hf(const struct gpo_st *st, const struct dims *d) {
    const enum gpo_dtype B = GPO_DT_BF16, U = GPO_DT_U8;
    char n[160];
    expect_tensor(st, "model.embed_tokens.weight", B, 2, d->V, d->H, 0, 0);
    expect_tensor(st, "model.norm.weight", B, 1, d->H, 0, 0, 0);
    expect_tensor(st, "lm_head.weight", B, 2, d->V, d->H, 0, 0);
    for (int64_t l = 0; l < d->L; l++) {
#define T(suffix, dt, nd, a, b, c, e)                                                           \
    snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, suffix);                         \
    expect_tensor(st, n, dt, nd, a, b, c, e)
        T("input_layernorm.weight", B, 1, d->H, 0, 0, 0);
        T("self_attn.q_proj.weight", B, 2, d->Nq * d->D, d->H, 0, 0);
        T("self_attn.q_proj.bias", B, 1, d->Nq * d->D, 0, 0, 0);
        T("self_attn.k_proj.weight", B, 2, d->Nkv * d->D, d->H, 0, 0);
        T("self_attn.k_proj.bias", B, 1, d->Nkv * d->D, 0, 0, 0);
        T("self_attn.v_proj.weight", B, 2, d->Nkv * d->D, d->H, 0, 0);
        T("self_attn.v_proj.bias", B, 1, d->Nkv * d->D, 0, 0, 0);
        T("self_attn.o_proj.weight", B, 2, d->H, d->Nq * d->D, 0, 0);
        T("self_attn.o_proj.bias", B, 1, d->H, 0, 0, 0);
        T("self_attn.sinks", B, 1, d->Nq, 0, 0, 0);
        T("post_attention_layernorm.weight", B, 1, d->H, 0, 0, 0);
        T("mlp.router.weight", B, 2, d->E, d->H, 0, 0);
        T("mlp.router.bias", B, 1, d->E, 0, 0, 0);
        T("mlp.experts.gate_up_proj_blocks", U, 4, d->E, 2 * d->I, d->H / 32, 16);
        T("mlp.experts.gate_up_proj_scales", U, 3, d->E, 2 * d->I, d->H / 32, 0);
        T("mlp.experts.gate_up_proj_bias", B, 2, d->E, 2 * d->I, 0, 0);
        T("mlp.experts.down_proj_blocks", U, 4, d->E, d->H, d->I / 32, 16);
        T("mlp.experts.down_proj_scales", U, 3, d->E, d->H, d->I / 32, 0);
        T("mlp.experts.down_proj_bias", B, 2, d->E, d->H, 0, 0);
#undef T
    }
    assert_int_equal(st->n_tensors, 3 + 19 * d->L);
}

/* Every original tensor of spec 4.3, and nothing else. */
static void check_original(const struct gpo_st *st, const struct dims *d) {
    const enum gpo_dtype B = GPO_DT_BF16, U = GPO_DT_U8;
    char n[160];
    expect_tensor(st, "embedding.weight", B, 2, d->V, d->H, 0, 0);
    expect_tensor(st, "norm.scale", B, 1, d->H, 0, 0, 0);
    expect_tensor(st, "unembedding.weight", B, 2, d->V, d->H, 0, 0);
    const int64_t qkv = (d->Nq + 2 * d->Nkv) * d->D;
    for (int64_t l = 0; l < d->L; l++) {
#define T(suffix, dt, nd, a, b, c, e)                                                           \
    snprintf(n, sizeof n, "block.%lld.%s", (long long)l, suffix);                                \
    expect_tensor(st, n, dt, nd, a, b, c, e)
        T("attn.norm.scale", B, 1, d->H, 0, 0, 0);
        T("attn.qkv.weight", B, 2, qkv, d->H, 0, 0);
        T("attn.qkv.bias", B, 1, qkv, 0, 0, 0);
        T("attn.sinks", B, 1, d->Nq, 0, 0, 0);
        T("attn.out.weight", B, 2, d->H, d->Nq * d->D, 0, 0);
        T("attn.out.bias", B, 1, d->H, 0, 0, 0);
        T("mlp.norm.scale", B, 1, d->H, 0, 0, 0);
        T("mlp.gate.weight", B, 2, d->E, d->H, 0, 0);
        T("mlp.gate.bias", B, 1, d->E, 0, 0, 0);
        T("mlp.mlp1_weight.blocks", U, 4, d->E, 2 * d->I, d->H / 32, 16);
        T("mlp.mlp1_weight.scales", U, 3, d->E, 2 * d->I, d->H / 32, 0);
        T("mlp.mlp1_bias", B, 2, d->E, 2 * d->I, 0, 0);
        T("mlp.mlp2_weight.blocks", U, 4, d->E, d->H, d->I / 32, 16);
        T("mlp.mlp2_weight.scales", U, 3, d->E, d->H, d->I / 32, 0);
        T("mlp.mlp2_bias", B, 2, d->E, d->H, 0, 0);
#undef T
    }
    assert_int_equal(st->n_tensors, 3 + 15 * d->L);
}

/* The two layouts hold byte-identical data (qkv = q | k | v rows). */
static void check_same_bytes(const struct gpo_st *hf, const struct gpo_st *orig, int64_t n_layer) {
    static const char *const globals[3][2] = {{"embedding.weight", "model.embed_tokens.weight"},
                                              {"norm.scale", "model.norm.weight"},
                                              {"unembedding.weight", "lm_head.weight"}};
    for (int i = 0; i < 3; i++) {
        const struct gpo_st_tensor *a = gpo_st_find(orig, globals[i][0]);
        const struct gpo_st_tensor *b = gpo_st_find(hf, globals[i][1]);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    char n[160];
    for (int64_t l = 0; l < n_layer; l++) {
        for (size_t m = 0; m < sizeof name_map / sizeof *name_map; m++) {
            snprintf(n, sizeof n, "block.%lld.%s", (long long)l, name_map[m].orig);
            const struct gpo_st_tensor *o = gpo_st_find(orig, n);
            assert_non_null(o);
            uint64_t at = 0;
            for (int k = 0; k < 3 && name_map[m].hf[k]; k++) {
                snprintf(n, sizeof n, "model.layers.%lld.%s", (long long)l, name_map[m].hf[k]);
                const struct gpo_st_tensor *h = gpo_st_find(hf, n);
                assert_non_null(h);
                assert_true(at + h->nbytes <= o->nbytes);
                if (memcmp(o->data + at, h->data, h->nbytes) != 0) fail_msg("%s differs", n);
                at += h->nbytes;
            }
            assert_int_equal(at, o->nbytes);
        }
    }
}

static void test_fixture(void **state) {
    (void)state;
    const struct dims d = {4, 128, 4, 2, 64, 8, 96, 1000};
    struct gpo_st hf = {0}, orig = {0};
    assert_int_equal(gpo_st_add_file(&hf, "tests/fixtures/tiny-a/model.safetensors"), GPO_OK);
    assert_int_equal(hf.n_tensors, 79);
    check_hf(&hf, &d);
    gpo_st_close(&hf);
    /* The folder: no index, so every *.safetensors at its top (not original/). */
    assert_int_equal(gpo_st_open_dir(&hf, "tests/fixtures/tiny-a"), GPO_OK);
    assert_int_equal(hf.n_files, 1);
    assert_int_equal(gpo_st_open_dir(&orig, "tests/fixtures/tiny-a/original"), GPO_OK);
    assert_int_equal(orig.n_tensors, 63);
    check_original(&orig, &d);
    check_same_bytes(&hf, &orig, d.L);
    /* The fixture's scale bytes lie in its documented ranges. */
    const struct gpo_st_tensor *sc =
        gpo_st_find(&hf, "model.layers.1.mlp.experts.gate_up_proj_scales");
    for (uint64_t i = 0; i < sc->nbytes; i++) assert_in_range(sc->data[i], 117, 124);
    gpo_st_close(&hf);
    gpo_st_close(&orig);
}

static cJSON *load_json(const char *path) {
    size_t n;
    uint8_t *text = read_all_or_fail(path, &n);
    cJSON *j = cJSON_ParseWithLength((const char *)text, n);
    free(text);
    if (!j) fail_msg("%s is not valid JSON", path);
    return j;
}

static int64_t json_int(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v)) fail_msg("config key %s missing", key);
    return (int64_t)v->valuedouble;
}

static void test_mkmodel_tiny(void **state) {
    (void)state;
    char dir[512], path[600];
    tmp_path(dir, sizeof dir, "tiny/model"); /* parents are created */
    struct gpo_mkmodel_opts o = {.preset = "tiny", .out_dir = dir, .seed = 7,
                                 .layout_hf = 1, .layout_original = 1};
    gpo_set_log_level(GPO_LOG_WARN);
    assert_int_equal(gpo_mkmodel(&o), GPO_OK);
    gpo_set_log_level(GPO_LOG_INFO);

    const struct dims d = {4, 64, 4, 2, 64, 8, 64, 201088};
    struct gpo_st hf = {0}, orig = {0};
    assert_int_equal(gpo_st_open_dir(&hf, dir), GPO_OK);
    assert_int_equal(hf.n_files, 1); /* tiny is one model.safetensors, no index */
    check_hf(&hf, &d);
    snprintf(path, sizeof path, "%s/original", dir);
    assert_int_equal(gpo_st_open_dir(&orig, path), GPO_OK);
    check_original(&orig, &d);
    check_same_bytes(&hf, &orig, d.L);

    /* Tensors are stored sorted by name, packed from offset 0. */
    for (size_t i = 1; i < hf.n_tensors; i++) {
        assert_true(strcmp(hf.tensors[i - 1].name, hf.tensors[i].name) < 0);
        assert_int_equal(hf.tensors[i].offset, hf.tensors[i - 1].offset + hf.tensors[i - 1].nbytes);
    }
    /* E8M0 ranges shifted by -round(log2(sqrt(64/128))) = +1 from the fixture's. */
    const struct gpo_st_tensor *t =
        gpo_st_find(&hf, "model.layers.0.mlp.experts.gate_up_proj_scales");
    int seen_lo = 0, seen_hi = 0;
    for (uint64_t i = 0; i < t->nbytes; i++) {
        assert_in_range(t->data[i], 118, 125);
        seen_lo |= t->data[i] == 118;
        seen_hi |= t->data[i] == 125;
    }
    assert_true(seen_lo && seen_hi);
    t = gpo_st_find(&hf, "model.layers.3.mlp.experts.down_proj_scales");
    for (uint64_t i = 0; i < t->nbytes; i++) assert_in_range(t->data[i], 117, 123);
    /* Embedding ~ N(0, 1), norm scales ~ 1 + N(0, 0.1), lm_head std 2/sqrt(64). */
    t = gpo_st_find(&hf, "model.embed_tokens.weight");
    double sum = 0, sq = 0;
    const size_t ne = 1 << 20;
    for (size_t i = 0; i < ne; i++) {
        float v = bf16_to_f32((uint16_t)(t->data[2 * i] | t->data[2 * i + 1] << 8));
        sum += v;
        sq += (double)v * v;
    }
    double mean = sum / ne, sd = sqrt(sq / ne - mean * mean);
    assert_true(fabs(mean) < 0.01 && fabs(sd - 1.0) < 0.01);
    t = gpo_st_find(&hf, "lm_head.weight");
    sum = sq = 0;
    for (size_t i = 0; i < ne; i++) {
        float v = bf16_to_f32((uint16_t)(t->data[2 * i] | t->data[2 * i + 1] << 8));
        sum += v;
        sq += (double)v * v;
    }
    mean = sum / ne;
    sd = sqrt(sq / ne - mean * mean);
    assert_true(fabs(sd - 0.25) < 0.005);
    t = gpo_st_find(&hf, "model.norm.weight");
    for (uint64_t i = 0; i < t->nbytes; i += 2) {
        float v = bf16_to_f32((uint16_t)(t->data[i] | t->data[i + 1] << 8));
        assert_true(v > 0.5f && v < 1.5f);
    }
    gpo_st_close(&hf);
    gpo_st_close(&orig);

    /* config.json (HF) with the preset's values and the real special ids. */
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *cfg = load_json(path);
    assert_int_equal(json_int(cfg, "num_hidden_layers"), 4);
    assert_int_equal(json_int(cfg, "hidden_size"), 64);
    assert_int_equal(json_int(cfg, "num_local_experts"), 8);
    assert_int_equal(json_int(cfg, "num_experts_per_tok"), 4);
    assert_int_equal(json_int(cfg, "vocab_size"), 201088);
    assert_int_equal(json_int(cfg, "sliding_window"), 16);
    assert_int_equal(json_int(cfg, "eos_token_id"), 200002);
    assert_int_equal(json_int(cfg, "pad_token_id"), 199999);
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(cfg, "layer_types");
    assert_int_equal(cJSON_GetArraySize(lt), 4);
    assert_string_equal(cJSON_GetArrayItem(lt, 0)->valuestring, "sliding_attention");
    assert_string_equal(cJSON_GetArrayItem(lt, 1)->valuestring, "full_attention");
    /* Same keys as the fixture's config.json. */
    cJSON *fx = load_json("tests/fixtures/tiny-a/config.json");
    assert_int_equal(cJSON_GetArraySize(cfg), cJSON_GetArraySize(fx));
    const cJSON *k;
    cJSON_ArrayForEach(k, fx) assert_non_null(cJSON_GetObjectItemCaseSensitive(cfg, k->string));
    cJSON_Delete(fx);
    cJSON_Delete(cfg);

    /* original/config.json: exactly the fixture's 16 keys. */
    snprintf(path, sizeof path, "%s/original/config.json", dir);
    cfg = load_json(path);
    fx = load_json("tests/fixtures/tiny-a/original/config.json");
    assert_int_equal(cJSON_GetArraySize(fx), 16);
    assert_int_equal(cJSON_GetArraySize(cfg), 16);
    cJSON_ArrayForEach(k, fx) assert_non_null(cJSON_GetObjectItemCaseSensitive(cfg, k->string));
    assert_int_equal(json_int(cfg, "num_experts"), 8);
    assert_int_equal(json_int(cfg, "intermediate_size"), 64);
    cJSON_Delete(fx);
    cJSON_Delete(cfg);

    /* original/dtypes.json names every tensor. */
    snprintf(path, sizeof path, "%s/original/dtypes.json", dir);
    cfg = load_json(path);
    assert_int_equal(cJSON_GetArraySize(cfg), 63);
    const char *kinds[3][2] = {{"block.2.mlp.mlp1_weight.blocks", "FP4"},
                               {"block.2.mlp.mlp2_weight.scales", "UE8"},
                               {"norm.scale", "BF16"}};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, kinds[i][0]);
        assert_true(cJSON_IsString(v));
        assert_string_equal(v->valuestring, kinds[i][1]);
    }
    cJSON_Delete(cfg);

    tmp_path(path, sizeof path, "tiny");
    remove_dir(path);
}

/* The free space mkmodel sees: this definition takes the place of the C
 * library's statvfs for the whole test binary (the library calls it only to
 * check space), so a full disk can be played without one. */
static uint64_t fake_free = (uint64_t)1 << 50;

int statvfs(const char *path, struct statvfs *buf) {
    (void)path;
    memset(buf, 0, sizeof *buf);
    buf->f_bsize = buf->f_frsize = 4096;
    buf->f_bavail = buf->f_bfree = fake_free / 4096;
    return 0;
}

/* --force over an old checkpoint checks the space before deleting anything, and
 * counts the old files it replaces as space. */
static void test_mkmodel_space(void **state) {
    (void)state;
    char dir[512], path[600];
    struct stat sb;
    tmp_path(dir, sizeof dir, "space");
    struct gpo_mkmodel_opts o = {.preset = "tiny", .out_dir = dir, .seed = 1, .layout_hf = 1};
    gpo_set_log_level(GPO_LOG_WARN);
    assert_int_equal(gpo_mkmodel(&o), GPO_OK);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(stat(path, &sb), 0);
    off_t old_size = sb.st_size;

    /* 10 MB free + the old ~52 MB is short of ~52 MB + the 64 MB margin. */
    fake_free = 10u << 20;
    o.seed = 2;
    assert_int_equal(gpo_mkmodel(&o), GPO_ERR_IO);
    assert_non_null(strstr(gpo_last_error(), "free"));
    assert_non_null(strstr(gpo_last_error(), "nothing was deleted"));
    assert_int_equal(stat(path, &sb), 0); /* the old checkpoint is still there */
    assert_int_equal(sb.st_size, old_size);

    /* 100 MB free is enough once the old file's space counts. */
    fake_free = 100u << 20;
    assert_int_equal(gpo_mkmodel(&o), GPO_OK);
    assert_int_equal(stat(path, &sb), 0);
    fake_free = (uint64_t)1 << 50;
    gpo_set_log_level(GPO_LOG_INFO);
    remove_dir(dir);
}

static void test_mkmodel_errors(void **state) {
    (void)state;
    char dir[512];
    struct stat sb;
    tmp_path(dir, sizeof dir, "never");
    struct gpo_mkmodel_opts o = {.preset = "bogus", .out_dir = dir, .layout_hf = 1};
    assert_int_equal(gpo_mkmodel(&o), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "bogus"));
    o.preset = "tiny";
    o.layout_hf = 0;
    assert_int_equal(gpo_mkmodel(&o), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "layout"));
    assert_int_not_equal(stat(dir, &sb), 0); /* nothing was created */
    o.out_dir = NULL;
    o.layout_hf = 1;
    assert_int_equal(gpo_mkmodel(&o), GPO_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_writer_misuse),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_header_past_eof),
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_dtype),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_malformed_entries),
        cmocka_unit_test(test_open_dir_index),
        cmocka_unit_test(test_open_dir_plain),
        cmocka_unit_test(test_fifo_inputs),
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_mkmodel_tiny),
        cmocka_unit_test(test_mkmodel_space),
        cmocka_unit_test(test_mkmodel_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
