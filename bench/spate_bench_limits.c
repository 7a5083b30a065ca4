/*
 * Limits for spate-bench (spate_bench_limits.h), each a plain loop with no
 * spate code in it, so that spate's figure divided by it says how much of
 * the machine spate uses.
 *
 * The bare fi_read loop opens its endpoint with the hints transport/ofi.c
 * uses (RDM, FI_RMA|FI_READ|FI_REMOTE_READ, the same mr_mode bits, domain
 * threading): a server process forked before anything touches libfabric
 * registers a 64 MiB region and polls its completion queue (providers
 * without offload, tcp among them, progress only when polled, as spate's
 * progress thread does); the client reads the region over and over in
 * blocks, 16 reads in flight. Then both ways at once, as executors exchange
 * a shuffle: the client sends its own region and each reads the same bytes
 * from the other while serving the other's reads; the slower one's time
 * counts. Addresses, keys and results go over a socket pair.
 */
#include "spate_bench_limits.h"

#include "common_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SP_BENCH_FI_REGION   (64u << 20)
#define SP_BENCH_FI_INFLIGHT 16u
/* Each side's destination of its reads: SP_BENCH_FI_INFLIGHT blocks of 1 MiB. */
#define SP_BENCH_FI_REGION_DEST (16u << 20)
#define SP_BENCH_CHUNK          ((uint64_t)256 << 20)
#define SP_BENCH_DISK_BLOCK     ((size_t)4 << 20)

static double sp_bench_sec(uint64_t ns) { return (double)ns / 1e9; }

