/*
 * A timed-out fetch over the mpi backend (transport.mpi_mode=twosided) on the
 * ranks of one mpirun (CTest runs it on 2, 3 and 4). The transports have no
 * progress thread, so an owner answers requests only inside its polls; rank 1
 * never polls while rank 0 reads 1 MiB from it with transport.timeout=1ms.
 * Rank 0 must hear of the timeout at once (SP_ERR_TIMED_OUT naming peer 1,
 * held: MPI may still write into the destination until the cancelled receive
 * is completed), then get the destination back (released) once MPI gave the
 * cancelled receive back, and nothing after that. Then every rank closes its
 * transport (collective), rank 1 with the request it never answered.
 */
/* LABELS: mpi */
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REGION (1u << 20)

typedef struct card {
    uint32_t klen;
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
} card_t;

static int rank, size;

/* Polls up to wait_s seconds for one completion; false when none came. */
static bool poll_one(sp_transport_t *t, int wait_s, sp_transport_completion_t *c)
{
    time_t t0 = time(NULL);
    size_t n = 0;

    while (n == 0 && time(NULL) - t0 < wait_s)
        assert_int_equal(sp_transport_poll(t, c, 1, 50, &n), SP_OK);
    return n == 1;
}

static void test_mpi_timeout_twosided_held_then_released(void **state)
{
    sp_conf_t *conf = NULL;
    sp_transport_t *t = NULL;
    sp_mr_t *region_mr = NULL, *dest_mr = NULL;
    unsigned char *region = calloc(1, REGION), *dest = calloc(1, REGION);
    uint32_t *peers = calloc((size_t)size, sizeof(*peers));
    card_t mine = {0}, *cards = calloc((size_t)size, sizeof(*cards));
    size_t klen = 0;

    (void)state;
    assert_non_null(region);
    assert_non_null(dest);
    assert_non_null(peers);
    assert_non_null(cards);
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.backend", "mpi"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.mpi_mode", "twosided"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", "1ms"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.progress_thread", "false"), SP_OK);
    assert_int_equal(sp_transport_open(conf, &t), SP_OK);
    assert_int_equal(sp_transport_wireup_mpi(t, peers, (size_t)size), SP_OK);
    assert_int_equal(sp_transport_mr_reg(t, region, REGION, true, &region_mr), SP_OK);
    assert_int_equal(sp_transport_mr_reg(t, dest, REGION, false, &dest_mr), SP_OK);
    assert_int_equal(sp_transport_mr_pack(region_mr, mine.key, sizeof(mine.key), &klen), SP_OK);
    mine.klen = (uint32_t)klen;
    MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, cards, sizeof(mine), MPI_BYTE, MPI_COMM_WORLD);
    if (rank == 0) {
        sp_transport_completion_t c;
        sp_transport_stats_t s;

        assert_int_equal(sp_transport_fetch(t, peers[1], cards[1].key, cards[1].klen, 0, REGION,
                                            dest, dest_mr, (void *)(uintptr_t)7),
                         SP_OK);
        assert_true(poll_one(t, 30, &c));
        assert_ptr_equal(c.context, (void *)(uintptr_t)7);
        assert_int_equal(c.status, SP_ERR_TIMED_OUT);
        assert_true(c.held);
        assert_false(c.released);
        assert_non_null(strstr(sp_last_error(), "from peer 1"));
        assert_non_null(strstr(sp_last_error(), "did not complete"));
        /* The receive is cancelled (no reply can have matched: rank 1 does not answer). */
        assert_true(poll_one(t, 30, &c));
        assert_ptr_equal(c.context, (void *)(uintptr_t)7);
        assert_true(c.released);
        assert_false(c.held);
        assert_false(poll_one(t, 1, &c));
        sp_transport_stats(t, &s);
        assert_int_equal(s.fetches_failed, 1);
        assert_int_equal(s.fetches_completed, 0);
    }
    /* Rank 1 waits here without a transport call: it never answers the request. */
    MPI_Barrier(MPI_COMM_WORLD);
    sp_transport_mr_dereg(dest_mr);
    sp_transport_mr_dereg(region_mr);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    free(cards);
    free(peers);
    free(dest);
    free(region);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mpi_timeout_twosided_held_then_released),
    };
    int provided = 0, failed;

    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    sp_log_set_level(SP_LOG_ERROR);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (failed != 0)
        fprintf(stderr, "rank %d: %d test(s) failed\n", rank, failed);
    MPI_Finalize();
    return failed != 0 ? 1 : 0;
}
