/*
 * Frames and conns of the control plane (control/frame.c over the stream
 * sockets of control/sock.c): messages of random sizes from 0 B to 8 MiB
 * both ways at once (an echo) over a socketpair with and without the
 * handshake and over TCP on 127.0.0.1, checked byte for byte with the
 * conns' counters; 4 threads sending on one conn deliver whole frames in
 * each thread's order; frames assembled from single bytes, and three frames
 * in one write; malformed frames written raw (bad magic, version, a length
 * over SP__CTL_MAX_PAYLOAD, a channel type after the handshake, a close in
 * the middle of a header or a payload) give SP_ERR_BAD_FORMAT from
 * sp__ctl_recv, on a bare socket and after a real handshake, and from the
 * hub, which drops that conn and serves the others; the conn stays failed.
 * Timeouts of recv, hub_wait, accept and connect end their calls no sooner
 * than asked; a peer that closes is SP_ERR_PEER_LOST after the frames it
 * sent, and a send to it fails without SIGPIPE; a full socket times a send
 * out and abandons the conn; a payload that cannot be allocated is
 * SP_ERR_NOMEM and its frame waits for the next call (on a conn and through
 * the hub). Listen refuses bad addresses, and sends and secrets the channel
 * refuses are caught before anything goes out.
 */
/* LABELS: unit */
#include "ctl_test_util.h"

#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The bytes of a message made from seed. */
static void fill(unsigned char *p, size_t len, uint64_t seed)
{
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t v = mix(seed + i);

        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] = (unsigned char)mix(seed + i);
}

/* Whether p holds fill(len, seed). */
static bool check_fill(const unsigned char *p, size_t len, uint64_t seed)
{
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t v = mix(seed + i);

        if (memcmp(p + i, &v, 8) != 0)
            return false;
    }
    for (; i < len; i++)
        if (p[i] != (unsigned char)mix(seed + i))
            return false;
    return true;
}

static void le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void raw_header(unsigned char *h, uint32_t magic, uint16_t version, uint16_t type,
                       uint32_t len)
{
    le32(h, magic);
    le16(h + 4, version);
    le16(h + 6, type);
    le32(h + 8, len);
}

/* ------------------------------------------------------------------------ */
/* Addresses and argument checks                                            */
/* ------------------------------------------------------------------------ */

static void test_listen_and_argument_checks(void **state)
{
    static const char *bad[] = {"nonsense",         "127.0.0.1:",  "127.0.0.1:99999",
                                "127.0.0.1:12a",    "[::1",        "[::1]0",
                                "127.0.0.1:123456", "[::1]:99999", NULL};
    sp__ctl_conn_t *a = NULL, *b = NULL;
    sp__ctl_hub_t *hub = NULL;
    char addr[128];
    int fd = -1;
    unsigned char one = 1;

    (void)state;
    for (size_t i = 0; bad[i] != NULL; i++) {
        assert_int_equal(sp__ctl_listen(bad[i], addr, sizeof(addr), &fd), SP_ERR_INVALID_PARAM);
        assert_true(contains(sp_last_error(), bad[i]));
    }
    assert_int_equal(sp__ctl_connect(":5000", SECRET, SECRET_LEN, 0, &a), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "no host to connect to"));
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &fd), SP_OK);
    assert_true(contains(addr, "127.0.0.1:"));
    assert_true(atoi(strrchr(addr, ':') + 1) > 0);

    /* Secrets. */
    assert_int_equal(sp__ctl_connect(addr, NULL, 0, 0, &a), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "the secret must be"));
    assert_int_equal(sp__ctl_accept(fd, SECRET, 0, 0, &a), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_pair(SECRET, 0, &a, &b), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    assert_int_equal(sp__ctl_hub_set_listener(hub, fd, NULL, 0, 100), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_hub_set_listener(hub, -1, NULL, 0, 100), SP_OK);
    assert_int_equal(sp__ctl_hub_wait(hub, -1, NULL, NULL, NULL, NULL), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "waiting forever with no conn and no listener"));
    sp__ctl_hub_destroy(hub);
    sp__ctl_hub_destroy(NULL);
    sp__ctl_close(NULL);
    close(fd);

    /* Sends the channel refuses before anything goes out. */
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    assert_string_equal(sp__ctl_peer_name(a), "socketpair");
    assert_int_equal(sp__ctl_send(a, SP__CTL_TYPE_FIRST - 1, &one, 1), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "reserved for the channel"));
    assert_int_equal(sp__ctl_send(a, 16, NULL, 1), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_send(a, 16, &one, (size_t)SP__CTL_MAX_PAYLOAD + 1), SP_ERR_TOO_LARGE);
    assert_true(contains(sp_last_error(), "above the limit"));
    assert_int_equal(sp__ctl_send(a, 16, NULL, 0), SP_OK);
    assert_int_equal(sp__ctl_send(a, UINT16_MAX, &one, 1), SP_OK);
    {
        uint16_t t = 0;
        void *p = &t;
        size_t len = 9;

        assert_int_equal(sp__ctl_recv(b, T, &t, &p, &len), SP_OK);
        assert_int_equal(t, 16);
        assert_null(p);
        assert_int_equal(len, 0);
        assert_int_equal(sp__ctl_recv(b, T, &t, &p, &len), SP_OK);
        assert_int_equal(t, UINT16_MAX);
        assert_int_equal(len, 1);
        free(p);
    }
    sp__ctl_close(a);
    sp__ctl_close(b);

    /* A descriptor that is none; MPI conns in a process without MPI. */
    assert_int_equal(sp__ctl_conn_fd(-1, NULL, &a), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_conn_mpi(MPI_COMM_WORLD, 0, &a), SP_ERR_UNSUPPORTED);
    assert_true(contains(sp_last_error(), "initialized"));
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

