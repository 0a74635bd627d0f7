/* gguf.h - the GGUF container (llama.cpp / ggml): a bounds-checked reader that
 * trusts nothing in the file and maps it read-only, split sets
 * (NAME-00001-of-00003.gguf ...) joined into one tensor table, and a streaming
 * writer.  Internal to the library.
 *
 * Layout (little-endian): "GGUF", u32 version (2 or 3), u64 tensor count, u64 KV
 * count; KV pairs (gguf string key, u32 value type, value); tensor infos (gguf
 * string name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64
 * offset relative to the data section); padding to general.alignment (default
 * 32); the data section.  A gguf string is a u64 length then that many bytes,
 * not NUL-terminated.
 *
 * Typical use by a model loader:
 *     struct gpo_gguf g = {0};
 *     GPO_TRY(gpo_gguf_open(&g, path));              // first part of a split set too
 *     struct gpo_gguf_str arch;
 *     gpo_gguf_get_str(&g, "general.architecture", &arch);
 *     uint32_t n_layer;
 *     gpo_gguf_get_u32(&g, "gpt-oss.block_count", &n_layer);
 *     const struct gpo_gguf_tensor *t = gpo_gguf_find(&g, "blk.0.attn_q.weight");
 *     // t->data points into the mapping; t->type, t->ne[], t->nbytes describe it
 *     gpo_gguf_close(&g);
 * Everything returned (strings, array data, tensor data) points into the
 * mappings and stays valid until gpo_gguf_close. */
#ifndef GPO_GGUF_H
#define GPO_GGUF_H

#include <stdint.h>
#include <stdio.h>

#include "gpo.h"
#include "kernels/kernels.h"

#define GPO_GGUF_MAX_DIMS 4
/* ggml's GGML_MAX_NAME is 64 bytes including the NUL: llama.cpp refuses longer names. */
#define GPO_GGUF_MAX_NAME 63
#define GPO_GGUF_DEFAULT_ALIGNMENT 32
/* gguf-split writes split.count as a u16. */
#define GPO_GGUF_MAX_SPLITS 65535

/* KV value types, numbered as in the file. */
enum gpo_gguf_type {
    GPO_GGUF_U8 = 0,
    GPO_GGUF_I8 = 1,
    GPO_GGUF_U16 = 2,
    GPO_GGUF_I16 = 3,
    GPO_GGUF_U32 = 4,
    GPO_GGUF_I32 = 5,
    GPO_GGUF_F32 = 6,
    GPO_GGUF_BOOL = 7,
    GPO_GGUF_STRING = 8,
    GPO_GGUF_ARRAY = 9,
    GPO_GGUF_U64 = 10,
    GPO_GGUF_I64 = 11,
    GPO_GGUF_F64 = 12,
    GPO_GGUF_TYPE_COUNT_
};

/* The ggml tensor types this code names; any type of the table in gguf.c (the
 * other common quantised ones too) is read and sized, the rest are refused. */
enum gpo_ggml_type {
    GPO_GGML_F32 = 0,
    GPO_GGML_F16 = 1,
    GPO_GGML_Q4_0 = 2,
    GPO_GGML_Q8_0 = 8,
    GPO_GGML_I8 = 24,
    GPO_GGML_I16 = 25,
    GPO_GGML_I32 = 26,
    GPO_GGML_I64 = 27,
    GPO_GGML_F64 = 28,
    GPO_GGML_BF16 = 30,
    GPO_GGML_MXFP4 = 39, /* blocks of 32: one E8M0 byte, then 16 bytes (spec 3.5) */
};

/* "U32", "STRING", ...; "?" for an unknown type. */
const char *gpo_gguf_type_name(uint32_t type);
/* Bytes of one scalar of a KV type (0 for STRING, ARRAY and unknown types). */
size_t gpo_gguf_type_size(uint32_t type);

/* "F32", "Q8_0", "MXFP4", ...; NULL for a type the table does not know. */
const char *gpo_ggml_type_name(uint32_t type);
/* Elements per block and bytes per block of a ggml type; 0 if unknown. */
int gpo_ggml_type_info(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);
/* Bytes of a tensor of type with ne[0..n_dims) (n_dims 0..4), overflow-checked:
 * 0 on success, -1 for an unknown type, -2 if ne[0] is not a multiple of the block
 * size, -3 for a negative dimension, -4 on overflow (more than INT64_MAX bytes). */
