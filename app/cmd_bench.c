/* cmd_bench.c - `gptoss bench`: prompt processing (ppP: one sequence of P tokens)
 * and generation (tgN: B sequences decoding N tokens together) in the manner of
 * llama-bench, with the weight bytes each token reads, the effective bandwidth
 * that gives and the machine's measured read bandwidth for comparison.  A markdown
 * table or JSON Lines on stdout; progress on stderr. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "dist.h"
#include "forward.h"
#include "gpo_bench.h"
#include "kvcache.h"
#include "shard_plan.h"
#include "util.h"

#define MAX_LIST 32
#define MAX_BATCH 1024

static void usage(void) {
    printf("usage: gptoss bench [-m DIR] [options]\n"
           "\n"
           "Measures prompt processing (ppP) and generation (tgN) speed, the weight bytes\n"
           "each token reads, the effective bandwidth that gives, and the machine's memory\n"
           "read bandwidth with the same thread count.  Lists (1,4,8) run every value.\n"
           "\n"
           "  -m, --model DIR        checkpoint folder (default: $GPT_DIR, then $HF_MODEL)\n"
           "  -p, --n-prompt LIST    prompt lengths for ppP tests (default 512; 0 = none)\n"
           "  -n, --n-gen LIST       generated tokens for tgN tests (default 128; 0 = none)\n"
           "  -t, --threads LIST     thread counts (default: all cores)\n"
           "  --batch LIST           sequences decoding together in tgN (default 1);\n"
           "                         tok/s counts all of them, tok/s/user is tok/s / B\n"
           "  --ubatch N             tokens per forward call in prefill (default 512)\n"
           "  -r, --repetitions N    timed runs per test, after one untimed warm-up (default 3)\n"
           "  --dense bf16|q8        dense weights as stored (bf16, default) or requantised\n"
           "                         to 8-bit blocks at load (q8)\n"
           "  --no-repack            read a GGUF model's experts and the dense matrices in\n"
           "                         place, instead of repacking or copying them at load\n"
           "                         (JSON: experts)\n"
           "  --fast                 the fast path (default): activations rounded within bf16 error\n"
           "  --exact                the exact fp32 path\n"
           "  --ref                  the plain scalar reference kernels\n"
           "  --json [FILE]          JSON Lines, one object per test: on stdout instead of the\n"
           "                         table, or to FILE with the table on stdout ('-' = stdout)\n"
           "  --json-out FILE        the same as --json FILE\n"
           "  --membw                only measure the memory read bandwidth (no model needed)\n"
           "  --no-membw             skip the bandwidth probe that otherwise runs first\n"
           "  --membw-mib N          probe buffer in MiB (default 1024; keep it well above the caches)\n"
           "  --membw-seconds S      time spent on probe passes per thread count (default 1)\n"
           "  --seed N               seed of the pseudo-random token ids (default 42)\n"
           "  --mesh TPxEP, --dp D   under mpirun: the mesh of the ranks (as `gptoss info`);\n"
           "                         every rank runs its shard, rank 0 reports, and JSON adds\n"
           "                         comm_s_per_step and comm_bytes_per_token (rank 0's\n"
           "                         collectives: seconds per forward call, bytes sent per token);\n"
           "                         rank 0 then gets each logits row's greedy candidate (what\n"
           "                         greedy sampling gets), not the row, and logits_hash covers those\n"
           "  -h, --help             show this help\n"
           "\n"
           "Token ids are pseudo-random (no sampler), so the speed measured does not depend on\n"
           "what the model says.  tgN first prefills one token per sequence, untimed.\n"
           "weight_bytes_per_token: for tg with B = 1 the model's active weights per token;\n"
           "otherwise counted from the distinct experts each forward call actually routed to\n"
           "(recorded during the warm-up run), so experts shared by the batch count once.\n"
           "idle (JSON idle_frac): the share of the threads' time spent waiting at the\n"
           "forward pass's barriers; JSON barriers_per_step and barrier_ms_per_step: the\n"
           "barriers one forward call crosses and the time a thread waits at them per call.\n");
}

struct list {
    int64_t v[MAX_LIST];
    int n;
};

struct opts {
    const char *model_arg, *json_path; /* json_path "-": JSON Lines on stdout */
    struct list prompts, gens, threads, batches;
    int64_t reps, ubatch, membw_mib;
    double membw_seconds;
    int json, membw_only, no_membw; /* json: JSON Lines replace the table on stdout */
    enum gpo_path path;
    uint64_t seed;
    const char *dense; /* "bf16" or "q8" */
    struct gen_opts go; /* only its --mesh and --dp */
};

/* Parse "1,4,8" into a list of numbers in [lo, hi]; 0 on a malformed list. */
static int parse_list(const char *s, int64_t lo, int64_t hi, struct list *out) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return 0;
    strcpy(buf, s);
    out->n = 0;
    char *save = NULL;
    for (char *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (out->n >= MAX_LIST || !cli_parse_i64(p, lo, hi, &out->v[out->n])) return 0;
        out->n++;
    }
    return out->n > 0 && s[strlen(s) - 1] != ',';
}

