/*
 * Private interface of the transport layer: the ops table every backend
 * fills (size-prefixed, designated initializers; an absent slot reaches one
 * shared "unsupported" path in the dispatchers), the base objects the
 * backends embed first and get back from with container_of, and the
 * machinery they share (transport.c): the lock, the completion ring with the
 * outstanding count that bounds it, the poll loop and the progress thread;
 * and the serving by request and reply (serve.c) of the backends that serve
 * regions two-sided.
 *
 * Locking: the dispatchers in transport.c take the base lock around address,
 * add_peer, mr_reg, mr_reg_file, mr_dereg, fetch and fetch_file, so a
 * backend's slots for those run with it held. progress runs with it held too
 * (from poll or the progress thread). close, mr_pack, poll and stats are
 * called without it. A backend that waits inside a locked slot may drop and
 * retake the lock. A backend whose ops say own_locking (a composite over
 * other transports, which lock themselves) gets every slot without it.
 */
#ifndef SPATE_TRANSPORT_INT_H
#define SPATE_TRANSPORT_INT_H

#include "common_int.h"
#include "transport_proc.h"
#include <spate/transport.h>
#include <sys/stat.h>

#include <pthread.h>
#include <stdatomic.h>

/* Room for the message of a failed completion, raised again on the polling thread. */
#define SP_TRANSPORT_MSG 256

typedef struct sp_transport_ops {
    size_t size;      /* sizeof(sp_transport_ops_t) */
    bool own_locking; /* the dispatchers take no lock for this backend */
    void (*close)(sp_transport_t *t);
    sp_status_t (*address)(sp_transport_t *t, void *buf, size_t cap, size_t *len_p);
    sp_status_t (*add_peer)(sp_transport_t *t, const void *addr, size_t len, uint32_t *peer_p);
    sp_status_t (*mr_reg)(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                          sp_mr_t **mr_p);
    void (*mr_dereg)(sp_mr_t *mr);
    sp_status_t (*mr_pack)(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p);
    sp_status_t (*fetch)(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                         uint64_t offset, size_t len, void *dest, sp_mr_t *local, void *context);
    /*
     * Moves finished work into the completion ring (sp__transport_complete
     * and sp__transport_fail) and serves what the backend serves; called with
     * the lock held by the shared poll and the progress thread.
     */
    sp_status_t (*progress)(sp_transport_t *t);
    sp_status_t (*poll)(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                        int timeout_ms, size_t *n_p);
    /*
     * Optional: serves [file_offset, +len) of the file fd itself (local, or a
     * composite); absent: the transport maps and registers the file in chunks
     * through mr_reg (file_mr.c).
     */
    sp_status_t (*mr_reg_file)(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                               sp_mr_t **mr_p);
    /* Optional: a fetch that may read the file at path; absent: fetch. */
    sp_status_t (*fetch_file)(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                              const char *path, uint64_t offset, size_t len, void *dest,
                              sp_mr_t *local, void *context);
    /* Optional: the statistics, when they are not the base's own (a composite). */
    void (*stats)(const sp_transport_t *t, sp_transport_stats_t *stats_p);
    /*
     * Optional: sp_transport_file_rebind for a backend that does not keep
     * the chunks of served files itself (a composite passes it on); absent:
     * the chunks of file_mr.c are rebound.
     */
    sp_status_t (*file_rebind)(sp_transport_t *t, uint64_t dev, uint64_t ino, int fd);
} sp_transport_ops_t;

/*
 * Two-sided serving (serve.c): a backend that serves regions by request and
 * reply (ofi msg mode, mpi twosided and the regions its window cannot take)
 * keeps them in the base's table and hands each request it receives to
 * sp__serve_request, which checks it and answers through these slots.
 */
typedef struct sp_served {
    sp_mr_t *mr;    /* the backend's region (its address and length) */
    uint64_t id;    /* in the key; requests name the region by it */
    uint64_t base;  /* the base a request must name (the address, or MPI's displacement) */
    size_t replies; /* replies posted from it and not yet completed */
    bool dying;     /* being deregistered: requests for it are refused */
    struct sp_served *next;
} sp_served_t;

/* A request as the backend received and parsed it. */
typedef struct sp_serve_req {
    uint64_t id, base, offset, len;
    uint64_t to;  /* where the answer goes, the backend's way (fi_addr_t, or rank) */
    uint64_t tag; /* the reply's tag */
    long src;     /* the requester's rank, for messages; -1 when it has none */
} sp_serve_req_t;

