/*
 * Control conns over stream sockets (TCP, and socketpairs for an executor
 * inside the driver's process): sending and receiving frames, the receive
 * gate before authentication, addresses, listening, connecting and accepting.
 * The handshake's pieces are in auth.c; this file runs them in order.
 *
 * Traffic is small and latency bound: a few messages a second per executor
 * (heartbeats, task assignments and results) and an occasional large one
 * (a stage's map output statuses, a few MiB). So a frame goes out with one
 * sendmsg() of two iovecs (header and payload, no copy), TCP_NODELAY is set,
 * and a receiver reads ahead into a 16 KiB buffer so that small frames cost
 * one recv() each, while a large payload is read straight into its own
 * allocation.
 *
 * Every socket is non-blocking. A receiver assembles a frame across calls
 * (sp__ctl_sock_t's rx state), so a peer that stops in the middle of a frame
 * never blocks the hub, and sp__ctl_recv's timeout is exact; the header is
 * checked as soon as its 12 bytes are in, before anything is allocated for
 * the payload. A send writes the whole frame under the conn's send lock,
 * waiting with poll() for room up to the conn's send timeout. After a
 * broken stream (a bad header, a close mid-frame, a send abandoned
 * mid-frame) a conn stays failed in that direction, since the stream is no
 * longer in step; so does one whose peer sends a channel (handshake) frame
 * after the handshake, which no well-behaved peer does.
 *
 * A peer that has not authenticated costs a fixed amount, whatever it
 * sends. Until the MACs are checked a conn's gate (sp__ctl_gate_t) admits
 * only the fixed-size AUTH frame on the server (a client only small
 * answers), so a header announcing anything else is refused when its 12
 * bytes are in, before a payload buffer exists.
 *
 * When a conn fails, the message says what happened to its peer (closed,
 * reset, timed out in the kernel, a malformed or cut frame); the conn keeps
 * it for later calls ("failed before (...)") and the hub for later removals
 * of the id, so the cause reaches whoever reports the loss.
 */
#include "control/control_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static sp__ctl_sock_t *sp_ctl_sock(sp__ctl_conn_t *c)
{
    return sp_container_of(c, sp__ctl_sock_t, base);
}

/*
 * What a socket error err says happened to the peer of c, raised as
 * SP_ERR_PEER_LOST; op is "sending to" or "receiving from".
 */
static sp_status_t sp_ctl_sock_error(const sp__ctl_conn_t *c, const char *op, int err)
{
    switch (err) {
    case ECONNRESET:
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "%s reset the control connection (%s it: ECONNRESET, errno %d)", c->peer,
                        op, err);
    case EPIPE:
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "%s closed the control connection (%s it: EPIPE, errno %d)", c->peer, op,
                        err);
    case ETIMEDOUT:
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "the control connection to %s timed out in the kernel (its host stopped "
                        "answering: ETIMEDOUT, errno %d)",
                        c->peer, err);
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
        return SP_RAISE(SP_ERR_PEER_LOST, "%s became unreachable (%s it: %s, errno %d)", c->peer,
                        op, strerror(err), err);
    default:
        return SP_RAISE(SP_ERR_PEER_LOST, "%s %s: %s (errno %d)", op, c->peer, strerror(err), err);
    }
}

/* Marks the send side failed with st (just raised, so its message is the last error). */
static sp_status_t sp_ctl_sock_tx_fail(sp__ctl_sock_t *s, sp_status_t st)
{
    s->tx_failed = st;
    snprintf(s->tx_why, sizeof(s->tx_why), "%s", sp_last_error());
    return st;
}

