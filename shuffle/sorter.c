/*
 * The sorter: records of a task kept in execution memory, sorted by
 * partition (and by key within a partition), spilled to run files when
 * memory runs out, and read back in sorted order. The map output writer's
 * sort path and the reduce side's external sort (one partition) use it.
 *
 * Memory. A record is serialized once, as [u32 key length][u32 value
 * length][key][value], into the current page of the sorter (a memory
 * consumer of the task); an 8-byte packed pointer [partition|page|offset]
 * goes to the pointer array, which lives in a page of its own together with
 * the equal-sized second buffer the radix sort needs. With key ordering in
 * byte order each array element also carries the key's 8-byte prefix.
 *
 * Sort. A radix sort on the partition bytes (shuffle/radix_sort.c), on the
 * prefix too with byte-order keys; a stable merge sort with the comparator
 * runs only within runs of equal partition (and prefix).
 *
 * Spill. When memory is refused (a page, a bigger array, another
 * consumer's request, or shuffle.spill_records) the array is sorted and the
 * records are streamed to a run file (shuffle/spill_run.c), one compressed,
 * checksummed segment per partition (the data file layout, docs/FORMATS.md),
 * and the pages are freed. The writer's data file is written the same way. Runs are kept oldest
 * first, so equal keys keep their insertion order through merges.
 *
 * Output. Without runs, the records are written (or iterated) straight from
 * memory. Otherwise the runs are merged partition by partition: unordered
 * output by copying segment byte ranges (copy_file_range; CRC-32C checksums
 * combined without reading), key-ordered output by a k-way merge of decoded
 * records (shuffle/kmerge.c) holding a decode window per run; when the task
 * cannot grant a window per run, the oldest runs are merged in groups first.
 *
 * Tuned for many small records: the insert is a bounds check and two
 * copies, the gather prefetches every cache line of the records ahead of
 * the encoder.
 */
#include "radix_sort.h"
#include "sorter.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SP_INITIAL_RECORDS 4096
/* Records staged per encoder call: large calls keep LZ4/zstd efficient. */
#define SP_STAGE_BYTES (64 * 1024)
/* Execution memory one input of a key-ordered merge needs (its decode window). */
#define SP_MERGE_WINDOW (256 * 1024)
/* How far ahead the partition-order gather prefetches records. */
#define SP_PREFETCH_AHEAD 16
/* Most bytes of a record the gather prefetches (four cache lines). */
#define SP_PREFETCH_SPAN_MAX 256

static sp_status_t sp_sorter_spill(sp_sorter_t *sr);

static int sp_bytes_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, SP_MIN(alen, blen));

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int sp_sorter_compare(const sp_sorter_t *sr, const void *a, size_t alen, const void *b,
                             size_t blen)
{
    if (sr->o.compare != NULL)
        return sr->o.compare(a, alen, b, blen, sr->o.compare_arg);
    return sp_bytes_compare(a, alen, b, blen);
}

/* ---- the record pages ---- */

static unsigned char *sp_sorter_record(const sp_sorter_t *sr, uint64_t ptr)
{
    return (unsigned char *)sr->page_by_number[sp_shuffle_packed_ptr_page(ptr)]->data +
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

static void sp_sorter_free_pages(sp_sorter_t *sr)
{
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
        sp_page_t *p = sr->page_by_number[i];
        if (p != NULL && p != sr->array) {
            sr->page_by_number[i] = NULL;
            sp_memory_consumer_page_free(&sr->consumer, p);
        }
    }
    sr->cur = NULL;
    sr->cur_used = 0;
}

/* The task asks this consumer to free memory. */
static uint64_t sp_sorter_spill_cb(sp_memory_consumer_t *consumer, uint64_t bytes,
                                   sp_memory_consumer_t *trigger)
{
    sp_sorter_t *sr = sp_container_of(consumer, sp_sorter_t, consumer);
    uint64_t before = consumer->used;
    sp_status_t st;

    SP_UNUSED(bytes);
    SP_UNUSED(trigger);
    if (sr->n == 0 || sr->error != SP_OK || sr->done)
        return 0;
    st = sp_sorter_spill(sr);
    if (st != SP_OK)
        sr->error = st;
    return before > consumer->used ? before - consumer->used : 0;
}

