/*
 * Leading Mesos master from ZooKeeper. Mesos masters contend for leadership
 * by creating ephemeral sequential znodes json.info_NNNNNNNNNN under one path
 * (the path of mesos://zk://H1:P1,H2:P2/path), each holding the master's
 * MasterInfo as JSON; the node with the lowest sequence number belongs to
 * the leader. A master that dies loses its session, its node goes away, and
 * the next one leads. sp__zk_leader reads the leader once; a watch follows it
 * with a watch on the path's children and one on the leader's node.
 *
 * The ZooKeeper C client (multi-threaded flavour) runs its own I/O and
 * completion threads. Only the asynchronous calls are used, so that every
 * wait here is a condition-variable wait with a deadline: a server that
 * never answers, or none at all, costs timeout_ms and not the client's own
 * retry schedule. The invariant that keeps the completions safe: an
 * operation's record lives in the connection object (sp_zk_conn_t), and an
 * operation that has not completed when its wait gives up is cleaned up by
 * closing the handle, which runs or drops every pending completion before
 * it returns; the connection object is freed only after that.
 *
 * Closing a handle whose server stopped answering waits (1.5 s in the
 * Debian client) for the server to close the connection; a lookup that gave
 * up on such a server leaves that wait to a detached thread.
 *
 * The watch runs its own thread rather than working inside ZooKeeper's
 * completion thread: reading the leader takes two round trips, and opening
 * a new session after expiry means closing the old handle, which cannot be
 * done from that handle's own thread. ZooKeeper's callbacks only record
 * what happened and wake the watch thread. Besides a real expiry, the watch
 * gives a session up when it has had no server for longer than the session
 * timeout, like Mesos' ZooKeeper group: the servers have expired it by then,
 * and a server that lost its data refuses the old session's client forever
 * (it saw a later zxid) instead of expiring it. The workload is tiny (a few
 * reads per change of leader), so nothing here is tuned for speed.
 */
#include "zk.h"

#include "bytes.h"
#include "common_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <zookeeper/zookeeper.h>

#define SP_ZK_NODE_PREFIX           "json.info_"
#define SP_ZK_NAME_MAX              256
#define SP_ZK_LOOKUP_SESSION_MIN_MS 2000
#define SP_ZK_LOOKUP_SESSION_MAX_MS 30000
#define SP_ZK_POLL_MS               2000 /* re-read after a failure that left no watch */
#define SP_ZK_BACKOFF_MAX_MS        5000
#define SP_ZK_RETRY_MS              100 /* pause before reading again after a connection loss */

/* ------------------------------------------------------------------------ */
/* URL parsing                                                              */
/* ------------------------------------------------------------------------ */

static bool sp_zk_name_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '-' || ch == '.' || ch == '_';
}

static bool sp_zk_v6_char(char ch) { return isxdigit((unsigned char)ch) || ch == ':' || ch == '.'; }

/*
 * Appends one "host:port" server from [s, e) to hosts (as the C client takes
 * it: an IPv6 address without its brackets, the client splits at the last
 * colon). where is the URL with its credentials hidden, for messages.
 */
static sp_status_t sp_zk_parse_server(const char *s, const char *e, char *hosts, size_t cap,
                                      const char *where)
{
    const char *host = s, *host_end, *colon;
    bool v6 = false;
    size_t used = strlen(hosts), hlen;
    unsigned long port = 0;
    int n;

    if (s == e)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: empty server in the list", where);
    if (*s == '[') {
        const char *close = memchr(s, ']', (size_t)(e - s));

        if (close == NULL || close == s + 1)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: unterminated or empty IPv6 address in '%.*s'", where,
                            (int)(e - s), s);
        host = s + 1;
        host_end = close;
        colon = close + 1 < e && close[1] == ':' ? close + 1 : NULL;
        if (colon == NULL && close + 1 != e)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: expected ':PORT' after the IPv6 address in '%.*s'",
                            where, (int)(e - s), s);
        v6 = true;
    } else {
        colon = NULL;
        for (const char *p = s; p < e; p++)
            if (*p == ':')
                colon = p;
        host_end = colon != NULL ? colon : e;
    }
    if (colon == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "ZooKeeper URL %s: server '%.*s' has no port (HOST:PORT, e.g. :2181)",
                        where, (int)(e - s), s);
    hlen = (size_t)(host_end - host);
    if (hlen == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: server '%.*s' has no host", where,
                        (int)(e - s), s);
    for (const char *p = host; p < host_end; p++)
        if (!(v6 ? sp_zk_v6_char(*p) : sp_zk_name_char(*p)))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: bad character '%c' in host '%.*s'", where,
                            isprint((unsigned char)*p) ? *p : '?', (int)hlen, host);
    if (colon + 1 == e)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: server '%.*s' has an empty port",
                        where, (int)(e - s), s);
    for (const char *p = colon + 1; p < e; p++) {
        if (!isdigit((unsigned char)*p) || port > 65535)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: port '%.*s' of server '%.*s' is not a number in "
                            "1..65535",
                            where, (int)(e - colon - 1), colon + 1, (int)(e - s), s);
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port == 0 || port > 65535)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "ZooKeeper URL %s: port %lu of server '%.*s' is not in 1..65535", where,
                        port, (int)(e - s), s);
    n = snprintf(hosts + used, cap - used, "%s%.*s:%lu", used ? "," : "", (int)hlen, host, port);
    if (n < 0 || (size_t)n >= cap - used)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: server list longer than %zu bytes",
                        where, cap - 1);
    return SP_OK;
}

