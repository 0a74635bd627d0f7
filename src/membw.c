/* membw.c - a memory read-bandwidth probe (include/gpo_bench.h).  Decoding one
 * token streams every active weight once, so the bandwidth this probe reaches is
 * the ceiling that `gptoss bench` compares the engine's weight traffic against. */
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MEMBW_X86 1
#endif

#include "gpo_bench.h"
#include "util.h"

#define MEMBW_MIN_PASSES 3
#define MEMBW_MAX_PASSES 100

/* The sums land here so the compiler cannot drop the reads. */
static volatile uint64_t membw_sink;

/* Four independent accumulators keep several loads in flight; the plain version
 * is the fallback where AVX2 is missing. */
static uint64_t sum_plain(const uint64_t *p, size_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    for (; i < n; i++) a0 += p[i];
    return a0 + a1 + a2 + a3;
}

#ifdef MEMBW_X86
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_plain(p + i, n - i);
}
#endif

/* This thread's contiguous share [lo, hi) of n words, in whole 64-byte lines.  The
 * fill and the reads use the same split, so on NUMA machines each share lives on
 * the node of the thread that reads it. */
static void share(size_t n, size_t *lo, size_t *hi) {
    size_t nth = (size_t)omp_get_num_threads(), tid = (size_t)omp_get_thread_num();
    size_t chunk = ((n + nth - 1) / nth + 7) & ~(size_t)7;
    *lo = tid * chunk < n ? tid * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
}

enum gpo_status gpo_membw_measure(int n_threads, uint64_t bytes, double seconds,
                                  double *gbs_out) {
    if (!gbs_out) return gpo_fail(GPO_ERR_ARG, "gpo_membw_measure: gbs_out is NULL");
    *gbs_out = 0.0;
    if (bytes < ((uint64_t)1 << 20) || bytes > ((uint64_t)1 << 40))
        return gpo_fail(GPO_ERR_ARG, "membw buffer of %llu bytes; it must be 1 MiB to 1 TiB",
                        (unsigned long long)bytes);
    if (!(seconds >= 0.0) || seconds > 3600.0)
        return gpo_fail(GPO_ERR_ARG, "membw time budget of %g s is out of range", seconds);
    if (n_threads <= 0) n_threads = omp_get_num_procs();

    const size_t n = (size_t)(bytes / 64) * 8; /* whole cache lines of 8 words */
    const size_t len = n * sizeof(uint64_t);
    uint64_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return gpo_fail(GPO_ERR_NOMEM, "cannot map a %zu-byte membw buffer", len);

    /* Write every word: untouched anonymous pages all map the shared zero page,
     * and reading that would measure the cache, not memory. */
#pragma omp parallel num_threads(n_threads)
    {
        size_t lo, hi;
        share(n, &lo, &hi);
        for (size_t i = lo; i < hi; i++) buf[i] = (uint64_t)i * 0x9E3779B97F4A7C15ull;
    }

    int use_avx2 = 0;
#ifdef MEMBW_X86
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    double best = 0.0;
    const double t_begin = gpo_now();
    uint64_t sink = 0;
    for (int pass = 0; pass < MEMBW_MAX_PASSES; pass++) {
        if (pass >= MEMBW_MIN_PASSES && gpo_now() - t_begin >= seconds) break;
        uint64_t total = 0;
        const double t0 = gpo_now();
#pragma omp parallel num_threads(n_threads) reduction(^ : total)
        {
            size_t lo, hi;
            share(n, &lo, &hi);
#ifdef MEMBW_X86
            if (use_avx2) total ^= sum_avx2(buf + lo, hi - lo);
            else
#endif
                total ^= sum_plain(buf + lo, hi - lo);
        }
        const double dt = gpo_now() - t0;
        sink ^= total;
        if (dt > 0.0 && (double)len / dt > best) best = (double)len / dt;
    }
    (void)use_avx2;
    membw_sink = sink;
    munmap(buf, len);
    *gbs_out = best / 1e9;
    return GPO_OK;
}
