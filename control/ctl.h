/*
 * The control plane's channel: how the driver and the executors of a job
 * carry their small control messages (register, task assignment, task
 * result, heartbeat, map output updates, shutdown). This header is the
 * transport of those messages only; their contents are the protocol's.
 *
 *   frame     a 12-byte header {magic 'SPCM', version, type, payload length},
 *             little endian, then the payload. Every field is checked on
 *             receive. (frame.c)
 *   codec     sp__wbuf_t builds a payload, sp__rbuf_t reads one back and
 *             never reads past its end. (codec.c)
 *   conn      one connection to one peer: a stream socket (TCP, or a
 *             socketpair for an executor inside the driver's process;
 *             sock.c), or a rank of a private MPI communicator (mpi.c). TCP
 *             connections start with a mutual HMAC-SHA256 handshake over a
 *             shared secret (auth.c).
 *   hub       the driver's view of many conns: the next message from any of
 *             them, lost peers, and executors that connect while it waits.
 *             (hub.c)
 *
 * Message types below SP__CTL_TYPE_FIRST belong to the channel (handshake);
 * the protocol numbers its messages from SP__CTL_TYPE_FIRST up.
 *
 * Not installed; the control layer's interface to the executor (sp__ names),
 * over control.h, which opens and closes conns (and is all the launcher uses).
 * What the layer's files share among themselves is in control_int.h.
 */
#ifndef SPATE_CONTROL_CTL_H
#define SPATE_CONTROL_CTL_H

#include "common_int.h"
#include "control/control.h"
#include "rbuf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Frames                                                                    */
/* ------------------------------------------------------------------------ */

/* The bytes 'S' 'P' 'C' 'M' read as a little-endian u32. */
#define SP__CTL_MAGIC 0x4d435053u
/*
 * The one version of the frame, the handshake and the protocol's payloads
 * (protocol.h) this build speaks: a change to any of them bumps it, so that
 * a driver and executors of different builds part at their first frame
 * instead of misreading a message later. 2: HEARTBEAT and BYE carry peak anon.
 * 3: PING (driver -> executor). 4: READY, RESULT, HEARTBEAT and BYE carry the
 * executor's CPU time (idle core time per stage). 5: OUTPUT_MOVED, and
 * HEARTBEAT and BYE carry the peak storage memory. 6: CANCEL. 7: graph jobs:
 * TASK and RESULT carry the graph stage, RESULT the failed shuffle and the
 * blocks cached, MAP_LOST the shuffle, BOUNDS the shuffle; UNPERSIST.
 */
#define SP__CTL_VERSION 7u
/* Header: u32 magic, u16 version, u16 type, u32 payload length. */
#define SP__CTL_HEADER_SIZE 12u
/* Largest payload a frame may announce; a larger one is SP_ERR_BAD_FORMAT. */
#define SP__CTL_MAX_PAYLOAD (256u << 20)

/* Writes the header of a frame of type and len payload bytes (SP__CTL_HEADER_SIZE bytes). */
void sp__ctl_header_pack(unsigned char *header, uint16_t type, uint32_t len);

/* Channel message types (below SP__CTL_TYPE_FIRST); never seen by callers. */
enum {
    SP__CTL_HELLO = 1,   /* server -> client: {32-byte nonce Ns} */
    SP__CTL_AUTH = 2,    /* client -> server: {32-byte nonce Nc, 32-byte MAC} */
    SP__CTL_WELCOME = 3, /* server -> client: {32-byte MAC} */
    SP__CTL_REFUSED = 4, /* server -> client: {str reason}; the server closes */
};
/* The protocol's first message type; types below are the channel's. */
#define SP__CTL_TYPE_FIRST 16u

/* Default send timeout of a new conn (sp__ctl_set_send_timeout). */
#define SP__CTL_SEND_TIMEOUT_MS 60000

/* Bytes of the handshake's nonces and MACs. */
#define SP__CTL_NONCE_SIZE 32u
#define SP__CTL_MAC_SIZE   32u

/* ------------------------------------------------------------------------ */
/* Payload codec                                                             */
/* ------------------------------------------------------------------------ */

/*
 * A growable payload under construction. Integers go in little endian;
 * bytes and str are a u32 length then the bytes (str without its NUL).
 * Every put returns the buffer's status, which is sticky: after the first
 * failure (SP_ERR_NOMEM, or SP_ERR_TOO_LARGE for a length that does not fit
 * a u32) later puts do nothing and return it again, so a caller may check
 * each put or only sp__wbuf_status() at the end. Not thread safe.
 */
