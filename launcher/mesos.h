/*
 * `spate run JOB --master mesos://...`: a Mesos framework (v1 scheduler
 * HTTP API) that launches spate executors from resource offers while the
 * job's driver runs here. The scheduler is a thread of its own; the driver
 * tells it about its executors through sp__mesos_executor_event.
 */
#ifndef SPATE_LAUNCHER_MESOS_H
#define SPATE_LAUNCHER_MESOS_H

#include "executor/executor.h"

#include <spate/conf.h>

#include <stdint.h>

/* Longest record accepted on the event stream (an OFFERS event of many agents is the largest). */
#define SP__MESOS_MAX_EVENT (16u << 20)

typedef struct sp__mesos sp__mesos_t;

typedef struct sp__mesos_opts {
    const sp_conf_t *conf;      /* offers.* and mesos.* keys; read during start only */
    const char *master;         /* "mesos://HOST:PORT[,HOST:PORT...]" or "mesos://zk://..." */
    const char *framework_name; /* FrameworkInfo.name */
    const char *command;        /* path of the spate program the tasks run */
    const char *driver;         /* HOST:PORT the executors connect to */
    const char *secret;         /* the job's secret, text; goes into each task's environment */
    uint32_t executors;         /* executors to keep running */
    double cpus;                /* cpus per executor */
    double mem;                 /* mem (MB) per executor, overhead included */
} sp__mesos_opts_t;

/* What the scheduler did; logged when it stops. */
typedef struct sp__mesos_stats {
    uint64_t subscriptions;    /* SUBSCRIBED events: the first and every re-subscription */
    uint64_t reconnects;       /* event streams that broke or went silent and were made again */
    uint64_t redirects;        /* 307 answers that pointed at another master */
    uint64_t offers;           /* offers received */
    uint64_t offers_accepted;  /* offers that got executors */
    uint64_t offers_declined;  /* declined: unneeded, too small, constraints, failed agent */
    uint64_t offers_malformed; /* offers missing fields (declined when they had an id) */
    uint64_t offers_rescinded; /* rescinded before spate used them */
    uint64_t tasks_launched;   /* executor tasks in ACCEPT calls */
    uint64_t tasks_failed;     /* ended other than TASK_FINISHED, or lost by the driver */
    uint64_t updates;          /* UPDATE events */
    uint64_t calls_failed;     /* calls the master did not answer with 202 */
} sp__mesos_stats_t;

/*
 * Checks a --master URL without contacting anything: "mesos://" then
 * HOST:PORT entries separated by commas, or "zk://..." (see zk.h).
 * SP_ERR_INVALID_PARAM with a message naming the bad part.
 */
sp_status_t sp__mesos_url_check(const char *url);

/*
 * Subscribes to the leading master (following 307 redirects, trying each
 * listed master with backoff, for at most mesos.connect_timeout) and starts
 * the scheduler's thread, which then launches and replaces executors until
 * sp__mesos_stop. Errors: SP_ERR_INVALID_PARAM for a bad URL or
 * configuration, or a master that refused the framework (4xx, ERROR
 * event); SP_ERR_PEER_LOST when no master could be subscribed to in time
 * (the last reason in the message); SP_ERR_NOMEM, SP_ERR_NO_RESOURCE.
 * Strings in opts are copied.
 */
sp_status_t sp__mesos_start(const sp__mesos_opts_t *opts, sp__mesos_t **mesos_p);

/*
 * The driver's executor_event callback (arg: the sp__mesos_t): an executor
 * whose name is one of our task ids became ready or was lost. Only queues
 * the news for the scheduler's thread; safe from any thread.
 */
void sp__mesos_executor_event(void *arg, const sp__executor_report_t *executor, bool lost);

/*
 * Ends the framework: declines further offers, waits a few seconds for the
 * executor tasks to end by themselves, sends TEARDOWN (which kills what is
 * left), stops the thread and frees everything. *stats_p (NULL: not
 * wanted) gets the counters. Accepts NULL.
 */
void sp__mesos_stop(sp__mesos_t *mesos, sp__mesos_stats_t *stats_p);

/* ------------------------------------------------------------------------ */
/* spate run --master                                                        */
/* ------------------------------------------------------------------------ */

typedef struct sp__mesos_run_opts {
    sp_conf_t *conf;    /* executor.cores and memory.executor get concrete values here */
    const char *master; /* the --master URL */
    const sp_job_t *job;
    const char *job_name;    /* what executors load: built-in name or plugin path */
    sp_job_params_t *params; /* executors and slots are set here */
    uint32_t executors;      /* executors asked for, before offers.max_* */
    void (*progress)(void *arg, const sp__driver_report_t *report, bool final);
    void *progress_arg;
} sp__mesos_run_opts_t;

/*
 * Runs the job with its driver here, listening on driver.address, and its
 * executors launched from Mesos offers (replaceable: a lost executor is
 * replaced from the next fitting offer). executor.cores 0 means 1 cpu per
 * executor and memory.executor 0 means 1 GiB, since offers need amounts.
 * Returns the job's status; report as sp__driver_run fills it.
 */
sp_status_t sp__mesos_run(const sp__mesos_run_opts_t *opts, sp__driver_report_t *report);

#endif /* SPATE_LAUNCHER_MESOS_H */
