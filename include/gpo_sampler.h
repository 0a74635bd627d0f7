/* gpo_sampler.h - (being written) */
