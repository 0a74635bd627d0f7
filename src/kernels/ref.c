/* ref.c - the plain scalar reference of every kernel.  Never tuned: it is the
 * twin each SIMD variant is tested against and the `--ref` path of the CLI. */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "../util.h"

const float gpo_fp4_values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                  -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

void gpo_matmul_f32_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const float *w = W;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const float *wr = w + r * n_cols, *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t c = 0; c < n_cols; c++) acc += wr[c] * xt[c];
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_f16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                        int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const uint16_t *w = W;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = w + r * n_cols;
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t c = 0; c < n_cols; c++) acc += f16_to_f32(wr[c]) * xt[c];
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_bf16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const uint16_t *w = W;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = w + r * n_cols;
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t c = 0; c < n_cols; c++) acc += bf16_to_f32(wr[c]) * xt[c];
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_mxfp4_ref(float *y, int64_t ldy, const uint8_t *blocks, const uint8_t *scales,
                          const float *x, int64_t ldx, int64_t n_tok, int64_t r0, int64_t r1,
                          int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *br = blocks + r * nb * 16, *sr = scales + r * nb;
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                float blk = 0.0f;
                for (int i = 0; i < 16; i++) {
                    uint8_t byte = br[b * 16 + i];
                    blk += gpo_fp4_values[byte & 0x0f] * xt[b * 32 + 2 * i];
                    blk += gpo_fp4_values[byte >> 4] * xt[b * 32 + 2 * i + 1];
                }
                acc += blk * gpo_e8m0_to_f32(sr[b]);
            }
            y[t * ldy + r] = acc;
        }
}

/* Twice the FP4 values, as integers, so a block dot product stays in integers. */
static const int8_t fp4_x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void gpo_matmul_mxfp4_q8_ref(float *y, int64_t ldy, const uint8_t *blocks,
                             const uint8_t *scales, const struct gpo_q8_block *xq,
                             int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                             int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *br = blocks + r * nb * 16, *sr = scales + r * nb;
            const struct gpo_q8_block *xt = xq + t * ldxq;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t blk = 0;
                for (int i = 0; i < 16; i++) {
                    uint8_t byte = br[b * 16 + i];
                    blk += fp4_x2[byte & 0x0f] * xt[b].qs[2 * i];
                    blk += fp4_x2[byte >> 4] * xt[b].qs[2 * i + 1];
                }
                acc += (float)blk * (0.5f * gpo_e8m0_to_f32(sr[b]) * xt[b].d);
            }
            y[t * ldy + r] = acc;
        }
}

void gpo_quantize_q8_ref(struct gpo_q8_block *out, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        float amax = 0.0f;
        for (int i = 0; i < GPO_QK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        for (int i = 0; i < GPO_QK; i++) out[b].qs[i] = (int8_t)lrintf(xb[i] * id);
    }
}

void gpo_q8_0x16_pack(void *dst, const struct gpo_q8_0_block *src, int64_t rows, int64_t n_cols) {
    const int64_t nb = n_cols / GPO_QK, gb = nb * (int64_t)sizeof(struct gpo_q8_0_block) * 16;
    for (int64_t g = 0; g < rows / 16; g++) {
        uint8_t *grp = (uint8_t *)dst + g * gb;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *codes = grp + gpo_q8x16_codes(b), *scales = grp + gpo_q8x16_scales(b, nb);
            for (int i = 0; i < 16; i++) {
                const struct gpo_q8_0_block *blk = src + (g * 16 + i) * nb + b;
                memcpy(scales + 2 * i, &blk->d, 2);
                for (int c = 0; c < GPO_QK; c++)
                    codes[64 * (c / 4) + 4 * i + c % 4] = (uint8_t)blk->qs[c];
            }
        }
    }
}

void gpo_q8_0x16_row(struct gpo_q8_0_block *dst, const void *W, int64_t r, int64_t n_cols) {
    const int64_t nb = n_cols / GPO_QK, i = r % 16;
    const uint8_t *grp = (const uint8_t *)W + (r / 16) * nb * (int64_t)sizeof(struct gpo_q8_0_block) * 16;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *codes = grp + gpo_q8x16_codes(b);
        memcpy(&dst[b].d, grp + gpo_q8x16_scales(b, nb) + 2 * i, 2);
        for (int c = 0; c < GPO_QK; c++) dst[b].qs[c] = (int8_t)codes[64 * (c / 4) + 4 * i + c % 4];
    }
}

/* Row r of a Q8_0 (x16 = 0) or Q8_0x16 matrix as Q8_0 blocks: in place, or unpacked
 * into tmp. */
