/*
 * Hash aggregation with spill: groups (key, value) records by key and
 * combines each key's values with the caller's combiner, in the execution
 * memory of one task. It serves the reduce side's aggregation and the map
 * side's combine.
 *
 * In memory. The aggregator is a memory consumer of its task. Each distinct
 * key has one record, [u32 key length][u32 value length][u32 value room]
 * [key][value] (host byte order), appended to the current execution page
 * (memory.page_size, or one page of the record's own size when it is
 * bigger). An open-addressing table with linear probing finds the records:
 * a slot holds the key's XXH3-64 hash and a direct pointer to its record
 * (NULL: empty), 16 bytes, four slots to a cache line; the hash is the
 * slot's fingerprint, so a probe reads a record only when the hashes are
 * equal. The table is one page of its own, doubled past 0.7 load.
 *
 * Batches. With millions of keys each lookup misses the caches twice (the
 * slot's line, then the record). The reader and the writer's combine add
 * records through sp__aggregator_add(), which copies key and value into a
 * 4 KiB staging area once the table outgrows 512 KiB (a smaller one stays
 * in the caches, where staging only costs; records over 512 bytes are not
 * staged either), hashes the key
 * and prefetches its slot line; when 16 are staged (or at the public
 * insert, or at the first next) the batch is resolved: first the record of
 * each batch member's home slot whose hash matches is prefetched, then the
 * lookups run in staging order, their misses now overlapping. Staged
 * records are not in the table, so a spill asked for meanwhile leaves them
 * for the table that follows it, after the spilled run in value order.
 * A value for a key already present is combined with the stored one into a
 * scratch buffer; the result goes back in place when it fits the record's
 * room, else a new copy of the record is appended (with a quarter more room,
 * so a growing value moves O(log n) times) and the slot repointed; the old
 * copy is dead space until the next spill.
 *
 * Spill. When a page or a bigger table is refused (or the task's page table
 * is full), or another consumer of the task asks, the occupied slots are
 * sorted by (hash, key bytes) and written as one run file in
 * shuffle.local_dirs; then every page is freed and the table dropped. A run
 * is a spill run (shuffle/spill_run.c, the layout of docs/FORMATS.md) with
 * one partition: the 8-byte data header, then independent segments
 * ("chunks") of records [u32 klen][u32 vlen][key][value], each compressed
 * with shuffle.codec and checksummed with shuffle.checksum; a chunk ends with
 * the record that brings it to one page (bounded to 16..256 KiB). The
 * segment table (offset, length, records, checksum) stays in memory; each
 * chunk's checksum and the run's record count are checked when the run is
 * read back one chunk at a time. A run holds each key once.
 *
 * Order of values. Runs are kept in spill order and a key's values are
 * combined in insertion order everywhere: in memory (stored, then new),
 * across runs (earlier run first), in merge passes (adjacent runs only). So
 * the combiner only needs to be associative, as its contract says.
 *
 * Output. Without spills the table is iterated in place. Otherwise what is
 * left in memory is spilled too and the runs are merged by (hash, key) with
 * the shuffle's k-way merge heap (shuffle/kmerge.c; each run a source
 * ranked by key hash), a key's values from every run combined into one; each run
 * is read one chunk at a time (a chunk buffer and a segment reader window
 * per run), so a run may be far larger than memory. The merge's buffers are
 * acquired as execution memory; when the grant does not cover every run,
 * groups of adjacent runs are first merged into single runs until it does.
 * A spill asked for while the table is iterated writes the slots not yet
 * returned as a run and frees every page but the one of the record returned
 * last (the caller may still be reading it); the output continues from that
 * run. Memory held by a merge cannot be spilled.
 *
 * Errors. A failed spill inside the spill callback is kept (sticky) with its
 * message and returned by the next insert or next; after any error other
 * than a rejected input record, the aggregator can only be destroyed, which
 * removes every run file and frees everything.
 *
 * Tuned for many small records with skewed keys (word counts, per-key sums):
 * a hot key costs a probe and an in-place combine, never memory; returning
 * or spilling the table reads records in slot order, prefetched 16 slots
 * ahead.
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SP_AGG_REC_HEADER      12
#define SP_AGG_MAX_CHUNK       ((uint64_t)256 * 1024)
#define SP_AGG_MIN_CHUNK       ((uint64_t)16 * 1024)
#define SP_AGG_READER_WINDOW   ((uint64_t)256 * 1024) /* a segment reader's window */
#define SP_AGG_MAX_FANIN       64
#define SP_AGG_INITIAL_SLOTS   4096
#define SP_AGG_MIN_SLOTS       256
#define SP_AGG_INITIAL_SCRATCH 1024
#define SP_AGG_BATCH           16   /* records staged before their lookups are resolved */
#define SP_AGG_STAGE_BYTES     4096 /* key and value bytes staged at most */
#define SP_AGG_STAGE_MAX       512  /* bigger records are not staged */
#define SP_AGG_PREFETCH_AHEAD  16   /* slots looked ahead when returning or spilling */

/*
 * Test hook: the mask applied to every key hash (all ones in normal use).
 * Tests narrow it to force equal hashes of different keys. Read once, when
 * an aggregator is created.
 */
uint64_t sp__aggregator_hash_mask = UINT64_MAX;

/*
 * Tunable (tests set 0 to stage every record): sp__aggregator_add() stages
 * records only once the table is bigger than this many bytes. A smaller
 * table and its records stay in the caches, where a lookup does not miss
 * and the staging copy only costs (word count, 10k distinct words: 31 ns a
 * record direct, 48 staged). Read once, when an aggregator is created.
 */
uint64_t sp__aggregator_stage_table_bytes = (uint64_t)512 * 1024;

/*
 * 16 bytes, four to a cache line: the full key hash is the slot's
 * fingerprint, so a probe reads the record only when the hashes are equal.
 */
typedef struct sp_agg_slot {
    uint64_t hash;
    unsigned char *rec; /* NULL: empty */
} sp_agg_slot_t;

/* A record staged by sp__aggregator_add(): its bytes are in agg->stage. */
typedef struct sp_agg_staged {
    uint64_t hash;
    uint32_t off, klen, vlen;
} sp_agg_staged_t;

/* Reads one run sequentially, one chunk at a time: a source of the merge. */
typedef struct sp_agg_cursor {
    sp_aggregator_t *agg;
    const sp_spill_run_t *run; /* its segments are the chunks */
    int fd;
    size_t next_chunk;
    unsigned char *buf; /* the stored bytes of the current chunk */
    size_t cap;
    sp_segment_reader_t *reader;
    uint64_t read; /* records read so far */
    uint64_t hash; /* of the current record */
    const void *key, *value;
    size_t klen, vlen;
} sp_agg_cursor_t;

