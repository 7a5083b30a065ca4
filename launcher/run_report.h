/* `spate run`'s progress lines, end-of-run summary and JSON report. */
#ifndef SPATE_LAUNCHER_RUN_REPORT_H
#define SPATE_LAUNCHER_RUN_REPORT_H

#include "executor/executor.h"

#include <stdio.h>

typedef struct sp_run_progress {
    bool enabled;
    FILE *out;
    int last_stage;   /* stage of the line being rewritten; -1: none */
    uint32_t printed; /* bitmask of stages whose final line was printed */
    bool tty;
    uint64_t interval_ns;  /* not a terminal: a line per running stage this often */
    uint64_t last_line_ns; /* when those lines were last printed */
} sp_run_progress_t;

/*
 * The driver's progress callback: one line per stage, rewritten in place on a
 * terminal; elsewhere a line per running stage every interval_ns and one as
 * each stage ends.
 */
void sp_run_progress_cb(void *arg, const sp__driver_report_t *report, bool final);

/*
 * Prints the summary: wall time per stage, shuffle bytes, GB/s per executor,
 * spill bytes, peak memory per executor, failures recovered; with baseline,
 * also a single-threaded memcpy of the job's input bytes measured now, and
 * the run's ratio to it.
 */
void sp_run_summary(FILE *out, const char *job, const sp_job_params_t *params,
                    const sp__driver_report_t *report, sp_status_t status, bool baseline);

/*
 * Seconds a single-threaded memcpy of bytes takes here (buffers of at most
 * 256 MiB, faulted in before timing, reused); 0 when there is no memory.
 */
double sp_run_memcpy_seconds(uint64_t bytes);

/*
 * What the JSON report records of how the run was asked for: the job's
 * descriptor (its counter names; NULL: none), the command line, and the
 * configuration (its explicitly set keys). Each may be NULL.
 */
typedef struct sp_run_json_context {
    const sp_job_t *desc;
    int argc;
    char *const *argv;
    const sp_conf_t *conf;
} sp_run_json_context_t;

/*
 * Writes the same as JSON to path (atomically: temporary name, then rename);
 * docs/REPORT.md describes every field.
 */
sp_status_t sp_run_json(const char *path, const char *job, const sp_job_params_t *params,
                        const sp__driver_report_t *report, sp_status_t status,
                        const sp_run_json_context_t *ctx);

#endif /* SPATE_LAUNCHER_RUN_REPORT_H */
