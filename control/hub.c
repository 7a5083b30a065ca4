/*
 * The driver's hub: its view of many conns (stream and MPI mixed), the next
 * message from any of them, lost peers, and executors that connect while it
 * waits. The hub keeps, for each id it dropped, what happened to its peer
 * (the last SP__CTL_HUB_GONE), so that a later sp__ctl_hub_remove of the id says
 * that rather than "no such id".
 *
 * A hub runs at most SP__CTL_HUB_MAX_JOINING handshakes, each with a
 * deadline; when all are taken the listener is not polled, except to let a
 * newcomer take the slot of the oldest once that one has had
 * SP_CTL_EVICT_AFTER_NS to answer (an honest client answers in a round
 * trip, and one dropped connects again). Out of descriptors (EMFILE), the
 * hub sheds the backlog through a reserve descriptor and rests the listener
 * with a growing back-off; warnings about strangers are written at most once
 * a second and counted in the stats.
 *
 * sp__ctl_hub_wait is an event loop over backends behind a small ops table
 * (hub_int.h), like Redis's ae.c over ae_epoll.c: each pass the backends
 * note what they watch, bound the sleep and wait, marking what is ready
 * (hub_poll.c: the listener, joining connections and stream conns in one
 * ppoll(); hub_mpi.c: MPI conns, probed on every pass), and this file
 * serves what they marked: conns round robin from the one after the last
 * served, so a busy conn never starves the others, then the handshakes
 * under way, then the listener.
 */
#include "control/hub_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections a hub accepts in one pass over a readable listener. */
#define SP_CTL_ACCEPT_BATCH 64
/*
 * When every handshake slot is taken, a connection that has been in its
 * handshake this long gives its slot up to a newcomer: an honest client
 * answers HELLO within a round trip, and one that is dropped connects again.
 */
#define SP_CTL_EVICT_AFTER_NS 100000000u
/* The listener's rest after accept ran out of descriptors: 10 ms, doubling to 1 s. */
#define SP_CTL_ACCEPT_BACKOFF_MIN_NS 10000000u
#define SP_CTL_ACCEPT_BACKOFF_MAX_NS 1000000000u
/* At most one hub warning about connections that did not join per this interval. */
#define SP_CTL_WARN_EVERY_NS 1000000000u

