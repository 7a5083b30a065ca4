/*
 * Internals of the executor layer: job lookup (built-in and plugins), the
 * task runner shared by executors and the in-process runner, the output
 * committer, and the control plane's framing. Not installed.
 */
#ifndef SPATE_EXECUTOR_INT_H
#define SPATE_EXECUTOR_INT_H

#include <spate/job.h>
#include <spate/memory.h>
#include <spate/shuffle.h>
#include <spate/transport.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Jobs (executor/job_registry.c, executor/jobs/)                             */
/* ------------------------------------------------------------------------ */

/* Built-in jobs, defined in executor/jobs/<name>.c. */
extern const sp_job_t sp__job_terasort;
extern const sp_job_t sp__job_wordcount;
extern const sp_job_t sp__job_shuffle;
extern const sp_job_t sp__job_pagerank;
extern const sp_job_t sp__job_join;
extern const sp_job_t sp__job_groupby;

/*
 * Finds a job: a built-in by name, or, when name contains a '/' or ends in
 * ".so", a plugin loaded with dlopen() whose SP_JOB_DESCRIPTOR_SYMBOL
 * returns a descriptor of SP_JOB_ABI_VERSION with every required callback
 * (plan, map, reduce). *handle_p is the dlopen handle (NULL for built-ins),
 * closed with sp__job_unload(). SP_ERR_NOT_FOUND for an unknown name,
 * SP_ERR_BAD_FORMAT (naming the plugin and what is wrong) for a bad plugin.
 */
sp_status_t sp__job_load(const char *name, const sp_job_t **job_p, void **handle_p);
void sp__job_unload(void *handle);
/* The built-in jobs, for --help. */
const sp_job_t *const *sp__job_builtins(size_t *count_p);

/*
 * The most map tasks a plan may have: 2^24, as many as partitions. Every map
 * costs the driver per-task state and every reduce task a status per map, so
 * a larger plan would not run anyway; the limit keeps sizes computed from it
 * far from overflow.
 */
#define SP__JOB_MAX_MAPS (UINT32_C(1) << 24)

/*
 * Checks a plan the job returned before anything is sized from it: 1 ..
 * SP__JOB_MAX_MAPS maps, 1 .. SP_MAX_PARTITIONS partitions, splits not NULL.
 * SP_ERR_INVALID_PARAM naming the job and the value otherwise.
 */
sp_status_t sp__job_plan_check(const sp_job_t *job, const sp_job_plan_t *plan);

/*
 * Frees a plan's splits (and their paths); leaves the rest. Of a plan with
 * more than SP__JOB_MAX_MAPS maps only the array is freed (its length is
 * unknown).
 */
void sp__job_plan_clear(sp_job_plan_t *plan);

/* ------------------------------------------------------------------------ */
/* Task runner (executor/task.c)                                             */
/* ------------------------------------------------------------------------ */

/* What one task did, sent to the driver with its result. */
typedef struct sp__task_metrics {
    uint64_t records_in;  /* records emitted (map) or read (reduce) */
    uint64_t records_out; /* records written to the shuffle or the output */
    uint64_t bytes_in;    /* input bytes (map), shuffle bytes fetched (reduce) */
    uint64_t bytes_out;   /* shuffle bytes written (map), output bytes (reduce) */
    uint64_t spill_bytes;
    uint64_t spills;
    uint64_t remote_bytes; /* reduce: bytes fetched from other executors */
    uint64_t run_ns;       /* whole task */
    uint64_t map_ns;       /* in the job's map/reduce callbacks and the writer */
    uint64_t sort_ns;
    uint64_t spill_ns;
    uint64_t merge_ns;
    uint64_t fetch_wait_ns;
    uint64_t peak_memory; /* task memory high-water mark */
    uint64_t counters[SP_JOB_COUNTERS];
} sp__task_metrics_t;

/* Bytes of partition that statuses' owners other than executor_id hold (remote reads). */
uint64_t sp__remote_bytes(uint32_t executor_id, uint32_t partition,
                          const sp_map_status_t *const *statuses, size_t count);

/* A task memory id unique in the process (for sp_task_memory_create). */
uint64_t sp__task_memory_id(void);

/* What a task runs with: the executor's parts it needs. */
typedef struct sp__task_env {
    const sp_job_t *job;
    const sp_job_params_t *params;
    const sp_job_plan_t *plan;
    sp_memory_manager_t *mm;
    const sp_conf_t *conf;
    sp_transport_t *transport; /* NULL: every block is read locally */
    uint64_t shuffle_id;
    uint32_t executor_id;
    const char *run_id; /* the run's id: reduce output goes under OUTPUT/_temporary/<run id> */
} sp__task_env_t;

/*
 * Map task: runs the job's map over split map_id into a shuffle writer and
 * commits it. split_keys: RANGE bounds (partitions-1 keys). *status_p is the
 * committed output's status (executor_id set; not yet served).
 */
sp_status_t sp__task_run_map(const sp__task_env_t *env, uint32_t map_id, uint32_t attempt,
                             const sp_key_t *split_keys, sp_map_status_t **status_p,
                             sp__task_metrics_t *metrics);

/*
 * Sample task: about count keys of split map_id, as a packed list of
 * (u32 length, bytes) entries in *keys_p (malloc'ed, *len_p bytes).
 */
sp_status_t sp__task_run_sample(const sp__task_env_t *env, uint32_t map_id, uint32_t count,
                                void **keys_p, size_t *len_p);

