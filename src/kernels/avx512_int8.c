/* avx512_int8.c - the AVX-512 "int8" part (F, BW, VL, DQ, VNNI, VBMI): the MXFP4
 * matmuls in both block layouts (f32, int8 and int16 activations), FP4 codes decoded
 * to int8 with byte permutes (vpermb) and integer dot products with vpdpbusd, written
 * with SIMDe's simde_ intrinsics (simd512.h) and compiled natively and against SIMDe. */
#include <stdlib.h>

#include "simd512.h"

#include "kernels.h"

/* ---- The integer paths (int8 and int16 activations): groups of 16 blocks ----
 *
 * A row is taken 16 blocks (512 columns) at a time, a "group".  The group's 256
 * code bytes are loaded as four 64-byte quads (blocks 4k..4k+3 of the group, 16 code
 * bytes each; GGML's 17-byte blocks are gathered into the same form with one
 * two-source byte permute) and transposed as 4 x 4 dwords within each 128-bit lane,
 * so that dword lane l = 4j + k of transposed vector q holds code bytes 4q..4q+3 of
 * block 4k + j.  Every 32-bit lane then belongs to one block: the integer dot
 * products (vpdpbusd for int8 activations, vpdpwssd for int16) accumulate a whole
 * block in one lane, and the group ends as 16 exact block sums in one vector, with
 * no horizontal step (the decode tiles take int16 activations as two byte halves
 * through vpdpbusd instead, see K_Q16S).  The activations are rearranged once per
 * call to match (prepare_q8 / prepare_q16 / prepare_q16s): which nibble of which code
 * byte holds which element is the only thing the two layouts differ in, and it is
 * folded into that rearrangement, so the block sums (exact integers) are the same in both layouts.
 *
 * The fixed reduction order (kernels.h): each output element owns a 16-lane f32
 * accumulator; for group g = 0, 1, ... in increasing order, lane l (block 16g +
 * 4(l%4) + l/4) does acc = fma(float(S), (0.5 * 2^(e-127)) * d, acc) with S the exact
 * integer block sum (absent blocks of a last, partial group contribute +0), and the
 * 16 lanes are summed by gpo_mm512_reduce_add_ps at the end.  The decode path
 * (weights decoded in registers) and the batched one (decoded once into a panel)
 * perform exactly these operations, so the bits of y[t][r] depend on neither n_tok,
 * [r0, r1), the path, nor the layout. */

#define AI GPO_K512_TILE_AI
#define UNROLL(n) GPO_K512_UNROLL(n)

typedef simde__m512i vi;
typedef simde__m512 vf;

enum { MX_ST, MX_GG }; /* safetensors blocks + scales array; GGML 17-byte blocks */
/* K_Q16S: int16 activations in the direct tiles, split into bytes: x = 256 * hi + lo
 * with hi signed and lo unsigned, each multiplied by the int8 weights with vpdpbusd.
 * The weights are decoded as for int8 (no widening to words, which costs the decode
 * a third more instructions: the direct tiles decode a row group for every 1-3
 * tokens), and S = 256 * S_hi + S_lo is the same exact block sum as K_Q16 gives, so
 * the two are interchangeable bit for bit.  The panels keep K_Q16: there the decode
 * is shared by many tokens, and one vpdpwssd per token and vector is cheaper than
 * two vpdpbusd. */
enum { K_Q8, K_Q16, K_Q16S };

/* Weight vectors per group: 8 of bytes (int8, split int16), 16 of words (int16). */
AI int vpg(int kind) { return kind == K_Q16 ? 16 : 8; }
/* Vectors of prepared activations per token and group: the VPG vectors, then the
 * block sums times -12 (the weights enter the dot products as the unsigned fp4 * 2 +
 * 12), then the 16 activation scales d. */
AI int xvecs(int kind) { return kind == K_Q8 ? 10 : 18; }
AI int xdidx(int kind) { return kind == K_Q8 ? 9 : 17; }
/* The -12 * block sums: after the activation vectors (split int16: 8 of hi bytes,
 * then 8 of lo bytes). */
AI int xnidx(int kind) { return kind == K_Q8 ? 8 : 16; }

/* The lane of block b (0..15) of a group, and back (the map is its own inverse). */
AI int lane_of(int b) { return 4 * (b & 3) + (b >> 2); }

/* The element (0..31) of a block behind byte i (0..3) of dword q (0..3) of the
 * block's code bytes, nibble h (0 low, 1 high). */
AI int elem_of(int lay, int q, int h, int i) {
    return lay == MX_GG ? 4 * q + i + 16 * h : 8 * q + 2 * i + h;
}

AI int64_t mx_bytes(int lay) { return lay == MX_GG ? 17 : 16; }

/* The first `n` (0..64) bytes as a load mask. */
AI uint64_t byte_mask(int n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

/* Prefetches base + off (never faults, so the address is formed as an integer). */
AI void prefetch(const void *base, size_t off) {
    __builtin_prefetch((const void *)((uintptr_t)base + off), 0, 3);
}

/* The block scales 0.5 * 2^(e-127) = 2^(e-128) of 16 scale bytes in dword lanes, as
 * exponents for scalef: e - 128, and +inf for e = 255 (whose scale the reference
 * takes as +inf).  group_fma multiplies by the scale with scalef, d * 2^(e-128) in
 * one rounding, which is the reference's (0.5f * gpo_e8m0_to_f32(e)) * d bit for bit:
 * the power of two is exact in f32 (2^-128 a denormal), so both are the exact product
 * rounded once, inf * d included (+-inf, or NaN for d = 0). */
AI vf block_exps(vi e, vf k128, vi k255, vf kinf) {
    const vf f = simde_mm512_sub_ps(gpo_mm512_cvtepi32_ps(e), k128);
    return simde_mm512_mask_mov_ps(f, simde_mm512_cmpeq_epi32_mask(e, k255), kinf);
}

/* The byte indices of decode_group's permutes.  GGML quads: code byte i of block j
 * (0..3) of a quad is byte 17j + 1 + i of the 68 bytes, taken from the load at +0
 * (indices < 64) or, past byte 63, from the load at +4 (64 + byte - 4). */
static const uint8_t gg_codes_idx[64] __attribute__((aligned(64))) = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23,
    24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46,
    47, 48, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 124, 125, 126, 127};
/* Scale bytes to byte 0 of their lane's dword.  Safetensors: the 16 bytes are in
 * block order, lane l takes block lane_of(l).  GGML: the scale of block j of quad k is
 * byte 17j of the quad's load at +0; a two-source permute of quads 0 and 1 fills
 * lanes 4j and 4j + 1, one of quads 2 and 3 lanes 4j + 2 and 4j + 3. */
AI vi st_scales_idx(void) {
    return simde_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
}
AI vi gg_sc01_idx(void) {
    return simde_mm512_setr_epi32(0, 64, 0, 0, 17, 81, 0, 0, 34, 98, 0, 0, 51, 115, 0, 0);
}
AI vi gg_sc23_idx(void) {
    return simde_mm512_setr_epi32(0, 0, 0, 64, 0, 0, 17, 81, 0, 0, 34, 98, 0, 0, 51, 115);
}

/* A whole GGML group from five loads at 64k (decode_group): code byte i of quad k,
 * byte 68k + 17(i/16) + 1 + i%16 of the group, is byte 4k + 17(i/16) + 1 + i%16 of
 * loads k and k + 1 side by side; the scale of block j of quad k, byte 68k + 17j, is
 * byte 17j of load 0 (k = 0), 68 + 17j of loads 0-1 (k = 1), 8 + 17j of load 2
 * (k = 2) and 76 + 17j of loads 2-3 (k = 3). */
#define GGF(k, j) 4 * k + 17 * j + 1, 4 * k + 17 * j + 2, 4 * k + 17 * j + 3, 4 * k + 17 * j + 4, \
    4 * k + 17 * j + 5, 4 * k + 17 * j + 6, 4 * k + 17 * j + 7, 4 * k + 17 * j + 8,             \
    4 * k + 17 * j + 9, 4 * k + 17 * j + 10, 4 * k + 17 * j + 11, 4 * k + 17 * j + 12,          \
    4 * k + 17 * j + 13, 4 * k + 17 * j + 14, 4 * k + 17 * j + 15, 4 * k + 17 * j + 16
#define GGF_Q(k) {GGF(k, 0), GGF(k, 1), GGF(k, 2), GGF(k, 3)}
static const uint8_t gg_full_idx[4][64] __attribute__((aligned(64))) = {
    GGF_Q(0), GGF_Q(1), GGF_Q(2), GGF_Q(3)};
#undef GGF_Q
#undef GGF
AI vi gg_full_sc01_idx(void) {
    return simde_mm512_setr_epi32(0, 68, 0, 0, 17, 85, 0, 0, 34, 102, 0, 0, 51, 119, 0, 0);
}
AI vi gg_full_sc23_idx(void) {
    return simde_mm512_setr_epi32(0, 0, 8, 76, 0, 0, 25, 93, 0, 0, 42, 110, 0, 0, 59, 127);
}

#define LANE0_OF_DWORDS 0x1111111111111111ull /* byte 0 of every dword */
#define SC01_MASK 0x0011001100110011ull        /* byte 0 of dwords 4j and 4j+1 */
#define SC23_MASK 0x1100110011001100ull        /* byte 0 of dwords 4j+2 and 4j+3 */

