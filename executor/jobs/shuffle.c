/*
 * The shuffle job: synthetic records through the shuffle and nothing else,
 * to measure it, and a check that the reduce side saw exactly the records
 * the map side emitted.
 *
 * Records. Record i (0 .. records-1) has key_size random key bytes and
 * value_size random value bytes, drawn from a generator seeded by (seed, i),
 * so the records are the same whatever the number of map tasks. --job-arg:
 *   records=N      records in all (default: --size / (key_size + value_size),
 *                  else 1,000,000)
 *   key_size=N     1 .. 65535, default 10
 *   value_size=N   0 .. 64 MiB, default 90
 *   maps=N         map tasks (default: one per 64 MiB of records)
 *   skew=S         0 (default): keys are uniform and partitioned by hash.
 *                  S > 0: partition p gets a share proportional to
 *                  1/(p+1)^S (Zipf-like), which the job draws itself and
 *                  emits with sp_job_emit_to() (GIVEN partitioning: a hash
 *                  partitioner cannot be steered without inverting the hash)
 *   seed=N         default 0
 *   order=unordered|merge|sort   the reduce side's read order (default
 *                  unordered); merge has the map side sort by key
 * Partitions: --partitions, else twice the task slots.
 *
 * Check. Both sides sum (mod 2^64) a hash of every record, XXH3-64 of the
 * value seeded with XXH3-64 of the key, and count records and key + value
 * bytes; map tasks add them to counters 0-2, reduce tasks to counters 3-5,
 * and finish() fails the run when any pair differs. A sum (not a xor) is
 * what counters add up to over tasks, and it still catches a lost,
 * duplicated or damaged record (a duplicate adds its hash twice).
 *
 * Output. Discarded (counted) unless --output is given; then each reduce
 * task writes its records raw, key then value, back to back.
 *
 * Aggregation is not offered: the job descriptor's combiner would combine
 * every order's map output (job ABI 1 has no way for the plan to turn it
 * off) and so change what the other orders measure.
 */
#include "common_int.h"
#include "executor/executor_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define SP_SHUF_MAP_BYTES       (64ull << 20)
#define SP_SHUF_DEFAULT_RECORDS 1000000ull
#define SP_SHUF_MAX_KEY         65535ull
#define SP_SHUF_MAX_VALUE       (64ull << 20)
/* Partitions a skewed run may have (the cumulative table is 8 bytes each). */
#define SP_SHUF_MAX_SKEWED (1u << 20)

enum {
    SP_SHUF_MAP_RECORDS = 0,
    SP_SHUF_MAP_BYTES_C = 1,
    SP_SHUF_MAP_CHECK = 2,
    SP_SHUF_REDUCE_RECORDS = 3,
    SP_SHUF_REDUCE_BYTES = 4,
    SP_SHUF_REDUCE_CHECK = 5,
};

/* The job's arguments, parsed the same way by plan, map and finish. */
typedef struct sp_shuf_args {
    uint64_t records;
    uint64_t key_size;
    uint64_t value_size;
    uint64_t maps; /* 0: from the size */
    uint64_t seed;
    double skew;
    sp_read_order_t order;
} sp_shuf_args_t;