/* The URL for messages, quoted, with any credentials replaced by three asterisks. */
static void sp_zk_redact(const char *url, char *buf, size_t cap)
{
    const char *scheme = strstr(url, "://");
    const char *rest = scheme != NULL ? scheme + 3 : url;
    const char *zk = strstr(rest, "zk://");
    const char *slash, *at;

    if (zk == rest)
        rest += 5;
    slash = strchr(rest, '/');
    at = memchr(rest, '@', slash != NULL ? (size_t)(slash - rest) : strlen(rest));
    if (at == NULL) {
        snprintf(buf, cap, "'%s'", url);
        return;
    }
    snprintf(buf, cap, "'%.*s***%s'", (int)(rest - url), url, at);
}

sp_status_t sp__zk_url_parse(const char *url, sp__zk_url_t *url_p)
{
    sp__zk_url_t u;
    char where[1200];
    const char *p, *slash, *at, *end;
    size_t plen;

    if (url == NULL || url_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL: NULL argument");
    memset(&u, 0, sizeof(u));
    sp_zk_redact(url, where, sizeof(where));
    p = url;
    if (strncmp(p, "mesos://", 8) == 0)
        p += 8;
    if (strncmp(p, "zk://", 5) != 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "ZooKeeper URL %s: does not start with zk:// "
                        "(zk://H1:P1,H2:P2/path, e.g. zk://zk1:2181,zk2:2181/mesos)",
                        where);
    p += 5;
    for (const char *q = p; *q != '\0'; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f || *q == ' ')
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: contains a space or control character", where);
    slash = strchr(p, '/');
    if (slash == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "ZooKeeper URL %s: has no path (zk://HOST:PORT/path, e.g. /mesos)", where);

    at = NULL;
    for (const char *q = p; q < slash; q++)
        if (*q == '@')
            at = q;
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t alen = (size_t)(at - p);

        if (colon == NULL || colon == p || colon + 1 == at)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: credentials must be 'user:password@'", where);
        if (alen >= sizeof(u.auth))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: credentials longer than %zu bytes", where,
                            sizeof(u.auth) - 1);
        memcpy(u.auth, p, alen);
        p = at + 1;
    }
    if (p == slash)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: has no server (HOST:PORT)", where);
    while (p < slash) {
        const char *comma = memchr(p, ',', (size_t)(slash - p));
        const char *e = comma != NULL ? comma : slash;
        sp_status_t st = sp_zk_parse_server(p, e, u.hosts, sizeof(u.hosts), where);

        if (st != SP_OK)
            return st;
        if (comma != NULL && comma + 1 == slash)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: empty server in the list",
                            where);
        p = comma != NULL ? comma + 1 : slash;
    }

    end = slash + strlen(slash);
    if (end - slash > 1 && end[-1] == '/')
        end--; /* "zk://h:2181/mesos/" means /mesos */
    plen = (size_t)(end - slash);
    if (plen >= sizeof(u.path))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper URL %s: path longer than %zu bytes", where,
                        sizeof(u.path) - 1);
    for (const char *c = slash; c < end;) {
        const char *next = memchr(c + 1, '/', (size_t)(end - c - 1));
        size_t clen = (size_t)((next != NULL ? next : end) - c - 1);

        if (plen > 1 &&
            (clen == 0 || (clen == 1 && c[1] == '.') || (clen == 2 && c[1] == '.' && c[2] == '.')))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: path '%.*s' has an empty, '.' or '..' component",
                            where, (int)plen, slash);
        if (memchr(c + 1, '?', clen) != NULL || memchr(c + 1, '#', clen) != NULL)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "ZooKeeper URL %s: query or fragment ('?', '#') not supported", where);
        if (next == NULL)
            break;
        c = next;
    }
    memcpy(u.path, slash, plen);
    *url_p = u;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* MasterInfo                                                               */
/* ------------------------------------------------------------------------ */

static const char *sp_zk_json_str(const json_t *obj, const char *key)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;

    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* A port field: 1..65535, else 0 (absent or out of range). */
static int sp_zk_json_port(const json_t *obj, const char *key)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    json_int_t port = json_is_integer(v) ? json_integer_value(v) : 0;

    return port >= 1 && port <= 65535 ? (int)port : 0;
}

/*
 * Turns the MasterInfo JSON of node (data, len bytes) into "HOST:PORT".
 * Mesos writes it with JSON::protobuf(MasterInfo): address {hostname, ip,
 * port}, plus the older top-level hostname, port, pid "master@IP:PORT" and
 * ip (an IPv4 address as a uint32 in network byte order).
 */
