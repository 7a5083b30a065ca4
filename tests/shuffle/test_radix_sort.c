/*
 * Tests of the map side's radix sorts against a reference model (SQLite
 * style): random packed pointers and sort entries, partitions drawn from
 * several distributions (one partition, 7, 200, 201, 1000, 10^4, the full
 * 24-bit range, one partition holding almost everything, sorted and reversed
 * input), page and offset bits random, are sorted by the radix sort and by
 * qsort with a comparator that breaks ties by the original index. The two
 * must agree element for element, which checks stability as well as order.
 * The returned buffer must be a or tmp, whatever tmp held before, and which
 * of the two it is tells how many passes moved data: none when the keys are
 * all the same (tmp is then left untouched), one when they differ in one
 * byte only, and, for the cases tabulated, as many as the sort promises
 * (partitions below 1024 move once). sp__key_prefix is checked for zero
 * padding and for agreeing with memcmp on 8-byte keys.
 */
/* LABELS: unit */
#include "shuffle/radix_sort.h"

#include <spate/shuffle.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* splitmix64: every seed gives a distinct, reproducible stream. */
static uint64_t next_random(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint32_t random_below(uint64_t *s, uint32_t bound)
{
    return (uint32_t)(next_random(s) % bound);
}

typedef enum dist {
    DIST_ONE,     /* every element in one random partition */
    DIST_7,       /* 7 partitions */
    DIST_200,     /* 200: fits in the low byte */
    DIST_201,     /* 201 */
    DIST_1000,    /* 1000: ten bits, one wide digit */
    DIST_10K,     /* 10^4: two bytes vary */
    DIST_FULL,    /* the full 24-bit range: three bytes vary */
    DIST_SKEW,    /* 95% in one partition, the rest anywhere */
    DIST_SORTED,  /* nondecreasing partitions, in runs */
    DIST_REVERSE, /* nonincreasing partitions, in runs */
    DIST_COUNT
} dist_t;

static const char *const dist_names[DIST_COUNT] = {
    "one", "7", "200", "201", "1000", "10k", "full", "skew", "sorted", "reverse",
};

/* Draws n partitions of distribution d into parts. */
static void make_partitions(uint32_t *parts, size_t n, dist_t d, uint64_t *s)
{
    uint32_t fixed = random_below(s, SP_MAX_PARTITIONS);

    for (size_t i = 0; i < n; i++) {
        switch (d) {
        case DIST_ONE: parts[i] = fixed; break;
        case DIST_7: parts[i] = random_below(s, 7); break;
        case DIST_200: parts[i] = random_below(s, 200); break;
        case DIST_201: parts[i] = random_below(s, 201); break;
        case DIST_1000: parts[i] = random_below(s, 1000); break;
        case DIST_10K: parts[i] = random_below(s, 10000); break;
        case DIST_SKEW:
            parts[i] = random_below(s, 100) < 95 ? fixed : random_below(s, SP_MAX_PARTITIONS);
            break;
        case DIST_FULL:
        case DIST_SORTED:
        case DIST_REVERSE:
        case DIST_COUNT: parts[i] = random_below(s, SP_MAX_PARTITIONS); break;
        }
    }
    /* Sorted and reversed: runs of one partition, rising by 0..15 between. */
    if (d == DIST_SORTED || d == DIST_REVERSE) {
        uint32_t p = random_below(s, 1000);

        for (size_t i = 0; i < n; i++) {
            size_t at = d == DIST_SORTED ? i : n - 1 - i;

            parts[at] = p;
            if (p < SP_MAX_PARTITIONS - 16 && random_below(s, 4) == 0)
                p += random_below(s, 16);
        }
    }
}

static uint64_t random_ptr(uint32_t partition, uint64_t *s)
{
    return sp_shuffle_packed_ptr_encode(partition, random_below(s, SP_PAGE_TABLE_SIZE),
                                        random_below(s, SP_PAGE_MAX_OFFSET + 1));
}

/* Bytes first_byte .. first_byte+bytes-1 of words that are not the same in all. */
static unsigned varying_bytes(const uint64_t *words, size_t n, unsigned first_byte, unsigned bytes)
{
    uint64_t diff = 0;
    unsigned count = 0;

    for (size_t i = 1; i < n; i++)
        diff |= words[i] ^ words[0];
    for (unsigned b = first_byte; b < first_byte + bytes; b++)
        count += ((diff >> (8 * b)) & 0xff) != 0;
    return count;
}

/*
 * The result buffer for keys that vary in `varying` bytes: a when nothing
 * varies, tmp after the one pass of a single varying byte; with more, the
 * pass count is the sort's to choose and either buffer is right.
 */
static bool result_buffer_ok(const void *out, const void *a, const void *tmp, unsigned varying)
{
    if (varying == 0)
        return out == a;
    if (varying == 1)
        return out == tmp;
    return out == a || out == tmp;
}

/* ------------------------------------------------------------------------ */
/* Packed pointers                                                           */
/* ------------------------------------------------------------------------ */

typedef struct ref_ptr {
    uint64_t ptr;
    size_t index;
} ref_ptr_t;

static int ref_ptr_cmp(const void *x, const void *y)
{
    const ref_ptr_t *a = x;
    const ref_ptr_t *b = y;
    uint32_t pa = sp_shuffle_packed_ptr_partition(a->ptr);
    uint32_t pb = sp_shuffle_packed_ptr_partition(b->ptr);

    if (pa != pb)
        return pa < pb ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* Sorts n pointers of distribution d both ways and compares. */
static void check_ptrs(size_t n, dist_t d, uint64_t seed)
{
    uint64_t s = seed;
    size_t alloc = n ? n : 1;
    uint32_t *parts = malloc(alloc * sizeof(*parts));
    uint64_t *a = malloc(alloc * sizeof(*a));
    uint64_t *tmp = malloc(alloc * sizeof(*tmp));
    uint64_t *tmp_before = malloc(alloc * sizeof(*tmp_before));
    ref_ptr_t *ref = malloc(alloc * sizeof(*ref));
    uint64_t *out;
    unsigned varying;

    assert_non_null(parts);
    assert_non_null(a);
    assert_non_null(tmp);
    assert_non_null(tmp_before);
    assert_non_null(ref);
    make_partitions(parts, n, d, &s);
    for (size_t i = 0; i < n; i++) {
        a[i] = random_ptr(parts[i], &s);
        ref[i].ptr = a[i];
        ref[i].index = i;
        /* tmp's contents must not matter. */
        tmp[i] = next_random(&s);
    }
    memcpy(tmp_before, tmp, n * sizeof(*tmp));
    varying = varying_bytes(a, n, 5, 3);
    qsort(ref, n, sizeof(*ref), ref_ptr_cmp);

    out = sp__radix_sort_ptrs(a, tmp, n);
    if (!result_buffer_ok(out, a, tmp, varying))
        fail_msg("n=%zu dist=%s seed=%llu: %u partition bytes vary but result in %s", n,
                 dist_names[d], (unsigned long long)seed, varying,
                 out == a     ? "a"
                 : out == tmp ? "tmp"
                              : "neither");
    if (varying == 0 && memcmp(tmp, tmp_before, n * sizeof(*tmp)) != 0)
        fail_msg("n=%zu dist=%s seed=%llu: nothing to sort but tmp was written", n, dist_names[d],
                 (unsigned long long)seed);
    for (size_t i = 0; i < n; i++) {
        if (out[i] != ref[i].ptr)
            fail_msg("n=%zu dist=%s seed=%llu: element %zu is %#llx, expected %#llx", n,
                     dist_names[d], (unsigned long long)seed, i, (unsigned long long)out[i],
                     (unsigned long long)ref[i].ptr);
    }
    free(ref);
    free(tmp_before);
    free(tmp);
    free(a);
    free(parts);
}

static const size_t small_sizes[] = {0, 1, 2, 3, 255, 256, 257, 4096};

static void test_radix_sort_ptrs_small_matches_qsort(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++)
        for (size_t k = 0; k < SP_ARRAY_SIZE(small_sizes); k++)
            for (int d = 0; d < DIST_COUNT; d++)
                check_ptrs(small_sizes[k], (dist_t)d, seed * 1000 + (uint64_t)d);
}

static void test_radix_sort_ptrs_large_matches_qsort(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 2; seed++)
        for (int d = 0; d < DIST_COUNT; d++)
            check_ptrs(100000, (dist_t)d, seed * 7919 + (uint64_t)d);
    /* A million only for the distributions that need each pass count. */
    check_ptrs(1000000, DIST_ONE, 11);
    check_ptrs(1000000, DIST_200, 12);
    check_ptrs(1000000, DIST_1000, 16);
    check_ptrs(1000000, DIST_10K, 13);
    check_ptrs(1000000, DIST_FULL, 14);
    check_ptrs(1000000, DIST_SKEW, 15);
}

