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

#endif /* SPATE_TEST_TASKFAIL_UTIL_H */
