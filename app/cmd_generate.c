/* cmd_generate.c - `gptoss generate`: answers for one or more users decoded
 * together, then the performance report (TTFT, decode speed, throughput, memory,
 * effective weight bandwidth). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#include "cli.h"
#include "gen_common.h"
#include "gpo_bench.h"
#include "prompts.h"
#include "util.h"

static void usage(void) {
    printf("usage: gptoss generate [-m DIR] [-p TEXT]... [-f FILE] [--prompts FILE.json] [options]\n"
           "\n"
           "Answers every prompt; all users decode together in one batch per step.\n"
           "\n"
           "  -p, --prompt TEXT       a user prompt (repeatable)\n"
           "  -f, --file FILE         a user prompt read from FILE ('-' = standard input)\n"
           "  --prompts FILE.json     prompts as [{\"prompt\": \"...\"}, ...]\n"
           "  --batch N               users decoded together: with more prompts than N they\n"
           "                          run in waves of N; with fewer, prompts are repeated\n"
           "                          to fill N users\n"
           "  --warmup                run one untimed prefill and decode step first\n"
           "  --json FILE             write texts, tokens, finish reasons, the seed and the\n"
           "                          metrics as JSON; '-' = standard output, and the\n"
           "                          human-readable text then goes to standard error\n"
           "  --no-membw              skip the memory-bandwidth probe after the run\n"
           "  -h, --help              this help\n"
           "\n"
           "--max-tokens counts per user, and user i samples with seed S + i.  Ctrl-C stops\n"
           "the run: what was generated and the report are printed, and the exit status\n"
           "is 130.\n"
           "\n"
           "%s",
           gen_opts_help);
}

static volatile sig_atomic_t g_abort;
static void on_sigint(int sig) {
    (void)sig;
    if (g_abort) _exit(CLI_EXIT_INTERRUPTED);
    g_abort = 1;
}

struct stream_state {
    FILE *out;
    const struct gpo_gen_user *u;
    int show_reasoning, raw;
    enum gpo_hchannel last;
    size_t printed; /* bytes of the final text written */
};

/* Write the user's final text up to n, after a "[final]" header when reasoning
 * was shown before it. */
static void stream_final(struct stream_state *ss, size_t n) {
    if (n <= ss->printed) return;
    if (ss->last == GPO_CH_ANALYSIS) fputs("\n[final] ", ss->out);
    ss->last = GPO_CH_FINAL;
    fwrite(ss->u->final_text.s + ss->printed, 1, n - ss->printed, ss->out);
    ss->printed = n;
}

/* Stream one user's output as it is generated: the analysis as it comes (with
 * --show-reasoning), the final text only up to final_stream_n, so that a stop
 * string, even one spread over several tokens, is never shown. */
static void on_token(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct stream_state *ss = ud;
    (void)user;
    (void)id;
    if (ss->raw) return;
    if (ev->channel == GPO_CH_ANALYSIS && ev->text_len && ss->show_reasoning) {
        if (ss->last != GPO_CH_ANALYSIS) fputs(ss->last == GPO_CH_NONE ? "[analysis] " : "\n[analysis] ", ss->out);
        ss->last = GPO_CH_ANALYSIS;
        fwrite(ev->text, 1, ev->text_len, ss->out);
    }
    stream_final(ss, ss->u->final_stream_n);
    fflush(ss->out);
}

/* A growing list of owned prompt strings. */
static int add_prompt(struct prompt_list *l, size_t *cap, const char *text, size_t len) {
    if (l->n == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        char **items = realloc(l->items, nc * sizeof *items);
        if (!items) return 0;
        l->items = items;
        *cap = nc;
    }
    char *copy = malloc(len + 1);
    if (!copy) return 0;
    memcpy(copy, text, len);
    copy[len] = 0;
    l->items[l->n++] = copy;
    return 1;
}

/* The prompt in a text file (-f), less its trailing line ends. */
static int add_prompt_file(struct prompt_list *l, size_t *cap, const char *path) {
    size_t len;
    char *txt = gen_read_file(path, &len);
    if (!txt) return 0;
    while (len > 0 && (txt[len - 1] == '\n' || txt[len - 1] == '\r')) len--;
    int ok = add_prompt(l, cap, txt, len);
    free(txt);
    if (!ok) cli_error("out of memory");
    return ok;
}

