/* shard_plan.h - the mesh options of commands that run the forward pass on every
 * rank (`logits`, `bench`) and the plan said at load. */
#ifndef GPO_SHARD_PLAN_H
#define GPO_SHARD_PLAN_H

#include "gen_common.h"

/* Try to consume argv[*i] as --mesh TPxEP, --dp D or --no-repack into o.  Returns 1 if
 * consumed, 0 if not one of them, -1 after printing a usage error. */
int shard_plan_arg(const char *cmd, struct gen_opts *o, int argc, char **argv, int *i);
/* The help lines of those options. */
extern const char shard_plan_help[];
/* On rank 0 of a multi-rank run: every rank's heads, experts, vocabulary rows and
 * resident weight bytes from the plan, to stderr. */
void shard_plan_print(const struct gen_dist *d, const gpo_model *m);

#endif
