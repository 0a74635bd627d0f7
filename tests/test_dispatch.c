/* test_dispatch.c - the choice of kernels: the CPU feature bits against
 * /proc/cpuinfo, and the AVX-512 table composed for every combination of AVX-512
 * features: a part is used only when the CPU has every feature it was compiled for,
 * the slots it leaves empty (and those of parts the CPU cannot run) come from the
 * AVX2 table, and the SIMDe build holds every part. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels/kernels.h"

typedef void (*slot_fn)(void);
#define SLOT0 offsetof(struct gpo_kernels, matmul)
#define NSLOTS ((sizeof(struct gpo_kernels) - SLOT0) / sizeof(slot_fn))

static slot_fn slot(const struct gpo_kernels *t, size_t i) {
    slot_fn f;
    memcpy(&f, (const char *)t + SLOT0 + i * sizeof f, sizeof f);
    return f;
}
static void set_slot(struct gpo_kernels *t, size_t i, slot_fn f) {
    memcpy((char *)t + SLOT0 + i * sizeof f, &f, sizeof f);
}

/* The fast path's optional slots, empty in tables without a SIMD kernel for them. */
static int optional_slot(size_t i) {
    const size_t off = SLOT0 + i * sizeof(slot_fn);
    return off == offsetof(struct gpo_kernels, matmul_q8_0_q8) ||
           off == offsetof(struct gpo_kernels, matmul_bf16_dot) ||
           off == offsetof(struct gpo_kernels, matmul_q8_0_q16s) ||
           off == offsetof(struct gpo_kernels, matmul_q8_0x16_q8) ||
           off == offsetof(struct gpo_kernels, matmul_q8_0x16_q16s);
}

/* Whether /proc/cpuinfo's first flags line lists flag (a whole word). */
static int cpuinfo_has(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return -1;
    char line[8192];
    int has = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        has = 0;
        for (char *tok = strtok(strchr(line, ':') + 1, " \t\n"); tok; tok = strtok(NULL, " \t\n"))
            if (!strcmp(tok, flag)) has = 1;
        break;
    }
    fclose(f);
    return has;
}

static void test_feature_bits_match_cpuinfo(void **state) {
    (void)state;
    static const struct {
        const char *flag;
        unsigned bit;
    } m[] = {{"avx512f", GPO_CPU_AVX512F},       {"avx512bw", GPO_CPU_AVX512BW},
             {"avx512vl", GPO_CPU_AVX512VL},     {"avx512dq", GPO_CPU_AVX512DQ},
             {"avx512_vnni", GPO_CPU_AVX512VNNI}, {"avx512_bf16", GPO_CPU_AVX512BF16},
             {"avx512vbmi", GPO_CPU_AVX512VBMI}};
    const unsigned bits = gpo_cpu_feature_bits();
    if (cpuinfo_has("avx2") < 0) skip();
    const int avx2 = cpuinfo_has("avx2") && cpuinfo_has("fma") && cpuinfo_has("f16c");
    assert_int_equal(!!(bits & GPO_CPU_AVX2), avx2);
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        printf("  %-12s cpuinfo %d, gptoss %d\n", m[i].flag, cpuinfo_has(m[i].flag),
               !!(bits & m[i].bit));
        assert_int_equal(!!(bits & m[i].bit), cpuinfo_has(m[i].flag));
    }
    printf("  %s\n", gpo_kernels_why());
}

/* Every combination of the AVX-512 feature bits (with AVX2): the composed table
 * equals the AVX2 table overlaid with the slots of exactly the parts whose needs
 * the combination meets, in part order, then completed with the reference. */
