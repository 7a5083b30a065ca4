/*
 * Spill runs: the files the shuffle spills and writes, and their format.
 *
 * Every run and data file of the shuffle has the layout of docs/FORMATS.md:
 * an 8-byte header naming the codec and the checksum, then independent
 * segments of records [u32 klen][u32 vlen][key][value], each compressed
 * with the codec and checksummed. The writer's sort path, its bypass path
 * and the aggregator all take the codec, its level and the checksum from
 * the same options (shuffle.compress, shuffle.codec, shuffle.codec_level,
 * shuffle.checksum), read here once for all of them, so that none of them
 * depends on another for its format.
 *
 * Writer. A run is opened on a new temporary file; segments are opened per
 * partition (the sorter: one per non-empty partition) or per chunk (the
 * aggregator: partition 0, closed at a size), records go through the
 * caller's encoder into the segment, and each closed segment enters the
 * run's table (partition, offset, length, records, checksum), which stays
 * in memory: the file has no footer. The sorter's gather copies serialized
 * records straight into the encoder's input (sp__spill_run_window), or
 * hands over staged blocks of them when the codec takes no input in place,
 * so the per-record loop stays in the sorter.
 *
 * Reader. A run is mapped whole for merges that decode segments in place
 * (the sorter's k-way merges), or read one segment at a time into a buffer
 * with its checksum verified (the aggregator's merge, whose runs may be far
 * larger than memory).
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

sp_status_t sp__spill_format_init(sp_spill_format_t *format, const sp_conf_t *conf)
{
    const char *codec = NULL, *checksum = NULL;
    sp_spill_format_t f = {0};
    bool compress = true;
    int64_t level = 0;
    sp_status_t st;

    if ((st = sp_conf_get_bool(conf, "shuffle.compress", &compress)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.codec", &codec)) != SP_OK ||
        (st = sp_conf_get_int(conf, "shuffle.codec_level", &level)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.checksum", &checksum)) != SP_OK ||
        (st = sp_codec_parse(codec, &f.codec)) != SP_OK ||
        (st = sp_checksum_parse(checksum, &f.checksum)) != SP_OK)
        return st;
    if (!compress)
        f.codec = SP_CODEC_NONE;
    f.level = (int)level;
    *format = f;
    return SP_OK;
}

/* ---- writing a run ---- */

sp_status_t sp__spill_run_open(sp_spill_run_writer_t *rw, const char *path, size_t buffer,
                               sp_codec_t codec, sp_checksum_kind_t checksum, sp_encoder_t *enc)
{
    return sp__spill_run_open_fd(rw, path, -1, buffer, codec, checksum, enc);
}

sp_status_t sp__spill_run_open_fd(sp_spill_run_writer_t *rw, const char *path, int fd,
                                  size_t buffer, sp_codec_t codec, sp_checksum_kind_t checksum,
                                  sp_encoder_t *enc)
{
    sp_status_t st;

    memset(rw, 0, sizeof(*rw));
    rw->fw.fd = -1;
    rw->enc = enc;
    rw->checksum = checksum;
    st = sp__file_writer_open_fd(&rw->fw, path, fd, buffer);
    if (st != SP_OK)
        return st;
    return sp__data_header_write(&rw->fw, codec, checksum);
}

