/* fuzz_sampler.c - libFuzzer target for the sampler (`gpo_sampler_create`,
 * `_accept`, `_sample`; `make fuzz`) fed arbitrary logits (NaN, infinities, huge
 * values) and settings.  Input layout:
 *   bytes 0..1   vocabulary size - 1 (mod 2048)
 *   byte  2      banned ids: 0 none, else every id with id % byte == 0
 *   6 x 5 bytes  temperature, top_p, min_p, presence, frequency, repetition
 *                penalties: a selector byte, then 4 bytes; an even selector takes
 *                a value from a table of edge cases, an odd one the raw float bits
 *   2 bytes      seed
 *   4 bytes      top_k (mod 40), penalty_window (mod 80, minus 2),
 *                penalty_min_special (mod 300, minus 100), n_logprobs (mod 24, minus 2)
 *   1 byte       accepted ids before sampling (mod 16), taken from the logits
 *                bytes as ids mod (n_vocab + 2)
 *   the rest     the logits as float32, repeated to fill the vocabulary
 * Only settings that gpo_sampler_create accepts go on to sampling.  A sample must
 * be an id that is not banned and whose processed logit is above -inf; a failure
 * is allowed only when no such id exists. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "util.h"

#define HEAD (3 + 6 * 5 + 2 + 4 + 1)

int LLVMFuzzerInitialize(int *argc, char ***argv) { return 0; }

static float pick_float(const uint8_t *b) {
    static const float table[] = {0.0f,    1.0f,    0.5f,     2.0f,      1e-45f,   1e-30f,
                                  1e-6f,   0.05f,   0.95f,    100.0f,    1e30f,    3.4e38f,
                                  -1.0f,   -0.0f,   INFINITY, -INFINITY, NAN,      0.999999f,
                                  1e-3f,   1.0001f, 0.1f,     1e-38f,    -3.4e38f, 7.0f};
    if (b[0] & 1) {
        float f;
        memcpy(&f, b + 1, 4);
        return f;
    }
    return table[(b[0] >> 1) % (sizeof table / sizeof *table)];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < HEAD) return 0;
    const uint8_t *h = data;
    int64_t nv = 1 + ((h[0] | h[1] << 8) % 2048);
    uint8_t ban_every = h[2];
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    const uint8_t *f = h + 3;
    p.temperature = pick_float(f);
    p.top_p = pick_float(f + 5);
    p.min_p = pick_float(f + 10);
    p.presence_penalty = pick_float(f + 15);
    p.frequency_penalty = pick_float(f + 20);
    p.repetition_penalty = pick_float(f + 25);
    p.seed = f[30] | (uint64_t)f[31] << 8;
    const uint8_t *k = f + 32;
    p.top_k = k[0] % 40;
    p.penalty_window = k[1] % 80 - 2;
    p.penalty_min_special = k[2] % 300 - 100;
    p.n_logprobs = k[3] % 24 - 2;
    int n_accept = k[4] % 16;
    const uint8_t *body = data + HEAD;
    size_t n_body = size - HEAD, n_in = n_body / 4;

    uint8_t *banned = NULL;
    if (ban_every) {
        banned = calloc((size_t)nv, 1);
        FUZZ_CHECK(banned != NULL);
        for (int64_t i = 0; i < nv; i++) banned[i] = i % ban_every == 0;
    }
    gpo_sampler *s = NULL;
    gpo_clear_error();
    enum gpo_status st = gpo_sampler_create(&p, nv, banned, &s);
    if (st != GPO_OK) {
        FUZZ_CHECK(st == GPO_ERR_ARG && s == NULL && gpo_last_error()[0] != 0);
        free(banned);
        return 0;
    }
    float *logits = malloc((size_t)nv * sizeof *logits);
    float *w = malloc((size_t)nv * sizeof *w);
    FUZZ_CHECK(logits && w);
    for (int64_t i = 0; i < nv; i++) {
        if (n_in) memcpy(&logits[i], body + 4 * (i % n_in), 4);
        else logits[i] = 0.0f;
    }
    for (int a = 0; a < n_accept && n_body; a++) {
        int32_t id = (int32_t)(body[a % n_body] % (nv + 2));
        st = gpo_sampler_accept(s, id);
        FUZZ_CHECK(id < nv ? st == GPO_OK : st == GPO_ERR_TOKEN);
    }
    for (int step = 0; step < 3; step++) {
        struct gpo_logprobs lp;
        int32_t id = -1;
        gpo_sampler_process(s, logits, w);
        int any = 0;
        for (int64_t i = 0; i < nv; i++) any |= w[i] > -INFINITY;
        st = gpo_sampler_sample(s, logits, &id, p.n_logprobs ? &lp : NULL);
        if (st != GPO_OK) {
            FUZZ_CHECK(st == GPO_ERR_ARG && !any && gpo_last_error()[0] != 0);
            break;
        }
        FUZZ_CHECK(id >= 0 && id < nv && !(banned && banned[id]) && w[id] > -INFINITY);
        if (p.n_logprobs) {
            FUZZ_CHECK(lp.n >= 0 && lp.n <= p.n_logprobs);
            for (int32_t j = 0; j < lp.n; j++)
                FUZZ_CHECK(lp.ids[j] >= 0 && lp.ids[j] < nv && !(banned && banned[lp.ids[j]]));
        }
        FUZZ_CHECK(gpo_sampler_accept(s, id) == GPO_OK);
    }
    gpo_sampler_reset(s);
    gpo_sampler_free(s);
    free(w);
    free(logits);
    free(banned);
    return 0;
}
