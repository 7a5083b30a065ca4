/*
 * Tests of launcher/zk.c against a real ZooKeeper: the server of Debian's
 * zookeeper package (ZooKeeperServerMain from /usr/share/java/zookeeper.jar),
 * started by the test on 127.0.0.1 only (clientPortAddress, no admin
 * server, no JMX port) on a free port, with its data in a temporary
 * directory, and stopped by the PID the test started. Masters are simulated
 * the way Mesos registers them: json.info_NNNNNNNNNN znodes holding
 * MasterInfo JSON, next to the log_replicas node and a legacy info_ node
 * that must be ignored. The URL parser and the unreachable-server timeouts
 * need no server and always run; when the server cannot start (no Java, no
 * jar), the tests that need it print a SKIPPED line with the reason.
 *
 * The launcher's sources are linked into the spate executable only, so the
 * unit under test is compiled into this program.
 *
 * LABELS: slow
 */
/* The client's synchronous calls, used here to set up nodes, need THREADED. */
#define THREADED
#include "launcher/zk.c"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define ZK_JAR  "/usr/share/java/zookeeper.jar"
#define ZK_MAIN "org.apache.zookeeper.server.ZooKeeperServerMain"
#define WAIT_MS 10000 /* how long a watch gets to report a change */
#define NODE_A  "json.info_0000000001"
#define NODE_B  "json.info_0000000002"
#define MASTER_A                                                                                   \
    "{\"address\":{\"hostname\":\"master-a\",\"ip\":\"10.0.0.1\",\"port\":5050},"                  \
    "\"hostname\":\"master-a\",\"id\":\"a-1\",\"ip\":16777226,"                                    \
    "\"pid\":\"master@10.0.0.1:5050\",\"port\":5050,\"version\":\"1.11.0\"}"
#define MASTER_B2 "{\"address\":{\"ip\":\"10.0.0.22\",\"port\":5051}}"
#define MASTER_B                                                                                   \
    "{\"address\":{\"hostname\":\"master-b\",\"ip\":\"10.0.0.2\",\"port\":5051},"                  \
    "\"hostname\":\"master-b\",\"id\":\"b-1\",\"ip\":33554442,"                                    \
    "\"pid\":\"master@10.0.0.2:5051\",\"port\":5051,\"version\":\"1.11.0\"}"

/* ------------------------------------------------------------------------ */
/* The ZooKeeper server                                                     */
/* ------------------------------------------------------------------------ */

static struct {
    char dir[256]; /* temporary directory: zoo.cfg, data/, server.log */
    int port;
    pid_t pid;      /* the java process this test started; 0 when none */
    bool frozen;    /* stopped with SIGSTOP by test_frozen_server */
    char skip[512]; /* why the server tests are skipped; "" when the server runs */
    zhandle_t *zh;  /* the test's own session, to create and delete nodes */
    int zh_state;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} zk = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static uint64_t now_ms(void) { return sp__now_ns() / 1000000u; }

static void sleep_ms(int ms) { sp_zk_sleep_ms(ms); }

/* A TCP port on 127.0.0.1 that nothing listens on right now. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void admin_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    (void)ctx;
    if (type != ZOO_SESSION_EVENT)
        return;
    pthread_mutex_lock(&zk.lock);
    zk.zh_state = state;
    pthread_cond_broadcast(&zk.cond);
    pthread_mutex_unlock(&zk.lock);
}

static void quiet_log(const char *message) { (void)message; }

/* Opens a session to host_port; returns it once connected, NULL after ms. */
static zhandle_t *session_open(const char *hosts, int ms)
{
    zhandle_t *zh;
    uint64_t end = now_ms() + (uint64_t)ms;
    bool up;

    pthread_mutex_lock(&zk.lock);
    zk.zh_state = 0;
    pthread_mutex_unlock(&zk.lock);
    zh = zookeeper_init2(hosts, admin_watcher, 10000, NULL, NULL, ZOO_NO_LOG_CLIENTENV, quiet_log);
    if (zh == NULL)
        return NULL;
    for (;;) {
        pthread_mutex_lock(&zk.lock);
        up = zk.zh_state == ZOO_CONNECTED_STATE;
        pthread_mutex_unlock(&zk.lock);
        if (up || now_ms() >= end)
            break;
        sleep_ms(20);
    }
    if (!up) {
        zookeeper_close(zh);
        return NULL;
    }
    return zh;
}

