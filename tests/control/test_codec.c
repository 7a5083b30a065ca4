/*
 * The control plane's payload codec (control/codec.c): sp__rbuf against
 * every prefix of a payload holding each kind of field (each is refused as
 * truncated, consumes nothing and leaves its output alone), a trailing byte
 * refused by sp__rbuf_done, strings with a NUL or over their limit, a length
 * that claims more than is there; sp__wbuf's sticky status under injected
 * allocation failures, a length that does not fit a u32, and a count
 * patched in at the end.
 */
/* LABELS: unit */
#include "ctl_test_util.h"

static const char bytes_field[] = "hello\0world"; /* bytes may hold a NUL */
#define BYTES_LEN (sizeof(bytes_field) - 1)

static void codec_sample(sp__wbuf_t *w)
{
    sp__wbuf_init(w);
    sp__wbuf_put_u8(w, 0xa5);
    sp__wbuf_put_u16(w, 0xbeef);
    sp__wbuf_put_u32(w, 0xdeadbeefu);
    sp__wbuf_put_u64(w, 0x0123456789abcdefull);
    sp__wbuf_put_bytes(w, bytes_field, BYTES_LEN);
    sp__wbuf_put_str(w, "spate");
    sp__wbuf_put_raw(w, "RAW!!", 5);
    sp__wbuf_put_bytes(w, NULL, 0);
    sp__wbuf_put_str(w, "");
    sp__wbuf_put_u32(w, 7);
    assert_int_equal(sp__wbuf_status(w), SP_OK);
}

typedef struct sample {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32, tail;
    uint64_t u64;
    const void *bytes, *empty;
    size_t blen, elen;
    char *str, *estr;
    unsigned char raw[5];
} sample_t;

static bool all_bytes(const void *p, size_t n, unsigned char v)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i] != v)
            return false;
    return true;
}

/*
 * One get: on failure it must have consumed nothing and left its output
 * (filled with 0xee beforehand) alone.
 */
#define GET(field, call)                                                                           \
    do {                                                                                           \
        size_t left_ = sp__rbuf_left(r);                                                           \
        sp_status_t st_ = (call);                                                                  \
        if (st_ != SP_OK) {                                                                        \
            assert_int_equal(sp__rbuf_left(r), left_);                                             \
            assert_true(all_bytes(&s->field, sizeof(s->field), 0xee));                             \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

static sp_status_t read_sample(sp__rbuf_t *r, sample_t *s)
{
    memset(s, 0xee, sizeof(*s));
    GET(u8, sp__rbuf_get_u8(r, "u8", &s->u8));
    GET(u16, sp__rbuf_get_u16(r, "u16", &s->u16));
    GET(u32, sp__rbuf_get_u32(r, "u32", &s->u32));
    GET(u64, sp__rbuf_get_u64(r, "u64", &s->u64));
    GET(bytes, sp__rbuf_get_bytes(r, "bytes", &s->bytes, &s->blen));
    GET(str, sp__rbuf_get_str(r, "str", 0, &s->str));
    GET(raw, sp__rbuf_get_raw(r, "raw", s->raw, sizeof(s->raw)));
    GET(empty, sp__rbuf_get_bytes(r, "empty bytes", &s->empty, &s->elen));
    GET(estr, sp__rbuf_get_str(r, "empty str", 16, &s->estr));
    GET(tail, sp__rbuf_get_u32(r, "tail", &s->tail));
    return SP_OK;
}

static void sample_free(sample_t *s)
{
    unsigned char junk[sizeof(char *)];

    memset(junk, 0xee, sizeof(junk));
    if (memcmp(&s->str, junk, sizeof(junk)) != 0)
        free(s->str);
    if (memcmp(&s->estr, junk, sizeof(junk)) != 0)
        free(s->estr);
}

static void test_rbuf_rejects_every_truncation(void **state)
{
    sp__wbuf_t w;
    sp__rbuf_t rb, *r = &rb;
    sample_t s;
    unsigned char *copy;

    (void)state;
    codec_sample(&w);
    /* Each prefix in an allocation of its own size, so ASan sees any overread. */
    for (size_t cut = 0; cut < w.len; cut++) {
        copy = malloc(cut > 0 ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, w.data, cut);
        sp__rbuf_init(r, cut > 0 ? copy : NULL, cut);
        assert_int_equal(read_sample(r, &s), SP_ERR_BAD_FORMAT);
        assert_true(contains(sp_last_error(), "truncated"));
        sample_free(&s);
        free(copy);
    }

    /* Whole: every field as written, nothing left. */
    sp__rbuf_init(r, w.data, w.len);
    assert_int_equal(read_sample(r, &s), SP_OK);
    assert_int_equal(s.u8, 0xa5);
    assert_int_equal(s.u16, 0xbeef);
    assert_int_equal(s.u32, 0xdeadbeefu);
    assert_true(s.u64 == 0x0123456789abcdefull);
    assert_int_equal(s.blen, BYTES_LEN);
    assert_memory_equal(s.bytes, bytes_field, BYTES_LEN);
    assert_string_equal(s.str, "spate");
    assert_memory_equal(s.raw, "RAW!!", 5);
    assert_non_null(s.empty);
    assert_int_equal(s.elen, 0);
    assert_string_equal(s.estr, "");
    assert_int_equal(s.tail, 7);
    assert_int_equal(sp__rbuf_left(r), 0);
    assert_int_equal(sp__rbuf_done(r, "sample"), SP_OK);
    sample_free(&s);

    /* One trailing byte: every field reads, done refuses. */
    copy = malloc(w.len + 1);
    assert_non_null(copy);
    memcpy(copy, w.data, w.len);
    copy[w.len] = 0;
    sp__rbuf_init(r, copy, w.len + 1);
    assert_int_equal(read_sample(r, &s), SP_OK);
    assert_int_equal(sp__rbuf_left(r), 1);
    assert_int_equal(sp__rbuf_done(r, "sample"), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message sample: too long"));
    assert_true(contains(sp_last_error(), "1 bytes left over"));
    sample_free(&s);
    free(copy);
    sp__wbuf_free(&w);
}

static void test_rbuf_refuses_bad_strings_and_lengths(void **state)
{
    sp__wbuf_t w;
    sp__rbuf_t r;
    char *s = (char *)&r;
    const void *data = NULL;
    size_t len = 0;

    (void)state;
    /* A string holding a NUL. */
    sp__wbuf_init(&w);
    sp__wbuf_put_bytes(&w, bytes_field, BYTES_LEN);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 0, &s), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "NUL"));
    assert_true(s == (char *)&r);
    assert_int_equal(sp__rbuf_left(&r), w.len);

    /* Over its limit, then at its limit. */
    sp__wbuf_reset(&w);
    sp__wbuf_put_str(&w, "spate");
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 4, &s), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message name: too long"));
    assert_int_equal(sp__rbuf_left(&r), w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 5, &s), SP_OK);
    assert_string_equal(s, "spate");
    free(s);

    /* A length that claims more than is there rewinds to the length. */
    sp__wbuf_reset(&w);
    sp__wbuf_put_u32(&w, UINT32_MAX);
    sp__wbuf_put_raw(&w, "abc", 3);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_bytes(&r, "blob", &data, &len), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message blob: truncated"));
    assert_int_equal(sp__rbuf_left(&r), 7);
    assert_null(data);
    assert_int_equal(sp__rbuf_get_str(&r, "blob", 0, &s), SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__rbuf_left(&r), 7);

    /* Nothing at all. */
    sp__rbuf_init(&r, NULL, 0);
    assert_int_equal(sp__rbuf_left(&r), 0);
    assert_int_equal(sp__rbuf_done(&r, "empty"), SP_OK);
    assert_int_equal(sp__rbuf_get_raw(&r, "nothing", NULL, 0), SP_OK);
    assert_int_equal(sp__rbuf_get_u8(&r, "u8", (uint8_t *)&len), SP_ERR_BAD_FORMAT);
    sp__wbuf_free(&w);
    sp__wbuf_free(NULL);
}

