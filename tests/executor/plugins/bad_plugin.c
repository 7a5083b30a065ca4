/*
 * Job plugins that spate must refuse, one per flaw, built from this file with
 * PLUGIN_FLAW_<name> defined (tests/executor/CMakeLists.txt):
 *   abi        a descriptor of another ABI version
 *   size       a descriptor whose size is smaller than sp_job_t
 *   no_symbol  no sp_job_descriptor symbol at all
 *   null_desc  sp_job_descriptor() returns NULL
 *   null_map   the map callback is NULL
 *   no_name    the job's name is empty
 *   combiner   a combiner without a combine function
 *   undefined  needs a symbol no process provides (dlopen with RTLD_NOW fails)
 * Apart from its flaw each is a complete, harmless job.
 */
#include <spate/spate.h>

#include <stdlib.h>

static sp_status_t bad_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    (void)params;
    plan->maps = 1;
    plan->splits = calloc(1, sizeof(*plan->splits));
    plan->partitions = 1;
    return plan->splits != NULL ? SP_OK : SP_ERR_NOMEM;
}

#if defined(PLUGIN_FLAW_undefined)
/* Defined nowhere: the loader must refuse the plugin. */
extern int sp_test_symbol_nobody_defines(void);
#endif

#if !defined(PLUGIN_FLAW_null_map)
static sp_status_t bad_map(sp_job_task_t *task, const sp_job_split_t *split)
{
    (void)task;
    (void)split;
#if defined(PLUGIN_FLAW_undefined)
    return sp_test_symbol_nobody_defines() == 0 ? SP_OK : SP_ERR_INTERNAL;
#else
    return SP_OK;
#endif
}
#endif

static sp_status_t bad_reduce(sp_job_task_t *task, const void *key, size_t key_len,
                              const void *value, size_t value_len)
{
    (void)task;
    (void)key;
    (void)key_len;
    (void)value;
    (void)value_len;
    return SP_OK;
}

#if defined(PLUGIN_FLAW_combiner)
static const sp_combiner_t bad_combiner = {.combine = NULL, .arg = NULL};
#endif

static const sp_job_t bad_job = {
#if defined(PLUGIN_FLAW_abi)
    .abi_version = SP_JOB_ABI_VERSION + 1,
#else
    .abi_version = SP_JOB_ABI_VERSION,
#endif
#if defined(PLUGIN_FLAW_size)
    .size = 16,
#else
    .size = sizeof(sp_job_t),
#endif
#if defined(PLUGIN_FLAW_no_name)
    .name = "",
#else
    .name = "bad",
#endif
    .summary = "a job plugin spate must refuse",
    .plan = bad_plan,
#if defined(PLUGIN_FLAW_null_map)
    .map = NULL,
#else
    .map = bad_map,
#endif
    .reduce = bad_reduce,
#if defined(PLUGIN_FLAW_combiner)
    .combiner = &bad_combiner,
#endif
};

#if defined(PLUGIN_FLAW_no_symbol)
/* Exported under another name than SP_JOB_DESCRIPTOR_SYMBOL. */
SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor_misspelt(void);
SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor_misspelt(void) { return &bad_job; }
#elif defined(PLUGIN_FLAW_null_desc)
SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor(void);
SP_JOB_EXPORT_ATTR const sp_job_t *sp_job_descriptor(void)
{
    /* Always NULL; the test keeps bad_job referenced. */
    return bad_job.name == NULL ? &bad_job : NULL;
}
#else
SP_JOB_EXPORT(bad_job)
#endif
