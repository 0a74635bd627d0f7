/* mpi_forward_check.c - the sharded forward pass under real ranks (run by
 * tests/e2e_mpi_forward.sh with mpirun):
 *   mpi_forward_check TPxEP [DP]
 * loads the tiny-a fixture, takes this rank's shard of the mesh, and checks on
 * every rank (each holds the gathered logits):
 *   - the logits of the four golden sequences, prefilled, against the fixture's
 *     float32 reference within the golden tolerance, the same argmax everywhere;
 *   - token by token through the KV cache: within the tolerance too;
 *   - bit-identical logits for a second run, for 1 and 3 threads, and for the
 *     four sequences prefilled in one batch;
 *   - the communication counters: bytes were sent exactly when the group has
 *     more than one rank.
 * Any failure prints what and where and ends the whole job. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dist.h"
#include "gpo.h"
#include "kvcache.h"
#include "mesh.h"

#define FIX "tests/fixtures/tiny-a"
#define N_SEQ 4
#define TOL 1e-3

static void require(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void require(int ok, const char *fmt, ...) {
    if (ok) return;
    fprintf(stderr, "mpi_forward_check: rank %d (%s): check failed: ", gpo_dist_rank(), gpo_dist_host());
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    gpo_dist_abort(1);
}

static void *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    require(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    require(buf && fread(buf, 1, (size_t)n, f) == (size_t)n, "cannot read %s", path);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static struct {
    gpo_model *m;
    int64_t V;
    struct gpo_ids ids[N_SEQ];
    size_t rows;
    struct gpo_mesh_shard shard;
    struct gpo_mesh_groups groups;
} g;

static void load_ids(int s, struct gpo_ids *ids) {
    char path[256];
    size_t n;
    snprintf(path, sizeof path, FIX "/golden/seq%d.ids.json", s);
    char *txt = read_file(path, &n);
    cJSON *a = cJSON_Parse(txt), *e;
    require(cJSON_IsArray(a), "%s is not an array of ids", path);
    cJSON_ArrayForEach(e, a) require(gpo_ids_push(ids, (int32_t)e->valuedouble) == GPO_OK, "%s", "out of memory");
    cJSON_Delete(a);
    free(txt);
}

/* The logits of the golden sequences, one after the other, in chunks of `chunk`
 * tokens, or all four prefilled in one batch (chunk 0). */
static float *run(int threads, int64_t chunk) {
    gpo_ctx *ctx;
    struct gpo_ctx_opts o = {.max_tokens = (int64_t)g.rows, .max_seqs = N_SEQ, .n_threads = threads,
                             .path = GPO_PATH_EXACT, .shard = &g.shard, .groups = &g.groups};
    require(gpo_ctx_create(g.m, &o, &ctx) == GPO_OK, "context: %s", gpo_last_error());
    float *lg = calloc(g.rows * (size_t)g.V, sizeof *lg);
    require(lg != NULL, "%s", "out of memory");
    gpo_kv *kv[N_SEQ];
    struct gpo_seq_batch b[N_SEQ];
    size_t row = 0;
    for (int s = 0; s < N_SEQ; s++) {
        require(gpo_kv_create_shard(g.m, &g.shard, (int64_t)g.ids[s].n, 0, &kv[s]) == GPO_OK,
                "KV cache: %s", gpo_last_error());
        b[s] = (struct gpo_seq_batch){kv[s], g.ids[s].ids, (int64_t)g.ids[s].n, GPO_LOGITS_ALL};
        for (int64_t i = 0; chunk > 0 && i < (int64_t)g.ids[s].n; i += chunk) {
            struct gpo_seq_batch p = b[s];
            p.tokens += i;
            p.n_tokens = (int64_t)g.ids[s].n - i < chunk ? (int64_t)g.ids[s].n - i : chunk;
            require(gpo_forward(ctx, &p, 1, lg + (row + (size_t)i) * (size_t)g.V) == GPO_OK,
                    "forward: %s", gpo_last_error());
        }
        row += g.ids[s].n;
    }
    if (chunk == 0) require(gpo_forward(ctx, b, N_SEQ, lg) == GPO_OK, "forward: %s", gpo_last_error());
    for (int s = 0; s < N_SEQ; s++) gpo_kv_free(kv[s]);
    gpo_ctx_free(ctx);
    return lg;
}

static int argmax(const float *x, int64_t n) {
    int best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int)i;
    return best;
}

