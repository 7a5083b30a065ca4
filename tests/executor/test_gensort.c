/*
 * Tests of the gensort generator and the valsort checker against known
 * answers and simple reference models.
 *
 * Where the known answers come from:
 *  - The rand16 constants and skip-ahead values are gensort 1.5's rand16.c
 *    ("Gen" table: f^2, f^8, f^(2^64) and f^(2^127) applied to 0 are the
 *    table's c entries 1, 3, 64 and 127).
 *  - Record 0's key is worked out by hand: record n's key is the top 10
 *    bytes of x(n+1), and x(1) = a * 0 + c = c = 0x4a696d4772617952 4950...,
 *    whose top 10 bytes spell "JimGrayRIP" (gensort's dedication).
 *  - Whole records at far starts and the checksum of 1000 records come from
 *    an independent big-integer model of gensort.c 1.5 (Python: the LCG,
 *    skip-ahead by squaring, the xor constants, zlib.crc32), run once; the
 *    bytes are pinned here.
 *  - Published valsort outputs: 1,000,000 binary records (`gensort 1000000`)
 *    give "Checksum: 7a0e0d4868cd4" (the CrocSort notes' GenSort 100 MB run),
 *    and 163,840 ascii records (`gensort -a 163840`) give "Checksum:
 *    1400fed7bb2c2" (tildeleb/Heapsort's README). The ascii one checks the
 *    generator and the CRC sum through a small reference of gensort's -a
 *    records written below.
 *
 * LABELS: unit
 */
#include "common_int.h"
#include "executor/jobs/gensort.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/test_dir_util.h"

#define REC          SP__GENSORT_RECORD_SIZE
#define U128(hi, lo) (((sp__u128_t)(hi) << 64) | (sp__u128_t)(lo))

static const sp__u128_t rand16_a = U128(0x2360ed051fc65da4ull, 0x4385df649fccf645ull);
static const sp__u128_t rand16_c = U128(0x4a696d4772617952ull, 0x4950202020202001ull);

/* Deterministic test randomness (xorshift64*). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void hex_to_bytes(const char *hex, unsigned char *out, size_t len)
{
    assert_int_equal(strlen(hex), 2 * len);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
}

static void assert_u128_equal(sp__u128_t got, sp__u128_t want)
{
    char g[SP__U128_HEX_SIZE], w[SP__U128_HEX_SIZE];

    if (got != want)
        fail_msg("got 0x%s, want 0x%s", sp__u128_hex(got, g), sp__u128_hex(want, w));
}

/* One record by a fresh generator. */
static void gen_one(sp__gensort_layout_t layout, sp__u128_t n, unsigned char rec[REC])
{
    sp__gensort_t gen;

    sp__gensort_init(&gen, layout, n);
    sp__gensort_fill(&gen, rec, 1);
}

static sp__u128_t gen_checksum(sp__u128_t start, uint64_t count)
{
    static unsigned char buf[REC * 10000];
    sp__u128_t sum = 0;
    sp__gensort_t gen;

    sp__gensort_init(&gen, SP__GENSORT_V15, start);
    while (count > 0) {
        size_t n = (size_t)SP_MIN(count, (uint64_t)10000);
        sp__gensort_fill(&gen, buf, n);
        sum += sp__gensort_checksum(buf, n);
        count -= n;
    }
    return sum;
}

/* ------------------------------------------------------------------------ */
/* rand16 and CRC                                                             */
/* ------------------------------------------------------------------------ */

static void test_rand16_matches_gensort_table(void **state)
{
    (void)state;
    assert_u128_equal(sp__rand16_skip(0), 0);
    assert_u128_equal(sp__rand16_skip(1), rand16_c);
    assert_u128_equal(sp__rand16_next(0), rand16_c);
    /* rand16.c's Gen[i].c is f^(2^i)(0). */
    assert_u128_equal(sp__rand16_skip(2), U128(0x95e0e48262b3edfeull, 0x04479485c755b646ull));
    assert_u128_equal(sp__rand16_skip(8), U128(0x5efc4abfaca23e8cull, 0xa8edb1f2dfbf6478ull));
    assert_u128_equal(sp__rand16_skip((sp__u128_t)1 << 64),
                      U128(0xf0b1944bfd71a97full, 0x0000000000000000ull));
    assert_u128_equal(sp__rand16_skip((sp__u128_t)1 << 127),
                      U128(0x8000000000000000ull, 0x0000000000000000ull));
    /* Full period: f^(2^128 - 1)(0) is the value before 0 comes back. */
    assert_u128_equal(sp__rand16_next(sp__rand16_skip(~(sp__u128_t)0)), 0);
    assert_u128_equal(rand16_a * 0 + rand16_c, rand16_c);
}

