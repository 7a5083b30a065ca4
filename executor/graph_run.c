/*
 * The local runner of graph jobs: the whole graph in this process, one task
 * at a time, with local fetches and the memory manager's block store. It is
 * the embedded form (an engine linking libspate runs a graph job with it)
 * and what the operation tests run against references.
 *
 * Actions run in the order the job added them. A stage runs lazily: an
 * action's tasks run, and a task that reads a shuffle not computed yet
 * fails with SP_ERR_FETCH_FAILED naming it; the runner then computes that
 * shuffle's map stage (whose own tasks may do the same for their parents)
 * and runs the task again. So a shuffle is computed once and reused by
 * every later stage and action that reads it (Spark's skipped stages), and
 * a stage below a dataset whose partitions are all cached never runs. A
 * map output or cached block lost meanwhile (a test evicting storage, say)
 * is recomputed the same way, bounded by stage.max_attempts per stage.
 */
#include "graph_int.h"

#include "common_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct sp_lshuffle {
    sp_map_status_t **statuses; /* maps entries once computed; NULL: never computed */
    sp_key_t *bounds;           /* RANGE with more than one partition */
    void *bound_storage;
    uint32_t action; /* the action whose run computed it; UINT32_MAX: none */
} sp_lshuffle_t;

typedef struct sp_lrun {
    const sp_job_t *job;
    sp_graph_t *graph;
    sp__graph_env_t env;
    sp_lshuffle_t *shuffles;
    sp__graph_stats_t stats;
    uint32_t action; /* running now */
    int64_t max_attempts;
    sp_job_result_t result;
} sp_lrun_t;

static sp_status_t sp_lrun_statuses(void *arg, uint32_t shuffle,
                                    const sp_map_status_t *const **list_p, size_t *count_p)
{
    sp_lrun_t *r = arg;
    sp_lshuffle_t *s = &r->shuffles[shuffle];

    if (s->statuses == NULL)
        return SP_ERR_NOT_FOUND;
    if (s->action != r->action && s->action != UINT32_MAX) {
        /* Computed by an earlier action: this one skips its stage. */
        r->stats.stages_skipped++;
        s->action = UINT32_MAX;
    }
    *list_p = (const sp_map_status_t *const *)s->statuses;
    *count_p = r->graph->shuffles[shuffle].maps;
    return SP_OK;
}

static sp_status_t sp_lrun_bounds(void *arg, uint32_t shuffle, const sp_key_t **keys_p)
{
    sp_lrun_t *r = arg;

    if (r->shuffles[shuffle].bounds == NULL)
        return SP_RAISE(SP_ERR_INTERNAL, "shuffle %u has no range bounds", shuffle);
    *keys_p = r->shuffles[shuffle].bounds;
    return SP_OK;
}

static sp_status_t sp_lrun_compute(sp_lrun_t *r, uint32_t shuffle, unsigned depth);

static void sp_lrun_account(sp_lrun_t *r, uint32_t stage, const sp__task_metrics_t *m)
{
    for (unsigned c = 0; c < SP_JOB_COUNTERS; c++)
        r->result.counters[c] += m->counters[c];
    if (stage < r->graph->nshuffles) {
        r->result.map_records += m->records_out;
    } else {
        r->result.reduce_records += m->records_in;
        r->result.output_bytes += m->bytes_out;
    }
}

/*
 * Runs one task to success: a shuffle it needs that is not computed (or a
 * map output it cannot read) is computed first, then the task runs again.
 */
static sp_status_t sp_lrun_task(sp_lrun_t *r, uint32_t stage, uint32_t index, bool sample,
                                uint32_t count, sp__graph_task_out_t *out, unsigned depth)
{
    sp__task_metrics_t m;
    uint32_t attempt = 0;
    sp_status_t st;

    for (;;) {
        st = sp__graph_task_run(&r->env, stage, index, attempt, sample, count, out, &m);
        if (st == SP_OK) {
            r->stats.tasks++;
            r->stats.blocks_cached += out->cached;
            r->stats.cache_hits += out->cache_hits;
            r->stats.spills += m.spills;
            if (!sample)
                sp_lrun_account(r, stage, &m);
            return SP_OK;
        }
        if (st != SP_ERR_FETCH_FAILED || ++attempt > (uint32_t)r->max_attempts)
            return st;
        if (out->missing_shuffle != UINT64_MAX) {
            st = sp_lrun_compute(r, (uint32_t)out->missing_shuffle, depth + 1);
        } else {
            /* A map output lost under the task: forget it and compute the stage again. */
            for (uint32_t s = 0; s < r->graph->nshuffles; s++) {
                sp_lshuffle_t *ls = &r->shuffles[s];
                for (uint32_t mi = 0; ls->statuses != NULL && mi < r->graph->shuffles[s].maps;
                     mi++) {
                    sp_map_status_destroy(ls->statuses[mi]);
                    ls->statuses[mi] = NULL;
                }
                sp__free(ls->statuses);
                ls->statuses = NULL;
            }
            r->stats.stages_recomputed++;
            st = SP_OK;
        }
        if (st != SP_OK)
            return st;
    }
}

