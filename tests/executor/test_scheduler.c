/*
 * The driver's scheduling rules (executor/scheduler.c), over plain state, in
 * milliseconds:
 * - sp__sched_preferred against a reference model (for each partition and
 *   each ready executor, the bytes of the maps it owns; the largest wins, the
 *   lowest id on a tie, nobody when no ready executor holds a byte) on
 *   random inputs: lengths drawn from a few small values so that ties are
 *   common, random ready sets, maps without an output and owners past the
 *   executor count; the scratch starts dirty. A few cases by hand: a tie, a
 *   larger holder that is not ready, an empty partition.
 * - sp__sched_pick: pass 0 takes only the tasks this executor is preferred
 *   for, pass 1 any; a task that failed on this executor is skipped while
 *   another executor is alive and then waits for another one in pass 1,
 *   while pass 0 hands it back to an executor preferred for nothing (the
 *   driver's rule since its first version); a single alive executor retries
 *   its own failure; running and done tasks are never picked. Then against
 *   a model of the rule on random task arrays.
 * - sp__sched_map_needed: every reduce done -> not needed; an unfinished
 *   partition whose block is empty -> not needed; a non-empty one -> needed;
 *   while sampling -> needed; an unknown output -> needed while any reduce
 *   is unfinished. Then against a model on random inputs.
 *
 * - sp__sched_reduce_early: off at 1, at 0 as soon as no map is pending, at
 *   a share only from that many maps done; never while a map is pending.
 *
 * SPATE_TEST_SEED=N repeats a run of the random cases (the seed is printed).
 *
 * LABELS: unit
 */
#include "executor/scheduler.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

static uint64_t rng;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ull;
}

static uint32_t rnd_below(uint32_t n) { return n == 0 ? 0 : (uint32_t)(rnd() % n); }

