/* fuzz_config.c - libFuzzer target for config.json (`gpo_config_parse`, `make
 * fuzz`).  Any input is either rejected with a status and a message, or gives a
 * configuration that passes gpo_config_validate and keeps the ranges the loader
 * relies on when it sizes tensors and caches. */
#include <math.h>
#include <stdint.h>

#include "fuzz_common.h"
#include "model.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    gpo_set_log_level(GPO_LOG_ERROR); /* keep warnings about odd fields quiet */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct gpo_config c;
    gpo_clear_error();
    enum gpo_status s = gpo_config_parse((const char *)data, size, "fuzz", &c);
    if (s != GPO_OK) {
        FUZZ_CHECK(gpo_last_error()[0] != 0);
        return 0;
    }
    FUZZ_CHECK(gpo_config_validate(&c, "fuzz") == GPO_OK);
    FUZZ_CHECK(c.n_layer >= 1 && c.n_layer <= GPO_MAX_LAYERS);
    FUZZ_CHECK(c.n_embd >= 32 && c.n_embd % 32 == 0);
    FUZZ_CHECK(c.n_ff >= 32 && c.n_ff % 32 == 0);
    FUZZ_CHECK(c.head_dim >= 2 && c.head_dim % 2 == 0);
    FUZZ_CHECK(c.n_head >= 1 && c.n_head_kv >= 1 && c.n_head % c.n_head_kv == 0);
    FUZZ_CHECK(c.n_expert_used >= 1 && c.n_expert_used <= c.n_expert);
    FUZZ_CHECK(c.n_vocab >= 1 && c.sliding_window >= 1 && c.max_position >= 1);
    FUZZ_CHECK(isfinite(c.rope_theta) && isfinite(c.rope_factor) && c.rope_factor >= 1.0);
    FUZZ_CHECK(isfinite(c.rms_eps) && isfinite(c.swiglu_limit));
    for (int64_t l = 0; l < c.n_layer; l++) FUZZ_CHECK(c.layer_sliding[l] <= 1);
    return 0;
}
