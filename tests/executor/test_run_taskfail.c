/*
 * Task failure semantics through the real `spate run` on a local cluster of
 * two executors, with the job plugin that misbehaves on request
 * (plugins/fault_plugin.c, $SPATE_FAULT_PLUGIN):
 * - a map task that crashes its executor (SIGSEGV, abort(), exit(3)) is that
 *   task's failure: the executor is relaunched, the task retried, and after
 *   task.max_failures the job fails naming the task, its attempts and how its
 *   executor died; once only, the job recovers;
 * - a status outside sp_status_t is a task error, not a malformed message;
 * - the job's own message ends up in the final error and the JSON report;
 * - SP_ERR_BAD_INPUT fails the job at once with exit 2;
 * - task.timeout fails a task that never returns and replaces its executor;
 *   without it, killing the driver still ends the executors, stuck worker
 *   and all;
 * - a driver stopped longer than executor.heartbeat_timeout loses nobody;
 * - heartbeat_interval must be below half of heartbeat_timeout;
 * - an executor lost while the others register is replaced.
 * Every run's working directory must stay empty, its output directory hold a
 * whole output or no output, its shuffle directory be empty and none of its
 * processes be left.
 *
 * LABELS: fault
 */
#include "taskfail_util.h"

static tf_dirs_t dirs;
static char *const out = dirs.out, *const json = dirs.json, *const once = dirs.once;
static char *const local = dirs.local, *const local_conf = dirs.local_conf, *const cwd = dirs.cwd;

static int setup(void **state)
{
    (void)state;
    return tf_dirs_setup(&dirs, "taskfail");
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(dirs.base);
    return 0;
}

static void fresh(void) { tf_dirs_fresh(&dirs); }

#define PLUGIN getenv("SPATE_FAULT_PLUGIN")

/* Runs the fault job with extra arguments (NULL-terminated) and env, waiting for it. */
static rt_run_t run_fault_job(const char *const *extra, const char *const *env)
{
    return tf_run_job(&dirs, PLUGIN, extra, env);
}

#define RUN_FAULT_JOB(...) run_fault_job((const char *const[]){__VA_ARGS__, NULL}, NULL)

static void expect_clean(const rt_run_t *run) { tf_expect_clean(&dirs, run); }

/* A failed run: exit code, phrases in its final error, no output, a report that says so. */
static json_t *expect_failed(const rt_run_t *run, int code, const char *const *phrases)
{
    json_t *rep;
    const char *last = strstr(run->err, "spate run: ");

    rt_expect_fail(run, code, NULL, "the faulty job");
    if (last == NULL)
        fail_msg("no final error line; stderr: %s", rt_tail(run->err));
    for (size_t i = 0; phrases[i] != NULL; i++)
        if (strstr(last, phrases[i]) == NULL)
            fail_msg("the final error does not say \"%s\": %s", phrases[i], rt_tail(last));
    rt_expect_no_output(out);
    expect_clean(run);
    rep = rt_json_load(json);
    assert_false(rt_json_bool(rep, "succeeded"));
    {
        json_t *err = json_object_get(rep, "error");
        if (!json_is_string(err) || strstr(json_string_value(err), phrases[0]) == NULL)
            fail_msg("the report's error does not say \"%s\"", phrases[0]);
    }
    return rep;
}

static void expect_whole_output(const rt_run_t *run)
{
    rt_expect_ok(run, "the job");
    if (strstr(run->err, "fault job: 4000 records reduced, as written") == NULL)
        fail_msg("the job's check did not pass: %s", rt_tail(run->err));
    rt_expect_output(out, 2);
    expect_clean(run);
}

static void test_run_task_crash_fails_job_naming_task(void **state)
{
    static const char *const faults[][2] = {
        {"fault=segv", "died of SIGSEGV while running map task 1"},
        {"fault=abort", "died of SIGABRT while running map task 1"},
        {"fault=exit", "exited with status 3 while running map task 1"},
    };

    (void)state;
    for (size_t f = 0; f < sizeof(faults) / sizeof(faults[0]); f++) {
        rt_run_t run;
        json_t *rep;

        fresh();
        run = RUN_FAULT_JOB("--job-arg", faults[f][0]);
        rep = expect_failed(&run, 1,
                            (const char *const[]){"map task 1 failed 4 times (task.max_failures)",
                                                  "most recent failure", faults[f][1], NULL});
        /* Every attempt cost an executor, and each was relaunched. */
        assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 4);
        assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 4);
        if (strstr(run.err, "every executor was lost") != NULL)
            fail_msg("the cluster was drained: %s", rt_tail(run.err));
        json_decref(rep);
        rt_free(&run);
    }
}

static void test_run_task_crash_once_recovers(void **state)
{
    rt_run_t run;
    json_t *rep;
    char arg[400];

    (void)state;
    fresh();
    snprintf(arg, sizeof(arg), "once=%s", once);
    run = RUN_FAULT_JOB("--job-arg", "fault=segv", "--job-arg", arg);
    expect_whole_output(&run);
    assert_non_null(strstr(run.err, "died of SIGSEGV while running map task 1"));
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 1);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_task_status_outside_enum_is_task_error(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    run = RUN_FAULT_JOB("--job-arg", "fault=positive");
    rep = expect_failed(&run, 1,
                        (const char *const[]){"map task 1 failed 4 times",
                                              "the job returned 7, which is not an sp_status_t",
                                              NULL});
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
    if (strstr(run.err, "malformed") != NULL)
        fail_msg("a job's status was taken for a malformed message: %s", rt_tail(run.err));
    json_decref(rep);
    rt_free(&run);
}

