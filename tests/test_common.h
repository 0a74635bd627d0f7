/* test_common.h - small helpers the cmocka suites share: reading a file whole and
 * a scratch folder removed with everything in it.  Include after <cmocka.h>. */
#ifndef GPO_TEST_COMMON_H
#define GPO_TEST_COMMON_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "gpo.h"

/* The whole file, NUL-terminated (the length without the NUL in *len); NULL when
 * it cannot be read. */
static inline void *read_all(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len && buf) *len = (size_t)n;
    return buf;
}

/* read_all, where a file that cannot be read fails the test. */
static inline void *read_all_or_fail(const char *path, size_t *len) {
    void *buf = read_all(path, len);
    assert_non_null(buf);
    return buf;
}

static inline int rm_tree_entry(const char *path, const struct stat *sb, int flag,
                                struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Remove a folder and everything below it; 0 on success. */
static inline int rm_tree(const char *dir) {
    return nftw(dir, rm_tree_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The token ids of sequence seq of the tiny-a golden fixture, appended to ids. */
static inline void load_golden_ids(int seq, struct gpo_ids *ids) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/tiny-a/golden/seq%d.ids.json", seq);
    char *txt = read_all_or_fail(path, NULL);
    cJSON *a = cJSON_Parse(txt);
    free(txt);
    assert_true(cJSON_IsArray(a));
    const cJSON *e;
    cJSON_ArrayForEach(e, a) assert_int_equal(gpo_ids_push(ids, (int32_t)e->valuedouble), GPO_OK);
    cJSON_Delete(a);
}

#endif
