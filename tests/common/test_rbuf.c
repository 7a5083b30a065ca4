/*
 * Tests of the common bounded reader (common/rbuf.h): takes hand out the
 * buffer's bytes in order and advance the offset; a take of more than is
 * left returns NULL and consumes nothing, so the next smaller take still
 * succeeds; a NULL buffer reads as empty. The decoders' messages built on it
 * are checked by control/test_codec, executor/test_protocol and
 * shuffle/test_map_status.
 */
/* LABELS: unit */
#include "bytes.h"
#include "rbuf.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

static void test_takes_in_order(void **state)
{
    static const unsigned char buf[7] = {0x01, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12};
    sp__rbuf_t r;
    const unsigned char *p;

    (void)state;
    sp__rbuf_init(&r, buf, sizeof(buf));
    assert_int_equal(sp__rbuf_left(&r), 7);
    p = sp__rbuf_take(&r, 1);
    assert_ptr_equal(p, buf);
    assert_int_equal(p[0], 0x01);
    p = sp__rbuf_take(&r, 2);
    assert_ptr_equal(p, buf + 1);
    assert_int_equal(sp__le_get_u16(p), 0x1234);
    assert_int_equal(r.off, 3);
    p = sp__rbuf_take(&r, 4);
    assert_ptr_equal(p, buf + 3);
    assert_int_equal(sp__le_get_u32(p), UINT32_C(0x12345678));
    assert_int_equal(sp__rbuf_left(&r), 0);
    /* A take of nothing at the end succeeds; one more byte does not. */
    assert_non_null(sp__rbuf_take(&r, 0));
    assert_null(sp__rbuf_take(&r, 1));
    assert_int_equal(r.off, 7);
}

static void test_short_take_consumes_nothing(void **state)
{
    static const unsigned char buf[5] = {1, 2, 3, 4, 5};
    sp__rbuf_t r;

    (void)state;
    sp__rbuf_init(&r, buf, sizeof(buf));
    assert_non_null(sp__rbuf_take(&r, 2));
    assert_null(sp__rbuf_take(&r, 4));
    assert_int_equal(r.off, 2);
    assert_int_equal(sp__rbuf_left(&r), 3);
    assert_null(sp__rbuf_take(&r, SIZE_MAX));
    assert_int_equal(r.off, 2);
    assert_ptr_equal(sp__rbuf_take(&r, 3), buf + 2);
    assert_int_equal(sp__rbuf_left(&r), 0);
}

static void test_null_buffer_is_empty(void **state)
{
    sp__rbuf_t r;

    (void)state;
    sp__rbuf_init(&r, NULL, 0);
    assert_int_equal(sp__rbuf_left(&r), 0);
    assert_non_null(sp__rbuf_take(&r, 0));
    assert_null(sp__rbuf_take(&r, 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_takes_in_order),
        cmocka_unit_test(test_short_take_consumes_nothing),
        cmocka_unit_test(test_null_buffer_is_empty),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
