/*
 * Job graphs: what a graph job's build() makes (datasets, the shuffles under
 * its wide operations, actions), checked as it is made, and the stage
 * numbering the driver, the executors and the local runner share.
 *
 * Invariants: a dataset's parents come before it (ids grow), so the graph
 * is acyclic by construction; every wide dataset owns exactly one shuffle;
 * the first error is latched (graph->status, graph->message) and every later
 * builder call returns NULL or -1 without doing anything, so a build can
 * chain calls and check once. The graph is built once per process and read
 * concurrently by task threads afterwards (only the driver writes action
 * results, from its one thread).
 *
 * Sources are split here, at build time, from the file sizes the process
 * sees; the driver and the executors see the same shared input.
 */
#include "graph_int.h"

#include "common_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

static void sp_graph_fail(sp_graph_t *g, sp_status_t st, const char *fmt, ...) SP_PRINTF(3, 4);

static void sp_graph_fail(sp_graph_t *g, sp_status_t st, const char *fmt, ...)
{
    va_list ap;

    if (g->status != SP_OK)
        return;
    va_start(ap, fmt);
    vsnprintf(g->message, sizeof(g->message), fmt, ap);
    va_end(ap);
    g->status = st;
    (void)SP_RAISE(st, "%s", g->message);
}

/* Whether a builder call on ds may go on: ds is there and its graph has no error. */
static bool sp_graph_ok(const sp_dataset_t *ds) { return ds != NULL && ds->graph->status == SP_OK; }

void sp_graph_keep(sp_graph_t *graph, void *ptr, void (*free_fn)(void *))
{
    struct sp_graph_kept *grown;

    if (free_fn == NULL)
        return;
    grown = sp__realloc(graph->kept, (graph->nkept + 1) * sizeof(*grown));
    if (grown == NULL) {
        free_fn(ptr);
        sp_graph_fail(graph, SP_ERR_NOMEM, "no memory to keep a job's state");
        return;
    }
    graph->kept = grown;
    graph->kept[graph->nkept++] = (struct sp_graph_kept){ptr, free_fn};
}

sp_status_t sp_graph_status(const sp_graph_t *graph)
{
    if (graph->status != SP_OK)
        (void)SP_RAISE(graph->status, "%s", graph->message);
    return graph->status;
}

uint32_t sp_graph_default_partitions(const sp_graph_t *graph)
{
    const sp_job_params_t *p = graph->params;

    if (p->partitions > 0)
        return p->partitions;
    return p->slots > 0 ? p->slots : 2;
}

bool sp__job_is_graph(const sp_job_t *job)
{
    return job->abi_version >= 2 &&
           job->size >= offsetof(sp_job_t, finish_graph) + sizeof(job->finish_graph) &&
           job->build != NULL;
}

const char *sp__graph_kind_name(sp__ds_kind_t kind)
{
    static const char *const names[] = {
        [SP__DS_TEXT] = "text",
        [SP__DS_RECORDS] = "records",
        [SP__DS_GENERATE] = "generate",
        [SP__DS_MAP] = "map",
        [SP__DS_FLAT_MAP] = "flat_map",
        [SP__DS_FILTER] = "filter",
        [SP__DS_MAP_PARTITIONS] = "map_partitions",
        [SP__DS_REDUCE] = "reduce_by_key",
        [SP__DS_GROUP] = "group_by_key",
        [SP__DS_SORT] = "sort_by_key",
        [SP__DS_COGROUP] = "cogroup",
        [SP__DS_JOIN] = "join",
        [SP__DS_PARTITION_BY] = "partition_by",
        [SP__DS_REPARTITION] = "repartition",
    };

    return (unsigned)kind < SP_ARRAY_SIZE(names) ? names[kind] : "?";
}

/* ------------------------------------------------------------------------ */
/* Datasets                                                                  */
/* ------------------------------------------------------------------------ */

