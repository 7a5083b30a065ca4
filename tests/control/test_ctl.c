/*
 * The control plane's channel (control/): the payload codec, framing
 * over stream sockets, the HMAC handshake and the driver's hub.
 *
 * Codec: sp__rbuf against every prefix of a payload holding each kind of
 * field (each is refused as truncated, consumes nothing and leaves its
 * output alone), a trailing byte refused by sp__rbuf_done, strings with a
 * NUL or over their limit; sp__wbuf's sticky status under injected
 * allocation failures. Frames: messages of random sizes from 0 B to 8 MiB
 * both ways at once (an echo) over a socketpair with and without the
 * handshake and over TCP on 127.0.0.1, checked byte for byte; 4 threads
 * sending on one conn deliver whole frames in each thread's order; frames
 * assembled from single bytes; malformed frames written raw (bad magic,
 * version, a length over SP__CTL_MAX_PAYLOAD, a channel type after the
 * handshake, a close in the middle of a header or a payload) give
 * SP_ERR_BAD_FORMAT from sp__ctl_recv and from the hub, and the conn stays
 * failed; timeouts of recv, hub_wait, accept and connect; a full socket
 * times a send out and abandons the conn. Handshake: a wrong secret is
 * refused on both sides (by sp__ctl_accept and by the hub's listener, which
 * keeps running and drops clients that stall or send garbage), and a server
 * that cannot prove the secret is refused by the client. Hub: peers that
 * close, or forked children that are SIGKILLed (between frames or in the
 * middle of one), are reported with their id; round robin over 8 conns
 * against a model, with a conn removed and one added midway; an
 * allocation failure keeps the frame for the next call.
 *
 * A peer that has not authenticated: a client announcing a 256 MiB AUTH
 * (then streaming junk) is refused at the header and closed, with the
 * allocation fault hook armed and never firing (nothing allocated for it);
 * a "driver" answering with a 256 MiB frame is refused by the client; three
 * times SP__CTL_HUB_MAX_JOINING silent clients never hold more slots than
 * that, the oldest make room for newcomers, and an honest client arriving
 * after them joins; a silent client is dropped at its deadline while an
 * honest one joins. Out of descriptors (a forked child with RLIMIT_NOFILE
 * filled) the hub sheds connections through its reserve descriptor without
 * spinning (passes through poll counted) or flooding the log (lines
 * counted), and accepts an honest client once descriptors are free. A
 * reset peer is reported as a reset, and removing a dropped id again
 * repeats what happened to its peer.
 *
 * The fork tests run first, before any test starts a thread.
 * CTL_TEST_FILTER=<pattern> runs only the tests whose names match.
 */
/* LABELS: unit */
#include "common_int.h"
#include "control/ctl.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SECRET     "spate-test-secret-0123456789abcdef"
#define SECRET_LEN (sizeof(SECRET) - 1)
#define WRONG      "not-the-secret-0123456789abcdef"
/* Generous wait for anything that should succeed (ms). */
#define T 10000

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
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

static uint64_t now_ms(void) { return sp__now_ns() / 1000000u; }

static bool contains(const char *text, const char *phrase)
{
    if (strstr(text, phrase) != NULL)
        return true;
    fprintf(stderr, "expected \"%s\" in \"%s\"\n", phrase, text);
    return false;
}

static void le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void raw_header(unsigned char *h, uint32_t magic, uint16_t version, uint16_t type,
                       uint32_t len)
{
    le32(h, magic);
    le16(h + 4, version);
    le16(h + 6, type);
    le32(h + 8, len);
}

/* Writes all of buf to a (possibly non-blocking) socket; false on error. */
static bool write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};

            if (poll(&pfd, 1, T) <= 0)
                return false;
            continue;
        }
        return false;
    }
    return true;
}

/*
 * Reads exactly len bytes within timeout_ms; 1 when done, 0 on EOF before
 * any byte was read, -1 otherwise (error, timeout, EOF after some bytes).
 */
static int read_all(int fd, void *buf, size_t len, int timeout_ms)
{
    unsigned char *p = buf;
    size_t got = 0;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

    while (got < len) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint64_t now = now_ms();
        ssize_t n;

        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            return -1;
        n = recv(fd, p + got, len - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            return got == 0 ? 0 : -1;
        else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            return errno == ECONNRESET && got == 0 ? 0 : -1;
    }
    return 1;
}

/* A plain blocking TCP connection to "127.0.0.1:PORT", -1 on failure. */
static int raw_connect(const char *addr)
{
    struct sockaddr_in sa;
    const char *colon = strrchr(addr, ':');
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || colon == NULL)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    sa.sin_addr.s_addr = htonl(0x7f000001u);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* sp__ctl_connect on a thread of its own, while this one serves. */
typedef struct connector {
    char addr[128];
    const char *secret;
    int timeout_ms;
    pthread_t thread;
    atomic_bool done;
    sp_status_t st;
    char err[1100];
    sp__ctl_conn_t *conn;
} connector_t;

static void *connector_main(void *arg)
{
    connector_t *c = arg;

    c->st = sp__ctl_connect(c->addr, c->secret, strlen(c->secret), c->timeout_ms, &c->conn);
    if (c->st != SP_OK)
        snprintf(c->err, sizeof(c->err), "%s", sp_last_error());
    atomic_store(&c->done, true);
    return NULL;
}

static void connector_start(connector_t *c, const char *addr, const char *secret, int timeout_ms)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->secret = secret;
    c->timeout_ms = timeout_ms;
    atomic_init(&c->done, false);
    assert_int_equal(pthread_create(&c->thread, NULL, connector_main, c), 0);
}

static void connector_join(connector_t *c) { assert_int_equal(pthread_join(c->thread, NULL), 0); }

/* A handshaken TCP connection on 127.0.0.1 through sp__ctl_listen/accept/connect. */
static void tcp_pair(sp__ctl_conn_t **server_p, sp__ctl_conn_t **client_p)
{
    char addr[128];
    connector_t c;
    int lfd = -1;
    sp_status_t st;

    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd), SP_OK);
    connector_start(&c, addr, SECRET, T);
    st = sp__ctl_accept(lfd, SECRET, SECRET_LEN, T, server_p);
    connector_join(&c);
    close(lfd);
    assert_int_equal(st, SP_OK);
    assert_int_equal(c.st, SP_OK);
    assert_true(contains(sp__ctl_peer_name(*server_p), "127.0.0.1:"));
    assert_string_equal(sp__ctl_peer_name(c.conn), addr);
    *client_p = c.conn;
}

/* A client that joins the hub through its listener, added under id. */
static sp__ctl_conn_t *hub_join(sp__ctl_hub_t *hub, const char *addr, uint32_t id, const char *name)
{
    sp__ctl_conn_t *server = NULL;
    connector_t c;
    uint32_t got = 0;
    uint16_t type = 1;
    void *payload = &got;
    size_t len = 1;
    sp_status_t st;

    connector_start(&c, addr, SECRET, T);
    st = sp__ctl_hub_wait(hub, T, &got, &type, &payload, &len);
    connector_join(&c);
    assert_int_equal(st, SP_OK);
    assert_int_equal(got, SP__CTL_HUB_NEW);
    assert_int_equal(type, 0);
    assert_null(payload);
    assert_int_equal(len, 0);
    assert_int_equal(c.st, SP_OK);
    assert_int_equal(sp__ctl_hub_accept(hub, &server), SP_OK);
    sp__ctl_set_peer_name(server, name);
    assert_int_equal(sp__ctl_hub_add(hub, server, id), SP_OK);
    return c.conn;
}

static void hub_listen(sp__ctl_hub_t **hub_p, int *lfd_p, char *addr, size_t cap, int hs_ms)
{
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, cap, lfd_p), SP_OK);
    assert_int_equal(sp__ctl_hub_create(hub_p), SP_OK);
    assert_int_equal(sp__ctl_hub_set_listener(*hub_p, *lfd_p, SECRET, SECRET_LEN, hs_ms), SP_OK);
}

