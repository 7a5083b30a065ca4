/*
 * `spate run --master mesos://...` end to end against the loopback test
 * master (tests/mesos/test_master.py, python3; no Mesos master can be
 * installed here). Each test writes a scenario, starts the master on
 * 127.0.0.1, runs the CLI (tests/executor/run_test_util.h), stops the master
 * and reads back the JSON lines it logged (every call with its status and
 * stream id, every offer, update and process):
 * - terasort completes and validates on executors launched from offers;
 *   offers too small, failing offers.constraints or missing fields are
 *   declined with offers.refuse_seconds (or ignored, without an id); the
 *   offer rescinded in the same batch is never used; both executors come
 *   from one offer (offers.max_executors caps --executors 3); launch
 *   resources keep the reservation and allocation_info; the secret is in
 *   the task's environment, never its arguments; every call carries the
 *   stream id; STARTING/RUNNING updates are acknowledged with their uuids;
 *   SUPPRESS once the executors run, TEARDOWN at the end;
 * - every executor process is killed (SIGKILL) as the first map output is
 *   committed: the tasks fail, the scheduler revives and launches
 *   replacements, and the job completes with the right output;
 * - masters: the first listed answers 307; the first stream is cut right
 *   after SUBSCRIBED; later the leader moves and the old stream goes silent:
 *   missed heartbeats, 307, re-subscription with the framework id, TEARDOWN
 *   at the new leader;
 * - mesos://zk://: the masters register in a real ZooKeeper (Debian's
 *   server, started by the test master on 127.0.0.1; the test says SKIPPED
 *   when it cannot start) and the leader's znode goes mid-run: the watch
 *   moves the subscription to the new leader;
 * - bad input: an unreachable master, 4xx and 5xx answers, malformed,
 *   truncated and oversize RecordIO, no stream id, an unreachable
 *   ZooKeeper, bad --master URLs: clear errors within mesos.connect_timeout.
 *
 * The tests skip themselves (visibly) when python3 is missing.
 *
 * LABELS: slow
 */
#include "../executor/run_test_util.h"

#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define STR_(x) #x
#define STR(x)  STR_(x)

/* Records of the killed-executor test's input (4 files). */
#define KILL_RECORDS 200000

static char base[256];
static char local_dir[300];
static char local_conf[400]; /* shuffle.local_dirs=BASE/local */
static char scratch[300];

typedef struct master {
    pid_t pid;
    int ports[8];
    size_t nports;
    char dir[300];
    int zk_port;        /* scenario "zookeeper": the server's port */
    char zk_error[512]; /* or why it did not start */
    json_t *log;        /* after master_stop: its records, in order */
} master_t;

static bool have_python(void)
{
    const char *argv[] = {"python3", "-c", "import http.server, json", NULL};
    rt_run_t run = rt_spawn_env(argv, NULL, 30);
    bool ok = run.status == 0;

    rt_free(&run);
    return ok;
}

static int setup(void **state)
{
    (void)state;
    rt_env_loopback();
    rt_mkdtemp(base, sizeof(base), "mesos");
    rt_path(local_dir, sizeof(local_dir), base, "local");
    rt_path(scratch, sizeof(scratch), base, "scratch");
    snprintf(local_conf, sizeof(local_conf), "shuffle.local_dirs=%s", local_dir);
    return mkdir(local_dir, 0700);
}

static int teardown(void **state)
{
    (void)state;
    rt_rmtree(base);
    return 0;
}

