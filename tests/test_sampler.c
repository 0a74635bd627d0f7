/* test_sampler.c - the sampler: greedy, seeds, top-k/top-p/min-p candidate sets
 * on hand-made distributions, penalties, banned ids and the harmony mask,
 * log-probabilities, the stop rules of a harmony turn, and sampling from the
 * best candidates of a row (as a sharded pass sends them) against the row. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpo.h"

#define BIG_VOCAB 201088

/* A small deterministic generator for test logits (independent of the sampler's). */
static uint64_t test_rng = 88172645463325252ull;
static float test_randn(void) {
    double u = 0;
    for (int i = 0; i < 12; i++) {
        test_rng ^= test_rng << 13;
        test_rng ^= test_rng >> 7;
        test_rng ^= test_rng << 17;
        u += (double)(test_rng >> 11) / 9007199254740992.0;
    }
    return (float)(u - 6.0);
}

static float *random_logits(int64_t n, float scale) {
    float *l = malloc((size_t)n * sizeof *l);
    assert_non_null(l);
    for (int64_t i = 0; i < n; i++) l[i] = test_randn() * scale;
    return l;
}

static gpo_sampler *make(const struct gpo_sampler_params *p, int64_t n, const uint8_t *ban) {
    gpo_sampler *s = NULL;
    assert_int_equal(gpo_sampler_create(p, n, ban, &s), GPO_OK);
    assert_non_null(s);
    return s;
}

/* Logits whose softmax is exactly probs (log p). */
static void logits_of(const double *probs, float *l, int n) {
    for (int i = 0; i < n; i++) l[i] = probs[i] > 0 ? (float)log(probs[i]) : -INFINITY;
}

/* Draw `draws` ids and count them per id. */
static void histogram(gpo_sampler *s, const float *l, int n, int draws, int *counts) {
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int i = 0; i < draws; i++) {
        int32_t id = -1;
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        assert_true(id >= 0 && id < n);
        counts[id]++;
    }
}

/* ------------------------------------------------------------------------- */

static void test_greedy_argmax(void **state) {
    (void)state;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.temperature = 0;
    float *l = random_logits(BIG_VOCAB, 3.0f);
    gpo_sampler *s = make(&p, BIG_VOCAB, NULL);
    int32_t best = 0;
    for (int32_t i = 1; i < BIG_VOCAB; i++)
        if (l[i] > l[best]) best = i;
    int32_t got = -1;
    assert_int_equal(gpo_sampler_sample(s, l, &got, NULL), GPO_OK);
    assert_int_equal(got, best);

    /* Ties go to the lowest id. */
    l[777] = l[best] + 5;
    l[91234] = l[777];
    l[200] = l[777];
    assert_int_equal(gpo_sampler_sample(s, l, &got, NULL), GPO_OK);
    assert_int_equal(got, 200);
    /* NaN never wins. */
    l[5] = NAN;
    assert_int_equal(gpo_sampler_sample(s, l, &got, NULL), GPO_OK);
    assert_int_equal(got, 200);
    gpo_sampler_free(s);

    /* top_k = 1 equals greedy, at any temperature and seed. */
    p.temperature = 1.5f;
    p.top_k = 1;
    for (uint64_t seed = 0; seed < 5; seed++) {
        p.seed = seed;
        s = make(&p, BIG_VOCAB, NULL);
        for (int k = 0; k < 3; k++) {
            assert_int_equal(gpo_sampler_sample(s, l, &got, NULL), GPO_OK);
            assert_int_equal(got, 200);
        }
        gpo_sampler_free(s);
    }
    free(l);
}

static void test_seed_reproducible(void **state) {
    (void)state;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.seed = 1234;
    enum { N = 1000, DRAWS = 200 };
    float *l = random_logits(N, 1.0f);
    int32_t a[DRAWS], b[DRAWS], c[DRAWS];
    gpo_sampler *s1 = make(&p, N, NULL), *s2 = make(&p, N, NULL);
    p.seed = 1235;
    gpo_sampler *s3 = make(&p, N, NULL);
    for (int i = 0; i < DRAWS; i++) {
        assert_int_equal(gpo_sampler_sample(s1, l, &a[i], NULL), GPO_OK);
        assert_int_equal(gpo_sampler_sample(s2, l, &b[i], NULL), GPO_OK);
        assert_int_equal(gpo_sampler_sample(s3, l, &c[i], NULL), GPO_OK);
    }
    assert_memory_equal(a, b, sizeof a);
    int differ = 0;
    for (int i = 0; i < DRAWS; i++) differ += a[i] != c[i];
    assert_true(differ > DRAWS / 2);
    /* reset restarts the stream. */
    gpo_sampler_reset(s1);
    for (int i = 0; i < DRAWS; i++) {
        int32_t x;
        assert_int_equal(gpo_sampler_sample(s1, l, &x, NULL), GPO_OK);
        assert_int_equal(x, a[i]);
    }
    gpo_sampler_free(s1);
    gpo_sampler_free(s2);
    gpo_sampler_free(s3);
    free(l);
}

