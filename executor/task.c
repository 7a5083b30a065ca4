/*
 * The task runner: what an executor's worker thread does with one task of a
 * job, and the in-process serial runner built from the same pieces.
 *
 * - A map task runs the job's map over its split; each sp_job_emit() goes
 *   straight into the shuffle writer (which serializes the record once), and
 *   the writer commits the output atomically at the end.
 * - A sample task gathers keys for range partitioning: the job's sample
 *   callback when it has one, else its map with a reservoir sample of the
 *   emitted keys (deterministic seed, so reruns agree).
 * - A reduce task reads its partition's blocks in the plan's order through
 *   the shuffle reader (one-sided fetches over the transport for remote
 *   blocks) and hands each record to the job's reduce, whose output goes to
 *   an attempt file that is renamed into OUTPUT/_temporary/<run id> only
 *   when the task succeeds; the driver publishes the partitions and writes
 *   _SUCCESS when the whole job did (the output committer, output.c). So a
 *   failed or half-run job never leaves output that looks complete.
 *
 * A task's memory is one sp_task_memory_t of the executor's manager; its id
 * is unique in the process. Tasks of one executor run concurrently on its
 * worker threads; everything here is per task except the id counter.
 */
#include "executor_int.h"

#include "common_int.h"
#include "graph_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SP_SAMPLE_DEFAULT 1000u

typedef enum sp_task_mode {
    SP_TASK_MAP = 0,
    SP_TASK_SAMPLE = 1,
    SP_TASK_REDUCE = 2,
} sp_task_mode_t;

struct sp_job_task {
    const sp__task_env_t *env;
    sp_task_mode_t mode;
    uint32_t index;
    uint32_t attempt;
    void *state;
    sp_task_memory_t *memory;
    sp_shuffle_writer_t *writer;
    uint64_t emitted;
    /* sample mode */
    unsigned char *sample;
    size_t sample_len, sample_cap;
    uint32_t sample_want;
    uint64_t sample_seen;
    uint64_t rng;
    struct sp_sample_key {
        size_t off, len;
    } * reservoir;
    bool use_reservoir;
    sp__part_file_t out; /* reduce output */
    uint64_t counters[SP_JOB_COUNTERS];
};

static atomic_uint_fast64_t sp_task_ids = 1;

uint64_t sp__task_memory_id(void) { return atomic_fetch_add(&sp_task_ids, 1); }

const sp_job_params_t *sp_job_task_params(const sp_job_task_t *task) { return task->env->params; }

uint32_t sp_job_task_index(const sp_job_task_t *task) { return task->index; }

uint32_t sp_job_task_partitions(const sp_job_task_t *task) { return task->env->plan->partitions; }

void **sp_job_task_state(sp_job_task_t *task) { return &task->state; }

sp_task_memory_t *sp_job_task_memory(sp_job_task_t *task) { return task->memory; }

sp_status_t sp_job_fail(sp_status_t status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return SP_RAISE(status == SP_OK ? SP_ERR_INTERNAL : status, "%s", msg);
}

void sp_job_counter_add(sp_job_task_t *task, unsigned id, uint64_t value)
{
    if (id < SP_JOB_COUNTERS)
        task->counters[id] += value;
}

