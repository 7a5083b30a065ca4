/*
 * Private interface of the memory layer, shared by memory_manager.c,
 * task_memory.c and block_store.c.
 */
#ifndef SPATE_MEMORY_INT_H
#define SPATE_MEMORY_INT_H

#include "common_int.h"
#include <spate/memory.h>

#include <pthread.h>

/*
 * Frees at least bytes of storage memory by evicting cached blocks, returns
 * the bytes freed (possibly more, blocks are whole; possibly less) and the
 * number of blocks in *blocks_p. Called with the manager's lock held: it must
 * not call back into the manager.
 */
typedef uint64_t (*sp__evict_fn_t)(void *arg, uint64_t bytes, uint64_t *blocks_p);

/* Installs the evictor of cached blocks; SP_ERR_BUSY if one is installed. */
sp_status_t sp__memory_manager_set_evictor(sp_memory_manager_t *mm, sp__evict_fn_t fn, void *arg);
void sp__memory_manager_clear_evictor(sp_memory_manager_t *mm);

/* Registers a live task id (SP_ERR_EXISTS when taken) and forgets it. */
sp_status_t sp__memory_manager_task_register(sp_memory_manager_t *mm, uint64_t task_id);
void sp__memory_manager_task_unregister(sp_memory_manager_t *mm, uint64_t task_id);

/* Counters the task layer adds to the manager's stats. */
typedef enum sp__mm_counter {
    SP_MM_SPILL_REQUESTS,
    SP_MM_SPILL_REQUESTED_BYTES,
    SP_MM_SPILL_RELEASED_BYTES,
    SP_MM_PAGES_ALLOCATED,
    SP_MM_PAGES_FREED,
    SP_MM_LEAKED_BYTES,
} sp__mm_counter_t;
void sp__memory_manager_count(sp_memory_manager_t *mm, sp__mm_counter_t counter, uint64_t n);

/* The page hooks in force (a copy), and the manager's page size. */
void sp__memory_manager_page_hooks(sp_memory_manager_t *mm, sp_page_hooks_t *hooks_p);

/*
 * The arena's page pool (memory/arena.c): allocations of 2 MiB and more are
 * whole 2 MiB grains, kept resident when freed and handed out again (moved
 * into place with mremap when no single pooled range is big enough).
 */
typedef struct sp__arena_pool_stats {
    uint64_t pooled_bytes;  /* resident, not live, waiting to be reused */
    uint64_t reused_bytes;  /* bytes of big allocations served from the pool */
    uint64_t fresh_bytes;   /* bytes of big allocations the pool could not cover (fresh pages) */
    uint64_t moves;         /* mremap calls that moved pooled pages into a new range */
    uint64_t trimmed_bytes; /* pooled bytes given back to the OS */
} sp__arena_pool_stats_t;
void sp__arena_pool_stats(sp_arena_t *arena, sp__arena_pool_stats_t *stats_p);

/* Unmaps pooled memory until at most keep_bytes stay pooled; returns the bytes unmapped. */
uint64_t sp__arena_trim(sp_arena_t *arena, uint64_t keep_bytes);

#endif /* SPATE_MEMORY_INT_H */
