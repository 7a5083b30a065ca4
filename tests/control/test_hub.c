/*
 * The driver's hub (control/hub.c over control/hub_poll.c): peers that
 * close, or forked children that are SIGKILLed (between frames or in the
 * middle of one), are reported with their id and their name; a peer that
 * resets the connection is reported as a reset, and removing a dropped id
 * again repeats what happened to its peer; ids in use and the reserved id
 * are refused, and destroy closes what the hub still holds; round robin
 * over 8 conns against a model, with a conn removed and one added midway.
 *
 * Joining through the listener: a wrong secret is refused and the hub keeps
 * running; clients that stall or send garbage are dropped; a client
 * announcing a 256 MiB AUTH (then streaming junk) is refused at the header
 * and closed, with the allocation fault hook armed and never firing
 * (nothing allocated for it), and sp__ctl_accept refuses the same header
 * with the same words; three times SP__CTL_HUB_MAX_JOINING silent clients
 * never hold more slots than that, the oldest make room for newcomers, and
 * an honest client arriving after them joins; a silent client is dropped at
 * its deadline while an honest one joins. Out of descriptors (a forked child
 * with RLIMIT_NOFILE filled) the hub sheds connections through its reserve
 * descriptor without spinning (passes through poll counted) or flooding the
 * log (lines counted), and accepts an honest client once descriptors are
 * free.
 *
 * The fork tests run first, before any test starts a thread. What the hub
 * does with malformed frames, timeouts and a payload it cannot allocate is
 * tested in test_frame.c, beside the same cases on a single conn.
 */
/* LABELS: unit */
#include "ctl_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

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
/* A peer that dies (fork first, before any thread exists)                  */
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
/* Joining: the handshake through the listener                              */
/* ------------------------------------------------------------------------ */

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
/* Lost peers and membership                                                */
/* ------------------------------------------------------------------------ */

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

/* ------------------------------------------------------------------------ */
/* Fairness                                                                 */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: they fork, and no thread may exist yet. */
        cmocka_unit_test_teardown(test_hub_killed_child_is_reported_with_its_id, kill_child),
        cmocka_unit_test_teardown(test_hub_out_of_descriptors_sheds_without_spinning, kill_child),
        cmocka_unit_test(test_hub_refuses_a_wrong_secret_and_keeps_running),
        cmocka_unit_test(test_hub_drops_clients_that_fail_the_handshake),
        cmocka_unit_test(test_hub_reads_only_the_auth_frame_before_authentication),
        cmocka_unit_test(test_hub_caps_handshakes_and_lets_an_honest_client_in),
        cmocka_unit_test(test_hub_drops_a_silent_client_at_its_deadline),
        cmocka_unit_test(test_hub_reports_closed_peers_with_their_id),
        cmocka_unit_test(test_hub_names_what_happened_to_a_lost_peer),
        cmocka_unit_test(test_hub_add_and_remove),
        cmocka_unit_test(test_hub_round_robin_against_a_model),
    };

    ctl_test_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
