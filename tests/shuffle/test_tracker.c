/*
 * Map output tracker against a reference model kept here: which status each
 * (shuffle, map) slot holds. Registration, replacement and removal, lost
 * executors and the missing list, block lists for map and reduce ranges
 * (every block ref checked against the statuses), many shuffles with
 * arbitrary ids, four threads registering, reading and removing at once,
 * and every allocation of every operation failed in turn.
 */
/* LABELS: unit */
#include <spate/shuffle.h>

#include "common_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *xstrdup(const char *s)
{
    char *c = malloc(strlen(s) + 1);

    assert_non_null(c);
    strcpy(c, s);
    return c;
}

/*
 * Length of partition r of map m (deterministic, so any thread can check a
 * block): roughly one partition in four is empty. salt changes it for
 * replacements.
 */
static uint64_t block_len(uint64_t m, uint32_t r, uint64_t salt)
{
    uint64_t h = (m * 1000003u + r) * 0x9e3779b97f4a7c15ull + salt;

    h ^= h >> 29;
    return h % 4 == 0 ? 0 : 1 + h % 100000;
}

static sp_map_status_t *make_status(uint64_t shuffle, uint64_t map, uint32_t partitions,
                                    uint32_t executor, uint64_t salt)
{
    sp_map_status_t *s = calloc(1, sizeof(*s));
    char path[128], addr[32];

    assert_non_null(s);
    s->shuffle_id = shuffle;
    s->map_id = map;
    s->attempt = (uint32_t)salt;
    s->partitions = partitions;
    s->codec = SP_CODEC_ZSTD;
    s->checksum_kind = SP_CHECKSUM_XXH3;
    s->lengths = calloc(partitions, sizeof(uint64_t));
    s->records = calloc(partitions, sizeof(uint64_t));
    s->checksums = calloc(partitions, sizeof(uint64_t));
    assert_true(s->lengths && s->records && s->checksums);
    for (uint32_t r = 0; r < partitions; r++) {
        s->lengths[r] = block_len(map, r, salt);
        s->records[r] = s->lengths[r] / 10;
        s->checksums[r] = s->lengths[r] * 7;
    }
    snprintf(path, sizeof(path), "/d/%u/shuffle_%llu_%llu.index", executor,
             (unsigned long long)shuffle, (unsigned long long)map);
    s->index_path = xstrdup(path);
    path[strlen(path) - 6] = '\0';
    strcat(path, ".data");
    s->data_path = xstrdup(path);
    path[strlen(path) - 5] = '\0';
    strcat(path, ".checksum");
    s->checksum_path = xstrdup(path);
    s->executor_id = executor;
    if (executor % 2 == 1) {
        snprintf(addr, sizeof(addr), "exec-%u:7337", executor);
        s->address = xstrdup(addr);
        s->rkey = malloc(4);
        assert_non_null(s->rkey);
        memcpy(s->rkey, &executor, 4);
        s->rkey_len = 4;
    }
    return s;
}

/* Checks list against the statuses expected for maps [m0, m1). */
static void check_blocks(sp_map_status_t *const *expect, uint32_t m0, uint32_t m1, uint32_t rs,
                         uint32_t re, const sp_block_list_t *list)
{
    size_t b = 0;

    for (uint32_t m = m0; m < m1; m++) {
        const sp_map_status_t *s = expect[m];

        for (uint32_t r = rs; r < re; r++) {
            const sp_block_ref_t *ref;

            if (s->lengths[r] == 0)
                continue;
            assert_true(b < list->count);
            ref = &list->blocks[b++];
            assert_int_equal(ref->shuffle_id, s->shuffle_id);
            assert_int_equal(ref->map_id, m);
            assert_int_equal(ref->reduce_id, r);
            assert_int_equal(ref->executor_id, s->executor_id);
            assert_int_equal(ref->size, s->lengths[r]);
            assert_int_equal(ref->records, s->records[r]);
            assert_int_equal(ref->codec, s->codec);
            assert_int_equal(ref->checksum_kind, s->checksum_kind);
            assert_string_equal(ref->index_path, s->index_path);
            if (s->address == NULL)
                assert_null(ref->address);
            else
                assert_string_equal(ref->address, s->address);
            assert_int_equal(ref->rkey_len, s->rkey_len);
            if (s->rkey_len > 0)
                assert_memory_equal(ref->rkey, s->rkey, s->rkey_len);
        }
    }
    assert_int_equal(b, list->count);
}

