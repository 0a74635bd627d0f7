/* avx2.c - AVX2/FMA/F16C variants of the kernels (compiled with -mavx2 -mfma -mf16c;
 * dispatch.c only hands this table out when the CPU has AVX2 and FMA).  Decode (one
 * token) streams several weight rows at once, converting in registers; batches
 * convert a panel of rows once per chunk of columns (into f32, or into int16 for the
 * MXFP4 x int16 path) and sweep it with register tiles of rows x tokens, so each
 * loaded weight serves many tokens.  The MXFP4 kernels exist for both block layouts
 * (the safetensors one and GGML's), compiled from the same code.  The loops around the
 * dense tiles (direct and panel paths) are the shared ones of drivers.h. */
#include <immintrin.h>
#include <string.h>

#include "drivers.h"
#include "kernels.h"

/* The fixed reduction order (the determinism contract of kernels.h).
 *
 * Every output element y[t][r] owns one 8-lane f32 accumulator.  Lane l takes the
 * columns c = 8v + l for v = 0, 1, ... in increasing order, one FMA per column
 * (acc = fma(w, x, acc), starting from +0).  A column tail (n_cols % 8 != 0) is one
 * more FMA on a zero-padded weight vector and a masked activation vector.  The eight
 * lanes are then summed by hsum8(), always with the same tree.  MXFP4 weights enter
 * as fp4 * 2^(e-127) and Q8_0 weights as q * f16(d), both exact in f32, so they follow
 * the same order.  (The integer paths, MXFP4 x int8 and x int16 activations, fix
 * their own per-block order; see their sections.)
 *
 * Register tiles of R rows x T tokens only interleave independent accumulators;
 * panels only change where the converted weights come from (registers or an f32
 * buffer, the values are identical).  So the bits of y[t][r] never depend on n_tok,
 * on [r0, r1), on the tile a pair lands in, or on the path chosen for the batch. */

#define AI static inline __attribute__((always_inline))

/* Weight types of the shared tile and panel code: dense (converted per vector of
 * eight) and blocked (decoded per block of 32: MXFP4 in either layout, Q8_0). */
enum { WT_F32, WT_BF16, WT_F16, WT_MXFP4, WT_MXFP4_GG, WT_Q8_0 };

/* Rows x tokens of the register tiles.  The direct path (weights converted in
 * registers, DIRECT_R x DIRECT_T) serves decode and small batches; the batched path
 * (weights converted once into a panel, MR x NT tiles) serves larger ones. */
#define DIRECT_R 4
#define DIRECT_T 3
#define MR 3
#define NT 4
/* From this many tokens on, the batched path (weights converted once into an f32
 * panel) beats converting them in registers for every tile of tokens (measured on
 * Zen 3 at 2880 columns).  F32 weights need no conversion. */
#define PANEL_MIN_TOK_F32 4
#define PANEL_MIN_TOK_16 8
#define PANEL_MIN_TOK_MXFP4 6
#define PANEL_MIN_TOK_Q8_0 14

/* 2^(e-127) and 0.5 * 2^(e-127) as float bits, exactly as gpo_e8m0_to_f32() and the
 * reference's 0.5f * gpo_e8m0_to_f32() produce them (e = 0 denormal, e = 255 +inf). */
#define E8_BITS(e) ((e) == 0 ? 0x00400000u : (uint32_t)(e) << 23)
#define E8H_BITS(e)                                                                        \
    ((e) == 0     ? 0x00200000u                                                            \
     : (e) == 1   ? 0x00400000u                                                            \
     : (e) == 255 ? 0x7f800000u                                                            \
                  : (uint32_t)((e) - 1) << 23)
#define X4(M, b) M(b), M((b) + 1), M((b) + 2), M((b) + 3)
#define X16(M, b) X4(M, b), X4(M, (b) + 4), X4(M, (b) + 8), X4(M, (b) + 12)
#define X64(M, b) X16(M, b), X16(M, (b) + 16), X16(M, (b) + 32), X16(M, (b) + 48)
#define X256(M) X64(M, 0), X64(M, 64), X64(M, 128), X64(M, 192)
static const uint32_t e8_bits[256] = {X256(E8_BITS)};
static const uint32_t e8h_bits[256] = {X256(E8H_BITS)};

AI __m256 e8_scale(uint8_t e) { return _mm256_castsi256_ps(_mm256_set1_epi32((int)e8_bits[e])); }
AI __m256 e8h_scale(uint8_t e) {
    return _mm256_castsi256_ps(_mm256_set1_epi32((int)e8h_bits[e]));
}

/* The one horizontal sum every path uses: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)). */
AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Prefetches base + off into L1.  The address may lie past the end of the weights
 * (prefetches never fault), so it is formed as an integer, not by pointer arithmetic. */
AI void prefetch(const void *base, size_t off) {
    _mm_prefetch((const char *)((uintptr_t)base + off), _MM_HINT_T0);
}

/* A mask of the first m (1..7) lanes, for the column tail. */
static const int32_t tail_mask_tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
AI __m256i tail_mask(int64_t m) {
    return _mm256_loadu_si256((const __m256i *)(tail_mask_tbl + 8 - m));
}

/* Eight weights from column c of a row, converted to f32. */
AI __m256 wload(int wt, const void *row, int64_t c) {
    if (wt == WT_F32) return _mm256_loadu_ps((const float *)row + c);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
    if (wt == WT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* The last m (1..7) weights of a row from column c, zero-padded to eight. */
AI __m256 wload_tail(int wt, const void *row, int64_t c, int64_t m) {
    if (wt == WT_F32) return _mm256_maskload_ps((const float *)row + c, tail_mask(m));
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)row + c, (size_t)m * 2);
    return wload(wt, tmp, 0);
}

AI size_t wt_size(int wt) { return wt == WT_F32 ? 4 : 2; }

/* Bytes of the first c columns of a dense or Q8_0 row (c a multiple of 32 for Q8_0). */
AI size_t col_bytes(int wt, int64_t c) {
    if (wt == WT_Q8_0) return (size_t)(c / GPO_QK) * sizeof(struct gpo_q8_0_block);
    return (size_t)c * wt_size(wt);
}

/* ---- Dense matmul: direct tiles (weights converted in registers) ---- */

