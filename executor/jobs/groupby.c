/*
 * The groupby job: group-by with sum, count, min, max and avg of numeric
 * columns of CSV input, on spate's graph API (<spate/graph.h>).
 *
 *   spate run groupby --input PATH --output OUT --job-arg key=N
 *       --job-arg agg=sum:3,count,min:4,max:4,avg:5 [--job-arg header=true]
 *
 * Input. --input names a file or a directory of files (as sp_graph_text()
 * reads them). A row is a line of comma-separated columns (no quoting: every
 * comma separates), a trailing '\r' dropped; empty rows are skipped. key=
 * (default 0) is the 0-based key column, compared as bytes. agg= is a
 * comma-separated list of aggregates (default count): count (rows of the
 * key), or sum:C, min:C, max:C, avg:C of column C (at most 64 of them). An
 * aggregated field must be a finite number in strtod()'s form with nothing
 * around it; anything else (empty, "abc", "1x", " 1", "inf", "nan") is SP_ERR_BAD_INPUT naming the
 * column, the row and the text, and so is a row with too few columns. With
 * header=true the first non-empty row of each input file is a header and is
 * skipped, and so is any row byte-equal to one of those headers (rows do not
 * carry their place in the file; a repeated header, as concatenated CSV
 * files have, is thereby skipped too). Each parse task reads those first
 * rows itself, a few KiB of every input file.
 *
 * Output. One line per distinct key: the key, then each aggregate in the
 * order asked, comma-separated; count as an integer, the others as doubles
 * printed with %.17g (they read back exactly); avg is sum / count. Lines
 * come in no set order. Sums are added in no set order, so for values that
 * are not exactly representable the last bits may differ between runs.
 *
 * Graph. text -> map_partitions parse: (key, partial aggregate) per row ->
 * reduce_by_key with a combiner over partials (so the map side holds one
 * partial per distinct key of its partition) -> map_partitions formatting
 * the lines -> save. A partial is u64 count (little-endian), then for each
 * distinct aggregated column in order of first mention its sum, min and max
 * as native doubles: a fixed layout of 8 + 24 c bytes that the combiner
 * adds, mins and maxes field by field without knowing the aggregate list.
 * Callbacks' arg is the run's sp_job_params_t; each task parses the
 * arguments once, in begin().
 */
#include "bytes.h"
#include "common_int.h"
#include "executor/executor_int.h"
#include "text_heads.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_GB_AGGS_MAX   64u
#define SP_GB_COLUMN_MAX 65535u
/* Most bytes of a bad row or field quoted in a message. */
#define SP_GB_QUOTE 200

typedef enum sp_gb_op { SP_GB_COUNT, SP_GB_SUM, SP_GB_MIN, SP_GB_MAX, SP_GB_AVG } sp_gb_op_t;

typedef struct sp_gb_agg {
    sp_gb_op_t op;
    uint32_t slot; /* index in cols; unused for count */
} sp_gb_agg_t;

typedef struct sp_gb_conf {
    uint32_t key;
    sp_gb_agg_t aggs[SP_GB_AGGS_MAX];
    uint32_t naggs;
    uint32_t cols[SP_GB_AGGS_MAX]; /* distinct aggregated columns */
    uint32_t ncols;
    uint32_t max_col; /* the largest column a row must have */
    bool header;
} sp_gb_conf_t;

static sp_status_t sp_gb_column(const char *s, size_t len, const char *what, uint32_t *v_p)
{
    uint32_t v = 0;

    if (len == 0 || len > 5)
        goto bad;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            goto bad;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > SP_GB_COLUMN_MAX)
        goto bad;
    *v_p = v;
    return SP_OK;
bad:
    return SP_RAISE(SP_ERR_INVALID_PARAM,
                    "groupby: %s: '%.*s' is not a 0-based column number from 0 to %u", what,
                    (int)len, s, SP_GB_COLUMN_MAX);
}

