/*
 * Encoding and decoding of the control protocol's payloads (protocol.h).
 * Writers go through the sticky-status sp__wbuf_t, so each encoder checks
 * once at the end; readers check every field with sp__rbuf_t and finish
 * with sp__rbuf_done(), so that a payload with bytes left over is refused
 * like a truncated one. Counts are bounded by what the remaining bytes can
 * hold before anything is allocated for them.
 */
#include "protocol.h"

#include "common_int.h"
#include "control/ctl.h"

#include <stdlib.h>
#include <string.h>

static sp_status_t sp_msg_finish(sp__wbuf_t *w, void **buf_p, size_t *len_p)
{
    sp_status_t st = sp__wbuf_status(w);

    if (st != SP_OK) {
        sp__wbuf_free(w);
        return st;
    }
    if (w->data == NULL) {
        if ((w->data = sp__malloc(1)) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a control message");
    }
    *buf_p = w->data;
    *len_p = w->len;
    return SP_OK;
}

/* Copies a string field into a fixed buffer, refusing one that does not fit. */
static sp_status_t sp_get_fixed_str(sp__rbuf_t *r, const char *what, char *dst, size_t cap)
{
    char *s = NULL;
    sp_status_t st = sp__rbuf_get_str(r, what, cap - 1, &s);

    if (st != SP_OK)
        return st;
    memcpy(dst, s, strlen(s) + 1);
    free(s);
    return SP_OK;
}

/* ---- REGISTER ---- */

sp_status_t sp__msg_register_encode(const sp__msg_register_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_str(&w, m->host);
    sp__wbuf_put_u32(&w, m->pid);
    sp__wbuf_put_str(&w, m->name);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_register_decode(const void *buf, size_t len, sp__msg_register_t *m)
{
    sp__msg_register_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp_get_fixed_str(&r, "REGISTER host", out.host, sizeof(out.host))) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "REGISTER pid", &out.pid)) != SP_OK ||
        (st = sp_get_fixed_str(&r, "REGISTER name", out.name, sizeof(out.name))) != SP_OK ||
        (st = sp__rbuf_done(&r, "REGISTER")) != SP_OK)
        return st;
    *m = out;
    return SP_OK;
}

/* ---- JOB ---- */

static void sp_put_opt_str(sp__wbuf_t *w, const char *s)
{
    sp__wbuf_put_u8(w, s != NULL);
    sp__wbuf_put_str(w, s != NULL ? s : "");
}

static sp_status_t sp_get_opt_str(sp__rbuf_t *r, const char *what, char **s_p)
{
    uint8_t present;
    char *s = NULL;
    sp_status_t st;

    if ((st = sp__rbuf_get_u8(r, what, &present)) != SP_OK ||
        (st = sp__rbuf_get_str(r, what, 4096, &s)) != SP_OK)
        return st;
    if (!present) {
        free(s);
        s = NULL;
    }
    *s_p = s;
    return SP_OK;
}

sp_status_t sp__msg_job_encode(const sp__msg_job_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u32(&w, m->executor_id);
    sp__wbuf_put_u64(&w, m->shuffle_id);
    sp__wbuf_put_str(&w, m->app_id);
    sp__wbuf_put_str(&w, m->job_name);
    sp_put_opt_str(&w, m->input);
    sp_put_opt_str(&w, m->output);
    sp__wbuf_put_u64(&w, m->size);
    sp__wbuf_put_u32(&w, m->partitions);
    sp__wbuf_put_u32(&w, m->executors);
    sp__wbuf_put_u32(&w, m->slots);
    sp__wbuf_put_u32(&w, m->nargs);
    for (uint32_t i = 0; i < m->nargs; i++)
        sp__wbuf_put_str(&w, m->args[i]);
    sp__wbuf_put_u32(&w, m->nconf);
    for (uint32_t i = 0; i < m->nconf; i++) {
        sp__wbuf_put_str(&w, m->conf_keys[i]);
        sp__wbuf_put_str(&w, m->conf_values[i]);
    }
    sp__wbuf_put_u32(&w, m->plan.maps);
    sp__wbuf_put_u32(&w, m->plan.partitions);
    sp__wbuf_put_u8(&w, (uint8_t)m->plan.partitioning);
    sp__wbuf_put_u8(&w, m->plan.key_ordering);
    sp__wbuf_put_u8(&w, (uint8_t)m->plan.order);
    sp__wbuf_put_u32(&w, m->plan.sample_per_map);
    for (uint32_t i = 0; i < m->plan.maps; i++) {
        sp_put_opt_str(&w, m->plan.splits[i].path);
        sp__wbuf_put_u64(&w, m->plan.splits[i].offset);
        sp__wbuf_put_u64(&w, m->plan.splits[i].length);
    }
    return sp_msg_finish(&w, buf_p, len_p);
}

