/*
 * End-to-end shuffle in one process: M map writers (random records, key
 * ordering on or off, each codec, spills forced) commit their outputs, then
 * every reduce partition is read in each order and compared with a naive
 * reference: unordered as multisets, merged and sorted as exact sequences
 * (stable: equal keys in map order, then write order), aggregated as an
 * exact map. Memory budgets go from ample to tiny. An instrumented fetcher
 * checks the in-flight limit and damages a block in flight; damaged files
 * must fail the read with an error naming the block.
 */
/* LABELS: unit */
#include "writer_test_util.h"
#include "shuffle/codec.h"

#include <fcntl.h>
#include <sys/stat.h>

static char dir[256];

#define MAPS 4

typedef struct shuffle_env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_map_status_t *status[MAPS];
    ref_record_t *ref[MAPS];
    size_t nref[MAPS];
    uint32_t partitions;
} shuffle_env_t;

static sp_conf_t *make_conf(const char *executor)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", "64k"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dir), SP_OK);
    return conf;
}

/* Runs MAPS map tasks; values are u64 little-endian counts for aggregation. */
static const sp_combiner_t sum_combiner;
static const sp_combiner_t *map_combiner; /* map-side combine of the next shuffle_write */
static size_t max_key = 6;                /* longest key of the next shuffle_write */

static void shuffle_write(shuffle_env_t *e, uint32_t partitions, size_t records, bool ordered,
                          sp_codec_t codec, const char *executor)
{
    char cmd[300];

    /* A fresh directory: an output left by a failed test would be kept by
     * the idempotent commit as another attempt's. */
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    memset(e, 0, sizeof(*e));
    e->partitions = partitions;
    e->conf = make_conf(executor);
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
    for (uint32_t m = 0; m < MAPS; m++) {
        ref_case_t c = {.partitions = partitions,
                        .records = records,
                        .max_key = max_key,
                        .max_value = 8,
                        .seed = 1000 + m};
        sp_shuffle_writer_options_t o;
        sp_shuffle_writer_t *w = NULL;
        sp_task_memory_t *task = NULL;

        e->ref[m] = ref_generate(&c);
        e->nref[m] = records;
        for (size_t i = 0; i < records; i++) {
            uint64_t v = (uint64_t)(rand() % 1000);
            e->ref[m][i].value = realloc(e->ref[m][i].value, 8);
            assert_non_null(e->ref[m][i].value);
            e->ref[m][i].vlen = 8;
            for (int b = 0; b < 8; b++)
                e->ref[m][i].value[b] = (unsigned char)(v >> (8 * b));
        }
        assert_int_equal(sp_task_memory_create(e->mm, 100 + m, &task), SP_OK);
        assert_int_equal(sp_shuffle_writer_options_init(&o, e->conf), SP_OK);
        o.shuffle_id = 7;
        o.map_id = m;
        o.partitions = partitions;
        o.key_ordering = ordered;
        o.codec = codec;
        o.path = SP_WRITER_SORT;
        o.combiner = map_combiner;
        assert_int_equal(sp_shuffle_writer_open(task, e->conf, &o, &w), SP_OK);
        for (size_t i = 0; i < records; i++)
            assert_int_equal(sp_shuffle_writer_write(w, e->ref[m][i].partition, e->ref[m][i].key,
                                                     e->ref[m][i].klen, e->ref[m][i].value, 8),
                             SP_OK);
        assert_int_equal(sp_shuffle_writer_commit(w, &e->status[m]), SP_OK);
        sp_shuffle_writer_close(w);
        sp_task_memory_destroy(task, NULL);
    }
}

