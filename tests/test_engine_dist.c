/* test_engine_dist.c - the engine as the leader or a follower of a model group
 * (gpo_engine_opts.groups).  As one process (make test): an engine in a group of
 * one leads and runs as an engine alone, a leader refuses to follow and its end
 * is a no-op.  Under `mpirun -np 2` of the MPI build (tests/e2e_mpi_generate.sh):
 * rank 0 leads a scheduler whose KV pool is too small for its requests, so that
 * requests are preempted and recomputed, one is cancelled, a finished slot's
 * prefix is reused and a slot is reset; each rank runs its shard of every pass
 * (the default mesh of the ranks); rank 1 follows, checking after every
 * plan that its caches and free blocks match the leader's and at the end every
 * slot's length; rank 0's tokens equal those of an engine alone.  Sampled
 * requests give the same tokens from the shards' candidates as from whole rows,
 * and the pass's candidates are those of its whole rows (also in one process). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "gpo.h"
#include "test_common.h"
#include "forward.h"
#include "kvcache.h"
#include "mesh.h"

static struct tiny_env g_env; /* the model and the tokenizer */
static gpo_model *g_model;
static gpo_tokenizer *g_tok;

static int setup(void **state) {
    (void)state;
    if (tiny_env_open(&g_env, "engine_dist") != 0) return -1;
    g_model = g_env.model;
    g_tok = g_env.tok;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    return tiny_env_close(&g_env);
}

/* Options of every engine here; blocks > 0 sizes the pool. */
static struct gpo_engine_opts engine_opts(size_t n_slots, int64_t blocks,
                                          const struct gpo_mesh_shard *shard,
                                          const struct gpo_mesh_groups *groups) {
    struct gpo_engine_opts eo = {.max_seq_len = 256, .ubatch = 24, .n_threads = 1,
                                 .path = GPO_PATH_FAST, .shard = shard, .groups = groups};
    struct gpo_kv_plan pl;
    assert_int_equal(gpo_engine_kv_plan(g_model, &eo, n_slots, &pl), GPO_OK);
    if (blocks > 0) eo.kv_memory = (uint64_t)blocks * pl.block_bytes;
    return eo;
}

/* n ids that no other prompt here starts with. */
static void raw_prompt(int32_t first, size_t n, struct gpo_ids *out) {
    out->n = 0;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(gpo_ids_push(out, first + (int32_t)(i * 7)), GPO_OK);
}

static gpo_req *submit(gpo_engine *e, const struct gpo_ids *p, uint64_t seed, int64_t max_tokens) {
    struct gpo_request rq = {.prompt = p->ids, .n_prompt = p->n, .max_tokens = max_tokens};
    gpo_sampler_params_default(&rq.sampling);
    rq.sampling.temperature = 0.0f;
    rq.sampling.seed = seed;
    gpo_req *h = NULL;
    assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_OK);
    return h;
}

/* The greedy tokens of prompt p in an engine alone with room for everything. */
static void tokens_alone(const struct gpo_ids *p, int64_t max_tokens, struct gpo_ids *out) {
    struct gpo_engine_opts eo = engine_opts(1, 0, NULL, NULL);
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, 1, &e), GPO_OK);
    gpo_req *h = submit(e, p, 1, max_tokens);
    size_t left = 1;
    while (left > 0) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    const struct gpo_gen_user *o = gpo_req_output(h);
    out->n = 0;
    assert_int_equal(gpo_ids_append(out, o->generated.ids, o->generated.n), GPO_OK);
    gpo_engine_release(e, h);
    gpo_engine_free(e);
}

/* This rank's shard and groups in a mesh of the job's ranks. */
static void open_mesh(const struct gpo_mesh *mesh, struct gpo_mesh_shard *shard,
                      struct gpo_mesh_groups *g) {
    struct gpo_mesh_weights w;
    gpo_mesh_weights_of_model(g_model, &w);
    gpo_mesh_shard_of(gpo_model_config(g_model), mesh, &w, gpo_dist_rank(), shard);
    assert_int_equal(gpo_mesh_groups_open(mesh, g), GPO_OK);
}

