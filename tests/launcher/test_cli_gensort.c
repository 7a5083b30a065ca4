/*
 * Tests of `spate gensort` and `spate valsort` as a user runs them: the
 * built command is started with fork/exec (SPATE_CLI), and what it writes is
 * compared with the generator in-process (the reference: gensort 1.5's
 * records, checked against published checksums by executor/test_gensort).
 * Exit codes: 0 done, 1 failed (or, for valsort, records out of order), 2
 * bad usage.
 *
 * LABELS: unit
 */
#include "common_int.h"
#include "executor/jobs/gensort.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../executor/run_test_util.h"

#define REC SP__GENSORT_RECORD_SIZE

static char base_dir[256];

/* The whole content of a file (*len_p bytes; NULL when it does not exist). */
static unsigned char *slurp_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long len;

    if (f == NULL)
        return NULL;
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    rewind(f);
    buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *len_p = (size_t)len;
    return buf;
}

/* dir's part files concatenated, checking there are exactly `files` of them and no others. */
static unsigned char *slurp_parts(const char *dir, unsigned files, size_t *len_p)
{
    unsigned char *all = NULL;
    size_t total = 0;
    struct dirent *de;
    unsigned entries = 0;
    DIR *d = opendir(dir);

    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        entries += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    if (entries != files)
        fail_msg("%s holds %u entries, want %u part files (temporaries left?)", dir, entries,
                 files);
    for (unsigned i = 0; i < files; i++) {
        char path[1100];
        size_t len;
        unsigned char *part;

        snprintf(path, sizeof(path), "%s/part-%05u", dir, i);
        part = slurp_file(path, &len);
        if (part == NULL)
            fail_msg("%s is missing", path);
        all = realloc(all, total + len + 1);
        assert_non_null(all);
        memcpy(all + total, part, len);
        total += len;
        free(part);
    }
    *len_p = total;
    return all;
}

static unsigned char *expected_records(sp__gensort_layout_t layout, sp__u128_t start, size_t n)
{
    unsigned char *buf = malloc(n * REC + 1);
    sp__gensort_t gen;

    assert_non_null(buf);
    sp__gensort_init(&gen, layout, start);
    sp__gensort_fill(&gen, buf, n);
    return buf;
}

static void sub_dir(char *path, size_t size, const char *name)
{
    snprintf(path, size, "%s/%s", base_dir, name);
}

static void clear_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[1024];

    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int setup(void **state)
{
    (void)state;
    snprintf(base_dir, sizeof(base_dir), "/tmp/spate-test-cli-gensort-%d", (int)getpid());
    mkdir(base_dir, 0700);
    return 0;
}

static int teardown(void **state)
{
    DIR *d = opendir(base_dir);
    struct dirent *de;
    char path[1024];

    (void)state;
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", base_dir, de->d_name);
        clear_dir(path);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(base_dir);
    return 0;
}

static void test_cli_gensort_one_file_is_gensort(void **state)
{
    enum { N = 12345 };
    char dir[512], want[SP__U128_HEX_SIZE + 1];
    const char *args[] = {"gensort", "-c", "12345", dir, NULL};
    unsigned char *expect = expected_records(SP__GENSORT_V15, 0, N), *got;
    rt_run_t run;
    size_t len;

    (void)state;
    sub_dir(dir, sizeof(dir), "one");
    run = rt_cli(args);
    rt_expect_ok(&run, "gensort -c");
    /* -c: the checksum alone on standard error, like gensort. */
    sp__u128_hex(sp__gensort_checksum(expect, N), want);
    strcat(want, "\n");
    assert_string_equal(run.err, want);
    assert_string_equal(run.out, "");
    got = slurp_parts(dir, 1, &len);
    assert_int_equal(len, (size_t)N * REC);
    assert_memory_equal(got, expect, len);
    rt_free(&run);
    free(got);
    free(expect);
    clear_dir(dir);
}

