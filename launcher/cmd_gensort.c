/*
 * `spate gensort`: writes sort benchmark input, byte for byte what
 * `gensort -bSTART RECORDS FILE` writes, split in order over K files
 * OUTDIR/part-00000 .. whose concatenation is that one file.
 *
 * The work is cut into chunks of 40,000 records (4 MB) that threads take in
 * order; a generator starts at any record by skip-ahead, so a chunk is
 * generated where it lands (pwrite at its offset) and files of any size use
 * every thread. Each file is written under a hidden temporary name in OUTDIR
 * and renamed to its part name by whichever thread writes its last chunk,
 * after an fsync: a part file either has all its records or does not exist,
 * whatever happens to the process. A failed run removes what it wrote.
 * Part files of an earlier run are replaced; part files this run would not
 * replace make it refuse, since a reader of OUTDIR would mix them in.
 */
#include "cli.h"
#include "common_int.h"
#include "executor/jobs/gensort.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SP_GENSORT_CHUNK_RECORDS 40000u
#define SP_GENSORT_MAX_FILES     1000000u
#define SP_GENSORT_MAX_THREADS   1024u
/* Records whose byte count fits in 64 bits. */
#define SP_GENSORT_MAX_RECORDS (UINT64_MAX / SP__GENSORT_RECORD_SIZE)

typedef struct sp_cmd_gensort_opts {
    sp__u128_t start;
    uint64_t records;
    uint32_t files;
    unsigned threads; /* 0: one per online CPU */
    bool checksum;
    sp__gensort_layout_t layout;
    const char *outdir;
} sp_cmd_gensort_opts_t;

typedef struct sp_cmd_gensort_file {
    char *tmp;       /* OUTDIR/.part-NNNNN.tmp */
    char *path;      /* OUTDIR/part-NNNNN */
    uint64_t first;  /* its first record, counted from START */
    uint64_t count;  /* its records */
    uint64_t chunk0; /* its first chunk in the run's chunk order */
    atomic_uint_fast64_t chunks_left;
    atomic_bool renamed;
} sp_cmd_gensort_file_t;

typedef struct sp_cmd_gensort_run {
    const sp_cmd_gensort_opts_t *opts;
    sp_cmd_gensort_file_t *files;
    uint64_t chunks;
    atomic_uint_fast64_t next_chunk;
    atomic_bool failed;
    pthread_mutex_t lock; /* guards sum and the error */
    sp__u128_t sum;
    char error[600];
} sp_cmd_gensort_run_t;

static void sp_cmd_gensort_usage(FILE *out)
{
    fprintf(out,
            "usage: spate gensort [-b START] [-c] [--files K] [--threads N] [--layout 1.5|1.2]\n"
            "                     RECORDS OUTDIR\n"
            "\n"
            "Writes RECORDS sort benchmark records, numbered from START, to OUTDIR/part-00000\n"
            "... part-<K-1>: the records split evenly and in order, so that the files' \n"
            "concatenation is byte for byte what `gensort -bSTART RECORDS FILE` (gensort 1.5,\n"
            "binary records) writes. OUTDIR is created if needed. A part file appears (by\n"
            "rename) only once it holds all its records. Part files already in OUTDIR are\n"
            "replaced; the command refuses to run when OUTDIR holds part files it would not\n"
            "replace.\n"
            "\n"
            "  -b START, -bSTART  number of the first record (default 0; up to 2^128-1)\n"
            "  -c                 print the sum of the records' CRC-32s in hex to standard\n"
            "                     error, as gensort -c does (valsort prints the same sum)\n"
            "  --files K          number of part files (default 1, at most %u)\n"
            "  --threads N        generating threads (default: one per online CPU)\n"
            "  --layout 1.5|1.2   record layout: gensort 1.5 (default), or gensort 1.2's\n"
            "                     (key, 0x00 0x11, record number in hex, filler), which\n"
            "                     Hadoop's TeraGen writes; the keys are the same\n"
            "  -h, --help         print this help and exit\n"
            "\n"
            "Check the output with `spate valsort OUTDIR`.\n",
            SP_GENSORT_MAX_FILES);
}

/* Parses an unsigned decimal of at most max; false (message printed) otherwise. */
static bool sp_cmd_gensort_number(const char *opt, const char *value, uint64_t min, uint64_t max,
                                  uint64_t *v_p)
{
    sp__u128_t v;

    if (sp__u128_parse(value, opt, &v) != SP_OK || v < min || v > max) {
        fprintf(stderr, "spate gensort: %s '%s' is not a number from %llu to %llu\n", opt, value,
                (unsigned long long)min, (unsigned long long)max);
        return false;
    }
    *v_p = (uint64_t)v;
    return true;
}

