/*
 * The sorter (shuffle/sorter.c) as the reduce side's external sort, against
 * a reference model: the same records sorted with qsort by (key, insertion
 * index), which is the stable order the sorter promises. Keys are short
 * strings over a small alphabet (many duplicates, empty keys, shared 8-byte
 * prefixes), values carry the insertion index, so the check proves the
 * order of keys and the stability of equal keys. Cases: everything in
 * memory, many runs from shuffle.spill_records, runs merged in groups when
 * memory cannot hold a window per run, and a job comparator (reverse byte
 * order) in memory and with runs. Every case ends with no run file left and
 * no memory leaked.
 */
/* LABELS: unit */
#include "common_int.h"
#include "tests/test_dir_util.h"
#include <spate/shuffle.h>
#include "shuffle/sorter.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

typedef struct rec {
    unsigned char key[24];
    size_t klen;
    uint64_t index;
} rec_t;

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Keys of 0..20 bytes over "abc"; a third share the prefix "prefix__". */
static rec_t *make_input(size_t n, uint64_t seed)
{
    rec_t *r = calloc(n, sizeof(*r));

    assert_non_null(r);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = mix(&seed);
        size_t at = 0, len = (size_t)(x % 13);
        if (x % 3 == 0) {
            memcpy(r[i].key, "prefix__", 8);
            at = 8;
        }
        for (size_t j = 0; j < len; j++)
            r[i].key[at + j] = (unsigned char)('a' + (mix(&seed) % 3));
        r[i].klen = at + len;
        r[i].index = i;
    }
    return r;
}

static int bytes_order(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int reverse_compare(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    (void)arg;
    return -bytes_order(a, alen, b, blen);
}

static bool reverse; /* the order qsort's reference uses */

static int ref_compare(const void *x, const void *y)
{
    const rec_t *a = x, *b = y;
    int c = bytes_order(a->key, a->klen, b->key, b->klen);

    if (reverse)
        c = -c;
    return c != 0 ? c : (a->index > b->index) - (a->index < b->index);
}

typedef struct sort_case {
    const char *executor, *page_size, *spill_records;
    size_t records;
    bool reverse;
    bool want_spills, want_merge_passes;
} sort_case_t;

static void run_case(const sort_case_t *c, uint64_t seed)
{
    sp_conf_t *conf = NULL;
    sp_memory_manager_t *mm = NULL;
    sp_task_memory_t *task = NULL;
    sp_task_memory_stats_t ts;
    sp_shuffle_writer_options_t o;
    sp_sorter_t *sorter = NULL;
    rec_t *in = make_input(c->records, seed), *ref = malloc(c->records * sizeof(*ref));
    size_t got = 0;

    assert_non_null(ref);
    memcpy(ref, in, c->records * sizeof(*ref));
    reverse = c->reverse;
    qsort(ref, c->records, sizeof(*ref), ref_compare);

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", c->executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", c->page_size), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.codec", "lz4"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.spill_records", c->spill_records), SP_OK);
    assert_int_equal(sp_memory_manager_create(conf, NULL, 0, &mm), SP_OK);
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);

    assert_int_equal(sp_shuffle_writer_options_init(&o, conf), SP_OK);
    o.partitions = 1;
    o.key_ordering = true;
    o.compare = c->reverse ? reverse_compare : NULL;
    assert_int_equal(sp__sorter_create(task, conf, &o, &sorter), SP_OK);
    for (size_t i = 0; i < c->records; i++)
        assert_int_equal(
            sp__sorter_add(sorter, in[i].key, in[i].klen, &in[i].index, sizeof(in[i].index)),
            SP_OK);
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more;
        uint64_t index;

        assert_int_equal(sp__sorter_next(sorter, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        assert_true(got < c->records);
        assert_int_equal(vl, sizeof(index));
        memcpy(&index, v, sizeof(index));
        assert_int_equal(index, ref[got].index);
        assert_int_equal(kl, ref[got].klen);
        assert_memory_equal(k, ref[got].key, kl);
        got++;
    }
    assert_int_equal(got, c->records);
    if (c->want_spills)
        assert_true(sorter->stats.spills > 1);
    else
        assert_int_equal(sorter->stats.spills, 0);
    if (c->want_merge_passes)
        assert_true(sorter->stats.merge_passes > 0);
    sp__sorter_destroy(sorter);

    sp_task_memory_destroy(task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    assert_int_equal(ts.leaked_pages, 0);
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    assert_int_equal(test_dir_count(dir), 0);
    free(in);
    free(ref);
}

static void test_sorter_in_memory(void **state)
{
    const sort_case_t c = {"256m", "1m", "0", 50000, false, false, false};

    (void)state;
    run_case(&c, 1);
}

static void test_sorter_spilled_runs(void **state)
{
    const sort_case_t c = {"256m", "1m", "3000", 50000, false, true, false};

    (void)state;
    run_case(&c, 2);
}

/* 40 runs of 256 KiB windows do not fit in 4 MiB: runs are merged in groups first. */
static void test_sorter_merge_passes(void **state)
{
    const sort_case_t c = {"4m", "64k", "1000", 40000, false, true, true};

    (void)state;
    run_case(&c, 3);
}

static void test_sorter_comparator_in_memory(void **state)
{
    const sort_case_t c = {"256m", "1m", "0", 30000, true, false, false};

    (void)state;
    run_case(&c, 4);
}

static void test_sorter_comparator_spilled_runs(void **state)
{
    const sort_case_t c = {"256m", "1m", "2500", 30000, true, true, false};

    (void)state;
    run_case(&c, 5);
}

/* A failed test may leave files behind; the next starts clean. */
static int setup(void **state)
{
    (void)state;
    test_dir_clear(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_sorter_in_memory, setup),
        cmocka_unit_test_setup(test_sorter_spilled_runs, setup),
        cmocka_unit_test_setup(test_sorter_merge_passes, setup),
        cmocka_unit_test_setup(test_sorter_comparator_in_memory, setup),
        cmocka_unit_test_setup(test_sorter_comparator_spilled_runs, setup),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-sorter-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    test_dir_clear(dir);
    rmdir(dir);
    return rc;
}
