/* bench_kernels.c - speed of the matmul kernels at the gpt-oss-20b shapes, reference
 * against every SIMD table this CPU runs, on one thread or several (rows split into
 * equal contiguous ranges, as the forward pass splits them).
 *
 * Decode and small batches (n_tok up to 8) stream the weights from DRAM and are
 * reported as GB/s of weight bytes read (each weight is read once per call, whatever
 * n_tok), next to the plain read bandwidth of the same thread count; prefill-like
 * batches (n_tok = 512) as GFLOP/s.
 * Usage: bench_kernels [seconds per measurement, default 0.4] [--simd-only]
 *                      [--threads N] [--tok LIST] [--max-rows N] [op ...]
 * (ops: bf16 mxfp4 mxfp4_ggml mxfp4_q8 mxfp4_ggml_q8 q8_0 mxfp4_q16 mxfp4_ggml_q16
 * bf16_dot; default all; the _ggml ops are the MXFP4 kernels on GGML blocks, as GGUF
 * stores them; bf16_dot is the fast path's bf16-activation matmul; LIST is token
 * counts separated by commas, default 1,2,4,8,512; --max-rows skips the larger
 * matrices, such as the 201088-row unembedding) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "gpo_bench.h"
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

/* What one measurement runs. */
enum op {
    OP_BF16,
    OP_MXFP4,
    OP_MXFP4_Q8,
    OP_Q8_0,
    OP_MXFP4_Q16,
    OP_MXFP4_GGML,
    OP_MXFP4_GGML_Q8,
    OP_MXFP4_GGML_Q16,
    OP_Q8_0_Q8,
    OP_BF16_DOT,
    OP_Q8_0_Q16S,
    OP_Q8X16_Q8,
    OP_Q8X16_Q16S
};

static int is_q8_0(enum op op) {
    return op == OP_Q8_0 || op == OP_Q8_0_Q8 || op == OP_Q8_0_Q16S || op == OP_Q8X16_Q8 ||
           op == OP_Q8X16_Q16S;
}

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
    struct gpo_q16s_block *xq16s;
};

/* Rows [r0, r1) of one call on weight copy `copy`. */
static void run_rows(const struct gpo_kernels *k, struct problem *p, int copy, int64_t r0,
                     int64_t r1) {
    switch (p->op) {
    case OP_Q8_0_Q8:
        k->matmul_q8_0_q8(p->y, p->rows, p->w[copy], p->xq, p->n_cols / 32, p->n_tok, r0, r1,
                          p->n_cols);
        break;
    case OP_Q8_0_Q16S:
        k->matmul_q8_0_q16s(p->y, p->rows, p->w[copy], p->xq16s, p->n_cols / 32, p->n_tok, r0,
                            r1, p->n_cols);
        break;
    case OP_Q8X16_Q8:
        k->matmul_q8_0x16_q8(p->y, p->rows, p->w[copy], p->xq, p->n_cols / 32, p->n_tok, r0, r1,
                             p->n_cols);
        break;
    case OP_Q8X16_Q16S:
        k->matmul_q8_0x16_q16s(p->y, p->rows, p->w[copy], p->xq16s, p->n_cols / 32, p->n_tok,
                               r0, r1, p->n_cols);
        break;
    case OP_BF16_DOT:
        k->matmul_bf16_dot(p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, r0, r1,
                           p->n_cols);
        break;
    case OP_BF16:
        k->matmul[GPO_DT_BF16](p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, r0, r1,
                               p->n_cols);
        break;
    case OP_MXFP4:
        k->matmul_mxfp4(p->y, p->rows, p->blocks[copy], p->scales[copy], p->x, p->n_cols, p->n_tok,
                        r0, r1, p->n_cols);
        break;
    case OP_MXFP4_Q8:
        k->matmul_mxfp4_q8(p->y, p->rows, p->blocks[copy], p->scales[copy], p->xq,
                           p->n_cols / 32, p->n_tok, r0, r1, p->n_cols);
        break;
    case OP_Q8_0:
        k->matmul[GPO_DT_Q8_0](p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, r0, r1,
                               p->n_cols);
        break;
    case OP_MXFP4_Q16:
        k->matmul_mxfp4_q16(p->y, p->rows, p->blocks[copy], p->scales[copy], p->xq16,
                            p->n_cols / 32, p->n_tok, r0, r1, p->n_cols);
        break;
    case OP_MXFP4_GGML:
        k->matmul_mxfp4_ggml(p->y, p->rows, p->w[copy], p->x, p->n_cols, p->n_tok, r0, r1,
                             p->n_cols);
        break;
    case OP_MXFP4_GGML_Q8:
        k->matmul_mxfp4_ggml_q8(p->y, p->rows, p->w[copy], p->xq, p->n_cols / 32, p->n_tok, r0,
                                r1, p->n_cols);
        break;
    case OP_MXFP4_GGML_Q16:
        k->matmul_mxfp4_ggml_q16(p->y, p->rows, p->w[copy], p->xq16, p->n_cols / 32, p->n_tok,
                                 r0, r1, p->n_cols);
        break;
    }
}

