/*
 * Memory of one task attempt: its memory consumers, its page table and the
 * spill policy (the model of Spark's TaskMemoryManager).
 *
 * When the manager grants less than a consumer asked for, the task asks its
 * other consumers to spill, choosing each time the smallest consumer whose
 * memory covers the shortfall, else the largest, each consumer at most once
 * per request; only then does the requester spill itself. Memory a spill
 * releases goes back to the manager and is asked for again.
 *
 * The task lock is recursive because a consumer's spill callback runs under
 * it and frees pages through the same task. One thread uses a task at a time
 * in normal operation; the lock makes stray concurrent use safe, not fast.
 *
 * The page table has 8192 slots (13-bit page numbers of packed pointers);
 * free slots are found by a scan from a moving hint, which is cheap next to
 * allocating a page of megabytes.
 *
 * Pages of 2 MiB and more come back to the arena's page pool when freed and
 * stay resident for the next task (memory/arena.c). When a task ends the
 * pool is trimmed to the unified memory that is free then (neither granted
 * to tasks nor held by storage), so that pooled pages count as the free
 * memory they are: storage that grew meanwhile (map outputs held in memory)
 * takes its bytes from the pool, not on top of it.
 */
#include "memory_int.h"

#include <string.h>

struct sp_task_memory {
    sp_memory_manager_t *mm;
    uint64_t task_id;
    pthread_mutex_t lock;
    sp_memory_consumer_t *consumers;
    sp_page_t *pages[SP_PAGE_TABLE_SIZE];
    uint32_t page_hint;
    uint64_t spill_round;
    sp_task_memory_stats_t stats;
};

sp_status_t sp_task_memory_create(sp_memory_manager_t *mm, uint64_t task_id,
                                  sp_task_memory_t **task_p)
{
    pthread_mutexattr_t attr;
    sp_task_memory_t *task;
    sp_status_t st;

    task = sp__calloc(1, sizeof(*task));
    if (task == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the task memory of task %llu",
                        (unsigned long long)task_id);
    task->mm = mm;
    task->task_id = task_id;
    task->stats.task_id = task_id;
    st = sp__memory_manager_task_register(mm, task_id);
    if (st != SP_OK)
        goto err_free_task;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    if (pthread_mutex_init(&task->lock, &attr) != 0) {
        pthread_mutexattr_destroy(&attr);
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the lock of task %llu",
                      (unsigned long long)task_id);
        goto err_unregister;
    }
    pthread_mutexattr_destroy(&attr);
    *task_p = task;
    return SP_OK;

err_unregister:
    sp__memory_manager_task_unregister(mm, task_id);
err_free_task:
    sp__free(task);
    return st;
}

/* Frees page (task lock held): hook, table slot, memory, owner's share. */
static void sp_task_page_free_locked(sp_task_memory_t *task, sp_page_t *page)
{
    sp_memory_consumer_t *owner = page->owner;
    sp_page_hooks_t hooks;

    sp__memory_manager_page_hooks(task->mm, &hooks);
    if (hooks.destroying != NULL)
        hooks.destroying(hooks.arg, page);
    SP_ASSERT(task->pages[page->number] == page);
    task->pages[page->number] = NULL;
    task->stats.pages--;
    task->stats.page_bytes -= page->size;
    sp_arena_free(sp_memory_manager_arena(task->mm), page->data, page->size);
    sp_memory_consumer_release(owner, page->size);
    sp__memory_manager_count(task->mm, SP_MM_PAGES_FREED, 1);
    sp__free(page);
}

/* Keeps the arena's page pool within the unified memory that is free now. */
static void sp_task_trim_pool(sp_memory_manager_t *mm)
{
    sp_memory_layout_t layout;
    sp_memory_stats_t ms;
    uint64_t used;

    sp_memory_manager_layout(mm, &layout);
    sp_memory_manager_stats(mm, &ms);
    used = ms.execution_used + ms.storage_used;
    sp__arena_trim(sp_memory_manager_arena(mm),
                   layout.unified_bytes > used ? layout.unified_bytes - used : 0);
}