/* y[t0+j][r+i] for i < R, j < T, converting each weight vector once per tile. */
AI void dense_tile(int wt, int R, int T, float *y, int64_t ldy, const void *W, const float *x,
                   int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {
    __m256 acc[DIRECT_R][DIRECT_T];
    const char *rows[DIRECT_R];
    const float *xs[DIRECT_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++) {
        rows[i] = (const char *)W + (size_t)(r + i) * (size_t)n_cols * wt_size(wt);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();
    }
#pragma GCC unroll 8
    for (int j = 0; j < T; j++) xs[j] = x + (t0 + j) * ldx;
    int64_t c = 0;
    for (; c + 8 <= n_cols; c += 8) {
        __m256 w[DIRECT_R];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = wload(wt, rows[i], c);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const __m256 xv = _mm256_loadu_ps(xs[j] + c);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (c < n_cols) {
        const int64_t m = n_cols - c;
        const __m256i mask = tail_mask(m);
        __m256 w[DIRECT_R];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = wload_tail(wt, rows[i], c, m);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const __m256 xv = _mm256_maskload_ps(xs[j] + c, mask);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum8(acc[i][j]);
}

#define DENSE_TILE_CASES(WT)                                                                \
    switch (R * 8 + T) {                                                                    \
    case 1 * 8 + 1: dense_tile(WT, 1, 1, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 1 * 8 + 2: dense_tile(WT, 1, 2, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 1 * 8 + 3: dense_tile(WT, 1, 3, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 2 * 8 + 1: dense_tile(WT, 2, 1, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 2 * 8 + 2: dense_tile(WT, 2, 2, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 2 * 8 + 3: dense_tile(WT, 2, 3, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 3 * 8 + 1: dense_tile(WT, 3, 1, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 3 * 8 + 2: dense_tile(WT, 3, 2, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 3 * 8 + 3: dense_tile(WT, 3, 3, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 4 * 8 + 1: dense_tile(WT, 4, 1, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    case 4 * 8 + 2: dense_tile(WT, 4, 2, y, ldy, W, x, ldx, t0, r, n_cols); break;          \
    default: dense_tile(WT, 3, 3, y, ldy, W, x, ldx, t0, r, n_cols); break;                 \
    }

#define DENSE_TILE_FN(name, WT)                                                             \
    static void name(int R, int T, float *y, int64_t ldy, const void *W, const float *x,    \
                     int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {                  \
        DENSE_TILE_CASES(WT)                                                                \
    }
DENSE_TILE_FN(dense_tile_f32, WT_F32)
DENSE_TILE_FN(dense_tile_bf16, WT_BF16)
DENSE_TILE_FN(dense_tile_f16, WT_F16)

/* Tokens in tiles of up to three (four rows per pass for one or two tokens, three rows
 * for three), row blocks outermost so each block of rows is read once per call. */
AI void dense_direct(gpo_drv_direct_tile_fn tile, float *y, int64_t ldy, const void *W,
                     const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                     int64_t n_cols) {
    gpo_drv_direct(tile, n_tok >= 3 ? 3 : DIRECT_R, DIRECT_T, 0, y, ldy, W, x, ldx, n_tok, r0, r1,
                   n_cols);
}

/* ---- MXFP4 decoding ---- */

/* The 32 codes of a block, ordered as below, to its weights in column order times the
 * block scale.  The codes go through bf16: every FP4 value is a bf16, so two pshufb
 * lookups give its high and low byte, and unpacking with zero words turns bf16 into
 * f32.  For the unpacks to come out in column order, lane 0 of `codes` holds elements
 * 0-3, 8-11, 16-19, 24-27 and lane 1 elements 4-7, 12-15, 20-23, 28-31. */
AI void mxfp4_decode_codes(__m256i codes, __m256 scale, __m256 out[4]) {
    const __m256i lut_hi = _mm256_setr_epi8(
        0x00, 0x3f, 0x3f, 0x3f, 0x40, 0x40, 0x40, 0x40, (char)0x80, (char)0xbf, (char)0xbf,
        (char)0xbf, (char)0xc0, (char)0xc0, (char)0xc0, (char)0xc0, 0x00, 0x3f, 0x3f, 0x3f, 0x40,
        0x40, 0x40, 0x40, (char)0x80, (char)0xbf, (char)0xbf, (char)0xbf, (char)0xc0, (char)0xc0,
        (char)0xc0, (char)0xc0);
    const __m256i lut_lo = _mm256_setr_epi8(
        0x00, 0x00, (char)0x80, (char)0xc0, 0x00, 0x40, (char)0x80, (char)0xc0, 0x00, 0x00,
        (char)0x80, (char)0xc0, 0x00, 0x40, (char)0x80, (char)0xc0, 0x00, 0x00, (char)0x80,
        (char)0xc0, 0x00, 0x40, (char)0x80, (char)0xc0, 0x00, 0x00, (char)0x80, (char)0xc0, 0x00,
        0x40, (char)0x80, (char)0xc0);
    const __m256i hb = _mm256_shuffle_epi8(lut_hi, codes);
    const __m256i lb = _mm256_shuffle_epi8(lut_lo, codes);
    const __m256i w01 = _mm256_unpacklo_epi8(lb, hb); /* bf16 of elements 0-7, 8-15 */
    const __m256i w23 = _mm256_unpackhi_epi8(lb, hb); /* bf16 of elements 16-23, 24-31 */
    const __m256i z = _mm256_setzero_si256();
    out[0] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w01)), scale);
    out[1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w01)), scale);
    out[2] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w23)), scale);
    out[3] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w23)), scale);
}

/* Decodes one 16-byte block of the safetensors layout.  A first in-lane byte shuffle
 * places the source bytes so that interleaving their nibbles gives the order above:
 * lane 0 gets bytes 0,1,4,5,8,9,12,13 (elements 0-3, 8-11, 16-19, 24-27) and lane 1
 * the rest. */
AI void mxfp4_decode(const uint8_t *blk, __m256 scale, __m256 out[4]) {
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1,
                                           -1, 2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1,
                                           -1, -1);
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)blk));
    v = _mm256_shuffle_epi8(v, order);
    const __m256i lo = _mm256_and_si256(v, m0f);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
    mxfp4_decode_codes(_mm256_unpacklo_epi8(lo, hi), scale, out);
}

/* ---- MXFP4 block layouts ----
 *
 * MX_ST is the safetensors layout: 16 code bytes per block in `blocks` (low nibble =
 * even element) and the scale bytes in `scales`.  MX_GG is GGML's: 17-byte blocks in
 * `blocks` (scale byte, then codes with elements 0-15 in the low nibbles and 16-31 in
 * the high ones), `scales` unused.  Every MXFP4 kernel takes the layout as a constant
 * and is compiled once per layout: only where the bytes come from and how the nibbles
 * are put in column order differ.  The decoded vectors are the same, element for
 * element, and everything after them is shared, so both layouts give the same bits. */
enum { MX_ST, MX_GG };

/* Bytes per block in the block array. */
AI int64_t mx_bytes(int lay) { return lay == MX_GG ? 17 : 16; }

/* The 16 code bytes and the scale byte of block rb (counted from the first block). */
AI const uint8_t *mx_codes(int lay, const uint8_t *blocks, int64_t rb) {
    return blocks + rb * mx_bytes(lay) + (lay == MX_GG);
}
AI uint8_t mx_scale(int lay, const uint8_t *blocks, const uint8_t *scales, int64_t rb) {
    return lay == MX_GG ? blocks[rb * 17] : scales[rb];
}

/* mxfp4_decode for GGML codes.  The split-nibble order needs only the first eight bytes
 * of each lane shuffled (lane 0: bytes 0-3 and 8-11, whose low nibbles are elements
 * 0-3 and 8-11 and high nibbles 16-19 and 24-27; lane 1: bytes 4-7 and 12-15); their
 * low nibbles followed by their high nibbles are the order mxfp4_decode_codes takes. */
AI void mxfp4_ggml_decode(const uint8_t *qs, __m256 scale, __m256 out[4]) {
    const __m256i order = _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1,
                                           -1, 4, 5, 6, 7, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1,
                                           -1, -1);
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_shuffle_epi8(v, order);
    const __m256i lo = _mm256_and_si256(v, m0f);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
    mxfp4_decode_codes(_mm256_unpacklo_epi64(lo, hi), scale, out);
}

/* Block rb of either layout, decoded to f32 in column order. */
AI void mx_decode(int lay, const uint8_t *blocks, const uint8_t *scales, int64_t rb,
                  __m256 out[4]) {
    const __m256 sc = e8_scale(mx_scale(lay, blocks, scales, rb));
    if (lay == MX_GG) mxfp4_ggml_decode(mx_codes(lay, blocks, rb), sc, out);
    else mxfp4_decode(mx_codes(lay, blocks, rb), sc, out);
}

/* ---- Q8_0 decoding ---- */

/* Decodes one Q8_0 block to its 32 weights in column order, as f32.  q * f16(d) has at
 * most 8 + 11 significant bits, so the product is exact: the weights enter the
 * reduction exactly as their dequantised f32 values would, whichever path converts
 * them (registers or panel).  (Widening with pmovsx pairs well with the conversions
 * on Zen 3; an in-lane shuffle to the top byte of each dword was measured slower.) */
