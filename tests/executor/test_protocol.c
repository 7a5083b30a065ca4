/*
 * The control protocol's payloads (executor/protocol.c). Every message type
 * round-trips: encode then decode gives equal fields, for a corpus that
 * holds a JOB with arguments, configuration pairs and splits with and
 * without paths, RESULTs with and without a payload, BOUNDS with empty
 * keys, strings at their length limits. Every prefix of each encoded
 * message, and each with one byte more, is refused with SP_ERR_BAD_FORMAT
 * and leaves the output alone. A JOB or BOUNDS whose counts claim more
 * entries than its bytes can hold is refused before anything is allocated
 * for them (counted with the allocation fault hook). HEARTBEAT's fields lie
 * where docs/FORMATS.md puts them, and one of the previous version (without
 * peak anon) is refused. App ids with '/' or
 * "..", plans, task kinds, slots and statuses out of range are refused.
 * Every allocation of each encoder and decoder fails once (SP_ERR_NOMEM,
 * nothing leaked). Last, a small fuzzer: 10,000 mutations of the corpus
 * (bit flips, random bytes, lengths and counts overwritten with edge
 * values, cuts, inserted and deleted bytes), each decoded as its own type
 * and sometimes as another; every one is refused with SP_ERR_BAD_FORMAT or
 * decodes to fields that survive another encode/decode unchanged. CI runs
 * this under ASan, where each buffer is an allocation of its exact size.
 */
/* LABELS: unit */
#include "common_int.h"
#include "control/ctl.h"
#include "executor/protocol.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Any message                                                               */
/* ------------------------------------------------------------------------ */

typedef enum kind {
    K_REGISTER,
    K_JOB,
    K_READY,
    K_TASK,
    K_RESULT,
    K_HEARTBEAT,
    K_MAP_LOST,
    K_BOUNDS,
    K_FATAL,
    K_CANCEL,
    K_COUNT
} kind_t;

static const char *const kind_names[K_COUNT] = {"REGISTER", "JOB",       "READY",    "TASK",
                                                "RESULT",   "HEARTBEAT", "MAP_LOST", "BOUNDS",
                                                "FATAL",    "CANCEL"};

typedef struct bounds {
    uint32_t shuffle;
    sp_key_t *keys;
    uint32_t count;
} bounds_t;

typedef union msg {
    sp__msg_register_t reg;
    sp__msg_job_t job;
    sp__msg_ready_t ready;
    sp__msg_task_t task;
    sp__msg_result_t result;
    sp__msg_heartbeat_t hb;
    sp__msg_map_lost_t lost;
    bounds_t bounds;
    sp__msg_fatal_t fatal;
    sp__msg_cancel_t cancel;
} msg_t;

static sp_status_t msg_encode(kind_t k, const msg_t *m, void **buf_p, size_t *len_p)
{
    switch (k) {
    case K_REGISTER: return sp__msg_register_encode(&m->reg, buf_p, len_p);
    case K_JOB: return sp__msg_job_encode(&m->job, buf_p, len_p);
    case K_READY: return sp__msg_ready_encode(&m->ready, buf_p, len_p);
    case K_TASK: return sp__msg_task_encode(&m->task, buf_p, len_p);
    case K_RESULT: return sp__msg_result_encode(&m->result, buf_p, len_p);
    case K_HEARTBEAT: return sp__msg_heartbeat_encode(&m->hb, buf_p, len_p);
    case K_MAP_LOST: return sp__msg_map_lost_encode(&m->lost, buf_p, len_p);
    case K_BOUNDS:
        return sp__msg_bounds_encode(m->bounds.shuffle, m->bounds.keys, m->bounds.count, buf_p,
                                     len_p);
    case K_FATAL: return sp__msg_fatal_encode(&m->fatal, buf_p, len_p);
    case K_CANCEL: return sp__msg_cancel_encode(&m->cancel, buf_p, len_p);
    case K_COUNT: break;
    }
    return SP_ERR_INTERNAL;
}

static sp_status_t msg_decode(kind_t k, const void *buf, size_t len, msg_t *m)
{
    switch (k) {
    case K_REGISTER: return sp__msg_register_decode(buf, len, &m->reg);
    case K_JOB: return sp__msg_job_decode(buf, len, &m->job);
    case K_READY: return sp__msg_ready_decode(buf, len, &m->ready);
    case K_TASK: return sp__msg_task_decode(buf, len, &m->task);
    case K_RESULT: return sp__msg_result_decode(buf, len, &m->result);
    case K_HEARTBEAT: return sp__msg_heartbeat_decode(buf, len, &m->hb);
    case K_MAP_LOST: return sp__msg_map_lost_decode(buf, len, &m->lost);
    case K_BOUNDS:
        return sp__msg_bounds_decode(buf, len, &m->bounds.shuffle, &m->bounds.keys,
                                     &m->bounds.count);
    case K_FATAL: return sp__msg_fatal_decode(buf, len, &m->fatal);
    case K_CANCEL: return sp__msg_cancel_decode(buf, len, &m->cancel);
    case K_COUNT: break;
    }
    return SP_ERR_INTERNAL;
}

/* Frees what a successful decode allocated. */
static void msg_free(kind_t k, msg_t *m)
{
    if (k == K_JOB)
        sp__msg_job_clear(&m->job);
    else if (k == K_BOUNDS)
        free(m->bounds.keys);
}

