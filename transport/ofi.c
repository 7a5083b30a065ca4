/*
 * The ofi backend: one libfabric RDM endpoint per executor; map outputs are
 * served one-sided (registered read-only for remote access, fetched with
 * fi_read) so the serving executor's CPU is not involved where the provider
 * offloads RMA.
 *
 * Provider behaviour is taken from the domain's mr_mode bits, not assumed:
 * FI_MR_LOCAL (local buffers need descriptors), FI_MR_VIRT_ADDR (remote
 * addresses are virtual addresses, else offsets), FI_MR_PROV_KEY (keys come
 * from the provider, else we choose them), FI_MR_ENDPOINT (regions are bound
 * to the endpoint and enabled), FI_MR_ALLOCATED (registered memory must be
 * backed, which pages and mapped files are).
 *
 * A packed remote key is 32 bytes: magic 'S' 'K', version 1, flags (bit 0:
 * virtual addressing; bit 1: served by messages), 4 reserved, u64 key (the
 * provider's key, or for a region served by messages our region id), u64
 * base address, u64 length. Every fetch is checked against the key's length
 * before it is posted.
 *
 * transport.ofi_mode picks how blocks travel: rma (fi_read), msg (request
 * and reply, for providers without FI_RMA) or auto (rma when the provider
 * offers FI_RMA with remote reads, else msg). In msg mode the endpoint asks
 * for FI_MSG | FI_TAGGED only. A reader posts a tagged receive of the block
 * into its registered buffer (a tag of its own for each fetch), then sends
 * the owner a tagged request: 'S' 'Q', version 1, a reserved byte, u16
 * length of the reader's address, 2 reserved, u64 region id, u64 base, u64
 * offset, u64 length, u64 reply tag, then the reader's endpoint address (the
 * owner need not have added the reader as a peer). The owner keeps
 * SP_OFI_SLOTS receives posted for requests and answers each from its
 * progress (the progress thread, or its polls) through the transport's
 * two-sided serving (serve.c, shared with the mpi backend): it checks the
 * request against the region it names (id, base, bounds, still served, one
 * message long at most) and this backend sends the bytes straight from the
 * region with the reply tag (sp_ofi_reply), or refuses with an empty message
 * whose tag carries SP_OFI_TAG_ERR (sp_ofi_refuse), which the reader's
 * receive also matches (the error bit is ignored by its receive) and reports
 * as a refused fetch. A reply that meets back-pressure keeps its request
 * slot and is tried again at the next progress. Deregistering a region
 * refuses new requests for it and waits (up to transport.timeout) for the
 * replies reading it, then cancels them (sp_ofi_abandon).
 *
 * Completions are read from one CQ into the transport's completion ring
 * (transport.c). Progress is driven by the caller's poll and, with
 * transport.progress_thread (the default), by the shared progress thread, so
 * that an executor serves reads on providers whose RMA needs the target's CPU
 * (tcp) even while none of its threads polls. The base lock serializes every
 * libfabric call (FI_THREAD_DOMAIN). Each posted read carries an op with a
 * deadline; one older than transport.timeout completes with SP_ERR_TIMED_OUT
 * at once and is cancelled (fi_cancel); its op is kept until the provider
 * gives its contexts back (a msg fetch has two: the reply's receive and the
 * request's send), as a completion or an FI_ECANCELED error entry. Until the
 * context that writes into the destination (the read, or the reply's
 * receive) is back, the destination is the provider's: the failure goes to
 * the caller with held set, and its release follows when that context comes
 * back (transport.c). tcp;ofi_rxm cancels posted receives but not reads in
 * flight, so a timed-out read is released only when it ends: when its peer
 * answers at last, or its connection fails.
 *
 * Close cancels every operation still posted (fetches, replies, request
 * slots), then reads the CQ for up to SP_OFI_DRAIN_NS until the provider has
 * given every context back, and only then closes the endpoint, and after it
 * the MRs, AV, CQ, domain and fabric (fi_endpoint(3): an endpoint goes
 * before the objects bound to it). What the provider still holds after that
 * (a read whose peer never answers) is left to it, with the memory it may
 * write (op, request slots), and a warning says so once; their memory is
 * never freed under the provider.
 *
 * ofi_rxm (tcp;ofi_rxm, verbs;ofi_rxm) sizes its receive pools for MPI's
 * eager traffic: with libfabric 1.17's defaults on tcp (a shared receive
 * queue of 4096 buffers of 16 KiB, pools that grow 1024 buffers at a time)
 * an endpoint costs ~85 MiB of anonymous memory, four times what an
 * executor needs of its own. Before the first fi_getinfo,
 * sp__ofi_prepare_env (also run by sp__transport_prepare_env, for code that
 * initializes libfabric before any transport) sets FI_OFI_RXM_MSG_RX_SIZE to
 * 128 (64 reads in flight and 32 request slots fit), where the environment
 * does not set it (setenv(..., 0): the user's value wins). The buffer size
 * (FI_OFI_RXM_BUFFER_SIZE) is left alone although 512 bytes would save as
 * much again in rma mode: it is rxm's eager limit, part of its protocol, and
 * peers whose values differ stop talking (fi_read returns FI_EAGAIN until
 * the timeout; seen when one rank's libfabric was initialized before spate
 * set it and the other's after). The receive count is local to each process:
 * peers with different counts interoperate. rxm reads the variables once,
 * when libfabric first initializes its providers (the process's first
 * fi_getinfo, whoever calls it), so where something else initialized
 * libfabric first (MPI_Init with Open MPI's mtl ofi) spate's value has no
 * effect; exporting it sizes rxm there.
 */
#include "bytes.h"
#include "transport_int.h"

#include <dirent.h>
#include <errno.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ofi_rxm receive buffers per endpoint (see the design note); rxm: 4096 on tcp. */
#define SP_OFI_RXM_MSG_RX_SIZE "128"
#define SP_OFI_VERSION         FI_VERSION(1, 9)
/* The progress thread's pause: short while completions come in, up to 1 ms when idle. */
#define SP_OFI_PAUSE_MIN_NS 10000L
#define SP_OFI_PAUSE_MAX_NS 1000000L
#define SP_OFI_KEY_BYTES    32
#define SP_OFI_MR_MODES                                                                            \
    (FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)

/* Key flags. */
#define SP_OFI_KEY_VIRT 1u
#define SP_OFI_KEY_MSG  2u
/* msg mode: requests, and the reply tags (a counter below SP_OFI_TAG_ERR). */
#define SP_OFI_REQ_HDR  48
#define SP_OFI_REQ_MAX  (SP_OFI_REQ_HDR + SP_TRANSPORT_ADDR_MAX)
#define SP_OFI_SLOTS    32
#define SP_OFI_TAG_REQ  (1ULL << 48)
#define SP_OFI_TAG_ERR  (1ULL << 47)
#define SP_OFI_TAG_MASK (SP_OFI_TAG_ERR - 1)
/* How long close waits for the provider to give back what it holds. */
#define SP_OFI_DRAIN_NS (2000ull * 1000000ull)

