/* test_kernels.c - every kernel table this CPU can run (ref, avx2, avx512) against
 * the scalar reference at sizes that straddle vector widths, the determinism
 * contract of kernels.h (bit-identical across n_tok and row ranges), and MXFP4
 * decoding against the spec's test vectors (10.3) and the E8M0 edge values. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels/kernels.h"
#include "util.h"

/* ---- helpers ---- */

struct table {
    const char *name;
    const struct gpo_kernels *k;
};

/* The reference itself, then every SIMD table that is built and runnable here. */
static int tables(struct table *t) {
    int n = 0;
    t[n++] = (struct table){"ref", gpo_kernels_ref()};
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2())
        t[n++] = (struct table){"avx2", gpo_kernels_avx2()};
    if (gpo_kernels_avx512()) t[n++] = (struct table){"avx512", gpo_kernels_avx512()};
    /* The AVX-512 source built against SIMDe: tested wherever AVX2 runs. */
    if (gpo_kernels_avx512_simde())
        t[n++] = (struct table){"avx512-simde", gpo_kernels_avx512_simde()};
    return n;
}

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 1; }
static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static float rng_f(void) {
    return (float)((double)(rng_u64() >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}
static void fill_f(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = rng_f();
}
static void fill_u8(uint8_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)rng_u64();
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

/* Marks output slots that a kernel must not write. */
#define SENTINEL 12345.0f

/* 300 and 288 span two column chunks of the batched path; 2880 and 5760 end in a
 * partial chunk. */
static const int64_t DENSE_COLS[] = {1, 7, 8, 15, 16, 17, 33, 64, 96, 100, 160, 300, 2880, 5760};
static const int64_t MX_COLS[] = {32, 64, 96, 160, 288, 2880, 5760};
static const int64_t ROWS[] = {1, 3, 8, 17, 64};
static const int64_t NTOK[] = {1, 2, 3, 4, 5, 8, 13};
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

/* Relative tolerance against sum |w*x|: float32 sums of a few thousand terms in two
 * different orders differ by a few 1e-7 of that typically, by far less than 1e-5. */
#define REL_TOL 1e-5
#define ABS_TOL 1e-30

/* Compares y (ldy) against want (ldy) over tokens [0, n_tok) and rows [r0, r1), with
 * tolerance ABS_TOL + REL_TOL * mag[t*ldy + r]; slots outside [r0, r1) must still
 * hold SENTINEL.  Prints the first few misses and returns their count. */
static int compare_out(const char *what, const char *tab, const float *y, const float *want,
                       const double *mag, int64_t ldy, int64_t n_tok, int64_t rows, int64_t r0,
                       int64_t r1, int64_t n_cols, double rel) {
    int bad = 0;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            const float got = y[t * ldy + r];
            int ok;
            if (r < r0 || r >= r1) {
                ok = got == SENTINEL;
            } else {
                const float w = want[t * ldy + r];
                const double tol = ABS_TOL + rel * mag[t * ldy + r];
                ok = isfinite(got) && fabs((double)got - (double)w) <= tol;
            }
            if (!ok && bad++ < 5)
                print_error("%s [%s] cols=%lld rows=%lld ntok=%lld range=[%lld,%lld) "
                            "t=%lld r=%lld: got %.9g want %.9g (mag %.3g)\n",
                            what, tab, (long long)n_cols, (long long)rows, (long long)n_tok,
                            (long long)r0, (long long)r1, (long long)t, (long long)r, got,
                            r >= r0 && r < r1 ? want[t * ldy + r] : SENTINEL,
                            mag[t * ldy + r]);
        }
    return bad;
}

static void fill_sentinel(float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = SENTINEL;
}

/* ---- dense matmul (F32, F16, BF16) ---- */

static const char *dt_name(enum gpo_dtype dt) {
    return dt == GPO_DT_F32 ? "f32" : dt == GPO_DT_F16 ? "f16" : "bf16";
}

/* Random weights of type dt and their exact f32 values. */
static void *make_dense(enum gpo_dtype dt, float *wf, size_t n) {
    void *w = xmalloc(n * (dt == GPO_DT_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        const float v = rng_f();
        if (dt == GPO_DT_F32) {
            ((float *)w)[i] = wf[i] = v;
        } else if (dt == GPO_DT_BF16) {
            ((uint16_t *)w)[i] = f32_to_bf16(v);
            wf[i] = bf16_to_f32(((uint16_t *)w)[i]);
        } else {
            ((uint16_t *)w)[i] = f32_to_f16(v);
            wf[i] = f16_to_f32(((uint16_t *)w)[i]);
        }
    }
    return w;
}

/* mag[t][r] = sum_c |W[r][c] * x[t][c]| in double, the scale of the tolerance. */
static void dense_mag(double *mag, int64_t ldy, const float *wf, const float *x, int64_t ldx,
                      int64_t n_tok, int64_t rows, int64_t n_cols) {
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0;
            for (int64_t c = 0; c < n_cols; c++)
                s += fabs((double)wf[r * n_cols + c] * (double)x[t * ldx + c]);
            mag[t * ldy + r] = s;
        }
}

static void run_dense(enum gpo_dtype dt) {
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(100 + (uint64_t)dt);
    for (int ci = 0; ci < COUNT(DENSE_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = DENSE_COLS[ci], rows = ROWS[ri];
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1];
            const int64_t ldx = n_cols + 3, ldy = rows + 2;
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            void *w = make_dense(dt, wf, (size_t)(rows * n_cols));
            float *x = xmalloc((size_t)(max_tok * ldx) * 4);
            fill_f(x, (size_t)(max_tok * ldx));
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            dense_mag(mag, ldy, wf, x, ldx, max_tok, rows, n_cols);
            gpo_kernels_ref()->matmul[dt](want, ldy, w, x, ldx, max_tok, 0, rows, n_cols);
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                /* The widest rows only alone and in the largest batch (run time). */
                if (n_cols == 5760 && n_tok != max_tok && n_tok != 1) continue;
                for (int k = 0; k < nt; k++) {
                    fill_sentinel(y, (size_t)(max_tok * ldy));
                    tabs[k].k->matmul[dt](y, ldy, w, x, ldx, n_tok, 0, rows, n_cols);
                    bad += compare_out(dt_name(dt), tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                       0, rows, n_cols, REL_TOL);
                    /* A sub-range of rows starting past 0. */
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    if (r0 < r1) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul[dt](y, ldy, w, x, ldx, n_tok, r0, r1, n_cols);
                        bad += compare_out(dt_name(dt), tabs[k].name, y, want, mag, ldy, n_tok,
                                           rows, r0, r1, n_cols, REL_TOL);
                    }
                }
            }
            free(wf);
            free(w);
            free(x);
            free(want);
            free(y);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

static void test_matmul_f32(void **state) {
    (void)state;
    run_dense(GPO_DT_F32);
}
static void test_matmul_f16(void **state) {
    (void)state;
    run_dense(GPO_DT_F16);
}
static void test_matmul_bf16(void **state) {
    (void)state;
    run_dense(GPO_DT_BF16);
}

/* ---- MXFP4 ---- */

/* Random MXFP4 rows with scale bytes in [e_lo, e_hi]; wf gets the decoded values. */
static void make_mxfp4(uint8_t *blocks, uint8_t *scales, float *wf, int64_t rows, int64_t n_cols,
                       int e_lo, int e_hi) {
    const int64_t nb = n_cols / 32;
    fill_u8(blocks, (size_t)(rows * nb * 16));
    for (int64_t i = 0; i < rows * nb; i++)
        scales[i] = (uint8_t)(e_lo + (int)(rng_u64() % (uint64_t)(e_hi - e_lo + 1)));
    for (int64_t r = 0; r < rows; r++)
        gpo_mxfp4_dequant_row(wf + r * n_cols, blocks + r * nb * 16, scales + r * nb, n_cols);
}

static void run_mxfp4(int e_lo, int e_hi, uint64_t seed) {
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(seed);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = ROWS[ri], nb = n_cols / 32;
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1];
            const int64_t ldx = n_cols + 5, ldy = rows + 1;
            uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
            uint8_t *scales = xmalloc((size_t)(rows * nb));
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            make_mxfp4(blocks, scales, wf, rows, n_cols, e_lo, e_hi);
            float *x = xmalloc((size_t)(max_tok * ldx) * 4);
            fill_f(x, (size_t)(max_tok * ldx));
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            dense_mag(mag, ldy, wf, x, ldx, max_tok, rows, n_cols);
            gpo_kernels_ref()->matmul_mxfp4(want, ldy, blocks, scales, x, ldx, max_tok, 0, rows,
                                            n_cols);
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                /* The widest rows only alone and in the largest batch (run time). */
                if (n_cols == 5760 && n_tok != max_tok && n_tok != 1) continue;
                for (int k = 0; k < nt; k++) {
                    fill_sentinel(y, (size_t)(max_tok * ldy));
                    tabs[k].k->matmul_mxfp4(y, ldy, blocks, scales, x, ldx, n_tok, 0, rows, n_cols);
                    bad += compare_out("mxfp4", tabs[k].name, y, want, mag, ldy, n_tok, rows, 0,
                                       rows, n_cols, REL_TOL);
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    if (r0 < r1) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul_mxfp4(y, ldy, blocks, scales, x, ldx, n_tok, r0, r1,
                                                n_cols);
                        bad += compare_out("mxfp4", tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                           r0, r1, n_cols, REL_TOL);
                    }
                }
            }
            free(blocks);
            free(scales);
            free(wf);
            free(x);
            free(want);
            free(y);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

static void test_matmul_mxfp4(void **state) {
    (void)state;
    run_mxfp4(118, 130, 7);
}

/* Scale bytes over most of the range, denormal 2^-127 included (e = 0); the top is
 * kept where a row of 5760 products cannot overflow float. */
static void test_matmul_mxfp4_wide_scales(void **state) {
    (void)state;
    run_mxfp4(0, 230, 8);
}

/* Exact value of the q8 product in double from the integer block sums, and the
 * magnitude sum_b |scale_b| * sum_i |w_i q_i| for the tolerance. */
static void q8_exact(double *val, double *mag, const uint8_t *blocks, const uint8_t *scales,
                     const struct gpo_q8_block *xq, int64_t n_cols) {
    static const int w2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    double v = 0, m = 0;
    for (int64_t b = 0; b < n_cols / 32; b++) {
        long isum = 0, iabs = 0;
        for (int i = 0; i < 16; i++) {
            const uint8_t byte = blocks[b * 16 + i];
            const long p0 = (long)w2[byte & 15] * xq[b].qs[2 * i];
            const long p1 = (long)w2[byte >> 4] * xq[b].qs[2 * i + 1];
            isum += p0 + p1;
            iabs += labs(p0) + labs(p1);
        }
        const double sc = 0.5 * (double)gpo_e8m0_to_f32(scales[b]) * (double)xq[b].d;
        v += (double)isum * sc;
        m += (double)iabs * fabs(sc);
    }
    *val = v;
    *mag = m;
}

static void test_matmul_mxfp4_q8(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(9);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = ROWS[ri], nb = n_cols / 32;
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1];
            const int64_t ldxq = nb + 1, ldy = rows + 3;
            uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
            uint8_t *scales = xmalloc((size_t)(rows * nb));
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            make_mxfp4(blocks, scales, wf, rows, n_cols, 118, 130);
            float *x = xmalloc((size_t)(n_cols) * 4);
            struct gpo_q8_block *xq = xmalloc((size_t)(max_tok * ldxq) * sizeof *xq);
            for (int64_t t = 0; t < max_tok; t++) {
                fill_f(x, (size_t)n_cols);
                gpo_quantize_q8_ref(xq + t * ldxq, x, n_cols);
            }
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            for (int64_t t = 0; t < max_tok; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double v;
                    q8_exact(&v, &mag[t * ldy + r], blocks + r * nb * 16, scales + r * nb,
                             xq + t * ldxq, n_cols);
                    want[t * ldy + r] = (float)v;
                }
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                for (int k = 0; k < nt; k++) {
                    /* Both the reference and the SIMD variant against the exact
                     * integer sums: only the float combine may round. */
                    fill_sentinel(y, (size_t)(max_tok * ldy));
                    tabs[k].k->matmul_mxfp4_q8(y, ldy, blocks, scales, xq, ldxq, n_tok, 0, rows,
                                               n_cols);
                    bad += compare_out("mxfp4_q8", tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                       0, rows, n_cols, 2e-6);
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    if (r0 < r1) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul_mxfp4_q8(y, ldy, blocks, scales, xq, ldxq, n_tok, r0,
                                                   r1, n_cols);
                        bad += compare_out("mxfp4_q8", tabs[k].name, y, want, mag, ldy, n_tok,
                                           rows, r0, r1, n_cols, 2e-6);
                    }
                }
            }
            free(blocks);
            free(scales);
            free(wf);
            free(x);
            free(xq);
            free(want);
            free(y);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