static sp_status_t sp_ctl_sock_send(sp__ctl_conn_t *c, const unsigned char *header,
                                    const void *payload, size_t len)
{
    sp__ctl_sock_t *s = sp_ctl_sock(c);
    int timeout_ms = atomic_load(&c->send_timeout);
    uint64_t deadline = sp__ctl_deadline(timeout_ms);
    size_t total = SP__CTL_HEADER_SIZE + len, sent = 0;

    if (s->tx_failed != SP_OK)
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "control connection to %s failed before (%s): cannot send", c->peer,
                        s->tx_why);
    while (sent < total) {
        struct iovec iov[2];
        struct msghdr msg;
        ssize_t n;

        memset(&msg, 0, sizeof(msg));
        if (sent < SP__CTL_HEADER_SIZE) {
            iov[0].iov_base = (void *)(header + sent);
            iov[0].iov_len = SP__CTL_HEADER_SIZE - sent;
            iov[1].iov_base = (void *)payload;
            iov[1].iov_len = len;
            msg.msg_iovlen = len > 0 ? 2 : 1;
        } else {
            iov[0].iov_base = (void *)((const unsigned char *)payload + sent - SP__CTL_HEADER_SIZE);
            iov[0].iov_len = total - sent;
            msg.msg_iovlen = 1;
        }
        msg.msg_iov = iov;
        n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
            uint64_t left = sp__ctl_left(deadline);
            int rc = left == 0 ? 0 : sp__ctl_ppoll(&pfd, 1, left);

            if (rc > 0)
                continue;
            if (rc < 0)
                return sp_ctl_sock_tx_fail(s, SP_RAISE(SP_ERR_PEER_LOST,
                                                       "sending to %s: poll: %s (errno %d)",
                                                       c->peer, strerror(errno), errno));
            if (sent > 0) {
                SP_RAISE(SP_ERR_TIMED_OUT,
                         "sending a %zu-byte control message to %s: no room within %d ms "
                         "after %zu bytes; the connection is abandoned",
                         len, c->peer, timeout_ms, sent);
                sp_ctl_sock_tx_fail(s, SP_ERR_PEER_LOST);
                return SP_ERR_TIMED_OUT;
            }
            return SP_RAISE(SP_ERR_TIMED_OUT,
                            "sending a %zu-byte control message to %s: no room within %d ms", len,
                            c->peer, timeout_ms);
        }
        return sp_ctl_sock_tx_fail(s, sp_ctl_sock_error(c, "sending to", errno));
    }
    return SP_OK;
}

/* Marks the receive side failed with st (already raised) and returns it. */
static sp_status_t sp_ctl_sock_rx_fail(sp__ctl_sock_t *s, sp_status_t st)
{
    s->rx_failed = st;
    snprintf(s->rx_why, sizeof(s->rx_why), "%s", sp_last_error());
    s->base.buffered = false;
    sp__free(s->payload);
    s->payload = NULL;
    return st;
}

/*
 * Checks a header that passed sp__ctl_header_check against what the conn
 * may receive before authentication (sp__ctl_gate_t).
 */
static sp_status_t sp_ctl_sock_gate(const sp__ctl_sock_t *s)
{
    const sp__ctl_conn_t *c = &s->base;

    if (s->gate == SP__CTL_GATE_AUTH && (s->type != SP__CTL_AUTH || s->len != SP__CTL_AUTH_SIZE))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: refused a frame of type %u announcing %u "
                        "payload bytes before authentication (only AUTH, type %d of %u bytes, is "
                        "read)",
                        c->peer, s->type, s->len, SP__CTL_AUTH, SP__CTL_AUTH_SIZE);
    if (s->gate == SP__CTL_GATE_ANSWER && s->len > SP__CTL_HS_ANSWER_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: refused a frame of type %u announcing %u "
                        "payload bytes before the peer proved the secret (at most %u are read)",
                        c->peer, s->type, s->len, SP__CTL_HS_ANSWER_MAX);
    return SP_OK;
}

