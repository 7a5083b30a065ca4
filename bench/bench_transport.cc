/*
 * Fetch bandwidth of the transport layer (include/spate/transport.h) between
 * two processes on this machine, next to two baselines measured in the same
 * run, so that the ratios, not the absolute numbers, are what to read:
 *
 *   sp_transport_fetch + sp_transport_poll    vs  a bare libfabric fi_read loop
 *                                             vs  memcpy of the same blocks
 *
 * Providers: "tcp;ofi_rxm" (over loopback only: FI_TCP_IFACE=lo and
 * FI_SOCKETS_IFACE=lo are set before anything else) and "shm". Blocks of
 * 64 KiB, 1 MiB and 8 MiB, with 64 (transport.max_outstanding's default) or
 * 8 fetches in flight. spate's configuration is the default plus the
 * SPATE_CONF_* environment (SPATE_CONF_TRANSPORT_PROGRESS_THREAD=false turns
 * the progress thread off), then the provider and the number in flight.
 *
 * Setup, not timed: main forks one server process per provider before it
 * allocates anything large (so that nothing of the client's is copy-on-write
 * shared). A server fills a 256 MiB region with a byte pattern, registers it
 * for remote reads twice, once through a spate transport and once through
 * its own libfabric endpoint (fabric, domain, CQ, AV, endpoint opened with
 * the hints transport/ofi.c uses), and sends both addresses and keys over a
 * pipe. It then waits for commands on the pipe: 's' progresses the spate
 * transport in a loop (sp_transport_poll with no wait; its progress thread,
 * when on, runs as well), 'b' the bare endpoint (fi_cq_read), 'i' sleeps; it
 * exits when the pipe closes. tcp needs the target's progress to answer
 * reads; a row makes its server progress only the endpoint it reads from and
 * puts it back to sleep after.
 *
 * The client keeps one spate transport and one bare endpoint per provider
 * and number in flight (the bare CQ is sized 2 x that number and read 16
 * entries at a time, as ofi.c does), each with the same 256 MiB destination
 * registered, and checks one fetch's bytes against the pattern before its
 * first row. An iteration is one completed fetch: the loop keeps the given
 * number posted, offsets cycling through the region (the same offset in the
 * destination; with 64 x 8 MiB in flight, twice the destination, in-flight
 * reads may share destination bytes, which does not change what is moved).
 * bytes/s and items/s are fetched bytes and blocks over wall-clock time. The
 * fetches still in flight when the loop ends are drained untimed.
 *
 * Baseline rows: BM_memcpy copies blocks of the same size between two
 * pre-faulted 256 MiB buffers with the same cycling offsets (one core);
 * BM_bare_fi_read is the spate row's loop with fi_read and fi_cq_read in
 * place of sp_transport_fetch and sp_transport_poll and nothing of spate in
 * it (it spins on the CQ; spate's poll yields the CPU between empty polls).
 * MPI_Alltoallv is not a baseline in this program: it would need mpiexec to
 * launch it, and the mpi backend was being written alongside it.
 *
 * Loopback bandwidth on this machine drifts by up to 2.5x over seconds, tcp
 * most, so each spate row and its bare row run alternately, kRounds times
 * each. Counters: client_cpu and server_cpu (CPU time of all the threads of
 * each process over wall time), softirqd_cpu (the ksoftirqd threads) and
 * others_cpu (what every other process and kernel thread used meanwhile, in
 * cores: on 2 cores, taken from the two).
 * A summary printed after the run gives, per provider, block size and number
 * in flight, the median over rounds of the bytes/s of each row's calls that
 * ran at least half its minimum time (the short calls Google Benchmark makes
 * to size a row are left out: they measure the pipeline filling), spate /
 * bare as the median of the rounds' own ratios (a round's two calls ran back
 * to back), spate / memcpy, the median others_cpu, and whether spate reaches
 * 0.9 x bare for 1 MiB blocks.
 */
#include <spate/conf.h>
#include <spate/transport.h>

#include <benchmark/benchmark.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

extern char **environ;