/* With one scale byte per row and d a power of two, every partial sum is an integer
 * times the same power of two and stays below 2^24 of it, so any summation order is
 * exact: each table must then return exactly the integer dot product. */
static void test_matmul_mxfp4_q8_integer_exact(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(10);
    const int64_t n_cols = 2880, nb = n_cols / 32, rows = 17, n_tok = 5;
    uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
    uint8_t *scales = xmalloc((size_t)(rows * nb));
    fill_u8(blocks, (size_t)(rows * nb * 16));
    for (int64_t r = 0; r < rows; r++)
        memset(scales + r * nb, 120 + (int)(r % 9), (size_t)nb);
    struct gpo_q8_block *xq = xmalloc((size_t)(n_tok * nb) * sizeof *xq);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t b = 0; b < nb; b++) {
            xq[t * nb + b].d = ldexpf(1.0f, -6 - (int)t);
            for (int j = 0; j < 32; j++)
                xq[t * nb + b].qs[j] = (int8_t)(-127 + (int)(rng_u64() % 255));
        }
    float *y = xmalloc((size_t)(n_tok * rows) * 4);
    for (int k = 0; k < nt; k++) {
        tabs[k].k->matmul_mxfp4_q8(y, rows, blocks, scales, xq, nb, n_tok, 0, rows, n_cols);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = 0; r < rows; r++) {
                double v, m;
                q8_exact(&v, &m, blocks + r * nb * 16, scales + r * nb, xq + t * nb, n_cols);
                if ((double)y[t * rows + r] != v)
                    print_error("q8 exact [%s] t=%lld r=%lld got %.9g want %.9g\n", tabs[k].name,
                                (long long)t, (long long)r, y[t * rows + r], v);
                assert_true((double)y[t * rows + r] == v);
            }
    }
    free(blocks);
    free(scales);
    free(xq);
    free(y);
}

static void test_quantize_q8(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(11);
    const int64_t n = 2880 + 64;
    float *x = xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < 2880; i++) x[i] = rng_f() * (float)(1 << (i / 320)) * 0.01f;
    /* A block of zeros (d = 0) and a block whose scaled values hit exact halves:
     * amax = 127 gives d = 1, so 2.5 and -3.5 must round to even like lrintf. */
    for (int i = 0; i < 32; i++) x[2880 + i] = 0.0f;
    for (int i = 0; i < 32; i++) x[2912 + i] = (float)(i % 8) + 0.5f - 4.0f;
    x[2912 + 31] = 127.0f;
    struct gpo_q8_block *want = xmalloc((size_t)(n / 32) * sizeof *want);
    struct gpo_q8_block *got = xmalloc((size_t)(n / 32) * sizeof *got);
    gpo_quantize_q8_ref(want, x, n);
    assert_true(want[n / 32 - 1].d == 1.0f);
    assert_int_equal(want[n / 32 - 1].qs[0], -4); /* -3.5 -> -4 */
    assert_int_equal(want[n / 32 - 1].qs[1], -2); /* -2.5 -> -2 */
    assert_int_equal(want[n / 32 - 1].qs[6], 2);  /* 2.5 -> 2 */
    assert_true(want[n / 32 - 2].d == 0.0f);
    for (int k = 0; k < nt; k++) {
        memset(got, 0x55, (size_t)(n / 32) * sizeof *got);
        tabs[k].k->quantize_q8(got, x, n);
        for (int64_t b = 0; b < n / 32; b++) {
            if (memcmp(&got[b], &want[b], sizeof *got) != 0)
                print_error("quantize_q8 [%s] block %lld differs (d %.9g vs %.9g)\n", tabs[k].name,
                            (long long)b, got[b].d, want[b].d);
            assert_memory_equal(&got[b], &want[b], sizeof *got);
        }
    }
    free(x);
    free(want);
    free(got);
}

/* ---- MXFP4 x int16 activations ---- */

/* Exact value of the q16 product in double from the integer block sums, and the
 * magnitude sum_b |scale_b| * sum_i |w_i q_i| for the tolerance. */
static void q16_exact(double *val, double *mag, const uint8_t *blocks, const uint8_t *scales,
                      const struct gpo_q16_block *xq, int64_t n_cols) {
    static const int w2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    double v = 0, m = 0;
    for (int64_t b = 0; b < n_cols / 32; b++) {
        long isum = 0, iabs = 0;
        for (int i = 0; i < 16; i++) {
            const uint8_t byte = blocks[b * 16 + i];
            const long p0 = (long)w2[byte & 15] * xq[b].qs[2 * i];
            const long p1 = (long)w2[byte >> 4] * xq[b].qs[2 * i + 1];
            isum += p0 + p1;
            iabs += labs(p0) + labs(p1);
        }
        const double sc = 0.5 * (double)gpo_e8m0_to_f32(scales[b]) * (double)xq[b].d;
        v += (double)isum * sc;
        m += (double)iabs * fabs(sc);
    }
    *val = v;
    *mag = m;
}

static void run_mxfp4_q16(int e_lo, int e_hi, uint64_t seed) {
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(seed);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = ROWS[ri], nb = n_cols / 32;
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1];
            const int64_t ldxq = nb + 2, ldy = rows + 3;
            uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
            uint8_t *scales = xmalloc((size_t)(rows * nb));
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            make_mxfp4(blocks, scales, wf, rows, n_cols, e_lo, e_hi);
            float *x = xmalloc((size_t)(n_cols) * 4);
            struct gpo_q16_block *xq = xmalloc((size_t)(max_tok * ldxq) * sizeof *xq);
            for (int64_t t = 0; t < max_tok; t++) {
                fill_f(x, (size_t)n_cols);
                gpo_quantize_q16_ref(xq + t * ldxq, x, n_cols);
            }
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            for (int64_t t = 0; t < max_tok; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double v;
                    q16_exact(&v, &mag[t * ldy + r], blocks + r * nb * 16, scales + r * nb,
                              xq + t * ldxq, n_cols);
                    want[t * ldy + r] = (float)v;
                }
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                for (int k = 0; k < nt; k++) {
                    /* Against the exact integer sums: only the float combine rounds. */
                    fill_sentinel(y, (size_t)(max_tok * ldy));
                    tabs[k].k->matmul_mxfp4_q16(y, ldy, blocks, scales, xq, ldxq, n_tok, 0, rows,
                                                n_cols);
                    bad += compare_out("mxfp4_q16", tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                       0, rows, n_cols, 2e-6);
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    if (r0 < r1) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul_mxfp4_q16(y, ldy, blocks, scales, xq, ldxq, n_tok, r0,
                                                    r1, n_cols);
                        bad += compare_out("mxfp4_q16", tabs[k].name, y, want, mag, ldy, n_tok,
                                           rows, r0, r1, n_cols, 2e-6);
                    }
                }
            }
            free(blocks);
            free(scales);
            free(wf);
            free(x);
            free(xq);
            free(want);
            free(y);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

static void test_matmul_mxfp4_q16(void **state) {
    (void)state;
    run_mxfp4_q16(118, 130, 15);
}

/* Scale bytes over most of the range (as for the exact path), denormal half scales
 * included: those products fall under ABS_TOL. */
static void test_matmul_mxfp4_q16_wide_scales(void **state) {
    (void)state;
    run_mxfp4_q16(0, 230, 16);
}

/* As for q8: one scale byte per row and a power-of-two d per token make every partial
 * sum an integer times one power of two.  The cases keep the sums below 2^24 of it,
 * so any order is exact and each table must return the integer dot product exactly:
 * 2880 columns with |q| <= 400 (past the int8 range), single blocks over the whole
 * int16 range (-32768 and +-32767 included), and scale bytes 0..8, whose half scale
 * 0.5 * 2^(e-127) is denormal, with a large d that brings the product back into the
 * normal range. */
static void q16_exact_case(const struct table *tabs, int nt, int64_t n_cols, int64_t rows,
                           int64_t n_tok, int qmax, int e_base, int d_exp) {
    const int64_t nb = n_cols / 32;
    uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
    uint8_t *scales = xmalloc((size_t)(rows * nb));
    fill_u8(blocks, (size_t)(rows * nb * 16));
    for (int64_t r = 0; r < rows; r++)
        memset(scales + r * nb, e_base + (int)(r % 9), (size_t)nb);
    struct gpo_q16_block *xq = xmalloc((size_t)(n_tok * nb) * sizeof *xq);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t b = 0; b < nb; b++) {
            xq[t * nb + b].d = ldexpf(1.0f, d_exp - (int)t);
            for (int j = 0; j < 32; j++)
                xq[t * nb + b].qs[j] =
                    (int16_t)(-qmax + (int)(rng_u64() % (uint64_t)(2 * qmax + 1)));
            if (qmax == 32768) { /* the extremes, next to the largest weights */
                xq[t * nb + b].qs[t % 32] = -32768;
                xq[t * nb + b].qs[(t + 7) % 32] = 32767;
                xq[t * nb + b].qs[(t + 13) % 32] = -32767;
            }
        }
    if (qmax == 32768) /* codes 7 and 15 (+-6, doubled +-12) in some blocks */
        for (int64_t i = 0; i < rows * nb * 16; i += 3) blocks[i] = (uint8_t)(i % 2 ? 0x7f : 0xf7);
    float *y = xmalloc((size_t)(n_tok * rows) * 4);
    for (int k = 0; k < nt; k++) {
        tabs[k].k->matmul_mxfp4_q16(y, rows, blocks, scales, xq, nb, n_tok, 0, rows, n_cols);
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = 0; r < rows; r++) {
                double v, m;
                q16_exact(&v, &m, blocks + r * nb * 16, scales + r * nb, xq + t * nb, n_cols);
                assert_true(m / ((double)gpo_e8m0_to_f32(scales[r * nb]) * 0.5 * xq[t * nb].d) <
                            16777216.0);
                if ((double)y[t * rows + r] != v)
                    print_error("q16 exact [%s] cols=%lld t=%lld r=%lld got %.9g want %.9g\n",
                                tabs[k].name, (long long)n_cols, (long long)t, (long long)r,
                                y[t * rows + r], v);
                assert_true((double)y[t * rows + r] == v);
            }
    }
    free(blocks);
    free(scales);
    free(xq);
    free(y);
}

static void test_matmul_mxfp4_q16_integer_exact(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(21);
    q16_exact_case(tabs, nt, 2880, 17, 5, 400, 120, -14);
    q16_exact_case(tabs, nt, 32, 17, 13, 32768, 120, -14);
    q16_exact_case(tabs, nt, 160, 17, 5, 400, 0, 20);
}

static void test_quantize_q16(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(17);
    const int64_t n = 2880 + 96;
    float *x = xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < 2880; i++) x[i] = rng_f() * (float)(1 << (i / 320)) * 0.01f;
    /* A block of zeros (d = 0), and two whose scaled values hit exact halves: amax =
     * 32767 gives d = 1, so the halves must round to even like lrintf. */
    for (int i = 0; i < 32; i++) x[2880 + i] = 0.0f;
    for (int i = 0; i < 32; i++) x[2912 + i] = (float)(i % 8) + 0.5f - 4.0f;
    x[2912 + 31] = 32767.0f;
    for (int i = 0; i < 32; i++) x[2944 + i] = (i % 2 ? -1.0f : 1.0f) * (32766.5f - (float)i);
    x[2944 + 30] = -32767.0f;
    struct gpo_q16_block *want = xmalloc((size_t)(n / 32) * sizeof *want);
    struct gpo_q16_block *got = xmalloc((size_t)(n / 32) * sizeof *got);
    gpo_quantize_q16_ref(want, x, n);
    const struct gpo_q16_block *h = &want[n / 32 - 2];
    assert_true(h->d == 1.0f);
    assert_int_equal(h->qs[0], -4); /* -3.5 -> -4 */
    assert_int_equal(h->qs[1], -2); /* -2.5 -> -2 */
    assert_int_equal(h->qs[6], 2);  /* 2.5 -> 2 */
    assert_int_equal(h->qs[31], 32767);
    h = &want[n / 32 - 1];
    assert_true(h->d == 1.0f);
    assert_int_equal(h->qs[0], 32766);  /* 32766.5 -> 32766 */
    assert_int_equal(h->qs[1], -32766); /* -32765.5 -> -32766 */
    assert_int_equal(h->qs[30], -32767);
    assert_true(want[n / 32 - 3].d == 0.0f);
    for (int k = 0; k < nt; k++) {
        memset(got, 0x55, (size_t)(n / 32) * sizeof *got);
        tabs[k].k->quantize_q16(got, x, n);
        for (int64_t b = 0; b < n / 32; b++) {
            if (memcmp(&got[b], &want[b], sizeof *got) != 0)
                print_error("quantize_q16 [%s] block %lld differs (d %.9g vs %.9g)\n",
                            tabs[k].name, (long long)b, got[b].d, want[b].d);
            assert_memory_equal(&got[b], &want[b], sizeof *got);
        }
    }
    free(x);
    free(want);
    free(got);
}

