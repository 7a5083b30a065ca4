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
 *   was lost, map outputs recomputed and lost cached partitions cached
 *   again) and the output is the same;
 * - under mpirun -n 2 (skipped without mpiexec): the same output.
 * The built-in graph jobs on two executors against the same job run in this
 * process by the local runner (itself checked against naive references in
 * test_graph_jobs.c): pagerank over a random edge list (ranks within 1e-9),
 * also with executor 1 killed during an iteration that reads the cached
 * links (the report shows the loss and the recomputed outputs); join and
 * groupby (the same lines). Two independent map stages run at once (the
 * second starts before the first ends). Progress lines when stderr is a file.
 * Every run's working and shuffle directories must be left empty and none
 * of its processes alive.
 *
 * LABELS: fault
 */
#include "taskfail_util.h"

#include "common_int.h"
#include "executor/graph_int.h"

#include <math.h>

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
                                 (unsigned long long)(sums[r % KEYS] * 3 + (r >> 16) % 1000000)) >
                        0);
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
    /* The collect of the sums found their shuffle done: one skipped stage. */
    assert_int_equal(rt_json_int(rep, "graph.stages_skipped"), 1);
    assert_int_equal(rt_json_int(rep, "graph.blocks_recomputed"), 0);
    /* docs/REPORT.md: the run's id, times, command line, configuration, stages in order. */
    assert_true(strncmp(json_string_value(rt_json_at(rep, "run_id")), "app-", 4) == 0);
    assert_int_equal(strlen(json_string_value(rt_json_at(rep, "started_at"))), 24);
    assert_string_equal(json_string_value(rt_json_at(rep, "command_line.0")),
                        getenv("SPATE_GRAPH_PLUGIN"));
    assert_string_equal(
        json_string_value(json_object_get(rt_json_at(rep, "configuration"), "shuffle.local_dirs")),
        dirs.local);
    /* Sample and map stages of three shuffles and three actions: 7, the sums' first. */
    assert_int_equal(json_array_size(rt_json_at(rep, "stage_list")), 7);
    assert_string_equal(json_string_value(rt_json_at(rep, "stage_list.0.name")),
                        "stage 0 (reduce_by_key)");
    assert_string_equal(json_string_value(rt_json_at(rep, "stage_list.6.name")),
                        "stage 5 (collect)");
    assert_int_equal(rt_json_int(rep, "stage_list.6.done"), 4);
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
    /*
     * Executor 1 cached some of the persisted dataset's partitions in stage 0
     * (each executor runs about three of its six 150 ms tasks); the count
     * action reads them all again, so those were computed and cached again.
     */
    assert_true(rt_json_int(rep, "graph.blocks_recomputed") > 0);
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
    run = rt_spawn_env((const char *const[]){"mpiexec", "-n", "2", "--oversubscribe", cli, "run",
                                             getenv("SPATE_GRAPH_PLUGIN"), "--output", dirs.out,
                                             "--json", dirs.json, "--conf", dirs.local_conf,
                                             "--no-progress", "--no-baseline", NULL},
                       NULL, RT_TIMEOUT_S);
    rep = expect_ok(&run);
    assert_int_equal(rt_json_int(rep, "executors.1.id"), 1);
    json_decref(rep);
    rt_free(&run);
}

/* ---- the built-in graph jobs against the local runner ---- */

/* Runs job in this process (sp__graph_run_local) with args into out. */
static void local_run(const char *job_name, const char *input, const char *const *args,
                      size_t nargs, const char *out)
{
    const sp_job_t *job = NULL;
    void *handle = NULL;
    sp_conf_t *conf = NULL;
    sp_memory_manager_t *mm = NULL;
    char local[400];
    sp_status_t st;

    snprintf(local, sizeof(local), "%s/inproc", dirs.local);
    assert_int_equal(mkdir(local, 0700), 0);
    assert_int_equal(sp__job_load(job_name, &job, &handle), SP_OK);
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", "256m"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", local), SP_OK);
    assert_int_equal(sp_memory_manager_create(conf, NULL, 0, &mm), SP_OK);
    st = sp__graph_run_local(job,
                             &(sp_job_params_t){.input = input,
                                                .output = out,
                                                .slots = 2,
                                                .executors = 1,
                                                .args = args,
                                                .nargs = nargs,
                                                .conf = conf},
                             mm, NULL, NULL, NULL);
    if (st != SP_OK)
        fail_msg("%s in process: %s", job_name, sp_last_error());
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    sp__job_unload(handle);
    rt_rmtree(local);
}

