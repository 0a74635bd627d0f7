/* avx512_bf16.c - the AVX-512 "bf16" part (F, BW, VL, DQ, BF16): the fast path's BF16
 * dense matmul (matmul_bf16_dot), activations rounded to bf16 once per call and
 * multiplied with vdpbf16ps, two products per f32 lane and instruction, with the
 * weights used as stored (no conversion).  Written with SIMDe's simde_ intrinsics
 * (simd512.h) and compiled natively and against SIMDe.
 *
 * The fixed reduction order (kernels.h): every output element owns a 16-lane f32
 * accumulator; lane l takes the column pairs (32v + 2l, 32v + 2l + 1) for v = 0, 1,
 * ... in increasing order, one vdpbf16ps step each (a column tail is one more step on
 * zero-padded weights and activations), and the lanes are summed by
 * gpo_mm512_reduce_add_ps.  Tiles only interleave independent accumulators, so the
 * bits of y[t][r] depend on neither n_tok nor [r0, r1).  The reference twin
 * (gpo_matmul_bf16_dot_ref) rounds the activations the same way; the products of two
 * bf16 values are exact in f32, so the two differ only in the order of the f32 sums
 * (and in inputs below 2^-126, which the instruction treats as zero).
 *
 * Measured against the f32-activation BF16 kernel of the base part (bench_kernels, one
 * thread, 20b shapes, loaded two-core VM): one token 13-19% more weight bytes per
 * second (the weights need no conversion), 2-8 tokens about even to 15% ahead, 512
 * tokens about 20% behind its converted-panel path: vdpbf16ps retires one per cycle
 * here, the same FLOPs as two FMAs, so the conversion it saves is all it gains. */
#include <stdlib.h>

#include "simd512.h"

#include "kernels.h"

#define AI GPO_K512_TILE_AI
#define UNROLL(n) GPO_K512_UNROLL(n)

typedef simde__m512 vf;
typedef simde__m512i vi;

/* Register tiles of up to BR rows x BT tokens: 24 accumulators, as vdpbf16ps's
 * latency needs (measured here: 12 independent chains reach 0.93 G instructions/s, 24
 * reach 2.6 G/s, one per cycle, the f32 FMA rate in FLOPs). */
#define BR 8
#define BT 3
/* Batches are cut into chunks of tokens whose rounded activations (up to XB_BYTES)
 * stay in L2, and the columns into chunks of KC, so a block of BR rows (8 KiB of
 * weights per chunk) stays in L1 while every token tile of the chunk sweeps it; the
 * accumulators wait in a buffer between column chunks (storing and reloading keeps
 * their bits).  Decode-sized calls take all columns at once and use the stack. */
#define XB_BYTES (512 * 1024)
#define XB_STACK_BYTES (64 * 1024)
#define KC 512
/* Software prefetch distance of each weight row (bytes ahead), as the f32 path's
 * BF16 tiles use. */
#define PF_BYTES 1024

AI void prefetch(const void *base, size_t off) {
    __builtin_prefetch((const void *)((uintptr_t)base + off), 0, 3);
}

AI uint16_t mask16(int64_t m) { return m >= 16 ? 0xffffu : (uint16_t)((1u << m) - 1u); }
AI uint32_t mask32(int64_t m) { return m >= 32 ? 0xffffffffu : (uint32_t)((1ull << m) - 1u); }

/* One token's n_cols activations rounded to bf16 into xb, zero-padded to a multiple
 * of 32. */
static void round_x(uint16_t *xb, const float *x, int64_t n_cols) {
    for (int64_t c = 0; c < n_cols; c += 32) {
        const int64_t m = n_cols - c;
        const vf lo = gpo_mm512_maskz_loadu_ps(mask16(m), x + c);
        const vf hi = m > 16 ? gpo_mm512_maskz_loadu_ps(mask16(m - 16), x + c + 16)
                             : simde_mm512_setzero_ps();
        simde_mm512_storeu_si512((void *)(xb + c),
                                 gpo_mm512_castpbh_si512(gpo_mm512_cvtne2ps_pbh(hi, lo)));
    }
}

/* The R x T tile of rows r.. and tokens t0.. over columns [k0, k1): token j's rounded
 * activations at xb + j * ldb.  `first`: start from zero, else reload from acc_buf
 * (row i, token j at i * ldacc + j); `last` (k1 = n_cols): reduce and store y, else
 * store to acc_buf. */