static void test_rand16_skip_equals_stepping(void **state)
{
    (void)state;
    /* Stepping one by one from 0. */
    sp__u128_t x = 0;
    for (unsigned n = 0; n < 3000; n++) {
        if (n % 97 == 0 || n < 70)
            assert_u128_equal(sp__rand16_skip(n), x);
        x = sp__rand16_next(x);
    }
    /* From random 128-bit starts: skip(n + k) = next^k(skip(n)). */
    for (unsigned t = 0; t < 200; t++) {
        sp__u128_t n = t % 2 ? U128(rng(), rng()) : (sp__u128_t)(rng() >> (t % 64));
        unsigned k = (unsigned)(rng() % 50);
        sp__u128_t y = sp__rand16_skip(n);

        for (unsigned i = 0; i < k; i++)
            y = sp__rand16_next(y);
        assert_u128_equal(sp__rand16_skip(n + k), y);
    }
}

static void test_crc32_is_zlib_crc32(void **state)
{
    unsigned char rec[REC];

    (void)state;
    /* zlib.crc32(bytes(range(100))) and zlib.crc32(bytes(100)). */
    for (unsigned i = 0; i < REC; i++)
        rec[i] = (unsigned char)i;
    assert_int_equal(sp__gensort_crc32(rec), 0x58c932f5u);
    memset(rec, 0, sizeof(rec));
    assert_int_equal(sp__gensort_crc32(rec), 0x9988c6cau);
    assert_u128_equal(sp__gensort_checksum(rec, 1), 0x9988c6cau);
}

/*
 * The batched checksum (four records at a time where the CPU allows) against
 * one zlib-equivalent CRC per record: random bytes, all-zero and all-0xFF
 * records (the head block's initial value), every count from 0 to 41 (the
 * ISA-L tail after whole groups of four) at every start offset mod 8, the
 * first record at the start of a page whose preceding page is unmapped (the
 * masked load before a record must not touch it), and a large count whose
 * sum passes 2^32.
 */
static void test_gensort_checksum_batch_equals_per_record(void **state)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), max = 41;
    unsigned char *area, *buf;
    size_t big = 200000;
    sp__u128_t want = 0;

    (void)state;
    buf = malloc(max * REC + 8);
    assert_non_null(buf);
    for (unsigned kind = 0; kind < 3; kind++) {
        for (size_t i = 0; i < max * REC + 8; i++)
            buf[i] = kind == 0 ? (unsigned char)rng() : kind == 1 ? 0x00 : 0xFF;
        for (size_t off = 0; off < 8; off++) {
            for (size_t n = 0; n <= max; n++) {
                sp__u128_t sum = 0;
                for (size_t i = 0; i < n; i++)
                    sum += sp__gensort_crc32(buf + off + i * REC);
                assert_u128_equal(sp__gensort_checksum(buf + off, n), sum);
            }
        }
    }
    free(buf);

    /* Records right after an unmapped page, and right before one. */
    area = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(area != MAP_FAILED);
    assert_int_equal(mprotect(area, page, PROT_NONE), 0);
    assert_int_equal(mprotect(area + 3 * page, page, PROT_NONE), 0);
    for (size_t i = page; i < 3 * page; i++)
        area[i] = (unsigned char)rng();
    {
        size_t n = 2 * page / REC;
        unsigned char *first = area + page, *tail = area + 3 * page - n * REC;
        sp__u128_t a = 0, b = 0;
        for (size_t i = 0; i < n; i++) {
            a += sp__gensort_crc32(first + i * REC);
            b += sp__gensort_crc32(tail + i * REC);
        }
        assert_u128_equal(sp__gensort_checksum(first, n), a);
        assert_u128_equal(sp__gensort_checksum(tail, n), b);
    }
    munmap(area, 4 * page);

    buf = malloc(big * REC);
    assert_non_null(buf);
    for (size_t i = 0; i < big * REC; i++)
        buf[i] = (unsigned char)rng();
    for (size_t i = 0; i < big; i++)
        want += sp__gensort_crc32(buf + i * REC);
    assert_true(want > (sp__u128_t)UINT32_MAX);
    assert_u128_equal(sp__gensort_checksum(buf, big), want);
    free(buf);
}

