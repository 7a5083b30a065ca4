/*
 * The terasort job: sorts 100-byte records by their 10-byte keys, the sort
 * benchmark's way. A graph job (<spate/graph.h>): a generated source (one
 * partition per split, with a cheap sampler) -> sort_by_key -> a
 * map_partitions that checks and checksums the sorted records -> save. Input is either generated
 * inside the map tasks (--size: gensort 1.5 records, record n of the whole data set the same
 * whichever task makes it, so the data set equals `gensort -b0 N`) or read from
 * --input (a directory of such files, or one file). Records are range
 * partitioned on bounds cut from a sample (a few keys per split, made by
 * skip-ahead for generated input, so sampling costs microseconds), sorted by
 * key on the map side and merged on the reduce side; reduce task p writes
 * part-r-p, so the concatenation of the output files in name order is the
 * sorted data set.
 *
 * Checks. The source sums the CRC-32 of every input record (counter 0) and
 * counts them (counter 1); the sorted side does the same over what it saves
 * (counters 2 and 3) and refuses a key below the previous one. The CRCs are
 * computed a batch of records at a time (sp__gensort_checksum: four at once
 * with VPCLMULQDQ), in the source right before the batch is emitted, on the
 * sorted side over the batch of output records it has just assembled, which
 * it then hands to the save as one record (one write). finish_graph()
 * then runs valsort over the output files: in order across files, as many
 * records as the input, the same checksum. That is valsort's own proof that
 * the output is a permutation of the input (up to CRC collisions).
 */
#include "common_int.h"
#include "executor/executor_int.h"
#include "gensort.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Records per map split: 64 MiB rounded down to whole records. */
#define SP_TS_SPLIT_RECORDS ((64ull << 20) / SP__GENSORT_RECORD_SIZE)
/* Records per chunk a map task generates or reads at once (1 MB). */
#define SP_TS_CHUNK          10000u
#define SP_TS_MAX_PARTITIONS (1u << 20)
/*
 * Records checksummed at once, right before they are emitted (map) or
 * written (reduce): 12.8 KB, in L1 between the two.
 */
#define SP_TS_CRC_BATCH 128u

enum {
    SP_TS_IN_CHECKSUM = 0,
    SP_TS_IN_RECORDS = 1,
    SP_TS_OUT_CHECKSUM = 2,
    SP_TS_OUT_RECORDS = 3,
};

typedef struct sp_ts_split_list {
    sp_job_split_t *splits;
    uint32_t n, cap;
} sp_ts_split_list_t;