/* ---- Q8_0 weights (--dense q8) ---- */

/* Random Q8_0 rows requantised from f32 like the loader does; block magnitudes span
 * 2^-30 .. 2^4, so d runs through f16 denormals (and to 0 below them). wf gets the
 * dequantised values q * f16(d). */
static struct gpo_q8_0_block *make_q8_0(float *wf, int64_t rows, int64_t n_cols) {
    const int64_t nb = n_cols / 32;
    struct gpo_q8_0_block *w = xmalloc((size_t)(rows * nb) * sizeof *w);
    float *src = xmalloc((size_t)n_cols * 4);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const int sh = (int)(rng_u64() % 8) == 0 ? -30 + (int)(rng_u64() % 20)
                                                     : -4 + (int)(rng_u64() % 9);
            for (int i = 0; i < 32; i++) src[b * 32 + i] = ldexpf(rng_f(), sh);
        }
        gpo_quantize_row_q8_0(w + r * nb, src, GPO_DT_F32, n_cols);
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < 32; i++)
                wf[r * n_cols + b * 32 + i] =
                    (float)w[r * nb + b].qs[i] * f16_to_f32(w[r * nb + b].d);
    }
    free(src);
    return w;
}

/* The usual batch sizes and one past the point where the SIMD tables switch to the
 * panel path for Q8_0. */
static const int64_t Q8_0_NTOK[] = {1, 2, 3, 4, 5, 8, 13, 20};

static void test_matmul_q8_0(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(18);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = ROWS[ri];
            const int64_t max_tok = Q8_0_NTOK[COUNT(Q8_0_NTOK) - 1];
            const int64_t ldx = n_cols + 3, ldy = rows + 2;
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            struct gpo_q8_0_block *w = make_q8_0(wf, rows, n_cols);
            float *x = xmalloc((size_t)(max_tok * ldx) * 4);
            fill_f(x, (size_t)(max_tok * ldx));
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            dense_mag(mag, ldy, wf, x, ldx, max_tok, rows, n_cols);
            /* The dequantised weights times x, summed in double. */
            for (int64_t t = 0; t < max_tok; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double s = 0;
                    for (int64_t c = 0; c < n_cols; c++)
                        s += (double)wf[r * n_cols + c] * (double)x[t * ldx + c];
                    want[t * ldy + r] = (float)s;
                }
            for (int ti = 0; ti < COUNT(Q8_0_NTOK); ti++) {
                const int64_t n_tok = Q8_0_NTOK[ti];
                if (n_cols == 5760 && n_tok != max_tok && n_tok != 1) continue;
                for (int k = 0; k < nt; k++) {
                    fill_sentinel(y, (size_t)(max_tok * ldy));
                    tabs[k].k->matmul[GPO_DT_Q8_0](y, ldy, w, x, ldx, n_tok, 0, rows, n_cols);
                    bad += compare_out("q8_0", tabs[k].name, y, want, mag, ldy, n_tok, rows, 0,
                                       rows, n_cols, REL_TOL);
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    if (r0 < r1) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul[GPO_DT_Q8_0](y, ldy, w, x, ldx, n_tok, r0, r1, n_cols);
                        bad += compare_out("q8_0", tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                           r0, r1, n_cols, REL_TOL);
                    }
                }
            }
            free(wf);
            free(w);
            free(x);
            free(want);
            free(y);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

/* ---- the fast path's optional dense kernels ---- */

/* Q8_0 weights times int8 activations (offset by 128, gpo_q8_offset): every table
 * that has the kernel (the reference twin included) against the exact block sums
 * S_b * (f16(d_w) * d_x) added in double, and bit for bit against the reference
 * twin (the kernels share its order of operations), at odd block counts, row counts
 * and ranges that cut 16-row groups, and batch sizes that cut 8-token tiles. */
static const int64_t Q80Q8_ROWS[] = {1, 3, 8, 16, 17, 40, 64};
/* q16: int16 activations split into bytes (matmul_q8_0_q16s) instead of int8. */
static void check_q8_0_int(int q16) {
    struct table tabs[4];
    const int nt = tables(tabs);
    const char *what = q16 ? "q8_0_q16s" : "q8_0_q8";
    int bad = 0, runs = 0, runs_x16 = 0;
    rng_seed(q16 ? 33 : 31);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(Q80Q8_ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = Q80Q8_ROWS[ri], nb = n_cols / 32;
            const int64_t max_tok = Q8_0_NTOK[COUNT(Q8_0_NTOK) - 1], ldxq = nb + 1, ldy = rows + 2;
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            struct gpo_q8_0_block *w = make_q8_0(wf, rows, n_cols);
            /* The same matrix as Q8_0x16 (rows a multiple of 16): the tables' Q8_0x16
             * kernels must give the reference's Q8_0 bits too. */
            void *wx = NULL;
            if (rows % GPO_Q8X16_ROWS == 0) {
                wx = xmalloc((size_t)(rows * nb) * sizeof(struct gpo_q8_0_block));
                gpo_q8_0x16_pack(wx, w, rows, n_cols);
            }
            float *x = xmalloc((size_t)(max_tok * n_cols) * 4);
            fill_f(x, (size_t)(max_tok * n_cols));
            struct gpo_q8_block *xq = xmalloc((size_t)(max_tok * ldxq) * sizeof *xq);
            struct gpo_q16_block *x16 = xmalloc((size_t)(max_tok * ldxq) * sizeof *x16);
            struct gpo_q16s_block *x16s = xmalloc((size_t)(max_tok * ldxq) * sizeof *x16s);
            for (int64_t t = 0; t < max_tok; t++) {
                if (q16) gpo_quantize_q16_ref(x16 + t * ldxq, x + t * n_cols, n_cols);
                else gpo_quantize_q8_ref(xq + t * ldxq, x + t * n_cols, n_cols);
            }
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            float *yref = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            for (int64_t t = 0; t < max_tok; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double s = 0, m = 0;
                    for (int64_t b = 0; b < nb; b++) {
                        const struct gpo_q8_0_block *wb = w + r * nb + b;
                        const int64_t xi = t * ldxq + b;
                        int64_t blk = 0, ablk = 0;
                        for (int i = 0; i < 32; i++) {
                            const int64_t xv = q16 ? x16[xi].qs[i] : xq[xi].qs[i];
                            blk += wb->qs[i] * xv;
                            ablk += llabs(wb->qs[i] * xv);
                        }
                        const double sc = (double)(f16_to_f32(wb->d) * (q16 ? x16[xi].d : xq[xi].d));
                        s += (double)blk * sc;
                        m += (double)ablk * fabs(sc);
                    }
                    want[t * ldy + r] = (float)s;
                    mag[t * ldy + r] = m;
                }
            for (int64_t t = 0; t < max_tok; t++) {
                if (q16) gpo_q16_split(x16s + t * ldxq, x16 + t * ldxq, nb);
                else gpo_q8_offset(xq + t * ldxq, nb);
            }
            for (int ti = 0; ti < COUNT(Q8_0_NTOK); ti++) {
                const int64_t n_tok = Q8_0_NTOK[ti];
                for (int k = 0; k < nt; k++) {
                    if (q16 ? !tabs[k].k->matmul_q8_0_q16s : !tabs[k].k->matmul_q8_0_q8) continue;
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    const int64_t cuts[2][2] = {{0, rows}, {r0, r1}};
                    for (int c = 0; c < 2; c++) {
                        if (cuts[c][0] >= cuts[c][1]) continue;
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        fill_sentinel(yref, (size_t)(max_tok * ldy));
                        if (q16) {
                            tabs[k].k->matmul_q8_0_q16s(y, ldy, w, x16s, ldxq, n_tok, cuts[c][0],
                                                        cuts[c][1], n_cols);
                            gpo_matmul_q8_0_q16s_ref(yref, ldy, w, x16s, ldxq, n_tok, cuts[c][0],
                                                     cuts[c][1], n_cols);
                        } else {
                            tabs[k].k->matmul_q8_0_q8(y, ldy, w, xq, ldxq, n_tok, cuts[c][0],
                                                      cuts[c][1], n_cols);
                            gpo_matmul_q8_0_q8_ref(yref, ldy, w, xq, ldxq, n_tok, cuts[c][0],
                                                   cuts[c][1], n_cols);
                        }
                        bad += compare_out(what, tabs[k].name, y, want, mag, ldy, n_tok, rows,
                                           cuts[c][0], cuts[c][1], n_cols, REL_TOL);
                        if (memcmp(y, yref, (size_t)(max_tok * ldy) * 4) != 0 && bad++ < 5)
                            print_error("%s [%s] cols=%lld rows=%lld ntok=%lld: not the "
                                        "reference's bits\n", what, tabs[k].name,
                                        (long long)n_cols, (long long)rows, (long long)n_tok);
                        runs++;
                        const gpo_matmul_q8_0_q8_fn x8 = tabs[k].k->matmul_q8_0x16_q8;
                        const gpo_matmul_q8_0_q16s_fn x16k = tabs[k].k->matmul_q8_0x16_q16s;
                        if (!wx || (q16 ? !x16k : !x8)) continue;
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        if (q16) x16k(y, ldy, wx, x16s, ldxq, n_tok, cuts[c][0], cuts[c][1], n_cols);
                        else x8(y, ldy, wx, xq, ldxq, n_tok, cuts[c][0], cuts[c][1], n_cols);
                        if (memcmp(y, yref, (size_t)(max_tok * ldy) * 4) != 0 && bad++ < 5)
                            print_error("%s [%s] Q8_0x16 cols=%lld rows=%lld ntok=%lld rows "
                                        "%lld-%lld: not the reference's bits\n", what,
                                        tabs[k].name, (long long)n_cols, (long long)rows,
                                        (long long)n_tok, (long long)cuts[c][0],
                                        (long long)cuts[c][1]);
                        runs_x16++;
                    }
                }
            }
            free(wf);
            free(w);
            free(wx);
            free(x);
            free(xq);
            free(x16);
            free(x16s);
            free(want);
            free(y);
            free(yref);
            free(mag);
        }
    printf("  %s: %d runs over the tables that have it, %d of them on Q8_0x16 weights\n", what,
           runs, runs_x16);
    assert_true(runs > 0);
    assert_true(runs_x16 > 0);
    assert_int_equal(bad, 0);
}

/* Q8_0x16: packing and unpacking give back every block, and every table's exact-path
 * matmul on the packed matrix gives its own Q8_0 kernel's bits (at row ranges that
 * cut groups and token counts that cut tiles). */