/* ------------------------------------------------------------------------ */
/* Records                                                                    */
/* ------------------------------------------------------------------------ */

static const char record0_hex[] =
    "4a696d4772617952495065080060836b392cd58b8f5e55961855e79b87f02283a466b6aab1f9e0cacf1e26b3"
    "292afd1064bb18b56ac07d6f656b1d2f430d57bde7e47d81f36a6dd267948bbc2397bfe28c334e4ad82b8e70"
    "166293cfaa0116bfda3bb1ab";

static void test_gensort_first_record(void **state)
{
    unsigned char rec[REC], want[REC];

    (void)state;
    gen_one(SP__GENSORT_V15, 0, rec);
    assert_memory_equal(rec, "JimGrayRIP", 10);
    hex_to_bytes(record0_hex, want, REC);
    assert_memory_equal(rec, want, REC);
    assert_int_equal(sp__gensort_crc32(rec), 0x9ea593a0u);
}

static void test_gensort_records_at_far_starts(void **state)
{
    static const struct {
        sp__u128_t n;
        const char *hex;
    } cases[] = {
        {999, "4d15a82070c03ee39bf57b94b4a54434df32c57492179943c4c21315042e226a24917a97ac266e64b940"
              "d24b6d70591c924b7a39da215a4d73f911ea257fd8c05fa968196895e759d6726d2ac1a129c1bdf411"
              "2976155a0d2a30befc34ac1119e172ced5"},
        {123456789,
         "e972efd66ef4fd6127cc76ce1c4a70d0c4618ca9b52e8390593115c27f6c220277bdcb484af05075bd0b4a"
         "fe260b23b44d33419c8d07e95be8847124a5aa6e644b7865d0073ebd866fd9285ae8924d5651ad3878b876"
         "39fab0a09050699d232f1f55fbbd"},
        {((sp__u128_t)1 << 64) + 5,
         "ec980a6cdde7e4294b7a9849e70b213acc9914933c641d1ffc600c991941071afc9c509c34250c17e5ede1"
         "780f95cb5edddc497ca3b79802f081f9e34ca75deb762b877da9b0fc14d4e89ea398b2b1e2f877430c34af"
         "5124e10b8500a9aff894ff12af80"},
        /* The last record number: its key is x(2^128) = x(0) = 0. */
        {~(sp__u128_t)0,
         "00000000000000000000ba8189a593b9ad80989c5f292247a10b594cb5ebef3e35f67871c9b0a0c91ba48f"
         "48924e5f12073336f9cd5dcd0ed33b4382219241ee590f050b7d4f236d37dd87c65aa3d2509638887e3436"
         "ac1d240d53f8bfa56d943bff8799"},
    };

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(cases); i++) {
        unsigned char rec[REC], want[REC], key[SP__GENSORT_KEY_SIZE];

        gen_one(SP__GENSORT_V15, cases[i].n, rec);
        hex_to_bytes(cases[i].hex, want, REC);
        assert_memory_equal(rec, want, REC);
        sp__gensort_key(cases[i].n, key);
        assert_memory_equal(key, want, SP__GENSORT_KEY_SIZE);
    }
}

static void test_gensort_checksum_known(void **state)
{
    char hex[SP__U128_HEX_SIZE];

    (void)state;
    /* Big-integer model of gensort 1.5: sum of zlib.crc32 of records 0..999. */
    assert_string_equal(sp__u128_hex(gen_checksum(0, 1000), hex), "1ea6370b955");
    /* Published valsort output for `gensort 1000000`. */
    assert_string_equal(sp__u128_hex(gen_checksum(0, 1000000), hex), "7a0e0d4868cd4");
}

