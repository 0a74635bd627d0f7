/* test_math.c - unit tests of the model math against the spec's test vectors:
 * MXFP4 decoding (10.3), YaRN inv_freq and concentration (2.5), sinks (10.4), the
 * sliding-window mask (10.5), router top-k + softmax, SwiGLU clamps. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include <stdlib.h>
#include <unistd.h>

#include "forward.h"
#include "model.h"
#include "kernels/kernels.h"
#include "util.h"

static struct gpo_config real_config(void) {
    struct gpo_config c = {
        .n_layer = 24, .n_embd = 2880, .n_head = 64, .n_head_kv = 8, .head_dim = 64,
        .n_expert = 32, .n_expert_used = 4, .n_ff = 2880, .n_vocab = 201088, .sliding_window = 128,
        .max_position = 131072, .rope_theta = 150000.0, .rope_factor = 32.0, .rope_beta_fast = 32.0,
        .rope_beta_slow = 1.0, .rope_orig_ctx = 4096, .rms_eps = 1e-5f, .swiglu_limit = 7.0f,
        .swiglu_alpha = 1.702f,
    };
    return c;
}

static void test_mxfp4_spec_vector(void **state) {
    (void)state;
    uint8_t blocks[16] = {0x10, 0x32}, scales[1] = {127};
    float out[32];
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    assert_true(out[0] == 0.0f && !signbit(out[0]));
    assert_float_equal(out[1], 0.5f, 0);
    assert_float_equal(out[2], 1.0f, 0);
    assert_float_equal(out[3], 1.5f, 0);
    for (int i = 4; i < 32; i++) assert_true(out[i] == 0.0f);
    scales[0] = 120;
    gpo_mxfp4_dequant_row(out, blocks, scales, 32);
    assert_float_equal(out[3], 1.5f / 128.0f, 0);
    /* Every code, high nibble = odd element, sign bit 3. */
    static const float want[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    for (int code = 0; code < 16; code++) {
        uint8_t b[16] = {0};
        b[5] = (uint8_t)(code << 4);
        scales[0] = 127;
        gpo_mxfp4_dequant_row(out, b, scales, 32);
        assert_float_equal(out[11], want[code], 0);
        assert_true(out[10] == 0.0f);
    }
    /* E8M0 edges. */
    assert_float_equal(gpo_e8m0_to_f32(127), 1.0f, 0);
    assert_float_equal(gpo_e8m0_to_f32(128), 2.0f, 0);
    assert_float_equal(gpo_e8m0_to_f32(0), ldexpf(1.0f, -127), 0);
    assert_true(isinf(gpo_e8m0_to_f32(255)));
}

static void test_yarn(void **state) {
    (void)state;
    struct gpo_config c = real_config();
    float inv[32], conc;
    gpo_rope_inv_freq(&c, inv, &conc);
    static const double want[32] = {
        1.000000000e+00, 6.890443059e-01, 4.747820555e-01, 3.271458719e-01, 2.254180002e-01,
        1.553229895e-01, 1.070244215e-01, 7.374456821e-02, 5.081327482e-02, 3.170569618e-02,
        1.933500113e-02, 1.159204926e-02, 6.794959490e-03, 3.860359317e-03, 2.093792379e-03,
        1.052602101e-03, 4.564839192e-04, 1.293187012e-04, 3.830881237e-05, 2.639646903e-05,
        1.818833668e-05, 1.253256982e-05, 8.635495875e-06, 5.950239261e-06, 4.099978482e-06,
        2.825066827e-06, 1.946596211e-06, 1.341291035e-06, 9.242089502e-07, 6.368209146e-07,
        4.387978251e-07, 3.023511428e-07};
    for (int j = 0; j < 32; j++) assert_true(fabs(inv[j] - want[j]) <= 1e-6 * want[j] + 1e-12);
    assert_true(fabs(conc - 1.3465735902799727) < 1e-6);
    /* Scaled (cos, sin) samples of spec 2.5. */
    struct { int p, j; double c, s; } smp[] = {
        {1, 0, 0.727557, 1.133103},    {1, 8, 1.344836, 0.068394},   {1, 12, 1.346543, 0.009150},
        {4096, 0, 1.082633, -0.800729}, {4096, 8, 0.951542, 0.952800}, {4096, 12, -1.217062, 0.576213}};
    for (size_t i = 0; i < sizeof smp / sizeof *smp; i++) {
        float th = (float)smp[i].p * inv[smp[i].j];
        assert_true(fabs(cosf(th) * conc - smp[i].c) < 2e-4);
        assert_true(fabs(sinf(th) * conc - smp[i].s) < 2e-4);
    }
}

