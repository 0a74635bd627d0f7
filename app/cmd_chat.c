/* cmd_chat.c - `gptoss chat`: an interactive multi-turn chat that streams each
 * answer token by token and keeps the history in harmony form.  The engine keeps
 * the conversation's KV cache, so each turn only prefills what is new. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "gen_common.h"

static void usage(void) {
    printf("usage: gptoss chat [-m DIR] [options]\n"
           "\n"
           "An interactive chat with one model: type a message and press Enter; the answer\n"
           "streams as it is generated and the conversation is kept, so each turn only\n"
           "processes what is new.  Commands:\n"
           "  /reset                 start a new conversation\n"
           "  /reasoning low|medium|high   change the reasoning effort\n"
           "  /show-reasoning        toggle showing the model's reasoning (dimmed)\n"
           "  /quit                  leave (also /exit, or Ctrl-D at an empty prompt)\n"
           "A line that ends with a backslash continues on the next line; pasted text\n"
           "arrives whole, newlines included, as one message.  In a terminal, Backspace,\n"
           "Ctrl-U (erase the line) and Ctrl-W (erase a word) edit the message.  Ctrl-C\n"
           "stops the current answer; at the prompt it leaves the chat (exit status 130).\n"
           "When an answer is stopped before it has any text, the message is dropped from\n"
           "the conversation; a partial answer stays in it.\n"
           "\n"
           "  -h, --help              show this help\n"
           "%s",
           gen_opts_help);
}

static volatile sig_atomic_t g_abort;
static void on_sigint(int sig) {
    (void)sig;
    g_abort = 1;
}

/* ------------------------------------------------------------------------- */
/* Showing an answer                                                         */

struct chat_stream {
    const struct gpo_gen_user *u;
    int show_reasoning, color, raw;
    enum gpo_hchannel last;
    size_t final_shown, raw_shown; /* bytes of final_text / raw_text printed */
};

/* Mark the change to channel ch: dimmed reasoning on a terminal, else labels.  The
 * final answer gets a label only after shown reasoning. */
static void stream_section(struct chat_stream *cs, enum gpo_hchannel ch) {
    if (ch == cs->last) return;
    if (ch == GPO_CH_ANALYSIS) fputs(cs->color ? "\033[2m" : "[analysis] ", stdout);
    else if (cs->last == GPO_CH_ANALYSIS) fputs(cs->color ? "\033[0m\n" : "\n[final] ", stdout);
    cs->last = ch;
}

/* Print the final text up to byte `upto` (never past what exists). */
static void stream_final(struct chat_stream *cs, size_t upto) {
    const struct gpo_str *t = &cs->u->final_text;
    if (upto > t->n) upto = t->n;
    if (upto <= cs->final_shown) return;
    stream_section(cs, GPO_CH_FINAL);
    fwrite(t->s + cs->final_shown, 1, upto - cs->final_shown, stdout);
    cs->final_shown = upto;
}

static void stream_raw(struct chat_stream *cs) {
    const struct gpo_str *t = &cs->u->raw_text;
    if (t->n <= cs->raw_shown) return;
    fwrite(t->s + cs->raw_shown, 1, t->n - cs->raw_shown, stdout);
    cs->raw_shown = t->n;
}

/* The final text is shown only up to final_stream_n: past it a --stop string may
 * still begin, and a stop string is never shown.  The rest comes at the end. */
static void on_token(void *ud, size_t user, int32_t id, const struct gpo_hevent *ev) {
    struct chat_stream *cs = ud;
    (void)user;
    (void)id;
    if (cs->raw) {
        stream_raw(cs);
    } else {
        if (ev->text_len && ev->channel == GPO_CH_ANALYSIS && cs->show_reasoning) {
            stream_section(cs, GPO_CH_ANALYSIS);
            fwrite(ev->text, 1, ev->text_len, stdout);
        }
        stream_final(cs, cs->u->final_stream_n);
    }
    fflush(stdout);
}

