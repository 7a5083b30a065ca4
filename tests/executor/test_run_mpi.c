/*
 * `spate run` under mpirun: the test itself launches `mpiexec -n N
 * --oversubscribe $SPATE_CLI run ...` (so it is labelled slow, not mpi:
 * tests labelled mpi are started under mpiexec by CTest), every rank an
 * executor and rank 0 also the driver:
 * - terasort --size 16m on 2 and on 4 ranks, and on 2 ranks with the mpi
 *   transport backend (MPI one-sided reads): valsort passes, the checksum
 *   is gensort's for the same records;
 * - wordcount on 2 ranks against a reference count made here;
 * - the shuffle job (its finish() checks what the reduce side read) on 2
 *   and 4 ranks and with the mpi transport.
 * The --json report, written by rank 0, must say the run succeeded on as
 * many executors as ranks. Everything stays on loopback.
 *
 * The test skips itself when no mpiexec is in PATH; terasort cases skip
 * while `spate run --help` does not list the job.
 *
 * LABELS: slow
 */
#include "run_test_util.h"

static char base[256];
static char local_conf[512];
static char scratch[300];

static int setup(void **state)
{
    char local[300];

    (void)state;
    rt_env_loopback();
    setenv("OMPI_MCA_btl", "self,vader,tcp", 1);
    rt_mkdtemp(base, sizeof(base), "run-mpi");
    rt_path(local, sizeof(local), base, "local");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    return mkdir(local, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

static void skip_without_mpiexec(void)
{
    rt_run_t run = rt_spawn_env((const char *const[]){"mpiexec", "--version", NULL}, NULL, 30);

    if (run.status != 0) {
        print_message("no working mpiexec in PATH (exit %d): skipped\n", run.status);
        rt_free(&run);
        skip();
    }
    rt_free(&run);
}

/* mpiexec -n ranks $SPATE_CLI run JOB args... --json JSON; the report, checked for success. */
static json_t *mpi_run(const char *ranks, const char *const *args, const char *what)
{
    const char *cli = getenv("SPATE_CLI");
    const char *argv[64] = {"mpiexec", "-n", ranks, "--oversubscribe", cli, "run"};
    char json[300];
    size_t n = 6;
    rt_run_t run;
    json_t *rep;

    assert_non_null(cli);
    rt_path(json, sizeof(json), base, "report.json");
    unlink(json);
    for (size_t i = 0; args[i] != NULL; i++)
        argv[n++] = args[i];
    argv[n++] = "--json";
    argv[n++] = json;
    argv[n++] = "--conf";
    argv[n++] = local_conf;
    argv[n++] = "--no-progress";
    argv[n++] = "--no-baseline";
    argv[n] = NULL;
    run = rt_spawn_env(argv, NULL, RT_TIMEOUT_S);
    rt_expect_ok(&run, what);
    rep = rt_json_load(json);
    rt_expect_report(rep, (unsigned)strtoul(ranks, NULL, 10), true);
    rt_free(&run);
    return rep;
}

static void terasort(const char *ranks, const char *transport)
{
    char out[300], what[64];
    unsigned long long records;
    json_t *rep;

    skip_without_mpiexec();
    if (!rt_has_job("terasort")) {
        print_message("terasort is not a built-in job of this spate yet: skipped\n");
        skip();
    }
    rt_path(out, sizeof(out), base, "terasort-out");
    rt_rmtree(out);
    snprintf(what, sizeof(what), "mpiexec -n %s spate run terasort --transport %s", ranks,
             transport);
    rep = mpi_run(ranks,
                  (const char *const[]){"terasort", "--size", "16m", "--output", out, "--transport",
                                        transport, NULL},
                  what);
    records = (unsigned long long)rt_json_int(rep, "reduce_records");
    assert_true(records == (16ull << 20) / 100 || records == ((16ull << 20) + 99) / 100);
    rt_expect_sorted(out, records, scratch);
    if (rt_json_int(rep, "stages.reduce.remote_bytes") <= 0)
        fail_msg("%s: no byte was read from another rank", what);
    json_decref(rep);
    rt_rmtree(out);
}

static void test_run_mpi_terasort_2_ranks(void **state)
{
    (void)state;
    terasort("2", "ofi");
}

static void test_run_mpi_terasort_4_ranks(void **state)
{
    (void)state;
    terasort("4", "ofi");
}

static void test_run_mpi_terasort_mpi_transport(void **state)
{
    (void)state;
    terasort("2", "mpi");
}

static void test_run_mpi_wordcount_2_ranks(void **state)
{
    uint64_t counts[RT_WC_VOCAB] = {0};
    char in[300], out[300];
    json_t *rep;

    (void)state;
    skip_without_mpiexec();
    rt_path(in, sizeof(in), base, "words");
    rt_path(out, sizeof(out), base, "wordcount-out");
    rt_rmtree(in);
    rt_rmtree(out);
    rt_wc_make_texts(in, 3, 256 << 10, counts);
    rep = mpi_run("2",
                  (const char *const[]){"wordcount", "--input", in, "--output", out, "--partitions",
                                        "3", "--job-arg", "split_size=64k", NULL},
                  "mpiexec -n 2 spate run wordcount");
    rt_wc_expect_counts(out, counts);
    assert_int_equal(rt_part_count(out), 3);
    json_decref(rep);
    rt_rmtree(in);
    rt_rmtree(out);
}

static void shuffle(const char *ranks, const char *transport)
{
    char what[64];
    json_t *rep;

    skip_without_mpiexec();
    snprintf(what, sizeof(what), "mpiexec -n %s spate run shuffle --transport %s", ranks,
             transport);
    rep = mpi_run(ranks,
                  (const char *const[]){"shuffle", "--job-arg", "records=200000", "--job-arg",
                                        "maps=4", "--partitions", "6", "--transport", transport,
                                        NULL},
                  what);
    assert_int_equal(rt_json_int(rep, "map_records"), 200000);
    assert_int_equal(rt_json_int(rep, "reduce_records"), 200000);
    for (int i = 0; i < 3; i++) {
        char a[16], b[16];
        snprintf(a, sizeof(a), "counters.%d", i);
        snprintf(b, sizeof(b), "counters.%d", i + 3);
        assert_int_equal(rt_json_int(rep, a), rt_json_int(rep, b));
    }
    if (rt_json_int(rep, "stages.reduce.remote_bytes") <= 0)
        fail_msg("%s: no byte was read from another rank", what);
    json_decref(rep);
}

static void test_run_mpi_shuffle_2_ranks(void **state)
{
    (void)state;
    shuffle("2", "ofi");
}

static void test_run_mpi_shuffle_4_ranks(void **state)
{
    (void)state;
    shuffle("4", "ofi");
}

static void test_run_mpi_shuffle_mpi_transport(void **state)
{
    (void)state;
    shuffle("2", "mpi");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_mpi_terasort_2_ranks),
        cmocka_unit_test(test_run_mpi_terasort_4_ranks),
        cmocka_unit_test(test_run_mpi_terasort_mpi_transport),
        cmocka_unit_test(test_run_mpi_wordcount_2_ranks),
        cmocka_unit_test(test_run_mpi_shuffle_2_ranks),
        cmocka_unit_test(test_run_mpi_shuffle_4_ranks),
        cmocka_unit_test(test_run_mpi_shuffle_mpi_transport),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