static int seed_setup(void **state)
{
    const char *s = getenv("SPATE_TEST_SEED");

    (void)state;
    rng = s != NULL ? strtoull(s, NULL, 0) : 0x5eed5c4edull;
    if (rng == 0)
        rng = 1;
    printf("seed %" PRIu64 "\n", rng);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Preferred locations                                                      */
/* ------------------------------------------------------------------------ */

/* The model: executor by executor, the bytes of partition p in the maps it holds. */
static uint32_t model_preferred(const uint64_t *const *lengths, const uint32_t *owner,
                                uint32_t maps, uint32_t p, const bool *ready, uint32_t executors)
{
    uint32_t winner = NONE;
    uint64_t most = 0;

    for (uint32_t e = 0; e < executors; e++) {
        uint64_t held = 0;
        if (!ready[e])
            continue;
        for (uint32_t m = 0; m < maps; m++)
            if (lengths[m] != NULL && owner[m] == e)
                held += lengths[m][p];
        if (held == 0)
            continue;
        if (winner == NONE || held > most) {
            winner = e;
            most = held;
        }
    }
    return winner;
}

enum { MAXM = 12, MAXP = 10, MAXE = 8 };

typedef struct placement {
    uint64_t storage[MAXM][MAXP];
    const uint64_t *lengths[MAXM];
    uint32_t owner[MAXM];
    bool ready[MAXE];
    uint32_t maps, partitions, executors;
} placement_t;

static void run_preferred(const placement_t *pl, uint32_t *preferred)
{
    uint64_t bytes[MAXE];

    memset(bytes, 0xab, sizeof(bytes)); /* scratch is the function's to clear */
    for (uint32_t p = 0; p < MAXP; p++)
        preferred[p] = 0xdeadbeef;
    sp__sched_preferred(pl->lengths, pl->owner, pl->maps, pl->partitions, pl->ready, pl->executors,
                        bytes, preferred);
    for (uint32_t p = pl->partitions; p < MAXP; p++)
        assert_int_equal(preferred[p], 0xdeadbeef); /* nothing past the partitions */
}

static void test_preferred_by_hand(void **state)
{
    placement_t pl = {.maps = 3, .partitions = 4, .executors = 3};
    uint32_t preferred[MAXP];

    (void)state;
    /* map 0 on executor 0, map 1 on executor 1, map 2 on executor 2 */
    const uint64_t len[3][4] = {
        {5, 7, 0, 9},
        {5, 3, 0, 9},
        {1, 9, 0, 20},
    };
    for (uint32_t m = 0; m < 3; m++) {
        memcpy(pl.storage[m], len[m], sizeof(len[m]));
        pl.lengths[m] = pl.storage[m];
        pl.owner[m] = m;
        pl.ready[m] = true;
    }
    run_preferred(&pl, preferred);
    assert_int_equal(preferred[0], 0);    /* 5 = 5 > 1: the lower id of a tie */
    assert_int_equal(preferred[1], 2);    /* 9 > 7 > 3 */
    assert_int_equal(preferred[2], NONE); /* nobody holds a byte */
    assert_int_equal(preferred[3], 2);

    /* The largest holder is not ready: the next one, ties again to the lower id. */
    pl.ready[2] = false;
    run_preferred(&pl, preferred);
    assert_int_equal(preferred[1], 0);
    assert_int_equal(preferred[3], 0);

    /* Two maps on one executor add up; an output not registered (NULL) counts for nobody. */
    pl.owner[2] = 1;
    pl.ready[2] = true;
    run_preferred(&pl, preferred);
    assert_int_equal(preferred[1], 1); /* 3 + 9 > 7 */
    pl.lengths[2] = NULL;
    run_preferred(&pl, preferred);
    assert_int_equal(preferred[1], 0);
    assert_int_equal(preferred[3], 0); /* 9 = 9: executor 0 */

    /* An owner past the executors counts for nobody. */
    pl.lengths[2] = pl.storage[2];
    pl.owner[2] = 7;
    run_preferred(&pl, preferred);
    assert_int_equal(preferred[1], 0);

    /* No ready executor: no preference anywhere. */
    memset(pl.ready, 0, sizeof(pl.ready));
    run_preferred(&pl, preferred);
    for (uint32_t p = 0; p < pl.partitions; p++)
        assert_int_equal(preferred[p], NONE);
}

static void test_preferred_model(void **state)
{
    static const uint64_t values[] = {0, 0, 0, 1, 2, 3, 1000, UINT64_C(1) << 40};

    (void)state;
    for (int round = 0; round < 20000; round++) {
        placement_t pl = {.maps = rnd_below(MAXM + 1),
                          .partitions = rnd_below(MAXP + 1),
                          .executors = rnd_below(MAXE + 1)};
        uint32_t preferred[MAXP];
        for (uint32_t m = 0; m < pl.maps; m++) {
            for (uint32_t p = 0; p < pl.partitions; p++)
                pl.storage[m][p] = values[rnd_below(sizeof(values) / sizeof(values[0]))];
            pl.lengths[m] = rnd_below(8) == 0 ? NULL : pl.storage[m];
            /* Now and then an owner past the executors (one not in the driver's table). */
            pl.owner[m] = rnd_below(pl.executors + (rnd_below(10) == 0 ? 3 : 0));
        }
        for (uint32_t e = 0; e < pl.executors; e++)
            pl.ready[e] = rnd_below(4) != 0;
        run_preferred(&pl, preferred);
        for (uint32_t p = 0; p < pl.partitions; p++) {
            uint32_t want =
                model_preferred(pl.lengths, pl.owner, pl.maps, p, pl.ready, pl.executors);
            if (preferred[p] != want)
                fail_msg("round %d partition %u: preferred %u, the model says %u", round, p,
                         preferred[p], want);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Picking a task                                                           */
/* ------------------------------------------------------------------------ */

static sp__sched_task_t pending(uint32_t avoid)
{
    return (sp__sched_task_t){.state = SP__SCHED_PENDING, .avoid = avoid};
}

static void test_pick_preferred_first(void **state)
{
    sp__sched_task_t t[5] = {pending(NONE), pending(NONE), pending(NONE), pending(NONE),
                             pending(NONE)};
    const uint32_t preferred[5] = {1, 0, 1, NONE, 0};

    (void)state;
    /* Pass 0: executor 1 takes the tasks it is preferred for, in order, and nothing else. */
    assert_int_equal(sp__sched_pick(t, 5, preferred, 1, 0, 2), 0);
    t[0].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 5, preferred, 1, 0, 2), 2);
    t[2].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 5, preferred, 1, 0, 2), -1);
    /* Executor 0 likewise; a task preferring nobody is for pass 1 only. */
    assert_int_equal(sp__sched_pick(t, 5, preferred, 0, 0, 2), 1);
    t[1].state = SP__SCHED_DONE;
    assert_int_equal(sp__sched_pick(t, 5, preferred, 0, 0, 2), 4);
    t[4].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 5, preferred, 0, 0, 2), -1);
    /* Pass 1: anything left, whoever prefers it. */
    assert_int_equal(sp__sched_pick(t, 5, preferred, 1, 1, 2), 3);
    t[3].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 5, preferred, 1, 1, 2), -1);
    assert_int_equal(sp__sched_pick(t, 5, preferred, 0, 1, 2), -1);

    /* Pass 1 takes the first pending task whatever the preferences. */
    for (uint32_t i = 0; i < 5; i++)
        t[i] = pending(NONE);
    assert_int_equal(sp__sched_pick(t, 5, preferred, 0, 1, 2), 0);
    assert_int_equal(sp__sched_pick(t, 5, preferred, 7, 1, 2), 0);
    /* Without preferences (map and sample stages) pass 0 takes any task too. */
    assert_int_equal(sp__sched_pick(t, 5, NULL, 1, 0, 2), 0);
    /* No task at all. */
    assert_int_equal(sp__sched_pick(t, 0, preferred, 0, 0, 2), -1);
    assert_int_equal(sp__sched_pick(t, 0, NULL, 0, 1, 2), -1);
}