AI void q80_decode(const struct gpo_q8_0_block *blk, __m256 out[4]) {
    const __m256 d = _mm256_cvtph_ps(_mm_set1_epi16((short)blk->d));
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const __m128i q = _mm_loadl_epi64((const __m128i *)(blk->qs + 8 * k));
        out[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
}

/* ---- Batched path: column-blocked panels ---- */

/* A panel holds RP rows x KC columns of f32 weights (converted once per token chunk)
 * and stays in L1 together with the NT x KC activations of a token tile; the MR x NT
 * register tiles sweep it.  The accumulators of every (row, token) pair of the panel
 * and token chunk wait in acc_buf between column chunks: storing and reloading a
 * vector keeps its bits, so the reduction order is still the one described above. */
#define KC 256
#define RP 6
#define TC 64

/* One MR x NT tile over columns [k0, k0+kn) of a panel; x points at column k0 of the
 * first token, y at (first token, first row). */
AI void panel_tile(int R, int T, const float *P, int64_t ldp, const float *x, int64_t ldx,
                   int64_t kn, __m256 *acc_buf, int first, int last, float *y, int64_t ldy) {
    __m256 acc[MR][NT];
    const float *xs[NT];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++)
            acc[i][j] = first ? _mm256_setzero_ps() : acc_buf[i * TC + j];
#pragma GCC unroll 8
    for (int j = 0; j < T; j++) xs[j] = x + j * ldx;
    int64_t c = 0;
    for (; c + 8 <= kn; c += 8) {
        __m256 w[MR];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = _mm256_loadu_ps(P + i * ldp + c);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const __m256 xv = _mm256_loadu_ps(xs[j] + c);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (c < kn) {
        const __m256i mask = tail_mask(kn - c);
        __m256 w[MR];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) w[i] = _mm256_maskload_ps(P + i * ldp + c, mask);
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const __m256 xv = _mm256_maskload_ps(xs[j] + c, mask);
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
    if (last) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) y[j * ldy + i] = hsum8(acc[i][j]);
    } else {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) acc_buf[i * TC + j] = acc[i][j];
    }
}

static void panel_tile_any(int R, int T, const float *P, int64_t ldp, const float *x, int64_t ldx,
                           int64_t kn, void *acc, int first, int last, float *y, int64_t ldy) {
    __m256 *const acc_buf = acc;
#define PT(a, b)                                                                            \
    case a * 8 + b: panel_tile(a, b, P, ldp, x, ldx, kn, acc_buf, first, last, y, ldy); break;
    switch (R * 8 + T) {
        PT(1, 1) PT(1, 2) PT(1, 3) PT(1, 4)
        PT(2, 1) PT(2, 2) PT(2, 3) PT(2, 4)
        PT(3, 1) PT(3, 2) PT(3, 3)
    default: panel_tile(MR, NT, P, ldp, x, ldx, kn, acc_buf, first, last, y, ldy); break;
    }
#undef PT
}

/* Converts columns [k0, k0+kn) of rows [r, r+R) into the panel P (row stride KC),
 * zero-padding a column tail to a whole vector. */
AI void fill_panel(int wt, float *P, const void *W, const uint8_t *scales, int64_t r, int R,
                   int64_t k0, int64_t kn, int64_t n_cols) {
    for (int i = 0; i < R; i++) {
        float *p = P + i * KC;
        if (wt == WT_MXFP4 || wt == WT_MXFP4_GG) {
            const int lay = wt == WT_MXFP4_GG ? MX_GG : MX_ST;
            const int64_t nb = n_cols / 32;
            const uint8_t *blocks = W;
            for (int64_t b = k0 / 32; b < (k0 + kn) / 32; b++) {
                __m256 w[4];
                mx_decode(lay, blocks, scales, (r + i) * nb + b, w);
                for (int k = 0; k < 4; k++) _mm256_storeu_ps(p + b * 32 - k0 + 8 * k, w[k]);
            }
            /* A panel chunk touches only 128 bytes of each row (136 in GGML blocks,
             * which may span three lines), too little for the hardware prefetcher to
             * follow; fetch what this row needs next (its next chunk, or the same row of
             * the next panel) while the tiles compute. */
            const int64_t next =
                k0 + KC < n_cols ? (r + i) * nb + (k0 + KC) / 32 : (r + i + RP) * nb;
            const size_t off = (size_t)(next * mx_bytes(lay));
            prefetch(blocks, off);
            prefetch(blocks, off + 64);
            if (lay == MX_GG) prefetch(blocks, off + 128);
            else prefetch(scales, (size_t)next);
            continue;
        }
        if (wt == WT_Q8_0) {
            const struct gpo_q8_0_block *row =
                (const struct gpo_q8_0_block *)W + (r + i) * (n_cols / GPO_QK);
            for (int64_t b = k0 / GPO_QK; b < (k0 + kn) / GPO_QK; b++) {
                __m256 w[4];
                q80_decode(row + b, w);
                for (int k = 0; k < 4; k++) _mm256_storeu_ps(p + b * 32 - k0 + 8 * k, w[k]);
            }
            continue;
        }
        const void *row = (const char *)W + (size_t)(r + i) * (size_t)n_cols * wt_size(wt);
        int64_t c = 0;
        for (; c + 8 <= kn; c += 8) _mm256_storeu_ps(p + c, wload(wt, row, k0 + c));
        if (c < kn) _mm256_storeu_ps(p + c, wload_tail(wt, row, k0 + c, kn - c));
    }
}

/* The dense counterpart of the MXFP4 prefetch above: the next chunk of each panel row
 * (or the rows of the next panel after the last chunk), one cache line at a time. */