namespace
{

constexpr size_t kRegion = size_t{256} << 20; /* served region and client destination */
constexpr const char *kProviders[] = {"tcp;ofi_rxm", "shm"};
constexpr int kNumProviders = 2;
constexpr double kMinTime = 0.3; /* seconds per row */
constexpr int64_t kRounds = 5;   /* alternating calls of each spate and bare row */
constexpr size_t kCqBatch = 16;  /* completions read per call, as ofi.c reads them */
constexpr size_t kCheckBytes = 64 << 10;
constexpr double kDisturbed = 0.10; /* cores others may use before a row counts as disturbed */

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

unsigned char pattern(size_t i) { return static_cast<unsigned char>((i * 7u + (i >> 12)) & 0xff); }

std::string spate_error(const char *what, sp_status_t st)
{
    return std::string(what) + ": " + sp_status_str(st) + ": " + sp_last_error();
}

std::string fi_error(const char *what, ssize_t ret)
{
    int err = static_cast<int>(ret < 0 ? -ret : ret);
    return std::string(what) + ": " + fi_strerror(err) + " (raw -" + std::to_string(err) + ")";
}

/* ---- the bare libfabric endpoint, opened as transport/ofi.c opens its own ---- */

struct Fab {
    fi_info *info = nullptr;
    fid_fabric *fabric = nullptr;
    fid_domain *domain = nullptr;
    fid_cq *cq = nullptr;
    fid_av *av = nullptr;
    fid_ep *ep = nullptr;
    uint64_t mr_mode = 0;
};

void fab_close(Fab *f)
{
    if (f->ep != nullptr)
        fi_close(&f->ep->fid);
    if (f->av != nullptr)
        fi_close(&f->av->fid);
    if (f->cq != nullptr)
        fi_close(&f->cq->fid);
    if (f->domain != nullptr)
        fi_close(&f->domain->fid);
    if (f->fabric != nullptr)
        fi_close(&f->fabric->fid);
    if (f->info != nullptr)
        fi_freeinfo(f->info);
    *f = Fab();
}

/* Opens an RDM endpoint with one-sided reads on provider; "" or an error. */
std::string fab_open(const char *provider, size_t cq_size, Fab *f)
{
    fi_info *hints = fi_allocinfo();
    fi_cq_attr cq_attr = {};
    fi_av_attr av_attr = {};
    int ret;

    if (hints == nullptr)
        return "fi_allocinfo: no memory";
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode =
        FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->fabric_attr->prov_name = strdup(provider); /* freed by fi_freeinfo */
    ret = fi_getinfo(FI_VERSION(1, 9), nullptr, nullptr, 0, hints, &f->info);
    fi_freeinfo(hints);
    if (ret != 0) {
        f->info = nullptr;
        return fi_error("fi_getinfo", ret);
    }
    f->mr_mode = f->info->domain_attr->mr_mode;
    cq_attr.format = FI_CQ_FORMAT_CONTEXT;
    cq_attr.wait_obj = FI_WAIT_NONE;
    cq_attr.size = cq_size;
    av_attr.type = FI_AV_TABLE;
    std::string error;
    if ((ret = fi_fabric(f->info->fabric_attr, &f->fabric, nullptr)) != 0)
        error = fi_error("fi_fabric", ret);
    else if ((ret = fi_domain(f->fabric, f->info, &f->domain, nullptr)) != 0)
        error = fi_error("fi_domain", ret);
    else if ((ret = fi_cq_open(f->domain, &cq_attr, &f->cq, nullptr)) != 0)
        error = fi_error("fi_cq_open", ret);
    else if ((ret = fi_av_open(f->domain, &av_attr, &f->av, nullptr)) != 0)
        error = fi_error("fi_av_open", ret);
    else if ((ret = fi_endpoint(f->domain, f->info, &f->ep, nullptr)) != 0)
        error = fi_error("fi_endpoint", ret);
    else if ((ret = fi_ep_bind(f->ep, &f->cq->fid, FI_TRANSMIT | FI_RECV)) != 0 ||
             (ret = fi_ep_bind(f->ep, &f->av->fid, 0)) != 0)
        error = fi_error("fi_ep_bind", ret);
    else if ((ret = fi_enable(f->ep)) != 0)
        error = fi_error("fi_enable", ret);
    if (!error.empty())
        fab_close(f);
    return error;
}

struct FabMr {
    fid_mr *mr = nullptr;
    void *desc = nullptr;
    uint64_t key = 0;
};

std::string fab_mr_reg(Fab *f, void *addr, size_t len, uint64_t access, FabMr *m)
{
    uint64_t requested = (f->mr_mode & FI_MR_PROV_KEY) ? 0 : 1;
    int ret = fi_mr_reg(f->domain, addr, len, access, 0, requested, 0, &m->mr, nullptr);

    if (ret != 0)
        return fi_error("fi_mr_reg", ret);
    if ((f->mr_mode & FI_MR_ENDPOINT) &&
        ((ret = fi_mr_bind(m->mr, &f->ep->fid, 0)) != 0 || (ret = fi_mr_enable(m->mr)) != 0)) {
        fi_close(&m->mr->fid);
        return fi_error("fi_mr_bind/fi_mr_enable", ret);
    }
    m->desc = fi_mr_desc(m->mr);
    m->key = fi_mr_key(m->mr);
    return "";
}

/* ---- pipes ------------------------------------------------------------------ */

bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = static_cast<const char *>(buf);
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return false;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return true;
}

bool read_all(int fd, void *buf, size_t len)
{
    char *p = static_cast<char *>(buf);
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return false;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return true;
}

bool write_blob(int fd, const void *buf, uint64_t len)
{
    return write_all(fd, &len, sizeof(len)) && write_all(fd, buf, len);
}

bool read_blob(int fd, std::vector<unsigned char> *out)
{
    uint64_t len = 0;
    if (!read_all(fd, &len, sizeof(len)) || len > (1u << 20))
        return false;
    out->resize(len);
    return read_all(fd, out->data(), len);
}

/* ---- the server process ------------------------------------------------------ */

[[noreturn]] void serve_fail(int up, const std::string &error)
{
    int32_t bad = 1;
    write_all(up, &bad, sizeof(bad));
    write_blob(up, error.data(), error.size());
    _exit(1);
}

/*
 * Serves kRegion bytes through a spate transport and a bare endpoint on
 * provider; commands come on down, answers go on up (see the design note).
 */
