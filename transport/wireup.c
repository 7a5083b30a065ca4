/*
 * Wire-up of a transport under MPI: one MPI_Allgather of fixed-size address
 * slots (length-prefixed), then every other rank added as a peer. Every
 * length read from a slot is checked before it is used.
 */
#include "bytes.h"
#include "transport_int.h"

#include <mpi.h>
#include <string.h>

#define SP_WIREUP_SLOT (4 + SP_TRANSPORT_ADDR_MAX)

sp_status_t sp_transport_wireup_mpi(sp_transport_t *t, uint32_t *peers_p, size_t count)
{
    unsigned char mine[SP_WIREUP_SLOT] = {0}, *all;
    int initialized = 0, finalized = 0, rank = 0, size = 0, rc;
    size_t len = 0;
    sp_status_t st;

    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return SP_RAISE(SP_ERR_UNSUPPORTED, "wire-up over MPI needs MPI to be initialized");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if ((size_t)size > count)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "wire-up of %d ranks into room for %zu", size, count);
    st = sp_transport_address(t, mine + 4, SP_TRANSPORT_ADDR_MAX, &len);
    if (st != SP_OK)
        return st;
    sp__le_put_u32(mine, (uint32_t)len);
    all = sp__malloc((size_t)size * SP_WIREUP_SLOT);
    if (all == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %d addresses", size);
    rc = MPI_Allgather(mine, SP_WIREUP_SLOT, MPI_BYTE, all, SP_WIREUP_SLOT, MPI_BYTE,
                       MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) {
        sp__free(all);
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Allgather of addresses failed (MPI error %d)", rc);
    }
    for (int r = 0; r < size && st == SP_OK; r++) {
        const unsigned char *slot = all + (size_t)r * SP_WIREUP_SLOT;
        size_t alen = sp__le_get_u32(slot);

        peers_p[r] = UINT32_MAX;
        if (r == rank)
            continue;
        if (alen == 0 || alen > SP_TRANSPORT_ADDR_MAX)
            st = SP_RAISE(SP_ERR_BAD_FORMAT, "rank %d sent an address of %zu bytes", r, alen);
        else
            st = sp_transport_add_peer(t, slot + 4, alen, &peers_p[r]);
    }
    sp__free(all);
    return st;
}
