/*
 * The RecordIO decoder of the Mesos event stream (launcher/recordio.c)
 * against a simple model: a stream is encoded from a list of records, cut
 * into chunks every possible way (all 1-, 2- and 3-way splits of a small
 * stream, random chunkings of a large one), and must decode to the same
 * list whatever the cuts. Malformed lengths, oversize records, truncated
 * streams, callback errors and a refused allocation are each rejected with
 * the status the header promises, and the error sticks until a reset.
 *
 * LABELS: unit
 */
#include "launcher/recordio.h"

#include "common_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* What the callback saw: records concatenated, and their lengths. */
typedef struct seen {
    char data[1 << 16];
    size_t len;
    size_t lens[256];
    size_t n;
    sp_status_t fail_at_call; /* SP_OK: never fail */
    size_t fail_index;
} seen_t;

static sp_status_t collect(void *arg, const char *rec, size_t len)
{
    seen_t *s = arg;

    assert_true(len >= 1);
    if (s->fail_at_call != SP_OK && s->n == s->fail_index)
        return SP_RAISE(s->fail_at_call, "the callback refuses record %zu", s->n);
    assert_true(s->len + len <= sizeof(s->data));
    assert_true(s->n < 256);
    memcpy(s->data + s->len, rec, len);
    s->len += len;
    s->lens[s->n++] = len;
    return SP_OK;
}

/* The stream of records recs (lens), encoded into out; returns its length. */
static size_t encode(const char *const *recs, const size_t *lens, size_t n, char *out, size_t cap)
{
    size_t at = 0;

    for (size_t i = 0; i < n; i++) {
        int w = snprintf(out + at, cap - at, "%zu\n", lens[i]);
        assert_true(w > 0 && at + (size_t)w + lens[i] <= cap);
        at += (size_t)w;
        memcpy(out + at, recs[i], lens[i]);
        at += lens[i];
    }
    return at;
}

static void expect_records(const seen_t *s, const char *const *recs, const size_t *lens, size_t n)
{
    size_t at = 0;

    assert_int_equal(s->n, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(s->lens[i], lens[i]);
        assert_memory_equal(s->data + at, recs[i], lens[i]);
        at += lens[i];
    }
}

/* Feeds stream cut at the given offsets (sorted, within it) and checks the result. */
static void decode_cut(sp__recordio_t *dec, const char *stream, size_t len, const size_t *cuts,
                       size_t ncuts, const char *const *recs, const size_t *lens, size_t n)
{
    static seen_t s;
    size_t from = 0;

    memset(&s, 0, sizeof(s));
    sp__recordio_reset(dec);
    for (size_t c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : len;
        assert_int_equal(sp__recordio_feed(dec, stream + from, to - from, collect, &s), SP_OK);
        from = to;
    }
    assert_int_equal(sp__recordio_finish(dec), SP_OK);
    expect_records(&s, recs, lens, n);
    assert_int_equal(sp__recordio_records(dec), n);
    assert_int_equal(sp__recordio_offset(dec), len);
}

static void test_recordio_every_split_decodes_the_same(void **state)
{
    /* Records that hold newlines and digits, one byte long, and one spanning 10 digits' worth. */
    static const char *const recs[] = {"{\"type\":\"SUBSCRIBED\"}", "7",  "12\n34\n",
                                       "{\"type\":\"HEARTBEAT\"}",  "\n", "x"};
    size_t lens[6], n = 6, len;
    char stream[512];
    sp__recordio_t *dec;

    (void)state;
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(recs[i]);
    len = encode(recs, lens, n, stream, sizeof(stream));
    assert_int_equal(sp__recordio_create(64, &dec), SP_OK);
    decode_cut(dec, stream, len, NULL, 0, recs, lens, n);
    for (size_t a = 0; a <= len; a++) {
        decode_cut(dec, stream, len, &a, 1, recs, lens, n);
        for (size_t b = a; b <= len; b++) {
            size_t cuts[2] = {a, b};
            decode_cut(dec, stream, len, cuts, 2, recs, lens, n);
        }
    }
    sp__recordio_destroy(dec);
}

