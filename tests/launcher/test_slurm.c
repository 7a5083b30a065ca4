/*
 * spate under a real Slurm: the group setup brings up a private single-node
 * cluster on 127.0.0.1 from Debian's slurmctld, slurmd and munge packages,
 * everything in one temporary directory (munge key and socket, slurm.conf,
 * state, spool, logs, pid files), on ports picked free on 127.0.0.1. The
 * tests then run TeraSort as users do, `srun --mpi=pmix -n N spate run
 * terasort ...` and `sbatch --wait examples/slurm/terasort.sbatch`, and check
 * the output with valsort and gensort's checksum.
 *
 * What it proves: srun's PMIx server gives each task PMIX_RANK and no
 * OMPI_COMM_WORLD_RANK, spate takes its MPI path from that (every task an
 * executor, task 0 also the driver: one summary, N executors in the report),
 * and Debian's Open MPI initialises with MPI_THREAD_MULTIPLE under it.
 *
 * The daemons are this process's children, each leading its own process
 * group; the group teardown cancels what is still queued and stops them by
 * PID, also after a failed test, and prints their logs when anything failed;
 * should the test itself be killed, their parent-death signal ends them.
 * Needs root (munged runs as the munge user, slurmd as root): elsewhere the
 * tests skip with a message, and with CI set a missing package fails them.
 *
 * Nothing may depend on this host's name resolving (a fresh machine's name
 * is often in no /etc/hosts): the cluster runs under a name that does not
 * resolve, set in a UTS namespace of the test process that the daemons and
 * jobs inherit (the machine's own name is untouched); where no namespace can
 * be made (a container without CAP_SYS_ADMIN) the tests say so and run under
 * the machine's name. The configuration is why it works: slurmd, slurmstepd
 * and srun listen on the wildcard address (no NoInAddrAny, which makes them
 * bind the address of gethostname() and so look it up), and reach each
 * other at NodeAddr and SlurmctldHost, 127.0.0.1.
 *
 * LABELS: slurm slow
 */
#include "../executor/run_test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <pwd.h>
#include <sys/random.h>
#include <sys/prctl.h>
#include <sys/socket.h>

extern char **environ;

/* Seconds a daemon gets to come up, and to go after SIGTERM. */
#define SLURM_START_S 30
#define SLURM_STOP_S  15

/* Seconds one srun or sbatch may take: far more than the few they need. */
#define SLURM_JOB_S 90

/* Bytes of the logs printed after a failure, per file. */
#define SLURM_LOG_TAIL 3000

typedef struct slurm_daemon {
    const char *name; /* also the stem of its stdout/stderr file, NAME.out */
    pid_t pid;        /* 0: not running */
} slurm_daemon_t;

static struct {
    char dir[128];
    char conf[256];
    char socket[256];
    char sbin[3][256]; /* munged, slurmctld, slurmd */
    slurm_daemon_t munged, slurmctld, slurmd;
    unsigned cpus;
    const char *skip; /* why the tests cannot run here; NULL: they can */
    char skip_buf[512];
    unsigned started, passed;
    pid_t owner; /* the test process: the daemons' parent */
} g = {
    .munged = {.name = "munged"}, .slurmctld = {.name = "slurmctld"}, .slurmd = {.name = "slurmd"}};

/* ------------------------------------------------------------------------ */
/* Daemons                                                                   */
/* ------------------------------------------------------------------------ */

/* Finds name in PATH, then in /usr/sbin and /sbin (root's PATH may lack them). */
static bool slurm_which(const char *name, char *path, size_t cap)
{
    const char *env = getenv("PATH");
    char dirs[4096];
    char *save = NULL;

    snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin:/usr/bin", env ? env : "");
    for (char *d = strtok_r(dirs, ":", &save); d != NULL; d = strtok_r(NULL, ":", &save)) {
        if (snprintf(path, cap, "%s/%s", d, name) < (int)cap && access(path, X_OK) == 0)
            return true;
    }
    return false;
}

/*
 * Starts argv in the background, stdin from /dev/null, stdout and stderr
 * appended to DIR/NAME.out, in a process group of its own.
 */
