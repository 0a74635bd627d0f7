/* fuzz_harmony_json.c - libFuzzer target for the harmony conversation JSON loader
 * (`gpo_conv_from_json`) followed by the renderer (`gpo_harmony_render`) with the
 * real tokenizer (`make fuzz`).  A rejected input leaves the conversation empty
 * with a message; an accepted one renders to known ids that end with the prompt
 * of the assistant's turn, or fails (text that is not UTF-8) with a message and
 * nothing appended. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

static const gpo_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_tokenizer();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct gpo_conv c;
    gpo_clear_error();
    enum gpo_status s = gpo_conv_from_json((const char *)data, size, &c);
    if (s != GPO_OK) {
        FUZZ_CHECK(c.n == 0 && c.msgs == NULL && gpo_last_error()[0] != 0);
        return 0;
    }
    struct gpo_ids ids = {0};
    FUZZ_CHECK(gpo_ids_push(&ids, 7) == GPO_OK); /* render appends after what is there */
    s = gpo_harmony_render(tok, &c, &ids);
    if (s == GPO_OK) {
        FUZZ_CHECK(ids.n >= 3 && ids.ids[0] == 7);
        FUZZ_CHECK(ids.ids[ids.n - 2] == GPO_TOK_START && ids.ids[ids.n - 1] == 173781);
        for (size_t i = 0; i < ids.n; i++)
            FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < gpo_tokenizer_n_tokens(tok));
    } else {
        FUZZ_CHECK(s == GPO_ERR_UTF8 && ids.n == 1 && gpo_last_error()[0] != 0);
    }
    gpo_ids_free(&ids);
    /* Every message also renders alone, and a copy renders like the original. */
    for (size_t i = 0; i < c.n; i++) {
        struct gpo_ids one = {0};
        s = gpo_harmony_render_message(tok, &c.msgs[i], 0, &one);
        FUZZ_CHECK(s == GPO_OK || s == GPO_ERR_UTF8);
        gpo_ids_free(&one);
    }
    gpo_conv_free(&c);
    FUZZ_CHECK(c.n == 0 && c.msgs == NULL);
    return 0;
}