static void test_recordio_random_chunks_match_the_model(void **state)
{
    static char pool[40000], stream[48000];
    const char *recs[200];
    size_t lens[200], n = 200, len, at = 0, cuts[4096];
    uint64_t rng = 12345;
    sp__recordio_t *dec;

    (void)state;
    for (size_t i = 0; i < sizeof(pool); i++)
        pool[i] = (char)(' ' + i * 7 % 90);
    for (size_t i = 0; i < n; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        lens[i] = 1 + (size_t)(rng >> 33) % (i % 10 == 0 ? 1000 : 40);
        recs[i] = pool + at;
        at += lens[i];
    }
    len = encode(recs, lens, n, stream, sizeof(stream));
    assert_int_equal(sp__recordio_create(1000, &dec), SP_OK);
    for (int round = 0; round < 200; round++) {
        size_t ncuts = 0, pos = 0;
        while (ncuts < 4096) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            /* Mostly tiny chunks, sometimes empty ones, sometimes large. */
            size_t step = (rng >> 60) == 0 ? 2000 : (size_t)(rng >> 33) % (round % 3 == 0 ? 3 : 64);
            pos += step;
            if (pos >= len)
                break;
            cuts[ncuts++] = pos;
        }
        decode_cut(dec, stream, len, cuts, ncuts, recs, lens, n);
    }
    sp__recordio_destroy(dec);
}

/* The message of the last failed feed (finish raises its own). */
static char feed_error[512];

/* Feeds text (one chunk) to a fresh decoder; returns the feed's status. */
static sp_status_t feed_text(size_t cap, const char *text, sp_status_t *finish_p, seen_t *s)
{
    sp__recordio_t *dec;
    sp_status_t st;

    memset(s, 0, sizeof(*s));
    assert_int_equal(sp__recordio_create(cap, &dec), SP_OK);
    st = sp__recordio_feed(dec, text, strlen(text), collect, s);
    snprintf(feed_error, sizeof(feed_error), "%s", sp_last_error());
    if (finish_p != NULL)
        *finish_p = sp__recordio_finish(dec);
    sp__recordio_destroy(dec);
    return st;
}

static void test_recordio_malformed_lengths_are_rejected(void **state)
{
    static const char *const bad[] = {"abc\n{}",    "-5\nhello",     " 5\nhello",
                                      "+5\nhello",  "\nhello",       "0\n",
                                      "5x\nhello",  "5 \nhello",     "0x10\n",
                                      "5\r\nhello", "2\n{}3\r\nabc", "000000000000000000001\n"};
    static seen_t s;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sp_status_t fin;
        sp_status_t st = feed_text(1 << 20, bad[i], &fin, &s);
        if (st != SP_ERR_BAD_FORMAT)
            fail_msg("'%s' gave %s, want SP_ERR_BAD_FORMAT", bad[i], sp_status_str(st));
        assert_non_null(strstr(feed_error, "RecordIO"));
        assert_int_equal(fin, SP_ERR_BAD_FORMAT);
    }
    /* The record before the broken length was still delivered. */
    assert_int_equal(feed_text(64, "2\n{}3\r\nabc", NULL, &s), SP_ERR_BAD_FORMAT);
    assert_int_equal(s.n, 1);
}

