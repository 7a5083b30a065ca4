/*
 * Running one job on executors, whatever launched this process: a local
 * cluster of forked executors, a standalone driver waiting for executors
 * started elsewhere, Mesos offers, or every rank of an mpirun/srun launch.
 * `spate run` and `spate-bench` are both made of it.
 */
#ifndef SPATE_LAUNCHER_RUN_H
#define SPATE_LAUNCHER_RUN_H

#include "executor/executor.h"
#include "run_report.h"

#include <spate/conf.h>

/* One job to run. */
typedef struct sp_run_request {
    sp_conf_t *conf;             /* the job's configuration */
    const sp_job_t *job;         /* loaded by the caller (sp__job_load) */
    const char *job_name;        /* what executors load: built-in name or plugin path */
    sp_job_params_t *params;     /* slots and executors are filled in for MPI */
    uint32_t executors;          /* local/Mesos mode: executors to start (at least 1) */
    uint32_t wait_executors;     /* standalone: executors that join by themselves (0: none) */
    const char *secret_file;     /* standalone: the job's secret (NULL: $SPATE_SECRET) */
    const char *master;          /* Mesos master URL (NULL: not Mesos) */
    sp_run_progress_t *progress; /* progress lines; NULL: none */
    const char *prog;            /* prefix of the message printed before MPI_Abort */
} sp_run_request_t;

/* Whether the launch environment is an MPI job (read without touching MPI). */
bool sp_run_under_mpi(void);

/*
 * Initializes MPI with MPI_THREAD_MULTIPLE once for many sp_run_job calls;
 * sp_run_mpi_finalize() ends it. Without them, sp_run_job under MPI
 * initializes and finalizes MPI itself (once per process: one job).
 * rank_p and size_p (may be NULL) receive this rank and the world's size.
 */
sp_status_t sp_run_mpi_init(int *rank_p, int *size_p);
void sp_run_mpi_finalize(void);

/*
 * Task slots over count executors (0: the default count) as their NUMA plan
 * gives them; *default_count_p (may be NULL) receives the plan's count.
 */
sp_status_t sp_run_slots(const sp_conf_t *conf, uint32_t count, uint32_t *slots_p,
                         uint32_t *default_count_p);

/*
 * Runs the job to its end. Under MPI every rank calls it; *is_driver_p is
 * set to whether this process drove the job (rank 0, or always outside
 * MPI), and only the driver's report is filled. report is filled as far as
 * the job got, success or not; the caller clears it with
 * sp__driver_report_clear(). On a failure under MPI with more than one
 * rank, rank 0 prints "<prog>: <error>" and aborts the MPI job.
 */
sp_status_t sp_run_job(const sp_run_request_t *req, sp__driver_report_t *report, bool *is_driver_p);

/* `spate run`'s exit code for a job's status: 0 success, 2 bad input, 1 otherwise. */
int sp_run_exit_code(sp_status_t st);

#endif /* SPATE_LAUNCHER_RUN_H */
