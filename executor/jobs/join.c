/*
 * The join job: an equi-join of two delimited text inputs on a key column,
 * on spate's graph API (<spate/graph.h>).
 *
 *   spate run join --job-arg left=PATH --job-arg right=PATH --output OUT
 *       [--job-arg left_key=N] [--job-arg right_key=N] [--job-arg delim=C]
 *       [--job-arg kind=inner|left]
 *
 * Inputs. left= (or --input) and right= each name a file or a directory of
 * files (as sp_graph_text() reads them). A row is a line, its columns
 * separated by one delimiter byte (delim=, default tab; "tab" and "\t" also
 * name a tab); a trailing '\r' is dropped and empty rows are skipped. There
 * is no quoting: a delimiter byte always separates columns. left_key and
 * right_key (default 0) are the 0-based key columns; a row with too few
 * columns to have its key is SP_ERR_BAD_INPUT naming the side, the file
 * given for it and the row. Keys compare as bytes; an empty key is a key.
 *
 * Output. One line per matching pair of rows (kind=inner, the default): the
 * key, then the left row's other columns in order, then the right row's,
 * joined by the delimiter. kind=left also keeps each left row that matches
 * no right row, its right columns empty strings: as many as the right
 * input's first non-empty row has besides its key (none when the right
 * input has no rows), so such a line has the shape of the others. A key
 * with l left and r right rows gives l * r lines (l for a left join when
 * r is 0). Lines come in no set order.
 *
 * Graph. Each side: text -> map_partitions keyed: (key, other columns, each
 * preceded by the delimiter: so "" is no column and "," one empty column,
 * and a line is the plain concatenation key + left + right). join(left,
 * right) with spate's SP_JOIN_INNER or SP_JOIN_LEFT (the left side's values
 * of a key are held while the right's stream: put the smaller side on the
 * left) -> map_partitions formatting the lines -> save. Callbacks' arg is
 * the run's sp_job_params_t; each task parses the arguments once, in begin().
 */
#include "common_int.h"
#include "executor/executor_int.h"
#include "text_heads.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_JOIN_KEY_MAX 65535u
/* Most bytes of a bad row quoted in a message. */
#define SP_JOIN_QUOTE 200

typedef struct sp_join_conf {
    const char *left, *right;
    uint32_t left_key, right_key;
    unsigned char delim;
    sp_join_kind_t kind;
} sp_join_conf_t;

static sp_status_t sp_join_column_arg(const sp_job_params_t *p, const char *key, uint32_t *v_p)
{
    uint64_t v;
    sp_status_t st = sp_job_arg_u64(p, key, 0, SP_JOIN_KEY_MAX, &v);

    if (st == SP_OK)
        *v_p = (uint32_t)v;
    return st;
}

static sp_status_t sp_join_conf_parse(const sp_job_params_t *p, sp_join_conf_t *c)
{
    const char *delim = sp_job_arg(p, "delim"), *kind = sp_job_arg(p, "kind");
    sp_status_t st;

    c->left = sp_job_arg(p, "left");
    if (c->left == NULL)
        c->left = p->input;
    c->right = sp_job_arg(p, "right");
    if (c->left == NULL || c->left[0] == '\0' || c->right == NULL || c->right[0] == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "join: give both inputs: --job-arg left=PATH (or --input PATH) and "
                        "--job-arg right=PATH");
    if ((st = sp_join_column_arg(p, "left_key", &c->left_key)) != SP_OK ||
        (st = sp_join_column_arg(p, "right_key", &c->right_key)) != SP_OK)
        return st;
    c->delim = '\t';
    if (delim != NULL && strcmp(delim, "tab") != 0 && strcmp(delim, "\\t") != 0) {
        if (strlen(delim) != 1 || delim[0] == '\n')
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "join: --job-arg delim=%s: want one byte other than a newline (or "
                            "'tab')",
                            delim);
        c->delim = (unsigned char)delim[0];
    }
    c->kind = SP_JOIN_INNER;
    if (kind != NULL && strcmp(kind, "inner") != 0) {
        if (strcmp(kind, "left") != 0)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "join: --job-arg kind=%s: want inner or left",
                            kind);
        c->kind = SP_JOIN_LEFT;
    }
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Rows to (key, other columns)                                              */
/* ------------------------------------------------------------------------ */

