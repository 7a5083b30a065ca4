/*
 * The executor: one process (or, under MPI, one rank) that runs tasks for a
 * driver. It registers over its control connection, receives the job (name,
 * parameters, configuration, plan), then sets itself up the way the plan of
 * this machine says: its NUMA node and cores (sp_topology_plan_executors),
 * one memory manager whose pages live on that node, worker threads bound to
 * the node, its own subdirectory of each shuffle.local_dirs entry, and a
 * transport endpoint whose address goes back to the driver.
 *
 * The main thread owns the connection's receive side: it queues tasks for
 * the workers, keeps the table of map statuses the driver announces
 * (MAP_OUTPUT / MAP_LOST), and sends a heartbeat every
 * executor.heartbeat_interval. Workers run tasks with the task runner and
 * send their results themselves (sends are serialized by the channel).
 * Committed map outputs are served: mapped and registered with the
 * transport so that other executors read them one-sided without this
 * executor's CPU. Statuses are reference counted so that a reduce task keeps
 * the ones it started with while the driver replaces or drops them.
 *
 * Reduce slow start: the driver may start a reduce task before every map
 * output is in (shuffle.reduce_slowstart). The task then reads
 * incrementally: it starts with the statuses this executor has, and its
 * reader asks for more whenever it has nothing to do (sp_exec_feed_next),
 * which waits on status_cond for the next MAP_OUTPUT. A CANCEL from the
 * driver (it wants the slot back for a map task that must run again) makes
 * such a wait fail with SP_ERR_CANCELED; so does the executor stopping.
 *
 * Memory peaks for the driver's report: VmHWM (the kernel's high-water mark
 * of the resident set) counts the committed map outputs this executor maps
 * to read or serve them, page cache rather than its own memory, so the
 * executor also keeps the peak of its anonymous resident memory (heap,
 * arena pages, buffers: /proc/self/statm's resident less shared pages). A
 * sampler thread reads it every SP_EXEC_SAMPLE_MS while tasks run and
 * sleeps while none does; every task's end and every heartbeat read it too.
 *
 * Testing hook: SPATE_FAULT_EVICT_OUTPUTS=1 evicts every map output the
 * executor holds in storage memory when its first reduce task starts, as
 * memory pressure would at that moment: reduce tasks elsewhere that read
 * them with their old keys race the move.
 *
 * Testing hook: SPATE_FAULT_CORRUPT_MAP=<map id> damages one byte of that
 * map's first committed attempt after the commit, as a disk might; readers
 * must detect it and the driver must recompute the output.
 */
#include "executor.h"

#include "common_int.h"
#include "control/ctl.h"
#include "graph_int.h"
#include "protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How often the sampler reads the anonymous resident memory while tasks run. */
#define SP_EXEC_SAMPLE_MS 10
/* Longest wait of the main loop for the driver, so that moved outputs are published soon. */
#define SP_EXEC_POLL_MS 100

typedef struct sp_status_ref {
    sp_map_status_t *status;
    atomic_int refs;
} sp_status_ref_t;

typedef struct sp_task_item {
    struct sp_task_item *next;
    sp__msg_task_t task;
} sp_task_item_t;

/* This executor's output of a map while it is held in memory: the in-memory file's identity. */
typedef struct sp_exec_mem {
    bool held;
    uint64_t dev, ino;
} sp_exec_mem_t;

typedef struct sp_executor {
    sp__ctl_conn_t *conn;
    sp__msg_job_t job;
    const sp_job_t *desc;
    void *plugin;
    sp_job_params_t params;
    sp_conf_t *conf;
    sp_topology_t *topo;
    unsigned numa_index;
    bool bind;
    sp_memory_manager_t *mm;
    sp_transport_t *transport;
    char *app_dirs; /* comma-separated executor directories, removed at the end */
    sp__task_env_t env;

    /*
     * Map outputs of every shuffle in one table of slots: shuffle s (id
     * job.shuffle_id + s) has slots sbase[s] .. sbase[s] + smaps[s] - 1. A
     * two-stage job has one shuffle whose slots are its map ids.
     */
    sp_graph_t *graph; /* graph jobs */
    uint32_t nshuffles, nslots;
    uint32_t *sbase, *smaps, *sparts;
    pthread_mutex_t lock; /* statuses, served, bounds, queue, canceled */
    pthread_cond_t cond;
    pthread_cond_t status_cond; /* a map status came, a task was canceled, or stopping */
    uint64_t status_gen;        /* raised with every status that comes */
    uint64_t *canceled;         /* ids of running tasks the driver canceled */
    size_t ncanceled, cap_canceled;
    pthread_cond_t sample_cond; /* wakes the sampler: a task started, or stopping */
    sp_status_ref_t **statuses; /* nslots */
    sp_served_output_t **served;
    sp_exec_mem_t *mem;      /* served[m] held in memory, and its in-memory file */
    sp_map_status_t **own;   /* served[m]'s status as committed here */
    sp_block_store_t *bs;    /* storage memory: map outputs held in memory */
    uint64_t evictions_seen; /* sp_shuffle_outputs_evicted() when last looked at */
    sp_key_t **bounds;       /* per shuffle: range bounds, NULL until BOUNDS */
    void **bounds_buf;
    uint32_t *nbounds;
    sp_task_item_t *head, *tail;
    bool stopping;
    atomic_uint running; /* raised under lock (it wakes the sampler), lowered without */

    pthread_t *workers;
    uint32_t nworkers;
    uint32_t live_workers;          /* workers not yet returned (under lock) */
    pthread_cond_t exit_cond;       /* a worker returned */
    const sp__msg_task_t **current; /* per worker: the task it runs, NULL: none (under lock) */
    uint64_t stop_grace_ns;         /* how long teardown waits for a busy worker */
    uint64_t driver_timeout_ns;     /* 0: never give up on a silent driver */
    pthread_t sampler;
    bool sampler_started;
    _Atomic uint64_t peak_anon; /* highest anonymous resident bytes seen */
    uint64_t peak_storage;      /* the memory manager's, last read (main thread) */
    int64_t corrupt_map;
    atomic_bool evict_at_reduce; /* SPATE_FAULT_EVICT_OUTPUTS, until the first reduce task */
} sp_executor_t;

/* The CLOCK_MONOTONIC time ns from now, for pthread_cond_timedwait on the executor's conds. */
static struct timespec sp_exec_deadline(uint64_t ns)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec += (long)(ns % 1000000000u);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static void sp_status_unref(sp_status_ref_t *ref)
{
    if (ref != NULL && atomic_fetch_sub(&ref->refs, 1) == 1) {
        sp_map_status_destroy(ref->status);
        free(ref);
    }
}

