/*
 * Private helpers shared by every spate module: error raising, assertions,
 * container_of, allocation wrappers with fault injection, and build switches
 * as typed constants.
 */
#ifndef SPATE_COMMON_INT_H
#define SPATE_COMMON_INT_H

#include "spate_build.h"
#include <spate/common.h>

#include <stddef.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Build switches, compiled in every build so that all code is type-checked. */
static const bool sp_config_debug = SPATE_BUILD_DEBUG;

#define SP_ARRAY_SIZE(a)                   (sizeof(a) / sizeof((a)[0]))
#define sp_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define SP_MIN(a, b)                       ((a) < (b) ? (a) : (b))
#define SP_MAX(a, b)                       ((a) > (b) ? (a) : (b))
#define SP_UNUSED(x)                       ((void)(x))
#define SP_LIKELY(x)                       __builtin_expect(!!(x), 1)
#define SP_UNLIKELY(x)                     __builtin_expect(!!(x), 0)

/*
 * Records the detail of an error where it is found and returns status, so
 * that detection sites read `return SP_RAISE(SP_ERR_IO, "open %s: %s", ...)`.
 * The message is kept for sp_last_error() and logged at debug level; callers
 * pass the status up without writing another message.
 */
sp_status_t sp__raise(sp_status_t status, const char *file, int line, const char *fmt, ...)
    SP_PRINTF(4, 5);
#define SP_RAISE(status, ...) sp__raise((status), __FILE__, __LINE__, __VA_ARGS__)
/*
 * The same for an outcome the caller expects and handles as routine (a poll
 * that timed out): the message is kept for sp_last_error() but not logged.
 */
sp_status_t sp__expected(sp_status_t status, const char *fmt, ...) SP_PRINTF(2, 3);

/* Invariants only; never for input validation. Active in every build. */
void sp__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define SP_ASSERT(expr)                                                                            \
    do {                                                                                           \
        if (SP_UNLIKELY(!(expr)))                                                                  \
            sp__assert_fail(#expr, __FILE__, __LINE__);                                            \
    } while (0)

/* Monotonic clock in nanoseconds. */
uint64_t sp__now_ns(void);
/* Wall-clock time (CLOCK_REALTIME) in nanoseconds since the epoch, for reports. */
uint64_t sp__wall_ns(void);

/* "SIGSEGV" for the signals a crash or a kill brings; NULL for others. Async-signal-safe. */
const char *sp__signal_name(int sig);

/*
 * Fault injection (SQLite faultsim style). sp__fault_arm(kind, n) makes the
 * n-th following event of that kind fail (n = 1: the next one); 0 disarms.
 * The counter is process-wide and atomic; tests that arm it run the code
 * under test on one thread.
 */
typedef enum sp_fault_kind {
    SP_FAULT_ALLOC = 0, /* sp__malloc and friends, arena and page allocation */
    SP_FAULT_WRITE = 1, /* writes to files */
    SP_FAULT_READ = 2,  /* reads from files */
    SP_FAULT_KINDS
} sp_fault_kind_t;

void sp__fault_arm(sp_fault_kind_t kind, uint64_t nth);
/* True when this event must fail; counts events while armed. */
bool sp__fault_fire(sp_fault_kind_t kind);
/* Number of faults fired of that kind since the process started. */
uint64_t sp__fault_fired(sp_fault_kind_t kind);

/*
 * Allocation wrappers: the one place spate's own heap allocations go
 * through, so that a fault can be injected into each of them. They return
 * NULL on failure; the caller raises SP_ERR_NOMEM with its context.
 */
void *sp__malloc(size_t size);
void *sp__calloc(size_t count, size_t size);
void *sp__realloc(void *ptr, size_t size);
char *sp__strdup(const char *s);
void sp__free(void *ptr);

/*
 * Positioned file I/O (common/io.c). pwrite_all and pread_all finish short
 * transfers and retry EINTR; a file shorter than asked is SP_ERR_CORRUPT on
 * read; ENOSPC is SP_ERR_NO_SPACE, other errors SP_ERR_IO, each message
 * naming path. All three are fault-injection points.
 */
sp_status_t sp__pwrite_all(int fd, const void *buf, size_t len, uint64_t offset, const char *path);
sp_status_t sp__pread_all(int fd, void *buf, size_t len, uint64_t offset, const char *path);
int sp__fsync(int fd);
/* The status and message of a failed write-side call op on path. */
sp_status_t sp__write_error(const char *op, const char *path, int err);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_COMMON_INT_H */
