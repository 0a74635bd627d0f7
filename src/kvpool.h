/* kvpool.h - the paged KV memory of an engine: the full-attention layers of all
 * its sequences live in one pool of fixed-size blocks.  A block holds
 * block_tokens positions of every full layer (keys then values per layer), so one
 * block table per sequence covers all layers and a sequence grows one block at a
 * time.  Sliding-window layers stay in each sequence's own small ring.  Internal
 * to the library. */
#ifndef GPO_KVPOOL_H
#define GPO_KVPOOL_H

#include "kvcache.h"

/* Positions per block.  Runs of keys end at block boundaries, so a smaller block
 * could cost attention a little; a larger one wastes more of each request's last
 * block.  Decoding at 4000 positions measured the same with 16, 32 and a
 * contiguous cache (within the noise of a few percent), so 16, which wastes less. */
#define GPO_KV_BLOCK_TOKENS 16

/* Extra ring slots so a continued conversation can rewind past the last answer
 * without prefilling everything again (costs margin x 4 KiB per sliding layer). */
#define GPO_ENGINE_RING_MARGIN 1024

struct gpo_kv_pool {
    int64_t block_tokens;
    int64_t n_blocks;
    int64_t n_free;
    int64_t kv_dim;
    int64_t block_floats;
    int64_t layer_off[GPO_MAX_LAYERS];
    float *mem;        /* [n_blocks][block_floats]; pages are touched as blocks are used */
    uint64_t bytes;    /* of mem */
    int32_t *free_ids; /* [n_free] a stack, the lowest block on top */
};

/* Bytes of one block of block_tokens positions (all full layers, keys and values);
 * 0 for a model without full-attention layers. */
uint64_t gpo_kv_block_bytes(const struct gpo_config *c, int64_t block_tokens);
/* Bytes of one sequence's sliding-window rings (paged caches keep only these). */
uint64_t gpo_kv_ring_bytes(const struct gpo_config *c, int64_t max_seq_len, int64_t margin);
/* The same for the KV heads of a shard (NULL: all). */
uint64_t gpo_kv_ring_bytes_shard(const struct gpo_config *c, const struct gpo_mesh_shard *shard,
                                 int64_t max_seq_len, int64_t margin);

/* The pool of a rank holds only its shard's KV heads (NULL: all of them). */
enum gpo_status gpo_kv_pool_create(const struct gpo_config *c, const struct gpo_mesh_shard *shard,
                                   int64_t n_blocks, int64_t block_tokens,
                                   struct gpo_kv_pool **out);
/* Every cache made on the pool must be freed first. */
void gpo_kv_pool_free(struct gpo_kv_pool *p);

/* A cache whose full layers take blocks of pool p as it grows; shard as the
 * pool's (NULL: all KV heads). */
enum gpo_status gpo_kv_create_paged(const gpo_model *m, const struct gpo_mesh_shard *shard,
                                    struct gpo_kv_pool *p, int64_t max_seq_len, int64_t margin,
                                    gpo_kv **out);
/* Blocks kv still needs so that positions 0 .. n_pos-1 have a home (0 for a
 * contiguous cache). */
int64_t gpo_kv_blocks_short(const gpo_kv *kv, int64_t n_pos);
/* Take those blocks from the pool: GPO_ERR_NOMEM, nothing taken, when it has fewer
 * free; GPO_ERR_CONTEXT beyond max_seq. */
enum gpo_status gpo_kv_reserve(gpo_kv *kv, int64_t n_pos);

#endif
