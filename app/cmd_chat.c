/* cmd_chat.c - `gptoss chat`: an interactive multi-turn chat that streams each
 * answer token by token and keeps the history in harmony form.  The engine keeps
 * the conversation's KV cache, so each turn only prefills what is new. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gen_common.h"

static void usage(void) {
    printf("usage: gptoss chat [-m DIR] [options]\n"
           "\n"
           "An interactive chat.  Type a message and press Enter.  Commands:\n"
           "  /reset                 start a new conversation\n"
           "  /reasoning low|medium|high   change the reasoning effort\n"
           "  /show-reasoning        toggle showing the model's reasoning (dimmed)\n"
           "  /quit                  leave (also Ctrl-D)\n"
           "Ctrl-C stops the current answer, not the chat.\n"
           "\n"
           "%s",
           gen_opts_help);
}

static volatile sig_atomic_t g_abort;
static void on_sigint(int sig) {
    (void)sig;
    g_abort = 1;
}

struct chat_stream {
    int show_reasoning, color;
    enum gpo_hchannel last;
};

static void on_token(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct chat_stream *cs = ud;
    (void)user;
    (void)id;
    if (!ev->text_len) return;
    if (ev->channel == GPO_CH_ANALYSIS) {
        if (!cs->show_reasoning) return;
        if (cs->color && cs->last != GPO_CH_ANALYSIS) fputs("\033[2m", stdout);
    } else if (cs->last == GPO_CH_ANALYSIS && cs->color) {
        fputs("\033[0m\n", stdout);
    } else if (cs->last == GPO_CH_ANALYSIS) {
        fputs("\n", stdout);
    }
    cs->last = ev->channel;
    fwrite(ev->text, 1, ev->text_len, stdout);
    fflush(stdout);
}

/* History as OpenAI-style turns; strings owned here. */
struct history {
    struct gpo_chat_turn *t;
    size_t n, cap;
};

static int history_add(struct history *h, enum gpo_role role, const char *text, size_t len) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 16;
        struct gpo_chat_turn *nt = realloc(h->t, nc * sizeof *nt);
        if (!nt) return 0;
        h->t = nt;
        h->cap = nc;
    }
    char *copy = malloc(len + 1);
    if (!copy) return 0;
    memcpy(copy, text, len);
    copy[len] = 0;
    h->t[h->n++] = (struct gpo_chat_turn){role, copy};
    return 1;
}

static void history_clear(struct history *h) {
    for (size_t i = 0; i < h->n; i++) free((char *)h->t[i].content);
    h->n = 0;
}