/* Zero and one element: nothing moves, tmp is not touched, a comes back. */
static void test_radix_sort_ptrs_trivial_sizes(void **state)
{
    uint64_t a[1] = {sp_shuffle_packed_ptr_encode(5, 1, 2)};
    uint64_t tmp[1] = {42};

    (void)state;
    assert_ptr_equal(sp__radix_sort_ptrs(a, tmp, 0), a);
    assert_ptr_equal(sp__radix_sort_ptrs(a, tmp, 1), a);
    assert_int_equal(a[0], sp_shuffle_packed_ptr_encode(5, 1, 2));
    assert_int_equal(tmp[0], 42);
}

/*
 * How many passes move data, read off the result buffer: none for one
 * partition, one per varying byte, except that partitions whose ids differ
 * only within 10 adjacent bits (below 1024, say) move once.
 */
static void test_radix_sort_ptrs_moves_only_varying_bits(void **state)
{
    /* Two partitions that alternate, and the passes the sort promises. */
    static const struct {
        uint32_t lo, hi;
        unsigned passes;
    } cases[] = {
        {0x123456, 0x123456, 0}, {0x000001, 0x000002, 1}, {0x000100, 0x000200, 1},
        {0x010000, 0x020000, 1}, {0x000001, 0x0003e8, 1}, {0x000100, 0x010000, 1},
        {0x000001, 0x010002, 2}, {0x000000, 0x0007ff, 2}, {0x000000, 0x010101, 3},
        {0x000000, 0xffffff, 3},
    };
    enum { N = 64 };
    uint64_t a[N];
    uint64_t tmp[N];
    uint64_t s = 99;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(cases); c++) {
        uint64_t *out;

        for (size_t i = 0; i < N; i++)
            a[i] = random_ptr(i % 3 ? cases[c].hi : cases[c].lo, &s);
        out = sp__radix_sort_ptrs(a, tmp, N);
        if (out != (cases[c].passes % 2 ? tmp : a))
            fail_msg("partitions %#x and %#x: expected %u passes, result in %s", cases[c].lo,
                     cases[c].hi, cases[c].passes, out == a ? "a" : "tmp");
        for (size_t i = 1; i < N; i++)
            assert_true(sp_shuffle_packed_ptr_partition(out[i - 1]) <=
                        sp_shuffle_packed_ptr_partition(out[i]));
    }
}

