/*
 * `spate run` refusing what it cannot run, as a user meets it (SPATE_CLI,
 * through tests/executor/run_test_util.h): each case checks the exit code
 * (2: bad command line, parameters or input, nothing ran; 1: the job failed),
 * a phrase of the one message on stderr that says what is wrong and where,
 * and that nothing is left in the output directory that looks complete:
 * no _SUCCESS, no part-r file, no _temporary.
 *
 * Cases: an unknown job (the message lists the built-ins), no job, unknown
 * and incomplete options, bad --executors and --size values, an unknown
 * --conf key and a bad value, a missing --conf-file and a device given as
 * one (/dev/zero, which once made the reader spin), a missing --input
 * directory, unusable output directories (a regular file, under a regular
 * file, one holding an earlier job's output, one that is not writable), a
 * job plugin built for another descriptor ABI version (the test plugins of
 * tests/executor/plugins), the mpi transport outside mpirun, and jobs that
 * fail: terasort input that is not whole records (refused before running),
 * and a wordcount with a word over its 16 MiB limit (bad input found after
 * starting: the message names the file, the word's offset and the limit).
 *
 * Bad input that once crashed or hung (issue 13, case 10), each refused with
 * a message naming the value and, with the fault plugin
 * (tests/executor/plugins/fault_plugin.c, SPATE_FAULT_PLUGIN): a plan of
 * 0xffffffff (or 2^24 + 1) maps or partitions, and no maps (exit 2 before
 * any executor starts, no output directory made); a map task that emits a
 * key of 2^33 bytes (exit 2, the length and the limit named, nothing left
 * that looks like output).
 *
 * LABELS: unit
 */
#include "run_test_util.h"

static char base[256];

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-badinput");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

static void under_base(char *path, size_t cap, const char *name)
{
    rt_path(path, cap, base, name);
    rt_rmtree(path);
}

static void test_run_unknown_job_lists_builtins(void **state)
{
    rt_run_t run = RT_CLI("run", "nosuchjob", "--no-progress");

    (void)state;
    rt_expect_fail(&run, 2, "unknown job 'nosuchjob'", "unknown job");
    assert_non_null(strstr(run.err, "wordcount"));
    assert_non_null(strstr(run.err, "shuffle"));
    if (rt_has_job("terasort"))
        assert_non_null(strstr(run.err, "terasort"));
    /* Nothing ran: no summary. */
    assert_string_equal(run.out, "");
    rt_free(&run);
}

