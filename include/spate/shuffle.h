/*
 * spate — shuffle layer, map side: the writer of one map task's output.
 *
 * A writer takes records (key bytes, value bytes) for a partition, keeps
 * them serialized in task pages, sorts packed pointers to them by partition
 * (and key), spills sorted runs when memory is refused, and at commit merges
 * everything into one committed set of files per map task:
 *   shuffle_<shuffle>_<map>.data      partition segments, back to back
 *   shuffle_<shuffle>_<map>.index     partition offsets into the data file
 *   shuffle_<shuffle>_<map>.checksum  one checksum per partition segment
 * Each partition segment is independently compressed and checksummed. The
 * layouts are in docs/FORMATS.md.
 */
#ifndef SPATE_SHUFFLE_H
#define SPATE_SHUFFLE_H

#include <spate/common.h>
#include <spate/conf.h>
#include <spate/memory.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Compression of partition segments. Every codec's segments concatenate. */
typedef enum sp_codec {
    SP_CODEC_NONE = 0, /**< bytes as they are */
    SP_CODEC_LZ4 = 1,  /**< one LZ4 frame per segment */
    SP_CODEC_ZSTD = 2, /**< one Zstandard frame per segment */
} sp_codec_t;

/** Checksum of a partition segment (over its bytes as stored). */
typedef enum sp_checksum_kind {
    SP_CHECKSUM_CRC32C = 1, /**< CRC-32C (Castagnoli), via ISA-L */
    SP_CHECKSUM_XXH3 = 2,   /**< XXH3-64 */
} sp_checksum_kind_t;

/** Parses "none", "lz4", "zstd"; SP_ERR_BAD_CONF otherwise. */
SP_API sp_status_t sp_codec_parse(const char *name, sp_codec_t *codec_p);
SP_API const char *sp_codec_name(sp_codec_t codec);
/** Parses "crc32c", "xxh3"; SP_ERR_BAD_CONF otherwise. */
SP_API sp_status_t sp_checksum_parse(const char *name, sp_checksum_kind_t *kind_p);
SP_API const char *sp_checksum_name(sp_checksum_kind_t kind);

/* ------------------------------------------------------------------------ */
/* Packed record pointers                                                     */
/* ------------------------------------------------------------------------ */

/*
 * A packed record pointer is 64 bits:
 *   bits 63..40  partition id   (24 bits, 0 .. 16,777,215)
 *   bits 39..27  page number    (13 bits, 0 .. 8191, index in the task's page table)
 *   bits 26..0   offset in page (27 bits, 0 .. 134,217,727)
 * Sorting the 64-bit words sorts by partition first.
 */
#define SP_PARTITION_BITS 24
#define SP_MAX_PARTITIONS (UINT32_C(1) << SP_PARTITION_BITS)

/** Packs without checking; callers guarantee the limits above. */
static inline uint64_t sp_shuffle_packed_ptr_encode(uint32_t partition, uint32_t page,
                                                    uint32_t offset)
{
    return ((uint64_t)partition << (SP_PAGE_NUMBER_BITS + SP_PAGE_OFFSET_BITS)) |
           ((uint64_t)page << SP_PAGE_OFFSET_BITS) | (uint64_t)offset;
}

static inline uint32_t sp_shuffle_packed_ptr_partition(uint64_t ptr)
{
    return (uint32_t)(ptr >> (SP_PAGE_NUMBER_BITS + SP_PAGE_OFFSET_BITS));
}

static inline uint32_t sp_shuffle_packed_ptr_page(uint64_t ptr)
{
    return (uint32_t)((ptr >> SP_PAGE_OFFSET_BITS) & (SP_PAGE_TABLE_SIZE - 1));
}

static inline uint32_t sp_shuffle_packed_ptr_offset(uint64_t ptr)
{
    return (uint32_t)(ptr & SP_PAGE_MAX_OFFSET);
}

