/* forward_impl.h - what forward.c, attention.c and moe.c share: the context, the
 * work splitting inside the pass's one OpenMP team, and the blocks the pass
 * calls.  Each block is one or more sweeps of the schedule in forward.c; a block
 * runs on every thread of the team and works on the rank's shard only (its query
 * and KV heads, its wo columns, its experts), the whole model without a shard.
 * Internal to the library. */
#ifndef GPO_FORWARD_IMPL_H
#define GPO_FORWARD_IMPL_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "forward.h"
#include "kernels/kernels.h"
#include "mesh.h"
#include "model.h"

/* Attention processes keys in chunks aligned to absolute key positions, so the
 * online-softmax rescaling points do not depend on how tokens were batched. */
#define ATTN_CHUNK 64
/* Query rows (heads of one KV head, of consecutive tokens) attended together, and
 * the floats of a thread's attention scratch: a chunk of scores and the weighted
 * sum of each row. */
#define ATTN_BLOCK_ROWS 32
#define ATTN_SCRATCH(D) (ATTN_BLOCK_ROWS * (ATTN_CHUNK + (D)))

/* The MoE work items: blocks of MOE_UP_BLOCK units of one expert's first projection
 * (its gate and linear rows, so the SwiGLU of those units follows at once; a whole
 * int8 block of its output), blocks of MOE_DOWN_BLOCK rows of its down projection.
 * A thread's up projection scratch holds all 2*n_ff rows for MOE_SCRATCH_TOKENS
 * tokens: an expert with more tokens is computed in chunks of units.  Few large
 * kernel calls matter: 128-unit chunks cost 10-25% of a 16-token prefill. */
#define MOE_UP_BLOCK 32
#define MOE_DOWN_BLOCK 32
#define MOE_SCRATCH_TOKENS 64

/* The fast path's integer kernels for dense matrix type dt (Q8_0 or its Q8_0x16
 * repack), or NULL: the matrix then takes f32 activations through matmul[dt]. */
#define GPO_FWD_INT_KERNEL(x, dt, f)                                                       \
    (!(x)->dq                      ? NULL                                                  \
     : (dt) == GPO_DT_Q8_0         ? (x)->k->matmul_q8_0_##f                               \
     : (dt) == GPO_DT_Q8_0X16      ? (x)->k->matmul_q8_0x16_##f                            \
                                   : NULL)

/* The kernel for the q/k/v and unembedding matrices of type dt, f32 activations: on
 * the fast path a BF16 matrix takes them rounded to bf16 (vdpbf16ps, matmul_bf16_dot)
 * where the table has it, at every token count, so a row's bits do not depend on the
 * batch it came in.  Measured with bench_kernels (AVX-512 BF16, one core, 20b shapes):
 * 1.0-1.4x the f32-activation kernel's weight bytes per second at 1 token, about 2x
 * at 8 tokens, 1.6x its GFLOP/s at 512.  test_golden holds the fast path within
 * OpenAI's bf16 run's error; the output projection keeps f32 (see attention.c). */
#define GPO_FWD_F32_KERNEL(x, dt)                                                          \
    ((x)->path == GPO_PATH_FAST && (dt) == GPO_DT_BF16 && (x)->k->matmul_bf16_dot           \
         ? (x)->k->matmul_bf16_dot                                                         \
         : (x)->k->matmul[(dt)])

static inline int64_t gpo_max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t gpo_min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* One thread's barrier counters, a cache line of its own. */
struct thr_stat {
    double wait; /* seconds waiting in barriers */
    int64_t n;   /* barriers crossed */
    double end;  /* when it reached the end of the parallel region */
    char pad[64 - 3 * 8];
};

/* The items of one sweep, claimed by the team's threads (gpo_fwd_claim): the next
 * unclaimed item, a cache line of its own. */
struct fwd_claim {
    _Atomic int64_t next;
    char pad[64 - sizeof(int64_t)];
};
/* The claim counters of a pass: per layer q/k/v, output projection, up and down
 * projections, then the unembedding. */
enum { CLAIM_QKV, CLAIM_OUT, CLAIM_UP, CLAIM_DOWN, CLAIMS_PER_LAYER };

/* What this process computes: the whole model, or one rank's shard of it.
 * Head and expert ranges are half-open; without a shard they cover everything. */
struct fwd_part {
    int sharded;
    int64_t head0, n_head;       /* query heads */
    int64_t kv_head0, n_head_kv; /* KV heads (head0 = kv_head0 x the group size) */
    int64_t qd, kvd;             /* floats per token of q (and att), of k and v */
    int64_t expert0, expert1;
    int64_t vocab0, vocab1;      /* unembedding rows */
    const gpo_dist_comm *model, *tp, *ep; /* the groups to reduce over */
};