/* The vectors decode_group uses, made once per tile (dconst_make) and hidden from
 * the optimiser (GPO_K512_IN_REG): left as constants, the compiler rebuilds them
 * element by element inside the loops when registers run short, where a spilled
 * vector costs one load. */
struct dconst {
    vi tbl, low_bytes, st_sc, sc01, sc23, fsc01, fsc23, fidx[4], k255;
    vf k128, kinf;
};

AI struct dconst dconst_make(void) {
    struct dconst c;
    /* The doubled FP4 value + 12 by nibble (see decode_group), in every 128-bit lane. */
    c.tbl = simde_mm512_broadcast_i32x4(
        simde_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    c.low_bytes = simde_mm512_set1_epi16(0x00ff);
    c.st_sc = st_scales_idx();
    c.sc01 = gg_sc01_idx();
    c.sc23 = gg_sc23_idx();
    c.fsc01 = gg_full_sc01_idx();
    c.fsc23 = gg_full_sc23_idx();
    for (int k = 0; k < 4; k++) c.fidx[k] = simde_mm512_load_si512(gg_full_idx[k]);
    c.k255 = simde_mm512_set1_epi32(255);
    c.k128 = simde_mm512_set1_ps(128.0f);
    c.kinf = simde_mm512_set1_ps(INFINITY);
    GPO_K512_IN_REG(c.tbl);
    GPO_K512_IN_REG(c.low_bytes);
    GPO_K512_IN_REG(c.st_sc);
    GPO_K512_IN_REG(c.sc01);
    GPO_K512_IN_REG(c.sc23);
    GPO_K512_IN_REG(c.fsc01);
    GPO_K512_IN_REG(c.fsc23);
    for (int k = 0; k < 4; k++) GPO_K512_IN_REG(c.fidx[k]);
    GPO_K512_IN_REG(c.k255);
    GPO_K512_IN_REG(c.k128);
    GPO_K512_IN_REG(c.kinf);
    return c;
}

/* Group g of row `row` (n_blocks blocks) decoded: w[0..vpg) as described above and
 * the scale exponents of its blocks in lane order (block_exps).  Blocks past the
 * row's end read as code 0 with scale byte 0.  full (a constant where it is
 * inlined): the caller knows the group has all 16 blocks. */
AI void decode_group(int lay, int kind, int full, const struct dconst *dc, const uint8_t *blocks,
                     const uint8_t *scales, int64_t row, int64_t n_blocks, int64_t g, vi *w,
                     vf *hs) {
    const int64_t b0 = 16 * g;
    const int nvb = full ? 16 : (int)(n_blocks - b0 < 16 ? n_blocks - b0 : 16);
    const uint8_t *base = blocks + (row * n_blocks + b0) * mx_bytes(lay);
    vi q[4], a[4];
    if (lay == MX_ST) {
        if (nvb == 16) {
UNROLL(4)
            for (int k = 0; k < 4; k++) q[k] = simde_mm512_loadu_si512(base + 64 * k);
        } else {
            for (int k = 0; k < 4; k++) {
                const int nv = nvb - 4 * k;
                q[k] = nv <= 0 ? simde_mm512_setzero_si512()
                               : gpo_mm512_maskz_loadu_epi8(byte_mask(16 * nv), base + 64 * k);
            }
        }
        const uint8_t *sp = scales + row * n_blocks + b0;
        const vi s = nvb == 16 ? simde_mm512_castsi128_si512(simde_mm_loadu_si128(sp))
                               : gpo_mm512_maskz_loadu_epi8(byte_mask(nvb), sp);
        *hs = block_exps(simde_mm512_maskz_permutexvar_epi8(LANE0_OF_DWORDS, dc->st_sc, s),
                         dc->k128, dc->k255, dc->kinf);
    } else {
        if (nvb == 16) {
            /* The group's 272 bytes as five loads at 64k (the last one 16 bytes): quad k
             * lies within loads k and k + 1. */
            vi l[5];
UNROLL(4)
            for (int k = 0; k < 4; k++) l[k] = simde_mm512_loadu_si512(base + 64 * k);
            l[4] = simde_mm512_castsi128_si512(simde_mm_loadu_si128(base + 256));
UNROLL(4)
            for (int k = 0; k < 4; k++)
                q[k] = simde_mm512_permutex2var_epi8(l[k], dc->fidx[k], l[k + 1]);
            const vi e01 = simde_mm512_maskz_permutex2var_epi8(SC01_MASK, l[0], dc->fsc01, l[1]);
            const vi e23 = simde_mm512_maskz_permutex2var_epi8(SC23_MASK, l[2], dc->fsc23, l[3]);
            *hs = block_exps(simde_mm512_or_si512(e01, e23), dc->k128, dc->k255, dc->kinf);
        } else {
            const vi gi = simde_mm512_load_si512(gg_codes_idx);
            for (int k = 0; k < 4; k++) {
                const int nv = nvb - 4 * k > 4 ? 4 : nvb - 4 * k;
                if (nv <= 0) {
                    a[k] = q[k] = simde_mm512_setzero_si512();
                    continue;
                }
                a[k] = gpo_mm512_maskz_loadu_epi8(byte_mask(17 * nv), base + 68 * k);
                /* Only a whole quad reaches past byte 63. */
                const vi b = nv == 4 ? simde_mm512_loadu_si512(base + 68 * k + 4)
                                     : simde_mm512_setzero_si512();
                q[k] = simde_mm512_permutex2var_epi8(a[k], gi, b);
            }
            const vi e01 = simde_mm512_maskz_permutex2var_epi8(SC01_MASK, a[0], dc->sc01, a[1]);
            const vi e23 = simde_mm512_maskz_permutex2var_epi8(SC23_MASK, a[2], dc->sc23, a[3]);
            *hs = block_exps(simde_mm512_or_si512(e01, e23), dc->k128, dc->k255, dc->kinf);
        }
    }
    /* 4 x 4 dword transpose within each 128-bit lane. */
    const vi t0 = simde_mm512_unpacklo_epi32(q[0], q[1]);
    const vi t1 = simde_mm512_unpackhi_epi32(q[0], q[1]);
    const vi t2 = simde_mm512_unpacklo_epi32(q[2], q[3]);
    const vi t3 = simde_mm512_unpackhi_epi32(q[2], q[3]);
    vi tq[4];
    tq[0] = simde_mm512_unpacklo_epi64(t0, t2);
    tq[1] = simde_mm512_unpackhi_epi64(t0, t2);
    tq[2] = simde_mm512_unpacklo_epi64(t1, t3);
    tq[3] = simde_mm512_unpackhi_epi64(t1, t3);
    /* Nibble lookups: vpermb reads the low six bits of each index byte, so the tables
     * repeat every 16 entries and the high nibble needs only a shift.  The doubled
     * FP4 value + 12 (0..24; the 12 * sum(x) this adds is taken back through the
     * prepared block sums): bytes for vpdpbusd (int8, unsigned), words for vpdpwssd
     * (int16): bytes 0 and 2 of every dword zero-extended with a mask, then bytes 1 and
     * 3 with a shift (lane-preserving; non-negative, so no sign extension, and the
     * mask can run on either vector port, where shifts have one). */
    const vi tbl = dc->tbl, low_bytes = dc->low_bytes;
UNROLL(4)
    for (int k = 0; k < 4; k++) {
        const vi lo = simde_mm512_permutexvar_epi8(tq[k], tbl);
        const vi hi = simde_mm512_permutexvar_epi8(simde_mm512_srli_epi16(tq[k], 4), tbl);
        if (kind != K_Q16) {
            w[2 * k] = lo;
            w[2 * k + 1] = hi;
        } else {
            w[4 * k + 0] = simde_mm512_and_si512(lo, low_bytes);
            w[4 * k + 1] = simde_mm512_srli_epi16(lo, 8);
            w[4 * k + 2] = simde_mm512_and_si512(hi, low_bytes);
            w[4 * k + 3] = simde_mm512_srli_epi16(hi, 8);
        }
    }
}

/* Activations of one token rearranged to match (see the top of this section):
 * n_groups groups of xvecs(kind) vectors.  Int8: vector 2q + h, lane l = block b,
 * byte i = element elem_of(q, h, i) of b.  Int16: vector 4q + 2h + p, lane l, word m =
 * element elem_of(q, h, 2m + p).  Padding blocks are zero (d = 0 too).  A block's
 * elements are put in that order with one permute (vpermb, vpermw), giving its dword
 * of each vector in turn; those are stored one by one (memcpy: the vectors read back
 * are well defined).  Int8 block sums come from vpsadbw on the bytes + 128, int16
 * ones from a plain sum. */
/* The block elements behind byte i of dword 2q + h of the byte-vector layout (int8
 * and split int16): order[4 * (2q + h) + i] = elem_of(q, h, i). */
static void byte_order(int lay, uint8_t order[32]) {
    for (int q = 0; q < 4; q++)
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 4; i++) order[4 * (2 * q + h) + i] = (uint8_t)elem_of(lay, q, h, i);
}

/* Lane l of a prepared group's two trailing vectors: the -12 * block sum at nc, the
 * block's scale at d. */
static void put_sum_scale(char *nc, char *d, int l, int32_t neg12_sum, float scale) {
    memcpy(nc + 4 * l, &neg12_sum, 4);
    memcpy(d + 4 * l, &scale, 4);
}

/* -12 times the sum of an int16 block's values. */
static int32_t q16_neg12_sum(const struct gpo_q16_block *blk) {
    int32_t sum = 0;
    for (int i = 0; i < GPO_QK; i++) sum += blk->qs[i];
    return -12 * sum;
}

