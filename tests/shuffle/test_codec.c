/*
 * Tests of the segment codecs and checksums against reference models. The
 * model of a codec is the identity: whatever is written into a segment, in
 * whatever chunks, must decode to the same bytes, and segments encoded one by
 * one and concatenated (what the merge does to the segments of a partition)
 * must decode to the concatenation of their inputs. Inputs are random and
 * highly compressible, at sizes around the 64 KiB block and staging sizes
 * and up to 5 MiB, written in random chunks from 1 byte to 200 KiB, and
 * decoded with output caps down to 1 byte. The encoded length reported must
 * be what the sink received, an empty segment must be 0 bytes, and small
 * writes must still reach the sink in large pieces, and input written in
 * place through the encoder's window must encode to the very bytes that the
 * same input written with sp__encoder_write() gives. LZ4 frames are walked
 * block by block: random input is stored raw, compressible input compressed
 * (after the encoder's backoff when random input came before it).
 *
 * Damaged input must never crash or write outside its buffers (the inputs
 * are copied into exact-size allocations so that ASan sees any overrun):
 * every truncation of a frame, random garbage, and a zstd frame asking for a
 * window above the bound are SP_ERR_CORRUPT; a flipped byte, which LZ4
 * without a content checksum may decode into garbage, always changes the
 * segment checksum. Checksums are checked against published CRC-32C vectors
 * and XXH3_64bits(), and streaming in random pieces against one shot
 * (including a buffer over 1 GiB, more than one crc32_iscsi call takes).
 * Create paths fail with SP_ERR_NOMEM under allocation fault injection.
 */
/* LABELS: unit */
#include "shuffle/codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define KiB ((size_t)1024)
#define MiB ((size_t)1024 * 1024)

static const sp_codec_t all_codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4, SP_CODEC_ZSTD};
static const sp_codec_t frame_codecs[] = {SP_CODEC_LZ4, SP_CODEC_ZSTD};