static sp_status_t sp_gb_conf_parse(const sp_job_params_t *p, sp_gb_conf_t *c)
{
    const char *key = sp_job_arg(p, "key"), *aggs = sp_job_arg(p, "agg");
    const char *header = sp_job_arg(p, "header");
    static const struct {
        const char *name;
        sp_gb_op_t op;
    } ops[] = {{"count", SP_GB_COUNT},
               {"sum", SP_GB_SUM},
               {"min", SP_GB_MIN},
               {"max", SP_GB_MAX},
               {"avg", SP_GB_AVG}};
    sp_status_t st;

    memset(c, 0, sizeof(*c));
    if (key != NULL && (st = sp_gb_column(key, strlen(key), "--job-arg key", &c->key)) != SP_OK)
        return st;
    c->max_col = c->key;
    if (header != NULL) {
        if (strcmp(header, "true") != 0 && strcmp(header, "false") != 0)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "groupby: --job-arg header=%s: want true or false", header);
        c->header = strcmp(header, "true") == 0;
    }
    if (aggs == NULL)
        aggs = "count";
    for (const char *s = aggs;;) {
        const char *end = strchr(s, ','), *colon;
        size_t len = end != NULL ? (size_t)(end - s) : strlen(s), name_len;
        sp_gb_agg_t *a;
        size_t o;

        if (c->naggs == SP_GB_AGGS_MAX)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "groupby: --job-arg agg=%s: more than %u "
                            "aggregates",
                            aggs, SP_GB_AGGS_MAX);
        colon = memchr(s, ':', len);
        name_len = colon != NULL ? (size_t)(colon - s) : len;
        for (o = 0; o < SP_ARRAY_SIZE(ops); o++)
            if (strlen(ops[o].name) == name_len && memcmp(ops[o].name, s, name_len) == 0)
                break;
        if (o == SP_ARRAY_SIZE(ops) || (ops[o].op == SP_GB_COUNT) != (colon == NULL))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "groupby: --job-arg agg=%s: '%.*s' is not an aggregate (count, "
                            "sum:C, min:C, max:C or avg:C)",
                            aggs, (int)len, s);
        a = &c->aggs[c->naggs++];
        a->op = ops[o].op;
        if (colon != NULL) {
            uint32_t col = 0, slot;
            if ((st = sp_gb_column(colon + 1, len - name_len - 1, "--job-arg agg", &col)) != SP_OK)
                return st;
            for (slot = 0; slot < c->ncols && c->cols[slot] != col; slot++)
                ;
            if (slot == c->ncols)
                c->cols[c->ncols++] = col;
            a->slot = slot;
            c->max_col = SP_MAX(c->max_col, col);
        }
        if (end == NULL)
            break;
        s = end + 1;
    }
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Partial aggregates                                                        */
/* ------------------------------------------------------------------------ */

static size_t sp_gb_partial_len(uint32_t ncols) { return 8 + 24 * (size_t)ncols; }

static double sp_gb_get(const unsigned char *p, size_t slot, size_t field)
{
    double v;

    memcpy(&v, p + 8 + 24 * slot + 8 * field, sizeof(v));
    return v;
}

static void sp_gb_put(unsigned char *p, size_t slot, size_t field, double v)
{
    memcpy(p + 8 + 24 * slot + 8 * field, &v, sizeof(v));
}

/* The combiner: counts and sums added, minima and maxima kept, column by column. */
static size_t sp_gb_combine(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                            const void *b, size_t b_len, void *out, size_t cap)
{
    const unsigned char *x = a, *y = b;
    unsigned char *o = out;

    SP_UNUSED(arg);
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(b_len);
    if (cap < a_len)
        return a_len;
    sp__le_put_u64(o, sp__le_get_u64(x) + sp__le_get_u64(y));
    for (size_t s = 0; 8 + 24 * s < a_len; s++) {
        double xmin = sp_gb_get(x, s, 1), ymin = sp_gb_get(y, s, 1);
        double xmax = sp_gb_get(x, s, 2), ymax = sp_gb_get(y, s, 2);
        sp_gb_put(o, s, 0, sp_gb_get(x, s, 0) + sp_gb_get(y, s, 0));
        sp_gb_put(o, s, 1, ymin < xmin ? ymin : xmin);
        sp_gb_put(o, s, 2, ymax > xmax ? ymax : xmax);
    }
    return a_len;
}

static const sp_combiner_t sp_gb_combiner = {.combine = sp_gb_combine, .arg = NULL};

/* ------------------------------------------------------------------------ */
/* Rows to partials, partials to lines                                       */
/* ------------------------------------------------------------------------ */

typedef struct sp_gb_task {
    sp_gb_conf_t conf;
    sp__text_heads_t heads; /* header=true: the rows to skip */
    size_t *starts;         /* per column up to max_col: where it starts in the row */
    unsigned char *partial;
    char *buf;
    size_t cap;
} sp_gb_task_t;

