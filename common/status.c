/*
 * Status names and the per-thread last-error detail. The detail buffer is
 * thread-local so that concurrent tasks never see each other's messages; it is
 * written once, by the code that detects an error (SP_RAISE).
 */
#include "common_int.h"

#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <time.h>

const char *sp_status_str(sp_status_t status)
{
    switch (status) {
    case SP_OK: return "SP_OK: success";
    case SP_ERR_INVALID_PARAM: return "SP_ERR_INVALID_PARAM: invalid parameter";
    case SP_ERR_BAD_CONF: return "SP_ERR_BAD_CONF: bad configuration";
    case SP_ERR_BAD_FORMAT: return "SP_ERR_BAD_FORMAT: malformed data";
    case SP_ERR_TOO_LARGE: return "SP_ERR_TOO_LARGE: exceeds a limit";
    case SP_ERR_NOT_FOUND: return "SP_ERR_NOT_FOUND: not found";
    case SP_ERR_EXISTS: return "SP_ERR_EXISTS: already exists";
    case SP_ERR_BAD_INPUT: return "SP_ERR_BAD_INPUT: bad input data";
    case SP_ERR_NOMEM: return "SP_ERR_NOMEM: out of memory";
    case SP_ERR_MEMORY_REFUSED: return "SP_ERR_MEMORY_REFUSED: memory manager refused the request";
    case SP_ERR_NO_RESOURCE: return "SP_ERR_NO_RESOURCE: out of resources";
    case SP_ERR_BUSY: return "SP_ERR_BUSY: in use";
    case SP_ERR_IO: return "SP_ERR_IO: I/O error";
    case SP_ERR_NO_SPACE: return "SP_ERR_NO_SPACE: no space left on device";
    case SP_ERR_CORRUPT: return "SP_ERR_CORRUPT: data fails its checksum";
    case SP_ERR_TRANSPORT: return "SP_ERR_TRANSPORT: transport error";
    case SP_ERR_PEER_LOST: return "SP_ERR_PEER_LOST: peer lost";
    case SP_ERR_TIMED_OUT: return "SP_ERR_TIMED_OUT: timed out";
    case SP_ERR_FETCH_FAILED: return "SP_ERR_FETCH_FAILED: fetch failed";
    case SP_ERR_CANCELED: return "SP_ERR_CANCELED: canceled";
    case SP_ERR_UNSUPPORTED: return "SP_ERR_UNSUPPORTED: unsupported operation";
    case SP_ERR_INTERNAL: return "SP_ERR_INTERNAL: internal error";
    }
    return "SP_ERR_UNKNOWN: unknown status";
}

static _Thread_local char sp_last_msg[1024];
static _Thread_local sp_status_t sp_last_status;

const char *sp_last_error(void) { return sp_last_msg; }

sp_status_t sp_last_error_status(void) { return sp_last_status; }

void sp_last_error_clear(void)
{
    sp_last_msg[0] = '\0';
    sp_last_status = SP_OK;
}

static void sp_last_set(sp_status_t status, const char *fmt, va_list ap)
{
    char msg[sizeof(sp_last_msg)];

    /*
     * Format into a local buffer first: callers that add context to an error
     * pass sp_last_error() itself as an argument, and vsnprintf must not read
     * the buffer it is writing.
     */
    vsnprintf(msg, sizeof(msg), fmt, ap);
    memcpy(sp_last_msg, msg, strlen(msg) + 1);
    sp_last_status = status;
}

sp_status_t sp__raise(sp_status_t status, const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sp_last_set(status, fmt, ap);
    va_end(ap);
    /* The file's name, not the build machine's path to it. */
    sp_log(SP_LOG_DEBUG, "raised %s at %s:%d: %s", sp_status_str(status),
           strrchr(file, '/') != NULL ? strrchr(file, '/') + 1 : file, line, sp_last_msg);
    return status;
}

sp_status_t sp__expected(sp_status_t status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sp_last_set(status, fmt, ap);
    va_end(ap);
    return status;
}

void sp__assert_fail(const char *expr, const char *file, int line)
{
    sp_log_write(SP_LOG_ERROR, file, line, "assertion failed: %s", expr);
    abort();
}

const char *sp__signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGXCPU: return "SIGXCPU";
    default: return NULL;
    }
}

uint64_t sp__now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t sp__wall_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *sp_version(void) { return SPATE_VERSION_STRING; }
