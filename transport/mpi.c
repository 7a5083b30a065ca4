/*
 * The mpi backend: executors are the ranks of MPI_COMM_WORLD and map outputs
 * are served one-sided through one MPI-3 dynamic window, so an executor whose
 * MPI offloads RMA (Open MPI's osc/rdma over vader's single copy, or an RDMA
 * network) serves reads without its CPU.
 *
 * The process calls MPI_Init_thread before sp_transport_open; without it the
 * open is SP_ERR_UNSUPPORTED. Opening and closing are collective over
 * MPI_COMM_WORLD: the open duplicates it into a private communicator, creates
 * the dynamic window on it and opens a passive-target epoch on every rank
 * (MPI_Win_lock_all with MPI_MODE_NOCHECK) that lasts until close.
 * MPI_ERRORS_RETURN is set on both, so MPI failures become statuses whose
 * message carries MPI_Error_string and the raw code.
 *
 * An address is the rank (u32 little endian); a peer id is that rank. A served
 * region is attached to the window (MPI_Win_attach); a local destination needs
 * nothing. A packed remote key is 28 bytes: magic 'S' 'M', version 1, flags
 * (none defined, 0), 4 reserved, u64 base (MPI_Get_address), u64 length, u32
 * owner rank. A fetch is checked against the key's length and owner before
 * anything is posted, then posted as MPI_Rget at displacement base + offset.
 * Counts above sp__mpi_count_max (INT_MAX) are described by one derived
 * datatype (chunks plus a remainder), so no fetch length is refused.
 *
 * Two limits of Open MPI 4.1's osc/rdma shape mr_reg. Attached regions may not
 * overlap (MPI_ERR_RMA_ATTACH), and a window takes at most osc_rdma_max_attach
 * of them; reaching that limit leaves the window's region lock held, after
 * which readers of this rank hang. So overlaps are refused here, and the limit
 * is read through MPI_T when the variable exists and enforced before
 * MPI_Win_attach is called.
 *
 * Each posted read is an op with its request and a deadline, kept in two
 * parallel arrays for MPI_Testsome. Poll tests them (or, with none posted,
 * calls MPI_Iprobe so that MPI still progresses reads served to others) and
 * pushes completions into a ring; a fetch counts against
 * transport.max_outstanding until poll returns its completion, which bounds
 * the ring. MPI cannot cancel an RMA request, so an op older than
 * transport.timeout is reported SP_ERR_TIMED_OUT at once and its request is
 * kept until MPI completes it; MPI_Win_flush_local_all would block, so it is
 * never used for progress. One mutex guards the transport's state, so calls
 * may come from several threads (MPI must then provide MPI_THREAD_SERIALIZED
 * or more). With transport.progress_thread and MPI_THREAD_MULTIPLE, a thread
 * of the transport calls MPI_Iprobe on the private communicator, so reads
 * that an MPI carries out with the target's CPU (active-message RMA) are
 * served while no task polls; it touches none of the transport's state. On
 * Open MPI 4.1 over vader the reads are single copies that need no target
 * progress at all.
 */
#include "transport_int.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define SP_MPI_KEY_BYTES  28
#define SP_MPI_ADDR_BYTES 4
/* The progress thread's pause between two MPI_Iprobe calls. */
#define SP_MPI_PROGRESS_NS 100000L

/* Tests lower it to reach the derived-datatype path (transport_int.h). */
size_t sp__mpi_count_max = INT_MAX;

typedef struct sp_mpi_op {
    void *user;
    uint32_t peer;
    size_t len;
    uint64_t deadline;
    MPI_Datatype type; /* a derived datatype to free at completion, or MPI_DATATYPE_NULL */
    bool timed_out;    /* reported already; waiting for MPI to complete the request */
} sp_mpi_op_t;

typedef struct sp_mpi_mr {
    sp_mr_t base;
    MPI_Aint disp;          /* MPI_Get_address of addr */
    struct sp_mpi_mr *next; /* in the transport's list of attached regions */
} sp_mpi_mr_t;