void sp__msg_job_clear(sp__msg_job_t *m)
{
    free(m->app_id);
    free(m->job_name);
    free(m->input);
    free(m->output);
    for (uint32_t i = 0; m->args != NULL && i < m->nargs; i++)
        free(m->args[i]);
    free(m->args);
    /* nconf may be a count that was refused before the arrays were allocated. */
    for (uint32_t i = 0; (m->conf_keys != NULL || m->conf_values != NULL) && i < m->nconf; i++) {
        if (m->conf_keys != NULL)
            free(m->conf_keys[i]);
        if (m->conf_values != NULL)
            free(m->conf_values[i]);
    }
    free(m->conf_keys);
    free(m->conf_values);
    sp__job_plan_clear(&m->plan);
    memset(m, 0, sizeof(*m));
}

/* A count of entries that each take at least min_bytes must fit what is left. */
static sp_status_t sp_check_count(sp__rbuf_t *r, const char *what, uint32_t count, size_t min_bytes)
{
    if ((uint64_t)count * min_bytes > sp__rbuf_left(r))
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "control message %s: count %u does not fit the %zu bytes left", what, count,
                        sp__rbuf_left(r));
    return SP_OK;
}

sp_status_t sp__msg_job_decode(const void *buf, size_t len, sp__msg_job_t *m)
{
    sp__msg_job_t out = {0};
    uint8_t part, ordering, order;
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u32(&r, "JOB executor id", &out.executor_id)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "JOB shuffle id", &out.shuffle_id)) != SP_OK ||
        (st = sp__rbuf_get_str(&r, "JOB app id", 128, &out.app_id)) != SP_OK ||
        (st = sp__rbuf_get_str(&r, "JOB name", 4096, &out.job_name)) != SP_OK ||
        (st = sp_get_opt_str(&r, "JOB input", &out.input)) != SP_OK ||
        (st = sp_get_opt_str(&r, "JOB output", &out.output)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "JOB size", &out.size)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB partitions", &out.partitions)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB executors", &out.executors)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB slots", &out.slots)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB argument count", &out.nargs)) != SP_OK ||
        (st = sp_check_count(&r, "JOB arguments", out.nargs, 4)) != SP_OK)
        goto err;
    if (strchr(out.app_id, '/') != NULL || strstr(out.app_id, "..") != NULL ||
        out.app_id[0] == '\0') {
        st = SP_RAISE(SP_ERR_BAD_FORMAT, "JOB app id '%s' is not a plain name", out.app_id);
        goto err;
    }
    if ((out.args = sp__calloc(out.nargs + 1, sizeof(*out.args))) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u job arguments", out.nargs);
        goto err;
    }
    for (uint32_t i = 0; i < out.nargs; i++)
        if ((st = sp__rbuf_get_str(&r, "JOB argument", 4096, &out.args[i])) != SP_OK)
            goto err;
    if ((st = sp__rbuf_get_u32(&r, "JOB conf count", &out.nconf)) != SP_OK ||
        (st = sp_check_count(&r, "JOB conf", out.nconf, 8)) != SP_OK)
        goto err;
    out.conf_keys = sp__calloc(out.nconf + 1, sizeof(char *));
    out.conf_values = sp__calloc(out.nconf + 1, sizeof(char *));
    if (out.conf_keys == NULL || out.conf_values == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u configuration keys", out.nconf);
        goto err;
    }
    for (uint32_t i = 0; i < out.nconf; i++)
        if ((st = sp__rbuf_get_str(&r, "JOB conf key", 256, &out.conf_keys[i])) != SP_OK ||
            (st = sp__rbuf_get_str(&r, "JOB conf value", 4096, &out.conf_values[i])) != SP_OK)
            goto err;
    if ((st = sp__rbuf_get_u32(&r, "JOB maps", &out.plan.maps)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB plan partitions", &out.plan.partitions)) != SP_OK ||
        (st = sp__rbuf_get_u8(&r, "JOB partitioning", &part)) != SP_OK ||
        (st = sp__rbuf_get_u8(&r, "JOB key ordering", &ordering)) != SP_OK ||
        (st = sp__rbuf_get_u8(&r, "JOB read order", &order)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "JOB sample size", &out.plan.sample_per_map)) != SP_OK ||
        (st = sp_check_count(&r, "JOB splits", out.plan.maps, 21)) != SP_OK)
        goto err;
    /* A graph job has no plan (0 maps and 0 partitions): its executors build its graph. */
    if ((out.plan.maps == 0) != (out.plan.partitions == 0) || part > SP_JOB_GIVEN || ordering > 1 ||
        order > SP_READ_AGGREGATE) {
        st = SP_RAISE(SP_ERR_BAD_FORMAT,
                      "JOB plan is invalid: %u maps, %u partitions, partitioning %u, order %u",
                      out.plan.maps, out.plan.partitions, part, order);
        goto err;
    }
    out.plan.partitioning = (sp_job_partitioning_t)part;
    out.plan.key_ordering = ordering != 0;
    out.plan.order = (sp_read_order_t)order;
    if ((out.plan.splits = sp__calloc(out.plan.maps + 1, sizeof(*out.plan.splits))) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %u splits", out.plan.maps);
        goto err;
    }
    for (uint32_t i = 0; i < out.plan.maps; i++)
        if ((st = sp_get_opt_str(&r, "JOB split path", &out.plan.splits[i].path)) != SP_OK ||
            (st = sp__rbuf_get_u64(&r, "JOB split offset", &out.plan.splits[i].offset)) != SP_OK ||
            (st = sp__rbuf_get_u64(&r, "JOB split length", &out.plan.splits[i].length)) != SP_OK)
            goto err;
    if ((st = sp__rbuf_done(&r, "JOB")) != SP_OK)
        goto err;
    *m = out;
    return SP_OK;