/* Sends a small message whose payload is text. */
static void send_text(sp__ctl_conn_t *c, uint16_t type, const char *text)
{
    assert_int_equal(sp__ctl_send(c, type, text, strlen(text)), SP_OK);
}

/* Receives a message and checks it is text. */
static void expect_text(sp__ctl_conn_t *c, uint16_t type, const char *text)
{
    uint16_t t = 0;
    void *p = NULL;
    size_t len = 0;

    assert_int_equal(sp__ctl_recv(c, T, &t, &p, &len), SP_OK);
    assert_int_equal(t, type);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(p, text, len);
    free(p);
}

/* The hub's next event must be text from id. */
static void expect_hub_text(sp__ctl_hub_t *hub, uint32_t id, uint16_t type, const char *text)
{
    uint32_t got = 0;
    uint16_t t = 0;
    void *p = NULL;
    size_t len = 0;

    assert_int_equal(sp__ctl_hub_wait(hub, T, &got, &t, &p, &len), SP_OK);
    assert_int_equal(got, id);
    assert_int_equal(t, type);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(p, text, len);
    free(p);
}

/* One hub_wait of up to ms in which nothing may reach the caller. */
static void hub_serve_quietly(sp__ctl_hub_t *hub, int ms)
{
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    sp_status_t st = sp__ctl_hub_wait(hub, ms, &id, &type, &p, &len);

    if (st != SP_ERR_TIMED_OUT)
        fprintf(stderr, "hub_wait: %s\n", sp_last_error());
    assert_int_equal(st, SP_ERR_TIMED_OUT);
}

/* All of f from its start, NUL-terminated and malloc'ed; closes f. */
static char *slurp(FILE *f)
{
    long len;
    char *text;

    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    text = malloc((size_t)len + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
    text[len] = '\0';
    fclose(f);
    return text;
}

/* ------------------------------------------------------------------------ */
/* A peer that dies (fork first, before any thread exists)                   */
/* ------------------------------------------------------------------------ */

static pid_t child = -1;

static int kill_child(void **state)
{
    (void)state;
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = -1;
    }
    return 0;
}

static void kill_and_reap(void)
{
    int ws = 0;

    assert_int_equal(kill(child, SIGKILL), 0);
    assert_int_equal(waitpid(child, &ws, 0), child);
    child = -1;
    assert_true(WIFSIGNALED(ws));
    assert_int_equal(WTERMSIG(ws), SIGKILL);
}

