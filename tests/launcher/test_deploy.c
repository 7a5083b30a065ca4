/*
 * deploy/k8s/ run without a cluster: there is no Kubernetes here, so the
 * manifests' own command lines run as local processes on 127.0.0.1, the
 * driver's pod first, then the Job's executors, each with only the
 * environment its container would get (`env -i` plus the manifest's env),
 * not this test's.
 *
 * tests/launcher/deploy_cmdlines.py reads the manifests (PyYAML), checks
 * their structure and spate's rules (headless Service selecting the driver,
 * an Indexed Job of --wait-executors pods, executor resources equal to
 * executor.cores and memory.executor + max(10%, 384 MiB), the secret from
 * the Secret) and prints each container's argv and env with what a cluster
 * would substitute: the downward API (pod IP 127.0.0.1, the completion
 * index), the Secret's value, the Service's DNS name and port (a free local
 * port), the pod interface (lo), volume mounts (directories under the
 * test's temporary directory). The test scales the job down (--size 64m,
 * one core and 1 GiB per executor) and changes nothing else.
 *
 * Cases: the manifests' job completes and its output passes valsort with
 * gensort's checksum, its report naming executor-0..N-1; an executor with
 * a wrong secret is refused while the driver keeps waiting, and the job
 * completes with the right ones; a driver short of an executor gives up
 * after executor.register_timeout with a clear message and no _SUCCESS; and
 * the manifest check itself refuses an executor sized against the rule.
 *
 * LABELS: slow
 */
#include "../executor/run_test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* The scaled-down job: what the test changes in the manifests, and only this. */
#define DP_SIZE    "64m"
#define DP_RECORDS ((64ull << 20) / 100)

/* The driver waits this long for a missing executor in the time-out case. */
#define DP_SHORT_TIMEOUT "3s"

/* Processes one case may have running at once. */
#define DP_MAX_PROCS 8

/* A process started from one of the manifests' command lines. */
typedef struct dp_proc {
    pid_t pid; /* 0 once reaped */
    FILE *out, *err;
    double start;
    char what[64];
} dp_proc_t;

static char base[256];
static dp_proc_t procs[DP_MAX_PROCS];
static size_t nprocs;

/* ------------------------------------------------------------------------ */
/* The manifests' command lines                                              */
/* ------------------------------------------------------------------------ */

/* A loopback port nobody listens on now. */
static int dp_free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/*
 * Runs deploy_cmdlines.py on manifests (NULL: deploy/k8s of the source
 * tree) with the test's scaling and extra (NULL-terminated "--set-env",
 * "K=V" pairs, or NULL), the volumes under base/name, and returns its
 * status; *plan_p gets the parsed plan when it is 0. Skips the test when
 * python3 or PyYAML is missing.
 */
static int dp_plan_run(const char *manifests, const char *name, const char *const *extra,
                       json_t **plan_p, rt_run_t *run_p)
{
    const char *src = getenv("SPATE_SOURCE_DIR"), *cli = getenv("SPATE_CLI");
    char script[512], k8s[512], root[512], port[16];
    const char *argv[32];
    size_t n = 0;
    json_error_t error;
    rt_run_t run;

    if (src == NULL || cli == NULL)
        fail_msg("SPATE_SOURCE_DIR and SPATE_CLI are not set: run this test through ctest");
    snprintf(script, sizeof(script), "%s/tests/launcher/deploy_cmdlines.py", src);
    snprintf(k8s, sizeof(k8s), "%s/deploy/k8s", src);
    rt_path(root, sizeof(root), base, name);
    snprintf(port, sizeof(port), "%d", dp_free_port());
    argv[n++] = "python3";
    argv[n++] = script;
    argv[n++] = "--json";
    argv[n++] = "--create-dirs";
    argv[n++] = "--root";
    argv[n++] = root;
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--spate";
    argv[n++] = cli;
    argv[n++] = "--set-arg=--size=" DP_SIZE;
    argv[n++] = "--set-env";
    argv[n++] = "SPATE_CONF_MEMORY_EXECUTOR=1g";
    argv[n++] = "--set-env";
    argv[n++] = "SPATE_CONF_EXECUTOR_CORES=1";
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        assert_true(n < sizeof(argv) / sizeof(argv[0]) - 2);
        argv[n++] = extra[i];
    }
    argv[n++] = manifests != NULL ? manifests : k8s;
    argv[n] = NULL;
    run = rt_spawn_env(argv, NULL, 60);
    if (run.status == 127 || run.status == 3) {
        fprintf(stderr, "SKIP: %s", run.err);
        rt_free(&run);
        skip();
    }
    if (run.status == 0) {
        *plan_p = json_loads(run.out, 0, &error);
        if (*plan_p == NULL)
            fail_msg("deploy_cmdlines.py printed bad JSON (line %d: %s): %s", error.line,
                     error.text, rt_tail(run.out));
    }
    if (run_p != NULL) {
        *run_p = run;
        return run.status;
    }
    if (run.status != 0)
        fail_msg("deploy_cmdlines.py refused deploy/k8s: exit %d: %s", run.status,
                 rt_tail(run.err));
    rt_free(&run);
    return 0;
}

