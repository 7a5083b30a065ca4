/*
 * The driver: turns a job into stages (sample when the job range-partitions,
 * map, reduce), hands tasks to executors' free slots, keeps the map output
 * tracker, and recovers from failures.
 *
 * One thread runs everything from a single event loop over the control hub
 * (executor messages, new connections, losses) with a 100 ms tick for
 * heartbeat checks and progress. State per task: pending, running (on one
 * executor, with the attempt number the result must carry) or done. A
 * result of an older attempt is ignored except for freeing its slot.
 *
 * Scheduling: pending map tasks first; reduce tasks become runnable when the
 * tracker has every map output, or, with shuffle.reduce_slowstart below 1,
 * once that share of the maps has committed and no map task is pending
 * (such an early reduce task reads the outputs as they come; the executor
 * feeds its reader). Early reduce tasks take only slots no map task waits
 * for: when a map task must run again (a failure, a lost output) and no
 * slot is free, the driver cancels the most recently started early reduce
 * task that is still running (CANCEL); it gives up if it still waits for
 * map outputs, and goes back to pending without counting as a failure.
 * Each reduce task prefers the executor
 * holding the largest share of its input bytes; a first pass fills every
 * executor's free slots with tasks it is preferred for, a second pass gives
 * what is left to any free slot (so a task waits for its preferred executor
 * only while that one has no free slot and nobody else does either). The
 * rules themselves (preferences, which task a slot takes, whether a lost
 * output is still needed) are functions over plain state in
 * executor/scheduler.c; this file keeps the state and does the messaging.
 *
 * Failures:
 * - a task that fails is retried (on another executor when there is one)
 *   until task.max_failures attempts failed;
 * - a reduce task that cannot fetch a block names the map: that output is
 *   unregistered everywhere (MAP_LOST), the map task runs again, and the
 *   reduce task waits for it; more than stage.max_attempts such rounds fail
 *   the job;
 * - an executor whose connection breaks or that misses heartbeats for
 *   executor.heartbeat_timeout is lost: its running tasks go back to
 *   pending and every map output it held is recomputed. Under MPI a lost
 *   rank ends the job with a message naming it.
 * - an interrupt (sp__driver_interrupt, from a SIGINT/SIGTERM handler) fails
 *   the run with SP_ERR_CANCELED at the loop's next tick; the run then shuts
 *   its executors down and removes what it wrote to the output, as any
 *   failed run does (a second interrupt stops waiting for executors).
 *
 * Testing hook (local mode): SPATE_FAULT_KILL_EXECUTOR=ID:STAGE:N[:stop]
 * sends SIGKILL (or SIGSTOP, to test the heartbeat timeout) to executor ID
 * (one the launcher started) once N tasks of STAGE (map or reduce) are done;
 * STAGE start kills it as soon as it has registered.
 * SPATE_FAULT_STOP_DRIVER=STAGE:N makes the driver stop its own process
 * (SIGSTOP) once N tasks of STAGE are done: its executors must notice the
 * silence (executor.driver_timeout) and exit.
 */
#include "executor.h"

#include "common_int.h"
#include "graph_int.h"
#include "control/ctl.h"
#include "protocol.h"
#include "scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum sp_dexec_state {
    SP_DEXEC_CONNECTED = 0,
    SP_DEXEC_REGISTERED = 1,
    SP_DEXEC_READY = 2,
    SP_DEXEC_LOST = 3,
    SP_DEXEC_DONE = 4,
} sp_dexec_state_t;

typedef struct sp_dexec {
    sp_dexec_state_t state;
    sp__ctl_conn_t *conn; /* owned by the hub */
    uint32_t busy;
    uint64_t last_seen_ns;
    char address[512];
    uint32_t fatal_signal; /* its FATAL report: the signal it is dying of; 0: none */
    /*
     * Its CPU clock (RESULT, HEARTBEAT): the latest reading, and per stage the
     * readings at the stage's start (or its first one after it) and latest.
     */
    uint64_t cpu_ns;
    bool cpu_known;
    bool stage_cpu_set[SP_STAGES];
    uint64_t stage_cpu0[SP_STAGES], stage_cpu1[SP_STAGES];
    sp__executor_report_t rep;
} sp_dexec_t;

/* A task beside its scheduler state (a stage's sched[i]: its state and the executor to avoid). */
typedef struct sp_dtask {
    uint32_t attempt;  /* of the running attempt, or the next */
    uint32_t failures; /* failed attempts */
    uint32_t executor; /* running on, or (map) whose output is registered */
    uint64_t task_id;
    uint64_t started_ns; /* of the running attempt, for task.timeout */
    /*
     * The first attempt that succeeded: its metrics are the task's in the
     * job's result, once, even while a lost output is computed again.
     */
    bool counted;
    bool early;         /* reduce: the running attempt started before every map output was in */
    bool canceling;     /* reduce: the driver sent CANCEL for the running attempt */
    uint32_t resubmits; /* graph: attempts that found a shuffle they need not computed */
    sp__task_metrics_t metrics;
    char *last_error; /* the most recent failure, for the job's final message */
} sp_dtask_t;

/*
 * A stage as the driver runs it. A two-stage job has three, at the indices
 * of their kinds (sample, map, reduce; no sample tasks unless it
 * range-partitions). A graph job has a map stage per shuffle (after a sample
 * stage when the shuffle sorts) and a reduce-kind stage per action; the
 * report sums stages by kind.
 */
typedef struct sp_dstage {
    int kind;        /* SP_STAGE_SAMPLE, _MAP or _REDUCE */
    uint32_t gstage; /* graph jobs: the graph's stage its tasks name; 0 otherwise */
    int32_t shuffle; /* the shuffle it writes (sample, map) or reads (reduce of a 2-stage job) */
    int32_t action;  /* graph jobs: the action it computes; -1 otherwise */
    uint32_t ntasks, done;
    sp_dtask_t *tasks;
    sp__sched_task_t *sched;
    uint32_t *preferred; /* per task: the executor it prefers (UINT32_MAX: none); NULL: none */
    bool preferred_valid;
    uint64_t start_ns, end_ns;        /* first launch; when its last task was done */
    uint64_t records, bytes, task_ns; /* first successful attempts' */
    char name[64]; /* "map task 3", "stage 2 (join) task 3": what messages call it */
} sp_dstage_t;

/* A shuffle: its map outputs are entries base .. base + maps - 1 of the driver's per-map arrays. */
typedef struct sp_dshuffle {
    uint64_t id;
    uint32_t maps, partitions, base;
    uint32_t map_stage, sample_stage; /* sample_stage UINT32_MAX: none */
    uint32_t registered;              /* outputs registered now */
    uint32_t sample_per_map;
    bool sampling; /* range bounds still to compute */
    sp_key_compare_fn_t compare;
    void *compare_arg;
    unsigned char *samples;
    size_t samples_len;
    void *bounds_blob;
    size_t bounds_len;
} sp_dshuffle_t;

struct sp__driver {
    sp__driver_opts_t o;
    sp__ctl_hub_t *hub;
    sp_job_plan_t plan;
    bool planned;
    uint64_t shuffle_id; /* of shuffle 0; a graph's shuffle s is shuffle_id + s */
    char app_id[64];
    sp_map_output_tracker_t *tracker;

    sp_dexec_t *execs;
    uint32_t nexecs, cap_execs;

    sp_dstage_t *stages;
    uint32_t nstages;
    sp_dshuffle_t *shuffles;
    uint32_t nshuffles;
    uint32_t nslots;              /* map outputs of every shuffle */
    sp_map_status_t **map_status; /* registered outputs, for locality */
    void **map_blob;              /* their serialized form, for late executors */
    size_t *map_blob_len;
    uint64_t *map_moved_ns; /* when its output last moved from memory to disk; 0: never */
    /* Graph jobs. */
    sp_graph_t *graph;
    uint32_t action;        /* the action running now */
    uint32_t *action_stage; /* per action: its stage */
    uint32_t **cached;      /* per dataset (persisted ones): per partition the holder + 1; 0 none */
    uint32_t skips_counted; /* the action (+ 1) whose skipped stages are counted */
    bool *need, *visited;   /* per stage: the scheduler's marks, sized once */

    uint64_t next_task_id;
    uint64_t heartbeat_timeout_ns;
    uint64_t heartbeat_interval_ns; /* how often executors are pinged */
    uint64_t task_timeout_ns;       /* 0: none */
    uint64_t last_ping_ns;
    uint32_t replacements; /* executors the launcher is starting in place of lost ones */
    int64_t max_failures, max_stage_attempts;
    double slowstart; /* shuffle.reduce_slowstart */
    uint32_t stage_attempts;
    sp__driver_report_t rep;

    /* fault hook */
    int64_t kill_exec, kill_after;
    int kill_stage;
    int kill_signal;
    bool killed;
    int stop_stage; /* SPATE_FAULT_STOP_DRIVER: -1 none */
    int64_t stop_after;
    sp__output_t *output; /* the run's hold on --output; NULL: none */
    /* Executors a launcher reported gone (sp__driver_lose_executor, any thread). */
    pthread_mutex_t lose_lock;
    char (*lose_names)[256];
    size_t nlose, cap_lose;
    uint64_t starved_since; /* replaceable: when the last executor was lost; 0: not starved */
    uint64_t register_ns;
};

static const char *const sp_stage_names[SP_STAGES] = {"sample", "map", "reduce"};

/* ------------------------------------------------------------------------ */
/* Sending                                                                   */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_drv_send(sp__driver_t *d, uint32_t e, uint16_t type, const void *buf,
                               size_t len)
{
    sp_dexec_t *x = &d->execs[e];

    if (x->conn == NULL)
        return SP_RAISE(SP_ERR_PEER_LOST, "executor %u is gone", e);
    return sp__ctl_send(x->conn, type, buf, len);
}

/* Sends to every ready executor; one that cannot be reached is handled when its loss shows. */
static void sp_drv_broadcast(sp__driver_t *d, uint16_t type, const void *buf, size_t len)
{
    for (uint32_t e = 0; e < d->nexecs; e++)
        if (d->execs[e].state == SP_DEXEC_READY && sp_drv_send(d, e, type, buf, len) != SP_OK)
            sp_warn("message to executor %u failed: %s", e, sp_last_error());
}

/* ------------------------------------------------------------------------ */
/* Executors                                                                 */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_drv_new_exec(sp__driver_t *d, sp__ctl_conn_t *conn, uint32_t *id_p)
{
    sp_status_t st;

    if (d->nexecs == d->cap_execs) {
        uint32_t cap = d->cap_execs ? 2 * d->cap_execs : 8;
        sp_dexec_t *x = sp__realloc(d->execs, cap * sizeof(*x));
        if (x == NULL) {
            sp__ctl_close(conn);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u executors", cap);
        }
        d->execs = x;
        d->cap_execs = cap;
    }
    memset(&d->execs[d->nexecs], 0, sizeof(d->execs[0]));
    d->execs[d->nexecs].conn = conn;
    d->execs[d->nexecs].rep.id = d->nexecs;
    d->execs[d->nexecs].last_seen_ns = sp__now_ns();
    {
        char name[32];
        snprintf(name, sizeof(name), "executor %u", d->nexecs);
        sp__ctl_set_peer_name(conn, name);
    }
    if ((st = sp__ctl_hub_add(d->hub, conn, d->nexecs)) != SP_OK)
        return st;
    *id_p = d->nexecs++;
    return SP_OK;
}

sp_status_t sp__driver_add_conn(sp__driver_t *d, sp__ctl_conn_t *conn)
{
    uint32_t id;

    return sp_drv_new_exec(d, conn, &id);
}

static uint32_t sp_drv_ready_count(const sp__driver_t *d)
{
    uint32_t n = 0;

    for (uint32_t e = 0; e < d->nexecs; e++)
        n += d->execs[e].state == SP_DEXEC_READY;
    return n;
}

/* The shuffle whose outputs include map slot (an index into the per-map arrays). */
static sp_dshuffle_t *sp_drv_slot_shuffle(sp__driver_t *d, uint32_t slot)
{
    for (uint32_t s = 0; s < d->nshuffles; s++)
        if (slot - d->shuffles[s].base < d->shuffles[s].maps)
            return &d->shuffles[s];
    return NULL;
}

