/*
 * A whole shuffle across the ranks of one mpirun over the mpi transport
 * (CTest runs it on 2, 3 and 4 ranks), with transport.mpi_mode=rget (and
 * transport.backend=auto, which is mpi under mpirun), with twosided, and with
 * transport.local=true (the ranks share this host, so every read goes to the
 * files directly; the backend is then "mpi+local"). The first two register
 * the served files in chunks of one page (transport.register_chunk=4k), so
 * that most blocks straddle chunks and are read in parts. Every rank commits two key-ordered map
 * outputs, serves them (sp_map_output_serve), and sends their statuses in wire form to every other
 * rank (MPI_Allgatherv); every rank then reads the reduce partitions it owns (p % size == rank)
 * from all map outputs, its own in place and the others' over the transport, unordered and merged,
 * and compares each key's record count and value total with what a single process computes from the
 * same records.
 */
/* LABELS: mpi */
#include "shuffle_model.h"
#include <spate/shuffle.h>
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAPS_PER_RANK 2

static struct world {
    const char *mode, *backend, *expect;
    bool local;
    int rank, size;
    char dir[256];
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_transport_t *t;
    sp_served_output_t *served[MAPS_PER_RANK];
    sp_map_status_t **st; /* size * MAPS_PER_RANK, by global map id */
} w;

static sp_map_status_t *write_map(unsigned m) { return model_write_map(w.conf, w.mm, 3, m); }

static int world_setup(void **state)
{
    unsigned char *mine = NULL, *all = NULL;
    int *lens, *displs, mine_len = 0, total = 0;
    char cmd[600];

    (void)state;
    snprintf(w.dir, sizeof(w.dir), "/tmp/spate-test-mpishuffle-%d-%s%s", (int)getpid(), w.mode,
             w.local ? "-local" : "");
    snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", w.dir, w.dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(sp_conf_create(&w.conf), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "memory.executor", "64m"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "shuffle.local_dirs", w.dir), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.backend", w.backend), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.mpi_mode", w.mode), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.local", w.local ? "true" : "false"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.register_chunk", w.local ? "256m" : "4k"),
                     SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.timeout", "20s"), SP_OK);
    assert_int_equal(sp_memory_manager_create(w.conf, NULL, 0, &w.mm), SP_OK);
    assert_int_equal(sp_transport_open(w.conf, &w.t), SP_OK); /* collective */
    assert_string_equal(sp_transport_backend(w.t), w.expect);

    /* Commit and serve this rank's maps; gather everyone's statuses in wire form. */
    for (unsigned j = 0; j < MAPS_PER_RANK; j++) {
        unsigned m = (unsigned)w.rank * MAPS_PER_RANK + j;
        sp_map_status_t *st = write_map(m);
        void *buf = NULL;
        size_t len = 0;

        assert_int_equal(sp_map_output_serve(w.t, st, &w.served[j]), SP_OK);
        assert_non_null(st->rkey);
        assert_int_equal(sp_map_status_serialize(st, 100000, 0, &buf, &len), SP_OK);
        mine = realloc(mine, (size_t)mine_len + sizeof(uint32_t) + len);
        assert_non_null(mine);
        memcpy(mine + mine_len, &(uint32_t){(uint32_t)len}, sizeof(uint32_t));
        memcpy(mine + mine_len + sizeof(uint32_t), buf, len);
        mine_len += (int)(sizeof(uint32_t) + len);
        free(buf);
        sp_map_status_destroy(st);
    }
    if (!w.local) {
        sp_transport_stats_t s;
        sp_transport_stats(w.t, &s);
        /* Files of tens of KiB in chunks of 4 KiB: several registrations each. */
        assert_true(s.regions_registered > 4 * MAPS_PER_RANK);
    }
    lens = calloc((size_t)w.size, sizeof(*lens));
    displs = calloc((size_t)w.size, sizeof(*displs));
    assert_non_null(lens);
    assert_non_null(displs);
    MPI_Allgather(&mine_len, 1, MPI_INT, lens, 1, MPI_INT, MPI_COMM_WORLD);
    for (int r = 0; r < w.size; r++) {
        displs[r] = total;
        total += lens[r];
    }
    all = malloc((size_t)total);
    assert_non_null(all);
    MPI_Allgatherv(mine, mine_len, MPI_BYTE, all, lens, displs, MPI_BYTE, MPI_COMM_WORLD);
    w.st = calloc((size_t)w.size * MAPS_PER_RANK, sizeof(*w.st));
    assert_non_null(w.st);
    for (int r = 0; r < w.size; r++) {
        const unsigned char *p = all + displs[r];
        for (unsigned j = 0; j < MAPS_PER_RANK; j++) {
            uint32_t len;
            sp_map_status_t *st = NULL;
            memcpy(&len, p, sizeof(len));
            assert_int_equal(sp_map_status_deserialize(p + sizeof(len), len, &st), SP_OK);
            if (r == w.rank) {
                /* Our own output: read in place, as an executor does. */
                free(st->address);
                st->address = NULL;
            }
            w.st[(size_t)r * MAPS_PER_RANK + j] = st;
            p += sizeof(len) + len;
        }
    }
    free(mine);
    free(all);
    free(lens);
    free(displs);
    return 0;
}

