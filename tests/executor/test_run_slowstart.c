/*
 * Reduce slow start (shuffle.reduce_slowstart) through the real `spate run`
 * on a local cluster of two executors with one slot each, with the job
 * plugin that misbehaves on request (plugins/fault_plugin.c):
 * - a slow map task: reduce tasks start in the free slot while it runs,
 *   read the outputs as they come, and the output is whole;
 * - a map task that fails while early reduce tasks hold every other slot:
 *   the driver cancels one (CANCEL), the map task runs again in its slot,
 *   the canceled reduce task does not count as a failure, and the output is
 *   whole;
 * - an executor killed during the map stage while early reduce tasks run:
 *   the outputs it held are computed again and the output is whole;
 * - TeraSort's merged reads with every reduce task started at once: its own
 *   check (valsort: order and checksum) passes.
 * Every run's working directory must stay empty, its shuffle directories be
 * empty and none of its processes be left.
 *
 * LABELS: fault
 */
#include "taskfail_util.h"

static tf_dirs_t dirs;
static char *const out = dirs.out, *const json = dirs.json, *const once = dirs.once;

static int setup(void **state)
{
    (void)state;
    return tf_dirs_setup(&dirs, "slowstart");
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(dirs.base);
    return 0;
}

static void fresh(void) { tf_dirs_fresh(&dirs); }

static rt_run_t run_job(const char *job, const char *const *extra, const char *const *env)
{
    return tf_run_job(&dirs, job, extra, env);
}

#define PLUGIN                  getenv("SPATE_FAULT_PLUGIN")
#define RUN_FAULT_JOB(env, ...) run_job(PLUGIN, (const char *const[]){__VA_ARGS__, NULL}, env)

static void expect_clean(const rt_run_t *run) { tf_expect_clean(&dirs, run); }

/* The fault job's 8 maps x 1000 records, all reduced, in 2 parts; its report. */
static json_t *expect_whole_output(const rt_run_t *run)
{
    json_t *rep;

    rt_expect_ok(run, "the job");
    if (strstr(run->err, "fault job: 8000 records reduced, as written") == NULL)
        fail_msg("the job's check did not pass: %s", rt_tail(run->err));
    rt_expect_output(out, 2);
    expect_clean(run);
    rep = rt_json_load(json);
    assert_true(rt_json_bool(rep, "succeeded"));
    return rep;
}

static void test_run_slowstart_reduces_overlap_a_slow_map(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    /* Map 7 sleeps: the other executor runs maps 0-6, then reduce tasks, which wait for it. */
    run = RUN_FAULT_JOB(NULL, "--job-arg", "maps=8", "--job-arg", "fault=sleep", "--job-arg",
                        "task=7", "--job-arg", "sleep_ms=3000", "--conf",
                        "shuffle.reduce_slowstart=0.5");
    rep = expect_whole_output(&run);
    if (rt_json_int(rep, "shuffle.reduces_started_early") < 1)
        fail_msg("no reduce task started while map 7 slept: %s", rt_tail(run.err));
    assert_int_equal(rt_json_int(rep, "shuffle.reduces_canceled"), 0);
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 0);
    assert_int_equal(rt_json_int(rep, "stages.reduce.done"), 2);
    assert_non_null(strstr(run.out, "overlap: "));
    json_decref(rep);
    rt_free(&run);

    /* Without slow start no reduce task starts early, and the summary says nothing of it. */
    fresh();
    run = RUN_FAULT_JOB(NULL, "--job-arg", "maps=8", "--job-arg", "fault=sleep", "--job-arg",
                        "task=7", "--job-arg", "sleep_ms=500");
    rep = expect_whole_output(&run);
    assert_int_equal(rt_json_int(rep, "shuffle.reduces_started_early"), 0);
    assert_null(strstr(run.out, "overlap: "));
    json_decref(rep);
    rt_free(&run);
}

static void test_run_slowstart_failing_map_takes_a_slot_back(void **state)
{
    rt_run_t run;
    json_t *rep;
    char arg[400];

    (void)state;
    fresh();
    /*
     * Map 7 fails once, after 3 s: by then the other executor's slot holds a
     * reduce task waiting for it, and the failed map avoids its own
     * executor while another is alive, so that reduce task must give its
     * slot back.
     */
    snprintf(arg, sizeof(arg), "once=%s", once);
    run = RUN_FAULT_JOB(NULL, "--job-arg", "maps=8", "--job-arg", "fault=error", "--job-arg",
                        "task=7", "--job-arg", "delay_ms=3000", "--job-arg", arg, "--conf",
                        "shuffle.reduce_slowstart=0");
    rep = expect_whole_output(&run);
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 1);
    if (rt_json_int(rep, "shuffle.reduces_canceled") < 1)
        fail_msg("no early reduce task gave its slot to map 7: %s", rt_tail(run.err));
    assert_true(rt_json_int(rep, "shuffle.reduces_started_early") >=
                rt_json_int(rep, "shuffle.reduces_canceled"));
    assert_non_null(strstr(run.out, "gave their slot back to a map task"));
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_slowstart_executor_lost_during_maps(void **state)
{
    static const char *const kill_env[] = {"SPATE_FAULT_KILL_EXECUTOR=1:map:6", NULL};
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    /* Executor 1 dies once 6 maps are done, while map 7 sleeps and reduce tasks wait. */
    run = RUN_FAULT_JOB(kill_env, "--job-arg", "maps=8", "--job-arg", "fault=sleep", "--job-arg",
                        "task=7", "--job-arg", "sleep_ms=2000", "--conf",
                        "shuffle.reduce_slowstart=0");
    rep = expect_whole_output(&run);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_slowstart_terasort_merges_in_order(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    run = run_job("terasort",
                  (const char *const[]){"--size", "40m", "--partitions", "6", "--conf",
                                        "shuffle.reduce_slowstart=0", NULL},
                  NULL);
    rt_expect_ok(&run, "terasort");
    /* terasort's finish() runs valsort over the output: order, count and checksum. */
    if (strstr(run.err, "records in order across 6 files") == NULL ||
        strstr(run.err, "equal to the input's") == NULL)
        fail_msg("terasort's check did not pass: %s", rt_tail(run.err));
    expect_clean(&run);
    rep = rt_json_load(json);
    assert_true(rt_json_bool(rep, "succeeded"));
    assert_int_equal(rt_json_int(rep, "stages.reduce.done"), 6);
    json_decref(rep);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_slowstart_reduces_overlap_a_slow_map),
        cmocka_unit_test(test_run_slowstart_failing_map_takes_a_slot_back),
        cmocka_unit_test(test_run_slowstart_executor_lost_during_maps),
        cmocka_unit_test(test_run_slowstart_terasort_merges_in_order),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