/* The prompts of a --prompts FILE.json, appended. */
static int add_prompts_json(struct prompt_list *l, size_t *cap, const char *path) {
    size_t len;
    char *txt = gen_read_file(path, &len);
    if (!txt) return 0;
    struct prompt_list pl;
    char err[256];
    int ok = prompts_parse(txt, len, &pl, err, sizeof err) == 0;
    free(txt);
    if (!ok) {
        cli_error("%s: %s", path, err);
        return 0;
    }
    for (size_t i = 0; i < pl.n && ok; i++)
        if (!(ok = add_prompt(l, cap, pl.items[i], strlen(pl.items[i])))) cli_error("out of memory");
    prompts_free(&pl);
    return ok;
}

/* Counts of one wave added to the totals of the run. */
struct run_totals {
    struct gpo_gen_stats st;
    double ttft_sum, decode_ms_sum; /* the latter weighted by decode intervals */
    int64_t decode_n;
    size_t n_users;
};

static void add_wave(struct run_totals *t, const struct gpo_gen_stats *st, const struct gpo_gen_user *u,
                     size_t n) {
    int64_t dn = 0;
    for (size_t i = 0; i < n; i++) {
        t->ttft_sum += u[i].t_first;
        if (u[i].generated.n > 1) dn += (int64_t)u[i].generated.n - 1;
    }
    t->n_users += n;
    t->decode_ms_sum += st->avg_decode_ms * (double)dn;
    t->decode_n += dn;
    t->st.t_total += st->t_total;
    t->st.n_prefill += st->n_prefill;
    t->st.n_generated += st->n_generated;
    t->st.n_steps += st->n_steps;
    t->st.weight_bytes += st->weight_bytes;
    t->st.decode_seconds += st->decode_seconds;
}

/* The run's report from its waves: means over every user that ran; throughput
 * for the users decoded together. */
static void finish_totals(struct run_totals *t, size_t together) {
    struct gpo_gen_stats *st = &t->st;
    st->avg_ttft = t->n_users ? t->ttft_sum / (double)t->n_users : 0.0;
    st->avg_decode_ms = t->decode_n ? t->decode_ms_sum / (double)t->decode_n : 0.0;
    st->tok_s_user = st->avg_decode_ms > 0 ? 1000.0 / st->avg_decode_ms : 0.0;
    st->tok_s_total = st->tok_s_user * (double)together;
}

/* Merge another replica's counts: users and tokens add up, the replicas ran
 * side by side, so the run took as long as the slowest. */
static void merge_totals(struct run_totals *t, const struct run_totals *o) {
    t->ttft_sum += o->ttft_sum;
    t->decode_ms_sum += o->decode_ms_sum;
    t->decode_n += o->decode_n;
    t->n_users += o->n_users;
    if (o->st.t_total > t->st.t_total) t->st.t_total = o->st.t_total;
    if (o->st.decode_seconds > t->st.decode_seconds) t->st.decode_seconds = o->st.decode_seconds;
    t->st.n_prefill += o->st.n_prefill;
    t->st.n_generated += o->st.n_generated;
    t->st.n_steps += o->st.n_steps;
    t->st.weight_bytes += o->st.weight_bytes;
}

/* Data parallel: replica d of dp runs users [lo, hi) of n, decoding at most
 * its share of the batch together. */
static void replica_share(size_t n, size_t batch, int dp, int d, size_t *lo, size_t *hi,
                          size_t *slots) {
    *lo = n * (size_t)d / (size_t)dp;
    *hi = n * (size_t)(d + 1) / (size_t)dp;
    size_t per = (batch + (size_t)dp - 1) / (size_t)dp;
    *slots = *hi - *lo < per ? *hi - *lo : per;
}

/* A replica's users and counts as bytes for rank 0 (the ranks of one job share
 * one architecture, so values travel as they are in memory). */
