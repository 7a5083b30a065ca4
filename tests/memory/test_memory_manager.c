/*
 * Tests of the unified memory manager's rules (DESIGN.md "Memory model"):
 * layout from the configuration, fair share among concurrent tasks, blocking
 * below 1/(2N), borrowing between the pools, eviction of cached blocks only
 * down to the storage region, storage never evicting execution, and a
 * randomized check of the pool invariants.
 */
/* LABELS: unit */
#include "mm_test_util.h"
#include "memory/memory_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static sp_conf_t *conf_with(const char *executor, const char *reserved)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    if (executor != NULL)
        assert_int_equal(sp_conf_set(conf, "memory.executor", executor), SP_OK);
    if (reserved != NULL)
        assert_int_equal(sp_conf_set(conf, "memory.reserved", reserved), SP_OK);
    return conf;
}

static void test_layout_defaults(void **state)
{
    sp_memory_layout_t l;
    sp_conf_t *conf = conf_with("4g", NULL);

    (void)state;
    assert_int_equal(sp_memory_layout_compute(conf, 0, &l), SP_OK);
    assert_int_equal(l.executor_bytes, 4096 * MiB);
    assert_int_equal(l.reserved_bytes, 300 * MiB);
    /* (4096 - 300) MiB x 0.6, then half of it for storage. */
    assert_int_equal(l.unified_bytes, (uint64_t)((double)(3796 * MiB) * 0.6));
    assert_int_equal(l.storage_region_bytes, (uint64_t)((double)l.unified_bytes * 0.5));
    assert_int_equal(l.page_bytes, 4 * MiB);
    sp_conf_destroy(conf);
}

static void test_layout_auto_executor_uses_default(void **state)
{
    sp_memory_layout_t l;
    sp_conf_t *conf = conf_with(NULL, NULL);

    (void)state;
    assert_int_equal(sp_memory_layout_compute(conf, 2048 * MiB, &l), SP_OK);
    assert_int_equal(l.executor_bytes, 2048 * MiB);
    assert_int_equal(sp_memory_layout_compute(conf, 0, &l), SP_ERR_BAD_CONF);
    assert_non_null(strstr(sp_last_error(), "memory.executor"));
    sp_conf_destroy(conf);
}

static void test_layout_small_executor_scales_reserve(void **state)
{
    sp_memory_layout_t l;
    sp_conf_t *conf = conf_with("200m", NULL);

    (void)state;
    /* 200m < 1.5 x 300m: the default reserve shrinks to a fifth. */
    assert_int_equal(sp_memory_layout_compute(conf, 0, &l), SP_OK);
    assert_int_equal(l.reserved_bytes, 40 * MiB);
    assert_int_equal(l.unified_bytes, (uint64_t)((double)(160 * MiB) * 0.6));
    sp_conf_destroy(conf);
}

static void test_layout_rejects_bad_combinations(void **state)
{
    sp_memory_layout_t l;
    sp_conf_t *conf = conf_with("200m", "300m");

    (void)state;
    /* An explicit reserve the executor cannot hold is an error, not a guess. */
    assert_int_equal(sp_memory_layout_compute(conf, 0, &l), SP_ERR_BAD_CONF);
    assert_non_null(strstr(sp_last_error(), "memory.reserved"));
    sp_conf_destroy(conf);

    conf = conf_with("64m", "0");
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "0.01"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", "8m"), SP_OK);
    /* 64m x 0.01 is smaller than one 8m page. */
    assert_int_equal(sp_memory_layout_compute(conf, 0, &l), SP_ERR_BAD_CONF);
    assert_non_null(strstr(sp_last_error(), "memory.page_size"));
    sp_conf_destroy(conf);
}

static void test_execution_single_task_gets_all(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0.5", "1m");
    sp_memory_stats_t s;

    (void)state;
    /* One task may take the whole pool, storage region included when unused. */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 100 * MiB), 100 * MiB);
    assert_int_equal(sp_memory_manager_task_execution(mm, 1), 100 * MiB);
    /* Nothing left: a partial grant is 0 here, without blocking (N = 1). */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, MiB), 0);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.execution_used, 100 * MiB);
    assert_int_equal(s.borrowed_from_storage, 50 * MiB);
    assert_int_equal(s.execution_refusals, 1);
    assert_int_equal(sp_memory_manager_release_all_execution(mm, 1), 100 * MiB);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.execution_used, 0);
    assert_int_equal(s.active_tasks, 0);
    sp_memory_manager_destroy(mm);
}