/* The range bounds of a sorting shuffle: every map task samples its keys. */
static sp_status_t sp_lrun_sample(sp_lrun_t *r, uint32_t shuffle, unsigned depth)
{
    const sp__graph_shuffle_t *sh = &r->graph->shuffles[shuffle];
    sp_lshuffle_t *ls = &r->shuffles[shuffle];
    unsigned char *all = NULL;
    size_t all_len = 0;
    sp_status_t st = SP_OK;

    for (uint32_t m = 0; m < sh->maps && st == SP_OK; m++) {
        sp__graph_task_out_t out;
        unsigned char *grown;
        if ((st = sp_lrun_task(r, shuffle, m, true, 0, &out, depth)) != SP_OK)
            break;
        grown = sp__realloc(all, all_len + out.payload_len + 1);
        if (grown == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for the sample of shuffle %u", shuffle);
        } else {
            all = grown;
            if (out.payload_len > 0)
                memcpy(all + all_len, out.payload, out.payload_len);
            all_len += out.payload_len;
        }
        sp__graph_task_out_clear(&out);
    }
    if (st == SP_OK)
        st = sp__range_bounds(all, all_len, sh->partitions, sh->compare, sh->compare_arg,
                              &ls->bounds, &ls->bound_storage);
    sp__free(all);
    return st;
}

