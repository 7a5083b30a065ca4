/*
 * Graph operations against naive references, run in process through
 * sp__graph_run_local on random generated inputs (several seeds, empty
 * partitions, one hot key in about half the records, and a tiny executor
 * memory where every sort and aggregation spills): map, flat_map, filter,
 * map_partitions, reduce_by_key, group_by_key, sort_by_key, cogroup, inner
 * and left join, partition_by, repartition, count and collect. Sources:
 * text lines split every way (a line is read exactly once whatever the split
 * size), fixed-size records, a bad record file. Caching: a persisted
 * dataset is computed once and read back by later actions, computed again
 * after its blocks are evicted, with the same result; a shuffle read by two
 * actions is computed once (a skipped stage). Errors: a build without an
 * action, a map that emits twice, a job's own failure message, two saves.
 * Record helpers: u64 and double encodings sort as numbers, tuples pack and
 * refuse malformed input.
 */
/* LABELS: unit */
#include "common_int.h"
#include "executor/graph_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "job_env_util.h"
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static void sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

/* ---- an executor's parts (job_env_util.h) ---- */

typedef je_env_t env_t;

static void env_open(env_t *e, const char *memory)
{
    je_env_open(e, dir, memory, "64k");
    je_env_start(e);
}

static void env_close(env_t *e) { je_env_close(e); }

/* ---- the generated input: records (key, u64 value) ---- */

typedef struct scen {
    uint32_t parts, per_part, keys;
    uint64_t seed;
    unsigned hot_percent;
} scen_t;

static scen_t S;
static scen_t S2;                  /* a second input (joins) */
static _Atomic uint64_t generated; /* partitions generated, for the caching tests */

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Record i of partition p: every third partition is empty. */
static uint32_t scen_count(const scen_t *s, uint32_t p)
{
    return p % 3 == 2 ? 0 : s->per_part + p % 5;
}

static size_t scen_record(const scen_t *s, uint32_t p, uint32_t i, char *key, uint64_t *value)
{
    uint64_t r = mix(s->seed ^ ((uint64_t)p << 32 | i));

    *value = r >> 20;
    if (r % 100 < s->hot_percent)
        return (size_t)sprintf(key, "hot");
    return (size_t)sprintf(key, "k%u", (unsigned)((r >> 8) % s->keys));
}

static sp_status_t gen_fn(sp_emitter_t *out, uint32_t partition, uint32_t partitions, void *arg)
{
    const scen_t *s = arg;
    char key[32];
    unsigned char v[8];
    uint64_t value;
    sp_status_t st;

    assert_int_equal(partitions, s->parts);
    assert_int_equal(sp_emitter_partition(out), partition);
    generated++;
    for (uint32_t i = 0; i < scen_count(s, partition); i++) {
        size_t kl = scen_record(s, partition, i, key, &value);
        sp_rec_put_u64(v, value);
        if ((st = sp_emit(out, key, kl, v, 8)) != SP_OK)
            return st;
    }
    return SP_OK;
}

/* ---- the reference: a list of (key, value) records ---- */

typedef struct rec {
    char key[64];
    size_t kl;
    unsigned char val[128];
    size_t vl;
} rec_t;

typedef struct recs {
    rec_t *r;
    size_t n, cap;
} recs_t;

static void recs_add(recs_t *rs, const void *k, size_t kl, const void *v, size_t vl)
{
    assert_true(kl <= sizeof(rs->r[0].key) && vl <= sizeof(rs->r[0].val));
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? 2 * rs->cap : 256;
        rs->r = realloc(rs->r, rs->cap * sizeof(*rs->r));
        assert_non_null(rs->r);
    }
    memcpy(rs->r[rs->n].key, k, kl);
    rs->r[rs->n].kl = kl;
    memcpy(rs->r[rs->n].val, v, vl);
    rs->r[rs->n].vl = vl;
    rs->n++;
}

static int rec_cmp(const void *a, const void *b)
{
    const rec_t *x = a, *y = b;
    int c = memcmp(x->key, y->key, x->kl < y->kl ? x->kl : y->kl);

    if (c != 0 || x->kl != y->kl)
        return c != 0 ? c : (x->kl < y->kl ? -1 : 1);
    c = memcmp(x->val, y->val, x->vl < y->vl ? x->vl : y->vl);
    return c != 0 ? c : (x->vl < y->vl ? -1 : x->vl > y->vl);
}

static void recs_sort(recs_t *rs) { qsort(rs->r, rs->n, sizeof(*rs->r), rec_cmp); }

static void scen_all(const scen_t *s, recs_t *rs)
{
    char key[32];
    unsigned char v[8];
    uint64_t value;

    for (uint32_t p = 0; p < s->parts; p++)
        for (uint32_t i = 0; i < scen_count(s, p); i++) {
            size_t kl = scen_record(s, p, i, key, &value);
            sp_rec_put_u64(v, value);
            recs_add(rs, key, kl, v, 8);
        }
}

/* The records a collect action brought back, in order. */
static void collected(const sp_graph_t *g, int action, recs_t *rs)
{
    const void *k, *v;
    size_t kl, vl;

    for (size_t i = 0; i < sp_graph_collected(g, action); i++) {
        assert_true(sp_graph_collected_record(g, action, i, &k, &kl, &v, &vl));
        recs_add(rs, k, kl, v, vl);
    }
}

static void recs_equal(recs_t *a, recs_t *b)
{
    recs_sort(a);
    recs_sort(b);
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++)
        assert_int_equal(rec_cmp(&a->r[i], &b->r[i]), 0);
}

