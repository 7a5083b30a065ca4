/*
 * Two-sided serving, shared by the backends that serve regions by request
 * and reply: ofi in msg mode (providers without FI_RMA) and mpi in twosided
 * mode (and the regions its window cannot take). A reader posts the receive
 * of the block, then sends the owner a request naming the region (id, base,
 * offset, length, a reply tag); the owner's backend receives it, parses its
 * own wire format, and hands it here.
 *
 * This file owns what the two had each copied: the table of served regions
 * (ids handed out here, the base a request must name, replies in flight, the
 * dying flag), the checks every request passes before a byte is sent (the
 * region is served and not being deregistered, the request names its base,
 * the read lies inside it, is not empty and fits one message), the counting
 * of replies and of the served statistics, and the drain of a region as it
 * is deregistered: requests for it are refused from then on, and the replies
 * still reading it get transport.timeout, the backend's progress running and
 * the lock let go between rounds, before the backend abandons them (ofi
 * cancels them, mpi drops them). The backend supplies only the transfers:
 * posting a reply straight from the region, posting a refusal (an empty
 * message its reader reports as a refused fetch), and abandoning replies;
 * receiving requests stays the backend's, and so does the reader's side.
 *
 * Everything here runs with the base lock held (the backend's progress, and
 * mr_reg and mr_dereg through the dispatchers). The table is a list: an
 * executor serves a few map outputs at a time, and a lookup per request is
 * small beside the reply it answers.
 */
#include "transport_int.h"

#include <sched.h>
#include <stdio.h>

void sp__serve_init(sp_transport_t *t, const sp_serve_ops_t *ops, uint64_t id_max, uint64_t len_max)
{
    SP_ASSERT(ops != NULL && ops->size >= sizeof(sp_serve_ops_t) && id_max > 0);
    t->serve.ops = ops;
    t->serve.served = NULL;
    t->serve.next_id = 1;
    t->serve.id_max = id_max;
    t->serve.len_max = len_max;
}

void sp__serve_add(sp_transport_t *t, sp_served_t *r, sp_mr_t *mr, uint64_t base)
{
    sp_serve_t *s = &t->serve;

    r->mr = mr;
    r->base = base;
    r->replies = 0;
    r->dying = false;
    r->id = s->next_id;
    s->next_id = s->next_id < s->id_max ? s->next_id + 1 : 1;
    r->next = s->served;
    s->served = r;
}

sp_served_t *sp__serve_find(sp_transport_t *t, uint64_t id)
{
    for (sp_served_t *r = t->serve.served; r != NULL; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

void sp__serve_remove(sp_transport_t *t, sp_served_t *r)
{
    uint64_t until = sp__now_ns() + t->timeout_ns;

    r->dying = true;
    while (r->replies > 0 && sp__now_ns() < until) {
        (void)t->ops->progress(t);
        if (r->replies == 0)
            break;
        pthread_mutex_unlock(&t->lock);
        sched_yield();
        pthread_mutex_lock(&t->lock);
    }
    if (r->replies > 0)
        t->serve.ops->abandon(t, r);
    for (sp_served_t **pp = &t->serve.served; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
}

void sp__serve_fini(sp_transport_t *t)
{
    if (t->serve.served != NULL)
        sp_warn("%s transport closed with served regions still registered", t->backend);
}

sp_status_t sp__serve_request(sp_transport_t *t, const sp_serve_req_t *q)
{
    sp_served_t *r = sp__serve_find(t, q->id);
    bool sent = false;
    sp_status_t st;

    if (r == NULL || r->dying || q->base != r->base || q->offset > r->mr->len ||
        q->len > r->mr->len - q->offset || q->len == 0 || q->len > t->serve.len_max) {
        char from[32] = "";

        if (q->src >= 0)
            snprintf(from, sizeof(from), " from rank %ld", q->src);
        sp_debug("%s transport: refused a read of %llu bytes at offset %llu of region %llu%s (%s)",
                 t->backend, (unsigned long long)q->len, (unsigned long long)q->offset,
                 (unsigned long long)q->id, from,
                 r == NULL ? "no such region" : "out of its bounds or being deregistered");
        return t->serve.ops->refuse(t, q);
    }
    st = t->serve.ops->reply(t, q, r, (const char *)r->mr->addr + q->offset, (size_t)q->len, &sent);
    if (sent) {
        r->replies++;
        t->stats.requests_served++;
        t->stats.bytes_served += q->len;
    }
    return st;
}

void sp__serve_reply_done(sp_transport_t *t, sp_served_t *r)
{
    SP_UNUSED(t);
    if (r != NULL) {
        SP_ASSERT(r->replies > 0);
        r->replies--;
    }
}
