/* util.h - internal helpers shared by the library: error reporting with detail,
 * overflow-checked arithmetic, bf16/f16 conversion.  Not part of the public API. */
#ifndef GPO_UTIL_H
#define GPO_UTIL_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "gpo.h"

/* Record a detailed message for gpo_last_error() and return s, so that callers
 * can write `return gpo_fail(GPO_ERR_IO, "cannot open %s", path);`. */
enum gpo_status gpo_fail(enum gpo_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current message with more context ("loading DIR: <old>") and return s. */
enum gpo_status gpo_fail_ctx(enum gpo_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void gpo_clear_error(void);

#define GPO_TRY(expr)                                                          \
    do {                                                                       \
        enum gpo_status gpo_try_s_ = (expr);                                   \
        if (gpo_try_s_ != GPO_OK) return gpo_try_s_;                           \
    } while (0)

/* a*b and a+b for sizes; return 0 on overflow. */
static inline int mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round-to-nearest-even; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Aligned allocation (64 bytes) for buffers used by SIMD kernels; NULL on failure. */
void *gpo_aligned_alloc(size_t size);
void gpo_aligned_free(void *p);

/* Open an input file read-only and return its descriptor and size.  The open
 * does not block (a FIFO or a device named like a weights file would wait
 * forever), and anything but a regular file is refused with a message naming
 * the path and what it is.  A missing file is enoent_status, other errors
 * GPO_ERR_IO. */
/* Make room for `need` elements of `elem` bytes in the malloc'd array *p of *cap
 * elements, doubling (from 16) so appends are amortised O(1). */
enum gpo_status gpo_grow(void **p, size_t *cap, size_t need, size_t elem);

enum gpo_status gpo_open_regular(const char *path, enum gpo_status enoent_status, int *fd_out,
                                 uint64_t *size_out);

/* Read a whole regular file of at most max_bytes into a malloc'd, NUL-terminated
 * buffer (opened with gpo_open_regular; a missing file is GPO_ERR_IO). */
enum gpo_status gpo_read_file(const char *path, uint64_t max_bytes, char **out, size_t *len_out);

/* splitmix64: a seed expander and small reproducible generator. */
static inline uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* Monotonic seconds. */
double gpo_now(void);

#endif /* GPO_UTIL_H */