static sp_status_t sp_ts_add_split(sp_ts_split_list_t *l, const char *path, uint64_t offset,
                                   uint64_t length)
{
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? 2 * l->cap : 16;
        sp_job_split_t *s = sp__realloc(l->splits, cap * sizeof(*s));
        if (s == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u splits", cap);
        l->splits = s;
        l->cap = cap;
    }
    l->splits[l->n] = (sp_job_split_t){.offset = offset, .length = length};
    if (path != NULL && (l->splits[l->n].path = sp__strdup(path)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a split path");
    l->n++;
    return SP_OK;
}

static int sp_ts_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One split per 64 MiB of each input file, in name order. */
static sp_status_t sp_ts_plan_files(const char *input, sp_ts_split_list_t *l, uint64_t *bytes_p)
{
    char **names = NULL, path[4096];
    size_t n = 0, cap = 0;
    struct stat sb;
    struct dirent *e;
    DIR *d;
    sp_status_t st = SP_OK;

    if (stat(input, &sb) != 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "terasort input %s: %s", input, strerror(errno));
    if (S_ISREG(sb.st_mode)) {
        names = sp__calloc(1, sizeof(*names));
        if (names == NULL || (names[0] = sp__strdup(input)) == NULL) {
            sp__free(names);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
        }
        n = 1;
    } else {
        if ((d = opendir(input)) == NULL)
            return SP_RAISE(SP_ERR_NOT_FOUND, "terasort input %s: %s", input, strerror(errno));
        while ((e = readdir(d)) != NULL && st == SP_OK) {
            if (e->d_name[0] == '.' || e->d_name[0] == '_')
                continue; /* hidden files, _SUCCESS, _temporary */
            if ((size_t)snprintf(path, sizeof(path), "%s/%s", input, e->d_name) >= sizeof(path) ||
                stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                char **grown = sp__realloc(names, cap * sizeof(*names));
                if (grown == NULL) {
                    st = SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
                    break;
                }
                names = grown;
            }
            if ((names[n] = sp__strdup(path)) == NULL)
                st = SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
            else
                n++;
        }
        closedir(d);
        if (st == SP_OK && n == 0)
            st = SP_RAISE(SP_ERR_NOT_FOUND, "terasort input directory %s holds no files", input);
        if (st == SP_OK)
            qsort(names, n, sizeof(*names), sp_ts_name_cmp);
    }
    for (size_t i = 0; i < n && st == SP_OK; i++) {
        uint64_t size;
        if (stat(names[i], &sb) != 0) {
            st = SP_RAISE(SP_ERR_NOT_FOUND, "terasort input %s: %s", names[i], strerror(errno));
            break;
        }
        size = (uint64_t)sb.st_size;
        if (size % SP__GENSORT_RECORD_SIZE != 0) {
            st = SP_RAISE(SP_ERR_BAD_FORMAT,
                          "terasort input %s is %llu bytes, not a whole number of 100-byte records",
                          names[i], (unsigned long long)size);
            break;
        }
        *bytes_p += size;
        for (uint64_t off = 0; off < size && st == SP_OK;
             off += SP_TS_SPLIT_RECORDS * SP__GENSORT_RECORD_SIZE)
            st = sp_ts_add_split(l, names[i], off,
                                 SP_MIN(size - off, SP_TS_SPLIT_RECORDS * SP__GENSORT_RECORD_SIZE));
    }
    for (size_t i = 0; i < n; i++)
        sp__free(names[i]);
    sp__free(names);
    if (st == SP_OK && l->n == 0)
        st = SP_RAISE(SP_ERR_NOT_FOUND, "terasort input %s holds no records", input);
    return st;
}

static sp_status_t sp_ts_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    sp_ts_split_list_t l = {0};
    uint64_t bytes = 0, parts;
    sp_status_t st;

    if (params->input != NULL) {
        st = sp_ts_plan_files(params->input, &l, &bytes);
    } else if (params->size < SP__GENSORT_RECORD_SIZE) {
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "terasort needs --input DIR or --size of at least one 100-byte record");
    } else {
        uint64_t records = params->size / SP__GENSORT_RECORD_SIZE;
        bytes = records * SP__GENSORT_RECORD_SIZE;
        st = SP_OK;
        for (uint64_t r = 0; r < records && st == SP_OK; r += SP_TS_SPLIT_RECORDS)
            st = sp_ts_add_split(&l, NULL, r, SP_MIN(records - r, SP_TS_SPLIT_RECORDS));
    }
    if (st == SP_OK && l.n == 0)
        st = sp_ts_add_split(&l, NULL, 0, 0); /* no records: one empty partition */
    if (st != SP_OK) {
        sp_job_plan_t tmp = {.maps = l.n, .splits = l.splits};
        sp__job_plan_clear(&tmp);
        return st;
    }
    parts = params->partitions;
    if (parts == 0)
        parts = SP_MAX(2ull * SP_MAX(params->slots, 1u), (bytes + (64ull << 20) - 1) >> 26);
    *plan = (sp_job_plan_t){.maps = l.n,
                            .splits = l.splits,
                            .partitions = (uint32_t)SP_MIN(parts, (uint64_t)SP_TS_MAX_PARTITIONS),
                            .partitioning = SP_JOB_RANGE,
                            .key_ordering = true,
                            .order = SP_READ_MERGE,
                            .sample_per_map = 1000};
    return SP_OK;
}

static void sp_ts_plan_free(void *arg)
{
    sp__job_plan_clear(arg);
    sp__free(arg);
}

