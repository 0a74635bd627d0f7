/* fuzz_tokenizer_load.c - libFuzzer target for the tokenizer.json loader
 * (`gpo_tokenizer_load`, `make fuzz`).  The loader takes a path, so each input is
 * written to a memory file and loaded from its /proc/self/fd path.  An input is
 * either rejected with a status and a message, or gives a tokenizer that encodes a
 * fixed text (with and without special tokens) to ids that decode back to exactly
 * that text, whatever vocabulary and pre-tokenizer regex the input declares. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

static struct fuzz_memfile mf;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    gpo_set_log_level(GPO_LOG_ERROR);
    fuzz_memfile_open(&mf, "tokenizer.json");
    return 0;
}

/* Encode text[0..n) and check the round trip through gpo_tokenizer_decode. */
static void round_trip(const gpo_tokenizer *t, const char *text, size_t n, int flags) {
    /* An exact-size copy, so reading one byte past the end is caught. */
    char *copy = malloc(n ? n : 1);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, text, n);
    struct gpo_ids ids = {0};
    struct gpo_str back = {0};
    enum gpo_status s = gpo_tokenizer_encode(t, copy, n, flags, &ids);
    if (s == GPO_OK) {
        for (size_t i = 0; i < ids.n; i++)
            FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < gpo_tokenizer_n_tokens(t));
        FUZZ_CHECK(gpo_tokenizer_decode(t, ids.ids, ids.n, &back) == GPO_OK);
        FUZZ_CHECK(back.n == n && memcmp(back.s, text, n) == 0);
    } else {
        /* A declared regex may fail at match time (PCRE2 limits); never silently. */
        FUZZ_CHECK(gpo_last_error()[0] != 0 && ids.n == 0);
    }
    gpo_str_free(&back);
    gpo_ids_free(&ids);
    free(copy);
}

static const char SAMPLE[] = "Hello, world! It's 2025: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd 123456 "
                             "<|start|>user<|message|>hi<|end|>  \n\n\tx";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_memfile_write(&mf, data, size);
    gpo_tokenizer *t = NULL;
    gpo_clear_error();
    enum gpo_status s = gpo_tokenizer_load(mf.path, &t);
    if (s != GPO_OK) {
        FUZZ_CHECK(t == NULL && gpo_last_error()[0] != 0);
        return 0;
    }
    FUZZ_CHECK(t != NULL && gpo_tokenizer_n_tokens(t) >= 256);
    round_trip(t, SAMPLE, sizeof SAMPLE - 1, 0);
    round_trip(t, SAMPLE, sizeof SAMPLE - 1, GPO_ENCODE_SPECIAL);
    round_trip(t, "a", 1, 0);
    gpo_tokenizer_free(t);
    return 0;
}