static void test_run_bad_command_lines(void **state)
{
    static const struct {
        const char *args[6];
        const char *phrase;
    } cases[] = {
        {{"run", NULL}, "which job?"},
        {{"run", "shuffle", "--frobnicate", NULL}, "unknown option '--frobnicate'"},
        {{"run", "shuffle", "--executors", NULL}, "--executors needs a value"},
        {{"run", "shuffle", "--executors", "0", NULL}, "--executors '0'"},
        {{"run", "shuffle", "--executors", "two", NULL}, "--executors 'two'"},
        {{"run", "shuffle", "--partitions", "-3", NULL}, "--partitions '-3'"},
        {{"run", "shuffle", "wordcount", NULL}, "unexpected argument 'wordcount'"},
        {{"run", "shuffle", "--job-arg", "novalue", NULL}, "--job-arg 'novalue'"},
        {{"run", "shuffle", "--size", "12q", NULL}, "--size '12q' is not a size"},
        {{"run", "shuffle", "--size", "0", NULL}, "--size '0' is not a size"},
        {{"run", "shuffle", "--size", "-1", NULL}, "--size '-1' is not a size"},
        {{"run", "shuffle", "--size=", NULL}, "--size '' is not a size"},
        {{"run", "shuffle", "--conf", "no.such.key=1", NULL}, "unknown conf key 'no.such.key'"},
        {{"run", "shuffle", "--conf", "task.max_failures=lots", NULL}, "'lots'"},
        {{"run", "shuffle", "--memory", "lots", NULL}, "--memory"},
        {{"run", "shuffle", "--conf-file", "/nonexistent/spate.conf", NULL},
         "/nonexistent/spate.conf"},
        {{"run", "shuffle", "--conf-file", "/dev/zero", NULL},
         "conf file '/dev/zero' is a character device"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rt_run_t run = rt_cli(cases[i].args);
        char what[128];
        snprintf(what, sizeof(what), "case %zu (%s)", i, cases[i].phrase);
        rt_expect_fail(&run, 2, cases[i].phrase, what);
        if (strstr(run.err, "spate run:") == NULL)
            fail_msg("%s: the message does not say which command: %s", what, run.err);
        assert_string_equal(run.out, "");
        rt_free(&run);
    }
}

static void test_run_global_conf_unknown_key(void **state)
{
    rt_run_t run = RT_CLI("--conf", "no.such.key=1", "run", "shuffle");

    (void)state;
    if (run.status == 0)
        fail_msg("an unknown global --conf key was accepted");
    assert_non_null(strstr(run.err, "no.such.key"));
    rt_free(&run);
}

static void test_run_missing_input_dir(void **state)
{
    char in[300], out[300];
    rt_run_t run;

    (void)state;
    under_base(in, sizeof(in), "no-such-input");
    under_base(out, sizeof(out), "out-missing-input");
    run = RT_CLI("run", "wordcount", "--executors", "2", "--input", in, "--output", out,
                 "--no-baseline");
    rt_expect_fail(&run, 2, in, "wordcount with a missing --input");
    assert_non_null(strstr(run.err, "No such file or directory"));
    rt_expect_no_output(out);
    rt_free(&run);
}

/* Runs a tiny wordcount job into out and expects it refused with phrase in the message. */
static void expect_output_refused(const char *out, const char *phrase, const char *what)
{
    char in[300], path[400];
    rt_run_t run;

    under_base(in, sizeof(in), "tiny-input");
    assert_int_equal(mkdir(in, 0700), 0);
    rt_path(path, sizeof(path), in, "words");
    rt_write_file(path, "one two two\n", 12);
    run = RT_CLI("run", "wordcount", "--executors", "2", "--input", in, "--output", out,
                 "--no-baseline");
    if (run.status == 0)
        fail_msg("%s: accepted; stderr: %s", what, rt_tail(run.err));
    if (strstr(run.err, phrase) == NULL)
        fail_msg("%s: stderr does not say \"%s\": %s", what, phrase, rt_tail(run.err));
    rt_free(&run);
    rt_rmtree(in);
}

static void test_run_output_is_a_file(void **state)
{
    char out[300], below[400], *text;

    (void)state;
    under_base(out, sizeof(out), "out-file");
    rt_write_file(out, "not a directory\n", 16);
    expect_output_refused(out, out, "--output naming a regular file");
    /* The file is as it was. */
    text = rt_read_file(out, NULL);
    assert_string_equal(text, "not a directory\n");
    free(text);

    /* A directory below a regular file cannot be created. */
    rt_path(below, sizeof(below), out, "sub");
    expect_output_refused(below, out, "--output below a regular file");
    text = rt_read_file(out, NULL);
    assert_string_equal(text, "not a directory\n");
    free(text);
    unlink(out);
}

static void test_run_output_holds_earlier_output(void **state)
{
    static const char *const earlier[] = {"_SUCCESS", "part-r-00000"};
    char out[300], path[400];

    (void)state;
    for (size_t i = 0; i < sizeof(earlier) / sizeof(earlier[0]); i++) {
        char *text;
        under_base(out, sizeof(out), "out-earlier");
        assert_int_equal(mkdir(out, 0700), 0);
        rt_path(path, sizeof(path), out, earlier[i]);
        rt_write_file(path, "earlier\n", 8);
        expect_output_refused(out, "already holds", "--output holding an earlier job's output");
        /* The earlier output is untouched, and nothing was added to it. */
        text = rt_read_file(path, NULL);
        assert_non_null(text);
        assert_string_equal(text, "earlier\n");
        free(text);
        assert_int_equal(rt_exists(out, i == 0 ? "part-r-00000" : "_SUCCESS"), false);
        assert_int_equal(rt_exists(out, "_temporary"), false);
        rt_rmtree(out);
    }
}

static void test_run_output_not_writable(void **state)
{
    char out[300];

    (void)state;
    if (geteuid() == 0) {
        /* Permissions do not stop root; the cases above cover unusable directories. */
        print_message("running as root: an unwritable directory cannot be made; skipped\n");
        skip();
    }
    under_base(out, sizeof(out), "out-readonly");
    assert_int_equal(mkdir(out, 0500), 0);
    expect_output_refused(out, "not writable", "--output that is not writable");
    rt_expect_no_output(out);
    chmod(out, 0700);
    rt_rmtree(out);
}

static void test_run_plugin_wrong_abi_version(void **state)
{
    const char *bin = getenv("SPATE_BINARY_DIR");
    char plugin[4096];
    rt_run_t run;

    (void)state;
    assert_non_null(bin);
    snprintf(plugin, sizeof(plugin), "%s/tests/executor/plugins/libtest_plugin_abi.so", bin);
    if (access(plugin, R_OK) != 0) {
        print_message("%s is not built (target test_plugin_abi); skipped\n", plugin);
        skip();
    }
    run = RT_CLI("run", plugin, "--executors", "2");
    rt_expect_fail(&run, 2, "ABI version", "a plugin of another ABI version");
    assert_non_null(strstr(run.err, plugin));
    rt_free(&run);

    /* A plugin path that names nothing. */
    run = RT_CLI("run", "./no-such-plugin.so");
    rt_expect_fail(&run, 2, "no-such-plugin.so", "a missing plugin");
    rt_free(&run);
}

static void test_run_mpi_transport_needs_mpi(void **state)
{
    rt_run_t run = RT_CLI("run", "shuffle", "--executors", "2", "--transport", "mpi", "--job-arg",
                          "records=1000", "--no-baseline");

    (void)state;
    if (run.status == 0)
        fail_msg("--transport mpi ran outside mpirun");
    if (strstr(run.err, "needs MPI") == NULL)
        fail_msg("--transport mpi outside mpirun: no message says MPI is needed: %s",
                 rt_tail(run.err));
    rt_free(&run);
}

static void test_run_terasort_input_not_whole_records(void **state)
{
    char in[300], out[300], path[400];
    rt_run_t run;

    (void)state;
    if (!rt_has_job("terasort")) {
        print_message("terasort is not a built-in job of this spate yet: skipped\n");
        skip();
    }
    under_base(in, sizeof(in), "terasort-in");
    under_base(out, sizeof(out), "terasort-out");
    run = RT_CLI("gensort", "--files", "3", "3000", in);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    rt_path(path, sizeof(path), in, "part-00001");
    assert_int_equal(truncate(path, 1000 * 100 - 37), 0);
    run = RT_CLI("run", "terasort", "--executors", "2", "--input", in, "--output", out,
                 "--no-baseline");
    rt_expect_fail(&run, 2, "part-00001", "terasort input that is not whole records");
    rt_expect_no_output(out);
    rt_free(&run);
}

static const char *fault_plugin(void)
{
    const char *plugin = getenv("SPATE_FAULT_PLUGIN");

    if (plugin == NULL || access(plugin, R_OK) != 0)
        fail_msg("SPATE_FAULT_PLUGIN (%s) is not a readable plugin: run this test through ctest",
                 plugin != NULL ? plugin : "unset");
    return plugin;
}

/* A plan whose counts are out of range: refused before anything is sized from it. */
static void test_run_plan_out_of_range(void **state)
{
    static const struct {
        const char *arg;
        const char *phrase;
    } cases[] = {
        {"maps=4294967295", "planned 4294967295 map tasks"},
        {"partitions=4294967295", "planned 4294967295 partitions"},
        {"partitions=16777217", "planned 16777217 partitions"},
        {"maps=16777217", "planned 16777217 map tasks"},
        {"maps=0", "planned 0 map tasks"},
        {"partitions=0", "planned 0 partitions"},
    };
    const char *plugin = fault_plugin();
    char out[300];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char what[128];
        rt_run_t run;

        under_base(out, sizeof(out), "out-plan");
        snprintf(what, sizeof(what), "a fault plan with %s", cases[i].arg);
        run = RT_CLI("run", plugin, "--executors", "2", "--job-arg", cases[i].arg, "--output", out,
                     "--no-progress", "--no-baseline");
        if (run.signal != 0)
            fail_msg("%s: killed by signal %d; stderr: %s", what, run.signal, rt_tail(run.err));
        rt_expect_fail(&run, 2, cases[i].phrase, what);
        /* The message names the job and the limit. */
        if (strstr(run.err, "job fault") == NULL || strstr(run.err, "16777216") == NULL)
            fail_msg("%s: the message names neither the job nor the limit: %s", what,
                     rt_tail(run.err));
        /* Refused while planning: no summary, no output directory. */
        assert_string_equal(run.out, "");
        if (access(out, F_OK) == 0)
            fail_msg("%s: %s was made although the plan was refused", what, out);
        rt_free(&run);
    }
}