static void prepare_q8(int lay, vi *out, const struct gpo_q8_block *xt, int64_t n_blocks) {
    const int64_t ng = (n_blocks + 15) / 16;
    uint8_t idx_b[32];
    byte_order(lay, idx_b);
    const simde__m256i idx = simde_mm256_loadu_si256(idx_b);
    const simde__m256i bias = simde_mm256_set1_epi8((char)0x80);
    for (int64_t g = 0; g < ng; g++) {
        vi *o = out + g * 10;
        memset(o, 0, 10 * sizeof *o);
        char *xb = (char *)o, *nc = (char *)(o + 8), *d = (char *)(o + 9);
        for (int b = 0; b < 16 && 16 * g + b < n_blocks; b++) {
            const struct gpo_q8_block *blk = xt + 16 * g + b;
            const int l = lane_of(b);
            const simde__m256i x = simde_mm256_loadu_si256(blk->qs);
            uint32_t dw[8];
            simde_mm256_storeu_si256(dw, simde_mm256_permutexvar_epi8(idx, x));
            for (int v = 0; v < 8; v++) memcpy(xb + 64 * v + 4 * l, &dw[v], 4);
            uint64_t sad[4];
            simde_mm256_storeu_si256(sad, simde_mm256_sad_epu8(simde_mm256_xor_si256(x, bias),
                                                               simde_mm256_setzero_si256()));
            put_sum_scale(nc, d, l,
                          -12 * ((int32_t)(sad[0] + sad[1] + sad[2] + sad[3]) - 32 * 128),
                          blk->d);
        }
    }
}

static void prepare_q16(int lay, vi *out, const struct gpo_q16_block *xt, int64_t n_blocks) {
    const int64_t ng = (n_blocks + 15) / 16;
    uint16_t idx_w[32];
    for (int q = 0; q < 4; q++)
        for (int h = 0; h < 2; h++)
            for (int p = 0; p < 2; p++)
                for (int m = 0; m < 2; m++)
                    idx_w[2 * (4 * q + 2 * h + p) + m] = (uint16_t)elem_of(lay, q, h, 2 * m + p);
    const vi idx = simde_mm512_loadu_si512(idx_w);
    for (int64_t g = 0; g < ng; g++) {
        vi *o = out + g * 18;
        memset(o, 0, 18 * sizeof *o);
        char *xw = (char *)o, *nc = (char *)(o + 16), *d = (char *)(o + 17);
        for (int b = 0; b < 16 && 16 * g + b < n_blocks; b++) {
            const struct gpo_q16_block *blk = xt + 16 * g + b;
            const int l = lane_of(b);
            uint32_t dw[16];
            simde_mm512_storeu_si512(
                dw, simde_mm512_permutexvar_epi16(idx, simde_mm512_loadu_si512(blk->qs)));
            for (int v = 0; v < 16; v++) memcpy(xw + 64 * v + 4 * l, &dw[v], 4);
            put_sum_scale(nc, d, l, q16_neg12_sum(blk), blk->d);
        }
    }
}

/* Split int16 (K_Q16S): vector 2q + h (hi bytes) and 8 + 2q + h (lo bytes), lane l
 * = block b, byte i = the bytes of element elem_of(q, h, i) of b, as int8 prepares
 * them; then the -12 * block sums and the scales. */
static void prepare_q16s(int lay, vi *out, const struct gpo_q16_block *xt, int64_t n_blocks) {
    const int64_t ng = (n_blocks + 15) / 16;
    uint8_t elem[32];
    byte_order(lay, elem);
    uint16_t idx_w[32];
    for (int j = 0; j < 32; j++) idx_w[j] = elem[j];
    const vi idx = simde_mm512_loadu_si512(idx_w);
    for (int64_t g = 0; g < ng; g++) {
        vi *o = out + g * 18;
        memset(o, 0, 18 * sizeof *o);
        char *xb = (char *)o, *nc = (char *)(o + 16), *d = (char *)(o + 17);
        for (int b = 0; b < 16 && 16 * g + b < n_blocks; b++) {
            const struct gpo_q16_block *blk = xt + 16 * g + b;
            const int l = lane_of(b);
            /* the block's values in byte order, then their high and low bytes */
            const vi x = simde_mm512_permutexvar_epi16(idx, simde_mm512_loadu_si512(blk->qs));
            uint32_t hi[8], lo[8];
            simde_mm256_storeu_si256(hi, simde_mm512_cvtepi16_epi8(simde_mm512_srli_epi16(x, 8)));
            simde_mm256_storeu_si256(lo, simde_mm512_cvtepi16_epi8(x));
            for (int v = 0; v < 8; v++) {
                memcpy(xb + 64 * v + 4 * l, &hi[v], 4);
                memcpy(xb + 64 * (8 + v) + 4 * l, &lo[v], 4);
            }
            put_sum_scale(nc, d, l, q16_neg12_sum(blk), blk->d);
        }
    }
}

/* The exact block sums of one decoded group against one token's group, as 16 int32
 * lanes (two dependency chains; integer, so their split does not matter). */
AI vi group_dot(int kind, const vi *w, const vi *xg) {
    if (kind == K_Q8) {
        vi s0 = simde_mm512_dpbusd_epi32(xg[8], w[0], xg[0]);
        vi s1 = simde_mm512_dpbusd_epi32(simde_mm512_setzero_si512(), w[1], xg[1]);
UNROLL(8)
        for (int v = 2; v < 8; v += 2) {
            s0 = simde_mm512_dpbusd_epi32(s0, w[v], xg[v]);
            s1 = simde_mm512_dpbusd_epi32(s1, w[v + 1], xg[v + 1]);
        }
        return simde_mm512_add_epi32(s0, s1);
    }
    if (kind == K_Q16S) {
        /* weights unsigned against the signed hi bytes; the lo bytes unsigned against
         * the weights (0..24, so also valid signed bytes) */
        vi sh = simde_mm512_setzero_si512(), sl = xg[16];
UNROLL(8)
        for (int v = 0; v < 8; v++) {
            sh = simde_mm512_dpbusd_epi32(sh, w[v], xg[v]);
            sl = simde_mm512_dpbusd_epi32(sl, xg[8 + v], w[v]);
        }
        return simde_mm512_add_epi32(simde_mm512_slli_epi32(sh, 8), sl);
    }
    vi s0 = xg[16], s1 = simde_mm512_setzero_si512();
UNROLL(16)
    for (int v = 0; v < 16; v += 2) {
        s0 = simde_mm512_dpwssd_epi32(s0, w[v], xg[v]);
        s1 = simde_mm512_dpwssd_epi32(s1, w[v + 1], xg[v + 1]);
    }
    return simde_mm512_add_epi32(s0, s1);
}

/* The one per-group accumulation step of the reduction order: ex from block_exps. */
AI vf group_fma(vi s, vf ex, vf d, vf acc) {
    return simde_mm512_fmadd_ps(gpo_mm512_cvtepi32_ps(s), gpo_mm512_scalef_ps(d, ex), acc);
}

/* Software prefetch distance of the row streams (bytes ahead in each row): with the
 * hardware prefetcher alone one-token decode falls short of the core's bandwidth;
 * 8 KiB measured best (2-16 KiB, L1 or L2 hints, all within ~10%). */
#define PF_BYTES 8192

/* Decode and small batches: R rows x T tokens, each group of a row decoded in
 * registers and used for the T tokens.  xp: token t0's prepared activations, xs the
 * vectors per token. */
#define DIRECT_R 4
#define DIRECT_T 3

/* The bytes PF_BYTES ahead of group g of row `row` (and of its scales). */
AI void prefetch_group(int lay, const uint8_t *blocks, const uint8_t *scales, int64_t row,
                       int64_t n_blocks, int64_t g) {
    const size_t off = (size_t)((row * n_blocks + g * 16) * mx_bytes(lay)) + PF_BYTES;
    for (int c = 0; c < (lay == MX_GG ? 5 : 4); c++) prefetch(blocks, off + 64 * (size_t)c);
    if (lay == MX_ST) prefetch(scales, (size_t)(row * n_blocks + g * 16) + PF_BYTES / 16);
}

