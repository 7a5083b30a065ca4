/*
 * Tests of the shuffle's packed record pointer: checked packing and the
 * field getters against a plain reference on random inputs and the corners,
 * the partition ordering of the packed words, and the out-of-range errors.
 */
/* LABELS: unit */
#include <spate/shuffle.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* ---- packed pointers against a reference ---- */

static void test_packed_ptr_matches_reference(void **state)
{
    unsigned seed = 7;

    (void)state;
    for (int i = 0; i < 100000; i++) {
        uint64_t part = (uint64_t)rand_r(&seed) & 0xffffff;
        uint64_t page = (uint64_t)rand_r(&seed) & 0x1fff;
        uint64_t off = (uint64_t)rand_r(&seed) & 0x7ffffff;
        uint64_t ptr = 0;

        if (i < 4) { /* the corners */
            part = i & 1 ? 0xffffff : 0;
            page = i & 2 ? 0x1fff : 0;
            off = i & 1 ? 0x7ffffff : 0;
        }
        assert_int_equal(sp_shuffle_packed_ptr_pack(part, page, off, &ptr), SP_OK);
        assert_int_equal(ptr, part * (UINT64_C(1) << 40) + page * (UINT64_C(1) << 27) + off);
        assert_int_equal(sp_shuffle_packed_ptr_partition(ptr), part);
        assert_int_equal(sp_shuffle_packed_ptr_page(ptr), page);
        assert_int_equal(sp_shuffle_packed_ptr_offset(ptr), off);
    }
    /* Sorting packed pointers sorts by partition. */
    assert_true(sp_shuffle_packed_ptr_encode(1, 0, 0) >
                sp_shuffle_packed_ptr_encode(0, 8191, SP_PAGE_MAX_OFFSET));
}

static void test_packed_ptr_rejects_values_out_of_range(void **state)
{
    uint64_t ptr = 12345;

    (void)state;
    assert_int_equal(sp_shuffle_packed_ptr_pack(SP_MAX_PARTITIONS, 0, 0, &ptr), SP_ERR_TOO_LARGE);
    assert_non_null(strstr(sp_last_error(), "partition 16777216"));
    assert_int_equal(sp_shuffle_packed_ptr_pack(0, SP_PAGE_TABLE_SIZE, 0, &ptr), SP_ERR_TOO_LARGE);
    assert_non_null(strstr(sp_last_error(), "page number 8192"));
    assert_int_equal(sp_shuffle_packed_ptr_pack(0, 0, (uint64_t)SP_PAGE_MAX_OFFSET + 1, &ptr),
                     SP_ERR_TOO_LARGE);
    assert_non_null(strstr(sp_last_error(), "offset 134217728"));
    assert_int_equal(ptr, 12345); /* untouched on error */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_ptr_matches_reference),
        cmocka_unit_test(test_packed_ptr_rejects_values_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
