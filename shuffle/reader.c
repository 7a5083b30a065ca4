/*
 * The shuffle reader of a reduce task.
 *
 * Planning: the block list is cut into requests of consecutive blocks of one
 * peer, each at most a fifth of shuffle.max_bytes_in_flight (Spark's rule,
 * so that fetches run from several peers at once). Requests are issued while
 * the bytes requested and not yet completed stay within the limit; one
 * request may always be outstanding, so a block larger than the limit still
 * moves.
 *
 * Verification: a completed block's checksum is computed and compared with
 * the one its owner recorded before any record is used. A mismatch is
 * fetched once more: a good second copy means the first was damaged in
 * flight (logged, reading goes on); a second bad copy fails the read with
 * SP_ERR_FETCH_FAILED naming the block, and says whether both copies were
 * the same (the stored copy is damaged) or not (damaged in flight twice).
 *
 * Orders: unordered reads stream each block's records as it arrives;
 * merged reads hold every block and k-way merge them in (map, reduce) order
 * of their blocks, so that equal keys come out the same way whatever order
 * the blocks arrived in; sorted reads feed an external sorter
 * (shuffle/sorter.c, one key-ordered partition), aggregated reads the hash
 * aggregator; both are memory consumers of the task and spill when short.
 *
 * Incremental reads (reduce slow start): the reader is opened before every
 * map output exists, with room for one block per (map, partition) of its
 * range, and map statuses are added as maps commit (sp_shuffle_reader_add,
 * from the caller's wait function, which the reader calls whenever it has
 * nothing to take: without waiting while fetches are in flight, up to
 * SP_READER_WAIT_MS when it is idle). Each added status's blocks are
 * appended to the reader's own list (its storage never moves: fetches in
 * flight point into it) and planned into requests of their own; a map's
 * second status (its output recomputed or moved) is ignored once the first
 * is in. The read ends when every map's status is in and every block is
 * taken; the time spent waiting for map outputs counts as fetch wait. Merged
 * reads still merge in (map, reduce) order; a sorted read's equal keys come
 * in the order their blocks arrived (the external sorter keeps insertion
 * order), like an unordered read's records.
 */
#include "shuffle_int.h"
#include "sorter.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Longest wait for more map outputs of an incremental read that has nothing in flight. */
#define SP_READER_WAIT_MS 100
/* Longest wait for fetch completions of an incremental read (map outputs may come meanwhile). */
#define SP_READER_PROGRESS_MS 20

typedef struct sp_completion {
    size_t index; /* in the block list */
    sp_status_t status;
    const void *data;
    size_t len;
    uint64_t expected;
    char *file; /* the block came as this temporary file, mapped at data */
} sp_completion_t;

typedef struct sp_request {
    size_t first, count;
    uint64_t bytes;
} sp_request_t;

struct sp_shuffle_reader {
    sp_task_memory_t *task;
    const sp_block_list_t *list;
    sp_shuffle_reader_options_t o;
    sp_block_fetcher_t *fetcher;
    bool own_fetcher;
    uint64_t max_in_flight, in_flight, max_block_in_memory;
    sp_shuffle_dirs_t *dirs; /* for blocks streamed to files */
    unsigned file_seq;

    sp_request_t *requests;
    size_t nrequests, next_request;
    sp_completion_t *queue; /* completed, not yet taken; a ring of cap + 1 */
    size_t cap;             /* most blocks the read can have */
    size_t qhead, qlen, taken;
    size_t outstanding;  /* blocks requested and not yet completed */
    uint64_t *first_bad; /* checksum of the first copy of refetched blocks */
    unsigned char *refetched;
    sp_status_t error;
    uint64_t failed_map; /* map of the block that failed; UINT64_MAX: none known */

    /* unordered */
    sp_segment_reader_t *seg;
    sp_completion_t cur;
    bool have_cur;
    /* merge */
    sp_completion_t *held;
    size_t nheld;
    size_t *merge_block; /* block index of each merge input */
    sp_kmerge_t *kmerge;
    /* sort, aggregate */
    sp_sorter_t *sorter;
    sp_aggregator_t *agg;
    bool drained;

