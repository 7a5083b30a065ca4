/*
 * Reference model for the map output writer tests: records generated from
 * a seed, the expected output per partition computed with qsort (stable by
 * write order), and a checker that decodes every committed partition and
 * compares it record for record.
 */
#ifndef SPATE_WRITER_TEST_UTIL_H
#define SPATE_WRITER_TEST_UTIL_H

#include <spate/shuffle.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct ref_record {
    uint32_t partition;
    uint32_t index; /* write order */
    unsigned char *key;
    size_t klen;
    unsigned char *value;
    size_t vlen;
} ref_record_t;

typedef struct ref_case {
    uint32_t partitions;
    size_t records;
    size_t max_key, max_value;
    bool skew; /* every record in one partition */
    bool key_ordering;
    sp_codec_t codec;
    sp_checksum_kind_t checksum;
    sp_writer_path_t path;
    const char *executor;      /* memory.executor */
    const char *page_size;     /* memory.page_size */
    const char *spill_records; /* shuffle.spill_records */
    unsigned seed;
} ref_case_t;

static inline int ref_cmp_ordered(const void *a, const void *b)
{
    const ref_record_t *x = a, *y = b;
    int c;

    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    c = memcmp(x->key, y->key, x->klen < y->klen ? x->klen : y->klen);
    if (c != 0)
        return c;
    if (x->klen != y->klen)
        return x->klen < y->klen ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static inline int ref_cmp_unordered(const void *a, const void *b)
{
    const ref_record_t *x = a, *y = b;

    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static inline ref_record_t *ref_generate(const ref_case_t *c)
{
    ref_record_t *r = calloc(c->records + 1, sizeof(*r));
    unsigned seed = c->seed;

    assert_non_null(r);
    for (size_t i = 0; i < c->records; i++) {
        /* Small key alphabet so that equal keys and equal prefixes occur. */
        r[i].klen = (size_t)rand_r(&seed) % (c->max_key + 1);
        r[i].vlen = (size_t)rand_r(&seed) % (c->max_value + 1);
        if (i % 97 == 5)
            r[i].vlen = c->max_value; /* the largest values occur */
        r[i].key = malloc(r[i].klen + 1);
        r[i].value = malloc(r[i].vlen + 1);
        assert_non_null(r[i].key);
        assert_non_null(r[i].value);
        for (size_t k = 0; k < r[i].klen; k++)
            r[i].key[k] = (unsigned char)('a' + rand_r(&seed) % 3);
        for (size_t k = 0; k < r[i].vlen; k++)
            r[i].value[k] = (unsigned char)(rand_r(&seed) & 0xff);
        r[i].partition = c->skew ? c->partitions - 1 : (uint32_t)rand_r(&seed) % c->partitions;
        r[i].index = (uint32_t)i;
    }
    return r;
}

static inline void ref_free(ref_record_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].key);
        free(r[i].value);
    }
    free(r);
}

/* Decodes every partition of the committed output and compares with ref. */
static inline void ref_check_output(const sp_map_status_t *status, ref_record_t *ref, size_t n,
                                    bool key_ordering)
{
    sp_map_output_t *mo = NULL;
    sp_segment_reader_t *reader = NULL;
    size_t at = 0;

    qsort(ref, n, sizeof(*ref), key_ordering ? ref_cmp_ordered : ref_cmp_unordered);
    assert_int_equal(sp_map_output_open(status->index_path, &mo), SP_OK);
    assert_int_equal(sp_map_output_partitions(mo), status->partitions);
    assert_int_equal(sp_segment_reader_create(status->codec, &reader), SP_OK);
    for (uint32_t p = 0; p < status->partitions; p++) {
        sp_segment_info_t seg;
        void *data = NULL;
        size_t len = 0, got = 0;
        bool more = true;

        assert_int_equal(sp_map_output_segment(mo, p, &seg), SP_OK);
        assert_int_equal(seg.length, status->lengths[p]);
        assert_int_equal(seg.records, status->records[p]);
        assert_int_equal(seg.checksum, status->checksums[p]);
        assert_int_equal(sp_map_output_read_segment(mo, p, &data, &len), SP_OK);
        sp_segment_reader_reset(reader, data, len);
        for (;;) {
            const void *k, *v;
            size_t kl, vl;
            assert_int_equal(sp_segment_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
            if (!more)
                break;
            assert_true(at < n);
            assert_int_equal(ref[at].partition, p);
            assert_int_equal(kl, ref[at].klen);
            assert_int_equal(vl, ref[at].vlen);
            assert_memory_equal(k, ref[at].key, kl);
            assert_memory_equal(v, ref[at].value, vl);
            at++;
            got++;
        }
        assert_int_equal(got, status->records[p]);
        free(data);
    }
    assert_int_equal(at, n);
    sp_segment_reader_destroy(reader);
    sp_map_output_close(mo);
}

#endif
