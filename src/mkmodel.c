/* mkmodel.c - random-weight checkpoints with exactly the tensor names, dtypes and
 * shapes of the released GPT-OSS models (spec 4.2 HF layout, 4.3 original layout),
 * plus their config files.  Data is generated and streamed in chunks of a few MiB,
 * so even the 120b shape needs little memory, and it is a pure function of the
 * seed: both layouts hold byte-identical weights, whatever the thread count. */
#include <errno.h>
#include <fnmatch.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "convert.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

/* ------------------------------------------------------------------------- */
/* Presets                                                                   */

struct preset {
    const char *name;
    int64_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_expert, n_expert_used, n_ff, n_vocab,
        sliding_window;
};

/* tiny keeps the real vocabulary so that the real tokenizer works with it. */
static const struct preset presets[] = {
    {"tiny", 4, 64, 4, 2, 64, 8, 4, 64, 201088, 16},
    {"20b", 24, 2880, 64, 8, 64, 32, 4, 2880, 201088, 128},
    {"120b", 36, 2880, 64, 8, 64, 128, 4, 2880, 201088, 128},
};

/* HF writes shards of at most 5 GB (decimal). */
#define SHARD_LIMIT 5000000000ull

/* Longest output folder accepted (file names are appended to it). */
#define PATH_LEN 3072

/* ------------------------------------------------------------------------- */
/* What to write: tensors made of one or more generated parts                */

enum fill {
    FILL_GAUSS,  /* BF16 values mean + std * (approximately normal) */
    FILL_BYTES,  /* uniform random bytes: MXFP4 nibbles */
    FILL_SCALES, /* uniform bytes in [lo, hi]: E8M0 scales */
};

#define NAME_MAX_LEN 112

/* A part is one stream of values keyed by its HF tensor name.  An original-layout
 * tensor that fuses several HF tensors (attn.qkv) is the concatenation of their
 * parts, so both layouts hold the same bytes. */
struct part {
    char key[NAME_MAX_LEN];
    enum fill fill;
    uint64_t nbytes;
    float mean, std;
    int lo, hi;
};

struct tspec {
    char name[NAME_MAX_LEN];
    enum gpo_dtype dtype;
    int n_dims;
    int64_t shape[4];
    int n_parts;
    struct part parts[3];
    uint64_t nbytes;
    int shard;
};

struct tlist {
    struct tspec *t;
    size_t n, cap;
};

/* A new zeroed entry, or NULL when out of memory. */
static struct tspec *tl_push(struct tlist *l) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        struct tspec *q = realloc(l->t, nc * sizeof *q);
        if (!q) return NULL;
        l->t = q;
        l->cap = nc;
    }
    struct tspec *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    return t;
}

/* One HF tensor and how its values are drawn. */
struct source {
    char name[NAME_MAX_LEN];
    enum gpo_dtype dtype;
    int n_dims;
    int64_t shape[4];
    enum fill fill;
    float mean, std;
    int lo, hi;
};

static uint64_t source_bytes(const struct source *s) {
    uint64_t n = gpo_dtype_size(s->dtype);
    for (int i = 0; i < s->n_dims; i++) n *= (uint64_t)s->shape[i];
    return n;
}

static void set_source(struct source *s, const char *name, enum gpo_dtype dt, enum fill fill,
                       float mean, float std, int n_dims, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3) {
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dtype = dt;
    s->fill = fill;
    s->mean = mean;
    s->std = std;
    s->n_dims = n_dims;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->shape[2] = d2;
    s->shape[3] = d3;
}

/* E8M0 scale bytes: the ranges of the golden fixture (built for 128 inputs),
 * shifted by -round(log2(sqrt(n_in / 128))) so that a matvec over n_in inputs
 * keeps about the same output size as in the fixture.  Values stay finite and
 * routing stays varied for the wide models. */
static void scale_range(int64_t n_in, int base_lo, int base_hi, int *lo, int *hi) {
    int shift = -(int)round(0.5 * log2((double)n_in / 128.0));
    *lo = base_lo + shift;
    *hi = base_hi + shift;
}

/* The per-layer HF tensors (spec 4.2) and the init of golden/fixture.json. */
enum {
    S_IN_NORM, S_Q_W, S_Q_B, S_K_W, S_K_B, S_V_W, S_V_B, S_O_W, S_O_B, S_SINKS, S_POST_NORM,
    S_ROUTER_W, S_ROUTER_B, S_GU_BLOCKS, S_GU_SCALES, S_GU_BIAS, S_DN_BLOCKS, S_DN_SCALES,
    S_DN_BIAS, S_COUNT
};

