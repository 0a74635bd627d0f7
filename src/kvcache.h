/* kvcache.h - per-sequence key/value cache: full layers keep every position up to
 * max_seq_len, sliding layers a ring of sliding_window slots (plus an optional
 * margin that lets a conversation rewind a little).  Keys are stored after RoPE,
 * in fp32.  A paged cache (kvpool.h) keeps its full layers in blocks of a pool
 * shared with other sequences instead, taken as it grows; its rings stay its own.
 * Internal to the library. */
#ifndef GPO_KVCACHE_H
#define GPO_KVCACHE_H

#include "gpo.h"
#include "mesh.h"

struct gpo_kv_pool;

struct gpo_kv {
    int64_t n_layer;
    int64_t kv_dim;      /* head_dim x the KV heads it holds (all, or a shard's) */
    int64_t max_seq;     /* capacity in tokens */
    int64_t window;      /* the model's sliding window */
    int64_t ring;        /* slots of a sliding layer: window + margin, at most max_seq */
    int64_t len;         /* tokens in the cache */
    uint8_t sliding[GPO_MAX_LAYERS];
    float *k[GPO_MAX_LAYERS], *v[GPO_MAX_LAYERS]; /* NULL for a paged cache's full layers */
    void *mem;
    uint64_t bytes;      /* of mem */
    /* Paged: the full layers of positions [i*block_tokens, (i+1)*block_tokens) are
     * in pool block blocks[i], for i < n_blocks. */
    struct gpo_kv_pool *pool;
    float *pool_mem;     /* the pool's memory */
    int64_t block_tokens;
    int64_t block_floats;                /* floats per block */
    int64_t layer_off[GPO_MAX_LAYERS];   /* a full layer's keys within a block; its
                                            values follow block_tokens rows later */
    int32_t *blocks;     /* [ceil(max_seq / block_tokens)] */
    int64_t n_blocks;    /* blocks held */
};

/* Floats of one position's keys (or values) in a cache of this shard's KV heads
 * (every head for NULL). */
static inline int64_t gpo_kv_dim_of(const struct gpo_config *c, const struct gpo_mesh_shard *shard) {
    const int64_t heads = shard ? shard->kv_head1 - shard->kv_head0 : c->n_head_kv;
    return heads * c->head_dim;
}

/* Refuse a shard whose KV heads are empty or outside the model's (NULL is fine). */
enum gpo_status gpo_kv_check_shard(const struct gpo_config *c, const struct gpo_mesh_shard *shard);

/* A contiguous cache holding only the KV heads of `shard` (NULL: all of them, as
 * gpo_kv_create_ex). */
enum gpo_status gpo_kv_create_shard(const gpo_model *m, const struct gpo_mesh_shard *shard,
                                    int64_t max_seq_len, int64_t margin, gpo_kv **out);

/* Slot of absolute position pos in layer l of a contiguous layer. */
static inline int64_t gpo_kv_slot(const struct gpo_kv *kv, int64_t l, int64_t pos) {
    return kv->sliding[l] ? pos % kv->ring : pos;
}

/* The key and value rows of position pos in layer l; returns how many positions
 * from pos on follow in memory with stride kv_dim (a ring's end, a block's end or
 * the end of the cache).  A paged position must be below n_blocks * block_tokens. */
static inline int64_t gpo_kv_row(const struct gpo_kv *kv, int64_t l, int64_t pos, float **k,
                                 float **v) {
    const int64_t kvd = kv->kv_dim;
    if (kv->sliding[l] || !kv->pool) {
        int64_t slot = gpo_kv_slot(kv, l, pos);
        *k = kv->k[l] + slot * kvd;
        *v = kv->v[l] + slot * kvd;
        return (kv->sliding[l] ? kv->ring : kv->max_seq) - slot;
    }
    const int64_t B = kv->block_tokens, off = pos % B;
    float *base = kv->pool_mem + kv->blocks[pos / B] * kv->block_floats + kv->layer_off[l];
    *k = base + off * kvd;
    *v = base + (B + off) * kvd;
    return B - off;
}

/* Positions the cache can take without more blocks. */
static inline int64_t gpo_kv_room(const struct gpo_kv *kv) {
    return kv->pool ? kv->n_blocks * kv->block_tokens : kv->max_seq;
}

#endif
