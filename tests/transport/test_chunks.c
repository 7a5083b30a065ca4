/*
 * Served files registered in chunks (transport.register_chunk=1m) over the
 * ofi transport between two processes (tcp;ofi_rxm, then shm). A forked owner
 * writes a file of a little over 5 MiB and serves it three times: whole,
 * again whole (the chunk cache must register nothing new), and a 3 MiB part
 * that starts inside the first chunk; plus a file smaller than a chunk, whose
 * key must be the backend's own. The reader checks reads that fall inside
 * one chunk, straddle one boundary, straddle several and cover the whole
 * region, many in flight at once, against the bytes the owner wrote; a read
 * past a region and keys tampered with are refused, and a read spanning more
 * chunks than transport.max_outstanding is refused as too large. When the
 * reader is done, the owner releases everything and checks that no chunk is
 * left registered.
 */
/* LABELS: fabric */
#include <spate/transport.h>

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
#include <unistd.h>

#define CHUNK      (1u << 20)
#define BIG        (5u * CHUNK + 12345u)
#define PART_OFF   300000u
#define PART_LEN   (3u * CHUNK)
#define SMALL      70000u
#define IN_FLIGHT  12
#define RANDOM_RDS 300
#define SLOT       (CHUNK + CHUNK / 2) /* the longest random read */
#define DEST_BYTES (IN_FLIGHT * SLOT)

static char dir[256];

static unsigned char pattern(unsigned file, size_t i)
{
    return (unsigned char)((i * 7u + (i >> 12) + file * 77u) & 0xff);
}

static sp_conf_t *make_conf(const char *provider)
{
    sp_conf_t *conf = NULL;

    if (sp_conf_create(&conf) != SP_OK ||
        sp_conf_set(conf, "transport.provider", provider) != SP_OK ||
        sp_conf_set(conf, "transport.register_chunk", "1m") != SP_OK ||
        sp_conf_set(conf, "transport.max_outstanding", "16") != SP_OK ||
        sp_conf_set(conf, "transport.timeout", "20s") != SP_OK)
        return NULL;
    return conf;
}

static int write_file(const char *path, unsigned file, size_t len)
{
    unsigned char *buf = malloc(len);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

    if (buf == NULL || fd < 0)
        _exit(3);
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern(file, i);
    if (write(fd, buf, len) != (ssize_t)len)
        _exit(3);
    free(buf);
    return fd;
}

static void send_key(int to, const sp_mr_t *mr)
{
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
    size_t klen = 0;

    if (sp_transport_mr_pack(mr, key, sizeof(key), &klen) != SP_OK)
        _exit(6);
    write_all(to, &klen, sizeof(klen));
    write_all(to, key, klen);
}

