/* sampler.c - next-token choice from a logits row: masking, penalties, greedy or
 * temperature sampling with top-k/top-p/min-p, log-probabilities, and the stop
 * rules of a harmony turn.  Every buffer is sized for the vocabulary at creation,
 * so a call to gpo_sampler_sample never allocates. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpo.h"
#include "util.h"

struct gpo_sampler {
    struct gpo_sampler_params prm;
    int64_t n_vocab;
    uint8_t *banned;   /* [n_vocab] */
    float *work;       /* [n_vocab] logits after masking and penalties */
    struct gpo_cand *cand; /* [n_vocab] candidate list: logits, then unnormalised
                              probabilities exp((x - max) / T) */
    /* Penalty bookkeeping: counts of the ids inside the window, the distinct ids
     * with a non-zero count (with each one's position for O(1) removal), and a
     * ring of the last penalty_window ids. */
    int32_t *counts;   /* [n_vocab] */
    int32_t *distinct; /* [n_vocab] */
    int32_t *pos;      /* [n_vocab] index into distinct, -1 if absent */
    int64_t n_distinct;
    int32_t *ring;     /* [penalty_window] */
    int64_t ring_head, ring_fill;
    uint64_t rng[4];   /* xoshiro256** state */
    int ban_edited;    /* gpo_sampler_ban was called: candidates chosen with the
                          creation mask may no longer stand for the row */
};

/* ------------------------------------------------------------------------- */
/* Random numbers: splitmix64 seeds xoshiro256**, so every sampler has its own
 * reproducible stream and nothing depends on the C library's rand(). */


static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) {
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void rng_seed(uint64_t s[4], uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&x);
}

/* ------------------------------------------------------------------------- */

void gpo_sampler_params_default(struct gpo_sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->penalty_window = 0;
    p->penalty_min_special = GPO_TOK_STARTOFTEXT;
    p->seed = 0;
    p->n_logprobs = 0;
}