static int64_t list_max(const struct list *l) {
    int64_t m = 0;
    for (int i = 0; i < l->n; i++)
        if (l->v[i] > m) m = l->v[i];
    return m;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

/* The name of the checkpoint in `dir`: the folder's base name, or its parent's
 * for an original/ folder ("gpt-oss-20b" for .../gpt-oss-20b/original/). */
static void model_name(const char *dir, char *out, size_t cap) {
    const char *end = dir + strlen(dir);
    while (end > dir + 1 && end[-1] == '/') end--;
    const char *base = end;
    while (base > dir && base[-1] != '/') base--;
    if (end - base == 8 && !strncmp(base, "original", 8) && base > dir + 1) {
        end = base - 1;
        while (end > dir + 1 && end[-1] == '/') end--;
        base = end;
        while (base > dir && base[-1] != '/') base--;
    }
    size_t n = (size_t)(end - base);
    if (n == 0) { /* "/" */
        base = dir;
        n = strlen(dir);
    }
    if (n >= cap) n = cap - 1;
    memcpy(out, base, n);
    out[n] = 0;
}

/* FNV-1a over the logits of the last call, for quick diffs between runs. */
static uint64_t fnv1a(const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Bytes of the files under `path` (the model's file or folder) this process has
 * resident: the Rss of their mappings in /proc/self/smaps, the pages its forward
 * passes touched (page cache shared with other processes is not counted).  0 when
 * unknown. */
static uint64_t mapped_resident(const char *path) {
    char real[4096], line[8192];
    if (!realpath(path, real)) return 0;
    const size_t n = strlen(real);
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    uint64_t total = 0;
    int ours = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b, off, inode;
        char perms[8], dev[16];
        int at = 0;
        unsigned long long kib;
        if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &a, &b, perms, &off, dev, &inode, &at) >= 6 &&
            at > 0) {
            const char *name = line + at;
            ours = !strncmp(name, real, n) && (name[n] == '\n' || name[n] == '/');
        } else if (ours && sscanf(line, "Rss: %llu kB", &kib) == 1) {
            total += (uint64_t)kib * 1024;
        }
    }
    fclose(f);
    return total;
}

/* The weight bytes this process holds: the resident pages of the model's files and
 * the repacked experts, which took the place of their mapped pages (the same
 * bytes, in memory of its own). */
static uint64_t weights_resident(const gpo_model *m, const char *dir) {
    struct gpo_model_info inf;
    gpo_model_get_info(m, &inf);
    const uint64_t mapped = mapped_resident(dir);
    return mapped ? mapped + inf.bytes_repacked : 0;
}

/* ------------------------------------------------------------------------- */
/* Counting the experts a forward call reads                                 */

/* The trace reports every token's selected experts per layer; the distinct
 * (layer, expert) pairs of one call are the expert weights that call streams. */
struct expert_count {
    int64_t n_layer, n_expert;
    uint8_t *seen; /* [n_layer][n_expert] */
    int64_t distinct;
};

static void expert_count_reset(struct expert_count *ec) {
    memset(ec->seen, 0, (size_t)(ec->n_layer * ec->n_expert));
    ec->distinct = 0;
}

static void on_trace(void *user, enum gpo_trace_point pt, int64_t layer, int64_t token,
                     const void *data, int64_t n) {
    (void)token;
    struct expert_count *ec = user;
    if (pt != GPO_TRACE_EXPERTS || layer < 0 || layer >= ec->n_layer) return;
    const int32_t *ids = data;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= ec->n_expert) continue;
        uint8_t *s = &ec->seen[layer * ec->n_expert + ids[i]];
        if (!*s) {
            *s = 1;
            ec->distinct++;
        }
    }
}

/* ------------------------------------------------------------------------- */
/* One benchmark run                                                         */

struct bench {
    const struct opts *o;
    gpo_model *m;
    const struct gpo_config *c;
    struct gpo_model_info info;
    char dir[4096];
    char name[256]; /* the model's name for the table: its folder's */
    gpo_ctx *ctx;
    float *logits; /* [max batch][n_vocab] */
    /* under mpirun: one greedy candidate per row instead of the row */
    int32_t *cand_k;           /* [max batch], all 1 */
    struct gpo_cand *cands;    /* [max batch][GPO_CAND_MAX] */
    int32_t *cand_n;           /* [max batch] */
    int64_t *cand_nf;          /* [max batch] */
    struct expert_count ec;
    int counting; /* warm-up run: record the experts of every call */
    /* totals of the counting run */
    double bytes, experts, experts_formula;
    int64_t calls;
    /* the forward pass's barrier counters over the timed calls of the timed runs */
    struct gpo_ctx_stats sched;
    struct gen_dist d; /* under mpirun: this rank's shard */
};

/* Add the context's counters since its last reset to b->sched (timed runs only). */
static void sched_collect(struct bench *b) {
    struct gpo_ctx_stats st;
    gpo_ctx_stats(b->ctx, &st);
    if (b->counting) return;
    b->sched.calls += st.calls;
    b->sched.tokens += st.tokens;
    b->sched.barriers += st.barriers;
    b->sched.n_threads = st.n_threads;
    b->sched.wall_s += st.wall_s;
    b->sched.barrier_s += st.barrier_s;
}

/* Weight bytes one forward call of n_tok tokens streams when `distinct` (layer,
 * expert) pairs were selected: every non-expert layer weight once, one embedding
 * row per token, the unembedding only when logits are wanted. */
static double call_bytes(const struct bench *b, int64_t n_tok, int64_t distinct, int with_logits) {
    const struct gpo_model_info *inf = &b->info;
    const struct gpo_config *c = b->c;
    const double per_expert = (double)(inf->bytes_experts / (uint64_t)(c->n_layer * c->n_expert));
    const double emb_row = (double)(inf->bytes_embedding / (uint64_t)c->n_vocab);
    return (double)(inf->bytes_attention + inf->bytes_router + inf->bytes_norms) +
           (with_logits ? (double)inf->bytes_unembedding : 0.0) + (double)n_tok * emb_row +
           (double)distinct * per_expert;
}

static enum gpo_status forward(struct bench *b, const struct gpo_seq_batch *sb, int64_t n_seqs,
                               int64_t n_tok, int with_logits) {
    if (b->counting) expert_count_reset(&b->ec);
    /* A shard sends rank 0 what greedy sampling needs of each row, as generate's
     * engine does, so comm_bytes_per_token is what a decode step really costs. */
    const struct gpo_fwd_cands fc = {b->cand_k, NULL, b->cands, b->cand_n, b->cand_nf};
    enum gpo_status s = gpo_forward_cands(b->ctx, sb, n_seqs, b->logits, b->d.open ? &fc : NULL);
    if (s == GPO_OK && b->counting) {
        const double E = (double)b->c->n_expert, K = (double)b->c->n_expert_used;
        b->bytes += call_bytes(b, n_tok, b->ec.distinct, with_logits);
        b->experts += (double)b->ec.distinct / (double)b->c->n_layer;
        b->experts_formula += E * (1.0 - pow(1.0 - K / E, (double)n_tok));
        b->calls++;
    }
    return s;
}

