/*
 * Leading Mesos master from ZooKeeper (mesos://zk://H1:P1,H2:P2/path): the
 * URL parser, a one-shot lookup and a watch that follows the leader.
 */
#ifndef SPATE_LAUNCHER_ZK_H
#define SPATE_LAUNCHER_ZK_H

#include <spate/common.h>

#include <stddef.h>

/* Room for "HOST:PORT" (a 253-byte DNS name or a bracketed IPv6 address) and its NUL. */
#define SP__ZK_HOST_PORT_MAX 264

/* Session timeout the watch asks ZooKeeper for; the server clamps it to its own bounds. */
#define SP__ZK_WATCH_SESSION_MS 10000

/* A parsed zk:// URL. */
typedef struct sp__zk_url {
    char hosts[1024]; /* "H1:P1,H2:P2", the server list as zookeeper_init takes it */
    char path[512];   /* "/mesos": starts with '/', ends in one only when it is "/" */
    char auth[256];   /* "user:pass" for ZooKeeper's digest scheme; "" when none */
} sp__zk_url_t;

/*
 * Parses "zk://[user:pass@]H1:P1[,H2:P2...]/path" into *url_p (a leading
 * "mesos://" is accepted and skipped). Every server needs a host and a port
 * (1..65535); a host is a DNS name, an IPv4 address or a bracketed IPv6
 * address. The path must not contain empty, "." or ".." components; one
 * trailing '/' is dropped. Credentials, when given, are used as ZooKeeper
 * digest authentication ("user:pass", as Mesos' own zk:// URLs do).
 *
 * Returns SP_OK, or SP_ERR_INVALID_PARAM with a message that names the
 * malformed part (never the password); *url_p is written only on success.
 * Thread safe.
 */
sp_status_t sp__zk_url_parse(const char *url, sp__zk_url_t *url_p);

/*
 * Reads the leading Mesos master from ZooKeeper: lists the children of the
 * URL's path, takes the json.info_NNNNNNNNNN node with the lowest sequence
 * number (other children, such as log_replicas and the legacy protobuf
 * info_* nodes, are ignored), and parses its MasterInfo JSON into
 * "HOST:PORT" in host_port (cap bytes, SP__ZK_HOST_PORT_MAX is enough).
 * HOST is address.ip, else address.hostname, else the top-level hostname,
 * else the address in pid ("master@IP:PORT"), else the legacy integer ip;
 * PORT is address.port, else the top-level port.
 *
 * The whole lookup (connecting, both reads) finishes within timeout_ms
 * (> 0), plus the few milliseconds closing the session takes (a session
 * left on a server that stopped answering is closed on a detached thread).
 * Host names in the URL are resolved before that, by getaddrinfo, which
 * the deadline does not cover.
 * Returns SP_OK; SP_ERR_INVALID_PARAM for a malformed URL, a bad timeout or
 * credentials ZooKeeper refuses; SP_ERR_TIMED_OUT when no server answered
 * in time; SP_ERR_NOT_FOUND when the path does not exist or no master is
 * registered under it; SP_ERR_BAD_FORMAT when the leader's node is not a
 * MasterInfo; SP_ERR_TOO_LARGE when cap is too small; SP_ERR_PEER_LOST for
 * other ZooKeeper failures (raw code in the message). host_port is written
 * only on success. Thread safe; each call uses its own session.
 */
sp_status_t sp__zk_leader(const char *zk_url, int timeout_ms, char *host_port, size_t cap);

/*
 * Called with the leader's "HOST:PORT" each time it changes, or with NULL
 * when no leader is known: none registered, the leader's node is not a
 * MasterInfo, the path is gone or unreadable, the ZooKeeper session expired,
 * or no ZooKeeper server was reachable for longer than the session timeout
 * (after which the servers expire the session anyway; Mesos' own detector
 * does the same). NULL means "unknown", not "gone": the watch keeps trying
 * and calls again once it knows. The string is valid only during the call.
 */
typedef void (*sp__zk_leader_cb_t)(void *arg, const char *host_port);

typedef struct sp__zk_watch sp__zk_watch_t;

/*
 * Starts following the leader under zk_url. A thread of the watch connects
 * (retrying while ZooKeeper is unreachable), reads the leader as
 * sp__zk_leader does, and calls cb(arg, ...) once with what it found, then
 * again after every change: a watch on the path's children catches masters
 * joining and leaving, a watch on the leader's node catches it being
 * rewritten; on session expiry the watch opens a new session and reads
 * again. Calls come one at a time, from the watch's own thread (never from
 * the caller's, never from ZooKeeper's), and only with a value different
 * from the previous call's. cb may call anything except
 * sp__zk_watch_destroy on this watch.
 *
 * Returns SP_OK and the watch in *watch_p; SP_ERR_INVALID_PARAM for a
 * malformed URL or a NULL cb; SP_ERR_NOMEM or SP_ERR_NO_RESOURCE (thread).
 */
sp_status_t sp__zk_watch_create(const char *zk_url, sp__zk_leader_cb_t cb, void *arg,
                                sp__zk_watch_t **watch_p);

/*
 * Stops the watch: when it returns, cb is not running and will not be called
 * again, and the ZooKeeper session is closed. Accepts NULL. Must not be
 * called from cb.
 */
void sp__zk_watch_destroy(sp__zk_watch_t *watch);

#endif /* SPATE_LAUNCHER_ZK_H */
