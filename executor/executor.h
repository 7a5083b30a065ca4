/*
 * The executor process and the driver role (executor/executor.c,
 * executor/driver.c): what `spate run` and `spate executor` are made of.
 */
#ifndef SPATE_EXECUTOR_EXECUTOR_H
#define SPATE_EXECUTOR_EXECUTOR_H

#include "control/control.h"
#include "executor_int.h"

#include <stdio.h>
#include <sys/types.h>

typedef struct sp__executor_opts {
    sp__ctl_conn_t *conn;     /* authenticated connection to the driver; the caller closes it */
    const sp_conf_t *conf;    /* this process's configuration; the driver's is applied on top */
    bool transport;           /* open a transport (false: a lone executor reads locally) */
    unsigned local_index;     /* this executor's index among those on its host */
    unsigned local_executors; /* executors on its host (for the NUMA plan) */
    int register_timeout_ms;  /* how long to wait for the job after registering */
    const char *name;         /* reported to the driver (a Mesos task id, say); NULL: none */
    /*
     * The process is this executor's alone: a crash (SIGSEGV, SIGBUS, SIGFPE,
     * SIGILL, SIGABRT) is reported to the driver over a socket connection
     * before the process dies of it.
     */
    bool own_process;
} sp__executor_opts_t;

/*
 * Runs one executor until the driver sends SHUTDOWN (SP_OK) or the
 * connection fails (the error). Removes its shuffle files before it returns.
 */
sp_status_t sp__executor_run(const sp__executor_opts_t *opts);

/* ------------------------------------------------------------------------ */
/* Driver                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum sp__stage {
    SP_STAGE_SAMPLE = 0,
    SP_STAGE_MAP = 1,
    SP_STAGE_REDUCE = 2,
    SP_STAGES
} sp__stage_t;

/* Progress and summary of one stage. */
typedef struct sp__stage_report {
    uint32_t tasks; /* tasks of the stage (0: the stage does not run) */
    uint32_t done;
    uint64_t start_ns, end_ns;
    uint64_t records;
    uint64_t bytes; /* map: shuffle bytes written; reduce: shuffle bytes read */
    uint64_t remote_bytes;
    uint64_t spill_bytes;
    uint64_t task_ns; /* summed over tasks */
    uint64_t sort_ns, spill_ns, merge_ns, fetch_wait_ns;
    /*
     * Core time: the executors' CPU time during the stage (every thread, from
     * the CPU clocks they report with results and heartbeats), and what their
     * worker slots could have used (slots x the stage's wall time). Idle core
     * time is core_ns - cpu_ns. 0 when not measured.
     */
    uint64_t cpu_ns, core_ns;
} sp__stage_report_t;

/* One stage as it ran, for the report's stages in execution order. */
typedef struct sp__stage_summary {
    char name[64]; /* "map", "reduce", "sample"; "stage 2 (join)" in a graph job */
    int kind;      /* sp__stage_t */
    uint32_t tasks, done;
    uint64_t start_ns, end_ns; /* monotonic; 0: did not start, did not end */
    uint64_t records, bytes;   /* of its tasks' first successful attempts */
    uint64_t task_ns;          /* their run time, summed */
} sp__stage_summary_t;

typedef struct sp__executor_report {
    uint32_t id;
    char host[64];
    char name[128]; /* what its launcher called it (REGISTER's name) */
    uint32_t pid;
    uint32_t slots;
    uint64_t memory;         /* memory.executor */
    uint64_t peak_rss;       /* highest VmHWM: resident memory, mapped map outputs included */
    uint64_t peak_anon;      /* highest anonymous resident memory: the executor's own */
    uint64_t peak_execution; /* highest execution memory seen in heartbeats */
    uint64_t peak_storage;   /* highest storage memory held: map outputs in memory, blocks */
    uint64_t shuffle_bytes;  /* written by its map tasks + read by its reduce tasks */
    uint64_t busy_ns;        /* time its tasks ran */
    uint32_t tasks;
    uint32_t numa_node; /* OS index of the NUMA node it runs on */
    char cpuset[64];    /* the PUs its workers are bound to (hwloc list) */
    bool lost;
} sp__executor_report_t;