static void test_run_task_error_names_job_message(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    run = RUN_FAULT_JOB("--job-arg", "fault=error", "--job-arg", "stage=reduce", "--job-arg",
                        "task=0");
    rep = expect_failed(&run, 1,
                        (const char *const[]){"reduce task 0 failed 4 times", "most recent failure",
                                              "bad CSV at line 3", NULL});
    assert_non_null(strstr(json_string_value(json_object_get(rep, "status")), "SP_ERR_IO"));
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_task_bad_input_fails_at_once(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    run = RUN_FAULT_JOB("--job-arg", "fault=badinput");
    rep = expect_failed(
        &run, 2,
        (const char *const[]){"map task 1 failed on bad input", "bad record at line 3", NULL});
    /* Not retried: one failed attempt. */
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 1);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_task_timeout_replaces_executor(void **state)
{
    rt_run_t run;
    json_t *rep;
    char arg[400];

    (void)state;
    /* Once: the retry on the replacement succeeds. */
    fresh();
    snprintf(arg, sizeof(arg), "once=%s", once);
    run = RUN_FAULT_JOB("--job-arg", "fault=hang", "--job-arg", arg, "--conf", "task.timeout=2s");
    expect_whole_output(&run);
    assert_non_null(strstr(run.err, "map task 1 ran past task.timeout"));
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    json_decref(rep);
    rt_free(&run);
    /* Always: the job fails naming the timeout. */
    fresh();
    run = RUN_FAULT_JOB("--job-arg", "fault=hang", "--conf", "task.timeout=1s", "--conf",
                        "task.max_failures=2");
    rep = expect_failed(
        &run, 1, (const char *const[]){"map task 1 failed 2 times", "ran past task.timeout", NULL});
    json_decref(rep);
    rt_free(&run);
}

static void test_run_driver_killed_ends_stuck_executors(void **state)
{
    char arg[400];
    tf_run_t r;
    rt_run_t run;

    (void)state;
    fresh();
    snprintf(arg, sizeof(arg), "once=%s", once);
    tf_start(&r, cwd,
             (const char *const[]){"run", PLUGIN, "--executors", "2", "--cores", "1", "--output",
                                   out, "--conf", local_conf, "--conf",
                                   "executor.heartbeat_timeout=4s", "--no-progress", "--job-arg",
                                   "fault=hang", "--job-arg", arg, NULL},
             NULL);
    tf_wait_file(once, 60); /* map task 1 is stuck now */
    kill(r.bg.pid, SIGKILL);
    /* The executors see their driver gone and exit without the stuck worker. */
    run = tf_finish(&r, RT_TIMEOUT_S, 60);
    assert_int_equal(run.signal, SIGKILL);
    assert_non_null(strstr(run.err, "stuck in map task 1"));
    if (!tf_dir_empty(local))
        fail_msg("the executors left shuffle files; stderr: %s", rt_tail(run.err));
    rt_free(&run);
}

static void test_run_driver_stall_loses_nobody(void **state)
{
    char arg[400];
    tf_run_t r;
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    snprintf(arg, sizeof(arg), "once=%s", once);
    tf_start(&r, cwd,
             (const char *const[]){"run",
                                   PLUGIN,
                                   "--executors",
                                   "2",
                                   "--cores",
                                   "1",
                                   "--output",
                                   out,
                                   "--json",
                                   json,
                                   "--conf",
                                   local_conf,
                                   "--conf",
                                   "executor.heartbeat_timeout=3s",
                                   "--conf",
                                   "executor.heartbeat_interval=500ms",
                                   "--no-progress",
                                   "--job-arg",
                                   "fault=sleep",
                                   "--job-arg",
                                   "sleep_ms=8000",
                                   "--job-arg",
                                   arg,
                                   NULL},
             NULL);
    tf_wait_file(once, 60); /* map task 1 sleeps 8 s from now */
    kill(r.bg.pid, SIGSTOP);
    sleep(5);
    kill(r.bg.pid, SIGCONT);
    run = tf_finish(&r, RT_TIMEOUT_S, 30);
    expect_whole_output(&run);
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_heartbeat_interval_below_half_timeout(void **state)
{
    rt_run_t run;

    (void)state;
    fresh();
    run = RUN_FAULT_JOB("--conf", "executor.heartbeat_interval=2s", "--conf",
                        "executor.heartbeat_timeout=3s");
    rt_expect_fail(&run, 2, "executor.heartbeat_interval (2 s) must be below half of", "interval");
    rt_expect_no_output(out);
    expect_clean(&run);
    rt_free(&run);
}

static void test_run_startup_loss_is_replaced(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    fresh();
    run = run_fault_job((const char *const[]){NULL},
                        (const char *const[]){"SPATE_FAULT_KILL_EXECUTOR=0:start:0", NULL});
    expect_whole_output(&run);
    assert_non_null(strstr(run.err, "fault injection: killing executor 0"));
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    json_decref(rep);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_task_crash_fails_job_naming_task),
        cmocka_unit_test(test_run_task_crash_once_recovers),
        cmocka_unit_test(test_run_task_status_outside_enum_is_task_error),
        cmocka_unit_test(test_run_task_error_names_job_message),
        cmocka_unit_test(test_run_task_bad_input_fails_at_once),
        cmocka_unit_test(test_run_task_timeout_replaces_executor),
        cmocka_unit_test(test_run_driver_killed_ends_stuck_executors),
        cmocka_unit_test(test_run_driver_stall_loses_nobody),
        cmocka_unit_test(test_run_heartbeat_interval_below_half_timeout),
        cmocka_unit_test(test_run_startup_loss_is_replaced),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
