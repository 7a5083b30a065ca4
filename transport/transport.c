/*
 * Entry points of the transport layer: choose the backend from the
 * configuration and dispatch each call through the backend's ops table. A
 * slot a backend leaves empty answers SP_ERR_UNSUPPORTED from one place,
 * naming the backend and the operation. The dispatchers take the base lock
 * around the slots that change a backend's state (transport_int.h), and the
 * machinery every backend shares lives here: the completion ring with its
 * outstanding count (a fetch stays outstanding until poll returns its final
 * completion, so the ring, sized 2 * max_outstanding + 1 at open for a held
 * failure and its release, never overflows), the poll loop, and the progress
 * thread that calls the backend's progress whenever no caller holds the lock.
 * Backends are opened from a table by their transport.backend name; the same
 * table names each backend's process-wide hooks, which the backend-neutral
 * calls of transport_proc.h run for every backend that has one.
 *
 * A fetch that failed while the provider still holds its destination (a
 * timeout the provider could not cancel at once) is handed back twice: the
 * failure at once, with held set, and a release once the backend got the
 * destination back, which is when the fetch stops being outstanding. So the
 * caller hears of the timeout without waiting, and never frees memory the
 * provider may still write.
 */
#include "bytes.h"
#include "transport_int.h"

#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static sp_status_t sp_transport_unsupported(const sp_transport_t *t, const char *op)
{
    return SP_RAISE(SP_ERR_UNSUPPORTED, "transport backend %s does not support %s", t->backend, op);
}

/* The base lock, unless the backend locks itself (transport_int.h). */
static void sp_transport_lock(sp_transport_t *t)
{
    if (!t->ops->own_locking)
        pthread_mutex_lock(&t->lock);
}

static void sp_transport_unlock(sp_transport_t *t)
{
    if (!t->ops->own_locking)
        pthread_mutex_unlock(&t->lock);
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
    atomic_init(&t->stop, false);
    if ((st = sp_conf_get_duration(conf, "transport.timeout", &t->timeout_ns)) != SP_OK ||
        (st = sp_conf_get_int(conf, "transport.max_outstanding", &max_outstanding)) != SP_OK)
        return st;
    t->max_outstanding = (uint32_t)max_outstanding;
    if ((st = sp_conf_get_size(conf, "transport.register_chunk", &t->register_chunk)) != SP_OK)
        return st;
    {
        uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
        /* Chunks are mapped at multiples of their size: whole pages. */
        t->register_chunk = SP_MAX(t->register_chunk / page * page, page);
    }
    t->done_cap = 2 * (size_t)t->max_outstanding + 1;
    t->done = sp__calloc(t->done_cap, sizeof(*t->done));
    t->done_msg = sp__calloc(t->done_cap, sizeof(*t->done_msg));
    if (t->done == NULL || t->done_msg == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the completion ring of a %s transport",
                        backend);
    if (pthread_mutex_init(&t->lock, NULL) != 0)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the lock of a %s transport", backend);
    t->lock_ready = true;
    return SP_OK;
}

void sp__transport_fini_base(sp_transport_t *t)
{
    SP_ASSERT(!t->thread_on);
    sp__file_fini(t);
    sp__free(t->done);
    sp__free(t->done_msg);
    t->done = NULL;
    t->done_msg = NULL;
    if (t->lock_ready)
        pthread_mutex_destroy(&t->lock);
    t->lock_ready = false;
}

sp_status_t sp__transport_admit(sp_transport_t *t)
{
    if (t->outstanding >= t->max_outstanding)
        return SP_RAISE(SP_ERR_BUSY,
                        "%u fetches outstanding (transport.max_outstanding); poll first",
                        t->outstanding);
    return SP_OK;
}

void sp__transport_posted(sp_transport_t *t)
{
    t->outstanding++;
    t->stats.fetches_posted++;
}

/* The ring's next free entry; the outstanding count guarantees one. */
static size_t sp_transport_ring_tail(sp_transport_t *t)
{
    SP_ASSERT(t->done_len < t->done_cap);
    return (t->done_head + t->done_len) % t->done_cap;
}

