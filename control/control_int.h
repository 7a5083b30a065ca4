/*
 * The control layer's private header: what its files share and nothing above
 * control/ may include (tests/common/test_layers.c refuses a *_int.h from
 * another layer). The executor uses control/ctl.h; the launcher control.h.
 *
 *   frame.c    the base conn: the backends' ops table, locks, counters,
 *              deadlines, whole frames in and out over the ops
 *   sock.c     the stream-socket backend, its receive gate, addresses
 *   auth.c     the pieces of the HMAC handshake both sides run
 *   mpi.c      the MPI backend
 *   hub.c      the driver's hub (and its waiting backends, hub_int.h)
 */
#ifndef SPATE_CONTROL_CONTROL_INT_H
#define SPATE_CONTROL_CONTROL_INT_H

#include "control/ctl.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

/* Read-ahead of a stream conn; payloads at least this long bypass it. */
#define SP__CTL_INBUF 16384
/* Longest failure reason a conn keeps for later calls and a hub for removed ids. */
#define SP__CTL_WHY 200
/* The pause between probes of an MPI conn (a receive's or the hub's), doubling while idle. */
#define SP__CTL_PROBE_MIN_NS 50000u
#define SP__CTL_PROBE_MAX_NS 200000u
/* Reason a server gives a client whose MAC is wrong. */
#define SP__CTL_WRONG_SECRET "wrong secret"
/*
 * Largest payload a client reads before the server has proved the secret:
 * HELLO and WELCOME hold 32 bytes, REFUSED a reason of at most 200.
 */
#define SP__CTL_HS_ANSWER_MAX 256u
/* Bytes of the AUTH payload, the one frame a server reads before authentication. */
#define SP__CTL_AUTH_SIZE (SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE)

/* ------------------------------------------------------------------------ */
/* The base conn and its backends (frame.c)                                  */
/* ------------------------------------------------------------------------ */

typedef struct sp__ctl_ops {
    size_t size; /* sizeof(sp__ctl_ops_t) */
    /* One whole frame (header then payload); called with send_lock held. */
    sp_status_t (*send)(sp__ctl_conn_t *c, const unsigned char *header, const void *payload,
                        size_t len);
    /*
     * Whatever has arrived, without waiting: *got_p true with a whole
     * frame, whose header is checked; false when none is complete yet.
     * Called with recv_lock held.
     */
    sp_status_t (*try_recv)(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p, void **payload_p,
                            size_t *len_p);
    /* Frees the backend's part; the base is freed by the caller. */
    void (*close)(sp__ctl_conn_t *c);
} sp__ctl_ops_t;

/* The part every conn shares; a backend embeds it first. */
struct sp__ctl_conn {
    const sp__ctl_ops_t *ops;
    int fd;                  /* stream conns; -1 for MPI */
    bool buffered;           /* bytes read ahead: try_recv may deliver without poll */
    atomic_int send_timeout; /* ms; < 0 forever */
    pthread_mutex_t send_lock;
    pthread_mutex_t recv_lock;
    atomic_uint_fast64_t msgs_sent, bytes_sent, msgs_received, bytes_received;
    char peer[64];
};

/* Fills the base fields (locks, counters, name). */
sp_status_t sp__ctl_conn_init(sp__ctl_conn_t *c, const sp__ctl_ops_t *ops, int fd,
                              const char *peer);
/* Undoes sp__ctl_conn_init. */
void sp__ctl_conn_fini(sp__ctl_conn_t *c);
/*
 * Checks a received header from c's peer: magic, version and length
 * (SP_ERR_BAD_FORMAT naming the peer otherwise).
 */
sp_status_t sp__ctl_header_check(const sp__ctl_conn_t *c, const unsigned char *header,
                                 uint16_t *type_p, uint32_t *len_p);
/* Deadline in sp__now_ns() time for timeout_ms; UINT64_MAX when < 0. */
uint64_t sp__ctl_deadline(int timeout_ms);
/* Nanoseconds left until deadline (UINT64_MAX: forever). */
uint64_t sp__ctl_left(uint64_t deadline);
/* Sleeps ns nanoseconds, EINTR or not. */
void sp__ctl_sleep_ns(uint64_t ns);
/*
 * ppoll() for at most wait_ns (UINT64_MAX: forever), retrying EINTR with
 * what is left. Returns the count of ready fds (0 on timeout), -1 with
 * errno on failure.
 */
int sp__ctl_ppoll(struct pollfd *fds, size_t nfds, uint64_t wait_ns);
/* One frame of any type (the channel's own included), whole, under the send lock. */
sp_status_t sp__ctl_send_frame(sp__ctl_conn_t *c, uint16_t type, const void *payload, size_t len);
/* try_recv under the receive lock, counting what arrives. */
sp_status_t sp__ctl_try(sp__ctl_conn_t *c, bool *got_p, uint16_t *type_p, void **payload_p,
                        size_t *len_p);