static enum gpo_status check_params(const struct gpo_sampler_params *p) {
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return gpo_fail(GPO_ERR_ARG, "sampler: temperature %g must be finite and >= 0",
                        (double)p->temperature);
    if (p->top_k < 0) return gpo_fail(GPO_ERR_ARG, "sampler: top_k %d must be >= 0", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return gpo_fail(GPO_ERR_ARG, "sampler: top_p %g must be in (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return gpo_fail(GPO_ERR_ARG, "sampler: min_p %g must be in [0, 1]", (double)p->min_p);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return gpo_fail(GPO_ERR_ARG, "sampler: presence/frequency penalties must be finite");
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return gpo_fail(GPO_ERR_ARG, "sampler: repetition_penalty %g must be > 0",
                        (double)p->repetition_penalty);
    if (p->penalty_window < 0 || p->penalty_window > GPO_MAX_PENALTY_WINDOW)
        return gpo_fail(GPO_ERR_ARG, "sampler: penalty_window %d must be in [0, %d]",
                        p->penalty_window, GPO_MAX_PENALTY_WINDOW);
    if (p->n_logprobs < 0 || p->n_logprobs > GPO_MAX_LOGPROBS)
        return gpo_fail(GPO_ERR_ARG, "sampler: n_logprobs %d must be in [0, %d]", p->n_logprobs,
                        GPO_MAX_LOGPROBS);
    return GPO_OK;
}

enum gpo_status gpo_sampler_create(const struct gpo_sampler_params *p, int64_t n_vocab,
                                   const uint8_t *banned, gpo_sampler **out) {
    enum gpo_status st = GPO_OK;
    gpo_sampler *s = NULL;
    if (!out) return gpo_fail(GPO_ERR_ARG, "sampler: out is NULL");
    *out = NULL;
    if (!p) return gpo_fail(GPO_ERR_ARG, "sampler: params are NULL");
    if (n_vocab <= 0 || n_vocab > INT32_MAX)
        return gpo_fail(GPO_ERR_ARG, "sampler: n_vocab %lld out of range", (long long)n_vocab);
    GPO_TRY(check_params(p));

    s = calloc(1, sizeof *s);
    if (!s) return gpo_fail(GPO_ERR_NOMEM, "sampler: out of memory");
    s->prm = *p;
    s->n_vocab = n_vocab;
    size_t nv = (size_t)n_vocab;
    s->banned = calloc(nv, 1);
    s->work = malloc(nv * sizeof *s->work);
    s->cand = malloc(nv * sizeof *s->cand);
    s->counts = calloc(nv, sizeof *s->counts);
    s->distinct = malloc(nv * sizeof *s->distinct);
    s->pos = malloc(nv * sizeof *s->pos);
    if (p->penalty_window > 0) s->ring = malloc((size_t)p->penalty_window * sizeof *s->ring);
    if (!s->banned || !s->work || !s->cand || !s->counts || !s->distinct || !s->pos ||
        (p->penalty_window > 0 && !s->ring)) {
        st = gpo_fail(GPO_ERR_NOMEM, "sampler: out of memory for %lld ids", (long long)n_vocab);
        goto fail;
    }
    if (banned)
        for (size_t i = 0; i < nv; i++) s->banned[i] = banned[i] != 0;
    gpo_sampler_reset(s);
    *out = s;
    return GPO_OK;
fail:
    gpo_sampler_free(s);
    return st;
}

void gpo_sampler_free(gpo_sampler *s) {
    if (!s) return;
    free(s->banned);
    free(s->work);
    free(s->cand);
    free(s->counts);
    free(s->distinct);
    free(s->pos);
    free(s->ring);
    free(s);
}

const struct gpo_sampler_params *gpo_sampler_get_params(const gpo_sampler *s) { return &s->prm; }

enum gpo_status gpo_sampler_ban(gpo_sampler *s, int32_t id, int banned) {
    if (id < 0 || id >= s->n_vocab)
        return gpo_fail(GPO_ERR_TOKEN, "sampler: id %d outside the vocabulary of %lld", id,
                        (long long)s->n_vocab);
    s->banned[id] = banned != 0;
    s->ban_edited = 1;
    return GPO_OK;
}

void gpo_sampler_reset(gpo_sampler *s) {
    memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
    for (int64_t i = 0; i < s->n_vocab; i++) s->pos[i] = -1;
    s->n_distinct = 0;
    s->ring_head = s->ring_fill = 0;
    rng_seed(s->rng, s->prm.seed);
}

static void count_add(gpo_sampler *s, int32_t id) {
    if (s->counts[id]++ == 0) {
        s->pos[id] = (int32_t)s->n_distinct;
        s->distinct[s->n_distinct++] = id;
    }
}

static void count_remove(gpo_sampler *s, int32_t id) {
    if (--s->counts[id] == 0) {
        /* Swap-remove from the distinct list. */
        int32_t at = s->pos[id];
        int32_t last = s->distinct[--s->n_distinct];
        s->distinct[at] = last;
        s->pos[last] = at;
        s->pos[id] = -1;
    }
}

enum gpo_status gpo_sampler_accept(gpo_sampler *s, int32_t id) {
    if (id < 0 || id >= s->n_vocab)
        return gpo_fail(GPO_ERR_TOKEN, "sampler: accepted id %d outside the vocabulary of %lld",
                        id, (long long)s->n_vocab);
    int64_t w = s->prm.penalty_window;
    if (w > 0) {
        if (s->ring_fill == w) {
            count_remove(s, s->ring[s->ring_head]);
        } else {
            s->ring_fill++;
        }
        s->ring[s->ring_head] = id;
        s->ring_head = (s->ring_head + 1) % w;
    }
    count_add(s, id);
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */

/* The candidate order (gpo_cand_better): more likely first, equal values in id
 * order, so every result is reproducible. */
#define better gpo_cand_better

static inline void cand_swap(struct gpo_cand *a, struct gpo_cand *b) {
    struct gpo_cand t = *a;
    *a = *b;
    *b = t;
}

/* Restore the heap below i: h[0] is the worst of the k kept (a min-heap in the
 * candidate order). */
static void heap_down(struct gpo_cand *h, int64_t n, int64_t i) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(&h[w], &h[l])) w = l;
        if (r < n && better(&h[w], &h[r])) w = r;
        if (w == i) return;
        cand_swap(&h[i], &h[w]);
        i = w;
    }
}