void sp__transport_push(sp_transport_t *t, void *context, sp_status_t st, int raw, size_t len,
                        uint32_t peer, const char *msg, sp_done_kind_t kind)
{
    size_t tail = sp_transport_ring_tail(t);

    SP_ASSERT(kind == SP_DONE_FINAL || st != SP_OK);
    t->done[tail] = (sp_transport_completion_t){context,
                                                st,
                                                raw,
                                                st == SP_OK ? len : 0,
                                                peer,
                                                kind == SP_DONE_HELD,
                                                kind == SP_DONE_RELEASED};
    t->done_len++;
    if (kind == SP_DONE_RELEASED) {
        t->done_msg[tail][0] = '\0';
    } else if (st == SP_OK) {
        t->stats.fetches_completed++;
        t->stats.bytes_fetched += len;
    } else {
        snprintf(t->done_msg[tail], SP_TRANSPORT_MSG, "%s", msg != NULL ? msg : "");
        t->stats.fetches_failed++;
    }
}

void sp__transport_complete(sp_transport_t *t, void *context, size_t len, uint32_t peer)
{
    if (t->splits != NULL && sp__split_part(t, context, SP_OK, 0, NULL, SP_DONE_FINAL))
        return;
    sp__transport_push(t, context, SP_OK, 0, len, peer, NULL, SP_DONE_FINAL);
}

static void sp_transport_vfail(sp_transport_t *t, void *context, sp_status_t st, int raw,
                               uint32_t peer, sp_done_kind_t kind, const char *fmt, va_list ap)
    SP_PRINTF(7, 0);

static void sp_transport_vfail(sp_transport_t *t, void *context, sp_status_t st, int raw,
                               uint32_t peer, sp_done_kind_t kind, const char *fmt, va_list ap)
{
    char msg[SP_TRANSPORT_MSG];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (t->splits != NULL && sp__split_part(t, context, st, raw, msg, kind))
        return;
    sp__transport_push(t, context, st, raw, 0, peer, msg, kind);
}

void sp__transport_fail(sp_transport_t *t, void *context, sp_status_t st, int raw, uint32_t peer,
                        const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sp_transport_vfail(t, context, st, raw, peer, SP_DONE_FINAL, fmt, ap);
    va_end(ap);
}

void sp__transport_fail_held(sp_transport_t *t, void *context, sp_status_t st, int raw,
                             uint32_t peer, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sp_transport_vfail(t, context, st, raw, peer, SP_DONE_HELD, fmt, ap);
    va_end(ap);
}

void sp__transport_release(sp_transport_t *t, void *context, uint32_t peer)
{
    if (t->splits != NULL && sp__split_part(t, context, SP_ERR_CANCELED, 0, NULL, SP_DONE_RELEASED))
        return;
    sp__transport_push(t, context, SP_ERR_CANCELED, 0, 0, peer, NULL, SP_DONE_RELEASED);
}

/*
 * The shared poll: progress under the lock, then hand over what the ring
 * holds; between empty rounds the lock is let go and the CPU yielded, so
 * other threads may post and the progress thread may run.
 */
static sp_status_t sp_transport_poll_ring(sp_transport_t *t, sp_transport_completion_t *out,
                                          size_t max, int timeout_ms, size_t *n_p)
{
    uint64_t until = sp__now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    size_t n = 0;
    sp_status_t st;

    for (;;) {
        pthread_mutex_lock(&t->lock);
        st = t->ops->progress(t);
        while (st == SP_OK && n < max && t->done_len > 0) {
            out[n] = t->done[t->done_head];
            if (out[n].status != SP_OK && !out[n].released)
                SP_RAISE(out[n].status, "%s", t->done_msg[t->done_head]);
            t->done_head = (t->done_head + 1) % t->done_cap;
            t->done_len--;
            /* Returned to the caller: the slot is free, unless the provider still holds it. */
            if (!out[n].held)
                t->outstanding--;
            n++;
        }
        pthread_mutex_unlock(&t->lock);
        if (st != SP_OK)
            return st;
        if (n > 0 || sp__now_ns() >= until)
            break;
        sched_yield();
    }
    *n_p = n;
    return SP_OK;
}

