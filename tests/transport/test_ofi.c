/*
 * The ofi backend between two processes on this machine, over the tcp;ofi_rxm
 * and shm providers: a forked server registers a region for remote reads and
 * keeps progressing; the client fetches blocks of every size at every kind of
 * offset and checks the bytes, checks that bad requests are refused before
 * anything is posted, and then kills the server (SIGKILL) and expects its
 * fetches to fail (transport.timeout ends them), never to hang.
 */
/* LABELS: fabric */
#include <spate/transport.h>
#include "transport/transport_proc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pipe_util.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION (16u << 20)

static unsigned char pattern(size_t i) { return (unsigned char)((i * 7u + (i >> 12)) & 0xff); }

static sp_conf_t *conf_for(const char *provider, const char *timeout)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.provider", provider), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", timeout), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.max_outstanding", "16"), SP_OK);
    return conf;
}

/* The server: serve REGION bytes until the parent closes the pipe. */
static void serve(const char *provider, int to_parent, int from_parent)
{
    sp_conf_t *conf = conf_for(provider, "30s");
    sp_transport_t *t = NULL;
    sp_mr_t *mr = NULL;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], key[SP_TRANSPORT_RKEY_MAX];
    size_t alen = 0, klen = 0;
    unsigned char *region = malloc(REGION);
    char c;

    if (region == NULL || sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    for (size_t i = 0; i < REGION; i++)
        region[i] = pattern(i);
    if (sp_transport_mr_reg(t, region, REGION, true, &mr) != SP_OK ||
        sp_transport_mr_pack(mr, key, sizeof(key), &klen) != SP_OK ||
        sp_transport_address(t, addr, sizeof(addr), &alen) != SP_OK)
        _exit(3);
    write_all(to_parent, &alen, sizeof(alen));
    write_all(to_parent, addr, alen);
    write_all(to_parent, &klen, sizeof(klen));
    write_all(to_parent, key, klen);
    /* No polling here: the transport's progress thread serves the reads
     * (tcp needs the target's progress) until the parent closes the pipe. */
    while (read(from_parent, &c, 1) > 0)
        ;
    sp_transport_mr_dereg(mr);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    free(region);
    _exit(0);
}

typedef struct client {
    sp_transport_t *t;
    sp_mr_t *dest_mr;
    unsigned char *dest;
    uint32_t peer;
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
    size_t klen;
    pid_t server;
    int to_server;
} client_t;