/* Map output slot is lost: unregistered everywhere, its map task pending again. */
static void sp_drv_lose_map(sp__driver_t *d, uint32_t slot, const char *why)
{
    sp_dshuffle_t *sh = sp_drv_slot_shuffle(d, slot);
    sp_dstage_t *ms = &d->stages[sh->map_stage];
    uint32_t map = slot - sh->base;
    sp_dtask_t *t = &ms->tasks[map];
    sp__sched_task_t *ts = &ms->sched[map];
    sp__msg_map_lost_t lost = {.shuffle_id = sh->id, .map_id = map, .executor_id = t->executor};
    void *buf = NULL;
    size_t len = 0;

    if (ts->state != SP__SCHED_DONE)
        return;
    if (d->graph != NULL)
        sp_info("output of %s %u (shuffle %u) on executor %u lost (%s): it is computed again "
                "when needed",
                ms->name, map, (uint32_t)(sh - d->shuffles), t->executor, why);
    else
        sp_info("map output %u on executor %u lost (%s): recomputing it", map, t->executor, why);
    sp_map_output_tracker_unregister_output(d->tracker, sh->id, map);
    sp_map_status_destroy(d->map_status[slot]);
    d->map_status[slot] = NULL;
    free(d->map_blob[slot]);
    d->map_blob[slot] = NULL;
    for (uint32_t i = 0; i < d->nstages; i++)
        d->stages[i].preferred_valid = false;
    if (sp__msg_map_lost_encode(&lost, &buf, &len) == SP_OK)
        sp_drv_broadcast(d, SP_MSG_MAP_LOST, buf, len);
    free(buf);
    ts->state = SP__SCHED_PENDING;
    t->attempt++;
    ts->avoid = lost.executor_id;
    ms->done--;
    sh->registered--;
    d->rep.stages[SP_STAGE_MAP].done--;
    d->rep.maps_recomputed++;
}

/* ------------------------------------------------------------------------ */
/* Graph jobs: cached partitions and what a stage reads                      */
/* ------------------------------------------------------------------------ */

/*
 * What the driver knows of a persisted partition: 0 never cached, e + 1
 * cached on executor e, SP_DRV_LOST cached once and lost since (its
 * executor was lost, or a task found it evicted): caching it again is a
 * recomputation, which the report counts.
 */
#define SP_DRV_LOST UINT32_MAX

/* A task that spills at least this much says so at info level. */
#define SP_DRV_SPILL_LOG_BYTES (UINT64_C(64) << 20)

/* Executor e's cached partitions are gone with it. */
static void sp_drv_forget_cached(sp__driver_t *d, uint32_t e)
{
    for (uint32_t i = 0; d->graph != NULL && i < d->graph->ndatasets; i++)
        for (uint32_t p = 0; d->cached[i] != NULL && p < d->graph->datasets[i]->partitions; p++)
            if (d->cached[i][p] == e + 1)
                d->cached[i][p] = SP_DRV_LOST;
}

/* Whether every partition of ds is cached on a ready executor. */
static bool sp_drv_cached_all(const sp__driver_t *d, const sp_dataset_t *ds)
{
    const uint32_t *loc = d->cached[ds->id];

    if (loc == NULL)
        return false;
    for (uint32_t p = 0; p < ds->partitions; p++)
        if (loc[p] == 0 || loc[p] == SP_DRV_LOST || d->execs[loc[p] - 1].state != SP_DEXEC_READY)
            return false;
    return true;
}

/*
 * The dataset and partition task i of stage s starts from: a map stage's
 * task computes a partition of one of the shuffle's inputs, an action's its
 * dataset's.
 */
static const sp_dataset_t *sp_drv_task_input(const sp__driver_t *d, const sp_dstage_t *s,
                                             uint32_t i, uint32_t *partition_p)
{
    const sp_graph_t *g = d->graph;
    uint32_t input;

    if (s->action >= 0) {
        *partition_p = i;
        return g->actions[s->action].ds;
    }
    sp__graph_map_input(&g->shuffles[s->gstage], i, &input, partition_p);
    return g->shuffles[s->gstage].inputs[input];
}

/*
 * Walks up from ds through narrow operations: the shuffle its pipeline reads
 * (-1: a source, or a persisted dataset cached whole, ends it first).
 * partition: when given (not UINT32_MAX), a persisted dataset whose block
 * for it is cached on a ready executor ends the walk too, and *holder_p
 * (when not NULL) names that executor.
 */
static int32_t sp_drv_walk(const sp__driver_t *d, const sp_dataset_t *ds, uint32_t partition,
                           uint32_t *holder_p)
{
    for (;;) {
        const uint32_t *loc = d->cached[ds->id];
        if (ds->persisted && partition != UINT32_MAX && loc != NULL && loc[partition] != 0 &&
            loc[partition] != SP_DRV_LOST && d->execs[loc[partition] - 1].state == SP_DEXEC_READY) {
            if (holder_p != NULL)
                *holder_p = loc[partition] - 1;
            return -1;
        }
        if (ds->persisted && partition == UINT32_MAX && sp_drv_cached_all(d, ds))
            return -1;
        if (ds->shuffle >= 0)
            return ds->shuffle;
        if (ds->parent == NULL)
            return -1;
        ds = ds->parent;
    }
}

/* Clears what the driver knew of task i's cached partitions: a block it expected was not there. */
static void sp_drv_uncache_task(sp__driver_t *d, const sp_dstage_t *s, uint32_t i)
{
    uint32_t p;
    const sp_dataset_t *ds = sp_drv_task_input(d, s, i, &p);

    for (; ds != NULL; ds = ds->shuffle >= 0 ? NULL : ds->parent)
        if (ds->persisted && d->cached[ds->id] != NULL && d->cached[ds->id][p] != 0)
            d->cached[ds->id][p] = SP_DRV_LOST;
}

/* Records the blocks task i of stage s put in executor e's block store. */
static sp_status_t sp_drv_note_cached(sp__driver_t *d, const sp_dstage_t *s, uint32_t i, uint32_t e,
                                      const sp__msg_result_t *r)
{
    uint32_t p;

    (void)sp_drv_task_input(d, s, i, &p);
    for (uint32_t c = 0; c < r->ncached; c++) {
        uint32_t id = r->cached[c];
        const sp_dataset_t *ds;
        if (id >= d->graph->ndatasets || !(ds = d->graph->datasets[id])->persisted ||
            p >= ds->partitions)
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "executor %u reported caching dataset %u, which is not persisted", e,
                            id);
        if (d->cached[id] == NULL &&
            (d->cached[id] = sp__calloc(ds->partitions, sizeof(uint32_t))) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the cache map of dataset %u", id);
        if (d->cached[id][p] == SP_DRV_LOST)
            d->rep.blocks_recomputed++;
        d->cached[id][p] = e + 1;
        d->rep.blocks_cached++;
    }
    return SP_OK;
}

/* Whether pid is an executor process the launcher started (local mode). */
static bool sp_drv_launched(const sp__driver_t *d, uint32_t pid)
{
    for (size_t i = 0; pid != 0 && i < d->o.npids; i++)
        if (d->o.pids[i] > 0 && (uint32_t)d->o.pids[i] == pid)
            return true;
    return false;
}

/* SIGKILLs executor e when the launcher started it; returns whether it did. */
static bool sp_drv_end_process(sp__driver_t *d, uint32_t e)
{
    const sp_dexec_t *x = &d->execs[e];

    if (!sp_drv_launched(d, x->rep.pid))
        return false;
    kill((pid_t)x->rep.pid, SIGKILL);
    return true;
}

/*
 * Attempt `attempt` of task i of stage failed on executor e, with status and
 * the failure in msg: the task goes back to pending, to run elsewhere when
 * it can, and the failure counts toward task.max_failures. Returns the job's
 * failure once the task has failed that often, and at once for bad input
 * (SP_ERR_BAD_INPUT: the job's data is wrong, and no retry can fix it).
 */
static sp_status_t sp_drv_task_failed(sp__driver_t *d, uint32_t stage, uint32_t i, uint32_t attempt,
                                      uint32_t e, sp_status_t status, const char *msg)
{
    sp_dstage_t *sg = &d->stages[stage];
    sp_dtask_t *t = &sg->tasks[i];
    sp__sched_task_t *ts = &sg->sched[i];
    char *copy = strdup(msg);

    if (copy != NULL) {
        free(t->last_error);
        t->last_error = copy;
    }
    if (ts->state == SP__SCHED_RUNNING) {
        ts->state = SP__SCHED_PENDING;
        t->attempt++;
    }
    t->failures++;
    ts->avoid = e;
    d->rep.task_failures++;
    if (status == SP_ERR_BAD_INPUT)
        return SP_RAISE(SP_ERR_BAD_INPUT,
                        "%s task %u failed on bad input, which no retry can fix (attempt %u on "
                        "executor %u): %s",
                        sg->name, i, attempt, e, msg);
    sp_warn("%s task %u attempt %u failed on executor %u (%u of %lld): %s", sg->name, i, attempt, e,
            t->failures, (long long)d->max_failures, msg);
    if (t->failures >= (uint32_t)d->max_failures)
        return SP_RAISE(status,
                        "%s task %u failed %u times (task.max_failures), most recent failure "
                        "(attempt %u on executor %u): %s",
                        sg->name, i, t->failures, attempt, e, msg);
    return SP_OK;
}

/*
 * Whether map output slot is still needed: a two-stage job's, by a reduce
 * task that has not finished. A graph job's lost output is only marked
 * pending: it is computed again when a stage that reads it runs.
 */
static bool sp_drv_map_needed(const sp__driver_t *d, uint32_t slot)
{
    const sp_map_status_t *s = d->map_status[slot];

    if (d->graph != NULL)
        return true;
    return sp__sched_map_needed(s != NULL ? s->lengths : NULL, d->stages[SP_STAGE_REDUCE].sched,
                                d->stages[SP_STAGE_REDUCE].ntasks, d->shuffles[0].sampling);
}

static uint32_t sp_drv_starting_count(const sp__driver_t *d)
{
    uint32_t n = 0;

    for (uint32_t e = 0; e < d->nexecs; e++)
        n += d->execs[e].state == SP_DEXEC_CONNECTED || d->execs[e].state == SP_DEXEC_REGISTERED;
    return n;
}

/*
 * Executor e is lost: why says how the driver found out. With describe, the
 * launcher (local mode) is asked how the process ended, which then names the
 * cause ("died of SIGSEGV"). Its running tasks fail, each failure counting
 * toward task.max_failures (an executor that dies while running a task is
 * that task's failure: a crash in job code), its map outputs that unfinished
 * reduce tasks still need are recomputed (those nobody needs any more are
 * not), and the launcher may start a replacement. Under MPI a lost rank ends
 * the job.
 */
static sp_status_t sp_drv_exec_lost(sp__driver_t *d, uint32_t e, const char *why, bool describe)
{
    sp_dexec_t *x = &d->execs[e];
    char how[160] = "", cause[640], msg[1024];
    sp_status_t first = SP_OK;
    char first_msg[1024] = "";

    if (x->state == SP_DEXEC_LOST || x->state == SP_DEXEC_DONE)
        return SP_OK;
    if (d->o.listen_fd < 0 && d->o.npids == 0)
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "rank %u (%s, pid %u) was lost: %s; under MPI that ends "
                        "the job",
                        e, x->rep.host, x->rep.pid, why);
    x->state = SP_DEXEC_LOST;
    x->rep.lost = true;
    x->conn = NULL;
    sp__ctl_hub_remove(d->hub, e);
    d->rep.executors_lost++;
    if (d->o.executor_ended != NULL && sp_drv_launched(d, x->rep.pid) &&
        d->o.executor_ended(d->o.executor_ended_arg, x->rep.pid, 2000, how, sizeof(how))) {
        d->replacements++;
        d->rep.executors_relaunched++;
    }
    if (how[0] == '\0' && x->fatal_signal != 0) {
        const char *name = sp__signal_name((int)x->fatal_signal);
        if (name != NULL)
            snprintf(how, sizeof(how), "died of %s", name);
        else
            snprintf(how, sizeof(how), "died of signal %u", x->fatal_signal);
    }
    if (describe && how[0] != '\0')
        snprintf(cause, sizeof(cause), "executor %u (pid %u) %s", e, x->rep.pid, how);
    else
        snprintf(cause, sizeof(cause), "executor %u (pid %u) was lost: %s", e, x->rep.pid, why);
    sp_warn("%s", cause);
    for (uint32_t s = 0; s < d->nstages; s++)
        for (uint32_t i = 0; i < d->stages[s].ntasks; i++) {
            sp_dtask_t *t = &d->stages[s].tasks[i];
            sp_status_t st;
            if (d->stages[s].sched[i].state != SP__SCHED_RUNNING || t->executor != e)
                continue;
            snprintf(msg, sizeof(msg), "%s while running %s task %u", cause, d->stages[s].name, i);
            st = sp_drv_task_failed(d, s, i, t->attempt, e, SP_ERR_PEER_LOST, msg);
            if (st != SP_OK && first == SP_OK) {
                first = st;
                snprintf(first_msg, sizeof(first_msg), "%s", sp_last_error());
            }
        }
    for (uint32_t slot = 0; slot < d->nslots; slot++) {
        const sp_dshuffle_t *sh = sp_drv_slot_shuffle(d, slot);
        const sp_dstage_t *ms = &d->stages[sh->map_stage];
        uint32_t m = slot - sh->base;
        if (ms->sched[m].state == SP__SCHED_DONE && ms->tasks[m].executor == e &&
            sp_drv_map_needed(d, slot))
            sp_drv_lose_map(d, slot, "its executor was lost");
    }
    sp_drv_forget_cached(d, e);
    sp_map_output_tracker_remove_executor(d->tracker, e);
    x->busy = 0;
    if (d->o.executor_event != NULL)
        d->o.executor_event(d->o.executor_event_arg, &x->rep, true);
    if (first != SP_OK)
        return SP_RAISE(first, "%s", first_msg);
    if (sp_drv_ready_count(d) > 0)
        return SP_OK;
    if (d->o.replaceable || d->replacements > 0 || sp_drv_starting_count(d) > 0) {
        if (d->starved_since == 0)
            d->starved_since = sp__now_ns();
        sp_warn("no executor is ready; waiting for %s",
                sp_drv_starting_count(d) > 0 ? "those registering" : "replacements");
        return SP_OK;
    }
    return SP_RAISE(SP_ERR_PEER_LOST, "every executor was lost; the last: %s", cause);
}