/* Starts java on zk.dir/zoo.cfg; "" or the reason it did not come up. */
static bool server_start(void)
{
    char cfg[320], log[320], data[320], hosts[64];
    const char *java_home = getenv("JAVA_HOME");
    char java[256];
    FILE *f;
    uint64_t end;
    int status;

    snprintf(java, sizeof(java), "%s/bin/java", java_home != NULL ? java_home : "/usr");
    if (access(java, X_OK) != 0)
        snprintf(java, sizeof(java), "/usr/bin/java");
    if (access(java, X_OK) != 0) {
        snprintf(zk.skip, sizeof(zk.skip),
                 "no Java runtime (neither $JAVA_HOME/bin/java nor /usr/bin/java; Debian: "
                 "default-jre-headless, a dependency of zookeeper)");
        return false;
    }
    if (access(ZK_JAR, R_OK) != 0) {
        snprintf(zk.skip, sizeof(zk.skip), "no %s (Debian package zookeeper)", ZK_JAR);
        return false;
    }
    snprintf(cfg, sizeof(cfg), "%s/zoo.cfg", zk.dir);
    snprintf(log, sizeof(log), "%s/server.log", zk.dir);
    snprintf(data, sizeof(data), "%s/data", zk.dir);
    mkdir(data, 0700);
    f = fopen(cfg, "w");
    assert_non_null(f);
    /* Sessions of 1..2 s, so that the watch's session (it asks for 10 s) expires fast. */
    fprintf(f,
            "tickTime=500\n"
            "maxSessionTimeout=2000\n"
            "dataDir=%s\n"
            "clientPort=%d\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "maxClientCnxns=0\n"
            "4lw.commands.whitelist=\n",
            data, zk.port);
    fclose(f);

    fflush(stdout);
    fflush(stderr);
    zk.pid = fork();
    assert_true(zk.pid >= 0);
    if (zk.pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        /* The server dies with the test, even when the test crashes. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(127);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execl(java, java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
              "-XX:-UsePerfData", "-Djava.net.preferIPv4Stack=true",
              "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true", "-cp",
              ZK_JAR, ZK_MAIN, cfg, (char *)NULL);
        _exit(127);
    }

    /* Up when a session opens; gone if java exits first. */
    snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", zk.port);
    end = now_ms() + 30000;
    while (now_ms() < end) {
        if (waitpid(zk.pid, &status, WNOHANG) == zk.pid) {
            snprintf(zk.skip, sizeof(zk.skip), "java exited (status %d) before answering; see %s",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1, log);
            zk.pid = 0;
            return false;
        }
        zk.zh = session_open(hosts, 1000);
        if (zk.zh != NULL)
            return true;
    }
    snprintf(zk.skip, sizeof(zk.skip), "no answer on 127.0.0.1:%d within 30 s; see %s", zk.port,
             log);
    return false;
}

/* Stops the server this test started, by its PID. */
static void server_stop(void)
{
    int status;

    if (zk.zh != NULL) {
        zookeeper_close(zk.zh);
        zk.zh = NULL;
    }
    if (zk.pid <= 0)
        return;
    kill(zk.pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(zk.pid, &status, WNOHANG) == zk.pid) {
            zk.pid = 0;
            return;
        }
        sleep_ms(50);
    }
    kill(zk.pid, SIGKILL);
    waitpid(zk.pid, &status, 0);
    zk.pid = 0;
}

static int group_setup(void **state)
{
    const char *tmp = getenv("TMPDIR");
    uint64_t t0 = now_ms();

    (void)state;
    zoo_set_debug_level(getenv("SPATE_LOG") != NULL ? ZOO_LOG_LEVEL_DEBUG : ZOO_LOG_LEVEL_ERROR);
    snprintf(zk.dir, sizeof(zk.dir), "%s/spate-zk-XXXXXX", tmp != NULL ? tmp : "/tmp");
    assert_non_null(mkdtemp(zk.dir));
    zk.port = free_port();
    if (!server_start()) {
        server_stop();
        printf("SKIPPED: ZooKeeper tests: %s\n", zk.skip);
    } else {
        printf("ZooKeeper %s up on 127.0.0.1:%d in %llu ms (data in %s)\n", ZK_MAIN, zk.port,
               (unsigned long long)(now_ms() - t0), zk.dir);
    }
    fflush(stdout);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    server_stop();
    rm_tree(zk.dir);
    return 0;
}

