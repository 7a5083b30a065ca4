/*
 * Private: the bypass path of the map output writer (shuffle/bypass_writer.c).
 *
 * The struct is here, with the per-record insert inline, so that the
 * writer's write call keeps the record copy in its own body as it did when
 * the bypass path lived in writer.c; the flush of a full buffer is out of
 * line.
 */
#ifndef SPATE_SHUFFLE_BYPASS_WRITER_H
#define SPATE_SHUFFLE_BYPASS_WRITER_H

#include "shuffle_int.h"

#include <string.h>

/* One partition: its raw buffer and its temporary file of frames. */
typedef struct sp_bypass_part {
    sp_file_writer_t fw;
    unsigned char *raw;
    size_t len;
    uint64_t records;
    bool open;
} sp_bypass_part_t;

typedef struct sp_bypass_writer {
    sp_memory_consumer_t consumer;        /* holds partitions x file_buffer of execution memory */
    const sp_shuffle_writer_options_t *o; /* the writer's, borrowed */
    sp_shuffle_dirs_t *dirs;              /* the writer's, borrowed */
    sp_encoder_t *enc;
    sp_bypass_part_t *parts;
    uint64_t bytes; /* execution memory held for the raw buffers */
    size_t file_buffer, spill_buffer;
} sp_bypass_writer_t;

/*
 * Creates the bypass writer of o's partitions: a memory consumer of task
 * that acquires partitions x file_buffer bytes up front (refused:
 * SP_ERR_MEMORY_REFUSED). o and dirs are borrowed and must outlive it.
 */
sp_status_t sp__bypass_writer_create(sp_task_memory_t *task, const sp_shuffle_writer_options_t *o,
                                     sp_shuffle_dirs_t *dirs, size_t file_buffer,
                                     size_t spill_buffer, sp_bypass_writer_t **bw_p);
/* Removes the temporary files, frees everything; NULL accepted. */
void sp__bypass_writer_destroy(sp_bypass_writer_t *bw);
/* Writes partition p's buffered records as one frame to its temporary file. */
sp_status_t sp__bypass_writer_flush(sp_bypass_writer_t *bw, uint32_t p);
/*
 * Appends every partition's frames to out (after its data header) and fills
 * the per-partition lengths, records and checksums.
 */
sp_status_t sp__bypass_writer_write_data(sp_bypass_writer_t *bw, sp_file_writer_t *out,
                                         uint64_t *lengths, uint64_t *records, uint64_t *checksums);
/* Removes the temporary files and frees the raw buffers. */
void sp__bypass_writer_discard(sp_bypass_writer_t *bw);
/* Returns the raw buffers' execution memory (before the output commit). */
void sp__bypass_writer_release_memory(sp_bypass_writer_t *bw);

/* Buffers one record of partition p (validated by the caller). */
static inline sp_status_t sp__bypass_writer_insert(sp_bypass_writer_t *bw, uint32_t p,
                                                   const void *key, size_t klen, const void *value,
                                                   size_t vlen)
{
    sp_bypass_part_t *part = &bw->parts[p];
    unsigned char h[SP_RECORD_HEADER];
    const void *pieces[3] = {h, key, value};
    size_t lens[3] = {SP_RECORD_HEADER, klen, vlen};
    sp_status_t st;

    if (part->raw == NULL) {
        part->raw = sp__malloc(bw->file_buffer);
        if (part->raw == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the buffer of bypass partition %u", p);
    }
    sp__le_put_u32(h, (uint32_t)klen);
    sp__le_put_u32(h + 4, (uint32_t)vlen);
    for (int i = 0; i < 3; i++) {
        const unsigned char *src = pieces[i];
        size_t left = lens[i];
        while (left > 0) {
            size_t n = SP_MIN(left, bw->file_buffer - part->len);
            memcpy(part->raw + part->len, src, n);
            part->len += n;
            src += n;
            left -= n;
            if (part->len == bw->file_buffer && (st = sp__bypass_writer_flush(bw, p)) != SP_OK)
                return st;
        }
    }
    part->records++;
    return SP_OK;
}

#endif