static void test_hub_killed_child_is_reported_with_its_id(void **state)
{
    static const char hello[] = "hello from a child";
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *conn = NULL, *a = NULL, *b = NULL;
    char addr[128];
    int lfd = -1, sync[2];
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    char byte = 0;
    sp_status_t st;

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), T);

    /* A child that joins over TCP, says hello and is killed between frames. */
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        sp__ctl_conn_t *c = NULL;

        if (sp__ctl_connect(addr, SECRET, SECRET_LEN, T, &c) != SP_OK ||
            sp__ctl_send(c, 16, hello, sizeof(hello)) != SP_OK)
            _exit(2);
        for (;;)
            pause();
    }
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_OK);
    assert_int_equal(id, SP__CTL_HUB_NEW);
    assert_int_equal(sp__ctl_hub_accept(hub, &conn), SP_OK);
    sp__ctl_set_peer_name(conn, "executor 42");
    assert_int_equal(sp__ctl_hub_add(hub, conn, 42), SP_OK);
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_OK);
    assert_int_equal(id, 42);
    assert_int_equal(type, 16);
    assert_int_equal(len, sizeof(hello));
    assert_memory_equal(p, hello, len);
    free(p);
    kill_and_reap();
    id = 0;
    st = sp__ctl_hub_wait(hub, T, &id, &type, &p, &len);
    assert_int_equal(st, SP_ERR_PEER_LOST);
    assert_int_equal(id, 42);
    assert_true(contains(sp_last_error(), "executor 42"));
    assert_int_equal(sp__ctl_hub_count(hub), 0);
    assert_null(sp__ctl_hub_conn(hub, 42));

    /* A child on a socketpair killed in the middle of a frame. */
    assert_int_equal(sp__ctl_pair(SECRET, SECRET_LEN, &a, &b), SP_OK);
    assert_int_equal(pipe(sync), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        unsigned char partial[SP__CTL_HEADER_SIZE + 10] = {0};

        sp__ctl_close(a);
        close(sync[0]);
        sp__ctl_header_pack(partial, 17, 1000);
        if (sp__ctl_send(b, 16, hello, sizeof(hello)) != SP_OK ||
            !write_all(sp__ctl_fd(b), partial, sizeof(partial)) || write(sync[1], "x", 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    close(sync[1]);
    sp__ctl_close(b);
    sp__ctl_set_peer_name(a, "executor 43");
    assert_int_equal(sp__ctl_hub_add(hub, a, 43), SP_OK);
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_OK);
    assert_int_equal(id, 43);
    assert_memory_equal(p, hello, sizeof(hello));
    free(p);
    assert_int_equal(read(sync[0], &byte, 1), 1);
    close(sync[0]);
    /* The partial frame is kept, not delivered. */
    assert_int_equal(sp__ctl_hub_wait(hub, 50, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    kill_and_reap();
    id = 0;
    st = sp__ctl_hub_wait(hub, T, &id, &type, &p, &len);
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_int_equal(id, 43);
    assert_true(contains(sp_last_error(), "executor 43"));
    assert_true(contains(sp_last_error(), "truncated"));
    assert_true(contains(sp_last_error(), "10 of 1000 payload bytes"));
    assert_int_equal(sp__ctl_hub_count(hub), 0);

    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/*
 * Out of descriptors (EMFILE) in a forked child whose RLIMIT_NOFILE is
 * lowered and filled: while the parent keeps connecting, the child's hub
 * sheds the waiting connections through its reserve descriptor (they see a
 * close), neither spins (its passes through poll stay few) nor floods the
 * log (at most a line a second), and accepts an honest client once
 * descriptors are free again.
 */
typedef struct emfile_report {
    int status; /* 0: the child did all it should; else the step that failed */
    double seconds;
    sp__ctl_hub_stats_t before, after; /* at the end of the shortage, and at the end */
} emfile_report_t;

/* The child: never returns. */
static void emfile_child(int rep_w, int go_r, int log_fd)
{
    emfile_report_t rep;
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *conn = NULL;
    struct rlimit rl;
    uint64_t t0 = now_ms();
    char addr[128];
    int lfd = -1, fillers[256], nfill = 0;
    bool go = false;

    memset(&rep, 0, sizeof(rep));
    dup2(log_fd, STDERR_FILENO);
    sp_log_set_level(SP_LOG_WARN);
    if (sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd) != SP_OK ||
        sp__ctl_hub_create(&hub) != SP_OK ||
        sp__ctl_hub_set_listener(hub, lfd, SECRET, SECRET_LEN, T) != SP_OK)
        _exit(3);
    if (write(rep_w, addr, sizeof(addr)) != (ssize_t)sizeof(addr))
        _exit(4);
    /* Every descriptor taken: accept() fails with EMFILE. */
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        _exit(5);
    rl.rlim_cur = 64;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        _exit(6);
    while (nfill < 256 && (fillers[nfill] = open("/dev/null", O_RDONLY)) >= 0)
        nfill++;
    if (nfill == 0 || nfill == 256 || errno != EMFILE)
        _exit(7);
    while (!go) {
        struct pollfd pfd = {.fd = go_r, .events = POLLIN};
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;

        if (sp__ctl_hub_wait(hub, 50, &id, &type, &p, &len) != SP_ERR_TIMED_OUT)
            _exit(8);
        go = poll(&pfd, 1, 0) == 1;
        if (now_ms() - t0 > 6 * T)
            _exit(9);
    }
    sp__ctl_hub_stats(hub, &rep.before);
    /* Descriptors free again: an honest client joins and talks. */
    while (nfill > 0)
        close(fillers[--nfill]);
    for (;;) {
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st = sp__ctl_hub_wait(hub, T, &id, &type, &p, &len);

        if (st == SP_OK && id == SP__CTL_HUB_NEW)
            break;
        if (st != SP_ERR_TIMED_OUT || now_ms() - t0 > 6 * T)
            _exit(10);
    }
    if (sp__ctl_hub_accept(hub, &conn) != SP_OK || sp__ctl_hub_add(hub, conn, 1) != SP_OK)
        _exit(11);
    {
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;

        if (sp__ctl_hub_wait(hub, T, &id, &type, &p, &len) != SP_OK || id != 1 || type != 16 ||
            len != 5 || memcmp(p, "hello", 5) != 0)
            _exit(12);
        free(p);
        if (sp__ctl_send(conn, 17, "welcome", 7) != SP_OK)
            _exit(13);
    }
    sp__ctl_hub_stats(hub, &rep.after);
    rep.seconds = (double)(now_ms() - t0) / 1000.0;
    if (write(rep_w, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
        _exit(14);
    sp__ctl_hub_destroy(hub);
    close(lfd);
    _exit(0);
}

/* Reads exactly len bytes from a pipe within T; false otherwise. */
static bool pipe_read(int fd, void *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&pfd, 1, T) != 1)
            return false;
        n = read(fd, (char *)buf + got, len - got);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* True once the peer of raw fd has closed it (whatever it sent first is read and dropped). */
static bool raw_closed(int fd)
{
    unsigned char buf[256];

    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n > 0)
            continue;
        return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
}

static size_t count_lines(const char *text)
{
    size_t n = 0;

    for (; *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

static void test_hub_out_of_descriptors_sheds_without_spinning(void **state)
{
    enum { RAW = 120 };
    int rep_pipe[2], go_pipe[2], raw[RAW], nraw = 0, ws = 0;
    FILE *log = tmpfile();
    char addr[128], *text;
    emfile_report_t rep;
    sp__ctl_conn_t *c = NULL;
    size_t lines;
    unsigned shut = 0;
    uint64_t t0;

    (void)state;
    assert_non_null(log);
    assert_int_equal(pipe(rep_pipe), 0);
    assert_int_equal(pipe(go_pipe), 0);
    fflush(stderr);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(rep_pipe[0]);
        close(go_pipe[1]);
        emfile_child(rep_pipe[1], go_pipe[0], fileno(log));
    }
    close(rep_pipe[1]);
    close(go_pipe[0]);
    assert_true(pipe_read(rep_pipe[0], addr, sizeof(addr)));

    /*
     * Connections keep coming, one every 10 ms: every one must be closed
     * unanswered by the child, which has no descriptor to give it.
     */
    t0 = now_ms();
    while (nraw < RAW || shut < (unsigned)nraw) {
        if (nraw < RAW) {
            raw[nraw] = raw_connect(addr);
            assert_true(raw[nraw] >= 0);
            nraw++;
        }
        shut = 0;
        for (int k = 0; k < nraw; k++)
            shut += raw_closed(raw[k]);
        if (now_ms() - t0 > 6 * T)
            fail_msg("only %u of %d connections were closed by a hub out of descriptors", shut,
                     nraw);
        usleep(10000);
    }
    for (int k = 0; k < nraw; k++)
        close(raw[k]);

    /* Descriptors come back; an honest client joins. */
    assert_int_equal(write(go_pipe[1], "g", 1), 1);
    assert_int_equal(sp__ctl_connect(addr, SECRET, SECRET_LEN, 3 * T, &c), SP_OK);
    send_text(c, 16, "hello");
    expect_text(c, 17, "welcome");
    assert_true(pipe_read(rep_pipe[0], &rep, sizeof(rep)));
    sp__ctl_close(c);
    assert_int_equal(waitpid(child, &ws, 0), child);
    child = -1;
    close(rep_pipe[0]);
    close(go_pipe[1]);
    text = slurp(log);
    lines = count_lines(text);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        fail_msg("the child failed (status 0x%x); its log: %s", ws, text);

    /* The shortage was real, and handled by shedding with the reserve. */
    assert_true(rep.before.accept_failures >= 1);
    assert_true(rep.before.shed >= (uint64_t)RAW / 2);
    assert_int_equal(rep.after.joined, 1);
    /* No busy loop: its own 50 ms waits, the listener's rests, a few wake-ups. */
    if ((double)rep.after.polls > 100.0 + 60.0 * rep.seconds)
        fail_msg("%llu passes through poll in %.1f s: the hub spins",
                 (unsigned long long)rep.after.polls, rep.seconds);
    /* At most a warning a second (the first and last seconds may each hold one). */
    if ((double)lines > 2.0 + rep.seconds)
        fail_msg("%zu log lines in %.1f s: %s", lines, rep.seconds, text);
    assert_true(contains(text, "out of file descriptors"));
    free(text);
}

/* ------------------------------------------------------------------------ */
/* Codec                                                                     */
/* ------------------------------------------------------------------------ */

static const char bytes_field[] = "hello\0world"; /* bytes may hold a NUL */
#define BYTES_LEN (sizeof(bytes_field) - 1)

static void codec_sample(sp__wbuf_t *w)
{
    sp__wbuf_init(w);
    sp__wbuf_put_u8(w, 0xa5);
    sp__wbuf_put_u16(w, 0xbeef);
    sp__wbuf_put_u32(w, 0xdeadbeefu);
    sp__wbuf_put_u64(w, 0x0123456789abcdefull);
    sp__wbuf_put_bytes(w, bytes_field, BYTES_LEN);
    sp__wbuf_put_str(w, "spate");
    sp__wbuf_put_raw(w, "RAW!!", 5);
    sp__wbuf_put_bytes(w, NULL, 0);
    sp__wbuf_put_str(w, "");
    sp__wbuf_put_u32(w, 7);
    assert_int_equal(sp__wbuf_status(w), SP_OK);
}

typedef struct sample {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32, tail;
    uint64_t u64;
    const void *bytes, *empty;
    size_t blen, elen;
    char *str, *estr;
    unsigned char raw[5];
} sample_t;

static bool all_bytes(const void *p, size_t n, unsigned char v)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i] != v)
            return false;
    return true;
}

/*
 * One get: on failure it must have consumed nothing and left its output
 * (filled with 0xee beforehand) alone.
 */
#define GET(field, call)                                                                           \
    do {                                                                                           \
        size_t left_ = sp__rbuf_left(r);                                                           \
        sp_status_t st_ = (call);                                                                  \
        if (st_ != SP_OK) {                                                                        \
            assert_int_equal(sp__rbuf_left(r), left_);                                             \
            assert_true(all_bytes(&s->field, sizeof(s->field), 0xee));                             \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

static sp_status_t read_sample(sp__rbuf_t *r, sample_t *s)
{
    memset(s, 0xee, sizeof(*s));
    GET(u8, sp__rbuf_get_u8(r, "u8", &s->u8));
    GET(u16, sp__rbuf_get_u16(r, "u16", &s->u16));
    GET(u32, sp__rbuf_get_u32(r, "u32", &s->u32));
    GET(u64, sp__rbuf_get_u64(r, "u64", &s->u64));
    GET(bytes, sp__rbuf_get_bytes(r, "bytes", &s->bytes, &s->blen));
    GET(str, sp__rbuf_get_str(r, "str", 0, &s->str));
    GET(raw, sp__rbuf_get_raw(r, "raw", s->raw, sizeof(s->raw)));
    GET(empty, sp__rbuf_get_bytes(r, "empty bytes", &s->empty, &s->elen));
    GET(estr, sp__rbuf_get_str(r, "empty str", 16, &s->estr));
    GET(tail, sp__rbuf_get_u32(r, "tail", &s->tail));
    return SP_OK;
}

static void sample_free(sample_t *s)
{
    unsigned char junk[sizeof(char *)];

    memset(junk, 0xee, sizeof(junk));
    if (memcmp(&s->str, junk, sizeof(junk)) != 0)
        free(s->str);
    if (memcmp(&s->estr, junk, sizeof(junk)) != 0)
        free(s->estr);
}

static void test_rbuf_rejects_every_truncation(void **state)
{
    sp__wbuf_t w;
    sp__rbuf_t rb, *r = &rb;
    sample_t s;
    unsigned char *copy;

    (void)state;
    codec_sample(&w);
    /* Each prefix in an allocation of its own size, so ASan sees any overread. */
    for (size_t cut = 0; cut < w.len; cut++) {
        copy = malloc(cut > 0 ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, w.data, cut);
        sp__rbuf_init(r, cut > 0 ? copy : NULL, cut);
        assert_int_equal(read_sample(r, &s), SP_ERR_BAD_FORMAT);
        assert_true(contains(sp_last_error(), "truncated"));
        sample_free(&s);
        free(copy);
    }

    /* Whole: every field as written, nothing left. */
    sp__rbuf_init(r, w.data, w.len);
    assert_int_equal(read_sample(r, &s), SP_OK);
    assert_int_equal(s.u8, 0xa5);
    assert_int_equal(s.u16, 0xbeef);
    assert_int_equal(s.u32, 0xdeadbeefu);
    assert_true(s.u64 == 0x0123456789abcdefull);
    assert_int_equal(s.blen, BYTES_LEN);
    assert_memory_equal(s.bytes, bytes_field, BYTES_LEN);
    assert_string_equal(s.str, "spate");
    assert_memory_equal(s.raw, "RAW!!", 5);
    assert_non_null(s.empty);
    assert_int_equal(s.elen, 0);
    assert_string_equal(s.estr, "");
    assert_int_equal(s.tail, 7);
    assert_int_equal(sp__rbuf_left(r), 0);
    assert_int_equal(sp__rbuf_done(r, "sample"), SP_OK);
    sample_free(&s);

    /* One trailing byte: every field reads, done refuses. */
    copy = malloc(w.len + 1);
    assert_non_null(copy);
    memcpy(copy, w.data, w.len);
    copy[w.len] = 0;
    sp__rbuf_init(r, copy, w.len + 1);
    assert_int_equal(read_sample(r, &s), SP_OK);
    assert_int_equal(sp__rbuf_left(r), 1);
    assert_int_equal(sp__rbuf_done(r, "sample"), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message sample: too long"));
    assert_true(contains(sp_last_error(), "1 bytes left over"));
    sample_free(&s);
    free(copy);
    sp__wbuf_free(&w);
}

static void test_rbuf_refuses_bad_strings_and_lengths(void **state)
{
    sp__wbuf_t w;
    sp__rbuf_t r;
    char *s = (char *)&r;
    const void *data = NULL;
    size_t len = 0;

    (void)state;
    /* A string holding a NUL. */
    sp__wbuf_init(&w);
    sp__wbuf_put_bytes(&w, bytes_field, BYTES_LEN);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 0, &s), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "NUL"));
    assert_true(s == (char *)&r);
    assert_int_equal(sp__rbuf_left(&r), w.len);

    /* Over its limit, then at its limit. */
    sp__wbuf_reset(&w);
    sp__wbuf_put_str(&w, "spate");
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 4, &s), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message name: too long"));
    assert_int_equal(sp__rbuf_left(&r), w.len);
    assert_int_equal(sp__rbuf_get_str(&r, "name", 5, &s), SP_OK);
    assert_string_equal(s, "spate");
    free(s);

    /* A length that claims more than is there rewinds to the length. */
    sp__wbuf_reset(&w);
    sp__wbuf_put_u32(&w, UINT32_MAX);
    sp__wbuf_put_raw(&w, "abc", 3);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_bytes(&r, "blob", &data, &len), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "control message blob: truncated"));
    assert_int_equal(sp__rbuf_left(&r), 7);
    assert_null(data);
    assert_int_equal(sp__rbuf_get_str(&r, "blob", 0, &s), SP_ERR_BAD_FORMAT);
    assert_int_equal(sp__rbuf_left(&r), 7);

    /* Nothing at all. */
    sp__rbuf_init(&r, NULL, 0);
    assert_int_equal(sp__rbuf_left(&r), 0);
    assert_int_equal(sp__rbuf_done(&r, "empty"), SP_OK);
    assert_int_equal(sp__rbuf_get_raw(&r, "nothing", NULL, 0), SP_OK);
    assert_int_equal(sp__rbuf_get_u8(&r, "u8", (uint8_t *)&len), SP_ERR_BAD_FORMAT);
    sp__wbuf_free(&w);
    sp__wbuf_free(NULL);
}

