/* cli.h - helpers shared by the `gptoss` subcommands: error printing with the
 * library's detail message, strict number parsing, option values. */
#ifndef GPO_CLI_H
#define GPO_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "gpo.h"

#ifndef GPTOSS_VERSION
#define GPTOSS_VERSION "0.1.0"
#endif

/* Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted
 * (SIGINT, as a shell reports 128 + 2). */
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_INTERRUPTED 130

/* Print "gptoss: error: <msg>" to stderr and return CLI_EXIT_FAIL. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "gptoss: error: <msg>: <gpo_last_error()>" (the status's own text when
 * there is no detail) and return CLI_EXIT_FAIL. */
int cli_status(enum gpo_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print "gptoss <cmd>: <msg>" plus a pointer to --help, return CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The value of option argv[*i] (from "--opt=value" or the next argument); NULL
 * after printing an error when it is missing.  Advances *i past the value. */
const char *cli_value(const char *cmd, int argc, char **argv, int *i);
/* Does argv[i] name option `name` (as "--name" or "--name=...")? */
int cli_is(const char *arg, const char *name);

/* Strict parsers: the whole string must be a number in range; 0 on failure. */
int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int cli_parse_f64(const char *s, double lo, double hi, double *out);
/* Parse "1,2,3" or "1 2 3" into ids; ids must be in [0, n_vocab) when n_vocab > 0. */
int cli_parse_ids(const char *s, int64_t n_vocab, struct gpo_ids *out);

/* Open an output named on the command line: "-" is stdout, anything else a file
 * created (or truncated) now, so a path that cannot be written fails before any
 * work; `what` names the option in the error ("--json").  NULL after printing
 * the OS reason.  Close with cli_close_out, which reports write errors. */
FILE *cli_open_out(const char *path, const char *what, int binary);
/* Flush and close (stdout is flushed, not closed); non-zero after printing an
 * error when a write failed. */
int cli_close_out(FILE *f, const char *path);

/* Read a whole file or stdin ("-") into a NUL-terminated buffer; NULL on failure. */
char *cli_read_file(const char *path, size_t *len_out);

/* Find and load the tokenizer for commands that need no model: --tokenizer FILE,
 * else the folder from -m / $GPT_DIR / $HF_MODEL when given, else the default
 * places.  Prints the error and returns non-zero on failure. */
int cli_open_tokenizer(const char *model_arg, const char *tok_arg, gpo_tokenizer **out);
/* The tokenizer a GGUF model carries, taken when no --tokenizer is given and no
 * tokenizer.json lies beside the model (model_path: a .gguf file or a folder, as
 * gpo_model_resolve_dir gives it).  1 when *out was loaded, 0 when there is none
 * to take (look for tokenizer.json as usual), -1 after printing the error of a
 * broken one. */
int cli_model_tokenizer(const char *model_path, const char *tok_arg, gpo_tokenizer **out);

/* The subcommands. */
int cmd_logits(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_render(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
