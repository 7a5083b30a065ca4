/*
 * Job lookup: the built-in jobs by name, and plugins loaded with dlopen().
 *
 * A name containing '/' or ending in ".so" is a plugin; anything else is a
 * built-in. A plugin is opened with RTLD_NOW, so a symbol it needs and the
 * process does not provide fails the load here, with the loader's message,
 * rather than the first task that calls it; and with RTLD_LOCAL, so two
 * plugins never see each other's symbols. Its descriptor is checked once,
 * at load, for everything that can be checked without running it: ABI
 * version, a size covering every field spate reads, a name, the required
 * callbacks, and a combiner with a combine function. What depends on the
 * plan (RANGE partitioning, the read order) cannot be known here; it is for
 * whoever runs the plan to check. The descriptor is used in place and lives
 * as long as the handle; a built-in's handle is NULL.
 *
 * A plan is the job's word, checked by sp__job_plan_check() before anything
 * is sized from it (the driver and the serial runner allocate per-task state
 * from maps and partitions): 1 .. SP__JOB_MAX_MAPS maps, 1 .. SP_MAX_PARTITIONS
 * partitions (a partition id must fit the packed record pointer's 24 bits,
 * and the tracker, the map status and the index file take no more), and a
 * splits array. A count out of range also says nothing about how long the
 * splits array really is, so sp__job_plan_clear() then frees the array alone
 * and never reads its entries.
 *
 * The functions a plugin calls (sp_job_emit and the rest) must come from the
 * process that loads it: libspate.so in an application linked with it, or
 * the spate executable, which must export its public symbols for that (see
 * examples/plugin/README.md). A plugin never links its own copy of spate.
 */
#include "common_int.h"
#include "executor/graph_int.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/*
 * The built-in jobs, in the order --help lists them.
 */
static const sp_job_t *const sp_job_builtin_table[] = {
    &sp__job_terasort, &sp__job_wordcount, &sp__job_shuffle,
    &sp__job_pagerank, &sp__job_join,      &sp__job_groupby,
};

/* Bytes of the descriptor spate reads of version 1: everything up to counter_names. */
#define SP_JOB_DESCRIPTOR_MIN_SIZE                                                                 \
    (offsetof(sp_job_t, counter_names) + sizeof(((sp_job_t *)0)->counter_names))
/* And of version 2: up to finish_graph. */
#define SP_JOB_DESCRIPTOR_V2_SIZE                                                                  \
    (offsetof(sp_job_t, finish_graph) + sizeof(((sp_job_t *)0)->finish_graph))

typedef const sp_job_t *(*sp_job_descriptor_fn_t)(void);

const sp_job_t *const *sp__job_builtins(size_t *count_p)
{
    *count_p = SP_ARRAY_SIZE(sp_job_builtin_table);
    return sp_job_builtin_table;
}

/* "a, b, c": the built-in names, for messages. */
static void sp_job_builtin_names(char *buf, size_t cap)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < SP_ARRAY_SIZE(sp_job_builtin_table) && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i > 0 ? ", " : "",
                         sp_job_builtin_table[i]->name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static bool sp_job_is_plugin_name(const char *name)
{
    size_t len = strlen(name);

    return strchr(name, '/') != NULL || (len > 3 && strcmp(name + len - 3, ".so") == 0);
}

/* Checks what can be checked of a plugin's descriptor without running it. */
static sp_status_t sp_job_check_descriptor(const char *path, const sp_job_t *job)
{
    if (job == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "job plugin %s: %s() returned NULL", path,
                        SP_JOB_DESCRIPTOR_SYMBOL);
    if (job->abi_version != 1 && job->abi_version != SP_JOB_ABI_VERSION)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "job plugin %s: built for job ABI version %u, this spate runs versions 1 "
                        "and %u; rebuild it against this spate's <spate/job.h>",
                        path, job->abi_version, SP_JOB_ABI_VERSION);
    if (job->size <
        (job->abi_version == 1 ? SP_JOB_DESCRIPTOR_MIN_SIZE : SP_JOB_DESCRIPTOR_V2_SIZE))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "job plugin %s: descriptor size %u is smaller than the %zu bytes of "
                        "sp_job_t version %u (set .size = sizeof(sp_job_t))",
                        path, job->size,
                        (size_t)(job->abi_version == 1 ? SP_JOB_DESCRIPTOR_MIN_SIZE
                                                       : SP_JOB_DESCRIPTOR_V2_SIZE),
                        job->abi_version);
    if (job->name == NULL || job->name[0] == '\0')
        return SP_RAISE(SP_ERR_BAD_FORMAT, "job plugin %s: the job has no name", path);
    if (sp__job_is_graph(job))
        return SP_OK;
    if (job->plan == NULL || job->map == NULL || job->reduce == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "job plugin %s: job '%s' lacks a required callback: %s is NULL (a graph "
                        "job of version 2 sets build instead)",
                        path, job->name,
                        job->plan == NULL  ? "plan"
                        : job->map == NULL ? "map"
                                           : "reduce");
    if (job->combiner != NULL && job->combiner->combine == NULL)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "job plugin %s: job '%s' has a combiner whose combine function is NULL",
                        path, job->name);
    return SP_OK;
}