/* What a context handed to the provider stands for. */
typedef enum sp_ofi_kind {
    SP_OFI_READ,         /* a fetch's fi_read (rma) */
    SP_OFI_REPLY_RECV,   /* a fetch's receive of its reply (msg) */
    SP_OFI_REQUEST_SEND, /* a fetch's request (msg) */
    SP_OFI_SLOT_RECV,    /* a receive posted for requests to serve (msg) */
    SP_OFI_REPLY_SEND,   /* a reply we serve (msg) */
} sp_ofi_kind_t;

struct sp_ofi_op;
struct sp_ofi_slot;

typedef struct sp_ofi_ctx {
    struct fi_context2 fc; /* first: the provider hands back its address */
    struct sp_ofi_op *op;
    struct sp_ofi_slot *slot;
    sp_ofi_kind_t kind;
} sp_ofi_ctx_t;

typedef struct sp_ofi_mr {
    sp_mr_t base;
    struct fid_mr *mr;
    void *desc;
    uint64_t key;
    sp_served_t served; /* msg mode, served regions: in the base's table (serve.c) */
} sp_ofi_mr_t;

typedef struct sp_ofi_op {
    sp_ofi_ctx_t ctx[2]; /* [0] the read, reply receive or reply send; [1] the request */
    struct sp_ofi_op *next;
    void *user;
    uint32_t peer;
    size_t len;
    uint64_t offset;
    uint64_t deadline;
    unsigned held;         /* contexts the provider has not given back */
    bool reported;         /* its completion is in the ring (or it timed out) */
    bool dest_out;         /* ctx[0], which writes into the destination, is posted */
    bool lent;             /* failed while dest_out: its release is due when ctx[0] is back */
    bool fetch;            /* a fetch (timed out after transport.timeout), not a reply */
    sp_served_t *region;   /* a reply: the region it sends from */
    struct fid_mr *req_mr; /* FI_MR_LOCAL: the registration of req */
    void *req_desc;
    unsigned char req[SP_OFI_REQ_MAX];
} sp_ofi_op_t;

/* A receive posted for requests; pending: received, its reply not posted yet. */
typedef struct sp_ofi_slot {
    sp_ofi_ctx_t ctx;
    bool posted, pending;
    size_t len;
    unsigned char buf[SP_OFI_REQ_MAX];
} sp_ofi_slot_t;

/* A reader's address, as the requests name it, and where the AV put it. */
typedef struct sp_ofi_addr {
    fi_addr_t fa;
    size_t len;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
} sp_ofi_addr_t;

typedef struct sp_ofi {
    sp_transport_t base;
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    uint64_t mr_mode;
    uint64_t next_key;
    bool msg; /* transport.ofi_mode resolved to msg */
    fi_addr_t *peers;
    uint32_t npeers, peers_cap;
    sp_ofi_op_t *live; /* posted, not completed */
    sp_ofi_op_t *free_ops;
    /* msg mode */
    uint64_t next_tag;
    sp_ofi_slot_t *slots;
    struct fid_mr *slots_mr;
    void *slots_desc;
    sp_ofi_addr_t *addrs; /* readers' addresses seen */
    size_t naddrs, addrs_cap;
    unsigned char self[SP_TRANSPORT_ADDR_MAX];
    size_t self_len;
    bool warned_request;
    bool closing; /* close is draining: nothing is posted or answered any more */
} sp_ofi_t;

static sp_ofi_t *sp_ofi(sp_transport_t *t) { return sp_container_of(t, sp_ofi_t, base); }

/*
 * libfabric's shm provider names its shared-memory region after the process
 * ("PID:N:M" in /dev/shm) and refuses to create one that exists. A process
 * killed with SIGKILL leaves its region behind, and a later process that
 * gets the same pid could then not open an endpoint. Regions named after
 * this pid belong to such a dead process as long as this process has no
 * shm endpoint of its own yet, so the first one removes them.
 */
static atomic_int sp_ofi_shm_opened;

void sp__ofi_shm_clear(long pid)
{
    char prefix[32], path[64 + 256];
    struct dirent *e;
    DIR *d;

    if ((d = opendir("/dev/shm")) == NULL)
        return;
    snprintf(prefix, sizeof(prefix), "%ld:", pid);
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "/dev/shm/%s", e->d_name) < sizeof(path) &&
            unlink(path) == 0)
            sp_info("removed %s, the shared memory of process %ld, which is gone", path, pid);
    }
    closedir(d);
}

static void sp_ofi_shm_clear_stale(void)
{
    if (atomic_fetch_add(&sp_ofi_shm_opened, 1) == 0)
        sp__ofi_shm_clear((long)getpid());
}

static sp_status_t sp_ofi_error(sp_status_t st, const char *what, ssize_t ret)
{
    int err = (int)(ret < 0 ? -ret : ret);

    return SP_RAISE(st, "libfabric %s failed: %s (raw -%d)", what, fi_strerror(err), err);
}

static void sp_ofi_free_op(sp_ofi_op_t *op)
{
    if (op->req_mr != NULL)
        fi_close(&op->req_mr->fid);
    sp__free(op);
}

static sp_status_t sp_ofi_reap(sp_ofi_t *o);

/* Request slots whose receive the provider has not given back. */
static unsigned sp_ofi_slots_posted(const sp_ofi_t *o)
{
    unsigned n = 0;

    for (int i = 0; o->slots != NULL && i < SP_OFI_SLOTS; i++)
        n += o->slots[i].posted;
    return n;
}

/*
 * Cancels everything still posted and reads the CQ until the provider has
 * given every context back or SP_OFI_DRAIN_NS passed. Nothing is posted again
 * (closing). The completions of fetches still go to the ring (nobody polls
 * it any more), so the accounting stays whole.
 */
static void sp_ofi_drain(sp_ofi_t *o)
{
    uint64_t until = sp__now_ns() + SP_OFI_DRAIN_NS;

    o->closing = true;
    for (sp_ofi_op_t *op = o->live; op != NULL; op = op->next) {
        /* Cancelling a context the provider does not hold is harmless. */
        (void)fi_cancel(&o->ep->fid, &op->ctx[0].fc);
        (void)fi_cancel(&o->ep->fid, &op->ctx[1].fc);
    }
    for (int i = 0; o->slots != NULL && i < SP_OFI_SLOTS; i++)
        if (o->slots[i].posted)
            (void)fi_cancel(&o->ep->fid, &o->slots[i].ctx.fc);
    while ((o->live != NULL || sp_ofi_slots_posted(o) > 0) && sp__now_ns() < until) {
        struct timespec ts = {0, 100000};

        (void)sp_ofi_reap(o);
        if (o->live == NULL && sp_ofi_slots_posted(o) == 0)
            break;
        nanosleep(&ts, NULL);
    }
}