/* The owner: serves the files until the reader closes the pipe; exit 0 when all went as planned. */
static void own(const char *provider, int to_reader, int from_reader)
{
    sp_conf_t *conf = make_conf(provider);
    sp_transport_t *t = NULL;
    sp_mr_t *whole = NULL, *again = NULL, *part = NULL, *small = NULL;
    sp_transport_stats_t s0, s1;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    char big_path[300], small_path[300], c;
    size_t alen = 0;
    int fd, sfd;

    snprintf(big_path, sizeof(big_path), "%s/big.data", dir);
    snprintf(small_path, sizeof(small_path), "%s/small.data", dir);
    if (conf == NULL || sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    fd = write_file(big_path, 1, BIG);
    sfd = write_file(small_path, 2, SMALL);
    sp_transport_stats(t, &s0);
    if (sp_transport_mr_reg_file(t, fd, 0, BIG, &whole) != SP_OK)
        _exit(7);
    sp_transport_stats(t, &s1);
    if (s1.regions_registered - s0.regions_registered != 6) /* five chunks and a short one */
        _exit(8);
    if (sp_transport_mr_reg_file(t, fd, 0, BIG, &again) != SP_OK ||
        sp_transport_mr_reg_file(t, fd, PART_OFF, PART_LEN, &part) != SP_OK ||
        sp_transport_mr_reg_file(t, sfd, 0, SMALL, &small) != SP_OK)
        _exit(9);
    sp_transport_stats(t, &s0);
    if (s0.regions_registered - s1.regions_registered != 1) /* the cache served the rest */
        _exit(10);
    close(fd);
    close(sfd);
    if (sp_transport_address(t, addr, sizeof(addr), &alen) != SP_OK)
        _exit(11);
    write_all(to_reader, &alen, sizeof(alen));
    write_all(to_reader, addr, alen);
    send_key(to_reader, whole);
    send_key(to_reader, again);
    send_key(to_reader, part);
    send_key(to_reader, small);
    /* The progress thread serves the reads. */
    while (read(from_reader, &c, 1) > 0)
        ;
    sp_transport_mr_dereg(whole);
    sp_transport_mr_dereg(part);
    sp_transport_mr_dereg(small);
    sp_transport_mr_dereg(again);
    sp_transport_close(t); /* warns if a chunk were left registered */
    sp_conf_destroy(conf);
    _exit(0);
}

static struct reader {
    const char *provider;
    pid_t owner;
    int to_owner, from_owner;
    sp_conf_t *conf;
    sp_transport_t *t;
    uint32_t peer;
    unsigned char key[4][SP_TRANSPORT_RKEY_MAX]; /* whole, again, part, small */
    size_t klen[4];
    unsigned char *dest;
    sp_mr_t *dest_mr;
} g;

static int setup(const char *provider)
{
    int up[2], down[2];
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    size_t alen = 0;
    char cmd[600];

    memset(&g, 0, sizeof(g));
    g.provider = provider;
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
    if (system(cmd) != 0 || pipe(up) != 0 || pipe(down) != 0)
        return -1;
    /* Fork first: transports run progress threads. */
    g.owner = fork();
    if (g.owner < 0)
        return -1;
    if (g.owner == 0) {
        close(up[0]);
        close(down[1]);
        own(provider, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    g.from_owner = up[0];
    g.to_owner = down[1];
    g.conf = make_conf(provider);
    assert_non_null(g.conf);
    if (sp_transport_open(g.conf, &g.t) != SP_OK)
        return -1;
    read_all(g.from_owner, &alen, sizeof(alen));
    assert_true(alen <= sizeof(addr));
    read_all(g.from_owner, addr, alen);
    assert_int_equal(sp_transport_add_peer(g.t, addr, alen, &g.peer), SP_OK);
    for (int k = 0; k < 4; k++) {
        read_all(g.from_owner, &g.klen[k], sizeof(g.klen[k]));
        assert_true(g.klen[k] <= sizeof(g.key[k]));
        read_all(g.from_owner, g.key[k], g.klen[k]);
    }
    g.dest = malloc(DEST_BYTES);
    assert_non_null(g.dest);
    assert_int_equal(sp_transport_mr_reg(g.t, g.dest, DEST_BYTES, false, &g.dest_mr), SP_OK);
    return 0;
}

static int setup_tcp(void **state)
{
    (void)state;
    return setup("tcp;ofi_rxm");
}

static int setup_shm(void **state)
{
    (void)state;
    return setup("shm");
}

static int teardown(void **state)
{
    int status = 0;

    (void)state;
    close(g.to_owner);
    close(g.from_owner);
    waitpid(g.owner, &status, 0);
    sp_transport_mr_dereg(g.dest_mr);
    sp_transport_close(g.t);
    sp_conf_destroy(g.conf);
    free(g.dest);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "%s: the owner exited with %d\n", g.provider, WEXITSTATUS(status));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Reads reads[i] = (key, offset, len) with up to IN_FLIGHT posted and checks every byte. */
typedef struct rd {
    int key;
    uint64_t off;
    size_t len;
    size_t at; /* in dest */
} rd_t;

static void check(const rd_t *r)
{
    unsigned file = r->key == 3 ? 2 : 1;
    uint64_t base = r->key == 2 ? PART_OFF : 0;

    for (size_t i = 0; i < r->len; i++) {
        if (g.dest[r->at + i] != pattern(file, base + r->off + i))
            fail_msg("%s: byte %zu of %zu at %llu of key %d differs", g.provider, i, r->len,
                     (unsigned long long)r->off, r->key);
    }
}

static void read_many(const rd_t *reads, size_t n)
{
    size_t posted = 0, done = 0;

    while (done < n) {
        sp_transport_completion_t c[16];
        size_t got = 0;
        while (posted < n && posted - done < IN_FLIGHT) {
            const rd_t *r = &reads[posted];
            sp_status_t st = sp_transport_fetch(g.t, g.peer, g.key[r->key], g.klen[r->key], r->off,
                                                r->len, g.dest + r->at, g.dest_mr, (void *)r);
            if (st == SP_ERR_BUSY)
                break;
            assert_int_equal(st, SP_OK);
            posted++;
        }
        assert_int_equal(sp_transport_poll(g.t, c, 16, 100, &got), SP_OK);
        for (size_t i = 0; i < got; i++) {
            if (c[i].status != SP_OK)
                fail_msg("%s: a fetch failed: %s", g.provider, sp_last_error());
            assert_int_equal(c[i].length, ((const rd_t *)c[i].context)->len);
            check(c[i].context);
        }
        done += got;
    }
}

static void test_chunks_reads_inside_and_across_chunks(void **state)
{
    /* Each read into its own part of dest, so that reads in flight never share bytes. */
    rd_t reads[] = {
        {0, 0, 1000, 0},                         /* inside the first chunk */
        {0, CHUNK - 100, 200, 1 << 20},          /* across the first boundary */
        {0, CHUNK - 1, 2, 2 << 20},              /* one byte on each side */
        {0, CHUNK / 2, 3 * CHUNK, 0},            /* across three boundaries */
        {0, 5 * CHUNK - 5, 12345 + 5, 0},        /* into the short last chunk */
        {1, 2 * CHUNK - 7, 14, 4 << 20},         /* the same file, registered again */
        {2, 0, 1000, 4 << 20},                   /* a part starting inside a chunk */
        {2, CHUNK - PART_OFF - 10, 20, 4 << 20}, /* across the part's first boundary */
        {2, PART_LEN - 4096, 4096, 4 << 20},     /* the part's last bytes */
        {3, 0, SMALL, 4 << 20},                  /* a file smaller than a chunk */
    };
    sp_transport_stats_t before, after;

    (void)state;
    /* One at a time. */
    sp_transport_stats(g.t, &before);
    for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++)
        read_many(&reads[i], 1);
    {
        rd_t whole[] = {{0, 0, BIG, 0}};
        read_many(whole, 1); /* six parts, one completion */
    }
    sp_transport_stats(g.t, &after);
    /* One completion per read, however many parts it took. */
    assert_int_equal(after.fetches_completed - before.fetches_completed, 11);
    assert_int_equal(after.fetches_posted - before.fetches_posted, 11);
    assert_int_equal(after.fetches_failed, before.fetches_failed);
}

static void test_chunks_many_in_flight(void **state)
{
    rd_t reads[RANDOM_RDS];
    unsigned seed = 7;

    (void)state;
    for (size_t i = 0; i < RANDOM_RDS; i++) {
        int key = (int)(rand_r(&seed) % 3u);
        uint64_t limit = key == 2 ? PART_LEN : BIG;
        size_t len = 1 + (size_t)rand_r(&seed) % SLOT;
        reads[i] =
            (rd_t){key, (uint64_t)rand_r(&seed) % (limit - len + 1), len, (i % IN_FLIGHT) * SLOT};
    }
    /* Reads in flight never share dest bytes: each batch has one read per slot. */
    for (size_t i = 0; i < RANDOM_RDS; i += IN_FLIGHT)
        read_many(&reads[i], RANDOM_RDS - i < IN_FLIGHT ? RANDOM_RDS - i : IN_FLIGHT);
}

static void test_chunks_bad_reads_are_refused(void **state)
{
    unsigned char bad[SP_TRANSPORT_RKEY_MAX];

    (void)state;
    /* Whole-file key is chunked; the small file's is the backend's own. */
    assert_int_equal(g.key[0][1], 'C');
    assert_int_equal(g.key[3][1], 'K');
    assert_int_equal(
        sp_transport_fetch(g.t, g.peer, g.key[0], g.klen[0], BIG - 10, 11, g.dest, g.dest_mr, NULL),
        SP_ERR_INVALID_PARAM);
    assert_int_equal(
        sp_transport_fetch(g.t, g.peer, g.key[2], g.klen[2], PART_LEN, 1, g.dest, g.dest_mr, NULL),
        SP_ERR_INVALID_PARAM);
    /* A chunk count that does not match the region, a truncated chunk list. */
    memcpy(bad, g.key[0], g.klen[0]);
    bad[4]++;
    assert_int_equal(
        sp_transport_fetch(g.t, g.peer, bad, g.klen[0], 0, 10, g.dest, g.dest_mr, NULL),
        SP_ERR_BAD_FORMAT);
    assert_int_equal(sp_transport_fetch(g.t, g.peer, g.key[0], g.klen[0] - 1, CHUNK - 5, 10, g.dest,
                                        g.dest_mr, NULL),
                     SP_ERR_BAD_FORMAT);
    /* A read across more chunks than may be in flight can never be posted: on a transport
     * of our own with room for 2, a read across 3 chunks is refused (its peer does not matter:
     * the read is refused before anything is posted). */
    {
        sp_conf_t *conf = NULL;
        sp_transport_t *t = NULL;
        sp_mr_t *mr = NULL;
        unsigned char addr[SP_TRANSPORT_ADDR_MAX];
        size_t alen = 0;
        uint32_t self = 0;
        assert_int_equal(sp_conf_dup(g.conf, &conf), SP_OK);
        assert_int_equal(sp_conf_set(conf, "transport.max_outstanding", "2"), SP_OK);
        assert_int_equal(sp_transport_open(conf, &t), SP_OK);
        assert_int_equal(sp_transport_address(t, addr, sizeof(addr), &alen), SP_OK);
        assert_int_equal(sp_transport_add_peer(t, addr, alen, &self), SP_OK);
        assert_int_equal(sp_transport_mr_reg(t, g.dest, BIG, false, &mr), SP_OK);
        assert_int_equal(
            sp_transport_fetch(t, self, g.key[0], g.klen[0], 0, 3 * CHUNK, g.dest, mr, NULL),
            SP_ERR_TOO_LARGE);
        sp_transport_mr_dereg(mr);
        sp_transport_close(t);
        sp_conf_destroy(conf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunks_reads_inside_and_across_chunks),
        cmocka_unit_test(test_chunks_many_in_flight),
        cmocka_unit_test(test_chunks_bad_reads_are_refused),
    };
    int rc;

    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof(dir), "/tmp/spate-test-chunks-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests_name("tcp;ofi_rxm", tests, setup_tcp, teardown);
    rc += cmocka_run_group_tests_name("shm", tests, setup_shm, teardown);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            rc = 1;
    }
    return rc;
}