static void assert_missing(sp_map_output_tracker_t *t, uint64_t shuffle, const uint64_t *want,
                           size_t n)
{
    uint64_t *ids = NULL;
    size_t count = 99;

    assert_int_equal(sp_map_output_tracker_missing(t, shuffle, &ids, &count), SP_OK);
    assert_int_equal(count, n);
    if (n > 0)
        assert_memory_equal(ids, want, n * sizeof(uint64_t));
    else
        assert_null(ids);
    free(ids);
}

static void test_tracker_register_replace_unregister(void **state)
{
    (void)state;
    enum { MAPS = 4, P = 10 };
    sp_map_output_tracker_t *t = NULL;
    sp_map_status_t *st[MAPS], *s;
    sp_block_list_t *list = NULL;
    const uint64_t all[] = {0, 1, 2, 3}, one[] = {1};

    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 7, MAPS, P), SP_OK);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 7, MAPS, P), SP_ERR_EXISTS);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 8, MAPS, 0), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 8, MAPS, (1u << 24) + 1),
                     SP_ERR_INVALID_PARAM);
    assert_missing(t, 7, all, MAPS);

    /* Refused outputs: unknown shuffle, map out of range, wrong partition count. */
    s = make_status(8, 0, P, 1, 0);
    assert_int_equal(sp_map_output_tracker_register_output(t, s), SP_ERR_INVALID_PARAM);
    sp_map_status_destroy(s);
    s = make_status(7, MAPS, P, 1, 0);
    assert_int_equal(sp_map_output_tracker_register_output(t, s), SP_ERR_INVALID_PARAM);
    sp_map_status_destroy(s);
    s = make_status(7, 0, P + 1, 1, 0);
    assert_int_equal(sp_map_output_tracker_register_output(t, s), SP_ERR_INVALID_PARAM);
    sp_map_status_destroy(s);
    assert_int_equal(sp_map_output_tracker_register_output(t, NULL), SP_ERR_INVALID_PARAM);
    assert_missing(t, 7, all, MAPS);

    for (uint32_t m = 0; m < MAPS; m++) {
        st[m] = make_status(7, m, P, m % 2, 0);
        assert_int_equal(sp_map_output_tracker_register_output(t, st[m]), SP_OK);
    }
    assert_missing(t, 7, NULL, 0);
    assert_int_equal(sp_map_output_tracker_blocks(t, 7, 0, P, 0, MAPS, &list), SP_OK);
    check_blocks(st, 0, MAPS, 0, P, list);
    sp_block_list_destroy(list);

    /* A replacement wins, and the tracker holds a copy, not the caller's status. */
    sp_map_status_destroy(st[2]);
    st[2] = make_status(7, 2, P, 3, 42);
    assert_int_equal(sp_map_output_tracker_register_output(t, st[2]), SP_OK);
    s = st[2];
    st[2] = make_status(7, 2, P, 3, 42);
    sp_map_status_destroy(s);
    assert_int_equal(sp_map_output_tracker_blocks(t, 7, 0, P, 0, MAPS, &list), SP_OK);
    check_blocks(st, 0, MAPS, 0, P, list);
    sp_block_list_destroy(list);

    /* Unregistering an output makes reads of it fail, and only of it. */
    assert_int_equal(sp_map_output_tracker_unregister_output(t, 7, 1), SP_OK);
    assert_int_equal(sp_map_output_tracker_unregister_output(t, 7, 1), SP_OK);
    assert_int_equal(sp_map_output_tracker_unregister_output(t, 7, MAPS), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_unregister_output(t, 99, 0), SP_ERR_NOT_FOUND);
    assert_missing(t, 7, one, 1);
    list = NULL;
    assert_int_equal(sp_map_output_tracker_blocks(t, 7, 2, 5, 0, MAPS, &list), SP_ERR_FETCH_FAILED);
    assert_null(list);
    assert_non_null(strstr(sp_last_error(), "shuffle 7"));
    assert_non_null(strstr(sp_last_error(), "map 1 "));
    assert_non_null(strstr(sp_last_error(), "[2, 5)"));
    assert_int_equal(sp_map_output_tracker_blocks(t, 7, 2, 5, 2, MAPS, &list), SP_OK);
    check_blocks(st, 2, MAPS, 2, 5, list);
    sp_block_list_destroy(list);

    sp_map_output_tracker_unregister_shuffle(t, 7);
    sp_map_output_tracker_unregister_shuffle(t, 7);
    list = NULL;
    assert_int_equal(sp_map_output_tracker_blocks(t, 7, 0, P, 0, MAPS, &list), SP_ERR_NOT_FOUND);
    {
        uint64_t *ids = NULL;
        size_t n = 0;

        assert_int_equal(sp_map_output_tracker_missing(t, 7, &ids, &n), SP_ERR_NOT_FOUND);
        assert_null(ids);
    }
    assert_int_equal(sp_map_output_tracker_register_output(t, st[0]), SP_ERR_INVALID_PARAM);
    /* The id is free again. */
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 7, 1, 1), SP_OK);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, 9, 0, 3), SP_OK);
    assert_missing(t, 9, NULL, 0);
    assert_int_equal(sp_map_output_tracker_blocks(t, 9, 0, 3, 0, 0, &list), SP_OK);
    assert_int_equal(list->count, 0);
    sp_block_list_destroy(list);

    for (uint32_t m = 0; m < MAPS; m++)
        sp_map_status_destroy(st[m]);
    sp_map_output_tracker_destroy(t);
    sp_map_output_tracker_destroy(NULL);
}