typedef struct sp__wbuf {
    unsigned char *data; /* sp__malloc'ed; NULL until the first put */
    size_t len, cap;
    sp_status_t status;
} sp__wbuf_t;

/* An empty buffer (nothing allocated). */
void sp__wbuf_init(sp__wbuf_t *w);
/* Frees the bytes; the buffer is empty and usable again. NULL ok. */
void sp__wbuf_free(sp__wbuf_t *w);
/* Forgets the bytes and the error but keeps the memory for reuse. */
void sp__wbuf_reset(sp__wbuf_t *w);
sp_status_t sp__wbuf_status(const sp__wbuf_t *w);

sp_status_t sp__wbuf_put_u8(sp__wbuf_t *w, uint8_t v);
sp_status_t sp__wbuf_put_u16(sp__wbuf_t *w, uint16_t v);
sp_status_t sp__wbuf_put_u32(sp__wbuf_t *w, uint32_t v);
sp_status_t sp__wbuf_put_u64(sp__wbuf_t *w, uint64_t v);
/* u32 length, then len bytes (data may be NULL when len is 0). */
sp_status_t sp__wbuf_put_bytes(sp__wbuf_t *w, const void *data, size_t len);
/* u32 strlen(s), then the bytes of s without its NUL. s must not be NULL. */
sp_status_t sp__wbuf_put_str(sp__wbuf_t *w, const char *s);
/* len bytes as they are, no length (fixed-size fields). */
sp_status_t sp__wbuf_put_raw(sp__wbuf_t *w, const void *data, size_t len);
/*
 * Overwrites the u32 at offset (written earlier, e.g. a count known only
 * at the end). The offset must lie inside what was written: an invariant.
 */
void sp__wbuf_patch_u32(sp__wbuf_t *w, size_t offset, uint32_t v);

/*
 * Gets over the common bounded reader (common/rbuf.h: sp__rbuf_t,
 * sp__rbuf_init, sp__rbuf_left). Each get checks that its field lies inside
 * what is left, else returns SP_ERR_BAD_FORMAT "control message <what>:
 * truncated (...)" and consumes nothing; outputs are set only on success.
 */
sp_status_t sp__rbuf_get_u8(sp__rbuf_t *r, const char *what, uint8_t *v_p);
sp_status_t sp__rbuf_get_u16(sp__rbuf_t *r, const char *what, uint16_t *v_p);
sp_status_t sp__rbuf_get_u32(sp__rbuf_t *r, const char *what, uint32_t *v_p);
sp_status_t sp__rbuf_get_u64(sp__rbuf_t *r, const char *what, uint64_t *v_p);
/*
 * A u32-length-prefixed field, without copying: *data_p points into the
 * reader's buffer (NULL-free: a valid pointer even when *len_p is 0).
 */
sp_status_t sp__rbuf_get_bytes(sp__rbuf_t *r, const char *what, const void **data_p, size_t *len_p);
/*
 * A u32-length-prefixed string as a NUL-terminated copy in *str_p,
 * sp__malloc'ed (free() it). A string holding a NUL byte, or longer than
 * max_len bytes (0: no limit but the payload's), is SP_ERR_BAD_FORMAT "...
 * too long"; SP_ERR_NOMEM when the copy cannot be made.
 */
sp_status_t sp__rbuf_get_str(sp__rbuf_t *r, const char *what, size_t max_len, char **str_p);
/* len bytes as they are (a fixed-size field), copied into dst. */
sp_status_t sp__rbuf_get_raw(sp__rbuf_t *r, const char *what, void *dst, size_t len);
/*
 * SP_OK when everything was read; SP_ERR_BAD_FORMAT "control message
 * <what>: too long (N bytes left over ...)" otherwise.
 */
sp_status_t sp__rbuf_done(const sp__rbuf_t *r, const char *what);

/* ------------------------------------------------------------------------ */
/* Connections                                                               */
/* ------------------------------------------------------------------------ */

/* Conns are opened and closed with control.h; these use one. */

/* Counters of one conn; frames counted with their headers. */
typedef struct sp__ctl_stats {
    uint64_t msgs_sent;  /* frames handed to the socket or to MPI whole */
    uint64_t bytes_sent; /* their bytes, headers included */
    uint64_t msgs_received;
    uint64_t bytes_received;
} sp__ctl_stats_t;

