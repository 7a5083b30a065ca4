/*
 * The pagerank job: iterative PageRank over an edge list, the classic Spark
 * example on spate's graph API (<spate/graph.h>).
 *
 * Input. --input PATH (a file, or a directory's files as sp_graph_text()
 * reads them): one edge "src dst" per line, two page ids separated by
 * blanks (space, tab, \r, \v, \f). Blank lines and lines whose first
 * non-blank byte is '#' are skipped; any other line without exactly two ids
 * is SP_ERR_BAD_INPUT naming the line. Page ids are byte strings, compared
 * as bytes. An edge given twice counts once (Spark's distinct()); a self
 * loop is an edge like any other.
 *
 * Generated input. Without --input, --size BYTES generates about that many
 * bytes of edge-list text (--job-arg seed=N, default 0; the same seed gives
 * the same graph whatever the partition count), in the spirit of Thrill's
 * PageRank generator but with both degrees skewed: pages are the decimal
 * numbers 0 .. n-1, page p's out-degree is Pareto (minimum 3, exponent 2.5,
 * mean about 9, at most min(n, 1000)) and each of its links goes to a page
 * drawn from a Zipf distribution (page r with weight about 1/(r+1)), so low
 * page numbers collect most in-links. Each page's edges come from its own
 * random stream (seed, page), so partition i generates pages
 * [i n/P, (i+1) n/P) without the others.
 *
 * Semantics. Every page that occurs in an edge, as src or as dst, has a
 * rank: 1.0 before the first iteration, and after each
 *     rank(p) = (1 - d) + d * sum over distinct edges q -> p of rank(q) / outdeg(q)
 * with d = --job-arg damping= (default 0.85) and iterations= of them
 * (default 10; 0 outputs the initial ranks). This is Spark's example
 * formula with two choices made explicit: a page with no in-links keeps a
 * rank of exactly 1 - d (where Spark's example drops it from the ranks after
 * the first iteration and so stops its contributions), and a dangling page
 * (no out-links) gets its rank from its in-links but passes it to nobody:
 * its mass leaves the graph (ranks are not normalized). The output
 * (--output) is one "page rank" line per page, rank printed with %.17g so
 * that it reads back exactly; finish_graph prints pages, edges and
 * iterations.
 *
 * Graph. text (or generate) -> flat_map parse: (src, dst) per edge and
 * (dst, "") so that pages with no out-links exist -> group_by_key: links =
 * (page, its distinct out-neighbours, sorted, packed as u32-length fields),
 * persisted (memory and disk) and read by every iteration. ranks0 = map
 * links -> (page, 1.0). Each iteration: join(ranks, links) (ranks on the
 * left: one small value per key is held, the links stream) -> flat_map
 * spread: (page, 0.0) and (dst, rank / outdeg) per out-link -> reduce_by_key
 * summing doubles (combined on the map side) -> map_partitions applying the
 * damping. Counting: count(links) is the page count and also fills the
 * cache before the iterations; a sum of out-degrees over the cached links
 * is the edge count. Values are doubles in sp_rec_put_double form.
 *
 * Callbacks' arg is the run's sp_job_params_t (it outlives the graph);
 * the few that need a parameter parse it once per task in begin().
 */
#include "bytes.h"
#include "common_int.h"
#include "executor/executor_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_PR_ITERATIONS_MAX 100000u
/* Generated graphs: out-degree's minimum, Pareto exponent and cap; mean degree for sizing. */
#define SP_PR_GEN_MIN_DEGREE 3.0
#define SP_PR_GEN_EXPONENT   2.5
#define SP_PR_GEN_MAX_DEGREE 1000u
#define SP_PR_GEN_MEAN       9.0
/* Most bytes of a bad line quoted in a message. */
#define SP_PR_QUOTE 200

/* Test hook: the whole text --size size, seed=seed generates. */
sp_status_t sp__pagerank_generated_text(uint64_t size, uint64_t seed, char **text_p, size_t *len_p);

typedef struct sp_pr_conf {
    uint32_t iterations;
    double damping;
    uint64_t seed;
} sp_pr_conf_t;