static const struct gpo_q8_0_block *q8_0_row(const void *W, int x16, int64_t r, int64_t n_cols,
                                             struct gpo_q8_0_block *tmp) {
    if (!x16) return (const struct gpo_q8_0_block *)W + r * (n_cols / GPO_QK);
    gpo_q8_0x16_row(tmp, W, r, n_cols);
    return tmp;
}

static void q8_0_f32_ref(float *y, int64_t ldy, const void *W, int x16, const float *x, int64_t ldx,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / GPO_QK;
    struct gpo_q8_0_block tmp[GPO_Q8X16_MAX_COLS / GPO_QK];
    for (int64_t r = r0; r < r1; r++) {
        const struct gpo_q8_0_block *wr = q8_0_row(W, x16, r, n_cols, tmp);
        for (int64_t t = 0; t < n_tok; t++) {
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                float blk = 0.0f;
                for (int i = 0; i < GPO_QK; i++) blk += (float)wr[b].qs[i] * xt[b * GPO_QK + i];
                acc += blk * f16_to_f32(wr[b].d);
            }
            y[t * ldy + r] = acc;
        }
    }
}

void gpo_matmul_q8_0_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                         int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_f32_ref(y, ldy, W, 0, x, ldx, n_tok, r0, r1, n_cols);
}

void gpo_matmul_q8_0x16_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                            int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_f32_ref(y, ldy, W, 1, x, ldx, n_tok, r0, r1, n_cols);
}

/* Q8_0 (or Q8_0x16) weights times integer activations in the SIMD kernels' order:
 * per block the exact integer sum, then one fma per block.  Activation code i of
 * block xb is the offset int8 of a gpo_q8_block (q16s = 0) or the split int16 of a
 * gpo_q16s_block. */
static void q8_0_int_ref(float *y, int64_t ldy, const void *W, int x16, const void *xq, int q16s,
                         int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / GPO_QK;
    struct gpo_q8_0_block tmp[GPO_Q8X16_MAX_COLS / GPO_QK];
    for (int64_t r = r0; r < r1; r++) {
        const struct gpo_q8_0_block *wr = q8_0_row(W, x16, r, n_cols, tmp);
        for (int64_t t = 0; t < n_tok; t++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t xi = t * ldxq + b;
                const struct gpo_q8_block *x8 = q16s ? NULL : (const struct gpo_q8_block *)xq + xi;
                const struct gpo_q16s_block *x16b = q16s ? (const struct gpo_q16s_block *)xq + xi : NULL;
                int32_t blk = 0;
                for (int i = 0; i < GPO_QK; i++)
                    blk += wr[b].qs[i] * (x16b ? 256 * ((int32_t)x16b->hi[i] - 128) + x16b->lo[i]
                                               : (int32_t)(uint8_t)x8->qs[i] - 128);
                acc = fmaf((float)blk, f16_to_f32(wr[b].d) * (x16b ? x16b->d : x8->d), acc);
            }
            y[t * ldy + r] = acc;
        }
    }
}

void gpo_matmul_q8_0_q8_ref(float *y, int64_t ldy, const void *W, const struct gpo_q8_block *xq,
                            int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_int_ref(y, ldy, W, 0, xq, 0, ldxq, n_tok, r0, r1, n_cols);
}

void gpo_matmul_q8_0_q16s_ref(float *y, int64_t ldy, const void *W, const struct gpo_q16s_block *xq,
                              int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_int_ref(y, ldy, W, 0, xq, 1, ldxq, n_tok, r0, r1, n_cols);
}

void gpo_matmul_q8_0x16_q8_ref(float *y, int64_t ldy, const void *W, const struct gpo_q8_block *xq,
                               int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_int_ref(y, ldy, W, 1, xq, 0, ldxq, n_tok, r0, r1, n_cols);
}

void gpo_matmul_q8_0x16_q16s_ref(float *y, int64_t ldy, const void *W,
                                 const struct gpo_q16s_block *xq, int64_t ldxq, int64_t n_tok,
                                 int64_t r0, int64_t r1, int64_t n_cols) {
    q8_0_int_ref(y, ldy, W, 1, xq, 1, ldxq, n_tok, r0, r1, n_cols);
}

void gpo_q16_split(struct gpo_q16s_block *out, const struct gpo_q16_block *in, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++) {
        out[b].d = in[b].d;
        for (int i = 0; i < GPO_QK; i++) {
            const int32_t v = in[b].qs[i];
            out[b].hi[i] = (uint8_t)((v >> 8) + 128); /* arithmetic shift: floor(v / 256) */
            out[b].lo[i] = (uint8_t)(v & 255);
        }
    }
}