static void test_q8_0x16_layout(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0, runs = 0;
    rng_seed(35);
    const int64_t cols_list[] = {32, 96, 2880}, rows_list[] = {16, 48};
    for (int ci = 0; ci < COUNT(cols_list); ci++)
        for (int ri = 0; ri < COUNT(rows_list); ri++) {
            const int64_t n_cols = cols_list[ci], rows = rows_list[ri], nb = n_cols / 32;
            const size_t wbytes = (size_t)(rows * nb) * sizeof(struct gpo_q8_0_block);
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            struct gpo_q8_0_block *w = make_q8_0(wf, rows, n_cols);
            struct gpo_q8_0_block *back = xmalloc(wbytes);
            void *wx = xmalloc(wbytes);
            gpo_q8_0x16_pack(wx, w, rows, n_cols);
            for (int64_t r = 0; r < rows; r++) gpo_q8_0x16_row(back + r * nb, wx, r, n_cols);
            if (memcmp(back, w, wbytes) != 0 && bad++ < 5)
                print_error("Q8_0x16 %lldx%lld: unpacking does not give the blocks back\n",
                            (long long)rows, (long long)n_cols);
            const int64_t max_tok = 20, ldy = rows + 1;
            float *x = xmalloc((size_t)(max_tok * n_cols) * 4);
            fill_f(x, (size_t)(max_tok * n_cols));
            float *y = xmalloc((size_t)(max_tok * ldy) * 4), *y2 = xmalloc((size_t)(max_tok * ldy) * 4);
            for (int k = 0; k < nt; k++) {
                struct gpo_kernels kt = *tabs[k].k;
                gpo_kernels_complete(&kt);
                const int64_t toks[] = {1, 3, 8, 20}, cuts[2][2] = {{0, rows}, {5, rows - 3}};
                for (int ti = 0; ti < COUNT(toks); ti++)
                    for (int c = 0; c < 2; c++) {
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        fill_sentinel(y2, (size_t)(max_tok * ldy));
                        kt.matmul[GPO_DT_Q8_0](y, ldy, w, x, n_cols, toks[ti], cuts[c][0], cuts[c][1], n_cols);
                        kt.matmul[GPO_DT_Q8_0X16](y2, ldy, wx, x, n_cols, toks[ti], cuts[c][0], cuts[c][1], n_cols);
                        if (memcmp(y, y2, (size_t)(max_tok * ldy) * 4) != 0 && bad++ < 5)
                            print_error("Q8_0x16 [%s] %lldx%lld ntok=%lld rows %lld-%lld: not the "
                                        "Q8_0 kernel's bits\n", tabs[k].name, (long long)rows,
                                        (long long)n_cols, (long long)toks[ti],
                                        (long long)cuts[c][0], (long long)cuts[c][1]);
                        runs++;
                    }
            }
            free(wf);
            free(w);
            free(back);
            free(wx);
            free(x);
            free(y);
            free(y2);
        }
    printf("  Q8_0x16 exact path: %d runs\n", runs);
    assert_true(runs > 0);
    assert_int_equal(bad, 0);
}

static void test_matmul_q8_0_q8(void **state) {
    (void)state;
    check_q8_0_int(0);
}

/* The same with int16 activations split into bytes; the split itself gives back
 * every int16 value. */
static void test_matmul_q8_0_q16s(void **state) {
    (void)state;
    struct gpo_q16_block in;
    struct gpo_q16s_block out;
    int bad = 0;
    in.d = 1.0f;
    for (int32_t v = -32768; v <= 32767; v += 32) {
        for (int i = 0; i < 32; i++) in.qs[i] = (int16_t)(v + i);
        gpo_q16_split(&out, &in, 1);
        for (int i = 0; i < 32; i++)
            bad += 256 * ((int32_t)out.hi[i] - 128) + out.lo[i] != v + i;
    }
    assert_int_equal(bad, 0);
    check_q8_0_int(1);
}

/* BF16 weights times activations rounded to bf16: every table that has the kernel
 * (the reference twin included) against the exact products bf16(w) * bf16(x) summed
 * in double, at column counts around the 32-column step and its tail. */
static void test_matmul_bf16_dot(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0, runs = 0;
    rng_seed(32);
    for (int ci = 0; ci < COUNT(DENSE_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = DENSE_COLS[ci], rows = ROWS[ri];
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1], ldx = n_cols + 3, ldy = rows + 2;
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            void *w = make_dense(GPO_DT_BF16, wf, (size_t)(rows * n_cols));
            float *x = xmalloc((size_t)(max_tok * ldx) * 4);
            float *xr = xmalloc((size_t)(max_tok * ldx) * 4);
            fill_f(x, (size_t)(max_tok * ldx));
            for (int64_t i = 0; i < max_tok * ldx; i++) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            float *y = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            dense_mag(mag, ldy, wf, xr, ldx, max_tok, rows, n_cols);
            for (int64_t t = 0; t < max_tok; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double s = 0;
                    for (int64_t c = 0; c < n_cols; c++)
                        s += (double)wf[r * n_cols + c] * (double)xr[t * ldx + c];
                    want[t * ldy + r] = (float)s;
                }
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                for (int k = 0; k < nt; k++) {
                    if (!tabs[k].k->matmul_bf16_dot) continue;
                    const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                    const int64_t cuts[2][2] = {{0, rows}, {r0, r1}};
                    for (int c = 0; c < 2; c++) {
                        if (cuts[c][0] >= cuts[c][1]) continue;
                        fill_sentinel(y, (size_t)(max_tok * ldy));
                        tabs[k].k->matmul_bf16_dot(y, ldy, w, x, ldx, n_tok, cuts[c][0],
                                                   cuts[c][1], n_cols);
                        bad += compare_out("bf16_dot", tabs[k].name, y, want, mag, ldy, n_tok,
                                           rows, cuts[c][0], cuts[c][1], n_cols, REL_TOL);
                        runs++;
                    }
                }
            }
            free(wf);
            free(w);
            free(x);
            free(xr);
            free(want);
            free(y);
            free(mag);
        }
    printf("  bf16_dot: %d runs over the tables that have it\n", runs);
    assert_true(runs > 0);
    assert_int_equal(bad, 0);
}

/* The requantisation of F32, BF16 and F16 rows: d = f16(amax/127), |q| <= 127, and
 * every weight comes back within d/2 (plus the rounding of 1/d and of w * (1/d), a
 * few 1e-5 of d); an all-zero block has d = 0. */
static void test_quantize_row_q8_0(void **state) {
    (void)state;
    rng_seed(19);
    const int64_t n = 2880;
    float *src = xmalloc((size_t)n * 4), *wf = xmalloc((size_t)n * 4);
    uint16_t *w16 = xmalloc((size_t)n * 2);
    struct gpo_q8_0_block *q = xmalloc((size_t)(n / 32) * sizeof *q);
    static const enum gpo_dtype dts[] = {GPO_DT_F32, GPO_DT_BF16, GPO_DT_F16};
    for (int di = 0; di < COUNT(dts); di++) {
        const enum gpo_dtype dt = dts[di];
        for (int64_t i = 0; i < n; i++) src[i] = rng_f() * ldexpf(1.0f, (int)(i / 32 % 12) - 8);
        for (int i = 0; i < 32; i++) src[64 + i] = 0.0f;
        src[100] = 3.0f; /* one large element: the rest of its block quantises coarsely */
        const void *w = src;
        if (dt != GPO_DT_F32) {
            for (int64_t i = 0; i < n; i++)
                w16[i] = dt == GPO_DT_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
            w = w16;
        }
        gpo_to_f32(wf, w, dt, n);
        gpo_quantize_row_q8_0(q, w, dt, n);
        for (int64_t b = 0; b < n / 32; b++) {
            float amax = 0.0f;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(wf[b * 32 + i]));
            assert_int_equal(q[b].d, f32_to_f16(amax / 127.0f));
            const double d = f16_to_f32(q[b].d);
            if (amax == 0.0f) assert_true(d == 0.0);
            for (int i = 0; i < 32; i++) {
                assert_true(q[b].qs[i] >= -127 && q[b].qs[i] <= 127);
                const double err = fabs((double)wf[b * 32 + i] - q[b].qs[i] * d);
                if (!(err <= d * (0.5 + 4e-5)))
                    print_error("q8_0 round trip %s block %lld elem %d: w %.9g q %d d %.9g\n",
                                dt_name(dt), (long long)b, i, wf[b * 32 + i], q[b].qs[i], d);
                assert_true(err <= d * (0.5 + 4e-5));
            }
        }
        assert_true(q[2].d == 0 && q[3].d != 0);
    }
    free(src);
    free(wf);
    free(w16);
    free(q);
}

/* ---- the clamped SwiGLU ---- */

/* Distance in units in the last place between two floats of the same sign (a large
 * number for different signs, 0 for equal values). */