[[noreturn]] void serve(const char *provider, int up, int down)
{
    sp_conf_t *conf = nullptr;
    sp_transport_t *t = nullptr;
    sp_mr_t *mr = nullptr;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], key[SP_TRANSPORT_RKEY_MAX];
    size_t alen = 0, klen = 0;
    Fab fab;
    FabMr fmr;
    sp_status_t st;
    std::string error;
    auto *region = static_cast<unsigned char *>(std::malloc(kRegion));

    if (region == nullptr)
        serve_fail(up, "server: no memory for the region");
    for (size_t i = 0; i < kRegion; i++)
        region[i] = pattern(i);
    if ((st = sp_conf_create(&conf)) != SP_OK || (st = sp_conf_load_env(conf, environ)) != SP_OK ||
        (st = sp_conf_set(conf, "transport.provider", provider)) != SP_OK)
        serve_fail(up, spate_error("server: conf", st));
    if ((st = sp_transport_open(conf, &t)) != SP_OK)
        serve_fail(up, spate_error("server: sp_transport_open", st));
    if ((st = sp_transport_mr_reg(t, region, kRegion, true, &mr)) != SP_OK ||
        (st = sp_transport_mr_pack(mr, key, sizeof(key), &klen)) != SP_OK ||
        (st = sp_transport_address(t, addr, sizeof(addr), &alen)) != SP_OK)
        serve_fail(up, spate_error("server: spate region", st));
    if (!(error = fab_open(provider, size_t{2} * 64, &fab)).empty() ||
        !(error = fab_mr_reg(&fab, region, kRegion, FI_REMOTE_READ, &fmr)).empty())
        serve_fail(up, "server: bare " + error);

    unsigned char fab_addr[256];
    size_t fab_alen = sizeof(fab_addr);
    int ret = fi_getname(&fab.ep->fid, fab_addr, &fab_alen);
    if (ret != 0)
        serve_fail(up, fi_error("server: fi_getname", ret));
    uint64_t bare[2] = {fmr.key,
                        (fab.mr_mode & FI_MR_VIRT_ADDR) ? reinterpret_cast<uintptr_t>(region) : 0};
    int32_t ok = 0;
    if (!write_all(up, &ok, sizeof(ok)) || !write_blob(up, addr, alen) ||
        !write_blob(up, key, klen) || !write_blob(up, fab_addr, fab_alen) ||
        !write_all(up, bare, sizeof(bare)))
        _exit(1);

    char mode = 'i';
    for (uint64_t loops = 0;; loops++) {
        if (mode == 'i' || loops % 64 == 0) {
            pollfd p = {down, POLLIN, 0};
            if (poll(&p, 1, mode == 'i' ? -1 : 0) > 0) {
                char c;
                if (read(down, &c, 1) != 1)
                    break; /* the client is done */
                mode = c;
                write_all(up, &c, 1);
            }
        }
        if (mode == 's') {
            sp_transport_completion_t done[kCqBatch];
            size_t n = 0;
            (void)sp_transport_poll(t, done, kCqBatch, 0, &n);
        } else if (mode == 'b') {
            fi_cq_entry entries[kCqBatch];
            (void)fi_cq_read(fab.cq, entries, kCqBatch);
        }
    }
    fi_close(&fmr.mr->fid);
    fab_close(&fab);
    sp_transport_mr_dereg(mr);
    sp_transport_close(t);
    sp_conf_destroy(conf);
    std::free(region);
    _exit(0);
}

/* ---- the client side --------------------------------------------------------- */

struct Server {
    pid_t pid = -1;
    int to = -1, from = -1;
    std::string error; /* set when the server could not start */
    std::vector<unsigned char> sp_addr, sp_key, bare_addr;
    uint64_t bare_key = 0, bare_base = 0;
};

Server servers[kNumProviders];

void start_server(int prov)
{
    Server &s = servers[prov];
    int up[2], down[2];

    if (pipe(up) != 0 || pipe(down) != 0) {
        s.error = "pipe failed";
        return;
    }
    s.pid = fork();
    if (s.pid < 0) {
        s.error = "fork failed";
        return;
    }
    if (s.pid == 0) {
        /* Drop the pipes of servers started before, so that they see EOF. */
        for (int p = 0; p < prov; p++) {
            close(servers[p].to);
            close(servers[p].from);
        }
        close(up[0]);
        close(down[1]);
        serve(kProviders[prov], up[1], down[0]);
    }
    close(up[1]);
    close(down[0]);
    s.to = down[1];
    s.from = up[0];
}

/* Reads what the server sent after starting (the first row to use it asks). */
bool server_ready(int prov, std::string *error_p)
{
    Server &s = servers[prov];
    int32_t status = 0;
    uint64_t bare[2];

    if (!s.error.empty()) {
        *error_p = s.error;
        return false;
    }
    if (!s.sp_addr.empty())
        return true;
    if (!read_all(s.from, &status, sizeof(status))) {
        s.error = std::string("server for ") + kProviders[prov] + " died";
    } else if (status != 0) {
        std::vector<unsigned char> msg;
        read_blob(s.from, &msg);
        s.error = std::string(msg.begin(), msg.end());
    } else if (!read_blob(s.from, &s.sp_addr) || !read_blob(s.from, &s.sp_key) ||
               !read_blob(s.from, &s.bare_addr) || !read_all(s.from, bare, sizeof(bare))) {
        s.error = "short answer from the server";
    } else {
        s.bare_key = bare[0];
        s.bare_base = bare[1];
        return true;
    }
    *error_p = s.error;
    return false;
}

/* Tells the server which endpoint to progress ('s', 'b') or to sleep ('i'). */
bool server_mode(int prov, char mode)
{
    char ack = 0;
    return write_all(servers[prov].to, &mode, 1) && read_all(servers[prov].from, &ack, 1) &&
           ack == mode;
}