static sp_dataset_t *sp_graph_new_ds(sp_graph_t *g, sp__ds_kind_t kind, sp_dataset_t *parent,
                                     uint32_t partitions)
{
    sp_dataset_t *ds;

    if (g->status != SP_OK)
        return NULL;
    if (g->ndatasets == SP__GRAPH_MAX_DATASETS) {
        sp_graph_fail(g, SP_ERR_TOO_LARGE, "the graph has %u datasets, the most one may have",
                      SP__GRAPH_MAX_DATASETS);
        return NULL;
    }
    if (g->ndatasets == g->cap_datasets) {
        uint32_t cap = g->cap_datasets ? 2 * g->cap_datasets : 16;
        sp_dataset_t **grown = sp__realloc(g->datasets, cap * sizeof(*grown));
        if (grown == NULL) {
            sp_graph_fail(g, SP_ERR_NOMEM, "no memory for %u datasets", cap);
            return NULL;
        }
        g->datasets = grown;
        g->cap_datasets = cap;
    }
    ds = sp__calloc(1, sizeof(*ds));
    if (ds == NULL) {
        sp_graph_fail(g, SP_ERR_NOMEM, "no memory for a dataset");
        return NULL;
    }
    ds->graph = g;
    ds->id = g->ndatasets;
    ds->kind = kind;
    ds->parent = parent;
    ds->partitions = partitions;
    ds->shuffle = -1;
    g->datasets[g->ndatasets++] = ds;
    return ds;
}

static void sp_graph_free_ds(sp_dataset_t *ds)
{
    for (uint32_t i = 0; ds->splits != NULL && i < ds->partitions; i++)
        free(ds->splits[i].path);
    sp__free(ds->splits);
    sp__free(ds);
}

/* ------------------------------------------------------------------------ */
/* File sources                                                              */
/* ------------------------------------------------------------------------ */

typedef struct sp_graph_file {
    char *path;
    uint64_t size;
} sp_graph_file_t;

static int sp_graph_file_cmp(const void *a, const void *b)
{
    return strcmp(((const sp_graph_file_t *)a)->path, ((const sp_graph_file_t *)b)->path);
}

static void sp_graph_files_free(sp_graph_file_t *files, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(files[i].path);
    sp__free(files);
}

/* path's files: path itself, or a directory's regular files (not '.'/'_' names) by name. */
static sp_status_t sp_graph_list(const char *path, sp_graph_file_t **files_p, size_t *n_p)
{
    sp_graph_file_t *files = NULL;
    size_t n = 0, cap = 0;
    struct stat st;
    struct dirent *de;
    DIR *dir;

    if (path == NULL || path[0] == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "no input path given (--input)");
    if (stat(path, &st) != 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "input %s: %s (errno %d)",
                        path, strerror(errno), errno);
    if (!S_ISDIR(st.st_mode)) {
        if (!S_ISREG(st.st_mode))
            return SP_RAISE(SP_ERR_BAD_INPUT, "input %s is neither a file nor a directory", path);
        files = sp__calloc(1, sizeof(*files));
        if (files == NULL || (files[0].path = strdup(path)) == NULL) {
            sp__free(files);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
        }
        files[0].size = (uint64_t)st.st_size;
        *files_p = files;
        *n_p = 1;
        return SP_OK;
    }
    if ((dir = opendir(path)) == NULL)
        return SP_RAISE(SP_ERR_IO, "input %s: cannot open the directory: %s (errno %d)", path,
                        strerror(errno), errno);
    while ((de = readdir(dir)) != NULL) {
        char *full;
        struct stat fs;
        if (de->d_name[0] == '.' || de->d_name[0] == '_')
            continue;
        if (asprintf(&full, "%s/%s", path, de->d_name) < 0) {
            closedir(dir);
            sp_graph_files_free(files, n);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
        }
        if (stat(full, &fs) != 0 || !S_ISREG(fs.st_mode)) {
            free(full);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            sp_graph_file_t *grown = sp__realloc(files, ncap * sizeof(*grown));
            if (grown == NULL) {
                free(full);
                closedir(dir);
                sp_graph_files_free(files, n);
                return SP_RAISE(SP_ERR_NOMEM, "no memory for the input list");
            }
            files = grown;
            cap = ncap;
        }
        files[n].path = full;
        files[n++].size = (uint64_t)fs.st_size;
    }
    closedir(dir);
    if (n > 0)
        qsort(files, n, sizeof(*files), sp_graph_file_cmp);
    *files_p = files;
    *n_p = n;
    return SP_OK;
}

/*
 * Splits files into byte ranges of about total/want bytes (a multiple of
 * align), at least one per non-empty file; an input with no bytes gets one
 * empty split so the dataset has a partition.
 */