/* The plan of deploy/k8s for one case, its volumes under base/name. */
static json_t *dp_plan(const char *name, const char *const *extra)
{
    json_t *plan = NULL;

    dp_plan_run(NULL, name, extra, &plan, NULL);
    return plan;
}

static json_t *dp_process(json_t *plan, size_t i)
{
    json_t *p = json_array_get(json_object_get(plan, "processes"), i);

    if (p == NULL)
        fail_msg("the plan has no process %zu", i);
    return p;
}

static size_t dp_nexecutors(json_t *plan) { return (size_t)rt_json_int(plan, "executors"); }

/* The value after option on process p's command line; fails when absent. */
static const char *dp_arg(json_t *p, const char *option)
{
    json_t *argv = json_object_get(p, "argv");

    for (size_t i = 0; i + 1 < json_array_size(argv); i++)
        if (strcmp(json_string_value(json_array_get(argv, i)), option) == 0)
            return json_string_value(json_array_get(argv, i + 1));
    fail_msg("%s's command line has no %s", json_string_value(json_object_get(p, "pod")), option);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Processes                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Starts process p of a plan as its container would run: its argv, and an
 * environment of the manifest's env only (plus PATH and the sanitizers'
 * options, which the image or the build provide), with override ("K=V",
 * or NULL) replacing one variable. The child leads its own process group.
 */
static dp_proc_t *dp_start(json_t *p, const char *override)
{
    static const char *const keep[] = {"PATH",          "LD_LIBRARY_PATH", "ASAN_OPTIONS",
                                       "UBSAN_OPTIONS", "LSAN_OPTIONS",    "TSAN_OPTIONS"};
    json_t *jargv = json_object_get(p, "argv"), *jenv = json_object_get(p, "env"), *v;
    const char *key;
    char *argv[64], *envp[64];
    size_t n = 0, ne = 0;
    dp_proc_t *proc;

    assert_true(nprocs < DP_MAX_PROCS);
    proc = &procs[nprocs++];
    memset(proc, 0, sizeof(*proc));
    snprintf(proc->what, sizeof(proc->what), "pod %s",
             json_string_value(json_object_get(p, "pod")));
    assert_true(json_array_size(jargv) > 0 && json_array_size(jargv) < 63);
    for (n = 0; n < json_array_size(jargv); n++)
        argv[n] = strdup(json_string_value(json_array_get(jargv, n)));
    argv[n] = NULL;
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        const char *val = getenv(keep[i]);
        if (val != NULL) {
            envp[ne] = malloc(strlen(keep[i]) + strlen(val) + 2);
            assert_non_null(envp[ne]);
            sprintf(envp[ne++], "%s=%s", keep[i], val);
        }
    }
    json_object_foreach(jenv, key, v)
    {
        size_t klen = strlen(key);
        assert_true(ne < 62);
        if (override != NULL && strncmp(override, key, klen) == 0 && override[klen] == '=')
            continue;
        envp[ne] = malloc(klen + strlen(json_string_value(v)) + 2);
        assert_non_null(envp[ne]);
        sprintf(envp[ne++], "%s=%s", key, json_string_value(v));
    }
    if (override != NULL)
        envp[ne++] = strdup(override);
    envp[ne] = NULL;

    proc->out = tmpfile();
    proc->err = tmpfile();
    assert_non_null(proc->out);
    assert_non_null(proc->err);
    fflush(stdout);
    fflush(stderr);
    proc->start = rt_now();
    proc->pid = fork();
    assert_true(proc->pid >= 0);
    if (proc->pid == 0) {
        setpgid(0, 0);
        dup2(fileno(proc->out), STDOUT_FILENO);
        dup2(fileno(proc->err), STDERR_FILENO);
        execve(argv[0], argv, envp);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(proc->pid, proc->pid);
    for (size_t i = 0; i < n; i++)
        free(argv[i]);
    for (size_t i = 0; i < ne; i++)
        free(envp[i]);
    return proc;
}

