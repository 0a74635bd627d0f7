/* dist.h - ranks and collectives for runs spread over several processes (MPI
 * ranks: sockets of one machine or several machines).  dist_mpi.c implements it
 * over Open MPI (`make MPI=1`); dist_stub.c is the single-rank build, where every
 * collective is the identity.  Callers never need an #ifdef.
 *
 * Rules every implementation keeps:
 * - Status codes, never exit: a failed or timed-out collective returns an error
 *   whose message names this rank and host and the peer that failed to answer.
 *   After such an error the communicators are unusable; the program reports the
 *   message and calls gpo_dist_abort(), which ends every rank of the job.
 * - Determinism: gpo_dist_allreduce_sum adds the ranks' buffers in rank order
 *   (((r0 + r1) + r2) + ...), element by element, so a given mesh gives
 *   bit-identical results on every rank and in every run, whatever the network.
 * - Deadlines: every collective waits at most gpo_dist_timeout() seconds (polling
 *   non-blocking operations) instead of hanging forever on a stopped peer.
 * - Threads: the library is initialised with MPI_THREAD_SERIALIZED: one thread
 *   communicates at a time (the forward pass's master thread between barriers;
 *   under `serve` that is the engine thread, not the one that called
 *   gpo_dist_init), the OpenMP workers never do.
 *
 * How the sharded forward pass uses it (see mesh.h for who holds what): rank 0
 * of each replica broadcasts the step's token batch over its model group; after
 * attention the partial output projections meet in one allreduce over the TP
 * group, after the MoE the partial expert sums in one over the EP group; the
 * unembedding's vocabulary shards send their sampling candidates to rank 0. */
#ifndef GPO_DIST_H
#define GPO_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "gpo.h"

/* A group of ranks (MPI: a communicator).  NULL means every rank of the job. */
typedef struct gpo_dist_comm gpo_dist_comm;

/* Default deadline of one collective, in seconds.  Generous on purpose: a step's
 * compute on the slowest rank (a 512-token prefill of the 120b shape on a small
 * machine, or the first touch of weights mapped from a network file system) can
 * take tens of seconds while the faster ranks already wait in the next
 * collective; a wrong abort costs more than a late one.  Tests use 1-2 s. */
#define GPO_DIST_TIMEOUT_DEFAULT 60.0

/* Communication counters of this rank since gpo_dist_init (or the last reset),
 * for `bench --json` and the generate metrics. */
struct gpo_dist_stats {
    uint64_t bytes_sent;     /* payload bytes this rank sent */
    uint64_t bytes_received; /* payload bytes it received */
    uint64_t n_calls;        /* collectives run */
    double seconds;          /* wall time inside collectives (waiting included) */
};

/* Start the distributed runtime (MPI_Init_thread at MPI_THREAD_SERIALIZED, or
 * refuse when MPI gives less) and learn every rank's host name.  Call once, from
 * the CLI's main before anything else, with main's argc/argv.  The deadline
 * starts as $GPTOSS_DIST_TIMEOUT when set (seconds), else the default.  The
 * single-rank build fails when the environment says the process is one of
 * several MPI ranks: it would silently run N independent copies. */
enum gpo_status gpo_dist_init(int *argc, char ***argv);
/* Shut the runtime down (MPI_Finalize) after the last collective; idempotent. */
void gpo_dist_finalize(void);
/* End every rank of the job now with exit status `code` (MPI_Abort); for the
 * CLI after a collective failed.  In the single-rank build: exit(code). */
void gpo_dist_abort(int code) __attribute__((noreturn));
/* 1 when this build talks MPI (make MPI=1), 0 for the single-rank stubs. */
int gpo_dist_built(void);

int gpo_dist_rank(void); /* this rank in the whole job, 0 before init */
int gpo_dist_size(void); /* ranks in the job, 1 before init */
/* The host name of this rank, or of rank r ("?" outside [0, size)). */
const char *gpo_dist_host(void);
const char *gpo_dist_host_of(int rank);

/* The deadline of every later collective, in seconds (> 0). */
enum gpo_status gpo_dist_set_timeout(double seconds);
double gpo_dist_timeout(void);

/* Sub-groups: the ranks that pass the same `color` form one group, ordered by
 * `key` (ties by their rank in `parent`).  Collective over `parent`: every rank
 * calls it.  Free with gpo_dist_comm_free (NULL is fine). */
enum gpo_status gpo_dist_split(const gpo_dist_comm *parent, int color, int key,
                               gpo_dist_comm **out);
void gpo_dist_comm_free(gpo_dist_comm *c);
int gpo_dist_comm_rank(const gpo_dist_comm *c); /* this rank's index in c */
int gpo_dist_comm_size(const gpo_dist_comm *c);
/* The job-wide rank of member i of c (for messages naming a peer). */
int gpo_dist_comm_world_rank(const gpo_dist_comm *c, int i);

/* buf[i] = sum over the members of c, in member order, of their buf[i]; every
 * member gets the same bits.  n may differ from 0 only if it is the same on
 * every member. */
enum gpo_status gpo_dist_allreduce_sum(const gpo_dist_comm *c, float *buf, size_t n);
/* Copy n bytes from member `root` of c to every other member's buf. */
enum gpo_status gpo_dist_bcast(const gpo_dist_comm *c, void *buf, size_t n, int root);
/* Copy a buffer whose length only member `root` knows: first its count *n of
 * elements of `size` bytes (-1: it has nothing to send, and every member gets
 * -1 and nothing else), then the elements.  Every other member gets *n and a
 * new malloc'd *buf with one zero byte after the elements (text stays a C
 * string).  On failure *buf may still hold that allocation: the caller frees
 * it (or NULL) in every case. */
enum gpo_status gpo_dist_bcast_counted(const gpo_dist_comm *c, void **buf, int64_t *n, size_t size,
                                       int root);
/* Return once every member of c has arrived (or fail at the deadline naming the
 * members that did not). */
enum gpo_status gpo_dist_barrier(const gpo_dist_comm *c);

void gpo_dist_get_stats(struct gpo_dist_stats *out);
void gpo_dist_reset_stats(void);

/* The serial sum the allreduce matches bit for bit: out[i] = ((parts[0][i] +
 * parts[1][i]) + ...) for n_parts >= 1.  The reference twin of the collective,
 * shared by both implementations and the tests. */
void gpo_dist_sum_in_order(float *out, const float *const *parts, int n_parts, size_t n);

#endif