void stop_servers()
{
    for (Server &s : servers) {
        if (s.pid <= 0)
            continue;
        close(s.to);
        close(s.from);
        waitpid(s.pid, nullptr, 0);
        s.pid = -1;
    }
}

unsigned char *dest;     /* client destination, kRegion, pre-faulted */
unsigned char *copy_src; /* memcpy baseline, kRegion each, pre-faulted */
unsigned char *copy_dst;

/* Checks a fetched block against the server's pattern. */
std::string check_bytes(const unsigned char *got, uint64_t offset, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (got[i] != pattern(offset + i))
            return "byte " + std::to_string(i) + " of a check fetch at offset " +
                   std::to_string(offset) + " is wrong";
    }
    return "";
}

struct SpateClient {
    sp_transport_t *t = nullptr;
    sp_mr_t *dest_mr = nullptr;
    uint32_t peer = 0;
    std::string error;

    ~SpateClient()
    {
        sp_transport_mr_dereg(dest_mr);
        sp_transport_close(t);
    }
};

struct BareClient {
    Fab fab;
    FabMr dest_mr;
    fi_addr_t peer = FI_ADDR_UNSPEC;
    std::vector<fi_context2> ctx; /* one per fetch in flight */
    std::vector<uint32_t> free_ctx;
    std::string error;

    ~BareClient()
    {
        if (dest_mr.mr != nullptr)
            fi_close(&dest_mr.mr->fid);
        fab_close(&fab);
    }
};

std::map<std::pair<int, int>, std::unique_ptr<SpateClient>> spate_clients; /* prov, depth */
std::map<std::pair<int, int>, std::unique_ptr<BareClient>> bare_clients;
std::string progress_thread_setting = "?";

/* Waits for one spate fetch; "" or what went wrong. */
std::string spate_wait_one(SpateClient *c)
{
    sp_transport_completion_t done;
    size_t n = 0;
    sp_status_t st = sp_transport_poll(c->t, &done, 1, 5000, &n);
    if (st != SP_OK)
        return spate_error("sp_transport_poll", st);
    if (n == 0)
        return "no completion in 5 s";
    if (done.status != SP_OK)
        return std::string("fetch failed: ") + sp_status_str(done.status) + ": " + sp_last_error();
    return "";
}

/* The spate client for a row, made and checked the first time (the server progresses spate). */
SpateClient *spate_client(int prov, int depth)
{
    auto &slot = spate_clients[{prov, depth}];
    if (slot)
        return slot.get();
    slot = std::make_unique<SpateClient>();
    SpateClient *c = slot.get();
    const Server &s = servers[prov];
    sp_conf_t *conf = nullptr;
    sp_status_t st;

    if ((st = sp_conf_create(&conf)) != SP_OK || (st = sp_conf_load_env(conf, environ)) != SP_OK ||
        (st = sp_conf_set(conf, "transport.provider", kProviders[prov])) != SP_OK ||
        (st = sp_conf_set(conf, "transport.max_outstanding", std::to_string(depth).c_str())) !=
            SP_OK) {
        c->error = spate_error("conf", st);
        sp_conf_destroy(conf);
        return c;
    }
    bool pt = false;
    if (sp_conf_get_bool(conf, "transport.progress_thread", &pt) == SP_OK)
        progress_thread_setting = pt ? "true" : "false";
    st = sp_transport_open(conf, &c->t);
    sp_conf_destroy(conf);
    if (st != SP_OK) {
        c->t = nullptr;
        c->error = spate_error("sp_transport_open", st);
        return c;
    }
    if ((st = sp_transport_add_peer(c->t, s.sp_addr.data(), s.sp_addr.size(), &c->peer)) != SP_OK) {
        c->error = spate_error("sp_transport_add_peer", st);
        return c;
    }
    if ((st = sp_transport_mr_reg(c->t, dest, kRegion, false, &c->dest_mr)) != SP_OK) {
        c->dest_mr = nullptr;
        c->error = spate_error("sp_transport_mr_reg", st);
        return c;
    }
    /* One fetch checked byte for byte (this also connects, on tcp). */
    uint64_t off = 12345;
    std::memset(dest + off, 0, kCheckBytes);
    if ((st = sp_transport_fetch(c->t, c->peer, s.sp_key.data(), s.sp_key.size(), off, kCheckBytes,
                                 dest + off, c->dest_mr, nullptr)) != SP_OK)
        c->error = spate_error("sp_transport_fetch", st);
    else if ((c->error = spate_wait_one(c)).empty())
        c->error = check_bytes(dest + off, off, kCheckBytes);
    std::fprintf(stderr, "bench_transport: spate transport on %s (asked %s), %d in flight%s%s\n",
                 sp_transport_provider(c->t), kProviders[prov], depth, c->error.empty() ? "" : ": ",
                 c->error.c_str());
    return c;
}

/* Waits for one bare fetch; "" or what went wrong. */
std::string bare_wait_one(BareClient *c)
{
    fi_cq_entry entry;
    Clock::time_point until = Clock::now() + std::chrono::seconds(5);
    ssize_t n;

    while ((n = fi_cq_read(c->fab.cq, &entry, 1)) == -FI_EAGAIN) {
        if (Clock::now() > until)
            return "no completion in 5 s";
    }
    if (n == -FI_EAVAIL) {
        fi_cq_err_entry err = {};
        fi_cq_readerr(c->fab.cq, &err, 0);
        return fi_error("fi_read completion", err.err);
    }
    if (n < 0)
        return fi_error("fi_cq_read", n);
    return "";
}

