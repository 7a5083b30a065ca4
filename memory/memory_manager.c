/*
 * The unified memory manager of one executor (the model of Spark's
 * UnifiedMemoryManager with its execution and storage pools).
 *
 * Invariants, all under mm->lock:
 *   exec_pool + storage_pool == unified
 *   exec_used <= exec_pool, storage_used <= storage_pool
 *   exec_used == sum of tasks[i].bytes
 * The boundary between the pools moves: execution borrows free storage
 * memory and evicts cached blocks, but only down to the storage region;
 * storage borrows free execution memory and never evicts execution.
 *
 * Fair share: with N active tasks (holding execution memory or waiting for
 * it) a task may hold at most 1/N of what execution can reach and waits on
 * the condition variable until it can hold at least 1/(2N) of the execution
 * pool. Waiters are woken on every release and on the arrival of a task.
 *
 * Tuned for tens of concurrent tasks acquiring pages of megabytes: one mutex
 * and a small array of active tasks searched linearly.
 */
#include "memory_int.h"

#include <string.h>
#include <unistd.h>

#define SP_MM_INITIAL_TASKS 64

typedef struct sp_mm_task {
    uint64_t task_id;
    uint64_t bytes;   /* execution memory held */
    unsigned waiting; /* threads of this task blocked in acquire */
} sp_mm_task_t;

struct sp_memory_manager {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* execution memory may have become available */
    sp_memory_layout_t layout;
    uint64_t exec_pool, storage_pool, exec_used, storage_used;

    sp_mm_task_t *tasks; /* active tasks, unordered */
    size_t ntasks, tasks_cap;

    uint64_t *live_ids; /* ids of live sp_task_memory objects */
    size_t nlive, live_cap;

    sp__evict_fn_t evict;
    void *evict_arg;
    sp_page_hooks_t hooks;
    sp_arena_t *arena;
    sp_memory_stats_t stats;
};

static uint64_t sp_mm_scale(uint64_t bytes, double fraction)
{
    return (uint64_t)((double)bytes * fraction);
}

sp_status_t sp_memory_layout_compute(const sp_conf_t *conf, uint64_t default_executor_bytes,
                                     sp_memory_layout_t *layout_p)
{
    sp_memory_layout_t l = {0};
    double fraction = 0, storage_fraction = 0;
    sp_status_t st;

    if ((st = sp_conf_get_size(conf, "memory.executor", &l.executor_bytes)) != SP_OK ||
        (st = sp_conf_get_size(conf, "memory.reserved", &l.reserved_bytes)) != SP_OK ||
        (st = sp_conf_get_double(conf, "memory.fraction", &fraction)) != SP_OK ||
        (st = sp_conf_get_double(conf, "memory.storage_fraction", &storage_fraction)) != SP_OK ||
        (st = sp_conf_get_size(conf, "memory.page_size", &l.page_bytes)) != SP_OK)
        return st;
    if (l.executor_bytes == 0)
        l.executor_bytes = default_executor_bytes;
    if (l.executor_bytes == 0)
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "memory.executor is 0 (auto) and the machine's memory is unknown; set it");
    if (l.executor_bytes < l.reserved_bytes / 2 * 3) {
        uint64_t scaled = l.executor_bytes / 5;
        if (sp_conf_is_set(conf, "memory.reserved"))
            return SP_RAISE(SP_ERR_BAD_CONF,
                            "memory.reserved=%llu leaves too little of memory.executor=%llu: it "
                            "must be at most 2/3 of it",
                            (unsigned long long)l.reserved_bytes,
                            (unsigned long long)l.executor_bytes);
        sp_warn("memory.executor=%llu is less than 1.5 x memory.reserved=%llu: reserving %llu "
                "instead",
                (unsigned long long)l.executor_bytes, (unsigned long long)l.reserved_bytes,
                (unsigned long long)scaled);
        l.reserved_bytes = scaled;
    }
    l.unified_bytes = sp_mm_scale(l.executor_bytes - l.reserved_bytes, fraction);
    l.storage_region_bytes = sp_mm_scale(l.unified_bytes, storage_fraction);
    if (l.unified_bytes < l.page_bytes)
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "unified memory (memory.executor=%llu - memory.reserved=%llu) x "
                        "memory.fraction=%g = %llu bytes is smaller than one page "
                        "(memory.page_size=%llu)",
                        (unsigned long long)l.executor_bytes, (unsigned long long)l.reserved_bytes,
                        fraction, (unsigned long long)l.unified_bytes,
                        (unsigned long long)l.page_bytes);
    *layout_p = l;
    return SP_OK;
}