static void shuffle_free(shuffle_env_t *e)
{
    char cmd[300];

    for (uint32_t m = 0; m < MAPS; m++) {
        sp_map_status_destroy(e->status[m]);
        ref_free(e->ref[m], e->nref[m]);
    }
    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A flat record for references. */
typedef struct flat {
    unsigned char key[16];
    size_t klen;
    uint64_t value;
    uint32_t map, index;
} flat_t;

static int flat_key_cmp(const flat_t *a, const flat_t *b)
{
    int c = memcmp(a->key, b->key, a->klen < b->klen ? a->klen : b->klen);
    return c != 0 ? c : (a->klen > b->klen) - (a->klen < b->klen);
}

static int flat_cmp_stable(const void *x, const void *y)
{
    const flat_t *a = x, *b = y;
    int c = flat_key_cmp(a, b);

    if (c != 0)
        return c;
    if (a->map != b->map)
        return a->map < b->map ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static int flat_cmp_multiset(const void *x, const void *y)
{
    const flat_t *a = x, *b = y;
    int c = flat_key_cmp(a, b);

    return c != 0 ? c : (a->value > b->value) - (a->value < b->value);
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int b = 7; b >= 0; b--)
        v = (v << 8) | p[b];
    return v;
}

/* Records of reduce partition r in (map, write) order. */
static flat_t *expected(const shuffle_env_t *e, uint32_t r, size_t *n_p)
{
    size_t n = 0, cap = 16;
    flat_t *f = malloc(cap * sizeof(*f));

    for (uint32_t m = 0; m < MAPS; m++) {
        for (size_t i = 0; i < e->nref[m]; i++) {
            const ref_record_t *rec = &e->ref[m][i];
            if (rec->partition != r)
                continue;
            if (n == cap)
                f = realloc(f, (cap *= 2) * sizeof(*f));
            memset(&f[n], 0, sizeof(f[n]));
            memcpy(f[n].key, rec->key, rec->klen);
            f[n].klen = rec->klen;
            f[n].value = le64(rec->value);
            f[n].map = m;
            f[n].index = rec->index;
            n++;
        }
    }
    *n_p = n;
    return f;
}

static size_t sum_combine(void *arg, const void *key, size_t klen, const void *a, size_t alen,
                          const void *b, size_t blen, void *out, size_t cap)
{
    (void)arg;
    (void)key;
    (void)klen;
    assert_int_equal(alen, 8);
    assert_int_equal(blen, 8);
    if (cap >= 8) {
        uint64_t s = le64(a) + le64(b);
        for (int i = 0; i < 8; i++)
            ((unsigned char *)out)[i] = (unsigned char)(s >> (8 * i));
    }
    return 8;
}

static const sp_combiner_t sum_combiner = {.combine = sum_combine};

static void check_partition(shuffle_env_t *e, uint32_t r, sp_read_order_t order,
                            sp_block_fetcher_t *fetcher, sp_shuffle_read_stats_t *stats_p);

static void test_reader_map_side_combine(void **state)
{
    shuffle_env_t e;

    (void)state;
    /* With a combiner the map outputs hold one record per key and
     * partition; the aggregated read still sums every original value. */
    map_combiner = &sum_combiner;
    shuffle_write(&e, 5, 5000, false, SP_CODEC_LZ4, "2m");
    map_combiner = NULL;
    for (uint32_t m = 0; m < MAPS; m++) {
        for (uint32_t r = 0; r < e.partitions; r++) {
            size_t n = 0, distinct = 0;
            flat_t *f = expected(&e, r, &n);
            size_t keep = 0;
            for (size_t i = 0; i < n; i++) {
                if (f[i].map == m)
                    f[keep++] = f[i];
            }
            qsort(f, keep, sizeof(*f), flat_cmp_stable);
            for (size_t i = 0; i < keep; i++)
                distinct += i == 0 || flat_key_cmp(&f[i - 1], &f[i]) != 0;
            assert_int_equal(e.status[m]->records[r], distinct);
            free(f);
        }
    }
    for (uint32_t r = 0; r < e.partitions; r++)
        check_partition(&e, r, SP_READ_AGGREGATE, NULL, NULL);
    shuffle_free(&e);
}

/*
 * Incremental reads: when set, check_partition opens the reader before any
 * status is in and its wait function hands them over one per call, last map
 * first, each time with the previous one again (which must be ignored).
 */
static bool incremental;

typedef struct feed {
    shuffle_env_t *e;
    int next; /* the map handed over next; -1: all given */
    unsigned calls, waits;
    sp_status_t fail; /* returned instead, when not SP_OK */
} feed_t;

static sp_status_t feed_wait(void *arg, sp_shuffle_reader_t *reader, int timeout_ms)
{
    feed_t *f = arg;
    const sp_map_status_t *give[3];

    f->calls++;
    f->waits += timeout_ms > 0;
    if (f->fail != SP_OK)
        return SP_RAISE(f->fail, "the test gives up on the read");
    assert_true(f->next >= 0); /* the reader must not wait once every map is in */
    give[0] = f->e->status[f->next];
    give[1] = NULL;
    give[2] = f->next + 1 < MAPS ? f->e->status[f->next + 1] : f->e->status[f->next];
    f->next--;
    return sp_shuffle_reader_add(reader, give, 3);
}

/* Reads partition r in order and checks it against the reference. */
static void check_partition(shuffle_env_t *e, uint32_t r, sp_read_order_t order,
                            sp_block_fetcher_t *fetcher, sp_shuffle_read_stats_t *stats_p)
{
    feed_t feed = {.e = e, .next = MAPS - 1};
    const sp_map_status_t *st[MAPS];
    sp_block_list_t *list = NULL;
    sp_shuffle_reader_options_t o = {.order = order, .fetcher = fetcher};
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    size_t n = 0, got = 0, cap = 16;
    flat_t *want = expected(e, r, &n), *have = malloc(cap * sizeof(*have));

    if (order == SP_READ_AGGREGATE)
        o.combiner = &sum_combiner;
    for (int m = 0; m < MAPS; m++)
        st[m] = e->status[m];
    assert_int_equal(sp_block_list_from_statuses(st, MAPS, r, r + 1, &list), SP_OK);
    assert_int_equal(sp_task_memory_create(e->mm, 500 + r, &task), SP_OK);
    if (incremental)
        assert_int_equal(sp_shuffle_reader_open_incremental(task, e->conf, MAPS, r, r + 1, &o,
                                                            feed_wait, &feed, &reader),
                         SP_OK);
    else
        assert_int_equal(sp_shuffle_reader_open(task, e->conf, list, &o, &reader), SP_OK);
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more;
        assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        if (got == cap)
            have = realloc(have, (cap *= 2) * sizeof(*have));
        assert_true(kl <= sizeof(have[got].key));
        assert_int_equal(vl, 8);
        memset(&have[got], 0, sizeof(have[got]));
        memcpy(have[got].key, k, kl);
        have[got].klen = kl;
        have[got].value = le64(v);
        got++;
    }
    if (stats_p != NULL)
        sp_shuffle_reader_stats(reader, stats_p);
    if (incremental) /* every map handed over, one per call, and no call after the last */
        assert_int_equal(feed.next, -1);
    sp_shuffle_reader_close(reader);
    sp_task_memory_destroy(task, NULL);
    sp_block_list_destroy(list);

    if (order == SP_READ_AGGREGATE) {
        /* Exact map: group the reference by key and sum. */
        size_t groups = 0;
        qsort(want, n, sizeof(*want), flat_cmp_stable);
        for (size_t i = 0; i < n; i++) {
            if (groups > 0 && flat_key_cmp(&want[groups - 1], &want[i]) == 0)
                want[groups - 1].value += want[i].value;
            else
                want[groups++] = want[i];
        }
        n = groups;
        qsort(have, got, sizeof(*have), flat_cmp_multiset);
    } else if (order == SP_READ_SORT && incremental) {
        /* Key order exactly; equal keys come in the order their blocks arrived. */
        for (size_t i = 1; i < got; i++)
            assert_true(flat_key_cmp(&have[i - 1], &have[i]) <= 0);
        qsort(want, n, sizeof(*want), flat_cmp_multiset);
        qsort(have, got, sizeof(*have), flat_cmp_multiset);
    } else if (order == SP_READ_UNORDERED) {
        qsort(want, n, sizeof(*want), flat_cmp_multiset);
        qsort(have, got, sizeof(*have), flat_cmp_multiset);
    } else {
        qsort(want, n, sizeof(*want), flat_cmp_stable);
    }
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(have[i].klen, want[i].klen);
        assert_memory_equal(have[i].key, want[i].key, want[i].klen);
        assert_int_equal(have[i].value, want[i].value);
    }
    free(want);
    free(have);
}

