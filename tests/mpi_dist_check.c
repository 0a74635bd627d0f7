/* mpi_dist_check.c - the MPI build's collectives under real ranks (run by
 * tests/e2e_mpi.sh with mpirun -np 1, 2 and 4):
 *   mpi_dist_check [--dist-timeout S]
 *       allreduce equal bit for bit to the serial sum in rank order for awkward
 *       values and sizes, broadcast from every root, barriers, the TP/EP/DP and
 *       model groups of every valid mesh of the job size, the counters;
 *   mpi_dist_check --loop SECONDS --pid-dir DIR [--dist-timeout S]
 *       allreduces for SECONDS after writing DIR/RANK.pid, for the tests that
 *       kill or stop one rank;
 *   mpi_dist_check --bench FLOATS
 *       the time and bytes sent of one allreduce of FLOATS (a step's [T, n_embd]).
 * Any failure prints the library's message and ends the whole job. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist.h"
#include "mesh.h"

/* The library's messages of failed collectives name the rank and host already. */
static void die(const char *what) {
    fprintf(stderr, "mpi_dist_check: %s failed: %s\n", what, gpo_last_error());
    gpo_dist_abort(1);
}

static void require(int ok, const char *what) {
    if (ok) return;
    fprintf(stderr, "mpi_dist_check: check failed on rank %d (%s): %s\n", gpo_dist_rank(), gpo_dist_host(),
            what);
    gpo_dist_abort(1);
}

/* Rank r's input of n values: awkward ones (signed zeros, subnormals, values
 * that round away when added in another order, huge magnitudes) mixed with
 * pseudo-random ones, the same wherever it is computed. */
static void fill(float *v, size_t n, int r, unsigned salt) {
    static const float special[] = {-0.0f, 1e-45f, -1.17549e-38f, 3.4e38f, 1e8f, 1.0f, -1e8f, 0.1f, -3e-39f};
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(r + 1) + salt;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x % 3 == 0) v[i] = special[(x >> 8) % (sizeof special / sizeof *special)];
        else v[i] = ldexpf((float)((int64_t)(x >> 20) % 2000001 - 1000000), (int)((x >> 4) % 60) - 40);
    }
}

/* Allreduce over group c (members m_0..m_k, job ranks world[]) against the
 * serial sum of every member's input in member order. */
static void check_allreduce(const gpo_dist_comm *c, size_t n, unsigned salt) {
    const int k = gpo_dist_comm_size(c);
    float *buf = malloc((n + 1) * sizeof *buf), *want = malloc((n + 1) * sizeof *want);
    float *all = malloc(((size_t)k * n + 1) * sizeof *all);
    const float **parts = malloc((size_t)k * sizeof *parts);
    require(buf && want && all && parts, "memory");
    for (int i = 0; i < k; i++) {
        fill(all + (size_t)i * n, n, gpo_dist_comm_world_rank(c, i), salt);
        parts[i] = all + (size_t)i * n;
    }
    gpo_dist_sum_in_order(want, parts, k, n);
    for (int rep = 0; rep < 2; rep++) {
        fill(buf, n, gpo_dist_rank(), salt);
        if (gpo_dist_allreduce_sum(c, buf, n) != GPO_OK) die("allreduce");
        require(memcmp(buf, want, n * sizeof *buf) == 0, "allreduce differs from the serial sum in rank order");
    }
    free(buf);
    free(want);
    free(all);
    free(parts);
}

static void check_bcast(void) {
    char buf[4099];
    for (int root = 0; root < gpo_dist_size(); root++) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = (char)(gpo_dist_rank() == root ? (int)(i * 7 + (size_t)root) : -1);
        if (gpo_dist_bcast(NULL, buf, sizeof buf, root) != GPO_OK) die("broadcast");
        for (size_t i = 0; i < sizeof buf; i++) require(buf[i] == (char)(i * 7 + (size_t)root), "broadcast data");
    }
}

/* A buffer only the root knows the length of: counts 0, 1 and 1000 of 4-byte
 * elements, and -1 (the root has nothing), from every root. */
static void check_bcast_counted(void) {
    static const int64_t counts[] = {0, 1, 1000, -1};
    for (int root = 0; root < gpo_dist_size(); root++)
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
            const int64_t want = counts[ci];
            int32_t *mine = NULL;
            int64_t n = -7;
            if (gpo_dist_rank() == root) {
                n = want;
                mine = malloc((size_t)(want > 0 ? want : 1) * sizeof *mine);
                if (!mine) die("out of memory");
                for (int64_t i = 0; i < want; i++) mine[i] = (int32_t)(i * 13 + root);
            }
            void *buf = mine;
            if (gpo_dist_bcast_counted(NULL, &buf, &n, sizeof *mine, root) != GPO_OK)
                die("counted broadcast");
            require(n == want, "counted broadcast: the count");
            if (want >= 0) {
                const int32_t *got = buf;
                for (int64_t i = 0; i < want; i++)
                    require(got[i] == (int32_t)(i * 13 + root), "counted broadcast data");
                require(((const char *)buf)[want * (int64_t)sizeof *got] == 0 || gpo_dist_rank() == root,
                        "counted broadcast: a zero byte after the elements");
            } else {
                require(buf == mine, "counted broadcast of nothing allocates nothing");
            }
            free(buf);
        }
}

/* The groups of every valid mesh of the job size on the 20b shape (8 KV heads,
 * 32 experts): sizes, members as mesh.h numbers them, and sums within each. */
