/*
 * Private interface of the transport layer: the ops table every backend
 * fills (size-prefixed, designated initializers; an absent slot reaches one
 * shared "unsupported" path in the dispatchers), and the base objects the
 * backends embed first and get back from with container_of.
 */
#ifndef SPATE_TRANSPORT_INT_H
#define SPATE_TRANSPORT_INT_H

#include "common_int.h"
#include <spate/transport.h>

typedef struct sp_transport_ops {
    size_t size; /* sizeof(sp_transport_ops_t) */
    void (*close)(sp_transport_t *t);
    sp_status_t (*address)(sp_transport_t *t, void *buf, size_t cap, size_t *len_p);
    sp_status_t (*add_peer)(sp_transport_t *t, const void *addr, size_t len, uint32_t *peer_p);
    sp_status_t (*mr_reg)(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                          sp_mr_t **mr_p);
    void (*mr_dereg)(sp_mr_t *mr);
    sp_status_t (*mr_pack)(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p);
    sp_status_t (*fetch)(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                         uint64_t offset, size_t len, void *dest, sp_mr_t *local, void *context);
    sp_status_t (*poll)(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                        int timeout_ms, size_t *n_p);
} sp_transport_ops_t;

struct sp_transport {
    const sp_transport_ops_t *ops;
    const char *backend;
    char provider[64];
    uint64_t timeout_ns;
    uint32_t max_outstanding;
    sp_transport_stats_t stats;
};

struct sp_mr {
    sp_transport_t *transport;
    void *addr;
    size_t len;
    bool remote_read;
};

/* The backends. */
sp_status_t sp__ofi_open(const sp_conf_t *conf, sp_transport_t **transport_p);
sp_status_t sp__mpi_open(const sp_conf_t *conf, sp_transport_t **transport_p);

/*
 * Largest element count the mpi backend gives one MPI call (INT_MAX); a
 * longer fetch is one derived datatype of chunks this long. Tests lower it.
 */
extern size_t sp__mpi_count_max;

/* Fills the base fields every backend shares from conf. */
sp_status_t sp__transport_init_base(sp_transport_t *t, const sp_conf_t *conf,
                                    const sp_transport_ops_t *ops, const char *backend);

#endif
