/*
 * Runs one job (run.h): on a local cluster of executor processes forked from
 * this one, on executors that join a standalone driver, on executors from
 * Mesos offers, or, under mpirun/srun, with every rank an executor and rank 0
 * also the driver. The launch mode is decided from the environment before MPI
 * is touched: OMPI_COMM_WORLD_RANK (Open MPI), else PMIX_RANK (PMIx, srun
 * --mpi=pmix), else PMI_RANK; none of them means local mode.
 *
 * Local mode: the driver listens on driver.address (127.0.0.1, any port),
 * generates a secret, and starts each executor as `<this program> executor
 * --driver ADDR` with the secret in its environment (SPATE_SECRET), never on
 * a command line: a program that runs jobs this way must also answer the
 * `executor` command (spate and spate-bench do). Executors prove they know
 * the secret in the control plane's handshake. Under MPI the control
 * messages go over a private communicator (a duplicate of MPI_COMM_WORLD per
 * job) and rank 0's own executor talks to the driver over a socket pair.
 *
 * MPI is initialized once per process: by sp_run_mpi_init() for a caller
 * that runs many jobs, else by sp_run_job itself, which then finalizes it.
 */
#include "run.h"

#include "cli.h"
#include "mesos.h"

#include "common_int.h"
#include "control/control.h"
#include "transport/transport_proc.h"

#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* MPI was initialized by sp_run_mpi_init (and is finalized by sp_run_mpi_finalize). */
static bool sp_run_mpi_owned_by_caller;

int sp_run_exit_code(sp_status_t st)
{
    switch (st) {
    case SP_OK: return 0;
    case SP_ERR_INVALID_PARAM:
    case SP_ERR_BAD_CONF:
    case SP_ERR_NOT_FOUND:
    case SP_ERR_EXISTS:
    case SP_ERR_BAD_INPUT:
    case SP_ERR_BAD_FORMAT: return 2;
    default: return 1;
    }
}

/* The launch environment, read before MPI_Init. */
bool sp_run_under_mpi(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(vars); i++)
        if (getenv(vars[i]) != NULL)
            return true;
    return false;
}

sp_status_t sp_run_slots(const sp_conf_t *conf, uint32_t count, uint32_t *slots_p,
                         uint32_t *default_count_p)
{
    sp_executor_plan_t *plan = NULL;
    sp_topology_t *topo = NULL;
    const char *src = "";
    int64_t cores = 0;
    uint32_t slots = 0;
    sp_status_t st;

    if ((st = sp_conf_get_string(conf, "memory.topology", &src)) != SP_OK ||
        (st = sp_conf_get_int(conf, "executor.cores", &cores)) != SP_OK ||
        (st = sp_topology_create(src[0] ? src : NULL, &topo)) != SP_OK)
        return st;
    if ((st = sp_topology_plan_executors(topo, conf, count ? count : 2, &plan)) == SP_OK) {
        if (default_count_p != NULL)
            *default_count_p = plan->count;
        if (count == 0)
            count = plan->count;
        for (uint32_t i = 0; i < count; i++)
            slots += cores > 0 ? (uint32_t)cores : SP_MAX(plan->slots[i % plan->count].cores, 1u);
        *slots_p = slots ? slots : count;
    }
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Local mode                                                                */
/* ------------------------------------------------------------------------ */

static pid_t sp_run_spawn(const char *self, const char *addr, const char *secret, unsigned index,
                          unsigned count)
{
    char idx[16], cnt[16], env_secret[80], level[16];
    pid_t pid;

    snprintf(idx, sizeof(idx), "%u", index);
    snprintf(cnt, sizeof(cnt), "%u", count);
    snprintf(env_secret, sizeof(env_secret), "SPATE_SECRET=%s", secret);
    snprintf(level, sizeof(level), "%d", (int)sp_log_level());
    pid = fork();
    if (pid != 0)
        return pid;
    /*
     * Child. A Ctrl-C on the terminal goes to the whole foreground process
     * group, but the driver alone must handle it: it shuts the executors down
     * and removes the run's files. So each executor leads a process group of
     * its own, and ignores SIGINT besides (kept across exec; a library it
     * loads, libpsm2 for one, may still install a handler of its own).
     */
    setpgid(0, 0);
    signal(SIGINT, SIG_IGN);
    /* The secret goes only into the environment. */
    if (putenv(env_secret) != 0)
        _exit(127);
    {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        char *argv[] = {(char *)self, "--log",    (char *)names[sp_log_level()],
                        "executor",   "--driver", (char *)addr,
                        "--index",    idx,        "--of",
                        cnt,          NULL};
        execve(self, argv, environ);
    }
    fprintf(stderr, "spate: cannot start an executor (%s): %s\n", self, strerror(errno));
    _exit(127);
}

/*
 * Waits for the executors to exit and kills those that do not within 15 s;
 * after an interrupt within 2 s (the driver already waited for them to say
 * goodbye), and at once after a second one.
 */
static void sp_run_reap(pid_t *pids, unsigned n)
{
    uint64_t start = sp__now_ns(), deadline = start + 15ull * 1000000000ull;
    unsigned left = n, signals = 0;

    while (left > 0) {
        left = 0;
        for (unsigned i = 0; i < n; i++) {
            if (pids[i] <= 0)
                continue;
            int status = 0;
            if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
                if (WIFSIGNALED(status)) /* it died without closing its endpoint */
                    sp__transport_clear_dead_process((long)pids[i]);
                pids[i] = 0;
            } else
                left++;
        }
        if (left == 0)
            break;
        if (sp__driver_interrupted(&signals) != 0)
            deadline = SP_MIN(deadline, signals > 1 ? start : start + 2ull * 1000000000ull);
        if (sp__now_ns() > deadline) {
            for (unsigned i = 0; i < n; i++)
                if (pids[i] > 0) {
                    sp_warn("executor pid %d did not exit; killing it", (int)pids[i]);
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], NULL, 0);
                    sp__transport_clear_dead_process((long)pids[i]); /* died unclosed */
                    pids[i] = 0;
                }
            break;
        }
        usleep(10000);
    }
}