/* One call split over n_threads threads: equal contiguous shares of the rows, in
 * multiples of 16 so every share starts on whole tiles. */
static int n_threads = 1;
static void run_once(const struct gpo_kernels *k, struct problem *p, int copy) {
    if (n_threads == 1) {
        run_rows(k, p, copy, 0, p->rows);
        return;
    }
#pragma omp parallel num_threads(n_threads)
    {
        const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t chunk = ((p->rows + nth - 1) / nth + 15) / 16 * 16;
        const int64_t r0 = tid * chunk < p->rows ? tid * chunk : p->rows;
        const int64_t r1 = r0 + chunk < p->rows ? r0 + chunk : p->rows;
        if (r0 < r1) run_rows(k, p, copy, r0, r1);
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
    if (p->op == OP_BF16 || p->op == OP_BF16_DOT) return (size_t)(p->rows * p->n_cols) * 2;
    if (is_q8_0(p->op))
        return (size_t)(p->rows * p->n_cols / 32) * sizeof(struct gpo_q8_0_block);
    return (size_t)(p->rows * p->n_cols / 32) * 17;
}

static struct problem make_problem(enum op op, int64_t rows, int64_t n_cols, int64_t n_tok,
                                   int decode) {
    struct problem p = {.op = op, .rows = rows, .n_cols = n_cols, .n_tok = n_tok};
    const size_t wb = weight_bytes(&p);
    p.copies = decode ? (int)((STREAM_BYTES + wb - 1) / wb) : 1;
    if (op == OP_BF16 || op == OP_BF16_DOT) {
        p.w = calloc((size_t)p.copies, sizeof *p.w);
        for (int c = 0; c < p.copies; c++) {
            uint16_t *w = alloc_or_die(wb);
            for (size_t i = 0; i < wb / 2; i++) w[i] = f32_to_bf16(rndf() * 0.05f);
            p.w[c] = w;
        }
    } else if (is_q8_0(op)) {
        /* Requantised like --dense q8 does at load, from f32 rows (and repacked for
         * the Q8_0x16 kernels, as the load does). */
        p.w = calloc((size_t)p.copies, sizeof *p.w);
        float *row = alloc_or_die((size_t)n_cols * 4);
        for (int c = 0; c < p.copies; c++) {
            struct gpo_q8_0_block *w = alloc_or_die(wb);
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t i = 0; i < n_cols; i++) row[i] = rndf() * 0.05f;
                gpo_quantize_row_q8_0(w + r * (n_cols / 32), row, GPO_DT_F32, n_cols);
            }
            if (op == OP_Q8X16_Q8 || op == OP_Q8X16_Q16S) {
                void *x16 = alloc_or_die(wb);
                gpo_q8_0x16_pack(x16, w, rows, n_cols);
                gpo_aligned_free(w);
                w = x16;
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
    if (op == OP_Q8_0_Q8 || op == OP_Q8X16_Q8) gpo_q8_offset(p.xq, n_tok * n_cols / 32); /* the form it takes */
    p.xq16 = alloc_or_die((size_t)(n_tok * n_cols / 32) * sizeof *p.xq16);
    gpo_kernels_ref()->quantize_q16(p.xq16, p.x, n_tok * n_cols);
    p.xq16s = alloc_or_die((size_t)(n_tok * n_cols / 32) * sizeof *p.xq16s);
    gpo_q16_split(p.xq16s, p.xq16, n_tok * n_cols / 32);
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
    gpo_aligned_free(p->xq16s);
}

static const char *op_name(enum op op) {
    static const char *const names[] = {"bf16",          "mxfp4",         "mxfp4_q8",
                                        "q8_0",          "mxfp4_q16",     "mxfp4_ggml",
                                        "mxfp4_ggml_q8", "mxfp4_ggml_q16", "q8_0_q8",
                                        "bf16_dot",      "q8_0_q16s",     "q8_0x16_q8",
                                        "q8_0x16_q16s"};
    return names[op];
}

/* Whether op is among the names on the command line (all when none is named). */
static int wanted(enum op op, int argc, char **argv, int first) {
    if (first >= argc) return 1;
    for (int i = first; i < argc; i++)
        if (strcmp(argv[i], op_name(op)) == 0) return 1;
    return 0;
}

/* Token counts from "1,2,8": at most 16 of them, each 1..4096. */
static int parse_toks(const char *arg, int64_t *out) {
    int n = 0;
    for (const char *q = arg; *q && n < 16;) {
        char *end;
        const long v = strtol(q, &end, 10);
        if (end == q || v < 1 || v > 4096) return -1;
        out[n++] = v;
        q = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

/* The gpt-oss-20b matrices, rows x columns: the dense ones (attention q/k/v, output
 * and the unembedding) and the two expert projections. */
static const struct {
    int64_t rows, cols;
} dense_shapes[] = {{2880, 4096}, {4096, 2880}, {5120, 2880}, {201088, 2880}},
  expert_shapes[] = {{5760, 2880}, {2880, 2880}};

static int is_dense(enum op op) {
    return op == OP_BF16 || op == OP_BF16_DOT || is_q8_0(op);
}

/* Whether table k has a kernel for op (the fast path's optional slots may be empty). */
static int has_op(const struct gpo_kernels *k, enum op op) {
    if (op == OP_Q8_0_Q8) return k->matmul_q8_0_q8 != NULL;
    if (op == OP_BF16_DOT) return k->matmul_bf16_dot != NULL;
    if (op == OP_Q8_0_Q16S) return k->matmul_q8_0_q16s != NULL;
    if (op == OP_Q8X16_Q8) return k->matmul_q8_0x16_q8 != NULL;
    if (op == OP_Q8X16_Q16S) return k->matmul_q8_0x16_q16s != NULL;
    return 1;
}

int main(int argc, char **argv) {
    double secs = 0.4;
    int simd_only = 0, n_toks = 5, first_op = argc;
    int64_t toks[16] = {1, 2, 4, 8, 512}, max_rows = INT64_MAX;
    for (int i = 1; i < argc && first_op == argc; i++) {
        if (strcmp(argv[i], "--simd-only") == 0) simd_only = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) n_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--max-rows") == 0 && i + 1 < argc) max_rows = atoll(argv[++i]);
        else if (strcmp(argv[i], "--tok") == 0 && i + 1 < argc)
            n_toks = parse_toks(argv[++i], toks);
        else if (i == 1 && atof(argv[i]) > 0) secs = atof(argv[i]);
        else first_op = i;
    }
    if (n_threads < 1 || n_threads > 256 || n_toks < 1) {
        fprintf(stderr, "bench_kernels: bad --threads or --tok value\n");
        return 2;
    }
    const struct gpo_kernels *tabs[3];
    int nt = 0;
    if (!simd_only) tabs[nt++] = gpo_kernels_ref();
    if (gpo_cpu_has_avx2() && gpo_kernels_avx2()) tabs[nt++] = gpo_kernels_avx2();
    if (gpo_kernels_avx512()) tabs[nt++] = gpo_kernels_avx512();

    double membw = 0;
    if (gpo_membw_measure(n_threads, (uint64_t)256 << 20, secs * 2, &membw) != GPO_OK)
        fprintf(stderr, "bench_kernels: %s\n", gpo_last_error());
    printf("cpu: %s\nkernels: %s\n", gpo_cpu_features(), gpo_kernels_why());
    printf("threads: %d, read bandwidth (gptoss bench --membw probe): %.2f GB/s\n", n_threads,
           membw);
    printf("n_tok <= 8: weights streamed from DRAM, GB/s of weight bytes (%% of the read "
           "bandwidth); larger: GFLOP/s\n\n");

    static const enum op ops[] = {OP_BF16,          OP_BF16_DOT,      OP_Q8_0,
                                  OP_Q8_0_Q8,       OP_Q8_0_Q16S,     OP_Q8X16_Q8,
                                  OP_Q8X16_Q16S,    OP_MXFP4,         OP_MXFP4_Q8,
                                  OP_MXFP4_Q16,     OP_MXFP4_GGML,    OP_MXFP4_GGML_Q8,
                                  OP_MXFP4_GGML_Q16};
    for (size_t o = 0; o < sizeof ops / sizeof *ops; o++) {
        if (!wanted(ops[o], argc, argv, first_op)) continue;
        const int dense = is_dense(ops[o]);
        const size_t n_shapes = dense ? sizeof dense_shapes / sizeof *dense_shapes
                                      : sizeof expert_shapes / sizeof *expert_shapes;
        for (size_t sh = 0; sh < n_shapes; sh++)
            for (int ti = 0; ti < n_toks; ti++) {
                const int64_t rows = dense ? dense_shapes[sh].rows : expert_shapes[sh].rows;
                const int64_t cols = dense ? dense_shapes[sh].cols : expert_shapes[sh].cols;
                const int64_t n_tok = toks[ti];
                const int streamed = n_tok <= 8;
                /* Prefill is not run on the unembedding (only last positions are). */
                if ((!streamed && rows > 8192) || rows > max_rows) continue;
                struct problem p = make_problem(ops[o], rows, cols, n_tok, streamed);
                for (int k = 0; k < nt; k++) {
                    /* The reference only where it takes well under a second a call. */
                    if (tabs[k] == gpo_kernels_ref() && (!streamed || rows > 8192)) continue;
                    if (!has_op(tabs[k], ops[o])) continue;
                    const double s = time_calls(tabs[k], &p, secs);
                    const double gbs = (double)weight_bytes(&p) / s / 1e9;
                    const double gflops = 2.0 * (double)(rows * cols * n_tok) / s / 1e9;
                    if (streamed)
                        printf("  %-14s %6lldx%-5lld n_tok=%-3lld %-12s %9.3f ms %7.2f GB/s "
                               "(%3.0f%%) %8.2f GFLOP/s\n",
                               op_name(p.op), (long long)rows, (long long)cols,
                               (long long)n_tok, tabs[k]->name, s * 1e3, gbs,
                               membw > 0 ? 100.0 * gbs / membw : 0.0, gflops);
                    else
                        printf("  %-14s %6lldx%-5lld n_tok=%-3lld %-12s %9.3f ms %8.2f GFLOP/s\n",
                               op_name(p.op), (long long)rows, (long long)cols,
                               (long long)n_tok, tabs[k]->name, s * 1e3, gflops);
                    fflush(stdout);
                }
                free_problem(&p);
            }
    }
    return 0;
}
