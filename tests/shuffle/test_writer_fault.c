/*
 * Fault injection over the map output writer: the n-th file write (as
 * ENOSPC), the n-th file read and the n-th allocation fail, for n = 1, 2, ...
 * until a run completes without a fault, over a run that spills several
 * times and merges, on both paths. Every failure must return an error
 * (never success), leave no temporary file and no committed output, and
 * give back all execution memory. A run that succeeds must decode to the
 * reference.
 */
/* LABELS: unit fault */
#include "writer_test_util.h"
#include "tests/test_dir_util.h"
#include "common_int.h"

#include <dirent.h>
#include <sys/stat.h>

static char dir[256];
static const char *sweep_executor = "16m"; /* memory.executor of the sweeps */

static unsigned count_files(void) { return test_dir_count(dir); }

static void clear_dir(void) { test_dir_clear(dir); }

/* One full write + commit; returns the status of the first failing call. */
static sp_status_t attempt(sp_conf_t *conf, const ref_case_t *c, ref_record_t *ref,
                           sp_map_status_t **status_p)
{
    sp_memory_manager_t *mm = NULL;
    sp_task_memory_t *task = NULL;
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_memory_stats_t ms;
    sp_status_t st;

    st = sp_memory_manager_create(conf, NULL, 0, &mm);
    if (st != SP_OK)
        return st;
    st = sp_task_memory_create(mm, 1, &task);
    if (st != SP_OK)
        goto out_mm;
    st = sp_shuffle_writer_options_init(&o, conf);
    if (st != SP_OK)
        goto out_task;
    o.shuffle_id = 1;
    o.map_id = 1;
    o.partitions = c->partitions;
    o.codec = c->codec;
    o.checksum = c->checksum;
    o.key_ordering = c->key_ordering;
    o.path = c->path;
    st = sp_shuffle_writer_open(task, conf, &o, &w);
    if (st != SP_OK)
        goto out_task;
    for (size_t i = 0; i < c->records && st == SP_OK; i++)
        st = sp_shuffle_writer_write(w, ref[i].partition, ref[i].key, ref[i].klen, ref[i].value,
                                     ref[i].vlen);
    if (st == SP_OK)
        st = sp_shuffle_writer_commit(w, status_p);
    sp_shuffle_writer_close(w);
out_task:
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.execution_used, 0);
out_mm:
    sp_memory_manager_destroy(mm);
    return st;
}

static void sweep(sp_fault_kind_t kind, const ref_case_t *c)
{
    ref_record_t *ref = ref_generate(c);
    sp_conf_t *conf = NULL;
    uint64_t n, failures = 0;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", sweep_executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", "16k"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.spill_records", "150"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.spill_buffer", "4k"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.sync", "true"), SP_OK);
    for (n = 1; n < 100000; n++) {
        uint64_t fired = sp__fault_fired(kind);
        sp_map_status_t *status = NULL;
        sp_status_t st;

        sp__fault_arm(kind, n);
        st = attempt(conf, c, ref, &status);
        sp__fault_arm(kind, 0);
        if (sp__fault_fired(kind) == fired) {
            assert_int_equal(st, SP_OK);
            ref_check_output(status, ref, c->records, c->key_ordering);
            sp_map_status_destroy(status);
            break;
        }
        failures++;
        if (st == SP_OK) {
            /* Some faults are absorbed (a refused grant becomes a spill):
             * then the output must still be exactly right. */
            ref_check_output(status, ref, c->records, c->key_ordering);
            sp_map_status_destroy(status);
            clear_dir();
            continue;
        }
        assert_null(status);
        if (kind == SP_FAULT_WRITE)
            assert_true(st == SP_ERR_NO_SPACE || st == SP_ERR_IO);
        else if (kind == SP_FAULT_ALLOC)
            assert_true(st == SP_ERR_NOMEM || st == SP_ERR_MEMORY_REFUSED);
        else
            assert_true(st == SP_ERR_IO);
        /* Nothing half written survives: no temporaries, no output. */
        if (count_files() != 0) {
            char cmd[300];
            snprintf(cmd, sizeof(cmd), "ls -la %s >&2", dir);
            fprintf(stderr, "fault %llu of kind %d left files (status %d: %s):\n",
                    (unsigned long long)n, (int)kind, (int)st, sp_last_error());
            (void)system(cmd);
        }
        assert_int_equal(count_files(), 0);
        assert_true(strlen(sp_last_error()) > 0);
        clear_dir();
    }
    assert_true(n < 100000);
    assert_true(failures > 0);
    clear_dir();
    sp_conf_destroy(conf);
    ref_free(ref, c->records);
}

static const ref_case_t sort_case = {.partitions = 300,
                                     .records = 700,
                                     .max_key = 8,
                                     .max_value = 100,
                                     .codec = SP_CODEC_LZ4,
                                     .checksum = SP_CHECKSUM_CRC32C,
                                     .path = SP_WRITER_SORT,
                                     .seed = 5};

static void test_writer_fault_every_write(void **state)
{
    ref_case_t c = sort_case;

    (void)state;
    sweep(SP_FAULT_WRITE, &c);
    c.key_ordering = true;
    c.checksum = SP_CHECKSUM_XXH3;
    sweep(SP_FAULT_WRITE, &c);
}

static void test_writer_fault_every_read(void **state)
{
    ref_case_t c = sort_case;

    (void)state;
    c.key_ordering = true; /* the ordered merge reads spills back */
    sweep(SP_FAULT_READ, &c);
    c.key_ordering = false;
    c.checksum = SP_CHECKSUM_XXH3; /* copies through user space */
    sweep(SP_FAULT_READ, &c);
}

static void test_writer_fault_every_allocation(void **state)
{
    ref_case_t c = sort_case;

    (void)state;
    sweep(SP_FAULT_ALLOC, &c);
    c.key_ordering = true;
    c.codec = SP_CODEC_ZSTD;
    sweep(SP_FAULT_ALLOC, &c);
}

static void test_writer_fault_bypass_path(void **state)
{
    ref_case_t c = sort_case;

    (void)state;
    c.partitions = 20;
    c.path = SP_WRITER_BYPASS;
    sweep(SP_FAULT_WRITE, &c);
    sweep(SP_FAULT_ALLOC, &c);
}

static void test_writer_fault_grouped_merges(void **state)
{
    ref_case_t c = sort_case;

    (void)state;
    /* 1 MiB leaves decode windows for only a few of the runs: the merge of
     * runs in groups is swept too. */
    c.key_ordering = true;
    c.records = 1500;
    sweep_executor = "1m";
    sweep(SP_FAULT_WRITE, &c);
    sweep(SP_FAULT_READ, &c);
    sweep(SP_FAULT_ALLOC, &c);
    sweep_executor = "16m";
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_fault_every_write),
        cmocka_unit_test(test_writer_fault_every_read),
        cmocka_unit_test(test_writer_fault_every_allocation),
        cmocka_unit_test(test_writer_fault_bypass_path),
        cmocka_unit_test(test_writer_fault_grouped_merges),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-writer-fault-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    clear_dir();
    rmdir(dir);
    return rc;
}
