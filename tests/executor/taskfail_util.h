/*
 * Helpers for the task-failure tests (test_run_taskfail.c, test_run_lateloss.c):
 * `spate run` started in the background (so a test can act on it while it
 * runs: stop it, kill it) in a working directory of its own, with a marker in
 * its environment that its executors inherit, so that the test can tell
 * which processes of the machine are the run's and assert none is left.
 */
#ifndef SPATE_TEST_TASKFAIL_UTIL_H
#define SPATE_TEST_TASKFAIL_UTIL_H

#include "run_test_util.h"

#include <dirent.h>
#include <fcntl.h>

typedef struct tf_run {
    rt_bg_t bg;
    char mark[96]; /* SPATE_TEST_MARK=..., in the run's environment */
} tf_run_t;

/* Most "KEY=VALUE" entries tf_start adds to a run's environment, its marker included. */
#define TF_ENV_MAX 16

/*
 * Starts $SPATE_CLI args in directory cwd (NULL: this one) with env added;
 * the run leads its own process group.
 */
static inline void tf_start(tf_run_t *r, const char *cwd, const char *const *args,
                            const char *const *env)
{
    static unsigned seq;
    const char *argv[RT_ARGV_MAX], *envv[TF_ENV_MAX];
    size_t n = 0;

    rt_cli_argv(args, argv);
    memset(r, 0, sizeof(*r));
    snprintf(r->mark, sizeof(r->mark), "SPATE_TEST_MARK=%ld-%u-%ld", (long)getpid(), seq++,
             (long)time(NULL));
    envv[n++] = r->mark;
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        assert_true(n < TF_ENV_MAX - 1);
        envv[n++] = env[i];
    }
    envv[n] = NULL;
    rt_bg_start(&r->bg, argv, &(rt_bg_opts_t){.cwd = cwd, .env = envv});
}

/* How many processes of the machine carry r's marker in their environment. */
static inline unsigned tf_marked(const tf_run_t *r)
{
    DIR *proc = opendir("/proc");
    struct dirent *e;
    unsigned n = 0;
    size_t mlen = strlen(r->mark);

    assert_non_null(proc);
    while ((e = readdir(proc)) != NULL) {
        char path[300], buf[65536];
        ssize_t len;
        int fd;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/environ", e->d_name);
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            continue;
        len = read(fd, buf, sizeof(buf));
        close(fd);
        for (ssize_t i = 0; len > 0 && i + (ssize_t)mlen <= len;
             i += (ssize_t)strnlen(buf + i, (size_t)(len - i)) + 1)
            if (memcmp(buf + i, r->mark, mlen) == 0 &&
                (i + (ssize_t)mlen == len || buf[i + mlen] == '\0')) {
                /* A zombie's environment reads empty: only live processes count. */
                n++;
                break;
            }
    }
    closedir(proc);
    return n;
}

/*
 * Waits for the run to end (at most timeout_s, then its group is killed and
 * the test fails), then gives whatever it started grace_s to go: a process
 * of the run still alive then fails the test. Fills run like rt_spawn_env.
 */
static inline rt_run_t tf_finish(tf_run_t *r, unsigned timeout_s, unsigned grace_s)
{
    rt_run_t run = rt_bg_wait(&r->bg, timeout_s, NULL, NULL);
    unsigned left = 0;

    for (double until = rt_now() + grace_s; (left = tf_marked(r)) > 0 && rt_now() < until;)
        usleep(50000);
    kill(-r->bg.pid, SIGKILL);
    rt_bg_collect(&r->bg, &run);
    if (run.timed_out)
        fail_msg("spate run did not end within %u s; stderr: %s", timeout_s, rt_tail(run.err));
    if (left > 0)
        fail_msg("%u processes of the run were left %u s after it ended; stderr: %s", left, grace_s,
                 rt_tail(run.err));
    return run;
}

