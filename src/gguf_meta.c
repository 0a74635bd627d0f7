/* gguf_meta.c - the gpt-oss.* and tokenizer.ggml.* metadata of a GGUF file read
 * into (and written from) struct gpo_config and gpo_tokenizer, and the tensor
 * table checked against a configuration.  See gguf_meta.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_meta.h"
#include "model.h"
#include "util.h"

/* Upper bound for sizes that have no natural limit (as config.c uses). */
#define BIG ((int64_t)1 << 24)
#define KEY_LEN 96

/* The file named in messages. */
static const char *label_of(const struct gpo_gguf *g) {
    return g->n_files > 0 && g->files[0].path ? g->files[0].path : "GGUF";
}

/* "gpt-oss.<suffix>" in buf. */
static const char *akey(char *buf, const char *suffix) {
    snprintf(buf, KEY_LEN, "%s.%s", GPO_GGUF_ARCH, suffix);
    return buf;
}

/* A file string made safe to quote: at most 64 bytes, non-printables as \xNN. */
static const char *quoted(struct gpo_gguf_str s, char *buf, size_t size) {
    size_t o = 0;
    for (uint64_t i = 0; i < s.len && o + 5 < size; i++) {
        unsigned char c = (unsigned char)s.s[i];
        if (i == 64) {
            o += (size_t)snprintf(buf + o, size - o, "...");
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
    }
    buf[o] = 0;
    return buf;
}

/* ------------------------------------------------------------------------- */
/* Typed keys with ranges                                                    */

/* An integer key in [lo, hi].  An absent key is an error when `required`, else
 * leaves *out and clears *present (present may be NULL). */
static enum gpo_status int_key(const struct gpo_gguf *g, const char *key, int required,
                               int64_t lo, int64_t hi, int64_t *out, int *present) {
    const char *label = label_of(g);
    if (present) *present = 0;
    if (!gpo_gguf_find_kv(g, key)) {
        if (!required) return GPO_OK;
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is missing", label, key);
    }
    int64_t v;
    if (gpo_gguf_get_i64(g, key, &v) != GPO_OK) return gpo_fail_ctx(GPO_ERR_CONFIG, "%s", label);
    if (v < lo || v > hi)
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is %lld, outside [%lld, %lld]", label,
                        key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    if (present) *present = 1;
    return GPO_OK;
}

/* The same for a finite number in [lo, hi]. */
static enum gpo_status num_key(const struct gpo_gguf *g, const char *key, int required,
                               double lo, double hi, double *out, int *present) {
    const char *label = label_of(g);
    if (present) *present = 0;
    if (!gpo_gguf_find_kv(g, key)) {
        if (!required) return GPO_OK;
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is missing", label, key);
    }
    double v;
    if (gpo_gguf_get_f64(g, key, &v) != GPO_OK) return gpo_fail_ctx(GPO_ERR_CONFIG, "%s", label);
    if (!isfinite(v) || v < lo || v > hi)
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is %g, outside [%g, %g]", label, key, v,
                        lo, hi);
    *out = v;
    if (present) *present = 1;
    return GPO_OK;
}

