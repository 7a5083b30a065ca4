/*
 * `spate run shuffle --size 16m --executors 2` on a fixed control port
 * (driver.address=127.0.0.1:PORT, a port found free) while a hostile client
 * that does not know the secret works on that port from a thread of this
 * test:
 * - it announces a 256 MiB AUTH payload and streams junk behind it, again
 *   and again while the job runs: the driver refuses each at the header
 *   (its log names the oversized frame) and its peak RSS (VmHWM of the
 *   driver's process, sampled until it exits) stays far below what reading
 *   the junk would cost;
 * - it opens 200 connections and says nothing, with spate under
 *   RLIMIT_NOFILE 64 (set in the forked child before exec): the driver runs
 *   at most a few handshakes at once, the executors still join, and the
 *   job's own files are written.
 * Each run must exit 0 with a whole output directory (part files and
 * _SUCCESS, no _temporary), a report that says it succeeded cleanly, a
 * stderr of a few lines (warnings about strangers are written at most once
 * a second), and no process left in its process group.
 *
 * LABELS: fault
 */
#include "run_test_util.h"

#include "control/ctl.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* Idle connections of the second case. */
#define IDLE 200
/* The descriptor limit spate runs under in the second case. */
#define NOFILE 64
/* Junk a hostile client streams behind one oversized AUTH header, at most. */
#define JUNK (200u << 20)

static char base[256];
static char local_conf[512]; /* shuffle.local_dirs=BASE/local */

