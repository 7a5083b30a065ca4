/*
 * Tests of task memory: the spill order of consumers (smallest covering the
 * shortfall, else the largest, the requester last), self-spill, leak reports
 * at task end, pages and the 13-bit page table, and page hooks.
 */
/* LABELS: unit */
#include "mm_test_util.h"

#include <stdlib.h>
#include <string.h>

/* A consumer that holds plain memory and spills all of it when asked. */
typedef struct test_consumer {
    sp_memory_consumer_t base;
    char tag;
    char *log; /* shared log of spill calls, one tag per call */
    bool can_spill;
} test_consumer_t;

static uint64_t test_spill(sp_memory_consumer_t *c, uint64_t bytes, sp_memory_consumer_t *trigger)
{
    test_consumer_t *t = (test_consumer_t *)(void *)c;
    uint64_t held = c->used;

    (void)bytes;
    (void)trigger;
    strncat(t->log, &t->tag, 1);
    if (!t->can_spill)
        return 0;
    sp_memory_consumer_release(c, held);
    return held;
}

static const sp_memory_consumer_ops_t test_ops = {.size = sizeof(test_ops), .spill = test_spill};

static void consumer_init(test_consumer_t *t, sp_task_memory_t *task, char tag, char *log)
{
    memset(t, 0, sizeof(*t));
    t->tag = tag;
    t->log = log;
    t->can_spill = true;
    sp_memory_consumer_init(&t->base, task, &test_ops, "test");
}

static void test_spill_picks_smallest_covering_consumer(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0", "1m");
    sp_task_memory_t *task = NULL;
    test_consumer_t a, b, c, r;
    char log[32] = "";

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    consumer_init(&b, task, 'B', log);
    consumer_init(&c, task, 'C', log);
    consumer_init(&r, task, 'R', log);
    assert_int_equal(sp_memory_consumer_acquire(&a.base, 10 * MiB), 10 * MiB);
    assert_int_equal(sp_memory_consumer_acquire(&b.base, 30 * MiB), 30 * MiB);
    assert_int_equal(sp_memory_consumer_acquire(&c.base, 50 * MiB), 50 * MiB);
    /* 10 free, 40 asked: B (30) is the smallest that covers the 30 short. */
    assert_int_equal(sp_memory_consumer_acquire(&r.base, 40 * MiB), 40 * MiB);
    assert_string_equal(log, "B");
    assert_int_equal(b.base.used, 0);
    assert_int_equal(b.base.spills, 1);
    assert_int_equal(b.base.spilled_bytes, 30 * MiB);
    assert_int_equal(a.base.used, 10 * MiB);
    assert_int_equal(c.base.used, 50 * MiB);
    sp_memory_consumer_release(&r.base, 40 * MiB);
    sp_memory_consumer_release(&a.base, 10 * MiB);
    sp_memory_consumer_release(&c.base, 50 * MiB);
    sp_memory_consumer_fini(&a.base);
    sp_memory_consumer_fini(&b.base);
    sp_memory_consumer_fini(&c.base);
    sp_memory_consumer_fini(&r.base);
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_destroy(mm);
}

static void test_spill_falls_back_to_largest_then_repeats(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0", "1m");
    sp_task_memory_t *task = NULL;
    test_consumer_t a, b, c, r;
    sp_task_memory_stats_t ts;
    sp_memory_stats_t ms;
    char log[32] = "";

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    consumer_init(&b, task, 'B', log);
    consumer_init(&c, task, 'C', log);
    consumer_init(&r, task, 'R', log);
    sp_memory_consumer_acquire(&a.base, 10 * MiB);
    sp_memory_consumer_acquire(&b.base, 20 * MiB);
    sp_memory_consumer_acquire(&c.base, 30 * MiB);
    /* 40 free, 95 asked: no one covers 55 -> C (largest); then 25 short,
     * no one covers -> B (largest left); then 5 short -> A covers it. */
    assert_int_equal(sp_memory_consumer_acquire(&r.base, 95 * MiB), 95 * MiB);
    assert_string_equal(log, "CBA");
    sp_task_memory_stats(task, &ts);
    assert_int_equal(ts.spills, 3);
    assert_int_equal(ts.spilled_bytes, 60 * MiB);
    assert_int_equal(ts.self_spills, 0);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.spill_requests, 3);
    assert_int_equal(ms.spill_released_bytes, 60 * MiB);
    sp_memory_consumer_fini(&a.base);
    sp_memory_consumer_fini(&b.base);
    sp_memory_consumer_fini(&c.base);
    sp_memory_consumer_release(&r.base, 95 * MiB);
    sp_memory_consumer_fini(&r.base);
    sp_task_memory_destroy(task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    sp_memory_manager_destroy(mm);
}

