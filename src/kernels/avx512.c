/* avx512.c - the AVX-512 "base" part (F, BW, VL, DQ): dense matmuls (F32, BF16, F16,
 * Q8_0 weights), the activation quantisers and attention, written with SIMDe's
 * simde_ intrinsics (simd512.h) and compiled natively and against SIMDe. */
#include "simd512.h"

#include "kernels.h"

void GPO_K512(fill_base)(struct gpo_kernels *t) { (void)t; }