static int sp_ctl_reserve_open(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

sp_status_t sp__ctl_hub_create(sp__ctl_hub_t **hub_p)
{
    sp__ctl_hub_t *hub = sp__calloc(1, sizeof(*hub));
    sp_status_t st;

    if (hub == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control hub: out of memory");
    hub->lfd = -1;
    hub->reserve_fd = -1;
    if ((st = sp__ctl_hub_poll_create(&hub->poll)) != SP_OK)
        goto err_free;
    if ((st = sp__ctl_hub_mpi_create(&hub->mpi)) != SP_OK)
        goto err_poll;
    hub->backends[0] = hub->poll;
    hub->backends[1] = hub->mpi;
    *hub_p = hub;
    return SP_OK;

err_poll:
    hub->poll->ops->destroy(hub->poll);
err_free:
    sp__free(hub);
    return st;
}

static void sp_ctl_hub_forget_secret(sp__ctl_hub_t *hub)
{
    if (hub->secret != NULL) {
        OPENSSL_cleanse(hub->secret, hub->slen);
        sp__free(hub->secret);
    }
    hub->secret = NULL;
    hub->slen = 0;
}

void sp__ctl_hub_destroy(sp__ctl_hub_t *hub)
{
    if (hub == NULL)
        return;
    for (size_t i = 0; i < hub->n; i++)
        sp__ctl_close(hub->entries[i].conn);
    for (size_t j = 0; j < hub->njoining; j++)
        sp__ctl_close(&hub->joining[j]->base);
    for (size_t j = 0; j < hub->njoined; j++)
        sp__ctl_close(hub->joined[j]);
    if (hub->reserve_fd >= 0)
        close(hub->reserve_fd);
    sp_ctl_hub_forget_secret(hub);
    sp__free(hub->entries);
    sp__free(hub->joined);
    for (size_t k = 0; k < SP__CTL_HUB_BACKENDS; k++)
        hub->backends[k]->ops->destroy(hub->backends[k]);
    sp__free(hub);
}

/* Room for element n of size bytes in *array of *cap_p elements. */
static bool sp_ctl_grow(void **array, size_t *cap_p, size_t n, size_t size)
{
    size_t cap = *cap_p < 8 ? 8 : *cap_p * 2;
    void *grown;

    if (n < *cap_p)
        return true;
    grown = sp__realloc(*array, cap * size);
    if (grown == NULL)
        return false;
    *array = grown;
    *cap_p = cap;
    return true;
}

static bool sp_ctl_hub_find(const sp__ctl_hub_t *hub, uint32_t id, size_t *i_p)
{
    for (size_t i = 0; i < hub->n; i++) {
        if (hub->entries[i].id == id) {
            *i_p = i;
            return true;
        }
    }
    return false;
}

static sp__ctl_hub_gone_t *sp_ctl_hub_find_gone(sp__ctl_hub_t *hub, uint32_t id)
{
    for (size_t g = 0; g < SP__CTL_HUB_GONE; g++)
        if (hub->gone[g].used && hub->gone[g].id == id)
            return &hub->gone[g];
    return NULL;
}

/* Notes that hub_wait dropped the conn of id because of why (the oldest note makes room). */
static void sp_ctl_hub_note_gone(sp__ctl_hub_t *hub, uint32_t id, const char *why)
{
    sp__ctl_hub_gone_t *g = sp_ctl_hub_find_gone(hub, id);

    if (g == NULL) {
        g = &hub->gone[hub->gone_next];
        hub->gone_next = (hub->gone_next + 1) % SP__CTL_HUB_GONE;
    }
    g->used = true;
    g->id = id;
    snprintf(g->why, sizeof(g->why), "%s", why);
}

sp_status_t sp__ctl_hub_add(sp__ctl_hub_t *hub, sp__ctl_conn_t *conn, uint32_t id)
{
    sp__ctl_hub_gone_t *g;
    size_t i;
    sp_status_t st;

    if (id == SP__CTL_HUB_NEW) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "control hub: id %u is reserved", id);
        goto err_close;
    }
    if (sp_ctl_hub_find(hub, id, &i)) {
        st = SP_RAISE(SP_ERR_EXISTS, "control hub: id %u is in use (by %s)", id,
                      hub->entries[i].conn->peer);
        goto err_close;
    }
    if (!sp_ctl_grow((void **)&hub->entries, &hub->cap, hub->n, sizeof(*hub->entries))) {
        st = SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for conn %u", id);
        goto err_close;
    }
    /* A conn with a descriptor is polled; one without (MPI) is probed. */
    hub->entries[hub->n] = (sp__ctl_hub_entry_t){
        .conn = conn, .id = id, .backend = conn->fd >= 0 ? hub->poll : hub->mpi, .slot = -1};
    hub->n++;
    if ((g = sp_ctl_hub_find_gone(hub, id)) != NULL)
        g->used = false;
    return SP_OK;

err_close:
    sp__ctl_close(conn);
    return st;
}

static void sp_ctl_hub_remove_at(sp__ctl_hub_t *hub, size_t i)
{
    sp__ctl_conn_t *conn = hub->entries[i].conn;

    memmove(&hub->entries[i], &hub->entries[i + 1], (hub->n - i - 1) * sizeof(*hub->entries));
    hub->n--;
    if (hub->cursor > i)
        hub->cursor--;
    if (hub->cursor >= hub->n)
        hub->cursor = 0;
    sp__ctl_close(conn);
}