/* The bare client for a row, made and checked the first time (the server progresses bare). */
BareClient *bare_client(int prov, int depth)
{
    auto &slot = bare_clients[{prov, depth}];
    if (slot)
        return slot.get();
    slot = std::make_unique<BareClient>();
    BareClient *c = slot.get();
    const Server &s = servers[prov];

    if (!(c->error = fab_open(kProviders[prov], 2 * static_cast<size_t>(depth), &c->fab)).empty())
        return c;
    if (!(c->error = fab_mr_reg(&c->fab, dest, kRegion, FI_READ, &c->dest_mr)).empty())
        return c;
    if (fi_av_insert(c->fab.av, s.bare_addr.data(), 1, &c->peer, 0, nullptr) != 1) {
        c->error = "fi_av_insert refused the server's address";
        return c;
    }
    c->ctx.resize(static_cast<size_t>(depth));
    for (uint32_t i = 0; i < static_cast<uint32_t>(depth); i++)
        c->free_ctx.push_back(i);
    uint64_t off = 12345;
    std::memset(dest + off, 0, kCheckBytes);
    ssize_t ret;
    do
        ret = fi_read(c->fab.ep, dest + off, kCheckBytes, c->dest_mr.desc, c->peer,
                      s.bare_base + off, s.bare_key, &c->ctx[0]);
    while (ret == -FI_EAGAIN && fi_cq_read(c->fab.cq, nullptr, 0) <= 0);
    if (ret != 0)
        c->error = fi_error("fi_read", ret);
    else if ((c->error = bare_wait_one(c)).empty())
        c->error = check_bytes(dest + off, off, kCheckBytes);
    std::fprintf(stderr, "bench_transport: bare endpoint on %s (asked %s), %d in flight%s%s\n",
                 c->fab.info != nullptr ? c->fab.info->fabric_attr->prov_name : "?",
                 kProviders[prov], depth, c->error.empty() ? "" : ": ", c->error.c_str());
    return c;
}

/* Nanoseconds the threads of process pid have run (/proc/<pid>/task/<tid>/schedstat). */
uint64_t run_ns_of(pid_t pid)
{
    std::string dir = "/proc/" + std::to_string(pid) + "/task";
    uint64_t ns = 0;
    DIR *d = opendir(dir.c_str());

    if (d == nullptr)
        return 0;
    while (dirent *e = readdir(d)) {
        if (e->d_name[0] == '.')
            continue;
        unsigned long long run = 0;
        FILE *f = std::fopen((dir + "/" + e->d_name + "/schedstat").c_str(), "r");
        if (f == nullptr)
            continue;
        if (std::fscanf(f, "%llu", &run) == 1)
            ns += run;
        std::fclose(f);
    }
    closedir(d);
    return ns;
}

/*
 * Nanoseconds all CPUs have run tasks (/proc/stat, in clock ticks): user,
 * nice, system and steal. Interrupt and softirq time is left out: most of it
 * is the loopback traffic of the rows themselves, handled in their context.
 */
uint64_t busy_ns()
{
    unsigned long long v[8] = {};
    FILE *f = std::fopen("/proc/stat", "r");

    if (f == nullptr)
        return 0;
    int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7]);
    std::fclose(f);
    if (n != 8)
        return 0;
    /* user nice system idle iowait irq softirq steal */
    uint64_t ticks = v[0] + v[1] + v[2] + v[7];
    return ticks * (1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
}

/* The ksoftirqd threads, found at startup: their time is the transfer's, not a disturbance. */
std::vector<pid_t> softirqd;

void find_softirqd()
{
    DIR *d = opendir("/proc");

    if (d == nullptr)
        return;
    while (dirent *e = readdir(d)) {
        char comm[64] = "";
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        FILE *f = std::fopen((std::string("/proc/") + e->d_name + "/comm").c_str(), "r");
        if (f == nullptr)
            continue;
        if (std::fgets(comm, sizeof(comm), f) != nullptr &&
            std::strncmp(comm, "ksoftirqd/", 10) == 0)
            softirqd.push_back(static_cast<pid_t>(std::atol(e->d_name)));
        std::fclose(f);
    }
    closedir(d);
}

uint64_t softirqd_ns()
{
    uint64_t ns = 0;
    for (pid_t p : softirqd)
        ns += run_ns_of(p);
    return ns;
}

/*
 * The CPU time of the client, of a server, of ksoftirqd (which carries part
 * of tcp's loopback traffic) and of everything else over one row, in cores
 * (CPU time / wall time). The client and the server spin while a row runs,
 * so on this 2-core machine what the others used was taken from them: a row
 * whose others_cpu is above kDisturbed was disturbed. /proc/stat counts in
 * ticks (10 ms), so others_cpu is within a few hundredths of a core on a
 * 0.4 s call.
 */
struct RowSched {
    uint64_t client0 = 0, server0 = 0, softirqd0 = 0, busy0 = 0;
    pid_t server = -1;

    explicit RowSched(pid_t server_pid) : server(server_pid)
    {
        client0 = run_ns_of(getpid());
        server0 = server > 0 ? run_ns_of(server) : 0;
        softirqd0 = softirqd_ns();
        busy0 = busy_ns();
    }