void sp_bench_quiet_barrier(MPI_Comm comm)
{
    MPI_Request req;
    int done = 0;

    if (MPI_Ibarrier(comm, &req) != MPI_SUCCESS) {
        MPI_Barrier(comm);
        return;
    }
    while (MPI_Test(&req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

sp_status_t sp_bench_alltoallv_seconds(MPI_Comm comm, uint64_t bytes_per_rank, double *seconds_p)
{
    int n, rc = MPI_SUCCESS;
    uint64_t per_call = SP_MIN(bytes_per_rank, SP_BENCH_CHUNK), done = 0;
    unsigned char *sbuf, *rbuf;
    int *counts, *displs;
    double t0, mine, slowest;

    MPI_Comm_size(comm, &n);
    per_call -= per_call % (uint64_t)n;
    if (per_call == 0)
        per_call = (uint64_t)n;
    sbuf = malloc(per_call);
    rbuf = malloc(per_call);
    counts = calloc((size_t)n, sizeof(*counts));
    displs = calloc((size_t)n, sizeof(*displs));
    if (sbuf == NULL || rbuf == NULL || counts == NULL || displs == NULL) {
        free(sbuf);
        free(rbuf);
        free(counts);
        free(displs);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for MPI_Alltoallv buffers of %llu bytes",
                        (unsigned long long)per_call);
    }
    memset(sbuf, 3, per_call);
    memset(rbuf, 4, per_call);
    for (int r = 0; r < n; r++) {
        counts[r] = (int)(per_call / (uint64_t)n);
        displs[r] = r * counts[r];
    }
    MPI_Barrier(comm);
    t0 = MPI_Wtime();
    while (done < bytes_per_rank && rc == MPI_SUCCESS) {
        rc = MPI_Alltoallv(sbuf, counts, displs, MPI_BYTE, rbuf, counts, displs, MPI_BYTE, comm);
        done += per_call;
    }
    mine = MPI_Wtime() - t0;
    if (rc == MPI_SUCCESS)
        rc = MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, comm);
    free(sbuf);
    free(rbuf);
    free(counts);
    free(displs);
    if (rc != MPI_SUCCESS)
        return SP_RAISE(SP_ERR_TRANSPORT, "MPI_Alltoallv failed (MPI error %d)", rc);
    /* Whole calls may move a little more than asked: scale to the bytes asked for. */
    *seconds_p = slowest * (double)bytes_per_rank / (double)SP_MAX(done, 1);
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Bare fi_read                                                              */
/* ------------------------------------------------------------------------ */

typedef struct sp_bench_fab {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep *ep;
    struct fid_mr *mr;
    uint64_t mr_mode;
} sp_bench_fab_t;

/* What the server sends once its region is registered. */
typedef struct sp_bench_fi_hello {
    int32_t error; /* 0: the rest is valid; else a message follows in text */
    uint32_t addr_len;
    uint64_t key, base, len; /* the region: [base, base + len) under key */
    uint64_t bytes, block;   /* a client's hello: what the server is to read back */
    unsigned char addr[256];
    char text[256];
} sp_bench_fi_hello_t;

static char sp_bench_fi_prov[64];

static void sp_bench_fab_close(sp_bench_fab_t *f)
{
    if (f->mr != NULL)
        fi_close(&f->mr->fid);
    if (f->ep != NULL)
        fi_close(&f->ep->fid);
    if (f->av != NULL)
        fi_close(&f->av->fid);
    if (f->cq != NULL)
        fi_close(&f->cq->fid);
    if (f->domain != NULL)
        fi_close(&f->domain->fid);
    if (f->fabric != NULL)
        fi_close(&f->fabric->fid);
    if (f->info != NULL)
        fi_freeinfo(f->info);
    memset(f, 0, sizeof(*f));
}

/* Opens an endpoint and registers [addr, addr + len) for access; 0 or a message in err. */
static int sp_bench_fab_open(const char *provider, void *addr, size_t len, uint64_t access,
                             sp_bench_fab_t *f, char *err, size_t cap)
{
    struct fi_info *hints = fi_allocinfo();
    struct fi_cq_attr cq_attr = {
        .format = FI_CQ_FORMAT_CONTEXT, .wait_obj = FI_WAIT_NONE, .size = 2 * SP_BENCH_FI_INFLIGHT};
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    const char *what = "fi_getinfo";
    int ret;

    memset(f, 0, sizeof(*f));
    if (hints == NULL) {
        snprintf(err, cap, "fi_allocinfo: no memory");
        return -1;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode =
        FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    if (provider == NULL || *provider == '\0')
        provider = getenv("FI_PROVIDER");
    if (provider != NULL && *provider != '\0')
        hints->fabric_attr->prov_name = strdup(provider); /* freed by fi_freeinfo */
    ret = fi_getinfo(FI_VERSION(1, 9), NULL, NULL, 0, hints, &f->info);
    fi_freeinfo(hints);
    if (ret != 0) {
        f->info = NULL;
        goto fail;
    }
    f->mr_mode = f->info->domain_attr->mr_mode;
    if ((what = "fi_fabric", ret = fi_fabric(f->info->fabric_attr, &f->fabric, NULL)) != 0 ||
        (what = "fi_domain", ret = fi_domain(f->fabric, f->info, &f->domain, NULL)) != 0 ||
        (what = "fi_cq_open", ret = fi_cq_open(f->domain, &cq_attr, &f->cq, NULL)) != 0 ||
        (what = "fi_av_open", ret = fi_av_open(f->domain, &av_attr, &f->av, NULL)) != 0 ||
        (what = "fi_endpoint", ret = fi_endpoint(f->domain, f->info, &f->ep, NULL)) != 0 ||
        (what = "fi_ep_bind", ret = fi_ep_bind(f->ep, &f->cq->fid, FI_TRANSMIT | FI_RECV)) != 0 ||
        (what = "fi_ep_bind", ret = fi_ep_bind(f->ep, &f->av->fid, 0)) != 0 ||
        (what = "fi_enable", ret = fi_enable(f->ep)) != 0)
        goto fail;
    what = "fi_mr_reg";
    if ((ret = fi_mr_reg(f->domain, addr, len, access, 0, (f->mr_mode & FI_MR_PROV_KEY) ? 0 : 1, 0,
                         &f->mr, NULL)) != 0) {
        f->mr = NULL;
        goto fail;
    }
    if ((f->mr_mode & FI_MR_ENDPOINT) &&
        ((what = "fi_mr_bind", ret = fi_mr_bind(f->mr, &f->ep->fid, 0)) != 0 ||
         (what = "fi_mr_enable", ret = fi_mr_enable(f->mr)) != 0))
        goto fail;
    snprintf(sp_bench_fi_prov, sizeof(sp_bench_fi_prov), "%s", f->info->fabric_attr->prov_name);
    return 0;
fail:
    snprintf(err, cap, "%s%s%s: %s (raw -%d)", what, provider ? " on provider " : "",
             provider ? provider : "", fi_strerror(ret < 0 ? -ret : ret), ret < 0 ? -ret : ret);
    sp_bench_fab_close(f);
    return -1;
}

static bool sp_bench_io(int fd, void *buf, size_t len, bool out)
{
    unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = out ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/*
 * Reads bytes from the peer's region [base, base + region) under key in
 * blocks of block, SP_BENCH_FI_INFLIGHT at a time, into dest (registered in
 * f), over and over; *seconds_p is the time taken. 0 or a message in err.
 */
static int sp_bench_fi_read_loop(sp_bench_fab_t *f, fi_addr_t peer, uint64_t base, uint64_t region,
                                 uint64_t key, unsigned char *dest, uint64_t bytes, size_t block,
                                 double *seconds_p, char *err, size_t cap)
{
    struct fi_context2 ctx[SP_BENCH_FI_INFLIGHT];
    uint64_t posted = 0, completed = 0, t0 = sp__now_ns();

    block = (size_t)SP_MIN((uint64_t)block, region);
    while (completed < bytes) {
        struct fi_cq_entry e[SP_BENCH_FI_INFLIGHT];
        ssize_t n;

        while (posted < bytes && posted - completed < (uint64_t)block * SP_BENCH_FI_INFLIGHT) {
            uint64_t i = posted / block;
            size_t slot = (size_t)(i % SP_BENCH_FI_INFLIGHT);
            size_t len = (size_t)SP_MIN((uint64_t)block, bytes - posted);
            uint64_t off = (i * block) % (region - block + 1);
            n = fi_read(f->ep, dest + slot * block, len, fi_mr_desc(f->mr), peer, base + off, key,
                        &ctx[slot]);
            if (n == -FI_EAGAIN)
                break;
            if (n != 0) {
                snprintf(err, cap, "fi_read: %s (raw %zd)", fi_strerror((int)-n), n);
                return -1;
            }
            posted += len;
        }
        n = fi_cq_read(f->cq, e, SP_BENCH_FI_INFLIGHT);
        if (n > 0) {
            /* Reads complete in order of posting on these providers, or nearly: count blocks. */
            for (ssize_t k = 0; k < n; k++)
                completed += SP_MIN((uint64_t)block, bytes - completed);
        } else if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry ee = {0};
            fi_cq_readerr(f->cq, &ee, 0);
            snprintf(err, cap, "fi_read completion: %s (raw -%d)", fi_strerror(ee.err), ee.err);
            return -1;
        } else if (n != -FI_EAGAIN) {
            snprintf(err, cap, "fi_cq_read: %s (raw %zd)", fi_strerror((int)-n), n);
            return -1;
        }
    }
    *seconds_p = sp_bench_sec(sp__now_ns() - t0);
    return 0;
}

/* Polls f's queue (serving the peer's reads) until fd is readable or closed. */
static void sp_bench_fi_progress_until(sp_bench_fab_t *f, int fd)
{
    for (uint64_t loops = 0;; loops++) {
        struct fi_cq_entry e[16];
        (void)fi_cq_read(f->cq, e, 16);
        if (loops % 256 == 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 0) > 0)
                return;
        }
    }
}

/*
 * The server: exposes its region and progresses the client's reads until
 * the client sends its own hello; then reads the client's region back
 * (both directions at once), sends its seconds, and progresses until the
 * client closes the socket.
 */
static _Noreturn void sp_bench_fi_serve(const char *provider, int fd)
{
    sp_bench_fi_hello_t hello = {0}, client;
    sp_bench_fab_t f;
    /* The exposed region, then the destination of the server's own reads. */
    size_t dest_len = (size_t)SP_BENCH_FI_REGION_DEST;
    unsigned char *region = malloc(SP_BENCH_FI_REGION + dest_len);
    size_t alen = sizeof(hello.addr);
    fi_addr_t peer;
    double seconds = -1;
    char err[256] = "";
    int ret;

    if (region == NULL) {
        hello.error = 1;
        snprintf(hello.text, sizeof(hello.text), "server: no memory for the region");
    } else if (memset(region, 5, SP_BENCH_FI_REGION + dest_len),
               sp_bench_fab_open(provider, region, SP_BENCH_FI_REGION + dest_len,
                                 FI_READ | FI_REMOTE_READ, &f, hello.text,
                                 sizeof(hello.text)) != 0) {
        hello.error = 1;
    } else if ((ret = fi_getname(&f.ep->fid, hello.addr, &alen)) != 0) {
        hello.error = 1;
        snprintf(hello.text, sizeof(hello.text), "fi_getname: %s", fi_strerror(-ret));
    } else {
        hello.addr_len = (uint32_t)alen;
        hello.key = fi_mr_key(f.mr);
        hello.base = (f.mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)region : 0;
        hello.len = SP_BENCH_FI_REGION;
    }
    if (!sp_bench_io(fd, &hello, sizeof(hello), true) || hello.error)
        _exit(1);
    sp_bench_fi_progress_until(&f, fd);
    if (sp_bench_io(fd, &client, sizeof(client), false)) {
        /* Both ways: read the client's region while it reads ours. */
        if (client.addr_len > sizeof(client.addr) || client.len == 0 || client.block == 0 ||
            client.block > dest_len / SP_BENCH_FI_INFLIGHT)
            snprintf(err, sizeof(err), "server: a bad hello from the client");
        else if (fi_av_insert(f.av, client.addr, 1, &peer, 0, NULL) != 1)
            snprintf(err, sizeof(err), "server: fi_av_insert of the client failed");
        else if (sp_bench_fi_read_loop(&f, peer, client.base, client.len, client.key,
                                       region + SP_BENCH_FI_REGION, client.bytes,
                                       (size_t)client.block, &seconds, err, sizeof(err)) != 0)
            seconds = -1;
        if (!sp_bench_io(fd, &seconds, sizeof(seconds), true) ||
            (seconds < 0 && !sp_bench_io(fd, err, sizeof(err), true)))
            _exit(1);
        sp_bench_fi_progress_until(&f, fd);
    }
    sp_bench_fab_close(&f);
    _exit(0);
}

/*
 * mpirun binds a rank to a core and the server, forked from the rank,
 * inherits it: client and server would share one core. The server may run
 * on any core of the machine (the kernel keeps it within the cgroup).
 */
static void sp_bench_fi_unbind(void)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);
    cpu_set_t all;

    CPU_ZERO(&all);
    for (long c = 0; c < n && c < CPU_SETSIZE; c++)
        CPU_SET((int)c, &all);
    (void)sched_setaffinity(0, sizeof(all), &all);
}

