/*
 * Map status wire form, deep copy and block lists, against reference values
 * computed here from the status arrays: full round trips are exact; compact
 * ones give the exact sizes above exact_bytes, 0 for empty partitions and
 * the rounded average of the rest. Every truncation of a small status, and
 * random byte flips, must come back as SP_ERR_BAD_FORMAT (or SP_OK) and
 * never read outside the buffer: each one is parsed from a heap copy of
 * exactly its length so that the ASan build catches any over-read. Every
 * allocation of every call is failed in turn.
 */
/* LABELS: unit */
#include <spate/shuffle.h>

#include "common_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_BASE "/var/spate/local/0a/shuffle_3_17"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic across runs. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static char *xstrdup(const char *s)
{
    char *c = malloc(strlen(s) + 1);

    assert_non_null(c);
    strcpy(c, s);
    return c;
}

/*
 * A status built by hand. Partition i: empty with probability pct_empty %,
 * larger than big_at (exact in the compact form) with probability pct_big %,
 * otherwise 1..small_max bytes.
 */
static sp_map_status_t *make_status(uint32_t partitions, unsigned pct_empty, unsigned pct_big,
                                    uint64_t small_max, uint64_t big_at, const char *address,
                                    size_t rkey_len)
{
    sp_map_status_t *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    s->shuffle_id = 3;
    s->map_id = 17;
    s->attempt = 2;
    s->partitions = partitions;
    s->codec = SP_CODEC_LZ4;
    s->checksum_kind = SP_CHECKSUM_CRC32C;
    s->lengths = calloc(partitions, sizeof(uint64_t));
    s->records = calloc(partitions, sizeof(uint64_t));
    s->checksums = calloc(partitions, sizeof(uint64_t));
    assert_true(s->lengths && s->records && s->checksums);
    for (uint32_t i = 0; i < partitions; i++) {
        unsigned dice = (unsigned)(rnd() % 100);

        if (dice < pct_empty) {
            s->lengths[i] = 0;
            s->records[i] = 0;
        } else if (dice < pct_empty + pct_big) {
            s->lengths[i] = big_at + 1 + rnd() % (1u << 30);
            s->records[i] = 1 + rnd() % 1000000;
        } else {
            s->lengths[i] = 1 + rnd() % small_max;
            s->records[i] = 1 + rnd() % 100;
        }
        s->checksums[i] = rnd();
    }
    s->data_path = xstrdup(PATH_BASE ".data");
    s->index_path = xstrdup(PATH_BASE ".index");
    s->checksum_path = xstrdup(PATH_BASE ".checksum");
    s->executor_id = 5;
    s->address = address != NULL ? xstrdup(address) : NULL;
    if (rkey_len > 0) {
        s->rkey = malloc(rkey_len);
        assert_non_null(s->rkey);
        for (size_t i = 0; i < rkey_len; i++)
            s->rkey[i] = (unsigned char)rnd();
        s->rkey_len = rkey_len;
    }
    return s;
}

