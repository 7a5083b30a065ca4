/*
 * spate — transport layer: moving bytes between executors. A transport is
 * one executor's endpoint on a backend (ofi: libfabric RDM endpoints with
 * one-sided reads, or request and reply over tagged messages,
 * transport.ofi_mode; mpi: the ranks of MPI_COMM_WORLD, reading through a
 * dynamic window or by request and reply, transport.mpi_mode; local:
 * executors of one host reading each other's committed files). Memory regions
 * (pages, or a memory-mapped committed data file) are registered read-only
 * for remote access; their packed remote key travels in the map status; a
 * reader posts a fetch (peer, key, offset, length) into a registered local
 * buffer and polls for its completion.
 */
#ifndef SPATE_TRANSPORT_H
#define SPATE_TRANSPORT_H

#include <spate/common.h>
#include <spate/conf.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sp_transport sp_transport_t;
typedef struct sp_mr sp_mr_t;

/** Largest endpoint address and packed remote key, in bytes. */
#define SP_TRANSPORT_ADDR_MAX 256
#define SP_TRANSPORT_RKEY_MAX 4096

/** A finished fetch: the caller's context, its status and the raw backend code. */
typedef struct sp_transport_completion {
    void *context; /**< as given to sp_transport_fetch() */
    sp_status_t status;
    int raw;       /**< provider or MPI error code, 0 on success */
    size_t length; /**< bytes fetched */
    uint32_t peer; /**< the peer fetched from */
    /**
     * A failed fetch (a timeout) whose destination the provider still holds:
     * it may still write into dest, so dest and its local region stay as they
     * are, and the fetch stays outstanding, until a second completion of the
     * same context comes with released set. Never set on a success.
     */
    bool held;
    /**
     * The end of a fetch returned earlier with held: the provider is done with
     * dest, which is the caller's again. status is SP_ERR_CANCELED and
     * carries no new error (nothing is raised for it).
     */
    bool released;
} sp_transport_completion_t;

typedef struct sp_transport_stats {
    uint64_t fetches_posted;
    uint64_t fetches_completed;
    uint64_t fetches_failed;
    uint64_t bytes_fetched;
    uint64_t eagain; /**< posts deferred by back-pressure */
    uint64_t regions_registered;
    uint64_t requests_served; /**< reads of this executor's regions answered with a message
                                   (mpi two-sided, ofi msg); one-sided reads are not
                                   seen here */
    uint64_t bytes_served;    /**< bytes of those answers */
} sp_transport_stats_t;

/**
 * Opens the transport of one executor: transport.backend (ofi, mpi, local, or
 * auto: mpi when the process initialized MPI and runs on more than one rank,
 * else ofi), transport.local (true: peers on this host read served files
 * directly, through the local backend, and the others over the network
 * backend; the backend's name is then "ofi+local" or "mpi+local"),
 * transport.provider (libfabric provider, e.g. "tcp;ofi_rxm" or "shm"; empty:
 * FI_PROVIDER or libfabric's choice), transport.max_outstanding,
 * transport.timeout, transport.progress_thread, transport.mpi_mode,
 * transport.ofi_mode (rma: one-sided fi_read; msg: a tagged request answered
 * by the owner's progress thread or polls, for providers without FI_RMA;
 * auto: rma where the provider offers it, else msg; every executor must end
 * up in the same mode, a key of the other mode is SP_ERR_INVALID_PARAM).
 * SP_ERR_UNSUPPORTED when no provider offers what the backend needs (message
 * names the provider and the raw code).
 *
 * The local backend serves only files (sp_transport_mr_reg_file) and reads
 * only with a path (sp_transport_fetch_file); its peers must be on this host
 * and in this mount namespace (else add_peer is SP_ERR_UNSUPPORTED).
 *
 * The mpi backend needs MPI initialized by the process (MPI_Init_thread,
 * ideally with MPI_THREAD_MULTIPLE; MPI_Finalize only after
 * sp_transport_close), else SP_ERR_UNSUPPORTED. Its open and close are
 * collective over MPI_COMM_WORLD: every rank opens its transport, and every
 * rank closes it, in the same order as its other collective calls on
 * MPI_COMM_WORLD. A peer id is the peer's rank. With transport.mpi_mode=rget,
 * served regions the window cannot take (overlapping ones, more than Open
 * MPI's osc_rdma_max_attach) are served by request and reply instead; that
 * way, and with twosided, a rank answers requests from its progress thread
 * (MPI_THREAD_MULTIPLE) or else only while it polls.
 */
SP_API sp_status_t sp_transport_open(const sp_conf_t *conf, sp_transport_t **transport_p);

/**
 * Closes the transport; regions must be deregistered first. NULL accepted.
 * Collective over MPI_COMM_WORLD for the mpi backend.
 */
SP_API void sp_transport_close(sp_transport_t *transport);

/**
 * The backend's name ("ofi", "mpi", "local", "ofi+local", "mpi+local") and
 * the provider in use (for mpi, the MPI library).
 */
SP_API const char *sp_transport_backend(const sp_transport_t *transport);
SP_API const char *sp_transport_provider(const sp_transport_t *transport);

