/*
 * Tests of `spate topology` as a user runs it: the built command is started
 * with fork/exec (SPATE_CLI), its stdout and stderr go to temporary files,
 * and the JSON report is parsed with jansson and checked against what the
 * synthetic topology must give. Exit codes follow the command's contract:
 * 0 done, 1 the library refused (message names the cause), 2 bad usage.
 *
 * LABELS: unit
 */
#include "../executor/run_test_util.h"

#include <jansson.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define SYNTH_CONF "memory.topology=synthetic:pack:2 node:2 core:4 pu:1"

static json_int_t json_int_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v))
        fail_msg("key '%s' is missing or not an integer", key);
    return json_integer_value(v);
}

static void test_cli_topology_json_synthetic(void **state)
{
    static const char *const args[] = {"--conf", SYNTH_CONF, "topology", "--json", NULL};
    static const char *const cpusets[] = {"0-3", "4-7", "8-11", "12-15"};
    rt_run_t run = rt_cli(args);
    json_error_t error;
    json_t *root, *nodes, *execs;
    size_t i;

    (void)state;
    if (run.status != 0)
        fail_msg("exit %d, stderr: %s", run.status, run.err);
    root = json_loads(run.out, 0, &error);
    if (root == NULL)
        fail_msg("bad JSON at line %d: %s", error.line, error.text);
    assert_int_equal(json_int_at(root, "packages"), 2);
    assert_int_equal(json_int_at(root, "cores"), 16);
    assert_int_equal(json_int_at(root, "pus"), 16);
    assert_true(json_is_false(json_object_get(root, "this_system")));
    assert_true(json_is_object(json_object_get(root, "caches")));

    nodes = json_object_get(root, "numa_nodes");
    assert_true(json_is_array(nodes));
    assert_int_equal(json_array_size(nodes), 4);
    for (i = 0; i < json_array_size(nodes); i++) {
        json_t *node = json_array_get(nodes, i);
        assert_int_equal(json_int_at(node, "index"), i);
        assert_int_equal(json_int_at(node, "os_index"), i);
        assert_int_equal(json_int_at(node, "cores"), 4);
        assert_int_equal(json_int_at(node, "pus"), 4);
        assert_true(json_int_at(node, "memory_bytes") > 0);
        assert_string_equal(json_string_value(json_object_get(node, "cpuset")), cpusets[i]);
    }

    execs = json_object_get(root, "executors");
    assert_true(json_is_array(execs));
    assert_int_equal(json_array_size(execs), 4);
    for (i = 0; i < json_array_size(execs); i++) {
        json_t *e = json_array_get(execs, i);
        assert_int_equal(json_int_at(e, "index"), i);
        assert_int_equal(json_int_at(e, "numa_node"), i);
        assert_int_equal(json_int_at(e, "numa_os_index"), i);
        assert_int_equal(json_int_at(e, "cores"), 4);
        assert_true(json_int_at(e, "memory_bytes") > 0);
        assert_string_equal(json_string_value(json_object_get(e, "cpuset")), cpusets[i]);
        /* A synthetic topology is not this machine: nothing would be bound. */
        assert_true(json_is_false(json_object_get(e, "bind_threads")));
        assert_true(json_is_false(json_object_get(e, "bind_memory")));
    }
    json_decref(root);
    rt_free(&run);
}

static void test_cli_topology_executors_option(void **state)
{
    static const char *const args[] = {
        "--conf",   SYNTH_CONF, "--conf",        "memory.executor=1g",
        "topology", "--json",   "--executors=6", NULL};
    rt_run_t run = rt_cli(args);
    json_t *root, *execs;
    unsigned cores = 0;

    (void)state;
    if (run.status != 0)
        fail_msg("exit %d, stderr: %s", run.status, run.err);
    root = json_loads(run.out, 0, NULL);
    assert_non_null(root);
    execs = json_object_get(root, "executors");
    assert_true(json_array_size(execs) >= 6);
    assert_true(json_array_size(execs) <= 16);
    for (size_t i = 0; i < json_array_size(execs); i++) {
        cores += (unsigned)json_int_at(json_array_get(execs, i), "cores");
        assert_int_equal(json_int_at(json_array_get(execs, i), "memory_bytes"), 1 << 30);
    }
    assert_int_equal(cores, 16);
    json_decref(root);
    rt_free(&run);
}

