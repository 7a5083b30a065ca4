/*
 * The built-in graph jobs (pagerank, join, groupby) and the example graph
 * plugin (examples/graph, connected components), each run in this process
 * through sp__graph_run_local() and checked against a plain reference
 * written here (arrays and sorting) on random inputs of several seeds:
 * files that are empty, keys that are skewed (one key in most rows), a page
 * with no out-links and one with no in-links, and an executor with so
 * little memory that the shuffles spill (the runner's stats must say so;
 * pagerank's must also show cached links read). Outputs are read back from the
 * part files of a temporary --output: join and groupby lines must equal the
 * reference's exactly (as sorted lists), pagerank's ranks within a relative
 * 1e-9 (sums are added in another order). Bad input (a malformed edge line,
 * a row with too few columns, a non-numeric aggregated field) fails the run
 * with SP_ERR_BAD_INPUT and a message naming the problem; bad --job-args fail
 * the build. The pagerank generator (--size) is deterministic for its seed,
 * about the size asked, skewed in both degrees, and gives the same ranks
 * whatever the partition count.
 */
/* LABELS: unit */
#include "common_int.h"
#include "executor/executor_int.h"
#include "executor/graph_int.h"
#include "run_test_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "job_env_util.h"
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Test hook of executor/jobs/pagerank.c: the text --size size, seed=seed generates. */
sp_status_t sp__pagerank_generated_text(uint64_t size, uint64_t seed, char **text_p, size_t *len_p);

static char dir[96];
static uint64_t rng_state;

static uint64_t rnd(void) { return je_rnd(&rng_state); }

static void sh(const char *fmt, const char *arg) { je_sh(fmt, arg); }

static void path_of(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", dir, name);
}

/* ---- growing text and line lists ---- */

