/*
 * Graph jobs through the real `spate run`, on executors: the graph test
 * plugin (plugins/graph_plugin.c: three shuffles, one of them range
 * partitioned on sampled bounds, a persisted dataset read by three stages,
 * three actions) on two local executors:
 * - its saved lines equal a reference computed here, in key order across
 *   the parts; its finish check (count from the cache, collected sums)
 *   passes; the report names the graph's stages and the cached partitions;
 * - with the persisted dataset on disk (level=disk): the same output;
 * - with executor 1 killed (SIGKILL) during the second of the three map
 *   stages: the run recomputes what it lost (the report says an executor
 *   was lost and map outputs recomputed) and the output is the same;
 * - under mpirun -n 2 (skipped without mpiexec): the same output.
 * Every run's working and shuffle directories must be left empty and none
 * of its processes alive.
 *
 * LABELS: fault
 */
#include "taskfail_util.h"

static tf_dirs_t dirs;

#define PARTS   6u
#define RECORDS 500u
#define KEYS    40u

static int setup(void **state)
{
    (void)state;
    if (getenv("SPATE_GRAPH_PLUGIN") == NULL)
        fail_msg("SPATE_GRAPH_PLUGIN is not set: run this test through ctest");
    return tf_dirs_setup(&dirs, "graph");
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(dirs.base);
    return 0;
}

/* The plugin's generator (graph_plugin.c), for the reference. */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The lines the job must save ("kNNN<TAB>sum*3+value", one per record), sorted. */
static char **reference(size_t *n_p)
{
    uint64_t sums[KEYS] = {0};
    char **lines = calloc(PARTS * RECORDS, sizeof(*lines));

    assert_non_null(lines);
    for (uint32_t p = 0; p < PARTS; p++)
        for (uint32_t i = 0; i < RECORDS; i++) {
            uint64_t r = mix(1 ^ ((uint64_t)p << 32 | i));
            sums[r % KEYS] += (r >> 16) % 1000000;
        }
    for (uint32_t p = 0, n = 0; p < PARTS; p++)
        for (uint32_t i = 0; i < RECORDS; i++, n++) {
            uint64_t r = mix(1 ^ ((uint64_t)p << 32 | i));
            assert_true(asprintf(&lines[n], "k%03u\t%llu", (unsigned)(r % KEYS),
                                 (unsigned long long)(sums[r % KEYS] * 3 +
                                                      (r >> 16) % 1000000)) > 0);
        }
    qsort(lines, PARTS * RECORDS, sizeof(*lines), line_cmp);
    *n_p = PARTS * RECORDS;
    return lines;
}

/* The saved parts: keys in order across them, and as a multiset the reference's lines. */
static void expect_output(const char *out)
{
    size_t want_n, got_n = 0;
    char **want = reference(&want_n), **got = calloc(want_n + 1, sizeof(*got));
    char prev[16] = "";

    assert_non_null(got);
    rt_expect_output(out, 2);
    for (int p = 0; p < 2; p++) {
        char path[400], *text, *save = NULL;
        snprintf(path, sizeof(path), "%s/part-r-%05d", out, p);
        text = rt_read_file(path, NULL);
        for (char *line = strtok_r(text, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            char key[16];
            if (got_n == want_n)
                fail_msg("more lines saved than the %zu records", want_n);
            snprintf(key, sizeof(key), "%.*s", (int)strcspn(line, "\t"), line);
            if (strcmp(key, prev) < 0)
                fail_msg("key %s after %s: the parts are not in key order", key, prev);
            snprintf(prev, sizeof(prev), "%s", key);
            got[got_n++] = strdup(line);
        }
        free(text);
    }
    assert_int_equal(got_n, want_n);
    qsort(got, got_n, sizeof(*got), line_cmp);
    for (size_t i = 0; i < want_n; i++) {
        if (strcmp(got[i], want[i]) != 0)
            fail_msg("line %zu of the sorted output is '%s', the reference's '%s'", i, got[i],
                     want[i]);
        free(got[i]);
        free(want[i]);
    }
    free(got);
    free(want);
}

static json_t *expect_ok(const rt_run_t *run)
{
    json_t *rep;

    rt_expect_ok(run, "the graph job");
    if (strstr(run->err, "graphtest: 3000 records, 40 keys") == NULL ||
        strstr(run->err, "as generated") == NULL)
        fail_msg("the job's finish check did not pass: %s", rt_tail(run->err));
    expect_output(dirs.out);
    tf_expect_clean(&dirs, run);
    rep = rt_json_load(dirs.json);
    assert_true(rt_json_bool(rep, "succeeded"));
    assert_int_equal(rt_json_int(rep, "graph.stages"), 6);
    return rep;
}

static rt_run_t run_graph(const char *const *extra, const char *const *env)
{
    return tf_run_job(&dirs, getenv("SPATE_GRAPH_PLUGIN"), extra, env);
}

static void test_run_graph_on_executors(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    tf_dirs_fresh(&dirs);
    run = run_graph((const char *const[]){NULL}, NULL);
    rep = expect_ok(&run);
    /* Every partition of the persisted dataset was cached once. */
    assert_true(rt_json_int(rep, "graph.blocks_cached") >= PARTS);
    assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_graph_cached_on_disk(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    tf_dirs_fresh(&dirs);
    run = run_graph((const char *const[]){"--job-arg", "level=disk", NULL}, NULL);
    rep = expect_ok(&run);
    assert_true(rt_json_int(rep, "graph.blocks_cached") >= PARTS);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_graph_executor_killed(void **state)
{
    rt_run_t run;
    json_t *rep;

    (void)state;
    tf_dirs_fresh(&dirs);
    /* Stage 0 has 6 map tasks, stage 1 (the join's) 10: the 8th done is inside stage 1. */
    run = run_graph((const char *const[]){"--job-arg", "slow_ms=150", NULL},
                    (const char *const[]){"SPATE_FAULT_KILL_EXECUTOR=1:map:8", NULL});
    if (strstr(run.err, "fault injection: killing executor 1") == NULL)
        fail_msg("the executor was not killed: %s", rt_tail(run.err));
    rep = expect_ok(&run);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    assert_true(rt_json_int(rep, "recovery.maps_recomputed") > 0);
    json_decref(rep);
    rt_free(&run);
}

static void test_run_graph_under_mpirun(void **state)
{
    const char *cli = getenv("SPATE_CLI");
    rt_run_t run = rt_spawn_env((const char *const[]){"mpiexec", "--version", NULL}, NULL, 30);
    json_t *rep;

    (void)state;
    if (run.status != 0) {
        rt_free(&run);
        print_message("no working mpiexec in PATH: skipped\n");
        skip();
    }
    rt_free(&run);
    tf_dirs_fresh(&dirs);
    setenv("OMPI_MCA_btl", "self,vader,tcp", 1);
    run = rt_spawn_env(
        (const char *const[]){"mpiexec", "-n", "2", "--oversubscribe", cli, "run",
                              getenv("SPATE_GRAPH_PLUGIN"), "--output", dirs.out, "--json",
                              dirs.json, "--conf", dirs.local_conf, "--no-progress",
                              "--no-baseline", NULL},
        NULL, RT_TIMEOUT_S);
    rep = expect_ok(&run);
    assert_int_equal(rt_json_int(rep, "executors.1.id"), 1);
    json_decref(rep);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_graph_on_executors),
        cmocka_unit_test(test_run_graph_cached_on_disk),
        cmocka_unit_test(test_run_graph_executor_killed),
        cmocka_unit_test(test_run_graph_under_mpirun),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
