/* dist_mpi.c - dist.h over Open MPI (built with `make MPI=1`).  Collectives are
 * built from non-blocking point-to-point messages that are polled against a
 * deadline: the sums are added in rank order (bit-identical on every rank and
 * run, which MPI_Allreduce does not promise), and when a peer does not answer
 * in time the error names exactly which rank and host it was. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"
#include "dist_impl.h"
#include "util.h"

#define HOST_LEN 64

struct gpo_dist_comm {
    MPI_Comm comm;
    int rank, size;
    int *world; /* job-wide rank of each member */
};

enum { TAG_REDUCE = 1, TAG_GATHER, TAG_BCAST, TAG_BARRIER_IN, TAG_BARRIER_OUT };

/* The largest piece one message carries (elements or bytes), well inside MPI's
 * int counts. */
#define PIECE ((size_t)1 << 26)

static struct gpo_dist_comm world;
static int initialised, finalised;
/* Set when a collective failed or timed out: its messages may still be in
 * flight, so no later collective can be trusted; the job has to end. */
static int broken;
static char (*hosts)[HOST_LEN];
static char my_host[HOST_LEN] = "?";
/* Receive buffer of the allreduce, grown on demand, and the request lists,
 * sized for the whole job at init: no allocation per collective (only the
 * thread that communicates uses them). */
static float *scratch;
static size_t scratch_cap;
static struct reqs {
    MPI_Request *req;
    int *peer, *done;
    int n;
} reqs;
static const float **parts;

static const gpo_dist_comm *comm_or_world(const gpo_dist_comm *c) { return c ? c : &world; }

/* "rank 3 (host b)" for job-wide rank r. */
static const char *who(int r, char *buf, size_t cap) {
    snprintf(buf, cap, "rank %d (%s)", r, gpo_dist_host_of(r));
    return buf;
}

static enum gpo_status mpi_fail(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    broken = 1;
    char me[128];
    return gpo_fail(GPO_ERR_IO, "%s: %s failed: %s", who(gpo_dist_rank(), me, sizeof me), what, msg);
}

static enum gpo_status check_usable(const char *what) {
    char me[128];
    if (!initialised || finalised)
        return gpo_fail(GPO_ERR_ARG, "%s: the distributed runtime is not running (gpo_dist_init)", what);
    if (broken)
        return gpo_fail(GPO_ERR_IO, "%s: %s: an earlier collective failed, so the ranks are out of step",
                        who(gpo_dist_rank(), me, sizeof me), what);
    return GPO_OK;
}

/* 20 us while a wait is young (a peer finishing its share of a step); 1 ms once
 * it has lasted 10 ms (a follower waiting for the next request), so an idle rank
 * costs next to no CPU and a busy one answers within microseconds. */
static void pause_briefly(double waited) {
    struct timespec ts = {0, waited > 0.01 ? 1000000 : 20000};
    nanosleep(&ts, NULL);
}

/* Wait for the n requests, peer[i] being the member of c request i talks to.
 * Polls (spinning first, then with short sleeps so oversubscribed ranks leave
 * the cores to the ones still computing) until all are done or the deadline has
 * passed since t0; then fails naming the members still missing. */
static enum gpo_status wait_all(const gpo_dist_comm *c, const char *what, double t0) {
    MPI_Request *req = reqs.req;
    const int *peer = reqs.peer, n = reqs.n;
    const double deadline = t0 + gpo_dist_timeout();
    enum gpo_status s = GPO_OK;
    for (long spins = 0;; spins++) {
        int outcount = 0;
        int rc = MPI_Testsome(n, req, &outcount, reqs.done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) {
            s = mpi_fail(rc, what);
            break;
        }
        if (outcount == MPI_UNDEFINED) break; /* every request has completed */
        if (gpo_now() > deadline) {
            char me[128], list[512] = "", one[128];
            size_t used = 0;
            for (int i = 0; i < n && used + 1 < sizeof list; i++) {
                if (req[i] == MPI_REQUEST_NULL) continue;
                /* A peer with both a send and a receive pending is named once. */
                if (i > 0 && peer[i - 1] == peer[i] && req[i - 1] != MPI_REQUEST_NULL) continue;
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "",
                                         who(c->world[peer[i]], one, sizeof one));
            }
            broken = 1;
            s = gpo_fail(GPO_ERR_IO,
                         "%s: %s waited %.1f s (the distributed timeout) for %s: hung, stopped or "
                         "too slow; ending the job",
                         who(gpo_dist_rank(), me, sizeof me), what, gpo_now() - t0, list);
            break;
        }
        if (spins > 1000) pause_briefly(gpo_now() - t0);
    }
    return s;
}