static bool str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool job_equal(const sp__msg_job_t *a, const sp__msg_job_t *b)
{
    const sp_job_plan_t *p = &a->plan, *q = &b->plan;

    if (a->executor_id != b->executor_id || a->shuffle_id != b->shuffle_id ||
        !str_eq(a->app_id, b->app_id) || !str_eq(a->job_name, b->job_name) ||
        !str_eq(a->input, b->input) || !str_eq(a->output, b->output) || a->size != b->size ||
        a->partitions != b->partitions || a->executors != b->executors || a->slots != b->slots ||
        a->nargs != b->nargs || a->nconf != b->nconf)
        return false;
    for (uint32_t i = 0; i < a->nargs; i++)
        if (!str_eq(a->args[i], b->args[i]))
            return false;
    for (uint32_t i = 0; i < a->nconf; i++)
        if (!str_eq(a->conf_keys[i], b->conf_keys[i]) ||
            !str_eq(a->conf_values[i], b->conf_values[i]))
            return false;
    if (p->maps != q->maps || p->partitions != q->partitions ||
        p->partitioning != q->partitioning || p->key_ordering != q->key_ordering ||
        p->order != q->order || p->sample_per_map != q->sample_per_map)
        return false;
    for (uint32_t i = 0; i < p->maps; i++)
        if (!str_eq(p->splits[i].path, q->splits[i].path) ||
            p->splits[i].offset != q->splits[i].offset ||
            p->splits[i].length != q->splits[i].length)
            return false;
    return true;
}

static bool result_equal(const sp__msg_result_t *a, const sp__msg_result_t *b)
{
    return a->task_id == b->task_id && a->kind == b->kind && a->index == b->index &&
           a->attempt == b->attempt && a->status == b->status &&
           strcmp(a->message, b->message) == 0 && a->failed_map == b->failed_map &&
           memcmp(&a->metrics, &b->metrics, sizeof(a->metrics)) == 0 && a->cpu_ns == b->cpu_ns &&
           a->payload_len == b->payload_len &&
           (a->payload_len == 0 || memcmp(a->payload, b->payload, a->payload_len) == 0) &&
           a->stage == b->stage && a->shuffle == b->shuffle && a->ncached == b->ncached &&
           memcmp(a->cached, b->cached, a->ncached * sizeof(a->cached[0])) == 0;
}

static bool bounds_equal(const bounds_t *a, const bounds_t *b)
{
    if (a->count != b->count || a->shuffle != b->shuffle)
        return false;
    for (uint32_t i = 0; i < a->count; i++)
        if (a->keys[i].len != b->keys[i].len ||
            (a->keys[i].len > 0 && memcmp(a->keys[i].data, b->keys[i].data, a->keys[i].len) != 0))
            return false;
    return true;
}

static bool msg_equal(kind_t k, const msg_t *a, const msg_t *b)
{
    switch (k) {
    case K_REGISTER:
        return strcmp(a->reg.host, b->reg.host) == 0 && a->reg.pid == b->reg.pid &&
               strcmp(a->reg.name, b->reg.name) == 0;
    case K_JOB: return job_equal(&a->job, &b->job);
    case K_READY:
        return strcmp(a->ready.address, b->ready.address) == 0 &&
               a->ready.slots == b->ready.slots && a->ready.memory == b->ready.memory &&
               a->ready.numa_node == b->ready.numa_node &&
               strcmp(a->ready.cpuset, b->ready.cpuset) == 0;
    case K_TASK:
        return a->task.task_id == b->task.task_id && a->task.kind == b->task.kind &&
               a->task.index == b->task.index && a->task.attempt == b->task.attempt &&
               a->task.sample_count == b->task.sample_count && a->task.stage == b->task.stage;
    case K_RESULT: return result_equal(&a->result, &b->result);
    case K_HEARTBEAT:
        return a->hb.execution_used == b->hb.execution_used && a->hb.peak_rss == b->hb.peak_rss &&
               a->hb.peak_anon == b->hb.peak_anon && a->hb.running == b->hb.running &&
               a->hb.cpu_ns == b->hb.cpu_ns;
    case K_MAP_LOST:
        return a->lost.map_id == b->lost.map_id && a->lost.executor_id == b->lost.executor_id &&
               a->lost.shuffle_id == b->lost.shuffle_id;
    case K_BOUNDS: return bounds_equal(&a->bounds, &b->bounds);
    case K_FATAL: return a->fatal.signal == b->fatal.signal && a->fatal.task_id == b->fatal.task_id;
    case K_CANCEL: return a->cancel.task_id == b->cancel.task_id;
    case K_COUNT: break;
    }
    return false;
}