/** This endpoint's address into buf (cap bytes); *len_p its length. */
SP_API sp_status_t sp_transport_address(sp_transport_t *transport, void *buf, size_t cap,
                                        size_t *len_p);

/**
 * Adds a peer by its address (from sp_transport_address on the peer);
 * *peer_p is the id to fetch from. An address that does not parse is
 * SP_ERR_BAD_FORMAT.
 */
SP_API sp_status_t sp_transport_add_peer(sp_transport_t *transport, const void *address, size_t len,
                                         uint32_t *peer_p);

/**
 * Registers [addr, addr+len): remote_read makes it readable by peers (a
 * served region), otherwise it is a local fetch destination.
 */
SP_API sp_status_t sp_transport_mr_reg(sp_transport_t *transport, void *addr, size_t len,
                                       bool remote_read, sp_mr_t **mr_p);
SP_API void sp_transport_mr_dereg(sp_mr_t *mr);

/**
 * Serves bytes [file_offset, file_offset+len) of the open file fd (a committed
 * data file, never written again) for remote reads. ofi and mpi map and
 * register the file themselves, in chunks of transport.register_chunk bytes
 * at multiples of it, cached per transport by (device, inode, chunk): another
 * registration of the same file shares the chunks it covers, which go with
 * their last registration; a read that straddles chunks is split, one read
 * per chunk, and completes once. local keys it by its device and inode, never
 * its path. fd is used during the call only. Release with
 * sp_transport_mr_dereg; *mr_p has no address, and is no fetch destination.
 */
SP_API sp_status_t sp_transport_mr_reg_file(sp_transport_t *transport, int fd, uint64_t file_offset,
                                            size_t len, sp_mr_t **mr_p);

/**
 * The served file (dev, ino) was replaced by the file open as fd, which holds
 * the same bytes at the same offsets (a map output held in memory moved to
 * disk): ofi and mpi map fd in place of it under every chunk they registered,
 * so that its registrations, keys and reads in flight stay good while the old
 * file's pages go, and a later sp_transport_mr_reg_file of fd shares those
 * chunks (same keys). local serves files by identity and has nothing to do:
 * its keys of the old file no longer read. fd is used during the call only.
 */
SP_API sp_status_t sp_transport_file_rebind(sp_transport_t *transport, uint64_t dev, uint64_t ino,
                                            int fd);

/** Packs the remote key of a served region (at most SP_TRANSPORT_RKEY_MAX bytes). */
SP_API sp_status_t sp_transport_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p);

/**
 * Posts a one-sided read of len bytes at offset of the region behind the
 * packed key rkey at peer, into dest (inside the registered local region
 * local). The key's recorded region length bounds the read: a read past it
 * is SP_ERR_INVALID_PARAM before anything is posted; a key that does not
 * unpack is SP_ERR_BAD_FORMAT; an unknown peer SP_ERR_INVALID_PARAM.
 * Back-pressure is absorbed (the post is retried while progressing).
 */
SP_API sp_status_t sp_transport_fetch(sp_transport_t *transport, uint32_t peer, const void *rkey,
                                      size_t rkey_len, uint64_t offset, size_t len, void *dest,
                                      sp_mr_t *local, void *context);

/**
 * sp_transport_fetch of a region registered with sp_transport_mr_reg_file,
 * naming the file on this host: path (from the map status; NULL when not
 * known) is opened by a backend that reads files (local), which checks that
 * it is the file the key names and that the read lies inside the region
 * before reading; the other backends ignore it.
 */
SP_API sp_status_t sp_transport_fetch_file(sp_transport_t *transport, uint32_t peer,
                                           const void *rkey, size_t rkey_len, const char *path,
                                           uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                                           void *context);

/**
 * Progresses and returns up to max finished fetches in out (*n_p of them),
 * waiting at most timeout_ms for the first. A fetch older than
 * transport.timeout completes with SP_ERR_TIMED_OUT naming the peer at once;
 * the provider is asked to cancel it (fi_cancel, MPI_Cancel), and where it
 * cannot take the read back yet, that completion has held set and a second
 * one (released) follows when it is done with the destination: until then
 * the caller must neither free nor reuse dest, nor deregister its region.
 * Every fetch ends with exactly one completion that has held clear.
 */
SP_API sp_status_t sp_transport_poll(sp_transport_t *transport, sp_transport_completion_t *out,
                                     size_t max, int timeout_ms, size_t *n_p);

SP_API void sp_transport_stats(const sp_transport_t *transport, sp_transport_stats_t *stats_p);

/**
 * Wire-up under MPI (any backend; MPI is then only the bootstrap): every
 * rank of MPI_COMM_WORLD exchanges its address with MPI_Allgather and adds
 * every other rank as a peer. peers_p gets, per rank, its peer id (a rank's
 * own entry is UINT32_MAX); it has room for the world size. Collective: every
 * rank calls it. SP_ERR_UNSUPPORTED when MPI is not initialized.
 */
SP_API sp_status_t sp_transport_wireup_mpi(sp_transport_t *transport, uint32_t *peers_p,
                                           size_t count);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_TRANSPORT_H */
