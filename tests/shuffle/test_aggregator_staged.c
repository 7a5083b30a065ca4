/*
 * The aggregator's staged input (sp__aggregator_add, used by the reader and
 * the writer's combine), whose lookups are resolved in batches, against a
 * reference model: per-key sums, and per-key concatenations of the values in
 * insertion order (associative, not commutative, so a record resolved out of
 * order is caught). Keys are "k<id>"; records mix staged adds with public
 * inserts and with records too big to stage (every record is staged, the
 * table however small, but for one case at the default threshold, where the
 * first records go in directly), under ample memory (no spill)
 * and a tight budget (spills between batches and inside them), with equal
 * hashes of different keys. A combined value too large is reported by the
 * call that resolves its batch, drops only that record and leaves the
 * aggregator usable.
 */
/* LABELS: unit */
#include "common_int.h"
#include "tests/test_dir_util.h"
#include <spate/shuffle.h>
#include "shuffle/shuffle_int.h"

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

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t make_key(uint32_t id, char *buf) { return (size_t)snprintf(buf, 32, "k%u", id); }

static uint32_t key_id(const void *k, size_t kl)
{
    const char *p = k;
    uint32_t id = 0;

    assert_true(kl >= 2 && p[0] == 'k');
    for (size_t i = 1; i < kl; i++) {
        assert_true(p[i] >= '0' && p[i] <= '9');
        id = id * 10 + (uint32_t)(p[i] - '0');
    }
    return id;
}

static size_t sum_combine(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                          const void *b, size_t b_len, void *out, size_t cap)
{
    uint64_t x, y;

    (void)arg;
    (void)key;
    (void)key_len;
    assert_int_equal(a_len, 8);
    assert_int_equal(b_len, 8);
    if (cap < 8)
        return 8;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    x += y;
    memcpy(out, &x, 8);
    return 8;
}

/* Concatenation; with arg non-NULL, key "k1" asks for more than any memory. */
static size_t concat_combine(void *arg, const void *key, size_t key_len, const void *a,
                             size_t a_len, const void *b, size_t b_len, void *out, size_t cap)
{
    if (arg != NULL && key_len == 2 && memcmp(key, "k1", 2) == 0)
        return (size_t)1 << 40;
    if (a_len + b_len > cap)
        return a_len + b_len;
    if (a_len != 0)
        memcpy(out, a, a_len);
    if (b_len != 0)
        memcpy((unsigned char *)out + a_len, b, b_len);
    return a_len + b_len;
}

typedef struct env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_task_memory_t *task;
} env_t;

static void env_open(env_t *e, const char *executor)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(sp_conf_create(&e->conf), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.page_size", "64k"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.spill_buffer", "64k"), SP_OK);
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
    assert_int_equal(sp_task_memory_create(e->mm, 1, &e->task), SP_OK);
}

static void env_close(env_t *e)
{
    sp_task_memory_stats_t ts;

    sp_task_memory_destroy(e->task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    assert_int_equal(ts.leaked_pages, 0);
    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
    assert_int_equal(test_dir_count(dir), 0);
}

/* The reference: per key id, the expected value bytes (a sum or a concatenation). */
typedef struct model {
    uint32_t nkeys;
    unsigned char **val;
    size_t *len, *cap;
    unsigned char *seen;
    size_t distinct;
} model_t;

static void model_init(model_t *m, uint32_t nkeys)
{
    m->nkeys = nkeys;
    m->val = calloc(nkeys, sizeof(*m->val));
    m->len = calloc(nkeys, sizeof(*m->len));
    m->cap = calloc(nkeys, sizeof(*m->cap));
    m->seen = calloc(nkeys, 1);
    m->distinct = 0;
    assert_true(m->val != NULL && m->len != NULL && m->cap != NULL && m->seen != NULL);
}

static void model_add(model_t *m, bool sum, uint32_t id, const void *v, size_t vl)
{
    if (m->seen[id] == 0) {
        m->seen[id] = 1;
        m->distinct++;
    }
    if (sum && m->len[id] == 8) {
        uint64_t x, y;
        memcpy(&x, m->val[id], 8);
        memcpy(&y, v, 8);
        x += y;
        memcpy(m->val[id], &x, 8);
        return;
    }
    if (vl == 0)
        return; /* an empty value adds nothing (and val may still be NULL) */
    if (m->len[id] + vl > m->cap[id]) {
        m->cap[id] = 2 * (m->len[id] + vl) + 8;
        m->val[id] = realloc(m->val[id], m->cap[id]);
        assert_non_null(m->val[id]);
    }
    memcpy(m->val[id] + m->len[id], v, vl);
    m->len[id] += vl;
}

static void model_free(model_t *m)
{
    for (uint32_t i = 0; i < m->nkeys; i++)
        free(m->val[i]);
    free(m->val);
    free(m->len);
    free(m->cap);
    free(m->seen);
}

/* Drains agg, checking every key once with its reference value; returns the keys. */
static size_t drain_check(sp_aggregator_t *agg, model_t *m)
{
    size_t got = 0;

    memset(m->seen, 0, m->nkeys);
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more = false;
        uint32_t id;

        assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        id = key_id(k, kl);
        assert_true(id < m->nkeys);
        assert_int_equal(m->seen[id], 0);
        m->seen[id] = 1;
        assert_int_equal(vl, m->len[id]);
        if (vl != 0)
            assert_memory_equal(v, m->val[id], vl);
        got++;
    }
    return got;
}