/* A copy of len bytes in an allocation of exactly that size (ASan sees overreads). */
static unsigned char *exact_copy(const void *data, size_t len)
{
    unsigned char *p = malloc(len > 0 ? len : 1);

    assert_non_null(p);
    if (len > 0)
        memcpy(p, data, len);
    return p;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool contains(const char *text, const char *phrase)
{
    if (strstr(text, phrase) != NULL)
        return true;
    fprintf(stderr, "expected \"%s\" in \"%s\"\n", phrase, text);
    return false;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------------------ */
/* The corpus                                                                */
/* ------------------------------------------------------------------------ */

typedef struct sample {
    const char *name;
    kind_t kind;
    msg_t m;
} sample_t;

#define MAX_SAMPLES 32
#define MANY_SPLITS 40

static sample_t corpus[MAX_SAMPLES];
static size_t ncorpus;

static char *job_args[] = {(char *)"a=1", (char *)"", (char *)"key=value with spaces"};
static char *conf_keys[] = {(char *)"executor.memory", (char *)"k", (char *)"task.retries"};
static char *conf_values[] = {(char *)"4g", (char *)"", (char *)"3"};
static sp_job_split_t splits3[] = {
    {(char *)"/data/in/part-0", 0, 100}, {NULL, 7, 9}, {(char *)"", UINT64_MAX, 0}};
static sp_job_split_t split1[] = {{NULL, 0, 1000000}};
static sp_job_split_t many_splits[MANY_SPLITS];
static char many_paths[MANY_SPLITS][32];
static char long_host[256], long_name[128], long_address[512], long_cpuset[256], long_message[1024];
static char long_app[129], long_arg[4097];
static char *many_args[] = {long_arg, (char *)"x"};
static unsigned char result_payload[700];
static unsigned char key_bytes[100];
static sp_key_t keys5[5];

static sample_t *add(const char *name, kind_t kind)
{
    sample_t *s;

    assert_true(ncorpus < MAX_SAMPLES);
    s = &corpus[ncorpus++];
    memset(s, 0, sizeof(*s));
    s->name = name;
    s->kind = kind;
    return s;
}

static void metrics_fill(sp__task_metrics_t *t, uint64_t seed)
{
    uint64_t v[sizeof(*t) / sizeof(uint64_t)];

    for (size_t i = 0; i < SP_ARRAY_SIZE(v); i++)
        v[i] = mix(seed + i);
    memcpy(t, v, sizeof(*t));
}

/* A full JOB: arguments, conf pairs, splits with and without paths. */
static void job_full(sp__msg_job_t *j)
{
    j->executor_id = 3;
    j->shuffle_id = 0x1122334455667788ull;
    j->app_id = (char *)"app-20240101-0001";
    j->job_name = (char *)"terasort";
    j->input = (char *)"/data/in";
    j->output = NULL;
    j->size = 1ull << 40;
    j->partitions = 16;
    j->executors = 4;
    j->slots = 32;
    j->args = job_args;
    j->nargs = 3;
    j->conf_keys = conf_keys;
    j->conf_values = conf_values;
    j->nconf = 3;
    j->plan.maps = 3;
    j->plan.splits = splits3;
    j->plan.partitions = 16;
    j->plan.partitioning = SP_JOB_RANGE;
    j->plan.key_ordering = true;
    j->plan.order = SP_READ_MERGE;
    j->plan.sample_per_map = 1000;
}

static int corpus_build(void **state)
{
    sample_t *s;

    (void)state;
    ncorpus = 0;
    memset(long_host, 'h', sizeof(long_host) - 1);
    memset(long_name, 'n', sizeof(long_name) - 1);
    memset(long_address, 'a', sizeof(long_address) - 1);
    memset(long_cpuset, 'c', sizeof(long_cpuset) - 1);
    memset(long_message, 'm', sizeof(long_message) - 1);
    memset(long_app, 'p', sizeof(long_app) - 1);
    memset(long_arg, 'g', sizeof(long_arg) - 1);
    for (size_t i = 0; i < sizeof(result_payload); i++)
        result_payload[i] = (unsigned char)mix(i);
    for (size_t i = 0; i < sizeof(key_bytes); i++)
        key_bytes[i] = (unsigned char)(i * 7);
    for (int i = 0; i < MANY_SPLITS; i++) {
        snprintf(many_paths[i], sizeof(many_paths[i]), "/scratch/input/%d", i);
        many_splits[i].path = i % 3 == 0 ? NULL : many_paths[i];
        many_splits[i].offset = (uint64_t)i << 30;
        many_splits[i].length = 1u << 30;
    }

    s = add("register", K_REGISTER);
    snprintf(s->m.reg.host, sizeof(s->m.reg.host), "node-17.cluster.example");
    s->m.reg.pid = 4242;
    snprintf(s->m.reg.name, sizeof(s->m.reg.name), "spate-executor-3-pod");
    s = add("register, longest host and name", K_REGISTER);
    memcpy(s->m.reg.host, long_host, sizeof(long_host));
    memcpy(s->m.reg.name, long_name, sizeof(long_name));
    s->m.reg.pid = UINT32_MAX;
    s = add("register, empty host and name", K_REGISTER);

    s = add("job, full", K_JOB);
    job_full(&s->m.job);
    s = add("job, minimal", K_JOB);
    s->m.job.app_id = (char *)"a";
    s->m.job.job_name = (char *)"/opt/jobs/libmyjob.so";
    s->m.job.output = (char *)"/out";
    s->m.job.plan.maps = 1;
    s->m.job.plan.splits = split1;
    s->m.job.plan.partitions = 1;
    s->m.job.plan.partitioning = SP_JOB_HASH;
    s->m.job.plan.order = SP_READ_AGGREGATE;
    s = add("job, many splits, longest strings", K_JOB);
    job_full(&s->m.job);
    s->m.job.app_id = long_app;
    s->m.job.input = (char *)"";
    s->m.job.output = long_arg;
    s->m.job.args = many_args;
    s->m.job.nargs = 2;
    s->m.job.nconf = 0;
    s->m.job.plan.maps = MANY_SPLITS;
    s->m.job.plan.splits = many_splits;
    s->m.job.plan.partitioning = SP_JOB_GIVEN;
    s->m.job.plan.key_ordering = false;
    s->m.job.plan.order = SP_READ_SORT;

    s = add("ready", K_READY);
    snprintf(s->m.ready.address, sizeof(s->m.ready.address), "0a1b2c3d");
    s->m.ready.slots = 8;
    s->m.ready.memory = 16ull << 30;
    s->m.ready.numa_node = 1;
    snprintf(s->m.ready.cpuset, sizeof(s->m.ready.cpuset), "0-3,8-11");
    s = add("ready, longest strings, most slots", K_READY);
    memcpy(s->m.ready.address, long_address, sizeof(long_address));
    memcpy(s->m.ready.cpuset, long_cpuset, sizeof(long_cpuset));
    s->m.ready.slots = 65536;
    s->m.ready.memory = UINT64_MAX;
    s->m.ready.numa_node = UINT32_MAX;
    s = add("ready, no address", K_READY);
    s->m.ready.slots = 1;

    for (uint8_t kind = SP_TASK_KIND_SAMPLE; kind <= SP_TASK_KIND_REDUCE; kind++) {
        s = add("task", K_TASK);
        s->m.task.task_id = 0xfedcba9876543210ull + kind;
        s->m.task.kind = kind;
        s->m.task.index = 100u + kind;
        s->m.task.attempt = kind;
        s->m.task.sample_count = kind == SP_TASK_KIND_SAMPLE ? 1000 : 0;
        s->m.task.stage = kind * 0x01010101u;
    }

    s = add("result, map with a payload", K_RESULT);
    s->m.result.task_id = 77;
    s->m.result.kind = SP_TASK_KIND_MAP;
    s->m.result.index = 5;
    s->m.result.attempt = 2;
    s->m.result.status = SP_OK;
    s->m.result.failed_map = UINT64_MAX;
    metrics_fill(&s->m.result.metrics, 1);
    s->m.result.cpu_ns = 0xfedcba9876543210ull;
    s->m.result.payload = result_payload;
    s->m.result.payload_len = sizeof(result_payload);
    s->m.result.stage = 3;
    s->m.result.shuffle = UINT32_MAX;
    s->m.result.ncached = 2;
    s->m.result.cached[0] = 7;
    s->m.result.cached[1] = UINT32_MAX;
    s = add("result, fetch failure", K_RESULT);
    s->m.result.shuffle = 2;
    s->m.result.task_id = 78;
    s->m.result.kind = SP_TASK_KIND_REDUCE;
    s->m.result.status = SP_ERR_FETCH_FAILED;
    snprintf(s->m.result.message, sizeof(s->m.result.message),
             "fetching block (map 12, partition 3) from executor 2: peer lost");
    s->m.result.failed_map = 12;
    metrics_fill(&s->m.result.metrics, 2);
    s = add("result, longest message", K_RESULT);
    s->m.result.kind = SP_TASK_KIND_SAMPLE;
    s->m.result.status = SP_ERR_INTERNAL;
    memcpy(s->m.result.message, long_message, sizeof(long_message));
    s->m.result.payload = key_bytes;
    s->m.result.payload_len = 1;

    s = add("heartbeat", K_HEARTBEAT);
    s->m.hb.execution_used = 123456789;
    s->m.hb.peak_rss = UINT64_MAX - 1;
    s->m.hb.peak_anon = 0x0123456789abcdefull;
    s->m.hb.running = 7;
    s->m.hb.cpu_ns = UINT64_MAX;
    s = add("heartbeat, zero", K_HEARTBEAT);

    s = add("map lost", K_MAP_LOST);
    s->m.lost.shuffle_id = 0x123456789ull;
    s->m.lost.map_id = 999;
    s->m.lost.executor_id = 4;

    s = add("fatal", K_FATAL);
    s->m.fatal.signal = 11;
    s->m.fatal.task_id = 0x8000000000000001ull;

    s = add("cancel", K_CANCEL);
    s->m.cancel.task_id = 0xfedcba9876543210ull;

    s = add("bounds, none", K_BOUNDS);
    keys5[0] = (sp_key_t){key_bytes, 10};
    keys5[1] = (sp_key_t){key_bytes, 0};
    keys5[2] = (sp_key_t){key_bytes + 1, 1};
    keys5[3] = (sp_key_t){key_bytes, sizeof(key_bytes)};
    keys5[4] = (sp_key_t){key_bytes + 50, 3};
    s = add("bounds, five", K_BOUNDS);
    s->m.bounds.shuffle = 9;
    s->m.bounds.keys = keys5;
    s->m.bounds.count = 5;
    return 0;
}

static void encode_sample(const sample_t *s, unsigned char **buf_p, size_t *len_p)
{
    void *buf = NULL;
    size_t len = 0;

    assert_int_equal(msg_encode(s->kind, &s->m, &buf, &len), SP_OK);
    assert_non_null(buf);
    *buf_p = buf;
    *len_p = len;
}

/* ------------------------------------------------------------------------ */
/* Round trips, truncations, trailing bytes                                  */
/* ------------------------------------------------------------------------ */

static void test_protocol_types_follow_the_channel(void **state)
{
    (void)state;
    assert_int_equal(SP_MSG_REGISTER, SP__CTL_TYPE_FIRST);
    assert_int_equal(SP_MSG_BYE, SP_MSG_REGISTER + 10);
    assert_int_equal(SP_TASK_KIND_REDUCE, 2);
}

static void test_protocol_every_type_round_trips(void **state)
{
    bool seen[K_COUNT] = {false};

    (void)state;
    for (size_t i = 0; i < ncorpus; i++) {
        const sample_t *s = &corpus[i];
        unsigned char *buf = NULL, *copy;
        size_t len = 0;
        msg_t out;
        sp_status_t st;

        encode_sample(s, &buf, &len);
        copy = exact_copy(buf, len);
        free(buf);
        memset(&out, 0, sizeof(out));
        st = msg_decode(s->kind, copy, len, &out);
        if (st != SP_OK)
            fprintf(stderr, "%s: %s\n", s->name, sp_last_error());
        assert_int_equal(st, SP_OK);
        if (!msg_equal(s->kind, &s->m, &out))
            fprintf(stderr, "%s: decoded fields differ\n", s->name);
        assert_true(msg_equal(s->kind, &s->m, &out));
        /* Payloads and keys point into the message, not into copies. */
        if (s->kind == K_RESULT && out.result.payload_len > 0)
            assert_true((const unsigned char *)out.result.payload >= copy &&
                        (const unsigned char *)out.result.payload < copy + len);
        if (s->kind == K_BOUNDS && out.bounds.count > 0)
            assert_true((const unsigned char *)out.bounds.keys[0].data >= copy &&
                        (const unsigned char *)out.bounds.keys[0].data < copy + len);
        msg_free(s->kind, &out);
        free(copy);
        seen[s->kind] = true;
    }
    for (int k = 0; k < K_COUNT; k++)
        assert_true(seen[k]);
}

static void test_protocol_refuses_truncations_and_trailing_bytes(void **state)
{
    (void)state;
    for (size_t i = 0; i < ncorpus; i++) {
        const sample_t *s = &corpus[i];
        unsigned char *buf = NULL, *copy;
        size_t len = 0;
        msg_t out, untouched;

        encode_sample(s, &buf, &len);
        memset(&untouched, 0x5a, sizeof(untouched));
        for (size_t cut = 0; cut < len; cut++) {
            sp_status_t st;

            copy = exact_copy(buf, cut);
            memcpy(&out, &untouched, sizeof(out));
            st = msg_decode(s->kind, cut > 0 ? copy : NULL, cut, &out);
            if (st != SP_ERR_BAD_FORMAT)
                fprintf(stderr, "%s cut to %zu of %zu bytes: %s\n", s->name, cut, len,
                        sp_last_error());
            assert_int_equal(st, SP_ERR_BAD_FORMAT);
            assert_memory_equal(&out, &untouched, sizeof(out));
            free(copy);
        }
        for (int extra = 0; extra < 2; extra++) {
            copy = malloc(len + 1);
            assert_non_null(copy);
            memcpy(copy, buf, len);
            copy[len] = extra == 0 ? 0 : 0xff;
            memcpy(&out, &untouched, sizeof(out));
            assert_int_equal(msg_decode(s->kind, copy, len + 1, &out), SP_ERR_BAD_FORMAT);
            assert_true(contains(sp_last_error(), "too long (1 bytes left over"));
            assert_true(contains(sp_last_error(), kind_names[s->kind]));
            assert_memory_equal(&out, &untouched, sizeof(out));
            free(copy);
        }
        free(buf);
    }
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32);
}

/*
 * HEARTBEAT as docs/FORMATS.md lays it out: execution u64, peak RSS u64,
 * peak anon u64, running u32, CPU time u64, peak storage u64. The 20 bytes
 * of version 1 (no peak anon), the 28 of versions 2 and 3 (no CPU time) and
 * the 36 of version 4 (no peak storage) are refused, not read as something
 * else.
 */
static void test_protocol_heartbeat_layout(void **state)
{
    const sp__msg_heartbeat_t hb = {.execution_used = 0x1111111111111111ull,
                                    .peak_rss = 0x2222222222222222ull,
                                    .peak_anon = 0x3333333333333333ull,
                                    .running = 0x44444444u,
                                    .cpu_ns = 0x5555555555555555ull,
                                    .peak_storage = 0x6666666666666666ull};
    unsigned char *buf = NULL, *old;
    size_t len = 0;
    sp__msg_heartbeat_t out;

    (void)state;
    assert_int_equal(sp__msg_heartbeat_encode(&hb, (void **)&buf, &len), SP_OK);
    assert_int_equal(len, 8 + 8 + 8 + 4 + 8 + 8);
    assert_true(get64(buf) == hb.execution_used);
    assert_true(get64(buf + 8) == hb.peak_rss);
    assert_true(get64(buf + 16) == hb.peak_anon);
    assert_int_equal(get32(buf + 24), hb.running);
    assert_true(get64(buf + 28) == hb.cpu_ns);
    assert_true(get64(buf + 36) == hb.peak_storage);
    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(sp__msg_heartbeat_decode(buf, len, &out), SP_OK);
    assert_true(out.peak_storage == hb.peak_storage && out.cpu_ns == hb.cpu_ns);
    assert_int_equal(sp__msg_heartbeat_decode(buf, 36, &out), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "HEARTBEAT peak storage"));
    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(sp__msg_heartbeat_decode(buf, 28, &out), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "HEARTBEAT cpu"));

    old = malloc(20);
    assert_non_null(old);
    memcpy(old, buf, 16);
    memcpy(old + 16, buf + 24, 4);
    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(sp__msg_heartbeat_decode(old, 20, &out), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "HEARTBEAT"));
    free(old);
    free(buf);
}

