/*
 * spate-bench: end-to-end runs of the synthetic shuffle job (or TeraSort)
 * on the current launch, local executors by default or every rank under
 * mpirun/srun, printed beside the limits measured in the same run, so that
 * each figure comes with its ratio to what the machine can do at all:
 *
 *   map write         vs a single-threaded memcpy per core, and the
 *                     sequential write bandwidth of shuffle.local_dirs
 *   exchange+reduce   vs raw MPI_Alltoallv of the same bytes between the
 *                     same ranks (under MPI; it too keeps 1/n of them on the
 *                     rank), and, for the bytes that crossed the transport
 *                     (remote_bytes), a bare fi_read loop on the same
 *                     libfabric provider between two local processes
 *   peak memory       the executors' anonymous resident memory (heap, arena
 *                     pages, buffers) vs memory.executor: the target is at
 *                     most SP_BENCH_ANON_TARGET times it. Peak RSS (VmHWM)
 *                     is reported beside it: it also counts the map outputs
 *                     an executor maps, page cache rather than its memory.
 *
 * Rates are of the records' bytes (records x record size), not of the
 * compressed shuffle bytes, so codecs compare on what the user asked to
 * move. Under MPI every rank runs the same loop of jobs (sp_run_job, MPI
 * initialized once for all of them); rank 0 drives, measures the limits
 * that are not collective and writes the output.
 *
 * `spate-bench plot IN.json... --plot OUT.svg` merges the runs of several
 * invocations (scaling runs under different mpirun -np) into one plot.
 * `spate-bench executor` is what local mode starts for each executor.
 */
#include "launcher/cli.h"
#include "launcher/run.h"
#include "spate_bench_limits.h"
#include "spate_bench_plot.h"

#include "common_int.h"
#include "transport/transport_proc.h"

#include <errno.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <spate/memory.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

extern char **environ;

#define SP_BENCH_MAX_LIST  16
#define SP_BENCH_MAX_CONF  64
#define SP_BENCH_LIMIT_CAP ((uint64_t)1 << 30) /* most bytes a limit loop moves */
/* Most peak anonymous memory an executor may hold, as a multiple of memory.executor. */
#define SP_BENCH_ANON_TARGET 1.10

typedef struct sp_bench_opts {
    const char *job; /* "shuffle" or "terasort" */
    uint64_t sizes[SP_BENCH_MAX_LIST];
    unsigned nsizes;
    const char *codecs[SP_BENCH_MAX_LIST];
    unsigned ncodecs;
    const char *memories[SP_BENCH_MAX_LIST]; /* "auto", "1/N" of the data, or a size */
    unsigned nmemories;
    uint32_t record_size, partitions, executors, repeat;
    const char *transport, *provider, *json, *plot, *label;
    const char *input; /* --input DIR: the job reads it instead of generating --size */
    const char *confs[SP_BENCH_MAX_CONF];
    unsigned nconfs;
    const char *job_args[SP_BENCH_MAX_CONF];
    unsigned njob_args;
    bool limits;
    int oversubscribed; /* -1: from the ranks per host and the cores */
} sp_bench_opts_t;

/* What one run measured, on the driver. */
typedef struct sp_bench_limits {
    double memcpy_gbps, alltoallv_gbps, fi_gbps, fi_both_gbps, disk_w_gbps, disk_r_gbps;
    double copy_s; /* the copy floor of the job's bytes (sp_bench_copy_seconds); 0: not measured */
    const char *fi_provider, *disk_method;
    char fi_error[256];
} sp_bench_limits_t;

static void sp_bench_usage(FILE *out)
{
    fprintf(out,
            "usage: spate-bench [--log LEVEL] shuffle|terasort|wordcount|JOB.so [options]\n"
            "       spate-bench plot RUNS.json... --plot OUT.svg\n"
            "\n"
            "Runs spate's shuffle job (or TeraSort, word count, a plugin) end to end on local\n"
            "executor processes, or under mpirun/srun on every rank, and prints each phase\n"
            "beside the limits measured in the same run: memcpy, MPI_Alltoallv, bare fi_read,\n"
            "shuffle.local_dirs, and the copy floor (one process per executor reading the\n"
            "input, or writing --size bytes, and writing as much to the output's directory,\n"
            "through the page cache; the job's total is given as a multiple of it).\n"
            "Memory: the largest peak anonymous RSS of an executor (heap, arena pages, buffers)\n"
            "plus its peak storage memory (map outputs held in memory) against memory.executor\n"
            "(anon/mem; target <= %.2f); peak RSS, which also counts the shuffle files executors\n"
            "map, is in the JSON (peak_rss_max, peak_rss_to_memory), and the anonymous RSS alone\n"
            "(peak_anon_to_memory).\n"
            "\n"
            "options (LIST: comma-separated values, every combination is run):\n"
            "  --size LIST        data per executor, e.g. 256m,1g (default 256m)\n"
            "  --input DIR        the job's input instead of generated data (terasort: gensort\n"
            "                     files; wordcount: text); read into the page cache first\n"
            "  --job-arg K=V      a job argument (repeatable), e.g. vocabulary=4194304 for\n"
            "                     wordcount's generated text\n"
            "  --record-size N    bytes per record, key 10 + value (shuffle; default 100)\n"
            "  --partitions N     reduce partitions (default: the job's, twice the slots)\n"
            "  --codec LIST       none, lz4, zstd (shuffle.codec; default lz4)\n"
            "  --memory LIST      memory.executor: auto (the executor's share), a size, or 1/N:\n"
            "                     unified memory of 1/N of what the executor's running map\n"
            "                     tasks hold at once (its data when less), to force spills\n"
            "                     (memory.reserved + that/N/memory.fraction; default auto)\n"
            "  --transport B      transport.backend (ofi, mpi, local, auto)\n"
            "  --provider P       transport.provider, e.g. tcp;ofi_rxm or shm\n"
            "  --executors N      local mode: executors (default 2)\n"
            "  --repeat N         runs of each combination (default 1)\n"
            "  --conf K=V         any configuration key (repeatable)\n"
            "  --label TEXT       kept in the JSON and the plot's legend (e.g. weak, strong)\n"
            "  --oversubscribed   mark the runs as oversubscribed (default: detected)\n"
            "  --no-limits        skip the limit measurements\n"
            "  --json FILE        write every run as a JSON array of objects\n"
            "  --plot FILE.svg    draw the runs as SVG\n"
            "  -h, --help         print this help\n",
            SP_BENCH_ANON_TARGET);
}