static sp_status_t sp_zk_master_info(const char *node, const char *data, size_t len, char *out,
                                     size_t cap)
{
    json_error_t jerr;
    json_t *root, *address;
    const char *host, *pid;
    char pid_host[SP__ZK_HOST_PORT_MAX], ip_text[INET_ADDRSTRLEN];
    int port, n;
    sp_status_t st = SP_OK;

    if (data == NULL || len == 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "ZooKeeper node %s is empty, not a MasterInfo", node);
    root = json_loadb(data, len, 0, &jerr);
    if (root == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "ZooKeeper node %s: MasterInfo is not valid JSON: %s (line %d, column %d)",
                        node, jerr.text, jerr.line, jerr.column);
    if (!json_is_object(root)) {
        st =
            SP_RAISE(SP_ERR_BAD_FORMAT, "ZooKeeper node %s: MasterInfo is not a JSON object", node);
        goto out_root;
    }
    address = json_object_get(root, "address");
    host = sp_zk_json_str(address, "ip");
    if (host == NULL)
        host = sp_zk_json_str(address, "hostname");
    if (host == NULL)
        host = sp_zk_json_str(root, "hostname");
    port = sp_zk_json_port(address, "port");
    if (port == 0)
        port = sp_zk_json_port(root, "port");
    pid = sp_zk_json_str(root, "pid");
    if (pid != NULL && (host == NULL || port == 0)) {
        /* "master@10.0.0.1:5050" */
        const char *at = strchr(pid, '@'), *colon = strrchr(pid, ':');
        char *end = NULL;
        long pid_port;

        if (at != NULL && colon != NULL && colon > at + 1 &&
            (size_t)(colon - at - 1) < sizeof(pid_host)) {
            pid_port = strtol(colon + 1, &end, 10);
            memcpy(pid_host, at + 1, (size_t)(colon - at - 1));
            pid_host[colon - at - 1] = '\0';
            if (host == NULL)
                host = pid_host;
            if (port == 0 && end != colon + 1 && *end == '\0' && pid_port >= 1 && pid_port <= 65535)
                port = (int)pid_port;
        }
    }
    if (host == NULL) {
        const json_t *ip = json_object_get(root, "ip");
        json_int_t v = json_is_integer(ip) ? json_integer_value(ip) : 0;

        if (v > 0 && v <= (json_int_t)UINT32_MAX) {
            /* Mesos stores the in_addr's bytes as a uint32 on a little-endian host. */
            unsigned char b[4];

            sp__le_put_u32(b, (uint32_t)v);

            snprintf(ip_text, sizeof(ip_text), "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
            host = ip_text;
        }
    }
    if (host == NULL || port == 0) {
        st = SP_RAISE(SP_ERR_BAD_FORMAT,
                      "ZooKeeper node %s: MasterInfo has no %s (looked for address.ip, "
                      "address.hostname, hostname, pid, ip and address.port, port)",
                      node, host == NULL ? "host" : "port in 1..65535");
        goto out_root;
    }
    for (const char *c = host; *c != '\0'; c++)
        if (!isgraph((unsigned char)*c) || *c == '/' || *c == '@' || *c == '[' || *c == ']') {
            st = SP_RAISE(SP_ERR_BAD_FORMAT,
                          "ZooKeeper node %s: MasterInfo host '%s' is not a "
                          "host name or address",
                          node, host);
            goto out_root;
        }
    n = snprintf(out, cap, strchr(host, ':') != NULL ? "[%s]:%d" : "%s:%d", host, port);
    if (n < 0 || (size_t)n >= cap)
        st = SP_RAISE(SP_ERR_TOO_LARGE,
                      "ZooKeeper node %s: leader address '%s:%d' does not fit %zu bytes", node,
                      host, port, cap);
out_root:
    json_decref(root);
    return st;
}

/*
 * The sequence number of a json.info_NNNNNNNNNN child, or -1 for any other
 * name (log_replicas, the legacy protobuf info_ nodes, strays).
 */
static int64_t sp_zk_sequence(const char *name)
{
    const char *d = name + strlen(SP_ZK_NODE_PREFIX);
    int64_t seq = 0;

    if (strncmp(name, SP_ZK_NODE_PREFIX, strlen(SP_ZK_NODE_PREFIX)) != 0 || *d == '\0')
        return -1;
    for (; *d != '\0'; d++) {
        if (!isdigit((unsigned char)*d) || seq > (INT64_MAX - 9) / 10)
            return -1;
        seq = seq * 10 + (*d - '0');
    }
    return seq;
}

/* ------------------------------------------------------------------------ */
/* Connection: a ZooKeeper handle and the records its callbacks fill in      */
/* ------------------------------------------------------------------------ */

/* One asynchronous operation. The completion fills it in under conn->lock. */
typedef struct sp_zk_op {
    bool done;
    int rc;
    bool nomem;                /* the completion could not copy the result */
    uint32_t children;         /* children op: how many children the path has */
    char name[SP_ZK_NAME_MAX]; /* children op: lowest json.info_ child, "" if none */
    char *data;                /* data op: the node's bytes (sp__malloc), NUL-terminated */
    size_t len;                /* data op: their length */
    struct sp_zk_conn *conn;
} sp_zk_op_t;

typedef struct sp_zk_conn {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; every callback broadcasts it */
    const sp__zk_url_t *url;
    zhandle_t *zh;
    int state;        /* last session state seen; 0 before the first event */
    bool changed;     /* a znode watch fired or the session (re)connected */
    int session_ms;   /* the session timeout the server granted; 0 before it did */
    uint64_t lost_ns; /* when an established session lost its server; 0 when not lost */
    const bool *stop; /* the watch's stop flag, or NULL; read under lock */
    sp_zk_op_t list, get, exists;
} sp_zk_conn_t;

static void sp_zk_log(const char *message)
{
    size_t len = strlen(message);

    while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == '\r'))
        len--;
    sp_debug("zookeeper client: %.*s", (int)len, message);
}

