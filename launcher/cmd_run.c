/*
 * `spate run JOB`: runs a job on a local cluster of executor processes
 * forked from this one, or, under mpirun/srun, with every rank an executor
 * and rank 0 also the driver. The launch mode is decided from the
 * environment before MPI is touched: OMPI_COMM_WORLD_RANK (Open MPI), else
 * PMIX_RANK (PMIx, srun --mpi=pmix), else PMI_RANK; none of them means
 * local mode.
 *
 * Local mode: the driver listens on driver.address (127.0.0.1, any port),
 * generates a secret, and starts each executor as `spate executor --driver
 * ADDR` with the secret in its environment (SPATE_SECRET), never on a
 * command line. Executors prove they know it in the control plane's
 * handshake. Under MPI the control messages go over a private communicator
 * and rank 0's own executor talks to the driver over a socket pair.
 *
 * Exit codes: 0 the job succeeded (and its output checked, where the job
 * checks it); 1 the job failed; 2 the command line, the job's parameters or
 * its input are wrong (nothing ran).
 */
#include "cli.h"
#include "mesos.h"
#include "run_report.h"

#include "common_int.h"
#include "executor/executor.h"

#include <dirent.h>
#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SP_RUN_MAX_ARGS 256

typedef struct sp_run_opts {
    const char *job;
    const char *input, *output, *json;
    uint64_t size;
    uint32_t partitions;
    uint32_t executors;
    uint32_t wait_executors; /* standalone: executors that join by themselves */
    const char *listen, *secret_file;
    const char *master; /* --master: executors from Mesos offers */
    const char *args[SP_RUN_MAX_ARGS];
    size_t nargs;
    int progress; /* -1: when stderr is a terminal */
    bool baseline;
} sp_run_opts_t;

static void sp_run_usage(FILE *out)
{
    size_t n;
    const sp_job_t *const *jobs = sp__job_builtins(&n);

    fprintf(out, "usage: spate [global options] run JOB [options]\n"
                 "\n"
                 "Runs JOB on a local cluster of executor processes, or, under mpirun/srun, on\n"
                 "every rank (rank 0 also drives). JOB is a built-in job or the path of a job\n"
                 "plugin (a .so exporting sp_job_descriptor, see examples/plugin).\n"
                 "\n"
                 "built-in jobs:\n");
    for (size_t i = 0; i < n; i++)
        fprintf(out, "  %-10s %s\n", jobs[i]->name, jobs[i]->summary ? jobs[i]->summary : "");
    fprintf(out,
            "\n"
            "options:\n"
            "  --executors N     executors in local mode (default: one per NUMA node, at least 2)\n"
            "  --wait-executors N  start none: wait for N executors started elsewhere with\n"
            "                    `spate executor --driver ADDR` (standalone mode)\n"
            "  --listen HOST:PORT  the driver's control address (driver.address; standalone)\n"
            "  --secret-file F   the job's secret (standalone; default: $SPATE_SECRET)\n"
            "  --master URL      executors from Mesos offers: mesos://HOST:PORT[,HOST:PORT...]\n"
            "                    or mesos://zk://HOST:PORT[,...]/PATH (--executors of them)\n"
            "  --memory SIZE     memory per executor (memory.executor)\n"
            "  --cores N         worker threads per executor (executor.cores)\n"
            "  --transport B     ofi or mpi (transport.backend)\n"
            "  --provider P      libfabric provider, e.g. tcp;ofi_rxm or shm (transport.provider)\n"
            "  --input DIR       the job's input\n"
            "  --output DIR      where the job writes part-r-NNNNN files and _SUCCESS\n"
            "  --size SIZE       input size for generated input (e.g. 1g)\n"
            "  --partitions N    reduce partitions\n"
            "  --job-arg K=V     a job-specific argument (repeatable)\n"
            "  --conf K=V        set a configuration key (repeatable)\n"
            "  --conf-file FILE  read 'key = value' lines from FILE\n"
            "  --json FILE       write the run's report as JSON\n"
            "  --progress        show progress even when stderr is not a terminal\n"
            "  --no-progress     never show progress\n"
            "  --no-baseline     skip the memcpy baseline in the summary\n"
            "  -h, --help        print this help\n"
            "\n"
            "exit codes: 0 success, 1 the job failed, 2 bad command line, parameters or input.\n");
}