static enum gpo_status put(struct gpo_str *b, const void *p, size_t n) {
    return gpo_str_append(b, p, n);
}
static enum gpo_status put_str(struct gpo_str *b, const struct gpo_str *v) {
    uint64_t n = v->n;
    GPO_TRY(put(b, &n, sizeof n));
    return n ? put(b, v->s, v->n) : GPO_OK;
}
static enum gpo_status pack_users(struct gpo_str *b, const struct run_totals *t,
                                  const struct gpo_gen_user *u, size_t n) {
    GPO_TRY(put(b, t, sizeof *t));
    for (size_t i = 0; i < n; i++) {
        const int32_t flags[4] = {(int32_t)u[i].finish, (int32_t)u[i].error, u[i].recovered,
                                  u[i].aborted};
        const double times[2] = {u[i].t_first, u[i].t_done};
        const uint64_t n_gen = u[i].generated.n;
        GPO_TRY(put(b, flags, sizeof flags));
        GPO_TRY(put(b, times, sizeof times));
        GPO_TRY(put(b, u[i].error_msg, sizeof u[i].error_msg));
        GPO_TRY(put(b, &n_gen, sizeof n_gen));
        if (n_gen) GPO_TRY(put(b, u[i].generated.ids, n_gen * sizeof(int32_t)));
        GPO_TRY(put_str(b, &u[i].final_text));
        GPO_TRY(put_str(b, &u[i].analysis_text));
        GPO_TRY(put_str(b, &u[i].raw_text));
    }
    return GPO_OK;
}

struct reader {
    const char *p, *end;
};
static enum gpo_status take(struct reader *r, void *out, size_t n) {
    if ((size_t)(r->end - r->p) < n)
        return gpo_fail(GPO_ERR_TRUNCATED, "a replica's results end %zu bytes early",
                        n - (size_t)(r->end - r->p));
    memcpy(out, r->p, n);
    r->p += n;
    return GPO_OK;
}
static enum gpo_status take_str(struct reader *r, struct gpo_str *v) {
    uint64_t n = 0;
    GPO_TRY(take(r, &n, sizeof n));
    if (n > (uint64_t)(r->end - r->p)) return take(r, &n, (size_t)n); /* names the shortfall */
    GPO_TRY(gpo_str_append(v, r->p, (size_t)n));
    r->p += n;
    return GPO_OK;
}
static enum gpo_status unpack_users(struct reader *r, struct run_totals *t, struct gpo_gen_user *u,
                                    size_t n) {
    GPO_TRY(take(r, t, sizeof *t));
    for (size_t i = 0; i < n; i++) {
        int32_t flags[4] = {0};
        double times[2] = {0};
        uint64_t n_gen = 0;
        GPO_TRY(take(r, flags, sizeof flags));
        GPO_TRY(take(r, times, sizeof times));
        GPO_TRY(take(r, u[i].error_msg, sizeof u[i].error_msg));
        GPO_TRY(take(r, &n_gen, sizeof n_gen));
        if (n_gen > (uint64_t)(r->end - r->p) / sizeof(int32_t))
            return gpo_fail(GPO_ERR_TRUNCATED, "a replica's user %zu claims %llu tokens", i,
                            (unsigned long long)n_gen);
        for (uint64_t j = 0; j < n_gen; j++) {
            int32_t id = 0;
            GPO_TRY(take(r, &id, sizeof id));
            GPO_TRY(gpo_ids_push(&u[i].generated, id));
        }
        GPO_TRY(take_str(r, &u[i].final_text));
        GPO_TRY(take_str(r, &u[i].analysis_text));
        GPO_TRY(take_str(r, &u[i].raw_text));
        u[i].finish = (enum gpo_finish)flags[0];
        u[i].error = (enum gpo_status)flags[1];
        u[i].recovered = flags[2];
        u[i].aborted = flags[3];
        u[i].t_first = times[0];
        u[i].t_done = times[1];
        u[i].final_stream_n = u[i].final_text.n;
    }
    return GPO_OK;
}

/* Every replica's users and counts to rank 0, over the replica leaders' group:
 * each in turn broadcasts its bytes' length, then the bytes. */