/* ------------------------------------------------------------------------ */
/* Counts, names and ranges                                                  */
/* ------------------------------------------------------------------------ */

static size_t str_size(const char *s) { return 4 + strlen(s); }

static size_t opt_size(const char *s) { return 1 + 4 + (s != NULL ? strlen(s) : 0); }

/* Where a JOB's argument, conf and map counts lie in its encoding (docs/FORMATS.md). */
static void job_offsets(const sp__msg_job_t *j, size_t *nargs_p, size_t *nconf_p, size_t *maps_p)
{
    size_t off = 4 + 8 + str_size(j->app_id) + str_size(j->job_name) + opt_size(j->input) +
                 opt_size(j->output) + 8 + 4 + 4 + 4;

    *nargs_p = off;
    off += 4;
    for (uint32_t i = 0; i < j->nargs; i++)
        off += str_size(j->args[i]);
    *nconf_p = off;
    off += 4;
    for (uint32_t i = 0; i < j->nconf; i++)
        off += str_size(j->conf_keys[i]) + str_size(j->conf_values[i]);
    *maps_p = off;
}

/*
 * The allocations a decode of (buf, len) makes: the fault hook fails the
 * n-th for n = 1, 2, ... until one decode runs without the fault firing.
 * Each failed decode must be SP_ERR_NOMEM (and leak nothing); the last
 * returns its status in *st_p.
 */