static sp_status_t sp_zk_conn_init(sp_zk_conn_t *c, const sp__zk_url_t *url, const bool *stop)
{
    pthread_condattr_t attr;
    int err;

    memset(c, 0, sizeof(*c));
    c->url = url;
    c->stop = stop;
    c->changed = true;
    c->list.conn = c->get.conn = c->exists.conn = c;
    err = pthread_mutex_init(&c->lock, NULL);
    if (err != 0)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "ZooKeeper: pthread_mutex_init: %s", strerror(err));
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    err = pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (err != 0) {
        pthread_mutex_destroy(&c->lock);
        return SP_RAISE(SP_ERR_NO_RESOURCE, "ZooKeeper: pthread_cond_init: %s", strerror(err));
    }
    return SP_OK;
}

static void sp_zk_op_reset(sp_zk_op_t *op)
{
    sp__free(op->data);
    op->data = NULL;
    op->len = 0;
    op->done = false;
    op->nomem = false;
    op->rc = ZOK;
    op->children = 0;
    op->name[0] = '\0';
}

/*
 * Closes the handle. zookeeper_close runs or drops every pending completion
 * and watcher before it returns, so the op records are free afterwards.
 */
static void sp_zk_conn_close(sp_zk_conn_t *c)
{
    if (c->zh != NULL) {
        zookeeper_close(c->zh);
        c->zh = NULL;
    }
    pthread_mutex_lock(&c->lock);
    c->state = 0;
    c->changed = true;
    c->session_ms = 0;
    c->lost_ns = 0;
    sp_zk_op_reset(&c->list);
    sp_zk_op_reset(&c->get);
    sp_zk_op_reset(&c->exists);
    pthread_mutex_unlock(&c->lock);
}

static void sp_zk_conn_fini(sp_zk_conn_t *c)
{
    sp_zk_conn_close(c);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
}

/*
 * The one watcher of the handle and of every znode watch (ZooKeeper's
 * completion thread). Session events carry the new state; node events only
 * say that something changed, so the watch reads again.
 */
static void sp_zk_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    sp_zk_conn_t *c = ctx;

    SP_UNUSED(path);
    pthread_mutex_lock(&c->lock);
    if (type == ZOO_SESSION_EVENT) {
        if (state == ZOO_CONNECTED_STATE) {
            if (c->state != ZOO_CONNECTED_STATE)
                c->changed = true; /* events may have been missed while disconnected */
            c->session_ms = zoo_recv_timeout(zh);
            c->lost_ns = 0;
        } else if (c->state == ZOO_CONNECTED_STATE && c->lost_ns == 0) {
            c->lost_ns = sp__now_ns();
        }
        c->state = state;
    } else {
        c->changed = true;
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void sp_zk_list_done(int rc, const struct String_vector *strings, const void *data)
{
    sp_zk_op_t *op = (sp_zk_op_t *)(uintptr_t)data;
    int64_t best = -1;
    const char *best_name = NULL;

    pthread_mutex_lock(&op->conn->lock);
    op->rc = rc;
    if (rc == ZOK && strings != NULL) {
        op->children = strings->count > 0 ? (uint32_t)strings->count : 0;
        for (int32_t i = 0; i < strings->count; i++) {
            int64_t seq = sp_zk_sequence(strings->data[i]);

            if (seq >= 0 && (best < 0 || seq < best) && strlen(strings->data[i]) < SP_ZK_NAME_MAX) {
                best = seq;
                best_name = strings->data[i];
            }
        }
        if (best_name != NULL)
            strcpy(op->name, best_name);
    }
    op->done = true;
    pthread_cond_broadcast(&op->conn->cond);
    pthread_mutex_unlock(&op->conn->lock);
}

static void sp_zk_get_done(int rc, const char *value, int value_len, const struct Stat *stat,
                           const void *data)
{
    sp_zk_op_t *op = (sp_zk_op_t *)(uintptr_t)data;
    size_t len = value != NULL && value_len > 0 ? (size_t)value_len : 0;

    SP_UNUSED(stat);
    pthread_mutex_lock(&op->conn->lock);
    op->rc = rc;
    if (rc == ZOK) {
        op->data = sp__malloc(len + 1);
        if (op->data == NULL) {
            op->nomem = true;
        } else {
            if (len > 0)
                memcpy(op->data, value, len);
            op->data[len] = '\0';
            op->len = len;
        }
    }
    op->done = true;
    pthread_cond_broadcast(&op->conn->cond);
    pthread_mutex_unlock(&op->conn->lock);
}

static void sp_zk_exists_done(int rc, const struct Stat *stat, const void *data)
{
    sp_zk_op_t *op = (sp_zk_op_t *)(uintptr_t)data;

    SP_UNUSED(stat);
    pthread_mutex_lock(&op->conn->lock);
    op->rc = rc;
    op->done = true;
    pthread_cond_broadcast(&op->conn->cond);
    pthread_mutex_unlock(&op->conn->lock);
}

static struct timespec sp_zk_abstime(uint64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000u),
                          .tv_nsec = (long)(deadline_ns % 1000000000u)};
    return ts;
}