static enum gpo_status gather_replicas(const struct gen_dist *d, struct run_totals *tot,
                                       struct gpo_gen_user *users, size_t n_users, size_t batch) {
    enum gpo_status s = GPO_OK;
    for (int r = 1; r < d->mesh.dp && s == GPO_OK; r++) {
        size_t lo, hi, slots;
        replica_share(n_users, batch, d->mesh.dp, r, &lo, &hi, &slots);
        struct gpo_str b = {0};
        if (d->shard.dp_rank == r) s = pack_users(&b, tot, users + lo, hi - lo);
        int64_t n = (int64_t)b.n;
        void *buf = b.s;
        if (s == GPO_OK) s = gpo_dist_bcast_counted(d->groups.dp, &buf, &n, 1, r);
        b.s = buf;
        if (s == GPO_OK && d->shard.dp_rank == 0) {
            struct reader rd = {b.s, b.s + n};
            struct run_totals t;
            s = unpack_users(&rd, &t, users + lo, hi - lo);
            if (s == GPO_OK) merge_totals(tot, &t);
        }
        free(b.s);
    }
    return s;
}

/* The seed as an exact integer (a double would round seeds above 2^53). */
static void add_seed(cJSON *obj, uint64_t seed) {
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)seed);
    cJSON_AddRawToObject(obj, "seed", buf);
}

static void print_user(FILE *out, const struct gen_opts *o, const struct gpo_gen_user *u, size_t i,
                       const char *prompt) {
    fprintf(out, "==USER %zu - PROMPT\n%s\n==USER %zu - OUTPUT\n", i, prompt, i);
    if (o->raw) {
        fwrite(u->raw_text.s, 1, u->raw_text.n, out);
        return;
    }
    if (o->show_reasoning && u->analysis_text.n) {
        fputs("[analysis] ", out);
        fwrite(u->analysis_text.s, 1, u->analysis_text.n, out);
        fputs("\n[final] ", out);
    }
    if (u->final_text.n) fwrite(u->final_text.s, 1, u->final_text.n, out);
}

/* A user's answer once it is done (a single user's was streamed already) and
 * its line on standard error; 1 when it failed. */
static int report_user(FILE *out, const struct gen_opts *o, struct stream_state *ss,
                       const struct gpo_gen_user *u, size_t i, size_t n_users, const char *prompt) {
    if (n_users > 1) print_user(out, o, u, i, prompt);
    else if (o->raw) fwrite(u->raw_text.s, 1, u->raw_text.n, out);
    else stream_final(ss, u->final_text.n); /* what a failure left unshown */
    fputc('\n', out);
    fprintf(stderr, "gptoss: user %zu: %zu tokens, finish %s%s%s%s\n", i, u->generated.n,
            gpo_finish_name(u->finish), u->recovered ? " (output was not well-formed harmony)" : "",
            u->finish == GPO_FINISH_ERROR ? ": " : "", u->finish == GPO_FINISH_ERROR ? u->error_msg : "");
    return u->finish == GPO_FINISH_ERROR;
}

