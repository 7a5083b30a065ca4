/*
 * Entry points of the transport layer: choose the backend from the
 * configuration and dispatch each call through the backend's ops table. A
 * slot a backend leaves empty answers SP_ERR_UNSUPPORTED from one place,
 * naming the backend and the operation.
 */
#include "transport_int.h"

#include <string.h>

static sp_status_t sp_transport_unsupported(const sp_transport_t *t, const char *op)
{
    return SP_RAISE(SP_ERR_UNSUPPORTED, "transport backend %s does not support %s", t->backend, op);
}

/* True when ops has a non-NULL slot at offset (and is large enough to hold it). */
#define SP_TRANSPORT_HAS(t, slot)                                                                  \
    ((t)->ops->size >= offsetof(sp_transport_ops_t, slot) + sizeof((t)->ops->slot) &&              \
     (t)->ops->slot != NULL)

sp_status_t sp__transport_init_base(sp_transport_t *t, const sp_conf_t *conf,
                                    const sp_transport_ops_t *ops, const char *backend)
{
    int64_t max_outstanding = 0;
    sp_status_t st;

    t->ops = ops;
    t->backend = backend;
    if ((st = sp_conf_get_duration(conf, "transport.timeout", &t->timeout_ns)) != SP_OK ||
        (st = sp_conf_get_int(conf, "transport.max_outstanding", &max_outstanding)) != SP_OK)
        return st;
    t->max_outstanding = (uint32_t)max_outstanding;
    return SP_OK;
}

sp_status_t sp_transport_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    const char *backend = NULL;
    sp_status_t st = sp_conf_get_string(conf, "transport.backend", &backend);

    if (st != SP_OK)
        return st;
    if (strcmp(backend, "ofi") == 0)
        return sp__ofi_open(conf, transport_p);
    if (strcmp(backend, "mpi") == 0)
        return sp__mpi_open(conf, transport_p);
    return SP_RAISE(SP_ERR_BAD_CONF, "transport.backend '%s' is not built in", backend);
}

void sp_transport_close(sp_transport_t *transport)
{
    if (transport != NULL)
        transport->ops->close(transport);
}

const char *sp_transport_backend(const sp_transport_t *transport) { return transport->backend; }

const char *sp_transport_provider(const sp_transport_t *transport) { return transport->provider; }

/*
 * Addresses travel in an envelope: 'S' 'A', version 1, a reserved byte, the
 * u32 length of the backend's address, then that address. Some providers
 * accept any bytes as an address (shm takes any string), so the envelope is
 * what lets a peer's address from the wire be checked.
 */
#define SP_ADDR_HEADER 8

sp_status_t sp_transport_address(sp_transport_t *t, void *buf, size_t cap, size_t *len_p)
{
    unsigned char *b = buf;
    size_t raw = 0;
    sp_status_t st;

    if (!SP_TRANSPORT_HAS(t, address))
        return sp_transport_unsupported(t, "address");
    if (cap <= SP_ADDR_HEADER)
        return SP_RAISE(SP_ERR_TOO_LARGE, "an address needs more than %d bytes", SP_ADDR_HEADER);
    st = t->ops->address(t, b + SP_ADDR_HEADER, cap - SP_ADDR_HEADER, &raw);
    if (st != SP_OK)
        return st;
    b[0] = 'S';
    b[1] = 'A';
    b[2] = 1;
    b[3] = 0;
    for (int i = 0; i < 4; i++)
        b[4 + i] = (unsigned char)(raw >> (8 * i));
    *len_p = SP_ADDR_HEADER + raw;
    return SP_OK;
}

sp_status_t sp_transport_add_peer(sp_transport_t *t, const void *address, size_t len,
                                  uint32_t *peer_p)
{
    const unsigned char *b = address;
    size_t raw;

    if (address == NULL || len <= SP_ADDR_HEADER || len > SP_TRANSPORT_ADDR_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address of %zu bytes (%d to %d allowed)", len,
                        SP_ADDR_HEADER + 1, SP_TRANSPORT_ADDR_MAX);
    raw = (size_t)b[4] | (size_t)b[5] << 8 | (size_t)b[6] << 16 | (size_t)b[7] << 24;
    if (b[0] != 'S' || b[1] != 'A' || b[2] != 1 || raw != len - SP_ADDR_HEADER)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "peer address of %zu bytes is not a spate %s address (bad header or "
                        "length)",
                        len, t->backend);
    return SP_TRANSPORT_HAS(t, add_peer) ? t->ops->add_peer(t, b + SP_ADDR_HEADER, raw, peer_p)
                                         : sp_transport_unsupported(t, "add_peer");
}

sp_status_t sp_transport_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                sp_mr_t **mr_p)
{
    if (addr == NULL || len == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "cannot register an empty region");
    return SP_TRANSPORT_HAS(t, mr_reg) ? t->ops->mr_reg(t, addr, len, remote_read, mr_p)
                                       : sp_transport_unsupported(t, "mr_reg");
}

void sp_transport_mr_dereg(sp_mr_t *mr)
{
    if (mr != NULL && SP_TRANSPORT_HAS(mr->transport, mr_dereg))
        mr->transport->ops->mr_dereg(mr);
}

sp_status_t sp_transport_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    if (!mr->remote_read)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "region at %p is not registered for remote reads",
                        mr->addr);
    return SP_TRANSPORT_HAS(mr->transport, mr_pack)
               ? mr->transport->ops->mr_pack(mr, buf, cap, len_p)
               : sp_transport_unsupported(mr->transport, "mr_pack");
}

sp_status_t sp_transport_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                               uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                               void *context)
{
    const char *l = local != NULL ? (const char *)local->addr : NULL;
    const char *d = dest;

    /* The destination must lie inside the local registered region. */
    if (local == NULL || d < l || len > local->len || d - l > (ptrdiff_t)(local->len - len))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes: destination is not inside a registered local region",
                        len);
    if (rkey == NULL || rkey_len == 0 || rkey_len > SP_TRANSPORT_RKEY_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes (1 to %d allowed)", rkey_len,
                        SP_TRANSPORT_RKEY_MAX);
    return SP_TRANSPORT_HAS(t, fetch)
               ? t->ops->fetch(t, peer, rkey, rkey_len, offset, len, dest, local, context)
               : sp_transport_unsupported(t, "fetch");
}

sp_status_t sp_transport_poll(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                              int timeout_ms, size_t *n_p)
{
    return SP_TRANSPORT_HAS(t, poll) ? t->ops->poll(t, out, max, timeout_ms, n_p)
                                     : sp_transport_unsupported(t, "poll");
}

void sp_transport_stats(const sp_transport_t *transport, sp_transport_stats_t *stats_p)
{
    *stats_p = transport->stats;
}