static void test_cli_gensort_files_concatenate(void **state)
{
    static const struct {
        const char *records, *start, *files, *threads;
        size_t n;
        sp__u128_t start_value;
        unsigned k;
    } cases[] = {
        {"100000", "0", "3", "2", 100000, 0, 3},
        {"100000", "0", "1", "3", 100000, 0, 1}, /* one file, chunks on several threads */
        {"5", "7", "8", "4", 5, 7, 8},           /* more files than records: empty ones */
        {"0", "0", "2", "1", 0, 0, 2},
        {"4321", "18446744073709551610", "4", "3", 4321, ((sp__u128_t)1 << 64) - 6, 4},
    };

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(cases); i++) {
        char dir[512], b[64];
        const char *args[] = {"gensort",      b,           cases[i].records, dir, "--files",
                              cases[i].files, "--threads", cases[i].threads, NULL};
        unsigned char *expect = expected_records(SP__GENSORT_V15, cases[i].start_value, cases[i].n),
                      *got;
        rt_run_t run;
        size_t len;

        snprintf(b, sizeof(b), "-b%s", cases[i].start);
        sub_dir(dir, sizeof(dir), "files");
        run = rt_cli(args);
        rt_expect_ok(&run, "gensort --files");
        got = slurp_parts(dir, cases[i].k, &len);
        assert_int_equal(len, cases[i].n * REC);
        assert_memory_equal(got, expect, len);
        /* Evenly: sizes differ by at most one record, larger ones first. */
        for (unsigned f = 0; f < cases[i].k; f++) {
            char path[600];
            struct stat sb;
            size_t want = cases[i].n / cases[i].k + (f < cases[i].n % cases[i].k);
            snprintf(path, sizeof(path), "%s/part-%05u", dir, f);
            assert_int_equal(stat(path, &sb), 0);
            assert_int_equal((size_t)sb.st_size, want * REC);
        }
        rt_free(&run);
        free(got);
        free(expect);
        clear_dir(dir);
    }
}

static void test_cli_gensort_start_and_layout(void **state)
{
    enum { N = 1000 };
    char dir[512];
    const char *args[] = {"gensort",  "-b",  "340282366920938463463374607431768211000",
                          "--layout", "1.2", "1000",
                          dir,        NULL};
    sp__u128_t start = ~(sp__u128_t)0 - 455; /* wraps past 2^128 like gensort's u16 */
    unsigned char *expect = expected_records(SP__GENSORT_V12, start, N), *got;
    rt_run_t run;
    size_t len;

    (void)state;
    sub_dir(dir, sizeof(dir), "layout");
    run = rt_cli(args);
    rt_expect_ok(&run, "gensort --layout 1.2");
    got = slurp_parts(dir, 1, &len);
    assert_int_equal(len, (size_t)N * REC);
    assert_memory_equal(got, expect, len);
    assert_int_equal(got[10], 0x00);
    assert_int_equal(got[11], 0x11);
    rt_free(&run);
    free(got);
    free(expect);
    clear_dir(dir);
}

static int rec_cmp(const void *a, const void *b) { return memcmp(a, b, REC); }

