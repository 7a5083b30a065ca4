/*
 * Iterates the records of one stored partition segment. The segment is
 * decoded through a window buffer: a record is returned as pointers into
 * the window, so a record is copied once (decoder to window) and never again;
 * the window grows to hold the largest record seen. Every length read from
 * the segment is checked against what is really there before it is used.
 */
#include "shuffle_int.h"

#include <string.h>

#define SP_READER_WINDOW (256 * 1024)

struct sp_segment_reader {
    sp_decoder_t *dec;
    unsigned char *win;
    size_t cap;   /* window capacity */
    size_t start; /* first unconsumed byte */
    size_t end;   /* end of decoded bytes */
    bool eof;     /* decoder exhausted */
};

sp_status_t sp_segment_reader_create(sp_codec_t codec, sp_segment_reader_t **reader_p)
{
    sp_segment_reader_t *r = sp__calloc(1, sizeof(*r));
    sp_status_t st;

    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a segment reader");
    st = sp__decoder_create(codec, &r->dec);
    if (st != SP_OK)
        goto err_free;
    r->win = sp__malloc(SP_READER_WINDOW);
    if (r->win == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a segment reader's window");
        goto err_decoder;
    }
    r->cap = SP_READER_WINDOW;
    *reader_p = r;
    return SP_OK;

err_decoder:
    sp__decoder_destroy(r->dec);
err_free:
    sp__free(r);
    return st;
}

void sp_segment_reader_destroy(sp_segment_reader_t *reader)
{
    if (reader == NULL)
        return;
    sp__decoder_destroy(reader->dec);
    sp__free(reader->win);
    sp__free(reader);
}

void sp_segment_reader_reset(sp_segment_reader_t *reader, const void *data, size_t len)
{
    sp__decoder_reset(reader->dec, data, len);
    reader->start = reader->end = 0;
    reader->eof = false;
}

/* Makes at least need bytes available from start, or fewer at the end. */
static sp_status_t sp_reader_fill(sp_segment_reader_t *r, size_t need)
{
    while (r->end - r->start < need && !r->eof) {
        size_t produced = 0;
        sp_status_t st;

        if (r->start > 0 && r->cap - r->end < need) {
            memmove(r->win, r->win + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        if (r->cap < need) {
            size_t cap = r->cap;
            unsigned char *win;
            while (cap < need)
                cap *= 2;
            win = sp__realloc(r->win, cap);
            if (win == NULL)
                return SP_RAISE(SP_ERR_NOMEM, "no memory for a record of %zu bytes", need);
            r->win = win;
            r->cap = cap;
        }
        st = sp__decoder_read(r->dec, r->win + r->end, r->cap - r->end, &produced);
        if (st != SP_OK)
            return st;
        if (produced == 0)
            r->eof = true;
        r->end += produced;
    }
    return SP_OK;
}

sp_status_t sp_segment_reader_next(sp_segment_reader_t *reader, const void **key_p,
                                   size_t *key_len_p, const void **value_p, size_t *value_len_p,
                                   bool *more_p)
{
    sp_segment_reader_t *r = reader;
    uint64_t klen, vlen, total;
    sp_status_t st;

    st = sp_reader_fill(r, SP_RECORD_HEADER);
    if (st != SP_OK)
        return st;
    if (r->end == r->start) {
        *more_p = false;
        return SP_OK;
    }
    if (r->end - r->start < SP_RECORD_HEADER)
        return SP_RAISE(SP_ERR_CORRUPT, "segment ends inside a record header (%zu of %d bytes)",
                        r->end - r->start, SP_RECORD_HEADER);
    klen = sp__le_get_u32(r->win + r->start);
    vlen = sp__le_get_u32(r->win + r->start + 4);
    total = SP_RECORD_HEADER + klen + vlen;
    st = sp_reader_fill(r, (size_t)total);
    if (st != SP_OK)
        return st;
    if (r->end - r->start < total)
        return SP_RAISE(SP_ERR_CORRUPT,
                        "segment ends inside a record: key %llu + value %llu bytes, %zu left",
                        (unsigned long long)klen, (unsigned long long)vlen,
                        r->end - r->start - SP_RECORD_HEADER);
    *key_p = r->win + r->start + SP_RECORD_HEADER;
    *key_len_p = (size_t)klen;
    *value_p = r->win + r->start + SP_RECORD_HEADER + klen;
    *value_len_p = (size_t)vlen;
    r->start += (size_t)total;
    *more_p = true;
    return SP_OK;
}
