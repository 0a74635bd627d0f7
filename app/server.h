/* server.h - the HTTP server of `gptoss serve`: libmicrohttpd handler threads
 * parse and validate requests and hand them to one engine thread, which owns the
 * engine and steps it while work exists. */
#ifndef GPO_SERVER_H
#define GPO_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "gen_common.h"

struct serve_cfg {
    const char *host;       /* address to bind (default 127.0.0.1) */
    int port;               /* 0 = any free port (printed) */
    size_t parallel;        /* engine slots: requests generated at once */
    int64_t max_queue;      /* requests that may wait for a slot beyond them */
    const char *api_key;    /* NULL: no key needed */
    const char *model_name; /* NULL: the model folder's name */
    size_t body_limit;      /* bytes of a request body at most */
    struct gen_opts *o;     /* model, tokenizer, engine options, sampling defaults */
};

/* Listen at once (GET /health answers 503 while the model loads), load, serve
 * until SIGINT or SIGTERM, then end the requests in flight and return the exit
 * status (0 after a clean stop). */
int serve_run(const struct serve_cfg *cfg);

/* The `serve` subcommand (cmd_serve.c). */
int cmd_serve(int argc, char **argv);

#endif