typedef struct sp_conf_list {
    const char **k, **v;
    uint32_t n, cap;
    bool failed;
} sp_conf_list_t;

static void sp_drv_conf_add(void *arg, const char *key, const char *value)
{
    sp_conf_list_t *cl = arg;

    if (cl->n == cl->cap) {
        uint32_t cap = cl->cap ? 2 * cl->cap : 32;
        const char **k = realloc(cl->k, cap * sizeof(*k));
        if (k != NULL)
            cl->k = k;
        const char **v = realloc(cl->v, cap * sizeof(*v));
        if (v != NULL)
            cl->v = v;
        if (k == NULL || v == NULL) {
            cl->failed = true;
            return;
        }
        cl->cap = cap;
    }
    cl->k[cl->n] = key;
    cl->v[cl->n++] = value;
}

static sp_status_t sp_drv_on_register(sp__driver_t *d, uint32_t e, const void *buf, size_t len)
{
    sp_dexec_t *x = &d->execs[e];
    sp__msg_register_t reg;
    sp__msg_job_t job = {0};
    const sp_job_params_t *p = d->o.params;
    void *out = NULL;
    size_t out_len = 0;
    sp_status_t st;

    if ((st = sp__msg_register_decode(buf, len, &reg)) != SP_OK)
        return st;
    if (x->state != SP_DEXEC_CONNECTED)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor %u registered twice", e);
    snprintf(x->rep.host, sizeof(x->rep.host), "%.63s", reg.host);
    snprintf(x->rep.name, sizeof(x->rep.name), "%s", reg.name);
    x->rep.pid = reg.pid;
    x->state = SP_DEXEC_REGISTERED;
    job = (sp__msg_job_t){.executor_id = e,
                          .shuffle_id = d->shuffle_id,
                          .app_id = d->app_id,
                          .job_name = (char *)d->o.job_name,
                          .input = (char *)p->input,
                          .output = (char *)p->output,
                          .size = p->size,
                          .partitions = p->partitions,
                          .executors = p->executors,
                          .slots = p->slots,
                          .args = (char **)p->args,
                          .nargs = (uint32_t)p->nargs,
                          .plan = d->plan};
    {
        /* The driver's explicit settings, so every executor runs with the same configuration. */
        sp_conf_list_t cl = {0};
        sp_conf_foreach_set(d->o.conf, sp_drv_conf_add, &cl);
        if (cl.failed)
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for the configuration list");
        else {
            job.conf_keys = (char **)cl.k;
            job.conf_values = (char **)cl.v;
            job.nconf = cl.n;
            st = sp__msg_job_encode(&job, &out, &out_len);
        }
        free(cl.k);
        free(cl.v);
    }
    if (st == SP_OK)
        st = sp_drv_send(d, e, SP_MSG_JOB, out, out_len);
    free(out);
    return st;
}

/*
 * A reading of executor e's CPU clock, during stage (-1: none running): the
 * stage's share of it is the difference from the reading the stage started
 * with (the executor's latest before the stage, or this one).
 */
static void sp_drv_note_cpu(sp__driver_t *d, uint32_t e, int stage, uint64_t cpu_ns)
{
    sp_dexec_t *x = &d->execs[e];

    if (stage >= 0 && d->rep.stages[stage].start_ns != 0) {
        if (!x->stage_cpu_set[stage]) {
            x->stage_cpu0[stage] = x->cpu_known ? SP_MIN(x->cpu_ns, cpu_ns) : cpu_ns;
            x->stage_cpu_set[stage] = true;
        }
        x->stage_cpu1[stage] = SP_MAX(x->stage_cpu1[stage], cpu_ns);
    }
    x->cpu_ns = SP_MAX(x->cpu_ns, cpu_ns);
    x->cpu_known = true;
}

/* The stage running now (the latest started and not ended), or -1. */
static int sp_drv_running_stage(const sp__driver_t *d)
{
    for (int s = SP_STAGES - 1; s >= 0; s--)
        if (d->rep.stages[s].start_ns != 0 && d->rep.stages[s].end_ns == 0)
            return s;
    return -1;
}

/* Each stage's core time from the executors' readings (sp__stage_report_t's cpu_ns, core_ns). */
static void sp_drv_stage_cpu(sp__driver_t *d)
{
    uint64_t now = sp__now_ns();

    for (int s = 0; s < SP_STAGES; s++) {
        sp__stage_report_t *st = &d->rep.stages[s];
        uint64_t end = st->end_ns != 0 ? st->end_ns : now, slots = 0, cpu = 0;

        if (st->start_ns == 0)
            continue;
        for (uint32_t e = 0; e < d->nexecs; e++) {
            const sp_dexec_t *x = &d->execs[e];
            if (!x->stage_cpu_set[s])
                continue;
            cpu += x->stage_cpu1[s] - x->stage_cpu0[s];
            slots += x->rep.slots;
        }
        st->cpu_ns = cpu;
        st->core_ns = end > st->start_ns ? slots * (end - st->start_ns) : 0;
    }
    /* The shuffle as a whole: map and reduce stages, which overlap under slow start. */
    {
        const sp__stage_report_t *map = &d->rep.stages[SP_STAGE_MAP];
        const sp__stage_report_t *red = &d->rep.stages[SP_STAGE_REDUCE];
        uint64_t end = red->end_ns != 0 ? red->end_ns : now, slots = 0, cpu = 0;

        for (uint32_t e = 0; e < d->nexecs && map->start_ns != 0; e++) {
            const sp_dexec_t *x = &d->execs[e];
            uint64_t c0 = UINT64_MAX, c1 = 0;
            for (int s = SP_STAGE_MAP; s <= SP_STAGE_REDUCE; s++)
                if (x->stage_cpu_set[s]) {
                    c0 = SP_MIN(c0, x->stage_cpu0[s]);
                    c1 = SP_MAX(c1, x->stage_cpu1[s]);
                }
            if (c0 == UINT64_MAX)
                continue;
            cpu += c1 - c0;
            slots += x->rep.slots;
        }
        d->rep.cpu_ns = cpu;
        d->rep.core_ns =
            map->start_ns != 0 && end > map->start_ns ? slots * (end - map->start_ns) : 0;
    }
}

static sp_status_t sp_drv_on_ready(sp__driver_t *d, uint32_t e, const void *buf, size_t len)
{
    sp_dexec_t *x = &d->execs[e];
    sp__msg_ready_t ready;
    sp_status_t st;

    if ((st = sp__msg_ready_decode(buf, len, &ready)) != SP_OK)
        return st;
    if (x->state != SP_DEXEC_REGISTERED)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor %u sent READY before registering", e);
    snprintf(x->address, sizeof(x->address), "%s", ready.address);
    x->rep.slots = ready.slots;
    x->rep.memory = ready.memory;
    x->rep.numa_node = ready.numa_node;
    snprintf(x->rep.cpuset, sizeof(x->rep.cpuset), "%.63s", ready.cpuset);
    sp_drv_note_cpu(d, e, sp_drv_running_stage(d), ready.cpu_ns);
    x->state = SP_DEXEC_READY;
    d->starved_since = 0;
    if (d->replacements > 0)
        d->replacements--;
    if (d->o.executor_event != NULL)
        d->o.executor_event(d->o.executor_event_arg, &x->rep, false);
    sp_info("executor %u ready on %s (pid %u): %u slots, %llu MiB, NUMA node %u cpus %s", e,
            x->rep.host, x->rep.pid, ready.slots, (unsigned long long)(ready.memory >> 20),
            ready.numa_node, ready.cpuset);
    /* A late executor learns what the others already know. */
    for (uint32_t sh = 0; sh < d->nshuffles; sh++)
        if (d->shuffles[sh].bounds_blob != NULL &&
            (st = sp_drv_send(d, e, SP_MSG_BOUNDS, d->shuffles[sh].bounds_blob,
                              d->shuffles[sh].bounds_len)) != SP_OK)
            return st;
    for (uint32_t m = 0; m < d->nslots; m++)
        if (d->map_blob[m] != NULL && (st = sp_drv_send(d, e, SP_MSG_MAP_OUTPUT, d->map_blob[m],
                                                        d->map_blob_len[m])) != SP_OK)
            return st;
    for (uint32_t i = 0; i < d->nstages; i++)
        d->stages[i].preferred_valid = false;
    return SP_OK;
}

