/* cmd_tokenize.c - `gptoss tokenize` (being written). */
#include "cli.h"

int cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'tokenize' is not implemented yet");
}

int cmd_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'detokenize' is not implemented yet");
}
