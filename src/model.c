/* model.c - loads a GPT-OSS checkpoint folder: finds the layout (Hugging Face or
 * original/), reads config.json, maps the safetensors files and binds every
 * weight by name with its shape and dtype checked.  Weights stay in the mapping.
 * A GGUF file (or a folder holding one) goes to model_gguf.c's binder instead. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "util.h"

/* The part [row0, row0 + rows) of every expert's bias in a [E][rows_per_expert] bias. */
static struct gpo_tview xbias_part(const struct gpo_tview *bias, int64_t row0, int64_t rows) {
    return (struct gpo_tview){
        .data = (const uint8_t *)bias->data + (size_t)row0 * gpo_dtype_size(bias->dtype),
        .dtype = bias->dtype, .rows = bias->rows, .cols = rows};
}

struct gpo_xmat gpo_xmat_split(const uint8_t *blocks, const uint8_t *scales,
                               int64_t rows_per_expert, int64_t row0, int64_t rows,
                               int64_t cols, const struct gpo_tview *bias) {
    const size_t nb = (size_t)(cols / 32);
    return (struct gpo_xmat){
        .layout = GPO_MXFP4_SPLIT,
        .blocks = blocks + (size_t)row0 * nb * 16,
        .scales = scales + (size_t)row0 * nb,
        .blocks_stride = (size_t)rows_per_expert * nb * 16,
        .scales_stride = (size_t)rows_per_expert * nb,
        .rows = rows, .cols = cols,
        .bias = xbias_part(bias, row0, rows),
        .bias_stride = rows_per_expert,
        .expert0 = 0, .expert1 = bias->rows};
}

struct gpo_xmat gpo_xmat_ggml(const void *blocks, int64_t rows_per_expert, int64_t row0,
                              int64_t rows, int64_t cols, const struct gpo_tview *bias) {
    const size_t row_bytes = (size_t)(cols / 32) * GPO_MXFP4_GGML_BLOCK_BYTES;
    return (struct gpo_xmat){
        .layout = GPO_MXFP4_GGML,
        .blocks = (const uint8_t *)blocks + (size_t)row0 * row_bytes,
        .blocks_stride = (size_t)rows_per_expert * row_bytes,
        .rows = rows, .cols = cols,
        .bias = xbias_part(bias, row0, rows),
        .bias_stride = rows_per_expert,
        .expert0 = 0, .expert1 = bias->rows};
}

static enum gpo_status check_xmat(const struct gpo_xmat *w, const char *what, int64_t layer,
                                  int64_t rows, int64_t cols) {
    if (w->rows != rows || w->cols != cols)
        return gpo_fail(GPO_ERR_SHAPE, "layer %lld: the %s experts are %lld x %lld per expert, "
                        "expected %lld x %lld", (long long)layer, what, (long long)w->rows,
                        (long long)w->cols, (long long)rows, (long long)cols);
    if (!w->blocks || (w->layout == GPO_MXFP4_SPLIT && !w->scales) || !w->bias.data ||
        w->bias_stride < rows || w->expert0 < 0 || w->expert1 <= w->expert0 ||
        w->expert1 > w->bias.rows)
        return gpo_fail(GPO_ERR_SHAPE, "layer %lld: the %s experts' view is incomplete "
                        "(weights, scales or bias missing, bias stride %lld below %lld, or "
                        "experts [%lld, %lld) not within the bias's %lld)",
                        (long long)layer, what, (long long)w->bias_stride, (long long)rows,
                        (long long)w->expert0, (long long)w->expert1, (long long)w->bias.rows);
    return GPO_OK;
}

/* The expert views of layer L in use: gate/up (interleaved), or gate and up, then
 * down.  Their count, 2 or 3. */
static int expert_views(const struct gpo_layer *L, const struct gpo_xmat *v[3]) {
    int n = 0;
    v[n++] = &L->mlp1[0];
    if (L->gate_up == GPO_GATE_UP_SEPARATE) v[n++] = &L->mlp1[1];
    v[n++] = &L->mlp2;
    return n;
}

enum gpo_status gpo_layer_holds_experts(const struct gpo_layer *L, int64_t expert0,
                                        int64_t expert1) {
    const struct gpo_xmat *v[3];
    const int nv = expert_views(L, v);
    for (int i = 0; i < nv; i++)
        if (expert0 < v[i]->expert0 || expert1 > v[i]->expert1)
            return gpo_fail(GPO_ERR_ARG, "this context runs experts %lld-%lld, but the model "
                            "holds only experts %lld-%lld (repacked for one rank)",
                            (long long)expert0, (long long)expert1 - 1,
                            (long long)v[i]->expert0, (long long)v[i]->expert1 - 1);
    return GPO_OK;
}