static unsigned decode_allocations(kind_t kind, const void *buf, size_t len, sp_status_t *st_p)
{
    for (unsigned n = 1;; n++) {
        uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);
        msg_t out;
        sp_status_t st;

        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = msg_decode(kind, buf, len, &out);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (sp__fault_fired(SP_FAULT_ALLOC) == fired) {
            if (st == SP_OK)
                msg_free(kind, &out);
            *st_p = st;
            return n - 1;
        }
        assert_int_equal(st, SP_ERR_NOMEM);
        assert_true(n < 10000);
    }
}

static void test_protocol_counts_beyond_the_bytes_are_refused_before_allocating(void **state)
{
    static const uint32_t claims[] = {UINT32_MAX, 0x40000000u, 1000000u};
    sp__msg_job_t job;
    unsigned char *buf = NULL;
    size_t len = 0, at[3];
    /* Strings read before each count: app id, name, input, output; then the arrays. */
    const unsigned before[3] = {4, 4 + 1 + 3, 4 + 1 + 3 + 2 + 6};

    (void)state;
    memset(&job, 0, sizeof(job));
    job_full(&job);
    assert_int_equal(sp__msg_job_encode(&job, (void **)&buf, &len), SP_OK);
    job_offsets(&job, &at[0], &at[1], &at[2]);
    assert_int_equal(get32(buf + at[0]), job.nargs);
    assert_int_equal(get32(buf + at[1]), job.nconf);
    assert_int_equal(get32(buf + at[2]), job.plan.maps);
    for (int f = 0; f < 3; f++) {
        for (size_t c = 0; c < SP_ARRAY_SIZE(claims); c++) {
            unsigned char *copy = exact_copy(buf, len);
            sp_status_t st = SP_OK;
            unsigned allocs;

            put32(copy + at[f], claims[c]);
            allocs = decode_allocations(K_JOB, copy, len, &st);
            assert_int_equal(st, SP_ERR_BAD_FORMAT);
            assert_true(contains(sp_last_error(), "does not fit"));
            /* Nothing was allocated for the entries the count claims. */
            assert_int_equal(allocs, before[f]);
            free(copy);
        }
    }
    /* The count as written costs exactly one allocation more per array. */
    {
        sp_status_t st = SP_ERR_INTERNAL;

        assert_true(decode_allocations(K_JOB, buf, len, &st) > before[2]);
        assert_int_equal(st, SP_OK);
    }
    free(buf);

    /* BOUNDS. */
    {
        sp_key_t key = {"abc", 3};
        sp_status_t st = SP_OK;

        assert_int_equal(sp__msg_bounds_encode(0, &key, 1, (void **)&buf, &len), SP_OK);
        for (size_t c = 0; c < SP_ARRAY_SIZE(claims); c++) {
            unsigned char *copy = exact_copy(buf, len);

            put32(copy + 4, claims[c]);
            assert_int_equal(decode_allocations(K_BOUNDS, copy, len, &st), 0);
            assert_int_equal(st, SP_ERR_BAD_FORMAT);
            assert_true(contains(sp_last_error(), "BOUNDS: count"));
            free(copy);
        }
        free(buf);
    }
}

