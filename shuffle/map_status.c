/*
 * Map statuses on the wire, their deep copy, and the block lists built from
 * them for a reduce partition range.
 *
 * The wire form (docs/FORMATS.md, "Map status (wire form)") comes in two
 * bodies after one header. The full body carries every partition's length,
 * record count and checksum. The compact body, used above a partition-count
 * threshold, keeps the partitions larger than exact_bytes exactly and
 * describes the rest by an average and a bitmap of the empty ones, so a
 * status of 10^5 mostly small partitions is a few kilobytes instead of
 * 2.4 MB (Spark's HighlyCompressedMapStatus does the same). The averages
 * are of non-empty partitions, so a non-empty partition never reads back
 * as empty and is never skipped by a reader.
 *
 * Deserialization reads from the network: it parses and checks the whole
 * buffer (every length against the bytes left, every count, every exact
 * entry against the bitmap) before it allocates anything, so a bad buffer
 * costs no allocation and every allocation is bounded by the buffer's size.
 * Truncations name the field that did not fit.
 *
 * A block list copies the strings of the statuses it uses into one buffer
 * so that it outlives them; the tracker hands lists out and may replace the
 * statuses at once.
 */
#include "rbuf.h"
#include "shuffle_int.h"

#include <stdio.h>
#include <string.h>

#define SP_MS_MAGIC          UINT32_C(0x534d5053) /* "SPMS" */
#define SP_MS_VERSION        1
#define SP_MS_FLAG_COMPACT   0x01u
#define SP_MS_FLAG_APPROX    0x02u /* full body without checksums */
#define SP_MS_FIXED          36    /* header bytes before the strings */
#define SP_MS_MAX_PARTITIONS (UINT32_C(1) << 24)
#define SP_MS_MAX_STRING     UINT16_MAX
#define SP_MS_EXACT_ENTRY    20 /* u32 partition, u64 length, u64 records */

/* ---- deep copy ---- */

/* Copies n bytes of src (NULL gives NULL); clears *ok when out of memory. */
static void *sp_bytes_dup(const void *src, size_t n, bool *ok)
{
    void *dst;

    if (src == NULL)
        return NULL;
    dst = sp__malloc(n > 0 ? n : 1);
    if (dst == NULL) {
        *ok = false;
        return NULL;
    }
    if (n > 0)
        memcpy(dst, src, n);
    return dst;
}

static char *sp_string_dup(const char *src, bool *ok)
{
    return sp_bytes_dup(src, src != NULL ? strlen(src) + 1 : 0, ok);
}