typedef struct buf {
    char *s;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *p, size_t n)
{
    if (n == 0 || n > (SIZE_MAX >> 8))
        return;
    if (b->len + n + 1 > b->cap) {
        b->cap = 2 * (b->len + n + 1) + 256;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_printf(buf_t *b, const char *fmt, ...) SP_PRINTF(2, 3);

static void buf_printf(buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(tmp));
    buf_add(b, tmp, (size_t)n);
}

typedef struct lines {
    char **v;
    size_t n, cap;
} lines_t;

static void lines_add(lines_t *l, const char *s, size_t len)
{
    if (l->n == l->cap) {
        l->cap = 2 * l->cap + 64;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        assert_non_null(l->v);
    }
    l->v[l->n] = malloc(len + 1);
    assert_non_null(l->v[l->n]);
    memcpy(l->v[l->n], s, len);
    l->v[l->n++][len] = '\0';
}

static void lines_free(lines_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void lines_sort(lines_t *l)
{
    if (l->n > 1)
        qsort(l->v, l->n, sizeof(*l->v), str_cmp);
}

/* Splits text into lines (without '\n'); a last line without '\n' counts too. */
static void lines_of(const char *text, size_t len, lines_t *l)
{
    size_t start = 0;

    for (size_t i = 0; i <= len; i++)
        if (i == len ? i > start : text[i] == '\n') {
            lines_add(l, text + start, i - start);
            start = i + 1;
        }
}

/* Every line of out's part-r-NNNNN files, after checking the output was committed. */
static void read_output(const char *out, lines_t *l)
{
    unsigned parts = rt_part_count(out);

    rt_expect_output(out, 0);
    for (unsigned p = 0; p < parts; p++) {
        char path[512];
        size_t len = 0;
        char *text;

        snprintf(path, sizeof(path), "%s/part-r-%05u", out, p);
        text = rt_read_file(path, &len);
        assert_non_null(text);
        lines_of(text, len, l);
        free(text);
    }
}

static void expect_lines_equal(lines_t *got, lines_t *want, const char *what)
{
    lines_sort(got);
    lines_sort(want);
    for (size_t i = 0; i < got->n && i < want->n; i++)
        if (strcmp(got->v[i], want->v[i]) != 0)
            fail_msg("%s: line %zu of %zu (sorted) is '%s', the reference's '%s'", what, i, got->n,
                     got->v[i], want->v[i]);
    if (got->n != want->n)
        fail_msg("%s: %zu lines, the reference has %zu", what, got->n, want->n);
}

/* ---- an executor's memory for sp__graph_run_local ---- */

typedef je_env_t env_t;

/*
 * 256 MiB of 64 KiB pages, or (tiny, a size such as "2m") so little memory in 16 KiB pages
 * that every shuffle spills.
 */
static void env_open(env_t *e, const char *tiny)
{
    je_env_open(e, dir, tiny != NULL ? tiny : "256m", tiny != NULL ? "16k" : "64k");
    if (tiny != NULL)
        assert_int_equal(sp_conf_set(e->conf, "shuffle.spill_buffer", "16k"), SP_OK);
    je_env_start(e);
}

static void env_close(env_t *e) { je_env_close(e); }

/* A fresh input directory name (emptied) and output directory name (removed). */
static void fresh_dirs(char *in, char *out, size_t cap, const char *name)
{
    char tmp[64];

    snprintf(tmp, sizeof(tmp), "%s-in", name);
    path_of(in, cap, tmp);
    snprintf(tmp, sizeof(tmp), "%s-out", name);
    path_of(out, cap, tmp);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    sh("mkdir -p %s", in);
}

static void write_in(const char *in, const char *name, const buf_t *b)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", in, name);
    rt_write_file(path, b->s != NULL ? b->s : "", b->len);
}

/* What the last run_job() did. */
static sp__graph_stats_t last_stats;

/*
 * Runs job with args in this process; SP_OK or the run's status. The run
 * calls finish_graph with stderr; with report, it is called again on the
 * kept graph to print there.
 */
static sp_status_t run_job(const sp_job_t *job, env_t *e, const char *input, const char *output,
                           uint64_t size, uint32_t partitions, const char *const *args,
                           size_t nargs, FILE *report)
{
    sp_job_params_t p = {.input = input,
                         .output = output,
                         .size = size,
                         .partitions = partitions,
                         .executors = 1,
                         .slots = 2,
                         .args = args,
                         .nargs = nargs,
                         .conf = e->conf};
    sp_job_result_t result;
    sp_graph_t *graph = NULL;
    sp_status_t st;

    memset(&last_stats, 0, sizeof(last_stats));
    st = sp__graph_run_local(job, &p, e->mm, &result, &last_stats, &graph);
    if (st == SP_OK && report != NULL && job->finish_graph != NULL)
        st = job->finish_graph(graph, &p, &result, report);
    sp__graph_destroy(graph);
    return st;
}

/* ------------------------------------------------------------------------ */
/* pagerank                                                                  */
/* ------------------------------------------------------------------------ */

static bool is_blank(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

typedef struct edge {
    size_t src, dst;
} edge_t;

static int edge_cmp(const void *a, const void *b)
{
    const edge_t *x = a, *y = b;

    if (x->src != y->src)
        return x->src < y->src ? -1 : 1;
    return x->dst < y->dst ? -1 : x->dst > y->dst;
}

/* Page names (sorted, distinct) and their ranks. */
typedef struct pr_ref {
    lines_t pages;
    double *rank;
    size_t edges;
} pr_ref_t;

static size_t page_id(const lines_t *pages, const char *name)
{
    char *const *hit = bsearch(&name, pages->v, pages->n, sizeof(*pages->v), str_cmp);

    assert_non_null(hit);
    return (size_t)(hit - pages->v);
}

/* The reference: the job's semantics (see executor/jobs/pagerank.c) over plain arrays. */
static void pr_reference(const char *text, size_t len, unsigned iterations, double d, pr_ref_t *r)
{
    lines_t lines = {0}, names = {0};
    edge_t *edges;
    size_t ne = 0, *outdeg;
    double *sum;

    memset(r, 0, sizeof(*r));
    lines_of(text, len, &lines);
    for (size_t i = 0; i < lines.n; i++) {
        char *s = lines.v[i], *tok[2];
        size_t n = 0;

        while (n < 2) {
            while (*s != '\0' && is_blank(*s))
                s++;
            if (*s == '\0' || (n == 0 && *s == '#'))
                break;
            tok[n++] = s;
            while (*s != '\0' && !is_blank(*s))
                s++;
            if (*s != '\0')
                *s++ = '\0';
        }
        if (n == 0)
            continue;
        assert_int_equal(n, 2);
        lines_add(&names, tok[0], strlen(tok[0]));
        lines_add(&names, tok[1], strlen(tok[1]));
    }
    edges = calloc(names.n / 2 + 1, sizeof(*edges));
    assert_non_null(edges);
    /* names holds the edges' ends in order; the pages are those names, sorted and distinct. */
    for (size_t i = 0; i < names.n; i++)
        lines_add(&r->pages, names.v[i], strlen(names.v[i]));
    lines_sort(&r->pages);
    {
        size_t k = 0;
        for (size_t i = 0; i < r->pages.n; i++) {
            if (k > 0 && strcmp(r->pages.v[k - 1], r->pages.v[i]) == 0) {
                free(r->pages.v[i]);
                continue;
            }
            r->pages.v[k++] = r->pages.v[i];
        }
        r->pages.n = k;
    }
    for (size_t i = 0; i + 1 < names.n; i += 2)
        edges[ne++] = (edge_t){page_id(&r->pages, names.v[i]), page_id(&r->pages, names.v[i + 1])};
    if (ne > 1)
        qsort(edges, ne, sizeof(*edges), edge_cmp);
    {
        size_t k = 0;
        for (size_t i = 0; i < ne; i++)
            if (k == 0 || edge_cmp(&edges[k - 1], &edges[i]) != 0)
                edges[k++] = edges[i];
        ne = k;
    }
    r->edges = ne;
    r->rank = calloc(r->pages.n + 1, sizeof(double));
    sum = calloc(r->pages.n + 1, sizeof(double));
    outdeg = calloc(r->pages.n + 1, sizeof(size_t));
    assert_true(r->rank != NULL && sum != NULL && outdeg != NULL);
    for (size_t i = 0; i < ne; i++)
        outdeg[edges[i].src]++;
    for (size_t p = 0; p < r->pages.n; p++)
        r->rank[p] = 1.0;
    for (unsigned it = 0; it < iterations; it++) {
        memset(sum, 0, r->pages.n * sizeof(double));
        for (size_t i = 0; i < ne; i++)
            sum[edges[i].dst] += r->rank[edges[i].src] / (double)outdeg[edges[i].src];
        for (size_t p = 0; p < r->pages.n; p++)
            r->rank[p] = (1.0 - d) + d * sum[p];
    }
    free(sum);
    free(outdeg);
    free(edges);
    lines_free(&names);
    lines_free(&lines);
}

static void pr_ref_free(pr_ref_t *r)
{
    lines_free(&r->pages);
    free(r->rank);
}

/* Checks out's "page rank" lines against the reference: each page once, ranks within 1e-9. */
static void pr_expect(const char *out, const pr_ref_t *r)
{
    lines_t got = {0};
    bool *seen = calloc(r->pages.n + 1, sizeof(bool));

    assert_non_null(seen);
    read_output(out, &got);
    if (got.n != r->pages.n)
        fail_msg("pagerank: %zu pages in the output, the reference has %zu", got.n, r->pages.n);
    for (size_t i = 0; i < got.n; i++) {
        char *sp = strrchr(got.v[i], ' '), *end;
        double rank, want;
        size_t id;

        if (sp == NULL)
            fail_msg("pagerank: output line '%s' is not 'page rank'", got.v[i]);
        *sp = '\0';
        rank = strtod(sp + 1, &end);
        assert_true(*end == '\0');
        id = page_id(&r->pages, got.v[i]);
        if (seen[id])
            fail_msg("pagerank: page %s comes twice", got.v[i]);
        seen[id] = true;
        want = r->rank[id];
        if (fabs(rank - want) > 1e-9 * fabs(want))
            fail_msg("pagerank: page %s has rank %.17g, the reference %.17g", got.v[i], rank, want);
    }
    free(seen);
    lines_free(&got);
}

/*
 * A random edge list over pages p0 .. p<pages-1>: comments, blank lines,
 * tabs, \r\n and duplicate edges; "sink" has in-links only and "source"
 * out-links only; with skew, most edges start or end at "hub".
 */
static void pr_random_edges(buf_t *b, size_t edges, unsigned pages, bool skew)
{
    buf_printf(b, "# a random graph\n\n");
    for (size_t i = 0; i < edges; i++) {
        char src[32], dst[32];
        unsigned kind = (unsigned)(rnd() % 100);

        snprintf(src, sizeof(src), "p%u", (unsigned)(rnd() % pages));
        snprintf(dst, sizeof(dst), "p%u", (unsigned)(rnd() % pages));
        if (skew && kind < 45)
            snprintf(src, sizeof(src), "hub");
        else if (skew && kind < 90)
            snprintf(dst, sizeof(dst), "hub");
        switch (rnd() % 8) {
        case 0: buf_printf(b, "%s\t%s\r\n", src, dst); break;
        case 1: buf_printf(b, "  %s   %s  \n", src, dst); break;
        case 2: buf_printf(b, "%s %s\n%s %s\n", src, dst, src, dst); break;
        case 3: buf_printf(b, "%s %s\n\n#%s\n", src, dst, src); break;
        default: buf_printf(b, "%s %s\n", src, dst); break;
        }
    }
    buf_printf(b, "p0 sink\nsource p1\np1 sink\n");
}

static void pr_case(env_t *e, const char *name, size_t edges, unsigned pages, bool skew,
                    unsigned iterations, const char *damping, uint32_t partitions)
{
    char in[300], out[300], it_arg[64], d_arg[64];
    const char *args[] = {it_arg, d_arg};
    buf_t all = {0};
    pr_ref_t ref;

    fresh_dirs(in, out, sizeof(in), name);
    snprintf(it_arg, sizeof(it_arg), "iterations=%u", iterations);
    snprintf(d_arg, sizeof(d_arg), "damping=%s", damping);
    /* Three files, one of them empty; the reference reads their concatenation. */
    for (int f = 0; f < 3; f++) {
        buf_t b = {0};
        char fname[32];

        if (f != 1)
            pr_random_edges(&b, edges / 2, pages, skew);
        snprintf(fname, sizeof(fname), "edges-%d.txt", f);
        write_in(in, fname, &b);
        if (b.len > 0)
            buf_add(&all, b.s, b.len);
        free(b.s);
    }
    pr_reference(all.s, all.len, iterations, strtod(damping, NULL), &ref);
    if (run_job(&sp__job_pagerank, e, in, out, 0, partitions, args, 2, NULL) != SP_OK)
        fail_msg("pagerank %s: %s", name, sp_last_error());
    pr_expect(out, &ref);
    pr_ref_free(&ref);
    free(all.s);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
}

static void test_pagerank_random_graphs(void **state)
{
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        rng_state = seed;
        pr_case(&e, "pr", 300 + (size_t)(rnd() % 700), 5 + (unsigned)(rnd() % 80), false,
                1 + (unsigned)(rnd() % 6), "0.85", (uint32_t)(1 + seed));
    }
    rng_state = 11;
    pr_case(&e, "pr-skew", 2000, 200, true, 5, "0.7", 4);
    rng_state = 12;
    pr_case(&e, "pr-zero", 100, 10, false, 0, "0.85", 2);
    env_close(&e);
}

static void test_pagerank_tiny_memory(void **state)
{
    env_t e = {0};

    (void)state;
    /*
     * The smallest executor that runs this skewed graph is between 4 and 5 MiB (between 2 and 3
     * before partitions being cached counted as their task's execution memory until the block
     * store takes them): below, a map task of the first iteration is refused a page
     * (SP_ERR_MEMORY_REFUSED).
     */
    env_open(&e, "8m");
    rng_state = 21;
    pr_case(&e, "pr-tiny", 100000, 20000, true, 3, "0.85", 3);
    if (last_stats.spills == 0 || last_stats.cache_hits == 0)
        fail_msg("pagerank in tiny memory: %" PRIu64 " spills, %" PRIu64 " cache hits",
                 last_stats.spills, last_stats.cache_hits);
    env_close(&e);
}

/* A graph small enough to check by hand: the semantics of the design note. */
static void test_pagerank_dangling_and_sourceless_pages(void **state)
{
    static const char text[] = "a b\na c\nb c\nc a\nd c\n";
    const char *args[] = {"iterations=1", "damping=0.5"};
    char in[300], out[300], path[400];
    lines_t got = {0}, want = {0};
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    fresh_dirs(in, out, sizeof(in), "pr-hand");
    snprintf(path, sizeof(path), "%s/e.txt", in);
    rt_write_file(path, text, sizeof(text) - 1);
    /*
     * One iteration from rank 1: a gets c's 1/1; b gets a's 1/2; c gets a's 1/2, b's 1 and d's 1;
     * d (no in-links) keeps 1 - d.
     */
    assert_int_equal(run_job(&sp__job_pagerank, &e, in, out, 0, 2, args, 2, NULL), SP_OK);
    read_output(out, &got);
    lines_add(&want, "a 1", 3);
    lines_add(&want, "b 0.75", 6);
    lines_add(&want, "c 1.75", 6);
    lines_add(&want, "d 0.5", 5);
    expect_lines_equal(&got, &want, "pagerank by hand");
    lines_free(&got);
    lines_free(&want);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
}

static void test_pagerank_generated(void **state)
{
    const char *args[] = {"seed=7", "iterations=4"};
    char *text = NULL, *again = NULL, *other = NULL, out[300], report_text[512] = {0};
    size_t len = 0, again_len = 0, other_len = 0, maxin = 0, maxout = 0;
    uint64_t size = 200000;
    pr_ref_t ref;
    env_t e = {0};
    FILE *report;

    (void)state;
    assert_int_equal(sp__pagerank_generated_text(size, 7, &text, &len), SP_OK);
    assert_int_equal(sp__pagerank_generated_text(size, 7, &again, &again_len), SP_OK);
    assert_int_equal(sp__pagerank_generated_text(size, 8, &other, &other_len), SP_OK);
    assert_int_equal(len, again_len);
    assert_memory_equal(text, again, len);
    assert_true(other_len != len || memcmp(text, other, len) != 0);
    if (len < size / 2 || len > size * 2)
        fail_msg("--size %" PRIu64 " generated %zu bytes", size, len);
    pr_reference(text, len, 4, 0.85, &ref);
    {
        /* Skew: the busiest page of each degree far above the mean. */
        lines_t l = {0};
        size_t *in = calloc(ref.pages.n, sizeof(size_t)),
               *outd = calloc(ref.pages.n, sizeof(size_t));
        assert_true(in != NULL && outd != NULL);
        lines_of(text, len, &l);
        for (size_t i = 0; i < l.n; i++) {
            char *sp = strchr(l.v[i], ' ');
            assert_non_null(sp);
            *sp = '\0';
            outd[page_id(&ref.pages, l.v[i])]++;
            in[page_id(&ref.pages, sp + 1)]++;
        }
        for (size_t p = 0; p < ref.pages.n; p++) {
            maxin = in[p] > maxin ? in[p] : maxin;
            maxout = outd[p] > maxout ? outd[p] : maxout;
        }
        if (maxin < 20 * l.n / ref.pages.n || maxout < 4 * l.n / ref.pages.n)
            fail_msg("generated graph of %zu pages and %zu edges: busiest in %zu, out %zu",
                     ref.pages.n, l.n, maxin, maxout);
        free(in);
        free(outd);
        lines_free(&l);
    }
    env_open(&e, NULL);
    path_of(out, sizeof(out), "pr-gen-out");
    for (uint32_t parts = 2; parts <= 5; parts += 3) {
        sh("rm -rf %s", out);
        report = fmemopen(report_text, sizeof(report_text), "w");
        assert_non_null(report);
        assert_int_equal(run_job(&sp__job_pagerank, &e, NULL, out, size, parts, args, 2, report),
                         SP_OK);
        fclose(report);
        pr_expect(out, &ref);
        {
            char want[128];
            snprintf(want, sizeof(want), "%zu pages, %zu edges, 4 iterations", ref.pages.n,
                     ref.edges);
            if (strstr(report_text, want) == NULL)
                fail_msg("pagerank's report '%s' lacks '%s'", report_text, want);
        }
    }
    sh("rm -rf %s", out);
    env_close(&e);
    pr_ref_free(&ref);
    free(text);
    free(again);
    free(other);
}

static void test_pagerank_bad_input_and_args(void **state)
{
    static const char text[] = "a b\n# fine\n\nb c d\n";
    const char *bad_args[][1] = {{"iterations=x"}, {"damping=1.5"}, {"iterations=-1"}};
    char in[300], out[300], path[400];
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    fresh_dirs(in, out, sizeof(in), "pr-bad");
    snprintf(path, sizeof(path), "%s/e.txt", in);
    rt_write_file(path, text, sizeof(text) - 1);
    assert_int_equal(run_job(&sp__job_pagerank, &e, in, out, 0, 2, NULL, 0, NULL),
                     SP_ERR_BAD_INPUT);
    if (strstr(sp_last_error(), "b c d") == NULL || strstr(sp_last_error(), "malformed") == NULL)
        fail_msg("pagerank's bad-input message: %s", sp_last_error());
    rt_expect_no_output(out);
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad_args); i++) {
        sh("rm -rf %s", out);
        assert_int_equal(run_job(&sp__job_pagerank, &e, in, out, 0, 2, bad_args[i], 1, NULL),
                         SP_ERR_INVALID_PARAM);
        if (strstr(sp_last_error(), bad_args[i][0]) == NULL)
            fail_msg("pagerank's message for %s: %s", bad_args[i][0], sp_last_error());
    }
    sh("rm -rf %s", out);
    assert_int_equal(run_job(&sp__job_pagerank, &e, NULL, out, 0, 2, NULL, 0, NULL),
                     SP_ERR_INVALID_PARAM);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
}

