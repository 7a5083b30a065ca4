/*
 * The map output writer: sort path and bypass path.
 *
 * Sort path (the default). A record is serialized once, as
 * [u32 key length][u32 value length][key][value], into the current page of
 * the writer (a memory consumer of the task); an 8-byte packed pointer
 * [partition|page|offset] goes to the pointer array, which lives in a page of
 * its own together with the equal-sized second buffer the radix sort needs.
 * With key ordering in byte order each array element also carries the key's
 * 8-byte prefix. When memory is refused (a page, a bigger array, another
 * consumer's request, or shuffle.spill_records) the array is sorted and the
 * records are streamed to a spill file, one compressed, checksummed segment
 * per partition, and the pages are freed. At commit, 0 spills write the data
 * file straight from memory; otherwise what is in memory is spilled too and
 * the spills are merged partition by partition: unordered output by copying
 * segment byte ranges (copy_file_range; CRC-32C checksums combined without
 * reading), key-ordered output by a k-way merge of decoded records.
 *
 * Bypass path (few partitions, no ordering): delegated to the bypass writer
 * (shuffle/bypass_writer.c); the writer validates and partitions each record
 * and commits the concatenated partition files like any other data file.
 *
 * Data and spill files share one layout (docs/FORMATS.md), so a single spill
 * in the output directory is committed by renaming it.
 */
#include "bypass_writer.h"
#include "radix_sort.h"
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SP_INITIAL_RECORDS 4096
/* Records staged per encoder call: large calls keep LZ4/zstd efficient. */
#define SP_STAGE_BYTES (64 * 1024)
/* Execution memory one input of a key-ordered merge needs (its decode window). */
#define SP_MERGE_WINDOW (256 * 1024)
/* How far ahead the partition-order gather prefetches records. */
#define SP_PREFETCH_AHEAD 16

/* The segments of one spill file, for non-empty partitions only, in order. */
typedef struct sp_spill_seg {
    uint32_t partition;
    uint64_t offset, length, records, checksum;
} sp_spill_seg_t;

typedef struct sp_spill {
    char *path;
    sp_spill_seg_t *segs;
    size_t nsegs;
    uint64_t size; /* bytes of the file */
} sp_spill_t;

struct sp_shuffle_writer {
    sp_memory_consumer_t consumer;
    sp_shuffle_writer_options_t o;
    unsigned char *split_buf; /* RANGE: copies of the split keys */
    sp_key_t *splits;
    sp_task_memory_t *task;
    sp_shuffle_dirs_t *dirs;
    sp_encoder_t *enc;
    uint64_t unified, page_size, spill_records;
    size_t spill_buffer, file_buffer;
    bool sync, bypass, committed, done;
    sp_status_t error; /* sticky: set by a failed spill inside a callback */

    /* sort path */
    sp_page_t *page_by_number[SP_PAGE_TABLE_SIZE];
    sp_page_t *cur;
    uint64_t cur_used;
    sp_page_t *array; /* holds 2 x cap elements */
    size_t n, cap, elem;
    bool prefix; /* elements are sp_sort_entry_t */
    sp_spill_t *spills;
    unsigned nspills, spills_cap, seq;

    /* key-ordered merges: spills mapped read-only, and the merge */
    void **maps;
    sp_kmerge_t *kmerge;
    /* sorter mode (external sort): iteration over the sorted output */
    bool iterating;
    const uint64_t *iter_ptrs;
    size_t iter_at;

    /* map-side combine: records aggregate by [u32 partition, big-endian][key] */
    sp_aggregator_t *agg;
    sp_combiner_t agg_combiner; /* strips the partition before the job's combine */
    unsigned char *agg_key;
    size_t agg_key_cap;

    /* bypass path (shuffle/bypass_writer.c) */
    sp_bypass_writer_t *bw;

    unsigned char *stage; /* SP_STAGE_BYTES of records on their way to the encoder */
    uint64_t merge_bytes; /* execution memory held for merge windows */

    sp_shuffle_write_stats_t stats;
};

static sp_status_t sp_writer_spill(sp_shuffle_writer_t *w);

/* ---- options ---- */

