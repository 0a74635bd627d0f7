/* config.c - reads config.json in either naming scheme (Hugging Face top-level,
 * or the original/ folder's reference names) into struct gpo_config, with the
 * reference defaults (the 120b values) for keys the original format leaves out. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "util.h"

/* Check that v is a whole number in [lo, hi]; the error names the field. */
static enum gpo_status check_int(const cJSON *v, const char *key, int64_t lo, int64_t hi,
                                 int64_t *out, const char *label) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return gpo_fail(GPO_ERR_CONFIG, "%s: field \"%s\" must be an integer in [%lld, %lld]",
                        label, key, (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return GPO_OK;
}

/* Read an integer field; an absent or null field keeps *out. */
static enum gpo_status get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi,
                               int64_t *out, const char *label) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return GPO_OK;
    return check_int(v, key, lo, hi, out, label);
}

static enum gpo_status get_num(const cJSON *o, const char *key, double lo, double hi,
                               double *out, const char *label) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return GPO_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return gpo_fail(GPO_ERR_CONFIG, "%s: field \"%s\" must be a number in [%g, %g]", label,
                        key, lo, hi);
    *out = v->valuedouble;
    return GPO_OK;
}

/* eos_token_id may be an int or a list; take the first. */
static enum gpo_status get_token_id(const cJSON *o, const char *key, int32_t *out,
                                    const char *label) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (v && cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v || cJSON_IsNull(v)) return GPO_OK;
    int64_t id;
    GPO_TRY(check_int(v, key, 0, INT32_MAX, &id, label));
    *out = (int32_t)id;
    return GPO_OK;
}

enum gpo_status gpo_config_parse(const char *json, size_t len, const char *label,
                                 struct gpo_config *cfg) {
    enum gpo_status s = GPO_OK;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return gpo_fail(GPO_ERR_JSON, "%s: not valid JSON", label);
    if (!cJSON_IsObject(root)) {
        s = gpo_fail(GPO_ERR_JSON, "%s: the top level is not a JSON object", label);
        goto cleanup;
    }

    /* A Hugging Face config names its model type; any other type is not ours. */
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "gpt_oss") != 0)) {
        s = gpo_fail(GPO_ERR_NOT_GPTOSS, "%s: model_type is %s%s%s, not \"gpt_oss\"", label,
                     cJSON_IsString(mt) ? "\"" : "", cJSON_IsString(mt) ? mt->valuestring : "not a string",
                     cJSON_IsString(mt) ? "\"" : "");
        goto cleanup;
    }
    /* The reference defaults are the 120b values (spec 1.2). */
    *cfg = (struct gpo_config){
        .n_layer = 36, .n_embd = 2880, .n_head = 64, .n_head_kv = 8, .head_dim = 64,
        .n_expert = 128, .n_expert_used = 4, .n_ff = 2880, .n_vocab = 201088,
        .sliding_window = 128, .max_position = 0, .rope_theta = 150000.0, .rope_factor = 32.0,
        .rope_beta_fast = 32.0, .rope_beta_slow = 1.0, .rope_orig_ctx = 4096, .rms_eps = 1e-5f,
        .swiglu_limit = 7.0f, .swiglu_alpha = 1.702f, .eos_id = -1, .pad_id = -1,
    };
    const int64_t BIG = (int64_t)1 << 24;
#define INT_FIELD(key, lo, hi, dst)                                                            \
    if ((s = get_int(root, key, lo, hi, &cfg->dst, label)) != GPO_OK) goto cleanup;
    INT_FIELD("num_hidden_layers", 1, GPO_MAX_LAYERS, n_layer);
    INT_FIELD("num_experts", 1, 65536, n_expert);
    INT_FIELD("num_local_experts", 1, 65536, n_expert);
    INT_FIELD("experts_per_token", 1, GPO_MAX_EXPERTS_USED, n_expert_used);
    INT_FIELD("num_experts_per_tok", 1, GPO_MAX_EXPERTS_USED, n_expert_used);
    INT_FIELD("hidden_size", 1, BIG, n_embd);
    INT_FIELD("intermediate_size", 1, BIG, n_ff);
    INT_FIELD("head_dim", 2, 4096, head_dim);
    INT_FIELD("num_attention_heads", 1, 65536, n_head);
    INT_FIELD("num_key_value_heads", 1, 65536, n_head_kv);
    INT_FIELD("vocab_size", 1, BIG, n_vocab);
    INT_FIELD("sliding_window", 1, BIG, sliding_window);
    INT_FIELD("initial_context_length", 1, BIG, rope_orig_ctx);
    INT_FIELD("max_position_embeddings", 1, GPO_MAX_POSITIONS, max_position);
