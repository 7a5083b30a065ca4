/*
 * The timing-sensitive losses, repeated to catch races (issue: a correct job
 * must never fail, nor its output be deleted, because an executor went away):
 * - late loss: terasort on 3 executors, 14 partitions, executor 2 killed
 *   after 5..13 reduce tasks are done (SPATE_FAULT_KILL_EXECUTOR=2:reduce:N).
 *   Its map outputs that every reducer already read are not recomputed, and
 *   the job's counters still count each map once: the run must succeed, its
 *   output pass valsort with gensort's checksum, and the report's map records
 *   equal the input's. 10 runs.
 * - start-up loss: executor 1 killed as soon as it registers, while the
 *   others may still be registering (SPATE_FAULT_KILL_EXECUTOR=1:start:0):
 *   it is replaced and the job succeeds. 10 runs.
 * Each run must leave no process and an empty shuffle directory.
 *
 * LABELS: slow fault
 */
#include "taskfail_util.h"

#define RUNS             10
#define TERASORT_RECORDS 300000

static char base[256];
static char local[300], local_conf[400], in[300], out[300], json[300], scratch[300];
static char want_sum[64];

static int setup(void **state)
{
    rt_run_t run;

    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "lateloss");
    rt_path(local, sizeof(local), base, "local");
    rt_path(in, sizeof(in), base, "in");
    rt_path(out, sizeof(out), base, "out");
    rt_path(json, sizeof(json), base, "report.json");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    if (mkdir(local, 0700) != 0)
        return -1;
    run = RT_CLI("gensort", "--files", "6", "300000", in);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    rt_gensort_sum(TERASORT_RECORDS, scratch, want_sum, sizeof(want_sum));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

static void test_run_terasort_late_loss_keeps_output(void **state)
{
    (void)state;
    for (unsigned i = 0; i < RUNS; i++) {
        char fault[64], sum[64];
        tf_run_t r;
        rt_run_t run;
        json_t *rep;

        snprintf(fault, sizeof(fault), "SPATE_FAULT_KILL_EXECUTOR=2:reduce:%u", 5 + i % 9);
        rt_rmtree(out);
        unlink(json);
        tf_start(&r, NULL,
                 (const char *const[]){"run", "terasort", "--executors", "3", "--cores", "1",
                                       "--input", in, "--partitions", "14", "--output", out,
                                       "--json", json, "--conf", local_conf, "--no-progress",
                                       "--no-baseline", NULL},
                 (const char *const[]){fault, NULL});
        run = tf_finish(&r, RT_TIMEOUT_S, 30);
        if (run.status != 0)
            fail_msg("run %u (%s): exit %d; stderr: %s", i, fault, run.status, rt_tail(run.err));
        rep = rt_json_load(json);
        assert_int_equal(rt_json_int(rep, "map_records"), TERASORT_RECORDS);
        assert_int_equal(rt_json_int(rep, "reduce_records"), TERASORT_RECORDS);
        assert_true(rt_json_int(rep, "recovery.executors_lost") <= 1);
        rt_expect_output(out, 14);
        if (rt_valsort(out, sum, sizeof(sum)) != TERASORT_RECORDS || strcmp(sum, want_sum) != 0)
            fail_msg("run %u (%s): output checksum %s, gensort's %s", i, fault, sum, want_sum);
        if (!tf_dir_empty(local))
            fail_msg("run %u left shuffle files", i);
        json_decref(rep);
        rt_free(&run);
    }
}

static void test_run_startup_loss_repeated(void **state)
{
    const char *plugin = getenv("SPATE_FAULT_PLUGIN");

    (void)state;
    if (plugin == NULL)
        fail_msg("SPATE_FAULT_PLUGIN is not set: run this test through ctest");
    for (unsigned i = 0; i < RUNS; i++) {
        tf_run_t r;
        rt_run_t run;

        rt_rmtree(out);
        tf_start(&r, NULL,
                 (const char *const[]){"run", plugin, "--executors", "3", "--cores", "1",
                                       "--output", out, "--conf", local_conf, "--no-progress",
                                       "--no-baseline", NULL},
                 (const char *const[]){"SPATE_FAULT_KILL_EXECUTOR=1:start:0", NULL});
        run = tf_finish(&r, RT_TIMEOUT_S, 30);
        if (run.status != 0)
            fail_msg("run %u: exit %d; stderr: %s", i, run.status, rt_tail(run.err));
        if (strstr(run.err, "fault job: 4000 records reduced, as written") == NULL)
            fail_msg("run %u: the job's check did not pass: %s", i, rt_tail(run.err));
        rt_expect_output(out, 2);
        if (!tf_dir_empty(local))
            fail_msg("run %u left shuffle files", i);
        rt_free(&run);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_terasort_late_loss_keeps_output),
        cmocka_unit_test(test_run_startup_loss_repeated),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