typedef struct sp_join_task {
    sp_join_conf_t conf;
    size_t right_other; /* format: the right input's columns besides its key */
    char *buf;
    size_t cap;
} sp_join_task_t;

static void sp_join_discard(void *state, void *arg)
{
    sp_join_task_t *t = state;

    SP_UNUSED(arg);
    if (t != NULL)
        sp__free(t->buf);
    sp__free(t);
}

static sp_status_t sp_join_end(sp_emitter_t *out, void *state, void *arg)
{
    SP_UNUSED(out);
    sp_join_discard(state, arg);
    return SP_OK;
}

static sp_status_t sp_join_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    sp_join_task_t *t;
    sp_status_t st;

    SP_UNUSED(out);
    if ((t = sp__calloc(1, sizeof(*t))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "join: no memory for a task's state");
    if ((st = sp_join_conf_parse(arg, &t->conf)) != SP_OK) {
        sp__free(t);
        return st;
    }
    *state_p = t;
    return SP_OK;
}

static sp_status_t sp_join_reserve(sp_join_task_t *t, size_t len)
{
    char *grown;

    if (len <= t->cap)
        return SP_OK;
    len = SP_MAX(len, 2 * t->cap);
    if ((grown = sp__realloc(t->buf, len)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "join: no memory for a row of %zu bytes", len);
    t->buf = grown;
    t->cap = len;
    return SP_OK;
}

/* A row -> (key column, the other columns each preceded by the delimiter). */
static sp_status_t sp_join_key_row(sp_join_task_t *t, sp_emitter_t *out, bool left, const char *row,
                                   size_t len)
{
    unsigned char d = t->conf.delim;
    uint32_t want = left ? t->conf.left_key : t->conf.right_key;
    size_t ks = 0, ke, cols = 1;
    sp_status_t st;

    if (len > 0 && row[len - 1] == '\r')
        len--;
    if (len == 0)
        return SP_OK;
    /* [ks, ke): the key column. */
    for (uint32_t c = 0; c < want; c++) {
        const char *next = memchr(row + ks, d, len - ks);
        if (next == NULL) {
            for (size_t i = 0; i < len; i++)
                cols += (unsigned char)row[i] == d;
            return SP_RAISE(SP_ERR_BAD_INPUT,
                            "join: a row of the %s input (%s) has %zu columns, too few for key "
                            "column %" PRIu32 ": '%.*s%s'",
                            left ? "left" : "right", left ? t->conf.left : t->conf.right, cols,
                            want, (int)SP_MIN(len, (size_t)SP_JOIN_QUOTE), row,
                            len > SP_JOIN_QUOTE ? "..." : "");
        }
        ks = (size_t)(next - row) + 1;
    }
    {
        const char *next = memchr(row + ks, d, len - ks);
        ke = next != NULL ? (size_t)(next - row) : len;
    }
    if (ks == 0)
        return sp_emit(out, row, ke, row + ke, len - ke);
    if ((st = sp_join_reserve(t, 1 + (ks - 1) + (len - ke))) != SP_OK)
        return st;
    t->buf[0] = (char)d;
    memcpy(t->buf + 1, row, ks - 1);
    memcpy(t->buf + ks, row + ke, len - ke);
    return sp_emit(out, row + ks, ke - ks, t->buf, ks + (len - ke));
}

static sp_status_t sp_join_key_left(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                                    const void *value, size_t value_len, void *arg)
{
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(arg);
    return sp_join_key_row(state, out, true, value, value_len);
}

static sp_status_t sp_join_key_right(sp_emitter_t *out, void *state, const void *key,
                                     size_t key_len, const void *value, size_t value_len, void *arg)
{
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(arg);
    return sp_join_key_row(state, out, false, value, value_len);
}

static const sp_partition_fns_t sp_join_left_fns = {.begin = sp_join_begin,
                                                    .record = sp_join_key_left,
                                                    .end = sp_join_end,
                                                    .discard = sp_join_discard};
static const sp_partition_fns_t sp_join_right_fns = {.begin = sp_join_begin,
                                                     .record = sp_join_key_right,
                                                     .end = sp_join_end,
                                                     .discard = sp_join_discard};

/* ------------------------------------------------------------------------ */
/* Joined pairs to lines                                                     */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_join_format_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    sp__text_heads_t heads = {0};
    sp_join_task_t *t;
    sp_status_t st;

    if ((st = sp_join_begin(out, state_p, arg)) != SP_OK)
        return st;
    t = *state_p;
    if (t->conf.kind != SP_JOIN_LEFT)
        return SP_OK;
    if ((st = sp__text_heads_read(t->conf.right, 1, "join: right input", &heads)) != SP_OK) {
        sp_join_discard(t, arg);
        return st;
    }
    for (size_t i = 0; heads.count > 0 && i < heads.lens[0]; i++)
        t->right_other += (unsigned char)heads.rows[0][i] == t->conf.delim;
    sp__text_heads_clear(&heads);
    return SP_OK;
}