/* Plain temperature sampling follows softmax(l / T). */
static void test_temperature_distribution(void **state) {
    (void)state;
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float l[4];
    logits_of(probs, l, 4);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.seed = 7;
    gpo_sampler *s = make(&p, 4, NULL);
    int counts[4];
    enum { DRAWS = 40000 };
    histogram(s, l, 4, DRAWS, counts);
    for (int i = 0; i < 4; i++) assert_true(fabs(counts[i] / (double)DRAWS - probs[i]) < 0.01);
    gpo_sampler_free(s);

    /* T = 0.5 squares the probabilities (renormalised). */
    p.temperature = 0.5f;
    s = make(&p, 4, NULL);
    histogram(s, l, 4, DRAWS, counts);
    double z = 0.25 + 0.09 + 0.0225 + 0.0025;
    for (int i = 0; i < 4; i++)
        assert_true(fabs(counts[i] / (double)DRAWS - probs[i] * probs[i] / z) < 0.01);
    gpo_sampler_free(s);
}

static void test_top_p(void **state) {
    (void)state;
    const double probs[6] = {0.05, 0.3, 0.15, 0.5, 0.0, 0.0}; /* ids 4, 5 impossible */
    float l[6];
    logits_of(probs, l, 6);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    int counts[6];
    enum { DRAWS = 20000 };
    /* Sorted: 3 (0.5), 1 (0.3), 2 (0.15), 0 (0.05).  Mass >= 0.79 needs {3, 1};
     * 0.81 needs {3, 1, 2}; 0.5 needs only {3}; 0.96 all four. */
    struct {
        float top_p;
        int want[6];
    } cases[] = {
        {0.5f, {0, 0, 0, 1, 0, 0}},
        {0.79f, {0, 1, 0, 1, 0, 0}},
        {0.81f, {0, 1, 1, 1, 0, 0}},
        {0.96f, {1, 1, 1, 1, 0, 0}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        p.top_p = cases[k].top_p;
        p.seed = 100 + k;
        gpo_sampler *s = make(&p, 6, NULL);
        histogram(s, l, 6, DRAWS, counts);
        double mass = 0;
        for (int i = 0; i < 6; i++) {
            if (cases[k].want[i]) assert_true(counts[i] > 0);
            if (!cases[k].want[i]) assert_int_equal(counts[i], 0);
            if (cases[k].want[i]) mass += probs[i];
        }
        /* The kept set is renormalised. */
        for (int i = 0; i < 6; i++)
            if (cases[k].want[i])
                assert_true(fabs(counts[i] / (double)DRAWS - probs[i] / mass) < 0.015);
        gpo_sampler_free(s);
    }
}

/* The cut falls exactly on the selection's first pivot (the median of ids 0, 20
 * and 39 by probability is id 20), the case where the kept set ends at the pivot. */
static void test_top_p_pivot_cut(void **state) {
    (void)state;
    enum { N = 40, DRAWS = 3000 };
    double probs[N];
    float l[N];
    int counts[N];
    for (int i = 0; i < N; i++) probs[i] = 0.119 / 34; /* light ids */
    probs[0] = 0.3;
    for (int i = 1; i <= 4; i++) probs[i] = 0.12; /* 0.78 above id 20 */
    probs[20] = 0.1;
    probs[39] = 0.001;
    logits_of(probs, l, N);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.top_p = 0.83f; /* 0.78 < 0.83 <= 0.88: keep {0, 1, 2, 3, 4, 20} */
    p.seed = 77;
    gpo_sampler *s = make(&p, N, NULL);
    histogram(s, l, N, DRAWS, counts);
    for (int i = 0; i < N; i++) {
        if (i <= 4 || i == 20)
            assert_true(counts[i] > 0);
        else
            assert_int_equal(counts[i], 0);
    }
    gpo_sampler_free(s);
}

/* top-p over a real-size vocabulary, both when the head is small (the
 * threshold shortcut) and when the mass is spread thin (the full sort). */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void check_big_top_p(float scale, float top_p, uint64_t seed) {
    float *l = random_logits(BIG_VOCAB, scale);
    /* Reference: the probability of the last id the smallest set needs. */
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < BIG_VOCAB; i++) mx = l[i] > mx ? l[i] : mx;
    float *pr = malloc(BIG_VOCAB * sizeof *pr);
    for (int i = 0; i < BIG_VOCAB; i++) z += (pr[i] = (float)exp(l[i] - mx));
    float *sorted = malloc(BIG_VOCAB * sizeof *sorted);
    memcpy(sorted, pr, BIG_VOCAB * sizeof *sorted);
    qsort(sorted, BIG_VOCAB, sizeof *sorted, cmp_desc);
    double cum = 0;
    float cut = 0;
    int n_keep = 0;
    for (int i = 0; i < BIG_VOCAB; i++) {
        cum += sorted[i];
        n_keep++;
        if (cum >= top_p * z) {
            cut = sorted[i];
            break;
        }
    }
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.top_p = top_p;
    p.seed = seed;
    gpo_sampler *s = make(&p, BIG_VOCAB, NULL);
    for (int d = 0; d < 40; d++) {
        int32_t id;
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        /* Every draw lies in the kept set (allowing float rounding at the cut). */
        assert_true(pr[id] >= cut * 0.999f);
    }
    assert_true(n_keep >= 1);
    gpo_sampler_free(s);
    free(sorted);
    free(pr);
    free(l);
}

/* A large vocabulary whose kept set is known exactly: a hundred heavy ids of
 * distinct probabilities scattered among 5000 light ones, so the selection
 * partitions (more than its final small sort). */