struct gpo_ctx {
    const struct gpo_model *m;
    const struct gpo_kernels *k;
    struct gpo_kernels ktab; /* the chosen table, gaps filled from the reference */
    enum gpo_path path;
    int n_threads;
    int64_t max_tokens, max_seqs;
    volatile sig_atomic_t *abort_flag;
    gpo_trace_fn trace;
    void *trace_user;
    float *inv_freq;
    float concentration;
    struct fwd_part part;
    /* A part with some of the query heads: each layer's wo columns of its heads,
     * packed (gpo_attn_pack_wo); NULL otherwise. */
    struct gpo_tview *wo_pack; /* [n_layer] views into wo_buf */
    void *wo_buf;
    uint64_t wo_bytes;

    /* per token of the batch */
    int32_t *tok_id;
    int64_t *tok_pos;
    int32_t *tok_seq;
    float *x;     /* [T][H] residual */
    float *t;     /* [T][H] normed */
    float *q;     /* [T][qd] this part's query heads */
    float *kb;    /* [n_layer][T][kvd] new keys of this batch, committed at the end */
    float *vb;    /* [n_layer][T][kvd] */
    float *att;   /* [T][qd] */
    float *o;     /* [T][H] */
    float *rl;    /* [T][E] router logits */
    int32_t *sel; /* [T][K] */
    float *selw;  /* [T][K] */
    float *y;     /* [T][H] MoE output */
    float *cs;    /* [T][D/2] cos, then [T][D/2] sin */
    /* Experts.  A slot is one (expert, token) pair of the batch; slots are ordered
     * by expert, then token, so each expert's tokens are a contiguous run of them. */
    struct gpo_q16_block *tq; /* [T][H/32] quantised expert inputs (fast path) */
    float *act;               /* [T*K][F] SwiGLU outputs per slot (exact path) */
    struct gpo_q8_block *xq;  /* [T*K][F/32] the same quantised (fast path) */
    /* The Q8_0 dense matrices' integer activations (fast path, dq), quantised as
     * they are made: int16 split into bytes for q, k, v and the output projection,
     * int8 offset by 128 for the unembedding. */
    int dq;
    struct gpo_q16s_block *tq16s;   /* [T][H/32] x->t before q, k, v */
    struct gpo_q16s_block *attq16s; /* [T][qd/32] x->att */
    struct gpo_q8_block *tq8;       /* [T][H/32] x->t's rows before the unembedding */
    float *z;                 /* [T*K][H] down projection outputs per slot, bias added */
    /* per thread: every thread groups the batch by expert itself (the same result
     * for all), which saves the barrier a shared grouping would need */
    int64_t *g_off;  /* [n_threads][2*(E+1)] first slot of each expert, then cursors */
    int32_t *g_tok;  /* [n_threads][T*K] token of each slot */
    int32_t *g_slot; /* [n_threads][T*K] slot of token i's j-th expert */
    int64_t *g_run;  /* [n_threads][3*E] the runs of a claimed chunk of a sweep (moe.c) */
    float *xg;       /* [n_threads][T*H] one expert's inputs gathered (f32 or q16 rows) */
    float *hs;       /* [n_threads][hs_cap] up projection outputs of one chunk */
    float *as;       /* [n_threads][F] one token's SwiGLU outputs (fast path) */
    int64_t hs_cap;  /* floats: 2F units x MOE_SCRATCH_TOKENS, at least 2 x 32 x T */
    /* output selection */
    int64_t *out_tok;  /* [T] tokens whose logits are wanted */
    int64_t *out_idx;  /* [T] each token's row of logits, or -1 */
    /* attention scratch per thread */
    float *ascratch;   /* [n_threads][ATTN_CHUNK + head_dim] */
    /* a shard's logits when the caller keeps none, and the packing buffer of the
     * vocabulary gather (grown as needed) */
    float *lg, *lg_pack;
    size_t lg_cap, lg_pack_cap;
    /* the packing buffer of the sampling candidates' gather (in candidates) */
    struct gpo_cand *cd_pack;
    size_t cd_pack_cap;
    /* scheduling counters */
    struct thr_stat *tstat; /* [n_threads] */
    struct fwd_claim *claim; /* [n_layer * CLAIMS_PER_LAYER + 1], zeroed by each pass */
    int64_t n_claims;
    struct gpo_ctx_stats stats;
};