/* Splits a comma list in place into list (at most SP_BENCH_MAX_LIST); false when too long. */
static bool sp_bench_split(char *text, const char **list, unsigned *n_p)
{
    *n_p = 0;
    for (char *save = NULL, *t = strtok_r(text, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (*n_p == SP_BENCH_MAX_LIST)
            return false;
        list[(*n_p)++] = t;
    }
    return *n_p > 0;
}

static int sp_bench_parse(int argc, char **argv, sp_bench_opts_t *o)
{
    *o = (sp_bench_opts_t){.record_size = 100, .repeat = 1, .limits = true, .oversubscribed = -1};
    o->job = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool used = true;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            sp_bench_usage(stdout);
            return 0;
        } else if (strcmp(a, "--no-limits") == 0) {
            o->limits = false;
            continue;
        } else if (strcmp(a, "--oversubscribed") == 0) {
            o->oversubscribed = 1;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "spate-bench: option %s needs a value (see --help)\n", a);
            return 2;
        }
        if (strcmp(a, "--size") == 0) {
            const char *list[SP_BENCH_MAX_LIST];
            if (!sp_bench_split(v, list, &o->nsizes))
                goto bad;
            for (unsigned k = 0; k < o->nsizes; k++)
                if (sp_conf_parse_size(list[k], &o->sizes[k]) != SP_OK || o->sizes[k] == 0) {
                    fprintf(stderr, "spate-bench: --size '%s' is not a size like 256m or 4g\n",
                            list[k]);
                    return 2;
                }
        } else if (strcmp(a, "--codec") == 0) {
            if (!sp_bench_split(v, o->codecs, &o->ncodecs))
                goto bad;
        } else if (strcmp(a, "--memory") == 0) {
            if (!sp_bench_split(v, o->memories, &o->nmemories))
                goto bad;
        } else if (strcmp(a, "--record-size") == 0) {
            if (!sp_cli_parse_u32(v, 11, 64u << 20, &o->record_size))
                goto bad;
        } else if (strcmp(a, "--partitions") == 0) {
            if (!sp_cli_parse_u32(v, 1, 1u << 24, &o->partitions))
                goto bad;
        } else if (strcmp(a, "--executors") == 0) {
            if (!sp_cli_parse_u32(v, 1, 1024, &o->executors))
                goto bad;
        } else if (strcmp(a, "--repeat") == 0) {
            if (!sp_cli_parse_u32(v, 1, 1000, &o->repeat))
                goto bad;
        } else if (strcmp(a, "--transport") == 0) {
            o->transport = v;
        } else if (strcmp(a, "--provider") == 0) {
            o->provider = v;
        } else if (strcmp(a, "--json") == 0) {
            o->json = v;
        } else if (strcmp(a, "--plot") == 0) {
            o->plot = v;
        } else if (strcmp(a, "--label") == 0) {
            o->label = v;
        } else if (strcmp(a, "--input") == 0) {
            o->input = v;
        } else if (strcmp(a, "--job-arg") == 0) {
            if (o->njob_args == SP_BENCH_MAX_CONF || strchr(v, '=') == NULL)
                goto bad;
            o->job_args[o->njob_args++] = v;
        } else if (strcmp(a, "--conf") == 0) {
            if (o->nconfs == SP_BENCH_MAX_CONF)
                goto bad;
            o->confs[o->nconfs++] = v;
        } else {
            used = false;
        }
        if (!used) {
            fprintf(stderr, "spate-bench: unknown option '%s' (see spate-bench --help)\n", a);
            return 2;
        }
        i++;
        continue;
    bad:
        fprintf(stderr, "spate-bench: %s '%s' is out of range or malformed (see --help)\n", a, v);
        return 2;
    }
    if (o->nsizes == 0) {
        o->sizes[0] = 256ull << 20;
        o->nsizes = 1;
    }
    if (o->ncodecs == 0) {
        o->codecs[0] = "lz4";
        o->ncodecs = 1;
    }
    if (o->nmemories == 0) {
        o->memories[0] = "auto";
        o->nmemories = 1;
    }
    return -1;
}

/*
 * memory.executor for a run: "auto" gives 0 (the executor's share). "1/N"
 * sizes the executor so that its unified (execution + storage) memory, what
 * the shuffle writers may hold before they spill, is 1/N of `held`, what its
 * running map tasks hold at once: memory.reserved + held / N / memory.fraction, at least 4 memory
 * pages of unified memory, with memory.reserved (*reserved_p, which the run sets) lowered where
 * needed to the 2/3 of the executor that it may take at most; *spill_p tells such runs apart.
 */
static sp_status_t sp_bench_memory(const sp_conf_t *conf, const char *spec, uint64_t per_executor,
                                   uint64_t *bytes_p, uint64_t *reserved_p, bool *spill_p)
{
    uint64_t reserved = 0, page = 4u << 20;
    double fraction = 0.6;
    uint32_t n;

    *spill_p = false;
    if (strcmp(spec, "auto") == 0) {
        *bytes_p = 0;
        return SP_OK;
    }
    if (strncmp(spec, "1/", 2) == 0 && sp_cli_parse_u32(spec + 2, 1, 1u << 20, &n)) {
        uint64_t unified;
        sp_conf_get_size(conf, "memory.reserved", &reserved);
        sp_conf_get_size(conf, "memory.page_size", &page);
        sp_conf_get_double(conf, "memory.fraction", &fraction);
        unified = SP_MAX(per_executor / n, 4 * page);
        reserved = SP_MIN(reserved, (uint64_t)(2.0 * (double)unified / SP_MAX(fraction, 0.01)));
        *bytes_p = reserved + (uint64_t)((double)unified / SP_MAX(fraction, 0.01));
        *reserved_p = reserved;
        *spill_p = n > 1;
        return SP_OK;
    }
    if (sp_conf_parse_size(spec, bytes_p) != SP_OK)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "--memory '%s' is not auto, 1/N or a size", spec);
    return SP_OK;
}

static double sp_bench_gb(uint64_t bytes, double s) { return s > 0 ? (double)bytes / s / 1e9 : 0; }

static double sp_bench_ratio(double a, double b) { return b > 0 ? a / b : 0; }

static json_t *sp_bench_ratio_json(double a, double b)
{
    return b > 0 && a > 0 ? json_real(a / b) : json_null();
}