static void test_top_p_exact_set(void **state) {
    (void)state;
    enum { N = 5000, HEAVY = 100, DRAWS = 6000 };
    double *probs = malloc(N * sizeof *probs);
    float *l = malloc(N * sizeof *l);
    int *counts = calloc(N, sizeof *counts);
    int32_t heavy[HEAVY];
    for (int i = 0; i < N; i++) probs[i] = 0.1 / (N - HEAVY);
    for (int k = 0; k < HEAVY; k++) {
        heavy[k] = (int32_t)((k * 487 + 13) % N);
        probs[heavy[k]] = 0.00702 + 0.00004 * k; /* sum 0.9, lightest first */
    }
    logits_of(probs, l, N);
    /* From the heaviest down: top_p 0.85 drops the 7 lightest heavy ids (their
     * mass 0.04998 <= 0.05, the 8th would leave 0.8427); 0.6 keeps fewer. */
    const float tops[] = {0.85f, 0.6f};
    for (size_t t = 0; t < 2; t++) {
        double cum = 0;
        int first_kept = HEAVY;
        while (cum < tops[t] - 1e-9) cum += probs[heavy[--first_kept]];
        struct gpo_sampler_params p;
        gpo_sampler_params_default(&p);
        p.top_p = tops[t];
        p.seed = 5 + t;
        gpo_sampler *s = make(&p, N, NULL);
        histogram(s, l, N, DRAWS, counts);
        int in_set = 0;
        for (int k = 0; k < HEAVY; k++) {
            if (k >= first_kept) {
                assert_true(counts[heavy[k]] > 0);
                in_set += counts[heavy[k]];
            } else {
                assert_int_equal(counts[heavy[k]], 0);
            }
        }
        assert_int_equal(in_set, DRAWS); /* no light id either */
        if (t == 0) assert_int_equal(first_kept, 7);
        gpo_sampler_free(s);
    }
    free(counts);
    free(l);
    free(probs);
}

static void test_top_p_big(void **state) {
    (void)state;
    check_big_top_p(4.0f, 0.9f, 1); /* peaked: few ids matter */
    check_big_top_p(0.3f, 0.9f, 2); /* flat: most of the vocabulary is kept */
    check_big_top_p(1.5f, 0.5f, 3);
}

static void test_top_k(void **state) {
    (void)state;
    float *l = random_logits(BIG_VOCAB, 2.0f);
    float *sorted = malloc(BIG_VOCAB * sizeof *sorted);
    memcpy(sorted, l, BIG_VOCAB * sizeof *sorted);
    qsort(sorted, BIG_VOCAB, sizeof *sorted, cmp_desc);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.top_k = 40;
    p.temperature = 50.0f; /* flatten, so draws reach deep into the kept set */
    p.seed = 9;
    gpo_sampler *s = make(&p, BIG_VOCAB, NULL);
    int distinct = 0;
    static uint8_t seen[BIG_VOCAB];
    for (int d = 0; d < 400; d++) {
        int32_t id;
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        assert_true(l[id] >= sorted[39]);
        if (!seen[id]) distinct++;
        seen[id] = 1;
    }
    assert_true(distinct > 30 && distinct <= 40);
    gpo_sampler_free(s);
    free(sorted);
    free(l);

    /* top_k larger than the vocabulary is no limit. */
    const double probs[3] = {0.2, 0.3, 0.5};
    float l3[3];
    logits_of(probs, l3, 3);
    p.top_k = 10;
    p.temperature = 1;
    s = make(&p, 3, NULL);
    int counts[3];
    histogram(s, l3, 3, 3000, counts);
    for (int i = 0; i < 3; i++) assert_true(counts[i] > 0);
    gpo_sampler_free(s);
}

static void test_min_p(void **state) {
    (void)state;
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float l[4];
    logits_of(probs, l, 4);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    int counts[4];
    /* min_p 0.2: keep p >= 0.1 -> {0, 1, 2}; min_p 0.7: keep p >= 0.35 -> {0}. */
    p.min_p = 0.2f;
    p.seed = 3;
    gpo_sampler *s = make(&p, 4, NULL);
    histogram(s, l, 4, 10000, counts);
    assert_true(counts[0] > 0 && counts[1] > 0 && counts[2] > 0);
    assert_int_equal(counts[3], 0);
    gpo_sampler_free(s);
    p.min_p = 0.7f;
    s = make(&p, 4, NULL);
    histogram(s, l, 4, 1000, counts);
    assert_int_equal(counts[0], 1000);
    gpo_sampler_free(s);
}

