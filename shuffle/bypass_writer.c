/*
 * The bypass path of the map output writer, for few partitions and no
 * ordering or combining: no sort at all.
 *
 * Each partition has a raw buffer of shuffle.file_buffer bytes, taken from
 * the task's execution memory up front (all partitions at once, so the
 * path either runs in its memory or is refused at open). Records are
 * appended to their partition's buffer; a full buffer becomes one
 * compressed frame appended to that partition's temporary file in
 * shuffle.local_dirs, whose running checksum covers every frame. At commit
 * the last buffers are flushed and the files are concatenated, partition by
 * partition, into the data file (in the kernel where it can); frames of one
 * partition concatenate into a valid segment (docs/FORMATS.md).
 *
 * The memory is held, not spillable: the consumer answers spill requests
 * with nothing. Tuned for a handful of partitions written at memory speed.
 */
#include "bypass_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

/* The raw buffers cannot shrink: a spill request frees nothing. */
static uint64_t sp_bypass_spill_cb(sp_memory_consumer_t *consumer, uint64_t bytes,
                                   sp_memory_consumer_t *trigger)
{
    SP_UNUSED(consumer);
    SP_UNUSED(bytes);
    SP_UNUSED(trigger);
    return 0;
}

static const sp_memory_consumer_ops_t sp_bypass_consumer_ops = {
    .size = sizeof(sp_memory_consumer_ops_t),
    .spill = sp_bypass_spill_cb,
};

sp_status_t sp__bypass_writer_create(sp_task_memory_t *task, const sp_shuffle_writer_options_t *o,
                                     sp_shuffle_dirs_t *dirs, size_t file_buffer,
                                     size_t spill_buffer, sp_bypass_writer_t **bw_p)
{
    sp_bypass_writer_t *bw = sp__calloc(1, sizeof(*bw));
    sp_status_t st;

    if (bw == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle bypass writer");
    bw->o = o;
    bw->dirs = dirs;
    bw->file_buffer = file_buffer;
    bw->spill_buffer = spill_buffer;
    st = sp__encoder_create(o->codec, o->codec_level, &bw->enc);
    if (st != SP_OK)
        goto err_free;
    sp_memory_consumer_init(&bw->consumer, task, &sp_bypass_consumer_ops, "shuffle bypass writer");
    bw->parts = sp__calloc(o->partitions, sizeof(*bw->parts));
    if (bw->parts == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u bypass partitions", o->partitions);
        goto err_consumer;
    }
    bw->bytes = (uint64_t)o->partitions * file_buffer;
    if (sp_memory_consumer_acquire(&bw->consumer, bw->bytes) < bw->bytes) {
        st = SP_RAISE(SP_ERR_MEMORY_REFUSED,
                      "shuffle %llu map %llu: no execution memory for %u bypass buffers",
                      (unsigned long long)o->shuffle_id, (unsigned long long)o->map_id,
                      o->partitions);
        goto err_parts;
    }
    *bw_p = bw;
    return SP_OK;

err_parts:
    sp__free(bw->parts);
err_consumer:
    sp_memory_consumer_fini(&bw->consumer);
    sp__encoder_destroy(bw->enc);
err_free:
    sp__free(bw);
    return st;
}

sp_status_t sp__bypass_writer_flush(sp_bypass_writer_t *bw, uint32_t p)
{
    sp_bypass_part_t *part = &bw->parts[p];
    uint64_t ignored;
    sp_status_t st;

    if (part->len == 0)
        return SP_OK;
    if (!part->open) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/bypass_%llu_%llu_%u_%ld_%u.tmp",
                 sp__shuffle_dirs_next(bw->dirs), (unsigned long long)bw->o->shuffle_id,
                 (unsigned long long)bw->o->map_id, bw->o->attempt, (long)getpid(), p);
        st = sp__file_writer_open(&part->fw, path, bw->spill_buffer);
        if (st != SP_OK)
            return st;
        part->open = true;
        sp__checksum_init(&part->fw.cs, bw->o->checksum);
    }
    /* Each flushed buffer is one frame; frames of a partition concatenate. */
    part->fw.checksumming = true;
    sp__encoder_begin(bw->enc, sp__file_writer_sink, &part->fw);
    st = sp__encoder_write(bw->enc, part->raw, part->len);
    if (st == SP_OK)
        st = sp__encoder_end(bw->enc, &ignored);
    part->fw.checksumming = false;
    part->len = 0;
    return st;
}

sp_status_t sp__bypass_writer_write_data(sp_bypass_writer_t *bw, sp_file_writer_t *out,
                                         uint64_t *lengths, uint64_t *records, uint64_t *checksums)
{
    uint64_t empty = sp__checksum_buf(bw->o->checksum, "", 0);
    sp_status_t st = SP_OK;

    for (uint32_t p = 0; p < bw->o->partitions && st == SP_OK; p++) {
        sp_bypass_part_t *part = &bw->parts[p];
        int fd;

        records[p] = part->records;
        checksums[p] = empty;
        if ((st = sp__bypass_writer_flush(bw, p)) != SP_OK || !part->open)
            continue;
        if ((st = sp__file_writer_finish(&part->fw, false)) != SP_OK)
            break;
        fd = open(part->fw.path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            st = SP_RAISE(SP_ERR_IO, "open %s: %s (errno %d)", part->fw.path, strerror(errno),
                          errno);
            break;
        }
        lengths[p] = part->fw.offset;
        checksums[p] = sp__checksum_final(&part->fw.cs);
        st = sp__file_copy_range(out, fd, part->fw.path, 0, part->fw.offset, NULL);
        close(fd);
    }
    return st;
}

void sp__bypass_writer_discard(sp_bypass_writer_t *bw)
{
    for (uint32_t p = 0; p < bw->o->partitions; p++) {
        if (bw->parts[p].open) {
            sp__file_writer_discard(&bw->parts[p].fw);
            bw->parts[p].open = false;
        }
        sp__free(bw->parts[p].raw);
        bw->parts[p].raw = NULL;
    }
}

void sp__bypass_writer_release_memory(sp_bypass_writer_t *bw)
{
    if (bw->bytes != 0) {
        sp_memory_consumer_release(&bw->consumer, bw->bytes);
        bw->bytes = 0;
    }
}

void sp__bypass_writer_destroy(sp_bypass_writer_t *bw)
{
    if (bw == NULL)
        return;
    sp__bypass_writer_discard(bw);
    sp__bypass_writer_release_memory(bw);
    sp_memory_consumer_fini(&bw->consumer);
    sp__encoder_destroy(bw->enc);
    sp__free(bw->parts);
    sp__free(bw);
}
