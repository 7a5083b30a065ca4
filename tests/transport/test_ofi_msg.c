/*
 * The ofi backend's request/response mode (transport.ofi_mode=msg) between
 * three forked processes, over tcp;ofi_rxm and shm: every process serves a
 * region and a file (the file in chunks, so reads straddle them), every
 * process reads from every other at every kind of offset and checks the
 * bytes, and many small reads run past max_outstanding (back-pressure).
 * Requests the owner must refuse (a region id it does not serve, a read past
 * the end of its region with a key whose length was raised) come back as
 * failed fetches, never as data. Then one process is killed (SIGKILL) and a
 * read from it fails (transport.timeout ends it), naming the peer. The parent
 * only relays addresses and keys over pipes; it opens no transport, so the
 * forks happen before any thread exists.
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
#include <unistd.h>

#define NPROC    3
#define REGION   (4u << 20)
#define FILE_LEN (1u << 20) /* served in chunks of 256 KiB */

/* A failed check in a child: say what, and exit with the line. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "process %d: check failed at line %d: %s (%s)\n", me, __LINE__, #cond, \
                    sp_last_error());                                                              \
            _exit(10);                                                                             \
        }                                                                                          \
    } while (0)

static int me;
static bool msg_mode; /* transport.ofi_mode=msg: refusals come from the owner */

static unsigned char pattern(int owner, size_t i)
{
    return (unsigned char)((i * 7u + (i >> 12) + (unsigned)owner * 31u) & 0xff);
}

static unsigned char file_pattern(int owner, size_t i)
{
    return (unsigned char)((i * 13u + (i >> 10) + (unsigned)owner * 5u + 1u) & 0xff);
}

typedef struct blob {
    size_t len;
    unsigned char bytes[SP_TRANSPORT_RKEY_MAX];
} blob_t;

/* What each process publishes: its address, and the keys of its region and file. */
typedef struct card {
    blob_t addr, key, fkey;
} card_t;

/* In a child: reads exactly len bytes; false when the parent is gone. */
static bool read_whole(int fd, void *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0)
            return false;
        buf = (char *)buf + n;
        len -= (size_t)n;
    }
    return true;
}

typedef struct proc {
    sp_transport_t *t;
    sp_mr_t *dest_mr;
    unsigned char *dest;
    uint32_t peer[NPROC];
    card_t cards[NPROC];
} proc_t;

/* Waits for one completion and returns its status. */
static sp_status_t wait_one(proc_t *p)
{
    sp_transport_completion_t done;
    size_t n = 0;

    while (n == 0)
        CHECK(sp_transport_poll(p->t, &done, 1, 100, &n) == SP_OK);
    return done.status;
}

static void read_check(proc_t *p, int owner, bool file, uint64_t offset, size_t len)
{
    const blob_t *k = file ? &p->cards[owner].fkey : &p->cards[owner].key;

    memset(p->dest, 0, len);
    CHECK(sp_transport_fetch(p->t, p->peer[owner], k->bytes, k->len, offset, len, p->dest,
                             p->dest_mr, NULL) == SP_OK);
    CHECK(wait_one(p) == SP_OK);
    for (size_t i = 0; i < len; i++) {
        unsigned char want = file ? file_pattern(owner, offset + i) : pattern(owner, offset + i);
        if (p->dest[i] != want) {
            fprintf(stderr, "process %d: byte %zu of %zu at %llu of %d's %s is wrong\n", me, i, len,
                    (unsigned long long)offset, owner, file ? "file" : "region");
            _exit(11);
        }
    }
}

/* A key of owner's region whose recorded length or region id is changed. */
static void forged_key(const proc_t *p, int owner, int field, uint64_t value, blob_t *k_p)
{
    *k_p = p->cards[owner].key;
    for (int i = 0; i < 8; i++)
        k_p->bytes[8 + 8 * field + i] = (unsigned char)(value >> (8 * i));
}