/* gensort 1.5's -a record (the reference for the published ascii checksum). */
static void ascii_record(unsigned char *r, sp__u128_t x, sp__u128_t number)
{
    static const char digit[] = "0123456789ABCDEF";
    uint64_t t = (uint64_t)(x >> 64), lo = (uint64_t)x;

    for (int i = 0; i < 8; i++, t /= 95)
        r[i] = (unsigned char)(' ' + t % 95);
    t = lo;
    for (int i = 8; i < 10; i++, t /= 95)
        r[i] = (unsigned char)(' ' + t % 95);
    r[10] = r[11] = ' ';
    for (int i = 0; i < 32; i++)
        r[12 + i] = (unsigned char)digit[(unsigned)(number >> (124 - 4 * i)) & 0xF];
    r[44] = r[45] = ' ';
    for (int i = 0; i < 13; i++)
        memset(r + 46 + 4 * i, digit[(lo >> (48 - 4 * i)) & 0xF], 4);
    r[98] = '\r';
    r[99] = '\n';
}

static void test_gensort_ascii_reference_published(void **state)
{
    unsigned char rec[REC];
    sp__u128_t x = 0, sum = 0;
    char hex[SP__U128_HEX_SIZE];

    (void)state;
    for (unsigned n = 0; n < 163840; n++) {
        x = sp__rand16_next(x);
        ascii_record(rec, x, n);
        sum += sp__gensort_crc32(rec);
    }
    assert_string_equal(sp__u128_hex(sum, hex), "1400fed7bb2c2");
}

static void test_gensort_fill_is_seamless(void **state)
{
    enum { N = 700 };
    unsigned char *whole = malloc(N * REC), *parts = malloc(N * REC + 1);

    (void)state;
    assert_non_null(whole);
    assert_non_null(parts);
    for (unsigned t = 0; t < 60; t++) {
        sp__gensort_layout_t layout = t % 3 == 2 ? SP__GENSORT_V12 : SP__GENSORT_V15;
        sp__u128_t start;
        sp__gensort_t gen;
        size_t done = 0;

        switch (t % 4) {
        case 0: start = rng() % 100000; break;
        case 1: start = ((sp__u128_t)1 << 64) - (rng() % 400); break; /* crosses 2^64 */
        case 2: start = U128(rng(), rng()); break;
        default: start = ~(sp__u128_t)0 - (rng() % 300); break; /* wraps to 0 */
        }
        sp__gensort_init(&gen, layout, start);
        sp__gensort_fill(&gen, whole, N);
        /* The same records in random pieces, into an unaligned buffer. */
        sp__gensort_init(&gen, layout, start);
        while (done < N) {
            size_t r = (size_t)(rng() % 150), n = SP_MIN(r, (size_t)N - done);
            sp__gensort_fill(&gen, parts + 1 + done * REC, n);
            done += n;
        }
        assert_memory_equal(whole, parts + 1, N * REC);
        assert_true(gen.record == start + N);
        /* Any record alone, by skip-ahead, and its key. */
        for (unsigned k = 0; k < 20; k++) {
            size_t i = (size_t)(rng() % N);
            unsigned char rec[REC], key[SP__GENSORT_KEY_SIZE];

            gen_one(layout, start + i, rec);
            assert_memory_equal(rec, whole + i * REC, REC);
            sp__gensort_key(start + i, key);
            assert_memory_equal(key, whole + i * REC, SP__GENSORT_KEY_SIZE);
        }
    }
    free(whole);
    free(parts);
}

static void test_gensort_v12_layout(void **state)
{
    unsigned char rec[REC], v15[REC];
    static const char filler0[] = "202020202001"; /* low 48 bits of x(1) = c, in hex */

    (void)state;
    gen_one(SP__GENSORT_V12, 0, rec);
    gen_one(SP__GENSORT_V15, 0, v15);
    assert_memory_equal(rec, v15, SP__GENSORT_KEY_SIZE); /* same key */
    assert_int_equal(rec[10], 0x00);
    assert_int_equal(rec[11], 0x11);
    for (int i = 12; i < 44; i++)
        assert_int_equal(rec[i], '0');
    assert_memory_equal(rec + 44, "\x88\x99\xaa\xbb", 4);
    for (int i = 0; i < 12; i++)
        for (int j = 0; j < 4; j++)
            assert_int_equal(rec[48 + 4 * i + j], filler0[i]);
    assert_memory_equal(rec + 96, "\xcc\xdd\xee\xff", 4);

    /* The record number, upper-case hex, right-aligned in 32 digits. */
    gen_one(SP__GENSORT_V12, U128(0x1ull, 0xABCDEF0123456789ull), rec);
    assert_memory_equal(rec + 12, "0000000000000001ABCDEF0123456789", 32);
}