/* An optional string key; *present says whether it was there. */
static enum gpo_status str_key(const struct gpo_gguf *g, const char *key,
                               struct gpo_gguf_str *out, int *present) {
    *present = 0;
    if (!gpo_gguf_find_kv(g, key)) return GPO_OK;
    if (gpo_gguf_get_str(g, key, out) != GPO_OK)
        return gpo_fail_ctx(GPO_ERR_CONFIG, "%s", label_of(g));
    *present = 1;
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Configuration                                                             */

static enum gpo_status check_arch(const struct gpo_gguf *g) {
    const char *label = label_of(g);
    struct gpo_gguf_str a;
    int present;
    char q[300];
    GPO_TRY(str_key(g, "general.architecture", &a, &present));
    if (!present)
        return gpo_fail(GPO_ERR_NOT_GPTOSS, "%s: GGUF key 'general.architecture' is missing",
                        label);
    if (gpo_gguf_str_eq(a, "gptoss"))
        return gpo_fail(GPO_ERR_NOT_GPTOSS,
                        "%s: general.architecture is \"gptoss\", Ollama's own dialect of gpt-oss "
                        "(other tensor names and layout), which is not supported; use a GGUF "
                        "written by llama.cpp's converter (\"" GPO_GGUF_ARCH "\") or the "
                        "safetensors checkpoint",
                        label);
    if (!gpo_gguf_str_eq(a, GPO_GGUF_ARCH))
        return gpo_fail(GPO_ERR_NOT_GPTOSS,
                        "%s: general.architecture is \"%s\", not \"" GPO_GGUF_ARCH "\"", label,
                        quoted(a, q, sizeof q));
    return GPO_OK;
}

/* rope.scaling.*: YaRN, or no scaling at all. */
static enum gpo_status read_rope_scaling(const struct gpo_gguf *g, struct gpo_config *c) {
    const char *label = label_of(g);
    char k1[KEY_LEN], k2[KEY_LEN];
    struct gpo_gguf_str type;
    int has_type, has_factor, yarn = 0;
    double factor = 1.0;
    char q[300];
    GPO_TRY(str_key(g, akey(k1, "rope.scaling.type"), &type, &has_type));
    GPO_TRY(num_key(g, akey(k2, "rope.scaling.factor"), 0, 1.0, 1e6, &factor, &has_factor));
    if (has_type && gpo_gguf_str_eq(type, "yarn")) {
        yarn = 1;
        if (!has_factor)
            return gpo_fail(GPO_ERR_CONFIG, "%s: rope.scaling.type is \"yarn\" but GGUF key '%s' "
                            "is missing", label, k2);
    } else if (has_type && !gpo_gguf_str_eq(type, "none")) {
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is \"%s\"; gpt-oss uses \"yarn\" (or "
                        "no scaling)", label, k1, quoted(type, q, sizeof q));
    } else if (factor != 1.0) {
        /* Without a type llama.cpp would apply linear scaling with this factor. */
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is %g with rope.scaling.type %s; only "
                        "\"yarn\" scaling is supported", label, k2, factor,
                        has_type ? "\"none\"" : "absent");
    }
    c->rope_factor = factor;
    int has_ctx;
    GPO_TRY(int_key(g, akey(k1, "rope.scaling.original_context_length"), yarn, 1, BIG,
                    &c->rope_orig_ctx, &has_ctx));
    if (!has_ctx) c->rope_orig_ctx = c->max_position;
    GPO_TRY(num_key(g, akey(k1, "rope.scaling.yarn_beta_fast"), 0, 1e-6, 1e6,
                    &c->rope_beta_fast, NULL));
    GPO_TRY(num_key(g, akey(k1, "rope.scaling.yarn_beta_slow"), 0, 1e-6, 1e6,
                    &c->rope_beta_slow, NULL));
    return GPO_OK;
}

/* attention.sliding_window_pattern: a period (llama.cpp's set_swa_pattern) or one
 * BOOL per layer; absent: period 2. */
static enum gpo_status read_swa_pattern(const struct gpo_gguf *g, struct gpo_config *c) {
    char key[KEY_LEN];
    akey(key, "attention.sliding_window_pattern");
    const struct gpo_gguf_kv *kv = gpo_gguf_find_kv(g, key);
    int64_t period = 2;
    if (kv && kv->type == GPO_GGUF_ARRAY) {
        if (kv->elem_type != GPO_GGUF_BOOL || kv->n != (uint64_t)c->n_layer)
            return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is an ARRAY of %llu %s, expected "
                            "%lld BOOLs (one per layer) or a period",
                            label_of(g), key, (unsigned long long)kv->n,
                            gpo_gguf_type_name(kv->elem_type), (long long)c->n_layer);
        /* The reader has checked every BOOL is 0 or 1. */
        for (int64_t l = 0; l < c->n_layer; l++) c->layer_sliding[l] = kv->data[l];
        return GPO_OK;
    }
    if (kv) GPO_TRY(int_key(g, key, 1, 0, UINT32_MAX, &period, NULL));
    for (int64_t l = 0; l < c->n_layer; l++)
        c->layer_sliding[l] = period == 0 || l % period < period - 1;
    return GPO_OK;
}