typedef struct sp_mpi {
    sp_transport_t base;
    MPI_Comm comm;
    MPI_Win win;
    bool locked;      /* inside the MPI_Win_lock_all epoch */
    int rank, size;   /* in comm, which mirrors MPI_COMM_WORLD */
    int thread_level; /* MPI_Query_thread */
    bool *added;      /* size entries: the rank was added as a peer */
    sp_mpi_mr_t *attached;
    size_t nattached;
    size_t attach_max; /* osc_rdma_max_attach; 0 when MPI names no limit */
    /* Posted ops: reqs[i] belongs to ops[i]; indices and statuses for Testsome. */
    MPI_Request *reqs;
    sp_mpi_op_t *ops;
    int *indices;
    MPI_Status *statuses;
    size_t nlive, live_cap;
    uint32_t outstanding;            /* posted, completion not yet returned by poll */
    sp_transport_completion_t *done; /* ring of completions not yet returned */
    size_t done_head, done_len, done_cap;
    pthread_mutex_t lock; /* the transport's state; held around its MPI calls */
    bool lock_ready;
    pthread_t thread;
    bool thread_on;
    atomic_bool stop;
} sp_mpi_t;

static sp_mpi_t *sp_mpi(sp_transport_t *t) { return sp_container_of(t, sp_mpi_t, base); }

/* MPI's text for rc into buf; the raw code goes beside it in each message. */
static const char *sp_mpi_strerror(int rc, char *buf)
{
    int len = 0;

    if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS)
        snprintf(buf, MPI_MAX_ERROR_STRING, "unknown MPI error");
    return buf;
}

static sp_status_t sp_mpi_error(sp_status_t st, const char *what, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];

    return SP_RAISE(st, "MPI %s failed: %s (raw %d)", what, sp_mpi_strerror(rc, msg), rc);
}

/*
 * The attach limit of Open MPI's osc/rdma (osc_rdma_max_attach), read through
 * the MPI tool interface; 0 when this MPI has no such variable.
 */
static size_t sp_mpi_attach_limit(void)
{
    char name[128], desc[8];
    int provided = 0, index = -1, name_len = sizeof(name), desc_len = sizeof(desc);
    int verbosity = 0, bind = 0, scope = 0, count = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_T_enum enumtype;
    MPI_T_cvar_handle handle;
    size_t limit = 0;

    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS)
        return 0;
    if (MPI_T_cvar_get_index("osc_rdma_max_attach", &index) == MPI_SUCCESS &&
        MPI_T_cvar_get_info(index, name, &name_len, &verbosity, &type, &enumtype, desc, &desc_len,
                            &bind, &scope) == MPI_SUCCESS &&
        (type == MPI_UNSIGNED || type == MPI_INT) &&
        MPI_T_cvar_handle_alloc(index, NULL, &handle, &count) == MPI_SUCCESS) {
        if (count == 1) {
            unsigned value = 0; /* an int has the same size and a non-negative value */
            if (MPI_T_cvar_read(handle, &value) == MPI_SUCCESS)
                limit = value;
        }
        MPI_T_cvar_handle_free(&handle);
    }
    MPI_T_finalize();
    return limit;
}