static void test_wbuf_status_is_sticky(void **state)
{
    static const unsigned char big[300];
    sp__wbuf_t w;
    sp__rbuf_t r;
    uint32_t v = 0;

    (void)state;
    sp__wbuf_init(&w);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__wbuf_put_u32(&w, 1), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(sp__wbuf_put_u8(&w, 1), SP_ERR_NOMEM);
    assert_int_equal(sp__wbuf_put_str(&w, "x"), SP_ERR_NOMEM);
    assert_int_equal(sp__wbuf_status(&w), SP_ERR_NOMEM);
    assert_int_equal(w.len, 0);
    sp__wbuf_reset(&w);
    assert_int_equal(sp__wbuf_status(&w), SP_OK);

    /* A bytes field that cannot grow the buffer leaves no half of itself. */
    assert_int_equal(sp__wbuf_put_raw(&w, big, 250), SP_OK);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_int_equal(sp__wbuf_put_bytes(&w, big, sizeof(big)), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(w.len, 250);
    sp__wbuf_reset(&w);

    /* A length that does not fit a u32 (never read). */
    assert_int_equal(sp__wbuf_put_bytes(&w, big, (size_t)UINT32_MAX + 1), SP_ERR_TOO_LARGE);
    assert_int_equal(sp__wbuf_put_u64(&w, 1), SP_ERR_TOO_LARGE);
    sp__wbuf_reset(&w);

    /* A count patched in at the end. */
    sp__wbuf_put_u32(&w, 0);
    sp__wbuf_put_u8(&w, 9);
    sp__wbuf_patch_u32(&w, 0, 0x01020304u);
    sp__rbuf_init(&r, w.data, w.len);
    assert_int_equal(sp__rbuf_get_u32(&r, "count", &v), SP_OK);
    assert_int_equal(v, 0x01020304u);
    assert_memory_equal(w.data, "\x04\x03\x02\x01\x09", 5);
    sp__wbuf_free(&w);
    assert_null(w.data);
    assert_int_equal(w.len, 0);
}

/* ------------------------------------------------------------------------ */
/* Secrets, addresses, argument checks                                       */
/* ------------------------------------------------------------------------ */

static void test_secret_from_env_rules(void **state)
{
    const char *var = "SPATE_TEST_CTL_SECRET";
    void *secret = NULL;
    size_t len = 0;
    char hex[65], hex2[65];

    (void)state;
    unsetenv(var);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "SPATE_TEST_CTL_SECRET is not set"));
    setenv(var, "", 1);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_NOT_FOUND);
    setenv(var, "0123456789abcde", 1); /* 15 bytes */
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "holds 15 bytes; at least 16"));
    assert_null(secret);
    setenv(var, "0123456789abcdef", 1);
    assert_int_equal(sp__ctl_secret_from_env(var, &secret, &len), SP_OK);
    assert_int_equal(len, 16);
    assert_memory_equal(secret, "0123456789abcdef", 16);
    free(secret);
    unsetenv(var);

    /* NULL reads SPATE_SECRET, byte for byte (no hex decoding). */
    assert_int_equal(sp__ctl_secret_generate(hex), SP_OK);
    assert_int_equal(sp__ctl_secret_generate(hex2), SP_OK);
    assert_int_equal(strlen(hex), 64);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 64);
    assert_string_not_equal(hex, hex2);
    setenv("SPATE_SECRET", hex, 1);
    assert_int_equal(sp__ctl_secret_from_env(NULL, &secret, &len), SP_OK);
    assert_int_equal(len, 64);
    assert_memory_equal(secret, hex, 64);
    free(secret);
    unsetenv("SPATE_SECRET");
    assert_int_equal(sp__ctl_secret_from_env(NULL, &secret, &len), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "SPATE_SECRET is not set"));
}

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
/* Round trips                                                               */
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
/* Malformed frames                                                          */
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
/* Handshake                                                                 */
/* ------------------------------------------------------------------------ */

