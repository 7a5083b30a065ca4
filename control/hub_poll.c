/*
 * The hub's poll backend: the listener, the joining connections and every
 * stream conn in one ppoll(). Each pass fills the pollfds afresh (the
 * listener first unless it rests, then the joining connections, then the
 * stream conns, each entry noting its slot), since membership changes
 * between passes; the fill costs what the ppoll() it feeds costs, one step
 * per descriptor.
 *
 * It is the backend that sleeps. A conn or joining connection with bytes
 * read ahead (buffered) is ready without waiting, so the pass does not
 * sleep; neither past a handshake's deadline nor past the end of the
 * listener's rest, so that both are handled on time.
 */
#include "control/hub_int.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

typedef struct sp_ctl_hub_poll {
    sp__ctl_hub_backend_t base;
    struct pollfd *pfds;
    size_t cap, nfds;
    bool lpolled; /* the listener is in this pass's pollfds (slot 0) */
} sp_ctl_hub_poll_t;

static sp_ctl_hub_poll_t *sp_ctl_hub_poll(sp__ctl_hub_backend_t *b)
{
    return sp_container_of(b, sp_ctl_hub_poll_t, base);
}

static const sp_ctl_hub_poll_t *sp_ctl_hub_poll_const(const sp__ctl_hub_backend_t *b)
{
    return sp_container_of(b, const sp_ctl_hub_poll_t, base);
}

static sp_status_t sp_ctl_hub_poll_prepare(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub,
                                           uint64_t now)
{
    sp_ctl_hub_poll_t *p = sp_ctl_hub_poll(b);
    size_t need = hub->n + hub->njoining + 1, nfds = 0;

    if (need > p->cap) {
        struct pollfd *grown = sp__realloc(p->pfds, need * sizeof(*grown));

        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "control hub: no memory for %zu pollfds", need);
        p->pfds = grown;
        p->cap = need;
    }
    p->lpolled = hub->lfd >= 0 && now >= sp__ctl_hub_listen_at(hub);
    if (p->lpolled)
        p->pfds[nfds++] = (struct pollfd){.fd = hub->lfd, .events = POLLIN};
    for (size_t j = 0; j < hub->njoining; j++)
        p->pfds[nfds++] = (struct pollfd){.fd = hub->joining[j]->base.fd, .events = POLLIN};
    for (size_t i = 0; i < hub->n; i++) {
        sp__ctl_hub_entry_t *e = &hub->entries[i];

        if (e->backend == b) {
            e->slot = (int)nfds;
            p->pfds[nfds++] = (struct pollfd){.fd = e->conn->fd, .events = POLLIN};
        }
    }
    p->nfds = nfds;
    return SP_OK;
}

static uint64_t sp_ctl_hub_poll_bound(const sp__ctl_hub_backend_t *b, const sp__ctl_hub_t *hub,
                                      unsigned pass, uint64_t wait_ns)
{
    const sp_ctl_hub_poll_t *p = sp_ctl_hub_poll_const(b);
    uint64_t wait = wait_ns, now = sp__now_ns();

    (void)pass;
    for (size_t i = 0; i < hub->n; i++)
        if (hub->entries[i].conn->buffered)
            return 0;
    for (size_t j = 0; j < hub->njoining; j++) {
        uint64_t hd = hub->joining[j]->hs_deadline;

        if (hub->joining[j]->base.buffered)
            return 0;
        wait = SP_MIN(wait, hd > now ? hd - now : 0);
    }
    /* A resting listener is polled again when its rest is over. */
    if (hub->lfd >= 0 && !p->lpolled) {
        uint64_t at = sp__ctl_hub_listen_at(hub);

        wait = SP_MIN(wait, at > now ? at - now : 0);
    }
    return wait;
}

static sp_status_t sp_ctl_hub_poll_wait(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub,
                                        uint64_t wait_ns)
{
    sp_ctl_hub_poll_t *p = sp_ctl_hub_poll(b);
    size_t lslot = p->lpolled ? 1 : 0;

    hub->stats.polls++;
    if (sp__ctl_ppoll(p->pfds, p->nfds, wait_ns) < 0)
        return SP_RAISE(SP_ERR_INTERNAL, "control hub: poll over %zu fds: %s (errno %d)", p->nfds,
                        strerror(errno), errno);
    hub->lready = p->lpolled && p->pfds[0].revents != 0;
    for (size_t j = 0; j < hub->njoining; j++)
        hub->joining_ready[j] = p->pfds[lslot + j].revents != 0;
    for (size_t i = 0; i < hub->n; i++) {
        sp__ctl_hub_entry_t *e = &hub->entries[i];

        if (e->slot >= 0 && e->backend == b)
            e->ready = e->conn->buffered || p->pfds[e->slot].revents != 0;
    }
    return SP_OK;
}

static void sp_ctl_hub_poll_destroy(sp__ctl_hub_backend_t *b)
{
    sp_ctl_hub_poll_t *p = sp_ctl_hub_poll(b);

    sp__free(p->pfds);
    sp__free(p);
}

static const sp__ctl_hub_ops_t sp_ctl_hub_poll_ops = {
    .size = sizeof(sp__ctl_hub_ops_t),
    .name = "poll",
    .prepare = sp_ctl_hub_poll_prepare,
    .bound = sp_ctl_hub_poll_bound,
    .wait = sp_ctl_hub_poll_wait,
    .destroy = sp_ctl_hub_poll_destroy,
};

sp_status_t sp__ctl_hub_poll_create(sp__ctl_hub_backend_t **b_p)
{
    sp_ctl_hub_poll_t *p = sp__calloc(1, sizeof(*p));

    if (p == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control hub: out of memory");
    p->base.ops = &sp_ctl_hub_poll_ops;
    *b_p = &p->base;
    return SP_OK;
}