sp_status_t sp_map_status_dup(const sp_map_status_t *status, sp_map_status_t **copy_p)
{
    size_t bytes;
    sp_map_status_t *c;
    bool ok = true;

    if (status == NULL || copy_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sp_map_status_dup: %s is NULL",
                        status == NULL ? "status" : "copy_p");
    bytes = (size_t)status->partitions * sizeof(uint64_t);
    c = sp__malloc(sizeof(*c));
    if (c == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to copy the status of shuffle %llu map %llu",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id);
    *c = *status;
    c->lengths = sp_bytes_dup(status->lengths, bytes, &ok);
    c->records = sp_bytes_dup(status->records, bytes, &ok);
    c->checksums = sp_bytes_dup(status->checksums, bytes, &ok);
    c->data_path = sp_string_dup(status->data_path, &ok);
    c->index_path = sp_string_dup(status->index_path, &ok);
    c->checksum_path = sp_string_dup(status->checksum_path, &ok);
    c->address = sp_string_dup(status->address, &ok);
    c->rkey = sp_bytes_dup(status->rkey, status->rkey_len, &ok);
    if (!ok) {
        sp_map_status_destroy(c);
        return SP_RAISE(SP_ERR_NOMEM,
                        "no memory to copy the status of shuffle %llu map %llu (%u partitions)",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        status->partitions);
    }
    *copy_p = c;
    return SP_OK;
}

/* ---- serialization ---- */

static bool sp_ends_with_index(const char *path, size_t len)
{
    return len >= 6 && memcmp(path + len - 6, ".index", 6) == 0;
}

/* Average of sum over n, rounded to nearest; 0 when n is 0. */
static uint64_t sp_average(unsigned __int128 sum, uint64_t n)
{
    if (n == 0)
        return 0;
    return (uint64_t)((sum + n / 2) / n);
}

static unsigned char *sp_put_string(unsigned char *p, const void *s, size_t len)
{
    sp__le_put_u16(p, (uint16_t)len);
    if (len > 0)
        memcpy(p + 2, s, len);
    return p + 2 + len;
}

/* What the compact body says, computed from the status. */
typedef struct sp_ms_compact {
    uint32_t empties;     /* partitions of length 0 */
    uint32_t exact;       /* partitions longer than exact_bytes */
    uint64_t avg_length;  /* average length of the others */
    uint64_t avg_records; /* average records of the others */
} sp_ms_compact_t;

static void sp_ms_compact_scan(const sp_map_status_t *s, uint64_t exact_bytes, sp_ms_compact_t *c)
{
    unsigned __int128 sum_len = 0, sum_rec = 0;
    uint64_t averaged = 0;

    memset(c, 0, sizeof(*c));
    for (uint32_t i = 0; i < s->partitions; i++) {
        if (s->lengths[i] == 0) {
            c->empties++;
        } else if (s->lengths[i] > exact_bytes) {
            c->exact++;
        } else {
            sum_len += s->lengths[i];
            sum_rec += s->records[i];
            averaged++;
        }
    }
    c->avg_length = sp_average(sum_len, averaged);
    c->avg_records = sp_average(sum_rec, averaged);
}

sp_status_t sp_map_status_serialize(const sp_map_status_t *status, uint32_t compact_threshold,
                                    uint64_t exact_bytes, void **buf_p, size_t *len_p)
{
    size_t alen, ilen, len, p_count;
    sp_ms_compact_t c = {0, 0, 0, 0};
    unsigned char *buf, *p;
    bool compact;
    uint8_t flags = 0;

    if (status == NULL || buf_p == NULL || len_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sp_map_status_serialize: %s is NULL",
                        status == NULL  ? "status"
                        : buf_p == NULL ? "buf_p"
                                        : "len_p");
    if (status->partitions == 0 || status->partitions > SP_MS_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "map status of shuffle %llu map %llu: %u partitions, not in 1..%u",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        status->partitions, SP_MS_MAX_PARTITIONS);
    if (status->lengths == NULL || status->records == NULL ||
        (status->checksums == NULL && !status->approximate))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "map status of shuffle %llu map %llu has no %s array",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        status->lengths == NULL   ? "lengths"
                        : status->records == NULL ? "records"
                                                  : "checksums");
    if ((unsigned)status->codec > SP_CODEC_ZSTD ||
        (status->checksum_kind != SP_CHECKSUM_CRC32C && status->checksum_kind != SP_CHECKSUM_XXH3))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "map status of shuffle %llu map %llu: unknown codec %d or checksum kind %d",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        (int)status->codec, (int)status->checksum_kind);
    if (status->index_path == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "map status of shuffle %llu map %llu has no index_path",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id);
    ilen = strlen(status->index_path);
    alen = status->address != NULL ? strlen(status->address) : 0;
    if (!sp_ends_with_index(status->index_path, ilen))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "map status of shuffle %llu map %llu: index_path '%s' does not end in "
                        "'.index' (the data and checksum paths are derived from it)",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        status->index_path);
    if (ilen > SP_MS_MAX_STRING || alen > SP_MS_MAX_STRING ||
        (status->rkey != NULL && status->rkey_len > SP_MS_MAX_STRING))
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "map status of shuffle %llu map %llu: address %zu, index_path %zu or rkey "
                        "%zu bytes long; the wire form allows %u",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        alen, ilen, status->rkey != NULL ? status->rkey_len : 0, SP_MS_MAX_STRING);

    p_count = status->partitions;
    compact = status->partitions > compact_threshold;
    len = SP_MS_FIXED + 2 + alen + 2 + ilen + 2 + (status->rkey != NULL ? status->rkey_len : 0);
    if (compact) {
        sp_ms_compact_scan(status, exact_bytes, &c);
        len += 16 + (p_count + 7) / 8 + 4 + (size_t)c.exact * SP_MS_EXACT_ENTRY;
        flags |= SP_MS_FLAG_COMPACT;
    } else {
        len += (status->approximate ? 16 : 24) * p_count;
        if (status->approximate)
            flags |= SP_MS_FLAG_APPROX;
    }
    buf = sp__malloc(len);
    if (buf == NULL)
        return SP_RAISE(SP_ERR_NOMEM,
                        "no memory for the %zu-byte wire form of shuffle %llu map %llu", len,
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id);

    sp__le_put_u32(buf, SP_MS_MAGIC);
    buf[4] = SP_MS_VERSION;
    buf[5] = flags;
    buf[6] = (unsigned char)status->codec;
    buf[7] = (unsigned char)status->checksum_kind;
    sp__le_put_u64(buf + 8, status->shuffle_id);
    sp__le_put_u64(buf + 16, status->map_id);
    sp__le_put_u32(buf + 24, status->attempt);
    sp__le_put_u32(buf + 28, status->partitions);
    sp__le_put_u32(buf + 32, status->executor_id);
    p = buf + SP_MS_FIXED;
    p = sp_put_string(p, status->address, alen);
    p = sp_put_string(p, status->index_path, ilen);
    p = sp_put_string(p, status->rkey, status->rkey != NULL ? status->rkey_len : 0);
    if (compact) {
        unsigned char *bitmap;

        sp__le_put_u64(p, c.avg_length);
        sp__le_put_u64(p + 8, c.avg_records);
        bitmap = p + 16;
        memset(bitmap, 0, (p_count + 7) / 8);
        for (uint32_t i = 0; i < status->partitions; i++)
            if (status->lengths[i] == 0)
                bitmap[i / 8] = (unsigned char)(bitmap[i / 8] | 1u << (i % 8));
        p = bitmap + (p_count + 7) / 8;
        sp__le_put_u32(p, c.exact);
        p += 4;
        for (uint32_t i = 0; i < status->partitions; i++) {
            if (status->lengths[i] > exact_bytes) {
                sp__le_put_u32(p, i);
                sp__le_put_u64(p + 4, status->lengths[i]);
                sp__le_put_u64(p + 12, status->records[i]);
                p += SP_MS_EXACT_ENTRY;
            }
        }
    } else {
        for (uint32_t i = 0; i < status->partitions; i++, p += 8)
            sp__le_put_u64(p, status->lengths[i]);
        for (uint32_t i = 0; i < status->partitions; i++, p += 8)
            sp__le_put_u64(p, status->records[i]);
        for (uint32_t i = 0; !status->approximate && i < status->partitions; i++, p += 8)
            sp__le_put_u64(p, status->checksums[i]);
    }
    SP_ASSERT((size_t)(p - buf) == len);
    *buf_p = buf;
    *len_p = len;
    return SP_OK;
}