/* Encodes m as it is (encoders do not judge) and expects the decoder to refuse it. */
static void expect_refused(kind_t kind, const msg_t *m, const char *phrase)
{
    unsigned char *buf = NULL, *copy;
    size_t len = 0;
    msg_t out;

    assert_int_equal(msg_encode(kind, m, (void **)&buf, &len), SP_OK);
    copy = exact_copy(buf, len);
    free(buf);
    memset(&out, 0x33, sizeof(out));
    assert_int_equal(msg_decode(kind, copy, len, &out), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), phrase));
    free(copy);
}

static void test_protocol_refuses_bad_names_and_ranges(void **state)
{
    static const char *bad_ids[] = {"a/b", "/abs", "..", "x..y", "../etc", "app/", ""};
    char long_id[130];
    msg_t m;

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_ids); i++) {
        memset(&m, 0, sizeof(m));
        job_full(&m.job);
        m.job.app_id = (char *)bad_ids[i];
        expect_refused(K_JOB, &m, "is not a plain name");
    }
    memset(long_id, 'x', 129);
    long_id[129] = '\0';
    m.job.app_id = long_id;
    expect_refused(K_JOB, &m, "JOB app id: too long");
    m.job.app_id = (char *)"ok.name-1_2";
    {
        char over[4098];

        memset(over, 'g', 4097); /* one over the limit of 4096 */
        over[4097] = '\0';
        m.job.args = (char *[]){over};
        m.job.nargs = 1;
        expect_refused(K_JOB, &m, "JOB argument: too long");
    }
    m.job.nargs = 0;

    /* Plans out of range. */
    m.job.plan.maps = 0;
    expect_refused(K_JOB, &m, "JOB plan is invalid");
    m.job.plan.maps = 3;
    m.job.plan.partitions = 0;
    expect_refused(K_JOB, &m, "JOB plan is invalid");
    m.job.plan.partitions = 2;
    m.job.plan.partitioning = (sp_job_partitioning_t)3;
    expect_refused(K_JOB, &m, "JOB plan is invalid");
    m.job.plan.partitioning = SP_JOB_HASH;
    m.job.plan.order = (sp_read_order_t)4;
    expect_refused(K_JOB, &m, "JOB plan is invalid");

    /* Task kinds, slots, statuses. */
    memset(&m, 0, sizeof(m));
    m.task.kind = 3;
    expect_refused(K_TASK, &m, "TASK of unknown kind 3");
    memset(&m, 0, sizeof(m));
    expect_refused(K_READY, &m, "READY offers 0 task slots");
    m.ready.slots = 65537;
    expect_refused(K_READY, &m, "READY offers 65537 task slots");
    memset(&m, 0, sizeof(m));
    m.result.status = 1;
    expect_refused(K_RESULT, &m, "RESULT of kind 0 with status 1");
    m.result.status = SP_OK;
    m.result.kind = 3;
    expect_refused(K_RESULT, &m, "RESULT of kind 3");

    /* A string with a NUL inside, where the encoder would never put one. */
    {
        unsigned char *buf = NULL;
        size_t len = 0;
        sp__msg_register_t reg;

        memset(&reg, 0, sizeof(reg));
        snprintf(reg.host, sizeof(reg.host), "ab");
        assert_int_equal(sp__msg_register_encode(&reg, (void **)&buf, &len), SP_OK);
        buf[5] = '\0';
        assert_int_equal(sp__msg_register_decode(buf, len, &reg), SP_ERR_BAD_FORMAT);
        assert_true(contains(sp_last_error(), "REGISTER host: the string holds a NUL"));
        free(buf);
    }
}