/* One group of the R rows for the T tokens (see direct_tile). */
AI void direct_group(int lay, int kind, int full, int R, int T, vf acc[DIRECT_R][DIRECT_T],
                     const struct dconst *dc, const uint8_t *blocks, const uint8_t *scales,
                     const vi *xp, int64_t xs, int64_t r, int64_t n_blocks, int64_t g) {
    if (R <= 2 && kind != K_Q16) {
        /* Up to two rows (the tiles of several tokens): both decoded first, then each
         * activation vector loaded once for both, half the loads of the row-by-row
         * form below (5760 x 2880 at 2-3 tokens, one thread: 5-10% faster).  The
         * same integer sums, split differently between the two chains. */
        vi w[2][8];
        vf ex[2];
UNROLL(2)
        for (int i = 0; i < R; i++) {
            prefetch_group(lay, blocks, scales, r + i, n_blocks, g);
            decode_group(lay, kind, full, dc, blocks, scales, r + i, n_blocks, g, w[i], &ex[i]);
        }
UNROLL(4)
        for (int j = 0; j < T; j++) {
            const vi *xg = xp + j * xs + g * xvecs(kind);
            vi sh[2], sl[2];
UNROLL(2)
            for (int i = 0; i < R; i++) {
                sh[i] = kind == K_Q8 ? xg[8] : simde_mm512_setzero_si512();
                sl[i] = kind == K_Q8 ? simde_mm512_setzero_si512() : xg[16];
            }
UNROLL(8)
            for (int v = 0; v < 8; v++) {
                vi xh = xg[v];
                GPO_K512_IN_REG(xh);
                if (kind == K_Q8) {
UNROLL(2)
                    for (int i = 0; i < R; i++) {
                        if (v & 1) sl[i] = simde_mm512_dpbusd_epi32(sl[i], w[i][v], xh);
                        else sh[i] = simde_mm512_dpbusd_epi32(sh[i], w[i][v], xh);
                    }
                } else {
                    vi xl = xg[8 + v];
                    GPO_K512_IN_REG(xl);
UNROLL(2)
                    for (int i = 0; i < R; i++) {
                        sh[i] = simde_mm512_dpbusd_epi32(sh[i], w[i][v], xh);
                        sl[i] = simde_mm512_dpbusd_epi32(sl[i], xl, w[i][v]);
                    }
                }
            }
            const vf d = simde_mm512_castsi512_ps(xg[xdidx(kind)]);
UNROLL(2)
            for (int i = 0; i < R; i++) {
                const vi sum = kind == K_Q8
                                   ? simde_mm512_add_epi32(sh[i], sl[i])
                                   : simde_mm512_add_epi32(simde_mm512_slli_epi32(sh[i], 8), sl[i]);
                acc[i][j] = group_fma(sum, ex[i], d, acc[i][j]);
            }
        }
        return;
    }
UNROLL(4)
    for (int i = 0; i < R; i++) {
        prefetch_group(lay, blocks, scales, r + i, n_blocks, g);
        vi w[16];
        vf ex;
        decode_group(lay, kind, full, dc, blocks, scales, r + i, n_blocks, g, w, &ex);
UNROLL(4)
        for (int j = 0; j < T; j++) {
            const vi *xg = xp + j * xs + g * xvecs(kind);
            acc[i][j] = group_fma(group_dot(kind, w, xg), ex,
                                  simde_mm512_castsi512_ps(xg[xdidx(kind)]), acc[i][j]);
        }
    }
}

/* The whole groups in one loop (no tail checks in the decode), then the partial last
 * one if any: the same operations in the same order as one loop over all groups.
 * With the decode constants built once here (dconst), the tail checks out of the loop
 * and scalef for the scales, one-token decode of 5760 x 2880 on one thread went from
 * 22 to 29 GB/s (int16) and 24 to 33 GB/s (int8) on an AMD EPYC (Zen 5) VM. */
AI void direct_tile(int lay, int kind, int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                    const uint8_t *scales, const vi *xp, int64_t xs, int64_t t0, int64_t r,
                    int64_t n_blocks) {
    const int64_t ngf = n_blocks / 16;
    const struct dconst dc = dconst_make();
    vf acc[DIRECT_R][DIRECT_T];
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_setzero_ps();
    for (int64_t g = 0; g < ngf; g++)
        direct_group(lay, kind, 1, R, T, acc, &dc, blocks, scales, xp, xs, r, n_blocks, g);
    if (ngf * 16 < n_blocks)
        direct_group(lay, kind, 0, R, T, acc, &dc, blocks, scales, xp, xs, r, n_blocks, ngf);
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = gpo_mm512_reduce_add_ps(acc[i][j]);
}

#define DT(LAY, KIND, a, b)                                                                 \
    case a * 8 + b:                                                                         \
        direct_tile(LAY, KIND, a, b, y, ldy, blocks, scales, xp, xs, t0, r, n_blocks);      \
        break;
#define DIRECT_FN(name, LAY, KIND)                                                          \
    static void name(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,            \
                     const uint8_t *scales, const vi *xp, int64_t xs, int64_t t0, int64_t r, \
                     int64_t n_blocks) {                                                    \
        switch (R * 8 + T) {                                                                \
            DT(LAY, KIND, 1, 1) DT(LAY, KIND, 2, 1) DT(LAY, KIND, 3, 1) DT(LAY, KIND, 4, 1)  \
            DT(LAY, KIND, 1, 2) DT(LAY, KIND, 2, 2) DT(LAY, KIND, 1, 3)                     \
        default: direct_tile(LAY, KIND, 2, 3, y, ldy, blocks, scales, xp, xs, t0, r, n_blocks); \
            break;                                                                          \
        }                                                                                   \
    }
DIRECT_FN(direct_st_q8, MX_ST, K_Q8)
DIRECT_FN(direct_gg_q8, MX_GG, K_Q8)
DIRECT_FN(direct_st_q16, MX_ST, K_Q16S)
DIRECT_FN(direct_gg_q16, MX_GG, K_Q16S)
#undef DIRECT_FN
#undef DT

typedef void (*direct_fn)(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                          const uint8_t *scales, const vi *xp, int64_t xs, int64_t t0, int64_t r,
                          int64_t n_blocks);

/* Batches: the groups of a panel of RP rows x KG groups are decoded once per chunk of
 * tokens, and register tiles of MR rows x NT tokens sweep them; the accumulators of
 * the panel's (row, token) pairs wait in acc_buf between column chunks (a store and
 * a reload keep their bits, so the order is the one above). */
#define RP 8
#define KG 4 /* at most; int16 panels take half as many groups (the same bytes) */
/* Groups per column chunk: panel and activation tiles stay within L1. */
AI int kg_of(int kind) { return kind == K_Q8 ? KG : KG / 2; }
#define MR 4
#define NT 4
#define TCMAX 64
/* Stack bytes for prepared activations (a chunk of tokens over all columns). */
#define XBUF_BYTES (192 * 1024)
/* From this many tokens on, the batched path.  Up to 8 tokens (an expert's share of a
 * small decode batch) the direct tiles, re-decoding each row group from L1 for every
 * tile of 3 tokens, stay closer to streaming speed (5760 x 2880, one thread, loaded
 * two-core VM: int8 at 4 / 8 tokens 7.3-7.8 / 5.0-5.3 GB/s against 3.6-5.7 / 4.4-4.7
 * batched; int16 5.2-5.6 / 3.4 against 1.6-5.2 / 1.4-1.6); from 12 tokens the panels
 * win. */
#define PANEL_MIN_TOK 9

AI void panel_tile(int kind, int R, int T, const vi *P, const vf *PH, const vi *xp, int64_t xs,
                   int64_t g0, int kg, vf *ab) {
    const int nv = vpg(kind), pstride = kg_of(kind) * 16;
    for (int g = 0; g < kg; g++) {
        vi s[MR][NT];
        const vi *xg[NT];
UNROLL(4)
        for (int j = 0; j < T; j++) xg[j] = xp + j * xs + (g0 + g) * xvecs(kind);
UNROLL(4)
        for (int i = 0; i < R; i++)
UNROLL(4)
            for (int j = 0; j < T; j++)
                s[i][j] = xg[j][xnidx(kind)];
UNROLL(16)
        for (int v = 0; v < nv; v++) {
            vi wv[MR];
UNROLL(4)
            for (int i = 0; i < R; i++) wv[i] = P[i * pstride + g * 16 + v];
UNROLL(4)
            for (int j = 0; j < T; j++) {
                const vi x = xg[j][v];
UNROLL(4)
                for (int i = 0; i < R; i++)
                    s[i][j] = kind == K_Q8 ? simde_mm512_dpbusd_epi32(s[i][j], wv[i], x)
                                           : simde_mm512_dpwssd_epi32(s[i][j], wv[i], x);
            }
        }
UNROLL(4)
        for (int i = 0; i < R; i++)
UNROLL(4)
            for (int j = 0; j < T; j++)
                ab[i * TCMAX + j] =
                    group_fma(s[i][j], PH[i * kg_of(kind) + g],
                              simde_mm512_castsi512_ps(xg[j][xdidx(kind)]), ab[i * TCMAX + j]);
    }
}

#define PTC(KIND, a, b)                                                                     \
    case a * 8 + b: panel_tile(KIND, a, b, P, PH, xp, xs, g0, kg, ab); break;
#define PANEL_FN(name, KIND)                                                                \
    static void name(int R, int T, const vi *P, const vf *PH, const vi *xp, int64_t xs,     \
                     int64_t g0, int kg, vf *ab) {                                          \
        switch (R * 8 + T) {                                                                \
            PTC(KIND, 1, 1) PTC(KIND, 1, 2) PTC(KIND, 1, 3) PTC(KIND, 1, 4)                 \
            PTC(KIND, 2, 1) PTC(KIND, 2, 2) PTC(KIND, 2, 3) PTC(KIND, 2, 4)                 \
            PTC(KIND, 3, 1) PTC(KIND, 3, 2) PTC(KIND, 3, 3) PTC(KIND, 3, 4)                 \
            PTC(KIND, 4, 1) PTC(KIND, 4, 2) PTC(KIND, 4, 3)                                 \
        default: panel_tile(KIND, MR, NT, P, PH, xp, xs, g0, kg, ab); break;                \
        }                                                                                   \
    }
PANEL_FN(panel_q8, K_Q8)
PANEL_FN(panel_q16, K_Q16)
#undef PANEL_FN
#undef PTC

/* The size of the next tile when n tokens remain for tiles of at most tmax (balanced). */
AI int tile_tokens(int64_t n, int tmax) {
    const int64_t tiles = (n + tmax - 1) / tmax;
    return (int)((n + tiles - 1) / tiles);
}

