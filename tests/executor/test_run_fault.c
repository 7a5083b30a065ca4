/*
 * `spate run` recovering from failures on a local cluster of 3 executors,
 * through the launcher's fault hooks (SPATE_CLI, tests/executor/
 * run_test_util.h):
 * - SPATE_FAULT_KILL_EXECUTOR=1:reduce:1: the driver SIGKILLs executor 1
 *   once one reduce task is done, in the middle of the reduce stage (8
 *   partitions). Its map outputs are gone: reduce tasks that need them fail
 *   to fetch, the driver recomputes those maps on the survivors and retries;
 * - SPATE_FAULT_CORRUPT_MAP=0: one byte of map 0's committed output is
 *   damaged after the commit; the reader's checksum catches it, and the
 *   driver recomputes the map;
 * - SPATE_FAULT_KILL_EXECUTOR=1:map:1: executor 1 dies during the map stage.
 * The lost executor is relaunched (executor.max_relaunches); the report lists
 * its replacement when it registered before the job ended.
 * Each run must exit 0 with output as right as without the fault (terasort:
 * valsort passes and the checksum is gensort's; the shuffle job: its
 * finish() finds exactly the records the maps wrote), and the --json report
 * and the summary must show the recovery: executors lost, fetch failures,
 * map outputs recomputed.
 *
 * Terasort cases skip themselves while `spate run --help` does not list
 * the job; the shuffle job's cases run the same faults meanwhile.
 *
 * LABELS: slow fault
 */
#include "run_test_util.h"

#include <stdint.h>

#define STR_(x) #x
#define STR(x)  STR_(x)

static char base[256];
static char local_conf[512]; /* shuffle.local_dirs=BASE/local */
static char scratch[300];