static void sp_ofi_close(sp_transport_t *t)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_ofi_op_t *op;
    unsigned left = 0, slots_left = 0;

    sp__transport_stop_thread(&o->base);
    sp__serve_fini(&o->base);
    if (o->ep != NULL) {
        sp_ofi_drain(o);
        fi_close(&o->ep->fid);
        /* Closing the endpoint flushes what it held into the CQ. */
        if (o->cq != NULL)
            (void)sp_ofi_reap(o);
    }
    slots_left = sp_ofi_slots_posted(o);
    for (op = o->live; op != NULL; op = op->next)
        left++;
    if (left > 0 || slots_left > 0) {
        /* Their memory may still be written: leave it, and its registrations, to the provider. */
        sp_warn("ofi transport: provider %s still holds %u operations and %u request receives "
                "after %llu ms; their memory is left to it rather than freed under it",
                o->base.provider, left, slots_left,
                (unsigned long long)(SP_OFI_DRAIN_NS / 1000000));
        o->live = NULL;
    }
    while ((op = o->free_ops) != NULL) {
        o->free_ops = op->next;
        sp_ofi_free_op(op);
    }
    if (slots_left > 0) {
        o->slots = NULL;
        o->slots_mr = NULL;
    }
    if (o->slots_mr != NULL)
        fi_close(&o->slots_mr->fid);
    if (o->av != NULL)
        fi_close(&o->av->fid);
    if (o->cq != NULL)
        fi_close(&o->cq->fid);
    if (o->domain != NULL)
        fi_close(&o->domain->fid);
    if (o->fabric != NULL)
        fi_close(&o->fabric->fid);
    if (o->info != NULL)
        fi_freeinfo(o->info);
    sp__free(o->slots);
    sp__free(o->addrs);
    sp__free(o->peers);
    sp__transport_fini_base(&o->base);
    sp__free(o);
}

static const sp_transport_ops_t sp_ofi_ops;
static const sp_serve_ops_t sp_ofi_serve_ops;

/*
 * fi_getinfo for an RDM endpoint with caps (one-sided reads, or tagged
 * messages) on the named provider (NULL: any); returns the raw code.
 */
static int sp_ofi_getinfo(const char *provider, uint64_t caps, struct fi_info **info_p)
{
    struct fi_info *hints = fi_allocinfo();
    int ret;

    if (hints == NULL)
        return -FI_ENOMEM;
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = caps;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = SP_OFI_MR_MODES;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    if (provider != NULL && *provider != '\0') {
        hints->fabric_attr->prov_name = strdup(provider); /* freed by fi_freeinfo */
        if (hints->fabric_attr->prov_name == NULL) {
            fi_freeinfo(hints);
            return -FI_ENOMEM;
        }
    }
    ret = fi_getinfo(SP_OFI_VERSION, NULL, NULL, 0, hints, info_p);
    fi_freeinfo(hints);
    if (ret != 0)
        *info_p = NULL;
    return ret;
}

/*
 * ofi_rxm's receive pool sized for what we send through it (see the design
 * note), where the environment does not set it. Takes effect only before
 * libfabric's first initialization in this process. setenv is not safe
 * against other threads reading the environment at the same moment; a
 * transport is opened while an executor starts, before its task threads.
 */
void sp__ofi_prepare_env(const sp_conf_t *conf)
{
    SP_UNUSED(conf); /* the default is the same for every configuration */
    if (getenv("FI_OFI_RXM_MSG_RX_SIZE") == NULL &&
        setenv("FI_OFI_RXM_MSG_RX_SIZE", SP_OFI_RXM_MSG_RX_SIZE, 0) == 0)
        sp_debug("ofi transport: FI_OFI_RXM_MSG_RX_SIZE=%s (spate's default)",
                 SP_OFI_RXM_MSG_RX_SIZE);
}

static sp_status_t sp_ofi_post_slot(sp_ofi_t *o, sp_ofi_slot_t *slot);