typedef struct sp_agg_merge {
    sp_agg_cursor_t *cur;
    size_t n;          /* cursors opened (for cleanup) */
    sp_kmerge_t *heap; /* of the cursors, by (hash, key, run order) */
    bool pending;      /* the heap's last record starts the next key */
    const void *pkey, *pvalue;
    size_t pklen, pvlen;
    unsigned char *key; /* the key being returned */
    size_t key_cap;
    unsigned char *acc; /* its combined value */
    size_t acc_cap;
    bool open;
} sp_agg_merge_t;

typedef enum sp_agg_phase {
    SP_AGG_INSERT = 0, /* taking records */
    SP_AGG_TABLE = 1,  /* returning the in-memory table */
    SP_AGG_MERGE = 2,  /* returning the merge of the runs */
    SP_AGG_DONE = 3,
} sp_agg_phase_t;

struct sp_aggregator {
    sp_memory_consumer_t consumer;
    sp_task_memory_t *task;
    uint64_t task_id;
    sp_combiner_t comb;
    sp_shuffle_dirs_t *dirs;
    sp_encoder_t *enc;
    sp_codec_t codec;
    sp_checksum_kind_t checksum;
    uint64_t unified, page_size, chunk_bytes, hash_mask, instance;
    uint64_t stage_table_bytes; /* stage records once the table is bigger */
    size_t spill_buffer;
    sp_agg_phase_t phase;
    sp_status_t error; /* sticky */
    char errmsg[256];  /* the message of the sticky error */

    /* memory */
    sp_page_t *pages[SP_PAGE_TABLE_SIZE]; /* record pages by page number */
    uint32_t npages;
    sp_page_t *cur; /* page records are appended to */
    uint64_t cur_used;
    sp_page_t *table; /* slots */
    size_t slots;     /* a power of two; 0 without a table */
    size_t keys;      /* occupied slots */
    uint64_t wasted;  /* bytes of records that moved */
    uint64_t epoch;   /* counts spills; a change means memory was emptied */
    unsigned char *scratch;
    size_t scratch_cap;

    /* output */
    size_t iter;               /* TABLE: next slot to look at */
    const unsigned char *last; /* TABLE: record returned last */
    sp_page_t *pinned;         /* page of that record kept over a spill */
    uint64_t merge_bytes;      /* execution memory held for the merge */

    /* runs */
    sp_spill_run_t *runs;
    size_t nruns, runs_cap;
    unsigned seq;
    sp_agg_merge_t m;

    /* staged records (sp__aggregator_add), resolved as one batch */
    sp_agg_staged_t staged[SP_AGG_BATCH];
    size_t nstaged;
    size_t stage_used;
    unsigned char stage[SP_AGG_STAGE_BYTES];

    sp_aggregator_stats_t stats;
};

static atomic_uint_fast64_t sp_agg_instances;

/* ---- helpers ---- */

static uint32_t sp_agg_load32(const unsigned char *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static void sp_agg_store32(unsigned char *p, uint32_t v) { memcpy(p, &v, sizeof(v)); }

static size_t sp_rec_klen(const unsigned char *rec) { return sp_agg_load32(rec); }
static size_t sp_rec_vlen(const unsigned char *rec) { return sp_agg_load32(rec + 4); }
static size_t sp_rec_room(const unsigned char *rec) { return sp_agg_load32(rec + 8); }
static const unsigned char *sp_rec_key(const unsigned char *rec) { return rec + SP_AGG_REC_HEADER; }

static unsigned char *sp_rec_value(unsigned char *rec)
{
    return rec + SP_AGG_REC_HEADER + sp_rec_klen(rec);
}

static int sp_agg_key_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = alen != 0 && blen != 0 ? memcmp(a, b, SP_MIN(alen, blen)) : 0;

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static uint64_t sp_agg_hash(const sp_aggregator_t *agg, const void *key, size_t klen)
{
    return XXH3_64bits(klen != 0 ? key : "", klen) & agg->hash_mask;
}

static void sp_agg_peak(sp_aggregator_t *agg)
{
    agg->stats.peak_bytes = SP_MAX(agg->stats.peak_bytes, agg->consumer.used);
}

/* Makes the error sticky, keeping its message for later calls. */
static sp_status_t sp_agg_fail(sp_aggregator_t *agg, sp_status_t st)
{
    if (agg->error == SP_OK) {
        agg->error = st;
        snprintf(agg->errmsg, sizeof(agg->errmsg), "%s", sp_last_error());
    }
    return st;
}

static sp_status_t sp_agg_sticky(const sp_aggregator_t *agg)
{
    return SP_RAISE(agg->error, "task %llu aggregator: failed earlier: %s",
                    (unsigned long long)agg->task_id, agg->errmsg);
}

/*
 * Combines a and b of key into the scratch buffer (*len_p bytes), growing
 * the scratch when the combiner asks for more room.
 */
static sp_status_t sp_agg_combine(sp_aggregator_t *agg, const void *key, size_t klen, const void *a,
                                  size_t alen, const void *b, size_t blen, size_t *len_p)
{
    for (unsigned tries = 0;; tries++) {
        size_t n = agg->comb.combine(agg->comb.arg, key, klen, a, alen, b, blen, agg->scratch,
                                     agg->scratch_cap);
        unsigned char *bigger;

        if (n <= agg->scratch_cap) {
            *len_p = n;
            return SP_OK;
        }
        if (n > UINT32_MAX || SP_AGG_REC_HEADER + (uint64_t)klen + n > agg->unified)
            return SP_RAISE(SP_ERR_TOO_LARGE,
                            "task %llu aggregator: a combined value of %zu bytes (key of %zu "
                            "bytes) is larger than the executor's unified memory (%llu bytes)",
                            (unsigned long long)agg->task_id, n, klen,
                            (unsigned long long)agg->unified);
        if (tries == 2)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "task %llu aggregator: the combiner asks for %zu bytes after being "
                            "given what it asked for",
                            (unsigned long long)agg->task_id, n);
        bigger = sp__malloc(SP_MAX(n, 2 * agg->scratch_cap));
        if (bigger == NULL)
            return SP_RAISE(SP_ERR_NOMEM,
                            "task %llu aggregator: no memory for a combined value "
                            "of %zu bytes",
                            (unsigned long long)agg->task_id, n);
        sp__free(agg->scratch);
        agg->scratch = bigger;
        agg->scratch_cap = SP_MAX(n, 2 * agg->scratch_cap);
    }
}

/* ---- runs ---- */

static void sp_agg_runs_drop_all(sp_aggregator_t *agg)
{
    for (size_t i = 0; i < agg->nruns; i++)
        sp__spill_run_drop(&agg->runs[i], true);
    agg->nruns = 0;
}