static void layer_sources(const struct preset *p, int64_t l, struct source *s) {
    const int64_t H = p->n_embd, E = p->n_expert, I = p->n_ff;
    const int64_t qw = p->n_head * p->head_dim, kvw = p->n_head_kv * p->head_dim;
    const float sh = (float)sqrt((double)H);
    char pre[64], n[NAME_MAX_LEN];
    snprintf(pre, sizeof pre, "model.layers.%lld.", (long long)l);
#define NM(suffix) (snprintf(n, sizeof n, "%s%s", pre, suffix), n)
    set_source(&s[S_IN_NORM], NM("input_layernorm.weight"), GPO_DT_BF16, FILL_GAUSS, 1.0f, 0.1f,
               1, H, 0, 0, 0);
    set_source(&s[S_Q_W], NM("self_attn.q_proj.weight"), GPO_DT_BF16, FILL_GAUSS, 0, 0.9f / sh,
               2, qw, H, 0, 0);
    set_source(&s[S_Q_B], NM("self_attn.q_proj.bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.2f, 1, qw,
               0, 0, 0);
    set_source(&s[S_K_W], NM("self_attn.k_proj.weight"), GPO_DT_BF16, FILL_GAUSS, 0, 0.9f / sh,
               2, kvw, H, 0, 0);
    set_source(&s[S_K_B], NM("self_attn.k_proj.bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.2f, 1, kvw,
               0, 0, 0);
    set_source(&s[S_V_W], NM("self_attn.v_proj.weight"), GPO_DT_BF16, FILL_GAUSS, 0, 1.0f / sh,
               2, kvw, H, 0, 0);
    set_source(&s[S_V_B], NM("self_attn.v_proj.bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.2f, 1, kvw,
               0, 0, 0);
    set_source(&s[S_O_W], NM("self_attn.o_proj.weight"), GPO_DT_BF16, FILL_GAUSS, 0,
               0.6f / (float)sqrt((double)qw), 2, H, qw, 0, 0);
    set_source(&s[S_O_B], NM("self_attn.o_proj.bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.1f, 1, H, 0,
               0, 0);
    set_source(&s[S_SINKS], NM("self_attn.sinks"), GPO_DT_BF16, FILL_GAUSS, 0, 1.5f, 1,
               p->n_head, 0, 0, 0);
    set_source(&s[S_POST_NORM], NM("post_attention_layernorm.weight"), GPO_DT_BF16, FILL_GAUSS,
               1.0f, 0.1f, 1, H, 0, 0, 0);
    set_source(&s[S_ROUTER_W], NM("mlp.router.weight"), GPO_DT_BF16, FILL_GAUSS, 0, 2.0f / sh, 2,
               E, H, 0, 0);
    set_source(&s[S_ROUTER_B], NM("mlp.router.bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.5f, 1, E, 0,
               0, 0);
    set_source(&s[S_GU_BLOCKS], NM("mlp.experts.gate_up_proj_blocks"), GPO_DT_U8, FILL_BYTES, 0,
               0, 4, E, 2 * I, H / 32, 16);
    set_source(&s[S_GU_SCALES], NM("mlp.experts.gate_up_proj_scales"), GPO_DT_U8, FILL_SCALES, 0,
               0, 3, E, 2 * I, H / 32, 0);
    scale_range(H, 117, 124, &s[S_GU_SCALES].lo, &s[S_GU_SCALES].hi);
    set_source(&s[S_GU_BIAS], NM("mlp.experts.gate_up_proj_bias"), GPO_DT_BF16, FILL_GAUSS, 0,
               0.5f, 2, E, 2 * I, 0, 0);
    set_source(&s[S_DN_BLOCKS], NM("mlp.experts.down_proj_blocks"), GPO_DT_U8, FILL_BYTES, 0, 0,
               4, E, H, I / 32, 16);
    set_source(&s[S_DN_SCALES], NM("mlp.experts.down_proj_scales"), GPO_DT_U8, FILL_SCALES, 0, 0,
               3, E, H, I / 32, 0);
    scale_range(I, 116, 122, &s[S_DN_SCALES].lo, &s[S_DN_SCALES].hi);
    set_source(&s[S_DN_BIAS], NM("mlp.experts.down_proj_bias"), GPO_DT_BF16, FILL_GAUSS, 0, 0.1f,
               2, E, H, 0, 0);
#undef NM
}

enum { G_EMBED, G_NORM, G_LM_HEAD, G_COUNT };

static void global_sources(const struct preset *p, struct source *s) {
    const int64_t H = p->n_embd, V = p->n_vocab;
    set_source(&s[G_EMBED], "model.embed_tokens.weight", GPO_DT_BF16, FILL_GAUSS, 0, 1.0f, 2, V,
               H, 0, 0);
    set_source(&s[G_NORM], "model.norm.weight", GPO_DT_BF16, FILL_GAUSS, 1.0f, 0.1f, 1, H, 0, 0,
               0);
    set_source(&s[G_LM_HEAD], "lm_head.weight", GPO_DT_BF16, FILL_GAUSS, 0,
               2.0f / (float)sqrt((double)H), 2, V, H, 0, 0);
}

/* A tensor made of the given sources concatenated along dimension 0. */
static enum gpo_status add_tensor(struct tlist *l, const char *name,
                                  const struct source *const *src, int n_src) {
    struct tspec *t = tl_push(l);
    if (!t) return gpo_fail(GPO_ERR_NOMEM, "out of memory listing tensors");
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = src[0]->dtype;
    t->n_dims = src[0]->n_dims;
    memcpy(t->shape, src[0]->shape, sizeof t->shape);
    for (int i = 0; i < n_src; i++) {
        struct part *p = &t->parts[i];
        snprintf(p->key, sizeof p->key, "%s", src[i]->name);
        p->fill = src[i]->fill;
        p->nbytes = source_bytes(src[i]);
        p->mean = src[i]->mean;
        p->std = src[i]->std;
        p->lo = src[i]->lo;
        p->hi = src[i]->hi;
        if (i > 0) t->shape[0] += src[i]->shape[0];
        t->nbytes += p->nbytes;
    }
    t->n_parts = n_src;
    return GPO_OK;
}

/* HF layout in natural order: embedding, layers 0.., final norm, lm_head (the
 * order shards are filled in). */
static enum gpo_status list_hf(const struct preset *p, struct tlist *l) {
    struct source g[G_COUNT], s[S_COUNT];
    global_sources(p, g);
    const struct source *one[1];
    one[0] = &g[G_EMBED];
    GPO_TRY(add_tensor(l, g[G_EMBED].name, one, 1));
    for (int64_t li = 0; li < p->n_layer; li++) {
        layer_sources(p, li, s);
        for (int i = 0; i < S_COUNT; i++) {
            one[0] = &s[i];
            GPO_TRY(add_tensor(l, s[i].name, one, 1));
        }
    }
    one[0] = &g[G_NORM];
    GPO_TRY(add_tensor(l, g[G_NORM].name, one, 1));
    one[0] = &g[G_LM_HEAD];
    GPO_TRY(add_tensor(l, g[G_LM_HEAD].name, one, 1));
    return GPO_OK;
}

/* Original layout (spec 4.3, name map 4.4). */
static enum gpo_status list_original(const struct preset *p, struct tlist *l) {
    static const struct {
        const char *name;
        int src[3];
        int n;
    } map[] = {
        {"attn.norm.scale", {S_IN_NORM}, 1},
        {"attn.qkv.weight", {S_Q_W, S_K_W, S_V_W}, 3},
        {"attn.qkv.bias", {S_Q_B, S_K_B, S_V_B}, 3},
        {"attn.sinks", {S_SINKS}, 1},
        {"attn.out.weight", {S_O_W}, 1},
        {"attn.out.bias", {S_O_B}, 1},
        {"mlp.norm.scale", {S_POST_NORM}, 1},
        {"mlp.gate.weight", {S_ROUTER_W}, 1},
        {"mlp.gate.bias", {S_ROUTER_B}, 1},
        {"mlp.mlp1_weight.blocks", {S_GU_BLOCKS}, 1},
        {"mlp.mlp1_weight.scales", {S_GU_SCALES}, 1},
        {"mlp.mlp1_bias", {S_GU_BIAS}, 1},
        {"mlp.mlp2_weight.blocks", {S_DN_BLOCKS}, 1},
        {"mlp.mlp2_weight.scales", {S_DN_SCALES}, 1},
        {"mlp.mlp2_bias", {S_DN_BIAS}, 1},
    };
    struct source g[G_COUNT], s[S_COUNT];
    const struct source *src[3];
    char name[NAME_MAX_LEN];
    global_sources(p, g);
    src[0] = &g[G_EMBED];
    GPO_TRY(add_tensor(l, "embedding.weight", src, 1));
    for (int64_t li = 0; li < p->n_layer; li++) {
        layer_sources(p, li, s);
        for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
            for (int k = 0; k < map[i].n; k++) src[k] = &s[map[i].src[k]];
            snprintf(name, sizeof name, "block.%lld.%s", (long long)li, map[i].name);
            GPO_TRY(add_tensor(l, name, src, map[i].n));
        }
    }
    src[0] = &g[G_NORM];
    GPO_TRY(add_tensor(l, "norm.scale", src, 1));
    src[0] = &g[G_LM_HEAD];
    GPO_TRY(add_tensor(l, "unembedding.weight", src, 1));
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Deterministic random data                                                 */

/* Each part is cut into blocks of BLOCK bytes; block b of part `key` draws from
 * its own generator seeded by (seed, key, b).  Any chunk can thus be made on its
 * own and gives the same bytes in either layout. */
#define BLOCK (64u << 10)
#define CHUNK (8u << 20) /* a multiple of BLOCK */


/* xoshiro256** */
static inline uint64_t rng_next(uint64_t s[4]) {
    uint64_t r = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return r;
}

static uint64_t key_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static void fill_block(const struct part *p, uint64_t seed, uint64_t khash, uint64_t block,
                       uint8_t *dst, size_t n) {
    uint64_t x = seed ^ (khash * 0xd6e8feb86659fd93ull) ^ (block * 0xa0761d6478bd642full);
    uint64_t s[4];
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&x);
    size_t i = 0;
    switch (p->fill) {
    case FILL_GAUSS: {
        /* Irwin-Hall: the sum of four uniform 16-bit draws is close to normal (its
         * tails stop at 3.5 sigma, which suits weights).  Mean 131070, standard
         * deviation sqrt((65536^2 - 1) / 3). */
        const float inv_sd = 1.0f / 37837.2265f;
        for (; i + 2 <= n; i += 2) {
            uint64_t r = rng_next(s);
            int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) +
                          (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48);
            float z = (float)(sum - 131070) * inv_sd;
            uint16_t b = f32_to_bf16(p->mean + p->std * z);
            dst[i] = (uint8_t)b;
            dst[i + 1] = (uint8_t)(b >> 8);
        }
        break;
    }
    case FILL_BYTES:
        for (; i + 8 <= n; i += 8) {
            uint64_t r = rng_next(s);
            memcpy(dst + i, &r, 8);
        }
        if (i < n) {
            uint64_t r = rng_next(s);
            for (; i < n; i++, r >>= 8) dst[i] = (uint8_t)r;
        }
        break;
    case FILL_SCALES: {
        const uint32_t range = (uint32_t)(p->hi - p->lo + 1);
        while (i < n) {
            uint64_t r = rng_next(s);
            for (int k = 0; k < 8 && i < n; k++, i++, r >>= 8)
                dst[i] = (uint8_t)(p->lo + (int)(((r & 0xff) * range) >> 8));
        }
        break;
    }
    }
}

/* ------------------------------------------------------------------------- */
/* Writing                                                                   */

/* Generation overlaps with writing: the main thread fills one chunk while a
 * writer thread hands the previous one to the file (the write system calls cost
 * as much CPU time as the generation).  Plain threads rather than OpenMP, whose
 * idle workers would spin for as long as the disk is the bottleneck. */
struct pipe {
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t *buf[2]; /* CHUNK bytes each */
    int next;        /* the buffer the main thread fills next */
    int busy, quit;  /* a job is posted and not finished; the thread should end */
    struct gpo_st_writer *w;
    const uint8_t *data;
    size_t len;
    enum gpo_status err; /* the first failure of the writer thread, and its message */
    char msg[1024];
};

static void *pipe_thread(void *arg) {
    struct pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->busy && !p->quit) pthread_cond_wait(&p->cv, &p->mu);
        if (!p->busy) break;
        struct gpo_st_writer *w = p->w;
        const uint8_t *data = p->data;
        size_t len = p->len;
        int skip = p->err != GPO_OK;
        pthread_mutex_unlock(&p->mu);
        enum gpo_status s = skip ? GPO_OK : gpo_st_writer_write(w, data, len);
        pthread_mutex_lock(&p->mu);
        if (s != GPO_OK && p->err == GPO_OK) {
            /* The message is thread-local: carry it over to the main thread. */
            p->err = s;
            snprintf(p->msg, sizeof p->msg, "%s", gpo_last_error());
        }
        p->busy = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Wait until the writer thread is idle; its first failure, if any, is returned
 * (and keeps being returned). */
static enum gpo_status pipe_drain(struct pipe *p) {
    pthread_mutex_lock(&p->mu);
    while (p->busy) pthread_cond_wait(&p->cv, &p->mu);
    enum gpo_status s = p->err;
    pthread_mutex_unlock(&p->mu);
    if (s != GPO_OK) return gpo_fail(s, "%s", p->msg);
    return GPO_OK;
}

/* Queue data[0..len) for w.  The previous job is finished first, so the buffer
 * it used may be filled again as soon as this returns. */
static enum gpo_status pipe_submit(struct pipe *p, struct gpo_st_writer *w, const uint8_t *data,
                                   size_t len) {
    GPO_TRY(pipe_drain(p));
    pthread_mutex_lock(&p->mu);
    p->w = w;
    p->data = data;
    p->len = len;
    p->busy = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return GPO_OK;
}

static enum gpo_status pipe_start(struct pipe *p) {
    memset(p, 0, sizeof *p);
    p->buf[0] = malloc(CHUNK);
    p->buf[1] = malloc(CHUNK);
    if (!p->buf[0] || !p->buf[1]) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, pipe_thread, p) != 0) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        return gpo_fail(GPO_ERR_INTERNAL, "cannot start the writer thread");
    }
    p->started = 1;
    return GPO_OK;
}

