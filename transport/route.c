/*
 * The composite of transport.local: a network transport (ofi or mpi) that
 * reaches every peer, and the local backend for peers on this host, which
 * then read served files straight from the file system instead of through
 * the network stack.
 *
 * An address carries both inner addresses (each in its own envelope): u16
 * length of the local one, the local one, then the network one. add_peer adds
 * every peer to the network transport, whose peer id becomes the composite's,
 * and also to the local one when the local backend accepts it (same host and
 * mount namespace). A served file is registered with both, and its key
 * carries both keys: magic 'S' 'R', version 1, flags 0, u16 network key
 * length, u16 local key length, the network key, the local key.
 * A fetch with a path (sp_transport_fetch_file) from a same-host peer whose
 * key has a local part is a local read; every other fetch goes over the
 * network transport. Poll takes what the local transport finished first
 * (its reads complete inside the fetch), then waits on the network one.
 *
 * The inner transports lock themselves; the composite's own lock guards only
 * its peer table, so reads of several threads go on in parallel.
 */
#include "bytes.h"
#include "transport_int.h"

#include <string.h>

#define SP_ROUTE_KEY_HEADER 8

typedef struct sp_route {
    sp_transport_t base;
    sp_transport_t *net, *local;
    uint32_t *local_id; /* by peer id: its id in the local transport, or UINT32_MAX */
    uint32_t npeers, peers_cap;
} sp_route_t;

typedef struct sp_route_mr {
    sp_mr_t base;
    sp_mr_t *net, *local; /* local: NULL when the local transport does not have it */
} sp_route_mr_t;

static sp_route_t *sp_route(sp_transport_t *t) { return sp_container_of(t, sp_route_t, base); }

static void sp_route_close(sp_transport_t *t)
{
    sp_route_t *r = sp_route(t);

    sp_transport_close(r->local);
    sp_transport_close(r->net);
    sp__free(r->local_id);
    sp__transport_fini_base(&r->base);
    sp__free(r);
}

static const sp_transport_ops_t sp_route_ops;

sp_status_t sp__route_open(const sp_conf_t *conf, sp_transport_t *net, sp_transport_t *local,
                           sp_transport_t **transport_p)
{
    sp_route_t *r = sp__calloc(1, sizeof(*r));
    sp_status_t st;

    if (r == NULL) {
        sp_transport_close(local);
        sp_transport_close(net);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a transport over %s and local", net->backend);
    }
    r->net = net;
    r->local = local;
    if ((st = sp__transport_init_base(&r->base, conf, &sp_route_ops, net->backend)) != SP_OK) {
        sp_route_close(&r->base);
        return st;
    }
    /* "ofi+local": the network backend's name, with the local one for this host. */
    r->base.backend = strcmp(net->backend, "ofi") == 0   ? "ofi+local"
                      : strcmp(net->backend, "mpi") == 0 ? "mpi+local"
                                                         : "net+local";
    memcpy(r->base.provider, net->provider, sizeof(r->base.provider));
    *transport_p = &r->base;
    return SP_OK;
}

static sp_status_t sp_route_address(sp_transport_t *t, void *buf, size_t cap, size_t *len_p)
{
    sp_route_t *r = sp_route(t);
    unsigned char *b = buf;
    size_t llen = 0, nlen = 0;
    sp_status_t st;

    if (cap < 2)
        return SP_RAISE(SP_ERR_TOO_LARGE, "no room for an address in %zu bytes", cap);
    if ((st = sp_transport_address(r->local, b + 2, cap - 2, &llen)) != SP_OK ||
        (st = sp_transport_address(r->net, b + 2 + llen, cap - 2 - llen, &nlen)) != SP_OK)
        return st;
    sp__le_put_u16(b, (uint16_t)llen);
    *len_p = 2 + llen + nlen;
    return SP_OK;
}

