/* mesh.h - the plan of a multi-rank run: how TP x EP x DP ranks share one model,
 * which slice of every weight each rank holds, and how many bytes stay resident
 * on it.  Pure arithmetic on the configuration and the weights' types (no MPI),
 * so `gptoss info --mesh` prints it anywhere; gpo_mesh_groups_open then makes
 * the rank groups the sharded forward pass talks over (dist.h).
 *
 * Ranks.  A job of N = TP * EP * DP ranks holds DP replicas of the model (data
 * parallel: each serves different users); the TP * EP ranks of one replica (its
 * "model group") each hold one shard.  Rank r is
 *     r = dp * (TP * EP) + ep * TP + tp,      model rank m = ep * TP + tp,
 * so the TP ranks, which meet after every attention block, are neighbours (the
 * same machine when ranks are placed in order).
 *
 * What rank (tp, ep) of a replica holds, and what the forward pass does with it:
 * - Attention, by KV-head group (tensor parallel): KV heads [kv_head0, kv_head1),
 *   hence query heads [head0, head1) (n_head / n_head_kv per KV head): the rows
 *   of wq/bq [q_row0, q_row1), of wk/bk and wv/bv [kv_row0, kv_row1), the sinks
 *   of its query heads, its KV cache for those heads only, and the columns
 *   [q_row0, q_row1) of the output projection wo (read once at load into a packed
 *   rows x (q_row1 - q_row0) copy when TP > 1, so its product is one kernel call).
 *   Each TP rank writes a partial wo product; the partials meet in one allreduce
 *   over the TP group (ranks with the same dp and ep); the bias bo is added once,
 *   after it.  The EP ranks of one TP slot compute the same heads.
 * - MoE, by expert range (expert parallel): experts [expert0, expert1).  Every
 *   rank routes every token (the router is replicated), runs only the selected
 *   experts it holds, and the partial weighted sums meet in one allreduce over
 *   the EP group (ranks with the same dp and tp).
 * - Vocabulary, by rows over the model group: rows [vocab0, vocab1) of the
 *   unembedding (its logits shard: top-k/top-p candidates go to the replica's
 *   rank 0, not whole logit rows) and of the embedding (a token's row comes from
 *   the one rank holding it, in an allreduce over the model group before layer
 *   0, so no rank keeps the whole embedding resident).
 * - Replicated on every rank: the norms, the router, bo, the final norm.
 *
 * The sharded forward pass (next): gpo_ctx_create takes the rank's shard and
 * groups; attention.c runs heads [head0, head1) against a KV cache of
 * kv_head1 - kv_head0 heads and the packed copy of wo's columns [q_row0, q_row1),
 * then gpo_dist_allreduce_sum(groups.tp, ...) over the token
 * batch's [T, n_embd] partials; moe.c walks experts [expert0, expert1) only,
 * then one allreduce over groups.ep.  Rank 0 of the model group broadcasts each
 * step's batch (ids, positions, sequence slots) before layer 0.  The resident
 * bytes of a rank (its mappings' pages in /proc/self/smaps) should match
 * bytes_total of its shard less bytes_packed (anonymous memory): page granularity
 * adds at most a page per row of wo and per tensor edge.
 */
#ifndef GPO_MESH_H
#define GPO_MESH_H

#include <stddef.h>
#include <stdint.h>

#include "dist.h"
#include "gpo.h"

/* Upper bound on ranks a plan handles (and meshes gpo_mesh_list returns). */
#define GPO_MESH_MAX_RANKS 4096

struct gpo_mesh {
    int tp, ep, dp; /* tensor-parallel, expert-parallel ranks per replica; replicas */
};

/* Weight bytes by unit, read from the model's tensor table (element types and
 * shapes) or assumed for a configuration alone; what resident bytes are made of. */