static void test_reader_every_order_matches_reference(void **state)
{
    static const sp_codec_t codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4, SP_CODEC_ZSTD};

    (void)state;
    for (int ordered = 0; ordered < 2; ordered++) {
        for (int ci = 0; ci < 3; ci++) {
            shuffle_env_t e;
            shuffle_write(&e, 13, 3000, ordered != 0, codecs[ci], "64m");
            for (uint32_t r = 0; r < e.partitions; r++) {
                check_partition(&e, r, SP_READ_UNORDERED, NULL, NULL);
                check_partition(&e, r, ordered ? SP_READ_MERGE : SP_READ_SORT, NULL, NULL);
                check_partition(&e, r, SP_READ_AGGREGATE, NULL, NULL);
            }
            shuffle_free(&e);
        }
    }
}

/* Statuses arriving one at a time, last map first: the same records in the same order. */
static void test_reader_incremental_matches_reference(void **state)
{
    static const sp_codec_t codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4};

    (void)state;
    incremental = true;
    for (int ordered = 0; ordered < 2; ordered++) {
        for (int ci = 0; ci < 2; ci++) {
            shuffle_env_t e;
            shuffle_write(&e, 7, 2000, ordered != 0, codecs[ci], "64m");
            for (uint32_t r = 0; r < e.partitions; r++) {
                check_partition(&e, r, SP_READ_UNORDERED, NULL, NULL);
                check_partition(&e, r, ordered ? SP_READ_MERGE : SP_READ_SORT, NULL, NULL);
                check_partition(&e, r, SP_READ_AGGREGATE, NULL, NULL);
            }
            shuffle_free(&e);
        }
    }
    incremental = false;
}