int gpo_ggml_nbytes(uint32_t type, int n_dims, const int64_t *ne, uint64_t *out);
/* The engine dtype with the same storage (F32, F16, BF16, Q8_0 as struct
 * gpo_q8_0_block rows, I8..I64, F64); 0 for types it has none for (MXFP4 etc.). */
int gpo_ggml_to_dtype(uint32_t type, enum gpo_dtype *out);

/* A string inside the mapping: len bytes at s, not NUL-terminated. */
struct gpo_gguf_str {
    const char *s;
    uint64_t len;
};

/* One KV pair.  For a scalar, data points at its little-endian value (for a
 * STRING at the u64 length that starts it) and n is 1.  For an ARRAY, elem_type
 * is the element type, n the element count and data points at the first element
 * (for strings: at the first element's u64 length).  nbytes counts the bytes
 * from data to the end of the value. */
struct gpo_gguf_kv {
    struct gpo_gguf_str key;
    uint32_t type;
    uint32_t elem_type;
    uint64_t n;
    const uint8_t *data;
    uint64_t nbytes;
    uint64_t offset; /* byte offset of the key in its file, for messages */
};

struct gpo_gguf_tensor {
    char name[GPO_GGUF_MAX_NAME + 1];
    uint32_t type;                 /* ggml type, as stored: read it, never assume it */
    int n_dims;                    /* 0..4 */
    int64_t ne[GPO_GGUF_MAX_DIMS]; /* innermost first; 1 past n_dims */
    uint64_t nbytes;
    uint64_t offset;               /* absolute byte offset of the data in its file */
    const uint8_t *data;           /* points into the file's mapping */
    int file;                      /* split part (index into gpo_gguf.files) */
};

/* One parsed file: its KVs and tensors, pointing into buf. */
struct gpo_gguf_file {
    char *path;
    const uint8_t *map;
    uint64_t size;
    int mapped;          /* map is ours to munmap */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start; /* absolute offset of the data section */
    struct gpo_gguf_kv *kv;
    size_t n_kv;
    struct gpo_gguf_tensor *tensors;
    size_t n_tensors;
};

struct gpo_gguf {
    struct gpo_gguf_file *files; /* files[0] is the one opened; more for a split set */
    int n_files;
    /* The KVs of files[0] (a split set keeps its metadata in the first part). */
    const struct gpo_gguf_kv *kv;
    size_t n_kv;
    /* Every tensor of every part, in file order. */
    struct gpo_gguf_tensor *tensors;
    size_t n_tensors;
    struct gpo_gguf_strset {
        struct gpo_gguf_slot {
            const char *s;
            uint64_t len;
            int64_t idx;
        } *slot;
        size_t cap, n;
    } tensor_index, kv_index;
};

/* Parse and validate a whole GGUF file held in buf[0..size) into *out (which
 * borrows buf: out->map = buf, out->mapped = 0).  `label` names the file in
 * messages.  Checks: magic; version 2 or 3 (1 and big-endian files refused);
 * counts bounded by the bytes left; every string, array and value inside the
 * file; value types known; arrays of arrays refused; bools 0 or 1; no duplicate
 * keys; general.alignment a u32 power of two; per tensor: a name of 1..63 bytes
 * with no NUL, n_dims <= 4, ne >= 0, a known ggml type, ne[0] a multiple of its
 * block, the size overflow-free, the offset aligned, the data inside the file;
 * no duplicate names; no two tensors' data overlapping.  (Tensors may lie in any
 * order with gaps, as long as they are aligned and apart; llama.cpp itself wants
 * them packed in order, which is what the writer below produces.)  Every message
 * names the key, tensor or byte offset.  Free with gpo_gguf_file_free. */
enum gpo_status gpo_gguf_parse(const uint8_t *buf, uint64_t size, const char *label,
                               struct gpo_gguf_file *out);
void gpo_gguf_file_free(struct gpo_gguf_file *f);

