/* cmd_chat.c - `gptoss chat` (being written). */
#include "cli.h"

int cmd_chat(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return cli_error("'chat' is not implemented yet");
}