static sp_status_t sp_graph_split(sp_graph_file_t *files, size_t n, uint32_t want, uint64_t align,
                                  sp_job_split_t **splits_p, uint32_t *count_p)
{
    uint64_t total = 0, piece;
    uint64_t count = 0;
    sp_job_split_t *splits;
    uint32_t k = 0;

    for (size_t i = 0; i < n; i++)
        total += files[i].size;
    piece = total / want + (total % want != 0);
    piece = (piece + align - 1) / align * align;
    if (piece == 0)
        piece = align;
    for (size_t i = 0; i < n; i++)
        count += files[i].size / piece + (files[i].size % piece != 0);
    if (count > SP__JOB_MAX_MAPS)
        return SP_RAISE(SP_ERR_TOO_LARGE, "the input would need %llu splits, more than %u",
                        (unsigned long long)count, SP__JOB_MAX_MAPS);
    splits = sp__calloc(count > 0 ? count : 1, sizeof(*splits));
    if (splits == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %llu splits", (unsigned long long)count);
    for (size_t i = 0; i < n; i++)
        for (uint64_t off = 0; off < files[i].size; off += piece) {
            splits[k].path = strdup(files[i].path);
            if (splits[k].path == NULL) {
                for (uint32_t j = 0; j < k; j++)
                    free(splits[j].path);
                sp__free(splits);
                return SP_RAISE(SP_ERR_NOMEM, "no memory for the splits");
            }
            splits[k].offset = off;
            splits[k++].length = SP_MIN(piece, files[i].size - off);
        }
    if (k == 0)
        k = 1; /* one empty split (path NULL) */
    *splits_p = splits;
    *count_p = k;
    return SP_OK;
}

static sp_dataset_t *sp_graph_file_source(sp_graph_t *g, sp__ds_kind_t kind, const char *path,
                                          uint32_t record_size, uint32_t key_size, uint32_t splits)
{
    sp_graph_file_t *files = NULL;
    sp_job_split_t *sp = NULL;
    uint32_t count = 0;
    size_t n = 0;
    sp_dataset_t *ds;
    sp_status_t st;

    if (g->status != SP_OK)
        return NULL;
    if (kind == SP__DS_RECORDS && (record_size == 0 || key_size > record_size)) {
        sp_graph_fail(g, SP_ERR_INVALID_PARAM,
                      "records of %u bytes with %u key bytes: the size must be positive and "
                      "hold the key",
                      record_size, key_size);
        return NULL;
    }
    if ((st = sp_graph_list(path, &files, &n)) == SP_OK) {
        for (size_t i = 0; kind == SP__DS_RECORDS && i < n && st == SP_OK; i++)
            if (files[i].size % record_size != 0)
                st = SP_RAISE(SP_ERR_BAD_INPUT,
                              "input file %s has %llu bytes, not a whole number of %u-byte "
                              "records",
                              files[i].path, (unsigned long long)files[i].size, record_size);
        if (st == SP_OK)
            st = sp_graph_split(files, n, splits > 0 ? splits : sp_graph_default_partitions(g),
                                kind == SP__DS_RECORDS ? record_size : 1, &sp, &count);
        sp_graph_files_free(files, n);
    }
    if (st != SP_OK) {
        sp_graph_fail(g, st, "%s", sp_last_error());
        return NULL;
    }
    if ((ds = sp_graph_new_ds(g, kind, NULL, count)) == NULL) {
        for (uint32_t i = 0; i < count; i++)
            free(sp[i].path);
        sp__free(sp);
        return NULL;
    }
    ds->splits = sp;
    ds->record_size = record_size;
    ds->key_size = key_size;
    return ds;
}

sp_dataset_t *sp_graph_text(sp_graph_t *graph, const char *path, uint32_t splits)
{
    return sp_graph_file_source(graph, SP__DS_TEXT, path, 0, 0, splits);
}

sp_dataset_t *sp_graph_records(sp_graph_t *graph, const char *path, uint32_t record_size,
                               uint32_t key_size, uint32_t splits)
{
    return sp_graph_file_source(graph, SP__DS_RECORDS, path, record_size, key_size, splits);
}

sp_dataset_t *sp_graph_generate(sp_graph_t *graph, uint32_t partitions, sp_generate_fn_t fn,
                                void *arg)
{
    sp_dataset_t *ds;

    if (graph->status != SP_OK)
        return NULL;
    if (fn == NULL || partitions == 0 || partitions > SP__JOB_MAX_MAPS) {
        sp_graph_fail(graph, SP_ERR_INVALID_PARAM, "generate: %s (partitions %u, 1 to %u allowed)",
                      fn == NULL ? "no function given" : "bad partition count", partitions,
                      SP__JOB_MAX_MAPS);
        return NULL;
    }
    if ((ds = sp_graph_new_ds(graph, SP__DS_GENERATE, NULL, partitions)) != NULL) {
        ds->generate = fn;
        ds->arg = arg;
    }
    return ds;
}

sp_dataset_t *sp_graph_generate_sampled(sp_graph_t *graph, uint32_t partitions, sp_generate_fn_t fn,
                                        sp_sample_fn_t sample, void *arg)
{
    sp_dataset_t *ds = sp_graph_generate(graph, partitions, fn, arg);

    if (ds != NULL)
        ds->sample = sample;
    return ds;
}

/* ------------------------------------------------------------------------ */
/* Narrow operations                                                         */
/* ------------------------------------------------------------------------ */

static sp_dataset_t *sp_graph_narrow(sp_dataset_t *parent, sp__ds_kind_t kind, const void *fn,
                                     void *arg)
{
    sp_dataset_t *ds;

    if (!sp_graph_ok(parent))
        return NULL;
    if (fn == NULL) {
        sp_graph_fail(parent->graph, SP_ERR_INVALID_PARAM, "%s: no function given",
                      sp__graph_kind_name(kind));
        return NULL;
    }
    if ((ds = sp_graph_new_ds(parent->graph, kind, parent, parent->partitions)) != NULL)
        ds->arg = arg;
    return ds;
}

sp_dataset_t *sp_ds_map(sp_dataset_t *ds, sp_record_fn_t fn, void *arg)
{
    sp_dataset_t *out = sp_graph_narrow(ds, SP__DS_MAP, (const void *)(uintptr_t)fn, arg);

    if (out != NULL)
        out->record_fn = fn;
    return out;
}

sp_dataset_t *sp_ds_flat_map(sp_dataset_t *ds, sp_record_fn_t fn, void *arg)
{
    sp_dataset_t *out = sp_graph_narrow(ds, SP__DS_FLAT_MAP, (const void *)(uintptr_t)fn, arg);

    if (out != NULL)
        out->record_fn = fn;
    return out;
}

sp_dataset_t *sp_ds_filter(sp_dataset_t *ds, sp_filter_fn_t fn, void *arg)
{
    sp_dataset_t *out = sp_graph_narrow(ds, SP__DS_FILTER, (const void *)(uintptr_t)fn, arg);

    if (out != NULL)
        out->filter_fn = fn;
    return out;
}

sp_dataset_t *sp_ds_map_partitions(sp_dataset_t *ds, const sp_partition_fns_t *fns, void *arg)
{
    const void *fn = fns != NULL ? (const void *)(uintptr_t)fns->record : NULL;
    sp_dataset_t *out = sp_graph_narrow(ds, SP__DS_MAP_PARTITIONS, fn, arg);

    if (out != NULL)
        out->partition_fns = *fns;
    return out;
}

/* ------------------------------------------------------------------------ */
/* Wide operations                                                           */
/* ------------------------------------------------------------------------ */

/* The tagged order: keys without their last byte (bytes, shorter first), then that byte. */
static int sp_graph_tagged_cmp(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    size_t al = alen - 1, bl = blen - 1;
    int c = memcmp(a, b, SP_MIN(al, bl));

    (void)arg;
    if (c != 0)
        return c;
    if (al != bl)
        return al < bl ? -1 : 1;
    return (int)((const unsigned char *)a)[al] - (int)((const unsigned char *)b)[bl];
}

static sp_dataset_t *sp_graph_wide(sp_dataset_t *left, sp_dataset_t *right, sp__ds_kind_t kind,
                                   uint32_t partitions)
{
    sp_graph_t *g;
    sp__graph_shuffle_t *sh;
    sp_dataset_t *ds;
    uint64_t maps;

    if (!sp_graph_ok(left) ||
        (kind == SP__DS_COGROUP || kind == SP__DS_JOIN ? !sp_graph_ok(right) : false))
        return NULL;
    g = left->graph;
    if (right != NULL && right->graph != g) {
        sp_graph_fail(g, SP_ERR_INVALID_PARAM, "%s of datasets of two graphs",
                      sp__graph_kind_name(kind));
        return NULL;
    }
    if (partitions == 0)
        partitions = sp_graph_default_partitions(g);
    if (partitions > SP_MAX_PARTITIONS) {
        sp_graph_fail(g, SP_ERR_INVALID_PARAM, "%s into %u partitions: at most %u",
                      sp__graph_kind_name(kind), partitions, (unsigned)SP_MAX_PARTITIONS);
        return NULL;
    }
    maps = (uint64_t)left->partitions + (right != NULL ? right->partitions : 0);
    if (maps > SP__JOB_MAX_MAPS) {
        sp_graph_fail(g, SP_ERR_TOO_LARGE, "%s of %llu partitions: at most %u",
                      sp__graph_kind_name(kind), (unsigned long long)maps, SP__JOB_MAX_MAPS);
        return NULL;
    }
    if (g->nshuffles == g->cap_shuffles) {
        uint32_t cap = g->cap_shuffles ? 2 * g->cap_shuffles : 8;
        sp__graph_shuffle_t *grown = sp__realloc(g->shuffles, cap * sizeof(*grown));
        if (grown == NULL) {
            sp_graph_fail(g, SP_ERR_NOMEM, "no memory for %u shuffles", cap);
            return NULL;
        }
        g->shuffles = grown;
        g->cap_shuffles = cap;
    }
    if ((ds = sp_graph_new_ds(g, kind, left, partitions)) == NULL)
        return NULL;
    ds->right = right;
    ds->shuffle = (int32_t)g->nshuffles;
    sh = &g->shuffles[g->nshuffles++];
    memset(sh, 0, sizeof(*sh));
    sh->ds = ds;
    sh->inputs[0] = left;
    sh->inputs[1] = right;
    sh->maps = (uint32_t)maps;
    sh->partitions = partitions;
    sh->partitioner = SP_PARTITIONER_HASH;
    sh->order = SP_READ_UNORDERED;
    switch (kind) {
    case SP__DS_REDUCE:
        /*
         * Combined and sorted on the map side, merged on the reduce side,
         * where equal keys arrive together and are combined as they stream:
         * constant memory, and each partition comes out in key order (the
         * path the two-stage wordcount measured fastest).
         */
        sh->key_ordering = true;
        sh->order = SP_READ_MERGE;
        break;
    case SP__DS_GROUP: sh->order = SP_READ_SORT; break;
    case SP__DS_SORT:
        sh->partitioner = partitions > 1 ? SP_PARTITIONER_RANGE : SP_PARTITIONER_GIVEN;
        sh->key_ordering = true;
        sh->order = SP_READ_MERGE;
        break;
    case SP__DS_COGROUP:
    case SP__DS_JOIN:
        sh->partitioner = SP_PARTITIONER_GIVEN;
        sh->tagged = true;
        sh->order = SP_READ_SORT;
        sh->compare = sp_graph_tagged_cmp;
        break;
    case SP__DS_REPARTITION:
        sh->partitioner = SP_PARTITIONER_GIVEN;
        sh->round_robin = true;
        break;
    default: break;
    }
    return ds;
}

sp_dataset_t *sp_ds_reduce_by_key(sp_dataset_t *ds, const sp_combiner_t *combiner,
                                  uint32_t partitions)
{
    sp_dataset_t *out;

    if (sp_graph_ok(ds) && (combiner == NULL || combiner->combine == NULL)) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM, "reduce_by_key: no combine function");
        return NULL;
    }
    if ((out = sp_graph_wide(ds, NULL, SP__DS_REDUCE, partitions)) != NULL) {
        out->combiner = *combiner;
        out->graph->shuffles[out->shuffle].combiner = &out->combiner;
    }
    return out;
}

