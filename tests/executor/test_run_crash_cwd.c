/*
 * A crash leaves nothing in the user's working directory (issue 13, case
 * 13). libinfinipath, loaded with libfabric's psm provider before main(),
 * installs fatal-signal handlers that write `spate.<time>-<pid>,<host>.btr`
 * into the working directory; launcher/main.c keeps them out of spate's
 * processes. Each case runs the real `spate` (SPATE_CLI) in an empty
 * directory, without IPATH_NO_BACKTRACE in the environment (spate must set
 * it itself) and with core dumps off (a core file is the user's choice of
 * `ulimit -c`, not what this test is about), and asserts the directory is
 * still empty afterwards:
 * - a map task of the fault plugin (SPATE_FAULT_PLUGIN) that dereferences
 *   NULL, and one that calls abort(), in the executors spate starts: the run
 *   fails (only "non-zero" is asserted; which code and message is the
 *   driver's business);
 * - the driver process itself killed with SIGSEGV while its executors run a
 *   task that hangs: the handlers its own process got at load time are gone
 *   too, so the signal's default action ends it.
 *
 * LABELS: fault
 */
#include "run_test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>

static char base[256];

static int setup(void **state)
{
    struct rlimit no_core = {0, 0};

    (void)state;
    rt_env_loopback();
    /* spate has to keep the handlers away by itself. */
    unsetenv("IPATH_NO_BACKTRACE");
    setrlimit(RLIMIT_CORE, &no_core);
    rt_mkdtemp(base, sizeof(base), "crash-cwd");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

static const char *fault_plugin(void)
{
    const char *plugin = getenv("SPATE_FAULT_PLUGIN");

    if (plugin == NULL || access(plugin, R_OK) != 0)
        fail_msg("SPATE_FAULT_PLUGIN (%s) is not a readable plugin: run this test through ctest",
                 plugin != NULL ? plugin : "unset");
    return plugin;
}

/* Fails the test when dir holds anything, naming what. */
static void expect_empty(const char *dir, const char *what)
{
    char names[1024] = "";
    size_t used = 0;
    unsigned count = 0;
    struct dirent *e;
    DIR *d = opendir(dir);

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        count++;
        if (used < sizeof(names) - 1) {
            int n = snprintf(names + used, sizeof(names) - used, " %s", e->d_name);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    closedir(d);
    if (count > 0)
        fail_msg("%s left %u file(s) in its working directory %s:%s", what, count, dir, names);
}

/* A fresh empty directory under base. */
static void fresh_dir(char *dir, size_t cap, const char *name)
{
    rt_path(dir, cap, base, name);
    rt_rmtree(dir);
    assert_int_equal(mkdir(dir, 0700), 0);
}

static void test_run_task_crash_leaves_cwd_empty(void **state)
{
    static const char *const faults[] = {"fault=segv", "fault=abort"};
    const char *plugin = fault_plugin();
    char old_cwd[4096], cwd[300];

    (void)state;
    assert_non_null(getcwd(old_cwd, sizeof(old_cwd)));
    for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
        rt_run_t run;

        fresh_dir(cwd, sizeof(cwd), faults[i] + 6);
        assert_int_equal(chdir(cwd), 0);
        run = RT_CLI("run", plugin, "--executors", "2", "--job-arg", faults[i], "--no-progress",
                     "--no-baseline");
        assert_int_equal(chdir(old_cwd), 0);
        if (run.status == 0)
            fail_msg("%s: the run succeeded; stderr: %s", faults[i], rt_tail(run.err));
        expect_empty(cwd, faults[i]);
        rt_free(&run);
    }
}

/* The pid of a process whose parent is parent, or 0 (from /proc). */
static pid_t child_of(pid_t parent)
{
    DIR *proc = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;

    assert_non_null(proc);
    while (found == 0 && (e = readdir(proc)) != NULL) {
        char path[300], buf[512], *close_paren;
        long pid = strtol(e->d_name, NULL, 10);
        int ppid = 0;
        FILE *f;

        if (pid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        if ((f = fopen(path, "r")) == NULL)
            continue;
        /* "pid (comm) state ppid ...": comm may hold spaces, so start after its ')'. */
        if (fgets(buf, sizeof(buf), f) != NULL && (close_paren = strrchr(buf, ')')) != NULL &&
            sscanf(close_paren + 1, " %*c %d", &ppid) == 1 && ppid == parent)
            found = (pid_t)pid;
        fclose(f);
    }
    closedir(proc);
    return found;
}

static void test_driver_crash_leaves_cwd_empty(void **state)
{
    const char *plugin = fault_plugin(), *argv[RT_ARGV_MAX];
    double deadline;
    rt_bg_t bg;
    char cwd[300];
    int wstatus = 0;
    pid_t pid;

    (void)state;
    fresh_dir(cwd, sizeof(cwd), "driver");
    rt_cli_argv((const char *const[]){"run", plugin, "--executors", "2", "--job-arg", "fault=hang",
                                      "--job-arg", "task=-1", "--no-progress", NULL},
                argv);
    rt_bg_start(&bg, argv, &(rt_bg_opts_t){.cwd = cwd, .out_null = true, .err_path = "/dev/null"});
    pid = bg.pid;
    /* Once the driver has started an executor, its main() has long run. */
    deadline = rt_now() + RT_TIMEOUT_S;
    while (child_of(pid) == 0 && waitpid(pid, &wstatus, WNOHANG) == 0 && rt_now() < deadline)
        usleep(20000);
    if (child_of(pid) == 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, &wstatus, 0);
        fail_msg("the driver started no executor within %d s", RT_TIMEOUT_S);
    }
    kill(pid, SIGSEGV);
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    kill(-pid, SIGKILL); /* its executors */
    if (!WIFSIGNALED(wstatus) || WTERMSIG(wstatus) != SIGSEGV)
        fail_msg("a driver sent SIGSEGV ended with wait status %#x, not by the signal's default "
                 "action: a foreign handler caught it",
                 (unsigned)wstatus);
    expect_empty(cwd, "a driver killed by SIGSEGV");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_task_crash_leaves_cwd_empty),
        cmocka_unit_test(test_driver_crash_leaves_cwd_empty),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
