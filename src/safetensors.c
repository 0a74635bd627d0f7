/* safetensors.c - the safetensors container: a bounds-checked header parser that
 * trusts nothing in the file, read-only mappings of single files and of sharded
 * folders (model.safetensors.index.json), a name index, and a streaming writer
 * that never holds a tensor whole. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* ------------------------------------------------------------------------- */
/* Dtypes                                                                    */

static const struct {
    const char *name;
    size_t size;
} dtype_info[GPO_DT_COUNT_] = {
    [GPO_DT_F32] = {"F32", 4},     [GPO_DT_F16] = {"F16", 2},
    [GPO_DT_BF16] = {"BF16", 2},   [GPO_DT_U8] = {"U8", 1},
    [GPO_DT_I32] = {"I32", 4},     [GPO_DT_I64] = {"I64", 8},
    [GPO_DT_F64] = {"F64", 8},     [GPO_DT_I8] = {"I8", 1},
    [GPO_DT_I16] = {"I16", 2},     [GPO_DT_U16] = {"U16", 2},
    [GPO_DT_U32] = {"U32", 4},     [GPO_DT_U64] = {"U64", 8},
    [GPO_DT_BOOL] = {"BOOL", 1},   [GPO_DT_F8_E4M3] = {"F8_E4M3", 1},
    [GPO_DT_F8_E5M2] = {"F8_E5M2", 1},
};

size_t gpo_dtype_size(enum gpo_dtype dt) {
    if ((unsigned)dt >= (unsigned)GPO_DT_COUNT_) return 0;
    return dtype_info[dt].size;
}

const char *gpo_dtype_name(enum gpo_dtype dt) {
    if (dt == GPO_DT_Q8_0) return "Q8_0"; /* in-memory only; never read from a file */
    if (dt == GPO_DT_Q8_0X16) return "Q8_0x16"; /* the same, repacked at load */
    if ((unsigned)dt >= (unsigned)GPO_DT_COUNT_ || !dtype_info[dt].name) return "?";
    return dtype_info[dt].name;
}