/* ---- a job per test: build() calls the test's builder ---- */

typedef sp_status_t (*builder_fn_t)(sp_graph_t *g, const sp_job_params_t *p);
static builder_fn_t builder;
static int actions[8];

static sp_status_t job_build(sp_graph_t *g, const sp_job_params_t *p) { return builder(g, p); }

static const sp_job_t graph_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "graph-test",
    .summary = "operations against references",
    .build = job_build,
};

static sp_job_result_t last_result;
static const char *const test_args[] = {"marker=here"};

static sp_status_t run(env_t *e, const char *output, sp__graph_stats_t *stats, sp_graph_t **g)
{
    sp_job_params_t p = {.slots = 2,
                         .executors = 1,
                         .conf = e->conf,
                         .output = output,
                         .args = test_args,
                         .nargs = 1};

    memset(&last_result, 0, sizeof(last_result));
    return sp__graph_run_local(&graph_job, &p, e->mm, &last_result, stats, g);
}

/* ---- callbacks ---- */

static bool keep_even(const void *k, size_t kl, const void *v, size_t vl, void *arg)
{
    (void)k, (void)kl, (void)vl, (void)arg;
    return sp_rec_get_u64(v) % 2 == 0;
}

/* map: key gets a 'm' prefix, value doubles. */
static sp_status_t map_fn(sp_emitter_t *out, const void *k, size_t kl, const void *v, size_t vl,
                          void *arg)
{
    char key[64];
    unsigned char val[8];

    (void)vl, (void)arg;
    key[0] = 'm';
    memcpy(key + 1, k, kl);
    sp_rec_put_u64(val, sp_rec_get_u64(v) * 2);
    /* Callbacks see the run's parameters and keep counters. */
    assert_string_equal(sp_job_arg(sp_emitter_params(out), "marker"), "here");
    sp_emitter_counter_add(out, 3, 1);
    sp_emitter_counter_add(out, SP_JOB_COUNTERS, 1); /* out of range: ignored */
    return sp_emit(out, key, kl + 1, val, 8);
}

/* flat_map: each record twice, the second with value + 1. */
static sp_status_t twice_fn(sp_emitter_t *out, const void *k, size_t kl, const void *v, size_t vl,
                            void *arg)
{
    unsigned char val[8];
    sp_status_t st;

    (void)arg;
    if ((st = sp_emit(out, k, kl, v, vl)) != SP_OK)
        return st;
    sp_rec_put_u64(val, sp_rec_get_u64(v) + 1);
    return sp_emit(out, k, kl, val, 8);
}

static size_t sum_combine(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                          const void *b, size_t b_len, void *out, size_t cap)
{
    (void)arg, (void)key, (void)key_len, (void)a_len, (void)b_len;
    if (cap >= 8)
        sp_rec_put_u64(out, sp_rec_get_u64(a) + sp_rec_get_u64(b));
    return 8;
}

static const sp_combiner_t sum_combiner = {.combine = sum_combine};

static void ref_sum(recs_t *in, recs_t *out)
{
    recs_sort(in);
    for (size_t i = 0; i < in->n;) {
        uint64_t sum = 0;
        size_t j = i;
        unsigned char v[8];
        for (; j < in->n && in->r[j].kl == in->r[i].kl &&
               memcmp(in->r[j].key, in->r[i].key, in->r[i].kl) == 0;
             j++)
            sum += sp_rec_get_u64(in->r[j].val);
        sp_rec_put_u64(v, sum);
        recs_add(out, in->r[i].key, in->r[i].kl, v, 8);
        i = j;
    }
}

/* ---- map, filter, count, collect ---- */

static sp_status_t build_narrow(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    ds = sp_ds_map(sp_ds_filter(ds, keep_even, NULL), map_fn, NULL);
    actions[0] = sp_ds_count(ds);
    actions[1] = sp_ds_collect(ds, UINT64_MAX);
    actions[2] = sp_ds_collect(ds, 5);
    return sp_graph_status(g);
}

static void test_graph_narrow_ops(void **state)
{
    env_t e;

    (void)state;
    env_open(&e, "64m");
    for (uint64_t seed = 1; seed <= 3; seed++) {
        recs_t all = {0}, want = {0}, got = {0};
        sp_graph_t *g = NULL;
        S = (scen_t){.parts = 7, .per_part = 200, .keys = 50, .seed = seed, .hot_percent = 50};
        builder = build_narrow;
        assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
        scen_all(&S, &all);
        for (size_t i = 0; i < all.n; i++)
            if (sp_rec_get_u64(all.r[i].val) % 2 == 0) {
                char key[64];
                unsigned char v[8];
                key[0] = 'm';
                memcpy(key + 1, all.r[i].key, all.r[i].kl);
                sp_rec_put_u64(v, sp_rec_get_u64(all.r[i].val) * 2);
                recs_add(&want, key, all.r[i].kl + 1, v, 8);
            }
        assert_int_equal(sp_graph_count_result(g, actions[0]), want.n);
        /* The map ran once per kept record for each of the three actions. */
        assert_int_equal(last_result.counters[3], 3 * want.n);
        collected(g, actions[1], &got);
        recs_equal(&got, &want);
        assert_int_equal(sp_graph_collected(g, actions[2]), 5);
        sp__graph_destroy(g);
        free(all.r), free(want.r), free(got.r);
    }
    env_close(&e);
}