/* xorshift64*: the reservoir's deterministic random numbers. */
static uint64_t sp_task_rand(sp_job_task_t *task)
{
    uint64_t x = task->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    task->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static sp_status_t sp_sample_append(sp_job_task_t *task, const void *key, size_t key_len,
                                    size_t *off_p)
{
    size_t need = 4 + key_len;

    if (key_len > UINT32_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "sampled key of %zu bytes is too long", key_len);
    if (task->sample_len + need > task->sample_cap) {
        size_t cap = SP_MAX(task->sample_cap * 2, task->sample_len + need + 4096);
        unsigned char *p = sp__realloc(task->sample, cap);
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu bytes of sampled keys", cap);
        task->sample = p;
        task->sample_cap = cap;
    }
    uint32_t len32 = (uint32_t)key_len;
    memcpy(task->sample + task->sample_len, &len32, 4);
    memcpy(task->sample + task->sample_len + 4, key, key_len);
    *off_p = task->sample_len;
    task->sample_len += need;
    return SP_OK;
}

/* Sample mode: the job's own sample emits every key; map output is reservoir-sampled. */
static sp_status_t sp_sample_emit(sp_job_task_t *task, const void *key, size_t key_len)
{
    size_t off;
    sp_status_t st;

    task->sample_seen++;
    if (!task->use_reservoir)
        return sp_sample_append(task, key, key_len, &off);
    if (task->sample_seen <= task->sample_want) {
        if ((st = sp_sample_append(task, key, key_len, &off)) != SP_OK)
            return st;
        task->reservoir[task->sample_seen - 1] = (struct sp_sample_key){off, key_len};
        return SP_OK;
    }
    uint64_t j = sp_task_rand(task) % task->sample_seen;
    if (j >= task->sample_want)
        return SP_OK;
    /* Replaced keys stay in the buffer; it is compacted at the end. */
    if ((st = sp_sample_append(task, key, key_len, &off)) != SP_OK)
        return st;
    task->reservoir[j] = (struct sp_sample_key){off, key_len};
    return SP_OK;
}

/*
 * The lengths of an emitted record, checked before anything reads its bytes
 * (the partitioner hashes the key first): a record stores each length as a
 * u32 (the writer's pages, spill segments and the reduce side all do), so a
 * longer key or value cannot be written whatever the memory, and no retry
 * would help. Beyond that the writer needs the record to fit the executor's
 * execution memory (it gets a page of its own when it is larger than
 * memory.page_size), which it checks itself.
 */
static sp_status_t sp_emit_check(const sp_job_task_t *task, const void *key, size_t key_len,
                                 const void *value, size_t value_len)
{
    const char *what = task->mode == SP_TASK_SAMPLE ? "sample" : "map";

    if (key_len > UINT32_MAX)
        return SP_RAISE(SP_ERR_BAD_INPUT,
                        "job %s %s task %u emitted a key of %zu bytes; a key is at most %" PRIu32
                        " bytes",
                        task->env->job->name, what, task->index, key_len, UINT32_MAX);
    if (value_len > UINT32_MAX)
        return SP_RAISE(
            SP_ERR_BAD_INPUT,
            "job %s %s task %u emitted a value of %zu bytes; a value is at most %" PRIu32 " bytes",
            task->env->job->name, what, task->index, value_len, UINT32_MAX);
    if ((key == NULL && key_len != 0) || (value == NULL && value_len != 0))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "job %s %s task %u emitted a record with NULL %s bytes of length %zu",
                        task->env->job->name, what, task->index, key == NULL ? "key" : "value",
                        key == NULL ? key_len : value_len);
    return SP_OK;
}

sp_status_t sp_job_emit_to(sp_job_task_t *task, uint32_t partition, const void *key, size_t key_len,
                           const void *value, size_t value_len)
{
    const sp_job_plan_t *plan = task->env->plan;
    sp_status_t st;

    if ((st = sp_emit_check(task, key, key_len, value, value_len)) != SP_OK)
        return st;
    if (task->mode == SP_TASK_SAMPLE)
        return sp_sample_emit(task, key, key_len);
    if (task->mode != SP_TASK_MAP)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "job %s emitted a record outside a map task",
                        task->env->job->name);
    if (plan->partitioning == SP_JOB_GIVEN && partition >= plan->partitions)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "job %s emitted to partition %u of %u",
                        task->env->job->name, partition, plan->partitions);
    task->emitted++;
    return sp_shuffle_writer_write(task->writer, partition, key, key_len, value, value_len);
}

sp_status_t sp_job_emit(sp_job_task_t *task, const void *key, size_t key_len, const void *value,
                        size_t value_len)
{
    sp_status_t st;

    if ((st = sp_emit_check(task, key, key_len, value, value_len)) != SP_OK)
        return st;
    if (task->mode == SP_TASK_MAP && task->env->plan->partitioning == SP_JOB_GIVEN)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "job %s partitions records itself: use sp_job_emit_to()",
                        task->env->job->name);
    return sp_job_emit_to(task, 0, key, key_len, value, value_len);
}

sp_status_t sp_job_write(sp_job_task_t *task, const void *buf, size_t len)
{
    if (task->mode != SP_TASK_REDUCE)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "job %s wrote output outside a reduce task",
                        task->env->job->name);
    return sp__part_file_write(&task->out, buf, len);
}