/* After the run: what streaming held back, and the end of the dimmed text. */
static void stream_end(struct chat_stream *cs) {
    if (cs->raw) stream_raw(cs);
    else stream_final(cs, cs->u->final_text.n);
    if (cs->last == GPO_CH_ANALYSIS && cs->color) fputs("\033[0m", stdout);
    fputs("\n", stdout);
    fflush(stdout);
}

/* ------------------------------------------------------------------------- */
/* Reading a message                                                         */

enum read_result { READ_OK, READ_EOF, READ_INTERRUPTED, READ_ERROR };

struct msg_buf {
    char *s;
    size_t n, cap;
};

static int msg_put(struct msg_buf *b, const char *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) return 0;
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
    return 1;
}

/* Without a terminal: lines of any length; a line that ends with a backslash
 * continues on the next one (joined by a newline). */
static enum read_result read_lines(struct msg_buf *b) {
    static char *line;
    static size_t cap;
    if (!b) { /* release the line buffer */
        free(line);
        line = NULL;
        return READ_OK;
    }
    for (;;) {
        if (g_abort) return READ_INTERRUPTED;
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0) {
            if (g_abort) return READ_INTERRUPTED;
            if (ferror(stdin)) return READ_ERROR;
            return b->n ? READ_OK : READ_EOF;
        }
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) got--;
        int more = got > 0 && line[got - 1] == '\\';
        if (!msg_put(b, line, (size_t)(got - more))) return READ_ERROR;
        if (!more) return READ_OK;
        if (!msg_put(b, "\n", 1)) return READ_ERROR;
    }
}

/* In a terminal the line discipline's canonical mode would cut a line at 4095
 * bytes, so the terminal is switched to non-canonical mode while a message is
 * typed and the editing is done here.  Signals stay on: Ctrl-C raises SIGINT,
 * which interrupts the read.  Bracketed paste makes a pasted block one message,
 * newlines included. */
struct editor {
    struct msg_buf *b;
    FILE *out;        /* where typing is echoed */
    size_t line;      /* offset of the current line in b */
    int paste;        /* inside a bracketed paste */
    int esc;          /* 0, or 1 after ESC, 2 inside ESC [ ..., 3 after ESC O */
    char csi[16];
    size_t csi_n;
    int after_cr;     /* the last byte was a CR (a CR LF pair is one newline) */
};

struct term {
    int raw;
    struct termios saved;
};

/* The settings while a message is typed, for SIGCONT: after Ctrl-Z and fg the
 * shell has put its own settings back. */
static struct termios g_raw;
static volatile sig_atomic_t g_raw_on;
static void on_sigcont(int sig) {
    (void)sig;
    if (g_raw_on) tcsetattr(STDIN_FILENO, TCSANOW, &g_raw);
}

static int term_raw(struct term *t, FILE *out) {
    struct termios r;
    if (tcgetattr(STDIN_FILENO, &t->saved) != 0) return 0;
    r = t->saved;
    r.c_lflag &= ~(tcflag_t)(ICANON | ECHO | IEXTEN);
    r.c_iflag &= ~(tcflag_t)ICRNL;
    r.c_cc[VMIN] = 1;
    r.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSADRAIN, &r) != 0) return 0;
    g_raw = r;
    g_raw_on = 1;
    t->raw = 1;
    fputs("\033[?2004h", out); /* bracketed paste on */
    return 1;
}

static void term_restore(struct term *t, FILE *out) {
    if (!t->raw) return;
    fputs("\033[?2004l", out);
    fflush(out);
    g_raw_on = 0;
    tcsetattr(STDIN_FILENO, TCSADRAIN, &t->saved);
    t->raw = 0;
}

static const char *ed_prefix(const struct editor *ed) { return ed->line ? ". " : "> "; }

static int ed_newline(struct editor *ed) {
    if (!msg_put(ed->b, "\n", 1)) return 0;
    ed->line = ed->b->n;
    fprintf(ed->out, "\n%s", ed_prefix(ed));
    return 1;
}

