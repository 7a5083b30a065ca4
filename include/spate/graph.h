/*
 * spate — job graphs: a job as a graph of datasets (Spark's RDD lineage,
 * Thrill's DIA). A graph job's build() callback composes datasets from
 * sources, narrow operations (pipelined record by record in one task, with
 * nothing materialized between them) and wide ones (which cut a stage at a
 * shuffle), marks datasets to keep (persist), and ends in actions: part
 * files in --output, a count, or records collected for the driver. spate
 * cuts the graph into stages at each shuffle, runs a stage once its parents'
 * shuffles are complete, skips a stage whose shuffle output is still there,
 * keeps persisted partitions as blocks of the executor's block store, and
 * recomputes what is lost from lineage.
 *
 * Records stay serialized (key, value) bytes from source to sink; the
 * sp_rec_* helpers encode integers, doubles and tuples in forms whose byte
 * order is their numeric order where that matters (keys).
 *
 * build() runs on the driver and on every executor with the same params and
 * must build the same graph each time (no randomness, no clock): tasks name
 * stages and datasets by their place in it. Builder calls return NULL (or
 * -1) after the first error, which the graph keeps; passing NULL on is
 * allowed, so a build may check sp_graph_status() once at its end.
 *
 * Callbacks run on task threads, concurrently for different partitions; a
 * callback's arg is shared by them (read only). A callback fails its task
 * by returning an error, with a message from sp_job_fail().
 */
#ifndef SPATE_GRAPH_H
#define SPATE_GRAPH_H

#include <spate/common.h>
#include <spate/memory.h>
#include <spate/shuffle.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sp_job_params;

typedef struct sp_graph sp_graph_t;
typedef struct sp_dataset sp_dataset_t;
/** Where an operation's records go (the next operation, a shuffle or a sink). */
typedef struct sp_emitter sp_emitter_t;
/** The values of one key in a group-by or one side of a cogroup. */
typedef struct sp_values sp_values_t;

/** Passes a record on (the bytes are used before it returns). */
SP_API sp_status_t sp_emit(sp_emitter_t *out, const void *key, size_t key_len, const void *value,
                           size_t value_len);
/** The partition the task computes, and how many the dataset has. */
SP_API uint32_t sp_emitter_partition(const sp_emitter_t *out);
SP_API uint32_t sp_emitter_partitions(const sp_emitter_t *out);
/** The run's parameters (--job-arg and the rest), for callbacks. */
SP_API const struct sp_job_params *sp_emitter_params(const sp_emitter_t *out);
/** Adds to the job's counter id (< SP_JOB_COUNTERS), summed over tasks like sp_job_counter_add. */
SP_API void sp_emitter_counter_add(sp_emitter_t *out, unsigned id, uint64_t value);

/**
 * The next value of the group: true with *value_p valid until the next call,
 * false at the end. A read error also ends the values; the task then fails
 * with that error whatever the callback returns.
 */
SP_API bool sp_values_next(sp_values_t *values, const void **value_p, size_t *len_p);

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                 */
/* ------------------------------------------------------------------------ */

/** map: exactly one record out per record in; flat_map: any number. */
typedef sp_status_t (*sp_record_fn_t)(sp_emitter_t *out, const void *key, size_t key_len,
                                      const void *value, size_t value_len, void *arg);
/** filter: true keeps the record. */
typedef bool (*sp_filter_fn_t)(const void *key, size_t key_len, const void *value, size_t value_len,
                               void *arg);
/** map_partitions: begin once per partition (state for the task), each record, end. */
typedef struct sp_partition_fns {
    sp_status_t (*begin)(sp_emitter_t *out, void **state_p, void *arg); /**< may be NULL */
    sp_status_t (*record)(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                          const void *value, size_t value_len, void *arg);
    /** May be NULL; called after the last record, also frees state. */
    sp_status_t (*end)(sp_emitter_t *out, void *state, void *arg);
    /** Frees state when the task fails before end; NULL: free(). */
    void (*discard)(void *state, void *arg);
} sp_partition_fns_t;
/** group_by_key: one call per distinct key with its values (in no set order). */
typedef sp_status_t (*sp_group_fn_t)(sp_emitter_t *out, const void *key, size_t key_len,
                                     sp_values_t *values, void *arg);
/**
 * cogroup: one call per key present on either side. left's values come
 * first: reading right first skips those of left.
 */
typedef sp_status_t (*sp_cogroup_fn_t)(sp_emitter_t *out, const void *key, size_t key_len,
                                       sp_values_t *left, sp_values_t *right, void *arg);