static sp_status_t sp_ctl_sock_try_recv(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p,
                                        void **payload_p, size_t *len_p)
{
    sp__ctl_sock_t *s = sp_ctl_sock(c);

    if (s->rx_failed != SP_OK)
        return SP_RAISE(s->rx_failed,
                        "control connection from %s failed before (%s): cannot receive", c->peer,
                        s->rx_why);
    for (;;) {
        size_t avail = s->in_len - s->in_pos, want;
        unsigned char *dst;
        ssize_t n;

        if (!s->have_hdr) {
            size_t take = SP_MIN(SP__CTL_HEADER_SIZE - s->hdr_got, avail);
            sp_status_t st;

            memcpy(s->hdr + s->hdr_got, s->in + s->in_pos, take);
            s->hdr_got += take;
            s->in_pos += take;
            avail -= take;
            if (s->hdr_got == SP__CTL_HEADER_SIZE) {
                st = sp__ctl_header_check(c, s->hdr, &s->type, &s->len);
                if (st == SP_OK)
                    st = sp_ctl_sock_gate(s);
                if (st != SP_OK)
                    return sp_ctl_sock_rx_fail(s, st);
                s->have_hdr = true;
                s->payload_got = 0;
            }
        }
        if (s->have_hdr) {
            size_t take;

            if (s->payload == NULL && s->len > 0) {
                s->payload = sp__malloc(s->len);
                if (s->payload == NULL) {
                    c->buffered = avail > 0;
                    return SP_RAISE(SP_ERR_NOMEM,
                                    "control message from %s: cannot allocate %u payload bytes",
                                    c->peer, s->len);
                }
            }
            take = SP_MIN(s->len - s->payload_got, avail);
            if (take > 0)
                memcpy(s->payload + s->payload_got, s->in + s->in_pos, take);
            s->payload_got += take;
            s->in_pos += take;
            avail -= take;
            if (s->payload_got == s->len) {
                *got_p = true;
                *type_p = s->type;
                *payload_p = s->payload;
                *len_p = s->len;
                s->payload = NULL;
                s->have_hdr = false;
                s->hdr_got = 0;
                c->buffered = avail > 0;
                return SP_OK;
            }
        }
        /* Everything read ahead is used up; read more. */
        SP_ASSERT(avail == 0);
        s->in_pos = s->in_len = 0;
        if (s->have_hdr && s->len - s->payload_got >= SP__CTL_INBUF) {
            dst = s->payload + s->payload_got;
            want = s->len - s->payload_got;
        } else {
            dst = s->in;
            want = sizeof(s->in);
        }
        n = recv(c->fd, dst, want, 0);
        if (n > 0) {
            if (dst == s->in)
                s->in_len = (size_t)n;
            else
                s->payload_got += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            *got_p = false;
            c->buffered = false;
            return SP_OK;
        }
        if (n == 0 && s->have_hdr)
            return sp_ctl_sock_rx_fail(
                s, SP_RAISE(SP_ERR_BAD_FORMAT,
                            "control frame from %s: truncated (the connection closed after %zu of "
                            "%u payload bytes of a type %u frame)",
                            c->peer, s->payload_got, s->len, s->type));
        if (n == 0 && s->hdr_got > 0)
            return sp_ctl_sock_rx_fail(
                s, SP_RAISE(SP_ERR_BAD_FORMAT,
                            "control frame from %s: truncated (the connection closed after %zu of "
                            "%u header bytes)",
                            c->peer, s->hdr_got, SP__CTL_HEADER_SIZE));
        if (n == 0)
            return sp_ctl_sock_rx_fail(
                s, SP_RAISE(SP_ERR_PEER_LOST, "%s closed the control connection", c->peer));
        return sp_ctl_sock_rx_fail(s, sp_ctl_sock_error(c, "receiving from", errno));
    }
}

static void sp_ctl_sock_close(sp__ctl_conn_t *c)
{
    sp__ctl_sock_t *s = sp_ctl_sock(c);

    if (c->fd >= 0)
        close(c->fd);
    sp__free(s->payload);
    sp__ctl_conn_fini(c);
    sp__free(s);
}

static const sp__ctl_ops_t sp_ctl_sock_ops = {
    .size = sizeof(sp__ctl_ops_t),
    .send = sp_ctl_sock_send,
    .try_recv = sp_ctl_sock_try_recv,
    .close = sp_ctl_sock_close,
};

sp_status_t sp__ctl_fail_rx(sp__ctl_conn_t *c, sp_status_t st)
{
    /* MPI conns stay in step: each frame is one message. */
    if (c->ops == &sp_ctl_sock_ops) {
        pthread_mutex_lock(&c->recv_lock);
        sp_ctl_sock_rx_fail(sp_ctl_sock(c), st);
        pthread_mutex_unlock(&c->recv_lock);
    }
    return st;
}

/* A stream conn over fd, which it owns from now on (closed on failure). */
sp_status_t sp__ctl_sock_new(int fd, const char *peer, sp__ctl_sock_t **sock_p)
{
    sp__ctl_sock_t *s = sp__calloc(1, sizeof(*s));
    sp_status_t st;

    if (s == NULL) {
        close(fd);
        return SP_RAISE(SP_ERR_NOMEM, "control connection to %s: out of memory", peer);
    }
    if ((st = sp__ctl_conn_init(&s->base, &sp_ctl_sock_ops, fd, peer)) != SP_OK) {
        close(fd);
        sp__free(s);
        return st;
    }
    s->rx_failed = SP_OK;
    s->tx_failed = SP_OK;
    *sock_p = s;
    return SP_OK;
}