sp_dataset_t *sp_ds_group_by_key(sp_dataset_t *ds, uint32_t partitions, sp_group_fn_t fn, void *arg)
{
    sp_dataset_t *out;

    if (sp_graph_ok(ds) && fn == NULL) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM, "group_by_key: no function given");
        return NULL;
    }
    if ((out = sp_graph_wide(ds, NULL, SP__DS_GROUP, partitions)) != NULL) {
        out->group_fn = fn;
        out->arg = arg;
    }
    return out;
}

sp_dataset_t *sp_ds_sort_by_key(sp_dataset_t *ds, uint32_t partitions, sp_key_compare_fn_t compare,
                                void *compare_arg)
{
    sp_dataset_t *out = sp_graph_wide(ds, NULL, SP__DS_SORT, partitions);

    if (out != NULL) {
        out->compare = compare;
        out->compare_arg = compare_arg;
        out->graph->shuffles[out->shuffle].compare = compare;
        out->graph->shuffles[out->shuffle].compare_arg = compare_arg;
    }
    return out;
}

sp_dataset_t *sp_ds_cogroup(sp_dataset_t *left, sp_dataset_t *right, uint32_t partitions,
                            sp_cogroup_fn_t fn, void *arg)
{
    sp_dataset_t *out;

    if (sp_graph_ok(left) && (fn == NULL || right == NULL)) {
        sp_graph_fail(left->graph, SP_ERR_INVALID_PARAM, "cogroup: %s",
                      fn == NULL ? "no function given" : "no right input");
        return NULL;
    }
    if ((out = sp_graph_wide(left, right, SP__DS_COGROUP, partitions)) != NULL) {
        out->cogroup_fn = fn;
        out->arg = arg;
    }
    return out;
}