static void test_tracker_blocks_ranges(void **state)
{
    (void)state;
    enum { MAPS = 5, P = 12 };
    sp_map_output_tracker_t *t = NULL;
    sp_map_status_t *st[MAPS];
    sp_block_list_t *list = NULL;
    const uint32_t ranges[][4] = {
        {0, P, 0, MAPS}, {3, 7, 1, 4}, {5, 5, 0, MAPS}, {0, P, 2, 2},
        {11, 12, 4, 5},  {0, 1, 0, 1}, {6, 12, 0, 3},
    };

    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, UINT64_MAX, MAPS, P), SP_OK);
    for (uint32_t m = 0; m < MAPS; m++) {
        st[m] = make_status(UINT64_MAX, m, P, m, 1);
        assert_int_equal(sp_map_output_tracker_register_output(t, st[m]), SP_OK);
    }
    for (size_t i = 0; i < SP_ARRAY_SIZE(ranges); i++) {
        assert_int_equal(sp_map_output_tracker_blocks(t, UINT64_MAX, ranges[i][0], ranges[i][1],
                                                      ranges[i][2], ranges[i][3], &list),
                         SP_OK);
        check_blocks(st, ranges[i][2], ranges[i][3], ranges[i][0], ranges[i][1], list);
        sp_block_list_destroy(list);
    }
    list = NULL;
    assert_int_equal(sp_map_output_tracker_blocks(t, UINT64_MAX, 0, P + 1, 0, MAPS, &list),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_blocks(t, UINT64_MAX, 0, P, 0, MAPS + 1, &list),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_blocks(t, UINT64_MAX, 4, 3, 0, MAPS, &list),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_blocks(t, UINT64_MAX, 0, P, 3, 2, &list),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_map_output_tracker_blocks(t, 0, 0, P, 0, MAPS, &list), SP_ERR_NOT_FOUND);
    assert_null(list);
    for (uint32_t m = 0; m < MAPS; m++)
        sp_map_status_destroy(st[m]);
    sp_map_output_tracker_destroy(t);
}

