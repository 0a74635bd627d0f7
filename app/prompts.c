/* prompts.c - parses the prompts file of `gptoss generate --prompts`. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpo.h"
#include "prompts.h"

void prompts_free(struct prompt_list *l) {
    for (size_t i = 0; l->items && i < l->n; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

int prompts_parse(const char *txt, size_t len, struct prompt_list *out, char *err, size_t errlen) {
    *out = (struct prompt_list){0};
    cJSON *root = cJSON_ParseWithLength(txt, len);
    if (!root || !cJSON_IsArray(root)) {
        cJSON_Delete(root);
        snprintf(err, errlen, "expected a JSON list like [{\"prompt\": \"...\"}, ...]");
        return -1;
    }
    size_t n = (size_t)cJSON_GetArraySize(root), i = 0;
    out->items = calloc(n ? n : 1, sizeof *out->items);
    if (!out->items) {
        cJSON_Delete(root);
        snprintf(err, errlen, "out of memory for %zu prompts", n);
        return -1;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "prompt");
        const char *why = NULL;
        if (!cJSON_IsObject(e) || !cJSON_IsString(p))
            why = "is not an object with a string \"prompt\"";
        else if (!p->valuestring[0])
            why = "has an empty \"prompt\"";
        else if (!gpo_utf8_valid(p->valuestring, strlen(p->valuestring)))
            why = "has a \"prompt\" that is not valid UTF-8";
        if (why) {
            snprintf(err, errlen, "entry %zu %s", i, why);
            goto fail;
        }
        if (!(out->items[i] = strdup(p->valuestring))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        out->n = ++i;
    }
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    prompts_free(out);
    return -1;
}
