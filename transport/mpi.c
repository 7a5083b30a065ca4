/*
 * The mpi backend: executors are the ranks of MPI_COMM_WORLD. A map output is
 * served in one of two ways, chosen by transport.mpi_mode:
 *
 * - rget: one-sided, through one MPI-3 dynamic window, so an executor whose
 *   MPI offloads RMA (Open MPI's osc/rdma over vader's single copy, or an
 *   RDMA network) serves reads without its CPU. A region MPI cannot attach
 *   (it overlaps an attached one, or the window holds osc_rdma_max_attach
 *   already) is served two-sided instead, so serving never fails for that.
 * - twosided: request/response on the transport's private communicator. The
 *   reader posts the receive of the block, then sends a request (region id,
 *   base, offset, length, a reply tag); the serving rank checks it against the
 *   region (the transport's two-sided serving, serve.c, shared with ofi's msg
 *   mode) and answers with one send straight from the region (sp_mpi_reply),
 *   or with an empty message when it refuses (sp_mpi_refuse); replies still
 *   reading a region being deregistered are dropped after transport.timeout
 *   (sp_mpi_abandon). No window exists, so there is no attach
 *   limit and no need for an osc component.
 *
 * The process calls MPI_Init_thread before sp_transport_open; without it the
 * open is SP_ERR_UNSUPPORTED. Opening and closing are collective over
 * MPI_COMM_WORLD: the open duplicates it into a private communicator and, in
 * rget mode, creates the dynamic window on it and opens a passive-target epoch
 * on every rank (MPI_Win_lock_all with MPI_MODE_NOCHECK) that lasts until
 * close. MPI_ERRORS_RETURN is set on both, so MPI failures become statuses
 * whose message carries MPI_Error_string and the raw code.
 *
 * An address is the rank (u32 little endian); a peer id is that rank. A
 * packed remote key is 28 bytes: magic 'S' 'M', version 1, flags (bit 0: the
 * region is served two-sided), u32 region id, u64 base (MPI_Get_address), u64
 * length, u32 owner rank. A fetch is checked against the key's length and
 * owner before anything is posted, and the serving rank checks a request
 * against the region again, so a peer reads nothing but registered regions.
 * Counts above sp__mpi_count_max (INT_MAX) are described by one derived
 * datatype (chunks plus a remainder), so no fetch length is refused.
 *
 * Each posted fetch is an op with its request (the MPI_Rget, or the receive
 * of the reply) and a deadline, kept in two parallel arrays for
 * MPI_Testsome; sends (requests of our fetches, replies we serve) are kept
 * the same way. Progress serves the requests that arrived, tests sends and
 * fetches, and pushes completions into the transport's completion ring
 * (transport.c). An op older than transport.timeout is reported
 * SP_ERR_TIMED_OUT at once, held (transport.c): a receive is cancelled, an
 * RMA request (MPI cannot cancel those) kept until MPI completes it, and
 * either may still write into the destination until MPI_Testsome returns it
 * (a cancelled receive may have matched already); then the fetch is
 * released, and only then may its caller free the destination.
 * MPI_Win_flush_local_all would block, so it is never used for progress. The base lock guards the
 * transport's state and its MPI calls, so calls may come from several threads
 * (MPI must then provide MPI_THREAD_SERIALIZED or more). With
 * transport.progress_thread and MPI_THREAD_MULTIPLE, the shared progress
 * thread progresses it, answering requests while no task polls. Without that
 * thread, requests are answered only inside sp_transport_poll.
 */
#include "bytes.h"
#include "transport_int.h"

#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define SP_MPI_KEY_BYTES  28
#define SP_MPI_ADDR_BYTES 4
#define SP_MPI_REQ_BYTES  40
/* Key flag: the region is served two-sided. */
#define SP_MPI_KEY_TWOSIDED 1u
/* Requests travel on this tag; replies on tags from SP_MPI_TAG_FIRST to MPI_TAG_UB. */
#define SP_MPI_TAG_REQ   1
#define SP_MPI_TAG_FIRST 2
/* The progress thread's pause: short while work comes in, doubling to the longest when idle. */
#define SP_MPI_PAUSE_MIN_NS 10000L
#define SP_MPI_PAUSE_MAX_NS 250000L
/* Tests lower it to reach the derived-datatype path (transport_int.h). */
size_t sp__mpi_count_max = INT_MAX;

typedef struct sp_mpi_op {
    void *user;
    uint32_t peer;
    size_t len;
    uint64_t offset;
    uint64_t deadline;
    MPI_Datatype type; /* a derived datatype to free at completion, or MPI_DATATYPE_NULL */
    int count;         /* elements of the receive (two-sided): a reply of fewer is a refusal */
    bool twosided;     /* the request is the receive of a reply */
    bool timed_out;    /* reported already; waiting for MPI to complete the request */
} sp_mpi_op_t;