void sp__ctl_sock_nodelay(int fd)
{
    int one = 1;

    /* Fails harmlessly on sockets that are not TCP. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

sp_status_t sp__ctl_conn_fd(int fd, const char *peer_name, sp__ctl_conn_t **conn_p)
{
    char name[32];
    sp__ctl_sock_t *s = NULL;
    sp_status_t st;
    int fl;

    if (fd < 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control connection: fd %d is not a descriptor", fd);
    if (peer_name == NULL) {
        snprintf(name, sizeof(name), "fd %d", fd);
        peer_name = name;
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "control connection to %s: fd %d: %s (errno %d)",
                      peer_name, fd, strerror(errno), errno);
        close(fd);
        return st;
    }
    sp__ctl_sock_nodelay(fd);
    if ((st = sp__ctl_sock_new(fd, peer_name, &s)) != SP_OK)
        return st;
    *conn_p = &s->base;
    return SP_OK;
}

/*
 * Splits "host:port" or "[v6]:port" and resolves it. An empty host or "*"
 * means any address when passive.
 */
static sp_status_t sp_ctl_resolve(const char *host_port, bool passive, struct addrinfo **ai_p)
{
    char host[256];
    const char *start = host_port, *port;
    size_t hlen;
    bool any;
    struct addrinfo hints, *ai = NULL;
    int rc;

    if (host_port == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control address: NULL");
    if (host_port[0] == '[') {
        const char *end = strchr(host_port, ']');

        if (end == NULL || end[1] != ':')
            return SP_RAISE(SP_ERR_INVALID_PARAM, "control address '%s': expected [address]:port",
                            host_port);
        start = host_port + 1;
        hlen = (size_t)(end - start);
        port = end + 2;
    } else {
        const char *colon = strrchr(host_port, ':');

        if (colon == NULL)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "control address '%s': expected host:port",
                            host_port);
        hlen = (size_t)(colon - host_port);
        port = colon + 1;
    }
    if (hlen >= sizeof(host))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control address '%s': host too long", host_port);
    memcpy(host, start, hlen);
    host[hlen] = '\0';
    if (port[0] == '\0' || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        atoi(port) > 65535)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control address '%s': bad port '%s'", host_port,
                        port);
    any = hlen == 0 || strcmp(host, "*") == 0;
    if (!passive && any)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "control address '%s': no host to connect to",
                        host_port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    rc = getaddrinfo(any ? NULL : host, port, &hints, &ai);
    if (rc != 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "control address '%s': %s (getaddrinfo %d)", host_port,
                        gai_strerror(rc), rc);
    *ai_p = ai;
    return SP_OK;
}

/* "addr:port" or "[addr]:port" of a socket address. */
static void sp_ctl_addr_name(const struct sockaddr *sa, socklen_t salen, char *buf, size_t cap)
{
    char host[NI_MAXHOST], serv[NI_MAXSERV];

    if (getnameinfo(sa, salen, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(buf, cap, "an unknown address");
        return;
    }
    snprintf(buf, cap, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

sp_status_t sp__ctl_listen(const char *host_port, char *bound, size_t cap, int *fd_p)
{
    struct addrinfo *ai = NULL, *a;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = -1, err = 0, one = 1;
    const char *op = "socket";
    sp_status_t st = sp_ctl_resolve(host_port, true, &ai);

    if (st != SP_OK)
        return st;
    for (a = ai; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            op = "socket";
            continue;
        }
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        err = errno;
        op = "bind/listen";
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return SP_RAISE(SP_ERR_TRANSPORT, "control listener on %s: %s: %s (errno %d)", host_port,
                        op, strerror(err), err);
    if (bound != NULL && cap > 0) {
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
            err = errno;
            close(fd);
            return SP_RAISE(SP_ERR_TRANSPORT, "control listener on %s: getsockname: %s (errno %d)",
                            host_port, strerror(err), err);
        }
        sp_ctl_addr_name((struct sockaddr *)&ss, sl, bound, cap);
    }
    *fd_p = fd;
    return SP_OK;
}

/*
 * Accepts one pending connection on lfd: *fd_p, or -1 when none is pending.
 * On failure *err_p is accept's errno.
 */
sp_status_t sp__ctl_accept_fd(int lfd, int *fd_p, char *peer, size_t cap, int *err_p)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd;

    for (;;) {
        fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EPROTO) {
            *fd_p = -1;
            return SP_OK;
        }
        *err_p = errno;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            return SP_RAISE(SP_ERR_NO_RESOURCE, "control listener: accept: %s (errno %d)",
                            strerror(errno), errno);
        return SP_RAISE(SP_ERR_TRANSPORT, "control listener fd %d: accept: %s (errno %d)", lfd,
                        strerror(errno), errno);
    }
    sp__ctl_sock_nodelay(fd);
    sp_ctl_addr_name((struct sockaddr *)&ss, sl, peer, cap);
    *fd_p = fd;
    return SP_OK;
}