/* Memory an executor on numa_index gets by default: 3/4 of the node's. */
static uint64_t sp_mm_default_executor_bytes(const sp_topology_t *topo, unsigned numa_index)
{
    sp_numa_info_t info;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t machine = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;

    if (topo != NULL && sp_topology_numa_info(topo, numa_index, &info) == SP_OK &&
        info.memory_bytes != 0)
        return info.memory_bytes / 4 * 3;
    return machine / 4 * 3;
}

sp_status_t sp_memory_manager_create(const sp_conf_t *conf, const sp_topology_t *topo,
                                     unsigned numa_index, sp_memory_manager_t **mm_p)
{
    sp_memory_manager_t *mm;
    bool bind = false, huge = false;
    sp_status_t st;

    mm = sp__calloc(1, sizeof(*mm));
    if (mm == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory manager");
    st =
        sp_memory_layout_compute(conf, sp_mm_default_executor_bytes(topo, numa_index), &mm->layout);
    if (st != SP_OK)
        goto err_free_mm;
    if ((st = sp_conf_get_bool(conf, "memory.numa_bind", &bind)) != SP_OK ||
        (st = sp_conf_get_bool(conf, "memory.huge_pages", &huge)) != SP_OK)
        goto err_free_mm;
    mm->tasks = sp__calloc(SP_MM_INITIAL_TASKS, sizeof(*mm->tasks));
    mm->live_ids = sp__calloc(SP_MM_INITIAL_TASKS, sizeof(*mm->live_ids));
    if (mm->tasks == NULL || mm->live_ids == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the memory manager's task tables");
        goto err_free_tables;
    }
    mm->tasks_cap = mm->live_cap = SP_MM_INITIAL_TASKS;
    st = sp_arena_create(topo, numa_index, bind, huge, &mm->arena);
    if (st != SP_OK)
        goto err_free_tables;
    if (pthread_mutex_init(&mm->lock, NULL) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the memory manager's mutex");
        goto err_destroy_arena;
    }
    if (pthread_cond_init(&mm->cond, NULL) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the memory manager's condition");
        goto err_destroy_lock;
    }
    mm->storage_pool = mm->layout.storage_region_bytes;
    mm->exec_pool = mm->layout.unified_bytes - mm->storage_pool;
    sp_debug("memory manager: executor %llu, reserved %llu, unified %llu, storage region %llu",
             (unsigned long long)mm->layout.executor_bytes,
             (unsigned long long)mm->layout.reserved_bytes,
             (unsigned long long)mm->layout.unified_bytes,
             (unsigned long long)mm->layout.storage_region_bytes);
    *mm_p = mm;
    return SP_OK;

err_destroy_lock:
    pthread_mutex_destroy(&mm->lock);
err_destroy_arena:
    sp_arena_destroy(mm->arena);
err_free_tables:
    sp__free(mm->live_ids);
    sp__free(mm->tasks);
err_free_mm:
    sp__free(mm);
    return st;
}

void sp_memory_manager_destroy(sp_memory_manager_t *mm)
{
    if (mm == NULL)
        return;
    if (mm->nlive != 0 || mm->evict != NULL)
        sp_warn("memory manager destroyed with %zu live task(s)%s", mm->nlive,
                mm->evict != NULL ? " and a block store" : "");
    pthread_cond_destroy(&mm->cond);
    pthread_mutex_destroy(&mm->lock);
    sp_arena_destroy(mm->arena);
    sp__free(mm->live_ids);
    sp__free(mm->tasks);
    sp__free(mm);
}

void sp_memory_manager_layout(const sp_memory_manager_t *mm, sp_memory_layout_t *layout_p)
{
    *layout_p = mm->layout;
}

sp_arena_t *sp_memory_manager_arena(sp_memory_manager_t *mm) { return mm->arena; }

void sp_memory_manager_stats(sp_memory_manager_t *mm, sp_memory_stats_t *stats_p)
{
    pthread_mutex_lock(&mm->lock);
    *stats_p = mm->stats;
    stats_p->execution_used = mm->exec_used;
    stats_p->storage_used = mm->storage_used;
    stats_p->execution_pool = mm->exec_pool;
    stats_p->storage_pool = mm->storage_pool;
    stats_p->active_tasks = mm->ntasks;
    pthread_mutex_unlock(&mm->lock);
}

void sp_memory_manager_set_page_hooks(sp_memory_manager_t *mm, const sp_page_hooks_t *hooks)
{
    pthread_mutex_lock(&mm->lock);
    if (hooks != NULL)
        mm->hooks = *hooks;
    else
        memset(&mm->hooks, 0, sizeof(mm->hooks));
    pthread_mutex_unlock(&mm->lock);
}

void sp__memory_manager_page_hooks(sp_memory_manager_t *mm, sp_page_hooks_t *hooks_p)
{
    pthread_mutex_lock(&mm->lock);
    *hooks_p = mm->hooks;
    pthread_mutex_unlock(&mm->lock);
}

sp_status_t sp__memory_manager_set_evictor(sp_memory_manager_t *mm, sp__evict_fn_t fn, void *arg)
{
    sp_status_t st = SP_OK;

    pthread_mutex_lock(&mm->lock);
    if (mm->evict != NULL) {
        st = SP_RAISE(SP_ERR_BUSY, "the memory manager already has a block store");
    } else {
        mm->evict = fn;
        mm->evict_arg = arg;
    }
    pthread_mutex_unlock(&mm->lock);
    return st;
}

sp_block_store_t *sp_memory_manager_block_store(sp_memory_manager_t *mm)
{
    sp_block_store_t *bs;

    /* The block store is the only evictor there is (sp_block_store_create). */
    pthread_mutex_lock(&mm->lock);
    bs = mm->evict_arg;
    pthread_mutex_unlock(&mm->lock);
    return bs;
}

void sp__memory_manager_clear_evictor(sp_memory_manager_t *mm)
{
    pthread_mutex_lock(&mm->lock);
    mm->evict = NULL;
    mm->evict_arg = NULL;
    pthread_mutex_unlock(&mm->lock);
}

void sp__memory_manager_count(sp_memory_manager_t *mm, sp__mm_counter_t counter, uint64_t n)
{
    pthread_mutex_lock(&mm->lock);
    switch (counter) {
    case SP_MM_SPILL_REQUESTS: mm->stats.spill_requests += n; break;
    case SP_MM_SPILL_REQUESTED_BYTES: mm->stats.spill_requested_bytes += n; break;
    case SP_MM_SPILL_RELEASED_BYTES: mm->stats.spill_released_bytes += n; break;
    case SP_MM_PAGES_ALLOCATED: mm->stats.pages_allocated += n; break;
    case SP_MM_PAGES_FREED: mm->stats.pages_freed += n; break;
    case SP_MM_LEAKED_BYTES: mm->stats.leaked_bytes += n; break;
    }
    pthread_mutex_unlock(&mm->lock);
}

sp_status_t sp__memory_manager_task_register(sp_memory_manager_t *mm, uint64_t task_id)
{
    sp_status_t st = SP_OK;

    pthread_mutex_lock(&mm->lock);
    for (size_t i = 0; i < mm->nlive; i++) {
        if (mm->live_ids[i] == task_id) {
            st = SP_RAISE(SP_ERR_EXISTS, "task %llu already has task memory",
                          (unsigned long long)task_id);
            goto out;
        }
    }
    if (mm->nlive == mm->live_cap) {
        uint64_t *ids = sp__realloc(mm->live_ids, 2 * mm->live_cap * sizeof(*ids));
        if (ids == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory to register task %llu",
                          (unsigned long long)task_id);
            goto out;
        }
        mm->live_ids = ids;
        mm->live_cap *= 2;
    }
    mm->live_ids[mm->nlive++] = task_id;
out:
    pthread_mutex_unlock(&mm->lock);
    return st;
}

