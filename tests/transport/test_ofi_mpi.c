/*
 * The ofi backend under mpirun, with MPI only as the bootstrap: every rank
 * opens an ofi transport (tcp;ofi_rxm on loopback), wires up with
 * sp_transport_wireup_mpi(), serves a region whose bytes depend on its rank,
 * exchanges packed keys with MPI_Allgather, and reads 1 MiB from every other
 * rank one-sided, checking the owner's bytes. CTest runs it on 2, 3 and 4
 * ranks.
 */
/* LABELS: mpi fabric */
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#define REGION (4u << 20)

static unsigned char pattern(int rank, size_t i)
{
    return (unsigned char)((i * 13u + (size_t)rank * 101u) & 0xff);
}

static void test_ofi_wireup_over_mpi_and_fetch_from_every_rank(void **state)
{
    sp_conf_t *conf = NULL;
    sp_transport_t *t = NULL;
    sp_mr_t *served = NULL, *dest_mr = NULL;
    unsigned char *region = malloc(REGION), *dest = malloc(REGION), key[SP_TRANSPORT_RKEY_MAX];
    unsigned char *keys;
    uint32_t *peers;
    size_t klen = 0;
    int rank = 0, size = 0;

    (void)state;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    peers = calloc((size_t)size, sizeof(*peers));
    keys = calloc((size_t)size, SP_TRANSPORT_RKEY_MAX);
    assert_non_null(region);
    assert_non_null(dest);
    for (size_t i = 0; i < REGION; i++)
        region[i] = pattern(rank, i);
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.backend", "ofi"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.provider", "tcp;ofi_rxm"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "transport.timeout", "20s"), SP_OK);
    assert_int_equal(sp_transport_open(conf, &t), SP_OK);
    assert_int_equal(sp_transport_wireup_mpi(t, peers, (size_t)size), SP_OK);
    assert_int_equal(peers[rank], UINT32_MAX);
    assert_int_equal(sp_transport_mr_reg(t, region, REGION, true, &served), SP_OK);
    assert_int_equal(sp_transport_mr_reg(t, dest, REGION, false, &dest_mr), SP_OK);
    assert_int_equal(sp_transport_mr_pack(served, key, sizeof(key), &klen), SP_OK);
    assert_int_equal(klen <= SP_TRANSPORT_RKEY_MAX, 1);
    assert_int_equal(MPI_Allgather(key, SP_TRANSPORT_RKEY_MAX, MPI_BYTE, keys,
                                   SP_TRANSPORT_RKEY_MAX, MPI_BYTE, MPI_COMM_WORLD),
                     MPI_SUCCESS);
    for (int r = 0; r < size; r++) {
        size_t n = 0;
        sp_transport_completion_t done;

        if (r == rank)
            continue;
        assert_int_equal(sp_transport_fetch(t, peers[r], keys + (size_t)r * SP_TRANSPORT_RKEY_MAX,
                                            klen, 777, 1u << 20, dest, dest_mr, NULL),
                         SP_OK);
        while (n == 0)
            assert_int_equal(sp_transport_poll(t, &done, 1, 100, &n), SP_OK);
        assert_int_equal(done.status, SP_OK);
        assert_int_equal(done.peer, peers[r]);
        for (size_t i = 0; i < (1u << 20); i++) {
            if (dest[i] != pattern(r, 777 + i))
                fail_msg("rank %d: byte %zu from rank %d is wrong", rank, i, r);
        }
    }
    /* Everyone stays up (and its progress thread serving) until all are done. */
    MPI_Barrier(MPI_COMM_WORLD);
    sp_transport_mr_dereg(dest_mr);
    sp_transport_mr_dereg(served);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    free(region);
    free(dest);
    free(keys);
    free(peers);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ofi_wireup_over_mpi_and_fetch_from_every_rank),
    };
    int provided = 0, failed;

    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    sp_log_set_level(SP_LOG_ERROR);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return failed != 0 ? 1 : 0;
}
