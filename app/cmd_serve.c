/* cmd_serve.c - `gptoss serve`: an OpenAI-compatible HTTP server (server.c)
 * over the engine's scheduler. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gen_common.h"
#include "server.h"

static void usage(void) {
    printf("usage: gptoss serve [-m DIR] [--host ADDR] [--port N] [--parallel N] [options]\n"
           "\n"
           "Serves the OpenAI API over HTTP: POST /v1/chat/completions and POST\n"
           "/v1/completions (streaming too), GET /v1/models, GET /health (503 while the\n"
           "model loads) and GET /metrics (Prometheus text).  Ctrl-C or SIGTERM stops it:\n"
           "requests in flight end and the exit status is 0.\n"
           "\n"
           "  --host ADDR             address to listen on (default 127.0.0.1: this machine\n"
           "                          only; 0.0.0.0 listens on every interface)\n"
           "  --port N                port (default 8080; 0 = any free port, printed)\n"
           "  --parallel N            requests generated at once (default 4)\n"
           "  --kv-memory GiB         KV memory all requests share, in blocks they take as\n"
           "                          they grow (default: what is free after the weights,\n"
           "                          less a margin; `gptoss info` shows the plan)\n"
           "  --prefill-itl R         while requests generate, size prompt chunks so a step\n"
           "                          takes at most R times a decode-only step, times the\n"
           "                          waiting prompts per generating request when they are\n"
           "                          more (default 2.5; 0 = prompts take the whole --ubatch)\n"
           "  --max-queue Q           requests that may wait for a free slot; more are\n"
           "                          answered 503 with Retry-After (default 64)\n"
           "  --api-key KEY           require Authorization: Bearer KEY on /v1/ routes\n"
           "  --api-key-file F        the key from the first line of file F\n"
           "  --model-name NAME       the model id in answers and /v1/models (default: the\n"
           "                          model folder's name)\n"
           "  --max-body BYTES        largest request body (default 8 MiB; more is 413)\n"
           "  -h, --help              this help\n"
           "\n"
           "The sampling options below are the defaults of requests that do not set them;\n"
           "--max-seq-len is the most positions one request may reach.\n"
           "\n"
           "%s",
           gen_opts_help);
}

/* The first line of a key file, without the newline. */
static char *read_key(const char *path) {
    size_t n = 0;
    char *s = cli_read_file(path, &n);
    if (!s) return NULL;
    s[strcspn(s, "\r\n")] = 0;
    return s;
}

/* Under mpirun the ranks other than 0 hold their part of the model and run the
 * steps rank 0's engine plans; they never listen.  Their engine is made as
 * serve_run makes rank 0's. */
static int serve_follow(const struct serve_cfg *cfg) {
    struct gen_env env;
    struct gen_dist dist = {0};
    gpo_engine *eng = NULL;
    int rc = CLI_EXIT_FAIL;
    if (gen_env_open(&env, cfg->o) != 0) return CLI_EXIT_FAIL;
    if (gen_dist_open(&dist, cfg->o, env.m) == 0 &&
        (rc = gen_dist_one_replica("serve", &dist)) == 0) {
        struct gpo_engine_opts eo = cfg->o->eo;
        eo.max_queue = cfg->max_queue;
        enum gpo_status s = gpo_engine_create(env.m, env.tok, &eo, cfg->parallel, &eng);
        rc = s == GPO_OK ? gen_follow(eng)
                         : cli_status(s, "rank %d cannot set up the engine", gpo_dist_rank());
    }
    gpo_engine_free(eng);
    gen_dist_close(&dist);
    gen_env_close(&env);
    return rc;
}

int cmd_serve(int argc, char **argv) {
    struct gen_opts o;
    gen_opts_default(&o);
    /* A server's requests bring their own limits; 0 = until the context is full. */
    o.max_tokens = 0;
    /* Requests that are generating keep a token every few decode steps while a
     * long prompt is prefilled (chunked prefill). */
    o.eo.prefill_itl = 2.5;
    struct serve_cfg cfg = {.host = "127.0.0.1", .port = 8080, .parallel = 4, .max_queue = 64,
                            .body_limit = 8u << 20, .o = &o};
    char *key_buf = NULL;
    int64_t n;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            free(key_buf);
            return 0;
        }
        if (cli_is(a, "--host")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            cfg.host = v;
        } else if (cli_is(a, "--port")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_i64(v, 0, 65535, &n)) {
                cli_usage_error("serve", "--port needs a number in [0, 65535], not '%s'", v);
                goto usage_err;
            }
            cfg.port = (int)n;
        } else if (cli_is(a, "--parallel")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_i64(v, 1, 1024, &n)) {
                cli_usage_error("serve", "--parallel needs a number in [1, 1024], not '%s'", v);
                goto usage_err;
            }
            cfg.parallel = (size_t)n;
        } else if (cli_is(a, "--kv-memory")) {
            double g;
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_f64(v, 1e-6, 1 << 20, &g)) {
                cli_usage_error("serve", "--kv-memory needs GiB in (0, 2^20], not '%s'", v);
                goto usage_err;
            }
            o.eo.kv_memory = (uint64_t)(g * 1073741824.0);
        } else if (cli_is(a, "--prefill-itl")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_f64(v, 0, 1000, &o.eo.prefill_itl) ||
                (o.eo.prefill_itl > 0 && o.eo.prefill_itl <= 1)) {
                cli_usage_error("serve", "--prefill-itl needs 0 or a ratio in (1, 1000], not '%s'", v);
                goto usage_err;
            }
        } else if (cli_is(a, "--max-queue")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_i64(v, 0, 1 << 20, &n)) {
                cli_usage_error("serve", "--max-queue needs a number in [0, %d], not '%s'",
                                1 << 20, v);
                goto usage_err;
            }
            /* 0 here means none may wait, the engine's -1. */
            cfg.max_queue = n ? n : -1;
        } else if (cli_is(a, "--max-body")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            if (!cli_parse_i64(v, 1024, (int64_t)1 << 30, &n)) {
                cli_usage_error("serve", "--max-body needs a number in [1024, 2^30], not '%s'", v);
                goto usage_err;
            }
            cfg.body_limit = (size_t)n;
        } else if (cli_is(a, "--api-key")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            cfg.api_key = v;
        } else if (cli_is(a, "--api-key-file")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            free(key_buf);
            if (!(key_buf = read_key(v))) return CLI_EXIT_FAIL;
            cfg.api_key = key_buf;
        } else if (cli_is(a, "--model-name")) {
            if (!(v = cli_value("serve", argc, argv, &i))) goto usage_err;
            cfg.model_name = v;
        } else {
            int r = gen_opts_parse("serve", &o, argc, argv, &i);
            if (r < 0) goto usage_err;
            if (r == 0) {
                cli_usage_error("serve", "unknown option '%s'", a);
                goto usage_err;
            }
        }
    }
    if (cfg.api_key && !cfg.api_key[0]) {
        cli_usage_error("serve", "the API key is empty");
        goto usage_err;
    }
    int rc = gpo_dist_rank() == 0 ? serve_run(&cfg) : serve_follow(&cfg);
    free(key_buf);
    return rc;
usage_err:
    free(key_buf);
    return CLI_EXIT_USAGE;
}