/* ------------------------------------------------------------------------ */
/* join                                                                      */
/* ------------------------------------------------------------------------ */

/* A row split at delim: its columns. */
typedef struct row {
    lines_t cols;
} row_t;

static void row_split(const char *s, char delim, row_t *r)
{
    const char *start = s;

    memset(r, 0, sizeof(*r));
    for (;; s++)
        if (*s == delim || *s == '\0') {
            lines_add(&r->cols, start, (size_t)(s - start));
            if (*s == '\0')
                return;
            start = s + 1;
        }
}

/* The other columns of r than key, each preceded by delim. */
static void row_rest(const row_t *r, size_t key, char delim, buf_t *b)
{
    for (size_t c = 0; c < r->cols.n; c++)
        if (c != key) {
            buf_add(b, &delim, 1);
            buf_add(b, r->cols.v[c], strlen(r->cols.v[c]));
        }
}

/* The rows of a text: lines without a trailing '\r', empty ones skipped. */
static void rows_of(const char *text, size_t len, char delim, row_t **rows_p, size_t *n_p)
{
    lines_t l = {0};
    row_t *rows;
    size_t n = 0;

    lines_of(text, len, &l);
    rows = calloc(l.n + 1, sizeof(*rows));
    assert_non_null(rows);
    for (size_t i = 0; i < l.n; i++) {
        size_t ll = strlen(l.v[i]);
        if (ll > 0 && l.v[i][ll - 1] == '\r')
            l.v[i][--ll] = '\0';
        if (ll > 0)
            row_split(l.v[i], delim, &rows[n++]);
    }
    lines_free(&l);
    *rows_p = rows;
    *n_p = n;
}