/* The progress thread: progress whenever the lock is free; back off while nothing happens. */
static void *sp_transport_progress_main(void *arg)
{
    sp_transport_t *t = arg;
    long pause_ns = t->pause_min_ns;
    bool warned = false;

    while (!atomic_load(&t->stop)) {
        struct timespec ts = {0, pause_ns};

        /* A caller holding the lock is progressing (shm even copies inside
         * fi_read): sleep rather than queue on the mutex, which would make
         * every unlock of the caller pay a futex wake. */
        if (pthread_mutex_trylock(&t->lock) == 0) {
            uint64_t before =
                t->stats.fetches_completed + t->stats.fetches_failed + t->stats.requests_served;
            sp_status_t st = t->ops->progress(t);
            uint64_t after =
                t->stats.fetches_completed + t->stats.fetches_failed + t->stats.requests_served;

            pthread_mutex_unlock(&t->lock);
            if (st != SP_OK && !warned) {
                sp_warn("%s progress thread: %s", t->backend, sp_last_error());
                warned = true;
            }
            pause_ns = after != before ? t->pause_min_ns : SP_MIN(pause_ns * 2, t->pause_max_ns);
            ts.tv_nsec = pause_ns;
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

sp_status_t sp__transport_start_thread(sp_transport_t *t, long pause_min_ns, long pause_max_ns)
{
    int rc;

    SP_ASSERT(pause_min_ns > 0 && pause_max_ns >= pause_min_ns && pause_max_ns < 1000000000L);
    t->pause_min_ns = pause_min_ns;
    t->pause_max_ns = pause_max_ns;
    if ((rc = pthread_create(&t->thread, NULL, sp_transport_progress_main, t)) != 0)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start the %s progress thread: %s", t->backend,
                        strerror(rc));
    t->thread_on = true;
    return SP_OK;
}

void sp__transport_stop_thread(sp_transport_t *t)
{
    if (!t->thread_on)
        return;
    atomic_store(&t->stop, true);
    pthread_join(t->thread, NULL);
    t->thread_on = false;
}

/*
 * transport.backend=auto: mpi when the process runs under mpirun (or srun) and
 * asked for MPI by initializing it, so that its ranks can reach each other
 * over it; else ofi.
 */
static const char *sp_transport_auto(void)
{
    int initialized = 0, finalized = 0, size = 0;

    if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized ||
        MPI_Finalized(&finalized) != MPI_SUCCESS || finalized ||
        MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS || size < 2)
        return "ofi";
    return "mpi";
}

/*
 * The backends built in, by their transport.backend name: how to open one,
 * and the process-wide hooks of those that have any (transport_proc.h).
 */
typedef struct sp_transport_backend_entry {
    const char *name;
    sp_status_t (*open)(const sp_conf_t *conf, sp_transport_t **transport_p);
    /* Optional: removes what a process of this backend left behind when it died. */
    void (*clear_dead_process)(long pid);
    /* Optional: sets the environment this backend's libraries read when they start. */
    void (*prepare_env)(const sp_conf_t *conf);
} sp_transport_backend_entry_t;

static const sp_transport_backend_entry_t sp_transport_backends[] = {
    {.name = "ofi",
     .open = sp__ofi_open,
     .clear_dead_process = sp__ofi_shm_clear,
     .prepare_env = sp__ofi_prepare_env},
    {.name = "mpi", .open = sp__mpi_open},
    {.name = "local", .open = sp__local_open},
};

static sp_status_t sp_transport_open_backend(const char *backend, const sp_conf_t *conf,
                                             sp_transport_t **transport_p)
{
    for (size_t i = 0; i < SP_ARRAY_SIZE(sp_transport_backends); i++)
        if (strcmp(backend, sp_transport_backends[i].name) == 0)
            return sp_transport_backends[i].open(conf, transport_p);
    return SP_RAISE(SP_ERR_BAD_CONF, "transport.backend '%s' is not built in", backend);
}

void sp__transport_clear_dead_process(long pid)
{
    for (size_t i = 0; i < SP_ARRAY_SIZE(sp_transport_backends); i++)
        if (sp_transport_backends[i].clear_dead_process != NULL)
            sp_transport_backends[i].clear_dead_process(pid);
}

void sp__transport_prepare_env(const sp_conf_t *conf)
{
    for (size_t i = 0; i < SP_ARRAY_SIZE(sp_transport_backends); i++)
        if (sp_transport_backends[i].prepare_env != NULL)
            sp_transport_backends[i].prepare_env(conf);
}

sp_status_t sp_transport_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    const char *backend = NULL;
    sp_transport_t *net = NULL, *local = NULL;
    bool with_local = false;
    sp_status_t st;

    if ((st = sp_conf_get_string(conf, "transport.backend", &backend)) != SP_OK ||
        (st = sp_conf_get_bool(conf, "transport.local", &with_local)) != SP_OK)
        return st;
    if (strcmp(backend, "auto") == 0)
        backend = sp_transport_auto();
    if ((st = sp_transport_open_backend(backend, conf, &net)) != SP_OK)
        return st;
    if (!with_local || strcmp(backend, "local") == 0) {
        *transport_p = net;
        return SP_OK;
    }
    if ((st = sp__local_open(conf, &local)) != SP_OK) {
        sp_transport_close(net);
        return st;
    }
    return sp__route_open(conf, net, local, transport_p);
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
    sp_transport_lock(t);
    st = t->ops->address(t, b + SP_ADDR_HEADER, cap - SP_ADDR_HEADER, &raw);
    sp_transport_unlock(t);
    if (st != SP_OK)
        return st;
    b[0] = 'S';
    b[1] = 'A';
    b[2] = 1;
    b[3] = 0;
    sp__le_put_u32(b + 4, (uint32_t)raw);
    *len_p = SP_ADDR_HEADER + raw;
    return SP_OK;
}