/**
 * Packs with the limits checked: SP_ERR_TOO_LARGE (message names the field,
 * its value and its limit) when a field does not fit.
 */
SP_API sp_status_t sp_shuffle_packed_ptr_pack(uint64_t partition, uint64_t page, uint64_t offset,
                                              uint64_t *ptr_p);

/* ------------------------------------------------------------------------ */
/* Map output writer                                                          */
/* ------------------------------------------------------------------------ */

/**
 * Compares two keys like memcmp (negative, 0, positive). NULL in the options
 * means plain byte order (memcmp, then the shorter key first).
 */
typedef int (*sp_key_compare_fn_t)(const void *a, size_t alen, const void *b, size_t blen,
                                   void *arg);

/** How a record's partition is chosen. */
typedef enum sp_partitioner {
    SP_PARTITIONER_GIVEN = 0, /**< the caller passes it to write() */
    SP_PARTITIONER_HASH = 1,  /**< XXH3-64 of the key modulo the partition count */
    SP_PARTITIONER_RANGE = 2, /**< first split key >= the key; past the last: the last partition */
} sp_partitioner_t;

/**
 * The partition SP_PARTITIONER_HASH gives key (XXH3-64 of its bytes modulo
 * partitions, partitions >= 1; an empty key too): for callers that choose
 * the partition themselves (GIVEN) and must agree with the hash partitioner.
 */
SP_API uint32_t sp_shuffle_hash_partition(const void *key, size_t key_len, uint32_t partitions);

/** Which map-side path writes the output. */
typedef enum sp_writer_path {
    SP_WRITER_AUTO = 0,   /**< bypass when it applies, else sort */
    SP_WRITER_SORT = 1,   /**< serialized records, radix sort, spill, merge */
    SP_WRITER_BYPASS = 2, /**< one stream per partition, then concatenation */
} sp_writer_path_t;

/** A key given by the caller (range partitioner split points). */
typedef struct sp_key {
    const void *data;
    size_t len;
} sp_key_t;

typedef struct sp_shuffle_writer_options {
    uint64_t shuffle_id;
    uint64_t map_id;
    uint32_t attempt;
    uint32_t partitions; /**< 1 .. 16,777,216 */
    sp_partitioner_t partitioner;
    const sp_key_t *split_keys;  /**< RANGE: partitions-1 keys in ascending order */
    bool key_ordering;           /**< records sorted by key within each partition */
    sp_key_compare_fn_t compare; /**< NULL: byte order */
    void *compare_arg;
    sp_codec_t codec;                   /**< from shuffle.compress / shuffle.codec */
    int codec_level;                    /**< from shuffle.codec_level */
    sp_checksum_kind_t checksum;        /**< from shuffle.checksum */
    sp_writer_path_t path;              /**< SP_WRITER_AUTO unless a test forces one */
    const struct sp_combiner *combiner; /**< map-side combine of equal keys; NULL: none */
} sp_shuffle_writer_options_t;

/**
 * Map status of a committed map output: where it is and, per partition, the
 * stored (compressed) segment length, its record count and its checksum.
 * Arrays have `partitions` entries. Owned by the caller.
 */
typedef struct sp_map_status {
    uint64_t shuffle_id;
    uint64_t map_id;
    uint32_t attempt; /**< the attempt whose output was kept */
    uint32_t partitions;
    sp_codec_t codec;
    sp_checksum_kind_t checksum_kind;
    uint64_t *lengths;
    uint64_t *records;
    uint64_t *checksums;
    char *data_path;
    char *index_path;
    char *checksum_path;
    uint32_t executor_id; /**< executor holding the output (0 until the executor sets it) */
    char *address;        /**< transport address of that executor; NULL: read locally */
    unsigned char *rkey;  /**< remote-access key of the registered output; NULL until the
                               transport fills it */
    size_t rkey_len;
    bool approximate; /**< from the compact form: lengths and records of small partitions
                           are averages and checksums is NULL (the checksum file has them) */
} sp_map_status_t;

