/*
 * Committed map outputs: the index and checksum files beside a data file,
 * the atomic, idempotent commit, and validated reading.
 *
 * Commit protocol: the data file is written under a temporary name; the
 * checksum and index files are written under temporary names next to it;
 * then, holding an exclusive flock on the output directory, either a valid
 * committed output of another attempt is found (ours is deleted and its
 * status returned) or ours is renamed into place, data and checksum first
 * and the index last. The index is the commit point: readers open the index
 * and check it against the data file, so a crash between renames leaves at
 * worst a data file without a valid index, never a valid index of a wrong
 * or partial data file.
 *
 * Every number read from these files is checked before it is used.
 */
#include "shuffle_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct sp_map_output {
    uint32_t partitions;
    uint32_t attempt;
    sp_codec_t codec;
    sp_checksum_kind_t kind;
    uint64_t *offsets; /* partitions + 1 */
    uint64_t *records;
    uint64_t *checksums;
    char data_path[PATH_MAX];
    char index_path[PATH_MAX];
    char checksum_path[PATH_MAX];
};

void sp__output_paths(const char *dir, uint64_t shuffle_id, uint64_t map_id, char *data,
                      char *index, char *checksum, size_t len)
{
    snprintf(data, len, "%s/shuffle_%llu_%llu.data", dir, (unsigned long long)shuffle_id,
             (unsigned long long)map_id);
    snprintf(index, len, "%s/shuffle_%llu_%llu.index", dir, (unsigned long long)shuffle_id,
             (unsigned long long)map_id);
    snprintf(checksum, len, "%s/shuffle_%llu_%llu.checksum", dir, (unsigned long long)shuffle_id,
             (unsigned long long)map_id);
}

void sp_map_status_destroy(sp_map_status_t *status)
{
    if (status == NULL)
        return;
    sp__free(status->lengths);
    sp__free(status->records);
    sp__free(status->checksums);
    sp__free(status->data_path);
    sp__free(status->index_path);
    sp__free(status->checksum_path);
    sp__free(status->address);
    sp__free(status->rkey);
    sp__free(status);
}