/* token_embd.weight's rows, else gpt-oss.vocab_size, else the tokens array. */
static enum gpo_status read_vocab_size(const struct gpo_gguf *g, struct gpo_config *c) {
    const char *label = label_of(g);
    char key[KEY_LEN];
    const struct gpo_gguf_tensor *t = gpo_gguf_find(g, "token_embd.weight");
    if (t) {
        if (t->n_dims != 2 || t->ne[1] < 1 || t->ne[1] > BIG)
            return gpo_fail(GPO_ERR_SHAPE, "%s: tensor 'token_embd.weight' has %d dimensions and "
                            "ne[1] = %lld; expected 2 dimensions, [n_embd, n_vocab] with n_vocab "
                            "in [1, %lld]", label, t->n_dims, (long long)t->ne[1], (long long)BIG);
        c->n_vocab = t->ne[1];
        return GPO_OK;
    }
    int present;
    GPO_TRY(int_key(g, akey(key, "vocab_size"), 0, 1, BIG, &c->n_vocab, &present));
    if (present) return GPO_OK;
    const struct gpo_gguf_kv *kv = gpo_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (kv && kv->type == GPO_GGUF_ARRAY && kv->n >= 1 && kv->n <= (uint64_t)BIG) {
        c->n_vocab = (int64_t)kv->n;
        return GPO_OK;
    }
    return gpo_fail(GPO_ERR_CONFIG, "%s: the vocabulary size is unknown: no tensor "
                    "'token_embd.weight', no key '%s', no usable array 'tokenizer.ggml.tokens'",
                    label, key);
}