static sp_status_t sp_drv_on_heartbeat(sp__driver_t *d, uint32_t e, const void *buf, size_t len,
                                       bool bye)
{
    sp_dexec_t *x = &d->execs[e];
    sp__msg_heartbeat_t hb;
    sp_status_t st;

    if ((st = sp__msg_heartbeat_decode(buf, len, &hb)) != SP_OK)
        return st;
    x->rep.peak_rss = SP_MAX(x->rep.peak_rss, hb.peak_rss);
    x->rep.peak_anon = SP_MAX(x->rep.peak_anon, hb.peak_anon);
    x->rep.peak_execution = SP_MAX(x->rep.peak_execution, hb.execution_used);
    x->rep.peak_storage = SP_MAX(x->rep.peak_storage, hb.peak_storage);
    sp_drv_note_cpu(d, e, sp_drv_running_stage(d), hb.cpu_ns);
    if (bye)
        x->state = SP_DEXEC_DONE;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Results                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A successful attempt's metrics: the executor's always, the stage's only for
 * the task's first success (first), so a recomputed output counts once.
 */
static void sp_drv_account(sp__driver_t *d, int stage, uint32_t e, const sp__task_metrics_t *m,
                           bool first)
{
    sp__stage_report_t *s = &d->rep.stages[stage];
    sp__executor_report_t *x = &d->execs[e].rep;

    x->busy_ns += m->run_ns;
    x->tasks++;
    x->peak_execution = SP_MAX(x->peak_execution, m->peak_memory);
    if (stage != SP_STAGE_SAMPLE)
        x->shuffle_bytes += stage == SP_STAGE_MAP ? m->bytes_out : m->bytes_in;
    if (!first)
        return;
    s->records += m->records_in;
    s->bytes += stage == SP_STAGE_MAP ? m->bytes_out : m->bytes_in;
    s->remote_bytes += m->remote_bytes;
    s->spill_bytes += m->spill_bytes;
    s->task_ns += m->run_ns;
    s->sort_ns += m->sort_ns;
    s->spill_ns += m->spill_ns;
    s->merge_ns += m->merge_ns;
    s->fetch_wait_ns += m->fetch_wait_ns;
}

/*
 * The job's result from the first successful attempt of each task, exactly
 * once: a map output recomputed after a loss counts once, like the data it
 * holds, and so does one lost after every reduce task read it (and left
 * pending, not computed again).
 */
static void sp_drv_result(sp__driver_t *d)
{
    sp_job_result_t *r = &d->rep.result;

    memset(r, 0, sizeof(*r));
    r->partitions = d->plan.partitions;
    for (uint32_t s = 0; s < d->nstages; s++) {
        const sp_dstage_t *sg = &d->stages[s];
        if (sg->kind == SP_STAGE_SAMPLE)
            continue;
        if (sg->kind == SP_STAGE_REDUCE && d->graph != NULL)
            r->partitions += sg->ntasks;
        for (uint32_t i = 0; i < sg->ntasks; i++) {
            const sp__task_metrics_t *m = &sg->tasks[i].metrics;
            if (!sg->tasks[i].counted)
                continue;
            if (sg->kind == SP_STAGE_MAP) {
                r->map_records += m->records_in;
            } else {
                r->reduce_records += m->records_in;
                r->output_bytes += m->bytes_out;
            }
            for (unsigned c = 0; c < SP_JOB_COUNTERS; c++)
                r->counters[c] += m->counters[c];
        }
    }
}

/*
 * Registers the output of a map of shuffle sh (the map task index of stage
 * `stage`, or with moved any shuffle and map its status names) on executor e
 * from its status's wire form, and tells every executor. moved: the
 * executor's output of the attempt registered now, evicted from memory to a
 * file (OUTPUT_MOVED); anything else is ignored then (an output lost or
 * replaced meanwhile).
 */
static sp_status_t sp_drv_map_register(sp__driver_t *d, uint32_t e, int32_t shuffle, uint64_t index,
                                       const void *payload, size_t len, bool moved)
{
    sp_map_status_t *status;
    sp_dshuffle_t *sh;
    uint32_t slot;
    void *blob;
    sp_status_t st;

    if ((st = sp_map_status_deserialize(payload, len, &status)) != SP_OK)
        return st;
    if (moved) {
        index = status->map_id;
        shuffle = (int32_t)(status->shuffle_id - d->shuffle_id);
    }
    if (status->shuffle_id < d->shuffle_id || status->shuffle_id - d->shuffle_id >= d->nshuffles ||
        shuffle < 0 || status->shuffle_id != d->shuffles[shuffle].id || status->map_id != index ||
        index >= d->shuffles[shuffle].maps || status->executor_id != e ||
        status->partitions != d->shuffles[shuffle].partitions) {
        st = SP_RAISE(SP_ERR_BAD_FORMAT,
                      "executor %u reported map %llu with the status of shuffle %llu map %llu "
                      "executor %u (%u partitions)",
                      e, (unsigned long long)index, (unsigned long long)status->shuffle_id,
                      (unsigned long long)status->map_id, status->executor_id, status->partitions);
        sp_map_status_destroy(status);
        return st;
    }
    sh = &d->shuffles[shuffle];
    slot = sh->base + (uint32_t)index;
    if (moved && (d->map_status[slot] == NULL || d->map_status[slot]->executor_id != e ||
                  d->map_status[slot]->attempt != status->attempt)) {
        sp_map_status_destroy(status);
        return SP_OK;
    }
    if ((st = sp_map_output_tracker_register_output(d->tracker, status)) != SP_OK ||
        (blob = sp__malloc(len + 1)) == NULL) {
        sp_map_status_destroy(status);
        return st != SP_OK ? st : SP_RAISE(SP_ERR_NOMEM, "no memory for a map status");
    }
    memcpy(blob, payload, len);
    if (d->map_status[slot] == NULL)
        sh->registered++;
    sp_map_status_destroy(d->map_status[slot]);
    free(d->map_blob[slot]);
    d->map_status[slot] = status;
    d->map_blob[slot] = blob;
    d->map_blob_len[slot] = len;
    for (uint32_t i = 0; i < d->nstages; i++)
        d->stages[i].preferred_valid = false;
    if (moved) {
        d->map_moved_ns[slot] = sp__now_ns();
        d->rep.outputs_moved++;
    }
    sp_drv_broadcast(d, SP_MSG_MAP_OUTPUT, blob, len);
    return SP_OK;
}

static sp_status_t sp_drv_sample_done(sp_dshuffle_t *sh, const sp__msg_result_t *r)
{
    unsigned char *grown = sp__realloc(sh->samples, sh->samples_len + r->payload_len + 1);

    if (grown == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu bytes of samples",
                        sh->samples_len + r->payload_len);
    sh->samples = grown;
    memcpy(sh->samples + sh->samples_len, r->payload, r->payload_len);
    sh->samples_len += r->payload_len;
    return SP_OK;
}

/* The stage a RESULT names: by kind (two-stage jobs) or by the graph's stage and kind. */
static int64_t sp_drv_result_stage(const sp__driver_t *d, const sp__msg_result_t *r)
{
    const sp_graph_t *g = d->graph;

    if (g == NULL)
        return r->kind == SP_TASK_KIND_SAMPLE ? SP_STAGE_SAMPLE
               : r->kind == SP_TASK_KIND_MAP  ? SP_STAGE_MAP
                                              : SP_STAGE_REDUCE;
    if (r->stage < g->nshuffles && r->kind == SP_TASK_KIND_MAP)
        return d->shuffles[r->stage].map_stage;
    if (r->stage < g->nshuffles && r->kind == SP_TASK_KIND_SAMPLE &&
        d->shuffles[r->stage].sample_stage != UINT32_MAX)
        return d->shuffles[r->stage].sample_stage;
    if (r->stage >= g->nshuffles && r->stage - g->nshuffles < g->nactions &&
        r->kind == SP_TASK_KIND_REDUCE)
        return d->action_stage[r->stage - g->nshuffles];
    return -1;
}

static sp_status_t sp_drv_on_result(sp__driver_t *d, uint32_t e, const void *buf, size_t len)
{
    sp__msg_result_t r;
    sp_dstage_t *sg;
    sp_dtask_t *t;
    sp__sched_task_t *ts;
    int64_t stage;
    uint32_t slot;
    sp_status_t st;

    if ((st = sp__msg_result_decode(buf, len, &r)) != SP_OK)
        return st;
    if ((stage = sp_drv_result_stage(d, &r)) < 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor %u reported a task of stage %u kind %u", e,
                        r.stage, r.kind);
    sg = &d->stages[stage];
    if (r.index >= sg->ntasks)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor %u reported %s task %u of %u", e, sg->name,
                        r.index, sg->ntasks);
    t = &sg->tasks[r.index];
    ts = &sg->sched[r.index];
    if (ts->state != SP__SCHED_RUNNING || t->task_id != r.task_id || t->executor != e) {
        /* An attempt the driver gave up on (its executor was thought lost, say). */
        sp_debug("ignoring the result of stale task %llu", (unsigned long long)r.task_id);
        return SP_OK;
    }
    if (d->execs[e].busy > 0)
        d->execs[e].busy--;
    sp_drv_note_cpu(d, e, sg->kind, r.cpu_ns);
    if (r.status == SP_OK) {
        if (sg->kind == SP_STAGE_MAP)
            st = sp_drv_map_register(d, e, sg->shuffle, r.index, r.payload, r.payload_len, false);
        else if (sg->kind == SP_STAGE_SAMPLE)
            st = sp_drv_sample_done(&d->shuffles[sg->shuffle], &r);
        else if (sg->action >= 0 && !t->counted)
            st = sp__graph_action_add(d->graph, (uint32_t)sg->action, r.payload, r.payload_len);
        if (st == SP_OK && d->graph != NULL && sg->kind != SP_STAGE_SAMPLE)
            st = sp_drv_note_cached(d, sg, r.index, e, &r);
        if (st != SP_OK)
            return st;
        ts->state = SP__SCHED_DONE;
        sg->done++;
        sp_drv_account(d, sg->kind, e, &r.metrics, !t->counted);
        if (r.metrics.spill_bytes >= SP_DRV_SPILL_LOG_BYTES)
            sp_info(
                "%s task %u on executor %u spilled %.1f MiB (%llu spills): its memory was short",
                sg->name, r.index, e, (double)r.metrics.spill_bytes / (1 << 20),
                (unsigned long long)r.metrics.spills);
        if (!t->counted) {
            t->metrics = r.metrics;
            t->counted = true;
            sg->records += r.metrics.records_in;
            sg->bytes += sg->kind == SP_STAGE_MAP ? r.metrics.bytes_out : r.metrics.bytes_in;
            sg->task_ns += r.metrics.run_ns;
        }
        if (sg->done == sg->ntasks) {
            sg->end_ns = sp__now_ns();
            sp_info("%s%s done in %.2f s: %u tasks, %llu records, %llu bytes", sg->name,
                    d->graph != NULL ? "" : " stage", (double)(sg->end_ns - sg->start_ns) / 1e9,
                    sg->ntasks, (unsigned long long)sg->records, (unsigned long long)sg->bytes);
        }
        d->rep.stages[sg->kind].done++;
        if (d->rep.stages[sg->kind].done == d->rep.stages[sg->kind].tasks)
            d->rep.stages[sg->kind].end_ns = sp__now_ns();
        return SP_OK;
    }
    if (sg->kind == SP_STAGE_REDUCE && r.status == SP_ERR_CANCELED && t->canceling) {
        /* It gave its slot to a map task, as asked: not a failure. */
        ts->state = SP__SCHED_PENDING;
        t->attempt++;
        t->canceling = false;
        d->rep.reduces_canceled++;
        sp_info("reduce task %u on executor %u gave its slot back: %s", r.index, e, r.message);
        return SP_OK;
    }
    if (d->graph != NULL && r.status == SP_ERR_FETCH_FAILED && r.shuffle < d->nshuffles &&
        r.failed_map == UINT64_MAX) {
        /*
         * A shuffle the task needs was never computed, or is gone: a cached
         * block the driver counted on was not there (evicted). The task
         * waits for the shuffle, which the scheduler now sees it needs.
         */
        ts->state = SP__SCHED_PENDING;
        t->attempt++;
        sp_drv_uncache_task(d, sg, r.index);
        sp_info("%s task %u on executor %u needs shuffle %u, which is not there: computing it "
                "first (%s)",
                sg->name, r.index, e, r.shuffle, r.message);
        if (++t->resubmits > (uint32_t)d->max_stage_attempts)
            return SP_RAISE(SP_ERR_FETCH_FAILED,
                            "%s task %u found its input missing %u times (stage.max_attempts "
                            "%lld); last: %s",
                            sg->name, r.index, t->resubmits, (long long)d->max_stage_attempts,
                            r.message);
        return SP_OK;
    }
    slot = UINT32_MAX;
    if (r.status == SP_ERR_FETCH_FAILED && (sg->kind != SP_STAGE_SAMPLE || d->graph != NULL)) {
        uint32_t shuffle = d->graph != NULL ? r.shuffle : 0;
        if (shuffle < d->nshuffles && r.failed_map < d->shuffles[shuffle].maps)
            slot = d->shuffles[shuffle].base + (uint32_t)r.failed_map;
    }
    if (r.status == SP_ERR_FETCH_FAILED && slot != UINT32_MAX && d->map_moved_ns[slot] != 0 &&
        d->map_moved_ns[slot] >= t->started_ns) {
        /*
         * The map's output moved from memory to disk after this attempt had
         * its status: the output is there, under new keys. Run the task
         * again with them; the map is not lost and the stage not charged.
         */
        ts->state = SP__SCHED_PENDING;
        t->attempt++;
        d->rep.fetches_after_move++;
        sp_info("%s task %u on executor %u read map %llu's output while it moved to disk; "
                "running it again: %s",
                sg->name, r.index, e, (unsigned long long)r.failed_map, r.message);
        return SP_OK;
    }
    if (r.status == SP_ERR_FETCH_FAILED && (sg->kind == SP_STAGE_REDUCE || d->graph != NULL)) {
        ts->state = SP__SCHED_PENDING;
        t->attempt++;
        d->rep.fetch_failures++;
        sp_warn("%s task %u on executor %u could not fetch its input: %s", sg->name, r.index, e,
                r.message);
        if (++d->stage_attempts > (uint32_t)d->max_stage_attempts)
            return SP_RAISE(SP_ERR_FETCH_FAILED,
                            "the %s stage failed to fetch its input %u times (stage.max_attempts "
                            "%lld); last: %s",
                            d->graph != NULL ? sg->name : "reduce", d->stage_attempts,
                            (long long)d->max_stage_attempts, r.message);
        if (slot != UINT32_MAX)
            sp_drv_lose_map(d, slot, "a task could not fetch it");
        d->rep.stages[sg->kind].end_ns = 0;
        return SP_OK;
    }
    /* A status this build does not know is the task's error all the same. */
    st = r.status < 0 && strncmp(sp_status_str((sp_status_t)r.status), "SP_ERR_UNKNOWN", 14) != 0
             ? (sp_status_t)r.status
             : SP_ERR_INTERNAL;
    return sp_drv_task_failed(d, (uint32_t)stage, r.index, r.attempt, e, st, r.message);
}

/* ------------------------------------------------------------------------ */
/* Scheduling                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Each partition's preferred executor for reading shuffle sh
 * (sp__sched_preferred: the one holding the largest share of its bytes).
 * Short of memory, no partition prefers anyone.
 */
static void sp_drv_shuffle_preferred(sp__driver_t *d, const sp_dshuffle_t *sh, uint32_t *out)
{
    uint32_t maps = sh->maps, n = d->nexecs;
    const uint64_t **lengths = sp__calloc(maps + 1, sizeof(*lengths));
    uint32_t *owner = sp__calloc(maps + 1, sizeof(*owner));
    bool *ready = sp__calloc(n + 1, sizeof(*ready));
    uint64_t *bytes = sp__calloc(n + 1, sizeof(*bytes));

    if (lengths == NULL || owner == NULL || ready == NULL || bytes == NULL) {
        for (uint32_t p = 0; p < sh->partitions; p++)
            out[p] = UINT32_MAX;
    } else {
        for (uint32_t m = 0; m < maps; m++)
            if (d->map_status[sh->base + m] != NULL) {
                lengths[m] = d->map_status[sh->base + m]->lengths;
                owner[m] = d->map_status[sh->base + m]->executor_id;
            }
        for (uint32_t e = 0; e < n; e++)
            ready[e] = d->execs[e].state == SP_DEXEC_READY;
        sp__sched_preferred(lengths, owner, maps, sh->partitions, ready, n, bytes, out);
    }
    free(lengths);
    free(owner);
    free(ready);
    free(bytes);
}

/*
 * The executor each task of stage s prefers: a two-stage job's reduce task
 * the one holding most of its partition's bytes; a graph task the one
 * holding its cached partition, else, when its pipeline starts from a
 * shuffle, the one holding most of its partition of it.
 */
