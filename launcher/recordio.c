/*
 * RecordIO decoder for the Mesos scheduler API's event stream.
 *
 * The stream is "<decimal length>\n<length bytes>" repeated; HTTP chunk
 * boundaries fall anywhere, so the decoder is a two-state machine fed with
 * arbitrary slices: reading a length (digits up to the newline) or reading
 * a record's bytes. A record that lies whole inside one slice is handed to
 * the callback in place; one split across slices is gathered in a buffer
 * sized to that record (never above max_record, so a hostile length cannot
 * make us allocate more than the cap).
 *
 * Strict on purpose: Mesos writes exactly "<digits>\n", so a sign, a space,
 * an empty or zero length, or more than 20 digits is a broken stream, and a
 * broken stream cannot be resynchronized (there is no marker to look for):
 * the error sticks until the caller resets the decoder for a new stream.
 */
#include "recordio.h"

#include "common_int.h"

#include <string.h>

typedef enum sp_rio_state {
    SP_RIO_LENGTH = 0, /* reading digits */
    SP_RIO_RECORD = 1, /* reading want bytes */
    SP_RIO_BROKEN = 2, /* a feed failed */
} sp_rio_state_t;

struct sp__recordio {
    size_t max_record;
    sp_rio_state_t state;
    unsigned digits; /* digits read of the current length */
    size_t want;     /* the current length (complete in SP_RIO_RECORD) */
    size_t have;     /* bytes of the current record gathered in buf */
    char *buf;
    size_t cap;
    size_t records; /* decoded since the last reset */
    size_t offset;  /* stream bytes consumed since the last reset */
};

sp_status_t sp__recordio_create(size_t max_record, sp__recordio_t **dec_p)
{
    sp__recordio_t *dec;

    if (max_record == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "RecordIO: the record size cap must be positive");
    if ((dec = sp__calloc(1, sizeof(*dec))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "RecordIO: no memory for a decoder");
    dec->max_record = max_record;
    *dec_p = dec;
    return SP_OK;
}

void sp__recordio_destroy(sp__recordio_t *dec)
{
    if (dec == NULL)
        return;
    sp__free(dec->buf);
    sp__free(dec);
}

void sp__recordio_reset(sp__recordio_t *dec)
{
    dec->state = SP_RIO_LENGTH;
    dec->digits = 0;
    dec->want = 0;
    dec->have = 0;
    dec->records = 0;
    dec->offset = 0;
}

static sp_status_t sp_rio_fail(sp__recordio_t *dec, sp_status_t st)
{
    dec->state = SP_RIO_BROKEN;
    return st;
}

/* One byte of a length; at the newline, the record starts. */
static sp_status_t sp_rio_length_byte(sp__recordio_t *dec, char c)
{
    if (c == '\n') {
        if (dec->digits == 0)
            return sp_rio_fail(dec, SP_RAISE(SP_ERR_BAD_FORMAT,
                                             "RecordIO: empty record length at stream byte %zu",
                                             dec->offset));
        if (dec->want == 0)
            return sp_rio_fail(dec, SP_RAISE(SP_ERR_BAD_FORMAT,
                                             "RecordIO: record length 0 at stream byte %zu",
                                             dec->offset));
        dec->state = SP_RIO_RECORD;
        dec->have = 0;
        return SP_OK;
    }
    if (c < '0' || c > '9')
        return sp_rio_fail(dec, SP_RAISE(SP_ERR_BAD_FORMAT,
                                         "RecordIO: byte 0x%02x in a record length at stream "
                                         "byte %zu (want decimal digits, then a newline)",
                                         (unsigned)(unsigned char)c, dec->offset));
    if (++dec->digits > SP__RECORDIO_MAX_DIGITS)
        return sp_rio_fail(dec, SP_RAISE(SP_ERR_BAD_FORMAT,
                                         "RecordIO: record length of more than %d digits at "
                                         "stream byte %zu",
                                         SP__RECORDIO_MAX_DIGITS, dec->offset));
    /* Past the cap the exact value no longer matters; saturating avoids overflow. */
    if (dec->want <= dec->max_record)
        dec->want = dec->want * 10 + (size_t)(c - '0');
    if (dec->want > dec->max_record)
        return sp_rio_fail(dec, SP_RAISE(SP_ERR_TOO_LARGE,
                                         "RecordIO: record length above the %zu-byte cap at "
                                         "stream byte %zu",
                                         dec->max_record, dec->offset));
    return SP_OK;
}

static sp_status_t sp_rio_emit(sp__recordio_t *dec, const char *rec, size_t len,
                               sp__recordio_cb_t cb, void *arg)
{
    sp_status_t st;

    dec->records++;
    dec->state = SP_RIO_LENGTH;
    dec->digits = 0;
    dec->want = 0;
    dec->have = 0;
    if ((st = cb(arg, rec, len)) != SP_OK)
        return sp_rio_fail(dec, st);
    return SP_OK;
}

sp_status_t sp__recordio_feed(sp__recordio_t *dec, const void *buf, size_t len,
                              sp__recordio_cb_t cb, void *arg)
{
    const char *p = buf, *end = p + len;
    sp_status_t st;

    if (dec->state == SP_RIO_BROKEN)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "RecordIO: the stream broke at byte %zu", dec->offset);
    while (p < end) {
        if (dec->state == SP_RIO_LENGTH) {
            if ((st = sp_rio_length_byte(dec, *p)) != SP_OK)
                return st;
            p++;
            dec->offset++;
            continue;
        }
        size_t need = dec->want - dec->have, avail = (size_t)(end - p);
        if (dec->have == 0 && avail >= need) {
            /* The whole record is in this slice: no copy. */
            dec->offset += need;
            p += need;
            if ((st = sp_rio_emit(dec, p - need, need, cb, arg)) != SP_OK)
                return st;
            continue;
        }
        if (dec->cap < dec->want) {
            char *nb = sp__realloc(dec->buf, dec->want);
            if (nb == NULL)
                return sp_rio_fail(
                    dec,
                    SP_RAISE(SP_ERR_NOMEM, "RecordIO: no memory for a %zu-byte record", dec->want));
            dec->buf = nb;
            dec->cap = dec->want;
        }
        size_t take = SP_MIN(need, avail);
        memcpy(dec->buf + dec->have, p, take);
        dec->have += take;
        dec->offset += take;
        p += take;
        if (dec->have == dec->want &&
            (st = sp_rio_emit(dec, dec->buf, dec->want, cb, arg)) != SP_OK)
            return st;
    }
    return SP_OK;
}

sp_status_t sp__recordio_finish(const sp__recordio_t *dec)
{
    if (dec->state == SP_RIO_BROKEN)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "RecordIO: the stream broke at byte %zu", dec->offset);
    if (dec->state == SP_RIO_RECORD)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "RecordIO: the stream was truncated %zu bytes into a %zu-byte record "
                        "(stream byte %zu)",
                        dec->have, dec->want, dec->offset);
    if (dec->digits > 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "RecordIO: the stream was truncated inside a record length (stream "
                        "byte %zu)",
                        dec->offset);
    return SP_OK;
}

size_t sp__recordio_records(const sp__recordio_t *dec) { return dec->records; }

size_t sp__recordio_offset(const sp__recordio_t *dec) { return dec->offset; }