AI void prefetch_next_chunk(int wt, const void *W, int64_t r, int R, int64_t k0,
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

/* The callbacks of the shared panel driver (drivers.h): fill_panel and the prefetch
 * specialised per weight type (one call per chunk of a panel). */
static void fill_panel_any(int wt, float *P, const void *W, const uint8_t *scales, int64_t r,
                           int R, int64_t k0, int64_t kn, int64_t n_cols) {
    switch (wt) {
    case WT_BF16: fill_panel(WT_BF16, P, W, scales, r, R, k0, kn, n_cols); break;
    case WT_F16: fill_panel(WT_F16, P, W, scales, r, R, k0, kn, n_cols); break;
    case WT_MXFP4: fill_panel(WT_MXFP4, P, W, scales, r, R, k0, kn, n_cols); break;
    case WT_MXFP4_GG: fill_panel(WT_MXFP4_GG, P, W, scales, r, R, k0, kn, n_cols); break;
    case WT_Q8_0: fill_panel(WT_Q8_0, P, W, scales, r, R, k0, kn, n_cols); break;
    default: fill_panel(WT_F32, P, W, scales, r, R, k0, kn, n_cols); break;
    }
}

static void prefetch_next_chunk_any(int wt, const void *W, int64_t r, int R, int64_t k0,
                                    int64_t n_cols) {
    prefetch_next_chunk(wt, W, r, R, k0, n_cols);
}

static const struct gpo_drv_panel_shape panel_shape = {KC, RP, TC, MR, NT, sizeof(__m256)};

/* The batched path of every weight type (scales only for MXFP4 in the safetensors
 * layout).  F32 weights are swept in place; MXFP4 panels prefetch while they decode
 * (fill_panel). */
AI void matmul_batched(int wt, float *y, int64_t ldy, const void *W, const uint8_t *scales,
                       const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                       int64_t n_cols) {
    float panel[RP * KC] __attribute__((aligned(32)));
    __m256 acc_buf[RP * TC];
    const int mx = wt == WT_MXFP4 || wt == WT_MXFP4_GG;
    gpo_drv_batched(&panel_shape, wt, wt == WT_F32 ? NULL : fill_panel_any,
                    mx ? NULL : prefetch_next_chunk_any, panel_tile_any, panel, acc_buf, y, ldy,
                    W, scales, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_f32_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                int64_t n_cols) {
    if (n_tok < PANEL_MIN_TOK_F32)
        dense_direct(dense_tile_f32, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        matmul_batched(WT_F32, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_bf16_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                 int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                 int64_t n_cols) {
    if (n_tok < PANEL_MIN_TOK_16)
        dense_direct(dense_tile_bf16, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        matmul_batched(WT_BF16, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_f16_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                int64_t n_cols) {
    if (n_tok < PANEL_MIN_TOK_16)
        dense_direct(dense_tile_f16, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
    else
        matmul_batched(WT_F16, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

/* ---- Q8_0 weights (--dense q8), f32 activations ---- */

#define Q80_DIRECT_R 4
#define Q80_DIRECT_T 3
/* Converting Q8_0 keeps the core busy enough that the hardware prefetcher falls
 * behind (~7 GB/s for one token from DRAM); prefetching this far ahead of each row
 * brings it to the core's read bandwidth (~12 GB/s on Zen 3). */
#define Q80_PREFETCH_BYTES 16384

/* Direct tile: each block of R rows is decoded in registers and used for T tokens,
 * four FMAs per block and token in column order (the order of the panel path). */
AI void q80_tile(int R, int T, float *y, int64_t ldy, const struct gpo_q8_0_block *W,
                 const float *x, int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {
    const int64_t nb = n_cols / GPO_QK;
    __m256 acc[Q80_DIRECT_R][Q80_DIRECT_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            __m256 w[4];
            prefetch(W, (size_t)((r + i) * nb + b) * sizeof *W + Q80_PREFETCH_BYTES);
            q80_decode(W + (r + i) * nb + b, w);
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) {
                const float *xb = x + (t0 + j) * ldx + b * 32;
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    acc[i][j] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xb + 8 * k), acc[i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum8(acc[i][j]);
}

static void q80_tile_any(int R, int T, float *y, int64_t ldy, const void *W, const float *x,
                         int64_t ldx, int64_t t0, int64_t r, int64_t n_cols) {
#define ZT(a, b)                                                                            \
    case a * 8 + b: q80_tile(a, b, y, ldy, W, x, ldx, t0, r, n_cols); break;
    switch (R * 8 + T) { /* R = 1..4 for one token, 1..2 for more */
        ZT(1, 1) ZT(2, 1) ZT(3, 1) ZT(4, 1)
        ZT(1, 2) ZT(2, 2)
        ZT(1, 3)
    default: q80_tile(2, 3, y, ldy, W, x, ldx, t0, r, n_cols); break;
    }
#undef ZT
}

static void matmul_q8_0_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                 int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                 int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_Q8_0) {
        matmul_batched(WT_Q8_0, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
        return;
    }
    /* Four rows per pass for one token, two for more (tokens in balanced tiles of up to
     * three, row blocks outermost so each block of rows is read once per call). */
    gpo_drv_direct(q80_tile_any, n_tok == 1 ? Q80_DIRECT_R : 2, Q80_DIRECT_T, 1, y, ldy, W, x, ldx,
                   n_tok, r0, r1, n_cols);
}

static void matmul_q8_0x16_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                    int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                    int64_t n_cols) {
    gpo_drv_q8_0x16(matmul_q8_0_f32_avx2, y, ldy, W, x, ldx, n_tok, r0, r1, n_cols);
}

/* ---- MXFP4, exact path (f32 activations) ---- */

/* Decoding MXFP4 keeps the core busy enough that the hardware prefetcher falls
 * behind; a software prefetch this far ahead of the block stream brings the one-token
 * case from ~3.4 to ~5 GB/s (exact) and ~5 to ~11 GB/s (int8 path) from DRAM.  The
 * int16 path uses the same distance (8 and 16 KiB measured alike). */
#define PREFETCH_BYTES 8192
#define Q16_PREFETCH_BYTES PREFETCH_BYTES

#define MX_DIRECT_R 4
#define MX_DIRECT_T 2

/* Direct tile: each block of R rows is decoded in registers and used for T tokens. */
AI void mxfp4_tile(int lay, int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                   const uint8_t *scales, const float *x, int64_t ldx, int64_t t0, int64_t r,
                   int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    __m256 acc[MX_DIRECT_R][MX_DIRECT_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            const int64_t rb = (r + i) * nb + b;
            __m256 w[4];
            prefetch(blocks, (size_t)(rb * mx_bytes(lay)) + PREFETCH_BYTES);
            mx_decode(lay, blocks, scales, rb, w);
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) {
                const float *xb = x + (t0 + j) * ldx + b * 32;
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    acc[i][j] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xb + 8 * k), acc[i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum8(acc[i][j]);
}

#define MT(LAY, a, b)                                                                       \
    case a * 8 + b: mxfp4_tile(LAY, a, b, y, ldy, blocks, scales, x, ldx, t0, r, n_cols); break;
#define MXFP4_TILE_FN(name, LAY)                                                            \
    static void name(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,            \
                     const uint8_t *scales, const float *x, int64_t ldx, int64_t t0,        \
                     int64_t r, int64_t n_cols) {                                           \
        switch (R * 8 + T) {                                                                \
            MT(LAY, 1, 1) MT(LAY, 2, 1) MT(LAY, 3, 1) MT(LAY, 1, 2) MT(LAY, 2, 2)           \
            MT(LAY, 3, 2) MT(LAY, 4, 1)                                                     \
        default: mxfp4_tile(LAY, 4, 2, y, ldy, blocks, scales, x, ldx, t0, r, n_cols); break; \
        }                                                                                   \
    }
MXFP4_TILE_FN(mxfp4_tile_any, MX_ST)
MXFP4_TILE_FN(mxfp4_ggml_tile_any, MX_GG)
#undef MXFP4_TILE_FN
#undef MT

AI void matmul_mxfp4_f32(int lay, float *y, int64_t ldy, const uint8_t *blocks,
                         const uint8_t *scales, const float *x, int64_t ldx, int64_t n_tok,
                         int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= PANEL_MIN_TOK_MXFP4) {
        matmul_batched(lay == MX_GG ? WT_MXFP4_GG : WT_MXFP4, y, ldy, blocks, scales, x, ldx,
                       n_tok, r0, r1, n_cols);
        return;
    }
    void (*const tile_any)(int, int, float *, int64_t, const uint8_t *, const uint8_t *,
                           const float *, int64_t, int64_t, int64_t, int64_t) =
        lay == MX_GG ? mxfp4_ggml_tile_any : mxfp4_tile_any;
    for (int64_t r = r0; r < r1; r += MX_DIRECT_R) {
        const int R = (int)(r1 - r < MX_DIRECT_R ? r1 - r : MX_DIRECT_R);
        for (int64_t t = 0; t < n_tok; t += MX_DIRECT_T) {
            const int T = (int)(n_tok - t < MX_DIRECT_T ? n_tok - t : MX_DIRECT_T);
            if (R == 4 && T == 2) {
                tile_any(2, 2, y, ldy, blocks, scales, x, ldx, t, r, n_cols);
                tile_any(2, 2, y, ldy, blocks, scales, x, ldx, t, r + 2, n_cols);
            } else {
                tile_any(R, T, y, ldy, blocks, scales, x, ldx, t, r, n_cols);
            }
        }
    }
}

static void matmul_mxfp4_f32_avx2(float *y, int64_t ldy, const uint8_t *blocks,
                                  const uint8_t *scales, const float *x, int64_t ldx, int64_t n_tok,
                                  int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_mxfp4_f32(MX_ST, y, ldy, blocks, scales, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_f32_avx2(float *y, int64_t ldy, const void *W, const float *x,
                                       int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                       int64_t n_cols) {
    matmul_mxfp4_f32(MX_GG, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

/* ---- MXFP4 x int8 activations (fast path) ---- */

/* One block of a row, ready for maddubs: |2 * fp4| per element in column order, the
 * code shifted so its sign bit is each byte's top bit, and 0.5 * 2^(e-127). */
struct q8w {
    __m256i mag, sgn;
    __m256 half_scale;
};

/* The 32 codes of a block in column order, one per byte.  The safetensors nibble
 * order (low = even element) is put in column order by widening each byte b to the
 * 16-bit word b, then (w | w << 4) & 0x0f0f: low byte = low nibble, high byte = high
 * nibble.  GGML's needs no interleaving: the low nibbles are elements 0-15 (low lane)
 * and the high nibbles 16-31 (high lane). */
AI __m256i q8w_codes(int lay, const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    if (lay == MX_GG) {
        const __m256i b = _mm256_broadcastsi128_si256(v);
        return _mm256_and_si256(_mm256_blend_epi32(b, _mm256_srli_epi16(b, 4), 0xf0),
                                _mm256_set1_epi8(0x0f));
    }
    const __m256i a = _mm256_cvtepu8_epi16(v);
    return _mm256_and_si256(_mm256_or_si256(a, _mm256_slli_epi16(a, 4)), _mm256_set1_epi8(0x0f));
}

/* Block rb of either layout. */
AI struct q8w q8w_decode(int lay, const uint8_t *blocks, const uint8_t *scales, int64_t rb) {
    const __m256i lut_abs = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12,
                                             0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12);
    const __m256i codes = q8w_codes(lay, mx_codes(lay, blocks, rb));
    const uint8_t e = mx_scale(lay, blocks, scales, rb);
    struct q8w w;
    w.mag = _mm256_shuffle_epi8(lut_abs, codes);
    w.sgn = _mm256_slli_epi16(codes, 4);
    w.half_scale = e8h_scale(e);
    return w;
}

/* The block's integer dot product in eight int32 lanes (exact: |products| <= 12 * 127
 * and pairs fit int16), as floats, times 0.5 * 2^(e-127) * d, added to acc. */
AI __m256 q8_block_fma(struct q8w w, const struct gpo_q8_block *xb, __m256 acc) {
    const __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs);
    const __m256i p16 = _mm256_maddubs_epi16(w.mag, _mm256_sign_epi8(xq, w.sgn));
    const __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    const __m256 sc = _mm256_mul_ps(w.half_scale, _mm256_set1_ps(xb->d));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), sc, acc);
}

#define Q8_R 4
#define Q8_T 4
/* Bytes of quantised activations per token chunk, sized to stay in L2 while the rows
 * pass. */
#define Q8_CHUNK_BYTES (192 * 1024)

AI void q8_tile(int lay, int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                const uint8_t *scales, const struct gpo_q8_block *xq, int64_t ldxq, int64_t t0,
                int64_t r, int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    __m256 acc[Q8_R][Q8_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            const int64_t rb = (r + i) * nb + b;
            prefetch(blocks, (size_t)(rb * mx_bytes(lay)) + PREFETCH_BYTES);
            const struct q8w w = q8w_decode(lay, blocks, scales, rb);
#pragma GCC unroll 8
            for (int j = 0; j < T; j++)
                acc[i][j] = q8_block_fma(w, xq + (t0 + j) * ldxq + b, acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum8(acc[i][j]);
}

#define QT(LAY, a, b)                                                                       \
    case a * 8 + b: q8_tile(LAY, a, b, y, ldy, blocks, scales, xq, ldxq, t0, r, n_cols); break;
#define Q8_TILE_FN(name, LAY)                                                               \
    static void name(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,            \
                     const uint8_t *scales, const struct gpo_q8_block *xq, int64_t ldxq,    \
                     int64_t t0, int64_t r, int64_t n_cols) {                               \
        switch (R * 8 + T) {                                                                \
            QT(LAY, 1, 1) QT(LAY, 2, 1) QT(LAY, 3, 1) QT(LAY, 4, 1)                         \
            QT(LAY, 1, 2) QT(LAY, 1, 3) QT(LAY, 1, 4)                                       \
            QT(LAY, 2, 2) QT(LAY, 2, 3)                                                     \
        default: q8_tile(LAY, 2, 3, y, ldy, blocks, scales, xq, ldxq, t0, r, n_cols); break; \
        }                                                                                   \
    }
Q8_TILE_FN(q8_tile_any, MX_ST)
Q8_TILE_FN(q8_ggml_tile_any, MX_GG)
#undef Q8_TILE_FN
#undef QT

AI void matmul_mxfp4_q8(int lay, float *y, int64_t ldy, const uint8_t *blocks,
                        const uint8_t *scales, const struct gpo_q8_block *xq, int64_t ldxq,
                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    void (*const tile_any)(int, int, float *, int64_t, const uint8_t *, const uint8_t *,
                           const struct gpo_q8_block *, int64_t, int64_t, int64_t, int64_t) =
        lay == MX_GG ? q8_ggml_tile_any : q8_tile_any;
    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r += Q8_R) {
            const int R = (int)(r1 - r < Q8_R ? r1 - r : Q8_R);
            tile_any(R, 1, y, ldy, blocks, scales, xq, ldxq, 0, r, n_cols);
        }
        return;
    }
    /* Batches: two rows by up to three tokens per tile, tokens chunked so the chunk's
     * quantised activations stay in L2 while the rows pass. */
    const int64_t row_bytes = (n_cols / 32) * (int64_t)sizeof(struct gpo_q8_block);
    int64_t tc = Q8_CHUNK_BYTES / (row_bytes > 0 ? row_bytes : 1);
    tc = tc < 3 ? 3 : tc - tc % 3;
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += tc) {
        const int64_t tc1 = tc0 + tc < n_tok ? tc0 + tc : n_tok;
        for (int64_t r = r0; r < r1; r += 2) {
            const int R = (int)(r1 - r < 2 ? r1 - r : 2);
            for (int64_t t = tc0; t < tc1; t += 3) {
                const int T = (int)(tc1 - t < 3 ? tc1 - t : 3);
                tile_any(R, T, y, ldy, blocks, scales, xq, ldxq, t, r, n_cols);
            }
        }
    }
}

static void matmul_mxfp4_q8_avx2(float *y, int64_t ldy, const uint8_t *blocks,
                                 const uint8_t *scales, const struct gpo_q8_block *xq, int64_t ldxq,
                                 int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_mxfp4_q8(MX_ST, y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_q8_avx2(float *y, int64_t ldy, const void *W,
                                      const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                                      int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_mxfp4_q8(MX_GG, y, ldy, W, NULL, xq, ldxq, n_tok, r0, r1, n_cols);
}

/* Same arithmetic as the reference, so the result is bit-identical: amax is exact,
 * d and 1/d are the same IEEE operations, x * id rounds the same, and cvtps rounds to
 * nearest even like lrintf in the default rounding mode. */
static void quantize_q8_avx2(struct gpo_q8_block *out, const float *x, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const __m256 m01 = _mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask));
        const __m256 m23 = _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask));
        const __m256 m = _mm256_max_ps(m01, m23);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        /* packs works within 128-bit lanes; the permute restores element order. */
        const __m256i p =
            _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)out[b].qs, _mm256_permutevar8x32_epi32(p, perm));
    }
}

/* ---- MXFP4 x int16 activations ---- */

/* Blocks are taken in pairs (2k, 2k+1): one 32-byte load holds both blocks of a row
 * (two 16-byte loads in GGML blocks), block 2k in the low lane and 2k+1 in the high
 * one, and every vector below keeps that split, so the pair's partial sums end in one
 * int32 vector (lanes 0-3 block 2k, lanes 4-7 block 2k+1) that is converted, scaled
 * and accumulated once.  Within a lane everything is in column order, so the
 * activations need no shuffling: their eight-element rows are just paired up across
 * the two lanes.  A row with an odd number of blocks ends in a half pair whose high
 * lane is zero (weights, scale and activations).
 *
 * The doubled FP4 values (-12..12) are widened to int16 as value * 256 (the byte in
 * the high half of the word), which costs one unpack instead of a sign extension; the
 * 1/256 is folded into the scale table below.  Per lane of the pair vector the
 * products of eight elements are summed: |sum| <= 8 * 3072 * 32768 < 2^30, so madd
 * and the adds are exact, and the sum is 256 times an integer below 2^22, so its
 * conversion to float is exact too.  The result per pair is then
 * acc = fma(float(256 * S), (0.5 * 2^(e-127) / 256) * d, acc) lane by lane, which is
 * S * 0.5 * 2^(e-127) * d rounded once (as long as that scale is a normal float),
 * and hsum8 combines the lanes at the end of the row.  Decode and batch paths do
 * exactly this, pair by pair in increasing column order. */

/* 0.5 * 2^(e-127) / 256 = 2^(e-136) as float bits, four copies per entry (one lane):
 * denormal below e = 10 (still exact: 2^-136 >= 2^-149), +inf for e = 255 as in the
 * reference. */
#define E8Q_BITS(e)                                                                        \
    ((e) < 10     ? 0x00002000u << ((e) < 10 ? (e) : 0)                                      \
     : (e) == 255 ? 0x7f800000u                                                            \
                  : (uint32_t)((e) - 9) << 23)
#define E8Q4(e) {E8Q_BITS(e), E8Q_BITS(e), E8Q_BITS(e), E8Q_BITS(e)}
static const uint32_t e8q4_bits[256][4] __attribute__((aligned(16))) = {X256(E8Q4)};

/* The two blocks' scale lanes: e0 for block 2k, e1 for 2k+1 (zero when absent). */
AI __m256 q16_scales(uint8_t e0, const uint8_t *e1) {
    const __m128 lo = _mm_load_ps((const float *)e8q4_bits[e0]);
    const __m128 hi = e1 ? _mm_load_ps((const float *)e8q4_bits[*e1]) : _mm_setzero_ps();
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

/* A decoded pair of one row: int16 weights * 256 for elements 0-7, 8-15, 16-23, 24-31
 * of each block (low lane block 2k, high lane 2k+1) and the scale lanes. */
struct q16w {
    __m256i w[4];
    __m256 hs;
};

/* v holds the pair's 32 codes bytes.  Nibbles are looked up as signed bytes, put in
 * column order (safetensors: low nibble = even element, so the two are interleaved;
 * GGML: the low nibbles already are elements 0-15 and the high ones 16-31), and
 * widened with zero low bytes. */
AI struct q16w q16w_decode(int lay, __m256i v, __m256 hs) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
                                         0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    const __m256i m0f = _mm256_set1_epi8(0x0f), z = _mm256_setzero_si256();
    const __m256i vl = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m0f));
    const __m256i vh = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f));
    /* elements 0-15 and 16-31 of each block */
    const __m256i e0 = lay == MX_GG ? vl : _mm256_unpacklo_epi8(vl, vh);
    const __m256i e1 = lay == MX_GG ? vh : _mm256_unpackhi_epi8(vl, vh);
    struct q16w w;
    w.w[0] = _mm256_unpacklo_epi8(z, e0);
    w.w[1] = _mm256_unpackhi_epi8(z, e0);
    w.w[2] = _mm256_unpacklo_epi8(z, e1);
    w.w[3] = _mm256_unpackhi_epi8(z, e1);
    w.hs = hs;
    return w;
}

