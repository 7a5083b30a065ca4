/*
 * spate — memory layer: machine topology (hwloc), NUMA-local page arenas
 * (jemalloc), the unified execution/storage memory manager of an executor,
 * per-task memory with spillable consumers, and the block store of cached
 * blocks. See docs/ARCHITECTURE.md for the rules this layer enforces.
 */
#ifndef SPATE_MEMORY_H
#define SPATE_MEMORY_H

#include <spate/common.h>
#include <spate/conf.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Topology                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct sp_topology sp_topology_t;

/** One NUMA node as spate sees it. Strings belong to the topology. */
typedef struct sp_numa_info {
    unsigned index;        /**< spate's index, 0 .. numa_count-1 */
    unsigned os_index;     /**< the operating system's node number */
    uint64_t memory_bytes; /**< local memory, 0 when unknown */
    unsigned cores;        /**< cores whose PUs are all in the node's cpuset */
    unsigned pus;          /**< hardware threads in the node's cpuset */
    const char *cpuset;    /**< PU list in hwloc list syntax, "0-3,8-11" */
} sp_numa_info_t;

/**
 * Loads a topology. source NULL or "" is this machine (hwloc also honours
 * HWLOC_SYNTHETIC and HWLOC_XMLFILE there); "synthetic:DESC" is an hwloc
 * synthetic description ("pack:2 node:2 core:4 pu:1"); "xml:PATH" an hwloc
 * XML export. A machine where hwloc reports no NUMA node is seen as one node
 * holding every core. Returns SP_ERR_BAD_CONF for a source hwloc rejects,
 * SP_ERR_NOMEM on allocation failure. Thread safe once created.
 */
SP_API sp_status_t sp_topology_create(const char *source, sp_topology_t **topo_p);

/** Frees a topology; NULL is accepted. */
SP_API void sp_topology_destroy(sp_topology_t *topo);

/** True when the topology describes the running machine (binding works). */
SP_API bool sp_topology_is_this_system(const sp_topology_t *topo);

SP_API unsigned sp_topology_numa_count(const sp_topology_t *topo);
SP_API unsigned sp_topology_package_count(const sp_topology_t *topo);
SP_API unsigned sp_topology_core_count(const sp_topology_t *topo);
SP_API unsigned sp_topology_pu_count(const sp_topology_t *topo);

/** Size in bytes of the first cache of the given level (1..3); 0 if none. */
SP_API uint64_t sp_topology_cache_bytes(const sp_topology_t *topo, unsigned level);

/** Describes NUMA node index; SP_ERR_INVALID_PARAM when out of range. */
SP_API sp_status_t sp_topology_numa_info(const sp_topology_t *topo, unsigned index,
                                         sp_numa_info_t *info_p);

/** NUMA index of core core_index (0 .. core_count-1) into *numa_p. */
SP_API sp_status_t sp_topology_core_numa(const sp_topology_t *topo, unsigned core_index,
                                         unsigned *numa_p);

/**
 * Binds the calling thread to all PUs of core core_index (a logical index,
 * 0 .. core_count-1) or of NUMA node numa_index. Returns SP_ERR_UNSUPPORTED
 * when the topology is not this machine or the OS refuses binding (message
 * carries errno), SP_ERR_INVALID_PARAM for an index out of range.
 */
SP_API sp_status_t sp_topology_bind_thread_core(const sp_topology_t *topo, unsigned core_index);
SP_API sp_status_t sp_topology_bind_thread_numa(const sp_topology_t *topo, unsigned numa_index);

/**
 * Logical index of the core the calling thread last ran on, into *core_p.
 * SP_ERR_UNSUPPORTED where the OS cannot tell.
 */
SP_API sp_status_t sp_topology_last_core(const sp_topology_t *topo, unsigned *core_p);

/**
 * Binds the pages of [addr, addr+len) to NUMA node numa_index (policy only;
 * pages move when first touched). SP_ERR_UNSUPPORTED as for thread binding.
 */
SP_API sp_status_t sp_topology_bind_memory(const sp_topology_t *topo, void *addr, size_t len,
                                           unsigned numa_index);

/**
 * NUMA index holding the (touched) pages of [addr, addr+len) into *numa_p;
 * SP_ERR_NOT_FOUND when they span several nodes or none is known,
 * SP_ERR_UNSUPPORTED where the OS cannot tell.
 */