static int world_teardown(void **state)
{
    char cmd[600];

    (void)state;
    /* Every rank has read what it reads from the others before any stops serving. */
    MPI_Barrier(MPI_COMM_WORLD);
    for (unsigned j = 0; j < MAPS_PER_RANK; j++)
        sp_map_output_unserve(w.served[j]);
    for (size_t i = 0; i < (size_t)w.size * MAPS_PER_RANK; i++)
        sp_map_status_destroy(w.st[i]);
    free(w.st);
    sp_transport_close(w.t); /* collective */
    sp_memory_manager_destroy(w.mm);
    sp_conf_destroy(w.conf);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", w.dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup_rget(void **state)
{
    w.mode = "rget";
    w.backend = "auto";
    w.expect = "mpi";
    w.local = false;
    return world_setup(state);
}

static int setup_twosided(void **state)
{
    w.mode = "twosided";
    w.backend = w.expect = "mpi";
    w.local = false;
    return world_setup(state);
}

static int setup_local(void **state)
{
    w.mode = "rget";
    w.backend = "mpi";
    w.expect = "mpi+local";
    w.local = true;
    return world_setup(state);
}

static void read_partition(uint32_t r, sp_read_order_t order)
{
    unsigned maps = (unsigned)w.size * MAPS_PER_RANK;
    sp_shuffle_reader_options_t o = {.order = order};
    sp_shuffle_reader_t *reader = NULL;
    sp_task_memory_t *task = NULL;
    sp_block_list_t *list = NULL;
    uint64_t count[KEYS] = {0}, total[KEYS] = {0}, expect_count[KEYS] = {0},
             expect_total[KEYS] = {0};
    unsigned remote = 0;
    char last[4] = "";
    bool more = true;

    assert_int_equal(
        sp_block_list_from_statuses((const sp_map_status_t *const *)w.st, maps, r, r + 1, &list),
        SP_OK);
    for (size_t b = 0; b < list->count; b++)
        remote += list->blocks[b].address != NULL;
    assert_true(w.size == 1 || remote > 0);
    assert_int_equal(sp_block_fetcher_transport_create(w.t, &o.fetcher), SP_OK);
    assert_int_equal(sp_task_memory_create(w.mm, 1000 + r, &task), SP_OK);
    assert_int_equal(sp_shuffle_reader_open(task, w.conf, list, &o, &reader), SP_OK);
    while (more) {
        const void *k, *v;
        size_t kl, vl;
        uint64_t val;
        unsigned key;

        assert_int_equal(sp_shuffle_reader_next(reader, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        assert_int_equal(vl, 8);
        if (order == SP_READ_MERGE) {
            assert_true(memcmp(last, k, 4) <= 0);
            memcpy(last, k, 4);
        }
        key = model_key(k, kl);
        memcpy(&val, v, 8);
        count[key]++;
        total[key] += val;
    }
    /* The single-process answer, from the same records. */
    model_expect(maps, r, expect_count, expect_total);
    for (unsigned k = 0; k < KEYS; k++) {
        assert_int_equal(count[k], expect_count[k]);
        assert_int_equal(total[k], expect_total[k]);
    }
    sp_shuffle_reader_close(reader);
    sp_task_memory_destroy(task, NULL);
    sp_block_fetcher_destroy(o.fetcher);
    sp_block_list_destroy(list);
}

static void test_mpi_shuffle_every_rank_reads_its_partitions(void **state)
{
    sp_transport_stats_t s;

    (void)state;
    for (uint32_t r = (uint32_t)w.rank; r < PARTS; r += (uint32_t)w.size) {
        read_partition(r, SP_READ_UNORDERED);
        read_partition(r, SP_READ_MERGE);
    }
    sp_transport_stats(w.t, &s);
    assert_int_equal(s.fetches_failed, 0);
    if (w.size > 1 && w.rank < PARTS)
        assert_true(s.fetches_completed > 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mpi_shuffle_every_rank_reads_its_partitions),
    };
    int provided = 0, failed;

    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
    sp_log_set_level(SP_LOG_ERROR);
    failed = cmocka_run_group_tests_name("rget", tests, setup_rget, world_teardown);
    /* Two-sided, owners answer from their progress threads while they wait in barriers. */
    if (provided == MPI_THREAD_MULTIPLE)
        failed += cmocka_run_group_tests_name("twosided", tests, setup_twosided, world_teardown);
    failed += cmocka_run_group_tests_name("mpi+local", tests, setup_local, world_teardown);
    if (failed != 0)
        fprintf(stderr, "rank %d: %d test(s) failed\n", w.rank, failed);
    MPI_Finalize();
    return failed != 0 ? 1 : 0;
}