    /* incremental: the reader's own list, grown as map statuses are added */
    bool sealed; /* every block of the read is in the list */
    sp_block_list_t own;
    sp_block_list_t **batches; /* lists of added statuses: the strings own's blocks point into */
    size_t nbatches;
    unsigned char *added; /* per map: its status is in (1), or in the batch being added (2) */
    uint32_t maps, maps_added, reduce_start, reduce_end;
    sp_shuffle_reader_wait_fn_t wait;
    void *wait_arg;

    sp_shuffle_read_stats_t stats;
};

static const char *sp_block_where(const sp_block_ref_t *b)
{
    return b->address != NULL ? b->address : b->index_path;
}

/*
 * Completion callbacks only know the index within their request, so each
 * request records where it starts: the callback finds it through this
 * wrapper argument.
 */
typedef struct sp_req_ctx {
    sp_shuffle_reader_t *r;
    size_t first;
    char *file; /* fetch_to_file: the path, owned until the completion takes it */
} sp_req_ctx_t;

static void sp_reader_done_ctx(void *arg, size_t i, sp_status_t status, const void *data,
                               size_t len, uint64_t expected)
{
    sp_req_ctx_t *ctx = arg;
    sp_shuffle_reader_t *r = ctx->r;
    size_t slot = (r->qhead + r->qlen) % (r->cap + 1);

    r->queue[slot] = (sp_completion_t){ctx->first + i, status, data, len, expected, ctx->file};
    ctx->file = NULL;
    r->qlen++;
    r->outstanding -= SP_MIN(r->outstanding, 1);
    r->in_flight -= SP_MIN(r->in_flight, r->list->blocks[ctx->first + i].size);
}

/* Request contexts live as long as the reader: one per request (and refetch). */
typedef struct sp_ctx_pool {
    sp_req_ctx_t *ctx;
    size_t n, cap;
} sp_ctx_pool_t;

static sp_ctx_pool_t *sp_reader_pool(sp_shuffle_reader_t *r);

static bool sp_reader_can_fetch_to_file(const sp_shuffle_reader_t *r)
{
    const sp_block_fetcher_ops_t *ops = r->fetcher->ops;

    return ops->size >=
               offsetof(sp_block_fetcher_ops_t, fetch_to_file) + sizeof(ops->fetch_to_file) &&
           ops->fetch_to_file != NULL && r->dirs != NULL;
}

/* Maps a block fetched to a file; the mapping replaces the data pointer. */
static sp_status_t sp_reader_map_file(sp_completion_t *c)
{
    int fd = open(c->file, O_RDONLY | O_CLOEXEC);
    void *map;

    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "open fetched block %s: %s (errno %d)", c->file, strerror(errno),
                        errno);
    map = c->len != 0 ? mmap(NULL, c->len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (map == MAP_FAILED)
        return SP_RAISE(SP_ERR_IO, "map fetched block %s: %s (errno %d)", c->file, strerror(errno),
                        errno);
    c->data = map;
    return SP_OK;
}

/* Gives a completed block back: to the fetcher, or unmaps and removes its file. */
static void sp_reader_release(sp_shuffle_reader_t *r, const sp_completion_t *c)
{
    if (c->file != NULL) {
        if (c->data != NULL)
            munmap((void *)(uintptr_t)c->data, c->len);
        unlink(c->file);
        sp__tempfile_forget(c->file);
        sp__free(c->file);
    } else if (c->status == SP_OK) {
        r->fetcher->ops->release(r->fetcher, c->data, c->len);
    }
}

static sp_status_t sp_reader_fetch(sp_shuffle_reader_t *r, size_t first, size_t count,
                                   uint64_t bytes)
{
    sp_ctx_pool_t *pool = sp_reader_pool(r);
    sp_req_ctx_t *ctx;
    sp_status_t st;

    SP_ASSERT(pool->n < pool->cap);
    ctx = &pool->ctx[pool->n++];
    ctx->r = r;
    ctx->first = first;
    ctx->file = NULL;
    r->in_flight += bytes;
    r->outstanding += count;
    r->stats.peak_in_flight = SP_MAX(r->stats.peak_in_flight, r->in_flight);
    r->stats.requests++;
    if (count == 1 && bytes > r->max_block_in_memory && sp_reader_can_fetch_to_file(r)) {
        /* A large block goes to a file of ours instead of memory. */
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/fetch_%ld_%u.tmp", sp__shuffle_dirs_next(r->dirs),
                 (long)getpid(), r->file_seq++);
        ctx->file = sp__strdup(path);
        if (ctx->file == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the path %s", path);
        sp__tempfile_register(path);
        r->stats.blocks_to_file++;
        st = r->fetcher->ops->fetch_to_file(r->fetcher, &r->list->blocks[first], path,
                                            sp_reader_done_ctx, ctx);
    } else {
        st = r->fetcher->ops->fetch(r->fetcher, &r->list->blocks[first], count, sp_reader_done_ctx,
                                    ctx);
    }
    if (st != SP_OK) {
        r->failed_map = r->list->blocks[first].map_id;
        return SP_RAISE(SP_ERR_FETCH_FAILED, "fetch of %zu block(s) from %s failed: %s", count,
                        sp_block_where(&r->list->blocks[first]), sp_last_error());
    }
    return SP_OK;
}