static sp_status_t sp_ts_emit_chunk(sp_emitter_t *out, const unsigned char *recs, size_t count)
{
    sp__u128_t sum = 0;
    sp_status_t st;

    /* The CRCs of a batch (batched: sp__gensort_checksum), then its emits, from L1. */
    for (size_t batch = 0; batch < count; batch += SP_TS_CRC_BATCH) {
        size_t end = SP_MIN(count, batch + SP_TS_CRC_BATCH);

        sum += sp__gensort_checksum(recs + batch * SP__GENSORT_RECORD_SIZE, end - batch);
        for (size_t i = batch; i < end; i++) {
            const unsigned char *r = recs + i * SP__GENSORT_RECORD_SIZE;
            if ((st = sp_emit(out, r, SP__GENSORT_KEY_SIZE, r + SP__GENSORT_KEY_SIZE,
                              SP__GENSORT_VALUE_SIZE)) != SP_OK)
                return st;
        }
    }
    sp_emitter_counter_add(out, SP_TS_IN_CHECKSUM, (uint64_t)sum);
    sp_emitter_counter_add(out, SP_TS_IN_RECORDS, count);
    return SP_OK;
}

/* The source: split p's records, generated or read. */
static sp_status_t sp_ts_source(sp_emitter_t *out, uint32_t partition, uint32_t partitions,
                                void *arg)
{
    const sp_job_split_t *split = &((const sp_job_plan_t *)arg)->splits[partition];
    unsigned char *buf = sp__malloc((size_t)SP_TS_CHUNK * SP__GENSORT_RECORD_SIZE);
    sp_status_t st = SP_OK;

    SP_UNUSED(partitions);
    if (buf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a terasort chunk");
    if (split->path == NULL) {
        sp__gensort_t gen;
        sp__gensort_init(&gen, SP__GENSORT_V15, split->offset);
        for (uint64_t done = 0; done < split->length && st == SP_OK;) {
            size_t n = (size_t)SP_MIN((uint64_t)SP_TS_CHUNK, split->length - done);
            sp__gensort_fill(&gen, buf, n);
            st = sp_ts_emit_chunk(out, buf, n);
            done += n;
        }
    } else {
        int fd = open(split->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            sp__free(buf);
            return SP_RAISE(SP_ERR_IO, "terasort input %s: %s", split->path, strerror(errno));
        }
        for (uint64_t done = 0; done < split->length && st == SP_OK;) {
            size_t bytes = (size_t)SP_MIN((uint64_t)SP_TS_CHUNK * SP__GENSORT_RECORD_SIZE,
                                          split->length - done);
            st = sp__pread_all(fd, buf, bytes, split->offset + done, split->path);
            if (st == SP_OK)
                st = sp_ts_emit_chunk(out, buf, bytes / SP__GENSORT_RECORD_SIZE);
            done += bytes;
        }
        close(fd);
    }
    sp__free(buf);
    return st;
}

/* count keys spread evenly over the split: skip-ahead for generated input, preads for files. */
static sp_status_t sp_ts_sample(sp_emitter_t *out, uint32_t partition, uint32_t count, void *arg)
{
    const sp_job_split_t *split = &((const sp_job_plan_t *)arg)->splits[partition];
    uint64_t records =
        split->path == NULL ? split->length : split->length / SP__GENSORT_RECORD_SIZE;
    unsigned char key[SP__GENSORT_KEY_SIZE];
    sp_status_t st = SP_OK;
    int fd = -1;

    if (records == 0)
        return SP_OK;
    count = (uint32_t)SP_MIN((uint64_t)count, records);
    if (split->path != NULL && (fd = open(split->path, O_RDONLY | O_CLOEXEC)) < 0)
        return SP_RAISE(SP_ERR_IO, "terasort input %s: %s", split->path, strerror(errno));
    for (uint32_t i = 0; i < count && st == SP_OK; i++) {
        uint64_t r = (uint64_t)(((sp__u128_t)i * records) / count);
        if (fd < 0)
            sp__gensort_key((sp__u128_t)(split->offset + r), key);
        else
            st = sp__pread_all(fd, key, sizeof(key), split->offset + r * SP__GENSORT_RECORD_SIZE,
                               split->path);
        if (st == SP_OK)
            st = sp_emit(out, key, sizeof(key), NULL, 0);
    }
    if (fd >= 0)
        close(fd);
    return st;
}

/* The sorted side's state: the order check and a batch of records being assembled. */
typedef struct sp_ts_reduce {
    unsigned char prev[SP__GENSORT_KEY_SIZE];
    uint64_t records;
    uint64_t checksum;
    size_t buffered; /* records in out, not yet checksummed and saved */
    unsigned char out[SP_TS_CRC_BATCH * SP__GENSORT_RECORD_SIZE];
} sp_ts_reduce_t;

static sp_status_t sp_ts_reduce_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    sp_ts_reduce_t *s = sp__malloc(sizeof(*s));

    SP_UNUSED(out);
    SP_UNUSED(arg);
    if (s == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the terasort reduce state");
    s->records = 0;
    s->checksum = 0;
    s->buffered = 0;
    *state_p = s;
    return SP_OK;
}

/* Checksums the buffered records and saves them as one record (one write). */
static sp_status_t sp_ts_reduce_flush(sp_emitter_t *out, sp_ts_reduce_t *s)
{
    size_t n = s->buffered;

    s->buffered = 0;
    if (n == 0)
        return SP_OK;
    s->checksum += (uint64_t)sp__gensort_checksum(s->out, n);
    return sp_emit(out, NULL, 0, s->out, n * SP__GENSORT_RECORD_SIZE);
}

static sp_status_t sp_ts_reduce(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    sp_ts_reduce_t *s = state;
    unsigned char *rec;

    SP_UNUSED(arg);
    if (key_len != SP__GENSORT_KEY_SIZE || value_len != SP__GENSORT_VALUE_SIZE)
        return SP_RAISE(SP_ERR_CORRUPT,
                        "terasort reduce %u: record %llu has a %zu-byte key and a %zu-byte value, "
                        "not 10 and 90",
                        sp_emitter_partition(out), (unsigned long long)s->records, key_len,
                        value_len);
    if (s->records > 0 && memcmp(key, s->prev, SP__GENSORT_KEY_SIZE) < 0)
        return SP_RAISE(SP_ERR_CORRUPT,
                        "terasort reduce %u: record %llu's key is below the previous one",
                        sp_emitter_partition(out), (unsigned long long)s->records);
    memcpy(s->prev, key, SP__GENSORT_KEY_SIZE);
    rec = s->out + s->buffered * SP__GENSORT_RECORD_SIZE;
    memcpy(rec, key, SP__GENSORT_KEY_SIZE);
    memcpy(rec + SP__GENSORT_KEY_SIZE, value, SP__GENSORT_VALUE_SIZE);
    s->records++;
    if (++s->buffered == SP_TS_CRC_BATCH)
        return sp_ts_reduce_flush(out, s);
    return SP_OK;
}

static sp_status_t sp_ts_reduce_end(sp_emitter_t *out, void *state, void *arg)
{
    sp_ts_reduce_t *s = state;
    sp_status_t st = sp_ts_reduce_flush(out, s);

    SP_UNUSED(arg);
    sp_emitter_counter_add(out, SP_TS_OUT_CHECKSUM, s->checksum);
    sp_emitter_counter_add(out, SP_TS_OUT_RECORDS, s->records);
    sp__free(s);
    return st;
}

static void sp_ts_reduce_discard(void *state, void *arg)
{
    SP_UNUSED(arg);
    sp__free(state);
}

static const sp_partition_fns_t sp_ts_check = {.begin = sp_ts_reduce_begin,
                                               .record = sp_ts_reduce,
                                               .end = sp_ts_reduce_end,
                                               .discard = sp_ts_reduce_discard};

static sp_status_t sp_ts_build(sp_graph_t *graph, const sp_job_params_t *params)
{
    sp_job_plan_t *plan = sp__calloc(1, sizeof(*plan));
    sp_dataset_t *ds;
    sp_status_t st;

    if (plan == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "terasort: no memory for its plan");
    if ((st = sp_ts_plan(params, plan)) != SP_OK) {
        sp__free(plan);
        return st;
    }
    sp_graph_keep(graph, plan, sp_ts_plan_free);
    ds = sp_graph_generate_sampled(graph, plan->maps, sp_ts_source, sp_ts_sample, plan);
    ds = sp_ds_sort_by_key(ds, plan->partitions, NULL, NULL);
    (void)sp_ds_save(sp_ds_map_partitions(ds, &sp_ts_check, NULL), SP_SAVE_BINARY);
    return sp_graph_status(graph);
}

static sp_status_t sp_ts_finish(const sp_graph_t *graph, const sp_job_params_t *params,
                                const sp_job_result_t *r, void *report)
{
    const uint64_t *c = r->counters;
    char hex[SP__U128_HEX_SIZE];
    FILE *out = report;

    SP_UNUSED(graph);
    if (c[SP_TS_OUT_RECORDS] != c[SP_TS_IN_RECORDS] ||
        c[SP_TS_OUT_CHECKSUM] != c[SP_TS_IN_CHECKSUM])
        return SP_RAISE(
            SP_ERR_CORRUPT,
            "terasort wrote %llu records with checksum %llx; its input had %llu with "
            "checksum %llx",
            (unsigned long long)c[SP_TS_OUT_RECORDS], (unsigned long long)c[SP_TS_OUT_CHECKSUM],
            (unsigned long long)c[SP_TS_IN_RECORDS], (unsigned long long)c[SP_TS_IN_CHECKSUM]);
    if (params->output != NULL) {
        sp__valsort_t v;
        char **paths = NULL;
        size_t n = 0;
        sp_status_t st;

        if ((st = sp__valsort_paths(params->output, &paths, &n)) != SP_OK)
            return st;
        st = sp__valsort_files((const char *const *)paths, n, 0, &v);
        sp__valsort_paths_free(paths, n);
        if (st != SP_OK)
            return st;
        if (v.unordered != 0)
            return SP_RAISE(SP_ERR_CORRUPT,
                            "terasort output %s has %llu unordered records (the first is record "
                            "%llu)",
                            params->output, (unsigned long long)v.unordered,
                            (unsigned long long)v.first_unordered);
        if (v.records != c[SP_TS_IN_RECORDS] || v.checksum != (sp__u128_t)c[SP_TS_IN_CHECKSUM])
            return SP_RAISE(SP_ERR_CORRUPT,
                            "terasort output %s holds %llu records with checksum %s; the input "
                            "had %llu with checksum %llx",
                            params->output, (unsigned long long)v.records,
                            sp__u128_hex(v.checksum, hex), (unsigned long long)c[SP_TS_IN_RECORDS],
                            (unsigned long long)c[SP_TS_IN_CHECKSUM]);
        if (out != NULL)
            fprintf(out,
                    "terasort: valsort of %s: %llu records in order across %zu files, checksum "
                    "%s equal to the input's, %llu duplicate keys\n",
                    params->output, (unsigned long long)v.records, n, sp__u128_hex(v.checksum, hex),
                    (unsigned long long)v.duplicates);
    } else if (out != NULL) {
        fprintf(out, "terasort: %llu records sorted, checksum %llx equal to the input's\n",
                (unsigned long long)c[SP_TS_OUT_RECORDS],
                (unsigned long long)c[SP_TS_OUT_CHECKSUM]);
    }
    return SP_OK;
}

const sp_job_t sp__job_terasort = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "terasort",
    .summary = "sort 100-byte gensort records by key (--size or --input DIR)",
    .build = sp_ts_build,
    .finish_graph = sp_ts_finish,
    .counter_names = {"input_checksum", "input_records", "output_checksum", "output_records"},
};
