/*
 * What spate accepts from a job before running it, at the edge where the
 * job's word becomes sizes and lengths (issue 13, case 10):
 * - sp__job_plan_check: maps in 1 .. SP__JOB_MAX_MAPS, partitions in 1 ..
 *   SP_MAX_PARTITIONS (both ends of each range, and 0xffffffff), splits not
 *   NULL; a refusal names the job and the value;
 * - sp__job_plan_clear of a refused plan whose map count does not size its
 *   splits array (one entry for 0xffffffff maps) reads no entry past it
 *   (run under `make asan` to see a read past the end);
 * - sp__job_run_serial refusing such plans before it sizes anything, and
 *   before it makes the output directory;
 * - sp_job_emit and sp_job_emit_to refusing a key or value longer than a
 *   record's u32 length with SP_ERR_BAD_INPUT, in map and in sample tasks,
 *   before anything reads the bytes: the test's key is 16 bytes that claim
 *   2^33, so a hash over them would fault.
 *
 * LABELS: unit
 */
#include "common_int.h"
#include "executor/executor_int.h"
#include "run_test_util.h"
#include "job_env_util.h"

#include <inttypes.h>

static char dir[256];

static int setup(void **state)
{
    (void)state;
    rt_mkdtemp(dir, sizeof(dir), "job-plan");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(dir);
    return 0;
}

/* ---- a job whose plan and map do what the test says ---- */

typedef enum bad {
    BAD_NONE,
    BAD_HUGE_MAPS,       /* 0xffffffff maps, a one-entry splits array */
    BAD_HUGE_PARTITIONS, /* 0xffffffff partitions */
    BAD_HUGE_KEY,        /* map emits a key of 2^33 bytes */
    BAD_HUGE_VALUE,      /* map emits a value of 2^33 bytes */
    BAD_HUGE_KEY_TO,     /* map emits with sp_job_emit_to, key of 2^33 bytes */
} bad_t;

static bad_t bad;
static sp_job_partitioning_t partitioning;

static sp_status_t tj_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    (void)params;
    plan->maps = bad == BAD_HUGE_MAPS ? UINT32_MAX : 2;
    plan->partitions = bad == BAD_HUGE_PARTITIONS ? UINT32_MAX : 2;
    plan->partitioning = partitioning;
    plan->order = SP_READ_UNORDERED;
    plan->splits = calloc(bad == BAD_HUGE_MAPS ? 1 : 2, sizeof(*plan->splits));
    return plan->splits != NULL ? SP_OK : sp_job_fail(SP_ERR_NOMEM, "no memory");
}

static sp_status_t tj_map(sp_job_task_t *task, const sp_job_split_t *split)
{
    static const char key[16] = "key";
    static const char value[16] = "value";
    const size_t huge = (size_t)1 << 33;

    (void)split;
    switch (bad) {
    case BAD_HUGE_KEY: return sp_job_emit(task, key, huge, value, 1);
    case BAD_HUGE_VALUE: return sp_job_emit(task, key, 3, value, huge);
    case BAD_HUGE_KEY_TO: return sp_job_emit_to(task, 1, key, huge, value, 1);
    default:
        if (partitioning == SP_JOB_GIVEN)
            return sp_job_emit_to(task, 0, key, 3, value, 5);
        return sp_job_emit(task, key, 3, value, 5);
    }
}

static sp_status_t tj_reduce(sp_job_task_t *task, const void *key, size_t key_len,
                             const void *value, size_t value_len)
{
    (void)value;
    (void)value_len;
    return sp_job_write(task, key, key_len);
}

static const sp_job_t test_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "planner",
    .plan = tj_plan,
    .map = tj_map,
    .reduce = tj_reduce,
};

/* ---- an executor's parts for sp__job_run_serial ---- */

typedef je_env_t env_t;

static void env_open(env_t *e)
{
    je_env_open(e, dir, "64m", "64k");
    je_env_start(e);
}

static void env_close(env_t *e) { je_env_close(e); }

/* Runs test_job serially into dir/out with the given flaw; returns its status. */
static sp_status_t run_serial(bad_t flaw, sp_job_partitioning_t how, char *out, size_t cap)
{
    sp_job_result_t result;
    sp_status_t st;
    env_t e = {0};

    bad = flaw;
    partitioning = how;
    rt_path(out, cap, dir, "out");
    rt_rmtree(out);
    env_open(&e);
    sp_job_params_t p = {.slots = 1, .executors = 1, .conf = e.conf, .output = out};
    st = sp__job_run_serial(&test_job, &p, e.mm, &result);
    env_close(&e);
    return st;
}

/* ---- tests ---- */

static void expect_plan(uint32_t maps, uint32_t partitions, bool splits, sp_status_t want,
                        const char *phrase)
{
    sp_job_split_t one = {0};
    sp_job_plan_t plan = {.maps = maps, .partitions = partitions, .splits = splits ? &one : NULL};
    sp_status_t st = sp__job_plan_check(&test_job, &plan);

    if (st != want)
        fail_msg("plan of %" PRIu32 " maps, %" PRIu32 " partitions, splits %s: %s, want %s", maps,
                 partitions, splits ? "set" : "NULL", sp_status_str(st), sp_status_str(want));
    if (phrase != NULL && strstr(sp_last_error(), phrase) == NULL)
        fail_msg("plan of %" PRIu32 " maps, %" PRIu32 " partitions: \"%s\" does not say \"%s\"",
                 maps, partitions, sp_last_error(), phrase);
    if (want != SP_OK && strstr(sp_last_error(), "job planner") == NULL)
        fail_msg("the refusal does not name the job: %s", sp_last_error());
}

