/*
 * NUMA-local allocation: one jemalloc arena per sp_arena_t, whose extent
 * hooks bind every extent jemalloc maps for it to the arena's NUMA node
 * (and ask for transparent huge pages on big extents). Binding at the extent
 * level costs one mbind per extent rather than one per allocation, and
 * jemalloc keeps reusing those extents, so pages stay on the node for the
 * arena's whole life.
 *
 * The hooks forward everything else to jemalloc's default hooks, read once
 * from arena 0. jemalloc calls the hooks with the extent_hooks_t pointer it
 * was given, which is embedded in the sp_arena_t, so the hooks find their
 * arena with container_of. The struct must therefore outlive every call
 * jemalloc can make: an arena destroyed while allocations are live is kept
 * (on a list, so that leak checkers see it reachable) instead of freed.
 *
 * Page pool. Allocations of 2 MiB and more (execution pages, hash tables,
 * pointer arrays, radix-sort scratch, cached blocks) do not go to jemalloc:
 * they are mappings of whole 2 MiB grains of the arena's own, and a freed
 * one is kept resident in the arena's pool, not unmapped. An allocation
 * takes the smallest pooled region that holds it (keeping the rest pooled);
 * when none does, a fresh range is mapped and the pooled regions are moved
 * into it with mremap, largest first, until it is full or the pool empty:
 * mremap moves page-table entries (huge ones whole), so the pages keep their
 * frames and nothing faults or is zeroed again. Only what the pool cannot
 * cover is touched fresh. That is the point: on the VMs this is tuned on
 * the first touch of a fresh page costs 6-11 us (the host backs it), and a
 * word count's map tasks spent a fifth of their samples zeroing fresh
 * table, record and sort-array pages of sizes jemalloc did not reuse (its
 * dirty extents coalesce only when they decay, which is off, so a doubled
 * table never fits in the freed halves). Smaller allocations stay with
 * jemalloc, whose size classes reuse them well.
 * What the pool holds was allocated before and is not live now, so live +
 * pooled never exceeds the arena's own peak of live bytes, which the memory
 * manager bounds (the pool's bytes are memory the manager counts as free);
 * sp__arena_trim() gives pooled memory back to the OS.
 *
 * Allocations bypass the thread cache (MALLOCX_TCACHE_NONE): pages are big
 * and few, a tcache would keep memory of one arena on a thread that may be
 * bound elsewhere, and arena.<i>.destroy requires that no tcache holds its
 * memory. Freed pages are never purged while the arena lives (dirty decay
 * off), so later tasks reuse them without faulting. Statistics are relaxed atomics: they are read
 * for reporting, never to make decisions that need a consistent snapshot.
 */
#include "memory_int.h"
#include "topology_int.h"

#include "common_int.h"

#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define SP_ARENA_ALIGN      64
#define SP_ARENA_HUGE_BYTES ((size_t)2 << 20)
#define SP_ARENA_GRAIN      SP_ARENA_HUGE_BYTES /* the pool's unit; also its least allocation */

/* A pooled range: resident, not live, size a multiple of SP_ARENA_GRAIN. */
typedef struct sp_arena_region {
    unsigned char *addr;
    size_t size;
} sp_arena_region_t;

struct sp_arena {
    extent_hooks_t hooks;          /* given to jemalloc; the hooks get back here with it */
    unsigned ind;                  /* jemalloc arena index */
    unsigned numa_index;           /* node the arena allocates on */
    hwloc_topology_t hw;           /* NULL when extents are not bound */
    hwloc_const_nodeset_t nodeset; /* the node's nodeset when hw is set */
    bool huge_pages;
    atomic_bool bind_warned; /* a failed bind was reported already */
    atomic_bool huge_warned; /* a failed madvise was reported already */
    atomic_uint_fast64_t live_bytes;
    atomic_uint_fast64_t peak_bytes;
    atomic_uint_fast64_t allocs;
    atomic_uint_fast64_t frees;
    atomic_uint_fast64_t mapped_bytes;
    pthread_mutex_t pool_lock; /* guards the pool and pool_stats */
    sp_arena_region_t *pool;
    size_t pool_count, pool_cap;
    sp__arena_pool_stats_t pool_stats;
    sp_arena_t *kept_next; /* on sp_arena_kept after a destroy with live memory */
};