/* With c->lock held: whether the watch that owns c is stopping. */
static bool sp_zk_stopping(const sp_zk_conn_t *c) { return c->stop != NULL && *c->stop; }

/*
 * With c->lock held: waits until *flag is true, the watch is stopped, or the
 * deadline passes. Returns *flag.
 */
static bool sp_zk_wait_flag(sp_zk_conn_t *c, const bool *flag, uint64_t deadline_ns)
{
    struct timespec ts = sp_zk_abstime(deadline_ns);

    while (!*flag && !sp_zk_stopping(c) && sp__now_ns() < deadline_ns)
        pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    return *flag;
}

/* ZooKeeper's rc for an operation on path as a status and message. */
static sp_status_t sp_zk_rc_status(const sp_zk_conn_t *c, const char *op, const char *path, int rc)
{
    if (rc == ZNOAUTH || rc == ZAUTHFAILED)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "ZooKeeper %s: not allowed to %s %s (%s, %d); give credentials as "
                        "zk://user:password@...",
                        c->url->hosts, op, path, zerror(rc), rc);
    if (rc == ZSYSTEMERROR || rc == ZMARSHALLINGERROR)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "ZooKeeper %s: %s %s: %s (%d, errno %d)", c->url->hosts,
                        op, path, zerror(rc), rc, errno);
    return SP_RAISE(SP_ERR_PEER_LOST, "ZooKeeper %s: %s %s: %s (%d)", c->url->hosts, op, path,
                    zerror(rc), rc);
}

static void sp_zk_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool sp_zk_rc_retryable(int rc)
{
    return rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT || rc == ZSESSIONMOVED;
}

/* Opens a session (asynchronously: the watcher hears when it is connected). */
static sp_status_t sp_zk_conn_open(sp_zk_conn_t *c, int session_ms)
{
    zhandle_t *zh;
    int rc;

    SP_ASSERT(c->zh == NULL);
    errno = 0;
    zh = zookeeper_init2(c->url->hosts, sp_zk_watcher, session_ms, NULL, c, ZOO_NO_LOG_CLIENTENV,
                         sp_zk_log);
    if (zh == NULL) {
        int err = errno;

        if (err == ENOMEM)
            return SP_RAISE(SP_ERR_NOMEM, "ZooKeeper %s: out of memory opening a session",
                            c->url->hosts);
        return SP_RAISE(err == EINVAL || err == ENOENT ? SP_ERR_INVALID_PARAM : SP_ERR_PEER_LOST,
                        "ZooKeeper %s: cannot open a session: %s (errno %d; is every host name "
                        "resolvable?)",
                        c->url->hosts, err != 0 ? strerror(err) : "unknown error", err);
    }
    if (c->url->auth[0] != '\0') {
        rc = zoo_add_auth(zh, "digest", c->url->auth, (int)strlen(c->url->auth), NULL, NULL);
        if (rc != ZOK) {
            zookeeper_close(zh);
            return sp_zk_rc_status(c, "authenticate to", "(digest)", rc);
        }
    }
    c->zh = zh;
    return SP_OK;
}

/* Waits for the session to be connected. */
static sp_status_t sp_zk_conn_wait(sp_zk_conn_t *c, uint64_t deadline_ns, int timeout_ms)
{
    struct timespec ts = sp_zk_abstime(deadline_ns);
    bool stopping;
    int state;

    pthread_mutex_lock(&c->lock);
    while (c->state != ZOO_CONNECTED_STATE && c->state != ZOO_EXPIRED_SESSION_STATE &&
           c->state != ZOO_AUTH_FAILED_STATE && !sp_zk_stopping(c) && sp__now_ns() < deadline_ns)
        pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    state = c->state;
    stopping = sp_zk_stopping(c);
    pthread_mutex_unlock(&c->lock);
    if (state == ZOO_CONNECTED_STATE)
        return SP_OK;
    if (state == ZOO_AUTH_FAILED_STATE)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper %s: the server refused the credentials",
                        c->url->hosts);
    if (state == ZOO_EXPIRED_SESSION_STATE)
        return SP_RAISE(SP_ERR_PEER_LOST, "ZooKeeper %s: session expired", c->url->hosts);
    if (stopping)
        return SP_ERR_CANCELED;
    return SP_RAISE(SP_ERR_TIMED_OUT,
                    "ZooKeeper %s: no session within %d ms (no server reachable or answering)",
                    c->url->hosts, timeout_ms);
}

/*
 * Waits for op; false when it did not complete (deadline or stop), in which
 * case the caller must close the handle before reusing the op.
 */
static bool sp_zk_op_wait(sp_zk_conn_t *c, sp_zk_op_t *op, uint64_t deadline_ns)
{
    bool done;

    pthread_mutex_lock(&c->lock);
    done = sp_zk_wait_flag(c, &op->done, deadline_ns);
    pthread_mutex_unlock(&c->lock);
    return done;
}

typedef struct sp_zk_read {
    bool pending;   /* an op did not complete: close the handle before reusing c */
    bool retryable; /* connection trouble: read again on a (re)connected session */
    bool watching;  /* a watch is set that fires when the answer changes */
} sp_zk_read_t;