enum gpo_status gpo_gguf_read_config(const struct gpo_gguf *g, struct gpo_config *cfg) {
    if (!g || !cfg) return gpo_fail(GPO_ERR_ARG, "gpo_gguf_read_config: NULL argument");
    const char *label = label_of(g);
    GPO_TRY(check_arch(g));
    /* SwiGLU alpha and limit are not in GGUF: the model's values (spec 1.1). */
    struct gpo_config c = {
        .rope_factor = 1.0, .rope_beta_fast = 32.0, .rope_beta_slow = 1.0,
        .swiglu_limit = 7.0f, .swiglu_alpha = 1.702f, .eos_id = -1, .pad_id = -1,
    };
    char key[KEY_LEN];
    int present;
#define INT_KEY(suffix, req, lo, hi, dst, pres)                                                \
    GPO_TRY(int_key(g, akey(key, suffix), req, lo, hi, &c.dst, pres))
    INT_KEY("block_count", 1, 1, GPO_MAX_LAYERS, n_layer, NULL);
    INT_KEY("context_length", 1, 1, GPO_MAX_POSITIONS, max_position, NULL);
    INT_KEY("embedding_length", 1, 1, BIG, n_embd, NULL);
    /* llama.cpp sizes the experts by expert_feed_forward_length; the converter
     * writes feed_forward_length with the same value. */
    INT_KEY("expert_feed_forward_length", 0, 1, BIG, n_ff, &present);
    if (!present) INT_KEY("feed_forward_length", 1, 1, BIG, n_ff, NULL);
    INT_KEY("attention.head_count", 1, 1, 65536, n_head, NULL);
    c.n_head_kv = c.n_head;
    INT_KEY("attention.head_count_kv", 0, 1, 65536, n_head_kv, NULL);
    INT_KEY("attention.key_length", 1, 2, 4096, head_dim, NULL);
    int64_t v_len = c.head_dim;
    GPO_TRY(int_key(g, akey(key, "attention.value_length"), 0, 1, 4096, &v_len, NULL));
    if (v_len != c.head_dim)
        return gpo_fail(GPO_ERR_CONFIG, "%s: GGUF key '%s' is %lld but attention.key_length is "
                        "%lld; gpt-oss has one head_dim for keys and values", label, key,
                        (long long)v_len, (long long)c.head_dim);
    INT_KEY("expert_count", 1, 1, 65536, n_expert, NULL);
    INT_KEY("expert_used_count", 1, 1, GPO_MAX_EXPERTS_USED, n_expert_used, NULL);
    INT_KEY("attention.sliding_window", 1, 1, BIG, sliding_window, NULL);
#undef INT_KEY
    GPO_TRY(num_key(g, akey(key, "rope.freq_base"), 1, 1.0, 1e12, &c.rope_theta, NULL));
    double eps;
    GPO_TRY(num_key(g, akey(key, "attention.layer_norm_rms_epsilon"), 1, 0.0, 1.0, &eps, NULL));
    c.rms_eps = (float)eps;
    GPO_TRY(read_rope_scaling(g, &c));
    GPO_TRY(read_swa_pattern(g, &c));
    GPO_TRY(read_vocab_size(g, &c));
    int64_t id;
    GPO_TRY(int_key(g, "tokenizer.ggml.eos_token_id", 0, 0, INT32_MAX, &id, &present));
    if (present) c.eos_id = (int32_t)id;
    GPO_TRY(int_key(g, "tokenizer.ggml.padding_token_id", 0, 0, INT32_MAX, &id, &present));
    if (present) c.pad_id = (int32_t)id;
    GPO_TRY(gpo_config_validate(&c, label));
    *cfg = c;
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Tensor table                                                              */

enum tkind { DENSE, SMALL, EXPERT };
enum tgroup { COMMON, SPLIT, FUSED };

struct tspec {
    const char *name; /* full name for globals, the part after "blk.N." for layers */
    enum tkind kind;
    enum tgroup group;
    int n_dims;
    int64_t ne[3];
};

#define N_GLOBAL 3
#define N_LAYER_SPECS 21

static void global_specs(const struct gpo_config *c, struct tspec *s) {
    s[0] = (struct tspec){"token_embd.weight", DENSE, COMMON, 2, {c->n_embd, c->n_vocab}};
    s[1] = (struct tspec){"output_norm.weight", SMALL, COMMON, 1, {c->n_embd}};
    s[2] = (struct tspec){"output.weight", DENSE, COMMON, 2, {c->n_embd, c->n_vocab}};
}

static void layer_specs(const struct gpo_config *c, struct tspec *s) {
    int64_t h = c->n_embd, q = c->n_head * c->head_dim, k = c->n_head_kv * c->head_dim;
    int64_t i = c->n_ff, e = c->n_expert;
    const struct tspec t[N_LAYER_SPECS] = {
        {"attn_norm.weight", SMALL, COMMON, 1, {h}},
        {"attn_q.weight", DENSE, COMMON, 2, {h, q}},
        {"attn_q.bias", SMALL, COMMON, 1, {q}},
        {"attn_k.weight", DENSE, COMMON, 2, {h, k}},
        {"attn_k.bias", SMALL, COMMON, 1, {k}},
        {"attn_v.weight", DENSE, COMMON, 2, {h, k}},
        {"attn_v.bias", SMALL, COMMON, 1, {k}},
        {"attn_output.weight", DENSE, COMMON, 2, {q, h}},
        {"attn_output.bias", SMALL, COMMON, 1, {h}},
        {"attn_sinks.weight", SMALL, COMMON, 1, {c->n_head}},
        {"post_attention_norm.weight", SMALL, COMMON, 1, {h}},
        {"ffn_gate_inp.weight", SMALL, COMMON, 2, {h, e}},
        {"ffn_gate_inp.bias", SMALL, COMMON, 1, {e}},
        {"ffn_down_exps.weight", EXPERT, COMMON, 3, {i, h, e}},
        {"ffn_down_exps.bias", SMALL, COMMON, 2, {h, e}},
        {"ffn_gate_exps.weight", EXPERT, SPLIT, 3, {h, i, e}},
        {"ffn_gate_exps.bias", SMALL, SPLIT, 2, {i, e}},
        {"ffn_up_exps.weight", EXPERT, SPLIT, 3, {h, i, e}},
        {"ffn_up_exps.bias", SMALL, SPLIT, 2, {i, e}},
        {"ffn_gate_up_exps.weight", EXPERT, FUSED, 3, {h, 2 * i, e}},
        {"ffn_gate_up_exps.bias", SMALL, FUSED, 2, {2 * i, e}},
    };
    memcpy(s, t, sizeof t);
}

static int type_allowed(enum tkind k, uint32_t type) {
    switch (k) {
    case DENSE:
        return type == GPO_GGML_F32 || type == GPO_GGML_F16 || type == GPO_GGML_BF16 ||
               type == GPO_GGML_Q8_0;
    case SMALL: return type == GPO_GGML_F32 || type == GPO_GGML_F16 || type == GPO_GGML_BF16;
    default: return type == GPO_GGML_MXFP4;
    }
}

static const char *allowed_names(enum tkind k) {
    return k == DENSE ? "F32, F16, BF16 or Q8_0" : k == SMALL ? "F32, F16 or BF16" : "MXFP4";
}

static void fmt_shape(char *buf, size_t size, int n_dims, const int64_t *ne) {
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < n_dims && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, "%s%lld", d ? ", " : "", (long long)ne[d]);
    if (o < size) snprintf(buf + o, size - o, "]");
}