/* splitmix64: every seed gives a distinct, reproducible stream. */
static uint64_t next_random(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static size_t random_between(uint64_t *s, size_t lo, size_t hi)
{
    return lo + (size_t)(next_random(s) % (hi - lo + 1));
}

static void *xmalloc(size_t len)
{
    void *p = malloc(len != 0 ? len : 1);

    assert_non_null(p);
    return p;
}

/* A copy in an allocation of exactly len bytes, so ASan sees any over-read. */
static unsigned char *dup_exact(const void *src, size_t len)
{
    unsigned char *p = xmalloc(len);

    if (len > 0)
        memcpy(p, src, len);
    return p;
}

/*
 * Random bytes, or text-like bytes (a few words, numbers and now and then a
 * random byte) that every codec compresses well.
 */
static unsigned char *make_input(size_t len, bool compressible, uint64_t *rng)
{
    static const char *const words[] = {"spate ", "shuffle ", "partition=", "record ",
                                        "key:",   "value\n",  "executor ",  "map_"};
    unsigned char *p = xmalloc(len);
    size_t i = 0;

    while (i < len) {
        uint64_t r = next_random(rng);
        if (!compressible) {
            for (unsigned b = 0; b < 8 && i < len; b++)
                p[i++] = (unsigned char)(r >> (8 * b));
        } else if (r % 64 == 0) {
            p[i++] = (unsigned char)(r >> 8);
        } else if (r % 4 == 0) {
            char num[24];
            int n = snprintf(num, sizeof(num), "%u ", (unsigned)(r >> 40) % 1000);
            for (int k = 0; k < n && i < len; k++)
                p[i++] = (unsigned char)num[k];
        } else {
            const char *w = words[(r >> 8) % SP_ARRAY_SIZE(words)];
            for (size_t k = 0; w[k] != '\0' && i < len; k++)
                p[i++] = (unsigned char)w[k];
        }
    }
    return p;
}

/*
 * Write sizes: tiny, small or large with equal chance, 1 byte to 200 KiB,
 * and never more than left.
 */
static size_t random_chunk(uint64_t *rng, size_t left)
{
    size_t n;

    switch (next_random(rng) % 3) {
    case 0: n = random_between(rng, 1, 16); break;
    case 1: n = random_between(rng, 1, 4 * KiB); break;
    default: n = random_between(rng, 1, 200 * KiB); break;
    }
    return SP_MIN(n, left);
}

/* The sink: appends to a buffer; can fail its n-th call. */
typedef struct sink {
    unsigned char *buf;
    size_t len, cap;
    size_t calls;
    size_t fail_at; /* 1-based call that fails; 0 for none */
    sp_status_t fail_status;
} sink_t;

static sp_status_t sink_fn(void *arg, const void *buf, size_t len)
{
    sink_t *s = arg;

    s->calls++;
    assert_true(len > 0);
    if (s->fail_at != 0 && s->calls == s->fail_at)
        return s->fail_status;
    if (s->len + len > s->cap) {
        s->cap = SP_MAX(s->len + len, 2 * s->cap);
        s->buf = realloc(s->buf, s->cap);
        assert_non_null(s->buf);
    }
    memcpy(s->buf + s->len, buf, len);
    s->len += len;
    return SP_OK;
}

static void sink_clear(sink_t *s)
{
    free(s->buf);
    memset(s, 0, sizeof(*s));
}

/*
 * Encodes in[0..len) as one segment in random chunks, with now and then an
 * empty write; checks that the reported size is what the sink received.
 */
static uint64_t encode_segment(sp_encoder_t *enc, sink_t *sink, const unsigned char *in, size_t len,
                               uint64_t *rng)
{
    size_t before = sink->len, off = 0;
    uint64_t encoded = UINT64_MAX;

    sp__encoder_begin(enc, sink_fn, sink);
    while (off < len) {
        size_t n = random_chunk(rng, len - off);
        if (next_random(rng) % 16 == 0)
            assert_int_equal(sp__encoder_write(enc, in + off, 0), SP_OK);
        assert_int_equal(sp__encoder_write(enc, in + off, n), SP_OK);
        off += n;
    }
    assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
    assert_int_equal(encoded, sink->len - before);
    return encoded;
}

/*
 * Decodes all of in[0..len) (copied to an exact-size buffer) with reads of
 * at most cap bytes into an exact-size buffer. Returns the status that ended
 * it (SP_OK at the end of input) and in *out_p, *out_len_p everything decoded
 * before that. Checks that produced never exceeds cap, that a failed read
 * leaves *produced_p alone, and that a finished decoder stays finished.
 */
static sp_status_t decode_all(sp_decoder_t *dec, const unsigned char *in, size_t len, size_t cap,
                              unsigned char **out_p, size_t *out_len_p)
{
    unsigned char *copy = dup_exact(in, len), *chunk = xmalloc(cap), *out = NULL;
    size_t out_len = 0, out_cap = 0, produced;
    sp_status_t st;

    sp__decoder_reset(dec, copy, len);
    for (;;) {
        produced = SIZE_MAX;
        st = sp__decoder_read(dec, chunk, cap, &produced);
        if (st != SP_OK) {
            assert_int_equal(produced, SIZE_MAX);
            break;
        }
        assert_true(produced <= cap);
        if (produced == 0) {
            assert_int_equal(sp__decoder_read(dec, chunk, cap, &produced), SP_OK);
            assert_int_equal(produced, 0);
            break;
        }
        if (out_len + produced > out_cap) {
            out_cap = SP_MAX(out_len + produced, 2 * out_cap);
            out = realloc(out, out_cap);
            assert_non_null(out);
        }
        memcpy(out + out_len, chunk, produced);
        out_len += produced;
    }
    free(chunk);
    free(copy);
    *out_p = out;
    *out_len_p = out_len;
    return st;
}

/* Decodes in[0..len) and checks it equals expect[0..expect_len). */
static void check_decodes_to(sp_decoder_t *dec, const unsigned char *in, size_t len, size_t cap,
                             const unsigned char *expect, size_t expect_len)
{
    unsigned char *out = NULL;
    size_t out_len = 0;

    assert_int_equal(decode_all(dec, in, len, cap, &out, &out_len), SP_OK);
    assert_int_equal(out_len, expect_len);
    if (expect_len > 0)
        assert_memory_equal(out, expect, expect_len);
    free(out);
}

static void test_codec_round_trip_every_size(void **state)
{
    static const size_t sizes[] = {0,       1,      100, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1,
                                   1 * MiB, 5 * MiB};
    uint64_t rng = 1;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_codec_t codec = all_codecs[c];
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;

        assert_int_equal(sp__encoder_create(codec, 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(codec, &dec), SP_OK);
        for (size_t i = 0; i < SP_ARRAY_SIZE(sizes); i++) {
            for (int compressible = 0; compressible <= 1; compressible++) {
                size_t len = sizes[i];
                unsigned char *in = make_input(len, compressible, &rng);
                sink_t sink = {0};
                sp_encoder_t *fresh = NULL;
                uint64_t encoded;

                /*
                 * LZ4 goes on storing blocks raw for a while after random
                 * input: the ratio is checked on a fresh encoder.
                 */
                if (compressible)
                    assert_int_equal(sp__encoder_create(codec, 0, &fresh), SP_OK);
                encoded = encode_segment(fresh != NULL ? fresh : enc, &sink, in, len, &rng);
                sp__encoder_destroy(fresh);

                if (len == 0) {
                    assert_int_equal(encoded, 0);
                    assert_int_equal(sink.calls, 0);
                }
                if (codec == SP_CODEC_NONE) {
                    assert_int_equal(encoded, len);
                    if (len > 0)
                        assert_memory_equal(sink.buf, in, len);
                } else if (compressible && len >= 64 * KiB) {
                    assert_true(encoded < len / 2);
                } else if (!compressible) {
                    /* Incompressible blocks are stored, not expanded. */
                    assert_true(encoded <= len + 32 + 8 * (len / (64 * KiB) + 1));
                }
                check_decodes_to(dec, sink.buf, sink.len, 128 * KiB, in, len);
                sink_clear(&sink);
                free(in);
            }
        }
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
}

/* The blocks of one LZ4 frame (lz4_Frame_format.md) at f[0..len). */
typedef struct lz4_blocks {
    size_t raw, compressed;
    size_t first_compressed; /* index of the first compressed block; SIZE_MAX if none */
} lz4_blocks_t;

static lz4_blocks_t walk_lz4_frame(const unsigned char *f, size_t len)
{
    lz4_blocks_t b = {0, 0, SIZE_MAX};
    size_t pos = 7;

    assert_true(len >= 11);
    assert_int_equal(f[0] | f[1] << 8 | f[2] << 16 | (uint32_t)f[3] << 24, 0x184D2204u);
    assert_int_equal(f[4], 0x60); /* version 01, independent blocks, no checksums */
    assert_int_equal(f[5], 0x40); /* 64 KiB blocks */
    assert_int_equal(f[6], (unsigned char)(XXH32(f + 4, 2, 0) >> 8));
    for (;;) {
        uint32_t word;
        size_t size;

        assert_true(pos + 4 <= len);
        word = f[pos] | f[pos + 1] << 8 | f[pos + 2] << 16 | (uint32_t)f[pos + 3] << 24;
        pos += 4;
        if (word == 0)
            break;
        size = word & 0x7FFFFFFFu;
        assert_true(size > 0 && size <= 64 * KiB);
        if (word & 0x80000000u) {
            b.raw++;
        } else {
            if (b.first_compressed == SIZE_MAX)
                b.first_compressed = b.raw + b.compressed;
            b.compressed++;
        }
        pos += size;
    }
    assert_int_equal(pos, len);
    return b;
}

/* Encodes in[0..len) as one segment with enc and checks it decodes back. */
static lz4_blocks_t encode_lz4_checked(sp_encoder_t *enc, sp_decoder_t *dec,
                                       const unsigned char *in, size_t len, uint64_t *rng,
                                       uint64_t *encoded_p)
{
    sink_t sink = {0};
    lz4_blocks_t b;

    *encoded_p = encode_segment(enc, &sink, in, len, rng);
    b = walk_lz4_frame(sink.buf, sink.len);
    check_decodes_to(dec, sink.buf, sink.len, 256 * KiB, in, len);
    sink_clear(&sink);
    return b;
}

/*
 * Random input is stored in raw blocks (and not expanded beyond their
 * headers); after it, compressible input is compressed again once the
 * backoff (at most 64 blocks) has passed, and from the first block once a
 * block has compressed well.
 */
static void test_codec_lz4_stores_incompressible_blocks_raw(void **state)
{
    unsigned char *noise, *text, *mixed;
    sp_encoder_t *enc = NULL;
    sp_decoder_t *dec = NULL;
    uint64_t rng = 42, encoded;
    lz4_blocks_t b;

    (void)state;
    noise = make_input(4 * MiB, false, &rng);
    text = make_input(16 * MiB, true, &rng);
    assert_int_equal(sp__encoder_create(SP_CODEC_LZ4, 0, &enc), SP_OK);
    assert_int_equal(sp__decoder_create(SP_CODEC_LZ4, &dec), SP_OK);

    b = encode_lz4_checked(enc, dec, noise, 4 * MiB, &rng, &encoded);
    assert_int_equal(b.compressed, 0);
    assert_int_equal(b.raw, 64);
    assert_int_equal(encoded, 7 + 64 * (4 + 64 * KiB) + 4);

    b = encode_lz4_checked(enc, dec, text, 16 * MiB, &rng, &encoded);
    assert_true(b.raw >= 1 && b.raw <= 64);
    assert_int_equal(b.raw + b.compressed, 256);
    assert_int_equal(b.first_compressed, b.raw); /* raw only while backing off */
    assert_true(encoded < 8 * MiB);

    b = encode_lz4_checked(enc, dec, text, 1 * MiB, &rng, &encoded);
    assert_int_equal(b.raw, 0);
    assert_int_equal(b.compressed, 16);

    /* Text, noise and text again in one segment: each part decodes. */
    mixed = xmalloc(3 * MiB);
    memcpy(mixed, text, MiB);
    memcpy(mixed + MiB, noise, MiB);
    memcpy(mixed + 2 * MiB, text + MiB, MiB);
    b = encode_lz4_checked(enc, dec, mixed, 3 * MiB, &rng, &encoded);
    assert_true(b.raw >= 16 && b.compressed >= 16);

    free(mixed);
    free(text);
    free(noise);
    sp__decoder_destroy(dec);
    sp__encoder_destroy(enc);
}

static void test_codec_zstd_levels_round_trip(void **state)
{
    static const int levels[] = {0, 1, 3, 9, 19};
    uint64_t rng = 2;
    unsigned char *text = make_input(1 * MiB, true, &rng);
    unsigned char *noise = make_input(100 * KiB, false, &rng);
    sp_decoder_t *dec = NULL;
    uint64_t at_level1 = 0, at_level19 = 0;

    (void)state;
    assert_int_equal(sp__decoder_create(SP_CODEC_ZSTD, &dec), SP_OK);
    for (size_t i = 0; i < SP_ARRAY_SIZE(levels); i++) {
        sp_encoder_t *enc = NULL;
        sink_t sink = {0};
        uint64_t encoded;

        assert_int_equal(sp__encoder_create(SP_CODEC_ZSTD, levels[i], &enc), SP_OK);
        encoded = encode_segment(enc, &sink, text, 1 * MiB, &rng);
        check_decodes_to(dec, sink.buf, sink.len, 64 * KiB, text, 1 * MiB);
        if (levels[i] == 1)
            at_level1 = encoded;
        if (levels[i] == 19)
            at_level19 = encoded;
        sink_clear(&sink);
        encode_segment(enc, &sink, noise, 100 * KiB, &rng);
        check_decodes_to(dec, sink.buf, sink.len, 64 * KiB, noise, 100 * KiB);
        sink_clear(&sink);
        sp__encoder_destroy(enc);
    }
    /* The level reaches the library: the highest compresses better. */
    assert_true(at_level19 < at_level1);
    sp__decoder_destroy(dec);
    free(noise);
    free(text);
}

static void test_codec_empty_segment_is_zero_bytes(void **state)
{
    uint64_t rng = 3;
    unsigned char *in = make_input(1000, false, &rng);

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        sink_t sink = {0};
        uint64_t encoded = UINT64_MAX;
        unsigned char out[16];
        size_t produced = SIZE_MAX;

        assert_int_equal(sp__encoder_create(all_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(all_codecs[c], &dec), SP_OK);
        sp__encoder_begin(enc, sink_fn, &sink);
        assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
        assert_int_equal(encoded, 0);
        sp__encoder_begin(enc, sink_fn, &sink);
        assert_int_equal(sp__encoder_write(enc, NULL, 0), SP_OK);
        assert_int_equal(sp__encoder_write(enc, in, 0), SP_OK);
        encoded = UINT64_MAX;
        assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
        assert_int_equal(encoded, 0);
        assert_int_equal(sink.calls, 0);
        /* A segment after the empty ones is whole and alone in the sink. */
        encoded = encode_segment(enc, &sink, in, 1000, &rng);
        assert_int_equal(encoded, sink.len);
        check_decodes_to(dec, sink.buf, sink.len, 4 * KiB, in, 1000);
        /* Decoding nothing ends at once, again and again. */
        for (int i = 0; i < 3; i++) {
            sp__decoder_reset(dec, NULL, 0);
            assert_int_equal(sp__decoder_read(dec, out, sizeof(out), &produced), SP_OK);
            assert_int_equal(produced, 0);
        }
        sink_clear(&sink);
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
    free(in);
}

/* The merge: segments of one partition from several spills, back to back. */
static void test_codec_concatenated_segments_decode_to_concatenation(void **state)
{
    uint64_t rng = 4;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_codec_t codec = all_codecs[c];
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;

        assert_true(sp__codec_concatenable(codec));
        assert_int_equal(sp__encoder_create(codec, 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(codec, &dec), SP_OK);
        for (int round = 0; round < 20; round++) {
            size_t lens[3], offs[4] = {0}, total = 0, pos = 0;
            unsigned char *ins[3], *all;
            sink_t sink = {0};

            for (int s = 0; s < 3; s++) {
                /* Now and then an empty segment, as an empty spill partition. */
                lens[s] = next_random(&rng) % 5 == 0 ? 0 : random_between(&rng, 1, 300 * KiB);
                ins[s] = make_input(lens[s], next_random(&rng) % 2, &rng);
                offs[s + 1] = offs[s] + encode_segment(enc, &sink, ins[s], lens[s], &rng);
                total += lens[s];
            }
            assert_int_equal(offs[3], sink.len);
            all = xmalloc(total);
            for (int s = 0; s < 3; s++) {
                if (lens[s] > 0)
                    memcpy(all + pos, ins[s], lens[s]);
                pos += lens[s];
                /* Each segment alone, as an index entry would cut it out. */
                check_decodes_to(dec, sink.buf + offs[s], offs[s + 1] - offs[s], 32 * KiB, ins[s],
                                 lens[s]);
            }
            check_decodes_to(dec, sink.buf, sink.len, random_between(&rng, 1, 256 * KiB), all,
                             total);
            for (int s = 0; s < 3; s++)
                free(ins[s]);
            free(all);
            sink_clear(&sink);
        }
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
}

static void test_codec_decodes_into_tiny_buffers(void **state)
{
    static const size_t lens[] = {5000, 0, 70 * KiB, 300};
    uint64_t rng = 5;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        sink_t sink = {0};
        unsigned char *all = xmalloc(80 * KiB);
        size_t total = 0;

        assert_int_equal(sp__encoder_create(all_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(all_codecs[c], &dec), SP_OK);
        for (size_t s = 0; s < SP_ARRAY_SIZE(lens); s++) {
            unsigned char *in = make_input(lens[s], s == 2, &rng);
            encode_segment(enc, &sink, in, lens[s], &rng);
            if (lens[s] > 0)
                memcpy(all + total, in, lens[s]);
            total += lens[s];
            free(in);
        }
        check_decodes_to(dec, sink.buf, sink.len, 1, all, total);
        check_decodes_to(dec, sink.buf, sink.len, 7, all, total);
        sink_clear(&sink);
        free(all);
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
}

/* Small writes are staged: the sink sees pieces of 32 KiB or more. */
static void test_codec_sink_gets_large_pieces(void **state)
{
    uint64_t rng = 6;
    size_t len = 1 * MiB;
    unsigned char *in = make_input(len, false, &rng);

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        sink_t sink = {0};
        uint64_t encoded = 0;

        assert_int_equal(sp__encoder_create(all_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(all_codecs[c], &dec), SP_OK);
        sp__encoder_begin(enc, sink_fn, &sink);
        for (size_t i = 0; i < len; i++)
            assert_int_equal(sp__encoder_write(enc, in + i, 1), SP_OK);
        assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
        assert_int_equal(encoded, sink.len);
        assert_true(sink.calls <= encoded / (32 * KiB) + 2);
        check_decodes_to(dec, sink.buf, sink.len, 64 * KiB, in, len);
        sink_clear(&sink);
        if (all_codecs[c] == SP_CODEC_NONE) {
            /* One large write goes to the sink as it is, in one call. */
            sp__encoder_begin(enc, sink_fn, &sink);
            assert_int_equal(sp__encoder_write(enc, in, len), SP_OK);
            assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
            assert_int_equal(sink.calls, 1);
            assert_int_equal(encoded, len);
            assert_memory_equal(sink.buf, in, len);
            sink_clear(&sink);
        }
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
    free(in);
}

/*
 * Input written in place (sp__encoder_window / sp__encoder_wrote, what the
 * sorter's gather does) encodes to exactly the bytes that sp__encoder_write
 * of the same input gives, for random and compressible input in random
 * pieces: a piece that fits the window is copied into it, sometimes in two
 * parts; one that does not is split at the window's end or written. zstd
 * takes no input in place.
 */
static void test_codec_window_equals_write(void **state)
{
    uint64_t rng = 15;
    size_t len = 3 * MiB + 777;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        for (int compressible = 0; compressible < 2; compressible++) {
            unsigned char *in = make_input(len, compressible != 0, &rng);
            sp_encoder_t *enc = NULL;
            sp_decoder_t *dec = NULL;
            sink_t direct = {0}, windowed = {0};
            uint64_t encoded = 0;
            size_t off = 0, room = 0, in_place = 0;

            assert_int_equal(sp__encoder_create(all_codecs[c], 0, &enc), SP_OK);
            assert_int_equal(sp__decoder_create(all_codecs[c], &dec), SP_OK);
            sp__encoder_begin(enc, sink_fn, &direct);
            assert_int_equal(sp__encoder_write(enc, in, len), SP_OK);
            assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);

            sp__encoder_begin(enc, sink_fn, &windowed);
            if (all_codecs[c] == SP_CODEC_ZSTD) {
                assert_null(sp__encoder_window(enc, &room));
                sink_clear(&direct);
                sp__encoder_end(enc, &encoded);
                sink_clear(&windowed);
                sp__decoder_destroy(dec);
                sp__encoder_destroy(enc);
                free(in);
                continue;
            }
            while (off < len) {
                size_t n = random_chunk(&rng, len - off);
                unsigned char *win = sp__encoder_window(enc, &room);

                assert_non_null(win);
                assert_true(room > 0);
                if (n <= room && next_random(&rng) % 4 != 0) {
                    size_t first = next_random(&rng) % 2 ? n : random_between(&rng, 0, n);
                    memcpy(win, in + off, first);
                    assert_int_equal(sp__encoder_wrote(enc, first), SP_OK);
                    if (first < n) {
                        win = sp__encoder_window(enc, &room);
                        assert_true(room >= n - first);
                        memcpy(win, in + off + first, n - first);
                        assert_int_equal(sp__encoder_wrote(enc, n - first), SP_OK);
                    }
                    in_place += n;
                } else if (n > room && next_random(&rng) % 2 == 0) {
                    /* Fill the window to its end, which completes a block. */
                    memcpy(win, in + off, room);
                    assert_int_equal(sp__encoder_wrote(enc, room), SP_OK);
                    in_place += room;
                    n = room;
                } else {
                    assert_int_equal(sp__encoder_write(enc, in + off, n), SP_OK);
                }
                off += n;
            }
            assert_int_equal(sp__encoder_end(enc, &encoded), SP_OK);
            assert_true(in_place > len / 4);
            assert_int_equal(encoded, windowed.len);
            assert_int_equal(windowed.len, direct.len);
            assert_memory_equal(windowed.buf, direct.buf, direct.len);
            check_decodes_to(dec, windowed.buf, windowed.len, 64 * KiB, in, len);
            sink_clear(&direct);
            sink_clear(&windowed);
            sp__decoder_destroy(dec);
            sp__encoder_destroy(enc);
            free(in);
        }
    }
}

/*
 * Every truncation of a frame is SP_ERR_CORRUPT, alone or after a whole
 * frame, and what was decoded before the error is a prefix of the input.
 */
static void test_codec_truncated_frames_are_corrupt(void **state)
{
    uint64_t rng = 7;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(frame_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;

        assert_int_equal(sp__encoder_create(frame_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(frame_codecs[c], &dec), SP_OK);
        for (int compressible = 0; compressible <= 1; compressible++) {
            size_t len = 5 * KiB;
            unsigned char *in = make_input(2 * len, compressible, &rng), *out, *two;
            sink_t first = {0}, second = {0};
            size_t out_len;

            encode_segment(enc, &first, in, len, &rng);
            encode_segment(enc, &second, in + len, len, &rng);
            two = xmalloc(first.len + second.len);
            memcpy(two, first.buf, first.len);
            memcpy(two + first.len, second.buf, second.len);
            for (size_t t = 1; t < first.len; t++) {
                size_t cap = t % 7 == 0 ? 7 : 4 * KiB;
                assert_int_equal(decode_all(dec, first.buf, t, cap, &out, &out_len),
                                 SP_ERR_CORRUPT);
                assert_non_null(strstr(sp_last_error(), "truncated"));
                assert_true(out_len <= len);
                if (out_len > 0)
                    assert_memory_equal(out, in, out_len);
                free(out);
                /* The decoder is reusable after the error. */
                if (t % 512 == 0)
                    check_decodes_to(dec, first.buf, first.len, 4 * KiB, in, len);
            }
            for (size_t t = 1; t < second.len; t += 97) {
                assert_int_equal(decode_all(dec, two, first.len + t, 4 * KiB, &out, &out_len),
                                 SP_ERR_CORRUPT);
                assert_true(out_len >= len && out_len <= 2 * len);
                assert_memory_equal(out, in, out_len);
                free(out);
            }
            check_decodes_to(dec, two, first.len + second.len, 4 * KiB, in, 2 * len);
            free(two);
            sink_clear(&first);
            sink_clear(&second);
            free(in);
        }
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
}

/*
 * A flipped bit anywhere in a segment changes both checksums; decoding the
 * damaged segment ends in SP_OK or SP_ERR_CORRUPT, never a crash or an
 * overrun, and some damage is caught by the decoder itself.
 */
static void test_codec_flipped_bytes_change_the_checksum(void **state)
{
    uint64_t rng = 8;
    size_t len = 20 * KiB;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(frame_codecs); c++) {
        unsigned char *in = make_input(len, true, &rng);
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        sink_t sink = {0};
        uint64_t crc, xxh;
        size_t corrupt = 0;

        memset(in + 8 * KiB, 0xA5, KiB); /* some runs as well as text */
        assert_int_equal(sp__encoder_create(frame_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(frame_codecs[c], &dec), SP_OK);
        encode_segment(enc, &sink, in, len, &rng);
        crc = sp__checksum_buf(SP_CHECKSUM_CRC32C, sink.buf, sink.len);
        xxh = sp__checksum_buf(SP_CHECKSUM_XXH3, sink.buf, sink.len);
        for (size_t i = 0; i < sink.len; i++) {
            unsigned char *out = NULL;
            size_t out_len = 0;
            sp_status_t st;

            sink.buf[i] ^= (unsigned char)(1u << (i % 8));
            assert_true(sp__checksum_buf(SP_CHECKSUM_CRC32C, sink.buf, sink.len) != crc);
            assert_true(sp__checksum_buf(SP_CHECKSUM_XXH3, sink.buf, sink.len) != xxh);
            st = decode_all(dec, sink.buf, sink.len, 4 * KiB, &out, &out_len);
            assert_true(st == SP_OK || st == SP_ERR_CORRUPT);
            corrupt += st == SP_ERR_CORRUPT;
            free(out);
            sink.buf[i] ^= (unsigned char)(1u << (i % 8));
        }
        assert_true(corrupt > 0);
        check_decodes_to(dec, sink.buf, sink.len, 4 * KiB, in, len);
        sink_clear(&sink);
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
        free(in);
    }
}

static void test_codec_garbage_is_corrupt(void **state)
{
    /* zstd frame: no FCS, not single segment, window 2^28; one raw 1-byte block. */
    static const unsigned char big_window[] = {0x28, 0xB5, 0x2F, 0xFD, 0x00,
                                               0x90, 0x09, 0x00, 0x00, 'x'};
    /* The same frame with a 2^20 window. */
    static const unsigned char small_window[] = {0x28, 0xB5, 0x2F, 0xFD, 0x00,
                                                 0x50, 0x09, 0x00, 0x00, 'x'};
    uint64_t rng = 9;
    sp_decoder_t *zdec = NULL;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(frame_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        unsigned char *in = make_input(10 * KiB, true, &rng);
        sink_t sink = {0};

        assert_int_equal(sp__encoder_create(frame_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(frame_codecs[c], &dec), SP_OK);
        for (int i = 0; i < 200; i++) {
            size_t len = random_between(&rng, 1, 4 * KiB);
            unsigned char *junk = make_input(len, false, &rng), *out;
            size_t out_len;

            assert_int_equal(decode_all(dec, junk, len, 4 * KiB, &out, &out_len), SP_ERR_CORRUPT);
            assert_true(sp_last_error()[0] != '\0');
            free(out);
            free(junk);
        }
        /* A whole segment followed by garbage: the segment, then the error. */
        encode_segment(enc, &sink, in, 10 * KiB, &rng);
        {
            unsigned char junk[64], *out;
            size_t out_len;
            for (size_t i = 0; i < sizeof(junk); i++)
                junk[i] = (unsigned char)next_random(&rng);
            sink_fn(&sink, junk, sizeof(junk));
            assert_int_equal(decode_all(dec, sink.buf, sink.len, 4 * KiB, &out, &out_len),
                             SP_ERR_CORRUPT);
            assert_int_equal(out_len, 10 * KiB);
            assert_memory_equal(out, in, out_len);
            free(out);
        }
        sink_clear(&sink);
        free(in);
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }

    /* The window bound: 2^28 is refused, 2^20 in the same frame is decoded. */
    assert_int_equal(sp__decoder_create(SP_CODEC_ZSTD, &zdec), SP_OK);
    {
        unsigned char *out;
        size_t out_len;
        assert_int_equal(decode_all(zdec, big_window, sizeof(big_window), 4 * KiB, &out, &out_len),
                         SP_ERR_CORRUPT);
        assert_int_equal(out_len, 0);
        free(out);
    }
    check_decodes_to(zdec, small_window, sizeof(small_window), 4 * KiB, (const unsigned char *)"x",
                     1);
    sp__decoder_destroy(zdec);
}

static void test_codec_create_validates_codec_and_level(void **state)
{
    static const int bad_levels[] = {-1, -5, 20, 22, 100};
    sp_encoder_t *const sentinel = (sp_encoder_t *)(uintptr_t)0x1;
    sp_decoder_t *const dsentinel = (sp_decoder_t *)(uintptr_t)0x1;

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_levels); i++) {
        sp_encoder_t *enc = sentinel;
        assert_int_equal(sp__encoder_create(SP_CODEC_ZSTD, bad_levels[i], &enc),
                         SP_ERR_INVALID_PARAM);
        assert_ptr_equal(enc, sentinel);
        assert_non_null(strstr(sp_last_error(), "zstd level"));
    }
    for (int level = 0; level <= 19; level++) {
        sp_encoder_t *enc = NULL;
        assert_int_equal(sp__encoder_create(SP_CODEC_ZSTD, level, &enc), SP_OK);
        sp__encoder_destroy(enc);
    }
    /* The other codecs ignore the level. */
    for (size_t c = 0; c < 2; c++) {
        sp_encoder_t *enc = NULL;
        assert_int_equal(sp__encoder_create(all_codecs[c], 100, &enc), SP_OK);
        sp__encoder_destroy(enc);
    }
    {
        sp_encoder_t *enc = sentinel;
        sp_decoder_t *dec = dsentinel;
        assert_int_equal(sp__encoder_create((sp_codec_t)7, 0, &enc), SP_ERR_INVALID_PARAM);
        assert_int_equal(sp__decoder_create((sp_codec_t)7, &dec), SP_ERR_INVALID_PARAM);
        assert_ptr_equal(enc, sentinel);
        assert_ptr_equal(dec, dsentinel);
        assert_false(sp__codec_concatenable((sp_codec_t)7));
    }
    sp__encoder_destroy(NULL);
    sp__decoder_destroy(NULL);
}

/*
 * A sink error stops the segment: it is returned unchanged by that write,
 * by every later write and by end, and the sink is not called again. The
 * encoder then serves the next segment normally.
 */
static void test_codec_sink_error_stops_encoding(void **state)
{
    uint64_t rng = 10;
    size_t len = 1 * MiB;
    unsigned char *in = make_input(len, false, &rng);

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;

        assert_int_equal(sp__encoder_create(all_codecs[c], 0, &enc), SP_OK);
        assert_int_equal(sp__decoder_create(all_codecs[c], &dec), SP_OK);
        for (size_t fail_at = 1; fail_at <= 3; fail_at++) {
            sink_t sink = {.fail_at = fail_at, .fail_status = SP_ERR_NO_SPACE};
            uint64_t encoded = UINT64_MAX;
            bool failed = false;

            sp__encoder_begin(enc, sink_fn, &sink);
            for (size_t off = 0; off < len; off += 4 * KiB) {
                sp_status_t st = sp__encoder_write(enc, in + off, 4 * KiB);
                assert_int_equal(st, failed || sink.calls >= fail_at ? SP_ERR_NO_SPACE : SP_OK);
                failed = st != SP_OK;
            }
            assert_true(failed);
            assert_int_equal(sp__encoder_end(enc, &encoded), SP_ERR_NO_SPACE);
            assert_int_equal(encoded, UINT64_MAX);
            assert_int_equal(sink.calls, fail_at);
            sink_clear(&sink);
        }
        {
            /* Small enough to stay buffered: the error comes from end. */
            sink_t sink = {.fail_at = 1, .fail_status = SP_ERR_IO};
            uint64_t encoded = UINT64_MAX;

            sp__encoder_begin(enc, sink_fn, &sink);
            assert_int_equal(sp__encoder_write(enc, in, 100), SP_OK);
            assert_int_equal(sp__encoder_end(enc, &encoded), SP_ERR_IO);
            assert_int_equal(encoded, UINT64_MAX);
            assert_int_equal(sink.calls, 1);
            sink_clear(&sink);
        }
        {
            sink_t sink = {0};
            encode_segment(enc, &sink, in, 100 * KiB, &rng);
            check_decodes_to(dec, sink.buf, sink.len, 64 * KiB, in, 100 * KiB);
            sink_clear(&sink);
        }
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
    free(in);
}

/* Each create path fails cleanly on each of its allocations. */
static void test_codec_create_without_memory(void **state)
{
    uint64_t rng = 11;
    unsigned char *in = make_input(1000, true, &rng);

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        sp_encoder_t *const sentinel = (sp_encoder_t *)(uintptr_t)0x1;
        sp_decoder_t *const dsentinel = (sp_decoder_t *)(uintptr_t)0x1;
        sp_encoder_t *enc = NULL;
        sp_decoder_t *dec = NULL;
        uint64_t n, fired;
        sp_status_t st;
        sink_t sink = {0};

        for (n = 1;; n++) {
            enc = sentinel;
            fired = sp__fault_fired(SP_FAULT_ALLOC);
            sp__fault_arm(SP_FAULT_ALLOC, n);
            st = sp__encoder_create(all_codecs[c], 0, &enc);
            sp__fault_arm(SP_FAULT_ALLOC, 0);
            if (st == SP_OK)
                break;
            assert_int_equal(st, SP_ERR_NOMEM);
            assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired + 1);
            assert_ptr_equal(enc, sentinel);
            assert_non_null(strstr(sp_last_error(), "no memory"));
        }
        assert_true(n >= 3); /* the encoder and its buffer */
        assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired);
        for (n = 1;; n++) {
            dec = dsentinel;
            fired = sp__fault_fired(SP_FAULT_ALLOC);
            sp__fault_arm(SP_FAULT_ALLOC, n);
            st = sp__decoder_create(all_codecs[c], &dec);
            sp__fault_arm(SP_FAULT_ALLOC, 0);
            if (st == SP_OK)
                break;
            assert_int_equal(st, SP_ERR_NOMEM);
            assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired + 1);
            assert_ptr_equal(dec, dsentinel);
        }
        assert_true(n >= 2); /* the decoder */
        /* What survived the faults works. */
        encode_segment(enc, &sink, in, 1000, &rng);
        check_decodes_to(dec, sink.buf, sink.len, 256, in, 1000);
        sink_clear(&sink);
        sp__decoder_destroy(dec);
        sp__encoder_destroy(enc);
    }
    free(in);
}

/* Bitwise CRC-32C, the reference model of the ISA-L one. */
static uint32_t crc32c_bitwise(const unsigned char *p, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;

    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return crc ^ 0xFFFFFFFFu;
}

static uint64_t checksum_in_pieces(sp_checksum_kind_t kind, const unsigned char *p, size_t len,
                                   uint64_t *rng)
{
    sp_checksum_t cs;
    size_t off = 0;

    sp__checksum_init(&cs, kind);
    while (off < len) {
        size_t n = random_chunk(rng, len - off);
        if (next_random(rng) % 8 == 0)
            sp__checksum_update(&cs, p + off, 0);
        sp__checksum_update(&cs, p + off, n);
        off += n;
    }
    return sp__checksum_final(&cs);
}

static void test_checksum_vectors_and_streaming(void **state)
{
    unsigned char zeros[32] = {0}, ones[32], ramp[32];
    uint64_t rng = 12;
    sp_checksum_t cs;

    (void)state;
    memset(ones, 0xFF, sizeof(ones));
    for (unsigned i = 0; i < sizeof(ramp); i++)
        ramp[i] = (unsigned char)i;
    /* The check value and RFC 3720 B.4 vectors. */
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C, "123456789", 9), 0xE3069283u);
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C, zeros, 32), 0x8A9136AAu);
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C, ones, 32), 0x62A8AB43u);
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C, ramp, 32), 0x46DD794Eu);
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C, NULL, 0), 0);
    assert_int_equal(sp__checksum_buf(SP_CHECKSUM_XXH3, NULL, 0), XXH3_64bits(NULL, 0));
    sp__checksum_init(&cs, SP_CHECKSUM_CRC32C);
    sp__checksum_update(&cs, "1234", 4);
    sp__checksum_update(&cs, "56789", 5);
    assert_int_equal(sp__checksum_final(&cs), 0xE3069283u);
    /* The final value does not consume the state. */
    assert_int_equal(sp__checksum_final(&cs), 0xE3069283u);

    for (int round = 0; round < 40; round++) {
        size_t len = round < 20 ? random_between(&rng, 0, 300) : random_between(&rng, 0, 3 * MiB);
        unsigned char *p = make_input(len, round % 2, &rng);
        uint64_t crc = sp__checksum_buf(SP_CHECKSUM_CRC32C, p, len);
        uint64_t xxh = sp__checksum_buf(SP_CHECKSUM_XXH3, p, len);

        if (round < 20)
            assert_int_equal(crc, crc32c_bitwise(p, len));
        assert_true(crc <= UINT32_MAX);
        assert_int_equal(xxh, XXH3_64bits(p, len));
        assert_int_equal(checksum_in_pieces(SP_CHECKSUM_CRC32C, p, len, &rng), crc);
        assert_int_equal(checksum_in_pieces(SP_CHECKSUM_XXH3, p, len, &rng), xxh);
        free(p);
    }
}

