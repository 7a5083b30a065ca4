/*
 * Private: LSD radix sorts of the map side's record pointers. Passes whose
 * byte is the same in every element are skipped, so a shuffle with few
 * partitions pays for one counting pass per byte and no moves.
 */
#ifndef SPATE_SHUFFLE_RADIX_SORT_H
#define SPATE_SHUFFLE_RADIX_SORT_H

#include "common_int.h"

#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Sorts n packed pointers (include/spate/shuffle.h) by partition, stable,
 * using tmp (room for n) as the second buffer. Returns the buffer that holds
 * the sorted result: a or tmp.
 */
uint64_t *sp__radix_sort_ptrs(uint64_t *a, uint64_t *tmp, size_t n);

/* A record pointer with the first 8 key bytes, big-endian, zero-padded. */
typedef struct sp_sort_entry {
    uint64_t prefix;
    uint64_t ptr;
} sp_sort_entry_t;

/*
 * Sorts n entries by (partition of ptr, prefix), stable, with tmp as the
 * second buffer; returns a or tmp. Records with equal partition and prefix
 * are left for the caller's comparator.
 */
sp_sort_entry_t *sp__radix_sort_entries(sp_sort_entry_t *a, sp_sort_entry_t *tmp, size_t n);

/* The prefix of a key: its first 8 bytes as a big-endian number. */
static inline uint64_t sp__key_prefix(const void *key, size_t len)
{
    const unsigned char *k = (const unsigned char *)key;
    uint64_t p = 0;

    if (len >= 8) {
        memcpy(&p, k, 8);
        return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? __builtin_bswap64(p) : p;
    }
    for (size_t i = 0; i < 8; i++)
        p = (p << 8) | (i < len ? k[i] : 0u);
    return p;
}

#ifdef __cplusplus
}
#endif
#endif