static void test_cli_valsort_round_trip(void **state)
{
    enum { N = 30000 };
    char dir[512], sorted_dir[512], path[600], checksum[SP__U128_HEX_SIZE];
    const char *gen_args[] = {"gensort", "-c", "--files=4", "30000", dir, NULL};
    const char *val_dir[] = {"valsort", dir, NULL};
    const char *val_sorted[] = {"valsort", "--threads", "3", sorted_dir, NULL};
    const char *val_quiet[] = {"valsort", "-q", sorted_dir, NULL};
    unsigned char *recs;
    rt_run_t run;
    size_t len;
    char want[512];

    (void)state;
    sub_dir(dir, sizeof(dir), "input");
    sub_dir(sorted_dir, sizeof(sorted_dir), "sorted");
    run = rt_cli(gen_args);
    rt_expect_ok(&run, "gensort");
    snprintf(checksum, sizeof(checksum), "%s", run.err);
    checksum[strcspn(checksum, "\n")] = '\0';
    rt_free(&run);

    /* Generated input is not in order. */
    run = rt_cli(val_dir);
    assert_int_equal(run.status, 1);
    assert_non_null(strstr(run.err, "First unordered record is record "));
    assert_non_null(strstr(run.err, "Records: 30000\n"));
    assert_non_null(strstr(run.err, "ERROR - there are "));
    rt_free(&run);

    /* Sorted, split over part-r-* files like a job's output: SUCCESS, same checksum. */
    recs = slurp_parts(dir, 4, &len);
    qsort(recs, N, REC, rec_cmp);
    assert_int_equal(mkdir(sorted_dir, 0700), 0);
    for (int i = 0; i < 3; i++) {
        FILE *f;
        size_t from = (size_t)i * 10000;
        snprintf(path, sizeof(path), "%s/part-r-%05d", sorted_dir, i);
        f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(recs + from * REC, REC, 10000, f), 10000);
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s/_SUCCESS", sorted_dir);
    fclose(fopen(path, "wb"));
    run = rt_cli(val_sorted);
    rt_expect_ok(&run, "valsort of sorted records");
    snprintf(want, sizeof(want),
             "Records: 30000\nChecksum: %s\nDuplicate keys: 0\nSUCCESS - all records are in "
             "order\n",
             checksum);
    assert_string_equal(run.err, want);
    rt_free(&run);
    run = rt_cli(val_quiet);
    assert_int_equal(run.status, 0);
    assert_string_equal(run.err, "");
    rt_free(&run);

    /* A duplicate key is counted, and still in order. */
    memcpy(recs + 20001 * REC, recs + 20000 * REC, SP__GENSORT_KEY_SIZE);
    snprintf(path, sizeof(path), "%s/part-r-00002", sorted_dir);
    {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(recs + 20000 * REC, REC, 10000, f), 10000);
        fclose(f);
    }
    run = rt_cli(val_sorted);
    rt_expect_ok(&run, "valsort with a duplicate");
    assert_non_null(strstr(run.err, "Duplicate keys: 1\n"));
    rt_free(&run);

    /* A truncated file: exit 1 and a message naming it. */
    assert_int_equal(truncate(path, 10000 * REC - 1), 0);
    run = rt_cli(val_sorted);
    assert_int_equal(run.status, 1);
    assert_non_null(strstr(run.err, "part-r-00002"));
    assert_non_null(strstr(run.err, "not a whole number"));
    rt_free(&run);

    free(recs);
    clear_dir(dir);
    clear_dir(sorted_dir);
}

static void test_cli_gensort_refuses_parts_it_would_not_replace(void **state)
{
    char dir[512], path[600];
    const char *three[] = {"gensort", "--files", "3", "300", dir, NULL};
    const char *two[] = {"gensort", "--files", "2", "300", dir, NULL};
    rt_run_t run;
    size_t len;
    unsigned char *got, *expect = expected_records(SP__GENSORT_V15, 0, 300);

    (void)state;
    sub_dir(dir, sizeof(dir), "stale");
    run = rt_cli(three);
    rt_expect_ok(&run, "gensort --files 3");
    rt_free(&run);
    run = rt_cli(two);
    assert_int_equal(run.status, 1);
    assert_non_null(strstr(run.err, "part-00002"));
    rt_free(&run);
    /* Nothing was touched, and the same run again replaces its files. */
    got = slurp_parts(dir, 3, &len);
    assert_memory_equal(got, expect, 300 * REC);
    free(got);
    run = rt_cli(three);
    rt_expect_ok(&run, "gensort --files 3 again");
    rt_free(&run);
    got = slurp_parts(dir, 3, &len);
    assert_int_equal(len, 300 * REC);
    assert_memory_equal(got, expect, len);
    free(got);

    /* OUTDIR that is a file. */
    snprintf(path, sizeof(path), "%s/part-00000", dir);
    {
        const char *args[] = {"gensort", "10", path, NULL};
        run = rt_cli(args);
        assert_int_equal(run.status, 1);
        assert_non_null(strstr(run.err, "spate gensort:"));
        rt_free(&run);
    }
    free(expect);
    clear_dir(dir);
}