/* (key, tuple(left columns, right columns or null)) -> the output line. */
static sp_status_t sp_join_format(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                                  const void *value, size_t value_len, void *arg)
{
    sp_join_task_t *t = state;
    sp_rec_field_t l, r;
    size_t rlen, len;
    sp_status_t st;

    SP_UNUSED(arg);
    if (!sp_rec_tuple_field(value, value_len, 0, &l) ||
        !sp_rec_tuple_field(value, value_len, 1, &r) || l.null)
        return SP_RAISE(SP_ERR_INTERNAL, "join: a joined record is malformed");
    rlen = r.null ? t->right_other : r.len;
    len = key_len + l.len + rlen;
    if ((st = sp_join_reserve(t, len)) != SP_OK)
        return st;
    memcpy(t->buf, key, key_len);
    memcpy(t->buf + key_len, l.data, l.len);
    if (r.null)
        memset(t->buf + key_len + l.len, t->conf.delim, rlen);
    else
        memcpy(t->buf + key_len + l.len, r.data, rlen);
    return sp_emit(out, NULL, 0, t->buf, len);
}

static const sp_partition_fns_t sp_join_format_fns = {.begin = sp_join_format_begin,
                                                      .record = sp_join_format,
                                                      .end = sp_join_end,
                                                      .discard = sp_join_discard};

static sp_status_t sp_join_build(sp_graph_t *g, const sp_job_params_t *params)
{
    void *arg = (void *)(uintptr_t)params;
    sp_dataset_t *left, *right;
    sp_join_conf_t conf;
    sp_status_t st;

    if ((st = sp_join_conf_parse(params, &conf)) != SP_OK)
        return st;
    left = sp_ds_map_partitions(sp_graph_text(g, conf.left, 0), &sp_join_left_fns, arg);
    right = sp_ds_map_partitions(sp_graph_text(g, conf.right, 0), &sp_join_right_fns, arg);
    (void)sp_ds_save(
        sp_ds_map_partitions(sp_ds_join(left, right, 0, conf.kind), &sp_join_format_fns, arg),
        SP_SAVE_TEXT);
    return sp_graph_status(g);
}

const sp_job_t sp__job_join = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "join",
    .summary = "equi-join of two delimited text inputs (--job-arg left=, right=, left_key=, "
               "right_key=, delim=, kind=inner|left)",
    .build = sp_join_build,
};
