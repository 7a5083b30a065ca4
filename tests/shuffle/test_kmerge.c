/*
 * The k-way merge heap (shuffle/kmerge.c) against a reference model: the
 * concatenation of its inputs sorted with qsort by (rank, key, input,
 * position), the stable order the merge promises. Inputs are sources
 * (callbacks, ranked like the aggregator's runs), LZ4 segments (like the
 * sorter's runs), or both in one merge; keys are short strings with many
 * duplicates across and within inputs; a job comparator (reverse byte
 * order) is checked too. An input whose order goes down must fail the
 * merge with SP_ERR_BAD_FORMAT naming it.
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

typedef struct rec {
    uint64_t rank;
    unsigned char key[8];
    size_t klen;
    uint32_t input, pos; /* the value: where the record comes from */
} rec_t;

typedef struct source {
    const rec_t *recs;
    size_t n, at;
    unsigned char value[8];
} source_t;

static bool reverse;

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int key_order(const rec_t *a, const rec_t *b)
{
    int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);

    c = c != 0 ? c : (a->klen > b->klen) - (a->klen < b->klen);
    return reverse ? -c : c;
}

static int rec_compare(const void *x, const void *y)
{
    const rec_t *a = x, *b = y;
    int c;

    if (a->rank != b->rank)
        return a->rank < b->rank ? -1 : 1;
    if ((c = key_order(a, b)) != 0)
        return c;
    if (a->input != b->input)
        return a->input < b->input ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

static int reverse_compare(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    (void)arg;
    c = c != 0 ? c : (alen > blen) - (alen < blen);
    return -c;
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

typedef struct buf {
    unsigned char *data;
    size_t len, cap;
} buf_t;

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

/* One LZ4 segment of the records (their ranks must be 0). */
static void encode(const rec_t *recs, size_t n, buf_t *out)
{
    sp_encoder_t *enc = NULL;
    uint64_t len;

    assert_int_equal(sp__encoder_create(SP_CODEC_LZ4, 0, &enc), SP_OK);
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
 * Merges k inputs of up to max records each (sources where source_mask has
 * the input's bit, segments elsewhere) and checks the output against the
 * sorted concatenation.
 */
static void run_merge(unsigned k, size_t max, uint64_t source_mask, bool ranked, bool rev,
                      uint64_t seed)
{
    rec_t **in = calloc(k, sizeof(*in)), *all = calloc(k * max, sizeof(*all));
    size_t *n = calloc(k, sizeof(*n)), total = 0, got = 0;
    source_t *src = calloc(k, sizeof(*src));
    buf_t *seg = calloc(k, sizeof(*seg));
    sp_kmerge_t *m = NULL;

    assert_true(in != NULL && all != NULL && n != NULL && src != NULL && seg != NULL);
    reverse = rev;
    for (unsigned i = 0; i < k; i++) {
        n[i] = (size_t)(mix(&seed) % (max + 1));
        in[i] = calloc(n[i] + 1, sizeof(rec_t));
        for (size_t j = 0; j < n[i]; j++) {
            rec_t *r = &in[i][j];
            r->rank = ranked && (source_mask >> i & 1) ? mix(&seed) % 5 : 0;
            r->klen = (size_t)(mix(&seed) % 4);
            for (size_t b = 0; b < r->klen; b++)
                r->key[b] = (unsigned char)('a' + mix(&seed) % 2);
            r->input = i;
            r->pos = (uint32_t)j;
        }
        qsort(in[i], n[i], sizeof(rec_t), rec_compare);
        for (size_t j = 0; j < n[i]; j++)
            in[i][j].pos = (uint32_t)j; /* positions in sorted order */
        memcpy(all + total, in[i], n[i] * sizeof(rec_t));
        total += n[i];
    }
    qsort(all, total, sizeof(*all), rec_compare);

    assert_int_equal(sp__kmerge_create(SP_CODEC_LZ4, rev ? reverse_compare : NULL, NULL, &m),
                     SP_OK);
    for (unsigned i = 0; i < k; i++) {
        if (source_mask >> i & 1) {
            src[i].recs = in[i];
            src[i].n = n[i];
            assert_int_equal(sp__kmerge_add_source(m, source_next, &src[i]), SP_OK);
        } else {
            encode(in[i], n[i], &seg[i]);
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

static void test_kmerge_sources_ranked(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++)
        run_merge(1 + (unsigned)(seed % 9), 300, UINT64_MAX, true, false, seed);
}

static void test_kmerge_segments(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++)
        run_merge(1 + (unsigned)(seed % 9), 300, 0, false, false, seed);
}

static void test_kmerge_mixed_inputs(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++)
        run_merge(12, 200, 0x555, false, false, seed);
}

static void test_kmerge_comparator(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++)
        run_merge(7, 200, 0x2a, false, true, seed);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kmerge_sources_ranked),
        cmocka_unit_test(test_kmerge_segments),
        cmocka_unit_test(test_kmerge_mixed_inputs),
        cmocka_unit_test(test_kmerge_comparator),
        cmocka_unit_test(test_kmerge_unsorted_source),
    };

    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