static pid_t slurm_daemon_start(slurm_daemon_t *d, const char *const *argv)
{
    char out[256], name[64];
    pid_t pid;

    snprintf(name, sizeof(name), "%s.out", d->name);
    rt_path(out, sizeof(out), g.dir, name);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);

        setpgid(0, 0);
        /* Should this test be killed (a ctest timeout), its daemons go with it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != g.owner)
            _exit(125);
        if (in < 0 || fd < 0)
            _exit(126);
        dup2(in, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    d->pid = pid;
    return pid;
}

/* Whether d is still running; reaps it and says how it ended when it is not. */
static bool slurm_daemon_alive(slurm_daemon_t *d)
{
    int ws;

    if (d->pid <= 0)
        return false;
    if (waitpid(d->pid, &ws, WNOHANG) == 0)
        return true;
    fprintf(stderr, "test_slurm: %s (pid %d) ended: %s %d\n", d->name, (int)d->pid,
            WIFEXITED(ws) ? "exit" : "signal", WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws));
    d->pid = 0;
    return false;
}

/* SIGTERM, then SIGKILL after SLURM_STOP_S; only the PID this test started. */
static void slurm_daemon_stop(slurm_daemon_t *d)
{
    double deadline = rt_now() + SLURM_STOP_S;

    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    while (waitpid(d->pid, NULL, WNOHANG) == 0) {
        if (rt_now() > deadline) {
            fprintf(stderr, "test_slurm: %s (pid %d) ignored SIGTERM; killing it\n", d->name,
                    (int)d->pid);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
            break;
        }
        usleep(20000);
    }
    d->pid = 0;
}

/* Prints the tail of DIR/name; false when there is no such file. */
static bool slurm_print_file(const char *name)
{
    char path[256];
    char *text;

    rt_path(path, sizeof(path), g.dir, name);
    if ((text = rt_read_file(path, NULL)) == NULL)
        return false;
    fprintf(stderr, "---- %s (last %d bytes) ----\n%s\n", path, SLURM_LOG_TAIL,
            strlen(text) > SLURM_LOG_TAIL ? text + strlen(text) - SLURM_LOG_TAIL : text);
    free(text);
    return true;
}

/* The daemons' logs; their stdout and stderr only where a daemon never opened its log. */
static void slurm_print_logs(void)
{
    slurm_print_file("munged.out");
    if (!slurm_print_file("slurmctld.log"))
        slurm_print_file("slurmctld.out");
    if (!slurm_print_file("slurmd.log"))
        slurm_print_file("slurmd.out");
}

/* A free TCP port on 127.0.0.1, held open in *fd_p so the next call gets another. */
static unsigned slurm_free_port(int *fd_p)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *fd_p = fd;
    return ntohs(sa.sin_port);
}

/* The number after "KEY=" in text (slurmd -C's output); 0 when absent. */
static unsigned long slurm_conf_value(const char *text, const char *key)
{
    const char *p = strstr(text, key);

    return p != NULL ? strtoul(p + strlen(key), NULL, 10) : 0;
}

/* A client command (sinfo, sbatch, ...), given SLURM_JOB_S seconds. */
#define SLURM_CMD(...) rt_spawn_env((const char *const[]){__VA_ARGS__, NULL}, NULL, SLURM_JOB_S)

/* Whether slurmctld answers (sinfo exits 0) within SLURM_START_S. */
static bool slurm_wait_ctld(void)
{
    double deadline = rt_now() + SLURM_START_S;

    while (rt_now() < deadline) {
        rt_run_t run;
        bool up;

        if (!slurm_daemon_alive(&g.slurmctld))
            return false;
        run = rt_spawn_env((const char *const[]){"sinfo", "-h", NULL}, NULL, 10);
        up = run.status == 0;
        rt_free(&run);
        if (up)
            return true;
        usleep(100000);
    }
    fprintf(stderr, "test_slurm: slurmctld did not answer within %d s\n", SLURM_START_S);
    return false;
}

/* Whether sinfo shows the node idle (the daemons' state is checked too). */
static bool slurm_wait_idle(void)
{
    double deadline = rt_now() + SLURM_START_S;

    while (rt_now() < deadline) {
        rt_run_t run;
        bool idle;

        if (!slurm_daemon_alive(&g.slurmctld) || !slurm_daemon_alive(&g.slurmd))
            return false;
        run = rt_spawn_env((const char *const[]){"sinfo", "-h", "-o", "%t", NULL}, NULL, 10);
        idle = run.status == 0 && strcmp(run.out, "idle\n") == 0;
        rt_free(&run);
        if (idle)
            return true;
        usleep(200000);
    }
    fprintf(stderr, "test_slurm: the node did not become idle within %d s\n", SLURM_START_S);
    return false;
}

