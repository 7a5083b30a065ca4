/*
 * The hash aggregator against a reference model computed over the same
 * input (per-key sums, per-key concatenations of the values in insertion
 * order): keys 1..10^5 with a few hot keys and an empty key, values of 8
 * bytes (word count, combine = sum) or of 0..1 KiB (combine =
 * concatenation, which is associative but not commutative, so the check
 * also proves that a key's values are combined in insertion order). Every
 * key must come out exactly once with exactly the reference value, under
 * budgets from ample (no spill) to tiny (many spills and merge passes),
 * when another consumer of the task makes the aggregator spill (while it
 * takes input and while it returns its table), with equal hashes of
 * different keys, with a combiner that needs a bigger buffer, and under
 * fault injection (n-th allocation, write, read), where every failure must
 * be an error, with no spill file left and no memory leaked.
 */
/* LABELS: unit */
#include "common_int.h"
#include "tests/test_dir_util.h"
#include <spate/shuffle.h>
#include "shuffle/shuffle_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Test hook of shuffle/aggregator.c: the mask applied to key hashes. */

static char dir[256];

/* ---- the reference model ---- */

typedef enum op { OP_SUM, OP_CONCAT } op_t;

typedef struct input {
    op_t op;
    size_t n;       /* records */
    uint32_t nkeys; /* key ids are 0 (the empty key) .. nkeys */
    uint32_t *ids;  /* key id of each record */
    uint64_t *nums; /* SUM: value of each record */
    uint64_t *off;  /* CONCAT: record i's value is bytes[off[i] .. off[i+1]) */
    unsigned char *bytes;
    uint32_t *count;   /* records per key id */
    uint64_t *sum;     /* SUM: expected value per key id */
    uint64_t *exp_off; /* CONCAT: expected value of id is exp[exp_off[id] .. exp_off[id+1]) */
    unsigned char *exp;
    unsigned char *seen;
    size_t distinct;
} input_t;

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Key text of an id: "" for 0, else its digits and id % 7 letters. */
static size_t make_key(uint32_t id, char *buf)
{
    int n;

    if (id == 0)
        return 0;
    n = snprintf(buf, 32, "%u", id);
    for (uint32_t i = 0; i < id % 7; i++)
        buf[n++] = (char)('a' + id % 26);
    return (size_t)n;
}

/*
 * n records over key ids 1..nkeys: a fifth go to 5 hot keys (values of up
 * to hot_piece bytes when concatenating), one in a thousand to the empty
 * key, the rest uniformly (values of up to max_piece bytes).
 */
static void input_make(input_t *in, op_t op, size_t n, uint32_t nkeys, size_t max_piece,
                       size_t hot_piece, uint64_t seed)
{
    uint64_t s = seed, total = 0, *fill;

    memset(in, 0, sizeof(*in));
    in->op = op;
    in->n = n;
    in->nkeys = nkeys;
    in->ids = calloc(n, sizeof(*in->ids));
    in->count = calloc(nkeys + 1, sizeof(*in->count));
    in->seen = calloc(nkeys + 1, 1);
    assert_non_null(in->ids);
    assert_non_null(in->count);
    assert_non_null(in->seen);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = mix(&s);
        uint32_t id;
        if (r % 100 < 20)
            id = 1 + (uint32_t)((r >> 8) % 5);
        else if (r % 1000 == 999)
            id = 0;
        else
            id = 1 + (uint32_t)((r >> 16) % nkeys);
        in->ids[i] = id;
        in->distinct += in->count[id] == 0;
        in->count[id]++;
    }
    if (op == OP_SUM) {
        in->nums = calloc(n, sizeof(*in->nums));
        in->sum = calloc(nkeys + 1, sizeof(*in->sum));
        assert_non_null(in->nums);
        assert_non_null(in->sum);
        for (size_t i = 0; i < n; i++) {
            in->nums[i] = mix(&s) >> (mix(&s) % 64);
            in->sum[in->ids[i]] += in->nums[i];
        }
        return;
    }
    in->off = calloc(n + 1, sizeof(*in->off));
    assert_non_null(in->off);
    for (size_t i = 0; i < n; i++) {
        size_t max = in->ids[i] >= 1 && in->ids[i] <= 5 ? hot_piece : max_piece;
        in->off[i] = total;
        total += mix(&s) % (max + 1);
    }
    in->off[n] = total;
    in->bytes = malloc(total + 1);
    in->exp = malloc(total + 1);
    in->exp_off = calloc(nkeys + 2, sizeof(*in->exp_off));
    fill = calloc(nkeys + 1, sizeof(*fill));
    assert_non_null(in->bytes);
    assert_non_null(in->exp);
    assert_non_null(in->exp_off);
    assert_non_null(fill);
    for (uint64_t b = 0; b < total; b += 8) {
        uint64_t r = mix(&s);
        memcpy(in->bytes + b, &r, total - b < 8 ? total - b : 8);
    }
    for (size_t i = 0; i < n; i++)
        in->exp_off[in->ids[i] + 1] += in->off[i + 1] - in->off[i];
    for (uint32_t id = 1; id <= nkeys + 1; id++)
        in->exp_off[id] += in->exp_off[id - 1];
    for (size_t i = 0; i < n; i++) {
        uint32_t id = in->ids[i];
        uint64_t len = in->off[i + 1] - in->off[i];
        memcpy(in->exp + in->exp_off[id] + fill[id], in->bytes + in->off[i], len);
        fill[id] += len;
    }
    free(fill);
}