typedef struct sp__driver_report {
    sp__stage_report_t stages[SP_STAGES];
    sp__executor_report_t *executors;
    uint32_t nexecutors;
    sp_job_result_t result;
    uint64_t start_ns, end_ns;
    uint32_t task_failures;   /* failed task attempts that were retried */
    uint32_t fetch_failures;  /* reduce attempts that failed to fetch */
    uint32_t maps_recomputed; /* map outputs computed again after a loss */
    uint32_t executors_lost;
    uint32_t executors_relaunched; /* started by the launcher in place of lost ones */
    uint32_t outputs_moved;        /* map outputs evicted from memory to disk (OUTPUT_MOVED) */
    uint32_t fetches_after_move;   /* reduce attempts run again: an output moved under them */
    uint32_t reduces_early;        /* reduce attempts started before every map output was in */
    uint32_t reduces_canceled;     /* of those, canceled to give a map task their slot */
    double reduce_slowstart;       /* shuffle.reduce_slowstart of the run */
    /*
     * Core time of the whole shuffle, from the map stage's start to the reduce
     * stage's end (stages overlap under slow start, so their own figures share
     * time): the executors' CPU time and their slots x that wall time.
     */
    uint64_t cpu_ns, core_ns;
    uint32_t maps, partitions;
    uint32_t graph_stages;      /* graph jobs: the graph's stages (0: a two-stage job) */
    uint32_t blocks_cached;     /* graph jobs: partitions put in executors' block stores */
    uint32_t blocks_recomputed; /* of those, partitions cached again after they were lost */
    uint32_t stages_skipped;    /* graph jobs: map stages an action read complete, summed */
    char run_id[64];            /* the driver's app id: names the run's directories */
    uint64_t start_unix_ns, end_unix_ns; /* wall-clock time (CLOCK_REALTIME) */
    sp__stage_summary_t *stage_list;     /* every stage, in the order they started */
    uint32_t nstage_list;
    char error[1024]; /* why the run failed; empty when it succeeded */
} sp__driver_report_t;

typedef struct sp__driver sp__driver_t;

/* How executors reach the driver. */
typedef struct sp__driver_opts {
    const sp_conf_t *conf;
    const sp_job_t *job;
    const char *job_name; /* what executors load: built-in name or plugin path */
    const sp_job_params_t *params;
    uint32_t executors; /* executors to wait for before the job starts */
    int listen_fd;      /* -1: none (MPI) */
    const void *secret;
    size_t secret_len;
    /* Called about every 200 ms and at each stage's end (NULL: none). */
    void (*progress)(void *arg, const sp__driver_report_t *report, bool final);
    void *progress_arg;
    /*
     * Called on the driver's thread when an executor becomes ready or is
     * lost (a cluster-manager launcher replaces lost ones). NULL: none.
     */
    void (*executor_event)(void *arg, const sp__executor_report_t *executor, bool lost);
    void *executor_event_arg;
    /*
     * Lost executors may be replaced (a launcher starts new ones): losing
     * every executor then waits executor.register_timeout for a new one
     * instead of failing the job.
     */
    bool replaceable;
    /*
     * Local mode: pids of the executors the launcher started (0: a free
     * slot), for the fault hook and to end hung executors. The launcher may
     * fill free slots from executor_ended.
     */
    const pid_t *pids;
    size_t npids;
    /*
     * Local mode: called on the driver's thread when it loses executor pid,
     * one the launcher started. The launcher waits up to wait_ms for the
     * process to end, reaps it and writes how it ended into how ("died of
     * SIGSEGV", "exited with status 3"; empty when it did not end in time),
     * then starts a replacement when it may. Returns whether it started one.
     * NULL: none.
     */
    bool (*executor_ended)(void *arg, uint32_t pid, int wait_ms, char *how, size_t cap);
    void *executor_ended_arg;
} sp__driver_opts_t;

sp_status_t sp__driver_create(const sp__driver_opts_t *opts, sp__driver_t **driver_p);
/* Adds an executor connection that needs no handshake (same process, MPI rank). */
sp_status_t sp__driver_add_conn(sp__driver_t *driver, sp__ctl_conn_t *conn);
/*
 * Runs the job to its end: waits for the executors, runs the stages,
 * publishes the output, calls the job's finish, shuts executors down.
 * report is filled either way (as far as the job got).
 */
sp_status_t sp__driver_run(sp__driver_t *driver, sp__driver_report_t *report);
void sp__driver_destroy(sp__driver_t *driver);
/*
 * A launcher's news that the executor it named `name` is gone (its process
 * exited, its task was lost): the driver handles it as a lost executor on
 * its next turn instead of waiting for the heartbeat timeout. Thread safe;
 * an unknown name is ignored.
 */
void sp__driver_lose_executor(sp__driver_t *driver, const char *name, const char *why);
/*
 * An interrupt (SIGINT, SIGTERM) for whatever run this process drives:
 * async-signal-safe (it only sets process-wide atomics), so a signal handler
 * calls it. sp__driver_run, waiting for executors or running stages, fails
 * with SP_ERR_CANCELED ("interrupted by SIGINT") within its 100 ms tick and
 * cleans up as a failed run does; a second interrupt makes it stop waiting
 * for executors to say goodbye. Interrupts are never cleared: the process
 * is expected to exit.
 */
void sp__driver_interrupt(int signo);
/* The first interrupting signal (0: none); *count_p (may be NULL): how many arrived. */
int sp__driver_interrupted(unsigned *count_p);
/* The run's id: executors keep their files under <each shuffle.local_dirs entry>/<app id>/;
 * the output committer, under OUTPUT/_temporary/<app id>/. */
const char *sp__driver_app_id(const sp__driver_t *driver);
/* Removes <each shuffle.local_dirs entry>/<app_id> (what lost executors could not). */
void sp__app_dirs_remove(const sp_conf_t *conf, const char *app_id);
void sp__driver_report_clear(sp__driver_report_t *report);

#endif /* SPATE_EXECUTOR_EXECUTOR_H */