static void test_tracker_remove_executor(void **state)
{
    (void)state;
    enum { MAPS = 9, P = 6 };
    sp_map_output_tracker_t *t = NULL;
    sp_map_status_t *st[2][MAPS];
    sp_block_list_t *list = NULL;
    const uint64_t shuffles[2] = {100, 5};
    uint64_t lost[MAPS];

    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(sp_map_output_tracker_register_shuffle(t, shuffles[k], MAPS, P), SP_OK);
        for (uint32_t m = 0; m < MAPS; m++) {
            /* Executors 1..3, three maps each per shuffle. */
            uint32_t exec = 1 + (m + (uint32_t)k) % 3;

            st[k][m] = make_status(shuffles[k], m, P, exec, 0);
            assert_int_equal(sp_map_output_tracker_register_output(t, st[k][m]), SP_OK);
        }
    }
    assert_int_equal(sp_map_output_tracker_remove_executor(t, 2), 6);
    assert_int_equal(sp_map_output_tracker_remove_executor(t, 2), 0);
    assert_int_equal(sp_map_output_tracker_remove_executor(t, 77), 0);
    for (int k = 0; k < 2; k++) {
        size_t n = 0;

        for (uint32_t m = 0; m < MAPS; m++)
            if (st[k][m]->executor_id == 2)
                lost[n++] = m;
        assert_missing(t, shuffles[k], lost, n);
        /* The first lost map fails the read; maps before it still read. */
        assert_int_equal(sp_map_output_tracker_blocks(t, shuffles[k], 0, P, 0, MAPS, &list),
                         SP_ERR_FETCH_FAILED);
        assert_int_equal(
            sp_map_output_tracker_blocks(t, shuffles[k], 0, P, 0, (uint32_t)lost[0], &list), SP_OK);
        check_blocks(st[k], 0, (uint32_t)lost[0], 0, P, list);
        sp_block_list_destroy(list);
        /* Recomputed elsewhere, the outputs come back. */
        for (size_t i = 0; i < n; i++) {
            sp_map_status_destroy(st[k][lost[i]]);
            st[k][lost[i]] = make_status(shuffles[k], lost[i], P, 4, 1);
            assert_int_equal(sp_map_output_tracker_register_output(t, st[k][lost[i]]), SP_OK);
        }
        assert_missing(t, shuffles[k], NULL, 0);
        assert_int_equal(sp_map_output_tracker_blocks(t, shuffles[k], 0, P, 0, MAPS, &list), SP_OK);
        check_blocks(st[k], 0, MAPS, 0, P, list);
        sp_block_list_destroy(list);
    }
    assert_int_equal(sp_map_output_tracker_remove_executor(t, 4), 6);
    for (int k = 0; k < 2; k++)
        for (uint32_t m = 0; m < MAPS; m++)
            sp_map_status_destroy(st[k][m]);
    sp_map_output_tracker_destroy(t);
}

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Many shuffles with arbitrary ids, registered and dropped in random order. */
static void test_tracker_many_shuffles(void **state)
{
    (void)state;
    enum { N = 500 };
    sp_map_output_tracker_t *t = NULL;
    uint64_t ids[N];
    uint32_t maps[N];
    bool live[N];

    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    for (int i = 0; i < N; i++) {
        ids[i] = i % 7 == 0 ? (uint64_t)i : rnd();
        maps[i] = (uint32_t)(rnd() % 17);
        live[i] = true;
        assert_int_equal(sp_map_output_tracker_register_shuffle(t, ids[i], maps[i], 3), SP_OK);
    }
    for (int i = 0; i < N; i += 2) {
        sp_map_output_tracker_unregister_shuffle(t, ids[i]);
        live[i] = false;
    }
    for (int i = 0; i < N; i++) {
        uint64_t *missing = NULL;
        size_t n = 0;
        sp_status_t st = sp_map_output_tracker_missing(t, ids[i], &missing, &n);

        if (!live[i]) {
            assert_int_equal(st, SP_ERR_NOT_FOUND);
            continue;
        }
        assert_int_equal(st, SP_OK);
        assert_int_equal(n, maps[i]);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(missing[k], k);
        free(missing);
        if (maps[i] > 0) {
            sp_map_status_t *s = make_status(ids[i], maps[i] - 1, 3, 1, 0);

            assert_int_equal(sp_map_output_tracker_register_output(t, s), SP_OK);
            sp_map_status_destroy(s);
        }
    }
    /* Destroy frees the shuffles and outputs still registered (ASan checks). */
    sp_map_output_tracker_destroy(t);
}

