/*
 * Fetch bandwidth of the mpi transport backend between 2 ranks of one mpirun,
 * in both of its modes, next to raw MPI baselines measured in the same run:
 *
 *   spate rget      (transport.mpi_mode=rget: MPI_Rget through a dynamic window)
 *   spate twosided  (transport.mpi_mode=twosided: request, answered with a send)
 *     vs  bare MPI_Get   an MPI_Rget loop on a dynamic window of its own, the
 *                        same blocks and the same number in flight, no spate
 *     vs  bare sendrecv  the server streams the same blocks with MPI_Isend into
 *                        MPI_Irecv's posted by the client (no requests): what
 *                        two-sided moves when nobody has to ask
 *     vs  MPI_Alltoallv  the same total bytes moved from the server to the
 *                        client by MPI_Alltoallv calls of one region each
 *     vs  memcpy         the client copying the same blocks locally (one core)
 *
 * Run: mpirun -n 2 bench_mpi [--blocks 64k,1m,8m] [--inflight 16] [--rounds 7]
 *      [--round-bytes 512m] [--server poll|idle]
 * Rank 1 serves a 64 MiB region filled with a pattern, registered with both
 * spate transports and attached to the bare window; rank 0 reads it into a
 * pre-faulted 64 MiB destination, offsets cycling through the region. A pass
 * moves --round-bytes in blocks of one size, --inflight of them posted at a
 * time; each round runs one pass of every path, in an order that rotates from
 * round to round, and the figures are medians over --rounds rounds, ratios
 * the medians of each round's own ratios (its passes ran back to back), so
 * that they mean something on a machine whose loopback drifts.
 *
 * While a pass runs, the server either polls the transport read from in a loop
 * (--server poll, the default, as bench_transport's server does; the bare
 * passes test the end-of-pass message in a loop, which progresses MPI), or
 * sleeps 1 ms at a time between tests of that message (--server idle), so that
 * two-sided requests are answered by the transport's progress thread alone.
 * spate's configuration is the default plus the SPATE_CONF_* environment,
 * then transport.backend=mpi, transport.mpi_mode and max_outstanding at least
 * --inflight. Setup is not timed; one block of every path is checked against
 * the pattern before the first pass.
 */
#include <spate/conf.h>
#include <spate/transport.h>

#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REGION     ((size_t)64 << 20)
#define TAG_DONE   77
#define TAG_DATA   78
#define MAX_BLOCKS 8
#define MAX_ROUNDS 64

enum { CLIENT = 0, SERVER = 1 };

enum path { P_RGET, P_TWOSIDED, P_BARE_GET, P_BARE_SENDRECV, P_ALLTOALLV, P_MEMCPY, P_COUNT };

static const char *const path_names[P_COUNT] = {
    "spate rget", "spate twosided", "bare MPI_Get", "bare sendrecv", "MPI_Alltoallv", "memcpy",
};

static struct bench {
    int rank;
    size_t blocks[MAX_BLOCKS];
    int nblocks;
    int inflight, rounds;
    size_t round_bytes;
    bool server_idle;
    unsigned char *region, *dest, *src; /* server: region; client: dest and src (memcpy) */
    sp_conf_t *conf[2];
    sp_transport_t *t[2]; /* rget, twosided */
    sp_mr_t *mr[2];
    unsigned char key[2][SP_TRANSPORT_RKEY_MAX];
    size_t klen[2];
    uint32_t peer[2];
    MPI_Comm comm; /* the benchmark's own messages */
    MPI_Win win;   /* bare MPI_Get */
    MPI_Aint disp; /* of the region on the server */
    double secs[MAX_BLOCKS][P_COUNT][MAX_ROUNDS];
} b;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned char pattern(size_t i) { return (unsigned char)((i * 7u + (i >> 12)) & 0xff); }

