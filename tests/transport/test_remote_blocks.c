/*
 * Remote shuffle reads of extreme block sizes over the ofi transport, between
 * two processes (tcp;ofi_rxm, then shm): a forked executor commits two map
 * outputs and serves them, one of 2000 partitions of about 1 KiB each and one
 * of 2 partitions of 64 MiB each, uncompressed, and sends the statuses over a
 * pipe in their wire form. The parent reads them through one transport:
 *
 * - every 1 KiB block with shuffle.max_bytes_in_flight=64k, so the reader
 *   keeps about 60 blocks in flight and never more than the limit
 *   (peak_in_flight in the reader's stats);
 * - both 64 MiB blocks with the limit at 160m (two in flight);
 * - with two reader threads at once, each with its own fetcher on the one
 *   transport, each reading half of the small blocks and one large block.
 *
 * Every byte of every record is checked against the value its writer gave it.
 */
/* LABELS: fabric */
#include <spate/shuffle.h>
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pipe_util.h"
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SMALL_PARTS 2000u
#define SMALL_VALUE 1000u
#define LARGE_PARTS 2u
#define LARGE_RECS  1024u
#define LARGE_VALUE (64u << 10) /* 1024 x 64 KiB: a 64 MiB block */

static char dir[256];

static struct remote {
    const char *provider;
    pid_t child;
    int up, down; /* pipes to and from the child */
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_transport_t *t;
    sp_map_status_t *st[2]; /* 0: small blocks, 1: large */
} g;

/* Byte j of the value of record i of partition p of map m. */
static unsigned char value_byte(unsigned m, unsigned p, unsigned i, size_t j)
{
    return (unsigned char)(j * 131u + i * 7u + p * 13u + m * 101u + (j >> 9));
}

static sp_conf_t *make_conf(const char *sub, const char *provider)
{
    char local[600];
    sp_conf_t *conf = NULL;

    snprintf(local, sizeof(local), "%s/%s", dir, sub);
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", "256m"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", local), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.compress", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.provider", provider), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", "20s"), SP_OK);
    return conf;
}

/* Map m: parts partitions of recs records of vlen bytes; key "p%05u". */
static sp_map_status_t *write_map(sp_conf_t *conf, sp_memory_manager_t *mm, unsigned m,
                                  unsigned parts, unsigned recs, size_t vlen)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_task_memory_t *task = NULL;
    sp_map_status_t *st = NULL;
    unsigned char *v = malloc(vlen);

    if (v == NULL || sp_task_memory_create(mm, m, &task) != SP_OK ||
        sp_shuffle_writer_options_init(&o, conf) != SP_OK)
        _exit(10);
    o.shuffle_id = 9;
    o.map_id = m;
    o.partitions = parts;
    if (sp_shuffle_writer_open(task, conf, &o, &w) != SP_OK)
        _exit(11);
    for (unsigned p = 0; p < parts; p++) {
        for (unsigned i = 0; i < recs; i++) {
            char key[16];
            snprintf(key, sizeof(key), "p%05u", p % 100000u);
            for (size_t j = 0; j < vlen; j++)
                v[j] = value_byte(m, p, i, j);
            if (sp_shuffle_writer_write(w, p, key, 6, v, vlen) != SP_OK)
                _exit(12);
        }
    }
    if (sp_shuffle_writer_commit(w, &st) != SP_OK)
        _exit(13);
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    free(v);
    return st;
}

/* The serving executor: both maps, served until the parent closes the pipe. */
static void serve(const char *provider, int to_parent, int from_parent)
{
    sp_conf_t *conf = make_conf("child", provider);
    sp_memory_manager_t *mm = NULL;
    sp_transport_t *t = NULL;
    sp_served_output_t *served[2] = {NULL, NULL};
    sp_map_status_t *st[2];
    char c;

    if (sp_memory_manager_create(conf, NULL, 0, &mm) != SP_OK ||
        sp_transport_open(conf, &t) != SP_OK)
        _exit(2);
    st[0] = write_map(conf, mm, 0, SMALL_PARTS, 1, SMALL_VALUE);
    st[1] = write_map(conf, mm, 1, LARGE_PARTS, LARGE_RECS, LARGE_VALUE);
    for (int m = 0; m < 2; m++) {
        void *buf = NULL;
        size_t len = 0;
        if (sp_map_output_serve(t, st[m], &served[m]) != SP_OK ||
            sp_map_status_serialize(st[m], 100000, 0, &buf, &len) != SP_OK)
            _exit(3);
        if (write(to_parent, &len, sizeof(len)) != sizeof(len) ||
            write(to_parent, buf, len) != (ssize_t)len)
            _exit(4);
        free(buf);
    }
    /* The transport's progress thread serves the reads; wait for the pipe to close. */
    while (read(from_parent, &c, 1) > 0)
        ;
    for (int m = 0; m < 2; m++) {
        sp_map_output_unserve(served[m]);
        sp_map_status_destroy(st[m]);
    }
    sp_transport_close(t);
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    _exit(0);
}