static int sp_run_exit_code(sp_status_t st)
{
    switch (st) {
    case SP_OK: return 0;
    case SP_ERR_INVALID_PARAM:
    case SP_ERR_BAD_CONF:
    case SP_ERR_NOT_FOUND:
    case SP_ERR_EXISTS:
    case SP_ERR_BAD_FORMAT: return 2;
    default: return 1;
    }
}

/* Value of "--opt VALUE" / "--opt=VALUE"; NULL when argv[*i] is another option. */
static const char *sp_run_value(int argc, char **argv, int *i, const char *opt, bool *missing_p)
{
    size_t len = strlen(opt);

    if (strncmp(argv[*i], opt, len) != 0)
        return NULL;
    if (argv[*i][len] == '=')
        return argv[*i] + len + 1;
    if (argv[*i][len] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing_p = true;
        return NULL;
    }
    return argv[++(*i)];
}

static bool sp_run_parse_u32(const char *text, uint32_t min, uint32_t *v_p)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > UINT32_MAX || text[0] == '-')
        return false;
    *v_p = (uint32_t)v;
    return true;
}

static int sp_run_parse(sp_cli_t *cli, int argc, char **argv, sp_run_opts_t *o)
{
    static const struct {
        const char *opt, *key;
    } conf_opts[] = {{"--memory", "memory.executor"},
                     {"--cores", "executor.cores"},
                     {"--transport", "transport.backend"},
                     {"--provider", "transport.provider"}};

    o->progress = -1;
    o->baseline = true;
    for (int i = 0; i < argc; i++) {
        const char *v;
        bool missing = false, matched = false;

        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            sp_run_usage(stdout);
            return 0;
        }
        if (argv[i][0] != '-') {
            if (o->job != NULL) {
                fprintf(stderr, "spate run: unexpected argument '%s' (one JOB only)\n", argv[i]);
                return 2;
            }
            o->job = argv[i];
            continue;
        }
        for (size_t c = 0; c < SP_ARRAY_SIZE(conf_opts) && !matched; c++) {
            if ((v = sp_run_value(argc, argv, &i, conf_opts[c].opt, &missing)) != NULL) {
                matched = true;
                if (sp_conf_set(cli->conf, conf_opts[c].key, v) != SP_OK) {
                    fprintf(stderr, "spate run: %s: %s\n", conf_opts[c].opt, sp_last_error());
                    return 2;
                }
            }
        }
        if (matched)
            continue;
        if ((v = sp_run_value(argc, argv, &i, "--executors", &missing)) != NULL) {
            if (!sp_run_parse_u32(v, 1, &o->executors) || o->executors > 1024) {
                fprintf(stderr, "spate run: --executors '%s' is not a number from 1 to 1024\n", v);
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--wait-executors", &missing)) != NULL) {
            if (!sp_run_parse_u32(v, 1, &o->wait_executors) || o->wait_executors > 65536) {
                fprintf(stderr,
                        "spate run: --wait-executors '%s' is not a number from 1 to 65536\n", v);
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--listen", &missing)) != NULL) {
            if (sp_conf_set(cli->conf, "driver.address", v) != SP_OK) {
                fprintf(stderr, "spate run: --listen: %s\n", sp_last_error());
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--secret-file", &missing)) != NULL) {
            o->secret_file = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--master", &missing)) != NULL) {
            o->master = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--partitions", &missing)) != NULL) {
            if (!sp_run_parse_u32(v, 1, &o->partitions) || o->partitions > (1u << 24)) {
                fprintf(stderr, "spate run: --partitions '%s' is not a number from 1 to 16777216\n",
                        v);
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--size", &missing)) != NULL) {
            if (sp_conf_parse_size(v, &o->size) != SP_OK || o->size == 0) {
                fprintf(stderr, "spate run: --size '%s' is not a size like 512m or 4g\n", v);
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--input", &missing)) != NULL) {
            o->input = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--output", &missing)) != NULL) {
            o->output = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--json", &missing)) != NULL) {
            o->json = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--job-arg", &missing)) != NULL) {
            if (strchr(v, '=') == NULL || o->nargs == SP_RUN_MAX_ARGS) {
                fprintf(stderr, "spate run: --job-arg '%s' is not KEY=VALUE (at most %d)\n", v,
                        SP_RUN_MAX_ARGS);
                return 2;
            }
            o->args[o->nargs++] = v;
        } else if ((v = sp_run_value(argc, argv, &i, "--conf-file", &missing)) != NULL) {
            if (sp_conf_load_file(cli->conf, v) != SP_OK) {
                fprintf(stderr, "spate run: --conf-file: %s\n", sp_last_error());
                return 2;
            }
        } else if ((v = sp_run_value(argc, argv, &i, "--conf", &missing)) != NULL) {
            if (sp_conf_set_assignment(cli->conf, v) != SP_OK) {
                fprintf(stderr, "spate run: --conf: %s\n", sp_last_error());
                return 2;
            }
        } else if (strcmp(argv[i], "--progress") == 0) {
            o->progress = 1;
        } else if (strcmp(argv[i], "--no-progress") == 0) {
            o->progress = 0;
        } else if (strcmp(argv[i], "--no-baseline") == 0) {
            o->baseline = false;
        } else if (missing) {
            fprintf(stderr, "spate run: option %s needs a value\n", argv[i]);
            return 2;
        } else {
            fprintf(stderr, "spate run: unknown option '%s' (see spate run --help)\n", argv[i]);
            return 2;
        }
        if (missing) {
            fprintf(stderr, "spate run: option %s needs a value\n", argv[i]);
            return 2;
        }
    }
    if (o->job == NULL) {
        fprintf(stderr, "spate run: which job? (see spate run --help)\n");
        return 2;
    }
    return -1; /* go on */
}

/* The launch environment, read before MPI_Init. */
static bool sp_run_under_mpi(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(vars); i++)
        if (getenv(vars[i]) != NULL)
            return true;
    return false;
}

/* Task slots over count executors (0: the default count), as their NUMA plan will give them. */
static sp_status_t sp_run_slots(const sp_conf_t *conf, uint32_t count, uint32_t *slots_p,
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
    sp_executor_plan_destroy(plan);
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
    /* Child: the secret goes only into the environment. */
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

/* Removes the shm provider's regions of an executor that died without closing its endpoint. */
static void sp_run_clear_shm(pid_t pid)
{
    char prefix[32], path[64 + 256];
    struct dirent *e;
    DIR *d = opendir("/dev/shm");

    if (d == NULL)
        return;
    snprintf(prefix, sizeof(prefix), "%ld:", (long)pid);
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 &&
            (size_t)snprintf(path, sizeof(path), "/dev/shm/%s", e->d_name) < sizeof(path))
            unlink(path);
    closedir(d);
}

static void sp_run_reap(pid_t *pids, unsigned n)
{
    uint64_t deadline = sp__now_ns() + 15ull * 1000000000ull;
    unsigned left = n;

    while (left > 0) {
        left = 0;
        for (unsigned i = 0; i < n; i++) {
            if (pids[i] <= 0)
                continue;
            int status = 0;
            if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
                if (WIFSIGNALED(status))
                    sp_run_clear_shm(pids[i]);
                pids[i] = 0;
            } else
                left++;
        }
        if (left == 0)
            break;
        if (sp__now_ns() > deadline) {
            for (unsigned i = 0; i < n; i++)
                if (pids[i] > 0) {
                    sp_warn("executor pid %d did not exit; killing it", (int)pids[i]);
                    kill(pids[i], SIGKILL);
                    waitpid(pids[i], NULL, 0);
                    sp_run_clear_shm(pids[i]);
                    pids[i] = 0;
                }
            break;
        }
        usleep(10000);
    }
}

static sp_status_t sp_run_local(sp_cli_t *cli, sp_run_opts_t *o, const sp_job_t *job,
                                sp_job_params_t *params, sp__driver_report_t *rep,
                                sp_run_progress_t *prog)
{
    const char *listen_at = "127.0.0.1:0";
    char bound[128], generated[65], self[4096];
    bool standalone = o->wait_executors > 0;
    unsigned spawn = standalone ? 0 : o->executors;
    sp__driver_t *driver = NULL;
    void *secret = NULL;
    size_t secret_len = 0;
    pid_t *pids = NULL;
    ssize_t n;
    int lfd = -1;
    sp_status_t st;

    if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) <= 0)
        return SP_RAISE(SP_ERR_IO, "cannot find this program (/proc/self/exe): %s",
                        strerror(errno));
    self[n] = '\0';
    sp_conf_get_string(cli->conf, "driver.address", &listen_at);
    if (standalone) {
        /* Executors started elsewhere know the secret from the same file or variable. */
        if ((st = sp_cli_secret_load(o->secret_file, NULL, &secret, &secret_len)) != SP_OK)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "standalone mode needs the job's secret: %s",
                            sp_last_error());
        o->executors = o->wait_executors;
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
        fprintf(stderr, "spate run: driver listening on %s; waiting for %u executors\n", bound,
                o->executors);
        fflush(stderr);
    }
    if ((pids = calloc(o->executors + 1, sizeof(*pids))) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u executors", o->executors);
        goto out;
    }
    sp__driver_opts_t dopts = {.conf = cli->conf,
                               .job = job,
                               .job_name = o->job,
                               .params = params,
                               .executors = o->executors,
                               .listen_fd = lfd,
                               .secret = secret,
                               .secret_len = secret_len,
                               .progress = sp_run_progress_cb,
                               .progress_arg = prog,
                               .pids = pids,
                               .npids = spawn};
    if ((st = sp__driver_create(&dopts, &driver)) != SP_OK)
        goto out;
    for (unsigned i = 0; i < spawn; i++) {
        pids[i] = sp_run_spawn(self, bound, secret, i, spawn);
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
    if (pids != NULL)
        sp_run_reap(pids, spawn);
    /* Executors that were killed could not remove their files: this host's are ours to remove. */
    if (driver != NULL && spawn > 0)
        sp__app_dirs_remove(cli->conf, sp__driver_app_id(driver));
    sp__driver_destroy(driver);
    if (st != SP_OK)
        SP_RAISE(st, "%s", msg);
}
    free(pids);
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

