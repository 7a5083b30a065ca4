/*
 * The map output writer: validates and partitions each record of one map
 * task attempt, hands it to one of two paths, and commits the output.
 *
 * Sort path (the default): the sorter (shuffle/sorter.c) keeps the records
 * in task pages, spills sorted runs when memory runs out, and at commit
 * either writes the data file straight from memory (no runs), renames a
 * single run that lies in the output directory, or merges the runs
 * partition by partition into a new data file. With a combiner, records
 * first go through a hash aggregator keyed by [u32 partition, big-endian]
 * [key] and reach the sorter at commit.
 *
 * Range partitioning looks a record's partition up by binary search over the
 * split keys; in byte order each step compares the keys' first 8 bytes as
 * big-endian integers (sp__key_prefix, kept for every split key) and
 * compares whole keys only when those are equal (with a job comparator the
 * prefixes are all 0 and it decides every step).
 *
 * Bypass path (few partitions, no ordering): delegated to the bypass writer
 * (shuffle/bypass_writer.c), whose partition files are concatenated into
 * the data file at commit.
 *
 * Data and spill files share one layout (docs/FORMATS.md), so a single spill
 * in the output directory is committed by renaming it. The commit itself
 * (index, checksum file, renames under a lock) is shuffle/map_output.c's.
 */
#include "bypass_writer.h"
#include "radix_sort.h"
#include "shuffle_int.h"
#include "sorter.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sp_shuffle_writer {
    sp_shuffle_writer_options_t o;
    unsigned char *split_buf; /* RANGE: copies of the split keys */
    sp_key_t *splits;
    uint64_t *split_prefix; /* RANGE: each split key's sp__key_prefix in byte order, else 0 */
    sp_task_memory_t *task;
    sp_shuffle_dirs_t *dirs;
    uint64_t unified;
    size_t spill_buffer, file_buffer;
    bool sync, bypass, committed, done;
    bool output_memory; /* shuffle.output=memory */
    sp_status_t error;  /* sticky: the first failed write */

    /* sort path (shuffle/sorter.c) */
    sp_sorter_t *sorter;

    /* map-side combine: records aggregate by [u32 partition, big-endian][key] */
    sp_aggregator_t *agg;
    sp_combiner_t agg_combiner; /* strips the partition before the job's combine */
    unsigned char *agg_key;
    size_t agg_key_cap;

    /* bypass path (shuffle/bypass_writer.c) */
    sp_bypass_writer_t *bw;

    sp_shuffle_write_stats_t stats;
};

/* The writer's sticky error, or a failed spill kept by its sorter. */
static sp_status_t sp_writer_error(const sp_shuffle_writer_t *w)
{
    if (w->error != SP_OK)
        return w->error;
    return w->sorter != NULL ? w->sorter->error : SP_OK;
}

/* ---- options ---- */

sp_status_t sp_shuffle_writer_options_init(sp_shuffle_writer_options_t *opts, const sp_conf_t *conf)
{
    sp_spill_format_t f;
    sp_status_t st;

    memset(opts, 0, sizeof(*opts));
    if ((st = sp__spill_format_init(&f, conf)) != SP_OK)
        return st;
    opts->codec = f.codec;
    opts->codec_level = f.level;
    opts->checksum = f.checksum;
    opts->partitions = 1;
    return SP_OK;
}

static int sp_bytes_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, SP_MIN(alen, blen));

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int sp_writer_compare(const sp_shuffle_writer_t *w, const void *a, size_t alen,
                             const void *b, size_t blen)
{
    if (w->o.compare != NULL)
        return w->o.compare(a, alen, b, blen, w->o.compare_arg);
    return sp_bytes_compare(a, alen, b, blen);
}

/* ---- map-side combine ---- */

static size_t sp_writer_combine(void *arg, const void *key, size_t klen, const void *a, size_t alen,
                                const void *b, size_t blen, void *out, size_t cap)
{
    const sp_shuffle_writer_t *w = arg;

    /* The job's combiner sees its own key, without the partition. */
    return w->o.combiner->combine(w->o.combiner->arg, (const unsigned char *)key + 4, klen - 4, a,
                                  alen, b, blen, out, cap);
}

