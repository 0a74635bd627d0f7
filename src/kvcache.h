/* kvcache.h - per-sequence key/value cache: full layers keep every position up to
 * max_seq_len, sliding layers a ring of sliding_window slots (plus an optional
 * margin that lets a conversation rewind a little).  Keys are stored after RoPE,
 * in fp32.  Internal to the library. */
#ifndef GPO_KVCACHE_H
#define GPO_KVCACHE_H

#include "gpo.h"

struct gpo_kv {
    int64_t n_layer;
    int64_t kv_dim;      /* n_head_kv * head_dim */
    int64_t max_seq;     /* capacity in tokens */
    int64_t window;      /* the model's sliding window */
    int64_t ring;        /* slots of a sliding layer: window + margin, at most max_seq */
    int64_t len;         /* tokens in the cache */
    uint8_t sliding[GPO_MAX_LAYERS];
    float *k[GPO_MAX_LAYERS], *v[GPO_MAX_LAYERS];
    void *mem;
    uint64_t bytes;
};

/* Slot of absolute position pos in layer l. */
static inline int64_t gpo_kv_slot(const struct gpo_kv *kv, int64_t l, int64_t pos) {
    return kv->sliding[l] ? pos % kv->ring : pos;
}

#endif