sp_status_t sp__ctl_hub_remove(sp__ctl_hub_t *hub, uint32_t id)
{
    const sp__ctl_hub_gone_t *g;
    size_t i;

    if (!sp_ctl_hub_find(hub, id, &i)) {
        /* A conn hub_wait dropped: say what happened to its peer, not that it is missing. */
        if ((g = sp_ctl_hub_find_gone(hub, id)) != NULL)
            return SP_RAISE(SP_ERR_NOT_FOUND, "%s", g->why);
        return SP_RAISE(SP_ERR_NOT_FOUND,
                        "control hub: id %u names no conn (never added, or removed before)", id);
    }
    sp_ctl_hub_remove_at(hub, i);
    return SP_OK;
}

sp__ctl_conn_t *sp__ctl_hub_conn(const sp__ctl_hub_t *hub, uint32_t id)
{
    size_t i;

    return sp_ctl_hub_find(hub, id, &i) ? hub->entries[i].conn : NULL;
}

size_t sp__ctl_hub_count(const sp__ctl_hub_t *hub) { return hub->n; }

void sp__ctl_hub_stats(const sp__ctl_hub_t *hub, sp__ctl_hub_stats_t *stats)
{
    *stats = hub->stats;
    stats->joining = hub->njoining;
}

sp_status_t sp__ctl_hub_set_listener(sp__ctl_hub_t *hub, int lfd, const void *secret, size_t slen,
                                     int handshake_timeout_ms)
{
    unsigned char *copy = NULL;
    sp_status_t st;

    if (lfd >= 0) {
        if ((st = sp__ctl_check_secret(secret, slen)) != SP_OK)
            return st;
        copy = sp__malloc(slen);
        if (copy == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "control hub: cannot copy the secret");
        memcpy(copy, secret, slen);
        /* Without a reserve the hub still backs off on EMFILE; it only cannot shed. */
        if (hub->reserve_fd < 0)
            hub->reserve_fd = sp_ctl_reserve_open();
    } else if (hub->reserve_fd >= 0) {
        close(hub->reserve_fd);
        hub->reserve_fd = -1;
    }
    sp_ctl_hub_forget_secret(hub);
    hub->lfd = lfd;
    hub->secret = copy;
    hub->slen = lfd >= 0 ? slen : 0;
    hub->hs_timeout_ms = handshake_timeout_ms;
    hub->listen_resume_ns = 0;
    hub->accept_backoff_ns = 0;
    return SP_OK;
}

sp_status_t sp__ctl_hub_accept(sp__ctl_hub_t *hub, sp__ctl_conn_t **conn_p)
{
    if (hub->njoined == 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "control hub: no new connection is waiting");
    *conn_p = hub->joined[0];
    hub->njoined--;
    memmove(hub->joined, hub->joined + 1, hub->njoined * sizeof(*hub->joined));
    return SP_OK;
}

/*
 * A warning about a connection that did not join, or about the listener:
 * at most one a second, so that a flood of strangers cannot flood the log;
 * the next one written counts those held back.
 */
static void sp_ctl_hub_warn(sp__ctl_hub_t *hub, const char *fmt, ...) SP_PRINTF(2, 3);