static sp_status_t sp_task_begin(sp_job_task_t *task, const sp__task_env_t *env,
                                 sp_task_mode_t mode, uint32_t index, uint32_t attempt)
{
    memset(task, 0, sizeof(*task));
    task->env = env;
    task->mode = mode;
    task->index = index;
    task->attempt = attempt;
    task->out.fd = -1;
    return sp_task_memory_create(env->mm, sp__task_memory_id(), &task->memory);
}

static void sp_task_end(sp_job_task_t *task, sp__task_metrics_t *metrics)
{
    sp_task_memory_stats_t ms;

    sp_task_memory_destroy(task->memory, &ms);
    task->memory = NULL;
    free(task->state); /* left by a task that failed before the job freed it */
    task->state = NULL;
    if (metrics != NULL) {
        metrics->peak_memory = ms.peak_acquired_bytes;
        for (unsigned i = 0; i < SP_JOB_COUNTERS; i++)
            metrics->counters[i] += task->counters[i];
    }
    sp__free(task->sample);
    sp__free(task->reservoir);
    sp__part_file_abort(&task->out);
}

static const sp_job_split_t *sp_task_split(const sp__task_env_t *env, uint32_t map_id)
{
    if (map_id >= env->plan->maps)
        return NULL;
    return &env->plan->splits[map_id];
}

/*
 * What a job's callback said when it failed with st: the message it set
 * (the last error is cleared before each call), or the status's name.
 */
static const char *sp_task_job_error(sp_status_t st)
{
    const char *msg = sp_last_error();

    return msg[0] != '\0' ? msg : sp_status_str(st);
}

sp_status_t sp__task_run_map(const sp__task_env_t *env, uint32_t map_id, uint32_t attempt,
                             const sp_key_t *split_keys, sp_map_status_t **status_p,
                             sp__task_metrics_t *metrics)
{
    const sp_job_plan_t *plan = env->plan;
    const sp_job_split_t *split = sp_task_split(env, map_id);
    sp_shuffle_writer_options_t opts;
    sp_shuffle_write_stats_t ws;
    sp_map_status_t *status = NULL;
    sp_job_task_t task;
    uint64_t t0 = sp__now_ns(), t1;
    sp_status_t st;

    if (split == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "map task %u of a job with %u maps", map_id,
                        plan->maps);
    if (plan->partitioning == SP_JOB_RANGE && plan->partitions > 1 && split_keys == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "map task %u needs range bounds", map_id);
    if ((st = sp_task_begin(&task, env, SP_TASK_MAP, map_id, attempt)) != SP_OK)
        return st;
    if ((st = sp_shuffle_writer_options_init(&opts, env->conf)) != SP_OK)
        goto out_task;
    opts.shuffle_id = env->shuffle_id;
    opts.map_id = map_id;
    opts.attempt = attempt;
    opts.partitions = plan->partitions;
    opts.partitioner = plan->partitioning == SP_JOB_HASH    ? SP_PARTITIONER_HASH
                       : plan->partitioning == SP_JOB_RANGE ? SP_PARTITIONER_RANGE
                                                            : SP_PARTITIONER_GIVEN;
    if (opts.partitioner == SP_PARTITIONER_RANGE && plan->partitions == 1)
        opts.partitioner = SP_PARTITIONER_GIVEN; /* one partition: nothing to cut */
    opts.split_keys = split_keys;
    opts.key_ordering = plan->key_ordering;
    opts.compare = env->job->compare;
    opts.compare_arg = env->job->compare_arg;
    opts.combiner = env->job->combiner;
    if ((st = sp_shuffle_writer_open(task.memory, env->conf, &opts, &task.writer)) != SP_OK)
        goto out_task;
    sp_last_error_clear();
    if ((st = env->job->map(&task, split)) != SP_OK) {
        st = SP_RAISE(st, "map task %u of job %s failed: %s", map_id, env->job->name,
                      sp_task_job_error(st));
        goto out_writer;
    }
    t1 = sp__now_ns();
    if ((st = sp_shuffle_writer_commit(task.writer, &status)) != SP_OK)
        goto out_writer;
    status->executor_id = env->executor_id;
    sp_shuffle_writer_stats(task.writer, &ws);
    if (metrics != NULL) {
        memset(metrics, 0, sizeof(*metrics));
        metrics->records_in = task.emitted;
        metrics->records_out = ws.records;
        metrics->bytes_in = ws.record_bytes;
        metrics->bytes_out = ws.output_bytes;
        metrics->spills = ws.spills;
        metrics->spill_bytes = ws.spill_bytes;
        metrics->sort_ns = ws.sort_ns;
        metrics->spill_ns = ws.spill_ns;
        metrics->merge_ns = ws.merge_ns;
        metrics->map_ns = t1 - t0;
    }
    *status_p = status;
out_writer:
    sp_shuffle_writer_close(task.writer);
out_task:
    sp_task_end(&task, st == SP_OK ? metrics : NULL);
    if (st == SP_OK && metrics != NULL)
        metrics->run_ns = sp__now_ns() - t0;
    return st;
}