/* Whether proc is still running (it is reaped here when it is not). */
static bool dp_running(dp_proc_t *proc)
{
    return proc->pid != 0 && waitpid(proc->pid, NULL, WNOHANG) == 0;
}

/*
 * Waits for proc at most timeout_s seconds and returns how it ended; past
 * the deadline its group is killed and the test fails with its stderr.
 */
static rt_run_t dp_wait(dp_proc_t *proc, unsigned timeout_s)
{
    rt_run_t run = {.status = -1};
    int wstatus = 0;

    assert_true(proc->pid != 0);
    for (;;) {
        pid_t w = waitpid(proc->pid, &wstatus, WNOHANG);
        if (w == proc->pid)
            break;
        assert_int_equal(w, 0);
        if (rt_now() > proc->start + timeout_s) {
            run.timed_out = true;
            kill(-proc->pid, SIGKILL);
            assert_int_equal(waitpid(proc->pid, &wstatus, 0), proc->pid);
            break;
        }
        usleep(20000);
    }
    kill(-proc->pid, SIGKILL); /* anything it left in its group */
    proc->pid = 0;
    run.seconds = rt_now() - proc->start;
    if (WIFEXITED(wstatus))
        run.status = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus))
        run.signal = WTERMSIG(wstatus);
    run.out = rt_slurp_stream(proc->out);
    run.err = rt_slurp_stream(proc->err);
    proc->out = proc->err = NULL;
    if (run.timed_out)
        fail_msg("%s did not end within %u s; stderr: %s", proc->what, timeout_s, rt_tail(run.err));
    return run;
}

/* Waits for proc and fails the test unless it exited 0. */
static void dp_wait_ok(dp_proc_t *proc)
{
    rt_run_t run = dp_wait(proc, 120);

    rt_expect_ok(&run, proc->what);
    rt_free(&run);
}

/* Ends every process a failed case left running (each leads its own group). */
static void dp_reap_all(void)
{
    for (size_t i = 0; i < nprocs; i++) {
        if (procs[i].pid != 0) {
            kill(-procs[i].pid, SIGKILL);
            waitpid(procs[i].pid, NULL, 0);
            procs[i].pid = 0;
        }
        if (procs[i].out != NULL)
            fclose(procs[i].out);
        if (procs[i].err != NULL)
            fclose(procs[i].err);
        procs[i].out = procs[i].err = NULL;
    }
    nprocs = 0;
}

/* ------------------------------------------------------------------------ */
/* Checks                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * The job's results: the output directory the driver's --output names
 * passes valsort with gensort's checksum for DP_RECORDS records, and the
 * report its --json names says it succeeded cleanly on executors
 * executor-0 .. executor-(n-1), the names the Job's pods gave themselves.
 */
static void dp_expect_job_done(json_t *plan, const char *name)
{
    json_t *driver = dp_process(plan, 0), *rep, *execs;
    size_t n = dp_nexecutors(plan);
    bool seen[DP_MAX_PROCS] = {false};
    char scratch[512];

    snprintf(scratch, sizeof(scratch), "%s/%s-gensort", base, name);
    rt_expect_sorted(dp_arg(driver, "--output"), DP_RECORDS, scratch);
    rep = rt_json_load(dp_arg(driver, "--json"));
    rt_expect_report(rep, (unsigned)n, true);
    execs = rt_json_at(rep, "executors");
    for (size_t i = 0; i < json_array_size(execs); i++) {
        const char *got = json_string_value(json_object_get(json_array_get(execs, i), "name"));
        unsigned idx;
        char tail;
        if (got == NULL || sscanf(got, "executor-%u%c", &idx, &tail) != 1 || idx >= n || seen[idx])
            fail_msg("the report names executor %zu '%s', want executor-0 .. executor-%zu once "
                     "each",
                     i, got != NULL ? got : "(none)", n - 1);
        seen[idx] = true;
    }
    json_decref(rep);
}

/* ------------------------------------------------------------------------ */
/* Cases                                                                     */
/* ------------------------------------------------------------------------ */

