/*
 * A job plugin that misbehaves on request, for the fault tests that run the
 * real `spate run` (tests/executor/test_run_*.c). Apart from the fault it
 * asks for it is a complete job: each map task emits `records` records
 * (key "m<map>-r<i>", value 8 bytes), the reduce side writes one line per
 * record ("key\n") and counts them (counter 0: records reduced); finish()
 * checks that the reduce side saw exactly maps x records records.
 *
 * Job arguments (--job-arg K=V):
 *   maps=N        map tasks (default 4); any u32, 4294967295 included, so
 *                 the driver's checks on a plan can be tried
 *   partitions=N  reduce tasks (default 2); any u32
 *   records=N     records per map task (default 1000)
 *   fault=F       what the chosen task does instead of its work:
 *                   segv      dereferences NULL (SIGSEGV)
 *                   abort     calls abort() (SIGABRT)
 *                   exit      calls exit(3) in the worker thread
 *                   positive  returns status 7, outside sp_status_t
 *                   error     fails with sp_job_fail(SP_ERR_IO, "bad CSV at line 3")
 *                   badinput  fails with sp_job_fail(SP_ERR_BAD_INPUT, "bad record at line 3")
 *                   hang      never returns (spins)
 *                   sleep     sleeps `sleep_ms` (default 2000) then works normally
 *                   hugekey   emits a record whose key_len is 2^33
 *   stage=S       map (default) or reduce: the stage whose task misbehaves
 *   task=N        index of the task that misbehaves (default 1); -1: every task
 *   once=PATH     misbehave only while PATH does not exist; the faulty attempt
 *                 creates it first, so the next attempt succeeds
 *   delay_ms=N    the chosen task sleeps N ms before it misbehaves (default 0),
 *                 so that a run fails only after it has held its output a while
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <spate/spate.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct fp_args {
    uint32_t maps, partitions;
    uint64_t records;
    const char *fault;
    int reduce_stage;
    int64_t task;
    const char *once;
    long sleep_ms;
    long delay_ms;
} fp_args_t;

static uint64_t fp_num(const sp_job_params_t *params, const char *key, uint64_t dflt)
{
    const char *v = sp_job_arg(params, key);

    return v != NULL ? strtoull(v, NULL, 10) : dflt;
}

static void fp_args(const sp_job_params_t *params, fp_args_t *a)
{
    const char *stage = sp_job_arg(params, "stage"), *task = sp_job_arg(params, "task");

    a->maps = (uint32_t)fp_num(params, "maps", 4);
    a->partitions = (uint32_t)fp_num(params, "partitions", 2);
    a->records = fp_num(params, "records", 1000);
    a->fault = sp_job_arg(params, "fault");
    a->reduce_stage = stage != NULL && strcmp(stage, "reduce") == 0;
    a->task = task != NULL ? strtoll(task, NULL, 10) : 1;
    a->once = sp_job_arg(params, "once");
    a->sleep_ms = (long)fp_num(params, "sleep_ms", 2000);
    a->delay_ms = (long)fp_num(params, "delay_ms", 0);
}

static void fp_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* Whether this task misbehaves now; with once=PATH the first attempt marks PATH. */
static int fp_chosen(const fp_args_t *a, int reduce_stage, uint32_t index)
{
    int fd;

    if (a->fault == NULL || a->reduce_stage != reduce_stage ||
        (a->task >= 0 && (uint64_t)a->task != index))
        return 0;
    if (a->once == NULL)
        return 1;
    fd = open(a->once, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return 0; /* an earlier attempt misbehaved already */
    close(fd);
    return 1;
}

/* Does what fault says; returns the status the task ends with (SP_OK: go on normally). */
static sp_status_t fp_misbehave(sp_job_task_t *task, const fp_args_t *a)
{
    const char *f = a->fault;

    if (a->delay_ms > 0)
        fp_sleep_ms(a->delay_ms);
    if (strcmp(f, "segv") == 0) {
        volatile int *volatile p = NULL;
        *p = 1;
    } else if (strcmp(f, "abort") == 0) {
        abort();
    } else if (strcmp(f, "exit") == 0) {
        exit(3);
    } else if (strcmp(f, "positive") == 0) {
        return (sp_status_t)7;
    } else if (strcmp(f, "error") == 0) {
        return sp_job_fail(SP_ERR_IO, "bad CSV at line 3");
    } else if (strcmp(f, "badinput") == 0) {
        return sp_job_fail(SP_ERR_BAD_INPUT, "bad record at line 3");
    } else if (strcmp(f, "hang") == 0) {
        for (volatile uint64_t spin = 0;; spin++)
            ;
    } else if (strcmp(f, "sleep") == 0) {
        struct timespec ts = {.tv_sec = a->sleep_ms / 1000,
                              .tv_nsec = (a->sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    } else if (strcmp(f, "hugekey") == 0) {
        static const char key[16] = "k";
        return sp_job_emit(task, key, (size_t)1 << 33, "v", 1);
    }
    return SP_OK;
}

static sp_status_t fp_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    fp_args_t a;

    fp_args(params, &a);
    plan->maps = a.maps;
    plan->partitions = a.partitions;
    plan->partitioning = SP_JOB_HASH;
    plan->order = SP_READ_UNORDERED;
    /* A plan this large is the driver's to refuse: allocate what a sane one needs. */
    plan->splits = calloc(a.maps - 1 < (1u << 24) ? a.maps : 1, sizeof(*plan->splits));
    return plan->splits != NULL ? SP_OK : sp_job_fail(SP_ERR_NOMEM, "no memory for the splits");
}

static sp_status_t fp_map(sp_job_task_t *task, const sp_job_split_t *split)
{
    fp_args_t a;
    uint32_t index = sp_job_task_index(task);
    char key[48];
    sp_status_t st;

    (void)split;
    fp_args(sp_job_task_params(task), &a);
    if (fp_chosen(&a, 0, index) && (st = fp_misbehave(task, &a)) != SP_OK)
        return st;
    for (uint64_t i = 0; i < a.records; i++) {
        uint64_t value = i;
        int n = snprintf(key, sizeof(key), "m%" PRIu32 "-r%" PRIu64, index, i);
        if ((st = sp_job_emit(task, key, (size_t)n, &value, sizeof(value))) != SP_OK)
            return st;
    }
    return SP_OK;
}

static sp_status_t fp_reduce(sp_job_task_t *task, const void *key, size_t key_len,
                             const void *value, size_t value_len)
{
    void **state = sp_job_task_state(task);
    sp_status_t st;

    (void)value;
    (void)value_len;
    if (*state == NULL) {
        fp_args_t a;
        /* The first record: the reduce fault fires once per task, before any output. */
        fp_args(sp_job_task_params(task), &a);
        if ((*state = malloc(1)) == NULL)
            return sp_job_fail(SP_ERR_NOMEM, "no memory");
        if (fp_chosen(&a, 1, sp_job_task_index(task)) && (st = fp_misbehave(task, &a)) != SP_OK)
            return st;
    }
    sp_job_counter_add(task, 0, 1);
    if ((st = sp_job_write(task, key, key_len)) != SP_OK)
        return st;
    return sp_job_write(task, "\n", 1);
}

static sp_status_t fp_finish(const sp_job_params_t *params, const sp_job_result_t *result,
                             void *report)
{
    fp_args_t a;
    uint64_t want;

    fp_args(params, &a);
    want = (uint64_t)a.maps * a.records;
    if (result->counters[0] != want)
        return sp_job_fail(SP_ERR_CORRUPT,
                           "fault job reduced %" PRIu64 " records; its maps wrote %" PRIu64,
                           result->counters[0], want);
    fprintf(report, "fault job: %" PRIu64 " records reduced, as written\n", want);
    return SP_OK;
}

static const sp_job_t fault_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "fault",
    .summary = "a job that misbehaves on request (tests)",
    .plan = fp_plan,
    .map = fp_map,
    .reduce = fp_reduce,
    .finish = fp_finish,
    .counter_names = {"records reduced"},
};

SP_JOB_EXPORT(fault_job)
