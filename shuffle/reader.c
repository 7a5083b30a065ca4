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
 * merged reads hold every block and k-way merge them; sorted reads feed an
 * external sorter (shuffle/sorter.c, one key-ordered partition), aggregated
 * reads the hash aggregator; both are memory consumers of the task and spill
 * when short.
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
    sp_completion_t *queue; /* completed, not yet taken; a ring of list->count */
    size_t qhead, qlen, taken;
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
    size_t slot = (r->qhead + r->qlen) % (r->list->count + 1);

    r->queue[slot] = (sp_completion_t){ctx->first + i, status, data, len, expected, ctx->file};
    ctx->file = NULL;
    r->qlen++;
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

/* Takes the next verified block, waiting for fetches; *got_p false at the end. */
static sp_status_t sp_reader_take(sp_shuffle_reader_t *r, sp_completion_t *c_p, bool *got_p)
{
    for (;;) {
        sp_completion_t c;
        const sp_block_ref_t *b;
        uint64_t sum;
        sp_status_t st;

        if (r->qlen == 0) {
            uint64_t t0;
            if ((st = sp_reader_pump(r)) != SP_OK)
                return st;
            if (r->qlen == 0 && r->taken == r->list->count) {
                *got_p = false;
                return SP_OK;
            }
            t0 = sp__now_ns();
            while (r->qlen == 0) {
                st = r->fetcher->ops->progress(r->fetcher, 100);
                if (st != SP_OK)
                    return SP_RAISE(SP_ERR_FETCH_FAILED, "shuffle fetch progress failed: %s",
                                    sp_last_error());
                if (r->qlen == 0 && (st = sp_reader_pump(r)) != SP_OK)
                    return st;
            }
            r->stats.wait_ns += sp__now_ns() - t0;
        }
        c = r->queue[r->qhead];
        r->qhead = (r->qhead + 1) % (r->list->count + 1);
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

/* Merge: every block, verified, into the k-way merge in block-list order. */
static sp_status_t sp_reader_start_merge(sp_shuffle_reader_t *r)
{
    sp_status_t st;
    bool got = true;

    while (got) {
        st = sp_reader_take(r, &r->held[r->nheld], &got);
        if (st != SP_OK)
            return st;
        if (got)
            r->nheld++;
    }
    /* Completion order is not block order: add them sorted by index so
     * that equal keys come out in (map, reduce) order. */
    for (size_t want = 0, added = 0; added < r->nheld; want++) {
        for (size_t i = 0; i < r->nheld; i++) {
            if (r->held[i].index == want) {
                st = sp__kmerge_add(r->kmerge, r->held[i].data, r->held[i].len);
                if (st != SP_OK)
                    return st;
                r->merge_block[added] = want;
                added++;
                break;
            }
        }
    }
    return SP_OK;
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
        if (st != SP_OK && sp__kmerge_bad_input(r->kmerge) != SIZE_MAX) {
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

/* Cuts the block list into requests: consecutive blocks of one peer. */
static sp_status_t sp_reader_plan(sp_shuffle_reader_t *r)
{
    uint64_t target = SP_MAX(r->max_in_flight / 5, 1);
    size_t n = r->list->count;

    r->requests = sp__calloc(n + 1, sizeof(*r->requests));
    if (r->requests == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to plan the fetch of %zu blocks", n);
    for (size_t i = 0; i < n; i++) {
        const sp_block_ref_t *b = &r->list->blocks[i];
        sp_request_t *q = r->nrequests > 0 ? &r->requests[r->nrequests - 1] : NULL;
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
    return SP_OK;
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

sp_status_t sp_shuffle_reader_open(sp_task_memory_t *task, const sp_conf_t *conf,
                                   const sp_block_list_t *blocks,
                                   const sp_shuffle_reader_options_t *opts,
                                   sp_shuffle_reader_t **reader_p)
{
    size_t n = blocks->count;
    sp_shuffle_reader_t *r;
    sp_ctx_pool_t *pool;
    sp_status_t st;

    if (opts->order > SP_READ_AGGREGATE)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "unknown read order %d", (int)opts->order);
    if (opts->order == SP_READ_AGGREGATE &&
        (opts->combiner == NULL || opts->combiner->combine == NULL))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "an aggregated read needs a combiner");
    for (size_t i = 1; i < n; i++) {
        if (blocks->blocks[i].codec != blocks->blocks[0].codec)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "blocks of one read use different codecs");
    }
    /* The reader and its pool of request contexts in one allocation. */
    r = sp__calloc(1, sizeof(*r) + sizeof(sp_ctx_pool_t));
    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle reader");
    pool = sp_reader_pool(r);
    r->task = task;
    r->list = blocks;
    r->o = *opts;
    r->failed_map = UINT64_MAX;
    if ((st = sp_conf_get_size(conf, "shuffle.max_bytes_in_flight", &r->max_in_flight)) != SP_OK ||
        (st = sp_conf_get_size(conf, "shuffle.max_block_in_memory", &r->max_block_in_memory)) !=
            SP_OK)
        goto err;
    pool->cap = 2 * n + 1; /* every block may be its own request, and refetched once */
    pool->ctx = sp__calloc(pool->cap, sizeof(*pool->ctx));
    r->queue = sp__calloc(n + 1, sizeof(*r->queue));
    r->first_bad = sp__calloc(n + 1, sizeof(*r->first_bad));
    r->refetched = sp__calloc(n + 1, 1);
    r->held = opts->order == SP_READ_MERGE ? sp__calloc(n + 1, sizeof(*r->held)) : NULL;
    r->merge_block =
        opts->order == SP_READ_MERGE ? sp__calloc(n + 1, sizeof(*r->merge_block)) : NULL;
    if (pool->ctx == NULL || r->queue == NULL || r->first_bad == NULL || r->refetched == NULL ||
        (opts->order == SP_READ_MERGE && (r->held == NULL || r->merge_block == NULL))) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a shuffle reader of %zu blocks", n);
        goto err;
    }
    if ((st = sp_reader_plan(r)) != SP_OK)
        goto err;
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
    if ((st = sp_segment_reader_create(n > 0 ? blocks->blocks[0].codec : SP_CODEC_NONE, &r->seg)) !=
        SP_OK)
        goto err;
    if (opts->order == SP_READ_MERGE)
        st = sp__kmerge_create(n > 0 ? blocks->blocks[0].codec : SP_CODEC_NONE, opts->compare,
                               opts->compare_arg, &r->kmerge);
    else if (opts->order == SP_READ_SORT)
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
            sp_reader_release(r, &r->queue[(r->qhead + i) % (r->list->count + 1)]);
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
    sp__free(r);
}