/* The manifests as they are: a driver, N executors, the job done and checked. */
static void test_deploy_manifests_run_terasort(void **state)
{
    json_t *plan = dp_plan("run", NULL);
    size_t n = dp_nexecutors(plan);
    json_t *driver = dp_process(plan, 0);
    dp_proc_t *dproc, *eprocs[DP_MAX_PROCS];
    char want[128], dir[600];
    rt_run_t run;

    (void)state;
    assert_true(n >= 2 && n < DP_MAX_PROCS);
    assert_string_equal(json_string_value(json_object_get(driver, "role")), "driver");
    assert_int_equal(strtoul(dp_arg(driver, "--wait-executors"), NULL, 10), n);
    dproc = dp_start(driver, NULL);
    for (size_t i = 0; i < n; i++) {
        json_t *e = dp_process(plan, i + 1);
        assert_string_equal(json_string_value(json_object_get(e, "role")), "executor");
        /* The Service's name resolved to the driver's pod, which listens there. */
        assert_string_equal(dp_arg(e, "--driver"), dp_arg(driver, "--listen"));
        eprocs[i] = dp_start(e, NULL);
    }
    for (size_t i = 0; i < n; i++)
        dp_wait_ok(eprocs[i]);
    run = dp_wait(dproc, 120);
    rt_expect_ok(&run, "the driver");
    snprintf(want, sizeof(want), "driver listening on %s; waiting for %zu executors",
             dp_arg(driver, "--listen"), n);
    if (strstr(run.err, want) == NULL)
        fail_msg("the driver's stderr does not say \"%s\": %s", want, rt_tail(run.err));
    rt_free(&run);
    dp_expect_job_done(plan, "run");
    /* Each executor shuffled in its own pod's scratch volume, as its env says. */
    for (size_t i = 0; i < n; i++) {
        json_t *env = json_object_get(dp_process(plan, i + 1), "env");
        const char *dirs = json_string_value(json_object_get(env, "SPATE_CONF_SHUFFLE_LOCAL_DIRS"));
        if (dirs == NULL)
            continue;
        snprintf(dir, sizeof(dir), "%s", dirs);
        if (access(dir, F_OK) != 0)
            fail_msg("executor %zu never created its shuffle directory %s", i, dir);
    }
    json_decref(plan);
}

/*
 * An executor started with another secret is refused by the driver, which
 * keeps waiting; the right executors then come and the job completes on
 * them alone.
 */
static void test_deploy_wrong_secret_refused(void **state)
{
    json_t *plan = dp_plan("secret", NULL);
    size_t n = dp_nexecutors(plan);
    json_t *first = dp_process(plan, 1);
    const char *secret =
        json_string_value(json_object_get(json_object_get(first, "env"), "SPATE_SECRET"));
    dp_proc_t *dproc, *bad, *eprocs[DP_MAX_PROCS];
    char wrong[256];
    rt_run_t run;

    (void)state;
    assert_non_null(secret);
    assert_true(strlen(secret) >= 16 && strlen(secret) < sizeof(wrong) - 16);
    /* Same length, one character changed: only the proof can tell them apart. */
    snprintf(wrong, sizeof(wrong), "SPATE_SECRET=%s", secret);
    wrong[strlen(wrong) - 1] = wrong[strlen(wrong) - 1] == 'x' ? 'y' : 'x';

    dproc = dp_start(dp_process(plan, 0), NULL);
    bad = dp_start(first, wrong);
    run = dp_wait(bad, 60);
    rt_expect_fail(&run, 1, "driver refused: wrong secret", "the executor with a wrong secret");
    rt_free(&run);
    if (!dp_running(dproc))
        fail_msg("the driver ended after refusing an executor with a wrong secret");

    for (size_t i = 0; i < n; i++)
        eprocs[i] = dp_start(dp_process(plan, i + 1), NULL);
    for (size_t i = 0; i < n; i++)
        dp_wait_ok(eprocs[i]);
    run = dp_wait(dproc, 120);
    rt_expect_ok(&run, "the driver");
    if (strstr(run.err, "wrong secret") == NULL)
        fail_msg("the driver's stderr does not mention the refused connection: %s",
                 rt_tail(run.err));
    rt_free(&run);
    dp_expect_job_done(plan, "secret");
    json_decref(plan);
}

/*
 * One executor short: the driver gives up after executor.register_timeout,
 * saying how many came of how many, leaves no finished output, and ends the
 * executors that did come.
 */