static void test_penalties(void **state) {
    (void)state;
    float l[6] = {2.0f, -1.0f, 0.5f, -3.0f, 1.0f, 4.0f};
    float out[6];
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.25f;
    p.frequency_penalty = 0.5f;
    p.penalty_min_special = 5; /* id 5 plays a formatting token: never penalised */
    gpo_sampler *s = make(&p, 6, NULL);

    /* Nothing accepted: logits unchanged. */
    gpo_sampler_process(s, l, out);
    assert_memory_equal(out, l, sizeof l);

    assert_int_equal(gpo_sampler_accept(s, 0), GPO_OK);
    assert_int_equal(gpo_sampler_accept(s, 0), GPO_OK);
    assert_int_equal(gpo_sampler_accept(s, 1), GPO_OK);
    assert_int_equal(gpo_sampler_accept(s, 5), GPO_OK);
    assert_int_equal(gpo_sampler_accept(s, 6), GPO_ERR_TOKEN);
    gpo_sampler_process(s, l, out);
    /* id 0: positive, count 2 -> 2/2 - 2*0.5 - 0.25 */
    assert_float_equal(out[0], 2.0f / 2 - 2 * 0.5f - 0.25f, 1e-6);
    /* id 1: negative, count 1 -> -1*2 - 0.5 - 0.25 */
    assert_float_equal(out[1], -1.0f * 2 - 0.5f - 0.25f, 1e-6);
    assert_float_equal(out[2], 0.5f, 0);
    assert_float_equal(out[3], -3.0f, 0);
    assert_float_equal(out[4], 1.0f, 0);
    assert_float_equal(out[5], 4.0f, 0); /* exempt */
    gpo_sampler_free(s);

    /* Greedy sees the penalised logits. */
    float g[3] = {2.0f, 1.9f, 0.0f};
    gpo_sampler_params_default(&p);
    p.temperature = 0;
    p.repetition_penalty = 1.1f;
    s = make(&p, 3, NULL);
    int32_t id;
    assert_int_equal(gpo_sampler_sample(s, g, &id, NULL), GPO_OK);
    assert_int_equal(id, 0);
    assert_int_equal(gpo_sampler_accept(s, 0), GPO_OK);
    assert_int_equal(gpo_sampler_sample(s, g, &id, NULL), GPO_OK);
    assert_int_equal(id, 1); /* 2.0/1.1 = 1.82 < 1.9 */
    /* reset forgets the history. */
    gpo_sampler_reset(s);
    assert_int_equal(gpo_sampler_sample(s, g, &id, NULL), GPO_OK);
    assert_int_equal(id, 0);
    gpo_sampler_free(s);

    /* The window: only the last N accepted ids count. */
    gpo_sampler_params_default(&p);
    p.frequency_penalty = 1.0f;
    p.penalty_window = 3;
    s = make(&p, 6, NULL);
    int32_t seq[] = {0, 0, 1, 2, 0};
    for (size_t i = 0; i < 5; i++) assert_int_equal(gpo_sampler_accept(s, seq[i]), GPO_OK);
    /* Window holds {1, 2, 0}: each counted once. */
    gpo_sampler_process(s, l, out);
    assert_float_equal(out[0], 1.0f, 1e-6);
    assert_float_equal(out[1], -2.0f, 1e-6);
    assert_float_equal(out[2], -0.5f, 1e-6);
    assert_float_equal(out[3], -3.0f, 0);
    for (int i = 0; i < 3; i++) assert_int_equal(gpo_sampler_accept(s, 4), GPO_OK);
    gpo_sampler_process(s, l, out);
    assert_float_equal(out[0], 2.0f, 0);
    assert_float_equal(out[4], 1.0f - 3.0f, 1e-6);
    gpo_sampler_free(s);
}

static void test_banned(void **state) {
    (void)state;
    uint8_t *mask = malloc(BIG_VOCAB);
    gpo_sampler_harmony_mask(mask, BIG_VOCAB, 200019);
    static const int32_t banned[] = {199998, 200000, 200001, 200004, 200009, 200010,
                                     200011, 200013, 200018, 200019, 201087};
    static const int32_t allowed[] = {0,      199997, 199999, 200002, 200003, 200005,
                                      200006, 200007, 200008, 200012};
    for (size_t i = 0; i < sizeof banned / sizeof *banned; i++) assert_true(mask[banned[i]]);
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++) assert_false(mask[allowed[i]]);
    /* A smaller tokenizer bans everything past its size. */
    gpo_sampler_harmony_mask(mask, BIG_VOCAB, 1000);
    assert_true(mask[1000]);
    assert_false(mask[999]);
    gpo_sampler_harmony_mask(mask, BIG_VOCAB, 200019);

    /* Banned ids are never chosen, even when they dominate. */
    float *l = random_logits(BIG_VOCAB, 1.0f);
    l[200500] = 100.0f;
    l[199998] = 99.0f;
    l[200001] = 98.0f;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.temperature = 0;
    gpo_sampler *s = make(&p, BIG_VOCAB, mask);
    int32_t id;
    assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
    assert_false(mask[id]);
    gpo_sampler_free(s);
    p.temperature = 1.0f;
    p.seed = 11;
    s = make(&p, BIG_VOCAB, mask);
    for (int d = 0; d < 50; d++) {
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        assert_false(mask[id]);
    }
    /* gpo_sampler_ban toggles one id. */
    l[17] = 200.0f;
    assert_int_equal(gpo_sampler_ban(s, 17, 1), GPO_OK);
    for (int d = 0; d < 20; d++) {
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        assert_int_not_equal(id, 17);
    }
    assert_int_equal(gpo_sampler_ban(s, 17, 0), GPO_OK);
    assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
    assert_int_equal(id, 17);
    assert_int_equal(gpo_sampler_ban(s, BIG_VOCAB, 1), GPO_ERR_TOKEN);
    gpo_sampler_free(s);
    free(l);

    /* Nothing left to sample is an error, not a crash. */
    uint8_t all[3] = {1, 1, 0};
    float l3[3] = {1, 2, -INFINITY};
    s = make(&p, 3, all);
    assert_int_equal(gpo_sampler_sample(s, l3, &id, NULL), GPO_ERR_ARG);
    gpo_sampler_free(s);
    free(mask);
}