static void test_pick_avoids_last_failure(void **state)
{
    sp__sched_task_t t[3] = {pending(0), pending(NONE), pending(1)};

    (void)state;
    /* Another executor is alive: executor 0 skips task 0, which failed on it. */
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 2), 1);
    t[1].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 2), 2);
    t[2].state = SP__SCHED_RUNNING;
    /* Only its own failure is left: in pass 1 it waits for another executor... */
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 2), -1);
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 5), -1);
    /* ...which takes it. */
    assert_int_equal(sp__sched_pick(t, 3, NULL, 1, 1, 2), 0);
    /* A single alive executor retries its own failure. */
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 1), 0);
    /* A task that is running or done is never picked back, however it failed before. */
    t[0].state = SP__SCHED_DONE;
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 1, 1), -1);
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 0, 2), -1);
    t[0].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 3, NULL, 0, 0, 2), -1);
}

static void test_pick_pass0_fallback(void **state)
{
    /* Reduce tasks; task 0 failed on executor 0, every task prefers executor 1. */
    sp__sched_task_t t[3] = {pending(0), pending(NONE), pending(NONE)};
    uint32_t preferred[3] = {1, 1, 1};

    (void)state;
    /*
     * Pass 0, executor 0 is preferred for nothing: it falls back to the first task it
     * failed, although executor 1 is alive (today's rule, kept as it is).
     */
    assert_int_equal(sp__sched_pick(t, 3, preferred, 0, 0, 2), 0);
    /* Pass 1 would give it the others and keep its failure from it. */
    assert_int_equal(sp__sched_pick(t, 3, preferred, 0, 1, 2), 1);
    /* A task it is preferred for comes before the fallback, even one after it. */
    preferred[2] = 0;
    assert_int_equal(sp__sched_pick(t, 3, preferred, 0, 0, 2), 2);
    /* Executor 1 takes its own preferred tasks, the failed one first. */
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 0, 2), 0);
    /* Its preferred failed task: skipped in pass 0 for the next preferred one... */
    t[0].avoid = 1;
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 0, 2), 1);
    /* ...and handed back only when nothing it prefers is left. */
    t[1].state = SP__SCHED_RUNNING;
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 0, 2), 0);
    /* Alone, nothing is skipped: pass 0 is preferences only. */
    t[1].state = SP__SCHED_PENDING;
    preferred[0] = 0;
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 0, 1), 1);
    t[1].state = SP__SCHED_DONE;
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 0, 1), -1);
    assert_int_equal(sp__sched_pick(t, 3, preferred, 1, 1, 1), 0);
}

/* The model of the rule, one condition at a time over the whole array. */
static int64_t model_pick(const sp__sched_task_t *t, uint32_t n, const uint32_t *preferred,
                          uint32_t e, int pass, uint32_t alive)
{
    bool others = alive > 1;

    for (uint32_t i = 0; i < n; i++) {
        bool skipped = others && t[i].avoid == e;
        bool wanted = pass == 1 || preferred == NULL || preferred[i] == e;
        if (t[i].state == SP__SCHED_PENDING && !skipped && wanted)
            return i;
    }
    if (pass == 1)
        return -1; /* with one alive nothing was skipped; with more the task waits */
    for (uint32_t i = 0; i < n; i++)
        if (t[i].state == SP__SCHED_PENDING && others && t[i].avoid == e)
            return i;
    return -1;
}

static void test_pick_model(void **state)
{
    enum { N = 12, E = 4 };

    (void)state;
    for (int round = 0; round < 50000; round++) {
        sp__sched_task_t t[N];
        uint32_t preferred[N];
        uint32_t n = rnd_below(N + 1), e = rnd_below(E), alive = rnd_below(E + 1);
        int pass = (int)rnd_below(2);
        bool prefs = rnd_below(4) != 0;
        for (uint32_t i = 0; i < n; i++) {
            t[i].state = (sp__sched_state_t)rnd_below(3);
            t[i].avoid = rnd_below(3) == 0 ? NONE : rnd_below(E);
            preferred[i] = rnd_below(5) == 0 ? NONE : rnd_below(E);
        }
        const uint32_t *p = prefs ? preferred : NULL;
        int64_t got = sp__sched_pick(t, n, p, e, pass, alive);
        int64_t want = model_pick(t, n, p, e, pass, alive);
        if (got != want)
            fail_msg("round %d (%u tasks, executor %u, pass %d, %u alive): picked %" PRId64
                     ", the model says %" PRId64,
                     round, n, e, pass, alive, got, want);
    }
}

