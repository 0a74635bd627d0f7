/* gguf_write.c - the streaming GGUF writer: KV pairs are serialized as they are
 * declared, tensors are declared by name, type and shape, and their bytes are
 * then streamed in declaration order with each tensor padded to the alignment,
 * so a 13 GB file is written without holding any tensor whole.  The file is
 * written beside its final name and renamed only when complete. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "util.h"

#define WRITER_BUF (8u << 20)

enum gpo_status gpo_gguf_writer_open(struct gpo_gguf_writer *w, const char *path) {
    memset(w, 0, sizeof *w);
    size_t n = strlen(path) + 5;
    w->path = strdup(path);
    w->tmp_path = malloc(n);
    w->iobuf = malloc(WRITER_BUF);
    w->alignment = GPO_GGUF_DEFAULT_ALIGNMENT;
    if (!w->path || !w->tmp_path || !w->iobuf) {
        gpo_gguf_writer_abort(w);
        return gpo_fail(GPO_ERR_NOMEM, "out of memory opening %s", path);
    }
    snprintf(w->tmp_path, n, "%s.tmp", path);
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        enum gpo_status s =
            gpo_fail(GPO_ERR_IO, "cannot create %s: %s", w->tmp_path, strerror(errno));
        gpo_gguf_writer_abort(w);
        return s;
    }
    setvbuf(w->f, w->iobuf, _IOFBF, WRITER_BUF);
    return GPO_OK;
}

static enum gpo_status kv_append(struct gpo_gguf_writer *w, const void *p, size_t n) {
    if (n > SIZE_MAX - w->kv_len) return gpo_fail(GPO_ERR_OVERFLOW, "GGUF metadata too large");
    GPO_TRY(gpo_grow((void **)&w->kv, &w->kv_cap, w->kv_len + n, 1));
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return GPO_OK;
}

static enum gpo_status kv_u32(struct gpo_gguf_writer *w, uint32_t v) {
    return kv_append(w, &v, 4);
}

static enum gpo_status kv_str(struct gpo_gguf_writer *w, const char *s, uint64_t len) {
    GPO_TRY(kv_append(w, &len, 8));
    return len ? kv_append(w, s, (size_t)len) : GPO_OK;
}

/* Check the key is usable and new, remember it and write it with its type. */
static enum gpo_status kv_begin(struct gpo_gguf_writer *w, const char *key, uint32_t type) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    if (w->header_done)
        return gpo_fail(GPO_ERR_ARG, "%s: key '%s' declared after data was written", w->path,
                        key ? key : "");
    if (!key || !key[0]) return gpo_fail(GPO_ERR_ARG, "%s: empty GGUF key", w->path);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return gpo_fail(GPO_ERR_ARG, "%s: key '%s' declared twice", w->path, key);
    GPO_TRY(gpo_grow((void **)&w->keys, &w->cap_keys, w->n_kv + 1, sizeof *w->keys));
    char *copy = strdup(key);
    if (!copy) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    /* Roll back a half-written pair if anything below fails. */
    size_t mark = w->kv_len;
    enum gpo_status s = kv_str(w, key, strlen(key));
    if (s == GPO_OK) s = kv_u32(w, type);
    if (s != GPO_OK) {
        w->kv_len = mark;
        free(copy);
        return s;
    }
    w->keys[w->n_kv++] = copy;
    return GPO_OK;
}

/* Undo the last kv_begin (its value could not be written). */
static void kv_undo(struct gpo_gguf_writer *w, size_t mark) {
    w->kv_len = mark;
    free(w->keys[--w->n_kv]);
}