/* Every line of dir's part files, sorted (*n_p of them). */
static char **part_lines(const char *dir, size_t *n_p)
{
    char **lines = NULL;
    size_t n = 0, cap = 0;

    for (unsigned p = 0;; p++) {
        char path[400], *text, *save = NULL;
        snprintf(path, sizeof(path), "%s/part-r-%05u", dir, p);
        if (access(path, F_OK) != 0)
            break;
        text = rt_read_file(path, NULL);
        for (char *l = strtok_r(text, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                lines = realloc(lines, cap * sizeof(*lines));
                assert_non_null(lines);
            }
            lines[n++] = strdup(l);
        }
        free(text);
    }
    if (n > 0)
        qsort(lines, n, sizeof(*lines), line_cmp);
    *n_p = n;
    return lines;
}

static void free_lines(char **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

/* Both directories hold the same lines; ranks: "page rank" with ranks within 1e-9. */
static void expect_same_lines(const char *a, const char *b, bool ranks)
{
    size_t na, nb;
    char **la = part_lines(a, &na), **lb = part_lines(b, &nb);

    if (na != nb || na == 0)
        fail_msg("%zu lines in %s, %zu in %s", na, a, nb, b);
    for (size_t i = 0; i < na; i++) {
        char pa[64], pb[64];
        double ra, rb;
        if (!ranks) {
            if (strcmp(la[i], lb[i]) != 0)
                fail_msg("line %zu: '%s' vs '%s'", i, la[i], lb[i]);
            continue;
        }
        assert_int_equal(sscanf(la[i], "%63s %lf", pa, &ra), 2);
        assert_int_equal(sscanf(lb[i], "%63s %lf", pb, &rb), 2);
        if (strcmp(pa, pb) != 0 || fabs(ra - rb) > 1e-9 * fmax(fabs(ra), 1.0))
            fail_msg("line %zu: '%s' vs '%s'", i, la[i], lb[i]);
    }
    free_lines(la, na);
    free_lines(lb, nb);
}

/* A random edge list: 3000 edges over 400 pages, a few hot targets, some self loops. */
static void write_edges(const char *path)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fprintf(f, "# random edges\n");
    for (uint64_t i = 0; i < 3000; i++) {
        uint64_t r = mix(i * 7919 + 13);
        unsigned src = (unsigned)(r % 400),
                 dst = (unsigned)((r >> 20) % 10 < 3 ? (r >> 32) % 5 : (r >> 32) % 400);
        fprintf(f, "p%u p%u\n", src, dst);
    }
    fclose(f);
}