static sp_status_t sp_route_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                     uint32_t *peer_p)
{
    sp_route_t *r = sp_route(t);
    const unsigned char *b = addr;
    uint32_t net_id = 0, local_id = UINT32_MAX;
    size_t llen;
    sp_status_t st;

    if (len < 2 || (llen = sp__le_get_u16(b)) > len - 2)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address of %zu bytes is not a %s address", len,
                        t->backend);
    if ((st = sp_transport_add_peer(r->net, b + 2 + llen, len - 2 - llen, &net_id)) != SP_OK)
        return st;
    st = sp_transport_add_peer(r->local, b + 2, llen, &local_id);
    if (st == SP_ERR_UNSUPPORTED)
        local_id = UINT32_MAX; /* on another host: the network reaches it */
    else if (st != SP_OK)
        return st;
    pthread_mutex_lock(&t->lock);
    if (net_id >= r->peers_cap) {
        uint32_t cap = SP_MAX(net_id + 1, r->peers_cap != 0 ? 2 * r->peers_cap : 16);
        uint32_t *p = sp__realloc(r->local_id, cap * sizeof(*p));
        if (p == NULL) {
            pthread_mutex_unlock(&t->lock);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u peers", cap);
        }
        for (uint32_t i = r->peers_cap; i < cap; i++)
            p[i] = UINT32_MAX;
        r->local_id = p;
        r->peers_cap = cap;
    }
    r->local_id[net_id] = local_id;
    r->npeers = SP_MAX(r->npeers, net_id + 1);
    pthread_mutex_unlock(&t->lock);
    *peer_p = net_id;
    return SP_OK;
}

static sp_status_t sp_route_mr_new(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                   sp_route_mr_t **m_p)
{
    sp_route_mr_t *m = sp__calloc(1, sizeof(*m));

    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory region");
    m->base.transport = t;
    m->base.addr = addr;
    m->base.len = len;
    m->base.remote_read = remote_read;
    *m_p = m;
    return SP_OK;
}

static void sp_route_mr_dereg(sp_mr_t *mr)
{
    sp_route_mr_t *m = sp_container_of(mr, sp_route_mr_t, base);

    sp_transport_mr_dereg(m->local);
    sp_transport_mr_dereg(m->net);
    sp__free(m);
}

static sp_status_t sp_route_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                   sp_mr_t **mr_p)
{
    sp_route_t *r = sp_route(t);
    sp_route_mr_t *m = NULL;
    sp_status_t st;

    if ((st = sp_route_mr_new(t, addr, len, remote_read, &m)) != SP_OK)
        return st;
    /* Memory is served by the network only; a destination is both transports'. */
    if ((st = sp_transport_mr_reg(r->net, addr, len, remote_read, &m->net)) != SP_OK ||
        (!remote_read &&
         (st = sp_transport_mr_reg(r->local, addr, len, false, &m->local)) != SP_OK)) {
        sp_route_mr_dereg(&m->base);
        return st;
    }
    *mr_p = &m->base;
    return SP_OK;
}

static sp_status_t sp_route_file_rebind(sp_transport_t *t, uint64_t dev, uint64_t ino, int fd)
{
    /* The local transport serves files by identity: only the network's chunks are mapped. */
    return sp_transport_file_rebind(sp_route(t)->net, dev, ino, fd);
}

static sp_status_t sp_route_mr_reg_file(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                                        sp_mr_t **mr_p)
{
    sp_route_t *r = sp_route(t);
    sp_route_mr_t *m = NULL;
    sp_status_t st;

    if ((st = sp_route_mr_new(t, NULL, len, true, &m)) != SP_OK)
        return st;
    if ((st = sp_transport_mr_reg_file(r->net, fd, file_offset, len, &m->net)) != SP_OK ||
        (st = sp_transport_mr_reg_file(r->local, fd, file_offset, len, &m->local)) != SP_OK) {
        sp_route_mr_dereg(&m->base);
        return st;
    }
    *mr_p = &m->base;
    return SP_OK;
}

static sp_status_t sp_route_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_route_mr_t *m = sp_container_of(mr, sp_route_mr_t, base);
    unsigned char *b = buf;
    size_t nlen = 0, llen = 0;
    sp_status_t st;

    if (cap < SP_ROUTE_KEY_HEADER)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs more than %zu bytes", cap);
    if ((st = sp_transport_mr_pack(m->net, b + SP_ROUTE_KEY_HEADER, cap - SP_ROUTE_KEY_HEADER,
                                   &nlen)) != SP_OK)
        return st;
    if (m->local != NULL &&
        (st = sp_transport_mr_pack(m->local, b + SP_ROUTE_KEY_HEADER + nlen,
                                   cap - SP_ROUTE_KEY_HEADER - nlen, &llen)) != SP_OK)
        return st;
    if (nlen > UINT16_MAX || llen > UINT16_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "inner keys of %zu and %zu bytes", nlen, llen);
    memset(b, 0, SP_ROUTE_KEY_HEADER);
    b[0] = 'S';
    b[1] = 'R';
    b[2] = 1;
    sp__le_put_u16(b + 4, (uint16_t)nlen);
    sp__le_put_u16(b + 6, (uint16_t)llen);
    *len_p = SP_ROUTE_KEY_HEADER + nlen + llen;
    return SP_OK;
}

