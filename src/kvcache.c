/* kvcache.c - allocation, sizing and rewinding of the per-sequence KV cache.
 * A contiguous cache is allocated once at creation; a paged one allocates its
 * rings then and takes pool blocks as it grows (gpo_kv_reserve), giving them back
 * when rewound or freed.  Forward passes only write slots. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvpool.h"
#include "model.h"
#include "util.h"

static int64_t ring_of(const struct gpo_config *c, int64_t max_seq, int64_t margin) {
    int64_t w = c->sliding_window + margin;
    return w < max_seq ? w : max_seq;
}

/* Slots a layer keeps in the cache's own memory: none for a paged full layer. */
static uint64_t slots_of(const struct gpo_config *c, int64_t l, int64_t max_seq, int64_t margin,
                         int paged) {
    if (c->layer_sliding[l]) return (uint64_t)ring_of(c, max_seq, margin);
    return paged ? 0 : (uint64_t)max_seq;
}

static uint64_t own_bytes(const struct gpo_config *c, int64_t kv_dim, int64_t max_seq_len,
                          int64_t margin, int paged) {
    uint64_t total = 0, kvd = (uint64_t)kv_dim;
    /* Overflow-checked: a size that does not fit saturates at UINT64_MAX. */
    for (int64_t l = 0; l < c->n_layer; l++) {
        uint64_t layer;
        if (!mul_u64(slots_of(c, l, max_seq_len, margin, paged), kvd * 2 * 4, &layer) ||
            !add_u64(total, layer, &total))
            return UINT64_MAX;
    }
    return total;
}

uint64_t gpo_kv_bytes_for_ex(const struct gpo_config *c, int64_t max_seq_len, int64_t margin) {
    return own_bytes(c, gpo_kv_dim_of(c, NULL), max_seq_len, margin, 0);
}

uint64_t gpo_kv_ring_bytes(const struct gpo_config *c, int64_t max_seq_len, int64_t margin) {
    return gpo_kv_ring_bytes_shard(c, NULL, max_seq_len, margin);
}

uint64_t gpo_kv_ring_bytes_shard(const struct gpo_config *c, const struct gpo_mesh_shard *shard,
                                 int64_t max_seq_len, int64_t margin) {
    return own_bytes(c, gpo_kv_dim_of(c, shard), max_seq_len, margin, 1);
}

/* Physical memory in bytes; 0 when unknown. */
static uint64_t phys_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    uint64_t total;
    if (pages <= 0 || size <= 0 || !mul_u64((uint64_t)pages, (uint64_t)size, &total)) return 0;
    return total;
}

uint64_t gpo_kv_bytes_for(const struct gpo_config *c, int64_t max_seq_len) {
    return gpo_kv_bytes_for_ex(c, max_seq_len, 0);
}

enum gpo_status gpo_kv_check_shard(const struct gpo_config *c, const struct gpo_mesh_shard *shard) {
    if (shard && (shard->kv_head0 < 0 || shard->kv_head1 > c->n_head_kv ||
                  shard->kv_head1 <= shard->kv_head0))
        return gpo_fail(GPO_ERR_ARG, "KV heads [%lld, %lld) of the shard are not within the model's %lld",
                        (long long)shard->kv_head0, (long long)shard->kv_head1,
                        (long long)c->n_head_kv);
    return GPO_OK;
}

/* The cache's own memory (every layer, or only the rings when paged) with the
 * layers laid out in it, for the KV heads of `shard` (NULL: all). */