sp_status_t sp_shuffle_writer_options_init(sp_shuffle_writer_options_t *opts, const sp_conf_t *conf)
{
    const char *codec = NULL, *checksum = NULL;
    bool compress = true;
    int64_t level = 0;
    sp_status_t st;

    memset(opts, 0, sizeof(*opts));
    if ((st = sp_conf_get_bool(conf, "shuffle.compress", &compress)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.codec", &codec)) != SP_OK ||
        (st = sp_conf_get_int(conf, "shuffle.codec_level", &level)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.checksum", &checksum)) != SP_OK ||
        (st = sp_codec_parse(codec, &opts->codec)) != SP_OK ||
        (st = sp_checksum_parse(checksum, &opts->checksum)) != SP_OK)
        return st;
    if (!compress)
        opts->codec = SP_CODEC_NONE;
    opts->codec_level = (int)level;
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

/* ---- the record pages ---- */

static unsigned char *sp_writer_record(const sp_shuffle_writer_t *w, uint64_t ptr)
{
    return (unsigned char *)w->page_by_number[sp_shuffle_packed_ptr_page(ptr)]->data +
           sp_shuffle_packed_ptr_offset(ptr);
}

static void sp_record_key(const unsigned char *rec, const unsigned char **key_p, size_t *len_p)
{
    *key_p = rec + SP_RECORD_HEADER;
    *len_p = sp__le_get_u32(rec);
}

static size_t sp_record_size(const unsigned char *rec)
{
    return SP_RECORD_HEADER + (size_t)sp__le_get_u32(rec) + (size_t)sp__le_get_u32(rec + 4);
}

static void sp_writer_free_pages(sp_shuffle_writer_t *w)
{
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
        sp_page_t *p = w->page_by_number[i];
        if (p != NULL && p != w->array) {
            w->page_by_number[i] = NULL;
            sp_memory_consumer_page_free(&w->consumer, p);
        }
    }
    w->cur = NULL;
    w->cur_used = 0;
}

/* The task asks this consumer to free memory. */
static uint64_t sp_writer_spill_cb(sp_memory_consumer_t *consumer, uint64_t bytes,
                                   sp_memory_consumer_t *trigger)
{
    sp_shuffle_writer_t *w = sp_container_of(consumer, sp_shuffle_writer_t, consumer);
    uint64_t before = consumer->used;
    sp_status_t st;

    SP_UNUSED(bytes);
    SP_UNUSED(trigger);
    if (w->bypass || w->n == 0 || w->error != SP_OK || w->done)
        return 0;
    st = sp_writer_spill(w);
    if (st != SP_OK)
        w->error = st;
    return before > consumer->used ? before - consumer->used : 0;
}

static const sp_memory_consumer_ops_t sp_writer_consumer_ops = {
    .size = sizeof(sp_memory_consumer_ops_t),
    .spill = sp_writer_spill_cb,
};

static sp_status_t sp_writer_alloc_array(sp_shuffle_writer_t *w, size_t cap, sp_page_t **page_p)
{
    sp_page_t *page = NULL;
    sp_status_t st = sp_memory_consumer_page_alloc(&w->consumer, 2 * cap * w->elem, &page);

    if (st != SP_OK)
        return st;
    w->page_by_number[page->number] = page;
    *page_p = page;
    return SP_OK;
}

/* Doubles the pointer array, or spills when the memory is refused. */
static sp_status_t sp_writer_grow_array(sp_shuffle_writer_t *w)
{
    sp_page_t *bigger = NULL;
    sp_status_t st;

    st = sp_writer_alloc_array(w, 2 * w->cap, &bigger);
    if (w->error != SP_OK) { /* a spill inside the allocation failed */
        if (bigger != NULL) {
            w->page_by_number[bigger->number] = NULL;
            sp_memory_consumer_page_free(&w->consumer, bigger);
        }
        return w->error;
    }
    if (st == SP_ERR_MEMORY_REFUSED)
        return w->n == 0 ? SP_OK : sp_writer_spill(w);
    if (st != SP_OK)
        return st;
    /* A spill during the allocation may have emptied the array: either way
     * the live elements move to the bigger one. */
    memcpy(bigger->data, w->array->data, w->n * w->elem);
    w->page_by_number[w->array->number] = NULL;
    sp_memory_consumer_page_free(&w->consumer, w->array);
    w->array = bigger;
    w->cap *= 2;
    return SP_OK;
}

/* Makes room for a record of need bytes in the current page. */
static sp_status_t sp_writer_page_for(sp_shuffle_writer_t *w, uint64_t need)
{
    uint64_t size = SP_MAX(w->page_size, need);
    sp_page_t *page = NULL;
    sp_status_t st;

    if (w->cur != NULL && w->cur_used + need <= w->cur->size && w->cur_used <= SP_PAGE_MAX_OFFSET)
        return SP_OK;
    st = sp_memory_consumer_page_alloc(&w->consumer, size, &page);
    if (st == SP_ERR_MEMORY_REFUSED && w->error == SP_OK && w->n > 0) {
        st = sp_writer_spill(w);
        if (st != SP_OK)
            return st;
        st = sp_memory_consumer_page_alloc(&w->consumer, size, &page);
    }
    if (w->error != SP_OK) {
        if (page != NULL)
            sp_memory_consumer_page_free(&w->consumer, page);
        return w->error;
    }
    if (st == SP_ERR_MEMORY_REFUSED)
        return SP_RAISE(SP_ERR_MEMORY_REFUSED,
                        "shuffle %llu map %llu: no execution memory for a page of %llu bytes, "
                        "even after spilling",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        (unsigned long long)size);
    if (st != SP_OK)
        return st;
    w->page_by_number[page->number] = page;
    w->cur = page;
    w->cur_used = 0;
    return SP_OK;
}

static sp_status_t sp_writer_insert(sp_shuffle_writer_t *w, uint32_t partition, const void *key,
                                    size_t klen, const void *value, size_t vlen)
{
    uint64_t need = SP_RECORD_HEADER + (uint64_t)klen + vlen, ptr;
    unsigned char *rec;
    sp_status_t st;

    if (w->n == w->cap && (st = sp_writer_grow_array(w)) != SP_OK)
        return st;
    if ((st = sp_writer_page_for(w, need)) != SP_OK)
        return st;
    rec = (unsigned char *)w->cur->data + w->cur_used;
    sp__le_put_u32(rec, (uint32_t)klen);
    sp__le_put_u32(rec + 4, (uint32_t)vlen);
    if (klen != 0)
        memcpy(rec + SP_RECORD_HEADER, key, klen);
    if (vlen != 0)
        memcpy(rec + SP_RECORD_HEADER + klen, value, vlen);
    ptr = sp_shuffle_packed_ptr_encode(partition, w->cur->number, (uint32_t)w->cur_used);
    if (w->prefix) {
        sp_sort_entry_t *e = (sp_sort_entry_t *)w->array->data + w->n;
        e->prefix = sp__key_prefix(key, klen);
        e->ptr = ptr;
    } else {
        ((uint64_t *)w->array->data)[w->n] = ptr;
    }
    w->n++;
    w->cur_used += need;
    if (w->spill_records != 0 && w->n >= w->spill_records)
        return sp_writer_spill(w);
    return SP_OK;
}

/* ---- sorting ---- */

static int sp_writer_ptr_compare(const sp_shuffle_writer_t *w, uint64_t a, uint64_t b)
{
    const unsigned char *ka, *kb;
    size_t la, lb;

    sp_record_key(sp_writer_record(w, a), &ka, &la);
    sp_record_key(sp_writer_record(w, b), &kb, &lb);
    return sp_writer_compare(w, ka, la, kb, lb);
}

/* Stable merge sort of ptrs by key (tmp has room for n). */
static void sp_writer_merge_sort(const sp_shuffle_writer_t *w, uint64_t *a, uint64_t *tmp, size_t n)
{
    size_t mid = n / 2, i = 0, j, k = 0;

    if (n < 16) {
        for (size_t x = 1; x < n; x++) {
            uint64_t v = a[x];
            size_t y = x;
            while (y > 0 && sp_writer_ptr_compare(w, a[y - 1], v) > 0) {
                a[y] = a[y - 1];
                y--;
            }
            a[y] = v;
        }
        return;
    }
    sp_writer_merge_sort(w, a, tmp, mid);
    sp_writer_merge_sort(w, a + mid, tmp, n - mid);
    if (sp_writer_ptr_compare(w, a[mid - 1], a[mid]) <= 0)
        return;
    j = mid;
    while (i < mid && j < n)
        tmp[k++] = sp_writer_ptr_compare(w, a[j], a[i]) < 0 ? a[j++] : a[i++];
    while (i < mid)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof(*a));
}

/*
 * Sorts the array and returns the pointers in output order: by partition,
 * and by key within a partition when key ordering is on.
 */
static uint64_t *sp_writer_sort(sp_shuffle_writer_t *w)
{
    uint64_t t0 = sp__now_ns(), *out;

    if (w->prefix) {
        sp_sort_entry_t *a = w->array->data, *b = a + w->cap, *s;
        uint64_t *ptrs, *tmp;
        size_t run = 0;

        s = sp__radix_sort_entries(a, b, w->n);
        /* Pointers go to the other buffer; its second half is merge space. */
        ptrs = (uint64_t *)(void *)(s == a ? b : a);
        tmp = ptrs + w->n;
        for (size_t i = 0; i < w->n; i++)
            ptrs[i] = s[i].ptr;
        for (size_t i = 1; i <= w->n; i++) {
            if (i == w->n || s[i].prefix != s[run].prefix ||
                sp_shuffle_packed_ptr_partition(s[i].ptr) !=
                    sp_shuffle_packed_ptr_partition(s[run].ptr)) {
                if (i - run > 1)
                    sp_writer_merge_sort(w, ptrs + run, tmp, i - run);
                run = i;
            }
        }
        out = ptrs;
    } else {
        uint64_t *a = w->array->data, *b = a + w->cap;
        out = sp__radix_sort_ptrs(a, b, w->n);
        if (w->o.key_ordering) {
            uint64_t *tmp = out == a ? b : a;
            size_t run = 0;
            for (size_t i = 1; i <= w->n; i++) {
                if (i == w->n || sp_shuffle_packed_ptr_partition(out[i]) !=
                                     sp_shuffle_packed_ptr_partition(out[run])) {
                    if (i - run > 1)
                        sp_writer_merge_sort(w, out + run, tmp, i - run);
                    run = i;
                }
            }
        }
    }
    w->stats.sort_ns += sp__now_ns() - t0;
    return out;
}

/* ---- writing segments ---- */

static void sp_segment_begin(sp_shuffle_writer_t *w, sp_file_writer_t *fw)
{
    sp__checksum_init(&fw->cs, w->o.checksum);
    fw->checksumming = true;
    sp__encoder_begin(w->enc, sp__file_writer_sink, fw);
}

static sp_status_t sp_segment_end(sp_shuffle_writer_t *w, sp_file_writer_t *fw, uint64_t *len_p,
                                  uint64_t *checksum_p)
{
    sp_status_t st = sp__encoder_end(w->enc, len_p);

    fw->checksumming = false;
    *checksum_p = sp__checksum_final(&fw->cs);
    return st;
}

/*
 * Streams the sorted in-memory records to fw, one segment per non-empty
 * partition, appending each to segs (room for the number of partitions
 * present, at most n).
 */
static sp_status_t sp_writer_write_sorted(sp_shuffle_writer_t *w, const uint64_t *ptrs,
                                          sp_file_writer_t *fw, sp_spill_seg_t *segs,
                                          size_t *nsegs_p)
{
    size_t i = 0, nsegs = 0;
    sp_status_t st = SP_OK;

    while (i < w->n && st == SP_OK) {
        uint32_t p = sp_shuffle_packed_ptr_partition(ptrs[i]);
        sp_spill_seg_t *seg = &segs[nsegs++];
        size_t staged = 0;

        seg->partition = p;
        seg->offset = fw->offset;
        seg->records = 0;
        sp_segment_begin(w, fw);
        for (; i < w->n && sp_shuffle_packed_ptr_partition(ptrs[i]) == p && st == SP_OK; i++) {
            const unsigned char *rec;
            size_t size;

            /* Records lie all over the pages: fetch ahead of the gather. */
            if (i + SP_PREFETCH_AHEAD < w->n)
                __builtin_prefetch(sp_writer_record(w, ptrs[i + SP_PREFETCH_AHEAD]));
            rec = sp_writer_record(w, ptrs[i]);
            size = sp_record_size(rec);
            seg->records++;
            if (staged + size > SP_STAGE_BYTES) {
                st = sp__encoder_write(w->enc, w->stage, staged);
                staged = 0;
                if (st != SP_OK)
                    break;
            }
            if (size >= SP_STAGE_BYTES) {
                st = sp__encoder_write(w->enc, rec, size);
            } else {
                memcpy(w->stage + staged, rec, size);
                staged += size;
            }
        }
        if (st == SP_OK && staged != 0)
            st = sp__encoder_write(w->enc, w->stage, staged);
        if (st == SP_OK)
            st = sp_segment_end(w, fw, &seg->length, &seg->checksum);
        else
            fw->checksumming = false;
    }
    *nsegs_p = nsegs;
    return st;
}

static void sp_spill_free(sp_spill_t *s, bool unlink_file)
{
    if (s->path != NULL && unlink_file) {
        unlink(s->path);
        sp__tempfile_forget(s->path);
    }
    sp__free(s->path);
    sp__free(s->segs);
    s->path = NULL;
    s->segs = NULL;
}

/* Writes the records in memory to a new spill file in dir and frees their pages. */
static sp_status_t sp_writer_spill_to(sp_shuffle_writer_t *w, const char *dir)
{
    uint64_t t0 = sp__now_ns(), *ptrs;
    sp_file_writer_t fw;
    sp_spill_t spill = {0};
    char path[PATH_MAX];
    sp_status_t st;

    if (w->nspills == w->spills_cap) {
        unsigned cap = w->spills_cap != 0 ? 2 * w->spills_cap : 8;
        sp_spill_t *s = sp__realloc(w->spills, cap * sizeof(*s));
        if (s == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "shuffle %llu map %llu: no memory to track a spill",
                            (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
        w->spills = s;
        w->spills_cap = cap;
    }
    ptrs = sp_writer_sort(w);
    spill.segs = sp__malloc(SP_MIN((size_t)w->o.partitions, w->n) * sizeof(*spill.segs));
    if (spill.segs == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "shuffle %llu map %llu: no memory for spill segments",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
    snprintf(path, sizeof(path), "%s/spill_%llu_%llu_%u_%ld_%u.tmp", dir,
             (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id, w->o.attempt,
             (long)getpid(), w->seq++);
    spill.path = sp__strdup(path);
    if (spill.path == NULL) {
        sp__free(spill.segs);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the path of spill %s", path);
    }
    st = sp__file_writer_open(&fw, path, w->spill_buffer);
    if (st != SP_OK) {
        sp_spill_free(&spill, false);
        return st;
    }
    st = sp__data_header_write(&fw, w->o.codec, w->o.checksum);
    if (st == SP_OK)
        st = sp_writer_write_sorted(w, ptrs, &fw, spill.segs, &spill.nsegs);
    if (st == SP_OK)
        st = sp__file_writer_finish(&fw, false);
    if (st != SP_OK) {
        sp__file_writer_discard(&fw);
        sp_spill_free(&spill, false);
        return SP_RAISE(st, "shuffle %llu map %llu: spill to %s failed: %s",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id, path,
                        sp_last_error());
    }
    w->stats.spills++;
    w->stats.spill_bytes += fw.offset;
    spill.size = fw.offset;
    sp__file_writer_release(&fw);
    w->spills[w->nspills++] = spill;
    w->n = 0;
    sp_writer_free_pages(w);
    w->stats.spill_ns += sp__now_ns() - t0;
    return SP_OK;
}

static sp_status_t sp_writer_spill(sp_shuffle_writer_t *w)
{
    return sp_writer_spill_to(w, sp__shuffle_dirs_next(w->dirs));
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
    return sp_aggregator_insert(w->agg, w->agg_key, klen + 4, value, vlen);
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
        st = sp_writer_insert(
            w, (uint32_t)k[0] << 24 | (uint32_t)k[1] << 16 | (uint32_t)k[2] << 8 | (uint32_t)k[3],
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
    w->spill_records = (uint64_t)spill_records;
    w->spill_buffer = (size_t)spill_buffer;
    w->file_buffer = (size_t)file_buffer;
    w->bypass = opts->path == SP_WRITER_BYPASS ||
                (opts->path == SP_WRITER_AUTO && !opts->key_ordering && opts->combiner == NULL &&
                 (int64_t)opts->partitions <= bypass_threshold);
    w->prefix = opts->key_ordering && opts->compare == NULL;
    w->elem = w->prefix ? sizeof(sp_sort_entry_t) : sizeof(uint64_t);
    w->stats.bypass = w->bypass;
    if ((st = sp_conf_get_bool(conf, "shuffle.sync", &w->sync)) != SP_OK)
        goto err_free;
    {
        sp_memory_layout_t layout;
        sp_memory_manager_layout(sp_task_memory_manager(task), &layout);
        w->page_size = layout.page_bytes;
        w->unified = layout.unified_bytes;
    }
    if (opts->partitioner == SP_PARTITIONER_RANGE && opts->partitions > 1) {
        size_t bytes = 0, nsplits = opts->partitions - 1, at = 0;
        for (size_t i = 0; i < nsplits; i++)
            bytes += opts->split_keys[i].len;
        w->splits = sp__calloc(nsplits, sizeof(*w->splits));
        w->split_buf = sp__malloc(bytes + 1);
        if (w->splits == NULL || w->split_buf == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for %zu split keys", nsplits);
            goto err_free;
        }
        for (size_t i = 0; i < nsplits; i++) {
            if (opts->split_keys[i].len != 0)
                memcpy(w->split_buf + at, opts->split_keys[i].data, opts->split_keys[i].len);
            w->splits[i].data = w->split_buf + at;
            w->splits[i].len = opts->split_keys[i].len;
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
    st = sp__encoder_create(opts->codec, opts->codec_level, &w->enc);
    if (st != SP_OK)
        goto err_dirs;
    w->stage = sp__malloc(SP_STAGE_BYTES);
    if (w->stage == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the writer's staging buffer");
        sp__encoder_destroy(w->enc);
        goto err_dirs;
    }
    if (w->bypass) {
        st = sp__bypass_writer_create(task, &w->o, w->dirs, w->file_buffer, w->spill_buffer,
                                      &w->bw);
        if (st != SP_OK)
            goto err_stage;
    } else {
        sp_memory_consumer_init(&w->consumer, task, &sp_writer_consumer_ops, "shuffle sorter");
        w->cap = SP_INITIAL_RECORDS;
        st = sp_writer_alloc_array(w, w->cap, &w->array);
        if (st != SP_OK)
            goto err_consumer;
    }
    if (opts->combiner != NULL) {
        w->agg_combiner.combine = sp_writer_combine;
        w->agg_combiner.arg = w;
        st = sp_aggregator_create(task, conf, &w->agg_combiner, &w->agg);
        if (st != SP_OK)
            goto err_array;
    }
    *writer_p = w;
    return SP_OK;

err_array:
    w->page_by_number[w->array->number] = NULL;
    sp_memory_consumer_page_free(&w->consumer, w->array);
err_consumer:
    sp_memory_consumer_fini(&w->consumer);
err_stage:
    sp__free(w->stage);
    sp__encoder_destroy(w->enc);
err_dirs:
    sp__shuffle_dirs_destroy(w->dirs);
err_free:
    sp__free(w->splits);
    sp__free(w->split_buf);
    sp__free(w);
    return st;
}

static uint32_t sp_writer_partition_of(const sp_shuffle_writer_t *w, const void *key, size_t klen)
{
    size_t lo = 0, hi;

    if (w->o.partitioner == SP_PARTITIONER_HASH)
        return (uint32_t)(XXH3_64bits(key, klen) % w->o.partitions);
    if (w->o.partitions == 1)
        return 0;
    /* First split key >= key. */
    hi = w->o.partitions - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp_writer_compare(w, w->splits[mid].data, w->splits[mid].len, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)lo;
}

sp_status_t sp_shuffle_writer_write(sp_shuffle_writer_t *w, uint32_t partition, const void *key,
                                    size_t key_len, const void *value, size_t value_len)
{
    uint64_t need = SP_RECORD_HEADER + (uint64_t)key_len + value_len;
    sp_status_t st;

    if (w->error != SP_OK)
        return SP_RAISE(w->error, "shuffle %llu map %llu: the writer failed earlier",
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
    if ((key == NULL && key_len != 0) || (value == NULL && value_len != 0))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: NULL key or value bytes",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id);
    if (key_len > UINT32_MAX || value_len > UINT32_MAX || need > w->unified)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "shuffle %llu map %llu: a record of %llu bytes (key %zu, value %zu) is "
                        "larger than the executor's execution memory (%llu bytes)",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        (unsigned long long)need, key_len, value_len,
                        (unsigned long long)w->unified);
    if (w->agg != NULL)
        st = sp_writer_combine_insert(w, partition, key, key_len, value, value_len);
    else if (w->bypass)
        st = sp__bypass_writer_insert(w->bw, partition, key, key_len, value, value_len);
    else
        st = sp_writer_insert(w, partition, key, key_len, value, value_len);
    if (st != SP_OK) {
        w->error = st;
        return st;
    }
    w->stats.records++;
    w->stats.record_bytes += key_len + value_len;
    return SP_OK;
}

/* ---- merge ---- */

/* Maps every spill read-only (once) for merges that decode them. */
static sp_status_t sp_writer_map_spills(sp_shuffle_writer_t *w)
{
    if (w->maps != NULL)
        return SP_OK;
    w->maps = sp__calloc(w->nspills, sizeof(*w->maps));
    if (w->maps == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to map %u spills", w->nspills);
    for (unsigned s = 0; s < w->nspills; s++) {
        int fd;
        if (sp__fault_fire(SP_FAULT_READ)) {
            return SP_RAISE(SP_ERR_IO, "map spill %s: injected read fault", w->spills[s].path);
        }
        fd = open(w->spills[s].path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return SP_RAISE(SP_ERR_IO, "open spill %s: %s (errno %d)", w->spills[s].path,
                            strerror(errno), errno);
        w->maps[s] = mmap(NULL, w->spills[s].size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (w->maps[s] == MAP_FAILED) {
            w->maps[s] = NULL;
            return SP_RAISE(SP_ERR_IO, "map spill %s: %s (errno %d)", w->spills[s].path,
                            strerror(errno), errno);
        }
    }
    return SP_OK;
}

static void sp_writer_unmap_spills(sp_shuffle_writer_t *w)
{
    for (unsigned s = 0; w->maps != NULL && s < w->nspills; s++) {
        if (w->maps[s] != NULL)
            munmap(w->maps[s], w->spills[s].size);
    }
    sp__free(w->maps);
    w->maps = NULL;
}

/* Sets up the k-way merge of partition p's segments of every spill. */
static sp_status_t sp_writer_kmerge_partition(sp_shuffle_writer_t *w, uint32_t p, size_t *cursor)
{
    sp_status_t st = SP_OK;

    if (w->kmerge == NULL) {
        st = sp__kmerge_create(w->o.codec, w->o.compare, w->o.compare_arg, &w->kmerge);
        if (st != SP_OK)
            return st;
    }
    sp__kmerge_reset(w->kmerge);
    /* Spills in the order they were written: ties keep the write order. */
    for (unsigned s = 0; s < w->nspills && st == SP_OK; s++) {
        const sp_spill_seg_t *seg = &w->spills[s].segs[cursor[s]];
        if (cursor[s] >= w->spills[s].nsegs || seg->partition != p)
            continue;
        cursor[s]++;
        st =
            sp__kmerge_add(w->kmerge, (const unsigned char *)w->maps[s] + seg->offset, seg->length);
    }
    return st;
}

/* k-way merge by key of partition p's segments of every spill into out. */
static sp_status_t sp_writer_merge_ordered(sp_shuffle_writer_t *w, uint32_t p, size_t *cursor,
                                           sp_file_writer_t *out, uint64_t *len_p,
                                           uint64_t *records_p, uint64_t *checksum_p)
{
    sp_status_t st = sp_writer_kmerge_partition(w, p, cursor);
    bool begun = false, more = true;

    *records_p = 0;
    *len_p = 0;
    *checksum_p = sp__checksum_buf(w->o.checksum, "", 0);
    while (st == SP_OK) {
        const void *key, *value;
        size_t klen, vlen;
        unsigned char h[SP_RECORD_HEADER];

        st = sp__kmerge_next(w->kmerge, &key, &klen, &value, &vlen, &more);
        if (st != SP_OK || !more)
            break;
        if (!begun) {
            sp_segment_begin(w, out);
            begun = true;
        }
        sp__le_put_u32(h, (uint32_t)klen);
        sp__le_put_u32(h + 4, (uint32_t)vlen);
        if ((st = sp__encoder_write(w->enc, h, sizeof(h))) != SP_OK ||
            (st = sp__encoder_write(w->enc, key, klen)) != SP_OK ||
            (st = sp__encoder_write(w->enc, value, vlen)) != SP_OK)
            break;
        (*records_p)++;
    }
    if (st == SP_OK && begun)
        st = sp_segment_end(w, out, len_p, checksum_p);
    out->checksumming = false;
    return st;
}

/*
 * Merges the oldest count spills into one, partition by partition, by key.
 * The merged run replaces them at the front, so the order of runs (and of
 * equal keys) is kept.
 */
static sp_status_t sp_writer_merge_oldest(sp_shuffle_writer_t *w, unsigned count)
{
    unsigned total = w->nspills;
    size_t *cursor = sp__calloc(count, sizeof(*cursor)), nsegs = 0;
    sp_spill_t merged = {0};
    sp_file_writer_t fw = {.fd = -1};
    char path[PATH_MAX];
    sp_status_t st;

    for (unsigned s = 0; s < count; s++)
        nsegs += w->spills[s].nsegs;
    merged.segs =
        sp__malloc(SP_MAX(SP_MIN(nsegs, (size_t)w->o.partitions), 1) * sizeof(*merged.segs));
    snprintf(path, sizeof(path), "%s/spill_%llu_%llu_%u_%ld_%u.tmp", sp__shuffle_dirs_next(w->dirs),
             (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id, w->o.attempt,
             (long)getpid(), w->seq++);
    merged.path = sp__strdup(path);
    if (cursor == NULL || merged.segs == NULL || merged.path == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u runs", count);
        goto out;
    }
    if ((st = sp__file_writer_open(&fw, path, w->spill_buffer)) != SP_OK)
        goto out;
    st = sp__data_header_write(&fw, w->o.codec, w->o.checksum);
    /* The merge functions see only the group. */
    w->nspills = count;
    if (st == SP_OK)
        st = sp_writer_map_spills(w);
    while (st == SP_OK) {
        uint32_t p = UINT32_MAX;
        sp_spill_seg_t seg = {0};

        for (unsigned s = 0; s < count; s++) {
            if (cursor[s] < w->spills[s].nsegs)
                p = SP_MIN(p, w->spills[s].segs[cursor[s]].partition);
        }
        if (p == UINT32_MAX)
            break;
        seg.partition = p;
        seg.offset = fw.offset;
        st = sp_writer_merge_ordered(w, p, cursor, &fw, &seg.length, &seg.records, &seg.checksum);
        if (st == SP_OK && seg.records != 0)
            merged.segs[merged.nsegs++] = seg;
    }
    sp_writer_unmap_spills(w);
    w->nspills = total;
    if (st == SP_OK)
        st = sp__file_writer_finish(&fw, false);
    if (st != SP_OK) {
        sp__file_writer_discard(&fw);
        goto out;
    }
    merged.size = fw.offset;
    w->stats.spill_bytes += fw.offset;
    sp__file_writer_release(&fw);
    for (unsigned s = 0; s < count; s++)
        sp_spill_free(&w->spills[s], true);
    memmove(w->spills + 1, w->spills + count, (total - count) * sizeof(*w->spills));
    w->spills[0] = merged;
    w->nspills = total - count + 1;
    w->stats.merge_passes++;
    merged.path = NULL;
    merged.segs = NULL;
out:
    sp__free(cursor);
    sp__free(merged.path);
    sp__free(merged.segs);
    return st;
}

/*
 * A key-ordered merge holds a decode window per run. Memory for them comes
 * from the task; when it cannot cover every run, the oldest runs are merged
 * in groups until the rest fit.
 */
static sp_status_t sp_writer_limit_fan_in(sp_shuffle_writer_t *w)
{
    for (;;) {
        uint64_t want = (uint64_t)w->nspills * SP_MERGE_WINDOW;
        unsigned fan_in;
        sp_status_t st;

        if (w->merge_bytes < want)
            w->merge_bytes += sp_memory_consumer_acquire(&w->consumer, want - w->merge_bytes);
        fan_in = (unsigned)SP_MAX(2, w->merge_bytes / SP_MERGE_WINDOW);
        if (w->nspills <= fan_in)
            return SP_OK;
        if ((st = sp_writer_merge_oldest(w, fan_in)) != SP_OK)
            return st;
    }
}

/* Merges every spill into out, partition by partition. */
static sp_status_t sp_writer_merge(sp_shuffle_writer_t *w, sp_file_writer_t *out, uint64_t *lengths,
                                   uint64_t *records, uint64_t *checksums)
{
    int *fds = sp__calloc(w->nspills, sizeof(*fds));
    size_t *cursor = sp__calloc(w->nspills, sizeof(*cursor));
    sp_status_t st = SP_OK;
    unsigned opened = 0;

    if (fds == NULL || cursor == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u spills", w->nspills);
        goto out;
    }
    if (w->o.key_ordering) {
        st = sp_writer_limit_fan_in(w);
        if (st == SP_OK)
            st = sp_writer_map_spills(w);
    } else {
        for (; opened < w->nspills; opened++) {
            fds[opened] = open(w->spills[opened].path, O_RDONLY | O_CLOEXEC);
            if (fds[opened] < 0) {
                st = SP_RAISE(SP_ERR_IO, "open spill %s: %s (errno %d)", w->spills[opened].path,
                              strerror(errno), errno);
                goto out;
            }
        }
    }
    for (uint32_t p = 0; p < w->o.partitions && st == SP_OK; p++) {
        uint64_t start = out->offset, crc = 0;
        sp_checksum_t cs;
        bool combine = w->o.checksum == SP_CHECKSUM_CRC32C;

        if (w->o.key_ordering) {
            st =
                sp_writer_merge_ordered(w, p, cursor, out, &lengths[p], &records[p], &checksums[p]);
            continue;
        }
        sp__checksum_init(&cs, w->o.checksum);
        records[p] = 0;
        for (unsigned s = 0; s < w->nspills && st == SP_OK; s++) {
            const sp_spill_seg_t *seg = &w->spills[s].segs[cursor[s]];
            if (cursor[s] >= w->spills[s].nsegs || seg->partition != p)
                continue;
            cursor[s]++;
            st = sp__file_copy_range(out, fds[s], w->spills[s].path, seg->offset, seg->length,
                               combine ? NULL : &cs);
            if (combine)
                crc = sp__crc32c_combine((uint32_t)crc, (uint32_t)seg->checksum, seg->length);
            records[p] += seg->records;
        }
        lengths[p] = out->offset - start;
        checksums[p] = combine ? crc : sp__checksum_final(&cs);
    }
out:
    for (unsigned i = 0; i < opened; i++)
        close(fds[i]);
    sp__free(fds);
    sp__free(cursor);
    return st;
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
    sp_writer_free_pages(w);
    if (w->array != NULL) {
        w->page_by_number[w->array->number] = NULL;
        sp_memory_consumer_page_free(&w->consumer, w->array);
        w->array = NULL;
    }
    if (w->bw != NULL)
        sp__bypass_writer_release_memory(w->bw);
    if (w->merge_bytes != 0) {
        sp_memory_consumer_release(&w->consumer, w->merge_bytes);
        w->merge_bytes = 0;
    }
    w->n = 0;
}

/* Removes spill and bypass temporaries. */
static void sp_writer_drop_files(sp_shuffle_writer_t *w, const char *keep)
{
    sp_writer_unmap_spills(w);
    for (unsigned s = 0; s < w->nspills; s++)
        sp_spill_free(&w->spills[s], keep == NULL || strcmp(w->spills[s].path, keep) != 0);
    w->nspills = 0;
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
    uint64_t *lengths = NULL, *records = NULL, *checksums = NULL, t0 = sp__now_ns();
    char data_tmp[PATH_MAX];
    const char *renamed = NULL;
    sp_file_writer_t out = {.fd = -1};
    sp_status_t st;

    if (w->done)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: writer already %s",
                        (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                        w->committed ? "committed" : "aborted");
    if (w->error != SP_OK) {
        st = SP_RAISE(w->error, "shuffle %llu map %llu: cannot commit after an error",
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
    if (!w->bypass && w->nspills > 0 && w->n > 0) {
        /* The last run joins the others on disk, in the output directory so
         * that a single spill can be committed by renaming it. */
        st = sp_writer_spill_to(w, dir);
        if (st != SP_OK)
            goto err;
    }
    if (!w->bypass && w->nspills == 1 && strncmp(w->spills[0].path, dir, strlen(dir)) == 0 &&
        w->spills[0].path[strlen(dir)] == '/') {
        renamed = w->spills[0].path;
        snprintf(data_tmp, sizeof(data_tmp), "%s", renamed);
        sp_segs_to_arrays(w, w->spills[0].segs, w->spills[0].nsegs, lengths, records, checksums);
        if (w->sync && (st = sp_fsync_path(data_tmp)) != SP_OK)
            goto err;
    } else {
        sp_data_tmp_path(w, dir, data_tmp, sizeof(data_tmp));
        st = sp__file_writer_open(&out, data_tmp, w->spill_buffer);
        if (st != SP_OK)
            goto err;
        st = sp__data_header_write(&out, w->o.codec, w->o.checksum);
        if (st == SP_OK && w->bypass) {
            st = sp__bypass_writer_write_data(w->bw, &out, lengths, records, checksums);
        } else if (st == SP_OK && w->nspills == 0) {
            sp_spill_seg_t *segs =
                sp__malloc(SP_MAX(SP_MIN((size_t)w->o.partitions, w->n), 1) * sizeof(*segs));
            size_t nsegs = 0;
            if (segs == NULL) {
                st = SP_RAISE(SP_ERR_NOMEM, "no memory for the segments of %u partitions",
                              w->o.partitions);
            } else {
                st = sp_writer_write_sorted(w, sp_writer_sort(w), &out, segs, &nsegs);
                if (st == SP_OK)
                    sp_segs_to_arrays(w, segs, nsegs, lengths, records, checksums);
                sp__free(segs);
            }
        } else if (st == SP_OK) {
            st = sp_writer_merge(w, &out, lengths, records, checksums);
        }
        if (st == SP_OK)
            st = sp__file_writer_finish(&out, w->sync);
        if (st != SP_OK) {
            st = SP_RAISE(st, "shuffle %llu map %llu: writing %s failed: %s",
                          (unsigned long long)w->o.shuffle_id, (unsigned long long)w->o.map_id,
                          data_tmp, sp_last_error());
            goto err;
        }
        w->stats.output_bytes = out.offset;
    }
    if (renamed != NULL) {
        w->stats.output_bytes = SP_DATA_HEADER;
        for (uint32_t p = 0; p < w->o.partitions; p++)
            w->stats.output_bytes += lengths[p];
    }
    sp_writer_release_memory(w);
    st = sp__output_commit(dir, data_tmp, &w->o, lengths, records, checksums, w->sync, status_p);
    sp__file_writer_release(&out);
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
    if (out.path != NULL)
        sp__file_writer_discard(&out);
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
    sp__free(w->stage);
    if (!w->bypass)
        sp_memory_consumer_fini(&w->consumer);
    sp__kmerge_destroy(w->kmerge);
    sp__encoder_destroy(w->enc);
    sp__shuffle_dirs_destroy(w->dirs);
    sp__bypass_writer_destroy(w->bw);
    sp__free(w->spills);
    sp__free(w->splits);
    sp__free(w->split_buf);
    sp__free(w);
}

/* ---- sorter mode: the reduce side's external sort ---- */

sp_status_t sp__sorter_open(sp_task_memory_t *task, const sp_conf_t *conf,
                            sp_key_compare_fn_t compare, void *compare_arg,
                            sp_shuffle_writer_t **sorter_p)
{
    sp_shuffle_writer_options_t o;
    sp_status_t st = sp_shuffle_writer_options_init(&o, conf);

    if (st != SP_OK)
        return st;
    o.partitions = 1;
    o.key_ordering = true;
    o.compare = compare;
    o.compare_arg = compare_arg;
    o.path = SP_WRITER_SORT;
    return sp_shuffle_writer_open(task, conf, &o, sorter_p);
}

sp_status_t sp__sorter_insert(sp_shuffle_writer_t *w, const void *key, size_t key_len,
                              const void *value, size_t value_len)
{
    return sp_shuffle_writer_write(w, 0, key, key_len, value, value_len);
}

/* Ends the input: sorts what is in memory, or spills it and merges the runs. */
static sp_status_t sp_sorter_start(sp_shuffle_writer_t *w)
{
    size_t *cursor;
    sp_status_t st;

    if (w->error != SP_OK)
        return SP_RAISE(w->error, "external sort: the sorter failed earlier");
    w->iterating = true;
    w->done = true; /* no more records, and no spilling what is being read */
    if (w->nspills == 0) {
        w->iter_ptrs = sp_writer_sort(w);
        w->iter_at = 0;
        return SP_OK;
    }
    if (w->n > 0 && (st = sp_writer_spill(w)) != SP_OK)
        return st;
    if ((st = sp_writer_limit_fan_in(w)) != SP_OK || (st = sp_writer_map_spills(w)) != SP_OK)
        return st;
    cursor = sp__calloc(w->nspills, sizeof(*cursor));
    if (cursor == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u sorted runs", w->nspills);
    st = sp_writer_kmerge_partition(w, 0, cursor);
    sp__free(cursor);
    return st;
}

sp_status_t sp__sorter_next(sp_shuffle_writer_t *w, const void **key_p, size_t *key_len_p,
                            const void **value_p, size_t *value_len_p, bool *more_p)
{
    sp_status_t st;

    if (!w->iterating && (st = sp_sorter_start(w)) != SP_OK) {
        w->error = st;
        return st;
    }
    if (w->iter_ptrs == NULL)
        return sp__kmerge_next(w->kmerge, key_p, key_len_p, value_p, value_len_p, more_p);
    if (w->iter_at == w->n) {
        *more_p = false;
        return SP_OK;
    }
    {
        const unsigned char *rec = sp_writer_record(w, w->iter_ptrs[w->iter_at++]);
        size_t klen = sp__le_get_u32(rec);
        *key_p = rec + SP_RECORD_HEADER;
        *key_len_p = klen;
        *value_p = rec + SP_RECORD_HEADER + klen;
        *value_len_p = sp__le_get_u32(rec + 4);
        *more_p = true;
    }
    return SP_OK;
}