static sp_status_t sp_shuf_args(const sp_job_params_t *params, sp_shuf_args_t *a)
{
    const char *text;
    uint64_t dflt;
    sp_status_t st;

    memset(a, 0, sizeof(*a));
    if ((st = sp_job_arg_u64(params, "key_size", 10, SP_SHUF_MAX_KEY, &a->key_size)) != SP_OK ||
        (st = sp_job_arg_u64(params, "value_size", 90, SP_SHUF_MAX_VALUE, &a->value_size)) !=
            SP_OK ||
        (st = sp_job_arg_u64(params, "maps", 0, UINT32_MAX, &a->maps)) != SP_OK ||
        (st = sp_job_arg_u64(params, "seed", 0, UINT64_MAX, &a->seed)) != SP_OK)
        return st;
    if (a->key_size == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "shuffle: key_size must be at least 1");
    dflt = params->size > 0 ? SP_MAX(params->size / (a->key_size + a->value_size), 1)
                            : SP_SHUF_DEFAULT_RECORDS;
    if ((st = sp_job_arg_u64(params, "records", dflt, UINT64_MAX, &a->records)) != SP_OK)
        return st;

    if ((text = sp_job_arg(params, "skew")) != NULL) {
        char *end;

        errno = 0;
        a->skew = strtod(text, &end);
        if (errno != 0 || end == text || *end != '\0' || !(a->skew >= 0 && a->skew <= 100))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "shuffle: --job-arg skew=%s is not a number from 0 to 100", text);
    }

    text = sp_job_arg(params, "order");
    if (text == NULL || strcmp(text, "unordered") == 0)
        a->order = SP_READ_UNORDERED;
    else if (strcmp(text, "merge") == 0)
        a->order = SP_READ_MERGE;
    else if (strcmp(text, "sort") == 0)
        a->order = SP_READ_SORT;
    else if (strcmp(text, "aggregate") == 0)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "shuffle: order=aggregate is not offered (the job's combiner would also "
                        "combine the map output of every other order)");
    else
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "shuffle: --job-arg order=%s: use unordered, merge or sort", text);
    return SP_OK;
}

static sp_status_t sp_shuf_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    sp_shuf_args_t a;
    uint64_t maps, per, first = 0;
    sp_status_t st;

    if ((st = sp_shuf_args(params, &a)) != SP_OK)
        return st;
    if (a.records > UINT64_MAX / (a.key_size + a.value_size))
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "shuffle: %" PRIu64 " records of %" PRIu64 " bytes are too many", a.records,
                        a.key_size + a.value_size);
    maps = a.maps;
    if (maps == 0) {
        uint64_t bytes = a.records * (a.key_size + a.value_size);

        maps = bytes / SP_SHUF_MAP_BYTES + (bytes % SP_SHUF_MAP_BYTES != 0);
    }
    maps = SP_MAX(SP_MIN(maps, SP_MAX(a.records, 1)), 1);
    if (maps > UINT32_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "shuffle: %" PRIu64 " map tasks are too many; give fewer records or "
                        "more maps",
                        maps);

    plan->partitions = params->partitions
                           ? params->partitions
                           : (uint32_t)SP_MIN(2ull * SP_MAX(params->slots, 1u), UINT32_MAX);
    if (a.skew > 0 && plan->partitions > SP_SHUF_MAX_SKEWED)
        return SP_RAISE(SP_ERR_TOO_LARGE, "shuffle: skew needs at most %u partitions, not %u",
                        SP_SHUF_MAX_SKEWED, plan->partitions);
    plan->splits = calloc(maps, sizeof(*plan->splits));
    if (plan->splits == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "shuffle: no memory for %" PRIu64 " splits", maps);
    plan->maps = (uint32_t)maps;
    per = a.records / maps;
    for (uint32_t m = 0; m < plan->maps; m++) {
        uint64_t n = per + (m < a.records % maps);

        plan->splits[m] = (sp_job_split_t){.path = NULL, .offset = first, .length = n};
        first += n;
    }
    plan->partitioning = a.skew > 0 ? SP_JOB_GIVEN : SP_JOB_HASH;
    plan->key_ordering = a.order == SP_READ_MERGE;
    plan->order = a.order;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t sp_shuf_mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fills buf[0..len) with the bytes of record i; returns a further random word. */
static uint64_t sp_shuf_record(uint64_t seed, uint64_t i, unsigned char *buf, size_t len)
{
    uint64_t s = seed ^ (i * 0xd1b54a32d192ed03ull);
    size_t off = 0;

    for (; off + 8 <= len; off += 8) {
        uint64_t x = sp_shuf_mix(&s);
        memcpy(buf + off, &x, 8);
    }
    if (off < len) {
        uint64_t x = sp_shuf_mix(&s);
        memcpy(buf + off, &x, len - off);
    }
    return sp_shuf_mix(&s);
}