/* ---- fair share with 4 tasks on threads ---- */

#define FAIR_TASKS  4
#define FAIR_ROUNDS 300

typedef struct fair_ctx {
    sp_memory_manager_t *mm;
    pthread_barrier_t barrier;
    atomic_int violations;
    atomic_int done;
    uint64_t grants[FAIR_TASKS];
    uint64_t max_held[FAIR_TASKS];
} fair_ctx_t;

typedef struct fair_arg {
    fair_ctx_t *ctx;
    unsigned index;
} fair_arg_t;

static void *fair_worker(void *p)
{
    fair_arg_t *a = p;
    fair_ctx_t *ctx = a->ctx;
    uint64_t id = 100 + a->index, unified = 100 * MiB, share = unified / FAIR_TASKS;
    unsigned seed = a->index + 1;

    /* One byte each first so that all four tasks are active (N = 4). */
    assert_int_equal(sp_memory_manager_acquire_execution(ctx->mm, id, 1), 1);
    pthread_barrier_wait(&ctx->barrier);
    for (int r = 0; r < FAIR_ROUNDS; r++) {
        uint64_t want = (uint64_t)(rand_r(&seed) % 60 + 1) * MiB, got, held;

        got = sp_memory_manager_acquire_execution(ctx->mm, id, want);
        held = sp_memory_manager_task_execution(ctx->mm, id);
        if (got > 0)
            ctx->grants[a->index]++;
        /* With 4 active tasks and no storage in use, 1/N is a quarter. */
        if (held > share)
            atomic_fetch_add(&ctx->violations, 1);
        if (held > ctx->max_held[a->index])
            ctx->max_held[a->index] = held;
        if (rand_r(&seed) % 2 == 0 || held > share / 2)
            sp_memory_manager_release_execution(ctx->mm, id, held - 1);
        if (r % 16 == 0)
            usleep(100);
    }
    /* Stay active until everyone is done so that N stays 4 for all checks. */
    atomic_fetch_add(&ctx->done, 1);
    pthread_barrier_wait(&ctx->barrier);
    sp_memory_manager_release_all_execution(ctx->mm, id);
    return NULL;
}

static void test_execution_fair_share_four_tasks(void **state)
{
    fair_ctx_t ctx = {.mm = mm_test_create("100m", "0.5", "1m")};
    pthread_t th[FAIR_TASKS];
    fair_arg_t args[FAIR_TASKS];
    sp_memory_stats_t s;

    (void)state;
    pthread_barrier_init(&ctx.barrier, NULL, FAIR_TASKS);
    for (unsigned i = 0; i < FAIR_TASKS; i++) {
        args[i] = (fair_arg_t){&ctx, i};
        assert_int_equal(pthread_create(&th[i], NULL, fair_worker, &args[i]), 0);
    }
    for (unsigned i = 0; i < FAIR_TASKS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&ctx.violations), 0);
    assert_int_equal(atomic_load(&ctx.done), FAIR_TASKS);
    for (unsigned i = 0; i < FAIR_TASKS; i++) {
        /* No task starves: each was granted memory, and reached its fair
         * minimum of 1/(2N) of the pool at some point. */
        assert_true(ctx.grants[i] > 0);
        assert_true(ctx.max_held[i] >= 100 * MiB / (2 * FAIR_TASKS));
    }
    sp_memory_manager_stats(ctx.mm, &s);
    assert_int_equal(s.execution_used, 0);
    assert_int_equal(s.active_tasks, 0);
    assert_true(s.peak_execution_used <= 100 * MiB);
    pthread_barrier_destroy(&ctx.barrier);
    sp_memory_manager_destroy(ctx.mm);
}

/* ---- blocking below 1/(2N) ---- */

typedef struct block_ctx {
    sp_memory_manager_t *mm;
    atomic_int returned;
    uint64_t got;
} block_ctx_t;

static void *block_worker(void *p)
{
    block_ctx_t *ctx = p;

    ctx->got = sp_memory_manager_acquire_execution(ctx->mm, 2, 40 * MiB);
    atomic_store(&ctx->returned, 1);
    return NULL;
}

/*
 * Waits until the manager has counted at least waits blocked waits or the
 * worker has returned, whichever comes first; fails after a deadline that
 * only guards against a hang.
 */