/* Start sending (send = 1) or receiving n elements to or from member `peer`. */
static enum gpo_status post(const gpo_dist_comm *c, int send, void *buf, size_t n,
                            MPI_Datatype type, int peer, int tag, const char *what) {
    int rc = send ? MPI_Isend(buf, (int)n, type, peer, tag, c->comm, &reqs.req[reqs.n])
                  : MPI_Irecv(buf, (int)n, type, peer, tag, c->comm, &reqs.req[reqs.n]);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, what);
    reqs.peer[reqs.n++] = peer;
    return GPO_OK;
}

static enum gpo_status alloc_workspace(int size) {
    reqs.req = malloc(2 * (size_t)size * sizeof *reqs.req);
    reqs.peer = malloc(2 * (size_t)size * sizeof *reqs.peer);
    reqs.done = malloc(2 * (size_t)size * sizeof *reqs.done);
    parts = malloc((size_t)size * sizeof *parts);
    hosts = calloc((size_t)size, sizeof *hosts);
    if (!reqs.req || !reqs.peer || !reqs.done || !parts || !hosts)
        return gpo_fail(GPO_ERR_NOMEM, "out of memory for the message lists of %d ranks", size);
    return GPO_OK;
}

static void free_workspace(void) {
    free(reqs.req);
    free(reqs.peer);
    free(reqs.done);
    free(parts);
    free(hosts);
    free(scratch);
    reqs = (struct reqs){0};
    parts = NULL;
    hosts = NULL;
    scratch = NULL;
    scratch_cap = 0;
}

static enum gpo_status comm_fill(gpo_dist_comm *c, MPI_Comm comm) {
    c->comm = comm;
    MPI_Comm_rank(comm, &c->rank);
    MPI_Comm_size(comm, &c->size);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    c->world = malloc((size_t)c->size * sizeof *c->world);
    if (!c->world) return gpo_fail(GPO_ERR_NOMEM, "out of memory for a group of %d ranks", c->size);
    int me = gpo_dist_rank();
    int rc = MPI_Allgather(&me, 1, MPI_INT, c->world, 1, MPI_INT, comm);
    return rc == MPI_SUCCESS ? GPO_OK : mpi_fail(rc, "learning a group's ranks");
}

enum gpo_status gpo_dist_init(int *argc, char ***argv) {
    if (initialised) return GPO_OK;
    GPO_TRY(gpo_dist_timeout_from_env());
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return gpo_fail(GPO_ERR_IO, "MPI_Init_thread failed");
    initialised = 1;
    if (gethostname(my_host, sizeof my_host) != 0) snprintf(my_host, sizeof my_host, "?");
    my_host[HOST_LEN - 1] = 0;
    if (provided < MPI_THREAD_SERIALIZED)
        return gpo_fail(GPO_ERR_UNSUPPORTED,
                        "%s: MPI gives thread level %d; gptoss needs MPI_THREAD_SERIALIZED (%d): "
                        "the server's engine thread communicates, never two threads at once",
                        my_host, provided, MPI_THREAD_SERIALIZED);
    MPI_Comm dup;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &dup) != MPI_SUCCESS)
        return gpo_fail(GPO_ERR_IO, "%s: MPI_Comm_dup failed", my_host);
    int rank = 0, size = 1;
    MPI_Comm_rank(dup, &rank);
    MPI_Comm_size(dup, &size);
    GPO_TRY(alloc_workspace(size));
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    int rc = MPI_Allgather(my_host, HOST_LEN, MPI_CHAR, hosts, HOST_LEN, MPI_CHAR, dup);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "exchanging host names");
    world.rank = rank; /* gpo_dist_rank() reads it inside comm_fill */
    return comm_fill(&world, dup);
}