typedef struct worker {
    pthread_t thread;
    sp__ctl_conn_t *conn;
    size_t n;
    uint64_t seed;
    uint32_t id;
    sp_status_t st;
    char err[1100];
} worker_t;

static void worker_fail(worker_t *w, sp_status_t st, size_t i)
{
    w->st = st;
    snprintf(w->err, sizeof(w->err), "message %zu: %s", i, sp_last_error());
}

static void worker_join(worker_t *w)
{
    assert_int_equal(pthread_join(w->thread, NULL), 0);
    if (w->st != SP_OK)
        fprintf(stderr, "worker %u: %s\n", w->id, w->err);
    assert_int_equal(w->st, SP_OK);
}

static const size_t special_sizes[] = {0,     1,     11,    12,        13,       255,
                                       16383, 16384, 16385, 65536 - 1, 1u << 20, 8u << 20};

/* The size of message i: the special ones, then mostly small, some up to 8 MiB. */
static size_t flow_size(uint64_t seed, size_t i)
{
    uint64_t r = mix(seed * 31 + i);

    if (i < SP_ARRAY_SIZE(special_sizes))
        return special_sizes[i];
    switch (r % 16) {
    case 0: return (size_t)((r >> 8) % ((8u << 20) + 1));
    case 1:
    case 2:
    case 3: return (size_t)((r >> 8) % (256u << 10));
    default: return (size_t)((r >> 8) % 2048);
    }
}

static uint64_t flow_seed(uint64_t seed, size_t i) { return (seed + i) * 0x100000001b3ull; }

static void *sender_main(void *arg)
{
    worker_t *w = arg;

    for (size_t i = 0; i < w->n; i++) {
        size_t len = flow_size(w->seed, i);
        unsigned char *buf = malloc(len > 0 ? len : 1);
        sp_status_t st;

        if (buf == NULL) {
            w->st = SP_ERR_NOMEM;
            return NULL;
        }
        fill(buf, len, flow_seed(w->seed, i));
        st = sp__ctl_send(w->conn, (uint16_t)(16 + i % 1000), len > 0 ? buf : NULL, len);
        free(buf);
        if (st != SP_OK) {
            worker_fail(w, st, i);
            return NULL;
        }
    }
    return NULL;
}