static void wait_for_waits(block_ctx_t *ctx, uint64_t waits)
{
    sp_memory_stats_t s;

    for (int i = 0; i < 30000; i++) {
        sp_memory_manager_stats(ctx->mm, &s);
        if (s.waits >= waits || atomic_load(&ctx->returned))
            return;
        usleep(1000);
    }
    fail_msg("task 2 neither blocked %llu times nor returned within 30 s (waits %llu)",
             (unsigned long long)waits, (unsigned long long)s.waits);
}

static void test_execution_blocks_below_half_share_and_wakes_on_release(void **state)
{
    block_ctx_t ctx = {.mm = mm_test_create("100m", "0.5", "1m")};
    sp_memory_stats_t s;
    pthread_t th;

    (void)state;
    assert_int_equal(sp_memory_manager_acquire_execution(ctx.mm, 1, 100 * MiB), 100 * MiB);
    assert_int_equal(pthread_create(&th, NULL, block_worker, &ctx), 0);
    /*
     * Task 2 can get nothing and 0 < 100/(2*2): it must wait. The count of
     * waits is raised under the manager's lock just before the wait, so once
     * it shows, task 2 sits in the wait and only a release can wake it.
     */
    wait_for_waits(&ctx, 1);
    sp_memory_manager_stats(ctx.mm, &s);
    assert_int_equal(atomic_load(&ctx.returned), 0);
    assert_true(s.waits >= 1);
    assert_int_equal(s.active_tasks, 2);

    /*
     * 10 MiB free is still below its minimum of 25 MiB: the release wakes it,
     * and it blocks again (one wait more) instead of returning.
     */
    sp_memory_manager_stats(ctx.mm, &s);
    sp_memory_manager_release_execution(ctx.mm, 1, 10 * MiB);
    wait_for_waits(&ctx, s.waits + 1);
    if (atomic_load(&ctx.returned))
        fail_msg("task 2 returned with %llu bytes below its minimum of 25 MiB",
                 (unsigned long long)ctx.got);

    /* 30 MiB free now reaches the minimum: it wakes with all 30. */
    sp_memory_manager_release_execution(ctx.mm, 1, 20 * MiB);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&ctx.returned), 1);
    assert_int_equal(ctx.got, 30 * MiB);
    sp_memory_manager_stats(ctx.mm, &s);
    assert_true(s.wait_ns > 0);
    sp_memory_manager_release_all_execution(ctx.mm, 1);
    sp_memory_manager_release_all_execution(ctx.mm, 2);
    sp_memory_manager_destroy(ctx.mm);
}

/* ---- pools and eviction, through the block store ---- */

static char block_dir[256];

static void make_block_dir(void)
{
    snprintf(block_dir, sizeof(block_dir), "/tmp/spate-test-mm-%d", (int)getpid());
}

static void put_blocks(sp_block_store_t *bs, const char *prefix, int n, uint64_t size,
                       sp_storage_level_t level)
{
    char *buf = calloc(1, size), id[64];

    assert_non_null(buf);
    for (int i = 0; i < n; i++) {
        memset(buf, i + 1, size);
        snprintf(id, sizeof(id), "%s%d", prefix, i);
        assert_int_equal(sp_block_store_put(bs, id, buf, size, level), SP_OK);
    }
    free(buf);
}

static void test_execution_evicts_storage_down_to_region_only(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    sp_block_t *b = NULL;
    sp_memory_stats_t s;
    bool in_mem = false;

    (void)state;
    make_block_dir();
    assert_int_equal(sp_block_store_create(mm, block_dir, &bs), SP_OK);
    /* 80 MiB of cached blocks: storage borrows 30 MiB of free execution. */
    put_blocks(bs, "rdd_", 8, 10 * MiB, SP_STORAGE_MEMORY);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 80 * MiB);
    assert_int_equal(s.storage_pool, 80 * MiB);
    assert_int_equal(s.borrowed_from_execution, 30 * MiB);
    /* Touch block 0 so that 1, 2, 3 are the least recently used. */
    assert_int_equal(sp_block_store_get(bs, "rdd_0", &b), SP_OK);
    sp_block_store_release(b);

    /* Execution asks for everything: it may evict only the 30 MiB above the
     * region, so it gets 50 MiB and storage keeps its 50 MiB region. */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 100 * MiB), 50 * MiB);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 50 * MiB);
    assert_int_equal(s.storage_pool, 50 * MiB);
    assert_int_equal(s.evictions, 3);
    assert_int_equal(s.evicted_bytes, 30 * MiB);
    assert_true(sp_block_store_contains(bs, "rdd_0", &in_mem) && in_mem);
    for (int i = 1; i <= 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "rdd_%d", i);
        assert_false(sp_block_store_contains(bs, id, NULL)); /* memory only: dropped */
    }
    for (int i = 4; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof(id), "rdd_%d", i);
        assert_true(sp_block_store_contains(bs, id, NULL));
    }
    /* Asking again evicts nothing more. */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 10 * MiB), 0);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.evictions, 3);
    sp_memory_manager_release_all_execution(mm, 1);
    sp_block_store_destroy(bs);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 0);
    sp_memory_manager_destroy(mm);
    rmdir(block_dir);
}