SP_API sp_status_t sp_topology_memory_location(const sp_topology_t *topo, const void *addr,
                                               size_t len, unsigned *numa_p);

/** One executor of a plan: where it runs and how much memory it gets. */
typedef struct sp_executor_slot {
    unsigned numa_index; /**< node whose cores and memory it uses */
    unsigned numa_os_index;
    unsigned cores;        /**< cores it binds its workers to */
    const char *cpuset;    /**< PU list of those cores, hwloc list syntax */
    uint64_t memory_bytes; /**< memory.executor, or its share of the node */
} sp_executor_slot_t;

typedef struct sp_executor_plan {
    unsigned count;
    sp_executor_slot_t *slots;
} sp_executor_plan_t;

/**
 * Plans the executors spate would start on this topology: one per NUMA node
 * with cores, and, when that gives fewer than min_executors, nodes' cores are
 * split so that at least min_executors exist (never more than there are
 * cores). Memory is memory.executor when set, else 3/4 of the node's memory
 * (of the machine's when the node's is unknown) divided among the node's
 * executors. The caller frees *plan_p with sp_topology_plan_destroy().
 */
SP_API sp_status_t sp_topology_plan_executors(const sp_topology_t *topo, const sp_conf_t *conf,
                                              unsigned min_executors, sp_executor_plan_t **plan_p);

/** Frees a plan; NULL is accepted. */
SP_API void sp_topology_plan_destroy(sp_executor_plan_t *plan);

/* ------------------------------------------------------------------------ */
/* Arenas: NUMA-local allocation                                            */
/* ------------------------------------------------------------------------ */

typedef struct sp_arena sp_arena_t;

typedef struct sp_arena_stats {
    uint64_t live_bytes;   /**< bytes allocated and not yet freed */
    uint64_t peak_bytes;   /**< highest live_bytes */
    uint64_t allocs;       /**< successful allocations */
    uint64_t frees;        /**< frees */
    uint64_t mapped_bytes; /**< bytes jemalloc mapped from the OS for it */
} sp_arena_stats_t;

/**
 * Creates a jemalloc arena whose memory is bound to NUMA node numa_index of
 * topo (when topo is this machine and bind is true; topo may be NULL for an
 * unbound arena). huge_pages asks for transparent huge pages on allocations
 * of 2 MiB and more. Thread safe once created.
 */
SP_API sp_status_t sp_arena_create(const sp_topology_t *topo, unsigned numa_index, bool bind,
                                   bool huge_pages, sp_arena_t **arena_p);

/**
 * Destroys an arena. Memory still allocated from it is reported as a leak
 * (warning) and then the arena is kept alive rather than freed under a user.
 * NULL is accepted.
 */
SP_API void sp_arena_destroy(sp_arena_t *arena);

/** size bytes aligned to 64 (to 2 MiB for huge pages), or NULL. */
SP_API void *sp_arena_alloc(sp_arena_t *arena, size_t size);

/** Frees memory from sp_arena_alloc(); size must be the size asked for. */
SP_API void sp_arena_free(sp_arena_t *arena, void *ptr, size_t size);

SP_API void sp_arena_stats(const sp_arena_t *arena, sp_arena_stats_t *stats_p);

/** The NUMA node index the arena allocates on. */
SP_API unsigned sp_arena_numa_index(const sp_arena_t *arena);

/* ------------------------------------------------------------------------ */
/* Pages and the page table                                                  */
/* ------------------------------------------------------------------------ */

/*
 * A task's page table: 13-bit page numbers (0 .. 8191) and 27-bit offsets in
 * a page (0 .. 134,217,727), the fields a shuffle packed pointer
 * (include/spate/shuffle.h) gives them.
 */
#define SP_PAGE_NUMBER_BITS 13
#define SP_PAGE_OFFSET_BITS 27
#define SP_PAGE_TABLE_SIZE  (UINT32_C(1) << SP_PAGE_NUMBER_BITS)
#define SP_PAGE_MAX_OFFSET  ((UINT32_C(1) << SP_PAGE_OFFSET_BITS) - 1)

typedef struct sp_memory_consumer sp_memory_consumer_t;

/** A page of execution memory owned by one consumer of one task. */
typedef struct sp_page {
    void *data; /**< size bytes, NUMA-local to the executor */
    uint64_t size;
    uint32_t number;             /**< index in the task's page table */
    sp_memory_consumer_t *owner; /**< consumer that allocated it */
    void *reg;                   /**< set by the page hooks (transport registration) */
} sp_page_t;