int gpo_dtype_from_name(const char *name, enum gpo_dtype *out) {
    for (int i = 0; i < GPO_DT_COUNT_; i++) {
        if (dtype_info[i].name && strcmp(name, dtype_info[i].name) == 0) {
            *out = (enum gpo_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Name index (open addressing, linear probing)                              */

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* Build an index over t[0..n).  If two tensors share a name, *dup_a and *dup_b
 * receive their positions and GPO_ERR_HEADER is returned (the caller names them). */
static enum gpo_status index_build(const struct gpo_st_tensor *t, size_t n, int64_t **index_out,
                                   size_t *cap_out, size_t *dup_a, size_t *dup_b) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    int64_t *index = malloc(cap * sizeof *index);
    if (!index) return gpo_fail(GPO_ERR_NOMEM, "out of memory indexing %zu tensors", n);
    for (size_t i = 0; i < cap; i++) index[i] = -1;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)hash_name(t[i].name) & (cap - 1);
        while (index[h] >= 0) {
            if (strcmp(t[index[h]].name, t[i].name) == 0) {
                *dup_a = (size_t)index[h];
                *dup_b = i;
                free(index);
                return GPO_ERR_HEADER;
            }
            h = (h + 1) & (cap - 1);
        }
        index[h] = (int64_t)i;
    }
    *index_out = index;
    *cap_out = cap;
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Header parsing                                                            */

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* A JSON number that is an exact non-negative integer.  cJSON keeps numbers as
 * doubles, which hold every integer below 2^53 exactly; anything at or above it
 * may already have been rounded, so it is refused rather than misread. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* A short description of a JSON value for error messages. */
static const char *json_desc(const cJSON *v, char *buf, size_t size) {
    if (!v) snprintf(buf, size, "nothing");
    else if (cJSON_IsNumber(v)) snprintf(buf, size, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v)) snprintf(buf, size, "\"%.60s\"", v->valuestring);
    else if (cJSON_IsArray(v)) snprintf(buf, size, "an array of %d", cJSON_GetArraySize(v));
    else if (cJSON_IsObject(v)) snprintf(buf, size, "an object");
    else if (cJSON_IsBool(v)) snprintf(buf, size, "a boolean");
    else if (cJSON_IsNull(v)) snprintf(buf, size, "null");
    else snprintf(buf, size, "an invalid value");
    return buf;
}

static const char *fmt_shape(const int64_t *shape, int n_dims, char *buf, size_t size) {
    size_t at = 0;
    at += (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < n_dims && at < size; i++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (at < size) snprintf(buf + at, size - at, "]");
    return buf;
}

void gpo_st_free_tensors(struct gpo_st_tensor *t, size_t n) {
    if (!t) return;
    for (size_t i = 0; i < n; i++) free(t[i].name);
    free(t);
}

/* The entry "name": {"dtype": ..., "shape": [...], "data_offsets": [b, e]}. */
static enum gpo_status parse_entry(const cJSON *item, const char *label, const uint8_t *data,
                                   uint64_t data_size, uint64_t data_start,
                                   struct gpo_st_tensor *t) {
    const char *name = item->string;
    char desc[96];
    if (!cJSON_IsObject(item))
        return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': entry is %s, not an object", label,
                        name, json_desc(item, desc, sizeof desc));
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL, *f;
    cJSON_ArrayForEach(f, item) {
        const cJSON **slot = NULL;
        if (strcmp(f->string, "dtype") == 0) slot = &dtype;
        else if (strcmp(f->string, "shape") == 0) slot = &shape;
        else if (strcmp(f->string, "data_offsets") == 0) slot = &offs;
        if (!slot) continue; /* unknown keys are ignored, as the reference crate does */
        if (*slot)
            return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': key '%s' appears twice", label,
                            name, f->string);
        *slot = f;
    }
    if (!dtype || !shape || !offs)
        return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': missing '%s'", label, name,
                        !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    if (!cJSON_IsString(dtype))
        return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': dtype is %s, not a string", label,
                        name, json_desc(dtype, desc, sizeof desc));
    if (!gpo_dtype_from_name(dtype->valuestring, &t->dtype))
        return gpo_fail(GPO_ERR_DTYPE, "%s: tensor '%.200s': unknown dtype '%.60s'", label, name,
                        dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': shape is %s, not an array", label,
                        name, json_desc(shape, desc, sizeof desc));
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > GPO_ST_MAX_DIMS)
        return gpo_fail(GPO_ERR_HEADER, "%s: tensor '%.200s': shape has %d dimensions (at most %d)",
                        label, name, n_dims, GPO_ST_MAX_DIMS);
    t->n_dims = n_dims;
    int d = 0, has_zero = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, shape) {
        uint64_t v;
        if (!json_uint(e, &v))
            return gpo_fail(GPO_ERR_HEADER,
                            "%s: tensor '%.200s': shape[%d] is %s, not a non-negative integer "
                            "below 2^53",
                            label, name, d, json_desc(e, desc, sizeof desc));
        t->shape[d++] = (int64_t)v;
        has_zero |= v == 0;
    }

    /* An empty product is 1 (a scalar); a zero dimension makes the tensor empty
     * however large the other dimensions are. */
    uint64_t nbytes = gpo_dtype_size(t->dtype);
    char sbuf[200];
    if (has_zero) nbytes = 0;
    for (int i = 0; i < n_dims && nbytes; i++) {
        if (!mul_u64(nbytes, (uint64_t)t->shape[i], &nbytes))
            return gpo_fail(GPO_ERR_OVERFLOW,
                            "%s: tensor '%.200s': shape %s of %s overflows 64-bit byte counts",
                            label, name, fmt_shape(t->shape, n_dims, sbuf, sizeof sbuf),
                            gpo_dtype_name(t->dtype));
    }
    t->nbytes = nbytes;

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return gpo_fail(GPO_ERR_HEADER,
                        "%s: tensor '%.200s': data_offsets is %s, not an array of two integers",
                        label, name, json_desc(offs, desc, sizeof desc));
    uint64_t be[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(offs, i);
        if (!json_uint(v, &be[i]))
            return gpo_fail(GPO_ERR_HEADER,
                            "%s: tensor '%.200s': data_offsets[%d] is %s, not a non-negative "
                            "integer below 2^53",
                            label, name, i, json_desc(v, desc, sizeof desc));
    }
    if (be[0] > be[1])
        return gpo_fail(GPO_ERR_OFFSET,
                        "%s: tensor '%.200s': data_offsets [%llu, %llu] end before they begin",
                        label, name, (unsigned long long)be[0], (unsigned long long)be[1]);
    if (be[1] > data_size)
        return gpo_fail(GPO_ERR_OFFSET,
                        "%s: tensor '%.200s': data_offsets [%llu, %llu] run past the end of the "
                        "data section (%llu bytes)",
                        label, name, (unsigned long long)be[0], (unsigned long long)be[1],
                        (unsigned long long)data_size);
    if (be[1] - be[0] != nbytes)
        return gpo_fail(GPO_ERR_OFFSET,
                        "%s: tensor '%.200s': data_offsets [%llu, %llu] span %llu bytes but "
                        "shape %s of %s needs %llu",
                        label, name, (unsigned long long)be[0], (unsigned long long)be[1],
                        (unsigned long long)(be[1] - be[0]),
                        fmt_shape(t->shape, n_dims, sbuf, sizeof sbuf), gpo_dtype_name(t->dtype),
                        (unsigned long long)nbytes);
    t->offset = data_start + be[0];
    t->data = data + be[0];
    return GPO_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const struct gpo_st_tensor *x = *(const struct gpo_st_tensor *const *)a;
    const struct gpo_st_tensor *y = *(const struct gpo_st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

enum gpo_status gpo_st_parse(const uint8_t *buf, uint64_t size, const char *label,
                             struct gpo_st_tensor **out, size_t *n_out) {
    enum gpo_status s = GPO_OK;
    cJSON *root = NULL;
    struct gpo_st_tensor *t = NULL, **order = NULL;
    int64_t *index = NULL;
    size_t n = 0, cap = 0;
    *out = NULL;
    *n_out = 0;
    if (!label) label = "<buffer>";

    if (size < 8)
        return gpo_fail(GPO_ERR_TRUNCATED,
                        "%s: file is %llu bytes, too short for the 8-byte header length", label,
                        (unsigned long long)size);
    uint64_t hlen = read_le64(buf);
    if (hlen > size - 8)
        return gpo_fail(GPO_ERR_TRUNCATED,
                        "%s: header length %llu runs past the end of the file (%llu bytes)", label,
                        (unsigned long long)hlen, (unsigned long long)size);
    if (hlen > GPO_ST_MAX_HEADER)
        return gpo_fail(GPO_ERR_HEADER, "%s: header length %llu exceeds the limit of %u bytes",
                        label, (unsigned long long)hlen, GPO_ST_MAX_HEADER);
    const char *json = (const char *)buf + 8;
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;

    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    if (!root) {
        uint64_t at = end && end >= json ? (uint64_t)(end - json) : 0;
        return gpo_fail(GPO_ERR_JSON, "%s: header is not valid JSON (error near byte %llu of %llu)",
                        label, (unsigned long long)at, (unsigned long long)hlen);
    }
    /* The header may be right-padded (the writers pad with spaces to align the data). */
    for (const char *p = end; p < json + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = gpo_fail(GPO_ERR_JSON,
                         "%s: unexpected byte 0x%02x after the header's JSON object (at byte %llu "
                         "of %llu)",
                         label, (uint8_t)*p, (unsigned long long)(p - json),
                         (unsigned long long)hlen);
            goto cleanup;
        }
    }
    if (!cJSON_IsObject(root)) {
        char desc[96];
        s = gpo_fail(GPO_ERR_HEADER, "%s: header is %s, not a JSON object", label,
                     json_desc(root, desc, sizeof desc));
        goto cleanup;
    }

    size_t n_items = (size_t)cJSON_GetArraySize(root);
    t = calloc(n_items ? n_items : 1, sizeof *t);
    if (!t) {
        s = gpo_fail(GPO_ERR_NOMEM, "%s: out of memory for %zu tensors", label, n_items);
        goto cleanup;
    }
    int seen_meta = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_meta) {
                s = gpo_fail(GPO_ERR_HEADER, "%s: '__metadata__' appears twice", label);
                goto cleanup;
            }
            seen_meta = 1;
            if (!cJSON_IsObject(item)) {
                s = gpo_fail(GPO_ERR_HEADER, "%s: '__metadata__' is not an object", label);
                goto cleanup;
            }
            const cJSON *m;
            cJSON_ArrayForEach(m, item) {
                if (!cJSON_IsString(m)) {
                    char desc[96];
                    s = gpo_fail(GPO_ERR_HEADER,
                                 "%s: '__metadata__' key '%.100s' is %s, not a string", label,
                                 m->string, json_desc(m, desc, sizeof desc));
                    goto cleanup;
                }
            }
            continue;
        }
        if (!item->string[0]) {
            s = gpo_fail(GPO_ERR_HEADER, "%s: a tensor has an empty name", label);
            goto cleanup;
        }
        s = parse_entry(item, label, data, data_size, 8 + hlen, &t[n]);
        if (s != GPO_OK) goto cleanup;
        t[n].file = 0;
        t[n].name = strdup(item->string);
        if (!t[n].name) {
            s = gpo_fail(GPO_ERR_NOMEM, "%s: out of memory", label);
            goto cleanup;
        }
        n++;
    }

    size_t da, db;
    s = index_build(t, n, &index, &cap, &da, &db);
    if (s == GPO_ERR_HEADER) {
        s = gpo_fail(GPO_ERR_HEADER, "%s: duplicate tensor name '%.200s' (entries %zu and %zu)",
                     label, t[da].name, da, db);
        goto cleanup;
    }
    if (s != GPO_OK) goto cleanup;

    /* No two tensors may share a byte.  Empty tensors own no bytes and are skipped. */
    order = malloc((n ? n : 1) * sizeof *order);
    if (!order) {
        s = gpo_fail(GPO_ERR_NOMEM, "%s: out of memory", label);
        goto cleanup;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t[i].nbytes) order[m++] = &t[i];
    qsort(order, m, sizeof *order, cmp_by_offset);
    for (size_t i = 1; i < m; i++) {
        const struct gpo_st_tensor *a = order[i - 1], *b = order[i];
        if (b->offset < a->offset + a->nbytes) {
            uint64_t base = 8 + hlen;
            s = gpo_fail(GPO_ERR_OFFSET,
                         "%s: tensor '%.200s' [%llu, %llu] overlaps tensor '%.200s' [%llu, %llu]",
                         label, b->name, (unsigned long long)(b->offset - base),
                         (unsigned long long)(b->offset - base + b->nbytes), a->name,
                         (unsigned long long)(a->offset - base),
                         (unsigned long long)(a->offset - base + a->nbytes));
            goto cleanup;
        }
    }

    *out = t;
    *n_out = n;
    t = NULL;
