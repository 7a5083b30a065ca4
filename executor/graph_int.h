/*
 * Internals of job graphs (include/spate/graph.h): the datasets a build made,
 * the shuffles that cut them into stages, the actions, and the task runner
 * and local runner over them. Not installed.
 *
 * Stages are numbered from the graph alone, so the driver and every executor
 * (which build the same graph) agree on them: stage s < nshuffles writes
 * shuffle s (its tasks are the partitions of the shuffle's inputs, the
 * left input's first); stage nshuffles + a computes action a (one task per
 * partition of its dataset; an unpersist action has no tasks). Shuffle s
 * has id shuffle_base + s in the shuffle layer (files, map statuses).
 */
#ifndef SPATE_EXECUTOR_GRAPH_INT_H
#define SPATE_EXECUTOR_GRAPH_INT_H

#include "executor_int.h"

#include <spate/graph.h>

/* Persisted datasets a task's result names (a pipeline rarely persists more than one). */
#define SP__GRAPH_MAX_CACHED 64u

/* At most this many datasets, shuffles and actions in one graph. */
#define SP__GRAPH_MAX_DATASETS 65536u

typedef enum sp__ds_kind {
    SP__DS_TEXT = 0, /* sources */
    SP__DS_RECORDS,
    SP__DS_GENERATE,
    SP__DS_MAP, /* narrow */
    SP__DS_FLAT_MAP,
    SP__DS_FILTER,
    SP__DS_MAP_PARTITIONS,
    SP__DS_REDUCE, /* wide: read from a shuffle */
    SP__DS_GROUP,
    SP__DS_SORT,
    SP__DS_COGROUP,
    SP__DS_JOIN,
    SP__DS_PARTITION_BY,
    SP__DS_REPARTITION,
} sp__ds_kind_t;

struct sp_dataset {
    sp_graph_t *graph;
    uint32_t id;
    sp__ds_kind_t kind;
    sp_dataset_t *parent; /* narrow and wide; right: cogroup and join's second input */
    sp_dataset_t *right;
    uint32_t partitions;
    /* sources */
    sp_job_split_t *splits; /* TEXT, RECORDS: partitions entries */
    uint32_t record_size, key_size;
    sp_generate_fn_t generate;
    sp_sample_fn_t sample; /* GENERATE: its sampler, or NULL */
    /* operations */
    sp_record_fn_t record_fn;
    sp_filter_fn_t filter_fn;
    sp_partition_fns_t partition_fns;
    sp_group_fn_t group_fn;
    sp_cogroup_fn_t cogroup_fn;
    sp_join_kind_t join;
    void *arg;
    sp_combiner_t combiner;
    sp_key_compare_fn_t compare;
    void *compare_arg;
    int32_t shuffle; /* wide: the shuffle it reads; -1 otherwise */
    bool persisted;
    sp_storage_level_t level;
};

/* The shuffle under a wide dataset: who writes it, and how it is written and read. */
typedef struct sp__graph_shuffle {
    sp_dataset_t *ds;        /* the wide dataset that reads it */
    sp_dataset_t *inputs[2]; /* map side: the datasets written; inputs[1] NULL but for cogroup */
    uint32_t maps;           /* inputs' partitions, summed */
    uint32_t partitions;
    sp_partitioner_t partitioner;  /* GIVEN: the task runner picks (tagged, round robin) */
    bool tagged;                   /* cogroup, join: one byte after the key names the input */
    bool round_robin;              /* repartition */
    bool key_ordering;             /* map side sorts by key (sort_by_key) */
    const sp_combiner_t *combiner; /* map-side combine (reduce_by_key) */
    sp_read_order_t order;
    sp_key_compare_fn_t compare; /* sort_by_key's order, or the tagged order; NULL: bytes */
    void *compare_arg;
} sp__graph_shuffle_t;

typedef enum sp__action_kind {
    SP__ACTION_SAVE = 0,
    SP__ACTION_COUNT = 1,
    SP__ACTION_COLLECT = 2,
    SP__ACTION_UNPERSIST = 3,
} sp__action_kind_t;

typedef struct sp__graph_action {
    sp__action_kind_t kind;
    sp_dataset_t *ds;
    sp_save_format_t format;
    uint64_t limit;
    /* results, on the driver */
    uint64_t count;
    unsigned char *collected; /* packed (u32 key len, u32 value len, key, value) records */
    size_t collected_len;
    size_t *offsets; /* of each collected record */
    size_t ncollected;
} sp__graph_action_t;

struct sp_graph {
    const sp_job_params_t *params;
    sp_status_t status;
    char message[512]; /* the first error's */
    sp_dataset_t **datasets;
    uint32_t ndatasets, cap_datasets;
    sp__graph_shuffle_t *shuffles;
    uint32_t nshuffles, cap_shuffles;
    sp__graph_action_t *actions;
    uint32_t nactions, cap_actions;
    bool saves; /* an action saves to --output */
    struct sp_graph_kept {
        void *ptr;
        void (*free_fn)(void *);
    } * kept; /* sp_graph_keep's, freed with the graph */
    uint32_t nkept;
};

/* Most bytes one collect action may bring to the driver. */
#define SP__GRAPH_COLLECT_MAX (UINT64_C(64) << 20)

/*
 * Whether job is a graph job: ABI version 2 or later with a descriptor large
 * enough to hold build, and build set. Read nothing of version 2 without it.
 */
bool sp__job_is_graph(const sp_job_t *job);

/*
 * Builds job's graph from params (which must outlive it): runs build and
 * checks the result (the build's first error, at least one action, inputs
 * that exist). SP_ERR_INVALID_PARAM or the build's status with the message
 * naming the job otherwise. Destroy with sp__graph_destroy().
 */
