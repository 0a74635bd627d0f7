/* gen_common.c - options and set-up shared by `generate` and `chat`. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "gen_common.h"
#include "util.h"

const char gen_opts_help[] =
    "  -m, --model DIR         checkpoint folder (default: $GPT_DIR, then $HF_MODEL)\n"
    "  --tokenizer FILE        tokenizer.json (default: the model folder's, then\n"
    "                          $GPTOSS_TOKENIZER, then the copy 'make deps' installs)\n"
    "  -n, --max-tokens N      tokens to generate at most (default 512; also --n-predict)\n"
    "  --temperature T         0 = greedy (default 1.0; also --temp)\n"
    "  --top-p P               nucleus sampling (default 1.0 = off)\n"
    "  --top-k K               keep the K most likely tokens (default 0 = off)\n"
    "  --min-p P               drop tokens below P x the top probability (default 0)\n"
    "  --repeat-penalty R      HF-style repetition penalty (default 1.0 = off)\n"
    "  --presence-penalty P    OpenAI presence penalty (default 0)\n"
    "  --frequency-penalty F   OpenAI frequency penalty (default 0)\n"
    "  -s, --seed S            random seed (default: a new random one each run)\n"
    "  -r, --stop STR          stop when the answer contains STR (repeatable; also\n"
    "                          --reverse-prompt)\n"
    "  --reasoning EFFORT      low, medium or high, any case (default medium; also\n"
    "                          --reasoning-effort)\n"
    "  --developer TEXT        developer instructions (an OpenAI-style system prompt;\n"
    "                          also --system, -sys, --system-prompt)\n"
    "  --date YYYY-MM-DD|none  current date in the system message (default: today)\n"
    "  --show-reasoning        also print the analysis channel\n"
    "  --raw                   print the raw harmony text of the output\n"
    "  -c, --max-seq-len N     KV cache length (default 4096, at most the model's\n"
    "                          context; also --ctx-size)\n"
    "  --ubatch N              prompt tokens per forward step (default 512)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "  --dense bf16|q8         dense weights as stored (default) or requantised to\n"
    "                          8-bit blocks at load (a third fewer bytes per token)\n"
    "  --mlock                 lock the weights in memory\n"
    "  --prefetch              read every weight page at load (with progress)\n"
    "  --no-repack             read a GGUF model's experts and the dense matrices in\n"
    "                          place, instead of repacking or copying them at load\n"
    "                          (faster to start, slower to run)\n"
    "  --exact                 exact fp32 path instead of the fast path\n"
    "  --ref                   plain scalar reference kernels (slow)\n"
    "  -v, --verbose           print the seed and progress messages\n"
    "  --mesh TPxEP            under mpirun: tensor- times expert-parallel ranks per\n"
    "                          replica (default: the largest the ranks and model allow)\n"
    "  --dp D                  under mpirun: model replicas, each answering its own prompts\n"
    "                          (default: the ranks the mesh leaves)\n";

/* A seed that differs from run to run: the kernel's random bytes, else the
 * clock and the process id mixed. */
static uint64_t random_seed(void) {
    uint64_t x = 0;
    /* Kept below 2^53 so that it is exact as a JSON number everywhere and --seed
     * can give it back. */
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) == (ssize_t)sizeof x) return x >> 11;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    x = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    /* splitmix64's finaliser spreads the few changing bits over the word. */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (x ^ (x >> 31)) >> 11;
}

void gen_opts_default(struct gen_opts *o) {
    memset(o, 0, sizeof *o);
    gpo_sampler_params_default(&o->sp);
    o->sp.seed = random_seed();
    o->eo.path = GPO_PATH_FAST;
    o->eo.max_seq_len = 4096;
    o->eo.ubatch = 512;
    o->max_tokens = 512;
    o->reasoning = GPO_REASONING_MEDIUM;
}

int gen_date_valid(const char *s) {
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d;
    char tail;
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-') return 0;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9')) return 0;
    if (sscanf(s, "%4d-%2d-%2d%c", &y, &mo, &d, &tail) != 3 || mo < 1 || mo > 12 || d < 1) return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d <= days[mo - 1] + (mo == 2 && leap);
}