enum gpo_status gpo_gguf_writer_kv(struct gpo_gguf_writer *w, const char *key, uint32_t type,
                                   const void *value) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    size_t size = gpo_gguf_type_size(type);
    if (size == 0)
        return gpo_fail(GPO_ERR_ARG, "%s: key '%s': %s is not a scalar type", w->path,
                        key ? key : "", gpo_gguf_type_name(type));
    if (type == GPO_GGUF_BOOL && *(const uint8_t *)value > 1)
        return gpo_fail(GPO_ERR_ARG, "%s: key '%s': bool value %u", w->path, key,
                        *(const uint8_t *)value);
    if (key && strcmp(key, "general.alignment") == 0) {
        uint32_t a = 0;
        if (type == GPO_GGUF_U32) memcpy(&a, value, 4);
        if (type != GPO_GGUF_U32 || a == 0 || (a & (a - 1)))
            return gpo_fail(GPO_ERR_ARG,
                            "%s: general.alignment must be a U32 power of two (got %s %u)",
                            w->path, gpo_gguf_type_name(type), a);
    }
    size_t mark = w->kv_len;
    GPO_TRY(kv_begin(w, key, type));
    enum gpo_status s = kv_append(w, value, size);
    if (s != GPO_OK) {
        kv_undo(w, mark);
        return s;
    }
    if (strcmp(key, "general.alignment") == 0) memcpy(&w->alignment, value, 4);
    return GPO_OK;
}

enum gpo_status gpo_gguf_writer_kv_u32(struct gpo_gguf_writer *w, const char *key, uint32_t v) {
    return gpo_gguf_writer_kv(w, key, GPO_GGUF_U32, &v);
}
enum gpo_status gpo_gguf_writer_kv_i32(struct gpo_gguf_writer *w, const char *key, int32_t v) {
    return gpo_gguf_writer_kv(w, key, GPO_GGUF_I32, &v);
}
enum gpo_status gpo_gguf_writer_kv_u64(struct gpo_gguf_writer *w, const char *key, uint64_t v) {
    return gpo_gguf_writer_kv(w, key, GPO_GGUF_U64, &v);
}
enum gpo_status gpo_gguf_writer_kv_f32(struct gpo_gguf_writer *w, const char *key, float v) {
    return gpo_gguf_writer_kv(w, key, GPO_GGUF_F32, &v);
}
enum gpo_status gpo_gguf_writer_kv_bool(struct gpo_gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    return gpo_gguf_writer_kv(w, key, GPO_GGUF_BOOL, &b);
}

enum gpo_status gpo_gguf_writer_kv_strn(struct gpo_gguf_writer *w, const char *key,
                                        const char *s, uint64_t len) {
    size_t mark = w->kv_len;
    GPO_TRY(kv_begin(w, key, GPO_GGUF_STRING));
    enum gpo_status st = kv_str(w, s, len);
    if (st != GPO_OK) kv_undo(w, mark);
    return st;
}

enum gpo_status gpo_gguf_writer_kv_str(struct gpo_gguf_writer *w, const char *key, const char *s) {
    return gpo_gguf_writer_kv_strn(w, key, s, strlen(s));
}

enum gpo_status gpo_gguf_writer_kv_arr(struct gpo_gguf_writer *w, const char *key,
                                       uint32_t elem_type, const void *data, uint64_t n) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    size_t size = gpo_gguf_type_size(elem_type);
    uint64_t bytes;
    if (size == 0)
        return gpo_fail(GPO_ERR_ARG, "%s: key '%s': array of %s is not supported here", w->path,
                        key ? key : "", gpo_gguf_type_name(elem_type));
    if (!mul_u64(n, size, &bytes) || bytes > SIZE_MAX)
        return gpo_fail(GPO_ERR_OVERFLOW, "%s: key '%s': array too large", w->path,
                        key ? key : "");
    if (elem_type == GPO_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (((const uint8_t *)data)[i] > 1)
                return gpo_fail(GPO_ERR_ARG, "%s: key '%s': bool element %llu is %u", w->path,
                                key, (unsigned long long)i, ((const uint8_t *)data)[i]);
    size_t mark = w->kv_len;
    GPO_TRY(kv_begin(w, key, GPO_GGUF_ARRAY));
    enum gpo_status s = kv_u32(w, elem_type);
    if (s == GPO_OK) s = kv_append(w, &n, 8);
    if (s == GPO_OK && bytes) s = kv_append(w, data, (size_t)bytes);
    if (s != GPO_OK) kv_undo(w, mark);
    return s;
}