static void test_cli_gensort_help(void **state)
{
    static const char *const gen[] = {"gensort", "--help", NULL};
    static const char *const val[] = {"valsort", "-h", NULL};
    rt_run_t run;

    (void)state;
    run = rt_cli(gen);
    assert_int_equal(run.status, 0);
    assert_non_null(strstr(run.out, "usage: spate gensort"));
    assert_non_null(strstr(run.out, "--files K"));
    rt_free(&run);
    run = rt_cli(val);
    assert_int_equal(run.status, 0);
    assert_non_null(strstr(run.out, "usage: spate valsort"));
    rt_free(&run);
}

static void test_cli_gensort_bad_arguments(void **state)
{
    char dir[512], missing[512];
    const char *bad[][8] = {
        {"gensort", NULL},
        {"gensort", "100", NULL},
        {"gensort", "12x", dir, NULL},
        {"gensort", "-5", dir, NULL},
        {"gensort", "100", dir, "--files", "0", NULL},
        {"gensort", "100", dir, "--files", NULL},
        {"gensort", "100", dir, "--files=1000001", NULL},
        {"gensort", "100", dir, "--threads", "many", NULL},
        {"gensort", "-b", "1e6", "100", dir, NULL},
        {"gensort", "-b340282366920938463463374607431768211456", "100", dir, NULL},
        {"gensort", "184467440737095517", dir, NULL}, /* 100 times that overflows 64 bits */
        {"gensort", "--layout", "2.0", "100", dir, NULL},
        {"gensort", "--frobnicate", "100", dir, NULL},
        {"gensort", "100", dir, "extra", NULL},
        {"valsort", NULL},
        {"valsort", "--threads", "0", dir, NULL},
        {"valsort", "-x", dir, NULL},
        {"valsort", dir, dir, NULL},
    };
    rt_run_t run;

    (void)state;
    sub_dir(dir, sizeof(dir), "bad");
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        char prefix[32];
        run = rt_cli(bad[i]);
        if (run.status != 2)
            fail_msg("case %zu (%s %s) exited %d: %s", i, bad[i][0], bad[i][1] ? bad[i][1] : "",
                     run.status, run.err);
        snprintf(prefix, sizeof(prefix), "spate %s:", bad[i][0]);
        assert_non_null(strstr(run.err, prefix));
        rt_free(&run);
    }
    /* Nothing was created by a refused command line. */
    assert_int_equal(access(dir, F_OK), -1);

    /* valsort of what is not there, or holds no part files: 1 and a message. */
    sub_dir(missing, sizeof(missing), "nothing-here");
    {
        const char *args[] = {"valsort", missing, NULL};
        run = rt_cli(args);
        assert_int_equal(run.status, 1);
        assert_non_null(strstr(run.err, "nothing-here"));
        rt_free(&run);
        assert_int_equal(mkdir(missing, 0700), 0);
        run = rt_cli(args);
        assert_int_equal(run.status, 1);
        assert_non_null(strstr(run.err, "no part-r-* or part-* files"));
        rt_free(&run);
    }
    /* Part files with no records: valsort's "at least one record". */
    {
        const char *gen[] = {"gensort", "0", missing, NULL};
        const char *val[] = {"valsort", missing, NULL};
        run = rt_cli(gen);
        rt_expect_ok(&run, "gensort 0");
        rt_free(&run);
        run = rt_cli(val);
        assert_int_equal(run.status, 1);
        assert_non_null(strstr(run.err, "at least one record"));
        rt_free(&run);
    }
    clear_dir(missing);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_gensort_one_file_is_gensort),
        cmocka_unit_test(test_cli_gensort_files_concatenate),
        cmocka_unit_test(test_cli_gensort_start_and_layout),
        cmocka_unit_test(test_cli_valsort_round_trip),
        cmocka_unit_test(test_cli_gensort_refuses_parts_it_would_not_replace),
        cmocka_unit_test(test_cli_gensort_help),
        cmocka_unit_test(test_cli_gensort_bad_arguments),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