/* A key longer than a record can hold is refused before the partitioner reads it. */
static void test_run_emit_huge_key(void **state)
{
    const char *plugin = fault_plugin();
    char out[300];
    rt_run_t run;

    (void)state;
    under_base(out, sizeof(out), "out-hugekey");
    run = RT_CLI("run", plugin, "--executors", "2", "--job-arg", "fault=hugekey", "--output", out,
                 "--no-progress", "--no-baseline");
    if (run.signal != 0)
        fail_msg("hugekey: killed by signal %d; stderr: %s", run.signal, rt_tail(run.err));
    /* The length and the limit, in the job's own task: no executor died. */
    rt_expect_fail(&run, 2, "emitted a key of 8589934592 bytes", "a map emitting a 2^33-byte key");
    assert_non_null(strstr(run.err, "4294967295"));
    /* Bad input is not retried: the first attempt fails the job. */
    assert_non_null(strstr(run.err, "failed on bad input, which no retry can fix"));
    rt_expect_no_output(out);
    rt_free(&run);
    rt_rmtree(out);
}

/*
 * A wordcount word of 17 MiB, over the job's 16 MiB limit: bad input, named
 * with its file, the word's offset and the limit. A deterministic input
 * error: exit 2 at the first failed attempt, no retry.
 */