/* Prefill P tokens of one sequence in chunks of ubatch; returns the seconds taken. */
static enum gpo_status run_pp(struct bench *b, gpo_kv *kv, const int32_t *toks, int64_t P,
                              int64_t ub, double *secs) {
    enum gpo_status s = gpo_kv_rewind(kv, 0);
    if (s != GPO_OK) return s;
    gpo_ctx_stats_reset(b->ctx);
    const double t0 = now_s();
    for (int64_t off = 0; off < P; off += ub) {
        const int64_t n = P - off < ub ? P - off : ub;
        const int last = off + n == P;
        struct gpo_seq_batch sb = {.kv = kv, .tokens = toks + off, .n_tokens = n,
                                   .logits = last ? GPO_LOGITS_LAST : GPO_LOGITS_NONE};
        if ((s = forward(b, &sb, 1, n, last)) != GPO_OK) return s;
    }
    *secs = now_s() - t0;
    sched_collect(b);
    return GPO_OK;
}

/* B sequences: one untimed prefill token each, then N timed decode steps in which
 * every sequence brings one token.  toks is [N + 1][B]. */
static enum gpo_status run_tg(struct bench *b, gpo_kv **kvs, struct gpo_seq_batch *sb, int64_t B,
                              const int32_t *toks, int64_t N, double *secs) {
    enum gpo_status s;
    for (int64_t i = 0; i < B; i++)
        if ((s = gpo_kv_rewind(kvs[i], 0)) != GPO_OK) return s;
    for (int64_t i = 0; i < B; i++)
        sb[i] = (struct gpo_seq_batch){.kv = kvs[i], .tokens = toks + i, .n_tokens = 1,
                                       .logits = GPO_LOGITS_NONE};
    /* The prefill is not part of the test: neither timed nor counted. */
    if ((s = gpo_forward(b->ctx, sb, B, b->logits)) != GPO_OK) return s;
    gpo_ctx_stats_reset(b->ctx);
    const double t0 = now_s();
    for (int64_t step = 1; step <= N; step++) {
        for (int64_t i = 0; i < B; i++) {
            sb[i].tokens = toks + step * B + i;
            sb[i].logits = GPO_LOGITS_LAST;
        }
        if ((s = forward(b, sb, B, B, 1)) != GPO_OK) return s;
    }
    *secs = now_s() - t0;
    sched_collect(b);
    return GPO_OK;
}

struct result {
    char test[32];
    int64_t n_prompt, n_gen, batch, threads, ubatch; /* ubatch: tokens per forward call */
    int reps;
    double secs[64], tok_s[64];
    double tok_s_med, tok_s_min, tok_s_max;
    double bytes_per_token, experts_per_layer, experts_formula;
    const char *bytes_source;
    /* scheduling, per forward call of the timed runs (a step: one ubatch of a
     * prefill, one decode step of the whole batch) */
    double barriers_per_step, barrier_ms_per_step, idle_frac;
    double membw_gbs; /* < 0: not measured */
    uint64_t logits_hash, rss;
    /* this rank's collectives over the timed runs (0 for one process) */
    double comm_s_per_step, comm_bytes_per_token;
    uint64_t resident; /* weight bytes resident in this process after the test */
};

/* Run one test (P > 0: ppP; else tgN with B sequences): a counting warm-up, then
 * the timed repetitions. */
