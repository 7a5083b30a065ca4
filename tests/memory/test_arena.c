/*
 * Tests of the NUMA arena: sizes from one byte to 64 MiB with their
 * alignment and contents, statistics against a reference count of what the
 * test itself allocated, placement on node 0 of this machine, the huge-page
 * alignment and madvise, two threads allocating at once, injected
 * allocation failures, and a destroy that finds memory still allocated.
 *
 * LABELS: unit
 */
#include <spate/memory.h>

#include "common_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/test_smaps_util.h"

#define MIB ((size_t)1 << 20)

static sp_topology_t *topo;

static int group_setup(void **state)
{
    (void)state;
    return sp_topology_create(NULL, &topo) == SP_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    sp_topology_destroy(topo);
    return 0;
}

static sp_arena_t *arena_create_ok(const sp_topology_t *t, bool bind, bool huge)
{
    sp_arena_t *arena = NULL;
    sp_status_t st = sp_arena_create(t, 0, bind, huge, &arena);

    if (st != SP_OK)
        fail_msg("sp_arena_create: %s: %s", sp_status_str(st), sp_last_error());
    assert_non_null(arena);
    return arena;
}

/* Deterministic xorshift so that failures reproduce. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_arena_sizes_and_alignment(void **state)
{
    static const size_t sizes[] = {1,     7,       63,  64,          65,       100,     4096,
                                   65537, MIB - 1, MIB, 3 * MIB + 5, 16 * MIB, 64 * MIB};
    sp_arena_t *arena = arena_create_ok(topo, true, false);
    sp_arena_stats_t stats;

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(sizes); i++) {
        unsigned char *p = sp_arena_alloc(arena, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        memset(p, (int)(i + 1), sizes[i]);
        assert_int_equal(p[0], i + 1);
        assert_int_equal(p[sizes[i] - 1], i + 1);
        sp_arena_stats(arena, &stats);
        assert_int_equal(stats.live_bytes, sizes[i]);
        assert_true(stats.mapped_bytes >= sizes[i]);
        sp_arena_free(arena, p, sizes[i]);
        sp_arena_stats(arena, &stats);
        assert_int_equal(stats.live_bytes, 0);
    }
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.allocs, SP_ARRAY_SIZE(sizes));
    assert_int_equal(stats.frees, SP_ARRAY_SIZE(sizes));
    assert_int_equal(stats.peak_bytes, 64 * MIB);
    assert_int_equal(sp_arena_numa_index(arena), 0);
    sp_arena_free(arena, NULL, 10);
    sp_arena_destroy(arena);
    sp_arena_destroy(NULL);
}

static void test_arena_stats_match_reference(void **state)
{
    enum { N = 2000 };
    sp_arena_t *arena = arena_create_ok(NULL, false, false);
    static unsigned char *ptrs[N];
    static size_t lens[N];
    uint64_t seed = 0x9e3779b97f4a7c15u, live = 0, peak = 0;
    sp_arena_stats_t stats;

    (void)state;
    for (unsigned i = 0; i < N; i++) {
        lens[i] = (size_t)(next_random(&seed) % (i % 10 == 0 ? 300000 : 3000));
        ptrs[i] = sp_arena_alloc(arena, lens[i]);
        assert_non_null(ptrs[i]);
        memset(ptrs[i], (int)(i & 0xff), lens[i]);
        live += lens[i];
        peak = live > peak ? live : peak;
    }
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.live_bytes, live);
    assert_int_equal(stats.peak_bytes, peak);
    assert_int_equal(stats.allocs, N);
    /* Free in a shuffled order, checking each block kept its own bytes. */
    for (unsigned i = N - 1; i > 0; i--) {
        unsigned j = (unsigned)(next_random(&seed) % (i + 1));
        unsigned char *tp = ptrs[i];
        size_t tl = lens[i];
        ptrs[i] = ptrs[j];
        lens[i] = lens[j];
        ptrs[j] = tp;
        lens[j] = tl;
    }
    for (unsigned i = 0; i < N; i++) {
        for (size_t k = 0; k < lens[i]; k += 997)
            assert_int_equal(ptrs[i][k], ptrs[i][0]);
        sp_arena_free(arena, ptrs[i], lens[i]);
        live -= lens[i];
    }
    sp_arena_stats(arena, &stats);
    assert_int_equal(live, 0);
    assert_int_equal(stats.live_bytes, 0);
    assert_int_equal(stats.frees, N);
    assert_int_equal(stats.peak_bytes, peak);
    sp_arena_destroy(arena);
}

