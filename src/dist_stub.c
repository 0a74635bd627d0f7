/* dist_stub.c - dist.h for the single-rank build (no MPI): one rank, every
 * collective the identity, every group of size 1.  It still refuses to run as
 * one of several ranks, which would give N independent copies of the job. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "dist.h"
#include "dist_impl.h"
#include "util.h"

struct gpo_dist_comm {
    int unused;
};

static char host[256] = "?";

/* The job size launchers put in the environment (Open MPI, then PMI/PMIx). */
static int launcher_size(const char **var) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            *var = vars[i];
            return atoi(v);
        }
    }
    return 1;
}

enum gpo_status gpo_dist_init(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
    host[sizeof host - 1] = 0;
    const char *var = NULL;
    int n = launcher_size(&var);
    if (n > 1)
        return gpo_fail(GPO_ERR_UNSUPPORTED,
                        "this gptoss is built without MPI but was started as one of %d ranks (%s=%d); "
                        "build it with `make MPI=1`, or run one process",
                        n, var, n);
    return gpo_dist_timeout_from_env();
}

void gpo_dist_finalize(void) {}
void gpo_dist_abort(int code) { exit(code); }
int gpo_dist_built(void) { return 0; }
int gpo_dist_rank(void) { return 0; }
int gpo_dist_size(void) { return 1; }
const char *gpo_dist_host(void) { return host; }
const char *gpo_dist_host_of(int rank) { return rank == 0 ? host : "?"; }

enum gpo_status gpo_dist_split(const gpo_dist_comm *parent, int color, int key,
                               gpo_dist_comm **out) {
    (void)parent;
    (void)color;
    (void)key;
    *out = calloc(1, sizeof **out);
    return *out ? GPO_OK : gpo_fail(GPO_ERR_NOMEM, "out of memory for a rank group");
}

void gpo_dist_comm_free(gpo_dist_comm *c) { free(c); }
int gpo_dist_comm_rank(const gpo_dist_comm *c) { return 0; }
int gpo_dist_comm_size(const gpo_dist_comm *c) { return 1; }
int gpo_dist_comm_world_rank(const gpo_dist_comm *c, int i) { return i == 0 ? 0 : -1; }

enum gpo_status gpo_dist_allreduce_sum(const gpo_dist_comm *c, float *buf, size_t n) {
    if (!buf && n) return gpo_fail(GPO_ERR_ARG, "allreduce of %zu floats from a NULL buffer", n);
    gpo_dist_count(0, 0, 0.0);
    return GPO_OK;
}

enum gpo_status gpo_dist_bcast(const gpo_dist_comm *c, void *buf, size_t n, int root) {
    if (root != 0) return gpo_fail(GPO_ERR_ARG, "broadcast root %d is not a member of a 1-rank group", root);
    if (!buf && n) return gpo_fail(GPO_ERR_ARG, "broadcast of %zu bytes from a NULL buffer", n);
    gpo_dist_count(0, 0, 0.0);
    return GPO_OK;
}

enum gpo_status gpo_dist_barrier(const gpo_dist_comm *c) {
    gpo_dist_count(0, 0, 0.0);
    return GPO_OK;
}