enum gpo_status gpo_layer_check_experts(const struct gpo_layer *L, int64_t layer,
                                        const struct gpo_config *c) {
    const int64_t H = c->n_embd, F = c->n_ff;
    if (L->gate_up == GPO_GATE_UP_INTERLEAVED) {
        GPO_TRY(check_xmat(&L->mlp1[0], "gate/up (interleaved)", layer, 2 * F, H));
    } else if (L->gate_up == GPO_GATE_UP_SEPARATE) {
        GPO_TRY(check_xmat(&L->mlp1[0], "gate", layer, F, H));
        GPO_TRY(check_xmat(&L->mlp1[1], "up", layer, F, H));
    } else {
        return gpo_fail(GPO_ERR_SHAPE, "layer %lld: unknown gate/up arrangement %d",
                        (long long)layer, (int)L->gate_up);
    }
    return check_xmat(&L->mlp2, "down", layer, H, F);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int has_suffix_ci(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* The error for a model path that is not a folder: say what it is instead, since
 * a file passed as the model is a common slip.  `from` names where the path came
 * from ("-m", "$GPT_DIR"). */
static enum gpo_status not_a_folder(const char *path, const char *from) {
    struct stat st;
    if (stat(path, &st) != 0)
        return gpo_fail(GPO_ERR_NOT_FOUND, "model folder '%s' (from %s) not found: %s", path, from,
                        strerror(errno));
    if (S_ISREG(st.st_mode) && has_suffix_ci(path, ".gguf"))
        return gpo_fail(GPO_ERR_NOT_FOUND,
                        "model '%s' (from %s) is named .gguf but does not start with the GGUF "
                        "magic: it is not a GGUF file (or is empty or truncated)",
                        path, from);
    if (S_ISREG(st.st_mode))
        return gpo_fail(GPO_ERR_NOT_FOUND,
                        "model '%s' (from %s) is a file, not a folder: pass the folder holding "
                        "config.json and the *.safetensors files, or a GGUF file",
                        path, from);
    return gpo_fail(GPO_ERR_NOT_FOUND, "model '%s' (from %s) is not a folder", path, from);
}

enum gpo_status gpo_model_resolve_dir(const char *arg, char *out, size_t out_size) {
    const char *src = "-m", *dir = arg;
    if (!dir || !*dir) {
        dir = getenv("GPT_DIR");
        src = "$GPT_DIR";
    }
    if (!dir || !*dir) {
        dir = getenv("HF_MODEL");
        src = "$HF_MODEL";
    }
    if (!dir || !*dir)
        return gpo_fail(GPO_ERR_NOT_FOUND,
                        "no model folder given: pass -m DIR or set GPT_DIR to a folder holding a "
                        "GPT-OSS checkpoint (make one with 'gptoss mkmodel --preset tiny --out DIR')");
    if (!is_dir(dir) && is_file(dir) && gpo_gguf_sniff(dir)) {
        /* A GGUF file is a model path of its own. */
    } else if (!is_dir(dir)) {
        if (strcmp(src, "$HF_MODEL") == 0 && strchr(dir, '/') && dir[0] != '/' && dir[0] != '.')
            return gpo_fail(GPO_ERR_NOT_FOUND,
                            "$HF_MODEL is '%s', which looks like a Hub id, not a local folder; "
                            "nothing can be downloaded here: download the checkpoint yourself and "
                            "set GPT_DIR (or HF_MODEL) to its local folder", dir);
        if (access(dir, F_OK) == 0) return not_a_folder(dir, src);
        return gpo_fail(GPO_ERR_NOT_FOUND, "model folder '%s' (from %s) not found%s", dir, src,
                        strcmp(src, "-m") == 0 ? "" : "; set GPT_DIR to a local checkpoint folder");
    }
    if (strlen(dir) + 1 > out_size) return gpo_fail(GPO_ERR_ARG, "model path too long");
    memcpy(out, dir, strlen(dir) + 1);
    return GPO_OK;
}

/* Weight names of one layout.  %d is the layer. */
struct names {
    const char *layout;
    const char *embedding, *final_norm, *unembedding;
    const char *attn_norm, *qkv_w, *qkv_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *sinks, *o_w, *o_b;
    const char *mlp_norm, *router_w, *router_b;
    const char *mlp1_blocks, *mlp1_scales, *mlp1_bias, *mlp2_blocks, *mlp2_scales, *mlp2_bias;
};

static const struct names names_hf = {
    .layout = "hf",
    .embedding = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .unembedding = "lm_head.weight",
    .attn_norm = "model.layers.%d.input_layernorm.weight",
    .q_w = "model.layers.%d.self_attn.q_proj.weight",
    .q_b = "model.layers.%d.self_attn.q_proj.bias",
    .k_w = "model.layers.%d.self_attn.k_proj.weight",
    .k_b = "model.layers.%d.self_attn.k_proj.bias",
    .v_w = "model.layers.%d.self_attn.v_proj.weight",
    .v_b = "model.layers.%d.self_attn.v_proj.bias",
    .sinks = "model.layers.%d.self_attn.sinks",
    .o_w = "model.layers.%d.self_attn.o_proj.weight",
    .o_b = "model.layers.%d.self_attn.o_proj.bias",
    .mlp_norm = "model.layers.%d.post_attention_layernorm.weight",
    .router_w = "model.layers.%d.mlp.router.weight",
    .router_b = "model.layers.%d.mlp.router.bias",
    .mlp1_blocks = "model.layers.%d.mlp.experts.gate_up_proj_blocks",
    .mlp1_scales = "model.layers.%d.mlp.experts.gate_up_proj_scales",
    .mlp1_bias = "model.layers.%d.mlp.experts.gate_up_proj_bias",
    .mlp2_blocks = "model.layers.%d.mlp.experts.down_proj_blocks",
    .mlp2_scales = "model.layers.%d.mlp.experts.down_proj_scales",
    .mlp2_bias = "model.layers.%d.mlp.experts.down_proj_bias",
};

static const struct names names_orig = {
    .layout = "original",
    .embedding = "embedding.weight",
    .final_norm = "norm.scale",
    .unembedding = "unembedding.weight",
    .attn_norm = "block.%d.attn.norm.scale",
    .qkv_w = "block.%d.attn.qkv.weight",
    .qkv_b = "block.%d.attn.qkv.bias",
    .sinks = "block.%d.attn.sinks",
    .o_w = "block.%d.attn.out.weight",
    .o_b = "block.%d.attn.out.bias",
    .mlp_norm = "block.%d.mlp.norm.scale",
    .router_w = "block.%d.mlp.gate.weight",
    .router_b = "block.%d.mlp.gate.bias",
    .mlp1_blocks = "block.%d.mlp.mlp1_weight.blocks",
    .mlp1_scales = "block.%d.mlp.mlp1_weight.scales",
    .mlp1_bias = "block.%d.mlp.mlp1_bias",
    .mlp2_blocks = "block.%d.mlp.mlp2_weight.blocks",
    .mlp2_scales = "block.%d.mlp.mlp2_weight.scales",
    .mlp2_bias = "block.%d.mlp.mlp2_bias",
};

static void fmt_shape(char *buf, size_t n, int nd, const int64_t *shape) {
    size_t p = 0;
    p += (size_t)snprintf(buf + p, n - p, "[");
    for (int i = 0; i < nd && p < n; i++)
        p += (size_t)snprintf(buf + p, n - p, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (p < n) snprintf(buf + p, n - p, "]");
}

/* Find a tensor and check its shape.  want_float: dtype must be F32/F16/BF16;
 * else it must be U8 (MXFP4 blocks and scales).  Adds its bytes to *acc. */
static enum gpo_status bind(struct gpo_model *m, const char *fmt, int layer, int nd,
                            const int64_t *shape, int want_float, const struct gpo_st_tensor **out,
                            uint64_t *acc) {
    char name[256];
    snprintf(name, sizeof name, fmt, layer);
    const struct gpo_st_tensor *t = gpo_st_find(&m->st, name);
    if (!t)
        return gpo_fail(GPO_ERR_MISSING_TENSOR, "tensor '%s' is missing from %s (%s layout)", name,
                        m->dir, m->layout);
    int ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[128], got[128];
        fmt_shape(want, sizeof want, nd, shape);
        fmt_shape(got, sizeof got, t->n_dims, t->shape);
        return gpo_fail(GPO_ERR_SHAPE, "tensor '%s' has shape %s, expected %s", name, got, want);
    }
    if (want_float && t->dtype != GPO_DT_BF16 && t->dtype != GPO_DT_F16 && t->dtype != GPO_DT_F32)
        return gpo_fail(GPO_ERR_DTYPE, "tensor '%s' has dtype %s, expected BF16, F16 or F32", name,
                        gpo_dtype_name(t->dtype));
    if (!want_float && t->dtype != GPO_DT_U8)
        return gpo_fail(GPO_ERR_DTYPE, "tensor '%s' has dtype %s, expected U8 (MXFP4)", name,
                        gpo_dtype_name(t->dtype));
    *out = t;
    if (acc) *acc += t->nbytes;
    return GPO_OK;
}

static struct gpo_tview view_of(const struct gpo_st_tensor *t, int64_t rows, int64_t cols,
                                int64_t row0) {
    size_t es = gpo_dtype_size(t->dtype);
    return (struct gpo_tview){.data = t->data + (uint64_t)row0 * (uint64_t)cols * es,
                              .dtype = t->dtype, .rows = rows, .cols = cols};
}

static enum gpo_status bind_view(struct gpo_model *m, const char *fmt, int layer, int64_t rows,
                                 int64_t cols, struct gpo_tview *v, uint64_t *acc) {
    const struct gpo_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    /* Vectors are 1-D in the files. */
    if (rows == 1)
        GPO_TRY(bind(m, fmt, layer, 1, &shape[1], 1, &t, acc));
    else
        GPO_TRY(bind(m, fmt, layer, 2, shape, 1, &t, acc));
    *v = view_of(t, rows, cols, 0);
    return GPO_OK;
}

static enum gpo_status bind_all(struct gpo_model *m, const struct names *nm) {
    const struct gpo_config *c = &m->cfg;
    struct gpo_model_info *inf = &m->info;
    const int64_t H = c->n_embd, QD = c->n_head * c->head_dim, KVD = c->n_head_kv * c->head_dim;
    const int64_t E = c->n_expert, F = c->n_ff;
    GPO_TRY(bind_view(m, nm->embedding, 0, c->n_vocab, H, &m->embedding, &inf->bytes_embedding));
    GPO_TRY(bind_view(m, nm->final_norm, 0, 1, H, &m->final_norm, &inf->bytes_norms));
    GPO_TRY(bind_view(m, nm->unembedding, 0, c->n_vocab, H, &m->unembedding, &inf->bytes_unembedding));
    for (int l = 0; l < c->n_layer; l++) {
        struct gpo_layer *L = &m->layers[l];
        uint64_t *att = &inf->bytes_attention;
        GPO_TRY(bind_view(m, nm->attn_norm, l, 1, H, &L->attn_norm, att));
        if (nm->qkv_w) {
            /* The original layout fuses q, k and v rows; split the view without copying. */
            const struct gpo_st_tensor *t;
            int64_t shw[2] = {QD + 2 * KVD, H}, shb[1] = {QD + 2 * KVD};
            GPO_TRY(bind(m, nm->qkv_w, l, 2, shw, 1, &t, att));
            L->wq = view_of(t, QD, H, 0);
            L->wk = view_of(t, KVD, H, QD);
            L->wv = view_of(t, KVD, H, QD + KVD);
            GPO_TRY(bind(m, nm->qkv_b, l, 1, shb, 1, &t, att));
            L->bq = view_of(t, 1, QD, 0);
            L->bk = (struct gpo_tview){.data = t->data + (uint64_t)QD * gpo_dtype_size(t->dtype),
                                       .dtype = t->dtype, .rows = 1, .cols = KVD};
            L->bv = (struct gpo_tview){.data = t->data + (uint64_t)(QD + KVD) * gpo_dtype_size(t->dtype),
                                       .dtype = t->dtype, .rows = 1, .cols = KVD};
        } else {
            GPO_TRY(bind_view(m, nm->q_w, l, QD, H, &L->wq, att));
            GPO_TRY(bind_view(m, nm->q_b, l, 1, QD, &L->bq, att));
            GPO_TRY(bind_view(m, nm->k_w, l, KVD, H, &L->wk, att));
            GPO_TRY(bind_view(m, nm->k_b, l, 1, KVD, &L->bk, att));
            GPO_TRY(bind_view(m, nm->v_w, l, KVD, H, &L->wv, att));
            GPO_TRY(bind_view(m, nm->v_b, l, 1, KVD, &L->bv, att));
        }
        GPO_TRY(bind_view(m, nm->sinks, l, 1, c->n_head, &L->sinks, att));
        GPO_TRY(bind_view(m, nm->o_w, l, H, QD, &L->wo, att));
        GPO_TRY(bind_view(m, nm->o_b, l, 1, H, &L->bo, att));
        GPO_TRY(bind_view(m, nm->mlp_norm, l, 1, H, &L->mlp_norm, &inf->bytes_norms));
        GPO_TRY(bind_view(m, nm->router_w, l, E, H, &L->router_w, &inf->bytes_router));
        GPO_TRY(bind_view(m, nm->router_b, l, 1, E, &L->router_b, &inf->bytes_router));

        const struct gpo_st_tensor *t;
        uint64_t *ex = &inf->bytes_experts;
        int64_t b1[4] = {E, 2 * F, H / 32, 16}, s1[3] = {E, 2 * F, H / 32};
        int64_t b2[4] = {E, H, F / 32, 16}, s2[3] = {E, H, F / 32};
        int64_t bias1[2] = {E, 2 * F}, bias2[2] = {E, H};
        const uint8_t *blocks, *scales;
        struct gpo_tview bias;
        /* Both safetensors layouts interleave the gate and linear rows. */
        L->gate_up = GPO_GATE_UP_INTERLEAVED;
        GPO_TRY(bind(m, nm->mlp1_blocks, l, 4, b1, 0, &t, ex));
        blocks = t->data;
        GPO_TRY(bind(m, nm->mlp1_scales, l, 3, s1, 0, &t, ex));
        scales = t->data;
        GPO_TRY(bind(m, nm->mlp1_bias, l, 2, bias1, 1, &t, ex));
        bias = view_of(t, E, 2 * F, 0);
        L->mlp1[0] = gpo_xmat_split(blocks, scales, 2 * F, 0, 2 * F, H, &bias);
        GPO_TRY(bind(m, nm->mlp2_blocks, l, 4, b2, 0, &t, ex));
        blocks = t->data;
        GPO_TRY(bind(m, nm->mlp2_scales, l, 3, s2, 0, &t, ex));
        scales = t->data;
        GPO_TRY(bind(m, nm->mlp2_bias, l, 2, bias2, 1, &t, ex));
        bias = view_of(t, E, H, 0);
        L->mlp2 = gpo_xmat_split(blocks, scales, H, 0, H, F, &bias);
        GPO_TRY(gpo_layer_check_experts(L, l, c));
    }
    return GPO_OK;
}

static int n_maps(const struct gpo_model *m);
static void map_at(const struct gpo_model *m, int i, const uint8_t **p, uint64_t *n,
                   const char **path);

/* Records the pages of [p, p + n) for release_replaced() when they lie in one of the
 * model's file mappings (never in memory of our own, which MADV_DONTNEED would zero).
 * The range is widened to whole pages: a neighbouring tensor sharing a page is only
 * read back from the page cache on its next use.  Fails only for want of memory. */
static enum gpo_status note_replaced(struct gpo_model *m, const void *p, size_t n) {
    for (int i = 0; i < n_maps(m); i++) {
        const uint8_t *base;
        uint64_t size;
        const char *path;
        map_at(m, i, &base, &size, &path);
        if (m->file && !m->gguf.files[i].mapped) continue;
        if ((const uint8_t *)p < base || (const uint8_t *)p + n > base + size) continue;
        if (m->n_replaced == m->cap_replaced) {
            const int cap = m->cap_replaced ? 2 * m->cap_replaced : 64;
            struct gpo_range *r = realloc(m->replaced, (size_t)cap * sizeof *r);
            if (!r) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
            m->replaced = r;
            m->cap_replaced = cap;
        }
        const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t a = (uintptr_t)p & ~(pg - 1), b = ((uintptr_t)p + n + pg - 1) & ~(pg - 1);
        m->replaced[m->n_replaced++] = (struct gpo_range){(const uint8_t *)a, (size_t)(b - a)};
        return GPO_OK;
    }
    return GPO_OK;
}

/* Drops the mapped pages the --dense q8 copies and the repacked experts replaced,
 * from range `from` on, from this process's memory, so they do not count twice;
 * under --mlock they are unlocked first (the copies are locked instead). */
static void release_replaced(const struct gpo_model *m, int from) {
    for (int i = from; i < m->n_replaced; i++) {
        if (m->locked) munlock(m->replaced[i].p, m->replaced[i].n);
        madvise((void *)m->replaced[i].p, m->replaced[i].n, MADV_DONTNEED);
    }
}

/* Unlocks every mapped file and copy (what a failed --mlock locked so far); the
 * model is then not locked. */
static void unlock_weights(struct gpo_model *m) {
    for (int i = 0; i < n_maps(m); i++) {
        const uint8_t *p;
        uint64_t n;
        const char *path;
        map_at(m, i, &p, &n, &path);
        munlock(p, n);
    }
    if (m->converted) munlock(m->converted, m->info.bytes_converted);
    if (m->repacked) munlock(m->repacked, m->repacked_bytes);
    if (m->dense_x16) munlock(m->dense_x16, m->dense_x16_bytes);
    if (m->dense_copy) munlock(m->dense_copy, m->dense_copy_bytes);
    m->locked = 0;
}

/* Anonymous memory for weight copies: page-aligned, asking for huge pages (fewer
 * TLB misses when the copies are streamed).  NULL when there is none. */
static void *copy_alloc(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
}

/* copy_alloc of n bytes for a load-time copy into *out, or a GPO_ERR_NOMEM naming
 * what the copy was for (`what`: "repack the experts") and the way around it. */
static enum gpo_status copy_alloc_for(size_t n, const char *what, uint8_t **out) {
    *out = copy_alloc(n);
    if (!*out)
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate %.2f GiB to %s (--no-repack reads them "
                        "in place)", (double)n / 1073741824.0, what);
    return GPO_OK;
}

/* The dense matrices every token streams: q, k, v and out of every layer, then the
 * unembedding (4 * n_layer + 1 views, the model's own). */
static int dense_views(struct gpo_model *m, struct gpo_tview **v) {
    int n = 0;
    for (int64_t l = 0; l < m->cfg.n_layer; l++) {
        struct gpo_layer *L = &m->layers[l];
        v[n++] = &L->wq;
        v[n++] = &L->wk;
        v[n++] = &L->wv;
        v[n++] = &L->wo;
    }
    v[n++] = &m->unembedding;
    return n;
}

/* --dense q8: requantise the big BF16 matrices (q, k, v, out of every layer and the
 * unembedding) into Q8_0 blocks.  The router stays as stored: expert choice is
 * sensitive to its precision (spec 8.3). */
static enum gpo_status convert_dense_q8(struct gpo_model *m) {
    struct gpo_tview *views[4 * GPO_MAX_LAYERS + 1];
    size_t nv = (size_t)dense_views(m, views);
    /* A GGUF file may hold these matrices as Q8_0 already: they stay as stored. */
    size_t keep = 0;
    for (size_t i = 0; i < nv; i++)
        if (views[i]->dtype != GPO_DT_Q8_0) views[keep++] = views[i];
    nv = keep;
    if (nv == 0) {
        gpo_log(GPO_LOG_INFO, "--dense q8: the dense matrices are stored as Q8_0 already");
        return GPO_OK;
    }
    uint64_t total = 0, before = 0, att_saved = 0, unemb_saved = 0;
    for (size_t i = 0; i < nv; i++) {
        if (views[i]->cols % GPO_QK != 0)
            return gpo_fail(GPO_ERR_UNSUPPORTED, "--dense q8 needs rows that are multiples of 32 (a matrix has %lld columns)",
                            (long long)views[i]->cols);
        uint64_t after = (uint64_t)views[i]->rows * (uint64_t)(views[i]->cols / GPO_QK) * sizeof(struct gpo_q8_0_block);
        uint64_t was = (uint64_t)views[i]->rows * (uint64_t)views[i]->cols * gpo_dtype_size(views[i]->dtype);
        total += after;
        before += was;
        *(views[i] == &m->unembedding ? &unemb_saved : &att_saved) += was - after;
    }
    uint8_t *buf = gpo_aligned_alloc(total);
    if (!buf) return gpo_fail(GPO_ERR_NOMEM, "cannot allocate %.2f GiB for --dense q8", (double)total / 1073741824.0);
    m->converted = buf;
    double t0 = gpo_now();
    uint8_t *p = buf;
    for (size_t i = 0; i < nv; i++) {
        struct gpo_tview *v = views[i];
        const int64_t nb = v->cols / GPO_QK, rows = v->rows;
        struct gpo_q8_0_block *dst = (struct gpo_q8_0_block *)p;
        const uint8_t *src = v->data;
        const size_t row_bytes = (size_t)v->cols * gpo_dtype_size(v->dtype);
        const enum gpo_dtype dt = v->dtype;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            gpo_quantize_row_q8_0(dst + r * nb, src + (size_t)r * row_bytes, dt, v->cols);
        const int k = m->n_replaced;
        GPO_TRY(note_replaced(m, src, (size_t)rows * row_bytes));
        release_replaced(m, k); /* now, so the peak stays low too */
        v->data = dst;
        v->dtype = GPO_DT_Q8_0;
        p += (size_t)rows * (size_t)nb * sizeof *dst;
    }
    release_replaced(m, 0); /* again: the shared edge pages of later matrices came back */
    struct gpo_model_info *inf = &m->info;
    inf->bytes_attention -= att_saved;
    inf->bytes_unembedding -= unemb_saved;
    inf->bytes_per_token -= att_saved + unemb_saved;
    inf->bytes_converted = total;
    inf->bytes_released += before;
    gpo_log(GPO_LOG_INFO, "--dense q8: requantised %.2f GiB of BF16 weights to %.2f GiB in %.1f s",
            (double)before / 1073741824.0, (double)total / 1073741824.0, gpo_now() - t0);
    return GPO_OK;
}

/* The dense matrices the AVX-512 int8 kernels read faster as Q8_0x16 (kernels.h):
 * Q8_0 ones with rows a multiple of 16 (q, k and v also with heads of a multiple of
 * 16 rows, as the forward pass cuts them by heads), at most GPO_Q8X16_MAX_COLS wide. */
static int dense_x16_views(struct gpo_model *m, struct gpo_tview **v) {
    const struct gpo_config *c = &m->cfg;
    int n = 0;
    for (int64_t l = 0; l < c->n_layer; l++) {
        struct gpo_layer *L = &m->layers[l];
        struct gpo_tview *all[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
        for (int i = 0; i < 4; i++)
            if (i == 3 || c->head_dim % GPO_Q8X16_ROWS == 0) v[n++] = all[i];
    }
    v[n++] = &m->unembedding;
    int keep = 0;
    for (int i = 0; i < n; i++)
        if (v[i]->dtype == GPO_DT_Q8_0 && v[i]->rows % GPO_Q8X16_ROWS == 0 &&
            v[i]->cols <= GPO_Q8X16_MAX_COLS && v[i]->cols % GPO_QK == 0)
            v[keep++] = v[i];
    return keep;
}

/* Repacks the Q8_0 dense matrices into Q8_0x16 when the best kernel table reads that
 * layout (AVX-512 with VNNI): the same values and results, a third more speed on
 * the decode tiles.  The --dense q8 copies are repacked in place; matrices read
 * from a GGUF file's mapping are copied, and their mapped pages let go. */
static enum gpo_status repack_dense(struct gpo_model *m) {
    const struct gpo_kernels *kt = gpo_kernels_chosen();
    if (!kt || kt == gpo_kernels_ref() || !kt->matmul_q8_0x16_q8 || !kt->matmul_q8_0x16_q16s)
        return GPO_OK;
    struct gpo_tview *v[4 * GPO_MAX_LAYERS + 1];
    const int nv = dense_x16_views(m, v);
    if (nv == 0) return GPO_OK;
    const uint8_t *conv = m->converted;
    size_t copy = 0, largest = 0;
    for (int i = 0; i < nv; i++) {
        const size_t n = (size_t)v[i]->rows * gpo_tview_row_bytes(v[i]);
        const uint8_t *p = v[i]->data;
        if (!(conv && p >= conv && p < conv + m->info.bytes_converted)) copy += n;
        const size_t g = GPO_Q8X16_ROWS * gpo_tview_row_bytes(v[i]);
        if (g > largest) largest = g;
    }
    uint8_t *tmp = malloc(largest), *buf = copy ? copy_alloc(copy) : NULL;
    if (!tmp || (copy && !buf)) {
        free(tmp);
        if (buf) munmap(buf, copy);
        return gpo_fail(GPO_ERR_NOMEM, "cannot allocate %.2f GiB to repack the dense Q8_0 "
                        "matrices (--no-repack reads them in place)", (double)copy / 1073741824.0);
    }
    m->dense_x16 = buf;
    m->dense_x16_bytes = copy;
    double t0 = gpo_now();
    uint8_t *dst = buf;
    for (int i = 0; i < nv; i++) {
        struct gpo_tview *w = v[i];
        const size_t rb = gpo_tview_row_bytes(w), n = (size_t)w->rows * rb, g = GPO_Q8X16_ROWS * rb;
        const uint8_t *src = w->data;
        if (conv && src >= conv && src < conv + m->info.bytes_converted) {
            /* In place, a group at a time: a group's rows and its Q8_0x16 form take
             * the same bytes. */
            uint8_t *p = (uint8_t *)src;
            for (int64_t r = 0; r < w->rows; r += GPO_Q8X16_ROWS) {
                memcpy(tmp, p + (size_t)r * rb, g);
                gpo_q8_0x16_pack(p + (size_t)r * rb, (const struct gpo_q8_0_block *)tmp,
                                 GPO_Q8X16_ROWS, w->cols);
            }
        } else {
            const int64_t groups = w->rows / GPO_Q8X16_ROWS;
#pragma omp parallel for schedule(static)
            for (int64_t q = 0; q < groups; q++)
                gpo_q8_0x16_pack(dst + (size_t)q * g, (const struct gpo_q8_0_block *)(src + (size_t)q * g),
                                 GPO_Q8X16_ROWS, w->cols);
            const int k = m->n_replaced;
            enum gpo_status st = note_replaced(m, src, n);
            if (st != GPO_OK) {
                free(tmp);
                return st;
            }
            release_replaced(m, k);
            w->data = dst;
            dst += n;
        }
        w->dtype = GPO_DT_Q8_0X16;
    }
    free(tmp);
    release_replaced(m, 0); /* again: shared edge pages came back */
    m->info.bytes_repacked += copy;
    m->info.bytes_released += copy;
    gpo_log(GPO_LOG_INFO, "repacked %d dense Q8_0 matrices into 16-row groups (%.2f GiB copied "
            "from the file) in %.1f s", nv, (double)copy / 1073741824.0, gpo_now() - t0);
    return GPO_OK;
}

/* Whether [p, p + n) lies in one of the model's file mappings. */
static int in_file_map(const struct gpo_model *m, const void *p, size_t n) {
    for (int i = 0; i < n_maps(m); i++) {
        const uint8_t *base;
        uint64_t size;
        const char *path;
        map_at(m, i, &base, &size, &path);
        if ((const uint8_t *)p >= base && (const uint8_t *)p + n <= base + size) return 1;
    }
    return 0;
}

/* Copies the float-typed (BF16, F16, F32) dense matrices that every token streams
 * (q, k, v, the output projection, the unembedding) out of the file mappings into
 * anonymous memory with huge pages, and lets the mapped pages go: the same bytes,
 * read faster.  Measured on the AMD EPYC VM (one core, the 20b file's BF16 pages in
 * the page cache against a copy, interleaved in one process): a plain sum streams
 * 29.5 against 34.5 GB/s, matmul_bf16_dot at one token 26.7 against 28.1. */
static enum gpo_status copy_dense(struct gpo_model *m) {
    struct gpo_tview *v[4 * GPO_MAX_LAYERS + 1];
    const int nv = dense_views(m, v);
    size_t total = 0;
    int keep = 0;
    for (int i = 0; i < nv; i++) {
        const enum gpo_dtype dt = v[i]->dtype;
        const size_t n = (size_t)v[i]->rows * gpo_tview_row_bytes(v[i]);
        if ((dt == GPO_DT_BF16 || dt == GPO_DT_F16 || dt == GPO_DT_F32) && n > 0 &&
            in_file_map(m, v[i]->data, n)) {
            v[keep++] = v[i];
            total += (n + 63) / 64 * 64;
        }
    }
    if (keep == 0) return GPO_OK;
    uint8_t *buf;
    GPO_TRY(copy_alloc_for(total, "copy the dense matrices", &buf));
    m->dense_copy = buf;
    m->dense_copy_bytes = total;
    const double t0 = gpo_now();
    uint8_t *dst = buf;
    for (int i = 0; i < keep; i++) {
        struct gpo_tview *w = v[i];
        const size_t n = (size_t)w->rows * gpo_tview_row_bytes(w);
        const uint8_t *src = w->data;
        /* One thread: the page faults, not the copy, take the time. */
        memcpy(dst, src, n);
        const int k = m->n_replaced;
        GPO_TRY(note_replaced(m, src, n));
        release_replaced(m, k);
        w->data = dst;
        dst += (n + 63) / 64 * 64;
    }
    release_replaced(m, 0); /* again: shared edge pages came back */
    m->info.bytes_repacked += total;
    m->info.bytes_released += total;
    gpo_log(GPO_LOG_INFO, "copied %d dense matrices (%.2f GiB) from the file into memory of "
            "their own in %.1f s", keep, (double)total / 1073741824.0, gpo_now() - t0);
    return GPO_OK;
}

/* The expert views of layer L (expert_views) that hold GGML blocks, for the repack
 * to rewrite: the layer is the model's own, so the views are writable. */
static int ggml_views(struct gpo_layer *L, struct gpo_xmat *v[3]) {
    const struct gpo_xmat *all[3];
    const int na = expert_views(L, all);
    int n = 0;
    for (int i = 0; i < na; i++)
        if (all[i]->layout == GPO_MXFP4_GGML) v[n++] = (struct gpo_xmat *)all[i];
    return n;
}

/* Bytes of the split copy of experts [e0, e1) of view w: 16 code bytes and one
 * scale byte per block, as in the file. */
static size_t split_bytes(const struct gpo_xmat *w, int64_t e0, int64_t e1) {
    return (size_t)(e1 - e0) * (size_t)w->rows * (size_t)(w->cols / 32) * 17;
}

/* Copies experts [e0, e1) of GGML view w into dst as split code bytes
 * [n][rows][nb][16] followed by scale bytes [n][rows][nb], points w at the copy
 * and notes the source bytes for release. */
static enum gpo_status repack_view(struct gpo_model *m, struct gpo_xmat *w, int64_t e0, int64_t e1,
                                   uint8_t *dst, gpo_mxfp4_from_ggml_fn from_ggml) {
    const int64_t nb = w->cols / 32, rows = w->rows, n = e1 - e0;
    const size_t row_src = (size_t)nb * GPO_MXFP4_GGML_BLOCK_BYTES, stride = w->blocks_stride;
    const uint8_t *src = gpo_xmat_blocks(w, e0);
    uint8_t *blocks = dst, *scales = dst + (size_t)(n * rows * nb) * 16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n * rows; i++)
        from_ggml(blocks + (size_t)(i * nb) * 16, scales + (size_t)(i * nb),
                  src + (size_t)(i / rows) * stride + (size_t)(i % rows) * row_src, nb);
    GPO_TRY(note_replaced(m, src, (size_t)(n - 1) * stride + (size_t)rows * row_src));
    w->layout = GPO_MXFP4_SPLIT;
    w->blocks = blocks;
    w->scales = scales;
    w->blocks_stride = (size_t)(rows * nb) * 16;
    w->scales_stride = (size_t)(rows * nb);
    w->expert0 = e0;
    w->expert1 = e1;
    return GPO_OK;
}

enum gpo_status gpo_model_repack_experts(gpo_model *m, int64_t expert0, int64_t expert1) {
    const struct gpo_config *c = &m->cfg;
    if (expert0 < 0 || expert1 > c->n_expert || expert1 <= expert0)
        return gpo_fail(GPO_ERR_ARG, "cannot repack experts [%lld, %lld): the model has %lld",
                        (long long)expert0, (long long)expert1, (long long)c->n_expert);
    if (m->repacked) {
        if (expert0 >= m->repacked0 && expert1 <= m->repacked1) return GPO_OK;
        return gpo_fail(GPO_ERR_ARG, "the experts were repacked for experts %lld-%lld only; "
                        "experts %lld-%lld need a model loaded again",
                        (long long)m->repacked0, (long long)m->repacked1 - 1,
                        (long long)expert0, (long long)expert1 - 1);
    }
    size_t total = 0;
    for (int64_t l = 0; l < c->n_layer; l++) {
        struct gpo_xmat *v[3];
        const int nv = ggml_views(&m->layers[l], v);
        for (int i = 0; i < nv; i++) total += split_bytes(v[i], expert0, expert1);
    }
    if (total == 0) return GPO_OK; /* safetensors: the experts are split already */
    uint8_t *buf;
    GPO_TRY(copy_alloc_for(total, "repack the experts", &buf));
    m->repacked = buf;
    m->repacked_bytes = total;
    m->repacked0 = expert0;
    m->repacked1 = expert1;
    double t0 = gpo_now();
    const struct gpo_kernels *kt = gpo_kernels_chosen();
    const gpo_mxfp4_from_ggml_fn from_ggml =
        kt && kt->mxfp4_from_ggml ? kt->mxfp4_from_ggml : gpo_mxfp4_from_ggml;
    uint8_t *p = buf;
    for (int64_t l = 0; l < c->n_layer; l++) {
        struct gpo_xmat *v[3];
        const int nv = ggml_views(&m->layers[l], v), k = m->n_replaced;
        for (int i = 0; i < nv; i++) {
            const size_t n = split_bytes(v[i], expert0, expert1);
            GPO_TRY(repack_view(m, v[i], expert0, expert1, p, from_ggml));
            p += n;
        }
        release_replaced(m, k); /* layer by layer, so the peak stays low */
    }
    release_replaced(m, 0); /* again: shared edge pages came back */
    if (m->locked && mlock(buf, total) != 0) {
        /* All or nothing, as at load: `locked` stays exact. */
        gpo_log(GPO_LOG_WARN, "mlock of the %.2f GiB of repacked experts failed: %s (check "
                "ulimit -l); the weights are not locked", (double)total / 1073741824.0,
                strerror(errno));
        unlock_weights(m);
    }
    m->info.bytes_repacked += total;
    m->info.bytes_released += total; /* the GGML bytes: as many as the copy's */
    gpo_log(GPO_LOG_INFO, "repacked %.2f GiB of experts %lld-%lld from GGML blocks into split "
            "code and scale bytes in %.1f s", (double)total / 1073741824.0, (long long)expert0,
            (long long)expert1 - 1, gpo_now() - t0);
    return GPO_OK;
}


static void compute_info(struct gpo_model *m) {
    struct gpo_model_info *inf = &m->info;
    inf->n_tensors = (int64_t)m->st.n_tensors;
    inf->n_files = m->st.n_files;
    for (int i = 0; i < m->st.n_files; i++) inf->bytes_mapped += m->st.files[i].size;
    for (size_t i = 0; i < m->st.n_tensors; i++) {
        const struct gpo_st_tensor *t = &m->st.tensors[i];
        inf->bytes_tensors += t->nbytes;
        /* The element count from the byte count, which the parser checked: a
         * product of the dimensions could overflow next to a zero one. */
        size_t es = gpo_dtype_size(t->dtype);
        int64_t n = es ? (int64_t)(t->nbytes / es) : 0;
        /* MXFP4 blocks hold two parameters per byte; scales are not parameters. */
        if (t->dtype == GPO_DT_U8 && t->n_dims == 4) n *= 2;
        else if (t->dtype == GPO_DT_U8) n = 0;
        inf->n_params += n;
    }
    gpo_model_finish_info(m);
}

void gpo_model_finish_info(struct gpo_model *m) {
    const struct gpo_config *c = &m->cfg;
    struct gpo_model_info *inf = &m->info;
    /* Per decoded token: every non-expert layer weight, n_expert_used experts per
     * layer, the unembedding, the final norm and one embedding row. */
    uint64_t per_expert = inf->bytes_experts / (uint64_t)(c->n_layer * c->n_expert);
    inf->bytes_per_token = inf->bytes_attention + inf->bytes_router + inf->bytes_norms +
                           (uint64_t)(c->n_layer * c->n_expert_used) * per_expert +
                           inf->bytes_unembedding + inf->bytes_embedding / (uint64_t)c->n_vocab;
    int64_t expert_params = c->n_layer * c->n_expert *
                            (2 * c->n_ff * c->n_embd + c->n_embd * c->n_ff + 2 * c->n_ff + c->n_embd);
    int64_t emb = c->n_vocab * c->n_embd;
    inf->n_params_active = inf->n_params - expert_params -
                           emb + c->n_layer * c->n_expert_used * (expert_params / (c->n_layer * c->n_expert));
}

/* The number of layers the tensors hold: one more than the highest layer index
 * in a name of the layout's layer pattern (0 when there is none). */
static int64_t tensor_layers(const struct gpo_st *st, const struct names *nm) {
    /* The layer prefix: the attention norm's name up to its "%d". */
    const char *pct = strstr(nm->attn_norm, "%d");
    size_t plen = (size_t)(pct - nm->attn_norm);
    int64_t n = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const char *name = st->tensors[i].name;
        if (strncmp(name, nm->attn_norm, plen) != 0) continue;
        char *end;
        errno = 0;
        long long l = strtoll(name + plen, &end, 10);
        if (end == name + plen || *end != '.' || errno || l < 0 || l >= INT32_MAX) continue;
        if (l + 1 > n) n = l + 1;
    }
    return n;
}

/* num_hidden_layers must match the layers in the files, both ways. */
static enum gpo_status check_layer_count(const struct gpo_model *m, const struct names *nm) {
    int64_t n = tensor_layers(&m->st, nm);
    if (n == m->cfg.n_layer) return GPO_OK;
    if (n == 0)
        return gpo_fail(GPO_ERR_CONFIG,
                        "config.json gives num_hidden_layers %lld, but the tensors in %s hold no "
                        "layer at all",
                        (long long)m->cfg.n_layer, m->dir);
    return gpo_fail(GPO_ERR_CONFIG,
                    "config.json gives num_hidden_layers %lld, but the tensors in %s hold %lld "
                    "layers (0..%lld)",
                    (long long)m->cfg.n_layer, m->dir, (long long)n, (long long)(n - 1));
}

static enum gpo_status load_gguf(const char *path, const struct gpo_load_opts *opts,
                                 gpo_model **out);
static enum gpo_status finish_load(struct gpo_model *m, const struct gpo_load_opts *opts);

/* Does the folder hold a safetensors checkpoint of its own? */
static int has_weights(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    if (is_file(p)) return 1;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        found = n > 12 && strcmp(e->d_name + n - 12, ".safetensors") == 0;
    }
    closedir(d);
    return found;
}

