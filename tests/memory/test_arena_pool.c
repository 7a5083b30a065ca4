/*
 * Tests of the arena's page pool (memory/arena.c): a freed big allocation is
 * handed out again without fresh pages (the same range, or a part of a
 * bigger one), pooled ranges that are each too small are moved into one new
 * range with their bytes (so their pages really moved, not faulted anew),
 * what the pool cannot cover is mapped fresh, sizes round to whole 2 MiB
 * grains, a trim gives pooled memory back, and, on random sequences of
 * allocations and frees checked against a reference model, every block
 * keeps its bytes and live plus pooled memory never exceeds the highest
 * live memory the sequence reached. Through tasks: a second task's pages
 * come from what the first freed, and at a task's end the pool is trimmed
 * to the unified memory that storage and tasks leave free.
 *
 * LABELS: unit
 */
#include <spate/memory.h>

#include "memory/memory_int.h"
#include "mm_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define MIB   ((size_t)1 << 20)
#define GRAIN (2 * MIB)

static sp_arena_t *arena_new(bool huge)
{
    sp_arena_t *arena = NULL;

    if (sp_arena_create(NULL, 0, false, huge, &arena) != SP_OK)
        fail_msg("sp_arena_create: %s", sp_last_error());
    return arena;
}

static sp__arena_pool_stats_t pool_stats(sp_arena_t *arena)
{
    sp__arena_pool_stats_t s;

    sp__arena_pool_stats(arena, &s);
    return s;
}

static uint64_t mapped(sp_arena_t *arena)
{
    sp_arena_stats_t s;

    sp_arena_stats(arena, &s);
    return s.mapped_bytes;
}

/* Fills every 4 KiB page of [p, p + len) with tag, one word a page. */
static void tag_pages(unsigned char *p, size_t len, uint64_t tag)
{
    for (size_t off = 0; off + 8 <= len; off += 4096)
        memcpy(p + off, &tag, 8);
}

static bool pages_tagged(const unsigned char *p, size_t len, uint64_t tag)
{
    for (size_t off = 0; off + 8 <= len; off += 4096) {
        uint64_t v;
        memcpy(&v, p + off, 8);
        if (v != tag)
            return false;
    }
    return true;
}

static void test_pool_hands_a_freed_range_out_again(void **state)
{
    sp_arena_t *arena = arena_new(true);
    sp__arena_pool_stats_t s;
    unsigned char *a, *b;
    uint64_t m;

    (void)state;
    a = sp_arena_alloc(arena, 8 * MIB);
    assert_non_null(a);
    assert_int_equal((uintptr_t)a % GRAIN, 0);
    tag_pages(a, 8 * MIB, 0xa1);
    s = pool_stats(arena);
    assert_int_equal(s.fresh_bytes, 8 * MIB);
    assert_int_equal(s.reused_bytes, 0);
    m = mapped(arena);
    sp_arena_free(arena, a, 8 * MIB);
    assert_int_equal(pool_stats(arena).pooled_bytes, 8 * MIB);
    assert_int_equal(mapped(arena), m); /* kept resident, not unmapped */

    b = sp_arena_alloc(arena, 8 * MIB);
    assert_ptr_equal(b, a);
    assert_true(pages_tagged(b, 8 * MIB, 0xa1)); /* the same pages, not fresh ones */
    s = pool_stats(arena);
    assert_int_equal(s.fresh_bytes, 8 * MIB);
    assert_int_equal(s.reused_bytes, 8 * MIB);
    assert_int_equal(s.pooled_bytes, 0);
    assert_int_equal(mapped(arena), m);
    sp_arena_free(arena, b, 8 * MIB);
    sp_arena_destroy(arena);
}

static void test_pool_splits_a_bigger_range(void **state)
{
    sp_arena_t *arena = arena_new(false);
    unsigned char *big, *small, *rest;

    (void)state;
    big = sp_arena_alloc(arena, 16 * MIB);
    assert_non_null(big);
    tag_pages(big, 16 * MIB, 0xb2);
    sp_arena_free(arena, big, 16 * MIB);

    small = sp_arena_alloc(arena, 3 * MIB + 5); /* two grains */
    assert_ptr_equal(small, big);
    assert_int_equal(pool_stats(arena).pooled_bytes, 12 * MIB);
    rest = sp_arena_alloc(arena, 12 * MIB);
    assert_ptr_equal(rest, big + 4 * MIB);
    assert_true(pages_tagged(rest, 12 * MIB, 0xb2));
    assert_int_equal(pool_stats(arena).pooled_bytes, 0);
    assert_int_equal(pool_stats(arena).fresh_bytes, 16 * MIB);

    /* Freed back to back, the two parts join again into one range. */
    sp_arena_free(arena, small, 3 * MIB + 5);
    sp_arena_free(arena, rest, 12 * MIB);
    assert_int_equal(pool_stats(arena).pooled_bytes, 16 * MIB);
    big = sp_arena_alloc(arena, 16 * MIB);
    assert_ptr_equal(big, small);
    assert_int_equal(pool_stats(arena).fresh_bytes, 16 * MIB);
    sp_arena_free(arena, big, 16 * MIB);
    sp_arena_destroy(arena);
}