/**
 * Serializes a status for the wire (docs/FORMATS.md). Statuses with more
 * than compact_threshold partitions use the compact form: partitions larger
 * than exact_bytes exactly, the others as an average plus a bitmap of empty
 * partitions, and no checksums. *buf_p is freed with free().
 */
SP_API sp_status_t sp_map_status_serialize(const sp_map_status_t *status,
                                           uint32_t compact_threshold, uint64_t exact_bytes,
                                           void **buf_p, size_t *len_p);

/**
 * Parses a serialized status, checking every length and count against the
 * bytes given: SP_ERR_BAD_FORMAT naming what is wrong otherwise.
 */
SP_API sp_status_t sp_map_status_deserialize(const void *buf, size_t len,
                                             sp_map_status_t **status_p);

/** Deep copy of a status. */
SP_API sp_status_t sp_map_status_dup(const sp_map_status_t *status, sp_map_status_t **copy_p);

/** Frees a status; NULL accepted. */
SP_API void sp_map_status_destroy(sp_map_status_t *status);

/**
 * True when the committed data file of status (on this host) is held in
 * memory now (shuffle.output=memory), false when it is a file on disk.
 */
SP_API bool sp_map_status_in_memory(const sp_map_status_t *status);

/**
 * Map outputs this process has moved from memory to disk by eviction so far:
 * when it changes, outputs served from memory may now be files (their keys
 * change when they are served again).
 */
SP_API uint64_t sp_shuffle_outputs_evicted(void);

/** Counters of one writer. */
typedef struct sp_shuffle_write_stats {
    uint64_t records;      /**< records written */
    uint64_t record_bytes; /**< key + value bytes written */
    uint64_t spills;       /**< spill files written */
    uint64_t spill_bytes;  /**< bytes written to spill files */
    uint64_t output_bytes; /**< bytes of the committed data file */
    uint64_t sort_ns;      /**< time sorting pointers */
    uint64_t spill_ns;     /**< time writing spills */
    uint64_t merge_ns;     /**< time merging and writing the output */
    uint64_t merge_passes; /**< intermediate merges of runs when memory limits the fan-in */
    bool bypass;           /**< written by the bypass path */
} sp_shuffle_write_stats_t;

typedef struct sp_shuffle_writer sp_shuffle_writer_t;

/**
 * Fills opts with the defaults of conf (codec, level, checksum) for a
 * GIVEN-partitioner, unordered writer; the caller then sets the ids,
 * partition count and whatever else it needs.
 */
SP_API sp_status_t sp_shuffle_writer_options_init(sp_shuffle_writer_options_t *opts,
                                                  const sp_conf_t *conf);

/**
 * Opens the writer of one map task attempt. Memory comes from task (the
 * writer is one of its memory consumers); files go to shuffle.local_dirs of
 * conf. Returns SP_ERR_INVALID_PARAM / SP_ERR_TOO_LARGE for bad options
 * (message names the option), SP_ERR_IO for an unusable local dir. The writer
 * is used by one thread at a time.
 */
SP_API sp_status_t sp_shuffle_writer_open(sp_task_memory_t *task, const sp_conf_t *conf,
                                          const sp_shuffle_writer_options_t *opts,
                                          sp_shuffle_writer_t **writer_p);

/**
 * Writes one record. partition is used with SP_PARTITIONER_GIVEN and ignored
 * otherwise. The key may be empty only with the GIVEN partitioner. The
 * bytes are copied. A record larger than the executor's unified memory is
 * SP_ERR_TOO_LARGE. After an error the writer can only be aborted.
 */
SP_API sp_status_t sp_shuffle_writer_write(sp_shuffle_writer_t *writer, uint32_t partition,
                                           const void *key, size_t key_len, const void *value,
                                           size_t value_len);

/**
 * Sorts, merges and commits the output atomically, then returns its status
 * (owned by the caller). When another attempt of the same map task has
 * committed a valid output already, that output is kept, this attempt's
 * files are removed and the existing output's status is returned.
 */