static void sp_ctl_hub_warn(sp__ctl_hub_t *hub, const char *fmt, ...)
{
    uint64_t now = sp__now_ns();
    char msg[768];
    va_list ap;

    if (now < hub->warn_next_ns) {
        hub->warn_quiet++;
        hub->stats.warnings_held_back++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (hub->warn_quiet > 0)
        sp_warn("%s (%llu more such warnings held back since the last)", msg,
                (unsigned long long)hub->warn_quiet);
    else
        sp_warn("%s", msg);
    hub->warn_quiet = 0;
    hub->warn_next_ns = now + SP_CTL_WARN_EVERY_NS;
}

/* Closes joining connection j. */
static void sp_ctl_hub_drop_joining(sp__ctl_hub_t *hub, size_t j)
{
    sp__ctl_close(&hub->joining[j]->base);
    hub->joining[j] = hub->joining[--hub->njoining];
}

/*
 * Advances the handshake of joining connection j (ready: its fd polled
 * readable): on AUTH it answers and moves the conn to the joined queue; a
 * failure or the handshake's deadline drops it with a warning.
 */
static void sp_ctl_hub_step_joining(sp__ctl_hub_t *hub, size_t j, bool ready)
{
    sp__ctl_sock_t *s = hub->joining[j];
    void *payload = NULL;
    size_t len = 0;
    uint16_t type = 0;
    bool got = false;
    sp_status_t st = SP_OK;

    if (ready || s->base.buffered)
        st = sp__ctl_try(&s->base, &got, &type, &payload, &len);
    if (st == SP_OK && got) {
        st = sp__ctl_hs_verify(s, hub->secret, hub->slen, type, payload, len);
        sp__free(payload);
        if (st == SP_OK && !sp_ctl_grow((void **)&hub->joined, &hub->joined_cap, hub->njoined,
                                        sizeof(*hub->joined)))
            st = SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for a new connection");
        if (st == SP_OK) {
            hub->joined[hub->njoined++] = &s->base;
            hub->joining[j] = hub->joining[--hub->njoining];
            hub->stats.joined++;
            return;
        }
    }
    if (st != SP_OK) {
        if (st == SP_ERR_INVALID_PARAM) {
            hub->stats.refused++;
            sp_ctl_hub_warn(hub, "control: refused a connection from %s: %s", s->base.peer,
                            SP__CTL_WRONG_SECRET);
        } else {
            if (st == SP_ERR_PEER_LOST)
                hub->stats.closed++;
            else
                hub->stats.malformed++;
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s in its handshake: %s",
                            s->base.peer, sp_last_error());
        }
        sp_ctl_hub_drop_joining(hub, j);
        return;
    }
    if (sp__now_ns() >= s->hs_deadline) {
        hub->stats.timed_out++;
        sp_ctl_hub_warn(hub, "control: dropped a connection from %s: no handshake within %d ms",
                        s->base.peer, hub->hs_timeout_ms);
        sp_ctl_hub_drop_joining(hub, j);
    }
}

/* Index of the joining connection that has waited longest (njoining > 0). */
static size_t sp_ctl_hub_oldest(const sp__ctl_hub_t *hub)
{
    size_t oldest = 0;

    for (size_t j = 1; j < hub->njoining; j++)
        if (hub->joining[j]->hs_started < hub->joining[oldest]->hs_started)
            oldest = j;
    return oldest;
}

/*
 * When the listener may be polled again (0: now). It rests after accept ran
 * out of descriptors, and while every handshake slot holds a connection
 * younger than SP_CTL_EVICT_AFTER_NS.
 */
uint64_t sp__ctl_hub_listen_at(const sp__ctl_hub_t *hub)
{
    uint64_t at = hub->listen_resume_ns;

    if (hub->njoining == SP__CTL_HUB_MAX_JOINING)
        at = SP_MAX(at, hub->joining[sp_ctl_hub_oldest(hub)]->hs_started + SP_CTL_EVICT_AFTER_NS);
    return at;
}

/* The listener rests for the next back-off step (10 ms doubling to 1 s); returns it in ms. */
static unsigned long long sp_ctl_hub_rest(sp__ctl_hub_t *hub)
{
    hub->accept_backoff_ns = hub->accept_backoff_ns == 0
                                 ? SP_CTL_ACCEPT_BACKOFF_MIN_NS
                                 : SP_MIN(hub->accept_backoff_ns * 2, SP_CTL_ACCEPT_BACKOFF_MAX_NS);
    hub->listen_resume_ns = sp__now_ns() + hub->accept_backoff_ns;
    return (unsigned long long)(hub->accept_backoff_ns / 1000000u);
}