/* Value of option argv[*i] (--opt=V, or --opt V); NULL (message printed) when missing. */
static const char *sp_cmd_gensort_value(int argc, char **argv, int *i, const char *opt)
{
    bool missing = false;
    const char *value = sp_cli_option(argc, argv, i, opt, &missing);

    if (value == NULL)
        fprintf(stderr, "spate gensort: option %s needs a value\n", opt);
    return value;
}

static bool sp_cmd_gensort_is_opt(const char *arg, const char *opt)
{
    size_t len = strlen(opt);
    return strncmp(arg, opt, len) == 0 && (arg[len] == '\0' || arg[len] == '=');
}

/* Parses the arguments; returns -1 to go on, else the exit code. */
static int sp_cmd_gensort_parse(int argc, char **argv, sp_cmd_gensort_opts_t *opts)
{
    const char *positional[2];
    int npos = 0;
    uint64_t v;

    memset(opts, 0, sizeof(*opts));
    opts->files = 1;
    opts->layout = SP__GENSORT_V15;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *value;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            sp_cmd_gensort_usage(stdout);
            return 0;
        } else if (strcmp(arg, "-c") == 0) {
            opts->checksum = true;
        } else if (strncmp(arg, "-b", 2) == 0) {
            if (arg[2] != '\0')
                value = arg + 2;
            else if (i + 1 < argc)
                value = argv[++i];
            else {
                fprintf(stderr, "spate gensort: option -b needs a value\n");
                return 2;
            }
            if (sp__u128_parse(value, "-b START", &opts->start) != SP_OK) {
                fprintf(stderr, "spate gensort: %s\n", sp_last_error());
                return 2;
            }
        } else if (sp_cmd_gensort_is_opt(arg, "--files")) {
            if ((value = sp_cmd_gensort_value(argc, argv, &i, "--files")) == NULL ||
                !sp_cmd_gensort_number("--files", value, 1, SP_GENSORT_MAX_FILES, &v))
                return 2;
            opts->files = (uint32_t)v;
        } else if (sp_cmd_gensort_is_opt(arg, "--threads")) {
            if ((value = sp_cmd_gensort_value(argc, argv, &i, "--threads")) == NULL ||
                !sp_cmd_gensort_number("--threads", value, 1, SP_GENSORT_MAX_THREADS, &v))
                return 2;
            opts->threads = (unsigned)v;
        } else if (sp_cmd_gensort_is_opt(arg, "--layout")) {
            if ((value = sp_cmd_gensort_value(argc, argv, &i, "--layout")) == NULL)
                return 2;
            if (strcmp(value, "1.5") == 0) {
                opts->layout = SP__GENSORT_V15;
            } else if (strcmp(value, "1.2") == 0) {
                opts->layout = SP__GENSORT_V12;
            } else {
                fprintf(stderr, "spate gensort: --layout '%s' is not 1.5 or 1.2\n", value);
                return 2;
            }
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "spate gensort: unknown option '%s' (see spate gensort --help)\n", arg);
            return 2;
        } else if (npos < 2) {
            positional[npos++] = arg;
        } else {
            fprintf(stderr, "spate gensort: unexpected argument '%s' (see spate gensort --help)\n",
                    arg);
            return 2;
        }
    }
    if (npos < 2) {
        fprintf(stderr, "spate gensort: %s (see spate gensort --help)\n",
                npos == 0 ? "RECORDS and OUTDIR are missing" : "OUTDIR is missing");
        return 2;
    }
    if (!sp_cmd_gensort_number("RECORDS", positional[0], 0, SP_GENSORT_MAX_RECORDS, &opts->records))
        return 2;
    opts->outdir = positional[1];
    return -1;
}

static void sp_cmd_gensort_fail(sp_cmd_gensort_run_t *run, const char *message)
{
    pthread_mutex_lock(&run->lock);
    if (run->error[0] == '\0')
        snprintf(run->error, sizeof(run->error), "%s", message);
    pthread_mutex_unlock(&run->lock);
    atomic_store(&run->failed, true);
}