static int64_t ulp_dist(float a, float b) {
    if (a == b) return 0;
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if ((ia < 0) != (ib < 0)) return INT64_MAX;
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* Every table's swiglu against the reference (libm expf): gate rows then linear rows
 * (step 1) and interleaved pairs (step 2), lengths across the vector tails, gate values
 * from -60 (e^(-alpha g) overflows to +inf) to past the limit, and the special values:
 * +-inf, NaN (the clamps take the bound), +-0, +-limit, +-1e30.  Within 4 ulp, NaN where
 * the reference is NaN. */
static void test_swiglu(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    static const int64_t ns[] = {1, 5, 15, 16, 17, 31, 33, 100, 2880};
    const float specials[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 7.0f, -7.0f, 1e30f, -1e30f,
                              -52.0f, -52.5f, -53.0f};
    const float alpha = 1.702f, limit = 7.0f;
    int bad = 0, runs = 0;
    int64_t worst = 0;
    rng_seed(41);
    for (int ni = 0; ni < COUNT(ns); ni++) {
        const int64_t n = ns[ni];
        float *h = xmalloc((size_t)(2 * n + 1) * 4), *want = xmalloc((size_t)n * 4);
        float *got = xmalloc((size_t)(n + 1) * 4);
        for (int64_t i = 0; i < 2 * n + 1; i++) h[i] = rng_f() * 60.0f - 10.0f * (i % 3 == 0);
        for (int i = 0; i < COUNT(specials) && 2 * i + 1 < 2 * n; i++) {
            h[(7 * i) % (2 * n)] = specials[i];
            h[(7 * i + 3) % (2 * n)] = specials[COUNT(specials) - 1 - i];
        }
        for (int step = 1; step <= 2; step++) {
            const float *g = h, *l = step == 1 ? h + n : h + 1;
            gpo_swiglu_ref(want, g, l, step, n, alpha, limit);
            for (int k = 0; k < nt; k++) {
                got[n] = SENTINEL;
                tabs[k].k->swiglu(got, g, l, step, n, alpha, limit);
                runs++;
                assert_true(got[n] == SENTINEL);
                for (int64_t u = 0; u < n; u++) {
                    const int64_t d = isnan(want[u]) ? (isnan(got[u]) ? 0 : INT64_MAX)
                                                     : ulp_dist(got[u], want[u]);
                    if (d > 4) {
                        if (bad++ < 10)
                            print_error("swiglu [%s] n %lld step %d u %lld: g %.9g l %.9g: got "
                                        "%.9g want %.9g\n",
                                        tabs[k].name, (long long)n, step, (long long)u,
                                        g[u * step], l[u * step], got[u], want[u]);
                    } else if (d > worst) {
                        worst = d;
                    }
                }
            }
        }
        free(h);
        free(want);
        free(got);
    }
    printf("  swiglu: %d runs, largest distance %lld ulp\n", runs, (long long)worst);
    assert_int_equal(bad, 0);
}

/* ---- determinism contract ---- */

/* Which kernel a determinism run exercises. */
enum kind { K_F32, K_F16, K_BF16, K_MXFP4, K_Q8, K_Q16, K_Q8_0, K_Q8_0_Q8, K_BF16_DOT };

struct det_case {
    enum kind kind;
    void *w;                    /* dense or Q8_0 weights */
    uint8_t *blocks, *scales;   /* MXFP4 */
    const float *x;             /* f32 activations, ldx */
    const struct gpo_q8_block *xq;
    const struct gpo_q16_block *xq16;
    int64_t ldx, n_cols, rows;
};

static void det_run(const struct gpo_kernels *k, const struct det_case *c, float *y, int64_t ldy,
                    int64_t t0, int64_t n_tok, int64_t r0, int64_t r1) {
    const float *x = c->x + t0 * c->ldx;
    switch (c->kind) {
    case K_F32: k->matmul[GPO_DT_F32](y, ldy, c->w, x, c->ldx, n_tok, r0, r1, c->n_cols); break;
    case K_F16: k->matmul[GPO_DT_F16](y, ldy, c->w, x, c->ldx, n_tok, r0, r1, c->n_cols); break;
    case K_BF16: k->matmul[GPO_DT_BF16](y, ldy, c->w, x, c->ldx, n_tok, r0, r1, c->n_cols); break;
    case K_MXFP4:
        k->matmul_mxfp4(y, ldy, c->blocks, c->scales, x, c->ldx, n_tok, r0, r1, c->n_cols);
        break;
    case K_Q8:
        k->matmul_mxfp4_q8(y, ldy, c->blocks, c->scales, c->xq + t0 * (c->n_cols / 32),
                           c->n_cols / 32, n_tok, r0, r1, c->n_cols);
        break;
    case K_Q16:
        k->matmul_mxfp4_q16(y, ldy, c->blocks, c->scales, c->xq16 + t0 * (c->n_cols / 32),
                            c->n_cols / 32, n_tok, r0, r1, c->n_cols);
        break;
    case K_Q8_0:
        k->matmul[GPO_DT_Q8_0](y, ldy, c->w, x, c->ldx, n_tok, r0, r1, c->n_cols);
        break;
    case K_Q8_0_Q8:
        k->matmul_q8_0_q8(y, ldy, c->w, c->xq + t0 * (c->n_cols / 32), c->n_cols / 32, n_tok, r0,
                          r1, c->n_cols);
        break;
    case K_BF16_DOT:
        k->matmul_bf16_dot(y, ldy, c->w, x, c->ldx, n_tok, r0, r1, c->n_cols);
        break;
    }
}

/* Whether table k has the kernel a determinism case runs (the optional slots). */
static int det_has(const struct gpo_kernels *k, enum kind kind) {
    if (kind == K_Q8_0_Q8) return k->matmul_q8_0_q8 != NULL;
    if (kind == K_BF16_DOT) return k->matmul_bf16_dot != NULL;
    return 1;
}

/* Every token of an n_tok-token batch (13, or more to cross the token chunks of the
 * batched paths) equals the token computed alone (and inside smaller batches), and
 * every row range equals the full range, bit for bit. */
static void det_check(const char *tab, const struct gpo_kernels *k, const struct det_case *c,
                      int64_t n_tok) {
    const int64_t rows = c->rows, ldy = rows;
    float *full = xmalloc((size_t)(n_tok * rows) * 4);
    float *part = xmalloc((size_t)(n_tok * rows) * 4);
    det_run(k, c, full, ldy, 0, n_tok, 0, rows);
    for (int ti = 0; ti < COUNT(NTOK); ti++) {
        const int64_t nt = NTOK[ti];
        for (int64_t t0 = 0; t0 + nt <= n_tok; t0 += nt) {
            det_run(k, c, part, ldy, t0, nt, 0, rows);
            if (memcmp(part, full + t0 * ldy, (size_t)(nt * rows) * 4) != 0)
                print_error("determinism [%s] kind %d cols %lld: tokens [%lld,%lld) alone differ "
                            "from the 13-token batch\n",
                            tab, (int)c->kind, (long long)c->n_cols, (long long)t0,
                            (long long)(t0 + nt));
            assert_memory_equal(part, full + t0 * ldy, (size_t)(nt * rows) * 4);
        }
    }
    /* Row ranges: single rows, and a few odd splits, with the whole batch. */
    const int64_t cuts[][2] = {{0, 1}, {1, 2}, {5, 6}, {rows - 1, rows}, {1, rows - 2},
                               {3, rows}, {0, rows / 2}, {rows / 2, rows}, {7, 19}};
    for (int i = 0; i < COUNT(cuts); i++) {
        const int64_t r0 = cuts[i][0], r1 = cuts[i][1];
        if (r0 < 0 || r1 > rows || r0 >= r1) continue;
        for (int64_t nt = 1; nt <= n_tok; nt += 12) {
            fill_sentinel(part, (size_t)(n_tok * rows));
            det_run(k, c, part, ldy, 0, nt, r0, r1);
            for (int64_t t = 0; t < nt; t++) {
                if (memcmp(part + t * ldy + r0, full + t * ldy + r0, (size_t)(r1 - r0) * 4) != 0)
                    print_error("determinism [%s] kind %d cols %lld: rows [%lld,%lld) n_tok %lld "
                                "differ from the full range\n",
                                tab, (int)c->kind, (long long)c->n_cols, (long long)r0,
                                (long long)r1, (long long)nt);
                assert_memory_equal(part + t * ldy + r0, full + t * ldy + r0,
                                    (size_t)(r1 - r0) * 4);
            }
        }
    }
    free(full);
    free(part);
}

static void test_determinism(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(12);
    /* 2880 is the model width, 5760 the widest input, 100 has a column tail. */
    static const int64_t cols[] = {100, 2880, 5760};
    const int64_t rows = 21, n_tok = 13;
    for (int ci = 0; ci < COUNT(cols); ci++) {
        const int64_t n_cols = cols[ci], ldx = n_cols + 1;
        float *x = xmalloc((size_t)(n_tok * ldx) * 4);
        fill_f(x, (size_t)(n_tok * ldx));
        float *wf = xmalloc((size_t)(rows * n_cols) * 4);
        for (int kind = K_F32; kind <= K_BF16_DOT; kind++) {
            if (kind >= K_MXFP4 && kind != K_BF16_DOT && n_cols % 32) continue;
            struct det_case c = {.kind = (enum kind)kind, .x = x, .ldx = ldx, .n_cols = n_cols,
                                 .rows = rows};
            struct gpo_q8_block *xq = NULL;
            struct gpo_q16_block *xq16 = NULL;
            if (kind <= K_BF16 || kind == K_BF16_DOT) {
                const enum gpo_dtype dt = kind == K_F32 ? GPO_DT_F32
                                          : kind == K_F16 ? GPO_DT_F16
                                                          : GPO_DT_BF16;
                c.w = make_dense(dt, wf, (size_t)(rows * n_cols));
            } else if (kind == K_Q8_0 || kind == K_Q8_0_Q8) {
                c.w = make_q8_0(wf, rows, n_cols);
                if (kind == K_Q8_0_Q8) {
                    xq = xmalloc((size_t)(n_tok * n_cols / 32) * sizeof *xq);
                    for (int64_t t = 0; t < n_tok; t++)
                        gpo_quantize_q8_ref(xq + t * (n_cols / 32), x + t * ldx, n_cols);
                    c.xq = xq;
                }
            } else {
                c.blocks = xmalloc((size_t)(rows * n_cols / 2));
                c.scales = xmalloc((size_t)(rows * n_cols / 32));
                make_mxfp4(c.blocks, c.scales, wf, rows, n_cols, 120, 130);
                xq = xmalloc((size_t)(n_tok * n_cols / 32) * sizeof *xq);
                xq16 = xmalloc((size_t)(n_tok * n_cols / 32) * sizeof *xq16);
                for (int64_t t = 0; t < n_tok; t++) {
                    gpo_quantize_q8_ref(xq + t * (n_cols / 32), x + t * ldx, n_cols);
                    gpo_quantize_q16_ref(xq16 + t * (n_cols / 32), x + t * ldx, n_cols);
                }
                c.xq = xq;
                c.xq16 = xq16;
            }
            for (int k = 0; k < nt; k++)
                if (det_has(tabs[k].k, c.kind)) det_check(tabs[k].name, tabs[k].k, &c, n_tok);
            free(c.w);
            free(c.blocks);
            free(c.scales);
            free(xq);
            free(xq16);
        }
        free(x);
        free(wf);
    }
}

/* Batches long enough to cross the token chunks of the batched paths (64 tokens for
 * the panels, L2-sized chunks for the quantised activations) still give every token
 * the bits it gets alone. */
static void test_determinism_long_batch(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(20);
    const int64_t n_cols = 5760, rows = 9, n_tok = 70, nb = n_cols / 32, ldx = n_cols;
    float *x = xmalloc((size_t)(n_tok * ldx) * 4);
    fill_f(x, (size_t)(n_tok * ldx));
    float *wf = xmalloc((size_t)(rows * n_cols) * 4);
    struct gpo_q8_block *xq = xmalloc((size_t)(n_tok * nb) * sizeof *xq);
    struct gpo_q16_block *xq16 = xmalloc((size_t)(n_tok * nb) * sizeof *xq16);
    for (int64_t t = 0; t < n_tok; t++) {
        gpo_quantize_q8_ref(xq + t * nb, x + t * ldx, n_cols);
        gpo_quantize_q16_ref(xq16 + t * nb, x + t * ldx, n_cols);
    }
    struct det_case c = {.x = x, .ldx = ldx, .n_cols = n_cols, .rows = rows, .xq = xq,
                         .xq16 = xq16};
    c.blocks = xmalloc((size_t)(rows * nb * 16));
    c.scales = xmalloc((size_t)(rows * nb));
    make_mxfp4(c.blocks, c.scales, wf, rows, n_cols, 120, 130);
    c.w = make_q8_0(wf, rows, n_cols);
    static const enum kind kinds[] = {K_MXFP4, K_Q8, K_Q16, K_Q8_0, K_Q8_0_Q8};
    for (int ki = 0; ki < COUNT(kinds); ki++) {
        c.kind = kinds[ki];
        for (int k = 0; k < nt; k++)
            if (strcmp(tabs[k].name, "ref") != 0 && det_has(tabs[k].k, c.kind))
                det_check(tabs[k].name, tabs[k].k, &c, n_tok);
    }
    /* BF16 rows, whose rounded activations come in chunks of 45 tokens at this width. */
    free(c.w);
    c.w = make_dense(GPO_DT_BF16, wf, (size_t)(rows * n_cols));
    c.kind = K_BF16_DOT;
    for (int k = 0; k < nt; k++)
        if (strcmp(tabs[k].name, "ref") != 0 && det_has(tabs[k].k, c.kind))
            det_check(tabs[k].name, tabs[k].k, &c, n_tok);
    free(x);
    free(wf);
    free(xq);
    free(xq16);
    free(c.blocks);
    free(c.scales);
    free(c.w);
}

/* ---- MXFP4 decoding: spec 10.3 and E8M0 edges ---- */

/* y = W e_c for one-hot x picks column c; checks it against want[c] exactly. */
static void onehot_check(const struct table *tab, const uint8_t *blocks, const uint8_t *scales,
                         const float *want, int64_t n_check) {
    float x[32], y[1];
    for (int64_t c = 0; c < n_check; c++) {
        memset(x, 0, sizeof x);
        x[c] = 1.0f;
        tab->k->matmul_mxfp4(y, 1, blocks, scales, x, 32, 1, 0, 1, 32);
        if (!(y[0] == want[c]))
            print_error("one-hot [%s] column %lld: got %.9g want %.9g\n", tab->name, (long long)c,
                        y[0], want[c]);
        assert_true(y[0] == want[c]);
    }
}

static void test_mxfp4_spec_vectors(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    uint8_t blocks[16] = {0x10, 0x32}, scales[1] = {127};
    float out[32];
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    const float want127[4] = {0.0f, 0.5f, 1.0f, 1.5f};
    for (int i = 0; i < 4; i++) assert_true(out[i] == want127[i]);
    assert_false(signbit(out[0]));
    for (int i = 4; i < 32; i++) assert_true(out[i] == 0.0f);
    scales[0] = 120;
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    const float want120[4] = {0.0f, 0.5f / 128, 1.0f / 128, 1.5f / 128};
    for (int i = 0; i < 4; i++) assert_true(out[i] == want120[i]);

    for (int k = 0; k < nt; k++) {
        scales[0] = 127;
        onehot_check(&tabs[k], blocks, scales, want127, 4);
        scales[0] = 120;
        onehot_check(&tabs[k], blocks, scales, want120, 4);
        /* The fast path sees the same weights through int8 activations: a one-hot
         * x quantises to 127 * (1/127), so the value comes back within rounding. */
        for (int c = 0; c < 4; c++) {
            float x[32] = {0}, y[1];
            struct gpo_q8_block xq[1];
            x[c] = 1.0f;
            tabs[k].k->quantize_q8(xq, x, 32);
            tabs[k].k->matmul_mxfp4_q8(y, 1, blocks, scales, xq, 1, 1, 0, 1, 32);
            assert_true(fabsf(y[0] - want120[c]) <= 1e-6f * want120[3]);
            /* And through int16 activations: 32767 * (1/32767). */
            struct gpo_q16_block xq16[1];
            tabs[k].k->quantize_q16(xq16, x, 32);
            tabs[k].k->matmul_mxfp4_q16(y, 1, blocks, scales, xq16, 1, 1, 0, 1, 32);
            assert_true(fabsf(y[0] - want120[c]) <= 1e-6f * want120[3]);
        }
    }

    /* Every code in both nibble positions, through dequant and every matmul. */
    for (int code = 0; code < 16; code++) {
        uint8_t b[16] = {0};
        b[5] = (uint8_t)(code << 4 | (15 - code));
        scales[0] = 127;
        gpo_mxfp4_dequant_row(out, b, scales, 32);
        assert_true(out[11] == gpo_fp4_values[code]);
        assert_true(out[10] == gpo_fp4_values[15 - code]);
        for (int k = 0; k < nt; k++) onehot_check(&tabs[k], b, scales, out, 32);
    }
}

static void test_e8m0_edges(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    assert_true(gpo_e8m0_to_f32(0) == ldexpf(1.0f, -127));
    assert_true(gpo_e8m0_to_f32(1) == ldexpf(1.0f, -126));
    assert_true(gpo_e8m0_to_f32(127) == 1.0f);
    assert_true(gpo_e8m0_to_f32(254) == ldexpf(1.0f, 127));
    assert_true(isinf(gpo_e8m0_to_f32(255)) && gpo_e8m0_to_f32(255) > 0);

    /* e = 0: 2^-127 is denormal; every fp4 value times it is still exact. */
    uint8_t blocks[16], scales[1] = {0};
    for (int i = 0; i < 16; i++) blocks[i] = (uint8_t)(i | (15 - i) << 4);
    float out[32];
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    for (int i = 0; i < 16; i++) {
        assert_true(out[2 * i] == ldexpf(gpo_fp4_values[i], -127));
        assert_true(out[2 * i + 1] == ldexpf(gpo_fp4_values[15 - i], -127));
    }
    for (int k = 0; k < nt; k++) onehot_check(&tabs[k], blocks, scales, out, 32);

    /* e = 255 (NaN in OCP MX; the reference gives 2^128 = inf): non-zero codes decode
     * to +-inf, and a matmul touching such a block is not finite on any table. */
    scales[0] = 255;
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    assert_true(isinf(out[2 * 2]) && out[2 * 2] > 0);   /* code 2 = +1.0 */
    assert_true(isinf(out[2 * 10]) && out[2 * 10] < 0); /* code 10 = -1.0 */
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = 0.25f + (float)i / 64;
    for (int k = 0; k < nt; k++) {
        float y[1] = {0};
        tabs[k].k->matmul_mxfp4(y, 1, blocks, scales, x, 32, 1, 0, 1, 32);
        assert_false(isfinite(y[0]));
        struct gpo_q8_block xq[1];
        tabs[k].k->quantize_q8(xq, x, 32);
        tabs[k].k->matmul_mxfp4_q8(y, 1, blocks, scales, xq, 1, 1, 0, 1, 32);
        assert_false(isfinite(y[0]));
        struct gpo_q16_block xq16[1];
        tabs[k].k->quantize_q16(xq16, x, 32);
        tabs[k].k->matmul_mxfp4_q16(y, 1, blocks, scales, xq16, 1, 1, 0, 1, 32);
        assert_false(isfinite(y[0]));
    }
}

/* ---- MXFP4 in GGML blocks ---- */

/* The GGML blocks of n_blocks safetensors blocks. */
static uint8_t *ggml_of(const uint8_t *blocks, const uint8_t *scales, int64_t n_blocks) {
    uint8_t *g = xmalloc((size_t)n_blocks * GPO_MXFP4_GGML_BLOCK_BYTES);
    gpo_mxfp4_to_ggml(g, blocks, scales, n_blocks);
    return g;
}

/* Nibble h (0 low, 1 high) of byte b. */
static int nib(uint8_t b, int h) { return h ? b >> 4 : b & 15; }

static void test_mxfp4_ggml_repack(void **state) {
    (void)state;
    rng_seed(30);
    /* Random bytes both ways round: nothing is lost or invented. */
    enum { NB = 257 };
    uint8_t blocks[NB * 16], scales[NB], blocks2[NB * 16], scales2[NB];
    uint8_t g[NB * 17], g2[NB * 17];
    fill_u8(blocks, sizeof blocks);
    fill_u8(scales, sizeof scales);
    gpo_mxfp4_to_ggml(g, blocks, scales, NB);
    gpo_mxfp4_from_ggml(blocks2, scales2, g, NB);
    assert_memory_equal(blocks2, blocks, sizeof blocks);
    assert_memory_equal(scales2, scales, sizeof scales);
    fill_u8(g, sizeof g);
    gpo_mxfp4_from_ggml(blocks2, scales2, g, NB);
    gpo_mxfp4_to_ggml(g2, blocks2, scales2, NB);
    assert_memory_equal(g2, g, sizeof g);

    /* Every element position with every code: element k (safetensors byte k/2, nibble
     * k%2) lands in nibble k/16 of qs[k%16] and nowhere else, the scale byte in front,
     * and decodes to FP4[code] * 2^(e-127) at column k. */
    for (int k = 0; k < 32; k++)
        for (int code = 0; code < 16; code++) {
            uint8_t b[16] = {0}, sc = (uint8_t)(100 + k), back[16], sc_back;
            b[k / 2] = (uint8_t)(code << 4 * (k % 2));
            struct gpo_mxfp4_ggml_block gb;
            gpo_mxfp4_to_ggml(&gb, b, &sc, 1);
            assert_int_equal(gb.e, sc);
            for (int j = 0; j < 16; j++)
                for (int h = 0; h < 2; h++) {
                    const int want = j == k % 16 && h == k / 16 ? code : 0;
                    if (nib(gb.qs[j], h) != want)
                        print_error("repack: element %d code %d: qs[%d] nibble %d is %d, want %d\n",
                                    k, code, j, h, nib(gb.qs[j], h), want);
                    assert_int_equal(nib(gb.qs[j], h), want);
                }
            gpo_mxfp4_from_ggml(back, &sc_back, &gb, 1);
            assert_memory_equal(back, b, 16);
            assert_int_equal(sc_back, sc);
            float out[32];
            gpo_mxfp4_ggml_dequant_row(out, &gb, 32);
            for (int c = 0; c < 32; c++)
                assert_true(out[c] == (c == k ? ldexpf(gpo_fp4_values[code], sc - 127) : 0.0f));
        }
}

/* Every table's repacking from GGML blocks gives the reference's bytes, for random
 * bytes (any code and scale) and block counts that are not a multiple of any
 * vector width. */
static void test_mxfp4_from_ggml_tables(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(31);
    enum { NB = 1031 };
    uint8_t *g = xmalloc(NB * 17), *want = xmalloc(NB * 16), *got = xmalloc(NB * 16);
    uint8_t want_s[NB], got_s[NB];
    fill_u8(g, NB * 17);
    for (int t = 0; t < nt; t++) {
        assert_non_null(tabs[t].k->mxfp4_from_ggml);
        for (int64_t n = 1; n <= NB; n += n < 40 ? 1 : 330) {
            gpo_mxfp4_from_ggml(want, want_s, g, n);
            memset(got, 0xa5, (size_t)NB * 16);
            memset(got_s, 0xa5, sizeof got_s);
            tabs[t].k->mxfp4_from_ggml(got, got_s, g, n);
            if (memcmp(got, want, (size_t)n * 16) || memcmp(got_s, want_s, (size_t)n))
                print_error("%s: mxfp4_from_ggml of %lld blocks differs\n", tabs[t].name,
                            (long long)n);
            assert_memory_equal(got, want, (size_t)n * 16);
            assert_memory_equal(got_s, want_s, (size_t)n);
            assert_int_equal(got[n * 16], 0xa5); /* nothing written past the end */
        }
    }
    free(g);
    free(want);
    free(got);
}

/* A GGML block written by hand from spec 3.5 (not through the repacking): e = 127,
 * qs[0] = 0x21 (element 0 code 1 = 0.5, element 16 code 2 = 1.0), qs[15] = 0xf7
 * (element 15 code 7 = 6.0, element 31 code 15 = -6.0).  Its dequantisation, the
 * safetensors block of the same weights, and a one-hot column through every table's
 * three GGML kernels. */
static void test_mxfp4_ggml_spec_block(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    struct gpo_mxfp4_ggml_block gb = {.e = 127, .qs = {[0] = 0x21, [15] = 0xf7}};
    float want[32] = {0}, out[32];
    want[0] = 0.5f;
    want[16] = 1.0f;
    want[15] = 6.0f;
    want[31] = -6.0f;
    gpo_mxfp4_ggml_dequant_row(out, &gb, 32);
    assert_memory_equal(out, want, sizeof want);
    /* Safetensors: element 0 byte 0 low, 15 byte 7 high, 16 byte 8 low, 31 byte 15 high. */
    const uint8_t st[16] = {[0] = 0x01, [7] = 0x70, [8] = 0x02, [15] = 0xf0}, st_e = 127;
    struct gpo_mxfp4_ggml_block conv;
    gpo_mxfp4_to_ggml(&conv, st, &st_e, 1);
    assert_memory_equal(&conv, &gb, sizeof gb);
    for (int k = 0; k < nt; k++)
        for (int c = 0; c < 32; c++) {
            float x[32] = {0}, y[1];
            x[c] = 1.0f;
            tabs[k].k->matmul_mxfp4_ggml(y, 1, &gb, x, 32, 1, 0, 1, 32);
            assert_true(y[0] == want[c]);
            /* One-hot activations quantise exactly (127 * (1/127), 32767 * (1/32767)):
             * the value comes back within rounding. */
            struct gpo_q8_block xq;
            struct gpo_q16_block xq16;
            tabs[k].k->quantize_q8(&xq, x, 32);
            tabs[k].k->matmul_mxfp4_ggml_q8(y, 1, &gb, &xq, 1, 1, 0, 1, 32);
            assert_true(fabsf(y[0] - want[c]) <= 1e-6f);
            tabs[k].k->quantize_q16(&xq16, x, 32);
            tabs[k].k->matmul_mxfp4_ggml_q16(y, 1, &gb, &xq16, 1, 1, 0, 1, 32);
            assert_true(fabsf(y[0] - want[c]) <= 1e-6f);
        }
}

/* The dequantisation of a repacked row is the safetensors one, bit for bit, over every
 * scale byte (denormal 2^-127 and the infinite 2^128 included). */
static void test_mxfp4_ggml_dequant(void **state) {
    (void)state;
    rng_seed(31);
    const int64_t n_cols = 2880, nb = n_cols / 32, rows = 3;
    uint8_t *blocks = xmalloc((size_t)(rows * nb * 16)), *scales = xmalloc((size_t)(rows * nb));
    fill_u8(blocks, (size_t)(rows * nb * 16));
    for (int64_t i = 0; i < rows * nb; i++) scales[i] = (uint8_t)i; /* 0..255, then again */
    uint8_t *g = ggml_of(blocks, scales, rows * nb);
    float *a = xmalloc((size_t)n_cols * 4), *b = xmalloc((size_t)n_cols * 4);
    for (int64_t r = 0; r < rows; r++) {
        gpo_mxfp4_dequant_row(a, blocks + r * nb * 16, scales + r * nb, n_cols);
        gpo_mxfp4_ggml_dequant_row(b, g + r * nb * 17, n_cols);
        assert_memory_equal(b, a, (size_t)n_cols * 4);
    }
    free(blocks);
    free(scales);
    free(g);
    free(a);
    free(b);
}

/* What a GGML comparison runs: the exact path (f32 activations) or the int8 or int16
 * activation path. */
enum gkind { G_F32, G_Q8, G_Q16 };
static const char *const gkind_name[] = {"mxfp4_ggml", "mxfp4_ggml_q8", "mxfp4_ggml_q16"};

struct gcase {
    enum gkind kind;
    const uint8_t *blocks, *scales, *g; /* the same weights in both layouts */
    const float *x;
    const struct gpo_q8_block *xq;
    const struct gpo_q16_block *xq16;
    int64_t ldx, n_cols; /* token t's activations at x + t*ldx, xq + t*(n_cols/32 + 1) */
};

static int64_t gcase_ldxq(const struct gcase *c) { return c->n_cols / 32 + 1; }

/* The safetensors-layout kernel (ggml = 0) or the GGML one (ggml = 1) of a table. */
static void grun(const struct gpo_kernels *k, const struct gcase *c, int ggml, float *y,
                 int64_t ldy, int64_t n_tok, int64_t r0, int64_t r1) {
    const int64_t ldxq = gcase_ldxq(c), n = c->n_cols;
    switch (c->kind) {
    case G_F32:
        if (ggml) k->matmul_mxfp4_ggml(y, ldy, c->g, c->x, c->ldx, n_tok, r0, r1, n);
        else k->matmul_mxfp4(y, ldy, c->blocks, c->scales, c->x, c->ldx, n_tok, r0, r1, n);
        break;
    case G_Q8:
        if (ggml) k->matmul_mxfp4_ggml_q8(y, ldy, c->g, c->xq, ldxq, n_tok, r0, r1, n);
        else k->matmul_mxfp4_q8(y, ldy, c->blocks, c->scales, c->xq, ldxq, n_tok, r0, r1, n);
        break;
    case G_Q16:
        if (ggml) k->matmul_mxfp4_ggml_q16(y, ldy, c->g, c->xq16, ldxq, n_tok, r0, r1, n);
        else k->matmul_mxfp4_q16(y, ldy, c->blocks, c->scales, c->xq16, ldxq, n_tok, r0, r1, n);
        break;
    }
}

/* Both layouts' kernels of one table over [r0, r1) into sentinel-filled outputs: every
 * slot, written or not, must hold the same bits.  Returns 1 on a difference. */
static int gcompare(const struct table *tab, const struct gcase *c, float *ys, float *yg,
                    int64_t ldy, int64_t rows, int64_t n_tok, int64_t r0, int64_t r1) {
    const size_t n = (size_t)(n_tok * ldy);
    fill_sentinel(ys, n);
    fill_sentinel(yg, n);
    grun(tab->k, c, 0, ys, ldy, n_tok, r0, r1);
    grun(tab->k, c, 1, yg, ldy, n_tok, r0, r1);
    if (memcmp(ys, yg, n * 4) == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&ys[i], &yg[i], 4) != 0) {
            print_error("%s [%s] cols=%lld rows=%lld ntok=%lld range=[%lld,%lld): t=%lld r=%lld "
                        "GGML %.9g, safetensors layout %.9g\n",
                        gkind_name[c->kind], tab->name, (long long)c->n_cols, (long long)rows,
                        (long long)n_tok, (long long)r0, (long long)r1,
                        (long long)(i / (size_t)ldy), (long long)(i % (size_t)ldy), yg[i], ys[i]);
            break;
        }
    return 1;
}