static json_t *sp_bench_machine(void)
{
    json_t *m = json_object();
    sp_topology_t *topo = NULL;
    struct utsname u;
    char host[256] = "", line[512], model[256] = "";
    FILE *f;

    gethostname(host, sizeof(host) - 1);
    json_object_set_new(m, "hostname", json_string(host));
    if (uname(&u) == 0)
        json_object_set_new(m, "kernel", json_sprintf("%s %s %s", u.sysname, u.release, u.machine));
    if ((f = fopen("/proc/cpuinfo", "r")) != NULL) {
        while (fgets(line, sizeof(line), f) != NULL)
            if (strncmp(line, "model name", 10) == 0 && strchr(line, ':') != NULL) {
                snprintf(model, sizeof(model), "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = '\0';
                break;
            }
        fclose(f);
    }
    json_object_set_new(m, "cpu", json_string(model));
    json_object_set_new(m, "memory_bytes",
                        json_integer((json_int_t)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE)));
    if (sp_topology_create(NULL, &topo) == SP_OK) {
        json_object_set_new(m, "packages", json_integer(sp_topology_package_count(topo)));
        json_object_set_new(m, "numa_nodes", json_integer(sp_topology_numa_count(topo)));
        json_object_set_new(m, "cores", json_integer(sp_topology_core_count(topo)));
        json_object_set_new(m, "pus", json_integer(sp_topology_pu_count(topo)));
        json_object_set_new(m, "l3_bytes",
                            json_integer((json_int_t)sp_topology_cache_bytes(topo, 3)));
        sp_topology_destroy(topo);
    }
    return m;
}

static double sp_bench_stage_s(const sp__stage_report_t *s)
{
    return s->start_ns && s->end_ns > s->start_ns ? (double)(s->end_ns - s->start_ns) / 1e9 : 0;
}

/* The share of a stage's core time its executors left idle (0 when not measured). */
static double sp_bench_idle_of(uint64_t cpu_ns, uint64_t core_ns)
{
    return core_ns > cpu_ns ? (double)(core_ns - cpu_ns) / (double)core_ns : 0;
}

static double sp_bench_idle(const sp__stage_report_t *s)
{
    return sp_bench_idle_of(s->cpu_ns, s->core_ns);
}

static json_t *sp_bench_phase(double s, uint64_t data, uint64_t records, uint32_t nexec,
                              uint64_t spill)
{
    return json_pack("{s:f, s:f, s:f, s:f, s:I, s:I}", "seconds", s, "gbps_per_executor",
                     sp_bench_gb(data, s) / nexec, "gbps_aggregate", sp_bench_gb(data, s),
                     "records_per_s", s > 0 ? (double)records / s : 0.0, "data_bytes",
                     (json_int_t)data, "spill_bytes", (json_int_t)spill);
}

static int sp_bench_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/*
 * Builds the run's JSON object from the driver's report and prints its
 * rows of the terminal table.
 */