static sp_status_t sp_status_build(uint64_t shuffle_id, uint64_t map_id, uint32_t attempt,
                                   uint32_t partitions, sp_codec_t codec, sp_checksum_kind_t kind,
                                   const uint64_t *lengths, const uint64_t *records,
                                   const uint64_t *checksums, const char *data, const char *index,
                                   const char *checksum, sp_map_status_t **status_p)
{
    sp_map_status_t *s = sp__calloc(1, sizeof(*s));
    size_t bytes = (size_t)partitions * sizeof(uint64_t);

    if (s == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a map status");
    s->shuffle_id = shuffle_id;
    s->map_id = map_id;
    s->attempt = attempt;
    s->partitions = partitions;
    s->codec = codec;
    s->checksum_kind = kind;
    s->lengths = sp__malloc(bytes);
    s->records = sp__malloc(bytes);
    s->checksums = sp__malloc(bytes);
    s->data_path = sp__strdup(data);
    s->index_path = sp__strdup(index);
    s->checksum_path = sp__strdup(checksum);
    if (s->lengths == NULL || s->records == NULL || s->checksums == NULL || s->data_path == NULL ||
        s->index_path == NULL || s->checksum_path == NULL) {
        sp_map_status_destroy(s);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the map status of %u partitions", partitions);
    }
    memcpy(s->lengths, lengths, bytes);
    memcpy(s->records, records, bytes);
    memcpy(s->checksums, checksums, bytes);
    *status_p = s;
    return SP_OK;
}

/* Writes a whole small file (index or checksum) under a temporary name. */
static sp_status_t sp_small_file_write(const char *path, const unsigned char *buf, size_t len,
                                       bool sync)
{
    sp_status_t st;
    int fd;

    sp__tempfile_register(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        sp__tempfile_forget(path);
        return SP_RAISE(errno == ENOSPC ? SP_ERR_NO_SPACE : SP_ERR_IO, "create %s: %s (errno %d)",
                        path, strerror(errno), errno);
    }
    st = sp__pwrite_all(fd, buf, len, 0, path);
    if (st == SP_OK && sync && sp__fsync(fd) != 0)
        st = SP_RAISE(SP_ERR_IO, "fsync %s: %s (errno %d)", path, strerror(errno), errno);
    if (close(fd) != 0 && st == SP_OK)
        st = SP_RAISE(SP_ERR_IO, "close %s: %s (errno %d)", path, strerror(errno), errno);
    if (st != SP_OK) {
        unlink(path);
        sp__tempfile_forget(path);
    }
    return st;
}

static size_t sp_index_size(uint32_t partitions)
{
    return SP_INDEX_HEADER + 8 * ((size_t)partitions + 1) + 8 * (size_t)partitions + 8;
}

static unsigned char *sp_index_encode(const sp_shuffle_writer_options_t *o, const uint64_t *lengths,
                                      const uint64_t *records, size_t *len_p)
{
    size_t len = sp_index_size(o->partitions);
    unsigned char *b = sp__malloc(len), *p;
    uint64_t off = SP_DATA_HEADER;

    if (b == NULL)
        return NULL;
    sp__le_put_u32(b, SP_INDEX_MAGIC);
    b[4] = SP_INDEX_VERSION;
    b[5] = 0;
    b[6] = (unsigned char)o->codec;
    b[7] = (unsigned char)o->checksum;
    sp__le_put_u32(b + 8, o->partitions);
    sp__le_put_u32(b + 12, o->attempt);
    p = b + SP_INDEX_HEADER;
    for (uint32_t i = 0; i <= o->partitions; i++) {
        sp__le_put_u64(p, off);
        p += 8;
        if (i < o->partitions)
            off += lengths[i];
    }
    for (uint32_t i = 0; i < o->partitions; i++, p += 8)
        sp__le_put_u64(p, records[i]);
    sp__le_put_u64(p, XXH3_64bits(b, (size_t)(p - b)));
    *len_p = len;
    return b;
}

static unsigned char *sp_checksums_encode(const sp_shuffle_writer_options_t *o,
                                          const uint64_t *checksums, size_t *len_p)
{
    size_t len = SP_CSUM_HEADER + 8 * (size_t)o->partitions;
    unsigned char *b = sp__malloc(len);

    if (b == NULL)
        return NULL;
    sp__le_put_u32(b, SP_CSUM_MAGIC);
    b[4] = SP_CSUM_VERSION;
    b[5] = 0;
    b[6] = (unsigned char)o->checksum;
    b[7] = 0;
    sp__le_put_u32(b + 8, o->partitions);
    sp__le_put_u32(b + 12, 0);
    for (uint32_t i = 0; i < o->partitions; i++)
        sp__le_put_u64(b + SP_CSUM_HEADER + 8 * (size_t)i, checksums[i]);
    *len_p = len;
    return b;
}

sp_status_t sp__output_commit(const char *dir, const char *data_tmp,
                              const sp_shuffle_writer_options_t *opts, const uint64_t *lengths,
                              const uint64_t *records, const uint64_t *checksums, bool sync,
                              sp_map_status_t **status_p)
{
    char data[PATH_MAX], index[PATH_MAX], csum[PATH_MAX], index_tmp[PATH_MAX + 64],
        csum_tmp[PATH_MAX + 64];
    unsigned char *ibuf = NULL, *cbuf = NULL;
    size_t ilen = 0, clen = 0;
    sp_map_output_t *existing = NULL;
    sp_map_status_t *mine = NULL;
    sp_status_t st;
    int dfd;

    sp__output_paths(dir, opts->shuffle_id, opts->map_id, data, index, csum, PATH_MAX);
    snprintf(index_tmp, sizeof(index_tmp), "%s.%u.%ld.tmp", index, opts->attempt, (long)getpid());
    snprintf(csum_tmp, sizeof(csum_tmp), "%s.%u.%ld.tmp", csum, opts->attempt, (long)getpid());
    ibuf = sp_index_encode(opts, lengths, records, &ilen);
    cbuf = sp_checksums_encode(opts, checksums, &clen);
    if (ibuf == NULL || cbuf == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the index of shuffle %llu map %llu",
                      (unsigned long long)opts->shuffle_id, (unsigned long long)opts->map_id);
        goto out_free;
    }
    st = sp_small_file_write(csum_tmp, cbuf, clen, sync);
    if (st != SP_OK)
        goto out_free;
    st = sp_small_file_write(index_tmp, ibuf, ilen, sync);
    if (st != SP_OK)
        goto out_unlink_csum;

    /* Our status exists before anything is renamed: nothing may fail after
     * the output becomes visible. */
    st = sp_status_build(opts->shuffle_id, opts->map_id, opts->attempt, opts->partitions,
                         opts->codec, opts->checksum, lengths, records, checksums, data, index,
                         csum, &mine);
    if (st != SP_OK)
        goto out_unlink_index;
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || flock(dfd, LOCK_EX) != 0) {
        st = SP_RAISE(SP_ERR_IO, "lock directory %s for commit: %s (errno %d)", dir,
                      strerror(errno), errno);
        if (dfd >= 0)
            close(dfd);
        goto out_unlink_index;
    }
    if (sp_map_output_open(index, &existing) == SP_OK) {
        /* Another attempt won: keep its output, drop ours. */
        sp_segment_info_t seg;
        uint64_t *l = sp__malloc(8 * (size_t)existing->partitions + 8);
        for (uint32_t i = 0; l != NULL && i < existing->partitions; i++) {
            sp_map_output_segment(existing, i, &seg);
            l[i] = seg.length;
        }
        if (l == NULL)
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a map status");
        else
            st = sp_status_build(opts->shuffle_id, opts->map_id, existing->attempt,
                                 existing->partitions, existing->codec, existing->kind, l,
                                 existing->records, existing->checksums, data, index, csum,
                                 status_p);
        sp__free(l);
        sp_map_output_close(existing);
        close(dfd); /* releases the lock */
        unlink(data_tmp);
        sp__tempfile_forget(data_tmp);
        goto out_unlink_index;
    }
    if (rename(data_tmp, data) != 0 || rename(csum_tmp, csum) != 0 ||
        rename(index_tmp, index) != 0) {
        st = SP_RAISE(SP_ERR_IO, "commit shuffle %llu map %llu in %s: rename: %s (errno %d)",
                      (unsigned long long)opts->shuffle_id, (unsigned long long)opts->map_id, dir,
                      strerror(errno), errno);
        /* Never leave a half-renamed output visible. */
        unlink(index);
        unlink(data);
        unlink(csum);
        close(dfd);
        goto out_unlink_index;
    }
    if (sync && sp__fsync(dfd) != 0) {
        st = SP_RAISE(SP_ERR_IO, "fsync directory %s: %s (errno %d)", dir, strerror(errno), errno);
        unlink(index);
        unlink(data);
        unlink(csum);
    }
    close(dfd);
    sp__tempfile_forget(data_tmp);
    sp__tempfile_forget(csum_tmp);
    sp__tempfile_forget(index_tmp);
    if (st == SP_OK) {
        *status_p = mine;
        mine = NULL;
    }
    goto out_free;

