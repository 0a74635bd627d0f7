/* dispatch.c - chooses the kernel table once from the CPU's features.
 *
 * The AVX-512 table is composed, not fixed: it starts as a copy of the AVX2 table
 * and each AVX-512 part (gpo_k512_parts) overwrites the slots it implements when the
 * CPU has every feature the part was compiled for.  So every slot holds the best
 * kernel this CPU can run, and never one using a feature it lacks. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

const struct gpo_k512_part gpo_k512_parts[] = {
    {"base", GPO_CPU_AVX2 | GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL | GPO_CPU_AVX512DQ,
     gpo_k512_fill_base, gpo_k512emu_fill_base},
    {"int8",
     GPO_CPU_AVX2 | GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL | GPO_CPU_AVX512DQ |
         GPO_CPU_AVX512VNNI | GPO_CPU_AVX512VBMI,
     gpo_k512_fill_int8, gpo_k512emu_fill_int8},
    {"bf16",
     GPO_CPU_AVX2 | GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL | GPO_CPU_AVX512DQ |
         GPO_CPU_AVX512BF16,
     gpo_k512_fill_bf16, gpo_k512emu_fill_bf16},
};
const int gpo_k512_n_parts = (int)(sizeof gpo_k512_parts / sizeof *gpo_k512_parts);

static const char *const feature_names[] = {"avx2+fma+f16c", "avx512f",    "avx512bw",
                                            "avx512vl",      "avx512dq",   "avx512vnni",
                                            "avx512bf16",    "avx512vbmi"};

unsigned gpo_cpu_feature_bits(void) {
    unsigned b = 0;
#if defined(__x86_64__) || defined(__i386__)
    /* libgcc's checks include the OS's support for the AVX and AVX-512 register state. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        b |= GPO_CPU_AVX2;
    if (__builtin_cpu_supports("avx512f")) b |= GPO_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) b |= GPO_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vl")) b |= GPO_CPU_AVX512VL;
    if (__builtin_cpu_supports("avx512dq")) b |= GPO_CPU_AVX512DQ;
    if (__builtin_cpu_supports("avx512vnni")) b |= GPO_CPU_AVX512VNNI;
    if (__builtin_cpu_supports("avx512bf16")) b |= GPO_CPU_AVX512BF16;
    if (__builtin_cpu_supports("avx512vbmi")) b |= GPO_CPU_AVX512VBMI;
#endif
    return b;
}

int gpo_cpu_has_avx2(void) { return (gpo_cpu_feature_bits() & GPO_CPU_AVX2) != 0; }

int gpo_cpu_has_avx512(void) {
    const unsigned need = GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL | GPO_CPU_AVX512DQ;
    return (gpo_cpu_feature_bits() & need) == need;
}

const char *gpo_cpu_features(void) {
    static char buf[256];
    buf[0] = 0;
    const unsigned b = gpo_cpu_feature_bits();
    for (size_t i = 0; i < sizeof feature_names / sizeof *feature_names; i++)
        if (b & (1u << i)) {
            strncat(buf, feature_names[i], sizeof buf - strlen(buf) - 2);
            strncat(buf, " ", sizeof buf - strlen(buf) - 1);
        }
    if (buf[0]) buf[strlen(buf) - 1] = 0;
    else snprintf(buf, sizeof buf, "(no SIMD features detected)");
    return buf;
}

/* The composed tables and the reason line, built once. */
static struct gpo_kernels t512, t512emu;
static int have512, have512emu;
static char why_line[512];
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* The names of the features in `missing`, space-separated, into buf. */
static void feature_list(char *buf, size_t n, unsigned bits) {
    buf[0] = 0;
    for (size_t i = 0; i < sizeof feature_names / sizeof *feature_names; i++)
        if (bits & (1u << i)) {
            if (buf[0]) strncat(buf, " ", n - strlen(buf) - 1);
            strncat(buf, feature_names[i], n - strlen(buf) - 1);
        }
}

int gpo_kernels_compose512(struct gpo_kernels *t, unsigned cpu, int emu, char *why, size_t n) {
    const struct gpo_kernels *a2 = gpo_kernels_avx2();
    char used[256] = "", lacking[256] = "";
    int parts = 0;
    if (!a2 || !(cpu & GPO_CPU_AVX2)) {
        if (why) snprintf(why, n, "ref (the CPU lacks avx2, fma or f16c)");
        return 0;
    }
    *t = *a2;
    t->name = emu ? "avx512-simde" : "avx512";
    for (int i = 0; i < gpo_k512_n_parts; i++) {
        const struct gpo_k512_part *p = &gpo_k512_parts[i];
        if (emu || (cpu & p->needs) == p->needs) {
            (emu ? p->fill_emu : p->fill)(t);
            parts++;
            strncat(used, used[0] ? ", " : "", sizeof used - strlen(used) - 1);
            strncat(used, p->name, sizeof used - strlen(used) - 1);
        } else {
            char miss[160];
            feature_list(miss, sizeof miss, p->needs & ~cpu);
            const size_t l = strlen(lacking);
            snprintf(lacking + l, sizeof lacking - l, "%spart %s needs %s", l ? "; " : "", p->name,
                     miss);
        }
    }
    gpo_kernels_complete(t);
    if (!why) return parts;
    if (parts)
        snprintf(why, n, "%s (parts: %s; the rest from avx2)%s%s", t->name, used,
                 lacking[0] ? "; not used: " : "", lacking);
    else
        snprintf(why, n, "avx2 (no AVX-512 part runs here: %s)", lacking);
    return parts;
}

static void build_tables(void) {
    const unsigned cpu = gpo_cpu_feature_bits();
    have512 = gpo_kernels_compose512(&t512, cpu, 0, why_line, sizeof why_line) > 0;
    have512emu = gpo_kernels_compose512(&t512emu, cpu, 1, NULL, 0) > 0;
}

const struct gpo_kernels *gpo_kernels_avx512(void) {
    pthread_once(&once, build_tables);
    return have512 ? &t512 : NULL;
}

const struct gpo_kernels *gpo_kernels_avx512_simde(void) {
    pthread_once(&once, build_tables);
    return have512emu ? &t512emu : NULL;
}

const char *gpo_kernels_why(void) {
    pthread_once(&once, build_tables);
    return why_line;
}

const struct gpo_kernels *gpo_kernels_select(const char *name) {
    if (name && strcmp(name, "ref") == 0) return gpo_kernels_ref();
    if (name && strcmp(name, "avx512") == 0) return gpo_kernels_avx512();
    if (name && strcmp(name, "avx512-simde") == 0) return gpo_kernels_avx512_simde();
    if (name && strcmp(name, "avx2") == 0) return gpo_cpu_has_avx2() ? gpo_kernels_avx2() : NULL;
    if (name) return NULL;
    if (gpo_kernels_avx512()) return gpo_kernels_avx512();
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2()) return gpo_kernels_avx2();
    return gpo_kernels_ref();
}

const struct gpo_kernels *gpo_kernels_chosen(void) {
    const struct gpo_kernels *sel = gpo_kernels_select(getenv("GPTOSS_KERNELS"));
    return sel ? sel : gpo_kernels_select(NULL);
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
    FILL_(attn_scores_rows);
    FILL_(attn_accum);
    FILL_(mxfp4_from_ggml);
    FILL_(swiglu);
#undef FILL_
}
