/*
 * Private interface of the shuffle layer's map side: local directories and
 * the temporary-file registry, the buffered file writer that all spill and
 * output bytes go through, and the on-disk constants (docs/FORMATS.md).
 */
#ifndef SPATE_SHUFFLE_INT_H
#define SPATE_SHUFFLE_INT_H

#include "bytes.h"
#include "codec.h"
#include "common_int.h"
#include <spate/shuffle.h>

/* Data and spill files start with this 8-byte header; segments follow. */
#define SP_DATA_MAGIC    UINT32_C(0x54445053) /* "SPDT" */
#define SP_DATA_VERSION  1
#define SP_DATA_HEADER   8
#define SP_INDEX_MAGIC   UINT32_C(0x58495053) /* "SPIX" */
#define SP_INDEX_VERSION 1
#define SP_INDEX_HEADER  16
#define SP_CSUM_MAGIC    UINT32_C(0x53435053) /* "SPCS" */
#define SP_CSUM_VERSION  1
#define SP_CSUM_HEADER   16
/* A record in a segment: u32 key length, u32 value length, key, value. */
#define SP_RECORD_HEADER 8

/*
 * The checks of a record handed to a writer or a sorter (o names the shuffle
 * and map in the message): bytes given for its lengths, lengths that fit the
 * record header, and a record no larger than the executor's unified memory
 * (it could never be held). Inline: it runs once per record.
 */
static inline sp_status_t sp__record_check(const sp_shuffle_writer_options_t *o, uint64_t unified,
                                           const void *key, size_t key_len, const void *value,
                                           size_t value_len)
{
    uint64_t need = SP_RECORD_HEADER + (uint64_t)key_len + value_len;

    if ((key == NULL && key_len != 0) || (value == NULL && value_len != 0))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: NULL key or value bytes",
                        (unsigned long long)o->shuffle_id, (unsigned long long)o->map_id);
    if (key_len > UINT32_MAX || value_len > UINT32_MAX || need > unified)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "shuffle %llu map %llu: a record of %llu bytes (key %zu, value %zu) is "
                        "larger than the executor's execution memory (%llu bytes)",
                        (unsigned long long)o->shuffle_id, (unsigned long long)o->map_id,
                        (unsigned long long)need, key_len, value_len, (unsigned long long)unified);
    return SP_OK;
}

/* ---- local directories ---- */

typedef struct sp_shuffle_dirs {
    char **dirs;
    unsigned count;
    unsigned next; /* round-robin cursor for spills */
} sp_shuffle_dirs_t;

/* Parses shuffle.local_dirs and creates each directory 0700 if missing. */
sp_status_t sp__shuffle_dirs_create(const sp_conf_t *conf, sp_shuffle_dirs_t **dirs_p);
void sp__shuffle_dirs_destroy(sp_shuffle_dirs_t *dirs);
/* Directory of the next spill file. */
const char *sp__shuffle_dirs_next(sp_shuffle_dirs_t *dirs);
/* Directory of the committed output of (shuffle, map): the same for every attempt. */
const char *sp__shuffle_dirs_output(const sp_shuffle_dirs_t *dirs, uint64_t shuffle_id,
                                    uint64_t map_id);

/*
 * Temporary files are registered while they exist so that they are removed
 * when the process exits (atexit), as well as on commit and abort.
 */
void sp__tempfile_register(const char *path);
void sp__tempfile_forget(const char *path);

/* ---- buffered file writer ---- */

typedef struct sp_file_writer {
    int fd;
    char *path;
    unsigned char *buf;
    size_t cap, len;
    uint64_t offset;  /* bytes handed to the writer so far */
    sp_checksum_t cs; /* running checksum of the current segment */
    bool checksumming;
} sp_file_writer_t;