static sp_status_t sp_pr_conf_parse(const sp_job_params_t *p, sp_pr_conf_t *c)
{
    const char *d = sp_job_arg(p, "damping");
    uint64_t iterations = 0;
    sp_status_t st;

    if ((st = sp_job_arg_u64(p, "iterations", 10, SP_PR_ITERATIONS_MAX, &iterations)) != SP_OK ||
        (st = sp_job_arg_u64(p, "seed", 0, UINT64_MAX, &c->seed)) != SP_OK)
        return st;
    c->iterations = (uint32_t)iterations;
    c->damping = 0.85;
    if (d != NULL) {
        char *end;
        errno = 0;
        c->damping = strtod(d, &end);
        if (d[0] == '\0' || *end != '\0' || errno != 0 || !(c->damping >= 0.0) ||
            !(c->damping <= 1.0))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "pagerank: --job-arg damping=%s: want a number from 0 to 1", d);
    }
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Generated graphs                                                          */
/* ------------------------------------------------------------------------ */

static uint64_t sp_pr_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform double in (0, 1]. */
static double sp_pr_unit(uint64_t *state)
{
    *state = sp_pr_mix(*state);
    return ((double)(*state >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

static unsigned sp_pr_digits(uint64_t v)
{
    unsigned d = 1;

    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* Pages of a generated graph of about size bytes: src has the digits of n, dst about half. */
static uint64_t sp_pr_gen_pages(uint64_t size)
{
    uint64_t n = size / 64 + 1;

    for (int i = 0; i < 4; i++) {
        double line = sp_pr_digits(n) + (sp_pr_digits(n) + 1) / 2.0 + 2.0;
        n = (uint64_t)((double)size / (SP_PR_GEN_MEAN * line)) + 1;
    }
    return n;
}

typedef sp_status_t (*sp_pr_line_fn_t)(void *arg, const char *line, size_t len);

/* The edge lines of page `page` of a generated graph of n pages. */
static sp_status_t sp_pr_gen_page(uint64_t seed, uint64_t n, uint64_t page, sp_pr_line_fn_t fn,
                                  void *arg)
{
    uint64_t state = sp_pr_mix(seed ^ sp_pr_mix(page));
    uint64_t cap = SP_MIN((uint64_t)SP_PR_GEN_MAX_DEGREE, n);
    double deg = SP_PR_GEN_MIN_DEGREE * pow(sp_pr_unit(&state), -1.0 / (SP_PR_GEN_EXPONENT - 1.0));
    uint64_t links = deg >= (double)cap ? cap : (uint64_t)deg;
    double logn = log((double)n + 1.0);
    char line[48];
    sp_status_t st;

    for (uint64_t i = 0; i < links; i++) {
        /* Zipf with exponent 1 over 1 .. n (continuous inverse): x = (n + 1)^u. */
        uint64_t dst = (uint64_t)exp(sp_pr_unit(&state) * logn) - 1;
        int len;
        if (dst >= n)
            dst = n - 1;
        len = snprintf(line, sizeof(line), "%" PRIu64 " %" PRIu64, page, dst);
        if ((st = fn(arg, line, (size_t)len)) != SP_OK)
            return st;
    }
    return SP_OK;
}

static sp_status_t sp_pr_emit_line(void *arg, const char *line, size_t len)
{
    return sp_emit(arg, NULL, 0, line, len);
}

static sp_status_t sp_pr_generate(sp_emitter_t *out, uint32_t partition, uint32_t partitions,
                                  void *arg)
{
    const sp_job_params_t *params = arg;
    uint64_t n = sp_pr_gen_pages(params->size);
    uint64_t first = n * partition / partitions, end = n * (partition + 1) / partitions;
    sp_pr_conf_t conf;
    sp_status_t st;

    if ((st = sp_pr_conf_parse(params, &conf)) != SP_OK)
        return st;
    for (uint64_t p = first; p < end; p++)
        if ((st = sp_pr_gen_page(conf.seed, n, p, sp_pr_emit_line, out)) != SP_OK)
            return st;
    return SP_OK;
}

typedef struct sp_pr_text {
    char *buf;
    size_t len, cap;
} sp_pr_text_t;

static sp_status_t sp_pr_text_line(void *arg, const char *line, size_t len)
{
    sp_pr_text_t *t = arg;

    if (t->len + len + 1 > t->cap) {
        size_t cap = SP_MAX(2 * t->cap, t->len + len + 1 + 4096);
        char *grown = sp__realloc(t->buf, cap);
        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for %zu bytes of text", cap);
        t->buf = grown;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, line, len);
    t->buf[t->len + len] = '\n';
    t->len += len + 1;
    return SP_OK;
}

sp_status_t sp__pagerank_generated_text(uint64_t size, uint64_t seed, char **text_p, size_t *len_p)
{
    sp_pr_text_t t = {0};
    uint64_t n = sp_pr_gen_pages(size);
    sp_status_t st = SP_OK;

    for (uint64_t p = 0; p < n && st == SP_OK; p++)
        st = sp_pr_gen_page(seed, n, p, sp_pr_text_line, &t);
    if (st != SP_OK) {
        sp__free(t.buf);
        return st;
    }
    *text_p = t.buf;
    *len_p = t.len;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Links                                                                     */
/* ------------------------------------------------------------------------ */

static bool sp_pr_blank(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* flat_map: an edge line -> (src, dst) and (dst, ""); blank and comment lines -> nothing. */
static sp_status_t sp_pr_parse(sp_emitter_t *out, const void *key, size_t key_len,
                               const void *value, size_t value_len, void *arg)
{
    const unsigned char *s = value, *end = s + value_len;
    const unsigned char *tok[2];
    size_t len[2];
    unsigned n = 0;
    sp_status_t st;

    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(arg);
    for (;;) {
        const unsigned char *start;
        while (s < end && sp_pr_blank(*s))
            s++;
        if (s == end)
            break;
        if (n == 0 && *s == '#')
            return SP_OK;
        start = s;
        while (s < end && !sp_pr_blank(*s))
            s++;
        if (n == 2) {
            n = 3;
            break;
        }
        tok[n] = start;
        len[n++] = (size_t)(s - start);
    }
    if (n == 0)
        return SP_OK;
    if (n != 2)
        return SP_RAISE(SP_ERR_BAD_INPUT,
                        "pagerank: malformed edge line '%.*s%s': want two page ids, 'src dst'",
                        (int)SP_MIN(value_len, (size_t)SP_PR_QUOTE), (const char *)value,
                        value_len > SP_PR_QUOTE ? "..." : "");
    if ((st = sp_emit(out, tok[0], len[0], tok[1], len[1])) != SP_OK)
        return st;
    return sp_emit(out, tok[1], len[1], NULL, 0);
}

typedef struct sp_pr_ref {
    size_t off, len;
} sp_pr_ref_t;

typedef struct sp_pr_links {
    unsigned char *bytes; /* the values, back to back */
    size_t len, cap;
    sp_pr_ref_t *refs;
    size_t n, ncap;
} sp_pr_links_t;

static int sp_pr_ref_cmp_r(const void *a, const void *b, void *arg)
{
    const sp_pr_ref_t *x = a, *y = b;
    const unsigned char *base = arg;
    int c = memcmp(base + x->off, base + y->off, SP_MIN(x->len, y->len));

    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void sp_pr_links_free(sp_pr_links_t *l)
{
    sp__free(l->bytes);
    sp__free(l->refs);
}

static sp_status_t sp_pr_links_add(sp_pr_links_t *l, const void *v, size_t len)
{
    if (l->len + len > l->cap) {
        size_t cap = SP_MAX(2 * l->cap, l->len + len + 1024);
        unsigned char *grown = sp__realloc(l->bytes, cap);
        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for a page's %zu link bytes", cap);
        l->bytes = grown;
        l->cap = cap;
    }
    if (l->n == l->ncap) {
        size_t ncap = l->ncap ? 2 * l->ncap : 64;
        sp_pr_ref_t *grown = sp__realloc(l->refs, ncap * sizeof(*grown));
        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for a page's %zu links", ncap);
        l->refs = grown;
        l->ncap = ncap;
    }
    memcpy(l->bytes + l->len, v, len);
    l->refs[l->n++] = (sp_pr_ref_t){.off = l->len, .len = len};
    l->len += len;
    return SP_OK;
}

/* group_by_key: a page's values -> (page, its distinct out-neighbours sorted, packed). */
static sp_status_t sp_pr_group_links(sp_emitter_t *out, const void *key, size_t key_len,
                                     sp_values_t *values, void *arg)
{
    sp_pr_links_t l = {0};
    unsigned char *packed = NULL;
    const void *v;
    size_t vlen, n = 0, plen = 0;
    sp_status_t st = SP_OK;

    SP_UNUSED(arg);
    while (sp_values_next(values, &v, &vlen))
        if (vlen > 0 && (st = sp_pr_links_add(&l, v, vlen)) != SP_OK)
            goto out;
    if (l.n > 1)
        qsort_r(l.refs, l.n, sizeof(*l.refs), sp_pr_ref_cmp_r, l.bytes);
    for (size_t i = 0; i < l.n; i++)
        if (i == 0 || sp_pr_ref_cmp_r(&l.refs[i - 1], &l.refs[i], l.bytes) != 0) {
            l.refs[n++] = l.refs[i];
            plen += 4 + l.refs[i].len;
        }
    if (plen > 0 && (packed = sp__malloc(plen)) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for %zu bytes of links", plen);
        goto out;
    }
    for (size_t i = 0, o = 0; i < n; i++) {
        if (l.refs[i].len > UINT32_MAX - 1) {
            st = SP_RAISE(SP_ERR_BAD_INPUT, "pagerank: a page id of %zu bytes", l.refs[i].len);
            goto out;
        }
        sp__le_put_u32(packed + o, (uint32_t)l.refs[i].len);
        memcpy(packed + o + 4, l.bytes + l.refs[i].off, l.refs[i].len);
        o += 4 + l.refs[i].len;
    }
    st = sp_emit(out, key, key_len, packed, plen);
out:
    sp__free(packed);
    sp_pr_links_free(&l);
    return st;
}

/* Out-neighbours in a packed links value; *ok_p false when it is malformed. */
static size_t sp_pr_links_count(const unsigned char *p, size_t len, bool *ok_p)
{
    size_t n = 0, o = 0;

    while (o < len) {
        uint32_t l;
        if (len - o < 4 || (l = sp__le_get_u32(p + o)) > len - o - 4) {
            *ok_p = false;
            return n;
        }
        o += 4 + (size_t)l;
        n++;
    }
    *ok_p = true;
    return n;
}

/* map: links -> (page, 1.0). */
static sp_status_t sp_pr_initial_rank(sp_emitter_t *out, const void *key, size_t key_len,
                                      const void *value, size_t value_len, void *arg)
{
    unsigned char one[8];

    SP_UNUSED(value);
    SP_UNUSED(value_len);
    SP_UNUSED(arg);
    sp_rec_put_double(one, 1.0);
    return sp_emit(out, key, key_len, one, sizeof(one));
}

/* map: links -> ("", u64 out-degree), summed into the edge count. */
static sp_status_t sp_pr_out_degree(sp_emitter_t *out, const void *key, size_t key_len,
                                    const void *value, size_t value_len, void *arg)
{
    unsigned char deg[8];
    bool ok;
    size_t n = sp_pr_links_count(value, value_len, &ok);

    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(arg);
    if (!ok)
        return SP_RAISE(SP_ERR_INTERNAL, "pagerank: the links of a page are malformed");
    sp_rec_put_u64(deg, n);
    return sp_emit(out, NULL, 0, deg, sizeof(deg));
}

static size_t sp_pr_sum_u64(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                            const void *b, size_t b_len, void *out, size_t cap)
{
    SP_UNUSED(arg);
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(a_len);
    SP_UNUSED(b_len);
    if (cap >= 8)
        sp_rec_put_u64(out, sp_rec_get_u64(a) + sp_rec_get_u64(b));
    return 8;
}

static size_t sp_pr_sum_double(void *arg, const void *key, size_t key_len, const void *a,
                               size_t a_len, const void *b, size_t b_len, void *out, size_t cap)
{
    SP_UNUSED(arg);
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(a_len);
    SP_UNUSED(b_len);
    if (cap >= 8)
        sp_rec_put_double(out, sp_rec_get_double(a) + sp_rec_get_double(b));
    return 8;
}

static const sp_combiner_t sp_pr_u64_sum = {.combine = sp_pr_sum_u64, .arg = NULL};
static const sp_combiner_t sp_pr_double_sum = {.combine = sp_pr_sum_double, .arg = NULL};

/* ------------------------------------------------------------------------ */
/* One iteration                                                             */
/* ------------------------------------------------------------------------ */

/* flat_map: (page, tuple(rank, links)) -> (page, 0.0) and (dst, rank / outdeg) per link. */
static sp_status_t sp_pr_spread(sp_emitter_t *out, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    sp_rec_field_t rank, links;
    unsigned char share[8];
    const unsigned char *p;
    size_t n, o = 0;
    sp_status_t st;
    bool ok;

    SP_UNUSED(arg);
    if (!sp_rec_tuple_field(value, value_len, 0, &rank) ||
        !sp_rec_tuple_field(value, value_len, 1, &links) || rank.null || rank.len != 8 ||
        links.null)
        return SP_RAISE(SP_ERR_INTERNAL, "pagerank: a joined (rank, links) record is malformed");
    p = links.data;
    n = sp_pr_links_count(p, links.len, &ok);
    if (!ok)
        return SP_RAISE(SP_ERR_INTERNAL, "pagerank: the links of a page are malformed");
    sp_rec_put_double(share, 0.0);
    if ((st = sp_emit(out, key, key_len, share, sizeof(share))) != SP_OK || n == 0)
        return st;
    sp_rec_put_double(share, sp_rec_get_double(rank.data) / (double)n);
    while (o < links.len) {
        uint32_t l = sp__le_get_u32(p + o);
        if ((st = sp_emit(out, p + o + 4, l, share, sizeof(share))) != SP_OK)
            return st;
        o += 4 + (size_t)l;
    }
    return SP_OK;
}

static sp_status_t sp_pr_conf_begin(sp_emitter_t *out, void **state_p, void *arg)
{
    sp_pr_conf_t *conf;
    sp_status_t st;

    SP_UNUSED(out);
    if ((conf = malloc(sizeof(*conf))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for a task's parameters");
    if ((st = sp_pr_conf_parse(arg, conf)) != SP_OK) {
        free(conf);
        return st;
    }
    *state_p = conf;
    return SP_OK;
}

static sp_status_t sp_pr_conf_end(sp_emitter_t *out, void *state, void *arg)
{
    SP_UNUSED(out);
    SP_UNUSED(arg);
    free(state);
    return SP_OK;
}

/* map_partitions: (page, sum of shares) -> (page, (1 - d) + d * sum). */
static sp_status_t sp_pr_damp(sp_emitter_t *out, void *state, const void *key, size_t key_len,
                              const void *value, size_t value_len, void *arg)
{
    const sp_pr_conf_t *conf = state;
    unsigned char rank[8];

    SP_UNUSED(arg);
    SP_UNUSED(value_len);
    sp_rec_put_double(rank, (1.0 - conf->damping) + conf->damping * sp_rec_get_double(value));
    return sp_emit(out, key, key_len, rank, sizeof(rank));
}

static const sp_partition_fns_t sp_pr_damp_fns = {
    .begin = sp_pr_conf_begin, .record = sp_pr_damp, .end = sp_pr_conf_end, .discard = NULL};

/* map: (page, rank) -> "page rank". */
static sp_status_t sp_pr_format(sp_emitter_t *out, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    char small[256], num[32], *line = small;
    int nlen = snprintf(num, sizeof(num), "%.17g", sp_rec_get_double(value));
    size_t len = key_len + 1 + (size_t)nlen;
    sp_status_t st;

    SP_UNUSED(value_len);
    SP_UNUSED(arg);
    if (len > sizeof(small) && (line = sp__malloc(len)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "pagerank: no memory for a line of %zu bytes", len);
    memcpy(line, key, key_len);
    line[key_len] = ' ';
    memcpy(line + key_len + 1, num, (size_t)nlen);
    st = sp_emit(out, NULL, 0, line, len);
    if (line != small)
        sp__free(line);
    return st;
}

/* ------------------------------------------------------------------------ */
/* The job                                                                   */
/* ------------------------------------------------------------------------ */

/* The actions the build adds, in this order. */
enum { SP_PR_ACTION_PAGES = 0, SP_PR_ACTION_EDGES = 1, SP_PR_ACTION_SAVE = 2 };

static sp_status_t sp_pr_build(sp_graph_t *g, const sp_job_params_t *params)
{
    void *arg = (void *)(uintptr_t)params;
    sp_dataset_t *edges, *links, *ranks;
    sp_pr_conf_t conf;
    sp_status_t st;

    if ((st = sp_pr_conf_parse(params, &conf)) != SP_OK)
        return st;
    if (params->input != NULL)
        edges = sp_graph_text(g, params->input, 0);
    else if (params->size > 0)
        edges = sp_graph_generate(g, sp_graph_default_partitions(g), sp_pr_generate, arg);
    else
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "pagerank: give an edge list (--input) or a size to generate (--size)");
    edges = sp_ds_flat_map(edges, sp_pr_parse, NULL);
    links = sp_ds_persist(sp_ds_group_by_key(edges, 0, sp_pr_group_links, NULL),
                          SP_STORAGE_MEMORY_AND_DISK);
    (void)sp_ds_count(links);
    (void)sp_ds_collect(
        sp_ds_reduce_by_key(sp_ds_map(links, sp_pr_out_degree, NULL), &sp_pr_u64_sum, 1), 1);
    ranks = sp_ds_map(links, sp_pr_initial_rank, NULL);
    for (uint32_t i = 0; i < conf.iterations; i++) {
        sp_dataset_t *shares =
            sp_ds_flat_map(sp_ds_join(ranks, links, 0, SP_JOIN_INNER), sp_pr_spread, NULL);
        ranks = sp_ds_map_partitions(sp_ds_reduce_by_key(shares, &sp_pr_double_sum, 0),
                                     &sp_pr_damp_fns, arg);
    }
    (void)sp_ds_save(sp_ds_map(ranks, sp_pr_format, NULL), SP_SAVE_TEXT);
    sp_ds_unpersist(links);
    return sp_graph_status(g);
}

static sp_status_t sp_pr_finish(const sp_graph_t *g, const sp_job_params_t *params,
                                const sp_job_result_t *result, void *report)
{
    uint64_t pages = sp_graph_count_result(g, SP_PR_ACTION_PAGES), edges = 0;
    const void *k, *v;
    size_t kl, vl;
    sp_pr_conf_t conf;
    sp_status_t st;

    SP_UNUSED(result);
    if ((st = sp_pr_conf_parse(params, &conf)) != SP_OK)
        return st;
    if (sp_graph_collected_record(g, SP_PR_ACTION_EDGES, 0, &k, &kl, &v, &vl)) {
        if (vl != 8)
            return SP_RAISE(SP_ERR_INTERNAL, "pagerank: the edge count has %zu bytes, not 8", vl);
        edges = sp_rec_get_u64(v);
    }
    if (report != NULL)
        fprintf(report,
                "pagerank: %" PRIu64 " pages, %" PRIu64 " edges, %" PRIu32
                " iterations, damping %g\n",
                pages, edges, conf.iterations, conf.damping);
    return SP_OK;
}

const sp_job_t sp__job_pagerank = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "pagerank",
    .summary = "iterative PageRank of an edge list (--input) or a generated power-law graph "
               "(--size; --job-arg iterations=, damping=, seed=)",
    .build = sp_pr_build,
    .finish_graph = sp_pr_finish,
};