SP_API sp_status_t sp_shuffle_writer_commit(sp_shuffle_writer_t *writer,
                                            sp_map_status_t **status_p);

/** Drops everything written and removes temporaries; commit is then refused. */
SP_API void sp_shuffle_writer_abort(sp_shuffle_writer_t *writer);

SP_API void sp_shuffle_writer_stats(const sp_shuffle_writer_t *writer,
                                    sp_shuffle_write_stats_t *stats_p);

/** Frees the writer, aborting it unless committed. NULL accepted. */
SP_API void sp_shuffle_writer_close(sp_shuffle_writer_t *writer);

/**
 * Removes the committed output of (shuffle_id, map_id) from this process's
 * shuffle.local_dirs (the index first, so a reader never sees half of it);
 * absent files are no error. Used before recomputing a lost or damaged output.
 */
SP_API sp_status_t sp_shuffle_remove_output(const sp_conf_t *conf, uint64_t shuffle_id,
                                            uint64_t map_id);
/** Removes every committed output of shuffle_id from shuffle.local_dirs. */
SP_API sp_status_t sp_shuffle_remove(const sp_conf_t *conf, uint64_t shuffle_id);

/* ------------------------------------------------------------------------ */
/* Committed map outputs and their segments                                   */
/* ------------------------------------------------------------------------ */

typedef struct sp_map_output sp_map_output_t;

/**
 * Opens a committed map output from its index path (the data and checksum
 * paths are derived from it) and validates it: magic, version, partition
 * count, monotonic offsets starting at 0, last offset equal to the data
 * file's length, the index's own checksum, and the checksum file's header
 * and size. Any failure is SP_ERR_CORRUPT (or SP_ERR_IO) naming the file.
 */
SP_API sp_status_t sp_map_output_open(const char *index_path, sp_map_output_t **output_p);
SP_API void sp_map_output_close(sp_map_output_t *output);
SP_API uint32_t sp_map_output_partitions(const sp_map_output_t *output);
SP_API sp_codec_t sp_map_output_codec(const sp_map_output_t *output);
SP_API sp_checksum_kind_t sp_map_output_checksum_kind(const sp_map_output_t *output);

/** Where partition p's segment is in the data file, its records and checksum. */
typedef struct sp_segment_info {
    uint64_t offset;
    uint64_t length;
    uint64_t records;
    uint64_t checksum;
} sp_segment_info_t;

SP_API sp_status_t sp_map_output_segment(const sp_map_output_t *output, uint32_t partition,
                                         sp_segment_info_t *info_p);

/**
 * Reads partition p's segment into a new buffer (*data_p, freed with free())
 * and verifies its checksum: SP_ERR_CORRUPT naming the file and partition on
 * a mismatch.
 */
SP_API sp_status_t sp_map_output_read_segment(const sp_map_output_t *output, uint32_t partition,
                                              void **data_p, size_t *len_p);

/** Iterates the records of a stored segment (decompressing it). */
typedef struct sp_segment_reader sp_segment_reader_t;

SP_API sp_status_t sp_segment_reader_create(sp_codec_t codec, sp_segment_reader_t **reader_p);
SP_API void sp_segment_reader_destroy(sp_segment_reader_t *reader);
/** Starts reading the segment data[0..len); the bytes must outlive the reading. */
SP_API void sp_segment_reader_reset(sp_segment_reader_t *reader, const void *data, size_t len);
/**
 * Next record into key/value pointers valid until the next call; *more_p is
 * false at the end. A record that overruns the segment, or a frame that does
 * not decode, is SP_ERR_CORRUPT.
 */
SP_API sp_status_t sp_segment_reader_next(sp_segment_reader_t *reader, const void **key_p,
                                          size_t *key_len_p, const void **value_p,
                                          size_t *value_len_p, bool *more_p);

/* ------------------------------------------------------------------------ */
/* Map output tracker and block lists                                         */
/* ------------------------------------------------------------------------ */

