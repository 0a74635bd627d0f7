/* fuzz_prompts.c - libFuzzer target for the prompts file of `gptoss generate
 * --prompts` (`prompts_parse`, `make fuzz`).  Any input is either rejected with a
 * message, or gives prompts that are all non-empty valid UTF-8. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "prompts.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) { return 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct prompt_list l;
    char err[256] = "";
    if (prompts_parse((const char *)data, size, &l, err, sizeof err) != 0) {
        FUZZ_CHECK(err[0] != 0 && memchr(err, 0, sizeof err) != NULL);
        FUZZ_CHECK(l.items == NULL && l.n == 0);
        return 0;
    }
    FUZZ_CHECK(l.items != NULL);
    for (size_t i = 0; i < l.n; i++) {
        size_t n = strlen(l.items[i]);
        FUZZ_CHECK(n > 0 && gpo_utf8_valid(l.items[i], n));
    }
    prompts_free(&l);
    FUZZ_CHECK(l.items == NULL && l.n == 0);
    return 0;
}