/* Every rank of the job as one model: this rank's shard and groups. */
static void open_groups(struct gpo_mesh_shard *shard, struct gpo_mesh_groups *g) {
    struct gpo_mesh mesh;
    assert_int_equal(gpo_mesh_default(gpo_model_config(g_model), gpo_dist_size(), &mesh), GPO_OK);
    assert_int_equal(mesh.dp, 1);
    open_mesh(&mesh, shard, g);
}

/* (1) In a group of one an engine leads, runs as an engine alone (same tokens),
 * refuses to follow, and its end is a no-op. */
static void test_group_of_one_leads(void **state) {
    (void)state;
    if (gpo_dist_size() != 1) skip();
    struct gpo_mesh_shard shard;
    struct gpo_mesh_groups g;
    open_groups(&shard, &g);
    struct gpo_ids p = {0}, alone = {0};
    raw_prompt(1000, 20, &p);
    tokens_alone(&p, 12, &alone);
    struct gpo_engine_opts eo = engine_opts(1, 0, &shard, &g);
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, 1, &e), GPO_OK);
    assert_int_equal(gpo_engine_is_leader(e), 1);
    assert_int_equal(gpo_engine_follow(e), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "leads or runs alone"));
    gpo_req *h = submit(e, &p, 1, 12);
    size_t left = 1;
    while (left > 0) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    const struct gpo_gen_user *o = gpo_req_output(h);
    assert_int_equal(o->generated.n, alone.n);
    assert_memory_equal(o->generated.ids, alone.ids, alone.n * sizeof(int32_t));
    assert_int_equal(gpo_engine_stop_followers(e), GPO_OK);
    gpo_engine_release(e, h);
    gpo_engine_free(e);
    gpo_mesh_groups_close(&g);
    gpo_ids_free(&p);
    gpo_ids_free(&alone);
}

enum { N_REQ = 3, MAX_TOKENS = 30 };

/* The leader's load: three requests on two slots and a pool of 6 blocks of 16
 * positions (each needs 3 to 4), so they queue and preempt each other; the
 * second is cancelled after a few steps; then the first prompt comes again
 * (its cached prefix is reused) and slot 1 is reset. */
static void lead(gpo_engine *e, const struct gpo_ids *p, const struct gpo_ids *alone) {
    gpo_req *h[N_REQ];
    for (int i = 0; i < N_REQ; i++) h[i] = submit(e, &p[i], 1, MAX_TOKENS);
    size_t left = 1;
    int preempted = 0;
    for (int step = 0; left > 0; step++) {
        if (step == 6) gpo_engine_cancel(e, h[1]);
        enum gpo_req_state before[N_REQ];
        for (int i = 0; i < N_REQ; i++) before[i] = gpo_req_state(h[i]);
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        for (int i = 0; i < N_REQ; i++)
            preempted += before[i] == GPO_REQ_DECODE && gpo_req_state(h[i]) == GPO_REQ_QUEUED;
    }
    assert_true(preempted > 0);
    assert_int_equal(gpo_req_output(h[1])->aborted, 1);
    for (int i = 0; i < N_REQ; i += 2) {
        const struct gpo_gen_user *o = gpo_req_output(h[i]);
        assert_int_equal(o->generated.n, alone[i].n);
        assert_memory_equal(o->generated.ids, alone[i].ids, alone[i].n * sizeof(int32_t));
    }
    gpo_req *again = submit(e, &p[0], 1, 4);
    while (gpo_req_state(again) != GPO_REQ_DONE)
        assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
    assert_int_equal(gpo_req_output(again)->error, GPO_OK);
    gpo_engine_reset_slot(e, 1);
    gpo_engine_release(e, again);
    for (int i = 0; i < N_REQ; i++) gpo_engine_release(e, h[i]);
    /* The end carries every slot's length for the followers' last check. */
    assert_int_equal(gpo_engine_stop_followers(e), GPO_OK);
}