/* Starts the test master with scenario (JSON text) and waits for its ports. */
static void master_start(master_t *m, const char *scenario)
{
    const char *src = getenv("SPATE_SOURCE_DIR");
    char script[600], path[600], ready[600], log[600], work[600], out[600];
    double deadline;

    if (!have_python())
        skip();
    if (src == NULL)
        fail_msg("SPATE_SOURCE_DIR is not set: run this test through ctest");
    memset(m, 0, sizeof(*m));
    snprintf(m->dir, sizeof(m->dir), "%s/master-XXXXXX", base);
    assert_non_null(mkdtemp(m->dir));
    snprintf(script, sizeof(script), "%s/tests/mesos/test_master.py", src);
    rt_path(path, sizeof(path), m->dir, "scenario.json");
    rt_write_file(path, scenario, strlen(scenario));
    rt_path(ready, sizeof(ready), m->dir, "ready.json");
    rt_path(log, sizeof(log), m->dir, "log.jsonl");
    rt_path(work, sizeof(work), m->dir, "work");
    rt_path(out, sizeof(out), m->dir, "master.out");
    assert_int_equal(mkdir(work, 0700), 0);
    fflush(stdout);
    fflush(stderr);
    m->pid = fork();
    assert_true(m->pid >= 0);
    if (m->pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        setpgid(0, 0);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execlp("python3", "python3", script, "--scenario", path, "--ready", ready, "--log", log,
               "--workdir", work, (char *)NULL);
        _exit(127);
    }
    setpgid(m->pid, m->pid);
    deadline = rt_now() + 20;
    for (;;) {
        char *text = rt_read_file(ready, NULL);
        if (text != NULL) {
            json_error_t err;
            json_t *r = json_loads(text, 0, &err), *ports = json_object_get(r, "ports");
            free(text);
            assert_non_null(r);
            m->nports = json_array_size(ports);
            assert_true(m->nports >= 1 && m->nports <= 8);
            for (size_t i = 0; i < m->nports; i++)
                m->ports[i] = (int)json_integer_value(json_array_get(ports, i));
            m->zk_port = (int)json_integer_value(json_object_get(r, "zk_port"));
            snprintf(m->zk_error, sizeof(m->zk_error), "%s",
                     json_is_string(json_object_get(r, "zk_error"))
                         ? json_string_value(json_object_get(r, "zk_error"))
                         : "");
            json_decref(r);
            return;
        }
        if (waitpid(m->pid, NULL, WNOHANG) == m->pid || rt_now() > deadline) {
            char *why = rt_read_file(out, NULL);
            fail_msg("the test master did not start: %s", why != NULL ? why : "(no output)");
        }
        usleep(20000);
    }
}

/* Stops the master (SIGTERM, then SIGKILL to its group) and loads its log. */
static void master_stop(master_t *m)
{
    char log[600];
    double deadline = rt_now() + 10;
    char *text, *line, *save = NULL;

    kill(m->pid, SIGTERM);
    while (waitpid(m->pid, NULL, WNOHANG) != m->pid) {
        if (rt_now() > deadline) {
            kill(-m->pid, SIGKILL);
            waitpid(m->pid, NULL, 0);
            break;
        }
        usleep(20000);
    }
    rt_path(log, sizeof(log), m->dir, "log.jsonl");
    text = rt_read_file(log, NULL);
    assert_non_null(text);
    m->log = json_array();
    for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        json_error_t err;
        json_t *rec = json_loads(line, 0, &err);
        if (rec == NULL)
            fail_msg("bad line in the master's log: %s", line);
        json_array_append_new(m->log, rec);
    }
    free(text);
}

static void master_free(master_t *m)
{
    json_decref(m->log);
    m->log = NULL;
    rt_rmtree(m->dir);
}

static const char *str_at(json_t *v, const char *dotted)
{
    const char *s = json_string_value(rt_json_at(v, dotted));

    if (s == NULL)
        fail_msg("%s is not a string", dotted);
    return s;
}

/* The log's records with event == event (and, for calls, type == type unless NULL). */
static json_t *records(const master_t *m, const char *event, const char *type)
{
    json_t *out = json_array(), *rec;
    size_t i;

    json_array_foreach(m->log, i, rec)
    {
        const char *t = json_string_value(json_object_get(rec, "type"));
        if (strcmp(json_string_value(json_object_get(rec, "event")), event) != 0)
            continue;
        if (type != NULL && (t == NULL || strcmp(t, type) != 0))
            continue;
        json_array_append(out, rec);
    }
    return out;
}

static void url_of(char *url, size_t cap, const master_t *m, const int *order, size_t n)
{
    size_t at = (size_t)snprintf(url, cap, "mesos://");

    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(url + at, cap - at, "%s127.0.0.1:%d", i ? "," : "",
                               m->ports[order[i]]);
    assert_true(at < cap);
}

/* A fresh path under base. */
static void fresh(char *path, size_t cap, const char *name)
{
    rt_path(path, cap, base, name);
    rt_rmtree(path);
}