static void test_run_pagerank_on_executors(void **state)
{
    const char *args[] = {"iterations=6"};
    char edges[400], ref[400];
    rt_run_t run;
    json_t *rep;

    (void)state;
    tf_dirs_fresh(&dirs);
    rt_path(edges, sizeof(edges), dirs.base, "edges.txt");
    rt_path(ref, sizeof(ref), dirs.base, "ref");
    rt_rmtree(ref);
    write_edges(edges);
    local_run("pagerank", edges, args, 1, ref);
    run = tf_run_job(&dirs, "pagerank",
                     (const char *const[]){"--input", edges, "--job-arg", "iterations=6", NULL},
                     NULL);
    rt_expect_ok(&run, "pagerank on executors");
    expect_same_lines(dirs.out, ref, true);
    tf_expect_clean(&dirs, &run);
    rep = rt_json_load(dirs.json);
    assert_true(rt_json_int(rep, "graph.blocks_cached") > 0);
    json_decref(rep);
    rt_free(&run);

    /* Executor 1 killed after 14 map tasks: inside an iteration that reads the cached links. */
    tf_dirs_fresh(&dirs);
    run = tf_run_job(&dirs, "pagerank",
                     (const char *const[]){"--input", edges, "--job-arg", "iterations=6", NULL},
                     (const char *const[]){"SPATE_FAULT_KILL_EXECUTOR=1:map:14", NULL});
    rt_expect_ok(&run, "pagerank with an executor killed");
    if (strstr(run.err, "fault injection: killing executor 1") == NULL)
        fail_msg("the executor was not killed: %s", rt_tail(run.err));
    expect_same_lines(dirs.out, ref, true);
    tf_expect_clean(&dirs, &run);
    rep = rt_json_load(dirs.json);
    assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 1);
    assert_true(rt_json_int(rep, "recovery.maps_recomputed") > 0);
    json_decref(rep);
    rt_free(&run);
    rt_rmtree(ref);
}

static void test_run_join_and_groupby_on_executors(void **state)
{
    char left[400], right[400], csv[400], ref[400], arg_l[420], arg_r[420];
    FILE *f;
    rt_run_t run;

    (void)state;
    tf_dirs_fresh(&dirs);
    rt_path(left, sizeof(left), dirs.base, "left.csv");
    rt_path(right, sizeof(right), dirs.base, "right.csv");
    rt_path(ref, sizeof(ref), dirs.base, "ref");
    assert_non_null(f = fopen(left, "w"));
    for (unsigned i = 0; i < 2000; i++)
        fprintf(f, "o%u,c%u,%u\n", i, (unsigned)(mix(i) % 300), (unsigned)(mix(i + 1) % 1000));
    fclose(f);
    assert_non_null(f = fopen(right, "w"));
    for (unsigned i = 0; i < 250; i++)
        fprintf(f, "c%u,name%u\n", i, i * 7);
    fclose(f);
    snprintf(arg_l, sizeof(arg_l), "left=%s", left);
    snprintf(arg_r, sizeof(arg_r), "right=%s", right);
    {
        const char *args[] = {arg_l, arg_r, "left_key=1", "delim=,", "kind=left"};
        rt_rmtree(ref);
        local_run("join", NULL, args, 5, ref);
        run = tf_run_job(&dirs, "join",
                         (const char *const[]){"--job-arg", arg_l, "--job-arg", arg_r, "--job-arg",
                                               "left_key=1", "--job-arg", "delim=,", "--job-arg",
                                               "kind=left", NULL},
                         NULL);
        rt_expect_ok(&run, "join on executors");
        expect_same_lines(dirs.out, ref, false);
        tf_expect_clean(&dirs, &run);
        rt_free(&run);
    }
    tf_dirs_fresh(&dirs);
    rt_path(csv, sizeof(csv), dirs.base, "left.csv");
    {
        const char *args[] = {"key=1", "agg=count,sum:2,min:2,max:2,avg:2"};
        rt_rmtree(ref);
        local_run("groupby", csv, args, 2, ref);
        run = tf_run_job(&dirs, "groupby",
                         (const char *const[]){"--input", csv, "--job-arg", "key=1", "--job-arg",
                                               "agg=count,sum:2,min:2,max:2,avg:2", NULL},
                         NULL);
        rt_expect_ok(&run, "groupby on executors");
        expect_same_lines(dirs.out, ref, false);
        tf_expect_clean(&dirs, &run);
        rt_free(&run);
    }
    rt_rmtree(ref);
}

/* The stage_list entry named name, or the test fails. */
static json_t *stage_named(json_t *rep, const char *name)
{
    json_t *list = rt_json_at(rep, "stage_list");

    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *s = json_array_get(list, i);
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    fail_msg("the report has no stage %s", name);
    return NULL;
}