/**
 * Called for every page of execution memory: created() after allocation and
 * before the owner sees it (it may set page->reg; an error fails the
 * allocation), destroying() before the page is freed. Called on the
 * allocating/freeing thread with the task's lock held but not the memory
 * manager's; a hook must not allocate or free pages of the same task.
 */
typedef struct sp_page_hooks {
    void *arg;
    sp_status_t (*created)(void *arg, sp_page_t *page);
    void (*destroying)(void *arg, sp_page_t *page);
} sp_page_hooks_t;

/* ------------------------------------------------------------------------ */
/* Unified memory manager (one per executor)                                 */
/* ------------------------------------------------------------------------ */

typedef struct sp_memory_manager sp_memory_manager_t;

/** Sizes the manager derived from the configuration. */
typedef struct sp_memory_layout {
    uint64_t executor_bytes;       /**< memory.executor */
    uint64_t reserved_bytes;       /**< memory.reserved, after scaling down */
    uint64_t unified_bytes;        /**< (executor - reserved) * memory.fraction */
    uint64_t storage_region_bytes; /**< unified * memory.storage_fraction */
    uint64_t page_bytes;           /**< memory.page_size */
} sp_memory_layout_t;

/** Counters of a memory manager; each is cumulative unless it says "now". */
typedef struct sp_memory_stats {
    uint64_t execution_used;          /**< now: bytes granted to tasks */
    uint64_t storage_used;            /**< now: bytes held by cached blocks */
    uint64_t execution_pool;          /**< now: size of the execution pool */
    uint64_t storage_pool;            /**< now: size of the storage pool */
    uint64_t active_tasks;            /**< now: tasks holding or waiting for memory */
    uint64_t peak_execution_used;     /**< highest execution_used */
    uint64_t peak_storage_used;       /**< highest storage_used */
    uint64_t execution_acquires;      /**< calls to acquire execution memory */
    uint64_t execution_refusals;      /**< acquires granted less than asked */
    uint64_t storage_acquires;        /**< calls to acquire storage memory */
    uint64_t storage_refusals;        /**< storage acquires refused */
    uint64_t borrowed_from_storage;   /**< bytes execution took from storage */
    uint64_t borrowed_from_execution; /**< bytes storage took from execution */
    uint64_t evictions;               /**< cached blocks evicted for execution or storage */
    uint64_t evicted_bytes;           /**< bytes those blocks held */
    uint64_t waits;                   /**< times a task blocked below 1/(2N) */
    uint64_t wait_ns;                 /**< total time tasks spent blocked */
    uint64_t spill_requests;          /**< spill calls made to consumers */
    uint64_t spill_requested_bytes;   /**< bytes those calls asked for */
    uint64_t spill_released_bytes;    /**< bytes those calls released */
    uint64_t pages_allocated;         /**< pages handed to consumers */
    uint64_t pages_freed;             /**< pages returned */
    uint64_t leaked_bytes;            /**< bytes tasks still held when they ended */
} sp_memory_stats_t;

/**
 * Computes the layout from conf (memory.executor, memory.reserved,
 * memory.fraction, memory.storage_fraction, memory.page_size). When
 * memory.executor is 0, default_executor_bytes is used. A reserve larger
 * than a fifth of a small executor (executor < 1.5 x reserved) is scaled down
 * to a fifth with a warning. Returns SP_ERR_BAD_CONF, naming the keys, for
 * combinations that leave no memory (unified smaller than one page).
 */
SP_API sp_status_t sp_memory_layout_compute(const sp_conf_t *conf, uint64_t default_executor_bytes,
                                            sp_memory_layout_t *layout_p);

/**
 * Creates the memory manager of one executor whose memory lives on NUMA node
 * numa_index of topo (topo may be NULL: memory is not bound). The layout
 * comes from sp_memory_layout_compute(conf, node memory * 3/4). Thread safe:
 * all worker threads of the executor share it.
 */
SP_API sp_status_t sp_memory_manager_create(const sp_conf_t *conf, const sp_topology_t *topo,
                                            unsigned numa_index, sp_memory_manager_t **mm_p);

/** Frees the manager; tasks and the block store must be gone. NULL accepted. */
SP_API void sp_memory_manager_destroy(sp_memory_manager_t *mm);