int gen_opts_parse(const char *cmd, struct gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    int64_t n;
    double d;
#define VALUE()                                                                                \
    do {                                                                                       \
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;                                   \
    } while (0)
#define NUM(lo, hi)                                                                            \
    do {                                                                                       \
        VALUE();                                                                               \
        if (!cli_parse_f64(v, lo, hi, &d)) {                                                   \
            cli_usage_error(cmd, "%s needs a number in [%g, %g], not '%s'", a, (double)(lo), (double)(hi), v); \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)
#define INT(lo, hi)                                                                            \
    do {                                                                                       \
        VALUE();                                                                               \
        if (!cli_parse_i64(v, lo, hi, &n)) {                                                   \
            cli_usage_error(cmd, "%s needs a whole number in [%lld, %lld], not '%s'", a,        \
                            (long long)(lo), (long long)(hi), v);                              \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)
    if (!strcmp(a, "-m") || cli_is(a, "--model")) {
        VALUE();
        o->model_arg = v;
    } else if (cli_is(a, "--tokenizer")) {
        VALUE();
        o->tokenizer_arg = v;
    } else if (cli_is(a, "--max-tokens") || !strcmp(a, "-n") || cli_is(a, "--n-predict")) {
        INT(1, (int64_t)1 << 30);
        o->max_tokens = n;
    } else if (cli_is(a, "--temperature") || cli_is(a, "--temp")) {
        NUM(0, 100);
        o->sp.temperature = (float)d;
    } else if (cli_is(a, "--top-p")) {
        NUM(0, 1);
        o->sp.top_p = (float)d;
    } else if (cli_is(a, "--top-k")) {
        INT(0, 1 << 24);
        o->sp.top_k = (int32_t)n;
    } else if (cli_is(a, "--min-p")) {
        NUM(0, 1);
        o->sp.min_p = (float)d;
    } else if (cli_is(a, "--repeat-penalty")) {
        NUM(0.01, 100);
        o->sp.repetition_penalty = (float)d;
    } else if (cli_is(a, "--presence-penalty")) {
        NUM(-2, 2);
        o->sp.presence_penalty = (float)d;
    } else if (cli_is(a, "--frequency-penalty")) {
        NUM(-2, 2);
        o->sp.frequency_penalty = (float)d;
    } else if (cli_is(a, "--seed") || !strcmp(a, "-s")) {
        INT(0, INT64_MAX);
        o->sp.seed = (uint64_t)n;
        o->seed_given = 1;
    } else if (cli_is(a, "--stop") || !strcmp(a, "-r") || cli_is(a, "--reverse-prompt")) {
        VALUE();
        if (o->n_stops >= sizeof o->stops / sizeof *o->stops) {
            cli_usage_error(cmd, "at most %zu --stop strings", sizeof o->stops / sizeof *o->stops);
            return -1;
        }
        o->stops[o->n_stops++] = v;
    } else if (cli_is(a, "--reasoning") || cli_is(a, "--reasoning-effort")) {
        VALUE();
        char low[16];
        size_t k = 0;
        for (; v[k] && k + 1 < sizeof low; k++) low[k] = (char)tolower((unsigned char)v[k]);
        low[k] = 0;
        int r = v[k] ? -1 : gpo_reasoning_parse(low);
        if (r < 0) {
            cli_usage_error(cmd, "--reasoning must be low, medium or high, not '%s'", v);
            return -1;
        }
        o->reasoning = (enum gpo_reasoning)r;
    } else if (cli_is(a, "--developer") || cli_is(a, "--system") || !strcmp(a, "-sys") ||
               cli_is(a, "--system-prompt")) {
        VALUE();
        o->developer = v;
    } else if (cli_is(a, "--date")) {
        VALUE();
        if (!strcmp(v, "none")) {
            o->date = "";
        } else {
            if (!gen_date_valid(v)) {
                cli_usage_error(cmd, "--date must be a real date as YYYY-MM-DD, or none, not '%s'", v);
                return -1;
            }
            o->date = v;
        }
    } else if (!strcmp(a, "--show-reasoning")) {
        o->show_reasoning = 1;
    } else if (!strcmp(a, "--raw")) {
        o->raw = 1;
    } else if (cli_is(a, "--max-seq-len") || cli_is(a, "--ctx-size") || !strcmp(a, "-c")) {
        INT(2, (int64_t)1 << 30);
        o->eo.max_seq_len = n;
    } else if (cli_is(a, "--ubatch")) {
        INT(1, 1 << 16);
        o->eo.ubatch = n;
    } else if (!strcmp(a, "-t") || cli_is(a, "--threads")) {
        INT(1, 4096);
        o->eo.n_threads = (int)n;
    } else if (cli_is(a, "--dense")) {
        VALUE();
        if (strcmp(v, "bf16") && strcmp(v, "q8")) {
            cli_usage_error(cmd, "--dense must be bf16 or q8, not '%s'", v);
            return -1;
        }
        o->load.dense_q8 = !strcmp(v, "q8");
    } else if (!strcmp(a, "--mlock")) {
        o->load.mlock = 1;
    } else if (!strcmp(a, "--prefetch")) {
        o->load.prefetch = 1;
    } else if (!strcmp(a, "--no-repack")) {
        o->load.no_repack = 1;
    } else if (!strcmp(a, "--exact")) {
        o->eo.path = GPO_PATH_EXACT;
    } else if (!strcmp(a, "--fast")) {
        o->eo.path = GPO_PATH_FAST;
    } else if (!strcmp(a, "--ref")) {
        o->eo.path = GPO_PATH_REF;
    } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
        o->verbose = 1;
    } else if (cli_is(a, "--mesh")) {
        VALUE();
        if (gpo_mesh_parse(v, &o->mesh) != GPO_OK) {
            cli_usage_error(cmd, "--%s", gpo_last_error());
            return -1;
        }
    } else if (cli_is(a, "--dp")) {
        INT(1, GPO_MESH_MAX_RANKS);
        o->dp = n;
    } else {
        return 0;
    }
    return 1;
#undef VALUE
#undef NUM
#undef INT
}

int gen_env_open(struct gen_env *env, const struct gen_opts *o) {
    char tpath[4096];
    enum gpo_status s;
    memset(env, 0, sizeof *env);
    if (o->verbose) gpo_set_log_level(GPO_LOG_INFO);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && o->eo.n_threads > cores)
        fprintf(stderr, "gptoss: warning: --threads %d is more than the %ld cores; threads that "
                "share a core only slow each other down\n", o->eo.n_threads, cores);
    double t0 = gpo_now();
    if ((s = gpo_model_resolve_dir(o->model_arg, env->dir, sizeof env->dir)) != GPO_OK)
        return cli_status(s, "cannot find the model");
    struct gpo_load_opts lo = gen_load_opts(o);
    if ((s = gpo_model_load(env->dir, &lo, &env->m)) != GPO_OK)
        return cli_status(s, "cannot load the model from %s", env->dir);
    /* A GGUF model may carry its tokenizer; a tokenizer.json beside it comes first. */
    int own = strcmp(gpo_model_layout(env->m), "gguf") == 0
                  ? cli_model_tokenizer(env->dir, o->tokenizer_arg, &env->tok) : 0;
    if (own < 0) {
        gen_env_close(env);
        return 1;
    }
    if (!own && (s = gpo_tokenizer_find(o->tokenizer_arg, gpo_model_dir(env->m), tpath, sizeof tpath)) != GPO_OK) {
        gen_env_close(env);
        return cli_status(s, "cannot find the tokenizer");
    }
    if (!own && (s = gpo_tokenizer_load(tpath, &env->tok)) != GPO_OK) {
        gen_env_close(env);
        return cli_status(s, "cannot load the tokenizer %s", tpath);
    }
    env->load_seconds = gpo_now() - t0;
    int64_t limit = gpo_model_config(env->m)->max_position;
    if (o->eo.max_seq_len > limit)
        fprintf(stderr, "gptoss: warning: --max-seq-len %lld is above the model's context of %lld "
                "positions; capped to %lld\n", (long long)o->eo.max_seq_len, (long long)limit,
                (long long)limit);
    return 0;
}