/* Remove the last character (a whole UTF-8 sequence) and erase it on screen. */
static void ed_erase_char(struct editor *ed) {
    struct msg_buf *b = ed->b;
    if (!b->n) return;
    if (b->s[b->n - 1] == '\n') {
        /* Back to the end of the previous line: clear this row, redraw that one. */
        b->n--;
        size_t start = b->n;
        while (start > 0 && b->s[start - 1] != '\n') start--;
        ed->line = start;
        fprintf(ed->out, "\r\033[K\033[A\r%s", ed_prefix(ed));
        fwrite(b->s + start, 1, b->n - start, ed->out);
        fputs("\033[K", ed->out);
    } else {
        while (b->n > ed->line + 1 && ((unsigned char)b->s[b->n - 1] & 0xC0) == 0x80) b->n--;
        b->n--;
        fputs("\b \b", ed->out);
    }
    b->s[b->n] = 0;
}

static void ed_erase_word(struct editor *ed) {
    struct msg_buf *b = ed->b;
    while (b->n > ed->line && (b->s[b->n - 1] == ' ' || b->s[b->n - 1] == '\t')) ed_erase_char(ed);
    while (b->n > ed->line && b->s[b->n - 1] != ' ' && b->s[b->n - 1] != '\t') ed_erase_char(ed);
}

static void ed_erase_line(struct editor *ed) {
    ed->b->n = ed->line;
    ed->b->s[ed->b->n] = 0;
    fprintf(ed->out, "\r\033[K%s", ed_prefix(ed));
}

/* An escape sequence: only the paste brackets ESC[200~ and ESC[201~ mean
 * something; arrows and function keys are ignored rather than typed. */
static void ed_escape(struct editor *ed, unsigned char c) {
    if (ed->esc == 1) {
        ed->esc = c == '[' ? 2 : c == 'O' ? 3 : 0;
        ed->csi_n = 0;
    } else if (ed->esc == 3) {
        ed->esc = 0;
    } else if (c >= 0x40 && c <= 0x7E) {
        ed->csi[ed->csi_n] = 0;
        if (c == '~' && !strcmp(ed->csi, "200")) ed->paste = 1;
        if (c == '~' && !strcmp(ed->csi, "201")) ed->paste = 0;
        ed->esc = 0;
    } else if (ed->csi_n + 1 < sizeof ed->csi) {
        ed->csi[ed->csi_n++] = (char)c;
    }
}

/* Feed one input byte.  Returns READ_OK with *done set when the message is
 * complete, READ_EOF / READ_INTERRUPTED / READ_ERROR to stop. */
static enum read_result ed_feed(struct editor *ed, unsigned char c, int *done) {
    int cr = ed->after_cr;
    ed->after_cr = c == '\r';
    if (ed->esc) {
        ed_escape(ed, c);
        return READ_OK;
    }
    if (c == 0x1B) {
        ed->esc = 1;
        return READ_OK;
    }
    if (ed->paste) {
        if (c == '\n' && cr) return READ_OK;
        if (c == '\r' || c == '\n') return ed_newline(ed) ? READ_OK : READ_ERROR;
        if (c < 0x20 && c != '\t') return READ_OK;
        if (!msg_put(ed->b, (const char *)&c, 1)) return READ_ERROR;
        fputc(c, ed->out);
        return READ_OK;
    }
    switch (c) {
    case '\n':
        if (cr) return READ_OK;
        /* fall through */
    case '\r':
        if (ed->b->n > ed->line && ed->b->s[ed->b->n - 1] == '\\') {
            ed_erase_char(ed);
            return ed_newline(ed) ? READ_OK : READ_ERROR;
        }
        fputs("\n", ed->out);
        *done = 1;
        return READ_OK;
    case 0x04: /* Ctrl-D: leave at an empty prompt, else send what is there */
        fputs("\n", ed->out);
        if (!ed->b->n) return READ_EOF;
        *done = 1;
        return READ_OK;
    case 0x03: /* Ctrl-C when the terminal does not raise SIGINT */
        return READ_INTERRUPTED;
    case 0x7F:
    case 0x08: /* Backspace, also back over a newline */
        ed_erase_char(ed);
        return READ_OK;
    case 0x15: /* Ctrl-U */
        ed_erase_line(ed);
        return READ_OK;
    case 0x17: /* Ctrl-W */
        ed_erase_word(ed);
        return READ_OK;
    default:
        if (c < 0x20 && c != '\t') return READ_OK;
        if (!msg_put(ed->b, (const char *)&c, 1)) return READ_ERROR;
        fputc(c, ed->out);
        return READ_OK;
    }
}