static void sp_drv_compute_preferred(sp__driver_t *d, sp_dstage_t *s)
{
    uint32_t **per = NULL;

    s->preferred_valid = true;
    if (d->graph == NULL) {
        sp_drv_shuffle_preferred(d, &d->shuffles[0], s->preferred);
        return;
    }
    per = sp__calloc(d->nshuffles + 1, sizeof(*per));
    for (uint32_t i = 0; i < s->ntasks; i++) {
        uint32_t p, holder = UINT32_MAX;
        const sp_dataset_t *ds = sp_drv_task_input(d, s, i, &p);
        int32_t sh = sp_drv_walk(d, ds, p, &holder);
        s->preferred[i] = holder;
        if (sh < 0 || per == NULL || d->shuffles[sh].registered < d->shuffles[sh].maps)
            continue;
        if (per[sh] == NULL) {
            per[sh] = sp__calloc(d->shuffles[sh].partitions, sizeof(uint32_t));
            if (per[sh] == NULL)
                continue;
            sp_drv_shuffle_preferred(d, &d->shuffles[sh], per[sh]);
        }
        s->preferred[i] = per[sh][p];
    }
    for (uint32_t sh = 0; per != NULL && sh < d->nshuffles; sh++)
        free(per[sh]);
    free(per);
}

static bool sp_drv_maps_complete(const sp__driver_t *d)
{
    return d->stages[SP_STAGE_MAP].done == d->stages[SP_STAGE_MAP].ntasks;
}

/* A pending task of stage s for executor e (sp__sched_pick); pass 0 takes only tasks e prefers. */
static int64_t sp_drv_pick(const sp__driver_t *d, uint32_t s, uint32_t e, int pass, uint32_t alive)
{
    const sp_dstage_t *sg = &d->stages[s];

    return sp__sched_pick(sg->sched, sg->ntasks, sg->preferred, e, pass, alive);
}

static sp_status_t sp_drv_launch(sp__driver_t *d, uint32_t s, uint32_t i, uint32_t e)
{
    sp_dstage_t *sg = &d->stages[s];
    sp_dtask_t *t = &sg->tasks[i];
    sp__msg_task_t msg = {.task_id = d->next_task_id++,
                          .kind = sg->kind == SP_STAGE_SAMPLE ? SP_TASK_KIND_SAMPLE
                                  : sg->kind == SP_STAGE_MAP  ? SP_TASK_KIND_MAP
                                                              : SP_TASK_KIND_REDUCE,
                          .index = i,
                          .attempt = t->attempt,
                          .sample_count =
                              sg->shuffle >= 0 ? d->shuffles[sg->shuffle].sample_per_map : 0,
                          .stage = sg->gstage};
    void *buf = NULL;
    size_t len = 0;
    sp_status_t st;

    if ((st = sp__msg_task_encode(&msg, &buf, &len)) != SP_OK)
        return st;
    st = sp_drv_send(d, e, SP_MSG_TASK, buf, len);
    free(buf);
    if (st != SP_OK)
        return sp_drv_exec_lost(d, e, sp_last_error(), true);
    sg->sched[i].state = SP__SCHED_RUNNING;
    if (sg->start_ns == 0) {
        sg->start_ns = sp__now_ns();
        sp_info("%s%s started: %u tasks", sg->name, d->graph != NULL ? "" : " stage", sg->ntasks);
    }
    t->executor = e;
    t->task_id = msg.task_id;
    t->started_ns = sp__now_ns();
    t->canceling = false;
    t->early = d->graph == NULL && s == SP_STAGE_REDUCE && !sp_drv_maps_complete(d);
    if (t->early)
        d->rep.reduces_early++;
    d->execs[e].busy++;
    if (d->rep.stages[sg->kind].start_ns == 0) {
        int kind = sg->kind;
        d->rep.stages[kind].start_ns = sp__now_ns();
        /* The stage's core time counts from each executor's latest reading. */
        for (uint32_t x = 0; x < d->nexecs; x++)
            if (d->execs[x].cpu_known && !d->execs[x].stage_cpu_set[kind]) {
                d->execs[x].stage_cpu0[kind] = d->execs[x].stage_cpu1[kind] = d->execs[x].cpu_ns;
                d->execs[x].stage_cpu_set[kind] = true;
            }
    }
    return SP_OK;
}

/* Fills free slots with pending tasks of stage s (preferred executors first). */
static sp_status_t sp_drv_fill(sp__driver_t *d, uint32_t s)
{
    sp_dstage_t *sg = &d->stages[s];
    uint32_t alive;
    sp_status_t st;

    if (sg->preferred != NULL && !sg->preferred_valid)
        sp_drv_compute_preferred(d, sg);
    alive = sp_drv_ready_count(d);
    for (int pass = sg->preferred != NULL ? 0 : 1; pass < 2; pass++)
        for (uint32_t e = 0; e < d->nexecs; e++) {
            sp_dexec_t *x = &d->execs[e];
            while (x->state == SP_DEXEC_READY && x->busy < x->rep.slots) {
                int64_t i = sp_drv_pick(d, s, e, pass, alive);
                if (i < 0)
                    break;
                if ((st = sp_drv_launch(d, s, (uint32_t)i, e)) != SP_OK)
                    return st;
            }
        }
    return SP_OK;
}

/* The first pending map task, or -1. */
static int64_t sp_drv_pending_map(const sp__driver_t *d)
{
    const sp_dstage_t *ms = &d->stages[SP_STAGE_MAP];

    for (uint32_t m = 0; m < ms->ntasks; m++)
        if (ms->sched[m].state == SP__SCHED_PENDING)
            return m;
    return -1;
}

/*
 * Map task m waits for a slot while early reduce tasks hold them: cancels
 * the most recently started early reduce task (one not on the executor m
 * avoids, when there is one), unless a cancel is on its way already. It
 * gives its slot back when its reader next waits for map outputs.
 */
static void sp_drv_cancel_early(sp__driver_t *d, uint32_t m)
{
    const sp_dstage_t *rs = &d->stages[SP_STAGE_REDUCE];
    uint32_t avoid = d->stages[SP_STAGE_MAP].sched[m].avoid, n = rs->ntasks;
    int64_t pick = -1, other = -1;
    sp__msg_cancel_t c;
    void *buf = NULL;
    size_t len = 0;

    for (uint32_t i = 0; i < n; i++) {
        const sp_dtask_t *t = &rs->tasks[i];
        if (rs->sched[i].state != SP__SCHED_RUNNING || !t->early)
            continue;
        if (t->canceling)
            return;
        if (t->executor != avoid && (pick < 0 || t->started_ns > rs->tasks[pick].started_ns))
            pick = i;
        if (other < 0 || t->started_ns > rs->tasks[other].started_ns)
            other = i;
    }
    if (pick < 0)
        pick = other;
    if (pick < 0)
        return;
    c.task_id = rs->tasks[pick].task_id;
    if (sp__msg_cancel_encode(&c, &buf, &len) != SP_OK)
        return;
    if (sp_drv_send(d, rs->tasks[pick].executor, SP_MSG_CANCEL, buf, len) == SP_OK) {
        d->stages[SP_STAGE_REDUCE].tasks[pick].canceling = true;
        sp_info("map task %u waits for a slot: canceling reduce task %u on executor %u, which "
                "started before every map output was in",
                m, (uint32_t)pick, rs->tasks[pick].executor);
    }
    free(buf);
}

/* A two-stage job: sample, map, reduce (slow start: early reduce tasks). */
static sp_status_t sp_drv_schedule_job(sp__driver_t *d)
{
    int64_t m;
    sp_status_t st;

    if (d->shuffles[0].sampling)
        return sp_drv_fill(d, SP_STAGE_SAMPLE);
    if (!sp_drv_maps_complete(d)) {
        if ((st = sp_drv_fill(d, SP_STAGE_MAP)) != SP_OK)
            return st;
        if ((m = sp_drv_pending_map(d)) >= 0) {
            /* Map tasks come first: early reduce tasks give their slots back. */
            sp_drv_cancel_early(d, (uint32_t)m);
            return SP_OK;
        }
        if (!sp__sched_reduce_early(d->stages[SP_STAGE_MAP].done, d->stages[SP_STAGE_MAP].ntasks,
                                    false, d->slowstart))
            return SP_OK;
    }
    return sp_drv_fill(d, SP_STAGE_REDUCE);
}

static bool sp_drv_shuffle_complete(const sp__driver_t *d, uint32_t sh)
{
    return !d->shuffles[sh].sampling && d->shuffles[sh].registered == d->shuffles[sh].maps;
}

/* Whether every shuffle stage s's tasks read (as far as the driver knows) is complete. */
/* The datasets graph stage s computes partitions of: an action's, or a shuffle's inputs. */
static uint32_t sp_drv_stage_inputs(const sp__driver_t *d, const sp_dstage_t *s,
                                    const sp_dataset_t *in[2])
{
    const sp__graph_shuffle_t *gs;

    if (s->action >= 0) {
        in[0] = d->graph->actions[s->action].ds;
        return 1;
    }
    gs = &d->graph->shuffles[s->gstage];
    in[0] = gs->inputs[0];
    in[1] = gs->inputs[1];
    return gs->inputs[1] != NULL ? 2 : 1;
}

static bool sp_drv_inputs_complete(const sp__driver_t *d, const sp_dstage_t *s)
{
    const sp_dataset_t *in[2];
    uint32_t n = sp_drv_stage_inputs(d, s, in);

    for (uint32_t i = 0; i < n; i++) {
        int32_t sh = sp_drv_walk(d, in[i], UINT32_MAX, NULL);
        if (sh >= 0 && !sp_drv_shuffle_complete(d, (uint32_t)sh))
            return false;
    }
    return true;
}

/*
 * Marks in need[] the stages stage s waits for: the map stage (and the
 * sample stage while sampling) of every incomplete shuffle it reads, and
 * theirs in turn. visited[] guards the walk (graph shuffles are few).
 */
static void sp_drv_need(const sp__driver_t *d, uint32_t s, bool *need, bool *visited)
{
    const sp_dataset_t *in[2];
    uint32_t n;

    if (visited[s])
        return;
    visited[s] = true;
    need[s] = true;
    n = sp_drv_stage_inputs(d, &d->stages[s], in);
    for (uint32_t i = 0; i < n; i++) {
        int32_t sh = sp_drv_walk(d, in[i], UINT32_MAX, NULL);
        if (sh < 0 || sp_drv_shuffle_complete(d, (uint32_t)sh))
            continue;
        if (d->shuffles[sh].sampling)
            sp_drv_need(d, d->shuffles[sh].sample_stage, need, visited);
        sp_drv_need(d, d->shuffles[sh].map_stage, need, visited);
    }
}

/*
 * Counts the map stages stage s reads, directly or through others, whose
 * shuffle is complete as its action starts: stages the action skips
 * (Spark's skipped stages; those under a cached dataset included).
 */
static void sp_drv_count_skipped(sp__driver_t *d, uint32_t s, bool *visited)
{
    const sp_dataset_t *in[2];
    uint32_t n;

    if (visited[s])
        return;
    visited[s] = true;
    n = sp_drv_stage_inputs(d, &d->stages[s], in);
    for (uint32_t i = 0; i < n; i++) {
        const sp_dataset_t *ds = in[i];
        while (ds->shuffle < 0 && ds->parent != NULL)
            ds = ds->parent;
        if (ds->shuffle < 0 || visited[d->shuffles[ds->shuffle].map_stage])
            continue;
        if (sp_drv_shuffle_complete(d, (uint32_t)ds->shuffle))
            d->rep.stages_skipped++;
        sp_drv_count_skipped(d, d->shuffles[ds->shuffle].map_stage, visited);
    }
}

/* The range bounds of shuffle sh from its samples, to every executor. */
static sp_status_t sp_drv_finish_sampling(sp__driver_t *d, uint32_t sh)
{
    sp_dshuffle_t *x = &d->shuffles[sh];
    sp_key_t *bounds = NULL;
    void *storage = NULL;
    sp_status_t st;

    st = sp__range_bounds(x->samples, x->samples_len, x->partitions, x->compare, x->compare_arg,
                          &bounds, &storage);
    if (st != SP_OK)
        return st;
    st = sp__msg_bounds_encode(sh, bounds, x->partitions - 1, &x->bounds_blob, &x->bounds_len);
    free(bounds);
    free(storage);
    if (st != SP_OK)
        return st;
    sp_drv_broadcast(d, SP_MSG_BOUNDS, x->bounds_blob, x->bounds_len);
    x->sampling = false;
    return SP_OK;
}

/*
 * A graph job: runs its actions in order. The stages the current action
 * needs run as soon as what they read is complete (several at once when
 * independent); a stage whose shuffle is complete is not run again, one
 * under a dataset cached whole not at all. An unpersist action drops its
 * dataset's blocks everywhere. Returns with *done_p once every action ran.
 */