static void test_rope_half_split(void **state) {
    (void)state;
    float u[64], cv[32], sv[32];
    for (int i = 0; i < 64; i++) u[i] = (float)i;
    for (int j = 0; j < 32; j++) {
        cv[j] = 0.0f;
        sv[j] = 1.0f; /* a quarter turn: (a, b) -> (-b, a) */
    }
    gpo_rope_apply(u, 1, 64, cv, sv);
    for (int j = 0; j < 32; j++) {
        assert_float_equal(u[j], -(float)(j + 32), 0);
        assert_float_equal(u[j + 32], (float)j, 0);
    }
}

static void test_topk_softmax(void **state) {
    (void)state;
    float lg[8] = {0.5f, 2.0f, -1.0f, 2.0f, 3.0f, 0.0f, 1.0f, -3.0f};
    int32_t idx[4];
    float w[4];
    gpo_topk_softmax(lg, 8, 4, idx, w);
    /* descending, the tie between 1 and 3 goes to the lower index */
    assert_int_equal(idx[0], 4);
    assert_int_equal(idx[1], 1);
    assert_int_equal(idx[2], 3);
    assert_int_equal(idx[3], 6);
    double den = exp(3) + 2 * exp(2) + exp(1);
    assert_true(fabs(w[0] - exp(3) / den) < 1e-6);
    assert_true(fabs(w[1] - exp(2) / den) < 1e-6);
    assert_true(fabs(w[3] - exp(1) / den) < 1e-6);
    assert_true(fabs(w[0] + w[1] + w[2] + w[3] - 1.0) < 1e-6);
}

/* The selection by repeated maximum that the router has always used: the
 * reference for the heap selection. */
static void topk_naive(const float *lg, int64_t n, int64_t k, int32_t *idx) {
    for (int64_t i = 0; i < k; i++) {
        int64_t best = -1;
        for (int64_t e = 0; e < n; e++) {
            int taken = 0;
            for (int64_t j = 0; j < i; j++) taken |= idx[j] == e;
            if (taken) continue;
            if (best < 0 || lg[e] > lg[best]) best = e;
        }
        idx[i] = (int32_t)best;
    }
}

/* Same ids, order and weights as the repeated maximum, with many ties and -inf. */
static void test_topk_matches_reference(void **state) {
    (void)state;
    uint64_t r = 99;
    float lg[160];
    int32_t got[64], want[64];
    float w[64], ww[64];
    for (int it = 0; it < 400; it++) {
        int64_t n = 1 + (int64_t)(it % 160), k = 1 + (int64_t)((it * 7) % 64);
        if (k > n) k = n;
        for (int64_t e = 0; e < n; e++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            int v = (int)((r >> 33) % 9);
            lg[e] = v == 8 ? -INFINITY : (float)(v - 4) * 0.5f; /* few values: ties */
        }
        gpo_topk_softmax(lg, n, k, got, w);
        topk_naive(lg, n, k, want);
        float mx = lg[want[0]], sum = 0.0f;
        for (int64_t i = 0; i < k; i++) {
            ww[i] = expf(lg[want[i]] - mx);
            sum += ww[i];
        }
        for (int64_t i = 0; i < k; i++) {
            assert_int_equal(got[i], want[i]);
            assert_true(w[i] == ww[i] / sum); /* bit for bit */
        }
    }
}

/* Thousands of experts and of experts per token stay quick (a quadratic selection
 * would take minutes here); the alarm turns a hang into a failure. */
static void test_topk_large(void **state) {
    (void)state;
    const int64_t n = 65536, k = 4096;
    float *lg = malloc((size_t)n * sizeof *lg);
    int32_t *idx = malloc((size_t)k * sizeof *idx);
    float *w = malloc((size_t)k * sizeof *w);
    assert_true(lg && idx && w);
    for (int64_t e = 0; e < n; e++) lg[e] = (float)((e * 7919) % 1000) * 0.01f;
    alarm(20);
    gpo_topk_softmax(lg, n, k, idx, w);
    alarm(0);
    for (int64_t i = 1; i < k; i++)
        assert_true(lg[idx[i - 1]] > lg[idx[i]] ||
                    (lg[idx[i - 1]] == lg[idx[i]] && idx[i - 1] < idx[i]));
    assert_float_equal(lg[idx[0]], 9.99f, 1e-6);
    free(lg);
    free(idx);
    free(w);
}