static void rows_free(row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        lines_free(&rows[i].cols);
    free(rows);
}

static size_t sort_key; /* the column rows_key_cmp compares */

static int rows_key_cmp(const void *a, const void *b)
{
    return strcmp(((const row_t *)a)->cols.v[sort_key], ((const row_t *)b)->cols.v[sort_key]);
}

/* The reference join: the right rows sorted by key, each left row's matches found by search. */
static void join_reference(const buf_t *left, const buf_t *right, char delim, size_t lk, size_t rk,
                           bool left_join, lines_t *want)
{
    row_t *lr, *rr;
    size_t nl, nr, right_other;

    rows_of(left->s ? left->s : "", left->len, delim, &lr, &nl);
    rows_of(right->s ? right->s : "", right->len, delim, &rr, &nr);
    right_other = nr > 0 ? rr[0].cols.n - 1 : 0;
    sort_key = rk;
    if (nr > 1)
        qsort(rr, nr, sizeof(*rr), rows_key_cmp);
    for (size_t i = 0; i < nl; i++) {
        const char *key = lr[i].cols.v[lk];
        size_t lo = 0, hi = nr;
        bool matched = false;

        while (lo < hi) { /* the first right row whose key is not below key */
            size_t mid = (lo + hi) / 2;
            if (strcmp(rr[mid].cols.v[rk], key) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t j = lo; j < nr && strcmp(rr[j].cols.v[rk], key) == 0; j++) {
            buf_t b = {0};
            matched = true;
            buf_add(&b, key, strlen(key));
            row_rest(&lr[i], lk, delim, &b);
            row_rest(&rr[j], rk, delim, &b);
            lines_add(want, b.s, b.len);
            free(b.s);
        }
        if (!matched && left_join) {
            buf_t b = {0};
            buf_add(&b, key, strlen(key));
            row_rest(&lr[i], lk, delim, &b);
            for (size_t c = 0; c < right_other; c++)
                buf_add(&b, &delim, 1);
            lines_add(want, b.s != NULL ? b.s : "", b.len);
            free(b.s);
        }
    }
    rows_free(lr, nl);
    rows_free(rr, nr);
}

/* rows rows of cols columns, the key in column key: k0 in most rows with skew, some empty fields.
 */
static void join_random_rows(buf_t *b, size_t rows, size_t cols, size_t key, unsigned keys,
                             bool skew, char delim)
{
    for (size_t i = 0; i < rows; i++) {
        for (size_t c = 0; c < cols; c++) {
            if (c > 0)
                buf_add(b, &delim, 1);
            if (c == key) {
                unsigned k = skew && rnd() % 4 != 0 ? 0 : (unsigned)(rnd() % keys);
                buf_printf(b, "k%u", k);
            } else if (rnd() % 5 != 0) {
                buf_printf(b, "v%" PRIu64, rnd() % 1000);
            }
        }
        buf_printf(b, rnd() % 10 == 0 ? "\r\n" : (rnd() % 10 == 0 ? "\n\n" : "\n"));
    }
}

static void join_case(env_t *e, size_t lrows, size_t rrows, unsigned keys, bool skew,
                      bool left_join, char delim, uint32_t partitions)
{
    char in[300], out[300], rdir[300], left_arg[400], right_arg[400], delim_arg[32];
    const char *args[] = {left_arg,      right_arg, "left_key=1",
                          "right_key=2", delim_arg, left_join ? "kind=left" : "kind=inner"};
    buf_t left = {0}, right = {0}, empty = {0};
    lines_t got = {0}, want = {0};

    fresh_dirs(in, out, sizeof(in), "join");
    path_of(rdir, sizeof(rdir), "join-right");
    sh("rm -rf %s", rdir);
    sh("mkdir -p %s", rdir);
    join_random_rows(&left, lrows, 3, 1, keys, skew, delim);
    join_random_rows(&right, rrows, 4, 2, keys, skew, delim);
    /* The left input: one file (with an empty one beside it); the right split over two. */
    write_in(in, "a.csv", &left);
    write_in(in, "b.csv", &empty);
    {
        size_t cut = right.len / 2;
        buf_t r1 = {0}, r2 = {0};
        while (cut < right.len && right.s[cut] != '\n')
            cut++;
        if (cut < right.len)
            cut++;
        buf_add(&r1, right.s ? right.s : "", cut);
        buf_add(&r2, right.s ? right.s + cut : "", right.len - cut);
        write_in(rdir, "r1", &r1);
        write_in(rdir, "r2", &r2);
        free(r1.s);
        free(r2.s);
    }
    snprintf(left_arg, sizeof(left_arg), "left=%s", in);
    snprintf(right_arg, sizeof(right_arg), "right=%s", rdir);
    if (delim == '\t')
        snprintf(delim_arg, sizeof(delim_arg), "delim=tab");
    else
        snprintf(delim_arg, sizeof(delim_arg), "delim=%c", delim);
    join_reference(&left, &right, delim, 1, 2, left_join, &want);
    assert_int_equal(run_job(&sp__job_join, e, NULL, out, 0, partitions, args, 6, NULL), SP_OK);
    read_output(out, &got);
    expect_lines_equal(&got, &want, left_join ? "left join" : "inner join");
    lines_free(&got);
    lines_free(&want);
    free(left.s);
    free(right.s);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    sh("rm -rf %s", rdir);
}

static void test_join_random(void **state)
{
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        rng_state = 100 + seed;
        join_case(&e, 50 + rnd() % 300, 50 + rnd() % 300, 20 + (unsigned)(rnd() % 60), false,
                  seed == 2, seed == 3 ? ',' : '\t', (uint32_t)seed + 1);
    }
    rng_state = 111;
    join_case(&e, 400, 300, 50, true, false, ',', 3);
    rng_state = 112;
    join_case(&e, 300, 100, 200, true, true, '|', 2);
    /* Empty inputs: nothing on either side, or nothing on the right of a left join. */
    rng_state = 113;
    join_case(&e, 0, 0, 5, false, false, ',', 2);
    rng_state = 114;
    join_case(&e, 40, 0, 5, false, true, ',', 2);
    env_close(&e);
}