/*
 * Two map stages that depend on nothing but their own source run at once:
 * the second starts (its first task is launched) before the first ends (its
 * last task is done), whichever of them the driver takes first. Each source
 * partition takes 150 ms, so stage 0 still runs a task when its pending ones
 * run out and stage 1 takes the free slot. The join of the two sums is right.
 */
static void test_run_independent_stages_overlap(void **state)
{
    rt_run_t run;
    json_t *rep, *s0, *s1;
    double start0, end0, start1, end1;

    (void)state;
    tf_dirs_fresh(&dirs);
    run = run_graph(
        (const char *const[]){"--job-arg", "shape=independent", "--job-arg", "slow_ms=150", NULL},
        NULL);
    rt_expect_ok(&run, "two independent stages");
    if (strstr(run.err, "graphtest: independent: 40 keys joined, as generated") == NULL)
        fail_msg("the join of the two sums is wrong: %s", rt_tail(run.err));
    tf_expect_clean(&dirs, &run);
    rep = rt_json_load(dirs.json);
    s0 = stage_named(rep, "stage 0 (reduce_by_key)");
    s1 = stage_named(rep, "stage 1 (reduce_by_key)");
    start0 = json_real_value(json_object_get(s0, "start_s"));
    end0 = json_real_value(json_object_get(s0, "end_s"));
    start1 = json_real_value(json_object_get(s1, "start_s"));
    end1 = json_real_value(json_object_get(s1, "end_s"));
    if (!(start1 < end0 && start0 < end1))
        fail_msg("the independent stages did not overlap: stage 0 %.3f-%.3f s, stage 1 %.3f-%.3f s",
                 start0, end0, start1, end1);
    json_decref(rep);
    rt_free(&run);
}

/*
 * Progress when stderr is not a terminal (here a file): on by default, a line
 * per running stage every progress.interval and one as each stage ends.
 */
static void test_run_progress_lines_when_piped(void **state)
{
    rt_run_t run;
    unsigned lines = 0;

    (void)state;
    tf_dirs_fresh(&dirs);
    run = rt_cli((const char *const[]){"run", getenv("SPATE_GRAPH_PLUGIN"), "--executors", "2",
                                       "--cores", "1", "--conf", dirs.local_conf, "--conf",
                                       "progress.interval=100ms", "--job-arg", "slow_ms=300",
                                       "--no-baseline", NULL});
    rt_expect_ok(&run, "a piped run");
    /*
     * Lines of stages still running ("map 3/19 tasks ..."), not only the ones
     * that end each stage: the map stages' tasks sleep 300 ms each, so several
     * intervals of 100 ms pass while they run.
     */
    for (const char *p = run.err; (p = strstr(p, " tasks ")) != NULL; p++) {
        const char *line = p;
        unsigned done, tasks;
        while (line > run.err && line[-1] != '\n')
            line--;
        if (sscanf(line, "%*s %u/%u", &done, &tasks) == 2 && done < tasks)
            lines++;
    }
    if (lines == 0 || strchr(run.err, '\r') != NULL)
        fail_msg("%u progress lines of running stages (want some, and no carriage returns): %s",
                 lines, rt_tail(run.err));
    rt_free(&run);
    run = rt_cli((const char *const[]){"run", getenv("SPATE_GRAPH_PLUGIN"), "--executors", "2",
                                       "--conf", dirs.local_conf, "--no-progress", "--no-baseline",
                                       NULL});
    rt_expect_ok(&run, "a run without progress");
    if (strstr(run.err, " tasks ") != NULL)
        fail_msg("--no-progress printed progress: %s", rt_tail(run.err));
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_graph_on_executors),
        cmocka_unit_test(test_run_graph_cached_on_disk),
        cmocka_unit_test(test_run_graph_executor_killed),
        cmocka_unit_test(test_run_graph_under_mpirun),
        cmocka_unit_test(test_run_pagerank_on_executors),
        cmocka_unit_test(test_run_join_and_groupby_on_executors),
        cmocka_unit_test(test_run_progress_lines_when_piped),
        cmocka_unit_test(test_run_independent_stages_overlap),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