static void test_run_failing_job_leaves_no_success(void **state)
{
    char in[300], out[300], path[400], json[300];
    size_t len = 17u << 20;
    char *text = malloc(len);
    rt_run_t run;
    json_t *rep;

    (void)state;
    assert_non_null(text);
    under_base(in, sizeof(in), "long-word");
    under_base(out, sizeof(out), "out-long-word");
    under_base(json, sizeof(json), "long-word.json");
    assert_int_equal(mkdir(in, 0700), 0);
    /* Good words, then a file of two words: "ab" and one of 17 MiB at offset 3. */
    rt_path(path, sizeof(path), in, "a-good");
    rt_write_file(path, "fine words here\n", 16);
    memset(text, 'w', len);
    memcpy(text, "ab ", 3);
    rt_path(path, sizeof(path), in, "b-long");
    rt_write_file(path, text, len);
    free(text);
    run = RT_CLI("run", "wordcount", "--executors", "2", "--input", in, "--output", out, "--json",
                 json, "--no-baseline");
    if (run.status != 2 || run.signal != 0)
        fail_msg("wordcount with a word over 16 MiB: exit %d, signal %d, want 2; stderr: %s",
                 run.status, run.signal, rt_tail(run.err));
    if (strstr(run.err, "failed on bad input, which no retry can fix") == NULL)
        fail_msg("wordcount with a word over 16 MiB: not failed at once as bad input: %s",
                 rt_tail(run.err));
    if (strstr(run.err, "b-long: the word at offset 3 is longer than 16777216 bytes") == NULL)
        fail_msg("wordcount with a word over 16 MiB: the message does not name the file, the "
                 "offset and the limit: %s",
                 rt_tail(run.err));
    rt_expect_no_output(out);
    rep = rt_json_load(json);
    assert_false(rt_json_bool(rep, "succeeded"));
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 1); /* one attempt, not four */
    json_decref(rep);
    rt_free(&run);
    rt_rmtree(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_unknown_job_lists_builtins),
        cmocka_unit_test(test_run_bad_command_lines),
        cmocka_unit_test(test_run_global_conf_unknown_key),
        cmocka_unit_test(test_run_missing_input_dir),
        cmocka_unit_test(test_run_output_is_a_file),
        cmocka_unit_test(test_run_output_holds_earlier_output),
        cmocka_unit_test(test_run_output_not_writable),
        cmocka_unit_test(test_run_plugin_wrong_abi_version),
        cmocka_unit_test(test_run_mpi_transport_needs_mpi),
        cmocka_unit_test(test_run_terasort_input_not_whole_records),
        cmocka_unit_test(test_run_plan_out_of_range),
        cmocka_unit_test(test_run_emit_huge_key),
        cmocka_unit_test(test_run_failing_job_leaves_no_success),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