sp_dataset_t *sp_ds_join(sp_dataset_t *left, sp_dataset_t *right, uint32_t partitions,
                         sp_join_kind_t kind)
{
    sp_dataset_t *out;

    if (sp_graph_ok(left) && (right == NULL || (kind != SP_JOIN_INNER && kind != SP_JOIN_LEFT))) {
        sp_graph_fail(left->graph, SP_ERR_INVALID_PARAM, "join: %s",
                      right == NULL ? "no right input" : "unknown join kind");
        return NULL;
    }
    if ((out = sp_graph_wide(left, right, SP__DS_JOIN, partitions)) != NULL)
        out->join = kind;
    return out;
}

sp_dataset_t *sp_ds_partition_by(sp_dataset_t *ds, uint32_t partitions)
{
    return sp_graph_wide(ds, NULL, SP__DS_PARTITION_BY, partitions);
}

sp_dataset_t *sp_ds_repartition(sp_dataset_t *ds, uint32_t partitions)
{
    return sp_graph_wide(ds, NULL, SP__DS_REPARTITION, partitions);
}

sp_dataset_t *sp_ds_persist(sp_dataset_t *ds, sp_storage_level_t level)
{
    if (!sp_graph_ok(ds))
        return NULL;
    if (level != SP_STORAGE_MEMORY && level != SP_STORAGE_MEMORY_AND_DISK &&
        level != SP_STORAGE_DISK) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM, "persist: unknown storage level %d",
                      (int)level);
        return NULL;
    }
    ds->persisted = true;
    ds->level = level;
    return ds;
}

