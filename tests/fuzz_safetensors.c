/* fuzz_safetensors.c - libFuzzer target for the safetensors header parser (`make
 * fuzz`).  Any input must either be rejected with a status and a message, or yield
 * tensors whose sizes match their shapes and whose data lies wholly inside the
 * input without overlapping; touching each tensor's first and last byte lets the
 * address sanitizer catch a view that strays. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct gpo_st_tensor *t = NULL;
    size_t n = 0;
    gpo_clear_error();
    enum gpo_status s = gpo_st_parse(data, size, "fuzz", &t, &n);
    if (s != GPO_OK) {
        if (t != NULL || n != 0 || gpo_last_error()[0] == 0) __builtin_trap();
        return 0;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t want = gpo_dtype_size(t[i].dtype);
        if (want == 0 || t[i].n_dims < 0 || t[i].n_dims > GPO_ST_MAX_DIMS) __builtin_trap();
        for (int d = 0; d < t[i].n_dims; d++) want *= (uint64_t)t[i].shape[d];
        if (want != t[i].nbytes) __builtin_trap();
        if (t[i].nbytes == 0) continue;
        if (t[i].data != data + t[i].offset || t[i].offset + t[i].nbytes > size) __builtin_trap();
        sink ^= t[i].data[0];
        sink ^= t[i].data[t[i].nbytes - 1];
        for (size_t j = 0; j < i && n <= 256; j++) {
            if (t[j].nbytes == 0) continue;
            if (t[i].offset < t[j].offset + t[j].nbytes && t[j].offset < t[i].offset + t[i].nbytes)
                __builtin_trap();
        }
    }
    (void)sink;
    gpo_st_free_tensors(t, n);
    return 0;
}