static void *echo_main(void *arg)
{
    worker_t *w = arg;

    for (size_t i = 0; i < w->n; i++) {
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st = sp__ctl_recv(w->conn, T, &type, &p, &len);

        if (st == SP_OK)
            st = sp__ctl_send(w->conn, type, p, len);
        free(p);
        if (st != SP_OK) {
            worker_fail(w, st, i);
            return NULL;
        }
    }
    return NULL;
}

/*
 * n messages from a to b, echoed back by b while a still sends: both
 * directions carry data at once. Checks every byte and the counters.
 */
static void roundtrip(sp__ctl_conn_t *a, sp__ctl_conn_t *b, size_t n, uint64_t seed)
{
    worker_t snd = {.conn = a, .n = n, .seed = seed, .id = 1};
    worker_t echo = {.conn = b, .n = n, .seed = seed, .id = 2};
    sp__ctl_stats_t sa0, sb0, sa, sb;
    uint64_t bytes = 0;

    sp__ctl_conn_stats(a, &sa0);
    sp__ctl_conn_stats(b, &sb0);

    assert_int_equal(pthread_create(&echo.thread, NULL, echo_main, &echo), 0);
    assert_int_equal(pthread_create(&snd.thread, NULL, sender_main, &snd), 0);
    for (size_t i = 0; i < n; i++) {
        size_t want = flow_size(seed, i);
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;

        assert_int_equal(sp__ctl_recv(a, T, &type, &p, &len), SP_OK);
        assert_int_equal(type, 16 + i % 1000);
        assert_int_equal(len, want);
        assert_true(len > 0 ? p != NULL : p == NULL);
        assert_true(check_fill(p, len, flow_seed(seed, i)));
        free(p);
        bytes += SP__CTL_HEADER_SIZE + want;
    }
    worker_join(&snd);
    worker_join(&echo);
    sp__ctl_conn_stats(a, &sa);
    sp__ctl_conn_stats(b, &sb);
    assert_true(sa.msgs_sent - sa0.msgs_sent == n && sa.msgs_received - sa0.msgs_received == n);
    assert_true(sb.msgs_sent - sb0.msgs_sent == n && sb.msgs_received - sb0.msgs_received == n);
    assert_true(sa.bytes_sent - sa0.bytes_sent == bytes);
    assert_true(sa.bytes_received - sa0.bytes_received == bytes);
    assert_true(sb.bytes_sent - sb0.bytes_sent == bytes);
    assert_true(sb.bytes_received - sb0.bytes_received == bytes);
}

static void test_roundtrip_socketpair(void **state)
{
    sp__ctl_conn_t *a = NULL, *b = NULL;

    (void)state;
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    roundtrip(a, b, 150, 1);
    roundtrip(b, a, 60, 2);
    sp__ctl_close(a);
    sp__ctl_close(b);

    /* The same with the handshake run on the pair. */
    assert_int_equal(sp__ctl_pair(SECRET, SECRET_LEN, &a, &b), SP_OK);
    roundtrip(b, a, 60, 3);
    sp__ctl_close(a);
    sp__ctl_close(b);
}

static void test_roundtrip_tcp(void **state)
{
    sp__ctl_conn_t *server = NULL, *client = NULL;

    (void)state;
    tcp_pair(&server, &client);
    roundtrip(client, server, 150, 4);
    roundtrip(server, client, 60, 5);
    sp__ctl_close(server);
    sp__ctl_close(client);
}

/* Payload of sender id's message seq: {u32 id, u32 seq, fill}. */
static size_t conc_size(uint32_t id, uint32_t seq)
{
    uint64_t r = mix(((uint64_t)id << 32) | seq);

    return 8 + (size_t)(r % 8 == 0 ? (r >> 8) % (1u << 20) : (r >> 8) % 4096);
}

static uint64_t conc_seed(uint32_t id, uint32_t seq)
{
    return (((uint64_t)id << 32) | seq) * 0x9e3779b97f4a7c15ull;
}

