/*
 * `spate run terasort --size 128m --conf transport.timeout=1ms` (and 5ms) on a
 * local cluster of 3 executors over the ofi backend (tcp;ofi_rxm on loopback),
 * several times (issue 13, case 8). A block of ~12 MiB cannot be read in
 * 1 ms, so reads time out while libfabric still holds them; executors used
 * to crash (SIGSEGV in libfabric under the transport's close) because the
 * buffer of a timed-out read was freed under the provider. Each run must
 * either succeed with sorted, complete output (valsort), or fail with exit 1
 * and a message naming the timeout: never a signal in the exit status, no
 * "terminated with signal" or SIGSEGV in its stderr (nor an AddressSanitizer
 * report, with SPATE_CLI from the ASan build), and no process of the run
 * (executors) left once it has exited.
 *
 * LABELS: fault
 */
#include "run_test_util.h"

#define RUNS    3
#define RECORDS 1342177ull /* 128 MiB of 100-byte records */

static char base[256];
static char local_conf[512]; /* shuffle.local_dirs=BASE/local */
static char scratch[300];

static int setup(void **state)
{
    char local[300];

    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-timeout");
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

/*
 * Whether a process of group pgid is still there once its leader exited,
 * waiting up to 10 s for the stragglers to go; whatever is left then is
 * killed (and reported).
 */
static bool group_left_behind(pid_t pgid)
{
    double until = rt_now() + 10;

    while (kill(-pgid, 0) == 0) {
        if (rt_now() > until) {
            kill(-pgid, SIGKILL);
            return true;
        }
        usleep(50000);
    }
    return false;
}

/*
 * Runs $SPATE_CLI args in a process group of its own (like rt_spawn_env) and
 * reports in *left_p whether any process of the group outlived it.
 */
static rt_run_t run_cli(const char *const *args, bool *left_p)
{
    const char *argv[RT_ARGV_MAX];
    rt_bg_t bg;
    rt_run_t run;

    rt_cli_argv(args, argv);
    rt_bg_start(&bg, argv, NULL);
    run = rt_bg_wait(&bg, RT_TIMEOUT_S, NULL, NULL);
    *left_p = group_left_behind(bg.pid);
    rt_bg_collect(&bg, &run);
    if (run.timed_out)
        fail_msg("spate run did not end within %d s; stderr: %s", RT_TIMEOUT_S, rt_tail(run.err));
    return run;
}

/* RUNS runs with transport.timeout=TIMEOUT (a duration in ms), each one checked. */
static void terasort_with_timeout(const char *timeout)
{
    char conf[64], phrase[64];
    unsigned ok = 0, failed = 0;

    snprintf(conf, sizeof(conf), "transport.timeout=%s", timeout);
    snprintf(phrase, sizeof(phrase), "did not complete in %.*s ms", (int)strlen(timeout) - 2,
             timeout);
    if (!rt_has_job("terasort")) {
        print_message("terasort is not a built-in job of this spate yet: skipped\n");
        skip();
    }
    for (int i = 0; i < RUNS; i++) {
        char out[300];
        bool left = false;
        rt_run_t run;

        rt_path(out, sizeof(out), base, "out");
        rt_rmtree(out);
        run = run_cli((const char *const[]){"run", "terasort", "--executors", "3", "--size", "128m",
                                            "--output", out, "--transport", "ofi", "--provider",
                                            "tcp;ofi_rxm", "--conf", conf, "--conf", local_conf,
                                            "--no-progress", "--no-baseline", NULL},
                      &left);
        if (run.signal != 0 || strstr(run.err, "terminated with signal") != NULL ||
            strstr(run.err, "SIGSEGV") != NULL || strstr(run.err, "died of") != NULL ||
            strstr(run.err, "AddressSanitizer") != NULL)
            fail_msg("run %d crashed: exit %d, signal %d; stderr: %s", i, run.status, run.signal,
                     rt_tail(run.err));
        if (left)
            fail_msg("run %d left processes of its group behind (killed now); stderr: %s", i,
                     rt_tail(run.err));
        if (run.status == 0) {
            rt_expect_sorted(out, RECORDS, scratch);
            ok++;
        } else {
            if (run.status != 1)
                fail_msg("run %d: exit %d, want 0 or 1; stderr: %s", i, run.status,
                         rt_tail(run.err));
            /* The reads that timed out are named, with the peer they were reading. */
            if (strstr(run.err, "SP_ERR_TIMED_OUT") == NULL ||
                (strstr(run.err, phrase) == NULL &&
                 strstr(run.err, "could not be posted in time") == NULL) ||
                strstr(run.err, "from peer ") == NULL)
                fail_msg("run %d failed without naming the timeout; stderr: %s", i,
                         rt_tail(run.err));
            if (strstr(run.err, "fetch") == NULL)
                fail_msg("run %d: the failure does not say a fetch failed: %s", i,
                         rt_tail(run.err));
            assert_false(rt_exists(out, "_SUCCESS"));
            failed++;
        }
        rt_free(&run);
    }
    print_message("transport.timeout=%s: %u runs succeeded, %u failed naming the timeout\n",
                  timeout, ok, failed);
}

/* The case of the issue: no 12 MiB block is read in 1 ms. */
static void test_run_terasort_fetch_timeout_1ms(void **state)
{
    (void)state;
    terasort_with_timeout("1ms");
}

/*
 * Some reads end, others time out and go on while their owner deregisters
 * its outputs: this crashed an executor in most runs (even of jobs that
 * succeeded) until served chunks kept their addresses.
 */
static void test_run_terasort_fetch_timeout_5ms(void **state)
{
    (void)state;
    terasort_with_timeout("5ms");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_terasort_fetch_timeout_1ms),
        cmocka_unit_test(test_run_terasort_fetch_timeout_5ms),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