static int run_test(struct bench *b, int64_t P, int64_t N, int64_t B, int64_t threads,
                    double membw, struct result *r) {
    const struct opts *o = b->o;
    const struct gpo_config *c = b->c;
    const int64_t V = c->n_vocab;
    int rc = CLI_EXIT_FAIL;
    enum gpo_status s;
    gpo_kv **kvs = NULL;
    int32_t *toks = NULL;
    struct gpo_seq_batch *sb = NULL;
    const int is_pp = P > 0;
    const int64_t n_seq = is_pp ? 1 : B, len = is_pp ? P : N + 1;
    const int64_t n_toks = is_pp ? P : (N + 1) * B;

    memset(r, 0, sizeof *r);
    snprintf(r->test, sizeof r->test, is_pp ? "pp%lld" : "tg%lld", (long long)(is_pp ? P : N));
    r->n_prompt = is_pp ? P : 0;
    r->n_gen = is_pp ? 0 : N;
    r->batch = n_seq;
    r->threads = threads;
    r->reps = (int)o->reps;
    r->membw_gbs = membw;

    kvs = calloc((size_t)n_seq, sizeof *kvs);
    toks = malloc((size_t)n_toks * sizeof *toks);
    sb = calloc((size_t)n_seq, sizeof *sb);
    if (!kvs || !toks || !sb) {
        rc = cli_error("out of memory for the %s test", r->test);
        goto cleanup;
    }
    for (int64_t i = 0; i < n_seq; i++)
        if ((s = gpo_kv_create_shard(b->m, b->d.open ? &b->d.shard : NULL, len, 0, &kvs[i])) != GPO_OK) {
            rc = cli_status(s, "cannot create the KV cache of sequence %lld", (long long)i);
            goto cleanup;
        }
    /* The same ids in every run, so every run routes to the same experts as the
     * counted warm-up. */
    uint64_t seed = o->seed ^ ((uint64_t)P << 32) ^ ((uint64_t)N << 16) ^ (uint64_t)B;
    for (int64_t i = 0; i < n_toks; i++) toks[i] = (int32_t)(splitmix64(&seed) % (uint64_t)V);

    const int64_t ub = o->ubatch < P ? o->ubatch : P;
    r->ubatch = is_pp ? ub : B;
    b->sched = (struct gpo_ctx_stats){0};
    for (int rep = -1; rep < r->reps; rep++) {
        double secs = 0.0;
        b->counting = rep < 0;
        if (b->counting) {
            if (gpo_dist_rank() == 0) /* under mpirun the ranks run in step: one says it */
                fprintf(stderr, "bench: %s batch %lld, %lld threads: warm-up\n", r->test,
                        (long long)n_seq, (long long)threads);
            b->bytes = b->experts = b->experts_formula = 0.0;
            b->calls = 0;
            gpo_ctx_set_trace(b->ctx, on_trace, &b->ec);
        }
        s = is_pp ? run_pp(b, kvs[0], toks, P, ub, &secs) : run_tg(b, kvs, sb, B, toks, N, &secs);
        gpo_ctx_set_trace(b->ctx, NULL, NULL);
        b->counting = 0;
        if (s != GPO_OK) {
            rc = cli_status(s, "%s forward pass failed", r->test);
            goto cleanup;
        }
        if (rep < 0) gpo_dist_reset_stats(); /* count the timed runs only */
        if (rep >= 0) {
            r->secs[rep] = secs;
            r->tok_s[rep] = secs > 0 ? (double)(is_pp ? P : N * B) / secs : 0.0;
            if (gpo_dist_rank() == 0)
                fprintf(stderr, "bench: %s batch %lld, %lld threads: run %d/%d %.3f s, %.2f tok/s\n",
                        r->test, (long long)n_seq, (long long)threads, rep + 1, r->reps, secs,
                        r->tok_s[rep]);
        }
    }

    double sorted[64];
    memcpy(sorted, r->tok_s, (size_t)r->reps * sizeof *sorted);
    qsort(sorted, (size_t)r->reps, sizeof *sorted, cmp_double);
    r->tok_s_min = sorted[0];
    r->tok_s_max = sorted[r->reps - 1];
    r->tok_s_med = r->reps % 2 ? sorted[r->reps / 2]
                               : 0.5 * (sorted[r->reps / 2 - 1] + sorted[r->reps / 2]);
    const int64_t counted_tokens = is_pp ? P : N * B;
    if (!is_pp && B == 1) {
        r->bytes_per_token = (double)b->info.bytes_per_token;
        r->bytes_source = "model_info";
    } else {
        r->bytes_per_token = b->bytes / (double)counted_tokens;
        r->bytes_source = "measured_experts";
    }
    r->experts_per_layer = b->calls ? b->experts / (double)b->calls : 0.0;
    r->experts_formula = b->calls ? b->experts_formula / (double)b->calls : 0.0;
    /* barrier_ms_per_step: the time one thread waits at barriers in a step, averaged
     * over the threads; idle_frac: the share of the team's time spent so. */
    const struct gpo_ctx_stats *sc = &b->sched;
    if (sc->calls > 0 && sc->n_threads > 0) {
        r->barriers_per_step = (double)sc->barriers / (double)sc->calls;
        r->barrier_ms_per_step = 1e3 * sc->barrier_s / sc->n_threads / (double)sc->calls;
        r->idle_frac = sc->wall_s > 0 ? sc->barrier_s / (sc->n_threads * sc->wall_s) : 0.0;
    }
    struct gpo_dist_stats ds;
    gpo_dist_get_stats(&ds);
    if (sc->calls > 0) {
        r->comm_s_per_step = ds.seconds / (double)sc->calls;
        r->comm_bytes_per_token = (double)ds.bytes_sent / ((double)r->reps * (double)counted_tokens);
    }
    r->logits_hash = b->d.open ? fnv1a(b->cands, (size_t)n_seq * GPO_CAND_MAX * sizeof *b->cands)
                               : fnv1a(b->logits, (size_t)n_seq * (size_t)V * sizeof(float));
    r->rss = peak_rss_bytes();
    r->resident = weights_resident(b->m, b->dir);
    rc = 0;

cleanup:
    if (kvs)
        for (int64_t i = 0; i < n_seq; i++) gpo_kv_free(kvs[i]);
    free(kvs);
    free(toks);
    free(sb);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Output                                                                    */

static const char *path_name(enum gpo_path p) {
    return p == GPO_PATH_FAST ? "fast" : p == GPO_PATH_REF ? "ref" : "exact";
}

static double effective_gbs(const struct result *r) {
    return r->bytes_per_token * r->tok_s_med / 1e9;
}

static void print_table_header(void) {
    printf("| model | size | threads | batch | dense | path | test | t/s | t/s/user "
           "| MB/token | GB/s | membw GB/s | %% bw | idle |\n");
    printf("| ----- | ---: | ------: | ----: | ----- | ---- | ---: | --: | -------: "
           "| -------: | ---: | ---------: | ---: | ---: |\n");
    fflush(stdout);
}

static void print_table_row(const struct bench *b, const struct result *r) {
    const double spread = fmax(r->tok_s_max - r->tok_s_med, r->tok_s_med - r->tok_s_min);
    const double eff = effective_gbs(r);
    char membw[32] = "n/a", frac[32] = "n/a";
    if (r->membw_gbs > 0) {
        snprintf(membw, sizeof membw, "%.2f", r->membw_gbs);
        snprintf(frac, sizeof frac, "%.1f%%", 100.0 * eff / r->membw_gbs);
    }
    const double mib = (double)b->info.bytes_tensors / (1024.0 * 1024.0);
    char size[32];
    if (mib >= 1024.0) snprintf(size, sizeof size, "%.2f GiB", mib / 1024.0);
    else snprintf(size, sizeof size, "%.2f MiB", mib);
    printf("| %s | %s | %lld | %lld | %s | %s | %s | %.2f ± %.2f | %.2f | %.1f | %.2f | %s | %s "
           "| %.1f%% |\n",
           b->name, size, (long long)r->threads,
           (long long)r->batch, b->o->dense, path_name(b->o->path), r->test, r->tok_s_med, spread,
           r->tok_s_med / (double)r->batch, r->bytes_per_token / 1e6, eff, membw, frac,
           100.0 * r->idle_frac);
    fflush(stdout);
}

static void print_table_footer(const struct bench *b) {
    char probe[64] = "not measured: --no-membw";
    if (!b->o->no_membw) snprintf(probe, sizeof probe, "%lld MiB buffer", (long long)b->o->membw_mib);
    printf("\nt/s: median of %lld timed runs after one warm-up, ± the larger distance to the\n"
           "fastest or slowest run.  t/s counts every sequence of the batch; t/s/user = t/s / batch.\n"
           "MB/token: weight bytes read per token; batch 1 generation uses the model's active\n"
           "weights, the other tests the distinct experts each forward call routed to (measured),\n"
           "shared by its tokens.  GB/s = MB/token x t/s; %% bw = GB/s / membw GB/s, the read\n"
           "bandwidth the probe measured with the same threads (%s).\n"
           "idle: the share of the threads' time spent waiting at barriers (JSON: idle_frac,\n"
           "barriers_per_step, barrier_ms_per_step).\n"
           "kernels: %s\n",
           (long long)b->o->reps, probe, gpo_ctx_kernels(b->ctx));
    fflush(stdout);
}

/* The weight bytes rank `rank` should hold resident after a run: its shard's, or
 * every weight, but the embedding, of which a pass reads only the rows of its
 * tokens (a few pages per token seen). */
static uint64_t plan_bytes(const struct bench *b, int rank) {
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_model(b->m, &w);
    if (!b->d.open)
        return gpo_mesh_weights_total(b->c, &w) - w.embedding_row * (uint64_t)b->c->n_vocab;
    struct gpo_mesh_shard s;
    gpo_mesh_shard_of(b->c, &b->d.mesh, &w, rank, &s);
    /* the packed wo is anonymous memory, not in the mappings */
    return s.bytes_total - s.bytes_packed - s.bytes_embedding;
}

/* Every rank's resident weight bytes against its plan, on rank 0's stderr. */
static int report_resident(const struct bench *b) {
    for (int r = 0; r < gpo_dist_size(); r++) {
        uint64_t have = weights_resident(b->m, b->dir);
        enum gpo_status s = gpo_dist_bcast(NULL, &have, sizeof have, r);
        if (s != GPO_OK) return cli_status(s, "cannot collect the resident bytes of rank %d", r);
        const uint64_t plan = plan_bytes(b, r);
        if (gpo_dist_rank() == 0)
            fprintf(stderr, "bench: rank %d: %.3f GiB of weights resident, plan %.3f GiB (%+.1f%%; "
                    "the embedding counts only at the rows of the tokens seen)\n",
                    r, (double)have / 1073741824.0, (double)plan / 1073741824.0,
                    plan ? 100.0 * ((double)have - (double)plan) / (double)plan : 0.0);
    }
    return 0;
}

/* `name`: value, or null where the value was not measured. */
static int add_number_or_null(cJSON *j, const char *name, double value, int present) {
    return present ? cJSON_AddNumberToObject(j, name, value) != NULL
                   : cJSON_AddNullToObject(j, name) != NULL;
}

/* One JSON object on one line, to the --json output (stdout or a file);
 * 0 on failure. */
static int print_json_row(const struct bench *b, const struct result *r, FILE *out) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return 0;
    const double eff = effective_gbs(r);
    struct gpo_model_info inf; /* after gen_dist_open, which repacks a rank's experts */
    gpo_model_get_info(b->m, &inf);
    char hash[24];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)r->logits_hash);
    int ok = cJSON_AddStringToObject(j, "model", b->name) &&
         cJSON_AddStringToObject(j, "model_dir", b->dir) &&
         cJSON_AddNumberToObject(j, "model_bytes", (double)b->info.bytes_tensors) &&
         cJSON_AddNumberToObject(j, "n_params", (double)b->info.n_params) &&
         cJSON_AddNumberToObject(j, "n_params_active", (double)b->info.n_params_active) &&
         cJSON_AddStringToObject(j, "test", r->test) &&
         cJSON_AddNumberToObject(j, "n_prompt", (double)r->n_prompt) &&
         cJSON_AddNumberToObject(j, "n_gen", (double)r->n_gen) &&
         cJSON_AddNumberToObject(j, "batch", (double)r->batch) &&
         cJSON_AddNumberToObject(j, "threads", (double)r->threads) &&
         cJSON_AddNumberToObject(j, "ubatch", (double)r->ubatch) &&
         cJSON_AddStringToObject(j, "dense", b->o->dense) &&
         cJSON_AddStringToObject(j, "experts", inf.type_experts) &&
         cJSON_AddStringToObject(j, "path", path_name(b->o->path)) &&
         cJSON_AddStringToObject(j, "kernels", gpo_ctx_kernels(b->ctx)) &&
         cJSON_AddNumberToObject(j, "reps", r->reps) &&
         cJSON_AddNumberToObject(j, "tok_s", r->tok_s_med) &&
         cJSON_AddNumberToObject(j, "tok_s_user", r->tok_s_med / (double)r->batch) &&
         cJSON_AddNumberToObject(j, "tok_s_min", r->tok_s_min) &&
         cJSON_AddNumberToObject(j, "tok_s_max", r->tok_s_max) &&
         cJSON_AddNumberToObject(j, "weight_bytes_per_token", r->bytes_per_token) &&
         cJSON_AddStringToObject(j, "weight_bytes_source", r->bytes_source) &&
         cJSON_AddNumberToObject(j, "experts_per_layer", r->experts_per_layer) &&
         cJSON_AddNumberToObject(j, "experts_per_layer_formula", r->experts_formula) &&
         cJSON_AddNumberToObject(j, "effective_gbs", eff) &&
         cJSON_AddNumberToObject(j, "barriers_per_step", r->barriers_per_step) &&
         cJSON_AddNumberToObject(j, "barrier_ms_per_step", r->barrier_ms_per_step) &&
         cJSON_AddNumberToObject(j, "idle_frac", r->idle_frac) &&
         add_number_or_null(j, "membw_gbs", r->membw_gbs, r->membw_gbs > 0) &&
         add_number_or_null(j, "bw_fraction", eff / r->membw_gbs, r->membw_gbs > 0) &&
         add_number_or_null(j, "membw_buffer_bytes", (double)b->o->membw_mib * 1048576.0,
                            !b->o->no_membw) &&
         cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)r->rss) &&
         cJSON_AddNumberToObject(j, "ranks", gpo_dist_size()) &&
         cJSON_AddNumberToObject(j, "mesh_tp", b->d.open ? b->d.mesh.tp : 1) &&
         cJSON_AddNumberToObject(j, "mesh_ep", b->d.open ? b->d.mesh.ep : 1) &&
         cJSON_AddNumberToObject(j, "mesh_dp", b->d.open ? b->d.mesh.dp : 1) &&
         cJSON_AddNumberToObject(j, "comm_s_per_step", r->comm_s_per_step) &&
         cJSON_AddNumberToObject(j, "comm_bytes_per_token", r->comm_bytes_per_token) &&
         cJSON_AddNumberToObject(j, "weights_resident_bytes", (double)r->resident) &&
         cJSON_AddNumberToObject(j, "weights_plan_bytes", (double)plan_bytes(b, gpo_dist_rank())) &&
         cJSON_AddStringToObject(j, "logits_hash", hash);
    /* The per-run samples, for spreads other than min/max. */
    const char *names[2] = {"samples_s", "samples_tok_s"};
    const double *vals[2] = {r->secs, r->tok_s};
    for (int i = 0; i < 2 && ok; i++) {
        cJSON *arr = cJSON_CreateDoubleArray(vals[i], r->reps);
        if (!arr || !cJSON_AddItemToObject(j, names[i], arr)) {
            cJSON_Delete(arr);
            ok = 0;
        }
    }
    char *text = ok ? cJSON_PrintUnformatted(j) : NULL;
    if (text && (fprintf(out, "%s\n", text) < 0 || fflush(out) != 0)) {
        cli_error("cannot write %s: %s", out == stdout ? "standard output" : b->o->json_path,
                  strerror(errno));
        ok = 0;
    }
    cJSON_free(text);
    cJSON_Delete(j);
    return ok && text != NULL;
}