struct gpo_mesh_weights {
    uint64_t embedding_row;   /* one vocabulary row of the embedding */
    uint64_t unembedding_row; /* and of the unembedding */
    uint64_t final_norm;
    /* Per layer: replicated (attention and MLP norms, bo, router), one KV-head
     * group (its q/k/v rows and biases, sinks and wo columns), one expert (both
     * projections: blocks, scales, biases). */
    uint64_t layer_replicated[GPO_MAX_LAYERS];
    uint64_t layer_kv_head[GPO_MAX_LAYERS];
    uint64_t layer_expert[GPO_MAX_LAYERS];
    /* Of layer_kv_head: its wo columns, which a rank holding some of the heads
     * (TP > 1) also keeps as a packed copy. */
    uint64_t layer_wo_kv_head[GPO_MAX_LAYERS];
};

/* One rank's share.  Ranges are half-open [a0, a1). */
struct gpo_mesh_shard {
    int rank, tp_rank, ep_rank, dp_rank, model_rank;
    int64_t kv_head0, kv_head1, head0, head1;
    int64_t q_row0, q_row1, kv_row0, kv_row1; /* rows of wq; rows of wk and wv */
    int64_t expert0, expert1;
    int64_t vocab0, vocab1;
    /* Resident weight bytes: its attention heads, experts, vocabulary rows, the
     * replicated tensors, the packed copy of its wo columns (TP > 1: one kernel
     * call over rows instead of a strided view; anonymous memory, the mapped
     * columns it was read from stay counted in bytes_attention), and their total.
     * bytes_embedding is the embedding's part of bytes_vocab: a pass reads only
     * the rows of its tokens, so it becomes resident as tokens are seen. */
    uint64_t bytes_attention, bytes_experts, bytes_vocab, bytes_replicated, bytes_packed, bytes_total;
    uint64_t bytes_embedding;
};

/* Refuse a mesh that does not fit the model or the rank count: TP must divide
 * n_head_kv, EP n_expert, and TP * EP * DP equal n_ranks.  The message names the
 * rule broken and lists the valid meshes for n_ranks and this model. */
enum gpo_status gpo_mesh_validate(const struct gpo_config *c, const struct gpo_mesh *m, int n_ranks);
/* Every valid mesh for n_ranks (TP ascending, then EP), up to cap; the count of
 * all of them is returned. */
size_t gpo_mesh_list(const struct gpo_config *c, int n_ranks, struct gpo_mesh *out, size_t cap);
/* The default mesh for n_ranks: the largest model group (least memory per rank),
 * as much EP as possible within it (experts are most of the bytes and EP
 * duplicates no compute), the rest replicas.  Every n_ranks >= 1 has one
 * (1x1 with DP = n_ranks at worst). */
enum gpo_status gpo_mesh_default(const struct gpo_config *c, int n_ranks, struct gpo_mesh *out);
/* Parse "TPxEP" ("2x4"); fails naming the text. */
enum gpo_status gpo_mesh_parse(const char *s, struct gpo_mesh *out);

/* The weight units of a loaded model (its tensors as the forward pass reads
 * them, after any --dense q8 conversion), or of a configuration with the
 * official checkpoints' types: BF16 dense tensors, MXFP4 experts with BF16
 * biases. */
void gpo_mesh_weights_of_model(const gpo_model *model, struct gpo_mesh_weights *out);
void gpo_mesh_weights_of_config(const struct gpo_config *c, struct gpo_mesh_weights *out);
/* Bytes of every weight, each counted once. */
uint64_t gpo_mesh_weights_total(const struct gpo_config *c, const struct gpo_mesh_weights *w);

/* Rank `rank`'s share under a valid mesh (gpo_mesh_validate first). */
void gpo_mesh_shard_of(const struct gpo_config *c, const struct gpo_mesh *m,
                       const struct gpo_mesh_weights *w, int rank, struct gpo_mesh_shard *out);

/* The groups this rank talks over: its replica's model group, its TP group, its
 * EP group, and the DP group of the ranks holding the same shard in every
 * replica.  Collective over every rank of the job (gpo_dist_size() must equal
 * TP * EP * DP). */
struct gpo_mesh_groups {
    gpo_dist_comm *model, *tp, *ep, *dp;
};
enum gpo_status gpo_mesh_groups_open(const struct gpo_mesh *m, struct gpo_mesh_groups *out);
void gpo_mesh_groups_close(struct gpo_mesh_groups *g);

#endif
