/*
 * components — an example graph-job plugin: connected components of an
 * undirected graph by label propagation, on spate's graph API.
 *
 *   spate run ./libspate_example_graph.so --input EDGES --output OUT \
 *       [--job-arg iterations=N]
 *
 * Input: one edge "u v" per line (two vertex ids separated by blanks; blank
 * lines and lines starting with '#' skipped; anything else is bad input).
 * Vertex ids are byte strings; an edge joins u and v both ways.
 *
 * Every vertex starts labelled with its own id; each iteration gives every
 * vertex the smallest label (bytes, shorter first) among its own and its
 * neighbours'. After N iterations (--job-arg iterations=, default 10) a
 * vertex's label is the smallest id within N hops of it: its component's
 * smallest id once N reaches the component's diameter. Output: one
 * "vertex label" line per vertex; finish_graph prints the vertex count and
 * the number of distinct labels (the components, when N sufficed).
 *
 * Graph:
 *   text -> flat_map parse: (u, v) and (v, u)
 *        -> group_by_key: (vertex, its distinct neighbours), persisted
 *   labels = map: (vertex, vertex)
 *   N times: join(labels, neighbours) -> flat_map: (vertex, label) and
 *            (neighbour, label) for each neighbour -> reduce_by_key(min)
 *   save: map (vertex, label) -> "vertex label"
 *   count: the vertices; count of reduce_by_key over labels: the components.
 *
 * A plugin includes only <spate/spate.h> and links nothing (see
 * examples/plugin/README.md): sp_emit and the rest come from the process
 * that loads it.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <spate/spate.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CC_MAX_ITERATIONS 100000ul

static uint32_t cc_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void cc_put32(unsigned char *p, uint32_t v)
{
    for (unsigned i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Byte order, the shorter first on a tie. */
static int cc_cmp(const void *a, size_t al, const void *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);

    if (c != 0)
        return c;
    return al < bl ? -1 : al > bl;
}

static sp_status_t cc_iterations(const sp_job_params_t *params, uint32_t *n_p)
{
    const char *s = sp_job_arg(params, "iterations");
    unsigned long v = 10;
    char *end;

    if (s != NULL) {
        errno = 0;
        v = strtoul(s, &end, 10);
        if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v > CC_MAX_ITERATIONS)
            return sp_job_fail(SP_ERR_INVALID_PARAM,
                               "components: --job-arg iterations=%s: want 0 to %lu", s,
                               CC_MAX_ITERATIONS);
    }
    *n_p = (uint32_t)v;
    return SP_OK;
}

