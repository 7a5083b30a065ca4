/*
 * The control plane's channel over stream sockets, the payload codec and
 * the driver's hub (MPI conns are in mpi.c). See ctl.h for the API.
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
 * (sp_ctl_sock_t's rx state), so a peer that stops in the middle of a frame
 * never blocks the hub, and sp__ctl_recv's timeout is exact; the header is
 * checked as soon as its 12 bytes are in, before anything is allocated for
 * the payload. A send writes the whole frame under the conn's send lock,
 * waiting with poll() for room up to the conn's send timeout. After a
 * broken stream (a bad header, a close mid-frame, a send abandoned
 * mid-frame) a conn stays failed in that direction, since the stream is no
 * longer in step; so does one whose peer sends a channel (handshake) frame
 * after the handshake, which no well-behaved peer does.
 *
 * Handshake (TCP and optional on socketpairs), all as frames:
 *   server: HELLO {Ns}            Ns, Nc: 32 random bytes each (RAND_bytes)
 *   client: AUTH {Nc, HMAC(secret, "spate-ctl-v1 client" || Ns || Nc)}
 *   server: WELCOME {HMAC(secret, "spate-ctl-v1 server" || Nc || Ns)}
 *        or REFUSED {str reason}, then closes.
 * Both MACs are compared with CRYPTO_memcmp; the labels keep a server from
 * replaying a client's MAC as its own and the fresh nonces keep either side
 * from replaying an old exchange. The secret never travels. The hub runs
 * the server side of handshakes as a state machine inside hub_wait, so a
 * client that stalls in the handshake does not hold the driver up.
 *
 * A peer that has not authenticated costs a fixed amount, whatever it
 * sends. Until the MACs are checked a conn's gate (sp_ctl_gate_t) admits
 * only the fixed-size AUTH frame on the server (a client only small
 * answers), so a header announcing anything else is refused when its 12
 * bytes are in, before a payload buffer exists. A hub runs at most
 * SP__CTL_HUB_MAX_JOINING handshakes, each with a deadline; when all are
 * taken the listener is not polled, except to let a newcomer take the slot
 * of the oldest once that one has had SP_CTL_EVICT_AFTER_NS to answer (an
 * honest client answers in a round trip, and one dropped connects again).
 * Out of descriptors (EMFILE), the hub sheds the backlog through a reserve
 * descriptor and rests the listener with a growing back-off; warnings about
 * strangers are written at most once a second and counted in the stats.
 *
 * When a conn fails, the message says what happened to its peer (closed,
 * reset, timed out in the kernel, a malformed or cut frame); the conn keeps
 * it for later calls ("failed before (...)") and the hub for later removals
 * of the id, so the cause reaches whoever reports the loss.
 *
 * The hub polls the listener, its joining connections and its stream
 * conns in one ppoll(); MPI conns have nothing to poll, so when there are
 * any the hub probes them between polls of 50 to 200 us (doubling while
 * idle). Conns are served round robin from the one after the last served.
 */
#include "control/ctl.h"
#include "bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Read-ahead of a stream conn; payloads at least this long bypass it. */
#define SP_CTL_INBUF 16384
/* Connections a hub accepts in one pass over a readable listener. */
#define SP_CTL_ACCEPT_BATCH 64
/*
 * When every handshake slot is taken, a connection that has been in its
 * handshake this long gives its slot up to a newcomer: an honest client
 * answers HELLO within a round trip, and one that is dropped connects again.
 */
#define SP_CTL_EVICT_AFTER_NS 100000000u
/* The listener's rest after accept ran out of descriptors: 10 ms, doubling to 1 s. */
#define SP_CTL_ACCEPT_BACKOFF_MIN_NS 10000000u
#define SP_CTL_ACCEPT_BACKOFF_MAX_NS 1000000000u
/* At most one hub warning about connections that did not join per this interval. */
#define SP_CTL_WARN_EVERY_NS 1000000000u
/* Dropped conns whose reason a hub keeps for sp__ctl_hub_remove. */
#define SP_CTL_GONE 16
/* The hub's pause between probes of MPI conns, doubling while idle. */
#define SP_CTL_PROBE_MIN_NS 50000u
#define SP_CTL_PROBE_MAX_NS 200000u
/* Reason a server gives a client whose MAC is wrong. */
#define SP_CTL_WRONG_SECRET "wrong secret"
/*
 * Largest payload a client reads before the server has proved the secret:
 * HELLO and WELCOME hold 32 bytes, REFUSED a reason of at most 200.
 */
#define SP_CTL_HS_ANSWER_MAX 256u
/* Bytes of the AUTH payload, the one frame a server reads before authentication. */
#define SP_CTL_AUTH_SIZE (SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE)
/* Longest failure reason a conn keeps for later calls and a hub for removed ids. */
#define SP_CTL_WHY 200

static const char sp_ctl_client_label[] = "spate-ctl-v1 client";
static const char sp_ctl_server_label[] = "spate-ctl-v1 server";

/* ------------------------------------------------------------------------ */
/* Payload codec                                                             */
/* ------------------------------------------------------------------------ */

void sp__wbuf_init(sp__wbuf_t *w)
{
    w->data = NULL;
    w->len = w->cap = 0;
    w->status = SP_OK;
}

void sp__wbuf_free(sp__wbuf_t *w)
{
    if (w == NULL)
        return;
    sp__free(w->data);
    sp__wbuf_init(w);
}

void sp__wbuf_reset(sp__wbuf_t *w)
{
    w->len = 0;
    w->status = SP_OK;
}

sp_status_t sp__wbuf_status(const sp__wbuf_t *w) { return w->status; }

/* Room for n more bytes at data + len; NULL (status set) on failure. */
static unsigned char *sp_wbuf_room(sp__wbuf_t *w, size_t n)
{
    unsigned char *grown;
    size_t cap;

    if (w->status != SP_OK)
        return NULL;
    if (n <= w->cap - w->len)
        return w->data + w->len;
    if (n > SIZE_MAX / 4 - w->len) {
        w->status = SP_RAISE(SP_ERR_TOO_LARGE, "control message of more than %zu bytes", w->len);
        return NULL;
    }
    cap = w->cap < 256 ? 256 : w->cap;
    while (cap - w->len < n)
        cap *= 2;
    grown = sp__realloc(w->data, cap);
    if (grown == NULL) {
        w->status =
            SP_RAISE(SP_ERR_NOMEM, "control message: cannot grow its buffer to %zu bytes", cap);
        return NULL;
    }
    w->data = grown;
    w->cap = cap;
    return w->data + w->len;
}

sp_status_t sp__wbuf_put_u8(sp__wbuf_t *w, uint8_t v)
{
    unsigned char *p = sp_wbuf_room(w, 1);

    if (p == NULL)
        return w->status;
    p[0] = v;
    w->len += 1;
    return SP_OK;
}

sp_status_t sp__wbuf_put_u16(sp__wbuf_t *w, uint16_t v)
{
    unsigned char *p = sp_wbuf_room(w, 2);

    if (p == NULL)
        return w->status;
    sp__le_put_u16(p, v);
    w->len += 2;
    return SP_OK;
}

sp_status_t sp__wbuf_put_u32(sp__wbuf_t *w, uint32_t v)
{
    unsigned char *p = sp_wbuf_room(w, 4);

    if (p == NULL)
        return w->status;
    sp__le_put_u32(p, v);
    w->len += 4;
    return SP_OK;
}

