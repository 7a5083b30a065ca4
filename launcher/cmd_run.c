/*
 * `spate run JOB`: parses the command line, checks it against the launch
 * (local, standalone, Mesos or mpirun/srun), loads the job and runs it with
 * sp_run_job (run.c), then prints the driver's summary and JSON report.
 *
 * Exit codes: 0 the job succeeded (and its output checked, where the job
 * checks it); 1 the job failed; 2 the command line, the job's parameters or
 * its input are wrong (nothing ran), or the output directory is in use by
 * another run; 128 + N when signal N (SIGINT: 130, SIGTERM: 143, SIGHUP:
 * 129) ended it.
 *
 * Interrupts (outside mpirun/srun, whose launcher owns the ranks' signals):
 * SIGINT, SIGTERM and SIGHUP (unless ignored at start) only tell the driver
 * (sp__driver_interrupt, which sets an atomic flag); it fails the run at its
 * next tick, shuts the executors down and removes the run's shuffle and
 * temporary files. A second signal stops the waiting for executors (they
 * are killed); a third ends spate at once with the signal's default action.
 */
#include "cli.h"
#include "mesos.h"
#include "run.h"
#include "run_report.h"

#include "common_int.h"
#include "executor/executor.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
            "  --transport B     ofi, mpi, local or auto (transport.backend)\n"
            "  --provider P      libfabric provider, e.g. tcp;ofi_rxm or shm (transport.provider)\n"
            "  --input DIR       the job's input\n"
            "  --output DIR      where the job writes part-r-NNNNN files and _SUCCESS\n"
            "  --size SIZE       input size for generated input (e.g. 1g)\n"
            "  --partitions N    reduce partitions\n"
            "  --job-arg K=V     a job-specific argument (repeatable)\n"
            "  --conf K=V        set a configuration key (repeatable)\n"
            "  --conf-file FILE  read 'key = value' lines from FILE\n"
            "  --json FILE       write the run's report as JSON\n"
            "  --progress        show progress (the default: a bar per stage on a terminal,\n"
            "                    else a line per running stage every progress.interval)\n"
            "  --no-progress     never show progress\n"
            "  --no-baseline     skip the memcpy baseline in the summary\n"
            "  -h, --help        print this help\n"
            "\n"
            "exit codes: 0 success, 1 the job failed, 2 bad command line, parameters or input,\n"
            "or an output directory in use by another run; 130 interrupted by SIGINT (Ctrl-C),\n"
            "143 by SIGTERM, 129 by SIGHUP (the executors are stopped and the run's shuffle and\n"
            "temporary output files removed first; a second signal hurries that, a third ends\n"
            "spate at once).\n");
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
            if ((v = sp_cli_option(argc, argv, &i, conf_opts[c].opt, &missing)) != NULL) {
                matched = true;
                if (sp_conf_set(cli->conf, conf_opts[c].key, v) != SP_OK) {
                    fprintf(stderr, "spate run: %s: %s\n", conf_opts[c].opt, sp_last_error());
                    return 2;
                }
            }
        }
        if (matched)
            continue;
        if ((v = sp_cli_option(argc, argv, &i, "--executors", &missing)) != NULL) {
            if (!sp_cli_parse_u32(v, 1, 1024, &o->executors)) {
                fprintf(stderr, "spate run: --executors '%s' is not a number from 1 to 1024\n", v);
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--wait-executors", &missing)) != NULL) {
            if (!sp_cli_parse_u32(v, 1, 65536, &o->wait_executors)) {
                fprintf(stderr,
                        "spate run: --wait-executors '%s' is not a number from 1 to 65536\n", v);
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--listen", &missing)) != NULL) {
            if (sp_conf_set(cli->conf, "driver.address", v) != SP_OK) {
                fprintf(stderr, "spate run: --listen: %s\n", sp_last_error());
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--secret-file", &missing)) != NULL) {
            o->secret_file = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--master", &missing)) != NULL) {
            o->master = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--partitions", &missing)) != NULL) {
            if (!sp_cli_parse_u32(v, 1, 1u << 24, &o->partitions)) {
                fprintf(stderr, "spate run: --partitions '%s' is not a number from 1 to 16777216\n",
                        v);
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--size", &missing)) != NULL) {
            if (sp_conf_parse_size(v, &o->size) != SP_OK || o->size == 0) {
                fprintf(stderr, "spate run: --size '%s' is not a size like 512m or 4g\n", v);
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--input", &missing)) != NULL) {
            o->input = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--output", &missing)) != NULL) {
            o->output = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--json", &missing)) != NULL) {
            o->json = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--job-arg", &missing)) != NULL) {
            if (strchr(v, '=') == NULL || o->nargs == SP_RUN_MAX_ARGS) {
                fprintf(stderr, "spate run: --job-arg '%s' is not KEY=VALUE (at most %d)\n", v,
                        SP_RUN_MAX_ARGS);
                return 2;
            }
            o->args[o->nargs++] = v;
        } else if ((v = sp_cli_option(argc, argv, &i, "--conf-file", &missing)) != NULL) {
            if (sp_conf_load_file(cli->conf, v) != SP_OK) {
                fprintf(stderr, "spate run: --conf-file: %s\n", sp_last_error());
                return 2;
            }
        } else if ((v = sp_cli_option(argc, argv, &i, "--conf", &missing)) != NULL) {
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

/* Async-signal-safe: the driver does the work on its own thread. */
static void sp_run_on_signal(int signo)
{
    unsigned count = 0;

    sp__driver_interrupt(signo);
    sp__driver_interrupted(&count);
    if (count >= 3) {
        /* The user insists: the default action, now. */
        signal(signo, SIG_DFL);
        raise(signo);
    }
}

static void sp_run_catch_signals(void)
{
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sp_run_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < SP_ARRAY_SIZE(signals); i++) {
        struct sigaction old;
        /* A signal ignored when spate started (nohup, a background job) stays ignored. */
        if (sigaction(signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(signals[i], &sa, NULL);
    }
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
    /* On by default: a bar on a terminal, periodic lines elsewhere (batch logs, mpirun). */
    prog.enabled = o.progress != 0;
    prog.out = stderr;
    prog.tty = isatty(STDERR_FILENO);
    prog.last_stage = -1;
    if (sp_conf_get_duration(cli->conf, "progress.interval", &prog.interval_ns) != SP_OK) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
        return 2;
    }
    {
        /* Under MPI every rank has as many slots as this one, as far as planning goes. */
        sp_run_request_t req = {.conf = cli->conf,
                                .job = job,
                                .job_name = o.job,
                                .params = &params,
                                .executors = o.executors,
                                .wait_executors = o.wait_executors,
                                .secret_file = o.secret_file,
                                .master = o.master,
                                .progress = &prog,
                                .prog = "spate run"};
        if (!mpi)
            sp_run_catch_signals();
        st = sp_run_job(&req, &rep, &is_driver);
    }
    if (is_driver) {
        sp_run_summary(stdout, o.job, &params, &rep, st, o.baseline);
        sp_run_json_context_t jc = {.desc = job, .argc = argc, .argv = argv, .conf = cli->conf};
        if (o.json != NULL && sp_run_json(o.json, o.job, &params, &rep, st, &jc) != SP_OK)
            fprintf(stderr, "spate run: --json: %s\n", sp_last_error());
        if (st != SP_OK)
            fprintf(stderr, "spate run: %s\n", sp_last_error());
    } else if (st != SP_OK) {
        fprintf(stderr, "spate run: %s\n", sp_last_error());
    }
    sp__driver_report_clear(&rep);
    sp__job_unload(plugin);
    if (st == SP_ERR_CANCELED && sp__driver_interrupted(NULL) != 0)
        return 128 + sp__driver_interrupted(NULL); /* the shell's convention: 130, 143 */
    return sp_run_exit_code(st);
}