/* Drives MPI's progress for reads served to others; see the design note. */
static void *sp_mpi_progress_main(void *arg)
{
    sp_mpi_t *m = arg;
    bool warned = false;

    while (!atomic_load(&m->stop)) {
        struct timespec ts = {0, SP_MPI_PROGRESS_NS};
        int flag = 0,
            rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, m->comm, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS && !warned) {
            char msg[MPI_MAX_ERROR_STRING];
            sp_warn("mpi progress thread: MPI_Iprobe failed: %s (raw %d)", sp_mpi_strerror(rc, msg),
                    rc);
            warned = true;
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void sp_mpi_close(sp_transport_t *t)
{
    sp_mpi_t *m = sp_mpi(t);
    int finalized = 0;

    if (m->thread_on) {
        atomic_store(&m->stop, true);
        pthread_join(m->thread, NULL);
    }
    MPI_Finalized(&finalized);
    if (finalized) {
        sp_warn("mpi transport closed after MPI_Finalize; its window and communicator are lost");
    } else {
        if (m->attached != NULL)
            sp_warn("mpi transport closed with %zu served regions still registered", m->nattached);
        /* Unlocking completes every request still posted (timed-out ones too). */
        if (m->locked)
            MPI_Win_unlock_all(m->win);
        if (m->nlive > 0)
            MPI_Waitall((int)m->nlive, m->reqs, MPI_STATUSES_IGNORE);
        for (size_t i = 0; i < m->nlive; i++) {
            if (m->ops[i].type != MPI_DATATYPE_NULL)
                MPI_Type_free(&m->ops[i].type);
        }
        if (m->win != MPI_WIN_NULL)
            MPI_Win_free(&m->win);
        if (m->comm != MPI_COMM_NULL)
            MPI_Comm_free(&m->comm);
    }
    sp__free(m->added);
    sp__free(m->reqs);
    sp__free(m->ops);
    sp__free(m->indices);
    sp__free(m->statuses);
    sp__free(m->done);
    if (m->lock_ready)
        pthread_mutex_destroy(&m->lock);
    sp__free(m);
}

static const sp_transport_ops_t sp_mpi_ops;

sp_status_t sp__mpi_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    int initialized = 0, finalized = 0, rc, len = 0;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    bool thread = true;
    sp_mpi_t *m;
    sp_status_t st;

    if (MPI_Initialized(&initialized) != MPI_SUCCESS || MPI_Finalized(&finalized) != MPI_SUCCESS ||
        !initialized || finalized)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "transport.backend=mpi needs MPI, and MPI is %s: the process calls "
                        "MPI_Init_thread before sp_transport_open and MPI_Finalize after "
                        "sp_transport_close",
                        finalized ? "finalized already" : "not initialized");
    m = sp__calloc(1, sizeof(*m));
    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an mpi transport");
    m->comm = MPI_COMM_NULL;
    m->win = MPI_WIN_NULL;
    if ((st = sp__transport_init_base(&m->base, conf, &sp_mpi_ops, "mpi")) != SP_OK ||
        (st = sp_conf_get_bool(conf, "transport.progress_thread", &thread)) != SP_OK)
        goto err;
    m->done_cap = (size_t)m->base.max_outstanding + 1;
    m->done = sp__calloc(m->done_cap, sizeof(*m->done));
    if (m->done == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for an mpi completion ring");
        goto err;
    }
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the mpi transport's lock");
        goto err;
    }
    m->lock_ready = true;
    MPI_Query_thread(&m->thread_level);
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm)) != MPI_SUCCESS) {
        m->comm = MPI_COMM_NULL;
        st = sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Comm_dup of MPI_COMM_WORLD", rc);
        goto err;
    }
    if ((rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(m->comm, &m->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(m->comm, &m->size)) != MPI_SUCCESS) {
        st = sp_mpi_error(SP_ERR_TRANSPORT, "setup of the transport's communicator", rc);
        goto err;
    }
    m->added = sp__calloc((size_t)m->size, sizeof(*m->added));
    if (m->added == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %d mpi peers", m->size);
        goto err;
    }
    if ((rc = MPI_Win_create_dynamic(MPI_INFO_NULL, m->comm, &m->win)) != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING];
        m->win = MPI_WIN_NULL;
        /* Open MPI 4.1 answers MPI_ERR_WIN when no osc component can serve the ranks. */
        st = SP_RAISE(SP_ERR_UNSUPPORTED,
                      "MPI_Win_create_dynamic failed: %s (raw %d); this MPI has no one-sided "
                      "component for these ranks' networks (Open MPI: osc/rdma needs the vader "
                      "btl on one node or an RDMA network; see the osc and btl MCA parameters)",
                      sp_mpi_strerror(rc, msg), rc);
        goto err;
    }
    if ((rc = MPI_Win_set_errhandler(m->win, MPI_ERRORS_RETURN)) != MPI_SUCCESS) {
        st = sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Win_set_errhandler", rc);
        goto err;
    }
    if ((rc = MPI_Win_lock_all(MPI_MODE_NOCHECK, m->win)) != MPI_SUCCESS) {
        st = sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Win_lock_all", rc);
        goto err;
    }
    m->locked = true;
    m->attach_max = sp_mpi_attach_limit();
    if (MPI_Get_library_version(version, &len) == MPI_SUCCESS) {
        /* "Open MPI v4.1.4, package: ..." names the library in its first field. */
        version[SP_MIN(strcspn(version, ",\n"), sizeof(m->base.provider) - 1)] = '\0';
        memcpy(m->base.provider, version, strlen(version) + 1);
    } else {
        snprintf(m->base.provider, sizeof(m->base.provider), "MPI");
    }
    if (thread && m->thread_level == MPI_THREAD_MULTIPLE) {
        if ((rc = pthread_create(&m->thread, NULL, sp_mpi_progress_main, m)) != 0) {
            st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot start the mpi progress thread: %s",
                          strerror(rc));
            goto err;
        }
        m->thread_on = true;
    } else if (thread) {
        sp_debug("mpi transport: no progress thread, MPI gives thread level %d, not "
                 "MPI_THREAD_MULTIPLE",
                 m->thread_level);
    }
    sp_debug("mpi transport: rank %d of %d on %s, thread level %d, attach limit %zu", m->rank,
             m->size, m->base.provider, m->thread_level, m->attach_max);
    *transport_p = &m->base;
    return SP_OK;