void gen_env_close(struct gen_env *env) {
    gpo_tokenizer_free(env->tok);
    gpo_model_free(env->m);
    env->tok = NULL;
    env->m = NULL;
}

const char *gen_date(const struct gen_opts *o, char buf[11]) {
    if (o->date && !o->date[0]) return NULL;
    if (o->date) return o->date;
    gpo_harmony_today(buf);
    return buf;
}

uint64_t gen_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024;
}

/* The mesh for n ranks: --mesh with --dp or the replicas it leaves, else the
 * default mesh of n / D ranks repeated D times. */
static enum gpo_status choose_mesh(const struct gen_opts *o, const struct gpo_config *c, int n,
                                   struct gpo_mesh *mesh) {
    const int dp = o->dp ? (int)o->dp : 0;
    if (o->mesh.tp) {
        *mesh = o->mesh;
        const int group = mesh->tp * mesh->ep;
        mesh->dp = dp ? dp : (n % group == 0 ? n / group : 1);
        return gpo_mesh_validate(c, mesh, n);
    }
    if (dp && n % dp != 0)
        return gpo_fail(GPO_ERR_ARG, "--dp %d does not divide the %d ranks", dp, n);
    GPO_TRY(gpo_mesh_default(c, dp ? n / dp : n, mesh));
    if (dp) mesh->dp *= dp;
    return gpo_mesh_validate(c, mesh, n);
}