static sp_status_t sp_job_load_plugin(const char *path, const sp_job_t **job_p, void **handle_p)
{
    sp_job_descriptor_fn_t descriptor;
    const sp_job_t *job;
    const char *err;
    struct stat st;
    sp_status_t status;
    void *handle;
    void *sym;

    /* A path that names nothing is "not found"; what dlopen() then refuses is a bad plugin. */
    if (strchr(path, '/') != NULL && stat(path, &st) != 0)
        return SP_RAISE(errno == ENOENT || errno == ENOTDIR ? SP_ERR_NOT_FOUND : SP_ERR_BAD_FORMAT,
                        "job plugin %s: %s (errno %d)", path, strerror(errno), errno);
    (void)dlerror();
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        err = dlerror();
        if (err == NULL)
            err = "unknown dlopen error";
        /* Without a '/' the loader searched its path; failing to find it there is not found. */
        if (strchr(path, '/') == NULL && strstr(err, "No such file") != NULL)
            return SP_RAISE(SP_ERR_NOT_FOUND, "job plugin %s: not found: %s", path, err);
        return SP_RAISE(SP_ERR_BAD_FORMAT, "job plugin %s: cannot load it: %s", path, err);
    }

    (void)dlerror();
    sym = dlsym(handle, SP_JOB_DESCRIPTOR_SYMBOL);
    err = dlerror();
    if (sym == NULL) {
        status = SP_RAISE(SP_ERR_BAD_FORMAT,
                          "job plugin %s: no symbol %s (%s); a plugin defines it with "
                          "SP_JOB_EXPORT(job)",
                          path, SP_JOB_DESCRIPTOR_SYMBOL, err != NULL ? err : "it is NULL");
        goto err_close;
    }
    /* POSIX guarantees that dlsym()'s object pointer converts to a function pointer. */
    memcpy(&descriptor, &sym, sizeof(descriptor));
    job = descriptor();
    status = sp_job_check_descriptor(path, job);
    if (status != SP_OK)
        goto err_close;

    *job_p = job;
    *handle_p = handle;
    return SP_OK;

err_close:
    dlclose(handle);
    return status;
}

sp_status_t sp__job_load(const char *name, const sp_job_t **job_p, void **handle_p)
{
    char names[256];

    if (name == NULL || name[0] == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "no job named: give a built-in job's name or a "
                                              "plugin's path");
    if (sp_job_is_plugin_name(name))
        return sp_job_load_plugin(name, job_p, handle_p);

    for (size_t i = 0; i < SP_ARRAY_SIZE(sp_job_builtin_table); i++) {
        if (strcmp(sp_job_builtin_table[i]->name, name) == 0) {
            *job_p = sp_job_builtin_table[i];
            *handle_p = NULL;
            return SP_OK;
        }
    }
    sp_job_builtin_names(names, sizeof(names));
    return SP_RAISE(SP_ERR_NOT_FOUND,
                    "unknown job '%s': the built-in jobs are %s (a plugin is named by a path "
                    "containing '/' or ending in .so)",
                    name, names);
}

void sp__job_unload(void *handle)
{
    if (handle != NULL)
        dlclose(handle);
}

sp_status_t sp__job_plan_check(const sp_job_t *job, const sp_job_plan_t *plan)
{
    if (plan->maps == 0 || plan->maps > SP__JOB_MAX_MAPS)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "job %s planned %" PRIu32 " map tasks; a plan has 1 .. %" PRIu32, job->name,
                        plan->maps, SP__JOB_MAX_MAPS);
    if (plan->partitions == 0 || plan->partitions > SP_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "job %s planned %" PRIu32 " partitions; a plan has 1 .. %" PRIu32
                        " (partition ids are 24 bits)",
                        job->name, plan->partitions, SP_MAX_PARTITIONS);
    if (plan->splits == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "job %s planned %" PRIu32 " map tasks but no splits (plan->splits is NULL)",
                        job->name, plan->maps);
    return SP_OK;
}

void sp__job_plan_clear(sp_job_plan_t *plan)
{
    if (plan == NULL || plan->splits == NULL)
        return;
    /*
     * Splits and paths come from the job's malloc(), never from spate's wrappers. A map count
     * past the limit was refused and does not size the array: its entries are not read.
     */
    for (uint32_t i = 0; plan->maps <= SP__JOB_MAX_MAPS && i < plan->maps; i++)
        free(plan->splits[i].path);
    free(plan->splits);
    plan->splits = NULL;
}

const char *sp_job_arg(const sp_job_params_t *params, const char *key)
{
    const char *value = NULL;
    size_t key_len;

    if (params == NULL || key == NULL || params->args == NULL)
        return NULL;
    key_len = strlen(key);
    for (size_t i = 0; i < params->nargs; i++) {
        const char *arg = params->args[i];

        if (arg != NULL && strncmp(arg, key, key_len) == 0 && arg[key_len] == '=')
            value = arg + key_len + 1;
    }
    return value;
}

sp_status_t sp_job_arg_u64(const sp_job_params_t *params, const char *key, uint64_t dflt,
                           uint64_t max, uint64_t *value_p)
{
    const char *s = sp_job_arg(params, key);
    unsigned long long v;
    char *end;

    if (s == NULL) {
        *value_p = dflt;
        return SP_OK;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v > max)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "--job-arg %s=%s: want an integer from 0 to %" PRIu64,
                        key, s, max);
    *value_p = v;
    return SP_OK;
}