/* The executor processes of a local run, and what it takes to start more. */
typedef struct sp_run_children {
    pid_t *pids;     /* cap slots; 0: free */
    unsigned *index; /* each slot's --index (its NUMA slot among the executors) */
    bool *ready;     /* each slot's executor became ready */
    size_t cap;
    unsigned of; /* --of */
    int64_t relaunches_left;
    const char *self, *addr, *secret;
} sp_run_children_t;

/*
 * The driver lost the executor of pid (sp__driver_opts_t.executor_ended):
 * reaps it (killing it if it has not ended within wait_ms), says how it
 * ended, and starts another in its place while executor.max_relaunches
 * allows.
 */
static bool sp_run_executor_ended(void *arg, uint32_t pid, int wait_ms, char *how, size_t cap)
{
    sp_run_children_t *c = arg;
    uint64_t deadline = sp__now_ns() + (uint64_t)wait_ms * 1000000u;
    size_t slot = c->cap;
    int status = 0;
    pid_t got = 0;

    how[0] = '\0';
    for (size_t i = 0; i < c->cap; i++)
        if (c->pids[i] > 0 && (uint32_t)c->pids[i] == pid)
            slot = i;
    if (slot == c->cap)
        return false;
    while ((got = waitpid(c->pids[slot], &status, WNOHANG)) == 0 && sp__now_ns() < deadline)
        usleep(5000);
    if (got == 0) {
        /* Still running though the driver gave up on it: it must not serve stale outputs. */
        kill(c->pids[slot], SIGKILL);
        got = waitpid(c->pids[slot], &status, 0);
    } else if (got == c->pids[slot] && WIFSIGNALED(status)) {
        const char *name = sp__signal_name(WTERMSIG(status));
        if (name != NULL)
            snprintf(how, cap, "died of %s", name);
        else
            snprintf(how, cap, "died of signal %d", WTERMSIG(status));
    } else if (got == c->pids[slot] && WIFEXITED(status)) {
        snprintf(how, cap, "exited with status %d", WEXITSTATUS(status));
    }
    if (got == c->pids[slot] && WIFSIGNALED(status)) /* it died without closing its endpoint */
        sp__transport_clear_dead_process((long)c->pids[slot]);
    c->pids[slot] = 0;
    if (c->relaunches_left <= 0)
        return false;
    for (size_t i = 0; i < c->cap; i++) {
        if (c->pids[i] != 0)
            continue;
        c->pids[i] = sp_run_spawn(c->self, c->addr, c->secret, c->index[slot], c->of);
        if (c->pids[i] < 0) {
            sp_warn("cannot start an executor in place of pid %u: %s", pid, strerror(errno));
            c->pids[i] = 0;
            return false;
        }
        c->index[i] = c->index[slot];
        c->ready[i] = false;
        c->relaunches_left--;
        sp_warn("executor pid %u is gone; started pid %d in its place (%lld more allowed by "
                "executor.max_relaunches)",
                pid, (int)c->pids[i], (long long)c->relaunches_left);
        return true;
    }
    return false;
}