static sp_status_t sp_drv_schedule_graph(sp__driver_t *d, bool *done_p)
{
    const sp_graph_t *g = d->graph;
    bool *need = d->need, *visited = d->visited;
    sp_status_t st = SP_OK;

    *done_p = false;
    for (uint32_t sh = 0; sh < d->nshuffles; sh++) {
        sp_dshuffle_t *x = &d->shuffles[sh];
        if (x->sampling && x->sample_stage != UINT32_MAX &&
            d->stages[x->sample_stage].done == d->stages[x->sample_stage].ntasks &&
            (st = sp_drv_finish_sampling(d, sh)) != SP_OK)
            return st;
    }
    while (d->action < g->nactions) {
        const sp__graph_action_t *a = &g->actions[d->action];
        const sp_dstage_t *as = &d->stages[d->action_stage[d->action]];
        if (a->kind != SP__ACTION_UNPERSIST) {
            if (as->done < as->ntasks)
                break;
            sp_info("action %u (%s of dataset %u) done", d->action,
                    a->kind == SP__ACTION_SAVE    ? "save"
                    : a->kind == SP__ACTION_COUNT ? "count"
                                                  : "collect",
                    a->ds->id);
        } else {
            void *buf = NULL;
            size_t len = 0;
            if (sp__msg_unpersist_encode(a->ds->id, &buf, &len) == SP_OK)
                sp_drv_broadcast(d, SP_MSG_UNPERSIST, buf, len);
            free(buf);
            if (d->cached[a->ds->id] != NULL)
                memset(d->cached[a->ds->id], 0, a->ds->partitions * sizeof(uint32_t));
        }
        d->action++;
    }
    if (d->action == g->nactions) {
        *done_p = true;
        return SP_OK;
    }
    memset(need, 0, d->nstages * sizeof(*need));
    memset(visited, 0, d->nstages * sizeof(*visited));
    if (d->skips_counted != d->action + 1) {
        d->skips_counted = d->action + 1;
        sp_drv_count_skipped(d, d->action_stage[d->action], visited);
        memset(visited, 0, d->nstages * sizeof(*visited));
    }
    sp_drv_need(d, d->action_stage[d->action], need, visited);
    /* Shuffles come before the stages that read them: fill in stage order. */
    for (uint32_t s = 0; s < d->nstages && st == SP_OK; s++) {
        const sp_dstage_t *sg = &d->stages[s];
        if (!need[s] || sg->done == sg->ntasks || !sp_drv_inputs_complete(d, sg))
            continue;
        if (sg->kind == SP_STAGE_MAP && d->shuffles[sg->shuffle].sampling)
            continue;
        if (sg->kind == SP_STAGE_SAMPLE && !d->shuffles[sg->shuffle].sampling)
            continue;
        st = sp_drv_fill(d, s);
    }
    return st;
}

static sp_status_t sp_drv_schedule(sp__driver_t *d, bool *done_p)
{
    if (d->graph != NULL)
        return sp_drv_schedule_graph(d, done_p);
    *done_p = false;
    if (d->shuffles[0].sampling &&
        d->stages[SP_STAGE_SAMPLE].done == d->stages[SP_STAGE_SAMPLE].ntasks) {
        sp_status_t st = sp_drv_finish_sampling(d, 0);
        if (st != SP_OK)
            return st;
    }
    if (!d->shuffles[0].sampling &&
        d->stages[SP_STAGE_REDUCE].done == d->stages[SP_STAGE_REDUCE].ntasks) {
        *done_p = true;
        return SP_OK;
    }
    return sp_drv_schedule_job(d);
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_drv_handle(sp__driver_t *d, uint32_t e, uint16_t type, const void *buf,
                                 size_t len)
{
    if (e >= d->nexecs)
        return SP_RAISE(SP_ERR_INTERNAL, "message from unknown executor %u", e);
    d->execs[e].last_seen_ns = sp__now_ns();
    switch (type) {
    case SP_MSG_REGISTER: return sp_drv_on_register(d, e, buf, len);
    case SP_MSG_READY: return sp_drv_on_ready(d, e, buf, len);
    case SP_MSG_HEARTBEAT: return sp_drv_on_heartbeat(d, e, buf, len, false);
    case SP_MSG_BYE: return sp_drv_on_heartbeat(d, e, buf, len, true);
    case SP_MSG_RESULT: return sp_drv_on_result(d, e, buf, len);
    case SP_MSG_OUTPUT_MOVED: return sp_drv_map_register(d, e, -1, UINT64_MAX, buf, len, true);
    case SP_MSG_FATAL: {
        sp__msg_fatal_t f;
        sp_status_t st = sp__msg_fatal_decode(buf, len, &f);
        if (st != SP_OK)
            return st;
        /* It is dying: its connection breaks next, and the loss names the signal. */
        d->execs[e].fatal_signal = f.signal != 0 ? f.signal : UINT32_MAX;
        return SP_OK;
    }
    default:
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor %u sent unknown message type %u", e, type);
    }
}

/*
 * One turn of the loop: a message, a new connection, a loss, or a timeout.
 * *idle_p (may be NULL) says that nothing came within timeout_ms.
 */
static sp_status_t sp_drv_step(sp__driver_t *d, int timeout_ms, bool *idle_p)
{
    uint32_t id = 0;
    uint16_t type = 0;
    void *buf = NULL;
    size_t len = 0;
    sp_status_t st;

    if (idle_p != NULL)
        *idle_p = false;
    st = sp__ctl_hub_wait(d->hub, timeout_ms, &id, &type, &buf, &len);
    if (st == SP_ERR_TIMED_OUT) {
        if (idle_p != NULL)
            *idle_p = true;
        return SP_OK;
    }
    if (st == SP_OK && id == SP__CTL_HUB_NEW) {
        sp__ctl_conn_t *conn;
        uint32_t e;
        if (sp__ctl_hub_accept(d->hub, &conn) == SP_OK &&
            (st = sp_drv_new_exec(d, conn, &e)) != SP_OK)
            return st;
        return SP_OK;
    }
    if (st != SP_OK) {
        if (id < d->nexecs) {
            d->execs[id].conn = NULL; /* the hub closed it */
            if (d->execs[id].state == SP_DEXEC_DONE)
                return SP_OK;
            return sp_drv_exec_lost(d, id, sp_last_error(), true);
        }
        return st;
    }
    st = sp_drv_handle(d, id, type, buf, len);
    free(buf);
    if (st == SP_ERR_BAD_FORMAT) {
        /* A malformed message: refuse that executor, not the job. */
        char why[1100];
        snprintf(why, sizeof(why), "it sent a malformed message: %s", sp_last_error());
        sp_drv_end_process(d, id);
        return sp_drv_exec_lost(d, id, why, false);
    }
    return st;
}

/*
 * Reads every message already waiting (at most a bound of them), so that
 * heartbeats that queued while the driver itself was stalled count before
 * anyone is declared silent.
 */
static sp_status_t sp_drv_drain(sp__driver_t *d)
{
    bool idle = false;
    sp_status_t st = SP_OK;

    for (uint32_t n = 0; n < 4 * d->nexecs + 1024 && !idle && st == SP_OK; n++)
        st = sp_drv_step(d, 0, &idle);
    return st;
}

static sp_status_t sp_drv_check_heartbeats(sp__driver_t *d)
{
    uint64_t now = sp__now_ns();
    bool drained = false;
    sp_status_t st;

    if (d->starved_since != 0 && now - d->starved_since > d->register_ns)
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "every executor was lost and none replaced them within "
                        "executor.register_timeout (%.1f s)",
                        (double)d->register_ns / 1e9);

    for (uint32_t e = 0; e < d->nexecs; e++) {
        sp_dexec_t *x = &d->execs[e];
        if (x->state != SP_DEXEC_READY || now - x->last_seen_ns < d->heartbeat_timeout_ns)
            continue;
        if (!drained) {
            /* Its heartbeats may be waiting unread: a stalled driver is no reason to lose it. */
            if ((st = sp_drv_drain(d)) != SP_OK)
                return st;
            drained = true;
            now = sp__now_ns();
            if (x->state != SP_DEXEC_READY || now - x->last_seen_ns < d->heartbeat_timeout_ns)
                continue;
        }
        char why[96];
        snprintf(why, sizeof(why), "no heartbeat for %.1f s (executor.heartbeat_timeout)",
                 (double)(now - x->last_seen_ns) / 1e9);
        /* A hung executor we started is ended, so it cannot serve stale outputs. */
        sp_drv_end_process(d, e);
        if ((st = sp_drv_exec_lost(d, e, why, false)) != SP_OK)
            return st;
    }
    return SP_OK;
}

/*
 * task.timeout: an attempt running longer fails (counted like any failure)
 * and its executor is replaced, since a worker stuck in job code cannot be
 * stopped: one the launcher started is killed, any other is told to shut
 * down (it exits without waiting for the stuck worker).
 */
static sp_status_t sp_drv_check_task_timeouts(sp__driver_t *d)
{
    uint64_t now = sp__now_ns();
    sp_status_t st;

    if (d->task_timeout_ns == 0)
        return SP_OK;
    for (uint32_t s = 0; s < d->nstages; s++)
        for (uint32_t i = 0; i < d->stages[s].ntasks; i++) {
            sp_dtask_t *t = &d->stages[s].tasks[i];
            uint32_t e = t->executor;
            char msg[256], why[320];
            if (d->stages[s].sched[i].state != SP__SCHED_RUNNING ||
                now - t->started_ns <= d->task_timeout_ns)
                continue;
            snprintf(msg, sizeof(msg), "%s task %u ran past task.timeout (%.1f s) on executor %u",
                     d->stages[s].name, i, (double)d->task_timeout_ns / 1e9, e);
            if (d->execs[e].busy > 0)
                d->execs[e].busy--;
            if ((st = sp_drv_task_failed(d, s, i, t->attempt, e, SP_ERR_TIMED_OUT, msg)) != SP_OK)
                return st;
            snprintf(why, sizeof(why), "ended by the driver: %s", msg);
            if (!sp_drv_end_process(d, e))
                sp_drv_send(d, e, SP_MSG_SHUTDOWN, NULL, 0);
            if ((st = sp_drv_exec_lost(d, e, why, false)) != SP_OK)
                return st;
        }
    return SP_OK;
}

/* Pings every executor each heartbeat interval, so that one whose driver went silent can tell. */
static void sp_drv_ping(sp__driver_t *d)
{
    uint64_t now = sp__now_ns();

    if (now - d->last_ping_ns < d->heartbeat_interval_ns)
        return;
    d->last_ping_ns = now;
    for (uint32_t e = 0; e < d->nexecs; e++)
        if ((d->execs[e].state == SP_DEXEC_READY || d->execs[e].state == SP_DEXEC_REGISTERED) &&
            sp_drv_send(d, e, SP_MSG_PING, NULL, 0) != SP_OK)
            sp_debug("ping to executor %u failed: %s", e, sp_last_error());
}

void sp__driver_lose_executor(sp__driver_t *d, const char *name, const char *why)
{
    pthread_mutex_lock(&d->lose_lock);
    if (d->nlose == d->cap_lose) {
        size_t cap = d->cap_lose ? 2 * d->cap_lose : 8;
        char(*grown)[256] = realloc(d->lose_names, cap * sizeof(*grown));
        if (grown == NULL) {
            pthread_mutex_unlock(&d->lose_lock);
            sp_warn("no memory to note that executor %s is gone; its heartbeats will tell", name);
            return;
        }
        d->lose_names = grown;
        d->cap_lose = cap;
    }
    snprintf(d->lose_names[d->nlose++], sizeof(d->lose_names[0]), "%.127s\t%.120s", name,
             why != NULL ? why : "its launcher reported it gone");
    pthread_mutex_unlock(&d->lose_lock);
}

/* Executors their launcher reported gone are lost now, not at their heartbeat timeout. */
static sp_status_t sp_drv_take_losses(sp__driver_t *d)
{
    sp_status_t st = SP_OK;

    pthread_mutex_lock(&d->lose_lock);
    for (size_t i = 0; i < d->nlose && st == SP_OK; i++) {
        char *tab = strchr(d->lose_names[i], '\t');
        if (tab == NULL)
            continue;
        *tab = '\0';
        for (uint32_t e = 0; e < d->nexecs && st == SP_OK; e++) {
            sp_dexec_t *x = &d->execs[e];
            if ((x->state == SP_DEXEC_READY || x->state == SP_DEXEC_REGISTERED) &&
                strcmp(x->rep.name, d->lose_names[i]) == 0)
                st = sp_drv_exec_lost(d, e, tab + 1, false);
        }
    }
    d->nlose = 0;
    pthread_mutex_unlock(&d->lose_lock);
    return st;
}