void gpo_dist_finalize(void) {
    if (!initialised || finalised) return;
    finalised = 1;
    /* After a failed collective MPI_Finalize could wait for the lost messages;
     * the caller ends the job with gpo_dist_abort instead. */
    if (broken) return;
    free(world.world);
    if (world.comm != MPI_COMM_NULL && world.comm) MPI_Comm_free(&world.comm);
    free_workspace();
    MPI_Finalize();
}

void gpo_dist_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    if (initialised && !finalised) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

int gpo_dist_built(void) { return 1; }
int gpo_dist_rank(void) { return world.rank; }
int gpo_dist_size(void) { return initialised ? world.size : 1; }
const char *gpo_dist_host(void) { return my_host; }

const char *gpo_dist_host_of(int rank) {
    if (!hosts || rank < 0 || rank >= world.size) return "?";
    return hosts[rank];
}

enum gpo_status gpo_dist_split(const gpo_dist_comm *parent, int color, int key,
                               gpo_dist_comm **out) {
    *out = NULL;
    GPO_TRY(check_usable("splitting a rank group"));
    if (color < 0) return gpo_fail(GPO_ERR_ARG, "group colour must be >= 0, not %d", color);
    gpo_dist_comm *c = calloc(1, sizeof *c);
    if (!c) return gpo_fail(GPO_ERR_NOMEM, "out of memory for a rank group");
    /* MPI_Comm_split has no non-blocking form in MPI 3.1; it runs once at
     * start-up, when mpirun still watches every rank's launch. */
    MPI_Comm comm;
    int rc = MPI_Comm_split(comm_or_world(parent)->comm, color, key, &comm);
    if (rc != MPI_SUCCESS) {
        free(c);
        return mpi_fail(rc, "splitting a rank group");
    }
    enum gpo_status s = comm_fill(c, comm);
    if (s != GPO_OK) {
        gpo_dist_comm_free(c);
        return s;
    }
    *out = c;
    return GPO_OK;
}

void gpo_dist_comm_free(gpo_dist_comm *c) {
    if (!c) return;
    if (!broken && !finalised && c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    free(c->world);
    free(c);
}

int gpo_dist_comm_rank(const gpo_dist_comm *c) { return comm_or_world(c)->rank; }
int gpo_dist_comm_size(const gpo_dist_comm *c) { return comm_or_world(c)->size; }

int gpo_dist_comm_world_rank(const gpo_dist_comm *c, int i) {
    c = comm_or_world(c);
    return i >= 0 && i < c->size ? c->world[i] : -1;
}

/* One piece of the allreduce: len floats, chunk j (elements [len*j/N,
 * len*(j+1)/N)) belongs to member j.  Phase 1 sends every member its chunk of
 * our buffer and receives every member's copy of ours, which we add in rank
 * order; phase 2 sends our summed chunk to all and receives theirs.  Each member
 * sends len*(N-1)/N floats per phase, directly (no ring), so the sum's order
 * never depends on the network. */
static enum gpo_status allreduce_piece(const gpo_dist_comm *c, float *b, size_t len,
                                       const char *what, double t0, uint64_t *sent) {
    const int N = c->size, me = c->rank;
#define LO(j) (len * (size_t)(j) / (size_t)N)
    const size_t mine = LO(me + 1) - LO(me), chunk_cap = len / (size_t)N + 1;
    if (scratch_cap < chunk_cap * (size_t)N) {
        float *p = realloc(scratch, chunk_cap * (size_t)N * sizeof *p);
        if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory for %zu floats of allreduce buffer",
                                chunk_cap * (size_t)N);
        scratch = p;
        scratch_cap = chunk_cap * (size_t)N;
    }
    reqs.n = 0;
    for (int j = 0; j < N; j++) {
        if (j == me) continue;
        GPO_TRY(post(c, 0, scratch + (size_t)j * chunk_cap, mine, MPI_FLOAT, j, TAG_REDUCE, what));
        GPO_TRY(post(c, 1, b + LO(j), LO(j + 1) - LO(j), MPI_FLOAT, j, TAG_REDUCE, what));
        *sent += (LO(j + 1) - LO(j)) * sizeof(float);
    }
    GPO_TRY(wait_all(c, what, t0));
    for (int j = 0; j < N; j++) parts[j] = j == me ? b + LO(me) : scratch + (size_t)j * chunk_cap;
    gpo_dist_sum_in_order(b + LO(me), parts, N, mine);
    reqs.n = 0;
    for (int j = 0; j < N; j++) {
        if (j == me) continue;
        GPO_TRY(post(c, 1, b + LO(me), mine, MPI_FLOAT, j, TAG_GATHER, what));
        GPO_TRY(post(c, 0, b + LO(j), LO(j + 1) - LO(j), MPI_FLOAT, j, TAG_GATHER, what));
        *sent += mine * sizeof(float);
    }
#undef LO
    return wait_all(c, what, t0);
}

