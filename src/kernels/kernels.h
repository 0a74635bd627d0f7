/* kernels.h - the hot operations of the forward pass behind one dispatch table.
 * Every kernel has a plain scalar reference in ref.c; SIMD variants (avx2.c,
 * avx512.c) fill the same table and are chosen once at start-up from the CPU's
 * features.  Kernels are single-threaded: callers split rows across threads.
 *
 * Determinism contract: the value written for one output element (row r, token t)
 * depends only on that row's weights and that token's activations, reduced in a
 * fixed order; never on n_tok, on [r0, r1) or on the other tokens.  That is what
 * makes results bit-identical across thread counts and batch compositions. */
#ifndef GPO_KERNELS_H
#define GPO_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* Element types of weight tensors. */
enum gpo_dtype {
    GPO_DT_F32 = 0,
    GPO_DT_F16,
    GPO_DT_BF16,
    GPO_DT_U8,
    GPO_DT_I32,
    GPO_DT_I64,
    GPO_DT_F64,
    GPO_DT_I8,
    GPO_DT_I16,
    GPO_DT_U16,
    GPO_DT_U32,
    GPO_DT_U64,
    GPO_DT_BOOL,
    GPO_DT_F8_E4M3,
    GPO_DT_F8_E5M2,
    GPO_DT_Q8_0, /* in memory only (--dense q8): rows of struct gpo_q8_0_block */
    GPO_DT_Q8_0X16, /* in memory only: Q8_0 rows interleaved 16 at a time (below) */
    GPO_DT_COUNT_
};

/* An activation quantised to int8 per block of 32 (the fast path): x[i] = d * qs[i]. */
#define GPO_QK 32
struct gpo_q8_block {
    float d;
    int8_t qs[GPO_QK];
};

/* A weight block of the --dense q8 requantisation (the Q8_0 layout): w[i] =
 * f16(d) * qs[i].  A row of n_cols weights is n_cols/32 consecutive blocks. */
struct __attribute__((packed)) gpo_q8_0_block {
    uint16_t d; /* f16 */
    int8_t qs[GPO_QK];
};

/* Q8_0x16: the values of a Q8_0 matrix with rows a multiple of 16, interleaved for
 * the AVX-512 int8 tiles (one 32-bit lane per row), the same bytes in all.  Group g
 * (rows 16g..16g+15) takes nb * 544 bytes (nb = n_cols/32) from W + g*nb*544, block b
 * of it 544 bytes: 512 bytes of codes, byte 64q + 4i + k being code 4q + k of row
 * 16g + i (so the 16 rows' codes 4q..4q+3 are one 64-byte vector), and 16 f16
 * scales, element i that of row 16g + i.  Blocks go in pairs, so that the group is
 * one stream of whole cache lines: pair p (blocks 2p and 2p + 1) at 1088p holds the
 * two blocks' codes, then their scales; a last block without a pair, its codes then
 * its scales.  A row range [16a, 16b) is a contiguous slice, as for Q8_0. */
#define GPO_Q8X16_ROWS 16
/* Offsets in a group of block b's codes and scales (nb blocks). */
static inline size_t gpo_q8x16_codes(int64_t b) { return (size_t)(b >> 1) * 1088 + (size_t)(b & 1) * 512; }
static inline size_t gpo_q8x16_scales(int64_t b, int64_t nb) {
    return (size_t)(b >> 1) * 1088 + ((b | 1) < nb ? 1024 : 512) + (size_t)(b & 1) * 32;
}
/* The widest Q8_0x16 matrix (the exact path unpacks a row into a buffer on the stack). */
#define GPO_Q8X16_MAX_COLS 8192
/* Repacks rows x n_cols of Q8_0 blocks (rows a multiple of 16) into Q8_0x16 at dst. */
void gpo_q8_0x16_pack(void *dst, const struct gpo_q8_0_block *src, int64_t rows, int64_t n_cols);
/* Row r of a Q8_0x16 matrix back as n_cols/32 Q8_0 blocks (for the exact path). */
void gpo_q8_0x16_row(struct gpo_q8_0_block *dst, const void *W, int64_t r, int64_t n_cols);

