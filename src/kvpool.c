/* kvpool.c - the block pool of paged KV caches: sizing, allocation and the free
 * list.  The memory is allocated once, untouched, so a machine only commits the
 * pages of blocks that sequences have used. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvpool.h"
#include "util.h"

static int64_t n_full_layers(const struct gpo_config *c) {
    int64_t n = 0;
    for (int64_t l = 0; l < c->n_layer; l++) n += !c->layer_sliding[l];
    return n;
}

static uint64_t block_bytes_of(const struct gpo_config *c, int64_t kv_dim, int64_t block_tokens) {
    return (uint64_t)n_full_layers(c) * 2 * (uint64_t)block_tokens * (uint64_t)kv_dim * 4;
}

uint64_t gpo_kv_block_bytes(const struct gpo_config *c, int64_t block_tokens) {
    return block_bytes_of(c, gpo_kv_dim_of(c, NULL), block_tokens);
}

enum gpo_status gpo_kv_pool_create(const struct gpo_config *c, const struct gpo_mesh_shard *shard,
                                   int64_t n_blocks, int64_t block_tokens,
                                   struct gpo_kv_pool **out) {
    *out = NULL;
    if (block_tokens < 1 || block_tokens > 4096)
        return gpo_fail(GPO_ERR_ARG, "KV block of %lld positions (1..4096)",
                        (long long)block_tokens);
    if (n_blocks < 1 || n_blocks > INT32_MAX)
        return gpo_fail(GPO_ERR_ARG, "KV pool of %lld blocks (1..%d)", (long long)n_blocks,
                        INT32_MAX);
    const int64_t kv_dim = gpo_kv_dim_of(c, shard);
    GPO_TRY(gpo_kv_check_shard(c, shard));
    uint64_t block_bytes = block_bytes_of(c, kv_dim, block_tokens), bytes;
    if (!mul_u64(block_bytes, (uint64_t)n_blocks, &bytes) || bytes > SIZE_MAX)
        return gpo_fail(GPO_ERR_NOMEM, "KV pool of %lld blocks x %llu bytes does not fit in memory",
                        (long long)n_blocks, (unsigned long long)block_bytes);
    struct gpo_kv_pool *p = calloc(1, sizeof *p);
    if (!p) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    p->block_tokens = block_tokens;
    p->n_blocks = p->n_free = n_blocks;
    p->kv_dim = kv_dim;
    p->block_floats = (int64_t)(block_bytes / 4);
    for (int64_t l = 0, f = 0; l < c->n_layer; l++)
        p->layer_off[l] = c->layer_sliding[l] ? -1 : 2 * block_tokens * p->kv_dim * f++;
    p->bytes = bytes;
    p->mem = gpo_aligned_alloc(bytes);
    p->free_ids = malloc((size_t)n_blocks * sizeof *p->free_ids);
    if (!p->mem || !p->free_ids) {
        gpo_kv_pool_free(p);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate a KV pool of %lld blocks x %llu bytes "
                        "(%.1f MiB)", (long long)n_blocks, (unsigned long long)block_bytes,
                        (double)bytes / 1048576.0);
    }
    /* Low blocks first, so a lightly used pool touches few pages. */
    for (int64_t i = 0; i < n_blocks; i++) p->free_ids[i] = (int32_t)(n_blocks - 1 - i);
    *out = p;
    return GPO_OK;
}

void gpo_kv_pool_free(struct gpo_kv_pool *p) {
    if (!p) return;
    gpo_aligned_free(p->mem);
    free(p->free_ids);
    free(p);
}

/* MemAvailable of /proc/meminfo in bytes; 0 when unknown. */
static uint64_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    fclose(f);
    return (uint64_t)kib * 1024;
}

/* The default pool: what is available after the weights and the rings, less a
 * margin for the rest of the process and the machine (an eighth, at least 1 GiB).
 * Mapped weights already in the page cache count as available, so they are taken
 * off whether or not they are resident, except the pages the copies (--dense q8,
 * the repacked experts) replaced; the copies themselves are memory of the
 * process's own, resident and so not in MemAvailable already. */
static int64_t default_blocks(const gpo_model *m, uint64_t rings, uint64_t block_bytes) {
    struct gpo_model_info inf;
    gpo_model_get_info(m, &inf);
    uint64_t avail = mem_available(), margin = avail / 8;
    if (margin < (1ull << 30)) margin = 1ull << 30;
    const uint64_t mapped = inf.bytes_mapped > inf.bytes_released ? inf.bytes_mapped - inf.bytes_released : 0;
    uint64_t taken = mapped + rings + margin;
    if (avail == 0) return INT64_MAX; /* unknown: the cap decides */
    return avail > taken ? (int64_t)((avail - taken) / block_bytes) : 0;
}

enum gpo_status gpo_engine_kv_plan(const gpo_model *m, const struct gpo_engine_opts *opts,
                                   size_t n_slots, struct gpo_kv_plan *out) {
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t B = GPO_KV_BLOCK_TOKENS;
    int64_t max_seq = opts && opts->max_seq_len > 0 ? opts->max_seq_len : 4096;
    if (max_seq > c->max_position) max_seq = c->max_position;
    *out = (struct gpo_kv_plan){.block_tokens = B, .max_seq_len = max_seq};
    /* A rank's pool and rings hold its shard's KV heads only. */
    const struct gpo_mesh_shard *shard = opts ? opts->shard : NULL;
    GPO_TRY(gpo_kv_check_shard(c, shard));
    out->block_bytes = block_bytes_of(c, gpo_kv_dim_of(c, shard), B);
    out->ring_bytes = gpo_kv_ring_bytes_shard(c, shard, max_seq, GPO_ENGINE_RING_MARGIN);
    /* Never more than every slot at max_seq_len can use, never less than one
     * request of max_seq_len by default. */
    const int64_t per_seq = (max_seq + B - 1) / B;
    const int64_t cap = per_seq * (int64_t)(n_slots ? n_slots : 1);
    const uint64_t bb = out->block_bytes ? out->block_bytes : 1;
    int64_t blocks;
    if (opts && opts->kv_memory > 0) {
        uint64_t n = opts->kv_memory / bb;
        if (n == 0)
            return gpo_fail(GPO_ERR_ARG, "kv_memory of %llu bytes is less than one KV block of "
                            "%lld positions (%llu bytes)", (unsigned long long)opts->kv_memory,
                            (long long)B, (unsigned long long)out->block_bytes);
        blocks = n > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)n;
    } else {
        uint64_t rings;
        if (!mul_u64(out->ring_bytes, (uint64_t)n_slots, &rings)) rings = UINT64_MAX / 2;
        blocks = default_blocks(m, rings, bb);
        if (blocks < per_seq) blocks = per_seq;
    }
    if (blocks > cap) blocks = cap;
    out->blocks = blocks;
    out->pool_bytes = (uint64_t)blocks * out->block_bytes;
    out->max_tokens = blocks * B;
    return GPO_OK;
}