/* Issues requests while they fit within the in-flight limit. */
static sp_status_t sp_reader_pump(sp_shuffle_reader_t *r)
{
    while (r->next_request < r->nrequests) {
        const sp_request_t *q = &r->requests[r->next_request];
        sp_status_t st;

        if (r->in_flight != 0 && r->in_flight + q->bytes > r->max_in_flight)
            break;
        r->next_request++;
        st = sp_reader_fetch(r, q->first, q->count, q->bytes);
        if (st != SP_OK)
            return st;
    }
    return SP_OK;
}

/*
 * Waits until a completed block is queued; *end_p says instead that the read
 * is over (every block taken). Issues requests as the in-flight limit allows,
 * progresses the fetcher while blocks are in flight, and lets an incremental
 * read add the map outputs that came meanwhile.
 */
static sp_status_t sp_reader_wait(sp_shuffle_reader_t *r, bool *end_p)
{
    *end_p = false;
    for (;;) {
        sp_status_t st;

        if (r->qlen != 0)
            return SP_OK;
        if (r->sealed && r->taken == r->list->count) {
            *end_p = true;
            return SP_OK;
        }
        if (r->outstanding > 0 || r->sealed) {
            st = r->fetcher->ops->progress(r->fetcher, r->sealed ? 100 : SP_READER_PROGRESS_MS);
            if (st != SP_OK)
                return SP_RAISE(SP_ERR_FETCH_FAILED, "shuffle fetch progress failed: %s",
                                sp_last_error());
        }
        if (!r->sealed && r->qlen == 0) {
            st = r->wait(r->wait_arg, r, r->outstanding > 0 ? 0 : SP_READER_WAIT_MS);
            if (st != SP_OK)
                return SP_RAISE(st,
                                "waiting for the map outputs of reduce partitions [%u, %u) "
                                "(%u of %u maps in): %s",
                                r->reduce_start, r->reduce_end, r->maps_added, r->maps,
                                sp_last_error());
        }
        if ((st = sp_reader_pump(r)) != SP_OK)
            return st;
    }
}