typedef struct sp_serve_ops {
    size_t size; /* sizeof(sp_serve_ops_t) */
    /*
     * Posts the reply of len bytes at from, read from r, answering q. *sent_p
     * says whether it was posted: the base then counts it as a reply of r
     * until the backend calls sp__serve_reply_done. SP_ERR_BUSY: back-pressure,
     * the backend keeps the request to try again; another status is the
     * progress's (the request goes unanswered, and its reader times out).
     */
    sp_status_t (*reply)(sp_transport_t *t, const sp_serve_req_t *q, sp_served_t *r,
                         const void *from, size_t len, bool *sent_p);
    /* Answers q with a refusal (an empty message its reader reports); SP_ERR_BUSY as reply. */
    sp_status_t (*refuse)(sp_transport_t *t, const sp_serve_req_t *q);
    /*
     * r's replies outlived the wait of its deregistration: stop them (cancel,
     * or drop) and say so. On return the region's memory is no longer read
     * through any reply the backend still tracks.
     */
    void (*abandon)(sp_transport_t *t, sp_served_t *r);
} sp_serve_ops_t;

typedef struct sp_serve {
    const sp_serve_ops_t *ops; /* NULL: the backend serves nothing two-sided */
    sp_served_t *served;
    uint64_t next_id, id_max; /* ids run from 1 to id_max, then wrap to 1 */
    uint64_t len_max;         /* longest reply the backend can send */
} sp_serve_t;

struct sp_transport {
    const sp_transport_ops_t *ops;
    const char *backend;
    char provider[64];
    uint64_t timeout_ns;
    uint32_t max_outstanding;
    sp_transport_stats_t stats; /* written with the lock held */
    pthread_mutex_t lock;
    bool lock_ready;
    /* A fetch counts as outstanding from its post until poll returns its
     * final completion (not a held one), so the ring, which may hold a held
     * and a released completion of one fetch, never holds more than twice
     * max_outstanding. */
    uint32_t outstanding;
    sp_transport_completion_t *done;    /* ring of completions not yet returned */
    char (*done_msg)[SP_TRANSPORT_MSG]; /* beside each failed one, its message */
    size_t done_head, done_len, done_cap;
    pthread_t thread;
    bool thread_on;
    atomic_bool stop;
    long pause_min_ns, pause_max_ns; /* the progress thread's back-off */
    uint64_t register_chunk;         /* transport.register_chunk, whole pages */
    struct sp_file_cache *files;     /* chunks of served files (file_mr.c) */
    struct sp_split *splits;         /* reads split at chunk boundaries, in flight */
    sp_serve_t serve;                /* regions served by request and reply (serve.c) */
};

struct sp_mr {
    sp_transport_t *transport;
    void *addr; /* NULL for a served file */
    size_t len;
    bool remote_read;
    bool file; /* a served file in chunks (file_mr.c), not a backend's region */
};

typedef struct sp_split sp_split_t;

/* The backends. */
sp_status_t sp__ofi_open(const sp_conf_t *conf, sp_transport_t **transport_p);
sp_status_t sp__mpi_open(const sp_conf_t *conf, sp_transport_t **transport_p);
sp_status_t sp__local_open(const sp_conf_t *conf, sp_transport_t **transport_p);
/*
 * The composite of transport.local: net (ofi or mpi) for every peer, and
 * local for the peers on this host, which read served files directly. Takes
 * both transports (closed with it, or on failure).
 */
sp_status_t sp__route_open(const sp_conf_t *conf, sp_transport_t *net, sp_transport_t *local,
                           sp_transport_t **transport_p);

/*
 * Largest element count the mpi backend gives one MPI call (INT_MAX); a
 * longer fetch is one derived datatype of chunks this long. Tests lower it.
 */
extern size_t sp__mpi_count_max;

/*
 * The ofi backend's process-wide hooks, run by the backend-neutral calls of
 * transport_proc.h: sp__ofi_shm_clear removes the shm provider's
 * shared-memory regions named after pid ("PID:..." in /dev/shm), those of a
 * process killed before it could close its endpoint (only for a pid whose
 * process is gone, or this one before its first shm endpoint);
 * sp__ofi_prepare_env sets spate's ofi_rxm defaults (FI_OFI_RXM_MSG_RX_SIZE)
 * where the environment has none, which the ofi backend also does before its
 * first fi_getinfo.
 */
void sp__ofi_shm_clear(long pid);
void sp__ofi_prepare_env(const sp_conf_t *conf);

/*
 * Fills the base fields every backend shares from conf (transport.timeout,
 * transport.max_outstanding) and makes its lock and completion ring.
 * sp__transport_fini_base undoes it (after the progress thread stopped);
 * it accepts a base whose init failed part way.
 */
sp_status_t sp__transport_init_base(sp_transport_t *t, const sp_conf_t *conf,
                                    const sp_transport_ops_t *ops, const char *backend);
void sp__transport_fini_base(sp_transport_t *t);

/*
 * Starts the progress thread when transport.progress_thread is true: it calls
 * ops->progress whenever the lock is free, every pause_min_ns while work
 * comes in, backing off to pause_max_ns when idle; it never queues on the lock
 * while a caller holds it. sp__transport_stop_thread joins it (no-op when
 * none runs); a backend's close calls it first.
 */
sp_status_t sp__transport_start_thread(sp_transport_t *t, long pause_min_ns, long pause_max_ns);
void sp__transport_stop_thread(sp_transport_t *t);