static void pipe_stop(struct pipe *p) {
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->quit = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
    free(p->buf[0]);
    free(p->buf[1]);
    memset(p, 0, sizeof *p);
}

struct writer_state {
    uint64_t seed;
    struct pipe pipe;
    uint64_t done, total;
    double t0, last_report;
    /* Files created so far, removed again if anything fails. */
    char **created;
    size_t n_created, cap_created;
};

static enum gpo_status note_created(struct writer_state *ws, const char *path) {
    if (ws->n_created == ws->cap_created) {
        size_t nc = ws->cap_created ? ws->cap_created * 2 : 16;
        char **q = realloc(ws->created, nc * sizeof *q);
        if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
        ws->created = q;
        ws->cap_created = nc;
    }
    ws->created[ws->n_created] = strdup(path);
    if (!ws->created[ws->n_created]) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    ws->n_created++;
    return GPO_OK;
}

static void report(struct writer_state *ws, int force) {
    double now = gpo_now();
    if (!force && now - ws->last_report < 2.0) return;
    ws->last_report = now;
    double dt = now - ws->t0 > 1e-9 ? now - ws->t0 : 1e-9;
    gpo_log(GPO_LOG_INFO, "mkmodel: %.2f of %.2f GB written (%.0f%%), %.0f MB/s",
            (double)ws->done / 1e9, (double)ws->total / 1e9,
            ws->total ? 100.0 * (double)ws->done / (double)ws->total : 100.0,
            (double)ws->done / 1e6 / dt);
}

