/*
 * `spate run` with map outputs held in storage memory (shuffle.output=memory,
 * the default) and on disk, on a local cluster of 2 executors:
 * - both give the same sorted output and a clean report, and leave nothing
 *   in shuffle.local_dirs;
 * - SPATE_FAULT_EVICT_OUTPUTS=1 makes each executor evict every output it
 *   holds in memory when its first reduce task starts, while reduce tasks
 *   elsewhere read them: the outputs move to disk (the report and the
 *   summary count them), readers through the network transport
 *   (transport.local=false) keep their keys (the transport maps the disk
 *   file in place) so nothing fails and nothing is recomputed, and with
 *   transport.local=true (executors' default: keys of the old file) the job
 *   still ends right;
 * - with shuffle.output=disk there is nothing in memory to move.
 *
 * LABELS: fault
 */
#include "run_test_util.h"
#include "tests/test_dir_util.h"

#include <stdint.h>

#define RECORDS 240000

static char base[256];
static char local[300];
static char local_conf[512]; /* shuffle.local_dirs=BASE/local */
static char scratch[300];
static char input[300];

static int setup(void **state)
{
    rt_run_t run;

    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-storage");
    rt_path(local, sizeof(local), base, "local");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    rt_path(input, sizeof(input), base, "in");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    if (mkdir(local, 0700) != 0)
        return -1;
    /* 4 files: one map each, two on every executor. */
    run = RT_CLI("gensort", "--files", "4", "240000", input);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* Runs terasort with shuffle.output=output (and extra --conf when not NULL) under env. */
static json_t *terasort(const char *output, const char *extra, const char *const *env,
                        rt_run_t *run_p)
{
    char out[300], json[300], output_conf[64];
    const char *args[32] = {"run",      "terasort",  "--executors",   "2",
                            "--input",  input,       "--partitions",  "6",
                            "--json",   NULL,        "--conf",        local_conf,
                            "--conf",   output_conf, "--no-progress", "--no-baseline",
                            "--output", out};
    size_t n = 18;
    json_t *rep;

    rt_path(out, sizeof(out), base, "out");
    rt_path(json, sizeof(json), base, "run.json");
    rt_rmtree(out);
    args[9] = json;
    snprintf(output_conf, sizeof(output_conf), "shuffle.output=%s", output);
    if (extra != NULL) {
        args[n++] = "--conf";
        args[n++] = extra;
    }
    args[n] = NULL;
    *run_p = rt_cli_env(args, env);
    rt_expect_ok(run_p, output);
    rep = rt_json_load(json);
    assert_int_equal(rt_json_int(rep, "reduce_records"), RECORDS);
    rt_expect_sorted(out, RECORDS, scratch);
    /* The executors' directories went with them. */
    if (test_dir_count(local) != 0)
        fail_msg("%s is not empty after the run", local);
    rt_rmtree(out);
    return rep;
}

static void test_run_outputs_in_memory_or_on_disk(void **state)
{
    static const char *const outputs[] = {"memory", "disk"};

    (void)state;
    for (size_t i = 0; i < 2; i++) {
        rt_run_t run;
        json_t *rep = terasort(outputs[i], NULL, NULL, &run);
        rt_expect_report(rep, 2, true);
        assert_int_equal(rt_json_int(rep, "recovery.outputs_moved"), 0);
        assert_null(strstr(run.out, "moved from memory to disk"));
        json_decref(rep);
        rt_free(&run);
    }
}

static const char *const evict_env[] = {"SPATE_FAULT_EVICT_OUTPUTS=1", NULL};

static void test_run_evicted_outputs_keep_their_keys(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    /* Through the network backend (executors read same-host peers by path unless told not to). */
    rep = terasort("memory", "transport.local=false", evict_env, &run);
    assert_non_null(strstr(run.err, "fault injection: executor"));
    /* Each executor held outputs: they moved, and readers never noticed. */
    assert_true(rt_json_int(rep, "recovery.outputs_moved") >= 2);
    rt_expect_report(rep, 2, true);
    assert_int_equal(rt_json_int(rep, "recovery.fetches_after_move"), 0);
    if (strstr(run.out, "map outputs moved from memory to disk") == NULL)
        fail_msg("the summary does not count the moved outputs: %s", rt_tail(run.out));
    json_decref(rep);
    rt_free(&run);
}

static void test_run_evicted_outputs_read_by_path(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    /* Local keys name the in-memory file: a read racing the move is run again. */
    rep = terasort("memory", "transport.local=true", evict_env, &run);
    assert_true(rt_json_int(rep, "recovery.outputs_moved") >= 2);
    rt_expect_report(rep, 2, false);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_disk_outputs_have_nothing_to_move(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    rep = terasort("disk", NULL, evict_env, &run);
    rt_expect_report(rep, 2, true);
    assert_int_equal(rt_json_int(rep, "recovery.outputs_moved"), 0);
    json_decref(rep);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_outputs_in_memory_or_on_disk),
        cmocka_unit_test(test_run_evicted_outputs_keep_their_keys),
        cmocka_unit_test(test_run_evicted_outputs_read_by_path),
        cmocka_unit_test(test_run_disk_outputs_have_nothing_to_move),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