cleanup:
    free(order);
    free(index);
    gpo_st_free_tensors(t, n);
    cJSON_Delete(root);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Mapped files and folders                                                  */

const struct gpo_st_tensor *gpo_st_find(const struct gpo_st *st, const char *name) {
    if (!st->index || !name) return NULL;
    size_t h = (size_t)hash_name(name) & (st->index_cap - 1);
    while (st->index[h] >= 0) {
        const struct gpo_st_tensor *t = &st->tensors[st->index[h]];
        if (strcmp(t->name, name) == 0) return t;
        h = (h + 1) & (st->index_cap - 1);
    }
    return NULL;
}

enum gpo_status gpo_st_add_file(struct gpo_st *st, const char *path) {
    enum gpo_status s = GPO_OK;
    struct gpo_st_tensor *t = NULL;
    size_t n = 0;
    void *map = MAP_FAILED;
    uint64_t size = 0;
    char *pathcopy = NULL;

    int fd;
    GPO_TRY(gpo_open_regular(path, GPO_ERR_NOT_FOUND, &fd, &size));
    if (size > SIZE_MAX) {
        s = gpo_fail(GPO_ERR_IO, "%s: %llu bytes cannot be mapped here", path,
                     (unsigned long long)size);
        goto cleanup;
    }
    if (size < 8) {
        s = gpo_fail(GPO_ERR_TRUNCATED,
                     "%s: file is %llu bytes, too short for the 8-byte header length", path,
                     (unsigned long long)size);
        goto cleanup;
    }
    map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        s = gpo_fail(GPO_ERR_IO, "cannot map %s (%llu bytes): %s", path, (unsigned long long)size,
                     strerror(errno));
        goto cleanup;
    }
    close(fd);
    fd = -1;

    s = gpo_st_parse(map, size, path, &t, &n);
    if (s != GPO_OK) goto cleanup;
    for (size_t i = 0; i < n; i++) {
        const struct gpo_st_tensor *old = gpo_st_find(st, t[i].name);
        if (old) {
            s = gpo_fail(GPO_ERR_HEADER, "tensor '%.200s' is in both %s and %s", t[i].name,
                         st->files[old->file].path, path);
            goto cleanup;
        }
    }

    pathcopy = strdup(path);
    struct gpo_st_file *files = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *files);
    if (!pathcopy || !files) {
        if (files) st->files = files;
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory adding %s", path);
        goto cleanup;
    }
    st->files = files;
    struct gpo_st_tensor *all = realloc(st->tensors, (st->n_tensors + n + 1) * sizeof *all);
    if (!all) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory adding %s", path);
        goto cleanup;
    }
    st->tensors = all;
    int64_t *index = NULL;
    size_t cap = 0, da, db, n_new = n;
    for (size_t i = 0; i < n; i++) {
        t[i].file = st->n_files;
        all[st->n_tensors + i] = t[i];
    }
    /* Duplicates were ruled out above, so this can only fail for memory. */
    s = index_build(all, st->n_tensors + n, &index, &cap, &da, &db);
    if (s != GPO_OK) goto cleanup;
    /* The names now belong to st->tensors. */
    free(t);
    t = NULL;
    n = 0;
    free(st->index);
    st->index = index;
    st->index_cap = cap;
    st->n_tensors += n_new;
    st->files[st->n_files].path = pathcopy;
    st->files[st->n_files].map = map;
    st->files[st->n_files].size = size;
    st->n_files++;
    pathcopy = NULL;
    map = MAP_FAILED;