/* Every allocation of every encoder and decoder fails once; nothing leaks. */
static void test_protocol_allocation_failures(void **state)
{
    (void)state;
    for (size_t i = 0; i < ncorpus; i++) {
        const sample_t *s = &corpus[i];
        unsigned char *buf = NULL;
        size_t len = 0;
        sp_status_t st = SP_ERR_INTERNAL;

        for (unsigned n = 1;; n++) {
            uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);
            void *out = NULL;
            size_t olen = 0;

            sp__fault_arm(SP_FAULT_ALLOC, n);
            st = msg_encode(s->kind, &s->m, &out, &olen);
            sp__fault_arm(SP_FAULT_ALLOC, 0);
            if (sp__fault_fired(SP_FAULT_ALLOC) == fired) {
                assert_int_equal(st, SP_OK);
                free(out);
                break;
            }
            assert_int_equal(st, SP_ERR_NOMEM);
            assert_null(out);
        }
        encode_sample(s, &buf, &len);
        (void)decode_allocations(s->kind, buf, len, &st);
        assert_int_equal(st, SP_OK);
        free(buf);
    }
}

/* ------------------------------------------------------------------------ */
/* Mutations                                                                 */
/* ------------------------------------------------------------------------ */

#define MUTATIONS 10000

static uint64_t rng = 20240607;

static uint64_t rnd(void) { return mix(rng++); }

