/* avx512.c - the AVX-512 "base" part (F, BW, VL, DQ): dense matmuls (F32, BF16, F16,
 * Q8_0 weights), the activation quantisers and attention, written with SIMDe's
 * simde_ intrinsics (simd512.h) and compiled natively and against SIMDe.
 *
 * The structure is avx2.c's, at twice the width: decode and small batches convert
 * the weights in registers (direct tiles of rows x tokens), larger batches convert a
 * panel of rows once per chunk of columns and sweep it with register tiles; the loops
 * around the tiles are the shared ones of drivers.h.
 *
 * The fixed reduction order (the determinism contract of kernels.h): every output
 * element y[t][r] owns one 16-lane f32 accumulator.  Lane l takes the columns
 * c = 16v + l for v = 0, 1, ... in increasing order, one FMA per column (starting
 * from +0); a column tail (n_cols % 16 != 0) is one more FMA on masked (zero) weight
 * and activation lanes, loaded with masks so nothing past a row is read.  The lanes
 * are then summed by gpo_mm512_reduce_add_ps, always the same tree.  Q8_0 weights
 * enter as q * f16(d), exact in f32, so they follow the same order.  Tiles only
 * interleave independent accumulators and panels only change where the converted
 * weights come from, so the bits of y[t][r] never depend on n_tok, on [r0, r1), on
 * the tile or on the path. */
#include "simd512.h"

#include "drivers.h"
#include "kernels.h"

#define AI static inline __attribute__((always_inline))

typedef simde__m512 v16f;
typedef simde__m512i v16i;

enum { WT_F32, WT_BF16, WT_F16, WT_Q8_0 };

/* Direct tiles: up to DIRECT_R rows x DIRECT_T tokens (DECODE_R rows for one token;
 * six or eight rows measured no faster for BF16 and slower for Q8_0). */
#define DIRECT_R 4
#define DIRECT_T 4
#define DECODE_R 4
/* Five or more tokens: tiles of up to 2 rows x 8 tokens (16 accumulators), so each
 * converted weight serves all of a small decode batch (two tiles of 4 converted it
 * twice).  In cache, one thread, 2880 columns: Q8_0 at 8 tokens 86 -> 106 GFLOP/s, BF16
 * 90 -> 103 (with the activations kept in registers, see GPO_K512_IN_REG). */
#define WIDE_R 2
#define WIDE_T 8
/* The token tile and the rows per block of a direct call of n_tok tokens. */
AI int direct_tmax(int64_t n_tok) { return n_tok > DIRECT_T ? WIDE_T : DIRECT_T; }
AI int64_t direct_rstep(int64_t n_tok) {
    return n_tok == 1 ? DECODE_R : n_tok > DIRECT_T ? WIDE_R : DIRECT_R;
}
/* From this many tokens on, the batched path (weights converted once into an f32
 * panel) beats converting them in registers for every tile of tokens (measured at
 * 5120 x 2880 on a loaded two-core Sapphire Rapids class VM: BF16 crosses over at 6-8
 * tokens with 4-token tiles, and the 8-token tiles keep 8 direct; Q8_0, whose direct
 * tiles decode cheaply, between 16 and 32).  F32 weights need no conversion. */
#define PANEL_MIN_TOK_F32 5
#define PANEL_MIN_TOK_16 9
#define PANEL_MIN_TOK_Q8_0 20
/* Software prefetch distance of the direct tiles, bytes ahead in each row.  Decoding
 * keeps the core busy enough that the hardware prefetcher alone falls behind: at one
 * token BF16 went from ~13.1 to ~14.1 GB/s with 1 KiB (4 KiB: no gain), Q8_0 from
 * ~7.7 (none) and ~13.0 (8 KiB) to ~14.2 GB/s with 16 KiB (32 KiB: ~13.6). */
#define DENSE_PF_BYTES 1024
#define Q80_PF_BYTES 16384

/* Prefetches base + off into L1.  The address may lie past the end of the weights
 * (prefetches never fault), so it is formed as an integer, not by pointer arithmetic. */
AI void prefetch(const void *base, size_t off) {
    __builtin_prefetch((const void *)((uintptr_t)base + off), 0, 3);
}

AI uint16_t tail_mask16(int64_t m) { return (uint16_t)((1u << m) - 1u); }

AI float hsum16(v16f v) { return gpo_mm512_reduce_add_ps(v); }

AI size_t wt_size(int wt) { return wt == WT_F32 ? 4 : 2; }

/* Sixteen weights from column c of a dense row, converted to f32. */
AI v16f wload(int wt, const void *row, int64_t c) {
    if (wt == WT_F32) return simde_mm512_loadu_ps((const float *)row + c);
    const simde__m256i h = simde_mm256_loadu_si256((const void *)((const uint16_t *)row + c));
    if (wt == WT_BF16)
        return simde_mm512_castsi512_ps(simde_mm512_slli_epi32(gpo_mm512_cvtepu16_epi32(h), 16));
    return gpo_mm512_cvtph_ps(h);
}