/** One block to read: the segment of reduce partition reduce_id of one map output. */
typedef struct sp_block_ref {
    uint64_t shuffle_id;
    uint64_t map_id;
    uint32_t reduce_id;
    uint32_t executor_id;
    const char *address;    /**< NULL: a local block */
    const char *index_path; /**< committed index of the map output (on its executor) */
    uint64_t size;          /**< stored bytes (an average when the status is approximate) */
    uint64_t records;
    sp_codec_t codec;
    sp_checksum_kind_t checksum_kind;
    const unsigned char *rkey;
    size_t rkey_len;
    bool exact;        /**< offset and checksum are known (the status is not approximate) */
    uint64_t offset;   /**< exact: where the block starts in the data file */
    uint64_t checksum; /**< exact: the block's checksum as its owner recorded it */
} sp_block_ref_t;

/** Blocks of a read, in (map, reduce) order; strings point into the list. */
typedef struct sp_block_list {
    size_t count;
    sp_block_ref_t *blocks;
    void *priv; /**< storage of the list; private */
} sp_block_list_t;

SP_API void sp_block_list_destroy(sp_block_list_t *list);

/**
 * Builds the block list of reduce partitions [reduce_start, reduce_end) over
 * the given statuses (one per map output), skipping empty blocks.
 */
SP_API sp_status_t sp_block_list_from_statuses(const sp_map_status_t *const *statuses, size_t count,
                                               uint32_t reduce_start, uint32_t reduce_end,
                                               sp_block_list_t **list_p);

typedef struct sp_map_output_tracker sp_map_output_tracker_t;

/**
 * The driver's map output tracker: statuses per shuffle, the blocks of a
 * reduce partition range and where they are, and the outputs lost with an
 * executor. Thread safe.
 */
SP_API sp_status_t sp_map_output_tracker_create(sp_map_output_tracker_t **tracker_p);
SP_API void sp_map_output_tracker_destroy(sp_map_output_tracker_t *tracker);
/** Declares a shuffle of maps map outputs and partitions partitions. */
SP_API sp_status_t sp_map_output_tracker_register_shuffle(sp_map_output_tracker_t *tracker,
                                                          uint64_t shuffle_id, uint32_t maps,
                                                          uint32_t partitions);
SP_API void sp_map_output_tracker_unregister_shuffle(sp_map_output_tracker_t *tracker,
                                                     uint64_t shuffle_id);
/** Records (a copy of) a committed output's status, replacing an earlier one. */
SP_API sp_status_t sp_map_output_tracker_register_output(sp_map_output_tracker_t *tracker,
                                                         const sp_map_status_t *status);
SP_API sp_status_t sp_map_output_tracker_unregister_output(sp_map_output_tracker_t *tracker,
                                                           uint64_t shuffle_id, uint64_t map_id);
/** Drops every output held by executor_id; returns how many were dropped. */
SP_API size_t sp_map_output_tracker_remove_executor(sp_map_output_tracker_t *tracker,
                                                    uint32_t executor_id);
/** Map ids of shuffle_id with no registered output, for recomputation. */
SP_API sp_status_t sp_map_output_tracker_missing(sp_map_output_tracker_t *tracker,
                                                 uint64_t shuffle_id, uint64_t **map_ids_p,
                                                 size_t *count_p);
/**
 * Blocks of reduce partitions [reduce_start, reduce_end) over maps
 * [map_start, map_end). SP_ERR_FETCH_FAILED naming the first missing map
 * output when one is not registered.
 */
SP_API sp_status_t sp_map_output_tracker_blocks(sp_map_output_tracker_t *tracker,
                                                uint64_t shuffle_id, uint32_t reduce_start,
                                                uint32_t reduce_end, uint32_t map_start,
                                                uint32_t map_end, sp_block_list_t **list_p);

/* ------------------------------------------------------------------------ */
/* Combining values of one key (aggregation, map-side combine)               */
/* ------------------------------------------------------------------------ */