static void test_compose_every_feature_set(void **state) {
    (void)state;
    const struct gpo_kernels *a2 = gpo_kernels_avx2();
    if (!a2 || !gpo_cpu_has_avx2()) skip();
    struct gpo_kernels filled[8];
    assert_true(gpo_k512_n_parts <= 8);
    for (int p = 0; p < gpo_k512_n_parts; p++) {
        memset(&filled[p], 0, sizeof filled[p]);
        gpo_k512_parts[p].fill(&filled[p]);
        size_t n = 0;
        for (size_t i = 0; i < NSLOTS; i++) n += slot(&filled[p], i) != NULL;
        printf("  part %-5s fills %zu of %zu slots\n", gpo_k512_parts[p].name, n, NSLOTS);
        /* the part's needs include AVX-512F and AVX2 (its code is built on them) */
        assert_true(gpo_k512_parts[p].needs & GPO_CPU_AVX512F);
        assert_true(gpo_k512_parts[p].needs & GPO_CPU_AVX2);
    }
    const unsigned all512 = GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL |
                            GPO_CPU_AVX512DQ | GPO_CPU_AVX512VNNI | GPO_CPU_AVX512BF16 |
                            GPO_CPU_AVX512VBMI;
    int combos = 0;
    for (unsigned sub = 0; sub < 128; sub++) {
        unsigned cpu = GPO_CPU_AVX2;
        for (int b = 0; b < 7; b++)
            if (sub & (1u << b)) cpu |= GPO_CPU_AVX512F << b;
        assert_true((cpu & ~(all512 | GPO_CPU_AVX2)) == 0);
        struct gpo_kernels want = *a2, got;
        int used = 0;
        for (int p = 0; p < gpo_k512_n_parts; p++) {
            if ((cpu & gpo_k512_parts[p].needs) != gpo_k512_parts[p].needs) continue;
            used++;
            for (size_t i = 0; i < NSLOTS; i++)
                if (slot(&filled[p], i)) set_slot(&want, i, slot(&filled[p], i));
        }
        gpo_kernels_complete(&want);
        char why[512];
        assert_int_equal(gpo_kernels_compose512(&got, cpu, 0, why, sizeof why), used);
        for (size_t i = 0; i < NSLOTS; i++)
            if (slot(&got, i) != slot(&want, i))
                fail_msg("features 0x%x: slot %zu is not the expected kernel (%s)", cpu, i, why);
        if (!(cpu & GPO_CPU_AVX512F)) {
            assert_int_equal(used, 0);
            assert_non_null(strstr(why, "avx512f"));
        }
        combos++;
    }
    assert_int_equal(combos, 128);
    /* Without AVX2 there is no AVX-512 table at all. */
    struct gpo_kernels t;
    char why[256];
    assert_int_equal(gpo_kernels_compose512(&t, all512, 0, why, sizeof why), 0);
    assert_non_null(strstr(why, "avx2"));
}

/* The SIMDe build holds every part's slots, and is only chosen by name. */
static void test_simde_table(void **state) {
    (void)state;
    if (!gpo_cpu_has_avx2()) skip();
    const struct gpo_kernels *e = gpo_kernels_avx512_simde();
    assert_non_null(e);
    assert_string_equal(e->name, "avx512-simde");
    assert_ptr_equal(gpo_kernels_select("avx512-simde"), e);
    assert_ptr_not_equal(gpo_kernels_select(NULL), e);
    for (int p = 0; p < gpo_k512_n_parts; p++) {
        struct gpo_kernels z;
        memset(&z, 0, sizeof z);
        gpo_k512_parts[p].fill_emu(&z);
        for (size_t i = 0; i < NSLOTS; i++)
            if (slot(&z, i)) assert_true(slot(e, i) == slot(&z, i) || p + 1 < gpo_k512_n_parts);
    }
    /* every operation the reference implements is there */
    for (size_t i = 0; i < NSLOTS; i++)
        if (slot(gpo_kernels_ref(), i)) assert_non_null(slot(e, i));
}

/* The best table: avx512 when some part runs here, else avx2, else ref; unknown
 * names give NULL. */