/* ---- four threads ---- */

enum { CT_MAPS = 64, CT_P = 16, CT_ROUNDS = 1000, CT_THREADS = 4, CT_SHUFFLE = 1 };

typedef struct ct_arg {
    sp_map_output_tracker_t *t;
    uint32_t id;
    unsigned ok_reads, failed_reads;
} ct_arg_t;

/* Checks a list read while others write: every block is one some thread registered. */
static void ct_check(const sp_block_list_t *list, uint32_t rs, uint32_t re)
{
    for (size_t b = 0; b < list->count; b++) {
        const sp_block_ref_t *ref = &list->blocks[b];
        uint32_t owner = (uint32_t)(ref->map_id % CT_THREADS);

        assert_true(ref->reduce_id >= rs && ref->reduce_id < re);
        assert_true(ref->executor_id == 100 + owner || ref->executor_id == 200 + owner);
        assert_int_equal(ref->size, block_len(ref->map_id, ref->reduce_id, 0));
        assert_non_null(ref->index_path);
    }
}

static void *ct_main(void *p)
{
    ct_arg_t *a = p;
    uint64_t seed = 1234567 + a->id;

    for (unsigned round = 0; round < CT_ROUNDS; round++) {
        size_t mine = 0;
        sp_block_list_t *list = NULL;
        uint32_t rs, re;
        sp_status_t st;

        /* Register this thread's maps on a doomed executor, then lose it. */
        for (uint32_t m = a->id; m < CT_MAPS; m += CT_THREADS) {
            sp_map_status_t *s = make_status(CT_SHUFFLE, m, CT_P, 200 + a->id, 0);

            assert_int_equal(sp_map_output_tracker_register_output(a->t, s), SP_OK);
            sp_map_status_destroy(s);
            mine++;
        }
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        rs = (uint32_t)(seed >> 40) % CT_P;
        re = rs + (uint32_t)(seed >> 20) % (CT_P - rs + 1);
        st = sp_map_output_tracker_blocks(a->t, CT_SHUFFLE, rs, re, 0, CT_MAPS, &list);
        if (st == SP_OK) {
            ct_check(list, rs, re);
            sp_block_list_destroy(list);
            a->ok_reads++;
        } else {
            assert_int_equal(st, SP_ERR_FETCH_FAILED);
            a->failed_reads++;
        }
        assert_int_equal(sp_map_output_tracker_remove_executor(a->t, 200 + a->id), mine);
        /* Recompute on a healthy executor. */
        for (uint32_t m = a->id; m < CT_MAPS; m += CT_THREADS) {
            sp_map_status_t *s = make_status(CT_SHUFFLE, m, CT_P, 100 + a->id, 0);

            assert_int_equal(sp_map_output_tracker_register_output(a->t, s), SP_OK);
            sp_map_status_destroy(s);
        }
        /* A private shuffle comes and goes. */
        {
            uint64_t sid = 1000 + a->id * 1000 + round;
            sp_map_status_t *s = make_status(sid, 0, 3, 100 + a->id, 0);

            assert_int_equal(sp_map_output_tracker_register_shuffle(a->t, sid, 1, 3), SP_OK);
            assert_int_equal(sp_map_output_tracker_register_output(a->t, s), SP_OK);
            sp_map_status_destroy(s);
            if (round % 2 == 0)
                sp_map_output_tracker_unregister_shuffle(a->t, sid);
        }
    }
    return NULL;
}

