/*
 * Two-sided serving (transport/serve.c) through the ofi backend in msg mode
 * on tcp;ofi_rxm, one process reading its own regions over loopback (its own
 * address added as a peer): the progress thread answers the requests while
 * the test polls. Checks what the base now does for every backend that
 * serves by request and reply: replies carry the region's bytes and are
 * counted (requests_served, bytes_served) while refusals are not; a request
 * past the region's end, for an id never served or for a deregistered region
 * is refused, never answered with data, and a new registration never takes
 * an old region's id; a reply posted before its region is deregistered is
 * delivered whole (the deregistration waits for it).
 */
/* LABELS: fabric */
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REGION (8u << 20)

typedef struct fixture {
    sp_conf_t *conf;
    sp_transport_t *t;
    uint32_t self;
    unsigned char *region, *dest;
    sp_mr_t *dest_mr;
} fixture_t;

static unsigned char pattern(size_t i) { return (unsigned char)((i * 7u + (i >> 12)) & 0xff); }

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    size_t len = 0;

    assert_non_null(f);
    assert_int_equal(sp_conf_create(&f->conf), SP_OK);
    assert_int_equal(sp_conf_set(f->conf, "transport.provider", "tcp;ofi_rxm"), SP_OK);
    assert_int_equal(sp_conf_set(f->conf, "transport.ofi_mode", "msg"), SP_OK);
    assert_int_equal(sp_conf_set(f->conf, "transport.timeout", "30s"), SP_OK);
    assert_int_equal(sp_transport_open(f->conf, &f->t), SP_OK);
    assert_int_equal(sp_transport_address(f->t, addr, sizeof(addr), &len), SP_OK);
    assert_int_equal(sp_transport_add_peer(f->t, addr, len, &f->self), SP_OK);
    f->region = malloc(REGION);
    f->dest = malloc(REGION);
    assert_non_null(f->region);
    assert_non_null(f->dest);
    for (size_t i = 0; i < REGION; i++)
        f->region[i] = pattern(i);
    assert_int_equal(sp_transport_mr_reg(f->t, f->dest, REGION, false, &f->dest_mr), SP_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;

    sp_transport_mr_dereg(f->dest_mr);
    sp_transport_close(f->t);
    sp_conf_destroy(f->conf);
    free(f->region);
    free(f->dest);
    free(f);
    return 0;
}

/* Waits (generously) for the one completion of a fetch and returns its status. */
static sp_status_t wait_one(fixture_t *f)
{
    sp_transport_completion_t done;
    size_t n = 0;

    for (int i = 0; i < 600 && n == 0; i++)
        assert_int_equal(sp_transport_poll(f->t, &done, 1, 100, &n), SP_OK);
    assert_int_equal(n, 1);
    assert_false(done.held);
    return done.status;
}

static void pack(sp_mr_t *mr, unsigned char *key, size_t *len_p)
{
    assert_int_equal(sp_transport_mr_pack(mr, key, SP_TRANSPORT_RKEY_MAX, len_p), SP_OK);
}

/* The key with one of its u64 fields (0: region id, 1: base, 2: length) changed. */
static void forge(unsigned char *key, int field, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        key[8 + 8 * field + i] = (unsigned char)(value >> (8 * i));
}

static uint64_t get64(const unsigned char *b)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static void fetch(fixture_t *f, const unsigned char *key, size_t klen, uint64_t offset, size_t len)
{
    assert_int_equal(
        sp_transport_fetch(f->t, f->self, key, klen, offset, len, f->dest, f->dest_mr, NULL),
        SP_OK);
}