/* ---- flat_map, reduce_by_key; tiny memory ---- */

static sp_status_t build_reduce(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    ds = sp_ds_reduce_by_key(sp_ds_flat_map(ds, twice_fn, NULL), &sum_combiner, 3);
    actions[0] = sp_ds_collect(ds, UINT64_MAX);
    return sp_graph_status(g);
}

static void check_reduce(const char *memory, uint32_t per_part, uint32_t keys, bool spills)
{
    env_t e;
    sp__graph_stats_t stats;

    env_open(&e, memory);
    for (uint64_t seed = 11; seed <= 12; seed++) {
        recs_t all = {0}, twice = {0}, want = {0}, got = {0};
        sp_graph_t *g = NULL;
        S = (scen_t){
            .parts = 5, .per_part = per_part, .keys = keys, .seed = seed, .hot_percent = 40};
        builder = build_reduce;
        assert_int_equal(run(&e, NULL, &stats, &g), SP_OK);
        assert_int_equal(stats.spills > 0, spills);
        scen_all(&S, &all);
        for (size_t i = 0; i < all.n; i++) {
            unsigned char v[8];
            recs_add(&twice, all.r[i].key, all.r[i].kl, all.r[i].val, 8);
            sp_rec_put_u64(v, sp_rec_get_u64(all.r[i].val) + 1);
            recs_add(&twice, all.r[i].key, all.r[i].kl, v, 8);
        }
        ref_sum(&twice, &want);
        collected(g, actions[0], &got);
        recs_equal(&got, &want);
        sp__graph_destroy(g);
        free(all.r), free(twice.r), free(want.r), free(got.r);
    }
    env_close(&e);
}

static void test_graph_reduce_by_key(void **state)
{
    (void)state;
    check_reduce("64m", 300, 100, false);
}

static void test_graph_reduce_by_key_tiny_memory(void **state)
{
    (void)state;
    check_reduce("2m", 60000, 200000, true);
}

/* ---- group_by_key ---- */

/* One record per key: (key, u64 count || u64 sum). */
static sp_status_t group_fn(sp_emitter_t *out, const void *key, size_t kl, sp_values_t *values,
                            void *arg)
{
    uint64_t count = 0, sum = 0;
    unsigned char v[16];
    const void *p;
    size_t len;

    (void)arg;
    while (sp_values_next(values, &p, &len)) {
        assert_int_equal(len, 8);
        count++;
        sum += sp_rec_get_u64(p);
    }
    sp_rec_put_u64(v, count);
    sp_rec_put_u64(v + 8, sum);
    return sp_emit(out, key, kl, v, 16);
}

static sp_status_t build_group(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    actions[0] = sp_ds_collect(sp_ds_group_by_key(ds, 4, group_fn, NULL), UINT64_MAX);
    return sp_graph_status(g);
}

static void check_group(const char *memory, uint32_t per_part)
{
    env_t e;
    recs_t all = {0}, want = {0}, got = {0};
    sp_graph_t *g = NULL;

    env_open(&e, memory);
    S = (scen_t){.parts = 6, .per_part = per_part, .keys = 300, .seed = 21, .hot_percent = 50};
    builder = build_group;
    assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
    scen_all(&S, &all);
    recs_sort(&all);
    for (size_t i = 0; i < all.n;) {
        uint64_t sum = 0, count = 0;
        unsigned char v[16];
        size_t j = i;
        for (; j < all.n && all.r[j].kl == all.r[i].kl &&
               memcmp(all.r[j].key, all.r[i].key, all.r[i].kl) == 0;
             j++, count++)
            sum += sp_rec_get_u64(all.r[j].val);
        sp_rec_put_u64(v, count);
        sp_rec_put_u64(v + 8, sum);
        recs_add(&want, all.r[i].key, all.r[i].kl, v, 16);
        i = j;
    }
    collected(g, actions[0], &got);
    recs_equal(&got, &want);
    sp__graph_destroy(g);
    free(all.r), free(want.r), free(got.r);
    env_close(&e);
}

static void test_graph_group_by_key(void **state)
{
    (void)state;
    check_group("64m", 500);
    check_group("3m", 30000);
}

/* ---- sort_by_key ---- */

static sp_status_t build_sort(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    actions[0] = sp_ds_collect(sp_ds_sort_by_key(ds, 3, NULL, NULL), UINT64_MAX);
    return sp_graph_status(g);
}

static void test_graph_sort_by_key(void **state)
{
    env_t e;

    (void)state;
    env_open(&e, "8m");
    for (uint64_t seed = 31; seed <= 33; seed++) {
        recs_t all = {0}, got = {0};
        sp_graph_t *g = NULL;
        S = (scen_t){.parts = 5, .per_part = 3000, .keys = 5000, .seed = seed, .hot_percent = 10};
        builder = build_sort;
        assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
        collected(g, actions[0], &got);
        /* Collected in partition order: the keys must already be sorted across partitions. */
        for (size_t i = 1; i < got.n; i++) {
            const rec_t *a = &got.r[i - 1], *b = &got.r[i];
            int c = memcmp(a->key, b->key, a->kl < b->kl ? a->kl : b->kl);
            assert_true(c < 0 || (c == 0 && a->kl <= b->kl));
        }
        scen_all(&S, &all);
        recs_equal(&got, &all);
        sp__graph_destroy(g);
        free(all.r), free(got.r);
    }
    env_close(&e);
}

/* ---- cogroup and join ---- */

