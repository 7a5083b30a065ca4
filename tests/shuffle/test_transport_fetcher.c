/*
 * The transport block fetcher's buffers, in one process over the local
 * transport backend: a committed map output with two blocks bigger than
 * 2 MiB (not whole multiples of it: their buffers are huge-page mappings of
 * their own) and one small block (a malloc'd buffer) is served and fetched
 * back through sp_block_fetcher_transport_create(); every fetched block must
 * equal the bytes of the data file at its offset, with its checksum. An
 * allocation failure of a big block's buffer fails that block alone with
 * SP_ERR_NOMEM, and the same block fetched again succeeds.
 *
 * LABELS: unit fault
 */
#include <spate/memory.h>
#include <spate/shuffle.h>
#include <spate/transport.h>

#include "common_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/test_smaps_util.h"

#define MIB   ((size_t)1 << 20)
#define PARTS 3

static char dir[128];
static sp_conf_t *conf;
static sp_memory_manager_t *mm;
static sp_transport_t *transport;
static sp_map_status_t *status;
static sp_served_output_t *served;
static sp_block_list_t *list;

/* Records of partition p: their count and value size (p0 about 3 MiB, p2 about 5 MiB). */
static unsigned part_records(unsigned p) { return p == 0 ? 3 : p == 1 ? 10 : 5; }
static size_t part_value(unsigned p) { return p == 1 ? 100 : MIB + 17; }

static int group_setup(void **state)
{
    char cmd[700], local[300];
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_task_memory_t *task = NULL;
    unsigned char *v = malloc(MIB + 17);

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/spate-test-tfetch-%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
    snprintf(local, sizeof(local), "%s/local", dir);
    if (v == NULL || system(cmd) != 0 || sp_conf_create(&conf) != SP_OK ||
        sp_conf_set(conf, "memory.executor", "256m") != SP_OK ||
        sp_conf_set(conf, "memory.reserved", "0") != SP_OK ||
        sp_conf_set(conf, "memory.numa_bind", "false") != SP_OK ||
        sp_conf_set(conf, "shuffle.local_dirs", local) != SP_OK ||
        sp_conf_set(conf, "shuffle.compress", "false") != SP_OK ||
        sp_conf_set(conf, "shuffle.output", "disk") != SP_OK ||
        sp_conf_set(conf, "transport.backend", "local") != SP_OK ||
        sp_memory_manager_create(conf, NULL, 0, &mm) != SP_OK ||
        sp_transport_open(conf, &transport) != SP_OK ||
        sp_task_memory_create(mm, 1, &task) != SP_OK ||
        sp_shuffle_writer_options_init(&o, conf) != SP_OK) {
        fprintf(stderr, "setup: %s\n", sp_last_error());
        free(v);
        return -1;
    }
    o.shuffle_id = 3;
    o.map_id = 0;
    o.partitions = PARTS;
    if (sp_shuffle_writer_open(task, conf, &o, &w) != SP_OK)
        goto fail;
    for (unsigned p = 0; p < PARTS; p++) {
        for (unsigned i = 0; i < part_records(p); i++) {
            char key[16];
            snprintf(key, sizeof(key), "k%u.%u", p, i);
            for (size_t j = 0; j < part_value(p); j++)
                v[j] = (unsigned char)(p * 31 + i * 7 + j);
            if (sp_shuffle_writer_write(w, p, key, strlen(key), v, part_value(p)) != SP_OK)
                goto fail;
        }
    }
    if (sp_shuffle_writer_commit(w, &status) != SP_OK)
        goto fail;
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    free(v);
    if (sp_map_output_serve(transport, status, &served) != SP_OK ||
        sp_block_list_from_statuses((const sp_map_status_t *const *)&status, 1, 0, PARTS, &list) !=
            SP_OK) {
        fprintf(stderr, "serve: %s\n", sp_last_error());
        return -1;
    }
    return 0;

fail:
    fprintf(stderr, "write: %s\n", sp_last_error());
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    free(v);
    return -1;
}