/* Creates path exclusively (0600), registered as a temporary file. */
sp_status_t sp__file_writer_open(sp_file_writer_t *fw, const char *path, size_t buffer);
/* The same over fd, already open for writing at path (fd < 0: create path); the writer owns fd. */
sp_status_t sp__file_writer_open_fd(sp_file_writer_t *fw, const char *path, int fd, size_t buffer);
sp_status_t sp__file_writer_write(sp_file_writer_t *fw, const void *data, size_t len);
sp_status_t sp__file_writer_flush(sp_file_writer_t *fw);
/* Flushes, fsyncs when sync, and closes; the file stays (still registered). */
sp_status_t sp__file_writer_finish(sp_file_writer_t *fw, bool sync);
/* Closes if open, removes the file and forgets it. */
void sp__file_writer_discard(sp_file_writer_t *fw);
/* Frees the writer's memory after finish (the file stays). */
void sp__file_writer_release(sp_file_writer_t *fw);
/* Sink for the encoder: checksums (when enabled) and writes. */
sp_status_t sp__file_writer_sink(void *arg, const void *buf, size_t len);

/*
 * Copies len bytes at offset of in_fd (named in_path in messages) to the end
 * of out, in the kernel unless cs is given: then through user space, with
 * the bytes added to cs (shuffle/file_copy.c).
 */
sp_status_t sp__file_copy_range(sp_file_writer_t *out, int in_fd, const char *in_path,
                                uint64_t offset, uint64_t len, sp_checksum_t *cs);

/* Writes the data/spill file header. */
sp_status_t sp__data_header_write(sp_file_writer_t *fw, sp_codec_t codec, sp_checksum_kind_t kind);

/* ---- the format of runs and data files (shuffle/spill_run.c) ---- */

typedef struct sp_spill_format {
    sp_codec_t codec;
    int level; /* the codec's level */
    sp_checksum_kind_t checksum;
} sp_spill_format_t;

/*
 * Reads shuffle.compress, shuffle.codec, shuffle.codec_level and
 * shuffle.checksum of conf; returns the status of the read or parse that
 * failed (its message names the value). *format is set only on success.
 */
sp_status_t sp__spill_format_init(sp_spill_format_t *format, const sp_conf_t *conf);

/* A segment of a run: compressed, checksummed records of one partition. */
typedef struct sp_spill_seg {
    uint32_t partition;
    uint64_t offset, length, records, checksum;
} sp_spill_seg_t;

/*
 * A run file on disk and its segment table, kept in memory (only non-empty
 * segments, in file order). An unpartitioned run (the aggregator's) has
 * every segment in partition 0; its segments are bounded chunks.
 */
typedef struct sp_spill_run {
    char *path;
    sp_spill_seg_t *segs;
    size_t nsegs;
    uint64_t size;    /* bytes of the file */
    uint64_t records; /* in all segments */
} sp_spill_run_t;

/* A run being written: records go through enc into the open segment. */
typedef struct sp_spill_run_writer {
    sp_file_writer_t fw;
    sp_encoder_t *enc; /* borrowed */
    sp_checksum_kind_t checksum;
    sp_spill_run_t run; /* path NULL until finished */
    size_t segs_cap;
    bool in_segment;
    uint64_t raw; /* raw record bytes in the open segment */
} sp_spill_run_writer_t;

/*
 * Creates path (a temporary file) and writes the data header. On failure
 * the file exists when rw->fw.path is not NULL; sp__spill_run_abort()
 * removes it.
 */
sp_status_t sp__spill_run_open(sp_spill_run_writer_t *rw, const char *path, size_t buffer,
                               sp_codec_t codec, sp_checksum_kind_t checksum, sp_encoder_t *enc);
/* The same over fd, already open for writing at path (fd < 0: create path); owns fd. */
sp_status_t sp__spill_run_open_fd(sp_spill_run_writer_t *rw, const char *path, int fd,
                                  size_t buffer, sp_codec_t codec, sp_checksum_kind_t checksum,
                                  sp_encoder_t *enc);