void sp_bench_fi_server_start(const char *provider, sp_bench_fi_server_t *server)
{
    int sv[2];

    memset(server, 0, sizeof(*server));
    server->fd = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        snprintf(server->error, sizeof(server->error), "socketpair: %s", strerror(errno));
        return;
    }
    fflush(NULL);
    server->pid = fork();
    if (server->pid == 0) {
        close(sv[0]);
        sp_bench_fi_unbind();
        sp_bench_fi_serve(provider, sv[1]);
    }
    close(sv[1]);
    if (server->pid < 0) {
        snprintf(server->error, sizeof(server->error), "fork: %s", strerror(errno));
        close(sv[0]);
        return;
    }
    server->fd = sv[0];
}

void sp_bench_fi_server_stop(sp_bench_fi_server_t *server)
{
    if (server == NULL || server->fd < 0)
        return;
    close(server->fd); /* the server sees its end readable (EOF) and exits */
    server->fd = -1;
    if (server->pid > 0 && waitpid(server->pid, NULL, 0) < 0)
        kill(server->pid, SIGKILL);
    server->pid = 0;
}

sp_status_t sp_bench_fi_read_seconds(sp_bench_fi_server_t *server, const char *provider,
                                     uint64_t bytes, size_t block, double *seconds_p,
                                     double *both_seconds_p, const char **prov_p)
{
    sp_bench_fi_hello_t hello, mine = {0};
    sp_bench_fab_t f;
    fi_addr_t peer;
    unsigned char *buf = NULL;
    /* The destination of the client's reads, then the region the server reads back. */
    size_t dest_len = (size_t)SP_BENCH_FI_REGION_DEST;
    size_t alen = sizeof(mine.addr);
    double theirs = -1, both = 0;
    char err[512];
    sp_status_t st = SP_OK;
    int ret;

    *both_seconds_p = 0;
    if (server->fd < 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server: %s", server->error);
        sp_bench_fi_server_stop(server);
        return st;
    }
    if (!sp_bench_io(server->fd, &hello, sizeof(hello), false) || hello.error) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server: %s",
                      hello.error ? hello.text : "it exited before it was ready");
        sp_bench_fi_server_stop(server);
        return st;
    }
    if (hello.addr_len > sizeof(hello.addr) || hello.len == 0) {
        sp_bench_fi_server_stop(server);
        return SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server: a bad hello");
    }
    block = SP_MIN(block, dest_len / SP_BENCH_FI_INFLIGHT);
    if ((buf = malloc(2 * dest_len)) == NULL) {
        sp_bench_fi_server_stop(server);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for fi_read buffers");
    }
    memset(buf, 0, 2 * dest_len);
    if (sp_bench_fab_open(provider, buf, 2 * dest_len, FI_READ | FI_REMOTE_READ, &f, err,
                          sizeof(err)) != 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read client: %s", err);
        goto out_buf;
    }
    if (fi_av_insert(f.av, hello.addr, 1, &peer, 0, NULL) != 1) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read client: fi_av_insert failed");
        goto out_fab;
    }
    /* One way: the server only serves. */
    if (sp_bench_fi_read_loop(&f, peer, hello.base, hello.len, hello.key, buf, bytes, block,
                              seconds_p, err, sizeof(err)) != 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read client: %s", err);
        goto out_fab;
    }
    if (prov_p != NULL)
        *prov_p = sp_bench_fi_prov;
    /* Both ways at once: each reads the same bytes from the other and serves it. */
    if ((ret = fi_getname(&f.ep->fid, mine.addr, &alen)) != 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read client: fi_getname: %s", fi_strerror(-ret));
        goto out_fab;
    }
    mine.addr_len = (uint32_t)alen;
    mine.key = fi_mr_key(f.mr);
    mine.base = ((f.mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)buf : 0) + dest_len;
    mine.len = dest_len;
    mine.bytes = bytes;
    mine.block = block;
    if (!sp_bench_io(server->fd, &mine, sizeof(mine), true)) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server: it exited before reading back");
        goto out_fab;
    }
    if (sp_bench_fi_read_loop(&f, peer, hello.base, hello.len, hello.key, buf, bytes, block, &both,
                              err, sizeof(err)) != 0) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read client, both ways: %s", err);
        goto out_fab;
    }
    /* Serve the server's reads until it reports. */
    sp_bench_fi_progress_until(&f, server->fd);
    if (!sp_bench_io(server->fd, &theirs, sizeof(theirs), false)) {
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server: it exited while reading back");
        goto out_fab;
    }
    if (theirs < 0) {
        err[0] = '\0';
        (void)sp_bench_io(server->fd, err, 256, false);
        err[255] = '\0';
        st = SP_RAISE(SP_ERR_TRANSPORT, "bare fi_read server, both ways: %s", err);
        goto out_fab;
    }
    *both_seconds_p = SP_MAX(both, theirs);