static enum gpo_status write_part(struct writer_state *ws, struct gpo_st_writer *w,
                                  const struct part *p) {
    const uint64_t kh = key_hash(p->key);
    for (uint64_t off = 0; off < p->nbytes; off += CHUNK) {
        const size_t len = (size_t)(p->nbytes - off < CHUNK ? p->nbytes - off : CHUNK);
        uint8_t *buf = ws->pipe.buf[ws->pipe.next];
        ws->pipe.next ^= 1;
        for (size_t at = 0; at < len; at += BLOCK)
            fill_block(p, ws->seed, kh, (off + at) / BLOCK, buf + at,
                       len - at < BLOCK ? len - at : BLOCK);
        GPO_TRY(pipe_submit(&ws->pipe, w, buf, len));
        ws->done += len;
        report(ws, 0);
    }
    return GPO_OK;
}

static int cmp_tspec_name(const void *a, const void *b) {
    return strcmp((*(const struct tspec *const *)a)->name, (*(const struct tspec *const *)b)->name);
}

/* Write tensors t[i] with t[i].shard == shard (all when shard < 0) to path, sorted by
 * name as the released files are. */
static enum gpo_status write_file(struct writer_state *ws, const char *path, const struct tlist *l,
                                  int shard) {
    enum gpo_status s = GPO_OK;
    struct gpo_st_writer w = {0};
    const struct tspec **sel = malloc((l->n ? l->n : 1) * sizeof *sel);
    size_t n = 0;
    if (!sel) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < l->n; i++)
        if (shard < 0 || l->t[i].shard == shard) sel[n++] = &l->t[i];
    qsort(sel, n, sizeof *sel, cmp_tspec_name);

    s = gpo_st_writer_open(&w, path);
    if (s != GPO_OK) goto cleanup;
    s = note_created(ws, path);
    for (size_t i = 0; i < n && s == GPO_OK; i++)
        s = gpo_st_writer_declare(&w, sel[i]->name, sel[i]->dtype, sel[i]->n_dims, sel[i]->shape);
    for (size_t i = 0; i < n && s == GPO_OK; i++)
        for (int k = 0; k < sel[i]->n_parts && s == GPO_OK; k++)
            s = write_part(ws, &w, &sel[i]->parts[k]);
    /* The writer thread must be done with w before it is closed. */
    enum gpo_status drained = pipe_drain(&ws->pipe);
    if (s == GPO_OK) s = drained;
    if (s == GPO_OK)
        s = gpo_st_writer_close(&w);
    else
        gpo_st_writer_abort(&w);
