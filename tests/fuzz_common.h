/* fuzz_common.h - shared pieces of the libFuzzer targets (`make fuzz`): the
 * pinned tokenizer loaded once per process, and a memory file for loaders that
 * take a path. */
#ifndef GPO_FUZZ_COMMON_H
#define GPO_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gpo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A failed check of a target's contract: say which, then stop so libFuzzer
 * saves the input. */
#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz check failed at %s:%d: %s (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, gpo_last_error());                                    \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* The real tokenizer ($GPTOSS_TOKENIZER, else the copy `make deps` installs, found
 * from the executable's folder).  Loaded once: it takes seconds under the sanitizers. */
static inline const gpo_tokenizer *fuzz_tokenizer(void) {
    static gpo_tokenizer *tok;
    if (tok) return tok;
    char path[4096];
    if (gpo_tokenizer_find(NULL, NULL, path, sizeof path) != GPO_OK ||
        gpo_tokenizer_load(path, &tok) != GPO_OK) {
        fprintf(stderr, "fuzz: cannot load the tokenizer: %s (run `make deps`)\n",
                gpo_last_error());
        exit(2);
    }
    return tok;
}

/* A file that lives in memory (memfd), rewritten for each input and named by its
 * /proc/self/fd path, so a loader that takes a path reads the input without
 * touching the disk. */
struct fuzz_memfile {
    int fd;
    char path[64];
};

static inline void fuzz_memfile_open(struct fuzz_memfile *f, const char *name) {
    f->fd = memfd_create(name, 0);
    if (f->fd < 0) {
        perror("fuzz: memfd_create");
        exit(2);
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

static inline void fuzz_memfile_write(struct fuzz_memfile *f, const uint8_t *data, size_t size) {
    if (ftruncate(f->fd, 0) != 0 || (size && pwrite(f->fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz: writing the memory file");
        exit(2);
    }
}

#endif
