/*
 * Helpers for the tests that run `spate run` end to end (tests/executor/
 * test_run_*.c): start a program with fork/exec in its own process group,
 * its stdout and stderr captured in temporary files, and wait for it with a
 * deadline past which the whole group is ended; then read back what the run
 * left: files, the --json report (jansson), valsort's and gensort's sums;
 * and wordcount's reference: random texts over a small vocabulary, counted
 * here, against the job's output files.
 *
 * Every helper fails the calling cmocka test with a message saying what
 * went wrong (including the command's stderr), so the tests read as the
 * commands they run. Include after <cmocka.h>'s prerequisites; this header
 * includes cmocka itself.
 */
#ifndef SPATE_TEST_RUN_TEST_UTIL_H
#define SPATE_TEST_RUN_TEST_UTIL_H

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* Seconds a spawned command may run before its process group is ended. */
#define RT_TIMEOUT_S 150

/* The whole text of a tail: what fail messages show of a command's stderr. */
#define RT_TAIL 4000

typedef struct rt_run {
    int status; /* exit code; -1 when it did not exit normally */
    int signal; /* the signal that ended it, 0 when it exited */
    bool timed_out;
    char *out; /* stdout, NUL-terminated, malloc'ed */
    char *err; /* stderr, NUL-terminated, malloc'ed */
    double seconds;
} rt_run_t;

/*
 * Keeps everything this process starts on loopback, as CI needs: libfabric's
 * tcp provider, Open MPI's TCP transports and its runtime, and lets Open MPI
 * run as root and oversubscribe the cores.
 */
