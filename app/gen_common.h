/* gen_common.h - what `generate` and `chat` share: loading model + tokenizer,
 * sampling and engine options from the command line, and the memory report. */
#ifndef GPO_GEN_COMMON_H
#define GPO_GEN_COMMON_H

#include "gpo.h"
#include "mesh.h"

struct gen_opts {
    const char *model_arg, *tokenizer_arg;
    struct gpo_sampler_params sp;
    struct gpo_engine_opts eo;
    int64_t max_tokens;
    const char *developer;
    enum gpo_reasoning reasoning;
    const char *date; /* NULL = today, "" = none */
    const char *stops[16];
    size_t n_stops;
    int show_reasoning, raw;
    int seed_given; /* --seed was given; otherwise sp.seed was drawn at random */
    int verbose;    /* -v: the seed and the library's progress messages */
    struct gpo_load_opts load;
    struct gpo_mesh mesh; /* --mesh TPxEP (tp 0: not given) */
    int64_t dp;           /* --dp D (0: not given) */
};

/* Defaults, with a seed drawn at random (from getrandom, else the clock). */
void gen_opts_default(struct gen_opts *o);
/* Try to consume argv[*i] as a shared option.  Returns 1 if consumed, 0 if not an
 * option of ours, -1 after printing a usage error. */
int gen_opts_parse(const char *cmd, struct gen_opts *o, int argc, char **argv, int *i);
/* The help text of the shared options. */
extern const char gen_opts_help[];

struct gen_env {
    char dir[4096];
    gpo_model *m;
    gpo_tokenizer *tok;
    double load_seconds;
};
/* Resolve, load model and tokenizer; prints the error and returns non-zero on failure.
 * Warns when --threads is above the core count or --max-seq-len above the
 * model's context (the engine then uses the model's). */
int gen_env_open(struct gen_env *env, const struct gen_opts *o);
void gen_env_close(struct gen_env *env);

/* This rank's part in a run under mpirun: the mesh, its shard of the model and
 * its rank groups.  A process alone is the leader of a one-rank mesh. */
struct gen_dist {
    struct gpo_mesh mesh;
    struct gpo_mesh_weights w;
    struct gpo_mesh_shard shard;
    struct gpo_mesh_groups groups;
    int open;   /* the groups are open (several ranks) */
    int leader; /* rank 0 of its replica's model group: schedules, samples, prints */
};
/* With several ranks: the mesh from --mesh/--dp (else gpo_mesh_default), this
 * rank's shard and groups, set in o->eo; every rank takes rank 0's seed.
 * Collective over every rank.  Prints the error and returns non-zero. */
int gen_dist_open(struct gen_dist *d, struct gen_opts *o, gpo_model *m);
/* The load options of o: under mpirun the experts are not repacked at load, since
 * gen_dist_open repacks only the rank's own (unless --no-repack). */
struct gpo_load_opts gen_load_opts(const struct gen_opts *o);
void gen_dist_close(struct gen_dist *d);
/* A follower's run: the leader's plans until its end (gpo_engine_follow).
 * Prints the error and returns non-zero, which ends the job (main.c). */
int gen_follow(gpo_engine *eng);
/* The bytes of a file the command line names ("-": standard input), NUL-terminated,
 * on every rank: under mpirun only rank 0 has the job's standard input (and maybe
 * the only copy of the file), so rank 0 reads and broadcasts.  Collective over
 * every rank; NULL after printing the error (on rank 0 when it cannot read). */
char *gen_read_file(const char *path, size_t *len_out);
/* Refuse --dp above 1 for a command that serves one replica. */
int gen_dist_one_replica(const char *cmd, const struct gen_dist *d);

/* Is "YYYY-MM-DD" a real calendar date (leap years included)? */
int gen_date_valid(const char *s);
/* The date for the system message per --date (today when unset), NULL for none. */
const char *gen_date(const struct gen_opts *o, char buf[11]);

/* Peak resident set size of this process in bytes. */
uint64_t gen_peak_rss(void);

#endif