static enum gpo_status check_tensor(const struct gpo_gguf *g, const char *name,
                                    const struct tspec *sp) {
    const char *label = label_of(g);
    char want[96], got[96];
    fmt_shape(want, sizeof want, sp->n_dims, sp->ne);
    const struct gpo_gguf_tensor *t = gpo_gguf_find(g, name);
    if (!t)
        return gpo_fail(GPO_ERR_MISSING_TENSOR, "%s: tensor '%s' is missing (expected %s %s)",
                        label, name, allowed_names(sp->kind), want);
    if (!type_allowed(sp->kind, t->type)) {
        const char *tn = gpo_ggml_type_name(t->type);
        return gpo_fail(GPO_ERR_DTYPE, "%s: tensor '%s' is %s (type %u); allowed: %s", label, name,
                        tn ? tn : "?", t->type, allowed_names(sp->kind));
    }
    /* ggml compares all four ne (the reader sets ne[d] = 1 past n_dims): its own
     * writer drops trailing dimensions of 1, gguf-py keeps them. */
    int ok = 1;
    for (int d = 0; d < GPO_GGUF_MAX_DIMS && ok; d++)
        ok = t->ne[d] == (d < sp->n_dims ? sp->ne[d] : 1);
    if (!ok) {
        fmt_shape(got, sizeof got, t->n_dims, t->ne);
        return gpo_fail(GPO_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s (ggml ne, "
                        "innermost first)", label, name, got, want);
    }
    return GPO_OK;
}

/* Is name one of the tensors the layout expects?  fused[l] is layer l's layout. */
static int expected_name(const char *name, const struct tspec *glob, const struct tspec *lay,
                         const uint8_t *fused, int64_t n_layer) {
    for (int k = 0; k < N_GLOBAL; k++)
        if (strcmp(name, glob[k].name) == 0) return 1;
    if (strncmp(name, "blk.", 4) != 0) return 0;
    const char *p = name + 4;
    int64_t l = 0;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.')) return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        l = l * 10 + (*p - '0');
        if (l >= n_layer) return 0;
    }
    if (*p++ != '.') return 0;
    enum tgroup grp = fused[l] ? FUSED : SPLIT;
    for (int k = 0; k < N_LAYER_SPECS; k++)
        if ((lay[k].group == COMMON || lay[k].group == grp) && strcmp(p, lay[k].name) == 0)
            return 1;
    return 0;
}

enum gpo_status gpo_gguf_check_shapes(const struct gpo_gguf *g, const struct gpo_config *cfg) {
    if (!g || !cfg) return gpo_fail(GPO_ERR_ARG, "gpo_gguf_check_shapes: NULL argument");
    const char *label = label_of(g);
    if (cfg->n_layer < 1 || cfg->n_layer > GPO_MAX_LAYERS)
        return gpo_fail(GPO_ERR_ARG, "gpo_gguf_check_shapes: %lld layers", (long long)cfg->n_layer);
    struct tspec glob[N_GLOBAL], lay[N_LAYER_SPECS];
    global_specs(cfg, glob);
    layer_specs(cfg, lay);
    uint8_t fused[GPO_MAX_LAYERS];
    char name[GPO_GGUF_MAX_NAME + 32], other[GPO_GGUF_MAX_NAME + 32];
    uint64_t n_expected = N_GLOBAL;
    for (int k = 0; k < N_GLOBAL; k++) GPO_TRY(check_tensor(g, glob[k].name, &glob[k]));
    for (int64_t l = 0; l < cfg->n_layer; l++) {
        /* The layout is whichever the layer's tensors name; split when neither. */
        int split = 0, fuse = 0;
        for (int k = 0; k < N_LAYER_SPECS; k++) {
            if (lay[k].group == COMMON) continue;
            snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, lay[k].name);
            if (!gpo_gguf_find(g, name)) continue;
            if (lay[k].group == SPLIT && !split) {
                split = 1;
                snprintf(other, sizeof other, "%s", name);
            }
            if (lay[k].group == FUSED && !fuse) fuse = 1;
            if (split && fuse)
                return gpo_fail(GPO_ERR_CONFIG, "%s: layer %lld has both '%s' and '%s': one "
                                "expert layout per layer (separate gate/up, or fused gate_up)",
                                label, (long long)l, other, name);
        }
        fused[l] = (uint8_t)fuse;
        for (int k = 0; k < N_LAYER_SPECS; k++) {
            if (lay[k].group != COMMON && lay[k].group != (fuse ? FUSED : SPLIT)) continue;
            snprintf(name, sizeof name, "blk.%lld.%s", (long long)l, lay[k].name);
            GPO_TRY(check_tensor(g, name, &lay[k]));
            n_expected++;
        }
    }
    /* Every expected tensor is there and names are unique, so any surplus is a
     * tensor that does not belong. */
    if (g->n_tensors != n_expected)
        for (size_t i = 0; i < g->n_tensors; i++)
            if (!expected_name(g->tensors[i].name, glob, lay, fused, cfg->n_layer))
                return gpo_fail(GPO_ERR_CONFIG, "%s: tensor '%s' is not part of a gpt-oss model "
                                "with %lld layers (%llu tensors expected, the file has %llu)",
                                label, g->tensors[i].name, (long long)cfg->n_layer,
                                (unsigned long long)n_expected, (unsigned long long)g->n_tensors);
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Writing the configuration                                                 */