static void test_logprobs(void **state) {
    (void)state;
    float l[5] = {1.0f, 3.0f, 2.0f, 3.0f, 10.0f};
    uint8_t ban[5] = {0, 0, 0, 0, 1}; /* id 4 masked before the softmax */
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.temperature = 0;
    p.n_logprobs = 3;
    p.repetition_penalty = 3.0f; /* penalties do not change the reported values */
    gpo_sampler *s = make(&p, 5, ban);
    assert_int_equal(gpo_sampler_accept(s, 1), GPO_OK);
    struct gpo_logprobs lp;
    int32_t id;
    assert_int_equal(gpo_sampler_sample(s, l, &id, &lp), GPO_OK);
    assert_int_equal(id, 3); /* 1 is penalised, 3 is the other 3.0 */
    double z = exp(1.0) + exp(3.0) + exp(2.0) + exp(3.0);
    assert_int_equal(lp.n, 3);
    assert_int_equal(lp.ids[0], 1); /* tie: lowest id first */
    assert_int_equal(lp.ids[1], 3);
    assert_int_equal(lp.ids[2], 2);
    assert_float_equal(lp.lps[0], 3.0 - log(z), 1e-5);
    assert_float_equal(lp.lps[1], 3.0 - log(z), 1e-5);
    assert_float_equal(lp.lps[2], 2.0 - log(z), 1e-5);
    assert_float_equal(lp.chosen, 3.0 - log(z), 1e-5);
    gpo_sampler_free(s);

    /* More requested than there are ids. */
    p.n_logprobs = 20;
    p.repetition_penalty = 1;
    s = make(&p, 5, ban);
    assert_int_equal(gpo_sampler_sample(s, l, &id, &lp), GPO_OK);
    assert_int_equal(lp.n, 4);
    double total = 0;
    for (int i = 0; i < lp.n; i++) total += exp(lp.lps[i]);
    assert_float_equal(total, 1.0, 1e-5);
    gpo_sampler_free(s);
}

/* The sampler allocates nothing per call: heap usage is the same before and
 * after many calls with every feature on. */
static void test_no_alloc(void **state) {
    (void)state;
    float *l = random_logits(BIG_VOCAB, 2.0f);
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.top_k = 100;
    p.top_p = 0.9f;
    p.min_p = 0.01f;
    p.repetition_penalty = 1.2f;
    p.presence_penalty = 0.3f;
    p.frequency_penalty = 0.2f;
    p.penalty_window = 16;
    p.n_logprobs = 5;
    gpo_sampler *s = make(&p, BIG_VOCAB, NULL);
    struct gpo_logprobs lp;
    int32_t id;
    assert_int_equal(gpo_sampler_sample(s, l, &id, &lp), GPO_OK);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(gpo_sampler_sample(s, l, &id, &lp), GPO_OK);
        assert_int_equal(gpo_sampler_accept(s, id), GPO_OK);
    }
    assert_int_equal(mallinfo2().uordblks, before);
    p.top_k = 0; /* the top-p selection over the whole vocabulary */
    gpo_sampler *s2 = make(&p, BIG_VOCAB, NULL);
    before = mallinfo2().uordblks;
    for (int i = 0; i < 5; i++) assert_int_equal(gpo_sampler_sample(s2, l, &id, &lp), GPO_OK);
    assert_int_equal(mallinfo2().uordblks, before);
    gpo_sampler_free(s2);
    gpo_sampler_free(s);
    free(l);
}

static void test_params(void **state) {
    (void)state;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    assert_float_equal(p.temperature, 1.0f, 0);
    assert_float_equal(p.top_p, 1.0f, 0);
    assert_int_equal(p.penalty_min_special, GPO_TOK_STARTOFTEXT);
    gpo_sampler *s = NULL;
    struct gpo_sampler_params bad = p;
    bad.temperature = -1;
    assert_int_equal(gpo_sampler_create(&bad, 10, NULL, &s), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "temperature"));
    bad = p;
    bad.top_p = 0;
    assert_int_equal(gpo_sampler_create(&bad, 10, NULL, &s), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "top_p"));
    bad = p;
    bad.n_logprobs = 21;
    assert_int_equal(gpo_sampler_create(&bad, 10, NULL, &s), GPO_ERR_ARG);
    bad = p;
    bad.repetition_penalty = 0;
    assert_int_equal(gpo_sampler_create(&bad, 10, NULL, &s), GPO_ERR_ARG);
    /* A window is a ring of 4-byte ids: an absurd one is refused, not allocated. */
    bad = p;
    bad.penalty_window = INT32_MAX;
    assert_int_equal(gpo_sampler_create(&bad, 10, NULL, &s), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "penalty_window"));
    assert_int_equal(gpo_sampler_create(&p, 0, NULL, &s), GPO_ERR_ARG);
    assert_null(s);
    s = make(&p, 10, NULL);
    assert_float_equal(gpo_sampler_get_params(s)->top_p, 1.0f, 0);
    gpo_sampler_free(s);
}

/* Whatever the logits (NaN, +/-inf, +/-FLT_MAX, denormals) and settings (tiny or
 * huge temperatures, penalties that overflow), a call returns an allowed id with a
 * usable logit and finite log-probabilities, or GPO_ERR_ARG when no id is left.
 * The logits are allocated to their exact size so a sanitizer build sees any
 * read outside them. */