void gpo_quantize_q16s(const struct gpo_kernels *k, struct gpo_q16s_block *out, const float *x,
                       int64_t n) {
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        struct gpo_q16_block q;
        k->quantize_q16(&q, x + b * GPO_QK, GPO_QK);
        gpo_q16_split(out + b, &q, 1);
    }
}

void gpo_q8_offset(struct gpo_q8_block *xq, int64_t n_blocks) {
    for (int64_t b = 0; b < n_blocks; b++)
        for (int i = 0; i < GPO_QK; i++) xq[b].qs[i] = (int8_t)((uint8_t)xq[b].qs[i] ^ 0x80u);
}

void gpo_swiglu_ref(float *out, const float *gate, const float *lin, int64_t step, int64_t n,
                    float alpha, float limit) {
    for (int64_t u = 0; u < n; u++) {
        float xg = gate[u * step], xl = lin[u * step];
        xg = fminf(xg, limit);
        xl = fminf(fmaxf(xl, -limit), limit);
        out[u] = xg / (1.0f + expf(-alpha * xg)) * (xl + 1.0f);
    }
}

/* The activations rounded to bf16 as vcvtneps2bf16 rounds them; the products of two
 * bf16 values are exact in f32, so only the order of the sums differs from the SIMD
 * kernels. */
void gpo_matmul_bf16_dot_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                             int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const uint16_t *w = W;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *wr = w + r * n_cols;
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t c = 0; c < n_cols; c++)
                acc += bf16_to_f32(wr[c]) * bf16_to_f32(f32_to_bf16(xt[c]));
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_mxfp4_q16_ref(float *y, int64_t ldy, const uint8_t *blocks,
                              const uint8_t *scales, const struct gpo_q16_block *xq,
                              int64_t ldxq, int64_t n_tok, int64_t r0, int64_t r1,
                              int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *br = blocks + r * nb * 16, *sr = scales + r * nb;
            const struct gpo_q16_block *xt = xq + t * ldxq;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t blk = 0;
                for (int i = 0; i < 16; i++) {
                    uint8_t byte = br[b * 16 + i];
                    blk += fp4_x2[byte & 0x0f] * xt[b].qs[2 * i];
                    blk += fp4_x2[byte >> 4] * xt[b].qs[2 * i + 1];
                }
                acc += (float)blk * (0.5f * gpo_e8m0_to_f32(sr[b]) * xt[b].d);
            }
            y[t * ldy + r] = acc;
        }
}

void gpo_quantize_q16_ref(struct gpo_q16_block *out, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const float *xb = x + b * GPO_QK;
        float amax = 0.0f;
        for (int i = 0; i < GPO_QK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 32767.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = d;
        for (int i = 0; i < GPO_QK; i++) out[b].qs[i] = (int16_t)lrintf(xb[i] * id);
    }
}

/* ---- MXFP4 in GGML blocks ----
 * The same sums as the safetensors-layout kernels above, term for term in column order
 * (elements 0-15 from the low nibbles, then 16-31 from the high ones), so the results
 * are the same bits. */

static const struct gpo_mxfp4_ggml_block *ggml_row(const void *W, int64_t r, int64_t nb) {
    return (const struct gpo_mxfp4_ggml_block *)W + r * nb;
}

void gpo_matmul_mxfp4_ggml_ref(float *y, int64_t ldy, const void *W, const float *x, int64_t ldx,
                               int64_t n_tok, int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const struct gpo_mxfp4_ggml_block *wr = ggml_row(W, r, nb);
            const float *xt = x + t * ldx;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const float *xb = xt + b * 32;
                float blk = 0.0f;
                for (int j = 0; j < 16; j++) blk += gpo_fp4_values[wr[b].qs[j] & 0x0f] * xb[j];
                for (int j = 0; j < 16; j++) blk += gpo_fp4_values[wr[b].qs[j] >> 4] * xb[16 + j];
                acc += blk * gpo_e8m0_to_f32(wr[b].e);
            }
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_mxfp4_ggml_q8_ref(float *y, int64_t ldy, const void *W,
                                  const struct gpo_q8_block *xq, int64_t ldxq, int64_t n_tok,
                                  int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const struct gpo_mxfp4_ggml_block *wr = ggml_row(W, r, nb);
            const struct gpo_q8_block *xt = xq + t * ldxq;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t blk = 0;
                for (int j = 0; j < 16; j++) blk += fp4_x2[wr[b].qs[j] & 0x0f] * xt[b].qs[j];
                for (int j = 0; j < 16; j++) blk += fp4_x2[wr[b].qs[j] >> 4] * xt[b].qs[16 + j];
                acc += (float)blk * (0.5f * gpo_e8m0_to_f32(wr[b].e) * xt[b].d);
            }
            y[t * ldy + r] = acc;
        }
}

