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
 * virtual addressing), 4 reserved, u64 key, u64 base address, u64 length.
 * Every fetch is checked against the key's length before it is posted.
 *
 * Completions are read from one CQ into the transport's completion ring
 * (transport.c). Progress is driven by the caller's poll and, with
 * transport.progress_thread (the default), by the shared progress thread, so
 * that an executor serves reads on providers whose RMA needs the target's CPU
 * (tcp) even while none of its threads polls. The base lock serializes every
 * libfabric call (FI_THREAD_DOMAIN). Each posted read carries an op with a
 * deadline; one older than transport.timeout completes with SP_ERR_TIMED_OUT
 * and is cancelled; its op is kept until the provider gives its context back.
 */
#include "transport_int.h"

#include <dirent.h>
#include <errno.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SP_OFI_VERSION FI_VERSION(1, 9)
/* The progress thread's pause: short while completions come in, up to 1 ms when idle. */
#define SP_OFI_PAUSE_MIN_NS 10000L
#define SP_OFI_PAUSE_MAX_NS 1000000L
#define SP_OFI_KEY_BYTES    32
#define SP_OFI_MR_MODES                                                                            \
    (FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)

typedef struct sp_ofi_op {
    struct fi_context2 ctx; /* first: the provider hands back its address */
    struct sp_ofi_op *next;
    void *user;
    uint32_t peer;
    size_t len;
    uint64_t deadline;
    bool timed_out; /* reported already; waiting for the provider to let go */
} sp_ofi_op_t;

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
    fi_addr_t *peers;
    uint32_t npeers, peers_cap;
    sp_ofi_op_t *live; /* posted, not completed */
    sp_ofi_op_t *free_ops;
} sp_ofi_t;

typedef struct sp_ofi_mr {
    sp_mr_t base;
    struct fid_mr *mr;
    void *desc;
    uint64_t key;
} sp_ofi_mr_t;

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

static void sp_ofi_shm_clear_stale(void)
{
    char prefix[32], path[64 + 256];
    struct dirent *e;
    DIR *d;

    if (atomic_fetch_add(&sp_ofi_shm_opened, 1) != 0 || (d = opendir("/dev/shm")) == NULL)
        return;
    snprintf(prefix, sizeof(prefix), "%ld:", (long)getpid());
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        if ((size_t)snprintf(path, sizeof(path), "/dev/shm/%s", e->d_name) < sizeof(path) &&
            unlink(path) == 0)
            sp_info("removed %s, the shared memory of a dead process that had this pid", path);
    }
    closedir(d);
}

static sp_status_t sp_ofi_error(sp_status_t st, const char *what, ssize_t ret)
{
    int err = (int)(ret < 0 ? -ret : ret);

    return SP_RAISE(st, "libfabric %s failed: %s (raw -%d)", what, fi_strerror(err), err);
}

static void sp_ofi_close(sp_transport_t *t)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_ofi_op_t *op;

    sp__transport_stop_thread(&o->base);
    if (o->ep != NULL)
        fi_close(&o->ep->fid);
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
    while ((op = o->live) != NULL) {
        o->live = op->next;
        sp__free(op);
    }
    while ((op = o->free_ops) != NULL) {
        o->free_ops = op->next;
        sp__free(op);
    }
    sp__free(o->peers);
    sp__transport_fini_base(&o->base);
    sp__free(o);
}

static const sp_transport_ops_t sp_ofi_ops;

