/*
 * The HMAC handshake and the secrets of the control plane (control/auth.c),
 * between sp__ctl_accept and sp__ctl_connect: a wrong secret is refused on
 * both sides, each naming the peer; a server that cannot prove the secret
 * (its WELCOME carries a MAC of zeros) is refused by the client; a "driver"
 * that answers with a 256 MiB frame is refused at its header before the
 * client reads any of it. Secrets: from an environment variable (unset,
 * empty, too short, and SPATE_SECRET byte for byte when none is named) and
 * generated (64 hex digits; two in a row differ). The hub's side of the
 * handshake (joining clients that stall, lie or flood) is in test_hub.c.
 */
/* LABELS: unit */
#include "ctl_test_util.h"

#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Secrets                                                                  */
/* ------------------------------------------------------------------------ */

static void test_secret_from_env_rules(void **state)
{
    const char *var = "SPATE_TEST_CTL_SECRET";
    void *secret = NULL;
    size_t len = 0;
    char hex[65], hex2[65];

    (void)state;
    unsetenv(var);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "SPATE_TEST_CTL_SECRET is not set"));
    setenv(var, "", 1);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_NOT_FOUND);
    setenv(var, "0123456789abcde", 1); /* 15 bytes */
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "holds 15 bytes; at least 16"));
    assert_null(secret);
    setenv(var, "0123456789abcdef", 1);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_OK);
    assert_int_equal(len, 16);
    assert_memory_equal(secret, "0123456789abcdef", 16);
    free(secret);
    unsetenv(var);

    /* NULL reads SPATE_SECRET, byte for byte (no hex decoding). */
    assert_int_equal(sp__ctl_secret_generate(hex), SP_OK);
    assert_int_equal(sp__ctl_secret_generate(hex2), SP_OK);
    assert_int_equal(strlen(hex), 64);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 64);
    assert_string_not_equal(hex, hex2);
    setenv("SPATE_SECRET", hex, 1);
    assert_int_equal(sp__ctl_secret_from_env(NULL, &secret, &len), SP_OK);
    assert_int_equal(len, 64);
    assert_memory_equal(secret, hex, 64);
    free(secret);
    unsetenv("SPATE_SECRET");
    assert_int_equal(sp__ctl_secret_from_env(NULL, &secret, &len), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "SPATE_SECRET is not set"));
}

/* ------------------------------------------------------------------------ */
/* Handshake                                                                */
/* ------------------------------------------------------------------------ */

static void test_wrong_secret_is_refused_on_both_sides(void **state)
{
    sp__ctl_conn_t *conn = (sp__ctl_conn_t *)&conn;
    char addr[128];
    connector_t c;
    int lfd = -1;
    sp_status_t st;

    (void)state;
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd), SP_OK);
    connector_start(&c, addr, WRONG, T);
    st = sp__ctl_accept(lfd, SECRET, SECRET_LEN, T, &conn);
    connector_join(&c);
    assert_int_equal(st, SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "refused: wrong secret"));
    assert_true(contains(sp_last_error(), "127.0.0.1:"));
    assert_true(conn == (sp__ctl_conn_t *)&conn);
    assert_int_equal(c.st, SP_ERR_INVALID_PARAM);
    assert_true(contains(c.err, "driver refused: wrong secret"));
    assert_true(contains(c.err, addr));
    assert_null(c.conn);

    /* A server that does not know the secret: its WELCOME proves nothing. */
    connector_start(&c, addr, SECRET, T);
    {
        unsigned char hello[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE];
        unsigned char auth[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE];
        unsigned char welcome[SP__CTL_HEADER_SIZE + SP__CTL_MAC_SIZE];
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        int fd;

        assert_int_equal(poll(&pfd, 1, T), 1);
        fd = accept(lfd, NULL, NULL);
        assert_true(fd >= 0);
        memset(hello, 7, sizeof(hello));
        sp__ctl_header_pack(hello, SP__CTL_HELLO, SP__CTL_NONCE_SIZE);
        assert_true(write_all(fd, hello, sizeof(hello)));
        assert_int_equal(read_all(fd, auth, sizeof(auth), T), 1);
        assert_int_equal(get32(auth), SP__CTL_MAGIC);
        assert_int_equal(auth[6], SP__CTL_AUTH);
        assert_int_equal(get32(auth + 8), SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE);
        memset(welcome, 0, sizeof(welcome));
        sp__ctl_header_pack(welcome, SP__CTL_WELCOME, SP__CTL_MAC_SIZE);
        assert_true(write_all(fd, welcome, sizeof(welcome)));
        connector_join(&c);
        close(fd);
    }
    assert_int_equal(c.st, SP_ERR_INVALID_PARAM);
    assert_true(contains(c.err, "does not prove the secret"));
    close(lfd);
}

/* A "driver" that answers the handshake with a 256 MiB frame is refused at its header. */
typedef struct huge_hello {
    int lfd, eof;
    pthread_t thread;
} huge_hello_t;

static void *huge_hello_main(void *arg)
{
    huge_hello_t *h = arg;
    struct pollfd pfd = {.fd = h->lfd, .events = POLLIN};
    unsigned char header[SP__CTL_HEADER_SIZE], byte[1];
    int fd;

    if (poll(&pfd, 1, T) != 1 || (fd = accept(h->lfd, NULL, NULL)) < 0)
        return NULL;
    sp__ctl_header_pack(header, SP__CTL_HELLO, SP__CTL_MAX_PAYLOAD);
    if (write_all(fd, header, sizeof(header)))
        h->eof = read_all(fd, byte, 1, T) == 0;
    close(fd);
    return NULL;
}

static void test_client_reads_only_small_frames_before_the_driver_proves_the_secret(void **state)
{
    sp__ctl_conn_t *c = NULL;
    huge_hello_t h = {.lfd = -1};
    char addr[128];

    (void)state;
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &h.lfd), SP_OK);
    assert_int_equal(pthread_create(&h.thread, NULL, huge_hello_main, &h), 0);
    assert_int_equal(sp__ctl_connect(addr, SECRET, SECRET_LEN, T, &c), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "announcing 268435456 payload bytes before the peer "
                                          "proved the secret"));
    assert_int_equal(pthread_join(h.thread, NULL), 0);
    assert_int_equal(h.eof, 1);
    close(h.lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_from_env_rules),
        cmocka_unit_test(test_wrong_secret_is_refused_on_both_sides),
        cmocka_unit_test(test_client_reads_only_small_frames_before_the_driver_proves_the_secret),
    };

    ctl_test_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