    /* Sets the row's counters; returns others_cpu. */
    double finish(benchmark::State &state, Clock::duration timed)
    {
        uint64_t busy = busy_ns() - busy0;
        uint64_t client = run_ns_of(getpid()) - client0;
        uint64_t srv = server > 0 ? run_ns_of(server) - server0 : 0;
        uint64_t irq = softirqd_ns() - softirqd0;
        auto wall = static_cast<double>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(timed).count());
        if (wall <= 0)
            return 0;
        double others =
            std::max(0.0, static_cast<double>(busy) - static_cast<double>(client + srv + irq)) /
            wall;
        state.counters["client_cpu"] = static_cast<double>(client) / wall;
        if (server > 0)
            state.counters["server_cpu"] = static_cast<double>(srv) / wall;
        state.counters["softirqd_cpu"] = static_cast<double>(irq) / wall;
        state.counters["others_cpu"] = others;
        return others;
    }
};

/*
 * What each call of a row measured itself, for the summary: bytes/s and
 * others_cpu of the calls that ran at least half of kMinTime, by round.
 */
struct Call {
    double bps;
    double others_cpu;
};
using Rounds = std::map<int64_t, std::vector<Call>>;
std::map<std::tuple<int, int64_t, int>, Rounds> spate_rows, bare_rows; /* prov, KiB, depth */
std::map<int64_t, std::vector<Call>> memcpy_rows;                      /* by block KiB */

double median(std::vector<double> v)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double median_bps(const std::vector<Call> &calls)
{
    std::vector<double> v;
    v.reserve(calls.size());
    for (const Call &c : calls)
        v.push_back(c.bps);
    return median(v);
}

double median_others(const std::vector<Call> &calls)
{
    std::vector<double> v;
    v.reserve(calls.size());
    for (const Call &c : calls)
        v.push_back(c.others_cpu);
    return median(v);
}

std::vector<Call> all_calls(const Rounds &rounds)
{
    std::vector<Call> calls;
    for (const auto &r : rounds)
        calls.insert(calls.end(), r.second.begin(), r.second.end());
    return calls;
}

/* The median over rounds of each round's median. */
double rounds_bps(const Rounds &rounds)
{
    std::vector<double> v;
    for (const auto &r : rounds)
        v.push_back(median_bps(r.second));
    return median(v);
}

/*
 * The median over rounds of spate / bare within a round: the two calls of a
 * round ran one after the other, so a drift of the machine between rounds
 * cancels out.
 */
double paired_ratio(const Rounds &spate, const Rounds &bare)
{
    std::vector<double> v;
    for (const auto &r : spate) {
        auto b = bare.find(r.first);
        if (b == bare.end() || r.second.empty() || b->second.empty())
            continue;
        double sp = median_bps(r.second), bb = median_bps(b->second);
        if (sp > 0 && bb > 0)
            v.push_back(sp / bb);
    }
    return median(v);
}

void record(std::vector<Call> *rows, size_t bytes, Clock::duration timed, double others_cpu)
{
    if (seconds(timed) >= kMinTime / 2)
        rows->push_back({static_cast<double>(bytes) / seconds(timed), others_cpu});
}

/* ---- rows -------------------------------------------------------------------- */

/* Args: provider index, block KiB, fetches in flight, round. */
void BM_spate_fetch(benchmark::State &state)
{
    int prov = static_cast<int>(state.range(0));
    size_t block = static_cast<size_t>(state.range(1)) << 10;
    int depth = static_cast<int>(state.range(2));
    std::string error;

    state.SetLabel(kProviders[prov]);
    if (!server_ready(prov, &error) || !server_mode(prov, 's')) {
        state.SkipWithError(error.empty() ? "server does not answer" : error.c_str());
        return;
    }
    SpateClient *c = spate_client(prov, depth);
    if (!c->error.empty()) {
        server_mode(prov, 'i');
        state.SkipWithError(c->error.c_str());
        return;
    }
    const Server &s = servers[prov];
    const void *key = s.sp_key.data();
    size_t klen = s.sp_key.size();
    sp_transport_completion_t done[kCqBatch];
    uint64_t next = 0;
    size_t inflight = 0, pending = 0;
    RowSched sched(s.pid);
    Clock::time_point t0 = Clock::now();

    for (auto _ : state) {
        if (pending == 0) {
            while (inflight < static_cast<size_t>(depth)) {
                size_t off = (next * block) & (kRegion - 1);
                sp_status_t st = sp_transport_fetch(c->t, c->peer, key, klen, off, block,
                                                    dest + off, c->dest_mr, nullptr);
                if (st != SP_OK) {
                    error = spate_error("sp_transport_fetch", st);
                    break;
                }
                next++;
                inflight++;
            }
            size_t n = 0;
            sp_status_t st = sp_transport_poll(c->t, done, kCqBatch, 5000, &n);
            if (error.empty() && st != SP_OK)
                error = spate_error("sp_transport_poll", st);
            if (error.empty() && n == 0)
                error = "no completion in 5 s";
            for (size_t i = 0; i < n && error.empty(); i++) {
                if (done[i].status != SP_OK)
                    error = std::string("fetch failed: ") + sp_status_str(done[i].status) + ": " +
                            sp_last_error();
            }
            if (!error.empty()) {
                state.SkipWithError(error.c_str());
                break;
            }
            inflight -= n;
            pending = n;
        }
        pending--;
    }
    Clock::duration timed = Clock::now() - t0;
    double others = sched.finish(state, timed);
    while (inflight > 0 && spate_wait_one(c).empty())
        inflight--;
    server_mode(prov, 'i');
    if (!error.empty() || state.iterations() == 0)
        return;
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(block));
    state.SetItemsProcessed(state.iterations());
    record(&spate_rows[{prov, state.range(1), depth}][state.range(3)], state.iterations() * block,
           timed, others);
}