/* A wait that fails fails the read with its status; bad statuses are refused. */
static void test_reader_incremental_failures(void **state)
{
    shuffle_env_t e;
    sp_shuffle_reader_options_t o = {.order = SP_READ_MERGE};
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    feed_t feed;
    const void *k, *v;
    size_t kl, vl;
    bool more;
    const sp_map_status_t *give[1];
    sp_block_list_t *list = NULL;

    (void)state;
    shuffle_write(&e, 3, 500, true, SP_CODEC_NONE, "64m");
    assert_int_equal(sp_task_memory_create(e.mm, 900, &task), SP_OK);

    /* Two maps in, then the caller gives up: the read fails with its status and says why. */
    feed = (feed_t){.e = &e, .next = MAPS - 1};
    assert_int_equal(
        sp_shuffle_reader_open_incremental(task, e.conf, MAPS, 0, 1, &o, feed_wait, &feed, &reader),
        SP_OK);
    give[0] = e.status[0];
    assert_int_equal(sp_shuffle_reader_add(reader, give, 1), SP_OK);
    feed.fail = SP_ERR_CANCELED;
    assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_ERR_CANCELED);
    assert_non_null(strstr(sp_last_error(), "waiting for the map outputs"));
    assert_non_null(strstr(sp_last_error(), "1 of 4 maps in"));
    assert_non_null(strstr(sp_last_error(), "the test gives up"));
    assert_true(feed.calls >= 1);
    sp_shuffle_reader_close(reader);

    /* A status of a map past the read's maps. */
    reader = NULL;
    assert_int_equal(sp_shuffle_reader_open_incremental(task, e.conf, MAPS - 1, 0, 1, &o, feed_wait,
                                                        &feed, &reader),
                     SP_OK);
    give[0] = e.status[MAPS - 1];
    assert_int_equal(sp_shuffle_reader_add(reader, give, 1), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "a read of 3 maps"));
    sp_shuffle_reader_close(reader);

    /* Statuses added to a reader over a fixed list; no wait function. */
    reader = NULL;
    assert_int_equal(
        sp_block_list_from_statuses((const sp_map_status_t *const *)e.status, MAPS, 0, 1, &list),
        SP_OK);
    assert_int_equal(sp_shuffle_reader_open(task, e.conf, list, &o, &reader), SP_OK);
    assert_int_equal(sp_shuffle_reader_add(reader, give, 1), SP_ERR_INVALID_PARAM);
    sp_shuffle_reader_close(reader);
    sp_block_list_destroy(list);
    reader = NULL;
    assert_int_equal(
        sp_shuffle_reader_open_incremental(task, e.conf, MAPS, 0, 1, &o, NULL, NULL, &reader),
        SP_ERR_INVALID_PARAM);
    assert_null(reader);

    sp_task_memory_destroy(task, NULL);
    shuffle_free(&e);
}

static void test_reader_tiny_memory_spills_and_still_matches(void **state)
{
    shuffle_env_t e;

    (void)state;
    /* Maps and reduces with 1 MiB: the maps spill, the sort and the
     * aggregation spill too. */
    max_key = 14; /* many distinct keys, so that the aggregation is short too */
    shuffle_write(&e, 2, 60000, false, SP_CODEC_LZ4, "1m");
    max_key = 6;
    for (uint32_t r = 0; r < e.partitions; r++) {
        sp_shuffle_read_stats_t s;
        check_partition(&e, r, SP_READ_SORT, NULL, &s);
        assert_true(s.spills > 0);
        check_partition(&e, r, SP_READ_AGGREGATE, NULL, &s);
        assert_true(s.spills > 0);
    }
    shuffle_free(&e);
}