static void test_arena_memory_is_on_node_zero(void **state)
{
    sp_arena_t *arena = arena_create_ok(topo, true, false);
    size_t len = 8 * MIB;
    unsigned numa = 77;
    sp_status_t st;
    char *p;

    (void)state;
    if (!sp_topology_is_this_system(topo)) {
        sp_arena_destroy(arena);
        skip();
    }
    p = sp_arena_alloc(arena, len);
    assert_non_null(p);
    memset(p, 0x5a, len);
    st = sp_topology_memory_location(topo, p, len, &numa);
    if (st == SP_ERR_UNSUPPORTED) {
        print_message("skipping: the OS cannot locate pages here: %s\n", sp_last_error());
        sp_arena_free(arena, p, len);
        sp_arena_destroy(arena);
        skip();
    }
    assert_int_equal(st, SP_OK);
    assert_int_equal(numa, 0);
    sp_arena_free(arena, p, len);
    sp_arena_destroy(arena);
}

static void test_arena_huge_pages(void **state)
{
    static const size_t sizes[] = {2 * MIB, 2 * MIB + 1, 6 * MIB, 32 * MIB};
    sp_arena_t *arena = arena_create_ok(topo, true, true);
    bool thp = access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
    sp_arena_stats_t stats;
    char *small;

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(sizes); i++) {
        char *p = sp_arena_alloc(arena, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % (2 * MIB), 0);
        p[0] = 1;
        p[sizes[i] - 1] = 2;
        /* Where the kernel has THP, the extent was madvised for huge pages. */
        if (thp)
            assert_true(test_mapping_has_hugepage_flag(p));
        sp_arena_free(arena, p, sizes[i]);
    }
    /* Below 2 MiB the usual 64-byte alignment applies. */
    small = sp_arena_alloc(arena, 1000);
    assert_non_null(small);
    assert_int_equal((uintptr_t)small % 64, 0);
    sp_arena_free(arena, small, 1000);
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.live_bytes, 0);
    assert_int_equal(stats.allocs, SP_ARRAY_SIZE(sizes) + 1);
    sp_arena_destroy(arena);
}

static void test_arena_synthetic_topology_is_unbound(void **state)
{
    sp_topology_t *synth;
    sp_arena_t *arena = NULL;
    char *p;

    (void)state;
    assert_int_equal(sp_topology_create("synthetic:pack:2 node:2 core:4 pu:1", &synth), SP_OK);
    assert_int_equal(sp_arena_create(synth, 4, true, false, &arena), SP_ERR_INVALID_PARAM);
    assert_null(arena);
    /* Node 3 exists only on paper: the arena works, unbound. */
    assert_int_equal(sp_arena_create(synth, 3, true, false, &arena), SP_OK);
    assert_int_equal(sp_arena_numa_index(arena), 3);
    p = sp_arena_alloc(arena, 3 * MIB);
    assert_non_null(p);
    memset(p, 1, 3 * MIB);
    sp_arena_free(arena, p, 3 * MIB);
    sp_arena_destroy(arena);
    sp_topology_destroy(synth);
}

typedef struct worker {
    sp_arena_t *arena;
    uint64_t seed;
    unsigned rounds;
    bool ok;
} worker_t;

