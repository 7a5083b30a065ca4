/*
 * A Mesos framework that runs spate's executors: the v1 scheduler HTTP API
 * (POST /api/v1/scheduler, JSON) over libcurl, with the offer policy of
 * offers.c.
 *
 * One thread owns everything: a curl multi handle carrying the SUBSCRIBE
 * request, whose response is the event stream (RecordIO, recordio.c), and
 * a second easy handle for calls (ACCEPT, DECLINE, ACKNOWLEDGE, SUPPRESS,
 * REVIVE, KILL, RECONCILE, TEARDOWN), each sent synchronously with the
 * stream's Mesos-Stream-Id. The loop: poll the stream (at most 100 ms, or
 * until woken), decode what arrived into a queue of events, handle them
 * (offers are gathered first and decided after the batch, so an offer
 * rescinded in the same batch is never used), then handle the driver's
 * news, keep SUPPRESS/REVIVE in step with the executors wanted, and watch
 * the heartbeats.
 *
 * Executors are tasks "exec-N" whose CommandInfo runs `spate executor
 * --driver ADDR --name exec-N` with the secret in the task's environment;
 * the driver reports each executor by that name, so the scheduler knows
 * which task an executor is. A task counts as running from its ACCEPT until
 * a terminal update (other than TASK_FINISHED of an executor the driver
 * knew: the driver's own "lost" decides that one, so executors leaving at
 * the job's end are not replaced) or the driver losing it (then it is
 * killed). Every loss that is a failure counts against its agent (two and
 * offers.c skips the agent) and REVIVEs, which lifts the decline filters,
 * so a replacement comes from the next fitting offer.
 *
 * Masters: a list is tried in turn; a 307 names the leader (Location may
 * be scheme-relative, "//host:port/path", which curl resolves); with zk://
 * the leader comes from a ZooKeeper watch (zk.h) and a change of leader
 * moves the subscription. A broken stream, a malformed or truncated one, or
 * heartbeat_interval x mesos.heartbeat_misses without an event makes the
 * subscription again with backoff (0, then 250 ms doubling to 5 s), with
 * the framework id, so the master keeps our tasks (FrameworkInfo's
 * failover_timeout is mesos.failover_timeout); a RECONCILE then learns what
 * happened to them meanwhile.
 *
 * Masters are reached directly: http_proxy and the like are ignored, as
 * Mesos' own components ignore them for cluster-internal traffic.
 *
 * Errors found on this thread have no caller to return to: they are logged
 * here, except before the first SUBSCRIBED, where sp__mesos_start waits for
 * the outcome and raises it on its own thread.
 */
#include "mesos.h"

#include "offers.h"
#include "recordio.h"
#include "zk.h"

#include "common_int.h"
#include "control/control.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdatomic.h>
#include <jansson.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SP_MESOS_PATH         "/api/v1/scheduler"
#define SP_MESOS_URL_MAX      600
#define SP_MESOS_CALL_MS      10000
#define SP_MESOS_POLL_MS      100
#define SP_MESOS_BACKOFF_MIN  250000000ull
#define SP_MESOS_BACKOFF_MAX  5000000000ull
#define SP_MESOS_STOP_WAIT_NS 5000000000ull  /* for executors to end by themselves */
#define SP_MESOS_STOP_MAX_NS  15000000000ull /* for the TEARDOWN to get through */
#define SP_MESOS_REDIRECTS    8
#define SP_MESOS_TASK_ID_MAX  64

typedef struct sp_mtask {
    char id[SP_MESOS_TASK_ID_MAX];
    char agent[256];
    char host[256];
    char state[32]; /* the last state Mesos reported, "" before any */
    bool ready;     /* the driver has it as an executor */
    bool exited;    /* a terminal update came */
    bool gone;      /* no longer counted as running */
    bool killing;   /* we asked for a KILL */
    bool kill_sent;
} sp_mtask_t;

/* Why the first subscription is still pending, succeeded or failed. */
typedef enum sp_minit {
    SP_MINIT_PENDING = 0,
    SP_MINIT_OK = 1,
    SP_MINIT_FAILED = 2,
} sp_minit_t;

struct sp__mesos {
    /* The driver, once it exists: told at once when an executor's task ends. */
    _Atomic(sp__driver_t *) run_driver;
    /* Settings (copied at start). */
    char *master_url, *name, *command, *driver, *secret, *role, *user, *principal;
    uint32_t wanted;
    double cpus, mem, refuse_s, failover_s;
    uint64_t connect_ns;
    int64_t misses;
    sp__offer_constraints_t *constraints;

    /* Masters: a list, or the ZooKeeper leader. */
    char **masters;
    size_t nmasters, cur_master;
    char leader[SP_MESOS_URL_MAX]; /* URL the next SUBSCRIBE goes to */
    char via[SP_MESOS_URL_MAX];    /* URL of the current subscription */
    bool zk;
    sp__zk_watch_t *zkw;

    /* The event stream. */
    CURLM *multi;
    CURL *sub, *call;
    struct curl_slist *sub_headers;
    char *sub_body;
    char curl_err[CURL_ERROR_SIZE]; /* the stream's */
    char call_err[CURL_ERROR_SIZE]; /* the last call's */
    sp__recordio_t *rio;
    json_t *events; /* decoded, not yet handled */
    char stream_id[130];
    bool stream_id_bad;
    char body[1024]; /* a non-200 SUBSCRIBE answer's first bytes */
    size_t body_len;
    char call_body[1024]; /* the last call's answer's first bytes */
    size_t call_len;
    sp_status_t stream_st; /* what broke the stream on our side (SP_OK: nothing) */
    char stream_msg[512];
    bool connected, subscribed;
    unsigned redirects;
    uint64_t attempt_ns, last_event_ns, next_attempt_ns, backoff_ns;
    double heartbeat_s;
    char framework_id[256];
    char last_error[1024]; /* why the last subscription attempt failed */

    /* Executors. */
    sp_mtask_t *tasks;
    size_t ntasks, cap_tasks;
    json_t *agent_failures; /* agent id -> failed executors */
    json_t *offers;         /* of this batch, not yet decided */
    bool suppressed, need_revive;
    unsigned warned;           /* verdicts already explained at warning level (bit per verdict) */
    uint64_t balance_after_ns; /* a failed SUPPRESS/REVIVE/KILL is retried from then */

    /* Shared with other threads, under lock. */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    json_t *news; /* [name, lost] pairs from the driver */
    char zk_leader[SP__ZK_HOST_PORT_MAX];
    bool zk_changed;
    bool stop_requested;
    sp_minit_t init;
    sp_status_t init_st;
    char init_msg[2048];

    /* This thread's own. */
    bool stopping, fatal, torn_down;
    uint64_t stop_ns;
    sp__mesos_stats_t stats;
};

static pthread_once_t sp_mesos_curl_once = PTHREAD_ONCE_INIT;
static CURLcode sp_mesos_curl_rc;