/* Opens a new run file; on failure nothing is left. */
static sp_status_t sp_agg_run_begin(sp_aggregator_t *agg, sp_spill_run_writer_t *rw)
{
    char path[PATH_MAX];
    sp_status_t st;

    snprintf(path, sizeof(path), "%s/aggregate_%ld_%llu_%u.tmp", sp__shuffle_dirs_next(agg->dirs),
             (long)getpid(), (unsigned long long)agg->instance, agg->seq++);
    st = sp__spill_run_open(rw, path, agg->spill_buffer, agg->codec, agg->checksum, agg->enc);
    if (st != SP_OK)
        sp__spill_run_abort(rw);
    return st;
}

/* Adds a record to the run: unpartitioned chunks that end at chunk_bytes of records. */
static sp_status_t sp_agg_run_add(sp_aggregator_t *agg, sp_spill_run_writer_t *rw, const void *key,
                                  size_t klen, const void *value, size_t vlen)
{
    sp_status_t st;

    if (!rw->in_segment && (st = sp__spill_run_begin(rw, 0)) != SP_OK)
        return st;
    if ((st = sp__spill_run_add(rw, key, klen, value, vlen)) != SP_OK)
        return st;
    if (rw->raw >= agg->chunk_bytes)
        return sp__spill_run_end(rw, NULL);
    return SP_OK;
}

static sp_status_t sp_agg_runs_reserve(sp_aggregator_t *agg)
{
    size_t cap;
    sp_spill_run_t *r;

    if (agg->nruns < agg->runs_cap)
        return SP_OK;
    cap = agg->runs_cap != 0 ? 2 * agg->runs_cap : 8;
    r = sp__realloc(agg->runs, cap * sizeof(*r));
    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "task %llu aggregator: no memory to track %zu runs",
                        (unsigned long long)agg->task_id, cap);
    agg->runs = r;
    agg->runs_cap = cap;
    return SP_OK;
}

/* ---- memory ---- */

static void sp_agg_page_free(sp_aggregator_t *agg, sp_page_t *page)
{
    agg->pages[page->number] = NULL;
    agg->npages--;
    sp_memory_consumer_page_free(&agg->consumer, page);
}

/* The record page holding p, or NULL. */
static sp_page_t *sp_agg_page_of(const sp_aggregator_t *agg, const unsigned char *p)
{
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
        sp_page_t *page = agg->pages[i];
        if (page != NULL && p >= (unsigned char *)page->data &&
            p < (unsigned char *)page->data + page->size)
            return page;
    }
    return NULL;
}

/*
 * Frees the table and every record page except keep (which moves out of
 * the page list to agg->pinned when not NULL).
 */
static void sp_agg_free_memory(sp_aggregator_t *agg, sp_page_t *keep)
{
    if (keep != NULL) {
        agg->pages[keep->number] = NULL;
        agg->npages--;
        agg->pinned = keep;
    }
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE && agg->npages > 0; i++) {
        if (agg->pages[i] != NULL)
            sp_agg_page_free(agg, agg->pages[i]);
    }
    if (agg->table != NULL)
        sp_memory_consumer_page_free(&agg->consumer, agg->table);
    agg->table = NULL;
    agg->slots = 0;
    agg->keys = 0;
    agg->cur = NULL;
    agg->cur_used = 0;
    agg->wasted = 0;
    agg->epoch++;
}

static int sp_agg_slot_compare(const void *x, const void *y)
{
    const sp_agg_slot_t *a = x, *b = y;

    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    return sp_agg_key_compare(sp_rec_key(a->rec), sp_rec_klen(a->rec), sp_rec_key(b->rec),
                              sp_rec_klen(b->rec));
}

/*
 * Writes the occupied slots from index from on as one run sorted by
 * (hash, key), then frees the table and the record pages (all but keep).
 * The memory is freed also when writing fails.
 */
static sp_status_t sp_agg_spill(sp_aggregator_t *agg, size_t from, sp_page_t *keep)
{
    sp_agg_slot_t *s = agg->table != NULL ? agg->table->data : NULL;
    sp_spill_run_writer_t rw;
    sp_spill_run_t run = {0};
    uint64_t wasted = agg->wasted;
    size_t n = 0;
    sp_status_t st;

    for (size_t i = from; i < agg->slots; i++) {
        if (s[i].rec != NULL)
            s[n++] = s[i];
    }
    if (n == 0) {
        sp_agg_free_memory(agg, keep);
        return SP_OK;
    }
    st = sp_agg_runs_reserve(agg);
    if (st == SP_OK) {
        qsort(s, n, sizeof(*s), sp_agg_slot_compare);
        st = sp_agg_run_begin(agg, &rw);
    }
    if (st == SP_OK) {
        for (size_t i = 0; i < n && st == SP_OK; i++) {
            unsigned char *rec = s[i].rec;
            if (i + SP_AGG_PREFETCH_AHEAD < n)
                __builtin_prefetch(s[i + SP_AGG_PREFETCH_AHEAD].rec);
            st = sp_agg_run_add(agg, &rw, sp_rec_key(rec), sp_rec_klen(rec), sp_rec_value(rec),
                                sp_rec_vlen(rec));
        }
        if (st == SP_OK)
            st = sp__spill_run_finish(&rw, false, &run);
        if (st != SP_OK)
            sp__spill_run_abort(&rw);
    }
    sp_agg_free_memory(agg, keep);
    if (st != SP_OK)
        return SP_RAISE(st, "task %llu aggregator: spill of %zu keys failed: %s",
                        (unsigned long long)agg->task_id, n, sp_last_error());
    sp_debug("task %llu aggregator: spilled %zu keys to %s (%llu bytes; %llu bytes of moved "
             "records were dead)",
             (unsigned long long)agg->task_id, n, run.path, (unsigned long long)run.size,
             (unsigned long long)wasted);
    agg->runs[agg->nruns++] = run;
    agg->stats.spills++;
    agg->stats.spill_bytes += run.size;
    return SP_OK;
}

/* The task asks this consumer to free memory. */
static uint64_t sp_agg_spill_cb(sp_memory_consumer_t *consumer, uint64_t bytes,
                                sp_memory_consumer_t *trigger)
{
    sp_aggregator_t *agg = sp_container_of(consumer, sp_aggregator_t, consumer);
    uint64_t before = consumer->used;
    sp_status_t st = SP_OK;

    SP_UNUSED(bytes);
    if (agg->error != SP_OK)
        return 0;
    if (agg->phase == SP_AGG_INSERT) {
        /* An empty table is given up only to others: giving it up to our
         * own request would free what that request is about to replace. */
        if (agg->keys > 0 || (trigger != consumer && agg->table != NULL))
            st = sp_agg_spill(agg, 0, NULL);
    } else if (agg->phase == SP_AGG_TABLE && agg->table != NULL) {
        st =
            sp_agg_spill(agg, agg->iter, agg->last != NULL ? sp_agg_page_of(agg, agg->last) : NULL);
    }
    if (st != SP_OK)
        sp_agg_fail(agg, st);
    return before > consumer->used ? before - consumer->used : 0;
}

