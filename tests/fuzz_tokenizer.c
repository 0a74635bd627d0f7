/* fuzz_tokenizer.c - libFuzzer target for encoding and decoding with the real
 * o200k_harmony tokenizer (`make fuzz`).  The first byte picks the mode:
 *   0: encode the rest as ordinary text, 1: encode with special tokens,
 *   2: decode the rest as ids (3 bytes each, spread over -8 .. n_tokens + 7).
 * Encoding valid UTF-8 must give known ids that decode (at once and streamed) to
 * exactly the input; invalid UTF-8 must be GPO_ERR_UTF8 with nothing appended.
 * Decoding must succeed exactly when every id is known, and the streaming
 * decoder must always give valid UTF-8. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

static const gpo_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_tokenizer();
    return 0;
}

static void stream_decode(const int32_t *ids, size_t n, struct gpo_str *out) {
    struct gpo_detok d = {0};
    for (size_t i = 0; i < n; i++) {
        enum gpo_status s = gpo_detok_step(tok, &d, ids[i], out);
        FUZZ_CHECK(s == GPO_OK || s == GPO_ERR_TOKEN);
    }
    FUZZ_CHECK(gpo_detok_flush(&d, out) == GPO_OK);
    FUZZ_CHECK(out->s != NULL && gpo_utf8_valid(out->s, out->n));
}

static void check_encode(const char *text, size_t n, int flags) {
    struct gpo_ids ids = {0};
    struct gpo_str back = {0}, streamed = {0};
    gpo_clear_error();
    enum gpo_status s = gpo_tokenizer_encode(tok, text, n, flags, &ids);
    if (!gpo_utf8_valid(text, n)) {
        FUZZ_CHECK(s == GPO_ERR_UTF8 && ids.n == 0 && gpo_last_error()[0] != 0);
    } else {
        FUZZ_CHECK(s == GPO_OK);
        FUZZ_CHECK(n == 0 || ids.n > 0);
        for (size_t i = 0; i < ids.n; i++)
            FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < gpo_tokenizer_n_tokens(tok));
        if (!(flags & GPO_ENCODE_SPECIAL))
            for (size_t i = 0; i < ids.n; i++)
                FUZZ_CHECK(!gpo_tokenizer_is_special(tok, ids.ids[i]));
        FUZZ_CHECK(gpo_tokenizer_decode(tok, ids.ids, ids.n, &back) == GPO_OK);
        FUZZ_CHECK(back.n == n && memcmp(back.s, text, n) == 0);
        stream_decode(ids.ids, ids.n, &streamed);
        FUZZ_CHECK(streamed.n == n && memcmp(streamed.s, text, n) == 0);
    }
    gpo_ids_free(&ids);
    gpo_str_free(&back);
    gpo_str_free(&streamed);
}

static void check_decode(const uint8_t *data, size_t size) {
    size_t n = size / 3;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    FUZZ_CHECK(ids != NULL);
    int32_t nt = gpo_tokenizer_n_tokens(tok);
    int all_known = 1;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = data[3 * i] | (uint32_t)data[3 * i + 1] << 8 | (uint32_t)data[3 * i + 2] << 16;
        ids[i] = (int32_t)(v % (uint32_t)(nt + 16)) - 8;
        if (gpo_tokenizer_token_bytes(tok, ids[i], NULL, NULL) != GPO_OK) all_known = 0;
    }
    struct gpo_str out = {0}, streamed = {0};
    enum gpo_status s = gpo_tokenizer_decode(tok, ids, n, &out);
    FUZZ_CHECK(all_known ? s == GPO_OK : s == GPO_ERR_TOKEN);
    FUZZ_CHECK(out.s != NULL || s != GPO_OK);
    stream_decode(ids, n, &streamed);
    gpo_str_free(&out);
    gpo_str_free(&streamed);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 3;
    data++, size--;
    if (mode == 2) {
        check_decode(data, size);
        return 0;
    }
    /* An exact-size copy, so reading past the text is caught. */
    char *text = malloc(size ? size : 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    check_encode(text, size, mode == 1 ? GPO_ENCODE_SPECIAL : 0);
    free(text);
    return 0;
}
