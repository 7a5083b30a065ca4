/*
 * The k-way merge (shuffle/kmerge.c: a loser tree, with 8-byte key prefixes
 * in byte order) against a reference model: the concatenation of its inputs
 * sorted with qsort by (rank, key, input, position), the stable order the
 * merge promises. Inputs are sources (callbacks, ranked like the
 * aggregator's runs), segments (LZ4 or uncompressed, like the sorter's
 * runs), or both in one merge. Two kinds of keys: short strings with many
 * duplicates across and within inputs, and keys of 0 to 16 bytes over the
 * alphabet {0x00, 0x01, 0xff} (zero bytes meet the prefix's zero padding),
 * half of the long ones sharing their first 8 bytes so that only the full
 * compare can tell them apart. The fan-in runs over every k from 1 to 300
 * (trees of every shape, full and not), with many empty inputs. A custom
 * comparator (reverse byte order) must be used instead of the prefixes;
 * ranked sources order by rank before any prefix; a merge object is reset
 * and reused. An input whose keys go down, below the prefix or within it,
 * fails the merge with SP_ERR_BAD_FORMAT naming it.
 */
/* LABELS: unit */
#include "common_int.h"
#include <spate/shuffle.h>
#include "shuffle/shuffle_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_KEY = 16 };

typedef struct rec {
    uint64_t rank;
    unsigned char key[MAX_KEY];
    size_t klen;
    uint32_t input, pos; /* the value: where the record comes from */
} rec_t;

typedef struct source {
    const rec_t *recs;
    size_t n, at;
    unsigned char value[8];
} source_t;

typedef struct buf {
    unsigned char *data;
    size_t len, cap;
} buf_t;

