/*
 * Map outputs held in memory (shuffle.output=memory, shuffle/mem_output.c):
 * the committed data file is a link to an in-memory file of the writing
 * process, counted in the storage region and read back like a file, by this
 * process and by another one; a full storage region puts the output on disk
 * instead; removing the output gives the memory back; two attempts that
 * commit at once keep one output and one grant; and an output whose process
 * died is gone (its reader gets an error naming the file, never bytes).
 */
/* LABELS: unit */
#include "writer_test_util.h"
#include "tests/test_dir_util.h"
#include "common_int.h"

#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char dir[256];

typedef struct env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
} env_t;

static void env_open(env_t *e, const char *output, const char *storage_fraction)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(sp_conf_create(&e->conf), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.executor", "64m"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.storage_fraction", storage_fraction), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.output", output), SP_OK);
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
}

static void env_close(env_t *e)
{
    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
    test_dir_clear(dir);
}

static uint64_t storage_used(env_t *e)
{
    sp_memory_stats_t ms;

    sp_memory_manager_stats(e->mm, &ms);
    return ms.storage_used;
}

/* Writes case c as map map_id, task task_id, attempt attempt; returns the commit's status. */
static sp_status_t write_map(env_t *e, const ref_case_t *c, ref_record_t *ref, uint64_t map_id,
                             uint64_t task_id, uint32_t attempt, sp_map_status_t **status_p)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_task_memory_t *task = NULL;
    sp_status_t st;

    assert_int_equal(sp_task_memory_create(e->mm, task_id, &task), SP_OK);
    assert_int_equal(sp_shuffle_writer_options_init(&o, e->conf), SP_OK);
    o.shuffle_id = 9;
    o.map_id = map_id;
    o.attempt = attempt;
    o.partitions = c->partitions;
    o.key_ordering = c->key_ordering;
    o.codec = c->codec;
    o.checksum = c->checksum;
    o.path = c->path;
    assert_int_equal(sp_shuffle_writer_open(task, e->conf, &o, &w), SP_OK);
    for (size_t i = 0; i < c->records; i++)
        assert_int_equal(sp_shuffle_writer_write(w, ref[i].partition, ref[i].key, ref[i].klen,
                                                 ref[i].value, ref[i].vlen),
                         SP_OK);
    st = sp_shuffle_writer_commit(w, status_p);
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    return st;
}

/* Map 4 of shuffle 9, the one output most cases write. */
static sp_status_t write_case(env_t *e, const ref_case_t *c, ref_record_t *ref, uint64_t task_id,
                              uint32_t attempt, sp_map_status_t **status_p)
{
    return write_map(e, c, ref, 4, task_id, attempt, status_p);
}

static const ref_case_t sorted_case = {.partitions = 13,
                                       .records = 20000,
                                       .max_key = 12,
                                       .max_value = 90,
                                       .key_ordering = true,
                                       .codec = SP_CODEC_LZ4,
                                       .checksum = SP_CHECKSUM_CRC32C,
                                       .seed = 7};

/* True when path is a link into /proc/<this pid>/fd/. */
static bool is_memory_link(const char *path)
{
    char target[128], want[64];
    struct stat sb;
    ssize_t n;

    if (lstat(path, &sb) != 0 || !S_ISLNK(sb.st_mode))
        return false;
    n = readlink(path, target, sizeof(target) - 1);
    if (n <= 0)
        return false;
    target[n] = '\0';
    snprintf(want, sizeof(want), "/proc/%ld/fd/", (long)getpid());
    return strncmp(target, want, strlen(want)) == 0;
}

static uint64_t file_size(const char *path)
{
    struct stat sb;

    assert_int_equal(stat(path, &sb), 0);
    return (uint64_t)sb.st_size;
}

static void test_output_in_memory_is_read_back_and_released(void **state)
{
    ref_record_t *ref = ref_generate(&sorted_case);
    sp_map_status_t *status = NULL;
    uint64_t bytes;
    env_t e;

    (void)state;
    env_open(&e, "memory", "0.5");
    assert_int_equal(write_case(&e, &sorted_case, ref, 1, 0, &status), SP_OK);
    assert_true(is_memory_link(status->data_path));
    /* Index and checksum files stay regular files. */
    assert_false(is_memory_link(status->index_path));
    assert_false(is_memory_link(status->checksum_path));
    bytes = file_size(status->data_path);
    assert_true(bytes > 0);
    assert_int_equal(storage_used(&e), bytes);
    ref_check_output(status, ref, sorted_case.records, true);
    assert_int_equal(sp_shuffle_remove_output(e.conf, 9, 4), SP_OK);
    assert_int_equal(storage_used(&e), 0);
    assert_int_equal(test_dir_count(dir), 0);
    sp_map_status_destroy(status);
    ref_free(ref, sorted_case.records);
    env_close(&e);
}

