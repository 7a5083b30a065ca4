/*
 * `spate run` end to end on a local cluster of forked executor processes,
 * as a user runs it (SPATE_CLI, through tests/executor/run_test_util.h),
 * with 2 and 3 executors:
 * - terasort on generated input (--size) and on gensort files (--input):
 *   the output directory is complete (_SUCCESS, part-r files), `spate
 *   valsort` passes, and its checksum and record count are those `spate
 *   gensort -c` prints for the same records;
 * - wordcount over a generated directory of text files (random words of a
 *   small vocabulary, UTF-8 and prefixes of each other included, mixed
 *   whitespace, files cut into several splits) against a count made here:
 *   every output file sorted by word, every word in one file only;
 * - the shuffle job (its finish() checks what the reduce side read against
 *   what the map side wrote) in each read order, and its raw output's size;
 * - forced spills (little memory and shuffle.spill_records): the report's
 *   spill bytes are not zero and the output is still right;
 * - each libfabric provider the local cluster uses (tcp;ofi_rxm, shm): the
 *   reduce side read remote bytes and the output is right.
 * The --json report is checked each time: succeeded, executors, every stage
 * done, no recovery. Shuffle files go to a directory of the test's own
 * (shuffle.local_dirs), which must be empty again after every run.
 *
 * Terasort cases skip themselves while `spate run --help` does not list
 * the job.
 *
 * LABELS: slow
 */
#include "run_test_util.h"

#include <dirent.h>
#include <stdint.h>

static char base[256];       /* this run's scratch directory */
static char local_conf[512]; /* shuffle.local_dirs=BASE/local */
static char local_dir[300];
static char scratch[300]; /* gensort's files, for its checksum */

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-local");
    rt_path(local_dir, sizeof(local_dir), base, "local");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local_dir);
    return mkdir(local_dir, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* Executors remove their shuffle files when the job ends. */
static void expect_local_dirs_empty(void)
{
    DIR *d = opendir(local_dir);
    struct dirent *de;

    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            fail_msg("%s still holds %s after the run", local_dir, de->d_name);
    closedir(d);
}

/* A fresh path under base for a run's output or report. */
static void fresh(char *path, size_t cap, const char *name)
{
    rt_path(path, cap, base, name);
    rt_rmtree(path);
}

/* ------------------------------------------------------------------------ */
/* terasort                                                                  */
/* ------------------------------------------------------------------------ */

static void skip_without_terasort(void)
{
    if (!rt_has_job("terasort")) {
        print_message("terasort is not a built-in job of this spate yet: skipped\n");
        skip();
    }
}

/*
 * Input of 4 gensort files (250000 records), made once: terasort plans one
 * map per file, so every executor has map outputs to serve.
 */
static const char *terasort_input(void)
{
    static char in[300];
    rt_run_t run;

    if (in[0] != '\0')
        return in;
    rt_path(in, sizeof(in), base, "terasort-in");
    run = RT_CLI("gensort", "--files", "4", "250000", in);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    return in;
}

/*
 * Runs terasort on source ("--size" or "--input") value, size_bytes of
 * records, with extra arguments (NULL-terminated), and checks everything.
 */
static json_t *terasort(const char *executors, const char *source, const char *value,
                        uint64_t size_bytes, const char *const *extra)
{
    char out[300], json[300];
    const char *args[48] = {
        "run", "terasort", "--executors", executors, source,     value,           "--output",
        out,   "--json",   json,          "--conf",  local_conf, "--no-progress", "--no-baseline"};
    size_t n = 14;
    unsigned long long records;
    rt_run_t run;
    json_t *rep;

    fresh(out, sizeof(out), "terasort-out");
    fresh(json, sizeof(json), "terasort.json");
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    run = rt_cli(args);
    rt_expect_ok(&run, "spate run terasort");
    rep = rt_json_load(json);
    rt_expect_report(rep, (unsigned)strtoul(executors, NULL, 10), true);
    records = (unsigned long long)rt_json_int(rep, "map_records");
    /* Whole records: the size rounded either way, never more than one record off. */
    if (records != size_bytes / 100 && records != (size_bytes + 99) / 100)
        fail_msg("%s %s gave %llu records", source, value, records);
    assert_int_equal(rt_json_int(rep, "reduce_records"), records);
    assert_int_equal(rt_json_int(rep, "output_bytes"), records * 100);
    rt_expect_sorted(out, records, scratch);
    assert_int_equal(rt_part_count(out), rt_json_int(rep, "partitions"));
    expect_local_dirs_empty();
    rt_free(&run);
    rt_rmtree(out);
    return rep;
}

static void test_run_terasort_two_executors(void **state)
{
    (void)state;
    skip_without_terasort();
    json_decref(terasort("2", "--size", "16m", 16u << 20, NULL));
}

static void test_run_terasort_three_executors(void **state)
{
    static const char *const extra[] = {"--partitions", "5", NULL};
    json_t *rep;

    (void)state;
    skip_without_terasort();
    rep = terasort("3", "--size", "10000000", 10000000, extra);
    assert_int_equal(rt_json_int(rep, "partitions"), 5);
    assert_int_equal(rt_json_int(rep, "stages.reduce.tasks"), 5);
    /* Range partitioning: a sample stage ran before the map stage. */
    assert_true(rt_json_int(rep, "stages.sample.tasks") >= 1);
    json_decref(rep);
}

static void test_run_terasort_input_dir(void **state)
{
    json_t *rep;

    (void)state;
    skip_without_terasort();
    rep = terasort("3", "--input", terasort_input(), 250000 * 100, NULL);
    assert_int_equal(rt_json_int(rep, "maps"), 4);
    /* Every executor ran a task. */
    for (int e = 0; e < 3; e++) {
        char key[32];
        snprintf(key, sizeof(key), "executors.%d.tasks", e);
        assert_true(rt_json_int(rep, key) >= 1);
    }
    json_decref(rep);
}

static void test_run_terasort_forced_spills(void **state)
{
    static const char *const extra[] = {"--memory", "48m", "--conf", "shuffle.spill_records=20000",
                                        NULL};
    json_t *rep;

    (void)state;
    skip_without_terasort();
    rep = terasort("2", "--size", "24m", 24u << 20, extra);
    if (rt_json_int(rep, "stages.map.spill_bytes") <= 0)
        fail_msg("terasort with 48 MiB and 20000 records a spill did not spill");
    assert_int_equal(rt_json_int(rep, "executors.0.memory"), 48 << 20);
    json_decref(rep);
}

static void test_run_terasort_each_provider(void **state)
{
    static const char *const providers[] = {"tcp;ofi_rxm", "shm"};

    (void)state;
    skip_without_terasort();
    for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
        const char *extra[] = {"--provider", providers[i], "--partitions", "4", NULL};
        json_t *rep = terasort("2", "--input", terasort_input(), 250000 * 100, extra);
        if (rt_json_int(rep, "stages.reduce.remote_bytes") <= 0)
            fail_msg("provider %s: no byte was read from the other executor", providers[i]);
        json_decref(rep);
    }
}