/* Parse a config.json text; on an error the message must hold `needle`. */
static enum gpo_status parse_cfg(const char *json, struct gpo_config *c, const char *needle) {
    enum gpo_status s = gpo_config_parse(json, strlen(json), "config.json", c);
    if (s != GPO_OK && needle && !strstr(gpo_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", gpo_last_error(), needle);
    return s;
}

static void test_config_limits(void **state) {
    (void)state;
    struct gpo_config c;
    /* The defaults (the 120b) and the 20b load. */
    assert_int_equal(parse_cfg("{}", &c, NULL), GPO_OK);
    assert_int_equal(c.max_position, 131072);
    assert_int_equal(parse_cfg("{\"num_hidden_layers\": 24, \"num_local_experts\": 32, "
                               "\"num_experts_per_tok\": 4, \"rope_theta\": 150000, "
                               "\"rms_norm_eps\": 1e-05, \"max_position_embeddings\": 131072, "
                               "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 32.0, "
                               "\"beta_fast\": 32.0, \"beta_slow\": 1.0, "
                               "\"original_max_position_embeddings\": 4096}}",
                               &c, NULL),
                     GPO_OK);
    /* Experts per token: 64 at most, named in the error. */
    assert_int_equal(parse_cfg("{\"experts_per_token\": 64}", &c, NULL), GPO_OK);
    assert_int_equal(parse_cfg("{\"experts_per_token\": 65536, \"num_experts\": 65536}", &c,
                               "experts_per_token"),
                     GPO_ERR_CONFIG);
    assert_non_null(strstr(gpo_last_error(), "64"));
    c = real_config();
    c.n_expert_used = 65;
    assert_int_equal(gpo_config_validate(&c, "cfg"), GPO_ERR_CONFIG);
    /* rope_theta 1 would divide by log(1) = 0: the YaRN bounds become infinite. */
    assert_int_equal(parse_cfg("{\"rope_theta\": 1.0, \"rope_ntk_beta\": 1e6, "
                               "\"rope_ntk_alpha\": 1e-6}", &c, "rope_theta"),
                     GPO_ERR_CONFIG);
    /* Bounds outside [0, head_dim/2]. */
    assert_int_equal(parse_cfg("{\"rope_ntk_alpha\": 1e-6}", &c, "YaRN"), GPO_ERR_CONFIG);
    assert_int_equal(parse_cfg("{\"rope_ntk_beta\": 1e6}", &c, "YaRN"), GPO_ERR_CONFIG);
    /* Without YaRN the bounds are not used. */
    assert_int_equal(parse_cfg("{\"rope_scaling_factor\": 1.0, \"rope_ntk_beta\": 1e6}", &c,
                               NULL), GPO_OK);
    /* eps 0 divides by zero on a zero row. */
    assert_int_equal(parse_cfg("{\"rms_norm_eps\": 0}", &c, "rms_norm_eps"), GPO_ERR_CONFIG);
    assert_int_equal(parse_cfg("{\"rms_norm_eps\": 1e-50}", &c, "rms_norm_eps"),
                     GPO_ERR_CONFIG);
    /* The derived context is bounded like max_position_embeddings. */
    assert_int_equal(parse_cfg("{\"initial_context_length\": 16000000, "
                               "\"rope_scaling_factor\": 1000000}", &c,
                               "initial_context_length"),
                     GPO_ERR_CONFIG);
    assert_int_equal(parse_cfg("{\"max_position_embeddings\": 2147483648}", &c,
                               "max_position_embeddings"),
                     GPO_ERR_CONFIG);
}

/* KV sizes that do not fit in 64 bits saturate instead of wrapping. */
static void test_kv_bytes_overflow(void **state) {
    (void)state;
    struct gpo_config c = real_config();
    for (int l = 0; l < 24; l++) c.layer_sliding[l] = (l % 2 == 0);
    /* 12 full layers x 131072 x 512 x 2 x 4 + 12 sliding layers x 128 x 512 x 8 */
    assert_int_equal(gpo_kv_bytes_for(&c, 131072), 12ull * 131072 * 4096 + 12ull * 128 * 4096);
    c.n_layer = 256;
    c.n_head = c.n_head_kv = 4096;
    c.head_dim = 4096;
    memset(c.layer_sliding, 0, sizeof c.layer_sliding);
    assert_true(gpo_kv_bytes_for(&c, (int64_t)1 << 40) == UINT64_MAX);
}

static void test_swiglu(void **state) {
    (void)state;
    /* pairs (gate, linear) */
    float h[10] = {1.0f, 2.0f, 10.0f, 0.5f, 1.0f, 10.0f, 1.0f, -10.0f, -8.0f, 1.0f};
    float out[5];
    gpo_swiglu(out, h, 5, 1.702f, 7.0f);
    double sg = 1.0 / (1.0 + exp(-1.702));
    assert_true(fabs(out[0] - 1.0 * sg * 3.0) < 1e-6);
    /* gate clamped from above to 7 */
    assert_true(fabs(out[1] - 7.0 / (1.0 + exp(-1.702 * 7.0)) * 1.5) < 1e-5);
    /* linear clamped to [-7, 7], then +1 */
    assert_true(fabs(out[2] - sg * 8.0) < 1e-6);
    assert_true(fabs(out[3] - sg * -6.0) < 1e-6);
    /* the gate is not clamped from below */
    assert_true(fabs(out[4] - (-8.0 / (1.0 + exp(1.702 * 8.0))) * 2.0) < 1e-7);
}

static void test_rmsnorm(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, out[4];
    uint16_t sc[4] = {f32_to_bf16(1.0f), f32_to_bf16(2.0f), f32_to_bf16(0.5f), f32_to_bf16(1.0f)};
    struct gpo_tview v = {.data = sc, .dtype = GPO_DT_BF16, .rows = 1, .cols = 4};
    gpo_rmsnorm(out, x, &v, 4, 1e-5f);
    double r = 1.0 / sqrt(30.0 / 4 + 1e-5);
    assert_true(fabs(out[0] - 1 * r) < 1e-6);
    assert_true(fabs(out[1] - 4 * r) < 1e-6);
    assert_true(fabs(out[2] - 1.5 * r) < 1e-6);
}

static void test_f16_bf16(void **state) {
    (void)state;
    float vals[] = {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, 0.333333f};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        float back = f16_to_f32(f32_to_f16(vals[i]));
        assert_true(fabsf(back - vals[i]) <= fabsf(vals[i]) * 1e-3f);
        float bb = bf16_to_f32(f32_to_bf16(vals[i]));
        assert_true(fabsf(bb - vals[i]) <= fabsf(vals[i]) * 8e-3f);
    }
    assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(f32_to_f16(1.0f), 0x3c00);
}

static void test_sliding_mask(void **state) {
    (void)state;
    struct gpo_config c = real_config();
    for (int l = 0; l < 24; l++) c.layer_sliding[l] = (l % 2 == 0);
    /* spec 10.5: layer 0 at p=200 sees keys 73..200 (128 keys); layer 1 sees 0..200 */
    assert_int_equal(gpo_attn_first_key(&c, 0, 200), 73);
    assert_int_equal(gpo_attn_first_key(&c, 1, 200), 0);
    assert_int_equal(gpo_attn_first_key(&c, 2, 127), 0);
    assert_int_equal(gpo_attn_first_key(&c, 2, 128), 1);
    assert_int_equal(gpo_attn_first_key(&c, 0, 5), 0);
}

static void test_sinks(void **state) {
    (void)state;
    float q[64], k[64], v[64], out[64];
    for (int d = 0; d < 64; d++) {
        q[d] = 0.1f * (float)(d % 7) - 0.3f;
        k[d] = 0.05f * (float)(d % 5);
        v[d] = (float)d - 20.0f;
    }
    double s = 0;
    for (int d = 0; d < 64; d++) s += (double)q[d] * k[d];
    s *= 0.125;
    /* spec 10.4: first token, output = v0 * e^s / (e^S + e^s); the sink is not scaled */
    float sink = 1.25f;
    gpo_attention_head_ref(out, q, k, v, 1, 64, 64, sink);
    double w = exp(s) / (exp(sink) + exp(s));
    for (int d = 0; d < 64; d++) assert_true(fabs(out[d] - v[d] * w) < 1e-4);
    /* sink -> -inf is plain attention: weight 1 on the only key */
    gpo_attention_head_ref(out, q, k, v, 1, 64, 64, -INFINITY);
    for (int d = 0; d < 64; d++) assert_true(fabs(out[d] - v[d]) < 1e-5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mxfp4_spec_vector), cmocka_unit_test(test_yarn),
        cmocka_unit_test(test_rope_half_split),   cmocka_unit_test(test_topk_softmax),
        cmocka_unit_test(test_swiglu),            cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_f16_bf16),          cmocka_unit_test(test_sliding_mask),
        cmocka_unit_test(test_sinks),
        cmocka_unit_test(test_topk_matches_reference), cmocka_unit_test(test_topk_large),
        cmocka_unit_test(test_config_limits),     cmocka_unit_test(test_kv_bytes_overflow),
    };
    return cmocka_run_group_tests_name("math", tests, NULL, NULL);
}