err:
    sp__msg_job_clear(&out);
    return st;
}

/* ---- READY ---- */

sp_status_t sp__msg_ready_encode(const sp__msg_ready_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_str(&w, m->address);
    sp__wbuf_put_u32(&w, m->slots);
    sp__wbuf_put_u64(&w, m->memory);
    sp__wbuf_put_u32(&w, m->numa_node);
    sp__wbuf_put_str(&w, m->cpuset);
    sp__wbuf_put_u64(&w, m->cpu_ns);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_ready_decode(const void *buf, size_t len, sp__msg_ready_t *m)
{
    sp__msg_ready_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp_get_fixed_str(&r, "READY address", out.address, sizeof(out.address))) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "READY slots", &out.slots)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "READY memory", &out.memory)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "READY NUMA node", &out.numa_node)) != SP_OK ||
        (st = sp_get_fixed_str(&r, "READY cpuset", out.cpuset, sizeof(out.cpuset))) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "READY cpu", &out.cpu_ns)) != SP_OK ||
        (st = sp__rbuf_done(&r, "READY")) != SP_OK)
        return st;
    if (out.slots == 0 || out.slots > 65536)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "READY offers %u task slots", out.slots);
    *m = out;
    return SP_OK;
}

/* ---- TASK ---- */

sp_status_t sp__msg_task_encode(const sp__msg_task_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u64(&w, m->task_id);
    sp__wbuf_put_u8(&w, m->kind);
    sp__wbuf_put_u32(&w, m->index);
    sp__wbuf_put_u32(&w, m->attempt);
    sp__wbuf_put_u32(&w, m->sample_count);
    sp__wbuf_put_u32(&w, m->stage);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_task_decode(const void *buf, size_t len, sp__msg_task_t *m)
{
    sp__msg_task_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u64(&r, "TASK id", &out.task_id)) != SP_OK ||
        (st = sp__rbuf_get_u8(&r, "TASK kind", &out.kind)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "TASK index", &out.index)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "TASK attempt", &out.attempt)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "TASK sample count", &out.sample_count)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "TASK stage", &out.stage)) != SP_OK ||
        (st = sp__rbuf_done(&r, "TASK")) != SP_OK)
        return st;
    if (out.kind > SP_TASK_KIND_REDUCE)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "TASK of unknown kind %u", out.kind);
    *m = out;
    return SP_OK;
}

/* ---- RESULT ---- */

#define SP_METRIC_FIELDS 15

static void sp_metrics_fields(sp__task_metrics_t *t, uint64_t **f)
{
    uint64_t *list[SP_METRIC_FIELDS] = {
        &t->records_in, &t->records_out,  &t->bytes_in,      &t->bytes_out,   &t->spill_bytes,
        &t->spills,     &t->remote_bytes, &t->run_ns,        &t->map_ns,      &t->sort_ns,
        &t->spill_ns,   &t->merge_ns,     &t->fetch_wait_ns, &t->peak_memory, NULL};
    memcpy(f, list, sizeof(list));
}

