/*
 * The payload codec of control messages: sp__wbuf_t builds a payload, the
 * sp__rbuf gets read one back over the common bounded reader (common/rbuf.h)
 * and never read past its end. Integers are little endian (common/bytes.h);
 * bytes and strings are a u32 length, then the bytes.
 *
 * A payload is built once per message and is small (a heartbeat, a task) or
 * occasionally a few MiB (a stage's map statuses): the buffer starts at 256
 * bytes and doubles, and its status is sticky, so an encoder may check only
 * the last put. Every get checks its field against what is left before it
 * touches an output, and raises "control message <what>: truncated" naming
 * the field, so a decoder needs no bounds checks of its own.
 */
#include "control/ctl.h"
#include "bytes.h"

#include <stdint.h>
#include <string.h>

void sp__wbuf_init(sp__wbuf_t *w)
{
    w->data = NULL;
    w->len = w->cap = 0;
    w->status = SP_OK;
}

void sp__wbuf_free(sp__wbuf_t *w)
{
    if (w == NULL)
        return;
    sp__free(w->data);
    sp__wbuf_init(w);
}

void sp__wbuf_reset(sp__wbuf_t *w)
{
    w->len = 0;
    w->status = SP_OK;
}

sp_status_t sp__wbuf_status(const sp__wbuf_t *w) { return w->status; }

/* Room for n more bytes at data + len; NULL (status set) on failure. */
static unsigned char *sp_wbuf_room(sp__wbuf_t *w, size_t n)
{
    unsigned char *grown;
    size_t cap;

    if (w->status != SP_OK)
        return NULL;
    if (n <= w->cap - w->len)
        return w->data + w->len;
    if (n > SIZE_MAX / 4 - w->len) {
        w->status = SP_RAISE(SP_ERR_TOO_LARGE, "control message of more than %zu bytes", w->len);
        return NULL;
    }
    cap = w->cap < 256 ? 256 : w->cap;
    while (cap - w->len < n)
        cap *= 2;
    grown = sp__realloc(w->data, cap);
    if (grown == NULL) {
        w->status =
            SP_RAISE(SP_ERR_NOMEM, "control message: cannot grow its buffer to %zu bytes", cap);
        return NULL;
    }
    w->data = grown;
    w->cap = cap;
    return w->data + w->len;
}

sp_status_t sp__wbuf_put_raw(sp__wbuf_t *w, const void *data, size_t len)
{
    unsigned char *p = sp_wbuf_room(w, len);

    if (p == NULL)
        return w->status;
    if (len > 0)
        memcpy(p, data, len);
    w->len += len;
    return SP_OK;
}

/* The integers: little endian, through put_raw (one room check, one status). */
sp_status_t sp__wbuf_put_u8(sp__wbuf_t *w, uint8_t v) { return sp__wbuf_put_raw(w, &v, 1); }

sp_status_t sp__wbuf_put_u16(sp__wbuf_t *w, uint16_t v)
{
    unsigned char b[2];

    sp__le_put_u16(b, v);
    return sp__wbuf_put_raw(w, b, sizeof(b));
}

sp_status_t sp__wbuf_put_u32(sp__wbuf_t *w, uint32_t v)
{
    unsigned char b[4];

    sp__le_put_u32(b, v);
    return sp__wbuf_put_raw(w, b, sizeof(b));
}

sp_status_t sp__wbuf_put_u64(sp__wbuf_t *w, uint64_t v)
{
    unsigned char b[8];

    sp__le_put_u64(b, v);
    return sp__wbuf_put_raw(w, b, sizeof(b));
}

sp_status_t sp__wbuf_put_bytes(sp__wbuf_t *w, const void *data, size_t len)
{
    if (w->status != SP_OK)
        return w->status;
    if (len > UINT32_MAX) {
        w->status = SP_RAISE(SP_ERR_TOO_LARGE,
                             "control message field of %zu bytes: longer than a u32 length", len);
        return w->status;
    }
    /* Room for both first, so that a failure leaves no half-written field. */
    if (sp_wbuf_room(w, 4 + len) == NULL)
        return w->status;
    sp__wbuf_put_u32(w, (uint32_t)len);
    return sp__wbuf_put_raw(w, data, len);
}