enum gpo_status gpo_dist_allreduce_sum(const gpo_dist_comm *c, float *buf, size_t n) {
    char what[96];
    snprintf(what, sizeof what, "allreduce of %zu floats", n);
    GPO_TRY(check_usable(what));
    c = comm_or_world(c);
    if (!buf && n) return gpo_fail(GPO_ERR_ARG, "%s from a NULL buffer", what);
    const double t0 = gpo_now();
    uint64_t sent = 0;
    /* Pieces of at most PIECE floats per member keep every count an int. */
    const size_t step = PIECE * (size_t)c->size;
    for (size_t off = 0; c->size > 1 && off < n; off += step)
        GPO_TRY(allreduce_piece(c, buf + off, n - off < step ? n - off : step, what, t0, &sent));
    gpo_dist_count(sent, sent, gpo_now() - t0);
    return GPO_OK;
}

enum gpo_status gpo_dist_bcast(const gpo_dist_comm *c, void *buf, size_t n, int root) {
    char what[96];
    snprintf(what, sizeof what, "broadcast of %zu bytes", n);
    GPO_TRY(check_usable(what));
    c = comm_or_world(c);
    if (root < 0 || root >= c->size)
        return gpo_fail(GPO_ERR_ARG, "%s: root %d is not a member of a %d-rank group", what, root, c->size);
    if (!buf && n) return gpo_fail(GPO_ERR_ARG, "%s from a NULL buffer", what);
    const double t0 = gpo_now();
    uint64_t sent = 0, received = 0;
    /* The root sends to each member directly, so a missing one is named. */
    for (size_t off = 0; c->size > 1 && off < n; off += PIECE) {
        size_t len = n - off < PIECE ? n - off : PIECE;
        reqs.n = 0;
        for (int j = 0; j < c->size; j++) {
            if (c->rank == root && j != root) {
                GPO_TRY(post(c, 1, (char *)buf + off, len, MPI_BYTE, j, TAG_BCAST, what));
                sent += len;
            } else if (c->rank != root && j == root) {
                GPO_TRY(post(c, 0, (char *)buf + off, len, MPI_BYTE, j, TAG_BCAST, what));
                received += len;
            }
        }
        GPO_TRY(wait_all(c, what, t0));
    }
    gpo_dist_count(sent, received, gpo_now() - t0);
    return GPO_OK;
}

enum gpo_status gpo_dist_barrier(const gpo_dist_comm *c) {
    const char *what = "barrier";
    GPO_TRY(check_usable(what));
    c = comm_or_world(c);
    const double t0 = gpo_now();
    /* Everyone reports to member 0, which then releases everyone: the one that
     * waits knows who has not arrived. */
    char dummy = 0;
    for (int pass = 0; c->size > 1 && pass < 2; pass++) {
        const int tag = pass ? TAG_BARRIER_OUT : TAG_BARRIER_IN;
        reqs.n = 0;
        for (int j = 1; j < c->size; j++) {
            if (c->rank == 0) GPO_TRY(post(c, pass, &dummy, 0, MPI_BYTE, j, tag, what));
            else if (j == c->rank) GPO_TRY(post(c, !pass, &dummy, 0, MPI_BYTE, 0, tag, what));
        }
        GPO_TRY(wait_all(c, what, t0));
    }
    gpo_dist_count(0, 0, gpo_now() - t0);
    return GPO_OK;
}