sp_status_t sp_transport_add_peer(sp_transport_t *t, const void *address, size_t len,
                                  uint32_t *peer_p)
{
    const unsigned char *b = address;
    size_t raw;
    sp_status_t st;

    if (address == NULL || len <= SP_ADDR_HEADER || len > SP_TRANSPORT_ADDR_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address of %zu bytes (%d to %d allowed)", len,
                        SP_ADDR_HEADER + 1, SP_TRANSPORT_ADDR_MAX);
    raw = sp__le_get_u32(b + 4);
    if (b[0] != 'S' || b[1] != 'A' || b[2] != 1 || raw != len - SP_ADDR_HEADER)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "peer address of %zu bytes is not a spate %s address (bad header or "
                        "length)",
                        len, t->backend);
    if (!SP_TRANSPORT_HAS(t, add_peer))
        return sp_transport_unsupported(t, "add_peer");
    sp_transport_lock(t);
    st = t->ops->add_peer(t, b + SP_ADDR_HEADER, raw, peer_p);
    sp_transport_unlock(t);
    return st;
}

sp_status_t sp_transport_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                sp_mr_t **mr_p)
{
    sp_status_t st;

    if (addr == NULL || len == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "cannot register an empty region");
    if (!SP_TRANSPORT_HAS(t, mr_reg))
        return sp_transport_unsupported(t, "mr_reg");
    sp_transport_lock(t);
    st = t->ops->mr_reg(t, addr, len, remote_read, mr_p);
    sp_transport_unlock(t);
    return st;
}

sp_status_t sp_transport_mr_reg_file(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                                     sp_mr_t **mr_p)
{
    sp_status_t st;

    if (len == 0 || fd < 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot serve %zu bytes of file descriptor %d: empty or no file", len, fd);
    sp_transport_lock(t);
    if (SP_TRANSPORT_HAS(t, mr_reg_file))
        st = t->ops->mr_reg_file(t, fd, file_offset, len, mr_p);
    else if (SP_TRANSPORT_HAS(t, mr_reg) && SP_TRANSPORT_HAS(t, mr_pack))
        st = sp__file_mr_reg(t, fd, file_offset, len, mr_p);
    else
        st = sp_transport_unsupported(t, "mr_reg_file");
    sp_transport_unlock(t);
    return st;
}

sp_status_t sp_transport_file_rebind(sp_transport_t *t, uint64_t dev, uint64_t ino, int fd)
{
    sp_status_t st;

    if (fd < 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "rebind served file: no file descriptor");
    sp_transport_lock(t);
    if (SP_TRANSPORT_HAS(t, file_rebind))
        st = t->ops->file_rebind(t, dev, ino, fd);
    else if (SP_TRANSPORT_HAS(t, mr_reg_file))
        st = SP_OK; /* the backend serves files by their identity, not mapped: nothing to do */
    else
        st = sp__file_rebind(t, dev, ino, fd);
    sp_transport_unlock(t);
    return st;
}

void sp_transport_mr_dereg(sp_mr_t *mr)
{
    sp_transport_t *t;

    if (mr == NULL || (!mr->file && !SP_TRANSPORT_HAS(mr->transport, mr_dereg)))
        return;
    t = mr->transport;
    sp_transport_lock(t);
    if (mr->file)
        sp__file_mr_dereg(mr);
    else
        t->ops->mr_dereg(mr);
    sp_transport_unlock(t);
}

sp_status_t sp_transport_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    if (!mr->remote_read)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "region at %p is not registered for remote reads",
                        mr->addr);
    if (mr->file)
        return sp__file_mr_pack(mr, buf, cap, len_p); /* chunks never change once registered */
    return SP_TRANSPORT_HAS(mr->transport, mr_pack)
               ? mr->transport->ops->mr_pack(mr, buf, cap, len_p)
               : sp_transport_unsupported(mr->transport, "mr_pack");
}