sp_status_t sp__ofi_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    struct fi_info *hints;
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_CONTEXT, .wait_obj = FI_WAIT_NONE};
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    const char *provider = NULL;
    sp_ofi_t *o;
    sp_status_t st;
    int ret;

    o = sp__calloc(1, sizeof(*o));
    if (o == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an ofi transport");
    if ((st = sp__transport_init_base(&o->base, conf, &sp_ofi_ops, "ofi")) != SP_OK ||
        (st = sp_conf_get_string(conf, "transport.provider", &provider)) != SP_OK)
        goto err;
    hints = fi_allocinfo();
    if (hints == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for libfabric hints");
        goto err;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = SP_OFI_MR_MODES;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    if (provider == NULL || *provider == '\0')
        provider = getenv("FI_PROVIDER");
    if (provider != NULL && *provider != '\0') {
        hints->fabric_attr->prov_name = strdup(provider); /* freed by fi_freeinfo */
        if (hints->fabric_attr->prov_name == NULL) {
            fi_freeinfo(hints);
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for libfabric hints");
            goto err;
        }
    }
    ret = fi_getinfo(SP_OFI_VERSION, NULL, NULL, 0, hints, &o->info);
    fi_freeinfo(hints);
    if (ret != 0) {
        st = SP_RAISE(SP_ERR_UNSUPPORTED,
                      "no libfabric provider%s%s offers RDM endpoints with one-sided reads: %s "
                      "(raw -%d)",
                      provider != NULL && *provider != '\0' ? " named " : "",
                      provider != NULL ? provider : "", fi_strerror(-ret), -ret);
        o->info = NULL;
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
    cq_attr.size = (size_t)o->base.max_outstanding * 2;
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
    {
        bool thread = true;
        if ((st = sp_conf_get_bool(conf, "transport.progress_thread", &thread)) != SP_OK ||
            (thread && (st = sp__transport_start_thread(&o->base, SP_OFI_PAUSE_MIN_NS,
                                                        SP_OFI_PAUSE_MAX_NS)) != SP_OK))
            goto err;
    }
    sp_debug("ofi transport on provider %s, mr_mode 0x%llx", o->base.provider,
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

static sp_status_t sp_ofi_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                   uint32_t *peer_p)
{
    sp_ofi_t *o = sp_ofi(t);
    fi_addr_t fa = FI_ADDR_UNSPEC;
    int ret;

    /* The provider validates the address itself (fi_av_insert); lengths
     * differ between providers (shm names are strings). */
    SP_UNUSED(len);
    if (o->npeers == o->peers_cap) {
        uint32_t cap = o->peers_cap != 0 ? 2 * o->peers_cap : 16;
        fi_addr_t *p = sp__realloc(o->peers, cap * sizeof(*p));
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u peers", cap);
        o->peers = p;
        o->peers_cap = cap;
    }
    ret = fi_av_insert(o->av, addr, 1, &fa, 0, NULL);
    if (ret != 1)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "peer address rejected by provider %s (raw %d)",
                        o->base.provider, ret);
    o->peers[o->npeers] = fa;
    *peer_p = o->npeers++;
    return SP_OK;
}

static sp_status_t sp_ofi_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                 sp_mr_t **mr_p)
{
    sp_ofi_t *o = sp_ofi(t);
    uint64_t access = remote_read ? FI_REMOTE_READ : FI_READ;
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
    if (m->key == FI_KEY_NOTAVAIL) {
        st =
            SP_RAISE(SP_ERR_UNSUPPORTED, "provider %s gives no key for a region", o->base.provider);
        goto err_close;
    }
    m->base.transport = t;
    m->base.addr = addr;
    m->base.len = len;
    m->base.remote_read = remote_read;
    t->stats.regions_registered++;
    *mr_p = &m->base;
    return SP_OK;

err_close:
    fi_close(&m->mr->fid);
err_free:
    sp__free(m);
    return st;
}

static void sp_ofi_mr_dereg(sp_mr_t *mr)
{
    sp_ofi_mr_t *m = sp_container_of(mr, sp_ofi_mr_t, base);

    fi_close(&m->mr->fid);
    sp__free(m);
}

static sp_status_t sp_ofi_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_ofi_mr_t *m = sp_container_of(mr, sp_ofi_mr_t, base);
    sp_ofi_t *o = sp_ofi(mr->transport);
    unsigned char *b = buf;
    uint64_t fields[3] = {m->key, (uint64_t)(uintptr_t)mr->addr, (uint64_t)mr->len};

    if (cap < SP_OFI_KEY_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs %d bytes, %zu given",
                        SP_OFI_KEY_BYTES, cap);
    memset(b, 0, 8);
    b[0] = 'S';
    b[1] = 'K';
    b[2] = 1;
    b[3] = (o->mr_mode & FI_MR_VIRT_ADDR) ? 1 : 0;
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 8; i++)
            b[8 + 8 * f + i] = (unsigned char)(fields[f] >> (8 * i));
    *len_p = SP_OFI_KEY_BYTES;
    return SP_OK;
}

/* Unpacks a remote key; SP_ERR_BAD_FORMAT when it is not one of ours. */
static sp_status_t sp_ofi_unpack(const void *rkey, size_t len, uint64_t *key_p, uint64_t *base_p,
                                 uint64_t *length_p, bool *virt_p)
{
    const unsigned char *b = rkey;
    uint64_t fields[3] = {0, 0, 0};

    if (len != SP_OFI_KEY_BYTES || b[0] != 'S' || b[1] != 'K' || b[2] != 1 || b[3] > 1)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", len);
    for (int f = 0; f < 3; f++)
        for (int i = 7; i >= 0; i--)
            fields[f] = (fields[f] << 8) | b[8 + 8 * f + i];
    *key_p = fields[0];
    *base_p = fields[1];
    *length_p = fields[2];
    *virt_p = b[3] == 1;
    return SP_OK;
}

