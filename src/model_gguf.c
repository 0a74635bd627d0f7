/* model_gguf.c - binds a GGUF model (llama.cpp's "gpt-oss" tensors, spec 4.4/4.5)
 * to the same layer views as a safetensors checkpoint.  The file (or split set) is
 * mapped once; every tensor a kernel reads as stored is a view into the mapping:
 * F32/F16/BF16/Q8_0 dense matrices (Q8_0 rows are struct gpo_q8_0_block rows, so
 * the --dense q8 kernels read them directly), F32/F16/BF16 norms, biases, sinks and
 * router, and the MXFP4 experts as GGML-block views: ffn_gate_exps + ffn_up_exps,
 * or the gate and up halves of one ffn_gate_up_exps, each with its bias.  Nothing
 * is copied. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf_meta.h"
#include "model.h"
#include "util.h"

/* The tensor `fmt` (with %d the layer) as a rows x cols view; `dense` admits Q8_0
 * besides F32/F16/BF16.  gpo_gguf_check_shapes has vetted names, shapes and types;
 * the checks here only keep the views safe should that ever change. */
static enum gpo_status view(struct gpo_model *m, const char *fmt, int layer, int64_t rows,
                            int64_t cols, int dense, struct gpo_tview *v, uint64_t *acc) {
    char name[GPO_GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, fmt, layer);
    const struct gpo_gguf_tensor *t = gpo_gguf_find(&m->gguf, name);
    if (!t)
        return gpo_fail(GPO_ERR_MISSING_TENSOR, "tensor '%s' is missing from %s", name, m->file);
    enum gpo_dtype dt;
    if (!gpo_ggml_to_dtype(t->type, &dt) ||
        !(dt == GPO_DT_F32 || dt == GPO_DT_F16 || dt == GPO_DT_BF16 || (dense && dt == GPO_DT_Q8_0)))
        return gpo_fail(GPO_ERR_DTYPE, "tensor '%s' in %s has type %s, expected %s", name, m->file,
                        gpo_ggml_type_name(t->type) ? gpo_ggml_type_name(t->type) : "?",
                        dense ? "F32, F16, BF16 or Q8_0" : "F32, F16 or BF16");
    int64_t n_rows = 1;
    for (int d = 1; d < GPO_GGUF_MAX_DIMS; d++) n_rows *= t->ne[d];
    if (t->ne[0] != cols || n_rows != rows)
        return gpo_fail(GPO_ERR_SHAPE, "tensor '%s' in %s has %lld x %lld elements, expected "
                        "%lld x %lld", name, m->file, (long long)n_rows, (long long)t->ne[0],
                        (long long)rows, (long long)cols);
    *v = (struct gpo_tview){.data = t->data, .dtype = dt, .rows = rows, .cols = cols};
    *acc += t->nbytes;
    return GPO_OK;
}

/* An MXFP4 expert stack [E][rows][cols/32] of GGML blocks. */
static enum gpo_status experts(struct gpo_model *m, const char *fmt, int layer, int64_t rows,
                               int64_t cols, const uint8_t **data, uint64_t *acc) {
    char name[GPO_GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, fmt, layer);
    const struct gpo_gguf_tensor *t = gpo_gguf_find(&m->gguf, name);
    if (!t)
        return gpo_fail(GPO_ERR_MISSING_TENSOR, "tensor '%s' is missing from %s", name, m->file);
    if (t->type != GPO_GGML_MXFP4)
        return gpo_fail(GPO_ERR_DTYPE, "tensor '%s' in %s has type %s, expected MXFP4", name,
                        m->file, gpo_ggml_type_name(t->type) ? gpo_ggml_type_name(t->type) : "?");
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != m->cfg.n_expert || t->ne[3] != 1)
        return gpo_fail(GPO_ERR_SHAPE, "tensor '%s' in %s has ne [%lld, %lld, %lld], expected "
                        "[%lld, %lld, %lld]", name, m->file, (long long)t->ne[0],
                        (long long)t->ne[1], (long long)t->ne[2], (long long)cols,
                        (long long)rows, (long long)m->cfg.n_expert);
    *data = t->data;
    *acc += t->nbytes;
    return GPO_OK;
}