/* msg mode: the request slots, registered as one region, each with a receive posted. */
static sp_status_t sp_ofi_open_slots(sp_ofi_t *o)
{
    sp_status_t st;
    int ret;

    o->slots = sp__calloc(SP_OFI_SLOTS, sizeof(*o->slots));
    if (o->slots == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %d request slots", SP_OFI_SLOTS);
    if (o->mr_mode & FI_MR_LOCAL) {
        ret = fi_mr_reg(o->domain, o->slots, SP_OFI_SLOTS * sizeof(*o->slots), FI_RECV, 0,
                        (o->mr_mode & FI_MR_PROV_KEY) ? 0 : o->next_key++, 0, &o->slots_mr, NULL);
        if (ret != 0)
            return sp_ofi_error(SP_ERR_TRANSPORT, "fi_mr_reg of the request slots", ret);
        if ((o->mr_mode & FI_MR_ENDPOINT) &&
            ((ret = fi_mr_bind(o->slots_mr, &o->ep->fid, 0)) != 0 ||
             (ret = fi_mr_enable(o->slots_mr)) != 0))
            return sp_ofi_error(SP_ERR_TRANSPORT, "fi_mr_bind/fi_mr_enable of the request slots",
                                ret);
        o->slots_desc = fi_mr_desc(o->slots_mr);
    }
    for (int i = 0; i < SP_OFI_SLOTS; i++) {
        o->slots[i].ctx.slot = &o->slots[i];
        o->slots[i].ctx.kind = SP_OFI_SLOT_RECV;
        if ((st = sp_ofi_post_slot(o, &o->slots[i])) != SP_OK)
            return st;
    }
    return SP_OK;
}

sp_status_t sp__ofi_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    static const uint64_t rma_caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    static const uint64_t msg_caps = FI_MSG | FI_TAGGED;
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_TAGGED, .wait_obj = FI_WAIT_NONE};
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    const char *provider = NULL, *mode = "auto";
    sp_ofi_t *o;
    sp_status_t st;
    int ret;

    o = sp__calloc(1, sizeof(*o));
    if (o == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an ofi transport");
    if ((st = sp__transport_init_base(&o->base, conf, &sp_ofi_ops, "ofi")) != SP_OK ||
        (st = sp_conf_get_string(conf, "transport.provider", &provider)) != SP_OK ||
        (st = sp_conf_get_string(conf, "transport.ofi_mode", &mode)) != SP_OK)
        goto err;
    if (provider == NULL || *provider == '\0')
        provider = getenv("FI_PROVIDER");
    o->msg = strcmp(mode, "msg") == 0;
    sp__ofi_prepare_env(conf);
    ret = sp_ofi_getinfo(provider, o->msg ? msg_caps : rma_caps, &o->info);
    if (ret == -FI_ENODATA && strcmp(mode, "auto") == 0) {
        /* No one-sided reads: request and reply over tagged messages. */
        o->msg = true;
        ret = sp_ofi_getinfo(provider, msg_caps, &o->info);
    }
    if (ret != 0) {
        st =
            SP_RAISE(ret == -FI_ENOMEM ? SP_ERR_NOMEM : SP_ERR_UNSUPPORTED,
                     "no libfabric provider%s%s offers RDM endpoints with %s "
                     "(transport.ofi_mode=%s): %s (raw -%d)",
                     provider != NULL && *provider != '\0' ? " named " : "",
                     provider != NULL ? provider : "",
                     o->msg ? "tagged messages" : "one-sided reads", mode, fi_strerror(-ret), -ret);
        goto err;
    }
    o->mr_mode = o->info->domain_attr->mr_mode;
    snprintf(o->base.provider, sizeof(o->base.provider), "%s", o->info->fabric_attr->prov_name);
    if ((ret = fi_fabric(o->info->fabric_attr, &o->fabric, NULL)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_fabric", ret);
        goto err;
    }
    if ((ret = fi_domain(o->fabric, o->info, &o->domain, NULL)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_domain", ret);
        goto err;
    }
    /* Room for our fetches (two contexts each in msg mode) and what we serve. */
    cq_attr.size = (size_t)o->base.max_outstanding * 2 + (o->msg ? 4 * SP_OFI_SLOTS : 0);
    if ((ret = fi_cq_open(o->domain, &cq_attr, &o->cq, NULL)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_cq_open", ret);
        goto err;
    }
    if ((ret = fi_av_open(o->domain, &av_attr, &o->av, NULL)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_av_open", ret);
        goto err;
    }
    if (strcmp(o->base.provider, "shm") == 0)
        sp_ofi_shm_clear_stale();
    if ((ret = fi_endpoint(o->domain, o->info, &o->ep, NULL)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_endpoint", ret);
        goto err;
    }
    if ((ret = fi_ep_bind(o->ep, &o->cq->fid, FI_TRANSMIT | FI_RECV)) != 0 ||
        (ret = fi_ep_bind(o->ep, &o->av->fid, 0)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_ep_bind", ret);
        goto err;
    }
    if ((ret = fi_enable(o->ep)) != 0) {
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_enable", ret);
        goto err;
    }
    o->next_key = 1;
    o->next_tag = 1;
    if (o->msg) {
        o->self_len = sizeof(o->self);
        if ((ret = fi_getname(&o->ep->fid, o->self, &o->self_len)) != 0) {
            st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_getname", ret);
            goto err;
        }
        sp__serve_init(&o->base, &sp_ofi_serve_ops, UINT64_MAX,
                       (uint64_t)o->info->ep_attr->max_msg_size);
        if ((st = sp_ofi_open_slots(o)) != SP_OK)
            goto err;
    }
    {
        bool thread = true;
        if ((st = sp_conf_get_bool(conf, "transport.progress_thread", &thread)) != SP_OK ||
            (thread && (st = sp__transport_start_thread(&o->base, SP_OFI_PAUSE_MIN_NS,
                                                        SP_OFI_PAUSE_MAX_NS)) != SP_OK))
            goto err;
    }
    sp_debug("ofi transport on provider %s, %s, mr_mode 0x%llx", o->base.provider,
             o->msg ? "request and reply (msg)" : "one-sided reads (rma)",
             (unsigned long long)o->mr_mode);
    *transport_p = &o->base;
    return SP_OK;

err:
    sp_ofi_close(&o->base);
    return st;
}

static sp_status_t sp_ofi_address(sp_transport_t *t, void *buf, size_t cap, size_t *len_p)
{
    sp_ofi_t *o = sp_ofi(t);
    size_t len = cap;
    int ret = fi_getname(&o->ep->fid, buf, &len);

    if (ret == -FI_ETOOSMALL)
        return SP_RAISE(SP_ERR_TOO_LARGE, "endpoint address needs %zu bytes, %zu given", len, cap);
    if (ret != 0)
        return sp_ofi_error(SP_ERR_TRANSPORT, "fi_getname", ret);
    *len_p = len;
    return SP_OK;
}

/*
 * The AV entry of a reader's address (msg mode), inserting it the first time
 * it is seen. The provider validates the bytes (fi_av_insert).
 */
static sp_status_t sp_ofi_lookup_addr(sp_ofi_t *o, const void *addr, size_t len, fi_addr_t *fa_p)
{
    sp_ofi_addr_t *a;
    fi_addr_t fa = FI_ADDR_UNSPEC;
    int ret;

    if (len == 0 || len > SP_TRANSPORT_ADDR_MAX)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "address of %zu bytes", len);
    for (size_t i = 0; i < o->naddrs; i++) {
        if (o->addrs[i].len == len && memcmp(o->addrs[i].addr, addr, len) == 0) {
            *fa_p = o->addrs[i].fa;
            return SP_OK;
        }
    }
    if (o->naddrs == o->addrs_cap) {
        size_t cap = o->addrs_cap != 0 ? 2 * o->addrs_cap : 8;
        sp_ofi_addr_t *p = sp__realloc(o->addrs, cap * sizeof(*p));
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu peer addresses", cap);
        o->addrs = p;
        o->addrs_cap = cap;
    }
    ret = fi_av_insert(o->av, addr, 1, &fa, 0, NULL);
    if (ret != 1)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address rejected by provider %s (raw %d)",
                        o->base.provider, ret);
    a = &o->addrs[o->naddrs++];
    a->fa = fa;
    a->len = len;
    memcpy(a->addr, addr, len);
    *fa_p = fa;
    return SP_OK;
}

static sp_status_t sp_ofi_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                   uint32_t *peer_p)
{
    sp_ofi_t *o = sp_ofi(t);
    fi_addr_t fa = FI_ADDR_UNSPEC;
    sp_status_t st;
    int ret;

    if (o->npeers == o->peers_cap) {
        uint32_t cap = o->peers_cap != 0 ? 2 * o->peers_cap : 16;
        fi_addr_t *p = sp__realloc(o->peers, cap * sizeof(*p));
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u peers", cap);
        o->peers = p;
        o->peers_cap = cap;
    }
    if (o->msg) {
        /* Shared with the readers' addresses, so a peer is in the AV once. */
        if ((st = sp_ofi_lookup_addr(o, addr, len, &fa)) != SP_OK)
            return st;
    } else {
        /* The provider validates the address itself (fi_av_insert); lengths
         * differ between providers (shm names are strings). */
        ret = fi_av_insert(o->av, addr, 1, &fa, 0, NULL);
        if (ret != 1)
            return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address rejected by provider %s (raw %d)",
                            o->base.provider, ret);
    }
    o->peers[o->npeers] = fa;
    *peer_p = o->npeers++;
    return SP_OK;
}

static sp_status_t sp_ofi_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                 sp_mr_t **mr_p)
{
    sp_ofi_t *o = sp_ofi(t);
    uint64_t access =
        o->msg ? (remote_read ? FI_SEND : FI_RECV) : (remote_read ? FI_REMOTE_READ : FI_READ);
    uint64_t requested = (o->mr_mode & FI_MR_PROV_KEY) ? 0 : o->next_key++;
    sp_ofi_mr_t *m;
    sp_status_t st;
    int ret;

    m = sp__calloc(1, sizeof(*m));
    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory region");
    ret = fi_mr_reg(o->domain, addr, len, access, 0, requested, 0, &m->mr, NULL);
    if (ret != 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "fi_mr_reg of %zu bytes at %p on %s: %s (raw -%d)", len,
                      addr, o->base.provider, fi_strerror(-ret), -ret);
        goto err_free;
    }
    if (o->mr_mode & FI_MR_ENDPOINT) {
        if ((ret = fi_mr_bind(m->mr, &o->ep->fid, 0)) != 0 || (ret = fi_mr_enable(m->mr)) != 0) {
            st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_mr_bind/fi_mr_enable", ret);
            goto err_close;
        }
    }
    m->desc = fi_mr_desc(m->mr);
    m->key = fi_mr_key(m->mr);
    if (m->key == FI_KEY_NOTAVAIL && !o->msg) {
        st =
            SP_RAISE(SP_ERR_UNSUPPORTED, "provider %s gives no key for a region", o->base.provider);
        goto err_close;
    }
    m->base.transport = t;
    m->base.addr = addr;
    m->base.len = len;
    m->base.remote_read = remote_read;
    if (o->msg && remote_read)
        sp__serve_add(t, &m->served, &m->base, (uint64_t)(uintptr_t)addr);
    t->stats.regions_registered++;
    *mr_p = &m->base;
    return SP_OK;

err_close:
    fi_close(&m->mr->fid);
err_free:
    sp__free(m);
    return st;
}

