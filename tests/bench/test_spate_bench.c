/*
 * spate-bench end to end, small ($SPATE_BENCH, through
 * tests/executor/run_test_util.h): `spate-bench shuffle --size 16m --repeat
 * 1 --json F --plot P.svg` on a local cluster of 2 executors, with
 * shuffle.local_dirs in the test's own directory. Checks the JSON (one
 * run object: configuration, machine, the three phases, limits, ratios,
 * the peak anonymous memory within the peak RSS, overall and per executor)
 * and that the SVG is well-formed XML (a small checker here: tags nest and
 * close, attributes are quoted) with the expected elements: an <svg> root,
 * two panels, axes, series polylines and legend entries. A refused option
 * exits 2. `terasort --input` over gensort files and `wordcount` with a
 * generated vocabulary: records and size from the input, the copy floor
 * measured and the total's ratio to it consistent, nothing left behind; a
 * missing input, a --job-arg without '=' and an unknown job exit 2. No
 * timing is asserted: CI machines are noisy.
 *
 * LABELS: slow
 */
#include "../executor/run_test_util.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>

static char base[256];

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "bench");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

static rt_run_t bench(const char *const *args)
{
    const char *bin = getenv("SPATE_BENCH");
    const char *argv[32];
    size_t n = 0;

    if (bin == NULL)
        fail_msg("SPATE_BENCH is not set: run this test through ctest");
    argv[n++] = bin;
    for (; args[n - 1] != NULL; n++) {
        assert_true(n < sizeof(argv) / sizeof(argv[0]) - 1);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    return rt_spawn_env(argv, NULL, RT_TIMEOUT_S);
}

/*
 * Well-formedness of the XML spate-bench writes: every tag closes in order,
 * attribute values are quoted, text holds no bare '<' or '&' other than
 * entities. Counts elements by name into counts (names[i] -> counts[i]).
 */
static bool xml_check(const char *s, const char *const *names, unsigned *counts, size_t nnames,
                      char *why, size_t cap)
{
    char stack[32][32];
    unsigned depth = 0, roots = 0;

    if (strncmp(s, "<?xml", 5) == 0 && (s = strstr(s, "?>")) != NULL)
        s += 2;
    while (s != NULL && *s) {
        if (*s == '&') {
            size_t len = strspn(s + 1, "abcdefghijklmnopqrstuvwxyz#0123456789");
            if (len == 0 || s[1 + len] != ';')
                return snprintf(why, cap, "bare '&' in text"), false;
            s += len + 2;
            continue;
        }
        if (*s != '<') {
            s++;
            continue;
        }
        bool closing = s[1] == '/';
        const char *name = s + 1 + closing;
        size_t len = strcspn(name, " \t\n/>");
        if (len == 0 || len >= sizeof(stack[0]))
            return snprintf(why, cap, "bad tag name"), false;
        if (closing) {
            if (depth == 0 || strncmp(stack[depth - 1], name, len) != 0 ||
                stack[depth - 1][len] != '\0')
                return snprintf(why, cap, "</%.*s> closes nothing open", (int)len, name), false;
            depth--;
            s = strchr(name, '>');
            if (s != NULL)
                s++;
            continue;
        }
        for (size_t i = 0; i < nnames; i++)
            if (strlen(names[i]) == len && strncmp(names[i], name, len) == 0)
                counts[i]++;
        const char *p = name + len;
        while (*p && *p != '>' && !(*p == '/' && p[1] == '>')) {
            if (*p == '=') {
                char q = p[1];
                const char *end;
                if (q != '"' && q != '\'')
                    return snprintf(why, cap, "unquoted attribute in <%.*s>", (int)len, name),
                           false;
                if ((end = strchr(p + 2, q)) == NULL)
                    return snprintf(why, cap, "unterminated attribute"), false;
                if (memchr(p + 2, '<', (size_t)(end - p - 2)) != NULL)
                    return snprintf(why, cap, "'<' in an attribute"), false;
                p = end + 1;
                continue;
            }
            p++;
        }
        if (*p == '\0')
            return snprintf(why, cap, "unterminated <%.*s>", (int)len, name), false;
        if (*p == '/') {
            p += 2; /* empty element */
        } else {
            if (depth == 0)
                roots++;
            if (depth == 32)
                return snprintf(why, cap, "too deep"), false;
            snprintf(stack[depth++], sizeof(stack[0]), "%.*s", (int)len, name);
            p++;
        }
        s = p;
    }
    if (depth != 0)
        return snprintf(why, cap, "<%s> never closes", stack[depth - 1]), false;
    if (roots != 1)
        return snprintf(why, cap, "%u root elements", roots), false;
    return true;
}

static void test_spate_bench_shuffle_json_and_plot(void **state)
{
    char json_path[400], svg_path[400], dirs[400], why[128] = "";
    json_error_t err;
    json_t *runs, *run;
    rt_run_t r;

    (void)state;
    rt_path(json_path, sizeof(json_path), base, "runs.json");
    rt_path(svg_path, sizeof(svg_path), base, "plot.svg");
    snprintf(dirs, sizeof(dirs), "shuffle.local_dirs=%s/local", base);
    r = bench((const char *const[]){"shuffle", "--size", "16m", "--repeat", "1", "--conf", dirs,
                                    "--json", json_path, "--plot", svg_path, NULL});
    rt_expect_ok(&r, "spate-bench shuffle");
    assert_non_null(strstr(r.out, "map write"));
    assert_non_null(strstr(r.out, "exchange+reduce"));
    assert_non_null(strstr(r.out, "anon/mem"));
    rt_free(&r);

    runs = json_load_file(json_path, 0, &err);
    if (runs == NULL)
        fail_msg("%s: %s", json_path, err.text);
    assert_true(json_is_array(runs));
    assert_int_equal(json_array_size(runs), 1);
    run = json_array_get(runs, 0);
    assert_true(json_is_true(json_object_get(run, "succeeded")));
    assert_string_equal(json_string_value(json_object_get(run, "bench")), "shuffle");
    {
        const json_t *cfg = json_object_get(run, "config"), *m = json_object_get(run, "machine");
        const json_t *ph = json_object_get(run, "phases"), *lim = json_object_get(run, "limits");
        const json_t *rat = json_object_get(run, "ratios");
        static const char *const phases[] = {"map", "exchange", "total"};

        assert_int_equal(json_integer_value(json_object_get(cfg, "size_per_executor")), 16 << 20);
        assert_int_equal(json_integer_value(json_object_get(cfg, "executors")), 2);
        assert_int_equal(json_integer_value(json_object_get(cfg, "record_size")), 100);
        assert_string_equal(json_string_value(json_object_get(cfg, "codec")), "lz4");
        assert_true(json_integer_value(json_object_get(m, "cores")) >= 1);
        assert_true(json_integer_value(json_object_get(m, "pus")) >= 1);
        for (size_t i = 0; i < 3; i++) {
            const json_t *p = json_object_get(ph, phases[i]);
            assert_non_null(p);
            assert_true(json_number_value(json_object_get(p, "seconds")) > 0);
            assert_true(json_number_value(json_object_get(p, "gbps_aggregate")) > 0);
            assert_true(json_number_value(json_object_get(p, "records_per_s")) > 0);
            assert_non_null(json_object_get(p, "spill_bytes"));
        }
        assert_int_equal(json_integer_value(json_object_get(run, "records")),
                         (2 * (16 << 20)) / 100);
        assert_true(json_number_value(json_object_get(lim, "memcpy_gbps")) > 0);
        assert_true(json_number_value(json_object_get(lim, "disk_write_gbps")) > 0);
        assert_non_null(json_object_get(lim, "disk_method"));
        assert_true(json_number_value(json_object_get(rat, "map_per_core_to_memcpy")) > 0);
        assert_non_null(json_object_get(rat, "exchange_remote_to_fi_read"));
        /* Where libfabric ran, both patterns were measured and the ratio takes the faster. */
        if (json_is_null(json_object_get(lim, "fi_error"))) {
            double one = json_number_value(json_object_get(lim, "fi_read_gbps"));
            double both = json_number_value(json_object_get(lim, "fi_read_both_ways_gbps"));
            double r1 =
                json_number_value(json_object_get(rat, "exchange_remote_to_fi_read_one_way"));
            double best = json_number_value(json_object_get(rat, "exchange_remote_to_fi_read"));
            double fastest = one > both ? one : both;
            assert_true(one > 0 && both > 0);
            /* The same remote rate divided by each: best x fastest == r1 x one. */
            assert_true(best > 0 && best <= r1 * 1.000001);
            assert_true(fabs(best * fastest - r1 * one) <= 1e-6 * r1 * one);
        }
        assert_true(json_number_value(json_object_get(rat, "peak_rss_to_memory")) > 0);
        assert_true(json_number_value(json_object_get(rat, "peak_anon_to_memory")) > 0);
        /* With the storage memory its map outputs held: never less than the anonymous RSS alone. */
        assert_true(json_number_value(json_object_get(rat, "peak_anon_storage_to_memory")) >=
                    json_number_value(json_object_get(rat, "peak_anon_to_memory")));
        /* The executors' own memory, without mapped files, is part of their resident set. */
        assert_true(json_integer_value(json_object_get(run, "peak_anon_max")) > 0);
        assert_true(json_integer_value(json_object_get(run, "peak_anon_max")) <=
                    json_integer_value(json_object_get(run, "peak_rss_max")));
        assert_int_equal(json_array_size(json_object_get(run, "executors")), 2);
        for (size_t e = 0; e < 2; e++) {
            const json_t *x = json_array_get(json_object_get(run, "executors"), e);
            assert_true(json_integer_value(json_object_get(x, "peak_anon")) > 0);
            assert_true(json_integer_value(json_object_get(x, "peak_anon")) <=
                        json_integer_value(json_object_get(x, "peak_rss")));
            assert_true(json_integer_value(json_object_get(x, "memory")) > 0);
        }
    }
    json_decref(runs);

    {
        static const char *const names[] = {"svg", "polyline", "text", "line", "g"};
        unsigned counts[5] = {0};
        size_t len = 0;
        char *svg = rt_read_file(svg_path, &len);

        assert_non_null(svg);
        if (!xml_check(svg, names, counts, 5, why, sizeof(why)))
            fail_msg("%s is not well-formed XML: %s", svg_path, why);
        assert_int_equal(counts[0], 1);
        assert_true(counts[1] >= 3); /* spate's phases and the limits */
        assert_non_null(strstr(svg, "GB/s per executor"));
        assert_non_null(strstr(svg, "data per executor"));
        assert_non_null(strstr(svg, "ranks (executors)"));
        assert_non_null(strstr(svg, "class=\"legend\""));
        assert_non_null(strstr(svg, "limit: memcpy"));
        free(svg);
    }
}

/* The run object of a one-run JSON file, its array in *runs_p (decref it). */
static json_t *one_run(const char *path, json_t **runs_p)
{
    json_error_t err;
    json_t *run;

    if ((*runs_p = json_load_file(path, 0, &err)) == NULL)
        fail_msg("%s: %s", path, err.text);
    assert_int_equal(json_array_size(*runs_p), 1);
    run = json_array_get(*runs_p, 0);
    assert_true(json_is_true(json_object_get(run, "succeeded")));
    return run;
}

/* ratios.total_to_copy_floor is the total's seconds over the copy floor's, both measured. */
static void expect_copy_floor(const json_t *run)
{
    double floor_s =
        json_number_value(json_object_get(json_object_get(run, "limits"), "copy_floor_seconds"));
    double total_s = json_number_value(
        json_object_get(json_object_get(json_object_get(run, "phases"), "total"), "seconds"));
    double ratio =
        json_number_value(json_object_get(json_object_get(run, "ratios"), "total_to_copy_floor"));

    assert_true(floor_s > 0 && total_s > 0);
    assert_true(fabs(ratio * floor_s - total_s) <= 1e-6 * total_s);
}

/*
 * TeraSort from --input (gensort files): the input's bytes are the run's
 * data, the copy floor reads them; word count of a generated text with a
 * vocabulary. Neither leaves its output or the copies behind.
 */
static void test_spate_bench_input_and_copy_floor(void **state)
{
    char input[400], json_path[400], dirs[440], local[400];
    const char *const gensort[] = {getenv("SPATE_CLI"), "gensort", "-b0", "20000", input,
                                   "--files",           "3",       NULL};
    json_t *runs, *run;
    rt_run_t r;

    (void)state;
    assert_non_null(gensort[0]);
    rt_path(input, sizeof(input), base, "gensort");
    rt_path(local, sizeof(local), base, "local-io");
    rt_path(json_path, sizeof(json_path), base, "io.json");
    snprintf(dirs, sizeof(dirs), "shuffle.local_dirs=%s", local);
    r = rt_spawn_env(gensort, NULL, RT_TIMEOUT_S);
    rt_expect_ok(&r, "spate gensort");
    rt_free(&r);

    r = bench((const char *const[]){"terasort", "--input", input, "--conf", dirs, "--json",
                                    json_path, NULL});
    rt_expect_ok(&r, "spate-bench terasort --input");
    assert_non_null(strstr(r.out, "read+sort+write"));
    assert_non_null(strstr(r.out, "the copy floor"));
    rt_free(&r);
    run = one_run(json_path, &runs);
    assert_int_equal(json_integer_value(json_object_get(run, "records")), 20000);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(run, "config"), "size_per_executor")),
        20000 * 100 / 2);
    expect_copy_floor(run);
    json_decref(runs);

    r = bench((const char *const[]){"wordcount", "--size", "4m", "--job-arg", "vocabulary=5000",
                                    "--conf", dirs, "--json", json_path, NULL});
    rt_expect_ok(&r, "spate-bench wordcount");
    rt_free(&r);
    run = one_run(json_path, &runs);
    assert_string_equal(json_string_value(json_object_get(run, "bench")), "wordcount");
    expect_copy_floor(run);
    json_decref(runs);

    /* Nothing of either run is left in the local directory: outputs and copies are removed. */
    {
        DIR *d = opendir(local);
        struct dirent *e;

        assert_non_null(d);
        while ((e = readdir(d)) != NULL)
            if (strncmp(e->d_name, "spate-bench-", 12) == 0)
                fail_msg("%s/%s was left behind", local, e->d_name);
        closedir(d);
    }
}

static void test_spate_bench_refuses_bad_option(void **state)
{
    rt_run_t r;

    (void)state;
    r = bench((const char *const[]){"shuffle", "--size", "lots", NULL});
    rt_expect_fail(&r, 2, "--size", "a bad size");
    rt_free(&r);
    r = bench((const char *const[]){"shuffle", "--no-such-option", "1", NULL});
    rt_expect_fail(&r, 2, "unknown option", "an unknown option");
    rt_free(&r);
    r = bench((const char *const[]){"terasort", "--input", "/no/such/input", NULL});
    rt_expect_fail(&r, 2, "/no/such/input", "a missing --input");
    rt_free(&r);
    r = bench((const char *const[]){"wordcount", "--job-arg", "novalue", NULL});
    rt_expect_fail(&r, 2, "--job-arg", "a --job-arg without '='");
    rt_free(&r);
    r = bench((const char *const[]){"sort-it-all", NULL});
    rt_expect_fail(&r, 2, "unknown command", "an unknown job");
    rt_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spate_bench_shuffle_json_and_plot),
        cmocka_unit_test(test_spate_bench_input_and_copy_floor),
        cmocka_unit_test(test_spate_bench_refuses_bad_option),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