/* ------------------------------------------------------------------------ */
/* 128-bit numbers                                                            */
/* ------------------------------------------------------------------------ */

static void test_u128_text(void **state)
{
    char hex[SP__U128_HEX_SIZE], dec[SP__U128_DEC_SIZE];
    sp__u128_t v = 7;

    (void)state;
    assert_string_equal(sp__u128_hex(0, hex), "0");
    assert_string_equal(sp__u128_dec(0, dec), "0");
    assert_string_equal(sp__u128_hex(U128(0x12a, 0x06cd06eeb64b16), hex), "12a0006cd06eeb64b16");
    assert_string_equal(sp__u128_hex(~(sp__u128_t)0, hex), "ffffffffffffffffffffffffffffffff");
    assert_string_equal(sp__u128_dec(~(sp__u128_t)0, dec),
                        "340282366920938463463374607431768211455");
    assert_int_equal(sp__u128_parse("340282366920938463463374607431768211455", "n", &v), SP_OK);
    assert_true(v == ~(sp__u128_t)0);
    assert_int_equal(sp__u128_parse("0", "n", &v), SP_OK);
    assert_true(v == 0);
    assert_int_equal(sp__u128_parse("18446744073709551621", "n", &v), SP_OK);
    assert_true(v == ((sp__u128_t)1 << 64) + 5);

    v = 42;
    assert_int_equal(sp__u128_parse("340282366920938463463374607431768211456", "START", &v),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "START"));
    assert_int_equal(sp__u128_parse("", "n", &v), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__u128_parse("12a", "n", &v), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__u128_parse("-1", "n", &v), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__u128_parse(" 1", "n", &v), SP_ERR_INVALID_PARAM);
    assert_true(v == 42);
}

/* ------------------------------------------------------------------------ */
/* valsort                                                                    */
/* ------------------------------------------------------------------------ */

static int rec_cmp(const void *a, const void *b) { return memcmp(a, b, REC); }

/* Reference model: the plain loop over keys. */
static void valsort_model(const unsigned char *recs, size_t n, sp__valsort_t *v)
{
    sp__valsort_init(v);
    for (size_t i = 0; i < n; i++) {
        const unsigned char *r = recs + i * REC;
        if (i > 0) {
            int d = memcmp(r - REC, r, SP__GENSORT_KEY_SIZE);
            if (d == 0)
                v->duplicates++;
            else if (d > 0 && v->unordered++ == 0)
                v->first_unordered = i;
        }
        v->checksum += sp__gensort_crc32(r);
    }
    v->records = n;
    if (n > 0) {
        memcpy(v->first, recs, REC);
        memcpy(v->last, recs + (n - 1) * REC, REC);
    }
}

static void assert_valsort_equal(const sp__valsort_t *a, const sp__valsort_t *b)
{
    assert_int_equal(a->records, b->records);
    assert_int_equal(a->duplicates, b->duplicates);
    assert_int_equal(a->unordered, b->unordered);
    assert_int_equal(a->first_unordered, b->first_unordered);
    assert_u128_equal(a->checksum, b->checksum);
    if (a->records > 0) {
        assert_memory_equal(a->first, b->first, REC);
        assert_memory_equal(a->last, b->last, REC);
    }
}