enum gpo_status gpo_model_load(const char *dir_in, const struct gpo_load_opts *opts,
                               gpo_model **out) {
    enum gpo_status s = GPO_OK;
    char *json = NULL;
    size_t json_len = 0;
    char dir[PATH_MAX], path[PATH_MAX + 64];
    struct gpo_model *m = NULL;

    if (!dir_in || !out) return gpo_fail(GPO_ERR_ARG, "gpo_model_load: NULL argument");
    *out = NULL;
    if (!is_dir(dir_in)) {
        if (is_file(dir_in) && gpo_gguf_sniff(dir_in)) return load_gguf(dir_in, opts, out);
        if (access(dir_in, F_OK) == 0) return not_a_folder(dir_in, "the model path");
        return gpo_fail(GPO_ERR_NOT_FOUND, "model folder '%s' not found (pass -m DIR or set GPT_DIR)",
                        dir_in);
    }
    if (strlen(dir_in) >= sizeof dir - 64) return gpo_fail(GPO_ERR_ARG, "model path too long");
    memcpy(dir, dir_in, strlen(dir_in) + 1);
    /* A folder holding only original/ (as the release's subfolder) works too, and so
     * does a folder holding one GGUF model. */
    if (!has_weights(dir)) {
        snprintf(path, sizeof path, "%s/original", dir);
        if (is_dir(path) && has_weights(path)) {
            memcpy(dir, path, strlen(path) + 1);
        } else {
            s = gpo_gguf_find_file(dir, path, sizeof path);
            if (s == GPO_OK) return load_gguf(path, opts, out);
            if (s != GPO_ERR_NOT_FOUND) return s;
            return gpo_fail(GPO_ERR_NOT_GPTOSS,
                            "'%s' is not a GPT-OSS checkpoint: it holds no *.safetensors files "
                            "(nor an original/ subfolder with them) and no .gguf file", dir_in);
        }
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!is_file(path))
        return gpo_fail(GPO_ERR_NOT_GPTOSS, "'%s' is not a GPT-OSS checkpoint: config.json is missing",
                        dir);

    m = calloc(1, sizeof *m);
    if (!m) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    m->dir = strdup(dir);
    if (!m->dir) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    if ((s = gpo_read_file(path, (uint64_t)1 << 26, &json, &json_len)) != GPO_OK) goto cleanup;
    if ((s = gpo_config_parse(json, json_len, path, &m->cfg)) != GPO_OK) goto cleanup;
    if ((s = gpo_st_open_dir(&m->st, dir)) != GPO_OK) goto cleanup;

    const struct names *nm;
    if (gpo_st_find(&m->st, names_hf.embedding) || gpo_st_find(&m->st, names_hf.unembedding)) {
        nm = &names_hf;
    } else if (gpo_st_find(&m->st, names_orig.embedding) ||
               gpo_st_find(&m->st, names_orig.unembedding)) {
        nm = &names_orig;
    } else {
        s = gpo_fail(GPO_ERR_NOT_GPTOSS,
                     "'%s' is not a GPT-OSS checkpoint: neither '%s' (Hugging Face layout) nor '%s' "
                     "(original layout) is among its %zu tensors", dir, names_hf.embedding,
                     names_orig.embedding, m->st.n_tensors);
        goto cleanup;
    }
    m->layout = nm->layout;
    if ((s = check_layer_count(m, nm)) != GPO_OK) goto cleanup;
    m->layers = calloc((size_t)m->cfg.n_layer, sizeof *m->layers);
    if (!m->layers) {
        s = gpo_fail(GPO_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    if ((s = bind_all(m, nm)) != GPO_OK) goto cleanup;
    compute_info(m);
    if ((s = finish_load(m, opts)) != GPO_OK) goto cleanup;
    *out = m;
    m = NULL;

cleanup:
    free(json);
    if (m) gpo_model_free(m);
    return s;
}

/* The mapped files of either format: n_maps of them, file i at *p, *n bytes. */
static int n_maps(const struct gpo_model *m) {
    return m->file ? m->gguf.n_files : m->st.n_files;
}

static void map_at(const struct gpo_model *m, int i, const uint8_t **p, uint64_t *n,
                   const char **path) {
    if (m->file) {
        *p = m->gguf.files[i].map;
        *n = m->gguf.files[i].size;
        *path = m->gguf.files[i].path;
    } else {
        *p = m->st.files[i].map;
        *n = m->st.files[i].size;
        *path = m->st.files[i].path;
    }
}

static enum gpo_status load_gguf(const char *path, const struct gpo_load_opts *opts,
                                 gpo_model **out) {
    struct gpo_model *m = calloc(1, sizeof *m);
    if (!m) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    enum gpo_status s = gpo_model_bind_gguf(m, path);
    if (s == GPO_OK) s = finish_load(m, opts);
    if (s != GPO_OK) {
        gpo_model_free(m);
        return s;
    }
    *out = m;
    return GPO_OK;
}

/* Ranges by start address. */
static int cmp_range(const void *a, const void *b) {
    const struct gpo_range *x = a, *y = b;
    return (x->p > y->p) - (x->p < y->p);
}

/* mlock the mapping [p, p + n) but the replaced ranges in it (sorted by start). */
static int lock_map(const struct gpo_model *m, const uint8_t *p, uint64_t n) {
    const uint8_t *at = p, *end = p + n;
    for (int i = 0; i < m->n_replaced; i++) {
        const struct gpo_range *r = &m->replaced[i];
        if (r->p + r->n <= at || r->p >= end) continue;
        if (r->p > at && mlock(at, (size_t)(r->p - at)) != 0) return -1;
        if (r->p + r->n > at) at = r->p + r->n;
    }
    return at < end && mlock(at, (size_t)(end - at)) != 0 ? -1 : 0;
}

/* What follows the binding for either format: --dense q8, --mlock, --prefetch. */
static enum gpo_status finish_load(struct gpo_model *m, const struct gpo_load_opts *opts) {
    enum gpo_status s;
    if (opts && opts->dense_q8 && (s = convert_dense_q8(m)) != GPO_OK) return s;
    if (!(opts && opts->no_repack) && (s = repack_dense(m)) != GPO_OK) return s;
    if (!(opts && opts->no_repack) && (s = copy_dense(m)) != GPO_OK) return s;
    if (!(opts && opts->no_repack) && m->cfg.n_expert > 0 &&
        (s = gpo_model_repack_experts(m, 0, m->cfg.n_expert)) != GPO_OK)
        return s;

    if (opts && opts->mlock) {
        /* All or nothing: on a failure what was locked so far is unlocked again, so
         * `locked` says exactly whether the weights are locked.  The file pages the
         * copies replace are left out (locking them would read them all back in);
         * the copies are locked instead. */
        if (m->n_replaced > 1)
            qsort(m->replaced, (size_t)m->n_replaced, sizeof *m->replaced, cmp_range);
        int ok = 1;
        for (int i = 0; ok && i < n_maps(m); i++) {
            const uint8_t *p;
            uint64_t n;
            const char *fpath;
            map_at(m, i, &p, &n, &fpath);
            if (lock_map(m, p, n) != 0) {
                gpo_log(GPO_LOG_WARN, "mlock of %s failed: %s (check ulimit -l); the weights "
                        "are not locked", fpath, strerror(errno));
                ok = 0;
            }
        }
        if (ok && m->converted && mlock(m->converted, m->info.bytes_converted) != 0) {
            gpo_log(GPO_LOG_WARN, "mlock of the --dense q8 copies failed: %s (check ulimit -l); "
                    "the weights are not locked", strerror(errno));
            ok = 0;
        }
        if (ok && m->dense_x16 && mlock(m->dense_x16, m->dense_x16_bytes) != 0) {
            gpo_log(GPO_LOG_WARN, "mlock of the repacked dense matrices failed: %s (check "
                    "ulimit -l); the weights are not locked", strerror(errno));
            ok = 0;
        }
        if (ok && m->dense_copy && mlock(m->dense_copy, m->dense_copy_bytes) != 0) {
            gpo_log(GPO_LOG_WARN, "mlock of the copied dense matrices failed: %s (check "
                    "ulimit -l); the weights are not locked", strerror(errno));
            ok = 0;
        }
        if (ok && m->repacked && mlock(m->repacked, m->repacked_bytes) != 0) {
            gpo_log(GPO_LOG_WARN, "mlock of the repacked experts failed: %s (check ulimit -l); "
                    "the weights are not locked", strerror(errno));
            ok = 0;
        }
        m->locked = ok;
        if (!ok) unlock_weights(m);
    }
    if (opts && opts->prefetch) {
        /* Touch every page once so later reads hit memory; progress goes to the log. */
        uint64_t total = m->info.bytes_mapped, done = 0, next = 0;
        volatile uint8_t sink = 0;
        double t0 = gpo_now();
        for (int i = 0; i < n_maps(m); i++) {
            const uint8_t *p;
            uint64_t n;
            const char *fpath;
            map_at(m, i, &p, &n, &fpath);
            madvise((void *)p, n, MADV_WILLNEED);
            for (uint64_t o = 0; o < n; o += 4096) {
                sink ^= p[o];
                done += 4096;
                if (done >= next) {
                    gpo_log(GPO_LOG_INFO, "prefetch %5.1f%% (%.1f GB, %.1f GB/s)",
                            100.0 * (double)done / (double)total, (double)done / 1e9,
                            (double)done / 1e9 / (gpo_now() - t0 + 1e-9));
                    next += total / 10 + 1;
                }
            }
        }
        (void)sink;
        release_replaced(m, 0); /* the pages --dense q8 replaced are not needed */
    }
    return GPO_OK;
}

void gpo_model_free(gpo_model *m) {
    if (!m) return;
    gpo_aligned_free(m->converted);
    if (m->repacked) munmap(m->repacked, m->repacked_bytes);
    if (m->dense_x16) munmap(m->dense_x16, m->dense_x16_bytes);
    if (m->dense_copy) munmap(m->dense_copy, m->dense_copy_bytes);
    free(m->replaced);
    gpo_st_close(&m->st);
    gpo_gguf_close(&m->gguf);
    free(m->file);
    free(m->layers);
    free(m->dir);
    free(m);
}

const struct gpo_config *gpo_model_config(const gpo_model *m) { return &m->cfg; }
const char *gpo_model_dir(const gpo_model *m) { return m->dir; }
const char *gpo_model_layout(const gpo_model *m) { return m->layout; }
int gpo_model_locked(const gpo_model *m) { return m->locked; }
static void type_name(char *out, size_t n, enum gpo_dtype dt) {
    snprintf(out, n, "%s", gpo_dtype_name(dt));
}

void gpo_model_get_info(const gpo_model *m, struct gpo_model_info *info) {
    *info = m->info;
    type_name(info->type_embedding, sizeof info->type_embedding, m->embedding.dtype);
    type_name(info->type_unembedding, sizeof info->type_unembedding, m->unembedding.dtype);
    type_name(info->type_norms, sizeof info->type_norms, m->final_norm.dtype);
    if (m->cfg.n_layer > 0) {
        const struct gpo_layer *L = &m->layers[0];
        type_name(info->type_attention, sizeof info->type_attention, L->wq.dtype);
        type_name(info->type_router, sizeof info->type_router, L->router_w.dtype);
        snprintf(info->type_experts, sizeof info->type_experts, "%s",
                 L->mlp2.layout == GPO_MXFP4_GGML ? "MXFP4, GGML blocks"
                 : m->repacked                    ? "MXFP4, repacked"
                                                  : "MXFP4");
    }
}