static void test_nasty_logits(void **state) {
    (void)state;
    static const float vals[] = {NAN,     INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, 1e-45f,
                                 -1e-45f, 0.0f,     1.0f,      -1.0f,   88.0f,    1e30f};
    static const float temps[] = {1e-39f, 1e-30f, 1e-7f, 1e-6f, 0.5f, 1.0f, 100.0f, FLT_MAX};
    static const float pens[][3] = {/* repetition, presence, frequency */
                                    {1.0f, 0.0f, 0.0f},      {1.0f, 0.0f, FLT_MAX},
                                    {1.0f, -FLT_MAX, 0.0f},  {1.0f, 0.0f, -FLT_MAX},
                                    {1e-38f, 0.0f, 0.0f},    {FLT_MAX, FLT_MAX, FLT_MAX},
                                    {1e-38f, -FLT_MAX, 1.0f}};
    const int n = 7, nv = sizeof vals / sizeof *vals, nt = sizeof temps / sizeof *temps;
    const int np = sizeof pens / sizeof *pens;
    uint64_t r = 12345;
    for (int it = 0; it < 3000; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t x = r >> 11;
        struct gpo_sampler_params p;
        gpo_sampler_params_default(&p);
        p.temperature = temps[x % nt];
        x /= nt;
        p.top_k = (int32_t)(x % 4);
        x /= 4;
        p.top_p = (x % 3) == 0 ? 1.0f : (x % 3) == 1 ? 0.5f : 1e-7f;
        x /= 3;
        p.min_p = (x % 3) == 0 ? 0.0f : (x % 3) == 1 ? 0.1f : 1.0f;
        x /= 3;
        const float *pen = pens[x % np];
        x /= np;
        p.repetition_penalty = pen[0];
        p.presence_penalty = pen[1];
        p.frequency_penalty = pen[2];
        p.penalty_min_special = 0;
        p.n_logprobs = 3;
        p.seed = it;
        float *l = malloc((size_t)n * sizeof *l);
        uint8_t ban[7];
        assert_non_null(l);
        int usable = 0;
        for (int i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            l[i] = vals[(r >> 20) % nv];
            ban[i] = ((r >> 40) % 5) == 0;
            usable += !ban[i] && l[i] > -INFINITY; /* NaN and -inf are not */
        }
        gpo_sampler *s = make(&p, n, ban);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 3; c++) assert_int_equal(gpo_sampler_accept(s, i), GPO_OK);
        float w[7];
        gpo_sampler_process(s, l, w);
        for (int i = 0; i < n; i++) {
            assert_false(isnan(w[i]));
            if (!ban[i] && isfinite(l[i])) assert_true(isfinite(w[i]));
        }
        for (int d = 0; d < 3; d++) {
            int32_t id = -1;
            struct gpo_logprobs lp;
            enum gpo_status st = gpo_sampler_sample(s, l, &id, &lp);
            if (!usable) {
                assert_int_equal(st, GPO_ERR_ARG);
                break;
            }
            assert_int_equal(st, GPO_OK);
            assert_true(id >= 0 && id < n);
            assert_false(ban[id]);
            assert_true(l[id] > -INFINITY);
            assert_false(isnan(lp.chosen));
            assert_true(lp.chosen <= 0.0f);
            for (int j = 0; j < lp.n; j++) assert_false(isnan(lp.lps[j]));
        }
        gpo_sampler_free(s);
        free(l);
    }
}

/* A temperature below GPO_SAMPLER_MIN_TEMPERATURE is greedy; with min-p on, 1e-39
 * used to make 1/T infinite and leave no candidate at all. */
static void test_tiny_temperature(void **state) {
    (void)state;
    float l[4] = {0.5f, 3.0f, 2.9f, -1.0f};
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.temperature = 1e-39f;
    p.min_p = 0.1f;
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        gpo_sampler *s = make(&p, 4, NULL);
        int32_t id = -1;
        assert_int_equal(gpo_sampler_sample(s, l, &id, NULL), GPO_OK);
        assert_int_equal(id, 1);
        gpo_sampler_free(s);
    }
    /* +inf logits are the only candidates, equally likely. */
    float inf[4] = {INFINITY, 1.0f, INFINITY, FLT_MAX};
    p.temperature = 1.0f;
    p.min_p = 0.0f;
    gpo_sampler *s = make(&p, 4, NULL);
    int counts[4];
    histogram(s, inf, 4, 400, counts);
    assert_int_equal(counts[1], 0);
    assert_true(counts[0] > 50 && counts[2] > 50 && counts[3] > 50);
    gpo_sampler_free(s);
}

static void test_stop(void **state) {
    (void)state;
    assert_true(gpo_is_stop_token(GPO_TOK_RETURN));
    assert_true(gpo_is_stop_token(GPO_TOK_CALL));
    assert_true(gpo_is_stop_token(GPO_TOK_ENDOFTEXT));
    assert_false(gpo_is_stop_token(GPO_TOK_END));
    assert_false(gpo_is_stop_token(GPO_TOK_START));
    size_t at = 99;
    assert_int_equal(gpo_stop_check(GPO_TOK_END, "abc", 3, 2, NULL, 0, &at), GPO_FINISH_NONE);
    assert_int_equal(gpo_stop_check(GPO_TOK_RETURN, "abc", 3, 2, NULL, 0, &at), GPO_FINISH_STOP);
    assert_int_equal(at, 3);
    assert_int_equal(gpo_stop_check(GPO_TOK_CALL, NULL, 0, 0, NULL, 0, NULL), GPO_FINISH_STOP);

    const char *stops[] = {"", "STOP", "\n\n"};
    const char *t = "Hello STOP there";
    /* "STOP" completed by a token that took the text from 8 to 10 bytes. */
    assert_int_equal(gpo_stop_check(17, t, 10, 8, stops, 3, &at), GPO_FINISH_STOP);
    assert_int_equal(at, 6);
    /* Not yet complete. */
    assert_int_equal(gpo_stop_check(17, t, 9, 8, stops, 3, &at), GPO_FINISH_NONE);
    /* Already reported earlier: a match that ended before prev_len is not new. */
    assert_int_equal(gpo_stop_check(17, t, 16, 12, stops, 3, &at), GPO_FINISH_NONE);
    /* Whole text new: earliest match wins. */
    const char *u = "a\n\nb STOP";
    assert_int_equal(gpo_stop_check(17, u, strlen(u), 0, stops, 3, &at), GPO_FINISH_STOP);
    assert_int_equal(at, 1);
    /* <|end|> is never a stop even with stop strings configured. */
    assert_int_equal(gpo_stop_check(GPO_TOK_END, "x", 1, 0, stops, 3, &at), GPO_FINISH_NONE);

    assert_string_equal(gpo_finish_name(GPO_FINISH_STOP), "stop");
    assert_string_equal(gpo_finish_name(GPO_FINISH_LENGTH), "length");
    assert_string_equal(gpo_finish_name(GPO_FINISH_CONTEXT), "context");
    assert_string_equal(gpo_finish_name(GPO_FINISH_NONE), "");
}