static void sp_ofi_retire(sp_ofi_t *o, sp_ofi_op_t *op)
{
    sp_ofi_op_t **pp = &o->live;

    while (*pp != op)
        pp = &(*pp)->next;
    *pp = op->next;
    op->next = o->free_ops;
    o->free_ops = op;
}

/* Reads the CQ into the completion ring; expires overdue fetches. */
static sp_status_t sp_ofi_progress(sp_transport_t *t)
{
    sp_ofi_t *o = sp_ofi(t);
    struct fi_cq_entry entries[16];
    uint64_t now = sp__now_ns();
    ssize_t n;

    while ((n = fi_cq_read(o->cq, entries, 16)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            sp_ofi_op_t *op = entries[i].op_context;
            if (!op->timed_out)
                sp__transport_complete(t, op->user, op->len, op->peer);
            sp_ofi_retire(o, op);
        }
    }
    if (n == -FI_EAVAIL) {
        struct fi_cq_err_entry err;
        memset(&err, 0, sizeof(err));
        if (fi_cq_readerr(o->cq, &err, 0) > 0 && err.op_context != NULL) {
            sp_ofi_op_t *op = err.op_context;
            if (!op->timed_out)
                sp__transport_fail(t, op->user, SP_ERR_FETCH_FAILED,
                                   err.prov_errno != 0 ? err.prov_errno : err.err, op->peer,
                                   "fetch of %zu bytes from peer %u failed: %s (raw %d, "
                                   "provider %d)",
                                   op->len, op->peer, fi_strerror(err.err), err.err,
                                   err.prov_errno);
            sp_ofi_retire(o, op);
        }
    } else if (n < 0 && n != -FI_EAGAIN) {
        return sp_ofi_error(SP_ERR_TRANSPORT, "fi_cq_read", n);
    }
    for (sp_ofi_op_t *op = o->live; op != NULL; op = op->next) {
        if (!op->timed_out && now > op->deadline) {
            op->timed_out = true;
            (void)fi_cancel(&o->ep->fid, &op->ctx);
            sp__transport_fail(t, op->user, SP_ERR_TIMED_OUT, 0, op->peer,
                               "fetch of %zu bytes from peer %u did not complete in %llu ms",
                               op->len, op->peer,
                               (unsigned long long)(o->base.timeout_ns / 1000000));
        }
    }
    return SP_OK;
}

static sp_status_t sp_ofi_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                                uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                                void *context)
{
    sp_ofi_t *o = sp_ofi(t);
    sp_ofi_mr_t *lm = sp_container_of(local, sp_ofi_mr_t, base);
    uint64_t key = 0, base = 0, length = 0, deadline;
    sp_ofi_op_t *op;
    bool virt = false;
    sp_status_t st;
    ssize_t ret;

    if ((st = sp_ofi_unpack(rkey, rkey_len, &key, &base, &length, &virt)) != SP_OK)
        return st;
    if (peer >= o->npeers)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "fetch from unknown peer %u (%u known)", peer,
                        o->npeers);
    if (offset > length || len > length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)length);
    if ((st = sp__transport_admit(t)) != SP_OK)
        return st;
    op = o->free_ops;
    if (op != NULL) {
        o->free_ops = op->next;
    } else {
        op = sp__malloc(sizeof(*op));
        if (op == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a fetch");
    }
    memset(op, 0, sizeof(*op));
    op->user = context;
    op->peer = peer;
    op->len = len;
    deadline = sp__now_ns() + o->base.timeout_ns;
    op->deadline = deadline;
    for (;;) {
        ret = fi_read(o->ep, dest, len, lm->desc, o->peers[peer], virt ? base + offset : offset,
                      key, &op->ctx);
        if (ret != -FI_EAGAIN)
            break;
        /* Back-pressure: make progress, then try again, within the timeout. */
        t->stats.eagain++;
        if ((st = sp_ofi_progress(t)) != SP_OK || sp__now_ns() > deadline) {
            op->next = o->free_ops;
            o->free_ops = op;
            return st != SP_OK ? st
                               : SP_RAISE(SP_ERR_TIMED_OUT,
                                          "fetch from peer %u could not be posted in time", peer);
        }
        sched_yield();
    }
    if (ret != 0) {
        op->next = o->free_ops;
        o->free_ops = op;
        return SP_RAISE(SP_ERR_FETCH_FAILED, "fi_read of %zu bytes from peer %u: %s (raw %zd)", len,
                        peer, fi_strerror((int)-ret), -ret);
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
