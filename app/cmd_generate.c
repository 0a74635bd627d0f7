/* cmd_generate.c - `gptoss generate` (being written). */
#include "cli.h"

int cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'generate' is not implemented yet");
}
