/*
 * spate — configuration. A sp_conf_t holds every dotted key spate knows
 * (memory.executor, memory.fraction, ...) with its default, its type and its
 * valid range. Values come, lowest precedence first, from the defaults, a
 * file (--conf-file), the environment (SPATE_CONF_<KEY>, dots and dashes as
 * underscores, upper case) and the command line (--conf key=value).
 */
#ifndef SPATE_CONF_H
#define SPATE_CONF_H

#include <spate/common.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sp_conf sp_conf_t;

/** Value types of configuration keys. */
typedef enum sp_conf_type {
    SP_CONF_SIZE,     /**< bytes: 4096, 64k, 512m, 4g, 1t (binary multiples) */
    SP_CONF_INT,      /**< signed 64-bit integer */
    SP_CONF_DOUBLE,   /**< floating point number */
    SP_CONF_BOOL,     /**< true/false, yes/no, on/off, 1/0 */
    SP_CONF_DURATION, /**< 250ms, 30s, 5m, 1h, 10us; a bare number is seconds */
    SP_CONF_STRING,   /**< any text */
    SP_CONF_ENUM,     /**< one of a fixed list of words */
} sp_conf_type_t;

/**
 * Creates a configuration holding the defaults of every key. Returns
 * SP_ERR_NOMEM on allocation failure. The caller owns *conf_p and frees it
 * with sp_conf_destroy(). A conf is not thread safe for writers; many threads
 * may read one that no thread changes.
 */
SP_API sp_status_t sp_conf_create(sp_conf_t **conf_p);

/** Frees a configuration; NULL is accepted. */
SP_API void sp_conf_destroy(sp_conf_t *conf);

/** Deep copy of a configuration into *copy_p. */
SP_API sp_status_t sp_conf_dup(const sp_conf_t *conf, sp_conf_t **copy_p);

/**
 * Sets key to value after validating it against the key's type and range.
 * Returns SP_ERR_BAD_CONF (message names the key, the value and the valid
 * range, or the unknown key) and leaves the old value in place on error.
 */
SP_API sp_status_t sp_conf_set(sp_conf_t *conf, const char *key, const char *value);

/** Parses one "key=value" assignment (as given to --conf) and sets it. */
SP_API sp_status_t sp_conf_set_assignment(sp_conf_t *conf, const char *assignment);

/**
 * Loads a file of "key = value" lines; blank lines and lines starting with
 * '#' are skipped. The file is read whole first: a regular file or a pipe
 * of at most 1 MiB of text. A device, a socket, a longer file and a NUL byte
 * anywhere are SP_ERR_BAD_CONF (naming the file, and the line of a NUL) with
 * nothing applied. An unreadable file is SP_ERR_IO; a bad line is
 * SP_ERR_BAD_CONF naming the file and line number. Keys set before a bad
 * line keep their new values.
 */
SP_API sp_status_t sp_conf_load_file(sp_conf_t *conf, const char *path);

/**
 * Applies every SPATE_CONF_<KEY> variable of envp (NULL-terminated, as
 * environ). A SPATE_CONF_ variable that names no key is SP_ERR_BAD_CONF.
 */
SP_API sp_status_t sp_conf_load_env(sp_conf_t *conf, char *const *envp);

/*
 * Typed getters. Each returns SP_ERR_NOT_FOUND for an unknown key and
 * SP_ERR_INVALID_PARAM when the key has another type; *value_p is set only
 * on success. get_size returns bytes, get_duration nanoseconds; get_string
 * and get_enum return a string owned by the conf, valid until the key is set
 * again or the conf destroyed.
 */
SP_API sp_status_t sp_conf_get_size(const sp_conf_t *conf, const char *key, uint64_t *value_p);
SP_API sp_status_t sp_conf_get_int(const sp_conf_t *conf, const char *key, int64_t *value_p);
SP_API sp_status_t sp_conf_get_double(const sp_conf_t *conf, const char *key, double *value_p);
SP_API sp_status_t sp_conf_get_bool(const sp_conf_t *conf, const char *key, bool *value_p);
SP_API sp_status_t sp_conf_get_duration(const sp_conf_t *conf, const char *key,
                                        uint64_t *value_ns_p);
SP_API sp_status_t sp_conf_get_string(const sp_conf_t *conf, const char *key, const char **value_p);

/** True when key was set by a file, the environment or an assignment. */
SP_API bool sp_conf_is_set(const sp_conf_t *conf, const char *key);

/**
 * Calls fn for every key that was set (by a file, the environment or an
 * assignment), in table order, with the value as it was given; for handing a
 * configuration to another process.
 */
SP_API void sp_conf_foreach_set(const sp_conf_t *conf,
                                void (*fn)(void *arg, const char *key, const char *value),
                                void *arg);

/**
 * Writes the table of every key (key, type, default, range, description) in
 * Markdown to out. The README's table is this output; a test keeps them equal.
 */
SP_API void sp_conf_write_markdown(FILE *out);

/**
 * Parses a size ("64k", "4g", "4096") into bytes. Returns SP_ERR_BAD_CONF on
 * malformed text or overflow of 64 bits.
 */
SP_API sp_status_t sp_conf_parse_size(const char *text, uint64_t *bytes_p);

/** Parses a duration ("250ms", "30s", "2") into nanoseconds. */
SP_API sp_status_t sp_conf_parse_duration(const char *text, uint64_t *ns_p);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_CONF_H */