static void test_spill_requester_last_and_each_consumer_once(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("100m", "0", "1m");
    sp_task_memory_t *task = NULL;
    test_consumer_t a, r;
    sp_task_memory_stats_t ts;
    char log[32] = "";

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    consumer_init(&r, task, 'R', log);
    a.can_spill = false; /* asked once, releases nothing, not asked again */
    sp_memory_consumer_acquire(&a.base, 20 * MiB);
    sp_memory_consumer_acquire(&r.base, 50 * MiB);
    /* 30 free, 60 asked: A cannot help, so R spills itself (its 50 + the 30
     * it got), then gets 60 of the 100 it may now reach... bounded by 80. */
    assert_int_equal(sp_memory_consumer_acquire(&r.base, 60 * MiB), 60 * MiB);
    assert_string_equal(log, "AR");
    assert_int_equal(r.base.used, 60 * MiB);
    assert_int_equal(a.base.used, 20 * MiB);
    sp_task_memory_stats(task, &ts);
    assert_int_equal(ts.self_spills, 1);
    assert_int_equal(ts.acquired_bytes, 80 * MiB);
    sp_memory_consumer_fini(&a.base); /* still holds 20: a leak of the task */
    sp_memory_consumer_release(&r.base, 60 * MiB);
    sp_memory_consumer_fini(&r.base);
    sp_task_memory_destroy(task, &ts);
    assert_int_equal(ts.leaked_bytes, 20 * MiB);
    assert_int_equal(sp_memory_manager_task_execution(mm, 1), 0);
    sp_memory_manager_destroy(mm);
}

static void test_task_end_reports_and_releases_leaks(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0.5", "1m");
    sp_task_memory_t *task = NULL;
    test_consumer_t a;
    sp_page_t *p1 = NULL, *p2 = NULL;
    sp_task_memory_stats_t ts;
    sp_memory_stats_t ms;
    sp_arena_stats_t as;
    char log[8] = "";

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 7, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &p1), SP_OK);
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 3 * MiB, &p2), SP_OK);
    assert_int_equal(p1->size, MiB);
    assert_int_equal(sp_memory_consumer_acquire(&a.base, 5000), 5000);
    /* The task ends without freeing anything. */
    sp_task_memory_destroy(task, &ts);
    assert_int_equal(ts.leaked_pages, 2);
    assert_int_equal(ts.leaked_bytes, 4 * MiB + 5000);
    assert_int_equal(ts.pages, 0);
    assert_int_equal(ts.acquired_bytes, 0);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.execution_used, 0);
    assert_int_equal(ms.leaked_bytes, 4 * MiB + 5000);
    assert_int_equal(ms.pages_allocated, 2);
    assert_int_equal(ms.pages_freed, 2);
    sp_arena_stats(sp_memory_manager_arena(mm), &as);
    assert_int_equal(as.live_bytes, 0);
    assert_null(a.base.task);
    sp_memory_manager_destroy(mm);
}

static void test_task_ids_are_unique_among_live_tasks(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0.5", "1m");
    sp_task_memory_t *t1 = NULL, *t2 = NULL;

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 5, &t1), SP_OK);
    assert_int_equal(sp_task_memory_create(mm, 5, &t2), SP_ERR_EXISTS);
    assert_null(t2);
    sp_task_memory_destroy(t1, NULL);
    assert_int_equal(sp_task_memory_create(mm, 5, &t2), SP_OK);
    sp_task_memory_destroy(t2, NULL);
    sp_task_memory_destroy(NULL, NULL);
    sp_memory_manager_destroy(mm);
}