/* Runs `spate run terasort` with args (NULL-terminated) after the common ones. */
static rt_run_t run_terasort(const char *url, const char *out, const char *json,
                             const char *const *args)
{
    const char *argv[64] = {"run",           "terasort",
                            "--master",      url,
                            "--output",      out,
                            "--json",        json,
                            "--conf",        local_conf,
                            "--conf",        "mesos.connect_timeout=10s",
                            "--conf",        "executor.register_timeout=30s",
                            "--no-progress", "--no-baseline"};
    size_t n = 16;

    for (size_t i = 0; args != NULL && args[i] != NULL; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return rt_cli(argv);
}

/* Fails unless every call but SUBSCRIBE carried the stream id its master gave, and got 202. */
static void expect_calls_in_stream(const master_t *m)
{
    const char *sid = NULL;
    size_t i;
    json_t *rec;

    json_array_foreach(m->log, i, rec)
    {
        const char *ev = json_string_value(json_object_get(rec, "event"));
        const char *type = json_string_value(json_object_get(rec, "type"));
        json_int_t status = json_integer_value(json_object_get(rec, "status"));
        if (strcmp(ev, "call") != 0 || status == 307)
            continue;
        if (type != NULL && strcmp(type, "SUBSCRIBE") == 0) {
            if (status == 200)
                sid = json_string_value(json_object_get(rec, "stream_id"));
            continue;
        }
        if (status != 202)
            fail_msg("call %s got HTTP %lld: %s", type, (long long)status,
                     json_dumps(rec, JSON_COMPACT));
        assert_non_null(sid);
        assert_string_equal(json_string_value(json_object_get(rec, "stream_id")), sid);
    }
}

/* Fails unless every update that reached state in states was acknowledged with its uuid. */
static void expect_acknowledged(const master_t *m, const char *const *states)
{
    json_t *updates = records(m, "update", NULL), *acks = records(m, "call", "ACKNOWLEDGE");
    size_t i, j;
    json_t *u, *a;

    json_array_foreach(updates, i, u)
    {
        bool wanted = false, found = false;
        for (size_t s = 0; states[s] != NULL; s++)
            wanted |= strcmp(str_at(u, "state"), states[s]) == 0;
        if (!wanted)
            continue;
        json_array_foreach(acks, j, a)
        {
            if (strcmp(str_at(a, "body.acknowledge.uuid"), str_at(u, "uuid")) == 0 &&
                strcmp(str_at(a, "body.acknowledge.task_id.value"), str_at(u, "task_id")) == 0)
                found = true;
        }
        if (!found)
            fail_msg("%s of %s (uuid %s) was never acknowledged", str_at(u, "state"),
                     str_at(u, "task_id"), str_at(u, "uuid"));
    }
    json_decref(updates);
    json_decref(acks);
}

/* The id of the first offer made for agent (NULL: none). */
static const char *first_offer(const master_t *m, const char *agent, size_t nth)
{
    json_t *offers = records(m, "offer", NULL), *o;
    const char *id = NULL;
    size_t i, seen = 0;

    json_array_foreach(offers, i, o)
    {
        if (strcmp(str_at(o, "agent"), agent) == 0 && seen++ == nth) {
            id = str_at(o, "offer_id");
            break;
        }
    }
    json_decref(offers);
    return id;
}

/* Whether call (a DECLINE or ACCEPT record) names offer id. */
static bool call_names(json_t *call, const char *key, const char *id)
{
    json_t *ids = json_object_get(json_object_get(json_object_get(call, "body"), key), "offer_ids");
    size_t i;
    json_t *v;

    json_array_foreach(ids, i, v)
    {
        if (strcmp(json_string_value(json_object_get(v, "value")), id) == 0)
            return true;
    }
    return false;
}

/* The DECLINE record that names offer id, or fails. */
static json_t *declined(const master_t *m, const char *id)
{
    json_t *calls = records(m, "call", "DECLINE"), *c, *found = NULL;
    size_t i;

    json_array_foreach(calls, i, c)
    {
        if (found == NULL && call_names(c, "decline", id))
            found = c;
    }
    json_decref(calls);
    if (found == NULL)
        fail_msg("offer %s was never declined", id);
    return found;
}

/* ------------------------------------------------------------------------ */

#define RES_MEM "{\"name\":\"mem\",\"type\":\"SCALAR\",\"scalar\":{\"value\":65536},\"role\":\"*\"}"
#define RES_PORT                                                                                   \
    "{\"name\":\"ports\",\"type\":\"RANGES\",\"ranges\":{\"range\":[{\"begin\":31000,\"end\":"     \
    "32000}]},\"role\":\"*\"}"
#define CPUS(n)                                                                                    \
    "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":" n "},\"role\":\"*\"}"
#define RACK(r) "{\"name\":\"rack\",\"type\":\"TEXT\",\"text\":{\"value\":\"" r "\"}}"
#define ZONE_AB "{\"name\":\"zone\",\"type\":\"SET\",\"set\":{\"item\":[\"a\",\"b\"]}}"