/* More than 1 GiB in one update: crc32_iscsi takes an int length. */
static void test_checksum_over_one_gib(void **state)
{
    size_t len = ((size_t)1 << 30) + 4099;
    unsigned char *p;
    sp_checksum_t cs;
    uint64_t one_shot;

    (void)state;
    /* Zero pages mapped on read cost no memory. */
    p = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        skip();
    one_shot = sp__checksum_buf(SP_CHECKSUM_CRC32C, p, len);
    sp__checksum_init(&cs, SP_CHECKSUM_CRC32C);
    for (size_t off = 0; off < len; off += SP_MIN(64 * MiB, len - off))
        sp__checksum_update(&cs, p + off, SP_MIN(64 * MiB, len - off));
    assert_int_equal(sp__checksum_final(&cs), one_shot);
    /* And the tail alone differs, so the whole length was covered. */
    assert_true(sp__checksum_buf(SP_CHECKSUM_CRC32C, p, 4099) != one_shot);
    munmap(p, len);
}

static void test_codec_names_round_trip(void **state)
{
    static const char *const bad[] = {"", "LZ4", "gzip", "lz4 ", "zstd1", "snappy"};
    sp_codec_t codec;
    sp_checksum_kind_t kind;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(all_codecs); c++) {
        codec = (sp_codec_t)99;
        assert_int_equal(sp_codec_parse(sp_codec_name(all_codecs[c]), &codec), SP_OK);
        assert_int_equal(codec, all_codecs[c]);
    }
    assert_string_equal(sp_codec_name(SP_CODEC_NONE), "none");
    assert_string_equal(sp_codec_name(SP_CODEC_LZ4), "lz4");
    assert_string_equal(sp_codec_name(SP_CODEC_ZSTD), "zstd");
    assert_string_equal(sp_checksum_name(SP_CHECKSUM_CRC32C), "crc32c");
    assert_string_equal(sp_checksum_name(SP_CHECKSUM_XXH3), "xxh3");
    assert_int_equal(sp_checksum_parse("crc32c", &kind), SP_OK);
    assert_int_equal(kind, SP_CHECKSUM_CRC32C);
    assert_int_equal(sp_checksum_parse("xxh3", &kind), SP_OK);
    assert_int_equal(kind, SP_CHECKSUM_XXH3);
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        char quoted[32];

        snprintf(quoted, sizeof(quoted), "'%s'", bad[i]);
        codec = (sp_codec_t)99;
        kind = (sp_checksum_kind_t)99;
        assert_int_equal(sp_codec_parse(bad[i], &codec), SP_ERR_BAD_CONF);
        assert_non_null(strstr(sp_last_error(), quoted));
        assert_int_equal(codec, 99);
        assert_int_equal(sp_checksum_parse(bad[i], &kind), SP_ERR_BAD_CONF);
        assert_non_null(strstr(sp_last_error(), quoted));
        assert_int_equal(kind, 99);
    }
    assert_int_equal(sp_codec_parse(NULL, &codec), SP_ERR_BAD_CONF);
    assert_int_equal(sp_checksum_parse(NULL, &kind), SP_ERR_BAD_CONF);
    assert_string_equal(sp_codec_name((sp_codec_t)99), "unknown");
    assert_string_equal(sp_checksum_name((sp_checksum_kind_t)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_round_trip_every_size),
        cmocka_unit_test(test_codec_lz4_stores_incompressible_blocks_raw),
        cmocka_unit_test(test_codec_zstd_levels_round_trip),
        cmocka_unit_test(test_codec_empty_segment_is_zero_bytes),
        cmocka_unit_test(test_codec_concatenated_segments_decode_to_concatenation),
        cmocka_unit_test(test_codec_decodes_into_tiny_buffers),
        cmocka_unit_test(test_codec_sink_gets_large_pieces),
        cmocka_unit_test(test_codec_window_equals_write),
        cmocka_unit_test(test_codec_truncated_frames_are_corrupt),
        cmocka_unit_test(test_codec_flipped_bytes_change_the_checksum),
        cmocka_unit_test(test_codec_garbage_is_corrupt),
        cmocka_unit_test(test_codec_create_validates_codec_and_level),
        cmocka_unit_test(test_codec_sink_error_stops_encoding),
        cmocka_unit_test(test_codec_create_without_memory),
        cmocka_unit_test(test_checksum_vectors_and_streaming),
        cmocka_unit_test(test_checksum_over_one_gib),
        cmocka_unit_test(test_codec_names_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