static sp_status_t sp_exec_send(sp_executor_t *ex, uint16_t type, sp_status_t enc, void *buf,
                                size_t len)
{
    sp_status_t st = enc;

    if (st == SP_OK)
        st = sp__ctl_send(ex->conn, type, buf, len);
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Memory peaks                                                              */
/* ------------------------------------------------------------------------ */

/*
 * The process's anonymous resident bytes now: statm's resident less shared
 * pages, which is RssAnon (shared counts file-backed and shmem pages). 0
 * when /proc is not there. Reads /proc/self/statm, one short line, without
 * stdio: cheap enough to call every few milliseconds from any thread.
 */
static uint64_t sp_exec_anon_now(void)
{
    char buf[160];
    unsigned long long size, resident, shared;
    ssize_t n;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu %llu", &size, &resident, &shared) != 3 || shared > resident)
        return 0;
    return (uint64_t)(resident - shared) * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Reads the anonymous resident memory and raises ex->peak_anon to it. Thread safe. */
static void sp_exec_sample_anon(sp_executor_t *ex)
{
    uint64_t now = sp_exec_anon_now(),
             peak = atomic_load_explicit(&ex->peak_anon, memory_order_relaxed);

    while (now > peak &&
           !atomic_compare_exchange_weak_explicit(&ex->peak_anon, &peak, now, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

static uint64_t sp_exec_peak_rss(void)
{
    char line[256];
    uint64_t kb = 0;
    FILE *f = fopen("/proc/self/status", "r");

    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %llu kB", (unsigned long long *)&kb) == 1)
            break;
    fclose(f);
    return kb * 1024;
}

/*
 * The sampler thread: every SP_EXEC_SAMPLE_MS while tasks run, so that a
 * peak inside a task is seen (a task's memory is back in the arenas by its
 * end); asleep on sample_cond while none runs, until stopping.
 */
static void *sp_exec_sampler(void *arg)
{
    sp_executor_t *ex = arg;

    pthread_mutex_lock(&ex->lock);
    while (!ex->stopping) {
        struct timespec ts;

        if (atomic_load(&ex->running) == 0) {
            pthread_cond_wait(&ex->sample_cond, &ex->lock);
            continue;
        }
        pthread_mutex_unlock(&ex->lock);
        sp_exec_sample_anon(ex);
        ts = sp_exec_deadline(SP_EXEC_SAMPLE_MS * 1000000u);
        pthread_mutex_lock(&ex->lock);
        if (!ex->stopping)
            pthread_cond_timedwait(&ex->sample_cond, &ex->lock, &ts);
    }
    pthread_mutex_unlock(&ex->lock);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Fatal signals                                                             */
/* ------------------------------------------------------------------------ */

/*
 * A crash in job code reaches the driver as such, not only as a closed
 * connection: on SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT the handler
 * writes one FATAL frame, prepared at set-up (it only stores the signal and
 * its thread's task into it), on the control socket, then dies of the same
 * signal with the default action, so whoever waits for the process sees it
 * too. Installed only in a process that is this executor's alone and talks
 * to the driver over a socket (not over MPI). Best effort: the frame may
 * follow another thread's frame cut short, which the driver reads as a
 * malformed message from an executor that is dying anyway.
 */
static unsigned char sp_exec_fatal_frame[SP__CTL_HEADER_SIZE + SP_MSG_FATAL_LEN];
static volatile sig_atomic_t sp_exec_fatal_fd = -1;
static _Thread_local const sp__msg_task_t *sp_exec_tls_task;

static void sp_exec_fatal(int sig)
{
    unsigned char *p = sp_exec_fatal_frame + SP__CTL_HEADER_SIZE;
    const sp__msg_task_t *t = sp_exec_tls_task;
    uint64_t id = t != NULL ? t->task_id : 0;
    int fd = sp_exec_fatal_fd;

    sp_exec_fatal_fd = -1;
    for (int b = 0; b < 4; b++)
        p[b] = (unsigned char)((unsigned)sig >> (8 * b));
    for (int b = 0; b < 8; b++)
        p[4 + b] = (unsigned char)(id >> (8 * b));
    if (fd >= 0 && write(fd, sp_exec_fatal_frame, sizeof(sp_exec_fatal_frame)) < 0) {
        /* Nothing more can be done from a signal handler. */
    }
    raise(sig); /* SA_RESETHAND: the default action now */
}

static void sp_exec_fatal_install(sp_executor_t *ex)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    const uint32_t magic = SP__CTL_MAGIC, len = SP_MSG_FATAL_LEN;
    const uint16_t version = SP__CTL_VERSION, type = SP_MSG_FATAL;
    struct sigaction sa;
    int fd = sp__ctl_fd(ex->conn);

    if (fd < 0)
        return;
    for (int b = 0; b < 4; b++) {
        sp_exec_fatal_frame[b] = (unsigned char)(magic >> (8 * b));
        sp_exec_fatal_frame[8 + b] = (unsigned char)(len >> (8 * b));
    }
    for (int b = 0; b < 2; b++) {
        sp_exec_fatal_frame[4 + b] = (unsigned char)(version >> (8 * b));
        sp_exec_fatal_frame[6 + b] = (unsigned char)(type >> (8 * b));
    }
    sp_exec_fatal_fd = fd;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = sp_exec_fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < SP_ARRAY_SIZE(sigs); i++)
        sigaction(sigs[i], &sa, NULL);
}

/* ------------------------------------------------------------------------ */
/* Tasks                                                                     */
/* ------------------------------------------------------------------------ */

static void sp_exec_corrupt(const sp_map_status_t *status)
{
    uint64_t off = 8; /* data file header */
    unsigned char byte;
    int fd;

    for (uint32_t p = 0; p < status->partitions; p++) {
        if (status->lengths[p] == 0) {
            continue;
        }
        off += status->lengths[p] / 2;
        fd = open(status->data_path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return;
        if (pread(fd, &byte, 1, (off_t)off) == 1) {
            byte ^= 0x5a;
            if (pwrite(fd, &byte, 1, (off_t)off) == 1)
                sp_warn("fault injection: damaged map %llu's output %s at byte %llu",
                        (unsigned long long)status->map_id, status->data_path,
                        (unsigned long long)off);
        }
        close(fd);
        return;
    }
}

/*
 * Serves a committed map output (slot) and keeps it as this executor's own;
 * *payload_p gets its status's wire form for the driver. Takes status.
 */
static sp_status_t sp_exec_keep_output(sp_executor_t *ex, uint32_t slot, sp_map_status_t *status,
                                       uint32_t attempt, void **payload_p, size_t *len_p)
{
    sp_served_output_t *served = NULL, *old;
    sp_map_status_t *old_status;
    sp_status_t st;

    if (ex->corrupt_map == (int64_t)status->map_id && attempt == 0)
        sp_exec_corrupt(status);
    if (ex->transport != NULL &&
        (st = sp_map_output_serve(ex->transport, status, &served)) != SP_OK)
        goto err;
    if ((st = sp_map_status_serialize(status, UINT32_MAX, 0, payload_p, len_p)) != SP_OK)
        goto err;
    pthread_mutex_lock(&ex->lock);
    old = ex->served[slot];
    ex->served[slot] = served;
    ex->mem[slot].held = served != NULL && sp_map_status_in_memory(status);
    if (ex->mem[slot].held) {
        struct stat sb;
        if (stat(status->data_path, &sb) == 0) {
            ex->mem[slot].dev = (uint64_t)sb.st_dev;
            ex->mem[slot].ino = (uint64_t)sb.st_ino;
        } else {
            ex->mem[slot].held = false; /* gone already: a move will not be seen */
        }
    }
    old_status = ex->own[slot];
    ex->own[slot] = status;
    pthread_mutex_unlock(&ex->lock);
    sp_map_output_unserve(old);
    sp_map_status_destroy(old_status);
    return SP_OK;
err:
    sp_map_output_unserve(served);
    sp_map_status_destroy(status);
    return st;
}

static sp_status_t sp_exec_map(sp_executor_t *ex, const sp__msg_task_t *t, sp__msg_result_t *r,
                               void **payload_p)
{
    sp_map_status_t *status = NULL;
    sp_status_t st;

    if (ex->job.plan.partitioning == SP_JOB_RANGE && ex->job.plan.partitions > 1 &&
        ex->nbounds[0] + 1 != ex->job.plan.partitions)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "map task %u came before the range bounds", t->index);
    if (t->attempt > 0 &&
        (st = sp_shuffle_remove_output(ex->conf, ex->job.shuffle_id, t->index)) != SP_OK)
        return st;
    st = sp__task_run_map(&ex->env, t->index, t->attempt, ex->nbounds[0] ? ex->bounds[0] : NULL,
                          &status, &r->metrics);
    if (st != SP_OK)
        return st;
    return sp_exec_keep_output(ex, t->index, status, t->attempt, payload_p, &r->payload_len);
}

/* Whether the driver canceled task id (under lock). */
static bool sp_exec_canceled(const sp_executor_t *ex, uint64_t task_id)
{
    for (size_t i = 0; i < ex->ncanceled; i++)
        if (ex->canceled[i] == task_id)
            return true;
    return false;
}

/* What a reduce task started before every map output was in reads the rest from. */
typedef struct sp_exec_feed {
    sp_executor_t *ex;
    const sp__msg_task_t *task;
    sp_status_ref_t **refs;      /* per map: the status handed to the task; NULL: not yet */
    const sp_map_status_t **sts; /* refs' statuses, in the order handed over */
    size_t nsts;
    uint64_t gen; /* status_gen when last looked */
} sp_exec_feed_t;

static sp_status_t sp_exec_feed_next(void *arg, int timeout_ms,
                                     const sp_map_status_t *const **statuses_p, size_t *count_p)
{
    sp_exec_feed_t *f = arg;
    sp_executor_t *ex = f->ex;
    size_t first = f->nsts;
    sp_status_t st = SP_OK;

    pthread_mutex_lock(&ex->lock);
    if (f->gen == ex->status_gen && timeout_ms > 0 && !ex->stopping &&
        !sp_exec_canceled(ex, f->task->task_id)) {
        struct timespec ts = sp_exec_deadline((uint64_t)timeout_ms * 1000000u);
        pthread_cond_timedwait(&ex->status_cond, &ex->lock, &ts);
    }
    if (sp_exec_canceled(ex, f->task->task_id)) {
        st = SP_RAISE(SP_ERR_CANCELED,
                      "the driver canceled reduce task %u attempt %u while it waited for map "
                      "outputs, to give its slot to a map task",
                      f->task->index, f->task->attempt);
    } else if (ex->stopping) {
        st = SP_RAISE(SP_ERR_CANCELED, "executor %u is stopping", ex->job.executor_id);
    } else if (f->gen != ex->status_gen) {
        f->gen = ex->status_gen;
        for (uint32_t m = 0; m < ex->job.plan.maps; m++)
            if (f->refs[m] == NULL && ex->statuses[m] != NULL) {
                f->refs[m] = ex->statuses[m];
                atomic_fetch_add(&f->refs[m]->refs, 1);
                f->sts[f->nsts++] = f->refs[m]->status;
            }
    }
    pthread_mutex_unlock(&ex->lock);
    *statuses_p = f->sts + first;
    *count_p = f->nsts - first;
    return st;
}

/* SPATE_FAULT_EVICT_OUTPUTS: the first reduce task evicts every output held in memory. */
static void sp_exec_fault_evict(sp_executor_t *ex)
{
    if (atomic_exchange(&ex->evict_at_reduce, false)) {
        uint64_t freed = sp_memory_manager_evict_storage(ex->mm, UINT64_MAX);
        sp_warn("fault injection: executor %u evicted %llu bytes of storage memory",
                ex->job.executor_id, (unsigned long long)freed);
    }
}

static sp_status_t sp_exec_reduce(sp_executor_t *ex, const sp__msg_task_t *t, sp__msg_result_t *r)
{
    uint32_t maps = ex->job.plan.maps, missing = 0;
    sp_status_ref_t **refs = calloc(maps + 1, sizeof(*refs));
    const sp_map_status_t **sts = calloc(maps + 1, sizeof(*sts));
    const sp_map_status_t **handed = calloc(maps + 1, sizeof(*handed));
    sp_exec_feed_t feed = {.ex = ex, .task = t, .refs = refs, .sts = handed};
    sp__reduce_feed_t rf = {.next = sp_exec_feed_next, .arg = &feed};
    sp_status_t st = SP_OK;

    if (refs == NULL || sts == NULL || handed == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u statuses", maps);
        goto out;
    }
    sp_exec_fault_evict(ex);
    pthread_mutex_lock(&ex->lock);
    feed.gen = ex->status_gen;
    for (uint32_t m = 0; m < maps; m++) {
        refs[m] = ex->statuses[m];
        if (refs[m] != NULL) {
            atomic_fetch_add(&refs[m]->refs, 1);
            sts[m] = refs[m]->status;
        } else {
            missing++;
        }
    }
    pthread_mutex_unlock(&ex->lock);
    /*
     * Started before every map output is in (slow start, or an output lost
     * meanwhile and being computed again): read incrementally, taking the
     * others as they come.
     */
    st = sp__task_run_reduce(&ex->env, t->index, t->attempt, sts, maps, missing > 0 ? &rf : NULL,
                             &r->failed_map, &r->metrics);
out:
    for (uint32_t m = 0; refs != NULL && m < maps; m++)
        sp_status_unref(refs[m]);
    free(refs);
    free(sts);
    free(handed);
    return st;
}

/*
 * A graph task's view of the map statuses: the statuses of a shuffle it
 * asks for are taken (referenced) then, and kept until the task ends.
 */
typedef struct sp_exec_gview {
    sp_executor_t *ex;
    sp_status_ref_t **refs;      /* per slot */
    const sp_map_status_t **sts; /* per slot */
} sp_exec_gview_t;

static sp_status_t sp_exec_gview_statuses(void *arg, uint32_t shuffle,
                                          const sp_map_status_t *const **list_p, size_t *count_p)
{
    sp_exec_gview_t *v = arg;
    sp_executor_t *ex = v->ex;
    uint32_t base = ex->sbase[shuffle], maps = ex->smaps[shuffle], present = 0;

    pthread_mutex_lock(&ex->lock);
    for (uint32_t m = base; m < base + maps; m++) {
        if (v->refs[m] == NULL && ex->statuses[m] != NULL) {
            v->refs[m] = ex->statuses[m];
            atomic_fetch_add(&v->refs[m]->refs, 1);
            v->sts[m] = v->refs[m]->status;
        }
        present += v->sts[m] != NULL;
    }
    pthread_mutex_unlock(&ex->lock);
    if (present == 0)
        return SP_ERR_NOT_FOUND; /* never computed, or every output lost */
    *list_p = v->sts + base;
    *count_p = maps;
    return SP_OK;
}

static sp_status_t sp_exec_gview_bounds(void *arg, uint32_t shuffle, const sp_key_t **keys_p)
{
    sp_exec_gview_t *v = arg;
    sp_executor_t *ex = v->ex;
    sp_status_t st = SP_OK;

    pthread_mutex_lock(&ex->lock);
    if (ex->bounds[shuffle] == NULL || ex->nbounds[shuffle] + 1 != ex->sparts[shuffle])
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "a task of shuffle %u came before its range bounds",
                      shuffle);
    else
        *keys_p = ex->bounds[shuffle];
    pthread_mutex_unlock(&ex->lock);
    return st;
}

/* A task of a graph job (executor/stage_task.c); a map stage's output is served and kept. */
static sp_status_t sp_exec_graph_task(sp_executor_t *ex, const sp__msg_task_t *t,
                                      sp__msg_result_t *r, void **payload_p)
{
    const sp_graph_t *g = ex->graph;
    sp_exec_gview_t view = {.ex = ex};
    sp__graph_env_t env = {.graph = g,
                           .job = ex->desc,
                           .params = &ex->params,
                           .mm = ex->mm,
                           .conf = ex->conf,
                           .transport = ex->transport,
                           .blocks = ex->bs,
                           .shuffle_base = ex->job.shuffle_id,
                           .executor_id = ex->job.executor_id,
                           .run_id = ex->job.app_id,
                           .statuses = sp_exec_gview_statuses,
                           .bounds = sp_exec_gview_bounds,
                           .arg = &view};
    bool map = t->kind != SP_TASK_KIND_REDUCE;
    sp__graph_task_out_t out;
    sp_status_t st;

    if (t->stage >= sp__graph_stages(g) || map != (t->stage < g->nshuffles))
        return SP_RAISE(SP_ERR_BAD_FORMAT, "task %llu: stage %u of kind %u is not in the graph",
                        (unsigned long long)t->task_id, t->stage, t->kind);
    view.refs = calloc(ex->nslots + 1, sizeof(*view.refs));
    view.sts = calloc(ex->nslots + 1, sizeof(*view.sts));
    if (view.refs == NULL || view.sts == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u statuses", ex->nslots);
        goto out;
    }
    if (t->kind == SP_TASK_KIND_REDUCE)
        sp_exec_fault_evict(ex);
    if (t->kind == SP_TASK_KIND_MAP && t->attempt > 0 &&
        (st = sp_shuffle_remove_output(ex->conf, ex->job.shuffle_id + t->stage, t->index)) != SP_OK)
        goto out;
    st = sp__graph_task_run(&env, t->stage, t->index, t->attempt, t->kind == SP_TASK_KIND_SAMPLE,
                            t->sample_count, &out, &r->metrics);
    if (st != SP_OK) {
        r->shuffle = out.missing_shuffle != UINT64_MAX ? (uint32_t)out.missing_shuffle
                     : out.failed_map != UINT64_MAX    ? out.failed_shuffle
                                                       : UINT32_MAX;
        r->failed_map = out.failed_map;
        goto out;
    }
    r->ncached = SP_MIN(out.cached, SP_MSG_MAX_CACHED);
    memcpy(r->cached, out.cached_ids, r->ncached * sizeof(r->cached[0]));
    if (t->kind == SP_TASK_KIND_MAP) {
        sp_map_status_t *status = out.status;
        out.status = NULL;
        st = sp_exec_keep_output(ex, ex->sbase[t->stage] + t->index, status, t->attempt, payload_p,
                                 &r->payload_len);
    } else {
        *payload_p = out.payload;
        r->payload_len = out.payload_len;
        out.payload = NULL;
    }
    sp__graph_task_out_clear(&out);
out:
    for (uint32_t m = 0; view.refs != NULL && m < ex->nslots; m++)
        sp_status_unref(view.refs[m]);
    free(view.refs);
    free(view.sts);
    return st;
}

/*
 * Outputs of this executor that eviction moved from memory to disk: the
 * transport maps the disk file in place of the in-memory one under its
 * registered chunks (same bytes: keys and reads in flight stay good, and the
 * memory goes), the output is served again from its file (ofi and mpi share
 * those chunks: the same keys; local keys name the new file) and its new
 * status goes to the driver (OUTPUT_MOVED), which passes it on to every
 * executor. A reader whose old key no longer reads (local) fails its fetch,
 * and the driver runs it again without recomputing the map.
 */
static sp_status_t sp_exec_publish_moves(sp_executor_t *ex)
{
    uint64_t seen = sp_shuffle_outputs_evicted();
    sp_status_t st = SP_OK;

    if (seen == ex->evictions_seen || ex->transport == NULL)
        return SP_OK;
    ex->evictions_seen = seen;
    for (uint32_t m = 0; m < ex->nslots && st == SP_OK; m++) {
        sp_served_output_t *served = NULL, *old = NULL;
        void *blob = NULL;
        size_t len = 0;

        pthread_mutex_lock(&ex->lock);
        if (ex->mem[m].held && !sp_map_status_in_memory(ex->own[m])) {
            /* Its chunks map the disk file now: their keys and reads in flight stay good. */
            int fd = open(ex->own[m]->data_path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || sp_transport_file_rebind(ex->transport, ex->mem[m].dev, ex->mem[m].ino,
                                                   fd) != SP_OK)
                sp_warn("executor %u: map %u's output moved to disk, and its old keys no longer "
                        "read: %s",
                        ex->job.executor_id, m, fd < 0 ? strerror(errno) : sp_last_error());
            if (fd >= 0)
                close(fd);
            st = sp_map_output_serve(ex->transport, ex->own[m], &served);
            if (st == SP_OK)
                st = sp_map_status_serialize(ex->own[m], UINT32_MAX, 0, &blob, &len);
            if (st == SP_OK) {
                old = ex->served[m];
                ex->served[m] = served;
                ex->mem[m].held = false;
                served = NULL;
            }
        }
        pthread_mutex_unlock(&ex->lock);
        sp_map_output_unserve(served);
        sp_map_output_unserve(old);
        if (st == SP_OK && blob != NULL) {
            sp_info("executor %u: map %u's output moved from memory to disk", ex->job.executor_id,
                    m);
            st = sp_exec_send(ex, SP_MSG_OUTPUT_MOVED, SP_OK, blob, len);
        } else {
            free(blob);
        }
    }
    return st;
}

/*
 * The process's CPU time so far, every thread (workers, the transport's
 * progress thread, the main thread): what the driver's idle core time per
 * stage is computed from. An executor on a thread of the driver's process
 * (rank 0 under mpirun) counts the driver's too.
 */
static uint64_t sp_exec_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sp_exec_run_task(sp_executor_t *ex, const sp__msg_task_t *t)
{
    sp__msg_result_t r = {.task_id = t->task_id,
                          .kind = t->kind,
                          .index = t->index,
                          .attempt = t->attempt,
                          .failed_map = UINT64_MAX};
    void *payload = NULL, *buf = NULL;
    size_t len = 0;
    sp_status_t st;

    r.stage = t->stage;
    r.shuffle = UINT32_MAX;
    switch (ex->graph != NULL ? UINT8_MAX : t->kind) {
    case UINT8_MAX: st = sp_exec_graph_task(ex, t, &r, &payload); break;
    case SP_TASK_KIND_SAMPLE:
        st = sp__task_run_sample(&ex->env, t->index, t->sample_count, &payload, &r.payload_len);
        break;
    case SP_TASK_KIND_MAP: st = sp_exec_map(ex, t, &r, &payload); break;
    case SP_TASK_KIND_REDUCE: st = sp_exec_reduce(ex, t, &r); break;
    default:
        st = SP_RAISE(SP_ERR_BAD_FORMAT, "task %llu of unknown kind %u",
                      (unsigned long long)t->task_id, t->kind);
        break;
    }
    sp_exec_sample_anon(ex);
    if (st > 0 || (st < 0 && strncmp(sp_status_str(st), "SP_ERR_UNKNOWN", 14) == 0)) {
        /* The job's callback returned something that is not a status: still the task's error. */
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", sp_last_error());
        st = SP_RAISE(SP_ERR_INTERNAL, "%s (the job returned %d, which is not an sp_status_t)", msg,
                      (int)st);
    }
    r.status = st;
    if (st != SP_OK) {
        snprintf(r.message, sizeof(r.message), "%s", sp_last_error());
        sp_info("task %llu (%s %u attempt %u) failed: %s", (unsigned long long)t->task_id,
                t->kind == SP_TASK_KIND_MAP      ? "map"
                : t->kind == SP_TASK_KIND_REDUCE ? "reduce"
                                                 : "sample",
                t->index, t->attempt, r.message);
        free(payload);
        payload = NULL;
        r.payload_len = 0;
    }
    r.payload = payload;
    r.cpu_ns = sp_exec_cpu_ns();
    st = sp__msg_result_encode(&r, &buf, &len);
    free(payload);
    if (sp_exec_send(ex, SP_MSG_RESULT, st, buf, len) != SP_OK)
        sp_warn("could not report task %llu to the driver: %s", (unsigned long long)t->task_id,
                sp_last_error());
}

typedef struct sp_worker_arg {
    sp_executor_t *ex;
    uint32_t index;
} sp_worker_arg_t;

static void *sp_exec_worker(void *arg)
{
    sp_executor_t *ex = ((sp_worker_arg_t *)arg)->ex;
    uint32_t index = ((sp_worker_arg_t *)arg)->index;

    free(arg);
    if (ex->bind && sp_topology_bind_thread_numa(ex->topo, ex->numa_index) != SP_OK)
        sp_debug("worker not bound: %s", sp_last_error());
    for (;;) {
        sp_task_item_t *item;

        pthread_mutex_lock(&ex->lock);
        while (ex->head == NULL && !ex->stopping)
            pthread_cond_wait(&ex->cond, &ex->lock);
        if (ex->head == NULL) {
            ex->live_workers--;
            pthread_cond_broadcast(&ex->exit_cond);
            pthread_mutex_unlock(&ex->lock);
            return NULL;
        }
        item = ex->head;
        ex->head = item->next;
        if (ex->head == NULL)
            ex->tail = NULL;
        if (atomic_fetch_add(&ex->running, 1) == 0)
            pthread_cond_signal(&ex->sample_cond);
        ex->current[index] = &item->task;
        pthread_mutex_unlock(&ex->lock);
        sp_exec_tls_task = &item->task;
        sp_exec_run_task(ex, &item->task);
        sp_exec_tls_task = NULL;
        atomic_fetch_sub(&ex->running, 1);
        pthread_mutex_lock(&ex->lock);
        ex->current[index] = NULL;
        for (size_t i = 0; i < ex->ncanceled; i++)
            if (ex->canceled[i] == item->task.task_id) {
                ex->canceled[i] = ex->canceled[--ex->ncanceled];
                break;
            }
        pthread_mutex_unlock(&ex->lock);
        free(item);
    }
}

/* ------------------------------------------------------------------------ */
/* Set-up                                                                    */
/* ------------------------------------------------------------------------ */

/* Points every shuffle.local_dirs entry at DIR/APP/exec-ID: executors sharing a host never share
 * files. */
static sp_status_t sp_exec_local_dirs(sp_executor_t *ex)
{
    const char *spec;
    size_t cap = 0, len = 0;
    char *out = NULL;
    sp_status_t st;

    if ((st = sp_conf_get_string(ex->conf, "shuffle.local_dirs", &spec)) != SP_OK)
        return st;
    for (const char *p = spec;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        char *grown;
        int w;

        while (n > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            n--;
        }
        if (n > 0) {
            cap = len + n + strlen(ex->job.app_id) + 64;
            if ((grown = realloc(out, cap)) == NULL) {
                free(out);
                return SP_RAISE(SP_ERR_NOMEM, "no memory for the shuffle directories");
            }
            out = grown;
            w = snprintf(out + len, cap - len, "%s%.*s/%s/exec-%u", len ? "," : "", (int)n, p,
                         ex->job.app_id, ex->job.executor_id);
            len += (size_t)w;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (out == NULL)
        return SP_RAISE(SP_ERR_BAD_CONF, "shuffle.local_dirs is empty");
    {
        char *copy = strdup(out), *save = NULL;
        if (copy == NULL) {
            free(out);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the shuffle directories");
        }
        for (char *d = strtok_r(copy, ",", &save); d != NULL && st == SP_OK;
             d = strtok_r(NULL, ",", &save))
            st = sp__mkdirs(d);
        free(copy);
        if (st != SP_OK) {
            free(out);
            return st;
        }
    }
    st = sp_conf_set(ex->conf, "shuffle.local_dirs", out);
    ex->app_dirs = out;
    return st;
}

/* Removes the files of every shuffle of the job this executor wrote. */
static void sp_exec_remove_shuffles(sp_executor_t *ex)
{
    if (ex->conf == NULL || ex->job.shuffle_id == 0)
        return;
    for (uint32_t s = 0; s < SP_MAX(ex->nshuffles, 1u); s++)
        sp_shuffle_remove(ex->conf, ex->job.shuffle_id + s);
}

static int sp_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    SP_UNUSED(sb);
    SP_UNUSED(flag);
    SP_UNUSED(ftw);
    remove(path);
    return 0;
}

/* Removes this executor's directories (and the app directory when it is left empty). */
static void sp_exec_remove_dirs(sp_executor_t *ex)
{
    char *copy, *save = NULL;

    if (ex->app_dirs == NULL || (copy = strdup(ex->app_dirs)) == NULL)
        return;
    for (char *d = strtok_r(copy, ",", &save); d != NULL; d = strtok_r(NULL, ",", &save)) {
        char *slash;
        nftw(d, sp_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        if ((slash = strrchr(d, '/')) != NULL) {
            *slash = '\0';
            rmdir(d); /* fails while other executors still use it */
        }
    }
    free(copy);
}

void sp__app_dirs_remove(const sp_conf_t *conf, const char *app_id)
{
    const char *spec = NULL;
    char *copy, *save = NULL, path[4096];

    if (app_id == NULL || app_id[0] == '\0' || strchr(app_id, '/') != NULL ||
        sp_conf_get_string(conf, "shuffle.local_dirs", &spec) != SP_OK ||
        (copy = strdup(spec)) == NULL)
        return;
    for (char *d = strtok_r(copy, ",", &save); d != NULL; d = strtok_r(NULL, ",", &save)) {
        while (*d == ' ' || *d == '\t')
            d++;
        if (*d != '\0' && (size_t)snprintf(path, sizeof(path), "%s/%s", d, app_id) < sizeof(path))
            nftw(path, sp_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    free(copy);
}

/*
 * The job's shuffles and their slots: a graph job's graph (built here from
 * the same parameters as on the driver), or a two-stage job's one shuffle.
 */
static sp_status_t sp_exec_shuffles(sp_executor_t *ex)
{
    uint32_t n = 1;
    sp_status_t st;

    if (sp__job_is_graph(ex->desc)) {
        if (ex->job.plan.maps != 0)
            return SP_RAISE(SP_ERR_BAD_FORMAT, "JOB: graph job %s came with a plan",
                            ex->desc->name);
        if ((st = sp__graph_build(ex->desc, &ex->params, &ex->graph)) != SP_OK)
            return st;
        n = ex->graph->nshuffles;
    } else if (ex->job.plan.maps == 0) {
        return SP_RAISE(SP_ERR_BAD_FORMAT, "JOB: job %s came without a plan", ex->desc->name);
    }
    ex->nshuffles = n;
    ex->sbase = calloc(n + 1, sizeof(*ex->sbase));
    ex->smaps = calloc(n + 1, sizeof(*ex->smaps));
    ex->sparts = calloc(n + 1, sizeof(*ex->sparts));
    ex->bounds = calloc(n + 1, sizeof(*ex->bounds));
    ex->bounds_buf = calloc(n + 1, sizeof(*ex->bounds_buf));
    ex->nbounds = calloc(n + 1, sizeof(*ex->nbounds));
    if (ex->sbase == NULL || ex->smaps == NULL || ex->sparts == NULL || ex->bounds == NULL ||
        ex->bounds_buf == NULL || ex->nbounds == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u shuffles", n);
    for (uint32_t s = 0; s < n; s++) {
        ex->sbase[s] = ex->nslots;
        ex->smaps[s] = ex->graph != NULL ? ex->graph->shuffles[s].maps : ex->job.plan.maps;
        ex->sparts[s] =
            ex->graph != NULL ? ex->graph->shuffles[s].partitions : ex->job.plan.partitions;
        ex->nslots += ex->smaps[s];
    }
    ex->statuses = calloc(ex->nslots + 1, sizeof(*ex->statuses));
    ex->served = calloc(ex->nslots + 1, sizeof(*ex->served));
    ex->mem = calloc(ex->nslots + 1, sizeof(*ex->mem));
    ex->own = calloc(ex->nslots + 1, sizeof(*ex->own));
    if (ex->statuses == NULL || ex->served == NULL || ex->mem == NULL || ex->own == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u map statuses", ex->nslots);
    return SP_OK;
}

/* The slot of (shuffle id, map id), or SP_ERR_BAD_FORMAT naming what (a message) said. */
static sp_status_t sp_exec_slot(const sp_executor_t *ex, uint64_t shuffle_id, uint64_t map_id,
                                const char *what, uint32_t *slot_p)
{
    uint64_t s = shuffle_id - ex->job.shuffle_id;

    if (shuffle_id < ex->job.shuffle_id || s >= ex->nshuffles || map_id >= ex->smaps[s])
        return SP_RAISE(SP_ERR_BAD_FORMAT, "%s names shuffle %llu map %llu, not of this job", what,
                        (unsigned long long)shuffle_id, (unsigned long long)map_id);
    *slot_p = ex->sbase[s] + (uint32_t)map_id;
    return SP_OK;
}

static sp_status_t sp_exec_setup(sp_executor_t *ex, const sp__executor_opts_t *opts,
                                 sp__msg_ready_t *ready)
{
    sp_executor_plan_t *xplan = NULL;
    const char *topo_src = NULL;
    const sp_executor_slot_t *slot;
    int64_t cores;
    sp_status_t st;

    if ((st = sp_conf_dup(opts->conf, &ex->conf)) != SP_OK)
        return st;
    for (uint32_t i = 0; i < ex->job.nconf; i++)
        if ((st = sp_conf_set(ex->conf, ex->job.conf_keys[i], ex->job.conf_values[i])) != SP_OK)
            return SP_RAISE(st, "configuration from the driver: %s", sp_last_error());
    if ((st = sp_exec_local_dirs(ex)) != SP_OK)
        return st;
    if ((st = sp__job_load(ex->job.job_name, &ex->desc, &ex->plugin)) != SP_OK)
        return st;
    ex->params = (sp_job_params_t){.input = ex->job.input,
                                   .output = ex->job.output,
                                   .size = ex->job.size,
                                   .partitions = ex->job.partitions,
                                   .executors = ex->job.executors,
                                   .slots = ex->job.slots,
                                   .args = (const char *const *)ex->job.args,
                                   .nargs = ex->job.nargs,
                                   .conf = ex->conf};
    if ((st = sp_conf_get_string(ex->conf, "memory.topology", &topo_src)) != SP_OK ||
        (st = sp_topology_create(topo_src[0] ? topo_src : NULL, &ex->topo)) != SP_OK)
        return st;
    if ((st = sp_topology_plan_executors(ex->topo, ex->conf, opts->local_executors, &xplan)) !=
        SP_OK)
        return st;
    slot = &xplan->slots[opts->local_index % xplan->count];
    ex->numa_index = slot->numa_index;
    ex->bind = sp_topology_is_this_system(ex->topo);
    snprintf(ready->cpuset, sizeof(ready->cpuset), "%s", slot->cpuset ? slot->cpuset : "");
    ready->numa_node = slot->numa_os_index;
    if (!sp_conf_is_set(ex->conf, "memory.executor")) {
        char mem[32];
        snprintf(mem, sizeof(mem), "%llu", (unsigned long long)slot->memory_bytes);
        if ((st = sp_conf_set(ex->conf, "memory.executor", mem)) != SP_OK)
            goto out_plan;
    }
    if ((st = sp_conf_get_int(ex->conf, "executor.cores", &cores)) != SP_OK)
        goto out_plan;
    ex->nworkers = cores > 0 ? (uint32_t)cores : SP_MAX(slot->cores, 1u);
    if ((st = sp_memory_manager_create(ex->conf, ex->topo, ex->numa_index, &ex->mm)) != SP_OK)
        goto out_plan;
    {
        sp_memory_layout_t layout;
        sp_memory_manager_layout(ex->mm, &layout);
        ready->memory = layout.executor_bytes;
    }
    if (opts->transport) {
        size_t alen = 0;
        unsigned char addr[256];
        /*
         * Same-host peers read outputs through their files unless told not to:
         * 10-24 % less CPU for TeraSort on one host than through the network
         * backend (docs/PERFORMANCE.md, "Map outputs in storage memory").
         */
        if (!sp_conf_is_set(ex->conf, "transport.local") &&
            (st = sp_conf_set(ex->conf, "transport.local", "true")) != SP_OK)
            goto out_plan;
        if ((st = sp_transport_open(ex->conf, &ex->transport)) != SP_OK)
            goto out_plan;
        if ((st = sp_transport_address(ex->transport, addr, sizeof(addr), &alen)) != SP_OK)
            goto out_plan;
        for (size_t i = 0; i < alen && 2 * i + 2 < sizeof(ready->address); i++)
            snprintf(ready->address + 2 * i, 3, "%02x", addr[i]);
    }
    ready->slots = ex->nworkers;
    if ((st = sp_exec_shuffles(ex)) != SP_OK)
        goto out_plan;
    {
        /* The executor's storage memory: its block store, in its first directory. */
        char dir[4096];
        size_t n = strcspn(ex->app_dirs, ",");
        snprintf(dir, sizeof(dir), "%.*s/blocks", (int)n, ex->app_dirs);
        if ((st = sp_block_store_create(ex->mm, dir, &ex->bs)) != SP_OK)
            goto out_plan;
        ex->evictions_seen = sp_shuffle_outputs_evicted();
    }
    ex->env = (sp__task_env_t){.job = ex->desc,
                               .params = &ex->params,
                               .plan = &ex->job.plan,
                               .mm = ex->mm,
                               .conf = ex->conf,
                               .transport = ex->transport,
                               .shuffle_id = ex->job.shuffle_id,
                               .executor_id = ex->job.executor_id,
                               .run_id = ex->job.app_id};
out_plan:
    sp_topology_plan_destroy(xplan);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Messages from the driver                                                  */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_exec_on_map_output(sp_executor_t *ex, const void *buf, size_t len)
{
    sp_status_ref_t *ref, *old;
    sp_map_status_t *status;
    sp_status_t st;

    uint32_t slot = 0;

    if ((st = sp_map_status_deserialize(buf, len, &status)) != SP_OK)
        return st;
    if ((st = sp_exec_slot(ex, status->shuffle_id, status->map_id, "MAP_OUTPUT", &slot)) != SP_OK) {
        sp_map_status_destroy(status);
        return st;
    }
    if (status->executor_id == ex->job.executor_id) {
        /* Our own output: read in place, not through the transport. */
        free(status->address);
        status->address = NULL;
    }
    if ((ref = calloc(1, sizeof(*ref))) == NULL) {
        sp_map_status_destroy(status);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a map status");
    }
    ref->status = status;
    atomic_init(&ref->refs, 1);
    pthread_mutex_lock(&ex->lock);
    old = ex->statuses[slot];
    ex->statuses[slot] = ref;
    ex->status_gen++;
    pthread_cond_broadcast(&ex->status_cond);
    pthread_mutex_unlock(&ex->lock);
    sp_status_unref(old);
    return SP_OK;
}

static sp_status_t sp_exec_on_map_lost(sp_executor_t *ex, const void *buf, size_t len)
{
    sp__msg_map_lost_t m;
    sp_status_ref_t *old = NULL;
    sp_served_output_t *served = NULL;
    sp_map_status_t *own = NULL;
    sp_status_t st;

    uint32_t slot = 0;

    if ((st = sp__msg_map_lost_decode(buf, len, &m)) != SP_OK ||
        (st = sp_exec_slot(ex, m.shuffle_id, m.map_id, "MAP_LOST", &slot)) != SP_OK)
        return st;
    pthread_mutex_lock(&ex->lock);
    if (ex->statuses[slot] != NULL && ex->statuses[slot]->status->executor_id == m.executor_id) {
        old = ex->statuses[slot];
        ex->statuses[slot] = NULL;
    }
    if (m.executor_id == ex->job.executor_id) {
        served = ex->served[slot];
        ex->served[slot] = NULL;
        ex->mem[slot].held = false;
        own = ex->own[slot];
        ex->own[slot] = NULL;
    }
    pthread_mutex_unlock(&ex->lock);
    sp_status_unref(old);
    if (m.executor_id == ex->job.executor_id) {
        sp_map_status_destroy(own);
        sp_map_output_unserve(served);
        sp_shuffle_remove_output(ex->conf, m.shuffle_id, m.map_id);
    }
    return SP_OK;
}

/* Removes this executor's blocks of a graph dataset (UNPERSIST). */
static sp_status_t sp_exec_on_unpersist(sp_executor_t *ex, const void *buf, size_t len)
{
    const sp_dataset_t *ds;
    uint32_t id;
    char block[256];
    sp_status_t st;

    if ((st = sp__msg_unpersist_decode(buf, len, &id)) != SP_OK)
        return st;
    if (ex->graph == NULL || id >= ex->graph->ndatasets)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "UNPERSIST names dataset %u, not of this job", id);
    ds = ex->graph->datasets[id];
    for (uint32_t p = 0; p < ds->partitions; p++) {
        sp__graph_block_id(ex->job.app_id, id, p, block, sizeof(block));
        (void)sp_block_store_remove(ex->bs, block);
    }
    return SP_OK;
}

/* BOUNDS: a shuffle's range bounds; the keys point into the message, which is kept (*buf_p). */
static sp_status_t sp_exec_on_bounds(sp_executor_t *ex, void **buf_p, size_t len)
{
    sp_key_t *keys = NULL;
    uint32_t shuffle = 0, count = 0;
    sp_status_t st;

    if ((st = sp__msg_bounds_decode(*buf_p, len, &shuffle, &keys, &count)) != SP_OK)
        return st;
    if (shuffle >= ex->nshuffles || count + 1 != ex->sparts[shuffle]) {
        free(keys);
        return SP_RAISE(SP_ERR_BAD_FORMAT, "BOUNDS of shuffle %u with %u keys, not of this job",
                        shuffle, count);
    }
    pthread_mutex_lock(&ex->lock);
    free(ex->bounds[shuffle]);
    free(ex->bounds_buf[shuffle]);
    ex->bounds[shuffle] = keys;
    ex->bounds_buf[shuffle] = *buf_p;
    ex->nbounds[shuffle] = count;
    pthread_mutex_unlock(&ex->lock);
    *buf_p = NULL;
    return SP_OK;
}

/*
 * CANCEL: a reduce task of this executor that waits for map outputs gives
 * up (sp_exec_feed_next). The id is kept while the task is queued or runs
 * (a task that no longer waits finishes as usual); any other id is ignored.
 */
static sp_status_t sp_exec_on_cancel(sp_executor_t *ex, const void *buf, size_t len)
{
    sp__msg_cancel_t c;
    bool known = false;
    sp_status_t st;

    if ((st = sp__msg_cancel_decode(buf, len, &c)) != SP_OK)
        return st;
    pthread_mutex_lock(&ex->lock);
    for (uint32_t i = 0; i < ex->nworkers && !known; i++)
        known = ex->current[i] != NULL && ex->current[i]->task_id == c.task_id;
    for (const sp_task_item_t *it = ex->head; it != NULL && !known; it = it->next)
        known = it->task.task_id == c.task_id;
    if (known && !sp_exec_canceled(ex, c.task_id)) {
        if (ex->ncanceled == ex->cap_canceled) {
            size_t cap = ex->cap_canceled ? 2 * ex->cap_canceled : 8;
            uint64_t *grown = realloc(ex->canceled, cap * sizeof(*grown));
            if (grown == NULL) {
                pthread_mutex_unlock(&ex->lock);
                return SP_RAISE(SP_ERR_NOMEM, "no memory to cancel task %llu",
                                (unsigned long long)c.task_id);
            }
            ex->canceled = grown;
            ex->cap_canceled = cap;
        }
        ex->canceled[ex->ncanceled++] = c.task_id;
        pthread_cond_broadcast(&ex->status_cond);
    }
    pthread_mutex_unlock(&ex->lock);
    sp_debug("executor %u: cancel of task %llu %s", ex->job.executor_id,
             (unsigned long long)c.task_id, known ? "taken" : "ignored (not here)");
    return SP_OK;
}

static sp_status_t sp_exec_on_task(sp_executor_t *ex, const void *buf, size_t len)
{
    sp_task_item_t *item = calloc(1, sizeof(*item));
    sp_status_t st;

    if (item == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a task");
    if ((st = sp__msg_task_decode(buf, len, &item->task)) != SP_OK) {
        free(item);
        return st;
    }
    pthread_mutex_lock(&ex->lock);
    if (ex->tail != NULL)
        ex->tail->next = item;
    else
        ex->head = item;
    ex->tail = item;
    pthread_cond_signal(&ex->cond);
    pthread_mutex_unlock(&ex->lock);
    return SP_OK;
}

static sp_status_t sp_exec_heartbeat(sp_executor_t *ex, uint16_t type)
{
    sp__msg_heartbeat_t hb = {
        .peak_rss = sp_exec_peak_rss(), .running = ex->running, .cpu_ns = sp_exec_cpu_ns()};
    sp_memory_stats_t ms;
    void *buf = NULL;
    size_t len = 0;
    sp_status_t st;

    sp_exec_sample_anon(ex);
    hb.peak_anon = atomic_load(&ex->peak_anon);
    if (ex->mm != NULL) {
        sp_memory_manager_stats(ex->mm, &ms);
        hb.execution_used = ms.execution_used;
        ex->peak_storage = ms.peak_storage_used;
    }
    hb.peak_storage = ex->peak_storage; /* BYE: the manager is gone, its peak is kept */
    st = sp__msg_heartbeat_encode(&hb, &buf, &len);
    return sp_exec_send(ex, type, st, buf, len);
}

/*
 * Stops the workers and frees everything. A worker still busy after
 * stop_grace_ns is stuck in job code and cannot be stopped: the executor is
 * then abandoned (its files are removed, nothing a worker may touch is
 * freed) and teardown returns false: the process must exit.
 */
static bool sp_exec_teardown(sp_executor_t *ex)
{
    const char *const kinds[] = {"sample", "map", "reduce"};
    char stuck[128] = "";
    struct timespec ts = sp_exec_deadline(ex->stop_grace_ns);

    pthread_mutex_lock(&ex->lock);
    ex->stopping = true;
    pthread_cond_broadcast(&ex->cond);
    pthread_cond_broadcast(&ex->sample_cond);
    pthread_cond_broadcast(&ex->status_cond);
    while (ex->live_workers > 0)
        if (pthread_cond_timedwait(&ex->exit_cond, &ex->lock, &ts) == ETIMEDOUT)
            break;
    if (ex->live_workers > 0) {
        for (uint32_t i = 0; i < ex->nworkers && stuck[0] == '\0'; i++)
            if (ex->current[i] != NULL)
                snprintf(stuck, sizeof(stuck), "%s task %u (attempt %u)",
                         ex->current[i]->kind < 3 ? kinds[ex->current[i]->kind] : "a",
                         ex->current[i]->index, ex->current[i]->attempt);
        if (stuck[0] == '\0')
            snprintf(stuck, sizeof(stuck), "a task");
    }
    pthread_mutex_unlock(&ex->lock);
    if (stuck[0] != '\0') {
        sp_warn("a worker is stuck in %s and does not stop; the executor exits without it", stuck);
        sp_exec_remove_shuffles(ex);
        sp_exec_remove_dirs(ex);
        return false;
    }
    for (uint32_t i = 0; i < ex->nworkers && ex->workers != NULL; i++)
        pthread_join(ex->workers[i], NULL);
    if (ex->sampler_started)
        pthread_join(ex->sampler, NULL);
    ex->sampler_started = false;
    while (ex->head != NULL) {
        sp_task_item_t *next = ex->head->next;
        free(ex->head);
        ex->head = next;
    }
    for (uint32_t m = 0; m < ex->nslots; m++) {
        if (ex->served != NULL)
            sp_map_output_unserve(ex->served[m]);
        if (ex->own != NULL)
            sp_map_status_destroy(ex->own[m]);
        if (ex->statuses != NULL)
            sp_status_unref(ex->statuses[m]);
    }
    free(ex->served);
    free(ex->mem);
    free(ex->own);
    free(ex->statuses);
    free(ex->workers);
    free(ex->current);
    sp_transport_close(ex->transport);
    ex->transport = NULL;
    sp_exec_remove_shuffles(ex);
    sp_block_store_destroy(ex->bs);
    ex->bs = NULL;
    sp_exec_remove_dirs(ex);
    if (ex->mm != NULL) {
        sp_memory_stats_t ms;
        sp_memory_manager_stats(ex->mm, &ms);
        ex->peak_storage = ms.peak_storage_used;
    }
    sp_memory_manager_destroy(ex->mm);
    ex->mm = NULL;
    sp_topology_destroy(ex->topo);
    sp__job_unload(ex->plugin);
    for (uint32_t sh = 0; ex->bounds != NULL && sh < ex->nshuffles; sh++) {
        free(ex->bounds[sh]);
        free(ex->bounds_buf[sh]);
    }
    free(ex->bounds);
    free(ex->bounds_buf);
    free(ex->nbounds);
    free(ex->sbase);
    free(ex->smaps);
    free(ex->sparts);
    sp__graph_destroy(ex->graph);
    free(ex->app_dirs);
    sp_conf_destroy(ex->conf);
    sp__msg_job_clear(&ex->job);
    free(ex->canceled);
    pthread_cond_destroy(&ex->exit_cond);
    pthread_cond_destroy(&ex->status_cond);
    pthread_cond_destroy(&ex->sample_cond);
    pthread_cond_destroy(&ex->cond);
    pthread_mutex_destroy(&ex->lock);
    return true;
}

/* Tears ex down and frees it, unless a stuck worker keeps it (then it is left to the process's
 * exit). */
static void sp_exec_destroy(sp_executor_t *ex)
{
    if (sp_exec_teardown(ex))
        free(ex);
}

static sp_status_t sp_exec_timing(sp_executor_t *ex, uint64_t *hb_ns_p)
{
    uint64_t timeout_ns;
    sp_status_t st;

    if ((st = sp_conf_get_duration(ex->conf, "executor.heartbeat_interval", hb_ns_p)) != SP_OK ||
        (st = sp_conf_get_duration(ex->conf, "executor.heartbeat_timeout", &timeout_ns)) != SP_OK ||
        (st = sp_conf_get_duration(ex->conf, "executor.driver_timeout", &ex->driver_timeout_ns)) !=
            SP_OK)
        return st;
    /* A stuck worker must not keep the executor past the time the driver gives it. */
    ex->stop_grace_ns = timeout_ns / 2;
    return SP_OK;
}

sp_status_t sp__executor_run(const sp__executor_opts_t *opts)
{
    sp_executor_t *ex = calloc(1, sizeof(*ex));
    sp__msg_register_t reg = {.pid = (uint32_t)getpid()};
    sp__msg_ready_t ready = {0};
    uint64_t hb_ns = 0, next_hb, heard_ns;
    const char *fault = getenv("SPATE_FAULT_CORRUPT_MAP");
    void *buf = NULL;
    size_t len = 0;
    uint16_t type;
    sp_status_t st;

    if (ex == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the executor");
    ex->conn = opts->conn;
    ex->corrupt_map = -1;
    pthread_mutex_init(&ex->lock, NULL);
    pthread_cond_init(&ex->cond, NULL);
    {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&ex->sample_cond, &attr);
        pthread_cond_init(&ex->exit_cond, &attr);
        pthread_cond_init(&ex->status_cond, &attr);
        pthread_condattr_destroy(&attr);
    }
    atomic_init(&ex->running, 0);
    atomic_init(&ex->peak_anon, 0);
    if (fault != NULL && *fault != '\0')
        ex->corrupt_map = strtoll(fault, NULL, 10);
    fault = getenv("SPATE_FAULT_EVICT_OUTPUTS");
    atomic_init(&ex->evict_at_reduce, fault != NULL && strcmp(fault, "1") == 0);
    gethostname(reg.host, sizeof(reg.host) - 1);
    if (opts->name != NULL)
        snprintf(reg.name, sizeof(reg.name), "%s", opts->name);
    st = sp__msg_register_encode(&reg, &buf, &len);
    if ((st = sp_exec_send(ex, SP_MSG_REGISTER, st, buf, len)) != SP_OK)
        goto out;
    if ((st = sp__ctl_recv(ex->conn, opts->register_timeout_ms, &type, &buf, &len)) != SP_OK)
        goto out;
    if (type == SP_MSG_SHUTDOWN) {
        free(buf);
        goto out; /* the driver needs no more executors */
    }
    if (type != SP_MSG_JOB) {
        free(buf);
        st = SP_RAISE(SP_ERR_BAD_FORMAT, "driver sent message %u instead of the job", type);
        goto out;
    }
    st = sp__msg_job_decode(buf, len, &ex->job);
    free(buf);
    if (st != SP_OK)
        goto out;
    {
        char ident[32];
        snprintf(ident, sizeof(ident), "exec %u", ex->job.executor_id);
        sp_log_set_identity(ident);
    }
    if ((st = sp_exec_setup(ex, opts, &ready)) != SP_OK)
        goto out;
    if ((st = sp_exec_timing(ex, &hb_ns)) != SP_OK)
        goto out;
    /* After set-up: a library the transport loaded may have put its own handler there. */
    if (opts->own_process)
        sp_exec_fatal_install(ex);
    ex->workers = calloc(ex->nworkers, sizeof(*ex->workers));
    ex->current = calloc(ex->nworkers, sizeof(*ex->current));
    if (ex->workers == NULL || ex->current == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u workers", ex->nworkers);
        goto out;
    }
    for (uint32_t i = 0; i < ex->nworkers; i++) {
        sp_worker_arg_t *wa = malloc(sizeof(*wa));
        if (wa != NULL) {
            *wa = (sp_worker_arg_t){.ex = ex, .index = i};
            pthread_mutex_lock(&ex->lock);
            ex->live_workers++;
            pthread_mutex_unlock(&ex->lock);
        }
        if (wa == NULL || pthread_create(&ex->workers[i], NULL, sp_exec_worker, wa) != 0) {
            if (wa != NULL) {
                pthread_mutex_lock(&ex->lock);
                ex->live_workers--;
                pthread_mutex_unlock(&ex->lock);
                free(wa);
            }
            ex->nworkers = i;
            st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start worker thread %u", i);
            goto out;
        }
    }
    if (pthread_create(&ex->sampler, NULL, sp_exec_sampler, ex) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start the memory sampler thread");
        goto out;
    }
    ex->sampler_started = true;
    ready.cpu_ns = sp_exec_cpu_ns();
    st = sp__msg_ready_encode(&ready, &buf, &len);
    if ((st = sp_exec_send(ex, SP_MSG_READY, st, buf, len)) != SP_OK)
        goto out;
    sp_info("executor %u ready: %u workers, %llu MiB, NUMA node %u", ex->job.executor_id,
            ex->nworkers, (unsigned long long)(ready.memory >> 20), ready.numa_node);
    next_hb = sp__now_ns() + hb_ns;
    heard_ns = sp__now_ns();
    for (;;) {
        uint64_t now = sp__now_ns();

        if (ex->driver_timeout_ns > 0 && now - heard_ns > ex->driver_timeout_ns) {
            st = SP_RAISE(SP_ERR_PEER_LOST,
                          "executor %u heard nothing from the driver for %.1f s "
                          "(executor.driver_timeout): it is gone or stopped",
                          ex->job.executor_id, (double)(now - heard_ns) / 1e9);
            goto out;
        }
        if (now >= next_hb) {
            if ((st = sp_exec_heartbeat(ex, SP_MSG_HEARTBEAT)) != SP_OK)
                goto out;
            next_hb = now + hb_ns;
        }
        if ((st = sp_exec_publish_moves(ex)) != SP_OK)
            goto out;
        /* Wakes at least every SP_EXEC_POLL_MS to publish moved outputs. */
        st = sp__ctl_recv(ex->conn, (int)SP_MIN((next_hb - now) / 1000000 + 1, SP_EXEC_POLL_MS),
                          &type, &buf, &len);
        if (st == SP_ERR_TIMED_OUT)
            continue;
        if (st != SP_OK)
            goto out;
        heard_ns = sp__now_ns();
        switch (type) {
        case SP_MSG_PING: break;
        case SP_MSG_TASK: st = sp_exec_on_task(ex, buf, len); break;
        case SP_MSG_MAP_OUTPUT: st = sp_exec_on_map_output(ex, buf, len); break;
        case SP_MSG_MAP_LOST: st = sp_exec_on_map_lost(ex, buf, len); break;
        case SP_MSG_CANCEL: st = sp_exec_on_cancel(ex, buf, len); break;
        case SP_MSG_BOUNDS: st = sp_exec_on_bounds(ex, &buf, len); break;
        case SP_MSG_UNPERSIST: st = sp_exec_on_unpersist(ex, buf, len); break;
        case SP_MSG_SHUTDOWN:
            free(buf);
            buf = NULL;
            if (!sp_exec_teardown(ex))
                return SP_RAISE(SP_ERR_TIMED_OUT,
                                "shut down with a worker stuck in a task (see the warning)");
            /* BYE carries the peaks, for the driver's summary. */
            st = sp_exec_heartbeat(ex, SP_MSG_BYE);
            free(ex);
            return st;
        default:
            st = SP_RAISE(SP_ERR_BAD_FORMAT, "driver sent unknown message type %u", type);
            break;
        }
        free(buf);
        buf = NULL;
        if (st != SP_OK)
            goto out;
    }
out : {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", sp_last_error());
    sp_exec_destroy(ex);
    if (st != SP_OK)
        SP_RAISE(st, "%s", msg);
}
    return st;
}