static void test_output_on_disk_when_asked_or_region_full(void **state)
{
    struct {
        const char *output, *storage_fraction;
    } cases[] = {{"disk", "0.5"}, {"memory", "0"}, {"memory", "0.001"}};

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ref_record_t *ref = ref_generate(&sorted_case);
        sp_map_status_t *status = NULL;
        struct stat sb;
        env_t e;

        env_open(&e, cases[i].output, cases[i].storage_fraction);
        assert_int_equal(write_case(&e, &sorted_case, ref, 1, 0, &status), SP_OK);
        assert_int_equal(lstat(status->data_path, &sb), 0);
        assert_true(S_ISREG(sb.st_mode));
        assert_int_equal(storage_used(&e), 0);
        ref_check_output(status, ref, sorted_case.records, true);
        /* Data, index and checksum: no temporary left beside them. */
        assert_int_equal(test_dir_count(dir), 3);
        assert_int_equal(sp_shuffle_remove(e.conf, 9), SP_OK);
        sp_map_status_destroy(status);
        ref_free(ref, sorted_case.records);
        env_close(&e);
    }
}

typedef struct attempt_arg {
    env_t *env;
    ref_record_t *ref;
    uint32_t attempt;
    sp_status_t st;
    sp_map_status_t *status;
} attempt_arg_t;

static void *attempt_run(void *p)
{
    attempt_arg_t *a = p;

    a->st = write_case(a->env, &sorted_case, a->ref, 10 + a->attempt, a->attempt, &a->status);
    return NULL;
}