/* SP_ERR_BUSY while max_outstanding fetches are outstanding; call before posting. */
sp_status_t sp__transport_admit(sp_transport_t *t);
/* Counts one fetch posted (outstanding until poll returns it). */
void sp__transport_posted(sp_transport_t *t);

/*
 * Queues the successful completion of a fetch of len bytes (lock held). The
 * completion of a part of a split read goes to its split instead.
 */
void sp__transport_complete(sp_transport_t *t, void *context, size_t len, uint32_t peer);
/*
 * Queues a failed completion with its message, which poll raises on the
 * polling thread (the progress thread may be the one that saw the failure).
 */
void sp__transport_fail(sp_transport_t *t, void *context, sp_status_t st, int raw, uint32_t peer,
                        const char *fmt, ...) SP_PRINTF(6, 7);
/*
 * Queues the failure of a fetch whose destination the provider still holds
 * (a timed-out read it could not take back at once): poll returns it at once
 * with held set, and the fetch stays outstanding until
 * sp__transport_release. Lock held.
 */
void sp__transport_fail_held(sp_transport_t *t, void *context, sp_status_t st, int raw,
                             uint32_t peer, const char *fmt, ...) SP_PRINTF(6, 7);
/* The provider gave back the destination of a fetch failed with sp__transport_fail_held. */
void sp__transport_release(sp_transport_t *t, void *context, uint32_t peer);

/* What a completion in the ring says about its fetch's destination. */
typedef enum sp_done_kind {
    SP_DONE_FINAL,    /* the fetch is over: success or failure */
    SP_DONE_HELD,     /* failed, and the provider still holds the destination */
    SP_DONE_RELEASED, /* the provider gave back the destination of a held failure */
} sp_done_kind_t;

/* Puts a completion in the ring as it is (msg: a failure's message, or NULL). */
void sp__transport_push(sp_transport_t *t, void *context, sp_status_t st, int raw, size_t len,
                        uint32_t peer, const char *msg, sp_done_kind_t kind);

/*
 * Two-sided serving (serve.c), lock held. sp__serve_init makes the table of a
 * backend that serves by request and reply: ids up to id_max, replies up to
 * len_max bytes. sp__serve_add puts mr, which requests must name with base,
 * into it under a new id; sp__serve_remove takes it out: requests for it are
 * refused from then on, the replies still reading it get transport.timeout
 * (the backend's progress runs, and the lock is let go between rounds), then
 * ops->abandon. sp__serve_find is the region of an id (NULL: none).
 */
void sp__serve_init(sp_transport_t *t, const sp_serve_ops_t *ops, uint64_t id_max,
                    uint64_t len_max);
void sp__serve_add(sp_transport_t *t, sp_served_t *r, sp_mr_t *mr, uint64_t base);
void sp__serve_remove(sp_transport_t *t, sp_served_t *r);
sp_served_t *sp__serve_find(sp_transport_t *t, uint64_t id);
/* Warns when regions are still served as the transport closes. */
void sp__serve_fini(sp_transport_t *t);
/*
 * Answers one request: checks it against the region it names (served, not
 * being deregistered, the same base, inside its bounds, not empty, not
 * longer than len_max) and replies from the region, or refuses it. Returns
 * ops->reply's or ops->refuse's status.
 */
sp_status_t sp__serve_request(sp_transport_t *t, const sp_serve_req_t *q);
/* A reply posted from r completed (or was dropped); r NULL: its region is gone. */
void sp__serve_reply_done(sp_transport_t *t, sp_served_t *r);

/*
 * fstat()s fd into *sb_p and checks that [file_offset, file_offset + len) lies
 * inside it and that it is a regular file: SP_ERR_IO or SP_ERR_INVALID_PARAM
 * naming the range otherwise (file_mr.c).
 */
sp_status_t sp__file_range_stat(int fd, uint64_t file_offset, size_t len, struct stat *sb_p);

/* Served files in chunks, with their cache and chunked keys (file_mr.c); lock held. */
sp_status_t sp__file_mr_reg(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                            sp_mr_t **mr_p);
void sp__file_mr_dereg(sp_mr_t *mr);
/* sp_transport_file_rebind over the cached chunks; lock held. */
sp_status_t sp__file_rebind(sp_transport_t *t, uint64_t dev, uint64_t ino, int fd);
sp_status_t sp__file_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p);
/* Frees the cache and the splits left at close (warning about chunks still registered). */
void sp__file_fini(sp_transport_t *t);
bool sp__is_chunked_key(const void *rkey, size_t len);
/* A read through a chunked key: one backend read per chunk it touches, one completion. */
sp_status_t sp__chunked_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                              uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                              void *context);
/*
 * Takes the completion of a part of a split read (kind: final, a held
 * failure, or the release of one); false when context is no split.
 */
bool sp__split_part(sp_transport_t *t, void *context, sp_status_t st, int raw, const char *msg,
                    sp_done_kind_t kind);

#endif