/* The part of the setup that needs no daemon: why the tests cannot run here, or NULL. */
static const char *slurm_check_host(void)
{
    static const char *const sbin[] = {"munged", "slurmctld", "slurmd"};
    static const char *const bin[] = {"srun", "sbatch", "sinfo", "squeue", "scancel", "setpriv"};
    char path[256];

    if (geteuid() != 0)
        return "needs root: munged runs as the munge user and slurmd as root";
    for (size_t i = 0; i < 3; i++)
        if (!slurm_which(sbin[i], g.sbin[i], sizeof(g.sbin[i]))) {
            snprintf(g.skip_buf, sizeof(g.skip_buf),
                     "%s is not installed (Debian: slurmctld slurmd slurm-client munge)", sbin[i]);
            return g.skip_buf;
        }
    for (size_t i = 0; i < sizeof(bin) / sizeof(bin[0]); i++)
        if (!slurm_which(bin[i], path, sizeof(path))) {
            snprintf(g.skip_buf, sizeof(g.skip_buf),
                     "%s is not installed (Debian: slurm-client, util-linux)", bin[i]);
            return g.skip_buf;
        }
    if (getpwnam("munge") == NULL)
        return "there is no munge user (Debian's munge package makes it)";
    return NULL;
}

/*
 * Gives this process (and so every daemon and job it starts) a host name
 * that does not resolve, in a UTS namespace of its own. Says what it did.
 */
static void slurm_unresolvable_hostname(void)
{
    static const char name[] = "spate-test-unresolvable";
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;

    if (getaddrinfo(name, NULL, &hints, &res) == 0) {
        freeaddrinfo(res);
        fprintf(stderr, "test_slurm: %s resolves here: the machine's own host name is used\n",
                name);
        return;
    }
    if (unshare(CLONE_NEWUTS) != 0 || sethostname(name, sizeof(name) - 1) != 0) {
        fprintf(stderr,
                "test_slurm: no UTS namespace (%s): the machine's own host name is used, so "
                "these tests cannot show that nothing looks it up\n",
                strerror(errno));
        return;
    }
    fprintf(stderr, "test_slurm: running under the host name %s, which does not resolve\n", name);
}

/* munged with its own key, socket, pid, seed and log files under DIR/munge. */
static bool slurm_start_munged(void)
{
    struct passwd *pw = getpwnam("munge");
    char mdir[256], key[256], pid[256], seed[256], log[256];
    char a_key[300], a_sock[300], a_pid[300], a_seed[300], a_log[300];
    unsigned char bytes[1024];
    double deadline;

    rt_path(mdir, sizeof(mdir), g.dir, "munge");
    rt_path(key, sizeof(key), mdir, "munge.key");
    rt_path(g.socket, sizeof(g.socket), mdir, "munge.socket");
    rt_path(pid, sizeof(pid), mdir, "munged.pid");
    rt_path(seed, sizeof(seed), mdir, "munged.seed");
    rt_path(log, sizeof(log), mdir, "munged.log");
    /* The socket's directory must be reachable by every job user: world-executable. */
    assert_int_equal(mkdir(mdir, 0711), 0);
    assert_int_equal(chown(mdir, pw->pw_uid, pw->pw_gid), 0);
    assert_int_equal(getrandom(bytes, sizeof(bytes), 0), (ssize_t)sizeof(bytes));
    rt_write_file(key, bytes, sizeof(bytes));
    assert_int_equal(chown(key, pw->pw_uid, pw->pw_gid), 0);
    assert_int_equal(chmod(key, 0400), 0);
    snprintf(a_key, sizeof(a_key), "--key-file=%s", key);
    snprintf(a_sock, sizeof(a_sock), "--socket=%s", g.socket);
    snprintf(a_pid, sizeof(a_pid), "--pid-file=%s", pid);
    snprintf(a_seed, sizeof(a_seed), "--seed-file=%s", seed);
    snprintf(a_log, sizeof(a_log), "--log-file=%s", log);
    {
        char setpriv[256];
        const char *argv[] = {setpriv, "--reuid=munge", "--regid=munge", "--init-groups",
                              /* the uid change clears the parent-death signal: set it again */
                              "--pdeathsig=TERM", g.sbin[0], "-F", a_key, a_sock, a_pid, a_seed,
                              a_log, "--origin=127.0.0.1", NULL};
        /* setpriv execs munged: the PID is munged's own. */
        assert_true(slurm_which("setpriv", setpriv, sizeof(setpriv)));
        slurm_daemon_start(&g.munged, argv);
    }
    deadline = rt_now() + SLURM_START_S;
    while (access(g.socket, F_OK) != 0) {
        if (!slurm_daemon_alive(&g.munged) || rt_now() > deadline) {
            fprintf(stderr, "test_slurm: munged did not create %s\n", g.socket);
            return false;
        }
        usleep(20000);
    }
    return true;
}

