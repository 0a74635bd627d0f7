/* avx512.c - AVX512 variants of the kernels (not written yet: the table is empty and
 * dispatch falls back to the reference). */
#include "kernels.h"

const struct gpo_kernels *gpo_kernels_avx512(void) { return 0; }