static void test_wrong_secret_is_refused_on_both_sides(void **state)
{
    sp__ctl_conn_t *conn = (sp__ctl_conn_t *)&conn;
    char addr[128];
    connector_t c;
    int lfd = -1;
    sp_status_t st;

    (void)state;
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &lfd), SP_OK);
    connector_start(&c, addr, WRONG, T);
    st = sp__ctl_accept(lfd, SECRET, SECRET_LEN, T, &conn);
    connector_join(&c);
    assert_int_equal(st, SP_ERR_INVALID_PARAM);
    assert_true(contains(sp_last_error(), "refused: wrong secret"));
    assert_true(contains(sp_last_error(), "127.0.0.1:"));
    assert_true(conn == (sp__ctl_conn_t *)&conn);
    assert_int_equal(c.st, SP_ERR_INVALID_PARAM);
    assert_true(contains(c.err, "driver refused: wrong secret"));
    assert_true(contains(c.err, addr));
    assert_null(c.conn);

    /* A server that does not know the secret: its WELCOME proves nothing. */
    connector_start(&c, addr, SECRET, T);
    {
        unsigned char hello[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE];
        unsigned char auth[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE];
        unsigned char welcome[SP__CTL_HEADER_SIZE + SP__CTL_MAC_SIZE];
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        int fd;

        assert_int_equal(poll(&pfd, 1, T), 1);
        fd = accept(lfd, NULL, NULL);
        assert_true(fd >= 0);
        memset(hello, 7, sizeof(hello));
        sp__ctl_header_pack(hello, SP__CTL_HELLO, SP__CTL_NONCE_SIZE);
        assert_true(write_all(fd, hello, sizeof(hello)));
        assert_int_equal(read_all(fd, auth, sizeof(auth), T), 1);
        assert_int_equal(get32(auth), SP__CTL_MAGIC);
        assert_int_equal(auth[6], SP__CTL_AUTH);
        assert_int_equal(get32(auth + 8), SP__CTL_NONCE_SIZE + SP__CTL_MAC_SIZE);
        memset(welcome, 0, sizeof(welcome));
        sp__ctl_header_pack(welcome, SP__CTL_WELCOME, SP__CTL_MAC_SIZE);
        assert_true(write_all(fd, welcome, sizeof(welcome)));
        connector_join(&c);
        close(fd);
    }
    assert_int_equal(c.st, SP_ERR_INVALID_PARAM);
    assert_true(contains(c.err, "does not prove the secret"));
    close(lfd);
}

static void test_hub_refuses_a_wrong_secret_and_keeps_running(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *client = NULL;
    char addr[128];
    connector_t c;
    int lfd = -1;
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    int waits = 0;

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), T);
    connector_start(&c, addr, WRONG, T);
    while (!atomic_load(&c.done) && waits < 400) {
        sp_status_t st = sp__ctl_hub_wait(hub, 25, &id, &type, &p, &len);

        if (st != SP_ERR_TIMED_OUT)
            fprintf(stderr, "hub_wait: %s\n", sp_last_error());
        assert_int_equal(st, SP_ERR_TIMED_OUT);
        waits++;
    }
    connector_join(&c);
    assert_int_equal(c.st, SP_ERR_INVALID_PARAM);
    assert_true(contains(c.err, "driver refused: wrong secret"));
    assert_int_equal(sp__ctl_hub_count(hub), 0);
    assert_int_equal(sp__ctl_hub_accept(hub, &client), SP_ERR_NOT_FOUND);

    /* The right secret still gets in. */
    client = hub_join(hub, addr, 9, "executor 9");
    send_text(client, 16, "in");
    expect_hub_text(hub, 9, 16, "in");
    send_text(sp__ctl_hub_conn(hub, 9), 17, "welcome");
    expect_text(client, 17, "welcome");
    sp__ctl_close(client);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/* Raw clients that misbehave in the handshake, run on a thread while the hub serves. */
typedef struct bad_clients {
    char addr[128];
    pthread_t thread;
    atomic_bool done;
    int hello[3];     /* 1: each got a well-formed HELLO */
    int eof[3];       /* 1: then the hub closed the connection */
    int refused;      /* refused_client_main: REFUSED "wrong secret", then a close */
    uint64_t idle_ms; /* how long the silent client 0 was kept */
} bad_clients_t;

static bool read_hello(int fd)
{
    unsigned char h[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE];

    return read_all(fd, h, sizeof(h), T) == 1 && get32(h) == SP__CTL_MAGIC &&
           h[4] == SP__CTL_VERSION && h[6] == SP__CTL_HELLO && get32(h + 8) == SP__CTL_NONCE_SIZE;
}

/*
 * Client 0 says nothing, 1 sends garbage, 2 a protocol frame instead of
 * AUTH, 3 goes away at once.
 */
static void *bad_clients_main(void *arg)
{
    bad_clients_t *b = arg;
    unsigned char frame[SP__CTL_HEADER_SIZE + 64], byte[1];
    uint64_t t0 = now_ms();
    int fd[4];

    for (int k = 0; k < 4; k++)
        fd[k] = raw_connect(b->addr);
    if (fd[3] >= 0)
        close(fd[3]);
    for (int k = 0; k < 3; k++)
        b->hello[k] = fd[k] >= 0 && read_hello(fd[k]);
    if (fd[1] >= 0)
        (void)write_all(fd[1], "GET / HTTP/1.0\r\n\r\n", 18);
    sp__ctl_header_pack(frame, 16, 64);
    memset(frame + SP__CTL_HEADER_SIZE, 1, 64);
    if (fd[2] >= 0)
        (void)write_all(fd[2], frame, sizeof(frame));
    for (int k = 1; k < 3; k++)
        b->eof[k] = fd[k] >= 0 && read_all(fd[k], byte, 1, T) == 0;
    b->eof[0] = fd[0] >= 0 && read_all(fd[0], byte, 1, T) == 0;
    b->idle_ms = now_ms() - t0;
    for (int k = 0; k < 3; k++)
        if (fd[k] >= 0)
            close(fd[k]);
    atomic_store(&b->done, true);
    return NULL;
}

static void *refused_client_main(void *arg)
{
    bad_clients_t *b = arg;
    unsigned char frame[SP__CTL_HEADER_SIZE + 64], answer[SP__CTL_HEADER_SIZE + 4 + 12], rest[1];
    int fd = raw_connect(b->addr);

    if (fd >= 0 && read_hello(fd)) {
        sp__ctl_header_pack(frame, SP__CTL_AUTH, 64);
        memset(frame + SP__CTL_HEADER_SIZE, 3, 64);
        b->refused = write_all(fd, frame, sizeof(frame)) &&
                     read_all(fd, answer, sizeof(answer), T) == 1 && answer[6] == SP__CTL_REFUSED &&
                     get32(answer + 8) == 16 && get32(answer + SP__CTL_HEADER_SIZE) == 12 &&
                     memcmp(answer + SP__CTL_HEADER_SIZE + 4, "wrong secret", 12) == 0 &&
                     read_all(fd, rest, 1, T) == 0;
    }
    if (fd >= 0)
        close(fd);
    atomic_store(&b->done, true);
    return NULL;
}

/* Serves hub until the clients' thread is done; nothing may reach the caller. */
static void serve_until_done(sp__ctl_hub_t *hub, bad_clients_t *b)
{
    uint64_t t0 = now_ms();

    while (!atomic_load(&b->done) && now_ms() - t0 < 3 * T) {
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st = sp__ctl_hub_wait(hub, 20, &id, &type, &p, &len);

        if (st != SP_ERR_TIMED_OUT)
            fprintf(stderr, "hub_wait: %s\n", sp_last_error());
        assert_int_equal(st, SP_ERR_TIMED_OUT);
    }
    assert_int_equal(pthread_join(b->thread, NULL), 0);
}

