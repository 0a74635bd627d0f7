/* dist.c - the parts of dist.h both builds share: the deadline, the
 * communication counters and the rank-order sum that the allreduce matches. */
#include <stdlib.h>

#include "dist.h"
#include "dist_impl.h"
#include "util.h"

static double timeout_s = GPO_DIST_TIMEOUT_DEFAULT;
static struct gpo_dist_stats stats;

enum gpo_status gpo_dist_set_timeout(double seconds) {
    /* NaN fails the comparison too. */
    if (!(seconds > 0) || seconds > 1e9)
        return gpo_fail(GPO_ERR_ARG, "distributed timeout must be in (0, 1e9] seconds, not %g", seconds);
    timeout_s = seconds;
    return GPO_OK;
}

double gpo_dist_timeout(void) { return timeout_s; }

enum gpo_status gpo_dist_timeout_from_env(void) {
    const char *v = getenv("GPTOSS_DIST_TIMEOUT");
    if (!v || !*v) return GPO_OK;
    char *end;
    double s = strtod(v, &end);
    if (*end || gpo_dist_set_timeout(s) != GPO_OK)
        return gpo_fail(GPO_ERR_ARG, "GPTOSS_DIST_TIMEOUT must be seconds in (0, 1e9], not '%s'", v);
    return GPO_OK;
}

void gpo_dist_count(uint64_t sent, uint64_t received, double seconds) {
    stats.bytes_sent += sent;
    stats.bytes_received += received;
    stats.n_calls++;
    stats.seconds += seconds;
}

void gpo_dist_get_stats(struct gpo_dist_stats *out) { *out = stats; }

void gpo_dist_reset_stats(void) { stats = (struct gpo_dist_stats){0}; }

enum gpo_status gpo_dist_bcast_counted(const gpo_dist_comm *c, void **buf, int64_t *n, size_t size,
                                       int root) {
    GPO_TRY(gpo_dist_bcast(c, n, sizeof *n, root));
    if (*n < 0) return GPO_OK;
    const size_t bytes = (size_t)*n * size;
    if (gpo_dist_comm_rank(c) != root) {
        char *p = malloc(bytes + 1);
        if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory for %zu bytes from rank %d", bytes, root);
        p[bytes] = 0;
        *buf = p;
    }
    return bytes > 0 ? gpo_dist_bcast(c, *buf, bytes, root) : GPO_OK;
}

void gpo_dist_sum_in_order(float *out, const float *const *parts, int n_parts, size_t n) {
    /* Start from part 0 itself (not from 0.0f, which would turn -0.0 into +0.0)
     * and add the others one at a time: the order the collective uses. */
    for (size_t i = 0; i < n; i++) {
        float s = parts[0][i];
        for (int p = 1; p < n_parts; p++) s += parts[p][i];
        out[i] = s;
    }
}