#undef INT_FIELD
#define NUM_FIELD(obj, key, lo, hi, dst)                                                       \
    if ((s = get_num(obj, key, lo, hi, &dst, label)) != GPO_OK) goto cleanup;
    double d;
    NUM_FIELD(root, "rope_theta", 1.0, 1e12, cfg->rope_theta);
    NUM_FIELD(root, "rope_scaling_factor", 1.0, 1e6, cfg->rope_factor);
    NUM_FIELD(root, "rope_ntk_alpha", 1e-6, 1e6, cfg->rope_beta_slow);
    NUM_FIELD(root, "rope_ntk_beta", 1e-6, 1e6, cfg->rope_beta_fast);
    d = cfg->rms_eps;
    NUM_FIELD(root, "rms_norm_eps", 0.0, 1.0, d);
    cfg->rms_eps = (float)d;
    d = cfg->swiglu_limit;
    NUM_FIELD(root, "swiglu_limit", 0.0, 1e9, d);
    cfg->swiglu_limit = (float)d;

    /* HF nests the YaRN parameters (rope_scaling, or rope_parameters in newer files). */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) rs = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) {
            s = gpo_fail(GPO_ERR_CONFIG, "%s: rope_scaling is not an object", label);
            goto cleanup;
        }
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (rt && cJSON_IsString(rt) && strcmp(rt->valuestring, "yarn") != 0) {
            s = gpo_fail(GPO_ERR_CONFIG, "%s: rope_scaling.rope_type is \"%s\"; only \"yarn\" is supported",
                         label, rt->valuestring);
            goto cleanup;
        }
        NUM_FIELD(rs, "factor", 1.0, 1e6, cfg->rope_factor);
        NUM_FIELD(rs, "beta_fast", 1e-6, 1e6, cfg->rope_beta_fast);
        NUM_FIELD(rs, "beta_slow", 1e-6, 1e6, cfg->rope_beta_slow);
        NUM_FIELD(rs, "rope_theta", 1.0, 1e12, cfg->rope_theta);
        if ((s = get_int(rs, "original_max_position_embeddings", 1, BIG, &cfg->rope_orig_ctx,
                         label)) != GPO_OK)
            goto cleanup;
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(rs, "truncate");
        if (tr && cJSON_IsTrue(tr))
            gpo_log(GPO_LOG_WARN, "%s: rope_scaling.truncate is true; GPT-OSS uses unrounded YaRN bounds, as computed here",
                    label);
    }
#undef NUM_FIELD
    if ((s = get_token_id(root, "eos_token_id", &cfg->eos_id, label)) != GPO_OK) goto cleanup;
    if ((s = get_token_id(root, "pad_token_id", &cfg->pad_id, label)) != GPO_OK) goto cleanup;
    if (cfg->max_position == 0) {
        /* Without max_position_embeddings the context is the YaRN-extended one; it
         * sizes the KV caches, so it gets the same bound as the field. */
        double ctx = (double)cfg->rope_orig_ctx * cfg->rope_factor;
        if (ctx > (double)GPO_MAX_POSITIONS) {
            s = gpo_fail(GPO_ERR_CONFIG,
                         "%s: the context initial_context_length %lld x rope scaling factor %g = "
                         "%.0f positions exceeds the limit of %lld; give max_position_embeddings",
                         label, (long long)cfg->rope_orig_ctx, cfg->rope_factor, ctx,
                         (long long)GPO_MAX_POSITIONS);
            goto cleanup;
        }
        cfg->max_position = (int64_t)ctx;
    }

    /* Sliding layers: layer_types when given, else the reference rule (even layers). */
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != cfg->n_layer) {
            s = gpo_fail(GPO_ERR_CONFIG, "%s: layer_types must be a list of %lld entries", label,
                         (long long)cfg->n_layer);
            goto cleanup;
        }
        for (int64_t l = 0; l < cfg->n_layer; l++) {
            const cJSON *e = cJSON_GetArrayItem(lt, (int)l);
            if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0)
                cfg->layer_sliding[l] = 1;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0)
                cfg->layer_sliding[l] = 0;
            else {
                s = gpo_fail(GPO_ERR_CONFIG, "%s: layer_types[%lld] is not \"sliding_attention\" or \"full_attention\"",
                             label, (long long)l);
                goto cleanup;
            }
        }
    } else {
        for (int64_t l = 0; l < cfg->n_layer; l++) cfg->layer_sliding[l] = (l % 2 == 0);
    }
    s = gpo_config_validate(cfg, label);