void sp__memory_manager_task_unregister(sp_memory_manager_t *mm, uint64_t task_id)
{
    pthread_mutex_lock(&mm->lock);
    for (size_t i = 0; i < mm->nlive; i++) {
        if (mm->live_ids[i] == task_id) {
            mm->live_ids[i] = mm->live_ids[--mm->nlive];
            break;
        }
    }
    pthread_mutex_unlock(&mm->lock);
}

/* ---- execution pool, all under mm->lock ---- */

static sp_mm_task_t *sp_mm_task_find(sp_memory_manager_t *mm, uint64_t task_id)
{
    for (size_t i = 0; i < mm->ntasks; i++) {
        if (mm->tasks[i].task_id == task_id)
            return &mm->tasks[i];
    }
    return NULL;
}

/* Adds task_id as active; NULL when the table cannot grow. */
static sp_mm_task_t *sp_mm_task_add(sp_memory_manager_t *mm, uint64_t task_id)
{
    if (mm->ntasks == mm->tasks_cap) {
        sp_mm_task_t *tasks = sp__realloc(mm->tasks, 2 * mm->tasks_cap * sizeof(*tasks));
        if (tasks == NULL)
            return NULL;
        mm->tasks = tasks;
        mm->tasks_cap *= 2;
    }
    mm->tasks[mm->ntasks] = (sp_mm_task_t){.task_id = task_id};
    return &mm->tasks[mm->ntasks++];
}