/* Splits a composite key into its network and local parts (local: length 0 when absent). */
static sp_status_t sp_route_unpack(const void *rkey, size_t len, const unsigned char **net_p,
                                   size_t *nlen_p, const unsigned char **local_p, size_t *llen_p)
{
    const unsigned char *b = rkey;
    size_t nlen, llen;

    if (len < SP_ROUTE_KEY_HEADER || b[0] != 'S' || b[1] != 'R' || b[2] != 1 || b[3] != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    nlen = sp__le_get_u16(b + 4);
    llen = sp__le_get_u16(b + 6);
    if (nlen == 0 || SP_ROUTE_KEY_HEADER + nlen + llen != len)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    *net_p = b + SP_ROUTE_KEY_HEADER;
    *nlen_p = nlen;
    *local_p = b + SP_ROUTE_KEY_HEADER + nlen;
    *llen_p = llen;
    return SP_OK;
}

static sp_status_t sp_route_fetch_file(sp_transport_t *t, uint32_t peer, const void *rkey,
                                       size_t rkey_len, const char *path, uint64_t offset,
                                       size_t len, void *dest, sp_mr_t *local, void *context)
{
    sp_route_t *r = sp_route(t);
    sp_route_mr_t *m = sp_container_of(local, sp_route_mr_t, base);
    const unsigned char *nkey = NULL, *lkey = NULL;
    size_t nlen = 0, llen = 0;
    uint32_t local_id = UINT32_MAX;
    sp_status_t st;

    if ((st = sp_route_unpack(rkey, rkey_len, &nkey, &nlen, &lkey, &llen)) != SP_OK)
        return st;
    pthread_mutex_lock(&t->lock);
    if (peer < r->npeers)
        local_id = r->local_id[peer];
    pthread_mutex_unlock(&t->lock);
    if (path != NULL && llen > 0 && local_id != UINT32_MAX && m->local != NULL)
        return sp_transport_fetch_file(r->local, local_id, lkey, llen, path, offset, len, dest,
                                       m->local, context);
    return sp_transport_fetch(r->net, peer, nkey, nlen, offset, len, dest, m->net, context);
}

static sp_status_t sp_route_fetch(sp_transport_t *t, uint32_t peer, const void *rkey,
                                  size_t rkey_len, uint64_t offset, size_t len, void *dest,
                                  sp_mr_t *local, void *context)
{
    return sp_route_fetch_file(t, peer, rkey, rkey_len, NULL, offset, len, dest, local, context);
}

static sp_status_t sp_route_poll(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                                 int timeout_ms, size_t *n_p)
{
    sp_route_t *r = sp_route(t);
    size_t nl = 0, nn = 0;
    sp_status_t st;

    if ((st = sp_transport_poll(r->local, out, max, 0, &nl)) != SP_OK)
        return st;
    if (nl < max &&
        (st = sp_transport_poll(r->net, out + nl, max - nl, nl > 0 ? 0 : timeout_ms, &nn)) != SP_OK)
        return st;
    *n_p = nl + nn;
    return SP_OK;
}

static void sp_route_stats(const sp_transport_t *t, sp_transport_stats_t *stats_p)
{
    const sp_route_t *r = sp_container_of(t, sp_route_t, base);
    sp_transport_stats_t n, l;

    sp_transport_stats(r->net, &n);
    sp_transport_stats(r->local, &l);
    n.fetches_posted += l.fetches_posted;
    n.fetches_completed += l.fetches_completed;
    n.fetches_failed += l.fetches_failed;
    n.bytes_fetched += l.bytes_fetched;
    n.eagain += l.eagain;
    n.regions_registered += l.regions_registered;
    n.requests_served += l.requests_served;
    n.bytes_served += l.bytes_served;
    *stats_p = n;
}

static const sp_transport_ops_t sp_route_ops = {
    .size = sizeof(sp_transport_ops_t),
    .own_locking = true,
    .close = sp_route_close,
    .address = sp_route_address,
    .add_peer = sp_route_add_peer,
    .mr_reg = sp_route_mr_reg,
    .mr_dereg = sp_route_mr_dereg,
    .mr_pack = sp_route_mr_pack,
    .fetch = sp_route_fetch,
    .poll = sp_route_poll,
    .mr_reg_file = sp_route_mr_reg_file,
    .file_rebind = sp_route_file_rebind,
    .fetch_file = sp_route_fetch_file,
    .stats = sp_route_stats,
};