SP_API void sp_memory_manager_layout(const sp_memory_manager_t *mm, sp_memory_layout_t *layout_p);
SP_API void sp_memory_manager_stats(sp_memory_manager_t *mm, sp_memory_stats_t *stats_p);
SP_API sp_arena_t *sp_memory_manager_arena(sp_memory_manager_t *mm);

/** Installs page hooks (a copy is kept); NULL removes them. */
SP_API void sp_memory_manager_set_page_hooks(sp_memory_manager_t *mm, const sp_page_hooks_t *hooks);

/*
 * Raw pool operations. Tasks go through sp_task_memory / consumers; these are
 * public for engines that keep their own task accounting.
 *
 * acquire_execution grants up to bytes to task_id under the fair-share rule:
 * with N active tasks a task holds at most 1/N of the execution memory, and
 * the call blocks until it can hold at least 1/(2N) (or all it asked for). It
 * borrows free storage memory and evicts cached blocks down to the storage
 * region when the execution pool is short. Returns the bytes granted, which
 * may be less than asked (0 when nothing can be given).
 */
SP_API uint64_t sp_memory_manager_acquire_execution(sp_memory_manager_t *mm, uint64_t task_id,
                                                    uint64_t bytes);
SP_API void sp_memory_manager_release_execution(sp_memory_manager_t *mm, uint64_t task_id,
                                                uint64_t bytes);
/** Releases everything task_id holds; returns the bytes released. */
SP_API uint64_t sp_memory_manager_release_all_execution(sp_memory_manager_t *mm, uint64_t task_id);
/** Bytes task_id holds now. */
SP_API uint64_t sp_memory_manager_task_execution(sp_memory_manager_t *mm, uint64_t task_id);

/**
 * Grants bytes of storage memory (all or nothing): free storage memory
 * first, then free execution memory, then by evicting other cached blocks;
 * never by evicting execution memory. Returns false when it cannot.
 */
SP_API bool sp_memory_manager_acquire_storage(sp_memory_manager_t *mm, uint64_t bytes);
/**
 * Grants bytes of storage memory (all or nothing) only inside the storage
 * region: from free storage memory, then taking back region memory that
 * execution borrowed and does not use; never beyond the region, never by
 * eviction. For holdings that cannot be evicted (map outputs kept in
 * memory): execution only ever takes back what storage borrowed beyond its
 * region, so such memory is never owed. Release with release_storage.
 */
SP_API bool sp_memory_manager_acquire_storage_region(sp_memory_manager_t *mm, uint64_t bytes);
SP_API void sp_memory_manager_release_storage(sp_memory_manager_t *mm, uint64_t bytes);

/* ------------------------------------------------------------------------ */
/* Task memory and consumers                                                 */
/* ------------------------------------------------------------------------ */

typedef struct sp_task_memory sp_task_memory_t;

/** Operations of a memory consumer (anything that can spill). */
typedef struct sp_memory_consumer_ops {
    size_t size; /**< sizeof(sp_memory_consumer_ops_t), for growth */
    /**
     * Frees memory, ideally at least bytes, by writing state to disk, and
     * returns the bytes released (through sp_memory_consumer_release or page
     * frees). trigger is the consumer whose request caused the spill (may be
     * this one). Called on the requesting thread, with the task's lock held:
     * the consumer may free its pages but must not acquire memory.
     */
    uint64_t (*spill)(sp_memory_consumer_t *consumer, uint64_t bytes,
                      sp_memory_consumer_t *trigger);
} sp_memory_consumer_ops_t;

/**
 * A memory consumer; embed it in the consumer object and get back to that
 * with container_of. Fields are read-only for the owner.
 */
struct sp_memory_consumer {
    const sp_memory_consumer_ops_t *ops;
    sp_task_memory_t *task;
    const char *name;           /**< static name for stats and logs */
    uint64_t used;              /**< execution bytes it holds now */
    uint64_t spills;            /**< times it spilled */
    uint64_t spilled_bytes;     /**< bytes its spills released */
    sp_memory_consumer_t *next; /**< task's list; private */
    sp_memory_consumer_t *prev; /**< private */
    uint64_t spill_round;       /**< private: last spill round it was asked in */
};