enum gpo_status gpo_gguf_writer_kv_arr_str(struct gpo_gguf_writer *w, const char *key,
                                           const char *const *strs, const uint64_t *lens,
                                           uint64_t n) {
    size_t mark = w->kv_len;
    GPO_TRY(kv_begin(w, key, GPO_GGUF_ARRAY));
    enum gpo_status s = kv_u32(w, GPO_GGUF_STRING);
    if (s == GPO_OK) s = kv_append(w, &n, 8);
    for (uint64_t i = 0; i < n && s == GPO_OK; i++)
        s = kv_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
    if (s != GPO_OK) kv_undo(w, mark);
    return s;
}

enum gpo_status gpo_gguf_writer_declare(struct gpo_gguf_writer *w, const char *name,
                                        uint32_t type, int n_dims, const int64_t *ne) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    if (!name || !name[0] || strlen(name) > GPO_GGUF_MAX_NAME)
        return gpo_fail(GPO_ERR_ARG, "%s: invalid tensor name '%s' (1 to %d bytes)", w->path,
                        name ? name : "", GPO_GGUF_MAX_NAME);
    if (w->header_done)
        return gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' declared after data was written", w->path,
                        name);
    if (n_dims < 0 || n_dims > GPO_GGUF_MAX_DIMS)
        return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s': %d dimensions (at most %d)", w->path,
                        name, n_dims, GPO_GGUF_MAX_DIMS);
    uint64_t nbytes;
    switch (gpo_ggml_nbytes(type, n_dims, ne, &nbytes)) {
    case 0: break;
    case -1:
        return gpo_fail(GPO_ERR_DTYPE, "%s: tensor '%s': unknown ggml type %u", w->path, name,
                        type);
    case -2:
        return gpo_fail(GPO_ERR_SHAPE,
                        "%s: tensor '%s': ne[0] = %lld is not a multiple of the %s block size",
                        w->path, name, (long long)ne[0], gpo_ggml_type_name(type));
    case -3:
        return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s': negative dimension", w->path, name);
    default:
        return gpo_fail(GPO_ERR_OVERFLOW, "%s: tensor '%s': size overflows", w->path, name);
    }
    for (size_t i = 0; i < w->n_decl; i++)
        if (strcmp(w->decl[i].name, name) == 0)
            return gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' declared twice", w->path, name);
    GPO_TRY(gpo_grow((void **)&w->decl, &w->cap_decl, w->n_decl + 1, sizeof *w->decl));
    memset(&w->decl[w->n_decl], 0, sizeof w->decl[0]);
    strcpy(w->decl[w->n_decl].name, name);
    w->decl[w->n_decl].type = type;
    w->decl[w->n_decl].n_dims = n_dims;
    for (int d = 0; d < GPO_GGUF_MAX_DIMS; d++) w->decl[w->n_decl].ne[d] = d < n_dims ? ne[d] : 1;
    w->decl[w->n_decl].nbytes = nbytes;
    w->n_decl++;
    return GPO_OK;
}

static uint64_t pad_to(uint64_t n, uint32_t align) { return (align - n % align) % align; }

static enum gpo_status write_zeros(struct gpo_gguf_writer *w, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n > 0) {
        size_t take = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (fwrite(zeros, 1, take, w->f) != take)
            return gpo_fail(GPO_ERR_IO, "writing %s: %s", w->tmp_path, strerror(errno));
        n -= take;
    }
    return GPO_OK;
}