/*
 * Reads the leader on a session that was connected. With watch, leaves a
 * children watch on the path (an exists watch when the path is missing) and
 * a data watch on the leader's node, so that a change wakes the watch.
 */
static sp_status_t sp_zk_read_leader(sp_zk_conn_t *c, bool watch, uint64_t deadline_ns,
                                     int timeout_ms, char *out, size_t cap, sp_zk_read_t *r)
{
    const char *path = c->url->path;
    watcher_fn wfn = watch ? sp_zk_watcher : NULL;
    char node[sizeof(c->url->path) + SP_ZK_NAME_MAX + 1];
    bool stopping;
    int rc;

    memset(r, 0, sizeof(*r));
    for (;;) {
        if (sp__now_ns() >= deadline_ns)
            goto not_done; /* masters coming and going faster than we can read */
        sp_zk_op_reset(&c->list);
        sp_zk_op_reset(&c->get);
        rc = zoo_awget_children(c->zh, path, wfn, c, sp_zk_list_done, &c->list);
        if (rc != ZOK) {
            r->retryable = sp_zk_rc_retryable(rc) || rc == ZINVALIDSTATE;
            return sp_zk_rc_status(c, "list", path, rc);
        }
        if (!sp_zk_op_wait(c, &c->list, deadline_ns))
            goto not_done;
        rc = c->list.rc;
        if (rc == ZNONODE) {
            if (watch) {
                /* Learn when the path appears; if it already did, list again. */
                sp_zk_op_reset(&c->exists);
                rc = zoo_awexists(c->zh, path, wfn, c, sp_zk_exists_done, &c->exists);
                if (rc == ZOK && !sp_zk_op_wait(c, &c->exists, deadline_ns))
                    goto not_done;
                if (rc == ZOK && c->exists.rc == ZOK)
                    continue;
                r->watching = rc == ZOK && c->exists.rc == ZNONODE;
            }
            return SP_RAISE(SP_ERR_NOT_FOUND,
                            "ZooKeeper %s: no znode %s (no Mesos master ever registered there; "
                            "is the path of the zk:// URL right?)",
                            c->url->hosts, path);
        }
        if (rc != ZOK) {
            r->retryable = sp_zk_rc_retryable(rc);
            return sp_zk_rc_status(c, "list", path, rc);
        }
        r->watching = watch;
        if (c->list.name[0] == '\0')
            return SP_RAISE(SP_ERR_NOT_FOUND,
                            "ZooKeeper %s: no Mesos master registered under %s (%u children, "
                            "none named " SP_ZK_NODE_PREFIX "*)",
                            c->url->hosts, path, c->list.children);
        snprintf(node, sizeof(node), "%s/%s", strcmp(path, "/") == 0 ? "" : path, c->list.name);
        rc = zoo_awget(c->zh, node, wfn, c, sp_zk_get_done, &c->get);
        if (rc != ZOK) {
            r->retryable = sp_zk_rc_retryable(rc) || rc == ZINVALIDSTATE;
            return sp_zk_rc_status(c, "read", node, rc);
        }
        if (!sp_zk_op_wait(c, &c->get, deadline_ns))
            goto not_done;
        rc = c->get.rc;
        if (rc == ZNONODE)
            continue; /* the leader left between the two reads: list again */
        if (rc != ZOK) {
            r->retryable = sp_zk_rc_retryable(rc);
            return sp_zk_rc_status(c, "read", node, rc);
        }
        if (c->get.nomem)
            return SP_RAISE(SP_ERR_NOMEM, "ZooKeeper: out of memory copying node %s", node);
        return sp_zk_master_info(node, c->get.data, c->get.len, out, cap);
    }

not_done:
    r->pending = true; /* (or merely out of time: closing the handle is right either way) */
    r->retryable = true;
    pthread_mutex_lock(&c->lock);
    stopping = sp_zk_stopping(c);
    pthread_mutex_unlock(&c->lock);
    if (stopping)
        return SP_ERR_CANCELED;
    return SP_RAISE(SP_ERR_TIMED_OUT,
                    "ZooKeeper %s: no answer reading the leader under %s within "
                    "%d ms",
                    c->url->hosts, path, timeout_ms);
}

/* ------------------------------------------------------------------------ */
/* One-shot lookup                                                          */
/* ------------------------------------------------------------------------ */

/* A lookup's session, on the heap so that a closer thread can outlive the call. */
typedef struct sp_zk_lookup {
    sp__zk_url_t url;
    sp_zk_conn_t conn;
} sp_zk_lookup_t;

static void *sp_zk_lookup_close(void *arg)
{
    sp_zk_lookup_t *l = arg;

    sp_zk_conn_fini(&l->conn);
    sp__free(l);
    return NULL;
}

/*
 * Closes the lookup's session. A session that is still established when the
 * lookup gave up may belong to a server that stopped answering, and closing
 * it then waits (up to 1.5 s in the Debian client) for the server to close
 * the connection; that wait happens on a detached thread so that the caller
 * keeps its deadline.
 */
static void sp_zk_lookup_finish(sp_zk_lookup_t *l, bool gave_up)
{
    pthread_attr_t attr;
    pthread_t thread;
    bool established;
    int err;

    pthread_mutex_lock(&l->conn.lock);
    established = l->conn.state == ZOO_CONNECTED_STATE;
    pthread_mutex_unlock(&l->conn.lock);
    if (gave_up && established && pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        err = pthread_create(&thread, &attr, sp_zk_lookup_close, l);
        pthread_attr_destroy(&attr);
        if (err == 0)
            return;
    }
    sp_zk_lookup_close(l);
}

