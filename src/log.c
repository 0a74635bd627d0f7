/* log.c - the one logging function of the library.  Messages go to stderr unless
 * a callback is installed; the library never writes to stdout. */
#include <stdarg.h>
#include <stdio.h>

#include "gpo.h"

static enum gpo_log_level log_level = GPO_LOG_INFO;
static gpo_log_fn log_fn;
static void *log_user;

void gpo_set_log_level(enum gpo_log_level level) { log_level = level; }

void gpo_set_log_callback(gpo_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

void gpo_log(enum gpo_log_level level, const char *fmt, ...) {
    if (level > log_level) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(level, buf, log_user);
        return;
    }
    static const char *const tags[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "gptoss: %s: %s\n", tags[level], buf);
}