/**
 * Combines values a and b of one key into out (cap bytes) and returns the
 * combined length; when that is more than cap nothing need be written and
 * the call is repeated with a buffer of at least that size. out never
 * overlaps a or b. It must be associative: values of a key are combined in
 * the order they were inserted (a is the older), in any grouping. Inserted
 * values are already in combined form (an average, say, inserts
 * (sum, count) pairs).
 */
struct sp_combiner {
    size_t (*combine)(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                      const void *b, size_t b_len, void *out, size_t cap);
    void *arg;
};
typedef struct sp_combiner sp_combiner_t;

typedef struct sp_aggregator sp_aggregator_t;

typedef struct sp_aggregator_stats {
    uint64_t inserted; /**< records inserted */
    uint64_t keys;     /**< distinct keys returned */
    uint64_t spills;   /**< spill files written */
    uint64_t spill_bytes;
    uint64_t peak_bytes; /**< highest execution memory held */
} sp_aggregator_stats_t;

/**
 * Hash aggregation of (key, value) records with combiner, in execution
 * memory of task (a memory consumer: when memory is refused, or another
 * consumer asks, the table is spilled sorted by key hash, and spills are
 * merge-aggregated at the end). Spill files go to shuffle.local_dirs.
 */
SP_API sp_status_t sp_aggregator_create(sp_task_memory_t *task, const sp_conf_t *conf,
                                        const sp_combiner_t *combiner, sp_aggregator_t **agg_p);
/**
 * Adds a record (bytes copied; empty keys allowed). SP_ERR_TOO_LARGE for a
 * record or combined value larger than the task's memory, which leaves the
 * aggregator usable; SP_ERR_INVALID_PARAM after the first next(); other
 * errors (a failed spill: SP_ERR_IO, SP_ERR_NO_SPACE, SP_ERR_NOMEM) leave it
 * fit only for destroy.
 */
SP_API sp_status_t sp_aggregator_insert(sp_aggregator_t *agg, const void *key, size_t key_len,
                                        const void *value, size_t value_len);
/**
 * Next aggregated (key, value); the first call ends the input. Each key
 * comes exactly once, in no particular order. Pointers stay valid until the
 * next call. *more_p is false at the end.
 */
SP_API sp_status_t sp_aggregator_next(sp_aggregator_t *agg, const void **key_p, size_t *key_len_p,
                                      const void **value_p, size_t *value_len_p, bool *more_p);
SP_API void sp_aggregator_stats(const sp_aggregator_t *agg, sp_aggregator_stats_t *stats_p);
/** Frees the aggregator and removes its spill files; NULL accepted. */
SP_API void sp_aggregator_destroy(sp_aggregator_t *agg);

/* ------------------------------------------------------------------------ */
/* Block fetchers and the shuffle reader                                      */
/* ------------------------------------------------------------------------ */

typedef struct sp_block_fetcher sp_block_fetcher_t;

/**
 * Completion of block index of a fetch: status, and on success the block's
 * stored bytes (valid until released) and the checksum its owner recorded.
 */
typedef void (*sp_fetch_done_fn_t)(void *arg, size_t index, sp_status_t status, const void *data,
                                   size_t len, uint64_t expected_checksum);

/** Operations of a block fetcher (the transport implements a remote one). */
typedef struct sp_block_fetcher_ops {
    size_t size; /**< sizeof(sp_block_fetcher_ops_t) */
    /** Starts fetching blocks[0..n) (one peer); done() once per block, maybe inside. */
    sp_status_t (*fetch)(sp_block_fetcher_t *fetcher, const sp_block_ref_t *blocks, size_t n,
                         sp_fetch_done_fn_t done, void *arg);
    /** Runs completions, waiting at most timeout_ms for one. */
    sp_status_t (*progress)(sp_block_fetcher_t *fetcher, int timeout_ms);
    /** Gives back the bytes of a completed block. */
    void (*release)(sp_block_fetcher_t *fetcher, const void *data, size_t len);
    void (*destroy)(sp_block_fetcher_t *fetcher);
    /**
     * Optional (NULL, or absent from a smaller ops size): fetches one block
     * into a new file at path instead of memory, then done(arg, 0, status,
     * NULL, len, expected). The reader uses it for blocks larger than
     * shuffle.max_block_in_memory and removes the file after use.
     */
    sp_status_t (*fetch_to_file)(sp_block_fetcher_t *fetcher, const sp_block_ref_t *block,
                                 const char *path, sp_fetch_done_fn_t done, void *arg);
} sp_block_fetcher_ops_t;