void gpo_cand_sort(struct gpo_cand *c, int64_t n) {
    /* Heapsort: the worst of c[0..end) goes to end - 1 each round. */
    for (int64_t j = n / 2; j-- > 0;) heap_down(c, n, j);
    for (int64_t end = n - 1; end > 0; end--) {
        cand_swap(&c[0], &c[end]);
        heap_down(c, end, 0);
    }
}

/* Reorder c[0..n) so that c[0..keep) is the smallest set of most likely
 * candidates whose mass reaches target, and return keep (the mass goes to
 * *mass).  A quickselect on cumulative mass: expected linear time, and only the
 * last small range is sorted, so a flat distribution costs no full sort. */
static int64_t top_p_select(struct gpo_cand *c, int64_t n, double target, double *mass) {
    int64_t lo = 0, hi = n;
    double acc = 0.0; /* mass of c[0..lo), all better than anything in c[lo..hi) */
    while (hi - lo > 32) {
        /* Median of three as the pivot, parked at hi - 1. */
        int64_t mid = lo + (hi - lo) / 2;
        if (better(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
        if (better(&c[hi - 1], &c[lo])) cand_swap(&c[hi - 1], &c[lo]);
        if (better(&c[mid], &c[hi - 1])) cand_swap(&c[mid], &c[hi - 1]);
        struct gpo_cand piv = c[hi - 1];
        int64_t m = lo;
        double mb = 0.0;
        for (int64_t i = lo; i < hi - 1; i++)
            if (better(&c[i], &piv)) {
                mb += c[i].v;
                cand_swap(&c[i], &c[m]);
                m++;
            }
        cand_swap(&c[m], &c[hi - 1]);
        if (acc + mb >= target) {
            hi = m;
        } else if (acc + mb + piv.v >= target) {
            *mass = acc + mb + piv.v;
            return m + 1;
        } else {
            acc += mb + piv.v;
            lo = m + 1;
        }
    }
    /* Insertion sort of the last few (no qsort: it may allocate). */
    for (int64_t i = lo + 1; i < hi; i++) {
        struct gpo_cand x = c[i];
        int64_t j = i;
        for (; j > lo && better(&x, &c[j - 1]); j--) c[j] = c[j - 1];
        c[j] = x;
    }
    for (int64_t i = lo; i < hi; i++) {
        acc += c[i].v;
        if (acc >= target) {
            *mass = acc;
            return i + 1;
        }
    }
    /* Only rounding gets here: keep everything seen. */
    *mass = acc;
    return hi;
}

/* A logit the sampler can compute with: NaN counts as impossible (-inf) so it
 * can never win a comparison, and +inf becomes FLT_MAX so that x - max stays a
 * number (inf - inf would be NaN); several +inf ids are then equally likely. */
static inline float sane_logit(float x) {
    if (isnan(x)) return -INFINITY;
    return x > FLT_MAX ? FLT_MAX : x;
}

/* Top-k with a k-element heap: one comparison for most ids, and only the k
 * survivors are sorted (and later need exp()).  Sorting them makes their order
 * canonical: the same whether the row was scanned whole or in shards. */
int64_t gpo_cand_select(const float *logits, int64_t n, int64_t id0, const uint8_t *banned,
                        int64_t k, struct gpo_cand *c, int64_t *n_finite) {
    int64_t m = 0, nf = 0;
    for (int64_t i = 0; i < n; i++) {
        if (banned && banned[id0 + i]) continue;
        struct gpo_cand x = {sane_logit(logits[i]), (int32_t)(id0 + i)};
        if (!(x.v > -INFINITY)) continue;
        nf++;
        if (m < k) {
            c[m++] = x;
            if (m == k)
                for (int64_t j = k / 2; j-- > 0;) heap_down(c, k, j);
        } else if (better(&x, &c[0])) {
            c[0] = x;
            heap_down(c, k, 0);
        }
    }
    gpo_cand_sort(c, m);
    *n_finite = nf;
    return m;
}

/* Log-probabilities of the masked raw logits: the n most likely ids (insertion
 * into a short sorted list) and the log-sum-exp for the chosen id. */
static void fill_logprobs(const gpo_sampler *s, const float *logits, struct gpo_logprobs *lp,
                          double *lse_out) {
    int64_t nv = s->n_vocab;
    float mx = -INFINITY;
    for (int64_t i = 0; i < nv; i++) {
        float x = s->banned[i] ? -INFINITY : sane_logit(logits[i]);
        if (x > mx) mx = x;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < nv; i++) {
        float x = sane_logit(logits[i]);
        if (s->banned[i] || !(x > -INFINITY)) continue;
        sum += exp((double)x - (double)mx);
    }
    double lse = (double)mx + log(sum);
    *lse_out = lse;
    int32_t want = s->prm.n_logprobs, n = 0;
    for (int64_t i = 0; i < nv && want > 0; i++) {
        float x = sane_logit(logits[i]);
        if (s->banned[i] || !(x > -INFINITY)) continue;
        if (n == want && x <= lp->lps[n - 1]) continue; /* strictly better only: lowest id wins ties */
        int32_t j = n < want ? n++ : n - 1;
        while (j > 0 && lp->lps[j - 1] < x) {
            lp->lps[j] = lp->lps[j - 1];
            lp->ids[j] = lp->ids[j - 1];
            j--;
        }
        lp->lps[j] = x;
        lp->ids[j] = (int32_t)i;
    }
    for (int32_t j = 0; j < n; j++) lp->lps[j] = (float)((double)lp->lps[j] - lse);
    lp->n = n;
}

/* The penalised value of a finite logit x, in float as the formula reads.  When
 * that overflows (a huge penalty, or x near FLT_MAX), the same formula in double
 * is clamped to the finite floats: a penalty makes an id less or more likely but
 * never impossible or NaN. */
static float penalised(float x, float rp, int32_t count, float freq, float pres) {
    float y = x;
    /* Repetition penalty first (HF/llama.cpp), then OpenAI's additive ones. */
    if (rp != 1.0f) y = y > 0.0f ? y / rp : y * rp;
    y -= (float)count * freq + pres;
    if (isfinite(y)) return y;
    double d = x;
    if (rp != 1.0f) d = d > 0.0 ? d / rp : d * rp;
    d -= (double)count * freq + pres;
    if (d > FLT_MAX) return FLT_MAX;
    if (d < -FLT_MAX) return -FLT_MAX;
    return (float)d;
}

static void apply_penalties(const gpo_sampler *s, float *w) {
    const struct gpo_sampler_params *p = &s->prm;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f)
        return;
    for (int64_t k = 0; k < s->n_distinct; k++) {
        int32_t id = s->distinct[k];
        if (p->penalty_min_special > 0 && id >= p->penalty_min_special) continue;
        if (!(w[id] > -INFINITY)) continue;
        w[id] = penalised(w[id], p->repetition_penalty, s->counts[id], p->frequency_penalty,
                          p->presence_penalty);
    }
}

static void process(const gpo_sampler *s, const float *logits, float *w) {
    for (int64_t i = 0; i < s->n_vocab; i++)
        w[i] = s->banned[i] ? -INFINITY : sane_logit(logits[i]);
    apply_penalties(s, w);
}

void gpo_sampler_process(const gpo_sampler *s, const float *logits, float *out) {
    process(s, logits, out);
}

/* The id of the largest value, the lowest id on ties; -1 when all are -inf. */
static int32_t argmax(const float *w, int64_t nv) {
    float best = -INFINITY;
    int32_t id = -1;
    for (int64_t i = 0; i < nv; i++)
        if (w[i] > best) { /* strict: the lowest id wins ties */
            best = w[i];
            id = (int32_t)i;
        }
    return id;
}

/* Temperature sampling from c[0..n), which holds logits in a canonical order
 * (top-k survivors best first, else every finite id in id order), mx the
 * largest: probabilities, top-p, min-p and a draw.  Returns the id drawn, or
 * fallback (the argmax) when nothing is left to draw from. */
static int32_t draw(gpo_sampler *s, struct gpo_cand *c, int64_t n_in, float mx, int32_t fallback) {
    const struct gpo_sampler_params *p = &s->prm;
    /* The logits hold no NaN and no +inf, and 1/T is finite, so every
     * (x - max) / T below is a number and the most likely id gets p = 1. */
    float inv_t = 1.0f / p->temperature;
    int64_t n = 0;
    double total = 0.0;
    for (int64_t i = 0; i < n_in; i++) {
        float pr = expf((c[i].v - mx) * inv_t);
        if (pr <= 0.0f) continue; /* underflow: unreachable by any draw */
        c[n].v = pr;
        c[n].id = c[i].id;
        total += pr;
        n++;
    }
    if (p->top_p < 1.0f && n > 1) {
        double target = (double)p->top_p * total, head = 0.0, t = 1e-4 * total;
        /* Usually a few ids hold most of the mass: move those above a small
         * threshold to the front, and when they reach the target the cut lies
         * among them (they are a prefix of the sorted order), so the selection
         * need not look at the rest. */
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if ((double)c[i].v >= t) {
                head += c[i].v;
                cand_swap(&c[i], &c[m]);
                m++;
            }
        n = top_p_select(c, head >= target ? m : n, target, &total);
    }
    if (p->min_p > 0.0f) {
        /* The most likely id has p = 1 before normalisation (x = max), and
         * top-k/top-p always keep it. */
        float cut = p->min_p;
        int64_t m = 0;
        total = 0.0;
        for (int64_t i = 0; i < n; i++)
            if (c[i].v >= cut) {
                c[m++] = c[i];
                total += c[i].v;
            }
        n = m;
    }
    /* The argmax stays when nothing survived (it always should) or the mass is
     * not a positive number. */
    if (n == 0 || !(total > 0.0) || !isfinite(total)) return fallback;
    double u = rng_uniform(s->rng) * total, acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].v;
        if (u < acc) return c[i].id;
    }
    return c[n - 1].id; /* rounding at the top end */
}