static enum gpo_status write_header(struct gpo_gguf_writer *w) {
    enum gpo_status s = GPO_OK;
    struct gpo_str h = {0};
    uint32_t version = 3;
    uint64_t n_t = w->n_decl, n_kv = w->n_kv, off = 0, pos;
    s = gpo_str_append(&h, "GGUF", 4);
    if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&version, 4);
    if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&n_t, 8);
    if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&n_kv, 8);
    for (size_t i = 0; i < w->n_decl && s == GPO_OK; i++) {
        uint64_t len = strlen(w->decl[i].name), end;
        uint32_t nd = (uint32_t)w->decl[i].n_dims;
        s = gpo_str_append(&h, (const char *)&len, 8);
        if (s == GPO_OK) s = gpo_str_append(&h, w->decl[i].name, len);
        if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&nd, 4);
        for (uint32_t d = 0; d < nd && s == GPO_OK; d++)
            s = gpo_str_append(&h, (const char *)&w->decl[i].ne[d], 8);
        if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&w->decl[i].type, 4);
        if (s == GPO_OK) s = gpo_str_append(&h, (const char *)&off, 8);
        if (s == GPO_OK &&
            (!add_u64(off, w->decl[i].nbytes, &end) ||
             !add_u64(end, pad_to(end, w->alignment), &off)))
            s = gpo_fail(GPO_ERR_OVERFLOW, "%s: total size overflows", w->path);
    }
    if (s != GPO_OK) goto cleanup;
    pos = (uint64_t)w->kv_len + h.n;
    if (fwrite(h.s, 1, 24, w->f) != 24 || (w->kv_len && fwrite(w->kv, 1, w->kv_len, w->f) !=
                                                            w->kv_len) ||
        fwrite(h.s + 24, 1, h.n - 24, w->f) != h.n - 24) {
        s = gpo_fail(GPO_ERR_IO, "writing the header of %s: %s", w->tmp_path, strerror(errno));
        goto cleanup;
    }
    if ((s = write_zeros(w, pad_to(pos, w->alignment))) != GPO_OK) goto cleanup;
    w->header_done = 1;
    w->cur = 0;
    w->cur_written = 0;
cleanup:
    gpo_str_free(&h);
    return s;
}

/* Pad finished (and empty) tensors and move past them. */
static enum gpo_status writer_advance(struct gpo_gguf_writer *w) {
    while (w->cur < w->n_decl && w->cur_written == w->decl[w->cur].nbytes) {
        GPO_TRY(write_zeros(w, pad_to(w->decl[w->cur].nbytes, w->alignment)));
        w->cur++;
        w->cur_written = 0;
    }
    return GPO_OK;
}

enum gpo_status gpo_gguf_writer_write(struct gpo_gguf_writer *w, const void *data, uint64_t n) {
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    if (!w->header_done) GPO_TRY(write_header(w));
    const uint8_t *p = data;
    while (n > 0) {
        GPO_TRY(writer_advance(w));
        if (w->cur >= w->n_decl)
            return gpo_fail(GPO_ERR_ARG, "%s: %llu bytes written beyond the declared tensors",
                            w->path, (unsigned long long)n);
        uint64_t room = w->decl[w->cur].nbytes - w->cur_written;
        size_t take = (size_t)(n < room ? n : room);
        if (fwrite(p, 1, take, w->f) != take)
            return gpo_fail(GPO_ERR_IO, "writing tensor '%s' to %s: %s", w->decl[w->cur].name,
                            w->tmp_path, strerror(errno));
        w->cur_written += take;
        p += take;
        n -= take;
    }
    return GPO_OK;
}

enum gpo_status gpo_gguf_writer_close(struct gpo_gguf_writer *w) {
    enum gpo_status s = GPO_OK;
    if (!w->f) return gpo_fail(GPO_ERR_ARG, "GGUF writer is not open");
    if (!w->header_done) s = write_header(w);
    if (s == GPO_OK) s = writer_advance(w);
    if (s == GPO_OK && w->cur < w->n_decl)
        s = gpo_fail(GPO_ERR_ARG, "%s: tensor '%s' got %llu of its %llu bytes", w->path,
                     w->decl[w->cur].name, (unsigned long long)w->cur_written,
                     (unsigned long long)w->decl[w->cur].nbytes);
    if (s != GPO_OK) {
        gpo_gguf_writer_abort(w);
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
    if (!bad && rename(w->tmp_path, w->path) != 0) {
        s = gpo_fail(GPO_ERR_IO, "cannot rename %s to %s: %s", w->tmp_path, w->path,
                     strerror(errno));
        unlink(w->tmp_path);
    } else if (bad) {
        s = gpo_fail(GPO_ERR_IO, "writing %s: %s", w->tmp_path, strerror(err));
        unlink(w->tmp_path);
    }
    gpo_gguf_writer_abort(w);
    return s;
}

void gpo_gguf_writer_abort(struct gpo_gguf_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        w->f = NULL;
        if (w->tmp_path) unlink(w->tmp_path);
    }
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->decl);
    free(w->path);
    free(w->tmp_path);
    free(w->iobuf);
    memset(w, 0, sizeof *w);
}
