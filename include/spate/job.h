/*
 * spate — jobs: what executors run. A job is a descriptor of callbacks: it
 * plans its input splits, maps each split to key/value records (which spate
 * partitions, sorts, spills and shuffles), and reduces each partition's
 * records in the order it asks for into its output. Built-in jobs
 * (terasort, wordcount, shuffle) and plugins loaded with dlopen() use the
 * same descriptor; a plugin exports it with SP_JOB_EXPORT().
 *
 * Every callback gets the task it runs in (sp_job_task_t) and returns a
 * status; an error fails the task (which the driver retries) with the
 * message the job gave sp_job_fail() (or the one spate's call set).
 */
#ifndef SPATE_JOB_H
#define SPATE_JOB_H

#include <spate/common.h>
#include <spate/conf.h>
#include <spate/graph.h>
#include <spate/shuffle.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Version of sp_job_t. Version 2 adds build() and finish_graph() (graph
 * jobs, <spate/graph.h>); plugins built for version 1 still load and run as
 * a two-stage job. Any other version is refused.
 */
#define SP_JOB_ABI_VERSION 2u
/** Counters a job may keep (summed over tasks by the driver). */
#define SP_JOB_COUNTERS 8u

/** What the user asked for on `spate run` (and what the driver decided). */
typedef struct sp_job_params {
    const char *input;       /**< --input DIR; NULL when not given */
    const char *output;      /**< --output DIR; NULL: output is counted, not kept */
    uint64_t size;           /**< --size in bytes; 0 when not given */
    uint32_t partitions;     /**< --partitions; 0 when not given (the job decides) */
    uint32_t executors;      /**< executors in the run */
    uint32_t slots;          /**< task slots (worker threads) over all executors */
    const char *const *args; /**< --job-arg KEY=VALUE strings, in order */
    size_t nargs;
    const sp_conf_t *conf; /**< the run's configuration */
} sp_job_params_t;

/**
 * One map task's input. For a file split path names the file and offset and
 * length are bytes; for generated input path is NULL and offset/length are
 * whatever the job makes of them (terasort: first record and record count).
 */
typedef struct sp_job_split {
    char *path; /**< malloc'ed or NULL; freed by spate */
    uint64_t offset;
    uint64_t length;
} sp_job_split_t;

/** How records are partitioned across reduce tasks. */
typedef enum sp_job_partitioning {
    SP_JOB_HASH = 0,  /**< XXH3 of the key */
    SP_JOB_RANGE = 1, /**< bounds from a sample of keys (sample stage) */
    SP_JOB_GIVEN = 2, /**< map emits with sp_job_emit_to() */
} sp_job_partitioning_t;

/** The job's plan, filled by plan(). */
typedef struct sp_job_plan {
    uint32_t maps;          /**< map tasks, >= 1 */
    sp_job_split_t *splits; /**< maps entries, malloc'ed; freed by spate */
    uint32_t partitions;    /**< reduce tasks, >= 1 */
    sp_job_partitioning_t partitioning;
    bool key_ordering;       /**< map side sorts records by key */
    sp_read_order_t order;   /**< reduce side order */
    uint32_t sample_per_map; /**< RANGE: keys to sample per map (0: 1000) */
} sp_job_plan_t;

typedef struct sp_job_task sp_job_task_t;

/** What the driver gathered from every task, for finish(). */
typedef struct sp_job_result {
    uint64_t counters[SP_JOB_COUNTERS];
    uint64_t map_records;    /**< records emitted by map tasks */
    uint64_t reduce_records; /**< records given to reduce() */
    uint64_t output_bytes;   /**< bytes written with sp_job_write() */
    uint32_t partitions;
} sp_job_result_t;