/* ------------------------------------------------------------------------ */
/* Lost outputs                                                             */
/* ------------------------------------------------------------------------ */

static void test_map_needed(void **state)
{
    sp__sched_task_t r[3] = {{.state = SP__SCHED_DONE, .avoid = NONE},
                             {.state = SP__SCHED_DONE, .avoid = NONE},
                             {.state = SP__SCHED_DONE, .avoid = NONE}};
    const uint64_t lengths[3] = {10, 0, 7};

    (void)state;
    /* Every reduce task is done: nobody needs the output any more. */
    assert_false(sp__sched_map_needed(lengths, r, 3, false));
    assert_false(sp__sched_map_needed(NULL, r, 3, false));
    /* ...except while sampling, when nothing has been cut yet. */
    assert_true(sp__sched_map_needed(lengths, r, 3, true));
    /* An unfinished partition whose block is empty reads nothing from it. */
    r[1].state = SP__SCHED_PENDING;
    assert_false(sp__sched_map_needed(lengths, r, 3, false));
    r[1].state = SP__SCHED_RUNNING;
    assert_false(sp__sched_map_needed(lengths, r, 3, false));
    /* An unknown output (no lengths) is needed by any unfinished reduce task. */
    assert_true(sp__sched_map_needed(NULL, r, 3, false));
    /* An unfinished partition with a non-empty block needs it, pending or running. */
    r[2].state = SP__SCHED_PENDING;
    assert_true(sp__sched_map_needed(lengths, r, 3, false));
    r[2].state = SP__SCHED_RUNNING;
    assert_true(sp__sched_map_needed(lengths, r, 3, false));
    /* No reduce task at all. */
    assert_false(sp__sched_map_needed(lengths, r, 0, false));
    assert_true(sp__sched_map_needed(lengths, r, 0, true));
}

static void test_map_needed_model(void **state)
{
    enum { P = 10 };

    (void)state;
    for (int round = 0; round < 20000; round++) {
        sp__sched_task_t r[P];
        uint64_t lengths[P];
        uint32_t n = rnd_below(P + 1);
        bool sampling = rnd_below(8) == 0, known = rnd_below(8) != 0, want = sampling;
        for (uint32_t p = 0; p < n; p++) {
            r[p] = (sp__sched_task_t){.state = (sp__sched_state_t)rnd_below(3), .avoid = NONE};
            if (rnd_below(2) == 0)
                r[p].state = SP__SCHED_DONE;
            lengths[p] = rnd_below(3) == 0 ? rnd() : 0;
        }
        for (uint32_t p = 0; p < n && !want; p++)
            want = r[p].state != SP__SCHED_DONE && (!known || lengths[p] != 0);
        if (sp__sched_map_needed(known ? lengths : NULL, r, n, sampling) != want)
            fail_msg("round %d (%u partitions, sampling %d, lengths %s): the model says %d", round,
                     n, sampling, known ? "known" : "unknown", want);
    }
}

static void test_reduce_early(void **state)
{
    (void)state;
    /* 1: never before every map is done (the driver then schedules them anyway). */
    assert_false(sp__sched_reduce_early(7, 8, false, 1.0));
    assert_false(sp__sched_reduce_early(8, 8, false, 1.0));
    /* 0: as soon as no map task waits for a slot. */
    assert_true(sp__sched_reduce_early(0, 8, false, 0.0));
    assert_false(sp__sched_reduce_early(0, 8, true, 0.0));
    /* A share: from that many maps done on. */
    assert_false(sp__sched_reduce_early(3, 8, false, 0.5));
    assert_true(sp__sched_reduce_early(4, 8, false, 0.5));
    assert_false(sp__sched_reduce_early(4, 8, true, 0.5));
    assert_false(sp__sched_reduce_early(5, 7, false, 0.8)); /* 5.6 needed */
    assert_true(sp__sched_reduce_early(6, 7, false, 0.8));
    for (uint32_t done = 0; done <= 100; done++)
        for (int s = 0; s <= 10; s++) {
            double f = s / 10.0;
            bool want = s < 10 && done * 10 >= (uint32_t)s * 100;
            assert_int_equal(sp__sched_reduce_early(done, 100, false, f), want);
            assert_false(sp__sched_reduce_early(done, 100, true, f));
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preferred_by_hand),
        cmocka_unit_test(test_preferred_model),
        cmocka_unit_test(test_pick_preferred_first),
        cmocka_unit_test(test_pick_avoids_last_failure),
        cmocka_unit_test(test_pick_pass0_fallback),
        cmocka_unit_test(test_pick_model),
        cmocka_unit_test(test_map_needed),
        cmocka_unit_test(test_map_needed_model),
        cmocka_unit_test(test_reduce_early),
    };
    return cmocka_run_group_tests(tests, seed_setup, NULL);
}