sp_status_t sp__wbuf_put_u64(sp__wbuf_t *w, uint64_t v)
{
    unsigned char *p = sp_wbuf_room(w, 8);

    if (p == NULL)
        return w->status;
    sp__le_put_u64(p, v);
    w->len += 8;
    return SP_OK;
}

sp_status_t sp__wbuf_put_raw(sp__wbuf_t *w, const void *data, size_t len)
{
    unsigned char *p = sp_wbuf_room(w, len);

    if (p == NULL)
        return w->status;
    if (len > 0)
        memcpy(p, data, len);
    w->len += len;
    return SP_OK;
}

sp_status_t sp__wbuf_put_bytes(sp__wbuf_t *w, const void *data, size_t len)
{
    if (w->status != SP_OK)
        return w->status;
    if (len > UINT32_MAX) {
        w->status = SP_RAISE(SP_ERR_TOO_LARGE,
                             "control message field of %zu bytes: longer than a u32 length", len);
        return w->status;
    }
    /* Room for both first, so that a failure leaves no half-written field. */
    if (sp_wbuf_room(w, 4 + len) == NULL)
        return w->status;
    sp__wbuf_put_u32(w, (uint32_t)len);
    return sp__wbuf_put_raw(w, data, len);
}

sp_status_t sp__wbuf_put_str(sp__wbuf_t *w, const char *s)
{
    return sp__wbuf_put_bytes(w, s, strlen(s));
}

void sp__wbuf_patch_u32(sp__wbuf_t *w, size_t offset, uint32_t v)
{
    if (w->status != SP_OK)
        return;
    SP_ASSERT(offset <= w->len && w->len - offset >= 4);
    sp__le_put_u32(w->data + offset, v);
}

/* The next n bytes, or NULL after raising "truncated" for what. */
static const unsigned char *sp_rbuf_take(sp__rbuf_t *r, const char *what, size_t n,
                                         sp_status_t *st_p)
{
    const unsigned char *p = sp__rbuf_take(r, n);

    if (p == NULL)
        *st_p = SP_RAISE(SP_ERR_BAD_FORMAT,
                         "control message %s: truncated (%zu bytes needed at offset %zu, %zu left)",
                         what, n, r->off, r->len - r->off);
    return p;
}

sp_status_t sp__rbuf_get_u8(sp__rbuf_t *r, const char *what, uint8_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 1, &st);

    if (p != NULL)
        *v_p = p[0];
    return st;
}

sp_status_t sp__rbuf_get_u16(sp__rbuf_t *r, const char *what, uint16_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 2, &st);

    if (p != NULL)
        *v_p = sp__le_get_u16(p);
    return st;
}

sp_status_t sp__rbuf_get_u32(sp__rbuf_t *r, const char *what, uint32_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 4, &st);

    if (p != NULL)
        *v_p = sp__le_get_u32(p);
    return st;
}

sp_status_t sp__rbuf_get_u64(sp__rbuf_t *r, const char *what, uint64_t *v_p)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, 8, &st);

    if (p != NULL)
        *v_p = sp__le_get_u64(p);
    return st;
}

sp_status_t sp__rbuf_get_raw(sp__rbuf_t *r, const char *what, void *dst, size_t len)
{
    sp_status_t st = SP_OK;
    const unsigned char *p = sp_rbuf_take(r, what, len, &st);

    if (p != NULL && len > 0)
        memcpy(dst, p, len);
    return st;
}

sp_status_t sp__rbuf_get_bytes(sp__rbuf_t *r, const char *what, const void **data_p, size_t *len_p)
{
    size_t start = r->off;
    uint32_t len = 0;
    sp_status_t st = sp__rbuf_get_u32(r, what, &len);

    if (st != SP_OK)
        return st;
    if (len > r->len - r->off) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message %s: truncated (a %u-byte field at offset %zu, %zu left)",
                        what, len, start, r->len - start - 4);
    }
    *data_p = r->data + r->off;
    *len_p = len;
    r->off += len;
    return SP_OK;
}

sp_status_t sp__rbuf_get_str(sp__rbuf_t *r, const char *what, size_t max_len, char **str_p)
{
    size_t start = r->off, len = 0;
    const void *data = NULL;
    sp_status_t st = sp__rbuf_get_bytes(r, what, &data, &len);
    char *s;

    if (st != SP_OK)
        return st;
    if (max_len > 0 && len > max_len) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message %s: too long (a %zu-byte string, at most %zu allowed)",
                        what, len, max_len);
    }
    if (len > 0 && memchr(data, '\0', len) != NULL) {
        r->off = start;
        return SP_RAISE(SP_ERR_BAD_FORMAT, "control message %s: the string holds a NUL byte", what);
    }
    s = sp__malloc(len + 1);
    if (s == NULL) {
        r->off = start;
        return SP_RAISE(SP_ERR_NOMEM, "control message %s: cannot copy a %zu-byte string", what,
                        len);
    }
    if (len > 0)
        memcpy(s, data, len);
    s[len] = '\0';
    *str_p = s;
    return SP_OK;
}

sp_status_t sp__rbuf_done(const sp__rbuf_t *r, const char *what)
{
    if (r->off == r->len)
        return SP_OK;
    return SP_RAISE(SP_ERR_BAD_FORMAT,
                    "control message %s: too long (%zu bytes left over after %zu read)", what,
                    r->len - r->off, r->off);
}

/* ------------------------------------------------------------------------ */
/* Frames and the base conn                                                  */
/* ------------------------------------------------------------------------ */

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
static uint64_t sp_ctl_left(uint64_t deadline)
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
static int sp_ctl_ppoll(struct pollfd *fds, size_t nfds, uint64_t wait_ns)
{
    uint64_t deadline = wait_ns == UINT64_MAX ? UINT64_MAX : sp__now_ns() + wait_ns;

    for (;;) {
        uint64_t left = sp_ctl_left(deadline);
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
static sp_status_t sp_ctl_send_frame(sp__ctl_conn_t *c, uint16_t type, const void *payload,
                                     size_t len)
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
static sp_status_t sp_ctl_try(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p, void **payload_p,
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
static sp_status_t sp_ctl_recv_frame(sp__ctl_conn_t *c, uint64_t deadline, int timeout_ms,
                                     const char *what, uint16_t *type_p, void **payload_p,
                                     size_t *len_p)
{
    uint64_t backoff = SP_CTL_PROBE_MIN_NS;

    for (;;) {
        bool got = false;
        uint64_t left;
        sp_status_t st = sp_ctl_try(c, &got, type_p, payload_p, len_p);

        if (st != SP_OK || got)
            return st;
        left = sp_ctl_left(deadline);
        if (left == 0)
            return SP_RAISE(SP_ERR_TIMED_OUT, "%s from %s did not arrive within %d ms", what,
                            c->peer, timeout_ms);
        if (c->fd >= 0) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};

            if (sp_ctl_ppoll(&pfd, 1, left) < 0)
                return SP_RAISE(SP_ERR_INTERNAL, "poll on the connection to %s: %s (errno %d)",
                                c->peer, strerror(errno), errno);
        } else {
            sp__ctl_sleep_ns(SP_MIN(backoff, left));
            backoff = SP_MIN(backoff * 2, SP_CTL_PROBE_MAX_NS);
        }
    }
}

/* Marks a stream conn's receive side failed with st (already raised); returns st. */
static sp_status_t sp_ctl_fail_rx(sp__ctl_conn_t *c, sp_status_t st);

/* A channel type (handshake) where only the protocol's may come. */
static sp_status_t sp_ctl_unexpected(const sp__ctl_conn_t *c, uint16_t type)
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
    return sp_ctl_send_frame(conn, type, payload, len);
}