static pthread_once_t sp_arena_once = PTHREAD_ONCE_INIT;
static extent_hooks_t *sp_arena_default_hooks;
static int sp_arena_default_err;

/* Arenas destroyed with memory still allocated; never freed, see the note at the top. */
static pthread_mutex_t sp_arena_kept_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_arena_t *sp_arena_kept;

static void sp_arena_read_default_hooks(void)
{
    size_t sz = sizeof(sp_arena_default_hooks);

    sp_arena_default_err = mallctl("arena.0.extent_hooks", &sp_arena_default_hooks, &sz, NULL, 0);
}

static sp_arena_t *sp_arena_of(extent_hooks_t *hooks)
{
    return sp_container_of(hooks, sp_arena_t, hooks);
}

/* True the first time it is called for flag: failures are reported once per arena. */
static bool sp_arena_first_warning(atomic_bool *flag) { return !atomic_exchange(flag, true); }

/*
 * Places fresh, untouched memory of the arena: binds it to the arena's node
 * (the pages are not touched yet, so setting the policy now places them on
 * the node when they are) and, from 2 MiB on, asks for transparent huge
 * pages. A refusal keeps the memory (unbound or small pages are slower, not
 * wrong) and is reported once.
 */
static void sp_arena_place(sp_arena_t *arena, void *addr, size_t size)
{
    int err;

    if (arena->hw != NULL &&
        hwloc_set_area_membind(arena->hw, addr, size, arena->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET) != 0) {
        err = errno;
        if (sp_arena_first_warning(&arena->bind_warned))
            sp_warn("arena %u: cannot bind its memory to NUMA node %u: %s (errno %d); "
                    "allocating unbound",
                    arena->ind, arena->numa_index, strerror(err), err);
    }
    if (arena->huge_pages && size >= SP_ARENA_HUGE_BYTES &&
        madvise(addr, size, MADV_HUGEPAGE) != 0) {
        err = errno;
        if (sp_arena_first_warning(&arena->huge_warned)) {
            /* EINVAL: a kernel without transparent huge pages, nothing to warn about. */
            if (err == EINVAL)
                sp_debug("arena %u: no transparent huge pages in this kernel", arena->ind);
            else
                sp_warn("arena %u: cannot ask for transparent huge pages: %s (errno %d)",
                        arena->ind, strerror(err), err);
        }
    }
}

static void *sp_arena_hook_alloc(extent_hooks_t *hooks, void *new_addr, size_t size,
                                 size_t alignment, bool *zero, bool *commit, unsigned ind)
{
    sp_arena_t *arena = sp_arena_of(hooks);
    void *addr;

    addr = sp_arena_default_hooks->alloc(sp_arena_default_hooks, new_addr, size, alignment, zero,
                                         commit, ind);
    if (addr == NULL)
        return NULL;
    atomic_fetch_add_explicit(&arena->mapped_bytes, size, memory_order_relaxed);
    sp_arena_place(arena, addr, size);
    return addr;
}

static bool sp_arena_hook_dalloc(extent_hooks_t *hooks, void *addr, size_t size, bool committed,
                                 unsigned ind)
{
    sp_arena_t *arena = sp_arena_of(hooks);
    bool kept;

    /* true means jemalloc keeps the extent mapped for reuse (opt.retain). */
    kept = sp_arena_default_hooks->dalloc(sp_arena_default_hooks, addr, size, committed, ind);
    if (!kept)
        atomic_fetch_sub_explicit(&arena->mapped_bytes, size, memory_order_relaxed);
    return kept;
}

static void sp_arena_hook_destroy(extent_hooks_t *hooks, void *addr, size_t size, bool committed,
                                  unsigned ind)
{
    sp_arena_t *arena = sp_arena_of(hooks);

    sp_arena_default_hooks->destroy(sp_arena_default_hooks, addr, size, committed, ind);
    atomic_fetch_sub_explicit(&arena->mapped_bytes, size, memory_order_relaxed);
}

static bool sp_arena_hook_commit(extent_hooks_t *hooks, void *addr, size_t size, size_t offset,
                                 size_t length, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->commit(sp_arena_default_hooks, addr, size, offset, length, ind);
}

static bool sp_arena_hook_decommit(extent_hooks_t *hooks, void *addr, size_t size, size_t offset,
                                   size_t length, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->decommit(sp_arena_default_hooks, addr, size, offset, length,
                                            ind);
}