/* An activation quantised to int16 per block of 32: x[i] = d * qs[i], d = amax/32767.
 * Nearly exact (relative error ~1.5e-5 of the block maximum). */
struct gpo_q16_block {
    float d;
    int16_t qs[GPO_QK];
};

/* The E2M1 values of the 16 FP4 codes (spec 3.2). */
extern const float gpo_fp4_values[16];

/* 2^(e - 127) for an E8M0 scale byte, as the reference computes it (e = 0 gives
 * 2^-127, e = 255 gives 2^128). */
static inline float gpo_e8m0_to_f32(uint8_t e) {
    union { uint32_t u; float f; } v;
    if (e == 0) { v.u = 0x00400000u; return v.f; }
    if (e == 255) { v.u = 0x7f800000u; return v.f; } /* 2^128 is +inf in float */
    v.u = (uint32_t)e << 23;
    return v.f;
}

/* y[t*ldy + r] = sum_c W[r][c] * x[t*ldx + c] for r in [r0, r1), t in [0, n_tok).
 * W is row-major [rows][n_cols] of the named type. */
typedef void (*gpo_matmul_fn)(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                              int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);

/* MXFP4 weights: blocks [rows][n_cols/32][16] (low nibble = even element), scales
 * [rows][n_cols/32] E8M0.  n_cols is a multiple of 32. */
typedef void (*gpo_matmul_mxfp4_fn)(float *y, int64_t ldy, const uint8_t *blocks,
                                    const uint8_t *scales, const float *x, int64_t ldx,
                                    int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);

/* Fast path: MXFP4 weights times int8-quantised activations xq [n_tok][n_cols/32],
 * token t's blocks start at xq + t*ldxq. */
typedef void (*gpo_matmul_mxfp4_q8_fn)(float *y, int64_t ldy, const uint8_t *blocks,
                                       const uint8_t *scales, const struct gpo_q8_block *xq,
                                       int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                       int64_t n_cols);

/* Quantise n (multiple of 32) floats to int8 blocks (round to nearest, d = amax/127). */
typedef void (*gpo_quantize_q8_fn)(struct gpo_q8_block *out, const float *x, int64_t n);

/* MXFP4 weights times int16-quantised activations xq [n_tok][n_cols/32]: the
 * integer block sums are exact, then each is scaled by 0.5 * 2^(e-127) * d. */
typedef void (*gpo_matmul_mxfp4_q16_fn)(float *y, int64_t ldy, const uint8_t *blocks,
                                        const uint8_t *scales, const struct gpo_q16_block *xq,
                                        int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                                        int64_t n_cols);
/* Quantise n (multiple of 32) floats to int16 blocks (round to nearest even,
 * d = amax/32767). */
typedef void (*gpo_quantize_q16_fn)(struct gpo_q16_block *out, const float *x, int64_t n);

/* MXFP4 in GGML's block layout (GGUF tensor type 39, spec 3.5), the layout the MXFP4
 * expert tensors of a GGUF file have: each block of 32 elements is its E8M0 scale byte
 * followed by 16 code bytes, element j (0..15) in the low nibble of qs[j] and element
 * j + 16 in its high nibble.  An element's value is FP4[code] * 2^(e-127), exactly as
 * in the safetensors layout (GGML's table of doubled values times its halved scale
 * gives the same numbers), and the scale byte is the same byte.  A row of n_cols
 * weights is n_cols/32 consecutive blocks: row r of a matrix W starts at
 * (const uint8_t *)W + r * (n_cols/32) * 17, so a GGUF tensor is used in place from
 * the mapped file.  The blocks have no alignment. */
