/* LABELS: fault */
/*
 * The output commit protocol and interrupts, through the real `spate run`
 * (issue 13, cases 4 and 11), with the fault plugin (SPATE_FAULT_PLUGIN):
 *
 * - two runs into one --output: the second is refused (exit 2, naming the
 *   first's pid) while the first holds the directory, and the first's
 *   output is complete;
 * - a run that fails never removes another run's parts, whatever the order
 *   of the two runs: the directory ends with a whole output and _SUCCESS, or
 *   with nothing of the failed run;
 * - the lock of a dead run (a reaped pid, or a live pid that started at
 *   another time) is taken over with a warning and the run succeeds; a live
 *   holder on this host or any holder on another host is refused;
 * - SIGINT (sent to the process group, as a terminal's Ctrl-C is) and
 *   SIGTERM (to spate alone) mid-job: exit 130/143 with a message naming the
 *   signal, no _temporary, lock, part file or _SUCCESS, an empty shuffle
 *   directory, and none of the executors left.
 *
 * Runs that must overlap start in the background (bg_start) and the test
 * waits for the files that show where they are, under generous deadlines;
 * nothing here asserts on elapsed time.
 */
#include "run_test_util.h"

#include <dirent.h>
#include <fcntl.h>

/* Deadline for what a background run must reach (a file appears, it exits). */
#define BG_DEADLINE_S 120

static char base[256];

/* A background `spate run`: its pid, and its stderr in a file. */
typedef struct bg_run {
    rt_bg_t bg;
    char err_path[512];
} bg_run_t;

/* Background runs and executors not yet known to be gone, for teardown. */
static pid_t leftovers[64];
static size_t nleftovers;

static void note_leftover(pid_t pid)
{
    if (nleftovers < sizeof(leftovers) / sizeof(leftovers[0]))
        leftovers[nleftovers++] = pid;
}

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "commit");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    /* A failed test may have left its runs behind: end them (by pid, each ours). */
    for (size_t i = 0; i < nleftovers; i++)
        if (leftovers[i] > 0 && kill(leftovers[i], 0) == 0)
            kill(leftovers[i], SIGKILL);
    rt_rmtree(base);
    return 0;
}

static const char *plugin(void)
{
    const char *p = getenv("SPATE_FAULT_PLUGIN");

    if (p == NULL)
        fail_msg("SPATE_FAULT_PLUGIN is not set: run this test through ctest");
    return p;
}

static void under_base(char *path, size_t cap, const char *name) { rt_path(path, cap, base, name); }

/* A /proc file (whose size stat() does not know), NUL-terminated, malloc'ed; NULL when unreadable.
 */