cleanup:
    free(pathcopy);
    gpo_st_free_tensors(t, n);
    if (map != MAP_FAILED) munmap(map, (size_t)size);
    if (fd >= 0) close(fd);
    return s;
}

void gpo_st_close(struct gpo_st *st) {
    if (!st) return;
    for (int i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap((void *)st->files[i].map, (size_t)st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    free(st->index);
    memset(st, 0, sizeof *st);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}


/* A shard name from index.json must be a plain file name inside the folder. */
static int plain_file_name(const char *s) {
    return s[0] && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static enum gpo_status open_with_index(struct gpo_st *st, const char *dir, const char *ipath) {
    enum gpo_status s = GPO_OK;
    char *text = NULL, *path = NULL;
    const char **shards = NULL;
    size_t len = 0, n_map = 0, n_shards = 0;
    cJSON *root = NULL;

    s = gpo_read_file(ipath, (uint64_t)256 << 20, &text, &len);
    if (s != GPO_OK) goto cleanup;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        s = gpo_fail(GPO_ERR_JSON, "%s: not valid JSON (error near byte %lld)", ipath,
                     (long long)(end ? end - text : 0));
        goto cleanup;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        s = gpo_fail(GPO_ERR_JSON, "%s: no \"weight_map\" object", ipath);
        goto cleanup;
    }
    n_map = (size_t)cJSON_GetArraySize(wm);
    if (n_map == 0) {
        s = gpo_fail(GPO_ERR_NOT_FOUND, "%s: \"weight_map\" maps no tensors", ipath);
        goto cleanup;
    }
    shards = malloc(n_map * sizeof *shards);
    if (!shards) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory reading %s", ipath);
        goto cleanup;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
            char desc[96];
            s = gpo_fail(GPO_ERR_JSON,
                         "%s: weight_map entry '%.200s' is %s, not the file name of a shard",
                         ipath, e->string, json_desc(e, desc, sizeof desc));
            goto cleanup;
        }
        shards[n_shards++] = e->valuestring;
    }
    /* Each shard is opened once, in name order. */
    qsort(shards, n_shards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
    n_shards = u;
    for (size_t i = 0; i < n_shards; i++) {
        free(path);
        path = join_path(dir, shards[i]);
        if (!path) {
            s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        s = gpo_st_add_file(st, path);
        if (s == GPO_ERR_NOT_FOUND) {
            s = gpo_fail(GPO_ERR_NOT_FOUND, "%s names shard '%.200s', which does not exist (%s)",
                         ipath, shards[i], path);
            goto cleanup;
        }
        if (s != GPO_OK) goto cleanup;
    }
    cJSON_ArrayForEach(e, wm) {
        const struct gpo_st_tensor *t = gpo_st_find(st, e->string);
        if (!t) {
            s = gpo_fail(GPO_ERR_MISSING_TENSOR,
                         "%s maps tensor '%.200s' to shard '%.200s', which does not hold it",
                         ipath, e->string, e->valuestring);
            goto cleanup;
        }
        const char *base = strrchr(st->files[t->file].path, '/');
        base = base ? base + 1 : st->files[t->file].path;
        if (strcmp(base, e->valuestring) != 0) {
            s = gpo_fail(GPO_ERR_MISSING_TENSOR,
                         "%s maps tensor '%.200s' to shard '%.200s', but it is in '%.200s'", ipath,
                         e->string, e->valuestring, base);
            goto cleanup;
        }
    }
    if (st->n_tensors != n_map)
        gpo_log(GPO_LOG_DEBUG, "%s: the shards hold %zu tensors, the index maps %zu", ipath,
                st->n_tensors, n_map);
cleanup:
    free(path);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return s;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && strcmp(s + a - b, suffix) == 0;
}

static enum gpo_status open_all_files(struct gpo_st *st, const char *dir) {
    enum gpo_status s = GPO_OK;
    char **names = NULL, *path = NULL;
    size_t n = 0, cap = 0;
    DIR *d = opendir(dir);
    if (!d)
        return gpo_fail(errno == ENOENT ? GPO_ERR_NOT_FOUND : GPO_ERR_IO,
                        "cannot open folder %s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!has_suffix(de->d_name, ".safetensors")) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **q = realloc(names, nc * sizeof *q);
            if (!q) {
                s = gpo_fail(GPO_ERR_NOMEM, "out of memory listing %s", dir);
                goto cleanup;
            }
            names = q;
            cap = nc;
        }
        names[n] = strdup(de->d_name);
        if (!names[n]) {
            s = gpo_fail(GPO_ERR_NOMEM, "out of memory listing %s", dir);
            goto cleanup;
        }
        n++;
    }
    if (n == 0) {
        s = gpo_fail(GPO_ERR_NOT_FOUND, "no *.safetensors file in %s", dir);
        goto cleanup;
    }
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        free(path);
        path = join_path(dir, names[i]);
        if (!path) {
            s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        s = gpo_st_add_file(st, path);
        if (s != GPO_OK) goto cleanup;
    }
cleanup:
    free(path);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    closedir(d);
    return s;
}

enum gpo_status gpo_st_open_dir(struct gpo_st *st, const char *dir) {
    enum gpo_status s;
    char *ipath = join_path(dir, "model.safetensors.index.json");
    if (!ipath) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    struct stat sb;
    if (stat(ipath, &sb) == 0)
        s = open_with_index(st, dir, ipath);
    else
        s = open_all_files(st, dir);
    free(ipath);
    if (s != GPO_OK) gpo_st_close(st);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Streaming writer                                                          */

#define WRITER_BUF (8u << 20)

enum gpo_status gpo_st_writer_open(struct gpo_st_writer *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->path = strdup(path);
    w->iobuf = malloc(WRITER_BUF);
    if (!w->path || !w->iobuf) {
        free(w->path);
        free(w->iobuf);
        memset(w, 0, sizeof *w);
        return gpo_fail(GPO_ERR_NOMEM, "out of memory opening %s", path);
    }
    w->f = fopen(path, "wb");
    if (!w->f) {
        enum gpo_status s = gpo_fail(GPO_ERR_IO, "cannot create %s: %s", path, strerror(errno));
        free(w->path);
        free(w->iobuf);
        memset(w, 0, sizeof *w);
        return s;
    }
    setvbuf(w->f, w->iobuf, _IOFBF, WRITER_BUF);
    return GPO_OK;
}

enum gpo_status gpo_st_writer_declare(struct gpo_st_writer *w, const char *name,
                                      enum gpo_dtype dt, int n_dims, const int64_t *shape) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "safetensors writer is not open");
    if (w->header_done)
        return gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' declared after data was written", w->path,
                        name);
    if (!name || !name[0] || strcmp(name, "__metadata__") == 0)
        return gpo_fail(GPO_ERR_ARG, "%s: invalid tensor name '%s'", w->path, name ? name : "");
    if (gpo_dtype_size(dt) == 0)
        return gpo_fail(GPO_ERR_DTYPE, "%s: tensor '%s': invalid dtype %d", w->path, name, (int)dt);
    if (n_dims < 0 || n_dims > GPO_ST_MAX_DIMS)
        return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s': %d dimensions (at most %d)", w->path,
                        name, n_dims, GPO_ST_MAX_DIMS);
    uint64_t nbytes = gpo_dtype_size(dt);
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0)
            return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s': dimension %d is %lld", w->path, name,
                            i, (long long)shape[i]);
        if (!mul_u64(nbytes, (uint64_t)shape[i], &nbytes))
            return gpo_fail(GPO_ERR_OVERFLOW, "%s: tensor '%s': size overflows", w->path, name);
    }
    for (size_t i = 0; i < w->n_decl; i++)
        if (strcmp(w->decl[i].name, name) == 0)
            return gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' declared twice", w->path, name);
    if (w->n_decl == w->cap_decl) {
        size_t nc = w->cap_decl ? w->cap_decl * 2 : 64;
        void *q = realloc(w->decl, nc * sizeof *w->decl);
        if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
        w->decl = q;
        w->cap_decl = nc;
    }
    char *copy = strdup(name);
    if (!copy) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    w->decl[w->n_decl].name = copy;
    w->decl[w->n_decl].dtype = dt;
    w->decl[w->n_decl].n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) w->decl[w->n_decl].shape[i] = shape[i];
    w->decl[w->n_decl].nbytes = nbytes;
    w->n_decl++;
    return GPO_OK;
}