/* sp__driver_opts_t.executor_event: notes which executors became ready. */
static void sp_run_executor_event(void *arg, const sp__executor_report_t *x, bool lost)
{
    sp_run_children_t *c = arg;

    for (size_t i = 0; !lost && i < c->cap; i++)
        if (c->pids[i] > 0 && (uint32_t)c->pids[i] == x->pid)
            c->ready[i] = true;
}

/*
 * After the driver: an executor that never became ready (a replacement still
 * starting) would wait for a driver that is gone until its register timeout.
 */
static void sp_run_stop_unready(const sp_run_children_t *c)
{
    for (size_t i = 0; i < c->cap; i++)
        if (c->pids[i] > 0 && !c->ready[i])
            kill(c->pids[i], SIGTERM);
}

static sp_status_t sp_run_local(const sp_run_request_t *req, sp__driver_report_t *rep)
{
    const char *listen_at = "127.0.0.1:0";
    char bound[128], generated[65], self[4096];
    bool standalone = req->wait_executors > 0;
    uint32_t executors = standalone ? req->wait_executors : req->executors;
    unsigned spawn = standalone ? 0 : executors;
    sp__driver_t *driver = NULL;
    void *secret = NULL;
    size_t secret_len = 0;
    pid_t *pids = NULL;
    unsigned *slots = NULL;
    bool *ready = NULL;
    sp_run_children_t children = {0};
    int64_t relaunches = 0;
    ssize_t n;
    int lfd = -1;
    sp_status_t st;

    if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) <= 0)
        return SP_RAISE(SP_ERR_IO, "cannot find this program (/proc/self/exe): %s",
                        strerror(errno));
    self[n] = '\0';
    sp_conf_get_string(req->conf, "driver.address", &listen_at);
    if (standalone) {
        /* Executors started elsewhere know the secret from the same file or variable. */
        if ((st = sp_cli_secret_load(req->secret_file, NULL, &secret, &secret_len)) != SP_OK)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "standalone mode needs the job's secret: %s",
                            sp_last_error());
    } else {
        /* Every executor is on this host: libfabric's tcp provider stays on loopback. */
        setenv("FI_TCP_IFACE", "lo", 0);
        if ((st = sp__ctl_secret_generate(generated)) != SP_OK)
            return st;
        if ((secret = strdup(generated)) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the secret");
        secret_len = strlen(generated);
    }
    if ((st = sp__ctl_listen(listen_at, bound, sizeof(bound), &lfd)) != SP_OK) {
        free(secret);
        return st;
    }
    if (standalone) {
        fprintf(stderr, "%s: driver listening on %s; waiting for %u executors\n", req->prog, bound,
                executors);
        fflush(stderr);
    }
    if ((st = sp_conf_get_int(req->conf, "executor.max_relaunches", &relaunches)) != SP_OK)
        goto out;
    if (spawn == 0)
        relaunches = 0;
    if ((pids = calloc(executors + (size_t)relaunches + 1, sizeof(*pids))) == NULL ||
        (slots = calloc(executors + (size_t)relaunches + 1, sizeof(*slots))) == NULL ||
        (ready = calloc(executors + (size_t)relaunches + 1, sizeof(*ready))) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u executors", executors);
        goto out;
    }
    children = (sp_run_children_t){.pids = pids,
                                   .index = slots,
                                   .ready = ready,
                                   .cap = spawn + (size_t)relaunches,
                                   .of = spawn,
                                   .relaunches_left = relaunches,
                                   .self = self,
                                   .addr = bound,
                                   .secret = secret};
    sp__driver_opts_t dopts = {.conf = req->conf,
                               .job = req->job,
                               .job_name = req->job_name,
                               .params = req->params,
                               .executors = executors,
                               .listen_fd = lfd,
                               .secret = secret,
                               .secret_len = secret_len,
                               .progress = req->progress ? sp_run_progress_cb : NULL,
                               .progress_arg = req->progress,
                               .pids = pids,
                               .npids = children.cap,
                               .executor_ended = spawn > 0 ? sp_run_executor_ended : NULL,
                               .executor_ended_arg = &children,
                               .executor_event = spawn > 0 ? sp_run_executor_event : NULL,
                               .executor_event_arg = &children};
    if ((st = sp__driver_create(&dopts, &driver)) != SP_OK)
        goto out;
    for (unsigned i = 0; i < spawn; i++) {
        pids[i] = sp_run_spawn(self, bound, secret, i, spawn);
        slots[i] = i;
        if (pids[i] < 0) {
            st = SP_RAISE(SP_ERR_NO_RESOURCE, "fork of executor %u: %s", i, strerror(errno));
            goto out;
        }
    }
    if (spawn > 0)
        sp_info("driver listening on %s, %u executors started", bound, spawn);
    st = sp__driver_run(driver, rep);
out : {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", sp_last_error());
    /* An executor still starting (a replacement) must find no driver rather than wait for one. */
    if (lfd >= 0)
        shutdown(lfd, SHUT_RDWR);
    if (pids != NULL) {
        sp_run_stop_unready(&children);
        sp_run_reap(pids, (unsigned)children.cap);
    }
    /* Executors that were killed could not remove their files: this host's are ours to remove. */
    if (driver != NULL && spawn > 0)
        sp__app_dirs_remove(req->conf, sp__driver_app_id(driver));
    sp__driver_destroy(driver);
    if (st != SP_OK)
        SP_RAISE(st, "%s", msg);
}
    free(pids);
    free(slots);
    free(ready);
    free(secret);
    if (lfd >= 0)
        close(lfd);
    return st;
}