/* Pair k of row `row` (blocks 2k and 2k+1 of n_blocks), decoded. */
AI struct q16w q16w_load(int lay, const uint8_t *blocks, const uint8_t *scales, int64_t row,
                         int64_t k, int64_t n_blocks) {
    const int two = 2 * k + 1 < n_blocks;
    if (lay == MX_GG) { /* the two blocks' codes are 17 bytes apart */
        const uint8_t *b = blocks + (row * n_blocks + 2 * k) * 17;
        const __m128i lo = _mm_loadu_si128((const __m128i *)(b + 1));
        const __m128i hi = two ? _mm_loadu_si128((const __m128i *)(b + 18)) : _mm_setzero_si128();
        return q16w_decode(lay, _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1),
                           q16_scales(b[0], two ? b + 17 : NULL));
    }
    const uint8_t *b = blocks + (row * n_blocks + 2 * k) * 16;
    const uint8_t *sc = scales + row * n_blocks + 2 * k;
    if (two)
        return q16w_decode(lay, _mm256_loadu_si256((const __m256i *)b), q16_scales(sc[0], sc + 1));
    return q16w_decode(lay,
                       _mm256_inserti128_si256(_mm256_setzero_si256(),
                                               _mm_loadu_si128((const __m128i *)b), 0),
                       q16_scales(sc[0], NULL));
}