/* Map `path` read-only and parse it.  When it holds split.count > 1 it must be
 * part 1 (split.no = 0) named PREFIX-00001-of-NNNNN.gguf; the other parts are
 * opened by the same rule (PREFIX-0000K-of-NNNNN.gguf), each must carry the same
 * split.count and its own split.no, the parts' tensor counts must add up to
 * split.tensors.count, and a name may appear in one part only.  GPO_ERR_NOT_FOUND
 * for a missing file or part.  g must start zeroed; on failure it is left closed. */
enum gpo_status gpo_gguf_open(struct gpo_gguf *g, const char *path);
/* Build a one-file gpo_gguf over a buffer already in memory (not copied, not
 * freed by close); no split handling.  For tests and fuzzing. */
enum gpo_status gpo_gguf_open_mem(struct gpo_gguf *g, const uint8_t *buf, uint64_t size,
                                  const char *label);
/* Unmap everything and free; g is zeroed. */
void gpo_gguf_close(struct gpo_gguf *g);

/* 1 if path is a regular file that starts with the GGUF magic (sets no error). */
int gpo_gguf_sniff(const char *path);
/* The model file of a folder: its one *.gguf file, or the first part
 * (-00001-of-NNNNN.gguf) of its one split set (later parts are not counted).
 * GPO_ERR_NOT_FOUND if there is none, GPO_ERR_ARG (naming two) if several. */
enum gpo_status gpo_gguf_find_file(const char *dir, char *out, size_t out_size);

const struct gpo_gguf_tensor *gpo_gguf_find(const struct gpo_gguf *g, const char *name);
const struct gpo_gguf_kv *gpo_gguf_find_kv(const struct gpo_gguf *g, const char *key);

/* Typed lookups.  GPO_ERR_NOT_FOUND if the key is absent; GPO_ERR_CONFIG (with a
 * message naming the key, its type and value) if its type or value does not
 * convert losslessly: any integer type reads as any other integer type when the
 * value fits, F32 and F64 read as either when exact, BOOL only as bool, STRING
 * only as a string.  *out is untouched on failure. */
enum gpo_status gpo_gguf_get_u32(const struct gpo_gguf *g, const char *key, uint32_t *out);
enum gpo_status gpo_gguf_get_i32(const struct gpo_gguf *g, const char *key, int32_t *out);
enum gpo_status gpo_gguf_get_u64(const struct gpo_gguf *g, const char *key, uint64_t *out);
enum gpo_status gpo_gguf_get_i64(const struct gpo_gguf *g, const char *key, int64_t *out);
enum gpo_status gpo_gguf_get_f32(const struct gpo_gguf *g, const char *key, float *out);
enum gpo_status gpo_gguf_get_f64(const struct gpo_gguf *g, const char *key, double *out);
enum gpo_status gpo_gguf_get_bool(const struct gpo_gguf *g, const char *key, int *out);
enum gpo_status gpo_gguf_get_str(const struct gpo_gguf *g, const char *key,
                                 struct gpo_gguf_str *out);

/* An array, not copied: n elements of elem_type at data (raw little-endian
 * scalars; for strings a sequence of u64 length + bytes, read with the iterator). */
struct gpo_gguf_arr {
    uint32_t elem_type;
    uint64_t n;
    const uint8_t *data;
    uint64_t nbytes;
};
/* GPO_ERR_NOT_FOUND if absent; GPO_ERR_CONFIG if not an array, or (elem_type
 * other than GPO_GGUF_TYPE_COUNT_) if its elements are of another type. */
enum gpo_status gpo_gguf_get_arr(const struct gpo_gguf *g, const char *key, uint32_t elem_type,
                                 struct gpo_gguf_arr *out);
/* Element i of a numeric array as int64 / double (lossless conversions as above,
 * u64 above INT64_MAX refused); i must be < n. */
enum gpo_status gpo_gguf_arr_i64(const struct gpo_gguf_arr *a, uint64_t i, int64_t *out);

/* Walk a string array (validated by the parser, so no checks are repeated). */
struct gpo_gguf_str_iter {
    const uint8_t *p;
    uint64_t left;
};
void gpo_gguf_str_iter_init(struct gpo_gguf_str_iter *it, const struct gpo_gguf_arr *a);
/* The next string in *out; 0 when the array is exhausted. */
int gpo_gguf_str_next(struct gpo_gguf_str_iter *it, struct gpo_gguf_str *out);