static void sp_mesos_curl_init(void) { sp_mesos_curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ------------------------------------------------------------------------ */
/* Master URLs                                                               */
/* ------------------------------------------------------------------------ */

/* Checks one "HOST:PORT" (HOST a name, IPv4, or [IPv6]) of [b, e). */
static sp_status_t sp_mesos_host_port_check(const char *url, const char *b, const char *e)
{
    const char *colon = NULL;
    char *end;
    long port;

    if (b < e && *b == '[') {
        const char *close = memchr(b, ']', (size_t)(e - b));
        if (close == NULL || close == b + 1 || close + 1 >= e || close[1] != ':')
            goto bad;
        colon = close + 1;
    } else {
        for (const char *p = b; p < e; p++)
            if (*p == ':')
                colon = p;
        if (colon == NULL || colon == b)
            goto bad;
        for (const char *p = b; p < colon; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
                goto bad;
    }
    if (colon + 1 >= e || colon[1] < '0' || colon[1] > '9')
        goto bad;
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || end != e || port < 1 || port > 65535)
        goto bad;
    return SP_OK;
bad:
    return SP_RAISE(SP_ERR_INVALID_PARAM,
                    "--master %s: '%.*s' is not HOST:PORT (want mesos://HOST:PORT[,HOST:PORT...] "
                    "or mesos://zk://HOST:PORT[,...]/PATH)",
                    url, (int)(e - b), b);
}

sp_status_t sp__mesos_url_check(const char *url)
{
    const char *p;
    sp_status_t st;

    if (url == NULL || strncmp(url, "mesos://", 8) != 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "--master %s: only mesos://HOST:PORT[,HOST:PORT...] and "
                        "mesos://zk://HOST:PORT[,...]/PATH are supported",
                        url != NULL ? url : "(null)");
    p = url + 8;
    if (strncmp(p, "zk://", 5) == 0) {
        sp__zk_url_t zk;
        if (sp__zk_url_parse(p, &zk) != SP_OK)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "--master %s: %s", url, sp_last_error());
        return SP_OK;
    }
    if (*p == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "--master %s names no master", url);
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *e = comma != NULL ? comma : p + strlen(p);
        if ((st = sp_mesos_host_port_check(url, p, e)) != SP_OK)
            return st;
        if (comma == NULL)
            return SP_OK;
        p = comma + 1;
    }
}

static void sp_mesos_set_leader(sp__mesos_t *m, const char *host_port)
{
    snprintf(m->leader, sizeof(m->leader), "http://%s" SP_MESOS_PATH, host_port);
}