/*
 * accept() ran out of descriptors (err): the classic reserve trick. The
 * reserve descriptor is given up so that the connections waiting in the
 * backlog can be accepted and closed at once (their clients see a close
 * and, if they are ours, connect again), then taken back; the listener then
 * rests, so that a lasting shortage costs a wake-up per back-off step, not
 * a busy loop, and one warning a second at most.
 */
static void sp_ctl_hub_out_of_fds(sp__ctl_hub_t *hub, int err)
{
    unsigned shed = 0;

    hub->stats.accept_failures++;
    if (hub->reserve_fd >= 0 && (err == EMFILE || err == ENFILE)) {
        close(hub->reserve_fd);
        hub->reserve_fd = -1;
        while (shed < SP_CTL_ACCEPT_BATCH) {
            int fd = accept4(hub->lfd, NULL, NULL, SOCK_CLOEXEC);

            if (fd < 0 && errno == EINTR)
                continue;
            if (fd < 0)
                break;
            close(fd);
            shed++;
        }
        hub->reserve_fd = sp_ctl_reserve_open();
        hub->stats.shed += shed;
    }
    sp_ctl_hub_warn(hub,
                    "control: out of file descriptors accepting connections (%s, errno %d): "
                    "closed %u waiting connection(s) unanswered; accepting again in %llu ms",
                    strerror(err), err, shed, sp_ctl_hub_rest(hub));
}

/*
 * Accepts what is pending on the listener and greets each with HELLO. At
 * most SP__CTL_HUB_MAX_JOINING connections are in the handshake at once;
 * when every slot is taken, a newcomer takes the slot of the oldest if that
 * one has had SP_CTL_EVICT_AFTER_NS to answer, else it waits in the backlog.
 */
static void sp_ctl_hub_accept_pending(sp__ctl_hub_t *hub)
{
    if (hub->reserve_fd < 0)
        hub->reserve_fd = sp_ctl_reserve_open();
    for (int k = 0; k < SP_CTL_ACCEPT_BATCH; k++) {
        char peer[sizeof(((sp__ctl_conn_t *)0)->peer)];
        bool full = hub->njoining == SP__CTL_HUB_MAX_JOINING;
        uint64_t now = sp__now_ns();
        sp__ctl_sock_t *s = NULL;
        size_t oldest = 0;
        int fd = -1, err = 0;
        sp_status_t st;

        if (full) {
            oldest = sp_ctl_hub_oldest(hub);
            if (now - hub->joining[oldest]->hs_started < SP_CTL_EVICT_AFTER_NS)
                return;
        }
        st = sp__ctl_accept_fd(hub->lfd, &fd, peer, sizeof(peer), &err);
        if (st == SP_ERR_NO_RESOURCE) {
            sp_ctl_hub_out_of_fds(hub, err);
            return;
        }
        if (st != SP_OK) {
            hub->stats.accept_failures++;
            sp_ctl_hub_warn(hub, "control: %s; accepting again in %llu ms", sp_last_error(),
                            sp_ctl_hub_rest(hub));
            return;
        }
        if (fd < 0)
            return;
        hub->accept_backoff_ns = 0;
        if (full) {
            sp__ctl_sock_t *old = hub->joining[oldest];

            hub->stats.evicted++;
            sp_ctl_hub_warn(hub,
                            "control: dropped a connection from %s: no handshake after %llu ms "
                            "while all %d handshake slots were taken",
                            old->base.peer,
                            (unsigned long long)((now - old->hs_started) / 1000000u),
                            SP__CTL_HUB_MAX_JOINING);
            sp_ctl_hub_drop_joining(hub, oldest);
        }
        if (sp__ctl_sock_new(fd, peer, &s) != SP_OK) {
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s: %s", peer,
                            sp_last_error());
            continue;
        }
        if (sp__ctl_hs_hello(s) != SP_OK) {
            sp_ctl_hub_warn(hub, "control: dropped a connection from %s: %s", peer,
                            sp_last_error());
            sp__ctl_close(&s->base);
            continue;
        }
        s->hs_started = now;
        s->hs_deadline = sp__ctl_deadline(hub->hs_timeout_ms);
        hub->joining[hub->njoining++] = s;
    }
}