err:
    sp_mpi_close(&m->base);
    return st;
}

static sp_status_t sp_mpi_address(sp_transport_t *t, void *buf, size_t cap, size_t *len_p)
{
    sp_mpi_t *m = sp_mpi(t);
    unsigned char *b = buf;

    if (cap < SP_MPI_ADDR_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "an mpi address needs %d bytes, %zu given",
                        SP_MPI_ADDR_BYTES, cap);
    for (int i = 0; i < SP_MPI_ADDR_BYTES; i++)
        b[i] = (unsigned char)((uint32_t)m->rank >> (8 * i));
    *len_p = SP_MPI_ADDR_BYTES;
    return SP_OK;
}

static sp_status_t sp_mpi_add_peer_locked(sp_transport_t *t, const void *addr, size_t len,
                                          uint32_t *peer_p)
{
    sp_mpi_t *m = sp_mpi(t);
    const unsigned char *b = addr;
    uint32_t rank = 0;

    if (len != SP_MPI_ADDR_BYTES)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "mpi peer address of %zu bytes (a rank is %d bytes)",
                        len, SP_MPI_ADDR_BYTES);
    for (int i = SP_MPI_ADDR_BYTES - 1; i >= 0; i--)
        rank = (rank << 8) | b[i];
    if (rank >= (uint32_t)m->size)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "mpi peer address names rank %u of a %d-rank world",
                        rank, m->size);
    m->added[rank] = true;
    *peer_p = rank;
    return SP_OK;
}