/*
 * n records over nkeys keys (a fifth on 4 hot keys); sums, or concatenations
 * of values up to max_value bytes. Every 11th record goes through the public
 * insert; values over 512 bytes skip the staging. expect_spills: 1 some,
 * 0 none, -1 either.
 */
static void run_case(bool sum, size_t n, uint32_t nkeys, size_t max_value, const char *executor,
                     uint64_t seed, int expect_spills)
{
    sp_combiner_t comb = {sum ? sum_combine : concat_combine, NULL};
    sp_aggregator_t *agg = NULL;
    sp_aggregator_stats_t st;
    unsigned char *value = malloc(max_value + 8);
    model_t m;
    env_t e;
    uint64_t s = seed;

    assert_non_null(value);
    model_init(&m, nkeys);
    env_open(&e, executor);
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix(&s);
        uint32_t id = r % 5 == 0 ? (uint32_t)(r >> 32) % 4 : (uint32_t)((r >> 16) % nkeys);
        char key[32];
        size_t kl = make_key(id, key), vl = 8;

        if (sum) {
            uint64_t x = mix(&s) >> 8;
            memcpy(value, &x, 8);
        } else {
            vl = (size_t)(mix(&s) % (max_value + 1));
            for (size_t b = 0; b < vl; b++)
                value[b] = (unsigned char)(i + b);
        }
        model_add(&m, sum, id, value, vl);
        if (i % 11 == 10)
            assert_int_equal(sp_aggregator_insert(agg, key, kl, value, vl), SP_OK);
        else
            assert_int_equal(sp__aggregator_add(agg, key, kl, value, vl), SP_OK);
    }
    assert_int_equal(drain_check(agg, &m), m.distinct);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.inserted, n);
    assert_int_equal(st.keys, m.distinct);
    if (expect_spills > 0)
        assert_true(st.spills > 0);
    else if (expect_spills == 0)
        assert_int_equal(st.spills, 0);
    sp_aggregator_destroy(agg);
    env_close(&e);
    model_free(&m);
    free(value);
}

static void test_aggregator_staged_sums(void **state)
{
    (void)state;
    run_case(true, 300000, 60000, 8, "256m", 1, 0);
    run_case(true, 300000, 60000, 8, "2m", 2, 1);
    /* The default: direct while the table is small, staged once it is not. */
    sp__aggregator_stage_table_bytes = 512 * 1024;
    run_case(true, 300000, 60000, 8, "256m", 7, 0);
}

static void test_aggregator_staged_concat_order(void **state)
{
    (void)state;
    run_case(false, 40000, 3000, 700, "256m", 3, -1);
    run_case(false, 40000, 3000, 700, "2m", 4, 1);
}

static void test_aggregator_staged_hash_collisions(void **state)
{
    (void)state;
    sp__aggregator_hash_mask = 0x3f; /* 64 hashes for thousands of keys */
    run_case(false, 20000, 2000, 40, "256m", 5, -1);
    run_case(true, 100000, 30000, 8, "1m", 6, -1);
    sp__aggregator_hash_mask = UINT64_MAX;
}

/*
 * "k1" combines to more than memory holds: the resolving call (an add that
 * finds the batch full, or the first next) reports SP_ERR_TOO_LARGE; every
 * other record is in, and the aggregator goes on.
 */
static void test_aggregator_staged_combined_too_large(void **state)
{
    sp_combiner_t comb = {concat_combine, &comb};
    sp_aggregator_t *agg = NULL;
    size_t too_large = 0, keys = 0;
    bool more = true;
    env_t e;

    (void)state;
    env_open(&e, "64m");
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    assert_int_equal(sp__aggregator_add(agg, "k1", 2, "a", 1), SP_OK); /* first: no combine */
    for (uint32_t i = 0; i < 100; i++) {
        char key[32];
        size_t kl = make_key(i % 10, key);
        sp_status_t st = sp__aggregator_add(agg, key, kl, "b", 1);

        assert_true(st == SP_OK || st == SP_ERR_TOO_LARGE);
        too_large += st == SP_ERR_TOO_LARGE;
    }
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        sp_status_t st = sp_aggregator_next(agg, &k, &kl, &v, &vl, &more);

        if (st == SP_ERR_TOO_LARGE) {
            assert_int_equal(keys, 0);
            too_large++;
            continue;
        }
        assert_int_equal(st, SP_OK);
        if (!more)
            break;
        keys++;
        if (kl == 2 && memcmp(k, "k1", 2) == 0) {
            assert_int_equal(vl, 1);
            assert_memory_equal(v, "a", 1);
        } else {
            assert_int_equal(vl, 10); /* "b" ten times for each other key */
        }
    }
    assert_int_equal(keys, 10);
    assert_true(too_large >= 1 && too_large <= 10);
    sp_aggregator_destroy(agg);
    env_close(&e);
}

static int setup(void **state)
{
    (void)state;
    test_dir_clear(dir);
    sp__aggregator_hash_mask = UINT64_MAX;
    sp__aggregator_stage_table_bytes = 0; /* stage every record */
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_aggregator_staged_sums, setup),
        cmocka_unit_test_setup(test_aggregator_staged_concat_order, setup),
        cmocka_unit_test_setup(test_aggregator_staged_hash_collisions, setup),
        cmocka_unit_test_setup(test_aggregator_staged_combined_too_large, setup),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-aggregator-staged-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    test_dir_clear(dir);
    rmdir(dir);
    return rc;
}