/* The same loop with libfabric calls only. */
void BM_bare_fi_read(benchmark::State &state)
{
    int prov = static_cast<int>(state.range(0));
    size_t block = static_cast<size_t>(state.range(1)) << 10;
    int depth = static_cast<int>(state.range(2));
    std::string error;

    state.SetLabel(kProviders[prov]);
    if (!server_ready(prov, &error) || !server_mode(prov, 'b')) {
        state.SkipWithError(error.empty() ? "server does not answer" : error.c_str());
        return;
    }
    BareClient *c = bare_client(prov, depth);
    if (!c->error.empty()) {
        server_mode(prov, 'i');
        state.SkipWithError(c->error.c_str());
        return;
    }
    const Server &s = servers[prov];
    fid_ep *ep = c->fab.ep;
    fid_cq *cq = c->fab.cq;
    fi_cq_entry entries[kCqBatch];
    uint64_t next = 0;
    size_t inflight = 0, pending = 0;
    RowSched sched(s.pid);
    Clock::time_point t0 = Clock::now();

    for (auto _ : state) {
        if (pending == 0) {
            ssize_t n;
            uint64_t spins = 0;
            for (;;) {
                while (!c->free_ctx.empty()) {
                    size_t off = (next * block) & (kRegion - 1);
                    uint32_t ci = c->free_ctx.back();
                    ssize_t ret = fi_read(ep, dest + off, block, c->dest_mr.desc, c->peer,
                                          s.bare_base + off, s.bare_key, &c->ctx[ci]);
                    if (ret == -FI_EAGAIN)
                        break;
                    if (ret != 0) {
                        error = fi_error("fi_read", ret);
                        break;
                    }
                    c->free_ctx.pop_back();
                    next++;
                    inflight++;
                }
                n = fi_cq_read(cq, entries, kCqBatch);
                if (n > 0 || !error.empty())
                    break;
                if (n == -FI_EAVAIL) {
                    fi_cq_err_entry err = {};
                    fi_cq_readerr(cq, &err, 0);
                    error = fi_error("fi_read completion", err.err);
                    break;
                }
                if (n != -FI_EAGAIN) {
                    error = fi_error("fi_cq_read", n);
                    break;
                }
                if (++spins % 65536 == 0 && seconds(Clock::now() - t0) > 60) {
                    error = "no completion in 60 s";
                    break;
                }
            }
            if (!error.empty()) {
                state.SkipWithError(error.c_str());
                break;
            }
            for (ssize_t i = 0; i < n; i++)
                c->free_ctx.push_back(static_cast<uint32_t>(
                    static_cast<fi_context2 *>(entries[i].op_context) - c->ctx.data()));
            inflight -= static_cast<size_t>(n);
            pending = static_cast<size_t>(n);
        }
        pending--;
    }
    Clock::duration timed = Clock::now() - t0;
    double others = sched.finish(state, timed);
    while (inflight > 0) {
        fi_cq_entry e;
        ssize_t n = fi_cq_read(cq, &e, 1);
        if (n == 1) {
            c->free_ctx.push_back(
                static_cast<uint32_t>(static_cast<fi_context2 *>(e.op_context) - c->ctx.data()));
            inflight--;
        } else if (n != -FI_EAGAIN) {
            break;
        }
    }
    server_mode(prov, 'i');
    if (!error.empty() || state.iterations() == 0)
        return;
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(block));
    state.SetItemsProcessed(state.iterations());
    record(&bare_rows[{prov, state.range(1), depth}][state.range(3)], state.iterations() * block,
           timed, others);
}

/* Args: block KiB. Offsets cycle through the 256 MiB buffers as the fetches' do. */
void BM_memcpy(benchmark::State &state)
{
    size_t block = static_cast<size_t>(state.range(0)) << 10;
    uint64_t next = 0;
    RowSched sched(-1);
    Clock::time_point t0 = Clock::now();

    for (auto _ : state) {
        size_t off = (next++ * block) & (kRegion - 1);
        std::memcpy(copy_dst + off, copy_src + off, block);
        benchmark::ClobberMemory();
    }
    Clock::duration timed = Clock::now() - t0;
    double others = sched.finish(state, timed);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(block));
    state.SetItemsProcessed(state.iterations());
    record(&memcpy_rows[state.range(0)], state.iterations() * block, timed, others);
}

constexpr int64_t kBlocksKiB[] = {64, 1024, 8192};

/*
 * For each provider, block size and number in flight, kRounds rounds of the
 * spate row followed by its bare row: loopback bandwidth here drifts by up
 * to 2.5x over seconds (tcp most), so the two are sampled alternately and
 * the summary compares their medians.
 */
void register_fetch_rows()
{
    for (int64_t prov = 0; prov < kNumProviders; prov++) {
        for (int64_t kib : kBlocksKiB) {
            for (int64_t depth : {64, 8}) {
                for (int64_t round = 1; round <= kRounds; round++) {
                    for (auto *b :
                         {benchmark::RegisterBenchmark("BM_spate_fetch", BM_spate_fetch),
                          benchmark::RegisterBenchmark("BM_bare_fi_read", BM_bare_fi_read)})
                        b->ArgNames({"provider", "block_kib", "inflight", "round"})
                            ->Args({prov, kib, depth, round})
                            ->Unit(benchmark::kMillisecond)
                            ->UseRealTime()
                            ->MinTime(kMinTime);
                }
            }
        }
    }
}