/* A token's pair: its int16 activations for elements 0-7, ..., 24-31 (low lane block
 * 2k, high lane 2k+1) and d in the matching lanes. */
struct q16x {
    __m256i x[4];
    __m256 d;
};

AI struct q16x q16x_load(const struct gpo_q16_block *xt, int64_t k, int64_t n_blocks) {
    const struct gpo_q16_block *a = xt + 2 * k, *b = a + 1;
    const int two = 2 * k + 1 < n_blocks;
    struct q16x x;
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const __m128i lo = _mm_loadu_si128((const __m128i *)(a->qs + 8 * i));
        const __m128i hi = two ? _mm_loadu_si128((const __m128i *)(b->qs + 8 * i))
                               : _mm_setzero_si128();
        x.x[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    }
    x.d = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(a->d)),
                               two ? _mm_set1_ps(b->d) : _mm_setzero_ps(), 1);
    return x;
}

AI __m256 q16_pair_fma(const struct q16w *w, const struct q16x *x, __m256 acc) {
    const __m256i p01 = _mm256_add_epi32(_mm256_madd_epi16(w->w[0], x->x[0]),
                                         _mm256_madd_epi16(w->w[1], x->x[1]));
    const __m256i p23 = _mm256_add_epi32(_mm256_madd_epi16(w->w[2], x->x[2]),
                                         _mm256_madd_epi16(w->w[3], x->x[3]));
    const __m256 sc = _mm256_mul_ps(w->hs, x->d);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p01, p23)), sc, acc);
}

/* Decode and small batches: R rows x T tokens, each pair of a row decoded in
 * registers and used for the T tokens (whose pairs are loaded once per R rows). */
#define Q16_DIRECT_R 6
#define Q16_DIRECT_T 3
/* From this many tokens on the batched path wins (it must be Q16_DIRECT_T + 1 or
 * less: the direct path takes all tokens in one tile). */
#define Q16_PANEL_MIN_TOK 4

AI void q16_tile(int lay, int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                 const uint8_t *scales, const struct gpo_q16_block *xq, int64_t ldxq,
                 int64_t t0, int64_t r, int64_t n_cols) {
    const int64_t nb = n_cols / 32, np = (nb + 1) / 2;
    __m256 acc[Q16_DIRECT_R][Q16_DIRECT_T];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < np; k++) {
        struct q16x x[Q16_DIRECT_T];
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) x[j] = q16x_load(xq + (t0 + j) * ldxq, k, nb);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            const int64_t row_off = ((r + i) * nb + 2 * k) * mx_bytes(lay);
            prefetch(blocks, (size_t)row_off + Q16_PREFETCH_BYTES);
            const struct q16w w = q16w_load(lay, blocks, scales, r + i, k, nb);
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) acc[i][j] = q16_pair_fma(&w, &x[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = hsum8(acc[i][j]);
}

#define QT(LAY, a, b)                                                                       \
    case a * 8 + b: q16_tile(LAY, a, b, y, ldy, blocks, scales, xq, ldxq, t0, r, n_cols); break;
#define Q16_TILE_FN(name, LAY)                                                              \
    static void name(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,            \
                     const uint8_t *scales, const struct gpo_q16_block *xq, int64_t ldxq,   \
                     int64_t t0, int64_t r, int64_t n_cols) {                               \
        switch (R * 8 + T) {                                                                \
            QT(LAY, 1, 1) QT(LAY, 2, 1) QT(LAY, 3, 1) QT(LAY, 4, 1) QT(LAY, 5, 1)           \
            QT(LAY, 1, 2) QT(LAY, 2, 2) QT(LAY, 3, 2) QT(LAY, 4, 2)                         \
            QT(LAY, 1, 3) QT(LAY, 2, 3) QT(LAY, 3, 3)                                       \
        default:                                                                            \
            q16_tile(LAY, Q16_DIRECT_R, 1, y, ldy, blocks, scales, xq, ldxq, t0, r, n_cols); \
            break;                                                                          \
        }                                                                                   \
    }
Q16_TILE_FN(q16_tile_any, MX_ST)
Q16_TILE_FN(q16_ggml_tile_any, MX_GG)
#undef Q16_TILE_FN
#undef QT

/* Batches: the pairs of a panel of Q16_RP rows x Q16_KC columns are decoded once
 * per chunk of Q16_TC tokens into q16w form (30 KB), the pairs of a tile of Q16_NT
 * tokens once per panel into q16x form, and register tiles of Q16_MR rows x Q16_NT
 * tokens sweep them, four madds per row, token and pair.  As in matmul_batched,
 * accumulators wait in acc_buf between column chunks (a store and a reload keep their
 * bits).  Sizes measured on Zen 3: tall panels amortise the activation shuffles, and
 * 4 x 3 tiles beat 3 x 3 and 2 x 4 although they spill a little. */
#define Q16_KC 512
#define Q16_KP (Q16_KC / 64) /* pairs per column chunk */
#define Q16_RP 24
#define Q16_TC 32
#define Q16_MR 4
#define Q16_NT 3

AI void q16_panel_tile(int R, int T, struct q16w (*P)[Q16_KP], struct q16x (*X)[Q16_KP],
                       int64_t kp, __m256 *acc_buf, int first, int last, float *y,
                       int64_t ldy) {
    __m256 acc[Q16_MR][Q16_NT];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++)
            acc[i][j] = first ? _mm256_setzero_ps() : acc_buf[i * Q16_TC + j];
    for (int64_t k = 0; k < kp; k++)
#pragma GCC unroll 8
        for (int j = 0; j < T; j++) {
            const struct q16x x = X[j][k];
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) acc[i][j] = q16_pair_fma(&P[i][k], &x, acc[i][j]);
        }
    if (last) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) y[j * ldy + i] = hsum8(acc[i][j]);
    } else {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++)
