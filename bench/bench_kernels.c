/* bench_kernels.c - single-thread speed of the matmul kernels at GPT-OSS shapes,
 * reference against every SIMD table this CPU runs.  Decode (one token) is reported
 * as weight GB/s next to this core's plain read bandwidth; batches as GFLOP/s.
 * Usage: bench_kernels [seconds per measurement, default 0.4] [--simd-only] [op ...]
 * (ops: bf16 mxfp4 mxfp4_ggml mxfp4_q8 mxfp4_ggml_q8 q8_0 mxfp4_q16 mxfp4_ggml_q16;
 * default all; the _ggml ops are the MXFP4 kernels on GGML blocks, as GGUF stores them) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "util.h"

/* Weight sets are replicated until they exceed this, so decode streams from DRAM
 * rather than from the last-level cache. */
#define STREAM_BYTES (160u << 20)

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float rndf(void) { return (float)(rnd() >> 40) / (float)(1 << 24) * 2.0f - 1.0f; }

static void *alloc_or_die(size_t n) {
    void *p = gpo_aligned_alloc(n);
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* One core's read bandwidth: sums a buffer far larger than the caches. */
static double read_bandwidth(double seconds) {
    const size_t n = STREAM_BYTES / 8;
    uint64_t *buf = alloc_or_die(n * 8);
    for (size_t i = 0; i < n; i++) buf[i] = i;
    volatile uint64_t sink = 0;
    double best = 0, t_end = gpo_now() + seconds;
    do {
        const double t0 = gpo_now();
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (size_t i = 0; i < n; i += 4) {
            a0 += buf[i];
            a1 += buf[i + 1];
            a2 += buf[i + 2];
            a3 += buf[i + 3];
        }
        sink += a0 + a1 + a2 + a3;
        const double gbs = (double)(n * 8) / (gpo_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    } while (gpo_now() < t_end);
    (void)sink;
    gpo_aligned_free(buf);
    return best;
}

/* What one measurement runs. */
enum op {
    OP_BF16,
    OP_MXFP4,
    OP_MXFP4_Q8,
    OP_Q8_0,
    OP_MXFP4_Q16,
    OP_MXFP4_GGML,
    OP_MXFP4_GGML_Q8,
    OP_MXFP4_GGML_Q16
};

static int is_ggml(enum op op) {
    return op == OP_MXFP4_GGML || op == OP_MXFP4_GGML_Q8 || op == OP_MXFP4_GGML_Q16;
}

struct problem {
    enum op op;
    int64_t rows, n_cols, n_tok;
    int copies;                 /* weight copies cycled through (decode) */
    void **w;                   /* dense (BF16, Q8_0) or GGML MXFP4 weights per copy */
    uint8_t **blocks, **scales; /* MXFP4 per copy */
    float *x, *y;
    struct gpo_q8_block *xq;
    struct gpo_q16_block *xq16;
};

static void run_once(const struct gpo_kernels *k, struct problem *p, int copy) {
    switch (p->op) {
    case OP_BF16:
        k->matmul[GPO_DT_BF16](p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, 0, p->rows,
                               p->n_cols);
        break;
    case OP_MXFP4:
        k->matmul_mxfp4(p->y, p->rows, p->blocks[copy], p->scales[copy], p->x, p->n_cols, p->n_tok,
                        0, p->rows, p->n_cols);
        break;
    case OP_MXFP4_Q8:
        k->matmul_mxfp4_q8(p->y, p->rows, p->blocks[copy], p->scales[copy], p->xq,
                           p->n_cols / 32, p->n_tok, 0, p->rows, p->n_cols);
        break;
    case OP_Q8_0:
        k->matmul[GPO_DT_Q8_0](p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, 0, p->rows,
                               p->n_cols);
        break;
    case OP_MXFP4_Q16:
        k->matmul_mxfp4_q16(p->y, p->rows, p->blocks[copy], p->scales[copy], p->xq16,
                            p->n_cols / 32, p->n_tok, 0, p->rows, p->n_cols);
        break;
    case OP_MXFP4_GGML:
        k->matmul_mxfp4_ggml(p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, 0, p->rows,
                             p->n_cols);
        break;
    case OP_MXFP4_GGML_Q8:
        k->matmul_mxfp4_ggml_q8(p->y, p->rows, p->w[copy], p->xq, p->n_cols / 32, p->n_tok, 0,
                                p->rows, p->n_cols);
        break;
    case OP_MXFP4_GGML_Q16:
        k->matmul_mxfp4_ggml_q16(p->y, p->rows, p->w[copy], p->xq16, p->n_cols / 32, p->n_tok,
                                 0, p->rows, p->n_cols);
        break;
    }
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median seconds per call over repeated calls (at least 3, until `seconds`). */
static double time_calls(const struct gpo_kernels *k, struct problem *p, double seconds) {
    double t[256];
    int n = 0, copy = 0;
    run_once(k, p, copy); /* warm-up */
    const double t_end = gpo_now() + seconds;
    do {
        copy = (copy + 1) % p->copies;
        const double t0 = gpo_now();
        run_once(k, p, copy);
        t[n++] = gpo_now() - t0;
    } while (n < 256 && (n < 3 || gpo_now() < t_end));
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

static size_t weight_bytes(const struct problem *p) {
    if (p->op == OP_BF16) return (size_t)(p->rows * p->n_cols) * 2;
    if (p->op == OP_Q8_0)
        return (size_t)(p->rows * p->n_cols / 32) * sizeof(struct gpo_q8_0_block);
    return (size_t)(p->rows * p->n_cols / 32) * 17;
}

static struct problem make_problem(enum op op, int64_t rows, int64_t n_cols, int64_t n_tok,
                                   int decode) {
    struct problem p = {.op = op, .rows = rows, .n_cols = n_cols, .n_tok = n_tok};
    const size_t wb = weight_bytes(&p);
    p.copies = decode ? (int)((STREAM_BYTES + wb - 1) / wb) : 1;
    if (op == OP_BF16) {
        p.w = calloc((size_t)p.copies, sizeof *p.w);
        for (int c = 0; c < p.copies; c++) {
            uint16_t *w = alloc_or_die(wb);
            for (size_t i = 0; i < wb / 2; i++) w[i] = f32_to_bf16(rndf() * 0.05f);
            p.w[c] = w;
        }
    } else if (op == OP_Q8_0) {
        /* Requantised like --dense q8 does at load, from f32 rows. */
        p.w = calloc((size_t)p.copies, sizeof *p.w);
        float *row = alloc_or_die((size_t)n_cols * 4);
        for (int c = 0; c < p.copies; c++) {
            struct gpo_q8_0_block *w = alloc_or_die(wb);
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t i = 0; i < n_cols; i++) row[i] = rndf() * 0.05f;
                gpo_quantize_row_q8_0(w + r * (n_cols / 32), row, GPO_DT_F32, n_cols);
            }
            p.w[c] = w;
        }
        gpo_aligned_free(row);
    } else if (is_ggml(op)) {
        /* The same random weights as the safetensors layout, repacked. */
        p.w = calloc((size_t)p.copies, sizeof *p.w);
        const size_t nb = (size_t)(rows * n_cols / 32);
        uint8_t *blocks = alloc_or_die(nb * 16), *scales = alloc_or_die(nb);
        for (int c = 0; c < p.copies; c++) {
            for (size_t i = 0; i < nb * 16; i++) blocks[i] = (uint8_t)rnd();
            for (size_t i = 0; i < nb; i++) scales[i] = (uint8_t)(118 + rnd() % 8);
            p.w[c] = alloc_or_die(wb);
            gpo_mxfp4_to_ggml(p.w[c], blocks, scales, (int64_t)nb);
        }
        gpo_aligned_free(blocks);
        gpo_aligned_free(scales);
    } else {
        p.blocks = calloc((size_t)p.copies, sizeof *p.blocks);
        p.scales = calloc((size_t)p.copies, sizeof *p.scales);
        const size_t nb = (size_t)(rows * n_cols / 32);
        for (int c = 0; c < p.copies; c++) {
            p.blocks[c] = alloc_or_die(nb * 16);
            p.scales[c] = alloc_or_die(nb);
            for (size_t i = 0; i < nb * 16; i++) p.blocks[c][i] = (uint8_t)rnd();
            for (size_t i = 0; i < nb; i++) p.scales[c][i] = (uint8_t)(118 + rnd() % 8);
        }
    }
    p.x = alloc_or_die((size_t)(n_tok * n_cols) * 4);
    for (int64_t i = 0; i < n_tok * n_cols; i++) p.x[i] = rndf();
    p.y = alloc_or_die((size_t)(n_tok * rows) * 4);
    p.xq = alloc_or_die((size_t)(n_tok * n_cols / 32) * sizeof *p.xq);
    gpo_kernels_ref()->quantize_q8(p.xq, p.x, n_tok * n_cols);
    p.xq16 = alloc_or_die((size_t)(n_tok * n_cols / 32) * sizeof *p.xq16);
    gpo_kernels_ref()->quantize_q16(p.xq16, p.x, n_tok * n_cols);
    return p;
}

static void free_problem(struct problem *p) {
    for (int c = 0; c < p->copies; c++) {
        if (p->w) gpo_aligned_free(p->w[c]);
        if (p->blocks) gpo_aligned_free(p->blocks[c]);
        if (p->scales) gpo_aligned_free(p->scales[c]);
    }
    free(p->w);
    free(p->blocks);
    free(p->scales);
    gpo_aligned_free(p->x);
    gpo_aligned_free(p->y);
    gpo_aligned_free(p->xq);
    gpo_aligned_free(p->xq16);
}

static const char *op_name(enum op op) {
    static const char *const names[] = {"bf16",          "mxfp4",         "mxfp4_q8",
                                        "q8_0",          "mxfp4_q16",     "mxfp4_ggml",
                                        "mxfp4_ggml_q8", "mxfp4_ggml_q16"};
    return names[op];
}

/* Whether op is among the names on the command line (all when none is named). */
static int wanted(enum op op, int argc, char **argv, int first) {
    if (first >= argc) return 1;
    for (int i = first; i < argc; i++)
        if (strcmp(argv[i], op_name(op)) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const double secs = argc > 1 ? atof(argv[1]) : 0.4;
    const int simd_only = argc > 2 && strcmp(argv[2], "--simd-only") == 0;
    const int first_op = 2 + simd_only;
    const struct gpo_kernels *tabs[3];
    int nt = 0;
    if (!simd_only) tabs[nt++] = gpo_kernels_ref();
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2()) tabs[nt++] = gpo_kernels_avx2();
    if (gpo_kernels_avx512()) tabs[nt++] = gpo_kernels_avx512();

    printf("cpu: %s\n", gpo_cpu_features());
    printf("single-core read bandwidth: %.1f GB/s\n\n", read_bandwidth(secs * 2));

    printf("decode (n_tok = 1), weights streamed from DRAM, single thread\n");
    const struct {
        enum op op;
        int64_t rows, cols;
    } dec[] = {{OP_BF16, 5120, 2880},          {OP_MXFP4, 5760, 2880},
               {OP_MXFP4_GGML, 5760, 2880},     {OP_MXFP4_Q8, 5760, 2880},
               {OP_MXFP4_GGML_Q8, 5760, 2880},  {OP_Q8_0, 5120, 2880},
               {OP_MXFP4_Q16, 5760, 2880},      {OP_MXFP4_GGML_Q16, 5760, 2880}};
    for (size_t i = 0; i < sizeof dec / sizeof *dec; i++) {
        if (!wanted(dec[i].op, argc, argv, first_op)) continue;
        struct problem p = make_problem(dec[i].op, dec[i].rows, dec[i].cols, 1, 1);
        for (int k = 0; k < nt; k++) {
            const double s = time_calls(tabs[k], &p, secs);
            printf("  %-14s %5lldx%-5lld %-6s %8.3f ms  %6.2f GB/s  %6.2f GFLOP/s\n",
                   op_name(p.op), (long long)p.rows, (long long)p.n_cols, tabs[k]->name, s * 1e3,
                   (double)weight_bytes(&p) / s / 1e9,
                   2.0 * (double)(p.rows * p.n_cols) / s / 1e9);
        }
        free_problem(&p);
    }

    printf("\nbatches (weights of one matrix, reused across tokens), single thread\n");
    static const int64_t toks[] = {8, 64};
    for (size_t i = 0; i < sizeof dec / sizeof *dec; i++)
        for (size_t j = 0; j < sizeof toks / sizeof *toks; j++) {
            if (!wanted(dec[i].op, argc, argv, first_op)) continue;
            struct problem p = make_problem(dec[i].op, dec[i].rows, dec[i].cols, toks[j], 0);
            for (int k = 0; k < nt; k++) {
                const double s = time_calls(tabs[k], &p, secs);
                printf("  %-14s %5lldx%-5lld n_tok=%-3lld %-6s %9.3f ms  %7.2f GFLOP/s\n",
                       op_name(p.op), (long long)p.rows, (long long)p.n_cols, (long long)p.n_tok,
                       tabs[k]->name, s * 1e3,
                       2.0 * (double)(p.rows * p.n_cols * p.n_tok) / s / 1e9);
            }
            free_problem(&p);
        }
    return 0;
}