static void test_tracker_concurrent(void **state)
{
    (void)state;
    sp_map_output_tracker_t *t = NULL;
    pthread_t threads[CT_THREADS];
    ct_arg_t args[CT_THREADS];
    sp_block_list_t *list = NULL;
    sp_map_status_t *expect[CT_MAPS];
    unsigned ok = 0;

    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    assert_int_equal(sp_map_output_tracker_register_shuffle(t, CT_SHUFFLE, CT_MAPS, CT_P), SP_OK);
    for (uint32_t i = 0; i < CT_THREADS; i++) {
        args[i] = (ct_arg_t){.t = t, .id = i};
        assert_int_equal(pthread_create(&threads[i], NULL, ct_main, &args[i]), 0);
    }
    for (uint32_t i = 0; i < CT_THREADS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        ok += args[i].ok_reads;
    }
    print_message("concurrent reads: %u complete, %u failed on a lost output\n", ok,
                  CT_THREADS * CT_ROUNDS - ok);

    /* Final state: every map on its thread's healthy executor. */
    assert_missing(t, CT_SHUFFLE, NULL, 0);
    for (uint32_t m = 0; m < CT_MAPS; m++)
        expect[m] = make_status(CT_SHUFFLE, m, CT_P, 100 + m % CT_THREADS, 0);
    assert_int_equal(sp_map_output_tracker_blocks(t, CT_SHUFFLE, 0, CT_P, 0, CT_MAPS, &list),
                     SP_OK);
    check_blocks(expect, 0, CT_MAPS, 0, CT_P, list);
    sp_block_list_destroy(list);
    for (uint32_t i = 0; i < CT_THREADS; i++) {
        for (unsigned round = 0; round < CT_ROUNDS; round++) {
            uint64_t sid = 1000 + i * 1000 + round;
            uint64_t *ids = NULL;
            size_t n = 9;

            assert_int_equal(sp_map_output_tracker_missing(t, sid, &ids, &n),
                             round % 2 == 0 ? SP_ERR_NOT_FOUND : SP_OK);
            if (round % 2 == 1)
                assert_int_equal(n, 0);
        }
    }
    assert_int_equal(sp_map_output_tracker_remove_executor(t, 100),
                     CT_MAPS / CT_THREADS + CT_ROUNDS / 2);
    for (uint32_t m = 0; m < CT_MAPS; m++)
        sp_map_status_destroy(expect[m]);
    sp_map_output_tracker_destroy(t);
}

/* ---- fault injection ---- */

typedef sp_status_t (*fault_fn_t)(sp_map_output_tracker_t *t, void *arg);

static unsigned run_faults(sp_map_output_tracker_t *t, fault_fn_t fn, void *arg)
{
    for (unsigned n = 1;; n++) {
        sp_status_t st;

        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = fn(t, arg);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (st == SP_OK)
            return n - 1;
        if (st != SP_ERR_NOMEM)
            fail_msg("allocation %u: %s (%s)", n, sp_status_str(st), sp_last_error());
        assert_true(n < 1000);
    }
}

static sp_status_t f_create(sp_map_output_tracker_t *unused, void *arg)
{
    sp_map_output_tracker_t *t = NULL;
    sp_status_t st = sp_map_output_tracker_create(&t);

    (void)unused, (void)arg;
    if (st != SP_OK)
        assert_null(t);
    sp_map_output_tracker_destroy(t);
    return st;
}