static void *conc_sender_main(void *arg)
{
    worker_t *w = arg;

    for (uint32_t seq = 0; seq < w->n; seq++) {
        size_t len = conc_size(w->id, seq);
        unsigned char *buf = malloc(len);
        sp_status_t st;

        if (buf == NULL) {
            w->st = SP_ERR_NOMEM;
            return NULL;
        }
        le32(buf, w->id);
        le32(buf + 4, seq);
        fill(buf + 8, len - 8, conc_seed(w->id, seq));
        st = sp__ctl_send(w->conn, (uint16_t)(16 + w->id), buf, len);
        free(buf);
        if (st != SP_OK) {
            worker_fail(w, st, seq);
            return NULL;
        }
    }
    return NULL;
}

/* nthreads senders on one conn a; every frame arrives whole at b, in each sender's order. */
static void concurrent_senders(sp__ctl_conn_t *a, sp__ctl_conn_t *b, uint32_t nthreads,
                               uint32_t per_thread)
{
    worker_t w[4];
    uint32_t next[4] = {0};

    assert_true(nthreads <= 4);
    for (uint32_t t = 0; t < nthreads; t++) {
        w[t] = (worker_t){.conn = a, .n = per_thread, .id = t};
        assert_int_equal(pthread_create(&w[t].thread, NULL, conc_sender_main, &w[t]), 0);
    }
    for (uint32_t k = 0; k < nthreads * per_thread; k++) {
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        uint32_t id, seq;

        assert_int_equal(sp__ctl_recv(b, T, &type, &p, &len), SP_OK);
        assert_true(len >= 8);
        id = get32(p);
        seq = get32((unsigned char *)p + 4);
        assert_true(id < nthreads);
        assert_int_equal(type, 16 + id);
        assert_int_equal(seq, next[id]);
        next[id]++;
        assert_int_equal(len, conc_size(id, seq));
        assert_true(check_fill((unsigned char *)p + 8, len - 8, conc_seed(id, seq)));
        free(p);
    }
    for (uint32_t t = 0; t < nthreads; t++)
        worker_join(&w[t]);
    for (uint32_t t = 0; t < nthreads; t++)
        assert_int_equal(next[t], per_thread);
}

static void test_concurrent_senders_deliver_whole_frames(void **state)
{
    sp__ctl_conn_t *a = NULL, *b = NULL;

    (void)state;
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    concurrent_senders(a, b, 4, 150);
    concurrent_senders(b, a, 2, 100);
    sp__ctl_close(a);
    sp__ctl_close(b);
    tcp_pair(&a, &b);
    concurrent_senders(b, a, 3, 150);
    sp__ctl_close(a);
    sp__ctl_close(b);
}

/* Frames written a byte, then a few thousand, at a time are assembled; none is lost. */
static void test_recv_assembles_partial_frames(void **state)
{
    enum { PLEN = 40000 };
    unsigned char *frame = malloc(SP__CTL_HEADER_SIZE + PLEN);
    unsigned char three[3 * (SP__CTL_HEADER_SIZE + 3)];
    sp__ctl_conn_t *r = NULL;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0, off = 0;
    int sv[2];
    char name[32];
    const size_t total = SP__CTL_HEADER_SIZE + PLEN;

    (void)state;
    assert_non_null(frame);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    snprintf(name, sizeof(name), "fd %d", sv[0]);
    assert_int_equal(sp__ctl_conn_fd(sv[0], NULL, &r), SP_OK);
    assert_string_equal(sp__ctl_peer_name(r), name);
    assert_int_equal(sp__ctl_fd(r), sv[0]);
    sp__ctl_header_pack(frame, 99, PLEN);
    fill(frame + SP__CTL_HEADER_SIZE, PLEN, 77);
    while (off < total - 1) {
        size_t step = off < 30 ? 1 : SP_MIN((size_t)7001, total - 1 - off);

        assert_true(write_all(sv[1], frame + off, step));
        off += step;
        assert_int_equal(sp__ctl_recv(r, 0, &type, &p, &len), SP_ERR_TIMED_OUT);
    }
    /* The last byte completes it. */
    assert_true(write_all(sv[1], frame + off, 1));
    assert_int_equal(sp__ctl_recv(r, T, &type, &p, &len), SP_OK);
    assert_int_equal(type, 99);
    assert_int_equal(len, PLEN);
    assert_true(check_fill(p, len, 77));
    free(p);

    /* Three frames in one write come out as three. */
    for (int i = 0; i < 3; i++) {
        unsigned char *f = three + (size_t)i * (SP__CTL_HEADER_SIZE + 3);

        sp__ctl_header_pack(f, (uint16_t)(20 + i), 3);
        memcpy(f + SP__CTL_HEADER_SIZE, "abc", 3);
    }
    assert_true(write_all(sv[1], three, sizeof(three)));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sp__ctl_recv(r, T, &type, &p, &len), SP_OK);
        assert_int_equal(type, 20 + i);
        assert_int_equal(len, 3);
        assert_memory_equal(p, "abc", 3);
        free(p);
    }
    assert_int_equal(sp__ctl_recv(r, 0, &type, &p, &len), SP_ERR_TIMED_OUT);
    sp__ctl_close(r);
    close(sv[1]);
    free(frame);
}

