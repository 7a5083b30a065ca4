/*
 * What `spate run` tells its user: a progress line per stage while the job
 * runs (rewritten in place on a terminal, one line per update otherwise,
 * only when asked), then a summary, and optionally the same figures as JSON
 * (jansson). Rates per executor divide a stage's bytes by its wall time and
 * the number of executors that took part, so they compare with a
 * single-threaded memcpy, which the summary measures in the same run.
 */
#include "run_report.h"

#include "cli.h"

#include "common_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const sp_stage_label[SP_STAGES] = {"sample", "map", "reduce"};

static double sp_sec(uint64_t ns) { return (double)ns / 1e9; }

static uint64_t sp_stage_wall(const sp__stage_report_t *s, uint64_t now)
{
    if (s->start_ns == 0)
        return 0;
    return (s->end_ns != 0 ? s->end_ns : now) - s->start_ns;
}

void sp_run_progress_cb(void *arg, const sp__driver_report_t *r, bool final)
{
    sp_run_progress_t *p = arg;
    uint64_t now = sp__now_ns();

    bool periodic = false;

    if (!p->enabled)
        return;
    if (!p->tty && p->interval_ns > 0 && now - p->last_line_ns >= p->interval_ns) {
        periodic = p->last_line_ns != 0; /* the first interval starts with the run */
        p->last_line_ns = now;
    }
    for (int s = 0; s < SP_STAGES; s++) {
        const sp__stage_report_t *st = &r->stages[s];
        char bytes[32];
        uint64_t wall = sp_stage_wall(st, now);
        bool done = st->tasks > 0 && st->done == st->tasks && st->end_ns != 0;

        if (st->tasks == 0 || st->start_ns == 0 || (p->printed & (1u << s)))
            continue;
        if (!done && !final && !p->tty && !periodic)
            continue; /* not a terminal: a line per interval, and one at the stage's end */
        sp_cli_human(bytes, sizeof(bytes), (double)st->bytes);
        fprintf(p->out, "%s%-7s %6u/%-6u tasks  %10s  %7.2f GB/s  %6.1f s%s", p->tty ? "\r" : "",
                sp_stage_label[s], st->done, st->tasks, bytes,
                wall ? (double)st->bytes / (double)wall : 0.0, sp_sec(wall),
                p->tty && !done && !final ? "" : "\n");
        if (done || final)
            p->printed |= 1u << s;
        p->last_stage = s;
        fflush(p->out);
    }
}

static uint32_t sp_active_executors(const sp__driver_report_t *r)
{
    uint32_t n = 0;

    for (uint32_t e = 0; e < r->nexecutors; e++)
        n += r->executors[e].tasks > 0;
    return n ? n : 1;
}

double sp_run_memcpy_seconds(uint64_t bytes)
{
    size_t chunk = (size_t)SP_MIN(bytes, (uint64_t)256 << 20);
    unsigned char *a = malloc(chunk), *b = malloc(chunk);
    uint64_t t0, done = 0;

    if (a == NULL || b == NULL || chunk == 0) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, chunk);
    memset(b, 2, chunk); /* fault the pages in before timing */
    t0 = sp__now_ns();
    while (done < bytes) {
        size_t n = (size_t)SP_MIN((uint64_t)chunk, bytes - done);
        memcpy(b, a, n);
        a[done % chunk] ^= b[(done + 1) % chunk]; /* keep the copy observable */
        done += n;
    }
    t0 = sp__now_ns() - t0;
    free(a);
    free(b);
    return sp_sec(t0);
}

/* The share of the stage's core time its executors left idle (0 .. 1; 0 when not measured). */
static double sp_idle(uint64_t cpu_ns, uint64_t core_ns)
{
    if (core_ns == 0 || cpu_ns >= core_ns)
        return 0;
    return (double)(core_ns - cpu_ns) / (double)core_ns;
}

static double sp_stage_idle(const sp__stage_report_t *st)
{
    return sp_idle(st->cpu_ns, st->core_ns);
}