static const sp_memory_consumer_ops_t sp_agg_consumer_ops = {
    .size = sizeof(sp_memory_consumer_ops_t),
    .spill = sp_agg_spill_cb,
};

static bool sp_agg_refused(sp_status_t st)
{
    return st == SP_ERR_MEMORY_REFUSED || st == SP_ERR_NO_RESOURCE || st == SP_ERR_TOO_LARGE;
}

/*
 * After a page allocation was refused: spills when the allocation's own
 * spill did not (keys are held), so that the caller retries on an empty
 * table; SP_ERR_MEMORY_REFUSED when there is nothing to spill.
 */
static sp_status_t sp_agg_after_refusal(sp_aggregator_t *agg, uint64_t epoch, uint64_t size)
{
    if (agg->epoch != epoch)
        return SP_OK;
    if (agg->keys > 0)
        return sp_agg_spill(agg, 0, NULL);
    return SP_RAISE(SP_ERR_MEMORY_REFUSED,
                    "task %llu aggregator: no execution memory for %llu bytes, even with "
                    "nothing left to spill",
                    (unsigned long long)agg->task_id, (unsigned long long)size);
}

/* Allocates an empty table of slots slots (nothing else is held then). */
static sp_status_t sp_agg_table_create(sp_aggregator_t *agg, size_t slots)
{
    sp_page_t *page = NULL;
    sp_status_t st =
        sp_memory_consumer_page_alloc(&agg->consumer, slots * sizeof(sp_agg_slot_t), &page);

    if (agg->error != SP_OK) {
        sp_memory_consumer_page_free(&agg->consumer, page);
        return agg->error;
    }
    if (st != SP_OK)
        return st;
    memset(page->data, 0, slots * sizeof(sp_agg_slot_t));
    agg->table = page;
    agg->slots = slots;
    sp_agg_peak(agg);
    return SP_OK;
}

/* Doubles the table, or spills when the memory is refused. */
static sp_status_t sp_agg_table_grow(sp_aggregator_t *agg)
{
    size_t slots = 2 * agg->slots, mask = slots - 1;
    uint64_t epoch = agg->epoch, bytes = (uint64_t)slots * sizeof(sp_agg_slot_t);
    sp_page_t *page = NULL;
    sp_agg_slot_t *old, *s;
    sp_status_t st = sp_memory_consumer_page_alloc(&agg->consumer, bytes, &page);

    if (agg->error != SP_OK) {
        sp_memory_consumer_page_free(&agg->consumer, page);
        return agg->error;
    }
    if (sp_agg_refused(st))
        return sp_agg_after_refusal(agg, epoch, bytes);
    if (st != SP_OK)
        return st;
    s = page->data;
    memset(s, 0, bytes);
    sp_agg_peak(agg);
    if (agg->table == NULL) { /* spilled while allocating: the bigger table starts empty */
        agg->table = page;
        agg->slots = slots;
        return SP_OK;
    }
    old = agg->table->data;
    for (size_t i = 0; i < agg->slots; i++) {
        size_t j, ahead = i + SP_AGG_PREFETCH_AHEAD;

        /* The old slots are read in order, the new ones written at random. */
        if (ahead < agg->slots && old[ahead].rec != NULL)
            __builtin_prefetch(&s[old[ahead].hash & mask], 1);
        if (old[i].rec == NULL)
            continue;
        for (j = old[i].hash & mask; s[j].rec != NULL; j = (j + 1) & mask)
            ;
        s[j] = old[i];
    }
    sp_memory_consumer_page_free(&agg->consumer, agg->table);
    agg->table = page;
    agg->slots = slots;
    return SP_OK;
}

/*
 * Makes room for need bytes in the current page; spills when a new page is
 * refused (the caller then sees the epoch change and starts over).
 */
static sp_status_t sp_agg_room(sp_aggregator_t *agg, uint64_t need)
{
    uint64_t size = SP_MAX(agg->page_size, need), epoch = agg->epoch;
    sp_page_t *page = NULL;
    sp_status_t st;

    if (agg->cur != NULL && agg->cur_used + need <= agg->cur->size)
        return SP_OK;
    st = sp_memory_consumer_page_alloc(&agg->consumer, size, &page);
    if (agg->error != SP_OK) {
        sp_memory_consumer_page_free(&agg->consumer, page);
        return agg->error;
    }
    if (sp_agg_refused(st))
        return sp_agg_after_refusal(agg, epoch, size);
    if (st != SP_OK)
        return st;
    agg->pages[page->number] = page;
    agg->npages++;
    agg->cur = page;
    agg->cur_used = 0;
    sp_agg_peak(agg);
    return SP_OK;
}

/* Appends a record in the room made by sp_agg_room() and returns it. */
static unsigned char *sp_agg_append(sp_aggregator_t *agg, const void *key, size_t klen,
                                    const void *value, size_t vlen, size_t room)
{
    unsigned char *rec = (unsigned char *)agg->cur->data + agg->cur_used;

    sp_agg_store32(rec, (uint32_t)klen);
    sp_agg_store32(rec + 4, (uint32_t)vlen);
    sp_agg_store32(rec + 8, (uint32_t)room);
    if (klen != 0)
        memcpy(rec + SP_AGG_REC_HEADER, key, klen);
    if (vlen != 0)
        memcpy(rec + SP_AGG_REC_HEADER + klen, value, vlen);
    agg->cur_used += SP_AGG_REC_HEADER + klen + room;
    return rec;
}

/* Finds key's slot: the one holding it, or the empty one where it goes. */
static sp_agg_slot_t *sp_agg_probe(const sp_aggregator_t *agg, uint64_t hash, const void *key,
                                   size_t klen)
{
    sp_agg_slot_t *s = agg->table->data;
    size_t mask = agg->slots - 1;

    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const unsigned char *rec = s[i].rec;
        if (rec == NULL)
            return &s[i];
        if (s[i].hash == hash && sp_rec_klen(rec) == klen &&
            (klen == 0 || memcmp(sp_rec_key(rec), key, klen) == 0))
            return &s[i];
    }
}

/* Value room of a record that moves because its value grew to vlen. */
static size_t sp_agg_grown_room(const sp_aggregator_t *agg, size_t klen, size_t vlen)
{
    uint64_t room = (uint64_t)vlen + vlen / 4;

    if (room > UINT32_MAX || SP_AGG_REC_HEADER + klen + room > agg->page_size)
        return vlen;
    return (size_t)room;
}