/* ------------------------------------------------------------------------ */
/* Actions                                                                   */
/* ------------------------------------------------------------------------ */

static int sp_graph_action(sp_dataset_t *ds, sp__action_kind_t kind, sp_save_format_t format,
                           uint64_t limit)
{
    sp_graph_t *g;
    sp__graph_action_t *a;

    if (!sp_graph_ok(ds))
        return -1;
    g = ds->graph;
    if (g->nactions == SP__GRAPH_MAX_DATASETS) {
        sp_graph_fail(g, SP_ERR_TOO_LARGE, "the graph has %u actions, the most one may have",
                      SP__GRAPH_MAX_DATASETS);
        return -1;
    }
    if (g->nactions == g->cap_actions) {
        uint32_t cap = g->cap_actions ? 2 * g->cap_actions : 8;
        sp__graph_action_t *grown = sp__realloc(g->actions, cap * sizeof(*grown));
        if (grown == NULL) {
            sp_graph_fail(g, SP_ERR_NOMEM, "no memory for %u actions", cap);
            return -1;
        }
        g->actions = grown;
        g->cap_actions = cap;
    }
    a = &g->actions[g->nactions];
    memset(a, 0, sizeof(*a));
    a->kind = kind;
    a->ds = ds;
    a->format = format;
    a->limit = limit;
    return (int)g->nactions++;
}