/* The good agent: one reserved cpu for role spate, 7 unreserved ones. */
#define AGENT_GOOD                                                                                 \
    "{\"id\":\"S-good\",\"hostname\":\"localhost\",\"resources\":["                                \
    "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":1},\"role\":\"spate\","          \
    "\"reservations\":[{\"type\":\"DYNAMIC\",\"role\":\"spate\",\"principal\":\"ops\"}]}," CPUS(   \
        "7") "," RES_MEM "," RES_PORT "],\"attributes\":[" RACK("r1") "," ZONE_AB "]}"

/* An agent with cpus, plenty of mem, a rack and zones a and b; extra: more fields ("broken"). */
#define AGENT(id, extra, cpus, rack)                                                               \
    "{\"id\":\"" id "\"" extra                                                                     \
    ",\"resources\":[" CPUS(cpus) "," RES_MEM "],\"attributes\":[" RACK(rack) "," ZONE_AB "]}"

static void test_mesos_terasort_runs_on_offers(void **state)
{
    /* clang-format off */
    static const char scenario[] =
        "{\"masters\":1,\"heartbeat\":0.5,\"rescind_first_offer\":true,\"agents\":["
        AGENT_GOOD ","
        AGENT("S-small", "", "0.5", "r1") ","
        AGENT("S-r9", "", "8", "r9") ","
        AGENT("S-nores", ",\"broken\":\"no_resources\"", "8", "r1") ","
        AGENT("S-badcpus", ",\"broken\":\"bad_cpus\"", "8", "r1") ","
        AGENT("S-noagent", ",\"broken\":\"no_agent_id\"", "8", "r1") ","
        AGENT("S-noid", ",\"broken\":\"no_id\"", "8", "r1") "]}";
    /* clang-format on */
    static const char *const declined_agents[] = {"S-small", "S-r9", "S-nores", "S-badcpus",
                                                  "S-noagent"};
    const char *args[] = {"--size",      "16m",
                          "--executors", "3",
                          "--cores",     "1",
                          "--memory",    "512m",
                          "--conf",      "offers.max_executors=2",
                          "--conf",      "offers.constraints=rack:r1,r2;zone:a",
                          "--conf",      "offers.refuse_seconds=33",
                          "--conf",      "mesos.role=spate",
                          NULL};
    char url[128], out[300], json[300], cli[PATH_MAX];
    master_t m;
    rt_run_t run;
    json_t *rep, *calls, *accept, *infos, *c;
    const char *rescinded, *sub_fw;
    size_t i;

    (void)state;
    master_start(&m, scenario);
    url_of(url, sizeof(url), &m, (const int[]){0}, 1);
    fresh(out, sizeof(out), "out-offers");
    fresh(json, sizeof(json), "offers.json");
    run = run_terasort(url, out, json, args);
    master_stop(&m);
    rt_expect_ok(&run, "spate run terasort --master");
    rep = rt_json_load(json);
    rt_expect_report(rep, 2, true);
    assert_int_equal(strncmp(str_at(rep, "executors.0.name"), "exec-", 5), 0);
    rt_expect_sorted(out, (16u << 20) / 100, scratch);

    /* One subscription; every other call in its stream. */
    calls = records(&m, "call", "SUBSCRIBE");
    assert_int_equal(json_array_size(calls), 1);
    sub_fw = str_at(json_array_get(calls, 0), "framework_id");
    assert_string_equal(str_at(json_array_get(calls, 0), "body.subscribe.framework_info.roles.0"),
                        "spate");
    json_decref(calls);
    expect_calls_in_stream(&m);

    /* Declines: too small, constraints, missing fields; each for offers.refuse_seconds. */
    for (i = 0; i < sizeof(declined_agents) / sizeof(declined_agents[0]); i++) {
        const char *id = first_offer(&m, declined_agents[i], 0);
        json_t *d;
        if (id == NULL)
            fail_msg("agent %s was never offered", declined_agents[i]);
        d = declined(&m, id);
        if (json_real_value(rt_json_at(d, "body.decline.filters.refuse_seconds")) != 33.0)
            fail_msg("offer %s declined with %s", id, json_dumps(d, JSON_COMPACT));
        assert_string_equal(str_at(d, "body.framework_id.value"), sub_fw);
    }
    assert_non_null(strstr(run.err, "too small"));
    assert_non_null(strstr(run.err, "constraints unmet"));
    assert_non_null(strstr(run.err, "malformed"));
    assert_non_null(strstr(run.err, "without an id"));

    /* The rescinded offer: never accepted nor declined. */
    calls = records(&m, "rescind", NULL);
    assert_int_equal(json_array_size(calls), 1);
    rescinded = str_at(json_array_get(calls, 0), "offer_id");
    assert_string_equal(rescinded, first_offer(&m, "S-good", 0));
    json_decref(calls);
    calls = records(&m, "call", NULL);
    json_array_foreach(calls, i, c)
    {
        if (call_names(c, "decline", rescinded) || call_names(c, "accept", rescinded))
            fail_msg("the rescinded offer %s was used: %s", rescinded, json_dumps(c, JSON_COMPACT));
    }
    json_decref(calls);

    /* One ACCEPT launching both executors (max_executors 2 of --executors 3) from one offer. */
    calls = records(&m, "call", "ACCEPT");
    assert_int_equal(json_array_size(calls), 1);
    accept = json_array_get(calls, 0);
    assert_true(call_names(accept, "accept", first_offer(&m, "S-good", 1)));
    infos = rt_json_at(accept, "body.accept.operations.0.launch.task_infos");
    assert_int_equal(json_array_size(infos), 2);
    assert_non_null(realpath(getenv("SPATE_CLI"), cli));
    for (i = 0; i < 2; i++) {
        json_t *ti = json_array_get(infos, i), *argv = rt_json_at(ti, "command.arguments");
        json_t *vars = rt_json_at(ti, "command.environment.variables"), *r;
        const char *id = str_at(ti, "task_id.value"), *secret = NULL;
        double cpus = 0, mem = 0;
        bool reserved = false, has_name = false;
        size_t k;

        assert_string_equal(str_at(ti, "agent_id.value"), "S-good");
        assert_false(json_is_true(rt_json_at(ti, "command.shell")));
        assert_string_equal(str_at(ti, "command.value"), cli);
        assert_string_equal(json_string_value(json_array_get(argv, 0)), cli);
        json_array_foreach(vars, k, r)
        {
            if (strcmp(str_at(r, "name"), "SPATE_SECRET") == 0)
                secret = str_at(r, "value");
        }
        assert_non_null(secret);
        assert_true(strlen(secret) >= 16);
        json_array_foreach(argv, k, r)
        {
            const char *a = json_string_value(r);
            assert_null(strstr(a, secret));
            if (strcmp(a, "--name") == 0)
                has_name = strcmp(json_string_value(json_array_get(argv, k + 1)), id) == 0;
        }
        assert_true(has_name);
        json_array_foreach(rt_json_at(ti, "resources"), k, r)
        {
            assert_string_equal(str_at(r, "allocation_info.role"), "spate");
            if (strcmp(str_at(r, "name"), "cpus") == 0) {
                cpus += json_number_value(rt_json_at(r, "scalar.value"));
                if (json_object_get(r, "reservations") != NULL) {
                    assert_string_equal(str_at(r, "reservations.0.principal"), "ops");
                    assert_string_equal(str_at(r, "role"), "spate");
                    reserved = true;
                }
            } else {
                assert_string_equal(str_at(r, "name"), "mem");
                mem += json_number_value(rt_json_at(r, "scalar.value"));
            }
        }
        assert_true(cpus == 1.0);
        assert_true(mem == 512.0 + 384.0);
        /* The reserved cpu goes first, to the first executor. */
        assert_true(reserved == (i == 0));
    }
    json_decref(calls);
    calls = records(&m, "task_error", NULL);
    assert_int_equal(json_array_size(calls), 0);
    json_decref(calls);

    /* Updates acknowledged; SUPPRESS once running; TEARDOWN last. */
    expect_acknowledged(&m, (const char *const[]){"TASK_STARTING", "TASK_RUNNING", NULL});
    calls = records(&m, "call", NULL);
    {
        size_t n = json_array_size(calls), suppress = 0, acc = 0;
        json_array_foreach(calls, i, c)
        {
            const char *type = str_at(c, "type");
            if (strcmp(type, "SUPPRESS") == 0 && suppress == 0)
                suppress = i;
            if (strcmp(type, "ACCEPT") == 0)
                acc = i;
        }
        assert_true(suppress > acc);
        assert_string_equal(str_at(json_array_get(calls, n - 1), "type"), "TEARDOWN");
    }
    json_decref(calls);
    json_decref(rep);
    rt_free(&run);
    master_free(&m);
    rt_rmtree(out);
}