static void test_join_tiny_memory(void **state)
{
    env_t e = {0};

    (void)state;
    env_open(&e, "2m");
    rng_state = 121;
    join_case(&e, 100000, 50000, 60000, false, true, ',', 3);
    if (last_stats.spills == 0)
        fail_msg("join in tiny memory did not spill");
    env_close(&e);
}

static void test_join_bad_input_and_args(void **state)
{
    static const char left[] = "k1,a,b\nk2,c,d\n", right[] = "x,y,k1\nx,k2\n";
    char in[300], out[300], rpath[512], left_arg[600], right_arg[600];
    const char *args[] = {left_arg, right_arg, "right_key=2", "delim=,"};
    const char *bad[][3] = {{left_arg, right_arg, "kind=outer"},
                            {left_arg, right_arg, "delim=ab"},
                            {left_arg, right_arg, "left_key=x"},
                            {left_arg, "kind=inner", "delim=,"}};
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    fresh_dirs(in, out, sizeof(in), "join-bad");
    snprintf(rpath, sizeof(rpath), "%s/right.csv", in);
    snprintf(left_arg, sizeof(left_arg), "left=%s/left.csv", in);
    snprintf(right_arg, sizeof(right_arg), "right=%s", rpath);
    {
        char lpath[400];
        snprintf(lpath, sizeof(lpath), "%s/left.csv", in);
        rt_write_file(lpath, left, sizeof(left) - 1);
        rt_write_file(rpath, right, sizeof(right) - 1);
    }
    assert_int_equal(run_job(&sp__job_join, &e, NULL, out, 0, 2, args, 4, NULL), SP_ERR_BAD_INPUT);
    if (strstr(sp_last_error(), "right") == NULL || strstr(sp_last_error(), "'x,k2'") == NULL)
        fail_msg("join's bad-input message: %s", sp_last_error());
    rt_expect_no_output(out);
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        sh("rm -rf %s", out);
        assert_int_equal(run_job(&sp__job_join, &e, NULL, out, 0, 2, bad[i], 3, NULL),
                         SP_ERR_INVALID_PARAM);
    }
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
}