/* ------------------------------------------------------------------------- */
/* Candidates instead of the whole row                                       */

/* The reference twin of gpo_cand_select: every finite unbanned id sorted by
 * (value descending, id ascending) with qsort, then the first k. */
static int cmp_cand(const void *a, const void *b) {
    const struct gpo_cand *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int64_t cand_select_ref(const float *l, int64_t n, const uint8_t *ban, int64_t k,
                               struct gpo_cand *c, int64_t *n_finite) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = isnan(l[i]) ? -INFINITY : l[i] > FLT_MAX ? FLT_MAX : l[i];
        if ((ban && ban[i]) || !(v > -INFINITY)) continue;
        c[m++] = (struct gpo_cand){v, (int32_t)i};
    }
    qsort(c, (size_t)m, sizeof *c, cmp_cand);
    *n_finite = m;
    return m < k ? m : k;
}

/* A row with ties, a NaN, -inf and some banned ids, +inf too when inf (it then
 * takes every draw); `dead` of every 8 ids -inf (7 leaves fewer finite ids than
 * many k). */
static void nasty_row(float *l, uint8_t *ban, int64_t n, int dead, int inf) {
    for (int64_t i = 0; i < n; i++) {
        l[i] = roundf(test_randn() * 8.0f) / 4.0f; /* coarse: many equal values */
        ban[i] = i % 97 == 5;
        if (i % 8 < dead) l[i] = -INFINITY;
    }
    l[n / 3] = NAN;
    if (inf) l[n / 2] = INFINITY;
}

/* gpo_cand_select, on the whole row and on shards of it, equals its twin. */
static void test_cand_select_ref(void **state) {
    (void)state;
    enum { N = 3000 };
    float *l = malloc(N * sizeof *l);
    uint8_t *ban = malloc(N);
    struct gpo_cand *c = malloc(N * sizeof *c), *r = malloc(N * sizeof *r);
    assert_true(l && ban && c && r);
    const int64_t ks[] = {1, 2, 7, 64, 256, N};
    for (int dead = 0; dead < 8; dead += 7)
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
            nasty_row(l, ban, N, dead, 1);
            int64_t nf, nf_ref, k = ks[ki];
            int64_t m = gpo_cand_select(l, N, 0, ban, k, c, &nf);
            assert_int_equal(m, cand_select_ref(l, N, ban, k, r, &nf_ref));
            assert_int_equal(nf, nf_ref);
            assert_memory_equal(c, r, (size_t)m * sizeof *c);
            /* A shard: ids id0 + i, the mask indexed by id. */
            const int64_t id0 = 1000, n = 700;
            m = gpo_cand_select(l + id0, n, id0, ban, k, c, &nf);
            int64_t mr = cand_select_ref(l + id0, n, ban + id0, k, r, &nf_ref);
            for (int64_t i = 0; i < mr; i++) r[i].id += (int32_t)id0;
            assert_int_equal(m, mr);
            assert_int_equal(nf, nf_ref);
            assert_memory_equal(c, r, (size_t)m * sizeof *c);
        }
    free(l);
    free(ban);
    free(c);
    free(r);
}