/* ---- deserialization ---- */

/*
 * Takes n bytes of field from the common bounded reader (common/rbuf.h) and
 * returns where they are; the one place truncation is found.
 */
static sp_status_t sp_ms_bytes(sp__rbuf_t *r, size_t n, const char *field,
                               const unsigned char **p_p)
{
    const unsigned char *p = sp__rbuf_take(r, n);

    if (p == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status truncated: %s needs %zu bytes at offset %zu, %zu left", field,
                        n, r->off, sp__rbuf_left(r));
    *p_p = p;
    return SP_OK;
}

static sp_status_t sp_ms_u8(sp__rbuf_t *r, const char *field, uint8_t *v_p)
{
    const unsigned char *p = NULL;
    sp_status_t st = sp_ms_bytes(r, 1, field, &p);

    if (st == SP_OK)
        *v_p = p[0];
    return st;
}

static sp_status_t sp_ms_u32(sp__rbuf_t *r, const char *field, uint32_t *v_p)
{
    const unsigned char *p = NULL;
    sp_status_t st = sp_ms_bytes(r, 4, field, &p);

    if (st == SP_OK)
        *v_p = sp__le_get_u32(p);
    return st;
}

static sp_status_t sp_ms_u64(sp__rbuf_t *r, const char *field, uint64_t *v_p)
{
    const unsigned char *p = NULL;
    sp_status_t st = sp_ms_bytes(r, 8, field, &p);

    if (st == SP_OK)
        *v_p = sp__le_get_u64(p);
    return st;
}

/* A u16-length-prefixed byte string; text strings may not contain NUL. */
typedef struct sp_ms_string {
    const unsigned char *bytes;
    size_t len;
} sp_ms_string_t;