void gpo_matmul_mxfp4_ggml_q16_ref(float *y, int64_t ldy, const void *W,
                                   const struct gpo_q16_block *xq, int64_t ldxq, int64_t n_tok,
                                   int64_t r0, int64_t r1, int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = r0; r < r1; r++) {
            const struct gpo_mxfp4_ggml_block *wr = ggml_row(W, r, nb);
            const struct gpo_q16_block *xt = xq + t * ldxq;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t blk = 0;
                for (int j = 0; j < 16; j++) blk += fp4_x2[wr[b].qs[j] & 0x0f] * xt[b].qs[j];
                for (int j = 0; j < 16; j++) blk += fp4_x2[wr[b].qs[j] >> 4] * xt[b].qs[16 + j];
                acc += (float)blk * (0.5f * gpo_e8m0_to_f32(wr[b].e) * xt[b].d);
            }
            y[t * ldy + r] = acc;
        }
}

void gpo_quantize_row_q8_0(struct gpo_q8_0_block *out, const void *w, enum gpo_dtype dt,
                           int64_t n) {
    float buf[GPO_QK];
    for (int64_t b = 0; b < n / GPO_QK; b++) {
        const uint8_t *src = (const uint8_t *)w + (size_t)b * GPO_QK * (dt == GPO_DT_F32 ? 4 : 2);
        gpo_to_f32(buf, src, dt, GPO_QK);
        float amax = 0.0f;
        for (int i = 0; i < GPO_QK; i++) amax = fmaxf(amax, fabsf(buf[i]));
        /* Clamp the scale to the largest f16 so huge weights saturate instead of
         * turning the whole block into NaN. */
        float dm = amax / 127.0f;
        uint16_t dh = f32_to_f16(dm < 65504.0f ? dm : 65504.0f);
        float d = f16_to_f32(dh), id = d > 0.0f ? 1.0f / d : 0.0f;
        out[b].d = dh;
        for (int i = 0; i < GPO_QK; i++) {
            long q = lrintf(buf[i] * id);
            out[b].qs[i] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
        }
    }
}

void gpo_attn_scores_ref(float *s, const float *q, const float *k, int64_t ldk, int64_t n_keys,
                         int64_t head_dim, float scale) {
    for (int64_t j = 0; j < n_keys; j++) {
        const float *kj = k + j * ldk;
        float acc = 0.0f;
        for (int64_t d = 0; d < head_dim; d++) acc += q[d] * kj[d];
        s[j] = acc * scale;
    }
}

void gpo_attn_scores_rows_ref(float *s, int64_t lds, const float *q, int64_t ldq, int64_t n_q,
                              const float *k, int64_t ldk, int64_t n_keys, int64_t head_dim,
                              float scale) {
    for (int64_t i = 0; i < n_q; i++)
        gpo_attn_scores_ref(s + i * lds, q + i * ldq, k, ldk, n_keys, head_dim, scale);
}

void gpo_attn_accum_ref(float *out, const float *p, const float *v, int64_t ldv, int64_t n_keys,
                        int64_t head_dim) {
    for (int64_t j = 0; j < n_keys; j++) {
        const float *vj = v + j * ldv;
        for (int64_t d = 0; d < head_dim; d++) out[d] += p[j] * vj[d];
    }
}

void gpo_mxfp4_dequant_row(float *out, const uint8_t *blocks, const uint8_t *scales,
                           int64_t n_cols) {
    for (int64_t b = 0; b < n_cols / 32; b++) {
        float sc = gpo_e8m0_to_f32(scales[b]);
        for (int i = 0; i < 16; i++) {
            uint8_t byte = blocks[b * 16 + i];
            out[b * 32 + 2 * i] = gpo_fp4_values[byte & 0x0f] * sc;
            out[b * 32 + 2 * i + 1] = gpo_fp4_values[byte >> 4] * sc;
        }
    }
}

void gpo_mxfp4_ggml_dequant_row(float *out, const void *W, int64_t n_cols) {
    const struct gpo_mxfp4_ggml_block *w = W;
    for (int64_t b = 0; b < n_cols / 32; b++) {
        float sc = gpo_e8m0_to_f32(w[b].e);
        for (int j = 0; j < 16; j++) {
            out[b * 32 + j] = gpo_fp4_values[w[b].qs[j] & 0x0f] * sc;
            out[b * 32 + 16 + j] = gpo_fp4_values[w[b].qs[j] >> 4] * sc;
        }
    }
}