static void input_free(input_t *in)
{
    free(in->ids);
    free(in->nums);
    free(in->off);
    free(in->bytes);
    free(in->count);
    free(in->sum);
    free(in->exp_off);
    free(in->exp);
    free(in->seen);
}

static void input_value(const input_t *in, size_t i, const void **v_p, size_t *len_p)
{
    if (in->op == OP_SUM) {
        *v_p = &in->nums[i];
        *len_p = sizeof(in->nums[i]);
    } else {
        *v_p = in->bytes + in->off[i];
        *len_p = (size_t)(in->off[i + 1] - in->off[i]);
    }
}

/* Checks one output record against the reference: right key, right value, first time. */
static void check_record(input_t *in, const void *k, size_t kl, const void *v, size_t vl)
{
    const unsigned char *key = k;
    char want[32];
    uint32_t id = 0;
    size_t i = 0;

    while (i < kl && key[i] >= '0' && key[i] <= '9' && id < 100000000)
        id = id * 10 + (uint32_t)(key[i++] - '0');
    assert_true(id <= in->nkeys);
    assert_int_equal(kl, make_key(id, want));
    if (kl != 0)
        assert_memory_equal(k, want, kl);
    assert_true(in->count[id] > 0);
    assert_int_equal(in->seen[id], 0);
    in->seen[id] = 1;
    if (in->op == OP_SUM) {
        uint64_t got;
        assert_int_equal(vl, sizeof(got));
        memcpy(&got, v, sizeof(got));
        assert_true(got == in->sum[id]);
    } else {
        uint64_t len = in->exp_off[id + 1] - in->exp_off[id];
        assert_int_equal(vl, len);
        if (len != 0)
            assert_memory_equal(v, in->exp + in->exp_off[id], len);
    }
}

/* ---- combiners ---- */

typedef struct comb_counts {
    uint64_t calls;
    uint64_t bigger; /* calls answered "give me more room" */
} comb_counts_t;

static size_t sum_combine(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                          const void *b, size_t b_len, void *out, size_t cap)
{
    comb_counts_t *c = arg;
    uint64_t x, y;

    (void)key;
    (void)key_len;
    c->calls++;
    assert_int_equal(a_len, 8);
    assert_int_equal(b_len, 8);
    if (cap < 8) {
        c->bigger++;
        return 8;
    }
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    x += y;
    memcpy(out, &x, 8);
    return 8;
}

static size_t concat_combine(void *arg, const void *key, size_t key_len, const void *a,
                             size_t a_len, const void *b, size_t b_len, void *out, size_t cap)
{
    comb_counts_t *c = arg;

    (void)key;
    (void)key_len;
    c->calls++;
    if (a_len + b_len > cap) {
        c->bigger++;
        return a_len + b_len;
    }
    if (a_len != 0)
        memcpy(out, a, a_len);
    if (b_len != 0)
        memcpy((unsigned char *)out + a_len, b, b_len);
    return a_len + b_len;
}