void sp_task_memory_destroy(sp_task_memory_t *task, sp_task_memory_stats_t *stats_p)
{
    uint64_t leaked_bytes = 0, leaked_pages = 0, rest;

    if (task == NULL)
        return;
    pthread_mutex_lock(&task->lock);
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
        if (task->pages[i] != NULL) {
            leaked_pages++;
            leaked_bytes += task->pages[i]->size;
            sp_task_page_free_locked(task, task->pages[i]);
        }
    }
    while (task->consumers != NULL) {
        sp_memory_consumer_t *c = task->consumers;
        leaked_bytes += c->used;
        sp_memory_consumer_release(c, c->used);
        task->consumers = c->next;
        c->next = c->prev = NULL;
        c->task = NULL;
    }
    /* Raw acquires made with the task's id outside any consumer. */
    rest = sp_memory_manager_release_all_execution(task->mm, task->task_id);
    leaked_bytes += rest;
    task->stats.acquired_bytes -= SP_MIN(task->stats.acquired_bytes, rest);
    pthread_mutex_unlock(&task->lock);

    /* Consumers that ended holding memory were counted when they ended. */
    task->stats.leaked_bytes += leaked_bytes;
    task->stats.leaked_pages += leaked_pages;
    if (leaked_bytes != 0) {
        sp_warn("task %llu ended holding %llu bytes of execution memory (%llu pages); released",
                (unsigned long long)task->task_id, (unsigned long long)leaked_bytes,
                (unsigned long long)leaked_pages);
        sp__memory_manager_count(task->mm, SP_MM_LEAKED_BYTES, leaked_bytes);
    }
    if (stats_p != NULL)
        *stats_p = task->stats;
    sp__memory_manager_task_unregister(task->mm, task->task_id);
    sp_task_trim_pool(task->mm);
    pthread_mutex_destroy(&task->lock);
    sp__free(task);
}

void sp_task_memory_stats(sp_task_memory_t *task, sp_task_memory_stats_t *stats_p)
{
    pthread_mutex_lock(&task->lock);
    *stats_p = task->stats;
    pthread_mutex_unlock(&task->lock);
}

sp_memory_manager_t *sp_task_memory_manager(const sp_task_memory_t *task) { return task->mm; }

void sp_memory_consumer_init(sp_memory_consumer_t *consumer, sp_task_memory_t *task,
                             const sp_memory_consumer_ops_t *ops, const char *name)
{
    memset(consumer, 0, sizeof(*consumer));
    consumer->ops = ops;
    consumer->task = task;
    consumer->name = name != NULL ? name : "consumer";
    pthread_mutex_lock(&task->lock);
    consumer->next = task->consumers;
    if (task->consumers != NULL)
        task->consumers->prev = consumer;
    task->consumers = consumer;
    pthread_mutex_unlock(&task->lock);
}

void sp_memory_consumer_fini(sp_memory_consumer_t *consumer)
{
    sp_task_memory_t *task = consumer->task;
    uint64_t leaked = 0, pages = 0;

    if (task == NULL)
        return;
    pthread_mutex_lock(&task->lock);
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE && consumer->used != 0; i++) {
        if (task->pages[i] != NULL && task->pages[i]->owner == consumer) {
            leaked += task->pages[i]->size;
            pages++;
            sp_task_page_free_locked(task, task->pages[i]);
        }
    }
    leaked += consumer->used;
    sp_memory_consumer_release(consumer, consumer->used);
    if (consumer->prev != NULL)
        consumer->prev->next = consumer->next;
    else
        task->consumers = consumer->next;
    if (consumer->next != NULL)
        consumer->next->prev = consumer->prev;
    task->stats.leaked_bytes += leaked;
    task->stats.leaked_pages += pages;
    pthread_mutex_unlock(&task->lock);
    if (leaked != 0) {
        sp_warn("memory consumer '%s' of task %llu ended holding %llu bytes (%llu pages); released",
                consumer->name, (unsigned long long)task->task_id, (unsigned long long)leaked,
                (unsigned long long)pages);
        sp__memory_manager_count(task->mm, SP_MM_LEAKED_BYTES, leaked);
    }
    consumer->task = NULL;
    consumer->next = consumer->prev = NULL;
}

/*
 * Next consumer to spill for a shortfall (task lock held): among consumers
 * other than the requester not yet asked this round and holding memory, the
 * smallest holding at least shortfall, else the largest.
 */