/* n sorted records from a generator (start), with a few keys made equal. */
static unsigned char *sorted_records(size_t n, sp__u128_t start, unsigned dups)
{
    unsigned char *recs = malloc(n * REC);
    sp__gensort_t gen;

    assert_non_null(recs);
    sp__gensort_init(&gen, SP__GENSORT_V15, start);
    sp__gensort_fill(&gen, recs, n);
    for (unsigned i = 0; i < dups && n > 1; i++) {
        size_t a = (size_t)(rng() % n), b = (size_t)(rng() % n);
        memcpy(recs + a * REC, recs + b * REC, SP__GENSORT_KEY_SIZE);
    }
    qsort(recs, n, REC, rec_cmp);
    return recs;
}

static void test_valsort_sorted_generated(void **state)
{
    enum { N = 5000 };
    unsigned char *recs = sorted_records(N, 0, 0);
    sp__valsort_t v;

    (void)state;
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, N);
    assert_int_equal(v.records, N);
    assert_int_equal(v.unordered, 0);
    assert_int_equal(v.duplicates, 0);
    /* Sorting moves records, the sum of their CRCs stays. */
    assert_u128_equal(v.checksum, gen_checksum(0, N));
    free(recs);
}

static void test_valsort_finds_disorder_and_duplicates(void **state)
{
    enum { N = 1000 };
    unsigned char *recs = sorted_records(N, 77, 0), tmp[REC];
    sp__valsort_t v, model;

    (void)state;
    /* Swap records 300 and 301: record 301 is the first unordered one. */
    memcpy(tmp, recs + 300 * REC, REC);
    memcpy(recs + 300 * REC, recs + 301 * REC, REC);
    memcpy(recs + 301 * REC, tmp, REC);
    /* Give record 700 the key of 699: one duplicate. */
    memcpy(recs + 700 * REC, recs + 699 * REC, SP__GENSORT_KEY_SIZE);
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, N);
    assert_int_equal(v.unordered, 1);
    assert_int_equal(v.first_unordered, 301);
    assert_int_equal(v.duplicates, 1);
    valsort_model(recs, N, &model);
    assert_valsort_equal(&v, &model);

    /* Record 0 never counts as unordered; a drop at record 1 is found. */
    memcpy(tmp, recs, REC);
    memcpy(recs, recs + REC, REC);
    memcpy(recs + REC, tmp, REC);
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, N);
    assert_int_equal(v.first_unordered, 1);
    assert_int_equal(v.unordered, 2);
    free(recs);
}

