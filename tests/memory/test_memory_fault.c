/*
 * Fault injection over every create path of the memory layer: the n-th
 * allocation (and the n-th file write and read) fails for n = 1, 2, ...
 * until the path succeeds without a fault. Each failure must come back as
 * SP_ERR_NOMEM (or SP_ERR_IO) with nothing left behind: the arena's live
 * bytes and the manager's pools return to zero, no block file remains, and
 * the ASan build checks the heap.
 */
/* LABELS: unit fault */
#include "mm_test_util.h"
#include "tests/test_dir_util.h"
#include "common_int.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static unsigned count_files(void) { return test_dir_count(dir); }

static sp_conf_t *small_conf(void)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", "32m"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", "64k"), SP_OK);
    return conf;
}

/* Everything the memory layer creates, in order, then torn down. */
static sp_status_t build_and_use(const sp_conf_t *conf, sp_topology_t *topo)
{
    sp_memory_manager_t *mm = NULL;
    sp_task_memory_t *task = NULL;
    sp_block_store_t *bs = NULL;
    sp_memory_consumer_t consumer;
    sp_page_t *page = NULL;
    sp_block_t *block = NULL;
    sp_memory_stats_t ms;
    char data[1000];
    sp_status_t st;

    memset(data, 'x', sizeof(data));
    st = sp_memory_manager_create(conf, topo, 0, &mm);
    if (st != SP_OK)
        return st;
    st = sp_block_store_create(mm, dir, &bs);
    if (st != SP_OK)
        goto out_mm;
    st = sp_task_memory_create(mm, 1, &task);
    if (st != SP_OK)
        goto out_bs;
    sp_memory_consumer_init(&consumer, task, NULL, "fault");
    st = sp_memory_consumer_page_alloc(&consumer, 0, &page);
    if (st != SP_OK)
        goto out_task;
    sp_memory_consumer_page_free(&consumer, page);
    if ((st = sp_block_store_put(bs, "mem", data, sizeof(data), SP_STORAGE_MEMORY)) != SP_OK ||
        (st = sp_block_store_put(bs, "disk", data, sizeof(data), SP_STORAGE_DISK)) != SP_OK)
        goto out_task;
    st = sp_block_store_get(bs, "disk", &block);
    if (st != SP_OK)
        goto out_task;
    assert_memory_equal(sp_block_data(block), data, sizeof(data));
    sp_block_store_release(block);
out_task:
    sp_memory_consumer_fini(&consumer);
    sp_task_memory_destroy(task, NULL);
out_bs:
    sp_block_store_destroy(bs);
    sp_memory_manager_stats(mm, &ms);
    /* Whatever failed, nothing is still accounted. */
    assert_int_equal(ms.execution_used, 0);
    assert_int_equal(ms.storage_used, 0);
    {
        sp_arena_stats_t as;
        sp_arena_stats(sp_memory_manager_arena(mm), &as);
        assert_int_equal(as.live_bytes, 0);
    }
out_mm:
    sp_memory_manager_destroy(mm);
    assert_int_equal(count_files(), 0);
    return st;
}

static void sweep(sp_fault_kind_t kind, sp_status_t expect, sp_topology_t *topo)
{
    sp_conf_t *conf = small_conf();
    uint64_t n, failures = 0;

    for (n = 1; n < 10000; n++) {
        uint64_t fired = sp__fault_fired(kind);
        sp_status_t st;

        sp__fault_arm(kind, n);
        st = build_and_use(conf, topo);
        sp__fault_arm(kind, 0);
        if (sp__fault_fired(kind) == fired) {
            assert_int_equal(st, SP_OK); /* ran to the end without a fault */
            break;
        }
        failures++;
        /* A fault may surface as the path's own error (a read fault of a
         * block file is SP_ERR_IO); it is never success or a crash. */
        assert_true(st == expect || st == SP_ERR_IO || st == SP_ERR_NO_SPACE || st == SP_ERR_NOMEM);
        if (kind == SP_FAULT_ALLOC)
            assert_int_equal(st, SP_ERR_NOMEM);
    }
    assert_true(n < 10000);
    assert_true(failures > 0);
    sp_conf_destroy(conf);
}

static void test_fault_every_allocation_fails_cleanly(void **state)
{
    (void)state;
    sweep(SP_FAULT_ALLOC, SP_ERR_NOMEM, NULL);
}

static void test_fault_every_allocation_with_topology(void **state)
{
    sp_topology_t *topo = NULL;

    (void)state;
    assert_int_equal(sp_topology_create(NULL, &topo), SP_OK);
    sweep(SP_FAULT_ALLOC, SP_ERR_NOMEM, topo);
    sp_topology_destroy(topo);
}

static void test_fault_every_write_fails_cleanly(void **state)
{
    (void)state;
    sweep(SP_FAULT_WRITE, SP_ERR_IO, NULL);
}

static void test_fault_every_read_fails_cleanly(void **state)
{
    (void)state;
    sweep(SP_FAULT_READ, SP_ERR_IO, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_every_allocation_fails_cleanly),
        cmocka_unit_test(test_fault_every_allocation_with_topology),
        cmocka_unit_test(test_fault_every_write_fails_cleanly),
        cmocka_unit_test(test_fault_every_read_fails_cleanly),
    };
    snprintf(dir, sizeof(dir), "/tmp/spate-test-fault-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR); /* leak warnings are expected here */
    {
        int rc = cmocka_run_group_tests(tests, NULL, NULL);
        rmdir(dir);
        return rc;
    }
}