/* Which k stands for the row. */
static void test_cand_k(void **state) {
    (void)state;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    const struct {
        float t;
        int32_t top_k;
        float rp, pres, freq;
        int32_t n_lp;
        int32_t want;
    } cases[] = {
        {0.0f, 0, 1.0f, 0, 0, 0, 1},     {0.0f, 500, 1.0f, 0, 0, 0, 1},
        {1.0f, 40, 1.0f, 0, 0, 0, 40},   {0.7f, GPO_CAND_MAX, 1.0f, 0, 0, 0, GPO_CAND_MAX},
        {1.0f, GPO_CAND_MAX + 1, 1.0f, 0, 0, 0, 0}, {1.0f, 0, 1.0f, 0, 0, 0, 0},
        {0.0f, 0, 1.1f, 0, 0, 0, 0},     {1.0f, 40, 1.0f, 0.5f, 0, 0, 0},
        {1.0f, 40, 1.0f, 0, 0.5f, 0, 0}, {0.0f, 0, 1.0f, 0, 0, 3, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        p.temperature = cases[i].t;
        p.top_k = cases[i].top_k;
        p.repetition_penalty = cases[i].rp;
        p.presence_penalty = cases[i].pres;
        p.frequency_penalty = cases[i].freq;
        p.n_logprobs = cases[i].n_lp;
        gpo_sampler *s = make(&p, 100, NULL);
        assert_int_equal(gpo_sampler_cand_k(s), cases[i].want);
        if (cases[i].want > 0) {
            /* A ban after creation: candidates chosen with the old mask no longer do. */
            assert_int_equal(gpo_sampler_ban(s, 3, 1), GPO_OK);
            assert_int_equal(gpo_sampler_cand_k(s), 0);
        }
        gpo_sampler_free(s);
    }
}

/* Sampling from shards' candidates gives the ids of sampling from the whole row,
 * draw after draw (the random streams stay in step), for greedy and top-k with
 * temperatures, top-p and min-p, over many seeds, rows with ties, NaN, +-inf and
 * banned ids, and rows with fewer finite ids than k. */
static void test_cand_sample_matches_row(void **state) {
    (void)state;
    enum { N = 2000, SHARDS = 3, DRAWS = 12 };
    float *l = malloc(N * sizeof *l);
    uint8_t *ban = malloc(N);
    struct gpo_cand *c = malloc(SHARDS * GPO_CAND_MAX * sizeof *c);
    assert_true(l && ban && c);
    const struct {
        float t, top_p, min_p;
        int32_t top_k;
    } cases[] = {
        {0.0f, 1.0f, 0.0f, 0},   {0.0f, 0.9f, 0.0f, 40}, {1.0f, 1.0f, 0.0f, 1},
        {1.0f, 1.0f, 0.0f, 40},  {0.5f, 0.9f, 0.0f, 40}, {2.0f, 0.5f, 0.05f, 7},
        {1.3f, 1.0f, 0.1f, 256}, {0.8f, 0.95f, 0.0f, 200}, {5.0f, 1.0f, 0.0f, 3},
    };
    int distinct_ids = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (uint64_t seed = 0; seed < 16; seed++) {
            struct gpo_sampler_params p;
            gpo_sampler_params_default(&p);
            p.temperature = cases[ci].t;
            p.top_p = cases[ci].top_p;
            p.min_p = cases[ci].min_p;
            p.top_k = cases[ci].top_k;
            p.seed = seed;
            nasty_row(l, ban, N, 0, 0);
            gpo_sampler *whole = make(&p, N, ban), *cands = make(&p, N, ban);
            const int64_t k = gpo_sampler_cand_k(cands);
            assert_true(k > 0);
            int32_t first = -1;
            for (int d = 0; d < DRAWS; d++) {
                /* Every other draw a row with only one finite id in 8: often no
                 * more finite ids than k, so the candidates are the whole row;
                 * one row with +inf. */
                nasty_row(l, ban, N, d % 2 ? 7 : 0, d == 4);
                int64_t n = 0, n_finite = 0;
                for (int sh = 0; sh < SHARDS; sh++) {
                    const int64_t v0 = N * sh / SHARDS, v1 = N * (sh + 1) / SHARDS;
                    int64_t nf;
                    n += gpo_cand_select(l + v0, v1 - v0, v0, ban, k, c + n, &nf);
                    n_finite += nf;
                }
                int32_t a = -1, b = -2;
                assert_int_equal(gpo_sampler_sample(whole, l, &a, NULL), GPO_OK);
                assert_int_equal(gpo_sampler_sample_top(cands, c, n, n_finite, &b), GPO_OK);
                assert_int_equal(a, b);
                if (d == 0) first = a;
                else distinct_ids += a != first;
            }
            gpo_sampler_free(whole);
            gpo_sampler_free(cands);
        }
    /* The rows and draws were not all alike: the comparison saw many ids. */
    assert_true(distinct_ids > 100);
    free(l);
    free(ban);
    free(c);
}

/* Candidates that cannot stand for the row are refused with the numbers. */
static void test_cand_errors(void **state) {
    (void)state;
    struct gpo_sampler_params p;
    gpo_sampler_params_default(&p);
    p.top_k = 4;
    uint8_t ban[10] = {0};
    ban[9] = 1;
    gpo_sampler *s = make(&p, 10, ban);
    struct gpo_cand c[4] = {{3.0f, 1}, {2.0f, 2}, {1.0f, 3}, {0.5f, 4}};
    int32_t id;
    /* Three candidates of a row of 8 finite logits: top-4 needs four. */
    assert_int_equal(gpo_sampler_sample_top(s, c, 3, 8, &id), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "3 candidates of 8 finite logits"));
    c[3].id = 9; /* banned */
    assert_int_equal(gpo_sampler_sample_top(s, c, 4, 8, &id), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "id 9"));
    c[3] = (struct gpo_cand){NAN, 4};
    assert_int_equal(gpo_sampler_sample_top(s, c, 4, 8, &id), GPO_ERR_ARG);
    assert_int_equal(gpo_sampler_sample_top(s, c, 0, 0, &id), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "banned or -inf"));
    gpo_sampler_free(s);
    p.top_k = 0; /* temperature sampling over the whole row */
    s = make(&p, 10, NULL);
    assert_int_equal(gpo_sampler_sample_top(s, c, 3, 3, &id), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "whole row"));
    gpo_sampler_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_argmax),  cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_top_p),          cmocka_unit_test(test_top_p_big),
        cmocka_unit_test(test_top_p_exact_set), cmocka_unit_test(test_top_p_pivot_cut),
        cmocka_unit_test(test_top_k),          cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_penalties),      cmocka_unit_test(test_banned),
        cmocka_unit_test(test_logprobs),       cmocka_unit_test(test_no_alloc),       cmocka_unit_test(test_params),
        cmocka_unit_test(test_nasty_logits),   cmocka_unit_test(test_tiny_temperature),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_cand_select_ref), cmocka_unit_test(test_cand_k),
        cmocka_unit_test(test_cand_sample_matches_row), cmocka_unit_test(test_cand_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
