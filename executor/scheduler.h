/*
 * The driver's scheduling rules over plain state (executor/scheduler.c):
 * which executor each reduce partition prefers, which pending task a free
 * slot takes, and whether a lost executor's map output must be computed
 * again. No I/O, no allocation, no driver: executor/driver.c keeps the state
 * and calls these, and tests/executor/test_scheduler.c checks them against
 * simple models. Not installed.
 */
#ifndef SPATE_EXECUTOR_SCHEDULER_H
#define SPATE_EXECUTOR_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where a task stands. */
typedef enum sp__sched_state {
    SP__SCHED_PENDING = 0, /* waiting for a free slot (never run, failed, or its output lost) */
    SP__SCHED_RUNNING = 1, /* an attempt runs on one executor */
    SP__SCHED_DONE = 2,    /* an attempt succeeded (a map: its output is registered) */
} sp__sched_state_t;

/* The scheduler's view of one task: the driver keeps one array of these per stage. */
typedef struct sp__sched_task {
    sp__sched_state_t state;
    uint32_t avoid; /* executor of the task's last failure; UINT32_MAX: none */
} sp__sched_task_t;

/*
 * Each reduce partition's preferred executor: the ready executor holding the
 * largest share of its input bytes. lengths[m] holds map m's registered
 * per-partition lengths (partitions entries), or is NULL when map m has no
 * registered output; owner[m] is the executor holding that output (one at or
 * past `executors` counts for nobody). ready[e] says whether executor e may
 * take tasks. preferred_p[p] becomes that executor, the lowest id among
 * those tied, or UINT32_MAX when no ready executor holds a byte of p.
 * bytes is scratch of `executors` entries, left with unspecified contents.
 * Every array has the size named and is owned by the caller; none is NULL
 * unless its size is 0. Thread-safe (it touches only its arguments).
 */
void sp__sched_preferred(const uint64_t *const *lengths, const uint32_t *owner, uint32_t maps,
                         uint32_t partitions, const bool *ready, uint32_t executors,
                         uint64_t *bytes, uint32_t *preferred_p);

/*
 * The index of the pending task of tasks[0..ntasks) that executor `executor`
 * takes in scheduling pass `pass`, or -1 when it takes none. The driver runs
 * pass 0 (reduce stage only) then pass 1 over its ready executors in id
 * order, each filling its free slots one pick at a time.
 *
 * The rule, in task order: a task whose last failure was on this executor
 * (avoid) is skipped while more than one executor is alive (`alive`, the
 * ready executors); in pass 0 a task is taken only when preferred[i] is this
 * executor (preferred NULL: the stage has no preferences, every task
 * qualifies); in pass 1 any remaining task is taken. When nothing qualifies,
 * pass 0 falls back to the first skipped task (so an executor preferred for
 * nothing may take back its own failure before pass 1 offers it to others),
 * and pass 1 returns -1 while another executor is alive: the task waits for
 * one. With one executor alive nothing is skipped, so it retries its own
 * failures. Reads only its arguments; thread-safe.
 */
int64_t sp__sched_pick(const sp__sched_task_t *tasks, uint32_t ntasks, const uint32_t *preferred,
                       uint32_t executor, int pass, uint32_t alive);

/*
 * Whether map output `lengths` (its per-partition lengths, NULL: unknown) is
 * still needed by a reduce task that has not finished: true while sampling
 * (sampling: the sample stage has not finished, so no reduce task has read
 * anything), else true when some partition p whose task reduces[p] is not
 * done has lengths[p] > 0 (or lengths is NULL). A lost executor's map outputs
 * are computed again only when needed. Reads only its arguments; thread-safe.
 */
bool sp__sched_map_needed(const uint64_t *lengths, const sp__sched_task_t *reduces,
                          uint32_t partitions, bool sampling);

/*
 * Whether reduce tasks may start while the map stage runs (reduce slow
 * start): slowstart below 1, at least slowstart x maps map tasks done, and
 * no map task pending (maps come first: an early reduce task takes only a
 * slot no map task waits for). With every map done the driver schedules
 * reduce tasks anyway; this rule is for the time before. Pure.
 */
bool sp__sched_reduce_early(uint32_t maps_done, uint32_t maps, bool map_pending, double slowstart);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_EXECUTOR_SCHEDULER_H */
