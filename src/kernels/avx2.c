/* avx2.c - AVX2 variants of the kernels (not written yet: the table is empty and
 * dispatch falls back to the reference). */
#include "kernels.h"

const struct gpo_kernels *gpo_kernels_avx2(void) { return 0; }