static sp_status_t sp_mpi_mr_reg_locked(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                        sp_mr_t **mr_p)
{
    sp_mpi_t *m = sp_mpi(t);
    char msg[MPI_MAX_ERROR_STRING];
    const char *a = addr;
    sp_mpi_mr_t *r;
    sp_status_t st;
    int rc;

    if (remote_read) {
        for (sp_mpi_mr_t *o = m->attached; o != NULL; o = o->next) {
            const char *oa = o->base.addr;
            if (a < oa + o->base.len && oa < a + len)
                return SP_RAISE(SP_ERR_UNSUPPORTED,
                                "region of %zu bytes at %p overlaps the served region of %zu bytes "
                                "at %p; MPI cannot attach overlapping memory to one window",
                                len, addr, o->base.len, o->base.addr);
        }
        if (m->attach_max != 0 && m->nattached >= m->attach_max)
            return SP_RAISE(SP_ERR_NO_RESOURCE,
                            "%zu regions are served already, the most one MPI window takes "
                            "(Open MPI osc_rdma_max_attach; raise it with "
                            "OMPI_MCA_osc_rdma_max_attach)",
                            m->nattached);
    }
    r = sp__calloc(1, sizeof(*r));
    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory region");
    if (remote_read) {
        if ((rc = MPI_Win_attach(m->win, addr, (MPI_Aint)len)) != MPI_SUCCESS) {
            int cls = 0;
            MPI_Error_class(rc, &cls);
            st = SP_RAISE(cls == MPI_ERR_RMA_ATTACH ? SP_ERR_NO_RESOURCE : SP_ERR_TRANSPORT,
                          "MPI_Win_attach of %zu bytes at %p: %s (raw %d)", len, addr,
                          sp_mpi_strerror(rc, msg), rc);
            goto err_free;
        }
        if ((rc = MPI_Get_address(addr, &r->disp)) != MPI_SUCCESS) {
            st = SP_RAISE(SP_ERR_TRANSPORT, "MPI_Get_address of %p: %s (raw %d)", addr,
                          sp_mpi_strerror(rc, msg), rc);
            goto err_detach;
        }
        r->next = m->attached;
        m->attached = r;
        m->nattached++;
    }
    r->base.transport = t;
    r->base.addr = addr;
    r->base.len = len;
    r->base.remote_read = remote_read;
    t->stats.regions_registered++;
    *mr_p = &r->base;
    return SP_OK;

err_detach:
    MPI_Win_detach(m->win, addr);
err_free:
    sp__free(r);
    return st;
}

static void sp_mpi_mr_dereg_locked(sp_mr_t *mr)
{
    sp_mpi_mr_t *r = sp_container_of(mr, sp_mpi_mr_t, base);
    sp_mpi_t *m = sp_mpi(mr->transport);

    if (mr->remote_read) {
        sp_mpi_mr_t **pp = &m->attached;
        int rc;

        while (*pp != r)
            pp = &(*pp)->next;
        *pp = r->next;
        m->nattached--;
        if ((rc = MPI_Win_detach(m->win, mr->addr)) != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            sp_warn("MPI_Win_detach of the region at %p: %s (raw %d)", mr->addr,
                    sp_mpi_strerror(rc, msg), rc);
        }
    }
    sp__free(r);
}

static sp_status_t sp_mpi_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_mpi_mr_t *r = sp_container_of(mr, sp_mpi_mr_t, base);
    sp_mpi_t *m = sp_mpi(mr->transport);
    unsigned char *b = buf;
    uint64_t fields[2] = {(uint64_t)r->disp, (uint64_t)mr->len};

    if (cap < SP_MPI_KEY_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs %d bytes, %zu given",
                        SP_MPI_KEY_BYTES, cap);
    memset(b, 0, 8);
    b[0] = 'S';
    b[1] = 'M';
    b[2] = 1;
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < 8; i++)
            b[8 + 8 * f + i] = (unsigned char)(fields[f] >> (8 * i));
    for (int i = 0; i < 4; i++)
        b[24 + i] = (unsigned char)((uint32_t)m->rank >> (8 * i));
    *len_p = SP_MPI_KEY_BYTES;
    return SP_OK;
}

/* Unpacks a remote key; SP_ERR_BAD_FORMAT when it is not one of ours. */
static sp_status_t sp_mpi_unpack(const sp_mpi_t *m, const void *rkey, size_t len, uint64_t *base_p,
                                 uint64_t *length_p, uint32_t *owner_p)
{
    const unsigned char *b = rkey;
    uint64_t fields[2] = {0, 0};
    uint32_t owner = 0;

    if (len != SP_MPI_KEY_BYTES || b[0] != 'S' || b[1] != 'M' || b[2] != 1 || b[3] != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    for (int f = 0; f < 2; f++)
        for (int i = 7; i >= 0; i--)
            fields[f] = (fields[f] << 8) | b[8 + 8 * f + i];
    for (int i = 3; i >= 0; i--)
        owner = (owner << 8) | b[24 + i];
    /* The displacement of any byte of the region must be an MPI_Aint. */
    if (fields[0] > (uint64_t)INTPTR_MAX || fields[1] > (uint64_t)INTPTR_MAX - fields[0] ||
        owner >= (uint32_t)m->size)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "remote key names %llu bytes at 0x%llx on rank %u of a %d-rank world",
                        (unsigned long long)fields[1], (unsigned long long)fields[0], owner,
                        m->size);
    *base_p = fields[0];
    *length_p = fields[1];
    *owner_p = owner;
    return SP_OK;
}

