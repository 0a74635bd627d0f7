/* dispatch.c - chooses the kernel table once from the CPU's features. */
#include <stdio.h>
#include <string.h>

#include "kernels.h"

int gpo_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int gpo_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

const char *gpo_cpu_features(void) {
    static char buf[256];
    buf[0] = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    static const char *const names[] = {"sse4.2",  "avx",         "avx2",       "fma",
                                        "avx512f", "avx512bw",    "avx512vl",   "avx512vnni",
                                        "avx512bf16"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        int has = 0;
        /* __builtin_cpu_supports needs literal strings. */
        switch (i) {
        case 0: has = __builtin_cpu_supports("sse4.2"); break;
        case 1: has = __builtin_cpu_supports("avx"); break;
        case 2: has = __builtin_cpu_supports("avx2"); break;
        case 3: has = __builtin_cpu_supports("fma"); break;
        case 4: has = __builtin_cpu_supports("avx512f"); break;
        case 5: has = __builtin_cpu_supports("avx512bw"); break;
        case 6: has = __builtin_cpu_supports("avx512vl"); break;
        case 7: has = __builtin_cpu_supports("avx512vnni"); break;
        case 8: has = __builtin_cpu_supports("avx512bf16"); break;
        }
        if (has) {
            strncat(buf, names[i], sizeof buf - strlen(buf) - 2);
            strncat(buf, " ", sizeof buf - strlen(buf) - 1);
        }
    }
#endif
    if (buf[0]) buf[strlen(buf) - 1] = 0;
    else snprintf(buf, sizeof buf, "(no SIMD features detected)");
    return buf;
}

const struct gpo_kernels *gpo_kernels_select(const char *name) {
    if (name && strcmp(name, "ref") == 0) return gpo_kernels_ref();
    if (name && strcmp(name, "avx512") == 0)
        return gpo_cpu_has_avx512() ? gpo_kernels_avx512() : NULL;
    if (name && strcmp(name, "avx2") == 0) return gpo_cpu_has_avx2() ? gpo_kernels_avx2() : NULL;
    if (name) return NULL;
    if (gpo_cpu_has_avx512() && gpo_kernels_avx512()) return gpo_kernels_avx512();
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2()) return gpo_kernels_avx2();
    return gpo_kernels_ref();
}

void gpo_kernels_complete(struct gpo_kernels *t) {
    const struct gpo_kernels *ref = gpo_kernels_ref();
    for (int d = 0; d < GPO_DT_COUNT_; d++)
        if (!t->matmul[d]) t->matmul[d] = ref->matmul[d];
#define FILL_(f) if (!t->f) t->f = ref->f
    FILL_(matmul_mxfp4);
    FILL_(matmul_mxfp4_q8);
    FILL_(quantize_q8);
    FILL_(matmul_mxfp4_q16);
    FILL_(quantize_q16);
    FILL_(matmul_mxfp4_ggml);
    FILL_(matmul_mxfp4_ggml_q8);
    FILL_(matmul_mxfp4_ggml_q16);
    FILL_(attn_scores);
    FILL_(attn_accum);
#undef FILL_
}