/* ---- an instrumented fetcher over the local one ---- */

typedef struct pending {
    size_t index;
    sp_status_t status;
    const void *data;
    size_t len;
    uint64_t expected, size;
    sp_fetch_done_fn_t done;
    void *arg;
} pending_t;

typedef struct slow_fetcher {
    sp_block_fetcher_t base;
    sp_block_fetcher_t *local;
    pending_t pending[4096];
    size_t npending;
    uint64_t outstanding, peak, requests, max_request;
    int damage_next; /* flip a byte of the next delivered block */
    unsigned char *damaged;
} slow_fetcher_t;

static slow_fetcher_t *slow_of(sp_block_fetcher_t *f) { return (slow_fetcher_t *)(void *)f; }

typedef struct capture {
    slow_fetcher_t *sf;
    const sp_block_ref_t *blocks;
    sp_fetch_done_fn_t done;
    void *arg;
} capture_t;

static void capture_done(void *arg, size_t i, sp_status_t status, const void *data, size_t len,
                         uint64_t expected)
{
    capture_t *c = arg;
    pending_t *p = &c->sf->pending[c->sf->npending++];

    *p = (pending_t){i, status, data, len, expected, c->blocks[i].size, c->done, c->arg};
}

static sp_status_t slow_fetch(sp_block_fetcher_t *f, const sp_block_ref_t *blocks, size_t n,
                              sp_fetch_done_fn_t done, void *arg)
{
    slow_fetcher_t *sf = slow_of(f);
    capture_t c = {sf, blocks, done, arg};
    uint64_t bytes = 0;

    for (size_t i = 0; i < n; i++)
        bytes += blocks[i].size;
    sf->outstanding += bytes;
    if (sf->outstanding > sf->peak)
        sf->peak = sf->outstanding;
    if (bytes > sf->max_request)
        sf->max_request = bytes;
    sf->requests++;
    return sf->local->ops->fetch(sf->local, blocks, n, capture_done, &c);
}

/* Completes one pending block per call, oldest first. */
static sp_status_t slow_progress(sp_block_fetcher_t *f, int timeout_ms)
{
    slow_fetcher_t *sf = slow_of(f);
    pending_t p;

    (void)timeout_ms;
    if (sf->npending == 0)
        return SP_OK;
    p = sf->pending[0];
    memmove(sf->pending, sf->pending + 1, --sf->npending * sizeof(*sf->pending));
    sf->outstanding -= p.size;
    if (sf->damage_next && p.len > 10) {
        sf->damage_next = 0;
        free(sf->damaged);
        sf->damaged = malloc(p.len);
        memcpy(sf->damaged, p.data, p.len);
        sf->damaged[p.len / 2] ^= 0x40;
        p.data = sf->damaged;
    }
    p.done(p.arg, p.index, p.status, p.data, p.len, p.expected);
    return SP_OK;
}

static void slow_release(sp_block_fetcher_t *f, const void *data, size_t len)
{
    (void)f;
    (void)data;
    (void)len;
}

static void slow_destroy(sp_block_fetcher_t *f)
{
    slow_fetcher_t *sf = slow_of(f);

    sp_block_fetcher_destroy(sf->local);
    free(sf->damaged);
    free(sf);
}

typedef struct to_file {
    const void *data;
    size_t len;
    uint64_t expected;
    sp_status_t status;
} to_file_t;

static void to_file_done(void *arg, size_t i, sp_status_t status, const void *data, size_t len,
                         uint64_t expected)
{
    to_file_t *t = arg;

    (void)i;
    *t = (to_file_t){data, len, expected, status};
}

static int files_fetched;

/* Streams the block into path, as a transport would for a large block. */
static sp_status_t slow_fetch_to_file(sp_block_fetcher_t *f, const sp_block_ref_t *block,
                                      const char *path, sp_fetch_done_fn_t done, void *arg)
{
    slow_fetcher_t *sf = slow_of(f);
    to_file_t t = {0};
    int fd;

    assert_int_equal(sf->local->ops->fetch(sf->local, block, 1, to_file_done, &t), SP_OK);
    assert_int_equal(t.status, SP_OK);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, t.data, t.len), (ssize_t)t.len);
    close(fd);
    files_fetched++;
    done(arg, 0, SP_OK, NULL, t.len, t.expected);
    return SP_OK;
}

