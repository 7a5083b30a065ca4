/*
 * Tests of the little-endian byte codec (common/bytes.h). Each put is checked
 * against a literal array of the bytes it must write, at every offset 0..7 of
 * a buffer filled with a guard pattern, so a wrong byte order, a write of the
 * wrong width or a write outside the field fails; each get reads the same
 * literals back at every offset. Round trips run over edge values (0, 1, all
 * ones, the top bit alone, alternating patterns) at unaligned offsets.
 */
/* LABELS: unit */
#include "bytes.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#define GUARD 0xA5
#define BUF   32

/* Checks that buf holds want (n bytes) at off and the guard everywhere else. */
static void check_field(const unsigned char *buf, size_t off, const unsigned char *want, size_t n)
{
    for (size_t i = 0; i < BUF; i++) {
        if (i >= off && i < off + n)
            assert_int_equal(buf[i], want[i - off]);
        else
            assert_int_equal(buf[i], GUARD);
    }
}

static void test_u16_byte_order(void **state)
{
    static const unsigned char want[2] = {0x34, 0x12};
    unsigned char buf[BUF];

    (void)state;
    for (size_t off = 0; off < 8; off++) {
        memset(buf, GUARD, sizeof(buf));
        sp__le_put_u16(buf + off, 0x1234);
        check_field(buf, off, want, sizeof(want));
        assert_int_equal(sp__le_get_u16(buf + off), 0x1234);
    }
}

static void test_u32_byte_order(void **state)
{
    static const unsigned char want[4] = {0x78, 0x56, 0x34, 0x12};
    unsigned char buf[BUF];

    (void)state;
    for (size_t off = 0; off < 8; off++) {
        memset(buf, GUARD, sizeof(buf));
        sp__le_put_u32(buf + off, UINT32_C(0x12345678));
        check_field(buf, off, want, sizeof(want));
        assert_int_equal(sp__le_get_u32(buf + off), UINT32_C(0x12345678));
    }
}

static void test_u64_byte_order(void **state)
{
    static const unsigned char want[8] = {0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01};
    unsigned char buf[BUF];

    (void)state;
    for (size_t off = 0; off < 8; off++) {
        memset(buf, GUARD, sizeof(buf));
        sp__le_put_u64(buf + off, UINT64_C(0x0123456789ABCDEF));
        check_field(buf, off, want, sizeof(want));
        assert_true(sp__le_get_u64(buf + off) == UINT64_C(0x0123456789ABCDEF));
    }
}

/* Gets read literal bytes (high bytes set, so a sign-extending read would show). */
static void test_get_literals(void **state)
{
    static const unsigned char src[8] = {0x01, 0x80, 0xFF, 0x7F, 0x00, 0xFE, 0x10, 0x9C};
    unsigned char buf[BUF];

    (void)state;
    for (size_t off = 0; off < 8; off++) {
        memset(buf, GUARD, sizeof(buf));
        memcpy(buf + off, src, sizeof(src));
        assert_int_equal(sp__le_get_u16(buf + off), 0x8001);
        assert_int_equal(sp__le_get_u32(buf + off), UINT32_C(0x7FFF8001));
        assert_true(sp__le_get_u64(buf + off) == UINT64_C(0x9C10FE007FFF8001));
    }
}

static void test_round_trips(void **state)
{
    static const uint64_t values[] = {0,
                                      1,
                                      0xFF,
                                      0x100,
                                      UINT64_C(0x80),
                                      UINT64_C(0x8000),
                                      UINT64_C(0x80000000),
                                      UINT64_C(0x8000000000000000),
                                      UINT64_C(0x5555555555555555),
                                      UINT64_C(0xAAAAAAAAAAAAAAAA),
                                      UINT64_C(0xFFFFFFFF),
                                      UINT64_MAX};
    unsigned char buf[BUF];

    (void)state;
    for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
        for (size_t off = 0; off < 8; off++) {
            memset(buf, GUARD, sizeof(buf));
            sp__le_put_u16(buf + off, (uint16_t)values[v]);
            assert_int_equal(sp__le_get_u16(buf + off), (uint16_t)values[v]);
            sp__le_put_u32(buf + off, (uint32_t)values[v]);
            assert_int_equal(sp__le_get_u32(buf + off), (uint32_t)values[v]);
            sp__le_put_u64(buf + off, values[v]);
            assert_true(sp__le_get_u64(buf + off) == values[v]);
            /* The u64's low half is the u32 and the u16 at the same place. */
            assert_int_equal(sp__le_get_u32(buf + off), (uint32_t)values[v]);
            assert_int_equal(sp__le_get_u16(buf + off), (uint16_t)values[v]);
            assert_int_equal(sp__le_get_u32(buf + off + 4), (uint32_t)(values[v] >> 32));
            assert_int_equal(buf[off + 8], GUARD);
            if (off > 0)
                assert_int_equal(buf[off - 1], GUARD);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u16_byte_order), cmocka_unit_test(test_u32_byte_order),
        cmocka_unit_test(test_u64_byte_order), cmocka_unit_test(test_get_literals),
        cmocka_unit_test(test_round_trips),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
