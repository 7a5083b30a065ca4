/*
 * The local backend between two processes of this host: a forked owner
 * writes a file, registers part of it (sp_transport_mr_reg_file)
 * and sends its address, the key and the path over a pipe; the reader fetches
 * with the path at every kind of offset, from two threads at once, and checks
 * the bytes. Bad requests are refused before anything is read (past the
 * region, no path, a key that does not unpack, an unknown peer, a peer of
 * another host), memory is not servable, and a file that was replaced or
 * removed since fails its fetch with a message naming it.
 */
/* LABELS: unit */
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pipe_util.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FILE_BYTES   (8u << 20)
#define REGION_OFF   4096u                    /* the served region starts here in the file... */
#define REGION_LEN   (FILE_BYTES - 2 * 4096u) /* ...and ends a page before its end */
#define THREAD_READS 200

static char path[256];

static unsigned char pattern(size_t i) { return (unsigned char)((i * 7u + (i >> 12)) & 0xff); }

static struct reader {
    pid_t owner;
    int to_owner, from_owner;
    sp_conf_t *conf;
    sp_transport_t *t;
    uint32_t peer;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], key[SP_TRANSPORT_RKEY_MAX];
    size_t alen, klen;
    unsigned char *dest;
    sp_mr_t *dest_mr;
} g;

static sp_conf_t *local_conf(void)
{
    sp_conf_t *conf = NULL;

    if (sp_conf_create(&conf) != SP_OK ||
        sp_conf_set(conf, "transport.backend", "local") != SP_OK ||
        sp_conf_set(conf, "transport.max_outstanding", "16") != SP_OK)
        return NULL;
    return conf;
}

/* The owner: writes, maps and serves the file until the pipe closes. */
static void own(int to_reader, int from_reader)
{
    sp_conf_t *conf = local_conf();
    sp_transport_t *t = NULL;
    sp_mr_t *mr = NULL, *mem = NULL;
    unsigned char *buf = malloc(FILE_BYTES), addr[SP_TRANSPORT_ADDR_MAX],
                  key[SP_TRANSPORT_RKEY_MAX];
    size_t alen = 0, klen = 0;
    int fd;
    char c;

    if (buf == NULL || conf == NULL || sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    for (size_t i = 0; i < FILE_BYTES; i++)
        buf[i] = pattern(i);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, buf, FILE_BYTES) != FILE_BYTES)
        _exit(3);
    /* Memory is not servable; a file is. */
    if (sp_transport_mr_reg(t, buf, 4096, true, &mem) != SP_ERR_UNSUPPORTED)
        _exit(4);
    if (sp_transport_mr_reg_file(t, fd, REGION_OFF, REGION_LEN, &mr) != SP_OK ||
        sp_transport_mr_pack(mr, key, sizeof(key), &klen) != SP_OK ||
        sp_transport_address(t, addr, sizeof(addr), &alen) != SP_OK)
        _exit(4);
    close(fd);
    write_all(to_reader, &alen, sizeof(alen));
    write_all(to_reader, addr, alen);
    write_all(to_reader, &klen, sizeof(klen));
    write_all(to_reader, key, klen);
    /* Nothing to do: readers read the file. */
    while (read(from_reader, &c, 1) > 0)
        ;
    sp_transport_mr_dereg(mr);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    free(buf);
    _exit(0);
}

static int setup(void **state)
{
    int up[2], down[2];

    (void)state;
    memset(&g, 0, sizeof(g));
    if (pipe(up) != 0 || pipe(down) != 0)
        return -1;
    g.owner = fork();
    if (g.owner < 0)
        return -1;
    if (g.owner == 0) {
        close(up[0]);
        close(down[1]);
        own(up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    g.from_owner = up[0];
    g.to_owner = down[1];
    read_all(g.from_owner, &g.alen, sizeof(g.alen));
    assert_true(g.alen <= sizeof(g.addr));
    read_all(g.from_owner, g.addr, g.alen);
    read_all(g.from_owner, &g.klen, sizeof(g.klen));
    assert_true(g.klen <= sizeof(g.key));
    read_all(g.from_owner, g.key, g.klen);
    g.conf = local_conf();
    assert_non_null(g.conf);
    assert_int_equal(sp_transport_open(g.conf, &g.t), SP_OK);
    assert_string_equal(sp_transport_backend(g.t), "local");
    assert_int_equal(sp_transport_add_peer(g.t, g.addr, g.alen, &g.peer), SP_OK);
    g.dest = malloc(FILE_BYTES);
    assert_non_null(g.dest);
    assert_int_equal(sp_transport_mr_reg(g.t, g.dest, FILE_BYTES, false, &g.dest_mr), SP_OK);
    return 0;
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
    unlink(path);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Waits for one completion; returns its status. */
static sp_status_t wait_one(void *context)
{
    sp_transport_completion_t done;
    size_t n = 0;

    while (n == 0)
        assert_int_equal(sp_transport_poll(g.t, &done, 1, 100, &n), SP_OK);
    assert_ptr_equal(done.context, context);
    assert_int_equal(done.peer, g.peer);
    return done.status;
}

static void fetch_and_check(uint64_t offset, size_t len, unsigned char *dest)
{
    memset(dest, 0, len);
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer, g.key, g.klen, path, offset, len, dest,
                                             g.dest_mr, dest),
                     SP_OK);
    assert_int_equal(wait_one(dest), SP_OK);
    for (size_t i = 0; i < len; i++) {
        if (dest[i] != pattern(REGION_OFF + offset + i))
            fail_msg("byte %zu of %zu at %llu differs", i, len, (unsigned long long)offset);
    }
}

static void test_local_fetch_every_size(void **state)
{
    static const size_t sizes[] = {1, 1024, 64 << 10, 1 << 20, REGION_LEN};
    sp_transport_stats_t s;

    (void)state;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        fetch_and_check(0, sizes[i], g.dest);
        fetch_and_check(REGION_LEN - sizes[i], sizes[i], g.dest); /* the region's last bytes */
        if (sizes[i] < REGION_LEN)
            fetch_and_check(12345, sizes[i], g.dest);
    }
    sp_transport_stats(g.t, &s);
    assert_int_equal(s.fetches_completed, 14);
    assert_int_equal(s.fetches_failed, 0);
}