static bool start(client_t *c, const char *provider, const char *timeout)
{
    int up[2], down[2];
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    size_t alen = 0;
    sp_conf_t *conf = conf_for(provider, timeout);
    sp_status_t st;

    memset(c, 0, sizeof(*c));
    /* Fork before opening anything: a transport has a progress thread, and
     * a child forked from a threaded process may inherit a held lock. */
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    c->server = fork();
    assert_true(c->server >= 0);
    if (c->server == 0) {
        close(up[0]);
        close(down[1]);
        serve(provider, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    st = sp_transport_open(conf, &c->t);
    sp_conf_destroy(conf);
    if (st == SP_ERR_UNSUPPORTED) {
        fprintf(stderr, "provider %s is not available here: %s\n", provider, sp_last_error());
        close(down[1]);
        close(up[0]);
        waitpid(c->server, NULL, 0);
        return false;
    }
    assert_int_equal(st, SP_OK);
    c->to_server = down[1];
    read_all(up[0], &alen, sizeof(alen));
    assert_true(alen <= sizeof(addr));
    read_all(up[0], addr, alen);
    read_all(up[0], &c->klen, sizeof(c->klen));
    assert_true(c->klen <= sizeof(c->key));
    read_all(up[0], c->key, c->klen);
    close(up[0]);
    assert_int_equal(sp_transport_add_peer(c->t, addr, alen, &c->peer), SP_OK);
    c->dest = malloc(REGION);
    assert_non_null(c->dest);
    assert_int_equal(sp_transport_mr_reg(c->t, c->dest, REGION, false, &c->dest_mr), SP_OK);
    return true;
}

static void stop(client_t *c)
{
    int status = 0;

    if (c->to_server >= 0)
        close(c->to_server);
    waitpid(c->server, &status, 0);
    sp_transport_mr_dereg(c->dest_mr);
    sp_transport_close(c->t);
    free(c->dest);
}

/* Waits for count completions, all successful. */
static void drain(client_t *c, size_t count)
{
    size_t got = 0;

    while (got < count) {
        sp_transport_completion_t done[16];
        size_t n = 0;
        assert_int_equal(sp_transport_poll(c->t, done, 16, 100, &n), SP_OK);
        for (size_t i = 0; i < n; i++) {
            if (done[i].status != SP_OK)
                fail_msg("fetch failed: %s (raw %d)", sp_status_str(done[i].status), done[i].raw);
        }
        got += n;
    }
}

static void fetch_and_check(client_t *c, uint64_t offset, size_t len)
{
    memset(c->dest, 0, len);
    assert_int_equal(
        sp_transport_fetch(c->t, c->peer, c->key, c->klen, offset, len, c->dest, c->dest_mr, NULL),
        SP_OK);
    drain(c, 1);
    for (size_t i = 0; i < len; i++) {
        if (c->dest[i] != pattern(offset + i))
            fail_msg("byte %zu of a %zu-byte fetch at %llu is wrong", i, len,
                     (unsigned long long)offset);
    }
}

static void run_provider(const char *provider)
{
    static const size_t sizes[] = {1, 1000, 1024, 64 << 10, 1 << 20, 8 << 20};
    client_t c;
    sp_transport_stats_t s;

    if (!start(&c, provider, "3s"))
        skip();
    assert_string_not_equal(sp_transport_provider(c.t), "");
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        fetch_and_check(&c, 0, sizes[i]);
        fetch_and_check(&c, 12345, sizes[i]);
        fetch_and_check(&c, REGION - sizes[i], sizes[i]); /* the region's last bytes */
    }
    /* Many small blocks, more than may be outstanding: BUSY is back-pressure. */
    {
        size_t posted = 0, completed = 0;
        while (completed < 1000) {
            sp_transport_completion_t done[16];
            size_t n = 0;
            while (posted < 1000) {
                sp_status_t st = sp_transport_fetch(c.t, c.peer, c.key, c.klen, posted * 1024, 1024,
                                                    c.dest + posted * 1024, c.dest_mr, NULL);
                if (st == SP_ERR_BUSY)
                    break;
                assert_int_equal(st, SP_OK);
                posted++;
            }
            assert_int_equal(sp_transport_poll(c.t, done, 16, 100, &n), SP_OK);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(done[i].status, SP_OK);
            completed += n;
        }
        for (size_t i = 0; i < 1000 * 1024; i++)
            assert_int_equal(c.dest[i], pattern(i));
    }
    /* Bad requests are refused before anything is posted. */
    assert_int_equal(
        sp_transport_fetch(c.t, c.peer, c.key, c.klen, REGION - 10, 11, c.dest, c.dest_mr, NULL),
        SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "past the end"));
    assert_int_equal(
        sp_transport_fetch(c.t, c.peer + 7, c.key, c.klen, 0, 10, c.dest, c.dest_mr, NULL),
        SP_ERR_INVALID_PARAM);
    {
        unsigned char bad[SP_TRANSPORT_RKEY_MAX];
        memcpy(bad, c.key, c.klen);
        bad[0] ^= 1;
        assert_int_equal(
            sp_transport_fetch(c.t, c.peer, bad, c.klen, 0, 10, c.dest, c.dest_mr, NULL),
            SP_ERR_BAD_FORMAT);
        assert_int_equal(
            sp_transport_fetch(c.t, c.peer, c.key, c.klen - 1, 0, 10, c.dest, c.dest_mr, NULL),
            SP_ERR_BAD_FORMAT);
    }
    assert_int_equal(
        sp_transport_fetch(c.t, c.peer, c.key, c.klen, 0, 10, c.dest + REGION - 5, c.dest_mr, NULL),
        SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_transport_add_peer(c.t, "xyz", 3, &(uint32_t){0}), SP_ERR_BAD_FORMAT);
    sp_transport_stats(c.t, &s);
    assert_true(s.fetches_completed >= 1018);
    assert_int_equal(s.fetches_failed, 0);

    /*
     * The server dies: fetches fail, naming the peer, instead of hanging. The
     * 60 s deadline only guards against a hang; how soon after the transport
     * timeout the failure comes is not asserted.
     */
    kill(c.server, SIGKILL);
    waitpid(c.server, NULL, 0);
    sp__transport_clear_dead_process((long)c.server); /* its shm regions */
    close(c.to_server);
    c.to_server = -1;
    {
        time_t t0 = time(NULL);
        bool failed = false;
        for (int round = 0; round < 20 && !failed; round++) {
            sp_transport_completion_t done[4];
            size_t n = 0;
            sp_status_t st =
                sp_transport_fetch(c.t, c.peer, c.key, c.klen, 0, 1 << 20, c.dest, c.dest_mr, NULL);
            if (st != SP_OK) {
                failed = true; /* refused at once: also a failure, not a hang */
                break;
            }
            while (n == 0 && time(NULL) - t0 < 60)
                assert_int_equal(sp_transport_poll(c.t, done, 4, 100, &n), SP_OK);
            if (n == 0)
                fail_msg("%s: a fetch from the dead server did not complete within 60 s", provider);
            failed = done[0].status != SP_OK;
        }
        if (!failed)
            fail_msg("%s: 20 fetches from the dead server all succeeded", provider);
        assert_non_null(strstr(sp_last_error(), "peer 0"));
    }
    stop(&c);
}

static void test_ofi_tcp_rxm_fetches(void **state)
{
    (void)state;
    run_provider("tcp;ofi_rxm");
}

static void test_ofi_shm_fetches(void **state)
{
    (void)state;
    run_provider("shm");
}

static void test_ofi_unknown_provider_is_named(void **state)
{
    sp_conf_t *conf = conf_for("no-such-provider", "1s");
    sp_transport_t *t = NULL;

    (void)state;
    assert_int_equal(sp_transport_open(conf, &t), SP_ERR_UNSUPPORTED);
    assert_non_null(strstr(sp_last_error(), "no-such-provider"));
    sp_conf_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ofi_tcp_rxm_fetches),
        cmocka_unit_test(test_ofi_shm_fetches),
        cmocka_unit_test(test_ofi_unknown_provider_is_named),
    };

    /* Loopback only, always. */
    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