static void reads_from(proc_t *p, int owner)
{
    static const size_t sizes[] = {1, 1000, 4096, 64 << 10, 1 << 20};
    blob_t k;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        read_check(p, owner, false, 0, sizes[i]);
        read_check(p, owner, false, 12345, sizes[i]);
        read_check(p, owner, false, REGION - sizes[i], sizes[i]);
    }
    read_check(p, owner, false, 0, REGION);
    /* Across the file's chunks (256 KiB): one request per chunk, one completion. */
    read_check(p, owner, true, 0, FILE_LEN);
    read_check(p, owner, true, (256 << 10) - 100, 1000);
    read_check(p, owner, true, 3, (512 << 10) + 7);
    /* Many small reads, more than may be outstanding: BUSY is back-pressure. */
    {
        size_t posted = 0, completed = 0;
        while (completed < 500) {
            sp_transport_completion_t done[16];
            size_t n = 0;
            while (posted < 500) {
                sp_status_t st = sp_transport_fetch(p->t, p->peer[owner], p->cards[owner].key.bytes,
                                                    p->cards[owner].key.len, posted * 1024, 1024,
                                                    p->dest + posted * 1024, p->dest_mr, NULL);
                if (st == SP_ERR_BUSY)
                    break;
                CHECK(st == SP_OK);
                posted++;
            }
            CHECK(sp_transport_poll(p->t, done, 16, 100, &n) == SP_OK);
            for (size_t i = 0; i < n; i++)
                CHECK(done[i].status == SP_OK);
            completed += n;
        }
        for (size_t i = 0; i < 500 * 1024; i++)
            CHECK(p->dest[i] == pattern(owner, i));
    }
    /* Past the end of the key: refused before anything is sent. */
    CHECK(sp_transport_fetch(p->t, p->peer[owner], p->cards[owner].key.bytes,
                             p->cards[owner].key.len, REGION - 10, 11, p->dest, p->dest_mr,
                             NULL) == SP_ERR_INVALID_PARAM);
    if (!msg_mode)
        return;
    /* A key claiming more than the region: the owner refuses, no data comes. */
    forged_key(p, owner, 2, 2 * (uint64_t)REGION, &k);
    memset(p->dest, 0xee, 64);
    CHECK(sp_transport_fetch(p->t, p->peer[owner], k.bytes, k.len, REGION - 10, 64, p->dest,
                             p->dest_mr, NULL) == SP_OK);
    CHECK(wait_one(p) == SP_ERR_FETCH_FAILED);
    CHECK(strstr(sp_last_error(), "refused") != NULL);
    for (int i = 0; i < 64; i++)
        CHECK(p->dest[i] == 0xee);
    /* A region id the owner does not serve. */
    forged_key(p, owner, 0, 999999, &k);
    CHECK(sp_transport_fetch(p->t, p->peer[owner], k.bytes, k.len, 0, 64, p->dest, p->dest_mr,
                             NULL) == SP_OK);
    CHECK(wait_one(p) == SP_ERR_FETCH_FAILED);
    CHECK(strstr(sp_last_error(), "refused") != NULL);
    /* A wrong base address for the right id. */
    forged_key(p, owner, 1, 4096, &k);
    CHECK(sp_transport_fetch(p->t, p->peer[owner], k.bytes, k.len, 0, 64, p->dest, p->dest_mr,
                             NULL) == SP_OK);
    CHECK(wait_one(p) == SP_ERR_FETCH_FAILED);
}

static sp_conf_t *conf_for(const char *provider, const char *mode)
{
    sp_conf_t *conf = NULL;

    if (sp_conf_create(&conf) != SP_OK ||
        sp_conf_set(conf, "transport.provider", provider) != SP_OK ||
        sp_conf_set(conf, "transport.ofi_mode", mode) != SP_OK ||
        sp_conf_set(conf, "transport.timeout", "3s") != SP_OK ||
        sp_conf_set(conf, "transport.max_outstanding", "16") != SP_OK ||
        sp_conf_set(conf, "transport.register_chunk", "256k") != SP_OK)
        _exit(2);
    return conf;
}

/*
 * One process: serve, publish its card, take everyone's, read from every
 * other, report 'o'; then wait for the parent's word: 'q' to quit, or 'k'
 * to read from process 0 (killed by then) and report 'f' when that failed in
 * time.
 */