static void test_cli_topology_text_mentions_numa(void **state)
{
    static const char *const args[] = {"--conf", SYNTH_CONF, "topology", NULL};
    rt_run_t run = rt_cli(args);

    (void)state;
    if (run.status != 0)
        fail_msg("exit %d, stderr: %s", run.status, run.err);
    assert_non_null(strstr(run.out, "NUMA"));
    assert_non_null(strstr(run.out, "4 NUMA nodes"));
    assert_non_null(strstr(run.out, "16 cores"));
    assert_non_null(strstr(run.out, "12-15"));
    assert_non_null(strstr(run.out, "none: topology is not this machine"));
    rt_free(&run);
}

static void test_cli_topology_help_prints_usage(void **state)
{
    static const char *const args[] = {"topology", "--help", NULL};
    rt_run_t run = rt_cli(args);

    (void)state;
    assert_int_equal(run.status, 0);
    assert_non_null(strstr(run.out, "usage: spate"));
    assert_non_null(strstr(run.out, "--executors N"));
    rt_free(&run);
}

static void test_cli_topology_bad_option_exits_2(void **state)
{
    static const char *const bad[][3] = {
        {"topology", "--frobnicate", NULL},
        {"topology", "--executors", NULL},
        {"topology", "--executors=0", NULL},
        {"topology", "--executors=12x", NULL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rt_run_t run = rt_cli(bad[i]);
        if (run.status != 2)
            fail_msg("'%s %s' exited %d", bad[i][0], bad[i][1], run.status);
        assert_non_null(strstr(run.err, "spate topology:"));
        rt_free(&run);
    }
}

static void test_cli_topology_bad_source_exits_1(void **state)
{
    static const char *const args[] = {"--conf", "memory.topology=bogus", "topology", NULL};
    rt_run_t run = rt_cli(args);

    (void)state;
    assert_int_equal(run.status, 1);
    assert_non_null(strstr(run.err, "'bogus'"));
    assert_string_equal(run.out, "");
    rt_free(&run);
}

static void test_cli_topology_this_machine_json(void **state)
{
    static const char *const args[] = {"topology", "--json", NULL};
    rt_run_t run = rt_cli(args);
    json_t *root, *nodes, *execs;
    json_int_t cores = 0;

    (void)state;
    if (run.status != 0)
        fail_msg("exit %d, stderr: %s", run.status, run.err);
    root = json_loads(run.out, 0, NULL);
    assert_non_null(root);
    nodes = json_object_get(root, "numa_nodes");
    execs = json_object_get(root, "executors");
    assert_true(json_array_size(nodes) >= 1);
    assert_true(json_int_at(root, "cores") >= 1);
    assert_true(json_int_at(root, "pus") >= json_int_at(root, "cores"));
    /* At least two executors unless the machine has a single core; every core used once. */
    assert_true(json_array_size(execs) >= (json_int_at(root, "cores") >= 2 ? 2u : 1u));
    for (size_t i = 0; i < json_array_size(execs); i++) {
        json_t *e = json_array_get(execs, i);
        cores += json_int_at(e, "cores");
        assert_true(strlen(json_string_value(json_object_get(e, "cpuset"))) > 0);
    }
    assert_int_equal(cores, json_int_at(root, "cores"));
    assert_true(json_is_boolean(json_object_get(root, "this_system")));
    json_decref(root);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_topology_json_synthetic),
        cmocka_unit_test(test_cli_topology_executors_option),
        cmocka_unit_test(test_cli_topology_text_mentions_numa),
        cmocka_unit_test(test_cli_topology_help_prints_usage),
        cmocka_unit_test(test_cli_topology_bad_option_exits_2),
        cmocka_unit_test(test_cli_topology_bad_source_exits_1),
        cmocka_unit_test(test_cli_topology_this_machine_json),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