static int greedy(const struct gpo_sampler_params *p) {
    return !(p->temperature >= GPO_SAMPLER_MIN_TEMPERATURE);
}

/* Does top-k cut the row's n_finite ids? */
static int top_k_cuts(const struct gpo_sampler_params *p, int64_t n_finite) {
    return p->top_k > 0 && p->top_k < n_finite;
}

static enum gpo_status all_masked(int64_t nv) {
    return gpo_fail(GPO_ERR_ARG, "sampler: every one of %lld logits is banned or -inf",
                    (long long)nv);
}

enum gpo_status gpo_sampler_sample(gpo_sampler *s, const float *logits, int32_t *out_id,
                                   struct gpo_logprobs *lp) {
    const struct gpo_sampler_params *p = &s->prm;
    int64_t nv = s->n_vocab;
    double lse = 0.0;
    if (lp) fill_logprobs(s, logits, lp, &lse);

    float *w = s->work;
    process(s, logits, w);

    int32_t chosen = argmax(w, nv);
    if (chosen < 0) return all_masked(nv);
    if (!greedy(p)) {
        int64_t n_finite = 0;
        for (int64_t i = 0; i < nv; i++) n_finite += w[i] > -INFINITY;
        struct gpo_cand *c = s->cand;
        int64_t n = 0;
        if (top_k_cuts(p, n_finite)) {
            int64_t nf;
            n = gpo_cand_select(w, nv, 0, NULL, p->top_k, c, &nf);
        } else {
            for (int64_t i = 0; i < nv; i++)
                if (w[i] > -INFINITY) c[n++] = (struct gpo_cand){w[i], (int32_t)i};
        }
        chosen = draw(s, c, n, w[chosen], chosen);
    }
    *out_id = chosen;
    if (lp) lp->chosen = (float)((double)sane_logit(logits[chosen]) - lse);
    return GPO_OK;
}

