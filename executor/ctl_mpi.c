/*
 * Control conns over MPI: the same frames as on a socket (header, then
 * payload), each one MPI message of MPI_BYTEs with a fixed tag on a
 * communicator private to the control plane, so that they never match the
 * transport's or the application's messages.
 *
 * A send posts MPI_Isend and completes it with MPI_Test and short sleeps
 * rather than MPI_Send, so a rank may send to itself and a send never
 * blocks the thread in the MPI library beyond the conn's send timeout. A
 * receive probes the peer (MPI_Iprobe), sizes the buffer from
 * MPI_Get_count and receives the whole frame; the header is checked like a
 * socket's. MPI gives no notice of a dead peer: the driver's heartbeat
 * timeout covers that. MPI must run with MPI_THREAD_MULTIPLE, as senders,
 * the receiving thread and the transport call MPI concurrently.
 */
#include "ctl.h"

#include "common_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_CTL_MPI_TAG 0x5350 /* "SP" */

typedef struct sp_ctl_mpi {
    sp__ctl_conn_t base;
    MPI_Comm comm;
    int peer;
} sp_ctl_mpi_t;

static sp_ctl_mpi_t *sp_ctl_mpi(sp__ctl_conn_t *c)
{
    return sp_container_of(c, sp_ctl_mpi_t, base);
}

static sp_status_t sp_ctl_mpi_send(sp__ctl_conn_t *c, const unsigned char *header,
                                   const void *payload, size_t len)
{
    sp_ctl_mpi_t *m = sp_ctl_mpi(c);
    uint64_t deadline = sp__ctl_deadline(atomic_load(&c->send_timeout)), pause = 1000;
    unsigned char *frame = sp__malloc(SP__CTL_HEADER_SIZE + len);
    MPI_Request req;
    int done = 0, rc;

    if (frame == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %zu-byte control message to %s", len,
                        c->peer);
    memcpy(frame, header, SP__CTL_HEADER_SIZE);
    if (len > 0)
        memcpy(frame + SP__CTL_HEADER_SIZE, payload, len);
    rc = MPI_Isend(frame, (int)(SP__CTL_HEADER_SIZE + len), MPI_BYTE, m->peer, SP_CTL_MPI_TAG,
                   m->comm, &req);
    if (rc != MPI_SUCCESS) {
        sp__free(frame);
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Isend of a control message to %s failed (%d)",
                        c->peer, rc);
    }
    while (!done) {
        if ((rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE)) != MPI_SUCCESS) {
            sp__free(frame);
            return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Test of a control message to %s failed (%d)",
                            c->peer, rc);
        }
        if (done)
            break;
        if (sp__now_ns() > deadline) {
            /* The request still references frame: it must not be freed. */
            MPI_Cancel(&req);
            MPI_Request_free(&req);
            return SP_RAISE(SP_ERR_TIMED_OUT, "control message to %s not delivered in time",
                            c->peer);
        }
        sp__ctl_sleep_ns(pause);
        pause = SP_MIN(pause * 2, (uint64_t)200000);
    }
    sp__free(frame);
    return SP_OK;
}

static sp_status_t sp_ctl_mpi_try_recv(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p,
                                       void **payload_p, size_t *len_p)
{
    sp_ctl_mpi_t *m = sp_ctl_mpi(c);
    unsigned char *frame, *payload = NULL;
    MPI_Status status;
    uint32_t plen;
    uint16_t type;
    int flag = 0, count = 0, rc;
    sp_status_t st;

    *got_p = false;
    rc = MPI_Iprobe(m->peer, SP_CTL_MPI_TAG, m->comm, &flag, &status);
    if (rc != MPI_SUCCESS)
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Iprobe for control messages from %s failed (%d)",
                        c->peer, rc);
    if (!flag)
        return SP_OK;
    MPI_Get_count(&status, MPI_BYTE, &count);
    if (count < 0)
        count = 0;
    frame = sp__malloc((size_t)count + 1);
    if (frame == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %d-byte control message from %s", count,
                        c->peer);
    rc = MPI_Recv(frame, count, MPI_BYTE, m->peer, SP_CTL_MPI_TAG, m->comm, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        sp__free(frame);
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Recv of a control message from %s failed (%d)",
                        c->peer, rc);
    }
    if ((size_t)count < SP__CTL_HEADER_SIZE) {
        sp__free(frame);
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message from %s: %d bytes, shorter than a header", c->peer, count);
    }
    if ((st = sp__ctl_header_check(c, frame, &type, &plen)) != SP_OK) {
        sp__free(frame);
        return st;
    }
    if ((size_t)plen != (size_t)count - SP__CTL_HEADER_SIZE) {
        sp__free(frame);
        return SP_RAISE(
            SP_ERR_BAD_FORMAT,
            "control message from %s: header says %u payload bytes, the message has %zu", c->peer,
            plen, (size_t)count - SP__CTL_HEADER_SIZE);
    }
    if (plen > 0) {
        if ((payload = sp__malloc(plen)) == NULL) {
            sp__free(frame);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a %u-byte control message from %s", plen,
                            c->peer);
        }
        memcpy(payload, frame + SP__CTL_HEADER_SIZE, plen);
    }
    sp__free(frame);
    *type_p = type;
    *payload_p = payload;
    *len_p = plen;
    *got_p = true;
    return SP_OK;
}

static void sp_ctl_mpi_close(sp__ctl_conn_t *c)
{
    sp__ctl_conn_fini(c);
    sp__free(sp_ctl_mpi(c));
}

static const sp__ctl_ops_t sp_ctl_mpi_ops = {
    .size = sizeof(sp__ctl_ops_t),
    .send = sp_ctl_mpi_send,
    .try_recv = sp_ctl_mpi_try_recv,
    .close = sp_ctl_mpi_close,
};

sp_status_t sp__ctl_conn_mpi(MPI_Comm comm, int peer_rank, sp__ctl_conn_t **conn_p)
{
    char name[32];
    int initialized = 0, level = 0, size = 0;
    sp_ctl_mpi_t *m;
    sp_status_t st;

    MPI_Initialized(&initialized);
    if (!initialized)
        return SP_RAISE(SP_ERR_UNSUPPORTED, "MPI control conns need MPI to be initialized");
    MPI_Query_thread(&level);
    if (level < MPI_THREAD_MULTIPLE)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "MPI control conns need MPI_THREAD_MULTIPLE (MPI runs at level %d)", level);
    MPI_Comm_size(comm, &size);
    if (peer_rank < 0 || peer_rank >= size)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "rank %d is not in a communicator of %d ranks",
                        peer_rank, size);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    if ((m = sp__calloc(1, sizeof(*m))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an MPI control conn");
    snprintf(name, sizeof(name), "rank %d", peer_rank);
    if ((st = sp__ctl_conn_init(&m->base, &sp_ctl_mpi_ops, -1, name)) != SP_OK) {
        sp__free(m);
        return st;
    }
    m->comm = comm;
    m->peer = peer_rank;
    *conn_p = &m->base;
    return SP_OK;
}