/*
 * One executor per agent: two failures on one agent would rule it out
 * (SP__OFFER_MAX_AGENT_FAILURES), and killing every executor must not.
 */
#define AGENT_1CPU(id) "{\"id\":\"" id "\",\"resources\":[" CPUS("1") "," RES_MEM "]}"

static void test_mesos_killed_executors_are_replaced(void **state)
{
    char scenario[1024], in[300], url[128], out[300], json[300], dir[300], conf[400];
    const char *args[] = {"--executors", "2", "--cores", "1",  "--memory", "512m",
                          "--input",     in,  "--conf",  conf, NULL};
    master_t m;
    rt_run_t run;
    json_t *rep, *recs, *r;
    size_t i;
    bool failed0 = false, failed1 = false, revive_after = false, killed = false;
    unsigned launched = 0;

    (void)state;
    /* Shuffle files of its own, so that only this run's map outputs set the kill off. */
    rt_path(dir, sizeof(dir), base, "kill-local");
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(conf, sizeof(conf), "shuffle.local_dirs=%s", dir);
    rt_path(in, sizeof(in), base, "kill-in");
    run = RT_CLI("gensort", "--files", "4", STR(KILL_RECORDS), in);
    rt_expect_ok(&run, "spate gensort");
    rt_free(&run);
    snprintf(scenario, sizeof(scenario),
             "{\"masters\":1,\"heartbeat\":0.5,\"agents\":[" AGENT_1CPU("S1") "," AGENT_1CPU(
                 "S2") "," AGENT_1CPU("S3") "],\"kill_on_file\":{\"dir\":\"%s\",\"suffix\":"
                                            "\".index\"}}",
             dir);
    master_start(&m, scenario);
    url_of(url, sizeof(url), &m, (const int[]){0}, 1);
    fresh(out, sizeof(out), "out-kill");
    fresh(json, sizeof(json), "kill.json");
    run = run_terasort(url, out, json, args);
    master_stop(&m);
    rt_expect_ok(&run, "spate run terasort --master (executors killed)");
    rep = rt_json_load(json);
    rt_expect_report(rep, 0, false);
    assert_true(rt_json_int(rep, "recovery.executors_lost") >= 1);
    rt_expect_sorted(out, KILL_RECORDS, scratch);
    assert_non_null(strstr(run.err, "launching a replacement"));

    json_array_foreach(m.log, i, r)
    {
        const char *ev = str_at(r, "event");
        if (strcmp(ev, "kill_on_file") == 0)
            killed = true;
        /* TASK_KILLED when our KILL (the driver saw the loss first) beat the exit's report. */
        if (strcmp(ev, "update") == 0 && (strcmp(str_at(r, "state"), "TASK_FAILED") == 0 ||
                                          strcmp(str_at(r, "state"), "TASK_KILLED") == 0)) {
            failed0 |= strcmp(str_at(r, "task_id"), "exec-0") == 0;
            failed1 |= strcmp(str_at(r, "task_id"), "exec-1") == 0;
        }
        if (strcmp(ev, "call") == 0 && json_object_get(r, "type") != NULL &&
            strcmp(str_at(r, "type"), "REVIVE") == 0 && killed)
            revive_after = true;
        if (strcmp(ev, "process") == 0)
            launched++;
    }
    assert_true(killed);
    assert_true(failed0 && failed1);
    assert_true(revive_after);
    /* Both replaced (exec-2 and exec-3 at least), every launch valid. */
    if (launched < 4)
        fail_msg("%u executor processes started, want the 2 killed ones replaced", launched);
    recs = records(&m, "task_error", NULL);
    assert_int_equal(json_array_size(recs), 0);
    json_decref(recs);
    expect_calls_in_stream(&m);
    json_decref(rep);
    rt_free(&run);
    master_free(&m);
    rt_rmtree(out);
    rt_rmtree(in);
}