int32_t gpo_sampler_cand_k(const gpo_sampler *s) {
    const struct gpo_sampler_params *p = &s->prm;
    if (p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
        p->frequency_penalty != 0.0f || p->n_logprobs > 0 || s->ban_edited)
        return 0;
    if (greedy(p)) return 1;
    return p->top_k > 0 && p->top_k <= GPO_CAND_MAX ? p->top_k : 0;
}

/* Candidates in id order, as the whole-row path lists every finite id (an
 * insertion sort: only rows of at most GPO_CAND_MAX finite ids come here). */
static void sort_by_id(struct gpo_cand *c, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        struct gpo_cand x = c[i];
        int64_t j = i;
        for (; j > 0 && c[j - 1].id > x.id; j--) c[j] = c[j - 1];
        c[j] = x;
    }
}

enum gpo_status gpo_sampler_sample_top(gpo_sampler *s, const struct gpo_cand *cands, int64_t n,
                                       int64_t n_finite, int32_t *out_id) {
    const struct gpo_sampler_params *p = &s->prm;
    const int64_t k = gpo_sampler_cand_k(s), need = k < n_finite ? k : n_finite;
    if (k == 0)
        return gpo_fail(GPO_ERR_ARG, "sampler: these parameters need the whole row of logits, "
                        "not candidates (top_k %d, temperature %g, penalties or logprobs)",
                        p->top_k, (double)p->temperature);
    if (n_finite < 0 || n_finite > s->n_vocab || n < need || n > n_finite)
        return gpo_fail(GPO_ERR_ARG, "sampler: %lld candidates of %lld finite logits (vocabulary "
                        "%lld); sampling needs the %lld best", (long long)n, (long long)n_finite,
                        (long long)s->n_vocab, (long long)need);
    if (n_finite == 0) return all_masked(s->n_vocab);
    struct gpo_cand *c = s->cand;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = cands[i].id;
        float v = sane_logit(cands[i].v);
        if (id < 0 || id >= s->n_vocab || s->banned[id] || !(v > -INFINITY))
            return gpo_fail(GPO_ERR_ARG, "sampler: candidate %lld (id %d, logit %g) is outside "
                            "the vocabulary of %lld, banned or not finite", (long long)i, id,
                            (double)cands[i].v, (long long)s->n_vocab);
        c[i] = (struct gpo_cand){v, id};
    }
    gpo_cand_sort(c, n);
    int32_t chosen = c[0].id; /* the argmax: the lowest id among equal maxima */
    const float mx = c[0].v;
    if (!greedy(p)) {
        /* The whole-row path's list: the top-k survivors best first, or, when
         * top-k cuts nothing, every finite id (all among the candidates) in id
         * order. */
        if (!top_k_cuts(p, n_finite)) sort_by_id(c, n);
        chosen = draw(s, c, top_k_cuts(p, n_finite) ? p->top_k : n, mx, chosen);
    }
    *out_id = chosen;
    return GPO_OK;
}