static void die(const char *what)
{
    fprintf(stderr, "bench_mpi rank %d: %s: %s\n", b.rank, what, sp_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static size_t parse_size(const char *s)
{
    char *end = NULL;
    double v = strtod(s, &end);
    size_t mult = 1;

    if (end != NULL && (*end == 'k' || *end == 'K'))
        mult = 1024;
    else if (end != NULL && (*end == 'm' || *end == 'M'))
        mult = (size_t)1 << 20;
    else if (end != NULL && (*end == 'g' || *end == 'G'))
        mult = (size_t)1 << 30;
    return (size_t)(v * (double)mult);
}

static void usage(void)
{
    if (b.rank == 0)
        fprintf(stderr, "usage: mpirun -n 2 bench_mpi [--blocks 64k,1m,8m] [--inflight 16] "
                        "[--rounds 7] [--round-bytes 512m] [--server poll|idle]\n");
    MPI_Finalize();
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    const char *blocks = "64k,1m,8m";

    b.inflight = 16;
    b.rounds = 7;
    b.round_bytes = (size_t)512 << 20;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        if (strcmp(argv[i], "--blocks") == 0)
            blocks = v;
        else if (strcmp(argv[i], "--inflight") == 0)
            b.inflight = atoi(v);
        else if (strcmp(argv[i], "--rounds") == 0)
            b.rounds = atoi(v);
        else if (strcmp(argv[i], "--round-bytes") == 0)
            b.round_bytes = parse_size(v);
        else if (strcmp(argv[i], "--server") == 0)
            b.server_idle = strcmp(v, "idle") == 0;
        else
            usage();
        i++;
    }
    for (const char *p = blocks; *p != '\0' && b.nblocks < MAX_BLOCKS;) {
        size_t s = parse_size(p);
        if (s == 0 || s > REGION)
            usage();
        b.blocks[b.nblocks++] = s;
        p += strcspn(p, ",");
        p += *p == ',';
    }
    if (b.nblocks == 0 || b.inflight < 1 || b.inflight > 4096 || b.rounds < 1 ||
        b.rounds > MAX_ROUNDS || b.round_bytes < REGION / 64)
        usage();
}

/* Opens the spate transport of one mode and registers the region (server) or destination. */
static void open_spate(int i, const char *mode)
{
    char inflight[32];
    unsigned char addr[SP_TRANSPORT_ADDR_MAX], peer_addr[SP_TRANSPORT_ADDR_MAX];
    size_t alen = 0;
    uint32_t plen = 0;

    snprintf(inflight, sizeof(inflight), "%d", b.inflight < 64 ? 64 : b.inflight);
    if (sp_conf_create(&b.conf[i]) != SP_OK || sp_conf_load_env(b.conf[i], environ) != SP_OK ||
        sp_conf_set(b.conf[i], "transport.backend", "mpi") != SP_OK ||
        sp_conf_set(b.conf[i], "transport.mpi_mode", mode) != SP_OK ||
        sp_conf_set(b.conf[i], "transport.max_outstanding", inflight) != SP_OK)
        die("configuration");
    if (sp_transport_open(b.conf[i], &b.t[i]) != SP_OK) /* collective */
        die("sp_transport_open");
    if (sp_transport_address(b.t[i], addr, sizeof(addr), &alen) != SP_OK)
        die("sp_transport_address");
    /* Each rank sends its address to the other; the server also its key. */
    MPI_Sendrecv(addr, (int)alen, MPI_BYTE, 1 - b.rank, 1, peer_addr, sizeof(peer_addr), MPI_BYTE,
                 1 - b.rank, 1, b.comm, MPI_STATUS_IGNORE);
    plen = (uint32_t)alen; /* both addresses have the same length under one MPI */
    if (sp_transport_add_peer(b.t[i], peer_addr, plen, &b.peer[i]) != SP_OK)
        die("sp_transport_add_peer");
    if (b.rank == SERVER) {
        if (sp_transport_mr_reg(b.t[i], b.region, REGION, true, &b.mr[i]) != SP_OK ||
            sp_transport_mr_pack(b.mr[i], b.key[i], sizeof(b.key[i]), &b.klen[i]) != SP_OK)
            die("serving the region");
        MPI_Send(b.key[i], (int)b.klen[i], MPI_BYTE, CLIENT, 2, b.comm);
    } else {
        MPI_Status status;
        int n = 0;
        if (sp_transport_mr_reg(b.t[i], b.dest, REGION, false, &b.mr[i]) != SP_OK)
            die("registering the destination");
        MPI_Recv(b.key[i], sizeof(b.key[i]), MPI_BYTE, SERVER, 2, b.comm, &status);
        MPI_Get_count(&status, MPI_BYTE, &n);
        b.klen[i] = (size_t)n;
    }
}

static void close_spate(int i)
{
    sp_transport_mr_dereg(b.mr[i]);
    sp_transport_close(b.t[i]); /* collective */
    sp_conf_destroy(b.conf[i]);
}

static void open_bare_window(void)
{
    MPI_Win_create_dynamic(MPI_INFO_NULL, b.comm, &b.win);
    if (b.rank == SERVER) {
        MPI_Win_attach(b.win, b.region, (MPI_Aint)REGION);
        MPI_Get_address(b.region, &b.disp);
    }
    MPI_Bcast(&b.disp, sizeof(b.disp), MPI_BYTE, SERVER, b.comm);
    MPI_Win_lock_all(MPI_MODE_NOCHECK, b.win);
}

static void close_bare_window(void)
{
    MPI_Win_unlock_all(b.win);
    MPI_Barrier(b.comm);
    if (b.rank == SERVER)
        MPI_Win_detach(b.win, b.region);
    MPI_Win_free(&b.win);
}

/* The offset of block i of size bs: cycling through the region. */
static size_t offset_of(size_t i, size_t bs) { return (i % (REGION / bs)) * bs; }

/* Client: one pass of spate fetches. */
static void client_spate(int i, size_t bs, size_t count)
{
    size_t posted = 0, done = 0;
    int in_flight = 0;

    while (done < count) {
        sp_transport_completion_t c[16];
        size_t n = 0;
        while (posted < count && in_flight < b.inflight) {
            size_t off = offset_of(posted, bs);
            sp_status_t st = sp_transport_fetch(b.t[i], b.peer[i], b.key[i], b.klen[i], off, bs,
                                                b.dest + off, b.mr[i], NULL);
            if (st == SP_ERR_BUSY)
                break;
            if (st != SP_OK)
                die("sp_transport_fetch");
            posted++;
            in_flight++;
        }
        if (sp_transport_poll(b.t[i], c, 16, 1000, &n) != SP_OK)
            die("sp_transport_poll");
        for (size_t k = 0; k < n; k++)
            if (c[k].status != SP_OK)
                die("a fetch");
        done += n;
        in_flight -= (int)n;
    }
}

/* Client: one pass of bare MPI_Rget, the same blocks and number in flight. */
static void client_bare_get(size_t bs, size_t count)
{
    MPI_Request reqs[4096];
    int idx[4096];
    size_t posted = 0, done = 0;
    int live = 0;

    while (done < count) {
        int n = 0;
        while (posted < count && live < b.inflight) {
            size_t off = offset_of(posted, bs);
            MPI_Rget(b.dest + off, (int)bs, MPI_BYTE, SERVER, MPI_Aint_add(b.disp, (MPI_Aint)off),
                     (int)bs, MPI_BYTE, b.win, &reqs[live++]);
            posted++;
        }
        MPI_Waitsome(live, reqs, &n, idx, MPI_STATUSES_IGNORE);
        /* Compact: finished requests are MPI_REQUEST_NULL. */
        {
            int kept = 0;
            for (int k = 0; k < live; k++)
                if (reqs[k] != MPI_REQUEST_NULL)
                    reqs[kept++] = reqs[k];
            live = kept;
        }
        done += (size_t)n;
    }
}

/* Both: one pass of the server streaming blocks into the client's posted receives. */
static void bare_sendrecv(size_t bs, size_t count)
{
    MPI_Request reqs[4096];
    int idx[4096];
    size_t posted = 0, done = 0;
    int live = 0;

    while (done < count) {
        int n = 0;
        while (posted < count && live < b.inflight) {
            size_t off = offset_of(posted, bs);
            if (b.rank == CLIENT)
                MPI_Irecv(b.dest + off, (int)bs, MPI_BYTE, SERVER, TAG_DATA, b.comm, &reqs[live++]);
            else
                MPI_Isend(b.region + off, (int)bs, MPI_BYTE, CLIENT, TAG_DATA, b.comm,
                          &reqs[live++]);
            posted++;
        }
        MPI_Waitsome(live, reqs, &n, idx, MPI_STATUSES_IGNORE);
        {
            int kept = 0;
            for (int k = 0; k < live; k++)
                if (reqs[k] != MPI_REQUEST_NULL)
                    reqs[kept++] = reqs[k];
            live = kept;
        }
        done += (size_t)n;
    }
}

/* Both: the same bytes moved server -> client by MPI_Alltoallv, one region per call. */
static void alltoallv(size_t total)
{
    int scounts[2] = {0, 0}, rcounts[2] = {0, 0}, displs[2] = {0, 0};

    for (size_t moved = 0; moved < total; moved += REGION) {
        int chunk = (int)(total - moved < REGION ? total - moved : REGION);
        if (b.rank == SERVER)
            scounts[CLIENT] = chunk;
        else
            rcounts[SERVER] = chunk;
        MPI_Alltoallv(b.region, scounts, displs, MPI_BYTE, b.dest, rcounts, displs, MPI_BYTE,
                      b.comm);
    }
}

static void client_memcpy(size_t bs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        size_t off = offset_of(i, bs);
        memcpy(b.dest + off, b.src + off, bs);
    }
}