sp_status_t sp__graph_build(const sp_job_t *job, const sp_job_params_t *params,
                            sp_graph_t **graph_p);
void sp__graph_destroy(sp_graph_t *graph);

/* Stages of the graph (see above): nshuffles + nactions. */
uint32_t sp__graph_stages(const sp_graph_t *graph);
/* Tasks of stage s (0 for an unpersist action's). */
uint32_t sp__graph_stage_tasks(const sp_graph_t *graph, uint32_t stage);
/* "map 2 (reduce_by_key)", "action 0 (count)": for messages. */
const char *sp__graph_kind_name(sp__ds_kind_t kind);

/*
 * A task of map stage s: which input (0 or 1) and which of its partitions
 * task index computes.
 */
void sp__graph_map_input(const sp__graph_shuffle_t *shuffle, uint32_t index, uint32_t *input_p,
                         uint32_t *partition_p);

/* Name of the block holding partition p of dataset ds in a run: "rdd_<run>_<ds>_<p>". */
void sp__graph_block_id(const char *run_id, uint32_t ds, uint32_t partition, char *buf, size_t cap);

/* Driver side: an action's results from one task's payload (count: u64; collect: records). */
sp_status_t sp__graph_action_add(sp_graph_t *graph, uint32_t action, const void *payload,
                                 size_t len);

/* ------------------------------------------------------------------------ */
/* Task runner (executor/stage_task.c)                                       */
/* ------------------------------------------------------------------------ */

/*
 * What a graph task runs with. statuses(arg, shuffle, &list, &count) gives
 * the map statuses of shuffle (graph index) known now, count = its maps,
 * NULL entries for maps not computed; SP_ERR_NOT_FOUND when the shuffle was
 * never computed. bounds(arg, shuffle, &keys) gives a RANGE shuffle's
 * partitions-1 split keys. blocks may be NULL (nothing is cached).
 */
typedef struct sp__graph_env {
    const sp_graph_t *graph;
    const sp_job_t *job;
    const sp_job_params_t *params;
    sp_memory_manager_t *mm;
    const sp_conf_t *conf;
    sp_transport_t *transport; /* NULL: every block is read locally */
    sp_block_store_t *blocks;
    uint64_t shuffle_base;
    uint32_t executor_id;
    const char *run_id;
    sp_status_t (*statuses)(void *arg, uint32_t shuffle, const sp_map_status_t *const **list_p,
                            size_t *count_p);
    sp_status_t (*bounds)(void *arg, uint32_t shuffle, const sp_key_t **keys_p);
    void *arg;
} sp__graph_env_t;

/* What a graph task hands back. */
typedef struct sp__graph_task_out {
    sp_map_status_t *status; /* map stage: the committed output's */
    void *payload;           /* action: count (u64) or collected records; sample: packed keys */
    size_t payload_len;
    uint64_t missing_shuffle; /* SP_ERR_FETCH_FAILED: the shuffle not computed; UINT64_MAX */
    uint64_t failed_map;      /* SP_ERR_FETCH_FAILED: the map whose block failed; UINT64_MAX */
    uint32_t failed_shuffle;  /* and its shuffle */
    uint32_t cached;          /* blocks it put in the block store (or found there, put by another
                                 attempt) */
    uint32_t cached_ids[SP__GRAPH_MAX_CACHED]; /* their datasets (the first ones) */
    uint32_t cache_hits;                       /* blocks it read instead of computing */
} sp__graph_task_out_t;

/*
 * Runs task index (attempt) of stage: a map stage's task writes and commits
 * its part of the shuffle; an action's computes its partition into the
 * action's sink (save: an attempt file committed under the run's
 * _temporary, like a reduce task's). With sample, a RANGE map stage's task
 * returns count sampled keys instead (sp__range_bounds's input form).
 * Reading a shuffle that was never computed, or one whose map output fails,
 * is SP_ERR_FETCH_FAILED with out->missing_shuffle or out->failed_map set.
 * Free out with sp__graph_task_out_clear().
 */
sp_status_t sp__graph_task_run(const sp__graph_env_t *env, uint32_t stage, uint32_t index,
                               uint32_t attempt, bool sample, uint32_t count,
                               sp__graph_task_out_t *out, sp__task_metrics_t *metrics);
void sp__graph_task_out_clear(sp__graph_task_out_t *out);

/* What the local runner did. */
typedef struct sp__graph_stats {
    uint64_t stages_run;        /* map stages computed, and action stages */
    uint64_t stages_skipped;    /* map stages an action read from an earlier action's run */
    uint64_t stages_recomputed; /* after a map output was lost */
    uint64_t tasks;             /* task attempts that succeeded */
    uint64_t blocks_cached;     /* partitions put in the block store */
    uint64_t cache_hits;        /* partitions read from it instead of computed */
    uint64_t spills;            /* of writers, sorts and aggregations */
} sp__graph_stats_t;

/*
 * Runs a graph job in this process, one task at a time, with local fetches
 * and mm's block store for persisted datasets (created when mm has none):
 * the embedded form, and what the operation tests use. Runs the actions in
 * order; a stage whose shuffle is complete is skipped, a lost cached block
 * recomputed. *stats_p (may be NULL) says what ran. *graph_p (may be NULL) keeps the graph with the
 * actions' results; destroy it with sp__graph_destroy().
 */
sp_status_t sp__graph_run_local(const sp_job_t *job, const sp_job_params_t *params,
                                sp_memory_manager_t *mm, sp_job_result_t *result_p,
                                sp__graph_stats_t *stats_p, sp_graph_t **graph_p);

#endif /* SPATE_EXECUTOR_GRAPH_INT_H */