static int group_teardown(void **state)
{
    char cmd[300];

    (void)state;
    sp_block_list_destroy(list);
    sp_map_output_unserve(served);
    sp_map_status_destroy(status);
    sp_transport_close(transport);
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* What a fetch delivered, per block. */
typedef struct got {
    bool done;
    sp_status_t status;
    const void *data;
    size_t len;
    uint64_t expected;
} got_t;

static void on_done(void *arg, size_t index, sp_status_t st, const void *data, size_t len,
                    uint64_t expected)
{
    got_t *g = arg;

    g[index].done = true;
    g[index].status = st;
    g[index].data = data;
    g[index].len = len;
    g[index].expected = expected;
}

/* Fetches blocks[0..n) and waits (generously) until each is done. */
static void fetch_all(sp_block_fetcher_t *f, const sp_block_ref_t *blocks, size_t n, got_t *g)
{
    uint64_t deadline = sp__now_ns() + 60ull * 1000000000u;
    bool all;

    memset(g, 0, n * sizeof(*g));
    assert_int_equal(f->ops->fetch(f, blocks, n, on_done, g), SP_OK);
    do {
        all = true;
        for (size_t i = 0; i < n; i++)
            all = all && g[i].done;
        if (!all)
            assert_int_equal(f->ops->progress(f, 100), SP_OK);
    } while (!all && sp__now_ns() < deadline);
    assert_true(all);
}

/* The block's bytes as the data file holds them. */
static void assert_block_bytes(const sp_block_ref_t *b, const got_t *g)
{
    char path[512];
    size_t n = strlen(b->index_path);
    unsigned char *want = malloc(b->size != 0 ? b->size : 1);
    int fd;

    assert_int_equal(g->status, SP_OK);
    assert_int_equal(g->len, b->size);
    assert_int_equal(g->expected, b->checksum);
    assert_true(n > 6 && n - 6 + 6 < sizeof(path));
    memcpy(path, b->index_path, n - 6);
    strcpy(path + n - 6, ".data");
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_non_null(want);
    assert_int_equal(pread(fd, want, b->size, (off_t)b->offset), (ssize_t)b->size);
    close(fd);
    assert_memory_equal(g->data, want, b->size);
    free(want);
}

static void test_fetcher_big_and_small_blocks(void **state)
{
    sp_block_fetcher_t *f = NULL;
    got_t g[PARTS];
    size_t big = 0;

    (void)state;
    assert_int_equal(list->count, PARTS);
    assert_int_equal(sp_block_fetcher_transport_create(transport, &f), SP_OK);
    fetch_all(f, list->blocks, list->count, g);
    for (size_t i = 0; i < list->count; i++) {
        const sp_block_ref_t *b = &list->blocks[i];
        assert_non_null(b->address);
        assert_true(b->exact);
        assert_block_bytes(b, &g[i]);
        if (b->size > 2 * MIB && b->size % (2 * MIB) != 0) {
            /* A mapping of its own, aligned and madvised for huge pages (where the kernel has
             * them). */
            big++;
            assert_int_equal((uintptr_t)g[i].data % (2 * MIB), 0);
            if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0)
                assert_true(test_mapping_has_hugepage_flag(g[i].data));
        }
        f->ops->release(f, g[i].data, g[i].len);
    }
    assert_int_equal(big, 2); /* both big blocks took the huge-page path */
    sp_block_fetcher_destroy(f);
}

static void test_fetcher_big_buffer_refused(void **state)
{
    const sp_block_ref_t *b = &list->blocks[0];
    sp_block_fetcher_t *f = NULL;
    uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);
    got_t g[1];

    (void)state;
    assert_true(b->size > 2 * MIB);
    assert_int_equal(sp_block_fetcher_transport_create(transport, &f), SP_OK);
    /* The request, then its buffer: the second allocation of the fetch fails. */
    sp__fault_arm(SP_FAULT_ALLOC, 2);
    fetch_all(f, b, 1, g);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired + 1);
    assert_int_equal(g[0].status, SP_ERR_NOMEM);
    assert_null(g[0].data);

    fetch_all(f, b, 1, g);
    assert_block_bytes(b, &g[0]);
    f->ops->release(f, g[0].data, g[0].len);
    sp_block_fetcher_destroy(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetcher_big_and_small_blocks),
        cmocka_unit_test(test_fetcher_big_buffer_refused),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