static void test_valsort_merge_equals_one_pass(void **state)
{
    enum { N = 3000 };

    (void)state;
    for (unsigned t = 0; t < 40; t++) {
        unsigned char *recs = sorted_records(N, rng() % 1000000, t % 5 * 7);
        sp__valsort_t whole, merged, model;
        size_t done = 0;

        /* Disorder at random places, sometimes at piece boundaries. */
        for (unsigned k = 0; k < t % 4; k++) {
            size_t i = (size_t)(rng() % (N - 1));
            unsigned char tmp[REC];
            memcpy(tmp, recs + i * REC, REC);
            memcpy(recs + i * REC, recs + (i + 1) * REC, REC);
            memcpy(recs + (i + 1) * REC, tmp, REC);
        }
        valsort_model(recs, N, &model);
        sp__valsort_init(&whole);
        sp__valsort_add(&whole, recs, N);
        assert_valsort_equal(&whole, &model);

        sp__valsort_init(&merged);
        while (done < N) {
            size_t r = (size_t)(rng() % 400), n = SP_MIN(r, (size_t)N - done); /* 0 sometimes */
            sp__valsort_t piece;
            sp__valsort_init(&piece);
            /* A piece checked in two adds, like a file read in chunks. */
            sp__valsort_add(&piece, recs + done * REC, n / 2);
            sp__valsort_add(&piece, recs + (done + n / 2) * REC, n - n / 2);
            sp__valsort_merge(&merged, &piece);
            done += n;
        }
        assert_valsort_equal(&merged, &model);
        free(recs);
    }
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void make_dir(char *dir, size_t size, const char *name)
{
    snprintf(dir, size, "/tmp/spate-test-gensort-%s-%d", name, (int)getpid());
    test_dir_clear(dir);
    rmdir(dir);
    assert_int_equal(mkdir(dir, 0700), 0);
}

static void remove_dir(const char *dir)
{
    test_dir_clear(dir);
    assert_int_equal(rmdir(dir), 0);
}

static void test_valsort_files_across_files(void **state)
{
    enum { N = 20000, FILES = 7 };
    unsigned char *recs = sorted_records(N, 5, 3);
    size_t bounds[FILES + 1] = {0, 0, 1000, 1001, 9000, 9000, 15000, N};
    char dir[256], path[512];
    char **paths = NULL;
    size_t count = 0;
    sp__valsort_t model, v;

    (void)state;
    make_dir(dir, sizeof(dir), "files");
    /* part-00000 is empty, part-00004 too; names sort as the order. */
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof(path), "%s/part-%05d", dir, i);
        write_file(path, recs + bounds[i] * REC, (bounds[i + 1] - bounds[i]) * REC);
    }
    snprintf(path, sizeof(path), "%s/.part-00009.tmp", dir); /* hidden: never read */
    write_file(path, "x", 1);
    snprintf(path, sizeof(path), "%s/_SUCCESS", dir);
    write_file(path, "", 0);

    assert_int_equal(sp__valsort_paths(dir, &paths, &count), SP_OK);
    assert_int_equal(count, FILES);
    assert_non_null(strstr(paths[0], "/part-00000"));
    assert_non_null(strstr(paths[6], "/part-00006"));
    valsort_model(recs, N, &model);
    for (unsigned threads = 1; threads <= 8; threads *= 2) {
        memset(&v, 0xff, sizeof(v));
        assert_int_equal(sp__valsort_files((const char *const *)paths, count, threads, &v), SP_OK);
        assert_valsort_equal(&v, &model);
    }
    sp__valsort_paths_free(paths, count);

    /*
     * Disorder across a file boundary (part-00004 is empty): the first record
     * of part-00005 gets the smallest key, below the last of part-00003.
     */
    memset(recs + 9000 * REC, 0, SP__GENSORT_KEY_SIZE);
    snprintf(path, sizeof(path), "%s/part-00005", dir);
    write_file(path, recs + 9000 * REC, 6000 * REC);
    assert_int_equal(sp__valsort_paths(dir, &paths, &count), SP_OK);
    assert_int_equal(sp__valsort_files((const char *const *)paths, count, 3, &v), SP_OK);
    valsort_model(recs, N, &model);
    assert_valsort_equal(&v, &model);
    assert_int_equal(v.first_unordered, 9000);
    sp__valsort_paths_free(paths, count);

    /* part-r-* files, when present, are the ones read. */
    snprintf(path, sizeof(path), "%s/part-r-00000", dir);
    write_file(path, recs, 10 * REC);
    assert_int_equal(sp__valsort_paths(dir, &paths, &count), SP_OK);
    assert_int_equal(count, 1);
    assert_non_null(strstr(paths[0], "/part-r-00000"));
    sp__valsort_paths_free(paths, count);

    /* A single file is itself. */
    assert_int_equal(sp__valsort_paths(path, &paths, &count), SP_OK);
    assert_int_equal(count, 1);
    assert_string_equal(paths[0], path);
    sp__valsort_paths_free(paths, count);

    snprintf(path, sizeof(path), "%s/.part-00009.tmp", dir);
    assert_int_equal(unlink(path), 0);
    remove_dir(dir);
    free(recs);
}