/*
 * Queues a completion for the caller. A fetch counts as outstanding until its
 * completion is returned by poll, so the ring never holds more than
 * transport.max_outstanding entries; it is sized for that at open.
 */
static void sp_mpi_push_done(sp_mpi_t *m, void *user, sp_status_t st, int raw, size_t len,
                             uint32_t peer)
{
    SP_ASSERT(m->done_len < m->done_cap);
    m->done[(m->done_head + m->done_len) % m->done_cap] =
        (sp_transport_completion_t){user, st, raw, len, peer};
    m->done_len++;
}

/* Makes room for one more posted op. */
static sp_status_t sp_mpi_reserve(sp_mpi_t *m)
{
    size_t cap;
    MPI_Request *reqs;
    sp_mpi_op_t *ops;
    int *indices;
    MPI_Status *statuses;

    if (m->nlive < m->live_cap)
        return SP_OK;
    cap = m->live_cap != 0 ? 2 * m->live_cap : SP_MIN((size_t)m->base.max_outstanding, 64u);
    if (cap > INT_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "more than %d mpi fetches posted", INT_MAX);
    if ((reqs = sp__realloc(m->reqs, cap * sizeof(*reqs))) != NULL)
        m->reqs = reqs;
    if ((ops = sp__realloc(m->ops, cap * sizeof(*ops))) != NULL)
        m->ops = ops;
    if ((indices = sp__realloc(m->indices, cap * sizeof(*indices))) != NULL)
        m->indices = indices;
    if ((statuses = sp__realloc(m->statuses, cap * sizeof(*statuses))) != NULL)
        m->statuses = statuses;
    if (reqs == NULL || ops == NULL || indices == NULL || statuses == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu mpi fetches", cap);
    m->live_cap = cap;
    return SP_OK;
}

/* Completes finished requests into the ring; expires overdue fetches. */
static sp_status_t sp_mpi_progress(sp_mpi_t *m)
{
    uint64_t now;
    int rc, outcount = 0, flag = 0;
    size_t kept = 0;

    if (m->nlive == 0) {
        /* Nothing of ours to test: still let MPI serve reads of others. */
        if ((rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, m->comm, &flag, MPI_STATUS_IGNORE)) !=
            MPI_SUCCESS)
            return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Iprobe", rc);
        return SP_OK;
    }
    rc = MPI_Testsome((int)m->nlive, m->reqs, &outcount, m->indices, m->statuses);
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS)
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Testsome over the posted fetches", rc);
    for (int k = 0; k < outcount && outcount != MPI_UNDEFINED; k++) {
        sp_mpi_op_t *op = &m->ops[m->indices[k]];
        int err = rc == MPI_ERR_IN_STATUS ? m->statuses[k].MPI_ERROR : MPI_SUCCESS;

        /* MPI frees a completed request; make sure it is not tested twice. */
        m->reqs[m->indices[k]] = MPI_REQUEST_NULL;
        if (op->type != MPI_DATATYPE_NULL)
            MPI_Type_free(&op->type);
        if (op->timed_out)
            continue;
        if (err == MPI_SUCCESS) {
            sp_mpi_push_done(m, op->user, SP_OK, 0, op->len, op->peer);
            m->base.stats.fetches_completed++;
            m->base.stats.bytes_fetched += op->len;
        } else {
            char msg[MPI_MAX_ERROR_STRING];
            /* The message is the caller's detail for this completion. */
            SP_RAISE(SP_ERR_FETCH_FAILED, "fetch of %zu bytes from peer %u failed: %s (raw %d)",
                     op->len, op->peer, sp_mpi_strerror(err, msg), err);
            sp_mpi_push_done(m, op->user, SP_ERR_FETCH_FAILED, err, 0, op->peer);
            m->base.stats.fetches_failed++;
        }
    }
    /* Completed requests are MPI_REQUEST_NULL now: keep the others, in order. */
    for (size_t i = 0; i < m->nlive; i++) {
        if (m->reqs[i] == MPI_REQUEST_NULL)
            continue;
        m->reqs[kept] = m->reqs[i];
        m->ops[kept++] = m->ops[i];
    }
    m->nlive = kept;
    now = sp__now_ns();
    for (size_t i = 0; i < m->nlive; i++) {
        sp_mpi_op_t *op = &m->ops[i];
        if (!op->timed_out && now > op->deadline) {
            op->timed_out = true;
            SP_RAISE(SP_ERR_TIMED_OUT,
                     "fetch of %zu bytes from peer %u did not complete in %llu ms", op->len,
                     op->peer, (unsigned long long)(m->base.timeout_ns / 1000000));
            sp_mpi_push_done(m, op->user, SP_ERR_TIMED_OUT, 0, 0, op->peer);
            m->base.stats.fetches_failed++;
        }
    }
    return SP_OK;
}