static sp_status_t sp_ofi_progress(sp_transport_t *t);

/*
 * msg mode: the replies from r outlived transport.timeout as it is
 * deregistered (serve.c): they are cancelled, and a send the provider cannot
 * cancel gets SP_OFI_DRAIN_NS more, after which its op forgets the region.
 * Lock held; let go while waiting.
 */
static void sp_ofi_abandon(sp_transport_t *t, sp_served_t *r)
{
    sp_ofi_t *o = sp_ofi(t);
    uint64_t until;

    sp_warn("ofi transport: %zu replies from the region at %p not sent in %llu ms; cancelled",
            r->replies, r->mr->addr, (unsigned long long)(o->base.timeout_ns / 1000000));
    for (sp_ofi_op_t *op = o->live; op != NULL; op = op->next)
        if (op->region == r)
            (void)fi_cancel(&o->ep->fid, &op->ctx[0].fc);
    /* A send the provider cannot cancel still reads the region: give it a while more. */
    until = sp__now_ns() + SP_OFI_DRAIN_NS;
    while (r->replies > 0 && sp__now_ns() < until) {
        pthread_mutex_unlock(&o->base.lock);
        sched_yield();
        pthread_mutex_lock(&o->base.lock);
        (void)sp_ofi_progress(&o->base);
    }
    if (r->replies > 0)
        sp_warn("ofi transport: provider %s still sends %zu replies from the region at %p as it "
                "is deregistered",
                o->base.provider, r->replies, r->mr->addr);
    for (sp_ofi_op_t *op = o->live; op != NULL; op = op->next)
        if (op->region == r)
            op->region = NULL;
}

/*
 * A region served by messages (msg mode) leaves the served table first
 * (serve.c: requests for it are refused, its replies are waited for, then
 * cancelled), then its registration goes. Called with the lock held; lets it
 * go while waiting.
 */
static void sp_ofi_mr_dereg(sp_mr_t *mr)
{
    sp_ofi_mr_t *m = sp_container_of(mr, sp_ofi_mr_t, base);
    sp_ofi_t *o = sp_ofi(mr->transport);

    if (o->msg && mr->remote_read)
        sp__serve_remove(&o->base, &m->served);
    fi_close(&m->mr->fid);
    sp__free(m);
}

static sp_status_t sp_ofi_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_ofi_mr_t *m = sp_container_of(mr, sp_ofi_mr_t, base);
    sp_ofi_t *o = sp_ofi(mr->transport);
    unsigned char *b = buf;
    uint64_t fields[3] = {o->msg ? m->served.id : m->key, (uint64_t)(uintptr_t)mr->addr,
                          (uint64_t)mr->len};

    if (cap < SP_OFI_KEY_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs %d bytes, %zu given",
                        SP_OFI_KEY_BYTES, cap);
    memset(b, 0, 8);
    b[0] = 'S';
    b[1] = 'K';
    b[2] = 1;
    b[3] = (unsigned char)(((o->mr_mode & FI_MR_VIRT_ADDR) ? SP_OFI_KEY_VIRT : 0) |
                           (o->msg ? SP_OFI_KEY_MSG : 0));
    for (int f = 0; f < 3; f++)
        sp__le_put_u64(b + 8 + 8 * f, fields[f]);
    *len_p = SP_OFI_KEY_BYTES;
    return SP_OK;
}

