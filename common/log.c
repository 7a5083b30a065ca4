/*
 * Leveled logging to stderr. A line is formatted into one buffer and written
 * with one write(2) so that lines of concurrent threads and ranks never
 * interleave. The level is read on every call site through a relaxed atomic;
 * formatting is skipped when the level is off.
 */
#include "common_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SP_LOG_UNSET (-1)

static atomic_int sp_log_cur = SP_LOG_UNSET;
static pthread_mutex_t sp_log_identity_lock = PTHREAD_MUTEX_INITIALIZER;
static char sp_log_identity[32];

static const char *const sp_log_names[] = {"error", "warn", "info", "debug"};

/*
 * Index of text in sp_log_names, or -1. It raises nothing: sp_log_level()
 * runs inside SP_RAISE, where raising again would recurse and would replace
 * the error being raised.
 */
static int sp_log_level_find(const char *text)
{
    for (size_t i = 0; text != NULL && i < SP_ARRAY_SIZE(sp_log_names); i++) {
        if (strcmp(text, sp_log_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

sp_status_t sp_log_level_parse(const char *text, sp_log_level_t *level_p)
{
    int found = sp_log_level_find(text);

    if (found < 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "log level '%s' is not one of error|warn|info|debug",
                        text != NULL ? text : "(null)");
    *level_p = (sp_log_level_t)found;
    return SP_OK;
}

sp_log_level_t sp_log_level(void)
{
    int cur = atomic_load_explicit(&sp_log_cur, memory_order_relaxed);
    int level = SP_LOG_WARN;
    const char *env;

    if (SP_LIKELY(cur != SP_LOG_UNSET))
        return (sp_log_level_t)cur;

    env = getenv("SPATE_LOG");
    if (env != NULL && *env != '\0')
        level = sp_log_level_find(env);
    if (level < 0) {
        level = SP_LOG_WARN;
        atomic_store(&sp_log_cur, level);
        sp_log_write(SP_LOG_WARN, __FILE__, __LINE__,
                     "SPATE_LOG='%s' is not one of error|warn|info|debug; using warn", env);
        return (sp_log_level_t)level;
    }
    atomic_store(&sp_log_cur, level);
    return (sp_log_level_t)level;
}

void sp_log_set_level(sp_log_level_t level) { atomic_store(&sp_log_cur, (int)level); }

void sp_log_set_identity(const char *identity)
{
    pthread_mutex_lock(&sp_log_identity_lock);
    if (identity == NULL)
        sp_log_identity[0] = '\0';
    else
        snprintf(sp_log_identity, sizeof(sp_log_identity), "%s", identity);
    pthread_mutex_unlock(&sp_log_identity_lock);
}

/* "rank N" under mpirun or a PMIx/Slurm launcher, else "pid N". */
static void sp_log_default_identity(char *buf, size_t len)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(vars); i++) {
        const char *v = getenv(vars[i]);
        if (v != NULL && *v != '\0') {
            snprintf(buf, len, "rank %.16s", v);
            return;
        }
    }
    snprintf(buf, len, "pid %ld", (long)getpid());
}

void sp_log_write(sp_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    static const char *const tags[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};
    char buf[2048], identity[32];
    struct timespec ts;
    struct tm tm;
    const char *base = strrchr(file, '/');
    size_t n;
    int r;
    va_list ap;

    pthread_mutex_lock(&sp_log_identity_lock);
    memcpy(identity, sp_log_identity, sizeof(identity));
    pthread_mutex_unlock(&sp_log_identity_lock);
    if (identity[0] == '\0')
        sp_log_default_identity(identity, sizeof(identity));

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    r = snprintf(buf, sizeof(buf),
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ spate[%s] %s %s:%d: ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 identity, tags[(unsigned)level & 3u], base != NULL ? base + 1 : file, line);
    n = r < 0 ? 0 : SP_MIN((size_t)r, sizeof(buf) - 1);
    va_start(ap, fmt);
    r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
    va_end(ap);
    n = r < 0 ? n : SP_MIN(n + (size_t)r, sizeof(buf) - 2);
    buf[n++] = '\n';
    /* One write per line; a short write to stderr is not worth retrying. */
    if (write(STDERR_FILENO, buf, n) < 0)
        return;
}
