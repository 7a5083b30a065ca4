/*
 * The limits spate-bench reads its figures against, each measured in the
 * same run on the same machine: MPI_Alltoallv of
 * the same bytes between the same ranks, a bare libfabric fi_read loop
 * between two local processes on the same provider, and sequential
 * write/read of a file in shuffle.local_dirs.
 */
#ifndef SPATE_BENCH_LIMITS_H
#define SPATE_BENCH_LIMITS_H

#include <spate/common.h>

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Seconds of a single-threaded memcpy of bytes (buffers of at most 256 MiB, reused); 0: no memory.
 */
double sp_bench_memcpy_seconds(uint64_t bytes);

/*
 * MPI_Barrier that sleeps (1 ms at a time) instead of spinning, so that
 * ranks waiting on one that measures a limit leave it the cores.
 */
void sp_bench_quiet_barrier(MPI_Comm comm);

/*
 * Collective over comm: every rank sends bytes_per_rank, split evenly over
 * the ranks (itself included), with MPI_Alltoallv calls of at most 256 MiB
 * per rank. Returns on every rank the slowest rank's seconds.
 */
sp_status_t sp_bench_alltoallv_seconds(MPI_Comm comm, uint64_t bytes_per_rank, double *seconds_p);

/* A bare fi_read server: a forked process that exposes a registered region. */
typedef struct sp_bench_fi_server {
    pid_t pid;
    int fd; /* socket to the server; -1: none */
    char error[512];
} sp_bench_fi_server_t;

/*
 * Forks the server now, before this process touches libfabric or MPI
 * (provider NULL or "": libfabric's first match for RDM with one-sided
 * reads, as spate's ofi transport asks). Errors are kept in server->error
 * and reported by sp_bench_fi_read_seconds.
 */
void sp_bench_fi_server_start(const char *provider, sp_bench_fi_server_t *server);

/*
 * Reads bytes from the server with fi_read in blocks of block bytes, up to
 * 16 outstanding (*seconds_p), then both ways at once: the client and the
 * server each read bytes from the other while serving the other's reads
 * (*both_seconds_p, the slower side's time); stops the server. *prov_p
 * receives the provider libfabric chose (static storage of this module).
 */
sp_status_t sp_bench_fi_read_seconds(sp_bench_fi_server_t *server, const char *provider,
                                     uint64_t bytes, size_t block, double *seconds_p,
                                     double *both_seconds_p, const char **prov_p);

/* Stops a server that sp_bench_fi_read_seconds did not use (NULL or stopped: nothing). */
void sp_bench_fi_server_stop(sp_bench_fi_server_t *server);

/*
 * Sequential write then read of a bytes-long file in dir, in 4 MiB blocks:
 * with O_DIRECT where dir's file system takes it, else buffered writes,
 * fsync, and a read after dropping the file's pages (posix_fadvise), which
 * *method_p names ("O_DIRECT" or "fsync+fadvise").
 */
sp_status_t sp_bench_disk_seconds(const char *dir, uint64_t bytes, double *write_s_p,
                                  double *read_s_p, const char **method_p);

/* Most processes the copy floor runs. */
#define SP_BENCH_COPY_MAX_PROCS 1024

/*
 * The copy floor: the least a job that reads its input and writes as many
 * bytes to an output directory can take here. nprocs processes (one per
 * executor) each read their share of files (file i goes to process i mod
 * nprocs) and write it to a file of their own in a new directory under dir,
 * both through the page cache (no fsync); with files NULL they write bytes
 * in total from memory instead (generated input). Timed on a second pass,
 * after a first has brought the input into the page cache; the copies are
 * removed. *seconds_p is the wall time of the slowest process.
 */
sp_status_t sp_bench_copy_seconds(const char *const *files, size_t nfiles, uint64_t bytes,
                                  const char *dir, unsigned nprocs, double *seconds_p);

#endif /* SPATE_BENCH_LIMITS_H */