/* ------------------------------------------------------------------------ */
/* Malformed frames                                                         */
/* ------------------------------------------------------------------------ */

typedef struct bad_frame {
    const char *name;
    uint32_t magic;
    uint16_t version, type;
    uint32_t len;
    size_t header_bytes;  /* of the header written */
    size_t payload_bytes; /* of the payload written */
    bool close_after;     /* else a valid frame follows, which must never arrive */
    const char *phrase;   /* in the error message */
} bad_frame_t;

#define M SP__CTL_MAGIC
#define V SP__CTL_VERSION
#define H SP__CTL_HEADER_SIZE
static const bad_frame_t bad_frames[] = {
    {"bad magic", 0x4d435058u, V, 16, 0, H, 0, false, "bad magic 0x4d435058"},
    {"magic byte-swapped", 0x5350434du, V, 16, 4, H, 4, false, "bad magic"},
    {"version 0", M, 0, 16, 0, H, 0, false, "unsupported version 0"},
    {"an older build's version", M, V - 1, 16, 8, H, 8, false, "unsupported version"},
    {"a newer build's version", M, V + 1, 16, 8, H, 8, false, "unsupported version"},
    {"length over the limit", M, V, 16, SP__CTL_MAX_PAYLOAD + 1, H, 0, false, "above the limit"},
    {"length 0xffffffff", M, V, 16, UINT32_MAX, H, 100, false, "above the limit"},
    {"channel type HELLO", M, V, 1, 32, H, 32, false, "type 1 is reserved for the channel"},
    {"channel type REFUSED", M, V, 4, 0, H, 0, false, "type 4 is reserved"},
    {"channel type 0", M, V, 0, 5, H, 5, false, "type 0 is reserved"},
    {"channel type 15", M, V, 15, 0, H, 0, false, "type 15 is reserved"},
    {"half a header", M, V, 16, 0, 7, 0, true, "after 7 of 12 header bytes"},
    {"header only", M, V, 16, 10, H, 0, true, "after 0 of 10 payload bytes"},
    {"half a payload", M, V, 16, 100, H, 40, true, "after 40 of 100 payload bytes"},
    {"half a large payload", M, V, 16, 1u << 20, H, 200000, true, "after 200000 of 1048576"},
};
#undef M
#undef V
#undef H

/* Writes bad frame f to fd (and the valid frame after it, or closes fd). */
static void write_bad_frame(const bad_frame_t *f, int fd)
{
    unsigned char h[SP__CTL_HEADER_SIZE], good[SP__CTL_HEADER_SIZE + 2];
    unsigned char *payload = calloc(1, f->payload_bytes + 1);

    assert_non_null(payload);
    raw_header(h, f->magic, f->version, f->type, f->len);
    assert_true(write_all(fd, h, f->header_bytes));
    assert_true(write_all(fd, payload, f->payload_bytes));
    free(payload);
    if (f->close_after) {
        close(fd);
        return;
    }
    sp__ctl_header_pack(good, 16, 2);
    memcpy(good + SP__CTL_HEADER_SIZE, "ok", 2);
    assert_true(write_all(fd, good, sizeof(good)));
}