static void test_storage_never_evicts_execution(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    char *buf = calloc(1, 30 * MiB);
    sp_memory_stats_t s;

    (void)state;
    make_block_dir();
    assert_non_null(buf);
    assert_int_equal(sp_block_store_create(mm, block_dir, &bs), SP_OK);
    /* Execution holds 80 MiB, 30 of them borrowed from the storage region. */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 80 * MiB), 80 * MiB);
    assert_int_equal(sp_block_store_put(bs, "big", buf, 30 * MiB, SP_STORAGE_MEMORY),
                     SP_ERR_MEMORY_REFUSED);
    assert_false(sp_memory_manager_acquire_storage(mm, 21 * MiB));
    assert_int_equal(sp_memory_manager_task_execution(mm, 1), 80 * MiB);
    /* What execution does not use, storage may take. */
    assert_int_equal(sp_block_store_put(bs, "fits", buf, 20 * MiB, SP_STORAGE_MEMORY), SP_OK);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.execution_used, 80 * MiB);
    assert_int_equal(s.storage_used, 20 * MiB);
    assert_true(s.storage_refusals >= 2);
    /* memory_and_disk falls back to disk instead of failing. */
    assert_int_equal(sp_block_store_put(bs, "spill", buf, 30 * MiB, SP_STORAGE_MEMORY_AND_DISK),
                     SP_OK);
    {
        bool in_mem = true;
        assert_true(sp_block_store_contains(bs, "spill", &in_mem));
        assert_false(in_mem);
    }
    sp_memory_manager_release_all_execution(mm, 1);
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    free(buf);
    rmdir(block_dir);
}

static void test_storage_borrows_free_execution_and_evicts_lru(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    sp_block_t *b = NULL;
    sp_memory_stats_t s;

    (void)state;
    make_block_dir();
    assert_int_equal(sp_block_store_create(mm, block_dir, &bs), SP_OK);
    put_blocks(bs, "b", 10, 10 * MiB, SP_STORAGE_MEMORY_AND_DISK);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 100 * MiB);
    assert_int_equal(s.execution_pool, 0);
    assert_int_equal(sp_block_store_get(bs, "b0", &b), SP_OK);
    sp_block_store_release(b);
    /* A new block evicts the least recently used one (b1) to disk. */
    put_blocks(bs, "c", 1, 10 * MiB, SP_STORAGE_MEMORY);
    {
        bool in_mem = true;
        assert_true(sp_block_store_contains(bs, "b1", &in_mem));
        assert_false(in_mem);
        assert_true(sp_block_store_contains(bs, "b0", &in_mem));
        assert_true(in_mem);
    }
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.evictions, 1);
    assert_int_equal(s.storage_used, 100 * MiB);
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    rmdir(block_dir);
}

/*
 * Unevictable holdings (map outputs in memory) take only free storage inside
 * the region: never borrowed execution memory, never another block evicted.
 */