typedef struct sp_job {
    uint32_t abi_version; /**< SP_JOB_ABI_VERSION */
    uint32_t size;        /**< sizeof(sp_job_t) */
    const char *name;
    const char *summary; /**< one line for `spate run --help` */

    /** Plans splits and partitions from params (runs on the driver). */
    sp_status_t (*plan)(const sp_job_params_t *params, sp_job_plan_t *plan);
    /** Emits the records of one split with sp_job_emit() / sp_job_emit_to(). */
    sp_status_t (*map)(sp_job_task_t *task, const sp_job_split_t *split);
    /**
     * RANGE only, optional: emits about count keys of the split (values are
     * ignored) cheaper than map would. NULL: map runs and keys are sampled.
     */
    sp_status_t (*sample)(sp_job_task_t *task, const sp_job_split_t *split, uint32_t count);
    /** Map-side combine and SP_READ_AGGREGATE; NULL: none. */
    const sp_combiner_t *combiner;
    /** Key order for key_ordering, RANGE, MERGE and SORT; NULL: byte order. */
    sp_key_compare_fn_t compare;
    void *compare_arg;
    /** One record of the task's partition, in the plan's order. */
    sp_status_t (*reduce)(sp_job_task_t *task, const void *key, size_t key_len, const void *value,
                          size_t value_len);
    /** Optional: after the partition's last record (flush what reduce kept). */
    sp_status_t (*reduce_end)(sp_job_task_t *task);
    /**
     * Optional, on the driver after every task succeeded: checks the result
     * (terasort validates its output) and prints what it found to report.
     * An error fails the run.
     */
    sp_status_t (*finish)(const sp_job_params_t *params, const sp_job_result_t *result,
                          void *report /* FILE * */);
    /** Names of the counters used (NULL for unused ones), for reports. */
    const char *counter_names[SP_JOB_COUNTERS];

    /* ---- version 2 ---- */
    /**
     * A graph job: builds its graph of datasets (<spate/graph.h>) from
     * params, on the driver and on every executor alike. When set, plan,
     * map, sample, combiner, compare, reduce, reduce_end and finish are
     * not used (and may be NULL); counters are still summed (callbacks add
     * to them with sp_emitter_counter_add) and named by counter_names.
     */
    sp_status_t (*build)(sp_graph_t *graph, const sp_job_params_t *params);
    /**
     * Optional, graph jobs, on the driver after every action succeeded: checks
     * the results (sp_graph_count_result, sp_graph_collected_record) and
     * prints what it found to report. An error fails the run.
     */
    sp_status_t (*finish_graph)(const sp_graph_t *graph, const sp_job_params_t *params,
                                const sp_job_result_t *result, void *report /* FILE * */);
} sp_job_t;

/** The run's parameters. */
SP_API const sp_job_params_t *sp_job_task_params(const sp_job_task_t *task);
/** Map index of a map or sample task, partition of a reduce task. */
SP_API uint32_t sp_job_task_index(const sp_job_task_t *task);
/** Partitions of the shuffle. */
SP_API uint32_t sp_job_task_partitions(const sp_job_task_t *task);
/**
 * A pointer the job may use for per-task state (NULL at first). It must be
 * malloc'ed: when a task ends with the pointer still set (it failed before
 * reduce_end, say), spate free()s it.
 */
SP_API void **sp_job_task_state(sp_job_task_t *task);
/** The task's memory, for jobs that want pages accounted like spate's own. */
SP_API sp_task_memory_t *sp_job_task_memory(sp_job_task_t *task);

/** Map: emits a record (HASH and RANGE partitioning). */
SP_API sp_status_t sp_job_emit(sp_job_task_t *task, const void *key, size_t key_len,
                               const void *value, size_t value_len);
/** Map: emits a record to a partition of the job's choice (GIVEN). */
SP_API sp_status_t sp_job_emit_to(sp_job_task_t *task, uint32_t partition, const void *key,
                                  size_t key_len, const void *value, size_t value_len);
/**
 * Reduce: appends bytes to the partition's output file
 * (OUTPUT/part-r-NNNNN, published when the task succeeds).
 */
SP_API sp_status_t sp_job_write(sp_job_task_t *task, const void *buf, size_t len);
/** Adds to counter id (< SP_JOB_COUNTERS); summed over tasks. */
SP_API void sp_job_counter_add(sp_job_task_t *task, unsigned id, uint64_t value);

/**
 * Sets the calling thread's error message (printf-style) and returns status,
 * for `return sp_job_fail(SP_ERR_CORRUPT, "bad line %zu", n);` in a callback.
 */
SP_API sp_status_t sp_job_fail(sp_status_t status, const char *fmt, ...) SP_PRINTF(2, 3);

/**
 * Value of --job-arg KEY=VALUE, the last one given; NULL when absent.
 */
SP_API const char *sp_job_arg(const sp_job_params_t *params, const char *key);

/**
 * Value of --job-arg key as an integer from 0 to max (decimal), or dflt when
 * absent. SP_ERR_INVALID_PARAM, naming the argument and the range, for
 * anything else (signs, other bases, trailing text, overflow).
 */
SP_API sp_status_t sp_job_arg_u64(const sp_job_params_t *params, const char *key, uint64_t dflt,
                                  uint64_t max, uint64_t *value_p);

/** Name of the function a plugin exports. */
#define SP_JOB_DESCRIPTOR_SYMBOL "sp_job_descriptor"

#if defined(__GNUC__)
#define SP_JOB_EXPORT_ATTR __attribute__((visibility("default")))
#else
#define SP_JOB_EXPORT_ATTR
#endif

/** In a plugin: exports job (an sp_job_t) as the plugin's descriptor. */
#define SP_JOB_EXPORT(job)                                                                         \
    SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor(void);                                    \
    SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor(void) { return &(job); }

#ifdef __cplusplus
}
#endif
#endif /* SPATE_JOB_H */