/* DIR/slurm.conf for one node, localhost at 127.0.0.1, with this host's CPUs. */
static void slurm_write_conf(void)
{
    rt_run_t run = rt_spawn_env((const char *const[]){g.sbin[2], "-C", NULL}, NULL, 30);
    unsigned long mem;
    int fd1, fd2;
    unsigned ctld_port, d_port;
    char conf[4096];
    int n;

    rt_expect_ok(&run, "slurmd -C");
    g.cpus = (unsigned)slurm_conf_value(run.out, "CPUs=");
    mem = slurm_conf_value(run.out, "RealMemory=");
    if (g.cpus == 0 || mem == 0)
        fail_msg("slurmd -C gave no CPUs or RealMemory: %s", run.out);
    rt_free(&run);
    ctld_port = slurm_free_port(&fd1);
    d_port = slurm_free_port(&fd2);
    close(fd1);
    close(fd2);
    /*
     * RealMemory above what slurmd finds drains the node; half of it is always
     * safe. MinJobAge=4: sbatch --wait polls every 2 s while that is below half
     * the age, instead of backing off to 8 s, and a job still stays listed for
     * its next poll. No CommunicationParameters=NoInAddrAny: with it slurmd,
     * slurmstepd and srun bind the address of this host's name, which need not
     * resolve; they listen on the wildcard address instead and are reached at
     * 127.0.0.1 (NodeAddr), as slurmctld is (SlurmctldHost).
     */
    n = snprintf(conf, sizeof(conf),
                 "ClusterName=spatetest\n"
                 "SlurmctldHost=localhost(127.0.0.1)\n"
                 "SlurmUser=root\n"
                 "SlurmdUser=root\n"
                 "AuthType=auth/munge\n"
                 "CredType=cred/munge\n"
                 "AuthInfo=socket=%s\n"
                 "MpiDefault=pmix\n"
                 "ProctrackType=proctrack/linuxproc\n"
                 "TaskPlugin=task/none\n"
                 "JobAcctGatherType=jobacct_gather/none\n"
                 "AccountingStorageType=accounting_storage/none\n"
                 "SchedulerType=sched/backfill\n"
                 "SelectType=select/cons_tres\n"
                 "SelectTypeParameters=CR_Core\n"
                 "ReturnToService=2\n"
                 "MinJobAge=4\n"
                 "StateSaveLocation=%s/state\n"
                 "SlurmdSpoolDir=%s/spool\n"
                 "SlurmctldPidFile=%s/slurmctld.pid\n"
                 "SlurmdPidFile=%s/slurmd.pid\n"
                 "SlurmctldLogFile=%s/slurmctld.log\n"
                 "SlurmdLogFile=%s/slurmd.log\n"
                 "SlurmctldPort=%u\n"
                 "SlurmdPort=%u\n"
                 "NodeName=localhost NodeAddr=127.0.0.1 CPUs=%u RealMemory=%lu\n"
                 "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
                 g.socket, g.dir, g.dir, g.dir, g.dir, g.dir, g.dir, ctld_port, d_port, g.cpus,
                 mem / 2);
    assert_true(n > 0 && (size_t)n < sizeof(conf));
    rt_path(g.conf, sizeof(g.conf), g.dir, "slurm.conf");
    rt_write_file(g.conf, conf, (size_t)n);
}