static void test_page_refused_when_memory_cannot_be_had(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("8m", "0", "1m");
    sp_task_memory_t *task = NULL;
    test_consumer_t a;
    sp_page_t *p = NULL;
    char log[8] = "";

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    a.can_spill = false;
    assert_int_equal(sp_memory_consumer_acquire(&a.base, 7 * MiB), 7 * MiB);
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 2 * MiB, &p), SP_ERR_MEMORY_REFUSED);
    assert_null(p);
    assert_non_null(strstr(sp_last_error(), "granted"));
    /* Nothing is held after the error. */
    assert_int_equal(a.base.used, 7 * MiB);
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 9 * MiB, &p), SP_ERR_TOO_LARGE);
    sp_memory_consumer_release(&a.base, 7 * MiB);
    sp_memory_consumer_fini(&a.base);
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_destroy(mm);
}

static void test_page_table_holds_8192_pages(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0", "4k");
    sp_task_memory_t *task = NULL;
    sp_page_t **pages = calloc(SP_PAGE_TABLE_SIZE, sizeof(*pages)), *extra = NULL;
    test_consumer_t a;
    char log[8] = "";
    unsigned char *seen = calloc(SP_PAGE_TABLE_SIZE, 1);

    (void)state;
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++) {
        assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &pages[i]), SP_OK);
        assert_true(pages[i]->number < SP_PAGE_TABLE_SIZE);
        assert_int_equal(seen[pages[i]->number], 0);
        seen[pages[i]->number] = 1;
        assert_ptr_equal(sp_task_memory_page(task, pages[i]->number), pages[i]);
    }
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &extra), SP_ERR_NO_RESOURCE);
    /* A freed number is reused. */
    {
        uint32_t n = pages[100]->number;
        sp_memory_consumer_page_free(&a.base, pages[100]);
        assert_null(sp_task_memory_page(task, n));
        assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &pages[100]), SP_OK);
        assert_int_equal(pages[100]->number, n);
    }
    assert_null(sp_task_memory_page(task, SP_PAGE_TABLE_SIZE));
    for (uint32_t i = 0; i < SP_PAGE_TABLE_SIZE; i++)
        sp_memory_consumer_page_free(&a.base, pages[i]);
    assert_int_equal(a.base.used, 0);
    sp_memory_consumer_fini(&a.base);
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_destroy(mm);
    free(pages);
    free(seen);
}

/* ---- page hooks ---- */

typedef struct hook_state {
    int created, destroying;
    int fail_next;
} hook_state_t;

static sp_status_t hook_created(void *arg, sp_page_t *page)
{
    hook_state_t *h = arg;

    if (h->fail_next) {
        h->fail_next = 0;
        return SP_ERR_TRANSPORT;
    }
    h->created++;
    page->reg = h;
    return SP_OK;
}

static void hook_destroying(void *arg, sp_page_t *page)
{
    hook_state_t *h = arg;

    assert_ptr_equal(page->reg, h);
    h->destroying++;
}

static void test_page_hooks_see_every_page(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0", "1m");
    hook_state_t h = {0};
    sp_page_hooks_t hooks = {.arg = &h, .created = hook_created, .destroying = hook_destroying};
    sp_task_memory_t *task = NULL;
    sp_page_t *p = NULL, *q = NULL;
    test_consumer_t a;
    char log[8] = "";

    (void)state;
    sp_memory_manager_set_page_hooks(mm, &hooks);
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    consumer_init(&a, task, 'A', log);
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &p), SP_OK);
    assert_int_equal(h.created, 1);
    /* A failing hook fails the allocation and leaves nothing behind. */
    h.fail_next = 1;
    assert_int_equal(sp_memory_consumer_page_alloc(&a.base, 0, &q), SP_ERR_TRANSPORT);
    assert_null(q);
    assert_int_equal(a.base.used, MiB);
    sp_memory_consumer_page_free(&a.base, p);
    assert_int_equal(h.destroying, 1);
    sp_memory_consumer_fini(&a.base);
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_set_page_hooks(mm, NULL);
    sp_memory_manager_destroy(mm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spill_picks_smallest_covering_consumer),
        cmocka_unit_test(test_spill_falls_back_to_largest_then_repeats),
        cmocka_unit_test(test_spill_requester_last_and_each_consumer_once),
        cmocka_unit_test(test_task_end_reports_and_releases_leaks),
        cmocka_unit_test(test_task_ids_are_unique_among_live_tasks),
        cmocka_unit_test(test_page_refused_when_memory_cannot_be_had),
        cmocka_unit_test(test_page_table_holds_8192_pages),
        cmocka_unit_test(test_page_hooks_see_every_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