static const sp_memory_consumer_ops_t sp_sorter_consumer_ops = {
    .size = sizeof(sp_memory_consumer_ops_t),
    .spill = sp_sorter_spill_cb,
};

static sp_status_t sp_sorter_alloc_array(sp_sorter_t *sr, size_t cap, sp_page_t **page_p)
{
    sp_page_t *page = NULL;
    sp_status_t st = sp_memory_consumer_page_alloc(&sr->consumer, 2 * cap * sr->elem, &page);

    if (st != SP_OK)
        return st;
    sr->page_by_number[page->number] = page;
    *page_p = page;
    return SP_OK;
}

/* Doubles the pointer array, or spills when the memory is refused. */
static sp_status_t sp_sorter_grow_array(sp_sorter_t *sr)
{
    sp_page_t *bigger = NULL;
    sp_status_t st;

    st = sp_sorter_alloc_array(sr, 2 * sr->cap, &bigger);
    if (sr->error != SP_OK) { /* a spill inside the allocation failed */
        if (bigger != NULL) {
            sr->page_by_number[bigger->number] = NULL;
            sp_memory_consumer_page_free(&sr->consumer, bigger);
        }
        return sr->error;
    }
    if (st == SP_ERR_MEMORY_REFUSED)
        return sr->n == 0 ? SP_OK : sp_sorter_spill(sr);
    if (st != SP_OK)
        return st;
    /* A spill during the allocation may have emptied the array: either way
     * the live elements move to the bigger one. */
    memcpy(bigger->data, sr->array->data, sr->n * sr->elem);
    sr->page_by_number[sr->array->number] = NULL;
    sp_memory_consumer_page_free(&sr->consumer, sr->array);
    sr->array = bigger;
    sr->cap *= 2;
    return SP_OK;
}

