/*
 * graphtest — a graph job (job ABI version 2) for the tests that run it
 * through the real `spate run` on executors and under mpirun
 * (tests/executor/test_run_graph.c). Three shuffles, a persisted dataset
 * read by three stages, and three actions:
 *
 *   a      = generate(parts): records ("kNNN", u64 value), persisted
 *   sums   = reduce_by_key(a, +, 4)                         shuffle 0
 *   joined = join(sums, a, 3): (key, sum * 3 + value)       shuffle 1
 *   sorted = sort_by_key(joined, 2)                         shuffle 2 (sampled)
 *   action 0: save(sorted as "key<TAB>value" lines)
 *   action 1: count(a)          (read from the cache)
 *   action 2: collect(sums)     (shuffle 0 again: its stage is skipped)
 *
 * finish_graph checks the count and that the collected sums add up to the
 * sum of every value, and prints "graphtest: ... as generated". The test
 * computes the saved lines itself from graphtest_value().
 *
 * --job-arg: parts=N (6), records=N (per partition, 500), keys=N (40),
 * seed=N (1), level=memory|memory_and_disk|disk (memory), slow_ms=N (sleep
 * per generated partition, so that a fault can land mid-stage),
 * shape=independent (instead: two generated datasets summed by key in two
 * independent map stages, joined, counted; finish checks the keys both have).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <spate/spate.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct gt_conf {
    uint32_t parts, records, keys;
    uint64_t seed;
    sp_storage_level_t level;
    unsigned slow_ms;
} gt_conf_t;

/* build() runs once per process before any task: the arguments live here. */
static gt_conf_t gt;

static uint64_t gt_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t gt_arg(const sp_job_params_t *p, const char *key, uint64_t def)
{
    const char *v = sp_job_arg(p, key);

    return v != NULL ? strtoull(v, NULL, 10) : def;
}