static sp_status_t cogroup_fn(sp_emitter_t *out, const void *key, size_t kl, sp_values_t *left,
                              sp_values_t *right, void *arg)
{
    uint64_t l = 0, r = 0;
    unsigned char v[16];
    const void *p;
    size_t len;

    (void)arg;
    while (sp_values_next(left, &p, &len))
        l++;
    while (sp_values_next(right, &p, &len))
        r++;
    sp_rec_put_u64(v, l);
    sp_rec_put_u64(v + 8, r);
    return sp_emit(out, key, kl, v, 16);
}

static sp_status_t build_join(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *a = sp_graph_generate(g, S.parts, gen_fn, &S);
    sp_dataset_t *b = sp_graph_generate(g, S2.parts, gen_fn, &S2);

    (void)p;
    actions[0] = sp_ds_collect(sp_ds_join(a, b, 3, SP_JOIN_INNER), UINT64_MAX);
    actions[1] = sp_ds_collect(sp_ds_join(a, b, 2, SP_JOIN_LEFT), UINT64_MAX);
    actions[2] = sp_ds_collect(sp_ds_cogroup(a, b, 4, cogroup_fn, NULL), UINT64_MAX);
    return sp_graph_status(g);
}

static bool same_key(const rec_t *a, const rec_t *b)
{
    return a->kl == b->kl && memcmp(a->key, b->key, a->kl) == 0;
}

static void add_pair(recs_t *rs, const rec_t *l, const rec_t *r)
{
    sp_rec_field_t f[2] = {{l->val, l->vl, false}, {r ? r->val : NULL, r ? r->vl : 0, r == NULL}};
    unsigned char t[64];
    size_t n = sp_rec_tuple_pack(t, sizeof(t), f, 2);

    assert_true(n <= sizeof(t));
    recs_add(rs, l->key, l->kl, t, n);
}

static void test_graph_join_and_cogroup(void **state)
{
    env_t e;

    (void)state;
    env_open(&e, "16m");
    for (uint64_t seed = 41; seed <= 42; seed++) {
        recs_t a = {0}, b = {0}, inner = {0}, left = {0}, cog = {0}, got = {0};
        sp_graph_t *g = NULL;
        S = (scen_t){.parts = 4, .per_part = 60, .keys = 40, .seed = seed, .hot_percent = 5};
        S2 = (scen_t){.parts = 3, .per_part = 50, .keys = 80, .seed = seed * 7, .hot_percent = 3};
        builder = build_join;
        assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
        scen_all(&S, &a);
        scen_all(&S2, &b);
        for (size_t i = 0; i < a.n; i++) {
            bool matched = false;
            for (size_t j = 0; j < b.n; j++)
                if (same_key(&a.r[i], &b.r[j])) {
                    add_pair(&inner, &a.r[i], &b.r[j]);
                    add_pair(&left, &a.r[i], &b.r[j]);
                    matched = true;
                }
            if (!matched)
                add_pair(&left, &a.r[i], NULL);
        }
        collected(g, actions[0], &got);
        recs_equal(&got, &inner);
        got.n = 0;
        collected(g, actions[1], &got);
        recs_equal(&got, &left);
        /* cogroup: per key of either side, the count on each side. */
        recs_t both = {0};
        for (size_t i = 0; i < a.n; i++)
            recs_add(&both, a.r[i].key, a.r[i].kl, "L", 1);
        for (size_t j = 0; j < b.n; j++)
            recs_add(&both, b.r[j].key, b.r[j].kl, "R", 1);
        recs_sort(&both);
        for (size_t i = 0; i < both.n;) {
            uint64_t l = 0, r = 0;
            unsigned char v[16];
            size_t j = i;
            for (; j < both.n && same_key(&both.r[j], &both.r[i]); j++)
                *(both.r[j].val[0] == 'L' ? &l : &r) += 1;
            sp_rec_put_u64(v, l);
            sp_rec_put_u64(v + 8, r);
            recs_add(&cog, both.r[i].key, both.r[i].kl, v, 16);
            i = j;
        }
        got.n = 0;
        collected(g, actions[2], &got);
        recs_equal(&got, &cog);
        sp__graph_destroy(g);
        free(a.r), free(b.r), free(inner.r), free(left.r), free(cog.r), free(got.r), free(both.r);
    }
    env_close(&e);
}

/* ---- map_partitions, partition_by, repartition ---- */

typedef struct part_state {
    uint64_t n;
} part_state_t;

static sp_status_t part_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    (void)out, (void)arg;
    *state_p = calloc(1, sizeof(part_state_t));
    return *state_p != NULL ? SP_OK : SP_ERR_NOMEM;
}

/* Emits (key, partition) per record, and at the end ("#end", count). */
static sp_status_t part_record(sp_emitter_t *out, void *state, const void *k, size_t kl,
                               const void *v, size_t vl, void *arg)
{
    unsigned char p[8];

    (void)v, (void)vl, (void)arg;
    ((part_state_t *)state)->n++;
    sp_rec_put_u64(p, sp_emitter_partition(out));
    return sp_emit(out, k, kl, p, 8);
}

static sp_status_t part_end(sp_emitter_t *out, void *state, void *arg)
{
    unsigned char n[8];
    sp_status_t st;

    (void)arg;
    sp_rec_put_u64(n, ((part_state_t *)state)->n);
    st = sp_emit(out, "#end", 4, n, 8);
    free(state);
    return st;
}