static inline void rt_env_loopback(void)
{
    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("OMPI_MCA_btl_tcp_if_include", "lo", 1);
    setenv("OMPI_MCA_oob_tcp_if_include", "lo", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
}

static inline double rt_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* All of f from its start, NUL-terminated and malloc'ed (*len_p: its length, unless NULL); closes
 * f. */
static inline char *rt_slurp_len(FILE *f, size_t *len_p)
{
    long len;
    char *text;

    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    text = malloc((size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
    text[len] = '\0';
    fclose(f);
    if (len_p != NULL)
        *len_p = (size_t)len;
    return text;
}

static inline char *rt_slurp_stream(FILE *f) { return rt_slurp_len(f, NULL); }

static inline const char *rt_tail(const char *text)
{
    size_t len = strlen(text);

    return len > RT_TAIL ? text + len - RT_TAIL : text;
}

/*
 * A command started in the background, leading its own process group (as a
 * shell's job does), so a test can act on it while it runs (stop it, signal
 * it, watch its files) and end everything it started with one kill of the
 * group. Every test that runs a command, in the foreground or not, starts it
 * here.
 */
typedef struct rt_bg_opts {
    const char *cwd;        /* its working directory; NULL: this one */
    const char *const *env; /* "KEY=VALUE" entries added (NULL-terminated), or NULL */
    const char *err_path;   /* stderr to this file (created or truncated); NULL: captured */
    bool out_null;          /* stdout to /dev/null instead of captured */
    bool default_signals;   /* SIGINT and SIGTERM at their default disposition */
    unsigned long nofile;   /* RLIMIT_NOFILE's soft limit in the child; 0: as it is */
} rt_bg_opts_t;

typedef struct rt_bg {
    pid_t pid;       /* the leader of the group */
    FILE *out, *err; /* captured stdout and stderr, or NULL (rt_bg_opts_t) */
    double start;
} rt_bg_t;

/*
 * Starts argv (argv[0] looked up in PATH when it has no '/') as opts say
 * (NULL: all defaults). A child that cannot start exits 126 (setup) or 127
 * (exec), saying why on its stderr.
 */
static inline void rt_bg_start(rt_bg_t *bg, const char *const *argv, const rt_bg_opts_t *opts)
{
    static const rt_bg_opts_t defaults;
    int err_fd = -1;

    if (opts == NULL)
        opts = &defaults;
    memset(bg, 0, sizeof(*bg));
    if (!opts->out_null)
        assert_non_null(bg->out = tmpfile());
    if (opts->err_path != NULL) {
        err_fd = open(opts->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(err_fd >= 0);
    } else {
        assert_non_null(bg->err = tmpfile());
    }
    fflush(stdout);
    fflush(stderr);
    bg->start = rt_now();
    bg->pid = fork();
    assert_true(bg->pid >= 0);
    if (bg->pid == 0) {
        int out_fd = bg->out != NULL ? fileno(bg->out) : open("/dev/null", O_WRONLY);

        setpgid(0, 0);
        if (opts->default_signals) {
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
        }
        dup2(out_fd, STDOUT_FILENO);
        dup2(err_fd >= 0 ? err_fd : fileno(bg->err), STDERR_FILENO);
        if (opts->cwd != NULL && chdir(opts->cwd) != 0) {
            fprintf(stderr, "chdir %s: %s\n", opts->cwd, strerror(errno));
            _exit(126);
        }
        if (opts->nofile > 0) {
            struct rlimit rl;

            if (getrlimit(RLIMIT_NOFILE, &rl) != 0 ||
                (rl.rlim_cur = (rlim_t)opts->nofile, setrlimit(RLIMIT_NOFILE, &rl) != 0)) {
                fprintf(stderr, "setrlimit: %s\n", strerror(errno));
                _exit(126);
            }
        }
        for (size_t i = 0; opts->env != NULL && opts->env[i] != NULL; i++)
            putenv((char *)opts->env[i]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(bg->pid, bg->pid); /* also here: no race with a first kill of the group */
    if (err_fd >= 0)
        close(err_fd);
}

/*
 * Waits for the leader to end, at most timeout_s after its start: past that
 * the group gets SIGTERM, then SIGKILL 5 s later, and the run counts as
 * timed out. each (unless NULL) is called with the pid and arg between polls
 * (every 10 ms). Fills status, signal, timed_out and seconds; out and err
 * stay NULL (rt_bg_collect). The group is left as it is: the caller checks
 * or ends what remains.
 */
static inline rt_run_t rt_bg_wait(rt_bg_t *bg, unsigned timeout_s, void (*each)(pid_t, void *),
                                  void *arg)
{
    rt_run_t run = {.status = -1};
    double deadline = bg->start + timeout_s, term_at = 0;
    int wstatus = 0;

    for (;;) {
        pid_t w = waitpid(bg->pid, &wstatus, WNOHANG);
        double now;

        if (w == bg->pid)
            break;
        assert_int_equal(w, 0);
        if (each != NULL)
            each(bg->pid, arg);
        now = rt_now();
        if (now > deadline && term_at == 0) {
            run.timed_out = true;
            kill(-bg->pid, SIGTERM);
            term_at = now;
        } else if (term_at != 0 && now > term_at + 5) {
            kill(-bg->pid, SIGKILL);
        }
        usleep(10000);
    }
    run.seconds = rt_now() - bg->start;
    if (WIFEXITED(wstatus))
        run.status = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus))
        run.signal = WTERMSIG(wstatus);
    return run;
}

/* Reads the captured stdout and stderr into run (an empty text for one not captured). */
static inline void rt_bg_collect(rt_bg_t *bg, rt_run_t *run)
{
    run->out = bg->out != NULL ? rt_slurp_stream(bg->out) : strdup("");
    run->err = bg->err != NULL ? rt_slurp_stream(bg->err) : strdup("");
    assert_non_null(run->out);
    assert_non_null(run->err);
    bg->out = bg->err = NULL;
}

/*
 * Runs argv (argv[0] looked up in PATH when it has no '/') with env, a
 * NULL-terminated list of "KEY=VALUE" entries added to this process's
 * environment (NULL: none), and waits at most timeout_s seconds. The child
 * leads its own process group; past the deadline the group gets SIGTERM,
 * then SIGKILL, and the run counts as timed out.
 */
static inline rt_run_t rt_spawn_env(const char *const *argv, const char *const *env,
                                    unsigned timeout_s)
{
    rt_bg_t bg;
    rt_run_t run;

    rt_bg_start(&bg, argv, &(rt_bg_opts_t){.env = env});
    run = rt_bg_wait(&bg, timeout_s, NULL, NULL);
    /* Whatever the command left behind in its group (executors, ranks) goes too. */
    kill(-bg.pid, SIGKILL);
    rt_bg_collect(&bg, &run);
    if (run.timed_out)
        fail_msg("%s did not end within %u s; stderr: %s", argv[0], timeout_s, rt_tail(run.err));
    return run;
}

/* Most arguments a command line of the tests' helpers holds, the program and NULL included. */
#define RT_ARGV_MAX 96

/* argv (RT_ARGV_MAX entries) = $SPATE_CLI, then args (NULL-terminated), then NULL. */
static inline void rt_cli_argv(const char *const *args, const char **argv)
{
    const char *cli = getenv("SPATE_CLI");
    size_t n = 0;

    if (cli == NULL)
        fail_msg("SPATE_CLI is not set: run this test through ctest");
    argv[n++] = cli;
    for (; args[n - 1] != NULL; n++) {
        assert_true(n < RT_ARGV_MAX - 1);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
}

/* $SPATE_CLI with args (NULL-terminated), with env added ("KEY=VALUE", NULL-terminated, or NULL).
 */
static inline rt_run_t rt_cli_env(const char *const *args, const char *const *env)
{
    const char *argv[RT_ARGV_MAX];

    rt_cli_argv(args, argv);
    return rt_spawn_env(argv, env, RT_TIMEOUT_S);
}

static inline rt_run_t rt_cli(const char *const *args) { return rt_cli_env(args, NULL); }

/* RT_CLI("run", "wordcount", ...): $SPATE_CLI with these arguments. */
#define RT_CLI(...) rt_cli((const char *const[]){__VA_ARGS__, NULL})

static inline void rt_free(rt_run_t *run)
{
    free(run->out);
    free(run->err);
    run->out = run->err = NULL;
}

/* Fails the test unless run exited 0. */
static inline void rt_expect_ok(const rt_run_t *run, const char *what)
{
    if (run->status != 0)
        fail_msg("%s: exit %d (signal %d) after %.1f s; stderr: %s", what, run->status, run->signal,
                 run->seconds, rt_tail(run->err));
}

/* Fails the test unless run exited with status and its stderr holds phrase. */
static inline void rt_expect_fail(const rt_run_t *run, int status, const char *phrase,
                                  const char *what)
{
    if (run->status != status)
        fail_msg("%s: exit %d (signal %d), want %d; stderr: %s", what, run->status, run->signal,
                 status, rt_tail(run->err));
    if (phrase != NULL && strstr(run->err, phrase) == NULL)
        fail_msg("%s: stderr does not say \"%s\": %s", what, phrase, rt_tail(run->err));
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */
/* ------------------------------------------------------------------------ */

/* A fresh directory /tmp/spate-test-NAME-XXXXXX, written to dir (cap bytes). */
static inline void rt_mkdtemp(char *dir, size_t cap, const char *name)
{
    int n = snprintf(dir, cap, "/tmp/spate-test-%s-XXXXXX", name);

    assert_true(n > 0 && (size_t)n < cap);
    assert_non_null(mkdtemp(dir));
}

/* path = dir/name, checked to fit. */
static inline void rt_path(char *path, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(path, cap, "%s/%s", dir, name);

    assert_true(n > 0 && (size_t)n < cap);
}

static inline int rt_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    chmod(path, 0700); /* a test may have taken permissions away */
    remove(path);
    return 0;
}

/* Removes path and everything under it; nothing when it does not exist. */
static inline void rt_rmtree(const char *path)
{
    nftw(path, rt_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline bool rt_exists(const char *dir, const char *name)
{
    char path[4096];

    rt_path(path, sizeof(path), dir, name);
    return access(path, F_OK) == 0;
}

/* The whole content of path (*len_p bytes), NUL-terminated; NULL when it cannot be read. */
static inline char *rt_read_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");

    return f != NULL ? rt_slurp_len(f, len_p) : NULL;
}

static inline void rt_write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    if (f == NULL)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Number of dir's files named part-r-NNNNN, checking they are numbered 0, 1, ... */
static inline unsigned rt_part_count(const char *dir)
{
    unsigned n = 0;

    for (;; n++) {
        char name[32];
        snprintf(name, sizeof(name), "part-r-%05u", n);
        if (!rt_exists(dir, name))
            return n;
    }
}

/*
 * Fails the test unless dir looks like a successful job's output: _SUCCESS,
 * want part-r-NNNNN files (0: any number, at least one), and no temporaries.
 */
static inline void rt_expect_output(const char *dir, unsigned want)
{
    unsigned parts = rt_part_count(dir);

    if (!rt_exists(dir, "_SUCCESS"))
        fail_msg("%s has no _SUCCESS", dir);
    if (rt_exists(dir, "_temporary"))
        fail_msg("%s still holds _temporary", dir);
    if (parts == 0 || (want != 0 && parts != want))
        fail_msg("%s holds %u part-r files, want %u", dir, parts, want);
}

/* Fails the test when dir (which may not exist) holds anything that looks like finished output. */
static inline void rt_expect_no_output(const char *dir)
{
    if (rt_exists(dir, "_SUCCESS"))
        fail_msg("%s holds _SUCCESS after a failed run", dir);
    if (rt_exists(dir, "part-r-00000"))
        fail_msg("%s holds part-r-00000 after a failed run", dir);
    if (rt_exists(dir, "_temporary"))
        fail_msg("%s still holds _temporary after a failed run", dir);
}

/* ------------------------------------------------------------------------ */
/* Reports                                                                   */
/* ------------------------------------------------------------------------ */

static inline json_t *rt_json_load(const char *path)
{
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);

    if (root == NULL)
        fail_msg("report %s: %s (line %d)", path, error.text, error.line);
    return root;
}

/* The value at a dotted path ("stages.map.done", "executors.1.lost"); fails when absent. */
static inline json_t *rt_json_at(json_t *root, const char *dotted)
{
    char copy[256], *save = NULL;
    json_t *v = root;

    assert_true(strlen(dotted) < sizeof(copy));
    strcpy(copy, dotted);
    for (char *key = strtok_r(copy, ".", &save); key != NULL; key = strtok_r(NULL, ".", &save)) {
        if (json_is_array(v))
            v = json_array_get(v, strtoul(key, NULL, 10));
        else
            v = json_object_get(v, key);
        if (v == NULL)
            fail_msg("the report has no %s", dotted);
    }
    return v;
}

static inline long long rt_json_int(json_t *root, const char *dotted)
{
    json_t *v = rt_json_at(root, dotted);

    if (!json_is_integer(v))
        fail_msg("the report's %s is not an integer", dotted);
    return (long long)json_integer_value(v);
}

static inline bool rt_json_bool(json_t *root, const char *dotted)
{
    json_t *v = rt_json_at(root, dotted);

    if (!json_is_boolean(v))
        fail_msg("the report's %s is not a boolean", dotted);
    return json_is_true(v);
}

/*
 * Fails the test unless the report says the run succeeded on executors
 * executors (0: do not check), every task of every stage done, and no
 * recovery was needed when clean.
 */
static inline void rt_expect_report(json_t *rep, unsigned executors, bool clean)
{
    static const char *const stages[] = {"sample", "map", "reduce"};
    json_t *st = rt_json_at(rep, "stages");

    if (!rt_json_bool(rep, "succeeded"))
        fail_msg("the report says the run did not succeed");
    if (executors != 0)
        assert_int_equal(json_array_size(rt_json_at(rep, "executors")), executors);
    for (size_t i = 0; i < sizeof(stages) / sizeof(stages[0]); i++) {
        json_t *s = json_object_get(st, stages[i]);
        if (s == NULL)
            continue;
        if (json_integer_value(json_object_get(s, "done")) !=
            json_integer_value(json_object_get(s, "tasks")))
            fail_msg("stage %s: %lld of %lld tasks done", stages[i],
                     (long long)json_integer_value(json_object_get(s, "done")),
                     (long long)json_integer_value(json_object_get(s, "tasks")));
    }
    assert_true(rt_json_int(rep, "stages.map.tasks") >= 1);
    assert_true(rt_json_int(rep, "stages.reduce.tasks") >= 1);
    /*
     * Core time of the stages that did work: the executors' CPU time and their
     * slots' time, and the idle share that follows from the two.
     */
    for (size_t i = 1; i < sizeof(stages) / sizeof(stages[0]); i++) {
        json_t *s = json_object_get(st, stages[i]);
        double cpu = json_number_value(json_object_get(s, "cpu_s"));
        double core = json_number_value(json_object_get(s, "core_s"));
        double idle = json_number_value(json_object_get(s, "idle_core_fraction"));
        double want = core > cpu ? 1 - cpu / core : 0;

        if (json_object_get(s, "core_s") == NULL || !(cpu > 0) || !(core > 0) ||
            idle < want - 1e-9 || idle > want + 1e-9)
            fail_msg("stage %s: cpu_s %g, core_s %g, idle_core_fraction %g", stages[i], cpu, core,
                     idle);
    }
    if (clean) {
        assert_int_equal(rt_json_int(rep, "recovery.executors_lost"), 0);
        assert_int_equal(rt_json_int(rep, "recovery.fetch_failures"), 0);
        assert_int_equal(rt_json_int(rep, "recovery.maps_recomputed"), 0);
        assert_int_equal(rt_json_int(rep, "recovery.task_retries"), 0);
        for (size_t e = 0; e < json_array_size(rt_json_at(rep, "executors")); e++) {
            json_t *x = json_array_get(rt_json_at(rep, "executors"), e);
            json_int_t anon = json_integer_value(json_object_get(x, "peak_anon"));

            assert_false(json_is_true(json_object_get(x, "lost")));
            /* The executor's own memory is part of its resident set. */
            if (anon <= 0 || anon > json_integer_value(json_object_get(x, "peak_rss")))
                fail_msg("executor %zu: peak_anon %lld, peak_rss %lld", e, (long long)anon,
                         (long long)json_integer_value(json_object_get(x, "peak_rss")));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Sort benchmark checks                                                     */
/* ------------------------------------------------------------------------ */

/* The value after "label" on one of text's lines, copied to buf; fails when absent. */
static inline void rt_line_value(const char *text, const char *label, char *buf, size_t cap)
{
    const char *p = strstr(text, label);
    size_t n;

    if (p == NULL)
        fail_msg("no \"%s\" in: %s", label, rt_tail(text));
    p += strlen(label);
    n = strcspn(p, "\n");
    assert_true(n < cap);
    memcpy(buf, p, n);
    buf[n] = '\0';
}

/*
 * Runs `spate valsort DIR`, fails the test unless it says every record is in
 * order, and returns the record count and, in sum (cap bytes), the checksum.
 */
static inline unsigned long long rt_valsort(const char *dir, char *sum, size_t cap)
{
    rt_run_t run = RT_CLI("valsort", dir);
    char records[64];

    rt_expect_ok(&run, "spate valsort");
    if (strstr(run.err, "SUCCESS - all records are in order") == NULL)
        fail_msg("valsort %s: %s", dir, run.err);
    rt_line_value(run.err, "Records: ", records, sizeof(records));
    rt_line_value(run.err, "Checksum: ", sum, cap);
    rt_free(&run);
    return strtoull(records, NULL, 10);
}

/* The checksum `spate gensort -c RECORDS` prints (the files go to scratch, then away). */
static inline void rt_gensort_sum(unsigned long long records, const char *scratch, char *sum,
                                  size_t cap)
{
    char n[32];
    rt_run_t run;

    snprintf(n, sizeof(n), "%llu", records);
    run = RT_CLI("gensort", "-c", n, scratch);
    rt_expect_ok(&run, "spate gensort -c");
    rt_line_value(run.err, "", sum, cap);
    rt_free(&run);
    rt_rmtree(scratch);
}

/*
 * The whole terasort check of an output directory: valsort passes, the
 * records are those of gensort's first `records` records (same count, same
 * checksum), and the directory looks complete.
 */
static inline void rt_expect_sorted(const char *dir, unsigned long long records,
                                    const char *scratch)
{
    char got[64], want[64];
    unsigned long long n;

    rt_expect_output(dir, 0);
    n = rt_valsort(dir, got, sizeof(got));
    if (n != records)
        fail_msg("%s holds %llu records, want %llu", dir, n, records);
    rt_gensort_sum(records, scratch, want, sizeof(want));
    if (strcmp(got, want) != 0)
        fail_msg("%s: checksum %s, gensort's for %llu records is %s", dir, got, records, want);
}

/* Whether `spate run --help` lists job among the built-in jobs. */
static inline bool rt_has_job(const char *job)
{
    rt_run_t run = RT_CLI("run", "--help");
    char line[64];
    bool found;

    rt_expect_ok(&run, "spate run --help");
    snprintf(line, sizeof(line), "\n  %s ", job);
    found = strstr(run.out, line) != NULL;
    rt_free(&run);
    return found;
}

/* ------------------------------------------------------------------------ */
/* wordcount reference                                                       */
/* ------------------------------------------------------------------------ */

/* Words in the generated texts. */
#define RT_WC_VOCAB 48

/* The words of the texts: UTF-8, punctuation, and words that are prefixes of others. */
static inline const char *rt_wc_word(size_t i)
{
    static const char *const vocab[] = {
        "a",       "ab",     "abc",     "abcd",  "b",        "ba",     "the",      "The",
        "THE",     "quick",  "brown",   "fox",   "jumps",    "over",   "lazy",     "dog",
        "don't",   "x-y",    "1",       "10",    "100",      "2",      "naïve",    "café",
        "日本",    "日本語", "Ωmega",   "zebra", "zz",       "zzz",    "{brace}",  "\"quote\"",
        "a.b",     "tail.",  "(paren)", "#hash", "under_sc", "~tilde", "ümlaut",   "émigré",
        "shuffle", "spill",  "merge",   "sort",  "reduce",   "map",    "executor", "driver",
    };

    _Static_assert(sizeof(vocab) / sizeof(vocab[0]) == RT_WC_VOCAB, "RT_WC_VOCAB");
    return vocab[i];
}

/* splitmix64, from a fixed seed: the same texts every run. */
static inline uint64_t rt_rnd(void)
{
    static uint64_t rng = 0x5eed;
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/*
 * Writes files random texts to dir and counts their words in counts (RT_WC_VOCAB
 * entries). Words are drawn with skewed frequencies; separators are runs of
 * every kind of ASCII whitespace; some files start or end without one. Files
 * the job must skip (hidden, underscore, a subdirectory) hold a word of
 * their own that must not show up.
 */
static inline void rt_wc_make_texts(const char *dir, unsigned files, size_t bytes, uint64_t *counts)
{
    static const char *const seps[] = {" ",  " ",    " ",  "\n", "\t",
                                       "  ", "\r\n", "\v", "\f", " \n\t"};
    char *text = malloc(bytes + 64);
    char path[600];

    assert_non_null(text);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (unsigned f = 0; f < files; f++) {
        size_t len = 0, want = bytes / 2 + rt_rnd() % bytes / 2;
        if (rt_rnd() % 2)
            text[len++] = '\n';
        while (len < want) {
            /* Skewed: low indexes far more often, every word now and then. */
            size_t w =
                rt_rnd() % 4 ? rt_rnd() % (rt_rnd() % RT_WC_VOCAB + 1) : rt_rnd() % RT_WC_VOCAB;
            const char *s = seps[rt_rnd() % (sizeof(seps) / sizeof(seps[0]))];
            memcpy(text + len, rt_wc_word(w), strlen(rt_wc_word(w)));
            len += strlen(rt_wc_word(w));
            counts[w]++;
            if (len < want || rt_rnd() % 2) {
                memcpy(text + len, s, strlen(s));
                len += strlen(s);
            }
        }
        snprintf(path, sizeof(path), "%s/text-%u.txt", dir, f);
        rt_write_file(path, text, len);
    }
    rt_path(path, sizeof(path), dir, "empty.txt");
    rt_write_file(path, "", 0);
    rt_path(path, sizeof(path), dir, ".hidden");
    rt_write_file(path, "HIDDENWORD\n", 11);
    rt_path(path, sizeof(path), dir, "_SKIPPED");
    rt_write_file(path, "SKIPPEDWORD\n", 12);
    rt_path(path, sizeof(path), dir, "subdir");
    assert_int_equal(mkdir(path, 0700), 0);
    rt_path(path, sizeof(path), dir, "subdir/nested.txt");
    rt_write_file(path, "NESTEDWORD\n", 11);
    free(text);
}

/* Byte order, the shorter first on a common prefix: the job's word order. */
static inline int rt_wc_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);

    return c != 0 ? c : (al > bl) - (al < bl);
}

/*
 * Reads every part-r file of out, checking that each is a run of
 * "word\tcount\n" lines sorted by word, and that the counts are counts.
 */
static inline void rt_wc_expect_counts(const char *out, const uint64_t *counts)
{
    unsigned parts = rt_part_count(out);
    uint64_t *got = calloc(RT_WC_VOCAB, sizeof(*got));
    bool *seen = calloc(RT_WC_VOCAB, sizeof(*seen));

    assert_non_null(got);
    assert_non_null(seen);
    rt_expect_output(out, 0);
    for (unsigned p = 0; p < parts; p++) {
        char name[32], path[600];
        const char *prev = NULL, *line;
        size_t prev_len = 0, len = 0;
        char *text;

        snprintf(name, sizeof(name), "part-r-%05u", p);
        rt_path(path, sizeof(path), out, name);
        text = rt_read_file(path, &len);
        assert_non_null(text);
        assert_true(len == 0 || text[len - 1] == '\n');
        for (line = text; *line != '\0';) {
            const char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
            size_t wlen, w;
            char *end;
            unsigned long long c;

            if (tab == NULL || nl == NULL || tab > nl)
                fail_msg("%s: line without a tab: %.*s", name, (int)(nl ? nl - line : 40), line);
            wlen = (size_t)(tab - line);
            c = strtoull(tab + 1, &end, 10);
            if (end != nl || c == 0)
                fail_msg("%s: bad count in %.*s", name, (int)(nl - line), line);
            if (prev != NULL && rt_wc_cmp(prev, prev_len, line, wlen) >= 0)
                fail_msg("%s: %.*s comes after %.*s", name, (int)wlen, line, (int)prev_len, prev);
            for (w = 0; w < RT_WC_VOCAB; w++)
                if (strlen(rt_wc_word(w)) == wlen && memcmp(rt_wc_word(w), line, wlen) == 0)
                    break;
            if (w == RT_WC_VOCAB)
                fail_msg("%s: word %.*s was never written", name, (int)wlen, line);
            if (seen[w])
                fail_msg("word %s is in two output files", rt_wc_word(w));
            seen[w] = true;
            got[w] = c;
            prev = line;
            prev_len = wlen;
            line = nl + 1;
        }
        free(text);
    }
    for (size_t w = 0; w < RT_WC_VOCAB; w++)
        if (got[w] != counts[w])
            fail_msg("word %s: counted %llu, want %llu", rt_wc_word(w), (unsigned long long)got[w],
                     (unsigned long long)counts[w]);
    free(got);
    free(seen);
}

#endif