/** Counters of one task. */
typedef struct sp_task_memory_stats {
    uint64_t task_id;
    uint64_t acquired_bytes; /**< now: execution bytes held by the task */
    uint64_t page_bytes;     /**< now: bytes in allocated pages */
    uint64_t peak_acquired_bytes;
    uint64_t pages;         /**< now: pages allocated */
    uint64_t spills;        /**< spill calls that released memory */
    uint64_t spilled_bytes; /**< bytes released by spills */
    uint64_t self_spills;   /**< spills of the requesting consumer itself */
    uint64_t leaked_bytes;  /**< at destroy: bytes still held, then released */
    uint64_t leaked_pages;  /**< at destroy: pages still allocated, then freed */
} sp_task_memory_stats_t;

/**
 * Creates the memory accounting of one task attempt. task_id must be unique
 * among the live tasks of the manager (SP_ERR_EXISTS otherwise). One thread
 * uses a task at a time; tasks run concurrently.
 */
SP_API sp_status_t sp_task_memory_create(sp_memory_manager_t *mm, uint64_t task_id,
                                         sp_task_memory_t **task_p);

/**
 * Ends a task: unregisters remaining consumers, frees remaining pages and
 * releases remaining execution memory, counting them as leaks (warning
 * logged). Final stats go to *stats_p when not NULL. NULL task accepted.
 */
SP_API void sp_task_memory_destroy(sp_task_memory_t *task, sp_task_memory_stats_t *stats_p);

SP_API void sp_task_memory_stats(sp_task_memory_t *task, sp_task_memory_stats_t *stats_p);

/** The manager a task's memory comes from. */
SP_API sp_memory_manager_t *sp_task_memory_manager(const sp_task_memory_t *task);

/** Adds consumer (zeroed by the caller or not) to task. Never fails. */
SP_API void sp_memory_consumer_init(sp_memory_consumer_t *consumer, sp_task_memory_t *task,
                                    const sp_memory_consumer_ops_t *ops, const char *name);

/**
 * Removes consumer from its task. Memory it still holds is released and
 * counted as a leak of the task.
 */
SP_API void sp_memory_consumer_fini(sp_memory_consumer_t *consumer);

/**
 * Acquires up to bytes of execution memory for consumer. When the manager
 * grants less, the task spills its other consumers (the smallest that covers
 * the shortfall, else the largest, repeatedly) and then this consumer, and
 * asks again. Returns the bytes granted (0 .. bytes); may block (fair share).
 */
SP_API uint64_t sp_memory_consumer_acquire(sp_memory_consumer_t *consumer, uint64_t bytes);

/** Returns bytes (at most what it holds) to the manager. */
SP_API void sp_memory_consumer_release(sp_memory_consumer_t *consumer, uint64_t bytes);

/**
 * Allocates a page of at least size bytes (memory.page_size when size is 0)
 * on the executor's NUMA node, acquiring the execution memory first (which
 * may spill). Returns SP_ERR_MEMORY_REFUSED when the memory cannot be had,
 * SP_ERR_NO_RESOURCE when the task's page table (8192 pages) is full,
 * SP_ERR_NOMEM when the allocator fails; nothing is held after an error.
 */
SP_API sp_status_t sp_memory_consumer_page_alloc(sp_memory_consumer_t *consumer, uint64_t size,
                                                 sp_page_t **page_p);

/** Frees a page of consumer and releases its memory; NULL accepted. */
SP_API void sp_memory_consumer_page_free(sp_memory_consumer_t *consumer, sp_page_t *page);

/** The page numbered page_number of task (for decoding packed pointers), or NULL. */
SP_API sp_page_t *sp_task_memory_page(sp_task_memory_t *task, uint32_t page_number);

/* ------------------------------------------------------------------------ */
/* Block store (storage memory)                                              */
/* ------------------------------------------------------------------------ */

typedef enum sp_storage_level {
    SP_STORAGE_MEMORY = 0,          /**< memory only: dropped when evicted */
    SP_STORAGE_MEMORY_AND_DISK = 1, /**< memory, written to disk when evicted */
    SP_STORAGE_DISK = 2,            /**< disk only */
} sp_storage_level_t;

typedef struct sp_block_store sp_block_store_t;
typedef struct sp_block sp_block_t;

