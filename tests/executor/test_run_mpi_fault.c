/*
 * A silent driver under mpirun: rank 0 (driver and executor 0) stops itself
 * (SPATE_FAULT_STOP_DRIVER=map:1, SIGSTOP) in the middle of the map stage.
 * The other ranks hear no PING for executor.driver_timeout and exit with a
 * message that says so, instead of hanging until an outer timeout; mpirun
 * then ends the job, and the ranks that exited leave no shuffle directory
 * (rank 0, killed while stopped, cannot clean up). Also in local mode: the executors of a stopped
 * `spate run` exit the same way, and leave no shuffle file behind.
 *
 * The test launches `mpiexec -n 2 --oversubscribe $SPATE_CLI run ...` itself
 * (labelled slow, not mpi) and skips itself when no mpiexec is in PATH.
 *
 * LABELS: slow fault
 */
#include "taskfail_util.h"

static char base[256];
static char local[300], local_conf[400], out[300];

/* A shuffle directory of its own for each test, so one test's leftovers cannot fail another. */
static void fresh_local(const char *name)
{
    rt_path(local, sizeof(local), base, name);
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    assert_int_equal(mkdir(local, 0700), 0);
}

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    setenv("OMPI_MCA_btl", "self,vader,tcp", 1);
    rt_mkdtemp(base, sizeof(base), "mpi-fault");
    rt_path(out, sizeof(out), base, "out");
    if (getenv("SPATE_FAULT_PLUGIN") == NULL)
        fail_msg("SPATE_FAULT_PLUGIN is not set: run this test through ctest");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* Whether a directory named name is left anywhere under dir. */
static bool exec_dir_left(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    bool found = false;

    if (d == NULL)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        char path[4096];
        if (e->d_name[0] == '.' || e->d_type != DT_DIR)
            continue;
        snprintf(path, sizeof(path), "%.3000s/%.255s", dir, e->d_name);
        found = strcmp(e->d_name, name) == 0 || exec_dir_left(path, name);
    }
    closedir(d);
    return found;
}

static bool have_mpiexec(void)
{
    rt_run_t run = rt_spawn_env((const char *const[]){"mpiexec", "--version", NULL}, NULL, 60);
    bool ok = run.status == 0;

    rt_free(&run);
    return ok;
}

static void test_run_mpi_silent_rank0_ends_ranks(void **state)
{
    const char *cli = getenv("SPATE_CLI");
    rt_run_t run;

    (void)state;
    if (!have_mpiexec()) {
        print_message("no mpiexec in PATH: skipped\n");
        skip();
    }
    fresh_local("local-mpi");
    run = rt_spawn_env((const char *const[]){"mpiexec",
                                             "-n",
                                             "2",
                                             "--oversubscribe",
                                             cli,
                                             "run",
                                             getenv("SPATE_FAULT_PLUGIN"),
                                             "--cores",
                                             "1",
                                             "--conf",
                                             local_conf,
                                             "--conf",
                                             "executor.driver_timeout=3s",
                                             "--no-progress",
                                             "--job-arg",
                                             "fault=sleep",
                                             "--job-arg",
                                             "task=-1",
                                             "--job-arg",
                                             "sleep_ms=1000",
                                             "--job-arg",
                                             "maps=8",
                                             NULL},
                       (const char *const[]){"SPATE_FAULT_STOP_DRIVER=map:1", NULL}, RT_TIMEOUT_S);
    if (run.status == 0)
        fail_msg("the job succeeded with its driver stopped: %s", rt_tail(run.err));
    if (strstr(run.err, "fault injection: stopping the driver") == NULL)
        fail_msg("the driver was not stopped: %s", rt_tail(run.err));
    if (strstr(run.err, "heard nothing from the driver") == NULL ||
        strstr(run.err, "executor.driver_timeout") == NULL)
        fail_msg("no rank said its driver went silent: %s", rt_tail(run.err));
    /* Rank 1 cleaned up before it went; rank 0, killed while stopped, could not. */
    if (exec_dir_left(local, "exec-1"))
        fail_msg("rank 1 left its shuffle directory; stderr: %s", rt_tail(run.err));
    rt_free(&run);
}

static void test_run_local_stopped_driver_ends_executors(void **state)
{
    tf_run_t r;
    rt_run_t run;

    (void)state;
    rt_rmtree(out);
    fresh_local("local-local");
    tf_start(&r, NULL, (const char *const[]){"run",           getenv("SPATE_FAULT_PLUGIN"),
                                             "--executors",   "2",
                                             "--cores",       "1",
                                             "--output",      out,
                                             "--conf",        local_conf,
                                             "--conf",        "executor.driver_timeout=3s",
                                             "--no-progress", "--job-arg",
                                             "fault=sleep",   "--job-arg",
                                             "task=-1",       "--job-arg",
                                             "sleep_ms=1000", "--job-arg",
                                             "maps=8",        NULL},
             (const char *const[]){"SPATE_FAULT_STOP_DRIVER=map:1", NULL});
    /* The driver stays stopped; its executors must go by themselves. */
    for (double until = rt_now() + 60; rt_now() < until; usleep(100000)) {
        char path[64], state_line[512] = "";
        FILE *f;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)r.bg.pid);
        if ((f = fopen(path, "r")) != NULL) {
            if (fgets(state_line, sizeof(state_line), f) == NULL)
                state_line[0] = '\0';
            fclose(f);
        }
        if (strstr(state_line, ") T ") != NULL && tf_marked(&r) == 1)
            break; /* stopped, and only the driver is left */
    }
    assert_int_equal(tf_marked(&r), 1);
    kill(r.bg.pid, SIGKILL);
    run = tf_finish(&r, RT_TIMEOUT_S, 10);
    if (strstr(run.err, "heard nothing from the driver") == NULL)
        fail_msg("no executor said its driver went silent: %s", rt_tail(run.err));
    if (!tf_dir_empty(local))
        fail_msg("the executors left shuffle files; stderr: %s", rt_tail(run.err));
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_mpi_silent_rank0_ends_ranks),
        cmocka_unit_test(test_run_local_stopped_driver_ends_executors),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