static void test_mesos_master_failover(void **state)
{
    static const char scenario[] =
        "{\"masters\":2,\"leader\":0,\"heartbeat\":0.2,\"drop_after_subscribe\":1,"
        "\"failover_when_running\":2,\"failover_delay\":0.3,\"failover_mode\":\"stall\","
        "\"agents\":[{\"id\":\"S1\",\"resources\":[" CPUS("8") "," RES_MEM "]}]}";
    const char *args[] = {"--executors", "2",      "--cores", "1", "--memory",
                          "512m",        "--size", "16m",     NULL};
    char url[128], out[300], json[300];
    master_t m;
    rt_run_t run;
    json_t *subs, *r, *calls;
    const char *fw;
    size_t i;
    bool redirected = false, failover = false, on_new = false, teardown_new = false;

    (void)state;
    master_start(&m, scenario);
    /* The non-leader first: it answers 307. */
    url_of(url, sizeof(url), &m, (const int[]){1, 0}, 2);
    fresh(out, sizeof(out), "out-failover");
    fresh(json, sizeof(json), "failover.json");
    run = run_terasort(url, out, json, args);
    master_stop(&m);
    rt_expect_ok(&run, "spate run terasort --master (failover)");
    rt_expect_sorted(out, (16u << 20) / 100, scratch);
    assert_non_null(strstr(run.err, "heartbeats missed"));

    subs = records(&m, "call", "SUBSCRIBE");
    assert_true(json_array_size(subs) >= 3);
    fw = str_at(json_array_get(subs, 0), "framework_id");
    assert_null(json_object_get(
        rt_json_at(json_array_get(subs, 0), "body.subscribe.framework_info"), "id"));
    for (i = 1; i < json_array_size(subs); i++) {
        r = json_array_get(subs, i);
        /* Re-subscriptions name the framework, in the info and at the top. */
        assert_string_equal(str_at(r, "body.subscribe.framework_info.id.value"), fw);
        assert_string_equal(str_at(r, "body.framework_id.value"), fw);
        assert_string_equal(str_at(r, "framework_id"), fw);
        on_new |= rt_json_int(r, "master") == 1;
    }
    json_decref(subs);
    json_array_foreach(m.log, i, r)
    {
        const char *ev = str_at(r, "event");
        if (strcmp(ev, "call") == 0 && rt_json_int(r, "status") == 307)
            redirected = true;
        if (strcmp(ev, "failover") == 0)
            failover = true;
    }
    calls = records(&m, "call", "TEARDOWN");
    json_array_foreach(calls, i, r)
    {
        if (rt_json_int(r, "master") == 1 && rt_json_int(r, "status") == 202)
            teardown_new = true;
    }
    json_decref(calls);
    assert_true(redirected);
    assert_true(failover);
    assert_true(on_new);
    assert_true(teardown_new);
    expect_calls_in_stream(&m);
    rt_free(&run);
    master_free(&m);
    rt_rmtree(out);
}