static enum gpo_status json_escape(struct gpo_str *out, const char *s) {
    GPO_TRY(gpo_str_append(out, "\"", 1));
    for (; *s; s++) {
        uint8_t c = (uint8_t)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            GPO_TRY(gpo_str_append(out, esc, 2));
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            GPO_TRY(gpo_str_append(out, esc, 6));
        } else {
            GPO_TRY(gpo_str_append(out, (const char *)&c, 1));
        }
    }
    return gpo_str_append(out, "\"", 1);
}

static enum gpo_status write_header(struct gpo_st_writer *w) {
    enum gpo_status s = GPO_OK;
    struct gpo_str h = {0};
    char num[64];
    uint64_t off = 0;
    s = gpo_str_append(&h, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    for (size_t i = 0; i < w->n_decl && s == GPO_OK; i++) {
        uint64_t end;
        if (!add_u64(off, w->decl[i].nbytes, &end)) {
            s = gpo_fail(GPO_ERR_OVERFLOW, "%s: total size overflows", w->path);
            break;
        }
        s = gpo_str_append(&h, ",", 1);
        if (s == GPO_OK) s = json_escape(&h, w->decl[i].name);
        snprintf(num, sizeof num, ":{\"dtype\":\"%s\",\"shape\":[",
                 gpo_dtype_name(w->decl[i].dtype));
        if (s == GPO_OK) s = gpo_str_append(&h, num, strlen(num));
        for (int d = 0; d < w->decl[i].n_dims && s == GPO_OK; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)w->decl[i].shape[d]);
            s = gpo_str_append(&h, num, strlen(num));
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)end);
        if (s == GPO_OK) s = gpo_str_append(&h, num, strlen(num));
        off = end;
    }
    if (s == GPO_OK) s = gpo_str_append(&h, "}", 1);
    /* Pad to a multiple of 8 so that the data section starts 8-byte aligned. */
    while (s == GPO_OK && h.n % 8) s = gpo_str_append(&h, " ", 1);
    if (s != GPO_OK) goto cleanup;
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
    if (fwrite(len, 1, 8, w->f) != 8 || fwrite(h.s, 1, h.n, w->f) != h.n) {
        s = gpo_fail(GPO_ERR_IO, "writing the header of %s: %s", w->path, strerror(errno));
        goto cleanup;
    }
    w->header_done = 1;
    w->cur = 0;
    w->cur_written = 0;