static json_t *sp_bench_record(const sp_bench_opts_t *o, unsigned run, unsigned runs, uint64_t size,
                               const char *codec, const char *mem_spec, uint64_t memory, bool spill,
                               unsigned repeat, int ranks, bool mpi, bool over,
                               const sp_bench_limits_t *lim, const sp__driver_report_t *r,
                               sp_status_t st, json_t *machine)
{
    const sp__stage_report_t *map = &r->stages[SP_STAGE_MAP], *red = &r->stages[SP_STAGE_REDUCE],
                             *smp = &r->stages[SP_STAGE_SAMPLE];
    bool ts = strcmp(o->job, "terasort") == 0, sh = strcmp(o->job, "shuffle") == 0;
    uint32_t nexec = SP_MAX(r->nexecutors, 1u), slots = 0;
    uint64_t rec_size = ts ? 100 : sh ? o->record_size : 0, records = map->records;
    /* Records of a known size, else (word count, plugins) the input's bytes. */
    uint64_t data = rec_size ? records * rec_size : size * nexec, peak = 0, anon = 0, held = 0,
             mem = 0;
    double map_s = sp_bench_stage_s(map), red_s = sp_bench_stage_s(red),
           smp_s = sp_bench_stage_s(smp),
           tot_s = r->end_ns > r->start_ns ? (double)(r->end_ns - r->start_ns) / 1e9 : 0,
           val_s =
               red->end_ns && r->end_ns > red->end_ns ? (double)(r->end_ns - red->end_ns) / 1e9 : 0;
    double map_core, exch_pe, remote_pe, anon_ratio, disk_w;
    char b1[32], b2[32], b3[32], b4[32];
    json_t *obj, *cfg, *phases, *limits, *ratios;

    for (uint32_t e = 0; e < r->nexecutors; e++) {
        slots += r->executors[e].slots;
        peak = SP_MAX(peak, r->executors[e].peak_rss);
        anon = SP_MAX(anon, r->executors[e].peak_anon);
        /* Both peaks together: an upper bound of what the executor held at once. */
        held = SP_MAX(held, r->executors[e].peak_anon + r->executors[e].peak_storage);
        mem = SP_MAX(mem, r->executors[e].memory);
    }
    map_core = slots && map_s > 0 ? sp_bench_gb(data, map_s) / slots : 0;
    exch_pe = sp_bench_gb(data, red_s) / nexec;
    /* fi_read is the network path only: compare the bytes that crossed it. */
    remote_pe = sp_bench_gb(red->remote_bytes, red_s) / nexec;
    anon_ratio = sp_bench_ratio((double)held, (double)mem);
    disk_w = sp_bench_gb(map->bytes + map->spill_bytes, map_s);

    cfg =
        json_pack("{s:s, s:I, s:I, s:I, s:s, s:s, s:I, s:b, s:I, s:I, s:b, s:b, s:I, s:I}", "job",
                  o->job, "size_per_executor", (json_int_t)size, "record_size",
                  (json_int_t)rec_size, "partitions", (json_int_t)r->partitions, "codec", codec,
                  "memory_spec", mem_spec, "memory_executor", (json_int_t)mem, "spill", spill,
                  "executors", (json_int_t)nexec, "ranks", (json_int_t)ranks, "mpi", mpi,
                  "oversubscribed", over, "repeat", (json_int_t)repeat, "slots", (json_int_t)slots);
    json_object_set_new(cfg, "transport", json_string(o->transport ? o->transport : "default"));
    json_object_set_new(cfg, "provider", json_string(o->provider ? o->provider : "default"));
    json_object_set_new(cfg, "label", json_string(o->label ? o->label : ""));
    json_object_set_new(cfg, "maps", json_integer(r->maps));
    (void)memory;
    phases = json_object();
    json_object_set_new(phases, "map",
                        sp_bench_phase(map_s, data, records, nexec, map->spill_bytes));
    json_object_set_new(phases, "exchange",
                        sp_bench_phase(red_s, data, red->records, nexec, red->spill_bytes));
    /* The driver's core time per stage: the share its executors' slots left idle. */
    json_object_set_new(json_object_get(phases, "map"), "idle_core_fraction",
                        json_real(sp_bench_idle(map)));
    json_object_set_new(json_object_get(phases, "exchange"), "idle_core_fraction",
                        json_real(sp_bench_idle(red)));
    json_object_set_new(
        phases, "total",
        sp_bench_phase(tot_s, data, records, nexec, map->spill_bytes + red->spill_bytes));
    /* Map and reduce together, from the map stage's start to the reduce stage's end (they
     * overlap under shuffle.reduce_slowstart). */
    json_object_set_new(json_object_get(phases, "total"), "idle_core_fraction",
                        json_real(sp_bench_idle_of(r->cpu_ns, r->core_ns)));
    json_object_set_new(json_object_get(phases, "total"), "reduces_started_early",
                        json_integer(r->reduces_early));
    if (ts) {
        json_object_set_new(phases, "sample", sp_bench_phase(smp_s, data, records, nexec, 0));
        json_object_set_new(phases, "validation", sp_bench_phase(val_s, data, records, nexec, 0));
    }
    limits = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "memcpy_gbps", lim->memcpy_gbps,
                       "alltoallv_gbps_per_rank", lim->alltoallv_gbps, "fi_read_gbps", lim->fi_gbps,
                       "fi_read_both_ways_gbps", lim->fi_both_gbps, "disk_write_gbps",
                       lim->disk_w_gbps, "disk_read_gbps", lim->disk_r_gbps);
    json_object_set_new(limits, "fi_provider",
                        lim->fi_provider ? json_string(lim->fi_provider) : json_null());
    json_object_set_new(limits, "fi_error",
                        lim->fi_error[0] ? json_string(lim->fi_error) : json_null());
    json_object_set_new(limits, "disk_method",
                        lim->disk_method ? json_string(lim->disk_method) : json_null());
    json_object_set_new(limits, "copy_floor_seconds",
                        lim->copy_s > 0 ? json_real(lim->copy_s) : json_null());
    ratios = json_object();
    json_object_set_new(ratios, "map_per_core_to_memcpy",
                        sp_bench_ratio_json(map_core, lim->memcpy_gbps));
    json_object_set_new(ratios, "map_write_to_disk_write",
                        sp_bench_ratio_json(disk_w, lim->disk_w_gbps));
    json_object_set_new(ratios, "exchange_to_alltoallv",
                        sp_bench_ratio_json(exch_pe, lim->alltoallv_gbps));
    /* Against the faster of the two patterns: the most the provider moved. */
    json_object_set_new(ratios, "exchange_remote_to_fi_read",
                        sp_bench_ratio_json(remote_pe, SP_MAX(lim->fi_gbps, lim->fi_both_gbps)));
    json_object_set_new(ratios, "exchange_remote_to_fi_read_one_way",
                        sp_bench_ratio_json(remote_pe, lim->fi_gbps));
    json_object_set_new(ratios, "exchange_remote_to_fi_read_both_ways",
                        sp_bench_ratio_json(remote_pe, lim->fi_both_gbps));
    json_object_set_new(ratios, "peak_anon_to_memory",
                        sp_bench_ratio_json((double)anon, (double)mem));
    json_object_set_new(ratios, "peak_anon_storage_to_memory",
                        sp_bench_ratio_json((double)held, (double)mem));
    json_object_set_new(ratios, "peak_rss_to_memory",
                        sp_bench_ratio_json((double)peak, (double)mem));
    json_object_set_new(ratios, "spill_write_to_nospill", json_null());
    /* Seconds over seconds: how many copy floors the whole job took (lower is better). */
    json_object_set_new(ratios, "total_to_copy_floor", sp_bench_ratio_json(tot_s, lim->copy_s));

    obj = json_object();
    json_object_set_new(obj, "bench", json_string(o->job));
    json_object_set_new(obj, "version", json_string(sp_version()));
    json_object_set_new(obj, "succeeded", json_boolean(st == SP_OK));
    json_object_set_new(obj, "status", json_string(sp_status_str(st)));
    json_object_set_new(obj, "config", cfg);
    json_object_set_new(obj, "machine", json_incref(machine));
    json_object_set_new(obj, "phases", phases);
    json_object_set_new(obj, "records", json_integer((json_int_t)records));
    json_object_set_new(obj, "shuffle_bytes", json_integer((json_int_t)map->bytes));
    json_object_set_new(obj, "remote_bytes", json_integer((json_int_t)red->remote_bytes));
    json_object_set_new(obj, "spill_bytes",
                        json_integer((json_int_t)(map->spill_bytes + red->spill_bytes)));
    json_object_set_new(obj, "peak_rss_max", json_integer((json_int_t)peak));
    json_object_set_new(obj, "peak_anon_max", json_integer((json_int_t)anon));
    {
        json_t *execs = json_array();

        for (uint32_t e = 0; e < r->nexecutors; e++) {
            const sp__executor_report_t *x = &r->executors[e];
            json_array_append_new(
                execs, json_pack("{s:I, s:s, s:I, s:I, s:I, s:I}", "id", (json_int_t)x->id, "host",
                                 x->host, "memory", (json_int_t)x->memory, "peak_anon",
                                 (json_int_t)x->peak_anon, "peak_rss", (json_int_t)x->peak_rss,
                                 "peak_execution", (json_int_t)x->peak_execution));
        }
        json_object_set_new(obj, "executors", execs);
    }
    json_object_set_new(obj, "limits", limits);
    json_object_set_new(obj, "ratios", ratios);
    if (ts)
        json_object_set_new(obj, "note",
                            json_string("generation runs inside the map tasks and is not timed "
                                        "apart from sorting and writing: phases.map holds both; "
                                        "phases.validation is the driver's finish (valsort)"));

    sp_cli_human(b1, sizeof(b1), (double)size);
    sp_cli_human(b2, sizeof(b2), (double)(map->spill_bytes + red->spill_bytes));
    sp_cli_human(b3, sizeof(b3), (double)held);
    sp_cli_human(b4, sizeof(b4), (double)peak);
    printf("\nrun %u/%u: %s, %s per executor x %u executor(s)%s, codec %s, memory %s%s, "
           "%llu-byte records, %u maps x %u partitions: %s\n",
           run, runs, o->job, b1, nexec, over ? " (oversubscribed)" : "", codec, mem_spec,
           spill ? " (spill)" : "", (unsigned long long)rec_size, r->maps, r->partitions,
           st == SP_OK ? "ok" : sp_status_str(st));
    printf("  %-16s %8s %10s %10s %10s  %s\n", "phase", "s", "GB/s/exec", "GB/s agg", "Mrec/s",
           "ratio to the limit measured now");
    if (ts)
        printf("  %-16s %8.2f %10s %10s %10s\n", "sample", smp_s, "", "", "");
    printf("  %-16s %8.2f %10.3f %10.3f %10.2f  %.2fx memcpy per core (%.2f GB/s/core vs %.2f); "
           "%.2fx disk write (%.2f of %.2f GB/s, %s)\n",
           ts ? (o->input != NULL ? "read+sort+write" : "gen+sort+write") : "map write", map_s,
           sp_bench_gb(data, map_s) / nexec, sp_bench_gb(data, map_s),
           map_s > 0 ? (double)records / map_s / 1e6 : 0,
           sp_bench_ratio(map_core, lim->memcpy_gbps), map_core, lim->memcpy_gbps,
           sp_bench_ratio(disk_w, lim->disk_w_gbps), disk_w, lim->disk_w_gbps,
           lim->disk_method ? lim->disk_method : "not measured");
    printf("  %-16s %8.2f %10.3f %10.3f %10.2f  ", "exchange+reduce", red_s, exch_pe,
           sp_bench_gb(data, red_s), red_s > 0 ? (double)red->records / red_s / 1e6 : 0);
    if (lim->alltoallv_gbps > 0)
        printf("%.2fx MPI_Alltoallv (%.2f GB/s/rank); ",
               sp_bench_ratio(exch_pe, lim->alltoallv_gbps), lim->alltoallv_gbps);
    if (lim->fi_gbps > 0)
        printf("remote %.3f GB/s/exec = %.2fx bare fi_read on %s (one way %.2f GB/s, both ways "
               "%.2f GB/s each)\n",
               remote_pe, sp_bench_ratio(remote_pe, SP_MAX(lim->fi_gbps, lim->fi_both_gbps)),
               lim->fi_provider ? lim->fi_provider : "?", lim->fi_gbps, lim->fi_both_gbps);
    else
        printf("bare fi_read: %s\n", lim->fi_error[0] ? lim->fi_error : "not measured");
    if (ts)
        printf("  %-16s %8.2f\n", "validation", val_s);
    printf("  %-16s %8.2f %10.3f %10.3f %10.2f  spilled %s; peak anon RSS + storage %s = %.2fx "
           "memory.executor%s (RSS with mapped files %s)\n",
           "total", tot_s, sp_bench_gb(data, tot_s) / nexec, sp_bench_gb(data, tot_s),
           tot_s > 0 ? (double)records / tot_s / 1e6 : 0, b2, b3, anon_ratio,
           anon_ratio > SP_BENCH_ANON_TARGET ? ", above the target" : "", b4);
    printf("  %-16s %7.0f%% of the map stage's core time, %.0f%% of the reduce stage's, %.0f%% "
           "of both together (%u reduce tasks started before the maps ended)\n",
           "idle cores", 100 * sp_bench_idle(map), 100 * sp_bench_idle(red),
           100 * sp_bench_idle_of(r->cpu_ns, r->core_ns), r->reduces_early);
    if (lim->copy_s > 0)
        printf("  %-16s %8.2f  the total is %.2fx the copy floor (%u processes %s through "
               "the page cache)\n",
               "copy floor", lim->copy_s, sp_bench_ratio(tot_s, lim->copy_s), nexec,
               o->input != NULL ? "reading the input and writing as much"
                                : "writing as many bytes");
    fflush(stdout);
    return obj;
}