/* ------------------------------------------------------------------------ */
/* groupby                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * The reference over rows of 6 columns, key column 1, header rows skipped,
 * aggregates "count,sum:3,min:4,max:4,avg:5,sum:0": rows sorted by key, each
 * run of equal keys aggregated.
 */
static void gb_reference(const buf_t *text, const char *header, lines_t *want)
{
    row_t *rows;
    size_t n, k = 0;

    rows_of(text->s ? text->s : "", text->len, ',', &rows, &n);
    for (size_t i = 0; i < n; i++) { /* drop the header rows */
        char joined[512];
        size_t o = 0;
        for (size_t c = 0; c < rows[i].cols.n; c++)
            o += (size_t)snprintf(joined + o, sizeof(joined) - o, "%s%s", c ? "," : "",
                                  rows[i].cols.v[c]);
        if (header != NULL && strcmp(joined, header) == 0)
            lines_free(&rows[i].cols);
        else
            rows[k++] = rows[i];
    }
    n = k;
    sort_key = 1;
    if (n > 1)
        qsort(rows, n, sizeof(*rows), rows_key_cmp);
    for (size_t i = 0; i < n;) {
        double sum[6] = {0}, min[6], max[6];
        uint64_t count = 0;
        size_t j = i;
        buf_t b = {0};

        for (int c = 0; c < 6; c++) {
            min[c] = INFINITY;
            max[c] = -INFINITY;
        }
        for (; j < n && strcmp(rows[j].cols.v[1], rows[i].cols.v[1]) == 0; j++) {
            count++;
            for (int c = 0; c < 6; c++) {
                double v;
                if (c == 1 || c == 2)
                    continue;
                v = strtod(rows[j].cols.v[c], NULL);
                sum[c] = count == 1 ? v : sum[c] + v; /* the job's sum of one -0 is -0 */
                min[c] = v < min[c] ? v : min[c];
                max[c] = v > max[c] ? v : max[c];
            }
        }
        buf_printf(&b, "%s,%" PRIu64 ",%.17g,%.17g,%.17g,%.17g,%.17g", rows[i].cols.v[1], count,
                   sum[3], min[4], max[4], sum[5] / (double)count, sum[0]);
        lines_add(want, b.s, b.len);
        free(b.s);
        i = j;
    }
    rows_free(rows, n);
}