static void check_groups(void) {
    struct gpo_config cfg = {.n_layer = 24, .n_embd = 2880, .n_head = 64, .n_head_kv = 8, .head_dim = 64,
                             .n_expert = 32, .n_expert_used = 4, .n_ff = 2880, .n_vocab = 201088};
    struct gpo_mesh ms[64];
    const int N = gpo_dist_size(), r = gpo_dist_rank();
    size_t n = gpo_mesh_list(&cfg, N, ms, 64);
    require(n >= 1, "a valid mesh");
    for (size_t i = 0; i < n && i < 64; i++) {
        const struct gpo_mesh *m = &ms[i];
        const int M = m->tp * m->ep, dp = r / M, mr = r % M, ep = mr / m->tp, tp = mr % m->tp;
        struct gpo_mesh_groups g;
        if (gpo_mesh_groups_open(m, &g) != GPO_OK) die("opening the mesh groups");
        require(gpo_dist_comm_size(g.model) == M && gpo_dist_comm_rank(g.model) == mr, "model group");
        require(gpo_dist_comm_size(g.tp) == m->tp && gpo_dist_comm_rank(g.tp) == tp, "TP group");
        require(gpo_dist_comm_size(g.ep) == m->ep && gpo_dist_comm_rank(g.ep) == ep, "EP group");
        require(gpo_dist_comm_size(g.dp) == m->dp && gpo_dist_comm_rank(g.dp) == dp, "DP group");
        for (int j = 0; j < m->tp; j++)
            require(gpo_dist_comm_world_rank(g.tp, j) == dp * M + ep * m->tp + j, "TP group members");
        for (int j = 0; j < m->ep; j++)
            require(gpo_dist_comm_world_rank(g.ep, j) == dp * M + j * m->tp + tp, "EP group members");
        for (int j = 0; j < m->dp; j++)
            require(gpo_dist_comm_world_rank(g.dp, j) == j * M + mr, "DP group members");
        check_allreduce(g.tp, 1001, 11);
        check_allreduce(g.ep, 1001, 12);
        check_allreduce(g.model, 777, 13);
        check_allreduce(g.dp, 5, 14);
        if (gpo_dist_barrier(g.model) != GPO_OK) die("barrier of a model group");
        gpo_mesh_groups_close(&g);
    }
}

static void run_checks(void) {
    gpo_dist_reset_stats();
    static const size_t sizes[] = {0, 1, 3, 4, 5, 1000, 100003};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) check_allreduce(NULL, sizes[i], (unsigned)i);
    check_bcast();
    check_bcast_counted();
    if (gpo_dist_barrier(NULL) != GPO_OK) die("barrier");
    check_groups();
    struct gpo_dist_stats st;
    gpo_dist_get_stats(&st);
    require(st.n_calls > 0, "counted collectives");
    require(gpo_dist_size() == 1 || (st.bytes_sent > 0 && st.bytes_received > 0), "counted bytes");
    printf("mpi_dist_check: rank %d of %d (%s): all checks passed (%llu collectives, %llu bytes sent, "
           "%.3f s)\n",
           gpo_dist_rank(), gpo_dist_size(), gpo_dist_host(), (unsigned long long)st.n_calls,
           (unsigned long long)st.bytes_sent, st.seconds);
}

/* Allreduces until `seconds` have passed, after announcing this rank's pid. */
static void run_loop(double seconds, const char *pid_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%d.pid", pid_dir, gpo_dist_rank());
    FILE *f = fopen(path, "w");
    require(f != NULL, "writing the pid file");
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    float buf[4096];
    const double t0 = gpo_now();
    long steps = 0;
    while (gpo_now() - t0 < seconds) {
        fill(buf, 4096, gpo_dist_rank(), (unsigned)steps);
        if (gpo_dist_allreduce_sum(NULL, buf, 4096) != GPO_OK) die("allreduce");
        steps++;
    }
    if (gpo_dist_rank() == 0) printf("mpi_dist_check: %ld allreduces in %.1f s\n", steps, seconds);
}

/* Median time of 31 allreduces of n floats, and the bytes each sends. */
static void run_bench(size_t n) {
    float *buf = calloc(n, sizeof *buf);
    double t[31];
    require(buf != NULL, "memory");
    gpo_dist_reset_stats();
    for (int i = 0; i < 31; i++) {
        fill(buf, n, gpo_dist_rank(), (unsigned)i);
        const double t0 = gpo_now();
        if (gpo_dist_allreduce_sum(NULL, buf, n) != GPO_OK) die("allreduce");
        t[i] = gpo_now() - t0;
    }
    for (int i = 1; i < 31; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    struct gpo_dist_stats st;
    gpo_dist_get_stats(&st);
    if (gpo_dist_rank() == 0)
        printf("mpi_dist_check: %d ranks, allreduce of %zu floats: median %.1f us, %llu bytes sent per rank\n",
               gpo_dist_size(), n, t[15] * 1e6, (unsigned long long)(st.bytes_sent / 31));
    free(buf);
}

int main(int argc, char **argv) {
    if (gpo_dist_init(&argc, &argv) != GPO_OK) {
        fprintf(stderr, "mpi_dist_check: error: %s\n", gpo_last_error());
        return 1;
    }
    double loop = 0;
    long bench = 0;
    const char *pid_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dist-timeout") && i + 1 < argc) {
            if (gpo_dist_set_timeout(atof(argv[++i])) != GPO_OK) die("--dist-timeout");
        } else if (!strcmp(argv[i], "--loop") && i + 1 < argc) {
            loop = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--bench") && i + 1 < argc) {
            bench = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--pid-dir") && i + 1 < argc) {
            pid_dir = argv[++i];
        } else {
            fprintf(stderr, "mpi_dist_check: unknown argument '%s'\n", argv[i]);
            gpo_dist_abort(2);
        }
    }
    if (bench > 0) run_bench((size_t)bench);
    else if (loop > 0 && pid_dir) run_loop(loop, pid_dir);
    else run_checks();
    gpo_dist_finalize();
    return 0;
}