/* A task holding nothing and waiting for nothing is no longer active. */
static void sp_mm_task_retire_if_idle(sp_memory_manager_t *mm, sp_mm_task_t *t)
{
    if (t->bytes == 0 && t->waiting == 0) {
        *t = mm->tasks[--mm->ntasks];
        pthread_cond_broadcast(&mm->cond);
    }
}

/* Evicts cached blocks for bytes of storage memory (lock held); returns the bytes freed. */
static uint64_t sp_mm_evict_locked(sp_memory_manager_t *mm, uint64_t bytes)
{
    uint64_t blocks = 0, evicted;

    if (mm->evict == NULL || bytes == 0)
        return 0;
    evicted = mm->evict(mm->evict_arg, bytes, &blocks);
    SP_ASSERT(evicted <= mm->storage_used);
    mm->storage_used -= evicted;
    mm->stats.evictions += blocks;
    mm->stats.evicted_bytes += evicted;
    return evicted;
}

uint64_t sp_memory_manager_evict_storage(sp_memory_manager_t *mm, uint64_t bytes)
{
    uint64_t evicted;

    pthread_mutex_lock(&mm->lock);
    evicted = sp_mm_evict_locked(mm, bytes);
    if (evicted > 0)
        pthread_cond_broadcast(&mm->cond); /* execution may borrow it now */
    pthread_mutex_unlock(&mm->lock);
    return evicted;
}

/* Frees up to bytes of storage memory for execution: unused storage memory
 * first, then cached blocks, never below the storage region. Returns the
 * bytes by which the storage pool can shrink. */
