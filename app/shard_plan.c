/* shard_plan.c - the mesh options of `logits` and `bench` and the plan they say
 * at load (who holds what, and the resident bytes each rank should reach). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "shard_plan.h"

const char shard_plan_help[] =
    "  --mesh TPxEP         under mpirun: tensor- times expert-parallel ranks per\n"
    "                       replica (default: the plan of `gptoss info --ranks N`)\n"
    "  --dp D               under mpirun: replicas (default: the ranks the mesh leaves)\n"
    "  --no-repack          read a GGUF model's experts in place, in the file's blocks,\n"
    "                       instead of repacking them at load\n";

int shard_plan_arg(const char *cmd, struct gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    if (cli_is(a, "--mesh")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (gpo_mesh_parse(v, &o->mesh) != GPO_OK) {
            cli_usage_error(cmd, "--mesh: %s", gpo_last_error());
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--no-repack")) {
        o->load.no_repack = 1;
        return 1;
    }
    if (cli_is(a, "--dp")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!cli_parse_i64(v, 1, GPO_MESH_MAX_RANKS, &o->dp)) {
            cli_usage_error(cmd, "--dp needs replicas from 1 to %d, not '%s'", GPO_MESH_MAX_RANKS, v);
            return -1;
        }
        return 1;
    }
    return 0;
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void shard_plan_print(const struct gen_dist *d, const gpo_model *m) {
    if (!d->open || gpo_dist_rank() != 0) return;
    const struct gpo_config *c = gpo_model_config(m);
    const int n = d->mesh.tp * d->mesh.ep * d->mesh.dp;
    for (int r = 0; r < n; r++) {
        struct gpo_mesh_shard s;
        gpo_mesh_shard_of(c, &d->mesh, &d->w, r, &s);
        fprintf(stderr,
                "gptoss: rank %d (%s): KV heads [%lld, %lld), experts [%lld, %lld), vocabulary "
                "[%lld, %lld): %.2f GiB of weights resident (packed wo: %.1f MiB)\n",
                r, gpo_dist_host_of(r), (long long)s.kv_head0, (long long)s.kv_head1,
                (long long)s.expert0, (long long)s.expert1, (long long)s.vocab0, (long long)s.vocab1,
                gib(s.bytes_total), (double)s.bytes_packed / (1024.0 * 1024.0));
    }
}