/* (2) Leader and followers in lockstep through preemption, cancellation,
 * prefix reuse and a reset (two or more ranks). */
static void test_followers_in_lockstep(void **state) {
    (void)state;
    if (gpo_dist_size() < 2) skip();
    struct gpo_mesh_shard shard;
    struct gpo_mesh_groups g;
    open_groups(&shard, &g);
    struct gpo_ids p[N_REQ] = {{0}}, alone[N_REQ] = {{0}};
    for (int i = 0; i < N_REQ; i++) raw_prompt(1000 + 3000 * i, 20 + 5 * (size_t)i, &p[i]);
    if (gpo_dist_rank() == 0)
        for (int i = 0; i < N_REQ; i++) tokens_alone(&p[i], MAX_TOKENS, &alone[i]);
    struct gpo_engine_opts eo = engine_opts(2, 6, &shard, &g);
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, 2, &e), GPO_OK);
    assert_int_equal(gpo_engine_is_leader(e), gpo_dist_rank() == 0);
    if (gpo_dist_rank() == 0) {
        lead(e, p, alone);
    } else {
        enum gpo_status s = gpo_engine_follow(e);
        if (s != GPO_OK) fail_msg("rank %d: %s", gpo_dist_rank(), gpo_last_error());
        /* A follower takes no requests of its own. */
        struct gpo_request rq = {.prompt = p[0].ids, .n_prompt = p[0].n};
        gpo_req *h = NULL;
        assert_int_equal(gpo_engine_submit(e, &rq, &h), GPO_ERR_ARG);
        assert_non_null(strstr(gpo_last_error(), "follower"));
    }
    gpo_engine_free(e);
    gpo_mesh_groups_close(&g);
    for (int i = 0; i < N_REQ; i++) {
        gpo_ids_free(&p[i]);
        gpo_ids_free(&alone[i]);
    }
}

/* (3) Sampled requests (seeded top-k with temperature, top-p and min-p, and a
 * greedy one) decoding together, on every mesh of the job's ranks (replicas
 * too): each replica's leader samples from the candidates its shards send, and
 * the tokens equal those of the same requests sampled from whole rows (asking for
 * log-probabilities makes the engine gather rows), for a small fraction of the
 * bytes.  (Sharded sums round differently from the whole model's, so the
 * whole-row run of the same mesh is the reference, not an engine alone.) */
enum { N_SAMPLED = 3, SAMPLED_TOKENS = 16 };

static void sampled_params(int i, struct gpo_sampler_params *sp) {
    gpo_sampler_params_default(sp);
    sp->seed = 11 + (uint64_t)i;
    if (i == 0) sp->top_k = 40;
    if (i == 1) {
        sp->temperature = 0.7f;
        sp->top_k = 5;
        sp->top_p = 0.9f;
        sp->min_p = 0.05f;
    }
    if (i == 2) sp->temperature = 0.0f;
}

/* One engine's run of the sampled requests on every rank of the mesh; on a
 * replica's leader their tokens go to out and the bytes it sent to *sent.
 * Returns whether this rank leads a model group of several ranks. */