/* Never satisfied: always one byte more than it is given. */
static size_t greedy_combine(void *arg, const void *key, size_t key_len, const void *a,
                             size_t a_len, const void *b, size_t b_len, void *out, size_t cap)
{
    (void)arg;
    (void)key;
    (void)key_len;
    (void)a;
    (void)a_len;
    (void)b;
    (void)b_len;
    (void)out;
    return cap + 1;
}

/* ---- environment ---- */

typedef struct env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_task_memory_t *task;
} env_t;

static sp_conf_t *make_conf(const char *executor, const char *page, const char *codec)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", page), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.codec", codec), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.spill_buffer", "64k"), SP_OK);
    return conf;
}

static void env_open(env_t *e, const char *executor, const char *page, const char *codec)
{
    memset(e, 0, sizeof(*e));
    e->conf = make_conf(executor, page, codec);
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
    assert_int_equal(sp_task_memory_create(e->mm, 1, &e->task), SP_OK);
}

static unsigned count_files(void) { return test_dir_count(dir); }

static void clear_dir(void) { test_dir_clear(dir); }

/* Ends the task and checks that nothing leaked and no file remains. */
static void env_close(env_t *e)
{
    sp_task_memory_stats_t ts;
    sp_memory_stats_t ms;

    sp_task_memory_destroy(e->task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    assert_int_equal(ts.leaked_pages, 0);
    sp_memory_manager_stats(e->mm, &ms);
    assert_int_equal(ms.execution_used, 0);
    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
    assert_int_equal(count_files(), 0);
}

static uint64_t unified_of(const env_t *e)
{
    sp_memory_layout_t l;

    sp_memory_manager_layout(e->mm, &l);
    return l.unified_bytes;
}

static sp_combiner_t combiner_for(op_t op, comb_counts_t *counts)
{
    sp_combiner_t c = {op == OP_SUM ? sum_combine : concat_combine, counts};

    return c;
}

static void insert_range(sp_aggregator_t *agg, const input_t *in, size_t from, size_t to)
{
    char key[32];

    for (size_t i = from; i < to; i++) {
        const void *v;
        size_t vl, kl = make_key(in->ids[i], key);
        input_value(in, i, &v, &vl);
        assert_int_equal(sp_aggregator_insert(agg, key, kl, v, vl), SP_OK);
    }
}

/* Reads up to max records (SIZE_MAX: all), checking each; returns how many. */
static size_t drain(sp_aggregator_t *agg, input_t *in, size_t max)
{
    size_t got = 0;

    while (got < max) {
        const void *k, *v;
        size_t kl, vl;
        bool more = false;
        assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        check_record(in, k, kl, v, vl);
        got++;
    }
    return got;
}

/* One full aggregation of in under a budget; stats come back. */
static void run_case(input_t *in, const char *executor, const char *page, const char *codec,
                     sp_aggregator_stats_t *stats_p, comb_counts_t *counts_p)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(in->op, &counts);
    sp_aggregator_t *agg = NULL;
    sp_aggregator_stats_t st;
    env_t e;

    memset(in->seen, 0, in->nkeys + 1);
    env_open(&e, executor, page, codec);
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    insert_range(agg, in, 0, in->n);
    assert_int_equal(drain(agg, in, SIZE_MAX), in->distinct);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.inserted, in->n);
    assert_int_equal(st.keys, in->distinct);
    assert_true(st.peak_bytes > 0 && st.peak_bytes <= unified_of(&e));
    assert_true(counts.calls >= in->n - in->distinct);
    sp_aggregator_destroy(agg);
    env_close(&e);
    *stats_p = st;
    if (counts_p != NULL)
        *counts_p = counts;
}

/* ---- tests ---- */

static void test_aggregator_word_count(void **state)
{
    sp_aggregator_stats_t ample, medium, tiny;
    input_t in;

    (void)state;
    input_make(&in, OP_SUM, 400000, 100000, 0, 0, 1);
    run_case(&in, "256m", "1m", "lz4", &ample, NULL);
    assert_int_equal(ample.spills, 0);
    run_case(&in, "8m", "64k", "lz4", &medium, NULL);
    assert_true(medium.spills >= 1);
    run_case(&in, "2m", "64k", "lz4", &tiny, NULL);
    assert_true(tiny.spills >= 10);
    print_message("word count: %zu records, %zu keys; spills: ample %llu, 8 MiB %llu, 2 MiB %llu\n",
                  in.n, in.distinct, (unsigned long long)ample.spills,
                  (unsigned long long)medium.spills, (unsigned long long)tiny.spills);
    input_free(&in);
}