/*
 * The next frame of any type by deadline; what names the awaited frame in
 * the timeout's message ("a control message", "the handshake's HELLO").
 */
sp_status_t sp__ctl_recv_frame(sp__ctl_conn_t *c, uint64_t deadline, int timeout_ms,
                               const char *what, uint16_t *type_p, void **payload_p, size_t *len_p);
/* Raises the error for a channel type (handshake) where only the protocol's may come. */
sp_status_t sp__ctl_unexpected(const sp__ctl_conn_t *c, uint16_t type);

/* ------------------------------------------------------------------------ */
/* Stream sockets (sock.c)                                                   */
/* ------------------------------------------------------------------------ */

/*
 * What a stream conn may receive. Before authentication a server takes
 * nothing but the fixed-size AUTH frame, and a client nothing larger than a
 * handshake answer; any other header is refused as soon as its 12 bytes are
 * in, before anything is allocated for its payload.
 */
typedef enum sp__ctl_gate {
    SP__CTL_GATE_OPEN = 0,   /* authenticated, or no handshake: any frame */
    SP__CTL_GATE_AUTH = 1,   /* server awaiting AUTH: exactly that type and size */
    SP__CTL_GATE_ANSWER = 2, /* client awaiting HELLO/WELCOME/REFUSED: small frames */
} sp__ctl_gate_t;

typedef struct sp__ctl_sock {
    sp__ctl_conn_t base;
    sp__ctl_gate_t gate; /* recv_lock */
    /* Receive side (recv_lock): read-ahead, then the frame being assembled. */
    size_t in_pos, in_len;
    unsigned char hdr[SP__CTL_HEADER_SIZE];
    size_t hdr_got;
    bool have_hdr; /* hdr checked; type and len valid */
    uint16_t type;
    uint32_t len;
    unsigned char *payload; /* len bytes once allocated */
    size_t payload_got;
    sp_status_t rx_failed;    /* the stream is out of step or closed */
    char rx_why[SP__CTL_WHY]; /* what happened, for later receives */
    /* Send side (send_lock). */
    sp_status_t tx_failed; /* a frame went out in part, or the peer is gone */
    char tx_why[SP__CTL_WHY];
    /* Server side of a handshake run by a hub. */
    unsigned char nonce[SP__CTL_NONCE_SIZE];
    uint64_t hs_started, hs_deadline;
    unsigned char in[SP__CTL_INBUF];
} sp__ctl_sock_t;

/* A stream conn over fd, which it owns from now on (closed on failure). */
sp_status_t sp__ctl_sock_new(int fd, const char *peer, sp__ctl_sock_t **sock_p);
/* Sets TCP_NODELAY; fails harmlessly on sockets that are not TCP. */
void sp__ctl_sock_nodelay(int fd);
/*
 * Marks a stream conn's receive side failed with st (already raised; an
 * MPI conn stays in step and is left alone); returns st.
 */
sp_status_t sp__ctl_fail_rx(sp__ctl_conn_t *c, sp_status_t st);
/*
 * Accepts one pending connection on lfd: *fd_p, or -1 when none is pending;
 * peer gets its "addr:port". On failure *err_p is accept's errno
 * (SP_ERR_NO_RESOURCE when out of descriptors or memory, else SP_ERR_TRANSPORT).
 */
sp_status_t sp__ctl_accept_fd(int lfd, int *fd_p, char *peer, size_t cap, int *err_p);

/* ------------------------------------------------------------------------ */
/* Handshake (auth.c)                                                        */
/* ------------------------------------------------------------------------ */

/* SP_ERR_INVALID_PARAM unless secret holds 1 to INT_MAX bytes. */
sp_status_t sp__ctl_check_secret(const void *secret, size_t slen);
/*
 * Server: a fresh nonce, sent as HELLO; from now on the conn reads nothing
 * but the fixed-size AUTH frame until the client has proved the secret.
 */
sp_status_t sp__ctl_hs_hello(sp__ctl_sock_t *s);
/*
 * Server: checks the client's AUTH frame; answers WELCOME, or REFUSED for a
 * wrong MAC (SP_ERR_INVALID_PARAM; the caller logs it). The caller closes
 * the conn on failure.
 */
sp_status_t sp__ctl_hs_verify(sp__ctl_sock_t *s, const void *secret, size_t slen, uint16_t type,
                              const unsigned char *payload, size_t len);
/*
 * Client, first half: reads HELLO, sends AUTH, and leaves in want the MAC
 * the server's WELCOME must carry.
 */
sp_status_t sp__ctl_hs_auth(sp__ctl_sock_t *s, const void *secret, size_t slen, uint64_t deadline,
                            int timeout_ms, unsigned char *want);
/* Client, second half: WELCOME with the wanted MAC, or REFUSED. */
sp_status_t sp__ctl_hs_finish(sp__ctl_sock_t *s, const unsigned char *want, uint64_t deadline,
                              int timeout_ms);

#endif /* SPATE_CONTROL_CONTROL_INT_H */