sp_status_t sp__task_run_sample(const sp__task_env_t *env, uint32_t map_id, uint32_t count,
                                void **keys_p, size_t *len_p)
{
    const sp_job_split_t *split = sp_task_split(env, map_id);
    sp_job_task_t task;
    sp_status_t st;

    if (split == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sample task %u of a job with %u maps", map_id,
                        env->plan->maps);
    if (count == 0)
        count = SP_SAMPLE_DEFAULT;
    if ((st = sp_task_begin(&task, env, SP_TASK_SAMPLE, map_id, 0)) != SP_OK)
        return st;
    task.sample_want = count;
    task.rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)map_id * 0xBF58476D1CE4E5B9ULL);
    sp_last_error_clear();
    if (env->job->sample != NULL) {
        st = env->job->sample(&task, split, count);
    } else {
        task.use_reservoir = true;
        task.reservoir = sp__calloc(count, sizeof(*task.reservoir));
        if (task.reservoir == NULL)
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a sample of %u keys", count);
        else
            st = env->job->map(&task, split);
    }
    if (st != SP_OK) {
        st = SP_RAISE(st, "sample task %u of job %s failed: %s", map_id, env->job->name,
                      sp_task_job_error(st));
        goto out;
    }
    if (task.use_reservoir) {
        /* Compact the kept keys to the front, in reservoir order. */
        uint64_t kept = SP_MIN(task.sample_seen, (uint64_t)count);
        unsigned char *out = sp__malloc(task.sample_len + 1);
        size_t len = 0;
        if (out == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for the sample of map %u", map_id);
            goto out;
        }
        for (uint64_t i = 0; i < kept; i++) {
            memcpy(out + len, task.sample + task.reservoir[i].off, 4 + task.reservoir[i].len);
            len += 4 + task.reservoir[i].len;
        }
        *keys_p = out;
        *len_p = len;
    } else {
        *keys_p = task.sample;
        *len_p = task.sample_len;
        task.sample = NULL;
    }
out:
    sp_task_end(&task, NULL);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reduce                                                                    */
/* ------------------------------------------------------------------------ */

uint64_t sp__remote_bytes(uint32_t executor_id, uint32_t partition,
                          const sp_map_status_t *const *statuses, size_t count)
{
    uint64_t remote = 0;

    for (size_t i = 0; i < count; i++) {
        const sp_map_status_t *s = statuses[i];
        if (s != NULL && s->address != NULL && s->executor_id != executor_id &&
            partition < s->partitions && s->lengths != NULL)
            remote += s->lengths[partition];
    }
    return remote;
}

/* An incremental read's wait: the feed's next statuses, added to the reader. */
typedef struct sp_reduce_wait {
    const sp__task_env_t *env;
    const sp__reduce_feed_t *feed;
    uint32_t partition;
    uint64_t remote;
} sp_reduce_wait_t;

static sp_status_t sp_reduce_wait(void *arg, sp_shuffle_reader_t *reader, int timeout_ms)
{
    sp_reduce_wait_t *w = arg;
    const sp_map_status_t *const *statuses = NULL;
    size_t count = 0;
    sp_status_t st = w->feed->next(w->feed->arg, timeout_ms, &statuses, &count);

    if (st != SP_OK || count == 0)
        return st;
    w->remote += sp__remote_bytes(w->env->executor_id, w->partition, statuses, count);
    return sp_shuffle_reader_add(reader, statuses, count);
}