static void test_storage_region_grant_neither_borrows_nor_evicts(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    char *buf = calloc(1, 10 * MiB);
    sp_memory_stats_t s;

    (void)state;
    make_block_dir();
    assert_non_null(buf);
    assert_int_equal(sp_block_store_create(mm, block_dir, &bs), SP_OK);
    /* The region is 50 MiB: 40 granted, 11 more would pass it. */
    assert_true(sp_memory_manager_acquire_storage_region(mm, 40 * MiB));
    assert_false(sp_memory_manager_acquire_storage_region(mm, 11 * MiB));
    /* A cached block in the last 10 MiB of the region is not evicted for it. */
    assert_int_equal(sp_block_store_put(bs, "cached", buf, 10 * MiB, SP_STORAGE_MEMORY), SP_OK);
    assert_false(sp_memory_manager_acquire_storage_region(mm, 1 * MiB));
    assert_true(sp_block_store_contains(bs, "cached", NULL));
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 50 * MiB);
    assert_int_equal(s.evictions, 0);
    assert_int_equal(s.borrowed_from_execution, 0);
    /* Execution borrowed the rest of the region: the grant waits until it is free again. */
    assert_int_equal(sp_block_store_remove(bs, "cached"), SP_OK);
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 60 * MiB), 60 * MiB);
    assert_false(sp_memory_manager_acquire_storage_region(mm, 1 * MiB));
    sp_memory_manager_release_all_execution(mm, 1);
    assert_true(sp_memory_manager_acquire_storage_region(mm, 10 * MiB));
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.borrowed_from_execution, 10 * MiB);
    sp_memory_manager_release_storage(mm, 50 * MiB);
    sp_memory_manager_stats(mm, &s);
    assert_int_equal(s.storage_used, 0);
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    free(buf);
    rmdir(block_dir);
}

/* ---- randomized invariants ---- */

static void test_pools_random_operations_keep_invariants(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    uint64_t held[3] = {0};
    unsigned seed = 42;
    int next_block = 0;
    char *buf = calloc(1, 8 * MiB);

    (void)state;
    make_block_dir();
    assert_non_null(buf);
    assert_int_equal(sp_block_store_create(mm, block_dir, &bs), SP_OK);
    for (int op = 0; op < 3000; op++) {
        /* One task at a time: with N = 1 an acquire never blocks, which a
         * single-threaded test needs; tasks take turns between resets. */
        unsigned task = (unsigned)(op / 50) % 3;
        uint64_t size = ((uint64_t)(rand_r(&seed) % 64) + 1) * (MiB / 8);
        sp_memory_stats_t s;
        sp_memory_layout_t l;
        char id[32];

        switch (rand_r(&seed) % 4) {
        case 0: held[task] += sp_memory_manager_acquire_execution(mm, 10 + task, size); break;
        case 1:
            sp_memory_manager_release_execution(mm, 10 + task, held[task] / 2);
            held[task] -= held[task] / 2;
            break;
        case 2:
            snprintf(id, sizeof(id), "r%d", next_block++);
            (void)sp_block_store_put(bs, id, buf, size < 8 * MiB ? size : 8 * MiB,
                                     SP_STORAGE_MEMORY);
            break;
        default:
            snprintf(id, sizeof(id), "r%d", next_block > 0 ? rand_r(&seed) % next_block : 0);
            (void)sp_block_store_remove(bs, id);
            break;
        }
        sp_memory_manager_stats(mm, &s);
        sp_memory_manager_layout(mm, &l);
        assert_int_equal(s.execution_pool + s.storage_pool, l.unified_bytes);
        assert_true(s.execution_used <= s.execution_pool);
        assert_true(s.storage_used <= s.storage_pool);
        assert_int_equal(s.execution_used, held[0] + held[1] + held[2]);
        for (unsigned t = 0; t < 3; t++)
            assert_int_equal(sp_memory_manager_task_execution(mm, 10 + t), held[t]);
        /* The task ends: the next one starts from nothing. */
        if (op % 50 == 49) {
            for (unsigned t = 0; t < 3; t++) {
                sp_memory_manager_release_all_execution(mm, 10 + t);
                held[t] = 0;
            }
        }
    }
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    free(buf);
    rmdir(block_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_defaults),
        cmocka_unit_test(test_layout_auto_executor_uses_default),
        cmocka_unit_test(test_layout_small_executor_scales_reserve),
        cmocka_unit_test(test_layout_rejects_bad_combinations),
        cmocka_unit_test(test_execution_single_task_gets_all),
        cmocka_unit_test(test_execution_fair_share_four_tasks),
        cmocka_unit_test(test_execution_blocks_below_half_share_and_wakes_on_release),
        cmocka_unit_test(test_execution_evicts_storage_down_to_region_only),
        cmocka_unit_test(test_storage_never_evicts_execution),
        cmocka_unit_test(test_storage_borrows_free_execution_and_evicts_lru),
        cmocka_unit_test(test_storage_region_grant_neither_borrows_nor_evicts),
        cmocka_unit_test(test_pools_random_operations_keep_invariants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