struct gpo_load_opts gen_load_opts(const struct gen_opts *o) {
    struct gpo_load_opts lo = o->load;
    if (gpo_dist_size() > 1) lo.no_repack = 1; /* gen_dist_open repacks the rank's experts */
    return lo;
}

int gen_dist_open(struct gen_dist *d, struct gen_opts *o, gpo_model *m) {
    const struct gpo_config *c = gpo_model_config(m);
    enum gpo_status s;
    memset(d, 0, sizeof *d);
    d->leader = 1;
    const int n = gpo_dist_size();
    if (n < 2) {
        if (o->mesh.tp || o->dp > 1)
            fprintf(stderr, "gptoss: warning: --mesh and --dp take effect under mpirun only; "
                    "this process runs the whole model\n");
        return 0;
    }
    if ((s = choose_mesh(o, c, n, &d->mesh)) != GPO_OK)
        return cli_status(s, "cannot use this mesh");
    gpo_mesh_weights_of_model(m, &d->w);
    gpo_mesh_shard_of(c, &d->mesh, &d->w, gpo_dist_rank(), &d->shard);
    if ((s = gpo_mesh_groups_open(&d->mesh, &d->groups)) != GPO_OK)
        return cli_status(s, "cannot form the rank groups");
    d->open = 1;
    d->leader = d->shard.model_rank == 0;
    /* A rank runs only its experts: only those are repacked (and resident). */
    if (!o->load.no_repack &&
        (s = gpo_model_repack_experts(m, d->shard.expert0, d->shard.expert1)) != GPO_OK)
        return cli_status(s, "cannot repack the experts of rank %d", gpo_dist_rank());
    /* Users are seeded from rank 0's seed in every replica. */
    if ((s = gpo_dist_bcast(NULL, &o->sp.seed, sizeof o->sp.seed, 0)) != GPO_OK)
        return cli_status(s, "cannot share the seed");
    /* Each rank runs its share of every pass; the plans keep them in step. */
    o->eo.shard = &d->shard;
    o->eo.groups = &d->groups;
    /* The TP ranks split the KV heads evenly, so every rank packs as many wo bytes. */
    if (gpo_dist_rank() == 0)
        fprintf(stderr, "gptoss: %d ranks, mesh %dx%d (TP x EP), DP %d, packed wo: %.1f MiB per rank\n",
                n, d->mesh.tp, d->mesh.ep, d->mesh.dp, (double)d->shard.bytes_packed / 1048576.0);
    return 0;
}

char *gen_read_file(const char *path, size_t *len_out) {
    size_t len = 0;
    char *txt = gpo_dist_rank() == 0 ? cli_read_file(path, &len) : NULL;
    if (gpo_dist_size() > 1) {
        /* Rank 0's text (-1: it could not read, and said why).  A rank that fails
         * returns NULL like rank 0, and its error ends the job. */
        int64_t n = txt ? (int64_t)len : -1;
        void *buf = txt;
        enum gpo_status s = gpo_dist_bcast_counted(NULL, &buf, &n, 1, 0);
        txt = buf;
        if (s != GPO_OK) cli_status(s, "cannot share %s with every rank", path);
        if (s != GPO_OK || n < 0) {
            free(txt);
            return NULL;
        }
        len = (size_t)n;
    }
    if (txt && len_out) *len_out = len;
    return txt;
}

void gen_dist_close(struct gen_dist *d) {
    if (d->open) gpo_mesh_groups_close(&d->groups);
    d->open = 0;
}

int gen_follow(gpo_engine *eng) {
    enum gpo_status s = gpo_engine_follow(eng);
    return s == GPO_OK ? 0 : cli_status(s, "rank %d stopped following the leader", gpo_dist_rank());
}

int gen_dist_one_replica(const char *cmd, const struct gen_dist *d) {
    if (d->mesh.dp <= 1) return 0;
    if (gpo_dist_rank() == 0)
        fprintf(stderr, "gptoss %s: one model replica serves here, but the mesh has DP %d; run "
                "with --dp 1 (a mesh of all %d ranks) or use generate for data parallel\n",
                cmd, d->mesh.dp, gpo_dist_size());
    return CLI_EXIT_USAGE;
}