static void test_deploy_missing_executor_times_out(void **state)
{
    static const char *const short_wait[] = {
        "--set-env", "SPATE_CONF_EXECUTOR_REGISTER_TIMEOUT=" DP_SHORT_TIMEOUT, NULL};
    json_t *plan = dp_plan("short", short_wait);
    size_t n = dp_nexecutors(plan);
    json_t *driver = dp_process(plan, 0);
    dp_proc_t *dproc, *eprocs[DP_MAX_PROCS];
    char want[160];
    rt_run_t run;

    (void)state;
    assert_string_equal(json_string_value(json_object_get(json_object_get(driver, "env"),
                                                          "SPATE_CONF_EXECUTOR_REGISTER_TIMEOUT")),
                        DP_SHORT_TIMEOUT);
    dproc = dp_start(driver, NULL);
    for (size_t i = 0; i + 1 < n; i++)
        eprocs[i] = dp_start(dp_process(plan, i + 1), NULL);
    run = dp_wait(dproc, 60);
    snprintf(want, sizeof(want),
             "only %zu of %zu executors registered within executor.register_timeout (3.0 s)", n - 1,
             n);
    rt_expect_fail(&run, 1, want, "the driver short of an executor");
    rt_free(&run);
    rt_expect_no_output(dp_arg(driver, "--output"));
    for (size_t i = 0; i + 1 < n; i++)
        dp_wait_ok(eprocs[i]);
    json_decref(plan);
}

/* Copies dir/name (under deploy/ of the source tree) to to/name, mem as the executor memory. */
static void dp_copy_file(const char *from_dir, const char *to_dir, const char *name,
                         const char *mem)
{
    char from[600], to[600];
    size_t len = 0;
    char *text, *at;

    rt_path(from, sizeof(from), from_dir, name);
    rt_path(to, sizeof(to), to_dir, name);
    text = rt_read_file(from, &len);
    if (text == NULL)
        fail_msg("cannot read %s", from);
    /* Both memory lines of the executor (requests and limits) get the new value. */
    while ((at = strstr(text, "memory: 9012Mi")) != NULL)
        memcpy(at + strlen("memory: "), mem, strlen("9012Mi"));
    rt_write_file(to, text, len);
    free(text);
}

/* Copies deploy/'s Dockerfile and manifests to dir, the executor memory changed to mem. */
static void dp_copy_deploy(const char *dir, const char *mem)
{
    const char *src = getenv("SPATE_SOURCE_DIR");
    char from[600], to[600];
    struct dirent *de;
    DIR *d;

    assert_non_null(src);
    assert_int_equal(strlen(mem), strlen("9012Mi"));
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(from, sizeof(from), "%s/deploy", src);
    dp_copy_file(from, dir, "Dockerfile", mem);
    snprintf(from, sizeof(from), "%s/deploy/k8s", src);
    rt_path(to, sizeof(to), dir, "k8s");
    assert_int_equal(mkdir(to, 0700), 0);
    d = opendir(from);
    if (d == NULL)
        fail_msg("cannot list %s: %s", from, strerror(errno));
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".yaml") != NULL)
            dp_copy_file(from, to, de->d_name, mem);
    closedir(d);
}

/* The rule check is live: executors sized against memory.executor are refused. */
static void test_deploy_manifest_check_refuses_bad_size(void **state)
{
    char dir[512], k8s[600];
    json_t *plan = NULL;
    rt_run_t run;

    (void)state;
    rt_path(dir, sizeof(dir), base, "bad-size");
    dp_copy_deploy(dir, "9000Mi");
    rt_path(k8s, sizeof(k8s), dir, "k8s");
    assert_int_equal(dp_plan_run(k8s, "bad-size-run", NULL, &plan, &run), 1);
    if (strstr(run.err, "memory.executor 8g + max(10%, 384Mi) is 9012Mi") == NULL)
        fail_msg("deploy_cmdlines.py does not name the rule: %s", rt_tail(run.err));
    rt_free(&run);
    assert_null(plan);
}

static int setup(void **state)
{
    (void)state;
    rt_mkdtemp(base, sizeof(base), "deploy");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    dp_reap_all();
    rt_rmtree(base);
    return 0;
}

static int case_teardown(void **state)
{
    (void)state;
    dp_reap_all();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_deploy_manifests_run_terasort, case_teardown),
        cmocka_unit_test_teardown(test_deploy_wrong_secret_refused, case_teardown),
        cmocka_unit_test_teardown(test_deploy_missing_executor_times_out, case_teardown),
        cmocka_unit_test_teardown(test_deploy_manifest_check_refuses_bad_size, case_teardown),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