typedef struct sp_block_store_stats {
    uint64_t blocks_in_memory; /**< now */
    uint64_t blocks_on_disk;   /**< now: blocks whose only copy is on disk */
    uint64_t memory_bytes;     /**< now: storage memory held by blocks */
    uint64_t disk_bytes;       /**< now: bytes of block files */
    uint64_t puts;
    uint64_t memory_hits;     /**< gets served from memory */
    uint64_t disk_reads;      /**< gets that read a block file */
    uint64_t evicted_dropped; /**< memory-only blocks dropped by eviction */
    uint64_t evicted_to_disk; /**< blocks written to disk by eviction */
} sp_block_store_stats_t;

/**
 * Creates the block store of an executor, keeping block files in dir
 * (created 0700 if missing). It registers with mm as the evictor of cached
 * blocks (LRU, pinned blocks are never evicted); one block store per
 * manager. Thread safe.
 */
SP_API sp_status_t sp_block_store_create(sp_memory_manager_t *mm, const char *dir,
                                         sp_block_store_t **bs_p);

/**
 * Evicts least recently used unpinned blocks of mm's block store until at
 * least bytes of storage memory are free of them (or nothing evictable is
 * left), as execution's need would, region or not; returns the bytes freed.
 * For an engine shedding memory on demand, and for tests.
 */
SP_API uint64_t sp_memory_manager_evict_storage(sp_memory_manager_t *mm, uint64_t bytes);

/** The block store created over mm (its evictor), or NULL when there is none. */
SP_API sp_block_store_t *sp_memory_manager_block_store(sp_memory_manager_t *mm);

/** Removes every block and its files, then frees the store. NULL accepted. */
SP_API void sp_block_store_destroy(sp_block_store_t *bs);

/**
 * Stores a copy of len bytes under id ([A-Za-z0-9_.-], 1 to 200 bytes).
 * MEMORY needs storage memory (SP_ERR_MEMORY_REFUSED when refused);
 * MEMORY_AND_DISK falls back to disk; DISK writes the block file.
 * SP_ERR_EXISTS when id is stored already.
 */
SP_API sp_status_t sp_block_store_put(sp_block_store_t *bs, const char *id, const void *data,
                                      size_t len, sp_storage_level_t level);

/**
 * Moves a held block's bytes out of storage memory (to disk, say). Called
 * by eviction with the memory manager's and the block store's locks held:
 * it must not call either. Returns true when the bytes left (the block is
 * then gone from the store and its storage memory released), false to keep
 * them (eviction goes on with other blocks).
 */
typedef bool (*sp_block_evict_fn_t)(void *arg);

/**
 * Accounts len bytes that the caller keeps in memory itself (a map output in
 * an in-memory file) as block id of storage memory: granted like a put of
 * level MEMORY (free storage, free execution, evicting other blocks;
 * SP_ERR_MEMORY_REFUSED when refused) and evicted like one, least recently
 * used first, by calling evict(arg). get refuses a held block; remove drops
 * it without calling evict (the owner freed its bytes). SP_ERR_EXISTS when
 * id is stored already.
 */
SP_API sp_status_t sp_block_store_put_held(sp_block_store_t *bs, const char *id, size_t len,
                                           sp_block_evict_fn_t evict, void *arg);

/** Marks block id (in memory) as used now, for the LRU order; unknown ids are ignored. */
SP_API void sp_block_store_touch(sp_block_store_t *bs, const char *id);

/**
 * Pins block id and returns a handle to its bytes; a block on disk is read
 * back (checked against its header and checksum: SP_ERR_CORRUPT otherwise)
 * and cached in memory again when its level allows and memory is granted.
 * SP_ERR_NOT_FOUND when absent. Release the handle with sp_block_store_release().
 */
SP_API sp_status_t sp_block_store_get(sp_block_store_t *bs, const char *id, sp_block_t **block_p);

SP_API const void *sp_block_data(const sp_block_t *block);
SP_API size_t sp_block_size(const sp_block_t *block);

/** Unpins a handle from sp_block_store_get() (the pair of get); NULL accepted. */
SP_API void sp_block_store_release(sp_block_t *block);

/** Removes block id. SP_ERR_NOT_FOUND when absent, SP_ERR_BUSY while pinned. */
SP_API sp_status_t sp_block_store_remove(sp_block_store_t *bs, const char *id);

/** True when id is stored; *in_memory_p (may be NULL) tells where. */
SP_API bool sp_block_store_contains(sp_block_store_t *bs, const char *id, bool *in_memory_p);

SP_API void sp_block_store_stats(sp_block_store_t *bs, sp_block_store_stats_t *stats_p);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_MEMORY_H */