static bool sp_arena_hook_purge_lazy(extent_hooks_t *hooks, void *addr, size_t size, size_t offset,
                                     size_t length, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->purge_lazy(sp_arena_default_hooks, addr, size, offset, length,
                                              ind);
}

static bool sp_arena_hook_purge_forced(extent_hooks_t *hooks, void *addr, size_t size,
                                       size_t offset, size_t length, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->purge_forced(sp_arena_default_hooks, addr, size, offset, length,
                                                ind);
}

static bool sp_arena_hook_split(extent_hooks_t *hooks, void *addr, size_t size, size_t size_a,
                                size_t size_b, bool committed, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->split(sp_arena_default_hooks, addr, size, size_a, size_b,
                                         committed, ind);
}

static bool sp_arena_hook_merge(extent_hooks_t *hooks, void *addr_a, size_t size_a, void *addr_b,
                                size_t size_b, bool committed, unsigned ind)
{
    (void)hooks;
    return sp_arena_default_hooks->merge(sp_arena_default_hooks, addr_a, size_a, addr_b, size_b,
                                         committed, ind);
}

/*
 * Our hooks, with a slot left NULL wherever the default leaves it NULL, so
 * that jemalloc sees the same capabilities (a NULL slot means "cannot").
 */
static void sp_arena_init_hooks(extent_hooks_t *hooks)
{
    const extent_hooks_t *def = sp_arena_default_hooks;

    hooks->alloc = def->alloc != NULL ? sp_arena_hook_alloc : NULL;
    hooks->dalloc = def->dalloc != NULL ? sp_arena_hook_dalloc : NULL;
    hooks->destroy = def->destroy != NULL ? sp_arena_hook_destroy : NULL;
    hooks->commit = def->commit != NULL ? sp_arena_hook_commit : NULL;
    hooks->decommit = def->decommit != NULL ? sp_arena_hook_decommit : NULL;
    hooks->purge_lazy = def->purge_lazy != NULL ? sp_arena_hook_purge_lazy : NULL;
    hooks->purge_forced = def->purge_forced != NULL ? sp_arena_hook_purge_forced : NULL;
    hooks->split = def->split != NULL ? sp_arena_hook_split : NULL;
    hooks->merge = def->merge != NULL ? sp_arena_hook_merge : NULL;
}

/*
 * Freed pages stay resident for the next task instead of being purged on
 * jemalloc's decay clock: every map task would otherwise fault in and zero
 * its pages anew (a fifth of the map write's time). What stays is at most
 * the arena's own peak, which the memory manager bounds, and it goes back
 * with the arena. A refusal costs speed only and is reported.
 */
static void sp_arena_keep_dirty_pages(sp_arena_t *arena)
{
    ssize_t never = -1;
    char ctl[64];
    int err;

    snprintf(ctl, sizeof(ctl), "arena.%u.dirty_decay_ms", arena->ind);
    err = mallctl(ctl, NULL, NULL, &never, sizeof(never));
    if (err != 0)
        sp_warn("jemalloc %s: %s (error %d); freed pages are purged and fault in again", ctl,
                strerror(err), err);
}

sp_status_t sp_arena_create(const sp_topology_t *topo, unsigned numa_index, bool bind,
                            bool huge_pages, sp_arena_t **arena_p)
{
    extent_hooks_t *hooks;
    sp_arena_t *arena;
    sp_status_t st;
    size_t sz;
    int err;

    if (topo != NULL && numa_index >= sp_topology_numa_count(topo))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot create an arena on NUMA node %u: the topology has %u nodes",
                        numa_index, sp_topology_numa_count(topo));
    pthread_once(&sp_arena_once, sp_arena_read_default_hooks);
    if (sp_arena_default_err != 0 || sp_arena_default_hooks == NULL)
        return SP_RAISE(SP_ERR_INTERNAL,
                        "jemalloc does not give its default extent hooks: %s (error %d)",
                        strerror(sp_arena_default_err), sp_arena_default_err);

    arena = sp__calloc(1, sizeof(*arena));
    if (arena == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an arena on NUMA node %u", numa_index);
    sp_arena_init_hooks(&arena->hooks);
    arena->numa_index = numa_index;
    arena->huge_pages = huge_pages;
    if (bind && topo != NULL && sp_topology_is_this_system(topo)) {
        arena->hw = sp__topology_hwloc(topo);
        arena->nodeset = sp__topology_numa_nodeset(topo, numa_index);
    }
    if (pthread_mutex_init(&arena->pool_lock, NULL) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE,
                      "cannot create the page pool lock of an arena on NUMA "
                      "node %u",
                      numa_index);
        goto err_free_arena;
    }
    hooks = &arena->hooks;
    sz = sizeof(arena->ind);
    err = mallctl("arenas.create", &arena->ind, &sz, &hooks, sizeof(hooks));
    if (err != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE,
                      "jemalloc cannot create an arena for NUMA node %u: %s (error %d)", numa_index,
                      strerror(err), err);
        goto err_destroy_lock;
    }
    sp_arena_keep_dirty_pages(arena);
    *arena_p = arena;
    return SP_OK;