sp_status_t sp__msg_result_encode(const sp__msg_result_t *m, void **buf_p, size_t *len_p)
{
    sp__task_metrics_t metrics = m->metrics;
    uint64_t *f[SP_METRIC_FIELDS];
    sp__wbuf_t w;

    sp_metrics_fields(&metrics, f);
    sp__wbuf_init(&w);
    sp__wbuf_put_u64(&w, m->task_id);
    sp__wbuf_put_u8(&w, m->kind);
    sp__wbuf_put_u32(&w, m->index);
    sp__wbuf_put_u32(&w, m->attempt);
    sp__wbuf_put_u32(&w, (uint32_t)m->status);
    sp__wbuf_put_str(&w, m->message);
    sp__wbuf_put_u64(&w, m->failed_map);
    for (unsigned i = 0; f[i] != NULL; i++)
        sp__wbuf_put_u64(&w, *f[i]);
    for (unsigned i = 0; i < SP_JOB_COUNTERS; i++)
        sp__wbuf_put_u64(&w, metrics.counters[i]);
    sp__wbuf_put_u64(&w, m->cpu_ns);
    sp__wbuf_put_bytes(&w, m->payload, m->payload_len);
    sp__wbuf_put_u32(&w, m->stage);
    sp__wbuf_put_u32(&w, m->shuffle);
    sp__wbuf_put_u32(&w, m->ncached);
    for (uint32_t i = 0; i < m->ncached; i++)
        sp__wbuf_put_u32(&w, m->cached[i]);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_result_decode(const void *buf, size_t len, sp__msg_result_t *m)
{
    sp__msg_result_t out = {0};
    uint64_t *f[SP_METRIC_FIELDS];
    uint32_t status;
    sp__rbuf_t r;
    sp_status_t st;

    sp_metrics_fields(&out.metrics, f);
    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u64(&r, "RESULT task id", &out.task_id)) != SP_OK ||
        (st = sp__rbuf_get_u8(&r, "RESULT kind", &out.kind)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT index", &out.index)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT attempt", &out.attempt)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT status", &status)) != SP_OK ||
        (st = sp_get_fixed_str(&r, "RESULT message", out.message, sizeof(out.message))) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "RESULT failed map", &out.failed_map)) != SP_OK)
        return st;
    for (unsigned i = 0; f[i] != NULL; i++)
        if ((st = sp__rbuf_get_u64(&r, "RESULT metrics", f[i])) != SP_OK)
            return st;
    for (unsigned i = 0; i < SP_JOB_COUNTERS; i++)
        if ((st = sp__rbuf_get_u64(&r, "RESULT counters", &out.metrics.counters[i])) != SP_OK)
            return st;
    if ((st = sp__rbuf_get_u64(&r, "RESULT cpu", &out.cpu_ns)) != SP_OK ||
        (st = sp__rbuf_get_bytes(&r, "RESULT payload", &out.payload, &out.payload_len)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT stage", &out.stage)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT shuffle", &out.shuffle)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "RESULT cached count", &out.ncached)) != SP_OK)
        return st;
    if (out.ncached > SP_MSG_MAX_CACHED ||
        (st = sp_check_count(&r, "RESULT cached", out.ncached, 4)) != SP_OK)
        return st != SP_OK ? st
                           : SP_RAISE(SP_ERR_BAD_FORMAT,
                                      "RESULT names %u cached blocks, at most "
                                      "%u",
                                      out.ncached, SP_MSG_MAX_CACHED);
    for (uint32_t i = 0; i < out.ncached; i++)
        if ((st = sp__rbuf_get_u32(&r, "RESULT cached", &out.cached[i])) != SP_OK)
            return st;
    if ((st = sp__rbuf_done(&r, "RESULT")) != SP_OK)
        return st;
    out.status = (int32_t)status;
    if (out.kind > SP_TASK_KIND_REDUCE || out.status > 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "RESULT of kind %u with status %d", out.kind,
                        out.status);
    *m = out;
    return SP_OK;
}

/* ---- HEARTBEAT / BYE ---- */

sp_status_t sp__msg_heartbeat_encode(const sp__msg_heartbeat_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u64(&w, m->execution_used);
    sp__wbuf_put_u64(&w, m->peak_rss);
    sp__wbuf_put_u64(&w, m->peak_anon);
    sp__wbuf_put_u32(&w, m->running);
    sp__wbuf_put_u64(&w, m->cpu_ns);
    sp__wbuf_put_u64(&w, m->peak_storage);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_heartbeat_decode(const void *buf, size_t len, sp__msg_heartbeat_t *m)
{
    sp__msg_heartbeat_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u64(&r, "HEARTBEAT execution", &out.execution_used)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "HEARTBEAT peak rss", &out.peak_rss)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "HEARTBEAT peak anon", &out.peak_anon)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "HEARTBEAT running", &out.running)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "HEARTBEAT cpu", &out.cpu_ns)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "HEARTBEAT peak storage", &out.peak_storage)) != SP_OK ||
        (st = sp__rbuf_done(&r, "HEARTBEAT")) != SP_OK)
        return st;
    *m = out;
    return SP_OK;
}

