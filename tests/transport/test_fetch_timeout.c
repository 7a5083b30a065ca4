/*
 * Timed-out fetches over the ofi backend (tcp;ofi_rxm between two processes).
 * A forked owner serves a region and a file (in 1 MiB chunks), and stops
 * progressing its transport (no progress thread, no polls) when told to, so
 * reads of it stall: tcp needs the target's progress. The reader's fetches
 * then time out after 1 ms, and
 * the provider, which cannot take back a read in flight, still holds their
 * destination. The reader must hear of the timeout at once (SP_ERR_TIMED_OUT
 * naming the peer, held set), must not get the destination back while the
 * read can still land in it (no release while the owner is stalled), and must
 * get it back (released) once the provider is done: in rma mode when the
 * owner serves the read at last, and the bytes really land then; in msg mode
 * when the cancelled receive comes back. Closing a transport whose timed-out
 * reads the provider still holds (the owner stalled, or killed) must neither
 * crash nor touch freed memory (run it under the ASan build too). A read
 * split across chunks is held and released once. An owner that deregisters
 * a served file while its answer to a timed-out read is still going out must
 * not pull the memory from under its provider (tcp sent from unmapped
 * memory, EFAULT, and the read never ended), and must close cleanly.
 */
/* LABELS: fabric */
#include <spate/transport.h>
#include "transport/transport_proc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pipe_util.h"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REGION (8u << 20)
#define READ   (1u << 20)
#define NREADS 4
/* A served file in chunks of 1 MiB; a read across chunks is split, and completes once. */
#define FILE_LEN (4u << 20)
#define PROVIDER "tcp;ofi_rxm"

static unsigned char pattern(size_t i) { return (unsigned char)((i * 13u + (i >> 10)) & 0xff); }

static sp_conf_t *conf_for(const char *mode, const char *timeout, bool thread)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.provider", PROVIDER), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.ofi_mode", mode), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", timeout), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.max_outstanding", "16"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.register_chunk", "1m"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.progress_thread", thread ? "true" : "false"),
                     SP_OK);
    return conf;
}

/*
 * The owner: serves REGION bytes, polling, until the parent writes 's'; then
 * it stalls (acknowledged with 'k'): nothing progresses its transport until
 * the parent writes 'g'. 'd' deregisters the served file (acknowledged with
 * 'k'). It ends when the parent closes the pipe, with status 0 unless
 * something failed.
 */
static void owner(const char *mode, int to_parent, int from_parent)
{
    sp_conf_t *conf = conf_for(mode, "30s", false);
    sp_transport_t *t = NULL;
    sp_mr_t *mr = NULL, *fmr = NULL;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], key[SP_TRANSPORT_RKEY_MAX];
    unsigned char fkey[SP_TRANSPORT_RKEY_MAX];
    size_t alen = 0, klen = 0, fklen = 0;
    unsigned char *region = malloc(REGION);
    char path[] = "/tmp/spate-test-fetch-timeout-XXXXXX";
    int fd = mkstemp(path);
    char c = 0;

    if (region == NULL || fd < 0 || sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    for (size_t i = 0; i < REGION; i++)
        region[i] = pattern(i);
    /* The file holds the region's first FILE_LEN bytes. */
    if (write(fd, region, FILE_LEN) != (ssize_t)FILE_LEN)
        _exit(3);
    if (sp_transport_mr_reg(t, region, REGION, true, &mr) != SP_OK ||
        sp_transport_mr_pack(mr, key, sizeof(key), &klen) != SP_OK ||
        sp_transport_mr_reg_file(t, fd, 0, FILE_LEN, &fmr) != SP_OK ||
        sp_transport_mr_pack(fmr, fkey, sizeof(fkey), &fklen) != SP_OK ||
        sp_transport_address(t, addr, sizeof(addr), &alen) != SP_OK)
        _exit(3);
    close(fd);
    unlink(path);
    write_all(to_parent, &alen, sizeof(alen));
    write_all(to_parent, addr, alen);
    write_all(to_parent, &klen, sizeof(klen));
    write_all(to_parent, key, klen);
    write_all(to_parent, &fklen, sizeof(fklen));
    write_all(to_parent, fkey, fklen);
    if (fcntl(from_parent, F_SETFL, O_NONBLOCK) != 0)
        _exit(4);
    for (;;) {
        struct timespec ts = {0, 100000};
        sp_transport_completion_t done;
        size_t n = 0;
        ssize_t got;

        (void)sp_transport_poll(t, &done, 1, 0, &n);
        got = read(from_parent, &c, 1);
        if (got == 0)
            break; /* the parent closed the pipe */
        if (got == 1 && c == 'd') {
            /* Stops serving the file while reads of it may be under way. */
            sp_transport_mr_dereg(fmr);
            fmr = NULL;
            write_all(to_parent, "k", 1);
        } else if (got == 1 && c == 's') {
            /* Stalled: nothing progresses this transport until 'g'. */
            write_all(to_parent, "k", 1);
            if (fcntl(from_parent, F_SETFL, 0) != 0 || read(from_parent, &c, 1) != 1)
                break;
            if (fcntl(from_parent, F_SETFL, O_NONBLOCK) != 0)
                _exit(4);
        }
        nanosleep(&ts, NULL);
    }
    sp_transport_mr_dereg(fmr); /* NULL after 'd' */
    sp_transport_mr_dereg(mr);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    free(region);
    _exit(0);
}