static const sp_block_fetcher_ops_t slow_ops = {.size = sizeof(sp_block_fetcher_ops_t),
                                                .fetch = slow_fetch,
                                                .progress = slow_progress,
                                                .release = slow_release,
                                                .destroy = slow_destroy,
                                                .fetch_to_file = slow_fetch_to_file};

static slow_fetcher_t *slow_create(void)
{
    slow_fetcher_t *sf = calloc(1, sizeof(*sf));

    sf->base.ops = &slow_ops;
    assert_int_equal(sp_block_fetcher_local_create(&sf->local), SP_OK);
    return sf;
}

static void test_reader_respects_bytes_in_flight(void **state)
{
    shuffle_env_t e;
    slow_fetcher_t *sf = slow_create();
    sp_shuffle_read_stats_t s;
    uint64_t limit = 64 * 1024;

    (void)state;
    shuffle_write(&e, 1, 40000, false, SP_CODEC_NONE, "64m");
    assert_int_equal(sp_conf_set(e.conf, "shuffle.max_bytes_in_flight", "64k"), SP_OK);
    check_partition(&e, 0, SP_READ_UNORDERED, &sf->base, &s);
    /* Each block here is ~150 KB, more than the limit: one request at a time. */
    assert_true(sf->requests >= MAPS);
    assert_true(sf->peak <= limit || sf->peak == sf->max_request);
    assert_true(s.peak_in_flight <= limit || s.peak_in_flight == sf->max_request);
    shuffle_free(&e);
    sp_block_fetcher_destroy(&sf->base);

    /* Many small blocks: requests of at most a fifth of the limit, and
     * never more than the limit outstanding. */
    sf = slow_create();
    shuffle_write(&e, 400, 8000, false, SP_CODEC_NONE, "64m");
    assert_int_equal(sp_conf_set(e.conf, "shuffle.max_bytes_in_flight", "64k"), SP_OK);
    {
        const sp_map_status_t *st[MAPS];
        sp_block_list_t *list = NULL;
        sp_shuffle_reader_options_t o = {.order = SP_READ_UNORDERED, .fetcher = &sf->base};
        sp_shuffle_reader_t *reader = NULL;
        sp_task_memory_t *task = NULL;
        const void *k, *v;
        size_t kl, vl, records = 0;
        bool more = true;

        for (int m = 0; m < MAPS; m++)
            st[m] = e.status[m];
        assert_int_equal(sp_block_list_from_statuses(st, MAPS, 0, 400, &list), SP_OK);
        assert_int_equal(sp_task_memory_create(e.mm, 1, &task), SP_OK);
        assert_int_equal(sp_shuffle_reader_open(task, e.conf, list, &o, &reader), SP_OK);
        while (more) {
            assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
            records += more;
        }
        assert_int_equal(records, MAPS * 8000);
        assert_true(sf->max_request <= limit / 5);
        assert_true(sf->peak <= limit);
        assert_true(sf->requests > 5);
        sp_shuffle_reader_close(reader);
        sp_task_memory_destroy(task, NULL);
        sp_block_list_destroy(list);
    }
    shuffle_free(&e);
    sp_block_fetcher_destroy(&sf->base);
}

static void test_reader_refetches_block_damaged_in_flight(void **state)
{
    shuffle_env_t e;
    slow_fetcher_t *sf = slow_create();
    sp_shuffle_read_stats_t s;

    (void)state;
    shuffle_write(&e, 3, 2000, true, SP_CODEC_LZ4, "64m");
    sf->damage_next = 1;
    check_partition(&e, 1, SP_READ_MERGE, &sf->base, &s);
    assert_int_equal(s.refetches, 1);
    shuffle_free(&e);
    sp_block_fetcher_destroy(&sf->base);
}