/* sp__ctl_recv on r gives BAD_FORMAT for f, naming the peer, and again on the next call. */
static void expect_bad(sp__ctl_conn_t *r, const bad_frame_t *f)
{
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    sp_status_t st = sp__ctl_recv(r, T, &type, &p, &len);

    if (st != SP_ERR_BAD_FORMAT)
        fprintf(stderr, "%s: %s\n", f->name, sp_last_error());
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), f->phrase));
    assert_true(contains(sp_last_error(), sp__ctl_peer_name(r)));
    /* The stream is out of step (or done): the conn stays failed. */
    st = sp__ctl_recv(r, 100, &type, &p, &len);
    if (st != SP_ERR_BAD_FORMAT)
        fprintf(stderr, "%s, second receive: %s\n", f->name, sp_last_error());
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_null(p);
}

static void test_malformed_frames_on_a_socket(void **state)
{
    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_frames); i++) {
        const bad_frame_t *f = &bad_frames[i];
        sp__ctl_conn_t *r = NULL;
        int sv[2];

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        assert_int_equal(sp__ctl_conn_fd(sv[0], "raw peer", &r), SP_OK);
        write_bad_frame(f, sv[1]);
        expect_bad(r, f);
        sp__ctl_close(r);
        if (!f->close_after)
            close(sv[1]);
    }
}

/* The same after a real handshake over TCP: the client's socket written raw. */
static void test_malformed_frames_after_the_handshake(void **state)
{
    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_frames); i++) {
        const bad_frame_t *f = &bad_frames[i];
        sp__ctl_conn_t *server = NULL, *client = NULL;
        int fd;

        tcp_pair(&server, &client);
        sp__ctl_set_peer_name(server, "executor 5");
        /* A valid message first: the stream is in step until the bad frame. */
        send_text(client, 30, "before");
        expect_text(server, 30, "before");
        fd = f->close_after ? dup(sp__ctl_fd(client)) : sp__ctl_fd(client);
        assert_true(fd >= 0);
        if (f->close_after) {
            sp__ctl_close(client);
            client = NULL;
        }
        write_bad_frame(f, fd);
        expect_bad(server, f);
        sp__ctl_close(server);
        sp__ctl_close(client);
    }
}

/* Through the hub: the conn is removed and reported with its id; the others go on. */
static void test_malformed_frames_through_the_hub(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *keep = NULL;
    char addr[128];
    int lfd = -1;

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), T);
    keep = hub_join(hub, addr, 1, "executor 1");
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_frames); i++) {
        const bad_frame_t *f = &bad_frames[i];
        uint32_t id = 100 + (uint32_t)i, got = 0;
        sp__ctl_conn_t *client = hub_join(hub, addr, id, "executor bad");
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st;
        int fd;

        send_text(client, 16, "fine");
        expect_hub_text(hub, id, 16, "fine");
        fd = f->close_after ? dup(sp__ctl_fd(client)) : sp__ctl_fd(client);
        assert_true(fd >= 0);
        if (f->close_after) {
            sp__ctl_close(client);
            client = NULL;
        }
        write_bad_frame(f, fd);
        st = sp__ctl_hub_wait(hub, T, &got, &type, &p, &len);
        if (st != SP_ERR_BAD_FORMAT)
            fprintf(stderr, "%s: %s\n", f->name, sp_last_error());
        assert_int_equal(st, SP_ERR_BAD_FORMAT);
        assert_int_equal(got, id);
        assert_true(contains(sp_last_error(), f->phrase));
        assert_true(contains(sp_last_error(), "executor bad"));
        assert_null(sp__ctl_hub_conn(hub, id));
        assert_int_equal(sp__ctl_hub_count(hub), 1);
        /* The valid frame after a bad one is never delivered. */
        assert_int_equal(sp__ctl_hub_wait(hub, 20, &got, &type, &p, &len), SP_ERR_TIMED_OUT);
        sp__ctl_close(client);

        /* The conn that behaves is served as before. */
        send_text(keep, 17, "still here");
        expect_hub_text(hub, 1, 17, "still here");
        send_text(sp__ctl_hub_conn(hub, 1), 18, "so am I");
        expect_text(keep, 18, "so am I");
    }
    sp__ctl_close(keep);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/* ------------------------------------------------------------------------ */