static void sp_gb_discard(void *state, void *arg)
{
    sp_gb_task_t *t = state;

    SP_UNUSED(arg);
    if (t == NULL)
        return;
    sp__text_heads_clear(&t->heads);
    sp__free(t->starts);
    sp__free(t->partial);
    sp__free(t->buf);
    sp__free(t);
}

static sp_status_t sp_gb_end(sp_emitter_t *out, void *state, void *arg)
{
    SP_UNUSED(out);
    sp_gb_discard(state, arg);
    return SP_OK;
}

static sp_status_t sp_gb_reserve(sp_gb_task_t *t, size_t len)
{
    char *grown;

    if (len <= t->cap)
        return SP_OK;
    len = SP_MAX(len, 2 * t->cap);
    if ((grown = sp__realloc(t->buf, len)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "groupby: no memory for %zu bytes", len);
    t->buf = grown;
    t->cap = len;
    return SP_OK;
}

static sp_status_t sp_gb_begin_common(void **state_p, void *arg, bool parse)
{
    const sp_job_params_t *params = arg;
    sp_gb_task_t *t;
    sp_status_t st;

    if ((t = sp__calloc(1, sizeof(*t))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "groupby: no memory for a task's state");
    if ((st = sp_gb_conf_parse(params, &t->conf)) != SP_OK)
        goto err_task;
    if (parse) {
        t->starts = sp__malloc(((size_t)t->conf.max_col + 2) * sizeof(*t->starts));
        t->partial = sp__malloc(sp_gb_partial_len(t->conf.ncols));
        if (t->starts == NULL || t->partial == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "groupby: no memory for a task's state");
            goto err_task;
        }
        if (t->conf.header && (st = sp__text_heads_read(params->input, SIZE_MAX, "groupby: input",
                                                        &t->heads)) != SP_OK)
            goto err_task;
    }
    *state_p = t;
    return SP_OK;

err_task:
    sp_gb_discard(t, arg);
    return st;
}

static sp_status_t sp_gb_parse_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    SP_UNUSED(out);
    return sp_gb_begin_common(state_p, arg, true);
}

static sp_status_t sp_gb_format_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    SP_UNUSED(out);
    return sp_gb_begin_common(state_p, arg, false);
}

static bool sp_gb_is_header(const sp_gb_task_t *t, const char *row, size_t len)
{
    for (size_t i = 0; i < t->heads.count; i++)
        if (t->heads.lens[i] == len && memcmp(t->heads.rows[i], row, len) == 0)
            return true;
    return false;
}

/* A row -> (key, partial of that one row). */
static sp_status_t sp_gb_parse(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                               const void *value, size_t value_len, void *arg)
{
    sp_gb_task_t *t = state;
    const char *row = value;
    size_t len = value_len, ncol = 1;
    sp_status_t st;

    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(arg);
    if (len > 0 && row[len - 1] == '\r')
        len--;
    if (len == 0 || (t->conf.header && sp_gb_is_header(t, row, len)))
        return SP_OK;
    /* starts[c] for c <= max_col, and starts[max_col + 1] one past its end's comma. */
    t->starts[0] = 0;
    for (size_t i = 0; i < len && ncol <= t->conf.max_col + 1; i++)
        if (row[i] == ',')
            t->starts[ncol++] = i + 1;
    if (ncol <= t->conf.max_col) {
        ncol = 1;
        for (size_t i = 0; i < len; i++)
            ncol += row[i] == ',';
        return SP_RAISE(SP_ERR_BAD_INPUT,
                        "groupby: a row has %zu columns, too few for column %" PRIu32 ": '%.*s%s'",
                        ncol, t->conf.max_col, (int)SP_MIN(len, (size_t)SP_GB_QUOTE), row,
                        len > SP_GB_QUOTE ? "..." : "");
    }
    if (ncol == t->conf.max_col + 1)
        t->starts[ncol] = len + 1;
    sp__le_put_u64(t->partial, 1);
    for (uint32_t s = 0; s < t->conf.ncols; s++) {
        uint32_t c = t->conf.cols[s];
        size_t fs = t->starts[c], fl = t->starts[c + 1] - 1 - fs;
        char *end;
        double v;
        if ((st = sp_gb_reserve(t, fl + 1)) != SP_OK)
            return st;
        memcpy(t->buf, row + fs, fl);
        t->buf[fl] = '\0';
        errno = 0;
        v = strtod(t->buf, &end);
        if (fl == 0 || *end != '\0' || !isfinite(v) || t->buf[0] == ' ' || t->buf[0] == '\t')
            return SP_RAISE(SP_ERR_BAD_INPUT,
                            "groupby: column %" PRIu32 " is not a finite number: '%.*s%s' in row "
                            "'%.*s%s'",
                            c, (int)SP_MIN(fl, (size_t)SP_GB_QUOTE), row + fs,
                            fl > SP_GB_QUOTE ? "..." : "", (int)SP_MIN(len, (size_t)SP_GB_QUOTE),
                            row, len > SP_GB_QUOTE ? "..." : "");
        sp_gb_put(t->partial, s, 0, v);
        sp_gb_put(t->partial, s, 1, v);
        sp_gb_put(t->partial, s, 2, v);
    }
    {
        size_t ks = t->starts[t->conf.key], kl = t->starts[t->conf.key + 1] - 1 - ks;
        return sp_emit(out, row + ks, kl, t->partial, sp_gb_partial_len(t->conf.ncols));
    }
}

