/* prompts.h - the prompts file of `gptoss generate --prompts FILE`: a JSON list
 * of objects with a string "prompt", e.g. [{"prompt": "Why is the sky blue?"}]. */
#ifndef GPO_PROMPTS_H
#define GPO_PROMPTS_H

#include <stddef.h>

struct prompt_list {
    char **items; /* NUL-terminated UTF-8 prompts, owned */
    size_t n;
};

/* Parse txt[0..len).  Returns 0 and fills *out, or -1 with a message naming the
 * entry and what is wrong in err (nothing to free then).  Entries must be
 * non-empty, valid UTF-8 strings. */
int prompts_parse(const char *txt, size_t len, struct prompt_list *out, char *err, size_t errlen);
void prompts_free(struct prompt_list *l);

#endif