/* ------------------------------------------------------------------------ */
/* MPI mode                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct sp_run_exec_thread {
    sp__executor_opts_t opts;
    sp_status_t status;
    char message[1024];
} sp_run_exec_thread_t;

static void *sp_run_exec_main(void *arg)
{
    sp_run_exec_thread_t *t = arg;

    t->status = sp__executor_run(&t->opts);
    if (t->status != SP_OK)
        snprintf(t->message, sizeof(t->message), "%s", sp_last_error());
    return NULL;
}

sp_status_t sp_run_mpi_init(int *rank_p, int *size_p)
{
    int provided, initialized = 0;

    MPI_Initialized(&initialized);
    if (!initialized) {
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
            return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Init_thread failed");
        if (provided < MPI_THREAD_MULTIPLE) {
            MPI_Finalize();
            return SP_RAISE(SP_ERR_UNSUPPORTED,
                            "this MPI library does not provide MPI_THREAD_MULTIPLE (it gave level "
                            "%d), which spate's executors need",
                            provided);
        }
        sp_run_mpi_owned_by_caller = true;
    }
    if (rank_p != NULL)
        MPI_Comm_rank(MPI_COMM_WORLD, rank_p);
    if (size_p != NULL)
        MPI_Comm_size(MPI_COMM_WORLD, size_p);
    return SP_OK;
}

void sp_run_mpi_finalize(void)
{
    if (sp_run_mpi_owned_by_caller) {
        sp_run_mpi_owned_by_caller = false;
        MPI_Finalize();
    }
}

static sp_status_t sp_run_mpi(const sp_run_request_t *req, sp__driver_report_t *rep,
                              bool *is_driver_p)
{
    MPI_Comm comm, node;
    int rank, size, local_rank = 0, local_size = 1;
    bool own = !sp_run_mpi_owned_by_caller;
    sp_job_params_t *params = req->params;
    sp__ctl_conn_t *conn = NULL, *mine = NULL;
    sp_status_t st = SP_OK;

    if (own && (st = sp_run_mpi_init(NULL, NULL)) != SP_OK)
        return st;
    /* A job's own initialization is its to end, whatever the outcome. */
    if (own)
        sp_run_mpi_owned_by_caller = false;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    *is_driver_p = rank == 0;
    params->executors = (uint32_t)size;
    /* Planning assumes every host runs as many ranks as this one. */
    if (sp_run_slots(req->conf, (uint32_t)local_size, &params->slots, NULL) == SP_OK)
        params->slots *= SP_MAX((uint32_t)(size / local_size), 1u);
    if (rank != 0) {
        sp__executor_opts_t eo = {.conf = req->conf,
                                  .transport = size > 1,
                                  .local_index = (unsigned)local_rank,
                                  .local_executors = (unsigned)local_size,
                                  .register_timeout_ms = 600000};
        if ((st = sp__ctl_conn_mpi(comm, 0, &conn)) == SP_OK) {
            eo.conn = conn;
            st = sp__executor_run(&eo);
            sp__ctl_close(conn);
        }
    } else {
        sp__driver_t *driver = NULL;
        sp_run_exec_thread_t et = {.opts = {.conf = req->conf,
                                            .transport = size > 1,
                                            .local_index = (unsigned)local_rank,
                                            .local_executors = (unsigned)local_size,
                                            .register_timeout_ms = 600000}};
        pthread_t tid;
        bool started = false;
        sp__driver_opts_t dopts = {.conf = req->conf,
                                   .job = req->job,
                                   .job_name = req->job_name,
                                   .params = params,
                                   .executors = (uint32_t)size,
                                   .listen_fd = -1,
                                   .progress = req->progress ? sp_run_progress_cb : NULL,
                                   .progress_arg = req->progress};
        if ((st = sp__driver_create(&dopts, &driver)) != SP_OK ||
            (st = sp__ctl_pair(NULL, 0, &conn, &mine)) != SP_OK)
            goto rank0_out;
        /* Rank 0's own executor is executor 0, over the socket pair. */
        if ((st = sp__driver_add_conn(driver, conn)) != SP_OK) {
            conn = NULL;
            goto rank0_out;
        }
        conn = NULL;
        for (int r = 1; r < size; r++) {
            sp__ctl_conn_t *c;
            if ((st = sp__ctl_conn_mpi(comm, r, &c)) != SP_OK ||
                (st = sp__driver_add_conn(driver, c)) != SP_OK)
                goto rank0_out;
        }
        et.opts.conn = mine;
        if (pthread_create(&tid, NULL, sp_run_exec_main, &et) != 0) {
            st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start rank 0's executor thread");
            goto rank0_out;
        }
        started = true;
        st = sp__driver_run(driver, rep);
    rank0_out : {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", sp_last_error());
        if (started)
            pthread_join(tid, NULL);
        sp__driver_destroy(driver);
        sp__ctl_close(mine);
        if (st != SP_OK)
            SP_RAISE(st, "%s", msg);
    }
        if (st == SP_OK && started && et.status != SP_OK)
            sp_warn("rank 0's executor ended with: %s", et.message);
    }
    /*
     * A failed job, or a rank whose driver is gone or silent: MPI_Finalize
     * would wait for every rank, so the job is aborted (mpirun ends the
     * others, a stopped one included).
     */
    if (st != SP_OK && size > 1) {
        if (rank == 0)
            fprintf(stderr, "%s: %s\n", req->prog, sp_last_error());
        else
            fprintf(stderr, "%s: rank %d: %s\n", req->prog, rank, sp_last_error());
        MPI_Abort(MPI_COMM_WORLD, sp_run_exit_code(st));
    }
    MPI_Comm_free(&comm);
    if (own)
        MPI_Finalize();
    return st;
}

sp_status_t sp_run_job(const sp_run_request_t *req, sp__driver_report_t *report, bool *is_driver_p)
{
    *is_driver_p = true;
    if (sp_run_under_mpi())
        return sp_run_mpi(req, report, is_driver_p);
    if (req->master != NULL) {
        sp__mesos_run_opts_t mo = {.conf = req->conf,
                                   .master = req->master,
                                   .job = req->job,
                                   .job_name = req->job_name,
                                   .params = req->params,
                                   .executors = req->executors,
                                   .progress = req->progress ? sp_run_progress_cb : NULL,
                                   .progress_arg = req->progress};
        return sp__mesos_run(&mo, report);
    }
    return sp_run_local(req, report);
}
