/* dist_impl.h - what dist_stub.c and dist_mpi.c share with dist.c; internal to
 * the distributed layer. */
#ifndef GPO_DIST_IMPL_H
#define GPO_DIST_IMPL_H

#include "dist.h"

/* Apply $GPTOSS_DIST_TIMEOUT when set; fails naming a bad value. */
enum gpo_status gpo_dist_timeout_from_env(void);
/* Add one collective's bytes and time to the counters. */
void gpo_dist_count(uint64_t sent, uint64_t received, double seconds);

#endif