/* Server: serves until the client's end-of-pass message arrives. */
static void server_wait(int spate)
{
    MPI_Request done;
    int flag = 0;

    MPI_Irecv(NULL, 0, MPI_BYTE, CLIENT, TAG_DONE, b.comm, &done);
    MPI_Barrier(b.comm); /* the pass starts */
    while (!flag) {
        if (b.server_idle) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        } else if (spate >= 0) {
            sp_transport_completion_t c[4];
            size_t n = 0;
            if (sp_transport_poll(b.t[spate], c, 4, 0, &n) != SP_OK)
                die("server poll");
        }
        MPI_Test(&done, &flag, MPI_STATUS_IGNORE);
    }
}

/* One pass of path p with blocks of bs; returns the client's seconds (0 on the server). */
static double run_pass(enum path p, size_t bs)
{
    size_t count = b.round_bytes / bs;
    double t0, t1;

    if (p == P_ALLTOALLV) {
        MPI_Barrier(b.comm);
        t0 = now();
        alltoallv(count * bs);
        t1 = now();
        return b.rank == CLIENT ? t1 - t0 : 0;
    }
    if (p == P_BARE_SENDRECV) {
        MPI_Barrier(b.comm);
        t0 = now();
        bare_sendrecv(bs, count);
        t1 = now();
        MPI_Barrier(b.comm);
        return b.rank == CLIENT ? t1 - t0 : 0;
    }
    if (b.rank == SERVER) {
        server_wait(p == P_RGET ? 0 : p == P_TWOSIDED ? 1 : -1);
        return 0;
    }
    MPI_Barrier(b.comm);
    t0 = now();
    if (p == P_RGET || p == P_TWOSIDED)
        client_spate(p == P_RGET ? 0 : 1, bs, count);
    else if (p == P_BARE_GET)
        client_bare_get(bs, count);
    else
        client_memcpy(bs, count);
    t1 = now();
    MPI_Send(NULL, 0, MPI_BYTE, SERVER, TAG_DONE, b.comm);
    return t1 - t0;
}