static void test_valsort_rejects_bad_files(void **state)
{
    unsigned char *recs = sorted_records(50, 0, 0);
    char dir[256], path[512], *paths[2];
    char **list = NULL;
    size_t count = 0;
    sp__valsort_t v, before;

    (void)state;
    make_dir(dir, sizeof(dir), "bad");
    /* No part files. */
    assert_int_equal(sp__valsort_paths(dir, &list, &count), SP_ERR_NOT_FOUND);
    assert_non_null(strstr(sp_last_error(), dir));
    snprintf(path, sizeof(path), "%s/missing", dir);
    assert_int_equal(sp__valsort_paths(path, &list, &count), SP_ERR_NOT_FOUND);

    /* A truncated file: an error naming it, and nothing consumed. */
    snprintf(path, sizeof(path), "%s/part-00001", dir);
    write_file(path, recs, 50 * REC - 37);
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, 3);
    before = v;
    assert_int_equal(sp__valsort_file(&v, path), SP_ERR_BAD_FORMAT);
    assert_non_null(strstr(sp_last_error(), path));
    assert_non_null(strstr(sp_last_error(), "4963 bytes"));
    assert_valsort_equal(&v, &before);

    /* Through sp__valsort_files: the message of the failing file. */
    {
        char good[512];
        snprintf(good, sizeof(good), "%s/part-00000", dir);
        write_file(good, recs, 50 * REC);
        paths[0] = good;
        paths[1] = path;
        memset(&v, 0x5a, sizeof(v));
        before = v;
        assert_int_equal(sp__valsort_files((const char *const *)paths, 2, 2, &v),
                         SP_ERR_BAD_FORMAT);
        assert_non_null(strstr(sp_last_error(), "part-00001"));
        assert_memory_equal(&v, &before, sizeof(v)); /* untouched */

        /* A read error and an allocation failure surface as statuses. */
        sp__valsort_init(&v);
        sp__fault_arm(SP_FAULT_READ, 1);
        assert_int_equal(sp__valsort_file(&v, good), SP_ERR_IO);
        sp__fault_arm(SP_FAULT_READ, 0);
        sp__fault_arm(SP_FAULT_ALLOC, 1);
        assert_int_equal(sp__valsort_file(&v, good), SP_ERR_NOMEM);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        assert_int_equal(sp__valsort_file(&v, good), SP_OK);
        assert_int_equal(v.records, 50);
    }
    /* A directory given as a file. */
    assert_int_equal(sp__valsort_file(&v, dir), SP_ERR_BAD_FORMAT);

    remove_dir(dir);
    free(recs);
}

static void test_valsort_report_text(void **state)
{
    unsigned char *recs = sorted_records(100, 0, 0), tmp[REC];
    char text[1024];
    sp__valsort_t v;
    FILE *f;

    (void)state;
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, 100);
    memcpy(recs + 10 * REC, recs + 9 * REC, SP__GENSORT_KEY_SIZE);
    f = fmemopen(text, sizeof(text), "w");
    assert_non_null(f);
    sp__valsort_report(&v, f);
    fclose(f);
    {
        char want[256], hex[SP__U128_HEX_SIZE];
        snprintf(want, sizeof(want),
                 "Records: 100\nChecksum: %s\nDuplicate keys: 0\n"
                 "SUCCESS - all records are in order\n",
                 sp__u128_hex(gen_checksum(0, 100), hex));
        assert_string_equal(text, want);
    }

    memcpy(tmp, recs + 41 * REC, REC);
    memcpy(recs + 41 * REC, recs + 42 * REC, REC);
    memcpy(recs + 42 * REC, tmp, REC);
    sp__valsort_init(&v);
    sp__valsort_add(&v, recs, 100);
    f = fmemopen(text, sizeof(text), "w");
    assert_non_null(f);
    sp__valsort_report(&v, f);
    fclose(f);
    assert_non_null(strstr(text, "First unordered record is record 42\nRecords: 100\n"));
    assert_non_null(strstr(text, "ERROR - there are 1 unordered records\n"));
    assert_null(strstr(text, "SUCCESS"));
    free(recs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rand16_matches_gensort_table),
        cmocka_unit_test(test_rand16_skip_equals_stepping),
        cmocka_unit_test(test_crc32_is_zlib_crc32),
        cmocka_unit_test(test_gensort_checksum_batch_equals_per_record),
        cmocka_unit_test(test_gensort_first_record),
        cmocka_unit_test(test_gensort_records_at_far_starts),
        cmocka_unit_test(test_gensort_checksum_known),
        cmocka_unit_test(test_gensort_ascii_reference_published),
        cmocka_unit_test(test_gensort_fill_is_seamless),
        cmocka_unit_test(test_gensort_v12_layout),
        cmocka_unit_test(test_u128_text),
        cmocka_unit_test(test_valsort_sorted_generated),
        cmocka_unit_test(test_valsort_finds_disorder_and_duplicates),
        cmocka_unit_test(test_valsort_merge_equals_one_pass),
        cmocka_unit_test(test_valsort_files_across_files),
        cmocka_unit_test(test_valsort_rejects_bad_files),
        cmocka_unit_test(test_valsort_report_text),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