#pragma GCC unroll 8
            for (int j = 0; j < T; j++) acc_buf[i * Q16_TC + j] = acc[i][j];
    }
}

static void q16_panel_tile_any(int R, int T, struct q16w (*P)[Q16_KP], struct q16x (*X)[Q16_KP],
                               int64_t kp, __m256 *acc_buf, int first, int last, float *y,
                               int64_t ldy) {
#define QP(a, b)                                                                            \
    case a * 8 + b: q16_panel_tile(a, b, P, X, kp, acc_buf, first, last, y, ldy); break;
    switch (R * 8 + T) {
        QP(1, 1) QP(1, 2) QP(1, 3)
        QP(2, 1) QP(2, 2) QP(2, 3)
        QP(3, 1) QP(3, 2) QP(3, 3)
        QP(4, 1) QP(4, 2)
    default: q16_panel_tile(Q16_MR, Q16_NT, P, X, kp, acc_buf, first, last, y, ldy); break;
    }
#undef QP
}

AI void matmul_q16_batched(int lay, float *y, int64_t ldy, const uint8_t *blocks,
                           const uint8_t *scales, const struct gpo_q16_block *xq, int64_t ldxq,
                           int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32, np = (nb + 1) / 2;
    struct q16w panel[Q16_RP][Q16_KP];
    struct q16x xs[Q16_NT][Q16_KP];
    __m256 acc_buf[Q16_RP * Q16_TC];
    if (nb == 0) { /* no column chunk would write y: an empty sum is 0 */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = 0.0f;
        return;
    }
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += Q16_TC) {
        const int64_t tc1 = tc0 + Q16_TC < n_tok ? tc0 + Q16_TC : n_tok;
        for (int64_t rp0 = r0; rp0 < r1; rp0 += Q16_RP) {
            const int64_t rp1 = rp0 + Q16_RP < r1 ? rp0 + Q16_RP : r1;
            for (int64_t k0 = 0; k0 < np; k0 += Q16_KP) {
                const int64_t kp = np - k0 < Q16_KP ? np - k0 : Q16_KP;
                const int first = k0 == 0, last = k0 + kp == np;
                for (int64_t r = rp0; r < rp1; r++) {
                    for (int64_t k = 0; k < kp; k++)
                        panel[r - rp0][k] = q16w_load(lay, blocks, scales, r, k0 + k, nb);
                    /* The next chunk of this row (or the row Q16_RP further on). */
                    const size_t bb = (size_t)mx_bytes(lay);
                    const size_t row_next = (size_t)(last ? r + Q16_RP : r) * (size_t)nb * bb;
                    const size_t next = row_next + (last ? 0 : (size_t)(k0 + kp) * 2 * bb);
                    for (size_t off = 0; off < Q16_KC / 32 * bb; off += 64)
                        prefetch(blocks, next + off);
                }
                for (int64_t t = tc0, T; t < tc1; t += T) {
                    T = gpo_drv_tile_tokens(tc1 - t, Q16_NT);
                    for (int j = 0; j < T; j++)
                        for (int64_t k = 0; k < kp; k++)
                            xs[j][k] = q16x_load(xq + (t + j) * ldxq, k0 + k, nb);
                    for (int64_t r = rp0; r < rp1; r += Q16_MR) {
                        const int R = (int)(rp1 - r < Q16_MR ? rp1 - r : Q16_MR);
                        q16_panel_tile_any(R, (int)T, panel + (r - rp0), xs, kp,
                                           acc_buf + (r - rp0) * Q16_TC + (t - tc0), first,
                                           last, y + t * ldy + r, ldy);
                    }
                }
            }
        }
    }
}

/* The batched path once per layout, out of line. */
static void matmul_q16_batched_st(float *y, int64_t ldy, const uint8_t *blocks,
                                  const uint8_t *scales, const struct gpo_q16_block *xq,
                                  int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                  int64_t n_cols) {
    matmul_q16_batched(MX_ST, y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
}
static void matmul_q16_batched_gg(float *y, int64_t ldy, const uint8_t *blocks,
                                  const struct gpo_q16_block *xq, int64_t ldxq, int64_t n_tok,
                                  int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_q16_batched(MX_GG, y, ldy, blocks, NULL, xq, ldxq, n_tok, r0, r1, n_cols);
}

AI void matmul_mxfp4_q16(int lay, float *y, int64_t ldy, const uint8_t *blocks,
                         const uint8_t *scales, const struct gpo_q16_block *xq, int64_t ldxq,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    if (n_tok >= Q16_PANEL_MIN_TOK) {
        if (lay == MX_GG)
            matmul_q16_batched_gg(y, ldy, blocks, xq, ldxq, n_tok, r0, r1, n_cols);
        else
            matmul_q16_batched_st(y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
        return;
    }
    /* Up to three tokens: six rows per pass for one token, four for two, three for
     * three. */
    const int T = (int)n_tok, rstep = T == 1 ? Q16_DIRECT_R : T == 2 ? 4 : 3;
    for (int64_t r = r0; r < r1; r += rstep) {
        const int R = (int)(r1 - r < rstep ? r1 - r : rstep);
        if (lay == MX_GG) q16_ggml_tile_any(R, T, y, ldy, blocks, scales, xq, ldxq, 0, r, n_cols);
        else q16_tile_any(R, T, y, ldy, blocks, scales, xq, ldxq, 0, r, n_cols);
    }
}

static void matmul_mxfp4_q16_avx2(float *y, int64_t ldy, const uint8_t *blocks,
                                  const uint8_t *scales, const struct gpo_q16_block *xq,
                                  int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                  int64_t n_cols) {
    matmul_mxfp4_q16(MX_ST, y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_q16_avx2(float *y, int64_t ldy, const void *W,
                                       const struct gpo_q16_block *xq, int64_t ldxq,
                                       int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_mxfp4_q16(MX_GG, y, ldy, W, NULL, xq, ldxq, n_tok, r0, r1, n_cols);
}

/* As quantize_q8_avx2: the same IEEE operations as the reference, cvtps rounding to
 * nearest even like lrintf. */
static void quantize_q16_avx2(struct gpo_q16_block *out, const float *x, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        const __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const __m256 m01 = _mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask));
        const __m256 m23 = _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask));
        const __m256 m = _mm256_max_ps(m01, m23);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const float d = amax / 32767.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        /* packs works within 128-bit lanes; the permute restores element order. */
        const __m256i p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xd8);
        const __m256i p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xd8);
        _mm256_storeu_si256((__m256i *)out[b].qs, p01);
        _mm256_storeu_si256((__m256i *)(out[b].qs + 16), p23);
    }
}

/* ---- Attention ---- */

/* Scores of one key: one accumulator over head_dim in vectors of eight, a masked tail,
 * hsum8, times scale.  Tiles of keys only interleave keys, so a key's score does not
 * depend on n_keys or on its position in the tile. */
AI void scores_tile(int K, float *s, const float *q, const float *k, int64_t ldk, int64_t j,
                    int64_t head_dim, float scale) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < K; i++) acc[i] = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
        for (int i = 0; i < K; i++)
            acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (j + i) * ldk + d), acc[i]);
    }
    if (d < head_dim) {
        const __m256i mask = tail_mask(head_dim - d);
        const __m256 qv = _mm256_maskload_ps(q + d, mask);
#pragma GCC unroll 8
        for (int i = 0; i < K; i++)
            acc[i] = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k + (j + i) * ldk + d, mask), acc[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < K; i++) s[j + i] = hsum8(acc[i]) * scale;
}