static sp_status_t sp_agg_insert(sp_aggregator_t *agg, uint64_t hash, const void *key, size_t klen,
                                 const void *value, size_t vlen)
{
    for (;;) {
        uint64_t epoch = agg->epoch;
        sp_agg_slot_t *slot;
        sp_status_t st;

        if (agg->table == NULL) {
            size_t slots = SP_AGG_INITIAL_SLOTS;
            while (slots > SP_AGG_MIN_SLOTS && slots * sizeof(sp_agg_slot_t) > agg->page_size)
                slots /= 2;
            if ((st = sp_agg_table_create(agg, slots)) != SP_OK)
                return st;
        }
        if ((uint64_t)(agg->keys + 1) * 10 > (uint64_t)agg->slots * 7) {
            if ((st = sp_agg_table_grow(agg)) != SP_OK)
                return st;
            if (agg->epoch != epoch)
                continue;
        }
        slot = sp_agg_probe(agg, hash, key, klen);
        if (slot->rec != NULL) {
            unsigned char *old = slot->rec;
            size_t len, room;

            st = sp_agg_combine(agg, sp_rec_key(old), klen, sp_rec_value(old), sp_rec_vlen(old),
                                value, vlen, &len);
            if (st != SP_OK)
                return st;
            if (len <= sp_rec_room(old)) {
                if (len != 0)
                    memcpy(sp_rec_value(old), agg->scratch, len);
                sp_agg_store32(old + 4, (uint32_t)len);
                return SP_OK;
            }
            room = sp_agg_grown_room(agg, klen, len);
            if ((st = sp_agg_room(agg, SP_AGG_REC_HEADER + (uint64_t)klen + room)) != SP_OK)
                return st;
            /* After a spill the stored value is in a run: the new value
             * starts over alone, after it in run order. */
            if (agg->epoch != epoch)
                continue;
            agg->wasted += SP_AGG_REC_HEADER + klen + sp_rec_room(old);
            slot->rec = sp_agg_append(agg, sp_rec_key(old), klen, agg->scratch, len, room);
            return SP_OK;
        }
        if ((st = sp_agg_room(agg, SP_AGG_REC_HEADER + (uint64_t)klen + vlen)) != SP_OK)
            return st;
        if (agg->epoch != epoch)
            continue;
        slot->hash = hash;
        slot->rec = sp_agg_append(agg, key, klen, value, vlen, vlen);
        agg->keys++;
        return SP_OK;
    }
}

/* ---- merge ---- */

/* Loads chunk c->next_chunk into the cursor's reader, checking its checksum. */
static sp_status_t sp_agg_cursor_load(sp_aggregator_t *agg, sp_agg_cursor_t *c)
{
    sp_status_t st =
        sp__spill_run_read_segment(c->run, c->fd, c->next_chunk, agg->checksum, &c->buf, &c->cap);

    if (st != SP_OK)
        return st;
    sp_segment_reader_reset(c->reader, c->buf, (size_t)c->run->segs[c->next_chunk].length);
    c->next_chunk++;
    return SP_OK;
}

/* Moves the cursor to its run's next record; *more_p false at the end. */
static sp_status_t sp_agg_cursor_next(sp_aggregator_t *agg, sp_agg_cursor_t *c, bool *more_p)
{
    for (;;) {
        bool more = false;
        sp_status_t st =
            sp_segment_reader_next(c->reader, &c->key, &c->klen, &c->value, &c->vlen, &more);

        if (st != SP_OK)
            return SP_RAISE(st, "run %s, chunk %zu: %s", c->run->path, c->next_chunk - 1,
                            sp_last_error());
        if (more) {
            c->hash = sp_agg_hash(agg, c->key, c->klen);
            c->read++;
            *more_p = true;
            return SP_OK;
        }
        if (c->next_chunk == c->run->nsegs) {
            if (c->read != c->run->records)
                return SP_RAISE(SP_ERR_CORRUPT, "run %s holds %llu records, not %llu", c->run->path,
                                (unsigned long long)c->read, (unsigned long long)c->run->records);
            *more_p = false;
            return SP_OK;
        }
        if ((st = sp_agg_cursor_load(agg, c)) != SP_OK)
            return st;
    }
}

/* The merge heap's source: the cursor's next record, ranked by its key hash. */
static sp_status_t sp_agg_cursor_source(void *arg, uint64_t *rank_p, const void **key_p,
                                        size_t *klen_p, const void **value_p, size_t *vlen_p,
                                        bool *more_p)
{
    sp_agg_cursor_t *c = arg;
    sp_status_t st = sp_agg_cursor_next(c->agg, c, more_p);

    if (st == SP_OK && *more_p) {
        *rank_p = c->hash;
        *key_p = c->key;
        *klen_p = c->klen;
        *value_p = c->value;
        *vlen_p = c->vlen;
    }
    return st;
}

static void sp_agg_merge_close(sp_agg_merge_t *m)
{
    for (size_t i = 0; i < m->n; i++) {
        sp_segment_reader_destroy(m->cur[i].reader);
        if (m->cur[i].fd >= 0)
            close(m->cur[i].fd);
        sp__free(m->cur[i].buf);
    }
    sp__free(m->cur);
    sp__kmerge_destroy(m->heap);
    sp__free(m->key);
    sp__free(m->acc);
    memset(m, 0, sizeof(*m));
}

/* Opens runs[0..n) for merging; on error m is closed. */
static sp_status_t sp_agg_merge_open(sp_aggregator_t *agg, sp_agg_merge_t *m,
                                     const sp_spill_run_t *runs, size_t n)
{
    sp_status_t st = SP_OK;

    memset(m, 0, sizeof(*m));
    m->open = true;
    m->cur = sp__calloc(n, sizeof(*m->cur));
    if (m->cur == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "task %llu aggregator: no memory to merge %zu runs",
                      (unsigned long long)agg->task_id, n);
        goto err;
    }
    /* Runs are sorted by (hash, key bytes): the hash is the rank, keys in byte order. */
    if ((st = sp__kmerge_create(agg->codec, NULL, NULL, &m->heap)) != SP_OK)
        goto err;
    for (; m->n < n; m->n++) {
        sp_agg_cursor_t *c = &m->cur[m->n];

        c->agg = agg;
        c->run = &runs[m->n];
        c->fd = -1;
        st = sp__spill_run_open_read(c->run, agg->codec, agg->checksum, &c->fd);
        if (st == SP_OK)
            st = sp_segment_reader_create(agg->codec, &c->reader);
        if (st == SP_OK) {
            sp_segment_reader_reset(c->reader, NULL, 0);
            st = sp__kmerge_add_source(m->heap, sp_agg_cursor_source, c);
        }
        if (st != SP_OK) {
            m->n++;
            goto err;
        }
    }
    return SP_OK;