void sp_run_summary(FILE *out, const char *job, const sp_job_params_t *params,
                    const sp__driver_report_t *r, sp_status_t status, bool baseline)
{
    uint64_t wall = r->end_ns > r->start_ns ? r->end_ns - r->start_ns : 0;
    uint32_t active = sp_active_executors(r);
    uint64_t shuffle = r->stages[SP_STAGE_MAP].bytes;
    char b1[32], b2[32], b3[32];

    if (r->start_ns == 0)
        return; /* the job never started */
    fprintf(out, "\njob %s %s in %.2f s on %u executor(s): %llu maps, %llu partitions\n", job,
            status == SP_OK ? "succeeded" : "FAILED", sp_sec(wall), r->nexecutors,
            (unsigned long long)r->maps, (unsigned long long)r->partitions);
    fprintf(out, "%-7s %7s %9s %13s %11s %11s %13s %11s %10s\n", "stage", "tasks", "wall s",
            "records", "bytes", "spilled", "GB/s/exec", "remote", "idle cores");
    for (int s = 0; s < SP_STAGES; s++) {
        const sp__stage_report_t *st = &r->stages[s];
        uint64_t sw = sp_stage_wall(st, r->end_ns);
        if (st->tasks == 0)
            continue;
        sp_cli_human(b1, sizeof(b1), (double)st->bytes);
        sp_cli_human(b2, sizeof(b2), (double)st->spill_bytes);
        sp_cli_human(b3, sizeof(b3), (double)st->remote_bytes);
        fprintf(out, "%-7s %3u/%-3u %9.2f %13llu %11s %11s %13.3f %11s %9.0f%%\n",
                sp_stage_label[s], st->done, st->tasks, sp_sec(sw), (unsigned long long)st->records,
                b1, b2, sw ? (double)st->bytes / (double)sw / active : 0.0, b3,
                100 * sp_stage_idle(st));
    }
    fprintf(out, "%-4s %-16s %8s %6s %10s %10s %10s %10s %10s %10s %10s\n", "exec", "host", "pid",
            "slots", "memory", "peak anon", "peak rss", "peak exec", "peak stor", "shuffled",
            "tasks");
    for (uint32_t e = 0; e < r->nexecutors; e++) {
        const sp__executor_report_t *x = &r->executors[e];
        char m[32], anon[32], rss[32], pe[32], ps[32], sh[32];
        sp_cli_human(m, sizeof(m), (double)x->memory);
        sp_cli_human(anon, sizeof(anon), (double)x->peak_anon);
        sp_cli_human(rss, sizeof(rss), (double)x->peak_rss);
        sp_cli_human(pe, sizeof(pe), (double)x->peak_execution);
        sp_cli_human(ps, sizeof(ps), (double)x->peak_storage);
        sp_cli_human(sh, sizeof(sh), (double)x->shuffle_bytes);
        fprintf(out, "%-4u %-16.16s %8u %6u %10s %10s %10s %10s %10s %10s %10u%s\n", x->id, x->host,
                x->pid, x->slots, m, anon, rss, pe, ps, sh, x->tasks, x->lost ? "  (lost)" : "");
    }
    fprintf(out, "(peak anon: the executor's own memory, heap and buffers; peak stor: storage "
                 "memory, map outputs held in memory; peak rss also counts the shuffle files it "
                 "maps)\n");
    sp_cli_human(b1, sizeof(b1), (double)shuffle);
    fprintf(out, "shuffle: %s written; output: %llu bytes; records: %llu mapped, %llu reduced\n",
            b1, (unsigned long long)r->result.output_bytes,
            (unsigned long long)r->result.map_records,
            (unsigned long long)r->result.reduce_records);
    fprintf(out,
            "recovered: %u task retries, %u fetch failures, %u map outputs recomputed, %u "
            "executors lost (%u relaunched)\n",
            r->task_failures, r->fetch_failures, r->maps_recomputed, r->executors_lost,
            r->executors_relaunched);
    if (r->graph_stages > 0)
        fprintf(out,
                "graph: %u stages (map stages summed as map, actions as reduce), %u skipped by "
                "actions that found them done; %u partitions cached, %u of them again after "
                "they were lost\n",
                r->graph_stages, r->stages_skipped, r->blocks_cached, r->blocks_recomputed);
    if (r->reduces_early > 0)
        fprintf(out,
                "overlap: %u reduce attempts started before the map stage ended "
                "(shuffle.reduce_slowstart %.2f; %u gave their slot back to a map task); map and "
                "reduce together left %.0f%% of the cores idle\n",
                r->reduces_early, r->reduce_slowstart, r->reduces_canceled,
                100 * sp_idle(r->cpu_ns, r->core_ns));
    if (r->outputs_moved > 0)
        fprintf(out,
                "storage: %u map outputs moved from memory to disk (%u reduce attempts run again "
                "over a move)\n",
                r->outputs_moved, r->fetches_after_move);
    if (baseline && status == SP_OK && params->size > 0 && wall > 0) {
        double mc = sp_run_memcpy_seconds(params->size);
        if (mc > 0)
            fprintf(out,
                    "rate: %.3f GB/s of input end to end; a single-threaded memcpy of the same "
                    "%llu bytes took %.3f s here (%.2f GB/s): spate/memcpy = %.3f\n",
                    (double)params->size / (double)wall, (unsigned long long)params->size, mc,
                    (double)params->size / mc / 1e9, mc / sp_sec(wall));
    }
}