static void child(const char *provider, const char *mode, int to_parent, int from_parent)
{
    sp_conf_t *conf = conf_for(provider, mode);
    proc_t p;
    sp_mr_t *mr = NULL, *fmr = NULL;
    unsigned char *region = malloc(REGION);
    char path[64], c = 0;
    int fd;

    memset(&p, 0, sizeof(p));
    p.dest = malloc(REGION);
    CHECK(region != NULL && p.dest != NULL);
    CHECK(sp_transport_open(conf, &p.t) == SP_OK);
    for (size_t i = 0; i < REGION; i++)
        region[i] = pattern(me, i);
    snprintf(path, sizeof(path), "/tmp/spate-ofi-msg-%ld-%d", (long)getppid(), me);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    unlink(path);
    for (size_t i = 0; i < FILE_LEN; i++)
        p.dest[i] = file_pattern(me, i);
    write_all(fd, p.dest, FILE_LEN);
    CHECK(sp_transport_mr_reg(p.t, region, REGION, true, &mr) == SP_OK);
    CHECK(sp_transport_mr_reg_file(p.t, fd, 0, FILE_LEN, &fmr) == SP_OK);
    close(fd);
    CHECK(sp_transport_mr_reg(p.t, p.dest, REGION, false, &p.dest_mr) == SP_OK);
    {
        card_t mine;
        mine.addr.len = mine.key.len = mine.fkey.len = 0;
        CHECK(sp_transport_address(p.t, mine.addr.bytes, sizeof(mine.addr.bytes), &mine.addr.len) ==
              SP_OK);
        CHECK(sp_transport_mr_pack(mr, mine.key.bytes, sizeof(mine.key.bytes), &mine.key.len) ==
              SP_OK);
        CHECK(sp_transport_mr_pack(fmr, mine.fkey.bytes, sizeof(mine.fkey.bytes), &mine.fkey.len) ==
              SP_OK);
        write_all(to_parent, &mine, sizeof(mine));
    }
    CHECK(read_whole(from_parent, p.cards, sizeof(p.cards)));
    for (int o = 0; o < NPROC; o++) {
        if (o != me)
            CHECK(sp_transport_add_peer(p.t, p.cards[o].addr.bytes, p.cards[o].addr.len,
                                        &p.peer[o]) == SP_OK);
    }
    for (int k = 1; k < NPROC; k++)
        reads_from(&p, (me + k) % NPROC);
    {
        sp_transport_stats_t s;
        sp_transport_stats(p.t, &s);
        /* The others read from us by request: we answered at least their good reads. */
        CHECK(s.fetches_failed == (msg_mode ? (uint64_t)(NPROC - 1) * 3 : 0));
    }
    write_all(to_parent, "o", 1);
    /* Keep serving (the progress thread answers) until the parent says what next. */
    CHECK(read_whole(from_parent, &c, 1));
    {
        /* Everyone has read from us by now, by request in msg mode. */
        sp_transport_stats_t s;
        sp_transport_stats(p.t, &s);
        CHECK(msg_mode ? s.requests_served >= (uint64_t)(NPROC - 1) * 500 : s.requests_served == 0);
    }
    if (c == 'k') {
        /* It fails (transport.timeout ends it); how soon is not asserted. */
        sp_status_t st;
        st = sp_transport_fetch(p.t, p.peer[0], p.cards[0].key.bytes, p.cards[0].key.len, 0,
                                1 << 20, p.dest, p.dest_mr, NULL);
        if (st == SP_OK)
            st = wait_one(&p);
        CHECK(st != SP_OK);
        CHECK(strstr(sp_last_error(), "peer 0") != NULL);
        write_all(to_parent, "f", 1);
        CHECK(read_whole(from_parent, &c, 1));
    }
    sp_transport_mr_dereg(p.dest_mr);
    sp_transport_mr_dereg(fmr);
    sp_transport_mr_dereg(mr);
    sp_transport_close(p.t);
    sp_conf_destroy(conf);
    free(region);
    free(p.dest);
    _exit(0);
}

static pid_t pids[NPROC];

/* Fails the test, leaving no process behind. */
static void give_up(const char *what, int i)
{
    for (int j = 0; j < NPROC; j++) {
        if (pids[j] > 0) {
            kill(pids[j], SIGKILL);
            waitpid(pids[j], NULL, 0);
            sp__transport_clear_dead_process((long)pids[j]); /* its shm regions */
        }
    }
    fail_msg("process %d: %s", i, what);
}