static int setup(void **state)
{
    char local[300];

    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "run-hostile");
    rt_path(local, sizeof(local), base, "local");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local);
    return mkdir(local, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* A TCP port on 127.0.0.1 that nobody listens on now. */
static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* ------------------------------------------------------------------------ */
/* The hostile client                                                        */
/* ------------------------------------------------------------------------ */

typedef enum hostile_mode {
    HUGE_AUTH,
    IDLE_CONNECTIONS,
} hostile_mode_t;

typedef struct hostile {
    hostile_mode_t mode;
    int port;
    pthread_t thread;
    atomic_bool stop;
    /* Results, read after the join. */
    unsigned attacks;  /* HUGE_AUTH: oversized headers sent */
    unsigned read_all; /* HUGE_AUTH: of those, whose JUNK bytes all went in */
    unsigned opened;   /* IDLE_CONNECTIONS: connections established */
} hostile_t;

/* A blocking connection to 127.0.0.1:port with 1 s send and receive timeouts, or -1. */
static int hostile_connect(int port)
{
    struct sockaddr_in sa;
    struct timeval tv = {.tv_sec = 1};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* One attack: HELLO read, a 256 MiB AUTH announced, junk behind it until the driver closes. */
static void hostile_huge_auth(hostile_t *h, int fd)
{
    static unsigned char junk[1u << 16];
    unsigned char hello[SP__CTL_HEADER_SIZE + SP__CTL_NONCE_SIZE], header[SP__CTL_HEADER_SIZE];
    size_t sent = 0;

    memset(junk, 0x5a, sizeof(junk));
    if (recv(fd, hello, sizeof(hello), MSG_WAITALL) != (ssize_t)sizeof(hello))
        return;
    sp__ctl_header_pack(header, SP__CTL_AUTH, SP__CTL_MAX_PAYLOAD);
    if (send(fd, header, sizeof(header), MSG_NOSIGNAL) != (ssize_t)sizeof(header))
        return;
    h->attacks++;
    while (sent < JUNK && !atomic_load(&h->stop)) {
        ssize_t n = send(fd, junk, sizeof(junk), MSG_NOSIGNAL);

        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    h->read_all += sent >= JUNK;
}

static void *hostile_main(void *arg)
{
    hostile_t *h = arg;
    int idle[IDLE];

    while (!atomic_load(&h->stop)) {
        int fd = hostile_connect(h->port);

        if (fd < 0) {
            usleep(2000); /* the driver is not listening yet */
            continue;
        }
        if (h->mode == HUGE_AUTH) {
            hostile_huge_auth(h, fd);
            close(fd);
            usleep(20000);
            continue;
        }
        /* Idle connections: as many as fast as they come, held until the job is over. */
        idle[h->opened++] = fd;
        while (h->opened < IDLE && (fd = hostile_connect(h->port)) >= 0)
            idle[h->opened++] = fd;
        while (!atomic_load(&h->stop))
            usleep(10000);
    }
    for (unsigned k = 0; k < h->opened; k++)
        close(idle[k]);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Running spate                                                             */
/* ------------------------------------------------------------------------ */

/* The driver's peak resident set (VmHWM) in KiB, or -1 when it cannot be read. */
static long vm_hwm_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/*
 * Runs $SPATE_CLI with args (NULL-terminated) like rt_cli, but with
 * RLIMIT_NOFILE lowered to nofile (0: as it is) in the child before exec,
 * and *hwm_kib_p the largest VmHWM of the process seen while it ran.
 */
/* rt_bg_wait's each: the largest VmHWM seen so far in *(long *)arg. */
static void note_hwm(pid_t pid, void *arg)
{
    long kib = vm_hwm_kib(pid), *hwm_kib_p = arg;

    if (kib > *hwm_kib_p)
        *hwm_kib_p = kib;
}

static rt_run_t spawn_spate(const char *const *args, rlim_t nofile, long *hwm_kib_p)
{
    const char *argv[RT_ARGV_MAX];
    rt_bg_t bg;
    rt_run_t run;

    rt_cli_argv(args, argv);
    *hwm_kib_p = -1;
    rt_bg_start(&bg, argv, &(rt_bg_opts_t){.nofile = (unsigned long)nofile});
    run = rt_bg_wait(&bg, RT_TIMEOUT_S, note_hwm, hwm_kib_p);
    /* Every executor it started must be gone with it. */
    if (kill(-bg.pid, 0) == 0) {
        kill(-bg.pid, SIGKILL);
        fail_msg("spate left processes behind in its process group");
    }
    rt_bg_collect(&bg, &run);
    if (run.timed_out)
        fail_msg("spate did not end within %u s; stderr: %s", RT_TIMEOUT_S, rt_tail(run.err));
    return run;
}

static size_t count_lines(const char *text)
{
    size_t n = 0;

    for (; *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

/* The shuffle job while h works on its port; returns the run, *hwm_kib_p the driver's VmHWM. */
static rt_run_t run_under_attack(hostile_t *h, const char *name, rlim_t nofile, long *hwm_kib_p)
{
    char out[300], json[320], address[64];
    rt_run_t run;
    json_t *rep;

    rt_path(out, sizeof(out), base, name);
    snprintf(json, sizeof(json), "%s.json", out);
    h->port = free_port();
    snprintf(address, sizeof(address), "driver.address=127.0.0.1:%d", h->port);
    atomic_init(&h->stop, false);
    assert_int_equal(pthread_create(&h->thread, NULL, hostile_main, h), 0);
    run =
        spawn_spate((const char *const[]){"run", "shuffle", "--size", "16m", "--executors", "2",
                                          "--conf", address, "--conf", local_conf, "--output", out,
                                          "--json", json, "--no-progress", "--no-baseline", NULL},
                    nofile, hwm_kib_p);
    atomic_store(&h->stop, true);
    assert_int_equal(pthread_join(h->thread, NULL), 0);
    rt_expect_ok(&run, name);
    rt_expect_output(out, 0);
    rep = rt_json_load(json);
    rt_expect_report(rep, 2, true);
    json_decref(rep);
    /* A bounded log: a few lines of its own, and a warning a second at most about strangers. */
    if ((double)count_lines(run.err) > 4.0 + run.seconds)
        fail_msg("%s: %zu lines on stderr in %.1f s: %s", name, count_lines(run.err), run.seconds,
                 rt_tail(run.err));
    rt_rmtree(out);
    return run;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_run_refuses_an_oversized_auth_without_reading_it(void **state)
{
    hostile_t h = {.mode = HUGE_AUTH};
    long hwm_kib = -1;
    rt_run_t run;

    (void)state;
    run = run_under_attack(&h, "huge-auth", 0, &hwm_kib);
    if (h.attacks == 0)
        fail_msg("the job ended before the hostile client got in (%.1f s)", run.seconds);
    /* Each attack is refused at its header, long before 200 MB of junk are in. */
    assert_int_equal(h.read_all, 0);
    if (strstr(run.err, "refused a frame of type 2 announcing 268435456 payload bytes before "
                        "authentication") == NULL)
        fail_msg("the driver's log does not name the oversized AUTH: %s", rt_tail(run.err));
    /* The driver of a 16 MiB job stays small; reading one attack's junk would cost 200 MB. */
    assert_true(hwm_kib > 0);
    if (hwm_kib > 100 * 1024)
        fail_msg("the driver's peak RSS was %ld KiB under %u attacks", hwm_kib, h.attacks);
    print_message("%u oversized AUTHs refused in %.1f s; the driver's peak RSS %ld KiB\n",
                  h.attacks, run.seconds, hwm_kib);
    rt_free(&run);
}

static void test_run_survives_idle_connections_under_a_low_fd_limit(void **state)
{
    hostile_t h = {.mode = IDLE_CONNECTIONS};
    long hwm_kib = -1;
    rt_run_t run;

    (void)state;
    run = run_under_attack(&h, "idle", NOFILE, &hwm_kib);
    if (h.opened < IDLE / 2)
        fail_msg("only %u idle connections were opened to the driver", h.opened);
    print_message("%u idle connections; the job took %.1f s under RLIMIT_NOFILE %d\n", h.opened,
                  run.seconds, NOFILE);
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_refuses_an_oversized_auth_without_reading_it),
        cmocka_unit_test(test_run_survives_idle_connections_under_a_low_fd_limit),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