static void test_hub_drops_clients_that_fail_the_handshake(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *client = NULL;
    sp__ctl_hub_stats_t hs;
    bad_clients_t b;
    char addr[128];
    int lfd = -1;

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), 300);
    memset(&b, 0, sizeof(b));
    snprintf(b.addr, sizeof(b.addr), "%s", addr);
    atomic_init(&b.done, false);
    assert_int_equal(pthread_create(&b.thread, NULL, bad_clients_main, &b), 0);
    serve_until_done(hub, &b);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(b.hello[k], 1);
        assert_int_equal(b.eof[k], 1);
    }
    /*
     * The silent one was dropped at the handshake deadline (the hub counts
     * it), not before: it connected before the hub accepted it, so the
     * deadline, 300 ms after the accept, is a lower bound; no upper one.
     */
    sp__ctl_hub_stats(hub, &hs);
    assert_true(hs.timed_out >= 1);
    assert_true(b.idle_ms >= 250);

    memset(&b, 0, sizeof(b));
    snprintf(b.addr, sizeof(b.addr), "%s", addr);
    atomic_init(&b.done, false);
    assert_int_equal(pthread_create(&b.thread, NULL, refused_client_main, &b), 0);
    serve_until_done(hub, &b);
    assert_int_equal(b.refused, 1);

    assert_int_equal(sp__ctl_hub_count(hub), 0);
    client = hub_join(hub, addr, 3, "executor 3");
    send_text(client, 20, "after all that");
    expect_hub_text(hub, 3, 20, "after all that");
    sp__ctl_close(client);

    /* Without a listener nobody joins; the hub's conns go on. */
    assert_int_equal(sp__ctl_hub_set_listener(hub, -1, NULL, 0, 0), SP_OK);
    assert_int_equal(sp__ctl_hub_count(hub), 1);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/*
 * Before authentication only the fixed-size AUTH frame is read: a client
 * that announces a 256 MiB AUTH (and streams junk after it) is refused at
 * the header and closed at once, and nothing is allocated for it (the
 * allocation fault hook, armed for the next allocation, never fires).
 */
typedef struct huge_auth {
    char addr[128];
    pthread_t thread;
    atomic_int stage; /* 1: HELLO read; 2: may send; 3: done */
    int hello, eof;
} huge_auth_t;

static void *huge_auth_main(void *arg)
{
    huge_auth_t *h = arg;
    unsigned char header[SP__CTL_HEADER_SIZE], *junk = calloc(1, 1u << 16), byte[1];
    int fd = raw_connect(h->addr);

    h->hello = fd >= 0 && read_hello(fd);
    atomic_store(&h->stage, 1);
    while (atomic_load(&h->stage) < 2)
        usleep(1000);
    sp__ctl_header_pack(header, SP__CTL_AUTH, SP__CTL_MAX_PAYLOAD);
    if (fd >= 0 && junk != NULL && write_all(fd, header, sizeof(header))) {
        /* Junk behind it, as long as the server takes it (it stops at a close). */
        for (int i = 0; i < 64 && send(fd, junk, 1u << 16, MSG_NOSIGNAL | MSG_DONTWAIT) > 0; i++)
            ;
        h->eof = read_all(fd, byte, 1, T) == 0;
    }
    if (fd >= 0)
        close(fd);
    free(junk);
    atomic_store(&h->stage, 3);
    return NULL;
}

static void test_hub_reads_only_the_auth_frame_before_authentication(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_hub_stats_t hs;
    sp__ctl_conn_t *client = NULL;
    huge_auth_t h;
    char addr[128];
    uint64_t fired, t0 = now_ms();
    int lfd = -1;

    (void)state;
    /* A handshake deadline far beyond the test's waits: only the refusal can close it. */
    hub_listen(&hub, &lfd, addr, sizeof(addr), 6 * T);
    memset(&h, 0, sizeof(h));
    snprintf(h.addr, sizeof(h.addr), "%s", addr);
    atomic_init(&h.stage, 0);
    assert_int_equal(pthread_create(&h.thread, NULL, huge_auth_main, &h), 0);
    while (atomic_load(&h.stage) < 1 && now_ms() - t0 < (uint64_t)T)
        hub_serve_quietly(hub, 10);
    assert_int_equal(atomic_load(&h.stage), 1);
    /* Two more passes: the hub's arrays have their size for this client. */
    hub_serve_quietly(hub, 0);
    hub_serve_quietly(hub, 0);
    fired = sp__fault_fired(SP_FAULT_ALLOC);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    atomic_store(&h.stage, 2);
    while (atomic_load(&h.stage) < 3 && now_ms() - t0 < (uint64_t)(3 * T))
        hub_serve_quietly(hub, 10);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_int_equal(pthread_join(h.thread, NULL), 0);
    assert_int_equal(h.hello, 1);
    assert_int_equal(h.eof, 1);
    assert_int_equal(sp__fault_fired(SP_FAULT_ALLOC), fired);
    sp__ctl_hub_stats(hub, &hs);
    assert_int_equal(hs.malformed, 1);
    assert_int_equal(hs.joining, 0);

    /* The same refusal, word for word, from sp__ctl_accept. */
    {
        unsigned char header[SP__CTL_HEADER_SIZE];
        sp__ctl_conn_t *conn = NULL;
        int fd = raw_connect(addr);

        assert_true(fd >= 0);
        sp__ctl_header_pack(header, SP__CTL_AUTH, 200u << 20);
        assert_true(write_all(fd, header, sizeof(header)));
        assert_int_equal(sp__ctl_accept(lfd, SECRET, SECRET_LEN, T, &conn), SP_ERR_BAD_FORMAT);
        assert_true(contains(sp_last_error(), "announcing 209715200 payload bytes before "
                                              "authentication"));
        close(fd);
    }

    /* An honest client still joins. */
    client = hub_join(hub, addr, 7, "executor 7");
    send_text(client, 20, "honest");
    expect_hub_text(hub, 7, 20, "honest");
    sp__ctl_close(client);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/* A "driver" that answers the handshake with a 256 MiB frame is refused at its header. */
typedef struct huge_hello {
    int lfd, eof;
    pthread_t thread;
} huge_hello_t;

static void *huge_hello_main(void *arg)
{
    huge_hello_t *h = arg;
    struct pollfd pfd = {.fd = h->lfd, .events = POLLIN};
    unsigned char header[SP__CTL_HEADER_SIZE], byte[1];
    int fd;

    if (poll(&pfd, 1, T) != 1 || (fd = accept(h->lfd, NULL, NULL)) < 0)
        return NULL;
    sp__ctl_header_pack(header, SP__CTL_HELLO, SP__CTL_MAX_PAYLOAD);
    if (write_all(fd, header, sizeof(header)))
        h->eof = read_all(fd, byte, 1, T) == 0;
    close(fd);
    return NULL;
}

static void test_client_reads_only_small_frames_before_the_driver_proves_the_secret(void **state)
{
    sp__ctl_conn_t *c = NULL;
    huge_hello_t h = {.lfd = -1};
    char addr[128];

    (void)state;
    assert_int_equal(sp__ctl_listen("127.0.0.1:0", addr, sizeof(addr), &h.lfd), SP_OK);
    assert_int_equal(pthread_create(&h.thread, NULL, huge_hello_main, &h), 0);
    assert_int_equal(sp__ctl_connect(addr, SECRET, SECRET_LEN, T, &c), SP_ERR_BAD_FORMAT);
    assert_true(contains(sp_last_error(), "announcing 268435456 payload bytes before the peer "
                                          "proved the secret"));
    assert_int_equal(pthread_join(h.thread, NULL), 0);
    assert_int_equal(h.eof, 1);
    close(h.lfd);
}

/* A raw connection that has read its HELLO and says nothing. */
static int silent_client(const char *addr)
{
    int fd = raw_connect(addr);

    assert_true(fd >= 0);
    return fd;
}

/*
 * At most SP__CTL_HUB_MAX_JOINING connections are in the handshake at once:
 * three times as many silent clients never hold more slots than that, the
 * oldest give their slots up to newcomers (they see HELLO, then a close)
 * long before their own deadline, and an honest client that comes after
 * them all still joins.
 */
static void test_hub_caps_handshakes_and_lets_an_honest_client_in(void **state)
{
    enum { SILENT = 3 * SP__CTL_HUB_MAX_JOINING };
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *client = NULL;
    sp__ctl_hub_stats_t hs;
    int fd[SILENT], lfd = -1;
    char addr[128];
    unsigned closed = 0;
    uint64_t t0 = now_ms();

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), 6 * T);
    for (int k = 0; k < SILENT; k++)
        fd[k] = silent_client(addr);
    while (closed < SILENT - SP__CTL_HUB_MAX_JOINING) {
        if (now_ms() - t0 > (uint64_t)(3 * T))
            fail_msg("only %u of %d silent clients were dropped to make room", closed, SILENT);
        hub_serve_quietly(hub, 20);
        sp__ctl_hub_stats(hub, &hs);
        assert_true(hs.joining <= SP__CTL_HUB_MAX_JOINING);
        closed = 0;
        for (int k = 0; k < SILENT; k++)
            closed += raw_closed(fd[k]);
    }
    sp__ctl_hub_stats(hub, &hs);
    assert_true(hs.evicted >= SILENT - SP__CTL_HUB_MAX_JOINING);
    assert_int_equal(hs.timed_out, 0);

    /* Every slot still holds a silent client: an honest one takes the oldest's. */
    client = hub_join(hub, addr, 5, "executor 5");
    send_text(client, 21, "in at last");
    expect_hub_text(hub, 5, 21, "in at last");
    sp__ctl_hub_stats(hub, &hs);
    assert_int_equal(hs.joined, 1);
    assert_true(hs.joining <= SP__CTL_HUB_MAX_JOINING);
    for (int k = 0; k < SILENT; k++)
        close(fd[k]);
    sp__ctl_close(client);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/* A silent client is dropped at its handshake deadline; an honest one joins meanwhile. */