static void test_plan_check_limits(void **state)
{
    (void)state;
    /* Both ends of each range are accepted. */
    expect_plan(1, 1, true, SP_OK, NULL);
    expect_plan(SP__JOB_MAX_MAPS, SP_MAX_PARTITIONS, true, SP_OK, NULL);
    /* Just past them, far past them, and nothing at all are not. */
    expect_plan(0, 1, true, SP_ERR_INVALID_PARAM, "planned 0 map tasks; a plan has 1 .. 16777216");
    expect_plan(SP__JOB_MAX_MAPS + 1, 1, true, SP_ERR_INVALID_PARAM, "planned 16777217 map tasks");
    expect_plan(UINT32_MAX, 1, true, SP_ERR_INVALID_PARAM, "planned 4294967295 map tasks");
    expect_plan(1, 0, true, SP_ERR_INVALID_PARAM, "planned 0 partitions; a plan has 1 .. 16777216");
    expect_plan(1, SP_MAX_PARTITIONS + 1, true, SP_ERR_INVALID_PARAM,
                "planned 16777217 partitions");
    expect_plan(1, UINT32_MAX, true, SP_ERR_INVALID_PARAM, "planned 4294967295 partitions");
    expect_plan(3, 1, false, SP_ERR_INVALID_PARAM, "planned 3 map tasks but no splits");
}

static void test_plan_clear_refused_plan(void **state)
{
    sp_job_plan_t plan = {.maps = UINT32_MAX, .partitions = 1};

    (void)state;
    /* The job allocated one split for a count it could not have meant; only the array goes. */
    plan.splits = calloc(1, sizeof(*plan.splits));
    assert_non_null(plan.splits);
    sp__job_plan_clear(&plan);
    assert_null(plan.splits);

    /* In range, every path is freed (a leak here shows under `make asan`). */
    plan.maps = 2;
    plan.splits = calloc(2, sizeof(*plan.splits));
    assert_non_null(plan.splits);
    plan.splits[0].path = strdup("a");
    plan.splits[1].path = strdup("b");
    sp__job_plan_clear(&plan);
    assert_null(plan.splits);
}

static void test_serial_refuses_plan(void **state)
{
    char out[300];

    (void)state;
    assert_int_equal(run_serial(BAD_HUGE_MAPS, SP_JOB_HASH, out, sizeof(out)),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "job planner planned 4294967295 map tasks"));
    assert_int_not_equal(access(out, F_OK), 0);
    assert_int_equal(run_serial(BAD_HUGE_PARTITIONS, SP_JOB_HASH, out, sizeof(out)),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "job planner planned 4294967295 partitions"));
    assert_int_not_equal(access(out, F_OK), 0);
    /* The same job with a sane plan runs. */
    assert_int_equal(run_serial(BAD_NONE, SP_JOB_HASH, out, sizeof(out)), SP_OK);
    assert_true(rt_exists(out, "_SUCCESS"));
}

static void expect_emit_refused(bad_t flaw, sp_job_partitioning_t how, const char *phrase)
{
    char out[300];
    sp_status_t st = run_serial(flaw, how, out, sizeof(out));

    if (st != SP_ERR_BAD_INPUT)
        fail_msg("flaw %d, partitioning %d: %s (%s), want SP_ERR_BAD_INPUT", (int)flaw, (int)how,
                 sp_status_str(st), sp_last_error());
    if (strstr(sp_last_error(), phrase) == NULL || strstr(sp_last_error(), "4294967295") == NULL)
        fail_msg("flaw %d: \"%s\" does not say \"%s\" and the limit", (int)flaw, sp_last_error(),
                 phrase);
    rt_expect_no_output(out);
}

static void test_emit_refuses_huge_lengths(void **state)
{
    (void)state;
    expect_emit_refused(BAD_HUGE_KEY, SP_JOB_HASH, "map task 0 emitted a key of 8589934592 bytes");
    expect_emit_refused(BAD_HUGE_VALUE, SP_JOB_HASH,
                        "map task 0 emitted a value of 8589934592 bytes");
    expect_emit_refused(BAD_HUGE_KEY_TO, SP_JOB_GIVEN,
                        "map task 0 emitted a key of 8589934592 bytes");
    /* RANGE partitioning samples the map's keys first: the sample task refuses it. */
    expect_emit_refused(BAD_HUGE_KEY, SP_JOB_RANGE,
                        "sample task 0 emitted a key of 8589934592 bytes");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_check_limits),
        cmocka_unit_test(test_plan_clear_refused_plan),
        cmocka_unit_test(test_serial_refuses_plan),
        cmocka_unit_test(test_emit_refuses_huge_lengths),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