static json_t *sp_stage_json(const sp__stage_report_t *st, uint64_t end, uint32_t active)
{
    uint64_t sw = sp_stage_wall(st, end);
    json_t *obj;

    obj = json_pack("{s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f}", "tasks",
                    (json_int_t)st->tasks, "done", (json_int_t)st->done, "wall_s", sp_sec(sw),
                    "records", (json_int_t)st->records, "bytes", (json_int_t)st->bytes,
                    "remote_bytes", (json_int_t)st->remote_bytes, "spill_bytes",
                    (json_int_t)st->spill_bytes, "gbps_per_executor",
                    sw ? (double)st->bytes / (double)sw / active : 0.0, "sort_s",
                    sp_sec(st->sort_ns), "spill_s", sp_sec(st->spill_ns), "merge_s",
                    sp_sec(st->merge_ns), "fetch_wait_s", sp_sec(st->fetch_wait_ns));
    if (obj != NULL && st->core_ns > 0) {
        json_object_set_new(obj, "cpu_s", json_real(sp_sec(st->cpu_ns)));
        json_object_set_new(obj, "core_s", json_real(sp_sec(st->core_ns)));
        json_object_set_new(obj, "idle_core_fraction", json_real(sp_stage_idle(st)));
    }
    return obj;
}

/* "2026-12-08T05:20:30.123Z" for a CLOCK_REALTIME time in ns; JSON null for 0. */
static json_t *sp_json_time(uint64_t unix_ns)
{
    char buf[96];
    time_t sec = (time_t)(unix_ns / 1000000000u);
    struct tm tm;

    if (unix_ns == 0 || gmtime_r(&sec, &tm) == NULL)
        return json_null();
    snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (unsigned)(unix_ns % 1000000000u / 1000000u));
    return json_string(buf);
}

static void sp_json_conf_add(void *arg, const char *key, const char *value)
{
    json_object_set_new(arg, key, json_string(value));
}

/* The stages in the order they started: name, kind, tasks, times from the run's start. */
static json_t *sp_stage_list_json(const sp__driver_report_t *r)
{
    json_t *list = json_array();

    for (uint32_t i = 0; list != NULL && i < r->nstage_list; i++) {
        const sp__stage_summary_t *s = &r->stage_list[i];
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:f, s:I, s:I, s:f}", "name", s->name, "kind",
                              sp_stage_label[s->kind], "tasks", (json_int_t)s->tasks, "done",
                              (json_int_t)s->done, "start_s", sp_sec(s->start_ns - r->start_ns),
                              "records", (json_int_t)s->records, "bytes", (json_int_t)s->bytes,
                              "task_s", sp_sec(s->task_ns));
        if (o == NULL)
            continue;
        json_object_set_new(
            o, "end_s", s->end_ns != 0 ? json_real(sp_sec(s->end_ns - r->start_ns)) : json_null());
        json_array_append_new(list, o);
    }
    return list;
}