static uint64_t sp_shuf_hash(const void *key, size_t key_len, const void *value, size_t value_len)
{
    return XXH3_64bits_withSeed(value, value_len, XXH3_64bits(key, key_len));
}

/*
 * x^-s for x >= 1 and s >= 0, as exp(-s ln x), to about 1e-12 relative: the
 * skew's weights need no more, and libspate does not link libm.
 */
static double sp_shuf_pow_neg(double x, double s)
{
    const double ln2 = 0.69314718055994530942;
    uint64_t bits;
    double m, z, z2, term, ln = 0, y, r, e = 1;
    int64_t k, exp2;

    /* ln x = e ln 2 + ln m, m in [1, 2); ln m = 2 atanh((m-1)/(m+1)). */
    memcpy(&bits, &x, sizeof(bits));
    exp2 = (int64_t)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & ~(0x7ffull << 52)) | (1023ull << 52);
    memcpy(&m, &bits, sizeof(m));
    z = (m - 1) / (m + 1);
    z2 = z * z;
    term = z;
    for (int i = 1; i < 40; i += 2) {
        ln += term / i;
        term *= z2;
    }
    y = -s * ((double)exp2 * ln2 + 2 * ln);
    /* exp y = 2^k exp r, |r| <= ln 2 / 2. */
    if (y < -700)
        return 0;
    k = (int64_t)(y / ln2 - 0.5);
    r = y - (double)k * ln2;
    term = 1;
    for (int i = 1; i < 20; i++) {
        term *= r / i;
        e += term;
    }
    bits = (uint64_t)(k + 1023) << 52;
    memcpy(&m, &bits, sizeof(m));
    return e * m;
}

/* Cumulative shares of the partitions under skew s, the last exactly 1. */
static double *sp_shuf_skew_table(uint32_t partitions, double s)
{
    double *cdf = sp__malloc(partitions * sizeof(*cdf));
    double sum = 0;

    if (cdf == NULL)
        return NULL;
    for (uint32_t p = 0; p < partitions; p++) {
        sum += sp_shuf_pow_neg((double)p + 1, s);
        cdf[p] = sum;
    }
    for (uint32_t p = 0; p < partitions; p++)
        cdf[p] /= sum;
    cdf[partitions - 1] = 1.0;
    return cdf;
}