out_fab:
    sp_bench_fab_close(&f);
out_buf:
    sp_bench_fi_server_stop(server);
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Disk                                                                      */
/* ------------------------------------------------------------------------ */

sp_status_t sp_bench_disk_seconds(const char *dir, uint64_t bytes, double *write_s_p,
                                  double *read_s_p, const char **method_p)
{
    char path[4096];
    void *buf = NULL;
    bool direct = true;
    uint64_t t0, done;
    double ws, rs;
    int fd;
    sp_status_t st = SP_OK;

    bytes = SP_MAX(bytes - bytes % SP_BENCH_DISK_BLOCK, (uint64_t)SP_BENCH_DISK_BLOCK);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return SP_RAISE(SP_ERR_IO, "mkdir %s: %s", dir, strerror(errno));
    if ((size_t)snprintf(path, sizeof(path), "%s/spate-bench-disk.%ld", dir, (long)getpid()) >=
        sizeof(path))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "directory name %s is too long", dir);
    if (posix_memalign(&buf, 4096, SP_BENCH_DISK_BLOCK) != 0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a disk block");
    memset(buf, 6, SP_BENCH_DISK_BLOCK);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0600);
    if (fd < 0 && errno == EINVAL) {
        direct = false; /* tmpfs and some others refuse O_DIRECT */
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    }
    if (fd < 0) {
        st = SP_RAISE(SP_ERR_IO, "create %s: %s", path, strerror(errno));
        goto out;
    }
    t0 = sp__now_ns();
    for (done = 0; done < bytes; done += SP_BENCH_DISK_BLOCK)
        if (write(fd, buf, SP_BENCH_DISK_BLOCK) != (ssize_t)SP_BENCH_DISK_BLOCK) {
            st = SP_RAISE(SP_ERR_IO, "write %s: %s", path, strerror(errno));
            close(fd);
            goto out_unlink;
        }
    if (fsync(fd) != 0) {
        st = SP_RAISE(SP_ERR_IO, "fsync %s: %s", path, strerror(errno));
        close(fd);
        goto out_unlink;
    }
    ws = sp_bench_sec(sp__now_ns() - t0);
    if (!direct)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if ((fd = open(path, O_RDONLY | (direct ? O_DIRECT : 0))) < 0) {
        st = SP_RAISE(SP_ERR_IO, "open %s: %s", path, strerror(errno));
        goto out_unlink;
    }
    t0 = sp__now_ns();
    for (done = 0; done < bytes; done += SP_BENCH_DISK_BLOCK)
        if (read(fd, buf, SP_BENCH_DISK_BLOCK) != (ssize_t)SP_BENCH_DISK_BLOCK) {
            st = SP_RAISE(SP_ERR_IO, "read %s: %s", path, strerror(errno));
            break;
        }
    rs = sp_bench_sec(sp__now_ns() - t0);
    close(fd);
    if (st == SP_OK) {
        *write_s_p = ws;
        *read_s_p = rs;
        *method_p = direct ? "O_DIRECT" : "fsync+fadvise";
    }
