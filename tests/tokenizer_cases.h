/* tokenizer_cases.h - the tokenizer golden cases for the cmocka suites: one JSON
 * object a line, {"text": ..., "ids": [...]}, read with a decoder of its own so
 * texts with embedded NULs survive.  Include after <cmocka.h> and test_common.h. */
#ifndef GPO_TOKENIZER_CASES_H
#define GPO_TOKENIZER_CASES_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t put_utf8(uint32_t c, char *o) {
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xc0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        o[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3f));
    o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* Decode the JSON string literal at p (at its quote) into out, keeping embedded NULs,
 * which cJSON's NUL-terminated valuestring cannot carry.  Returns the byte count. */
static size_t json_string(const char *p, char *out) {
    assert_int_equal(*p, '"');
    size_t n = 0;
    for (p++; *p != '"'; p++) {
        assert_true(*p != 0);
        if (*p != '\\') {
            out[n++] = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'u': {
            unsigned c, c2;
            assert_int_equal(sscanf(p + 1, "%4x", &c), 1);
            p += 4;
            if (c >= 0xd800 && c < 0xdc00) {
                assert_true(p[1] == '\\' && p[2] == 'u');
                assert_int_equal(sscanf(p + 3, "%4x", &c2), 1);
                p += 6;
                c = 0x10000 + ((c - 0xd800) << 10) + (c2 - 0xdc00);
            }
            n += put_utf8(c, out + n);
            break;
        }
        default: out[n++] = *p; break; /* \" \\ \/ */
        }
    }
    return n;
}

struct gcase {
    char *text;
    size_t len;
    int32_t *ids;
    size_t n_ids;
    int line;
};

/* Read a goldens file: every line is {"text": ..., "ids": [...], ...}. */
static struct gcase *load_cases(const char *path, size_t *count) {
    char *buf = read_all(path, NULL);
    assert_non_null(buf);
    size_t cap = 1024, n = 0;
    struct gcase *cs = calloc(cap, sizeof *cs);
    int line = 0;
    for (char *s = buf; *s;) {
        char *e = strchr(s, '\n');
        if (e) *e = 0;
        line++;
        if (*s) {
            assert_true(n < cap);
            cJSON *j = cJSON_Parse(s);
            assert_non_null(j);
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
            assert_true(cJSON_IsString(text) && cJSON_IsArray(ids));
            const char *lit = strstr(s, "\"text\": \"");
            assert_non_null(lit);
            struct gcase *c = &cs[n++];
            c->text = malloc(strlen(s) + 1);
            c->len = json_string(lit + 8, c->text);
            /* Without embedded NULs the hand decoder must agree with cJSON. */
            if (memchr(c->text, 0, c->len) == NULL) {
                assert_int_equal(c->len, strlen(text->valuestring));
                assert_memory_equal(c->text, text->valuestring, c->len);
            }
            c->n_ids = (size_t)cJSON_GetArraySize(ids);
            c->ids = malloc((c->n_ids + 1) * sizeof *c->ids);
            size_t k = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, ids) c->ids[k++] = (int32_t)it->valueint;
            c->line = line;
            cJSON_Delete(j);
        }
        if (!e) break;
        s = e + 1;
    }
    free(buf);
    *count = n;
    return cs;
}

static void free_cases(struct gcase *cs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(cs[i].text);
        free(cs[i].ids);
    }
    free(cs);
}

#endif