/*
 * The datatype of a fetch longer than sp__mpi_count_max: q chunks of that
 * many bytes, then the remainder.
 */
static sp_status_t sp_mpi_big_type(size_t len, MPI_Datatype *type_p)
{
    size_t chunk = sp__mpi_count_max, q = len / chunk, r = len % chunk;
    MPI_Datatype chunk_type, type;
    int blocks[2] = {(int)q, (int)r};
    MPI_Aint displs[2] = {0, (MPI_Aint)(q * chunk)};
    MPI_Datatype types[2];
    int rc;

    if (q > INT_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "fetch of %zu bytes is more than MPI can describe", len);
    if ((rc = MPI_Type_contiguous((int)chunk, MPI_BYTE, &chunk_type)) != MPI_SUCCESS)
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Type_contiguous", rc);
    types[0] = chunk_type;
    types[1] = MPI_BYTE;
    rc = MPI_Type_create_struct(r != 0 ? 2 : 1, blocks, displs, types, &type);
    MPI_Type_free(&chunk_type); /* the struct keeps what it needs */
    if (rc != MPI_SUCCESS)
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Type_create_struct", rc);
    if ((rc = MPI_Type_commit(&type)) != MPI_SUCCESS) {
        MPI_Type_free(&type);
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Type_commit", rc);
    }
    *type_p = type;
    return SP_OK;
}

static sp_status_t sp_mpi_fetch_locked(sp_transport_t *t, uint32_t peer, const void *rkey,
                                       size_t rkey_len, uint64_t offset, size_t len, void *dest,
                                       sp_mr_t *local, void *context)
{
    sp_mpi_t *m = sp_mpi(t);
    char msg[MPI_MAX_ERROR_STRING];
    uint64_t base = 0, length = 0; /* set by the unpack; gcc -O2 cannot tell */
    uint32_t owner = 0;
    MPI_Datatype type = MPI_BYTE, big = MPI_DATATYPE_NULL;
    int count = (int)SP_MIN(len, (size_t)INT_MAX), rc;
    MPI_Request req = MPI_REQUEST_NULL;
    sp_mpi_op_t *op;
    sp_status_t st;

    SP_UNUSED(local); /* MPI needs no registration of the destination */
    if ((st = sp_mpi_unpack(m, rkey, rkey_len, &base, &length, &owner)) != SP_OK)
        return st;
    if (peer >= (uint32_t)m->size || !m->added[peer])
        return SP_RAISE(SP_ERR_INVALID_PARAM, "fetch from unknown peer %u (not added; %d ranks)",
                        peer, m->size);
    if (peer != owner)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch from peer %u with the key of a region of rank %u: a key is read "
                        "only from its owner",
                        peer, owner);
    if (offset > length || len > length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)length);
    if (m->outstanding >= m->base.max_outstanding)
        return SP_RAISE(SP_ERR_BUSY,
                        "%u fetches outstanding (transport.max_outstanding); poll first",
                        m->outstanding);
    if ((st = sp_mpi_reserve(m)) != SP_OK)
        return st;
    if (len > sp__mpi_count_max) {
        if ((st = sp_mpi_big_type(len, &big)) != SP_OK)
            return st;
        type = big;
        count = 1;
    }
    rc = MPI_Rget(dest, count, type, (int)peer, MPI_Aint_add((MPI_Aint)base, (MPI_Aint)offset),
                  count, type, m->win, &req);
    if (rc != MPI_SUCCESS) {
        if (big != MPI_DATATYPE_NULL)
            MPI_Type_free(&big);
        return SP_RAISE(SP_ERR_FETCH_FAILED,
                        "MPI_Rget of %zu bytes at offset %llu from peer %u: %s (raw %d)", len,
                        (unsigned long long)offset, peer, sp_mpi_strerror(rc, msg), rc);
    }
    op = &m->ops[m->nlive];
    *op = (sp_mpi_op_t){.user = context,
                        .peer = peer,
                        .len = len,
                        .deadline = sp__now_ns() + m->base.timeout_ns,
                        .type = big};
    m->reqs[m->nlive++] = req;
    m->outstanding++;
    t->stats.fetches_posted++;
    return SP_OK;
}

