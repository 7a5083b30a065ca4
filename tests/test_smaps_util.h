/*
 * Helpers shared by tests that look at this process's mappings in
 * /proc/self/smaps. Include after cmocka.h.
 */
#ifndef SPATE_TEST_SMAPS_UTIL_H
#define SPATE_TEST_SMAPS_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* True when the mapping holding addr carries VmFlag "hg" (madvise(MADV_HUGEPAGE)). */
static inline bool test_mapping_has_hugepage_flag(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    uintptr_t a = (uintptr_t)addr;
    char line[512];
    bool inside = false, found = false;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = a >= lo && a < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            found = strstr(line, " hg") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

#endif /* SPATE_TEST_SMAPS_UTIL_H */