static void test_wbuf_status_is_sticky(void **state)
{
    static const unsigned char big[300];
    sp__wbuf_t w;
    sp__rbuf_t r;
    uint32_t v = 0;

    (void)state;
    sp__wbuf_init(&w);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__wbuf_put_u32(&w, 1), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(sp__wbuf_put_u8(&w, 1), SP_ERR_NOMEM);
    assert_int_equal(sp__wbuf_put_str(&w, "x"), SP_ERR_NOMEM);
    assert_int_equal(sp__wbuf_status(&w), SP_ERR_NOMEM);
    assert_int_equal(w.len, 0);
    sp__wbuf_reset(&w);
    assert_int_equal(sp__wbuf_status(&w), SP_OK);

    /* A bytes field that cannot grow the buffer leaves no half of itself. */
    assert_int_equal(sp__wbuf_put_raw(&w, big, 250), SP_OK);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__wbuf_put_bytes(&w, big, sizeof(big)), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(w.len, 250);
    sp__wbuf_reset(&w);

    /* A length that does not fit a u32 (never read). */
    assert_int_equal(sp__wbuf_put_bytes(&w, big, (size_t)UINT32_MAX + 1), SP_ERR_TOO_LARGE);
    assert_int_equal(sp__wbuf_put_u64(&w, 1), SP_ERR_TOO_LARGE);
    sp__wbuf_reset(&w);

    /* A count patched in at the end. */
    sp__wbuf_put_u32(&w, 0);
    sp__wbuf_put_u8(&w, 9);
    sp__wbuf_patch_u32(&w, 0, 0x01020304u);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_u32(&r, "count", &v), SP_OK);
    assert_int_equal(v, 0x01020304u);
    assert_memory_equal(w.data, "\x04\x03\x02\x01\x09", 5);
    sp__wbuf_free(&w);
    assert_null(w.data);
    assert_int_equal(w.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rbuf_rejects_every_truncation),
        cmocka_unit_test(test_rbuf_refuses_bad_strings_and_lengths),
        cmocka_unit_test(test_wbuf_status_is_sticky),
    };

    ctl_test_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