static void test_pool_moves_small_ranges_into_a_big_one(void **state)
{
    sp_arena_t *arena = arena_new(true);
    unsigned char *a, *x, *b, *c;
    sp__arena_pool_stats_t s;
    bool a_first;
    uint64_t m;

    (void)state;
    /* x stays live between a and b, so their ranges cannot join when freed. */
    a = sp_arena_alloc(arena, 4 * MIB);
    x = sp_arena_alloc(arena, 2 * MIB);
    b = sp_arena_alloc(arena, 4 * MIB);
    assert_non_null(a);
    assert_non_null(x);
    assert_non_null(b);
    tag_pages(a, 4 * MIB, 0xaaaa);
    tag_pages(b, 4 * MIB, 0xbbbb);
    sp_arena_free(arena, a, 4 * MIB);
    sp_arena_free(arena, b, 4 * MIB);
    m = mapped(arena);
    s = pool_stats(arena);
    assert_int_equal(s.pooled_bytes, 8 * MIB);

    c = sp_arena_alloc(arena, 8 * MIB);
    assert_non_null(c);
    assert_int_equal((uintptr_t)c % GRAIN, 0);
    /* Both pooled ranges moved in with their bytes: nothing fresh, nothing more mapped. */
    a_first = pages_tagged(c, 4 * MIB, 0xaaaa);
    assert_true(a_first ? pages_tagged(c + 4 * MIB, 4 * MIB, 0xbbbb)
                        : pages_tagged(c, 4 * MIB, 0xbbbb) &&
                              pages_tagged(c + 4 * MIB, 4 * MIB, 0xaaaa));
    s = pool_stats(arena);
    assert_int_equal(s.pooled_bytes, 0);
    assert_int_equal(s.reused_bytes, 8 * MIB);
    assert_int_equal(s.fresh_bytes, 10 * MIB);
    assert_true(s.moves >= 2);
    assert_int_equal(mapped(arena), m);
    memset(c, 0x5c, 8 * MIB);

    /* c spans two mappings now; moved again into a bigger range, it keeps its bytes. */
    sp_arena_free(arena, c, 8 * MIB);
    c = sp_arena_alloc(arena, 12 * MIB);
    assert_non_null(c);
    for (size_t off = 0; off < 8 * MIB; off += 4096)
        assert_int_equal(c[off], 0x5c);
    s = pool_stats(arena);
    assert_int_equal(s.reused_bytes, 16 * MIB);
    assert_int_equal(s.fresh_bytes, 14 * MIB); /* the 4 MiB the pool could not cover */
    memset(c, 1, 12 * MIB);
    sp_arena_free(arena, c, 12 * MIB);
    sp_arena_free(arena, x, 2 * MIB);
    sp_arena_destroy(arena);
}

static void test_pool_trim_gives_memory_back(void **state)
{
    sp_arena_t *arena = arena_new(false);
    unsigned char *p;
    uint64_t m;

    (void)state;
    p = sp_arena_alloc(arena, 10 * MIB);
    assert_non_null(p);
    memset(p, 7, 10 * MIB);
    m = mapped(arena);
    sp_arena_free(arena, p, 10 * MIB);
    assert_int_equal(sp__arena_trim(arena, 4 * MIB), 6 * MIB);
    assert_int_equal(pool_stats(arena).pooled_bytes, 4 * MIB);
    assert_int_equal(mapped(arena), m - 6 * MIB);
    assert_int_equal(sp__arena_trim(arena, 0), 4 * MIB);
    assert_int_equal(pool_stats(arena).trimmed_bytes, 10 * MIB);
    assert_int_equal(mapped(arena), m - 10 * MIB);
    assert_int_equal(sp__arena_trim(arena, 0), 0);

    /* Nothing pooled: the next allocation is fresh. */
    p = sp_arena_alloc(arena, 2 * MIB);
    assert_non_null(p);
    assert_int_equal(pool_stats(arena).fresh_bytes, 12 * MIB);
    sp_arena_free(arena, p, 2 * MIB);
    sp_arena_destroy(arena);
}

/* Deterministic xorshift so that failures reproduce. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t grains(size_t n) { return (n + GRAIN - 1) / GRAIN * GRAIN; }

/*
 * Random allocations (mostly big, some small) and frees against a model of
 * what is live: every block keeps its tag, and the big blocks' grains plus
 * what is pooled never exceed the most big memory the sequence had live.
 */