static void *reader_thread(void *arg)
{
    unsigned char *dest = arg;
    unsigned seed = (unsigned)(uintptr_t)arg;

    for (int k = 0; k < THREAD_READS; k++) {
        size_t len = 1 + (size_t)rand_r(&seed) % (256u << 10);
        uint64_t off = (uint64_t)rand_r(&seed) % (REGION_LEN - len);
        sp_transport_completion_t done;
        size_t n = 0;

        memset(dest, 0, len);
        if (sp_transport_fetch_file(g.t, g.peer, g.key, g.klen, path, off, len, dest, g.dest_mr,
                                    dest) != SP_OK)
            return (void *)"post failed";
        /* One completion per fetch, whichever thread's it is: the local backend reads
         * inside the fetch, so this thread's bytes are in place already. */
        while (n == 0)
            if (sp_transport_poll(g.t, &done, 1, 100, &n) != SP_OK)
                return (void *)"poll failed";
        if (done.status != SP_OK)
            return (void *)"fetch failed";
        for (size_t i = 0; i < len; i++)
            if (dest[i] != pattern(REGION_OFF + off + i))
                return (void *)"bytes differ";
    }
    return NULL;
}

static void test_local_two_reader_threads(void **state)
{
    pthread_t threads[2];
    void *result[2];
    sp_transport_stats_t before, after;

    (void)state;
    sp_transport_stats(g.t, &before);
    for (int i = 0; i < 2; i++)
        assert_int_equal(
            pthread_create(&threads[i], NULL, reader_thread, g.dest + (size_t)i * (FILE_BYTES / 2)),
            0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(threads[i], &result[i]), 0);
        if (result[i] != NULL)
            fail_msg("thread %d: %s", i, (const char *)result[i]);
    }
    sp_transport_stats(g.t, &after);
    assert_int_equal(after.fetches_completed - before.fetches_completed, 2 * THREAD_READS);
}

static void test_local_bad_requests_are_refused(void **state)
{
    unsigned char bad[SP_TRANSPORT_RKEY_MAX], addr[SP_TRANSPORT_ADDR_MAX];
    sp_transport_stats_t before, after;
    uint32_t peer = 0;

    (void)state;
    sp_transport_stats(g.t, &before);
    /* Past the region (the file goes on, the region does not). */
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer, g.key, g.klen, path, REGION_LEN - 10, 11,
                                             g.dest, g.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "past the end"));
    /* No path: the local backend cannot read. */
    assert_int_equal(sp_transport_fetch(g.t, g.peer, g.key, g.klen, 0, 10, g.dest, g.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "path"));
    /* Keys that do not unpack. */
    memcpy(bad, g.key, g.klen);
    bad[1] = 'X';
    assert_int_equal(
        sp_transport_fetch_file(g.t, g.peer, bad, g.klen, path, 0, 10, g.dest, g.dest_mr, NULL),
        SP_ERR_BAD_FORMAT);
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer, g.key, g.klen - 1, path, 0, 10, g.dest,
                                             g.dest_mr, NULL),
                     SP_ERR_BAD_FORMAT);
    /* A peer that was never added. */
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer + 5, g.key, g.klen, path, 0, 10, g.dest,
                                             g.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    sp_transport_stats(g.t, &after);
    assert_int_equal(after.fetches_posted, before.fetches_posted);
    /* A peer of another host (its boot id differs): refused, so that a composite uses the
     * network for it. */
    memcpy(addr, g.addr, g.alen);
    addr[8] ^= 0xff; /* first byte after the envelope */
    assert_int_equal(sp_transport_add_peer(g.t, addr, g.alen, &peer), SP_ERR_UNSUPPORTED);
    assert_non_null(strstr(sp_last_error(), "another host"));
    assert_int_equal(sp_transport_add_peer(g.t, addr, g.alen - 1, &peer), SP_ERR_BAD_FORMAT);
}

static void test_local_replaced_and_removed_files_fail(void **state)
{
    char other[300];
    int fd;

    (void)state;
    /* Another file now has the path: it is not the one the key names. */
    snprintf(other, sizeof(other), "%s.new", path);
    fd = open(other, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, FILE_BYTES), 0);
    close(fd);
    assert_int_equal(rename(other, path), 0);
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer, g.key, g.klen, path, 0, 100, g.dest,
                                             g.dest_mr, g.dest),
                     SP_OK);
    assert_int_equal(wait_one(g.dest), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "not the file"));
    /* And then none at all. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(sp_transport_fetch_file(g.t, g.peer, g.key, g.klen, path, 0, 100, g.dest,
                                             g.dest_mr, g.dest),
                     SP_OK);
    assert_int_equal(wait_one(g.dest), SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_fetch_every_size),
        cmocka_unit_test(test_local_two_reader_threads),
        cmocka_unit_test(test_local_bad_requests_are_refused),
        cmocka_unit_test(
            test_local_replaced_and_removed_files_fail), /* last: it removes the file */
    };

    snprintf(path, sizeof(path), "/tmp/spate-test-local-%d.data", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, setup, teardown);
}