int cmd_chat(int argc, char **argv) {
    struct gen_opts o;
    gen_opts_default(&o);
    for (int i = 1; i < argc; i++) {
        int r = gen_opts_parse("chat", &o, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage();
            return 0;
        }
        return cli_usage_error("chat", "unknown option '%s'", argv[i]);
    }
    int rc = CLI_EXIT_FAIL;
    struct gen_env env;
    gpo_engine *eng = NULL;
    struct history hist = {0};
    char *line = NULL;
    size_t line_cap = 0;
    char datebuf[11];
    enum gpo_status s;
    int tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);

    if (gen_env_open(&env, &o) != 0) return CLI_EXIT_FAIL;
    if ((s = gpo_engine_create(env.m, env.tok, &o.eo, 1, &eng)) != GPO_OK) {
        rc = cli_status(s, "cannot set up the chat");
        goto cleanup;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: a blocked read returns */
    gpo_engine_set_abort(eng, &g_abort);
    fprintf(stderr, "gptoss chat: %s, kernels %s, reasoning %s. /quit to leave, /reset to start over.\n",
            env.dir, gpo_engine_kernels(eng), gpo_reasoning_name(o.reasoning));
    const char *date = gen_date(&o, datebuf);
    for (;;) {
        if (tty) fputs("\n> ", stdout);
        fflush(stdout);
        g_abort = 0;
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) {
            if (g_abort) {
                clearerr(stdin);
                continue;
            }
            break;
        }
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (got == 0) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            history_clear(&hist);
            gpo_engine_reset_slot(eng, 0);
            fprintf(stderr, "(conversation reset)\n");
            continue;
        }
        if (!strncmp(line, "/reasoning", 10)) {
            const char *arg = line + 10;
            while (*arg == ' ') arg++;
            int r = gpo_reasoning_parse(arg);
            if (r < 0) fprintf(stderr, "usage: /reasoning low|medium|high\n");
            else {
                o.reasoning = (enum gpo_reasoning)r;
                fprintf(stderr, "(reasoning effort: %s)\n", gpo_reasoning_name(o.reasoning));
            }
            continue;
        }
        if (!strcmp(line, "/show-reasoning")) {
            o.show_reasoning = !o.show_reasoning;
            fprintf(stderr, "(reasoning %s)\n", o.show_reasoning ? "shown" : "hidden");
            continue;
        }
        if (line[0] == '/') {
            fprintf(stderr, "unknown command %s (try /reset, /reasoning high, /show-reasoning, /quit)\n", line);
            continue;
        }
        if (!gpo_utf8_valid(line, (size_t)got)) {
            fprintf(stderr, "gptoss: the message is not valid UTF-8; not sent\n");
            continue;
        }
        if (!history_add(&hist, GPO_ROLE_USER, line, (size_t)got)) {
            rc = cli_error("out of memory");
            goto cleanup;
        }
        struct gpo_conv conv;
        struct gpo_ids prompt = {0};
        gpo_conv_init(&conv);
        s = gpo_conv_build(&conv, o.developer, o.reasoning, date, hist.t, hist.n);
        if (s == GPO_OK) s = gpo_harmony_render(env.tok, &conv, &prompt);
        gpo_conv_free(&conv);
        if (s != GPO_OK) {
            rc = cli_status(s, "cannot render the conversation");
            gpo_ids_free(&prompt);
            goto cleanup;
        }
        struct gpo_gen_user u = {.prompt = prompt.ids, .n_prompt = prompt.n, .sampling = o.sp,
                                 .max_tokens = o.max_tokens, .stops = o.stops, .n_stops = o.n_stops};
        struct chat_stream cs = {.show_reasoning = o.show_reasoning, .color = tty, .last = GPO_CH_NONE};
        struct gpo_gen_stats st;
        s = gpo_engine_run(eng, &u, 1, on_token, &cs, &st);
        if (cs.last == GPO_CH_ANALYSIS && cs.color) fputs("\033[0m", stdout);
        fputs("\n", stdout);
        if (s != GPO_OK) {
            /* A prompt over the context: drop the turn and say so; the chat goes on. */
            cli_status(s, "cannot answer");
            history_clear(&hist);
            gpo_engine_reset_slot(eng, 0);
            fprintf(stderr, "(conversation reset)\n");
        } else {
            fprintf(stderr, "[%zu tokens, %.1f tok/s, reused %lld of %zu prompt tokens, %s%s]\n",
                    u.generated.n, st.tok_s_user, (long long)u.n_reused, prompt.n,
                    gpo_finish_name(u.finish), u.aborted ? ", stopped" : "");
            if (!history_add(&hist, GPO_ROLE_ASSISTANT, u.final_text.s ? u.final_text.s : "",
                             u.final_text.n)) {
                rc = cli_error("out of memory");
                gpo_gen_user_free(&u);
                gpo_ids_free(&prompt);
                goto cleanup;
            }
        }
        gpo_gen_user_free(&u);
        gpo_ids_free(&prompt);
    }
    rc = 0;

cleanup:
    history_clear(&hist);
    free(hist.t);
    free(line);
    gpo_engine_free(eng);
    gen_env_close(&env);
    return rc;
}