err:
    sp_agg_merge_close(m);
    return st;
}

/* Copies len bytes to a buffer grown as needed. */
static sp_status_t sp_agg_copy(unsigned char **buf, size_t *cap, const void *src, size_t len)
{
    if (len > *cap || *buf == NULL) {
        size_t want = SP_MAX(len, SP_MAX(2 * *cap, (size_t)64));
        unsigned char *b = sp__malloc(want);
        if (b == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a merged record of %zu bytes", len);
        sp__free(*buf);
        *buf = b;
        *cap = want;
    }
    if (len != 0)
        memcpy(*buf, src, len);
    return SP_OK;
}

/* The merge heap's next record, or the one read past the previous key. */
static sp_status_t sp_agg_merge_record(sp_agg_merge_t *m, const void **key_p, size_t *klen_p,
                                       const void **value_p, size_t *vlen_p, bool *more_p)
{
    if (m->pending) {
        m->pending = false;
        *key_p = m->pkey;
        *klen_p = m->pklen;
        *value_p = m->pvalue;
        *vlen_p = m->pvlen;
        *more_p = true;
        return SP_OK;
    }
    return sp__kmerge_next(m->heap, key_p, klen_p, value_p, vlen_p, more_p);
}

/*
 * Next key of the merge with its values from every run combined, in run
 * order; pointers into m's buffers, valid until the next call.
 */
static sp_status_t sp_agg_merge_next(sp_aggregator_t *agg, sp_agg_merge_t *m, const void **key_p,
                                     size_t *klen_p, const void **value_p, size_t *vlen_p,
                                     bool *more_p)
{
    const void *k, *v;
    size_t klen, vlen, kl, vl;
    bool more = false;
    sp_status_t st = sp_agg_merge_record(m, &k, &klen, &v, &vlen, &more);

    if (st != SP_OK)
        return st;
    if (!more) {
        *more_p = false;
        return SP_OK;
    }
    if ((st = sp_agg_copy(&m->key, &m->key_cap, k, klen)) != SP_OK ||
        (st = sp_agg_copy(&m->acc, &m->acc_cap, v, vlen)) != SP_OK)
        return st;
    for (;;) {
        unsigned char *tmp;
        size_t tmp_cap;

        /* Equal keys have equal hashes: they are adjacent in (hash, key) order. */
        if ((st = sp__kmerge_next(m->heap, &k, &kl, &v, &vl, &more)) != SP_OK)
            return st;
        if (!more)
            break;
        if (sp_agg_key_compare(k, kl, m->key, klen) != 0) {
            /* The start of the next key: valid until the heap's next call. */
            m->pending = true;
            m->pkey = k;
            m->pklen = kl;
            m->pvalue = v;
            m->pvlen = vl;
            break;
        }
        st = sp_agg_combine(agg, m->key, klen, m->acc, vlen, v, vl, &vlen);
        if (st != SP_OK)
            return st;
        tmp = m->acc;
        tmp_cap = m->acc_cap;
        m->acc = agg->scratch;
        m->acc_cap = agg->scratch_cap;
        agg->scratch = tmp;
        agg->scratch_cap = tmp_cap;
    }
    *key_p = m->key;
    *klen_p = klen;
    *value_p = m->acc;
    *vlen_p = vlen;
    *more_p = true;
    return SP_OK;
}

/* Merges runs[0..n) into one new run. */
static sp_status_t sp_agg_merge_to_run(sp_aggregator_t *agg, const sp_spill_run_t *runs, size_t n,
                                       sp_spill_run_t *run_p)
{
    sp_agg_merge_t m;
    sp_spill_run_writer_t rw;
    sp_status_t st = sp_agg_merge_open(agg, &m, runs, n);

    if (st != SP_OK)
        return st;
    st = sp_agg_run_begin(agg, &rw);
    if (st != SP_OK) {
        sp_agg_merge_close(&m);
        return st;
    }
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more = false;

        st = sp_agg_merge_next(agg, &m, &k, &kl, &v, &vl, &more);
        if (st != SP_OK || !more)
            break;
        if ((st = sp_agg_run_add(agg, &rw, k, kl, v, vl)) != SP_OK)
            break;
    }
    if (st == SP_OK)
        st = sp__spill_run_finish(&rw, false, run_p);
    if (st != SP_OK)
        sp__spill_run_abort(&rw);
    sp_agg_merge_close(&m);
    return st;
}

/*
 * One merge pass: each group of fanin adjacent runs becomes one run, so
 * that spill order (and with it the order of a key's values) is kept.
 */
static sp_status_t sp_agg_merge_pass(sp_aggregator_t *agg, size_t fanin)
{
    size_t groups = (agg->nruns + fanin - 1) / fanin;
    sp_spill_run_t *next = sp__calloc(groups, sizeof(*next));
    sp_status_t st = SP_OK;

    if (next == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "task %llu aggregator: no memory to merge %zu runs",
                        (unsigned long long)agg->task_id, agg->nruns);
    for (size_t g = 0; g < groups && st == SP_OK; g++) {
        size_t first = g * fanin, n = SP_MIN(fanin, agg->nruns - first);

        if (n == 1) {
            next[g] = agg->runs[first];
            memset(&agg->runs[first], 0, sizeof(agg->runs[first]));
            continue;
        }
        st = sp_agg_merge_to_run(agg, &agg->runs[first], n, &next[g]);
        for (size_t i = first; st == SP_OK && i < first + n; i++)
            sp__spill_run_drop(&agg->runs[i], true);
    }
    if (st != SP_OK) {
        /* Runs not yet merged stay in agg->runs for destroy to remove. */
        for (size_t g = 0; g < groups; g++)
            sp__spill_run_drop(&next[g], true);
        sp__free(next);
        return st;
    }
    sp__free(agg->runs);
    agg->runs = next;
    agg->nruns = agg->runs_cap = groups;
    return SP_OK;
}

/* Ends the input when runs exist: spills the rest and opens the final merge. */
static sp_status_t sp_agg_merge_start(sp_aggregator_t *agg)
{
    uint64_t per_run = 2 * agg->chunk_bytes + SP_AGG_READER_WINDOW, got;
    size_t want = SP_MIN(agg->nruns, (size_t)SP_AGG_MAX_FANIN), fanin;
    sp_status_t st;

    if (agg->keys > 0 && (st = sp_agg_spill(agg, 0, NULL)) != SP_OK)
        return st;
    sp_agg_free_memory(agg, NULL);
    got = sp_memory_consumer_acquire(&agg->consumer, want * per_run);
    agg->merge_bytes += got;
    sp_agg_peak(agg);
    fanin = (size_t)SP_MAX(SP_MIN(got / per_run, (uint64_t)SP_AGG_MAX_FANIN), (uint64_t)2);
    while (agg->nruns > fanin) {
        if ((st = sp_agg_merge_pass(agg, fanin)) != SP_OK)
            return st;
    }
    return sp_agg_merge_open(agg, &agg->m, agg->runs, agg->nruns);
}

