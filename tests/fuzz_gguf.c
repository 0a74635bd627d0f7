/* fuzz_gguf.c - libFuzzer target for the GGUF reader (`make fuzz`).  Any input
 * must either be refused with a status and a message, or yield KVs and tensors
 * that lie wholly inside the input: every typed lookup is tried on every key,
 * every string array is walked, and each tensor's size is recomputed from its
 * type and shape and its first and last byte touched, so the address sanitizer
 * catches a view that strays.  The same bytes also go through the file path
 * (a memory file), which maps them and applies the split-set rules. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "gguf.h"
#include "gguf_meta.h"
#include "util.h"

static volatile uint8_t sink;

static void touch(const void *p, uint64_t n) {
    if (n == 0) return;
    sink ^= ((const uint8_t *)p)[0];
    sink ^= ((const uint8_t *)p)[n - 1];
}

static void check_kvs(const struct gpo_gguf *g, const uint8_t *data, size_t size) {
    for (size_t i = 0; i < g->n_kv; i++) {
        const struct gpo_gguf_kv *kv = &g->kv[i];
        if (kv->data < data || kv->nbytes > size || kv->data + kv->nbytes > data + size)
            __builtin_trap();
        touch(kv->key.s, kv->key.len);
        char key[128];
        if (kv->key.len >= sizeof key || memchr(kv->key.s, 0, kv->key.len)) continue;
        memcpy(key, kv->key.s, kv->key.len);
        key[kv->key.len] = 0;
        if (gpo_gguf_find_kv(g, key) != kv) __builtin_trap();
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f;
        double d;
        int b;
        struct gpo_gguf_str s;
        struct gpo_gguf_arr a;
        (void)gpo_gguf_get_u32(g, key, &u32);
        (void)gpo_gguf_get_i32(g, key, &i32);
        (void)gpo_gguf_get_u64(g, key, &u64);
        (void)gpo_gguf_get_i64(g, key, &i64);
        (void)gpo_gguf_get_f32(g, key, &f);
        (void)gpo_gguf_get_f64(g, key, &d);
        (void)gpo_gguf_get_bool(g, key, &b);
        if (gpo_gguf_get_str(g, key, &s) == GPO_OK) touch(s.s, s.len);
        if (gpo_gguf_get_arr(g, key, GPO_GGUF_TYPE_COUNT_, &a) == GPO_OK) {
            touch(a.data, a.nbytes);
            if (a.elem_type == GPO_GGUF_STRING) {
                struct gpo_gguf_str_iter it;
                uint64_t n = 0;
                gpo_gguf_str_iter_init(&it, &a);
                while (gpo_gguf_str_next(&it, &s)) {
                    touch(s.s, s.len);
                    n++;
                }
                if (n != a.n) __builtin_trap();
            } else if (a.n > 0) {
                (void)gpo_gguf_arr_i64(&a, a.n - 1, &i64);
            }
        }
    }
}

static void check_tensors(const struct gpo_gguf *g, const uint8_t *data, size_t size) {
    for (size_t i = 0; i < g->n_tensors; i++) {
        const struct gpo_gguf_tensor *t = &g->tensors[i];
        uint64_t want;
        if (gpo_ggml_nbytes(t->type, t->n_dims, t->ne, &want) != 0 || want != t->nbytes)
            __builtin_trap();
        if (t->offset > size || t->nbytes > size - t->offset || t->data != data + t->offset)
            __builtin_trap();
        if (gpo_gguf_find(g, t->name) != t) __builtin_trap();
        touch(t->data, t->nbytes);
    }
}

/* The metadata readers on whatever the container accepted: each either fills
 * its output or fails with a message. */
static void check_meta(const struct gpo_gguf *g) {
    struct gpo_config cfg;
    gpo_clear_error();
    if (gpo_gguf_read_config(g, &cfg) == GPO_OK) {
        gpo_gguf_check_shapes(g, &cfg);
    } else if (gpo_last_error()[0] == 0) {
        __builtin_trap();
    }
    if (gpo_gguf_has_tokenizer(g)) {
        gpo_tokenizer *t = NULL;
        gpo_clear_error();
        if (gpo_gguf_read_tokenizer(g, &t) == GPO_OK) {
            if (!t) __builtin_trap();
            gpo_tokenizer_free(t);
        } else if (t || gpo_last_error()[0] == 0) {
            __builtin_trap();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static struct fuzz_memfile mf;
    if (mf.path[0] == 0) fuzz_memfile_open(&mf, "fuzz.gguf");
    struct gpo_gguf g;
    gpo_clear_error();
    enum gpo_status s = gpo_gguf_open_mem(&g, data, size, "fuzz");
    if (s != GPO_OK) {
        if (g.files != NULL || gpo_last_error()[0] == 0) __builtin_trap();
    } else {
        check_kvs(&g, data, size);
        check_tensors(&g, data, size);
        check_meta(&g);
        gpo_gguf_close(&g);
    }
    fuzz_memfile_write(&mf, data, size);
    gpo_clear_error();
    s = gpo_gguf_open(&g, mf.path);
    if (s != GPO_OK) {
        if (g.files != NULL || gpo_last_error()[0] == 0) __builtin_trap();
    } else {
        gpo_gguf_close(&g);
    }
    return 0;
}