/* Element k of a block: safetensors byte k/2, nibble k%2; GGML qs[k%16], nibble k/16.
 * So GGML byte j takes elements j and j+16, i.e. the nibble j%2 of safetensors bytes
 * j/2 and 8 + j/2. */
void gpo_mxfp4_to_ggml(void *dst, const uint8_t *blocks, const uint8_t *scales,
                       int64_t n_blocks) {
    struct gpo_mxfp4_ggml_block *out = dst;
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *src = blocks + b * 16;
        out[b].e = scales[b];
        for (int j = 0; j < 16; j++) {
            const int shift = 4 * (j % 2);
            const uint8_t lo = (uint8_t)(src[j / 2] >> shift & 0x0f);
            const uint8_t hi = (uint8_t)(src[8 + j / 2] >> shift & 0x0f);
            out[b].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

void gpo_mxfp4_from_ggml(uint8_t *blocks, uint8_t *scales, const void *src, int64_t n_blocks) {
    const struct gpo_mxfp4_ggml_block *in = src;
    for (int64_t b = 0; b < n_blocks; b++) {
        uint8_t *dst = blocks + b * 16;
        scales[b] = in[b].e;
        /* Byte i holds elements 2i and 2i+1 (the low nibbles of qs[2i], qs[2i+1]),
         * byte 8+i elements 16+2i and 17+2i (the high nibbles of the same two). */
        for (int i = 0; i < 8; i++) {
            dst[i] = (uint8_t)((in[b].qs[2 * i] & 0x0f) | (in[b].qs[2 * i + 1] & 0x0f) << 4);
            dst[8 + i] = (uint8_t)(in[b].qs[2 * i] >> 4 | (in[b].qs[2 * i + 1] & 0xf0));
        }
    }
}

void gpo_to_f32(float *out, const void *w, enum gpo_dtype dt, int64_t n) {
    switch (dt) {
    case GPO_DT_F32: memcpy(out, w, (size_t)n * 4); break;
    case GPO_DT_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(((const uint16_t *)w)[i]);
        break;
    case GPO_DT_F16:
        for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(((const uint16_t *)w)[i]);
        break;
    case GPO_DT_Q8_0: /* n a multiple of 32: w[i] = f16(d) * qs[i], as ggml dequantises */
        for (int64_t i = 0; i < n; i++) {
            const struct gpo_q8_0_block *b = (const struct gpo_q8_0_block *)w + i / GPO_QK;
            out[i] = f16_to_f32(b->d) * (float)b->qs[i % GPO_QK];
        }
        break;
    default:
        for (int64_t i = 0; i < n; i++) out[i] = NAN;
        break;
    }
}

static const struct gpo_kernels ref_table = {
    .name = "ref",
    .matmul = {[GPO_DT_F32] = gpo_matmul_f32_ref,
               [GPO_DT_F16] = gpo_matmul_f16_ref,
               [GPO_DT_BF16] = gpo_matmul_bf16_ref,
               [GPO_DT_Q8_0] = gpo_matmul_q8_0_ref,
               [GPO_DT_Q8_0X16] = gpo_matmul_q8_0x16_ref},
    .matmul_mxfp4 = gpo_matmul_mxfp4_ref,
    .matmul_mxfp4_q8 = gpo_matmul_mxfp4_q8_ref,
    .quantize_q8 = gpo_quantize_q8_ref,
    .matmul_mxfp4_q16 = gpo_matmul_mxfp4_q16_ref,
    .quantize_q16 = gpo_quantize_q16_ref,
    .matmul_mxfp4_ggml = gpo_matmul_mxfp4_ggml_ref,
    .matmul_mxfp4_ggml_q8 = gpo_matmul_mxfp4_ggml_q8_ref,
    .matmul_mxfp4_ggml_q16 = gpo_matmul_mxfp4_ggml_q16_ref,
    .attn_scores = gpo_attn_scores_ref,
    .attn_scores_rows = gpo_attn_scores_rows_ref,
    .attn_accum = gpo_attn_accum_ref,
    .mxfp4_from_ggml = gpo_mxfp4_from_ggml,
    .matmul_q8_0_q8 = gpo_matmul_q8_0_q8_ref,
    .matmul_bf16_dot = gpo_matmul_bf16_dot_ref,
    .matmul_q8_0_q16s = gpo_matmul_q8_0_q16s_ref,
    .matmul_q8_0x16_q8 = gpo_matmul_q8_0x16_q8_ref,
    .matmul_q8_0x16_q16s = gpo_matmul_q8_0x16_q16s_ref,
    .swiglu = gpo_swiglu_ref,
};

const struct gpo_kernels *gpo_kernels_ref(void) { return &ref_table; }