static const sp_partition_fns_t part_fns = {
    .begin = part_begin, .record = part_record, .end = part_end};

static sp_status_t build_parts(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    actions[0] =
        sp_ds_collect(sp_ds_map_partitions(sp_ds_partition_by(ds, 5), &part_fns, NULL), UINT64_MAX);
    actions[1] =
        sp_ds_collect(sp_ds_map_partitions(sp_ds_repartition(ds, 4), &part_fns, NULL), UINT64_MAX);
    return sp_graph_status(g);
}

static void test_graph_partitioning(void **state)
{
    env_t e;
    recs_t all = {0}, got = {0};
    sp_graph_t *g = NULL;
    uint64_t per[5] = {0}, ends = 0, total = 0;

    (void)state;
    env_open(&e, "16m");
    S = (scen_t){.parts = 7, .per_part = 400, .keys = 100, .seed = 51, .hot_percent = 50};
    builder = build_parts;
    assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
    scen_all(&S, &all);
    /* partition_by: a key lives in one partition; each partition counts its own records. */
    collected(g, actions[0], &got);
    recs_sort(&got);
    for (size_t i = 0; i < got.n; i++) {
        if (got.r[i].kl == 4 && memcmp(got.r[i].key, "#end", 4) == 0) {
            ends++;
            total += sp_rec_get_u64(got.r[i].val);
            continue;
        }
        per[sp_rec_get_u64(got.r[i].val)]++;
        if (i > 0 && same_key(&got.r[i], &got.r[i - 1]))
            assert_int_equal(sp_rec_get_u64(got.r[i].val), sp_rec_get_u64(got.r[i - 1].val));
    }
    assert_int_equal(ends, 5);
    assert_int_equal(total, all.n);
    assert_int_equal(per[0] + per[1] + per[2] + per[3] + per[4], all.n);
    /* repartition: round robin spreads even the hot key over every partition. */
    got.n = 0;
    memset(per, 0, sizeof(per));
    collected(g, actions[1], &got);
    for (size_t i = 0; i < got.n; i++)
        if (!(got.r[i].kl == 4 && memcmp(got.r[i].key, "#end", 4) == 0))
            per[sp_rec_get_u64(got.r[i].val)]++;
    for (int p = 0; p < 4; p++)
        assert_true(per[p] > all.n / 8);
    assert_int_equal(per[0] + per[1] + per[2] + per[3], all.n);
    sp__graph_destroy(g);
    free(all.r), free(got.r);
    env_close(&e);
}

/* ---- caching and skipped stages ---- */

static sp_status_t build_cached(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_ds_persist(sp_graph_generate(g, S.parts, gen_fn, &S), SP_STORAGE_MEMORY);
    sp_dataset_t *sum = sp_ds_reduce_by_key(ds, &sum_combiner, 3);

    (void)p;
    actions[0] = sp_ds_count(ds);
    actions[1] = sp_ds_collect(ds, UINT64_MAX); /* from the cache */
    actions[2] = sp_ds_collect(sum, UINT64_MAX);
    actions[3] = sp_ds_count(sum); /* the shuffle again: its stage is skipped */
    sp_ds_unpersist(ds);
    actions[4] = sp_ds_count(ds); /* computed again */
    return sp_graph_status(g);
}

static void test_graph_persist_and_skip(void **state)
{
    env_t e;
    recs_t all = {0}, got = {0}, want = {0};
    sp__graph_stats_t stats;
    sp_graph_t *g = NULL;

    (void)state;
    env_open(&e, "64m");
    S = (scen_t){.parts = 6, .per_part = 300, .keys = 30, .seed = 61, .hot_percent = 20};
    builder = build_cached;
    generated = 0;
    assert_int_equal(run(&e, NULL, &stats, &g), SP_OK);
    scen_all(&S, &all);
    /* Generated for action 0 and again after unpersist: twice each partition, no more. */
    assert_int_equal(generated, 2 * S.parts);
    assert_int_equal(stats.blocks_cached, 2 * S.parts);
    assert_true(stats.cache_hits >= 2 * S.parts); /* action 1 and the map stage of action 2 */
    assert_int_equal(stats.stages_skipped, 1);
    assert_int_equal(sp_graph_count_result(g, actions[0]), all.n);
    assert_int_equal(sp_graph_count_result(g, actions[4]), all.n);
    collected(g, actions[1], &got);
    recs_equal(&got, &all);
    got.n = 0;
    collected(g, actions[2], &got);
    ref_sum(&all, &want);
    recs_equal(&got, &want);
    assert_int_equal(sp_graph_count_result(g, actions[3]), want.n);
    sp__graph_destroy(g);
    free(all.r), free(got.r), free(want.r);
    env_close(&e);
}

/* Evicting every cached block between actions: recomputed from lineage, same result. */
static sp_memory_manager_t *evict_mm;

static sp_status_t evict_fn(sp_emitter_t *out, const void *k, size_t kl, const void *v, size_t vl,
                            void *arg)
{
    (void)arg;
    if (sp_emitter_partition(out) == 0)
        sp_memory_manager_evict_storage(evict_mm, UINT64_MAX / 2);
    return sp_emit(out, k, kl, v, vl);
}

static sp_storage_level_t evict_level;

static sp_status_t build_evicted(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_ds_persist(sp_graph_generate(g, S.parts, gen_fn, &S), evict_level);

    (void)p;
    actions[0] = sp_ds_count(ds);
    actions[1] = sp_ds_collect(sp_ds_map(ds, evict_fn, NULL), UINT64_MAX);
    actions[2] = sp_ds_collect(ds, UINT64_MAX);
    return sp_graph_status(g);
}

