/* cmd_render.c - `gptoss render` (being written). */
#include "cli.h"

int cmd_render(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'render' is not implemented yet");
}