/* ------------------------------------------------------------------------ */
/* wordcount                                                                 */
/* ------------------------------------------------------------------------ */

static void wordcount(const char *executors, const char *const *extra, json_t **rep_p)
{
    uint64_t counts[RT_WC_VOCAB] = {0}, total = 0, distinct = 0;
    char in[300], out[300], json[300];
    const char *args[48] = {
        "run",    "wordcount", "--executors", executors,        "--input",
        in,       "--output",  out,           "--json",         json,
        "--conf", local_conf,  "--job-arg",   "split_size=96k", "--no-baseline"};
    size_t n = 15;
    rt_run_t run;
    json_t *rep;

    fresh(in, sizeof(in), "words");
    fresh(out, sizeof(out), "wordcount-out");
    fresh(json, sizeof(json), "wordcount.json");
    rt_wc_make_texts(in, 4, 512 << 10, counts);
    for (size_t w = 0; w < RT_WC_VOCAB; w++) {
        total += counts[w];
        distinct += counts[w] > 0;
    }
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    run = rt_cli(args);
    rt_expect_ok(&run, "spate run wordcount");
    rt_wc_expect_counts(out, counts);
    rep = rt_json_load(json);
    rt_expect_report(rep, (unsigned)strtoul(executors, NULL, 10), true);
    /* Several splits per file: the split rule was exercised. */
    assert_true(rt_json_int(rep, "maps") > 4);
    /* Counters: words, distinct words, words the maps emitted. */
    assert_int_equal(rt_json_int(rep, "counters.0"), total);
    assert_int_equal(rt_json_int(rep, "counters_by_name.words"), total);
    assert_int_equal(rt_json_int(rep, "counters.1"), distinct);
    assert_int_equal(rt_json_int(rep, "counters.2"), total);
    expect_local_dirs_empty();
    rt_free(&run);
    rt_rmtree(in);
    rt_rmtree(out);
    *rep_p = rep;
}

static void test_run_wordcount_two_executors(void **state)
{
    json_t *rep;

    (void)state;
    wordcount("2", NULL, &rep);
    json_decref(rep);
}

static void test_run_wordcount_three_executors(void **state)
{
    static const char *const extra[] = {"--partitions", "7", NULL};
    json_t *rep;

    (void)state;
    wordcount("3", extra, &rep);
    assert_int_equal(rt_json_int(rep, "partitions"), 7);
    json_decref(rep);
}

static void test_run_wordcount_forced_spills(void **state)
{
    static const char *const extra[] = {"--memory", "48m", "--conf", "shuffle.spill_records=8",
                                        NULL};
    json_t *rep;

    (void)state;
    wordcount("2", extra, &rep);
    if (rt_json_int(rep, "stages.map.spill_bytes") <= 0)
        fail_msg("wordcount with a spill every 8 records did not spill");
    json_decref(rep);
}