/*
 * Every block evicted while action 1 runs: MEMORY blocks are dropped and
 * computed again from lineage; MEMORY_AND_DISK ones go to disk and are read
 * back from there, never computed again. The results are the same.
 */
static void check_evicted(sp_storage_level_t level)
{
    env_t e;
    recs_t all = {0}, got = {0};
    sp__graph_stats_t stats;
    sp_block_store_stats_t bs;
    sp_block_store_t *store = NULL;
    sp_graph_t *g = NULL;
    char blocks[300];

    env_open(&e, "64m");
    /* The manager's own store (an executor's), which the runner uses and the test reads. */
    snprintf(blocks, sizeof(blocks), "%s/blocks", dir);
    assert_int_equal(sp_block_store_create(e.mm, blocks, &store), SP_OK);
    evict_mm = e.mm;
    evict_level = level;
    S = (scen_t){.parts = 4, .per_part = 300, .keys = 30, .seed = 71, .hot_percent = 20};
    builder = build_evicted;
    generated = 0;
    assert_int_equal(run(&e, NULL, &stats, &g), SP_OK);
    scen_all(&S, &all);
    sp_block_store_stats(store, &bs);
    if (level == SP_STORAGE_MEMORY) {
        assert_true(generated > S.parts); /* some partitions were computed again */
        assert_true(bs.evicted_dropped > 0);
    } else {
        assert_int_equal(generated, S.parts); /* later reads came from memory or block files */
        assert_true(bs.evicted_to_disk > 0);
        assert_true(bs.disk_reads > 0);
    }
    collected(g, actions[1], &got);
    recs_equal(&got, &all);
    got.n = 0;
    collected(g, actions[2], &got);
    recs_equal(&got, &all);
    sp__graph_destroy(g);
    sp_block_store_destroy(store);
    free(all.r), free(got.r);
    env_close(&e);
}

static void test_graph_persist_evicted(void **state)
{
    (void)state;
    check_evicted(SP_STORAGE_MEMORY);
}

static void test_graph_persist_evicted_to_disk(void **state)
{
    (void)state;
    check_evicted(SP_STORAGE_MEMORY_AND_DISK);
}

/* A persisted partition larger than its task may hold is not cached: computed again, same result.
 */
static sp_status_t build_too_big_to_cache(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_ds_persist(sp_graph_generate(g, S.parts, gen_fn, &S), SP_STORAGE_MEMORY);

    (void)p;
    actions[0] = sp_ds_count(ds);
    actions[1] = sp_ds_count(ds);
    return sp_graph_status(g);
}

static void test_graph_persist_too_big_for_memory(void **state)
{
    env_t e;
    sp__graph_stats_t stats;
    sp_graph_t *g = NULL;
    uint64_t records = 0;

    (void)state;
    env_open(&e, "2m");
    S = (scen_t){.parts = 2, .per_part = 150000, .keys = 1000, .seed = 75, .hot_percent = 0};
    builder = build_too_big_to_cache;
    generated = 0;
    assert_int_equal(run(&e, NULL, &stats, &g), SP_OK);
    for (uint32_t p = 0; p < S.parts; p++)
        records += scen_count(&S, p);
    assert_int_equal(sp_graph_count_result(g, actions[0]), records);
    assert_int_equal(sp_graph_count_result(g, actions[1]), records);
    assert_int_equal(stats.blocks_cached, 0);
    assert_int_equal(generated, 2 * S.parts); /* each action computed every partition */
    sp__graph_destroy(g);
    env_close(&e);
}

/* ---- sources ---- */

static const char *text_path;
static uint32_t text_splits;

static sp_status_t build_text(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_text(g, text_path, text_splits);

    (void)p;
    actions[0] = sp_ds_collect(ds, UINT64_MAX);
    return sp_graph_status(g);
}

static void test_graph_text_splits(void **state)
{
    env_t e;
    char path[300], file[320];
    uint64_t r = 99;

    (void)state;
    env_open(&e, "16m");
    snprintf(path, sizeof(path), "%s/text", dir);
    sh("rm -rf %s && mkdir -p %s", path, path);
    for (int round = 0; round < 4; round++) {
        recs_t want = {0};
        FILE *f;
        /* Two files (one ending without '\n' in odd rounds), one empty, a hidden one skipped. */
        for (int fi = 0; fi < 2; fi++) {
            snprintf(file, sizeof(file), "%s/part%d", path, fi);
            f = fopen(file, "w");
            assert_non_null(f);
            int lines = 50 + round * 30;
            for (int l = 0; l < lines; l++) {
                char line[80];
                r = mix(r);
                int len = (int)(r % 70);
                for (int c = 0; c < len; c++)
                    line[c] = (char)('a' + (mix(r + (uint64_t)c) % 26));
                fwrite(line, 1, (size_t)len, f);
                if (!(round % 2 == 1 && fi == 1 && l == lines - 1))
                    fputc('\n', f);
                recs_add(&want, "", 0, line, (size_t)len);
            }
            fclose(f);
        }
        sh("touch %s/empty && echo ignored > %s/.hidden && echo ignored > %s/_SUCCESS", path, path,
           path);
        text_path = path;
        for (uint32_t splits = 1; splits <= 64; splits = splits * 2 + 1) {
            recs_t got = {0};
            sp_graph_t *g = NULL;
            text_splits = splits;
            builder = build_text;
            assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
            collected(g, actions[0], &got);
            recs_equal(&got, &want);
            sp__graph_destroy(g);
            free(got.r);
        }
        free(want.r);
    }
    env_close(&e);
}

