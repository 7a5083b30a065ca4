/*
 * Private: the sorter of the shuffle (shuffle/sorter.c), used by the map
 * output writer's sort path and by the reduce side's external sort.
 *
 * The struct is visible so that the writer reads the few fields its commit
 * decides on (records in memory, the runs) and the sticky error without a
 * call per record.
 */
#ifndef SPATE_SHUFFLE_SORTER_H
#define SPATE_SHUFFLE_SORTER_H

#include "shuffle_int.h"

typedef struct sp_sorter {
    sp_memory_consumer_t consumer;
    sp_shuffle_writer_options_t o; /* partitions, ordering, comparator, codec, ids */
    sp_shuffle_dirs_t *dirs;
    sp_encoder_t *enc;
    uint64_t page_size, unified, spill_records;
    size_t spill_buffer;
    bool done;         /* no more records (iterated, or memory released) */
    sp_status_t error; /* sticky: set by a failed spill inside a callback */

    /* records in memory */
    sp_page_t *page_by_number[SP_PAGE_TABLE_SIZE];
    sp_page_t *cur;
    uint64_t cur_used;
    sp_page_t *array; /* holds 2 x cap elements */
    size_t n, cap, elem;
    uint64_t record_bytes; /* of the n records, headers included */
    bool prefix;           /* elements are sp_sort_entry_t */

    /* runs on disk, oldest first */
    sp_spill_run_t *spills;
    unsigned nspills, spills_cap, seq;

    /* key-ordered merges: runs mapped read-only, and the merge */
    const void **maps;
    sp_kmerge_t *kmerge;
    uint64_t merge_bytes; /* execution memory held for merge windows */
    /* iteration over the sorted output */
    bool iterating;
    const uint64_t *iter_ptrs;
    size_t iter_at;

    unsigned char *stage;           /* records on their way to the encoder */
    sp_shuffle_write_stats_t stats; /* spills, spill_bytes, sort_ns, spill_ns, merge_passes */
} sp_sorter_t;

/*
 * Creates a sorter of o's partitions (copied): a memory consumer of task
 * named "shuffle sorter", with its pointer array allocated. Spills go to
 * shuffle.local_dirs of conf. Records come out by partition, and by key
 * within a partition when o->key_ordering (o->compare, NULL: byte order).
 */
sp_status_t sp__sorter_create(sp_task_memory_t *task, const sp_conf_t *conf,
                              const sp_shuffle_writer_options_t *o, sp_sorter_t **sorter_p);
/* Removes its run files and frees everything; NULL accepted. */
void sp__sorter_destroy(sp_sorter_t *sorter);
/*
 * Adds a record of partition (checked by the caller, like the lengths); may
 * spill. Errors are the caller's to keep.
 */
sp_status_t sp__sorter_insert(sp_sorter_t *sorter, uint32_t partition, const void *key, size_t klen,
                              const void *value, size_t vlen);
/* Writes the records in memory as a new run in dir and frees their pages. */
sp_status_t sp__sorter_spill_to(sp_sorter_t *sorter, const char *dir);
/*
 * Without runs: sorts the records in memory and writes them to out, one
 * segment per non-empty partition (in out's segment table).
 */
sp_status_t sp__sorter_write(sp_sorter_t *sorter, sp_spill_run_writer_t *out);
/*
 * Merges every run into out, partition by partition (segment copies, or a
 * k-way merge of records when key-ordered), and fills the per-partition
 * lengths, records and checksums.
 */
sp_status_t sp__sorter_merge(sp_sorter_t *sorter, sp_spill_run_writer_t *out, uint64_t *lengths,
                             uint64_t *records, uint64_t *checksums);
/* Frees the pages, the array and merge memory; the sorter takes no more records. */
void sp__sorter_release_memory(sp_sorter_t *sorter);
/* Removes every run file but keep (NULL: all). */
void sp__sorter_drop_files(sp_sorter_t *sorter, const char *keep);

/*
 * External sort (one partition, key-ordered). add() validates the record
 * like the writer does (sizes, a failed spill earlier) and keeps its
 * error; the first next() ends the input. Records come out in key order,
 * stable; pointers valid until the next call.
 */
sp_status_t sp__sorter_add(sp_sorter_t *sorter, const void *key, size_t key_len, const void *value,
                           size_t value_len);
sp_status_t sp__sorter_next(sp_sorter_t *sorter, const void **key_p, size_t *key_len_p,
                            const void **value_p, size_t *value_len_p, bool *more_p);

/*
 * Defined in shuffle/spill_run.c beside sp__spill_run_write(), for the
 * sorter's gather alone: the encoder's input window of the open segment
 * (sp__encoder_window: NULL when the codec takes no input in place), and
 * the accounting of len bytes holding count records written into it.
 */
unsigned char *sp__spill_run_window(sp_spill_run_writer_t *rw, size_t *room_p);
sp_status_t sp__spill_run_wrote(sp_spill_run_writer_t *rw, size_t len, uint64_t count);

#endif