static int writer_has_key(const struct gpo_gguf_writer *w, const char *key) {
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return 1;
    return 0;
}

static enum gpo_status put_u32(struct gpo_gguf_writer *w, const char *suffix, int64_t v) {
    char key[KEY_LEN];
    akey(key, suffix);
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return gpo_fail(GPO_ERR_ARG, "GGUF key '%s': %lld does not fit a U32", key, (long long)v);
    return gpo_gguf_writer_kv_u32(w, key, (uint32_t)v);
}

static enum gpo_status put_f32(struct gpo_gguf_writer *w, const char *suffix, double v) {
    char key[KEY_LEN];
    return gpo_gguf_writer_kv_f32(w, akey(key, suffix), (float)v);
}

/* The period-2 rule llama.cpp applies to gpt-oss when no pattern is stored. */
static int default_swa(const struct gpo_config *c) {
    for (int64_t l = 0; l < c->n_layer; l++)
        if (c->layer_sliding[l] != (l % 2 == 0)) return 0;
    return 1;
}

enum gpo_status gpo_gguf_write_config(struct gpo_gguf_writer *w, const struct gpo_config *cfg,
                                      const char *name) {
    if (!w || !cfg) return gpo_fail(GPO_ERR_ARG, "gpo_gguf_write_config: NULL argument");
    GPO_TRY(gpo_config_validate(cfg, "gpo_gguf_write_config"));
    GPO_TRY(gpo_gguf_writer_kv_str(w, "general.architecture", GPO_GGUF_ARCH));
    if (name) GPO_TRY(gpo_gguf_writer_kv_str(w, "general.name", name));
    /* The order of llama.cpp's converter (TextModel, then GptOssModel). */
    GPO_TRY(put_u32(w, "vocab_size", cfg->n_vocab));
    GPO_TRY(put_u32(w, "block_count", cfg->n_layer));
    GPO_TRY(put_u32(w, "context_length", cfg->max_position));
    GPO_TRY(put_u32(w, "embedding_length", cfg->n_embd));
    GPO_TRY(put_u32(w, "feed_forward_length", cfg->n_ff));
    GPO_TRY(put_u32(w, "attention.head_count", cfg->n_head));
    GPO_TRY(put_u32(w, "attention.head_count_kv", cfg->n_head_kv));
    GPO_TRY(put_f32(w, "rope.freq_base", cfg->rope_theta));
    GPO_TRY(put_f32(w, "attention.layer_norm_rms_epsilon", cfg->rms_eps));
    GPO_TRY(put_u32(w, "expert_count", cfg->n_expert));
    GPO_TRY(put_u32(w, "expert_used_count", cfg->n_expert_used));
    GPO_TRY(put_u32(w, "attention.key_length", cfg->head_dim));
    GPO_TRY(put_u32(w, "attention.value_length", cfg->head_dim));
    GPO_TRY(put_u32(w, "attention.sliding_window", cfg->sliding_window));
    GPO_TRY(put_u32(w, "expert_feed_forward_length", cfg->n_ff));
    char key[KEY_LEN];
    GPO_TRY(gpo_gguf_writer_kv_str(w, akey(key, "rope.scaling.type"),
                                   cfg->rope_factor > 1.0 ? "yarn" : "none"));
    GPO_TRY(put_f32(w, "rope.scaling.factor", cfg->rope_factor));
    GPO_TRY(put_u32(w, "rope.scaling.original_context_length", cfg->rope_orig_ctx));
    if (cfg->rope_beta_fast != 32.0)
        GPO_TRY(put_f32(w, "rope.scaling.yarn_beta_fast", cfg->rope_beta_fast));
    if (cfg->rope_beta_slow != 1.0)
        GPO_TRY(put_f32(w, "rope.scaling.yarn_beta_slow", cfg->rope_beta_slow));
    if (!default_swa(cfg)) {
        uint8_t pat[GPO_MAX_LAYERS];
        for (int64_t l = 0; l < cfg->n_layer; l++) pat[l] = cfg->layer_sliding[l] ? 1 : 0;
        GPO_TRY(gpo_gguf_writer_kv_arr(w, akey(key, "attention.sliding_window_pattern"),
                                       GPO_GGUF_BOOL, pat, (uint64_t)cfg->n_layer));
    }
    GPO_TRY(gpo_gguf_writer_kv_u32(w, "general.quantization_version", 2));
    if (cfg->eos_id >= 0 && !writer_has_key(w, "tokenizer.ggml.eos_token_id"))
        GPO_TRY(gpo_gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)cfg->eos_id));
    if (cfg->pad_id >= 0 && !writer_has_key(w, "tokenizer.ggml.padding_token_id"))
        GPO_TRY(gpo_gguf_writer_kv_u32(w, "tokenizer.ggml.padding_token_id",
                                       (uint32_t)cfg->pad_id));
    return GPO_OK;
}