cleanup:
    cJSON_Delete(root);
    return s;
}

enum gpo_status gpo_config_validate(const struct gpo_config *c, const char *label) {
    if (c->n_layer < 1 || c->n_layer > GPO_MAX_LAYERS)
        return gpo_fail(GPO_ERR_CONFIG, "%s: %lld layers (supported: 1..%d)", label,
                        (long long)c->n_layer, GPO_MAX_LAYERS);
    if (c->n_embd % 32 != 0)
        return gpo_fail(GPO_ERR_CONFIG, "%s: hidden_size %lld is not a multiple of 32 (MXFP4 blocks)",
                        label, (long long)c->n_embd);
    if (c->n_ff % 32 != 0)
        return gpo_fail(GPO_ERR_CONFIG, "%s: intermediate_size %lld is not a multiple of 32 (MXFP4 blocks)",
                        label, (long long)c->n_ff);
    if (c->head_dim % 2 != 0)
        return gpo_fail(GPO_ERR_CONFIG, "%s: head_dim %lld is odd (RoPE pairs halves)", label,
                        (long long)c->head_dim);
    if (c->n_head % c->n_head_kv != 0)
        return gpo_fail(GPO_ERR_CONFIG, "%s: %lld query heads do not divide into %lld KV heads",
                        label, (long long)c->n_head, (long long)c->n_head_kv);
    if (c->n_expert_used < 1 || c->n_expert_used > GPO_MAX_EXPERTS_USED)
        return gpo_fail(GPO_ERR_CONFIG, "%s: %lld experts per token (supported: 1..%d)", label,
                        (long long)c->n_expert_used, GPO_MAX_EXPERTS_USED);
    if (c->n_expert_used > c->n_expert)
        return gpo_fail(GPO_ERR_CONFIG, "%s: %lld experts per token but only %lld experts", label,
                        (long long)c->n_expert_used, (long long)c->n_expert);
    if (c->n_head * c->head_dim > ((int64_t)1 << 20))
        return gpo_fail(GPO_ERR_CONFIG, "%s: attention width %lld is too large", label,
                        (long long)(c->n_head * c->head_dim));
    if (c->max_position < 1 || c->max_position > GPO_MAX_POSITIONS)
        return gpo_fail(GPO_ERR_CONFIG, "%s: max_position_embeddings %lld (supported: 1..%lld)",
                        label, (long long)c->max_position, (long long)GPO_MAX_POSITIONS);
    /* RMSNorm divides by sqrt(mean(x^2) + eps): a zero row needs eps > 0. */
    if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
        return gpo_fail(GPO_ERR_CONFIG, "%s: rms_norm_eps %g must be > 0", label,
                        (double)c->rms_eps);
    /* RoPE divides by log(rope_theta). */
    if (!(c->rope_theta > 1.0) || !isfinite(c->rope_theta))
        return gpo_fail(GPO_ERR_CONFIG, "%s: rope_theta %g must be > 1", label, c->rope_theta);
    /* YaRN blends with a ramp between the frequency-pair bounds low and high (spec
     * 2.5; the real models give 8.09 and 17.40 of 32 pairs): they must be finite
     * with 0 <= low < high <= head_dim/2, or the ramp divides by zero or infinity. */
    double two_pi = 2.0 * 3.14159265358979323846, dh = (double)c->head_dim / 2;
    double low = dh * log((double)c->rope_orig_ctx / (c->rope_beta_fast * two_pi)) / log(c->rope_theta);
    double high = dh * log((double)c->rope_orig_ctx / (c->rope_beta_slow * two_pi)) / log(c->rope_theta);
    if (c->rope_factor > 1.0 &&
        !(isfinite(low) && isfinite(high) && low >= 0.0 && low < high && high <= dh))
        return gpo_fail(GPO_ERR_CONFIG,
                        "%s: YaRN bounds low=%g high=%g must satisfy 0 <= low < high <= %g "
                        "(head_dim/2); check rope_theta %g, beta_fast %g, beta_slow %g and the "
                        "original context %lld",
                        label, low, high, dh, c->rope_theta, c->rope_beta_fast, c->rope_beta_slow,
                        (long long)c->rope_orig_ctx);
    return GPO_OK;
}