/* mag[t][r] = sum_c |W[r][c] * x[t][c]| with the activations as the kernel sees them
 * (dequantised for the int8 and int16 paths): the scale of the tolerance between a
 * SIMD table and the reference, which sum in different orders. */
static void gmag(double *mag, int64_t ldy, const struct gcase *c, const float *wf, int64_t n_tok,
                 int64_t rows) {
    const int64_t nb = c->n_cols / 32;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < rows; r++) {
            double s = 0;
            for (int64_t i = 0; i < c->n_cols; i++) {
                double xv;
                if (c->kind == G_F32) {
                    xv = c->x[t * c->ldx + i];
                } else if (c->kind == G_Q8) {
                    const struct gpo_q8_block *b = c->xq + t * (nb + 1) + i / 32;
                    xv = (double)b->d * b->qs[i % 32];
                } else {
                    const struct gpo_q16_block *b = c->xq16 + t * (nb + 1) + i / 32;
                    xv = (double)b->d * b->qs[i % 32];
                }
                s += fabs((double)wf[r * c->n_cols + i] * xv);
            }
            mag[t * ldy + r] = s;
        }
}

/* Every table's GGML kernel of `kind` against the same table's safetensors-layout
 * kernel on the repacked weights, bit for bit (whole and partial row ranges, every
 * batch size of the other tests), and each SIMD table's GGML kernel against the
 * reference's within tolerance. */