static void test_recordio_oversize_is_rejected(void **state)
{
    static seen_t s;
    sp_status_t fin;

    (void)state;
    assert_int_equal(feed_text(16, "16\n0123456789abcdef", &fin, &s), SP_OK);
    assert_int_equal(fin, SP_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(feed_text(16, "17\n0123456789abcdefg", &fin, &s), SP_ERR_TOO_LARGE);
    assert_non_null(strstr(feed_error, "cap"));
    assert_int_equal(s.n, 0);
    /* A huge length fails at its digits, before any allocation. */
    assert_int_equal(feed_text(16 << 20, "99999999999999999999\n", &fin, &s), SP_ERR_TOO_LARGE);
    assert_int_equal(fin, SP_ERR_BAD_FORMAT);
}

static void test_recordio_truncated_stream_is_rejected(void **state)
{
    static seen_t s;
    sp_status_t fin;

    (void)state;
    assert_int_equal(feed_text(64, "5\nhello10\n{\"type\":", &fin, &s), SP_OK);
    assert_int_equal(s.n, 1);
    assert_int_equal(fin, SP_ERR_BAD_FORMAT);
    assert_non_null(strstr(sp_last_error(), "truncated"));
    assert_int_equal(feed_text(64, "5\nhello12", &fin, &s), SP_OK);
    assert_int_equal(fin, SP_ERR_BAD_FORMAT);
    assert_non_null(strstr(sp_last_error(), "truncated"));
    assert_int_equal(feed_text(64, "", &fin, &s), SP_OK);
    assert_int_equal(fin, SP_OK);
}

static void test_recordio_error_sticks_until_reset(void **state)
{
    static seen_t s;
    sp__recordio_t *dec;

    (void)state;
    memset(&s, 0, sizeof(s));
    assert_int_equal(sp__recordio_create(64, &dec), SP_OK);
    assert_int_equal(sp__recordio_feed(dec, "x\n", 2, collect, &s), SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__recordio_feed(dec, "2\nok", 4, collect, &s), SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__recordio_finish(dec), SP_ERR_BAD_FORMAT);
    assert_int_equal(s.n, 0);
    sp__recordio_reset(dec);
    assert_int_equal(sp__recordio_feed(dec, "2\nok", 4, collect, &s), SP_OK);
    assert_int_equal(sp__recordio_finish(dec), SP_OK);
    assert_int_equal(s.n, 1);
    sp__recordio_destroy(dec);
    sp__recordio_destroy(NULL);
    assert_int_equal(sp__recordio_create(0, &dec), SP_ERR_INVALID_PARAM);
}

static void test_recordio_callback_error_stops_the_feed(void **state)
{
    static seen_t s;
    sp__recordio_t *dec;

    (void)state;
    memset(&s, 0, sizeof(s));
    s.fail_at_call = SP_ERR_CANCELED;
    s.fail_index = 1;
    assert_int_equal(sp__recordio_create(64, &dec), SP_OK);
    assert_int_equal(sp__recordio_feed(dec, "1\na1\nb1\nc", 9, collect, &s), SP_ERR_CANCELED);
    assert_int_equal(s.n, 1);
    assert_int_equal(sp__recordio_feed(dec, "1\nd", 3, collect, &s), SP_ERR_BAD_FORMAT);
    sp__recordio_destroy(dec);
}

static void test_recordio_refused_allocation(void **state)
{
    static seen_t s;
    sp__recordio_t *dec;

    (void)state;
    memset(&s, 0, sizeof(s));
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__recordio_create(64, &dec), SP_ERR_NOMEM);
    assert_int_equal(sp__recordio_create(64, &dec), SP_OK);
    /* A record split across feeds needs the gathering buffer, allocated at its first part. */
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__recordio_feed(dec, "5\nhe", 4, collect, &s), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(sp__recordio_feed(dec, "llo", 3, collect, &s), SP_ERR_BAD_FORMAT);
    sp__recordio_reset(dec);
    assert_int_equal(sp__recordio_feed(dec, "5\nhe", 4, collect, &s), SP_OK);
    assert_int_equal(sp__recordio_feed(dec, "llo", 3, collect, &s), SP_OK);
    assert_int_equal(s.n, 1);
    sp__recordio_destroy(dec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recordio_every_split_decodes_the_same),
        cmocka_unit_test(test_recordio_random_chunks_match_the_model),
        cmocka_unit_test(test_recordio_malformed_lengths_are_rejected),
        cmocka_unit_test(test_recordio_oversize_is_rejected),
        cmocka_unit_test(test_recordio_truncated_stream_is_rejected),
        cmocka_unit_test(test_recordio_error_sticks_until_reset),
        cmocka_unit_test(test_recordio_callback_error_stops_the_feed),
        cmocka_unit_test(test_recordio_refused_allocation),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