static void *worker_run(void *arg)
{
    enum { SLOTS = 64 };
    worker_t *w = arg;
    unsigned char *ptrs[SLOTS] = {0};
    size_t lens[SLOTS] = {0};

    w->ok = true;
    for (unsigned r = 0; r < w->rounds; r++) {
        unsigned s = (unsigned)(next_random(&w->seed) % SLOTS);
        if (ptrs[s] != NULL) {
            /* Another thread writing into this block would show here. */
            if (lens[s] > 0 &&
                (ptrs[s][0] != (unsigned char)s || ptrs[s][lens[s] - 1] != (unsigned char)s))
                w->ok = false;
            sp_arena_free(w->arena, ptrs[s], lens[s]);
            ptrs[s] = NULL;
            continue;
        }
        lens[s] = (size_t)(next_random(&w->seed) % (r % 50 == 0 ? 4 * MIB : 8192));
        ptrs[s] = sp_arena_alloc(w->arena, lens[s]);
        if (ptrs[s] == NULL) {
            w->ok = false;
            break;
        }
        memset(ptrs[s], (int)s, lens[s]);
    }
    for (unsigned s = 0; s < SLOTS; s++)
        sp_arena_free(w->arena, ptrs[s], lens[s]);
    return NULL;
}

static void test_arena_concurrent_threads(void **state)
{
    sp_arena_t *arena = arena_create_ok(topo, true, false);
    worker_t w[2] = {{arena, 12345, 20000, false}, {arena, 67890, 20000, false}};
    pthread_t t[2];
    sp_arena_stats_t stats;

    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_true(w[0].ok);
    assert_true(w[1].ok);
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.live_bytes, 0);
    assert_true(stats.allocs > 1000);
    assert_int_equal(stats.allocs, stats.frees);
    sp_arena_destroy(arena);
}

static void test_arena_fault_injection(void **state)
{
    sp_arena_t *arena = arena_create_ok(topo, true, false), *none = NULL;
    uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);
    sp_arena_stats_t stats;
    void *p;

    (void)state;
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    p = sp_arena_alloc(arena, 4096);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_null(p);
    assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired + 1);
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.allocs, 0);
    assert_int_equal(stats.live_bytes, 0);

    /* The next allocation, not armed, succeeds. */
    p = sp_arena_alloc(arena, 4096);
    assert_non_null(p);
    sp_arena_free(arena, p, 4096);
    sp_arena_destroy(arena);

    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp_arena_create(topo, 0, true, false, &none), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_null(none);
    assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired + 2);
}

static void test_arena_destroy_with_live_allocation_warns(void **state)
{
    sp_arena_t *arena = arena_create_ok(topo, true, false);
    sp_arena_stats_t stats;
    char log[4096] = {0};
    FILE *capture = tmpfile();
    int saved_fd;
    char *p;

    (void)state;
    assert_non_null(capture);
    p = sp_arena_alloc(arena, 1000);
    assert_non_null(p);
    memset(p, 1, 1000);
    sp_arena_stats(arena, &stats);
    assert_int_equal(stats.live_bytes, 1000);
    assert_int_equal(stats.allocs - stats.frees, 1);

    /* Capture stderr to see the warning; the arena is kept, so p stays valid. */
    fflush(stderr);
    saved_fd = dup(STDERR_FILENO);
    assert_true(saved_fd >= 0);
    assert_true(dup2(fileno(capture), STDERR_FILENO) >= 0);
    sp_arena_destroy(arena);
    fflush(stderr);
    assert_true(dup2(saved_fd, STDERR_FILENO) >= 0);
    close(saved_fd);
    rewind(capture);
    assert_true(fread(log, 1, sizeof(log) - 1, capture) > 0);
    fclose(capture);
    assert_non_null(strstr(log, "1000 bytes"));
    assert_non_null(strstr(log, "leaked"));
    assert_int_equal(p[999], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_sizes_and_alignment),
        cmocka_unit_test(test_arena_stats_match_reference),
        cmocka_unit_test(test_arena_memory_is_on_node_zero),
        cmocka_unit_test(test_arena_huge_pages),
        cmocka_unit_test(test_arena_synthetic_topology_is_unbound),
        cmocka_unit_test(test_arena_concurrent_threads),
        cmocka_unit_test(test_arena_fault_injection),
        cmocka_unit_test(test_arena_destroy_with_live_allocation_warns),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