sp_status_t sp__ctl_accept(int lfd, const void *secret, size_t slen, int timeout_ms,
                           sp__ctl_conn_t **conn_p)
{
    uint64_t deadline = sp__ctl_deadline(timeout_ms);
    char peer[sizeof(((sp__ctl_conn_t *)0)->peer)];
    sp__ctl_sock_t *s = NULL;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    int fd = -1;
    sp_status_t st;

    if ((st = sp__ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    for (;;) {
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        uint64_t left;

        int err = 0;

        if ((st = sp__ctl_accept_fd(lfd, &fd, peer, sizeof(peer), &err)) != SP_OK)
            return st;
        if (fd >= 0)
            break;
        left = sp__ctl_left(deadline);
        if (left == 0)
            return SP_RAISE(SP_ERR_TIMED_OUT,
                            "no executor connected to the control listener within %d ms",
                            timeout_ms);
        if (sp__ctl_ppoll(&pfd, 1, left) < 0)
            return SP_RAISE(SP_ERR_TRANSPORT, "control listener fd %d: poll: %s (errno %d)", lfd,
                            strerror(errno), errno);
    }
    if ((st = sp__ctl_sock_new(fd, peer, &s)) != SP_OK)
        return st;
    if ((st = sp__ctl_hs_hello(s)) != SP_OK)
        goto err_close;
    st = sp__ctl_recv_frame(&s->base, deadline, timeout_ms, "the handshake's AUTH", &type, &payload,
                            &len);
    if (st != SP_OK)
        goto err_close;
    st = sp__ctl_hs_verify(s, secret, slen, type, payload, len);
    sp__free(payload);
    if (st == SP_ERR_INVALID_PARAM)
        sp_warn("control: refused a connection from %s: %s", peer, SP__CTL_WRONG_SECRET);
    if (st != SP_OK)
        goto err_close;
    *conn_p = &s->base;
    return SP_OK;

err_close:
    sp__ctl_close(&s->base);
    return st;
}

sp_status_t sp__ctl_connect(const char *host_port, const void *secret, size_t slen, int timeout_ms,
                            sp__ctl_conn_t **conn_p)
{
    uint64_t deadline = sp__ctl_deadline(timeout_ms), backoff_ms = 10;
    unsigned char want[SP__CTL_MAC_SIZE];
    struct addrinfo *ai = NULL, *a;
    sp__ctl_sock_t *s = NULL;
    int fd = -1, err = 0;
    char dropped[SP__CTL_WHY] = ""; /* why the driver dropped the last handshake */
    sp_status_t st;

    if ((st = sp__ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    /*
     * A name that does not resolve yet is retried like a refused connection:
     * in a cluster the driver's name (a Kubernetes Service, say) may appear
     * in DNS a little after its executors start.
     */
    while ((st = sp_ctl_resolve(host_port, false, &ai)) != SP_OK) {
        uint64_t left = sp__ctl_left(deadline);
        if (st != SP_ERR_NOT_FOUND || left == 0)
            return st;
        sp__ctl_sleep_ns(SP_MIN(backoff_ms * 1000000u, left));
        backoff_ms = SP_MIN(backoff_ms * 2, 200u);
    }
    backoff_ms = 10;
retry:
    for (;;) {
        uint64_t left;

        for (a = ai; a != NULL && fd < 0; a = a->ai_next) {
            fd =
                socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            err = 0;
            if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
                err = errno;
                if (err == EINPROGRESS || err == EINTR) {
                    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                    socklen_t el = sizeof(err);
                    int rc = sp__ctl_ppoll(&pfd, 1, sp__ctl_left(deadline));

                    if (rc <= 0)
                        err = rc == 0 ? ETIMEDOUT : errno;
                    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
                        err = errno;
                }
            }
            if (err != 0) {
                close(fd);
                fd = -1;
            }
        }
        if (fd >= 0)
            break;
        left = sp__ctl_left(deadline);
        if (left == 0) {
            freeaddrinfo(ai);
            if (dropped[0] != '\0' && err == 0)
                return SP_RAISE(SP_ERR_TIMED_OUT,
                                "connecting to the driver at %s: no success within %d ms (the "
                                "last handshake ended: %s)",
                                host_port, timeout_ms, dropped);
            return SP_RAISE(SP_ERR_TIMED_OUT,
                            "connecting to the driver at %s: no success within %d ms (last "
                            "error: %s, errno %d)",
                            host_port, timeout_ms, strerror(err), err);
        }
        sp__ctl_sleep_ns(SP_MIN(backoff_ms * 1000000u, left));
        backoff_ms = SP_MIN(backoff_ms * 2, 200u);
    }
    sp__ctl_sock_nodelay(fd);
    if ((st = sp__ctl_sock_new(fd, host_port, &s)) != SP_OK) {
        freeaddrinfo(ai);
        return st;
    }
    fd = -1;
    if ((st = sp__ctl_hs_auth(s, secret, slen, deadline, timeout_ms, want)) != SP_OK ||
        (st = sp__ctl_hs_finish(s, want, deadline, timeout_ms)) != SP_OK) {
        uint64_t left = sp__ctl_left(deadline);

        sp__ctl_close(&s->base);
        s = NULL;
        /*
         * A driver that closed the connection in the handshake may have been
         * short of handshake slots or descriptors: try again while there is
         * time. A refusal or a bad frame is final.
         */
        if (st == SP_ERR_PEER_LOST && left > 0) {
            snprintf(dropped, sizeof(dropped), "%s", sp_last_error());
            sp_debug("control: %s; connecting again", dropped);
            sp__ctl_sleep_ns(SP_MIN(backoff_ms * 1000000u, left));
            backoff_ms = SP_MIN(backoff_ms * 2, 200u);
            goto retry;
        }
        freeaddrinfo(ai);
        return st;
    }
    freeaddrinfo(ai);
    *conn_p = &s->base;
    return SP_OK;
}

sp_status_t sp__ctl_pair(const void *secret, size_t slen, sp__ctl_conn_t **a_p,
                         sp__ctl_conn_t **b_p)
{
    const int timeout_ms = 1000;
    uint64_t deadline = sp__ctl_deadline(timeout_ms);
    unsigned char want[SP__CTL_MAC_SIZE];
    sp__ctl_sock_t *a = NULL, *b = NULL;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    int sv[2];
    sp_status_t st;

    if (secret != NULL && (st = sp__ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return SP_RAISE(errno == EMFILE || errno == ENFILE ? SP_ERR_NO_RESOURCE : SP_ERR_TRANSPORT,
                        "control socketpair: %s (errno %d)", strerror(errno), errno);
    if ((st = sp__ctl_sock_new(sv[0], "socketpair", &a)) != SP_OK) {
        close(sv[1]);
        return st;
    }
    if ((st = sp__ctl_sock_new(sv[1], "socketpair", &b)) != SP_OK)
        goto err_close_a;
    /*
     * Both sides of the handshake on this thread, in the order the frames
     * travel; each is small enough to wait in the socket buffer.
     */
    if (secret != NULL) {
        if ((st = sp__ctl_hs_hello(a)) != SP_OK ||
            (st = sp__ctl_hs_auth(b, secret, slen, deadline, timeout_ms, want)) != SP_OK ||
            (st = sp__ctl_recv_frame(&a->base, deadline, timeout_ms, "the handshake's AUTH", &type,
                                     &payload, &len)) != SP_OK)
            goto err_close_b;
        st = sp__ctl_hs_verify(a, secret, slen, type, payload, len);
        sp__free(payload);
        if (st != SP_OK || (st = sp__ctl_hs_finish(b, want, deadline, timeout_ms)) != SP_OK)
            goto err_close_b;
    }
    *a_p = &a->base;
    *b_p = &b->base;
    return SP_OK;

err_close_b:
    sp__ctl_close(&b->base);
err_close_a:
    sp__ctl_close(&a->base);
    return st;
}