void gpo_sampler_harmony_mask(uint8_t *mask, int64_t n_vocab, int64_t n_tokens) {
    for (int64_t i = 0; i < n_vocab; i++) {
        int ban = (i == GPO_TOK_STARTOFTEXT || i == 200000 || i == 200001 || i == 200004 ||
                   (i >= 200009 && i <= 200011) || i >= 200013);
        if (n_tokens > 0 && i >= n_tokens) ban = 1;
        mask[i] = (uint8_t)ban;
    }
}

/* ------------------------------------------------------------------------- */

const char *gpo_finish_name(enum gpo_finish f) {
    switch (f) {
    case GPO_FINISH_STOP: return "stop";
    case GPO_FINISH_LENGTH: return "length";
    case GPO_FINISH_CONTEXT: return "context";
    case GPO_FINISH_ABORTED: return "aborted";
    case GPO_FINISH_ERROR: return "error";
    default: return "";
    }
}

int gpo_is_stop_token(int32_t id) {
    return id == GPO_TOK_RETURN || id == GPO_TOK_CALL || id == GPO_TOK_ENDOFTEXT;
}

enum gpo_finish gpo_stop_check(int32_t id, const char *final_text, size_t final_len,
                               size_t prev_len, const char *const *stops, size_t n_stops,
                               size_t *stop_at) {
    if (gpo_is_stop_token(id)) {
        if (stop_at) *stop_at = final_len;
        return GPO_FINISH_STOP;
    }
    if (!final_text || final_len == 0) return GPO_FINISH_NONE;
    if (prev_len > final_len) prev_len = 0;
    size_t best = SIZE_MAX;
    for (size_t k = 0; k < n_stops; k++) {
        const char *st = stops[k];
        size_t sl = st ? strlen(st) : 0;
        if (sl == 0 || sl > final_len) continue;
        /* A new match must end after prev_len, so it starts at or after this. */
        size_t from = prev_len >= sl ? prev_len - sl + 1 : 0;
        const char *hit = memmem(final_text + from, final_len - from, st, sl);
        if (hit && (size_t)(hit - final_text) < best) best = (size_t)(hit - final_text);
    }
    if (best == SIZE_MAX) return GPO_FINISH_NONE;
    if (stop_at) *stop_at = best;
    return GPO_FINISH_STOP;
}