static void test_pool_random_against_model(void **state)
{
    enum { SLOTS = 12, ROUNDS = 3000 };
    sp_arena_t *arena = arena_new(true);
    unsigned char *ptrs[SLOTS] = {0};
    size_t lens[SLOTS] = {0};
    uint64_t seed = 0x2545f4914f6cdd1dull, live_big = 0, peak_big = 0;
    sp__arena_pool_stats_t s;

    (void)state;
    for (unsigned r = 0; r < ROUNDS; r++) {
        unsigned i = (unsigned)(next_random(&seed) % SLOTS);
        if (ptrs[i] != NULL) {
            assert_true(pages_tagged(ptrs[i], lens[i], 0x1000 + i));
            if (lens[i] >= GRAIN)
                live_big -= grains(lens[i]);
            sp_arena_free(arena, ptrs[i], lens[i]);
            ptrs[i] = NULL;
        } else {
            uint64_t v = next_random(&seed);
            lens[i] =
                v % 8 == 0 ? (size_t)(v >> 8) % (64 * 1024) + 8 : (size_t)(v >> 8) % (12 * MIB) + 8;
            ptrs[i] = sp_arena_alloc(arena, lens[i]);
            assert_non_null(ptrs[i]);
            tag_pages(ptrs[i], lens[i], 0x1000 + i);
            if (lens[i] >= GRAIN) {
                live_big += grains(lens[i]);
                peak_big = live_big > peak_big ? live_big : peak_big;
            }
        }
        s = pool_stats(arena);
        assert_true(live_big + s.pooled_bytes <= peak_big);
    }
    for (unsigned i = 0; i < SLOTS; i++) {
        if (ptrs[i] != NULL) {
            assert_true(pages_tagged(ptrs[i], lens[i], 0x1000 + i));
            sp_arena_free(arena, ptrs[i], lens[i]);
        }
    }
    s = pool_stats(arena);
    assert_true(s.reused_bytes > s.fresh_bytes); /* the point of the pool */
    assert_true(s.fresh_bytes <= peak_big);
    assert_true(s.pooled_bytes <= peak_big);
    sp_arena_destroy(arena);
}

/* Task 1 frees 32 MiB of pages; task 2 takes them again; storage growth shrinks the pool. */
static void test_pool_serves_the_next_task_within_free_memory(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0.5", "4m");
    sp_arena_t *arena = sp_memory_manager_arena(mm);
    sp_memory_consumer_t consumer;
    sp_page_t *pages[8];
    sp_task_memory_t *task;
    sp__arena_pool_stats_t s;

    (void)state;
    for (uint64_t id = 1; id <= 2; id++) {
        assert_int_equal(sp_task_memory_create(mm, id, &task), SP_OK);
        sp_memory_consumer_init(&consumer, task, NULL, "pool test");
        for (int i = 0; i < 8; i++) {
            assert_int_equal(sp_memory_consumer_page_alloc(&consumer, 0, &pages[i]), SP_OK);
            memset(pages[i]->data, (int)id, pages[i]->size);
        }
        for (int i = 0; i < 8; i++)
            sp_memory_consumer_page_free(&consumer, pages[i]);
        sp_memory_consumer_fini(&consumer);
        sp_task_memory_destroy(task, NULL);
        s = pool_stats(arena);
        assert_int_equal(s.pooled_bytes, 32 * MIB); /* nothing else uses memory: all kept */
        assert_int_equal(s.fresh_bytes, 32 * MIB);  /* task 2 faulted nothing fresh */
        assert_int_equal(s.reused_bytes, (id - 1) * 32 * MIB);
    }

    /* Storage now holds 48 of the 64 MiB: at the next task's end only 16 MiB stay pooled. */
    assert_true(sp_memory_manager_acquire_storage(mm, 48 * MIB));
    assert_int_equal(sp_task_memory_create(mm, 3, &task), SP_OK);
    sp_task_memory_destroy(task, NULL);
    s = pool_stats(arena);
    assert_int_equal(s.pooled_bytes, 16 * MIB);
    assert_int_equal(s.trimmed_bytes, 16 * MIB);
    sp_memory_manager_release_storage(mm, 48 * MIB);
    sp_memory_manager_destroy(mm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_hands_a_freed_range_out_again),
        cmocka_unit_test(test_pool_splits_a_bigger_range),
        cmocka_unit_test(test_pool_moves_small_ranges_into_a_big_one),
        cmocka_unit_test(test_pool_trim_gives_memory_back),
        cmocka_unit_test(test_pool_random_against_model),
        cmocka_unit_test(test_pool_serves_the_next_task_within_free_memory),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
