/* cmd_info.c - `gptoss info` (being written). */
#include "cli.h"

int cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'info' is not implemented yet");
}