static void test_mesos_leader_from_zookeeper(void **state)
{
    static const char scenario[] =
        "{\"masters\":2,\"leader\":0,\"zookeeper\":true,\"heartbeat\":1.0,"
        "\"failover_when_running\":2,\"failover_delay\":0.3,\"failover_mode\":\"stall\","
        "\"agents\":[{\"id\":\"S1\",\"resources\":[" CPUS("8") "," RES_MEM "]}]}";
    const char *args[] = {"--executors", "2",      "--cores", "1", "--memory",
                          "512m",        "--size", "16m",     NULL};
    char url[128], out[300], json[300];
    master_t m;
    rt_run_t run;
    json_t *r;
    size_t i;
    bool on_old = false, on_new = false, teardown_new = false;

    (void)state;
    master_start(&m, scenario);
    if (m.zk_port == 0) {
        /* Visible in the test's output: the ZooKeeper server could not start here. */
        printf("SKIPPED: no ZooKeeper server for the zk:// test: %s\n", m.zk_error);
        master_stop(&m);
        master_free(&m);
        skip();
    }
    snprintf(url, sizeof(url), "mesos://zk://127.0.0.1:%d/mesos", m.zk_port);
    fresh(out, sizeof(out), "out-zk");
    fresh(json, sizeof(json), "zk.json");
    run = run_terasort(url, out, json, args);
    master_stop(&m);
    rt_expect_ok(&run, "spate run terasort --master mesos://zk://...");
    rt_expect_sorted(out, (16u << 20) / 100, scratch);
    /* The watch moved the subscription when the leader's znode went, before any 307. */
    assert_non_null(strstr(run.err, "ZooKeeper names another leader"));
    json_array_foreach(m.log, i, r)
    {
        const char *ev = str_at(r, "event");
        if (strcmp(ev, "call") != 0 || json_object_get(r, "type") == NULL)
            continue;
        if (strcmp(str_at(r, "type"), "SUBSCRIBE") == 0 && rt_json_int(r, "status") == 200) {
            on_old |= rt_json_int(r, "master") == 0;
            on_new |= rt_json_int(r, "master") == 1;
        }
        if (strcmp(str_at(r, "type"), "TEARDOWN") == 0 && rt_json_int(r, "master") == 1)
            teardown_new = rt_json_int(r, "status") == 202;
    }
    assert_true(on_old && on_new && teardown_new);
    expect_calls_in_stream(&m);
    rt_free(&run);
    master_free(&m);
    rt_rmtree(out);
}

/* A TCP port on 127.0.0.1 with nothing listening (bound, then closed). */
static int closed_port(void)
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

/*
 * Runs terasort against url, expecting exit status and every phrase in stderr; rt_cli's
 * deadline only guards against a hang.
 */