/* Opens a segment of partition. */
sp_status_t sp__spill_run_begin(sp_spill_run_writer_t *rw, uint32_t partition);
/* Adds count records already serialized ([u32 klen][u32 vlen][key][value]...). */
sp_status_t sp__spill_run_write(sp_spill_run_writer_t *rw, const void *records, size_t len,
                                uint64_t count);
/* Adds one record. */
sp_status_t sp__spill_run_add(sp_spill_run_writer_t *rw, const void *key, size_t klen,
                              const void *value, size_t vlen);
/* Closes the open segment; *seg_p (when not NULL) is its table entry. */
sp_status_t sp__spill_run_end(sp_spill_run_writer_t *rw, const sp_spill_seg_t **seg_p);
/* Closes the open segment and the file (fsync when sync); the run is the caller's. */
sp_status_t sp__spill_run_finish(sp_spill_run_writer_t *rw, bool sync, sp_spill_run_t *run_p);
/* Removes the file being written and frees the writer's table. */
void sp__spill_run_abort(sp_spill_run_writer_t *rw);
/* Frees a run, removing its file when unlink_file. */
void sp__spill_run_drop(sp_spill_run_t *run, bool unlink_file);

/* Maps the whole run read-only (for merges that decode segments in place). */
sp_status_t sp__spill_run_map(const sp_spill_run_t *run, const void **map_p);
void sp__spill_run_unmap(const sp_spill_run_t *run, const void *map);
/* Opens the run for reading segment by segment, checking its header. */
sp_status_t sp__spill_run_open_read(const sp_spill_run_t *run, sp_codec_t codec,
                                    sp_checksum_kind_t checksum, int *fd_p);
/* Reads segment i into *buf (grown as needed), verifying its checksum. */
sp_status_t sp__spill_run_read_segment(const sp_spill_run_t *run, int fd, size_t i,
                                       sp_checksum_kind_t checksum, unsigned char **buf,
                                       size_t *cap);

/* ---- committed outputs ---- */

/*
 * Map outputs held in memory (shuffle/mem_output.c). create makes path a
 * symbolic link to a new in-memory file (/proc/<pid>/fd/<fd>) and returns a
 * descriptor open for writing in *fd_p and one that keeps the file alive in
 * *keep_p; SP_ERR_UNSUPPORTED when this process cannot (no memfd, no /proc,
 * out of descriptors): the caller writes a file instead.
 */
sp_status_t sp__mem_file_create(const char *path, int *fd_p, int *keep_p);
/*
 * Replaces the link at path by a regular file of the same bytes (written to
 * a temporary beside it, then renamed over the link) and closes keep. On
 * failure the link is removed too: its bytes went with keep.
 */
sp_status_t sp__mem_file_materialize(const char *path, int keep, bool sync);
/* True when path resolves to the file keep holds. */
bool sp__mem_file_is(const char *path, int keep);
/*
 * An output's storage grant, taken before its commit (keep: the in-memory
 * file; id: its block id, unique per attempt): a held block of the manager's
 * block store when there is one, else the free storage region.
 * SP_ERR_MEMORY_REFUSED when refused (keep is then still the caller's).
 * commit puts it in the table under data_path when the committed output is
 * this file, else gives everything back; abort gives everything back.
 */
typedef struct sp__mem_output sp__mem_output_t;
sp_status_t sp__mem_output_grant(int keep, uint64_t bytes, sp_memory_manager_t *mm, const char *id,
                                 bool sync, sp__mem_output_t **o_p);
void sp__mem_output_commit(sp__mem_output_t *o, const char *data_path);
void sp__mem_output_abort(sp__mem_output_t *o);
/* Drops the output held under data_path: its memory and grant (a no-op when none). */
void sp__mem_output_drop(const char *data_path);

/* Paths of the committed files of (shuffle, map) in dir. */
void sp__output_paths(const char *dir, uint64_t shuffle_id, uint64_t map_id, char *data,
                      char *index, char *checksum, size_t len);