static bool reverse;

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int bytes_order(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = alen != 0 && blen != 0 ? memcmp(a, b, alen < blen ? alen : blen) : 0;

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int rec_compare(const void *x, const void *y)
{
    const rec_t *a = x, *b = y;
    int c;

    if (a->rank != b->rank)
        return a->rank < b->rank ? -1 : 1;
    c = bytes_order(a->key, a->klen, b->key, b->klen);
    if ((c = reverse ? -c : c) != 0)
        return c;
    if (a->input != b->input)
        return a->input < b->input ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

static int reverse_compare(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    (void)arg;
    return -bytes_order(a, alen, b, blen);
}

static sp_status_t source_next(void *arg, uint64_t *rank_p, const void **key_p, size_t *klen_p,
                               const void **value_p, size_t *vlen_p, bool *more_p)
{
    source_t *s = arg;
    const rec_t *r;

    if (s->at == s->n) {
        *more_p = false;
        return SP_OK;
    }
    r = &s->recs[s->at++];
    memcpy(s->value, &r->input, 4);
    memcpy(s->value + 4, &r->pos, 4);
    *rank_p = r->rank;
    *key_p = r->key;
    *klen_p = r->klen;
    *value_p = s->value;
    *vlen_p = sizeof(s->value);
    *more_p = true;
    return SP_OK;
}

static sp_status_t buf_sink(void *arg, const void *data, size_t len)
{
    buf_t *b = arg;

    if (b->len + len > b->cap) {
        b->cap = 2 * (b->len + len);
        b->data = realloc(b->data, b->cap);
        assert_non_null(b->data);
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return SP_OK;
}

/* One segment of the records in codec (their ranks must be 0). */
static void encode(const rec_t *recs, size_t n, sp_codec_t codec, buf_t *out)
{
    sp_encoder_t *enc = NULL;
    uint64_t len;

    assert_int_equal(sp__encoder_create(codec, 0, &enc), SP_OK);
    sp__encoder_begin(enc, buf_sink, out);
    for (size_t i = 0; i < n; i++) {
        unsigned char h[8];
        sp__le_put_u32(h, (uint32_t)recs[i].klen);
        sp__le_put_u32(h + 4, 8);
        assert_int_equal(sp__encoder_write(enc, h, 8), SP_OK);
        assert_int_equal(sp__encoder_write(enc, recs[i].key, recs[i].klen), SP_OK);
        assert_int_equal(sp__encoder_write(enc, &recs[i].input, 4), SP_OK);
        assert_int_equal(sp__encoder_write(enc, &recs[i].pos, 4), SP_OK);
    }
    assert_int_equal(sp__encoder_end(enc, &len), SP_OK);
    sp__encoder_destroy(enc);
}

/*
 * A random key: 0 to 16 bytes over {0x00, 0x01, 0xff}; half of the keys
 * longer than 8 bytes start with the same 8 bytes, so that their prefixes
 * tie and the tails decide.
 */
static void random_key(rec_t *r, uint64_t *seed)
{
    static const unsigned char alphabet[3] = {0x00, 0x01, 0xff};
    static const unsigned char shared[8] = {0x01, 0x00, 0xff, 0x01, 0x00, 0x00, 0xff, 0x01};
    size_t b = 0;

    r->klen = (size_t)(mix(seed) % (MAX_KEY + 1));
    if (r->klen > 8 && mix(seed) % 2 == 0) {
        memcpy(r->key, shared, 8);
        b = 8;
    }
    for (; b < r->klen; b++)
        r->key[b] = alphabet[mix(seed) % 3];
}

typedef struct merge_case {
    unsigned k;
    size_t max; /* records per input: 0..max */
    uint64_t seed;
    uint64_t source_mask; /* input i is a source where bit i % 64 is set, else a segment */
    bool ranked;          /* sources carry random ranks */
    bool rev;             /* the reverse comparator instead of byte order */
    bool prefix_keys;     /* random_key's keys, a third of the inputs empty, uncompressed
                             segments; else short keys of 'a' and 'b' in LZ4 segments */
} merge_case_t;

/* Merges the case's inputs and checks the output against the sorted concatenation. */
static void run_merge(const merge_case_t *c)
{
    unsigned k = c->k;
    uint64_t seed = c->seed;
    sp_codec_t codec = c->prefix_keys ? SP_CODEC_NONE : SP_CODEC_LZ4;
    rec_t **in = calloc(k, sizeof(*in)), *all = calloc(k * c->max + 1, sizeof(*all));
    size_t *n = calloc(k, sizeof(*n)), total = 0, got = 0;
    source_t *src = calloc(k, sizeof(*src));
    buf_t *seg = calloc(k, sizeof(*seg));
    sp_kmerge_t *m = NULL;

    assert_true(in != NULL && all != NULL && n != NULL && src != NULL && seg != NULL);
    reverse = c->rev;
    for (unsigned i = 0; i < k; i++) {
        bool source = c->source_mask >> (i % 64) & 1;
        if (c->prefix_keys)
            n[i] = mix(&seed) % 3 == 0 ? 0 : (size_t)(mix(&seed) % (c->max + 1));
        else
            n[i] = (size_t)(mix(&seed) % (c->max + 1));
        in[i] = calloc(n[i] + 1, sizeof(rec_t));
        for (size_t j = 0; j < n[i]; j++) {
            rec_t *r = &in[i][j];
            if (c->prefix_keys) {
                r->rank = c->ranked && source ? mix(&seed) % 4 : 0;
                random_key(r, &seed);
            } else {
                r->rank = c->ranked && source ? mix(&seed) % 5 : 0;
                r->klen = (size_t)(mix(&seed) % 4);
                for (size_t b = 0; b < r->klen; b++)
                    r->key[b] = (unsigned char)('a' + mix(&seed) % 2);
            }
            r->input = i;
        }
        qsort(in[i], n[i], sizeof(rec_t), rec_compare);
        for (size_t j = 0; j < n[i]; j++)
            in[i][j].pos = (uint32_t)j; /* positions in sorted order */
        memcpy(all + total, in[i], n[i] * sizeof(rec_t));
        total += n[i];
    }
    qsort(all, total, sizeof(*all), rec_compare);

    assert_int_equal(sp__kmerge_create(codec, c->rev ? reverse_compare : NULL, NULL, &m), SP_OK);
    for (unsigned i = 0; i < k; i++) {
        if (c->source_mask >> (i % 64) & 1) {
            src[i].recs = in[i];
            src[i].n = n[i];
            assert_int_equal(sp__kmerge_add_source(m, source_next, &src[i]), SP_OK);
        } else {
            encode(in[i], n[i], codec, &seg[i]);
            assert_int_equal(sp__kmerge_add(m, seg[i].data, seg[i].len), SP_OK);
        }
    }
    for (;;) {
        const void *key, *value;
        size_t klen, vlen;
        bool more;
        uint32_t input, pos;

        assert_int_equal(sp__kmerge_next(m, &key, &klen, &value, &vlen, &more), SP_OK);
        if (!more)
            break;
        assert_true(got < total);
        assert_int_equal(vlen, 8);
        memcpy(&input, value, 4);
        memcpy(&pos, (const unsigned char *)value + 4, 4);
        assert_int_equal(input, all[got].input);
        assert_int_equal(pos, all[got].pos);
        assert_int_equal(klen, all[got].klen);
        assert_memory_equal(key, all[got].key, klen);
        got++;
    }
    assert_int_equal(got, total);
    assert_int_equal(sp__kmerge_bad_input(m), SIZE_MAX);
    sp__kmerge_destroy(m);
    for (unsigned i = 0; i < k; i++) {
        free(in[i]);
        free(seg[i].data);
    }
    free(in);
    free(all);
    free(n);
    free(src);
    free(seg);
}

/* Short keys, many duplicates. */
static void test_kmerge_sources_ranked(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        merge_case_t c = {1 + (unsigned)(seed % 9), 300, seed, UINT64_MAX, true, false, false};
        run_merge(&c);
    }
}

static void test_kmerge_segments(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        merge_case_t c = {1 + (unsigned)(seed % 9), 300, seed, 0, false, false, false};
        run_merge(&c);
    }
}

static void test_kmerge_mixed_inputs(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        merge_case_t c = {12, 200, seed, 0x555, false, false, false};
        run_merge(&c);
    }
}