static sp_status_t sp_ms_string(sp__rbuf_t *r, const char *len_field, const char *field, bool text,
                                sp_ms_string_t *s)
{
    const unsigned char *p = NULL;
    sp_status_t st = sp_ms_bytes(r, 2, len_field, &p);

    if (st != SP_OK)
        return st;
    s->len = sp__le_get_u16(p);
    st = sp_ms_bytes(r, s->len, field, &s->bytes);
    if (st != SP_OK)
        return st;
    if (text && memchr(s->bytes, '\0', s->len) != NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: %s at offset %zu contains a NUL byte",
                        field, r->off - s->len);
    return SP_OK;
}

static bool sp_bit(const unsigned char *bitmap, uint32_t i)
{
    return (bitmap[i / 8] >> (i % 8)) & 1u;
}

/* Everything a wire form says, checked, pointing into the buffer. */
typedef struct sp_ms_parsed {
    uint8_t flags, codec, kind;
    uint64_t shuffle_id, map_id;
    uint32_t attempt, partitions, executor_id;
    sp_ms_string_t address, index_path, rkey;
    /* full */
    const unsigned char *lengths, *records, *checksums;
    /* compact */
    uint64_t avg_length, avg_records;
    const unsigned char *bitmap, *exact;
    uint32_t exact_count;
} sp_ms_parsed_t;

static sp_status_t sp_ms_parse_header(sp__rbuf_t *r, sp_ms_parsed_t *m)
{
    uint32_t magic;
    uint8_t version;
    sp_status_t st;

    if ((st = sp_ms_u32(r, "magic", &magic)) != SP_OK)
        return st;
    if (magic != SP_MS_MAGIC)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: bad magic 0x%08x (expected 0x%08x)", magic,
                        SP_MS_MAGIC);
    if ((st = sp_ms_u8(r, "version", &version)) != SP_OK)
        return st;
    if (version != SP_MS_VERSION)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: unsupported version %u (expected %u)",
                        version, SP_MS_VERSION);
    if ((st = sp_ms_u8(r, "flags", &m->flags)) != SP_OK)
        return st;
    if ((m->flags & ~(SP_MS_FLAG_COMPACT | SP_MS_FLAG_APPROX)) != 0 ||
        m->flags == (SP_MS_FLAG_COMPACT | SP_MS_FLAG_APPROX))
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: bad flags 0x%02x", m->flags);
    if ((st = sp_ms_u8(r, "codec", &m->codec)) != SP_OK)
        return st;
    if (m->codec > SP_CODEC_ZSTD)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: unknown codec %u", m->codec);
    if ((st = sp_ms_u8(r, "checksum kind", &m->kind)) != SP_OK)
        return st;
    if (m->kind != SP_CHECKSUM_CRC32C && m->kind != SP_CHECKSUM_XXH3)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "map status: unknown checksum kind %u", m->kind);
    if ((st = sp_ms_u64(r, "shuffle_id", &m->shuffle_id)) != SP_OK ||
        (st = sp_ms_u64(r, "map_id", &m->map_id)) != SP_OK ||
        (st = sp_ms_u32(r, "attempt", &m->attempt)) != SP_OK ||
        (st = sp_ms_u32(r, "partitions", &m->partitions)) != SP_OK)
        return st;
    if (m->partitions == 0 || m->partitions > SP_MS_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: partitions %u not in 1..%u",
                        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id,
                        m->partitions, SP_MS_MAX_PARTITIONS);
    if ((st = sp_ms_u32(r, "executor_id", &m->executor_id)) != SP_OK ||
        (st = sp_ms_string(r, "address length", "address", true, &m->address)) != SP_OK ||
        (st = sp_ms_string(r, "index_path length", "index_path", true, &m->index_path)) != SP_OK ||
        (st = sp_ms_string(r, "rkey length", "rkey", false, &m->rkey)) != SP_OK)
        return st;
    if (!sp_ends_with_index((const char *)m->index_path.bytes, m->index_path.len))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: index_path '%.*s' does not end in "
                        "'.index'",
                        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id,
                        (int)m->index_path.len, (const char *)m->index_path.bytes);
    return SP_OK;
}

