/*
 * spate — common definitions: export macro, status codes, last-error detail,
 * logging. Every other public header includes this one.
 */
#ifndef SPATE_COMMON_H
#define SPATE_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SP_API                      __attribute__((visibility("default")))
#define SP_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define SP_API
#define SP_PRINTF(fmt_idx, arg_idx)
#endif

#define SP_VERSION_MAJOR 0
#define SP_VERSION_MINOR 1
#define SP_VERSION_PATCH 0

/**
 * Status of every spate call. SP_OK is zero; errors are negative and grouped
 * in ranges by what the caller must do about them (as in UCX's ucs_status_t):
 *
 *   -1  .. -19   bad input: the caller or a file/wire/user gave something
 *                invalid; fix the input, retrying will not help.
 *   -20 .. -39   out of resources: memory, descriptors, limits; may succeed
 *                later or with a larger budget.
 *   -40 .. -59   local I/O: a file system call failed or a file is damaged.
 *   -60 .. -79   transport or peer: retry the fetch elsewhere or recompute
 *                the lost output.
 *   -80 .. -99   internal: unsupported operation or a broken invariant.
 *
 * The human-readable detail of the most recent error of the calling thread
 * (which file, key, peer, raw errno or provider code) is in sp_last_error().
 */
typedef enum sp_status {
    SP_OK = 0,

    SP_ERR_INVALID_PARAM = -1, /**< an argument is out of its domain */
    SP_ERR_BAD_CONF = -2,      /**< unknown configuration key or bad value */
    SP_ERR_BAD_FORMAT = -3,    /**< malformed bytes from a file or the wire */
    SP_ERR_TOO_LARGE = -4,     /**< a size or count exceeds a hard limit */
    SP_ERR_NOT_FOUND = -5,     /**< the named object does not exist */
    SP_ERR_EXISTS = -6,        /**< the named object already exists */
    SP_ERR_BAD_INPUT = -7,     /**< the job's input data is wrong: no retry can succeed */

    SP_ERR_NOMEM = -20,          /**< the system allocator failed */
    SP_ERR_MEMORY_REFUSED = -21, /**< the memory manager cannot grant memory */
    SP_ERR_NO_RESOURCE = -22,    /**< another resource (pages, fds) ran out */
    SP_ERR_BUSY = -23,           /**< the object is in use; try again later */

    SP_ERR_IO = -40,       /**< a file system call failed */
    SP_ERR_NO_SPACE = -41, /**< the disk is full */
    SP_ERR_CORRUPT = -42,  /**< stored data fails its checksum */

    SP_ERR_TRANSPORT = -60,    /**< the transport failed an operation */
    SP_ERR_PEER_LOST = -61,    /**< a peer is gone or unreachable */
    SP_ERR_TIMED_OUT = -62,    /**< an operation did not finish in time */
    SP_ERR_FETCH_FAILED = -63, /**< a shuffle block could not be fetched */
    SP_ERR_CANCELED = -64,     /**< the operation was canceled */

    SP_ERR_UNSUPPORTED = -80, /**< the backend does not offer this */
    SP_ERR_INTERNAL = -81,    /**< an invariant is broken: a bug */
} sp_status_t;

/** Static, never-NULL name of a status ("SP_ERR_NOMEM: out of memory"). */
SP_API const char *sp_status_str(sp_status_t status);

/** The range predicates of sp_status_t. */
static inline bool sp_status_is_bad_input(sp_status_t s) { return s <= -1 && s >= -19; }
static inline bool sp_status_is_no_resource(sp_status_t s) { return s <= -20 && s >= -39; }
static inline bool sp_status_is_io(sp_status_t s) { return s <= -40 && s >= -59; }
static inline bool sp_status_is_transport(sp_status_t s) { return s <= -60 && s >= -79; }
static inline bool sp_status_is_internal(sp_status_t s) { return s <= -80 && s >= -99; }

/**
 * Detail of the last error raised on the calling thread: the message written
 * where the error was found. Never NULL; "" when no error was raised since the
 * last sp_last_error_clear(). The string belongs to the thread and stays valid
 * until its next spate call that fails.
 */
SP_API const char *sp_last_error(void);

/** Status of the last error raised on the calling thread (SP_OK if none). */
SP_API sp_status_t sp_last_error_status(void);

/** Forgets the calling thread's last error. */
SP_API void sp_last_error_clear(void);

/** Log levels, in increasing verbosity. */
typedef enum sp_log_level {
    SP_LOG_ERROR = 0,
    SP_LOG_WARN = 1,
    SP_LOG_INFO = 2,
    SP_LOG_DEBUG = 3,
} sp_log_level_t;

/**
 * Current log level. Initialised from SPATE_LOG (error|warn|info|debug,
 * default warn) on first use. Thread safe.
 */
SP_API sp_log_level_t sp_log_level(void);

/** Sets the log level for the process. Thread safe. */
SP_API void sp_log_set_level(sp_log_level_t level);

/**
 * Parses "error", "warn", "info" or "debug" into *level_p. Returns
 * SP_ERR_INVALID_PARAM, leaving *level_p untouched, on any other text.
 */
SP_API sp_status_t sp_log_level_parse(const char *text, sp_log_level_t *level_p);

/**
 * Sets the identity printed in every log line ("rank 3", "exec 1"). The text
 * is copied (truncated to 31 bytes). NULL restores the default, which is
 * "rank N" under mpirun/srun and "pid N" otherwise. Thread safe.
 */
SP_API void sp_log_set_identity(const char *identity);

/**
 * Writes one line to stderr: UTC timestamp, identity, level, source location
 * and the message. Lines from concurrent threads do not interleave. Use the
 * SP_LOG_* macros, which skip formatting when the level is off.
 */
SP_API void sp_log_write(sp_log_level_t level, const char *file, int line, const char *fmt, ...)
    SP_PRINTF(4, 5);

#define sp_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= sp_log_level())                                                             \
            sp_log_write((level), __FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)
#define sp_error(...) sp_log(SP_LOG_ERROR, __VA_ARGS__)
#define sp_warn(...)  sp_log(SP_LOG_WARN, __VA_ARGS__)
#define sp_info(...)  sp_log(SP_LOG_INFO, __VA_ARGS__)
#define sp_debug(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)

/** "0.1.0". */
SP_API const char *sp_version(void);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_COMMON_H */