/** Base of every fetcher; embed it first and get back with container_of. */
struct sp_block_fetcher {
    const sp_block_fetcher_ops_t *ops;
};

/**
 * A fetcher of blocks committed on this host: opens (and validates) each map
 * output once, maps its data file read-only and hands out blocks in place,
 * with the checksums of its checksum file. Completes inside fetch().
 */
SP_API sp_status_t sp_block_fetcher_local_create(sp_block_fetcher_t **fetcher_p);
/** Destroys any fetcher through its ops; NULL accepted. */
SP_API void sp_block_fetcher_destroy(sp_block_fetcher_t *fetcher);

/** The order a reduce task reads its records in. */
typedef enum sp_read_order {
    SP_READ_UNORDERED = 0, /**< as blocks arrive, zero-copy */
    SP_READ_MERGE = 1,     /**< k-way merge of blocks already key-sorted by the map side */
    SP_READ_SORT = 2,      /**< external sort of unsorted blocks, spilling sorted runs */
    SP_READ_AGGREGATE = 3, /**< hash aggregation with the combiner, spilling when short */
} sp_read_order_t;

typedef struct sp_shuffle_reader_options {
    sp_read_order_t order;
    sp_key_compare_fn_t compare; /**< MERGE, SORT: NULL is byte order */
    void *compare_arg;
    const sp_combiner_t *combiner; /**< AGGREGATE */
    sp_block_fetcher_t *fetcher;   /**< NULL: a local fetcher owned by the reader */
} sp_shuffle_reader_options_t;

typedef struct sp_shuffle_read_stats {
    uint64_t blocks;         /**< blocks fetched and verified */
    uint64_t bytes;          /**< stored bytes of those blocks */
    uint64_t records;        /**< records returned */
    uint64_t requests;       /**< fetch requests issued */
    uint64_t peak_in_flight; /**< most bytes requested and not yet completed */
    uint64_t refetches;      /**< blocks fetched again after a checksum mismatch */
    uint64_t wait_ns;        /**< time waiting for fetches */
    uint64_t spills;         /**< spills of the external sort or the aggregation */
    uint64_t blocks_to_file; /**< blocks fetched to a temporary file (large blocks) */
} sp_shuffle_read_stats_t;

typedef struct sp_shuffle_reader sp_shuffle_reader_t;

/**
 * Opens the reader of a reduce task over blocks (which must outlive the
 * reader). Requests group consecutive blocks of one peer up to a fifth of
 * shuffle.max_bytes_in_flight; at most that many bytes are outstanding at
 * once (one request always may be). Every block's checksum is verified before
 * its records are used; a mismatch is fetched once more, and a second
 * mismatch is SP_ERR_FETCH_FAILED naming shuffle, map, reduce partition and
 * location, and whether the stored copy itself is damaged.
 */
SP_API sp_status_t sp_shuffle_reader_open(sp_task_memory_t *task, const sp_conf_t *conf,
                                          const sp_block_list_t *blocks,
                                          const sp_shuffle_reader_options_t *opts,
                                          sp_shuffle_reader_t **reader_p);

/**
 * How an incremental read waits for more map outputs: waits up to timeout_ms
 * (0: not at all) for map statuses that have come since the last call and
 * adds them with sp_shuffle_reader_add(). An error fails the read with it
 * (SP_ERR_CANCELED, say, when the caller gives up on the task).
 */
