/*
 * Frames and the base conn: the part of a control connection that every
 * backend shares. A frame is a 12-byte header {magic 'SPCM', version, type,
 * payload length}, little endian, then the payload; every header field is
 * checked on receive (sp__ctl_header_check) before anything is allocated
 * for the payload. A conn is a backend behind sp__ctl_ops_t (sock.c: stream
 * sockets; mpi.c: a rank of a private communicator) that embeds
 * sp__ctl_conn_t as its first member.
 *
 * This file moves whole frames over the ops: concurrent senders on one conn
 * take turns under its send lock, so each frame goes out whole; receivers
 * take turns under its receive lock; both count what passes. A receive waits
 * for its deadline with poll() on a stream conn's fd, and on an MPI conn,
 * which has nothing to poll, probes between pauses of 50 to 200 us (doubling
 * while idle). Types below SP__CTL_TYPE_FIRST belong to the channel (the
 * handshake): sp__ctl_send refuses them, and a conn that receives one after
 * the handshake fails, since no well-behaved peer sends one.
 */
#include "control/control_int.h"
#include "bytes.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

void sp__ctl_header_pack(unsigned char *header, uint16_t type, uint32_t len)
{
    sp__le_put_u32(header, SP__CTL_MAGIC);
    sp__le_put_u16(header + 4, SP__CTL_VERSION);
    sp__le_put_u16(header + 6, type);
    sp__le_put_u32(header + 8, len);
}

sp_status_t sp__ctl_header_check(const sp__ctl_conn_t *c, const unsigned char *header,
                                 uint16_t *type_p, uint32_t *len_p)
{
    uint32_t magic = sp__le_get_u32(header), len = sp__le_get_u32(header + 8);
    uint16_t version = sp__le_get_u16(header + 4);

    if (magic != SP__CTL_MAGIC)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control frame from %s: bad magic 0x%08x (expected 0x%08x, 'SPCM')",
                        c->peer, magic, SP__CTL_MAGIC);
    if (version != SP__CTL_VERSION)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control frame from %s: unsupported version %u (this build speaks %u)",
                        c->peer, version, SP__CTL_VERSION);
    if (len > SP__CTL_MAX_PAYLOAD)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control frame from %s: a %u-byte payload is above the limit of %u bytes",
                        c->peer, len, SP__CTL_MAX_PAYLOAD);
    *type_p = sp__le_get_u16(header + 6);
    *len_p = len;
    return SP_OK;
}

uint64_t sp__ctl_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return UINT64_MAX;
    return sp__now_ns() + (uint64_t)timeout_ms * 1000000u;
}

/* Nanoseconds left until deadline (UINT64_MAX: forever). */
uint64_t sp__ctl_left(uint64_t deadline)
{
    uint64_t now;

    if (deadline == UINT64_MAX)
        return UINT64_MAX;
    now = sp__now_ns();
    return deadline > now ? deadline - now : 0;
}

void sp__ctl_sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/*
 * ppoll() for at most wait_ns (UINT64_MAX: forever), retrying EINTR with
 * what is left. Returns the count of ready fds (0 on timeout), -1 with
 * errno on failure.
 */
int sp__ctl_ppoll(struct pollfd *fds, size_t nfds, uint64_t wait_ns)
{
    uint64_t deadline = wait_ns == UINT64_MAX ? UINT64_MAX : sp__now_ns() + wait_ns;

    for (;;) {
        uint64_t left = sp__ctl_left(deadline);
        struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u),
                              .tv_nsec = (long)(left % 1000000000u)};
        int rc = ppoll(fds, (nfds_t)nfds, left == UINT64_MAX ? NULL : &ts, NULL);

        if (rc >= 0 || errno != EINTR)
            return rc;
    }
}

sp_status_t sp__ctl_conn_init(sp__ctl_conn_t *c, const sp__ctl_ops_t *ops, int fd, const char *peer)
{
    int rc;

    c->ops = ops;
    c->fd = fd;
    c->buffered = false;
    atomic_init(&c->send_timeout, SP__CTL_SEND_TIMEOUT_MS);
    atomic_init(&c->msgs_sent, 0);
    atomic_init(&c->bytes_sent, 0);
    atomic_init(&c->msgs_received, 0);
    atomic_init(&c->bytes_received, 0);
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    if ((rc = pthread_mutex_init(&c->send_lock, NULL)) != 0)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "control connection to %s: mutex: %s", peer,
                        strerror(rc));
    if ((rc = pthread_mutex_init(&c->recv_lock, NULL)) != 0) {
        pthread_mutex_destroy(&c->send_lock);
        return SP_RAISE(SP_ERR_NO_RESOURCE, "control connection to %s: mutex: %s", peer,
                        strerror(rc));
    }
    return SP_OK;
}

void sp__ctl_conn_fini(sp__ctl_conn_t *c)
{
    pthread_mutex_destroy(&c->recv_lock);
    pthread_mutex_destroy(&c->send_lock);
}

/* One frame of any type (the channel's own included), whole, under the send lock. */
sp_status_t sp__ctl_send_frame(sp__ctl_conn_t *c, uint16_t type, const void *payload, size_t len)
{
    unsigned char header[SP__CTL_HEADER_SIZE];
    sp_status_t st;

    if (len > SP__CTL_MAX_PAYLOAD)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "control message of %zu bytes to %s: above the limit of %u bytes", len,
                        c->peer, SP__CTL_MAX_PAYLOAD);
    sp__ctl_header_pack(header, type, (uint32_t)len);
    pthread_mutex_lock(&c->send_lock);
    st = c->ops->send(c, header, payload, len);
    pthread_mutex_unlock(&c->send_lock);
    if (st == SP_OK) {
        atomic_fetch_add_explicit(&c->msgs_sent, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->bytes_sent, SP__CTL_HEADER_SIZE + len, memory_order_relaxed);
    }
    return st;
}

