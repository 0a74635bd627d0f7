/* main.c - the `gptoss` command line: dispatches to one subcommand per file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dist.h"
#include "kernels/kernels.h"
#include "server.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"generate", cmd_generate, "generate answers for one or more users (batched)"},
    {"chat", cmd_chat, "interactive multi-turn chat"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server (chat completions, streaming)"},
    {"bench", cmd_bench, "prompt-processing and generation speed, memory bandwidth"},
    {"logits", cmd_logits, "write the logits of every position of a token list"},
    {"info", cmd_info, "print a checkpoint's configuration, tensors and memory plan"},
    {"mkmodel", cmd_mkmodel, "write a random-weight checkpoint of a real shape"},
    {"convert", cmd_convert, "write a safetensors checkpoint as a GGUF file (llama.cpp)"},
    {"tokenize", cmd_tokenize, "text on stdin to token ids"},
    {"detokenize", cmd_detokenize, "token ids to text"},
    {"render", cmd_render, "render a harmony conversation (JSON) to prompt ids"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: gptoss COMMAND [options]   (gptoss COMMAND --help for details)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n  -V, --version  the version and the kernels of this build\n"
               "  -h, --help     this help\n"
               "  --dist-timeout S  (before COMMAND) under mpirun, abort the job when a rank\n"
               "                 answers no collective within S seconds (default 60,\n"
               "                 or $GPTOSS_DIST_TIMEOUT)\n"
               "\nThe model folder comes from -m DIR, else $GPT_DIR, else $HF_MODEL.\n");
}

/* The version, the kernel tables built in, which one this CPU runs (as `gptoss
 * info` reports it; $GPTOSS_KERNELS can choose another) and the CPU's features. */
static void version(void) {
    const char *env = getenv("GPTOSS_KERNELS");
    const struct gpo_kernels *sel = gpo_kernels_select(env);
    if (!sel) sel = gpo_kernels_select(NULL);
    printf("gptoss %s\n", GPTOSS_VERSION);
    printf("kernels: %s (built: ref, avx2, avx512 and avx512-simde; CPU: %s)\n", sel->name,
           gpo_cpu_features());
    if (env && *env && sel != gpo_kernels_select(NULL))
        printf("why:     %s, chosen by GPTOSS_KERNELS (this CPU's own choice: %s)\n", sel->name,
               gpo_kernels_why());
    else
        printf("why:     %s\n", gpo_kernels_why());
}

static int run(int argc, char **argv) {
    if (argc > 1 && cli_is(argv[1], "--dist-timeout")) {
        const char *eq = strchr(argv[1], '=');
        const int i = eq ? 1 : 2;
        const char *v = eq ? eq + 1 : argc > 2 ? argv[2] : "";
        double t;
        if (!cli_parse_f64(v, 1e-3, 1e9, &t) || gpo_dist_set_timeout(t) != GPO_OK) {
            fprintf(stderr, "gptoss: --dist-timeout needs seconds in [0.001, 1e9], not '%s'\n", v);
            return CLI_EXIT_USAGE;
        }
        argv[i] = argv[0];
        return run(argc - i, argv + i);
    }
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V") || !strcmp(argv[1], "version")) {
        version();
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        /* `info` prints the mesh plan (arithmetic) on any number of ranks;
         * generate, chat and serve run a leader and followers, logits and bench
         * a shard of the pass on every rank; the others would run N independent
         * copies: refuse. */
        if (gpo_dist_size() > 1 && commands[i].fn != cmd_info && commands[i].fn != cmd_generate &&
            commands[i].fn != cmd_chat && commands[i].fn != cmd_serve && commands[i].fn != cmd_logits &&
            commands[i].fn != cmd_bench) {
            if (gpo_dist_rank() == 0)
                fprintf(stderr,
                        "gptoss %s: multi-rank runs of this command are not built yet (this job has %d "
                        "ranks); run it as one process (`gptoss info --mesh TPxEP` prints the plan)\n",
                        argv[1], gpo_dist_size());
            return CLI_EXIT_USAGE; /* alike on every rank: no abort needed */
        }
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "gptoss: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
}

/* Every rank of an MPI job (and the single process of a plain run) starts the
 * distributed layer first: MPI may take its own arguments out of argv. */
int main(int argc, char **argv) {
    if (gpo_dist_init(&argc, &argv) != GPO_OK) {
        fprintf(stderr, "gptoss: error: %s\n", gpo_last_error());
        return CLI_EXIT_FAIL;
    }
    int rc = run(argc, argv);
    /* A rank that failed may leave the others waiting for it (a follower for
     * the leader's next plan): end them all.  Usage errors happen alike on
     * every rank, which then all end by themselves. */
    if (rc != 0 && rc != CLI_EXIT_USAGE && gpo_dist_size() > 1) gpo_dist_abort(rc);
    gpo_dist_finalize();
    return rc;
}