AI void batched(int lay, int kind, float *y, int64_t ldy, const uint8_t *blocks,
                const uint8_t *scales, const vi *xp, int64_t xs, int64_t tc0, int64_t tc1,
                int64_t r0, int64_t r1, int64_t n_blocks) {
    const int64_t ng = (n_blocks + 15) / 16, rb = n_blocks * mx_bytes(lay);
    vi P[RP * KG * 16];
    vf PH[RP * KG];
    const struct dconst dc = dconst_make();
    vf ab[RP * TCMAX];
    for (int64_t rp0 = r0; rp0 < r1; rp0 += RP) {
        const int64_t rp1 = rp0 + RP < r1 ? rp0 + RP : r1;
        for (int64_t i = 0; i < rp1 - rp0; i++)
            for (int64_t t = 0; t < tc1 - tc0; t++) ab[i * TCMAX + t] = simde_mm512_setzero_ps();
        const int kgk = kg_of(kind);
        for (int64_t g0 = 0; g0 < ng; g0 += kgk) {
            const int kg = (int)(ng - g0 < kgk ? ng - g0 : kgk);
            for (int64_t i = 0; i < rp1 - rp0; i++) {
                for (int g = 0; g < kg; g++)
                    decode_group(lay, kind, 0, &dc, blocks, scales, rp0 + i, n_blocks, g0 + g,
                                 P + (i * kgk + g) * 16, PH + i * kgk + g);
                /* The next chunk of this row, or the same row of the next panel. */
                const int last = g0 + kg == ng;
                const size_t next = (size_t)((last ? rp0 + i + RP : rp0 + i) * rb +
                                             (last ? 0 : (g0 + kg) * 16 * mx_bytes(lay)));
                for (size_t off = 0; off < (size_t)(kgk * 16 * mx_bytes(lay)); off += 64)
                    prefetch(blocks, next + off);
            }
            for (int64_t t = tc0, T; t < tc1; t += T) {
                T = tile_tokens(tc1 - t, NT);
                for (int64_t r = rp0; r < rp1; r += MR) {
                    const int R = (int)(rp1 - r < MR ? rp1 - r : MR);
                    (kind == K_Q8 ? panel_q8 : panel_q16)(
                        R, (int)T, P + (r - rp0) * kgk * 16, PH + (r - rp0) * kgk,
                        xp + (t - tc0) * xs, xs, g0, kg, ab + (r - rp0) * TCMAX + (t - tc0));
                }
            }
        }
        for (int64_t i = 0; i < rp1 - rp0; i++)
            for (int64_t t = tc0; t < tc1; t++)
                y[t * ldy + rp0 + i] = gpo_mm512_reduce_add_ps(ab[i * TCMAX + (t - tc0)]);
    }
}

static void batched_st_q8(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                          const vi *xp, int64_t xs, int64_t tc0, int64_t tc1, int64_t r0,
                          int64_t r1, int64_t n_blocks) {
    batched(MX_ST, K_Q8, y, ldy, blocks, scales, xp, xs, tc0, tc1, r0, r1, n_blocks);
}
static void batched_gg_q8(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                          const vi *xp, int64_t xs, int64_t tc0, int64_t tc1, int64_t r0,
                          int64_t r1, int64_t n_blocks) {
    batched(MX_GG, K_Q8, y, ldy, blocks, scales, xp, xs, tc0, tc1, r0, r1, n_blocks);
}
static void batched_st_q16(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                           const vi *xp, int64_t xs, int64_t tc0, int64_t tc1, int64_t r0,
                           int64_t r1, int64_t n_blocks) {
    batched(MX_ST, K_Q16, y, ldy, blocks, scales, xp, xs, tc0, tc1, r0, r1, n_blocks);
}
static void batched_gg_q16(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                           const vi *xp, int64_t xs, int64_t tc0, int64_t tc1, int64_t r0,
                           int64_t r1, int64_t n_blocks) {
    batched(MX_GG, K_Q16, y, ldy, blocks, scales, xp, xs, tc0, tc1, r0, r1, n_blocks);
}

/* Both integer kinds, both layouts: token chunks whose prepared activations fit the
 * stack buffer (or a heap one for very wide rows), then the direct or batched path.
 * xq points at struct gpo_q8_block or gpo_q16_block rows of ldxq blocks. */
static void matmul_int(int lay, int kind, float *y, int64_t ldy, const uint8_t *blocks,
                       const uint8_t *scales, const void *xq, int64_t ldxq, int64_t n_tok,
                       int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32, ng = (nb + 15) / 16;
    if (r1 <= r0 || n_tok <= 0) return;
    if (nb == 0) { /* an empty sum is 0 */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = 0.0f;
        return;
    }
    const int64_t xs = ng * xvecs(kind); /* vectors per token */
    const int64_t per_tok = xs * (int64_t)sizeof(vi);
    vi xbuf[XBUF_BYTES / sizeof(vi)];
    vi *xp = xbuf, *heap = NULL;
    int64_t tc = XBUF_BYTES / per_tok;
    if (tc > TCMAX) tc = TCMAX;
    if (tc < (n_tok < PANEL_MIN_TOK ? n_tok : NT)) { /* very wide rows */
        tc = n_tok < PANEL_MIN_TOK ? n_tok : NT;
        if (posix_memalign((void **)&heap, 64, (size_t)(tc * per_tok)) != 0) abort();
        xp = heap;
    }
    const int direct = n_tok < PANEL_MIN_TOK;
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += tc) {
        const int64_t tc1 = tc0 + tc < n_tok ? tc0 + tc : n_tok;
        for (int64_t t = tc0; t < tc1; t++) {
            if (kind == K_Q8)
                prepare_q8(lay, xp + (t - tc0) * xs,
                           (const struct gpo_q8_block *)xq + t * ldxq, nb);
            else if (direct)
                prepare_q16s(lay, xp + (t - tc0) * xs,
                             (const struct gpo_q16_block *)xq + t * ldxq, nb);
            else
                prepare_q16(lay, xp + (t - tc0) * xs,
                            (const struct gpo_q16_block *)xq + t * ldxq, nb);
        }
        if (direct) {
            const direct_fn fn = lay == MX_GG ? (kind == K_Q8 ? direct_gg_q8 : direct_gg_q16)
                                              : (kind == K_Q8 ? direct_st_q8 : direct_st_q16);
            /* Rows outermost: a block of rows is read from memory once, and its
             * groups come from L1 for the token tiles after the first. */
            const int rstep = tc1 - tc0 == 1 ? DIRECT_R : 2;
            for (int64_t r = r0; r < r1; r += rstep) {
                const int R = (int)(r1 - r < rstep ? r1 - r : rstep);
                for (int64_t t = tc0, T; t < tc1; t += T) {
                    T = tile_tokens(tc1 - t, DIRECT_T);
                    fn(R, (int)T, y, ldy, blocks, scales, xp + (t - tc0) * xs, xs, t, r, nb);
                }
            }
        } else if (lay == MX_GG) {
            (kind == K_Q8 ? batched_gg_q8 : batched_gg_q16)(y, ldy, blocks, NULL, xp, xs, tc0,
                                                            tc1, r0, r1, nb);
        } else {
            (kind == K_Q8 ? batched_st_q8 : batched_st_q16)(y, ldy, blocks, scales, xp, xs, tc0,
                                                            tc1, r0, r1, nb);
        }
    }
    free(heap);
}

