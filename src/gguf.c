/* gguf.c - the GGUF reader: a parser that checks every count, length, type,
 * dimension, alignment and offset against the bytes the file holds before using
 * it (overflow-safe, and allocating only as entries are actually read, so a
 * hostile count cannot make it reserve gigabytes), read-only mappings, split sets
 * joined into one tensor table, a name index and typed KV lookups. */
#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF values are read in place: a little-endian host is assumed"
#endif

/* ------------------------------------------------------------------------- */
/* Types                                                                     */

static const struct {
    const char *name;
    uint8_t size;
} kv_types[GPO_GGUF_TYPE_COUNT_] = {
    [GPO_GGUF_U8] = {"U8", 1},       [GPO_GGUF_I8] = {"I8", 1},
    [GPO_GGUF_U16] = {"U16", 2},     [GPO_GGUF_I16] = {"I16", 2},
    [GPO_GGUF_U32] = {"U32", 4},     [GPO_GGUF_I32] = {"I32", 4},
    [GPO_GGUF_F32] = {"F32", 4},     [GPO_GGUF_BOOL] = {"BOOL", 1},
    [GPO_GGUF_STRING] = {"STRING", 0}, [GPO_GGUF_ARRAY] = {"ARRAY", 0},
    [GPO_GGUF_U64] = {"U64", 8},     [GPO_GGUF_I64] = {"I64", 8},
    [GPO_GGUF_F64] = {"F64", 8},
};

const char *gpo_gguf_type_name(uint32_t type) {
    return type < GPO_GGUF_TYPE_COUNT_ ? kv_types[type].name : "?";
}

size_t gpo_gguf_type_size(uint32_t type) {
    return type < GPO_GGUF_TYPE_COUNT_ ? kv_types[type].size : 0;
}

/* ggml's type table (ggml.c type_traits): elements and bytes per block.  Holes
 * are types ggml has removed. */