static void sp_drv_fault_hook(sp__driver_t *d)
{
    sp_dexec_t *x;

    if (d->stop_stage >= 0 && d->rep.stages[d->stop_stage].done >= (uint64_t)d->stop_after) {
        sp_warn("fault injection: stopping the driver (pid %ld) after %u %s tasks", (long)getpid(),
                d->rep.stages[d->stop_stage].done, sp_stage_names[d->stop_stage]);
        d->stop_stage = -1;
        raise(SIGSTOP);
    }
    if (d->killed || d->kill_exec < 0 || (uint64_t)d->kill_exec >= d->nexecs)
        return;
    x = &d->execs[d->kill_exec];
    if (d->kill_stage < 0) {
        /* start: as soon as it has registered, while the others may still be registering. */
        if (x->state != SP_DEXEC_REGISTERED && x->state != SP_DEXEC_READY)
            return;
    } else if (x->state != SP_DEXEC_READY ||
               d->rep.stages[d->kill_stage].done < (uint64_t)d->kill_after)
        return;
    for (size_t i = 0; i < d->o.npids; i++) {
        if ((uint32_t)d->o.pids[i] != x->rep.pid)
            continue;
        sp_warn("fault injection: %s executor %lld (pid %u) after %u %s tasks",
                d->kill_signal == SIGSTOP ? "stopping" : "killing", (long long)d->kill_exec,
                x->rep.pid, d->kill_stage < 0 ? 0 : d->rep.stages[d->kill_stage].done,
                d->kill_stage < 0 ? "start" : sp_stage_names[d->kill_stage]);
        kill(d->o.pids[i], d->kill_signal);
        d->killed = true;
    }
}

static void sp_drv_parse_fault(sp__driver_t *d)
{
    const char *f = getenv("SPATE_FAULT_KILL_EXECUTOR");
    char stage[16] = "", sig[16] = "";
    long long id, after;

    d->kill_exec = -1;
    d->stop_stage = -1;
    {
        const char *stop = getenv("SPATE_FAULT_STOP_DRIVER");
        char sstage[16] = "";
        long long n;
        if (stop != NULL && sscanf(stop, "%15[a-z]:%lld", sstage, &n) == 2) {
            d->stop_stage = strcmp(sstage, "map") == 0 ? SP_STAGE_MAP : SP_STAGE_REDUCE;
            d->stop_after = n;
        }
    }
    if (f == NULL || sscanf(f, "%lld:%15[a-z]:%lld:%15[a-z]", &id, stage, &after, sig) < 3)
        return;
    d->kill_signal = strcmp(sig, "stop") == 0 ? SIGSTOP : SIGKILL;
    d->kill_exec = id;
    d->kill_after = after;
    d->kill_stage = strcmp(stage, "start") == 0 ? -1
                    : strcmp(stage, "map") == 0 ? SP_STAGE_MAP
                                                : SP_STAGE_REDUCE;
}

static sp_status_t sp_drv_plan(sp__driver_t *d);