static sp_status_t sp_run_mpi(sp_cli_t *cli, sp_run_opts_t *o, const sp_job_t *job,
                              sp_job_params_t *params, sp__driver_report_t *rep,
                              sp_run_progress_t *prog, bool *is_driver_p)
{
    MPI_Comm comm, node;
    int provided, rank, size, local_rank = 0, local_size = 1;
    sp__ctl_conn_t *conn = NULL, *mine = NULL;
    sp_status_t st = SP_OK;

    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Init_thread failed");
    if (provided < MPI_THREAD_MULTIPLE) {
        MPI_Finalize();
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "this MPI library does not provide MPI_THREAD_MULTIPLE (it gave level %d), "
                        "which spate's executors need",
                        provided);
    }
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
    if (sp_run_slots(cli->conf, (uint32_t)local_size, &params->slots, NULL) == SP_OK)
        params->slots *= SP_MAX((uint32_t)(size / local_size), 1u);
    if (rank != 0) {
        sp__executor_opts_t eo = {.conf = cli->conf,
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
        sp_run_exec_thread_t et = {.opts = {.conf = cli->conf,
                                            .transport = size > 1,
                                            .local_index = (unsigned)local_rank,
                                            .local_executors = (unsigned)local_size,
                                            .register_timeout_ms = 600000}};
        pthread_t tid;
        bool started = false;
        sp__driver_opts_t dopts = {.conf = cli->conf,
                                   .job = job,
                                   .job_name = o->job,
                                   .params = params,
                                   .executors = (uint32_t)size,
                                   .listen_fd = -1,
                                   .progress = sp_run_progress_cb,
                                   .progress_arg = prog};
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
    if (st != SP_OK && rank == 0 && size > 1) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
        MPI_Abort(MPI_COMM_WORLD, sp_run_exit_code(st));
    }
    MPI_Comm_free(&comm);
    MPI_Finalize();
    return st;
}