int gpo_gguf_file_type(uint32_t dense_type, uint32_t *out) {
    uint32_t ft;
    switch (dense_type) {
    case GPO_GGML_F32: ft = 0; break;   /* ALL_F32 */
    case GPO_GGML_F16: ft = 1; break;   /* MOSTLY_F16 */
    case GPO_GGML_Q8_0: ft = 7; break;  /* MOSTLY_Q8_0 */
    case GPO_GGML_BF16: ft = 32; break; /* MOSTLY_BF16 */
    default: return -1;
    }
    *out = ft;
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Tokenizer                                                                 */

int gpo_gguf_has_tokenizer(const struct gpo_gguf *g) {
    return g && gpo_gguf_find_kv(g, "tokenizer.ggml.tokens") != NULL;
}

/* Optional string key into v; a wrong type is an error naming it. */
static enum gpo_status tok_str(const struct gpo_gguf *g, const char *key, int required,
                               struct gpo_tok_str *out) {
    if (!gpo_gguf_find_kv(g, key)) {
        if (!required) return GPO_OK;
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: GGUF key '%s' is missing", label_of(g), key);
    }
    struct gpo_gguf_str s;
    if (gpo_gguf_get_str(g, key, &s) != GPO_OK)
        return gpo_fail_ctx(GPO_ERR_TOKENIZER, "%s", label_of(g));
    *out = (struct gpo_tok_str){s.s, s.len};
    return GPO_OK;
}

/* A string array as (pointer, length) pairs into the mapping; *out is malloc'd. */
static enum gpo_status tok_strs(const struct gpo_gguf *g, const char *key, int required,
                                uint64_t *n, struct gpo_tok_str **out) {
    *n = 0;
    *out = NULL;
    if (!gpo_gguf_find_kv(g, key)) {
        if (!required) return GPO_OK;
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: GGUF key '%s' is missing", label_of(g), key);
    }
    struct gpo_gguf_arr a;
    if (gpo_gguf_get_arr(g, key, GPO_GGUF_STRING, &a) != GPO_OK)
        return gpo_fail_ctx(GPO_ERR_TOKENIZER, "%s", label_of(g));
    /* The reader checked each string lies in the file: n <= size / 8. */
    struct gpo_tok_str *v = malloc((a.n ? a.n : 1) * sizeof *v);
    if (!v) return gpo_fail(GPO_ERR_NOMEM, "%s: out of memory for '%s' (%llu strings)",
                            label_of(g), key, (unsigned long long)a.n);
    struct gpo_gguf_str_iter it;
    struct gpo_gguf_str s;
    gpo_gguf_str_iter_init(&it, &a);
    for (uint64_t i = 0; gpo_gguf_str_next(&it, &s); i++) v[i] = (struct gpo_tok_str){s.s, s.len};
    *n = a.n;
    *out = v;
    return GPO_OK;
}

static enum gpo_status tok_id(const struct gpo_gguf *g, const char *key, int64_t *out) {
    *out = -1;
    if (!gpo_gguf_find_kv(g, key)) return GPO_OK;
    int64_t v;
    if (gpo_gguf_get_i64(g, key, &v) != GPO_OK)
        return gpo_fail_ctx(GPO_ERR_TOKENIZER, "%s", label_of(g));
    if (v < 0 || v > INT32_MAX)
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: GGUF key '%s' is %lld, not a token id",
                        label_of(g), key, (long long)v);
    *out = v;
    return GPO_OK;
}