sp_status_t sp__driver_create(const sp__driver_opts_t *opts, sp__driver_t **driver_p)
{
    static unsigned seq;
    sp__driver_t *d = sp__calloc(1, sizeof(*d));
    uint64_t ns;
    sp_status_t st;

    if (d == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the driver");
    d->o = *opts;
    pthread_mutex_init(&d->lose_lock, NULL);
    if ((st = sp__ctl_hub_create(&d->hub)) != SP_OK)
        goto err;
    if (opts->listen_fd >= 0 &&
        (st = sp__ctl_hub_set_listener(d->hub, opts->listen_fd, opts->secret, opts->secret_len,
                                       10000)) != SP_OK)
        goto err;
    if ((st = sp_map_output_tracker_create(&d->tracker)) != SP_OK)
        goto err;
    if ((st = sp_conf_get_duration(opts->conf, "executor.heartbeat_timeout", &ns)) != SP_OK ||
        (st = sp_conf_get_duration(opts->conf, "executor.heartbeat_interval",
                                   &d->heartbeat_interval_ns)) != SP_OK ||
        (st = sp_conf_get_duration(opts->conf, "task.timeout", &d->task_timeout_ns)) != SP_OK ||
        (st = sp_conf_get_int(opts->conf, "task.max_failures", &d->max_failures)) != SP_OK ||
        (st = sp_conf_get_int(opts->conf, "stage.max_attempts", &d->max_stage_attempts)) != SP_OK ||
        (st = sp_conf_get_double(opts->conf, "shuffle.reduce_slowstart", &d->slowstart)) != SP_OK)
        goto err;
    d->rep.reduce_slowstart = d->slowstart;
    d->heartbeat_timeout_ns = ns;
    /* Two heartbeats must fit in the timeout, or one late heartbeat loses a healthy executor. */
    if (d->heartbeat_interval_ns >= ns / 2) {
        st = SP_RAISE(SP_ERR_BAD_CONF,
                      "executor.heartbeat_interval (%.3g s) must be below half of "
                      "executor.heartbeat_timeout (%.3g s)",
                      (double)d->heartbeat_interval_ns / 1e9, (double)ns / 1e9);
        goto err;
    }
    d->next_task_id = 1;
    /* The app id names the run's directories; pid and time keep runs apart. */
    snprintf(d->app_id, sizeof(d->app_id), "app-%ld-%u-%llu", (long)getpid(), seq++,
             (unsigned long long)time(NULL));
    d->shuffle_id = 1;
    sp_drv_parse_fault(d);
    /* Plan and check the output now, so that a job refused here starts no executor. */
    d->rep.start_ns = sp__now_ns();
    d->rep.start_unix_ns = sp__wall_ns();
    snprintf(d->rep.run_id, sizeof(d->rep.run_id), "%s", d->app_id);
    if ((st = sp_drv_plan(d)) != SP_OK)
        goto err;
    if (opts->params->output != NULL &&
        (st = sp__output_prepare(opts->params->output, d->app_id, &d->output)) != SP_OK)
        goto err;
    *driver_p = d;
    return SP_OK;
err:
    sp__driver_destroy(d);
    return st;
}

/* Adds a stage of kind with ntasks tasks; *index_p its index. */
static sp_status_t sp_drv_add_stage(sp__driver_t *d, int kind, uint32_t gstage, int32_t shuffle,
                                    int32_t action, uint32_t ntasks, const char *name,
                                    uint32_t *index_p)
{
    sp_dstage_t *sg = &d->stages[d->nstages];

    memset(sg, 0, sizeof(*sg));
    sg->kind = kind;
    sg->gstage = gstage;
    sg->shuffle = shuffle;
    sg->action = action;
    sg->ntasks = ntasks;
    snprintf(sg->name, sizeof(sg->name), "%s", name);
    sg->tasks = sp__calloc(ntasks + 1, sizeof(sp_dtask_t));
    sg->sched = sp__calloc(ntasks + 1, sizeof(sp__sched_task_t));
    if (sg->tasks == NULL || sg->sched == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u tasks", ntasks);
    for (uint32_t i = 0; i < ntasks; i++)
        sg->sched[i] = (sp__sched_task_t){.state = SP__SCHED_PENDING, .avoid = UINT32_MAX};
    /* Reduce tasks of a two-stage job, and every graph task, may prefer an executor. */
    if ((kind == SP_STAGE_REDUCE || d->graph != NULL) &&
        (sg->preferred = sp__calloc(ntasks + 1, sizeof(uint32_t))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u tasks", ntasks);
    d->rep.stages[kind].tasks += ntasks;
    *index_p = d->nstages++;
    return SP_OK;
}

/* Sizes the per-map arrays for every shuffle and registers the shuffles with the tracker. */
static sp_status_t sp_drv_map_arrays(sp__driver_t *d)
{
    sp_status_t st;

    d->map_status = sp__calloc(d->nslots + 1, sizeof(*d->map_status));
    d->map_blob = sp__calloc(d->nslots + 1, sizeof(*d->map_blob));
    d->map_blob_len = sp__calloc(d->nslots + 1, sizeof(*d->map_blob_len));
    d->map_moved_ns = sp__calloc(d->nslots + 1, sizeof(*d->map_moved_ns));
    if (d->map_status == NULL || d->map_blob == NULL || d->map_blob_len == NULL ||
        d->map_moved_ns == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u map outputs", d->nslots);
    for (uint32_t sh = 0; sh < d->nshuffles; sh++)
        if ((st = sp_map_output_tracker_register_shuffle(d->tracker, d->shuffles[sh].id,
                                                         d->shuffles[sh].maps,
                                                         d->shuffles[sh].partitions)) != SP_OK)
            return st;
    return SP_OK;
}

/* A two-stage job: its plan, one shuffle, and the sample, map and reduce stages. */
static sp_status_t sp_drv_plan_job(sp__driver_t *d)
{
    const sp_job_t *job = d->o.job;
    sp_dshuffle_t *sh;
    uint32_t idx;
    sp_status_t st;

    if ((st = job->plan(d->o.params, &d->plan)) != SP_OK)
        return SP_RAISE(st, "job %s: %s", job->name, sp_last_error());
    d->planned = true;
    if ((st = sp__job_plan_check(job, &d->plan)) != SP_OK)
        return st;
    if (d->plan.sample_per_map == 0)
        d->plan.sample_per_map = 1000;
    d->shuffles = sp__calloc(1, sizeof(*d->shuffles));
    d->stages = sp__calloc(SP_STAGES, sizeof(*d->stages));
    if (d->shuffles == NULL || d->stages == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the stages");
    d->nshuffles = 1;
    sh = &d->shuffles[0];
    *sh =
        (sp_dshuffle_t){.id = d->shuffle_id,
                        .maps = d->plan.maps,
                        .partitions = d->plan.partitions,
                        .map_stage = SP_STAGE_MAP,
                        .sample_stage = SP_STAGE_SAMPLE,
                        .sample_per_map = d->plan.sample_per_map,
                        .sampling = d->plan.partitioning == SP_JOB_RANGE && d->plan.partitions > 1,
                        .compare = job->compare,
                        .compare_arg = job->compare_arg};
    d->nslots = d->plan.maps;
    if ((st = sp_drv_add_stage(d, SP_STAGE_SAMPLE, 0, 0, -1, sh->sampling ? d->plan.maps : 0,
                               "sample", &idx)) != SP_OK ||
        (st = sp_drv_add_stage(d, SP_STAGE_MAP, 0, 0, -1, d->plan.maps, "map", &idx)) != SP_OK ||
        (st = sp_drv_add_stage(d, SP_STAGE_REDUCE, 0, 0, -1, d->plan.partitions, "reduce", &idx)) !=
            SP_OK)
        return st;
    d->rep.maps = d->plan.maps;
    d->rep.partitions = d->plan.partitions;
    return sp_drv_map_arrays(d);
}

/*
 * A graph job: its graph, a shuffle per wide dataset (ids shuffle_id + s),
 * a sample stage for each sorting one, a map stage each, and a stage per
 * action.
 */
static sp_status_t sp_drv_plan_graph(sp__driver_t *d)
{
    const sp_graph_t *g;
    char name[64];
    sp_status_t st;

    if ((st = sp__graph_build(d->o.job, d->o.params, &d->graph)) != SP_OK)
        return st;
    g = d->graph;
    d->shuffles = sp__calloc(g->nshuffles + 1, sizeof(*d->shuffles));
    d->stages = sp__calloc(2 * g->nshuffles + g->nactions + 1, sizeof(*d->stages));
    d->action_stage = sp__calloc(g->nactions + 1, sizeof(*d->action_stage));
    d->cached = sp__calloc(g->ndatasets + 1, sizeof(*d->cached));
    d->need = sp__calloc(2 * g->nshuffles + g->nactions + 1, sizeof(*d->need));
    d->visited = sp__calloc(2 * g->nshuffles + g->nactions + 1, sizeof(*d->visited));
    if (d->shuffles == NULL || d->stages == NULL || d->action_stage == NULL || d->cached == NULL ||
        d->need == NULL || d->visited == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the stages of a graph");
    d->nshuffles = g->nshuffles;
    for (uint32_t s = 0; s < g->nshuffles; s++) {
        const sp__graph_shuffle_t *gs = &g->shuffles[s];
        sp_dshuffle_t *sh = &d->shuffles[s];
        const char *kind = sp__graph_kind_name(gs->ds->kind);
        if ((uint64_t)d->nslots + gs->maps > UINT32_MAX / 2)
            return SP_RAISE(SP_ERR_TOO_LARGE, "the graph's shuffles have more than %u maps",
                            UINT32_MAX / 2);
        *sh = (sp_dshuffle_t){.id = d->shuffle_id + s,
                              .maps = gs->maps,
                              .partitions = gs->partitions,
                              .base = d->nslots,
                              .sample_stage = UINT32_MAX,
                              .sample_per_map = 1000,
                              .sampling = gs->partitioner == SP_PARTITIONER_RANGE,
                              .compare = gs->compare,
                              .compare_arg = gs->compare_arg};
        d->nslots += gs->maps;
        if (sh->sampling) {
            snprintf(name, sizeof(name), "stage %u (sample for %s)", s, kind);
            if ((st = sp_drv_add_stage(d, SP_STAGE_SAMPLE, s, (int32_t)s, -1, gs->maps, name,
                                       &sh->sample_stage)) != SP_OK)
                return st;
        }
        snprintf(name, sizeof(name), "stage %u (%s)", s, kind);
        if ((st = sp_drv_add_stage(d, SP_STAGE_MAP, s, (int32_t)s, -1, gs->maps, name,
                                   &sh->map_stage)) != SP_OK)
            return st;
        d->rep.maps += gs->maps;
    }
    for (uint32_t a = 0; a < g->nactions; a++) {
        const sp__graph_action_t *act = &g->actions[a];
        static const char *const kinds[] = {"save", "count", "collect", "unpersist"};
        snprintf(name, sizeof(name), "stage %u (%s)", g->nshuffles + a, kinds[act->kind]);
        if ((st = sp_drv_add_stage(d, SP_STAGE_REDUCE, g->nshuffles + a, -1, (int32_t)a,
                                   sp__graph_stage_tasks(g, g->nshuffles + a), name,
                                   &d->action_stage[a])) != SP_OK)
            return st;
        if (act->kind == SP__ACTION_SAVE)
            d->rep.partitions += act->ds->partitions;
    }
    d->rep.graph_stages = sp__graph_stages(g);
    return sp_drv_map_arrays(d);
}

/* How many part files the run publishes: the reduce partitions, or a graph's saved dataset's. */
static uint32_t sp_drv_output_parts(const sp__driver_t *d)
{
    if (d->graph == NULL)
        return d->plan.partitions;
    for (uint32_t a = 0; a < d->graph->nactions; a++)
        if (d->graph->actions[a].kind == SP__ACTION_SAVE)
            return d->graph->actions[a].ds->partitions;
    return 0;
}

static sp_status_t sp_drv_plan(sp__driver_t *d)
{
    return sp__job_is_graph(d->o.job) ? sp_drv_plan_graph(d) : sp_drv_plan_job(d);
}

/* Copies every executor's report into the run's report. */
static void sp_drv_snapshot(sp__driver_t *d)
{
    sp__executor_report_t *x =
        sp__realloc(d->rep.executors, (d->nexecs + 1) * sizeof(*d->rep.executors));

    if (x == NULL) {
        d->rep.nexecutors = 0; /* the report goes without them */
        return;
    }
    d->rep.executors = x;
    d->rep.nexecutors = d->nexecs;
    for (uint32_t e = 0; e < d->nexecs; e++)
        x[e] = d->execs[e].rep;
}

/* The stages that started, in the order they did, for the report. */
static int sp_drv_stage_start_cmp(const void *a, const void *b)
{
    const sp__stage_summary_t *x = a, *y = b;

    return x->start_ns < y->start_ns ? -1 : x->start_ns > y->start_ns;
}

static void sp_drv_stage_list(sp__driver_t *d)
{
    sp__stage_summary_t *list = sp__calloc(d->nstages + 1, sizeof(*list));
    uint32_t n = 0;

    if (list == NULL)
        return; /* the report goes without it */
    for (uint32_t s = 0; s < d->nstages; s++) {
        const sp_dstage_t *sg = &d->stages[s];
        if (sg->start_ns == 0)
            continue;
        list[n] = (sp__stage_summary_t){.kind = sg->kind,
                                        .tasks = sg->ntasks,
                                        .done = sg->done,
                                        .start_ns = sg->start_ns,
                                        .end_ns = sg->done == sg->ntasks ? sg->end_ns : 0,
                                        .records = sg->records,
                                        .bytes = sg->bytes,
                                        .task_ns = sg->task_ns};
        snprintf(list[n++].name, sizeof(list[0].name), "%s", sg->name);
    }
    qsort(list, n, sizeof(*list), sp_drv_stage_start_cmp);
    free(d->rep.stage_list);
    d->rep.stage_list = list;
    d->rep.nstage_list = n;
}

static void sp_drv_progress(sp__driver_t *d, bool final)
{
    if (d->o.progress == NULL)
        return;
    sp_drv_snapshot(d);
    d->o.progress(d->o.progress_arg, &d->rep, final);
}

/* ------------------------------------------------------------------------ */
/* Interrupts                                                                */
/* ------------------------------------------------------------------------ */

/* Process-wide, set from signal handlers: lock-free atomics are async-signal-safe. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "signal handlers need lock-free atomics");
static atomic_int sp_drv_signal;   /* the first interrupting signal; 0: none */
static atomic_uint sp_drv_signals; /* how many arrived */

void sp__driver_interrupt(int signo)
{
    int none = 0;

    atomic_compare_exchange_strong(&sp_drv_signal, &none, signo);
    atomic_fetch_add(&sp_drv_signals, 1);
}

int sp__driver_interrupted(unsigned *count_p)
{
    if (count_p != NULL)
        *count_p = atomic_load(&sp_drv_signals);
    return atomic_load(&sp_drv_signal);
}

/* SP_ERR_CANCELED, naming the signal, once the run was interrupted. */
static sp_status_t sp_drv_check_interrupt(void)
{
    int signo = atomic_load(&sp_drv_signal);

    if (signo == 0)
        return SP_OK;
    return SP_RAISE(SP_ERR_CANCELED, "interrupted by %s",
                    signo == SIGINT    ? "SIGINT"
                    : signo == SIGTERM ? "SIGTERM"
                    : signo == SIGHUP  ? "SIGHUP"
                                       : "a signal");
}

static void sp_drv_shutdown(sp__driver_t *d)
{
    uint64_t deadline = sp__now_ns() + 10ull * 1000000000ull;

    for (uint32_t e = 0; e < d->nexecs; e++) {
        sp_dexec_t *x = &d->execs[e];
        if (x->state == SP_DEXEC_READY || x->state == SP_DEXEC_REGISTERED ||
            x->state == SP_DEXEC_CONNECTED) {
            if (sp_drv_send(d, e, SP_MSG_SHUTDOWN, NULL, 0) != SP_OK)
                x->state = SP_DEXEC_LOST;
        }
    }
    for (;;) {
        bool waiting = false;
        for (uint32_t e = 0; e < d->nexecs; e++)
            waiting |=
                d->execs[e].state == SP_DEXEC_READY || d->execs[e].state == SP_DEXEC_REGISTERED;
        if (!waiting || sp__now_ns() > deadline || atomic_load(&sp_drv_signals) > 1)
            break; /* a second interrupt: the launcher's reap ends them */
        uint32_t id = 0;
        uint16_t type = 0;
        void *buf = NULL;
        size_t len = 0;
        sp_status_t st = sp__ctl_hub_wait(d->hub, 100, &id, &type, &buf, &len);
        if (st == SP_OK && id < d->nexecs && type == SP_MSG_BYE)
            sp_drv_on_heartbeat(d, id, buf, len, true);
        else if (st != SP_OK && st != SP_ERR_TIMED_OUT && id < d->nexecs)
            d->execs[id].state = SP_DEXEC_DONE; /* gone: nothing more to wait for */
        else if (st == SP_OK && id == SP__CTL_HUB_NEW) {
            sp__ctl_conn_t *conn;
            if (sp__ctl_hub_accept(d->hub, &conn) == SP_OK)
                sp__ctl_close(conn);
        }
        free(buf);
    }
}

sp_status_t sp__driver_run(sp__driver_t *d, sp__driver_report_t *report)
{
    const sp_job_params_t *p = d->o.params;
    uint64_t register_ns, deadline, next_progress = 0;
    sp_status_t st;

    /* Wait for the executors. */
    if ((st = sp_conf_get_duration(d->o.conf, "executor.register_timeout", &register_ns)) != SP_OK)
        goto out;
    d->register_ns = register_ns;
    deadline = sp__now_ns() + register_ns;
    /* Executors lost while starting and not replaced are not waited for. */
    while (sp_drv_ready_count(d) + d->rep.executors_lost - d->rep.executors_relaunched <
               d->o.executors ||
           sp_drv_ready_count(d) == 0) {
        if (sp__now_ns() > deadline) {
            st = SP_RAISE(SP_ERR_TIMED_OUT,
                          "only %u of %u executors registered within executor.register_timeout "
                          "(%.1f s)",
                          sp_drv_ready_count(d), d->o.executors, (double)register_ns / 1e9);
            goto out;
        }
        if ((st = sp_drv_step(d, 100, NULL)) != SP_OK || (st = sp_drv_check_interrupt()) != SP_OK)
            goto out;
        sp_drv_ping(d);
        sp_drv_fault_hook(d);
    }
    for (;;) {
        uint64_t now;
        bool done;
        if ((st = sp_drv_schedule(d, &done)) != SP_OK)
            goto out;
        if (done)
            break;
        if ((st = sp_drv_step(d, 100, NULL)) != SP_OK)
            goto out;
        if ((st = sp_drv_check_heartbeats(d)) != SP_OK)
            goto out;
        if ((st = sp_drv_check_task_timeouts(d)) != SP_OK)
            goto out;
        sp_drv_ping(d);
        if ((st = sp_drv_take_losses(d)) != SP_OK || (st = sp_drv_check_interrupt()) != SP_OK)
            goto out;
        sp_drv_fault_hook(d);
        now = sp__now_ns();
        if (now >= next_progress) {
            sp_drv_progress(d, false);
            next_progress = now + 200000000ull;
        }
    }
    sp_drv_result(d);
    sp_drv_progress(d, false); /* the last stage's line, before finish() prints its check */
    if (d->output != NULL && (st = sp__output_publish(d->output, sp_drv_output_parts(d))) != SP_OK)
        goto out;
    if (d->graph != NULL) {
        if (d->o.job->finish_graph != NULL &&
            (st = d->o.job->finish_graph(d->graph, p, &d->rep.result, stderr)) != SP_OK) {
            st = SP_RAISE(st, "job %s: %s", d->o.job->name, sp_last_error());
            goto out;
        }
    } else if (d->o.job->finish != NULL &&
               (st = d->o.job->finish(p, &d->rep.result, stderr)) != SP_OK) {
        st = SP_RAISE(st, "job %s: %s", d->o.job->name, sp_last_error());
        goto out;
    }
    if (d->output != NULL && (st = sp__output_succeed(d->output)) != SP_OK)
        goto out;
out:
    if (d->stages != NULL)
        sp_drv_result(d);
    if (st != SP_OK && st != SP_ERR_CANCELED && atomic_load(&sp_drv_signal) != 0)
        st = sp_drv_check_interrupt(); /* an interrupted run fails for that reason */
    {
        /* Keep the error: shutting down may overwrite the last-error text. */
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", sp_last_error());
        sp_drv_shutdown(d);
        if (st != SP_OK) {
            /* After the shutdown, so that executors finishing their tasks write no more. */
            sp__output_abort(d->output);
            SP_RAISE(st, "%s", msg);
            snprintf(d->rep.error, sizeof(d->rep.error), "%s", msg);
        }
    }
    d->rep.end_ns = sp__now_ns();
    d->rep.end_unix_ns = sp__wall_ns();
    sp_drv_stage_cpu(d);
    sp_drv_snapshot(d);
    sp_drv_stage_list(d);
    if (d->o.progress != NULL)
        d->o.progress(d->o.progress_arg, &d->rep, true);
    *report = d->rep;
    d->rep.executors = NULL;
    d->rep.stage_list = NULL;
    return st;
}

void sp__driver_report_clear(sp__driver_report_t *report)
{
    free(report->executors);
    report->executors = NULL;
    free(report->stage_list);
    report->stage_list = NULL;
    report->nstage_list = 0;
}

void sp__driver_destroy(sp__driver_t *d)
{
    if (d == NULL)
        return;
    sp__ctl_hub_destroy(d->hub);
    sp_map_output_tracker_destroy(d->tracker);
    for (uint32_t m = 0; d->map_status != NULL && m < d->nslots; m++) {
        sp_map_status_destroy(d->map_status[m]);
        free(d->map_blob[m]);
    }
    free(d->map_status);
    free(d->map_blob);
    free(d->map_blob_len);
    free(d->map_moved_ns);
    for (uint32_t s = 0; d->stages != NULL && s < d->nstages; s++) {
        for (uint32_t i = 0; d->stages[s].tasks != NULL && i < d->stages[s].ntasks; i++)
            free(d->stages[s].tasks[i].last_error);
        free(d->stages[s].tasks);
        free(d->stages[s].sched);
        free(d->stages[s].preferred);
    }
    free(d->stages);
    for (uint32_t sh = 0; d->shuffles != NULL && sh < d->nshuffles; sh++) {
        free(d->shuffles[sh].samples);
        free(d->shuffles[sh].bounds_blob);
    }
    free(d->shuffles);
    for (uint32_t i = 0; d->cached != NULL && d->graph != NULL && i < d->graph->ndatasets; i++)
        free(d->cached[i]);
    free(d->cached);
    free(d->need);
    free(d->visited);
    free(d->action_stage);
    sp__graph_destroy(d->graph);
    free(d->execs);
    free(d->rep.executors);
    free(d->rep.stage_list);
    if (d->planned)
        sp__job_plan_clear(&d->plan);
    free(d->lose_names);
    pthread_mutex_destroy(&d->lose_lock);
    sp__output_release(d->output); /* its executors are gone: nothing writes there any more */
    free(d);
}

const char *sp__driver_app_id(const sp__driver_t *d) { return d->app_id; }
