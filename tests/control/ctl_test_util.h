/*
 * Helpers shared by the control plane's unit tests (tests/control/test_codec.c,
 * test_frame.c, test_auth.c, test_hub.c): the secrets and the generous wait
 * they all use, a clock in milliseconds, a phrase check that prints what it
 * missed, little-endian put/get for frames written raw, blocking-with-a-
 * deadline raw socket I/O for peers that bypass the channel, sp__ctl_connect
 * on a thread of its own (so one thread can be client and server), a
 * handshaken TCP pair, a hub with a listener and a client joining it, text
 * messages sent and expected on a conn or from the hub, and the setup every
 * test program's main runs.
 *
 * A helper lives here only when more than one of those programs calls it; the
 * rest stay beside their tests. The helpers that check something fail the
 * calling cmocka test themselves; the raw I/O ones, which also run on threads
 * and in forked children, return what happened instead. Include this header
 * in place of <cmocka.h> and its prerequisites.
 */
#ifndef SPATE_TEST_CTL_TEST_UTIL_H
#define SPATE_TEST_CTL_TEST_UTIL_H

#include "common_int.h"
#include "control/ctl.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SECRET     "spate-test-secret-0123456789abcdef"
#define SECRET_LEN (sizeof(SECRET) - 1)
#define WRONG      "not-the-secret-0123456789abcdef"
/* Generous wait for anything that should succeed (ms). */
#define T 10000

static inline uint64_t now_ms(void) { return sp__now_ns() / 1000000u; }

static inline bool contains(const char *text, const char *phrase)
{
    if (strstr(text, phrase) != NULL)
        return true;
    fprintf(stderr, "expected \"%s\" in \"%s\"\n", phrase, text);
    return false;
}

static inline void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Writes all of buf to a (possibly non-blocking) socket; false on error. */
static inline bool write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};

            if (poll(&pfd, 1, T) <= 0)
                return false;
            continue;
        }
        return false;
    }
    return true;
}

/*
 * Reads exactly len bytes within timeout_ms; 1 when done, 0 on EOF before
 * any byte was read, -1 otherwise (error, timeout, EOF after some bytes).
 */
static inline int read_all(int fd, void *buf, size_t len, int timeout_ms)
{
    unsigned char *p = buf;
    size_t got = 0;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

    while (got < len) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint64_t now = now_ms();
        ssize_t n;

        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return -1;
        n = recv(fd, p + got, len - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            return got == 0 ? 0 : -1;
        else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            return errno == ECONNRESET && got == 0 ? 0 : -1;
    }
    return 1;
}

/* sp__ctl_connect on a thread of its own, while this one serves. */
typedef struct connector {
    char addr[128];
    const char *secret;
    int timeout_ms;
    pthread_t thread;
    atomic_bool done;
    sp_status_t st;
    char err[1100];
    sp__ctl_conn_t *conn;
} connector_t;

static inline void *connector_main(void *arg)
{
    connector_t *c = arg;

    c->st = sp__ctl_connect(c->addr, c->secret, strlen(c->secret), c->timeout_ms, &c->conn);
    if (c->st != SP_OK)
        snprintf(c->err, sizeof(c->err), "%s", sp_last_error());
    atomic_store(&c->done, true);
    return NULL;
}

static inline void connector_start(connector_t *c, const char *addr, const char *secret,
                                   int timeout_ms)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->secret = secret;
    c->timeout_ms = timeout_ms;
    atomic_init(&c->done, false);
    assert_int_equal(pthread_create(&c->thread, NULL, connector_main, c), 0);
}

static inline void connector_join(connector_t *c)
{
    assert_int_equal(pthread_join(c->thread, NULL), 0);
}

/* A handshaken TCP connection on 127.0.0.1 through sp__ctl_listen/accept/connect. */
static inline void tcp_pair(sp__ctl_conn_t **server_p, sp__ctl_conn_t **client_p)
{
    char addr[128];
    connector_t c;
    int lfd = -1;
    sp_status_t st;

    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd), SP_OK);
    connector_start(&c, addr, SECRET, T);
    st = sp__ctl_accept(lfd, SECRET, SECRET_LEN, T, server_p);
    connector_join(&c);
    close(lfd);
    assert_int_equal(st, SP_OK);
    assert_int_equal(c.st, SP_OK);
    assert_true(contains(sp__ctl_peer_name(*server_p), "127.0.0.1:"));
    assert_string_equal(sp__ctl_peer_name(c.conn), addr);
    *client_p = c.conn;
}

/* A client that joins the hub through its listener, added under id. */
static inline sp__ctl_conn_t *hub_join(sp__ctl_hub_t *hub, const char *addr, uint32_t id,
                                       const char *name)
{
    sp__ctl_conn_t *server = NULL;
    connector_t c;
    uint32_t got = 0;
    uint16_t type = 1;
    void *payload = &got;
    size_t len = 1;
    sp_status_t st;

    connector_start(&c, addr, SECRET, T);
    st = sp__ctl_hub_wait(hub, T, &got, &type, &payload, &len);
    connector_join(&c);
    assert_int_equal(st, SP_OK);
    assert_int_equal(got, SP__CTL_HUB_NEW);
    assert_int_equal(type, 0);
    assert_null(payload);
    assert_int_equal(len, 0);
    assert_int_equal(c.st, SP_OK);
    assert_int_equal(sp__ctl_hub_accept(hub, &server), SP_OK);
    sp__ctl_set_peer_name(server, name);
    assert_int_equal(sp__ctl_hub_add(hub, server, id), SP_OK);
    return c.conn;
}

static inline void hub_listen(sp__ctl_hub_t **hub_p, int *lfd_p, char *addr, size_t cap, int hs_ms)
{
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, cap, lfd_p), SP_OK);
    assert_int_equal(sp__ctl_hub_create(hub_p), SP_OK);
    assert_int_equal(sp__ctl_hub_set_listener(*hub_p, *lfd_p, SECRET, SECRET_LEN, hs_ms), SP_OK);
}

/* Sends a small message whose payload is text. */
static inline void send_text(sp__ctl_conn_t *c, uint16_t type, const char *text)
{
    assert_int_equal(sp__ctl_send(c, type, text, strlen(text)), SP_OK);
}

/* Receives a message and checks it is text. */
static inline void expect_text(sp__ctl_conn_t *c, uint16_t type, const char *text)
{
    uint16_t t = 0;
    void *p = NULL;
    size_t len = 0;

    assert_int_equal(sp__ctl_recv(c, T, &t, &p, &len), SP_OK);
    assert_int_equal(t, type);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(p, text, len);
    free(p);
}

/* The hub's next event must be text from id. */
static inline void expect_hub_text(sp__ctl_hub_t *hub, uint32_t id, uint16_t type, const char *text)
{
    uint32_t got = 0;
    uint16_t t = 0;
    void *p = NULL;
    size_t len = 0;

    assert_int_equal(sp__ctl_hub_wait(hub, T, &got, &t, &p, &len), SP_OK);
    assert_int_equal(got, id);
    assert_int_equal(t, type);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(p, text, len);
    free(p);
}

/*
 * What every test program's main does first: errors only in the log (the
 * tests provoke many on purpose), and CTL_TEST_FILTER=<pattern> runs only the
 * tests whose names match.
 */
static inline void ctl_test_init(void)
{
    sp_log_set_level(SP_LOG_ERROR);
    if (getenv("CTL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("CTL_TEST_FILTER"));
}

#endif