/*
 * Sends one message: type (>= SP__CTL_TYPE_FIRST, else SP_ERR_INVALID_PARAM)
 * and len bytes of payload (payload may be NULL when len is 0; above
 * SP__CTL_MAX_PAYLOAD is SP_ERR_TOO_LARGE). Thread safe: concurrent sends
 * on one conn go out whole, one after the other. On a socket it returns
 * when the whole frame is in the kernel; it waits at most the conn's send
 * timeout for room (SP_ERR_TIMED_OUT; if part of the frame had gone out
 * the conn is abandoned and later sends are SP_ERR_PEER_LOST). A peer that
 * is gone is SP_ERR_PEER_LOST naming it. Over MPI it returns once MPI has
 * the frame, and the send timeout bounds its delivery (sp__ctl_conn_mpi).
 */
sp_status_t sp__ctl_send(sp__ctl_conn_t *conn, uint16_t type, const void *payload, size_t len);

/*
 * Receives the next message, waiting up to timeout_ms (< 0: forever; 0:
 * only what has arrived). *payload_p is sp__malloc'ed (free() it), NULL
 * when *len_p is 0. SP_ERR_TIMED_OUT when no whole message came in time
 * (a partial frame is kept for the next call); SP_ERR_PEER_LOST when the
 * peer closed the connection between frames (or reset it); SP_ERR_BAD_FORMAT
 * for a bad header (magic, version, a length above SP__CTL_MAX_PAYLOAD, a
 * channel type) or a frame cut short by a close. Each message names the
 * peer. After PEER_LOST or BAD_FORMAT a socket conn stays failed: later
 * receives return the same status. Thread safe (receivers take turns).
 */
sp_status_t sp__ctl_recv(sp__ctl_conn_t *conn, int timeout_ms, uint16_t *type_p, void **payload_p,
                         size_t *len_p);

/* The socket of a stream conn (for poll), -1 for an MPI conn. */
int sp__ctl_fd(const sp__ctl_conn_t *conn);
/* The label used in messages about this conn. Valid until close or rename. */
const char *sp__ctl_peer_name(const sp__ctl_conn_t *conn);
/*
 * Renames the peer ("executor 3"; copied, truncated to 63 bytes). Call it
 * before other threads use the conn: names are read without a lock.
 */
void sp__ctl_set_peer_name(sp__ctl_conn_t *conn, const char *name);
/*
 * How long a send may wait for room (< 0: forever); over MPI, how long a
 * frame may wait for the peer to take it before the conn is given up.
 * Thread safe.
 */
void sp__ctl_set_send_timeout(sp__ctl_conn_t *conn, int timeout_ms);
/* A snapshot of the conn's counters. Thread safe. */
void sp__ctl_conn_stats(const sp__ctl_conn_t *conn, sp__ctl_stats_t *stats);

/* ------------------------------------------------------------------------ */
/* Hub                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct sp__ctl_hub sp__ctl_hub_t;

/* hub_wait's *id_p when a new connection passed the handshake. */
#define SP__CTL_HUB_NEW UINT32_MAX
/*
 * Connections a hub runs the handshake with at once. Once all are taken, a
 * newcomer waits in the listen backlog until one joins, fails, reaches its
 * deadline, or has had 100 ms to answer (the newcomer then takes its slot).
 */
#define SP__CTL_HUB_MAX_JOINING 16

/* Counters of a hub's listener; connections that never joined are only counted here. */
typedef struct sp__ctl_hub_stats {
    uint64_t joined;             /* passed the handshake */
    uint64_t refused;            /* proved a wrong secret (sent REFUSED) */
    uint64_t malformed;          /* sent anything but the AUTH frame, or a bad one */
    uint64_t closed;             /* closed or reset the connection in the handshake */
    uint64_t timed_out;          /* reached the handshake deadline */
    uint64_t evicted;            /* gave up its handshake slot to a newcomer */
    uint64_t shed;               /* accepted and closed unanswered while out of descriptors */
    uint64_t accept_failures;    /* accept() failures (EMFILE...); each rests the listener */
    uint64_t warnings_held_back; /* warnings not written (at most one a second is) */
    uint64_t polls;              /* passes of hub_wait through poll() */
    size_t joining;              /* in the handshake now */
} sp__ctl_hub_stats_t;