/* The m (1..15) weights of a row from column c, the other lanes zero. */
AI v16f wload_tail(int wt, const void *row, int64_t c, int64_t m) {
    const uint16_t k = tail_mask16(m);
    if (wt == WT_F32) return gpo_mm512_maskz_loadu_ps(k, (const float *)row + c);
    const simde__m256i h = gpo_mm256_maskz_loadu_epi16(k, (const uint16_t *)row + c);
    if (wt == WT_BF16)
        return simde_mm512_castsi512_ps(simde_mm512_slli_epi32(gpo_mm512_cvtepu16_epi32(h), 16));
    return gpo_mm512_cvtph_ps(h);
}

/* ---- Q8_0 decoding ---- */

/* One Q8_0 block to its 32 weights in column order: int8 -> int32 -> f32 times
 * f16(d).  q * f16(d) has at most 8 + 11 significant bits, so the product is exact. */
AI void q80_decode(const struct gpo_q8_0_block *blk, v16f out[2]) {
    const v16f d = gpo_mm512_cvtph_ps(simde_mm256_set1_epi16((int16_t)blk->d));
    const simde__m128i q0 = simde_mm_loadu_si128((const void *)blk->qs);
    const simde__m128i q1 = simde_mm_loadu_si128((const void *)(blk->qs + 16));
    out[0] = simde_mm512_mul_ps(gpo_mm512_cvtepi32_ps(gpo_mm512_cvtepi8_epi32(q0)), d);
    out[1] = simde_mm512_mul_ps(gpo_mm512_cvtepi32_ps(gpo_mm512_cvtepi8_epi32(q1)), d);
}

/* ---- Dense matmul: direct tiles (weights converted in registers) ---- */