/*
 * Commits a finished temporary data file with the given per-partition
 * lengths, records and checksums: writes the checksum and index
 * temporaries, then under an exclusive lock on the output renames data,
 * checksum and index (the index last: it is the commit point). If a valid
 * output is already committed, the temporaries are removed and its status
 * returned instead. The commit owns data_tmp: it is renamed or removed, also
 * when the commit fails.
 */
sp_status_t sp__output_commit(const char *dir, const char *data_tmp,
                              const sp_shuffle_writer_options_t *opts, const uint64_t *lengths,
                              const uint64_t *records, const uint64_t *checksums, bool sync,
                              sp_map_status_t **status_p);

/* ---- k-way merge, a loser tree (shuffle/kmerge.c) ---- */

typedef struct sp_kmerge sp_kmerge_t;

/*
 * A source of records for the merge: moves to its next record and sets its
 * rank (compared before the key; 0 when unused), key and value, valid until
 * its next call; *more_p false at the end.
 */
typedef sp_status_t (*sp_kmerge_next_fn_t)(void *arg, uint64_t *rank_p, const void **key_p,
                                           size_t *klen_p, const void **value_p, size_t *vlen_p,
                                           bool *more_p);

/* Byte order: memcmp, then the shorter key first. */
int sp__bytes_compare(const void *a, size_t alen, const void *b, size_t blen);
/* A merge of segments of codec by compare (NULL: byte order). */
sp_status_t sp__kmerge_create(sp_codec_t codec, sp_key_compare_fn_t compare, void *compare_arg,
                              sp_kmerge_t **m_p);
void sp__kmerge_destroy(sp_kmerge_t *m);
/* Forgets every input (readers are kept for reuse). */
void sp__kmerge_reset(sp_kmerge_t *m);
/* Adds a sorted segment; the bytes must outlive the merge. Equal keys come
 * out in the order their inputs were added. */
sp_status_t sp__kmerge_add(sp_kmerge_t *m, const void *segment, size_t len);
/* Adds a source sorted by (rank, key); arg must outlive the merge. Equal
 * (rank, key) come out in the order their inputs were added. */
sp_status_t sp__kmerge_add_source(sp_kmerge_t *m, sp_kmerge_next_fn_t next, void *arg);
/* The input found not sorted by the comparator (after SP_ERR_BAD_FORMAT), or SIZE_MAX. */
size_t sp__kmerge_bad_input(const sp_kmerge_t *m);
/* Next record in key order; pointers valid until the next call. An input
 * whose keys go down is SP_ERR_BAD_FORMAT (sp__kmerge_bad_input names it). */
sp_status_t sp__kmerge_next(sp_kmerge_t *m, const void **key_p, size_t *klen_p,
                            const void **value_p, size_t *vlen_p, bool *more_p);

/*
 * sp_aggregator_insert() for callers that fail on any error (the reader, the
 * writer's combine): once the table outgrows the caches
 * (sp__aggregator_stage_table_bytes), the record is copied into a small
 * staging batch whose lookups are resolved together, their cache misses overlapping, when the
 * batch is full, by sp_aggregator_insert() and by the first
 * sp_aggregator_next(). An error of a staged record (a failed spill, or
 * SP_ERR_TOO_LARGE for a combined value, which drops that record) is returned
 * by the call that resolves the batch; stats count a record once resolved.
 */
sp_status_t sp__aggregator_add(sp_aggregator_t *agg, const void *key, size_t key_len,
                               const void *value, size_t value_len);

/* Test hook: hashes of new aggregators are ANDed with this (collision tests). */
extern uint64_t sp__aggregator_hash_mask;
/* Tunable and test hook: new aggregators stage added records only once their
 * table is bigger than this (512 KiB; 0: always). */
extern uint64_t sp__aggregator_stage_table_bytes;

/* CRC-32C of A||B from crc(A), crc(B) and len(B) (zlib's crc32_combine, Castagnoli). */
uint32_t sp__crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

#endif