static void test_hub_drops_a_silent_client_at_its_deadline(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *client = NULL;
    sp__ctl_hub_stats_t hs;
    char addr[128];
    int lfd = -1, fd;
    uint64_t t0;

    (void)state;
    hub_listen(&hub, &lfd, addr, sizeof(addr), 1000);
    fd = silent_client(addr);
    t0 = now_ms();
    client = hub_join(hub, addr, 2, "executor 2");
    send_text(client, 22, "meanwhile");
    expect_hub_text(hub, 2, 22, "meanwhile");
    while (!raw_closed(fd)) {
        if (now_ms() - t0 > (uint64_t)(3 * T))
            fail_msg("the silent client was not dropped within %d ms of a 1000 ms deadline", 3 * T);
        hub_serve_quietly(hub, 20);
    }
    sp__ctl_hub_stats(hub, &hs);
    assert_true(hs.timed_out >= 1);
    assert_true(hs.joined >= 1);
    assert_int_equal(hs.evicted, 0);
    close(fd);
    sp__ctl_close(client);
    sp__ctl_hub_destroy(hub);
    close(lfd);
}

/* ------------------------------------------------------------------------ */
/* Timeouts and lost peers                                                   */
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

static void test_hub_reports_closed_peers_with_their_id(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *a3 = NULL, *b3 = NULL, *a4 = NULL, *b4 = NULL;
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    assert_int_equal(sp__ctl_pair(NULL, 0, &a3, &b3), SP_OK);
    assert_int_equal(sp__ctl_pair(NULL, 0, &a4, &b4), SP_OK);
    sp__ctl_set_peer_name(a3, "executor 3");
    sp__ctl_set_peer_name(a4, "executor 4");
    assert_int_equal(sp__ctl_hub_add(hub, a3, 3), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a4, 4), SP_OK);
    assert_int_equal(sp__ctl_hub_count(hub), 2);

    send_text(b4, 16, "first");
    send_text(b4, 16, "last words");
    sp__ctl_close(b4);
    expect_hub_text(hub, 4, 16, "first");
    expect_hub_text(hub, 4, 16, "last words");
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_ERR_PEER_LOST);
    assert_int_equal(id, 4);
    assert_true(contains(sp_last_error(), "executor 4"));
    assert_int_equal(sp__ctl_hub_count(hub), 1);
    assert_null(sp__ctl_hub_conn(hub, 4));
    assert_int_equal(sp__ctl_hub_remove(hub, 4), SP_ERR_NOT_FOUND);

    send_text(b3, 16, "alive");
    expect_hub_text(hub, 3, 16, "alive");
    send_text(sp__ctl_hub_conn(hub, 3), 19, "good");
    expect_text(b3, 19, "good");
    sp__ctl_close(b3);
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_ERR_PEER_LOST);
    assert_int_equal(id, 3);
    assert_int_equal(sp__ctl_hub_count(hub), 0);
    assert_int_equal(sp__ctl_hub_wait(hub, 20, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    sp__ctl_hub_destroy(hub);
}

/*
 * A peer that resets the connection is reported as a reset, and a later
 * sp__ctl_hub_remove of its id says what happened to that peer rather than
 * that the id is missing.
 */
static void test_hub_names_what_happened_to_a_lost_peer(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *server = NULL, *client = NULL, *a = NULL, *b = NULL;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    uint32_t id = 0;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    tcp_pair(&server, &client);
    sp__ctl_set_peer_name(server, "executor 9");
    assert_int_equal(sp__ctl_hub_add(hub, server, 9), SP_OK);
    /* An abortive close (SO_LINGER 0) sends a reset. */
    assert_int_equal(setsockopt(sp__ctl_fd(client), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    sp__ctl_close(client);
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_ERR_PEER_LOST);
    assert_int_equal(id, 9);
    assert_true(contains(sp_last_error(), "executor 9 reset the control connection"));
    assert_int_equal(sp__ctl_hub_remove(hub, 9), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "executor 9 reset the control connection"));
    assert_null(strstr(sp_last_error(), "no conn"));

    /* A close between frames, then an id that was never there. */
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    sp__ctl_set_peer_name(a, "executor 0");
    assert_int_equal(sp__ctl_hub_add(hub, a, 0), SP_OK);
    sp__ctl_close(b);
    assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_ERR_PEER_LOST);
    assert_int_equal(id, 0);
    assert_int_equal(sp__ctl_hub_remove(hub, 0), SP_ERR_NOT_FOUND);
    assert_string_equal(sp_last_error(), "executor 0 closed the control connection");
    assert_int_equal(sp__ctl_hub_remove(hub, 77), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "id 77 names no conn"));

    /* An id added again is a new conn: its old fate is forgotten. */
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a, 0), SP_OK);
    assert_int_equal(sp__ctl_hub_remove(hub, 0), SP_OK);
    assert_int_equal(sp__ctl_hub_remove(hub, 0), SP_ERR_NOT_FOUND);
    assert_true(contains(sp_last_error(), "id 0 names no conn"));
    sp__ctl_close(b);
    sp__ctl_hub_destroy(hub);
}

static void test_hub_add_and_remove(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;

    (void)state;
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    assert_int_equal(sp__ctl_pair(NULL, 0, &c, &d), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a, 5), SP_OK);
    assert_true(sp__ctl_hub_conn(hub, 5) == a);
    /* A second conn under id 5 is refused and closed: its peer sees that. */
    assert_int_equal(sp__ctl_hub_add(hub, c, 5), SP_ERR_EXISTS);
    assert_true(contains(sp_last_error(), "id 5 is in use"));
    assert_int_equal(sp__ctl_recv(d, T, &type, &p, &len), SP_ERR_PEER_LOST);
    sp__ctl_close(d);
    assert_int_equal(sp__ctl_pair(NULL, 0, &c, &d), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, c, SP__CTL_HUB_NEW), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__ctl_recv(d, T, &type, &p, &len), SP_ERR_PEER_LOST);
    sp__ctl_close(d);
    assert_int_equal(sp__ctl_hub_count(hub), 1);
    assert_int_equal(sp__ctl_hub_remove(hub, 6), SP_ERR_NOT_FOUND);
    assert_int_equal(sp__ctl_hub_accept(hub, &c), SP_ERR_NOT_FOUND);
    assert_int_equal(sp__ctl_hub_remove(hub, 5), SP_OK);
    assert_int_equal(sp__ctl_hub_count(hub), 0);
    assert_null(sp__ctl_hub_conn(hub, 5));
    assert_int_equal(sp__ctl_recv(b, T, &type, &p, &len), SP_ERR_PEER_LOST);
    sp__ctl_close(b);
    /* Destroy closes what the hub still holds. */
    assert_int_equal(sp__ctl_pair(NULL, 0, &a, &b), SP_OK);
    assert_int_equal(sp__ctl_hub_add(hub, a, 0), SP_OK);
    sp__ctl_hub_destroy(hub);
    assert_int_equal(sp__ctl_recv(b, T, &type, &p, &len), SP_ERR_PEER_LOST);
    sp__ctl_close(b);
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