typedef struct sp_mpi_mr {
    sp_mr_t base;
    MPI_Aint disp;      /* MPI_Get_address of addr */
    bool attached;      /* to the window (rget), else served two-sided */
    sp_served_t served; /* in the base's table of served regions (serve.c); its id is in the key */
} sp_mpi_mr_t;

/* A send in flight: the request of one of our fetches, or a reply we serve. */
typedef struct sp_mpi_send {
    unsigned char hdr[SP_MPI_REQ_BYTES]; /* a request's bytes */
    sp_served_t *region;                 /* a reply's region, NULL for requests and refusals */
    MPI_Datatype type;                   /* a derived datatype to free, or MPI_DATATYPE_NULL */
} sp_mpi_send_t;

typedef struct sp_mpi {
    sp_transport_t base;
    MPI_Comm comm;
    MPI_Win win;
    bool twosided;    /* transport.mpi_mode=twosided: no window */
    bool locked;      /* inside the MPI_Win_lock_all epoch */
    int rank, size;   /* in comm, which mirrors MPI_COMM_WORLD */
    int thread_level; /* MPI_Query_thread */
    int tag_ub, next_tag;
    bool *added; /* size entries: the rank was added as a peer */
    size_t nattached;
    size_t attach_max; /* osc_rdma_max_attach; 0 when MPI names no limit */
    /* Posted fetches: reqs[i] belongs to ops[i]; indices and statuses for Testsome. */
    MPI_Request *reqs;
    sp_mpi_op_t *ops;
    int *indices;
    MPI_Status *statuses;
    size_t nlive, live_cap;
    /* Sends in flight: sreqs[i] belongs to sends[i]. */
    MPI_Request *sreqs;
    sp_mpi_send_t **sends;
    int *sindices;
    size_t nsends, sends_cap;
    /* The receive of the next request to serve. */
    MPI_Request req_recv;
    unsigned char req_buf[SP_MPI_REQ_BYTES];
    bool warned_request; /* a malformed request was logged */
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
    int level = MPI_THREAD_SINGLE, provided = 0, index = -1, name_len = sizeof(name),
        desc_len = sizeof(desc);
    int verbosity = 0, bind = 0, scope = 0, count = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_T_enum enumtype;
    MPI_T_cvar_handle handle;
    size_t limit = 0;

    /* Open MPI 4.1's MPI_T_init_thread sets the library's thread level to the
     * one asked for: ask for the level MPI gives already, never less. */
    if (MPI_Query_thread(&level) != MPI_SUCCESS ||
        MPI_T_init_thread(level, &provided) != MPI_SUCCESS)
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

/*
 * The datatype of a transfer longer than sp__mpi_count_max: q chunks of that
 * many bytes, then the remainder. Both ends of a two-sided reply build it
 * from the length alone, so they agree.
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

/* The (count, type) of a transfer of len bytes; *big_p is a type to free later. */
static sp_status_t sp_mpi_type_of(size_t len, int *count_p, MPI_Datatype *type_p,
                                  MPI_Datatype *big_p)
{
    sp_status_t st;

    *big_p = MPI_DATATYPE_NULL;
    if (len <= sp__mpi_count_max) {
        *count_p = (int)len;
        *type_p = MPI_BYTE;
        return SP_OK;
    }
    if ((st = sp_mpi_big_type(len, big_p)) != SP_OK)
        return st;
    *count_p = 1;
    *type_p = *big_p;
    return SP_OK;
}

/* Makes room for one more send. */
static sp_status_t sp_mpi_reserve_send(sp_mpi_t *m)
{
    size_t cap;
    MPI_Request *sreqs;
    sp_mpi_send_t **sends;
    int *sindices;

    if (m->nsends < m->sends_cap)
        return SP_OK;
    cap = m->sends_cap != 0 ? 2 * m->sends_cap : 64;
    if (cap > INT_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "more than %d mpi sends in flight", INT_MAX);
    if ((sreqs = sp__realloc(m->sreqs, cap * sizeof(*sreqs))) != NULL)
        m->sreqs = sreqs;
    if ((sends = sp__realloc(m->sends, cap * sizeof(*sends))) != NULL)
        m->sends = sends;
    if ((sindices = sp__realloc(m->sindices, cap * sizeof(*sindices))) != NULL)
        m->sindices = sindices;
    if (sreqs == NULL || sends == NULL || sindices == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu mpi sends", cap);
    m->sends_cap = cap;
    return SP_OK;
}

/* Frees what a finished send holds. */
static void sp_mpi_send_free(sp_mpi_t *m, sp_mpi_send_t *s)
{
    if (s->region != NULL)
        sp__serve_reply_done(&m->base, s->region);
    if (s->type != MPI_DATATYPE_NULL)
        MPI_Type_free(&s->type);
    sp__free(s);
}

/* Tests the sends in flight and frees the finished ones. */
static sp_status_t sp_mpi_test_sends(sp_mpi_t *m)
{
    int outcount = 0, rc;
    size_t kept = 0;

    if (m->nsends == 0)
        return SP_OK;
    rc = MPI_Testsome((int)m->nsends, m->sreqs, &outcount, m->sindices, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS)
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Testsome over the sends in flight", rc);
    if (outcount == MPI_UNDEFINED || outcount == 0)
        return SP_OK;
    for (int k = 0; k < outcount; k++) {
        sp_mpi_send_free(m, m->sends[m->sindices[k]]);
        m->sends[m->sindices[k]] = NULL;
    }
    for (size_t i = 0; i < m->nsends; i++) {
        if (m->sends[i] == NULL)
            continue;
        m->sreqs[kept] = m->sreqs[i];
        m->sends[kept++] = m->sends[i];
    }
    m->nsends = kept;
    return SP_OK;
}

/*
 * Stops every send still in flight: once more tested, then the requests of
 * those left are freed (Open MPI's ob1 cannot cancel a send); MPI finishes
 * them or drops them with the communicator. Their regions are not read again
 * by this transport.
 */
static void sp_mpi_drop_sends(sp_mpi_t *m, const sp_served_t *only)
{
    size_t kept = 0;

    (void)sp_mpi_test_sends(m);
    for (size_t i = 0; i < m->nsends; i++) {
        sp_mpi_send_t *s = m->sends[i];
        if (only != NULL && s->region != only) {
            m->sreqs[kept] = m->sreqs[i];
            m->sends[kept++] = s;
            continue;
        }
        MPI_Request_free(&m->sreqs[i]);
        sp_mpi_send_free(m, s);
    }
    m->nsends = kept;
}

/* Posts the receive of the next request to serve. */
static sp_status_t sp_mpi_post_request_recv(sp_mpi_t *m)
{
    int rc = MPI_Irecv(m->req_buf, SP_MPI_REQ_BYTES, MPI_BYTE, MPI_ANY_SOURCE, SP_MPI_TAG_REQ,
                       m->comm, &m->req_recv);

    if (rc != MPI_SUCCESS) {
        m->req_recv = MPI_REQUEST_NULL;
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Irecv of the next request", rc);
    }
    return SP_OK;
}

/* A send of a reply or refusal to post: room for it, and its record. */
static sp_status_t sp_mpi_new_send(sp_mpi_t *m, sp_mpi_send_t **s_p)
{
    sp_mpi_send_t *s;
    sp_status_t st;

    if ((st = sp_mpi_reserve_send(m)) != SP_OK)
        return st;
    s = sp__calloc(1, sizeof(*s));
    if (s == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to answer a request");
    s->type = MPI_DATATYPE_NULL;
    *s_p = s;
    return SP_OK;
}

/* serve.c's reply slot: one send straight from the region, on the reply tag. */
static sp_status_t sp_mpi_reply(sp_transport_t *t, const sp_serve_req_t *q, sp_served_t *r,
                                const void *from, size_t len, bool *sent_p)
{
    sp_mpi_t *m = sp_mpi(t);
    MPI_Datatype type = MPI_BYTE;
    sp_mpi_send_t *s = NULL;
    int count = 0, rc;
    sp_status_t st;

    if ((st = sp_mpi_new_send(m, &s)) != SP_OK)
        return st;
    if ((st = sp_mpi_type_of(len, &count, &type, &s->type)) != SP_OK) {
        sp__free(s);
        return st;
    }
    rc = MPI_Isend(from, count, type, (int)q->to, (int)q->tag, m->comm, &m->sreqs[m->nsends]);
    if (rc != MPI_SUCCESS) {
        sp_mpi_send_free(m, s); /* not yet a reply of r */
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Isend of a reply", rc);
    }
    s->region = r;
    m->sends[m->nsends++] = s;
    *sent_p = true;
    return SP_OK;
}

/* serve.c's refusal slot: an empty message on the reply tag. */
static sp_status_t sp_mpi_refuse(sp_transport_t *t, const sp_serve_req_t *q)
{
    sp_mpi_t *m = sp_mpi(t);
    sp_mpi_send_t *s = NULL;
    int rc;
    sp_status_t st;

    if ((st = sp_mpi_new_send(m, &s)) != SP_OK)
        return st;
    rc = MPI_Isend(NULL, 0, MPI_BYTE, (int)q->to, (int)q->tag, m->comm, &m->sreqs[m->nsends]);
    if (rc != MPI_SUCCESS) {
        sp_mpi_send_free(m, s);
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Isend of a reply", rc);
    }
    m->sends[m->nsends++] = s;
    return SP_OK;
}

/* serve.c: the replies from r outlived transport.timeout as it is deregistered; dropped. */
static void sp_mpi_abandon(sp_transport_t *t, sp_served_t *r)
{
    sp_mpi_t *m = sp_mpi(t);

    sp_warn("mpi transport: %zu replies from the region at %p not received in %llu ms; dropped",
            r->replies, r->mr->addr, (unsigned long long)(m->base.timeout_ns / 1000000));
    sp_mpi_drop_sends(m, r);
}

static const sp_serve_ops_t sp_mpi_serve_ops = {
    .size = sizeof(sp_serve_ops_t),
    .reply = sp_mpi_reply,
    .refuse = sp_mpi_refuse,
    .abandon = sp_mpi_abandon,
};

/*
 * Answers one request from rank src (serve.c checks it against the region
 * and answers through sp_mpi_reply or sp_mpi_refuse). A request that is not
 * one of ours cannot be answered (it names no reply tag to trust); it is
 * dropped, and its sender times out.
 */
static sp_status_t sp_mpi_answer(sp_mpi_t *m, const unsigned char *q, int qlen, int src)
{
    uint32_t tag = sp__le_get_u32(q + 8);
    sp_serve_req_t req;

    if (qlen != SP_MPI_REQ_BYTES || q[0] != 'S' || q[1] != 'Q' || q[2] != 1 ||
        tag < SP_MPI_TAG_FIRST || tag > (uint32_t)m->tag_ub) {
        if (!m->warned_request)
            sp_warn("mpi transport: dropped a malformed request of %d bytes from rank %d", qlen,
                    src);
        m->warned_request = true;
        return SP_OK;
    }
    req = (sp_serve_req_t){.id = sp__le_get_u32(q + 4),
                           .base = sp__le_get_u64(q + 16),
                           .offset = sp__le_get_u64(q + 24),
                           .len = sp__le_get_u64(q + 32),
                           .to = (uint64_t)src,
                           .tag = tag,
                           .src = src};
    return sp__serve_request(&m->base, &req);
}

/* Answers every request that has arrived. */
static sp_status_t sp_mpi_serve(sp_mpi_t *m)
{
    for (;;) {
        MPI_Status status;
        int flag = 0, qlen = 0, rc;
        sp_status_t st;

        if (m->req_recv == MPI_REQUEST_NULL)
            return SP_OK;
        /* MPI_Test sets MPI_ERROR only when it fails: start from success. */
        status.MPI_ERROR = MPI_SUCCESS;
        if ((rc = MPI_Test(&m->req_recv, &flag, &status)) != MPI_SUCCESS)
            return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Test of the request receive", rc);
        if (!flag)
            return SP_OK;
        /* A request longer than ours is truncated: its error says so and it is dropped. */
        if (status.MPI_ERROR != MPI_SUCCESS ||
            MPI_Get_count(&status, MPI_BYTE, &qlen) != MPI_SUCCESS)
            qlen = -1;
        st = sp_mpi_answer(m, m->req_buf, qlen, status.MPI_SOURCE);
        if (st != SP_OK) {
            /* The request goes unanswered: its reader times out. Keep serving others. */
            (void)sp_mpi_post_request_recv(m);
            return st;
        }
        if ((st = sp_mpi_post_request_recv(m)) != SP_OK)
            return st;
    }
}

static void sp_mpi_close(sp_transport_t *t)
{
    sp_mpi_t *m = sp_mpi(t);
    int finalized = 0;

    sp__transport_stop_thread(&m->base);
    MPI_Finalized(&finalized);
    if (finalized) {
        sp_warn("mpi transport closed after MPI_Finalize; its window and communicator are lost");
    } else {
        sp__serve_fini(&m->base);
        if (m->req_recv != MPI_REQUEST_NULL) {
            MPI_Cancel(&m->req_recv);
            MPI_Wait(&m->req_recv, MPI_STATUS_IGNORE);
        }
        /* Receives of replies are cancelled; unlocking completes every RMA request. */
        for (size_t i = 0; i < m->nlive; i++)
            if (m->ops[i].twosided)
                MPI_Cancel(&m->reqs[i]);
        if (m->locked)
            MPI_Win_unlock_all(m->win);
        if (m->nlive > 0)
            MPI_Waitall((int)m->nlive, m->reqs, MPI_STATUSES_IGNORE);
        for (size_t i = 0; i < m->nlive; i++) {
            if (m->ops[i].type != MPI_DATATYPE_NULL)
                MPI_Type_free(&m->ops[i].type);
        }
        sp_mpi_drop_sends(m, NULL);
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
    sp__free(m->sreqs);
    sp__free(m->sends);
    sp__free(m->sindices);
    sp__transport_fini_base(&m->base);
    sp__free(m);
}

static const sp_transport_ops_t sp_mpi_ops;

sp_status_t sp__mpi_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    int initialized = 0, finalized = 0, rc, len = 0, flag = 0;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    const char *mode = NULL;
    void *tag_ub = NULL;
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
    m->req_recv = MPI_REQUEST_NULL;
    if ((st = sp__transport_init_base(&m->base, conf, &sp_mpi_ops, "mpi")) != SP_OK ||
        (st = sp_conf_get_bool(conf, "transport.progress_thread", &thread)) != SP_OK ||
        (st = sp_conf_get_string(conf, "transport.mpi_mode", &mode)) != SP_OK)
        goto err;
    m->twosided = strcmp(mode, "twosided") == 0;
    MPI_Query_thread(&m->thread_level);
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm)) != MPI_SUCCESS) {
        m->comm = MPI_COMM_NULL;
        st = sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Comm_dup of MPI_COMM_WORLD", rc);
        goto err;
    }
    if ((rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(m->comm, &m->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(m->comm, &m->size)) != MPI_SUCCESS ||
        (rc = MPI_Comm_get_attr(m->comm, MPI_TAG_UB, &tag_ub, &flag)) != MPI_SUCCESS) {
        st = sp_mpi_error(SP_ERR_TRANSPORT, "setup of the transport's communicator", rc);
        goto err;
    }
    /* MPI guarantees at least 32767. */
    m->tag_ub = flag && tag_ub != NULL ? *(int *)tag_ub : 32767;
    m->next_tag = SP_MPI_TAG_FIRST;
    sp__serve_init(&m->base, &sp_mpi_serve_ops, UINT32_MAX, UINT64_MAX);
    m->added = sp__calloc((size_t)m->size, sizeof(*m->added));
    if (m->added == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %d mpi peers", m->size);
        goto err;
    }
    if (!m->twosided) {
        if ((rc = MPI_Win_create_dynamic(MPI_INFO_NULL, m->comm, &m->win)) != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            m->win = MPI_WIN_NULL;
            /* Open MPI 4.1 answers MPI_ERR_WIN when no osc component can serve the ranks. */
            st = SP_RAISE(SP_ERR_UNSUPPORTED,
                          "MPI_Win_create_dynamic failed: %s (raw %d); this MPI has no one-sided "
                          "component for these ranks' networks (Open MPI: osc/rdma needs the "
                          "vader btl on one node or an RDMA network; see the osc and btl MCA "
                          "parameters), and transport.mpi_mode=twosided needs none",
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
    }
    if ((st = sp_mpi_post_request_recv(m)) != SP_OK)
        goto err;
    if (MPI_Get_library_version(version, &len) == MPI_SUCCESS) {
        /* "Open MPI v4.1.4, package: ..." names the library in its first field. */
        version[SP_MIN(strcspn(version, ",\n"), sizeof(m->base.provider) - 1)] = '\0';
        memcpy(m->base.provider, version, strlen(version) + 1);
    } else {
        snprintf(m->base.provider, sizeof(m->base.provider), "MPI");
    }
    if (thread && m->thread_level == MPI_THREAD_MULTIPLE) {
        if ((st = sp__transport_start_thread(&m->base, SP_MPI_PAUSE_MIN_NS, SP_MPI_PAUSE_MAX_NS)) !=
            SP_OK)
            goto err;
    } else if (thread) {
        sp_debug("mpi transport: no progress thread, MPI gives thread level %d, not "
                 "MPI_THREAD_MULTIPLE; requests are answered only inside sp_transport_poll",
                 m->thread_level);
    }
    sp_debug("mpi transport: rank %d of %d on %s, %s, thread level %d, attach limit %zu", m->rank,
             m->size, m->base.provider, m->twosided ? "two-sided" : "rget", m->thread_level,
             m->attach_max);
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
    sp__le_put_u32(b, (uint32_t)m->rank);
    *len_p = SP_MPI_ADDR_BYTES;
    return SP_OK;
}

static sp_status_t sp_mpi_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                   uint32_t *peer_p)
{
    sp_mpi_t *m = sp_mpi(t);
    uint32_t rank;

    if (len != SP_MPI_ADDR_BYTES)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "mpi peer address of %zu bytes (a rank is %d bytes)",
                        len, SP_MPI_ADDR_BYTES);
    rank = sp__le_get_u32(addr);
    if (rank >= (uint32_t)m->size)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "mpi peer address names rank %u of a %d-rank world",
                        rank, m->size);
    m->added[rank] = true;
    *peer_p = rank;
    return SP_OK;
}