static uint64_t sp_mm_storage_shrink(sp_memory_manager_t *mm, uint64_t bytes)
{
    uint64_t storage_free = mm->storage_pool - mm->storage_used;
    uint64_t above_region = mm->storage_pool > mm->layout.storage_region_bytes
                                ? mm->storage_pool - mm->layout.storage_region_bytes
                                : 0;
    uint64_t reclaimable = SP_MAX(storage_free, above_region);
    uint64_t want = SP_MIN(bytes, reclaimable), from_free, remaining, evicted;

    if (want == 0)
        return 0;
    from_free = SP_MIN(want, storage_free);
    remaining = want - from_free;
    evicted = sp_mm_evict_locked(mm, remaining);
    return from_free + SP_MIN(evicted, remaining);
}

uint64_t sp_memory_manager_acquire_execution(sp_memory_manager_t *mm, uint64_t task_id,
                                             uint64_t bytes)
{
    sp_mm_task_t *t;
    uint64_t granted = 0;

    pthread_mutex_lock(&mm->lock);
    mm->stats.execution_acquires++;
    t = sp_mm_task_find(mm, task_id);
    if (t == NULL) {
        t = sp_mm_task_add(mm, task_id);
        if (t == NULL) {
            sp_warn("memory manager: no memory to track task %llu; refusing %llu bytes",
                    (unsigned long long)task_id, (unsigned long long)bytes);
            mm->stats.execution_refusals++;
            pthread_mutex_unlock(&mm->lock);
            return 0;
        }
        /* A new task lowers everyone's share: let waiters recompute. */
        pthread_cond_broadcast(&mm->cond);
    }
    for (;;) {
        uint64_t n = mm->ntasks, exec_free = mm->exec_pool - mm->exec_used;
        uint64_t max_pool, max_per_task, min_per_task, max_to_grant, wait_start;

        if (bytes > exec_free) {
            uint64_t grown = sp_mm_storage_shrink(mm, bytes - exec_free);
            mm->storage_pool -= grown;
            mm->exec_pool += grown;
            mm->stats.borrowed_from_storage += grown;
            exec_free += grown;
        }
        /* Execution can reach everything but the storage it may not evict. */
        max_pool =
            mm->layout.unified_bytes - SP_MIN(mm->storage_used, mm->layout.storage_region_bytes);
        max_per_task = max_pool / n;
        min_per_task = mm->exec_pool / (2 * n);
        max_to_grant = SP_MIN(bytes, max_per_task > t->bytes ? max_per_task - t->bytes : 0);
        granted = SP_MIN(max_to_grant, exec_free);
        if (granted < bytes && t->bytes + granted < min_per_task) {
            /* Wait for others to release rather than start below 1/(2N). */
            t->waiting++;
            mm->stats.waits++;
            wait_start = sp__now_ns();
            pthread_cond_wait(&mm->cond, &mm->lock);
            mm->stats.wait_ns += sp__now_ns() - wait_start;
            t = sp_mm_task_find(mm, task_id); /* the array may have moved */
            SP_ASSERT(t != NULL);
            t->waiting--;
            continue;
        }
        break;
    }
    t->bytes += granted;
    mm->exec_used += granted;
    mm->stats.peak_execution_used = SP_MAX(mm->stats.peak_execution_used, mm->exec_used);
    if (granted < bytes)
        mm->stats.execution_refusals++;
    sp_mm_task_retire_if_idle(mm, t);
    pthread_mutex_unlock(&mm->lock);
    return granted;
}