/* ------------------------------------------------------------------------ */
/* shuffle                                                                   */
/* ------------------------------------------------------------------------ */

/* The shuffle job with extra arguments; its finish() checks map side against reduce side. */
static json_t *shuffle(const char *executors, uint64_t records, const char *const *extra)
{
    char json[300], recs[64];
    const char *args[48] = {"run",       "shuffle", "--executors",  executors,   "--json",
                            json,        "--conf",  local_conf,     "--job-arg", recs,
                            "--job-arg", "maps=3",  "--no-baseline"};
    size_t n = 13;
    rt_run_t run;
    json_t *rep;

    fresh(json, sizeof(json), "shuffle.json");
    snprintf(recs, sizeof(recs), "records=%llu", (unsigned long long)records);
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    run = rt_cli(args);
    rt_expect_ok(&run, "spate run shuffle");
    rep = rt_json_load(json);
    rt_expect_report(rep, (unsigned)strtoul(executors, NULL, 10), true);
    assert_int_equal(rt_json_int(rep, "maps"), 3);
    assert_int_equal(rt_json_int(rep, "map_records"), records);
    assert_int_equal(rt_json_int(rep, "reduce_records"), records);
    /* Counters 0-2 the map side's records, bytes, hash sum; 3-5 the reduce side's. */
    for (int i = 0; i < 3; i++) {
        char a[16], b[16];
        snprintf(a, sizeof(a), "counters.%d", i);
        snprintf(b, sizeof(b), "counters.%d", i + 3);
        assert_int_equal(rt_json_int(rep, a), rt_json_int(rep, b));
    }
    assert_int_equal(rt_json_int(rep, "counters.0"), records);
    expect_local_dirs_empty();
    rt_free(&run);
    return rep;
}

static void test_run_shuffle_each_order(void **state)
{
    static const char *const orders[] = {"order=unordered", "order=merge", "order=sort"};

    (void)state;
    for (size_t i = 0; i < sizeof(orders) / sizeof(orders[0]); i++) {
        const char *extra[] = {"--job-arg", orders[i], "--partitions", "6", NULL};
        json_decref(shuffle(i % 2 ? "3" : "2", 150000, extra));
    }
}

static void test_run_shuffle_skew_and_output(void **state)
{
    char out[300];
    const char *extra[] = {
        "--job-arg", "skew=1.2", "--job-arg",    "key_size=16", "--job-arg", "value_size=48",
        "--output",  out,        "--partitions", "5",           NULL};
    uint64_t total = 0;
    json_t *rep;

    (void)state;
    fresh(out, sizeof(out), "shuffle-out");
    rep = shuffle("3", 120000, extra);
    rt_expect_output(out, 5);
    /* Raw records, key then value: the output files add up to every record once. */
    for (unsigned p = 0; p < 5; p++) {
        char name[32], path[600];
        struct stat sb;
        snprintf(name, sizeof(name), "part-r-%05u", p);
        rt_path(path, sizeof(path), out, name);
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(sb.st_size % 64, 0);
        total += (uint64_t)sb.st_size;
    }
    assert_int_equal(total, 120000ull * 64);
    assert_int_equal(rt_json_int(rep, "output_bytes"), total);
    json_decref(rep);
    rt_rmtree(out);
}

static void test_run_shuffle_forced_spills(void **state)
{
    static const char *const extra[] = {
        "--memory",  "48m",         "--conf", "shuffle.spill_records=10000",
        "--job-arg", "order=merge", NULL};
    json_t *rep;

    (void)state;
    rep = shuffle("2", 200000, extra);
    if (rt_json_int(rep, "stages.map.spill_bytes") <= 0)
        fail_msg("shuffle with a spill every 10000 records did not spill");
    json_decref(rep);
}

static void test_run_shuffle_each_provider(void **state)
{
    static const char *const providers[] = {"tcp;ofi_rxm", "shm"};

    (void)state;
    for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
        const char *extra[] = {"--provider", providers[i], "--partitions", "4", NULL};
        json_t *rep = shuffle("2", 150000, extra);
        if (rt_json_int(rep, "stages.reduce.remote_bytes") <= 0)
            fail_msg("provider %s: no byte was read from the other executor", providers[i]);
        json_decref(rep);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_terasort_two_executors),
        cmocka_unit_test(test_run_terasort_three_executors),
        cmocka_unit_test(test_run_terasort_input_dir),
        cmocka_unit_test(test_run_terasort_forced_spills),
        cmocka_unit_test(test_run_terasort_each_provider),
        cmocka_unit_test(test_run_wordcount_two_executors),
        cmocka_unit_test(test_run_wordcount_three_executors),
        cmocka_unit_test(test_run_wordcount_forced_spills),
        cmocka_unit_test(test_run_shuffle_each_order),
        cmocka_unit_test(test_run_shuffle_skew_and_output),
        cmocka_unit_test(test_run_shuffle_forced_spills),
        cmocka_unit_test(test_run_shuffle_each_provider),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