/* Leaves SLURM_CONF as the only SLURM_ variable, so an outer allocation cannot leak in. */
static void slurm_env_clean(void)
{
    char names[64][64];
    size_t n = 0;

    for (char **e = environ; *e != NULL && n < 64; e++) {
        size_t len = strcspn(*e, "=");
        if (strncmp(*e, "SLURM_", 6) == 0 && len < sizeof(names[0])) {
            memcpy(names[n], *e, len);
            names[n++][len] = '\0';
        }
    }
    for (size_t i = 0; i < n; i++)
        unsetenv(names[i]);
    setenv("SLURM_CONF", g.conf, 1);
    /* What the jobs get: srun passes this environment to every task. */
    rt_env_loopback();
    setenv("OMPI_MCA_btl", "self,vader,tcp", 1);
}

/*
 * Waits until no slurmstepd of this cluster is left: each keeps a socket
 * named NODE_JOB.STEP in the spool directory while it runs, and a job leaves
 * squeue a little before its stepds have exited.
 */
static void slurm_wait_steps(void)
{
    double deadline = rt_now() + SLURM_STOP_S;
    char spool[256];

    rt_path(spool, sizeof(spool), g.dir, "spool");
    for (;;) {
        DIR *d = opendir(spool);
        struct dirent *de;
        const char *left = NULL;

        while (d != NULL && (de = readdir(d)) != NULL && left == NULL)
            if (strncmp(de->d_name, "localhost_", 10) == 0)
                left = de->d_name;
        if (left != NULL && rt_now() > deadline)
            fprintf(stderr, "test_slurm: step %s is still running after %d s\n", left,
                    SLURM_STOP_S);
        if (d != NULL)
            closedir(d);
        if (left == NULL || rt_now() > deadline)
            return;
        usleep(50000);
    }
}

static int slurm_group_teardown(void **state);

/* A failed assertion in the group setup still stops what was started. */
static void slurm_atexit(void)
{
    if (getpid() == g.owner)
        slurm_group_teardown(NULL);
}

static int slurm_group_setup(void **state)
{
    double t0 = rt_now();
    char path[256];

    (void)state;
    if ((g.skip = slurm_check_host()) != NULL) {
        if (getenv("CI") != NULL && geteuid() == 0) {
            fprintf(stderr, "test_slurm: CI is set and %s\n", g.skip);
            return -1;
        }
        fprintf(stderr, "test_slurm: skipped: %s\n", g.skip);
        return 0;
    }
    g.owner = getpid();
    atexit(slurm_atexit);
    slurm_unresolvable_hostname();
    rt_mkdtemp(g.dir, sizeof(g.dir), "slurm");
    /* munged (the munge user) must reach its socket below this directory. */
    assert_int_equal(chmod(g.dir, 0755), 0);
    rt_path(path, sizeof(path), g.dir, "state");
    assert_int_equal(mkdir(path, 0700), 0);
    rt_path(path, sizeof(path), g.dir, "spool");
    assert_int_equal(mkdir(path, 0755), 0);
    if (!slurm_start_munged())
        goto fail;
    slurm_write_conf();
    slurm_env_clean();
    slurm_daemon_start(&g.slurmctld, (const char *const[]){g.sbin[1], "-D", "-i", NULL});
    /* slurmd registers at once when slurmctld answers, else only after a retry delay. */
    if (!slurm_wait_ctld())
        goto fail;
    /* This host's name is not the node's: -N says which node this slurmd is. */
    slurm_daemon_start(&g.slurmd, (const char *const[]){g.sbin[2], "-D", "-N", "localhost", NULL});
    if (!slurm_wait_idle())
        goto fail;
    fprintf(stderr, "test_slurm: single-node Slurm up in %.1f s in %s (%u CPUs)\n", rt_now() - t0,
            g.dir, g.cpus);
    return 0;
fail:
    g.started++; /* the teardown prints the logs */
    slurm_group_teardown(state);
    return -1;
}