cleanup:
    gpo_str_free(&h);
    return s;
}

/* Move past finished (and empty) tensors. */
static void writer_advance(struct gpo_st_writer *w) {
    while (w->cur < w->n_decl && w->cur_written == w->decl[w->cur].nbytes) {
        w->cur++;
        w->cur_written = 0;
    }
}

enum gpo_status gpo_st_writer_write(struct gpo_st_writer *w, const void *data, uint64_t n) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "safetensors writer is not open");
    if (!w->header_done) GPO_TRY(write_header(w));
    const uint8_t *p = data;
    while (n > 0) {
        writer_advance(w);
        if (w->cur >= w->n_decl)
            return gpo_fail(GPO_ERR_ARG, "%s: %llu bytes written beyond the declared tensors",
                            w->path, (unsigned long long)n);
        uint64_t room = w->decl[w->cur].nbytes - w->cur_written;
        size_t take = (size_t)(n < room ? n : room);
        if (fwrite(p, 1, take, w->f) != take)
            return gpo_fail(GPO_ERR_IO, "writing tensor '%s' to %s: %s", w->decl[w->cur].name,
                            w->path, strerror(errno));
        w->cur_written += take;
        p += take;
        n -= take;
    }
    return GPO_OK;
}

static void writer_free(struct gpo_st_writer *w) {
    for (size_t i = 0; i < w->n_decl; i++) free(w->decl[i].name);
    free(w->decl);
    free(w->path);
    free(w->iobuf);
    memset(w, 0, sizeof *w);
}

enum gpo_status gpo_st_writer_close(struct gpo_st_writer *w) {
    enum gpo_status s = GPO_OK;
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "safetensors writer is not open");
    if (!w->header_done) s = write_header(w);
    if (s == GPO_OK) {
        writer_advance(w);
        if (w->cur < w->n_decl)
            s = gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' got %llu of its %llu bytes", w->path,
                         w->decl[w->cur].name, (unsigned long long)w->cur_written,
                         (unsigned long long)w->decl[w->cur].nbytes);
    }
    if (s != GPO_OK) {
        gpo_st_writer_abort(w);
        return s;
    }
    /* Write errors such as a full disk may only show up when the buffer is flushed. */
    int bad = fflush(w->f) != 0 || ferror(w->f);
    int err = errno;
    if (fclose(w->f) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    w->f = NULL;
    if (bad) {
        s = gpo_fail(GPO_ERR_IO, "writing %s: %s", w->path, strerror(err));
        unlink(w->path);
    }
    writer_free(w);
    return s;
}

void gpo_st_writer_abort(struct gpo_st_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        w->f = NULL;
        if (w->path) unlink(w->path);
    }
    writer_free(w);
}