static int run_sampled(const struct gpo_mesh *mesh, const struct gpo_ids *p, int whole_rows,
                       struct gpo_ids *out, uint64_t *sent) {
    struct gpo_mesh_shard shard;
    struct gpo_mesh_groups g;
    open_mesh(mesh, &shard, &g);
    const int lead = gpo_dist_comm_rank(g.model) == 0,
              sharded = gpo_dist_comm_size(g.model) > 1;
    struct gpo_engine_opts eo = engine_opts(N_SAMPLED, 0, &shard, &g);
    gpo_engine *e = NULL;
    assert_int_equal(gpo_engine_create(g_model, g_tok, &eo, N_SAMPLED, &e), GPO_OK);
    if (lead) {
        struct gpo_dist_stats st0, st1;
        gpo_dist_get_stats(&st0);
        gpo_req *h[N_SAMPLED];
        for (int i = 0; i < N_SAMPLED; i++) {
            struct gpo_request rq = {.prompt = p[i].ids, .n_prompt = p[i].n,
                                     .max_tokens = SAMPLED_TOKENS, .logprobs = whole_rows};
            sampled_params(i, &rq.sampling);
            assert_int_equal(gpo_engine_submit(e, &rq, &h[i]), GPO_OK);
        }
        size_t left = 1;
        while (left > 0) assert_int_equal(gpo_engine_step(e, &left), GPO_OK);
        gpo_dist_get_stats(&st1);
        *sent = st1.bytes_sent - st0.bytes_sent;
        for (int i = 0; i < N_SAMPLED; i++) {
            const struct gpo_gen_user *o = gpo_req_output(h[i]);
            assert_int_equal(o->error, GPO_OK);
            out[i].n = 0;
            assert_int_equal(gpo_ids_append(&out[i], o->generated.ids, o->generated.n), GPO_OK);
            gpo_engine_release(e, h[i]);
        }
        assert_int_equal(gpo_engine_stop_followers(e), GPO_OK);
    } else {
        enum gpo_status s = gpo_engine_follow(e);
        if (s != GPO_OK) fail_msg("rank %d: %s", gpo_dist_rank(), gpo_last_error());
    }
    gpo_engine_free(e);
    gpo_mesh_groups_close(&g);
    return lead && sharded;
}

static void test_candidates_sample_as_rows(void **state) {
    (void)state;
    if (gpo_dist_size() < 2) skip();
    struct gpo_mesh meshes[16];
    size_t n_mesh = gpo_mesh_list(gpo_model_config(g_model), gpo_dist_size(), meshes, 16);
    assert_true(n_mesh >= 2 && n_mesh <= 16);
    struct gpo_ids p[N_SAMPLED] = {{0}}, cand[N_SAMPLED] = {{0}}, rows[N_SAMPLED] = {{0}};
    for (int i = 0; i < N_SAMPLED; i++) raw_prompt(500 + 2000 * i, 9 + 4 * (size_t)i, &p[i]);
    for (size_t mi = 0; mi < n_mesh; mi++) {
        uint64_t sent_cand = 0, sent_rows = 0;
        run_sampled(&meshes[mi], p, 0, cand, &sent_cand);
        int leads = run_sampled(&meshes[mi], p, 1, rows, &sent_rows);
        if (gpo_dist_rank() == 0)
            printf("mesh %dx%d DP %d: rank 0 sent %llu bytes sampling from candidates, %llu "
                   "from whole rows\n", meshes[mi].tp, meshes[mi].ep, meshes[mi].dp,
                   (unsigned long long)sent_cand, (unsigned long long)sent_rows);
        if (!leads) continue;
        for (int i = 0; i < N_SAMPLED; i++) {
            assert_int_equal(cand[i].n, SAMPLED_TOKENS);
            assert_int_equal(cand[i].n, rows[i].n);
            assert_memory_equal(cand[i].ids, rows[i].ids, rows[i].n * sizeof(int32_t));
        }
        /* Whole rows send the leader's columns of the vocabulary every step. */
        assert_true(sent_cand * 10 < sent_rows);
    }
    for (int i = 0; i < N_SAMPLED; i++) {
        gpo_ids_free(&p[i]);
        gpo_ids_free(&cand[i]);
        gpo_ids_free(&rows[i]);
    }
}

/* (4) The forward pass's candidates, on every mesh of the job's ranks (1x1 as
 * one process): rows asking for k candidates give the leader of each model group
 * gpo_cand_select's answer on the whole rows of the same mesh (the harmony mask
 * banned), rows asking for none stay whole, and k above GPO_CAND_MAX is refused. */
enum { N_FWD = 4 };