/** generate: the records of one partition of a generated source. */
typedef sp_status_t (*sp_generate_fn_t)(sp_emitter_t *out, uint32_t partition, uint32_t partitions,
                                        void *arg);
/**
 * A generated source's sample: about count records (values ignored) whose
 * keys are spread over partition's like a random sample, made cheaper than
 * generating the partition (terasort: skip-ahead).
 */
typedef sp_status_t (*sp_sample_fn_t)(sp_emitter_t *out, uint32_t partition, uint32_t count,
                                      void *arg);

/* ------------------------------------------------------------------------ */
/* Building a graph                                                          */
/* ------------------------------------------------------------------------ */

/**
 * Hands ptr to the graph, which calls free_fn(ptr) when it is destroyed: for
 * state a build makes for its callbacks (their arg) that must live as long
 * as the graph. On error (no memory) free_fn(ptr) runs at once and the
 * graph keeps the error.
 */
SP_API void sp_graph_keep(sp_graph_t *graph, void *ptr, void (*free_fn)(void *));

/** The first error of the build (SP_OK when none); its message is the thread's last error. */
SP_API sp_status_t sp_graph_status(const sp_graph_t *graph);
/** The run's default partition count: --partitions, else the run's task slots. */
SP_API uint32_t sp_graph_default_partitions(const sp_graph_t *graph);

/**
 * Text lines of path (a file, or a directory's regular files in name order,
 * skipping names that start with '.' or '_'), split into about `splits`
 * byte ranges (0: sp_graph_default_partitions, at least one per non-empty
 * file). A line belongs to the split holding its first byte. Records: empty
 * key, the line without its '\n' as value. A line over 64 MiB is bad input.
 */
SP_API sp_dataset_t *sp_graph_text(sp_graph_t *graph, const char *path, uint32_t splits);
/**
 * Fixed-size records of path (file or directory as for sp_graph_text): each
 * record_size bytes, the first key_size of them the key, the rest the value.
 * A file whose size is not a multiple of record_size is bad input.
 */
SP_API sp_dataset_t *sp_graph_records(sp_graph_t *graph, const char *path, uint32_t record_size,
                                      uint32_t key_size, uint32_t splits);
/** partitions partitions, each filled by fn (which must give the same records every time). */
SP_API sp_dataset_t *sp_graph_generate(sp_graph_t *graph, uint32_t partitions, sp_generate_fn_t fn,
                                       void *arg);

/**
 * A generated source with a sampler: when sort_by_key sorts this dataset
 * itself (no operation between them), its range bounds come from sample
 * instead of from a pass over the records.
 */
SP_API sp_dataset_t *sp_graph_generate_sampled(sp_graph_t *graph, uint32_t partitions,
                                               sp_generate_fn_t fn, sp_sample_fn_t sample,
                                               void *arg);

/* Narrow operations: the same partitions as their input. */
SP_API sp_dataset_t *sp_ds_map(sp_dataset_t *ds, sp_record_fn_t fn, void *arg);
SP_API sp_dataset_t *sp_ds_flat_map(sp_dataset_t *ds, sp_record_fn_t fn, void *arg);
SP_API sp_dataset_t *sp_ds_filter(sp_dataset_t *ds, sp_filter_fn_t fn, void *arg);
SP_API sp_dataset_t *sp_ds_map_partitions(sp_dataset_t *ds, const sp_partition_fns_t *fns,
                                          void *arg);

/*
 * Wide operations: a shuffle into `partitions` partitions (0: the default).
 * Keys are hashed (XXH3) to partitions except by sort_by_key.
 */
/**
 * One record per distinct key, values combined on the map side and after the
 * shuffle; each partition comes out in key order (byte order).
 */
SP_API sp_dataset_t *sp_ds_reduce_by_key(sp_dataset_t *ds, const sp_combiner_t *combiner,
                                         uint32_t partitions);
/** fn sees each distinct key once with all its values (sorted and streamed, never all held). */
SP_API sp_dataset_t *sp_ds_group_by_key(sp_dataset_t *ds, uint32_t partitions, sp_group_fn_t fn,
                                        void *arg);
/**
 * Records sorted by key (compare, NULL: byte order), range-partitioned on
 * bounds from a sample of the keys: partition i's keys all come before
 * partition i+1's. compare must be a pure function of the bytes.
 */
SP_API sp_dataset_t *sp_ds_sort_by_key(sp_dataset_t *ds, uint32_t partitions,
                                       sp_key_compare_fn_t compare, void *compare_arg);
