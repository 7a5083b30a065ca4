/*
 * A shuffle across two processes over the ofi transport (tcp;ofi_rxm and
 * shm): a forked executor commits two map outputs, serves them (registered
 * data files, keys and address in the statuses) and sends the statuses over
 * a pipe in their wire form; the parent commits two map outputs of its own
 * and reads every reduce partition over the transport, unordered, merged and
 * aggregated, comparing with a reference computed from the same records.
 *
 * Once more with transport.local=true over tcp;ofi_rxm: both executors are
 * on this host, so the reads go to the files directly. To tell, the serving
 * executor runs without a progress thread and never polls, so a read over
 * tcp (which needs the target's progress) would time out. transport.backend
 * is auto there, which is ofi outside mpirun.
 */
/* LABELS: fabric */
#include "shuffle_model.h"
#include <spate/shuffle.h>
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

#define MAPS 4

static char dir[256];
static const char *ofi_mode = "auto"; /* transport.ofi_mode of both executors */

static sp_conf_t *make_conf(const char *sub, const char *provider, bool local)
{
    char dirs[600];
    sp_conf_t *conf = NULL;

    snprintf(dirs, sizeof(dirs), "%s/%s", dir, sub);
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", "64m"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dirs), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.provider", provider), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.ofi_mode", ofi_mode), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", local ? "3s" : "10s"), SP_OK);
    if (local) {
        assert_int_equal(sp_conf_set(conf, "transport.backend", "auto"), SP_OK);
        assert_int_equal(sp_conf_set(conf, "transport.local", "true"), SP_OK);
        assert_int_equal(sp_conf_set(conf, "transport.progress_thread", "false"), SP_OK);
    }
    return conf;
}

static sp_map_status_t *write_map(sp_conf_t *conf, sp_memory_manager_t *mm, unsigned m)
{
    return model_write_map(conf, mm, 5, m);
}

/* The serving executor: maps 2 and 3, served until the parent closes the pipe. */
static bool compact; /* statuses go in the compact wire form: approximate, no offsets */

