/* test_common.h - small helpers the cmocka suites share: reading a file whole and
 * a scratch folder removed with everything in it, the pages of a range that are
 * mapped.  Include after <cmocka.h>. */
#ifndef GPO_TEST_COMMON_H
#define GPO_TEST_COMMON_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Pages of [p, p + n) this process has mapped (/proc/self/pagemap bit 63), or -1
 * when pagemap cannot be read. */
static inline long present_pages(const void *p, size_t n) {
    FILE *f = fopen("/proc/self/pagemap", "rb");
    if (!f) return -1;
    const long pg = sysconf(_SC_PAGESIZE);
    long present = 0;
    for (uintptr_t a = (uintptr_t)p; a < (uintptr_t)p + n; a += (uintptr_t)pg) {
        uint64_t e = 0;
        if (fseek(f, (long)(a / (uintptr_t)pg) * 8, SEEK_SET) != 0 || fread(&e, 8, 1, f) != 1) {
            fclose(f);
            return -1;
        }
        present += (long)(e >> 63);
    }
    fclose(f);
    return present;
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

/* The engine suites' fixture: a scratch folder /tmp/gpo_TAG_XXXXXX holding the
 * tiny preset model (seed 3, HF layout) in DIR/m, loaded, and the real o200k
 * tokenizer found as the CLI finds it.  0 on success (a cmocka group setup). */
struct tiny_env {
    char dir[256];
    gpo_model *model;
    gpo_tokenizer *tok;
};

static inline int tiny_env_open(struct tiny_env *te, const char *tag) {
    char tmpl[256], mdir[300], tpath[4096];
    snprintf(tmpl, sizeof tmpl, "/tmp/gpo_%s_XXXXXX", tag);
    if (!mkdtemp(tmpl)) return -1;
    snprintf(te->dir, sizeof te->dir, "%s", tmpl);
    snprintf(mdir, sizeof mdir, "%s/m", te->dir);
    gpo_set_log_level(GPO_LOG_ERROR);
    struct gpo_mkmodel_opts mo = {.preset = "tiny", .out_dir = mdir, .seed = 3, .layout_hf = 1};
    if (gpo_mkmodel(&mo) != GPO_OK || gpo_model_load(mdir, NULL, &te->model) != GPO_OK) return -1;
    if (gpo_tokenizer_find(NULL, NULL, tpath, sizeof tpath) != GPO_OK) return -1;
    return gpo_tokenizer_load(tpath, &te->tok) == GPO_OK ? 0 : -1;
}

static inline int tiny_env_close(struct tiny_env *te) {
    gpo_tokenizer_free(te->tok);
    gpo_model_free(te->model);
    return rm_tree(te->dir) == 0 ? 0 : -1;
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
