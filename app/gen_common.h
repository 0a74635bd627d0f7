/* gen_common.h - what `generate` and `chat` share: loading model + tokenizer,
 * sampling and engine options from the command line, and the memory report. */
#ifndef GPO_GEN_COMMON_H
#define GPO_GEN_COMMON_H

#include "gpo.h"

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

/* Is "YYYY-MM-DD" a real calendar date (leap years included)? */
int gen_date_valid(const char *s);
/* The date for the system message per --date (today when unset), NULL for none. */
const char *gen_date(const struct gen_opts *o, char buf[11]);

/* Peak resident set size of this process in bytes. */
uint64_t gen_peak_rss(void);

#endif