/* Bytes read but not yet used: what was typed ahead or pasted after an Enter
 * belongs to the next message. */
static struct {
    unsigned char s[4096];
    size_t pos, n;
    int after_cr;
} pending;

static enum read_result read_edited(struct msg_buf *b, FILE *out) {
    struct editor ed = {.b = b, .out = out, .after_cr = pending.after_cr};
    struct term t = {0};
    if (!term_raw(&t, out)) return read_lines(b); /* not a usable terminal after all */
    fputs("\n> ", out);
    fflush(out);
    enum read_result res = READ_OK;
    int done = 0;
    while (!done && res == READ_OK) {
        if (pending.pos == pending.n) {
            if (g_abort) { /* Ctrl-C between two reads */
                res = READ_INTERRUPTED;
                break;
            }
            ssize_t got = read(STDIN_FILENO, pending.s, sizeof pending.s);
            if (got < 0 && errno == EINTR && !g_abort) continue;
            if (got < 0) {
                res = g_abort ? READ_INTERRUPTED : READ_ERROR;
                break;
            }
            if (got == 0) {
                res = b->n ? READ_OK : READ_EOF;
                break;
            }
            pending.pos = 0;
            pending.n = (size_t)got;
        }
        while (pending.pos < pending.n && !done && res == READ_OK)
            res = ed_feed(&ed, pending.s[pending.pos++], &done);
        fflush(out);
    }
    pending.after_cr = ed.after_cr;
    if (res == READ_INTERRUPTED) fputs("\n", out);
    term_restore(&t, out);
    return res;
}

/* One message into b: edited in a terminal, else read as lines. */
static enum read_result read_message(struct msg_buf *b, int edit, FILE *out) {
    b->n = 0;
    if (b->s) b->s[0] = 0;
    return edit ? read_edited(b, out) : read_lines(b);
}

/* Nothing but spaces, tabs and newlines. */
static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') return 0;
    return 1;
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

