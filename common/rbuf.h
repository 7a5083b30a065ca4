/*
 * A bounded reader over a byte buffer that the caller keeps alive: the cursor
 * that the decoders of control messages (control/ctl.h) and of map statuses
 * (shuffle/map_status.c) walk their input with. sp__rbuf_take() is the one
 * bounds check: it hands out the next n bytes, or NULL and consumes nothing
 * when fewer are left. It raises nothing: each decoder raises its own
 * message, naming its format, field and offset, when a take fails. Read the
 * fields with common/bytes.h. Not thread safe.
 */
#ifndef SPATE_COMMON_RBUF_H
#define SPATE_COMMON_RBUF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sp__rbuf {
    const unsigned char *data;
    size_t len, off;
} sp__rbuf_t;

/* data may be NULL when len is 0 (len is then taken as 0). */
static inline void sp__rbuf_init(sp__rbuf_t *r, const void *data, size_t len)
{
    static const unsigned char empty[1];

    r->data = data != NULL ? (const unsigned char *)data : empty;
    r->len = data != NULL ? len : 0;
    r->off = 0;
}

/* Bytes not read yet. */
static inline size_t sp__rbuf_left(const sp__rbuf_t *r) { return r->len - r->off; }

/* The next n bytes, consumed; NULL, consuming nothing, when fewer than n are left. */
static inline const unsigned char *sp__rbuf_take(sp__rbuf_t *r, size_t n)
{
    const unsigned char *p;

    if (n > r->len - r->off)
        return NULL;
    p = r->data + r->off;
    r->off += n;
    return p;
}

#ifdef __cplusplus
}
#endif

#endif /* SPATE_COMMON_RBUF_H */