/* The file holding chunk c: the last file whose first chunk is <= c. */
static sp_cmd_gensort_file_t *sp_cmd_gensort_file_of(sp_cmd_gensort_run_t *run, uint64_t c)
{
    uint32_t lo = 0, hi = run->opts->files - 1;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        if (run->files[mid].chunk0 <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    return &run->files[lo];
}

/* Makes a fully written file durable and gives it its part name. */
static sp_status_t sp_cmd_gensort_publish(sp_cmd_gensort_file_t *file)
{
    int fd = open(file->tmp, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "open %s: %s (errno %d)", file->tmp, strerror(errno), errno);
    if (sp__fsync(fd) != 0) {
        sp_status_t st = sp__write_error("fsync", file->tmp, errno);
        close(fd);
        return st;
    }
    close(fd);
    if (rename(file->tmp, file->path) != 0)
        return sp__write_error("rename to part name", file->tmp, errno);
    atomic_store(&file->renamed, true);
    return SP_OK;
}

static void *sp_cmd_gensort_worker(void *arg)
{
    sp_cmd_gensort_run_t *run = arg;
    const sp_cmd_gensort_opts_t *opts = run->opts;
    const size_t chunk_bytes = (size_t)SP_GENSORT_CHUNK_RECORDS * SP__GENSORT_RECORD_SIZE;
    sp_cmd_gensort_file_t *open_file = NULL;
    unsigned char *buf = sp__malloc(chunk_bytes);
    sp__u128_t sum = 0;
    int fd = -1;
    uint64_t c;

    if (buf == NULL) {
        sp_cmd_gensort_fail(run, "no memory for a 4 MB generation buffer");
        return NULL;
    }
    while (!atomic_load(&run->failed) &&
           (c = atomic_fetch_add(&run->next_chunk, 1)) < run->chunks) {
        sp_cmd_gensort_file_t *file = sp_cmd_gensort_file_of(run, c);
        uint64_t first = (c - file->chunk0) * SP_GENSORT_CHUNK_RECORDS;
        size_t n = (size_t)SP_MIN(file->count - first, (uint64_t)SP_GENSORT_CHUNK_RECORDS);
        sp_status_t st = SP_OK;
        sp__gensort_t gen;

        if (file != open_file) {
            if (fd >= 0)
                close(fd);
            open_file = file;
            if ((fd = open(file->tmp, O_WRONLY | O_CLOEXEC)) < 0) {
                st = SP_RAISE(SP_ERR_IO, "open %s: %s (errno %d)", file->tmp, strerror(errno),
                              errno);
                open_file = NULL;
            }
        }
        if (st == SP_OK && n > 0) {
            sp__gensort_init(&gen, opts->layout, opts->start + file->first + first);
            sp__gensort_fill(&gen, buf, n);
            if (opts->checksum)
                sum += sp__gensort_checksum(buf, n);
            st = sp__pwrite_all(fd, buf, n * SP__GENSORT_RECORD_SIZE,
                                first * SP__GENSORT_RECORD_SIZE, file->tmp);
        }
        if (st == SP_OK && atomic_fetch_sub(&file->chunks_left, 1) == 1)
            st = sp_cmd_gensort_publish(file);
        if (st != SP_OK)
            sp_cmd_gensort_fail(run, sp_last_error());
    }
    if (fd >= 0)
        close(fd);
    sp__free(buf);
    pthread_mutex_lock(&run->lock);
    run->sum += sum;
    pthread_mutex_unlock(&run->lock);
    return NULL;
}

/* "part-00000": five digits, more when there are more files, so names sort in order. */
static int sp_cmd_gensort_digits(uint32_t files)
{
    int digits = 1;

    for (uint32_t n = files - 1; n >= 10; n /= 10)
        digits++;
    return digits < 5 ? 5 : digits;
}

/*
 * Creates OUTDIR when missing and refuses part files this run would not
 * replace. Returns 0 to go on, else the exit code (message printed).
 */
static int sp_cmd_gensort_check_outdir(const sp_cmd_gensort_opts_t *opts, int digits)
{
    struct dirent *de;
    DIR *dir;

    if (mkdir(opts->outdir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "spate gensort: cannot create %s: %s\n", opts->outdir, strerror(errno));
        return 1;
    }
    if ((dir = opendir(opts->outdir)) == NULL) {
        fprintf(stderr, "spate gensort: cannot open %s: %s\n", opts->outdir, strerror(errno));
        return 1;
    }
    while ((de = readdir(dir)) != NULL) {
        const char *name = de->d_name, *p = name + 5;
        unsigned long index;
        char *end;

        if (strncmp(name, "part-", 5) != 0)
            continue;
        errno = 0;
        index = strtoul(p, &end, 10);
        if (*p >= '0' && *p <= '9' && *end == '\0' && errno == 0 && end - p == digits &&
            index < opts->files)
            continue; /* one this run writes again */
        fprintf(stderr,
                "spate gensort: %s already holds %s, which this run would not replace and a "
                "reader of the directory would mix in; remove it or choose another directory\n",
                opts->outdir, name);
        closedir(dir);
        return 1;
    }
    closedir(dir);
    return 0;
}

/* Removes what a failed run wrote. */
static void sp_cmd_gensort_cleanup(sp_cmd_gensort_run_t *run)
{
    for (uint32_t f = 0; f < run->opts->files; f++) {
        if (run->files[f].tmp == NULL)
            continue;
        unlink(run->files[f].tmp);
        if (atomic_load(&run->files[f].renamed))
            unlink(run->files[f].path);
    }
}

static void sp_cmd_gensort_free(sp_cmd_gensort_run_t *run)
{
    for (uint32_t f = 0; run->files != NULL && f < run->opts->files; f++) {
        sp__free(run->files[f].tmp);
        sp__free(run->files[f].path);
    }
    sp__free(run->files);
}

/* Plans the files and creates their temporary files; false (message printed) on error. */
static bool sp_cmd_gensort_prepare(sp_cmd_gensort_run_t *run, int digits)
{
    const sp_cmd_gensort_opts_t *opts = run->opts;
    uint64_t per = opts->records / opts->files, extra = opts->records % opts->files, first = 0;

    run->files = sp__calloc(opts->files, sizeof(*run->files));
    if (run->files == NULL) {
        fprintf(stderr, "spate gensort: no memory for %u files\n", opts->files);
        return false;
    }
    for (uint32_t f = 0; f < opts->files; f++) {
        sp_cmd_gensort_file_t *file = &run->files[f];
        uint64_t chunks;
        int fd;

        file->first = first;
        file->count = per + (f < extra);
        first += file->count;
        chunks = (file->count + SP_GENSORT_CHUNK_RECORDS - 1) / SP_GENSORT_CHUNK_RECORDS;
        chunks = SP_MAX(chunks, (uint64_t)1); /* an empty file is one empty chunk */
        file->chunk0 = run->chunks;
        run->chunks += chunks;
        atomic_init(&file->chunks_left, chunks);
        atomic_init(&file->renamed, false);
        if (asprintf(&file->tmp, "%s/.part-%0*u.tmp", opts->outdir, digits, f) < 0 ||
            asprintf(&file->path, "%s/part-%0*u", opts->outdir, digits, f) < 0) {
            file->tmp = NULL;
            fprintf(stderr, "spate gensort: no memory for file names\n");
            return false;
        }
        fd = open(file->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0) {
            fprintf(stderr, "spate gensort: cannot create %s: %s\n", file->tmp, strerror(errno));
            sp__free(file->tmp);
            file->tmp = NULL;
            return false;
        }
        close(fd);
    }
    return true;
}

int sp_cmd_gensort(sp_cli_t *cli, int argc, char **argv)
{
    sp_cmd_gensort_opts_t opts;
    sp_cmd_gensort_run_t run = {.opts = &opts};
    pthread_t *tids = NULL;
    unsigned threads, started = 0;
    int ret, digits, dirfd;

    (void)cli;
    ret = sp_cmd_gensort_parse(argc, argv, &opts);
    if (ret >= 0)
        return ret;
    digits = sp_cmd_gensort_digits(opts.files);
    if ((ret = sp_cmd_gensort_check_outdir(&opts, digits)) != 0)
        return ret;
    atomic_init(&run.next_chunk, 0);
    atomic_init(&run.failed, false);
    pthread_mutex_init(&run.lock, NULL);
    if (!sp_cmd_gensort_prepare(&run, digits)) {
        ret = 1;
        goto out;
    }

    threads = opts.threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1u;
    }
    threads = (unsigned)SP_MIN((uint64_t)threads, run.chunks);
    tids = sp__calloc(threads, sizeof(*tids));
    for (; tids != NULL && started + 1 < threads; started++) {
        if (pthread_create(&tids[started], NULL, sp_cmd_gensort_worker, &run) != 0)
            break; /* fewer threads do the same work */
    }
    sp_cmd_gensort_worker(&run);
    for (unsigned t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    sp__free(tids);

    if (run.error[0] != '\0') {
        fprintf(stderr, "spate gensort: %s\n", run.error);
        ret = 1;
        goto out;
    }
    /* The renames are durable once the directory is. */
    if ((dirfd = open(opts.outdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        if (sp__fsync(dirfd) != 0) {
            fprintf(stderr, "spate gensort: fsync %s: %s\n", opts.outdir, strerror(errno));
            ret = 1;
        }
        close(dirfd);
    }
    if (ret == 0 && opts.checksum) {
        char hex[SP__U128_HEX_SIZE];
        fprintf(stderr, "%s\n", sp__u128_hex(run.sum, hex));
    }
out:
    if (ret != 0)
        sp_cmd_gensort_cleanup(&run);
    sp_cmd_gensort_free(&run);
    pthread_mutex_destroy(&run.lock);
    return ret;
}
