/*
 * The control layer's header for the launcher and the layers above it: how
 * a conn to a peer comes to exist and goes away, and the job's secret. A
 * conn is opaque here; sending, receiving and the driver's hub are the
 * executor's business (control/ctl.h). The launcher includes this header
 * only.
 *
 *   listen, accept, connect   TCP with the mutual HMAC-SHA256 handshake
 *   pair                      a socketpair, for an executor in the driver's
 *                             process or a forked child
 *   conn_fd, conn_mpi         an inherited stream socket; a rank of a
 *                             private MPI communicator (no handshake)
 *   secret_generate/from_env  the job's shared secret
 *
 * Not installed; not part of libspate's API (sp__ names).
 */
#ifndef SPATE_CONTROL_CONTROL_H
#define SPATE_CONTROL_CONTROL_H

#include <spate/common.h>

#include <mpi.h>
#include <stddef.h>

/* One connection to one peer; opaque outside control/. */
typedef struct sp__ctl_conn sp__ctl_conn_t;

/*
 * Opens a listening TCP socket on host_port ("127.0.0.1:0", "host:port",
 * "[::1]:0"; port 0 picks a free one) for executors to connect to. *fd_p is
 * the listening fd (non-blocking, close-on-exec), which the caller closes
 * with close(). When bound is not NULL it receives the address actually
 * bound, "127.0.0.1:PORT" ("[addr]:PORT" for IPv6), truncated to cap
 * bytes. SP_ERR_INVALID_PARAM for a malformed host_port, SP_ERR_NOT_FOUND
 * for a host that does not resolve, SP_ERR_TRANSPORT when bind/listen fail.
 */
sp_status_t sp__ctl_listen(const char *host_port, char *bound, size_t cap, int *fd_p);

/*
 * Server side of one connection: waits up to timeout_ms (< 0: forever) for
 * a client on the listening fd lfd, accepts it and runs the handshake with
 * secret (slen > 0 bytes), all within that deadline. *conn_p is the new
 * conn, owned by the caller; its peer name is the client's "addr:port".
 * Until the client proves the secret only its fixed-size AUTH frame is
 * read: any other header is SP_ERR_BAD_FORMAT before its payload is read.
 * A client that proves a wrong secret is sent REFUSED, closed and logged
 * (warning, with its address); the call returns SP_ERR_INVALID_PARAM. A
 * client that stops or misbehaves in the handshake gives SP_ERR_PEER_LOST,
 * SP_ERR_BAD_FORMAT or SP_ERR_TIMED_OUT. Any failure concerns that one
 * client only, except SP_ERR_NO_RESOURCE (out of fds) and SP_ERR_TRANSPORT
 * (accept() failed otherwise). Thread safe (on distinct or the same lfd).
 */
sp_status_t sp__ctl_accept(int lfd, const void *secret, size_t slen, int timeout_ms,
                           sp__ctl_conn_t **conn_p);

/*
 * Client side: connects to host_port and runs the handshake with secret,
 * retrying refused or failed connection attempts (with a backoff up to
 * 200 ms) until timeout_ms (< 0: forever) has passed, since the driver may
 * start a little later than its executors; a driver that closes the
 * connection in the handshake (short of handshake slots or descriptors) is
 * tried again the same way. The peer name is host_port as given. Until the
 * driver proves the secret no frame longer than 256 bytes is read (else
 * SP_ERR_BAD_FORMAT). A driver that refuses the secret is SP_ERR_INVALID_PARAM
 * "...: driver refused: wrong secret"; one whose own proof is wrong is
 * SP_ERR_INVALID_PARAM too; nobody listening until the deadline is
 * SP_ERR_TIMED_OUT naming the address and the last errno.
 */
sp_status_t sp__ctl_connect(const char *host_port, const void *secret, size_t slen, int timeout_ms,
                            sp__ctl_conn_t **conn_p);

/*
 * Two connected conns over a socketpair, for an executor that lives in the
 * driver's process (or a forked child: each side closes the conn it does
 * not use). With secret (slen > 0) both ends run the handshake here, as a
 * check of the same code; with secret NULL they do not. Peer names are
 * "socketpair". Both are owned by the caller.
 */
sp_status_t sp__ctl_pair(const void *secret, size_t slen, sp__ctl_conn_t **a_p,
                         sp__ctl_conn_t **b_p);

/*
 * Wraps an already connected stream socket (inherited from a launcher,
 * say) without a handshake; the conn owns fd from then on, also when the
 * call fails. peer_name may be NULL ("fd N").
 */
sp_status_t sp__ctl_conn_fd(int fd, const char *peer_name, sp__ctl_conn_t **conn_p);

/*
 * A conn to peer_rank of comm, an MPI_Comm_dup of MPI_COMM_WORLD private to
 * the control plane, which the caller keeps until every conn on it is
 * closed; this call sets MPI_ERRORS_RETURN on it. MPI must be initialized
 * with MPI_THREAD_MULTIPLE (else SP_ERR_UNSUPPORTED). No handshake: MPI is
 * the trust boundary. peer_rank may be the caller's own rank. Peer name
 * "rank N". A send on it never waits for the peer (unless 64 frames are
 * already in flight): the frame is handed to MPI_Isend and completed by
 * later sends and receives; once a frame has waited the conn's send timeout
 * undelivered, the send or receive that sees it, and every later one,
 * returns SP_ERR_PEER_LOST "rank N took no control message for T ms ...".
 * See control/mpi.c.
 */
sp_status_t sp__ctl_conn_mpi(MPI_Comm comm, int peer_rank, sp__ctl_conn_t **conn_p);

/* Closes the connection and frees the conn. NULL ok. No call may be in flight. */
void sp__ctl_close(sp__ctl_conn_t *conn);

/*
 * Reads the shared secret from the environment variable var (NULL:
 * "SPATE_SECRET"). The secret is the variable's text byte for byte (no hex
 * decoding), so the 64 hex digits of sp__ctl_secret_generate() are used as
 * they are on every side. *secret_p is sp__malloc'ed (free() it), *len_p
 * its length. SP_ERR_NOT_FOUND when var is unset or empty,
 * SP_ERR_INVALID_PARAM when it holds fewer than 16 bytes.
 */
sp_status_t sp__ctl_secret_from_env(const char *var, void **secret_p, size_t *len_p);

/* 32 random bytes (RAND_bytes) as 64 lowercase hex digits and a NUL. */
sp_status_t sp__ctl_secret_generate(char hex[65]);

#endif /* SPATE_CONTROL_CONTROL_H */