static void test_serve_replies_are_counted_refusals_not(void **state)
{
    static const size_t sizes[] = {1, 1000, 4096, 65536, 1 << 20};
    fixture_t *f = *state;
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
    sp_transport_stats_t before, after;
    uint64_t bytes = 0, reads = 0;
    size_t klen = 0;
    sp_mr_t *mr = NULL;

    assert_int_equal(sp_transport_mr_reg(f->t, f->region, REGION, true, &mr), SP_OK);
    pack(mr, key, &klen);
    sp_transport_stats(f->t, &before);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint64_t offsets[] = {0, 12345, REGION - sizes[i]};
        for (size_t j = 0; j < 3; j++) {
            memset(f->dest, 0, sizes[i]);
            fetch(f, key, klen, offsets[j], sizes[i]);
            assert_int_equal(wait_one(f), SP_OK);
            for (size_t b = 0; b < sizes[i]; b++)
                if (f->dest[b] != pattern(offsets[j] + b))
                    fail_msg("byte %zu of %zu at %llu is wrong", b, sizes[i],
                             (unsigned long long)offsets[j]);
            reads++;
            bytes += sizes[i];
        }
    }
    /* A key claiming more than the region: the owner refuses, no data comes. */
    forge(key, 2, 2 * (uint64_t)REGION);
    memset(f->dest, 0xee, 64);
    fetch(f, key, klen, REGION - 10, 64);
    assert_int_equal(wait_one(f), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "refused"));
    for (int i = 0; i < 64; i++)
        assert_int_equal(f->dest[i], 0xee);
    /* A wrong base for the right id. */
    pack(mr, key, &klen);
    forge(key, 1, 4096);
    fetch(f, key, klen, 0, 64);
    assert_int_equal(wait_one(f), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "refused"));
    /* An id never served. */
    pack(mr, key, &klen);
    forge(key, 0, 999999);
    fetch(f, key, klen, 0, 64);
    assert_int_equal(wait_one(f), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "refused"));
    sp_transport_stats(f->t, &after);
    assert_int_equal(after.requests_served - before.requests_served, reads);
    assert_int_equal(after.bytes_served - before.bytes_served, bytes);
    sp_transport_mr_dereg(mr);
}

static void test_serve_deregistered_region_is_refused(void **state)
{
    fixture_t *f = *state;
    unsigned char old[SP_TRANSPORT_RKEY_MAX], key[SP_TRANSPORT_RKEY_MAX];
    size_t olen = 0, klen = 0;
    sp_mr_t *mr = NULL;

    assert_int_equal(sp_transport_mr_reg(f->t, f->region, REGION, true, &mr), SP_OK);
    pack(mr, old, &olen);
    fetch(f, old, olen, 0, 4096);
    assert_int_equal(wait_one(f), SP_OK);
    sp_transport_mr_dereg(mr);
    memset(f->dest, 0xee, 4096);
    fetch(f, old, olen, 0, 4096);
    assert_int_equal(wait_one(f), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "refused"));
    assert_int_equal(f->dest[0], 0xee);
    /* The same memory served again gets a new id: the old key stays refused. */
    assert_int_equal(sp_transport_mr_reg(f->t, f->region, REGION, true, &mr), SP_OK);
    pack(mr, key, &klen);
    assert_true(get64(key + 8) != get64(old + 8));
    fetch(f, old, olen, 0, 4096);
    assert_int_equal(wait_one(f), SP_ERR_FETCH_FAILED);
    fetch(f, key, klen, 0, 4096);
    assert_int_equal(wait_one(f), SP_OK);
    assert_int_equal(f->dest[4095], pattern(4095));
    sp_transport_mr_dereg(mr);
}

static void test_serve_reply_posted_before_dereg_is_whole(void **state)
{
    fixture_t *f = *state;
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
    sp_transport_stats_t before, now;
    size_t klen = 0;
    sp_mr_t *mr = NULL;

    assert_int_equal(sp_transport_mr_reg(f->t, f->region, REGION, true, &mr), SP_OK);
    pack(mr, key, &klen);
    sp_transport_stats(f->t, &before);
    memset(f->dest, 0, REGION);
    fetch(f, key, klen, 0, REGION);
    /* Wait until the owner has posted the reply (the progress thread serves). */
    for (int i = 0; i < 30000; i++) {
        sp_transport_stats(f->t, &now);
        if (now.requests_served != before.requests_served)
            break;
        usleep(1000);
    }
    assert_int_equal(now.requests_served, before.requests_served + 1);
    sp_transport_mr_dereg(mr);
    assert_int_equal(wait_one(f), SP_OK);
    for (size_t b = 0; b < REGION; b++)
        if (f->dest[b] != pattern(b))
            fail_msg("byte %zu of the region is wrong", b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_serve_replies_are_counted_refusals_not, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_serve_deregistered_region_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serve_reply_posted_before_dereg_is_whole, setup,
                                        teardown),
    };

    /* Loopback only, always. */
    setenv("FI_TCP_IFACE", "lo", 1);
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