typedef sp_status_t (*sp_shuffle_reader_wait_fn_t)(void *arg, sp_shuffle_reader_t *reader,
                                                   int timeout_ms);

/**
 * Opens a reader of reduce partitions [reduce_start, reduce_end) of a
 * shuffle with `maps` map outputs before they all exist (reduce slow start):
 * statuses are added with sp_shuffle_reader_add() as maps commit, and their
 * blocks fetched while the others are still computed. Whenever the reader has
 * nothing to take, it calls wait(wait_arg, reader, timeout) (timeout 0 while
 * fetches are in flight). The read ends once every map's status is in and
 * every block is read; merged reads still merge in (map, reduce) order, while
 * a sorted read's equal keys come in the order their blocks arrived.
 */
SP_API sp_status_t sp_shuffle_reader_open_incremental(
    sp_task_memory_t *task, const sp_conf_t *conf, uint32_t maps, uint32_t reduce_start,
    uint32_t reduce_end, const sp_shuffle_reader_options_t *opts, sp_shuffle_reader_wait_fn_t wait,
    void *wait_arg, sp_shuffle_reader_t **reader_p);

/**
 * Adds map statuses to an incremental read (NULL entries are skipped). A map
 * whose status is already in is ignored (its output recomputed or moved
 * since: the blocks already taken stand). A map id at or past the read's
 * maps is SP_ERR_INVALID_PARAM. Not thread-safe: call it from the thread
 * that reads (from the wait function, or before reading).
 */
SP_API sp_status_t sp_shuffle_reader_add(sp_shuffle_reader_t *reader,
                                         const sp_map_status_t *const *statuses, size_t count);

/** Next record in the reader's order; pointers valid until the next call. */
SP_API sp_status_t sp_shuffle_reader_next(sp_shuffle_reader_t *reader, const void **key_p,
                                          size_t *key_len_p, const void **value_p,
                                          size_t *value_len_p, bool *more_p);

/**
 * After sp_shuffle_reader_next() returned SP_ERR_FETCH_FAILED: true and the
 * map id of the block that could not be fetched or verified, when known.
 */
SP_API bool sp_shuffle_reader_failed_map(const sp_shuffle_reader_t *reader, uint64_t *map_id_p);

SP_API void sp_shuffle_reader_stats(const sp_shuffle_reader_t *reader,
                                    sp_shuffle_read_stats_t *stats_p);

/** Frees the reader (and its spills and own fetcher); NULL accepted. */
SP_API void sp_shuffle_reader_close(sp_shuffle_reader_t *reader);

/* ------------------------------------------------------------------------ */
/* Shuffle over a transport                                                   */
/* ------------------------------------------------------------------------ */

struct sp_transport;
typedef struct sp_served_output sp_served_output_t;

/**
 * Serves a committed map output to other executors: maps its data file
 * read-only, registers it with transport for remote reads, and fills
 * status->rkey and status->address (the transport address, hex-encoded) so
 * that readers elsewhere can fetch its blocks one-sided. Release with
 * sp_map_output_unserve() (after readers are done).
 */
SP_API sp_status_t sp_map_output_serve(struct sp_transport *transport, sp_map_status_t *status,
                                       sp_served_output_t **served_p);
SP_API void sp_map_output_unserve(sp_served_output_t *served);

/**
 * A block fetcher over a transport: blocks with an address are read
 * one-sided from their owner into registered buffers; blocks without one
 * are read in place by a local fetcher. Remote blocks need exact statuses
 * (full wire form: offsets and checksums known); an approximate one fails
 * its blocks with SP_ERR_UNSUPPORTED. The transport is progressed from the
 * fetcher's progress(); it must outlive the fetcher.
 */
SP_API sp_status_t sp_block_fetcher_transport_create(struct sp_transport *transport,
                                                     sp_block_fetcher_t **fetcher_p);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_SHUFFLE_H */
