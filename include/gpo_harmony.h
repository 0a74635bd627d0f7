/* gpo_harmony.h - (being written) */