#define NEED_SERVER()                                                                              \
    do {                                                                                           \
        if (zk.skip[0] != '\0') {                                                                  \
            printf("SKIPPED: %s: %s\n", __func__, zk.skip);                                        \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* The URL of a path on the test's server. */
static const char *url_of(const char *path)
{
    static char url[256];

    snprintf(url, sizeof(url), "zk://127.0.0.1:%d%s", zk.port, path);
    return url;
}

/* Replaces the test's own session with a new one. */
static void admin_reopen(void)
{
    char hosts[64];

    snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", zk.port);
    zookeeper_close(zk.zh);
    zk.zh = session_open(hosts, 10000);
    assert_non_null(zk.zh);
}

static void node_create(const char *path, const char *data)
{
    int rc = zoo_create(zk.zh, path, data, data != NULL ? (int)strlen(data) : -1,
                        &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);

    if (rc != ZOK)
        fail_msg("create %s: %s", path, zerror(rc));
}

static void node_delete(const char *path)
{
    int rc = zoo_delete(zk.zh, path, -1);

    if (rc != ZOK)
        fail_msg("delete %s: %s", path, zerror(rc));
}

/* /mesos as Mesos leaves it with two masters: A (lowest) leads. */
static void mesos_tree(const char *root)
{
    char p[128];

    node_create(root, NULL);
    snprintf(p, sizeof(p), "%s/log_replicas", root);
    node_create(p, NULL);
    snprintf(p, sizeof(p), "%s/info_0000000000", root); /* legacy protobuf MasterInfo */
    node_create(p, "\x08\x01\x12\x05not-json");
    snprintf(p, sizeof(p), "%s/" NODE_B, root); /* created first: the order must not matter */
    node_create(p, MASTER_B);
    snprintf(p, sizeof(p), "%s/" NODE_A, root);
    node_create(p, MASTER_A);
}

/* ------------------------------------------------------------------------ */
/* URL parsing                                                              */
/* ------------------------------------------------------------------------ */

static void test_url_parse_valid(void **state)
{
    sp__zk_url_t u;

    (void)state;
    assert_int_equal(sp__zk_url_parse("zk://zk1:2181,zk2:2182,10.0.0.3:2183/mesos", &u), SP_OK);
    assert_string_equal(u.hosts, "zk1:2181,zk2:2182,10.0.0.3:2183");
    assert_string_equal(u.path, "/mesos");
    assert_string_equal(u.auth, "");

    assert_int_equal(sp__zk_url_parse("mesos://zk://u:p@w@zk1:2181/a/b/", &u), SP_OK);
    assert_string_equal(u.hosts, "zk1:2181");
    assert_string_equal(u.path, "/a/b");
    assert_string_equal(u.auth, "u:p@w");

    assert_int_equal(sp__zk_url_parse("zk://[::1]:2181,[fe80::2]:2182/", &u), SP_OK);
    assert_string_equal(u.hosts, "::1:2181,fe80::2:2182"); /* the C client splits at the last ':' */
    assert_string_equal(u.path, "/");
}

static void test_url_parse_malformed(void **state)
{
    static const struct {
        const char *url;
        const char *why; /* in the message */
    } bad[] = {
        {"", "does not start with zk://"},
        {"http://zk1:2181/mesos", "does not start with zk://"},
        {"mesos://10.0.0.1:5050", "does not start with zk://"},
        {"zk://zk1:2181", "has no path"},
        {"zk:///mesos", "has no server"},
        {"zk://zk1/mesos", "has no port"},
        {"zk://zk1:/mesos", "empty port"},
        {"zk://zk1:21x1/mesos", "not a number"},
        {"zk://zk1:0/mesos", "not in 1..65535"},
        {"zk://zk1:65536/mesos", "not in 1..65535"},
        {"zk://zk1:1234567/mesos", "not a number in 1..65535"},
        {"zk://:2181/mesos", "has no host"},
        {"zk://zk1:2181,/mesos", "empty server"},
        {"zk://zk1:2181,,zk2:2181/mesos", "empty server"},
        {"zk://zk_1!:2181/mesos", "bad character '!'"},
        {"zk://[::1/mesos", "unterminated or empty IPv6"},
        {"zk://[::1]2181/mesos", "expected ':PORT'"},
        {"zk://zk1:2181/me//sos", "empty, '.' or '..' component"},
        {"zk://zk1:2181/a/../b", "empty, '.' or '..' component"},
        {"zk://zk1:2181/mesos?x=1", "query or fragment"},
        {"zk://zk1:2181/me sos", "space or control character"},
        {"zk://secretuser@zk1:2181/mesos", "credentials must be 'user:password@'"},
        {"zk://:hunter2@zk1:2181/mesos", "credentials must be 'user:password@'"},
    };
    sp__zk_url_t u;

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        sp_status_t st = sp__zk_url_parse(bad[i].url, &u);

        if (st != SP_ERR_INVALID_PARAM || strstr(sp_last_error(), bad[i].why) == NULL)
            fail_msg("'%s': status %d, message '%s', expected '%s'", bad[i].url, st,
                     sp_last_error(), bad[i].why);
    }
    /* A malformed URL never echoes the password. */
    assert_int_equal(sp__zk_url_parse("zk://spate:hunter2@zk1/mesos", &u), SP_ERR_INVALID_PARAM);
    assert_null(strstr(sp_last_error(), "hunter2"));
    assert_non_null(strstr(sp_last_error(), "zk://***@zk1/mesos"));
    assert_int_equal(sp__zk_url_parse(NULL, &u), SP_ERR_INVALID_PARAM);
}

/* ------------------------------------------------------------------------ */
/* Unreachable servers: bounded by the timeout, no server needed              */
/* ------------------------------------------------------------------------ */

static void test_leader_unreachable_times_out(void **state)
{
    char url[128], out[SP__ZK_HOST_PORT_MAX] = "untouched";
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    uint64_t t0, ms;
    int silent;

    (void)state;
    /* Nothing listens: every connect is refused, the client keeps retrying. */
    snprintf(url, sizeof(url), "zk://127.0.0.1:%d,127.0.0.1:%d/mesos", free_port(), free_port());
    t0 = now_ms();
    assert_int_equal(sp__zk_leader(url, 1000, out, sizeof(out)), SP_ERR_TIMED_OUT);
    ms = now_ms() - t0;
    printf("refused ports: SP_ERR_TIMED_OUT after %llu ms (timeout 1000): %s\n",
           (unsigned long long)ms, sp_last_error());
    assert_true(ms >= 900); /* not before the timeout; how long after is not the code's to say */
    assert_non_null(strstr(sp_last_error(), "no session within 1000 ms"));
    assert_string_equal(out, "untouched");

    /* A listener that accepts but never answers the handshake. */
    silent = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(silent >= 0);
    assert_int_equal(bind(silent, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(silent, 8), 0);
    assert_int_equal(getsockname(silent, (struct sockaddr *)&a, &len), 0);
    snprintf(url, sizeof(url), "zk://127.0.0.1:%d/mesos", ntohs(a.sin_port));
    t0 = now_ms();
    assert_int_equal(sp__zk_leader(url, 1500, out, sizeof(out)), SP_ERR_TIMED_OUT);
    ms = now_ms() - t0;
    printf("silent listener: SP_ERR_TIMED_OUT after %llu ms (timeout 1500)\n",
           (unsigned long long)ms);
    assert_true(ms >= 1400);
    close(silent);

    assert_int_equal(sp__zk_leader(url, 0, out, sizeof(out)), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__zk_leader("zk://h:1", 1000, out, sizeof(out)), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__zk_leader("zk://no-such-host.invalid:2181/mesos", 1000, out, sizeof(out)),
                     SP_ERR_INVALID_PARAM);
    printf("unresolvable host: %s\n", sp_last_error());
    assert_string_equal(out, "untouched");
}

typedef struct reports {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned calls;
    char last[SP__ZK_HOST_PORT_MAX]; /* "-" for NULL */
    char history[1024];
} reports_t;

static void on_leader(void *arg, const char *host_port)
{
    reports_t *r = arg;

    pthread_mutex_lock(&r->lock);
    r->calls++;
    snprintf(r->last, sizeof(r->last), "%s", host_port != NULL ? host_port : "-");
    if (strlen(r->history) + strlen(r->last) + 2 < sizeof(r->history)) {
        strcat(r->history, " ");
        strcat(r->history, r->last);
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void reports_init(reports_t *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
}

static void reports_fini(reports_t *r)
{
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
}

/* Waits until the last report is want ("-": no leader); returns the ms it took. */
static uint64_t wait_report(reports_t *r, const char *want)
{
    uint64_t t0 = now_ms();
    bool ok;

    pthread_mutex_lock(&r->lock);
    while (!(ok = strcmp(r->last, want) == 0) && now_ms() - t0 < WAIT_MS) {
        pthread_mutex_unlock(&r->lock);
        sleep_ms(10);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    if (!ok)
        fail_msg("watch did not report %s within %d ms; reports so far:%s", want, WAIT_MS,
                 r->history);
    return now_ms() - t0;
}

/* The watch of the running test and what it reported; the teardown stops it. */
static reports_t rep;
static sp__zk_watch_t *watch;

static int watch_setup(void **state)
{
    (void)state;
    reports_init(&rep);
    watch = NULL;
    return 0;
}

static void watch_stop(void)
{
    sp__zk_watch_destroy(watch);
    watch = NULL;
}

static int watch_teardown(void **state)
{
    (void)state;
    if (zk.frozen) {
        kill(zk.pid, SIGCONT);
        zk.frozen = false;
    }
    watch_stop();
    reports_fini(&rep);
    return 0;
}

/* Waits until the reports so far are want (" A - B"); returns the ms it took. */
static uint64_t wait_history(reports_t *r, const char *want)
{
    uint64_t t0 = now_ms();
    bool ok;

    pthread_mutex_lock(&r->lock);
    while (!(ok = strcmp(r->history, want) == 0) && now_ms() - t0 < WAIT_MS) {
        pthread_mutex_unlock(&r->lock);
        sleep_ms(10);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    if (!ok)
        fail_msg("watch did not report%s within %d ms; reports so far:%s", want, WAIT_MS,
                 r->history);
    return now_ms() - t0;
}

/* The ids of this process's threads (at most cap); returns how many there are. */
static size_t thread_ids(int *ids, size_t cap)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    size_t n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && n < cap)
            ids[n++] = atoi(e->d_name);
    closedir(d);
    return n;
}

/* How many of the threads now running are not among before[0..nbefore). */
static size_t threads_new_since(const int *before, size_t nbefore)
{
    int now[256];
    size_t n = thread_ids(now, 256), fresh = 0;

    for (size_t i = 0; i < n; i++) {
        bool old = false;

        for (size_t j = 0; j < nbefore && !old; j++)
            old = now[i] == before[j];
        fresh += !old;
    }
    return fresh;
}

static void test_watch_unreachable_is_destroyed_with_its_threads(void **state)
{
    char url[64];
    int before[256];
    size_t nbefore, fresh = 0;
    uint64_t t0;

    (void)state;
    assert_int_equal(sp__zk_watch_create("zk://h:1", on_leader, &rep, &watch),
                     SP_ERR_INVALID_PARAM);
    assert_null(watch);
    snprintf(url, sizeof(url), "zk://127.0.0.1:%d/mesos", free_port());
    assert_int_equal(sp__zk_watch_create(url, NULL, &rep, &watch), SP_ERR_INVALID_PARAM);
    nbefore = thread_ids(before, 256);
    assert_int_equal(sp__zk_watch_create(url, on_leader, &rep, &watch), SP_OK);
    /*
     * The watch is under way once its thread has opened a session: the
     * ZooKeeper client's I/O and completion threads run beside it, and keep
     * trying the refused port. Destroying it then must stop all three.
     */
    for (t0 = now_ms(); (fresh = threads_new_since(before, nbefore)) < 3; sleep_ms(10))
        if (now_ms() - t0 > WAIT_MS)
            fail_msg("the watch and its client's 2 threads did not start within %d ms "
                     "(%zu new threads)",
                     WAIT_MS, fresh);
    t0 = now_ms();
    watch_stop();
    printf("watch on a refused port destroyed in %llu ms\n", (unsigned long long)(now_ms() - t0));
    fresh = threads_new_since(before, nbefore);
    if (fresh != 0)
        fail_msg("%zu of the watch's threads still run after sp__zk_watch_destroy", fresh);
    assert_int_equal(rep.calls, 0); /* never connected: nothing to say */
    sp__zk_watch_destroy(NULL);
}

/* ------------------------------------------------------------------------ */
/* Against the server                                                       */
/* ------------------------------------------------------------------------ */

static void test_leader_lowest_sequence(void **state)
{
    char out[SP__ZK_HOST_PORT_MAX];
    uint64_t t0;

    (void)state;
    NEED_SERVER();
    mesos_tree("/mesos");
    t0 = now_ms();
    assert_int_equal(sp__zk_leader(url_of("/mesos"), 5000, out, sizeof(out)), SP_OK);
    printf("leader %s read in %llu ms\n", out, (unsigned long long)(now_ms() - t0));
    assert_string_equal(out, "10.0.0.1:5050");
    /* Too small a buffer is refused, and leaves it alone. */
    memcpy(out, "keep", 5);
    assert_int_equal(sp__zk_leader(url_of("/mesos"), 5000, out, 8), SP_ERR_TOO_LARGE);
    assert_string_equal(out, "keep");
}

static void test_leader_masterinfo_fallbacks(void **state)
{
    static const struct {
        const char *json;
        const char *want;
    } cases[] = {
        {"{\"address\":{\"hostname\":\"m1.example\",\"port\":5050}}", "m1.example:5050"},
        {"{\"address\":{\"ip\":\"fd00::1\",\"port\":5050}}", "[fd00::1]:5050"},
        {"{\"hostname\":\"old-master\",\"port\":5052,\"ip\":16777226}", "old-master:5052"},
        {"{\"pid\":\"master@10.1.2.3:5053\"}", "10.1.2.3:5053"},
        {"{\"ip\":16777226,\"port\":5054,\"future_field\":[1,2]}", "10.0.0.1:5054"},
        {"{\"address\":{\"ip\":\"10.9.9.9\"},\"port\":5055}", "10.9.9.9:5055"},
    };
    char path[64], out[SP__ZK_HOST_PORT_MAX];

    (void)state;
    NEED_SERVER();
    node_create("/fb", NULL);
    for (size_t i = 0; i < SP_ARRAY_SIZE(cases); i++) {
        snprintf(path, sizeof(path), "/fb/%zu", i);
        node_create(path, NULL);
        snprintf(path, sizeof(path), "/fb/%zu/" NODE_A, i);
        node_create(path, cases[i].json);
        snprintf(path, sizeof(path), "/fb/%zu", i);
        if (sp__zk_leader(url_of(path), 5000, out, sizeof(out)) != SP_OK)
            fail_msg("%s: %s", cases[i].json, sp_last_error());
        assert_string_equal(out, cases[i].want);
    }
}

static void test_leader_errors(void **state)
{
    static const struct {
        const char *json; /* NULL: no data at all */
        sp_status_t st;
        const char *why;
    } bad[] = {
        {"{\"address\":{\"ip\":\"10.0.0.1\",\"port\":5050", SP_ERR_BAD_FORMAT, "not valid JSON"},
        {"[\"10.0.0.1\",5050]", SP_ERR_BAD_FORMAT, "not a JSON object"},
        {"{\"address\":{\"ip\":\"10.0.0.1\"}}", SP_ERR_BAD_FORMAT, "has no port"},
        {"{\"address\":{\"port\":5050}}", SP_ERR_BAD_FORMAT, "has no host"},
        {"{\"address\":{\"ip\":\"10.0.0.1\",\"port\":99999}}", SP_ERR_BAD_FORMAT, "has no port"},
        {"{\"address\":{\"ip\":\"a b\",\"port\":5050}}", SP_ERR_BAD_FORMAT, "not a host name"},
        {NULL, SP_ERR_BAD_FORMAT, "is empty"},
    };
    char path[64], out[SP__ZK_HOST_PORT_MAX] = "untouched";

    (void)state;
    NEED_SERVER();
    node_create("/bad", NULL);
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        sp_status_t st;

        snprintf(path, sizeof(path), "/bad/%zu", i);
        node_create(path, NULL);
        snprintf(path, sizeof(path), "/bad/%zu/" NODE_A, i);
        node_create(path, bad[i].json);
        snprintf(path, sizeof(path), "/bad/%zu", i);
        st = sp__zk_leader(url_of(path), 5000, out, sizeof(out));
        if (st != bad[i].st || strstr(sp_last_error(), bad[i].why) == NULL ||
            strstr(sp_last_error(), NODE_A) == NULL)
            fail_msg("%s: status %d, message '%s', expected '%s'", bad[i].json, st, sp_last_error(),
                     bad[i].why);
        if (i == 0)
            printf("malformed JSON: %s\n", sp_last_error());
    }

    /* A path with no masters under it (only what Mesos' replicated log keeps). */
    node_create("/empty", NULL);
    node_create("/empty/log_replicas", NULL);
    node_create("/empty/info_0000000003", "legacy");
    node_create("/empty/json.info_", "{}");
    node_create("/empty/json.info_12ab", "{}");
    assert_int_equal(sp__zk_leader(url_of("/empty"), 5000, out, sizeof(out)), SP_ERR_NOT_FOUND);
    printf("empty path: %s\n", sp_last_error());
    assert_non_null(strstr(sp_last_error(), "no Mesos master registered under /empty"));
    assert_non_null(strstr(sp_last_error(), "4 children"));

    assert_int_equal(sp__zk_leader(url_of("/no/such/path"), 5000, out, sizeof(out)),
                     SP_ERR_NOT_FOUND);
    printf("missing path: %s\n", sp_last_error());
    assert_non_null(strstr(sp_last_error(), "no znode /no/such/path"));
    assert_string_equal(out, "untouched");
}

static void test_leader_digest_auth(void **state)
{
    static const char auth[] = "spate:s3cret";
    char url[128], out[SP__ZK_HOST_PORT_MAX];
    int rc;

    (void)state;
    NEED_SERVER();
    /* Nodes readable only by the digest identity spate:s3cret. */
    rc = zoo_add_auth(zk.zh, "digest", auth, (int)strlen(auth), NULL, NULL);
    assert_int_equal(rc, ZOK);
    rc = zoo_create(zk.zh, "/secure", NULL, -1, &ZOO_CREATOR_ALL_ACL, 0, NULL, 0);
    if (rc != ZOK)
        fail_msg("create /secure: %s", zerror(rc));
    rc = zoo_create(zk.zh, "/secure/" NODE_A, MASTER_B, (int)strlen(MASTER_B), &ZOO_CREATOR_ALL_ACL,
                    0, NULL, 0);
    assert_int_equal(rc, ZOK);

    assert_int_equal(sp__zk_leader(url_of("/secure"), 5000, out, sizeof(out)),
                     SP_ERR_INVALID_PARAM);
    printf("no credentials: %s\n", sp_last_error());
    assert_non_null(strstr(sp_last_error(), "not allowed to list /secure"));
    snprintf(url, sizeof(url), "zk://spate:wrong@127.0.0.1:%d/secure", zk.port);
    assert_int_equal(sp__zk_leader(url, 5000, out, sizeof(out)), SP_ERR_INVALID_PARAM);
    assert_null(strstr(sp_last_error(), "wrong"));
    snprintf(url, sizeof(url), "zk://%s@127.0.0.1:%d/secure", auth, zk.port);
    assert_int_equal(sp__zk_leader(url, 5000, out, sizeof(out)), SP_OK);
    assert_string_equal(out, "10.0.0.2:5051");
}

/* A master's own session: the ephemeral sequential node Mesos creates. */
static zhandle_t *master_join(const char *data, char *node, int cap)
{
    char hosts[64];
    zhandle_t *zh;
    int rc;

    snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", zk.port);
    /* session_open shares the test session's state; save and restore it. */
    zh = zookeeper_init2(hosts, NULL, 10000, NULL, NULL, ZOO_NO_LOG_CLIENTENV, quiet_log);
    assert_non_null(zh);
    for (int i = 0; i < 500 && zoo_state(zh) != ZOO_CONNECTED_STATE; i++)
        sleep_ms(10);
    assert_int_equal(zoo_state(zh), ZOO_CONNECTED_STATE);
    rc = zoo_create(zh, "/mesos/json.info_", data, (int)strlen(data), &ZOO_OPEN_ACL_UNSAFE,
                    ZOO_EPHEMERAL | ZOO_SEQUENCE, node, cap);
    if (rc != ZOK)
        fail_msg("create ephemeral master node: %s", zerror(rc));
    return zh;
}

static void test_watch_follows_leader(void **state)
{
    zhandle_t *master_c;
    char node_c[128];
    unsigned calls;

    (void)state;
    NEED_SERVER();
    /* /mesos holds A (leader) and B from test_leader_lowest_sequence. */
    assert_int_equal(sp__zk_watch_create(url_of("/mesos"), on_leader, &rep, &watch), SP_OK);
    printf("watch: first report %s after %llu ms\n", "10.0.0.1:5050",
           (unsigned long long)wait_report(&rep, "10.0.0.1:5050"));

    /* A non-leader joining changes nothing. */
    master_c =
        master_join("{\"address\":{\"ip\":\"10.0.0.3\",\"port\":5052}}", node_c, sizeof(node_c));
    sleep_ms(300);

    /* The leader leaves: the next lowest leads. */
    node_delete("/mesos/" NODE_A);
    printf("watch: %s reported %llu ms after the leader's node was deleted\n", "10.0.0.2:5051",
           (unsigned long long)wait_report(&rep, "10.0.0.2:5051"));

    /* Its node rewritten in place (a re-registration): followed through the data watch. */
    assert_int_equal(zoo_set(zk.zh, "/mesos/" NODE_B, MASTER_B2, (int)strlen(MASTER_B2), -1), ZOK);
    wait_report(&rep, "10.0.0.22:5051");

    /* B leaves; C's ephemeral node leads; C's session ends and its node goes with it. */
    node_delete("/mesos/" NODE_B);
    wait_report(&rep, "10.0.0.3:5052");
    printf("watch: ephemeral master %s leads\n", node_c);
    zookeeper_close(master_c);
    printf("watch: no leader reported %llu ms after the last master's session closed\n",
           (unsigned long long)wait_report(&rep, "-"));

    /* A master registers again. */
    node_create("/mesos/json.info_0000000009", MASTER_A);
    wait_report(&rep, "10.0.0.1:5050");

    pthread_mutex_lock(&rep.lock);
    printf("watch reports:%s\n", rep.history);
    assert_string_equal(
        rep.history, " 10.0.0.1:5050 10.0.0.2:5051 10.0.0.22:5051 10.0.0.3:5052 - 10.0.0.1:5050");
    pthread_mutex_unlock(&rep.lock);
    watch_stop();
    calls = rep.calls;
    node_delete("/mesos/json.info_0000000009");
    sleep_ms(300);
    assert_int_equal(rep.calls, calls); /* nothing after destroy */
}

static void test_watch_path_appears(void **state)
{

    (void)state;
    NEED_SERVER();
    assert_int_equal(sp__zk_watch_create(url_of("/later"), on_leader, &rep, &watch), SP_OK);
    wait_report(&rep, "-"); /* no such path yet: no leader */
    node_create("/later", NULL);
    node_create("/later/" NODE_B, "{\"broken");
    sleep_ms(300);
    node_create("/later/" NODE_A, MASTER_B);
    wait_report(&rep, "10.0.0.2:5051");
    node_delete("/later/" NODE_A); /* the lowest is now malformed: no usable leader */
    wait_report(&rep, "-");
    assert_int_equal(zoo_set(zk.zh, "/later/" NODE_B, MASTER_A, (int)strlen(MASTER_A), -1), ZOK);
    wait_report(&rep, "10.0.0.1:5050");
    pthread_mutex_lock(&rep.lock);
    assert_string_equal(rep.history, " - 10.0.0.2:5051 - 10.0.0.1:5050");
    pthread_mutex_unlock(&rep.lock);
    watch_stop();
}

/*
 * Session expiry, done the way ZooKeeper's own tests do it: a second handle
 * joins the watch's session (its id and password) and closes it, so the
 * server ends the session and the watch's client hears that it expired.
 */
static void test_watch_session_expiry(void **state)
{
    clientid_t id;
    zhandle_t *dup;
    char hosts[64];
    uint64_t t0;

    (void)state;
    NEED_SERVER();
    node_create("/exp", NULL);
    node_create("/exp/" NODE_A, MASTER_A);
    assert_int_equal(sp__zk_watch_create(url_of("/exp"), on_leader, &rep, &watch), SP_OK);
    wait_report(&rep, "10.0.0.1:5050");

    pthread_mutex_lock(&watch->conn.lock); /* connected and idle: the handle stays put */
    assert_int_equal(watch->conn.state, ZOO_CONNECTED_STATE);
    id = *zoo_client_id(watch->conn.zh);
    pthread_mutex_unlock(&watch->conn.lock);
    snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", zk.port);
    dup = zookeeper_init2(hosts, NULL, 2000, &id, NULL, ZOO_NO_LOG_CLIENTENV, quiet_log);
    assert_non_null(dup);
    for (int i = 0; i < 500 && zoo_state(dup) != ZOO_CONNECTED_STATE; i++)
        sleep_ms(10);
    assert_int_equal(zoo_state(dup), ZOO_CONNECTED_STATE);
    t0 = now_ms();
    zookeeper_close(dup); /* ends the session on the server */

    wait_history(&rep, " 10.0.0.1:5050 - 10.0.0.1:5050");
    printf("watch: session %#llx expired; no leader, then %s again from a new session, "
           "%llu ms after it ended\n",
           (unsigned long long)id.client_id, "10.0.0.1:5050", (unsigned long long)(now_ms() - t0));
    watch_stop();
}

/*
 * A server that stops answering (SIGSTOP: a hung JVM) with its connections
 * open: a lookup still ends within its timeout, the watch gives its session
 * up after the session timeout and reports no leader, and follows the
 * leader again once the server resumes.
 */
static void test_frozen_server(void **state)
{
    char out[SP__ZK_HOST_PORT_MAX];
    uint64_t t0, ms;

    (void)state;
    NEED_SERVER();
    node_create("/frozen", NULL);
    node_create("/frozen/" NODE_A, MASTER_A);
    assert_int_equal(sp__zk_watch_create(url_of("/frozen"), on_leader, &rep, &watch), SP_OK);
    wait_report(&rep, "10.0.0.1:5050");

    assert_int_equal(kill(zk.pid, SIGSTOP), 0);
    zk.frozen = true;
    t0 = now_ms();
    assert_int_equal(sp__zk_leader(url_of("/frozen"), 1000, out, sizeof(out)), SP_ERR_TIMED_OUT);
    ms = now_ms() - t0;
    printf("frozen server: lookup SP_ERR_TIMED_OUT after %llu ms (timeout 1000)\n",
           (unsigned long long)ms);
    assert_true(ms >= 900);
    wait_report(&rep, "-");
    printf("frozen server: watch reports no leader %llu ms after the freeze\n",
           (unsigned long long)(now_ms() - t0));

    assert_int_equal(kill(zk.pid, SIGCONT), 0);
    zk.frozen = false;
    t0 = now_ms();
    admin_reopen(); /* the test's own session expired during the freeze too */
    wait_report(&rep, "10.0.0.1:5050");
    printf("frozen server: watch follows %s again %llu ms after it resumed\n", "10.0.0.1:5050",
           (unsigned long long)(now_ms() - t0));
    assert_int_equal(sp__zk_leader(url_of("/frozen"), 5000, out, sizeof(out)), SP_OK);
    assert_string_equal(out, "10.0.0.1:5050");
}

/*
 * The ZooKeeper data is lost: the server restarts with an empty data
 * directory. It refuses the watch's client (which saw a later zxid than the
 * server now has) rather than expire its session, so the watch gives the
 * session up itself once it has been out of touch for the session timeout,
 * reports no leader, and follows the masters on the new server.
 */
static void test_watch_server_data_lost(void **state)
{
    char data[320];
    uint64_t t0;

    (void)state;
    NEED_SERVER();
    node_create("/lost", NULL);
    node_create("/lost/" NODE_A, MASTER_A);
    assert_int_equal(sp__zk_watch_create(url_of("/lost"), on_leader, &rep, &watch), SP_OK);
    wait_report(&rep, "10.0.0.1:5050");

    server_stop();
    snprintf(data, sizeof(data), "%s/data", zk.dir);
    rm_tree(data);
    t0 = now_ms();
    if (!server_start())
        fail_msg("ZooKeeper did not restart: %s", zk.skip);
    printf("ZooKeeper restarted empty in %llu ms\n", (unsigned long long)(now_ms() - t0));
    wait_report(&rep, "-");
    printf("watch: gave the session up, no leader, %llu ms after the restart\n",
           (unsigned long long)(now_ms() - t0));
    node_create("/lost", NULL);
    node_create("/lost/json.info_0000000004", MASTER_B);
    wait_report(&rep, "10.0.0.2:5051");
    printf("watch: new session follows %s, %llu ms after the restart\n", "10.0.0.2:5051",
           (unsigned long long)(now_ms() - t0));
    pthread_mutex_lock(&rep.lock);
    assert_string_equal(rep.history, " 10.0.0.1:5050 - 10.0.0.2:5051");
    pthread_mutex_unlock(&rep.lock);
    watch_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse_valid),
        cmocka_unit_test(test_url_parse_malformed),
        cmocka_unit_test(test_leader_unreachable_times_out),
        cmocka_unit_test_setup_teardown(test_watch_unreachable_is_destroyed_with_its_threads,
                                        watch_setup, watch_teardown),
        cmocka_unit_test(test_leader_lowest_sequence),
        cmocka_unit_test(test_leader_masterinfo_fallbacks),
        cmocka_unit_test(test_leader_errors),
        cmocka_unit_test(test_leader_digest_auth),
        cmocka_unit_test_setup_teardown(test_watch_follows_leader, watch_setup, watch_teardown),
        cmocka_unit_test_setup_teardown(test_watch_path_appears, watch_setup, watch_teardown),
        cmocka_unit_test_setup_teardown(test_watch_session_expiry, watch_setup, watch_teardown),
        cmocka_unit_test_setup_teardown(test_frozen_server, watch_setup, watch_teardown),
        cmocka_unit_test_setup_teardown(test_watch_server_data_lost, watch_setup, watch_teardown),
    };
    uint64_t t0 = now_ms();
    int failed;

    signal(SIGPIPE, SIG_IGN);
    failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    printf("test_zk: %llu ms in all\n", (unsigned long long)(now_ms() - t0));
    return failed;
}