/* Rows "a,key,tag,b,c,d" of numbers (integers and halves: sums are exact in any order). */
static void gb_random_rows(buf_t *b, size_t rows, unsigned keys, bool skew)
{
    for (size_t i = 0; i < rows; i++) {
        unsigned k = skew && rnd() % 5 != 0 ? 7 : (unsigned)(rnd() % keys);
        buf_printf(b, "%d,key%u,t%u,%d.5,%d,-%u\n", (int)(rnd() % 2000) - 1000, k,
                   (unsigned)(rnd() % 3), (int)(rnd() % 100000) - 50000,
                   (int)(rnd() % 1000000) - 500000, (unsigned)(rnd() % 1000));
    }
}

static void gb_case(env_t *e, size_t rows, unsigned keys, bool skew, bool header,
                    uint32_t partitions)
{
    static const char head[] = "a,key,tag,b,c,d";
    const char *args[] = {"key=1", "agg=count,sum:3,min:4,max:4,avg:5,sum:0",
                          header ? "header=true" : "header=false"};
    char in[300], out[300];
    buf_t all = {0};
    lines_t got = {0}, want = {0};

    fresh_dirs(in, out, sizeof(in), "gb");
    for (int f = 0; f < 3; f++) {
        buf_t b = {0};
        char name[32];
        if (header && f != 1)
            buf_printf(&b, "%s\n", head);
        if (f != 1)
            gb_random_rows(&b, rows / 2, keys, skew);
        snprintf(name, sizeof(name), "t%d.csv", f);
        write_in(in, name, &b);
        if (b.len > 0)
            buf_add(&all, b.s, b.len);
        free(b.s);
    }
    gb_reference(&all, header ? head : NULL, &want);
    assert_int_equal(run_job(&sp__job_groupby, e, in, out, 0, partitions, args, 3, NULL), SP_OK);
    read_output(out, &got);
    expect_lines_equal(&got, &want, "groupby");
    lines_free(&got);
    lines_free(&want);
    free(all.s);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
}

static void test_groupby_random(void **state)
{
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        rng_state = 200 + seed;
        gb_case(&e, 100 + rnd() % 900, 1 + (unsigned)(rnd() % 100), false, seed != 2,
                (uint32_t)seed + 1);
    }
    rng_state = 211;
    gb_case(&e, 2000, 300, true, true, 3);
    rng_state = 212;
    gb_case(&e, 0, 1, false, false, 2);
    env_close(&e);
}

static void test_groupby_tiny_memory(void **state)
{
    env_t e = {0};

    (void)state;
    env_open(&e, "2m");
    rng_state = 221;
    gb_case(&e, 200000, 1000000, false, true, 3);
    if (last_stats.spills == 0)
        fail_msg("groupby in tiny memory did not spill");
    env_close(&e);
}

static void test_groupby_bad_input_and_args(void **state)
{
    static const char text[] = "k,1,2\nk,3,abc\n", short_row[] = "k,1,2\nk,3\n";
    const char *args[] = {"key=0", "agg=sum:1,max:2"};
    const char *bad[] = {"agg=median:1", "agg=sum", "agg=count:1", "key=-1", "header=yes"};
    char in[300], out[300], path[400];
    env_t e = {0};

    (void)state;
    env_open(&e, NULL);
    fresh_dirs(in, out, sizeof(in), "gb-bad");
    snprintf(path, sizeof(path), "%s/t.csv", in);
    rt_write_file(path, text, sizeof(text) - 1);
    assert_int_equal(run_job(&sp__job_groupby, &e, in, out, 0, 2, args, 2, NULL), SP_ERR_BAD_INPUT);
    if (strstr(sp_last_error(), "column 2") == NULL || strstr(sp_last_error(), "'abc'") == NULL)
        fail_msg("groupby's bad-input message: %s", sp_last_error());
    rt_expect_no_output(out);
    sh("rm -rf %s", out);
    rt_write_file(path, short_row, sizeof(short_row) - 1);
    assert_int_equal(run_job(&sp__job_groupby, &e, in, out, 0, 2, args, 2, NULL), SP_ERR_BAD_INPUT);
    if (strstr(sp_last_error(), "'k,3'") == NULL)
        fail_msg("groupby's short-row message: %s", sp_last_error());
    for (size_t i = 0; i < SP_ARRAY_SIZE(bad); i++) {
        sh("rm -rf %s", out);
        assert_int_equal(run_job(&sp__job_groupby, &e, in, out, 0, 2, &bad[i], 1, NULL),
                         SP_ERR_INVALID_PARAM);
    }
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
}

/* ------------------------------------------------------------------------ */
/* Registry, and the example graph plugin                                    */
/* ------------------------------------------------------------------------ */

static void test_graph_jobs_are_registered(void **state)
{
    static const char *const names[] = {"pagerank", "join", "groupby"};

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(names); i++) {
        const sp_job_t *job = NULL;
        void *handle = (void *)1;

        assert_int_equal(sp__job_load(names[i], &job, &handle), SP_OK);
        assert_null(handle);
        assert_string_equal(job->name, names[i]);
        assert_int_equal(job->abi_version, SP_JOB_ABI_VERSION);
        assert_true(sp__job_is_graph(job));
        assert_non_null(job->summary);
    }
}