sp_status_t sp__zk_leader(const char *zk_url, int timeout_ms, char *host_port, size_t cap)
{
    sp_zk_lookup_t *l;
    sp_zk_read_t r = {0};
    char leader[SP__ZK_HOST_PORT_MAX];
    uint64_t deadline;
    sp_status_t st;

    if (host_port == NULL || cap == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper leader: no output buffer");
    if (timeout_ms <= 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper leader: timeout %d ms is not positive",
                        timeout_ms);
    deadline = sp__now_ns() + (uint64_t)timeout_ms * 1000000u;
    l = sp__malloc(sizeof(*l));
    if (l == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "ZooKeeper leader: out of memory");
    st = sp__zk_url_parse(zk_url, &l->url);
    if (st != SP_OK)
        goto out_free;
    st = sp_zk_conn_init(&l->conn, &l->url, NULL);
    if (st != SP_OK)
        goto out_free;
    st = sp_zk_conn_open(&l->conn, SP_MIN(SP_MAX(timeout_ms, SP_ZK_LOOKUP_SESSION_MIN_MS),
                                          SP_ZK_LOOKUP_SESSION_MAX_MS));
    if (st != SP_OK)
        goto out_lookup;
    for (;;) {
        uint64_t now;

        st = sp_zk_conn_wait(&l->conn, deadline, timeout_ms);
        if (st != SP_OK)
            break;
        st = sp_zk_read_leader(&l->conn, false, deadline, timeout_ms, leader, sizeof(leader), &r);
        now = sp__now_ns();
        if (st == SP_OK || r.pending || !r.retryable || now >= deadline)
            break;
        /* The connection dropped under the read: try again once the client reconnects. */
        sp_zk_sleep_ms((int)SP_MIN((uint64_t)SP_ZK_RETRY_MS, (deadline - now) / 1000000u + 1));
    }
    if (st == SP_OK) {
        if (strlen(leader) >= cap)
            st = SP_RAISE(SP_ERR_TOO_LARGE, "ZooKeeper leader '%s' does not fit %zu bytes", leader,
                          cap);
        else
            memcpy(host_port, leader, strlen(leader) + 1);
    }
out_lookup:
    sp_zk_lookup_finish(l, st == SP_ERR_TIMED_OUT || r.pending);
    return st;
out_free:
    sp__free(l);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Watch                                                                    */
/* ------------------------------------------------------------------------ */

struct sp__zk_watch {
    sp__zk_url_t url;
    sp__zk_leader_cb_t cb;
    void *arg;
    sp_zk_conn_t conn;
    pthread_t thread;
    bool stop; /* under conn.lock */
    bool reported;
    char last[SP__ZK_HOST_PORT_MAX]; /* last value given to cb; "" for NULL */
    char last_error[256];            /* last failure logged, so that it is logged once */
};

static void sp_zk_report(sp__zk_watch_t *w, const char *leader)
{
    const char *now = leader != NULL ? leader : "";

    if (w->reported && strcmp(w->last, now) == 0)
        return;
    w->reported = true;
    snprintf(w->last, sizeof(w->last), "%s", now);
    if (leader != NULL)
        sp_info("ZooKeeper %s%s: leading Mesos master is %s", w->url.hosts, w->url.path, leader);
    else
        sp_info("ZooKeeper %s%s: no leading Mesos master known", w->url.hosts, w->url.path);
    w->cb(w->arg, leader);
}

static void sp_zk_note_error(sp__zk_watch_t *w, sp_status_t st)
{
    const char *msg = sp_last_error();

    if (st == SP_ERR_CANCELED || strncmp(w->last_error, msg, sizeof(w->last_error) - 1) == 0)
        return;
    snprintf(w->last_error, sizeof(w->last_error), "%s", msg);
    sp_warn("following the Mesos leader: %s", msg);
}

/* Sleeps up to ms, waking early when the watch stops or a watch fires. */
static void sp_zk_pause(sp__zk_watch_t *w, int ms)
{
    uint64_t deadline = sp__now_ns() + (uint64_t)ms * 1000000u;

    pthread_mutex_lock(&w->conn.lock);
    sp_zk_wait_flag(&w->conn, &w->stop, deadline);
    pthread_mutex_unlock(&w->conn.lock);
}

static bool sp_zk_stopped(sp__zk_watch_t *w)
{
    bool stop;

    pthread_mutex_lock(&w->conn.lock);
    stop = w->stop;
    pthread_mutex_unlock(&w->conn.lock);
    return stop;
}

static void *sp_zk_watch_main(void *arg)
{
    sp__zk_watch_t *w = arg;
    sp_zk_conn_t *c = &w->conn;
    int backoff_ms = 100;
    const int session_ms = SP__ZK_WATCH_SESSION_MS;

    while (!sp_zk_stopped(w)) {
        char leader[SP__ZK_HOST_PORT_MAX];
        sp_zk_read_t r;
        sp_status_t st;
        uint64_t deadline;
        int state, read_ms = session_ms;
        bool lost;

        if (c->zh == NULL) {
            st = sp_zk_conn_open(c, session_ms);
            if (st != SP_OK) {
                sp_zk_note_error(w, st);
                sp_zk_pause(w, backoff_ms);
                backoff_ms = SP_MIN(backoff_ms * 2, SP_ZK_BACKOFF_MAX_MS);
                continue;
            }
        }
        /* Wait for a connected session with something to read, or for trouble. */
        pthread_mutex_lock(&c->lock);
        for (;;) {
            struct timespec ts = sp_zk_abstime(sp__now_ns() + 100000000u);

            state = c->state;
            lost = c->lost_ns != 0 && c->session_ms > 0 &&
                   sp__now_ns() - c->lost_ns > (uint64_t)c->session_ms * 1000000u;
            if (w->stop || state == ZOO_EXPIRED_SESSION_STATE || state == ZOO_AUTH_FAILED_STATE ||
                lost || (state == ZOO_CONNECTED_STATE && c->changed))
                break;
            pthread_cond_timedwait(&c->cond, &c->lock, &ts);
        }
        if (state == ZOO_CONNECTED_STATE)
            c->changed = false;
        if (c->session_ms > 0)
            read_ms = c->session_ms;
        pthread_mutex_unlock(&c->lock);
        if (sp_zk_stopped(w))
            break;
        if (state != ZOO_CONNECTED_STATE) {
            /*
             * Expired, refused, or out of touch for longer than the session
             * timeout, after which the servers have expired the session
             * (Mesos' own ZooKeeper group does the same; it also gets past
             * servers that refuse a client which saw a later zxid than
             * theirs). The leader is unknown until a new session reads it.
             */
            if (lost)
                sp_zk_note_error(w, SP_RAISE(SP_ERR_PEER_LOST,
                                             "ZooKeeper %s: no server for longer than the "
                                             "session timeout (%d ms); opening a new session",
                                             c->url->hosts, read_ms));
            else
                sp_zk_note_error(
                    w, SP_RAISE(SP_ERR_PEER_LOST, "ZooKeeper %s: session %s; opening a new one",
                                c->url->hosts,
                                state == ZOO_EXPIRED_SESSION_STATE ? "expired"
                                                                   : "refused the credentials"));
            sp_zk_conn_close(c);
            sp_zk_report(w, NULL);
            if (state == ZOO_AUTH_FAILED_STATE) {
                sp_zk_pause(w, backoff_ms);
                backoff_ms = SP_MIN(backoff_ms * 2, SP_ZK_BACKOFF_MAX_MS);
            }
            continue;
        }
        backoff_ms = 100;

        deadline = sp__now_ns() + (uint64_t)read_ms * 1000000u;
        st = sp_zk_read_leader(c, true, deadline, read_ms, leader, sizeof(leader), &r);
        if (st == SP_OK) {
            w->last_error[0] = '\0';
            sp_zk_report(w, leader);
            continue;
        }
        if (st == SP_ERR_CANCELED)
            break;
        sp_zk_note_error(w, st);
        if (r.pending) {
            /* A read that never completed: start over on a new handle. */
            sp_zk_conn_close(c);
            continue;
        }
        if (r.retryable) {
            /* Read again once the client has reconnected. */
            pthread_mutex_lock(&c->lock);
            c->changed = true;
            pthread_mutex_unlock(&c->lock);
            sp_zk_pause(w, SP_ZK_RETRY_MS);
            continue;
        }
        /* No master, a malformed node, no path, no permission: no leader now. */
        sp_zk_report(w, NULL);
        if (!r.watching) {
            pthread_mutex_lock(&c->lock);
            c->changed = true;
            pthread_mutex_unlock(&c->lock);
            sp_zk_pause(w, SP_ZK_POLL_MS);
        }
    }
    sp_zk_conn_close(c);
    return NULL;
}

sp_status_t sp__zk_watch_create(const char *zk_url, sp__zk_leader_cb_t cb, void *arg,
                                sp__zk_watch_t **watch_p)
{
    sp__zk_watch_t *w;
    sp_status_t st;
    int err;

    if (cb == NULL || watch_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "ZooKeeper watch: NULL callback or output");
    w = sp__calloc(1, sizeof(*w));
    if (w == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "ZooKeeper watch: out of memory");
    st = sp__zk_url_parse(zk_url, &w->url);
    if (st != SP_OK)
        goto out_free;
    w->cb = cb;
    w->arg = arg;
    st = sp_zk_conn_init(&w->conn, &w->url, &w->stop);
    if (st != SP_OK)
        goto out_free;
    err = pthread_create(&w->thread, NULL, sp_zk_watch_main, w);
    if (err != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "ZooKeeper watch: pthread_create: %s", strerror(err));
        goto out_conn;
    }
    *watch_p = w;
    return SP_OK;

out_conn:
    sp_zk_conn_fini(&w->conn);
out_free:
    sp__free(w);
    return st;
}

void sp__zk_watch_destroy(sp__zk_watch_t *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->conn.lock);
    w->stop = true;
    pthread_cond_broadcast(&w->conn.cond);
    pthread_mutex_unlock(&w->conn.lock);
    pthread_join(w->thread, NULL);
    sp_zk_conn_fini(&w->conn);
    sp__free(w);
}