static sp_status_t sp_ms_parse_full(sp__rbuf_t *r, sp_ms_parsed_t *m)
{
    size_t array = 8 * (size_t)m->partitions;
    sp_status_t st;

    if ((st = sp_ms_bytes(r, array, "lengths", &m->lengths)) != SP_OK ||
        (st = sp_ms_bytes(r, array, "records", &m->records)) != SP_OK)
        return st;
    if ((m->flags & SP_MS_FLAG_APPROX) == 0 &&
        (st = sp_ms_bytes(r, array, "checksums", &m->checksums)) != SP_OK)
        return st;
    return SP_OK;
}

static sp_status_t sp_ms_parse_compact(sp__rbuf_t *r, sp_ms_parsed_t *m)
{
    uint32_t empties = 0, averaged, prev = 0;
    sp_status_t st;

    if ((st = sp_ms_u64(r, "average length", &m->avg_length)) != SP_OK ||
        (st = sp_ms_u64(r, "average records", &m->avg_records)) != SP_OK ||
        (st = sp_ms_bytes(r, ((size_t)m->partitions + 7) / 8, "empty bitmap", &m->bitmap)) != SP_OK)
        return st;
    for (uint32_t i = 0; i < m->partitions; i++)
        empties += sp_bit(m->bitmap, i);
    if (m->partitions % 8 != 0 && (m->bitmap[m->partitions / 8] >> (m->partitions % 8)) != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: empty bitmap has bits set past "
                        "partition %u",
                        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id,
                        m->partitions - 1);
    if ((st = sp_ms_u32(r, "exact count", &m->exact_count)) != SP_OK)
        return st;
    if (m->exact_count > m->partitions - empties)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: %u exact partitions but only %u of "
                        "%u are non-empty",
                        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id,
                        m->exact_count, m->partitions - empties, m->partitions);
    if ((st = sp_ms_bytes(r, (size_t)m->exact_count * SP_MS_EXACT_ENTRY, "exact entries",
                          &m->exact)) != SP_OK)
        return st;
    for (uint32_t k = 0; k < m->exact_count; k++) {
        const unsigned char *e = m->exact + (size_t)k * SP_MS_EXACT_ENTRY;
        uint32_t part = sp__le_get_u32(e);

        if (part >= m->partitions || (k > 0 && part <= prev) || sp_bit(m->bitmap, part) ||
            sp__le_get_u64(e + 4) == 0)
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "map status of shuffle %llu map %llu: exact entry %u (partition %u, "
                            "length %llu) is %s",
                            (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id, k,
                            part, (unsigned long long)sp__le_get_u64(e + 4),
                            part >= m->partitions     ? "past the last partition"
                            : k > 0 && part <= prev   ? "not after the entry before it"
                            : sp_bit(m->bitmap, part) ? "marked empty"
                                                      : "empty");
        prev = part;
    }
    /* A non-empty partition must never read back as empty (a reader would skip it). */
    averaged = m->partitions - empties - m->exact_count;
    if ((averaged > 0 && m->avg_length == 0) ||
        (averaged == 0 && (m->avg_length != 0 || m->avg_records != 0)))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: average length %llu, records %llu "
                        "for %u averaged partitions",
                        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id,
                        (unsigned long long)m->avg_length, (unsigned long long)m->avg_records,
                        averaged);
    return SP_OK;
}

/* NUL-terminated copy of n bytes of s followed by suffix (may be ""). */
static char *sp_ms_cstr(const unsigned char *s, size_t n, const char *suffix)
{
    size_t slen = strlen(suffix);
    char *out = sp__malloc(n + slen + 1);

    if (out != NULL) {
        memcpy(out, s, n);
        memcpy(out + n, suffix, slen + 1);
    }
    return out;
}