sp_status_t sp_run_json(const char *path, const char *job, const sp_job_params_t *params,
                        const sp__driver_report_t *r, sp_status_t status,
                        const sp_run_json_context_t *ctx)
{
    json_t *root, *stages, *execs, *counters;
    char tmp[4096];
    uint32_t active = sp_active_executors(r);
    sp_status_t st = SP_OK;

    root = json_object();
    stages = json_object();
    execs = json_array();
    counters = json_array();
    if (root == NULL || stages == NULL || execs == NULL || counters == NULL) {
        json_decref(root);
        json_decref(stages);
        json_decref(execs);
        json_decref(counters);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the JSON report");
    }
    json_object_set_new(root, "job", json_string(job));
    json_object_set_new(root, "run_id", r->run_id[0] ? json_string(r->run_id) : json_null());
    json_object_set_new(root, "started_at", sp_json_time(r->start_unix_ns));
    json_object_set_new(root, "ended_at", sp_json_time(r->end_unix_ns));
    {
        json_t *argv = json_array(), *conf = json_object();
        for (int i = 0; ctx != NULL && ctx->argv != NULL && argv != NULL && i < ctx->argc; i++)
            json_array_append_new(argv, json_string(ctx->argv[i]));
        if (ctx != NULL && ctx->conf != NULL && conf != NULL)
            sp_conf_foreach_set(ctx->conf, sp_json_conf_add, conf);
        json_object_set_new(root, "command_line", argv != NULL ? argv : json_null());
        json_object_set_new(root, "configuration", conf != NULL ? conf : json_null());
    }
    json_object_set_new(root, "stage_list", sp_stage_list_json(r));
    json_object_set_new(root, "status", json_string(sp_status_str(status)));
    json_object_set_new(root, "succeeded", json_boolean(status == SP_OK));
    /* Why it failed: the driver's final error, else this thread's (a refusal before it ran). */
    json_object_set_new(root, "error",
                        status == SP_OK ? json_null()
                                        : json_string(r->error[0] ? r->error : sp_last_error()));
    json_object_set_new(root, "version", json_string(sp_version()));
    json_object_set_new(root, "size", json_integer((json_int_t)params->size));
    json_object_set_new(root, "input", params->input ? json_string(params->input) : json_null());
    json_object_set_new(root, "output", params->output ? json_string(params->output) : json_null());
    json_object_set_new(root, "maps", json_integer(r->maps));
    json_object_set_new(root, "partitions", json_integer(r->partitions));
    json_object_set_new(root, "wall_s", json_real(sp_sec(r->end_ns - r->start_ns)));
    for (int s = 0; s < SP_STAGES; s++)
        if (r->stages[s].tasks > 0)
            json_object_set_new(stages, sp_stage_label[s],
                                sp_stage_json(&r->stages[s], r->end_ns, active));
    json_object_set_new(root, "stages", stages);
    /* Map and reduce stages together (they overlap under slow start). */
    json_object_set_new(
        root, "shuffle",
        json_pack("{s:f, s:I, s:I, s:f, s:f, s:f}", "reduce_slowstart", r->reduce_slowstart,
                  "reduces_started_early", (json_int_t)r->reduces_early, "reduces_canceled",
                  (json_int_t)r->reduces_canceled, "cpu_s", sp_sec(r->cpu_ns), "core_s",
                  sp_sec(r->core_ns), "idle_core_fraction", sp_idle(r->cpu_ns, r->core_ns)));
    for (uint32_t e = 0; e < r->nexecutors; e++) {
        const sp__executor_report_t *x = &r->executors[e];
        json_array_append_new(
            execs,
            json_pack("{s:s, s:I, s:s, s:I, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, "
                      "s:b}",
                      "name", x->name, "numa_node", (json_int_t)x->numa_node, "cpuset", x->cpuset,
                      "id", (json_int_t)x->id, "host", x->host, "pid", (json_int_t)x->pid, "slots",
                      (json_int_t)x->slots, "memory", (json_int_t)x->memory, "peak_rss",
                      (json_int_t)x->peak_rss, "peak_anon", (json_int_t)x->peak_anon,
                      "peak_execution", (json_int_t)x->peak_execution, "peak_storage",
                      (json_int_t)x->peak_storage, "shuffle_bytes", (json_int_t)x->shuffle_bytes,
                      "tasks", (json_int_t)x->tasks, "busy_s", sp_sec(x->busy_ns), "lost",
                      x->lost));
    }
    json_object_set_new(root, "executors", execs);
    for (unsigned i = 0; i < SP_JOB_COUNTERS; i++)
        json_array_append_new(counters, json_integer((json_int_t)r->result.counters[i]));
    json_object_set_new(root, "counters", counters);
    {
        /* The job's named counters (its counter_names), by name. */
        json_t *named = json_object();
        for (unsigned i = 0;
             named != NULL && ctx != NULL && ctx->desc != NULL && i < SP_JOB_COUNTERS; i++)
            if (ctx->desc->counter_names[i] != NULL)
                json_object_set_new(named, ctx->desc->counter_names[i],
                                    json_integer((json_int_t)r->result.counters[i]));
        json_object_set_new(root, "counters_by_name", named != NULL ? named : json_null());
    }
    json_object_set_new(
        root, "recovery",
        json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "task_retries", (json_int_t)r->task_failures,
            "fetch_failures", (json_int_t)r->fetch_failures, "maps_recomputed",
            (json_int_t)r->maps_recomputed, "executors_lost", (json_int_t)r->executors_lost,
            "executors_relaunched", (json_int_t)r->executors_relaunched, "outputs_moved",
            (json_int_t)r->outputs_moved, "fetches_after_move", (json_int_t)r->fetches_after_move));
    if (r->graph_stages > 0)
        json_object_set_new(root, "graph",
                            json_pack("{s:I, s:I, s:I, s:I}", "stages", (json_int_t)r->graph_stages,
                                      "stages_skipped", (json_int_t)r->stages_skipped,
                                      "blocks_cached", (json_int_t)r->blocks_cached,
                                      "blocks_recomputed", (json_int_t)r->blocks_recomputed));
    json_object_set_new(root, "output_bytes", json_integer((json_int_t)r->result.output_bytes));
    json_object_set_new(root, "map_records", json_integer((json_int_t)r->result.map_records));
    json_object_set_new(root, "reduce_records", json_integer((json_int_t)r->result.reduce_records));
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "JSON report path %s is too long", path);
    else if (json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        st = SP_RAISE(SP_ERR_IO, "cannot write the JSON report %s", tmp);
    else if (rename(tmp, path) != 0)
        st = SP_RAISE(SP_ERR_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
    if (st != SP_OK)
        unlink(tmp);
    json_decref(root);
    return st;
}