AI void dense_tile(int wt, int R, int T, float *y, int64_t ldy, const void *W, const float *x,
                   int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {
    v16f acc[8][WIDE_T];
    const char *rows[8];
    const float *xs[WIDE_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
        rows[i] = (const char *)W + (size_t)(r + i) * (size_t)n_cols * wt_size(wt);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_setzero_ps();
    }
#pragma GCC unroll 8
    for (int j = 0; j < T; j++) xs[j] = x + (t0 + j) * ldx;
    int64_t c = 0;
    for (; c + 16 <= n_cols; c += 16) {
        v16f w[8];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            if (DENSE_PF_BYTES) prefetch(rows[i], (size_t)c * wt_size(wt) + DENSE_PF_BYTES);
            w[i] = wload(wt, rows[i], c);
        }
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            v16f xv = simde_mm512_loadu_ps(xs[j] + c);
            GPO_K512_IN_REG(xv);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = simde_mm512_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (c < n_cols) {
        const int64_t m = n_cols - c;
        v16f w[8];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = wload_tail(wt, rows[i], c, m);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const v16f xv = gpo_mm512_maskz_loadu_ps(tail_mask16(m), xs[j] + c);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = simde_mm512_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum16(acc[i][j]);
}

/* The tile shapes the direct driver asks for: R = 1..8 for one token (decode), R =
 * 1..4 for two to four tokens. */
#define DT(WT, a, b)                                                                        \
    case a * 16 + b: dense_tile(WT, a, b, y, ldy, W, x, ldx, t0, r, n_cols); break;
#define DENSE_TILE_FN(name, WT)                                                             \
    static void name(int R, int T, float *y, int64_t ldy, const void *W, const float *x,    \
                     int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {                  \
        switch (R * 16 + T) {                                                               \
            DT(WT, 1, 1) DT(WT, 2, 1) DT(WT, 3, 1) DT(WT, 4, 1)                             \
            DT(WT, 5, 1) DT(WT, 6, 1) DT(WT, 7, 1) DT(WT, 8, 1)                             \
            DT(WT, 1, 2) DT(WT, 2, 2) DT(WT, 3, 2) DT(WT, 4, 2)                             \
            DT(WT, 1, 3) DT(WT, 2, 3) DT(WT, 3, 3) DT(WT, 4, 3)                             \
            DT(WT, 1, 4) DT(WT, 2, 4) DT(WT, 3, 4)                                          \
            DT(WT, 1, 5) DT(WT, 2, 5) DT(WT, 1, 6) DT(WT, 2, 6)                             \
            DT(WT, 1, 7) DT(WT, 2, 7) DT(WT, 1, 8) DT(WT, 2, 8)                             \
        default: dense_tile(WT, 4, 4, y, ldy, W, x, ldx, t0, r, n_cols); break;             \
        }                                                                                   \
    }
DENSE_TILE_FN(dense_tile_f32, WT_F32)
DENSE_TILE_FN(dense_tile_bf16, WT_BF16)
DENSE_TILE_FN(dense_tile_f16, WT_F16)
#undef DENSE_TILE_FN
#undef DT

/* Q8_0 direct tile: each block of R rows is decoded in registers and used for T
 * tokens, two FMAs per block and token in column order (the panel path's order). */
AI void q80_tile(int R, int T, float *y, int64_t ldy, const void *Wv, const float *x, int64_t ldx,
                 int64_t t0, int64_t r, int64_t n_cols) {
    const struct gpo_q8_0_block *W = Wv;
    const int64_t nb = n_cols / GPO_QK;
    v16f acc[8][WIDE_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_setzero_ps();
    /* All R rows' block first, then each token's 32 activations loaded once for the R
     * rows: the core sustains fewer 64-byte loads than FMAs per cycle, so an FMA that
     * loads its own operand (one per row and token) starves the FMA ports. */
    for (int64_t b = 0; b < nb; b++) {
        v16f w[8][2];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            prefetch(W, (size_t)((r + i) * nb + b) * sizeof *W + Q80_PF_BYTES);
            q80_decode(W + (r + i) * nb + b, w[i]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const float *xb = x + (t0 + j) * ldx + b * GPO_QK;
            v16f x0 = simde_mm512_loadu_ps(xb), x1 = simde_mm512_loadu_ps(xb + 16);
            GPO_K512_IN_REG(x0);
            GPO_K512_IN_REG(x1);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                acc[i][j] = simde_mm512_fmadd_ps(w[i][0], x0, acc[i][j]);
                acc[i][j] = simde_mm512_fmadd_ps(w[i][1], x1, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum16(acc[i][j]);
}

static void q80_tile_any(int R, int T, float *y, int64_t ldy, const void *W, const float *x,
                         int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {
#define ZT(a, b)                                                                            \
    case a * 16 + b: q80_tile(a, b, y, ldy, W, x, ldx, t0, r, n_cols); break;
    switch (R * 16 + T) {
        ZT(1, 1) ZT(2, 1) ZT(3, 1) ZT(4, 1) ZT(5, 1) ZT(6, 1) ZT(7, 1) ZT(8, 1)
        ZT(1, 2) ZT(2, 2) ZT(3, 2) ZT(4, 2)
        ZT(1, 3) ZT(2, 3) ZT(3, 3) ZT(4, 3)
        ZT(1, 4) ZT(2, 4) ZT(3, 4)
        ZT(1, 5) ZT(2, 5) ZT(1, 6) ZT(2, 6) ZT(1, 7) ZT(2, 7) ZT(1, 8) ZT(2, 8)
    default: q80_tile(4, 4, y, ldy, W, x, ldx, t0, r, n_cols); break;
    }
#undef ZT
}

/* ---- Batched path: column-blocked panels ---- */

/* A panel holds RP rows x KC columns of f32 weights (converted once per token chunk,
 * 16 KiB) and stays in L1 together with the NT x KC activations of a token tile; MR x
 * NT register tiles (16 accumulators of the 32 registers) sweep it.  KC = 512 measured
 * ahead of 256 (fewer tile calls and accumulator round trips per FMA). */
#define KC 512
#define RP 8
#define TC 64
#define MR 4
#define NT 4

AI void panel_tile(int R, int T, const float *P, int64_t ldp, const float *x, int64_t ldx,
                   int64_t kn, void *accv, int first, int last, float *y, int64_t ldy) {
    v16f *acc_buf = accv;
    v16f acc[MR][NT];
    const float *xs[NT];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++)
            acc[i][j] = first ? simde_mm512_setzero_ps() : acc_buf[i * TC + j];
#pragma GCC unroll 8
    for (int j = 0; j < T; j++) xs[j] = x + j * ldx;
    int64_t c = 0;
    for (; c + 16 <= kn; c += 16) {
        v16f w[MR];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = simde_mm512_loadu_ps(P + i * ldp + c);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const v16f xv = simde_mm512_loadu_ps(xs[j] + c);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = simde_mm512_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (c < kn) {
        const uint16_t k = tail_mask16(kn - c);
        v16f w[MR];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = gpo_mm512_maskz_loadu_ps(k, P + i * ldp + c);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const v16f xv = gpo_mm512_maskz_loadu_ps(k, xs[j] + c);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = simde_mm512_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (last) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) y[j * ldy + i] = hsum16(acc[i][j]);
    } else {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) acc_buf[i * TC + j] = acc[i][j];
    }
}

static void panel_tile_any(int R, int T, const float *P, int64_t ldp, const float *x, int64_t ldx,
                           int64_t kn, void *acc, int first, int last, float *y, int64_t ldy) {
#define PT(a, b)                                                                            \
    case a * 16 + b: panel_tile(a, b, P, ldp, x, ldx, kn, acc, first, last, y, ldy); break;
    switch (R * 16 + T) {
        PT(1, 1) PT(1, 2) PT(1, 3) PT(1, 4)
        PT(2, 1) PT(2, 2) PT(2, 3) PT(2, 4)
        PT(3, 1) PT(3, 2) PT(3, 3) PT(3, 4)
        PT(4, 1) PT(4, 2) PT(4, 3)
    default: panel_tile(MR, NT, P, ldp, x, ldx, kn, acc, first, last, y, ldy); break;
    }
#undef PT
}

/* Bytes of the first c columns of a row (c a multiple of 32 for Q8_0). */
AI size_t col_bytes(int wt, int64_t c) {
    if (wt == WT_Q8_0) return (size_t)(c / GPO_QK) * sizeof(struct gpo_q8_0_block);
    return (size_t)c * wt_size(wt);
}

/* Converts columns [k0, k0+kn) of rows [r, r+R) into the panel (row stride KC),
 * zero-padding a column tail to a whole vector. */
static void fill_panel(int wt, float *P, const void *W, const uint8_t *scales, int64_t r, int R,
                       int64_t k0, int64_t kn, int64_t n_cols) {
    (void)scales;
    for (int i = 0; i < R; i++) {
        float *p = P + i * KC;
        if (wt == WT_Q8_0) {
            const struct gpo_q8_0_block *row =
                (const struct gpo_q8_0_block *)W + (r + i) * (n_cols / GPO_QK);
            for (int64_t b = k0 / GPO_QK; b < (k0 + kn) / GPO_QK; b++) {
                v16f w[2];
                q80_decode(row + b, w);
                simde_mm512_storeu_ps(p + b * GPO_QK - k0, w[0]);
                simde_mm512_storeu_ps(p + b * GPO_QK - k0 + 16, w[1]);
            }
            continue;
        }
        const void *row = (const char *)W + (size_t)(r + i) * (size_t)n_cols * wt_size(wt);
        int64_t c = 0;
        if (wt == WT_BF16) {
            for (; c + 16 <= kn; c += 16) simde_mm512_storeu_ps(p + c, wload(WT_BF16, row, k0 + c));
            if (c < kn) simde_mm512_storeu_ps(p + c, wload_tail(WT_BF16, row, k0 + c, kn - c));
        } else if (wt == WT_F16) {
            for (; c + 16 <= kn; c += 16) simde_mm512_storeu_ps(p + c, wload(WT_F16, row, k0 + c));
            if (c < kn) simde_mm512_storeu_ps(p + c, wload_tail(WT_F16, row, k0 + c, kn - c));
        } else {
            for (; c + 16 <= kn; c += 16) simde_mm512_storeu_ps(p + c, wload(WT_F32, row, k0 + c));
            if (c < kn) simde_mm512_storeu_ps(p + c, wload_tail(WT_F32, row, k0 + c, kn - c));
        }
    }
}

/* The next chunk of each panel row (or the rows of the next panel after the last
 * chunk), one cache line at a time: a chunk is too short a run for the hardware
 * prefetcher to pick up. */
static void prefetch_next_chunk(int wt, const void *W, int64_t r, int R, int64_t k0,
                                int64_t n_cols) {
    const int64_t k1 = k0 + KC < n_cols ? k0 + KC : 0;
    const int64_t rr = k0 + KC < n_cols ? r : r + RP;
    const int64_t kn = n_cols - k1 < KC ? n_cols - k1 : KC;
    const size_t len = col_bytes(wt, kn);
    for (int i = 0; i < R; i++) {
        /* Q8_0 rows need not start on a cache line: cover the lines the bytes touch. */
        const size_t base = (size_t)(rr + i) * col_bytes(wt, n_cols) + col_bytes(wt, k1);
        const size_t lead = ((uintptr_t)W + base) & 63;
        for (size_t off = 0; off < len + lead; off += 64) prefetch(W, base - lead + off);
    }
}

static const struct gpo_drv_panel_shape panel_shape = {KC, RP, TC, MR, NT, sizeof(v16f)};

static void matmul_batched(int wt, float *y, int64_t ldy, const void *W, const float *x,
                           int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    float panel[RP * KC] __attribute__((aligned(64)));
    v16f acc_buf[RP * TC];
    gpo_drv_batched(&panel_shape, wt, wt == WT_F32 ? NULL : fill_panel, prefetch_next_chunk,
                    panel_tile_any, panel, acc_buf, y, ldy, W, NULL, x, ldx, n_tok, r0, r1,
                    n_cols);
}

/* ---- The dense matmul slots ---- */

static void matmul_f32_avx512(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                              int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_F32)
        matmul_batched(WT_F32, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        gpo_drv_direct(dense_tile_f32, direct_rstep(n_tok), direct_tmax(n_tok), 1, y, ldy, W,
                       x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_bf16_avx512(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                               int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_16)
        matmul_batched(WT_BF16, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        gpo_drv_direct(dense_tile_bf16, direct_rstep(n_tok), direct_tmax(n_tok), 1, y, ldy, W,
                       x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_f16_avx512(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                              int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_16)
        matmul_batched(WT_F16, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        gpo_drv_direct(dense_tile_f16, direct_rstep(n_tok), direct_tmax(n_tok), 1, y, ldy, W,
                       x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_q8_0_avx512(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                               int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_Q8_0)
        matmul_batched(WT_Q8_0, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        gpo_drv_direct(q80_tile_any, direct_rstep(n_tok), direct_tmax(n_tok), 1, y, ldy, W, x,
                       ldx, n_tok, r0, r1, n_cols);
}

static void matmul_q8_0x16_avx512(float *y, int64_t ldy, const void *W, const float *x,
                                  int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                  int64_t n_cols) {
    gpo_drv_q8_0x16(matmul_q8_0_avx512, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
}

/* ---- Activation quantisers ----
 * The same IEEE operations as the reference, so the bytes are identical: amax is
 * exact whatever the order of the max, d and 1/d are the same divisions, x * id
 * rounds the same, cvtps rounds to nearest even like lrintf in the default rounding
 * mode, and the values are within the saturating packs' range. */

AI float block_amax(v16f v0, v16f v1) {
    const v16i absmask = simde_mm512_set1_epi32(0x7fffffff);
    const v16f a0 = simde_mm512_castsi512_ps(
        simde_mm512_and_si512(simde_mm512_castps_si512(v0), absmask));
    const v16f a1 = simde_mm512_castsi512_ps(
        simde_mm512_and_si512(simde_mm512_castps_si512(v1), absmask));
    return gpo_mm512_reduce_max_ps(simde_mm512_max_ps(a0, a1));
}

static void quantize_q8_avx512(struct gpo_q8_block *out, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        const v16f v0 = simde_mm512_loadu_ps(xb), v1 = simde_mm512_loadu_ps(xb + 16);
        const float amax = block_amax(v0, v1);
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        const v16f vid = simde_mm512_set1_ps(id);
        const v16i i0 = gpo_mm512_cvtps_epi32(simde_mm512_mul_ps(v0, vid));
        const v16i i1 = gpo_mm512_cvtps_epi32(simde_mm512_mul_ps(v1, vid));
        simde_mm_storeu_si128((void *)out[b].qs, gpo_mm512_cvtsepi32_epi8(i0));
        simde_mm_storeu_si128((void *)(out[b].qs + 16), gpo_mm512_cvtsepi32_epi8(i1));
    }
}

static void quantize_q16_avx512(struct gpo_q16_block *out, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        const v16f v0 = simde_mm512_loadu_ps(xb), v1 = simde_mm512_loadu_ps(xb + 16);
        const float amax = block_amax(v0, v1);
        const float d = amax / 32767.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        const v16f vid = simde_mm512_set1_ps(id);
        const v16i i0 = gpo_mm512_cvtps_epi32(simde_mm512_mul_ps(v0, vid));
        const v16i i1 = gpo_mm512_cvtps_epi32(simde_mm512_mul_ps(v1, vid));
        simde_mm256_storeu_si256((void *)out[b].qs, gpo_mm512_cvtsepi32_epi16(i0));
        simde_mm256_storeu_si256((void *)(out[b].qs + 16), gpo_mm512_cvtsepi32_epi16(i1));
    }
}

/* ---- Attention ---- */

/* Scores of K keys: one accumulator per key over head_dim in vectors of sixteen, a
 * masked tail, the fixed horizontal sum, times scale.  Tiles only interleave keys, so
 * a key's score does not depend on n_keys or on its position in the tile. */
AI void scores_tile(int K, float *s, const float *q, const float *k, int64_t ldk, int64_t j,
                    int64_t head_dim, float scale) {
    v16f acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < K; i++) acc[i] = simde_mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= head_dim; d += 16) {
        const v16f qv = simde_mm512_loadu_ps(q + d);
#pragma GCC unroll 8
        for (int i = 0; i < K; i++)
            acc[i] = simde_mm512_fmadd_ps(qv, simde_mm512_loadu_ps(k + (j + i) * ldk + d), acc[i]);
    }
    if (d < head_dim) {
        const uint16_t m = tail_mask16(head_dim - d);
        const v16f qv = gpo_mm512_maskz_loadu_ps(m, q + d);
#pragma GCC unroll 8
        for (int i = 0; i < K; i++)
            acc[i] = simde_mm512_fmadd_ps(qv, gpo_mm512_maskz_loadu_ps(m, k + (j + i) * ldk + d),
                                          acc[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < K; i++) s[j + i] = hsum16(acc[i]) * scale;
}

static void attn_scores_avx512(float *s, const float *q, const float *k, int64_t ldk,
                               int64_t n_keys, int64_t head_dim, float scale) {
    int64_t j = 0;
    for (; j + 8 <= n_keys; j += 8) scores_tile(8, s, q, k, ldk, j, head_dim, scale);
    for (; j + 4 <= n_keys; j += 4) scores_tile(4, s, q, k, ldk, j, head_dim, scale);
    for (; j < n_keys; j++) scores_tile(1, s, q, k, ldk, j, head_dim, scale);
}

/* The horizontal sums of sixteen vectors at once: lane i of the result is
 * hsum16(a[i]), the same additions of the same pairs (halves of 256, 128, 64 and 32
 * bits, as gpo_mm512_reduce_add_ps adds them), four shuffles and an add per step
 * for every two vectors instead of a reduction each. */
AI v16f hsum16x16(const v16f a[16]) {
    v16f b[8], c[4], d[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* [a.lo256 + a.hi256 | a'.lo256 + a'.hi256] */
        b[i] = simde_mm512_add_ps(simde_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                                  simde_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* 128-bit lane L: the four sums of a[4i + L] */
        c[i] = simde_mm512_add_ps(simde_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                                  simde_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* lane L: two sums of a[8i + L], two of a[8i + 4 + L] */
        d[i] = simde_mm512_add_ps(simde_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                                  simde_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xee));
    /* element 4L + m: the sum of a[4m + L]; then back in order */
    const v16f e = simde_mm512_add_ps(simde_mm512_shuffle_ps(d[0], d[1], 0x88),
                                      simde_mm512_shuffle_ps(d[0], d[1], 0xdd));
    const simde__m512i idx =
        simde_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return simde_mm512_permutexvar_ps(idx, e);
}

/* Scores of R queries against nk <= 16 / R keys from key j: accumulator r * K + i for
 * query r and key j + i, over head_dim exactly as scores_tile (the same FMAs in the
 * same order, the same masked tail), so every score has scores_tile's bits. */
AI void scores_rows_tile(int R, float *s, int64_t lds, const float *q, int64_t ldq, const float *k,
                         int64_t ldk, int64_t j, int64_t nk, int64_t head_dim, float scale) {
    const int K = 16 / R;
    v16f acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = simde_mm512_setzero_ps();
    int64_t d = 0;
    for (; d < head_dim; d += 16) {
        const uint16_t m = head_dim - d >= 16 ? 0xffffu : tail_mask16(head_dim - d);
        v16f qv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) qv[r] = gpo_mm512_maskz_loadu_ps(m, q + r * ldq + d);
#pragma GCC unroll 16
        for (int i = 0; i < K; i++) {
            if (i >= nk) break;
            const v16f kv = gpo_mm512_maskz_loadu_ps(m, k + (j + i) * ldk + d);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r * K + i] = simde_mm512_fmadd_ps(qv[r], kv, acc[r * K + i]);
        }
    }
    float out[16];
    simde_mm512_storeu_ps(out, simde_mm512_mul_ps(hsum16x16(acc), simde_mm512_set1_ps(scale)));
    for (int r = 0; r < R; r++)
        for (int64_t i = 0; i < nk; i++) s[r * lds + j + i] = out[r * K + i];
}

/* Up to four queries at a time against 16 / R keys at a time: a key's sixteen floats
 * are loaded once for the R queries. */
static void attn_scores_rows_avx512(float *s, int64_t lds, const float *q, int64_t ldq, int64_t n_q,
                                    const float *k, int64_t ldk, int64_t n_keys, int64_t head_dim,
                                    float scale) {
    for (int64_t r0 = 0; r0 < n_q; r0 += 4) {
        const int R = n_q - r0 >= 4 ? 4 : (int)(n_q - r0), K = 16 / R;
        float *sr = s + r0 * lds;
        const float *qr = q + r0 * ldq;
        for (int64_t j = 0; j < n_keys; j += K) {
            const int64_t nk = n_keys - j < K ? n_keys - j : K;
            switch (R) {
            case 1: scores_rows_tile(1, sr, lds, qr, ldq, k, ldk, j, nk, head_dim, scale); break;
            case 2: scores_rows_tile(2, sr, lds, qr, ldq, k, ldk, j, nk, head_dim, scale); break;
            case 3: scores_rows_tile(3, sr, lds, qr, ldq, k, ldk, j, nk, head_dim, scale); break;
            default: scores_rows_tile(4, sr, lds, qr, ldq, k, ldk, j, nk, head_dim, scale); break;
            }
        }
    }
}

/* out[d] += p[j] * v_j[d] in increasing j with one FMA each, so splitting the keys
 * over several calls gives the same bits.  NV vectors of the head (up to 128 floats)
 * are held in registers across all keys; the last one is masked to the m (1..16)
 * dimensions left. */
AI void accum_chunk(int NV, float *out, const float *p, const float *v, int64_t ldv,
                    int64_t n_keys, int64_t m) {
    const uint16_t k = m >= 16 ? 0xffffu : tail_mask16(m);
    v16f o[8];
#pragma GCC unroll 8
    for (int i = 0; i < NV - 1; i++) o[i] = simde_mm512_loadu_ps(out + 16 * i);
    o[NV - 1] = gpo_mm512_maskz_loadu_ps(k, out + 16 * (NV - 1));
    for (int64_t j = 0; j < n_keys; j++) {
        const v16f pj = simde_mm512_set1_ps(p[j]);
        const float *vj = v + j * ldv;
#pragma GCC unroll 8
        for (int i = 0; i < NV - 1; i++)
            o[i] = simde_mm512_fmadd_ps(pj, simde_mm512_loadu_ps(vj + 16 * i), o[i]);
        o[NV - 1] = simde_mm512_fmadd_ps(pj, gpo_mm512_maskz_loadu_ps(k, vj + 16 * (NV - 1)),
                                         o[NV - 1]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < NV - 1; i++) simde_mm512_storeu_ps(out + 16 * i, o[i]);
    gpo_mm512_mask_storeu_ps(out + 16 * (NV - 1), k, o[NV - 1]);
}

static void attn_accum_avx512(float *out, const float *p, const float *v, int64_t ldv,
                              int64_t n_keys, int64_t head_dim) {
    for (int64_t d0 = 0; d0 < head_dim; d0 += 128) {
        const int64_t left = head_dim - d0;
        const int nv = left >= 128 ? 8 : (int)((left + 15) / 16);
        const int64_t m = left - 16 * (nv - 1); /* dimensions in the last vector */
        float *o = out + d0;
        const float *vv = v + d0;
        switch (nv) {
        case 1: accum_chunk(1, o, p, vv, ldv, n_keys, m); break;
        case 2: accum_chunk(2, o, p, vv, ldv, n_keys, m); break;
        case 3: accum_chunk(3, o, p, vv, ldv, n_keys, m); break;
        case 4: accum_chunk(4, o, p, vv, ldv, n_keys, m); break;
        case 5: accum_chunk(5, o, p, vv, ldv, n_keys, m); break;
        case 6: accum_chunk(6, o, p, vv, ldv, n_keys, m); break;
        case 7: accum_chunk(7, o, p, vv, ldv, n_keys, m); break;
        default: accum_chunk(8, o, p, vv, ldv, n_keys, m); break;
        }
    }
}

/* ---- The clamped SwiGLU (the fast path's; spec 2.7) ---- */

/* 2^k for k in [-126, 127], from its exponent bits. */
AI v16f pow2i16(v16i k) {
    return simde_mm512_castsi512_ps(
        simde_mm512_slli_epi32(simde_mm512_add_epi32(k, simde_mm512_set1_epi32(127)), 23));
}

/* e^x as 2^n * e^r: n = x log2(e) rounded to nearest (the 1.5 * 2^23 trick), r = x - n ln 2
 * in two steps (Cody-Waite: ln 2's high part has 12 bits, so n * ln2_hi is exact), e^r by
 * its Taylor polynomial to degree 7 (|r| <= ln(2)/2: truncation below 2^-27 relative),
 * times 2^n as two powers of two with normal exponents (n1 = n / 2 rounded, n - n1), so the
 * product overflows to +inf and underflows through the subnormals to 0 as e^x does
 * (SIMDe's vscalefps forms 2^n first and overflows at n = 128).  x is first clamped to
 * [-104, 89] (e^x is 0 or +inf in float beyond), so +-inf inputs come out as e^x's
 * limits.  The SwiGLU on it stays within 4 ulp of the reference's (tested; 2 seen). */
AI v16f exp16(v16f x) {
    x = simde_mm512_min_ps(simde_mm512_max_ps(x, simde_mm512_set1_ps(GPO_EXP_LO)),
                           simde_mm512_set1_ps(GPO_EXP_HI));
    const v16f magic = simde_mm512_set1_ps(GPO_EXP_MAGIC);
    const v16f n = simde_mm512_sub_ps(
        simde_mm512_fmadd_ps(x, simde_mm512_set1_ps(GPO_EXP_LOG2E), magic), magic);
    v16f r = simde_mm512_fnmadd_ps(n, simde_mm512_set1_ps(GPO_EXP_LN2_HI), x);
    r = simde_mm512_fnmadd_ps(n, simde_mm512_set1_ps(GPO_EXP_LN2_LO), r);
    v16f p = simde_mm512_set1_ps(1.0f / 5040.0f);
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f / 720.0f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f / 120.0f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f / 24.0f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f / 6.0f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(0.5f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f));
    p = simde_mm512_fmadd_ps(p, r, simde_mm512_set1_ps(1.0f));
    /* n1 = n / 2 rounded (exact in float), n2 = n - n1 */
    const v16f n1 = simde_mm512_sub_ps(
        simde_mm512_add_ps(simde_mm512_mul_ps(n, simde_mm512_set1_ps(0.5f)), magic), magic);
    const v16f n2 = simde_mm512_sub_ps(n, n1);
    return simde_mm512_mul_ps(simde_mm512_mul_ps(p, pow2i16(gpo_mm512_cvtps_epi32(n1))),
                              pow2i16(gpo_mm512_cvtps_epi32(n2)));
}

/* 16 pairs: the reference's operations in its order (clamps, -alpha * g, 1 + e, the
 * division, the product), its expf replaced by exp16.  min/max return their second
 * operand for a NaN, as fminf/fmaxf return the number. */
AI v16f swiglu16(v16f g, v16f l, v16f alpha_neg, v16f limit) {
    const v16f one = simde_mm512_set1_ps(1.0f);
    g = simde_mm512_min_ps(g, limit);
    l = simde_mm512_min_ps(simde_mm512_max_ps(l, simde_mm512_sub_ps(simde_mm512_setzero_ps(), limit)),
                           limit);
    const v16f e = exp16(simde_mm512_mul_ps(alpha_neg, g));
    return simde_mm512_mul_ps(simde_mm512_div_ps(g, simde_mm512_add_ps(one, e)),
                              simde_mm512_add_ps(l, one));
}

static void swiglu_avx512(float *out, const float *gate, const float *lin, int64_t step, int64_t n,
                          float alpha, float limit) {
    if (step != 1 && !(step == 2 && lin == gate + 1)) {
        gpo_swiglu_ref(out, gate, lin, step, n, alpha, limit);
        return;
    }
    const v16f an = simde_mm512_set1_ps(-alpha), lim = simde_mm512_set1_ps(limit);
    int64_t u = 0;
    if (step == 1) {
        for (; u + 16 <= n; u += 16)
            simde_mm512_storeu_ps(out + u, swiglu16(simde_mm512_loadu_ps(gate + u),
                                                    simde_mm512_loadu_ps(lin + u), an, lim));
        if (u < n) {
            const uint16_t m = (uint16_t)((1u << (n - u)) - 1u);
            gpo_mm512_mask_storeu_ps(out + u, m, swiglu16(gpo_mm512_maskz_loadu_ps(m, gate + u),
                                                          gpo_mm512_maskz_loadu_ps(m, lin + u),
                                                          an, lim));
        }
        return;
    }
    /* interleaved: gate[2u], lin[2u] = gate[2u + 1] */
    const v16i ev = simde_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const v16i od = simde_mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (; u < n; u += 16) {
        const int64_t k = n - u < 16 ? n - u : 16;
        const uint16_t m0 = (uint16_t)(k >= 8 ? 0xffffu : (1u << (2 * k)) - 1u);
        const uint16_t m1 = (uint16_t)(k <= 8 ? 0u : k >= 16 ? 0xffffu : (1u << (2 * (k - 8))) - 1u);
        const v16f a = gpo_mm512_maskz_loadu_ps(m0, gate + 2 * u);
        const v16f b = gpo_mm512_maskz_loadu_ps(m1, gate + 2 * u + 16);
        const v16f y = swiglu16(simde_mm512_permutex2var_ps(a, ev, b),
                                simde_mm512_permutex2var_ps(a, od, b), an, lim);
        gpo_mm512_mask_storeu_ps(out + u, (uint16_t)(k >= 16 ? 0xffffu : (1u << k) - 1u), y);
    }
}

void GPO_K512(fill_base)(struct gpo_kernels *t) {
    t->matmul[GPO_DT_F32] = matmul_f32_avx512;
    t->matmul[GPO_DT_BF16] = matmul_bf16_avx512;
    t->matmul[GPO_DT_F16] = matmul_f16_avx512;
    t->matmul[GPO_DT_Q8_0] = matmul_q8_0_avx512;
    t->matmul[GPO_DT_Q8_0X16] = matmul_q8_0x16_avx512;
    t->quantize_q8 = quantize_q8_avx512;
    t->quantize_q16 = quantize_q16_avx512;
    t->attn_scores = attn_scores_avx512;
    t->attn_scores_rows = attn_scores_rows_avx512;
    t->attn_accum = attn_accum_avx512;
    t->swiglu = swiglu_avx512;
}