/*
 * Reduce task: reads partition's blocks (statuses of every map) in the
 * plan's order, calls the job's reduce, and writes the output through the
 * output committer (attempt file, renamed into OUTPUT/_temporary/<run id> on
 * success).
 * A fetch failure is SP_ERR_FETCH_FAILED; *failed_map_p then names the map
 * whose block failed (UINT64_MAX when unknown).
 *
 * With feed (reduce slow start), statuses holds those of the maps committed
 * so far (NULL for the others; count is the plan's maps) and the read is
 * incremental: feed->next hands over the others as they come, and its error
 * (SP_ERR_CANCELED: the driver wants the slot back) fails the task.
 */
typedef struct sp__reduce_feed {
    /*
     * Waits up to timeout_ms (0: not at all) for statuses of maps not handed
     * over yet; *statuses_p (borrowed until the task ends) gets *count_p of
     * them, each map once.
     */
    sp_status_t (*next)(void *arg, int timeout_ms, const sp_map_status_t *const **statuses_p,
                        size_t *count_p);
    void *arg;
} sp__reduce_feed_t;

sp_status_t sp__task_run_reduce(const sp__task_env_t *env, uint32_t partition, uint32_t attempt,
                                const sp_map_status_t *const *statuses, size_t count,
                                const sp__reduce_feed_t *feed, uint64_t *failed_map_p,
                                sp__task_metrics_t *metrics);

/*
 * Range bounds from samples: partitions-1 keys that cut the sorted sample
 * into equal parts (duplicates kept apart where the sample allows).
 * samples is a concatenation of the packed lists of sp__task_run_sample().
 */
sp_status_t sp__range_bounds(const void *samples, size_t len, uint32_t partitions,
                             sp_key_compare_fn_t compare, void *compare_arg, sp_key_t **keys_p,
                             void **storage_p);

/*
 * Runs a whole job in this process, one task at a time (sample, map,
 * reduce), with local fetches: the embedded form, and what the job tests use.
 * A graph job runs through sp__graph_run_local (executor/graph_int.h).
 */
sp_status_t sp__job_run_serial(const sp_job_t *job, const sp_job_params_t *params,
                               sp_memory_manager_t *mm, sp_job_result_t *result_p);

/* ------------------------------------------------------------------------ */
/* Output committer (executor/output.c)                                      */
/* ------------------------------------------------------------------------ */

/* mkdir -p. */
sp_status_t sp__mkdirs(const char *dir);

/*
 * One run's hold on an output directory (Hadoop's FileOutputCommitter v2
 * with a run id). The run writes only under dir/_temporary/<run id>/ and
 * holds dir/_temporary/_lock (docs/FORMATS.md) from prepare to release.
 * Not thread safe: the driver (or the serial runner) alone uses it.
 */
typedef struct sp__output sp__output_t;

/*
 * Creates dir when needed and takes its lock for run_id (letters, digits,
 * '-', '_', '.'; unique per run). SP_ERR_EXISTS, naming the holder, when a
 * live run holds dir (one on another host counts as live), or when dir
 * already holds a job's output (_SUCCESS or part-r-*). A lock whose run is
 * dead is taken over with a warning and that run's _temporary/<its id>
 * removed. On success *out_p is the hold, ended with sp__output_release().
 */
sp_status_t sp__output_prepare(const char *dir, const char *run_id, sp__output_t **out_p);
/*
 * Moves _temporary/<run id>/part-r-NNNNN into dir for every partition, each
 * with one rename that never replaces a file, and remembers each one moved.
 */
sp_status_t sp__output_publish(sp__output_t *out, uint32_t partitions);
/* Creates dir/_SUCCESS (last, after the job's own checks) and removes the run's temporaries. */
sp_status_t sp__output_succeed(sp__output_t *out);
/*
 * Removes what this run wrote: _temporary/<run id>, the parts it published,
 * its _SUCCESS. Never another run's files. NULL: nothing.
 */
void sp__output_abort(sp__output_t *out);
/*
 * Ends the hold once nothing of the run can write any more (its executors
 * are gone): aborts when neither succeed nor abort ran, removes
 * _temporary/<run id> again, the lock when it is still this run's, and
 * _temporary when it is left empty; frees out. NULL: nothing.
 */
void sp__output_release(sp__output_t *out);
/*
 * Paths of a reduce task's output: the attempt file it writes
 * (dir/_temporary/<run id>/.part-r-NNNNN.attempt-A) and the name it is
 * renamed to when the task succeeds (dir/_temporary/<run id>/part-r-NNNNN).
 * *path_p is malloc'ed.
 */
sp_status_t sp__output_attempt_path(const char *dir, const char *run_id, uint32_t partition,
                                    uint32_t attempt, char **path_p);
sp_status_t sp__output_task_path(const char *dir, const char *run_id, uint32_t partition,
                                 char **path_p);

/*
 * One task attempt's part file: written through a 1 MiB buffer to
 * OUTPUT/_temporary/<run id>/.part-r-NNNNN.attempt-A, and on commit flushed,
 * fsync'ed and renamed to part-r-NNNNN there (a second successful attempt
 * replaces the first with identical content). With dir NULL (no --output)
 * the bytes are only counted. Zero-initialize, then open; abort (which
 * also frees) whatever happens after open.
 */
typedef struct sp__part_file {
    const char *dir, *run_id;
    uint32_t partition;
    int fd; /* -1: not open (counted only) */
    char *path;
    unsigned char *buf;
    size_t len;
    uint64_t offset;
    uint64_t bytes; /* written so far */
} sp__part_file_t;

sp_status_t sp__part_file_open(sp__part_file_t *f, const char *dir, const char *run_id,
                               uint32_t partition, uint32_t attempt);
sp_status_t sp__part_file_write(sp__part_file_t *f, const void *buf, size_t len);
sp_status_t sp__part_file_commit(sp__part_file_t *f);
/* Removes an uncommitted attempt file and frees f's buffers (after commit: frees only). */
void sp__part_file_abort(sp__part_file_t *f);

#endif /* SPATE_EXECUTOR_INT_H */