/** fn sees each key of either input once, with its values from each. */
SP_API sp_dataset_t *sp_ds_cogroup(sp_dataset_t *left, sp_dataset_t *right, uint32_t partitions,
                                   sp_cogroup_fn_t fn, void *arg);

typedef enum sp_join_kind {
    SP_JOIN_INNER = 0, /**< pairs of equal keys */
    SP_JOIN_LEFT = 1,  /**< and left records with no match, paired with a null */
} sp_join_kind_t;
/**
 * Equi-join on the key: one record (key, tuple(left value, right value))
 * per matching pair (sp_rec_tuple_*; a missing right value is a null
 * field). A key's left values are held in task memory while its right
 * values stream.
 */
SP_API sp_dataset_t *sp_ds_join(sp_dataset_t *left, sp_dataset_t *right, uint32_t partitions,
                                sp_join_kind_t kind);
/** The same records hashed by key into partitions (co-locates equal keys). */
SP_API sp_dataset_t *sp_ds_partition_by(sp_dataset_t *ds, uint32_t partitions);
/** The same records spread round-robin over partitions (balances skew). */
SP_API sp_dataset_t *sp_ds_repartition(sp_dataset_t *ds, uint32_t partitions);

/**
 * Keeps ds's partitions, once computed, as blocks of the executors' block
 * stores (storage memory; evicted least recently used: SP_STORAGE_MEMORY
 * blocks are dropped, MEMORY_AND_DISK ones written to disk). A partition
 * found there is read instead of computed; a lost one is computed again from
 * lineage. Returns ds.
 */
SP_API sp_dataset_t *sp_ds_persist(sp_dataset_t *ds, sp_storage_level_t level);
/** Frees ds's blocks once the actions added before this call are done. */
SP_API void sp_ds_unpersist(sp_dataset_t *ds);

/* ------------------------------------------------------------------------ */
/* Actions: run in the order they are added; each returns its id (-1: error) */
/* ------------------------------------------------------------------------ */

typedef enum sp_save_format {
    SP_SAVE_TEXT = 0,   /**< per record: key, a tab when both are non-empty, value, '\n' */
    SP_SAVE_BINARY = 1, /**< per record: key bytes then value bytes */
} sp_save_format_t;

/** Part files OUTPUT/part-r-NNNNN, one per partition, committed with the run (one per graph). */
SP_API int sp_ds_save(sp_dataset_t *ds, sp_save_format_t format);
/** The number of records. */
SP_API int sp_ds_count(sp_dataset_t *ds);
/** Up to limit records (in partition order) for the driver (at most 64 MiB of them). */
SP_API int sp_ds_collect(sp_dataset_t *ds, uint64_t limit);

/* Results, for the job's finish_graph() on the driver. */
SP_API uint64_t sp_graph_count_result(const sp_graph_t *graph, int action);
/** Records collected by action; index < sp_graph_collected(). Pointers live as long as graph. */
SP_API size_t sp_graph_collected(const sp_graph_t *graph, int action);
SP_API bool sp_graph_collected_record(const sp_graph_t *graph, int action, size_t index,
                                      const void **key_p, size_t *key_len_p, const void **value_p,
                                      size_t *value_len_p);

/* ------------------------------------------------------------------------ */
/* Record helpers                                                            */
/* ------------------------------------------------------------------------ */

/** 8 bytes big-endian: keys sort as numbers. */
SP_API void sp_rec_put_u64(void *buf, uint64_t v);
SP_API uint64_t sp_rec_get_u64(const void *buf);
/** 8 bytes whose byte order is the numeric order of doubles (NaN after +inf). */
SP_API void sp_rec_put_double(void *buf, double v);
SP_API double sp_rec_get_double(const void *buf);

/** A tuple field: bytes, or null. */
typedef struct sp_rec_field {
    const void *data;
    size_t len;
    bool null;
} sp_rec_field_t;
/**
 * Packs fields into buf (each a u32 little-endian length, 0xFFFFFFFF for
 * null, then its bytes). Returns the bytes needed; writes only when they fit
 * in cap (snprintf style). A field over 4 GiB - 2 is not packable: returns
 * SIZE_MAX.
 */
SP_API size_t sp_rec_tuple_pack(void *buf, size_t cap, const sp_rec_field_t *fields, size_t count);
/** Field index of a packed tuple; false when the tuple is malformed or shorter. */
SP_API bool sp_rec_tuple_field(const void *tuple, size_t len, size_t index,
                               sp_rec_field_t *field_p);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_GRAPH_H */
