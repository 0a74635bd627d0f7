/* cmd_mkmodel.c - `gptoss mkmodel` (being written). */
#include "cli.h"

int cmd_mkmodel(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'mkmodel' is not implemented yet");
}