/*
 * Whether a served region can be attached to the window: not in two-sided
 * mode, not overlapping an attached region (MPI_ERR_RMA_ATTACH), and not past
 * osc_rdma_max_attach (which would leave the window's region lock held, after
 * which readers of this rank hang). *why_p says why not.
 */
static bool sp_mpi_can_attach(const sp_mpi_t *m, const void *addr, size_t len, const char **why_p)
{
    const char *a = addr;

    if (m->twosided) {
        *why_p = "transport.mpi_mode=twosided";
        return false;
    }
    if (m->attach_max != 0 && m->nattached >= m->attach_max) {
        *why_p = "the window holds osc_rdma_max_attach regions already";
        return false;
    }
    for (const sp_served_t *s = m->base.serve.served; s != NULL; s = s->next) {
        const sp_mpi_mr_t *o = sp_container_of(s, sp_mpi_mr_t, served);
        const char *oa = o->base.addr;
        if (o->attached && a < oa + o->base.len && oa < a + len) {
            *why_p = "it overlaps an attached region";
            return false;
        }
    }
    return true;
}

static sp_status_t sp_mpi_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                 sp_mr_t **mr_p)
{
    sp_mpi_t *m = sp_mpi(t);
    char msg[MPI_MAX_ERROR_STRING];
    const char *why = NULL;
    sp_mpi_mr_t *r;
    sp_status_t st;
    int rc;

    r = sp__calloc(1, sizeof(*r));
    if (r == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory region");
    if (remote_read) {
        if ((rc = MPI_Get_address(addr, &r->disp)) != MPI_SUCCESS) {
            st = SP_RAISE(SP_ERR_TRANSPORT, "MPI_Get_address of %p: %s (raw %d)", addr,
                          sp_mpi_strerror(rc, msg), rc);
            goto err_free;
        }
        if (sp_mpi_can_attach(m, addr, len, &why)) {
            if ((rc = MPI_Win_attach(m->win, addr, (MPI_Aint)len)) != MPI_SUCCESS) {
                int cls = 0;
                MPI_Error_class(rc, &cls);
                st = SP_RAISE(cls == MPI_ERR_RMA_ATTACH ? SP_ERR_NO_RESOURCE : SP_ERR_TRANSPORT,
                              "MPI_Win_attach of %zu bytes at %p: %s (raw %d)", len, addr,
                              sp_mpi_strerror(rc, msg), rc);
                goto err_free;
            }
            r->attached = true;
            m->nattached++;
        } else if (!m->twosided) {
            sp_debug("mpi transport: region of %zu bytes at %p served two-sided: %s", len, addr,
                     why);
        }
        sp__serve_add(t, &r->served, &r->base, (uint64_t)r->disp);
    }
    r->base.transport = t;
    r->base.addr = addr;
    r->base.len = len;
    r->base.remote_read = remote_read;
    t->stats.regions_registered++;
    *mr_p = &r->base;
    return SP_OK;

err_free:
    sp__free(r);
    return st;
}

/*
 * Unlinks a served region (serve.c: requests for it are refused from now on;
 * replies still reading it are given transport.timeout to finish, their
 * readers must progress, then dropped), then detaches it from the window.
 * Called with the lock held; lets it go while waiting.
 */
static void sp_mpi_mr_dereg(sp_mr_t *mr)
{
    sp_mpi_mr_t *r = sp_container_of(mr, sp_mpi_mr_t, base);
    sp_mpi_t *m = sp_mpi(mr->transport);

    if (!mr->remote_read) {
        sp__free(r);
        return;
    }
    sp__serve_remove(&m->base, &r->served);
    if (r->attached) {
        int rc;
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

    if (cap < SP_MPI_KEY_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs %d bytes, %zu given",
                        SP_MPI_KEY_BYTES, cap);
    b[0] = 'S';
    b[1] = 'M';
    b[2] = 1;
    b[3] = (unsigned char)(r->attached ? 0 : SP_MPI_KEY_TWOSIDED);
    sp__le_put_u32(b + 4, (uint32_t)r->served.id);
    sp__le_put_u64(b + 8, (uint64_t)r->disp);
    sp__le_put_u64(b + 16, (uint64_t)mr->len);
    sp__le_put_u32(b + 24, (uint32_t)m->rank);
    *len_p = SP_MPI_KEY_BYTES;
    return SP_OK;
}

typedef struct sp_mpi_key {
    uint64_t base, length;
    uint32_t id, owner;
    bool twosided;
} sp_mpi_key_t;

/* Unpacks a remote key; SP_ERR_BAD_FORMAT when it is not one of ours. */
static sp_status_t sp_mpi_unpack(const sp_mpi_t *m, const void *rkey, size_t len, sp_mpi_key_t *k)
{
    const unsigned char *b = rkey;

    if (len != SP_MPI_KEY_BYTES || b[0] != 'S' || b[1] != 'M' || b[2] != 1 ||
        (b[3] & ~SP_MPI_KEY_TWOSIDED) != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    k->twosided = (b[3] & SP_MPI_KEY_TWOSIDED) != 0;
    k->id = sp__le_get_u32(b + 4);
    k->base = sp__le_get_u64(b + 8);
    k->length = sp__le_get_u64(b + 16);
    k->owner = sp__le_get_u32(b + 24);
    /* The displacement of any byte of the region must be an MPI_Aint. */
    if (k->base > (uint64_t)INTPTR_MAX || k->length > (uint64_t)INTPTR_MAX - k->base ||
        k->owner >= (uint32_t)m->size)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "remote key names %llu bytes at 0x%llx on rank %u of a %d-rank world",
                        (unsigned long long)k->length, (unsigned long long)k->base, k->owner,
                        m->size);
    return SP_OK;
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

/* Completes one finished op into the ring. */
static void sp_mpi_complete(sp_mpi_t *m, sp_mpi_op_t *op, MPI_Status *status, int err)
{
    char msg[MPI_MAX_ERROR_STRING];
    int got = -1, cancelled = 0;

    if (op->type != MPI_DATATYPE_NULL)
        MPI_Type_free(&op->type);
    if (op->timed_out) {
        /* Reported when it timed out; MPI is done with its destination now. */
        sp__transport_release(&m->base, op->user, op->peer);
        return;
    }
    if (err == MPI_SUCCESS && op->twosided) {
        MPI_Test_cancelled(status, &cancelled);
        if (cancelled || MPI_Get_count(status, MPI_BYTE, &got) != MPI_SUCCESS)
            got = -1;
        if (got == 0 && op->len > 0) {
            sp__transport_fail(&m->base, op->user, SP_ERR_FETCH_FAILED, 0, op->peer,
                               "peer %u refused the read of %zu bytes at offset %llu: its region "
                               "is no longer served, or the read is past its end",
                               op->peer, op->len, (unsigned long long)op->offset);
            return;
        }
    }
    if (err == MPI_SUCCESS) {
        sp__transport_complete(&m->base, op->user, op->len, op->peer);
    } else {
        sp__transport_fail(&m->base, op->user, SP_ERR_FETCH_FAILED, err, op->peer,
                           "fetch of %zu bytes at offset %llu from peer %u failed: %s (raw %d)",
                           op->len, (unsigned long long)op->offset, op->peer,
                           sp_mpi_strerror(err, msg), err);
    }
}

/* Serves requests, completes finished ops into the ring, expires overdue ones. */
static sp_status_t sp_mpi_progress(sp_transport_t *t)
{
    sp_mpi_t *m = sp_mpi(t);
    uint64_t now;
    int rc, outcount = 0;
    size_t kept = 0;
    sp_status_t st;

    if ((st = sp_mpi_serve(m)) != SP_OK || (st = sp_mpi_test_sends(m)) != SP_OK)
        return st;
    if (m->nlive == 0)
        return SP_OK;
    rc = MPI_Testsome((int)m->nlive, m->reqs, &outcount, m->indices, m->statuses);
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS)
        return sp_mpi_error(SP_ERR_TRANSPORT, "MPI_Testsome over the posted fetches", rc);
    for (int k = 0; k < outcount && outcount != MPI_UNDEFINED; k++) {
        int err = rc == MPI_ERR_IN_STATUS ? m->statuses[k].MPI_ERROR : MPI_SUCCESS;

        /* MPI frees a completed request; make sure it is not tested twice. */
        m->reqs[m->indices[k]] = MPI_REQUEST_NULL;
        sp_mpi_complete(m, &m->ops[m->indices[k]], &m->statuses[k], err);
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
            if (op->twosided)
                MPI_Cancel(&m->reqs[i]);
            sp__transport_fail_held(&m->base, op->user, SP_ERR_TIMED_OUT, 0, op->peer,
                                    "fetch of %zu bytes at offset %llu from peer %u did not "
                                    "complete in %llu ms",
                                    op->len, (unsigned long long)op->offset, op->peer,
                                    (unsigned long long)(m->base.timeout_ns / 1000000));
        }
    }
    return SP_OK;
}

/* Posts the receive of the reply, then the request: the reply always finds its receive. */
static sp_status_t sp_mpi_post_request(sp_mpi_t *m, const sp_mpi_key_t *k, uint32_t peer,
                                       uint64_t offset, size_t len, void *dest, int count,
                                       MPI_Datatype type, MPI_Request *req_p)
{
    char msg[MPI_MAX_ERROR_STRING];
    int tag = m->next_tag, rc;
    sp_mpi_send_t *s;
    sp_status_t st;

    if ((st = sp_mpi_reserve_send(m)) != SP_OK)
        return st;
    s = sp__calloc(1, sizeof(*s));
    if (s == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a request");
    s->type = MPI_DATATYPE_NULL;
    m->next_tag = m->next_tag < m->tag_ub ? m->next_tag + 1 : SP_MPI_TAG_FIRST;
    s->hdr[0] = 'S';
    s->hdr[1] = 'Q';
    s->hdr[2] = 1;
    sp__le_put_u32(s->hdr + 4, k->id);
    sp__le_put_u32(s->hdr + 8, (uint32_t)tag);
    sp__le_put_u64(s->hdr + 16, k->base);
    sp__le_put_u64(s->hdr + 24, offset);
    sp__le_put_u64(s->hdr + 32, (uint64_t)len);
    rc = MPI_Irecv(dest, count, type, (int)peer, tag, m->comm, req_p);
    if (rc != MPI_SUCCESS) {
        sp__free(s);
        return SP_RAISE(SP_ERR_FETCH_FAILED,
                        "MPI_Irecv of %zu bytes at offset %llu from peer %u: %s (raw %d)", len,
                        (unsigned long long)offset, peer, sp_mpi_strerror(rc, msg), rc);
    }
    rc = MPI_Isend(s->hdr, SP_MPI_REQ_BYTES, MPI_BYTE, (int)peer, SP_MPI_TAG_REQ, m->comm,
                   &m->sreqs[m->nsends]);
    if (rc != MPI_SUCCESS) {
        MPI_Cancel(req_p);
        MPI_Wait(req_p, MPI_STATUS_IGNORE);
        sp__free(s);
        return SP_RAISE(SP_ERR_FETCH_FAILED,
                        "MPI_Isend of the request for %zu bytes at offset %llu to peer %u: %s "
                        "(raw %d)",
                        len, (unsigned long long)offset, peer, sp_mpi_strerror(rc, msg), rc);
    }
    m->sends[m->nsends++] = s;
    return SP_OK;
}

static sp_status_t sp_mpi_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                                uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                                void *context)
{
    sp_mpi_t *m = sp_mpi(t);
    char msg[MPI_MAX_ERROR_STRING];
    sp_mpi_key_t k = {0, 0, 0, 0, false}; /* set by the unpack; gcc -O2 cannot tell */
    MPI_Datatype type = MPI_BYTE, big = MPI_DATATYPE_NULL;
    int count = 0, rc;
    MPI_Request req = MPI_REQUEST_NULL;
    sp_mpi_op_t *op;
    sp_status_t st;

    SP_UNUSED(local); /* MPI needs no registration of the destination */
    if ((st = sp_mpi_unpack(m, rkey, rkey_len, &k)) != SP_OK)
        return st;
    if (peer >= (uint32_t)m->size || !m->added[peer])
        return SP_RAISE(SP_ERR_INVALID_PARAM, "fetch from unknown peer %u (not added; %d ranks)",
                        peer, m->size);
    if (peer != k.owner)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch from peer %u with the key of a region of rank %u: a key is read "
                        "only from its owner",
                        peer, k.owner);
    if (offset > k.length || len > k.length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)k.length);
    if (!k.twosided && m->win == MPI_WIN_NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "key of peer %u names a region in its window, and this transport has "
                        "none (transport.mpi_mode=twosided here, rget there?)",
                        peer);
    if ((st = sp__transport_admit(t)) != SP_OK)
        return st;
    if (k.twosided && len == 0) {
        /* Nothing to ask for. */
        sp__transport_posted(t);
        sp__transport_complete(t, context, 0, peer);
        return SP_OK;
    }
    if ((st = sp_mpi_reserve(m)) != SP_OK ||
        (st = sp_mpi_type_of(len, &count, &type, &big)) != SP_OK)
        return st;
    if (k.twosided) {
        st = sp_mpi_post_request(m, &k, peer, offset, len, dest, count, type, &req);
    } else {
        rc = MPI_Rget(dest, count, type, (int)peer,
                      MPI_Aint_add((MPI_Aint)k.base, (MPI_Aint)offset), count, type, m->win, &req);
        if (rc != MPI_SUCCESS)
            st = SP_RAISE(SP_ERR_FETCH_FAILED,
                          "MPI_Rget of %zu bytes at offset %llu from peer %u: %s (raw %d)", len,
                          (unsigned long long)offset, peer, sp_mpi_strerror(rc, msg), rc);
    }
    if (st != SP_OK) {
        if (big != MPI_DATATYPE_NULL)
            MPI_Type_free(&big);
        return st;
    }
    op = &m->ops[m->nlive];
    *op = (sp_mpi_op_t){.user = context,
                        .peer = peer,
                        .len = len,
                        .offset = offset,
                        .deadline = sp__now_ns() + m->base.timeout_ns,
                        .type = big,
                        .count = count,
                        .twosided = k.twosided};
    m->reqs[m->nlive++] = req;
    sp__transport_posted(t);
    return SP_OK;
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
    .progress = sp_mpi_progress,
};
