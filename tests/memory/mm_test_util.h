/* Helpers shared by the memory manager tests: a manager from a few keys. */
#ifndef SPATE_MM_TEST_UTIL_H
#define SPATE_MM_TEST_UTIL_H

#include <spate/memory.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define MiB (UINT64_C(1) << 20)

/* A manager with unified = executor (no reserve, fraction 1), unbound. */
static inline sp_memory_manager_t *
mm_test_create(const char *executor, const char *storage_fraction, const char *page_size)
{
    sp_memory_manager_t *mm = NULL;
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.storage_fraction", storage_fraction), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", page_size), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_memory_manager_create(conf, NULL, 0, &mm), SP_OK);
    sp_conf_destroy(conf);
    return mm;
}

#endif