/* try_recv under the receive lock, counting what arrives. */
sp_status_t sp__ctl_try(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p, void **payload_p,
                        size_t *len_p)
{
    sp_status_t st;

    pthread_mutex_lock(&c->recv_lock);
    st = c->ops->try_recv(c, got_p, type_p, payload_p, len_p);
    pthread_mutex_unlock(&c->recv_lock);
    if (st == SP_OK && *got_p) {
        atomic_fetch_add_explicit(&c->msgs_received, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->bytes_received, SP__CTL_HEADER_SIZE + *len_p,
                                  memory_order_relaxed);
    }
    return st;
}

/*
 * The next frame of any type by deadline; what names the awaited frame in
 * the timeout's message ("a control message", "the handshake's HELLO").
 */
sp_status_t sp__ctl_recv_frame(sp__ctl_conn_t *c, uint64_t deadline, int timeout_ms,
                               const char *what, uint16_t *type_p, void **payload_p, size_t *len_p)
{
    uint64_t backoff = SP__CTL_PROBE_MIN_NS;

    for (;;) {
        bool got = false;
        uint64_t left;
        sp_status_t st = sp__ctl_try(c, &got, type_p, payload_p, len_p);

        if (st != SP_OK || got)
            return st;
        left = sp__ctl_left(deadline);
        if (left == 0)
            return SP_RAISE(SP_ERR_TIMED_OUT, "%s from %s did not arrive within %d ms", what,
                            c->peer, timeout_ms);
        if (c->fd >= 0) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};

            if (sp__ctl_ppoll(&pfd, 1, left) < 0)
                return SP_RAISE(SP_ERR_INTERNAL, "poll on the connection to %s: %s (errno %d)",
                                c->peer, strerror(errno), errno);
        } else {
            sp__ctl_sleep_ns(SP_MIN(backoff, left));
            backoff = SP_MIN(backoff * 2, SP__CTL_PROBE_MAX_NS);
        }
    }
}

/* A channel type (handshake) where only the protocol's may come. */
sp_status_t sp__ctl_unexpected(const sp__ctl_conn_t *c, uint16_t type)
{
    return SP_RAISE(SP_ERR_BAD_FORMAT,
                    "control frame from %s: type %u is reserved for the channel (protocol "
                    "types start at %u)",
                    c->peer, type, SP__CTL_TYPE_FIRST);
}

sp_status_t sp__ctl_send(sp__ctl_conn_t *conn, uint16_t type, const void *payload, size_t len)
{
    if (type < SP__CTL_TYPE_FIRST)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control message type %u to %s is reserved for the channel (protocol "
                        "types start at %u)",
                        type, conn->peer, SP__CTL_TYPE_FIRST);
    if (payload == NULL && len > 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control message to %s: %zu bytes at NULL",
                        conn->peer, len);
    return sp__ctl_send_frame(conn, type, payload, len);
}

sp_status_t sp__ctl_recv(sp__ctl_conn_t *conn, int timeout_ms, uint16_t *type_p, void **payload_p,
                         size_t *len_p)
{
    uint16_t type = 0;
    void *payload = NULL;
    size_t len = 0;
    sp_status_t st = sp__ctl_recv_frame(conn, sp__ctl_deadline(timeout_ms), timeout_ms,
                                        "a control message", &type, &payload, &len);

    if (st != SP_OK)
        return st;
    if (type < SP__CTL_TYPE_FIRST) {
        sp__free(payload);
        return sp__ctl_fail_rx(conn, sp__ctl_unexpected(conn, type));
    }
    *type_p = type;
    *payload_p = payload;
    *len_p = len;
    return SP_OK;
}

int sp__ctl_fd(const sp__ctl_conn_t *conn) { return conn->fd; }

const char *sp__ctl_peer_name(const sp__ctl_conn_t *conn) { return conn->peer; }

void sp__ctl_set_peer_name(sp__ctl_conn_t *conn, const char *name)
{
    snprintf(conn->peer, sizeof(conn->peer), "%s", name);
}

void sp__ctl_set_send_timeout(sp__ctl_conn_t *conn, int timeout_ms)
{
    atomic_store(&conn->send_timeout, timeout_ms);
}

void sp__ctl_conn_stats(const sp__ctl_conn_t *conn, sp__ctl_stats_t *stats)
{
    /* C11's atomic_load takes a pointer to non-const. */
    sp__ctl_conn_t *c = (sp__ctl_conn_t *)conn;

    stats->msgs_sent = atomic_load_explicit(&c->msgs_sent, memory_order_relaxed);
    stats->bytes_sent = atomic_load_explicit(&c->bytes_sent, memory_order_relaxed);
    stats->msgs_received = atomic_load_explicit(&c->msgs_received, memory_order_relaxed);
    stats->bytes_received = atomic_load_explicit(&c->bytes_received, memory_order_relaxed);
}

void sp__ctl_close(sp__ctl_conn_t *conn)
{
    if (conn == NULL)
        return;
    conn->ops->close(conn);
}
