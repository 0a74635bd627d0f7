/* safetensors.h - read-only access to safetensors files: mmap, bounds-checked
 * header parsing (every offset, length, dtype and shape, overflow-safe), sharded
 * folders through model.safetensors.index.json, and a streaming writer.
 * Internal to the library. */
#ifndef GPO_SAFETENSORS_H
#define GPO_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>

#include "gpo.h"
#include "kernels/kernels.h"

#define GPO_ST_MAX_DIMS 8

struct gpo_st_tensor {
    char *name;
    enum gpo_dtype dtype;
    int n_dims;
    int64_t shape[GPO_ST_MAX_DIMS];
    uint64_t offset;      /* absolute offset of the data in its file */
    uint64_t nbytes;
    const uint8_t *data;  /* points into the file's mapping (NULL for a parsed-only header) */
    int file;             /* index into gpo_st.files */
};

struct gpo_st_file {
    char *path;
    const uint8_t *map;
    uint64_t size;
};

struct gpo_st {
    struct gpo_st_file *files;
    int n_files;
    struct gpo_st_tensor *tensors;
    size_t n_tensors;
    /* lookup index (open addressing over tensor names) */
    int64_t *index;
    size_t index_cap;
};

/* Size in bytes of one element of dt (0 for an unknown dtype). */
size_t gpo_dtype_size(enum gpo_dtype dt);
/* "BF16" for GPO_DT_BF16 etc. */
const char *gpo_dtype_name(enum gpo_dtype dt);
/* The dtype named by a safetensors dtype string ("BF16", "U8", ...); 0 if unknown. */
int gpo_dtype_from_name(const char *name, enum gpo_dtype *out);

/* Headers longer than this are refused (real ones are well under 1 MiB). */
#define GPO_ST_MAX_HEADER (100u << 20)

/* Parse and validate the header of a whole safetensors file held in buf[0..size).
 * `label` names the file in error messages.  Checks: the 8-byte length fits and the
 * header lies inside the file; the header is a JSON object; every tensor has a known
 * dtype, a shape of non-negative integers with at most GPO_ST_MAX_DIMS dims, and
 * data_offsets [begin, end] with begin <= end, end inside the data section,
 * end - begin == prod(shape) * dtype size (computed overflow-safe); no two tensors
 * overlap; no duplicate names.  On success *out holds n tensors (names malloc'd,
 * `data` pointing into buf); free with gpo_st_free_tensors. */
enum gpo_status gpo_st_parse(const uint8_t *buf, uint64_t size, const char *label,
                             struct gpo_st_tensor **out, size_t *n_out);
void gpo_st_free_tensors(struct gpo_st_tensor *t, size_t n);

/* Map one file read-only and add its tensors (a name already present is an error). */
enum gpo_status gpo_st_add_file(struct gpo_st *st, const char *path);
/* Open a folder: through model.safetensors.index.json when present (every shard it
 * names must exist and hold the tensors it maps), else every *.safetensors file in
 * it (in name order).  GPO_ERR_NOT_FOUND if the folder holds no safetensors file or
 * the index names a missing shard; GPO_ERR_MISSING_TENSOR if a mapped tensor is not
 * in its shard.  st must start zeroed; on failure it is left closed. */
enum gpo_status gpo_st_open_dir(struct gpo_st *st, const char *dir);
const struct gpo_st_tensor *gpo_st_find(const struct gpo_st *st, const char *name);
/* Unmap everything and free; st is zeroed. */
void gpo_st_close(struct gpo_st *st);

/* Streaming writer: declare every tensor first, then write each tensor's bytes in
 * declaration order (in as many pieces as wanted).  No tensor is ever held whole.
 * Tensors are packed in declaration order; the header carries
 * "__metadata__": {"format": "pt"} and is padded with spaces to a multiple of 8. */
struct gpo_st_writer {
    FILE *f;
    char *path;
    char *iobuf;         /* the stdio buffer (large, for throughput) */
    struct {
        char *name;
        enum gpo_dtype dtype;
        int n_dims;
        int64_t shape[GPO_ST_MAX_DIMS];
        uint64_t nbytes;
    } *decl;
    size_t n_decl, cap_decl;
    size_t cur;          /* tensor being written */
    uint64_t cur_written;
    int header_done;
};
enum gpo_status gpo_st_writer_open(struct gpo_st_writer *w, const char *path);
enum gpo_status gpo_st_writer_declare(struct gpo_st_writer *w, const char *name,
                                      enum gpo_dtype dt, int n_dims, const int64_t *shape);
enum gpo_status gpo_st_writer_write(struct gpo_st_writer *w, const void *data, uint64_t n);
/* Checks every declared byte was written, flushes and closes.  On failure the
 * file is deleted (as by gpo_st_writer_abort). */
enum gpo_status gpo_st_writer_close(struct gpo_st_writer *w);
/* Close and delete a partly written file after an error. */
void gpo_st_writer_abort(struct gpo_st_writer *w);

#endif