/* Client: the first block of every path, checked against the pattern. */
static void check_paths(size_t bs)
{
    size_t count = 1;
    const size_t off = 0;

    for (int p = 0; p < P_COUNT; p++) {
        if (p == P_ALLTOALLV || p == P_MEMCPY)
            continue;
        if (b.rank == CLIENT)
            memset(b.dest, 0, bs);
        if (p == P_BARE_SENDRECV) {
            MPI_Barrier(b.comm);
            bare_sendrecv(bs, count);
            MPI_Barrier(b.comm);
        } else if (b.rank == SERVER) {
            server_wait(p == P_RGET ? 0 : p == P_TWOSIDED ? 1 : -1);
        } else {
            MPI_Barrier(b.comm);
            if (p == P_RGET || p == P_TWOSIDED)
                client_spate(p == P_RGET ? 0 : 1, bs, count);
            else
                client_bare_get(bs, count);
            MPI_Send(NULL, 0, MPI_BYTE, SERVER, TAG_DONE, b.comm);
        }
        if (b.rank == CLIENT) {
            for (size_t i = 0; i < bs; i++) {
                if (b.dest[i] != pattern(off + i)) {
                    fprintf(stderr, "bench_mpi: %s read byte %zu wrong\n", path_names[p], i);
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
            }
        }
    }
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, c = *(const double *)y;

    return a < c ? -1 : a > c;
}

static double median(double *v, int n)
{
    double tmp[MAX_ROUNDS];

    memcpy(tmp, v, (size_t)n * sizeof(*v));
    qsort(tmp, (size_t)n, sizeof(*tmp), cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

/* Median over rounds of time(base) / time(p): p's bandwidth relative to base's. */
static double ratio(int bi, enum path p, enum path base)
{
    double r[MAX_ROUNDS];

    for (int k = 0; k < b.rounds; k++)
        r[k] = b.secs[bi][base][k] / b.secs[bi][p][k];
    return median(r, b.rounds);
}

static double gbps(int bi, enum path p)
{
    size_t bytes = b.round_bytes / b.blocks[bi] * b.blocks[bi];
    double v[MAX_ROUNDS];

    for (int k = 0; k < b.rounds; k++)
        v[k] = (double)bytes / b.secs[bi][p][k] / 1e9;
    return median(v, b.rounds);
}

static void print_results(void)
{
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0, provided = 0;
    double load[3] = {0, 0, 0};

    MPI_Get_library_version(version, &len);
    version[strcspn(version, ",\n")] = '\0';
    MPI_Query_thread(&provided);
    if (getloadavg(load, 3) < 0)
        load[0] = -1;
    printf("bench_mpi: 2 ranks, %s, thread level %d; %d in flight, %zu MiB a pass, %d rounds, "
           "server %s; load average %.2f\n",
           version, provided, b.inflight, b.round_bytes >> 20, b.rounds,
           b.server_idle ? "idle (progress thread only)" : "polling", load[0]);
    printf("%-8s %-15s %8s %10s %10s %10s %10s\n", "block", "path", "GB/s", "/bare_get",
           "/sendrecv", "/alltoallv", "/memcpy");
    for (int bi = 0; bi < b.nblocks; bi++) {
        char name[32];
        size_t bs = b.blocks[bi];
        if (bs >= (1u << 20))
            snprintf(name, sizeof(name), "%zu MiB", bs >> 20);
        else
            snprintf(name, sizeof(name), "%zu KiB", bs >> 10);
        for (int p = 0; p < P_COUNT; p++) {
            printf("%-8s %-15s %8.2f", name, path_names[p], gbps(bi, p));
            if (p == P_RGET || p == P_TWOSIDED)
                printf(" %10.3f %10.3f %10.3f %10.3f", ratio(bi, p, P_BARE_GET),
                       ratio(bi, p, P_BARE_SENDRECV), ratio(bi, p, P_ALLTOALLV),
                       ratio(bi, p, P_MEMCPY));
            printf("\n");
        }
        printf("%-8s faster mode: %s (twosided / rget %.3f)\n", name,
               ratio(bi, P_TWOSIDED, P_RGET) > 1 ? "twosided" : "rget",
               ratio(bi, P_TWOSIDED, P_RGET));
    }
    if (getloadavg(load, 3) >= 0)
        printf("load average at the end: %.2f\n", load[0]);
}

int main(int argc, char **argv)
{
    int provided = 0, size = 0;

    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    MPI_Comm_rank(MPI_COMM_WORLD, &b.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (b.rank == 0)
            fprintf(stderr, "bench_mpi runs on exactly 2 ranks (mpirun -n 2), not %d\n", size);
        MPI_Finalize();
        return 2;
    }
    parse_args(argc, argv);
    sp_log_set_level(SP_LOG_ERROR);
    MPI_Comm_dup(MPI_COMM_WORLD, &b.comm);
    if (b.rank == SERVER) {
        b.region = malloc(REGION);
        if (b.region == NULL)
            die("no memory");
        for (size_t i = 0; i < REGION; i++)
            b.region[i] = pattern(i);
    } else {
        b.dest = malloc(REGION);
        b.src = malloc(REGION);
        if (b.dest == NULL || b.src == NULL)
            die("no memory");
        memset(b.dest, 1, REGION); /* pre-faulted */
        for (size_t i = 0; i < REGION; i++)
            b.src[i] = pattern(i);
    }
    open_spate(0, "rget");
    open_spate(1, "twosided");
    open_bare_window();
    for (int bi = 0; bi < b.nblocks; bi++) {
        check_paths(b.blocks[bi]);
        for (int k = 0; k < b.rounds; k++) {
            for (int j = 0; j < P_COUNT; j++) {
                enum path p = (enum path)((j + k) % P_COUNT); /* rotating order */
                b.secs[bi][p][k] = run_pass(p, b.blocks[bi]);
            }
        }
    }
    if (b.rank == CLIENT)
        print_results();
    close_bare_window();
    close_spate(1);
    close_spate(0);
    MPI_Comm_free(&b.comm);
    free(b.region);
    free(b.dest);
    free(b.src);
    MPI_Finalize();
    return 0;
}