static void run(const char *provider, const char *mode)
{
    int up[NPROC][2], down[NPROC][2];
    pid_t pid[NPROC];
    card_t cards[NPROC];
    char c;
    int status;

    msg_mode = strcmp(mode, "msg") == 0;
    /* Skip where the provider is missing: probe in a child, which may start threads. */
    pid[0] = fork();
    assert_true(pid[0] >= 0);
    if (pid[0] == 0) {
        sp_conf_t *conf = conf_for(provider, mode);
        sp_transport_t *t = NULL;
        sp_status_t st = sp_transport_open(conf, &t);
        if (st == SP_ERR_UNSUPPORTED)
            fprintf(stderr, "provider %s is not available here: %s\n", provider, sp_last_error());
        sp_transport_close(t);
        _exit(st == SP_OK ? 0 : st == SP_ERR_UNSUPPORTED ? 77 : 1);
    }
    assert_int_equal(waitpid(pid[0], &status, 0), pid[0]);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        skip();
    assert_int_equal(WEXITSTATUS(status), 0);

    for (int i = 0; i < NPROC; i++) {
        assert_int_equal(pipe(up[i]), 0);
        assert_int_equal(pipe(down[i]), 0);
        pid[i] = fork();
        assert_true(pid[i] >= 0);
        pids[i] = pid[i];
        if (pid[i] == 0) {
            me = i;
            /* The parent's ends of the earlier pipes, and of our own. */
            for (int j = 0; j <= i; j++) {
                close(up[j][0]);
                close(down[j][1]);
            }
            child(provider, mode, up[i][1], down[i][0]);
        }
        close(up[i][1]);
        close(down[i][0]);
    }
    for (int i = 0; i < NPROC; i++)
        if (!read_whole(up[i][0], &cards[i], sizeof(cards[i])))
            give_up("failed before it published its address", i);
    for (int i = 0; i < NPROC; i++)
        write_all(down[i][1], cards, sizeof(cards));
    for (int i = 0; i < NPROC; i++) {
        if (!read_whole(up[i][0], &c, 1))
            give_up("failed its reads", i);
        assert_int_equal(c, 'o');
    }
    /* Process 0 dies; process 1 reads from it; the others quit. */
    kill(pid[0], SIGKILL);
    assert_int_equal(waitpid(pid[0], &status, 0), pid[0]);
    sp__transport_clear_dead_process((long)pid[0]); /* its shm regions */
    pids[0] = 0;
    write_all(down[1][1], "k", 1);
    write_all(down[2][1], "q", 1);
    if (!read_whole(up[1][0], &c, 1))
        give_up("did not see the read from the killed process fail", 1);
    assert_int_equal(c, 'f');
    write_all(down[1][1], "q", 1);
    for (int i = 1; i < NPROC; i++) {
        assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        pids[i] = 0;
    }
    for (int i = 0; i < NPROC; i++) {
        close(up[i][0]);
        close(down[i][1]);
    }
}

static void test_ofi_msg_tcp_rxm_every_process_reads_every_other(void **state)
{
    (void)state;
    run("tcp;ofi_rxm", "msg");
}

static void test_ofi_msg_shm_every_process_reads_every_other(void **state)
{
    (void)state;
    run("shm", "msg");
}

/* The same exchange one-sided, with the mode left to auto (rma on these providers). */
static void test_ofi_auto_shm_every_process_reads_every_other(void **state)
{
    (void)state;
    run("shm", "auto");
}

static void test_ofi_msg_key_of_other_mode_is_refused(void **state)
{
    sp_conf_t *rma = NULL, *msg = NULL;
    sp_transport_t *a = NULL, *b = NULL;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], key[SP_TRANSPORT_RKEY_MAX];
    size_t alen = 0, klen = 0;
    uint32_t peer = 0;
    sp_mr_t *mr = NULL, *dest = NULL;
    static unsigned char region[4096], buf[4096];
    pid_t pid;
    int status;

    (void)state;
    /* In a child: the transports start threads, and later tests fork. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid != 0) {
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77)
            skip();
        assert_int_equal(WEXITSTATUS(status), 0);
        return;
    }
    rma = conf_for("shm", "rma");
    msg = conf_for("shm", "msg");
    if (sp_transport_open(rma, &a) == SP_ERR_UNSUPPORTED)
        _exit(77);
    CHECK(sp_transport_open(msg, &b) == SP_OK);
    CHECK(sp_transport_mr_reg(a, region, sizeof(region), true, &mr) == SP_OK);
    CHECK(sp_transport_mr_pack(mr, key, sizeof(key), &klen) == SP_OK);
    CHECK(sp_transport_address(a, addr, sizeof(addr), &alen) == SP_OK);
    CHECK(sp_transport_add_peer(b, addr, alen, &peer) == SP_OK);
    CHECK(sp_transport_mr_reg(b, buf, sizeof(buf), false, &dest) == SP_OK);
    CHECK(sp_transport_fetch(b, peer, key, klen, 0, 16, buf, dest, NULL) == SP_ERR_INVALID_PARAM);
    CHECK(strstr(sp_last_error(), "ofi_mode") != NULL);
    sp_transport_mr_dereg(dest);
    sp_transport_mr_dereg(mr);
    sp_transport_close(b);
    sp_transport_close(a);
    sp_conf_destroy(rma);
    sp_conf_destroy(msg);
    _exit(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ofi_msg_tcp_rxm_every_process_reads_every_other),
        cmocka_unit_test(test_ofi_msg_shm_every_process_reads_every_other),
        cmocka_unit_test(test_ofi_auto_shm_every_process_reads_every_other),
        cmocka_unit_test(test_ofi_msg_key_of_other_mode_is_refused),
    };

    /* Loopback only, always. */
    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