static enum gpo_status bind_layer(struct gpo_model *m, int l) {
    const struct gpo_config *c = &m->cfg;
    struct gpo_model_info *inf = &m->info;
    struct gpo_layer *L = &m->layers[l];
    const int64_t H = c->n_embd, QD = c->n_head * c->head_dim, KVD = c->n_head_kv * c->head_dim;
    const int64_t E = c->n_expert, F = c->n_ff;
    uint64_t *att = &inf->bytes_attention, *ex = &inf->bytes_experts;
    GPO_TRY(view(m, "blk.%d.attn_norm.weight", l, 1, H, 0, &L->attn_norm, att));
    GPO_TRY(view(m, "blk.%d.attn_q.weight", l, QD, H, 1, &L->wq, att));
    GPO_TRY(view(m, "blk.%d.attn_q.bias", l, 1, QD, 0, &L->bq, att));
    GPO_TRY(view(m, "blk.%d.attn_k.weight", l, KVD, H, 1, &L->wk, att));
    GPO_TRY(view(m, "blk.%d.attn_k.bias", l, 1, KVD, 0, &L->bk, att));
    GPO_TRY(view(m, "blk.%d.attn_v.weight", l, KVD, H, 1, &L->wv, att));
    GPO_TRY(view(m, "blk.%d.attn_v.bias", l, 1, KVD, 0, &L->bv, att));
    GPO_TRY(view(m, "blk.%d.attn_sinks.weight", l, 1, c->n_head, 0, &L->sinks, att));
    GPO_TRY(view(m, "blk.%d.attn_output.weight", l, H, QD, 1, &L->wo, att));
    GPO_TRY(view(m, "blk.%d.attn_output.bias", l, 1, H, 0, &L->bo, att));
    GPO_TRY(view(m, "blk.%d.post_attention_norm.weight", l, 1, H, 0, &L->mlp_norm,
                 &inf->bytes_norms));
    GPO_TRY(view(m, "blk.%d.ffn_gate_inp.weight", l, E, H, 0, &L->router_w, &inf->bytes_router));
    GPO_TRY(view(m, "blk.%d.ffn_gate_inp.bias", l, 1, E, 0, &L->router_b, &inf->bytes_router));

    /* The gate and up units are never interleaved in GGUF: two tensors, or one
     * of all gate rows then all up rows; either way two views of F rows. */
    const uint8_t *w;
    struct gpo_tview b;
    char name[GPO_GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, "blk.%d.ffn_gate_up_exps.weight", l);
    L->gate_up = GPO_GATE_UP_SEPARATE;
    if (gpo_gguf_find(&m->gguf, name)) {
        GPO_TRY(experts(m, "blk.%d.ffn_gate_up_exps.weight", l, 2 * F, H, &w, ex));
        GPO_TRY(view(m, "blk.%d.ffn_gate_up_exps.bias", l, E, 2 * F, 0, &b, ex));
        L->mlp1[0] = gpo_xmat_ggml(w, 2 * F, 0, F, H, &b);
        L->mlp1[1] = gpo_xmat_ggml(w, 2 * F, F, F, H, &b);
    } else {
        GPO_TRY(experts(m, "blk.%d.ffn_gate_exps.weight", l, F, H, &w, ex));
        GPO_TRY(view(m, "blk.%d.ffn_gate_exps.bias", l, E, F, 0, &b, ex));
        L->mlp1[0] = gpo_xmat_ggml(w, F, 0, F, H, &b);
        GPO_TRY(experts(m, "blk.%d.ffn_up_exps.weight", l, F, H, &w, ex));
        GPO_TRY(view(m, "blk.%d.ffn_up_exps.bias", l, E, F, 0, &b, ex));
        L->mlp1[1] = gpo_xmat_ggml(w, F, 0, F, H, &b);
    }
    GPO_TRY(experts(m, "blk.%d.ffn_down_exps.weight", l, H, F, &w, ex));
    GPO_TRY(view(m, "blk.%d.ffn_down_exps.bias", l, E, H, 0, &b, ex));
    L->mlp2 = gpo_xmat_ggml(w, H, 0, H, F, &b);
    return gpo_layer_check_experts(L, l, c);
}