sp_status_t sp__task_run_reduce(const sp__task_env_t *env, uint32_t partition, uint32_t attempt,
                                const sp_map_status_t *const *statuses, size_t count,
                                const sp__reduce_feed_t *feed, uint64_t *failed_map_p,
                                sp__task_metrics_t *metrics)
{
    sp_reduce_wait_t wait = {.env = env, .feed = feed, .partition = partition};
    sp_shuffle_reader_options_t ro = {0};
    sp_shuffle_read_stats_t rs;
    sp_block_list_t *blocks = NULL;
    sp_block_fetcher_t *fetcher = NULL;
    sp_shuffle_reader_t *reader = NULL;
    sp_job_task_t task;
    uint64_t t0 = sp__now_ns(), records = 0;
    bool more = true;
    sp_status_t st;

    if (failed_map_p != NULL)
        *failed_map_p = UINT64_MAX;
    if (partition >= env->plan->partitions)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "reduce task %u of a job with %u partitions",
                        partition, env->plan->partitions);
    if ((st = sp_task_begin(&task, env, SP_TASK_REDUCE, partition, attempt)) != SP_OK)
        return st;
    if (feed == NULL && (st = sp_block_list_from_statuses(statuses, count, partition, partition + 1,
                                                          &blocks)) != SP_OK)
        goto out_task;
    wait.remote = sp__remote_bytes(env->executor_id, partition, statuses, count);
    if (env->transport != NULL &&
        (st = sp_block_fetcher_transport_create(env->transport, &fetcher)) != SP_OK)
        goto out_blocks;
    ro.order = env->plan->order;
    ro.compare = env->job->compare;
    ro.compare_arg = env->job->compare_arg;
    ro.combiner = env->job->combiner;
    ro.fetcher = fetcher;
    if ((st = sp__part_file_open(&task.out, env->params->output, env->run_id, partition,
                                 attempt)) != SP_OK)
        goto out_fetcher;
    if (feed == NULL)
        st = sp_shuffle_reader_open(task.memory, env->conf, blocks, &ro, &reader);
    else if ((st = sp_shuffle_reader_open_incremental(task.memory, env->conf, env->plan->maps,
                                                      partition, partition + 1, &ro, sp_reduce_wait,
                                                      &wait, &reader)) == SP_OK)
        st = sp_shuffle_reader_add(reader, statuses, count);
    if (st != SP_OK)
        goto out_reader;
    /*
     * Once, not per record (the hot path): a reduce that fails without a
     * message of its own is then named by its status, unless the reader
     * recovered from an error on the way.
     */
    sp_last_error_clear();
    for (;;) {
        const void *k, *v;
        size_t kl, vl;

        if ((st = sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more)) != SP_OK) {
            uint64_t map_id;
            if (st == SP_ERR_FETCH_FAILED && failed_map_p != NULL &&
                sp_shuffle_reader_failed_map(reader, &map_id))
                *failed_map_p = map_id;
            goto out_reader;
        }
        if (!more)
            break;
        records++;
        if ((st = env->job->reduce(&task, k, kl, v, vl)) != SP_OK) {
            st = SP_RAISE(st, "reduce task %u of job %s failed: %s", partition, env->job->name,
                          sp_task_job_error(st));
            goto out_reader;
        }
    }
    sp_last_error_clear();
    if (env->job->reduce_end != NULL && (st = env->job->reduce_end(&task)) != SP_OK) {
        st = SP_RAISE(st, "reduce task %u of job %s failed at its end: %s", partition,
                      env->job->name, sp_task_job_error(st));
        goto out_reader;
    }
    if ((st = sp__part_file_commit(&task.out)) != SP_OK)
        goto out_reader;
    sp_shuffle_reader_stats(reader, &rs);
    if (metrics != NULL) {
        memset(metrics, 0, sizeof(*metrics));
        metrics->records_in = records;
        metrics->records_out = records;
        metrics->bytes_in = rs.bytes;
        metrics->bytes_out = task.out.bytes;
        metrics->remote_bytes = wait.remote;
        metrics->spills = rs.spills;
        metrics->fetch_wait_ns = rs.wait_ns;
    }