static enum gpo_status kv_alloc(const gpo_model *m, const struct gpo_mesh_shard *shard,
                                int64_t max_seq_len, int64_t margin, int paged, gpo_kv **out) {
    const struct gpo_config *c = gpo_model_config(m);
    const int64_t kv_dim = gpo_kv_dim_of(c, shard);
    *out = NULL;
    GPO_TRY(gpo_kv_check_shard(c, shard));
    if (margin < 0 || margin > ((int64_t)1 << 30))
        return gpo_fail(GPO_ERR_ARG, "ring margin %lld out of range", (long long)margin);
    if (max_seq_len < 1)
        return gpo_fail(GPO_ERR_ARG, "max_seq_len must be at least 1 (got %lld)", (long long)max_seq_len);
    if (max_seq_len > c->max_position)
        return gpo_fail(GPO_ERR_CONTEXT, "max_seq_len %lld exceeds the model's context of %lld tokens",
                        (long long)max_seq_len, (long long)c->max_position);
    /* One cache larger than the machine's memory can never be filled. */
    uint64_t bytes = own_bytes(c, kv_dim, max_seq_len, margin, paged), phys = phys_bytes();
    if (bytes == UINT64_MAX || bytes > SIZE_MAX || (phys && bytes > phys)) {
        char need[64];
        if (bytes == UINT64_MAX)
            snprintf(need, sizeof need, "more than 2^64 bytes");
        else
            snprintf(need, sizeof need, "%.1f GB (%llu bytes)", (double)bytes / 1e9,
                     (unsigned long long)bytes);
        char limit[64];
        if (phys && bytes != UINT64_MAX)
            snprintf(limit, sizeof limit, "the %.1f GB of memory of this machine",
                     (double)phys / 1e9);
        else
            snprintf(limit, sizeof limit, "this machine can address");
        return gpo_fail(GPO_ERR_NOMEM,
                        "KV cache of %lld positions x %lld layers needs %s, more than %s; "
                        "lower max_seq_len",
                        (long long)max_seq_len, (long long)c->n_layer, need, limit);
    }
    struct gpo_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    kv->n_layer = c->n_layer;
    kv->kv_dim = kv_dim;
    kv->max_seq = max_seq_len;
    kv->window = c->sliding_window;
    kv->ring = ring_of(c, max_seq_len, margin);
    kv->bytes = bytes;
    kv->mem = gpo_aligned_alloc(kv->bytes);
    if (!kv->mem) {
        double mib = (double)kv->bytes / 1048576.0;
        free(kv);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate a KV cache of %.1f MiB for %lld tokens",
                        mib, (long long)max_seq_len);
    }
    float *p = kv->mem;
    for (int64_t l = 0; l < c->n_layer; l++) {
        uint64_t n = slots_of(c, l, max_seq_len, margin, paged) * (uint64_t)kv->kv_dim;
        kv->sliding[l] = c->layer_sliding[l];
        if (n == 0) continue; /* in the pool */
        kv->k[l] = p;
        p += n;
        kv->v[l] = p;
        p += n;
    }
    *out = kv;
    return GPO_OK;
}

enum gpo_status gpo_kv_create(const gpo_model *m, int64_t max_seq_len, gpo_kv **out) {
    return kv_alloc(m, NULL, max_seq_len, 0, 0, out);
}

enum gpo_status gpo_kv_create_ex(const gpo_model *m, int64_t max_seq_len, int64_t margin,
                                 gpo_kv **out) {
    return kv_alloc(m, NULL, max_seq_len, margin, 0, out);
}

enum gpo_status gpo_kv_create_shard(const gpo_model *m, const struct gpo_mesh_shard *shard,
                                    int64_t max_seq_len, int64_t margin, gpo_kv **out) {
    return kv_alloc(m, shard, max_seq_len, margin, 0, out);
}

enum gpo_status gpo_kv_create_paged(const gpo_model *m, const struct gpo_mesh_shard *shard,
                                    struct gpo_kv_pool *p, int64_t max_seq_len, int64_t margin,
                                    gpo_kv **out) {
    const struct gpo_config *c = gpo_model_config(m);
    if (p->kv_dim != gpo_kv_dim_of(c, shard))
        return gpo_fail(GPO_ERR_ARG, "the KV pool holds %lld floats per position, this model's "
                        "shard %lld: made for another model or shard", (long long)p->kv_dim,
                        (long long)gpo_kv_dim_of(c, shard));
    GPO_TRY(kv_alloc(m, shard, max_seq_len, margin, 1, out));
    struct gpo_kv *kv = *out;
    kv->pool = p;
    kv->pool_mem = p->mem;
    kv->block_tokens = p->block_tokens;
    kv->block_floats = p->block_floats;
    for (int64_t l = 0; l < c->n_layer; l++) kv->layer_off[l] = p->layer_off[l];
    int64_t table = (max_seq_len + p->block_tokens - 1) / p->block_tokens;
    if (!(kv->blocks = malloc((size_t)table * sizeof *kv->blocks))) {
        gpo_kv_free(kv);
        *out = NULL;
        return gpo_fail(GPO_ERR_NOMEM, "out of memory for a block table of %lld entries",
                        (long long)table);
    }
    return GPO_OK;
}