static void forward_rows(gpo_ctx *ctx, const struct gpo_mesh_shard *shard, const struct gpo_ids *p,
                         float *lg, const struct gpo_fwd_cands *fc, enum gpo_status want) {
    gpo_kv *kv[N_FWD];
    struct gpo_seq_batch b[N_FWD];
    for (int i = 0; i < N_FWD; i++) {
        assert_int_equal(gpo_kv_create_shard(g_model, shard, 64, 0, &kv[i]), GPO_OK);
        b[i] = (struct gpo_seq_batch){kv[i], p[i].ids, (int64_t)p[i].n, GPO_LOGITS_LAST};
    }
    assert_int_equal(gpo_forward_cands(ctx, b, N_FWD, lg, fc), want);
    for (int i = 0; i < N_FWD; i++) gpo_kv_free(kv[i]);
}

static void test_forward_candidates(void **state) {
    (void)state;
    const int64_t V = gpo_model_config(g_model)->n_vocab;
    struct gpo_mesh meshes[16];
    size_t n_mesh = gpo_mesh_list(gpo_model_config(g_model), gpo_dist_size(), meshes, 16);
    assert_true(n_mesh >= 1 && n_mesh <= 16);
    struct gpo_ids p[N_FWD] = {{0}};
    for (int i = 0; i < N_FWD; i++) raw_prompt(300 + 1500 * i, 5 + 3 * (size_t)i, &p[i]);
    float *whole = malloc(N_FWD * (size_t)V * sizeof *whole);
    float *lg = malloc(N_FWD * (size_t)V * sizeof *lg);
    uint8_t *ban = malloc((size_t)V);
    struct gpo_cand *c = malloc(N_FWD * GPO_CAND_MAX * sizeof *c), want[GPO_CAND_MAX];
    assert_true(whole && lg && ban && c);
    gpo_sampler_harmony_mask(ban, V, 0);
    int32_t k[N_FWD] = {1, 40, 0, GPO_CAND_MAX}, n[N_FWD];
    int64_t nf[N_FWD];
    const struct gpo_fwd_cands fc = {k, ban, c, n, nf};
    for (size_t mi = 0; mi < n_mesh; mi++) {
        struct gpo_mesh_shard shard;
        struct gpo_mesh_groups g;
        open_mesh(&meshes[mi], &shard, &g);
        gpo_ctx *ctx = NULL;
        struct gpo_ctx_opts o = {.max_tokens = 64, .max_seqs = N_FWD, .n_threads = 1,
                                 .path = GPO_PATH_FAST, .shard = &shard, .groups = &g};
        assert_int_equal(gpo_ctx_create(g_model, &o, &ctx), GPO_OK);
        forward_rows(ctx, &shard, p, whole, NULL, GPO_OK);
        forward_rows(ctx, &shard, p, lg, &fc, GPO_OK);
        if (gpo_dist_comm_rank(g.model) == 0)
            for (int t = 0; t < N_FWD; t++) {
                if (k[t] == 0) {
                    assert_memory_equal(lg + t * V, whole + t * V, (size_t)V * sizeof *lg);
                    continue;
                }
                int64_t nf_want;
                int64_t m = gpo_cand_select(whole + t * V, V, 0, ban, k[t], want, &nf_want);
                assert_int_equal(m, k[t]);
                assert_int_equal(n[t], m);
                assert_int_equal(nf[t], nf_want);
                assert_memory_equal(c + t * GPO_CAND_MAX, want, (size_t)m * sizeof *want);
            }
        k[1] = GPO_CAND_MAX + 1;
        forward_rows(ctx, &shard, p, lg, &fc, GPO_ERR_ARG);
        assert_non_null(strstr(gpo_last_error(), "row 1 asks for 257 sampling candidates"));
        k[1] = 40;
        gpo_ctx_free(ctx);
        gpo_mesh_groups_close(&g);
    }
    for (int i = 0; i < N_FWD; i++) gpo_ids_free(&p[i]);
    free(whole);
    free(lg);
    free(ban);
    free(c);
}

int main(int argc, char **argv) {
    if (gpo_dist_init(&argc, &argv) != GPO_OK) {
        fprintf(stderr, "%s\n", gpo_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_of_one_leads),
        cmocka_unit_test(test_followers_in_lockstep),
        cmocka_unit_test(test_candidates_sample_as_rows),
        cmocka_unit_test(test_forward_candidates),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    gpo_dist_finalize();
    return rc;
}