/* Timeouts, lost peers and allocation failures                             */
/* ------------------------------------------------------------------------ */

/*
 * Each timeout ends its call with SP_ERR_TIMED_OUT and a message naming it,
 * never before the timeout has passed (now_ms() truncates, hence 1 ms less).
 * How long after is the scheduler's business: no upper bound is asserted.
 */
static void test_timeouts_expire_not_before_their_time(void **state)
{
    sp__ctl_conn_t *a = NULL, *b = NULL, *c = NULL;
    sp__ctl_hub_t *hub = NULL;
    char addr[128], expect[320];
    uint32_t id = 777;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    uint64_t t0, dt;
    int lfd = -1;

    (void)state;
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    sp__ctl_set_peer_name(a, "executor 8");
    assert_int_equal(sp__ctl_recv(a, 0, &type, &p, &len), SP_ERR_TIMED_OUT);
    t0 = now_ms();
    assert_int_equal(sp__ctl_recv(a, 200, &type, &p, &len), SP_ERR_TIMED_OUT);
    dt = now_ms() - t0;
    assert_true(dt >= 199);
    assert_true(contains(sp_last_error(), "from executor 8 did not arrive within 200 ms"));
    assert_null(p);

    /* The hub: timeout 0 and 150 ms, id untouched. */
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a, 8), SP_OK);
    assert_int_equal(sp__ctl_hub_wait(hub, 0, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    t0 = now_ms();
    assert_int_equal(sp__ctl_hub_wait(hub, 150, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    dt = now_ms() - t0;
    assert_true(dt >= 149);
    assert_true(contains(sp_last_error(), "no message within 150 ms"));
    assert_int_equal(id, 777);
    sp__ctl_hub_destroy(hub);
    sp__ctl_close(b);

    /* Nobody connects to a listener. */
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd), SP_OK);
    t0 = now_ms();
    assert_int_equal(sp__ctl_accept(lfd, SECRET, SECRET_LEN, 100, &c), SP_ERR_TIMED_OUT);
    dt = now_ms() - t0;
    assert_true(dt >= 99);
    assert_true(contains(sp_last_error(), "no executor connected"));

    /* Nobody listens: connect retries until its deadline. */
    close(lfd);
    t0 = now_ms();
    assert_int_equal(sp__ctl_connect(addr, SECRET, SECRET_LEN, 300, &c), SP_ERR_TIMED_OUT);
    dt = now_ms() - t0;
    assert_true(dt >= 299);
    snprintf(expect, sizeof(expect), "connecting to the driver at %s: no success within 300 ms",
             addr);
    assert_true(contains(sp_last_error(), expect));
    assert_true(contains(sp_last_error(), "errno"));
}

static void test_peer_close_is_peer_lost(void **state)
{
    static const char big[4096];
    sp__ctl_conn_t *a = NULL, *b = NULL;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    sp_status_t st = SP_OK;

    (void)state;
    /* Frames sent before the close are delivered first. */
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    sp__ctl_set_peer_name(a, "executor 6");
    send_text(b, 16, "one");
    send_text(b, 17, "two");
    sp__ctl_close(b);
    expect_text(a, 16, "one");
    expect_text(a, 17, "two");
    assert_int_equal(sp__ctl_recv(a, T, &type, &p, &len), SP_ERR_PEER_LOST);
    assert_true(contains(sp_last_error(), "executor 6 closed the control connection"));
    assert_int_equal(sp__ctl_recv(a, 0, &type, &p, &len), SP_ERR_PEER_LOST);

    /* Sending to it: the peer is gone (no SIGPIPE), and stays gone. */
    for (int i = 0; i < 100 && st == SP_OK; i++)
        st = sp__ctl_send(a, 16, big, sizeof(big));
    assert_int_equal(st, SP_ERR_PEER_LOST);
    assert_true(contains(sp_last_error(), "executor 6"));
    assert_int_equal(sp__ctl_send(a, 16, big, 1), SP_ERR_PEER_LOST);
    assert_true(contains(sp_last_error(), "failed before"));
    sp__ctl_close(a);
}

/* A full socket times a send out; one cut in the middle of a frame abandons the conn. */
static void test_send_timeout_abandons_the_conn(void **state)
{
    enum { BIG = 1u << 20 };
    unsigned char *buf = calloc(1, BIG);
    sp__ctl_conn_t *a = NULL, *b = NULL;
    sp_status_t st = SP_OK;

    (void)state;
    assert_non_null(buf);
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    sp__ctl_set_peer_name(a, "a slow reader");
    sp__ctl_set_send_timeout(a, 50);
    for (int i = 0; i < 64 && st == SP_OK; i++)
        st = sp__ctl_send(a, 16, buf, BIG);
    assert_int_equal(st, SP_ERR_TIMED_OUT);
    assert_true(contains(sp_last_error(), "to a slow reader: no room within 50 ms"));
    assert_true(contains(sp_last_error(), "abandoned"));
    assert_int_equal(sp__ctl_send(a, 16, buf, 1), SP_ERR_PEER_LOST);
    assert_true(contains(sp_last_error(), "failed before"));
    sp__ctl_close(a);
    sp__ctl_close(b);
    free(buf);
}

/* A payload that cannot be allocated is SP_ERR_NOMEM; the frame waits for the next call. */
static void test_nomem_keeps_the_frame(void **state)
{
    static const size_t sizes[] = {100, 100000};
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *a = NULL, *b = NULL;
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    for (size_t i = 0; i < SP_ARRAY_SIZE(sizes); i++) {
        unsigned char *buf = malloc(sizes[i]);

        assert_non_null(buf);
        fill(buf, sizes[i], i);
        assert_int_equal(sp__ctl_send(b, 16, buf, sizes[i]), SP_OK);
        sp__fault_arm(SP_FAULT_ALLOC, 1);
        assert_int_equal(sp__ctl_recv(a, T, &type, &p, &len), SP_ERR_NOMEM);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        assert_null(p);
        assert_int_equal(sp__ctl_recv(a, T, &type, &p, &len), SP_OK);
        assert_int_equal(len, sizes[i]);
        assert_true(check_fill(p, len, i));
        free(p);
        p = NULL;
        free(buf);
    }

    /* The same through the hub (its pollfds are sized by a first wait). */
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a, 2), SP_OK);
    assert_int_equal(sp__ctl_hub_wait(hub, 0, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    for (size_t i = 0; i < SP_ARRAY_SIZE(sizes); i++) {
        unsigned char *buf = malloc(sizes[i]);

        assert_non_null(buf);
        fill(buf, sizes[i], i + 10);
        assert_int_equal(sp__ctl_send(b, 16, buf, sizes[i]), SP_OK);
        sp__fault_arm(SP_FAULT_ALLOC, 1);
        assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_ERR_NOMEM);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        assert_int_equal(sp__ctl_hub_count(hub), 1);
        assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_OK);
        assert_int_equal(id, 2);
        assert_int_equal(len, sizes[i]);
        assert_true(check_fill(p, len, i + 10));
        free(p);
        p = NULL;
        free(buf);
    }
    sp__ctl_hub_destroy(hub);
    sp__ctl_close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_and_argument_checks),
        cmocka_unit_test(test_roundtrip_socketpair),
        cmocka_unit_test(test_roundtrip_tcp),
        cmocka_unit_test(test_concurrent_senders_deliver_whole_frames),
        cmocka_unit_test(test_recv_assembles_partial_frames),
        cmocka_unit_test(test_malformed_frames_on_a_socket),
        cmocka_unit_test(test_malformed_frames_after_the_handshake),
        cmocka_unit_test(test_malformed_frames_through_the_hub),
        cmocka_unit_test(test_timeouts_expire_not_before_their_time),
        cmocka_unit_test(test_peer_close_is_peer_lost),
        cmocka_unit_test(test_send_timeout_abandons_the_conn),
        cmocka_unit_test(test_nomem_keeps_the_frame),
    };

    ctl_test_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
