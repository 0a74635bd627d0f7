/* drivers.h - the loops that cut a dense matmul into register tiles, shared by the
 * ISA files (avx2.c, avx512.c), so each of those holds only its micro-kernels: the
 * tiles (which own the arithmetic and its fixed reduction order), the panel
 * conversion and the prefetches.
 *
 * Two paths, both giving the same bits per output element (the tiles only
 * interleave independent accumulators, see kernels.h):
 *   - direct (decode and small batches): blocks of rows outermost, tokens in tiles,
 *     the tile converting weights in registers;
 *   - batched (larger batches): tokens in chunks, rows in panels, columns in chunks;
 *     each chunk of a panel is converted once to f32 (or used in place for f32
 *     weights) and swept by register tiles of rows x tokens, whose accumulators wait
 *     in a buffer between column chunks (storing and reloading keeps their bits).
 * The vector width enters only as the byte size of one accumulator (acc_bytes); the
 * sizes are the ISA file's constants, the callbacks its tiles.  Every callback gets
 * an opaque weight-type code `wt` that the ISA file defines. */
#ifndef GPO_KERNELS_DRIVERS_H
#define GPO_KERNELS_DRIVERS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* The size of the next tile when n tokens remain for tiles of at most tmax: the
 * tiles are balanced (4 tokens make 2 + 2 rather than 3 + 1, which would use the
 * weights for one token only). */
static inline int gpo_drv_tile_tokens(int64_t n, int tmax) {
    const int64_t tiles = (n + tmax - 1) / tmax;
    return (int)((n + tiles - 1) / tiles);
}

/* y[t0+j][r+i] for i < R, j < T, weights converted in registers. */
typedef void (*gpo_drv_direct_tile_fn)(int R, int T, float *y, int64_t ldy, const void *W,
                                       const float *x, int64_t ldx, int64_t t0, int64_t r,
                                       int64_t n_cols);

/* The direct path: blocks of rstep rows outermost (so each block of rows is read once
 * per call), the tokens in tiles of up to tmax (balanced by gpo_drv_tile_tokens when
 * `balanced`, else tmax at a time and the remainder last). */
static inline void gpo_drv_direct(gpo_drv_direct_tile_fn tile, int64_t rstep, int tmax,
                                  int balanced, float *y, int64_t ldy, const void *W,
                                  const float *x, int64_t ldx, int64_t n_tok, int64_t r0,
                                  int64_t r1, int64_t n_cols) {
    for (int64_t r = r0; r < r1; r += rstep) {
        const int R = (int)(r1 - r < rstep ? r1 - r : rstep);
        for (int64_t t = 0, T; t < n_tok; t += T) {
            T = balanced ? gpo_drv_tile_tokens(n_tok - t, tmax)
                         : (n_tok - t < tmax ? n_tok - t : tmax);
            tile(R, (int)T, y, ldy, W, x, ldx, t, r, n_cols);
        }
    }
}

/* A Q8_0x16 matmul (kernels.h) with f32 activations through the ISA file's Q8_0
 * kernel q80: rows are unpacked a few at a time into Q8_0 rows on the stack, so each
 * element gets the Q8_0 kernel's bits (its rows are independent of [r0, r1)).  The
 * exact path's rate on a repacked model; n_cols <= GPO_Q8X16_MAX_COLS. */
static inline void gpo_drv_q8_0x16(void (*q80)(float *, int64_t, const void *, const float *,
                                               int64_t, int64_t, int64_t, int64_t, int64_t),
                                   float *y, int64_t ldy, const void *W, const float *x,
                                   int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                   int64_t n_cols) {
    struct gpo_q8_0_block buf[2 * GPO_Q8X16_MAX_COLS / GPO_QK];
    const int64_t nb = n_cols / GPO_QK, rows = (int64_t)(sizeof buf / sizeof *buf) / nb;
    for (int64_t r = r0; r < r1; r += rows) {
        const int64_t n = r1 - r < rows ? r1 - r : rows;
        for (int64_t i = 0; i < n; i++) gpo_q8_0x16_row(buf + i * nb, W, r + i, n_cols);
        q80(y + r, ldy, buf, x, ldx, n_tok, 0, n, n_cols);
    }
}