#define GPO_MXFP4_GGML_BLOCK_BYTES 17
struct __attribute__((packed)) gpo_mxfp4_ggml_block {
    uint8_t e;      /* E8M0 scale */
    uint8_t qs[16]; /* codes: low nibbles elements 0-15, high nibbles 16-31 */
};
_Static_assert(sizeof(struct gpo_mxfp4_ggml_block) == GPO_MXFP4_GGML_BLOCK_BYTES,
               "GGML MXFP4 blocks are 17 bytes");

/* The three MXFP4 matmuls on GGML blocks: W is [rows][n_cols/32] blocks, everything
 * else as in gpo_matmul_mxfp4_fn, gpo_matmul_mxfp4_q8_fn and gpo_matmul_mxfp4_q16_fn.
 * Each gives, bit for bit, what the safetensors-layout kernel of the same kind and
 * table gives on the same logical weights (the same per-element reduction order), so
 * a GGUF model computes exactly what its safetensors checkpoint computes.  The f32
 * path is the exact one, the others the int8 and int16 activation paths. */
typedef void (*gpo_matmul_mxfp4_ggml_fn)(float *y, int64_t ldy, const void *W, const float *x,
                                         int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                                         int64_t n_cols);
typedef void (*gpo_matmul_mxfp4_ggml_q8_fn)(float *y, int64_t ldy, const void *W,
                                            const struct gpo_q8_block *xq, int64_t ldxq,
                                            int64_t n_tok, int64_t r0, int64_t r1,
                                            int64_t n_cols);
typedef void (*gpo_matmul_mxfp4_ggml_q16_fn)(float *y, int64_t ldy, const void *W,
                                             const struct gpo_q16_block *xq, int64_t ldxq,
                                             int64_t n_tok, int64_t r0, int64_t r1,
                                             int64_t n_cols);

/* Fast path: Q8_0 weights (W = struct gpo_q8_0_block rows: a GGUF file's Q8_0
 * matrices or --dense q8) times int8-quantised activations xq [n_tok][n_cols/32]
 * (token t's blocks at xq + t*ldxq), quantised by quantize_q8 and then offset by
 * gpo_q8_offset (each code byte holds code + 128, read unsigned).  In a fixed order:
 * y = +0, then for b = 0, 1, ... y = fma(float(S_b), f16(d_w,b) * d_x,b, y) with S_b
 * the exact integer sum of block b's 32 products, so every table gives the
 * reference's bits.  n_cols is a multiple of 32. */