static void matmul_mxfp4_q8_512(float *y, int64_t ldy, const uint8_t *blocks,
                                const uint8_t *scales, const struct gpo_q8_block *xq,
                                int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                int64_t n_cols) {
    matmul_int(MX_ST, K_Q8, y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_q8_512(float *y, int64_t ldy, const void *W,
                                     const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                                     int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_int(MX_GG, K_Q8, y, ldy, W, NULL, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_q16_512(float *y, int64_t ldy, const uint8_t *blocks,
                                 const uint8_t *scales, const struct gpo_q16_block *xq,
                                 int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                 int64_t n_cols) {
    matmul_int(MX_ST, K_Q16, y, ldy, blocks, scales, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_q16_512(float *y, int64_t ldy, const void *W,
                                      const struct gpo_q16_block *xq, int64_t ldxq,
                                      int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    matmul_int(MX_GG, K_Q16, y, ldy, W, NULL, xq, ldxq, n_tok, r0, r1, n_cols);
}

/* ---- Q8_0 weights times int8 activations (the fast path of Q8_0 dense matrices) ----
 *
 * Rows are taken 16 at a time, one per 32-bit lane.  For each block, the 16 rows' 32
 * code bytes are loaded (rows j and j + 8 in the halves of one vector) and transposed
 * as a 16 x 8 matrix of dwords (two rounds of in-lane unpacks, one of qword
 * permutes), so that vector q holds bytes 4q..4q+3 of every row's block, and the 16
 * f16 scales are gathered.  vpdpbusd takes the weight codes as its signed operand and
 * the activations as the unsigned one, four at a time broadcast to every lane: the
 * caller passes them offset by 128 (gpo_q8_offset), and the accumulator starts at
 * -128 times the sum of each row's 32 codes (one more vpdpbusd per dword), so it
 * ends at S, the exact integer sum of the block's 32 products, for 16 rows at once.
 * No horizontal step: y[t][r0..r0+15] is one vector.
 *
 * The fixed reduction order, that of gpo_matmul_q8_0_q8_ref: y[t][r] starts at +0
 * and for b = 0, 1, ... takes acc = fma(float(S), f16(d_w) * d_x, acc).  A row is a
 * lane of its own, so y[t][r] depends on neither n_tok nor [r0, r1) (the lanes past r1
 * of a last, partial group repeat its last row and are not stored). */

/* Tokens per tile: 8 f32 accumulators next to the 8 transposed weight vectors. */
#define Q80_T 8

/* Qword indices of the last transposition round (see q80_load). */
AI vi q80_idx_lo(void) { return simde_mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0); }
AI vi q80_idx_hi(void) { return simde_mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2); }

/* The 16 rows' codes of block b (at byte off of each row): w[q] lane i = bytes
 * 4q..4q+3 of row i.  Z_j holds row j (dwords 0-7) and row j + 8; after the unpacks
 * U_m (m = 0..3) holds in its 128-bit lanes dword m of rows 0-3, dword m + 4 of rows
 * 0-3, dword m of rows 8-11 and dword m + 4 of rows 8-11 (V_m the same for rows 4-7
 * and 12-15), and the qword permutes interleave the two. */
AI void q80_load(const uint8_t *const *row, size_t off, vi lo_idx, vi hi_idx, vi w[8]) {
    vi z[8], u[8];
UNROLL(8)
    for (int j = 0; j < 8; j++)
        z[j] = simde_mm512_inserti64x4(
            simde_mm512_castsi256_si512(simde_mm256_loadu_si256((const void *)(row[j] + off))),
            simde_mm256_loadu_si256((const void *)(row[j + 8] + off)), 1);
UNROLL(2)
    for (int h = 0; h < 2; h++) {
        const vi *a = z + 4 * h;
        const vi t0 = simde_mm512_unpacklo_epi32(a[0], a[1]), t1 = simde_mm512_unpackhi_epi32(a[0], a[1]);
        const vi t2 = simde_mm512_unpacklo_epi32(a[2], a[3]), t3 = simde_mm512_unpackhi_epi32(a[2], a[3]);
        u[4 * h + 0] = simde_mm512_unpacklo_epi64(t0, t2);
        u[4 * h + 1] = simde_mm512_unpackhi_epi64(t0, t2);
        u[4 * h + 2] = simde_mm512_unpacklo_epi64(t1, t3);
        u[4 * h + 3] = simde_mm512_unpackhi_epi64(t1, t3);
    }
UNROLL(4)
    for (int m = 0; m < 4; m++) {
        w[m] = simde_mm512_permutex2var_epi64(u[m], lo_idx, u[4 + m]);
        w[m + 4] = simde_mm512_permutex2var_epi64(u[m], hi_idx, u[4 + m]);
    }
}

/* The activations of Q8_0 x int8 (offset codes, struct gpo_q8_block) and of Q8_0 x
 * int16 split into bytes (struct gpo_q16s_block: x = 256 * (hi - 128) + lo).  For the
 * latter the high bytes take the -128 x sum(w) start, the low bytes start at 0, and
 * S = 256 * S_hi + S_lo is again the exact sum of the 32 products. */
enum { QX_Q8, QX_Q16S };

/* Block b of a 16-row group for tokens t0..t0+T-1: w the transposed codes (q80_load's
 * form), dw the rows' scales; acc[j] takes fma(float(S), dw * d_x, acc[j]). */
AI void q80_block(int kind, int T, vf *acc, const vi *w, vf dw, const void *xq, int64_t ldxq,
                  int64_t t0, int64_t b) {
    const vi k80 = simde_mm512_set1_epi8((char)0x80);
    const size_t xbs = kind == QX_Q8 ? sizeof(struct gpo_q8_block) : sizeof(struct gpo_q16s_block);
    vi c = simde_mm512_setzero_si512();
UNROLL(8)
    for (int q = 0; q < 8; q++) c = simde_mm512_dpbusd_epi32(c, k80, w[q]);
    const vi negc = simde_mm512_sub_epi32(simde_mm512_setzero_si512(), c);
UNROLL(8)
    for (int j = 0; j < T; j++) {
        const uint8_t *xb = (const uint8_t *)xq + ((size_t)((t0 + j) * ldxq + b)) * xbs;
        float d;
        memcpy(&d, xb, 4);
        vi s = negc;
UNROLL(8)
        for (int q = 0; q < 8; q++) {
            int32_t x4;
            memcpy(&x4, xb + 4 + 4 * q, 4);
            s = simde_mm512_dpbusd_epi32(s, simde_mm512_set1_epi32(x4), w[q]);
        }
        if (kind == QX_Q16S) {
            vi sl = simde_mm512_setzero_si512();
UNROLL(8)
            for (int q = 0; q < 8; q++) {
                int32_t x4;
                memcpy(&x4, xb + 36 + 4 * q, 4);
                sl = simde_mm512_dpbusd_epi32(sl, simde_mm512_set1_epi32(x4), w[q]);
            }
            s = simde_mm512_add_epi32(simde_mm512_slli_epi32(s, 8), sl);
        }
        acc[j] = simde_mm512_fmadd_ps(gpo_mm512_cvtepi32_ps(s),
                                      simde_mm512_mul_ps(dw, simde_mm512_set1_ps(d)), acc[j]);
    }
}

/* Tokens t0..t0+T-1 times the 16 rows `row` (nb blocks each); lanes in smask stored
 * to y[t][r..r+15].  pf: the next group's bytes (prefetched to L2 along the way) or
 * NULL. */
AI void q80_tile(int kind, int T, float *y, int64_t ldy, const uint8_t *const *row, vi gidx,
                 uint16_t smask, const void *xq, int64_t ldxq, int64_t t0, int64_t r, int64_t nb,
                 const uint8_t *pf) {
    const vi lo_idx = q80_idx_lo(), hi_idx = q80_idx_hi();
    vf acc[Q80_T];
UNROLL(8)
    for (int j = 0; j < T; j++) acc[j] = simde_mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const size_t off = (size_t)b * sizeof(struct gpo_q8_0_block);
        if (pf)
UNROLL(9)
            for (int l = 0; l < 9; l++)
                __builtin_prefetch(pf + (size_t)b * 544 + 64 * (size_t)l, 0, 2);
        vi w[8];
        q80_load(row, off + 2, lo_idx, hi_idx, w);
        const vf dw = gpo_mm512_cvtph_ps(
            gpo_mm512_cvtepi32_epi16(gpo_mm512_i32gather_epi32(gidx, row[0] + off)));
        q80_block(kind, T, acc, w, dw, xq, ldxq, t0, b);
    }
UNROLL(8)
    for (int j = 0; j < T; j++) gpo_mm512_mask_storeu_ps(y + (t0 + j) * ldy + r, smask, acc[j]);
}

static void q80_tile_any(int kind, int T, float *y, int64_t ldy, const uint8_t *const *row,
                         vi gidx, uint16_t smask, const void *xq, int64_t ldxq, int64_t t0,
                         int64_t r, int64_t nb, const uint8_t *pf) {
#define QT(k, n)                                                                            \
    case k * 8 + n - 1: q80_tile(k, n, y, ldy, row, gidx, smask, xq, ldxq, t0, r, nb, pf); break;
    switch (kind * 8 + T - 1) {
        QT(QX_Q8, 1) QT(QX_Q8, 2) QT(QX_Q8, 3) QT(QX_Q8, 4) QT(QX_Q8, 5) QT(QX_Q8, 6)
        QT(QX_Q8, 7) QT(QX_Q8, 8) QT(QX_Q16S, 1) QT(QX_Q16S, 2) QT(QX_Q16S, 3)
        QT(QX_Q16S, 4) QT(QX_Q16S, 5) QT(QX_Q16S, 6) QT(QX_Q16S, 7)
    default: q80_tile(QX_Q16S, 8, y, ldy, row, gidx, smask, xq, ldxq, t0, r, nb, pf); break;
    }
#undef QT
}

/* Groups of 16 rows outermost, tokens in balanced tiles of at most 8; while a group
 * is computed the next one (rows below r1) is prefetched into L2 (its bytes follow the
 * group's: the rows are consecutive). */
static void q80_matmul(int kind, float *y, int64_t ldy, const void *W, const void *xq,
                       int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32, rb = nb * (int64_t)sizeof(struct gpo_q8_0_block);
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r += 16) {
        const int n = (int)(r1 - r < 16 ? r1 - r : 16);
        const uint8_t *row[16];
        int32_t gi[16];
        for (int i = 0; i < 16; i++) {
            row[i] = w + (r + (i < n ? i : n - 1)) * rb;
            gi[i] = (int32_t)((i < n ? i : n - 1) * rb);
        }
        const vi gidx = simde_mm512_loadu_si512((const void *)gi);
        const uint16_t smask = (uint16_t)((1u << n) - 1);
        const uint8_t *pf = r + 32 <= r1 ? w + (r + 16) * rb : NULL;
        for (int64_t t = 0, T; t < n_tok; t += T) {
            T = tile_tokens(n_tok - t, Q80_T);
            q80_tile_any(kind, (int)T, y, ldy, row, gidx, smask, xq, ldxq, t, r, nb, t ? NULL : pf);
        }
    }
}

static void matmul_q8_0_q8_512(float *y, int64_t ldy, const void *W,
                               const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                               int64_t r0, int64_t r1, int64_t n_cols) {
    q80_matmul(QX_Q8, y, ldy, W, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_q8_0_q16s_512(float *y, int64_t ldy, const void *W,
                                 const struct gpo_q16s_block *xq, int64_t ldxq, int64_t n_tok,
                                 int64_t r0, int64_t r1, int64_t n_cols) {
    q80_matmul(QX_Q16S, y, ldy, W, xq, ldxq, n_tok, r0, r1, n_cols);
}

/* ---- Q8_0x16 weights times int8 / split int16 activations ----
 *
 * The same arithmetic and order as q80_tile (the same bits, q80_block), on weights
 * repacked at load (kernels.h): block b of a group of 16 rows is 8 64-byte vectors
 * already in the transposed form q80_load builds, and 16 f16 scales in one 32-byte
 * load.  So a block costs 9 loads and no shuffles instead of 16 loads, 32 shuffles
 * and a gather.  A group is one stream of whole cache lines, which the hardware
 * prefetcher follows: at one token, one core streamed it from DRAM 1.4x faster than
 * Q8_0 read in place, where the same bytes with the scales of a group after all its
 * codes (a second stream and a gap) had streamed no faster than Q8_0. */

/* One group (G its bytes); lanes in smask stored to y[t][r..r+15] (r the group's first
 * row). */
AI void q8x16_tile(int kind, int T, float *y, int64_t ldy, const uint8_t *G, uint16_t smask,
                   const void *xq, int64_t ldxq, int64_t t0, int64_t r, int64_t nb,
                   const uint8_t *pf) {
    vf acc[Q80_T];
UNROLL(8)
    for (int j = 0; j < T; j++) acc[j] = simde_mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        if (pf)
UNROLL(9)
            for (int l = 0; l < 9; l++) __builtin_prefetch(pf + (size_t)b * 544 + 64 * (size_t)l, 0, 2);
        const uint8_t *codes = G + gpo_q8x16_codes(b);
        vi w[8];
UNROLL(8)
        for (int q = 0; q < 8; q++) w[q] = simde_mm512_loadu_si512((const void *)(codes + 64 * (size_t)q));
        const vf dw = gpo_mm512_cvtph_ps(simde_mm256_loadu_si256((const void *)(G + gpo_q8x16_scales(b, nb))));
        q80_block(kind, T, acc, w, dw, xq, ldxq, t0, b);
    }
UNROLL(8)
    for (int j = 0; j < T; j++) gpo_mm512_mask_storeu_ps(y + (t0 + j) * ldy + r, smask, acc[j]);
}

static void q8x16_tile_any(int kind, int T, float *y, int64_t ldy, const uint8_t *G,
                           uint16_t smask, const void *xq, int64_t ldxq, int64_t t0, int64_t r,
                           int64_t nb, const uint8_t *pf) {
#define QT(k, n)                                                                            \
    case k * 8 + n - 1: q8x16_tile(k, n, y, ldy, G, smask, xq, ldxq, t0, r, nb, pf); break;
    switch (kind * 8 + T - 1) {
        QT(QX_Q8, 1) QT(QX_Q8, 2) QT(QX_Q8, 3) QT(QX_Q8, 4) QT(QX_Q8, 5) QT(QX_Q8, 6)
        QT(QX_Q8, 7) QT(QX_Q8, 8) QT(QX_Q16S, 1) QT(QX_Q16S, 2) QT(QX_Q16S, 3)
        QT(QX_Q16S, 4) QT(QX_Q16S, 5) QT(QX_Q16S, 6) QT(QX_Q16S, 7)
    default: q8x16_tile(QX_Q16S, 8, y, ldy, G, smask, xq, ldxq, t0, r, nb, pf); break;
    }
#undef QT
}

/* The groups that hold rows [r0, r1), outermost (each is read once per call), tokens
 * in balanced tiles of at most 8; a group's lanes outside [r0, r1) are computed but
 * not stored. */
static void q8x16_matmul(int kind, float *y, int64_t ldy, const void *W, const void *xq,
                         int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32, gbytes = nb * 16 * (int64_t)sizeof(struct gpo_q8_0_block);
    const int64_t g0 = r0 / 16, g1 = (r1 + 15) / 16;
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *G = (const uint8_t *)W + g * gbytes;
        const int64_t lo = r0 > 16 * g ? r0 - 16 * g : 0, hi = r1 < 16 * g + 16 ? r1 - 16 * g : 16;
        const uint16_t smask = (uint16_t)(((1u << hi) - 1) & ~((1u << lo) - 1));
        /* The next group is prefetched to L2 along the way where the tiles are slow
         * enough to leave the hardware prefetcher behind (four int8 or two int16
         * tokens on): there it streamed 1.2-1.6x faster from DRAM at 8 tokens, while
         * at one token it cost a quarter of the rate. */
        const uint8_t *pf = g + 1 < g1 && n_tok * (kind == QX_Q16S ? 2 : 1) >= 4 ? G + gbytes : NULL;
        for (int64_t t = 0, T; t < n_tok; t += T) {
            T = tile_tokens(n_tok - t, Q80_T);
            q8x16_tile_any(kind, (int)T, y, ldy, G, smask, xq, ldxq, t, 16 * g, nb, t ? NULL : pf);
        }
    }
}

static void matmul_q8_0x16_q8_512(float *y, int64_t ldy, const void *W,
                                  const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                                  int64_t r0, int64_t r1, int64_t n_cols) {
    q8x16_matmul(QX_Q8, y, ldy, W, xq, ldxq, n_tok, r0, r1, n_cols);
}

static void matmul_q8_0x16_q16s_512(float *y, int64_t ldy, const void *W,
                                    const struct gpo_q16s_block *xq, int64_t ldxq,
                                    int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8x16_matmul(QX_Q16S, y, ldy, W, xq, ldxq, n_tok, r0, r1, n_cols);
}

/* ---- The exact path (f32 activations) ----
 *
 * Each output element owns a 16-lane f32 accumulator; lane l takes the columns
 * c = 16v + l for v = 0, 1, ... in increasing order, one FMA each with the weight
 * fp4 * 2^(e-127) (exact in f32), and gpo_mm512_reduce_add_ps sums the lanes at the
 * end.  A block is decoded to its 32 weights in column order (two vectors): a byte
 * permute puts the code byte of each element in its dword, a variable shift brings
 * the element's nibble down, and vpermps looks the value up (it reads only the low
 * four bits of the index).  The two layouts differ only in those permute and shift
 * constants.  The decode path (in registers) and the batched one (through an f32
 * panel) do the same FMAs in the same order. */

AI vf e8_scale(uint8_t e) {
    return simde_mm512_castsi512_ps(
        simde_mm512_set1_epi32(e == 0 ? 0x00400000 : (int32_t)((uint32_t)e << 23)));
}

struct f32_consts {
    vi idx[2], sh[2]; /* per half of the block (elements 0-15, 16-31) */
    vf vals;          /* the 16 FP4 values */
};

AI struct f32_consts f32_consts(int lay) {
    struct f32_consts k;
    if (lay == MX_ST) { /* element 2i + h: byte i, nibble h */
        k.idx[0] = simde_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        k.idx[1] = simde_mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8,
                                         8);
        k.sh[0] = k.sh[1] = simde_mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    } else { /* element j + 16h: byte j, nibble h */
        k.idx[0] = k.idx[1] =
            simde_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        k.sh[0] = simde_mm512_setzero_si512();
        k.sh[1] = simde_mm512_set1_epi32(4);
    }
    k.vals = simde_mm512_loadu_ps(gpo_fp4_values);
    return k;
}

/* Block rb of either layout as 32 f32 weights in column order. */
AI void f32_decode(int lay, const struct f32_consts *k, const uint8_t *blocks,
                   const uint8_t *scales, int64_t rb, vf out[2]) {
    const uint8_t *c = blocks + rb * mx_bytes(lay) + (lay == MX_GG);
    /* The 16 values times the scale: every product is exact, as per element. */
    const uint8_t e = lay == MX_GG ? blocks[rb * 17] : scales[rb];
    const vf vals = simde_mm512_mul_ps(k->vals, e8_scale(e));
    const vi v = simde_mm512_castsi128_si512(simde_mm_loadu_si128(c));
UNROLL(2)
    for (int h = 0; h < 2; h++) {
        /* idx[h] holds dword indices: byte 4l of the permute's index is what counts */
        vi b = simde_mm512_maskz_permutexvar_epi8(LANE0_OF_DWORDS, k->idx[h], v);
        if (lay == MX_ST || h == 1) b = simde_mm512_srlv_epi32(b, k->sh[h]);
        out[h] = simde_mm512_permutexvar_ps(b, vals);
    }
}

#define F_DIRECT_R 4
#define F_DIRECT_T 2
#define F_PF_BYTES 4096

AI void f32_tile(int lay, int R, int T, float *y, int64_t ldy, const uint8_t *blocks,
                 const uint8_t *scales, const float *x, int64_t ldx, int64_t t0, int64_t r,
                 int64_t n_cols) {
    const struct f32_consts k = f32_consts(lay);
    const int64_t nb = n_cols / 32;
    vf acc[F_DIRECT_R][F_DIRECT_T];
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) acc[i][j] = simde_mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
UNROLL(4)
        for (int i = 0; i < R; i++) {
            const int64_t rb = (r + i) * nb + b;
            if ((b & 3) == 0) /* one prefetch per cache line of the row stream */
                prefetch(blocks, (size_t)(rb * mx_bytes(lay)) + F_PF_BYTES);
            vf w[2];
            f32_decode(lay, &k, blocks, scales, rb, w);
UNROLL(4)
            for (int j = 0; j < T; j++) {
                const float *xb = x + (t0 + j) * ldx + b * 32;
                acc[i][j] = simde_mm512_fmadd_ps(w[0], simde_mm512_loadu_ps(xb), acc[i][j]);
                acc[i][j] = simde_mm512_fmadd_ps(w[1], simde_mm512_loadu_ps(xb + 16), acc[i][j]);
            }
        }
    }
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) y[(t0 + j) * ldy + r + i] = gpo_mm512_reduce_add_ps(acc[i][j]);
}