err_destroy_lock:
    pthread_mutex_destroy(&arena->pool_lock);
err_free_arena:
    sp__free(arena);
    return st;
}

void sp_arena_destroy(sp_arena_t *arena)
{
    uint64_t live;
    char ctl[64];
    int err;

    if (arena == NULL)
        return;
    sp_debug("arena %u: page pool served %llu MiB again and %llu MiB fresh (%llu moves), "
             "held %llu MiB at the end",
             arena->ind, (unsigned long long)(arena->pool_stats.reused_bytes >> 20),
             (unsigned long long)(arena->pool_stats.fresh_bytes >> 20),
             (unsigned long long)arena->pool_stats.moves,
             (unsigned long long)(arena->pool_stats.pooled_bytes >> 20));
    /* Pooled pages are not live: they go back to the OS even when the arena is kept. */
    sp__arena_trim(arena, 0);
    live = atomic_load(&arena->live_bytes);
    if (live != 0) {
        sp_warn("arena %u (NUMA node %u) destroyed with %llu bytes in %llu allocations still "
                "allocated: leaked; the arena is kept",
                arena->ind, arena->numa_index, (unsigned long long)live,
                (unsigned long long)(atomic_load(&arena->allocs) - atomic_load(&arena->frees)));
        goto keep;
    }
    snprintf(ctl, sizeof(ctl), "arena.%u.destroy", arena->ind);
    err = mallctl(ctl, NULL, NULL, NULL, 0);
    if (err != 0) {
        sp_warn("jemalloc %s failed: %s (error %d); the arena is kept", ctl, strerror(err), err);
        goto keep;
    }
    pthread_mutex_destroy(&arena->pool_lock);
    sp__free(arena->pool);
    sp__free(arena);
    return;

keep:
    pthread_mutex_lock(&sp_arena_kept_lock);
    arena->kept_next = sp_arena_kept;
    sp_arena_kept = arena;
    pthread_mutex_unlock(&sp_arena_kept_lock);
}

/* The flags for mallocx and sdallocx; allocations of a grain or more go to the pool instead. */
static int sp_arena_flags(const sp_arena_t *arena)
{
    return MALLOCX_ARENA(arena->ind) | MALLOCX_TCACHE_NONE | MALLOCX_ALIGN(SP_ARENA_ALIGN);
}

static size_t sp_arena_grains(size_t size)
{
    return (size + SP_ARENA_GRAIN - 1) & ~(SP_ARENA_GRAIN - 1);
}

/*
 * Maps size bytes (a multiple of the grain) aligned to the grain, bound to
 * the arena's node and madvised for huge pages like jemalloc's extents; NULL
 * when the OS refuses. The pages are not touched.
 */
static unsigned char *sp_arena_map(sp_arena_t *arena, size_t size)
{
    unsigned char *raw, *addr;
    size_t head, tail;

    raw = mmap(NULL, size + SP_ARENA_GRAIN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
               0);
    if (raw == MAP_FAILED)
        return NULL;
    addr =
        (unsigned char *)(((uintptr_t)raw + SP_ARENA_GRAIN - 1) & ~(uintptr_t)(SP_ARENA_GRAIN - 1));
    head = (size_t)(addr - raw);
    tail = SP_ARENA_GRAIN - head;
    if (head != 0)
        munmap(raw, head);
    if (tail != 0)
        munmap(addr + size, tail);
    sp_arena_place(arena, addr, size);
    atomic_fetch_add_explicit(&arena->mapped_bytes, size, memory_order_relaxed);
    return addr;
}