static sp_status_t sp_writer_combine_insert(sp_shuffle_writer_t *w, uint32_t partition,
                                            const void *key, size_t klen, const void *value,
                                            size_t vlen)
{
    if (klen + 4 > w->agg_key_cap) {
        size_t cap = SP_MAX(2 * w->agg_key_cap, klen + 4);
        unsigned char *k = sp__realloc(w->agg_key, cap);
        if (k == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a key of %zu bytes", klen);
        w->agg_key = k;
        w->agg_key_cap = cap;
    }
    w->agg_key[0] = (unsigned char)(partition >> 24);
    w->agg_key[1] = (unsigned char)(partition >> 16);
    w->agg_key[2] = (unsigned char)(partition >> 8);
    w->agg_key[3] = (unsigned char)partition;
    if (klen != 0)
        memcpy(w->agg_key + 4, key, klen);
    return sp__aggregator_add(w->agg, w->agg_key, klen + 4, value, vlen);
}

/* Moves the combined records into the sort path. */
static sp_status_t sp_writer_combine_flush(sp_shuffle_writer_t *w)
{
    sp_status_t st;

    for (;;) {
        const unsigned char *k;
        const void *key, *value;
        size_t klen, vlen;
        bool more;

        st = sp_aggregator_next(w->agg, &key, &klen, &value, &vlen, &more);
        if (st != SP_OK || !more)
            break;
        k = key;
        st = sp__sorter_insert(w->sorter,
                               (uint32_t)k[0] << 24 | (uint32_t)k[1] << 16 | (uint32_t)k[2] << 8 |
                                   (uint32_t)k[3],
                               k + 4, klen - 4, value, vlen);
        if (st != SP_OK)
            break;
    }
    sp_aggregator_destroy(w->agg);
    w->agg = NULL;
    return st;
}

/* ---- open / write ---- */

sp_status_t sp_shuffle_writer_open(sp_task_memory_t *task, const sp_conf_t *conf,
                                   const sp_shuffle_writer_options_t *opts,
                                   sp_shuffle_writer_t **writer_p)
{
    sp_shuffle_writer_t *w;
    int64_t bypass_threshold = 0, spill_records = 0;
    uint64_t spill_buffer = 0, file_buffer = 0;
    sp_status_t st;

    if (opts->partitions == 0 || opts->partitions > SP_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "shuffle %llu map %llu: %u partitions; a shuffle has 1 to %u",
                        (unsigned long long)opts->shuffle_id, (unsigned long long)opts->map_id,
                        opts->partitions, SP_MAX_PARTITIONS);
    if (opts->partitioner > SP_PARTITIONER_RANGE || opts->path > SP_WRITER_BYPASS ||
        opts->codec > SP_CODEC_ZSTD ||
        (opts->checksum != SP_CHECKSUM_CRC32C && opts->checksum != SP_CHECKSUM_XXH3))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "shuffle %llu map %llu: unknown partitioner, path, codec or checksum",
                        (unsigned long long)opts->shuffle_id, (unsigned long long)opts->map_id);
    if (opts->partitioner == SP_PARTITIONER_RANGE && opts->partitions > 1 &&
        opts->split_keys == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "range partitioner without split keys");
    if (opts->path == SP_WRITER_BYPASS && (opts->key_ordering || opts->combiner != NULL))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "the bypass path cannot order or combine keys");
    if (opts->combiner != NULL && opts->combiner->combine == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "a combiner without a combine function");
    if ((st = sp_conf_get_int(conf, "shuffle.bypass_threshold", &bypass_threshold)) != SP_OK ||
        (st = sp_conf_get_int(conf, "shuffle.spill_records", &spill_records)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.spill_buffer", &spill_buffer)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.file_buffer", &file_buffer)) != SP_OK)
        return st;

    w = sp__calloc(1, sizeof(*w));
    if (w == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle writer");
    w->o = *opts;
    w->task = task;
    w->spill_buffer = (size_t)spill_buffer;
    w->file_buffer = (size_t)file_buffer;
    w->bypass = opts->path == SP_WRITER_BYPASS ||
                (opts->path == SP_WRITER_AUTO && !opts->key_ordering && opts->combiner == NULL &&
                 (int64_t)opts->partitions <= bypass_threshold);
    w->stats.bypass = w->bypass;
    if ((st = sp_conf_get_bool(conf, "shuffle.sync", &w->sync)) != SP_OK)
        goto err_free;
    {
        const char *output = NULL;
        if ((st = sp_conf_get_string(conf, "shuffle.output", &output)) != SP_OK)
            goto err_free;
        w->output_memory = strcmp(output, "memory") == 0;
    }
    {
        sp_memory_layout_t layout;
        sp_memory_manager_layout(sp_task_memory_manager(task), &layout);
        w->unified = layout.unified_bytes;
    }
    if (opts->partitioner == SP_PARTITIONER_RANGE && opts->partitions > 1) {
        size_t bytes = 0, nsplits = opts->partitions - 1, at = 0;
        for (size_t i = 0; i < nsplits; i++)
            bytes += opts->split_keys[i].len;
        w->splits = sp__calloc(nsplits, sizeof(*w->splits));
        w->split_buf = sp__malloc(bytes + 1);
        w->split_prefix = sp__calloc(nsplits, sizeof(*w->split_prefix));
        if (w->splits == NULL || w->split_buf == NULL || w->split_prefix == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for %zu split keys", nsplits);
            goto err_free;
        }
        for (size_t i = 0; i < nsplits; i++) {
            if (opts->split_keys[i].len != 0)
                memcpy(w->split_buf + at, opts->split_keys[i].data, opts->split_keys[i].len);
            w->splits[i].data = w->split_buf + at;
            w->splits[i].len = opts->split_keys[i].len;
            if (opts->compare == NULL)
                w->split_prefix[i] = sp__key_prefix(w->splits[i].data, w->splits[i].len);
            at += opts->split_keys[i].len;
            if (i > 0 && sp_writer_compare(w, w->splits[i - 1].data, w->splits[i - 1].len,
                                           w->splits[i].data, w->splits[i].len) > 0) {
                st = SP_RAISE(SP_ERR_INVALID_PARAM, "split key %zu is smaller than split key %zu",
                              i, i - 1);
                goto err_free;
            }
        }
    }
    st = sp__shuffle_dirs_create(conf, &w->dirs);
    if (st != SP_OK)
        goto err_free;
    if (w->bypass)
        st =
            sp__bypass_writer_create(task, &w->o, w->dirs, w->file_buffer, w->spill_buffer, &w->bw);
    else
        st = sp__sorter_create(task, conf, &w->o, &w->sorter);
    if (st != SP_OK)
        goto err_dirs;
    if (opts->combiner != NULL) {
        w->agg_combiner.combine = sp_writer_combine;
        w->agg_combiner.arg = w;
        st = sp_aggregator_create(task, conf, &w->agg_combiner, &w->agg);
        if (st != SP_OK)
            goto err_path;
    }
    *writer_p = w;
    return SP_OK;

err_path:
    sp__sorter_destroy(w->sorter);
err_dirs:
    sp__shuffle_dirs_destroy(w->dirs);
err_free:
    sp__free(w->splits);
    sp__free(w->split_buf);
    sp__free(w->split_prefix);
    sp__free(w);
    return st;
}