static sp_status_t sp_mpi_poll(sp_transport_t *t, sp_transport_completion_t *out, size_t max,
                               int timeout_ms, size_t *n_p)
{
    sp_mpi_t *m = sp_mpi(t);
    uint64_t until = sp__now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    size_t n = 0;
    sp_status_t st;

    for (;;) {
        pthread_mutex_lock(&m->lock);
        st = sp_mpi_progress(m);
        while (st == SP_OK && n < max && m->done_len > 0) {
            m->outstanding--; /* returned to the caller: the slot is free */
            out[n++] = m->done[m->done_head];
            m->done_head = (m->done_head + 1) % m->done_cap;
            m->done_len--;
        }
        pthread_mutex_unlock(&m->lock);
        if (st != SP_OK)
            return st;
        if (n > 0 || sp__now_ns() >= until)
            break;
        sched_yield(); /* without the lock: other threads may post */
    }
    *n_p = n;
    return SP_OK;
}

/* Locked entry points: one thread at a time changes the transport's state. */
static sp_status_t sp_mpi_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                   uint32_t *peer_p)
{
    sp_mpi_t *m = sp_mpi(t);
    sp_status_t st;

    pthread_mutex_lock(&m->lock);
    st = sp_mpi_add_peer_locked(t, addr, len, peer_p);
    pthread_mutex_unlock(&m->lock);
    return st;
}

static sp_status_t sp_mpi_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                 sp_mr_t **mr_p)
{
    sp_mpi_t *m = sp_mpi(t);
    sp_status_t st;

    pthread_mutex_lock(&m->lock);
    st = sp_mpi_mr_reg_locked(t, addr, len, remote_read, mr_p);
    pthread_mutex_unlock(&m->lock);
    return st;
}

static void sp_mpi_mr_dereg(sp_mr_t *mr)
{
    sp_mpi_t *m = sp_mpi(mr->transport);

    pthread_mutex_lock(&m->lock);
    sp_mpi_mr_dereg_locked(mr);
    pthread_mutex_unlock(&m->lock);
}

static sp_status_t sp_mpi_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                                uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                                void *context)
{
    sp_mpi_t *m = sp_mpi(t);
    sp_status_t st;

    pthread_mutex_lock(&m->lock);
    st = sp_mpi_fetch_locked(t, peer, rkey, rkey_len, offset, len, dest, local, context);
    pthread_mutex_unlock(&m->lock);
    return st;
}

static const sp_transport_ops_t sp_mpi_ops = {
    .size = sizeof(sp_transport_ops_t),
    .close = sp_mpi_close,
    .address = sp_mpi_address,
    .add_peer = sp_mpi_add_peer,
    .mr_reg = sp_mpi_mr_reg,
    .mr_dereg = sp_mpi_mr_dereg,
    .mr_pack = sp_mpi_mr_pack,
    .fetch = sp_mpi_fetch,
    .poll = sp_mpi_poll,
};
