/*
 * RecordIO decoding (Mesos' framing of the scheduler API's event stream):
 * records are "<decimal length>\n<length bytes>", back to back, with no
 * relation to the HTTP chunks that carry them.
 */
#ifndef SPATE_LAUNCHER_RECORDIO_H
#define SPATE_LAUNCHER_RECORDIO_H

#include <spate/common.h>

#include <stddef.h>

/* Longest length prefix accepted: 20 digits hold any 64-bit length. */
#define SP__RECORDIO_MAX_DIGITS 20

typedef struct sp__recordio sp__recordio_t;

/*
 * Called once per complete record with its bytes (len >= 1; not
 * NUL-terminated, valid only during the call). A status other than SP_OK
 * stops the feed that is running and is returned by it.
 */
typedef sp_status_t (*sp__recordio_cb_t)(void *arg, const char *record, size_t len);

/*
 * A decoder that accepts records of at most max_record bytes (>= 1).
 * *dec_p is owned by the caller (sp__recordio_destroy). SP_ERR_NOMEM.
 */
sp_status_t sp__recordio_create(size_t max_record, sp__recordio_t **dec_p);

/* Accepts NULL. */
void sp__recordio_destroy(sp__recordio_t *dec);

/* Forgets any partial record and a past error: the start of a new stream. */
void sp__recordio_reset(sp__recordio_t *dec);

/*
 * Decodes len more bytes of the stream, calling cb for every record they
 * complete, in order. Errors, each with a message that says what was wrong
 * and at which byte of the stream: SP_ERR_BAD_FORMAT for a length that is
 * empty, zero, or holds anything but decimal digits; SP_ERR_TOO_LARGE for a
 * length above max_record; SP_ERR_NOMEM; or cb's status. Once a feed
 * failed, every later one returns SP_ERR_BAD_FORMAT until a reset: the
 * stream cannot be resynchronized. Not thread safe.
 */
sp_status_t sp__recordio_feed(sp__recordio_t *dec, const void *buf, size_t len,
                              sp__recordio_cb_t cb, void *arg);

/*
 * The end of the stream: SP_OK when it ended between records,
 * SP_ERR_BAD_FORMAT ("truncated") when it ended inside a length or a
 * record, or when a feed had failed.
 */
sp_status_t sp__recordio_finish(const sp__recordio_t *dec);

/* Records decoded and stream bytes consumed since the last reset. */
size_t sp__recordio_records(const sp__recordio_t *dec);
size_t sp__recordio_offset(const sp__recordio_t *dec);

#endif /* SPATE_LAUNCHER_RECORDIO_H */