/* Max |a - b| over every logit; *agree: rows whose argmax is the same. */
static double compare(const float *a, const float *b, size_t *agree) {
    double mx = 0;
    *agree = 0;
    for (size_t r = 0; r < g.rows; r++) {
        for (int64_t v = 0; v < g.V; v++) {
            double d = fabs((double)a[r * g.V + v] - b[r * g.V + v]);
            if (!(d <= mx)) mx = d;
        }
        *agree += argmax(a + r * g.V, g.V) == argmax(b + r * g.V, g.V);
    }
    return mx;
}

static float *golden(void) {
    float *all = malloc(g.rows * (size_t)g.V * sizeof *all);
    require(all != NULL, "%s", "out of memory");
    size_t at = 0;
    for (int s = 0; s < N_SEQ; s++) {
        char path[256];
        size_t n;
        snprintf(path, sizeof path, FIX "/golden/seq%d.logits.f32", s);
        float *l = read_file(path, &n);
        require(n == g.ids[s].n * (size_t)g.V * sizeof *l, "%s has the wrong size", path);
        memcpy(all + at, l, n);
        at += n / sizeof *l;
        free(l);
    }
    return all;
}

static void check_close(const char *what, const float *got, const float *gold) {
    size_t agree;
    double d = compare(got, gold, &agree);
    if (gpo_dist_rank() == 0)
        printf("mpi_forward_check: %s: max|d| %.3g against the fixture, argmax %zu/%zu\n", what, d,
               agree, g.rows);
    require(d <= TOL, "%s: logits beyond the golden tolerance", what);
    require(agree == g.rows, "%s: an argmax differs from the fixture's", what);
}

static void check_same(const char *what, const float *a, const float *b) {
    require(memcmp(a, b, g.rows * (size_t)g.V * sizeof *a) == 0, "%s: not bit-identical", what);
}

int main(int argc, char **argv) {
    if (gpo_dist_init(&argc, &argv) != GPO_OK) {
        fprintf(stderr, "mpi_forward_check: %s\n", gpo_last_error());
        return 1;
    }
    gpo_set_log_level(GPO_LOG_ERROR);
    struct gpo_mesh mesh = {0};
    require(argc >= 2 && gpo_mesh_parse(argv[1], &mesh) == GPO_OK, "usage: %s TPxEP [DP]", argv[0]);
    mesh.dp = argc >= 3 ? atoi(argv[2]) : 1;
    require(gpo_model_load(FIX, NULL, &g.m) == GPO_OK, "load: %s", gpo_last_error());
    const struct gpo_config *c = gpo_model_config(g.m);
    g.V = c->n_vocab;
    require(gpo_mesh_validate(c, &mesh, gpo_dist_size()) == GPO_OK, "mesh: %s", gpo_last_error());
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_model(g.m, &w);
    gpo_mesh_shard_of(c, &mesh, &w, gpo_dist_rank(), &g.shard);
    require(gpo_mesh_groups_open(&mesh, &g.groups) == GPO_OK, "groups: %s", gpo_last_error());
    for (int s = 0; s < N_SEQ; s++) {
        load_ids(s, &g.ids[s]);
        g.rows += g.ids[s].n;
    }

    float *gold = golden();
    gpo_dist_reset_stats();
    float *a = run(2, 1 << 20);
    struct gpo_dist_stats ds;
    gpo_dist_get_stats(&ds);
    const int group = mesh.tp * mesh.ep;
    require(group > 1 ? ds.bytes_sent > 0 && ds.n_calls > 0 : ds.bytes_sent == 0,
            "%s", "bytes sent do not match the size of the model group");
    check_close("prefill", a, gold);
    float *b = run(2, 1 << 20);
    check_same("a second run", a, b);
    free(b);
    b = run(1, 1 << 20);
    check_same("1 thread against 2", a, b);
    free(b);
    b = run(3, 0);
    check_same("3 threads, the four sequences in one batch", a, b);
    free(b);
    b = run(2, 1);
    check_close("incremental", b, gold);
    free(b);
    free(a);
    free(gold);

    for (int s = 0; s < N_SEQ; s++) gpo_ids_free(&g.ids[s]);
    gpo_mesh_groups_close(&g.groups);
    gpo_model_free(g.m);
    printf("mpi_forward_check: rank %d of %d, mesh %dx%d DP %d, %.0f bytes sent: all checks passed\n",
           gpo_dist_rank(), gpo_dist_size(), mesh.tp, mesh.ep, mesh.dp, (double)ds.bytes_sent);
    gpo_dist_finalize();
    return 0;
}