static sp_status_t sp_ms_build(const sp_ms_parsed_t *m, sp_map_status_t **status_p)
{
    size_t array = 8 * (size_t)m->partitions, base = m->index_path.len - 6;
    bool compact = (m->flags & SP_MS_FLAG_COMPACT) != 0;
    bool checksums = (m->flags & (SP_MS_FLAG_COMPACT | SP_MS_FLAG_APPROX)) == 0;
    sp_map_status_t *s = sp__calloc(1, sizeof(*s));

    if (s == NULL)
        goto err_nomem;
    s->shuffle_id = m->shuffle_id;
    s->map_id = m->map_id;
    s->attempt = m->attempt;
    s->partitions = m->partitions;
    s->codec = (sp_codec_t)m->codec;
    s->checksum_kind = (sp_checksum_kind_t)m->kind;
    s->executor_id = m->executor_id;
    s->approximate = !checksums;
    s->lengths = sp__malloc(array);
    s->records = sp__malloc(array);
    if (s->lengths == NULL || s->records == NULL)
        goto err_destroy;
    if (checksums && (s->checksums = sp__malloc(array)) == NULL)
        goto err_destroy;
    s->index_path = sp_ms_cstr(m->index_path.bytes, m->index_path.len, "");
    s->data_path = sp_ms_cstr(m->index_path.bytes, base, ".data");
    s->checksum_path = sp_ms_cstr(m->index_path.bytes, base, ".checksum");
    if (s->index_path == NULL || s->data_path == NULL || s->checksum_path == NULL)
        goto err_destroy;
    if (m->address.len > 0 &&
        (s->address = sp_ms_cstr(m->address.bytes, m->address.len, "")) == NULL)
        goto err_destroy;
    if (m->rkey.len > 0) {
        if ((s->rkey = sp__malloc(m->rkey.len)) == NULL)
            goto err_destroy;
        memcpy(s->rkey, m->rkey.bytes, m->rkey.len);
        s->rkey_len = m->rkey.len;
    }

    if (compact) {
        for (uint32_t i = 0; i < m->partitions; i++) {
            bool empty = sp_bit(m->bitmap, i);

            s->lengths[i] = empty ? 0 : m->avg_length;
            s->records[i] = empty ? 0 : m->avg_records;
        }
        for (uint32_t k = 0; k < m->exact_count; k++) {
            const unsigned char *e = m->exact + (size_t)k * SP_MS_EXACT_ENTRY;
            uint32_t part = sp__le_get_u32(e);

            s->lengths[part] = sp__le_get_u64(e + 4);
            s->records[part] = sp__le_get_u64(e + 12);
        }
    } else {
        for (uint32_t i = 0; i < m->partitions; i++) {
            s->lengths[i] = sp__le_get_u64(m->lengths + 8 * (size_t)i);
            s->records[i] = sp__le_get_u64(m->records + 8 * (size_t)i);
            if (checksums)
                s->checksums[i] = sp__le_get_u64(m->checksums + 8 * (size_t)i);
        }
    }
    *status_p = s;
    return SP_OK;

err_destroy:
    sp_map_status_destroy(s);
err_nomem:
    return SP_RAISE(
        SP_ERR_NOMEM, "no memory for the map status of shuffle %llu map %llu (%u partitions)",
        (unsigned long long)m->shuffle_id, (unsigned long long)m->map_id, m->partitions);
}

sp_status_t sp_map_status_deserialize(const void *buf, size_t len, sp_map_status_t **status_p)
{
    sp__rbuf_t r;
    sp_ms_parsed_t m;
    sp_status_t st;

    if ((buf == NULL && len > 0) || status_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sp_map_status_deserialize: %s is NULL",
                        status_p == NULL ? "status_p" : "buf");
    sp__rbuf_init(&r, buf, len);
    memset(&m, 0, sizeof(m));
    st = sp_ms_parse_header(&r, &m);
    if (st != SP_OK)
        return st;
    if (m.flags & SP_MS_FLAG_COMPACT)
        st = sp_ms_parse_compact(&r, &m);
    else
        st = sp_ms_parse_full(&r, &m);
    if (st != SP_OK)
        return st;
    if (r.off != r.len)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "map status of shuffle %llu map %llu: %zu trailing bytes after offset %zu",
                        (unsigned long long)m.shuffle_id, (unsigned long long)m.map_id,
                        r.len - r.off, r.off);
    return sp_ms_build(&m, status_p);
}

/* ---- block lists ---- */