/* ------------------------------------------------------------------------ */
/* Sort entries                                                              */
/* ------------------------------------------------------------------------ */

typedef enum prefix_dist {
    PREFIX_RANDOM, /* all 8 bytes random */
    PREFIX_FEW,    /* 5 distinct values: many ties, broken by index */
    PREFIX_SAME,   /* one value: only partition passes */
    PREFIX_SHORT,  /* keys of 0..8 bytes, zero-padded */
    PREFIX_SMALL,  /* numbers below 1000: ten bits, one wide digit */
    PREFIX_COUNT
} prefix_dist_t;

typedef struct ref_entry {
    sp_sort_entry_t e;
    size_t index;
} ref_entry_t;

static int ref_entry_cmp(const void *x, const void *y)
{
    const ref_entry_t *a = x;
    const ref_entry_t *b = y;
    uint32_t pa = sp_shuffle_packed_ptr_partition(a->e.ptr);
    uint32_t pb = sp_shuffle_packed_ptr_partition(b->e.ptr);

    if (pa != pb)
        return pa < pb ? -1 : 1;
    if (a->e.prefix != b->e.prefix)
        return a->e.prefix < b->e.prefix ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static uint64_t make_prefix(prefix_dist_t pd, const uint64_t *few, uint64_t *s)
{
    unsigned char key[8] = {0};
    size_t len;

    switch (pd) {
    case PREFIX_RANDOM: return next_random(s);
    case PREFIX_FEW: return few[random_below(s, 5)];
    case PREFIX_SAME: return few[0];
    case PREFIX_SMALL: return random_below(s, 1000);
    case PREFIX_SHORT:
    case PREFIX_COUNT: break;
    }
    len = random_below(s, 9);
    for (size_t i = 0; i < len; i++)
        key[i] = (unsigned char)random_below(s, 4);
    return sp__key_prefix(key, len);
}

static void check_entries(size_t n, dist_t d, prefix_dist_t pd, uint64_t seed)
{
    uint64_t s = seed;
    size_t alloc = n ? n : 1;
    uint32_t *parts = malloc(alloc * sizeof(*parts));
    sp_sort_entry_t *a = malloc(alloc * sizeof(*a));
    sp_sort_entry_t *tmp = malloc(alloc * sizeof(*tmp));
    ref_entry_t *ref = malloc(alloc * sizeof(*ref));
    uint64_t *words = malloc(alloc * sizeof(*words));
    uint64_t few[5];
    sp_sort_entry_t *out;
    unsigned varying;

    assert_non_null(parts);
    assert_non_null(a);
    assert_non_null(tmp);
    assert_non_null(ref);
    assert_non_null(words);
    for (size_t i = 0; i < SP_ARRAY_SIZE(few); i++)
        few[i] = next_random(&s);
    make_partitions(parts, n, d, &s);
    for (size_t i = 0; i < n; i++) {
        a[i].prefix = make_prefix(pd, few, &s);
        a[i].ptr = random_ptr(parts[i], &s);
        ref[i].e = a[i];
        ref[i].index = i;
        tmp[i].prefix = next_random(&s);
        tmp[i].ptr = next_random(&s);
    }
    for (size_t i = 0; i < n; i++)
        words[i] = a[i].prefix;
    varying = varying_bytes(words, n, 0, 8);
    for (size_t i = 0; i < n; i++)
        words[i] = a[i].ptr;
    varying += varying_bytes(words, n, 5, 3);
    qsort(ref, n, sizeof(*ref), ref_entry_cmp);

    out = sp__radix_sort_entries(a, tmp, n);
    if (!result_buffer_ok(out, a, tmp, varying))
        fail_msg("n=%zu dist=%s prefix=%d seed=%llu: %u key bytes vary but result in %s", n,
                 dist_names[d], (int)pd, (unsigned long long)seed, varying,
                 out == a     ? "a"
                 : out == tmp ? "tmp"
                              : "neither");
    for (size_t i = 0; i < n; i++) {
        if (out[i].prefix != ref[i].e.prefix || out[i].ptr != ref[i].e.ptr)
            fail_msg("n=%zu dist=%s prefix=%d seed=%llu: element %zu is {%#llx, %#llx}, "
                     "expected {%#llx, %#llx}",
                     n, dist_names[d], (int)pd, (unsigned long long)seed, i,
                     (unsigned long long)out[i].prefix, (unsigned long long)out[i].ptr,
                     (unsigned long long)ref[i].e.prefix, (unsigned long long)ref[i].e.ptr);
    }
    free(words);
    free(ref);
    free(tmp);
    free(a);
    free(parts);
}

static void test_radix_sort_entries_small_matches_qsort(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 5; seed++)
        for (size_t k = 0; k < SP_ARRAY_SIZE(small_sizes); k++)
            for (int d = 0; d < DIST_COUNT; d++)
                for (int pd = 0; pd < PREFIX_COUNT; pd++)
                    check_entries(small_sizes[k], (dist_t)d, (prefix_dist_t)pd,
                                  seed * 100000 + (uint64_t)d * 10 + (uint64_t)pd);
}