static sp_status_t f_register_shuffle(sp_map_output_tracker_t *t, void *arg)
{
    uint64_t id = *(uint64_t *)arg;
    sp_status_t st = sp_map_output_tracker_register_shuffle(t, id, 4, 8);
    uint64_t *ids = NULL;
    size_t n;

    /* A failed registration leaves no shuffle behind. */
    if (st != SP_OK)
        assert_int_equal(sp_map_output_tracker_missing(t, id, &ids, &n), SP_ERR_NOT_FOUND);
    return st;
}

static sp_status_t f_register_output(sp_map_output_tracker_t *t, void *arg)
{
    sp_map_status_t *const *pair = arg; /* [0] registered before, [1] the replacement */
    sp_status_t st = sp_map_output_tracker_register_output(t, pair[1]);
    sp_block_list_t *list = NULL;

    if (st != SP_OK) {
        /* The earlier output is still there. */
        sp_status_t rc;

        sp__fault_arm(SP_FAULT_ALLOC, 0);
        rc = sp_map_output_tracker_blocks(t, pair[0]->shuffle_id, 0, 8, 0, 1, &list);
        assert_int_equal(rc, SP_OK);
        check_blocks(pair, 0, 1, 0, 8, list);
        sp_block_list_destroy(list);
    }
    return st;
}

static sp_status_t f_missing(sp_map_output_tracker_t *t, void *arg)
{
    uint64_t *ids = NULL;
    size_t n = 0;
    sp_status_t st = sp_map_output_tracker_missing(t, *(uint64_t *)arg, &ids, &n);

    if (st == SP_OK)
        assert_int_equal(n, 3);
    else
        assert_null(ids);
    free(ids);
    return st;
}

static sp_status_t f_blocks(sp_map_output_tracker_t *t, void *arg)
{
    sp_map_status_t *const *pair = arg;
    sp_block_list_t *list = NULL;
    sp_status_t st = sp_map_output_tracker_blocks(t, pair[1]->shuffle_id, 0, 8, 0, 1, &list);

    if (st == SP_OK)
        check_blocks(pair + 1, 0, 1, 0, 8, list);
    else
        assert_null(list);
    sp_block_list_destroy(list);
    return st;
}

static void test_tracker_fault(void **state)
{
    (void)state;
    sp_map_output_tracker_t *t = NULL;
    sp_map_status_t *pair[2];
    uint64_t id = 0;

    assert_int_equal(run_faults(NULL, f_create, NULL), 1);
    assert_int_equal(sp_map_output_tracker_create(&t), SP_OK);
    /* The first registration also grows the shuffle table: two allocations. */
    assert_int_equal(run_faults(t, f_register_shuffle, &id), 2);
    for (id = 1; id < 8; id++)
        assert_int_equal(sp_map_output_tracker_register_shuffle(t, id, 4, 8), SP_OK);
    assert_int_equal(run_faults(t, f_register_shuffle, &id), 2); /* grows again at 9 */
    id = 0;
    pair[0] = make_status(0, 0, 8, 1, 0);
    pair[1] = make_status(0, 0, 8, 3, 5);
    assert_int_equal(sp_map_output_tracker_register_output(t, pair[0]), SP_OK);
    assert_true(run_faults(t, f_register_output, pair) >= 8);
    assert_int_equal(run_faults(t, f_missing, &id), 1);
    assert_int_equal(run_faults(t, f_blocks, pair), 3);
    sp_map_status_destroy(pair[0]);
    sp_map_status_destroy(pair[1]);
    sp_map_output_tracker_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tracker_register_replace_unregister),
        cmocka_unit_test(test_tracker_blocks_ranges),
        cmocka_unit_test(test_tracker_remove_executor),
        cmocka_unit_test(test_tracker_many_shuffles),
        cmocka_unit_test(test_tracker_concurrent),
        cmocka_unit_test(test_tracker_fault),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