/* The first partition whose cumulative share exceeds u in [0, 1). */
static uint32_t sp_shuf_skew_pick(const double *cdf, uint32_t partitions, double u)
{
    uint32_t lo = 0, hi = partitions - 1;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;

        if (cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static sp_status_t sp_shuf_map(sp_job_task_t *task, const sp_job_split_t *split)
{
    const sp_job_params_t *params = sp_job_task_params(task);
    uint32_t partitions = sp_job_task_partitions(task);
    uint64_t check = 0, end = split->offset + split->length;
    unsigned char *buf;
    double *cdf = NULL;
    size_t klen, vlen;
    sp_shuf_args_t a;
    sp_status_t st;

    if ((st = sp_shuf_args(params, &a)) != SP_OK)
        return st;
    klen = (size_t)a.key_size;
    vlen = (size_t)a.value_size;
    buf = sp__malloc(klen + vlen);
    if (buf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "shuffle: no memory for a record of %zu bytes", klen + vlen);
    if (a.skew > 0 && (cdf = sp_shuf_skew_table(partitions, a.skew)) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "shuffle: no memory for the skew of %u partitions", partitions);
        goto out;
    }
    for (uint64_t i = split->offset; i < end; i++) {
        uint64_t r = sp_shuf_record(a.seed, i, buf, klen + vlen);

        check += sp_shuf_hash(buf, klen, buf + klen, vlen);
        if (cdf != NULL) {
            double u = (double)(r >> 11) * 0x1.0p-53;

            st = sp_job_emit_to(task, sp_shuf_skew_pick(cdf, partitions, u), buf, klen, buf + klen,
                                vlen);
        } else {
            st = sp_job_emit(task, buf, klen, buf + klen, vlen);
        }
        if (st != SP_OK)
            goto out;
    }
    sp_job_counter_add(task, SP_SHUF_MAP_RECORDS, split->length);
    sp_job_counter_add(task, SP_SHUF_MAP_BYTES_C, split->length * (klen + vlen));
    sp_job_counter_add(task, SP_SHUF_MAP_CHECK, check);
out:
    sp__free(cdf);
    sp__free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reduce                                                                    */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_shuf_reduce(sp_job_task_t *task, const void *key, size_t key_len,
                                  const void *value, size_t value_len)
{
    sp_status_t st;

    sp_job_counter_add(task, SP_SHUF_REDUCE_RECORDS, 1);
    sp_job_counter_add(task, SP_SHUF_REDUCE_BYTES, key_len + value_len);
    sp_job_counter_add(task, SP_SHUF_REDUCE_CHECK, sp_shuf_hash(key, key_len, value, value_len));
    if (sp_job_task_params(task)->output == NULL)
        return SP_OK;
    if ((st = sp_job_write(task, key, key_len)) != SP_OK)
        return st;
    return sp_job_write(task, value, value_len);
}

static sp_status_t sp_shuf_finish(const sp_job_params_t *params, const sp_job_result_t *result,
                                  void *report)
{
    static const char *const orders[] = {"unordered", "merge", "sort", "aggregate"};
    const uint64_t *c = result->counters;
    sp_shuf_args_t a;
    sp_status_t st;

    if ((st = sp_shuf_args(params, &a)) != SP_OK)
        return st;
    if (report != NULL)
        fprintf(report,
                "shuffle: %" PRIu64 " records, %" PRIu64 " bytes over %u partitions, order %s, "
                "skew %g: the reduce side read %" PRIu64 " records, %" PRIu64 " bytes\n",
                c[SP_SHUF_MAP_RECORDS], c[SP_SHUF_MAP_BYTES_C], result->partitions, orders[a.order],
                a.skew, c[SP_SHUF_REDUCE_RECORDS], c[SP_SHUF_REDUCE_BYTES]);
    if (c[SP_SHUF_MAP_RECORDS] != c[SP_SHUF_REDUCE_RECORDS] ||
        c[SP_SHUF_MAP_BYTES_C] != c[SP_SHUF_REDUCE_BYTES] ||
        c[SP_SHUF_MAP_CHECK] != c[SP_SHUF_REDUCE_CHECK])
        return SP_RAISE(SP_ERR_CORRUPT,
                        "shuffle: the map side emitted %" PRIu64 " records of %" PRIu64
                        " bytes (hash sum %016" PRIx64 "), the reduce side read %" PRIu64
                        " records of %" PRIu64 " bytes (hash sum %016" PRIx64 ")",
                        c[SP_SHUF_MAP_RECORDS], c[SP_SHUF_MAP_BYTES_C], c[SP_SHUF_MAP_CHECK],
                        c[SP_SHUF_REDUCE_RECORDS], c[SP_SHUF_REDUCE_BYTES],
                        c[SP_SHUF_REDUCE_CHECK]);
    return SP_OK;
}

const sp_job_t sp__job_shuffle = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "shuffle",
    .summary = "synthetic records through the shuffle, checked end to end (--job-arg "
               "records=, key_size=, value_size=, skew=, order=)",
    .plan = sp_shuf_plan,
    .map = sp_shuf_map,
    .reduce = sp_shuf_reduce,
    .finish = sp_shuf_finish,
    .counter_names = {"map records", "map bytes", "map hash sum", "reduce records", "reduce bytes",
                      "reduce hash sum"},
};
