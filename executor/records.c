/*
 * Record helpers for graph jobs: integers and doubles in 8 bytes whose byte
 * order is their numeric order (so they sort correctly as keys under the
 * shuffle's byte order), and tuples of fields (length-prefixed, with null).
 * Every read of a tuple checks each length against the bytes there.
 */
#include "graph_int.h"

#include <string.h>

void sp_rec_put_u64(void *buf, uint64_t v)
{
    unsigned char *p = buf;

    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

uint64_t sp_rec_get_u64(const void *buf)
{
    const unsigned char *p = buf;
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/*
 * IEEE 754 bits, sign bit flipped for positives and every bit flipped for
 * negatives: unsigned comparison of the result is numeric comparison.
 */
void sp_rec_put_double(void *buf, double v)
{
    uint64_t bits;

    memcpy(&bits, &v, sizeof(bits));
    bits = (bits >> 63) != 0 ? ~bits : bits | (UINT64_C(1) << 63);
    sp_rec_put_u64(buf, bits);
}

double sp_rec_get_double(const void *buf)
{
    uint64_t bits = sp_rec_get_u64(buf);
    double v;

    bits = (bits >> 63) != 0 ? bits & ~(UINT64_C(1) << 63) : ~bits;
    memcpy(&v, &bits, sizeof(v));
    return v;
}

#define SP_REC_NULL UINT32_MAX

size_t sp_rec_tuple_pack(void *buf, size_t cap, const sp_rec_field_t *fields, size_t count)
{
    unsigned char *p = buf;
    size_t need = 0;

    for (size_t i = 0; i < count; i++) {
        size_t len = fields[i].null ? 0 : fields[i].len;
        if (len >= SP_REC_NULL || need > SIZE_MAX - 4 - len)
            return SIZE_MAX;
        need += 4 + len;
    }
    if (need > cap)
        return need;
    for (size_t i = 0; i < count; i++) {
        uint32_t len = fields[i].null ? SP_REC_NULL : (uint32_t)fields[i].len;
        p[0] = (unsigned char)len;
        p[1] = (unsigned char)(len >> 8);
        p[2] = (unsigned char)(len >> 16);
        p[3] = (unsigned char)(len >> 24);
        p += 4;
        if (!fields[i].null && fields[i].len > 0) {
            memcpy(p, fields[i].data, fields[i].len);
            p += fields[i].len;
        }
    }
    return need;
}

bool sp_rec_tuple_field(const void *tuple, size_t len, size_t index, sp_rec_field_t *field_p)
{
    const unsigned char *p = tuple;
    size_t off = 0;

    for (size_t i = 0;; i++) {
        uint32_t flen;
        if (off > len || len - off < 4)
            return false;
        flen = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
               (uint32_t)p[off + 3] << 24;
        off += 4;
        if (flen != SP_REC_NULL && flen > len - off)
            return false;
        if (i == index) {
            field_p->null = flen == SP_REC_NULL;
            field_p->data = p + off;
            field_p->len = flen == SP_REC_NULL ? 0 : flen;
            return true;
        }
        if (flen != SP_REC_NULL)
            off += flen;
    }
}