/* 1 if s equals the C string c. */
int gpo_gguf_str_eq(struct gpo_gguf_str s, const char *c);

/* ------------------------------------------------------------------------- */
/* Streaming writer                                                          */
/*
 * Declare KVs and tensors first (in any interleaving), then write each tensor's
 * bytes in declaration order, in as many pieces as wanted; nothing but the KV
 * bytes and the tensor table is held in memory.  The header is written at the
 * first data write (or at close).  Tensors are laid out in declaration order,
 * each padded to the alignment (general.alignment if declared as a U32 KV, else
 * 32), the last one too, as llama.cpp's writers do.  The file is written as
 * PATH.tmp and renamed to PATH by a successful close; on any failure (or abort)
 * PATH.tmp is deleted and PATH is left as it was.  Version 3. */
struct gpo_gguf_writer {
    FILE *f;
    char *path, *tmp_path;
    char *iobuf;
    uint8_t *kv;          /* serialized KV pairs */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;          /* declared keys, for the duplicate check */
    size_t cap_keys;
    uint32_t alignment;
    struct {
        char name[GPO_GGUF_MAX_NAME + 1];
        uint32_t type;
        int n_dims;
        int64_t ne[GPO_GGUF_MAX_DIMS];
        uint64_t nbytes;
    } *decl;
    size_t n_decl, cap_decl;
    size_t cur;           /* tensor being written */
    uint64_t cur_written;
    int header_done;
};
enum gpo_status gpo_gguf_writer_open(struct gpo_gguf_writer *w, const char *path);
/* Scalars: value points at one value of the given type (not STRING/ARRAY); for
 * BOOL one byte 0 or 1.  Keys must be unique and non-empty. */
enum gpo_status gpo_gguf_writer_kv(struct gpo_gguf_writer *w, const char *key, uint32_t type,
                                   const void *value);
enum gpo_status gpo_gguf_writer_kv_u32(struct gpo_gguf_writer *w, const char *key, uint32_t v);
enum gpo_status gpo_gguf_writer_kv_i32(struct gpo_gguf_writer *w, const char *key, int32_t v);
enum gpo_status gpo_gguf_writer_kv_u64(struct gpo_gguf_writer *w, const char *key, uint64_t v);
enum gpo_status gpo_gguf_writer_kv_f32(struct gpo_gguf_writer *w, const char *key, float v);
enum gpo_status gpo_gguf_writer_kv_bool(struct gpo_gguf_writer *w, const char *key, int v);
enum gpo_status gpo_gguf_writer_kv_str(struct gpo_gguf_writer *w, const char *key, const char *s);
enum gpo_status gpo_gguf_writer_kv_strn(struct gpo_gguf_writer *w, const char *key,
                                        const char *s, uint64_t len);
/* An array of n scalars of elem_type (not STRING/ARRAY) stored at data in host
 * (little-endian) order. */
enum gpo_status gpo_gguf_writer_kv_arr(struct gpo_gguf_writer *w, const char *key,
                                       uint32_t elem_type, const void *data, uint64_t n);
/* An array of n strings; lens may be NULL (then each is NUL-terminated). */
enum gpo_status gpo_gguf_writer_kv_arr_str(struct gpo_gguf_writer *w, const char *key,
                                           const char *const *strs, const uint64_t *lens,
                                           uint64_t n);
/* A tensor of ggml type with ne[0..n_dims) innermost first (the ggml order: a
 * row-major [rows][cols] matrix is ne = {cols, rows}). */
enum gpo_status gpo_gguf_writer_declare(struct gpo_gguf_writer *w, const char *name,
                                        uint32_t type, int n_dims, const int64_t *ne);
enum gpo_status gpo_gguf_writer_write(struct gpo_gguf_writer *w, const void *data, uint64_t n);
/* Checks every declared byte was written, flushes, closes and renames. */
enum gpo_status gpo_gguf_writer_close(struct gpo_gguf_writer *w);
void gpo_gguf_writer_abort(struct gpo_gguf_writer *w);

#endif
