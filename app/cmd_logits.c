/* cmd_logits.c - `gptoss logits` (being written). */
#include "cli.h"

int cmd_logits(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'logits' is not implemented yet");
}