/* A line longer than a text source takes: bad input, named, not memory without end. */
static void test_graph_text_line_too_long(void **state)
{
    static char chunk[1024];
    env_t e;
    char path[300];
    FILE *f;

    (void)state;
    env_open(&e, "16m");
    snprintf(path, sizeof(path), "%s/long.txt", dir);
    assert_non_null(f = fopen(path, "w"));
    fputs("short line\n", f);
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < (65 << 10); i++) /* 65 MiB without a newline */
        assert_int_equal(fwrite(chunk, 1, sizeof(chunk), f), sizeof(chunk));
    fclose(f);
    text_path = path;
    text_splits = 1;
    builder = build_text;
    assert_int_equal(run(&e, NULL, NULL, NULL), SP_ERR_BAD_INPUT);
    assert_non_null(strstr(sp_last_error(), "long.txt: the line at byte 11 is longer than 64 MiB"));
    unlink(path);
    env_close(&e);
}

static uint32_t rec_size = 10;

static sp_status_t build_records(sp_graph_t *g, const sp_job_params_t *p)
{
    (void)p;
    actions[0] = sp_ds_collect(sp_graph_records(g, text_path, rec_size, 3, 4), UINT64_MAX);
    return sp_graph_status(g);
}

static void test_graph_records_source(void **state)
{
    env_t e;
    char path[300];
    recs_t want = {0}, got = {0};
    sp_graph_t *g = NULL;
    FILE *f;

    (void)state;
    env_open(&e, "16m");
    snprintf(path, sizeof(path), "%s/records.bin", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 1000; i++) {
        unsigned char rec[10];
        for (int c = 0; c < 10; c++)
            rec[c] = (unsigned char)mix((uint64_t)i * 10 + (uint64_t)c);
        fwrite(rec, 1, 10, f);
        recs_add(&want, rec, 3, rec + 3, 7);
    }
    fclose(f);
    text_path = path;
    builder = build_records;
    rec_size = 10;
    assert_int_equal(run(&e, NULL, NULL, &g), SP_OK);
    collected(g, actions[0], &got);
    recs_equal(&got, &want);
    sp__graph_destroy(g);
    /* 1000 records of 10 bytes are not whole records of 7: bad input, named. */
    rec_size = 7;
    g = NULL;
    assert_int_equal(run(&e, NULL, NULL, &g), SP_ERR_BAD_INPUT);
    assert_non_null(strstr(sp_last_error(), "records.bin"));
    assert_null(g);
    free(want.r), free(got.r);
    env_close(&e);
}

/* ---- save ---- */

static sp_status_t build_save(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, S.parts, gen_fn, &S);

    (void)p;
    actions[0] = sp_ds_save(sp_ds_reduce_by_key(ds, &sum_combiner, 2), SP_SAVE_BINARY);
    return sp_graph_status(g);
}

static void test_graph_save(void **state)
{
    env_t e;
    char out[300], part[340];
    recs_t all = {0}, want = {0}, got = {0};
    sp_graph_t *g = NULL;

    (void)state;
    env_open(&e, "16m");
    snprintf(out, sizeof(out), "%s/out", dir);
    sh("rm -rf %s", out);
    S = (scen_t){.parts = 3, .per_part = 100, .keys = 20, .seed = 81, .hot_percent = 0};
    builder = build_save;
    assert_int_equal(run(&e, out, NULL, &g), SP_OK);
    sp__graph_destroy(g);
    scen_all(&S, &all);
    ref_sum(&all, &want);
    /* Binary part files: keys "kN" (no other key), values 8 bytes. */
    for (int p = 0; p < 2; p++) {
        unsigned char buf[1 << 16];
        size_t n, off = 0;
        FILE *f;
        snprintf(part, sizeof(part), "%s/part-r-%05d", out, p);
        assert_non_null(f = fopen(part, "r"));
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        while (off < n) {
            size_t kl = 1;
            while (buf[off + kl] >= '0' && buf[off + kl] <= '9')
                kl++;
            recs_add(&got, buf + off, kl, buf + off + kl, 8);
            off += kl + 8;
        }
    }
    recs_equal(&got, &want);
    snprintf(part, sizeof(part), "%s/_SUCCESS", out);
    assert_int_equal(access(part, F_OK), 0);
    free(all.r), free(want.r), free(got.r);
    env_close(&e);
}

/* ---- errors ---- */

static sp_status_t build_no_action(sp_graph_t *g, const sp_job_params_t *p)
{
    (void)p;
    (void)sp_graph_generate(g, 2, gen_fn, &S);
    return sp_graph_status(g);
}

static sp_status_t bad_map(sp_emitter_t *out, const void *k, size_t kl, const void *v, size_t vl,
                           void *arg)
{
    sp_status_t st = sp_emit(out, k, kl, v, vl);

    (void)arg;
    return st != SP_OK ? st : sp_emit(out, k, kl, v, vl);
}

static sp_status_t build_bad_map(sp_graph_t *g, const sp_job_params_t *p)
{
    (void)p;
    actions[0] = sp_ds_count(sp_ds_map(sp_graph_generate(g, 2, gen_fn, &S), bad_map, NULL));
    return sp_graph_status(g);
}