out_unlink_index:
    unlink(index_tmp);
    sp__tempfile_forget(index_tmp);
out_unlink_csum:
    unlink(csum_tmp);
    sp__tempfile_forget(csum_tmp);
out_free:
    sp_map_status_destroy(mine);
    if (st != SP_OK) {
        /* The commit owns the data temporary: a failed commit leaves nothing. */
        unlink(data_tmp);
        sp__tempfile_forget(data_tmp);
    }
    sp__free(ibuf);
    sp__free(cbuf);
    return st;
}

/* Replaces the ".index" suffix of index with suffix into out. */
static sp_status_t sp_sibling_path(const char *index, const char *suffix, char *out)
{
    size_t len = strlen(index);

    if (len < 6 || strcmp(index + len - 6, ".index") != 0 || len - 6 + strlen(suffix) >= PATH_MAX)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "'%s' is not the path of a .index file", index);
    memcpy(out, index, len - 6);
    strcpy(out + len - 6, suffix);
    return SP_OK;
}

/* Reads a whole file of at most max bytes. */
static sp_status_t sp_read_file(const char *path, size_t max, unsigned char **buf_p, size_t *len_p)
{
    struct stat sb;
    unsigned char *buf;
    sp_status_t st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "open %s: %s (errno %d)",
                        path, strerror(errno), errno);
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size > max) {
        st = SP_RAISE(SP_ERR_CORRUPT, "%s: %lld bytes, more than the %zu it can hold", path,
                      (long long)sb.st_size, max);
        close(fd);
        return st;
    }
    buf = sp__malloc((size_t)sb.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return SP_RAISE(SP_ERR_NOMEM, "no memory to read %s", path);
    }
    st = sp__pread_all(fd, buf, (size_t)sb.st_size, 0, path);
    close(fd);
    if (st != SP_OK) {
        sp__free(buf);
        return st;
    }
    *buf_p = buf;
    *len_p = (size_t)sb.st_size;
    return SP_OK;
}