cleanup:
    free(sel);
    return s;
}

static enum gpo_status write_text(struct writer_state *ws, const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return gpo_fail(GPO_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    enum gpo_status s = note_created(ws, path);
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    int err = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    if (bad && s == GPO_OK) s = gpo_fail(GPO_ERR_IO, "writing %s: %s", path, strerror(err));
    return s;
}

static enum gpo_status appendf(struct gpo_str *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static enum gpo_status appendf(struct gpo_str *o, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) return gpo_fail(GPO_ERR_INTERNAL, "line too long");
    return gpo_str_append(o, buf, (size_t)n);
}

/* HF config.json (spec 1.3), laid out like the released file. */
static enum gpo_status hf_config(const struct preset *p, struct gpo_str *o) {
    enum gpo_status s = appendf(
        o,
        "{\n  \"architectures\": [\n    \"GptOssForCausalLM\"\n  ],\n"
        "  \"model_type\": \"gpt_oss\",\n  \"num_hidden_layers\": %lld,\n"
        "  \"num_local_experts\": %lld,\n  \"num_experts_per_tok\": %lld,\n"
        "  \"experts_per_token\": %lld,\n  \"hidden_size\": %lld,\n",
        (long long)p->n_layer, (long long)p->n_expert, (long long)p->n_expert_used,
        (long long)p->n_expert_used, (long long)p->n_embd);
    if (s == GPO_OK)
        s = appendf(o,
                    "  \"intermediate_size\": %lld,\n  \"head_dim\": %lld,\n"
                    "  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n"
                    "  \"vocab_size\": %lld,\n  \"max_position_embeddings\": 131072,\n"
                    "  \"initial_context_length\": 4096,\n  \"rope_theta\": 150000.0,\n",
                    (long long)p->n_ff, (long long)p->head_dim, (long long)p->n_head,
                    (long long)p->n_head_kv, (long long)p->n_vocab);
    if (s == GPO_OK)
        s = appendf(o, "  \"rope_scaling\": {\n    \"rope_type\": \"yarn\",\n"
                       "    \"factor\": 32.0,\n"
                       "    \"beta_fast\": 32.0,\n    \"beta_slow\": 1.0,\n"
                       "    \"original_max_position_embeddings\": 4096,\n"
                       "    \"truncate\": false\n  },\n");
    if (s == GPO_OK)
        s = appendf(o, "  \"sliding_window\": %lld,\n  \"layer_types\": [\n",
                    (long long)p->sliding_window);
    for (int64_t l = 0; l < p->n_layer && s == GPO_OK; l++)
        s = appendf(o, "    \"%s\"%s\n", l % 2 == 0 ? "sliding_attention" : "full_attention",
                    l + 1 < p->n_layer ? "," : "");
    if (s == GPO_OK)
        s = appendf(o, "  ],\n  \"rms_norm_eps\": 1e-05,\n  \"swiglu_limit\": 7.0,\n"
                       "  \"hidden_act\": \"silu\",\n  \"attention_bias\": true,\n"
                       "  \"attention_dropout\": 0.0,\n  \"tie_word_embeddings\": false,\n"
                       "  \"eos_token_id\": 200002,\n  \"pad_token_id\": 199999,\n"
                       "  \"router_aux_loss_coef\": 0.9,\n  \"output_router_logits\": false,\n");
    if (s == GPO_OK)
        s = appendf(o, "  \"initializer_range\": 0.02,\n  \"use_cache\": true,\n"
                       "  \"torch_dtype\": \"bfloat16\",\n  \"quantization_config\": {\n"
                       "    \"quant_method\": \"mxfp4\",\n    \"modules_to_not_convert\": [\n"
                       "      \"model.layers.*.self_attn\",\n      \"model.layers.*.mlp.router\",\n"
                       "      \"model.embed_tokens\",\n      \"lm_head\"\n    ]\n  }\n}\n");
    return s;
}

/* original/config.json: exactly the 16 keys of the reference's ModelConfig (spec 1.2). */
static enum gpo_status original_config(const struct preset *p, struct gpo_str *o) {
    return appendf(o,
                   "{\n  \"num_hidden_layers\": %lld,\n  \"num_experts\": %lld,\n"
                   "  \"experts_per_token\": %lld,\n  \"vocab_size\": %lld,\n"
                   "  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n"
                   "  \"swiglu_limit\": 7.0,\n  \"head_dim\": %lld,\n"
                   "  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n"
                   "  \"sliding_window\": %lld,\n  \"initial_context_length\": 4096,\n"
                   "  \"rope_theta\": 150000.0,\n  \"rope_scaling_factor\": 32.0,\n"
                   "  \"rope_ntk_alpha\": 1.0,\n  \"rope_ntk_beta\": 32.0\n}\n",
                   (long long)p->n_layer, (long long)p->n_expert, (long long)p->n_expert_used,
                   (long long)p->n_vocab, (long long)p->n_embd, (long long)p->n_ff,
                   (long long)p->head_dim, (long long)p->n_head, (long long)p->n_head_kv,
                   (long long)p->sliding_window);
}

static enum gpo_status sorted_view(const struct tlist *l, const struct tspec ***out) {
    const struct tspec **v = malloc((l->n ? l->n : 1) * sizeof *v);
    if (!v) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < l->n; i++) v[i] = &l->t[i];
    qsort(v, l->n, sizeof *v, cmp_tspec_name);
    *out = v;
    return GPO_OK;
}