void sp_memory_manager_release_execution(sp_memory_manager_t *mm, uint64_t task_id, uint64_t bytes)
{
    sp_mm_task_t *t;

    pthread_mutex_lock(&mm->lock);
    t = sp_mm_task_find(mm, task_id);
    if (t != NULL) {
        if (bytes > t->bytes) {
            sp_warn("task %llu releases %llu bytes of execution memory but holds %llu",
                    (unsigned long long)task_id, (unsigned long long)bytes,
                    (unsigned long long)t->bytes);
            bytes = t->bytes;
        }
        t->bytes -= bytes;
        mm->exec_used -= bytes;
        sp_mm_task_retire_if_idle(mm, t);
        pthread_cond_broadcast(&mm->cond);
    } else if (bytes != 0) {
        sp_warn("task %llu releases %llu bytes of execution memory but holds none",
                (unsigned long long)task_id, (unsigned long long)bytes);
    }
    pthread_mutex_unlock(&mm->lock);
}

uint64_t sp_memory_manager_release_all_execution(sp_memory_manager_t *mm, uint64_t task_id)
{
    uint64_t held = sp_memory_manager_task_execution(mm, task_id);

    sp_memory_manager_release_execution(mm, task_id, held);
    return held;
}

uint64_t sp_memory_manager_task_execution(sp_memory_manager_t *mm, uint64_t task_id)
{
    sp_mm_task_t *t;
    uint64_t held;

    pthread_mutex_lock(&mm->lock);
    t = sp_mm_task_find(mm, task_id);
    held = t != NULL ? t->bytes : 0;
    pthread_mutex_unlock(&mm->lock);
    return held;
}

/* ---- storage pool ---- */

/*
 * Grants bytes of storage memory, all or nothing: free storage first, then
 * free execution memory, then (unless region_only) evicting cached blocks.
 * region_only keeps the grant inside the storage region: such memory cannot
 * be evicted, and execution never needs the region back, only what storage
 * borrowed beyond it.
 */
static bool sp_mm_acquire_storage(sp_memory_manager_t *mm, uint64_t bytes, bool region_only)
{
    uint64_t storage_free;
    bool ok;

    pthread_mutex_lock(&mm->lock);
    mm->stats.storage_acquires++;
    /* Storage can never take memory execution is using. */
    ok = bytes <= mm->layout.unified_bytes - mm->exec_used &&
         (!region_only || mm->storage_used + bytes <= mm->layout.storage_region_bytes);
    storage_free = mm->storage_pool - mm->storage_used;
    if (ok && bytes > storage_free) {
        uint64_t borrow = SP_MIN(mm->exec_pool - mm->exec_used, bytes - storage_free);
        mm->exec_pool -= borrow;
        mm->storage_pool += borrow;
        mm->stats.borrowed_from_execution += borrow;
        storage_free += borrow;
    }
    if (ok && !region_only && bytes > storage_free)
        storage_free += sp_mm_evict_locked(mm, bytes - storage_free);
    ok = ok && bytes <= storage_free;
    if (ok) {
        mm->storage_used += bytes;
        mm->stats.peak_storage_used = SP_MAX(mm->stats.peak_storage_used, mm->storage_used);
    } else {
        mm->stats.storage_refusals++;
    }
    pthread_mutex_unlock(&mm->lock);
    return ok;
}

bool sp_memory_manager_acquire_storage(sp_memory_manager_t *mm, uint64_t bytes)
{
    return sp_mm_acquire_storage(mm, bytes, false);
}

bool sp_memory_manager_acquire_storage_region(sp_memory_manager_t *mm, uint64_t bytes)
{
    return sp_mm_acquire_storage(mm, bytes, true);
}

void sp_memory_manager_release_storage(sp_memory_manager_t *mm, uint64_t bytes)
{
    pthread_mutex_lock(&mm->lock);
    if (bytes > mm->storage_used) {
        sp_warn("releasing %llu bytes of storage memory but only %llu are used",
                (unsigned long long)bytes, (unsigned long long)mm->storage_used);
        bytes = mm->storage_used;
    }
    mm->storage_used -= bytes;
    /* Execution may now borrow what storage no longer uses. */
    pthread_cond_broadcast(&mm->cond);
    pthread_mutex_unlock(&mm->lock);
}