sp_status_t sp_map_output_open(const char *index_path, sp_map_output_t **output_p)
{
    size_t max_index = sp_index_size(SP_MAX_PARTITIONS), ilen = 0, clen = 0;
    unsigned char *ib = NULL, *cb = NULL, *p;
    sp_map_output_t *mo;
    struct stat sb;
    uint32_t parts;
    sp_status_t st;

    mo = sp__calloc(1, sizeof(*mo));
    if (mo == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to open %s", index_path);
    if ((st = sp_sibling_path(index_path, ".data", mo->data_path)) != SP_OK ||
        (st = sp_sibling_path(index_path, ".checksum", mo->checksum_path)) != SP_OK)
        goto err;
    snprintf(mo->index_path, sizeof(mo->index_path), "%s", index_path);
    st = sp_read_file(index_path, max_index, &ib, &ilen);
    if (st != SP_OK)
        goto err;
    if (ilen < SP_INDEX_HEADER + 16 || sp__le_get_u32(ib) != SP_INDEX_MAGIC ||
        ib[4] != SP_INDEX_VERSION) {
        st = SP_RAISE(SP_ERR_CORRUPT, "index %s: bad magic or version (or %zu bytes)", index_path,
                      ilen);
        goto err;
    }
    parts = sp__le_get_u32(ib + 8);
    if (parts == 0 || parts > SP_MAX_PARTITIONS || ilen != sp_index_size(parts)) {
        st = SP_RAISE(SP_ERR_CORRUPT, "index %s: %u partitions do not match its %zu bytes",
                      index_path, parts, ilen);
        goto err;
    }
    if (XXH3_64bits(ib, ilen - 8) != sp__le_get_u64(ib + ilen - 8)) {
        st = SP_RAISE(SP_ERR_CORRUPT, "index %s fails its own checksum", index_path);
        goto err;
    }
    if (ib[6] > SP_CODEC_ZSTD || (ib[7] != SP_CHECKSUM_CRC32C && ib[7] != SP_CHECKSUM_XXH3)) {
        st = SP_RAISE(SP_ERR_CORRUPT, "index %s: unknown codec %u or checksum %u", index_path,
                      ib[6], ib[7]);
        goto err;
    }
    mo->partitions = parts;
    mo->codec = (sp_codec_t)ib[6];
    mo->kind = (sp_checksum_kind_t)ib[7];
    mo->attempt = sp__le_get_u32(ib + 12);
    mo->offsets = sp__malloc(8 * ((size_t)parts + 1));
    mo->records = sp__malloc(8 * (size_t)parts);
    mo->checksums = sp__malloc(8 * (size_t)parts);
    if (mo->offsets == NULL || mo->records == NULL || mo->checksums == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the index of %s", index_path);
        goto err;
    }
    p = ib + SP_INDEX_HEADER;
    for (uint32_t i = 0; i <= parts; i++, p += 8) {
        mo->offsets[i] = sp__le_get_u64(p);
        if ((i == 0 && mo->offsets[0] != SP_DATA_HEADER) ||
            (i > 0 && mo->offsets[i] < mo->offsets[i - 1])) {
            st = SP_RAISE(SP_ERR_CORRUPT, "index %s: offset %u (%llu) is out of order", index_path,
                          i, (unsigned long long)mo->offsets[i]);
            goto err;
        }
    }
    for (uint32_t i = 0; i < parts; i++, p += 8)
        mo->records[i] = sp__le_get_u64(p);
    if (stat(mo->data_path, &sb) != 0) {
        st = SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "data file %s: %s (errno %d)",
                      mo->data_path, strerror(errno), errno);
        goto err;
    }
    if ((uint64_t)sb.st_size != mo->offsets[parts]) {
        st = SP_RAISE(SP_ERR_CORRUPT, "data file %s has %lld bytes; its index %s says %llu",
                      mo->data_path, (long long)sb.st_size, index_path,
                      (unsigned long long)mo->offsets[parts]);
        goto err;
    }
    st = sp_read_file(mo->checksum_path, SP_CSUM_HEADER + 8 * (size_t)parts, &cb, &clen);
    if (st != SP_OK)
        goto err;
    if (clen != SP_CSUM_HEADER + 8 * (size_t)parts || sp__le_get_u32(cb) != SP_CSUM_MAGIC ||
        cb[4] != SP_CSUM_VERSION || cb[6] != ib[7] || sp__le_get_u32(cb + 8) != parts) {
        st = SP_RAISE(SP_ERR_CORRUPT, "checksum file %s does not match its index %s",
                      mo->checksum_path, index_path);
        goto err;
    }
    for (uint32_t i = 0; i < parts; i++)
        mo->checksums[i] = sp__le_get_u64(cb + SP_CSUM_HEADER + 8 * (size_t)i);
    sp__free(ib);
    sp__free(cb);
    *output_p = mo;
    return SP_OK;

err:
    sp__free(ib);
    sp__free(cb);
    sp_map_output_close(mo);
    return st;
}