/* Tensor and parameter counts over the whole table (every tensor belongs to the
 * model: gpo_gguf_check_shapes refuses any other). */
static void count_tensors(struct gpo_model *m) {
    struct gpo_model_info *inf = &m->info;
    inf->n_tensors = (int64_t)m->gguf.n_tensors;
    inf->n_files = m->gguf.n_files;
    for (int i = 0; i < m->gguf.n_files; i++) inf->bytes_mapped += m->gguf.files[i].size;
    for (size_t i = 0; i < m->gguf.n_tensors; i++) {
        const struct gpo_gguf_tensor *t = &m->gguf.tensors[i];
        inf->bytes_tensors += t->nbytes;
        /* The parser checked that ne[] has a size that fits; elements <= bytes * 2
         * for every type it admits, so the product cannot overflow. */
        int64_t n = 1;
        for (int d = 0; d < GPO_GGUF_MAX_DIMS; d++) n *= t->ne[d];
        inf->n_params += n;
    }
}

enum gpo_status gpo_model_bind_gguf(struct gpo_model *m, const char *path) {
    m->file = strdup(path);
    char *tmp = strdup(path);
    if (!m->file || !tmp) {
        free(tmp);
        return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    }
    /* dir is the file's folder, where a tokenizer.json beside it is looked for. */
    m->dir = strdup(dirname(tmp));
    free(tmp);
    if (!m->dir) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    m->layout = "gguf";
    GPO_TRY(gpo_gguf_open(&m->gguf, path));
    GPO_TRY(gpo_gguf_read_config(&m->gguf, &m->cfg));
    GPO_TRY(gpo_gguf_check_shapes(&m->gguf, &m->cfg));
    const struct gpo_config *c = &m->cfg;
    struct gpo_model_info *inf = &m->info;
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers) return gpo_fail(GPO_ERR_NOMEM, "out of memory");
    GPO_TRY(view(m, "token_embd.weight", 0, c->n_vocab, c->n_embd, 1, &m->embedding,
                 &inf->bytes_embedding));
    GPO_TRY(view(m, "output_norm.weight", 0, 1, c->n_embd, 0, &m->final_norm, &inf->bytes_norms));
    GPO_TRY(view(m, "output.weight", 0, c->n_vocab, c->n_embd, 1, &m->unembedding,
                 &inf->bytes_unembedding));
    for (int l = 0; l < c->n_layer; l++) GPO_TRY(bind_layer(m, l));
    count_tensors(m);
    gpo_model_finish_info(m);
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* The tokenizer a GGUF model carries                                         */

enum gpo_status gpo_tokenizer_load_model(const char *model_path, gpo_tokenizer **out) {
    char path[PATH_MAX];
    struct stat st;
    if (!model_path || !out) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_load_model: NULL argument");
    *out = NULL;
    if (stat(model_path, &st) == 0 && S_ISDIR(st.st_mode)) {
        enum gpo_status s = gpo_gguf_find_file(model_path, path, sizeof path);
        if (s != GPO_OK) return s;
    } else if (gpo_gguf_sniff(model_path)) {
        if (strlen(model_path) >= sizeof path) return gpo_fail(GPO_ERR_ARG, "model path too long");
        memcpy(path, model_path, strlen(model_path) + 1);
    } else {
        return gpo_fail(GPO_ERR_NOT_FOUND, "'%s' is not a GGUF model", model_path);
    }
    struct gpo_gguf g = {0};
    GPO_TRY(gpo_gguf_open(&g, path));
    enum gpo_status s;
    if (!gpo_gguf_has_tokenizer(&g))
        s = gpo_fail(GPO_ERR_NOT_FOUND, "%s carries no tokenizer (no tokenizer.ggml.tokens)", path);
    else
        s = gpo_gguf_read_tokenizer(&g, out);
    gpo_gguf_close(&g);
    return s;
}