sp_status_t sp__ctl_recv(sp__ctl_conn_t *conn, int timeout_ms, uint16_t *type_p, void **payload_p,
                         size_t *len_p)
{
    uint16_t type = 0;
    void *payload = NULL;
    size_t len = 0;
    sp_status_t st = sp_ctl_recv_frame(conn, sp__ctl_deadline(timeout_ms), timeout_ms,
                                       "a control message", &type, &payload, &len);

    if (st != SP_OK)
        return st;
    if (type < SP__CTL_TYPE_FIRST) {
        sp__free(payload);
        return sp_ctl_fail_rx(conn, sp_ctl_unexpected(conn, type));
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

/* ------------------------------------------------------------------------ */
/* Stream sockets                                                            */
/* ------------------------------------------------------------------------ */

/*
 * What a stream conn may receive. Before authentication a server takes
 * nothing but the fixed-size AUTH frame, and a client nothing larger than a
 * handshake answer; any other header is refused as soon as its 12 bytes are
 * in, before anything is allocated for its payload.
 */
typedef enum sp_ctl_gate {
    SP_CTL_GATE_OPEN = 0,   /* authenticated, or no handshake: any frame */
    SP_CTL_GATE_AUTH = 1,   /* server awaiting AUTH: exactly that type and size */
    SP_CTL_GATE_ANSWER = 2, /* client awaiting HELLO/WELCOME/REFUSED: small frames */
} sp_ctl_gate_t;

typedef struct sp_ctl_sock {
    sp__ctl_conn_t base;
    sp_ctl_gate_t gate; /* recv_lock */
    /* Receive side (recv_lock): read-ahead, then the frame being assembled. */
    size_t in_pos, in_len;
    unsigned char hdr[SP__CTL_HEADER_SIZE];
    size_t hdr_got;
    bool have_hdr; /* hdr checked; type and len valid */
    uint16_t type;
    uint32_t len;
    unsigned char *payload; /* len bytes once allocated */
    size_t payload_got;
    sp_status_t rx_failed;   /* the stream is out of step or closed */
    char rx_why[SP_CTL_WHY]; /* what happened, for later receives */
    /* Send side (send_lock). */
    sp_status_t tx_failed; /* a frame went out in part, or the peer is gone */
    char tx_why[SP_CTL_WHY];
    /* Server side of a handshake run by a hub. */
    unsigned char nonce[SP__CTL_NONCE_SIZE];
    uint64_t hs_started, hs_deadline;
    unsigned char in[SP_CTL_INBUF];
} sp_ctl_sock_t;

static sp_ctl_sock_t *sp_ctl_sock(sp__ctl_conn_t *c)
{
    return sp_container_of(c, sp_ctl_sock_t, base);
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
static sp_status_t sp_ctl_sock_tx_fail(sp_ctl_sock_t *s, sp_status_t st)
{
    s->tx_failed = st;
    snprintf(s->tx_why, sizeof(s->tx_why), "%s", sp_last_error());
    return st;
}

static sp_status_t sp_ctl_sock_send(sp__ctl_conn_t *c, const unsigned char *header,
                                    const void *payload, size_t len)
{
    sp_ctl_sock_t *s = sp_ctl_sock(c);
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
            uint64_t left = sp_ctl_left(deadline);
            int rc = left == 0 ? 0 : sp_ctl_ppoll(&pfd, 1, left);

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
static sp_status_t sp_ctl_sock_rx_fail(sp_ctl_sock_t *s, sp_status_t st)
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
 * may receive before authentication (sp_ctl_gate_t).
 */
static sp_status_t sp_ctl_sock_gate(const sp_ctl_sock_t *s)
{
    const sp__ctl_conn_t *c = &s->base;

    if (s->gate == SP_CTL_GATE_AUTH && (s->type != SP__CTL_AUTH || s->len != SP_CTL_AUTH_SIZE))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: refused a frame of type %u announcing %u "
                        "payload bytes before authentication (only AUTH, type %d of %u bytes, is "
                        "read)",
                        c->peer, s->type, s->len, SP__CTL_AUTH, SP_CTL_AUTH_SIZE);
    if (s->gate == SP_CTL_GATE_ANSWER && s->len > SP_CTL_HS_ANSWER_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: refused a frame of type %u announcing %u "
                        "payload bytes before the peer proved the secret (at most %u are read)",
                        c->peer, s->type, s->len, SP_CTL_HS_ANSWER_MAX);
    return SP_OK;
}

static sp_status_t sp_ctl_sock_try_recv(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p,
                                        void **payload_p, size_t *len_p)
{
    sp_ctl_sock_t *s = sp_ctl_sock(c);

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
        if (s->have_hdr && s->len - s->payload_got >= SP_CTL_INBUF) {
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
    sp_ctl_sock_t *s = sp_ctl_sock(c);

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

static sp_status_t sp_ctl_fail_rx(sp__ctl_conn_t *c, sp_status_t st)
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
static sp_status_t sp_ctl_sock_new(int fd, const char *peer, sp_ctl_sock_t **sock_p)
{
    sp_ctl_sock_t *s = sp__calloc(1, sizeof(*s));
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

static void sp_ctl_nodelay(int fd)
{
    int one = 1;

    /* Fails harmlessly on sockets that are not TCP. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

sp_status_t sp__ctl_conn_fd(int fd, const char *peer_name, sp__ctl_conn_t **conn_p)
{
    char name[32];
    sp_ctl_sock_t *s = NULL;
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
    sp_ctl_nodelay(fd);
    if ((st = sp_ctl_sock_new(fd, peer_name, &s)) != SP_OK)
        return st;
    *conn_p = &s->base;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Addresses                                                                 */
/* ------------------------------------------------------------------------ */

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

/* ------------------------------------------------------------------------ */
/* Handshake                                                                 */
/* ------------------------------------------------------------------------ */

static const char *sp_ctl_ssl_error(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();

    if (e == 0)
        snprintf(buf, cap, "no OpenSSL error queued");
    else
        ERR_error_string_n(e, buf, cap);
    return buf;
}

static sp_status_t sp_ctl_random(unsigned char *buf, size_t len)
{
    char msg[256];

    if (RAND_bytes(buf, (int)len) != 1)
        return SP_RAISE(SP_ERR_INTERNAL, "RAND_bytes(%zu) failed: %s", len,
                        sp_ctl_ssl_error(msg, sizeof(msg)));
    return SP_OK;
}

/* HMAC-SHA256(secret, label || n1 || n2). */
static sp_status_t sp_ctl_mac(const void *secret, size_t slen, const char *label,
                              const unsigned char *n1, const unsigned char *n2, unsigned char *mac)
{
    unsigned char msg[32 + 2 * SP__CTL_NONCE_SIZE];
    size_t ll = strlen(label);
    unsigned int mlen = 0;
    char err[256];

    SP_ASSERT(ll <= 32);
    memcpy(msg, label, ll);
    memcpy(msg + ll, n1, SP__CTL_NONCE_SIZE);
    memcpy(msg + ll + SP__CTL_NONCE_SIZE, n2, SP__CTL_NONCE_SIZE);
    if (HMAC(EVP_sha256(), secret, (int)slen, msg, ll + 2 * SP__CTL_NONCE_SIZE, mac, &mlen) ==
            NULL ||
        mlen != SP__CTL_MAC_SIZE)
        return SP_RAISE(SP_ERR_INTERNAL, "HMAC-SHA256 failed: %s",
                        sp_ctl_ssl_error(err, sizeof(err)));
    return SP_OK;
}

static sp_status_t sp_ctl_check_secret(const void *secret, size_t slen)
{
    if (secret == NULL || slen == 0 || slen > INT_MAX)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control connection: the secret must be 1 to %d bytes (got %zu%s)", INT_MAX,
                        slen, secret == NULL ? " at NULL" : "");
    return SP_OK;
}

/*
 * Server: a fresh nonce, sent as HELLO; from now on the conn reads nothing
 * but the fixed-size AUTH frame until the client has proved the secret.
 */
static sp_status_t sp_ctl_hs_hello(sp_ctl_sock_t *s)
{
    sp_status_t st = sp_ctl_random(s->nonce, sizeof(s->nonce));

    if (st != SP_OK)
        return st;
    s->gate = SP_CTL_GATE_AUTH;
    return sp_ctl_send_frame(&s->base, SP__CTL_HELLO, s->nonce, sizeof(s->nonce));
}

/*
 * Server: checks the client's AUTH frame; answers WELCOME, or REFUSED for a
 * wrong MAC (SP_ERR_INVALID_PARAM; the caller logs it). The caller closes
 * the conn on failure.
 */
static sp_status_t sp_ctl_hs_verify(sp_ctl_sock_t *s, const void *secret, size_t slen,
                                    uint16_t type, const unsigned char *payload, size_t len)
{
    sp__ctl_conn_t *c = &s->base;
    unsigned char want[SP__CTL_MAC_SIZE], mac[SP__CTL_MAC_SIZE];
    sp__wbuf_t w;
    sp_status_t st;

    if (type != SP__CTL_AUTH || len != SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected AUTH (type %d, %u bytes), got type "
                        "%u of %zu bytes",
                        c->peer, SP__CTL_AUTH, SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE, type, len);
    if ((st = sp_ctl_mac(secret, slen, sp_ctl_client_label, s->nonce, payload, want)) != SP_OK)
        return st;
    if (CRYPTO_memcmp(want, payload + SP__CTL_NONCE_SIZE, SP__CTL_MAC_SIZE) != 0) {
        sp__wbuf_init(&w);
        sp__wbuf_put_str(&w, SP_CTL_WRONG_SECRET);
        if (sp__wbuf_status(&w) == SP_OK)
            (void)sp_ctl_send_frame(c, SP__CTL_REFUSED, w.data, w.len);
        sp__wbuf_free(&w);
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control connection from %s refused: %s (its HMAC does not match)", c->peer,
                        SP_CTL_WRONG_SECRET);
    }
    if ((st = sp_ctl_mac(secret, slen, sp_ctl_server_label, payload, s->nonce, mac)) != SP_OK)
        return st;
    s->gate = SP_CTL_GATE_OPEN;
    return sp_ctl_send_frame(c, SP__CTL_WELCOME, mac, sizeof(mac));
}

/*
 * Client, first half: reads HELLO, sends AUTH, and leaves in want the MAC
 * the server's WELCOME must carry.
 */
static sp_status_t sp_ctl_hs_auth(sp_ctl_sock_t *s, const void *secret, size_t slen,
                                  uint64_t deadline, int timeout_ms, unsigned char *want)
{
    sp__ctl_conn_t *c = &s->base;
    unsigned char auth[SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE], ns[SP__CTL_NONCE_SIZE];
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    sp_status_t st;

    /* Until the server proves the secret, only small frames are read from it. */
    s->gate = SP_CTL_GATE_ANSWER;
    st = sp_ctl_recv_frame(c, deadline, timeout_ms, "the handshake's HELLO", &type, &payload, &len);
    if (st != SP_OK)
        return st;
    if (type != SP__CTL_HELLO || len != SP__CTL_NONCE_SIZE) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected HELLO (type %d, %u bytes), got type "
                        "%u of %zu bytes",
                        c->peer, SP__CTL_HELLO, SP__CTL_NONCE_SIZE, type, len);
    }
    memcpy(ns, payload, sizeof(ns));
    sp__free(payload);
    if ((st = sp_ctl_random(auth, SP__CTL_NONCE_SIZE)) != SP_OK ||
        (st = sp_ctl_mac(secret, slen, sp_ctl_client_label, ns, auth, auth + SP__CTL_NONCE_SIZE)) !=
            SP_OK ||
        (st = sp_ctl_mac(secret, slen, sp_ctl_server_label, auth, ns, want)) != SP_OK)
        return st;
    return sp_ctl_send_frame(c, SP__CTL_AUTH, auth, sizeof(auth));
}

/* Client, second half: WELCOME with the wanted MAC, or REFUSED. */
static sp_status_t sp_ctl_hs_finish(sp_ctl_sock_t *s, const unsigned char *want, uint64_t deadline,
                                    int timeout_ms)
{
    sp__ctl_conn_t *c = &s->base;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    sp_status_t st;

    st =
        sp_ctl_recv_frame(c, deadline, timeout_ms, "the handshake's answer", &type, &payload, &len);
    if (st == SP_ERR_PEER_LOST)
        return SP_RAISE(SP_ERR_PEER_LOST,
                        "control handshake with %s: the driver closed the connection without an "
                        "answer",
                        c->peer);
    if (st != SP_OK)
        return st;
    if (type == SP__CTL_REFUSED) {
        sp__rbuf_t r;
        char *reason = NULL;

        sp__rbuf_init(&r, payload, len);
        if (sp__rbuf_get_str(&r, "REFUSED reason", 200, &reason) != SP_OK)
            reason = NULL;
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "control connection to %s: driver refused: %s", c->peer,
                      reason != NULL ? reason : "(no reason given)");
        sp__free(reason);
        sp__free(payload);
        return st;
    }
    if (type != SP__CTL_WELCOME || len != SP__CTL_MAC_SIZE) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control handshake with %s: expected WELCOME (type %d, %u bytes), got "
                        "type %u of %zu bytes",
                        c->peer, SP__CTL_WELCOME, SP__CTL_MAC_SIZE, type, len);
    }
    if (CRYPTO_memcmp(want, payload, SP__CTL_MAC_SIZE) != 0) {
        sp__free(payload);
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control handshake with %s: the peer does not prove the secret (its "
                        "HMAC does not match); it is not our driver",
                        c->peer);
    }
    sp__free(payload);
    s->gate = SP_CTL_GATE_OPEN;
    return SP_OK;
}