static int slurm_group_teardown(void **state)
{
    (void)state;
    if (g.dir[0] == '\0')
        return 0;
    if (g.slurmctld.pid > 0 && slurm_daemon_alive(&g.slurmctld)) {
        /* Nothing may outlive the daemons: cancel what is left and let it end. */
        double deadline = rt_now() + SLURM_STOP_S;
        rt_run_t run = SLURM_CMD("scancel", "--partition=debug");

        rt_free(&run);
        for (;;) {
            bool empty;
            run = rt_spawn_env((const char *const[]){"squeue", "-h", NULL}, NULL, 10);
            empty = run.status == 0 && run.out[0] == '\0';
            rt_free(&run);
            if (empty || rt_now() > deadline)
                break;
            usleep(200000);
        }
    }
    slurm_wait_steps();
    slurm_daemon_stop(&g.slurmd);
    slurm_daemon_stop(&g.slurmctld);
    slurm_daemon_stop(&g.munged);
    if (g.passed != g.started)
        slurm_print_logs();
    rt_rmtree(g.dir);
    g.dir[0] = '\0';
    return 0;
}

/* Each test's first line: skips when the host cannot run Slurm, counts the test. */
static void slurm_test_begin(void)
{
    if (g.skip != NULL) {
        fprintf(stderr, "test_slurm: skipped: %s\n", g.skip);
        skip();
    }
    g.started++;
    /*
     * A job submitted while the last one is still completing waits for the
     * scheduler's next pass (seconds); one submitted to an idle node starts.
     */
    if (!slurm_wait_idle())
        fail_msg("the node is not idle before the test");
}

/* Each test's last line: the logs are printed only when some test did not get here. */
static void slurm_test_end(void) { g.passed++; }

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

/* srun --mpi=pmix -n TASKS CMD..., with --overcommit where the node has fewer CPUs. */
static rt_run_t slurm_srun(unsigned tasks, const char *const *cmd)
{
    const char *argv[64];
    char ntasks[16];
    size_t n = 0;

    snprintf(ntasks, sizeof(ntasks), "%u", tasks);
    argv[n++] = "srun";
    argv[n++] = "--mpi=pmix";
    argv[n++] = "-n";
    argv[n++] = ntasks;
    if (tasks > g.cpus)
        argv[n++] = "--overcommit";
    argv[n++] = "--input=none";
    for (; *cmd != NULL; cmd++) {
        assert_true(n < sizeof(argv) / sizeof(argv[0]) - 1);
        argv[n++] = *cmd;
    }
    argv[n] = NULL;
    return rt_spawn_env(argv, NULL, SLURM_JOB_S);
}

#define SLURM_SRUN(tasks, ...) slurm_srun(tasks, (const char *const[]){__VA_ARGS__, NULL})

/*
 * What spate's launch detection reads: under srun --mpi=pmix each task has
 * PMIX_RANK (its rank) and no OMPI_COMM_WORLD_RANK. `srun --mpi=list` is in
 * the message so a Slurm without the pmix plugin says so.
 */
static void test_slurm_pmix_environment(void **state)
{
    rt_run_t list, run;
    char line[128];

    (void)state;
    slurm_test_begin();
    list = SLURM_CMD("srun", "--mpi=list");
    run = SLURM_SRUN(2, "sh", "-c",
                     "echo \"rank=$SLURM_PROCID pmix=${PMIX_RANK-unset} "
                     "ompi=${OMPI_COMM_WORLD_RANK-unset}\"");
    if (run.status != 0)
        fail_msg("srun --mpi=pmix: exit %d; stderr: %s; srun --mpi=list: %s%s", run.status,
                 rt_tail(run.err), list.out, list.err);
    for (unsigned r = 0; r < 2; r++) {
        snprintf(line, sizeof(line), "rank=%u pmix=%u ompi=unset\n", r, r);
        if (strstr(run.out, line) == NULL)
            fail_msg("no \"%.*s\" among the tasks' environments: %s", (int)strlen(line) - 1, line,
                     run.out);
    }
    rt_free(&list);
    rt_free(&run);
    slurm_test_end();
}

/*
 * srun --mpi=pmix -n TASKS spate run terasort: one driver (one summary on
 * stdout), TASKS executors in the report, and output that valsort and
 * gensort's checksum accept.
 */