int sp_ds_save(sp_dataset_t *ds, sp_save_format_t format)
{
    if (!sp_graph_ok(ds))
        return -1;
    if (format != SP_SAVE_TEXT && format != SP_SAVE_BINARY) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM, "save: unknown format %d", (int)format);
        return -1;
    }
    if (ds->graph->saves) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM,
                      "save: a graph saves to --output once; this is a second save");
        return -1;
    }
    ds->graph->saves = true;
    return sp_graph_action(ds, SP__ACTION_SAVE, format, 0);
}

int sp_ds_count(sp_dataset_t *ds) { return sp_graph_action(ds, SP__ACTION_COUNT, 0, 0); }

int sp_ds_collect(sp_dataset_t *ds, uint64_t limit)
{
    return sp_graph_action(ds, SP__ACTION_COLLECT, 0, limit);
}

void sp_ds_unpersist(sp_dataset_t *ds)
{
    if (sp_graph_ok(ds) && !ds->persisted) {
        sp_graph_fail(ds->graph, SP_ERR_INVALID_PARAM,
                      "unpersist of dataset %u (%s), which is not persisted", ds->id,
                      sp__graph_kind_name(ds->kind));
        return;
    }
    (void)sp_graph_action(ds, SP__ACTION_UNPERSIST, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* Stages                                                                    */
/* ------------------------------------------------------------------------ */

uint32_t sp__graph_stages(const sp_graph_t *graph) { return graph->nshuffles + graph->nactions; }

uint32_t sp__graph_stage_tasks(const sp_graph_t *graph, uint32_t stage)
{
    const sp__graph_action_t *a;

    if (stage < graph->nshuffles)
        return graph->shuffles[stage].maps;
    if (stage - graph->nshuffles >= graph->nactions)
        return 0;
    a = &graph->actions[stage - graph->nshuffles];
    return a->kind == SP__ACTION_UNPERSIST ? 0 : a->ds->partitions;
}

void sp__graph_map_input(const sp__graph_shuffle_t *shuffle, uint32_t index, uint32_t *input_p,
                         uint32_t *partition_p)
{
    uint32_t left = shuffle->inputs[0]->partitions;

    *input_p = index < left ? 0 : 1;
    *partition_p = index < left ? index : index - left;
}

void sp__graph_block_id(const char *run_id, uint32_t ds, uint32_t partition, char *buf, size_t cap)
{
    snprintf(buf, cap, "rdd_%s_%u_%u", run_id, ds, partition);
}

/* ------------------------------------------------------------------------ */
/* Building and results                                                      */
/* ------------------------------------------------------------------------ */

sp_status_t sp__graph_build(const sp_job_t *job, const sp_job_params_t *params,
                            sp_graph_t **graph_p)
{
    sp_graph_t *g;
    sp_status_t st;

    if (!sp__job_is_graph(job))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "job %s is not a graph job", job->name);
    if ((g = sp__calloc(1, sizeof(*g))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a graph");
    g->params = params;
    sp_last_error_clear();
    st = job->build(g, params);
    if (g->status != SP_OK) {
        st = SP_RAISE(g->status, "job %s: %s", job->name, g->message);
    } else if (st != SP_OK) {
        const char *msg = sp_last_error();
        st = SP_RAISE(st, "job %s: %s", job->name, msg[0] != '\0' ? msg : sp_status_str(st));
    } else if (g->nactions == 0) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "job %s: its graph has no action (save, count or collect): nothing "
                      "would run",
                      job->name);
    } else if (g->saves && params->output == NULL) {
        /* Saving without --output counts the output, like a two-stage job's reduce. */
        st = SP_OK;
    }
    if (st != SP_OK) {
        sp__graph_destroy(g);
        return st;
    }
    *graph_p = g;
    return SP_OK;
}

void sp__graph_destroy(sp_graph_t *graph)
{
    if (graph == NULL)
        return;
    for (uint32_t i = 0; i < graph->ndatasets; i++)
        sp_graph_free_ds(graph->datasets[i]);
    for (uint32_t a = 0; a < graph->nactions; a++) {
        sp__free(graph->actions[a].collected);
        sp__free(graph->actions[a].offsets);
    }
    for (uint32_t i = graph->nkept; i-- > 0;)
        graph->kept[i].free_fn(graph->kept[i].ptr);
    sp__free(graph->kept);
    sp__free(graph->datasets);
    sp__free(graph->shuffles);
    sp__free(graph->actions);
    sp__free(graph);
}

static uint32_t sp_graph_load32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

sp_status_t sp__graph_action_add(sp_graph_t *graph, uint32_t action, const void *payload,
                                 size_t len)
{
    sp__graph_action_t *a;
    const unsigned char *p = payload;
    size_t off = 0, n = 0;

    if (action >= graph->nactions)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "result for action %u of %u", action, graph->nactions);
    a = &graph->actions[action];
    if (a->kind == SP__ACTION_COUNT) {
        if (len != 8)
            return SP_RAISE(SP_ERR_BAD_FORMAT, "count result of %zu bytes, not 8", len);
        a->count += sp_rec_get_u64(payload);
        return SP_OK;
    }
    if (a->kind != SP__ACTION_COLLECT)
        return len == 0 ? SP_OK
                        : SP_RAISE(SP_ERR_BAD_FORMAT,
                                   "%zu result bytes for action %u, which "
                                   "returns none",
                                   len, action);
    /* Check every record's lengths against the bytes there before keeping any. */
    while (off < len) {
        uint64_t kl, vl;
        if (len - off < 8)
            return SP_RAISE(SP_ERR_BAD_FORMAT, "collected records cut short at byte %zu of %zu",
                            off, len);
        kl = sp_graph_load32(p + off);
        vl = sp_graph_load32(p + off + 4);
        if (kl + vl > len - off - 8)
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "collected record at byte %zu claims %llu bytes, %zu are there", off,
                            (unsigned long long)(kl + vl), len - off - 8);
        off += 8 + kl + vl;
        n++;
    }
    if (n == 0)
        return SP_OK;
    {
        size_t keep =
            a->ncollected < a->limit ? (size_t)SP_MIN((uint64_t)n, a->limit - a->ncollected) : 0;
        unsigned char *bytes;
        size_t *offs, used = 0;
        if (keep == 0)
            return SP_OK;
        for (size_t i = 0; i < keep; i++)
            used += 8 + sp_graph_load32(p + used) + sp_graph_load32(p + used + 4);
        if (a->collected_len + used > SP__GRAPH_COLLECT_MAX)
            return SP_RAISE(SP_ERR_TOO_LARGE,
                            "collect action %u would bring more than %llu bytes to the driver",
                            action, (unsigned long long)SP__GRAPH_COLLECT_MAX);
        bytes = sp__realloc(a->collected, a->collected_len + used + 1);
        if (bytes == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for collected records");
        a->collected = bytes;
        offs = sp__realloc(a->offsets, (a->ncollected + keep) * sizeof(*offs));
        if (offs == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for collected records");
        a->offsets = offs;
        for (size_t i = 0, o = 0; i < keep; i++) {
            a->offsets[a->ncollected + i] = a->collected_len + o;
            o += 8 + sp_graph_load32(p + o) + sp_graph_load32(p + o + 4);
        }
        memcpy(a->collected + a->collected_len, p, used);
        a->collected_len += used;
        a->ncollected += keep;
    }
    return SP_OK;
}

uint64_t sp_graph_count_result(const sp_graph_t *graph, int action)
{
    if (action < 0 || (uint32_t)action >= graph->nactions)
        return 0;
    return graph->actions[action].count;
}

size_t sp_graph_collected(const sp_graph_t *graph, int action)
{
    if (action < 0 || (uint32_t)action >= graph->nactions)
        return 0;
    return graph->actions[action].ncollected;
}

bool sp_graph_collected_record(const sp_graph_t *graph, int action, size_t index,
                               const void **key_p, size_t *key_len_p, const void **value_p,
                               size_t *value_len_p)
{
    const sp__graph_action_t *a;
    const unsigned char *p;
    uint32_t kl;

    if (action < 0 || (uint32_t)action >= graph->nactions)
        return false;
    a = &graph->actions[action];
    if (index >= a->ncollected)
        return false;
    p = a->collected + a->offsets[index];
    kl = sp_graph_load32(p);
    *key_p = p + 8;
    *key_len_p = kl;
    *value_p = p + 8 + kl;
    *value_len_p = sp_graph_load32(p + 4);
    return true;
}