static sp_memory_consumer_t *
sp_task_pick_victim(sp_task_memory_t *task, sp_memory_consumer_t *requester, uint64_t shortfall)
{
    sp_memory_consumer_t *covering = NULL, *largest = NULL;

    for (sp_memory_consumer_t *c = task->consumers; c != NULL; c = c->next) {
        if (c == requester || c->used == 0 || c->spill_round == task->spill_round ||
            c->ops == NULL || c->ops->spill == NULL)
            continue;
        if (c->used >= shortfall && (covering == NULL || c->used < covering->used))
            covering = c;
        if (largest == NULL || c->used > largest->used)
            largest = c;
    }
    return covering != NULL ? covering : largest;
}

/* Asks victim to spill shortfall bytes for requester; returns bytes released. */
static uint64_t sp_task_spill(sp_task_memory_t *task, sp_memory_consumer_t *victim,
                              sp_memory_consumer_t *requester, uint64_t shortfall)
{
    uint64_t before = victim->used, released;

    victim->spill_round = task->spill_round;
    victim->ops->spill(victim, shortfall, requester);
    /* Count what really came back, not what the callback claims. */
    released = before > victim->used ? before - victim->used : 0;
    sp__memory_manager_count(task->mm, SP_MM_SPILL_REQUESTS, 1);
    sp__memory_manager_count(task->mm, SP_MM_SPILL_REQUESTED_BYTES, shortfall);
    if (released != 0) {
        victim->spills++;
        victim->spilled_bytes += released;
        task->stats.spills++;
        task->stats.spilled_bytes += released;
        if (victim == requester)
            task->stats.self_spills++;
        sp__memory_manager_count(task->mm, SP_MM_SPILL_RELEASED_BYTES, released);
        sp_debug("task %llu: consumer '%s' spilled %llu bytes for '%s'",
                 (unsigned long long)task->task_id, victim->name, (unsigned long long)released,
                 requester->name);
    }
    return released;
}

uint64_t sp_memory_consumer_acquire(sp_memory_consumer_t *consumer, uint64_t bytes)
{
    sp_task_memory_t *task = consumer->task;
    sp_memory_consumer_t *victim;
    uint64_t got;

    SP_ASSERT(task != NULL);
    pthread_mutex_lock(&task->lock);
    got = sp_memory_manager_acquire_execution(task->mm, task->task_id, bytes);
    if (got < bytes) {
        task->spill_round++;
        while (got < bytes && (victim = sp_task_pick_victim(task, consumer, bytes - got)) != NULL) {
            if (sp_task_spill(task, victim, consumer, bytes - got) != 0)
                got += sp_memory_manager_acquire_execution(task->mm, task->task_id, bytes - got);
        }
        /* The requester spills last. What it got in this call is not yet
         * its own, so its spill can only release what it held before. */
        if (got < bytes && consumer->ops != NULL && consumer->ops->spill != NULL &&
            consumer->used != 0 && sp_task_spill(task, consumer, consumer, bytes - got) != 0)
            got += sp_memory_manager_acquire_execution(task->mm, task->task_id, bytes - got);
    }
    consumer->used += got;
    task->stats.acquired_bytes += got;
    task->stats.peak_acquired_bytes =
        SP_MAX(task->stats.peak_acquired_bytes, task->stats.acquired_bytes);
    pthread_mutex_unlock(&task->lock);
    return got;
}

void sp_memory_consumer_release(sp_memory_consumer_t *consumer, uint64_t bytes)
{
    sp_task_memory_t *task = consumer->task;

    SP_ASSERT(task != NULL);
    pthread_mutex_lock(&task->lock);
    if (bytes > consumer->used) {
        sp_warn("memory consumer '%s' releases %llu bytes but holds %llu", consumer->name,
                (unsigned long long)bytes, (unsigned long long)consumer->used);
        bytes = consumer->used;
    }
    consumer->used -= bytes;
    task->stats.acquired_bytes -= bytes;
    sp_memory_manager_release_execution(task->mm, task->task_id, bytes);
    pthread_mutex_unlock(&task->lock);
}