static void test_radix_sort_entries_large_matches_qsort(void **state)
{
    (void)state;
    for (int d = 0; d < DIST_COUNT; d++)
        check_entries(100000, (dist_t)d, (prefix_dist_t)(d % PREFIX_COUNT), 31 + (uint64_t)d);
    check_entries(1000000, DIST_200, PREFIX_RANDOM, 41);
    check_entries(1000000, DIST_1000, PREFIX_SMALL, 43);
    check_entries(1000000, DIST_FULL, PREFIX_SHORT, 42);
}

/* As for pointers, with the prefix's bytes before the partition's. */
static void test_radix_sort_entries_moves_only_varying_bits(void **state)
{
    static const struct {
        uint64_t prefix_lo, prefix_hi;
        uint32_t part_lo, part_hi;
        unsigned passes;
    } cases[] = {
        {7, 7, 5, 5, 0},
        {1, 2, 5, 5, 1},
        {0, UINT64_C(0xff00000000000000), 5, 5, 1},
        {1, 1000, 5, 5, 1},
        {5, 5, 1, 1000, 1},
        {1, 1000, 1, 1000, 2},
        {0x100, 0x10000, 0x100, 0x10000, 2},
        {0, 0x7ff, 0, 0x7ff, 4},
        {0, UINT64_C(0x0101010101010101), 5, 5, 8},
        {0, UINT64_MAX, 0, 0xffffff, 11},
    };
    enum { N = 64 };
    sp_sort_entry_t a[N];
    sp_sort_entry_t tmp[N];
    uint64_t s = 77;

    (void)state;
    for (size_t c = 0; c < SP_ARRAY_SIZE(cases); c++) {
        sp_sort_entry_t *out;

        for (size_t i = 0; i < N; i++) {
            a[i].prefix = i % 3 ? cases[c].prefix_hi : cases[c].prefix_lo;
            a[i].ptr = random_ptr(i % 5 ? cases[c].part_hi : cases[c].part_lo, &s);
        }
        out = sp__radix_sort_entries(a, tmp, N);
        if (out != (cases[c].passes % 2 ? tmp : a))
            fail_msg("case %zu: expected %u passes, result in %s", c, cases[c].passes,
                     out == a ? "a" : "tmp");
        for (size_t i = 1; i < N; i++) {
            uint32_t p0 = sp_shuffle_packed_ptr_partition(out[i - 1].ptr);
            uint32_t p1 = sp_shuffle_packed_ptr_partition(out[i].ptr);

            assert_true(p0 < p1 || (p0 == p1 && out[i - 1].prefix <= out[i].prefix));
        }
    }
}