/* Unpacks a remote key; SP_ERR_BAD_FORMAT when it is not one of ours. */
static sp_status_t sp_ofi_unpack(const void *rkey, size_t len, uint64_t *key_p, uint64_t *base_p,
                                 uint64_t *length_p, unsigned *flags_p)
{
    const unsigned char *b = rkey;

    if (len != SP_OFI_KEY_BYTES || b[0] != 'S' || b[1] != 'K' || b[2] != 1 ||
        (b[3] & ~(SP_OFI_KEY_VIRT | SP_OFI_KEY_MSG)) != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    *key_p = sp__le_get_u64(b + 8);
    *base_p = sp__le_get_u64(b + 16);
    *length_p = sp__le_get_u64(b + 24);
    *flags_p = b[3];
    return SP_OK;
}

static sp_ofi_op_t *sp_ofi_get_op(sp_ofi_t *o)
{
    sp_ofi_op_t *op = o->free_ops;
    struct fid_mr *req_mr = NULL;
    void *req_desc = NULL;

    if (op != NULL) {
        o->free_ops = op->next;
        req_mr = op->req_mr;
        req_desc = op->req_desc;
    } else if ((op = sp__malloc(sizeof(*op))) == NULL) {
        SP_RAISE(SP_ERR_NOMEM, "no memory for a fetch");
        return NULL;
    }
    /* Only the head: the request buffer is written before it is sent. */
    memset(op, 0, offsetof(sp_ofi_op_t, req));
    op->req_mr = req_mr;
    op->req_desc = req_desc;
    op->ctx[0].op = op;
    op->ctx[1].op = op;
    return op;
}

static void sp_ofi_put_op(sp_ofi_t *o, sp_ofi_op_t *op)
{
    op->next = o->free_ops;
    o->free_ops = op;
}

static void sp_ofi_retire(sp_ofi_t *o, sp_ofi_op_t *op)
{
    sp_ofi_op_t **pp = &o->live;

    while (*pp != op)
        pp = &(*pp)->next;
    *pp = op->next;
    sp_ofi_put_op(o, op);
}

/* One context of op came back; the op goes when the provider holds none. */
static void sp_ofi_release(sp_ofi_t *o, sp_ofi_op_t *op)
{
    SP_ASSERT(op->held > 0);
    if (--op->held == 0)
        sp_ofi_retire(o, op);
}

static sp_status_t sp_ofi_post_slot(sp_ofi_t *o, sp_ofi_slot_t *slot)
{
    ssize_t ret = fi_trecv(o->ep, slot->buf, sizeof(slot->buf), o->slots_desc, FI_ADDR_UNSPEC,
                           SP_OFI_TAG_REQ, 0, &slot->ctx.fc);

    if (ret == -FI_EAGAIN)
        return SP_OK; /* posted again at the next progress */
    if (ret != 0)
        return sp_ofi_error(SP_ERR_TRANSPORT, "fi_trecv of a request slot", ret);
    slot->posted = true;
    return SP_OK;
}

/* serve.c's reply slot: the bytes straight from the region, with the reply tag. */
static sp_status_t sp_ofi_reply(sp_transport_t *t, const sp_serve_req_t *q, sp_served_t *r,
                                const void *from, size_t len, bool *sent_p)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_ofi_mr_t *m = sp_container_of(r, sp_ofi_mr_t, served);
    sp_ofi_op_t *op;
    ssize_t ret;

    if ((op = sp_ofi_get_op(o)) == NULL)
        return SP_ERR_NOMEM;
    op->ctx[0].kind = SP_OFI_REPLY_SEND;
    op->len = len;
    op->offset = q->offset;
    ret = fi_tsend(o->ep, from, len, m->desc, (fi_addr_t)q->to, q->tag, &op->ctx[0].fc);
    if (ret != 0) {
        sp_ofi_put_op(o, op);
        if (ret == -FI_EAGAIN)
            return SP_ERR_BUSY;
        /* Unanswered: its reader times out. Serving goes on for the others. */
        if (!o->warned_request)
            sp_warn("ofi transport: fi_tsend of a reply of %zu bytes failed: %s (raw %zd)", len,
                    fi_strerror((int)-ret), -ret);
        o->warned_request = true;
        return SP_OK;
    }
    op->held = 1;
    op->region = r;
    op->next = o->live;
    o->live = op;
    *sent_p = true;
    return SP_OK;
}

/* serve.c's refusal slot: an empty message whose tag carries SP_OFI_TAG_ERR. */
static sp_status_t sp_ofi_refuse(sp_transport_t *t, const sp_serve_req_t *q)
{
    sp_ofi_t *o = sp_ofi(t);
    ssize_t ret = fi_tinject(o->ep, NULL, 0, (fi_addr_t)q->to, q->tag | SP_OFI_TAG_ERR);

    if (ret == -FI_EAGAIN)
        return SP_ERR_BUSY;
    if (ret != 0)
        sp_debug("ofi transport: the refusal of a request could not be sent: %s (raw %zd)",
                 fi_strerror((int)-ret), -ret);
    return SP_OK;
}

static const sp_serve_ops_t sp_ofi_serve_ops = {
    .size = sizeof(sp_serve_ops_t),
    .reply = sp_ofi_reply,
    .refuse = sp_ofi_refuse,
    .abandon = sp_ofi_abandon,
};

/*
 * Answers the request in slot (serve.c checks it and answers through
 * sp_ofi_reply or sp_ofi_refuse). A request that is not one of ours names no
 * address or tag to trust; it is dropped, and its reader times out.
 * SP_ERR_BUSY: back-pressure, the slot keeps the request for the next try.
 */
static sp_status_t sp_ofi_answer(sp_ofi_t *o, sp_ofi_slot_t *slot)
{
    const unsigned char *q = slot->buf;
    size_t alen = sp__le_get_u16(q + 4);
    fi_addr_t fa = FI_ADDR_UNSPEC;
    sp_serve_req_t req;

    if (slot->len < SP_OFI_REQ_HDR || q[0] != 'S' || q[1] != 'Q' || q[2] != 1 || alen == 0 ||
        slot->len != SP_OFI_REQ_HDR + alen || (sp__le_get_u64(q + 40) & ~SP_OFI_TAG_MASK) != 0 ||
        sp_ofi_lookup_addr(o, q + SP_OFI_REQ_HDR, alen, &fa) != SP_OK) {
        if (!o->warned_request)
            sp_warn("ofi transport: dropped a malformed request of %zu bytes", slot->len);
        o->warned_request = true;
        return SP_OK;
    }
    req = (sp_serve_req_t){.id = sp__le_get_u64(q + 8),
                           .base = sp__le_get_u64(q + 16),
                           .offset = sp__le_get_u64(q + 24),
                           .len = sp__le_get_u64(q + 32),
                           .to = (uint64_t)fa,
                           .tag = sp__le_get_u64(q + 40),
                           .src = -1};
    return sp__serve_request(&o->base, &req);
}

/* msg mode: answers the requests waiting for back-pressure, and posts free slots again. */
static sp_status_t sp_ofi_serve_pending(sp_ofi_t *o)
{
    sp_status_t st = SP_OK;

    for (int i = 0; i < SP_OFI_SLOTS && st == SP_OK; i++) {
        sp_ofi_slot_t *slot = &o->slots[i];

        if (slot->pending) {
            sp_status_t a = sp_ofi_answer(o, slot);
            if (a == SP_ERR_BUSY)
                return SP_OK;
            slot->pending = false;
            st = a;
        }
        if (!slot->posted) {
            sp_status_t p = sp_ofi_post_slot(o, slot);
            if (st == SP_OK)
                st = p;
        }
    }
    return st;
}