sp_status_t sp__ctl_hub_create(sp__ctl_hub_t **hub_p);
/* Closes every conn the hub holds (added, joining or not yet taken). NULL ok. */
void sp__ctl_hub_destroy(sp__ctl_hub_t *hub);

/*
 * Hands conn to the hub under id (any value but SP__CTL_HUB_NEW); the hub
 * owns it from then on, also when the call fails (SP_ERR_EXISTS for an id
 * in use, SP_ERR_INVALID_PARAM for SP__CTL_HUB_NEW, SP_ERR_NOMEM); it is
 * then closed. Stream and MPI conns may be mixed.
 */
sp_status_t sp__ctl_hub_add(sp__ctl_hub_t *hub, sp__ctl_conn_t *conn, uint32_t id);
/*
 * Closes and forgets the conn of id. SP_ERR_NOT_FOUND for an id the hub does
 * not hold; when hub_wait dropped that conn, the message is what happened to
 * its peer (the message hub_wait returned), so a caller that removes it again
 * still reports the real cause.
 */
sp_status_t sp__ctl_hub_remove(sp__ctl_hub_t *hub, uint32_t id);
/* The conn of id (for sp__ctl_send), NULL if none; valid until it is removed. */
sp__ctl_conn_t *sp__ctl_hub_conn(const sp__ctl_hub_t *hub, uint32_t id);
/* Conns added and not removed. */
size_t sp__ctl_hub_count(const sp__ctl_hub_t *hub);
/* A snapshot of the hub's counters. Not thread safe (the hub's owner calls it). */
void sp__ctl_hub_stats(const sp__ctl_hub_t *hub, sp__ctl_hub_stats_t *stats);

/*
 * Lets hub_wait accept new executors on the listening fd lfd (from
 * sp__ctl_listen; the caller still owns and closes it; -1 stops). The hub
 * runs the server side of each handshake itself, without blocking, each
 * within handshake_timeout_ms, at most SP__CTL_HUB_MAX_JOINING at once;
 * before authentication it reads nothing but the fixed-size AUTH frame.
 * Clients that fail are dropped without bothering the caller, counted in
 * sp__ctl_hub_stats and logged (warning, with their address) at most once a
 * second. The hub holds a reserve descriptor (/dev/null) while it listens:
 * when accept() runs out of descriptors it closes the reserve, accepts and
 * closes the connections waiting, reopens it, and rests the listener (10 ms
 * doubling to 1 s). secret is copied.
 */
sp_status_t sp__ctl_hub_set_listener(sp__ctl_hub_t *hub, int lfd, const void *secret, size_t slen,
                                     int handshake_timeout_ms);

/*
 * Waits up to timeout_ms (< 0: forever; 0: only what is there) for the
 * next event of any conn and returns:
 *   SP_OK, *id_p a conn's id: a message (*type_p, *payload_p sp__malloc'ed,
 *     free() it, NULL when *len_p is 0);
 *   SP_OK, *id_p SP__CTL_HUB_NEW: a new connection passed the handshake;
 *     take it with sp__ctl_hub_accept() (type, payload and len are 0/NULL);
 *   SP_ERR_PEER_LOST or SP_ERR_BAD_FORMAT (or SP_ERR_TRANSPORT on MPI),
 *     *id_p set: that conn failed and was removed and closed (the message
 *     names it), other outputs untouched;
 *   SP_ERR_TIMED_OUT: nothing came in time (*id_p untouched);
 *   SP_ERR_NOMEM: a payload could not be allocated; the frame is kept.
 * Fair: conns are served round robin from the one after the last served, so
 * a busy conn never starves the others. Stream conns are waited on with
 * poll(); when the hub holds MPI conns it probes them between polls of at
 * most 200 us. Not thread safe: one thread owns the hub (sends on its
 * conns from other threads are fine while they are not removed).
 */
sp_status_t sp__ctl_hub_wait(sp__ctl_hub_t *hub, int timeout_ms, uint32_t *id_p, uint16_t *type_p,
                             void **payload_p, size_t *len_p);

/*
 * Takes the oldest connection that passed the handshake in hub_wait; the
 * caller owns it (typically sp__ctl_hub_add() it under a new id).
 * SP_ERR_NOT_FOUND when there is none.
 */
sp_status_t sp__ctl_hub_accept(sp__ctl_hub_t *hub, sp__ctl_conn_t **conn_p);

#endif /* SPATE_CONTROL_CTL_H */