/* Label propagation over plain arrays, for the plugin. */
static void cc_reference(const char *text, size_t len, unsigned iterations, lines_t *want)
{
    pr_ref_t g; /* its pages are the vertices; edges are re-read below */
    lines_t l = {0};
    edge_t *edges;
    size_t ne = 0;
    char **label, **next;

    pr_reference(text, len, 0, 0.85, &g);
    lines_of(text, len, &l);
    edges = calloc(2 * l.n + 1, sizeof(*edges));
    label = calloc(g.pages.n + 1, sizeof(*label));
    next = calloc(g.pages.n + 1, sizeof(*next));
    assert_true(edges != NULL && label != NULL && next != NULL);
    for (size_t i = 0; i < l.n; i++) {
        char *sp = strchr(l.v[i], ' ');
        size_t u, v;
        if (sp == NULL)
            continue;
        *sp = '\0';
        u = page_id(&g.pages, l.v[i]);
        v = page_id(&g.pages, sp + 1);
        edges[ne++] = (edge_t){u, v};
        edges[ne++] = (edge_t){v, u};
    }
    for (size_t p = 0; p < g.pages.n; p++)
        label[p] = g.pages.v[p];
    for (unsigned it = 0; it < iterations; it++) {
        memcpy(next, label, g.pages.n * sizeof(*next));
        for (size_t i = 0; i < ne; i++)
            if (strcmp(label[edges[i].src], next[edges[i].dst]) < 0)
                next[edges[i].dst] = label[edges[i].src];
        memcpy(label, next, g.pages.n * sizeof(*label));
    }
    for (size_t p = 0; p < g.pages.n; p++) {
        buf_t b = {0};
        buf_printf(&b, "%s %s", g.pages.v[p], label[p]);
        lines_add(want, b.s, b.len);
        free(b.s);
    }
    free(label);
    free(next);
    free(edges);
    lines_free(&l);
    pr_ref_free(&g);
}

static void test_example_graph_plugin(void **state)
{
    const sp_job_t *job = NULL;
    void *handle = NULL;
    char in[300], out[300], report_text[256] = {0};
    const char *args[] = {"iterations=3"};
    lines_t got = {0}, want = {0};
    buf_t b = {0};
    env_t e = {0};
    FILE *report;

    (void)state;
    assert_int_equal(sp__job_load(TEST_GRAPH_PLUGIN, &job, &handle), SP_OK);
    assert_non_null(handle);
    assert_string_equal(job->name, "components");
    assert_true(sp__job_is_graph(job));
    env_open(&e, NULL);
    for (uint64_t seed = 1; seed <= 2; seed++) {
        rng_state = 300 + seed;
        fresh_dirs(in, out, sizeof(in), "cc");
        /* Chains and random edges among 400 vertices: components of several diameters. */
        for (size_t i = 0; i < 300; i++) {
            unsigned u = (unsigned)(rnd() % 400),
                     v = rnd() % 3 == 0 ? u + 1 : (unsigned)(rnd() % 400);
            buf_printf(&b, "v%u v%u\n", u, v);
        }
        write_in(in, "edges", &b);
        cc_reference(b.s, b.len, 3, &want);
        report = fmemopen(report_text, sizeof(report_text), "w");
        assert_non_null(report);
        assert_int_equal(run_job(job, &e, in, out, 0, (uint32_t)seed + 1, args, 1, report), SP_OK);
        fclose(report);
        {
            /* The report's label count: the distinct labels of the reference. */
            lines_t labels = {0};
            size_t distinct = 0;
            char phrase[96];
            for (size_t i = 0; i < want.n; i++) {
                const char *sp = strchr(want.v[i], ' ');
                lines_add(&labels, sp + 1, strlen(sp + 1));
            }
            lines_sort(&labels);
            for (size_t i = 0; i < labels.n; i++)
                distinct += i == 0 || strcmp(labels.v[i - 1], labels.v[i]) != 0;
            snprintf(phrase, sizeof(phrase), "%zu vertices, %zu labels after 3 iterations", want.n,
                     distinct);
            if (strstr(report_text, phrase) == NULL)
                fail_msg("components' report '%s' lacks '%s'", report_text, phrase);
            lines_free(&labels);
        }
        read_output(out, &got);
        expect_lines_equal(&got, &want, "components");
        lines_free(&got);
        lines_free(&want);
        free(b.s);
        b = (buf_t){0};
        sh("rm -rf %s", in);
        sh("rm -rf %s", out);
    }
    env_close(&e);
    sp__job_unload(handle);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_graph_jobs_are_registered),
        cmocka_unit_test(test_pagerank_dangling_and_sourceless_pages),
        cmocka_unit_test(test_pagerank_random_graphs),
        cmocka_unit_test(test_pagerank_tiny_memory),
        cmocka_unit_test(test_pagerank_generated),
        cmocka_unit_test(test_pagerank_bad_input_and_args),
        cmocka_unit_test(test_join_random),
        cmocka_unit_test(test_join_tiny_memory),
        cmocka_unit_test(test_join_bad_input_and_args),
        cmocka_unit_test(test_groupby_random),
        cmocka_unit_test(test_groupby_tiny_memory),
        cmocka_unit_test(test_groupby_bad_input_and_args),
        cmocka_unit_test(test_example_graph_plugin),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-graph-jobs-%d", (int)getpid());
    sh("mkdir -p %s", dir);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    sh("rm -rf %s", dir);
    return rc;
}