/* A completion, successful (err NULL) or not, of one context. */
static sp_status_t sp_ofi_handle(sp_ofi_t *o, sp_ofi_ctx_t *ctx, size_t len, uint64_t tag,
                                 const struct fi_cq_err_entry *err)
{
    sp_transport_t *t = &o->base;
    sp_ofi_op_t *op = ctx->op;

    switch (ctx->kind) {
    case SP_OFI_SLOT_RECV: {
        sp_ofi_slot_t *slot = ctx->slot;
        sp_status_t st;

        slot->posted = false;
        if (o->closing)
            return SP_OK;
        if (err != NULL) {
            /* Cancelled at close, or a message longer than a request: drop it. */
            if (err->err != FI_ECANCELED && !o->warned_request) {
                sp_warn("ofi transport: dropped a request: %s (raw %d)", fi_strerror(err->err),
                        err->err);
                o->warned_request = true;
            }
            return sp_ofi_post_slot(o, slot);
        }
        slot->len = len;
        st = sp_ofi_answer(o, slot);
        if (st == SP_ERR_BUSY) {
            slot->pending = true;
            t->stats.eagain++;
            return SP_OK;
        }
        {
            sp_status_t p = sp_ofi_post_slot(o, slot);
            return st != SP_OK ? st : p;
        }
    }
    case SP_OFI_REPLY_SEND:
        sp__serve_reply_done(t, op->region);
        if (err != NULL)
            sp_debug("ofi transport: a reply of %zu bytes failed: %s (raw %d)", op->len,
                     fi_strerror(err->err), err->err);
        sp_ofi_release(o, op);
        return SP_OK;
    case SP_OFI_READ:
    case SP_OFI_REPLY_RECV: op->dest_out = false; break;
    case SP_OFI_REQUEST_SEND: break;
    }
    if (!op->reported) {
        if (err != NULL) {
            op->reported = true;
            if (ctx->kind == SP_OFI_REQUEST_SEND)
                (void)fi_cancel(&o->ep->fid, &op->ctx[0].fc); /* no reply will come */
            /* The reply's receive may still be posted into the destination. */
            op->lent = op->dest_out;
            (op->lent ? sp__transport_fail_held : sp__transport_fail)(
                t, op->user, SP_ERR_FETCH_FAILED, err->prov_errno != 0 ? err->prov_errno : err->err,
                op->peer,
                "%s of %zu bytes at offset %llu from peer %u failed: %s (raw %d, provider %d)",
                ctx->kind == SP_OFI_READ ? "fetch" : "request for a fetch", op->len,
                (unsigned long long)op->offset, op->peer, fi_strerror(err->err), err->err,
                err->prov_errno);
        } else if (ctx->kind == SP_OFI_REPLY_RECV && (tag & SP_OFI_TAG_ERR) != 0) {
            op->reported = true;
            sp__transport_fail(t, op->user, SP_ERR_FETCH_FAILED, 0, op->peer,
                               "peer %u refused the read of %zu bytes at offset %llu: its region "
                               "is no longer served, or the read is past its end",
                               op->peer, op->len, (unsigned long long)op->offset);
        } else if (ctx->kind == SP_OFI_REPLY_RECV && len != op->len) {
            op->reported = true;
            sp__transport_fail(t, op->user, SP_ERR_FETCH_FAILED, 0, op->peer,
                               "peer %u answered the read of %zu bytes at offset %llu with %zu",
                               op->peer, op->len, (unsigned long long)op->offset, len);
        } else if (ctx->kind != SP_OFI_REQUEST_SEND) {
            op->reported = true;
            sp__transport_complete(t, op->user, op->len, op->peer);
        }
    } else if (op->lent && !op->dest_out) {
        /* Failed earlier (timed out): the destination is the caller's again. */
        op->lent = false;
        sp__transport_release(t, op->user, op->peer);
    }
    sp_ofi_release(o, op);
    return SP_OK;
}

/* Reads the CQ: each context the provider gives back is handled. */
static sp_status_t sp_ofi_reap(sp_ofi_t *o)
{
    struct fi_cq_tagged_entry entries[16];
    sp_status_t st = SP_OK, hst;
    ssize_t n;

    for (;;) {
        while ((n = fi_cq_read(o->cq, entries, 16)) > 0) {
            for (ssize_t i = 0; i < n; i++) {
                hst = sp_ofi_handle(o, entries[i].op_context, entries[i].len, entries[i].tag, NULL);
                if (st == SP_OK)
                    st = hst;
            }
        }
        if (n != -FI_EAVAIL)
            break;
        {
            struct fi_cq_err_entry err;
            memset(&err, 0, sizeof(err));
            if (fi_cq_readerr(o->cq, &err, 0) <= 0)
                break;
            if (err.op_context != NULL) {
                hst = sp_ofi_handle(o, err.op_context, err.len, err.tag, &err);
                if (st == SP_OK)
                    st = hst;
            }
        }
    }
    if (n < 0 && n != -FI_EAGAIN && n != -FI_EAVAIL && st == SP_OK)
        st = sp_ofi_error(SP_ERR_TRANSPORT, "fi_cq_read", n);
    return st;
}

/*
 * Reads the CQ into the completion ring, serves requests, expires overdue
 * fetches: each is cancelled, and reported at once, held while the provider
 * has its destination (the release follows from sp_ofi_handle).
 */
static sp_status_t sp_ofi_progress(sp_transport_t *t)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_status_t st = SP_OK, rst;
    uint64_t now;

    if (o->msg && !o->closing)
        st = sp_ofi_serve_pending(o);
    rst = sp_ofi_reap(o);
    if (st == SP_OK)
        st = rst;
    now = sp__now_ns();
    for (sp_ofi_op_t *op = o->live; op != NULL; op = op->next) {
        if (op->fetch && !op->reported && now > op->deadline) {
            op->reported = true;
            (void)fi_cancel(&o->ep->fid, &op->ctx[0].fc);
            if (op->held > 1)
                (void)fi_cancel(&o->ep->fid, &op->ctx[1].fc);
            op->lent = op->dest_out;
            (op->lent ? sp__transport_fail_held : sp__transport_fail)(
                t, op->user, SP_ERR_TIMED_OUT, 0, op->peer,
                "fetch of %zu bytes at offset %llu from peer %u did not complete in %llu ms",
                op->len, (unsigned long long)op->offset, op->peer,
                (unsigned long long)(o->base.timeout_ns / 1000000));
        }
    }
    return st;
}

/*
 * Posts one operation, absorbing back-pressure: progress, then try again,
 * until the deadline. post is a libfabric call's result, re-evaluated.
 */
#define SP_OFI_POST(o, deadline, ret, call)                                                        \
    do {                                                                                           \
        for (;;) {                                                                                 \
            (ret) = (call);                                                                        \
            if ((ret) != -FI_EAGAIN)                                                               \
                break;                                                                             \
            (o)->base.stats.eagain++;                                                              \
            if (sp_ofi_progress(&(o)->base) != SP_OK || sp__now_ns() > (deadline))                 \
                break;                                                                             \
            sched_yield();                                                                         \
        }                                                                                          \
    } while (0)