sp_status_t sp__ctl_hub_wait(sp__ctl_hub_t *hub, int timeout_ms, uint32_t *id_p, uint16_t *type_p,
                             void **payload_p, size_t *len_p)
{
    uint64_t deadline = sp__ctl_deadline(timeout_ms);

    if (timeout_ms < 0 && hub->n == 0 && hub->lfd < 0 && hub->njoining == 0 && hub->njoined == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "control hub: waiting forever with no conn and no listener");
    for (unsigned pass = 0;; pass++) {
        size_t njoining = hub->njoining;
        uint64_t now, wait;
        sp_status_t st;

        if (hub->njoined > 0) {
            *id_p = SP__CTL_HUB_NEW;
            *type_p = 0;
            *payload_p = NULL;
            *len_p = 0;
            return SP_OK;
        }
        /*
         * Each backend notes what it watches this pass and how long it lets
         * the pass sleep; then each waits (the poll backend sleeps in ppoll,
         * the MPI backend has nothing to sleep on) and marks what is ready.
         */
        hub->lready = false;
        for (size_t j = 0; j < njoining; j++)
            hub->joining_ready[j] = false;
        for (size_t i = 0; i < hub->n; i++) {
            hub->entries[i].ready = false;
            hub->entries[i].slot = -1;
        }
        now = sp__now_ns();
        for (size_t k = 0; k < SP__CTL_HUB_BACKENDS; k++)
            if ((st = hub->backends[k]->ops->prepare(hub->backends[k], hub, now)) != SP_OK)
                return st;
        wait = sp__ctl_left(deadline);
        for (size_t k = 0; k < SP__CTL_HUB_BACKENDS; k++)
            wait = hub->backends[k]->ops->bound(hub->backends[k], hub, pass, wait);
        for (size_t k = 0; k < SP__CTL_HUB_BACKENDS; k++)
            if ((st = hub->backends[k]->ops->wait(hub->backends[k], hub, wait)) != SP_OK)
                return st;

        /* Conns, round robin from the cursor. */
        for (size_t k = 0; k < hub->n; k++) {
            size_t i = (hub->cursor + k) % hub->n;
            sp__ctl_hub_entry_t *e = &hub->entries[i];
            uint16_t type = 0;
            void *payload = NULL;
            size_t len = 0;
            bool got = false;

            if (!e->ready)
                continue;
            st = sp__ctl_try(e->conn, &got, &type, &payload, &len);
            if (st == SP_ERR_NOMEM)
                return st;
            if (st == SP_OK && got && type < SP__CTL_TYPE_FIRST) {
                sp__free(payload);
                st = sp__ctl_unexpected(e->conn, type);
            }
            if (st != SP_OK) {
                *id_p = e->id;
                sp_ctl_hub_note_gone(hub, e->id, sp_last_error());
                sp_ctl_hub_remove_at(hub, i);
                return st;
            }
            if (got) {
                hub->cursor = (i + 1) % hub->n;
                *id_p = e->id;
                *type_p = type;
                *payload_p = payload;
                *len_p = len;
                return SP_OK;
            }
        }

        /*
         * Handshakes under way, last first: dropping j moves the last one
         * (already stepped) into its place. Those accepted below wait for
         * the next pass.
         */
        for (size_t j = njoining; j-- > 0;)
            sp_ctl_hub_step_joining(hub, j, hub->joining_ready[j]);
        if (hub->lready)
            sp_ctl_hub_accept_pending(hub);
        if (hub->njoined > 0)
            continue;
        /*
         * Nothing came: the expected outcome of the driver's 100 ms ticks,
         * recorded but not logged (at debug, ten times a second).
         */
        if (sp__ctl_left(deadline) == 0)
            return sp__expected(SP_ERR_TIMED_OUT, "control hub: no message within %d ms",
                                timeout_ms);
    }
}
