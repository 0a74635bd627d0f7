/* util.c - small helpers: growable id and byte buffers, f16 conversion, aligned
 * allocation and a monotonic clock. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

enum gpo_status gpo_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return GPO_OK;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) return gpo_fail(GPO_ERR_NOMEM, "buffer too large");
        nc *= 2;
    }
    void *q = realloc(*p, nc * elem);
    if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory growing a buffer to %zu items", nc);
    *p = q;
    *cap = nc;
    return GPO_OK;
}

enum gpo_status gpo_ids_push(struct gpo_ids *v, int32_t id) {
    GPO_TRY(gpo_grow((void **)&v->ids, &v->cap, v->n + 1, sizeof *v->ids));
    v->ids[v->n++] = id;
    return GPO_OK;
}

enum gpo_status gpo_ids_append(struct gpo_ids *v, const int32_t *ids, size_t n) {
    if (n == 0) return GPO_OK;
    GPO_TRY(gpo_grow((void **)&v->ids, &v->cap, v->n + n, sizeof *v->ids));
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
    return GPO_OK;
}

void gpo_ids_free(struct gpo_ids *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

enum gpo_status gpo_str_append(struct gpo_str *v, const char *bytes, size_t n) {
    GPO_TRY(gpo_grow((void **)&v->s, &v->cap, v->n + n + 1, 1));
    if (n) memcpy(v->s + v->n, bytes, n);
    v->n += n;
    v->s[v->n] = 0;
    return GPO_OK;
}

void gpo_str_free(struct gpo_str *v) {
    free(v->s);
    v->s = NULL;
    v->n = v->cap = 0;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
    if (a >= 0x477ff000u) return sign | 0x7c00; /* rounds to infinity */
    if (a < 0x38800000u) { /* subnormal or zero in f16 */
        if (a < 0x33000000u) return sign;
        uint32_t man = (a & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(a >> 23);
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = ((a >> 13) - ((127 - 15) << 10));
    uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return sign | (uint16_t)r;
}

void *gpo_aligned_alloc(size_t size) {
    void *p = NULL;
    if (size == 0) size = 64;
    if (posix_memalign(&p, 64, size) != 0) return NULL;
    return p;
}

void gpo_aligned_free(void *p) { free(p); }

double gpo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* What a file that is not a regular one is, for messages. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a folder";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

enum gpo_status gpo_open_regular(const char *path, enum gpo_status enoent_status, int *fd_out,
                                 uint64_t *size_out) {
    *fd_out = -1;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return gpo_fail(errno == ENOENT ? enoent_status : GPO_ERR_IO, "cannot open %s: %s", path,
                        strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        enum gpo_status s = gpo_fail(GPO_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return s;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return gpo_fail(GPO_ERR_IO, "%s is %s, not a regular file", path, file_kind(sb.st_mode));
    }
    /* Reads of the regular file may block as usual. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    *size_out = (uint64_t)sb.st_size;
    return GPO_OK;
}

enum gpo_status gpo_read_file(const char *path, uint64_t max_bytes, char **out, size_t *len_out) {
    enum gpo_status s = GPO_OK;
    char *buf = NULL;
    int fd;
    uint64_t size;
    GPO_TRY(gpo_open_regular(path, GPO_ERR_IO, &fd, &size));
    if (size > max_bytes) {
        s = gpo_fail(GPO_ERR_IO, "%s is %llu bytes, more than the %llu expected at most", path,
                     (unsigned long long)size, (unsigned long long)max_bytes);
        goto cleanup;
    }
    size_t len = (size_t)size;
    buf = malloc(len + 1);
    if (!buf) {
        s = gpo_fail(GPO_ERR_NOMEM, "cannot allocate %zu bytes for %s", len, path);
        goto cleanup;
    }
    for (size_t got = 0; got < len;) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            s = gpo_fail(GPO_ERR_IO, "cannot read %s: %s", path,
                         r < 0 ? strerror(errno) : "the file ended early");
            goto cleanup;
        }
        got += (size_t)r;
    }
    buf[len] = 0;
    *out = buf;
    *len_out = len;
    buf = NULL;
cleanup:
    free(buf);
    close(fd);
    return s;
}
