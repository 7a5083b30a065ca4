/*
 * Control conns over MPI: the same frames as on a socket (header, then
 * payload), each one MPI message of MPI_BYTEs with a fixed tag on a
 * communicator private to the control plane, so that they never match the
 * transport's or the application's messages.
 *
 * A send never waits for its peer. It copies the frame, posts MPI_Isend and
 * returns; the request joins the conn's queue of sends in flight (at most
 * SP_CTL_MPI_MAX_PENDING), which every later send and every receive probe
 * completes with MPI_Test. MPI delivers the frames of one conn in the order
 * they were posted. A peer that takes nothing (a stopped or hung rank: MPI
 * gives no notice of one) costs the sender nothing until its oldest frame
 * has waited the conn's send timeout; the conn is then given up, naming
 * that peer: the send or probe that notices returns SP_ERR_PEER_LOST, and so
 * does every later one. So the driver's loop is never held in a send, keeps
 * reading the other ranks' heartbeats, and its heartbeat timeout names the
 * rank that went silent. Only a full queue makes a send wait, and no longer
 * than until its oldest frame's send timeout.
 *
 * A frame still in flight when its conn closes cannot be cancelled (MPI
 * implementations do not cancel sends) and its buffer must outlive it: it
 * moves to a process-wide list of orphans that later sends and closes
 * complete and free.
 *
 * A receive probes the peer (MPI_Iprobe), sizes the buffer from
 * MPI_Get_count and receives the whole frame; the header is checked like a
 * socket's. MPI must run with MPI_THREAD_MULTIPLE, as senders, the receiving
 * thread and the transport call MPI concurrently.
 */
#include "control/control_int.h"

#include "common_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_CTL_MPI_TAG 0x5350 /* "SP" */
/* Frames one conn may have in flight before a send waits for the oldest. */
#define SP_CTL_MPI_MAX_PENDING 64

/* One frame handed to MPI_Isend and not known to be complete. */
typedef struct sp_ctl_mpi_send {
    MPI_Request req;
    unsigned char *frame; /* header and payload; NULL once complete */
    size_t len;           /* payload bytes */
    uint64_t posted_ns;
} sp_ctl_mpi_send_t;

typedef struct sp_ctl_mpi {
    sp__ctl_conn_t base;
    MPI_Comm comm;
    int peer;
    /* Send side (send_lock): frames in flight, a ring, oldest at head. */
    sp_ctl_mpi_send_t pending[SP_CTL_MPI_MAX_PENDING];
    size_t head, npending;
    sp_status_t failed; /* the peer took nothing within the send timeout */
    char why[200];      /* and what was seen, for later calls */
} sp_ctl_mpi_t;

/* Sends of closed conns still in flight (sp_ctl_mpi_orphan_lock). */
static pthread_mutex_t sp_ctl_mpi_orphan_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_ctl_mpi_send_t *sp_ctl_mpi_orphans;
static size_t sp_ctl_mpi_norphans, sp_ctl_mpi_orphan_cap;

static sp_ctl_mpi_t *sp_ctl_mpi(sp__ctl_conn_t *c)
{
    return sp_container_of(c, sp_ctl_mpi_t, base);
}