static sp_status_t gt_generate(sp_emitter_t *out, uint32_t partition, uint32_t partitions,
                               void *arg)
{
    uint64_t seed = gt.seed ^ (uint64_t)(uintptr_t)arg; /* arg: another dataset's seed tweak */

    (void)partitions;
    if (gt.slow_ms > 0) {
        struct timespec ts = {gt.slow_ms / 1000, (long)(gt.slow_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (uint32_t i = 0; i < gt.records; i++) {
        uint64_t r = gt_mix(seed ^ ((uint64_t)partition << 32 | i));
        char key[16];
        unsigned char v[8];
        int kl = snprintf(key, sizeof(key), "k%03u", (unsigned)(r % gt.keys));
        sp_status_t st;
        sp_rec_put_u64(v, (r >> 16) % 1000000);
        if ((st = sp_emit(out, key, (size_t)kl, v, 8)) != SP_OK)
            return st;
    }
    return SP_OK;
}

static size_t gt_sum(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                     const void *b, size_t b_len, void *out, size_t cap)
{
    (void)arg, (void)key, (void)key_len;
    if (a_len != 8 || b_len != 8)
        return 0;
    if (cap >= 8)
        sp_rec_put_u64(out, sp_rec_get_u64(a) + sp_rec_get_u64(b));
    return 8;
}

static const sp_combiner_t gt_combiner = {.combine = gt_sum};

static sp_status_t gt_mix_join(sp_emitter_t *out, const void *k, size_t kl, const void *v,
                               size_t vl, void *arg)
{
    sp_rec_field_t sum, value;
    unsigned char o[8];

    (void)arg;
    if (!sp_rec_tuple_field(v, vl, 0, &sum) || !sp_rec_tuple_field(v, vl, 1, &value) ||
        sum.len != 8 || value.len != 8)
        return sp_job_fail(SP_ERR_CORRUPT, "graphtest: a joined value is not two u64 fields");
    sp_rec_put_u64(o, sp_rec_get_u64(sum.data) * 3 + sp_rec_get_u64(value.data));
    return sp_emit(out, k, kl, o, 8);
}

static sp_status_t gt_text(sp_emitter_t *out, const void *k, size_t kl, const void *v, size_t vl,
                           void *arg)
{
    char text[32];
    int n = snprintf(text, sizeof(text), "%" PRIu64, sp_rec_get_u64(v));

    (void)vl, (void)arg;
    return sp_emit(out, k, kl, text, (size_t)n);
}

static int gt_count_action, gt_collect_action;
static bool gt_independent;

/* The second input of shape=independent: the same generator under another seed. */
#define GT_OTHER_SEED 0x5eedu

/*
 * shape=independent: two generated datasets, each summed by key (two map
 * stages that depend on nothing but their source, which must run at once),
 * joined, and counted: the keys both have.
 */
static sp_status_t gt_build_independent(sp_graph_t *g)
{
    sp_dataset_t *a = sp_graph_generate(g, gt.parts, gt_generate, NULL);
    sp_dataset_t *b = sp_graph_generate(g, gt.parts, gt_generate, (void *)(uintptr_t)GT_OTHER_SEED);

    gt_count_action =
        sp_ds_count(sp_ds_join(sp_ds_reduce_by_key(a, &gt_combiner, 4),
                               sp_ds_reduce_by_key(b, &gt_combiner, 4), 2, SP_JOIN_INNER));
    return sp_graph_status(g);
}

/* The keys of the source under seed tweak (a bitmap of keys). */
static void gt_keys(uint64_t tweak, unsigned char *seen)
{
    for (uint32_t part = 0; part < gt.parts; part++)
        for (uint32_t i = 0; i < gt.records; i++)
            seen[gt_mix((gt.seed ^ tweak) ^ ((uint64_t)part << 32 | i)) % gt.keys] = 1;
}

static sp_status_t gt_finish_independent(const sp_graph_t *g, void *report)
{
    unsigned char *a = calloc(gt.keys, 1), *b = calloc(gt.keys, 1);
    uint64_t want = 0;

    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return sp_job_fail(SP_ERR_NOMEM, "graphtest: no memory for the key sets");
    }
    gt_keys(0, a);
    gt_keys(GT_OTHER_SEED, b);
    for (uint32_t k = 0; k < gt.keys; k++)
        want += a[k] && b[k];
    free(a);
    free(b);
    if (sp_graph_count_result(g, gt_count_action) != want)
        return sp_job_fail(SP_ERR_INTERNAL, "graphtest: %" PRIu64 " keys joined, want %" PRIu64,
                           sp_graph_count_result(g, gt_count_action), want);
    fprintf(report, "graphtest: independent: %" PRIu64 " keys joined, as generated\n", want);
    return SP_OK;
}

static sp_status_t gt_build(sp_graph_t *g, const sp_job_params_t *p)
{
    const char *level = sp_job_arg(p, "level");
    sp_dataset_t *a, *sums, *joined;

    gt.parts = (uint32_t)gt_arg(p, "parts", 6);
    gt.records = (uint32_t)gt_arg(p, "records", 500);
    gt.keys = (uint32_t)gt_arg(p, "keys", 40);
    gt.seed = gt_arg(p, "seed", 1);
    gt.slow_ms = (unsigned)gt_arg(p, "slow_ms", 0);
    gt.level = level == NULL || strcmp(level, "memory") == 0 ? SP_STORAGE_MEMORY
               : strcmp(level, "disk") == 0                  ? SP_STORAGE_DISK
                                                             : SP_STORAGE_MEMORY_AND_DISK;
    if (gt.keys == 0 || gt.parts == 0)
        return sp_job_fail(SP_ERR_INVALID_PARAM, "graphtest: keys and parts must be positive");
    gt_independent =
        sp_job_arg(p, "shape") != NULL && strcmp(sp_job_arg(p, "shape"), "independent") == 0;
    if (gt_independent)
        return gt_build_independent(g);
    a = sp_ds_persist(sp_graph_generate(g, gt.parts, gt_generate, NULL), gt.level);
    sums = sp_ds_reduce_by_key(a, &gt_combiner, 4);
    joined = sp_ds_map(sp_ds_join(sums, a, 3, SP_JOIN_INNER), gt_mix_join, NULL);
    (void)sp_ds_save(sp_ds_map(sp_ds_sort_by_key(joined, 2, NULL, NULL), gt_text, NULL),
                     SP_SAVE_TEXT);
    gt_count_action = sp_ds_count(a);
    gt_collect_action = sp_ds_collect(sums, UINT64_MAX);
    return sp_graph_status(g);
}

static sp_status_t gt_finish(const sp_graph_t *g, const sp_job_params_t *p,
                             const sp_job_result_t *result, void *report)
{
    uint64_t want = 0, got = 0;
    size_t n;

    (void)p, (void)result;
    if (gt_independent)
        return gt_finish_independent(g, report);
    n = sp_graph_collected(g, gt_collect_action);
    for (uint32_t part = 0; part < gt.parts; part++)
        for (uint32_t i = 0; i < gt.records; i++)
            want += (gt_mix(gt.seed ^ ((uint64_t)part << 32 | i)) >> 16) % 1000000;
    for (size_t i = 0; i < n; i++) {
        const void *k, *v;
        size_t kl, vl;
        if (!sp_graph_collected_record(g, gt_collect_action, i, &k, &kl, &v, &vl) || vl != 8)
            return sp_job_fail(SP_ERR_INTERNAL, "graphtest: collected record %zu is malformed", i);
        got += sp_rec_get_u64(v);
    }
    if (sp_graph_count_result(g, gt_count_action) != (uint64_t)gt.parts * gt.records || got != want)
        return sp_job_fail(
            SP_ERR_INTERNAL,
            "graphtest: count %" PRIu64 " (want %" PRIu64 "), sums %" PRIu64 " (want %" PRIu64 ")",
            sp_graph_count_result(g, gt_count_action), (uint64_t)gt.parts * gt.records, got, want);
    fprintf(report, "graphtest: %" PRIu64 " records, %zu keys, sum %" PRIu64 ", as generated\n",
            sp_graph_count_result(g, gt_count_action), n, got);
    return SP_OK;
}

static const sp_job_t gt_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "graphtest",
    .summary = "a three-shuffle graph with a persisted dataset, for the tests",
    .build = gt_build,
    .finish_graph = gt_finish,
};

SP_JOB_EXPORT(gt_job)