static void expect_refused(const char *url, int status, const char *const *phrases,
                           const char *what)
{
    char out[300];
    const char *argv[] = {"run",
                          "terasort",
                          "--size",
                          "1m",
                          "--output",
                          out,
                          "--master",
                          url,
                          "--conf",
                          "mesos.connect_timeout=1s",
                          "--no-progress",
                          "--no-baseline",
                          NULL};
    rt_run_t run;

    fresh(out, sizeof(out), "out-bad");
    run = rt_cli(argv);
    rt_expect_fail(&run, status, NULL, what);
    for (size_t i = 0; phrases[i] != NULL; i++)
        if (strstr(run.err, phrases[i]) == NULL)
            fail_msg("%s: stderr does not say \"%s\": %s", what, phrases[i], rt_tail(run.err));
    rt_expect_no_output(out);
    rt_free(&run);
}

static void test_mesos_bad_masters_are_refused(void **state)
{
    /* One master process, a port per misbehaviour, each port answering as the leader. */
    static const char scenario[] =
        "{\"masters\":7,\"all_lead\":true,\"per_master\":["
        "{\"subscribe_status\":[401,\"Unauthorized: the principal is unknown\"]},"
        "{\"subscribe_status\":[503,\"No leader elected\"]},"
        "{\"stream\":\"bad_length\"},{\"stream\":\"bad_json\"},{\"stream\":\"truncated\"},"
        "{\"stream\":\"oversize\"},{\"stream\":\"no_stream_id\"}]}";
    static const struct {
        const char *what;
        int status;
        const char *phrases[4];
    } cases[] = {
        {"a 401", 2, {"HTTP 401", "the principal is unknown", NULL}},
        {"a 503", 1, {"HTTP 503", "No leader elected", "mesos.connect_timeout"}},
        {"a bad RecordIO length", 1, {"malformed", "RecordIO", NULL}},
        {"an event that is not JSON", 1, {"malformed", "not JSON", NULL}},
        {"a truncated stream", 1, {"RecordIO", "truncated", NULL}},
        {"an oversize record", 1, {"RecordIO", "cap", NULL}},
        {"no Mesos-Stream-Id", 1, {"Mesos-Stream-Id", NULL}},
    };
    char url[128];
    master_t m;

    (void)state;
    master_start(&m, scenario);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        url_of(url, sizeof(url), &m, (const int[]){(int)i}, 1);
        expect_refused(url, cases[i].status, cases[i].phrases, cases[i].what);
    }
    master_stop(&m);
    master_free(&m);
}

static void test_mesos_unreachable_masters_are_refused(void **state)
{
    char url[128];
    rt_run_t run;

    (void)state;
    snprintf(url, sizeof(url), "mesos://127.0.0.1:%d,127.0.0.1:%d", closed_port(), closed_port());
    expect_refused(url, 1, (const char *const[]){"could not subscribe", "Couldn't connect", NULL},
                   "unreachable masters");
    snprintf(url, sizeof(url), "mesos://zk://127.0.0.1:%d/mesos", closed_port());
    expect_refused(url, 1, (const char *const[]){"could not subscribe", "ZooKeeper", NULL},
                   "unreachable ZooKeeper");
    /* Bad URLs and combinations: refused before anything starts. */
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "http://127.0.0.1:5050");
    rt_expect_fail(&run, 2, "mesos://", "an http:// master");
    rt_free(&run);
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "mesos://");
    rt_expect_fail(&run, 2, "names no master", "an empty master list");
    rt_free(&run);
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "mesos://127.0.0.1:0");
    rt_expect_fail(&run, 2, "is not HOST:PORT", "port 0");
    rt_free(&run);
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "mesos://127.0.0.1:5050,:5050");
    rt_expect_fail(&run, 2, "is not HOST:PORT", "an empty host");
    rt_free(&run);
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "mesos://127.0.0.1:5050",
                 "--wait-executors", "2");
    rt_expect_fail(&run, 2, "--master does not go with", "--master with --wait-executors");
    rt_free(&run);
    run = RT_CLI("run", "terasort", "--size", "1m", "--master", "mesos://127.0.0.1:5050", "--conf",
                 "offers.max_cores=1", "--cores", "2");
    rt_expect_fail(&run, 2, "offers.max_cores", "max_cores below one executor");
    rt_free(&run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mesos_terasort_runs_on_offers),
        cmocka_unit_test(test_mesos_killed_executors_are_replaced),
        cmocka_unit_test(test_mesos_master_failover),
        cmocka_unit_test(test_mesos_leader_from_zookeeper),
        cmocka_unit_test(test_mesos_bad_masters_are_refused),
        cmocka_unit_test(test_mesos_unreachable_masters_are_refused),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