/* Fills ratios.spill_write_to_nospill: each spill run against the no-spill run of its kind. */
static void sp_bench_spill_ratios(json_t *runs)
{
    size_t i, j;
    json_t *a, *b;

    json_array_foreach(runs, i, a)
    {
        const json_t *ca = json_object_get(a, "config");
        double best = 0, wa;
        if (!json_is_true(json_object_get(ca, "spill")))
            continue;
        json_array_foreach(runs, j, b)
        {
            const json_t *cb = json_object_get(b, "config");
            if (json_is_true(json_object_get(cb, "spill")) ||
                !json_equal(json_object_get(ca, "size_per_executor"),
                            json_object_get(cb, "size_per_executor")) ||
                !json_equal(json_object_get(ca, "codec"), json_object_get(cb, "codec")) ||
                !json_is_true(json_object_get(b, "succeeded")))
                continue;
            best = SP_MAX(
                best, json_real_value(json_object_get(
                          json_object_get(json_object_get(b, "phases"), "map"), "gbps_aggregate")));
        }
        wa = json_real_value(json_object_get(json_object_get(json_object_get(a, "phases"), "map"),
                                             "gbps_aggregate"));
        if (best > 0 && wa > 0)
            json_object_set_new(json_object_get(a, "ratios"), "spill_write_to_nospill",
                                json_real(wa / best));
    }
}

/* One line per run: the summary table at the end. */
static void sp_bench_summary(const json_t *runs)
{
    size_t i;
    const json_t *r;

    printf("\n%-4s %9s %5s %5s %6s %7s %7s %7s %7s %8s %8s %8s %8s %8s %8s\n", "run", "size/exec",
           "exec", "codec", "memory", "map s", "exch s", "total s", "GB/s/ex", "map/mcpy",
           "exch/a2a", "remote/fi", "spill/ns", "tot/copy", "anon/mem");
    json_array_foreach(runs, i, r)
    {
        const json_t *c = json_object_get(r, "config"), *p = json_object_get(r, "phases"),
                     *q = json_object_get(r, "ratios");
        double anon = json_number_value(json_object_get(q, "peak_anon_storage_to_memory"));
        char sz[32];
#define SP_R(k)     json_number_value(json_object_get(q, k))
#define SP_P(ph, k) json_number_value(json_object_get(json_object_get(p, ph), k))
        sp_cli_human(sz, sizeof(sz), json_number_value(json_object_get(c, "size_per_executor")));
        printf("%-4zu %9s %4lld%s %5s %6s %7.2f %7.2f %7.2f %7.3f %8.2f %8.2f %8.2f %8.2f %8.2f "
               "%7.2f%s%s\n",
               i + 1, sz, (long long)json_integer_value(json_object_get(c, "executors")),
               json_is_true(json_object_get(c, "oversubscribed")) ? "*" : " ",
               json_string_value(json_object_get(c, "codec")),
               json_string_value(json_object_get(c, "memory_spec")), SP_P("map", "seconds"),
               SP_P("exchange", "seconds"), SP_P("total", "seconds"),
               SP_P("total", "gbps_per_executor"), SP_R("map_per_core_to_memcpy"),
               SP_R("exchange_to_alltoallv"), SP_R("exchange_remote_to_fi_read"),
               SP_R("spill_write_to_nospill"), SP_R("total_to_copy_floor"), anon,
               anon > SP_BENCH_ANON_TARGET ? "!" : " ",
               json_is_true(json_object_get(r, "succeeded")) ? "" : "  FAILED");
#undef SP_R
#undef SP_P
    }
    printf("(* oversubscribed; 0.00: limit not measured here; anon/mem: largest peak anonymous "
           "RSS + peak storage memory of an executor / memory.executor, ! above the target of "
           "%.2f; tot/copy: total seconds / the copy floor's)\n",
           SP_BENCH_ANON_TARGET);
}