static void sp_arena_unmap(sp_arena_t *arena, unsigned char *addr, size_t size)
{
    munmap(addr, size);
    atomic_fetch_sub_explicit(&arena->mapped_bytes, size, memory_order_relaxed);
}

/*
 * Moves size bytes of resident pages from src to dst (both grain-aligned;
 * dst is mapped and untouched, and what was there is unmapped by the move).
 * A pooled region that was handed out whole after a gather spans several
 * mappings, which one mremap cannot move, so a refused move is retried one
 * grain at a time. Returns the bytes moved (all of them, or fewer when the
 * kernel refuses: the rest of dst stays fresh). Pool lock held.
 */
static size_t sp_arena_move(sp_arena_t *arena, unsigned char *src, unsigned char *dst, size_t size)
{
    size_t done = 0;

    arena->pool_stats.moves++;
    if (mremap(src, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != MAP_FAILED)
        return size;
    while (done < size) {
        arena->pool_stats.moves++;
        if (mremap(src + done, SP_ARENA_GRAIN, SP_ARENA_GRAIN, MREMAP_MAYMOVE | MREMAP_FIXED,
                   dst + done) == MAP_FAILED)
            break;
        done += SP_ARENA_GRAIN;
    }
    return done;
}

static void sp_arena_pool_remove(sp_arena_t *arena, size_t i)
{
    arena->pool[i] = arena->pool[--arena->pool_count];
}

/* A big allocation (size a multiple of the grain): from the pool where it can, else fresh. */
static unsigned char *sp_arena_pool_take(sp_arena_t *arena, size_t size)
{
    sp_arena_region_t *r;
    unsigned char *addr;
    size_t best = SIZE_MAX, filled = 0;

    pthread_mutex_lock(&arena->pool_lock);
    for (size_t i = 0; i < arena->pool_count; i++)
        if (arena->pool[i].size >= size &&
            (best == SIZE_MAX || arena->pool[i].size < arena->pool[best].size))
            best = i;
    if (best != SIZE_MAX) {
        r = &arena->pool[best];
        addr = r->addr;
        r->addr += size;
        r->size -= size;
        if (r->size == 0)
            sp_arena_pool_remove(arena, best);
        arena->pool_stats.pooled_bytes -= size;
        arena->pool_stats.reused_bytes += size;
        pthread_mutex_unlock(&arena->pool_lock);
        return addr;
    }
    addr = sp_arena_map(arena, size);
    if (addr == NULL) {
        pthread_mutex_unlock(&arena->pool_lock);
        return NULL;
    }
    /* No pooled region is big enough: move pooled pages in, largest first. */
    while (filled < size && arena->pool_count != 0) {
        size_t big = 0, n, moved;
        for (size_t i = 1; i < arena->pool_count; i++)
            if (arena->pool[i].size > arena->pool[big].size)
                big = i;
        r = &arena->pool[big];
        n = SP_MIN(r->size, size - filled);
        moved = sp_arena_move(arena, r->addr, addr + filled, n);
        /* What moved left its old range: the pool's mapping shrinks by it. */
        atomic_fetch_sub_explicit(&arena->mapped_bytes, moved, memory_order_relaxed);
        r->addr += moved;
        r->size -= moved;
        if (r->size == 0)
            sp_arena_pool_remove(arena, big);
        arena->pool_stats.pooled_bytes -= moved;
        arena->pool_stats.reused_bytes += moved;
        filled += moved;
        if (moved < n)
            break;
    }
    arena->pool_stats.fresh_bytes += size - filled;
    pthread_mutex_unlock(&arena->pool_lock);
    return addr;
}

/* Keeps a freed big allocation resident in the pool, joined to a pooled neighbour. */
static void sp_arena_pool_put(sp_arena_t *arena, unsigned char *addr, size_t size)
{
    pthread_mutex_lock(&arena->pool_lock);
    for (size_t i = 0; i < arena->pool_count; i++) {
        sp_arena_region_t *r = &arena->pool[i];
        if (r->addr + r->size == addr) {
            r->size += size;
            goto pooled;
        }
        if (addr + size == r->addr) {
            r->addr = addr;
            r->size += size;
            goto pooled;
        }
    }
    if (arena->pool_count == arena->pool_cap) {
        size_t cap = arena->pool_cap != 0 ? 2 * arena->pool_cap : 64;
        sp_arena_region_t *bigger = sp__realloc(arena->pool, cap * sizeof(*bigger));
        if (bigger == NULL) { /* cannot remember it: give it back instead */
            sp_arena_unmap(arena, addr, size);
            arena->pool_stats.trimmed_bytes += size;
            pthread_mutex_unlock(&arena->pool_lock);
            return;
        }
        arena->pool = bigger;
        arena->pool_cap = cap;
    }
    arena->pool[arena->pool_count++] = (sp_arena_region_t){addr, size};
pooled:
    arena->pool_stats.pooled_bytes += size;
    pthread_mutex_unlock(&arena->pool_lock);
}

uint64_t sp__arena_trim(sp_arena_t *arena, uint64_t keep_bytes)
{
    uint64_t trimmed = 0;

    pthread_mutex_lock(&arena->pool_lock);
    while (arena->pool_count != 0 && arena->pool_stats.pooled_bytes > keep_bytes) {
        sp_arena_region_t *r = &arena->pool[arena->pool_count - 1];
        size_t n = (size_t)SP_MIN((uint64_t)r->size, arena->pool_stats.pooled_bytes - keep_bytes);
        n = n / SP_ARENA_GRAIN * SP_ARENA_GRAIN;
        if (n == 0)
            break;
        sp_arena_unmap(arena, r->addr + r->size - n, n);
        r->size -= n;
        if (r->size == 0)
            arena->pool_count--;
        arena->pool_stats.pooled_bytes -= n;
        arena->pool_stats.trimmed_bytes += n;
        trimmed += n;
    }
    pthread_mutex_unlock(&arena->pool_lock);
    return trimmed;
}

void sp__arena_pool_stats(sp_arena_t *arena, sp__arena_pool_stats_t *stats_p)
{
    pthread_mutex_lock(&arena->pool_lock);
    *stats_p = arena->pool_stats;
    pthread_mutex_unlock(&arena->pool_lock);
}

void *sp_arena_alloc(sp_arena_t *arena, size_t size)
{
    uint_fast64_t live, peak;
    void *ptr;

    if (SP_UNLIKELY(sp__fault_fire(SP_FAULT_ALLOC)))
        return NULL;
    if (size >= SP_ARENA_GRAIN)
        ptr = sp_arena_pool_take(arena, sp_arena_grains(size));
    else /* mallocx(0) is undefined; a 0-byte request takes the smallest size class. */
        ptr = mallocx(size != 0 ? size : 1, sp_arena_flags(arena));
    if (ptr == NULL)
        return NULL;
    atomic_fetch_add_explicit(&arena->allocs, 1, memory_order_relaxed);
    live = atomic_fetch_add_explicit(&arena->live_bytes, size, memory_order_relaxed) + size;
    peak = atomic_load_explicit(&arena->peak_bytes, memory_order_relaxed);
    while (live > peak &&
           !atomic_compare_exchange_weak_explicit(&arena->peak_bytes, &peak, live,
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
    return ptr;
}

void sp_arena_free(sp_arena_t *arena, void *ptr, size_t size)
{
    if (ptr == NULL)
        return;
    if (size >= SP_ARENA_GRAIN)
        sp_arena_pool_put(arena, ptr, sp_arena_grains(size));
    else
        sdallocx(ptr, size != 0 ? size : 1, sp_arena_flags(arena));
    atomic_fetch_add_explicit(&arena->frees, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&arena->live_bytes, size, memory_order_relaxed);
}

void sp_arena_stats(const sp_arena_t *arena, sp_arena_stats_t *stats_p)
{
    stats_p->live_bytes = atomic_load_explicit(&arena->live_bytes, memory_order_relaxed);
    stats_p->peak_bytes = atomic_load_explicit(&arena->peak_bytes, memory_order_relaxed);
    stats_p->allocs = atomic_load_explicit(&arena->allocs, memory_order_relaxed);
    stats_p->frees = atomic_load_explicit(&arena->frees, memory_order_relaxed);
    stats_p->mapped_bytes = atomic_load_explicit(&arena->mapped_bytes, memory_order_relaxed);
}

unsigned sp_arena_numa_index(const sp_arena_t *arena) { return arena->numa_index; }