static void test_aggregator_concat(void **state)
{
    sp_aggregator_stats_t ample, medium, tiny;
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 60000, 100000, 1024, 16, 2);
    run_case(&in, "256m", "4m", "none", &ample, NULL);
    assert_int_equal(ample.spills, 0);
    run_case(&in, "12m", "256k", "zstd", &medium, NULL);
    assert_true(medium.spills >= 1);
    run_case(&in, "2m", "64k", "none", &tiny, NULL);
    assert_true(tiny.spills >= 10);
    print_message("concat: %zu records, %zu keys; spills: ample %llu, 12 MiB %llu, 2 MiB %llu\n",
                  in.n, in.distinct, (unsigned long long)ample.spills,
                  (unsigned long long)medium.spills, (unsigned long long)tiny.spills);
    input_free(&in);
}

/* Different keys with equal hashes: the table, the spill sort and the merge compare keys. */
static void test_aggregator_hash_collisions(void **state)
{
    sp_aggregator_stats_t st;
    input_t sum, cat;

    (void)state;
    sp__aggregator_hash_mask = 0x7;
    input_make(&sum, OP_SUM, 20000, 3000, 0, 0, 3);
    run_case(&sum, "256m", "1m", "lz4", &st, NULL);
    assert_int_equal(st.spills, 0);
    run_case(&sum, "256k", "16k", "zstd", &st, NULL);
    assert_true(st.spills >= 2);
    input_make(&cat, OP_CONCAT, 6000, 2000, 64, 8, 4);
    run_case(&cat, "256k", "16k", "lz4", &st, NULL);
    assert_true(st.spills >= 2);
    sp__aggregator_hash_mask = UINT64_MAX;
    input_free(&sum);
    input_free(&cat);
}

/*
 * With 4 KiB pages the task's page table (8192 pages) fills before memory
 * runs out: a full page table makes the aggregator spill, like a refusal.
 */
static void test_aggregator_page_table_full(void **state)
{
    sp_aggregator_stats_t st;
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 80000, 100000, 1024, 16, 12);
    run_case(&in, "96m", "4k", "lz4", &st, NULL);
    assert_true(st.spills >= 1);
    input_free(&in);
}

/* A consumer that holds memory and never gives it back. */
typedef struct hog {
    sp_memory_consumer_t c;
    uint64_t asked;
} hog_t;

static uint64_t hog_spill(sp_memory_consumer_t *consumer, uint64_t bytes,
                          sp_memory_consumer_t *trigger)
{
    hog_t *h = sp_container_of(consumer, hog_t, c);

    (void)bytes;
    (void)trigger;
    h->asked++;
    return 0;
}

static const sp_memory_consumer_ops_t hog_ops = {.size = sizeof(sp_memory_consumer_ops_t),
                                                 .spill = hog_spill};

/* Another consumer's request makes the aggregator spill while it takes input. */
static void test_aggregator_other_consumer_during_insert(void **state)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(OP_CONCAT, &counts);
    sp_aggregator_t *agg = NULL;
    sp_aggregator_stats_t st;
    hog_t hog;
    input_t in;
    env_t e;

    (void)state;
    input_make(&in, OP_CONCAT, 20000, 100000, 512, 16, 5);
    env_open(&e, "16m", "64k", "lz4");
    memset(&hog, 0, sizeof(hog));
    sp_memory_consumer_init(&hog.c, e.task, &hog_ops, "hog");
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    insert_range(agg, &in, 0, in.n / 2);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.spills, 0);
    /* The aggregator holds a few MiB; 14 MiB for the hog need them. */
    assert_int_equal(sp_memory_consumer_acquire(&hog.c, 14u << 20), 14u << 20);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.spills, 1);
    /* The rest goes in with 2 MiB: the aggregator spills by itself, the
     * hog is asked first and refuses. */
    insert_range(agg, &in, in.n / 2, in.n);
    sp_aggregator_stats(agg, &st);
    assert_true(st.spills >= 2);
    assert_true(hog.asked > 0);
    sp_memory_consumer_release(&hog.c, 14u << 20);
    assert_int_equal(drain(agg, &in, SIZE_MAX), in.distinct);
    sp_aggregator_destroy(agg);
    sp_memory_consumer_fini(&hog.c);
    env_close(&e);
    input_free(&in);
}