/* (key, partial) -> "key,agg1,agg2,...". */
static sp_status_t sp_gb_format(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    sp_gb_task_t *t = state;
    const unsigned char *p = value;
    uint64_t count;
    size_t len;
    sp_status_t st;

    SP_UNUSED(arg);
    if (value_len != sp_gb_partial_len(t->conf.ncols))
        return SP_RAISE(SP_ERR_INTERNAL, "groupby: a partial aggregate of %zu bytes, not %zu",
                        value_len, sp_gb_partial_len(t->conf.ncols));
    count = sp__le_get_u64(p);
    if ((st = sp_gb_reserve(t, key_len + 32 * (size_t)t->conf.naggs)) != SP_OK)
        return st;
    memcpy(t->buf, key, key_len);
    len = key_len;
    for (uint32_t i = 0; i < t->conf.naggs; i++) {
        const sp_gb_agg_t *a = &t->conf.aggs[i];
        int n;
        switch (a->op) {
        case SP_GB_COUNT: n = snprintf(t->buf + len, 32, ",%" PRIu64, count); break;
        case SP_GB_SUM: n = snprintf(t->buf + len, 32, ",%.17g", sp_gb_get(p, a->slot, 0)); break;
        case SP_GB_MIN: n = snprintf(t->buf + len, 32, ",%.17g", sp_gb_get(p, a->slot, 1)); break;
        case SP_GB_MAX: n = snprintf(t->buf + len, 32, ",%.17g", sp_gb_get(p, a->slot, 2)); break;
        default:
            n = snprintf(t->buf + len, 32, ",%.17g", sp_gb_get(p, a->slot, 0) / (double)count);
            break;
        }
        len += (size_t)n;
    }
    return sp_emit(out, NULL, 0, t->buf, len);
}

static const sp_partition_fns_t sp_gb_parse_fns = {
    .begin = sp_gb_parse_begin, .record = sp_gb_parse, .end = sp_gb_end, .discard = sp_gb_discard};
static const sp_partition_fns_t sp_gb_format_fns = {.begin = sp_gb_format_begin,
                                                    .record = sp_gb_format,
                                                    .end = sp_gb_end,
                                                    .discard = sp_gb_discard};

static sp_status_t sp_gb_build(sp_graph_t *g, const sp_job_params_t *params)
{
    void *arg = (void *)(uintptr_t)params;
    sp_gb_conf_t conf;
    sp_status_t st;

    if ((st = sp_gb_conf_parse(params, &conf)) != SP_OK)
        return st;
    if (params->input == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "groupby: give the CSV input (--input PATH)");
    (void)sp_ds_save(
        sp_ds_map_partitions(
            sp_ds_reduce_by_key(
                sp_ds_map_partitions(sp_graph_text(g, params->input, 0), &sp_gb_parse_fns, arg),
                &sp_gb_combiner, 0),
            &sp_gb_format_fns, arg),
        SP_SAVE_TEXT);
    return sp_graph_status(g);
}

const sp_job_t sp__job_groupby = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "groupby",
    .summary = "group-by of CSV input with count, sum, min, max, avg (--job-arg key=, "
               "agg=count,sum:C,..., header=)",
    .build = sp_gb_build,
};