static sp_status_t sp_bench_write_json(const char *path, const json_t *runs)
{
    char tmp[4096];

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "JSON path %s is too long", path);
    if (json_dump_file(runs, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        unlink(tmp);
        return SP_RAISE(SP_ERR_IO, "cannot write %s", tmp);
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return SP_RAISE(SP_ERR_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
    }
    return SP_OK;
}

/* This process's rank from the launcher's environment (before MPI_Init); 0 outside MPI. */
static int sp_bench_env_rank(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(vars); i++)
        if (getenv(vars[i]) != NULL)
            return atoi(getenv(vars[i]));
    return 0;
}

/* The first entry of shuffle.local_dirs. */
static void sp_bench_local_dir(const sp_conf_t *conf, char *buf, size_t cap)
{
    const char *dirs = "/tmp/spate";

    sp_conf_get_string(conf, "shuffle.local_dirs", &dirs);
    snprintf(buf, cap, "%s", dirs);
    buf[strcspn(buf, ",")] = '\0';
}

static int sp_bench_visible(const struct dirent *de)
{
    return de->d_name[0] != '.' && de->d_name[0] != '_';
}

/*
 * The input's files as the built-in jobs read them (a file, or the regular
 * files of a directory whose names do not start with '.' or '_', in name
 * order), malloc'ed, and their bytes.
 */