/* original/dtypes.json: name -> BF16 / FP4 (blocks) / UE8 (scales). */
static enum gpo_status dtypes_json(const struct tlist *l, struct gpo_str *o) {
    const struct tspec **v;
    GPO_TRY(sorted_view(l, &v));
    enum gpo_status s = appendf(o, "{\n");
    for (size_t i = 0; i < l->n && s == GPO_OK; i++) {
        const char *kind = "BF16";
        if (v[i]->parts[0].fill == FILL_BYTES) kind = "FP4";
        if (v[i]->parts[0].fill == FILL_SCALES) kind = "UE8";
        s = appendf(o, "  \"%s\": \"%s\"%s\n", v[i]->name, kind, i + 1 < l->n ? "," : "");
    }
    if (s == GPO_OK) s = appendf(o, "}\n");
    free(v);
    return s;
}

static enum gpo_status index_json(const struct tlist *l, char (*shard_names)[64], uint64_t total,
                                  struct gpo_str *o) {
    const struct tspec **v;
    GPO_TRY(sorted_view(l, &v));
    enum gpo_status s = appendf(o, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                   "  \"weight_map\": {\n",
                                (unsigned long long)total);
    for (size_t i = 0; i < l->n && s == GPO_OK; i++)
        s = appendf(o, "    \"%s\": \"%s\"%s\n", v[i]->name, shard_names[v[i]->shard],
                    i + 1 < l->n ? "," : "");
    if (s == GPO_OK) s = appendf(o, "  }\n}\n");
    free(v);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Folder handling                                                           */

static enum gpo_status make_dir(const char *path, int *created) {
    *created = 0;
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return gpo_fail(GPO_ERR_IO, "%s exists and is not a folder", path);
        return GPO_OK;
    }
    /* Create missing parents first, as mkdir -p does. */
    char *tmp = strdup(path);
    if (!tmp) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
            enum gpo_status s = gpo_fail(GPO_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
            free(tmp);
            return s;
        }
        *p = '/';
    }
    free(tmp);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return gpo_fail(GPO_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    *created = 1;
    return GPO_OK;
}

/* Checkpoint files an earlier run may have left in dir (say a sharded index next
 * to the single file written now): they are replaced, so the folder holds one
 * model. */
static int stale_name(const char *n) {
    return strcmp(n, "model.safetensors") == 0 || strcmp(n, "model.safetensors.index.json") == 0 ||
           fnmatch("model-*-of-*.safetensors", n, 0) == 0;
}

/* Bytes that removing the stale files of dir gives back. */
static uint64_t stale_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    uint64_t total = 0;
    struct dirent *de;
    char path[PATH_LEN + 512];
    struct stat sb;
    while ((de = readdir(d)) != NULL) {
        if (!stale_name(de->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)) total += (uint64_t)sb.st_size;
    }
    closedir(d);
    return total;
}

static enum gpo_status remove_stale(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return GPO_OK;
    enum gpo_status s = GPO_OK;
    struct dirent *de;
    char path[PATH_LEN + 512];
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (!stale_name(n)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, n);
        if (unlink(path) != 0 && errno != ENOENT) {
            s = gpo_fail(GPO_ERR_IO, "cannot remove the old %s: %s", path, strerror(errno));
            break;
        }
    }
    closedir(d);
    return s;
}

/* ------------------------------------------------------------------------- */

enum gpo_status gpo_mkmodel(const struct gpo_mkmodel_opts *opts) {
    enum gpo_status s = GPO_OK;
    const struct preset *p = NULL;
    struct tlist hf = {0}, orig = {0};
    struct writer_state ws = {0};
    struct gpo_str text = {0};
    char(*shard_names)[64] = NULL;
    char path[PATH_LEN + 64], odir[PATH_LEN];
    int created_dir = 0, created_odir = 0, n_shards = 0;

    if (!opts || !opts->out_dir || !opts->out_dir[0] || !opts->preset)
        return gpo_fail(GPO_ERR_ARG, "mkmodel needs a preset and an output folder");
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (strcmp(opts->preset, presets[i].name) == 0) p = &presets[i];
    if (!p)
        return gpo_fail(GPO_ERR_ARG, "unknown preset '%s' (known: tiny, 20b, 120b)", opts->preset);
    if (!opts->layout_hf && !opts->layout_original)
        return gpo_fail(GPO_ERR_ARG, "mkmodel: no layout chosen (hf, original or both)");
    if (strlen(opts->out_dir) > PATH_LEN - 64)
        return gpo_fail(GPO_ERR_ARG, "output path too long: %.100s...", opts->out_dir);
    snprintf(odir, sizeof odir, "%s/original", opts->out_dir);