#define FT(LAY, a, b)                                                                       \
    case a * 8 + b: f32_tile(LAY, a, b, y, ldy, blocks, scales, x, ldx, t0, r, n_cols); break;
#define F32_TILE_FN(name, LAY)                                                              \
    static void name(int R, int T, float *y, int64_t ldy, const uint8_t *blocks,            \
                     const uint8_t *scales, const float *x, int64_t ldx, int64_t t0,        \
                     int64_t r, int64_t n_cols) {                                           \
        switch (R * 8 + T) {                                                                \
            FT(LAY, 1, 1) FT(LAY, 2, 1) FT(LAY, 3, 1) FT(LAY, 4, 1) FT(LAY, 1, 2)           \
            FT(LAY, 2, 2) FT(LAY, 3, 2)                                                     \
        default: f32_tile(LAY, 4, 2, y, ldy, blocks, scales, x, ldx, t0, r, n_cols); break; \
        }                                                                                   \
    }
F32_TILE_FN(f32_tile_st, MX_ST)
F32_TILE_FN(f32_tile_gg, MX_GG)
#undef F32_TILE_FN
#undef FT

/* Batches: a panel of F_RP rows x F_KC columns decoded to f32 once per chunk of
 * tokens, F_MR x F_NT register tiles over it; accumulators wait in acc_buf between
 * column chunks (bit-preserving). */