/* The checks every fetch passes before its backend sees it. */
static sp_status_t sp_transport_fetch_check(const void *rkey, size_t rkey_len, size_t len,
                                            const void *dest, const sp_mr_t *local)
{
    const char *l = local != NULL ? (const char *)local->addr : NULL;
    const char *d = dest;

    /* The destination must lie inside the local registered region. */
    if (local == NULL || local->file || d < l || len > local->len ||
        d - l > (ptrdiff_t)(local->len - len))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes: destination is not inside a registered local region",
                        len);
    if (rkey == NULL || rkey_len == 0 || rkey_len > SP_TRANSPORT_RKEY_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes (1 to %d allowed)", rkey_len,
                        SP_TRANSPORT_RKEY_MAX);
    return SP_OK;
}

sp_status_t sp_transport_fetch_file(sp_transport_t *t, uint32_t peer, const void *rkey,
                                    size_t rkey_len, const char *path, uint64_t offset, size_t len,
                                    void *dest, sp_mr_t *local, void *context)
{
    sp_status_t st = sp_transport_fetch_check(rkey, rkey_len, len, dest, local);

    if (st != SP_OK)
        return st;
    if (!SP_TRANSPORT_HAS(t, fetch))
        return sp_transport_unsupported(t, "fetch");
    sp_transport_lock(t);
    /* A chunked key is ours (file_mr.c), never a backend's, and no backend reading
     * files directly makes one, so its path is of no use. */
    if (!t->ops->own_locking && sp__is_chunked_key(rkey, rkey_len))
        st = sp__chunked_fetch(t, peer, rkey, rkey_len, offset, len, dest, local, context);
    else if (path != NULL && SP_TRANSPORT_HAS(t, fetch_file))
        st = t->ops->fetch_file(t, peer, rkey, rkey_len, path, offset, len, dest, local, context);
    else
        st = t->ops->fetch(t, peer, rkey, rkey_len, offset, len, dest, local, context);
    sp_transport_unlock(t);
    return st;
}

sp_status_t sp_transport_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                               uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                               void *context)
{
    return sp_transport_fetch_file(t, peer, rkey, rkey_len, NULL, offset, len, dest, local,
                                   context);
}

sp_status_t sp_transport_poll(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                              int timeout_ms, size_t *n_p)
{
    if (SP_TRANSPORT_HAS(t, poll))
        return t->ops->poll(t, out, max, timeout_ms, n_p);
    if (SP_TRANSPORT_HAS(t, progress))
        return sp_transport_poll_ring(t, out, max, timeout_ms, n_p);
    return sp_transport_unsupported(t, "poll");
}

void sp_transport_stats(const sp_transport_t *transport, sp_transport_stats_t *stats_p)
{
    sp_transport_t *t = (sp_transport_t *)transport; /* the lock, not the object, changes */

    if (SP_TRANSPORT_HAS(t, stats)) {
        t->ops->stats(t, stats_p);
        return;
    }
    pthread_mutex_lock(&t->lock);
    *stats_p = t->stats;
    pthread_mutex_unlock(&t->lock);
}
