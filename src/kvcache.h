/* kvcache.h - per-sequence key/value cache: full layers keep every position up to
 * max_seq_len, sliding layers a ring of sliding_window slots.  Keys are stored
 * after RoPE, in fp32.  Internal to the library. */
#ifndef GPO_KVCACHE_H
#define GPO_KVCACHE_H

#include "gpo.h"

struct gpo_kv {
    int64_t n_layer;
    int64_t kv_dim;      /* n_head_kv * head_dim */
    int64_t max_seq;     /* capacity in tokens */
    int64_t window;      /* ring size of sliding layers */
    int64_t len;         /* tokens in the cache */
    uint8_t sliding[GPO_MAX_LAYERS];
    float *k[GPO_MAX_LAYERS], *v[GPO_MAX_LAYERS];
    void *mem;
    uint64_t bytes;
};

/* Slot of absolute position pos in layer l. */
static inline int64_t gpo_kv_slot(const struct gpo_kv *kv, int64_t l, int64_t pos) {
    return kv->sliding[l] ? pos % kv->window : pos;
}

#endif