static sp_status_t sp_lrun_compute(sp_lrun_t *r, uint32_t shuffle, unsigned depth)
{
    const sp__graph_shuffle_t *sh = &r->graph->shuffles[shuffle];
    sp_lshuffle_t *ls = &r->shuffles[shuffle];
    sp_status_t st;

    if (depth > r->graph->nshuffles + 1)
        return SP_RAISE(SP_ERR_INTERNAL, "shuffle %u: recomputation does not converge", shuffle);
    if (sh->partitioner == SP_PARTITIONER_RANGE && ls->bounds == NULL &&
        (st = sp_lrun_sample(r, shuffle, depth)) != SP_OK)
        return st;
    if (ls->statuses == NULL &&
        (ls->statuses = sp__calloc(sh->maps, sizeof(*ls->statuses))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u map statuses", sh->maps);
    r->stats.stages_run++;
    for (uint32_t m = 0; m < sh->maps; m++) {
        sp__graph_task_out_t out;
        if (ls->statuses != NULL && ls->statuses[m] != NULL)
            continue;
        if ((st = sp_lrun_task(r, shuffle, m, false, 0, &out, depth)) != SP_OK)
            return st;
        if (ls->statuses == NULL &&
            (ls->statuses = sp__calloc(sh->maps, sizeof(*ls->statuses))) == NULL) {
            sp__graph_task_out_clear(&out);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u map statuses", sh->maps);
        }
        ls->statuses[m] = out.status;
        out.status = NULL;
        sp__graph_task_out_clear(&out);
    }
    ls->action = r->action;
    return SP_OK;
}

static void sp_lrun_unpersist(sp_lrun_t *r, const sp_dataset_t *ds)
{
    char id[256];

    for (uint32_t p = 0; p < ds->partitions; p++) {
        sp__graph_block_id(r->env.run_id, ds->id, p, id, sizeof(id));
        (void)sp_block_store_remove(r->env.blocks, id);
    }
}

static sp_status_t sp_lrun_action(sp_lrun_t *r, uint32_t a)
{
    const sp__graph_action_t *act = &r->graph->actions[a];
    uint32_t stage = r->graph->nshuffles + a;
    sp_status_t st;

    r->action = a;
    if (act->kind == SP__ACTION_UNPERSIST) {
        sp_lrun_unpersist(r, act->ds);
        return SP_OK;
    }
    r->stats.stages_run++;
    r->result.partitions += act->ds->partitions;
    for (uint32_t i = 0; i < act->ds->partitions; i++) {
        sp__graph_task_out_t out;
        if ((st = sp_lrun_task(r, stage, i, false, 0, &out, 0)) != SP_OK)
            return st;
        st = sp__graph_action_add(r->graph, a, out.payload, out.payload_len);
        sp__graph_task_out_clear(&out);
        if (st != SP_OK)
            return st;
    }
    return SP_OK;
}

sp_status_t sp__graph_run_local(const sp_job_t *job, const sp_job_params_t *params,
                                sp_memory_manager_t *mm, sp_job_result_t *result_p,
                                sp__graph_stats_t *stats_p, sp_graph_t **graph_p)
{
    static atomic_uint_fast64_t shuffle_ids = UINT64_C(1) << 32;
    static atomic_uint run_seq;
    sp_lrun_t r = {.job = job};
    sp__output_t *output = NULL;
    sp_block_store_t *own_blocks = NULL;
    char run_id[64], *block_dir = NULL;
    sp_status_t st;

    snprintf(run_id, sizeof(run_id), "local-%ld-%u-%llu", (long)getpid(),
             atomic_fetch_add(&run_seq, 1), (unsigned long long)time(NULL));
    if ((st = sp__graph_build(job, params, &r.graph)) != SP_OK)
        return st;
    if ((st = sp_conf_get_int(params->conf, "stage.max_attempts", &r.max_attempts)) != SP_OK)
        goto out_graph;
    r.env = (sp__graph_env_t){.graph = r.graph,
                              .job = job,
                              .params = params,
                              .mm = mm,
                              .conf = params->conf,
                              .blocks = sp_memory_manager_block_store(mm),
                              .shuffle_base = atomic_fetch_add(&shuffle_ids, r.graph->nshuffles),
                              .run_id = run_id,
                              .statuses = sp_lrun_statuses,
                              .bounds = sp_lrun_bounds,
                              .arg = &r};
    if (r.env.blocks == NULL) {
        const char *dirs = "/tmp";
        size_t first;
        (void)sp_conf_get_string(params->conf, "shuffle.local_dirs", &dirs);
        first = strcspn(dirs, ",");
        if (asprintf(&block_dir, "%.*s/blocks-%s", (int)first, dirs, run_id) < 0) {
            block_dir = NULL;
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a path");
            goto out_graph;
        }
        if ((st = sp_block_store_create(mm, block_dir, &own_blocks)) != SP_OK)
            goto out_graph;
        r.env.blocks = own_blocks;
    }
    r.shuffles = sp__calloc(r.graph->nshuffles + 1, sizeof(*r.shuffles));
    if (r.shuffles == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u shuffles", r.graph->nshuffles);
        goto out_blocks;
    }
    for (uint32_t s = 0; s < r.graph->nshuffles; s++)
        r.shuffles[s].action = UINT32_MAX;
    if (r.graph->saves && params->output != NULL &&
        (st = sp__output_prepare(params->output, run_id, &output)) != SP_OK)
        goto out_shuffles;
    for (uint32_t a = 0; a < r.graph->nactions; a++)
        if ((st = sp_lrun_action(&r, a)) != SP_OK)
            goto out_output;
    for (uint32_t a = 0; output != NULL && a < r.graph->nactions; a++)
        if (r.graph->actions[a].kind == SP__ACTION_SAVE &&
            (st = sp__output_publish(output, r.graph->actions[a].ds->partitions)) != SP_OK)
            goto out_output;
    if (job->finish_graph != NULL &&
        (st = job->finish_graph(r.graph, params, &r.result, stderr)) != SP_OK) {
        st = SP_RAISE(st, "job %s: %s", job->name, sp_last_error());
        goto out_output;
    }
    if (output != NULL && (st = sp__output_succeed(output)) != SP_OK)
        goto out_output;
    if (result_p != NULL)
        *result_p = r.result;
    if (stats_p != NULL)
        *stats_p = r.stats;
out_output:
    if (st != SP_OK)
        sp__output_abort(output);
    sp__output_release(output);
out_shuffles:
    for (uint32_t s = 0; s < r.graph->nshuffles; s++) {
        sp_lshuffle_t *ls = &r.shuffles[s];
        for (uint32_t m = 0; ls->statuses != NULL && m < r.graph->shuffles[s].maps; m++)
            sp_map_status_destroy(ls->statuses[m]);
        sp__free(ls->statuses);
        sp__free(ls->bounds);
        sp__free(ls->bound_storage);
        sp_shuffle_remove(params->conf, r.env.shuffle_base + s);
    }
    sp__free(r.shuffles);
out_blocks:
    if (own_blocks == NULL) {
        /* The manager's own store outlives the run: take this run's blocks out. */
        for (uint32_t i = 0; i < r.graph->ndatasets; i++)
            if (r.graph->datasets[i]->persisted)
                sp_lrun_unpersist(&r, r.graph->datasets[i]);
    }
    sp_block_store_destroy(own_blocks);
    free(block_dir);
out_graph:
    if (st == SP_OK && graph_p != NULL)
        *graph_p = r.graph;
    else
        sp__graph_destroy(r.graph);
    return st;
}