sp_status_t sp__wbuf_put_str(sp__wbuf_t *w, const char *s)
{
    return sp__wbuf_put_bytes(w, s, strlen(s));
}

void sp__wbuf_patch_u32(sp__wbuf_t *w, size_t offset, uint32_t v)
{
    if (w->status != SP_OK)
        return;
    SP_ASSERT(offset <= w->len && w->len - offset >= 4);
    sp__le_put_u32(w->data + offset, v);
}

/* The next n bytes, or NULL after raising "truncated" for what. */
static const unsigned char *sp_rbuf_take(sp__rbuf_t *r, const char *what, size_t n,
                                         sp_status_t *st_p)
{
    const unsigned char *p = sp__rbuf_take(r, n);

    if (p == NULL)
        *st_p = SP_RAISE(SP_ERR_BAD_FORMAT,
                         "control message %s: truncated (%zu bytes needed at offset %zu, %zu left)",
                         what, n, r->off, r->len - r->off);
    return p;
}

sp_status_t sp__rbuf_get_u8(sp__rbuf_t *r, const char *what, uint8_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 1, &st);

    if (p != NULL)
        *v_p = p[0];
    return st;
}

sp_status_t sp__rbuf_get_u16(sp__rbuf_t *r, const char *what, uint16_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 2, &st);

    if (p != NULL)
        *v_p = sp__le_get_u16(p);
    return st;
}

sp_status_t sp__rbuf_get_u32(sp__rbuf_t *r, const char *what, uint32_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 4, &st);

    if (p != NULL)
        *v_p = sp__le_get_u32(p);
    return st;
}

sp_status_t sp__rbuf_get_u64(sp__rbuf_t *r, const char *what, uint64_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 8, &st);

    if (p != NULL)
        *v_p = sp__le_get_u64(p);
    return st;
}

sp_status_t sp__rbuf_get_raw(sp__rbuf_t *r, const char *what, void *dst, size_t len)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, len, &st);

    if (p != NULL && len > 0)
        memcpy(dst, p, len);
    return st;
}

sp_status_t sp__rbuf_get_bytes(sp__rbuf_t *r, const char *what, const void **data_p, size_t *len_p)
{
    size_t start = r->off;
    uint32_t len = 0;
    sp_status_t st = sp__rbuf_get_u32(r, what, &len);

    if (st != SP_OK)
        return st;
    if (len > r->len - r->off) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message %s: truncated (a %u-byte field at offset %zu, %zu left)",
                        what, len, start, r->len - start - 4);
    }
    *data_p = r->data + r->off;
    *len_p = len;
    r->off += len;
    return SP_OK;
}

sp_status_t sp__rbuf_get_str(sp__rbuf_t *r, const char *what, size_t max_len, char **str_p)
{
    size_t start = r->off, len = 0;
    const void *data = NULL;
    sp_status_t st = sp__rbuf_get_bytes(r, what, &data, &len);
    char *s;

    if (st != SP_OK)
        return st;
    if (max_len > 0 && len > max_len) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message %s: too long (a %zu-byte string, at most %zu allowed)",
                        what, len, max_len);
    }
    if (len > 0 && memchr(data, '\0', len) != NULL) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT, "control message %s: the string holds a NUL byte", what);
    }
    s = sp__malloc(len + 1);
    if (s == NULL) {
        r->off = start;
        return SP_RAISE(SP_ERR_NOMEM, "control message %s: cannot copy a %zu-byte string", what,
                        len);
    }
    if (len > 0)
        memcpy(s, data, len);
    s[len] = '\0';
    *str_p = s;
    return SP_OK;
}

sp_status_t sp__rbuf_done(const sp__rbuf_t *r, const char *what)
{
    if (r->off == r->len)
        return SP_OK;
    return SP_RAISE(SP_ERR_BAD_FORMAT,
                    "control message %s: too long (%zu bytes left over after %zu read)", what,
                    r->len - r->off, r->off);
}