static const struct {
    const char *name;
    uint16_t blck;
    uint16_t size;
} ggml_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},      [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 36},     [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},   [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},  [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110}, [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},        [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},   [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

const char *gpo_ggml_type_name(uint32_t type) {
    return type < N_GGML_TYPES ? ggml_types[type].name : NULL;
}

int gpo_ggml_type_info(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes) {
    if (type >= N_GGML_TYPES || !ggml_types[type].name) return 0;
    *block_elems = ggml_types[type].blck;
    *block_bytes = ggml_types[type].size;
    return 1;
}

int gpo_ggml_nbytes(uint32_t type, int n_dims, const int64_t *ne, uint64_t *out) {
    uint32_t blck, bsize;
    if (!gpo_ggml_type_info(type, &blck, &bsize)) return -1;
    for (int d = 0; d < n_dims; d++)
        if (ne[d] < 0) return -3;
    uint64_t ne0 = n_dims > 0 ? (uint64_t)ne[0] : 1;
    if (ne0 % blck) return -2;
    uint64_t n = ne0 / blck * bsize;
    for (int d = 1; d < n_dims; d++)
        if (!mul_u64(n, (uint64_t)ne[d], &n)) return -4;
    if (n > (uint64_t)INT64_MAX) return -4;
    *out = n;
    return 0;
}

int gpo_ggml_to_dtype(uint32_t type, enum gpo_dtype *out) {
    switch (type) {
    case GPO_GGML_F32: *out = GPO_DT_F32; return 1;
    case GPO_GGML_F16: *out = GPO_DT_F16; return 1;
    case GPO_GGML_BF16: *out = GPO_DT_BF16; return 1;
    case GPO_GGML_Q8_0: *out = GPO_DT_Q8_0; return 1;
    case GPO_GGML_I8: *out = GPO_DT_I8; return 1;
    case GPO_GGML_I16: *out = GPO_DT_I16; return 1;
    case GPO_GGML_I32: *out = GPO_DT_I32; return 1;
    case GPO_GGML_I64: *out = GPO_DT_I64; return 1;
    case GPO_GGML_F64: *out = GPO_DT_F64; return 1;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------- */
/* String sets (open addressing), grown as entries arrive                    */

static uint64_t hash_bytes(const char *s, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int64_t strset_get(const struct gpo_gguf_strset *set, const char *s, uint64_t len) {
    if (set->cap == 0) return -1;
    for (size_t i = hash_bytes(s, len) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
        const struct gpo_gguf_slot *e = &set->slot[i];
        if (!e->s) return -1;
        if (e->len == len && memcmp(e->s, s, len) == 0) return e->idx;
    }
}

static void strset_put(struct gpo_gguf_strset *set, const char *s, uint64_t len, int64_t idx) {
    size_t i = hash_bytes(s, len) & (set->cap - 1);
    while (set->slot[i].s) i = (i + 1) & (set->cap - 1);
    set->slot[i] = (struct gpo_gguf_slot){s, len, idx};
    set->n++;
}

/* Add s (which must stay valid); *dup gets the index of an equal string already
 * present (and nothing is added), else -1. */
static enum gpo_status strset_add(struct gpo_gguf_strset *set, const char *s, uint64_t len,
                                  int64_t idx, int64_t *dup) {
    *dup = strset_get(set, s, len);
    if (*dup >= 0) return GPO_OK;
    if (2 * (set->n + 1) > set->cap) {
        struct gpo_gguf_strset bigger = {0};
        bigger.cap = set->cap ? set->cap * 2 : 64;
        bigger.slot = calloc(bigger.cap, sizeof *bigger.slot);
        if (!bigger.slot) return gpo_fail(GPO_ERR_NOMEM, "out of memory indexing names");
        for (size_t i = 0; i < set->cap; i++)
            if (set->slot[i].s)
                strset_put(&bigger, set->slot[i].s, set->slot[i].len, set->slot[i].idx);
        free(set->slot);
        *set = bigger;
    }
    strset_put(set, s, len, idx);
    return GPO_OK;
}

static void strset_free(struct gpo_gguf_strset *set) {
    free(set->slot);
    memset(set, 0, sizeof *set);
}

/* ------------------------------------------------------------------------- */
/* Parser                                                                    */

struct cursor {
    const uint8_t *buf;
    uint64_t size, pos;
    const char *label;
};

/* A name or key from the file, made printable for a message (at most 80 bytes). */
static const char *printable(const char *s, uint64_t len, char *buf, size_t bufsize) {
    size_t n = 0;
    for (uint64_t i = 0; i < len && n + 4 < bufsize; i++) {
        uint8_t c = (uint8_t)s[i];
        buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (len > bufsize - 4) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = 0;
    return buf;
}

static enum gpo_status need(struct cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return gpo_fail(GPO_ERR_TRUNCATED,
                        "%s: %s at byte offset %llu needs %llu bytes, the file has %llu left",
                        c->label, what, (unsigned long long)c->pos, (unsigned long long)n,
                        (unsigned long long)(c->size - c->pos));
    return GPO_OK;
}

static enum gpo_status rd_u32(struct cursor *c, uint32_t *v, const char *what) {
    GPO_TRY(need(c, 4, what));
    memcpy(v, c->buf + c->pos, 4);
    c->pos += 4;
    return GPO_OK;
}

static enum gpo_status rd_u64(struct cursor *c, uint64_t *v, const char *what) {
    GPO_TRY(need(c, 8, what));
    memcpy(v, c->buf + c->pos, 8);
    c->pos += 8;
    return GPO_OK;
}

static enum gpo_status rd_str(struct cursor *c, struct gpo_gguf_str *s, const char *what) {
    uint64_t len;
    GPO_TRY(rd_u64(c, &len, what));
    if (len > c->size - c->pos)
        return gpo_fail(GPO_ERR_TRUNCATED,
                        "%s: %s at byte offset %llu is %llu bytes long, the file has %llu left",
                        c->label, what, (unsigned long long)(c->pos - 8), (unsigned long long)len,
                        (unsigned long long)(c->size - c->pos));
    s->s = (const char *)c->buf + c->pos;
    s->len = len;
    c->pos += len;
    return GPO_OK;
}

/* Parse the value of KV kv (type already read) and fill in its data/n/nbytes. */
static enum gpo_status parse_value(struct cursor *c, struct gpo_gguf_kv *kv) {
    char kb[96];
    const char *key = printable(kv->key.s, kv->key.len, kb, sizeof kb);
    kv->n = 1;
    kv->elem_type = kv->type;
    if (kv->type >= GPO_GGUF_TYPE_COUNT_)
        return gpo_fail(GPO_ERR_HEADER, "%s: key '%s' at byte offset %llu: unknown value type %u",
                        c->label, key, (unsigned long long)kv->offset, kv->type);
    if (kv->type == GPO_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        GPO_TRY(rd_u32(c, &et, "an array element type"));
        GPO_TRY(rd_u64(c, &n, "an array length"));
        if (et == GPO_GGUF_ARRAY || et >= GPO_GGUF_TYPE_COUNT_)
            return gpo_fail(GPO_ERR_HEADER,
                            "%s: key '%s' at byte offset %llu: array of %s (type %u) is not "
                            "supported",
                            c->label, key, (unsigned long long)kv->offset,
                            et == GPO_GGUF_ARRAY ? "arrays" : "an unknown type", et);
        kv->elem_type = et;
        kv->n = n;
        kv->data = c->buf + c->pos;
        uint64_t left = c->size - c->pos;
        if (et == GPO_GGUF_STRING) {
            if (n > left / 8)
                return gpo_fail(GPO_ERR_TRUNCATED,
                                "%s: key '%s': %llu strings cannot fit in the %llu bytes left "
                                "at byte offset %llu",
                                c->label, key, (unsigned long long)n, (unsigned long long)left,
                                (unsigned long long)c->pos);
            for (uint64_t i = 0; i < n; i++) {
                struct gpo_gguf_str s;
                GPO_TRY(rd_str(c, &s, "an array string"));
            }
        } else {
            uint64_t bytes;
            if (!mul_u64(n, kv_types[et].size, &bytes) || bytes > left)
                return gpo_fail(GPO_ERR_TRUNCATED,
                                "%s: key '%s': %llu elements of %s cannot fit in the %llu bytes "
                                "left at byte offset %llu",
                                c->label, key, (unsigned long long)n, kv_types[et].name,
                                (unsigned long long)left, (unsigned long long)c->pos);
            if (et == GPO_GGUF_BOOL)
                for (uint64_t i = 0; i < n; i++)
                    if (c->buf[c->pos + i] > 1)
                        return gpo_fail(GPO_ERR_HEADER,
                                        "%s: key '%s': bool element %llu is %u, not 0 or 1",
                                        c->label, key, (unsigned long long)i, c->buf[c->pos + i]);
            c->pos += bytes;
        }
    } else if (kv->type == GPO_GGUF_STRING) {
        struct gpo_gguf_str s;
        kv->data = c->buf + c->pos;
        GPO_TRY(rd_str(c, &s, "a string value"));
    } else {
        GPO_TRY(need(c, kv_types[kv->type].size, "a value"));
        kv->data = c->buf + c->pos;
        if (kv->type == GPO_GGUF_BOOL && kv->data[0] > 1)
            return gpo_fail(GPO_ERR_HEADER, "%s: key '%s': bool value is %u, not 0 or 1",
                            c->label, key, kv->data[0]);
        c->pos += kv_types[kv->type].size;
    }
    kv->nbytes = (uint64_t)(c->buf + c->pos - kv->data);
    return GPO_OK;
}

/* Grow *p (of *cap elements) to hold one more, doubling up to the bound `max`. */
static enum gpo_status grow_one(void **p, size_t *cap, size_t n, size_t elem, uint64_t max) {
    if (n < *cap) return GPO_OK;
    uint64_t nc = *cap ? (uint64_t)*cap * 2 : 16;
    if (nc > max) nc = max;
    if (nc <= n) nc = n + 1;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory reading GGUF entries");
    *p = q;
    *cap = (size_t)nc;
    return GPO_OK;
}

static enum gpo_status parse_kvs(struct cursor *c, struct gpo_gguf_file *f, uint64_t n_kv) {
    enum gpo_status s = GPO_OK;
    struct gpo_gguf_strset keys = {0};
    size_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        s = grow_one((void **)&f->kv, &cap, f->n_kv, sizeof *f->kv, n_kv);
        if (s != GPO_OK) break;
        struct gpo_gguf_kv *kv = &f->kv[f->n_kv];
        memset(kv, 0, sizeof *kv);
        kv->offset = c->pos;
        if ((s = rd_str(c, &kv->key, "a key")) != GPO_OK) break;
        if (kv->key.len == 0) {
            s = gpo_fail(GPO_ERR_HEADER, "%s: empty key at byte offset %llu", c->label,
                         (unsigned long long)kv->offset);
            break;
        }
        if ((s = rd_u32(c, &kv->type, "a value type")) != GPO_OK) break;
        if ((s = parse_value(c, kv)) != GPO_OK) break;
        int64_t dup;
        if ((s = strset_add(&keys, kv->key.s, kv->key.len, (int64_t)f->n_kv, &dup)) != GPO_OK)
            break;
        if (dup >= 0) {
            char kb[96];
            s = gpo_fail(GPO_ERR_HEADER, "%s: key '%s' appears twice (byte offsets %llu and %llu)",
                         c->label, printable(kv->key.s, kv->key.len, kb, sizeof kb),
                         (unsigned long long)f->kv[dup].offset, (unsigned long long)kv->offset);
            break;
        }
        f->n_kv++;
    }
    strset_free(&keys);
    return s;
}

static const struct gpo_gguf_kv *file_kv(const struct gpo_gguf_file *f, const char *key) {
    size_t len = strlen(key);
    for (size_t i = 0; i < f->n_kv; i++)
        if (f->kv[i].key.len == len && memcmp(f->kv[i].key.s, key, len) == 0) return &f->kv[i];
    return NULL;
}

static enum gpo_status read_alignment(struct cursor *c, struct gpo_gguf_file *f) {
    f->alignment = GPO_GGUF_DEFAULT_ALIGNMENT;
    const struct gpo_gguf_kv *kv = file_kv(f, "general.alignment");
    if (!kv) return GPO_OK;
    if (kv->type != GPO_GGUF_U32)
        return gpo_fail(GPO_ERR_HEADER, "%s: key 'general.alignment' is %s, not U32", c->label,
                        gpo_gguf_type_name(kv->type));
    uint32_t a;
    memcpy(&a, kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return gpo_fail(GPO_ERR_HEADER,
                        "%s: key 'general.alignment' is %u, not a power of two", c->label, a);
    f->alignment = a;
    return GPO_OK;
}

static enum gpo_status parse_tensor_info(struct cursor *c, const struct gpo_gguf_file *f,
                                         struct gpo_gguf_tensor *t) {
    uint64_t at = c->pos;
    struct gpo_gguf_str name;
    char nb[96];
    memset(t, 0, sizeof *t);
    GPO_TRY(rd_str(c, &name, "a tensor name"));
    const char *pn = printable(name.s, name.len, nb, sizeof nb);
    if (name.len == 0 || name.len > GPO_GGUF_MAX_NAME || memchr(name.s, 0, name.len))
        return gpo_fail(GPO_ERR_HEADER,
                        "%s: tensor name '%s' at byte offset %llu is invalid (%llu bytes; 1 to "
                        "%d without NUL allowed)",
                        c->label, pn, (unsigned long long)at, (unsigned long long)name.len,
                        GPO_GGUF_MAX_NAME);
    memcpy(t->name, name.s, name.len);
    t->name[name.len] = 0;
    uint32_t n_dims;
    GPO_TRY(rd_u32(c, &n_dims, "a tensor's n_dims"));
    if (n_dims > GPO_GGUF_MAX_DIMS)
        return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s' has %u dimensions (at most %d)", c->label,
                        t->name, n_dims, GPO_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < GPO_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (int d = 0; d < t->n_dims; d++) {
        uint64_t v;
        GPO_TRY(rd_u64(c, &v, "a tensor dimension"));
        if (v > (uint64_t)INT64_MAX)
            return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s': dimension %d is %llu (negative)",
                            c->label, t->name, d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    GPO_TRY(rd_u32(c, &t->type, "a tensor type"));
    GPO_TRY(rd_u64(c, &t->offset, "a tensor offset"));
    uint32_t blck = 0, bsize = 0;
    switch (gpo_ggml_nbytes(t->type, t->n_dims, t->ne, &t->nbytes)) {
    case 0: break;
    case -1:
        return gpo_fail(GPO_ERR_DTYPE, "%s: tensor '%s' has unknown ggml type %u", c->label,
                        t->name, t->type);
    case -2:
        gpo_ggml_type_info(t->type, &blck, &bsize);
        return gpo_fail(GPO_ERR_SHAPE,
                        "%s: tensor '%s' of type %s: ne[0] = %lld is not a multiple of its "
                        "block size %u",
                        c->label, t->name, gpo_ggml_type_name(t->type), (long long)t->ne[0], blck);
    default:
        return gpo_fail(GPO_ERR_OVERFLOW, "%s: tensor '%s': size overflows", c->label, t->name);
    }
    if (t->offset % f->alignment)
        return gpo_fail(GPO_ERR_OFFSET,
                        "%s: tensor '%s': data offset %llu is not a multiple of the alignment %u",
                        c->label, t->name, (unsigned long long)t->offset, f->alignment);
    return GPO_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const struct gpo_gguf_tensor *x = *(const struct gpo_gguf_tensor *const *)a;
    const struct gpo_gguf_tensor *y = *(const struct gpo_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Place every tensor inside the file and refuse overlaps. */
static enum gpo_status place_tensors(struct cursor *c, struct gpo_gguf_file *f) {
    for (size_t i = 0; i < f->n_tensors; i++) {
        struct gpo_gguf_tensor *t = &f->tensors[i];
        uint64_t abs, end;
        if (!add_u64(f->data_start, t->offset, &abs) || !add_u64(abs, t->nbytes, &end) ||
            end > c->size)
            return gpo_fail(GPO_ERR_OFFSET,
                            "%s: tensor '%s': data at offset %llu + %llu bytes (data section at "
                            "byte %llu) lies outside the file (%llu bytes)",
                            c->label, t->name, (unsigned long long)t->offset,
                            (unsigned long long)t->nbytes, (unsigned long long)f->data_start,
                            (unsigned long long)c->size);
        t->offset = abs;
        t->data = c->buf + abs;
    }
    if (f->n_tensors < 2) return GPO_OK;
    struct gpo_gguf_tensor **order = malloc(f->n_tensors * sizeof *order);
    if (!order) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes) order[n++] = &f->tensors[i];
    qsort(order, n, sizeof *order, cmp_by_offset);
    enum gpo_status s = GPO_OK;
    for (size_t i = 1; i < n; i++) {
        const struct gpo_gguf_tensor *a = order[i - 1], *b = order[i];
        if (a->offset + a->nbytes > b->offset) {
            s = gpo_fail(GPO_ERR_OFFSET,
                         "%s: overlapping data: tensor '%s' (bytes %llu..%llu) and tensor '%s' "
                         "(from byte %llu)",
                         c->label, a->name, (unsigned long long)a->offset,
                         (unsigned long long)(a->offset + a->nbytes), b->name,
                         (unsigned long long)b->offset);
            break;
        }
    }
    free(order);
    return s;
}

static enum gpo_status parse_tensors(struct cursor *c, struct gpo_gguf_file *f, uint64_t n_t) {
    enum gpo_status s = GPO_OK;
    struct gpo_gguf_strset names = {0};
    size_t cap = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        s = grow_one((void **)&f->tensors, &cap, f->n_tensors, sizeof *f->tensors, n_t);
        if (s != GPO_OK) break;
        struct gpo_gguf_tensor *t = &f->tensors[f->n_tensors];
        if ((s = parse_tensor_info(c, f, t)) != GPO_OK) break;
        f->n_tensors++;
    }
    if (s != GPO_OK) return s;
    /* Duplicate names, once the array no longer moves (the set points at the names). */
    for (size_t i = 0; i < f->n_tensors && s == GPO_OK; i++) {
        int64_t dup;
        s = strset_add(&names, f->tensors[i].name, strlen(f->tensors[i].name), (int64_t)i, &dup);
        if (s == GPO_OK && dup >= 0)
            s = gpo_fail(GPO_ERR_HEADER, "%s: tensor '%s' appears twice (tensors %lld and %zu)",
                         c->label, f->tensors[i].name, (long long)dup, i);
    }
    strset_free(&names);
    return s;
}

void gpo_gguf_file_free(struct gpo_gguf_file *f) {
    if (!f) return;
    free(f->kv);
    free(f->tensors);
    if (f->mapped && f->map) munmap((void *)f->map, (size_t)f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

enum gpo_status gpo_gguf_parse(const uint8_t *buf, uint64_t size, const char *label,
                               struct gpo_gguf_file *out) {
    memset(out, 0, sizeof *out);
    struct cursor c = {buf, size, 0, label};
    enum gpo_status s;
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    GPO_TRY(rd_u32(&c, &magic, "the magic"));
    if (memcmp(buf, "GGUF", 4) != 0)
        return gpo_fail(GPO_ERR_HEADER, "%s: not a GGUF file (magic %02x %02x %02x %02x)", label,
                        buf[0], buf[1], buf[2], buf[3]);
    GPO_TRY(rd_u32(&c, &version, "the version"));
    if (version == 1)
        return gpo_fail(GPO_ERR_HEADER, "%s: GGUF version 1 is not supported (only 2 and 3)",
                        label);
    if (version != 2 && version != 3) {
        if ((version & 0xffff) == 0)
            return gpo_fail(GPO_ERR_HEADER,
                            "%s: GGUF version field 0x%08x: a big-endian file is not supported",
                            label, version);
        return gpo_fail(GPO_ERR_HEADER, "%s: GGUF version %u is not supported (only 2 and 3)",
                        label, version);
    }
    GPO_TRY(rd_u64(&c, &n_tensors, "the tensor count"));
    GPO_TRY(rd_u64(&c, &n_kv, "the KV count"));
    /* The smallest KV takes 13 bytes (key length, a 1-byte key, type, u8 value),
     * the smallest tensor info 25: counts past that cannot be honest. */
    uint64_t left = size - c.pos;
    if (n_kv > left / 13 || n_tensors > left / 25 || n_kv * 13 + n_tensors * 25 > left)
        return gpo_fail(GPO_ERR_TRUNCATED,
                        "%s: %llu KV pairs and %llu tensors cannot fit in the %llu bytes after "
                        "the header",
                        label, (unsigned long long)n_kv, (unsigned long long)n_tensors,
                        (unsigned long long)left);
    out->version = version;
    out->map = buf;
    out->size = size;
    if ((s = parse_kvs(&c, out, n_kv)) != GPO_OK) goto fail;
    if ((s = read_alignment(&c, out)) != GPO_OK) goto fail;
    if ((s = parse_tensors(&c, out, n_tensors)) != GPO_OK) goto fail;
    uint64_t pad = (out->alignment - c.pos % out->alignment) % out->alignment;
    if (!add_u64(c.pos, pad, &out->data_start)) {
        s = gpo_fail(GPO_ERR_OVERFLOW, "%s: data section offset overflows", label);
        goto fail;
    }
    if ((s = place_tensors(&c, out)) != GPO_OK) goto fail;
    return GPO_OK;
fail:
    gpo_gguf_file_free(out);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Opening files and split sets                                              */

static enum gpo_status map_file(const char *path, struct gpo_gguf_file *f) {
    int fd;
    uint64_t size;
    memset(f, 0, sizeof *f);
    GPO_TRY(gpo_open_regular(path, GPO_ERR_NOT_FOUND, &fd, &size));
    if (size < 24) {
        close(fd);
        return gpo_fail(GPO_ERR_TRUNCATED, "%s: %llu bytes, too short for a GGUF header", path,
                        (unsigned long long)size);
    }
    if (size > (uint64_t)SIZE_MAX) {
        close(fd);
        return gpo_fail(GPO_ERR_OVERFLOW, "%s is too large to map", path);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return gpo_fail(GPO_ERR_IO, "cannot map %s: %s", path, strerror(err));
    enum gpo_status s = gpo_gguf_parse(map, size, path, f);
    if (s != GPO_OK) {
        munmap(map, (size_t)size);
        return s;
    }
    f->mapped = 1;
    f->path = strdup(path);
    if (!f->path) {
        gpo_gguf_file_free(f);
        return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    }
    return GPO_OK;
}

/* Read an unsigned integer KV of a part (any integer type holding a value >= 0). */
static enum gpo_status file_uint(const struct gpo_gguf_file *f, const char *key, uint64_t *out,
                                 int *present);

static enum gpo_status add_file(struct gpo_gguf *g, struct gpo_gguf_file *f) {
    void *q = realloc(g->files, (size_t)(g->n_files + 1) * sizeof *g->files);
    if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    g->files = q;
    g->files[g->n_files++] = *f;
    memset(f, 0, sizeof *f);
    return GPO_OK;
}

/* Join the parts' tensors and index names and keys. */
static enum gpo_status build_tables(struct gpo_gguf *g) {
    size_t total = 0;
    for (int i = 0; i < g->n_files; i++) total += g->files[i].n_tensors;
    g->tensors = malloc((total ? total : 1) * sizeof *g->tensors);
    if (!g->tensors) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    for (int i = 0; i < g->n_files; i++)
        for (size_t j = 0; j < g->files[i].n_tensors; j++) {
            g->tensors[g->n_tensors] = g->files[i].tensors[j];
            g->tensors[g->n_tensors].file = i;
            g->n_tensors++;
        }
    for (size_t i = 0; i < g->n_tensors; i++) {
        const struct gpo_gguf_tensor *t = &g->tensors[i];
        int64_t dup;
        GPO_TRY(strset_add(&g->tensor_index, t->name, strlen(t->name), (int64_t)i, &dup));
        if (dup >= 0)
            return gpo_fail(GPO_ERR_HEADER, "tensor '%s' is in both %s and %s", t->name,
                            g->files[g->tensors[dup].file].path ? g->files[g->tensors[dup].file].path
                                                                : "?",
                            g->files[t->file].path ? g->files[t->file].path : "?");
    }
    g->kv = g->files[0].kv;
    g->n_kv = g->files[0].n_kv;
    for (size_t i = 0; i < g->n_kv; i++) {
        int64_t dup;
        GPO_TRY(strset_add(&g->kv_index, g->kv[i].key.s, g->kv[i].key.len, (int64_t)i, &dup));
    }
    return GPO_OK;
}

/* PREFIX-%05d-of-%05d.gguf, as llama.cpp's llama_split_path names parts. */
static char *part_path(const char *prefix, size_t plen, uint64_t no, uint64_t count) {
    size_t n = plen + 32;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%.*s-%05llu-of-%05llu.gguf", (int)plen, prefix,
                    (unsigned long long)no, (unsigned long long)count);
    return p;
}

static enum gpo_status open_parts(struct gpo_gguf *g, const char *path, uint64_t count) {
    char suffix[40];
    snprintf(suffix, sizeof suffix, "-%05d-of-%05llu.gguf", 1, (unsigned long long)count);
    size_t len = strlen(path), slen = strlen(suffix);
    if (len <= slen || strcmp(path + len - slen, suffix) != 0)
        return gpo_fail(GPO_ERR_HEADER,
                        "%s: part 1 of a %llu-part split set must be named PREFIX%s", path,
                        (unsigned long long)count, suffix);
    uint64_t tensors = g->files[0].n_tensors;
    for (uint64_t i = 2; i <= count; i++) {
        char *pp = part_path(path, len - slen, i, count);
        if (!pp) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
        struct gpo_gguf_file f;
        enum gpo_status s = map_file(pp, &f);
        if (s == GPO_ERR_NOT_FOUND)
            s = gpo_fail(GPO_ERR_NOT_FOUND, "split set %s: part %llu of %llu (%s) is missing",
                         path, (unsigned long long)i, (unsigned long long)count, pp);
        free(pp);
        if (s != GPO_OK) return s;
        uint64_t no = 0, cnt = 0;
        int has_no = 0, has_cnt = 0;
        s = file_uint(&f, "split.no", &no, &has_no);
        if (s == GPO_OK) s = file_uint(&f, "split.count", &cnt, &has_cnt);
        if (s == GPO_OK && (!has_no || !has_cnt || no != i - 1 || cnt != count))
            s = gpo_fail(GPO_ERR_HEADER,
                         "%s: split.no %s%llu, split.count %s%llu; expected part %llu of %llu "
                         "(split.no %llu, split.count %llu)",
                         f.path, has_no ? "" : "missing ", (unsigned long long)no,
                         has_cnt ? "" : "missing ", (unsigned long long)cnt,
                         (unsigned long long)i, (unsigned long long)count,
                         (unsigned long long)(i - 1), (unsigned long long)count);
        tensors += f.n_tensors;
        if (s == GPO_OK) s = add_file(g, &f);
        if (s != GPO_OK) {
            gpo_gguf_file_free(&f);
            return s;
        }
    }
    uint64_t want;
    int has;
    GPO_TRY(file_uint(&g->files[0], "split.tensors.count", &want, &has));
    if (has && want != tensors)
        return gpo_fail(GPO_ERR_MISSING_TENSOR,
                        "split set %s: split.tensors.count is %llu but the %llu parts hold %llu "
                        "tensors",
                        path, (unsigned long long)want, (unsigned long long)count,
                        (unsigned long long)tensors);
    return GPO_OK;
}

enum gpo_status gpo_gguf_open(struct gpo_gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    struct gpo_gguf_file f;
    GPO_TRY(map_file(path, &f));
    enum gpo_status s = add_file(g, &f);
    if (s != GPO_OK) {
        gpo_gguf_file_free(&f);
        return s;
    }
    uint64_t count = 1, no = 0;
    int has_count, has_no;
    s = file_uint(&g->files[0], "split.count", &count, &has_count);
    if (s == GPO_OK) s = file_uint(&g->files[0], "split.no", &no, &has_no);
    if (s == GPO_OK && !has_count) count = 1;
    if (s == GPO_OK && (count == 0 || count > GPO_GGUF_MAX_SPLITS))
        s = gpo_fail(GPO_ERR_HEADER, "%s: split.count is %llu (1 to %d allowed)", path,
                     (unsigned long long)count, GPO_GGUF_MAX_SPLITS);
    if (s == GPO_OK && count > 1 && no != 0)
        s = gpo_fail(GPO_ERR_ARG,
                     "%s is part %llu of a %llu-part split set: open part 1 (the -00001-of-%05llu "
                     "file)",
                     path, (unsigned long long)no + 1, (unsigned long long)count,
                     (unsigned long long)count);
    if (s == GPO_OK && count > 1) s = open_parts(g, path, count);
    if (s == GPO_OK) s = build_tables(g);
    if (s != GPO_OK) gpo_gguf_close(g);
    return s;
}

enum gpo_status gpo_gguf_open_mem(struct gpo_gguf *g, const uint8_t *buf, uint64_t size,
                                  const char *label) {
    memset(g, 0, sizeof *g);
    struct gpo_gguf_file f;
    GPO_TRY(gpo_gguf_parse(buf, size, label, &f));
    enum gpo_status s = add_file(g, &f);
    if (s != GPO_OK) gpo_gguf_file_free(&f);
    if (s == GPO_OK) s = build_tables(g);
    if (s != GPO_OK) gpo_gguf_close(g);
    return s;
}

void gpo_gguf_close(struct gpo_gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_files; i++) gpo_gguf_file_free(&g->files[i]);
    free(g->files);
    free(g->tensors);
    strset_free(&g->tensor_index);
    strset_free(&g->kv_index);
    memset(g, 0, sizeof *g);
}

const struct gpo_gguf_tensor *gpo_gguf_find(const struct gpo_gguf *g, const char *name) {
    int64_t i = strset_get(&g->tensor_index, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

const struct gpo_gguf_kv *gpo_gguf_find_kv(const struct gpo_gguf *g, const char *key) {
    int64_t i = strset_get(&g->kv_index, key, strlen(key));
    return i < 0 ? NULL : &g->kv[i];
}

/* ------------------------------------------------------------------------- */
/* Typed lookups                                                             */

static int is_int_type(uint32_t t) {
    return t <= GPO_GGUF_I32 || t == GPO_GGUF_U64 || t == GPO_GGUF_I64;
}

/* The integer at p of KV type t, widened losslessly. */
static __int128 int_at(const uint8_t *p, uint32_t t) {
    switch (t) {
    case GPO_GGUF_U8: return *p;
    case GPO_GGUF_I8: return (int8_t)*p;
    case GPO_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case GPO_GGUF_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case GPO_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case GPO_GGUF_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    case GPO_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); return v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

static double float_at(const uint8_t *p, uint32_t t) {
    if (t == GPO_GGUF_F32) {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    double v;
    memcpy(&v, p, 8);
    return v;
}

static enum gpo_status lookup(const struct gpo_gguf *g, const char *key,
                              const struct gpo_gguf_kv **kv) {
    *kv = gpo_gguf_find_kv(g, key);
    if (!*kv) return gpo_fail(GPO_ERR_NOT_FOUND, "GGUF key '%s' is missing", key);
    return GPO_OK;
}

static enum gpo_status bad_type(const char *key, const struct gpo_gguf_kv *kv, const char *want) {
    return gpo_fail(GPO_ERR_CONFIG, "GGUF key '%s' is %s%s%s, expected %s", key,
                    gpo_gguf_type_name(kv->type), kv->type == GPO_GGUF_ARRAY ? " of " : "",
                    kv->type == GPO_GGUF_ARRAY ? gpo_gguf_type_name(kv->elem_type) : "", want);
}

static enum gpo_status get_int(const struct gpo_gguf *g, const char *key, __int128 lo,
                               __int128 hi, const char *want, __int128 *out) {
    const struct gpo_gguf_kv *kv;
    GPO_TRY(lookup(g, key, &kv));
    if (!is_int_type(kv->type)) return bad_type(key, kv, want);
    __int128 v = int_at(kv->data, kv->type);
    if (v < lo || v > hi) {
        if (v < 0)
            return gpo_fail(GPO_ERR_CONFIG, "GGUF key '%s' is %lld, out of range for %s", key,
                            (long long)v, want);
        return gpo_fail(GPO_ERR_CONFIG, "GGUF key '%s' is %llu, out of range for %s", key,
                        (unsigned long long)v, want);
    }
    *out = v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_u32(const struct gpo_gguf *g, const char *key, uint32_t *out) {
    __int128 v;
    GPO_TRY(get_int(g, key, 0, UINT32_MAX, "an unsigned 32-bit integer", &v));
    *out = (uint32_t)v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_i32(const struct gpo_gguf *g, const char *key, int32_t *out) {
    __int128 v;
    GPO_TRY(get_int(g, key, INT32_MIN, INT32_MAX, "a signed 32-bit integer", &v));
    *out = (int32_t)v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_u64(const struct gpo_gguf *g, const char *key, uint64_t *out) {
    __int128 v;
    GPO_TRY(get_int(g, key, 0, UINT64_MAX, "an unsigned 64-bit integer", &v));
    *out = (uint64_t)v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_i64(const struct gpo_gguf *g, const char *key, int64_t *out) {
    __int128 v;
    GPO_TRY(get_int(g, key, INT64_MIN, INT64_MAX, "a signed 64-bit integer", &v));
    *out = (int64_t)v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_f64(const struct gpo_gguf *g, const char *key, double *out) {
    const struct gpo_gguf_kv *kv;
    GPO_TRY(lookup(g, key, &kv));
    if (kv->type == GPO_GGUF_F32 || kv->type == GPO_GGUF_F64) {
        *out = float_at(kv->data, kv->type);
        return GPO_OK;
    }
    if (is_int_type(kv->type)) {
        __int128 v = int_at(kv->data, kv->type);
        double d = (double)v;
        if ((__int128)d == v) {
            *out = d;
            return GPO_OK;
        }
        return gpo_fail(GPO_ERR_CONFIG, "GGUF key '%s': integer %lld has no exact double", key,
                        (long long)v);
    }
    return bad_type(key, kv, "a number");
}

enum gpo_status gpo_gguf_get_f32(const struct gpo_gguf *g, const char *key, float *out) {
    double d;
    GPO_TRY(gpo_gguf_get_f64(g, key, &d));
    /* (Converting a finite double beyond the float range is undefined.) */
    float f = isfinite(d) && fabs(d) > FLT_MAX ? 0.0f : (float)d;
    if ((double)f != d && !isnan(d))
        return gpo_fail(GPO_ERR_CONFIG, "GGUF key '%s' is %.17g, which a float cannot hold "
                        "exactly", key, d);
    *out = f;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_bool(const struct gpo_gguf *g, const char *key, int *out) {
    const struct gpo_gguf_kv *kv;
    GPO_TRY(lookup(g, key, &kv));
    if (kv->type != GPO_GGUF_BOOL) return bad_type(key, kv, "BOOL");
    *out = kv->data[0];
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_str(const struct gpo_gguf *g, const char *key,
                                 struct gpo_gguf_str *out) {
    const struct gpo_gguf_kv *kv;
    GPO_TRY(lookup(g, key, &kv));
    if (kv->type != GPO_GGUF_STRING) return bad_type(key, kv, "STRING");
    memcpy(&out->len, kv->data, 8);
    out->s = (const char *)kv->data + 8;
    return GPO_OK;
}

enum gpo_status gpo_gguf_get_arr(const struct gpo_gguf *g, const char *key, uint32_t elem_type,
                                 struct gpo_gguf_arr *out) {
    const struct gpo_gguf_kv *kv;
    GPO_TRY(lookup(g, key, &kv));
    if (kv->type != GPO_GGUF_ARRAY ||
        (elem_type != GPO_GGUF_TYPE_COUNT_ && kv->elem_type != elem_type)) {
        char want[48];
        snprintf(want, sizeof want, "ARRAY of %s",
                 elem_type == GPO_GGUF_TYPE_COUNT_ ? "anything" : gpo_gguf_type_name(elem_type));
        return bad_type(key, kv, want);
    }
    out->elem_type = kv->elem_type;
    out->n = kv->n;
    out->data = kv->data;
    out->nbytes = kv->nbytes;
    return GPO_OK;
}

enum gpo_status gpo_gguf_arr_i64(const struct gpo_gguf_arr *a, uint64_t i, int64_t *out) {
    if (i >= a->n)
        return gpo_fail(GPO_ERR_ARG, "array index %llu out of range (%llu elements)",
                        (unsigned long long)i, (unsigned long long)a->n);
    if (!is_int_type(a->elem_type))
        return gpo_fail(GPO_ERR_CONFIG, "array of %s read as integers",
                        gpo_gguf_type_name(a->elem_type));
    __int128 v = int_at(a->data + i * kv_types[a->elem_type].size, a->elem_type);
    if (v > INT64_MAX)
        return gpo_fail(GPO_ERR_CONFIG, "array element %llu is %llu, above INT64_MAX",
                        (unsigned long long)i, (unsigned long long)v);
    *out = (int64_t)v;
    return GPO_OK;
}

void gpo_gguf_str_iter_init(struct gpo_gguf_str_iter *it, const struct gpo_gguf_arr *a) {
    it->p = a->data;
    it->left = a->elem_type == GPO_GGUF_STRING ? a->n : 0;
}

int gpo_gguf_str_next(struct gpo_gguf_str_iter *it, struct gpo_gguf_str *out) {
    if (it->left == 0) return 0;
    memcpy(&out->len, it->p, 8);
    out->s = (const char *)it->p + 8;
    it->p += 8 + out->len;
    it->left--;
    return 1;
}

int gpo_gguf_str_eq(struct gpo_gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.s, c, n) == 0;
}

static enum gpo_status file_uint(const struct gpo_gguf_file *f, const char *key, uint64_t *out,
                                 int *present) {
    const struct gpo_gguf_kv *kv = file_kv(f, key);
    *present = kv != NULL;
    if (!kv) return GPO_OK;
    __int128 v = is_int_type(kv->type) ? int_at(kv->data, kv->type) : -1;
    if (v < 0)
        return gpo_fail(GPO_ERR_HEADER, "%s: key '%s' is not a non-negative integer",
                        f->path ? f->path : "GGUF", key);
    *out = (uint64_t)v;
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Finding a GGUF file                                                       */

int gpo_gguf_sniff(const char *path) {
    int fd;
    uint64_t size;
    char magic[4];
    enum gpo_status s = gpo_open_regular(path, GPO_ERR_NOT_FOUND, &fd, &size);
    gpo_clear_error();
    if (s != GPO_OK) return 0;
    int ok = size >= 4 && pread(fd, magic, 4, 0) == 4 && memcmp(magic, "GGUF", 4) == 0;
    close(fd);
    return ok;
}

/* 1 if name ends in -NNNNN-of-MMMMM.gguf with NNNNN other than 00001: a later part
 * of a split set, opened through its first part. */
static int later_part(const char *name) {
    size_t n = strlen(name);
    const char *suffix = "-00000-of-00000.gguf";
    size_t sl = strlen(suffix);
    if (n < sl) return 0;
    const char *p = name + n - sl;
    for (size_t i = 0; i < sl; i++) {
        int digit = suffix[i] == '0';
        if (digit ? (p[i] < '0' || p[i] > '9') : p[i] != suffix[i]) return 0;
    }
    return strncmp(p + 1, "00001", 5) != 0;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

enum gpo_status gpo_gguf_find_file(const char *dir, char *out, size_t out_size) {
    DIR *d = opendir(dir);
    if (!d)
        return gpo_fail(errno == ENOENT ? GPO_ERR_NOT_FOUND : GPO_ERR_IO,
                        "cannot open folder %s: %s", dir, strerror(errno));
    char *names[8];
    size_t n = 0, total = 0;
    struct dirent *de;
    enum gpo_status s = GPO_OK;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len <= 5 || strcmp(de->d_name + len - 5, ".gguf") != 0 || later_part(de->d_name))
            continue;
        total++;
        if (n < 8) {
            names[n] = strdup(de->d_name);
            if (!names[n]) {
                s = gpo_fail(GPO_ERR_NOMEM, "out of memory listing %s", dir);
                break;
            }
            n++;
        }
    }
    closedir(d);
    if (s == GPO_OK && total == 0)
        s = gpo_fail(GPO_ERR_NOT_FOUND, "no *.gguf file in %s", dir);
    if (s == GPO_OK && total > 1) {
        qsort(names, n, sizeof *names, cmp_name);
        s = gpo_fail(GPO_ERR_ARG, "%s holds %zu GGUF models (%s, %s%s): name the file", dir, total,
                     names[0], names[1], total > 2 ? ", ..." : "");
    }
    if (s == GPO_OK) {
        int w = snprintf(out, out_size, "%s/%s", dir, names[0]);
        if (w < 0 || (size_t)w >= out_size)
            s = gpo_fail(GPO_ERR_ARG, "path %s/%s is too long", dir, names[0]);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    return s;
}