int sp_cmd_run(sp_cli_t *cli, int argc, char **argv)
{
    sp_run_opts_t o = {0};
    sp_job_params_t params = {0};
    sp__driver_report_t rep = {0};
    sp_run_progress_t prog = {0};
    const sp_job_t *job = NULL;
    void *plugin = NULL;
    bool mpi = sp_run_under_mpi(), is_driver = true;
    uint32_t default_count = 2;
    sp_status_t st;
    int ret;

    if ((ret = sp_run_parse(cli, argc, argv, &o)) >= 0)
        return ret;
    if (!mpi && getenv("SLURM_STEP_ID") != NULL && getenv("SLURM_STEP_NUM_TASKS") != NULL &&
        atoi(getenv("SLURM_STEP_NUM_TASKS")) > 1) {
        /* Each task would run a job of its own into the same output. */
        fprintf(stderr,
                "spate run: started by srun as one of %s tasks without PMI (srun --mpi=none?); "
                "use srun --mpi=pmix so that the tasks form one job\n",
                getenv("SLURM_STEP_NUM_TASKS"));
        return 2;
    }
    if ((st = sp__job_load(o.job, &job, &plugin)) != SP_OK) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
        return 2;
    }
    params = (sp_job_params_t){.input = o.input,
                               .output = o.output,
                               .size = o.size,
                               .partitions = o.partitions,
                               .args = o.args,
                               .nargs = o.nargs,
                               .conf = cli->conf};
    if (!mpi) {
        const char *backend = "";
        sp_conf_get_string(cli->conf, "transport.backend", &backend);
        if (strcmp(backend, "mpi") == 0) {
            fprintf(stderr, "spate run: transport.backend=mpi needs MPI: run spate under "
                            "mpirun or srun, or choose --transport ofi\n");
            sp__job_unload(plugin);
            return 2;
        }
    }
    if (o.wait_executors > 0) {
        if (mpi) {
            fprintf(stderr, "spate run: --wait-executors does not apply under mpirun/srun\n");
            sp__job_unload(plugin);
            return 2;
        }
        o.executors = o.wait_executors;
    }
    if (o.master != NULL && (mpi || o.wait_executors > 0 || sp__mesos_url_check(o.master))) {
        fprintf(stderr, "spate run: %s\n",
                mpi || o.wait_executors > 0 ? "--master does not go with --wait-executors or "
                                              "mpirun/srun"
                                            : sp_last_error());
        sp__job_unload(plugin);
        return 2;
    }
    /* The executors' layout: a configuration that cannot give one fails here, not in them. */
    if ((st = sp_run_slots(cli->conf, mpi ? 1 : o.executors, &params.slots, &default_count)) !=
        SP_OK) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
        sp__job_unload(plugin);
        return 2;
    }
    if (!mpi && o.executors == 0) {
        o.executors = SP_MAX(default_count, 2u);
        sp_run_slots(cli->conf, o.executors, &params.slots, NULL);
    }
    params.executors = o.executors;
    prog.enabled = o.progress < 0 ? isatty(STDERR_FILENO) : o.progress;
    prog.out = stderr;
    prog.tty = isatty(STDERR_FILENO);
    prog.last_stage = -1;
    if (mpi) {
        /* Every rank has as many slots as this one, as far as planning goes. */
        st = sp_run_mpi(cli, &o, job, &params, &rep, &prog, &is_driver);
    } else if (o.master != NULL) {
        sp__mesos_run_opts_t mo = {.conf = cli->conf,
                                   .master = o.master,
                                   .job = job,
                                   .job_name = o.job,
                                   .params = &params,
                                   .executors = o.executors,
                                   .progress = sp_run_progress_cb,
                                   .progress_arg = &prog};
        st = sp__mesos_run(&mo, &rep);
    } else {
        st = sp_run_local(cli, &o, job, &params, &rep, &prog);
    }
    if (is_driver) {
        sp_run_summary(stdout, o.job, &params, &rep, st, o.baseline);
        if (o.json != NULL && sp_run_json(o.json, o.job, &params, &rep, st) != SP_OK)
            fprintf(stderr, "spate run: --json: %s\n", sp_last_error());
        if (st != SP_OK)
            fprintf(stderr, "spate run: %s\n", sp_last_error());
    } else if (st != SP_OK) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
    }
    sp__driver_report_clear(&rep);
    sp__job_unload(plugin);
    return sp_run_exit_code(st);
}