enum gpo_status gpo_gguf_read_tokenizer(const struct gpo_gguf *g, gpo_tokenizer **out) {
    if (!g || !out) return gpo_fail(GPO_ERR_ARG, "gpo_gguf_read_tokenizer: NULL argument");
    *out = NULL;
    struct gpo_tok_vocab v = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    struct gpo_tok_str *tokens = NULL, *merges = NULL;
    enum gpo_status s = tok_str(g, "tokenizer.ggml.model", 1, &v.model);
    if (s == GPO_OK) s = tok_str(g, "tokenizer.ggml.pre", 0, &v.pre);
    if (s == GPO_OK) s = tok_strs(g, "tokenizer.ggml.tokens", 1, &v.n_tokens, &tokens);
    if (s == GPO_OK) {
        struct gpo_gguf_arr a;
        if (!gpo_gguf_find_kv(g, "tokenizer.ggml.token_type"))
            s = gpo_fail(GPO_ERR_TOKENIZER, "%s: GGUF key 'tokenizer.ggml.token_type' is missing",
                         label_of(g));
        else if (gpo_gguf_get_arr(g, "tokenizer.ggml.token_type", GPO_GGUF_I32, &a) != GPO_OK)
            s = gpo_fail_ctx(GPO_ERR_TOKENIZER, "%s", label_of(g));
        else {
            v.n_types = a.n;
            v.types = a.data; /* int32 little-endian, read with memcpy by the loader */
        }
    }
    if (s == GPO_OK) s = tok_strs(g, "tokenizer.ggml.merges", 0, &v.n_merges, &merges);
    if (s == GPO_OK) s = tok_id(g, "tokenizer.ggml.bos_token_id", &v.bos_id);
    if (s == GPO_OK) s = tok_id(g, "tokenizer.ggml.eos_token_id", &v.eos_id);
    if (s == GPO_OK) s = tok_id(g, "tokenizer.ggml.padding_token_id", &v.pad_id);
    v.tokens = tokens;
    v.merges = merges;
    if (s == GPO_OK) {
        s = gpo_tokenizer_load_vocab(&v, out);
        if (s != GPO_OK) gpo_fail_ctx(s, "%s", label_of(g));
    }
    free(tokens);
    free(merges);
    return s;
}

/* A string array from (pointer, length) pairs. */
static enum gpo_status put_strs(struct gpo_gguf_writer *w, const char *key,
                                const struct gpo_tok_str *v, uint64_t n) {
    const char **p = malloc((n ? n : 1) * sizeof *p);
    uint64_t *len = malloc((n ? n : 1) * sizeof *len);
    enum gpo_status s = GPO_OK;
    if (!p || !len) s = gpo_fail(GPO_ERR_NOMEM, "out of memory writing '%s'", key);
    for (uint64_t i = 0; s == GPO_OK && i < n; i++) {
        p[i] = v[i].ptr;
        len[i] = v[i].len;
    }
    if (s == GPO_OK) s = gpo_gguf_writer_kv_arr_str(w, key, p, len, n);
    free(p);
    free(len);
    return s;
}

static enum gpo_status put_id(struct gpo_gguf_writer *w, const char *key, int64_t id) {
    if (id < 0 || writer_has_key(w, key)) return GPO_OK;
    return gpo_gguf_writer_kv_u32(w, key, (uint32_t)id);
}

enum gpo_status gpo_gguf_write_tokenizer(struct gpo_gguf_writer *w, const gpo_tokenizer *t,
                                         int64_t n_vocab) {
    if (!w || !t) return gpo_fail(GPO_ERR_ARG, "gpo_gguf_write_tokenizer: NULL argument");
    if (n_vocab < 0)
        return gpo_fail(GPO_ERR_ARG, "gpo_gguf_write_tokenizer: n_vocab %lld", (long long)n_vocab);
    struct gpo_tok_vocab v;
    GPO_TRY(gpo_tokenizer_export_vocab(t, (uint64_t)n_vocab, &v));
    enum gpo_status s =
        gpo_gguf_writer_kv_strn(w, "tokenizer.ggml.model", v.model.ptr, v.model.len);
    if (s == GPO_OK) s = gpo_gguf_writer_kv_strn(w, "tokenizer.ggml.pre", v.pre.ptr, v.pre.len);
    if (s == GPO_OK) s = put_strs(w, "tokenizer.ggml.tokens", v.tokens, v.n_tokens);
    if (s == GPO_OK)
        s = gpo_gguf_writer_kv_arr(w, "tokenizer.ggml.token_type", GPO_GGUF_I32, v.types,
                                   v.n_types);
    if (s == GPO_OK) s = put_strs(w, "tokenizer.ggml.merges", v.merges, v.n_merges);
    if (s == GPO_OK) s = put_id(w, "tokenizer.ggml.bos_token_id", v.bos_id);
    if (s == GPO_OK) s = put_id(w, "tokenizer.ggml.eos_token_id", v.eos_id);
    if (s == GPO_OK) s = put_id(w, "tokenizer.ggml.padding_token_id", v.pad_id);
    gpo_tok_vocab_free(&v);
    return s;
}