/*
 * Whether split key i sorts before key: the 8-byte prefixes decide unless
 * they are equal (prefix: key's sp__key_prefix in byte order; with a job
 * comparator every prefix is 0, so the comparator always decides).
 */
static inline bool sp_writer_split_below(const sp_shuffle_writer_t *w, size_t i, uint64_t prefix,
                                         const void *key, size_t klen)
{
    uint64_t q = w->split_prefix[i];

    return q < prefix || (q == prefix &&
                          sp_writer_compare(w, w->splits[i].data, w->splits[i].len, key, klen) < 0);
}

/* The hash partitioner; static so the per-record path inlines it (the public one may be
 * interposed). */
static inline uint32_t sp_writer_hash(const void *key, size_t key_len, uint32_t partitions)
{
    return (uint32_t)(XXH3_64bits(key, key_len) % partitions);
}

uint32_t sp_shuffle_hash_partition(const void *key, size_t key_len, uint32_t partitions)
{
    return sp_writer_hash(key, key_len, partitions);
}

static uint32_t sp_writer_partition_of(const sp_shuffle_writer_t *w, const void *key, size_t klen)
{
    size_t lo = 0, hi;
    uint64_t prefix;

    if (w->o.partitioner == SP_PARTITIONER_HASH)
        return sp_writer_hash(key, klen, w->o.partitions);
    if (w->o.partitions == 1)
        return 0;
    /* First split key >= key. */
    hi = w->o.partitions - 1;
    prefix = w->o.compare == NULL ? sp__key_prefix(key, klen) : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp_writer_split_below(w, mid, prefix, key, klen))
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)lo;
}

