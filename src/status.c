/* status.c - status names and messages from the one X-macro in gpo.h, and the
 * thread-local detail message behind gpo_last_error(). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

static const char *const status_names[] = {
#define NAME_(name, msg) "GPO_" #name,
    GPO_STATUS_MAP(NAME_)
#undef NAME_
};

static const char *const status_msgs[] = {
#define MSG_(name, msg) msg,
    GPO_STATUS_MAP(MSG_)
#undef MSG_
};

const char *gpo_status_name(enum gpo_status s) {
    if ((unsigned)s >= (unsigned)GPO_STATUS_COUNT_) return "GPO_UNKNOWN";
    return status_names[s];
}

const char *gpo_status_str(enum gpo_status s) {
    if ((unsigned)s >= (unsigned)GPO_STATUS_COUNT_) return "unknown status";
    return status_msgs[s];
}

static _Thread_local char last_error[1024];

const char *gpo_last_error(void) { return last_error; }

void gpo_clear_error(void) { last_error[0] = 0; }

enum gpo_status gpo_fail(enum gpo_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

enum gpo_status gpo_fail_ctx(enum gpo_status s, const char *fmt, ...) {
    char prefix[512], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(old, sizeof old, "%s", last_error);
    size_t n = strlen(prefix);
    memcpy(last_error, prefix, n + 1);
    if (old[0] && n + 3 < sizeof last_error) {
        memcpy(last_error + n, ": ", 3);
        size_t room = sizeof last_error - n - 3, m = strlen(old);
        if (m > room) m = room;
        memcpy(last_error + n + 2, old, m);
        last_error[n + 2 + m] = 0;
    }
    return s;
}