static void serve(const char *provider, bool local, int to_parent, int from_parent)
{
    sp_conf_t *conf = make_conf("child", provider, local);
    sp_memory_manager_t *mm = NULL;
    sp_transport_t *t = NULL;
    sp_served_output_t *served[2] = {NULL, NULL};
    sp_map_status_t *st[2];
    char c;

    if (sp_memory_manager_create(conf, NULL, 0, &mm) != SP_OK ||
        sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    for (unsigned m = 2; m < 4; m++) {
        void *buf = NULL;
        size_t len = 0;
        st[m - 2] = write_map(conf, mm, m);
        if (sp_map_output_serve(t, st[m - 2], &served[m - 2]) != SP_OK ||
            sp_map_status_serialize(st[m - 2], compact ? 1 : 100000, compact ? 300 : 0, &buf,
                                    &len) != SP_OK)
            _exit(3);
        if (write(to_parent, &len, sizeof(len)) != sizeof(len) ||
            write(to_parent, buf, len) != (ssize_t)len)
            _exit(4);
        free(buf);
    }
    /* With transport.local, no polls: a read that went over tcp would hang. */
    while (local && read(from_parent, &c, 1) > 0)
        ;
    fcntl(from_parent, F_SETFL, O_NONBLOCK);
    while (!local) {
        sp_transport_completion_t done[4];
        size_t n = 0;
        if (read(from_parent, &c, 1) == 0)
            break;
        (void)sp_transport_poll(t, done, 4, 1, &n);
    }
    for (int i = 0; i < 2; i++) {
        sp_map_output_unserve(served[i]);
        sp_map_status_destroy(st[i]);
    }
    sp_transport_close(t);
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    _exit(0);
}

static size_t sum_combine(void *arg, const void *key, size_t klen, const void *a, size_t alen,
                          const void *b, size_t blen, void *out, size_t cap)
{
    uint64_t x, y;

    (void)arg;
    (void)key;
    (void)klen;
    (void)alen;
    (void)blen;
    if (cap >= 8) {
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        x += y;
        memcpy(out, &x, 8);
    }
    return 8;
}

static void run(const char *provider, bool local)
{
    static const sp_combiner_t sum = {.combine = sum_combine};
    int up[2], down[2];
    sp_conf_t *conf;
    sp_memory_manager_t *mm = NULL;
    sp_transport_t *t = NULL;
    sp_map_status_t *st[MAPS];
    pid_t child;
    char cmd[600];
    sp_status_t ost;

    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
    assert_int_equal(system(cmd), 0);
    conf = make_conf("parent", provider, local);
    /* Fork first: transports run progress threads. */
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(up[0]);
        close(down[1]);
        serve(provider, local, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    ost = sp_transport_open(conf, &t);
    if (ost == SP_ERR_UNSUPPORTED) {
        close(down[1]);
        close(up[0]);
        waitpid(child, NULL, 0);
        sp_conf_destroy(conf);
        skip();
    }
    assert_int_equal(ost, SP_OK);
    assert_string_equal(sp_transport_backend(t), local ? "ofi+local" : "ofi");
    assert_int_equal(sp_memory_manager_create(conf, NULL, 0, &mm), SP_OK);
    st[0] = write_map(conf, mm, 0);
    st[1] = write_map(conf, mm, 1);
    for (int i = 2; i < 4; i++) {
        size_t len = 0;
        void *buf;
        read_all(up[0], &len, sizeof(len));
        assert_true(len < (1u << 20));
        buf = malloc(len);
        read_all(up[0], buf, len);
        assert_int_equal(sp_map_status_deserialize(buf, len, &st[i]), SP_OK);
        assert_non_null(st[i]->address);
        assert_non_null(st[i]->rkey);
        assert_int_equal(st[i]->approximate, compact);
        free(buf);
    }
    for (uint32_t r = 0; r < PARTS; r++) {
        static const sp_read_order_t orders[] = {SP_READ_UNORDERED, SP_READ_MERGE,
                                                 SP_READ_AGGREGATE};
        sp_block_list_t *list = NULL;
        unsigned remote = 0;

        assert_int_equal(
            sp_block_list_from_statuses((const sp_map_status_t *const *)st, MAPS, r, r + 1, &list),
            SP_OK);
        for (size_t b = 0; b < list->count; b++)
            remote += list->blocks[b].address != NULL;
        assert_true(remote > 0);
        for (size_t oi = 0; oi < 3; oi++) {
            sp_shuffle_reader_options_t o = {.order = orders[oi], .combiner = &sum};
            sp_shuffle_reader_t *reader = NULL;
            sp_task_memory_t *task = NULL;
            uint64_t count[KEYS] = {0}, total[KEYS] = {0}, expect_count[KEYS] = {0},
                     expect_total[KEYS] = {0};
            char last[8] = "";
            bool more = true;

            assert_int_equal(sp_block_fetcher_transport_create(t, &o.fetcher), SP_OK);
            assert_int_equal(sp_task_memory_create(mm, 100 + r, &task), SP_OK);
            assert_int_equal(sp_shuffle_reader_open(task, conf, list, &o, &reader), SP_OK);
            while (more) {
                const void *k, *v;
                size_t kl, vl;
                uint64_t val;
                unsigned key;
                assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
                if (!more)
                    break;
                key = model_key(k, kl);
                assert_int_equal(vl, 8);
                if (orders[oi] == SP_READ_MERGE) {
                    assert_true(memcmp(last, k, 4) <= 0);
                    memcpy(last, k, 4);
                }
                memcpy(&val, v, 8);
                count[key]++;
                total[key] += val;
            }
            model_expect(MAPS, r, expect_count, expect_total);
            for (unsigned k = 0; k < KEYS; k++) {
                if (orders[oi] == SP_READ_AGGREGATE)
                    assert_int_equal(count[k], expect_count[k] != 0);
                else
                    assert_int_equal(count[k], expect_count[k]);
                assert_int_equal(total[k], expect_total[k]);
            }
            sp_shuffle_reader_close(reader);
            sp_task_memory_destroy(task, NULL);
            sp_block_fetcher_destroy(o.fetcher);
        }
        sp_block_list_destroy(list);
    }
    {
        sp_transport_stats_t s;
        sp_transport_stats(t, &s);
        assert_true(s.fetches_completed > 0);
        assert_int_equal(s.fetches_failed, 0);
    }
    close(down[1]);
    close(up[0]);
    {
        int status = 0;
        waitpid(child, &status, 0);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    for (int i = 0; i < MAPS; i++)
        sp_map_status_destroy(st[i]);
    sp_transport_close(t);
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    assert_int_equal(system(cmd), 0);
}

static void test_remote_shuffle_tcp_rxm(void **state)
{
    (void)state;
    run("tcp;ofi_rxm", false);
}

static void test_remote_shuffle_shm(void **state)
{
    (void)state;
    run("shm", false);
}

static void test_remote_shuffle_same_host_reads_files(void **state)
{
    (void)state;
    run("tcp;ofi_rxm", true);
}

/* Statuses in the compact form: each block's index entries and checksum are read first. */
static void test_remote_shuffle_compact_statuses_tcp_rxm(void **state)
{
    (void)state;
    compact = true;
    run("tcp;ofi_rxm", false);
    compact = false;
}

static void test_remote_shuffle_compact_statuses_shm_msg(void **state)
{
    (void)state;
    compact = true;
    ofi_mode = "msg";
    run("shm", false);
    ofi_mode = "auto";
    compact = false;
}

static void test_remote_shuffle_compact_statuses_same_host(void **state)
{
    (void)state;
    compact = true;
    run("tcp;ofi_rxm", true);
    compact = false;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_shuffle_tcp_rxm),
        cmocka_unit_test(test_remote_shuffle_shm),
        cmocka_unit_test(test_remote_shuffle_same_host_reads_files),
        cmocka_unit_test(test_remote_shuffle_compact_statuses_tcp_rxm),
        cmocka_unit_test(test_remote_shuffle_compact_statuses_shm_msg),
        cmocka_unit_test(test_remote_shuffle_compact_statuses_same_host),
    };
    int rc;

    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof(dir), "/tmp/spate-test-remote-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            rc = 1;
    }
    return rc;
}