/* True when the send is complete (its frame freed); a failed test counts as complete. */
static bool sp_ctl_mpi_test(sp_ctl_mpi_send_t *p)
{
    int done = 0;

    if (p->frame == NULL)
        return true;
    if (MPI_Test(&p->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        done = 1; /* the request is gone with its error; nothing refers to the frame */
    if (!done)
        return false;
    sp__free(p->frame);
    p->frame = NULL;
    return true;
}

/* Completes what it can of the orphans; the rest stay for the next call. */
static void sp_ctl_mpi_reap_orphans(void)
{
    size_t kept = 0;

    pthread_mutex_lock(&sp_ctl_mpi_orphan_lock);
    for (size_t i = 0; i < sp_ctl_mpi_norphans; i++)
        if (!sp_ctl_mpi_test(&sp_ctl_mpi_orphans[i]))
            sp_ctl_mpi_orphans[kept++] = sp_ctl_mpi_orphans[i];
    sp_ctl_mpi_norphans = kept;
    pthread_mutex_unlock(&sp_ctl_mpi_orphan_lock);
}

/* Keeps a send of a closing conn until MPI is done with its frame. */
static void sp_ctl_mpi_orphan(sp_ctl_mpi_send_t *p)
{
    pthread_mutex_lock(&sp_ctl_mpi_orphan_lock);
    if (sp_ctl_mpi_norphans == sp_ctl_mpi_orphan_cap) {
        size_t cap = sp_ctl_mpi_orphan_cap < 16 ? 16 : 2 * sp_ctl_mpi_orphan_cap;
        sp_ctl_mpi_send_t *grown = sp__realloc(sp_ctl_mpi_orphans, cap * sizeof(*grown));

        if (grown == NULL) {
            /* MPI frees the request when it completes; its frame is left to leak. */
            pthread_mutex_unlock(&sp_ctl_mpi_orphan_lock);
            MPI_Request_free(&p->req);
            return;
        }
        sp_ctl_mpi_orphans = grown;
        sp_ctl_mpi_orphan_cap = cap;
    }
    sp_ctl_mpi_orphans[sp_ctl_mpi_norphans++] = *p;
    pthread_mutex_unlock(&sp_ctl_mpi_orphan_lock);
}

/*
 * Completes what it can of the conn's sends in flight and checks the
 * oldest one left against the send timeout. SP_OK, or SP_ERR_PEER_LOST
 * naming the peer when it took nothing in time (now or before). Called
 * with send_lock held.
 */
static sp_status_t sp_ctl_mpi_progress(sp_ctl_mpi_t *m)
{
    sp__ctl_conn_t *c = &m->base;
    int timeout_ms = atomic_load(&c->send_timeout);
    const sp_ctl_mpi_send_t *oldest = NULL;
    uint64_t now;

    if (m->failed != SP_OK)
        return SP_RAISE(m->failed, "control conn to %s failed before (%s)", c->peer, m->why);
    for (size_t k = 0; k < m->npending; k++) {
        sp_ctl_mpi_send_t *p = &m->pending[(m->head + k) % SP_CTL_MPI_MAX_PENDING];

        if (!sp_ctl_mpi_test(p) && oldest == NULL)
            oldest = p;
    }
    while (m->npending > 0 && m->pending[m->head].frame == NULL) {
        m->head = (m->head + 1) % SP_CTL_MPI_MAX_PENDING;
        m->npending--;
    }
    if (oldest == NULL || timeout_ms < 0)
        return SP_OK;
    now = sp__now_ns();
    if (now - oldest->posted_ns <= (uint64_t)timeout_ms * 1000000u)
        return SP_OK;
    m->failed = SP_RAISE(SP_ERR_PEER_LOST,
                         "%s took no control message for %d ms (a %zu-byte one sent %.1f s ago "
                         "is still undelivered, %zu in flight): it is stopped, hung or gone",
                         c->peer, timeout_ms, oldest->len, (double)(now - oldest->posted_ns) / 1e9,
                         m->npending);
    snprintf(m->why, sizeof(m->why), "%s", sp_last_error());
    return m->failed;
}

static sp_status_t sp_ctl_mpi_send(sp__ctl_conn_t *c, const unsigned char *header,
                                   const void *payload, size_t len)
{
    sp_ctl_mpi_t *m = sp_ctl_mpi(c);
    uint64_t pause = 1000;
    sp_ctl_mpi_send_t *p;
    unsigned char *frame;
    sp_status_t st;
    int rc;

    sp_ctl_mpi_reap_orphans();
    if ((st = sp_ctl_mpi_progress(m)) != SP_OK)
        return st;
    /* A full queue: wait for room, at most until the oldest frame's send timeout. */
    while (m->npending == SP_CTL_MPI_MAX_PENDING) {
        sp__ctl_sleep_ns(pause);
        pause = SP_MIN(pause * 2, (uint64_t)200000);
        if ((st = sp_ctl_mpi_progress(m)) != SP_OK)
            return st;
    }
    frame = sp__malloc(SP__CTL_HEADER_SIZE + len);
    if (frame == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %zu-byte control message to %s", len,
                        c->peer);
    memcpy(frame, header, SP__CTL_HEADER_SIZE);
    if (len > 0)
        memcpy(frame + SP__CTL_HEADER_SIZE, payload, len);
    p = &m->pending[(m->head + m->npending) % SP_CTL_MPI_MAX_PENDING];
    rc = MPI_Isend(frame, (int)(SP__CTL_HEADER_SIZE + len), MPI_BYTE, m->peer, SP_CTL_MPI_TAG,
                   m->comm, &p->req);
    if (rc != MPI_SUCCESS) {
        sp__free(frame);
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Isend of a control message to %s failed (%d)",
                        c->peer, rc);
    }
    p->frame = frame;
    p->len = len;
    p->posted_ns = sp__now_ns();
    m->npending++;
    /* A small frame usually completes at once: its copy goes now. */
    (void)sp_ctl_mpi_test(p);
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
    /*
     * The probe also watches this conn's sends in flight, unless a sender
     * holds them: a peer that takes nothing is reported here too.
     */
    if (pthread_mutex_trylock(&c->send_lock) == 0) {
        st = sp_ctl_mpi_progress(m);
        pthread_mutex_unlock(&c->send_lock);
        if (st != SP_OK)
            return st;
    }
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
    sp_ctl_mpi_t *m = sp_ctl_mpi(c);

    for (size_t k = 0; k < m->npending; k++) {
        sp_ctl_mpi_send_t *p = &m->pending[(m->head + k) % SP_CTL_MPI_MAX_PENDING];

        if (!sp_ctl_mpi_test(p))
            sp_ctl_mpi_orphan(p);
    }
    sp_ctl_mpi_reap_orphans();
    sp__ctl_conn_fini(c);
    sp__free(m);
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
    m->failed = SP_OK;
    *conn_p = &m->base;
    return SP_OK;
}