out_reader:
    sp_shuffle_reader_close(reader);
    if (st != SP_OK)
        sp__part_file_abort(&task.out);
out_fetcher:
    sp_block_fetcher_destroy(fetcher);
out_blocks:
    sp_block_list_destroy(blocks);
out_task:
    sp_task_end(&task, st == SP_OK ? metrics : NULL);
    if (st == SP_OK && metrics != NULL) {
        metrics->run_ns = sp__now_ns() - t0;
        metrics->map_ns = metrics->run_ns - metrics->fetch_wait_ns;
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Range bounds                                                              */
/* ------------------------------------------------------------------------ */

typedef struct sp_bound_sort {
    sp_key_compare_fn_t compare;
    void *arg;
} sp_bound_sort_t;

static int sp_key_bytes_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = memcmp(a, b, SP_MIN(alen, blen));
    return c != 0 ? c : (alen < blen ? -1 : alen > blen);
}

static int sp_bound_cmp(const void *x, const void *y, void *arg)
{
    const sp_key_t *a = x, *b = y;
    const sp_bound_sort_t *s = arg;

    if (s->compare != NULL)
        return s->compare(a->data, a->len, b->data, b->len, s->arg);
    return sp_key_bytes_compare(a->data, a->len, b->data, b->len);
}

sp_status_t sp__range_bounds(const void *samples, size_t len, uint32_t partitions,
                             sp_key_compare_fn_t compare, void *compare_arg, sp_key_t **keys_p,
                             void **storage_p)
{
    const unsigned char *p = samples;
    sp_bound_sort_t s = {compare, compare_arg};
    sp_key_t *all = NULL, *bounds = NULL;
    unsigned char *storage = NULL;
    size_t n = 0, cap = 0, off = 0, bytes = 0;
    sp_status_t st = SP_OK;

    if (partitions < 2)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "range bounds for %u partition(s)", partitions);
    while (off < len) {
        uint32_t kl;
        if (len - off < 4)
            return SP_RAISE(SP_ERR_BAD_FORMAT, "sample list truncated at byte %zu of %zu", off,
                            len);
        memcpy(&kl, p + off, 4);
        if (kl > len - off - 4) {
            sp__free(all);
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "sample key of %u bytes at byte %zu runs past the %zu-byte list", kl,
                            off, len);
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            sp_key_t *a = sp__realloc(all, cap * sizeof(*all));
            if (a == NULL) {
                sp__free(all);
                return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu sampled keys", cap);
            }
            all = a;
        }
        all[n++] = (sp_key_t){p + off + 4, kl};
        off += 4 + (size_t)kl;
    }
    if (n == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "no keys sampled: the input is empty, so there is nothing to partition");
    qsort_r(all, n, sizeof(*all), sp_bound_cmp, &s);
    bounds = sp__calloc(partitions - 1, sizeof(*bounds));
    if (bounds == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u range bounds", partitions - 1);
        goto out;
    }
    for (uint32_t i = 1; i < partitions; i++) {
        size_t at = (size_t)(((uint64_t)i * n) / partitions);
        bounds[i - 1] = all[at < n ? at : n - 1];
        bytes += bounds[i - 1].len;
    }
    storage = sp__malloc(bytes + 1);
    if (storage == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for range bounds");
        goto out;
    }
    bytes = 0;
    for (uint32_t i = 0; i + 1 < partitions; i++) {
        memcpy(storage + bytes, bounds[i].data, bounds[i].len);
        bounds[i].data = storage + bytes;
        bytes += bounds[i].len;
    }
    *keys_p = bounds;
    *storage_p = storage;
    bounds = NULL;
out:
    sp__free(bounds);
    sp__free(all);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Serial runner                                                             */
/* ------------------------------------------------------------------------ */

static void sp_result_add(sp_job_result_t *r, const sp__task_metrics_t *m)
{
    for (unsigned i = 0; i < SP_JOB_COUNTERS; i++)
        r->counters[i] += m->counters[i];
}