static int cc_blank(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* flat_map: "u v" -> (u, v), (v, u). */
static sp_status_t cc_parse(sp_emitter_t *out, const void *key, size_t key_len, const void *value,
                            size_t value_len, void *arg)
{
    const unsigned char *s = value, *end = s + value_len, *tok[3];
    size_t len[3];
    unsigned n = 0;
    sp_status_t st;

    (void)key;
    (void)key_len;
    (void)arg;
    while (n < 3) {
        while (s < end && cc_blank(*s))
            s++;
        if (s == end || (n == 0 && *s == '#'))
            break;
        tok[n] = s;
        while (s < end && !cc_blank(*s))
            s++;
        len[n] = (size_t)(s - tok[n]);
        n++;
    }
    if (n == 0)
        return SP_OK;
    if (n != 2)
        return sp_job_fail(SP_ERR_BAD_INPUT, "components: malformed edge line '%.*s': want 'u v'",
                           (int)(value_len < 200 ? value_len : 200), (const char *)value);
    if ((st = sp_emit(out, tok[0], len[0], tok[1], len[1])) != SP_OK)
        return st;
    return sp_emit(out, tok[1], len[1], tok[0], len[0]);
}

/* A growing list of byte strings. */
typedef struct cc_list {
    unsigned char *bytes;
    size_t len, cap;
    size_t *offs, n, ncap;
} cc_list_t;

static int cc_list_add(cc_list_t *l, const void *v, size_t len)
{
    if (l->len + len + 4 > l->cap) {
        size_t cap = 2 * l->cap + len + 4 + 256;
        unsigned char *grown = realloc(l->bytes, cap);
        if (grown == NULL)
            return -1;
        l->bytes = grown;
        l->cap = cap;
    }
    if (l->n == l->ncap) {
        size_t ncap = 2 * l->ncap + 16;
        size_t *grown = realloc(l->offs, ncap * sizeof(*grown));
        if (grown == NULL)
            return -1;
        l->offs = grown;
        l->ncap = ncap;
    }
    /* Stored as they will be packed: u32 length, bytes. */
    cc_put32(l->bytes + l->len, (uint32_t)len);
    memcpy(l->bytes + l->len + 4, v, len);
    l->offs[l->n++] = l->len;
    l->len += 4 + len;
    return 0;
}

/* qsort order of entries (u32 length, bytes) given by pointer. */
static int cc_entry_cmp(const void *a, const void *b)
{
    const unsigned char *x = *(const unsigned char *const *)a;
    const unsigned char *y = *(const unsigned char *const *)b;

    return cc_cmp(x + 4, cc_get32(x), y + 4, cc_get32(y));
}

/* group_by_key: a vertex's neighbours -> (vertex, distinct neighbours, sorted, packed). */
static sp_status_t cc_group(sp_emitter_t *out, const void *key, size_t key_len, sp_values_t *values,
                            void *arg)
{
    cc_list_t l = {0};
    const unsigned char **sorted = NULL;
    unsigned char *packed = NULL;
    size_t plen = 0;
    const void *v;
    size_t vlen;
    sp_status_t st = SP_OK;

    (void)arg;
    while (sp_values_next(values, &v, &vlen))
        if (cc_list_add(&l, v, vlen) != 0) {
            st = sp_job_fail(SP_ERR_NOMEM, "components: no memory for a vertex's neighbours");
            goto out;
        }
    if (l.n > 0 &&
        ((packed = malloc(l.len)) == NULL || (sorted = malloc(l.n * sizeof(*sorted))) == NULL)) {
        st = sp_job_fail(SP_ERR_NOMEM, "components: no memory for a vertex's neighbours");
        goto out;
    }
    for (size_t i = 0; i < l.n; i++)
        sorted[i] = l.bytes + l.offs[i];
    if (l.n > 1)
        qsort(sorted, l.n, sizeof(*sorted), cc_entry_cmp);
    for (size_t i = 0; i < l.n; i++) {
        const unsigned char *e = sorted[i];
        size_t elen = 4 + cc_get32(e);
        if (i > 0 && cc_entry_cmp(&sorted[i - 1], &sorted[i]) == 0)
            continue;
        memcpy(packed + plen, e, elen);
        plen += elen;
    }
    st = sp_emit(out, key, key_len, packed, plen);
out:
    free(sorted);
    free(packed);
    free(l.bytes);
    free(l.offs);
    return st;
}

/* map: (vertex, neighbours) -> (vertex, vertex). */
static sp_status_t cc_own_label(sp_emitter_t *out, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    (void)value;
    (void)value_len;
    (void)arg;
    return sp_emit(out, key, key_len, key, key_len);
}

/* flat_map: (vertex, tuple(label, neighbours)) -> the label to the vertex and each neighbour. */
static sp_status_t cc_spread(sp_emitter_t *out, const void *key, size_t key_len, const void *value,
                             size_t value_len, void *arg)
{
    sp_rec_field_t label, nbrs;
    const unsigned char *p;
    size_t o = 0;
    sp_status_t st;

    (void)arg;
    if (!sp_rec_tuple_field(value, value_len, 0, &label) ||
        !sp_rec_tuple_field(value, value_len, 1, &nbrs) || label.null || nbrs.null)
        return sp_job_fail(SP_ERR_CORRUPT, "components: a joined record is malformed");
    if ((st = sp_emit(out, key, key_len, label.data, label.len)) != SP_OK)
        return st;
    p = nbrs.data;
    while (o + 4 <= nbrs.len) {
        uint32_t l = cc_get32(p + o);
        if (l > nbrs.len - o - 4)
            return sp_job_fail(SP_ERR_CORRUPT, "components: a neighbour list is malformed");
        if ((st = sp_emit(out, p + o + 4, l, label.data, label.len)) != SP_OK)
            return st;
        o += 4 + l;
    }
    return SP_OK;
}

/* The combiner: the smaller label. */
static size_t cc_min(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                     const void *b, size_t b_len, void *out, size_t cap)
{
    const void *m = a;
    size_t ml = a_len;

    (void)arg;
    (void)key;
    (void)key_len;
    if (cc_cmp(b, b_len, a, a_len) < 0) {
        m = b;
        ml = b_len;
    }
    if (ml <= cap)
        memcpy(out, m, ml);
    return ml;
}

static const sp_combiner_t cc_min_label = {.combine = cc_min, .arg = NULL};

/* The combiner of the component count: any one of the (empty) values. */
static size_t cc_first(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                       const void *b, size_t b_len, void *out, size_t cap)
{
    (void)arg;
    (void)key;
    (void)key_len;
    (void)a;
    (void)a_len;
    (void)b;
    (void)b_len;
    (void)out;
    (void)cap;
    return 0;
}

static const sp_combiner_t cc_distinct = {.combine = cc_first, .arg = NULL};

/* map: (vertex, label) -> (label, ""). */
static sp_status_t cc_label_key(sp_emitter_t *out, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    (void)key;
    (void)key_len;
    (void)arg;
    return sp_emit(out, value, value_len, NULL, 0);
}

/* map: (vertex, label) -> "vertex label". */
static sp_status_t cc_format(sp_emitter_t *out, const void *key, size_t key_len, const void *value,
                             size_t value_len, void *arg)
{
    char *line = malloc(key_len + 1 + value_len);
    sp_status_t st;

    (void)arg;
    if (line == NULL)
        return sp_job_fail(SP_ERR_NOMEM, "components: no memory for a line");
    memcpy(line, key, key_len);
    line[key_len] = ' ';
    memcpy(line + key_len + 1, value, value_len);
    st = sp_emit(out, NULL, 0, line, key_len + 1 + value_len);
    free(line);
    return st;
}

/* Actions, in the order build adds them. */
enum { CC_VERTICES = 0, CC_SAVE = 1, CC_COMPONENTS = 2 };

static sp_status_t cc_build(sp_graph_t *g, const sp_job_params_t *params)
{
    sp_dataset_t *nbrs, *labels;
    uint32_t iterations = 0;
    sp_status_t st;

    if ((st = cc_iterations(params, &iterations)) != SP_OK)
        return st;
    if (params->input == NULL)
        return sp_job_fail(SP_ERR_INVALID_PARAM, "components: give an edge list (--input)");
    nbrs = sp_ds_flat_map(sp_graph_text(g, params->input, 0), cc_parse, NULL);
    nbrs = sp_ds_persist(sp_ds_group_by_key(nbrs, 0, cc_group, NULL), SP_STORAGE_MEMORY_AND_DISK);
    (void)sp_ds_count(nbrs); /* CC_VERTICES; also fills the cache */
    labels = sp_ds_map(nbrs, cc_own_label, NULL);
    for (uint32_t i = 0; i < iterations; i++)
        labels = sp_ds_reduce_by_key(
            sp_ds_flat_map(sp_ds_join(labels, nbrs, 0, SP_JOIN_INNER), cc_spread, NULL),
            &cc_min_label, 0);
    (void)sp_ds_save(sp_ds_map(labels, cc_format, NULL), SP_SAVE_TEXT); /* CC_SAVE */
    (void)sp_ds_count(sp_ds_reduce_by_key(sp_ds_map(labels, cc_label_key, NULL), &cc_distinct,
                                          0)); /* CC_COMPONENTS */
    sp_ds_unpersist(nbrs);
    return sp_graph_status(g);
}

static sp_status_t cc_finish(const sp_graph_t *g, const sp_job_params_t *params,
                             const sp_job_result_t *result, void *report)
{
    uint32_t iterations = 0;

    (void)result;
    if (cc_iterations(params, &iterations) != SP_OK)
        return SP_ERR_INVALID_PARAM;
    if (report != NULL)
        fprintf(report,
                "components: %" PRIu64 " vertices, %" PRIu64 " labels after %" PRIu32
                " iterations\n",
                sp_graph_count_result(g, CC_VERTICES), sp_graph_count_result(g, CC_COMPONENTS),
                iterations);
    return SP_OK;
}

static const sp_job_t cc_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "components",
    .summary = "connected components by label propagation over an edge list",
    .build = cc_build,
    .finish_graph = cc_finish,
};

SP_JOB_EXPORT(cc_job)