typedef struct reader {
    sp_transport_t *t;
    sp_mr_t *dest_mr;
    unsigned char *dest;
    uint32_t peer;
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
    size_t klen;
    unsigned char fkey[SP_TRANSPORT_RKEY_MAX]; /* the served file's (chunked) key */
    size_t fklen;
    pid_t owner;
    int to_owner, from_owner;
} reader_t;

static bool start_with(reader_t *r, const char *mode, bool thread)
{
    int up[2], down[2];
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    size_t alen = 0;
    sp_conf_t *conf;
    sp_status_t st;

    memset(r, 0, sizeof(*r));
    /* Fork before opening anything (a transport has a progress thread). */
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    r->owner = fork();
    assert_true(r->owner >= 0);
    if (r->owner == 0) {
        close(up[0]);
        close(down[1]);
        owner(mode, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    conf = conf_for(mode, "1ms", thread);
    st = sp_transport_open(conf, &r->t);
    sp_conf_destroy(conf);
    if (st == SP_ERR_UNSUPPORTED) {
        fprintf(stderr, "provider %s is not available here: %s\n", PROVIDER, sp_last_error());
        close(down[1]);
        close(up[0]);
        waitpid(r->owner, NULL, 0);
        return false;
    }
    assert_int_equal(st, SP_OK);
    r->to_owner = down[1];
    read_all(up[0], &alen, sizeof(alen));
    assert_true(alen <= sizeof(addr));
    read_all(up[0], addr, alen);
    read_all(up[0], &r->klen, sizeof(r->klen));
    assert_true(r->klen <= sizeof(r->key));
    read_all(up[0], r->key, r->klen);
    read_all(up[0], &r->fklen, sizeof(r->fklen));
    assert_true(r->fklen <= sizeof(r->fkey));
    read_all(up[0], r->fkey, r->fklen);
    r->from_owner = up[0];
    assert_int_equal(sp_transport_add_peer(r->t, addr, alen, &r->peer), SP_OK);
    r->dest = malloc((size_t)NREADS * READ);
    assert_non_null(r->dest);
    memset(r->dest, 0, (size_t)NREADS * READ);
    assert_int_equal(sp_transport_mr_reg(r->t, r->dest, (size_t)NREADS * READ, false, &r->dest_mr),
                     SP_OK);
    return true;
}

static bool start(reader_t *r, const char *mode) { return start_with(r, mode, true); }

/* Lets the owner serve again. */
static void resume_owner(reader_t *r) { write_all(r->to_owner, "g", 1); }

/*
 * Reads one byte until a read succeeds (the first ones may time out while
 * the connection is made), then stalls the owner: a read posted now is
 * posted for real, and cannot end until the owner resumes.
 */
static void connect_then_stall(reader_t *r)
{
    time_t t0 = time(NULL);
    bool ok = false;
    char k = 0;

    while (!ok) {
        sp_transport_completion_t c;
        size_t n = 0;
        sp_status_t st;

        if (time(NULL) - t0 > 60)
            fail_msg("no 1-byte read of peer %u succeeded within 60 s", r->peer);
        st = sp_transport_fetch(r->t, r->peer, r->key, r->klen, 0, 1, r->dest, r->dest_mr, NULL);
        if (st == SP_ERR_TIMED_OUT)
            continue; /* not posted: rxm is still connecting */
        assert_int_equal(st, SP_OK);
        do { /* until its final completion (a timed-out one is released later) */
            n = 0;
            while (n == 0)
                assert_int_equal(sp_transport_poll(r->t, &c, 1, 50, &n), SP_OK);
        } while (c.held);
        ok = c.status == SP_OK;
    }
    write_all(r->to_owner, "s", 1);
    read_all(r->from_owner, &k, 1);
    assert_int_equal(k, 'k');
}

static void post(reader_t *r, int i)
{
    assert_int_equal(sp_transport_fetch(r->t, r->peer, r->key, r->klen, (uint64_t)i * READ, READ,
                                        r->dest + (size_t)i * READ, r->dest_mr,
                                        (void *)(uintptr_t)(i + 1)),
                     SP_OK);
}

/* Polls up to wait_s seconds for one completion; false when none came. */
static bool poll_one(reader_t *r, int wait_s, sp_transport_completion_t *c)
{
    time_t t0 = time(NULL);
    size_t n = 0;

    while (n == 0 && time(NULL) - t0 < wait_s)
        assert_int_equal(sp_transport_poll(r->t, c, 1, 50, &n), SP_OK);
    return n == 1;
}

/* Each of count reads fails at once with SP_ERR_TIMED_OUT naming the peer, held. */
static void expect_held_timeouts(reader_t *r, int count, bool seen[NREADS])
{
    char peer[32];

    snprintf(peer, sizeof(peer), "peer %u", r->peer);
    for (int k = 0; k < count; k++) {
        sp_transport_completion_t c;
        uintptr_t i;

        assert_true(poll_one(r, 30, &c));
        i = (uintptr_t)c.context - 1;
        assert_true(i < NREADS && !seen[i]);
        seen[i] = true;
        assert_int_equal(c.status, SP_ERR_TIMED_OUT);
        assert_true(c.held);
        assert_false(c.released);
        assert_int_equal(c.peer, r->peer);
        assert_non_null(strstr(sp_last_error(), peer));
        assert_non_null(strstr(sp_last_error(), "did not complete"));
    }
}

static void stop(reader_t *r, bool close_first)
{
    int status = 0;

    if (close_first) {
        sp_transport_mr_dereg(r->dest_mr);
        sp_transport_close(r->t);
    }
    if (r->to_owner >= 0)
        close(r->to_owner);
    close(r->from_owner);
    if (r->owner > 0) {
        assert_int_equal(waitpid(r->owner, &status, 0), r->owner);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("the owner ended with %s %d", WIFSIGNALED(status) ? "signal" : "exit",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    if (!close_first) {
        sp_transport_mr_dereg(r->dest_mr);
        sp_transport_close(r->t);
    }
    free(r->dest);
}

/*
 * rma: the read stays with the provider after its timeout; it is released
 * only after the owner served it, and its bytes are in the destination then.
 */
static void test_fetch_timeout_rma_keeps_buffer_until_read_lands(void **state)
{
    bool seen[NREADS] = {false};
    sp_transport_completion_t c;
    sp_transport_stats_t before, after;
    reader_t r;

    (void)state;
    if (!start(&r, "rma"))
        skip();
    connect_then_stall(&r);
    sp_transport_stats(r.t, &before);
    post(&r, 0);
    expect_held_timeouts(&r, 1, seen);
    /* The owner is stalled: the read cannot end, and the buffer is not given back. */
    assert_false(poll_one(&r, 1, &c));
    sp_transport_stats(r.t, &after);
    assert_int_equal(after.fetches_failed, before.fetches_failed + 1);
    resume_owner(&r);
    assert_true(poll_one(&r, 30, &c));
    assert_ptr_equal(c.context, (void *)(uintptr_t)1);
    assert_true(c.released);
    assert_false(c.held);
    /* The read really landed after its timeout: freeing the buffer then would have been
     * a write into freed memory. */
    for (size_t i = 0; i < READ; i++) {
        if (r.dest[i] != pattern(i))
            fail_msg("byte %zu of the timed-out read is %u, not %u: it did not land", i, r.dest[i],
                     pattern(i));
    }
    stop(&r, false);
}

/*
 * A read across three chunks of a served file is split in three reads; they
 * time out as one held failure, and are released as one once the last part
 * has landed.
 */
static void test_fetch_timeout_split_read_released_once(void **state)
{
    static const uint64_t offset = (512u << 10) + 3;
    static const size_t len = (2u << 20) + 5;
    bool seen[NREADS] = {false};
    sp_transport_completion_t c;
    reader_t r;

    (void)state;
    if (!start(&r, "rma"))
        skip();
    connect_then_stall(&r);
    assert_int_equal(sp_transport_fetch(r.t, r.peer, r.fkey, r.fklen, offset, len, r.dest,
                                        r.dest_mr, (void *)(uintptr_t)1),
                     SP_OK);
    expect_held_timeouts(&r, 1, seen);
    assert_false(poll_one(&r, 1, &c));
    resume_owner(&r);
    assert_true(poll_one(&r, 30, &c));
    assert_ptr_equal(c.context, (void *)(uintptr_t)1);
    assert_true(c.released);
    for (size_t i = 0; i < len; i++) {
        if (r.dest[i] != pattern(offset + i))
            fail_msg("byte %zu of the timed-out split read is %u, not %u", i, r.dest[i],
                     pattern(offset + i));
    }
    /* One completion each, no more: the parts' slots are all free again. */
    assert_false(poll_one(&r, 1, &c));
    for (int i = 0; i < 16; i++)
        assert_int_equal(
            sp_transport_fetch(r.t, r.peer, r.key, r.klen, 0, 1, r.dest + i, r.dest_mr, NULL),
            SP_OK);
    assert_int_equal(
        sp_transport_fetch(r.t, r.peer, r.key, r.klen, 0, 1, r.dest + 16, r.dest_mr, NULL),
        SP_ERR_BUSY);
    stop(&r, false);
}

/*
 * The owner deregisters a served file while its answer to a timed-out read
 * is still going out (the reader does not progress, so the answer backs up in
 * the owner's socket): the provider goes on sending from the chunk's
 * addresses, which must stay mapped. Neither side may crash, the read is
 * released, and the owner closes cleanly.
 */
static void test_fetch_timeout_owner_deregisters_while_serving(void **state)
{
    bool seen[NREADS] = {false};
    sp_transport_completion_t c;
    struct timespec pause = {0, 300000000};
    bool released = false;
    char k = 0;
    reader_t r;

    (void)state;
    if (!start_with(&r, "rma", false))
        skip();
    /* Connected, with the owner serving; then the whole file in one read. */
    connect_then_stall(&r);
    resume_owner(&r);
    assert_int_equal(sp_transport_fetch(r.t, r.peer, r.fkey, r.fklen, 0, FILE_LEN, r.dest,
                                        r.dest_mr, (void *)(uintptr_t)1),
                     SP_OK);
    nanosleep(&pause, NULL); /* no progress here: the answer backs up */
    write_all(r.to_owner, "d", 1);
    read_all(r.from_owner, &k, 1);
    assert_int_equal(k, 'k');
    expect_held_timeouts(&r, 1, seen);
    while (!released && poll_one(&r, 30, &c))
        released = c.released;
    assert_true(released);
    stop(&r, false);
}

/* msg: the timed-out reply receive is cancelled, and released once it is back. */
static void test_fetch_timeout_msg_cancels_receive(void **state)
{
    bool seen[NREADS] = {false};
    sp_transport_completion_t c;
    reader_t r;

    (void)state;
    if (!start(&r, "msg"))
        skip();
    connect_then_stall(&r);
    post(&r, 0);
    expect_held_timeouts(&r, 1, seen);
    assert_true(poll_one(&r, 30, &c));
    assert_ptr_equal(c.context, (void *)(uintptr_t)1);
    assert_true(c.released);
    assert_int_equal(c.status, SP_ERR_CANCELED);
    stop(&r, false);
}

/*
 * Timed-out reads the provider still holds when the transport closes (the
 * owner stalls throughout): close cancels and drains what it can, leaves
 * the rest to the provider, and does not crash; the destination is freed
 * after close.
 */
static void test_fetch_timeout_close_with_reads_held(void **state)
{
    bool seen[NREADS] = {false};
    reader_t r;

    (void)state;
    if (!start(&r, "rma"))
        skip();
    connect_then_stall(&r);
    for (int i = 0; i < NREADS; i++)
        post(&r, i);
    expect_held_timeouts(&r, NREADS, seen);
    stop(&r, true); /* the owner is still stalled while the reader closes */
}

/* The owner dies with the reads held: their connection fails, they come back, close is clean. */
static void test_fetch_timeout_owner_killed(void **state)
{
    bool seen[NREADS] = {false};
    int released = 0;
    reader_t r;

    (void)state;
    if (!start(&r, "rma"))
        skip();
    connect_then_stall(&r);
    for (int i = 0; i < NREADS; i++)
        post(&r, i);
    expect_held_timeouts(&r, NREADS, seen);
    kill(r.owner, SIGKILL);
    waitpid(r.owner, NULL, 0);
    sp__transport_clear_dead_process((long)r.owner); /* its shm regions */
    r.owner = -1;
    /* Whatever comes now is a release: each read ended exactly once before. */
    for (;;) {
        sp_transport_completion_t c;
        if (!poll_one(&r, 5, &c))
            break;
        assert_true(c.released);
        released++;
    }
    assert_true(released <= NREADS);
    stop(&r, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_timeout_rma_keeps_buffer_until_read_lands),
        cmocka_unit_test(test_fetch_timeout_split_read_released_once),
        cmocka_unit_test(test_fetch_timeout_owner_deregisters_while_serving),
        cmocka_unit_test(test_fetch_timeout_msg_cancels_receive),
        cmocka_unit_test(test_fetch_timeout_close_with_reads_held),
        cmocka_unit_test(test_fetch_timeout_owner_killed),
    };

    /* Loopback only, always. */
    setenv("FI_TCP_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