out_unlink:
    unlink(path);
out:
    free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* The copy floor                                                            */
/* ------------------------------------------------------------------------ */

/* Child i of the copy floor: its share of the files (or of bytes) into dir/copy-i. */
static _Noreturn void sp_bench_copy_child(const char *const *files, size_t nfiles, uint64_t bytes,
                                          const char *dir, unsigned i, unsigned nprocs)
{
    char path[4096];
    unsigned char *buf = malloc(SP_BENCH_DISK_BLOCK);
    int out;

    snprintf(path, sizeof(path), "%s/copy-%u", dir, i);
    if (buf == NULL || (out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0)
        _exit(1);
    memset(buf, 7, SP_BENCH_DISK_BLOCK);
    if (files == NULL) {
        uint64_t mine = bytes / nprocs + (i < bytes % nprocs);
        for (uint64_t done = 0; done < mine; done += SP_BENCH_DISK_BLOCK) {
            size_t n = (size_t)SP_MIN((uint64_t)SP_BENCH_DISK_BLOCK, mine - done);
            if (!sp_bench_io(out, buf, n, true))
                _exit(1);
        }
    }
    for (size_t f = i; files != NULL && f < nfiles; f += nprocs) {
        int in = open(files[f], O_RDONLY);
        ssize_t n;

        if (in < 0)
            _exit(1);
        while ((n = read(in, buf, SP_BENCH_DISK_BLOCK)) > 0)
            if (!sp_bench_io(out, buf, (size_t)n, true))
                _exit(1);
        if (n < 0)
            _exit(1);
        close(in);
    }
    _exit(close(out) == 0 ? 0 : 1);
}

/* One timed pass of the copy floor. */
static sp_status_t sp_bench_copy_pass(const char *const *files, size_t nfiles, uint64_t bytes,
                                      const char *dir, unsigned nprocs, double *seconds_p)
{
    pid_t pids[SP_BENCH_COPY_MAX_PROCS];
    uint64_t t0 = sp__now_ns();
    unsigned started = 0, failed = 0;

    fflush(NULL);
    for (; started < nprocs; started++) {
        if ((pids[started] = fork()) < 0)
            break;
        if (pids[started] == 0)
            sp_bench_copy_child(files, nfiles, bytes, dir, started, nprocs);
    }
    for (unsigned i = 0; i < started; i++) {
        int status = 0;
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            failed++;
    }
    *seconds_p = sp_bench_sec(sp__now_ns() - t0);
    for (unsigned i = 0; i < nprocs; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/copy-%u", dir, i);
        unlink(path);
    }
    if (started < nprocs)
        return SP_RAISE(SP_ERR_NO_RESOURCE, "copy floor: fork: %s", strerror(errno));
    if (failed > 0)
        return SP_RAISE(SP_ERR_IO,
                        "copy floor: %u of %u copy processes failed (read %s or write "
                        "in %s)",
                        failed, nprocs, files != NULL ? "the input" : "nothing", dir);
    return SP_OK;
}

sp_status_t sp_bench_copy_seconds(const char *const *files, size_t nfiles, uint64_t bytes,
                                  const char *dir, unsigned nprocs, double *seconds_p)
{
    char sub[4096];
    double first = 0;
    sp_status_t st;

    nprocs = SP_MAX(1u, SP_MIN(nprocs, (unsigned)SP_BENCH_COPY_MAX_PROCS));
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return SP_RAISE(SP_ERR_IO, "mkdir %s: %s", dir, strerror(errno));
    if ((size_t)snprintf(sub, sizeof(sub), "%s/spate-bench-copy.%ld", dir, (long)getpid()) >=
        sizeof(sub))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "directory name %s is too long", dir);
    if (mkdir(sub, 0700) != 0 && errno != EEXIST)
        return SP_RAISE(SP_ERR_IO, "mkdir %s: %s", sub, strerror(errno));
    /* The first pass brings the input into the page cache, as the runs find it. */
    st = sp_bench_copy_pass(files, nfiles, bytes, sub, nprocs, &first);
    if (st == SP_OK)
        st = sp_bench_copy_pass(files, nfiles, bytes, sub, nprocs, seconds_p);
    rmdir(sub);
    return st;
}
