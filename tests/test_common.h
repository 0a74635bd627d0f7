/* test_common.h - small helpers the cmocka suites share: reading a fixture file
 * whole.  Include after <cmocka.h>. */
#ifndef GPO_TEST_COMMON_H
#define GPO_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>

/* The whole file, NUL-terminated (the length without the NUL in *len); NULL when
 * it cannot be read. */
static inline void *read_all(const char *path, size_t *len) {
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len && buf) *len = (size_t)n;
    return buf;
}

#endif