AI void dot_tile(int R, int T, float *y, int64_t ldy, const uint16_t *W, const uint16_t *xb,
                 int64_t ldb, int64_t t0, int64_t r, int64_t n_cols, int64_t k0, int64_t k1,
                 vf *acc_buf, int64_t ldacc) {
    const int first = k0 == 0, last = k1 == n_cols;
    vf acc[BR][BT];
    const uint16_t *rows[BR];
UNROLL(8)
    for (int i = 0; i < R; i++) {
        rows[i] = W + (r + i) * n_cols;
UNROLL(4)
        for (int j = 0; j < T; j++)
            acc[i][j] = first ? simde_mm512_setzero_ps() : acc_buf[i * ldacc + j];
    }
    int64_t c = k0;
    for (; c + 32 <= k1; c += 32) {
        simde__m512bh xv[BT];
UNROLL(4)
        for (int j = 0; j < T; j++)
            xv[j] = gpo_mm512_castsi512_pbh(
                simde_mm512_loadu_si512((const void *)(xb + j * ldb + c)));
UNROLL(8)
        for (int i = 0; i < R; i++) {
            prefetch(rows[i], (size_t)c * 2 + PF_BYTES);
            const simde__m512bh w =
                gpo_mm512_castsi512_pbh(simde_mm512_loadu_si512((const void *)(rows[i] + c)));
UNROLL(4)
            for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_dpbf16_ps(acc[i][j], w, xv[j]);
        }
    }
    if (c < k1) { /* the row's tail: weights loaded with a mask, activations zero-padded */
        simde__m512bh xv[BT];
UNROLL(4)
        for (int j = 0; j < T; j++)
            xv[j] = gpo_mm512_castsi512_pbh(
                simde_mm512_loadu_si512((const void *)(xb + j * ldb + c)));
UNROLL(8)
        for (int i = 0; i < R; i++) {
            const simde__m512bh w =
                gpo_mm512_castsi512_pbh(gpo_mm512_maskz_loadu_epi16(mask32(k1 - c), rows[i] + c));
UNROLL(4)
            for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_dpbf16_ps(acc[i][j], w, xv[j]);
        }
    }
UNROLL(8)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) {
            if (last) y[(t0 + j) * ldy + r + i] = gpo_mm512_reduce_add_ps(acc[i][j]);
            else acc_buf[i * ldacc + j] = acc[i][j];
        }
}

static void dot_tile_any(int R, int T, float *y, int64_t ldy, const uint16_t *W,
                         const uint16_t *xb, int64_t ldb, int64_t t0, int64_t r, int64_t n_cols,
                         int64_t k0, int64_t k1, vf *acc_buf, int64_t ldacc) {
#define BTL(a, b)                                                                           \
    case a * 4 + b:                                                                         \
        dot_tile(a, b, y, ldy, W, xb, ldb, t0, r, n_cols, k0, k1, acc_buf, ldacc);          \
        break;
    switch (R * 4 + T) {
        BTL(1, 1) BTL(2, 1) BTL(3, 1) BTL(4, 1) BTL(5, 1) BTL(6, 1) BTL(7, 1) BTL(8, 1)
        BTL(1, 2) BTL(2, 2) BTL(3, 2) BTL(4, 2) BTL(5, 2) BTL(6, 2) BTL(7, 2) BTL(8, 2)
        BTL(1, 3) BTL(2, 3) BTL(3, 3) BTL(4, 3) BTL(5, 3) BTL(6, 3) BTL(7, 3)
    default: dot_tile(BR, BT, y, ldy, W, xb, ldb, t0, r, n_cols, k0, k1, acc_buf, ldacc); break;
    }
#undef BTL
}

/* The size of the next tile when n tokens remain (balanced: 5 make 3 + 2). */
AI int tile_tokens(int64_t n, int tmax) {
    const int64_t tiles = (n + tmax - 1) / tmax;
    return (int)((n + tiles - 1) / tiles);
}

static void matmul_bf16_dot_512(float *y, int64_t ldy, const void *W, const float *x,
                                int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                int64_t n_cols) {
    if (r1 <= r0 || n_tok <= 0) return;
    const int64_t ldb = (n_cols + 31) / 32 * 32, per_tok = ldb * 2;
    if (ldb == 0) { /* an empty sum is 0 */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = 0.0f;
        return;
    }
    /* One token tile: all columns at once, activations on the stack when they fit. */
    uint16_t stack_buf[XB_STACK_BYTES / 2] __attribute__((aligned(64)));
    uint16_t *xb = stack_buf;
    void *heap = NULL;
    vf *acc_buf = NULL;
    int64_t tc = n_tok, kc = n_cols;
    if (n_tok > BT || per_tok * n_tok > XB_STACK_BYTES) {
        tc = XB_BYTES / per_tok;
        tc = tc < 1 ? 1 : tc > n_tok ? n_tok : tc;
        kc = KC;
        const size_t xbytes = (size_t)(tc * per_tok + 63) / 64 * 64;
        if (posix_memalign(&heap, 64, xbytes + (size_t)(BR * tc) * sizeof(vf)) != 0) {
            /* Out of memory: the reference gives the same sums in another order. */
            gpo_matmul_bf16_dot_ref(y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
            return;
        }
        xb = heap;
        acc_buf = (vf *)((char *)heap + xbytes);
    }
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += tc) {
        const int64_t tc1 = tc0 + tc < n_tok ? tc0 + tc : n_tok;
        for (int64_t t = tc0; t < tc1; t++) round_x(xb + (t - tc0) * ldb, x + t * ldx, n_cols);
        for (int64_t r = r0; r < r1; r += BR) {
            const int R = (int)(r1 - r < BR ? r1 - r : BR);
            for (int64_t k0 = 0; k0 < n_cols; k0 += kc) {
                const int64_t k1 = n_cols - k0 < kc ? n_cols : k0 + kc;
                for (int64_t t = tc0, T; t < tc1; t += T) {
                    T = tile_tokens(tc1 - t, BT);
                    dot_tile_any(R, (int)T, y, ldy, W, xb + (t - tc0) * ldb, ldb, t, r, n_cols,
                                 k0, k1, acc_buf ? acc_buf + (t - tc0) : NULL, tc);
                }
            }
        }
    }
    free(heap);
}

void GPO_K512(fill_bf16)(struct gpo_kernels *t) { t->matmul_bf16_dot = matmul_bf16_dot_512; }