typedef void (*gpo_matmul_q8_0_q8_fn)(float *y, int64_t ldy, const void *W,
                                      const struct gpo_q8_block *xq, int64_t ldxq,
                                      int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
/* Int16 activations split into bytes for vpdpbusd (matmul_q8_0_q16s): element i is
 * 256 * (hi[i] - 128) + lo[i], the int16 code of a gpo_q16_block with the same d
 * (gpo_q16_split). */
struct gpo_q16s_block {
    float d;
    uint8_t hi[GPO_QK];
    uint8_t lo[GPO_QK];
};
_Static_assert(sizeof(struct gpo_q16s_block) == 68, "q16s blocks are 68 bytes");
/* Fast path: Q8_0 weights times int16-quantised activations (quantize_q16, then
 * gpo_q16_split), in matmul_q8_0_q8's order with S_b the exact integer sum of block
 * b's 32 products: the precision of int16 activations through the int8 kernel's
 * dot products. */
typedef void (*gpo_matmul_q8_0_q16s_fn)(float *y, int64_t ldy, const void *W,
                                        const struct gpo_q16s_block *xq, int64_t ldxq,
                                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
/* Fast path: BF16 weights times activations rounded to bf16 (round to nearest even)
 * with f32 products and sums, vdpbf16ps's arithmetic: y = sum_c W[r][c] * bf16(x[t][c]).
 * x, ldx as in gpo_matmul_fn. */
typedef gpo_matmul_fn gpo_matmul_bf16_dot_fn;

/* gpo_mxfp4_from_ggml (below): n_blocks GGML blocks at src to split code bytes and
 * scale bytes, exact for any bytes; the load's repacking of a GGUF model's experts. */
typedef void (*gpo_mxfp4_from_ggml_fn)(uint8_t *blocks, uint8_t *scales, const void *src,
                                       int64_t n_blocks);

/* Scaled dot products of one query against n_keys keys: s[j] = scale * q . k_j,
 * key j at k + j*ldk. */
typedef void (*gpo_attn_scores_fn)(float *s, const float *q, const float *k, int64_t ldk,
                                   int64_t n_keys, int64_t head_dim, float scale);
/* The scores of n_q queries (query i at q + i*ldq) against the same keys:
 * s[i*lds + j] = scale * q_i . k_j, each row bit for bit what attn_scores of the same
 * table gives for that query alone (the keys are read once for several queries). */
typedef void (*gpo_attn_scores_rows_fn)(float *s, int64_t lds, const float *q, int64_t ldq,
                                        int64_t n_q, const float *k, int64_t ldk, int64_t n_keys,
                                        int64_t head_dim, float scale);
/* out[d] += sum_j p[j] * v_j[d], value j at v + j*ldv. */
typedef void (*gpo_attn_accum_fn)(float *out, const float *p, const float *v, int64_t ldv,
                                  int64_t n_keys, int64_t head_dim);

/* The clamped SwiGLU of n pairs (spec 2.7): out[u] = g / (1 + e^(-alpha g)) * (l + 1)
 * with g = min(gate[u*step], limit) and l = min(max(lin[u*step], -limit), limit)
 * (fminf/fmaxf: a NaN input takes the bound).  The reference (gpo_swiglu_ref) computes
 * e^x with libm's expf; the SIMD tables use their own vector exp and stay within 4 ulp
 * of the reference (tested), so the fast path uses the table's and the exact path the
 * reference. */
typedef void (*gpo_swiglu_fn)(float *out, const float *gate, const float *lin, int64_t step,
                              int64_t n, float alpha, float limit);
/* The constants of the SIMD tables' vector exp (exp8 in avx2.c, exp16 in avx512.c), one
 * algorithm at two widths: x clamped to [GPO_EXP_LO, GPO_EXP_HI] (e^x is 0 or +inf in
 * float beyond), n = x log2(e) rounded to nearest by adding and subtracting 1.5 * 2^23,
 * r = x - n ln 2 in two steps (Cody-Waite: the high part has 12 bits, so n * LN2_HI is
 * exact), e^r by its Taylor polynomial to degree 7 (the 1/k! in the code). */
#define GPO_EXP_LO (-104.0f)
#define GPO_EXP_HI 89.0f
#define GPO_EXP_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define GPO_EXP_LOG2E 1.44269504088896341f
#define GPO_EXP_LN2_HI 0.693145751953125f
#define GPO_EXP_LN2_LO 1.42860682030941723212e-6f

struct gpo_kernels {
    const char *name;
    gpo_matmul_fn matmul[GPO_DT_COUNT_]; /* indexed by weight dtype: F32, F16, BF16, Q8_0 */
    gpo_matmul_mxfp4_fn matmul_mxfp4;
    gpo_matmul_mxfp4_q8_fn matmul_mxfp4_q8;
    gpo_quantize_q8_fn quantize_q8;
    gpo_matmul_mxfp4_q16_fn matmul_mxfp4_q16;
    gpo_quantize_q16_fn quantize_q16;
    gpo_matmul_mxfp4_ggml_fn matmul_mxfp4_ggml;
    gpo_matmul_mxfp4_ggml_q8_fn matmul_mxfp4_ggml_q8;
    gpo_matmul_mxfp4_ggml_q16_fn matmul_mxfp4_ggml_q16;
    gpo_attn_scores_fn attn_scores;
    gpo_attn_scores_rows_fn attn_scores_rows;
    gpo_attn_accum_fn attn_accum;
    gpo_mxfp4_from_ggml_fn mxfp4_from_ggml;
    gpo_swiglu_fn swiglu;
    /* The fast path's lower-precision dense matmuls.  NULL in a table without a SIMD
     * kernel for them (gpo_kernels_complete leaves them NULL): the caller then uses
     * matmul[] with f32 activations, which is always at least as fast there. */
    gpo_matmul_q8_0_q8_fn matmul_q8_0_q8;
    gpo_matmul_bf16_dot_fn matmul_bf16_dot;
    gpo_matmul_q8_0_q16s_fn matmul_q8_0_q16s;
    /* The same two for Q8_0x16 weights (the same bits as for the Q8_0 rows they
     * hold).  Only where it is non-NULL in the best table does the load repack Q8_0
     * matrices (model.c); r0 and r1 need not be multiples of 16. */
    gpo_matmul_q8_0_q8_fn matmul_q8_0x16_q8;
    gpo_matmul_q8_0_q16s_fn matmul_q8_0x16_q16s;
};

/* The reference table, and the best table this CPU supports (or the named one:
 * "ref", "avx2", "avx512", "avx512-simde"; NULL = best, never "avx512-simde").
 * Returns NULL for an unknown or unsupported name. */
const struct gpo_kernels *gpo_kernels_ref(void);
const struct gpo_kernels *gpo_kernels_select(const char *name);
/* The table the forward pass runs (but for the reference path): the one
 * $GPTOSS_KERNELS names where this CPU has it, else this CPU's best.  The load
 * decides its repacks by it, so a table that lacks a layout's kernels never gets
 * that layout. */
const struct gpo_kernels *gpo_kernels_chosen(void);
/* Fills every empty slot of a copy of a table with the reference kernel (a SIMD table
 * may leave operations to the reference), except the optional fast-path slots
 * (matmul_q8_0_q8, matmul_bf16_dot, matmul_q8_0_q16s and the Q8_0x16 pair), which
 * stay empty. */
void gpo_kernels_complete(struct gpo_kernels *t);
/* The AVX2 table (NULL when not built); callers check gpo_cpu_has_avx2(). */
const struct gpo_kernels *gpo_kernels_avx2(void);
/* The AVX-512 table for this CPU: the AVX2 table with the slots of every AVX-512 part
 * whose features this CPU has all of (gpo_k512_parts); NULL when the CPU has no part
 * (or no AVX2).  So a CPU with AVX-512F but no VNNI never runs VNNI code, and an
 * empty slot falls back to AVX2, not to the reference. */
const struct gpo_kernels *gpo_kernels_avx512(void);
/* The same AVX-512 kernel source built against SIMDe's portable implementation for
 * AVX2 (every part, whatever this CPU has): slow, for tests on any AVX2 machine.
 * NULL when the CPU lacks AVX2. */
const struct gpo_kernels *gpo_kernels_avx512_simde(void);
int gpo_cpu_has_avx2(void);
/* AVX-512 F, BW, VL and DQ (the base of every AVX-512 part). */
int gpo_cpu_has_avx512(void);
/* A one-line description of the CPU features that matter ("avx2 fma f16c ..."). */
const char *gpo_cpu_features(void);
/* Why the selected table is the one it is, in one line ("avx512: base (f bw vl dq),
 * int8 (+vnni vbmi); ..." or "avx2: the CPU lacks avx512f"). */
const char *gpo_kernels_why(void);

/* CPU features the tables need, as bits. */
enum {
    GPO_CPU_AVX2 = 1u << 0, /* with FMA and F16C */
    GPO_CPU_AVX512F = 1u << 1,
    GPO_CPU_AVX512BW = 1u << 2,
    GPO_CPU_AVX512VL = 1u << 3,
    GPO_CPU_AVX512DQ = 1u << 4,
    GPO_CPU_AVX512VNNI = 1u << 5,
    GPO_CPU_AVX512BF16 = 1u << 6,
    GPO_CPU_AVX512VBMI = 1u << 7,
};
unsigned gpo_cpu_feature_bits(void);

/* The AVX-512 kernels come in parts, one source file each, compiled with exactly the
 * features the part needs (Makefile) and twice: natively (gpo_k512_*) and against
 * SIMDe for AVX2 (gpo_k512emu_*, see simd512.h).  A part's fill function stores its
 * kernels in the slots it implements and leaves the others alone. */
struct gpo_k512_part {
    const char *name;  /* "base", "int8", "bf16" */
    unsigned needs;    /* GPO_CPU_* bits, all required */
    void (*fill)(struct gpo_kernels *t);
    void (*fill_emu)(struct gpo_kernels *t);
};
extern const struct gpo_k512_part gpo_k512_parts[];
extern const int gpo_k512_n_parts;
/* Composes an AVX-512 table into *t for a CPU with the feature bits `cpu`: the AVX2
 * table, then every part whose needs `cpu` has (every part, built against SIMDe, when
 * emu), then the reference for what is still empty.  Returns the number of parts
 * used (0: no AVX2, or no part runs on such a CPU) and writes the reason line to
 * why[n] when why is not NULL.  Exported so tests can compose for other CPUs. */
int gpo_kernels_compose512(struct gpo_kernels *t, unsigned cpu, int emu, char *why, size_t n);
void gpo_k512_fill_base(struct gpo_kernels *t);    /* avx512.c: F BW VL DQ */
void gpo_k512emu_fill_base(struct gpo_kernels *t);
void gpo_k512_fill_int8(struct gpo_kernels *t);    /* avx512_int8.c: + VNNI VBMI */
void gpo_k512emu_fill_int8(struct gpo_kernels *t);
void gpo_k512_fill_bf16(struct gpo_kernels *t);    /* avx512_bf16.c: + BF16 */
void gpo_k512emu_fill_bf16(struct gpo_kernels *t);

/* Reference kernels, exported so tests can compare SIMD variants against them. */
void gpo_matmul_f32_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_f16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_bf16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_mxfp4_ref(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                          const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                          int64_t n_cols);
void gpo_matmul_mxfp4_q8_ref(float *y, int64_t ldy, const uint8_t *blocks,
                             const uint8_t *scales, const struct gpo_q8_block *xq,
                             int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                             int64_t n_cols);
void gpo_quantize_q8_ref(struct gpo_q8_block *out, const float *x, int64_t n);
/* Q8_0 weights (W = struct gpo_q8_0_block rows) times f32 activations. */
void gpo_matmul_q8_0_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_mxfp4_q16_ref(float *y, int64_t ldy, const uint8_t *blocks,
                              const uint8_t *scales, const struct gpo_q16_block *xq,
                              int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                              int64_t n_cols);
void gpo_quantize_q16_ref(struct gpo_q16_block *out, const float *x, int64_t n);
/* The activation codes of n_blocks blocks offset by 128 (code xor 0x80), in place:
 * the form matmul_q8_0_q8 takes them in. */
void gpo_q8_offset(struct gpo_q8_block *xq, int64_t n_blocks);
void gpo_matmul_q8_0_q8_ref(float *y, int64_t ldy, const void *W, const struct gpo_q8_block *xq,
                            int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
/* n values (a multiple of 32) quantised by k's quantize_q16 and split, block by block. */
void gpo_quantize_q16s(const struct gpo_kernels *k, struct gpo_q16s_block *out, const float *x,
                       int64_t n);
/* n_blocks int16 blocks split into bytes. */
void gpo_q16_split(struct gpo_q16s_block *out, const struct gpo_q16_block *in, int64_t n_blocks);
void gpo_matmul_q8_0_q16s_ref(float *y, int64_t ldy, const void *W, const struct gpo_q16s_block *xq,
                              int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_q8_0x16_q8_ref(float *y, int64_t ldy, const void *W, const struct gpo_q8_block *xq,
                               int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_q8_0x16_q16s_ref(float *y, int64_t ldy, const void *W,
                                 const struct gpo_q16s_block *xq, int64_t ldxq, int64_t n_tok,
                                 int64_t r0, int64_t r1, int64_t n_cols);
/* Q8_0x16 weights times f32 activations: the reference's Q8_0 arithmetic (the
 * matmul[GPO_DT_Q8_0X16] slot of the reference table). */
void gpo_matmul_q8_0x16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                            int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_bf16_dot_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                             int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_swiglu_ref(float *out, const float *gate, const float *lin, int64_t step, int64_t n,
                    float alpha, float limit);
void gpo_matmul_mxfp4_ggml_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                               int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_mxfp4_ggml_q8_ref(float *y, int64_t ldy, const void *W,
                                  const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                                  int64_t r0, int64_t r1, int64_t n_cols);
void gpo_matmul_mxfp4_ggml_q16_ref(float *y, int64_t ldy, const void *W,
                                   const struct gpo_q16_block *xq, int64_t ldxq, int64_t n_tok,
                                   int64_t r0, int64_t r1, int64_t n_cols);
/* Requantise n (multiple of 32) weights of a BF16/F16/F32 row to Q8_0 blocks
 * (d = amax/127 rounded to f16, q = round(w/d)). */
void gpo_quantize_row_q8_0(struct gpo_q8_0_block *out, const void *w, enum gpo_dtype dt,
                           int64_t n);
void gpo_attn_scores_ref(float *s, const float *q, const float *k, int64_t ldk, int64_t n_keys,
                         int64_t head_dim, float scale);
void gpo_attn_scores_rows_ref(float *s, int64_t lds, const float *q, int64_t ldq, int64_t n_q,
                              const float *k, int64_t ldk, int64_t n_keys, int64_t head_dim,
                              float scale);
void gpo_attn_accum_ref(float *out, const float *p, const float *v, int64_t ldv, int64_t n_keys,
                        int64_t head_dim);

/* Element-wise operations of the forward pass (scalar; cheap next to the matmuls). */
/* Decode one MXFP4 row of n_cols values to floats. */
void gpo_mxfp4_dequant_row(float *out, const uint8_t *blocks, const uint8_t *scales,
                           int64_t n_cols);
/* Decode one GGML MXFP4 row of n_cols values (W = n_cols/32 blocks) to floats; the
 * same bits as gpo_mxfp4_dequant_row on the same logical weights. */
void gpo_mxfp4_ggml_dequant_row(float *out, const void *W, int64_t n_cols);

/* Repacking between the layouts, n_blocks blocks of 32 elements at a time: element k
 * of a block moves from nibble k%2 of byte k/2 (safetensors: 16 code bytes per block,
 * the scale bytes in their own array) to nibble k/16 of qs[k%16] (GGML), and back.
 * Exact and lossless both ways for any bytes.  A whole safetensors expert tensor
 * (blocks [E][rows][nb][16], scales [E][rows][nb]) is one call with n_blocks =
 * E*rows*nb, and gives the GGUF tensor [E][rows][nb] of GGML blocks. */
void gpo_mxfp4_to_ggml(void *dst, const uint8_t *blocks, const uint8_t *scales,
                       int64_t n_blocks);
void gpo_mxfp4_from_ggml(uint8_t *blocks, uint8_t *scales, const void *src, int64_t n_blocks);

/* Convert n elements of a weight vector of type dt to float. */
void gpo_to_f32(float *out, const void *w, enum gpo_dtype dt, int64_t n);

#endif /* GPO_KERNELS_H */