static void slurm_terasort(unsigned tasks, const char *size, unsigned long long bytes)
{
    const char *cli = getenv("SPATE_CLI");
    char name[32], out[256], json[256], scratch[256], want[64];
    const char *summary;
    rt_run_t run;
    json_t *rep;

    assert_non_null(cli);
    snprintf(name, sizeof(name), "terasort-n%u", tasks);
    rt_path(out, sizeof(out), g.dir, name);
    snprintf(name, sizeof(name), "terasort-n%u.json", tasks);
    rt_path(json, sizeof(json), g.dir, name);
    rt_path(scratch, sizeof(scratch), g.dir, "gensort-scratch");
    run = SLURM_SRUN(tasks, cli, "run", "terasort", "--size", size, "--output", out, "--json", json,
                     "--no-progress", "--no-baseline");
    rt_expect_ok(&run, "srun --mpi=pmix spate run terasort");
    /* Local mode in every task would print one summary per task. */
    summary = strstr(run.out, "job terasort succeeded");
    if (summary == NULL || strstr(summary + 1, "job terasort succeeded") != NULL)
        fail_msg("want exactly one driver's summary on stdout: %s", rt_tail(run.out));
    snprintf(want, sizeof(want), "on %u executor(s)", tasks);
    if (strstr(run.out, want) == NULL)
        fail_msg("the summary does not say \"%s\": %s", want, rt_tail(run.out));
    rep = rt_json_load(json);
    rt_expect_report(rep, tasks, true);
    json_decref(rep);
    rt_expect_sorted(out, bytes / 100, scratch);
    rt_free(&run);
    rt_rmtree(out);
}

static void test_slurm_terasort_two_tasks(void **state)
{
    (void)state;
    slurm_test_begin();
    slurm_terasort(2, "32m", 32ull << 20);
    slurm_test_end();
}

/* More tasks than this 2-core node has CPUs: --overcommit, as on a laptop. */
static void test_slurm_terasort_overcommit(void **state)
{
    (void)state;
    slurm_test_begin();
    slurm_terasort(g.cpus + 1 > 3 ? g.cpus + 1 : 3, "32m", 32ull << 20);
    slurm_test_end();
}

/* examples/slurm/terasort.sbatch, submitted as its README says, with sbatch --wait. */
static void test_slurm_sbatch_example(void **state)
{
    const char *src = getenv("SPATE_SOURCE_DIR"), *cli = getenv("SPATE_CLI");
    char script[512], log[256], out[256], scratch[256], a_chdir[300], a_log[300], a_export[900];
    rt_run_t run;
    char *text;

    (void)state;
    slurm_test_begin();
    assert_non_null(src);
    assert_non_null(cli);
    rt_path(script, sizeof(script), src, "examples/slurm/terasort.sbatch");
    rt_path(log, sizeof(log), g.dir, "sbatch.out");
    rt_path(out, sizeof(out), g.dir, "terasort-sbatch");
    rt_path(scratch, sizeof(scratch), g.dir, "gensort-scratch");
    snprintf(a_chdir, sizeof(a_chdir), "--chdir=%s", g.dir);
    snprintf(a_log, sizeof(a_log), "--output=%s", log);
    snprintf(a_export, sizeof(a_export), "--export=ALL,SPATE=%s,SIZE=16m,OUTPUT=%s", cli, out);
    /* The script asks for 2 tasks; a 1-CPU node needs --overcommit for them. */
    run = g.cpus < 2
              ? SLURM_CMD("sbatch", "--wait", "--overcommit", a_chdir, a_log, a_export, script)
              : SLURM_CMD("sbatch", "--wait", a_chdir, a_log, a_export, script);
    text = rt_read_file(log, NULL);
    if (run.status != 0)
        fail_msg("sbatch --wait %s: exit %d; stderr: %s; job output: %s", script, run.status,
                 rt_tail(run.err), text ? rt_tail(text) : "(none)");
    if (text == NULL || strstr(text, "on 2 executor(s)") == NULL ||
        strstr(text, "SUCCESS - all records are in order") == NULL)
        fail_msg("the batch job's output lacks the 2-executor summary or valsort's SUCCESS: %s",
                 text ? rt_tail(text) : "(none)");
    free(text);
    rt_expect_sorted(out, (16ull << 20) / 100, scratch);
    rt_free(&run);
    slurm_test_end();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slurm_pmix_environment),
        cmocka_unit_test(test_slurm_terasort_two_tasks),
        cmocka_unit_test(test_slurm_terasort_overcommit),
        cmocka_unit_test(test_slurm_sbatch_example),
    };

    return cmocka_run_group_tests(tests, slurm_group_setup, slurm_group_teardown);
}