    if (opts->layout_hf) {
        s = list_hf(p, &hf);
        if (s != GPO_OK) goto cleanup;
        /* Fill shards in natural order, as many as the size needs. */
        uint64_t in_shard = 0, total = 0;
        for (size_t i = 0; i < hf.n; i++) {
            if (in_shard > 0 && in_shard + hf.t[i].nbytes > SHARD_LIMIT) {
                n_shards++;
                in_shard = 0;
            }
            hf.t[i].shard = n_shards;
            in_shard += hf.t[i].nbytes;
            total += hf.t[i].nbytes;
        }
        n_shards++;
        shard_names = calloc((size_t)n_shards, sizeof *shard_names);
        if (!shard_names) {
            s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        /* Zero-based numbering with "of" the last index, like the released files. */
        for (int k = 0; k < n_shards; k++)
            if (n_shards == 1)
                snprintf(shard_names[k], sizeof shard_names[k], "model.safetensors");
            else
                snprintf(shard_names[k], sizeof shard_names[k], "model-%05d-of-%05d.safetensors",
                         k, n_shards - 1);
        ws.total += total;
    }
    if (opts->layout_original) {
        s = list_original(p, &orig);
        if (s != GPO_OK) goto cleanup;
        for (size_t i = 0; i < orig.n; i++) ws.total += orig.t[i].nbytes;
    }

    s = make_dir(opts->out_dir, &created_dir);
    if (s != GPO_OK) goto cleanup;
    if (opts->layout_original) {
        s = make_dir(odir, &created_odir);
        if (s != GPO_OK) goto cleanup;
    }
    /* Space first: an old checkpoint is only deleted once the new one fits in
     * the free space plus what deleting it gives back. */
    struct statvfs vfs;
    if (statvfs(opts->out_dir, &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize, old = 0;
        if (opts->layout_hf) old += stale_bytes(opts->out_dir);
        if (opts->layout_original) old += stale_bytes(odir);
        if (avail + old < ws.total + (64u << 20)) {
            s = gpo_fail(GPO_ERR_IO,
                         "%s: the %s checkpoint needs %.2f GB, only %.2f GB are free%s; nothing "
                         "was deleted",
                         opts->out_dir, p->name, (double)ws.total / 1e9, (double)(avail + old) / 1e9,
                         old ? " (counting the old checkpoint files it would replace)" : "");
            goto cleanup;
        }
    }
    if (opts->layout_hf) {
        s = remove_stale(opts->out_dir);
        if (s != GPO_OK) goto cleanup;
    }
    if (opts->layout_original) {
        s = remove_stale(odir);
        if (s != GPO_OK) goto cleanup;
    }

    ws.seed = opts->seed;
    s = pipe_start(&ws.pipe);
    if (s != GPO_OK) goto cleanup;
    ws.t0 = ws.last_report = gpo_now();
    gpo_log(GPO_LOG_INFO, "mkmodel: writing the %s preset (%.2f GB, seed %llu) to %s", p->name,
            (double)ws.total / 1e9, (unsigned long long)opts->seed, opts->out_dir);

    if (opts->layout_hf) {
        for (int k = 0; k < n_shards && s == GPO_OK; k++) {
            snprintf(path, sizeof path, "%s/%s", opts->out_dir, shard_names[k]);
            s = write_file(&ws, path, &hf, k);
        }
        if (s == GPO_OK && n_shards > 1) {
            uint64_t total = 0;
            for (size_t i = 0; i < hf.n; i++) total += hf.t[i].nbytes;
            s = index_json(&hf, shard_names, total, &text);
            snprintf(path, sizeof path, "%s/model.safetensors.index.json", opts->out_dir);
            if (s == GPO_OK) s = write_text(&ws, path, text.s);
            gpo_str_free(&text);
        }
        if (s == GPO_OK) s = hf_config(p, &text);
        snprintf(path, sizeof path, "%s/config.json", opts->out_dir);
        if (s == GPO_OK) s = write_text(&ws, path, text.s);
        gpo_str_free(&text);
        if (s != GPO_OK) goto cleanup;
    }
    if (opts->layout_original) {
        snprintf(path, sizeof path, "%s/model.safetensors", odir);
        s = write_file(&ws, path, &orig, -1);
        if (s == GPO_OK) s = original_config(p, &text);
        snprintf(path, sizeof path, "%s/config.json", odir);
        if (s == GPO_OK) s = write_text(&ws, path, text.s);
        gpo_str_free(&text);
        if (s == GPO_OK) s = dtypes_json(&orig, &text);
        snprintf(path, sizeof path, "%s/dtypes.json", odir);
        if (s == GPO_OK) s = write_text(&ws, path, text.s);
        gpo_str_free(&text);
        if (s != GPO_OK) goto cleanup;
    }
    report(&ws, 1);
    double dt = gpo_now() - ws.t0;
    gpo_log(GPO_LOG_INFO, "mkmodel: wrote %.2f GB in %.1f s (%.0f MB/s) to %s",
            (double)ws.done / 1e9, dt, (double)ws.done / 1e6 / (dt > 1e-9 ? dt : 1e-9),
            opts->out_dir);

cleanup:
    if (s != GPO_OK) {
        /* Leave no partial checkpoint behind. */
        for (size_t i = 0; i < ws.n_created; i++) unlink(ws.created[i]);
        if (created_odir) rmdir(odir);
        if (created_dir) rmdir(opts->out_dir);
    }
    for (size_t i = 0; i < ws.n_created; i++) free(ws.created[i]);
    free(ws.created);
    pipe_stop(&ws.pipe);
    free(shard_names);
    gpo_str_free(&text);
    free(hf.t);
    free(orig.t);
    return s;
}

/* ------------------------------------------------------------------------- */
/* Straight into a GGUF file                                                 */

/* The generator as a gpo_wsource: any byte range of any HF tensor is made on
 * demand from the blocks that cover it, so nothing is written twice and the
 * values are those gpo_mkmodel writes for the same seed. */
struct gen_source {
    const struct preset *p;
    uint64_t seed;
    int64_t layer; /* the layer `s` describes; -2 before the first */
    struct source g[G_COUNT], s[S_COUNT];
    uint8_t *scratch;
    size_t cap;
};

static const struct source *gen_find(struct gen_source *gs, int64_t layer, enum gpo_wid id) {
    if (layer < 0) return id <= GPO_WID_UNEMBED ? &gs->g[id] : NULL;
    if (id < GPO_WID_ATTN_NORM || id >= GPO_WID_COUNT_) return NULL;
    if (layer != gs->layer) {
        layer_sources(gs->p, layer, gs->s);
        gs->layer = layer;
    }
    /* gpo_wid lists the per-layer weights in the order of S_*. */
    return &gs->s[id - GPO_WID_ATTN_NORM];
}

static enum gpo_dtype gen_dtype(void *user, int64_t layer, enum gpo_wid id) {
    const struct source *src = gen_find(user, layer, id);
    return src ? src->dtype : GPO_DT_U8;
}

static enum gpo_status gen_read(void *user, int64_t layer, enum gpo_wid id, uint64_t off,
                                uint64_t len, void *buf, const void **out) {
    struct gen_source *gs = user;
    const struct source *src = gen_find(gs, layer, id);
    const uint64_t total = src ? source_bytes(src) : 0;
    if (!src || off > total || len > total - off)
        return gpo_fail(GPO_ERR_INTERNAL, "mkmodel: read of %llu bytes at %llu outside weight "
                        "%d of layer %lld", (unsigned long long)len, (unsigned long long)off,
                        (int)id, (long long)layer);
    *out = buf;
    if (len == 0) return GPO_OK;
    struct part pt = {0};
    snprintf(pt.key, sizeof pt.key, "%s", src->name);
    pt.fill = src->fill;
    pt.nbytes = total;
    pt.mean = src->mean;
    pt.std = src->std;
    pt.lo = src->lo;
    pt.hi = src->hi;
    const uint64_t b0 = off / BLOCK, b1 = (off + len - 1) / BLOCK;
    const uint64_t span = (b1 - b0 + 1) * BLOCK;
    if (span > gs->cap) {
        uint8_t *q = realloc(gs->scratch, (size_t)span);
        if (!q) return gpo_fail(GPO_ERR_NOMEM, "out of memory (%llu bytes)",
                                (unsigned long long)span);
        gs->scratch = q;
        gs->cap = (size_t)span;
    }
    const uint64_t kh = key_hash(pt.key);
    for (uint64_t b = b0; b <= b1; b++) {
        const uint64_t at = b * BLOCK, n = total - at < BLOCK ? total - at : BLOCK;
        fill_block(&pt, gs->seed, kh, b, gs->scratch + (at - b0 * BLOCK), (size_t)n);
    }
    memcpy(buf, gs->scratch + (off - b0 * BLOCK), (size_t)len);
    return GPO_OK;
}

enum gpo_status gpo_mkmodel_gguf(const struct gpo_mkmodel_gguf_opts *opts) {
    const struct preset *p = NULL;
    if (!opts || !opts->path || !opts->path[0] || !opts->preset)
        return gpo_fail(GPO_ERR_ARG, "mkmodel needs a preset and an output file");
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (strcmp(opts->preset, presets[i].name) == 0) p = &presets[i];
    if (!p)
        return gpo_fail(GPO_ERR_ARG, "unknown preset '%s' (known: tiny, 20b, 120b)", opts->preset);
    struct stat sb;
    if (!opts->force && lstat(opts->path, &sb) == 0)
        return gpo_fail(GPO_ERR_ARG, "%s already exists (use --force to replace it)", opts->path);

    /* The configuration exactly as loading the safetensors checkpoint gives it. */
    struct gpo_config cfg;
    struct gpo_str text = {0};
    enum gpo_status s = hf_config(p, &text);
    if (s == GPO_OK) s = gpo_config_parse(text.s, text.n, "config.json", &cfg);
    gpo_str_free(&text);
    if (s != GPO_OK) return s;

    gpo_tokenizer *tok = NULL;
    char tok_path[4096];
    enum gpo_status found = gpo_tokenizer_find(opts->tokenizer_path, NULL, tok_path,
                                               sizeof tok_path);
    if (found == GPO_OK) {
        s = gpo_tokenizer_load(tok_path, &tok);
        if (s != GPO_OK) return s;
    } else if (opts->tokenizer_path) {
        return found; /* the message names the file */
    } else {
        gpo_log(GPO_LOG_WARN, "mkmodel: no tokenizer.json found, %s gets no tokenizer "
                "(llama.cpp needs one to load it): %s", opts->path, gpo_last_error());
    }

    struct gen_source gs = {.p = p, .seed = opts->seed, .layer = -2};
    global_sources(p, gs.g);
    char name[64];
    snprintf(name, sizeof name, "gpt-oss-%s random", p->name);
    struct gpo_wsource src = {.cfg = &cfg, .user = &gs, .dtype = gen_dtype, .read = gen_read};
    struct gpo_gguf_out out = {.path = opts->path, .dense = opts->dense, .tok = tok,
                               .name = name, .what = "mkmodel"};
    gpo_log(GPO_LOG_INFO, "mkmodel: writing the %s preset (seed %llu) to %s", p->name,
            (unsigned long long)opts->seed, opts->path);
    s = gpo_gguf_write_weights(&src, &out);
    free(gs.scratch);
    gpo_tokenizer_free(tok);
    return s;
}