sp_status_t sp_block_list_from_statuses(const sp_map_status_t *const *statuses, size_t count,
                                        uint32_t reduce_start, uint32_t reduce_end,
                                        sp_block_list_t **list_p)
{
    size_t blocks = 0, arena = 0, b = 0;
    sp_block_list_t *list;
    char *next;

    if ((statuses == NULL && count > 0) || list_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sp_block_list_from_statuses: %s is NULL",
                        list_p == NULL ? "list_p" : "statuses");
    if (reduce_start > reduce_end)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block list: reduce range [%u, %u) is reversed",
                        reduce_start, reduce_end);
    /* First pass: check, count the blocks and the bytes of the strings they need. */
    for (size_t i = 0; i < count; i++) {
        const sp_map_status_t *s = statuses[i];
        size_t n = 0;

        if (s == NULL || s->lengths == NULL || s->records == NULL)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "block list: status %zu is %s", i,
                            s == NULL ? "NULL" : "missing its lengths or records");
        if (reduce_end > s->partitions)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "block list: reduce range [%u, %u) is past the %u partitions of "
                            "shuffle %llu map %llu",
                            reduce_start, reduce_end, s->partitions,
                            (unsigned long long)s->shuffle_id, (unsigned long long)s->map_id);
        for (uint32_t r = reduce_start; r < reduce_end; r++)
            n += s->lengths[r] > 0;
        if (n == 0)
            continue;
        blocks += n;
        if (s->address != NULL)
            arena += strlen(s->address) + 1;
        if (s->index_path != NULL)
            arena += strlen(s->index_path) + 1;
        if (s->rkey != NULL)
            arena += s->rkey_len; /* an empty rkey becomes NULL */
    }
    if (blocks > SIZE_MAX / sizeof(sp_block_ref_t))
        return SP_RAISE(SP_ERR_NOMEM, "block list of %zu blocks does not fit in memory", blocks);

    list = sp__calloc(1, sizeof(*list));
    if (list == NULL)
        goto err_nomem;
    if (blocks > 0 && (list->blocks = sp__malloc(blocks * sizeof(sp_block_ref_t))) == NULL)
        goto err_free_list;
    if (arena > 0 && (list->priv = sp__malloc(arena)) == NULL)
        goto err_free_blocks;

    next = list->priv;
    for (size_t i = 0; i < count; i++) {
        const sp_map_status_t *s = statuses[i];
        const char *address = NULL, *index_path = NULL;
        const unsigned char *rkey = NULL;
        size_t first = b;

        uint64_t offset = SP_DATA_HEADER;

        /* Offsets are known only when every length before is exact. */
        for (uint32_t r = 0; !s->approximate && r < reduce_start; r++)
            offset += s->lengths[r];
        for (uint32_t r = reduce_start; r < reduce_end; r++) {
            sp_block_ref_t *ref;

            if (s->lengths[r] == 0)
                continue;
            ref = &list->blocks[b++];
            ref->exact = !s->approximate && s->checksums != NULL;
            ref->offset = ref->exact ? offset : 0;
            ref->checksum = ref->exact ? s->checksums[r] : 0;
            offset += s->lengths[r];
            ref->shuffle_id = s->shuffle_id;
            ref->map_id = s->map_id;
            ref->reduce_id = r;
            ref->executor_id = s->executor_id;
            ref->size = s->lengths[r];
            ref->records = s->records[r];
            ref->codec = s->codec;
            ref->checksum_kind = s->checksum_kind;
            ref->rkey_len = s->rkey != NULL ? s->rkey_len : 0;
        }
        if (b == first)
            continue;
        /* The strings are copied once per status and shared by its blocks. */
        if (s->address != NULL) {
            size_t n = strlen(s->address) + 1;
            memcpy(next, s->address, n);
            address = next;
            next += n;
        }
        if (s->index_path != NULL) {
            size_t n = strlen(s->index_path) + 1;
            memcpy(next, s->index_path, n);
            index_path = next;
            next += n;
        }
        if (s->rkey != NULL && s->rkey_len > 0) {
            memcpy(next, s->rkey, s->rkey_len);
            rkey = (const unsigned char *)next;
            next += s->rkey_len;
        }
        for (size_t k = first; k < b; k++) {
            list->blocks[k].address = address;
            list->blocks[k].index_path = index_path;
            list->blocks[k].rkey = rkey;
        }
    }
    SP_ASSERT(b == blocks && (arena == 0 || next == (char *)list->priv + arena));
    list->count = blocks;
    *list_p = list;
    return SP_OK;

err_free_blocks:
    sp__free(list->blocks);
err_free_list:
    sp__free(list);
err_nomem:
    return SP_RAISE(SP_ERR_NOMEM, "no memory for a block list of %zu blocks over %zu map outputs",
                    blocks, count);
}

void sp_block_list_destroy(sp_block_list_t *list)
{
    if (list == NULL)
        return;
    sp__free(list->blocks);
    sp__free(list->priv);
    sp__free(list);
}
