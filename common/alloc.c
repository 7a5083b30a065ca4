/*
 * Allocation wrappers and the fault-injection counters. Every heap
 * allocation spate makes for its own objects goes through sp__malloc and
 * friends so that tests can fail the n-th one and prove that each error path
 * releases what it took (SQLite's faultsim, Redis's sdsalloc.h).
 */
#include "common_int.h"

#include <stdatomic.h>
#include <string.h>

static atomic_uint_fast64_t sp_fault_countdown[SP_FAULT_KINDS];
static atomic_uint_fast64_t sp_fault_count[SP_FAULT_KINDS];

void sp__fault_arm(sp_fault_kind_t kind, uint64_t nth)
{
    atomic_store(&sp_fault_countdown[kind], nth);
}

bool sp__fault_fire(sp_fault_kind_t kind)
{
    uint_fast64_t cur = atomic_load_explicit(&sp_fault_countdown[kind], memory_order_relaxed);

    while (cur != 0) {
        if (atomic_compare_exchange_weak(&sp_fault_countdown[kind], &cur, cur - 1)) {
            if (cur == 1) {
                atomic_fetch_add(&sp_fault_count[kind], 1);
                return true;
            }
            return false;
        }
    }
    return false;
}

uint64_t sp__fault_fired(sp_fault_kind_t kind) { return atomic_load(&sp_fault_count[kind]); }

void *sp__malloc(size_t size)
{
    if (SP_UNLIKELY(sp__fault_fire(SP_FAULT_ALLOC)))
        return NULL;
    return malloc(size);
}

void *sp__calloc(size_t count, size_t size)
{
    if (SP_UNLIKELY(sp__fault_fire(SP_FAULT_ALLOC)))
        return NULL;
    return calloc(count, size);
}

void *sp__realloc(void *ptr, size_t size)
{
    if (SP_UNLIKELY(sp__fault_fire(SP_FAULT_ALLOC)))
        return NULL;
    return realloc(ptr, size);
}

char *sp__strdup(const char *s)
{
    size_t len = strlen(s) + 1;
    char *copy = sp__malloc(len);

    if (copy != NULL)
        memcpy(copy, s, len);
    return copy;
}

void sp__free(void *ptr) { free(ptr); }