/* A free page number (task lock held), or SP_PAGE_TABLE_SIZE when full. */
static uint32_t sp_task_free_page_number(sp_task_memory_t *task)
{
    for (uint32_t n = 0; n < SP_PAGE_TABLE_SIZE; n++) {
        uint32_t i = (task->page_hint + n) & (SP_PAGE_TABLE_SIZE - 1);
        if (task->pages[i] == NULL)
            return i;
    }
    return SP_PAGE_TABLE_SIZE;
}

sp_status_t sp_memory_consumer_page_alloc(sp_memory_consumer_t *consumer, uint64_t size,
                                          sp_page_t **page_p)
{
    sp_task_memory_t *task = consumer->task;
    sp_memory_layout_t layout;
    sp_page_hooks_t hooks;
    sp_page_t *page;
    uint32_t number;
    uint64_t got;
    sp_status_t st;

    SP_ASSERT(task != NULL);
    sp_memory_manager_layout(task->mm, &layout);
    if (size == 0)
        size = layout.page_bytes;
    if (size > layout.unified_bytes)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "task %llu: a page of %llu bytes is larger than the executor's unified "
                        "memory (%llu bytes)",
                        (unsigned long long)task->task_id, (unsigned long long)size,
                        (unsigned long long)layout.unified_bytes);
    pthread_mutex_lock(&task->lock);
    number = sp_task_free_page_number(task);
    if (number == SP_PAGE_TABLE_SIZE) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "task %llu: page table full (%u pages)",
                      (unsigned long long)task->task_id, SP_PAGE_TABLE_SIZE);
        goto err_unlock;
    }
    got = sp_memory_consumer_acquire(consumer, size);
    if (got < size) {
        st = SP_RAISE(SP_ERR_MEMORY_REFUSED,
                      "task %llu: consumer '%s' was granted %llu of the %llu bytes of a page",
                      (unsigned long long)task->task_id, consumer->name, (unsigned long long)got,
                      (unsigned long long)size);
        goto err_release;
    }
    /* A spill during the acquire may have freed slots; the chosen one is still free. */
    SP_ASSERT(task->pages[number] == NULL);
    page = sp__calloc(1, sizeof(*page));
    if (page == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "task %llu: no memory for a page descriptor",
                      (unsigned long long)task->task_id);
        goto err_release;
    }
    page->data = sp_arena_alloc(sp_memory_manager_arena(task->mm), size);
    if (page->data == NULL) {
        st =
            SP_RAISE(SP_ERR_NOMEM, "task %llu: the NUMA arena cannot allocate a page of %llu bytes",
                     (unsigned long long)task->task_id, (unsigned long long)size);
        goto err_free_page;
    }
    page->size = size;
    page->number = number;
    page->owner = consumer;
    sp__memory_manager_page_hooks(task->mm, &hooks);
    if (hooks.created != NULL && (st = hooks.created(hooks.arg, page)) != SP_OK)
        goto err_free_data;
    task->pages[number] = page;
    task->page_hint = (number + 1) & (SP_PAGE_TABLE_SIZE - 1);
    task->stats.pages++;
    task->stats.page_bytes += size;
    pthread_mutex_unlock(&task->lock);
    sp__memory_manager_count(task->mm, SP_MM_PAGES_ALLOCATED, 1);
    *page_p = page;
    return SP_OK;

err_free_data:
    sp_arena_free(sp_memory_manager_arena(task->mm), page->data, size);
err_free_page:
    sp__free(page);
err_release:
    sp_memory_consumer_release(consumer, got);
err_unlock:
    pthread_mutex_unlock(&task->lock);
    return st;
}

void sp_memory_consumer_page_free(sp_memory_consumer_t *consumer, sp_page_t *page)
{
    sp_task_memory_t *task = consumer->task;

    if (page == NULL)
        return;
    SP_ASSERT(task != NULL && page->owner == consumer);
    pthread_mutex_lock(&task->lock);
    sp_task_page_free_locked(task, page);
    pthread_mutex_unlock(&task->lock);
}

sp_page_t *sp_task_memory_page(sp_task_memory_t *task, uint32_t page_number)
{
    sp_page_t *page;

    if (page_number >= SP_PAGE_TABLE_SIZE)
        return NULL;
    pthread_mutex_lock(&task->lock);
    page = task->pages[page_number];
    pthread_mutex_unlock(&task->lock);
    return page;
}