sp_status_t sp__spill_run_begin(sp_spill_run_writer_t *rw, uint32_t partition)
{
    sp_spill_seg_t *seg;

    if (rw->run.nsegs == rw->segs_cap) {
        size_t cap = rw->segs_cap != 0 ? 2 * rw->segs_cap : 16;
        sp_spill_seg_t *segs = sp__realloc(rw->run.segs, cap * sizeof(*segs));
        if (segs == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the segment table of %s", rw->fw.path);
        rw->run.segs = segs;
        rw->segs_cap = cap;
    }
    seg = &rw->run.segs[rw->run.nsegs];
    memset(seg, 0, sizeof(*seg));
    seg->partition = partition;
    seg->offset = rw->fw.offset;
    sp__checksum_init(&rw->fw.cs, rw->checksum);
    rw->fw.checksumming = true;
    sp__encoder_begin(rw->enc, sp__file_writer_sink, &rw->fw);
    rw->in_segment = true;
    rw->raw = 0;
    return SP_OK;
}

sp_status_t sp__spill_run_write(sp_spill_run_writer_t *rw, const void *records, size_t len,
                                uint64_t count)
{
    rw->run.segs[rw->run.nsegs].records += count;
    rw->raw += len;
    return sp__encoder_write(rw->enc, records, len);
}

unsigned char *sp__spill_run_window(sp_spill_run_writer_t *rw, size_t *room_p)
{
    return sp__encoder_window(rw->enc, room_p);
}

sp_status_t sp__spill_run_wrote(sp_spill_run_writer_t *rw, size_t len, uint64_t count)
{
    rw->run.segs[rw->run.nsegs].records += count;
    rw->raw += len;
    return sp__encoder_wrote(rw->enc, len);
}

sp_status_t sp__spill_run_add(sp_spill_run_writer_t *rw, const void *key, size_t klen,
                              const void *value, size_t vlen)
{
    unsigned char h[SP_RECORD_HEADER];
    sp_status_t st;

    sp__le_put_u32(h, (uint32_t)klen);
    sp__le_put_u32(h + 4, (uint32_t)vlen);
    if ((st = sp__encoder_write(rw->enc, h, sizeof(h))) != SP_OK ||
        (st = sp__encoder_write(rw->enc, key, klen)) != SP_OK ||
        (st = sp__encoder_write(rw->enc, value, vlen)) != SP_OK)
        return st;
    rw->run.segs[rw->run.nsegs].records++;
    rw->raw += SP_RECORD_HEADER + (uint64_t)klen + vlen;
    return SP_OK;
}

sp_status_t sp__spill_run_end(sp_spill_run_writer_t *rw, const sp_spill_seg_t **seg_p)
{
    sp_spill_seg_t *seg = &rw->run.segs[rw->run.nsegs];
    sp_status_t st = sp__encoder_end(rw->enc, &seg->length);

    rw->fw.checksumming = false;
    rw->in_segment = false;
    if (st != SP_OK)
        return st;
    seg->checksum = sp__checksum_final(&rw->fw.cs);
    rw->run.records += seg->records;
    rw->run.nsegs++;
    if (seg_p != NULL)
        *seg_p = seg;
    return SP_OK;
}

sp_status_t sp__spill_run_finish(sp_spill_run_writer_t *rw, bool sync, sp_spill_run_t *run_p)
{
    sp_status_t st = SP_OK;

    if (rw->in_segment)
        st = sp__spill_run_end(rw, NULL);
    if (st == SP_OK)
        st = sp__file_writer_finish(&rw->fw, sync);
    if (st != SP_OK)
        return st;
    rw->run.size = rw->fw.offset;
    rw->run.path = rw->fw.path; /* the file writer's copy of the path moves to the run */
    rw->fw.path = NULL;
    sp__file_writer_release(&rw->fw);
    *run_p = rw->run;
    memset(&rw->run, 0, sizeof(rw->run));
    rw->segs_cap = 0;
    return SP_OK;
}

void sp__spill_run_abort(sp_spill_run_writer_t *rw)
{
    rw->fw.checksumming = false;
    rw->in_segment = false;
    if (rw->fw.path != NULL)
        sp__file_writer_discard(&rw->fw);
    sp__free(rw->run.segs);
    memset(&rw->run, 0, sizeof(rw->run));
    rw->segs_cap = 0;
}

void sp__spill_run_drop(sp_spill_run_t *run, bool unlink_file)
{
    if (run->path != NULL && unlink_file) {
        unlink(run->path);
        sp__tempfile_forget(run->path);
    }
    sp__free(run->path);
    sp__free(run->segs);
    memset(run, 0, sizeof(*run));
}

/* ---- reading a run ---- */

sp_status_t sp__spill_run_map(const sp_spill_run_t *run, const void **map_p)
{
    void *map;
    int fd;

    if (sp__fault_fire(SP_FAULT_READ))
        return SP_RAISE(SP_ERR_IO, "map spill %s: injected read fault", run->path);
    fd = open(run->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "open spill %s: %s (errno %d)", run->path, strerror(errno),
                        errno);
    map = mmap(NULL, run->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return SP_RAISE(SP_ERR_IO, "map spill %s: %s (errno %d)", run->path, strerror(errno),
                        errno);
    *map_p = map;
    return SP_OK;
}

void sp__spill_run_unmap(const sp_spill_run_t *run, const void *map)
{
    if (map != NULL)
        munmap((void *)(uintptr_t)map, run->size);
}

sp_status_t sp__spill_run_open_read(const sp_spill_run_t *run, sp_codec_t codec,
                                    sp_checksum_kind_t checksum, int *fd_p)
{
    unsigned char h[SP_DATA_HEADER];
    int fd = open(run->path, O_RDONLY | O_CLOEXEC);
    sp_status_t st;

    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "open run %s: %s (errno %d)", run->path, strerror(errno), errno);
    st = sp__pread_all(fd, h, sizeof(h), 0, run->path);
    if (st == SP_OK && (sp__le_get_u32(h) != SP_DATA_MAGIC || h[4] != SP_DATA_VERSION ||
                        h[6] != (unsigned char)codec || h[7] != (unsigned char)checksum))
        st = SP_RAISE(SP_ERR_CORRUPT, "run %s does not start with its header", run->path);
    if (st != SP_OK) {
        close(fd);
        return st;
    }
    *fd_p = fd;
    return SP_OK;
}

sp_status_t sp__spill_run_read_segment(const sp_spill_run_t *run, int fd, size_t i,
                                       sp_checksum_kind_t checksum, unsigned char **buf,
                                       size_t *cap)
{
    const sp_spill_seg_t *seg = &run->segs[i];
    sp_status_t st;

    if (seg->length > *cap) {
        unsigned char *b = sp__malloc((size_t)seg->length);
        if (b == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory to read a chunk of %llu bytes of %s",
                            (unsigned long long)seg->length, run->path);
        sp__free(*buf);
        *buf = b;
        *cap = (size_t)seg->length;
    }
    st = sp__pread_all(fd, *buf, (size_t)seg->length, seg->offset, run->path);
    if (st != SP_OK)
        return st;
    if (sp__checksum_buf(checksum, *buf, (size_t)seg->length) != seg->checksum)
        return SP_RAISE(SP_ERR_CORRUPT, "run %s: chunk %zu at offset %llu fails its %s checksum",
                        run->path, i, (unsigned long long)seg->offset, sp_checksum_name(checksum));
    return SP_OK;
}