/*
 * Another consumer's request makes the aggregator spill the rest of its
 * table while returning it, after stop keys: the record returned last stays
 * readable until the next call, and the remaining keys come from the run.
 */
static void output_spill_case(input_t *in, size_t stop)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(OP_CONCAT, &counts);
    sp_aggregator_t *agg = NULL;
    sp_aggregator_stats_t st;
    const void *k = NULL, *v = NULL;
    size_t kl = 0, vl = 0, got = 0;
    unsigned char *kcopy = NULL, *vcopy = NULL;
    bool more = false;
    hog_t hog;
    env_t e;

    memset(in->seen, 0, in->nkeys + 1);
    env_open(&e, "16m", "64k", "lz4");
    memset(&hog, 0, sizeof(hog));
    sp_memory_consumer_init(&hog.c, e.task, &hog_ops, "hog");
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    insert_range(agg, in, 0, in->n);
    if (stop > 0) {
        got = drain(agg, in, stop - 1);
        assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
        assert_true(more);
        check_record(in, k, kl, v, vl);
        got++;
        kcopy = malloc(kl + 1);
        vcopy = malloc(vl + 1);
        assert_non_null(kcopy);
        assert_non_null(vcopy);
        memcpy(kcopy, k, kl);
        memcpy(vcopy, v, vl);
    }
    assert_int_equal(sp_memory_consumer_acquire(&hog.c, 14u << 20), 14u << 20);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.spills, stop < in->distinct ? 1 : 0);
    if (stop > 0) {
        /* Still valid until the next call: its page is the one kept. */
        sp_page_t *kept = NULL;
        for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
            sp_page_t *p = sp_task_memory_page(e.task, i);
            if (p != NULL) {
                assert_null(kept);
                kept = p;
            }
        }
        assert_non_null(kept);
        assert_true((const unsigned char *)v >= (unsigned char *)kept->data &&
                    (const unsigned char *)v + vl <= (unsigned char *)kept->data + kept->size);
        if (kl != 0)
            assert_memory_equal(k, kcopy, kl);
        if (vl != 0)
            assert_memory_equal(v, vcopy, vl);
    }
    got += drain(agg, in, SIZE_MAX);
    assert_int_equal(got, in->distinct);
    sp_memory_consumer_release(&hog.c, 14u << 20);
    free(kcopy);
    free(vcopy);
    sp_aggregator_destroy(agg);
    sp_memory_consumer_fini(&hog.c);
    env_close(&e);
}

static void test_aggregator_other_consumer_during_output(void **state)
{
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 20000, 100000, 512, 16, 6);
    {
        size_t stops[] = {
            0, 1, 2, 3, 4, 5, in.distinct / 3, in.distinct - 2, in.distinct - 1, in.distinct};
        for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++)
            output_spill_case(&in, stops[i]);
    }
    input_free(&in);
}

/* Values that outgrow the combine buffer many times, in memory and in the merge. */
static void test_aggregator_combiner_needs_more_room(void **state)
{
    comb_counts_t counts;
    sp_aggregator_stats_t st;
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 600, 40, 6000, 6000, 7);
    run_case(&in, "256m", "1m", "lz4", &st, &counts);
    assert_int_equal(st.spills, 0);
    assert_true(counts.bigger >= 3);
    run_case(&in, "1m", "64k", "lz4", &st, &counts);
    assert_true(st.spills >= 1);
    assert_true(counts.bigger >= 3);
    input_free(&in);

    /* A combiner never satisfied is an error, not a loop. */
    {
        sp_combiner_t greedy = {greedy_combine, NULL};
        sp_aggregator_t *agg = NULL;
        const void *k, *v;
        size_t kl, vl;
        bool more;
        env_t e;

        env_open(&e, "16m", "64k", "lz4");
        assert_int_equal(sp_aggregator_create(e.task, e.conf, &greedy, &agg), SP_OK);
        assert_int_equal(sp_aggregator_insert(agg, "k", 1, "a", 1), SP_OK);
        assert_int_equal(sp_aggregator_insert(agg, "k", 1, "b", 1), SP_ERR_INVALID_PARAM);
        /* Sticky. */
        assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_ERR_INVALID_PARAM);
        sp_aggregator_destroy(agg);
        env_close(&e);
    }
}