#define F_KC 512
#define F_RP 8
#define F_MR 4
#define F_NT 4
#define F_TC 64
#define F_PANEL_MIN_TOK 4

AI void f32_panel_tile(int R, int T, const float *P, const float *x, int64_t ldx, int64_t kn,
                       vf *ab, int first, int last, float *y, int64_t ldy) {
    vf acc[F_MR][F_NT];
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++)
            acc[i][j] = first ? simde_mm512_setzero_ps() : ab[i * F_TC + j];
    for (int64_t c = 0; c < kn; c += 16) {
        vf w[F_MR];
UNROLL(4)
        for (int i = 0; i < R; i++) w[i] = simde_mm512_loadu_ps(P + i * F_KC + c);
UNROLL(4)
        for (int j = 0; j < T; j++) {
            const vf xv = simde_mm512_loadu_ps(x + j * ldx + c);
UNROLL(4)
            for (int i = 0; i < R; i++) acc[i][j] = simde_mm512_fmadd_ps(w[i], xv, acc[i][j]);
        }
    }
UNROLL(4)
    for (int i = 0; i < R; i++)
UNROLL(4)
        for (int j = 0; j < T; j++) {
            if (last) y[j * ldy + i] = gpo_mm512_reduce_add_ps(acc[i][j]);
            else ab[i * F_TC + j] = acc[i][j];
        }
}

static void f32_panel_tile_any(int R, int T, const float *P, const float *x, int64_t ldx,
                               int64_t kn, vf *ab, int first, int last, float *y, int64_t ldy) {
#define FP(a, b)                                                                            \
    case a * 8 + b: f32_panel_tile(a, b, P, x, ldx, kn, ab, first, last, y, ldy); break;
    switch (R * 8 + T) {
        FP(1, 1) FP(1, 2) FP(1, 3) FP(1, 4)
        FP(2, 1) FP(2, 2) FP(2, 3) FP(2, 4)
        FP(3, 1) FP(3, 2) FP(3, 3) FP(3, 4)
        FP(4, 1) FP(4, 2) FP(4, 3)
    default: f32_panel_tile(F_MR, F_NT, P, x, ldx, kn, ab, first, last, y, ldy); break;
    }
#undef FP
}

AI void f32_batched(int lay, float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                    const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                    int64_t n_cols) {
    const struct f32_consts k = f32_consts(lay);
    const int64_t nb = n_cols / 32;
    float P[F_RP * F_KC] __attribute__((aligned(64)));
    vf ab[F_RP * F_TC];
    for (int64_t tc0 = 0; tc0 < n_tok; tc0 += F_TC) {
        const int64_t tc1 = tc0 + F_TC < n_tok ? tc0 + F_TC : n_tok;
        for (int64_t rp0 = r0; rp0 < r1; rp0 += F_RP) {
            const int64_t rp1 = rp0 + F_RP < r1 ? rp0 + F_RP : r1;
            for (int64_t k0 = 0; k0 < n_cols; k0 += F_KC) {
                const int64_t kn = n_cols - k0 < F_KC ? n_cols - k0 : F_KC;
                const int first = k0 == 0, last = k0 + kn == n_cols;
                for (int64_t i = 0; i < rp1 - rp0; i++) {
                    for (int64_t b = k0 / 32; b < (k0 + kn) / 32; b++) {
                        vf w[2];
                        f32_decode(lay, &k, blocks, scales, (rp0 + i) * nb + b, w);
                        simde_mm512_store_ps(P + i * F_KC + b * 32 - k0, w[0]);
                        simde_mm512_store_ps(P + i * F_KC + b * 32 - k0 + 16, w[1]);
                    }
                    const int64_t next =
                        last ? (rp0 + i + F_RP) * nb : (rp0 + i) * nb + (k0 + kn) / 32;
                    const size_t off = (size_t)(next * mx_bytes(lay));
                    for (size_t o = 0; o < (size_t)(F_KC / 32 * mx_bytes(lay)); o += 64)
                        prefetch(blocks, off + o);
                    if (lay == MX_ST) prefetch(scales, (size_t)next);
                }
                for (int64_t t = tc0, T; t < tc1; t += T) {
                    T = tile_tokens(tc1 - t, F_NT);
                    for (int64_t r = rp0; r < rp1; r += F_MR) {
                        const int R = (int)(rp1 - r < F_MR ? rp1 - r : F_MR);
                        f32_panel_tile_any(R, (int)T, P + (r - rp0) * F_KC, x + t * ldx + k0, ldx,
                                           kn, ab + (r - rp0) * F_TC + (t - tc0), first, last,
                                           y + t * ldy + r, ldy);
                    }
                }
            }
        }
    }
}

static void f32_batched_st(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                           const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                           int64_t n_cols) {
    f32_batched(MX_ST, y, ldy, blocks, scales, x, ldx, n_tok, r0, r1, n_cols);
}
static void f32_batched_gg(float *y, int64_t ldy, const uint8_t *blocks, const float *x,
                           int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    f32_batched(MX_GG, y, ldy, blocks, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_f32(int lay, float *y, int64_t ldy, const uint8_t *blocks,
                       const uint8_t *scales, const float *x, int64_t ldx, int64_t n_tok,
                       int64_t r0, int64_t r1, int64_t n_cols) {
    if (r1 <= r0 || n_tok <= 0) return;
    if (n_cols < 32) { /* an empty sum is 0 */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = 0.0f;
        return;
    }
    if (n_tok >= F_PANEL_MIN_TOK) {
        if (lay == MX_GG) f32_batched_gg(y, ldy, blocks, x, ldx, n_tok, r0, r1, n_cols);
        else f32_batched_st(y, ldy, blocks, scales, x, ldx, n_tok, r0, r1, n_cols);
        return;
    }
    for (int64_t r = r0; r < r1; r += F_DIRECT_R) {
        const int R = (int)(r1 - r < F_DIRECT_R ? r1 - r : F_DIRECT_R);
        for (int64_t t = 0, T; t < n_tok; t += T) {
            T = tile_tokens(n_tok - t, F_DIRECT_T);
            if (lay == MX_GG) f32_tile_gg(R, (int)T, y, ldy, blocks, NULL, x, ldx, t, r, n_cols);
            else f32_tile_st(R, (int)T, y, ldy, blocks, scales, x, ldx, t, r, n_cols);
        }
    }
}

static void matmul_mxfp4_512(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                             const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                             int64_t n_cols) {
    matmul_f32(MX_ST, y, ldy, blocks, scales, x, ldx, n_tok, r0, r1, n_cols);
}

static void matmul_mxfp4_ggml_512(float *y, int64_t ldy, const void *W, const float *x,
                                  int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                  int64_t n_cols) {
    matmul_f32(MX_GG, y, ldy, W, NULL, x, ldx, n_tok, r0, r1, n_cols);
}

void GPO_K512(fill_int8)(struct gpo_kernels *t) {
    t->matmul_mxfp4 = matmul_mxfp4_512;
    t->matmul_mxfp4_ggml = matmul_mxfp4_ggml_512;
    t->matmul_mxfp4_q8 = matmul_mxfp4_q8_512;
    t->matmul_mxfp4_ggml_q8 = matmul_mxfp4_ggml_q8_512;
    t->matmul_mxfp4_q16 = matmul_mxfp4_q16_512;
    t->matmul_mxfp4_ggml_q16 = matmul_mxfp4_ggml_q16_512;
    t->matmul_q8_0_q8 = matmul_q8_0_q8_512;
    t->matmul_q8_0_q16s = matmul_q8_0_q16s_512;
    t->matmul_q8_0x16_q8 = matmul_q8_0x16_q8_512;
    t->matmul_q8_0x16_q16s = matmul_q8_0x16_q16s_512;
}