/* Print one result as a table row (unless JSON goes to stdout) and a JSON line. */
static int report(const struct bench *b, const struct result *r, FILE *json_out) {
    if (!b->o->json) print_table_row(b, r);
    if (json_out && !print_json_row(b, r, json_out))
        return cli_error("cannot write the result as JSON");
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Memory bandwidth                                                          */

/* Probe every thread count in a child process, so that the probe's buffer does
 * not count in the benchmark's peak RSS.  The child runs before this process has
 * started any OpenMP thread, which forking with libgomp requires.  out[i] < 0
 * where a probe failed. */
static void membw_probe_all(const struct opts *o, double *out) {
    const uint64_t bytes = (uint64_t)o->membw_mib << 20;
    for (int i = 0; i < o->threads.n; i++) out[i] = -1.0;
    int fd[2];
    pid_t pid = -1;
    if (pipe(fd) == 0) {
        pid = fork();
        if (pid < 0) {
            close(fd[0]);
            close(fd[1]);
        }
    }
    if (pid == 0) {
        close(fd[0]);
        for (int i = 0; i < o->threads.n; i++) {
            double g = -1.0;
            enum gpo_status s = gpo_membw_measure((int)o->threads.v[i], bytes, o->membw_seconds, &g);
            if (s != GPO_OK) {
                cli_status(s, "memory bandwidth probe with %lld threads", (long long)o->threads.v[i]);
                g = -1.0;
            }
            if (write(fd[1], &g, sizeof g) != (ssize_t)sizeof g) _exit(1);
        }
        _exit(0);
    }
    if (pid > 0) {
        close(fd[1]);
        for (int i = 0; i < o->threads.n; i++) {
            double g;
            ssize_t n;
            do n = read(fd[0], &g, sizeof g);
            while (n < 0 && errno == EINTR);
            if (n != (ssize_t)sizeof g) break;
            out[i] = g;
        }
        close(fd[0]);
        waitpid(pid, NULL, 0);
        return;
    }
    /* No child process: measure here; the peak RSS then includes the buffer. */
    fprintf(stderr, "bench: cannot fork for the bandwidth probe (%s); measuring in process\n",
            strerror(errno));
    for (int i = 0; i < o->threads.n; i++) {
        enum gpo_status s = gpo_membw_measure((int)o->threads.v[i], bytes, o->membw_seconds, &out[i]);
        if (s != GPO_OK) {
            cli_status(s, "memory bandwidth probe with %lld threads", (long long)o->threads.v[i]);
            out[i] = -1.0;
        }
    }
}

static int membw_only(const struct opts *o, FILE *json_out) {
    const uint64_t bytes = (uint64_t)o->membw_mib << 20;
    if (!o->json) {
        printf("| threads | buffer | read GB/s |\n| ------: | -----: | --------: |\n");
        fflush(stdout);
    }
    for (int i = 0; i < o->threads.n; i++) {
        double g = 0.0;
        fprintf(stderr, "bench: memory bandwidth, %lld threads\n", (long long)o->threads.v[i]);
        enum gpo_status s = gpo_membw_measure((int)o->threads.v[i], bytes, o->membw_seconds, &g);
        if (s != GPO_OK)
            return cli_status(s, "memory bandwidth probe with %lld threads", (long long)o->threads.v[i]);
        if (json_out)
            fprintf(json_out,
                    "{\"test\":\"membw\",\"threads\":%lld,\"membw_buffer_bytes\":%llu,\"membw_gbs\":%.4f,"
                    "\"peak_rss_bytes\":%llu}\n",
                    (long long)o->threads.v[i], (unsigned long long)bytes, g,
                    (unsigned long long)peak_rss_bytes());
        if (!o->json)
            printf("| %lld | %llu MiB | %.2f |\n", (long long)o->threads.v[i],
                   (unsigned long long)o->membw_mib, g);
        fflush(stdout);
        if (json_out) fflush(json_out);
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* The command                                                               */

static int parse_args(int argc, char **argv, struct opts *o, int *done) {
    const char *cmd = "bench";
    const char *dense = "bf16";
    o->dense = dense;
    o->prompts = (struct list){.v = {512}, .n = 1};
    o->gens = (struct list){.v = {128}, .n = 1};
    o->batches = (struct list){.v = {1}, .n = 1};
    o->threads = (struct list){.v = {omp_get_num_procs()}, .n = 1};
    o->reps = 3;
    o->ubatch = 512;
    o->membw_mib = 1024;
    o->membw_seconds = 1.0;
    o->path = GPO_PATH_FAST;
    o->seed = 42;
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t x;
        int took = shard_plan_arg(cmd, &o->go, argc, argv, &i);
        if (took < 0) return CLI_EXIT_USAGE;
        if (took) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            *done = 1;
            return 0;
        } else if (!strcmp(a, "-m") || cli_is(a, "--model")) {
            if (!(o->model_arg = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "-p") || cli_is(a, "--n-prompt")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!parse_list(v, 0, 1 << 24, &o->prompts))
                return cli_usage_error(cmd, "-p needs prompt lengths like 512 or 128,512, not '%s'", v);
        } else if (!strcmp(a, "-n") || cli_is(a, "--n-gen")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!parse_list(v, 0, 1 << 24, &o->gens))
                return cli_usage_error(cmd, "-n needs token counts like 128 or 32,128, not '%s'", v);
        } else if (!strcmp(a, "-t") || cli_is(a, "--threads")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!parse_list(v, 1, 4096, &o->threads))
                return cli_usage_error(cmd, "-t needs thread counts like 2 or 1,2, not '%s'", v);
        } else if (cli_is(a, "--batch")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!parse_list(v, 1, MAX_BATCH, &o->batches))
                return cli_usage_error(cmd, "--batch needs sequence counts from 1 to %d like 1,4,8, not '%s'",
                                       MAX_BATCH, v);
        } else if (cli_is(a, "--ubatch")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 1 << 16, &o->ubatch))
                return cli_usage_error(cmd, "--ubatch needs a number from 1 to 65536, not '%s'", v);
        } else if (!strcmp(a, "-r") || cli_is(a, "--repetitions")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 64, &o->reps))
                return cli_usage_error(cmd, "-r needs a number from 1 to 64, not '%s'", v);
        } else if (cli_is(a, "--dense")) {
            if (!(dense = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (strcmp(dense, "bf16") && strcmp(dense, "q8"))
                return cli_usage_error(cmd, "--dense must be bf16 or q8, not '%s'", dense);
            o->dense = dense;
        } else if (!strcmp(a, "--fast")) {
            o->path = GPO_PATH_FAST;
        } else if (!strcmp(a, "--exact")) {
            o->path = GPO_PATH_EXACT;
        } else if (!strcmp(a, "--ref")) {
            o->path = GPO_PATH_REF;
        } else if (cli_is(a, "--json")) {
            /* The file is optional: bench takes no operands, so a following
             * argument that is not an option (or is "-") names it. */
            if (a[6] == '=') o->json_path = a + 7;
            else if (i + 1 < argc && (argv[i + 1][0] != '-' || !strcmp(argv[i + 1], "-")))
                o->json_path = argv[++i];
            else o->json_path = "-";
        } else if (cli_is(a, "--json-out")) {
            if (!(o->json_path = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--membw")) {
            o->membw_only = 1;
        } else if (!strcmp(a, "--no-membw")) {
            o->no_membw = 1;
        } else if (cli_is(a, "--membw-mib")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 1, 1 << 20, &o->membw_mib))
                return cli_usage_error(cmd, "--membw-mib needs MiB from 1 to 1048576, not '%s'", v);
        } else if (cli_is(a, "--membw-seconds")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_f64(v, 0, 3600, &o->membw_seconds))
                return cli_usage_error(cmd, "--membw-seconds needs seconds from 0 to 3600, not '%s'", v);
        } else if (cli_is(a, "--seed")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return CLI_EXIT_USAGE;
            if (!cli_parse_i64(v, 0, INT64_MAX, &x))
                return cli_usage_error(cmd, "--seed needs a non-negative number, not '%s'", v);
            o->seed = (uint64_t)x;
        } else {
            return cli_usage_error(cmd, "unknown option '%s'", a);
        }
    }
    o->json = o->json_path && !strcmp(o->json_path, "-");
    const int cores = omp_get_num_procs();
    for (int i = 0; i < o->threads.n; i++)
        if (o->threads.v[i] > cores) {
            fprintf(stderr, "gptoss: warning: --threads %lld is more than the %d cores; threads that "
                            "share a core only slow each other down\n",
                    (long long)o->threads.v[i], cores);
            break;
        }
    if (o->membw_only && o->no_membw)
        return cli_usage_error(cmd, "--membw and --no-membw contradict each other");
    if (!o->membw_only && list_max(&o->prompts) == 0 && list_max(&o->gens) == 0)
        return cli_usage_error(cmd, "nothing to run: -p and -n are both 0");
    return 0;
}