static void test_aggregator_empty_input(void **state)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(OP_SUM, &counts);
    sp_aggregator_t *agg = NULL;
    sp_aggregator_stats_t st;
    const void *k, *v;
    size_t kl, vl;
    bool more = true;
    env_t e;

    (void)state;
    env_open(&e, "16m", "64k", "lz4");
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
    assert_false(more);
    more = true;
    assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
    assert_false(more);
    assert_int_equal(sp_aggregator_insert(agg, "k", 1, "12345678", 8), SP_ERR_INVALID_PARAM);
    sp_aggregator_stats(agg, &st);
    assert_int_equal(st.inserted, 0);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.spills, 0);
    sp_aggregator_destroy(agg);
    sp_aggregator_destroy(NULL);
    env_close(&e);
}

static void test_aggregator_bad_input(void **state)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(OP_CONCAT, &counts), none = {NULL, NULL};
    sp_aggregator_t *agg = NULL;
    unsigned char *big = calloc(1, 700 * 1024);
    const void *k, *v;
    size_t kl, vl;
    bool more = false;
    env_t e;

    (void)state;
    assert_non_null(big);
    env_open(&e, "1m", "64k", "lz4");
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &none, &agg), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_aggregator_create(e.task, e.conf, &comb, &agg), SP_OK);
    assert_int_equal(sp_aggregator_insert(agg, NULL, 3, "v", 1), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_aggregator_insert(agg, "k", 1, NULL, 1), SP_ERR_INVALID_PARAM);
    /* A record larger than memory is refused and changes nothing. */
    assert_int_equal(sp_aggregator_insert(agg, "k", 1, big, 2u << 20), SP_ERR_TOO_LARGE);
    /* So is a value that would grow larger than memory. */
    assert_int_equal(sp_aggregator_insert(agg, "k", 1, big, 700 * 1024), SP_OK);
    assert_int_equal(sp_aggregator_insert(agg, "k", 1, big, 700 * 1024), SP_ERR_TOO_LARGE);
    assert_int_equal(sp_aggregator_insert(agg, NULL, 0, "e", 1), SP_OK);
    assert_int_equal(sp_aggregator_insert(agg, NULL, 0, "f", 1), SP_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
        assert_true(more);
        if (kl == 0) {
            assert_int_equal(vl, 2);
            assert_memory_equal(v, "ef", 2);
        } else {
            assert_int_equal(kl, 1);
            assert_int_equal(vl, 700 * 1024);
        }
    }
    assert_int_equal(sp_aggregator_next(agg, &k, &kl, &v, &vl, &more), SP_OK);
    assert_false(more);
    sp_aggregator_destroy(agg);
    env_close(&e);
    free(big);
}

/* ---- fault injection ---- */

/*
 * One aggregation from scratch; every record that comes out is checked as
 * it comes. Returns the first error, or SP_OK after checking that every key
 * came out.
 */
static sp_status_t attempt(const sp_conf_t *conf, input_t *in)
{
    comb_counts_t counts = {0};
    sp_combiner_t comb = combiner_for(in->op, &counts);
    sp_memory_manager_t *mm = NULL;
    sp_task_memory_t *task = NULL;
    sp_aggregator_t *agg = NULL;
    sp_task_memory_stats_t ts;
    sp_memory_stats_t ms;
    size_t got = 0;
    char key[32];
    sp_status_t st;

    memset(in->seen, 0, in->nkeys + 1);
    st = sp_memory_manager_create(conf, NULL, 0, &mm);
    if (st != SP_OK)
        return st;
    st = sp_task_memory_create(mm, 1, &task);
    if (st != SP_OK)
        goto out_mm;
    st = sp_aggregator_create(task, conf, &comb, &agg);
    if (st != SP_OK)
        goto out_task;
    for (size_t i = 0; i < in->n && st == SP_OK; i++) {
        const void *v;
        size_t vl, kl = make_key(in->ids[i], key);
        input_value(in, i, &v, &vl);
        st = sp_aggregator_insert(agg, key, kl, v, vl);
    }
    while (st == SP_OK) {
        const void *k, *v;
        size_t kl, vl;
        bool more = false;
        st = sp_aggregator_next(agg, &k, &kl, &v, &vl, &more);
        if (st != SP_OK || !more)
            break;
        check_record(in, k, kl, v, vl);
        got++;
    }
    if (st == SP_OK)
        assert_int_equal(got, in->distinct);
    sp_aggregator_destroy(agg);
out_task:
    sp_task_memory_destroy(task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    assert_int_equal(ts.leaked_pages, 0);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.execution_used, 0);
out_mm:
    sp_memory_manager_destroy(mm);
    return st;
}