sp_status_t sp__job_run_serial(const sp_job_t *job, const sp_job_params_t *params,
                               sp_memory_manager_t *mm, sp_job_result_t *result_p)
{
    static atomic_uint_fast64_t shuffle_ids = 1;
    static atomic_uint run_seq;
    sp_job_plan_t plan = {0};
    sp_job_result_t result = {0};
    sp_map_status_t **statuses = NULL;
    sp_key_t *bounds = NULL;
    void *bound_storage = NULL;
    sp__task_env_t env = {0};
    sp__output_t *output = NULL;
    char run_id[64];
    sp_status_t st;

    if (sp__job_is_graph(job))
        return sp__graph_run_local(job, params, mm, result_p, NULL, NULL);
    /* Like the driver's app id: unique among runs, so each owns OUTPUT/_temporary/<run id>. */
    snprintf(run_id, sizeof(run_id), "serial-%ld-%u-%llu", (long)getpid(),
             atomic_fetch_add(&run_seq, 1), (unsigned long long)time(NULL));
    if ((st = job->plan(params, &plan)) != SP_OK)
        return SP_RAISE(st, "job %s: %s", job->name, sp_last_error());
    if ((st = sp__job_plan_check(job, &plan)) != SP_OK)
        goto out_plan;
    env = (sp__task_env_t){.job = job,
                           .params = params,
                           .plan = &plan,
                           .mm = mm,
                           .conf = params->conf,
                           .shuffle_id = atomic_fetch_add(&shuffle_ids, 1),
                           .run_id = run_id};
    if (params->output != NULL &&
        (st = sp__output_prepare(params->output, run_id, &output)) != SP_OK)
        goto out_plan;
    if (plan.partitioning == SP_JOB_RANGE && plan.partitions > 1) {
        unsigned char *all = NULL;
        size_t all_len = 0;
        for (uint32_t m = 0; m < plan.maps && st == SP_OK; m++) {
            void *keys;
            size_t len;
            if ((st = sp__task_run_sample(&env, m, plan.sample_per_map, &keys, &len)) != SP_OK)
                break;
            unsigned char *grown = sp__realloc(all, all_len + len + 1);
            if (grown == NULL) {
                st = SP_RAISE(SP_ERR_NOMEM, "no memory for the sample");
            } else {
                all = grown;
                memcpy(all + all_len, keys, len);
                all_len += len;
            }
            sp__free(keys);
        }
        if (st == SP_OK)
            st = sp__range_bounds(all, all_len, plan.partitions, job->compare, job->compare_arg,
                                  &bounds, &bound_storage);
        sp__free(all);
        if (st != SP_OK)
            goto out_output;
    }
    statuses = sp__calloc(plan.maps, sizeof(*statuses));
    if (statuses == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u map statuses", plan.maps);
        goto out_output;
    }
    for (uint32_t m = 0; m < plan.maps; m++) {
        sp__task_metrics_t mt;
        if ((st = sp__task_run_map(&env, m, 0, bounds, &statuses[m], &mt)) != SP_OK)
            goto out_statuses;
        result.map_records += mt.records_in;
        sp_result_add(&result, &mt);
    }
    for (uint32_t r = 0; r < plan.partitions; r++) {
        sp__task_metrics_t mt;
        if ((st = sp__task_run_reduce(&env, r, 0, (const sp_map_status_t *const *)statuses,
                                      plan.maps, NULL, NULL, &mt)) != SP_OK)
            goto out_statuses;
        result.reduce_records += mt.records_in;
        result.output_bytes += mt.bytes_out;
        sp_result_add(&result, &mt);
    }
    result.partitions = plan.partitions;
    if (output != NULL && (st = sp__output_publish(output, plan.partitions)) != SP_OK)
        goto out_statuses;
    if (job->finish != NULL && (st = job->finish(params, &result, stderr)) != SP_OK) {
        st = SP_RAISE(st, "job %s: %s", job->name, sp_last_error());
        goto out_statuses;
    }
    if (output != NULL && (st = sp__output_succeed(output)) != SP_OK)
        goto out_statuses;
    if (result_p != NULL)
        *result_p = result;
out_statuses:
    for (uint32_t m = 0; statuses != NULL && m < plan.maps; m++)
        sp_map_status_destroy(statuses[m]);
    sp__free(statuses);
out_output:
    if (st != SP_OK)
        sp__output_abort(output);
    sp__output_release(output);
    sp__free(bounds);
    sp__free(bound_storage);
out_plan:
    sp__job_plan_clear(&plan);
    return st;
}