/* Reads partition r expecting failure st whose message contains text. */
static void expect_failure(shuffle_env_t *e, uint32_t r, sp_status_t want, const char *text)
{
    const sp_map_status_t *st[MAPS];
    sp_block_list_t *list = NULL;
    sp_shuffle_reader_options_t o = {.order = SP_READ_UNORDERED};
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    sp_status_t got = SP_OK;
    const void *k, *v;
    size_t kl, vl;
    bool more = true;

    for (int m = 0; m < MAPS; m++)
        st[m] = e->status[m];
    assert_int_equal(sp_block_list_from_statuses(st, MAPS, r, r + 1, &list), SP_OK);
    assert_int_equal(sp_task_memory_create(e->mm, 1, &task), SP_OK);
    assert_int_equal(sp_shuffle_reader_open(task, e->conf, list, &o, &reader), SP_OK);
    while (more && (got = sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more)) == SP_OK)
        ;
    assert_int_equal(got, want);
    if (strstr(sp_last_error(), text) == NULL)
        fail_msg("error '%s' does not name '%s'", sp_last_error(), text);
    sp_shuffle_reader_close(reader);
    sp_task_memory_destroy(task, NULL);
    sp_block_list_destroy(list);
}

static void flip_byte(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    unsigned char b;

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void test_reader_damaged_outputs_name_the_block(void **state)
{
    shuffle_env_t e;
    sp_map_output_t *mo = NULL;
    sp_segment_info_t seg;

    (void)state;
    /* A flipped byte on disk: both copies bad and alike. */
    shuffle_write(&e, 3, 2000, false, SP_CODEC_LZ4, "64m");
    assert_int_equal(sp_map_output_open(e.status[2]->index_path, &mo), SP_OK);
    assert_int_equal(sp_map_output_segment(mo, 1, &seg), SP_OK);
    sp_map_output_close(mo);
    flip_byte(e.status[2]->data_path, (off_t)(seg.offset + seg.length / 2));
    expect_failure(&e, 1, SP_ERR_FETCH_FAILED, "shuffle 7 map 2 reduce 1");
    assert_non_null(strstr(sp_last_error(), "stored copy is damaged"));
    /* The other partitions of that map are fine. */
    check_partition(&e, 0, SP_READ_UNORDERED, NULL, NULL);
    shuffle_free(&e);

    /* A missing index file. */
    shuffle_write(&e, 3, 500, false, SP_CODEC_NONE, "64m");
    assert_int_equal(unlink(e.status[1]->index_path), 0);
    expect_failure(&e, 0, SP_ERR_FETCH_FAILED, "map 1 reduce 0");
    shuffle_free(&e);

    /* A truncated data file. */
    shuffle_write(&e, 3, 500, false, SP_CODEC_NONE, "64m");
    assert_int_equal(truncate(e.status[3]->data_path, 100), 0);
    expect_failure(&e, 2, SP_ERR_FETCH_FAILED, "map 3 reduce 2");
    shuffle_free(&e);

    /* A record that lies about its size, with a checksum that matches: the
     * decoder stops at the segment's end and names the block. */
    shuffle_write(&e, 1, 50, false, SP_CODEC_NONE, "64m");
    {
        int fd = open(e.status[0]->data_path, O_RDWR);
        unsigned char huge[4] = {0xff, 0xff, 0xff, 0x0f}, csum[8];
        uint64_t sum;
        void *data = NULL;
        size_t len = 0;

        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, huge, 4, 8 + 4), 4); /* first record's value length */
        close(fd);
        assert_int_equal(sp_map_output_open(e.status[0]->index_path, &mo), SP_OK);
        assert_int_equal(sp_map_output_segment(mo, 0, &seg), SP_OK);
        sp_map_output_close(mo);
        {
            int dfd = open(e.status[0]->data_path, O_RDONLY);
            data = malloc(seg.length);
            len = (size_t)seg.length;
            assert_int_equal(pread(dfd, data, len, (off_t)seg.offset), (ssize_t)len);
            close(dfd);
        }
        sum = sp__checksum_buf(e.status[0]->checksum_kind, data, len);
        for (int b = 0; b < 8; b++)
            csum[b] = (unsigned char)(sum >> (8 * b));
        fd = open(e.status[0]->checksum_path, O_RDWR);
        assert_int_equal(pwrite(fd, csum, 8, 16), 8);
        close(fd);
        free(data);
    }
    expect_failure(&e, 0, SP_ERR_CORRUPT, "shuffle 7 map 0 reduce 0");
    shuffle_free(&e);
}

static int reversed_compare(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    (void)arg;
    c = c != 0 ? c : (alen > blen) - (alen < blen);
    return -c;
}

static int random_compare(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    unsigned *seed = arg;

    (void)a;
    (void)alen;
    (void)b;
    (void)blen;
    return (int)(rand_r(seed) % 3) - 1;
}