int64_t gpo_kv_blocks_short(const gpo_kv *kv, int64_t n_pos) {
    if (!kv->pool) return 0;
    int64_t need = (n_pos + kv->block_tokens - 1) / kv->block_tokens;
    return need > kv->n_blocks ? need - kv->n_blocks : 0;
}

enum gpo_status gpo_kv_reserve(gpo_kv *kv, int64_t n_pos) {
    if (n_pos > kv->max_seq)
        return gpo_fail(GPO_ERR_CONTEXT, "%lld positions exceed the cache's %lld (max_seq_len)",
                        (long long)n_pos, (long long)kv->max_seq);
    int64_t short_by = gpo_kv_blocks_short(kv, n_pos);
    struct gpo_kv_pool *p = kv->pool;
    if (short_by == 0) return GPO_OK;
    if (short_by > p->n_free)
        return gpo_fail(GPO_ERR_NOMEM, "%lld positions need %lld more KV blocks but the pool has "
                        "%lld of %lld free", (long long)n_pos, (long long)short_by,
                        (long long)p->n_free, (long long)p->n_blocks);
    while (short_by-- > 0) kv->blocks[kv->n_blocks++] = p->free_ids[--p->n_free];
    return GPO_OK;
}

/* Give back the blocks past the first `keep`. */
static void release_blocks(gpo_kv *kv, int64_t keep) {
    while (kv->n_blocks > keep) kv->pool->free_ids[kv->pool->n_free++] = kv->blocks[--kv->n_blocks];
}

void gpo_kv_free(gpo_kv *kv) {
    if (!kv) return;
    if (kv->pool) release_blocks(kv, 0);
    free(kv->blocks);
    gpo_aligned_free(kv->mem);
    free(kv);
}

int64_t gpo_kv_len(const gpo_kv *kv) { return kv->len; }
int64_t gpo_kv_capacity(const gpo_kv *kv) { return kv->max_seq; }
uint64_t gpo_kv_bytes(const gpo_kv *kv) { return kv->bytes; }

enum gpo_status gpo_kv_rewind(gpo_kv *kv, int64_t n_keep) {
    if (n_keep < 0 || n_keep > kv->len)
        return gpo_fail(GPO_ERR_ARG, "cannot rewind a cache of %lld tokens to %lld",
                        (long long)kv->len, (long long)n_keep);
    /* The ring holds positions len-ring .. len-1; the token at n_keep needs
     * n_keep-window+1 .. n_keep-1, so those slots must not have been overwritten. */
    int any_sliding = 0;
    for (int64_t l = 0; l < kv->n_layer; l++) any_sliding |= kv->sliding[l];
    int64_t oldest = kv->len > kv->ring ? kv->len - kv->ring : 0;
    int64_t needed = n_keep - kv->window + 1 > 0 ? n_keep - kv->window + 1 : 0;
    if (n_keep > 0 && any_sliding && needed < oldest)
        return gpo_fail(GPO_ERR_UNSUPPORTED,
                        "cannot rewind from %lld to %lld tokens: the sliding-window ring of %lld "
                        "slots has overwritten keys that position %lld needs; prefill again",
                        (long long)kv->len, (long long)n_keep, (long long)kv->ring,
                        (long long)n_keep);
    kv->len = n_keep;
    if (kv->pool) release_blocks(kv, (n_keep + kv->block_tokens - 1) / kv->block_tokens);
    return GPO_OK;
}