/* Releases what the output held once it has ended. */
static void sp_agg_output_end(sp_aggregator_t *agg)
{
    if (agg->m.open)
        sp_agg_merge_close(&agg->m);
    sp_agg_runs_drop_all(agg);
    sp_agg_free_memory(agg, NULL);
    if (agg->pinned != NULL) {
        sp_memory_consumer_page_free(&agg->consumer, agg->pinned);
        agg->pinned = NULL;
    }
    if (agg->merge_bytes != 0) {
        sp_memory_consumer_release(&agg->consumer, agg->merge_bytes);
        agg->merge_bytes = 0;
    }
    agg->phase = SP_AGG_DONE;
}

/* ---- public ---- */

sp_status_t sp_aggregator_create(sp_task_memory_t *task, const sp_conf_t *conf,
                                 const sp_combiner_t *combiner, sp_aggregator_t **agg_p)
{
    sp_spill_format_t f;
    sp_memory_layout_t layout;
    sp_task_memory_stats_t ts;
    sp_aggregator_t *agg;
    uint64_t spill_buffer = 0;
    sp_status_t st;

    if (task == NULL || conf == NULL || combiner == NULL || combiner->combine == NULL ||
        agg_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "aggregator: task, conf, combiner and its combine function are required");
    if ((st = sp__spill_format_init(&f, conf)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.spill_buffer", &spill_buffer)) != SP_OK)
        return st;
    agg = sp__calloc(1, sizeof(*agg));
    if (agg == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an aggregator");
    sp_task_memory_stats(task, &ts);
    sp_memory_manager_layout(sp_task_memory_manager(task), &layout);
    agg->task = task;
    agg->task_id = ts.task_id;
    agg->comb = *combiner;
    agg->codec = f.codec;
    agg->checksum = f.checksum;
    agg->unified = layout.unified_bytes;
    agg->page_size = layout.page_bytes;
    agg->chunk_bytes = SP_MAX(SP_MIN(layout.page_bytes, SP_AGG_MAX_CHUNK), SP_AGG_MIN_CHUNK);
    agg->spill_buffer = (size_t)spill_buffer;
    agg->hash_mask = sp__aggregator_hash_mask;
    agg->stage_table_bytes = sp__aggregator_stage_table_bytes;
    agg->instance = atomic_fetch_add(&sp_agg_instances, 1);
    agg->scratch = sp__malloc(SP_AGG_INITIAL_SCRATCH);
    if (agg->scratch == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for an aggregator's combine buffer");
        goto err_free;
    }
    agg->scratch_cap = SP_AGG_INITIAL_SCRATCH;
    if ((st = sp__shuffle_dirs_create(conf, &agg->dirs)) != SP_OK)
        goto err_free;
    if ((st = sp__encoder_create(f.codec, f.level, &agg->enc)) != SP_OK)
        goto err_dirs;
    sp_memory_consumer_init(&agg->consumer, task, &sp_agg_consumer_ops, "aggregator");
    *agg_p = agg;
    return SP_OK;

err_dirs:
    sp__shuffle_dirs_destroy(agg->dirs);
err_free:
    sp__free(agg->scratch);
    sp__free(agg);
    return st;
}

/* Checks an input record and that input is still taken. */
static sp_status_t sp_agg_check_input(const sp_aggregator_t *agg, const void *key, size_t key_len,
                                      const void *value, size_t value_len)
{
    uint64_t need = SP_AGG_REC_HEADER + (uint64_t)key_len + value_len;

    if (agg->error != SP_OK)
        return sp_agg_sticky(agg);
    if (agg->phase != SP_AGG_INSERT)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "task %llu aggregator: insert after next() has ended the input",
                        (unsigned long long)agg->task_id);
    if ((key == NULL && key_len != 0) || (value == NULL && value_len != 0))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "task %llu aggregator: NULL key or value bytes",
                        (unsigned long long)agg->task_id);
    if (key_len > UINT32_MAX || value_len > UINT32_MAX || need > agg->unified)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "task %llu aggregator: a record of %llu bytes (key %zu, value %zu) is "
                        "larger than the executor's unified memory (%llu bytes)",
                        (unsigned long long)agg->task_id, (unsigned long long)need, key_len,
                        value_len, (unsigned long long)agg->unified);
    return SP_OK;
}

/*
 * Inserts one checked record. A combined value too large leaves everything
 * as it was and the aggregator usable; any other error is made sticky.
 */
static sp_status_t sp_agg_insert_one(sp_aggregator_t *agg, uint64_t hash, const void *key,
                                     size_t key_len, const void *value, size_t value_len)
{
    sp_status_t st = sp_agg_insert(agg, hash, key, key_len, value, value_len);

    if (st == SP_ERR_TOO_LARGE && agg->error == SP_OK)
        return st;
    if (st != SP_OK)
        return sp_agg_fail(agg, st);
    agg->stats.inserted++;
    return SP_OK;
}

/* Prefetches the cache line of the slot where a probe for hash starts. */
static void sp_agg_prefetch_slot(const sp_aggregator_t *agg, uint64_t hash)
{
    if (agg->table != NULL)
        __builtin_prefetch((const sp_agg_slot_t *)agg->table->data + (hash & (agg->slots - 1)));
}

/*
 * Resolves the staged records in their order. Their slot lines were
 * prefetched when they were staged; first the records of slots whose
 * fingerprint matches are prefetched too, so that the lookups' misses
 * overlap instead of following one another. A combined value too large
 * drops that record (as sp_aggregator_insert would) and is returned after
 * the others are in; any other error stops at once.
 */
static sp_status_t sp_agg_flush(sp_aggregator_t *agg)
{
    sp_status_t first = SP_OK;
    size_t n = agg->nstaged;

    if (n == 0)
        return SP_OK;
    if (agg->table != NULL) {
        const sp_agg_slot_t *s = agg->table->data;
        size_t mask = agg->slots - 1;

        for (size_t i = 0; i < n; i++) {
            const sp_agg_slot_t *slot = &s[agg->staged[i].hash & mask];
            if (slot->rec != NULL && slot->hash == agg->staged[i].hash)
                __builtin_prefetch(slot->rec);
        }
    }
    agg->nstaged = 0;
    agg->stage_used = 0;
    for (size_t i = 0; i < n; i++) {
        const sp_agg_staged_t *r = &agg->staged[i];
        const unsigned char *key = agg->stage + r->off;
        sp_status_t st = sp_agg_insert_one(agg, r->hash, key, r->klen, key + r->klen, r->vlen);

        if (st == SP_ERR_TOO_LARGE && agg->error == SP_OK) {
            first = first != SP_OK ? first : st;
            continue;
        }
        if (st != SP_OK)
            return st;
    }
    return first;
}