/* msg mode: the reply's receive, then the request (the reply always finds its receive). */
static sp_status_t sp_ofi_request(sp_ofi_t *o, sp_ofi_op_t *op, uint64_t id, uint64_t base,
                                  void *dest, sp_ofi_mr_t *lm)
{
    uint64_t tag = o->next_tag;
    size_t qlen = SP_OFI_REQ_HDR + o->self_len;
    unsigned char *q = op->req;
    ssize_t ret;
    int rc;

    o->next_tag = (o->next_tag + 1) & SP_OFI_TAG_MASK;
    if (o->next_tag == 0)
        o->next_tag = 1;
    if ((o->mr_mode & FI_MR_LOCAL) && op->req_mr == NULL) {
        rc = fi_mr_reg(o->domain, op->req, sizeof(op->req), FI_SEND, 0,
                       (o->mr_mode & FI_MR_PROV_KEY) ? 0 : o->next_key++, 0, &op->req_mr, NULL);
        if (rc == 0 && (o->mr_mode & FI_MR_ENDPOINT) &&
            ((rc = fi_mr_bind(op->req_mr, &o->ep->fid, 0)) != 0 ||
             (rc = fi_mr_enable(op->req_mr)) != 0)) {
            fi_close(&op->req_mr->fid);
            op->req_mr = NULL;
        }
        if (rc != 0) {
            op->req_mr = NULL;
            return sp_ofi_error(SP_ERR_TRANSPORT, "fi_mr_reg of a request buffer", rc);
        }
        op->req_desc = fi_mr_desc(op->req_mr);
    }
    memset(q, 0, SP_OFI_REQ_HDR);
    q[0] = 'S';
    q[1] = 'Q';
    q[2] = 1;
    sp__le_put_u16(q + 4, (uint16_t)o->self_len);
    sp__le_put_u64(q + 8, id);
    sp__le_put_u64(q + 16, base);
    sp__le_put_u64(q + 24, op->offset);
    sp__le_put_u64(q + 32, (uint64_t)op->len);
    sp__le_put_u64(q + 40, tag);
    memcpy(q + SP_OFI_REQ_HDR, o->self, o->self_len);
    op->ctx[0].kind = SP_OFI_REPLY_RECV;
    op->ctx[1].kind = SP_OFI_REQUEST_SEND;
    SP_OFI_POST(o, op->deadline, ret,
                fi_trecv(o->ep, dest, op->len, lm->desc, FI_ADDR_UNSPEC, tag, SP_OFI_TAG_ERR,
                         &op->ctx[0].fc));
    if (ret != 0)
        return SP_RAISE(ret == -FI_EAGAIN ? SP_ERR_TIMED_OUT : SP_ERR_FETCH_FAILED,
                        "fi_trecv of %zu bytes from peer %u: %s (raw %zd)", op->len, op->peer,
                        fi_strerror((int)-ret), -ret);
    op->held = 1;
    op->dest_out = true;
    SP_OFI_POST(
        o, op->deadline, ret,
        fi_tsend(o->ep, q, qlen, op->req_desc, o->peers[op->peer], SP_OFI_TAG_REQ, &op->ctx[1].fc));
    if (ret != 0) {
        /*
         * The receive is posted into dest and comes back cancelled, maybe
         * not at once: the fetch is posted and fails as a completion, held
         * until the receive is back, so that dest is not freed under it.
         */
        op->reported = true;
        op->lent = true;
        (void)fi_cancel(&o->ep->fid, &op->ctx[0].fc);
        sp__transport_fail_held(
            &o->base, op->user, ret == -FI_EAGAIN ? SP_ERR_TIMED_OUT : SP_ERR_FETCH_FAILED,
            (int)-ret, op->peer, "fi_tsend of the request for %zu bytes to peer %u: %s (raw %zd)",
            op->len, op->peer, fi_strerror((int)-ret), -ret);
        return SP_OK;
    }
    op->held = 2;
    return SP_OK;
}

static sp_status_t sp_ofi_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                                uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                                void *context)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_ofi_mr_t *lm = sp_container_of(local, sp_ofi_mr_t, base);
    uint64_t key = 0, base = 0, length = 0;
    unsigned flags = 0;
    sp_ofi_op_t *op;
    sp_status_t st;
    ssize_t ret;

    if ((st = sp_ofi_unpack(rkey, rkey_len, &key, &base, &length, &flags)) != SP_OK)
        return st;
    if (peer >= o->npeers)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "fetch from unknown peer %u (%u known)", peer,
                        o->npeers);
    if (offset > length || len > length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)length);
    if (((flags & SP_OFI_KEY_MSG) != 0) != o->msg)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "key of peer %u names a region served %s, and this transport reads %s "
                        "(transport.ofi_mode differs between the executors?)",
                        peer, (flags & SP_OFI_KEY_MSG) ? "by messages" : "one-sided",
                        o->msg ? "by messages" : "one-sided");
    if (o->msg && len > o->info->ep_attr->max_msg_size)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes from peer %u is longer than provider %s's largest "
                        "message (%zu bytes)",
                        len, peer, o->base.provider, o->info->ep_attr->max_msg_size);
    if ((st = sp__transport_admit(t)) != SP_OK)
        return st;
    if (o->msg && len == 0) {
        /* Nothing to ask for. */
        sp__transport_posted(t);
        sp__transport_complete(t, context, 0, peer);
        return SP_OK;
    }
    if ((op = sp_ofi_get_op(o)) == NULL)
        return SP_ERR_NOMEM;
    op->user = context;
    op->peer = peer;
    op->len = len;
    op->offset = offset;
    op->fetch = true;
    op->deadline = sp__now_ns() + o->base.timeout_ns;
    if (o->msg) {
        if ((st = sp_ofi_request(o, op, key, base, dest, lm)) != SP_OK) {
            sp_ofi_put_op(o, op);
            return st;
        }
    } else {
        op->ctx[0].kind = SP_OFI_READ;
        SP_OFI_POST(o, op->deadline, ret,
                    fi_read(o->ep, dest, len, lm->desc, o->peers[peer],
                            (flags & SP_OFI_KEY_VIRT) ? base + offset : offset, key,
                            &op->ctx[0].fc));
        if (ret != 0) {
            sp_ofi_put_op(o, op);
            if (ret == -FI_EAGAIN)
                return SP_RAISE(SP_ERR_TIMED_OUT, "fetch from peer %u could not be posted in time",
                                peer);
            return SP_RAISE(SP_ERR_FETCH_FAILED, "fi_read of %zu bytes from peer %u: %s (raw %zd)",
                            len, peer, fi_strerror((int)-ret), -ret);
        }
        op->held = 1;
        op->dest_out = true;
    }
    op->next = o->live;
    o->live = op;
    sp__transport_posted(t);
    return SP_OK;
}

static const sp_transport_ops_t sp_ofi_ops = {
    .size = sizeof(sp_transport_ops_t),
    .close = sp_ofi_close,
    .address = sp_ofi_address,
    .add_peer = sp_ofi_add_peer,
    .mr_reg = sp_ofi_mr_reg,
    .mr_dereg = sp_ofi_mr_dereg,
    .mr_pack = sp_ofi_mr_pack,
    .fetch = sp_ofi_fetch,
    .progress = sp_ofi_progress,
};