static int setup(void **state)
{
    char local[300];

    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-fault");
    rt_path(local, sizeof(local), base, "local");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    return mkdir(local, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

typedef enum fault {
    KILL_IN_REDUCE,
    KILL_IN_MAP,
    CORRUPT_MAP,
} fault_t;

static const char *const fault_env[][2] = {
    [KILL_IN_REDUCE] = {"SPATE_FAULT_KILL_EXECUTOR=1:reduce:1", NULL},
    [KILL_IN_MAP] = {"SPATE_FAULT_KILL_EXECUTOR=1:map:1", NULL},
    [CORRUPT_MAP] = {"SPATE_FAULT_CORRUPT_MAP=0", NULL},
};

/* What the report and the messages must say about the recovery from fault. */
static void expect_recovery(fault_t fault, const rt_run_t *run, json_t *rep)
{
    size_t executors = json_array_size(rt_json_at(rep, "executors"));

    /* 3 executors, and the one started in place of a lost one when it registered in time. */
    rt_expect_report(rep, 0, false);
    if (executors < 3 || executors > 3 + (size_t)rt_json_int(rep, "recovery.executors_relaunched"))
        fail_msg("the report lists %zu executors", executors);
    switch (fault) {
    case KILL_IN_REDUCE:
    case KILL_IN_MAP:
        assert_non_null(strstr(run->err, "fault injection: killing executor 1"));
        assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
        assert_int_equal(rt_json_int(rep, "recovery.executors_relaunched"), 1);
        assert_true(rt_json_bool(rep, "executors.1.lost"));
        assert_false(rt_json_bool(rep, "executors.0.lost"));
        assert_false(rt_json_bool(rep, "executors.2.lost"));
        if (strstr(run->out, "1 executors lost") == NULL)
            fail_msg("the summary does not report the lost executor: %s", rt_tail(run->out));
        if (fault == KILL_IN_REDUCE) {
            /* It held map outputs the reduce stage still needed. */
            assert_true(rt_json_int(rep, "recovery.maps_recomputed") >= 1);
            if (strstr(run->out, "0 map outputs recomputed") != NULL)
                fail_msg("the summary reports no recomputed map: %s", rt_tail(run->out));
        }
        break;
    case CORRUPT_MAP:
        assert_non_null(strstr(run->err, "damaged map 0's output"));
        assert_non_null(strstr(run->err, "checksum"));
        assert_true(rt_json_int(rep, "recovery.fetch_failures") >= 1);
        assert_true(rt_json_int(rep, "recovery.maps_recomputed") >= 1);
        assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
        if (strstr(run->out, "0 fetch failures") != NULL)
            fail_msg("the summary reports no fetch failure: %s", rt_tail(run->out));
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* terasort                                                                  */
/* ------------------------------------------------------------------------ */

#define TERASORT_RECORDS 300000
#define TERASORT_FILES   "6"

/*
 * Input of 6 gensort files, made once: terasort plans one map per file (up
 * to 64 MiB), so every executor holds map outputs when the fault strikes.
 */
static const char *terasort_input(void)
{
    static char in[300];
    rt_run_t run;

    if (in[0] != '\0')
        return in;
    rt_path(in, sizeof(in), base, "terasort-in");
    run = RT_CLI("gensort", "--files", TERASORT_FILES, STR(TERASORT_RECORDS), in);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    return in;
}

static void terasort_with(fault_t fault)
{
    char out[300], json[300];
    rt_run_t run;
    json_t *rep;

    if (!rt_has_job("terasort")) {
        print_message("terasort is not a built-in job of this spate yet: skipped\n");
        skip();
    }
    rt_path(out, sizeof(out), base, "terasort-out");
    rt_path(json, sizeof(json), base, "terasort.json");
    rt_rmtree(out);
    run = rt_cli_env((const char *const[]){"run", "terasort", "--executors", "3", "--input",
                                           terasort_input(), "--partitions", "8", "--output", out,
                                           "--json", json, "--conf", local_conf, "--no-progress",
                                           "--no-baseline", NULL},
                     fault_env[fault]);
    rt_expect_ok(&run, fault_env[fault][0]);
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "maps"), 6);
    expect_recovery(fault, &run, rep);
    assert_int_equal(rt_json_int(rep, "reduce_records"), TERASORT_RECORDS);
    assert_int_equal(rt_json_int(rep, "output_bytes"), TERASORT_RECORDS * 100);
    rt_expect_sorted(out, TERASORT_RECORDS, scratch);
    assert_int_equal(rt_part_count(out), 8);
    json_decref(rep);
    rt_free(&run);
    rt_rmtree(out);
}

static void test_run_terasort_executor_killed_in_reduce(void **state)
{
    (void)state;
    terasort_with(KILL_IN_REDUCE);
}

static void test_run_terasort_corrupt_map_output(void **state)
{
    (void)state;
    terasort_with(CORRUPT_MAP);
}

static void test_run_terasort_executor_killed_in_map(void **state)
{
    (void)state;
    terasort_with(KILL_IN_MAP);
}

/* ------------------------------------------------------------------------ */
/* shuffle                                                                   */
/* ------------------------------------------------------------------------ */

#define SHUFFLE_RECORDS 300000

/* The shuffle job: 6 maps, 8 partitions, its output kept and measured. */
static void shuffle_with(fault_t fault)
{
    char out[300], json[300];
    uint64_t total = 0;
    rt_run_t run;
    json_t *rep;

    rt_path(out, sizeof(out), base, "shuffle-out");
    rt_path(json, sizeof(json), base, "shuffle.json");
    rt_rmtree(out);
    run = rt_cli_env((const char *const[]){"run", "shuffle", "--executors", "3", "--partitions",
                                           "8", "--job-arg", "maps=6", "--job-arg",
                                           "records=" STR(SHUFFLE_RECORDS), "--output", out,
                                           "--json", json, "--conf", local_conf, "--no-progress",
                                           "--no-baseline", NULL},
                     fault_env[fault]);
    rt_expect_ok(&run, fault_env[fault][0]);
    rep = rt_json_load(json);
    expect_recovery(fault, &run, rep);
    assert_int_equal(rt_json_int(rep, "reduce_records"), SHUFFLE_RECORDS);
    /* The map side's and the reduce side's records, bytes and hash sums agree. */
    for (int i = 0; i < 3; i++) {
        char a[16], b[16];
        snprintf(a, sizeof(a), "counters.%d", i);
        snprintf(b, sizeof(b), "counters.%d", i + 3);
        assert_int_equal(rt_json_int(rep, a), rt_json_int(rep, b));
    }
    /* Every record once in the output: 10-byte keys, 90-byte values. */
    rt_expect_output(out, 8);
    for (unsigned p = 0; p < 8; p++) {
        char name[32], path[400];
        struct stat sb;
        snprintf(name, sizeof(name), "part-r-%05u", p);
        rt_path(path, sizeof(path), out, name);
        assert_int_equal(stat(path, &sb), 0);
        total += (uint64_t)sb.st_size;
    }
    assert_int_equal(total, (uint64_t)SHUFFLE_RECORDS * 100);
    json_decref(rep);
    rt_free(&run);
    rt_rmtree(out);
}

static void test_run_shuffle_executor_killed_in_reduce(void **state)
{
    (void)state;
    shuffle_with(KILL_IN_REDUCE);
}

static void test_run_shuffle_corrupt_map_output(void **state)
{
    (void)state;
    shuffle_with(CORRUPT_MAP);
}

static void test_run_shuffle_executor_killed_in_map(void **state)
{
    (void)state;
    shuffle_with(KILL_IN_MAP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_terasort_executor_killed_in_reduce),
        cmocka_unit_test(test_run_terasort_corrupt_map_output),
        cmocka_unit_test(test_run_terasort_executor_killed_in_map),
        cmocka_unit_test(test_run_shuffle_executor_killed_in_reduce),
        cmocka_unit_test(test_run_shuffle_corrupt_map_output),
        cmocka_unit_test(test_run_shuffle_executor_killed_in_map),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