/* Converts columns [k0, k0+kn) of rows [r, r+R) of W into the panel P (the ISA file's
 * row stride), zero-padding a column tail to a whole vector. */
typedef void (*gpo_drv_fill_fn)(int wt, float *P, const void *W, const uint8_t *scales, int64_t r,
                                int R, int64_t k0, int64_t kn, int64_t n_cols);
/* Prefetches what the panel of rows [r, r+R) needs after columns [k0, ...): called
 * before the chunk at k0 is converted. */
typedef void (*gpo_drv_prefetch_fn)(int wt, const void *W, int64_t r, int R, int64_t k0,
                                    int64_t n_cols);
/* One R x T register tile over kn columns of a panel (row stride ldp); x points at
 * column k0 of the first token, y at (first token, first row); acc at the tile's
 * first accumulator in the buffer (token j of row i at index i * tc + j).  `first`:
 * start from zero, else reload; `last`: reduce and store y, else store acc. */
typedef void (*gpo_drv_panel_tile_fn)(int R, int T, const float *P, int64_t ldp, const float *x,
                                      int64_t ldx, int64_t kn, void *acc, int first, int last,
                                      float *y, int64_t ldy);

/* The shape of the batched path: kc columns per chunk (a multiple of the vector
 * width), rp rows per panel, tc tokens per chunk, register tiles of at most mr rows x
 * nt tokens, acc_bytes per accumulator. */
struct gpo_drv_panel_shape {
    int64_t kc, rp, tc, mr, nt;
    size_t acc_bytes;
};

/* The batched path.  panel holds rp x kc floats, acc_buf rp x tc accumulators.  fill
 * NULL: W is f32 and the tiles read it in place (row stride n_cols); prefetch may be
 * NULL. */
static inline void gpo_drv_batched(const struct gpo_drv_panel_shape *s, int wt,
                                   gpo_drv_fill_fn fill, gpo_drv_prefetch_fn prefetch,
                                   gpo_drv_panel_tile_fn tile, float *panel, void *acc_buf,
                                   float *y, int64_t ldy, const void *W, const uint8_t *scales,
                                   const float *x, int64_t ldx, int64_t n_tok, int64_t r0,
                                   int64_t r1, int64_t n_cols) {
    const int64_t kc = s->kc, rp = s->rp, tc = s->tc, mr = s->mr, nt = s->nt;
    if (n_cols == 0) { /* no column chunk would write y: an empty sum is 0 */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = 0.0f;
        return;
    }
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += tc) {
        const int64_t tc1 = tc0 + tc < n_tok ? tc0 + tc : n_tok;
        for (int64_t rp0 = r0; rp0 < r1; rp0 += rp) {
            const int64_t rp1 = rp0 + rp < r1 ? rp0 + rp : r1;
            for (int64_t k0 = 0; k0 < n_cols; k0 += kc) {
                const int64_t kn = n_cols - k0 < kc ? n_cols - k0 : kc;
                const int first = k0 == 0, last = k0 + kn == n_cols;
                const float *P;
                int64_t ldp;
                if (prefetch) prefetch(wt, W, rp0, (int)(rp1 - rp0), k0, n_cols);
                if (!fill) {
                    P = (const float *)W + rp0 * n_cols + k0;
                    ldp = n_cols;
                } else {
                    fill(wt, panel, W, scales, rp0, (int)(rp1 - rp0), k0, kn, n_cols);
                    P = panel;
                    ldp = kc;
                }
                for (int64_t t = tc0; t < tc1; t += nt) {
                    const int T = (int)(tc1 - t < nt ? tc1 - t : nt);
                    for (int64_t r = rp0; r < rp1; r += mr) {
                        const int R = (int)(rp1 - r < mr ? rp1 - r : mr);
                        char *acc = (char *)acc_buf +
                                    (size_t)((r - rp0) * tc + (t - tc0)) * s->acc_bytes;
                        tile(R, T, P + (r - rp0) * ldp, ldp, x + t * ldx + k0, ldx, kn, acc,
                             first, last, y + t * ldy + r, ldy);
                    }
                }
            }
        }
    }
}

#endif /* GPO_KERNELS_DRIVERS_H */