/* ---- MAP_LOST ---- */

sp_status_t sp__msg_map_lost_encode(const sp__msg_map_lost_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u64(&w, m->shuffle_id);
    sp__wbuf_put_u64(&w, m->map_id);
    sp__wbuf_put_u32(&w, m->executor_id);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_map_lost_decode(const void *buf, size_t len, sp__msg_map_lost_t *m)
{
    sp__msg_map_lost_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u64(&r, "MAP_LOST shuffle", &out.shuffle_id)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "MAP_LOST map", &out.map_id)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "MAP_LOST executor", &out.executor_id)) != SP_OK ||
        (st = sp__rbuf_done(&r, "MAP_LOST")) != SP_OK)
        return st;
    *m = out;
    return SP_OK;
}

/* ---- CANCEL ---- */

sp_status_t sp__msg_cancel_encode(const sp__msg_cancel_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u64(&w, m->task_id);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_cancel_decode(const void *buf, size_t len, sp__msg_cancel_t *m)
{
    sp__msg_cancel_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u64(&r, "CANCEL task", &out.task_id)) != SP_OK ||
        (st = sp__rbuf_done(&r, "CANCEL")) != SP_OK)
        return st;
    *m = out;
    return SP_OK;
}

/* ---- UNPERSIST ---- */

sp_status_t sp__msg_unpersist_encode(uint32_t dataset, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u32(&w, dataset);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_unpersist_decode(const void *buf, size_t len, uint32_t *dataset_p)
{
    uint32_t dataset;
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u32(&r, "UNPERSIST dataset", &dataset)) != SP_OK ||
        (st = sp__rbuf_done(&r, "UNPERSIST")) != SP_OK)
        return st;
    *dataset_p = dataset;
    return SP_OK;
}

/* ---- FATAL ---- */

sp_status_t sp__msg_fatal_encode(const sp__msg_fatal_t *m, void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u32(&w, m->signal);
    sp__wbuf_put_u64(&w, m->task_id);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_fatal_decode(const void *buf, size_t len, sp__msg_fatal_t *m)
{
    sp__msg_fatal_t out = {0};
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u32(&r, "FATAL signal", &out.signal)) != SP_OK ||
        (st = sp__rbuf_get_u64(&r, "FATAL task", &out.task_id)) != SP_OK ||
        (st = sp__rbuf_done(&r, "FATAL")) != SP_OK)
        return st;
    *m = out;
    return SP_OK;
}

/* ---- BOUNDS ---- */

sp_status_t sp__msg_bounds_encode(uint32_t shuffle, const sp_key_t *keys, uint32_t count,
                                  void **buf_p, size_t *len_p)
{
    sp__wbuf_t w;

    sp__wbuf_init(&w);
    sp__wbuf_put_u32(&w, shuffle);
    sp__wbuf_put_u32(&w, count);
    for (uint32_t i = 0; i < count; i++)
        sp__wbuf_put_bytes(&w, keys[i].data, keys[i].len);
    return sp_msg_finish(&w, buf_p, len_p);
}

sp_status_t sp__msg_bounds_decode(const void *buf, size_t len, uint32_t *shuffle_p,
                                  sp_key_t **keys_p, uint32_t *count_p)
{
    sp_key_t *keys;
    uint32_t count, shuffle;
    sp__rbuf_t r;
    sp_status_t st;

    sp__rbuf_init(&r, buf, len);
    if ((st = sp__rbuf_get_u32(&r, "BOUNDS shuffle", &shuffle)) != SP_OK ||
        (st = sp__rbuf_get_u32(&r, "BOUNDS count", &count)) != SP_OK ||
        (st = sp_check_count(&r, "BOUNDS", count, 4)) != SP_OK)
        return st;
    if ((keys = sp__calloc(count + 1, sizeof(*keys))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for %u range bounds", count);
    for (uint32_t i = 0; i < count; i++)
        if ((st = sp__rbuf_get_bytes(&r, "BOUNDS key", &keys[i].data, &keys[i].len)) != SP_OK)
            goto err;
    if ((st = sp__rbuf_done(&r, "BOUNDS")) != SP_OK)
        goto err;
    *shuffle_p = shuffle;
    *keys_p = keys;
    *count_p = count;
    return SP_OK;
err:
    free(keys);
    return st;
}