/* A /command; returns 1 to go on, 0 to leave. */
static int run_command(const char *line, struct gen_opts *o, struct history *hist, gpo_engine *eng) {
    if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) return 0;
    if (!strcmp(line, "/reset")) {
        history_clear(hist);
        gpo_engine_reset_slot(eng, 0);
        fprintf(stderr, "(conversation reset)\n");
    } else if (!strncmp(line, "/reasoning", 10) && (line[10] == 0 || line[10] == ' ')) {
        const char *arg = line + 10;
        while (*arg == ' ') arg++;
        int r = gpo_reasoning_parse(arg);
        if (r < 0) {
            fprintf(stderr, "usage: /reasoning low|medium|high\n");
        } else {
            o->reasoning = (enum gpo_reasoning)r;
            fprintf(stderr, "(reasoning effort: %s)\n", gpo_reasoning_name(o->reasoning));
        }
    } else if (!strcmp(line, "/show-reasoning")) {
        o->show_reasoning = !o->show_reasoning;
        fprintf(stderr, "(reasoning %s)\n", o->show_reasoning ? "shown" : "hidden");
    } else {
        fprintf(stderr, "unknown command %s (try /reset, /reasoning high, /show-reasoning, /quit)\n", line);
    }
    return 1;
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
    struct gen_dist dist = {0};
    struct history hist = {0};
    struct msg_buf msg = {0};
    char datebuf[11];
    enum gpo_status s;
    /* Typing is edited here when stdin is a terminal; it is echoed where the
     * answers go when that is the terminal too, else on stderr. */
    const int edit = isatty(STDIN_FILENO);
    const int tty = edit && isatty(STDOUT_FILENO);
    FILE *echo = tty ? stdout : stderr;

    if (gen_env_open(&env, &o) != 0) return CLI_EXIT_FAIL;
    /* Under mpirun rank 0 talks; the other ranks of its model follow. */
    if (gen_dist_open(&dist, &o, env.m) != 0) goto cleanup;
    if ((rc = gen_dist_one_replica("chat", &dist)) != 0) goto cleanup;
    rc = CLI_EXIT_FAIL;
    if ((s = gpo_engine_create(env.m, env.tok, &o.eo, 1, &eng)) != GPO_OK) {
        rc = cli_status(s, "cannot set up the chat");
        goto cleanup;
    }
    if (!dist.leader) {
        rc = gen_follow(eng);
        goto cleanup;
    }
    /* The engine's notes (a cache that cannot be reused ...) would interleave
     * with the conversation; loading has already said what it had to say. */
    if (!o.verbose) gpo_set_log_level(GPO_LOG_WARN);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: a blocked read returns */
    if (edit) {
        struct sigaction sc = {0};
        sc.sa_handler = on_sigcont;
        sc.sa_flags = SA_RESTART;
        sigaction(SIGCONT, &sc, NULL);
    }
    gpo_engine_set_abort(eng, &g_abort);
    fprintf(stderr, "gptoss chat: %s, kernels %s, reasoning %s. /quit to leave, /reset to start over.\n",
            env.dir, gpo_engine_kernels(eng), gpo_reasoning_name(o.reasoning));
    const char *date = gen_date(&o, datebuf);
    for (;;) {
        fflush(stdout);
        g_abort = 0;
        enum read_result res = read_message(&msg, edit, echo);
        if (res == READ_INTERRUPTED) {
            rc = CLI_EXIT_INTERRUPTED;
            goto cleanup;
        }
        if (res == READ_ERROR) {
            rc = cli_error("cannot read the message: %s", errno ? strerror(errno) : "out of memory");
            goto cleanup;
        }
        if (res == READ_EOF) break;
        if (is_blank(msg.s, msg.n)) continue;
        if (msg.s[0] == '/' && !memchr(msg.s, '\n', msg.n)) {
            if (!run_command(msg.s, &o, &hist, eng)) break;
            continue;
        }
        if (!gpo_utf8_valid(msg.s, msg.n)) {
            fprintf(stderr, "gptoss: the message is not valid UTF-8; not sent\n");
            continue;
        }
        if (!history_add(&hist, GPO_ROLE_USER, msg.s, msg.n)) {
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
        struct chat_stream cs = {.u = &u, .show_reasoning = o.show_reasoning, .color = tty,
                                 .raw = o.raw, .last = GPO_CH_NONE};
        struct gpo_gen_stats st;
        s = gpo_engine_run(eng, &u, 1, on_token, &cs, &st);
        stream_end(&cs);
        if (s != GPO_OK) {
            /* A prompt over the context: drop the turn and say so; the chat goes on. */
            cli_status(s, "cannot answer");
            history_clear(&hist);
            gpo_engine_reset_slot(eng, 0);
            fprintf(stderr, "(conversation reset)\n");
        } else {
            fprintf(stderr, "[%zu tokens, %.1f tok/s, reused %lld of %zu prompt tokens, %s]\n",
                    u.generated.n, st.tok_s_user, (long long)u.n_reused, prompt.n,
                    gpo_finish_name(u.finish));
            if (u.aborted && u.final_text.n == 0) {
                /* Nothing was answered: an empty turn would teach the model to say nothing. */
                free((char *)hist.t[--hist.n].content);
                fprintf(stderr, "(stopped before any answer; the message is not kept)\n");
            } else if (!history_add(&hist, GPO_ROLE_ASSISTANT, u.final_text.s ? u.final_text.s : "",
                                    u.final_text.n)) {
                rc = cli_error("out of memory");
                gpo_gen_user_free(&u);
                gpo_ids_free(&prompt);
                goto cleanup;
            } else if (u.aborted) {
                fprintf(stderr, "(stopped; the partial answer is kept)\n");
            }
        }
        gpo_gen_user_free(&u);
        gpo_ids_free(&prompt);
    }
    rc = 0;

cleanup:
    history_clear(&hist);
    free(hist.t);
    free(msg.s);
    read_lines(NULL);
    gpo_engine_free(eng);
    gen_dist_close(&dist);
    gen_env_close(&env);
    return rc;
}