static char *read_proc(const char *path)
{
    char *text = malloc(4096);
    ssize_t n;
    int fd;

    assert_non_null(text);
    if ((fd = open(path, O_RDONLY)) < 0) {
        free(text);
        return NULL;
    }
    n = read(fd, text, 4095);
    close(fd);
    if (n < 0) {
        free(text);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/*
 * Starts $SPATE_CLI with args in the background, leading its own process
 * group (as a shell's job does), with SIGINT at its default disposition
 * and stderr in a file named after tag.
 */
static bg_run_t bg_start(const char *tag, const char *const *args)
{
    const char *argv[RT_ARGV_MAX];
    bg_run_t run = {0};

    rt_cli_argv(args, argv);
    snprintf(run.err_path, sizeof(run.err_path), "%s/%s.err", base, tag);
    rt_bg_start(
        &run.bg, argv,
        &(rt_bg_opts_t){.err_path = run.err_path, .out_null = true, .default_signals = true});
    note_leftover(run.bg.pid);
    return run;
}

/* The run's stderr so far, malloc'ed. */
static char *bg_err(const bg_run_t *run)
{
    char *text = rt_read_file(run->err_path, NULL);

    assert_non_null(text);
    return text;
}

/* Whether the run is still running (not reaped here yet). */
static bool bg_running(const bg_run_t *run) { return waitpid(run->bg.pid, NULL, WNOHANG) == 0; }

/* Waits for the run's end; returns its exit code (128 + N when signal N ended it). */
static int bg_wait(bg_run_t *run)
{
    /* BG_DEADLINE_S from now, however long the run has been going. */
    rt_run_t r =
        rt_bg_wait(&run->bg, (unsigned)(rt_now() - run->bg.start) + BG_DEADLINE_S, NULL, NULL);

    kill(-run->bg.pid, SIGKILL); /* anything left in its group */
    if (r.timed_out) {
        char *err = bg_err(run);
        fail_msg("spate run (pid %d) did not end within %d s; stderr: %s", (int)run->bg.pid,
                 BG_DEADLINE_S, rt_tail(err));
    }
    return r.signal == 0 ? r.status : 128 + r.signal;
}

/* Whether dir/name or dir/<a subdirectory>/name exists. */
static bool entry_exists(const char *dir, const char *name)
{
    struct dirent *e;
    bool found;
    DIR *d;

    if (rt_exists(dir, name))
        return true;
    if ((d = opendir(dir)) == NULL)
        return false;
    for (found = false; !found && (e = readdir(d)) != NULL;) {
        char sub[1024];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(sub, sizeof(sub), "%s/%s/%s", dir, e->d_name, name);
        found = access(sub, F_OK) == 0;
    }
    closedir(d);
    return found;
}

/*
 * Waits, while the run goes on, until dir/name or dir/<a subdirectory>/name
 * exists: where the run is. Fails when it ends first or the deadline passes.
 */
static void bg_wait_for(bg_run_t *run, const char *dir, const char *name)
{
    double deadline = rt_now() + BG_DEADLINE_S;

    while (!entry_exists(dir, name)) {
        if (!bg_running(run)) {
            char *err = bg_err(run);
            fail_msg("spate run ended before %s appeared in %s; stderr: %s", name, dir,
                     rt_tail(err));
        }
        if (rt_now() > deadline)
            fail_msg("%s did not appear in %s within %d s", name, dir, BG_DEADLINE_S);
        usleep(20000);
    }
}

/* Arguments of a fault-plugin run into out: 4 maps of 1000 records, 2 partitions. */
#define FAULT_RUN(out, ...)                                                                        \
    (const char *const[])                                                                          \
    {                                                                                              \
        "run", plugin(), "--executors", "2", "--output", out, "--no-baseline", "--no-progress",    \
            __VA_ARGS__, NULL                                                                      \
    }

/* The lines of every part-r file of out: the fault job writes one per record. */
static unsigned long output_lines(const char *out)
{
    unsigned parts = rt_part_count(out);
    unsigned long lines = 0;

    for (unsigned p = 0; p < parts; p++) {
        char name[32], path[600];
        size_t len = 0;
        char *text;
        snprintf(name, sizeof(name), "part-r-%05u", p);
        rt_path(path, sizeof(path), out, name);
        text = rt_read_file(path, &len);
        assert_non_null(text);
        for (size_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        free(text);
    }
    return lines;
}

/* out holds the fault job's whole output: 2 parts, 4000 records, _SUCCESS, no temporaries. */
static void expect_fault_output(const char *out)
{
    rt_expect_output(out, 2);
    assert_int_equal(output_lines(out), 4000);
}

/* The pid in a message "pid N": whether text names pid. */
static bool names_pid(const char *text, long pid)
{
    char needle[32];

    snprintf(needle, sizeof(needle), "pid %ld", pid);
    return strstr(text, needle) != NULL;
}

/* ------------------------------------------------------------------------ */
/* Two runs into one output                                                  */
/* ------------------------------------------------------------------------ */

static void test_commit_second_run_refused_while_first_holds(void **state)
{
    char out[300], local[300], conf[400];
    bg_run_t first;
    rt_run_t second;
    char *err;

    (void)state;
    under_base(out, sizeof(out), "out-two");
    under_base(local, sizeof(local), "local-two");
    snprintf(conf, sizeof(conf), "shuffle.local_dirs=%s", local);
    first = bg_start("two-first", FAULT_RUN(out, "--conf", conf, "--job-arg", "fault=sleep",
                                            "--job-arg", "sleep_ms=5000"));
    /* Its executors are up (their shuffle directories exist): it holds the output by now. */
    bg_wait_for(&first, local, "exec-0");
    second = rt_cli(FAULT_RUN(out, "--job-arg", "records=10"));
    if (!bg_running(&first))
        fail_msg("the first run ended before the second was refused: nothing was tested");
    rt_expect_fail(&second, 2, "in use", "a second run into an output a live run holds");
    if (!names_pid(second.err, (long)first.bg.pid))
        fail_msg("the refusal does not name the holder's pid %d: %s", (int)first.bg.pid,
                 rt_tail(second.err));
    rt_free(&second);
    /* The first run is untouched by the refused one. */
    if (bg_wait(&first) != 0) {
        err = bg_err(&first);
        fail_msg("the first run failed: %s", rt_tail(err));
    }
    expect_fault_output(out);
    rt_rmtree(out);
}

static void test_commit_failing_run_keeps_others_output(void **state)
{
    char out[300], local[300], conf[400], before0[600], path[600];
    bg_run_t failing, good;
    rt_run_t run;
    int rc;
    char *err, *text;

    (void)state;
    /* The failing run holds the output first: the good run is refused, the failure cleans up. */
    under_base(out, sizeof(out), "out-fail-first");
    under_base(local, sizeof(local), "local-fail-first");
    snprintf(conf, sizeof(conf), "shuffle.local_dirs=%s", local);
    failing =
        bg_start("fail-first", FAULT_RUN(out, "--conf", conf, "--conf", "task.max_failures=1",
                                         "--job-arg", "fault=error", "--job-arg", "stage=reduce",
                                         "--job-arg", "task=0", "--job-arg", "delay_ms=4000"));
    bg_wait_for(&failing, local, "exec-0");
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=10"));
    rt_expect_fail(&run, 2, "in use", "a run into an output that a failing run holds");
    assert_true(names_pid(run.err, (long)failing.bg.pid));
    rt_free(&run);
    rc = bg_wait(&failing);
    err = bg_err(&failing);
    if (rc != 1 || strstr(err, "bad CSV at line 3") == NULL)
        fail_msg("the failing run: exit %d, want 1 with its error; stderr: %s", rc, rt_tail(err));
    free(err);
    rt_expect_no_output(out);
    rt_rmtree(out);

    /* A finished output first: the failing run is refused and the output stays as it was. */
    under_base(out, sizeof(out), "out-good-first");
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=1000"));
    rt_expect_ok(&run, "the good run");
    rt_free(&run);
    expect_fault_output(out);
    rt_path(path, sizeof(path), out, "part-r-00000");
    text = rt_read_file(path, NULL);
    assert_non_null(text);
    snprintf(before0, sizeof(before0), "%.500s", text);
    free(text);
    run = rt_cli(FAULT_RUN(out, "--conf", "task.max_failures=1", "--job-arg", "fault=error",
                           "--job-arg", "stage=reduce", "--job-arg", "task=0"));
    rt_expect_fail(&run, 2, "already holds", "a failing run into a finished output");
    rt_free(&run);
    expect_fault_output(out);
    text = rt_read_file(path, NULL);
    assert_non_null(text);
    assert_int_equal(strncmp(text, before0, strlen(before0)), 0);
    free(text);
    rt_rmtree(out);

    /* Both at once, whatever order the machine gives them. */
    for (int round = 0; round < 3; round++) {
        int frc, grc;
        under_base(out, sizeof(out), "out-race");
        failing =
            bg_start("race-fail", FAULT_RUN(out, "--conf", "task.max_failures=1", "--job-arg",
                                            "fault=error", "--job-arg", "stage=reduce", "--job-arg",
                                            "task=0", "--job-arg", "delay_ms=1000"));
        good = bg_start("race-good", FAULT_RUN(out, "--job-arg", "records=1000"));
        frc = bg_wait(&failing);
        grc = bg_wait(&good);
        err = bg_err(&good);
        if (grc == 0) {
            /* The good run won the directory, or came after the failure cleaned up. */
            if (frc != 1 && frc != 2)
                fail_msg("round %d: the failing run exited %d", round, frc);
            expect_fault_output(out);
        } else {
            if (grc != 2 || strstr(err, "in use") == NULL)
                fail_msg("round %d: the good run exited %d: %s", round, grc, rt_tail(err));
            if (frc != 1)
                fail_msg("round %d: the failing run exited %d", round, frc);
            rt_expect_no_output(out);
        }
        free(err);
        rt_rmtree(out);
    }
}

/* ------------------------------------------------------------------------ */
/* Locks left by runs                                                        */
/* ------------------------------------------------------------------------ */

/* Field 22 of /proc/PID/stat: the process's start time in clock ticks after boot. */
static unsigned long long proc_start(pid_t pid)
{
    char path[64], *text, *p;
    unsigned long long start = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    text = read_proc(path);
    assert_non_null(text);
    p = strrchr(text, ')');
    assert_non_null(p);
    for (int field = 2; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    assert_non_null(p);
    assert_int_equal(sscanf(p, " %llu", &start), 1);
    free(text);
    return start;
}

/* Writes out/_temporary/_lock (docs/FORMATS.md) for run `run`, with files of that run. */
static void write_lock(const char *out, const char *run, long pid, const char *host,
                       unsigned long long start)
{
    char path[600], text[512];
    int n;

    assert_int_equal(mkdir(out, 0700), 0);
    rt_path(path, sizeof(path), out, "_temporary");
    assert_int_equal(mkdir(path, 0700), 0);
    n = snprintf(text, sizeof(text), "spate-output-lock 1\nrun %s\npid %ld\nhost %s\nstart %llu\n",
                 run, pid, host, start);
    rt_path(path, sizeof(path), out, "_temporary/_lock");
    rt_write_file(path, text, (size_t)n);
    snprintf(path, sizeof(path), "%s/_temporary/%s", out, run);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/_temporary/%s/part-r-00000", out, run);
    rt_write_file(path, "stale\n", 6);
    snprintf(path, sizeof(path), "%s/_temporary/%s/.part-r-00001.attempt-0", out, run);
    rt_write_file(path, "half\n", 5);
}

/* A pid that is not running: a child that exited and was reaped. */
static pid_t dead_pid(void)
{
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    return pid;
}

static void test_commit_stale_lock_taken_over(void **state)
{
    char out[300], host[256] = "";
    pid_t dead = dead_pid();
    rt_run_t run;

    (void)state;
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);

    /* A dead run's lock: taken over with a warning naming it, its files removed. */
    under_base(out, sizeof(out), "out-stale");
    write_lock(out, "app-dead-1", (long)dead, host, 4242);
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=1000"));
    rt_expect_ok(&run, "a run into an output locked by a dead run");
    if (strstr(run.err, "no longer running") == NULL || !names_pid(run.err, (long)dead) ||
        strstr(run.err, "app-dead-1") == NULL)
        fail_msg("no warning names the dead run app-dead-1 (pid %d): %s", (int)dead,
                 rt_tail(run.err));
    rt_free(&run);
    expect_fault_output(out); /* and no _temporary: the dead run's files went too */
    rt_rmtree(out);

    /* A live pid that started at another time is another process: the lock is stale. */
    under_base(out, sizeof(out), "out-reused");
    write_lock(out, "app-reused-1", (long)getpid(), host, proc_start(getpid()) + 1);
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=1000"));
    rt_expect_ok(&run, "a run into an output locked by a pid reused since");
    assert_non_null(strstr(run.err, "no longer running"));
    rt_free(&run);
    expect_fault_output(out);
    rt_rmtree(out);

    /* A live holder on this host: refused, naming it; its lock and files stay. */
    under_base(out, sizeof(out), "out-live");
    write_lock(out, "app-live-1", (long)getpid(), host, proc_start(getpid()));
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=1000"));
    rt_expect_fail(&run, 2, "app-live-1", "a run into an output a live run holds");
    assert_true(names_pid(run.err, (long)getpid()));
    rt_free(&run);
    assert_true(rt_exists(out, "_temporary/_lock"));
    assert_true(rt_exists(out, "_temporary/app-live-1/part-r-00000"));
    assert_int_equal(rt_part_count(out), 0);
    rt_rmtree(out);

    /* A holder on another host cannot be checked: it counts as live and is named. */
    under_base(out, sizeof(out), "out-remote");
    write_lock(out, "app-remote-1", 1, "elsewhere.invalid", 99);
    run = rt_cli(FAULT_RUN(out, "--job-arg", "records=1000"));
    rt_expect_fail(&run, 2, "elsewhere.invalid", "a run into an output held from another host");
    rt_free(&run);
    assert_true(rt_exists(out, "_temporary/_lock"));
    assert_true(rt_exists(out, "_temporary/app-remote-1/part-r-00000"));
    rt_rmtree(out);
}

/* ------------------------------------------------------------------------ */
/* Interrupts                                                                */
/* ------------------------------------------------------------------------ */

/* The pids whose parent is pid (from /proc/<each>/stat). */
static size_t children_of(pid_t pid, pid_t *kids, size_t cap)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    size_t n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL && n < cap) {
        char path[300], *text, *p;
        long ppid = 0;
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        if ((text = read_proc(path)) == NULL)
            continue;
        /* pid (comm) state ppid ... */
        if ((p = strrchr(text, ')')) != NULL && sscanf(p + 1, " %*c %ld", &ppid) == 1 &&
            ppid == (long)pid)
            kids[n++] = (pid_t)strtol(e->d_name, NULL, 10);
        free(text);
    }
    closedir(d);
    return n;
}

/* Whether pid is gone (or a zombie nobody reaped yet, which runs nothing). */
static bool pid_gone(pid_t pid)
{
    char path[64], *text, *p;
    bool gone = true;

    if (kill(pid, 0) != 0 && errno == ESRCH)
        return true;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((text = read_proc(path)) == NULL)
        return true;
    p = strrchr(text, ')');
    gone = p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
    free(text);
    return gone;
}

/* Entries in dir besides . and .. */
static unsigned dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    unsigned n = 0;

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/*
 * Interrupts a run in its reduce stage (every reduce task asleep for a
 * minute) with signo, sent to its process group when group (a terminal's
 * Ctrl-C), else to spate alone, times times; then checks what it left.
 */
static void interrupt_run(const char *tag, int signo, bool group, int times)
{
    char dir[300], out[400], local[400], conf[500], tmp[500], want[64];
    pid_t kids[16];
    size_t nkids;
    bg_run_t run;
    int rc;
    char *err;

    under_base(dir, sizeof(dir), tag);
    assert_int_equal(mkdir(dir, 0700), 0);
    rt_path(out, sizeof(out), dir, "out");
    rt_path(local, sizeof(local), dir, "local");
    assert_int_equal(mkdir(local, 0700), 0);
    snprintf(conf, sizeof(conf), "shuffle.local_dirs=%s", local);
    run = bg_start(tag, FAULT_RUN(out, "--conf", conf, "--job-arg", "fault=sleep", "--job-arg",
                                  "stage=reduce", "--job-arg", "task=-1", "--job-arg",
                                  "sleep_ms=60000"));
    /* Mid-reduce: an attempt file is open (under _temporary, in its run's directory). */
    rt_path(tmp, sizeof(tmp), out, "_temporary");
    bg_wait_for(&run, tmp, ".part-r-00000.attempt-0");
    assert_true(dir_entries(local) > 0); /* the shuffle files are there */
    nkids = children_of(run.bg.pid, kids, sizeof(kids) / sizeof(kids[0]));
    if (nkids != 2)
        fail_msg("spate run (pid %d) has %zu child processes, want its 2 executors",
                 (int)run.bg.pid, nkids);
    for (size_t i = 0; i < nkids; i++)
        note_leftover(kids[i]);
    for (int i = 0; i < times; i++) {
        assert_int_equal(kill(group ? -run.bg.pid : run.bg.pid, signo), 0);
        if (i + 1 < times)
            usleep(300000);
    }
    rc = bg_wait(&run);
    err = bg_err(&run);
    snprintf(want, sizeof(want), "interrupted by %s", signo == SIGINT ? "SIGINT" : "SIGTERM");
    if (rc != 128 + signo || strstr(err, want) == NULL)
        fail_msg("%s: exit %d, want %d and \"%s\"; stderr: %s", tag, rc, 128 + signo, want,
                 rt_tail(err));
    free(err);
    /* Nothing of the run is left: no output, temporaries, lock, shuffle files or executors. */
    rt_expect_no_output(out);
    assert_int_equal(rt_part_count(out), 0);
    if (dir_entries(local) != 0)
        fail_msg("%s: the shuffle directory %s is not empty", tag, local);
    for (size_t i = 0; i < nkids; i++) {
        double deadline = rt_now() + 30;
        while (!pid_gone(kids[i]) && rt_now() < deadline)
            usleep(20000);
        if (!pid_gone(kids[i]))
            fail_msg("%s: executor pid %d is still running", tag, (int)kids[i]);
    }
    rt_rmtree(dir);
}

static void test_commit_sigint_cleans_up(void **state)
{
    (void)state;
    interrupt_run("sigint", SIGINT, true, 1);
}

static void test_commit_sigterm_cleans_up(void **state)
{
    (void)state;
    interrupt_run("sigterm", SIGTERM, false, 1);
}

static void test_commit_second_sigint_cleans_up(void **state)
{
    (void)state;
    interrupt_run("sigint2", SIGINT, true, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_second_run_refused_while_first_holds),
        cmocka_unit_test(test_commit_failing_run_keeps_others_output),
        cmocka_unit_test(test_commit_stale_lock_taken_over),
        cmocka_unit_test(test_commit_sigint_cleans_up),
        cmocka_unit_test(test_commit_sigterm_cleans_up),
        cmocka_unit_test(test_commit_second_sigint_cleans_up),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