static void test_select(void **state) {
    (void)state;
    const struct gpo_kernels *best = gpo_kernels_select(NULL);
    assert_non_null(best);
    if (gpo_kernels_avx512()) assert_ptr_equal(best, gpo_kernels_avx512());
    else if (gpo_cpu_has_avx2()) assert_ptr_equal(best, gpo_kernels_avx2());
    else assert_ptr_equal(best, gpo_kernels_ref());
    assert_null(gpo_kernels_select("avx1024"));
    assert_ptr_equal(gpo_kernels_select("ref"), gpo_kernels_ref());
    for (size_t i = 0; i < NSLOTS; i++)
        if (slot(gpo_kernels_ref(), i) && !optional_slot(i)) assert_non_null(slot(best, i));
}

/* The optional slots: the Q8_0 x int8 matmul comes with the int8 part (VNNI and VBMI),
 * the bf16 dot matmul with the bf16 part (AVX512_BF16); a CPU without the feature gets
 * an empty slot (the caller's f32 kernel), never the reference, and the reason line
 * names the missing feature. */
static void test_optional_parts(void **state) {
    (void)state;
    if (!gpo_kernels_avx2() || !gpo_cpu_has_avx2()) skip();
    const unsigned base = GPO_CPU_AVX2 | GPO_CPU_AVX512F | GPO_CPU_AVX512BW | GPO_CPU_AVX512VL |
                          GPO_CPU_AVX512DQ;
    struct gpo_kernels t;
    char why[512];
    assert_int_equal(gpo_kernels_compose512(&t, base, 0, why, sizeof why), 1);
    printf("  base only: %s\n", why);
    assert_null(t.matmul_q8_0_q8);
    assert_null(t.matmul_q8_0_q16s);
    assert_null(t.matmul_q8_0x16_q8);
    assert_null(t.matmul_q8_0x16_q16s);
    assert_null(t.matmul_bf16_dot);
    assert_non_null(strstr(why, "part bf16 needs avx512bf16"));
    assert_non_null(strstr(why, "part int8 needs avx512vnni avx512vbmi"));
    assert_int_equal(gpo_kernels_compose512(&t, base | GPO_CPU_AVX512BF16, 0, why, sizeof why), 2);
    printf("  base + bf16: %s\n", why);
    assert_non_null(t.matmul_bf16_dot);
    assert_null(t.matmul_q8_0_q8);
    assert_non_null(strstr(why, "parts: base, bf16"));
    assert_null(strstr(why, "part bf16 needs"));
    assert_int_equal(gpo_kernels_compose512(&t, base | GPO_CPU_AVX512VNNI | GPO_CPU_AVX512VBMI, 0,
                                            why, sizeof why),
                     2);
    assert_non_null(t.matmul_q8_0_q8);
    assert_non_null(t.matmul_q8_0_q16s);
    assert_non_null(t.matmul_q8_0x16_q8);
    assert_non_null(t.matmul_q8_0x16_q16s);
    assert_null(t.matmul_bf16_dot);
    assert_ptr_not_equal(t.matmul_q8_0_q8, gpo_kernels_ref()->matmul_q8_0_q8);
    assert_ptr_not_equal(t.matmul_q8_0_q16s, gpo_kernels_ref()->matmul_q8_0_q16s);
    /* The AVX2 table has neither; the SIMDe build has both. */
    assert_null(gpo_kernels_avx2()->matmul_q8_0_q8);
    assert_null(gpo_kernels_avx2()->matmul_q8_0_q16s);
    assert_null(gpo_kernels_avx2()->matmul_q8_0x16_q8);
    assert_null(gpo_kernels_avx2()->matmul_bf16_dot);
    assert_non_null(gpo_kernels_avx512_simde()->matmul_q8_0_q8);
    assert_non_null(gpo_kernels_avx512_simde()->matmul_q8_0_q16s);
    assert_non_null(gpo_kernels_avx512_simde()->matmul_bf16_dot);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_feature_bits_match_cpuinfo),
        cmocka_unit_test(test_compose_every_feature_set),
        cmocka_unit_test(test_simde_table),
        cmocka_unit_test(test_select),
        cmocka_unit_test(test_optional_parts),
    };
    return cmocka_run_group_tests_name("dispatch", tests, NULL, NULL);
}