/* Makes room for a record of need bytes in the current page. */
static sp_status_t sp_sorter_page_for(sp_sorter_t *sr, uint64_t need)
{
    uint64_t size = SP_MAX(sr->page_size, need);
    sp_page_t *page = NULL;
    sp_status_t st;

    if (sr->cur != NULL && sr->cur_used + need <= sr->cur->size &&
        sr->cur_used <= SP_PAGE_MAX_OFFSET)
        return SP_OK;
    st = sp_memory_consumer_page_alloc(&sr->consumer, size, &page);
    if (st == SP_ERR_MEMORY_REFUSED && sr->error == SP_OK && sr->n > 0) {
        st = sp_sorter_spill(sr);
        if (st != SP_OK)
            return st;
        st = sp_memory_consumer_page_alloc(&sr->consumer, size, &page);
    }
    if (sr->error != SP_OK) {
        if (page != NULL)
            sp_memory_consumer_page_free(&sr->consumer, page);
        return sr->error;
    }
    if (st == SP_ERR_MEMORY_REFUSED)
        return SP_RAISE(SP_ERR_MEMORY_REFUSED,
                        "shuffle %llu map %llu: no execution memory for a page of %llu bytes, "
                        "even after spilling",
                        (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id,
                        (unsigned long long)size);
    if (st != SP_OK)
        return st;
    sr->page_by_number[page->number] = page;
    sr->cur = page;
    sr->cur_used = 0;
    return SP_OK;
}

sp_status_t sp__sorter_insert(sp_sorter_t *sr, uint32_t partition, const void *key, size_t klen,
                              const void *value, size_t vlen)
{
    uint64_t need = SP_RECORD_HEADER + (uint64_t)klen + vlen, ptr;
    unsigned char *rec;
    sp_status_t st;

    if (sr->n == sr->cap && (st = sp_sorter_grow_array(sr)) != SP_OK)
        return st;
    if ((st = sp_sorter_page_for(sr, need)) != SP_OK)
        return st;
    rec = (unsigned char *)sr->cur->data + sr->cur_used;
    sp__le_put_u32(rec, (uint32_t)klen);
    sp__le_put_u32(rec + 4, (uint32_t)vlen);
    if (klen != 0)
        memcpy(rec + SP_RECORD_HEADER, key, klen);
    if (vlen != 0)
        memcpy(rec + SP_RECORD_HEADER + klen, value, vlen);
    ptr = sp_shuffle_packed_ptr_encode(partition, sr->cur->number, (uint32_t)sr->cur_used);
    if (sr->prefix) {
        sp_sort_entry_t *e = (sp_sort_entry_t *)sr->array->data + sr->n;
        e->prefix = sp__key_prefix(key, klen);
        e->ptr = ptr;
    } else {
        ((uint64_t *)sr->array->data)[sr->n] = ptr;
    }
    sr->n++;
    sr->record_bytes += need;
    sr->cur_used += need;
    if (sr->spill_records != 0 && sr->n >= sr->spill_records)
        return sp_sorter_spill(sr);
    return SP_OK;
}

/* ---- sorting ---- */

static int sp_sorter_ptr_compare(const sp_sorter_t *sr, uint64_t a, uint64_t b)
{
    const unsigned char *ka, *kb;
    size_t la, lb;

    sp_record_key(sp_sorter_record(sr, a), &ka, &la);
    sp_record_key(sp_sorter_record(sr, b), &kb, &lb);
    return sp_sorter_compare(sr, ka, la, kb, lb);
}

/* Stable merge sort of ptrs by key (tmp has room for n). */
static void sp_sorter_merge_sort(const sp_sorter_t *sr, uint64_t *a, uint64_t *tmp, size_t n)
{
    size_t mid = n / 2, i = 0, j, k = 0;

    if (n < 16) {
        for (size_t x = 1; x < n; x++) {
            uint64_t v = a[x];
            size_t y = x;
            while (y > 0 && sp_sorter_ptr_compare(sr, a[y - 1], v) > 0) {
                a[y] = a[y - 1];
                y--;
            }
            a[y] = v;
        }
        return;
    }
    sp_sorter_merge_sort(sr, a, tmp, mid);
    sp_sorter_merge_sort(sr, a + mid, tmp, n - mid);
    if (sp_sorter_ptr_compare(sr, a[mid - 1], a[mid]) <= 0)
        return;
    j = mid;
    while (i < mid && j < n)
        tmp[k++] = sp_sorter_ptr_compare(sr, a[j], a[i]) < 0 ? a[j++] : a[i++];
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
static uint64_t *sp_sorter_sort(sp_sorter_t *sr)
{
    uint64_t t0 = sp__now_ns(), *out;

    if (sr->prefix) {
        sp_sort_entry_t *a = sr->array->data, *b = a + sr->cap, *s;
        uint64_t *ptrs, *tmp;
        size_t run = 0;

        s = sp__radix_sort_entries(a, b, sr->n);
        /* Pointers go to the other buffer; its second half is merge space. */
        ptrs = (uint64_t *)(void *)(s == a ? b : a);
        tmp = ptrs + sr->n;
        for (size_t i = 0; i < sr->n; i++)
            ptrs[i] = s[i].ptr;
        for (size_t i = 1; i <= sr->n; i++) {
            if (i == sr->n || s[i].prefix != s[run].prefix ||
                sp_shuffle_packed_ptr_partition(s[i].ptr) !=
                    sp_shuffle_packed_ptr_partition(s[run].ptr)) {
                if (i - run > 1)
                    sp_sorter_merge_sort(sr, ptrs + run, tmp, i - run);
                run = i;
            }
        }
        out = ptrs;
    } else {
        uint64_t *a = sr->array->data, *b = a + sr->cap;
        out = sp__radix_sort_ptrs(a, b, sr->n);
        if (sr->o.key_ordering) {
            uint64_t *tmp = out == a ? b : a;
            size_t run = 0;
            for (size_t i = 1; i <= sr->n; i++) {
                if (i == sr->n || sp_shuffle_packed_ptr_partition(out[i]) !=
                                      sp_shuffle_packed_ptr_partition(out[run])) {
                    if (i - run > 1)
                        sp_sorter_merge_sort(sr, out + run, tmp, i - run);
                    run = i;
                }
            }
        }
    }
    sr->stats.sort_ns += sp__now_ns() - t0;
    return out;
}

/* ---- writing runs ---- */

/*
 * Streams the sorted in-memory records to rw, one segment per non-empty
 * partition. The gather's loads miss the caches on every record, so it
 * prefetches SP_PREFETCH_AHEAD records ahead, every cache line of the
 * record as far as the mean record size in memory reaches (exact for
 * fixed-size records; a 100-byte record and its header span two or three
 * lines, and prefetching only the first left the others to miss). Reading
 * each record's header first to learn its size measured slower.
 *
 * Records are copied once, straight into the encoder's input window (the
 * LZ4 block being filled, or the raw output buffer); a record that does not
 * fit in what is left of the window goes through sp__spill_run_write() on
 * its own, which splits it across blocks. Codecs that take no input in
 * place (zstd) get staged blocks of records.
 */
static sp_status_t sp_sorter_write_sorted(sp_sorter_t *sr, const uint64_t *ptrs,
                                          sp_spill_run_writer_t *rw)
{
    size_t i = 0, span = sr->n != 0 ? (size_t)SP_MIN(SP_MAX(sr->record_bytes / sr->n, (uint64_t)1),
                                                     (uint64_t)SP_PREFETCH_SPAN_MAX)
                                    : 1;
    sp_status_t st = SP_OK;

    while (i < sr->n && st == SP_OK) {
        uint32_t p = sp_shuffle_packed_ptr_partition(ptrs[i]);
        size_t staged = 0, count = 0, room = 0;
        unsigned char *win;

        if ((st = sp__spill_run_begin(rw, p)) != SP_OK)
            break;
        win = sp__spill_run_window(rw, &room);
        for (; i < sr->n && sp_shuffle_packed_ptr_partition(ptrs[i]) == p && st == SP_OK; i++) {
            const unsigned char *rec;
            size_t size;

            /* Records lie all over the pages: fetch every line of one ahead of the gather. */
            if (i + SP_PREFETCH_AHEAD < sr->n) {
                const unsigned char *q = sp_sorter_record(sr, ptrs[i + SP_PREFETCH_AHEAD]);
                __builtin_prefetch(q);
                for (size_t k = 64; k < span; k += 64)
                    __builtin_prefetch(q + k);
                __builtin_prefetch(q + span - 1);
            }
            rec = sp_sorter_record(sr, ptrs[i]);
            size = sp_record_size(rec);
            if (win != NULL) {
                if (size <= room - staged) {
                    memcpy(win + staged, rec, size);
                    staged += size;
                    count++;
                    continue;
                }
                /* The window is full: hand it over, then this record alone. */
                if ((st = sp__spill_run_wrote(rw, staged, count)) != SP_OK ||
                    (st = sp__spill_run_write(rw, rec, size, 1)) != SP_OK)
                    break;
                staged = 0;
                count = 0;
                win = sp__spill_run_window(rw, &room);
                continue;
            }
            if (staged + size > SP_STAGE_BYTES) {
                st = sp__spill_run_write(rw, sr->stage, staged, count);
                staged = 0;
                count = 0;
                if (st != SP_OK)
                    break;
            }
            if (size >= SP_STAGE_BYTES) {
                st = sp__spill_run_write(rw, rec, size, 1);
            } else {
                memcpy(sr->stage + staged, rec, size);
                staged += size;
                count++;
            }
        }
        if (st == SP_OK && staged != 0)
            st = win != NULL ? sp__spill_run_wrote(rw, staged, count)
                             : sp__spill_run_write(rw, sr->stage, staged, count);
        if (st == SP_OK)
            st = sp__spill_run_end(rw, NULL);
    }
    return st;
}

/* The path of the next run file in dir. */
static void sp_sorter_run_path(sp_sorter_t *sr, const char *dir, char *path, size_t len)
{
    snprintf(path, len, "%s/spill_%llu_%llu_%u_%ld_%u.tmp", dir,
             (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id, sr->o.attempt,
             (long)getpid(), sr->seq++);
}

sp_status_t sp__sorter_spill_to(sp_sorter_t *sr, const char *dir)
{
    uint64_t t0 = sp__now_ns(), *ptrs;
    sp_spill_run_writer_t rw;
    sp_spill_run_t run;
    char path[PATH_MAX];
    sp_status_t st;

    if (sr->nspills == sr->spills_cap) {
        unsigned cap = sr->spills_cap != 0 ? 2 * sr->spills_cap : 8;
        sp_spill_run_t *s = sp__realloc(sr->spills, cap * sizeof(*s));
        if (s == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "shuffle %llu map %llu: no memory to track a spill",
                            (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id);
        sr->spills = s;
        sr->spills_cap = cap;
    }
    ptrs = sp_sorter_sort(sr);
    sp_sorter_run_path(sr, dir, path, sizeof(path));
    st = sp__spill_run_open(&rw, path, sr->spill_buffer, sr->o.codec, sr->o.checksum, sr->enc);
    if (st != SP_OK && rw.fw.path == NULL)
        return st; /* not created */
    if (st == SP_OK)
        st = sp_sorter_write_sorted(sr, ptrs, &rw);
    if (st == SP_OK)
        st = sp__spill_run_finish(&rw, false, &run);
    if (st != SP_OK) {
        sp__spill_run_abort(&rw);
        return SP_RAISE(st, "shuffle %llu map %llu: spill to %s failed: %s",
                        (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id,
                        path, sp_last_error());
    }
    sr->stats.spills++;
    sr->stats.spill_bytes += run.size;
    sr->spills[sr->nspills++] = run;
    sr->n = 0;
    sr->record_bytes = 0;
    sp_sorter_free_pages(sr);
    sr->stats.spill_ns += sp__now_ns() - t0;
    return SP_OK;
}

static sp_status_t sp_sorter_spill(sp_sorter_t *sr)
{
    return sp__sorter_spill_to(sr, sp__shuffle_dirs_next(sr->dirs));
}

/* ---- merge ---- */

/* Maps every spill read-only (once) for merges that decode them. */
static sp_status_t sp_sorter_map_spills(sp_sorter_t *sr)
{
    if (sr->maps != NULL)
        return SP_OK;
    sr->maps = sp__calloc(sr->nspills, sizeof(*sr->maps));
    if (sr->maps == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to map %u spills", sr->nspills);
    for (unsigned s = 0; s < sr->nspills; s++) {
        sp_status_t st = sp__spill_run_map(&sr->spills[s], &sr->maps[s]);
        if (st != SP_OK)
            return st;
    }
    return SP_OK;
}

static void sp_sorter_unmap_spills(sp_sorter_t *sr)
{
    for (unsigned s = 0; sr->maps != NULL && s < sr->nspills; s++)
        sp__spill_run_unmap(&sr->spills[s], sr->maps[s]);
    sp__free(sr->maps);
    sr->maps = NULL;
}

/* Sets up the k-way merge of partition p's segments of every spill. */
static sp_status_t sp_sorter_kmerge_partition(sp_sorter_t *sr, uint32_t p, size_t *cursor)
{
    sp_status_t st = SP_OK;

    if (sr->kmerge == NULL) {
        st = sp__kmerge_create(sr->o.codec, sr->o.compare, sr->o.compare_arg, &sr->kmerge);
        if (st != SP_OK)
            return st;
    }
    sp__kmerge_reset(sr->kmerge);
    /* Spills in the order they were written: ties keep the write order. */
    for (unsigned s = 0; s < sr->nspills && st == SP_OK; s++) {
        const sp_spill_seg_t *seg = &sr->spills[s].segs[cursor[s]];
        if (cursor[s] >= sr->spills[s].nsegs || seg->partition != p)
            continue;
        cursor[s]++;
        st = sp__kmerge_add(sr->kmerge, (const unsigned char *)sr->maps[s] + seg->offset,
                            seg->length);
    }
    return st;
}

/*
 * k-way merge by key of partition p's segments of every spill into one
 * segment of out (none when they hold no record).
 */
static sp_status_t sp_sorter_merge_ordered(sp_sorter_t *sr, uint32_t p, size_t *cursor,
                                           sp_spill_run_writer_t *out, uint64_t *len_p,
                                           uint64_t *records_p, uint64_t *checksum_p)
{
    sp_status_t st = sp_sorter_kmerge_partition(sr, p, cursor);
    const sp_spill_seg_t *seg;
    bool begun = false, more = true;

    *records_p = 0;
    *len_p = 0;
    *checksum_p = sp__checksum_buf(sr->o.checksum, "", 0);
    while (st == SP_OK) {
        const void *key, *value;
        size_t klen, vlen;

        st = sp__kmerge_next(sr->kmerge, &key, &klen, &value, &vlen, &more);
        if (st != SP_OK || !more)
            break;
        if (!begun) {
            if ((st = sp__spill_run_begin(out, p)) != SP_OK)
                break;
            begun = true;
        }
        st = sp__spill_run_add(out, key, klen, value, vlen);
    }
    if (st == SP_OK && begun && (st = sp__spill_run_end(out, &seg)) == SP_OK) {
        *records_p = seg->records;
        *len_p = seg->length;
        *checksum_p = seg->checksum;
    }
    out->fw.checksumming = false;
    return st;
}

/*
 * Merges the oldest count spills into one, partition by partition, by key.
 * The merged run replaces them at the front, so the order of runs (and of
 * equal keys) is kept.
 */
static sp_status_t sp_sorter_merge_oldest(sp_sorter_t *sr, unsigned count)
{
    unsigned total = sr->nspills;
    size_t *cursor = sp__calloc(count, sizeof(*cursor));
    sp_spill_run_t merged = {0};
    sp_spill_run_writer_t rw;
    char path[PATH_MAX];
    sp_status_t st;

    if (cursor == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u runs", count);
    sp_sorter_run_path(sr, sp__shuffle_dirs_next(sr->dirs), path, sizeof(path));
    st = sp__spill_run_open(&rw, path, sr->spill_buffer, sr->o.codec, sr->o.checksum, sr->enc);
    if (st != SP_OK) {
        sp__spill_run_abort(&rw);
        sp__free(cursor);
        return st;
    }
    /* The merge functions see only the group. */
    sr->nspills = count;
    st = sp_sorter_map_spills(sr);
    while (st == SP_OK) {
        uint32_t p = UINT32_MAX;
        uint64_t len, records, checksum;

        for (unsigned s = 0; s < count; s++) {
            if (cursor[s] < sr->spills[s].nsegs)
                p = SP_MIN(p, sr->spills[s].segs[cursor[s]].partition);
        }
        if (p == UINT32_MAX)
            break;
        st = sp_sorter_merge_ordered(sr, p, cursor, &rw, &len, &records, &checksum);
    }
    sp_sorter_unmap_spills(sr);
    sr->nspills = total;
    if (st == SP_OK)
        st = sp__spill_run_finish(&rw, false, &merged);
    sp__free(cursor);
    if (st != SP_OK) {
        sp__spill_run_abort(&rw);
        return st;
    }
    sr->stats.spill_bytes += merged.size;
    for (unsigned s = 0; s < count; s++)
        sp__spill_run_drop(&sr->spills[s], true);
    memmove(sr->spills + 1, sr->spills + count, (total - count) * sizeof(*sr->spills));
    sr->spills[0] = merged;
    sr->nspills = total - count + 1;
    sr->stats.merge_passes++;
    return SP_OK;
}

/*
 * A key-ordered merge holds a decode window per run. Memory for them comes
 * from the task; when it cannot cover every run, the oldest runs are merged
 * in groups until the rest fit.
 */
static sp_status_t sp_sorter_limit_fan_in(sp_sorter_t *sr)
{
    for (;;) {
        uint64_t want = (uint64_t)sr->nspills * SP_MERGE_WINDOW;
        unsigned fan_in;
        sp_status_t st;

        if (sr->merge_bytes < want)
            sr->merge_bytes += sp_memory_consumer_acquire(&sr->consumer, want - sr->merge_bytes);
        fan_in = (unsigned)SP_MAX(2, sr->merge_bytes / SP_MERGE_WINDOW);
        if (sr->nspills <= fan_in)
            return SP_OK;
        if ((st = sp_sorter_merge_oldest(sr, fan_in)) != SP_OK)
            return st;
    }
}

sp_status_t sp__sorter_merge(sp_sorter_t *sr, sp_spill_run_writer_t *out, uint64_t *lengths,
                             uint64_t *records, uint64_t *checksums)
{
    int *fds = sp__calloc(sr->nspills, sizeof(*fds));
    size_t *cursor = sp__calloc(sr->nspills, sizeof(*cursor));
    sp_status_t st = SP_OK;
    unsigned opened = 0;

    if (fds == NULL || cursor == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u spills", sr->nspills);
        goto out;
    }
    if (sr->o.key_ordering) {
        st = sp_sorter_limit_fan_in(sr);
        if (st == SP_OK)
            st = sp_sorter_map_spills(sr);
    } else {
        for (; opened < sr->nspills; opened++) {
            fds[opened] = open(sr->spills[opened].path, O_RDONLY | O_CLOEXEC);
            if (fds[opened] < 0) {
                st = SP_RAISE(SP_ERR_IO, "open spill %s: %s (errno %d)", sr->spills[opened].path,
                              strerror(errno), errno);
                goto out;
            }
        }
    }
    for (uint32_t p = 0; p < sr->o.partitions && st == SP_OK; p++) {
        uint64_t start = out->fw.offset, crc = 0;
        sp_checksum_t cs;
        bool combine = sr->o.checksum == SP_CHECKSUM_CRC32C;

        if (sr->o.key_ordering) {
            st = sp_sorter_merge_ordered(sr, p, cursor, out, &lengths[p], &records[p],
                                         &checksums[p]);
            continue;
        }
        sp__checksum_init(&cs, sr->o.checksum);
        records[p] = 0;
        for (unsigned s = 0; s < sr->nspills && st == SP_OK; s++) {
            const sp_spill_seg_t *seg = &sr->spills[s].segs[cursor[s]];
            if (cursor[s] >= sr->spills[s].nsegs || seg->partition != p)
                continue;
            cursor[s]++;
            st = sp__file_copy_range(&out->fw, fds[s], sr->spills[s].path, seg->offset, seg->length,
                                     combine ? NULL : &cs);
            if (combine)
                crc = sp__crc32c_combine((uint32_t)crc, (uint32_t)seg->checksum, seg->length);
            records[p] += seg->records;
        }
        lengths[p] = out->fw.offset - start;
        checksums[p] = combine ? crc : sp__checksum_final(&cs);
    }
out:
    for (unsigned i = 0; i < opened; i++)
        close(fds[i]);
    sp__free(fds);
    sp__free(cursor);
    return st;
}

/* ---- output ---- */

sp_status_t sp__sorter_write(sp_sorter_t *sr, sp_spill_run_writer_t *out)
{
    return sp_sorter_write_sorted(sr, sp_sorter_sort(sr), out);
}

void sp__sorter_release_memory(sp_sorter_t *sr)
{
    sp_sorter_free_pages(sr);
    if (sr->array != NULL) {
        sr->page_by_number[sr->array->number] = NULL;
        sp_memory_consumer_page_free(&sr->consumer, sr->array);
        sr->array = NULL;
    }
    if (sr->merge_bytes != 0) {
        sp_memory_consumer_release(&sr->consumer, sr->merge_bytes);
        sr->merge_bytes = 0;
    }
    sr->n = 0;
    sr->record_bytes = 0;
    sr->done = true;
}

void sp__sorter_drop_files(sp_sorter_t *sr, const char *keep)
{
    sp_sorter_unmap_spills(sr);
    for (unsigned s = 0; s < sr->nspills; s++)
        sp__spill_run_drop(&sr->spills[s], keep == NULL || strcmp(sr->spills[s].path, keep) != 0);
    sr->nspills = 0;
}

/* ---- create / destroy ---- */

sp_status_t sp__sorter_create(sp_task_memory_t *task, const sp_conf_t *conf,
                              const sp_shuffle_writer_options_t *o, sp_sorter_t **sorter_p)
{
    int64_t spill_records = 0;
    uint64_t spill_buffer = 0;
    sp_memory_layout_t layout;
    sp_sorter_t *sr;
    sp_status_t st;

    if ((st = sp_conf_get_int(conf, "shuffle.spill_records", &spill_records)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.spill_buffer", &spill_buffer)) != SP_OK)
        return st;
    sr = sp__calloc(1, sizeof(*sr));
    if (sr == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle sorter");
    sr->o = *o;
    sr->o.split_keys = NULL; /* the writer's; the sorter does not partition */
    sr->spill_records = (uint64_t)spill_records;
    sr->spill_buffer = (size_t)spill_buffer;
    sr->prefix = o->key_ordering && o->compare == NULL;
    sr->elem = sr->prefix ? sizeof(sp_sort_entry_t) : sizeof(uint64_t);
    sp_memory_manager_layout(sp_task_memory_manager(task), &layout);
    sr->page_size = layout.page_bytes;
    sr->unified = layout.unified_bytes;
    st = sp__shuffle_dirs_create(conf, &sr->dirs);
    if (st != SP_OK)
        goto err_free;
    st = sp__encoder_create(o->codec, o->codec_level, &sr->enc);
    if (st != SP_OK)
        goto err_dirs;
    sr->stage = sp__malloc(SP_STAGE_BYTES);
    if (sr->stage == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the writer's staging buffer");
        goto err_encoder;
    }
    sp_memory_consumer_init(&sr->consumer, task, &sp_sorter_consumer_ops, "shuffle sorter");
    sr->cap = SP_INITIAL_RECORDS;
    st = sp_sorter_alloc_array(sr, sr->cap, &sr->array);
    if (st != SP_OK)
        goto err_consumer;
    *sorter_p = sr;
    return SP_OK;

err_consumer:
    sp_memory_consumer_fini(&sr->consumer);
    sp__free(sr->stage);
err_encoder:
    sp__encoder_destroy(sr->enc);
err_dirs:
    sp__shuffle_dirs_destroy(sr->dirs);
err_free:
    sp__free(sr);
    return st;
}

void sp__sorter_destroy(sp_sorter_t *sr)
{
    if (sr == NULL)
        return;
    sp__sorter_drop_files(sr, NULL);
    sp__sorter_release_memory(sr);
    sp_memory_consumer_fini(&sr->consumer);
    sp__kmerge_destroy(sr->kmerge);
    sp__encoder_destroy(sr->enc);
    sp__shuffle_dirs_destroy(sr->dirs);
    sp__free(sr->stage);
    sp__free(sr->spills);
    sp__free(sr);
}

/* ---- external sort ---- */

sp_status_t sp__sorter_add(sp_sorter_t *sr, const void *key, size_t key_len, const void *value,
                           size_t value_len)
{
    sp_status_t st;

    if (sr->error != SP_OK)
        return SP_RAISE(sr->error, "shuffle %llu map %llu: the writer failed earlier",
                        (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id);
    if (sr->done)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle %llu map %llu: writer already aborted",
                        (unsigned long long)sr->o.shuffle_id, (unsigned long long)sr->o.map_id);
    if ((st = sp__record_check(&sr->o, sr->unified, key, key_len, value, value_len)) != SP_OK)
        return st;
    st = sp__sorter_insert(sr, 0, key, key_len, value, value_len);
    if (st != SP_OK)
        sr->error = st;
    return st;
}

/* Ends the input: sorts what is in memory, or spills it and merges the runs. */
static sp_status_t sp_sorter_start(sp_sorter_t *sr)
{
    size_t *cursor;
    sp_status_t st;

    if (sr->error != SP_OK)
        return SP_RAISE(sr->error, "external sort: the sorter failed earlier");
    sr->iterating = true;
    sr->done = true; /* no more records, and no spilling what is being read */
    if (sr->nspills == 0) {
        sr->iter_ptrs = sp_sorter_sort(sr);
        sr->iter_at = 0;
        return SP_OK;
    }
    if (sr->n > 0 && (st = sp_sorter_spill(sr)) != SP_OK)
        return st;
    if ((st = sp_sorter_limit_fan_in(sr)) != SP_OK || (st = sp_sorter_map_spills(sr)) != SP_OK)
        return st;
    cursor = sp__calloc(sr->nspills, sizeof(*cursor));
    if (cursor == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to merge %u sorted runs", sr->nspills);
    st = sp_sorter_kmerge_partition(sr, 0, cursor);
    sp__free(cursor);
    return st;
}

sp_status_t sp__sorter_next(sp_sorter_t *sr, const void **key_p, size_t *key_len_p,
                            const void **value_p, size_t *value_len_p, bool *more_p)
{
    sp_status_t st;

    if (!sr->iterating && (st = sp_sorter_start(sr)) != SP_OK) {
        sr->error = st;
        return st;
    }
    if (sr->iter_ptrs == NULL)
        return sp__kmerge_next(sr->kmerge, key_p, key_len_p, value_p, value_len_p, more_p);
    if (sr->iter_at == sr->n) {
        *more_p = false;
        return SP_OK;
    }
    {
        const unsigned char *rec = sp_sorter_record(sr, sr->iter_ptrs[sr->iter_at++]);
        size_t klen = sp__le_get_u32(rec);
        *key_p = rec + SP_RECORD_HEADER;
        *key_len_p = klen;
        *value_p = rec + SP_RECORD_HEADER + klen;
        *value_len_p = sp__le_get_u32(rec + 4);
        *more_p = true;
    }
    return SP_OK;
}