static void test_kmerge_comparator(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        merge_case_t c = {7, 200, seed, 0x2a, false, true, false};
        run_merge(&c);
    }
}

/* A source whose keys go down fails the merge, naming the input. */
static void test_kmerge_unsorted_source(void **state)
{
    rec_t good[2] = {{0, "a", 1, 0, 0}, {0, "c", 1, 0, 1}};
    rec_t bad[2] = {{0, "b", 1, 1, 0}, {0, "a", 1, 1, 1}};
    source_t s[2] = {{good, 2, 0, {0}}, {bad, 2, 0, {0}}};
    sp_kmerge_t *m = NULL;
    sp_status_t st = SP_OK;

    (void)state;
    reverse = false;
    assert_int_equal(sp__kmerge_create(SP_CODEC_NONE, NULL, NULL, &m), SP_OK);
    assert_int_equal(sp__kmerge_add_source(m, source_next, &s[0]), SP_OK);
    assert_int_equal(sp__kmerge_add_source(m, source_next, &s[1]), SP_OK);
    for (int i = 0; i < 4 && st == SP_OK; i++) {
        const void *k, *v;
        size_t kl, vl;
        bool more;
        st = sp__kmerge_next(m, &k, &kl, &v, &vl, &more);
    }
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__kmerge_bad_input(m), 1);
    sp__kmerge_destroy(m);
}

static void test_kmerge_tree_every_fan_in(void **state)
{
    (void)state;
    for (unsigned k = 1; k <= 300; k++) {
        merge_case_t c = {k, 1 + 3000 / k, 1000 + k, 0x5555555555555555ull, false, false, true};
        run_merge(&c);
    }
}

/* Many equal keys (the short ones) across and within inputs come out in input order. */
static void test_kmerge_tree_duplicates(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        merge_case_t c = {(unsigned)(60 + seed * 7), 400, seed, UINT64_MAX, false, false, true};
        run_merge(&c);
    }
}

/* Ranks order before the prefixes. */
static void test_kmerge_tree_ranked(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        merge_case_t c = {(unsigned)(1 + seed * 13), 300, seed, UINT64_MAX, true, false, true};
        run_merge(&c);
    }
}

/* A custom comparator (reverse byte order) decides every match, not the prefixes. */
static void test_kmerge_tree_comparator(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        merge_case_t c = {
            (unsigned)(1 + seed * 17), 200, seed, 0x5555555555555555ull, false, true, true};
        run_merge(&c);
    }
}