sp_status_t sp__aggregator_add(sp_aggregator_t *agg, const void *key, size_t key_len,
                               const void *value, size_t value_len)
{
    sp_agg_staged_t *r;
    uint64_t hash;
    sp_status_t one, st = sp_agg_check_input(agg, key, key_len, value, value_len);

    if (st != SP_OK)
        return st;
    hash = sp_agg_hash(agg, key, key_len);
    if (agg->nstaged == 0 && (uint64_t)agg->slots * sizeof(sp_agg_slot_t) <= agg->stage_table_bytes)
        return sp_agg_insert_one(agg, hash, key, key_len, value, value_len); /* in the caches */
    if ((uint64_t)key_len + value_len > SP_AGG_STAGE_MAX) {
        /* Too big to stage: the staged records go first, keeping the order. */
        st = sp_agg_flush(agg);
        if (st != SP_OK && agg->error != SP_OK)
            return st;
        one = sp_agg_insert_one(agg, hash, key, key_len, value, value_len);
        return one != SP_OK ? one : st;
    }
    if (agg->nstaged == SP_AGG_BATCH ||
        agg->stage_used + key_len + value_len > SP_AGG_STAGE_BYTES) {
        st = sp_agg_flush(agg);
        if (st != SP_OK && agg->error != SP_OK)
            return st;
    }
    r = &agg->staged[agg->nstaged++];
    r->hash = hash;
    r->off = (uint32_t)agg->stage_used;
    r->klen = (uint32_t)key_len;
    r->vlen = (uint32_t)value_len;
    if (key_len != 0)
        memcpy(agg->stage + agg->stage_used, key, key_len);
    if (value_len != 0)
        memcpy(agg->stage + agg->stage_used + key_len, value, value_len);
    agg->stage_used += key_len + value_len;
    sp_agg_prefetch_slot(agg, hash);
    return st;
}

sp_status_t sp_aggregator_insert(sp_aggregator_t *agg, const void *key, size_t key_len,
                                 const void *value, size_t value_len)
{
    sp_status_t one, st = sp_agg_check_input(agg, key, key_len, value, value_len);

    if (st != SP_OK)
        return st;
    /* Records staged by sp__aggregator_add() come first. */
    st = sp_agg_flush(agg);
    if (st != SP_OK && agg->error != SP_OK)
        return st;
    one = sp_agg_insert_one(agg, sp_agg_hash(agg, key, key_len), key, key_len, value, value_len);
    return one != SP_OK ? one : st;
}

/* Next record of the in-memory table, or the switch to what follows it. */
static sp_status_t sp_agg_table_next(sp_aggregator_t *agg, const void **key_p, size_t *key_len_p,
                                     const void **value_p, size_t *value_len_p, bool *more_p)
{
    const sp_agg_slot_t *s = agg->table->data;

    while (agg->iter < agg->slots) {
        size_t ahead = agg->iter + SP_AGG_PREFETCH_AHEAD;
        unsigned char *rec;

        /* Slots are in hash order, records in arrival order: fetch ahead. */
        if (ahead < agg->slots && s[ahead].rec != NULL)
            __builtin_prefetch(s[ahead].rec);
        rec = s[agg->iter++].rec;
        if (rec == NULL)
            continue;
        agg->last = rec;
        *key_p = sp_rec_key(rec);
        *key_len_p = sp_rec_klen(rec);
        *value_p = sp_rec_value(rec);
        *value_len_p = sp_rec_vlen(rec);
        *more_p = true;
        return SP_OK;
    }
    sp_agg_output_end(agg);
    *more_p = false;
    return SP_OK;
}

sp_status_t sp_aggregator_next(sp_aggregator_t *agg, const void **key_p, size_t *key_len_p,
                               const void **value_p, size_t *value_len_p, bool *more_p)
{
    sp_status_t st = SP_OK;
    bool more = false;

    if (agg->error != SP_OK)
        return sp_agg_sticky(agg);
    if (agg->phase == SP_AGG_INSERT && agg->nstaged > 0) {
        /* The staged records end the input; a combined value too large was
         * dropped and is reported once, by this call. */
        if ((st = sp_agg_flush(agg)) != SP_OK)
            return st;
    }
    if (agg->phase == SP_AGG_INSERT) {
        if (agg->nruns == 0) {
            agg->phase = SP_AGG_TABLE;
            agg->iter = 0;
            agg->last = NULL;
        } else {
            agg->phase = SP_AGG_MERGE;
            if ((st = sp_agg_merge_start(agg)) != SP_OK)
                return sp_agg_fail(agg, st);
        }
    }
    if (agg->phase == SP_AGG_TABLE && agg->table == NULL) {
        /* No table (no input), or it was spilled while being returned:
         * the page of the record returned last is no longer needed. */
        if (agg->pinned != NULL) {
            sp_memory_consumer_page_free(&agg->consumer, agg->pinned);
            agg->pinned = NULL;
        }
        if (agg->nruns == 0) {
            sp_agg_output_end(agg);
        } else {
            agg->phase = SP_AGG_MERGE;
            if ((st = sp_agg_merge_start(agg)) != SP_OK)
                return sp_agg_fail(agg, st);
        }
    }
    switch (agg->phase) {
    case SP_AGG_TABLE:
        st = sp_agg_table_next(agg, key_p, key_len_p, value_p, value_len_p, &more);
        break;
    case SP_AGG_MERGE:
        st = sp_agg_merge_next(agg, &agg->m, key_p, key_len_p, value_p, value_len_p, &more);
        if (st == SP_OK && !more)
            sp_agg_output_end(agg);
        break;
    default: break;
    }
    if (st != SP_OK)
        return sp_agg_fail(agg, st);
    if (more)
        agg->stats.keys++;
    *more_p = more;
    return SP_OK;
}

void sp_aggregator_stats(const sp_aggregator_t *agg, sp_aggregator_stats_t *stats_p)
{
    *stats_p = agg->stats;
}

void sp_aggregator_destroy(sp_aggregator_t *agg)
{
    if (agg == NULL)
        return;
    sp_agg_output_end(agg);
    sp_memory_consumer_fini(&agg->consumer);
    sp__encoder_destroy(agg->enc);
    sp__shuffle_dirs_destroy(agg->dirs);
    sp__free(agg->runs);
    sp__free(agg->scratch);
    sp__free(agg);
}