static void attn_scores_avx2(float *s, const float *q, const float *k, int64_t ldk, int64_t n_keys,
                             int64_t head_dim, float scale) {
    int64_t j = 0;
    for (; j + 8 <= n_keys; j += 8) scores_tile(8, s, q, k, ldk, j, head_dim, scale);
    for (; j + 4 <= n_keys; j += 4) scores_tile(4, s, q, k, ldk, j, head_dim, scale);
    for (; j < n_keys; j++) scores_tile(1, s, q, k, ldk, j, head_dim, scale);
}

/* One query at a time, each exactly as attn_scores_avx2 computes it. */
static void attn_scores_rows_avx2(float *s, int64_t lds, const float *q, int64_t ldq, int64_t n_q,
                                  const float *k, int64_t ldk, int64_t n_keys, int64_t head_dim,
                                  float scale) {
    for (int64_t i = 0; i < n_q; i++)
        attn_scores_avx2(s + i * lds, q + i * ldq, k, ldk, n_keys, head_dim, scale);
}

/* out[d] += p[j] * v_j[d] in increasing j with one FMA each, so splitting the keys
 * over several calls gives the same bits.  Head dimensions go eight vectors (64
 * floats) at a time, held in registers across all keys. */
static void attn_accum_avx2(float *out, const float *p, const float *v, int64_t ldv, int64_t n_keys,
                            int64_t head_dim) {
    int64_t d0 = 0;
    for (; d0 + 64 <= head_dim; d0 += 64) {
        __m256 o[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) o[i] = _mm256_loadu_ps(out + d0 + 8 * i);
        for (int64_t j = 0; j < n_keys; j++) {
            const __m256 pj = _mm256_set1_ps(p[j]);
            const float *vj = v + j * ldv + d0;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                o[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * i), o[i]);
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + d0 + 8 * i, o[i]);
    }
    for (; d0 < head_dim; d0 += 8) {
        const int64_t m = head_dim - d0 < 8 ? head_dim - d0 : 8;
        const __m256i mask = tail_mask(m);
        __m256 o = _mm256_maskload_ps(out + d0, mask);
        for (int64_t j = 0; j < n_keys; j++)
            o = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_maskload_ps(v + j * ldv + d0, mask),
                                o);
        _mm256_maskstore_ps(out + d0, mask, o);
    }
}

/* gpo_mxfp4_from_ggml: a block's 16 code bytes qs hold element j in the low nibble of
 * qs[j] and element 16+j in the high one; split byte i holds elements 2i, 2i+1 (low
 * nibble first).  So the low nibbles paired as lo[2i] + 16*lo[2i+1] (pmaddubsw with
 * the weights 1, 16) are bytes 0-7, the high nibbles paired the same way bytes 8-15. */
static void mxfp4_from_ggml_avx2(uint8_t *blocks, uint8_t *scales, const void *src,
                                 int64_t n_blocks) {
    const uint8_t *in = src;
    const __m128i m4 = _mm_set1_epi8(0x0f), w = _mm_set1_epi16(0x1001);
    for (int64_t b = 0; b < n_blocks; b++, in += GPO_MXFP4_GGML_BLOCK_BYTES) {
        scales[b] = in[0];
        const __m128i q = _mm_loadu_si128((const __m128i *)(in + 1));
        const __m128i lo = _mm_maddubs_epi16(_mm_and_si128(q, m4), w);
        const __m128i hi = _mm_maddubs_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), m4), w);
        _mm_storeu_si128((__m128i *)(blocks + 16 * b), _mm_packus_epi16(lo, hi));
    }
}

/* ---- The clamped SwiGLU (the fast path's) ----
 * As the AVX-512 part's (avx512.c): e^x = 2^n e^r, the same reduction and polynomial
 * with the same constants (GPO_EXP_* in kernels.h);
 * 2^n as the product of two powers of two whose exponents are normal (n is within
 * [-150, 128] after the clamp), so the result overflows to +inf and underflows through
 * the subnormals to 0 as e^x does. */
AI __m256 pow2i(__m256i k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

AI __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(GPO_EXP_LO)), _mm256_set1_ps(GPO_EXP_HI));
    const __m256 magic = _mm256_set1_ps(GPO_EXP_MAGIC);
    const __m256 n =
        _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(GPO_EXP_LOG2E), magic), magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(GPO_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(GPO_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    return _mm256_mul_ps(_mm256_mul_ps(p, pow2i(n1)), pow2i(n2));
}

AI __m256 swiglu8(__m256 g, __m256 l, __m256 alpha_neg, __m256 limit) {
    const __m256 one = _mm256_set1_ps(1.0f);
    g = _mm256_min_ps(g, limit);
    l = _mm256_min_ps(_mm256_max_ps(l, _mm256_sub_ps(_mm256_setzero_ps(), limit)), limit);
    const __m256 e = exp8(_mm256_mul_ps(alpha_neg, g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_add_ps(l, one));
}

static void swiglu_avx2(float *out, const float *gate, const float *lin, int64_t step, int64_t n,
                        float alpha, float limit) {
    if (step != 1 && !(step == 2 && lin == gate + 1)) {
        gpo_swiglu_ref(out, gate, lin, step, n, alpha, limit);
        return;
    }
    const __m256 an = _mm256_set1_ps(-alpha), lim = _mm256_set1_ps(limit);
    const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    int64_t u = 0;
    for (; u + 8 <= n; u += 8) {
        __m256 g, l;
        if (step == 1) {
            g = _mm256_loadu_ps(gate + u);
            l = _mm256_loadu_ps(lin + u);
        } else { /* pairs (g, l): even and odd floats of 16, via in-lane then cross-lane */
            const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(gate + 2 * u), ev);
            const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(gate + 2 * u + 8), ev);
            g = _mm256_permute2f128_ps(a, b, 0x20);
            l = _mm256_permute2f128_ps(a, b, 0x31);
        }
        _mm256_storeu_ps(out + u, swiglu8(g, l, an, lim));
    }
    if (u < n) { /* the tail through a buffer: the same operations on the same values */
        float gb[8] = {0}, lb[8] = {0}, ob[8];
        for (int64_t i = 0; i < n - u; i++) {
            gb[i] = gate[(u + i) * step];
            lb[i] = lin[(u + i) * step];
        }
        _mm256_storeu_ps(ob, swiglu8(_mm256_loadu_ps(gb), _mm256_loadu_ps(lb), an, lim));
        memcpy(out + u, ob, (size_t)(n - u) * 4);
    }
}

static const struct gpo_kernels avx2_table = {
    .name = "avx2",
    .matmul = {[GPO_DT_F32] = matmul_f32_f32_avx2,
               [GPO_DT_F16] = matmul_f16_f32_avx2,
               [GPO_DT_BF16] = matmul_bf16_f32_avx2,
               [GPO_DT_Q8_0] = matmul_q8_0_f32_avx2,
               [GPO_DT_Q8_0X16] = matmul_q8_0x16_f32_avx2},
    .matmul_mxfp4 = matmul_mxfp4_f32_avx2,
    .matmul_mxfp4_q8 = matmul_mxfp4_q8_avx2,
    .quantize_q8 = quantize_q8_avx2,
    .matmul_mxfp4_q16 = matmul_mxfp4_q16_avx2,
    .quantize_q16 = quantize_q16_avx2,
    .matmul_mxfp4_ggml = matmul_mxfp4_ggml_f32_avx2,
    .matmul_mxfp4_ggml_q8 = matmul_mxfp4_ggml_q8_avx2,
    .matmul_mxfp4_ggml_q16 = matmul_mxfp4_ggml_q16_avx2,
    .attn_scores = attn_scores_avx2,
    .attn_scores_rows = attn_scores_rows_avx2,
    .attn_accum = attn_accum_avx2,
    .mxfp4_from_ggml = mxfp4_from_ggml_avx2,
    .swiglu = swiglu_avx2,
};

const struct gpo_kernels *gpo_kernels_avx2(void) { return &avx2_table; }
