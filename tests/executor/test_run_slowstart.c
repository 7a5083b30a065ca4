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

static char base[256];
static char local[300], local_conf[400], cwd[300], out[300], json[300], once[300];

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "slowstart");
    rt_path(local, sizeof(local), base, "local");
    rt_path(cwd, sizeof(cwd), base, "cwd");
    rt_path(out, sizeof(out), base, "out");
    rt_path(json, sizeof(json), base, "report.json");
    rt_path(once, sizeof(once), base, "once");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    if (getenv("SPATE_FAULT_PLUGIN") == NULL)
        fail_msg("SPATE_FAULT_PLUGIN is not set: run this test through ctest");
    return mkdir(local, 0700) || mkdir(cwd, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* Before each run: no output, no report, no marker. */
static void fresh(void)
{
    rt_rmtree(out);
    unlink(json);
    unlink(once);
    rt_rmtree(cwd);
    rt_rmtree(local);
    assert_int_equal(mkdir(cwd, 0700), 0);
    assert_int_equal(mkdir(local, 0700), 0);
}

/* Runs job (a plugin path or a built-in name) with extra arguments and env, waiting for it. */
static rt_run_t run_job(const char *job, const char *const *extra, const char *const *env)
{
    const char *args[64] = {"run",           job,
                            "--executors",   "2",
                            "--cores",       "1",
                            "--output",      out,
                            "--json",        json,
                            "--conf",        local_conf,
                            "--no-progress", "--no-baseline"};
    size_t n = 14;
    tf_run_t r;

    for (size_t i = 0; extra[i] != NULL; i++) {
        assert_true(n < sizeof(args) / sizeof(args[0]) - 1);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    tf_start(&r, cwd, args, env);
    return tf_finish(&r, RT_TIMEOUT_S, 30);
}

#define PLUGIN                  getenv("SPATE_FAULT_PLUGIN")
#define RUN_FAULT_JOB(env, ...) run_job(PLUGIN, (const char *const[]){__VA_ARGS__, NULL}, env)

static void expect_clean(const rt_run_t *run)
{
    if (!tf_dir_empty(cwd))
        fail_msg("the run left files in its working directory; stderr: %s", rt_tail(run->err));
    if (!tf_dir_empty(local))
        fail_msg("the run left shuffle files in %s; stderr: %s", local, rt_tail(run->err));
}

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