static void sweep(sp_fault_kind_t kind, const char *codec, input_t *in)
{
    sp_conf_t *conf = make_conf("192k", "16k", codec);
    uint64_t n, failures = 0;

    assert_int_equal(sp_conf_set(conf, "shuffle.spill_buffer", "4k"), SP_OK);
    for (n = 1; n < 100000; n++) {
        uint64_t fired = sp__fault_fired(kind);
        sp_status_t st;

        sp__fault_arm(kind, n);
        st = attempt(conf, in);
        sp__fault_arm(kind, 0);
        if (count_files() != 0) {
            fprintf(stderr, "fault %llu of kind %d left files (status %d: %s)\n",
                    (unsigned long long)n, (int)kind, (int)st, sp_last_error());
            clear_dir();
            fail();
        }
        if (sp__fault_fired(kind) == fired) {
            assert_int_equal(st, SP_OK);
            break;
        }
        failures++;
        if (st == SP_OK)
            continue; /* absorbed (a refused page became a spill); checked in attempt() */
        if (kind == SP_FAULT_WRITE)
            assert_true(st == SP_ERR_NO_SPACE || st == SP_ERR_IO);
        else if (kind == SP_FAULT_ALLOC)
            assert_true(st == SP_ERR_NOMEM || st == SP_ERR_MEMORY_REFUSED);
        else
            assert_true(st == SP_ERR_IO);
        assert_true(strlen(sp_last_error()) > 0);
    }
    assert_true(n < 100000);
    assert_true(failures > 0);
    sp_conf_destroy(conf);
}

static void test_aggregator_fault_every_allocation(void **state)
{
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 8000, 3000, 128, 16, 8);
    sweep(SP_FAULT_ALLOC, "lz4", &in);
    input_free(&in);
    input_make(&in, OP_SUM, 20000, 6000, 0, 0, 9);
    sweep(SP_FAULT_ALLOC, "zstd", &in);
    input_free(&in);
}

static void test_aggregator_fault_every_write(void **state)
{
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 8000, 3000, 128, 16, 10);
    sweep(SP_FAULT_WRITE, "none", &in);
    input_free(&in);
}

static void test_aggregator_fault_every_read(void **state)
{
    input_t in;

    (void)state;
    input_make(&in, OP_CONCAT, 8000, 3000, 128, 16, 11);
    sweep(SP_FAULT_READ, "lz4", &in);
    input_free(&in);
}

/* A failed test may leave files and the hash mask behind; the next starts clean. */
static int setup(void **state)
{
    (void)state;
    clear_dir();
    sp__aggregator_hash_mask = UINT64_MAX;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_aggregator_word_count, setup),
        cmocka_unit_test_setup(test_aggregator_concat, setup),
        cmocka_unit_test_setup(test_aggregator_hash_collisions, setup),
        cmocka_unit_test_setup(test_aggregator_page_table_full, setup),
        cmocka_unit_test_setup(test_aggregator_other_consumer_during_insert, setup),
        cmocka_unit_test_setup(test_aggregator_other_consumer_during_output, setup),
        cmocka_unit_test_setup(test_aggregator_combiner_needs_more_room, setup),
        cmocka_unit_test_setup(test_aggregator_empty_input, setup),
        cmocka_unit_test_setup(test_aggregator_bad_input, setup),
        cmocka_unit_test_setup(test_aggregator_fault_every_allocation, setup),
        cmocka_unit_test_setup(test_aggregator_fault_every_write, setup),
        cmocka_unit_test_setup(test_aggregator_fault_every_read, setup),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-aggregator-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    clear_dir();
    rmdir(dir);
    return rc;
}