/* Takes the next verified block, waiting for fetches; *got_p false at the end. */
static sp_status_t sp_reader_take(sp_shuffle_reader_t *r, sp_completion_t *c_p, bool *got_p)
{
    for (;;) {
        sp_completion_t c;
        const sp_block_ref_t *b;
        uint64_t sum;
        sp_status_t st;

        if (r->qlen == 0 && (st = sp_reader_pump(r)) != SP_OK)
            return st;
        if (r->qlen == 0) {
            uint64_t t0 = sp__now_ns();
            bool end;
            st = sp_reader_wait(r, &end);
            r->stats.wait_ns += sp__now_ns() - t0;
            if (st != SP_OK)
                return st;
            if (end) {
                *got_p = false;
                return SP_OK;
            }
        }
        c = r->queue[r->qhead];
        r->qhead = (r->qhead + 1) % (r->cap + 1);
        r->qlen--;
        b = &r->list->blocks[c.index];
        if (c.status == SP_OK && c.file != NULL && (st = sp_reader_map_file(&c)) != SP_OK) {
            sp_reader_release(r, &c);
            return st;
        }
        if (c.status != SP_OK) {
            sp_reader_release(r, &c);
            r->failed_map = b->map_id;
            return SP_RAISE(
                SP_ERR_FETCH_FAILED, "fetch failed: shuffle %llu map %llu reduce %u at %s: %s: %s",
                (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id, b->reduce_id,
                sp_block_where(b), sp_status_str(c.status), sp_last_error());
        }
        sum = sp__checksum_buf(b->checksum_kind, c.data, c.len);
        if (sum != c.expected) {
            sp_reader_release(r, &c);
            if (!r->refetched[c.index]) {
                r->refetched[c.index] = 1;
                r->first_bad[c.index] = sum;
                r->stats.refetches++;
                sp_warn("block of shuffle %llu map %llu reduce %u from %s fails its %s checksum; "
                        "fetching it again",
                        (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id,
                        b->reduce_id, sp_block_where(b), sp_checksum_name(b->checksum_kind));
                if ((st = sp_reader_fetch(r, c.index, 1, c.len)) != SP_OK)
                    return st;
                continue;
            }
            r->failed_map = b->map_id;
            return SP_RAISE(SP_ERR_FETCH_FAILED,
                            "block of shuffle %llu map %llu reduce %u at %s fails its %s checksum "
                            "twice (%s): recompute that map output",
                            (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id,
                            b->reduce_id, sp_block_where(b), sp_checksum_name(b->checksum_kind),
                            r->first_bad[c.index] == sum
                                ? "both copies alike: the stored copy is damaged"
                                : "the copies differ: damaged in flight");
        }
        if (r->refetched[c.index])
            sp_warn("block of shuffle %llu map %llu reduce %u: the second copy is good; the first "
                    "was damaged in flight",
                    (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id, b->reduce_id);
        r->taken++;
        r->stats.blocks++;
        r->stats.bytes += c.len;
        *c_p = c;
        *got_p = true;
        return SP_OK;
    }
}

/* Wraps a decoding error of block c with the block's name. */
static sp_status_t sp_reader_block_error(sp_shuffle_reader_t *r, const sp_completion_t *c,
                                         sp_status_t st)
{
    const sp_block_ref_t *b = &r->list->blocks[c->index];

    return SP_RAISE(st, "block of shuffle %llu map %llu reduce %u at %s: %s",
                    (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id, b->reduce_id,
                    sp_block_where(b), sp_last_error());
}

/* Unordered: the next record of the current block, moving on as blocks end. */
static sp_status_t sp_reader_next_unordered(sp_shuffle_reader_t *r, const void **key_p,
                                            size_t *klen_p, const void **value_p, size_t *vlen_p,
                                            bool *more_p)
{
    for (;;) {
        sp_status_t st;
        bool got;

        if (r->have_cur) {
            st = sp_segment_reader_next(r->seg, key_p, klen_p, value_p, vlen_p, more_p);
            if (st != SP_OK)
                return sp_reader_block_error(r, &r->cur, st);
            if (*more_p)
                return SP_OK;
            sp_reader_release(r, &r->cur);
            r->have_cur = false;
        }
        st = sp_reader_take(r, &r->cur, &got);
        if (st != SP_OK)
            return st;
        if (!got) {
            *more_p = false;
            return SP_OK;
        }
        r->have_cur = true;
        sp_segment_reader_reset(r->seg, r->cur.data, r->cur.len);
    }
}

/* Orders held blocks by (map, reduce): the order of a block list built from statuses. */
static int sp_reader_held_cmp(const void *a, const void *b)
{
    const sp_block_ref_t *x = a, *y = b;

    if (x->map_id != y->map_id)
        return x->map_id < y->map_id ? -1 : 1;
    return x->reduce_id < y->reduce_id ? -1 : x->reduce_id > y->reduce_id;
}

/* Merge: every block, verified, into the k-way merge in (map, reduce) order. */
static sp_status_t sp_reader_start_merge(sp_shuffle_reader_t *r)
{
    sp_block_ref_t *order = NULL;
    sp_status_t st;
    bool got = true;

    while (got) {
        st = sp_reader_take(r, &r->held[r->nheld], &got);
        if (st != SP_OK)
            return st;
        if (got)
            r->nheld++;
    }
    if (r->kmerge == NULL &&
        (st = sp__kmerge_create(r->list->count > 0 ? r->list->blocks[0].codec : SP_CODEC_NONE,
                                r->o.compare, r->o.compare_arg, &r->kmerge)) != SP_OK)
        return st;
    if (r->nheld == 0)
        return SP_OK;
    /*
     * Completion order is not block order: add them by (map, reduce) so that
     * equal keys come out in that order. Each entry carries its held slot in
     * its offset field (a copy: the list itself is not reordered).
     */
    order = sp__malloc(r->nheld * sizeof(*order));
    if (order == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to order %zu blocks for the merge", r->nheld);
    for (size_t i = 0; i < r->nheld; i++) {
        order[i] = r->list->blocks[r->held[i].index];
        order[i].offset = i;
    }
    qsort(order, r->nheld, sizeof(*order), sp_reader_held_cmp);
    st = SP_OK;
    for (size_t added = 0; added < r->nheld && st == SP_OK; added++) {
        const sp_completion_t *c = &r->held[order[added].offset];
        st = sp__kmerge_add(r->kmerge, c->data, c->len);
        r->merge_block[added] = c->index;
    }
    sp__free(order);
    return st;
}

/* Sort and aggregate: every record into the sorter or the aggregator. */
static sp_status_t sp_reader_drain(sp_shuffle_reader_t *r)
{
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more;
        sp_status_t st = sp_reader_next_unordered(r, &k, &kl, &v, &vl, &more);

        if (st != SP_OK || !more)
            return st;
        st = r->sorter != NULL ? sp__sorter_add(r->sorter, k, kl, v, vl)
                               : sp__aggregator_add(r->agg, k, kl, v, vl);
        if (st != SP_OK)
            return st;
    }
}

sp_status_t sp_shuffle_reader_next(sp_shuffle_reader_t *r, const void **key_p, size_t *klen_p,
                                   const void **value_p, size_t *vlen_p, bool *more_p)
{
    sp_status_t st = r->error;

    if (st != SP_OK)
        return SP_RAISE(st, "the shuffle reader failed earlier");
    switch (r->o.order) {
    case SP_READ_UNORDERED:
        st = sp_reader_next_unordered(r, key_p, klen_p, value_p, vlen_p, more_p);
        break;
    case SP_READ_MERGE:
        if (!r->drained) {
            r->drained = true;
            st = sp_reader_start_merge(r);
        }
        if (st == SP_OK)
            st = sp__kmerge_next(r->kmerge, key_p, klen_p, value_p, vlen_p, more_p);
        if (st != SP_OK && r->kmerge != NULL && sp__kmerge_bad_input(r->kmerge) != SIZE_MAX) {
            const sp_block_ref_t *b =
                &r->list->blocks[r->merge_block[sp__kmerge_bad_input(r->kmerge)]];
            st = SP_RAISE(st,
                          "block of shuffle %llu map %llu reduce %u at %s is not sorted by the "
                          "job's comparator: was it written with key ordering, and is the "
                          "comparator consistent?",
                          (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id,
                          b->reduce_id, sp_block_where(b));
        }
        break;
    case SP_READ_SORT:
    case SP_READ_AGGREGATE:
        if (!r->drained) {
            r->drained = true;
            st = sp_reader_drain(r);
        }
        if (st == SP_OK)
            st = r->sorter != NULL
                     ? sp__sorter_next(r->sorter, key_p, klen_p, value_p, vlen_p, more_p)
                     : sp_aggregator_next(r->agg, key_p, klen_p, value_p, vlen_p, more_p);
        break;
    }
    if (st != SP_OK) {
        r->error = st;
        return st;
    }
    if (*more_p)
        r->stats.records++;
    return SP_OK;
}

/* Cuts blocks [from, count) of the list into requests: consecutive blocks of one peer. */
static void sp_reader_plan(sp_shuffle_reader_t *r, size_t from)
{
    uint64_t target = SP_MAX(r->max_in_flight / 5, 1);
    size_t first_request = r->nrequests;

    for (size_t i = from; i < r->list->count; i++) {
        const sp_block_ref_t *b = &r->list->blocks[i];
        sp_request_t *q = r->nrequests > first_request ? &r->requests[r->nrequests - 1] : NULL;
        const sp_block_ref_t *prev = q != NULL ? &r->list->blocks[q->first + q->count - 1] : NULL;
        bool same_peer = prev != NULL && prev->executor_id == b->executor_id &&
                         (prev->address == NULL) == (b->address == NULL) &&
                         (prev->address == NULL || strcmp(prev->address, b->address) == 0);

        if (q != NULL && same_peer && q->bytes + b->size <= target &&
            b->size <= r->max_block_in_memory && q->bytes <= r->max_block_in_memory) {
            q->count++;
            q->bytes += b->size;
        } else {
            r->requests[r->nrequests++] = (sp_request_t){i, 1, b->size};
        }
    }
}

/* ---- the pool of request contexts ---- */

static sp_ctx_pool_t *sp_reader_pool(sp_shuffle_reader_t *r)
{
    return (sp_ctx_pool_t *)(void *)(r + 1);
}

/* The external sorter of sorted reads: one partition, key-ordered by the job's comparator. */
static sp_status_t sp_reader_sorter_create(sp_task_memory_t *task, const sp_conf_t *conf,
                                           const sp_shuffle_reader_options_t *opts,
                                           sp_sorter_t **sorter_p)
{
    sp_shuffle_writer_options_t o;
    sp_status_t st = sp_shuffle_writer_options_init(&o, conf);

    if (st != SP_OK)
        return st;
    o.partitions = 1;
    o.key_ordering = true;
    o.compare = opts->compare;
    o.compare_arg = opts->compare_arg;
    o.path = SP_WRITER_SORT;
    return sp__sorter_create(task, conf, &o, sorter_p);
}

/*
 * The reader over list with room for cap blocks (list->count of them known
 * now); the caller plans them. Incremental readers pass their own list.
 */
static sp_status_t sp_reader_create(sp_task_memory_t *task, const sp_conf_t *conf,
                                    const sp_block_list_t *list, size_t cap,
                                    const sp_shuffle_reader_options_t *opts,
                                    sp_shuffle_reader_t **reader_p)
{
    sp_shuffle_reader_t *r;
    sp_ctx_pool_t *pool;
    sp_status_t st;

    if (opts->order > SP_READ_AGGREGATE)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "unknown read order %d", (int)opts->order);
    if (opts->order == SP_READ_AGGREGATE &&
        (opts->combiner == NULL || opts->combiner->combine == NULL))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "an aggregated read needs a combiner");
    if (cap > (SIZE_MAX - 1) / 2 / sizeof(sp_req_ctx_t))
        return SP_RAISE(SP_ERR_NOMEM, "a shuffle read of %zu blocks does not fit in memory", cap);
    /* The reader and its pool of request contexts in one allocation. */
    r = sp__calloc(1, sizeof(*r) + sizeof(sp_ctx_pool_t));
    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle reader");
    pool = sp_reader_pool(r);
    r->task = task;
    r->list = list;
    r->cap = cap;
    r->o = *opts;
    r->failed_map = UINT64_MAX;
    if ((st = sp_conf_get_size(conf, "shuffle.max_bytes_in_flight", &r->max_in_flight)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.max_block_in_memory", &r->max_block_in_memory)) !=
            SP_OK)
        goto err;
    pool->cap = 2 * cap + 1; /* every block may be its own request, and refetched once */
    pool->ctx = sp__calloc(pool->cap, sizeof(*pool->ctx));
    r->requests = sp__calloc(cap + 1, sizeof(*r->requests));
    r->queue = sp__calloc(cap + 1, sizeof(*r->queue));
    r->first_bad = sp__calloc(cap + 1, sizeof(*r->first_bad));
    r->refetched = sp__calloc(cap + 1, 1);
    r->held = opts->order == SP_READ_MERGE ? sp__calloc(cap + 1, sizeof(*r->held)) : NULL;
    r->merge_block =
        opts->order == SP_READ_MERGE ? sp__calloc(cap + 1, sizeof(*r->merge_block)) : NULL;
    if (pool->ctx == NULL || r->requests == NULL || r->queue == NULL || r->first_bad == NULL ||
        r->refetched == NULL ||
        (opts->order == SP_READ_MERGE && (r->held == NULL || r->merge_block == NULL))) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle reader of %zu blocks", cap);
        goto err;
    }
    if (opts->fetcher != NULL) {
        r->fetcher = opts->fetcher;
        /* Only a fetcher that can stream to files needs the local dirs. */
        if (sp_reader_can_fetch_to_file(r) || r->fetcher->ops->fetch_to_file != NULL)
            if ((st = sp__shuffle_dirs_create(conf, &r->dirs)) != SP_OK)
                goto err;
    } else {
        if ((st = sp_block_fetcher_local_create(&r->fetcher)) != SP_OK)
            goto err;
        r->own_fetcher = true;
    }
    if (opts->order == SP_READ_SORT)
        st = sp_reader_sorter_create(task, conf, opts, &r->sorter);
    else if (opts->order == SP_READ_AGGREGATE)
        st = sp_aggregator_create(task, conf, opts->combiner, &r->agg);
    if (st != SP_OK)
        goto err;
    *reader_p = r;
    return SP_OK;

err:
    sp_shuffle_reader_close(r);
    return st;
}

sp_status_t sp_shuffle_reader_open(sp_task_memory_t *task, const sp_conf_t *conf,
                                   const sp_block_list_t *blocks,
                                   const sp_shuffle_reader_options_t *opts,
                                   sp_shuffle_reader_t **reader_p)
{
    size_t n = blocks->count;
    sp_shuffle_reader_t *r;
    sp_status_t st;

    for (size_t i = 1; i < n; i++) {
        if (blocks->blocks[i].codec != blocks->blocks[0].codec)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "blocks of one read use different codecs");
    }
    if ((st = sp_reader_create(task, conf, blocks, n, opts, &r)) != SP_OK)
        return st;
    r->sealed = true;
    sp_reader_plan(r, 0);
    if ((st = sp_segment_reader_create(n > 0 ? blocks->blocks[0].codec : SP_CODEC_NONE, &r->seg)) !=
        SP_OK) {
        sp_shuffle_reader_close(r);
        return st;
    }
    *reader_p = r;
    return SP_OK;
}

sp_status_t sp_shuffle_reader_open_incremental(sp_task_memory_t *task, const sp_conf_t *conf,
                                               uint32_t maps, uint32_t reduce_start,
                                               uint32_t reduce_end,
                                               const sp_shuffle_reader_options_t *opts,
                                               sp_shuffle_reader_wait_fn_t wait, void *wait_arg,
                                               sp_shuffle_reader_t **reader_p)
{
    size_t cap = (size_t)maps * (reduce_end - reduce_start);
    sp_shuffle_reader_t *r;
    sp_status_t st;

    if (wait == NULL || reduce_start > reduce_end)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "incremental shuffle read: %s",
                        wait == NULL ? "no wait function" : "the reduce range is reversed");
    if ((st = sp_reader_create(task, conf, NULL, cap, opts, &r)) != SP_OK)
        return st;
    r->list = &r->own;
    r->maps = maps;
    r->reduce_start = reduce_start;
    r->reduce_end = reduce_end;
    r->wait = wait;
    r->wait_arg = wait_arg;
    r->sealed = maps == 0 || cap == 0;
    r->own.blocks = sp__calloc(cap + 1, sizeof(*r->own.blocks));
    r->added = sp__calloc((size_t)maps + 1, 1);
    if (r->own.blocks == NULL || r->added == NULL) {
        sp_shuffle_reader_close(r);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an incremental shuffle read of %u maps", maps);
    }
    *reader_p = r;
    return SP_OK;
}

sp_status_t sp_shuffle_reader_add(sp_shuffle_reader_t *r, const sp_map_status_t *const *statuses,
                                  size_t count)
{
    const sp_map_status_t **fresh = NULL;
    sp_block_list_t *batch = NULL, **grown;
    size_t nfresh = 0, from = r->own.count;
    sp_status_t st;

    if (r->added == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "map statuses added to a shuffle reader that was "
                                              "opened over a fixed block list");
    if (r->sealed || count == 0)
        return SP_OK;
    fresh = sp__calloc(count, sizeof(*fresh));
    if (fresh == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu map statuses", count);
    for (size_t i = 0; i < count; i++) {
        const sp_map_status_t *s = statuses[i];
        if (s == NULL)
            continue;
        if (s->map_id >= r->maps) {
            st =
                SP_RAISE(SP_ERR_INVALID_PARAM,
                         "map status of shuffle %llu map %llu added to a read of %u maps",
                         (unsigned long long)s->shuffle_id, (unsigned long long)s->map_id, r->maps);
            goto out;
        }
        if (r->added[s->map_id] == 0) {
            r->added[s->map_id] = 2; /* taken for this batch: a second one is skipped */
            fresh[nfresh++] = s;
        }
    }
    if (nfresh == 0) {
        st = SP_OK;
        goto out;
    }
    if ((st = sp_block_list_from_statuses(fresh, nfresh, r->reduce_start, r->reduce_end, &batch)) !=
        SP_OK)
        goto out;
    /* One block per map and partition at most: the list's room holds them all. */
    SP_ASSERT(r->own.count + batch->count <= r->cap);
    for (size_t i = 0; i < batch->count; i++) {
        sp_codec_t codec = r->own.count > 0 ? r->own.blocks[0].codec : batch->blocks[0].codec;
        if (batch->blocks[i].codec != codec) {
            st = SP_RAISE(SP_ERR_INVALID_PARAM,
                          "map %llu's blocks use another codec than the read's first block",
                          (unsigned long long)batch->blocks[i].map_id);
            goto out;
        }
    }
    if (r->seg == NULL && batch->count > 0 &&
        (st = sp_segment_reader_create(batch->blocks[0].codec, &r->seg)) != SP_OK)
        goto out;
    grown = sp__realloc(r->batches, (r->nbatches + 1) * sizeof(*r->batches));
    if (grown == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the block lists of a shuffle read");
        goto out;
    }
    r->batches = grown;
    r->batches[r->nbatches++] = batch;
    if (batch->count > 0)
        memcpy(&r->own.blocks[r->own.count], batch->blocks, batch->count * sizeof(*batch->blocks));
    r->own.count += batch->count;
    batch = NULL;
    r->maps_added += (uint32_t)nfresh;
    r->sealed = r->maps_added == r->maps;
    sp_reader_plan(r, from);
out:
    /* The batch's maps are in, or, when adding it failed, not. */
    for (size_t i = 0; i < nfresh; i++)
        r->added[fresh[i]->map_id] = st == SP_OK ? 1 : 0;
    sp_block_list_destroy(batch);
    sp__free(fresh);
    return st;
}

bool sp_shuffle_reader_failed_map(const sp_shuffle_reader_t *r, uint64_t *map_id_p)
{
    if (r == NULL || r->failed_map == UINT64_MAX)
        return false;
    *map_id_p = r->failed_map;
    return true;
}

void sp_shuffle_reader_stats(const sp_shuffle_reader_t *r, sp_shuffle_read_stats_t *stats_p)
{
    *stats_p = r->stats;
    if (r->sorter != NULL) {
        stats_p->spills = r->sorter->stats.spills;
    } else if (r->agg != NULL) {
        sp_aggregator_stats_t as;
        sp_aggregator_stats(r->agg, &as);
        stats_p->spills = as.spills;
    }
}

void sp_shuffle_reader_close(sp_shuffle_reader_t *r)
{
    if (r == NULL)
        return;
    if (r->fetcher != NULL) {
        if (r->have_cur)
            sp_reader_release(r, &r->cur);
        for (size_t i = 0; i < r->nheld; i++)
            sp_reader_release(r, &r->held[i]);
        /* Completed blocks nobody took. */
        for (size_t i = 0; i < r->qlen; i++)
            sp_reader_release(r, &r->queue[(r->qhead + i) % (r->cap + 1)]);
        /* Files of fetches that never completed. */
        for (size_t i = 0; i < sp_reader_pool(r)->n; i++) {
            char *file = sp_reader_pool(r)->ctx[i].file;
            if (file != NULL) {
                unlink(file);
                sp__tempfile_forget(file);
                sp__free(file);
            }
        }
        if (r->own_fetcher)
            sp_block_fetcher_destroy(r->fetcher);
    }
    sp__sorter_destroy(r->sorter);
    sp_aggregator_destroy(r->agg);
    sp__kmerge_destroy(r->kmerge);
    sp_segment_reader_destroy(r->seg);
    sp__free(sp_reader_pool(r)->ctx);
    sp__shuffle_dirs_destroy(r->dirs);
    sp__free(r->requests);
    sp__free(r->queue);
    sp__free(r->first_bad);
    sp__free(r->refetched);
    sp__free(r->held);
    sp__free(r->merge_block);
    for (size_t i = 0; i < r->nbatches; i++)
        sp_block_list_destroy(r->batches[i]);
    sp__free(r->batches);
    sp__free(r->own.blocks);
    sp__free(r->added);
    sp__free(r);
}