/* One sequence of the batch. */
struct seq_info {
    const struct gpo_kv *kv;
    int64_t p0;   /* cache length before this batch */
    int64_t base; /* index of the sequence's first token in the batch */
};

/* Work splitting inside the parallel region (forward.c). */
void gpo_fwd_share(int64_t n, int64_t *i0, int64_t *i1); /* contiguous items */
void gpo_fwd_barrier(struct thr_stat *ts);                /* counted team barrier */
/* Claims the next chunk [*a, *b) of a sweep of n items from its counter: 1, or 0
 * once all are claimed.  Threads that finish early take more, so a thread slowed
 * by the machine (another tenant, an interrupt) does not hold up the barrier.
 * Chunks shrink as the sweep drains (a 2 x team share of what is left, at least
 * min_chunk), and start and end at multiples of align (the last at n).  A result
 * does not depend on who claims it: each item is computed whole by one thread, and
 * the kernels give a row the same bits whatever rows a call covers. */
int gpo_fwd_claim(struct fwd_claim *c, int64_t n, int64_t align, int64_t min_chunk, int64_t *a,
                  int64_t *b);
/* The counter of sweep `which` (CLAIM_*) of layer l; l = n_layer: the unembedding. */
struct fwd_claim *gpo_fwd_claim_of(struct gpo_ctx *x, int64_t l, int which);

/* A view of rows [r0, r0 + n) of W (the kernels see a matrix starting there). */
struct gpo_tview gpo_fwd_row_view(const struct gpo_tview *W, int64_t r0, int64_t n);

/* attention.c.  Sweep 1: q, k, v of the part's heads for tokens [0, n_tok), RoPE
 * applied, into x->q and layer l's rows of x->kb / x->vb. */
void gpo_attn_qkv(struct gpo_ctx *x, const struct gpo_layer *L, int64_t l, int64_t n_tok);
/* Sweep 2: every (token, query head) of the part into x->att (no barrier: the
 * caller's follows).  scratch: the thread's ATTN_SCRATCH(head_dim) floats. */
void gpo_attn_heads(struct gpo_ctx *x, const struct gpo_layer *L, const struct seq_info *si,
                    int64_t l, int64_t n_tok, float *scratch);
/* Sweep 3: x->o = wo x->att over the part's columns of wo (x->wo_pack when the part
 * has some of the heads); the bias only without a shard (a shard's partial products
 * are summed first, the bias added once after).  Ends with a barrier. */
void gpo_attn_out(struct gpo_ctx *x, struct thr_stat *ts, const struct gpo_layer *L, int64_t n_tok);
/* At context creation (x->m and x->part set): when the part has some of the query
 * heads, copy its columns of every layer's wo into one rows x qd matrix per layer of
 * the same type (Q8_0 blocks whole: the columns are whole heads), reading only those
 * columns' bytes of the mapping, into x->wo_pack.  The product then is one kernel
 * call over a range of rows with the dot products of the strided columns, bit for
 * bit.  gpo_attn_free_wo releases it. */
enum gpo_status gpo_attn_pack_wo(struct gpo_ctx *x);
void gpo_attn_free_wo(struct gpo_ctx *x);

/* moe.c.  Per-thread state of the MoE sweeps. */
struct moe_thread {
    int64_t *g_off;
    int32_t *g_tok, *g_slot;
    int64_t *run_e, *run_a, *run_b;
    float *xg, *hs, *as;
};
void gpo_moe_thread(const struct gpo_ctx *x, int tid, struct moe_thread *mt);
/* Router logits and top-k of tokens [i0, i1) (normed rows in x->t). */
void gpo_moe_route(struct gpo_ctx *x, const struct gpo_layer *L, int64_t i0, int64_t i1);
/* After the router's barrier: group the batch by expert (each thread for itself). */
void gpo_moe_group(const struct gpo_ctx *x, struct moe_thread *mt, int64_t n_tok);
/* Sweep 5 (up projection and SwiGLU) and sweep 6 (down projection) of the part's
 * experts, each ending with a barrier. */
void gpo_moe_up(struct gpo_ctx *x, struct thr_stat *ts, struct moe_thread *mt,
                const struct gpo_layer *L);
void gpo_moe_down(struct gpo_ctx *x, struct thr_stat *ts, struct moe_thread *mt,
                  const struct gpo_layer *L);
/* Token i's weighted sum over its experts of the part, ascending, into x->y. */
void gpo_moe_combine(struct gpo_ctx *x, const struct moe_thread *mt, int64_t i);

#endif