/* A mutant of src (len bytes) in dst (room for len + 8); returns its length. */
static size_t mutate(const unsigned char *src, size_t len, unsigned char *dst)
{
    static const uint32_t edges[] = {
        0, 1, 2, 3, 4, 7, 8, 0x7f, 0x80, 0xff, 4096, 65535, 0x7fffffff, 0x80000000, UINT32_MAX};
    size_t n = len;
    uint64_t r = rnd();

    memcpy(dst, src, len);
    switch (r % 7) {
    case 0: /* flip 1 to 4 bits */
        for (unsigned k = 0; k <= (r >> 3) % 4 && n > 0; k++) {
            uint64_t x = rnd();

            dst[x % n] ^= (unsigned char)(1u << ((x >> 32) % 8));
        }
        break;
    case 1: /* 1 to 3 random bytes */
        for (unsigned k = 0; k <= (r >> 3) % 3 && n > 0; k++) {
            uint64_t x = rnd();

            dst[x % n] = (unsigned char)(x >> 40);
        }
        break;
    case 2: /* an edge value where a length or count may lie */
        if (n >= 4) {
            uint64_t x = rnd();
            uint32_t v = edges[(x >> 32) % SP_ARRAY_SIZE(edges)];

            if ((x >> 20) % 4 == 0)
                v = (uint32_t)(n + (x >> 8) % 8 - 4);
            put32(dst + x % (n - 3), v);
        }
        break;
    case 3: /* cut */ n = len > 0 ? (size_t)(rnd() % len) : 0; break;
    case 4: /* insert a byte */
    {
        size_t at = (size_t)(rnd() % (len + 1));

        memmove(dst + at + 1, dst + at, len - at);
        dst[at] = (unsigned char)rnd();
        n = len + 1;
        break;
    }
    case 5: /* delete a byte */
        if (n > 0) {
            size_t at = (size_t)(rnd() % n);

            memmove(dst + at, dst + at + 1, n - at - 1);
            n--;
        }
        break;
    default: /* append up to 8 bytes of itself */
    {
        size_t k = 1 + (size_t)(rnd() % 8);

        for (size_t j = 0; j < k; j++)
            dst[len + j] = len > 0 ? src[(size_t)rnd() % len] : (unsigned char)0;
        n = len + k;
        break;
    }
    }
    return n;
}

static void test_protocol_random_mutations_never_crash(void **state)
{
    unsigned char *enc[MAX_SAMPLES];
    size_t enc_len[MAX_SAMPLES];
    unsigned accepted = 0, refused = 0;

    (void)state;
    for (size_t i = 0; i < ncorpus; i++)
        encode_sample(&corpus[i], &enc[i], &enc_len[i]);
    for (unsigned it = 0; it < MUTATIONS; it++) {
        size_t i = it % ncorpus, n;
        unsigned char *mutant = malloc(enc_len[i] + 8), *copy;
        kind_t kind = corpus[i].kind;
        msg_t out, again;
        sp_status_t st;

        assert_non_null(mutant);
        n = mutate(enc[i], enc_len[i], mutant);
        copy = exact_copy(mutant, n);
        free(mutant);
        /* One in five is read as another type. */
        if (rnd() % 5 == 0)
            kind = (kind_t)(rnd() % K_COUNT);
        st = msg_decode(kind, copy, n, &out);
        if (st != SP_OK && st != SP_ERR_BAD_FORMAT)
            fprintf(stderr, "mutation %u of %s as %s: %s\n", it, corpus[i].name, kind_names[kind],
                    sp_last_error());
        assert_true(st == SP_OK || st == SP_ERR_BAD_FORMAT);
        if (st == SP_OK) {
            void *buf = NULL;
            size_t len = 0;

            /* What decodes survives another encode and decode. */
            accepted++;
            assert_int_equal(msg_encode(kind, &out, &buf, &len), SP_OK);
            assert_int_equal(msg_decode(kind, buf, len, &again), SP_OK);
            assert_true(msg_equal(kind, &out, &again));
            msg_free(kind, &again);
            msg_free(kind, &out);
            free(buf);
        } else {
            refused++;
        }
        free(copy);
    }
    for (size_t i = 0; i < ncorpus; i++)
        free(enc[i]);
    /* Both outcomes are common: the mutants reach past the first field. */
    assert_true(accepted > MUTATIONS / 50);
    assert_true(refused > MUTATIONS / 4);
}

/* The executor's crash handler fills FATAL by hand: the layout it assumes is the encoder's. */
static void test_fatal_layout_is_fixed(void **state)
{
    const sp__msg_fatal_t m = {.signal = 0x0b, .task_id = 0x0102030405060708ull};
    static const unsigned char want[SP_MSG_FATAL_LEN] = {0x0b, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1};
    void *buf = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(sp__msg_fatal_encode(&m, &buf, &len), SP_OK);
    assert_int_equal(len, SP_MSG_FATAL_LEN);
    assert_memory_equal(buf, want, sizeof(want));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fatal_layout_is_fixed),
        cmocka_unit_test(test_protocol_types_follow_the_channel),
        cmocka_unit_test(test_protocol_every_type_round_trips),
        cmocka_unit_test(test_protocol_refuses_truncations_and_trailing_bytes),
        cmocka_unit_test(test_protocol_heartbeat_layout),
        cmocka_unit_test(test_protocol_counts_beyond_the_bytes_are_refused_before_allocating),
        cmocka_unit_test(test_protocol_refuses_bad_names_and_ranges),
        cmocka_unit_test(test_protocol_allocation_failures),
        cmocka_unit_test(test_protocol_random_mutations_never_crash),
    };

    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, corpus_build, NULL);
}