/* ------------------------------------------------------------------------ */
/* Fairness and allocation failures                                          */
/* ------------------------------------------------------------------------ */

#define FAIR 8

/*
 * The model: entries in the order they were added; the next one served is
 * the first with something pending, scanning from start, the entry after
 * the last one served.
 */
typedef struct fair_model {
    int order[FAIR + 1]; /* conn indices, as the hub holds them */
    int n;
    int start; /* conn index the next scan begins at; -1 at first */
    unsigned pending[FAIR + 1];
} fair_model_t;

static int model_pos(const fair_model_t *m, int conn)
{
    for (int i = 0; i < m->n; i++)
        if (m->order[i] == conn)
            return i;
    return -1;
}

static int model_next(fair_model_t *m)
{
    int from = m->start < 0 ? 0 : model_pos(m, m->start);

    for (int k = 0; k < m->n; k++) {
        int pos = (from + k) % m->n, conn = m->order[pos];

        if (m->pending[conn] > 0) {
            m->pending[conn]--;
            m->start = m->order[(pos + 1) % m->n];
            return conn;
        }
    }
    return -1;
}

static void model_remove(fair_model_t *m, int conn)
{
    int pos = model_pos(m, conn);

    if (m->start == conn)
        m->start = m->n > 1 ? m->order[(pos + 1) % m->n] : -1;
    memmove(&m->order[pos], &m->order[pos + 1], (size_t)(m->n - pos - 1) * sizeof(int));
    m->n--;
    m->pending[conn] = 0;
}

static void test_hub_round_robin_against_a_model(void **state)
{
    sp__ctl_hub_t *hub = NULL;
    sp__ctl_conn_t *a[FAIR + 1], *b[FAIR + 1];
    uint32_t ids[FAIR + 1], next_seq[FAIR + 1] = {0};
    fair_model_t m = {.start = -1};
    size_t events = 0;
    int conn;

    (void)state;
    assert_int_equal(sp__ctl_hub_create(&hub), SP_OK);
    for (int i = 0; i <= FAIR; i++) {
        unsigned count = i == 0 ? 120 : i == FAIR ? 15 : 20 + (unsigned)i;

        assert_int_equal(sp__ctl_pair(NULL, 0, &a[i], &b[i]), SP_OK);
        ids[i] = 1000 - (uint32_t)i * 7;
        /*
         * Everything is queued before the hub looks, so all conns are busy at
         * once (few enough small frames for a socketpair's buffer).
         */
        for (unsigned s = 0; s < count; s++) {
            unsigned char msg[40] = {0};

            le32(msg, (uint32_t)i);
            le32(msg + 4, s);
            assert_int_equal(sp__ctl_send(b[i], 16, msg, sizeof(msg)), SP_OK);
        }
        m.pending[i] = count;
        if (i < FAIR) {
            assert_int_equal(sp__ctl_hub_add(hub, a[i], ids[i]), SP_OK);
            m.order[m.n++] = i;
        }
    }
    while ((conn = model_next(&m)) >= 0) {
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;

        assert_int_equal(sp__ctl_hub_wait(hub, T, &id, &type, &p, &len), SP_OK);
        if (id != ids[conn])
            fprintf(stderr, "event %zu: the hub served id %u, the model conn %d (id %u)\n", events,
                    id, conn, ids[conn]);
        assert_int_equal(id, ids[conn]);
        assert_int_equal(len, 40);
        assert_int_equal(get32(p), (uint32_t)conn);
        assert_int_equal(get32((unsigned char *)p + 4), next_seq[conn]);
        next_seq[conn]++;
        free(p);
        events++;
        /* Midway through a round: one conn leaves, later a new one joins. */
        if (events == 8 * 5 + 5) {
            assert_int_equal(sp__ctl_hub_remove(hub, ids[2]), SP_OK);
            model_remove(&m, 2);
        }
        if (events == 8 * 5 + 5 + 1) {
            assert_int_equal(sp__ctl_hub_remove(hub, ids[6]), SP_OK);
            model_remove(&m, 6);
        }
        if (events == 100) {
            assert_int_equal(sp__ctl_hub_add(hub, a[FAIR], ids[FAIR]), SP_OK);
            m.order[m.n++] = FAIR;
        }
    }
    /* Every conn still held gave all it sent; the two removed stopped where they left. */
    for (int i = 0; i <= FAIR; i++)
        if (i != 2 && i != 6)
            assert_int_equal(next_seq[i], i == 0 ? 120 : i == FAIR ? 15 : 20 + (unsigned)i);
    assert_int_equal(next_seq[2], 6);
    assert_int_equal(next_seq[6], 5);
    {
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;

        assert_int_equal(sp__ctl_hub_wait(hub, 0, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
    }
    sp__ctl_hub_destroy(hub);
    for (int i = 0; i <= FAIR; i++)
        sp__ctl_close(b[i]);
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
        /* First: it forks, and no thread may exist yet. */
        cmocka_unit_test_teardown(test_hub_killed_child_is_reported_with_its_id, kill_child),
        cmocka_unit_test_teardown(test_hub_out_of_descriptors_sheds_without_spinning, kill_child),
        cmocka_unit_test(test_rbuf_rejects_every_truncation),
        cmocka_unit_test(test_rbuf_refuses_bad_strings_and_lengths),
        cmocka_unit_test(test_wbuf_status_is_sticky),
        cmocka_unit_test(test_secret_from_env_rules),
        cmocka_unit_test(test_listen_and_argument_checks),
        cmocka_unit_test(test_roundtrip_socketpair),
        cmocka_unit_test(test_roundtrip_tcp),
        cmocka_unit_test(test_concurrent_senders_deliver_whole_frames),
        cmocka_unit_test(test_recv_assembles_partial_frames),
        cmocka_unit_test(test_malformed_frames_on_a_socket),
        cmocka_unit_test(test_malformed_frames_after_the_handshake),
        cmocka_unit_test(test_malformed_frames_through_the_hub),
        cmocka_unit_test(test_wrong_secret_is_refused_on_both_sides),
        cmocka_unit_test(test_hub_refuses_a_wrong_secret_and_keeps_running),
        cmocka_unit_test(test_hub_drops_clients_that_fail_the_handshake),
        cmocka_unit_test(test_hub_reads_only_the_auth_frame_before_authentication),
        cmocka_unit_test(test_client_reads_only_small_frames_before_the_driver_proves_the_secret),
        cmocka_unit_test(test_hub_caps_handshakes_and_lets_an_honest_client_in),
        cmocka_unit_test(test_hub_drops_a_silent_client_at_its_deadline),
        cmocka_unit_test(test_timeouts_expire_not_before_their_time),
        cmocka_unit_test(test_peer_close_is_peer_lost),
        cmocka_unit_test(test_hub_reports_closed_peers_with_their_id),
        cmocka_unit_test(test_hub_names_what_happened_to_a_lost_peer),
        cmocka_unit_test(test_hub_add_and_remove),
        cmocka_unit_test(test_send_timeout_abandons_the_conn),
        cmocka_unit_test(test_hub_round_robin_against_a_model),
        cmocka_unit_test(test_nomem_keeps_the_frame),
    };

    sp_log_set_level(SP_LOG_ERROR);
    /* CTL_TEST_FILTER=test_hub_* runs only the tests whose names match. */
    if (getenv("CTL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("CTL_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