static void run_ggml(enum gkind kind, int e_lo, int e_hi, uint64_t seed) {
    struct table tabs[4];
    const int nt = tables(tabs);
    int bad = 0;
    rng_seed(seed);
    for (int ci = 0; ci < COUNT(MX_COLS); ci++)
        for (int ri = 0; ri < COUNT(ROWS); ri++) {
            const int64_t n_cols = MX_COLS[ci], rows = ROWS[ri], nb = n_cols / 32;
            const int64_t max_tok = NTOK[COUNT(NTOK) - 1];
            const int64_t ldx = n_cols + 5, ldy = rows + 1;
            uint8_t *blocks = xmalloc((size_t)(rows * nb * 16));
            uint8_t *scales = xmalloc((size_t)(rows * nb));
            float *wf = xmalloc((size_t)(rows * n_cols) * 4);
            make_mxfp4(blocks, scales, wf, rows, n_cols, e_lo, e_hi);
            float *x = xmalloc((size_t)(max_tok * ldx) * 4);
            fill_f(x, (size_t)(max_tok * ldx));
            struct gpo_q8_block *xq = xmalloc((size_t)(max_tok * (nb + 1)) * sizeof *xq);
            struct gpo_q16_block *xq16 = xmalloc((size_t)(max_tok * (nb + 1)) * sizeof *xq16);
            for (int64_t t = 0; t < max_tok; t++) {
                gpo_quantize_q8_ref(xq + t * (nb + 1), x + t * ldx, n_cols);
                gpo_quantize_q16_ref(xq16 + t * (nb + 1), x + t * ldx, n_cols);
            }
            uint8_t *g = ggml_of(blocks, scales, rows * nb);
            const struct gcase c = {.kind = kind, .blocks = blocks, .scales = scales, .g = g,
                                    .x = x, .xq = xq, .xq16 = xq16, .ldx = ldx, .n_cols = n_cols};
            float *ys = xmalloc((size_t)(max_tok * ldy) * 4);
            float *yg = xmalloc((size_t)(max_tok * ldy) * 4);
            float *want = xmalloc((size_t)(max_tok * ldy) * 4);
            double *mag = xmalloc((size_t)(max_tok * ldy) * 8);
            gmag(mag, ldy, &c, wf, max_tok, rows);
            grun(gpo_kernels_ref(), &c, 1, want, ldy, max_tok, 0, rows);
            for (int ti = 0; ti < COUNT(NTOK); ti++) {
                const int64_t n_tok = NTOK[ti];
                /* The widest rows only alone and in the largest batch (run time). */
                if (n_cols == 5760 && n_tok != max_tok && n_tok != 1) continue;
                const int64_t r0 = rows / 3 + (rows > 1), r1 = rows - rows / 4;
                for (int k = 0; k < nt; k++) {
                    bad += gcompare(&tabs[k], &c, ys, yg, ldy, rows, n_tok, 0, rows);
                    if (k > 0)
                        bad += compare_out(gkind_name[kind], tabs[k].name, yg, want, mag, ldy,
                                           n_tok, rows, 0, rows, n_cols, REL_TOL);
                    if (r0 < r1) {
                        bad += gcompare(&tabs[k], &c, ys, yg, ldy, rows, n_tok, r0, r1);
                        if (k > 0)
                            bad += compare_out(gkind_name[kind], tabs[k].name, yg, want, mag,
                                               ldy, n_tok, rows, r0, r1, n_cols, REL_TOL);
                    }
                }
            }
            free(blocks);
            free(scales);
            free(wf);
            free(x);
            free(xq);
            free(xq16);
            free(g);
            free(ys);
            free(yg);
            free(want);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

static void test_matmul_mxfp4_ggml(void **state) {
    (void)state;
    run_ggml(G_F32, 118, 130, 32);
}
static void test_matmul_mxfp4_ggml_wide_scales(void **state) {
    (void)state;
    run_ggml(G_F32, 0, 230, 33);
}
static void test_matmul_mxfp4_ggml_q8(void **state) {
    (void)state;
    run_ggml(G_Q8, 118, 130, 34);
}
static void test_matmul_mxfp4_ggml_q16(void **state) {
    (void)state;
    run_ggml(G_Q16, 118, 130, 35);
}
static void test_matmul_mxfp4_ggml_q16_wide_scales(void **state) {
    (void)state;
    run_ggml(G_Q16, 0, 230, 36);
}

/* Batches long enough to cross the token chunks of the batched paths (as in
 * test_determinism_long_batch), and blocks with the edge scale bytes 0 and 255 (the
 * latter turns products into inf and NaN): still the same bits in both layouts. */
static void test_matmul_mxfp4_ggml_long_batch_and_edges(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    rng_seed(37);
    const int64_t n_cols = 5760, rows = 9, n_tok = 70, nb = n_cols / 32, ldx = n_cols;
    uint8_t *blocks = xmalloc((size_t)(rows * nb * 16)), *scales = xmalloc((size_t)(rows * nb));
    float *wf = xmalloc((size_t)(rows * n_cols) * 4);
    make_mxfp4(blocks, scales, wf, rows, n_cols, 120, 130);
    float *x = xmalloc((size_t)(n_tok * ldx) * 4);
    fill_f(x, (size_t)(n_tok * ldx));
    struct gpo_q8_block *xq = xmalloc((size_t)(n_tok * (nb + 1)) * sizeof *xq);
    struct gpo_q16_block *xq16 = xmalloc((size_t)(n_tok * (nb + 1)) * sizeof *xq16);
    for (int64_t t = 0; t < n_tok; t++) {
        gpo_quantize_q8_ref(xq + t * (nb + 1), x + t * ldx, n_cols);
        gpo_quantize_q16_ref(xq16 + t * (nb + 1), x + t * ldx, n_cols);
    }
    float *ys = xmalloc((size_t)(n_tok * rows) * 4), *yg = xmalloc((size_t)(n_tok * rows) * 4);
    int bad = 0;
    for (int edges = 0; edges < 2; edges++) {
        if (edges) /* row 2 all 255, row 5 all 0, and a few 255 blocks elsewhere */
            for (int64_t b = 0; b < nb; b++) {
                scales[2 * nb + b] = 255;
                scales[5 * nb + b] = 0;
                if (b % 37 == 3) scales[7 * nb + b] = 255;
            }
        uint8_t *g = ggml_of(blocks, scales, rows * nb);
        for (int kind = G_F32; kind <= G_Q16; kind++) {
            const struct gcase c = {.kind = (enum gkind)kind, .blocks = blocks, .scales = scales,
                                    .g = g, .x = x, .xq = xq, .xq16 = xq16, .ldx = ldx,
                                    .n_cols = n_cols};
            for (int k = 0; k < nt; k++) {
                const int64_t tok = edges || strcmp(tabs[k].name, "ref") == 0 ? 13 : n_tok;
                for (int64_t nt1 = 1; nt1 <= tok; nt1 += tok - 1) {
                    bad += gcompare(&tabs[k], &c, ys, yg, rows, rows, nt1, 0, rows);
                    bad += gcompare(&tabs[k], &c, ys, yg, rows, rows, nt1, 2, 7);
                }
            }
        }
        free(g);
    }
    /* The edge rows really are not finite / tiny (the test covers what it says). */
    grun(gpo_kernels_ref(), &(struct gcase){.kind = G_F32, .g = NULL, .blocks = blocks,
                                            .scales = scales, .x = x, .ldx = ldx,
                                            .n_cols = n_cols},
         0, ys, rows, 1, 0, rows);
    assert_false(isfinite(ys[2]));
    assert_true(fabsf(ys[5]) < 1e-30f);
    assert_int_equal(bad, 0);
    free(blocks);
    free(scales);
    free(wf);
    free(x);
    free(xq);
    free(xq16);
    free(ys);
    free(yg);
}

/* ---- attention ---- */

static void test_attn_scores(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    static const int64_t dims[] = {1, 7, 8, 16, 63, 64, 65, 128};
    static const int64_t keys[] = {1, 3, 4, 7, 8, 9, 33, 100};
    rng_seed(13);
    int bad = 0;
    for (int di = 0; di < COUNT(dims); di++)
        for (int ki = 0; ki < COUNT(keys); ki++) {
            const int64_t hd = dims[di], nk = keys[ki], ldk = hd + 9;
            float *q = xmalloc((size_t)hd * 4), *k = xmalloc((size_t)(nk * ldk) * 4);
            fill_f(q, (size_t)hd);
            fill_f(k, (size_t)(nk * ldk));
            const float scale = 0.125f;
            float *want = xmalloc((size_t)nk * 4), *s = xmalloc((size_t)(nk + 1) * 4);
            double *mag = xmalloc((size_t)nk * 8);
            gpo_attn_scores_ref(want, q, k, ldk, nk, hd, scale);
            for (int64_t j = 0; j < nk; j++) {
                double m = 0;
                for (int64_t d = 0; d < hd; d++) m += fabs((double)q[d] * k[j * ldk + d]);
                mag[j] = m * scale;
            }
            for (int t = 0; t < nt; t++) {
                fill_sentinel(s, (size_t)(nk + 1));
                tabs[t].k->attn_scores(s, q, k, ldk, nk, hd, scale);
                bad += compare_out("attn_scores", tabs[t].name, s, want, mag, 1, nk, 1, 0, 1, hd,
                                   REL_TOL);
                assert_true(s[nk] == SENTINEL);
                /* A key's score does not depend on which keys come with it. */
                for (int64_t j0 = 1; j0 < nk; j0 += 3) {
                    float *s2 = xmalloc((size_t)(nk - j0) * 4);
                    tabs[t].k->attn_scores(s2, q, k + j0 * ldk, ldk, nk - j0, hd, scale);
                    assert_memory_equal(s2, s + j0, (size_t)(nk - j0) * 4);
                    free(s2);
                }
            }
            free(q);
            free(k);
            free(want);
            free(s);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

/* Several queries against the same keys: close to the reference, nothing written
 * outside the rows' scores, and every row with the bits attn_scores of the same table
 * gives for that query alone (so a query's scores do not depend on the queries
 * computed with it). */
static void test_attn_scores_rows(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    static const int64_t dims[] = {1, 7, 16, 63, 64, 65, 128};
    static const int64_t keys[] = {1, 3, 5, 8, 16, 17, 33};
    static const int64_t queries[] = {1, 2, 3, 4, 5, 8, 9};
    rng_seed(15);
    int bad = 0;
    for (int di = 0; di < COUNT(dims); di++)
        for (int ki = 0; ki < COUNT(keys); ki++)
            for (int qi = 0; qi < COUNT(queries); qi++) {
                const int64_t hd = dims[di], nk = keys[ki], nq = queries[qi];
                const int64_t ldq = hd + 3, ldk = hd + 9, lds = nk + 2;
                const float scale = 0.125f;
                float *q = xmalloc((size_t)(nq * ldq) * 4), *k = xmalloc((size_t)(nk * ldk) * 4);
                float *want = xmalloc((size_t)(nq * lds) * 4), *s = xmalloc((size_t)(nq * lds) * 4);
                float *one = xmalloc((size_t)nk * 4);
                double *mag = xmalloc((size_t)(nq * lds) * 8);
                fill_f(q, (size_t)(nq * ldq));
                fill_f(k, (size_t)(nk * ldk));
                gpo_attn_scores_rows_ref(want, lds, q, ldq, nq, k, ldk, nk, hd, scale);
                for (int64_t i = 0; i < nq; i++)
                    for (int64_t j = 0; j < nk; j++) {
                        double m = 0;
                        for (int64_t d = 0; d < hd; d++)
                            m += fabs((double)q[i * ldq + d] * k[j * ldk + d]);
                        mag[i * lds + j] = m * scale;
                    }
                for (int t = 0; t < nt; t++) {
                    fill_sentinel(s, (size_t)(nq * lds));
                    tabs[t].k->attn_scores_rows(s, lds, q, ldq, nq, k, ldk, nk, hd, scale);
                    bad += compare_out("attn_scores_rows", tabs[t].name, s, want, mag, lds, nq,
                                       lds, 0, nk, hd, REL_TOL);
                    for (int64_t i = 0; i < nq; i++) {
                        tabs[t].k->attn_scores(one, q + i * ldq, k, ldk, nk, hd, scale);
                        assert_memory_equal(one, s + i * lds, (size_t)nk * 4);
                    }
                }
                free(q);
                free(k);
                free(want);
                free(s);
                free(one);
                free(mag);
            }
    assert_int_equal(bad, 0);
}

static void test_attn_accum(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    static const int64_t dims[] = {1, 7, 8, 16, 63, 64, 65, 72, 128, 200};
    static const int64_t keys[] = {1, 3, 4, 7, 8, 9, 33, 100};
    rng_seed(14);
    int bad = 0;
    for (int di = 0; di < COUNT(dims); di++)
        for (int ki = 0; ki < COUNT(keys); ki++) {
            const int64_t hd = dims[di], nk = keys[ki], ldv = hd + 5;
            float *p = xmalloc((size_t)nk * 4), *v = xmalloc((size_t)(nk * ldv) * 4);
            float *o0 = xmalloc((size_t)(hd + 1) * 4);
            for (int64_t j = 0; j < nk; j++) p[j] = (rng_f() + 1.0f) / (float)nk;
            fill_f(v, (size_t)(nk * ldv));
            fill_f(o0, (size_t)hd);
            float *want = xmalloc((size_t)hd * 4), *o = xmalloc((size_t)(hd + 1) * 4);
            float *o2 = xmalloc((size_t)(hd + 1) * 4);
            double *mag = xmalloc((size_t)hd * 8);
            memcpy(want, o0, (size_t)hd * 4);
            gpo_attn_accum_ref(want, p, v, ldv, nk, hd);
            for (int64_t d = 0; d < hd; d++) {
                double m = fabs(o0[d]);
                for (int64_t j = 0; j < nk; j++) m += fabs((double)p[j] * v[j * ldv + d]);
                mag[d] = m;
            }
            for (int t = 0; t < nt; t++) {
                memcpy(o, o0, (size_t)hd * 4);
                o[hd] = SENTINEL;
                tabs[t].k->attn_accum(o, p, v, ldv, nk, hd);
                bad += compare_out("attn_accum", tabs[t].name, o, want, mag, 1, hd, 1, 0, 1, nk,
                                   REL_TOL);
                assert_true(o[hd] == SENTINEL);
                /* Splitting the keys over two calls gives the same bits. */
                const int64_t split = nk / 2;
                memcpy(o2, o0, (size_t)hd * 4);
                tabs[t].k->attn_accum(o2, p, v, ldv, split, hd);
                tabs[t].k->attn_accum(o2, p + split, v + split * ldv, ldv, nk - split, hd);
                assert_memory_equal(o2, o, (size_t)hd * 4);
            }
            free(p);
            free(v);
            free(o0);
            free(want);
            free(o);
            free(o2);
            free(mag);
        }
    assert_int_equal(bad, 0);
}

/* Zero columns: every output is the empty sum, whatever the batch path. */
static void test_empty_rows(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    float x[13], y[13 * 5];
    uint16_t w16[1];
    float w32[1];
    uint8_t blocks[1], scales[1];
    struct gpo_q8_block xq[1];
    struct gpo_q16_block xq16[1];
    struct gpo_q8_0_block w80[1];
    memset(x, 0, sizeof x);
    for (int k = 0; k < nt; k++)
        for (int64_t n_tok = 1; n_tok <= 13; n_tok += 12) {
            for (int dt = GPO_DT_F32; dt <= GPO_DT_BF16; dt++) {
                fill_sentinel(y, 13 * 5);
                tabs[k].k->matmul[dt](y, 5, dt == GPO_DT_F32 ? (const void *)w32 : w16, x, 0,
                                      n_tok, 1, 4, 0);
                for (int64_t t = 0; t < n_tok; t++)
                    for (int r = 0; r < 5; r++)
                        assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            }
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4(y, 5, blocks, scales, x, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4_q8(y, 5, blocks, scales, xq, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4_q16(y, 5, blocks, scales, xq16, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul[GPO_DT_Q8_0](y, 5, w80, x, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4_ggml(y, 5, blocks, x, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4_ggml_q8(y, 5, blocks, xq, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
            fill_sentinel(y, 13 * 5);
            tabs[k].k->matmul_mxfp4_ggml_q16(y, 5, blocks, xq16, 0, n_tok, 1, 4, 0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int r = 0; r < 5; r++)
                    assert_true(y[t * 5 + r] == (r >= 1 && r < 4 ? 0.0f : SENTINEL));
        }
}

/* The table names what it is, fills every slot, and selection honours the CPU. */
static void test_tables(void **state) {
    (void)state;
    struct table tabs[4];
    const int nt = tables(tabs);
    for (int k = 0; k < nt; k++) {
        const struct gpo_kernels *t = tabs[k].k;
        assert_string_equal(t->name, tabs[k].name);
        assert_non_null(t->matmul[GPO_DT_F32]);
        assert_non_null(t->matmul[GPO_DT_F16]);
        assert_non_null(t->matmul[GPO_DT_BF16]);
        assert_non_null(t->matmul_mxfp4);
        assert_non_null(t->matmul_mxfp4_q8);
        assert_non_null(t->quantize_q8);
        assert_non_null(t->matmul[GPO_DT_Q8_0]);
        assert_non_null(t->matmul_mxfp4_q16);
        assert_non_null(t->quantize_q16);
        assert_non_null(t->matmul_mxfp4_ggml);
        assert_non_null(t->matmul_mxfp4_ggml_q8);
        assert_non_null(t->matmul_mxfp4_ggml_q16);
        assert_non_null(t->attn_scores);
        assert_non_null(t->attn_scores_rows);
        assert_non_null(t->attn_accum);
    }
    assert_ptr_equal(gpo_kernels_select("ref"), gpo_kernels_ref());
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2())
        assert_ptr_equal(gpo_kernels_select("avx2"), gpo_kernels_avx2());
    if (!gpo_cpu_has_avx2()) assert_null(gpo_kernels_select("avx2"));
    assert_null(gpo_kernels_select("no-such-isa"));
    assert_non_null(gpo_kernels_select(NULL));

    /* Completing a table fills its empty slots from the reference and keeps the rest. */
    const struct gpo_kernels *ref = gpo_kernels_ref();
    struct gpo_kernels part = {.name = "part", .quantize_q8 = tabs[nt - 1].k->quantize_q8};
    gpo_kernels_complete(&part);
    assert_ptr_equal(part.quantize_q8, tabs[nt - 1].k->quantize_q8);
    assert_ptr_equal(part.matmul[GPO_DT_BF16], ref->matmul[GPO_DT_BF16]);
    assert_ptr_equal(part.matmul_mxfp4_ggml, ref->matmul_mxfp4_ggml);
    assert_ptr_equal(part.matmul_mxfp4_ggml_q8, ref->matmul_mxfp4_ggml_q8);
    assert_ptr_equal(part.matmul_mxfp4_ggml_q16, ref->matmul_mxfp4_ggml_q16);
    assert_ptr_equal(part.attn_accum, ref->attn_accum);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_matmul_f32),
        cmocka_unit_test(test_matmul_f16),
        cmocka_unit_test(test_matmul_bf16),
        cmocka_unit_test(test_matmul_mxfp4),
        cmocka_unit_test(test_matmul_mxfp4_wide_scales),
        cmocka_unit_test(test_matmul_mxfp4_q8),
        cmocka_unit_test(test_matmul_mxfp4_q8_integer_exact),
        cmocka_unit_test(test_quantize_q8),
        cmocka_unit_test(test_matmul_mxfp4_q16),
        cmocka_unit_test(test_matmul_mxfp4_q16_wide_scales),
        cmocka_unit_test(test_matmul_mxfp4_q16_integer_exact),
        cmocka_unit_test(test_quantize_q16),
        cmocka_unit_test(test_matmul_q8_0),
        cmocka_unit_test(test_q8_0x16_layout),
        cmocka_unit_test(test_matmul_q8_0_q8),
        cmocka_unit_test(test_matmul_q8_0_q16s),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_matmul_bf16_dot),
        cmocka_unit_test(test_quantize_row_q8_0),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_determinism_long_batch),
        cmocka_unit_test(test_mxfp4_spec_vectors),
        cmocka_unit_test(test_e8m0_edges),
        cmocka_unit_test(test_mxfp4_from_ggml_tables),
        cmocka_unit_test(test_mxfp4_ggml_repack),
        cmocka_unit_test(test_mxfp4_ggml_spec_block),
        cmocka_unit_test(test_mxfp4_ggml_dequant),
        cmocka_unit_test(test_matmul_mxfp4_ggml),
        cmocka_unit_test(test_matmul_mxfp4_ggml_wide_scales),
        cmocka_unit_test(test_matmul_mxfp4_ggml_q8),
        cmocka_unit_test(test_matmul_mxfp4_ggml_q16),
        cmocka_unit_test(test_matmul_mxfp4_ggml_q16_wide_scales),
        cmocka_unit_test(test_matmul_mxfp4_ggml_long_batch_and_edges),
        cmocka_unit_test(test_attn_scores),
        cmocka_unit_test(test_attn_scores_rows),
        cmocka_unit_test(test_attn_accum),
        cmocka_unit_test(test_empty_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