static void assert_string_or_null(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* Everything but the per-partition arrays. */
static void assert_header_equal(const sp_map_status_t *a, const sp_map_status_t *b)
{
    assert_int_equal(a->shuffle_id, b->shuffle_id);
    assert_int_equal(a->map_id, b->map_id);
    assert_int_equal(a->attempt, b->attempt);
    assert_int_equal(a->partitions, b->partitions);
    assert_int_equal(a->codec, b->codec);
    assert_int_equal(a->checksum_kind, b->checksum_kind);
    assert_int_equal(a->executor_id, b->executor_id);
    assert_string_equal(a->index_path, b->index_path);
    assert_string_equal(a->data_path, b->data_path);
    assert_string_equal(a->checksum_path, b->checksum_path);
    assert_string_or_null(a->address, b->address);
    assert_int_equal(a->rkey_len, b->rkey_len);
    if (a->rkey_len > 0)
        assert_memory_equal(a->rkey, b->rkey, a->rkey_len);
    else
        assert_null(b->rkey);
}

static void assert_full_equal(const sp_map_status_t *a, const sp_map_status_t *b)
{
    size_t bytes = (size_t)a->partitions * 8;

    assert_header_equal(a, b);
    assert_false(b->approximate);
    assert_memory_equal(a->lengths, b->lengths, bytes);
    assert_memory_equal(a->records, b->records, bytes);
    assert_non_null(b->checksums);
    assert_memory_equal(a->checksums, b->checksums, bytes);
}

static uint64_t avg_round(unsigned __int128 sum, uint64_t n)
{
    return n == 0 ? 0 : (uint64_t)((sum + n / 2) / n);
}

/* What the compact form of s must read back as, checked partition by partition. */
static void assert_compact_equal(const sp_map_status_t *s, uint64_t exact_bytes,
                                 const sp_map_status_t *c)
{
    unsigned __int128 sum_len = 0, sum_rec = 0;
    uint64_t n = 0, avg_len, avg_rec;

    assert_header_equal(s, c);
    assert_true(c->approximate);
    assert_null(c->checksums);
    for (uint32_t i = 0; i < s->partitions; i++) {
        if (s->lengths[i] > 0 && s->lengths[i] <= exact_bytes) {
            sum_len += s->lengths[i];
            sum_rec += s->records[i];
            n++;
        }
    }
    avg_len = avg_round(sum_len, n);
    avg_rec = avg_round(sum_rec, n);
    for (uint32_t i = 0; i < s->partitions; i++) {
        if (s->lengths[i] == 0) {
            assert_int_equal(c->lengths[i], 0);
            assert_int_equal(c->records[i], 0);
        } else if (s->lengths[i] > exact_bytes) {
            assert_int_equal(c->lengths[i], s->lengths[i]);
            assert_int_equal(c->records[i], s->records[i]);
        } else {
            assert_int_equal(c->lengths[i], avg_len);
            assert_int_equal(c->records[i], avg_rec);
            assert_true(c->lengths[i] > 0);
        }
    }
}

static sp_map_status_t *roundtrip(const sp_map_status_t *s, uint32_t threshold,
                                  uint64_t exact_bytes, size_t *len_p)
{
    sp_map_status_t *back = NULL;
    void *buf = NULL;
    size_t len = 0;

    assert_int_equal(sp_map_status_serialize(s, threshold, exact_bytes, &buf, &len), SP_OK);
    assert_int_equal(sp_map_status_deserialize(buf, len, &back), SP_OK);
    free(buf);
    if (len_p != NULL)
        *len_p = len;
    return back;
}

static void test_map_status_full_roundtrip(void **state)
{
    (void)state;
    const char *addresses[] = {"10.0.0.7:7337", NULL};
    size_t rkeys[] = {0, 1, 37};

    for (size_t a = 0; a < SP_ARRAY_SIZE(addresses); a++) {
        for (size_t k = 0; k < SP_ARRAY_SIZE(rkeys); k++) {
            for (uint32_t p = 1; p <= 33; p += 8) {
                sp_map_status_t *s = make_status(p, 20, 10, 1000, 1u << 20, addresses[a], rkeys[k]);
                size_t len;
                sp_map_status_t *back = roundtrip(s, UINT32_MAX, 1u << 20, &len);
                size_t alen = addresses[a] ? strlen(addresses[a]) : 0;

                assert_full_equal(s, back);
                assert_int_equal(len, 36 + 2 + alen + 2 + strlen(PATH_BASE ".index") + 2 +
                                          rkeys[k] + 24 * (size_t)p);
                sp_map_status_destroy(back);
                sp_map_status_destroy(s);
            }
        }
    }
}

static void test_map_status_full_roundtrip_large(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(100000, 10, 1, 64 << 10, 1u << 20, "host-a:1", 16);
    size_t len;
    sp_map_status_t *back = roundtrip(s, UINT32_MAX, 1u << 20, &len);

    assert_full_equal(s, back);
    assert_true(len > 24 * 100000);
    sp_map_status_destroy(back);
    sp_map_status_destroy(s);
}

static void test_map_status_compact_roundtrip_large(void **state)
{
    (void)state;
    /* Most partitions small (up to 64 KiB), 10% empty, ~0.2% above 1 MiB. */
    const uint64_t exact = 1u << 20;
    sp_map_status_t *s = make_status(100000, 10, 0, 64 << 10, exact, "host-a:1", 16);
    size_t full_len, compact_len;
    sp_map_status_t *back;

    for (uint32_t i = 0; i < s->partitions; i += 500)
        s->lengths[i] = exact + 1 + rnd() % (1u << 30);
    back = roundtrip(s, UINT32_MAX, exact, &full_len);
    sp_map_status_destroy(back);
    back = roundtrip(s, 2000, exact, &compact_len);
    assert_compact_equal(s, exact, back);
    print_message("10^5 partitions: full %zu bytes, compact %zu bytes\n", full_len, compact_len);
    assert_true(compact_len < 20000);
    assert_true(compact_len * 100 < full_len);
    sp_map_status_destroy(back);
    sp_map_status_destroy(s);
}

static void test_map_status_compact_edges(void **state)
{
    (void)state;
    /* P not a multiple of 8, all empty, none empty, everything exact, everything averaged. */
    struct {
        uint32_t partitions;
        unsigned pct_empty, pct_big;
        uint64_t exact;
    } cases[] = {
        {1, 0, 0, 100},   {1, 100, 0, 100}, {7, 100, 0, 100},   {9, 0, 100, 100}, {13, 30, 30, 0},
        {64, 0, 0, 1000}, {65, 50, 0, 10},  {1000, 20, 5, 500}, {1001, 90, 9, 1}, {3, 0, 0, 0},
    };

    for (size_t c = 0; c < SP_ARRAY_SIZE(cases); c++) {
        sp_map_status_t *s = make_status(cases[c].partitions, cases[c].pct_empty, cases[c].pct_big,
                                         1000, cases[c].exact, NULL, 0);
        sp_map_status_t *back = roundtrip(s, 0, cases[c].exact, NULL);
        sp_map_status_t *again;

        assert_compact_equal(s, cases[c].exact, back);
        /* An approximate status goes back to the wire in the full form unchanged. */
        again = roundtrip(back, UINT32_MAX, cases[c].exact, NULL);
        assert_header_equal(back, again);
        assert_true(again->approximate);
        assert_null(again->checksums);
        assert_memory_equal(back->lengths, again->lengths, 8 * (size_t)s->partitions);
        assert_memory_equal(back->records, again->records, 8 * (size_t)s->partitions);
        sp_map_status_destroy(again);
        sp_map_status_destroy(back);
        sp_map_status_destroy(s);
    }
}

/* ---- truncation and corruption ---- */

typedef struct field {
    const char *name;
    size_t len;
} field_t;

/* The field that byte offset off of the wire form falls in. */
static const char *field_at(const field_t *fields, size_t n, size_t off)
{
    size_t start = 0;

    for (size_t i = 0; i < n; i++) {
        if (off < start + fields[i].len)
            return fields[i].name;
        start += fields[i].len;
    }
    return NULL;
}

static sp_status_t parse_copy(const unsigned char *buf, size_t len, sp_map_status_t **s_p)
{
    /* Exactly len bytes on the heap: ASan reports any read past them. */
    unsigned char *copy = malloc(len > 0 ? len : 1);
    sp_status_t st;

    assert_non_null(copy);
    memcpy(copy, buf, len);
    st = sp_map_status_deserialize(len > 0 ? copy : NULL, len, s_p);
    free(copy);
    return st;
}

static void check_truncations(const sp_map_status_t *s, uint32_t threshold, uint64_t exact,
                              const field_t *fields, size_t nfields)
{
    void *buf;
    size_t len, total = 0;

    assert_int_equal(sp_map_status_serialize(s, threshold, exact, &buf, &len), SP_OK);
    for (size_t i = 0; i < nfields; i++)
        total += fields[i].len;
    assert_int_equal(total, len);
    for (size_t cut = 0; cut < len; cut++) {
        sp_map_status_t *back = NULL;
        char expect[64];

        assert_int_equal(parse_copy(buf, cut, &back), SP_ERR_BAD_FORMAT);
        assert_null(back);
        snprintf(expect, sizeof(expect), "truncated: %s needs", field_at(fields, nfields, cut));
        if (strstr(sp_last_error(), expect) == NULL)
            fail_msg("cut at %zu: '%s' does not say '%s'", cut, sp_last_error(), expect);
    }
    free(buf);
}

static void test_map_status_truncated_full(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(3, 30, 30, 100, 1000, "ab:1", 3);
    size_t ilen = strlen(s->index_path);
    field_t fields[] = {
        {"magic", 4},
        {"version", 1},
        {"flags", 1},
        {"codec", 1},
        {"checksum kind", 1},
        {"shuffle_id", 8},
        {"map_id", 8},
        {"attempt", 4},
        {"partitions", 4},
        {"executor_id", 4},
        {"address length", 2},
        {"address", 4},
        {"index_path length", 2},
        {"index_path", ilen},
        {"rkey length", 2},
        {"rkey", 3},
        {"lengths", 24},
        {"records", 24},
        {"checksums", 24},
    };

    check_truncations(s, UINT32_MAX, 1000, fields, SP_ARRAY_SIZE(fields));
    sp_map_status_destroy(s);
}

static void test_map_status_truncated_compact(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(12, 0, 0, 100, 1000, NULL, 0);
    size_t ilen = strlen(s->index_path);
    field_t fields[] = {
        {"magic", 4},         {"version", 1},     {"flags", 1},          {"codec", 1},
        {"checksum kind", 1}, {"shuffle_id", 8},  {"map_id", 8},         {"attempt", 4},
        {"partitions", 4},    {"executor_id", 4}, {"address length", 2}, {"index_path length", 2},
        {"index_path", ilen}, {"rkey length", 2}, {"average length", 8}, {"average records", 8},
        {"empty bitmap", 2},  {"exact count", 4}, {"exact entries", 40},
    };

    s->lengths[2] = 0;
    s->records[2] = 0;
    s->lengths[5] = 5000;
    s->lengths[11] = 1u << 30;
    check_truncations(s, 0, 1000, fields, SP_ARRAY_SIZE(fields));
    sp_map_status_destroy(s);
}

static void flip_bytes(const unsigned char *buf, size_t len, unsigned rounds)
{
    unsigned char *mut = malloc(len);
    unsigned ok = 0;

    assert_non_null(mut);
    for (unsigned r = 0; r < rounds; r++) {
        size_t cut = len;
        unsigned flips = 1 + (unsigned)(rnd() % 3);
        sp_map_status_t *back = NULL;
        sp_status_t st;

        memcpy(mut, buf, len);
        for (unsigned f = 0; f < flips; f++)
            mut[rnd() % len] ^= (unsigned char)(1 + rnd() % 255);
        if (rnd() % 4 == 0)
            cut = (size_t)(rnd() % len);
        st = parse_copy(mut, cut, &back);
        if (st != SP_OK && st != SP_ERR_BAD_FORMAT)
            fail_msg("flip round %u: %s (%s)", r, sp_status_str(st), sp_last_error());
        if (st == SP_OK) {
            /* Whatever parsed must be usable: touch every array entry. */
            uint64_t sum = 0;

            for (uint32_t i = 0; i < back->partitions; i++)
                sum += back->lengths[i] + back->records[i] +
                       (back->checksums != NULL ? back->checksums[i] : 0);
            (void)sum;
            ok++;
        }
        sp_map_status_destroy(back);
    }
    free(mut);
    print_message("%u of %u flipped buffers parsed\n", ok, rounds);
}

static void test_map_status_random_flips(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(21, 20, 20, 100, 1000, "peer:9", 5);
    void *buf;
    size_t len;

    assert_int_equal(sp_map_status_serialize(s, UINT32_MAX, 1000, &buf, &len), SP_OK);
    flip_bytes(buf, len, 20000);
    free(buf);
    assert_int_equal(sp_map_status_serialize(s, 0, 1000, &buf, &len), SP_OK);
    flip_bytes(buf, len, 20000);
    free(buf);
    s->approximate = true;
    assert_int_equal(sp_map_status_serialize(s, UINT32_MAX, 1000, &buf, &len), SP_OK);
    flip_bytes(buf, len, 5000);
    free(buf);
    sp_map_status_destroy(s);
}

/* Serializes s, applies patch at offset off, and expects BAD_FORMAT mentioning what. */
static void expect_bad(const sp_map_status_t *s, uint32_t threshold, uint64_t exact,
                       void (*patch)(unsigned char *buf, size_t *len, size_t body),
                       const char *what)
{
    void *buf;
    size_t len, body;
    unsigned char *grown;
    sp_map_status_t *back = NULL;

    assert_int_equal(sp_map_status_serialize(s, threshold, exact, &buf, &len), SP_OK);
    grown = realloc(buf, len + 16);
    assert_non_null(grown);
    body = 36 + 2 + (s->address ? strlen(s->address) : 0) + 2 + strlen(s->index_path) + 2 +
           s->rkey_len;
    patch(grown, &len, body);
    assert_int_equal(parse_copy(grown, len, &back), SP_ERR_BAD_FORMAT);
    assert_null(back);
    if (strstr(sp_last_error(), what) == NULL)
        fail_msg("'%s' does not mention '%s'", sp_last_error(), what);
    free(grown);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void p_magic(unsigned char *b, size_t *l, size_t body) { (void)l, (void)body, b[0] = 'X'; }
static void p_version(unsigned char *b, size_t *l, size_t body) { (void)l, (void)body, b[4] = 2; }
static void p_flags(unsigned char *b, size_t *l, size_t body) { (void)l, (void)body, b[5] |= 4; }
static void p_flags_both(unsigned char *b, size_t *l, size_t body)
{
    (void)l, (void)body, b[5] = 3;
}
static void p_codec(unsigned char *b, size_t *l, size_t body) { (void)l, (void)body, b[6] = 3; }
static void p_kind(unsigned char *b, size_t *l, size_t body) { (void)l, (void)body, b[7] = 0; }
static void p_parts0(unsigned char *b, size_t *l, size_t body)
{
    (void)l, (void)body, put32(b + 28, 0);
}
static void p_parts_big(unsigned char *b, size_t *l, size_t body)
{
    (void)l, (void)body, put32(b + 28, (1u << 24) + 1);
}
static void p_trailing(unsigned char *b, size_t *l, size_t body)
{
    (void)body;
    b[(*l)++] = 0;
}
/* In these statuses the address is "ab:1" (4 bytes at 38) and the index path follows. */
static void p_nul_address(unsigned char *b, size_t *l, size_t body)
{
    (void)l, (void)body, b[39] = 0;
}
static void p_index_suffix(unsigned char *b, size_t *l, size_t body)
{
    (void)l;
    /* Last byte of the index path ("...index" -> "...indey"). */
    b[body - 2 - 3 - 1] = 'y';
}
/* Compact body of make_status(12) patched below: exact entries at 5 and 11, 2 empty. */
static void p_bitmap_pad(unsigned char *b, size_t *l, size_t body)
{
    (void)l, b[body + 16 + 1] |= 0x80;
}
static void p_count_big(unsigned char *b, size_t *l, size_t body)
{
    (void)l, put32(b + body + 18, 13);
}
static void p_exact_order(unsigned char *b, size_t *l, size_t body)
{
    (void)l, put32(b + body + 22 + 20, 5);
}
static void p_exact_past(unsigned char *b, size_t *l, size_t body)
{
    (void)l, put32(b + body + 22 + 20, 12);
}
static void p_exact_empty(unsigned char *b, size_t *l, size_t body)
{
    (void)l, put32(b + body + 22, 2);
}
static void p_exact_zero(unsigned char *b, size_t *l, size_t body)
{
    (void)l, put64(b + body + 22 + 4, 0);
}
static void p_avg_zero(unsigned char *b, size_t *l, size_t body) { (void)l, put64(b + body, 0); }

static void test_map_status_rejects(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(12, 0, 0, 100, 1000, "ab:1", 3);
    sp_map_status_t *back = NULL;

    s->lengths[2] = 0;
    s->records[2] = 0;
    s->lengths[5] = 5000;
    s->lengths[11] = 1u << 30;
    expect_bad(s, UINT32_MAX, 1000, p_magic, "magic");
    expect_bad(s, UINT32_MAX, 1000, p_version, "version");
    expect_bad(s, UINT32_MAX, 1000, p_flags, "flags");
    expect_bad(s, UINT32_MAX, 1000, p_flags_both, "flags");
    expect_bad(s, UINT32_MAX, 1000, p_codec, "codec");
    expect_bad(s, UINT32_MAX, 1000, p_kind, "checksum kind");
    expect_bad(s, UINT32_MAX, 1000, p_parts0, "partitions");
    expect_bad(s, UINT32_MAX, 1000, p_parts_big, "partitions");
    expect_bad(s, UINT32_MAX, 1000, p_trailing, "trailing");
    expect_bad(s, 0, 1000, p_trailing, "trailing");
    expect_bad(s, UINT32_MAX, 1000, p_nul_address, "NUL");
    expect_bad(s, UINT32_MAX, 1000, p_index_suffix, ".index");
    expect_bad(s, 0, 1000, p_bitmap_pad, "bitmap");
    expect_bad(s, 0, 1000, p_count_big, "exact partitions");
    expect_bad(s, 0, 1000, p_exact_order, "not after");
    expect_bad(s, 0, 1000, p_exact_past, "past the last");
    expect_bad(s, 0, 1000, p_exact_empty, "marked empty");
    expect_bad(s, 0, 1000, p_exact_zero, "is empty");
    expect_bad(s, 0, 1000, p_avg_zero, "average length");

    assert_int_equal(sp_map_status_deserialize(NULL, 0, &back), SP_ERR_BAD_FORMAT);
    assert_int_equal(sp_map_status_deserialize(NULL, 5, &back), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_status_deserialize("SPMS", 4, NULL), SP_ERR_INVALID_PARAM);
    assert_null(back);
    sp_map_status_destroy(s);
}

static void test_map_status_serialize_invalid(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(4, 0, 0, 100, 1000, "ab:1", 3);
    void *buf = NULL;
    size_t len = 0;
    char *keep, *long_address;

    assert_int_equal(sp_map_status_serialize(NULL, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_status_serialize(s, 0, 0, NULL, &len), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, NULL), SP_ERR_INVALID_PARAM);

    keep = s->index_path;
    s->index_path = NULL;
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    s->index_path = "/tmp/shuffle_1_1.data";
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    s->index_path = keep;

    s->partitions = 0;
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    s->partitions = 4;
    s->codec = (sp_codec_t)7;
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    s->codec = SP_CODEC_ZSTD;
    s->checksum_kind = (sp_checksum_kind_t)0;
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_INVALID_PARAM);
    s->checksum_kind = SP_CHECKSUM_XXH3;

    free(s->checksums);
    s->checksums = NULL;
    assert_int_equal(sp_map_status_serialize(s, UINT32_MAX, 0, &buf, &len), SP_ERR_INVALID_PARAM);

    long_address = malloc(70000);
    assert_non_null(long_address);
    memset(long_address, 'a', 69999);
    long_address[69999] = '\0';
    s->approximate = true;
    keep = s->address;
    s->address = long_address;
    assert_int_equal(sp_map_status_serialize(s, 0, 0, &buf, &len), SP_ERR_TOO_LARGE);
    s->address = keep;
    free(long_address);
    assert_null(buf);
    assert_int_equal(len, 0);
    sp_map_status_destroy(s);
}

static void test_map_status_dup(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(50, 20, 20, 100, 1000, "x:2", 9);
    sp_map_status_t *c = NULL, *d = NULL;

    assert_int_equal(sp_map_status_dup(s, &c), SP_OK);
    assert_full_equal(s, c);
    assert_ptr_not_equal(c->lengths, s->lengths);
    assert_ptr_not_equal(c->address, s->address);
    assert_ptr_not_equal(c->rkey, s->rkey);
    sp_map_status_destroy(s);

    /* NULL members stay NULL. */
    free(c->checksums);
    c->checksums = NULL;
    free(c->address);
    c->address = NULL;
    free(c->rkey);
    c->rkey = NULL;
    c->rkey_len = 0;
    c->approximate = true;
    assert_int_equal(sp_map_status_dup(c, &d), SP_OK);
    assert_null(d->checksums);
    assert_null(d->address);
    assert_null(d->rkey);
    assert_true(d->approximate);
    assert_memory_equal(c->lengths, d->lengths, 50 * 8);
    assert_int_equal(sp_map_status_dup(NULL, &d), SP_ERR_INVALID_PARAM);
    sp_map_status_destroy(c);
    sp_map_status_destroy(d);
    sp_map_status_destroy(NULL);
}

/* ---- block lists ---- */

static void check_block_list(const sp_map_status_t *const *st, size_t n, uint32_t rs, uint32_t re,
                             const sp_block_list_t *list)
{
    size_t b = 0;

    for (size_t i = 0; i < n; i++) {
        for (uint32_t r = rs; r < re; r++) {
            const sp_block_ref_t *ref;

            if (st[i]->lengths[r] == 0)
                continue;
            assert_true(b < list->count);
            ref = &list->blocks[b++];
            assert_int_equal(ref->shuffle_id, st[i]->shuffle_id);
            assert_int_equal(ref->map_id, st[i]->map_id);
            assert_int_equal(ref->reduce_id, r);
            assert_int_equal(ref->executor_id, st[i]->executor_id);
            assert_int_equal(ref->size, st[i]->lengths[r]);
            assert_int_equal(ref->records, st[i]->records[r]);
            assert_int_equal(ref->codec, st[i]->codec);
            assert_int_equal(ref->checksum_kind, st[i]->checksum_kind);
            assert_string_or_null(ref->address, st[i]->address);
            assert_string_or_null(ref->index_path, st[i]->index_path);
            assert_int_equal(ref->rkey_len, st[i]->rkey_len);
            if (st[i]->rkey_len > 0)
                assert_memory_equal(ref->rkey, st[i]->rkey, st[i]->rkey_len);
            else
                assert_null(ref->rkey);
            /* The list owns its strings. */
            assert_true(ref->address == NULL || ref->address != st[i]->address);
            assert_true(ref->index_path != st[i]->index_path);
        }
    }
    assert_int_equal(b, list->count);
}

static void test_block_list_from_statuses(void **state)
{
    (void)state;
    enum { N = 6, P = 40 };
    sp_map_status_t *st[N];
    const char *addresses[] = {"a:1", NULL, "b:22", "c:333", NULL, "d:4"};
    uint32_t ranges[][2] = {{0, P}, {0, 1}, {5, 17}, {39, 40}, {7, 7}, {0, 0}};
    sp_block_list_t *list = NULL;

    for (int i = 0; i < N; i++) {
        st[i] = make_status(P, 30, 0, 500, 1000, addresses[i], (size_t)(i % 3) * 4);
        st[i]->map_id = (uint64_t)i * 10;
        st[i]->executor_id = (uint32_t)i % 3;
    }
    /* One status with nothing at all in range: it adds no block and no strings. */
    memset(st[3]->lengths, 0, sizeof(uint64_t) * P);
    for (size_t r = 0; r < SP_ARRAY_SIZE(ranges); r++) {
        assert_int_equal(sp_block_list_from_statuses((const sp_map_status_t *const *)st, N,
                                                     ranges[r][0], ranges[r][1], &list),
                         SP_OK);
        check_block_list((const sp_map_status_t *const *)st, N, ranges[r][0], ranges[r][1], list);
        sp_block_list_destroy(list);
        list = NULL;
    }

    /* The list outlives the statuses (ASan checks the strings). */
    assert_int_equal(
        sp_block_list_from_statuses((const sp_map_status_t *const *)st, N, 0, P, &list), SP_OK);
    {
        sp_map_status_t *copies[N];
        size_t total = 0;

        for (int i = 0; i < N; i++)
            assert_int_equal(sp_map_status_dup(st[i], &copies[i]), SP_OK);
        check_block_list((const sp_map_status_t *const *)copies, N, 0, P, list);
        for (int i = 0; i < N; i++)
            sp_map_status_destroy(st[i]);
        for (size_t b = 0; b < list->count; b++)
            total += strlen(list->blocks[b].index_path) +
                     (list->blocks[b].address ? strlen(list->blocks[b].address) : 0);
        assert_true(total > 0);
        sp_block_list_destroy(list);
        for (int i = 0; i < N; i++)
            st[i] = copies[i];
    }

    assert_int_equal(sp_block_list_from_statuses(NULL, 0, 0, 0, &list), SP_OK);
    assert_int_equal(list->count, 0);
    sp_block_list_destroy(list);
    list = NULL;
    assert_int_equal(
        sp_block_list_from_statuses((const sp_map_status_t *const *)st, N, 0, P + 1, &list),
        SP_ERR_INVALID_PARAM);
    assert_int_equal(
        sp_block_list_from_statuses((const sp_map_status_t *const *)st, N, 5, 4, &list),
        SP_ERR_INVALID_PARAM);
    {
        const sp_map_status_t *with_null[2] = {st[0], NULL};

        assert_int_equal(sp_block_list_from_statuses(with_null, 2, 0, P, &list),
                         SP_ERR_INVALID_PARAM);
    }
    assert_null(list);
    sp_block_list_destroy(NULL);
    for (int i = 0; i < N; i++)
        sp_map_status_destroy(st[i]);
}

/* ---- fault injection ---- */

typedef sp_status_t (*fault_fn_t)(void *arg);

/* Fails the n-th allocation for n = 1, 2, ... until fn succeeds; returns how many failed. */
static unsigned run_faults(fault_fn_t fn, void *arg)
{
    for (unsigned n = 1;; n++) {
        sp_status_t st;

        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = fn(arg);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (st == SP_OK)
            return n - 1;
        if (st != SP_ERR_NOMEM)
            fail_msg("allocation %u: %s (%s)", n, sp_status_str(st), sp_last_error());
        assert_true(n < 1000);
    }
}

static sp_status_t f_dup(void *arg)
{
    sp_map_status_t *c = NULL;
    sp_status_t st = sp_map_status_dup(arg, &c);

    if (st == SP_OK)
        assert_full_equal(arg, c);
    else
        assert_null(c);
    sp_map_status_destroy(c);
    return st;
}

static sp_status_t f_serialize_full(void *arg)
{
    void *buf = NULL;
    size_t len;
    sp_status_t st = sp_map_status_serialize(arg, UINT32_MAX, 1000, &buf, &len);

    free(buf);
    return st;
}

static sp_status_t f_serialize_compact(void *arg)
{
    void *buf = NULL;
    size_t len;
    sp_status_t st = sp_map_status_serialize(arg, 0, 1000, &buf, &len);

    free(buf);
    return st;
}

typedef struct wire {
    void *buf;
    size_t len;
} wire_t;

static sp_status_t f_deserialize(void *arg)
{
    wire_t *w = arg;
    sp_map_status_t *s = NULL;
    sp_status_t st = sp_map_status_deserialize(w->buf, w->len, &s);

    if (st != SP_OK)
        assert_null(s);
    sp_map_status_destroy(s);
    return st;
}

static sp_status_t f_block_list(void *arg)
{
    const sp_map_status_t *const *st = arg;
    sp_block_list_t *list = NULL;
    sp_status_t rc = sp_block_list_from_statuses(st, 2, 0, st[0]->partitions, &list);

    if (rc != SP_OK)
        assert_null(list);
    sp_block_list_destroy(list);
    return rc;
}

static void test_map_status_fault(void **state)
{
    (void)state;
    sp_map_status_t *s = make_status(30, 20, 20, 100, 1000, "peer:1", 8);
    sp_map_status_t *t = make_status(30, 20, 20, 100, 1000, NULL, 0);
    const sp_map_status_t *pair[2] = {s, t};
    wire_t w;

    assert_true(run_faults(f_dup, s) >= 8);
    assert_int_equal(run_faults(f_serialize_full, s), 1);
    assert_int_equal(run_faults(f_serialize_compact, s), 1);
    assert_int_equal(sp_map_status_serialize(s, UINT32_MAX, 1000, &w.buf, &w.len), SP_OK);
    assert_true(run_faults(f_deserialize, &w) >= 8);
    free(w.buf);
    assert_int_equal(sp_map_status_serialize(s, 0, 1000, &w.buf, &w.len), SP_OK);
    assert_true(run_faults(f_deserialize, &w) >= 7);
    free(w.buf);
    assert_int_equal(run_faults(f_block_list, pair), 3);
    sp_map_status_destroy(s);
    sp_map_status_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_status_full_roundtrip),
        cmocka_unit_test(test_map_status_full_roundtrip_large),
        cmocka_unit_test(test_map_status_compact_roundtrip_large),
        cmocka_unit_test(test_map_status_compact_edges),
        cmocka_unit_test(test_map_status_truncated_full),
        cmocka_unit_test(test_map_status_truncated_compact),
        cmocka_unit_test(test_map_status_random_flips),
        cmocka_unit_test(test_map_status_rejects),
        cmocka_unit_test(test_map_status_serialize_invalid),
        cmocka_unit_test(test_map_status_dup),
        cmocka_unit_test(test_block_list_from_statuses),
        cmocka_unit_test(test_map_status_fault),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