void sp_map_output_close(sp_map_output_t *output)
{
    if (output == NULL)
        return;
    sp__free(output->offsets);
    sp__free(output->records);
    sp__free(output->checksums);
    sp__free(output);
}

uint32_t sp_map_output_partitions(const sp_map_output_t *output) { return output->partitions; }

sp_codec_t sp_map_output_codec(const sp_map_output_t *output) { return output->codec; }

sp_checksum_kind_t sp_map_output_checksum_kind(const sp_map_output_t *output)
{
    return output->kind;
}

sp_status_t sp_map_output_segment(const sp_map_output_t *output, uint32_t partition,
                                  sp_segment_info_t *info_p)
{
    if (partition >= output->partitions)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "partition %u of %s: it has %u partitions", partition,
                        output->index_path, output->partitions);
    info_p->offset = output->offsets[partition];
    info_p->length = output->offsets[partition + 1] - output->offsets[partition];
    info_p->records = output->records[partition];
    info_p->checksum = output->checksums[partition];
    return SP_OK;
}

sp_status_t sp_map_output_read_segment(const sp_map_output_t *output, uint32_t partition,
                                       void **data_p, size_t *len_p)
{
    sp_segment_info_t seg;
    void *buf;
    sp_status_t st;
    int fd;

    st = sp_map_output_segment(output, partition, &seg);
    if (st != SP_OK)
        return st;
    buf = malloc(seg.length != 0 ? seg.length : 1);
    if (buf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %llu bytes of partition %u of %s",
                        (unsigned long long)seg.length, partition, output->data_path);
    if (seg.length == 0 && seg.checksum == sp__checksum_buf(output->kind, "", 0)) {
        /* An empty partition: nothing to read. */
        *data_p = buf;
        *len_p = 0;
        return SP_OK;
    }
    fd = open(output->data_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        free(buf);
        return SP_RAISE(SP_ERR_IO, "open %s: %s (errno %d)", output->data_path, strerror(errno),
                        errno);
    }
    st = sp__pread_all(fd, buf, seg.length, seg.offset, output->data_path);
    close(fd);
    if (st == SP_OK && sp__checksum_buf(output->kind, buf, seg.length) != seg.checksum)
        st = SP_RAISE(SP_ERR_CORRUPT, "partition %u of %s fails its %s checksum", partition,
                      output->data_path, sp_checksum_name(output->kind));
    if (st != SP_OK) {
        free(buf);
        return st;
    }
    *data_p = buf;
    *len_p = seg.length;
    return SP_OK;
}

sp_status_t sp_shuffle_remove_output(const sp_conf_t *conf, uint64_t shuffle_id, uint64_t map_id)
{
    char data[PATH_MAX], index[PATH_MAX], csum[PATH_MAX];
    sp_shuffle_dirs_t *dirs;
    sp_status_t st;

    if ((st = sp__shuffle_dirs_create(conf, &dirs)) != SP_OK)
        return st;
    sp__output_paths(sp__shuffle_dirs_output(dirs, shuffle_id, map_id), shuffle_id, map_id, data,
                     index, csum, sizeof(data));
    /* Its memory first, so that no eviction writes the data file again after the unlink. */
    sp__mem_output_drop(data);
    /* The index is the commit point: without it the output does not exist. */
    if (unlink(index) != 0 && errno != ENOENT)
        st = SP_RAISE(SP_ERR_IO, "remove %s: %s", index, strerror(errno));
    unlink(data);
    unlink(csum);
    sp__shuffle_dirs_destroy(dirs);
    return st;
}

sp_status_t sp_shuffle_remove(const sp_conf_t *conf, uint64_t shuffle_id)
{
    char prefix[64], path[PATH_MAX];
    sp_shuffle_dirs_t *dirs;
    sp_status_t st;
    int plen;

    if ((st = sp__shuffle_dirs_create(conf, &dirs)) != SP_OK)
        return st;
    plen = snprintf(prefix, sizeof(prefix), "shuffle_%llu_", (unsigned long long)shuffle_id);
    for (unsigned i = 0; i < dirs->count; i++) {
        DIR *d = opendir(dirs->dirs[i]);
        struct dirent *e;
        if (d == NULL)
            continue;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, prefix, (size_t)plen) != 0)
                continue;
            if ((size_t)snprintf(path, sizeof(path), "%s/%s", dirs->dirs[i], e->d_name) <
                sizeof(path)) {
                sp__mem_output_drop(path); /* a no-op unless it is a data file in memory */
                unlink(path);
            }
        }
        closedir(d);
    }
    sp__shuffle_dirs_destroy(dirs);
    return SP_OK;
}