static void test_reader_inconsistent_comparator(void **state)
{
    const sp_map_status_t *st[MAPS];
    sp_block_list_t *list = NULL;
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    shuffle_env_t e;
    unsigned seed = 3;
    const void *k, *v;
    size_t kl, vl, records = 0;
    bool more = true;
    sp_status_t got = SP_OK;

    (void)state;
    shuffle_write(&e, 2, 3000, true, SP_CODEC_LZ4, "64m");
    for (int m = 0; m < MAPS; m++)
        st[m] = e.status[m];
    assert_int_equal(sp_block_list_from_statuses(st, MAPS, 1, 2, &list), SP_OK);
    assert_int_equal(sp_task_memory_create(e.mm, 1, &task), SP_OK);
    {
        /* Outputs sorted in byte order, merged with the reverse order: the
         * merge notices and names a block instead of returning disorder. */
        sp_shuffle_reader_options_t o = {.order = SP_READ_MERGE, .compare = reversed_compare};
        assert_int_equal(sp_shuffle_reader_open(task, e.conf, list, &o, &reader), SP_OK);
        while (more && (got = sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more)) == SP_OK)
            ;
        assert_int_equal(got, SP_ERR_BAD_FORMAT);
        assert_non_null(strstr(sp_last_error(), "not sorted by the job's comparator"));
        assert_non_null(strstr(sp_last_error(), "shuffle 7 map"));
        assert_non_null(strstr(sp_last_error(), "reduce 1"));
        sp_shuffle_reader_close(reader);
    }
    {
        /* A comparator that answers at random: sorting still ends and
         * loses no record (the order is meaningless). */
        sp_shuffle_reader_options_t o = {
            .order = SP_READ_SORT, .compare = random_compare, .compare_arg = &seed};
        size_t expect = 0;
        more = true;
        for (int m = 0; m < MAPS; m++)
            expect += e.status[m]->records[1];
        assert_int_equal(sp_shuffle_reader_open(task, e.conf, list, &o, &reader), SP_OK);
        while (more) {
            assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
            records += more;
        }
        assert_int_equal(records, expect);
        sp_shuffle_reader_close(reader);
    }
    sp_task_memory_destroy(task, NULL);
    sp_block_list_destroy(list);
    shuffle_free(&e);
}

static unsigned count_fetch_files(void)
{
    char cmd[400];
    FILE *f;
    unsigned n = 0;

    snprintf(cmd, sizeof(cmd), "ls %s 2>/dev/null | grep -c '^fetch_'", dir);
    f = popen(cmd, "r");
    assert_non_null(f);
    if (fscanf(f, "%u", &n) != 1)
        n = 0;
    pclose(f);
    return n;
}

static void test_reader_streams_large_blocks_through_files(void **state)
{
    shuffle_env_t e;
    slow_fetcher_t *sf = slow_create();
    sp_shuffle_read_stats_t s;

    (void)state;
    shuffle_write(&e, 2, 5000, true, SP_CODEC_ZSTD, "64m");
    assert_int_equal(sp_conf_set(e.conf, "shuffle.max_block_in_memory", "4k"), SP_OK);
    files_fetched = 0;
    check_partition(&e, 0, SP_READ_UNORDERED, &sf->base, &s);
    assert_int_equal(s.blocks_to_file, MAPS);
    assert_int_equal(files_fetched, MAPS);
    check_partition(&e, 1, SP_READ_MERGE, &sf->base, &s);
    assert_int_equal(s.blocks_to_file, MAPS);
    /* Every temporary block file is gone once the reader is closed. */
    assert_int_equal(count_fetch_files(), 0);
    shuffle_free(&e);
    sp_block_fetcher_destroy(&sf->base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader_every_order_matches_reference),
        cmocka_unit_test(test_reader_incremental_matches_reference),
        cmocka_unit_test(test_reader_incremental_failures),
        cmocka_unit_test(test_reader_tiny_memory_spills_and_still_matches),
        cmocka_unit_test(test_reader_map_side_combine),
        cmocka_unit_test(test_reader_respects_bytes_in_flight),
        cmocka_unit_test(test_reader_refetches_block_damaged_in_flight),
        cmocka_unit_test(test_reader_damaged_outputs_name_the_block),
        cmocka_unit_test(test_reader_inconsistent_comparator),
        cmocka_unit_test(test_reader_streams_large_blocks_through_files),
    };

    snprintf(dir, sizeof(dir), "/tmp/spate-test-reader-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