static sp_status_t sp_mesos_masters_parse(sp__mesos_t *m, const char *url)
{
    const char *p = url + 8;
    size_t n = 1;

    if (strncmp(p, "zk://", 5) == 0) {
        m->zk = true;
        return SP_OK;
    }
    for (const char *c = p; *c != '\0'; c++)
        n += *c == ',';
    if ((m->masters = sp__calloc(n, sizeof(*m->masters))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu masters", n);
    for (size_t i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if ((m->masters[i] = sp__malloc(len + 1)) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a master's address");
        memcpy(m->masters[i], p, len);
        m->masters[i][len] = '\0';
        m->nmasters++;
        p += len + 1;
    }
    sp_mesos_set_leader(m, m->masters[0]);
    return SP_OK;
}

/* The next listed master (after a failure), or the ZooKeeper leader. */
static void sp_mesos_rotate(sp__mesos_t *m)
{
    if (m->zk) {
        pthread_mutex_lock(&m->lock);
        if (m->zk_leader[0] != '\0')
            sp_mesos_set_leader(m, m->zk_leader);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    m->cur_master = (m->cur_master + 1) % m->nmasters;
    sp_mesos_set_leader(m, m->masters[m->cur_master]);
}

static void sp_mesos_zk_cb(void *arg, const char *host_port)
{
    sp__mesos_t *m = arg;

    pthread_mutex_lock(&m->lock);
    snprintf(m->zk_leader, sizeof(m->zk_leader), "%s", host_port != NULL ? host_port : "");
    m->zk_changed = true;
    pthread_mutex_unlock(&m->lock);
    if (host_port != NULL)
        sp_info("Mesos: ZooKeeper names %s the leading master", host_port);
    else
        sp_warn("Mesos: ZooKeeper names no leading master at the moment");
    curl_multi_wakeup(m->multi);
}

/* ------------------------------------------------------------------------ */
/* Calls                                                                     */
/* ------------------------------------------------------------------------ */

static size_t sp_mesos_on_call_body(char *ptr, size_t size, size_t n, void *arg)
{
    sp__mesos_t *m = arg;
    size_t len = size * n, room = sizeof(m->call_body) - 1 - m->call_len;

    memcpy(m->call_body + m->call_len, ptr, SP_MIN(len, room));
    m->call_len += SP_MIN(len, room);
    m->call_body[m->call_len] = '\0';
    return len;
}

static void sp_mesos_stream_drop(sp__mesos_t *m, const char *why);

/*
 * Sends call (stolen) with the framework id and the stream id to the
 * master of the subscription; SP_OK when it answered 202. A failure is
 * logged here, with the master's answer.
 */
static sp_status_t sp_mesos_call(sp__mesos_t *m, json_t *call)
{
    const char *type = json_string_value(json_object_get(call, "type"));
    char header[200], what[32];
    struct curl_slist *headers = NULL, *h;
    long code = 0;
    char *text;
    CURLcode rc;
    sp_status_t st = SP_OK;

    snprintf(what, sizeof(what), "%s", type != NULL ? type : "?");
    if (!m->subscribed) {
        json_decref(call);
        return SP_RAISE(SP_ERR_PEER_LOST, "Mesos: %s not sent: not subscribed", what);
    }
    if (json_object_set_new(call, "framework_id", json_pack("{s:s}", "value", m->framework_id)) !=
            0 ||
        (text = json_dumps(call, JSON_COMPACT)) == NULL) {
        json_decref(call);
        sp_warn("Mesos: no memory for a %s call", what);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %s call", what);
    }
    json_decref(call);
    snprintf(header, sizeof(header), "Mesos-Stream-Id: %s", m->stream_id);
    if ((h = curl_slist_append(headers, "Content-Type: application/json")) == NULL ||
        (headers = h, h = curl_slist_append(headers, "Accept: application/json")) == NULL ||
        (headers = h, h = curl_slist_append(headers, header)) == NULL) {
        curl_slist_free_all(headers);
        free(text);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %s call", what);
    }
    headers = h;
    m->call_len = 0;
    m->call_body[0] = '\0';
    curl_easy_reset(m->call);
    curl_easy_setopt(m->call, CURLOPT_URL, m->via);
    curl_easy_setopt(m->call, CURLOPT_POST, 1L);
    curl_easy_setopt(m->call, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(m->call, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    curl_easy_setopt(m->call, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(m->call, CURLOPT_WRITEFUNCTION, sp_mesos_on_call_body);
    curl_easy_setopt(m->call, CURLOPT_WRITEDATA, m);
    curl_easy_setopt(m->call, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(m->call, CURLOPT_PROXY, "");
    curl_easy_setopt(m->call, CURLOPT_TIMEOUT_MS, (long)SP_MESOS_CALL_MS);
    curl_easy_setopt(m->call, CURLOPT_ERRORBUFFER, m->call_err);
    m->call_err[0] = '\0';
    sp_debug("Mesos: %s %s", what, text);
    rc = curl_easy_perform(m->call);
    curl_easy_getinfo(m->call, CURLINFO_RESPONSE_CODE, &code);
    if (rc != CURLE_OK) {
        st = SP_RAISE(SP_ERR_PEER_LOST, "Mesos: %s to %s: %s", what, m->via,
                      m->call_err[0] ? m->call_err : curl_easy_strerror(rc));
    } else if (code == 307) {
        char *loc = NULL;
        curl_easy_getinfo(m->call, CURLINFO_REDIRECT_URL, &loc);
        st = SP_RAISE(SP_ERR_PEER_LOST, "Mesos: %s: %s is no longer the leader (307 to %s)", what,
                      m->via, loc != NULL ? loc : "nowhere");
        if (loc != NULL && strlen(loc) < sizeof(m->leader))
            snprintf(m->leader, sizeof(m->leader), "%s", loc);
    } else if (code != 202 && code != 200) {
        st = SP_RAISE(SP_ERR_PEER_LOST, "Mesos: %s refused by %s: HTTP %ld: %s", what, m->via, code,
                      m->call_body);
    }
    curl_slist_free_all(headers);
    free(text);
    if (st != SP_OK) {
        m->stats.calls_failed++;
        sp_warn("%s", sp_last_error());
        /* A master that lost leadership or forgot our stream needs a new subscription. */
        if (rc != CURLE_OK || code == 307 || code == 400 || code == 403)
            sp_mesos_stream_drop(m, sp_last_error());
    }
    return st;
}

static json_t *sp_mesos_roles(sp__mesos_t *m) { return json_pack("[s]", m->role); }

static void sp_mesos_suppress(sp__mesos_t *m)
{
    if (sp_mesos_call(m, json_pack("{s:s, s:{s:o}}", "type", "SUPPRESS", "suppress", "roles",
                                   sp_mesos_roles(m))) == SP_OK) {
        m->suppressed = true;
        sp_info("Mesos: %u executors running: offers suppressed", m->wanted);
    }
}

static void sp_mesos_revive(sp__mesos_t *m)
{
    if (sp_mesos_call(m, json_pack("{s:s, s:{s:o}}", "type", "REVIVE", "revive", "roles",
                                   sp_mesos_roles(m))) == SP_OK) {
        m->suppressed = false;
        m->need_revive = false;
        sp_info("Mesos: offers revived");
    }
}

static void sp_mesos_decline(sp__mesos_t *m, json_t *ids /* stolen */)
{
    if (json_array_size(ids) == 0) {
        json_decref(ids);
        return;
    }
    sp_mesos_call(m, json_pack("{s:s, s:{s:o, s:{s:f}}}", "type", "DECLINE", "decline", "offer_ids",
                               ids, "filters", "refuse_seconds", m->refuse_s));
}

/* ------------------------------------------------------------------------ */
/* Tasks                                                                     */
/* ------------------------------------------------------------------------ */

static sp_mtask_t *sp_mesos_task(sp__mesos_t *m, const char *id)
{
    for (size_t i = 0; id != NULL && i < m->ntasks; i++)
        if (strcmp(m->tasks[i].id, id) == 0)
            return &m->tasks[i];
    return NULL;
}

static uint32_t sp_mesos_active(const sp__mesos_t *m)
{
    uint32_t n = 0;

    for (size_t i = 0; i < m->ntasks; i++)
        n += !m->tasks[i].gone;
    return n;
}

static unsigned sp_mesos_agent_failures(const sp__mesos_t *m, const char *agent)
{
    return (unsigned)json_integer_value(json_object_get(m->agent_failures, agent));
}

/* The task no longer counts as running; a failure counts against its agent. */
static void sp_mesos_task_gone(sp__mesos_t *m, sp_mtask_t *t, bool failure)
{
    if (t->gone)
        return;
    t->gone = true;
    if (!failure)
        return;
    m->stats.tasks_failed++;
    unsigned failed = sp_mesos_agent_failures(m, t->agent) + 1;
    json_object_set_new(m->agent_failures, t->agent, json_integer(failed));
    if (failed == SP__OFFER_MAX_AGENT_FAILURES)
        sp_warn("Mesos: %u executors failed on agent %s (%s): no more executors go there", failed,
                t->agent, t->host);
    if (!m->stopping)
        m->need_revive = true;
}

static void sp_mesos_kill(sp__mesos_t *m, sp_mtask_t *t)
{
    if (t->kill_sent || t->exited || !m->subscribed)
        return;
    if (sp_mesos_call(m, json_pack("{s:s, s:{s:{s:s}, s:{s:s}}}", "type", "KILL", "kill", "task_id",
                                   "value", t->id, "agent_id", "value", t->agent)) == SP_OK)
        t->kill_sent = true;
}

static json_t *sp_mesos_task_info(sp__mesos_t *m, const char *id, const char *agent,
                                  json_t *resources)
{
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    char name[SP_MESOS_TASK_ID_MAX + 32];

    snprintf(name, sizeof(name), "spate executor %s", id);
    /* shell false: value is the program, arguments its argv; the secret is only in the env. */
    return json_pack(
        "{s:s, s:{s:s}, s:{s:s}, s:O, s:{s:b, s:s, s:[s,s,s,s,s,s,s,s], s:{s:[{s:s, s:s}]}}}",
        "name", name, "task_id", "value", id, "agent_id", "value", agent, "resources", resources,
        "command", "shell", 0, "value", m->command, "arguments", m->command, "--log",
        levels[sp_log_level()], "executor", "--driver", m->driver, "--name", id, "environment",
        "variables", "name", "SPATE_SECRET", "value", m->secret);
}

/* Launches plan's executors on offer with one ACCEPT. */
static void sp_mesos_launch(sp__mesos_t *m, const json_t *offer, const sp__offer_plan_t *plan)
{
    const char *agent = sp__offer_agent_id(offer);
    const char *host = json_string_value(json_object_get(offer, "hostname"));
    json_t *infos = json_array();
    size_t first = m->ntasks;
    sp_status_t st;

    if (infos == NULL)
        return;
    if (m->ntasks + plan->executors > m->cap_tasks) {
        size_t cap = SP_MAX(m->cap_tasks * 2, m->ntasks + plan->executors + 8);
        sp_mtask_t *t = sp__realloc(m->tasks, cap * sizeof(*t));
        if (t == NULL) {
            sp_warn("Mesos: no memory for %u more tasks", plan->executors);
            json_decref(infos);
            return;
        }
        m->tasks = t;
        m->cap_tasks = cap;
    }
    for (unsigned e = 0; e < plan->executors; e++) {
        sp_mtask_t *t = &m->tasks[m->ntasks];
        memset(t, 0, sizeof(*t));
        snprintf(t->id, sizeof(t->id), "exec-%zu", m->ntasks);
        snprintf(t->agent, sizeof(t->agent), "%s", agent);
        snprintf(t->host, sizeof(t->host), "%s", host != NULL ? host : agent);
        if (json_array_append_new(
                infos, sp_mesos_task_info(m, t->id, agent, json_array_get(plan->resources, e))) !=
            0) {
            sp_warn("Mesos: no memory for a task info");
            json_decref(infos);
            for (size_t i = first; i < m->ntasks; i++)
                sp_mesos_task_gone(m, &m->tasks[i], false);
            return;
        }
        m->ntasks++;
    }
    st = sp_mesos_call(m, json_pack("{s:s, s:{s:[{s:s}], s:[{s:s, s:{s:o}}], s:{s:f}}}", "type",
                                    "ACCEPT", "accept", "offer_ids", "value", sp__offer_id(offer),
                                    "operations", "type", "LAUNCH", "launch", "task_infos", infos,
                                    "filters", "refuse_seconds", m->refuse_s));
    if (st != SP_OK) {
        /* Not launched: these ids are done with; the next offers bring replacements. */
        for (size_t i = first; i < m->ntasks; i++)
            sp_mesos_task_gone(m, &m->tasks[i], false);
        return;
    }
    m->stats.offers_accepted++;
    m->stats.tasks_launched += plan->executors;
    for (size_t i = first; i < m->ntasks; i++)
        sp_info("Mesos: launching executor task %s on %s (agent %s): %.3f cpus, %.0f MB mem",
                m->tasks[i].id, m->tasks[i].host, agent, m->cpus, m->mem);
}

/* Decides the offers of this batch: ACCEPT those that get executors, DECLINE the rest. */
static void sp_mesos_decide(sp__mesos_t *m)
{
    sp__offer_need_t need = {.cpus = m->cpus, .mem = m->mem, .constraints = m->constraints};
    json_t *declined = json_array();
    size_t i;
    json_t *offer;

    json_array_foreach(m->offers, i, offer)
    {
        uint32_t active = sp_mesos_active(m);
        unsigned room = m->stopping || m->fatal || active >= m->wanted ? 0 : m->wanted - active;
        const char *id = sp__offer_id(offer), *agent = sp__offer_agent_id(offer);
        sp__offer_plan_t plan;

        if (sp__offer_plan(offer, &need, room,
                           agent != NULL ? sp_mesos_agent_failures(m, agent) : 0, &plan) != SP_OK) {
            sp_warn("Mesos: offer %s: %s", id != NULL ? id : "?", sp_last_error());
            plan.verdict = SP_OFFER_UNNEEDED;
        }
        if (plan.verdict == SP_OFFER_LAUNCH) {
            sp_mesos_launch(m, offer, &plan);
            sp__offer_plan_clear(&plan);
            continue;
        }
        if (plan.verdict == SP_OFFER_MALFORMED)
            m->stats.offers_malformed++;
        if (id == NULL) {
            sp_warn("Mesos: ignoring an offer without an id: %s", plan.why);
            continue;
        }
        m->stats.offers_declined++;
        /* Why offers do not fit is worth a warning once per reason; the rest is routine. */
        if (plan.verdict == SP_OFFER_UNNEEDED || (m->warned & (1u << plan.verdict)))
            sp_info("Mesos: declining offer %s for %.0f s: %s: %s", id, m->refuse_s,
                    sp__offer_verdict_str(plan.verdict), plan.why);
        else
            sp_warn("Mesos: declining offer %s for %.0f s: %s: %s", id, m->refuse_s,
                    sp__offer_verdict_str(plan.verdict), plan.why);
        m->warned |= 1u << plan.verdict;
        json_array_append_new(declined, json_pack("{s:s}", "value", id));
    }
    json_array_clear(m->offers);
    sp_mesos_decline(m, declined);
}

/* Keeps SUPPRESS/REVIVE in step with the executors still wanted. */
static void sp_mesos_balance(sp__mesos_t *m)
{
    bool want_more = !m->stopping && !m->fatal && sp_mesos_active(m) < m->wanted;
    uint64_t failed = m->stats.calls_failed;

    if (!m->subscribed || sp__now_ns() < m->balance_after_ns)
        return;
    for (size_t i = 0; i < m->ntasks; i++)
        if (m->tasks[i].killing)
            sp_mesos_kill(m, &m->tasks[i]);
    if (want_more && (m->suppressed || m->need_revive))
        sp_mesos_revive(m);
    else if (!want_more && !m->suppressed)
        sp_mesos_suppress(m);
    if (m->stats.calls_failed != failed)
        m->balance_after_ns = sp__now_ns() + 1000000000ull;
}

/* ------------------------------------------------------------------------ */
/* Events                                                                    */
/* ------------------------------------------------------------------------ */

static bool sp_mesos_terminal(const char *state)
{
    static const char *const terminal[] = {
        "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED",  "TASK_ERROR",           "TASK_LOST",
        "TASK_DROPPED",  "TASK_GONE",   "TASK_UNKNOWN", "TASK_GONE_BY_OPERATOR"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(terminal); i++)
        if (strcmp(state, terminal[i]) == 0)
            return true;
    return false;
}

static void sp_mesos_on_update(sp__mesos_t *m, const json_t *status)
{
    const char *id =
        json_string_value(json_object_get(json_object_get(status, "task_id"), "value"));
    const char *state = json_string_value(json_object_get(status, "state"));
    const char *uuid = json_string_value(json_object_get(status, "uuid"));
    const char *agent =
        json_string_value(json_object_get(json_object_get(status, "agent_id"), "value"));
    const char *msg = json_string_value(json_object_get(status, "message"));
    const char *reason = json_string_value(json_object_get(status, "reason"));
    sp_mtask_t *t = sp_mesos_task(m, id);

    m->stats.updates++;
    if (id == NULL || state == NULL) {
        sp_warn("Mesos: ignoring an UPDATE without task_id or state");
        return;
    }
    if (agent == NULL && t != NULL)
        agent = t->agent;
    /* Only updates that carry a uuid are acknowledged, with the uuid as it came. */
    if (uuid != NULL && agent != NULL)
        sp_mesos_call(m, json_pack("{s:s, s:{s:{s:s}, s:{s:s}, s:s}}", "type", "ACKNOWLEDGE",
                                   "acknowledge", "agent_id", "value", agent, "task_id", "value",
                                   id, "uuid", uuid));
    if (t == NULL) {
        sp_debug("Mesos: %s for a task that is not ours (%s)", state, id);
        return;
    }
    snprintf(t->state, sizeof(t->state), "%s", state);
    if (!sp_mesos_terminal(state)) {
        if (strcmp(state, "TASK_RUNNING") == 0)
            sp_info("Mesos: executor task %s is running on %s", id, t->host);
        return;
    }
    t->exited = true;
    if (t->gone)
        return;
    if (strcmp(state, "TASK_FINISHED") == 0 && t->ready) {
        /* An executor leaves with 0 when the driver ends it; the driver says if it was lost. */
        sp_info("Mesos: executor task %s finished", id);
        return;
    }
    if (m->stopping || (strcmp(state, "TASK_KILLED") == 0 && t->killing)) {
        sp_info("Mesos: executor task %s ended: %s", id, state);
        sp_mesos_task_gone(m, t, !m->stopping);
        return;
    }
    sp_warn("Mesos: executor task %s on %s ended: %s%s%s%s%s%s; launching a replacement", id,
            t->host, state, reason != NULL ? " (" : "", reason != NULL ? reason : "",
            reason != NULL ? ")" : "", msg != NULL && msg[0] ? ": " : "", msg != NULL ? msg : "");
    {
        /* The driver learns now, not at the heartbeat timeout (a TASK_LOST agent, say). */
        sp__driver_t *driver = atomic_load(&m->run_driver);
        if (driver != NULL && t->ready)
            sp__driver_lose_executor(driver, t->id, state);
    }
    sp_mesos_task_gone(m, t, true);
}

/* The first subscription's outcome, for sp__mesos_start. */
static void sp_mesos_init_done(sp__mesos_t *m, sp_minit_t outcome, sp_status_t st, const char *msg)
{
    pthread_mutex_lock(&m->lock);
    if (m->init == SP_MINIT_PENDING) {
        m->init = outcome;
        m->init_st = st;
        snprintf(m->init_msg, sizeof(m->init_msg), "%s", msg != NULL ? msg : "");
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
}

static void sp_mesos_on_subscribed(sp__mesos_t *m, const json_t *sub)
{
    const char *fw =
        json_string_value(json_object_get(json_object_get(sub, "framework_id"), "value"));
    json_t *hb = json_object_get(sub, "heartbeat_interval_seconds");
    json_t *tasks;

    if (fw == NULL || fw[0] == '\0' || strlen(fw) >= sizeof(m->framework_id)) {
        sp_mesos_stream_drop(m, "SUBSCRIBED carries no usable framework_id");
        return;
    }
    if (m->framework_id[0] != '\0' && strcmp(m->framework_id, fw) != 0) {
        /* The master forgot us (failover_timeout passed): our tasks went with the old id. */
        sp_warn("Mesos: the master gave framework id %s instead of %s: launching the executors "
                "again",
                fw, m->framework_id);
        for (size_t i = 0; i < m->ntasks; i++) {
            m->tasks[i].exited = true;
            sp_mesos_task_gone(m, &m->tasks[i], false);
        }
    }
    snprintf(m->framework_id, sizeof(m->framework_id), "%s", fw);
    m->heartbeat_s = json_is_number(hb) && json_number_value(hb) > 0 ? json_number_value(hb) : 15.0;
    m->subscribed = true;
    m->backoff_ns = 0;
    m->redirects = 0;
    m->suppressed = false; /* a new subscription starts unsuppressed */
    m->stats.subscriptions++;
    sp_info("Mesos: subscribed to %s as framework %s (heartbeat every %.1f s)", m->via, fw,
            m->heartbeat_s);
    sp_mesos_init_done(m, SP_MINIT_OK, SP_OK, NULL);
    /* After a reconnection, learn what became of our tasks meanwhile. */
    if (m->stats.subscriptions > 1 && (tasks = json_array()) != NULL) {
        for (size_t i = 0; i < m->ntasks; i++)
            if (!m->tasks[i].exited)
                json_array_append_new(tasks, json_pack("{s:{s:s}, s:{s:s}}", "task_id", "value",
                                                       m->tasks[i].id, "agent_id", "value",
                                                       m->tasks[i].agent));
        if (json_array_size(tasks) > 0)
            sp_mesos_call(
                m, json_pack("{s:s, s:{s:o}}", "type", "RECONCILE", "reconcile", "tasks", tasks));
        else
            json_decref(tasks);
    }
}

static void sp_mesos_handle(sp__mesos_t *m, const json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    size_t i;
    json_t *v;

    if (strcmp(type, "SUBSCRIBED") == 0) {
        sp_mesos_on_subscribed(m, json_object_get(ev, "subscribed"));
    } else if (strcmp(type, "HEARTBEAT") == 0) {
        /* Its arrival is what counts. */
    } else if (strcmp(type, "OFFERS") == 0) {
        json_array_foreach(json_object_get(json_object_get(ev, "offers"), "offers"), i, v)
        {
            m->stats.offers++;
            json_array_append(m->offers, v);
        }
    } else if (strcmp(type, "RESCIND") == 0) {
        const char *id = json_string_value(
            json_object_get(json_object_get(json_object_get(ev, "rescind"), "offer_id"), "value"));
        json_array_foreach(m->offers, i, v)
        {
            const char *oid = sp__offer_id(v);
            if (id != NULL && oid != NULL && strcmp(id, oid) == 0) {
                sp_info("Mesos: offer %s rescinded before use", id);
                m->stats.offers_rescinded++;
                json_array_remove(m->offers, i);
                break;
            }
        }
    } else if (strcmp(type, "UPDATE") == 0) {
        sp_mesos_on_update(m, json_object_get(json_object_get(ev, "update"), "status"));
    } else if (strcmp(type, "FAILURE") == 0) {
        const json_t *f = json_object_get(ev, "failure");
        const char *agent =
            json_string_value(json_object_get(json_object_get(f, "agent_id"), "value"));
        const char *exec =
            json_string_value(json_object_get(json_object_get(f, "executor_id"), "value"));
        sp_warn("Mesos: failure of %s%s on agent %s", exec != NULL ? "executor " : "the agent",
                exec != NULL ? exec : "", agent != NULL ? agent : "?");
    } else if (strcmp(type, "ERROR") == 0) {
        const char *msg =
            json_string_value(json_object_get(json_object_get(ev, "error"), "message"));
        char text[768];
        snprintf(text, sizeof(text), "the Mesos master %s reports an error: %s", m->via,
                 msg != NULL ? msg : "(no message)");
        sp_error("%s", text);
        sp_mesos_init_done(m, SP_MINIT_FAILED, SP_ERR_INVALID_PARAM, text);
        m->fatal = true;
    } else {
        sp_debug("Mesos: ignoring a %s event", type);
    }
}

/* ------------------------------------------------------------------------ */
/* The event stream                                                          */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_mesos_on_record(void *arg, const char *rec, size_t len)
{
    sp__mesos_t *m = arg;
    json_error_t err;
    json_t *ev = json_loadb(rec, len, 0, &err);

    if (ev == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "event %zu from %s is not JSON (%s): %.*s",
                        sp__recordio_records(m->rio), m->via, err.text, (int)SP_MIN(len, 80), rec);
    if (!json_is_string(json_object_get(ev, "type"))) {
        json_decref(ev);
        return SP_RAISE(SP_ERR_BAD_FORMAT, "event %zu from %s has no type: %.*s",
                        sp__recordio_records(m->rio), m->via, (int)SP_MIN(len, 80), rec);
    }
    if (json_array_append_new(m->events, ev) != 0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an event");
    return SP_OK;
}

static size_t sp_mesos_on_header(char *buf, size_t size, size_t n, void *arg)
{
    sp__mesos_t *m = arg;
    size_t len = size * n;
    static const char name[] = "Mesos-Stream-Id:";

    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        m->stream_id[0] = '\0'; /* a new response (after a 100 Continue, say) */
        m->stream_id_bad = false;
    } else if (len > sizeof(name) - 1 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
        const char *b = buf + sizeof(name) - 1, *e = buf + len;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
            e--;
        if ((size_t)(e - b) >= sizeof(m->stream_id) - 1 || e == b) {
            m->stream_id_bad = true;
        } else {
            memcpy(m->stream_id, b, (size_t)(e - b));
            m->stream_id[e - b] = '\0';
        }
    }
    return len;
}

static size_t sp_mesos_on_stream(char *ptr, size_t size, size_t n, void *arg)
{
    sp__mesos_t *m = arg;
    size_t len = size * n;
    long code = 0;
    sp_status_t st;

    curl_easy_getinfo(m->sub, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) {
        size_t room = sizeof(m->body) - 1 - m->body_len;
        memcpy(m->body + m->body_len, ptr, SP_MIN(len, room));
        m->body_len += SP_MIN(len, room);
        m->body[m->body_len] = '\0';
        return len;
    }
    if (m->stream_id[0] == '\0' || m->stream_id_bad) {
        m->stream_st = SP_RAISE(SP_ERR_BAD_FORMAT,
                                "%s answered SUBSCRIBE without a usable Mesos-Stream-Id header "
                                "(1 to 128 bytes)",
                                m->via);
        snprintf(m->stream_msg, sizeof(m->stream_msg), "%s", sp_last_error());
        return 0;
    }
    m->last_event_ns = sp__now_ns();
    if ((st = sp__recordio_feed(m->rio, ptr, len, sp_mesos_on_record, m)) != SP_OK) {
        m->stream_st = st;
        snprintf(m->stream_msg, sizeof(m->stream_msg), "%s", sp_last_error());
        return 0; /* aborts the transfer */
    }
    return len;
}

/* Starts a SUBSCRIBE to m->leader on the multi handle. */
static sp_status_t sp_mesos_connect(sp__mesos_t *m)
{
    json_t *info, *call;

    info = json_pack("{s:s, s:s, s:f, s:[s], s:[{s:s}]}", "user", m->user, "name", m->name,
                     "failover_timeout", m->failover_s, "roles", m->role, "capabilities", "type",
                     "MULTI_ROLE");
    if (info != NULL && m->principal[0] != '\0')
        json_object_set_new(info, "principal", json_string(m->principal));
    if (info != NULL && m->framework_id[0] != '\0')
        json_object_set_new(info, "id", json_pack("{s:s}", "value", m->framework_id));
    call = json_pack("{s:s, s:{s:o}}", "type", "SUBSCRIBE", "subscribe", "framework_info", info);
    if (call != NULL && m->framework_id[0] != '\0')
        json_object_set_new(call, "framework_id", json_pack("{s:s}", "value", m->framework_id));
    free(m->sub_body);
    m->sub_body = call != NULL ? json_dumps(call, JSON_COMPACT) : NULL;
    json_decref(call);
    if (m->sub_body == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a SUBSCRIBE call");
    snprintf(m->via, sizeof(m->via), "%s", m->leader);
    curl_easy_reset(m->sub);
    curl_easy_setopt(m->sub, CURLOPT_URL, m->via);
    curl_easy_setopt(m->sub, CURLOPT_POST, 1L);
    curl_easy_setopt(m->sub, CURLOPT_POSTFIELDS, m->sub_body);
    curl_easy_setopt(m->sub, CURLOPT_POSTFIELDSIZE, (long)strlen(m->sub_body));
    curl_easy_setopt(m->sub, CURLOPT_HTTPHEADER, m->sub_headers);
    curl_easy_setopt(m->sub, CURLOPT_WRITEFUNCTION, sp_mesos_on_stream);
    curl_easy_setopt(m->sub, CURLOPT_WRITEDATA, m);
    curl_easy_setopt(m->sub, CURLOPT_HEADERFUNCTION, sp_mesos_on_header);
    curl_easy_setopt(m->sub, CURLOPT_HEADERDATA, m);
    curl_easy_setopt(m->sub, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(m->sub, CURLOPT_PROXY, "");
    curl_easy_setopt(m->sub, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)SP_MIN(m->connect_ns / 1000000, (uint64_t)10000));
    curl_easy_setopt(m->sub, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(m->sub, CURLOPT_ERRORBUFFER, m->curl_err);
    m->curl_err[0] = '\0';
    m->stream_id[0] = '\0';
    m->stream_id_bad = false;
    m->body_len = 0;
    m->body[0] = '\0';
    m->stream_st = SP_OK;
    m->stream_msg[0] = '\0';
    sp__recordio_reset(m->rio);
    json_array_clear(m->offers);
    if (curl_multi_add_handle(m->multi, m->sub) != CURLM_OK)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start a request to %s", m->via);
    m->connected = true;
    m->subscribed = false;
    m->attempt_ns = m->last_event_ns = sp__now_ns();
    sp_debug("Mesos: SUBSCRIBE to %s", m->via);
    return SP_OK;
}

/* When the next attempt may start, and what to tell about this one. */
static void sp_mesos_retry_later(sp__mesos_t *m, const char *why, bool rotate)
{
    snprintf(m->last_error, sizeof(m->last_error), "%s", why);
    if (rotate)
        sp_mesos_rotate(m);
    m->next_attempt_ns = sp__now_ns() + m->backoff_ns;
    m->backoff_ns = SP_MIN(SP_MAX(m->backoff_ns * 2, SP_MESOS_BACKOFF_MIN), SP_MESOS_BACKOFF_MAX);
}

/* Ends the current stream on our side (heartbeats missed, a call found it stale). */
static void sp_mesos_stream_drop(sp__mesos_t *m, const char *why)
{
    bool was = m->subscribed;

    if (!m->connected)
        return;
    curl_multi_remove_handle(m->multi, m->sub);
    m->connected = m->subscribed = false;
    if (was) {
        m->stats.reconnects++;
        sp_warn("Mesos: dropping the event stream from %s: %s; subscribing again", m->via, why);
    }
    sp_mesos_retry_later(m, why, false);
}

/* The SUBSCRIBE transfer ended (rc): why, and where to go next. */
static void sp_mesos_stream_ended(sp__mesos_t *m, CURLcode rc)
{
    bool was = m->subscribed;
    long code = 0;
    char why[1024];

    curl_easy_getinfo(m->sub, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(m->multi, m->sub);
    m->connected = m->subscribed = false;
    if (code == 307) {
        char *loc = NULL;
        curl_easy_getinfo(m->sub, CURLINFO_REDIRECT_URL, &loc);
        m->stats.redirects++;
        if (loc == NULL || strlen(loc) >= sizeof(m->leader) ||
            ++m->redirects > SP_MESOS_REDIRECTS) {
            snprintf(why, sizeof(why), "%.200s answered 307 %s", m->via,
                     loc == NULL ? "without a Location" : "once too often (a redirect loop?)");
            m->redirects = 0;
            sp_mesos_retry_later(m, why, true);
            return;
        }
        sp_info("Mesos: %s is not the leader; the leader is at %s", m->via, loc);
        snprintf(m->leader, sizeof(m->leader), "%s", loc);
        m->next_attempt_ns = sp__now_ns();
        return;
    }
    if (m->stream_st != SP_OK) {
        snprintf(why, sizeof(why), "the event stream from %.200s is malformed: %.400s", m->via,
                 m->stream_msg);
    } else if (rc != CURLE_OK) {
        snprintf(why, sizeof(why), "%.200s: %.400s", m->via,
                 m->curl_err[0] ? m->curl_err : curl_easy_strerror(rc));
    } else if (code >= 400 && code < 500) {
        snprintf(why, sizeof(why), "%.200s refused SUBSCRIBE: HTTP %ld: %.400s", m->via, code,
                 m->body);
        sp_error("Mesos: %s", why);
        sp_mesos_init_done(m, SP_MINIT_FAILED, SP_ERR_INVALID_PARAM, why);
        m->fatal = true;
        return;
    } else if (code != 200) {
        snprintf(why, sizeof(why), "%.200s answered SUBSCRIBE with HTTP %ld: %.400s", m->via, code,
                 m->body);
    } else if (sp__recordio_finish(m->rio) != SP_OK) {
        snprintf(why, sizeof(why), "the event stream from %.200s ended: %.400s", m->via,
                 sp_last_error());
    } else {
        snprintf(why, sizeof(why), "%s closed the event stream", m->via);
    }
    if (was) {
        m->stats.reconnects++;
        sp_warn("Mesos: %s; subscribing again", why);
    } else {
        sp_info("Mesos: cannot subscribe: %s", why);
    }
    /* A master that cannot be reached or answers 5xx: try the next; a closed stream: the same. */
    sp_mesos_retry_later(m, why, !was || rc == CURLE_COULDNT_CONNECT);
}

/* ------------------------------------------------------------------------ */
/* The thread                                                                */
/* ------------------------------------------------------------------------ */

static void sp_mesos_news(sp__mesos_t *m)
{
    json_t *news;
    size_t i;
    json_t *item;

    pthread_mutex_lock(&m->lock);
    news = m->news;
    m->news = json_array();
    pthread_mutex_unlock(&m->lock);
    json_array_foreach(news, i, item)
    {
        const char *name = json_string_value(json_array_get(item, 0));
        bool lost = json_is_true(json_array_get(item, 1));
        sp_mtask_t *t = sp_mesos_task(m, name);
        if (t == NULL)
            continue;
        if (!lost) {
            t->ready = true;
            continue;
        }
        if (t->gone)
            continue;
        if (!m->stopping)
            sp_warn("Mesos: the driver lost executor task %s on %s; %s", t->id, t->host,
                    t->exited ? "launching a replacement" : "killing it, launching a replacement");
        t->killing = !t->exited;
        sp_mesos_task_gone(m, t, true);
    }
    json_decref(news);
}

static void sp_mesos_follow_zk(sp__mesos_t *m)
{
    char leader[SP__ZK_HOST_PORT_MAX], url[SP_MESOS_URL_MAX];
    bool changed;

    pthread_mutex_lock(&m->lock);
    changed = m->zk_changed;
    m->zk_changed = false;
    snprintf(leader, sizeof(leader), "%s", m->zk_leader);
    pthread_mutex_unlock(&m->lock);
    if (!changed || leader[0] == '\0')
        return;
    snprintf(url, sizeof(url), "http://%s" SP_MESOS_PATH, leader);
    snprintf(m->leader, sizeof(m->leader), "%s", url);
    if (m->connected && strcmp(m->via, url) != 0)
        sp_mesos_stream_drop(m, "ZooKeeper names another leader");
    if (!m->connected)
        m->next_attempt_ns = sp__now_ns();
}

/* Whether every task has ended (or the wait for them is over). */
static bool sp_mesos_tasks_ended(const sp__mesos_t *m, uint64_t now)
{
    if (now - m->stop_ns > SP_MESOS_STOP_WAIT_NS)
        return true;
    for (size_t i = 0; i < m->ntasks; i++)
        if (!m->tasks[i].exited && !(m->tasks[i].gone && !m->tasks[i].killing))
            return false;
    return true;
}

static void *sp_mesos_main(void *arg)
{
    sp__mesos_t *m = arg;
    uint64_t start = sp__now_ns();

    for (;;) {
        uint64_t now = sp__now_ns();
        int timeout = SP_MESOS_POLL_MS, running = 0, left = 0;
        CURLMsg *msg;
        bool stop;

        pthread_mutex_lock(&m->lock);
        stop = m->stop_requested;
        pthread_mutex_unlock(&m->lock);
        if (stop && !m->stopping) {
            m->stopping = true;
            m->stop_ns = now;
        }
        if (m->fatal)
            break;
        if (m->zk)
            sp_mesos_follow_zk(m);
        sp_mesos_news(m);
        if (m->stopping) {
            if (m->subscribed && sp_mesos_tasks_ended(m, now)) {
                if (sp_mesos_call(m, json_pack("{s:s}", "type", "TEARDOWN")) == SP_OK) {
                    m->torn_down = true;
                    sp_info("Mesos: framework %s torn down", m->framework_id);
                    break;
                }
            }
            if (now - m->stop_ns > SP_MESOS_STOP_MAX_NS) {
                sp_warn("Mesos: could not tear framework %s down (%s); the master removes it "
                        "after mesos.failover_timeout",
                        m->framework_id, m->last_error[0] ? m->last_error : "not subscribed");
                break;
            }
        }
        if (!m->connected) {
            bool pending;
            pthread_mutex_lock(&m->lock);
            pending = m->init == SP_MINIT_PENDING;
            pthread_mutex_unlock(&m->lock);
            if (pending && now - start > m->connect_ns) {
                char why[1200];
                snprintf(why, sizeof(why),
                         "could not subscribe to a Mesos master within mesos.connect_timeout "
                         "(%.1f s): %s",
                         (double)m->connect_ns / 1e9,
                         m->last_error[0] ? m->last_error
                                          : (m->zk ? "ZooKeeper named no leading master"
                                                   : "no attempt finished"));
                sp_mesos_init_done(m, SP_MINIT_FAILED, SP_ERR_PEER_LOST, why);
                break;
            }
            bool have_master = !m->zk || m->leader[0] != '\0';
            if (have_master && now >= m->next_attempt_ns) {
                if (sp_mesos_connect(m) != SP_OK) {
                    sp_warn("%s", sp_last_error());
                    sp_mesos_retry_later(m, sp_last_error(), true);
                }
            } else if (have_master) {
                timeout = (int)SP_MIN((m->next_attempt_ns - now) / 1000000 + 1,
                                      (uint64_t)SP_MESOS_POLL_MS);
            }
        }
        curl_multi_poll(m->multi, NULL, 0, timeout, NULL);
        curl_multi_perform(m->multi, &running);
        /* Events first: a stream that just ended may still have delivered some. */
        for (size_t i = 0; i < json_array_size(m->events); i++)
            sp_mesos_handle(m, json_array_get(m->events, i));
        json_array_clear(m->events);
        while ((msg = curl_multi_info_read(m->multi, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == m->sub && m->connected)
                sp_mesos_stream_ended(m, msg->data.result);
        if (m->fatal)
            break;
        now = sp__now_ns();
        if (m->connected && !m->subscribed && now - m->attempt_ns > m->connect_ns)
            sp_mesos_stream_drop(m, "no SUBSCRIBED event within mesos.connect_timeout");
        if (m->subscribed &&
            (double)(now - m->last_event_ns) > m->heartbeat_s * (double)m->misses * 1e9) {
            char why[128];
            snprintf(why, sizeof(why), "no event for %.1f s (%lld heartbeats missed)",
                     (double)(now - m->last_event_ns) / 1e9, (long long)m->misses);
            sp_mesos_stream_drop(m, why);
        }
        if (m->subscribed) {
            sp_mesos_decide(m);
            sp_mesos_balance(m);
        }
    }
    if (m->connected)
        curl_multi_remove_handle(m->multi, m->sub);
    m->connected = m->subscribed = false;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Start and stop                                                            */
/* ------------------------------------------------------------------------ */

static void sp_mesos_free(sp__mesos_t *m)
{
    if (m == NULL)
        return;
    sp__zk_watch_destroy(m->zkw);
    if (m->sub != NULL)
        curl_easy_cleanup(m->sub);
    if (m->call != NULL)
        curl_easy_cleanup(m->call);
    if (m->multi != NULL)
        curl_multi_cleanup(m->multi);
    curl_slist_free_all(m->sub_headers);
    free(m->sub_body);
    sp__recordio_destroy(m->rio);
    json_decref(m->events);
    json_decref(m->offers);
    json_decref(m->news);
    json_decref(m->agent_failures);
    sp__offer_constraints_destroy(m->constraints);
    for (size_t i = 0; i < m->nmasters; i++)
        sp__free(m->masters[i]);
    sp__free(m->masters);
    sp__free(m->tasks);
    sp__free(m->master_url);
    sp__free(m->name);
    sp__free(m->command);
    sp__free(m->driver);
    sp__free(m->secret);
    sp__free(m->role);
    sp__free(m->user);
    sp__free(m->principal);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    sp__free(m);
}

static sp_status_t sp_mesos_settings(sp__mesos_t *m, const sp__mesos_opts_t *o)
{
    const sp_conf_t *conf = o->conf;
    const char *role = "*", *user = "", *principal = "", *constraints = "";
    uint64_t failover_ns = 0;
    sp_status_t st;

    if ((st = sp_conf_get_string(conf, "mesos.role", &role)) != SP_OK ||
        (st = sp_conf_get_string(conf, "mesos.user", &user)) != SP_OK ||
        (st = sp_conf_get_string(conf, "mesos.principal", &principal)) != SP_OK ||
        (st = sp_conf_get_string(conf, "offers.constraints", &constraints)) != SP_OK ||
        (st = sp_conf_get_double(conf, "offers.refuse_seconds", &m->refuse_s)) != SP_OK ||
        (st = sp_conf_get_duration(conf, "mesos.failover_timeout", &failover_ns)) != SP_OK ||
        (st = sp_conf_get_duration(conf, "mesos.connect_timeout", &m->connect_ns)) != SP_OK ||
        (st = sp_conf_get_int(conf, "mesos.heartbeat_misses", &m->misses)) != SP_OK)
        return st;
    if (role[0] == '\0')
        return SP_RAISE(SP_ERR_BAD_CONF, "mesos.role is empty (the default role is \"*\")");
    if ((st = sp__offer_constraints_parse(constraints, &m->constraints)) != SP_OK)
        return st;
    if (user[0] == '\0') {
        const struct passwd *pw = getpwuid(geteuid());
        const char *env = getenv("USER");
        user = pw != NULL ? pw->pw_name : env != NULL ? env : "root";
    }
    m->failover_s = (double)failover_ns / 1e9;
    if ((m->role = sp__strdup(role)) == NULL || (m->user = sp__strdup(user)) == NULL ||
        (m->principal = sp__strdup(principal)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the Mesos settings");
    return SP_OK;
}

sp_status_t sp__mesos_start(const sp__mesos_opts_t *o, sp__mesos_t **mesos_p)
{
    sp__mesos_t *m;
    struct curl_slist *h;
    sp_status_t st;

    if ((st = sp__mesos_url_check(o->master)) != SP_OK)
        return st;
    if (o->executors == 0 || o->cpus <= 0 || o->mem <= 0 || o->secret == NULL ||
        o->driver == NULL || o->command == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "Mesos: bad scheduler options");
    pthread_once(&sp_mesos_curl_once, sp_mesos_curl_init);
    if (sp_mesos_curl_rc != CURLE_OK)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "libcurl does not start: %s",
                        curl_easy_strerror(sp_mesos_curl_rc));
    if ((m = sp__calloc(1, sizeof(*m))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the Mesos scheduler");
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    m->wanted = o->executors;
    m->cpus = o->cpus;
    m->mem = o->mem;
    if ((st = sp_mesos_settings(m, o)) != SP_OK)
        goto err;
    if ((m->master_url = sp__strdup(o->master)) == NULL ||
        (m->name = sp__strdup(o->framework_name != NULL ? o->framework_name : "spate")) == NULL ||
        (m->command = sp__strdup(o->command)) == NULL ||
        (m->driver = sp__strdup(o->driver)) == NULL ||
        (m->secret = sp__strdup(o->secret)) == NULL || (m->events = json_array()) == NULL ||
        (m->offers = json_array()) == NULL || (m->news = json_array()) == NULL ||
        (m->agent_failures = json_object()) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the Mesos scheduler");
        goto err;
    }
    if ((st = sp_mesos_masters_parse(m, o->master)) != SP_OK ||
        (st = sp__recordio_create(SP__MESOS_MAX_EVENT, &m->rio)) != SP_OK)
        goto err;
    if ((m->multi = curl_multi_init()) == NULL || (m->sub = curl_easy_init()) == NULL ||
        (m->call = curl_easy_init()) == NULL) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "libcurl: cannot create handles");
        goto err;
    }
    if ((h = curl_slist_append(NULL, "Content-Type: application/json")) == NULL ||
        (m->sub_headers = h, h = curl_slist_append(h, "Accept: application/json")) == NULL ||
        (m->sub_headers = h, h = curl_slist_append(h, "Connection: close")) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for HTTP headers");
        goto err;
    }
    m->sub_headers = h;
    if (m->zk && (st = sp__zk_watch_create(o->master + 8, sp_mesos_zk_cb, m, &m->zkw)) != SP_OK)
        goto err;
    if (pthread_create(&m->thread, NULL, sp_mesos_main, m) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start the Mesos scheduler's thread");
        goto err;
    }
    m->thread_started = true;
    pthread_mutex_lock(&m->lock);
    while (m->init == SP_MINIT_PENDING)
        pthread_cond_wait(&m->cond, &m->lock);
    pthread_mutex_unlock(&m->lock);
    if (m->init != SP_MINIT_OK) {
        pthread_join(m->thread, NULL);
        st = SP_RAISE(m->init_st, "%s", m->init_msg);
        goto err;
    }
    *mesos_p = m;
    return SP_OK;
err:
    sp_mesos_free(m);
    return st;
}

void sp__mesos_executor_event(void *arg, const sp__executor_report_t *executor, bool lost)
{
    sp__mesos_t *m = arg;

    if (m == NULL || executor->name[0] == '\0')
        return;
    pthread_mutex_lock(&m->lock);
    json_array_append_new(m->news, json_pack("[s,b]", executor->name, lost));
    pthread_mutex_unlock(&m->lock);
    curl_multi_wakeup(m->multi);
}

void sp__mesos_stop(sp__mesos_t *m, sp__mesos_stats_t *stats_p)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    m->stop_requested = true;
    pthread_mutex_unlock(&m->lock);
    curl_multi_wakeup(m->multi);
    if (m->thread_started)
        pthread_join(m->thread, NULL);
    sp_info("Mesos: %llu subscriptions, %llu reconnections, %llu offers (%llu accepted, %llu "
            "declined, %llu malformed, %llu rescinded), %llu executor tasks launched, %llu failed",
            (unsigned long long)m->stats.subscriptions, (unsigned long long)m->stats.reconnects,
            (unsigned long long)m->stats.offers, (unsigned long long)m->stats.offers_accepted,
            (unsigned long long)m->stats.offers_declined,
            (unsigned long long)m->stats.offers_malformed,
            (unsigned long long)m->stats.offers_rescinded,
            (unsigned long long)m->stats.tasks_launched, (unsigned long long)m->stats.tasks_failed);
    if (stats_p != NULL)
        *stats_p = m->stats;
    sp_mesos_free(m);
}

/* ------------------------------------------------------------------------ */
/* spate run --master                                                        */
/* ------------------------------------------------------------------------ */

/* Whether every host of a --master URL (masters or ZooKeeper servers) is a loopback one. */
static bool sp_mesos_url_loopback(const char *url)
{
    const char *p = url + 8, *end;

    if (strncmp(p, "zk://", 5) == 0) {
        p += 5;
        if (strchr(p, '@') != NULL)
            p = strchr(p, '@') + 1;
    }
    end = p + strcspn(p, "/");
    while (p < end) {
        if (strncmp(p, "127.", 4) != 0 && strncmp(p, "localhost:", 10) != 0 &&
            strncmp(p, "[::1]:", 6) != 0)
            return false;
        p += strcspn(p, ",/");
        if (*p == ',')
            p++;
    }
    return true;
}

/* The address executors are told: a wildcard bind becomes this host's name. */
static void sp_mesos_advertised(const char *bound, char *out, size_t cap)
{
    const char *colon = strrchr(bound, ':');
    char host[256];

    if (colon != NULL &&
        (strncmp(bound, "0.0.0.0:", 8) == 0 || strncmp(bound, "[::]:", 5) == 0 ||
         strncmp(bound, ":::", 3) == 0) &&
        gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        snprintf(out, cap, "%s%s", host, colon);
        return;
    }
    snprintf(out, cap, "%s", bound);
}

sp_status_t sp__mesos_run(const sp__mesos_run_opts_t *o, sp__driver_report_t *report)
{
    const char *listen_at = "127.0.0.1:0";
    char self[4096], bound[128], advertised[512], secret[65], name[256];
    int64_t cores = 0, max_cores = 0, max_execs = 0;
    uint64_t memory = 0;
    uint32_t wanted = 0;
    sp__driver_t *driver = NULL;
    sp__mesos_t *mesos = NULL;
    ssize_t n;
    int lfd = -1;
    sp_status_t st;

    if ((st = sp__mesos_url_check(o->master)) != SP_OK)
        return st;
    if ((st = sp_conf_get_int(o->conf, "executor.cores", &cores)) != SP_OK ||
        (st = sp_conf_get_size(o->conf, "memory.executor", &memory)) != SP_OK ||
        (st = sp_conf_get_int(o->conf, "offers.max_cores", &max_cores)) != SP_OK ||
        (st = sp_conf_get_int(o->conf, "offers.max_executors", &max_execs)) != SP_OK)
        return st;
    /* Offers are for amounts: the executors get the same explicit ones through the driver. */
    if (cores == 0) {
        cores = 1;
        if ((st = sp_conf_set(o->conf, "executor.cores", "1")) != SP_OK)
            return st;
    }
    if (memory == 0) {
        memory = 1ull << 30;
        if ((st = sp_conf_set(o->conf, "memory.executor", "1g")) != SP_OK)
            return st;
    }
    if ((st = sp__offer_wanted(o->executors, (uint32_t)cores, max_cores, max_execs, &wanted)) !=
        SP_OK)
        return st;
    o->params->executors = wanted;
    o->params->slots = wanted * (uint32_t)cores;
    if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) <= 0)
        return SP_RAISE(SP_ERR_IO, "cannot find this program (/proc/self/exe): %s",
                        strerror(errno));
    self[n] = '\0';
    if ((st = sp__ctl_secret_generate(secret)) != SP_OK)
        return st;
    sp_conf_get_string(o->conf, "driver.address", &listen_at);
    if ((st = sp__ctl_listen(listen_at, bound, sizeof(bound), &lfd)) != SP_OK)
        return st;
    sp_mesos_advertised(bound, advertised, sizeof(advertised));
    if ((strncmp(advertised, "127.", 4) == 0 || strncmp(advertised, "localhost:", 10) == 0 ||
         strncmp(advertised, "[::1]:", 6) == 0) &&
        !sp_mesos_url_loopback(o->master))
        sp_warn("Mesos: executors will reach the driver at %s, a loopback address that agents "
                "on other hosts cannot reach; set --listen (driver.address) to one they can",
                advertised);
    snprintf(name, sizeof(name), "spate %s", o->job->name);
    sp__mesos_opts_t mo = {.conf = o->conf,
                           .master = o->master,
                           .framework_name = name,
                           .command = self,
                           .driver = advertised,
                           .secret = secret,
                           .executors = wanted,
                           .cpus = (double)cores,
                           .mem = sp__offer_executor_mem(memory)};
    sp_info("Mesos: driver listening on %s; asking for %u executors of %lld cpus and %.0f MB",
            advertised, wanted, (long long)cores, mo.mem);
    if ((st = sp__mesos_start(&mo, &mesos)) != SP_OK)
        goto out;
    sp__driver_opts_t dopts = {.conf = o->conf,
                               .job = o->job,
                               .job_name = o->job_name,
                               .params = o->params,
                               .executors = wanted,
                               .listen_fd = lfd,
                               .secret = secret,
                               .secret_len = strlen(secret),
                               .progress = o->progress,
                               .progress_arg = o->progress_arg,
                               .executor_event = sp__mesos_executor_event,
                               .executor_event_arg = mesos,
                               .replaceable = true};
    if ((st = sp__driver_create(&dopts, &driver)) != SP_OK)
        goto out;
    atomic_store(&mesos->run_driver, driver);
    st = sp__driver_run(driver, report);
out : {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", sp_last_error());
    if (mesos != NULL)
        atomic_store(&mesos->run_driver, NULL);
    sp__mesos_stop(mesos, NULL);
    sp__driver_destroy(driver);
    if (st != SP_OK)
        SP_RAISE(st, "%s", msg);
}
    close(lfd);
    return st;
}
