/*
 * The driver's scheduling rules, as functions over plain state: arrays of
 * task states (sp__sched_task_t), which executors are ready, and the
 * per-partition lengths of the registered map outputs. The driver
 * (executor/driver.c) owns that state, does the messaging and calls these;
 * here nothing sends, allocates or logs, so each rule is tested in
 * milliseconds against a simple model (tests/executor/test_scheduler.c)
 * instead of only through forked end-to-end runs.
 *
 * Locality: a reduce partition prefers the ready executor that holds the
 * most of its input bytes, the lowest id on a tie, none when no ready
 * executor holds any (an all-empty partition runs wherever a slot is free).
 * The driver computes the preferences once the map stage is complete and
 * again after any map output is registered or lost.
 *
 * Picking: the driver walks its ready executors in id order, first in pass 0
 * (reduce stage only: each executor takes the tasks it is preferred for),
 * then in pass 1 (any task), each executor taking tasks until its slots are
 * full or sp__sched_pick finds none. A task that failed on an executor goes
 * elsewhere while another executor is alive; pass 0 still lets an executor
 * preferred for nothing take its own failed task back.
 *
 * Lost outputs: an executor's loss recomputes only the map outputs that an
 * unfinished reduce task still has to read, that is a partition not done
 * with a non-zero block in that output (all of them while the sample stage
 * runs, when the partitions are not yet cut).
 *
 * Slow start: while maps run, reduce tasks may start once the share
 * shuffle.reduce_slowstart of them is done and no map task is pending.
 *
 * Sizes: O(maps x partitions) for the preferences, O(tasks) per pick; the
 * driver runs these on its one thread, between messages.
 */
#include "scheduler.h"

#include <stddef.h>
#include <string.h>

void sp__sched_preferred(const uint64_t *const *lengths, const uint32_t *owner, uint32_t maps,
                         uint32_t partitions, const bool *ready, uint32_t executors,
                         uint64_t *bytes, uint32_t *preferred_p)
{
    for (uint32_t p = 0; p < partitions; p++) {
        uint64_t best = 0;
        preferred_p[p] = UINT32_MAX;
        if (executors > 0)
            memset(bytes, 0, executors * sizeof(*bytes));
        for (uint32_t m = 0; m < maps; m++)
            if (lengths[m] != NULL && owner[m] < executors)
                bytes[owner[m]] += lengths[m][p];
        /* Strictly more: the lowest id keeps a tie, and an executor with no byte is no one. */
        for (uint32_t e = 0; e < executors; e++)
            if (ready[e] && bytes[e] > best) {
                best = bytes[e];
                preferred_p[p] = e;
            }
    }
}

int64_t sp__sched_pick(const sp__sched_task_t *tasks, uint32_t ntasks, const uint32_t *preferred,
                       uint32_t executor, int pass, uint32_t alive)
{
    int64_t fallback = -1;

    for (uint32_t i = 0; i < ntasks; i++) {
        const sp__sched_task_t *t = &tasks[i];
        if (t->state != SP__SCHED_PENDING)
            continue;
        if (t->avoid == executor && alive > 1) {
            if (fallback < 0)
                fallback = i;
            continue;
        }
        if (preferred != NULL && pass == 0 && preferred[i] != executor)
            continue;
        return i;
    }
    /*
     * Nothing qualified. Pass 0 hands back the first task this executor failed (so far
     * the driver's rule); pass 1 leaves it for another executor while one is alive.
     */
    return pass == 1 && alive > 1 ? -1 : fallback;
}

bool sp__sched_reduce_early(uint32_t maps_done, uint32_t maps, bool map_pending, double slowstart)
{
    return slowstart < 1 && !map_pending && (double)maps_done >= slowstart * (double)maps;
}

bool sp__sched_map_needed(const uint64_t *lengths, const sp__sched_task_t *reduces,
                          uint32_t partitions, bool sampling)
{
    if (sampling)
        return true;
    for (uint32_t p = 0; p < partitions; p++)
        if (reduces[p].state != SP__SCHED_DONE && (lengths == NULL || lengths[p] > 0))
            return true;
    return false;
}