sp_status_t sp_shuffle_writer_write(sp_shuffle_writer_t *w, uint32_t partition, const void *key,
                                    size_t key_len, const void *value, size_t value_len)
{
    sp_status_t st;

    if ((st = sp_writer_error(w)) != SP_OK)
        return SP_RAISE(st, "shuffle %llu map %llu: the writer failed earlier",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
    if (w->done)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: writer already %s",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        w->committed ? "committed" : "aborted");
    if (w->o.partitioner != SP_PARTITIONER_GIVEN) {
        if (key_len == 0 || key == NULL)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "shuffle %llu map %llu: empty key with a key partitioner",
                            (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
        partition = sp_writer_partition_of(w, key, key_len);
    } else if (partition >= w->o.partitions) {
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "shuffle %llu map %llu: partition %u is out of range [0, %u)",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        partition, w->o.partitions);
    }
    if ((st = sp__record_check(&w->o, w->unified, key, key_len, value, value_len)) != SP_OK)
        return st;
    if (w->agg != NULL)
        st = sp_writer_combine_insert(w, partition, key, key_len, value, value_len);
    else if (w->bypass)
        st = sp__bypass_writer_insert(w->bw, partition, key, key_len, value, value_len);
    else
        st = sp__sorter_insert(w->sorter, partition, key, key_len, value, value_len);
    if (st != SP_OK) {
        w->error = st;
        return st;
    }
    w->stats.records++;
    w->stats.record_bytes += key_len + value_len;
    return SP_OK;
}

/* ---- commit ---- */

static void sp_data_tmp_path(const sp_shuffle_writer_t *w, const char *dir, char *path, size_t len)
{
    snprintf(path, len, "%s/shuffle_%llu_%llu.data.%u.%ld.tmp", dir,
             (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id, w->o.attempt,
             (long)getpid());
}

/* Spreads the segments of a file written from memory over partition arrays. */
static void sp_segs_to_arrays(const sp_shuffle_writer_t *w, const sp_spill_seg_t *segs,
                              size_t nsegs, uint64_t *lengths, uint64_t *records,
                              uint64_t *checksums)
{
    uint64_t empty = sp__checksum_buf(w->o.checksum, "", 0);

    for (uint32_t p = 0; p < w->o.partitions; p++)
        checksums[p] = empty;
    for (size_t i = 0; i < nsegs; i++) {
        lengths[segs[i].partition] = segs[i].length;
        records[segs[i].partition] = segs[i].records;
        checksums[segs[i].partition] = segs[i].checksum;
    }
}

static void sp_writer_release_memory(sp_shuffle_writer_t *w)
{
    if (w->sorter != NULL)
        sp__sorter_release_memory(w->sorter);
    if (w->bw != NULL)
        sp__bypass_writer_release_memory(w->bw);
}

/* Removes spill and bypass temporaries. */
static void sp_writer_drop_files(sp_shuffle_writer_t *w, const char *keep)
{
    if (w->sorter != NULL)
        sp__sorter_drop_files(w->sorter, keep);
    if (w->bw != NULL)
        sp__bypass_writer_discard(w->bw);
}

static sp_status_t sp_fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    sp_status_t st = SP_OK;

    if (fd < 0 || sp__fsync(fd) != 0)
        st = SP_RAISE(SP_ERR_IO, "fsync %s: %s (errno %d)", path, strerror(errno), errno);
    if (fd >= 0)
        close(fd);
    return st;
}

sp_status_t sp_shuffle_writer_commit(sp_shuffle_writer_t *w, sp_map_status_t **status_p)
{
    const char *dir = sp__shuffle_dirs_output(w->dirs, w->o.shuffle_id, w->o.map_id);
    sp_sorter_t *sr = w->sorter;
    uint64_t *lengths = NULL, *records = NULL, *checksums = NULL, t0 = sp__now_ns();
    char data_tmp[PATH_MAX];
    const char *renamed = NULL;
    sp_spill_run_writer_t out = {.fw = {.fd = -1}};
    sp_spill_run_t data = {0};
    sp_memory_manager_t *mm = sp_task_memory_manager(w->task);
    sp__mem_output_t *held = NULL; /* its storage grant, until the commit */
    int keep = -1;                 /* the in-memory data file (shuffle.output=memory) */
    sp_status_t st;

    if (w->done)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: writer already %s",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        w->committed ? "committed" : "aborted");
    if ((st = sp_writer_error(w)) != SP_OK) {
        st = SP_RAISE(st, "shuffle %llu map %llu: cannot commit after an error",
                      (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
        goto err;
    }
    if (w->agg != NULL && (st = sp_writer_combine_flush(w)) != SP_OK)
        goto err;
    lengths = sp__calloc(w->o.partitions, sizeof(*lengths));
    records = sp__calloc(w->o.partitions, sizeof(*records));
    checksums = sp__calloc(w->o.partitions, sizeof(*checksums));
    if (lengths == NULL || records == NULL || checksums == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the status of %u partitions", w->o.partitions);
        goto err;
    }
    if (!w->bypass && sr->nspills > 0 && sr->n > 0) {
        /* The last run joins the others on disk, in the output directory so
         * that a single spill can be committed by renaming it. */
        st = sp__sorter_spill_to(sr, dir);
        if (st != SP_OK)
            goto err;
    }
    if (!w->bypass && sr->nspills == 1 && strncmp(sr->spills[0].path, dir, strlen(dir)) == 0 &&
        sr->spills[0].path[strlen(dir)] == '/') {
        renamed = sr->spills[0].path;
        snprintf(data_tmp, sizeof(data_tmp), "%s", renamed);
        sp_segs_to_arrays(w, sr->spills[0].segs, sr->spills[0].nsegs, lengths, records, checksums);
        if (w->sync && (st = sp_fsync_path(data_tmp)) != SP_OK)
            goto err;
    } else {
        int fd = -1;
        sp_data_tmp_path(w, dir, data_tmp, sizeof(data_tmp));
        if (w->output_memory && sp__mem_file_create(data_tmp, &fd, &keep) != SP_OK)
            sp_debug("shuffle %llu map %llu: output on disk: %s",
                     (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                     sp_last_error());
        /* The data file is written like a run: the encoder is the sorter's
         * (the bypass path copies frames it encoded itself). */
        st = sp__spill_run_open_fd(&out, data_tmp, fd, w->spill_buffer, w->o.codec, w->o.checksum,
                                   sr != NULL ? sr->enc : NULL);
        if (st != SP_OK && out.fw.path == NULL)
            goto err;
        if (st == SP_OK && w->bypass) {
            st = sp__bypass_writer_write_data(w->bw, &out.fw, lengths, records, checksums);
        } else if (st == SP_OK && sr->nspills == 0) {
            st = sp__sorter_write(sr, &out);
            if (st == SP_OK)
                sp_segs_to_arrays(w, out.run.segs, out.run.nsegs, lengths, records, checksums);
        } else if (st == SP_OK) {
            st = sp__sorter_merge(sr, &out, lengths, records, checksums);
        }
        if (st == SP_OK)
            st = sp__spill_run_finish(&out, w->sync, &data);
        if (st != SP_OK) {
            st = SP_RAISE(st, "shuffle %llu map %llu: writing %s failed: %s",
                          (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                          data_tmp, sp_last_error());
            goto err;
        }
        w->stats.output_bytes = data.size;
    }
    if (renamed != NULL) {
        w->stats.output_bytes = SP_DATA_HEADER;
        for (uint32_t p = 0; p < w->o.partitions; p++)
            w->stats.output_bytes += lengths[p];
    }
    sp_writer_release_memory(w);
    if (keep >= 0) {
        char id[64];
        snprintf(id, sizeof(id), "shuffle_%llu_%llu_%u", (unsigned long long)w->o.shuffle_id,
                 (unsigned long long)w->o.map_id, w->o.attempt);
        if (sp__mem_output_grant(keep, w->stats.output_bytes, mm, id, w->sync, &held) != SP_OK) {
            /* No storage memory for it: this output goes to disk. */
            st = sp__mem_file_materialize(data_tmp, keep, w->sync);
            if (st != SP_OK) {
                keep = -1;
                goto err;
            }
        }
        keep = -1; /* held's now, or closed */
    }
    st = sp__output_commit(dir, data_tmp, &w->o, lengths, records, checksums, w->sync, status_p);
    sp__spill_run_drop(&data, false); /* the commit renamed or removed the file */
    if (st == SP_OK && held != NULL) {
        /* Held unless another attempt's output won the commit. */
        sp__mem_output_commit(held, (*status_p)->data_path);
        held = NULL;
    }
    if (st != SP_OK)
        goto err;
    sp_writer_drop_files(w, renamed);
    w->done = w->committed = true;
    w->stats.merge_ns += sp__now_ns() - t0;
    sp__free(lengths);
    sp__free(records);
    sp__free(checksums);
    return SP_OK;

err:
    sp__spill_run_abort(&out);
    if (keep >= 0)
        close(keep);
    sp__mem_output_abort(held);
    sp_shuffle_writer_abort(w);
    sp__free(lengths);
    sp__free(records);
    sp__free(checksums);
    return st;
}

void sp_shuffle_writer_abort(sp_shuffle_writer_t *w)
{
    if (w == NULL || w->done)
        return;
    sp_writer_drop_files(w, NULL);
    sp_writer_release_memory(w);
    w->done = true;
}

void sp_shuffle_writer_stats(const sp_shuffle_writer_t *w, sp_shuffle_write_stats_t *stats_p)
{
    *stats_p = w->stats;
    if (w->sorter != NULL) {
        const sp_shuffle_write_stats_t *s = &w->sorter->stats;
        stats_p->spills = s->spills;
        stats_p->spill_bytes = s->spill_bytes;
        stats_p->sort_ns = s->sort_ns;
        stats_p->spill_ns = s->spill_ns;
        stats_p->merge_passes = s->merge_passes;
    }
}

void sp_shuffle_writer_close(sp_shuffle_writer_t *w)
{
    if (w == NULL)
        return;
    sp_shuffle_writer_abort(w);
    sp_writer_drop_files(w, NULL);
    sp_writer_release_memory(w);
    sp_aggregator_destroy(w->agg);
    sp__free(w->agg_key);
    sp__sorter_destroy(w->sorter);
    sp__bypass_writer_destroy(w->bw);
    sp__shuffle_dirs_destroy(w->dirs);
    sp__free(w->splits);
    sp__free(w->split_buf);
    sp__free(w->split_prefix);
    sp__free(w);
}