static void test_radix_sort_entries_trivial_sizes(void **state)
{
    sp_sort_entry_t a[1] = {{7, sp_shuffle_packed_ptr_encode(5, 1, 2)}};
    sp_sort_entry_t tmp[1] = {{42, 43}};

    (void)state;
    assert_ptr_equal(sp__radix_sort_entries(a, tmp, 0), a);
    assert_ptr_equal(sp__radix_sort_entries(a, tmp, 1), a);
    assert_int_equal(a[0].prefix, 7);
    assert_int_equal(tmp[0].prefix, 42);
}

/* ------------------------------------------------------------------------ */
/* Key prefix                                                                */
/* ------------------------------------------------------------------------ */

static void test_key_prefix_pads_short_keys(void **state)
{
    const unsigned char key[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

    (void)state;
    assert_int_equal(sp__key_prefix(key, 0), 0);
    assert_int_equal(sp__key_prefix(key, 1), UINT64_C(0x0100000000000000));
    assert_int_equal(sp__key_prefix(key, 3), UINT64_C(0x0102030000000000));
    assert_int_equal(sp__key_prefix(key, 7), UINT64_C(0x0102030405060700));
    assert_int_equal(sp__key_prefix(key, 8), UINT64_C(0x0102030405060708));
    /* Bytes past the eighth do not count. */
    assert_int_equal(sp__key_prefix(key, 10), UINT64_C(0x0102030405060708));
    /* A key and its zero-padded extension share a prefix. */
    {
        const unsigned char padded[8] = {1, 2, 3, 0, 0, 0, 0, 0};

        assert_int_equal(sp__key_prefix(key, 3), sp__key_prefix(padded, 8));
    }
}

static int sign(int x) { return (x > 0) - (x < 0); }

static void test_key_prefix_orders_like_memcmp(void **state)
{
    uint64_t s = 7;

    (void)state;
    for (int i = 0; i < 100000; i++) {
        unsigned char x[8];
        unsigned char y[8];
        uint64_t px, py;

        for (size_t b = 0; b < 8; b++) {
            /* Small alphabet so that long common prefixes occur. */
            x[b] = (unsigned char)(i % 2 ? random_below(&s, 256) : random_below(&s, 3));
            y[b] = (unsigned char)(i % 2 ? random_below(&s, 256) : random_below(&s, 3));
        }
        if (i % 5 == 0)
            memcpy(y, x, random_below(&s, 9));
        px = sp__key_prefix(x, 8);
        py = sp__key_prefix(y, 8);
        assert_int_equal(sign(memcmp(x, y, 8)), px < py ? -1 : px > py);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_radix_sort_ptrs_small_matches_qsort),
        cmocka_unit_test(test_radix_sort_ptrs_large_matches_qsort),
        cmocka_unit_test(test_radix_sort_ptrs_trivial_sizes),
        cmocka_unit_test(test_radix_sort_ptrs_moves_only_varying_bits),
        cmocka_unit_test(test_radix_sort_entries_small_matches_qsort),
        cmocka_unit_test(test_radix_sort_entries_large_matches_qsort),
        cmocka_unit_test(test_radix_sort_entries_moves_only_varying_bits),
        cmocka_unit_test(test_radix_sort_entries_trivial_sizes),
        cmocka_unit_test(test_key_prefix_pads_short_keys),
        cmocka_unit_test(test_key_prefix_orders_like_memcmp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