static void test_concurrent_attempts_hold_one_output(void **state)
{
    ref_record_t *ref = ref_generate(&sorted_case);
    attempt_arg_t a[2];
    pthread_t th[2];
    env_t e;

    (void)state;
    env_open(&e, "memory", "0.5");
    for (uint32_t i = 0; i < 2; i++) {
        a[i] = (attempt_arg_t){.env = &e, .ref = ref, .attempt = i + 1};
        assert_int_equal(pthread_create(&th[i], NULL, attempt_run, &a[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(a[0].st, SP_OK);
    assert_int_equal(a[1].st, SP_OK);
    assert_int_equal(a[0].status->attempt, a[1].status->attempt);
    /* The loser gave its grant back: storage holds one output. */
    assert_int_equal(storage_used(&e), file_size(a[0].status->data_path));
    ref_check_output(a[0].status, ref, sorted_case.records, true);
    assert_int_equal(test_dir_count(dir), 3);
    assert_int_equal(sp_shuffle_remove(e.conf, 9), SP_OK);
    assert_int_equal(storage_used(&e), 0);
    sp_map_status_destroy(a[0].status);
    sp_map_status_destroy(a[1].status);
    ref_free(ref, sorted_case.records);
    env_close(&e);
}

/* Another process reads the output through its link while the owner lives. */
static void test_output_read_by_another_process(void **state)
{
    ref_record_t *ref = ref_generate(&sorted_case);
    sp_map_status_t *status = NULL;
    int wstatus = 0;
    pid_t pid;
    env_t e;

    (void)state;
    env_open(&e, "memory", "0.5");
    assert_int_equal(write_case(&e, &sorted_case, ref, 1, 0, &status), SP_OK);
    assert_true(is_memory_link(status->data_path));
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The child checks with plain exits: cmocka's state is the parent's. */
        sp_map_output_t *mo = NULL;
        void *data = NULL;
        size_t len = 0;
        int rc = 0;
        if (sp_map_output_open(status->index_path, &mo) != SP_OK)
            _exit(2);
        for (uint32_t p = 0; p < status->partitions && rc == 0; p++) {
            if (sp_map_output_read_segment(mo, p, &data, &len) != SP_OK ||
                len != status->lengths[p])
                rc = 3;
            free(data);
            data = NULL;
        }
        sp_map_output_close(mo);
        _exit(rc);
    }
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
    assert_int_equal(sp_shuffle_remove(e.conf, 9), SP_OK);
    sp_map_status_destroy(status);
    ref_free(ref, sorted_case.records);
    env_close(&e);
}

/* An output held by a process that exited is gone: opening it fails, naming the data file. */
static void test_output_of_a_dead_process_is_lost(void **state)
{
    char index[PATH_MAX], data[PATH_MAX];
    sp_map_output_t *mo = NULL;
    int wstatus = 0;
    pid_t pid;
    env_t e;

    (void)state;
    env_open(&e, "memory", "0.5");
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ref_record_t *ref = ref_generate(&sorted_case);
        sp_map_status_t *status = NULL;
        int rc = write_case(&e, &sorted_case, ref, 1, 0, &status) == SP_OK &&
                         is_memory_link(status->data_path)
                     ? 0
                     : 2;
        _exit(rc); /* with its in-memory output */
    }
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
    snprintf(index, sizeof(index), "%s/shuffle_9_4.index", dir);
    snprintf(data, sizeof(data), "%s/shuffle_9_4.data", dir);
    assert_int_equal(access(index, F_OK), 0);
    assert_int_not_equal(sp_map_output_open(index, &mo), SP_OK);
    assert_null(mo);
    assert_non_null(strstr(sp_last_error(), "shuffle_9_4.data"));
    assert_int_equal(sp_shuffle_remove(e.conf, 9), SP_OK);
    env_close(&e);
}

/*
 * With a block store over the manager, outputs are held blocks: they borrow
 * free execution memory, and when execution takes it back the least recently
 * committed ones move to disk under the same name (same bytes, readable),
 * the eviction count rises, and removal of either kind gives everything back.
 */
static void test_outputs_evicted_to_disk_when_execution_needs_memory(void **state)
{
    char bdir[300];
    ref_record_t *ref = ref_generate(&sorted_case);
    sp_map_status_t *status[4] = {NULL};
    sp_block_store_t *bs = NULL;
    uint64_t evicted0 = sp_shuffle_outputs_evicted(), bytes, got;
    sp_memory_stats_t ms;
    env_t e;

    (void)state;
    env_open(&e, "memory", "0.001");
    snprintf(bdir, sizeof(bdir), "%s-blocks", dir);
    assert_int_equal(sp_block_store_create(e.mm, bdir, &bs), SP_OK);
    for (int m = 0; m < 4; m++) {
        assert_int_equal(
            write_map(&e, &sorted_case, ref, (uint64_t)m, 100 + (uint64_t)m, 0, &status[m]), SP_OK);
        /* The region is tiny: they are all in memory on borrowed execution memory. */
        assert_true(is_memory_link(status[m]->data_path));
        assert_true(sp_map_status_in_memory(status[m]));
    }
    bytes = file_size(status[0]->data_path);
    sp_memory_manager_stats(e.mm, &ms);
    assert_int_equal(ms.storage_used, 4 * bytes);
    /* Execution takes all but about two outputs' worth: the two oldest move to disk. */
    got = sp_memory_manager_acquire_execution(
        e.mm, 1, ms.execution_pool + ms.storage_pool - 2 * bytes - bytes / 2);
    assert_true(got > 0);
    assert_int_equal(sp_shuffle_outputs_evicted() - evicted0, 2);
    for (int m = 0; m < 4; m++) {
        struct stat sb;
        assert_int_equal(lstat(status[m]->data_path, &sb), 0);
        assert_int_equal(S_ISREG(sb.st_mode), m < 2);
        assert_int_equal(sp_map_status_in_memory(status[m]), m >= 2);
        ref_check_output(status[m], ref, sorted_case.records, true);
    }
    sp_memory_manager_stats(e.mm, &ms);
    assert_int_equal(ms.storage_used, 2 * bytes);
    sp_memory_manager_release_all_execution(e.mm, 1);
    /* Removal gives both kinds back: no memory, no files, no blocks. */
    assert_int_equal(sp_shuffle_remove(e.conf, 9), SP_OK);
    sp_memory_manager_stats(e.mm, &ms);
    assert_int_equal(ms.storage_used, 0);
    assert_int_equal(test_dir_count(dir), 0);
    for (int m = 0; m < 4; m++)
        sp_map_status_destroy(status[m]);
    sp_block_store_destroy(bs);
    rmdir(bdir);
    ref_free(ref, sorted_case.records);
    env_close(&e);
}

static int teardown(void **state)
{
    (void)state;
    test_dir_clear(dir);
    rmdir(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_in_memory_is_read_back_and_released),
        cmocka_unit_test(test_output_on_disk_when_asked_or_region_full),
        cmocka_unit_test(test_concurrent_attempts_hold_one_output),
        cmocka_unit_test(test_output_read_by_another_process),
        cmocka_unit_test(test_output_of_a_dead_process_is_lost),
        cmocka_unit_test(test_outputs_evicted_to_disk_when_execution_needs_memory),
    };
    snprintf(dir, sizeof(dir), "/tmp/spate-test-mem-output-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, teardown);
}