static sp_status_t sp_bench_list_input(const char *input, char ***files_p, size_t *n_p,
                                       uint64_t *bytes_p)
{
    struct dirent **names = NULL;
    struct stat sb;
    char **files;
    int n;

    *files_p = NULL;
    *n_p = 0;
    *bytes_p = 0;
    if (stat(input, &sb) != 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "%s: %s", input, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) {
        if ((files = malloc(sizeof(*files))) == NULL || (files[0] = strdup(input)) == NULL) {
            free(files);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the input's name");
        }
        *files_p = files;
        *n_p = 1;
        *bytes_p = (uint64_t)sb.st_size;
        return SP_OK;
    }
    if ((n = scandir(input, &names, sp_bench_visible, alphasort)) < 0)
        return SP_RAISE(SP_ERR_IO, "%s: cannot list: %s", input, strerror(errno));
    files = calloc((size_t)n + 1, sizeof(*files));
    for (int i = 0; i < n; i++) {
        char *path = NULL;
        if (files != NULL && asprintf(&path, "%s/%s", input, names[i]->d_name) >= 0 &&
            stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
            files[(*n_p)++] = path;
            *bytes_p += (uint64_t)sb.st_size;
        } else {
            free(path);
        }
        free(names[i]);
    }
    free(names);
    if (files == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the input's names");
    *files_p = files;
    if (*n_p == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "%s holds no input file", input);
    return SP_OK;
}

static int sp_bench_run(sp_conf_t *base, sp_bench_opts_t *o)
{
    bool mpi = sp_run_under_mpi(), driver_rank = sp_bench_env_rank() == 0, over = false;
    sp_bench_fi_server_t fis = {.fd = -1};
    sp_bench_limits_t lim = {0};
    const sp_job_t *job = NULL;
    void *plugin = NULL;
    json_t *runs = json_array(), *machine = NULL;
    char **inputs = NULL;
    size_t ninputs = 0;
    int rank = 0, size = 1, ret = 0;
    unsigned runs_total, run = 0;
    uint32_t executors = o->executors ? o->executors : 2;
    const char *backend = "ofi";
    char dir[4096];
    sp_status_t st;

    if (o->transport != NULL && sp_conf_set(base, "transport.backend", o->transport) != SP_OK)
        goto bad_conf;
    if (o->provider != NULL && sp_conf_set(base, "transport.provider", o->provider) != SP_OK)
        goto bad_conf;
    for (unsigned i = 0; i < o->nconfs; i++)
        if (sp_conf_set_assignment(base, o->confs[i]) != SP_OK)
            goto bad_conf;
    for (unsigned i = 0; i < o->ncodecs; i++)
        if (sp_conf_set(base, "shuffle.codec", o->codecs[i]) != SP_OK)
            goto bad_conf;
    sp_conf_get_string(base, "transport.backend", &backend);
    if (!mpi && strcmp(backend, "mpi") == 0) {
        fprintf(stderr, "spate-bench: transport.backend=mpi needs MPI: run under mpirun/srun\n");
        json_decref(runs);
        return 2;
    }
    if ((st = sp__job_load(o->job, &job, &plugin)) != SP_OK) {
        fprintf(stderr, "spate-bench: %s\n", sp_last_error());
        json_decref(runs);
        return 2;
    }
    /* The fi_read server is forked before anything opens libfabric or MPI. */
    if (o->limits && driver_rank) {
        /* rxm sized as the executors' transport will size it (the probe opens libfabric first). */
        sp__transport_prepare_env(base);
        const char *prov = "";
        sp_conf_get_string(base, "transport.provider", &prov);
        sp_bench_fi_server_start(prov, &fis);
    }
    if (mpi) {
        if ((st = sp_run_mpi_init(&rank, &size)) != SP_OK) {
            fprintf(stderr, "spate-bench: %s\n", sp_last_error());
            sp_bench_fi_server_stop(&fis);
            sp__job_unload(plugin);
            json_decref(runs);
            return 1;
        }
        executors = (uint32_t)size;
    }
    if (o->oversubscribed >= 0) {
        over = o->oversubscribed == 1;
    } else {
        /* More executors on this host than cores: each executor's threads share cores. */
        sp_topology_t *topo = NULL;
        uint32_t here = mpi ? (uint32_t)atoi(getenv("OMPI_COMM_WORLD_LOCAL_SIZE")
                                                 ? getenv("OMPI_COMM_WORLD_LOCAL_SIZE")
                                                 : "1")
                            : executors;
        if (sp_topology_create(NULL, &topo) == SP_OK) {
            over = here > sp_topology_core_count(topo);
            sp_topology_destroy(topo);
        }
    }
    sp_bench_local_dir(base, dir, sizeof(dir));
    if (o->input != NULL) {
        uint64_t bytes = 0;
        if ((st = sp_bench_list_input(o->input, &inputs, &ninputs, &bytes)) != SP_OK) {
            fprintf(stderr, "spate-bench: --input %s\n", sp_last_error());
            ret = 2;
            goto out;
        }
        /* The input's bytes are the run's data: its share per executor is the one size. */
        o->sizes[0] = SP_MAX(bytes / executors, (uint64_t)1);
        o->nsizes = 1;
    }
    if (rank == 0) {
        uint64_t biggest = 0;
        machine = sp_bench_machine();
        for (unsigned i = 0; i < o->nsizes; i++)
            biggest = SP_MAX(biggest, o->sizes[i]);
        if (o->limits) {
            double s = 0, bs = 0, ws = 0, rs = 0;
            uint64_t fb = SP_MIN(biggest, SP_BENCH_LIMIT_CAP);
            uint64_t db = SP_MIN(biggest * executors, SP_BENCH_LIMIT_CAP);
            db = SP_MAX(db - db % (4u << 20), (uint64_t)4 << 20);
            if (sp_bench_fi_read_seconds(&fis, NULL, fb, 1u << 20, &s, &bs, &lim.fi_provider) ==
                    SP_OK &&
                s > 0 && bs > 0) {
                lim.fi_gbps = sp_bench_gb(fb, s);
                lim.fi_both_gbps = sp_bench_gb(fb, bs);
            } else
                snprintf(lim.fi_error, sizeof(lim.fi_error), "%s", sp_last_error());
            if (sp_bench_disk_seconds(dir, db, &ws, &rs, &lim.disk_method) == SP_OK) {
                lim.disk_w_gbps = sp_bench_gb(db, ws);
                lim.disk_r_gbps = sp_bench_gb(db, rs);
            } else {
                fprintf(stderr, "spate-bench: disk limit: %s\n", sp_last_error());
            }
        }
    }
    /* The other ranks wait without spinning while rank 0 measures alone. */
    if (o->limits && mpi)
        sp_bench_quiet_barrier(MPI_COMM_WORLD);
    runs_total = o->nsizes * o->ncodecs * o->nmemories * o->repeat;
    for (unsigned si = 0; si < o->nsizes; si++) {
        uint64_t sz = o->sizes[si];
        if (o->limits && rank == 0) {
            double s = sp_run_memcpy_seconds(SP_MIN(sz, SP_BENCH_LIMIT_CAP));
            lim.memcpy_gbps = sp_bench_gb(SP_MIN(sz, SP_BENCH_LIMIT_CAP), s);
            lim.copy_s = 0;
            if (sp_bench_copy_seconds(o->input != NULL ? (const char *const *)inputs : NULL,
                                      ninputs, sz * executors, dir, executors,
                                      &lim.copy_s) != SP_OK) {
                fprintf(stderr, "spate-bench: copy floor: %s\n", sp_last_error());
                lim.copy_s = 0;
            }
        }
        if (o->limits && mpi) {
            sp_bench_quiet_barrier(MPI_COMM_WORLD);
            double s = 0;
            /* Collective: every rank moves the data per executor of this size. */
            if (sp_bench_alltoallv_seconds(MPI_COMM_WORLD, sz, &s) == SP_OK)
                lim.alltoallv_gbps = sp_bench_gb(sz, s);
        }
        for (unsigned ci = 0; ci < o->ncodecs; ci++)
            for (unsigned mi = 0; mi < o->nmemories; mi++)
                for (unsigned rep = 0; rep < o->repeat; rep++) {
                    sp_conf_t *conf = NULL;
                    sp_job_params_t params = {0};
                    sp__driver_report_t report = {0};
                    char vs[32], ks[32], ms[48], memtext[32], restext[32], out[4200] = "";
                    const char *args[3 + SP_BENCH_MAX_CONF] = {vs, ks, ms};
                    size_t nargs = strcmp(o->job, "shuffle") == 0 ? 3 : 0;
                    uint64_t mem = 0, reserved = 0;
                    bool spill = false, is_driver = false;

                    run++;
                    /*
                     * A map task per slot at least, so that small sizes use every executor;
                     * 1/N memory is of what an executor's running map tasks hold at once
                     * (its slots' tasks, or all its data when that is less), so that every
                     * run of a 1/N row spills whatever its size.
                     */
                    uint64_t maps, held;
                    {
                        uint32_t slots = executors;
                        uint64_t total = sz * executors;
                        sp_run_slots(base, executors, &slots, NULL);
                        maps = SP_MAX((total + (64u << 20) - 1) / (64u << 20), (uint64_t)slots);
                        held = SP_MIN(sz, total / maps * SP_MAX(slots / executors, 1u));
                        snprintf(ms, sizeof(ms), "maps=%llu", (unsigned long long)maps);
                    }
                    if ((st = sp_bench_memory(base, o->memories[mi], held, &mem, &reserved,
                                              &spill)) != SP_OK ||
                        (st = sp_conf_dup(base, &conf)) != SP_OK) {
                        fprintf(stderr, "spate-bench: %s\n", sp_last_error());
                        ret = 2;
                        goto out;
                    }
                    snprintf(memtext, sizeof(memtext), "%llu", (unsigned long long)mem);
                    snprintf(restext, sizeof(restext), "%llu", (unsigned long long)reserved);
                    snprintf(vs, sizeof(vs), "value_size=%u", o->record_size - 10);
                    snprintf(ks, sizeof(ks), "key_size=10");
                    if (sp_conf_set(conf, "shuffle.codec", o->codecs[ci]) != SP_OK ||
                        sp_conf_set(conf, "shuffle.compress",
                                    strcmp(o->codecs[ci], "none") ? "true" : "false") != SP_OK ||
                        sp_conf_set(conf, "memory.executor", memtext) != SP_OK ||
                        (spill && sp_conf_set(conf, "memory.reserved", restext) != SP_OK)) {
                        fprintf(stderr, "spate-bench: %s\n", sp_last_error());
                        sp_conf_destroy(conf);
                        ret = 2;
                        goto out;
                    }
                    for (unsigned k = 0; k < o->njob_args; k++)
                        args[nargs++] = o->job_args[k];
                    params = (sp_job_params_t){.size = o->input != NULL ? 0 : sz * executors,
                                               .input = o->input,
                                               .partitions = o->partitions,
                                               .args = args,
                                               .nargs = nargs,
                                               .conf = conf,
                                               .executors = executors};
                    /* Every job but the synthetic shuffle writes its output, as its users' do. */
                    if (strcmp(o->job, "shuffle") != 0) {
                        snprintf(out, sizeof(out), "%s/spate-bench-out.%ld.%u", dir, (long)getpid(),
                                 run);
                        params.output = out;
                    }
                    if (!mpi &&
                        (st = sp_run_slots(conf, executors, &params.slots, NULL)) != SP_OK) {
                        fprintf(stderr, "spate-bench: %s\n", sp_last_error());
                        sp_conf_destroy(conf);
                        ret = 2;
                        goto out;
                    }
                    sp_run_request_t req = {.conf = conf,
                                            .job = job,
                                            .job_name = o->job,
                                            .params = &params,
                                            .executors = executors,
                                            .prog = "spate-bench"};
                    st = sp_run_job(&req, &report, &is_driver);
                    if (is_driver) {
                        json_array_append_new(runs,
                                              sp_bench_record(o, run, runs_total, sz, o->codecs[ci],
                                                              o->memories[mi], mem, spill, rep + 1,
                                                              (int)executors, mpi, over, &lim,
                                                              &report, st, machine));
                        if (st != SP_OK) {
                            fprintf(stderr, "spate-bench: %s\n", sp_last_error());
                            ret = 1;
                        }
                    }
                    if (out[0] != '\0')
                        nftw(out, sp_bench_rm, 16, FTW_DEPTH | FTW_PHYS);
                    sp__driver_report_clear(&report);
                    sp_conf_destroy(conf);
                }
    }
    if (rank == 0) {
        sp_bench_spill_ratios(runs);
        sp_bench_summary(runs);
        if (o->json != NULL && sp_bench_write_json(o->json, runs) != SP_OK) {
            fprintf(stderr, "spate-bench: --json: %s\n", sp_last_error());
            ret = 1;
        }
        if (o->plot != NULL && sp_bench_plot_svg(o->plot, runs) != SP_OK) {
            fprintf(stderr, "spate-bench: --plot: %s\n", sp_last_error());
            ret = 1;
        }
    }
out:
    for (size_t i = 0; i < ninputs; i++)
        free(inputs[i]);
    free(inputs);
    sp_bench_fi_server_stop(&fis);
    if (mpi)
        sp_run_mpi_finalize();
    json_decref(machine);
    json_decref(runs);
    sp__job_unload(plugin);
    return ret;
bad_conf:
    fprintf(stderr, "spate-bench: %s\n", sp_last_error());
    json_decref(runs);
    return 2;
}

/* `spate-bench plot IN.json... --plot OUT.svg`: one plot of many invocations' runs. */
static int sp_bench_plot_cmd(int argc, char **argv)
{
    json_t *all = json_array();
    const char *out = NULL;
    int ret = 0;

    for (int i = 1; i < argc && ret == 0; i++) {
        json_error_t err;
        json_t *in;
        if (strcmp(argv[i], "--plot") == 0 && i + 1 < argc) {
            out = argv[++i];
            continue;
        }
        if ((in = json_load_file(argv[i], 0, &err)) == NULL || !json_is_array(in)) {
            fprintf(stderr, "spate-bench plot: %s: %s\n", argv[i],
                    in ? "not an array of runs" : err.text);
            ret = 2;
        } else {
            json_array_extend(all, in);
        }
        json_decref(in);
    }
    if (ret == 0 && out == NULL) {
        fprintf(stderr, "spate-bench plot: which --plot FILE.svg?\n");
        ret = 2;
    }
    if (ret == 0 && sp_bench_plot_svg(out, all) != SP_OK) {
        fprintf(stderr, "spate-bench plot: %s\n", sp_last_error());
        ret = 1;
    }
    json_decref(all);
    return ret;
}

int main(int argc, char **argv)
{
    sp_cli_t cli = {.prog = argv[0]};
    sp_bench_opts_t o;
    int i = 1, ret;

    /* `--log LEVEL` first: local mode starts executors as `<this> --log L executor ...`. */
    while (i + 1 < argc && strcmp(argv[i], "--log") == 0) {
        sp_log_level_t level;
        if (sp_log_level_parse(argv[i + 1], &level) != SP_OK) {
            fprintf(stderr, "spate-bench: --log: %s\n", sp_last_error());
            return 2;
        }
        sp_log_set_level(level);
        i += 2;
    }
    if (i >= argc || strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
        sp_bench_usage(i >= argc ? stderr : stdout);
        return i >= argc ? 2 : 0;
    }
    if (strcmp(argv[i], "plot") == 0)
        return sp_bench_plot_cmd(argc - i, argv + i);
    /* A job: a built-in one, or a plugin's path (sp__job_load says which is not). */
    if (strcmp(argv[i], "executor") != 0 && strcmp(argv[i], "shuffle") != 0 &&
        strcmp(argv[i], "terasort") != 0 && strcmp(argv[i], "wordcount") != 0 &&
        strchr(argv[i], '/') == NULL) {
        fprintf(stderr,
                "spate-bench: unknown command '%s' (shuffle, terasort, wordcount, a job "
                "plugin's path, or plot)\n",
                argv[i]);
        return 2;
    }
    if (sp_conf_create(&cli.conf) != SP_OK || sp_conf_load_env(cli.conf, environ) != SP_OK) {
        fprintf(stderr, "spate-bench: configuration: %s\n", sp_last_error());
        sp_conf_destroy(cli.conf);
        return 2;
    }
    if (strcmp(argv[i], "executor") == 0) {
        ret = sp_cmd_executor(&cli, argc - i - 1, argv + i + 1);
    } else if ((ret = sp_bench_parse(argc - i, argv + i, &o)) < 0) {
        ret = sp_bench_run(cli.conf, &o);
    }
    sp_conf_destroy(cli.conf);
    return ret;
}