int cmd_bench(int argc, char **argv) {
    struct opts o = {0};
    int done = 0;
    int rc = parse_args(argc, argv, &o, &done);
    if (rc != 0 || done) return rc;
    /* Opened first, so an output that cannot be written fails before any work. */
    FILE *json_out = NULL;
    /* Under mpirun rank 0 reports; the others only run their shards. */
    const int reporter = gpo_dist_rank() == 0;
    if (!reporter && !freopen("/dev/null", "w", stdout))
        return cli_error("cannot silence rank %d's output", gpo_dist_rank());
    if (reporter && o.json_path && !(json_out = cli_open_out(o.json_path, "--json", 0)))
        return CLI_EXIT_FAIL;
    if (o.membw_only) {
        rc = membw_only(&o, json_out);
        int crc = cli_close_out(json_out, o.json_path);
        return rc ? rc : crc;
    }

    struct bench b = {.o = &o};
    double membw[MAX_LIST];
    enum gpo_status s;
    rc = CLI_EXIT_FAIL;

    if ((s = gpo_model_resolve_dir(o.model_arg, b.dir, sizeof b.dir)) != GPO_OK) {
        rc = cli_status(s, "cannot find the model");
        goto cleanup;
    }

    /* The probe runs first, in a child process that must fork before any OpenMP
     * thread exists (see membw_probe_all). */
    for (int i = 0; i < o.threads.n; i++) membw[i] = -1.0;
    if (!o.no_membw && gpo_dist_size() > 1) {
        /* The probe forks, which MPI does not allow, and ranks would share the bus. */
        fprintf(stderr, "bench: no memory bandwidth probe under mpirun\n");
    } else if (!o.no_membw) {
        fprintf(stderr, "bench: memory bandwidth probe (%lld MiB)\n", (long long)o.membw_mib);
        membw_probe_all(&o, membw);
        for (int i = 0; i < o.threads.n; i++)
            if (membw[i] > 0)
                fprintf(stderr, "bench: memory read bandwidth with %lld threads: %.2f GB/s\n",
                        (long long)o.threads.v[i], membw[i]);
    }

    model_name(b.dir, b.name, sizeof b.name);
    fprintf(stderr, "bench: loading %s\n", b.dir);
    struct gpo_load_opts lo = gen_load_opts(&o.go);
    lo.dense_q8 = !strcmp(o.dense, "q8");
    if ((s = gpo_model_load(b.dir, &lo, &b.m)) != GPO_OK) {
        rc = cli_status(s, "cannot load the model from %s", b.dir);
        goto cleanup;
    }
    b.c = gpo_model_config(b.m);
    gpo_model_get_info(b.m, &b.info);
    if ((rc = gen_dist_open(&b.d, &o.go, b.m)) != 0) goto cleanup;
    rc = CLI_EXIT_FAIL;
    shard_plan_print(&b.d, b.m);
    const int64_t max_p = list_max(&o.prompts), max_n = list_max(&o.gens),
                  max_b = max_n > 0 ? list_max(&o.batches) : 1;
    if (max_p > b.c->max_position || max_n + 1 > b.c->max_position) {
        rc = cli_error("a test needs %lld positions but the model supports %lld",
                       (long long)(max_p > max_n + 1 ? max_p : max_n + 1), (long long)b.c->max_position);
        goto cleanup;
    }
    b.ec.n_layer = b.c->n_layer;
    b.ec.n_expert = b.c->n_expert;
    b.ec.seen = calloc((size_t)(b.c->n_layer * b.c->n_expert), 1);
    b.logits = malloc((size_t)max_b * (size_t)b.c->n_vocab * sizeof(float));
    b.cand_k = malloc((size_t)max_b * sizeof *b.cand_k);
    b.cands = calloc((size_t)max_b * GPO_CAND_MAX, sizeof *b.cands); /* zeros hash alike */
    b.cand_n = calloc((size_t)max_b, sizeof *b.cand_n);
    b.cand_nf = calloc((size_t)max_b, sizeof *b.cand_nf);
    if (!b.ec.seen || !b.logits || !b.cand_k || !b.cands || !b.cand_n || !b.cand_nf) {
        rc = cli_error("out of memory for %lld rows of logits", (long long)max_b);
        goto cleanup;
    }
    for (int64_t i = 0; i < max_b; i++) b.cand_k[i] = 1;

    const int64_t max_ub = o.ubatch < max_p ? o.ubatch : max_p;
    int header_done = 0;
    for (int ti = 0; ti < o.threads.n; ti++) {
        const int64_t threads = o.threads.v[ti];
        struct gpo_ctx_opts co = {.max_tokens = max_ub > max_b ? max_ub : max_b,
                                  .max_seqs = max_b, .n_threads = (int)threads, .path = o.path,
                                  .shard = b.d.open ? &b.d.shard : NULL,
                                  .groups = b.d.open ? &b.d.groups : NULL};
        gpo_ctx_free(b.ctx);
        b.ctx = NULL;
        if ((s = gpo_ctx_create(b.m, &co, &b.ctx)) != GPO_OK) {
            rc = cli_status(s, "cannot create a context for %lld threads", (long long)threads);
            goto cleanup;
        }
        if (!o.json && !header_done) {
            print_table_header();
            header_done = 1;
        }
        struct result r;
        for (int pi = 0; pi < o.prompts.n; pi++) {
            if (o.prompts.v[pi] == 0) continue;
            if ((rc = run_test(&b, o.prompts.v[pi], 0, 1, threads, membw[ti], &r)) != 0) goto cleanup;
            if ((rc = report(&b, &r, json_out)) != 0) goto cleanup;
        }
        for (int ni = 0; ni < o.gens.n; ni++) {
            if (o.gens.v[ni] == 0) continue;
            for (int bi = 0; bi < o.batches.n; bi++) {
                if ((rc = run_test(&b, 0, o.gens.v[ni], o.batches.v[bi], threads, membw[ti], &r)) != 0)
                    goto cleanup;
                if ((rc = report(&b, &r, json_out)) != 0) goto cleanup;
            }
        }
    }
    if (!o.json) print_table_footer(&b);
    if ((rc = report_resident(&b)) != 0) goto cleanup;

cleanup:
    if (json_out && cli_close_out(json_out, o.json_path) != 0 && rc == 0) rc = CLI_EXIT_FAIL;
    free(b.ec.seen);
    free(b.logits);
    free(b.cand_k);
    free(b.cands);
    free(b.cand_n);
    free(b.cand_nf);
    gpo_ctx_free(b.ctx);
    gen_dist_close(&b.d);
    gpo_model_free(b.m);
    return rc;
}