int cmd_generate(int argc, char **argv) {
    struct gen_opts o;
    gen_opts_default(&o);
    const char *prompts_file = NULL, *json_path = NULL, *v;
    struct prompt_list prompts = {0};
    size_t cap = 0;
    int64_t batch = 0;
    int warmup = 0, membw = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = gen_opts_parse("generate", &o, argc, argv, &i);
        if (r < 0) goto usage_fail;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            prompts_free(&prompts);
            return 0;
        } else if (!strcmp(a, "-p") || cli_is(a, "--prompt")) {
            if (!(v = cli_value("generate", argc, argv, &i))) goto usage_fail;
            if (!add_prompt(&prompts, &cap, v, strlen(v))) {
                prompts_free(&prompts);
                return cli_error("out of memory");
            }
        } else if (!strcmp(a, "-f") || cli_is(a, "--file")) {
            if (!(v = cli_value("generate", argc, argv, &i))) goto usage_fail;
            if (!add_prompt_file(&prompts, &cap, v)) {
                prompts_free(&prompts);
                return CLI_EXIT_FAIL;
            }
        } else if (cli_is(a, "--prompts")) {
            if (!(prompts_file = cli_value("generate", argc, argv, &i))) goto usage_fail;
        } else if (cli_is(a, "--json")) {
            if (!(json_path = cli_value("generate", argc, argv, &i))) goto usage_fail;
        } else if (cli_is(a, "--batch")) {
            if (!(v = cli_value("generate", argc, argv, &i))) goto usage_fail;
            if (!cli_parse_i64(v, 1, 4096, &batch)) {
                cli_usage_error("generate", "--batch needs a number from 1 to 4096, not '%s'", v);
                goto usage_fail;
            }
        } else if (!strcmp(a, "--warmup")) {
            warmup = 1;
        } else if (!strcmp(a, "--no-membw")) {
            membw = 0;
        } else {
            cli_usage_error("generate", "unknown option '%s'", a);
            goto usage_fail;
        }
    }

    int rc = CLI_EXIT_FAIL;
    enum gpo_status s;
    struct gen_env env = {0};
    gpo_engine *eng = NULL;
    struct gen_dist dist = {0};
    struct gpo_gen_user *users = NULL;
    struct gpo_ids *prompt_ids = NULL;
    const char **user_prompt = NULL;
    size_t n_users = 0, n_prompts = 0;
    FILE *json = NULL, *out = stdout;
    char datebuf[11];

    if (prompts_file && !add_prompts_json(&prompts, &cap, prompts_file)) goto cleanup;
    n_prompts = prompts.n;
    if (n_prompts == 0) {
        rc = cli_usage_error("generate", "give at least one prompt with -p TEXT, -f FILE or --prompts FILE.json");
        goto cleanup;
    }
    for (size_t i = 0; i < n_prompts; i++) {
        if (!prompts.items[i][0]) {
            rc = cli_usage_error("generate", "prompt %zu is empty", i);
            goto cleanup;
        }
        if (!gpo_utf8_valid(prompts.items[i], strlen(prompts.items[i]))) {
            rc = cli_error("prompt %zu is not valid UTF-8", i);
            goto cleanup;
        }
    }
    /* The JSON output is opened before the model loads, so a bad path fails at
     * once; on standard output it leaves the human-readable text to stderr. */
    if (json_path && gpo_dist_rank() == 0) {
        if (!(json = cli_open_out(json_path, "--json", 0))) goto cleanup;
        if (json == stdout) out = stderr;
    }
    /* More prompts than --batch run in waves of --batch users; fewer are repeated
     * to fill --batch users. */
    n_users = (size_t)batch > n_prompts ? (size_t)batch : n_prompts;
    size_t n_slots = batch > 0 && (size_t)batch < n_users ? (size_t)batch : n_users;
    if (gen_env_open(&env, &o) != 0) goto cleanup;
    if (gen_dist_open(&dist, &o, env.m) != 0) goto cleanup;
    /* Data parallel: each replica runs its share of the users; rank 0 prints. */
    const int dp = dist.open ? dist.mesh.dp : 1, rank0 = gpo_dist_rank() == 0;
    if (n_users < (size_t)dp) {
        rc = cli_usage_error("generate", "%d replicas need at least %d users, not %zu (--batch "
                             "repeats the prompts)", dp, dp, n_users);
        goto cleanup;
    }
    size_t lo, hi, rep_slots, global_batch = 0;
    for (int r = 0; r < dp; r++) {
        replica_share(n_users, n_slots, dp, r, &lo, &hi, &rep_slots);
        global_batch += rep_slots;
    }
    replica_share(n_users, n_slots, dp, dist.open ? dist.shard.dp_rank : 0, &lo, &hi, &rep_slots);
    if (!dist.leader) {
        if ((s = gpo_engine_create(env.m, env.tok, &o.eo, rep_slots, &eng)) != GPO_OK)
            rc = cli_status(s, "rank %d cannot set up %zu users", gpo_dist_rank(), rep_slots);
        else
            rc = gen_follow(eng);
        goto cleanup;
    }
    if (!rank0) out = fopen("/dev/null", "w");
    if (!out) {
        rc = cli_error("cannot open /dev/null");
        goto cleanup;
    }
    if (rank0)
        fprintf(stderr, "gptoss: loaded %s (%s layout) in %.2f s\n", env.dir,
                gpo_model_layout(env.m), env.load_seconds);
    if (o.verbose && rank0)
        fprintf(stderr, "gptoss: seed %llu%s\n", (unsigned long long)o.sp.seed,
                n_users > 1 ? " (user i uses seed + i)" : "");

    users = calloc(n_users, sizeof *users);
    prompt_ids = calloc(n_prompts, sizeof *prompt_ids);
    user_prompt = calloc(n_users, sizeof *user_prompt);
    if (!users || !prompt_ids || !user_prompt) {
        rc = cli_error("out of memory");
        goto cleanup;
    }
    const char *date = gen_date(&o, datebuf);
    for (size_t i = 0; i < n_prompts; i++) {
        struct gpo_conv conv;
        gpo_conv_init(&conv);
        struct gpo_chat_turn turn = {GPO_ROLE_USER, prompts.items[i]};
        s = gpo_conv_build(&conv, o.developer, o.reasoning, date, &turn, 1);
        if (s == GPO_OK) s = gpo_harmony_render(env.tok, &conv, &prompt_ids[i]);
        gpo_conv_free(&conv);
        if (s != GPO_OK) {
            rc = cli_status(s, "cannot render prompt %zu", i);
            goto cleanup;
        }
    }
    for (size_t i = 0; i < n_users; i++) {
        struct gpo_gen_user *u = &users[i];
        size_t p = i % n_prompts;
        user_prompt[i] = prompts.items[p];
        u->prompt = prompt_ids[p].ids;
        u->n_prompt = prompt_ids[p].n;
        u->sampling = o.sp;
        u->sampling.seed = o.sp.seed + i;
        u->max_tokens = o.max_tokens;
        u->stops = o.stops;
        u->n_stops = o.n_stops;
        if ((int64_t)u->n_prompt >= o.eo.max_seq_len) {
            rc = cli_error("prompt of user %zu has %zu tokens, more than --max-seq-len %lld allows",
                           i, u->n_prompt, (long long)o.eo.max_seq_len);
            goto cleanup;
        }
    }
    if ((s = gpo_engine_create(env.m, env.tok, &o.eo, rep_slots, &eng)) != GPO_OK) {
        rc = cli_status(s, "cannot set up %zu users", rep_slots);
        goto cleanup;
    }
    signal(SIGINT, on_sigint);
    gpo_engine_set_abort(eng, &g_abort);
    if (warmup) {
        double tw = gpo_now();
        struct gpo_gen_user w = users[0];
        memset(&w.generated, 0, sizeof w - offsetof(struct gpo_gen_user, generated));
        w.max_tokens = 2;
        s = gpo_engine_run(eng, &w, 1, NULL, NULL, NULL);
        gpo_gen_user_free(&w);
        gpo_engine_reset_slot(eng, 0);
        if (s != GPO_OK) {
            rc = cli_status(s, "warm-up failed");
            goto cleanup;
        }
        /* Ctrl-C during the warm-up means stop, not go on to the timed run. */
        if (g_abort) {
            fprintf(stderr, "gptoss: interrupted during the warm-up\n");
            rc = CLI_EXIT_INTERRUPTED;
            goto cleanup;
        }
        fprintf(stderr, "gptoss: load %.2f s, warm-up %.2f s\n", env.load_seconds, gpo_now() - tw);
    }
    size_t n_waves = (hi - lo + rep_slots - 1) / rep_slots;
    if (rank0) {
        fprintf(stderr, "gptoss: %zu user%s", n_users, n_users == 1 ? "" : "s");
        if (dp > 1) fprintf(stderr, " over %d replicas", dp);
        if (n_waves > 1) fprintf(stderr, " in %zu waves of %zu", n_waves, rep_slots);
        fprintf(stderr, ", kernels %s, %d token%s per step at most\n", gpo_engine_kernels(eng),
                (int)o.eo.ubatch, o.eo.ubatch == 1 ? "" : "s");
    }

    struct stream_state ss = {.out = out, .u = &users[0], .show_reasoning = o.show_reasoning,
                              .raw = o.raw, .last = GPO_CH_NONE};
    struct run_totals tot = {0};
    gpo_dist_reset_stats(); /* the run's communication, not the set-up's */
    size_t n_ran = lo, n_failed = 0;
    fflush(stdout);
    for (size_t w0 = lo; w0 < hi && !g_abort; w0 += rep_slots) {
        size_t k = hi - w0 < rep_slots ? hi - w0 : rep_slots;
        struct gpo_gen_stats st;
        if (n_users == 1) fprintf(out, "==USER 0 - PROMPT\n%s\n==USER 0 - OUTPUT\n", user_prompt[0]);
        fflush(out);
        s = gpo_engine_run(eng, users + w0, k, n_users == 1 ? on_token : NULL, &ss, &st);
        if (s != GPO_OK) {
            rc = cli_status(s, "generation failed");
            goto cleanup;
        }
        add_wave(&tot, &st, users + w0, k);
        for (size_t i = w0; i < w0 + k && dp == 1; i++)
            n_failed += report_user(out, &o, &ss, &users[i], i, n_users, user_prompt[i]);
        n_ran = w0 + k;
    }
    /* Users an interrupt kept from running at all. */
    for (size_t i = n_ran; i < hi; i++) {
        users[i].finish = GPO_FINISH_ABORTED;
        users[i].aborted = 1;
    }
    if (n_ran < hi)
        fprintf(stderr, "gptoss: users %zu to %zu did not run (interrupted)\n", n_ran, hi - 1);
    if (dp > 1) {
        /* The leaders are done with their followers before they meet. */
        if ((s = gpo_engine_stop_followers(eng)) != GPO_OK ||
            (s = gather_replicas(&dist, &tot, users, n_users, n_slots)) != GPO_OK) {
            rc = cli_status(s, "cannot gather the replicas' results");
            goto cleanup;
        }
        for (size_t i = 0; i < n_users && rank0; i++)
            n_failed += report_user(out, &o, &ss, &users[i], i, n_users, user_prompt[i]);
    }
    finish_totals(&tot, global_batch);
    struct gpo_gen_stats st = tot.st;
    struct gpo_model_info inf;
    gpo_model_get_info(env.m, &inf);
    double kv_gib = (double)gpo_engine_kv_bytes(eng) / 1073741824.0;
    double gbs = st.decode_seconds > 0 ? (double)st.weight_bytes / st.decode_seconds / 1e9 : 0.0;
    /* Peak RSS is read before the bandwidth probe allocates its buffer. */
    uint64_t peak_rss = gen_peak_rss();
    double membw_gbs = -1.0;
    if (membw && rank0 && gbs > 0 && !g_abort &&
        gpo_membw_measure(o.eo.n_threads, (uint64_t)512 << 20, 0.5, &membw_gbs) != GPO_OK)
        membw_gbs = -1.0;
    fprintf(out, "=== Performance Metrics ===\n");
    fprintf(out, "Average Time to First Token (TTFT): %.1fms\n", st.avg_ttft * 1000.0);
    fprintf(out, "Average decode speed: %.1fms @ %.1f tok/s/user (%.1f tok/s throughput)\n",
            st.avg_decode_ms, st.tok_s_user, st.tok_s_total);
    fprintf(out, "Data parallel: %d, Global batch size: %zu\n", dp, global_batch);
    /* Two decimals below 10 GiB, so small models and caches do not show as 0.0. */
    double wg = (double)inf.bytes_mapped / 1073741824.0,
           rg = (double)peak_rss / 1073741824.0;
    fprintf(out, "Memory: weights %.*f GiB mapped, KV cache %.*f GiB, peak RSS %.*f GiB\n",
            wg < 10 ? 2 : 1, wg, kv_gib < 10 ? 2 : 1, kv_gib, rg < 10 ? 2 : 1, rg);
    if (membw_gbs > 0)
        fprintf(out, "Utilisation: %.1f GB/s effective weight reads, %.0f%% of the %.1f GB/s measured read bandwidth\n",
                gbs, 100.0 * gbs / membw_gbs, membw_gbs);
    else
        fprintf(out, "Utilisation: %.1f GB/s effective weight reads\n", gbs);
    /* Rank 0's share of the collectives: plans, partial sums, the results. */
    struct gpo_dist_stats ds;
    gpo_dist_get_stats(&ds);
    const double per_token =
        st.n_generated > 0 ? (double)ds.bytes_sent / (double)st.n_generated : 0;
    if (dist.open)
        fprintf(out, "Communication (rank 0): %.3f s in %llu collectives, %.1f KiB sent per "
                "generated token\n",
                ds.seconds, (unsigned long long)ds.n_calls, per_token / 1024.0);
    fflush(out);

    if (json) {
        cJSON *root = cJSON_CreateObject();
        add_seed(root, o.sp.seed);
        cJSON *arr = cJSON_AddArrayToObject(root, "users");
        for (size_t i = 0; i < n_users; i++) {
            struct gpo_gen_user *u = &users[i];
            cJSON *uo = cJSON_CreateObject();
            cJSON_AddNumberToObject(uo, "user", (double)i);
            cJSON_AddStringToObject(uo, "prompt", user_prompt[i]);
            cJSON_AddStringToObject(uo, "text", u->final_text.s ? u->final_text.s : "");
            cJSON_AddStringToObject(uo, "reasoning", u->analysis_text.s ? u->analysis_text.s : "");
            cJSON *toks = cJSON_AddArrayToObject(uo, "tokens");
            for (size_t j = 0; j < u->generated.n; j++)
                cJSON_AddItemToArray(toks, cJSON_CreateNumber(u->generated.ids[j]));
            cJSON_AddNumberToObject(uo, "prompt_tokens", (double)u->n_prompt);
            cJSON_AddStringToObject(uo, "finish_reason", gpo_finish_name(u->finish));
            if (u->finish == GPO_FINISH_ERROR) cJSON_AddStringToObject(uo, "error", u->error_msg);
            add_seed(uo, u->sampling.seed);
            cJSON_AddBoolToObject(uo, "recovered", u->recovered);
            cJSON_AddNumberToObject(uo, "ttft_ms", u->t_first * 1000.0);
            cJSON_AddItemToArray(arr, uo);
        }
        cJSON *mo = cJSON_AddObjectToObject(root, "metrics");
        cJSON_AddNumberToObject(mo, "avg_ttft_ms", st.avg_ttft * 1000.0);
        cJSON_AddNumberToObject(mo, "avg_decode_ms", st.avg_decode_ms);
        cJSON_AddNumberToObject(mo, "tok_s_user", st.tok_s_user);
        cJSON_AddNumberToObject(mo, "tok_s_total", st.tok_s_total);
        cJSON_AddNumberToObject(mo, "users", (double)n_users);
        cJSON_AddNumberToObject(mo, "batch", (double)global_batch);
        cJSON_AddNumberToObject(mo, "data_parallel", dp);
        cJSON_AddNumberToObject(mo, "prefill_tokens", (double)st.n_prefill);
        cJSON_AddNumberToObject(mo, "generated_tokens", (double)st.n_generated);
        cJSON_AddNumberToObject(mo, "effective_gbs", gbs);
        cJSON_AddNumberToObject(mo, "weights_mapped_bytes", (double)inf.bytes_mapped);
        cJSON_AddNumberToObject(mo, "peak_rss_bytes", (double)peak_rss);
        if (membw_gbs > 0) {
            cJSON_AddNumberToObject(mo, "membw_gbs", membw_gbs);
            cJSON_AddNumberToObject(mo, "bw_fraction", gbs / membw_gbs);
        }
        cJSON_AddNumberToObject(mo, "load_seconds", env.load_seconds);
        cJSON_AddStringToObject(mo, "kernels", gpo_engine_kernels(eng));
        if (dist.open) {
            cJSON_AddNumberToObject(mo, "comm_seconds", ds.seconds);
            cJSON_AddNumberToObject(mo, "comm_bytes_sent_per_token", per_token);
        }
        char *txt = cJSON_Print(root);
        cJSON_Delete(root);
        int ok = txt && fputs(txt, json) >= 0 && fputc('\n', json) != EOF;
        free(txt);
        FILE *jf = json;
        json = NULL;
        if (cli_close_out(jf, json_path) != 0 || !ok) {
            if (!ok) cli_error("cannot write %s", json_path);
            goto cleanup;
        }
    }
    if (g_abort) rc = CLI_EXIT_INTERRUPTED;
    else if (n_failed) rc = cli_error("%zu of %zu users failed", n_failed, n_users);
    else rc = 0;

cleanup:
    if (json && json != stdout) fclose(json);
    if (out && out != stdout && out != stderr) fclose(out);
    for (size_t i = 0; users && i < n_users; i++) gpo_gen_user_free(&users[i]);
    for (size_t i = 0; prompt_ids && i < n_prompts; i++) gpo_ids_free(&prompt_ids[i]);
    free(users);
    free(prompt_ids);
    free(user_prompt);
    gpo_engine_free(eng);
    gen_dist_close(&dist);
    gen_env_close(&env);
    prompts_free(&prompts);
    return rc;

usage_fail:
    prompts_free(&prompts);
    return CLI_EXIT_USAGE;
}