void memcpy_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"block_kib"})->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(kMinTime);
    for (int64_t kib : kBlocksKiB)
        b->Arg(kib);
}

std::string block_name(int64_t kib)
{
    return kib >= 1024 ? std::to_string(kib >> 10) + " MiB" : std::to_string(kib) + " KiB";
}

void print_summary()
{
    bool disturbed = false;

    if (spate_rows.empty() && bare_rows.empty())
        return;
    std::printf("\nSummary: fetch bandwidth between two processes, decimal GB/s: spate and bare "
                "are medians over the rounds, spate/bare the median of the rounds' ratios (calls "
                "that ran >= %.2f s)\n",
                kMinTime / 2);
    std::printf("%-12s %-7s %8s %10s %10s %10s %11s %12s %8s\n", "provider", "block", "inflight",
                "spate", "bare", "spate/bare", "memcpy", "spate/memcpy", "others");
    for (int prov = 0; prov < kNumProviders; prov++) {
        for (int64_t kib : kBlocksKiB) {
            for (int depth : {64, 8}) {
                auto key = std::make_tuple(prov, kib, depth);
                double sp = rounds_bps(spate_rows[key]), bare = rounds_bps(bare_rows[key]);
                double mc = median_bps(memcpy_rows[kib]);
                double paired = paired_ratio(spate_rows[key], bare_rows[key]);
                if (sp == 0 && bare == 0)
                    continue;
                char ratio[16] = "-", vs_mc[16] = "-";
                if (paired > 0)
                    std::snprintf(ratio, sizeof(ratio), "%.3f", paired);
                if (sp > 0 && mc > 0)
                    std::snprintf(vs_mc, sizeof(vs_mc), "%.3f", sp / mc);
                double others = std::max(median_others(all_calls(spate_rows[key])),
                                         median_others(all_calls(bare_rows[key])));
                std::printf("%-12s %-7s %8d %10.3f %10.3f %10s %11.3f %12s %8.2f\n",
                            kProviders[prov], block_name(kib).c_str(), depth, sp / 1e9, bare / 1e9,
                            ratio, mc / 1e9, vs_mc, others);
                disturbed = disturbed || others > kDisturbed;
            }
        }
    }
    std::printf("others: CPU (in cores) that processes other than the client and server used "
                "during the calls, median, the larger of the two rows; %s\n",
                disturbed ? "ABOVE 0.10 somewhere: other processes took the cores, measure again"
                          : "at most 0.10: undisturbed");
    for (int prov = 0; prov < kNumProviders; prov++) {
        for (int depth : {64, 8}) {
            auto key = std::make_tuple(prov, int64_t{1024}, depth);
            double paired = paired_ratio(spate_rows[key], bare_rows[key]);
            if (paired == 0)
                continue;
            std::printf("target spate >= 0.9 x bare, 1 MiB, %s, %d in flight: %.3f, %s\n",
                        kProviders[prov], depth, paired, paired >= 0.9 ? "met" : "NOT met");
        }
    }
}

std::string loadavg()
{
    char buf[128] = "";
    FILE *f = std::fopen("/proc/loadavg", "r");
    if (f != nullptr) {
        if (std::fgets(buf, sizeof(buf), f) == nullptr)
            buf[0] = '\0';
        std::fclose(f);
    }
    std::string s(buf);
    while (!s.empty() && s.back() == '\n')
        s.pop_back();
    return s;
}

} // namespace

BENCHMARK(BM_memcpy)->Apply(memcpy_args);

int main(int argc, char **argv)
{
    /* Loopback only, before libfabric reads its environment. */
    setenv("FI_TCP_IFACE", "lo", 1);
    setenv("FI_SOCKETS_IFACE", "lo", 1);
    signal(SIGPIPE, SIG_IGN);
    sp_log_set_level(SP_LOG_ERROR);
    register_fetch_rows();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    std::string load_before = loadavg();
    find_softirqd();
    /* Servers first, while this process holds nothing large. */
    for (int prov = 0; prov < kNumProviders; prov++)
        start_server(prov);
    dest = static_cast<unsigned char *>(std::malloc(kRegion));
    copy_src = static_cast<unsigned char *>(std::malloc(kRegion));
    copy_dst = static_cast<unsigned char *>(std::malloc(kRegion));
    if (dest == nullptr || copy_src == nullptr || copy_dst == nullptr) {
        std::fprintf(stderr, "bench_transport: no memory for the buffers\n");
        stop_servers();
        return 1;
    }
    std::memset(dest, 0, kRegion); /* faults every page in */
    std::memset(copy_src, 0x5a, kRegion);
    std::memset(copy_dst, 0, kRegion);
    benchmark::AddCustomContext("cores", std::to_string(sysconf(_SC_NPROCESSORS_ONLN)));
    benchmark::AddCustomContext("loadavg_at_start", load_before);
    benchmark::AddCustomContext("libfabric", std::to_string(FI_MAJOR(fi_version())) + "." +
                                                 std::to_string(FI_MINOR(fi_version())));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    print_summary();
    std::printf("transport.progress_thread=%s; loadavg at start %s, at end %s\n",
                progress_thread_setting.c_str(), load_before.c_str(), loadavg().c_str());
    spate_clients.clear();
    bare_clients.clear();
    stop_servers();
    std::free(dest);
    std::free(copy_src);
    std::free(copy_dst);
    return 0;
}