static int remote_setup(const char *provider)
{
    int up[2], down[2];
    char cmd[600];
    sp_status_t ost;

    memset(&g, 0, sizeof(g));
    g.provider = provider;
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
    if (system(cmd) != 0 || pipe(up) != 0 || pipe(down) != 0)
        return -1;
    g.conf = make_conf("parent", provider);
    /* Fork first: transports run progress threads. */
    g.child = fork();
    if (g.child < 0)
        return -1;
    if (g.child == 0) {
        close(up[0]);
        close(down[1]);
        serve(provider, up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    g.up = up[0];
    g.down = down[1];
    ost = sp_transport_open(g.conf, &g.t);
    if (ost != SP_OK) {
        fprintf(stderr, "transport over %s: %s\n", provider, sp_last_error());
        return -1;
    }
    assert_int_equal(sp_memory_manager_create(g.conf, NULL, 0, &g.mm), SP_OK);
    for (int m = 0; m < 2; m++) {
        size_t len = 0;
        void *buf;
        read_all(g.up, &len, sizeof(len));
        assert_true(len < (1u << 20));
        buf = malloc(len);
        assert_non_null(buf);
        read_all(g.up, buf, len);
        assert_int_equal(sp_map_status_deserialize(buf, len, &g.st[m]), SP_OK);
        assert_non_null(g.st[m]->rkey);
        free(buf);
    }
    return 0;
}

static int setup_tcp(void **state)
{
    (void)state;
    return remote_setup("tcp;ofi_rxm");
}

static int setup_shm(void **state)
{
    (void)state;
    return remote_setup("shm");
}

static int remote_teardown(void **state)
{
    int status = 0;

    (void)state;
    close(g.down);
    close(g.up);
    if (g.child > 0)
        waitpid(g.child, &status, 0);
    for (int m = 0; m < 2; m++)
        sp_map_status_destroy(g.st[m]);
    sp_transport_close(g.t);
    sp_memory_manager_destroy(g.mm);
    sp_conf_destroy(g.conf);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* One reader: partitions [p0, p1) of map m (one status), plus what it checked. */
typedef struct read_job {
    unsigned m, p0, p1, task_id;
    const char *max_in_flight;
    sp_shuffle_read_stats_t stats;
    uint64_t records;
    sp_status_t status;
    char error[256];
} read_job_t;

/*
 * Reads job's partitions unordered through a fetcher of its own on the shared
 * transport, checking every byte; the first failure goes into job->error.
 */
static void *read_partitions(void *arg)
{
    read_job_t *job = arg;
    unsigned vlen = job->m == 0 ? SMALL_VALUE : LARGE_VALUE, recs = job->m == 0 ? 1 : LARGE_RECS;
    const sp_map_status_t *st = g.st[job->m];
    sp_shuffle_reader_options_t o = {.order = SP_READ_UNORDERED};
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    sp_block_list_t *list = NULL;
    sp_conf_t *conf = NULL;
    unsigned *seen = calloc(job->p1 - job->p0, sizeof(*seen));
    bool more = true;

    job->status = SP_ERR_INTERNAL;
    if (seen == NULL || sp_conf_dup(g.conf, &conf) != SP_OK ||
        sp_conf_set(conf, "shuffle.max_bytes_in_flight", job->max_in_flight) != SP_OK ||
        sp_block_list_from_statuses(&st, 1, job->p0, job->p1, &list) != SP_OK ||
        sp_block_fetcher_transport_create(g.t, &o.fetcher) != SP_OK ||
        sp_task_memory_create(g.mm, job->task_id, &task) != SP_OK ||
        sp_shuffle_reader_open(task, conf, list, &o, &reader) != SP_OK) {
        snprintf(job->error, sizeof(job->error), "setup: %s", sp_last_error());
        goto out;
    }
    while (more) {
        const void *k, *v;
        size_t kl, vl;
        unsigned p;
        sp_status_t rst = sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more);

        if (rst != SP_OK) {
            job->status = rst;
            snprintf(job->error, sizeof(job->error), "next: %s", sp_last_error());
            goto out;
        }
        if (!more)
            break;
        if (kl != 6 || vl != vlen || sscanf((const char *)k + 1, "%5u", &p) != 1 || p < job->p0 ||
            p >= job->p1 || seen[p - job->p0] >= recs) {
            snprintf(job->error, sizeof(job->error), "record %llu: key or length wrong",
                     (unsigned long long)job->records);
            goto out;
        }
        /* Records of a partition come in the order written: the index is the count so far. */
        for (size_t j = 0; j < vl; j++) {
            if (((const unsigned char *)v)[j] != value_byte(job->m, p, seen[p - job->p0], j)) {
                snprintf(job->error, sizeof(job->error),
                         "map %u partition %u record %u: byte %zu differs", job->m, p,
                         seen[p - job->p0], j);
                goto out;
            }
        }
        seen[p - job->p0]++;
        job->records++;
    }
    for (unsigned p = job->p0; p < job->p1; p++) {
        if (seen[p - job->p0] != recs) {
            snprintf(job->error, sizeof(job->error), "partition %u: %u records, not %u", p,
                     seen[p - job->p0], recs);
            goto out;
        }
    }
    sp_shuffle_reader_stats(reader, &job->stats);
    job->status = SP_OK;
out:
    sp_shuffle_reader_close(reader);
    sp_task_memory_destroy(task, NULL);
    sp_block_fetcher_destroy(o.fetcher);
    sp_block_list_destroy(list);
    sp_conf_destroy(conf);
    free(seen);
    return NULL;
}

static void check_job(const read_job_t *job)
{
    if (job->status != SP_OK)
        fail_msg("%s: map %u partitions %u-%u: %s (%s)", g.provider, job->m, job->p0, job->p1,
                 job->error, sp_status_str(job->status));
}

static void test_remote_many_small_blocks_within_in_flight_limit(void **state)
{
    read_job_t job = {.m = 0, .p0 = 0, .p1 = SMALL_PARTS, .task_id = 100, .max_in_flight = "64k"};

    (void)state;
    read_partitions(&job);
    check_job(&job);
    assert_int_equal(job.records, SMALL_PARTS);
    assert_int_equal(job.stats.blocks, SMALL_PARTS);
    /* 64k / 5 per request: about a dozen blocks a request, four or five requests in flight. */
    assert_true(job.stats.requests > SMALL_PARTS / 20);
    assert_true(job.stats.peak_in_flight <= 64u << 10);
    assert_true(job.stats.peak_in_flight > 16u << 10); /* and it did keep several in flight */
    print_message("%s: %llu requests, peak %llu bytes in flight\n", g.provider,
                  (unsigned long long)job.stats.requests,
                  (unsigned long long)job.stats.peak_in_flight);
}

static void test_remote_few_large_blocks(void **state)
{
    read_job_t job = {.m = 1, .p0 = 0, .p1 = LARGE_PARTS, .task_id = 101, .max_in_flight = "160m"};

    (void)state;
    read_partitions(&job);
    check_job(&job);
    assert_int_equal(job.records, (uint64_t)LARGE_PARTS * LARGE_RECS);
    assert_int_equal(job.stats.blocks, LARGE_PARTS);
    assert_true(job.stats.bytes >= (uint64_t)LARGE_PARTS * LARGE_RECS * LARGE_VALUE);
    assert_true(job.stats.peak_in_flight <= 160u << 20);
}

static void test_remote_two_reader_threads_on_one_transport(void **state)
{
    read_job_t jobs[4] = {
        {.m = 0, .p0 = 0, .p1 = SMALL_PARTS / 2, .task_id = 200, .max_in_flight = "64k"},
        {.m = 0, .p0 = SMALL_PARTS / 2, .p1 = SMALL_PARTS, .task_id = 201, .max_in_flight = "64k"},
        {.m = 1, .p0 = 0, .p1 = 1, .task_id = 202, .max_in_flight = "160m"},
        {.m = 1, .p0 = 1, .p1 = 2, .task_id = 203, .max_in_flight = "160m"},
    };
    pthread_t threads[2];
    sp_transport_stats_t before, after;

    (void)state;
    sp_transport_stats(g.t, &before);
    /* Two rounds of two threads: small blocks against small, then large against large. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 2; i++)
            assert_int_equal(
                pthread_create(&threads[i], NULL, read_partitions, &jobs[2 * round + i]), 0);
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_join(threads[i], NULL), 0);
        for (int i = 0; i < 2; i++)
            check_job(&jobs[2 * round + i]);
    }
    assert_int_equal(jobs[0].records + jobs[1].records, SMALL_PARTS);
    assert_int_equal(jobs[2].records + jobs[3].records, (uint64_t)LARGE_PARTS * LARGE_RECS);
    sp_transport_stats(g.t, &after);
    assert_int_equal(after.fetches_completed - before.fetches_completed, SMALL_PARTS + LARGE_PARTS);
    assert_int_equal(after.fetches_failed, before.fetches_failed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_many_small_blocks_within_in_flight_limit),
        cmocka_unit_test(test_remote_few_large_blocks),
        cmocka_unit_test(test_remote_two_reader_threads_on_one_transport),
    };
    int rc;

    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof(dir), "/tmp/spate-test-blocks-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests_name("tcp;ofi_rxm", tests, setup_tcp, remote_teardown);
    rc += cmocka_run_group_tests_name("shm", tests, setup_shm, remote_teardown);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            rc = 1;
    }
    return rc;
}