/*
 * Accepts one pending connection on lfd: *fd_p, or -1 when none is pending.
 * On failure *err_p is accept's errno.
 */
static sp_status_t sp_ctl_accept_fd(int lfd, int *fd_p, char *peer, size_t cap, int *err_p)
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
    sp_ctl_nodelay(fd);
    sp_ctl_addr_name((struct sockaddr *)&ss, sl, peer, cap);
    *fd_p = fd;
    return SP_OK;
}

sp_status_t sp__ctl_accept(int lfd, const void *secret, size_t slen, int timeout_ms,
                           sp__ctl_conn_t **conn_p)
{
    uint64_t deadline = sp__ctl_deadline(timeout_ms);
    char peer[sizeof(((sp__ctl_conn_t *)0)->peer)];
    sp_ctl_sock_t *s = NULL;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    int fd = -1;
    sp_status_t st;

    if ((st = sp_ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    for (;;) {
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        uint64_t left;

        int err = 0;

        if ((st = sp_ctl_accept_fd(lfd, &fd, peer, sizeof(peer), &err)) != SP_OK)
            return st;
        if (fd >= 0)
            break;
        left = sp_ctl_left(deadline);
        if (left == 0)
            return SP_RAISE(SP_ERR_TIMED_OUT,
                            "no executor connected to the control listener within %d ms",
                            timeout_ms);
        if (sp_ctl_ppoll(&pfd, 1, left) < 0)
            return SP_RAISE(SP_ERR_TRANSPORT, "control listener fd %d: poll: %s (errno %d)", lfd,
                            strerror(errno), errno);
    }
    if ((st = sp_ctl_sock_new(fd, peer, &s)) != SP_OK)
        return st;
    if ((st = sp_ctl_hs_hello(s)) != SP_OK)
        goto err_close;
    st = sp_ctl_recv_frame(&s->base, deadline, timeout_ms, "the handshake's AUTH", &type, &payload,
                           &len);
    if (st != SP_OK)
        goto err_close;
    st = sp_ctl_hs_verify(s, secret, slen, type, payload, len);
    sp__free(payload);
    if (st == SP_ERR_INVALID_PARAM)
        sp_warn("control: refused a connection from %s: %s", peer, SP_CTL_WRONG_SECRET);
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
    sp_ctl_sock_t *s = NULL;
    int fd = -1, err = 0;
    char dropped[SP_CTL_WHY] = ""; /* why the driver dropped the last handshake */
    sp_status_t st;

    if ((st = sp_ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    /*
     * A name that does not resolve yet is retried like a refused connection:
     * in a cluster the driver's name (a Kubernetes Service, say) may appear
     * in DNS a little after its executors start.
     */
    while ((st = sp_ctl_resolve(host_port, false, &ai)) != SP_OK) {
        uint64_t left = sp_ctl_left(deadline);
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
                    int rc = sp_ctl_ppoll(&pfd, 1, sp_ctl_left(deadline));

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
        left = sp_ctl_left(deadline);
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
    sp_ctl_nodelay(fd);
    if ((st = sp_ctl_sock_new(fd, host_port, &s)) != SP_OK) {
        freeaddrinfo(ai);
        return st;
    }
    fd = -1;
    if ((st = sp_ctl_hs_auth(s, secret, slen, deadline, timeout_ms, want)) != SP_OK ||
        (st = sp_ctl_hs_finish(s, want, deadline, timeout_ms)) != SP_OK) {
        uint64_t left = sp_ctl_left(deadline);

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
    sp_ctl_sock_t *a = NULL, *b = NULL;
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    int sv[2];
    sp_status_t st;

    if (secret != NULL && (st = sp_ctl_check_secret(secret, slen)) != SP_OK)
        return st;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return SP_RAISE(errno == EMFILE || errno == ENFILE ? SP_ERR_NO_RESOURCE : SP_ERR_TRANSPORT,
                        "control socketpair: %s (errno %d)", strerror(errno), errno);
    if ((st = sp_ctl_sock_new(sv[0], "socketpair", &a)) != SP_OK) {
        close(sv[1]);
        return st;
    }
    if ((st = sp_ctl_sock_new(sv[1], "socketpair", &b)) != SP_OK)
        goto err_close_a;
    /*
     * Both sides of the handshake on this thread, in the order the frames
     * travel; each is small enough to wait in the socket buffer.
     */
    if (secret != NULL) {
        if ((st = sp_ctl_hs_hello(a)) != SP_OK ||
            (st = sp_ctl_hs_auth(b, secret, slen, deadline, timeout_ms, want)) != SP_OK ||
            (st = sp_ctl_recv_frame(&a->base, deadline, timeout_ms, "the handshake's AUTH", &type,
                                    &payload, &len)) != SP_OK)
            goto err_close_b;
        st = sp_ctl_hs_verify(a, secret, slen, type, payload, len);
        sp__free(payload);
        if (st != SP_OK || (st = sp_ctl_hs_finish(b, want, deadline, timeout_ms)) != SP_OK)
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

/* ------------------------------------------------------------------------ */
/* Secrets                                                                   */
/* ------------------------------------------------------------------------ */

sp_status_t sp__ctl_secret_from_env(const char *var, void **secret_p, size_t *len_p)
{
    const char *name = var != NULL ? var : "SPATE_SECRET";
    const char *text = getenv(name);
    size_t len;
    void *copy;

    if (text == NULL || text[0] == '\0')
        return SP_RAISE(SP_ERR_NOT_FOUND, "control secret: %s is not set", name);
    len = strlen(text);
    if (len < 16)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control secret: %s holds %zu bytes; at least 16 are needed", name, len);
    copy = sp__malloc(len);
    if (copy == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control secret: cannot copy %zu bytes", len);
    memcpy(copy, text, len);
    *secret_p = copy;
    *len_p = len;
    return SP_OK;
}

sp_status_t sp__ctl_secret_generate(char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[32];
    sp_status_t st = sp_ctl_random(raw, sizeof(raw));

    if (st != SP_OK)
        return st;
    for (size_t i = 0; i < sizeof(raw); i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    hex[64] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Hub                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct sp_ctl_hub_entry {
    sp__ctl_conn_t *conn;
    uint32_t id;
    int pfd; /* index in the hub's pollfds this pass, -1 if none */
} sp_ctl_hub_entry_t;

/* A conn hub_wait dropped, and why: what sp__ctl_hub_remove then says. */
typedef struct sp_ctl_hub_gone {
    bool used;
    uint32_t id;
    char why[SP_CTL_WHY];
} sp_ctl_hub_gone_t;

struct sp__ctl_hub {
    sp_ctl_hub_entry_t *entries; /* in the order they were added */
    size_t n, cap;
    size_t cursor; /* the entry served first in the next pass */
    size_t nmpi;   /* entries without an fd */
    /* The listener and the handshakes it runs. */
    int lfd;
    bool lpolled; /* the listener is in this pass's pollfds (slot 0) */
    unsigned char *secret;
    size_t slen;
    int hs_timeout_ms;
    sp_ctl_sock_t *joining[SP__CTL_HUB_MAX_JOINING]; /* handshake under way */
    size_t njoining;
    sp__ctl_conn_t **joined; /* handshake done, waiting for sp__ctl_hub_accept */
    size_t njoined, joined_cap;
    /* Running out of descriptors (EMFILE): the reserve, and the listener's rest. */
    int reserve_fd;            /* /dev/null, given up to shed connections; -1 if none */
    uint64_t listen_resume_ns; /* the listener is not polled before this */
    uint64_t accept_backoff_ns;
    /* Warnings about connections that never joined: at most one a second. */
    uint64_t warn_next_ns;
    uint64_t warn_quiet; /* held back since the last one written */
    sp_ctl_hub_gone_t gone[SP_CTL_GONE];
    size_t gone_next;
    sp__ctl_hub_stats_t stats;
    struct pollfd *pfds;
    size_t pfd_cap;
};

static int sp_ctl_reserve_open(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

sp_status_t sp__ctl_hub_create(sp__ctl_hub_t **hub_p)
{
    sp__ctl_hub_t *hub = sp__calloc(1, sizeof(*hub));

    if (hub == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control hub: out of memory");
    hub->lfd = -1;
    hub->reserve_fd = -1;
    *hub_p = hub;
    return SP_OK;
}

static void sp_ctl_hub_forget_secret(sp__ctl_hub_t *hub)
{
    if (hub->secret != NULL) {
        OPENSSL_cleanse(hub->secret, hub->slen);
        sp__free(hub->secret);
    }
    hub->secret = NULL;
    hub->slen = 0;
}

void sp__ctl_hub_destroy(sp__ctl_hub_t *hub)
{
    if (hub == NULL)
        return;
    for (size_t i = 0; i < hub->n; i++)
        sp__ctl_close(hub->entries[i].conn);
    for (size_t j = 0; j < hub->njoining; j++)
        sp__ctl_close(&hub->joining[j]->base);
    for (size_t j = 0; j < hub->njoined; j++)
        sp__ctl_close(hub->joined[j]);
    if (hub->reserve_fd >= 0)
        close(hub->reserve_fd);
    sp_ctl_hub_forget_secret(hub);
    sp__free(hub->entries);
    sp__free(hub->joined);
    sp__free(hub->pfds);
    sp__free(hub);
}

/* Room for element n of size bytes in *array of *cap_p elements. */
static bool sp_ctl_grow(void **array, size_t *cap_p, size_t n, size_t size)
{
    size_t cap = *cap_p < 8 ? 8 : *cap_p * 2;
    void *grown;

    if (n < *cap_p)
        return true;
    grown = sp__realloc(*array, cap * size);
    if (grown == NULL)
        return false;
    *array = grown;
    *cap_p = cap;
    return true;
}

static bool sp_ctl_hub_find(const sp__ctl_hub_t *hub, uint32_t id, size_t *i_p)
{
    for (size_t i = 0; i < hub->n; i++) {
        if (hub->entries[i].id == id) {
            *i_p = i;
            return true;
        }
    }
    return false;
}

static sp_ctl_hub_gone_t *sp_ctl_hub_find_gone(sp__ctl_hub_t *hub, uint32_t id)
{
    for (size_t g = 0; g < SP_CTL_GONE; g++)
        if (hub->gone[g].used && hub->gone[g].id == id)
            return &hub->gone[g];
    return NULL;
}

/* Notes that hub_wait dropped the conn of id because of why (the oldest note makes room). */
static void sp_ctl_hub_note_gone(sp__ctl_hub_t *hub, uint32_t id, const char *why)
{
    sp_ctl_hub_gone_t *g = sp_ctl_hub_find_gone(hub, id);

    if (g == NULL) {
        g = &hub->gone[hub->gone_next];
        hub->gone_next = (hub->gone_next + 1) % SP_CTL_GONE;
    }
    g->used = true;
    g->id = id;
    snprintf(g->why, sizeof(g->why), "%s", why);
}

sp_status_t sp__ctl_hub_add(sp__ctl_hub_t *hub, sp__ctl_conn_t *conn, uint32_t id)
{
    sp_ctl_hub_gone_t *g;
    size_t i;
    sp_status_t st;

    if (id == SP__CTL_HUB_NEW) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "control hub: id %u is reserved", id);
        goto err_close;
    }
    if (sp_ctl_hub_find(hub, id, &i)) {
        st = SP_RAISE(SP_ERR_EXISTS, "control hub: id %u is in use (by %s)", id,
                      hub->entries[i].conn->peer);
        goto err_close;
    }
    if (!sp_ctl_grow((void **)&hub->entries, &hub->cap, hub->n, sizeof(*hub->entries))) {
        st = SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for conn %u", id);
        goto err_close;
    }
    hub->entries[hub->n] = (sp_ctl_hub_entry_t){.conn = conn, .id = id, .pfd = -1};
    hub->n++;
    hub->nmpi += conn->fd < 0;
    if ((g = sp_ctl_hub_find_gone(hub, id)) != NULL)
        g->used = false;
    return SP_OK;

err_close:
    sp__ctl_close(conn);
    return st;
}

static void sp_ctl_hub_remove_at(sp__ctl_hub_t *hub, size_t i)
{
    sp__ctl_conn_t *conn = hub->entries[i].conn;

    hub->nmpi -= conn->fd < 0;
    memmove(&hub->entries[i], &hub->entries[i + 1], (hub->n - i - 1) * sizeof(*hub->entries));
    hub->n--;
    if (hub->cursor > i)
        hub->cursor--;
    if (hub->cursor >= hub->n)
        hub->cursor = 0;
    sp__ctl_close(conn);
}

sp_status_t sp__ctl_hub_remove(sp__ctl_hub_t *hub, uint32_t id)
{
    const sp_ctl_hub_gone_t *g;
    size_t i;

    if (!sp_ctl_hub_find(hub, id, &i)) {
        /* A conn hub_wait dropped: say what happened to its peer, not that it is missing. */
        if ((g = sp_ctl_hub_find_gone(hub, id)) != NULL)
            return SP_RAISE(SP_ERR_NOT_FOUND, "%s", g->why);
        return SP_RAISE(SP_ERR_NOT_FOUND,
                        "control hub: id %u names no conn (never added, or removed before)", id);
    }
    sp_ctl_hub_remove_at(hub, i);
    return SP_OK;
}

sp__ctl_conn_t *sp__ctl_hub_conn(const sp__ctl_hub_t *hub, uint32_t id)
{
    size_t i;

    return sp_ctl_hub_find(hub, id, &i) ? hub->entries[i].conn : NULL;
}

size_t sp__ctl_hub_count(const sp__ctl_hub_t *hub) { return hub->n; }

void sp__ctl_hub_stats(const sp__ctl_hub_t *hub, sp__ctl_hub_stats_t *stats)
{
    *stats = hub->stats;
    stats->joining = hub->njoining;
}

sp_status_t sp__ctl_hub_set_listener(sp__ctl_hub_t *hub, int lfd, const void *secret, size_t slen,
                                     int handshake_timeout_ms)
{
    unsigned char *copy = NULL;
    sp_status_t st;

    if (lfd >= 0) {
        if ((st = sp_ctl_check_secret(secret, slen)) != SP_OK)
            return st;
        copy = sp__malloc(slen);
        if (copy == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "control hub: cannot copy the secret");
        memcpy(copy, secret, slen);
        /* Without a reserve the hub still backs off on EMFILE; it only cannot shed. */
        if (hub->reserve_fd < 0)
            hub->reserve_fd = sp_ctl_reserve_open();
    } else if (hub->reserve_fd >= 0) {
        close(hub->reserve_fd);
        hub->reserve_fd = -1;
    }
    sp_ctl_hub_forget_secret(hub);
    hub->lfd = lfd;
    hub->secret = copy;
    hub->slen = lfd >= 0 ? slen : 0;
    hub->hs_timeout_ms = handshake_timeout_ms;
    hub->listen_resume_ns = 0;
    hub->accept_backoff_ns = 0;
    return SP_OK;
}

sp_status_t sp__ctl_hub_accept(sp__ctl_hub_t *hub, sp__ctl_conn_t **conn_p)
{
    if (hub->njoined == 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "control hub: no new connection is waiting");
    *conn_p = hub->joined[0];
    hub->njoined--;
    memmove(hub->joined, hub->joined + 1, hub->njoined * sizeof(*hub->joined));
    return SP_OK;
}

/*
 * A warning about a connection that did not join, or about the listener:
 * at most one a second, so that a flood of strangers cannot flood the log;
 * the next one written counts those held back.
 */
static void sp_ctl_hub_warn(sp__ctl_hub_t *hub, const char *fmt, ...) SP_PRINTF(2, 3);

static void sp_ctl_hub_warn(sp__ctl_hub_t *hub, const char *fmt, ...)
{
    uint64_t now = sp__now_ns();
    char msg[768];
    va_list ap;

    if (now < hub->warn_next_ns) {
        hub->warn_quiet++;
        hub->stats.warnings_held_back++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (hub->warn_quiet > 0)
        sp_warn("%s (%llu more such warnings held back since the last)", msg,
                (unsigned long long)hub->warn_quiet);
    else
        sp_warn("%s", msg);
    hub->warn_quiet = 0;
    hub->warn_next_ns = now + SP_CTL_WARN_EVERY_NS;
}

/* Closes joining connection j. */
static void sp_ctl_hub_drop_joining(sp__ctl_hub_t *hub, size_t j)
{
    sp__ctl_close(&hub->joining[j]->base);
    hub->joining[j] = hub->joining[--hub->njoining];
}

/*
 * Advances the handshake of joining connection j (ready: its fd polled
 * readable): on AUTH it answers and moves the conn to the joined queue; a
 * failure or the handshake's deadline drops it with a warning.
 */
static void sp_ctl_hub_step_joining(sp__ctl_hub_t *hub, size_t j, bool ready)
{
    sp_ctl_sock_t *s = hub->joining[j];
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    bool got = false;
    sp_status_t st = SP_OK;

    if (ready || s->base.buffered)
        st = sp_ctl_try(&s->base, &got, &type, &payload, &len);
    if (st == SP_OK && got) {
        st = sp_ctl_hs_verify(s, hub->secret, hub->slen, type, payload, len);
        sp__free(payload);
        if (st == SP_OK && !sp_ctl_grow((void **)&hub->joined, &hub->joined_cap, hub->njoined,
                                        sizeof(*hub->joined)))
            st = SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for a new connection");
        if (st == SP_OK) {
            hub->joined[hub->njoined++] = &s->base;
            hub->joining[j] = hub->joining[--hub->njoining];
            hub->stats.joined++;
            return;
        }
    }
    if (st != SP_OK) {
        if (st == SP_ERR_INVALID_PARAM) {
            hub->stats.refused++;
            sp_ctl_hub_warn(hub, "control: refused a connection from %s: %s", s->base.peer,
                            SP_CTL_WRONG_SECRET);
        } else {
            if (st == SP_ERR_PEER_LOST)
                hub->stats.closed++;
            else
                hub->stats.malformed++;
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s in its handshake: %s",
                            s->base.peer, sp_last_error());
        }
        sp_ctl_hub_drop_joining(hub, j);
        return;
    }
    if (sp__now_ns() >= s->hs_deadline) {
        hub->stats.timed_out++;
        sp_ctl_hub_warn(hub, "control: dropped a connection from %s: no handshake within %d ms",
                        s->base.peer, hub->hs_timeout_ms);
        sp_ctl_hub_drop_joining(hub, j);
    }
}

/* Index of the joining connection that has waited longest (njoining > 0). */
static size_t sp_ctl_hub_oldest(const sp__ctl_hub_t *hub)
{
    size_t oldest = 0;

    for (size_t j = 1; j < hub->njoining; j++)
        if (hub->joining[j]->hs_started < hub->joining[oldest]->hs_started)
            oldest = j;
    return oldest;
}

/*
 * When the listener may be polled again (0: now). It rests after accept ran
 * out of descriptors, and while every handshake slot holds a connection
 * younger than SP_CTL_EVICT_AFTER_NS.
 */
static uint64_t sp_ctl_hub_listen_at(const sp__ctl_hub_t *hub)
{
    uint64_t at = hub->listen_resume_ns;

    if (hub->njoining == SP__CTL_HUB_MAX_JOINING)
        at = SP_MAX(at, hub->joining[sp_ctl_hub_oldest(hub)]->hs_started + SP_CTL_EVICT_AFTER_NS);
    return at;
}

/* The listener rests for the next back-off step (10 ms doubling to 1 s); returns it in ms. */
static unsigned long long sp_ctl_hub_rest(sp__ctl_hub_t *hub)
{
    hub->accept_backoff_ns = hub->accept_backoff_ns == 0
                                 ? SP_CTL_ACCEPT_BACKOFF_MIN_NS
                                 : SP_MIN(hub->accept_backoff_ns * 2, SP_CTL_ACCEPT_BACKOFF_MAX_NS);
    hub->listen_resume_ns = sp__now_ns() + hub->accept_backoff_ns;
    return (unsigned long long)(hub->accept_backoff_ns / 1000000u);
}

/*
 * accept() ran out of descriptors (err): the classic reserve trick. The
 * reserve descriptor is given up so that the connections waiting in the
 * backlog can be accepted and closed at once (their clients see a close
 * and, if they are ours, connect again), then taken back; the listener then
 * rests, so that a lasting shortage costs a wake-up per back-off step, not
 * a busy loop, and one warning a second at most.
 */
static void sp_ctl_hub_out_of_fds(sp__ctl_hub_t *hub, int err)
{
    unsigned shed = 0;

    hub->stats.accept_failures++;
    if (hub->reserve_fd >= 0 && (err == EMFILE || err == ENFILE)) {
        close(hub->reserve_fd);
        hub->reserve_fd = -1;
        while (shed < SP_CTL_ACCEPT_BATCH) {
            int fd = accept4(hub->lfd, NULL, NULL, SOCK_CLOEXEC);

            if (fd < 0 && errno == EINTR)
                continue;
            if (fd < 0)
                break;
            close(fd);
            shed++;
        }
        hub->reserve_fd = sp_ctl_reserve_open();
        hub->stats.shed += shed;
    }
    sp_ctl_hub_warn(hub,
                    "control: out of file descriptors accepting connections (%s, errno %d): "
                    "closed %u waiting connection(s) unanswered; accepting again in %llu ms",
                    strerror(err), err, shed, sp_ctl_hub_rest(hub));
}

/*
 * Accepts what is pending on the listener and greets each with HELLO. At
 * most SP__CTL_HUB_MAX_JOINING connections are in the handshake at once;
 * when every slot is taken, a newcomer takes the slot of the oldest if that
 * one has had SP_CTL_EVICT_AFTER_NS to answer, else it waits in the backlog.
 */
static void sp_ctl_hub_accept_pending(sp__ctl_hub_t *hub)
{
    if (hub->reserve_fd < 0)
        hub->reserve_fd = sp_ctl_reserve_open();
    for (int k = 0; k < SP_CTL_ACCEPT_BATCH; k++) {
        char peer[sizeof(((sp__ctl_conn_t *)0)->peer)];
        bool full = hub->njoining == SP__CTL_HUB_MAX_JOINING;
        uint64_t now = sp__now_ns();
        sp_ctl_sock_t *s = NULL;
        size_t oldest = 0;
        int fd = -1, err = 0;
        sp_status_t st;

        if (full) {
            oldest = sp_ctl_hub_oldest(hub);
            if (now - hub->joining[oldest]->hs_started < SP_CTL_EVICT_AFTER_NS)
                return;
        }
        st = sp_ctl_accept_fd(hub->lfd, &fd, peer, sizeof(peer), &err);
        if (st == SP_ERR_NO_RESOURCE) {
            sp_ctl_hub_out_of_fds(hub, err);
            return;
        }
        if (st != SP_OK) {
            hub->stats.accept_failures++;
            sp_ctl_hub_warn(hub, "control: %s; accepting again in %llu ms", sp_last_error(),
                            sp_ctl_hub_rest(hub));
            return;
        }
        if (fd < 0)
            return;
        hub->accept_backoff_ns = 0;
        if (full) {
            sp_ctl_sock_t *old = hub->joining[oldest];

            hub->stats.evicted++;
            sp_ctl_hub_warn(hub,
                            "control: dropped a connection from %s: no handshake after %llu ms "
                            "while all %d handshake slots were taken",
                            old->base.peer,
                            (unsigned long long)((now - old->hs_started) / 1000000u),
                            SP__CTL_HUB_MAX_JOINING);
            sp_ctl_hub_drop_joining(hub, oldest);
        }
        if (sp_ctl_sock_new(fd, peer, &s) != SP_OK) {
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s: %s", peer,
                            sp_last_error());
            continue;
        }
        if (sp_ctl_hs_hello(s) != SP_OK) {
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s: %s", peer,
                            sp_last_error());
            sp__ctl_close(&s->base);
            continue;
        }
        s->hs_started = now;
        s->hs_deadline = sp__ctl_deadline(hub->hs_timeout_ms);
        hub->joining[hub->njoining++] = s;
    }
}

/*
 * Fills the pollfds for this pass: the listener first (unless it rests),
 * then the joining connections, then the stream conns (each entry notes its
 * slot).
 */
static bool sp_ctl_hub_pollfds(sp__ctl_hub_t *hub, uint64_t now, size_t *nfds_p)
{
    size_t need = hub->n + hub->njoining + 1, nfds = 0;

    if (need > hub->pfd_cap) {
        struct pollfd *grown = sp__realloc(hub->pfds, need * sizeof(*grown));

        if (grown == NULL)
            return false;
        hub->pfds = grown;
        hub->pfd_cap = need;
    }
    hub->lpolled = hub->lfd >= 0 && now >= sp_ctl_hub_listen_at(hub);
    if (hub->lpolled)
        hub->pfds[nfds++] = (struct pollfd){.fd = hub->lfd, .events = POLLIN};
    for (size_t j = 0; j < hub->njoining; j++)
        hub->pfds[nfds++] = (struct pollfd){.fd = hub->joining[j]->base.fd, .events = POLLIN};
    for (size_t i = 0; i < hub->n; i++) {
        sp_ctl_hub_entry_t *e = &hub->entries[i];

        e->pfd = -1;
        if (e->conn->fd >= 0) {
            e->pfd = (int)nfds;
            hub->pfds[nfds++] = (struct pollfd){.fd = e->conn->fd, .events = POLLIN};
        }
    }
    *nfds_p = nfds;
    return true;
}

/* How long this pass may sleep in poll. */
static uint64_t sp_ctl_hub_wait_ns(const sp__ctl_hub_t *hub, uint64_t deadline, bool first,
                                   uint64_t backoff)
{
    uint64_t wait = sp_ctl_left(deadline), now = sp__now_ns();

    for (size_t i = 0; i < hub->n; i++)
        if (hub->entries[i].conn->buffered)
            return 0;
    for (size_t j = 0; j < hub->njoining; j++) {
        uint64_t hd = hub->joining[j]->hs_deadline;

        if (hub->joining[j]->base.buffered)
            return 0;
        wait = SP_MIN(wait, hd > now ? hd - now : 0);
    }
    /* A resting listener is polled again when its rest is over. */
    if (hub->lfd >= 0 && !hub->lpolled) {
        uint64_t at = sp_ctl_hub_listen_at(hub);

        wait = SP_MIN(wait, at > now ? at - now : 0);
    }
    if (hub->nmpi > 0)
        wait = first ? 0 : SP_MIN(wait, backoff);
    return wait;
}

sp_status_t sp__ctl_hub_wait(sp__ctl_hub_t *hub, int timeout_ms, uint32_t *id_p, uint16_t *type_p,
                             void **payload_p, size_t *len_p)
{
    uint64_t deadline = sp__ctl_deadline(timeout_ms), backoff = SP_CTL_PROBE_MIN_NS;
    bool first = true;

    if (timeout_ms < 0 && hub->n == 0 && hub->lfd < 0 && hub->njoining == 0 && hub->njoined == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control hub: waiting forever with no conn and no listener");
    for (;;) {
        size_t nfds = 0, njoining = hub->njoining, lslot;

        if (hub->njoined > 0) {
            *id_p = SP__CTL_HUB_NEW;
            *type_p = 0;
            *payload_p = NULL;
            *len_p = 0;
            return SP_OK;
        }
        if (!sp_ctl_hub_pollfds(hub, sp__now_ns(), &nfds))
            return SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for %zu pollfds",
                            hub->n + hub->njoining + 1);
        lslot = hub->lpolled ? 1 : 0;
        hub->stats.polls++;
        if (sp_ctl_ppoll(hub->pfds, nfds, sp_ctl_hub_wait_ns(hub, deadline, first, backoff)) < 0)
            return SP_RAISE(SP_ERR_INTERNAL, "control hub: poll over %zu fds: %s (errno %d)", nfds,
                            strerror(errno), errno);

        /* Conns, round robin from the cursor. */
        for (size_t k = 0; k < hub->n; k++) {
            size_t i = (hub->cursor + k) % hub->n;
            sp_ctl_hub_entry_t *e = &hub->entries[i];
            uint16_t type = 0;
            void *payload = NULL;
            size_t len = 0;
            bool got = false;
            sp_status_t st;

            if (e->pfd >= 0 && !e->conn->buffered && hub->pfds[e->pfd].revents == 0)
                continue;
            st = sp_ctl_try(e->conn, &got, &type, &payload, &len);
            if (st == SP_ERR_NOMEM)
                return st;
            if (st == SP_OK && got && type < SP__CTL_TYPE_FIRST) {
                sp__free(payload);
                st = sp_ctl_unexpected(e->conn, type);
            }
            if (st != SP_OK) {
                *id_p = e->id;
                sp_ctl_hub_note_gone(hub, e->id, sp_last_error());
                sp_ctl_hub_remove_at(hub, i);
                return st;
            }
            if (got) {
                hub->cursor = (i + 1) % hub->n;
                *id_p = e->id;
                *type_p = type;
                *payload_p = payload;
                *len_p = len;
                return SP_OK;
            }
        }

        /*
         * Handshakes under way, last first: dropping j moves the last one
         * (already stepped) into its place. Those accepted below wait for
         * the next pass.
         */
        for (size_t j = njoining; j-- > 0;)
            sp_ctl_hub_step_joining(hub, j, hub->pfds[lslot + j].revents != 0);
        if (hub->lpolled && hub->pfds[0].revents != 0)
            sp_ctl_hub_accept_pending(hub);
        if (hub->njoined > 0)
            continue;
        if (sp_ctl_left(deadline) == 0)
            return SP_RAISE(SP_ERR_TIMED_OUT, "control hub: no message within %d ms", timeout_ms);
        if (!first)
            backoff = SP_MIN(backoff * 2, SP_CTL_PROBE_MAX_NS);
        first = false;
    }
}