/* Reset and reuse: a merge of a different fan-in on the same object. */
static void test_kmerge_tree_reset(void **state)
{
    rec_t a[2] = {{0, "\x01", 1, 0, 0}, {0, "\x01\x00", 2, 0, 1}};
    rec_t b[1] = {{0, "\x01", 1, 1, 0}};
    source_t s[3] = {{a, 2, 0, {0}}, {b, 1, 0, {0}}, {a, 2, 0, {0}}};
    static const uint32_t want1[3] = {0, 1, 0}, want2[2] = {2, 2};
    sp_kmerge_t *m = NULL;
    const void *k, *v;
    size_t kl, vl;
    bool more;
    uint32_t input;

    (void)state;
    assert_int_equal(sp__kmerge_create(SP_CODEC_NONE, NULL, NULL, &m), SP_OK);
    assert_int_equal(sp__kmerge_add_source(m, source_next, &s[0]), SP_OK);
    assert_int_equal(sp__kmerge_add_source(m, source_next, &s[1]), SP_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sp__kmerge_next(m, &k, &kl, &v, &vl, &more), SP_OK);
        assert_true(more);
        memcpy(&input, v, 4);
        assert_int_equal(input, want1[i]); /* "\x01" of input 0, of input 1, then "\x01\x00" */
    }
    assert_int_equal(sp__kmerge_next(m, &k, &kl, &v, &vl, &more), SP_OK);
    assert_false(more);
    sp__kmerge_reset(m);
    s[2].at = 0;
    for (size_t i = 0; i < 2; i++)
        a[i].input = 2;
    assert_int_equal(sp__kmerge_add_source(m, source_next, &s[2]), SP_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(sp__kmerge_next(m, &k, &kl, &v, &vl, &more), SP_OK);
        assert_true(more);
        memcpy(&input, v, 4);
        assert_int_equal(input, want2[i]);
    }
    assert_int_equal(sp__kmerge_next(m, &k, &kl, &v, &vl, &more), SP_OK);
    assert_false(more);
    sp__kmerge_destroy(m);
}

/*
 * Input bad of k sorted inputs goes down at its second record, past the
 * prefix (keys equal in their first 8 bytes) or within it; the merge must
 * fail naming it, before returning the lower key.
 */
static void check_unsorted(unsigned k, unsigned bad, bool past_prefix)
{
    rec_t *recs = calloc(2 * k, sizeof(*recs));
    buf_t *seg = calloc(k, sizeof(*seg));
    sp_kmerge_t *m = NULL;
    sp_status_t st = SP_OK;
    size_t returned = 0;

    assert_true(recs != NULL && seg != NULL);
    reverse = false;
    for (unsigned i = 0; i < k; i++) {
        for (unsigned j = 0; j < 2; j++) {
            rec_t *r = &recs[2 * i + j];
            r->klen = 12;
            memset(r->key, 0x01, 12);
            r->key[past_prefix ? 10 : 3] = (unsigned char)(0x10 + j); /* going up */
            r->input = i;
            r->pos = j;
        }
        if (i == bad)
            recs[2 * i + 1].key[past_prefix ? 10 : 3] = 0x00; /* going down */
        encode(&recs[2 * i], 2, SP_CODEC_NONE, &seg[i]);
    }
    assert_int_equal(sp__kmerge_create(SP_CODEC_NONE, NULL, NULL, &m), SP_OK);
    for (unsigned i = 0; i < k; i++)
        assert_int_equal(sp__kmerge_add(m, seg[i].data, seg[i].len), SP_OK);
    while (st == SP_OK && returned <= 2 * k) {
        const void *key, *v;
        size_t kl, vl;
        bool more = false;
        st = sp__kmerge_next(m, &key, &kl, &v, &vl, &more);
        if (st == SP_OK && !more)
            break;
        if (st == SP_OK) {
            assert_int_equal(kl, 12);
            assert_int_not_equal(((const unsigned char *)key)[past_prefix ? 10 : 3], 0x00);
            returned++;
        }
    }
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__kmerge_bad_input(m), bad);
    sp__kmerge_destroy(m);
    for (unsigned i = 0; i < k; i++)
        free(seg[i].data);
    free(seg);
    free(recs);
}

static void test_kmerge_tree_unsorted_input(void **state)
{
    (void)state;
    check_unsorted(1, 0, true);
    check_unsorted(1, 0, false);
    check_unsorted(129, 77, true);
    check_unsorted(129, 128, false);
    check_unsorted(300, 0, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kmerge_sources_ranked),
        cmocka_unit_test(test_kmerge_segments),
        cmocka_unit_test(test_kmerge_mixed_inputs),
        cmocka_unit_test(test_kmerge_comparator),
        cmocka_unit_test(test_kmerge_unsorted_source),
        cmocka_unit_test(test_kmerge_tree_every_fan_in),
        cmocka_unit_test(test_kmerge_tree_duplicates),
        cmocka_unit_test(test_kmerge_tree_ranked),
        cmocka_unit_test(test_kmerge_tree_comparator),
        cmocka_unit_test(test_kmerge_tree_reset),
        cmocka_unit_test(test_kmerge_tree_unsorted_input),
    };

    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