static sp_status_t failing_map(sp_emitter_t *out, const void *k, size_t kl, const void *v,
                               size_t vl, void *arg)
{
    (void)out, (void)k, (void)kl, (void)v, (void)vl, (void)arg;
    return sp_job_fail(SP_ERR_BAD_INPUT, "record with value %llu is not welcome",
                       (unsigned long long)sp_rec_get_u64(v));
}

static sp_status_t build_failing(sp_graph_t *g, const sp_job_params_t *p)
{
    (void)p;
    actions[0] =
        sp_ds_count(sp_ds_flat_map(sp_graph_generate(g, 2, gen_fn, &S), failing_map, NULL));
    return sp_graph_status(g);
}

static sp_status_t build_two_saves(sp_graph_t *g, const sp_job_params_t *p)
{
    sp_dataset_t *ds = sp_graph_generate(g, 2, gen_fn, &S);

    (void)p;
    (void)sp_ds_save(ds, SP_SAVE_TEXT);
    (void)sp_ds_save(sp_ds_filter(ds, keep_even, NULL), SP_SAVE_TEXT);
    return sp_graph_status(g);
}

static void test_graph_errors(void **state)
{
    env_t e;

    (void)state;
    env_open(&e, "16m");
    S = (scen_t){.parts = 2, .per_part = 10, .keys = 5, .seed = 91, .hot_percent = 0};
    builder = build_no_action;
    assert_int_equal(run(&e, NULL, NULL, NULL), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "no action"));
    builder = build_bad_map;
    assert_int_equal(run(&e, NULL, NULL, NULL), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "flat_map"));
    builder = build_failing;
    assert_int_equal(run(&e, NULL, NULL, NULL), SP_ERR_BAD_INPUT);
    assert_non_null(strstr(sp_last_error(), "is not welcome"));
    builder = build_two_saves;
    assert_int_equal(run(&e, NULL, NULL, NULL), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "second save"));
    env_close(&e);
}

/* ---- record helpers ---- */

static void test_graph_record_helpers(void **state)
{
    uint64_t r = 7;
    unsigned char a[8], b[8], t[64];
    sp_rec_field_t f[3] = {{"ab", 2, false}, {NULL, 0, true}, {"", 0, false}}, got;

    (void)state;
    for (int i = 0; i < 10000; i++) {
        uint64_t x = mix(r++), y = mix(r++);
        double dx = (double)(int64_t)x / 1e6, dy = (double)(int64_t)y / 3e5;
        sp_rec_put_u64(a, x);
        sp_rec_put_u64(b, y);
        assert_int_equal(sp_rec_get_u64(a), x);
        assert_true((memcmp(a, b, 8) < 0) == (x < y));
        sp_rec_put_double(a, dx);
        sp_rec_put_double(b, dy);
        assert_true(sp_rec_get_double(a) == dx);
        assert_true((memcmp(a, b, 8) < 0) == (dx < dy));
    }
    sp_rec_put_double(a, -0.0);
    sp_rec_put_double(b, 0.0);
    assert_true(memcmp(a, b, 8) < 0);
    sp_rec_put_double(a, INFINITY);
    assert_true(sp_rec_get_double(a) == INFINITY);
    assert_int_equal(sp_rec_tuple_pack(t, 4, f, 3), 14); /* too small: size only */
    assert_int_equal(sp_rec_tuple_pack(t, sizeof(t), f, 3), 14);
    assert_true(sp_rec_tuple_field(t, 14, 0, &got));
    assert_false(got.null);
    assert_int_equal(got.len, 2);
    assert_memory_equal(got.data, "ab", 2);
    assert_true(sp_rec_tuple_field(t, 14, 1, &got));
    assert_true(got.null);
    assert_true(sp_rec_tuple_field(t, 14, 2, &got));
    assert_false(got.null);
    assert_int_equal(got.len, 0);
    assert_false(sp_rec_tuple_field(t, 14, 3, &got)); /* no such field */
    for (size_t cut = 0; cut < 14; cut++)             /* every truncation of the last field */
        if (cut != 10)
            assert_false(sp_rec_tuple_field(t, cut, 2, &got));
    t[0] = 0xF0; /* a length past the end */
    assert_false(sp_rec_tuple_field(t, 14, 0, &got));
    assert_false(sp_rec_tuple_field(t, 14, 1, &got));
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/spate-test-graph-ops-%d", (int)getpid());
    sh("rm -rf %s && mkdir -p %s", dir, dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sh("rm -rf %s", dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graph_record_helpers),
        cmocka_unit_test(test_graph_narrow_ops),
        cmocka_unit_test(test_graph_reduce_by_key),
        cmocka_unit_test(test_graph_reduce_by_key_tiny_memory),
        cmocka_unit_test(test_graph_group_by_key),
        cmocka_unit_test(test_graph_sort_by_key),
        cmocka_unit_test(test_graph_join_and_cogroup),
        cmocka_unit_test(test_graph_partitioning),
        cmocka_unit_test(test_graph_persist_and_skip),
        cmocka_unit_test(test_graph_persist_evicted),
        cmocka_unit_test(test_graph_persist_evicted_to_disk),
        cmocka_unit_test(test_graph_persist_too_big_for_memory),
        cmocka_unit_test(test_graph_text_splits),
        cmocka_unit_test(test_graph_text_line_too_long),
        cmocka_unit_test(test_graph_records_source),
        cmocka_unit_test(test_graph_save),
        cmocka_unit_test(test_graph_errors),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