/* Whether dir holds no entry at all (recursively: only empty directories). */
static inline bool tf_dir_empty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    bool empty = true;

    if (d == NULL)
        return true;
    while (empty && (e = readdir(d)) != NULL) {
        char path[4096];
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%.255s", dir, e->d_name) >= sizeof(path)) {
            empty = false;
            break;
        }
        empty = lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && tf_dir_empty(path);
    }
    closedir(d);
    return empty;
}

/* Waits (at most timeout_s) for path to exist. */
static inline void tf_wait_file(const char *path, unsigned timeout_s)
{
    for (double until = rt_now() + timeout_s; access(path, F_OK) != 0; usleep(20000))
        if (rt_now() > until)
            fail_msg("%s did not appear within %u s", path, timeout_s);
}

/*
 * The places of a fault test's runs, below one temporary base directory:
 * shuffle.local_dirs (local, given to every run with --conf), the run's
 * working directory (cwd), its --output and --json, and a marker file for
 * the fault plugin's once=PATH.
 */
typedef struct tf_dirs {
    char base[256], local[300], local_conf[400], cwd[300], out[300], json[300], once[300];
} tf_dirs_t;

/* Creates the base directory (named after name), local and cwd; 0 on success. */
static inline int tf_dirs_setup(tf_dirs_t *d, const char *name)
{
    rt_env_loopback();
    rt_mkdtemp(d->base, sizeof(d->base), name);
    rt_path(d->local, sizeof(d->local), d->base, "local");
    rt_path(d->cwd, sizeof(d->cwd), d->base, "cwd");
    rt_path(d->out, sizeof(d->out), d->base, "out");
    rt_path(d->json, sizeof(d->json), d->base, "report.json");
    rt_path(d->once, sizeof(d->once), d->base, "once");
    snprintf(d->local_conf, sizeof(d->local_conf), "shuffle.local_dirs=%s", d->local);
    if (getenv("SPATE_FAULT_PLUGIN") == NULL)
        fail_msg("SPATE_FAULT_PLUGIN is not set: run this test through ctest");
    return mkdir(d->local, 0700) || mkdir(d->cwd, 0700);
}

/* Before each run: no output, no report, no marker, empty cwd and local dirs. */
static inline void tf_dirs_fresh(const tf_dirs_t *d)
{
    rt_rmtree(d->out);
    unlink(d->json);
    unlink(d->once);
    rt_rmtree(d->cwd);
    rt_rmtree(d->local);
    assert_int_equal(mkdir(d->cwd, 0700), 0);
    assert_int_equal(mkdir(d->local, 0700), 0);
}

/*
 * Runs `spate run JOB` on two local executors of one core each, into d's
 * output, report and shuffle dirs, with extra arguments (NULL-terminated)
 * and env added; waits for it and for its processes to go (tf_finish).
 */
static inline rt_run_t tf_run_job(const tf_dirs_t *d, const char *job, const char *const *extra,
                                  const char *const *env)
{
    const char *args[64] = {"run",           job,
                            "--executors",   "2",
                            "--cores",       "1",
                            "--output",      d->out,
                            "--json",        d->json,
                            "--conf",        d->local_conf,
                            "--no-progress", "--no-baseline"};
    size_t n = 14;
    tf_run_t r;

    for (size_t i = 0; extra[i] != NULL; i++) {
        assert_true(n < sizeof(args) / sizeof(args[0]) - 1);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    tf_start(&r, d->cwd, args, env);
    return tf_finish(&r, RT_TIMEOUT_S, 30);
}

/* What every run must leave: an empty working directory and empty shuffle directories. */
static inline void tf_expect_clean(const tf_dirs_t *d, const rt_run_t *run)
{
    if (!tf_dir_empty(d->cwd))
        fail_msg("the run left files in its working directory; stderr: %s", rt_tail(run->err));
    if (!tf_dir_empty(d->local))
        fail_msg("the run left shuffle files in %s; stderr: %s", d->local, rt_tail(run->err));
}

#endif /* SPATE_TEST_TASKFAIL_UTIL_H */
