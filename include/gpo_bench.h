/* gpo_bench.h - measurements used by `gptoss bench`: the memory read bandwidth
 * that bounds batch-1 decoding, against which the engine's effective bandwidth
 * (weight bytes read per second) is compared.  Not included by gpo.h. */
#ifndef GPO_BENCH_H
#define GPO_BENCH_H

#include <stdint.h>

#include "gpo.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Measure the read bandwidth of main memory with n_threads OpenMP threads
 * (0 = all cores): a buffer of `bytes` (at least 1 MiB; choose it well above the
 * last-level cache, e.g. 1 GiB) is filled once, each thread touching the share it
 * later reads, then read in full repeatedly, each thread summing its contiguous
 * share with wide loads.  At least three passes run, more until `seconds` have
 * passed (at most 100).  *gbs_out receives the best pass in 10^9 bytes per
 * second.  The buffer is freed before returning. */
enum gpo_status gpo_membw_measure(int n_threads, uint64_t bytes, double seconds,
                                  double *gbs_out);

#ifdef __cplusplus
}
#endif

#endif /* GPO_BENCH_H */
