/*
 * SVG drawn by spate-bench itself (no gnuplot at run time): two panels of
 * lines with markers, axes with labels and units (GB/s on a log10 axis:
 * memcpy and a spilling map differ by decades), ticks at round values,
 * and a legend under each panel. spate's series are solid (map write) or
 * dashed (exchange + reduce read, total); limits are grey-scale dotted
 * lines, so a reader sees at once how far below its limit each phase runs.
 *
 * Points are grouped by series and abscissa and the median is drawn: runs
 * repeated with --repeat, or merged from several --json files, give one
 * point each. Small by design: at most SP_PLOT_SERIES series of
 * SP_PLOT_POINTS abscissae per panel; more are dropped with a note.
 */
#include "spate_bench_plot.h"

#include "common_int.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SP_PLOT_SERIES  24
#define SP_PLOT_POINTS  32
#define SP_PLOT_SAMPLES 64

typedef struct sp_plot_point {
    double x;
    double y[SP_PLOT_SAMPLES];
    unsigned n;
    bool hollow; /* oversubscribed */
} sp_plot_point_t;

typedef struct sp_plot_series {
    char name[96];
    bool limit;
    int dash; /* 0 solid, 1 dashed, 2 dotted */
    sp_plot_point_t pts[SP_PLOT_POINTS];
    unsigned n;
} sp_plot_series_t;

typedef struct sp_plot_panel {
    const char *title, *xlabel, *ylabel;
    bool xlog2; /* sizes: log2 axis labelled in MiB/GiB */
    sp_plot_series_t s[SP_PLOT_SERIES];
    unsigned n;
    unsigned dropped;
} sp_plot_panel_t;

static const char *const sp_plot_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                             "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                                             "#bcbd22", "#393b79", "#ad494a", "#637939"};
static const char *const sp_plot_greys[] = {"#000000", "#666666", "#999999",
                                            "#333333", "#777777", "#aaaaaa"};
static const char *const sp_plot_limit_dashes[] = {
    " stroke-dasharray=\"2 3\"",  " stroke-dasharray=\"9 3 2 3\"",     " stroke-dasharray=\"1 6\"",
    " stroke-dasharray=\"12 4\"", " stroke-dasharray=\"5 2 1 2 1 2\"", " stroke-dasharray=\"4 4\""};

static void sp_plot_add(sp_plot_panel_t *p, const char *name, bool limit, int dash, double x,
                        double y, bool hollow)
{
    sp_plot_series_t *s = NULL;
    sp_plot_point_t *pt = NULL;

    if (!(y > 0) || !isfinite(y))
        return;
    for (unsigned i = 0; i < p->n && s == NULL; i++)
        if (strcmp(p->s[i].name, name) == 0)
            s = &p->s[i];
    if (s == NULL) {
        if (p->n == SP_PLOT_SERIES) {
            p->dropped++;
            return;
        }
        s = &p->s[p->n++];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof(s->name), "%s", name);
        s->limit = limit;
        s->dash = dash;
    }
    for (unsigned i = 0; i < s->n && pt == NULL; i++)
        if (s->pts[i].x == x)
            pt = &s->pts[i];
    if (pt == NULL) {
        if (s->n == SP_PLOT_POINTS) {
            p->dropped++;
            return;
        }
        pt = &s->pts[s->n++];
        memset(pt, 0, sizeof(*pt));
        pt->x = x;
    }
    if (pt->n < SP_PLOT_SAMPLES)
        pt->y[pt->n++] = y;
    pt->hollow |= hollow;
}

static int sp_plot_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int sp_plot_cmp_point(const void *a, const void *b)
{
    return sp_plot_cmp(&((const sp_plot_point_t *)a)->x, &((const sp_plot_point_t *)b)->x);
}

static double sp_plot_median(sp_plot_point_t *pt)
{
    qsort(pt->y, pt->n, sizeof(double), sp_plot_cmp);
    return pt->n % 2 ? pt->y[pt->n / 2] : (pt->y[pt->n / 2 - 1] + pt->y[pt->n / 2]) / 2;
}

/* A round step (1, 2 or 5 times a power of ten) giving about n ticks over [0, max]. */
static double sp_plot_step(double max, int n)
{
    double raw = max / n, mag = pow(10, floor(log10(raw))), f = raw / mag;

    return mag * (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10);
}

static void sp_plot_size_label(char *buf, size_t cap, double bytes)
{
    if (bytes >= (double)(1ull << 30))
        snprintf(buf, cap, "%g GiB", bytes / (double)(1ull << 30));
    else if (bytes >= (double)(1ull << 20))
        snprintf(buf, cap, "%g MiB", bytes / (double)(1ull << 20));
    else
        snprintf(buf, cap, "%g KiB", bytes / 1024);
}

static void sp_plot_escape(FILE *f, const char *text)
{
    for (; *text; text++) {
        switch (*text) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*text, f);
        }
    }
}

/* Draws panel p with its plot area's top-left corner at (ox, oy), w x h, legend below. */
static void sp_plot_panel_draw(FILE *f, sp_plot_panel_t *p, double ox, double oy, double w,
                               double h)
{
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = 0, lymin, lymax;
    unsigned ci = 0, gi = 0;
    sp_plot_series_t tmp;

    /* spate's series first, then the limits, in the order they came. */
    for (unsigned i = 1; i < p->n; i++)
        for (unsigned k = i; k > 0 && p->s[k - 1].limit && !p->s[k].limit; k--) {
            tmp = p->s[k - 1];
            p->s[k - 1] = p->s[k];
            p->s[k] = tmp;
        }

    for (unsigned i = 0; i < p->n; i++) {
        qsort(p->s[i].pts, p->s[i].n, sizeof(sp_plot_point_t), sp_plot_cmp_point);
        for (unsigned k = 0; k < p->s[i].n; k++) {
            double x = p->xlog2 ? log2(p->s[i].pts[k].x) : p->s[i].pts[k].x;
            p->s[i].pts[k].y[0] = sp_plot_median(&p->s[i].pts[k]); /* keep the median first */
            p->s[i].pts[k].n = 1;
            xmin = SP_MIN(xmin, x);
            xmax = SP_MAX(xmax, x);
            ymax = SP_MAX(ymax, p->s[i].pts[k].y[0]);
            ymin = SP_MIN(ymin, p->s[i].pts[k].y[0]);
        }
    }
    fprintf(f,
            "<g class=\"panel\">\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"15\" "
            "font-weight=\"bold\" text-anchor=\"middle\">",
            ox + w / 2, oy - 14);
    sp_plot_escape(f, p->title);
    fputs("</text>\n", f);
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#000\"/>\n",
            ox, oy, w, h);
    if (p->n == 0 || !(ymax > 0)) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no data</text>\n</g>\n",
                ox + w / 2, oy + h / 2);
        return;
    }
    if (xmax - xmin < 1e-9) {
        xmin -= p->xlog2 ? 1 : 1;
        xmax += p->xlog2 ? 1 : 1;
    } else {
        double pad = (xmax - xmin) * 0.06;
        xmin -= pad;
        xmax += pad;
    }
    if (!p->xlog2 && xmin > 0 && xmin < 1)
        xmin = 0;
    /* GB/s spans decades (memcpy against a spilling map): a log10 axis keeps both readable. */
    lymin = floor(log10(ymin / 1.2));
    lymax = ceil(log10(ymax * 1.2));
    if (lymax - lymin < 1)
        lymax = lymin + 1;
#define SX(x) (ox + ((x)-xmin) / (xmax - xmin) * w)
#define SY(y) (oy + h - (log10(y) - lymin) / (lymax - lymin) * h)
    fputs("<g class=\"y-axis\" font-size=\"11\" text-anchor=\"end\">\n", f);
    for (double e = lymin; e <= lymax; e++)
        for (int m = 1; m < 10; m++) {
            double y = (double)m * pow(10, e);
            bool labelled = m == 1 || m == 2 || m == 5;
            if (log10(y) > lymax + 1e-9)
                break;
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>", ox,
                    SY(y), ox + w, SY(y), m == 1 ? "#bbb" : "#eee");
            if (labelled)
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%g</text>", ox - 6, SY(y) + 4, y);
            fputc('\n', f);
        }
    fputs("</g>\n<g class=\"x-axis\" font-size=\"11\" text-anchor=\"middle\">\n", f);
    if (p->xlog2) {
        for (double e = ceil(xmin); e <= floor(xmax); e++) {
            char lab[32];
            sp_plot_size_label(lab, sizeof(lab), pow(2, e));
            fprintf(f,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>"
                    "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                    SX(e), oy + h, SX(e), oy + h + 5, SX(e), oy + h + 18, lab);
        }
    } else {
        double xs = SP_MAX(1.0, sp_plot_step(xmax - xmin, 8));
        for (double x = ceil(xmin / xs) * xs; x <= xmax; x += xs)
            fprintf(f,
                    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>"
                    "<text x=\"%.1f\" y=\"%.1f\">%g</text>\n",
                    SX(x), oy + h, SX(x), oy + h + 5, SX(x), oy + h + 18, x);
    }
    fputs("</g>\n", f);
    fprintf(f,
            "<text class=\"x-label\" x=\"%.1f\" y=\"%.1f\" font-size=\"13\" "
            "text-anchor=\"middle\">",
            ox + w / 2, oy + h + 38);
    sp_plot_escape(f, p->xlabel);
    fprintf(f,
            "</text>\n<text class=\"y-label\" x=\"%.1f\" y=\"%.1f\" font-size=\"13\" "
            "text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">",
            ox - 48, oy + h / 2, ox - 48, oy + h / 2);
    sp_plot_escape(f, p->ylabel);
    fputs("</text>\n", f);
    /* Series, then the legend under the panel in two columns. */
    for (unsigned i = 0; i < p->n; i++) {
        sp_plot_series_t *s = &p->s[i];
        /* Limits differ in grey and in dash pattern both, so that none two look alike. */
        const char *color = s->limit ? sp_plot_greys[gi % SP_ARRAY_SIZE(sp_plot_greys)]
                                     : sp_plot_colors[ci++ % SP_ARRAY_SIZE(sp_plot_colors)];
        const char *dash = s->limit
                               ? sp_plot_limit_dashes[gi++ % SP_ARRAY_SIZE(sp_plot_limit_dashes)]
                           : s->dash == 1 ? " stroke-dasharray=\"7 4\""
                           : s->dash == 2 ? " stroke-dasharray=\"2 3\""
                                          : "";
        double lx = ox + (i % 2) * (w / 2), ly = oy + h + 60 + (i / 2) * 17;

        fprintf(f, "<g class=\"series\" data-name=\"");
        sp_plot_escape(f, s->name);
        fprintf(f, "\">\n<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s points=\"",
                color, s->limit ? "1.5" : "2.2", dash);
        for (unsigned k = 0; k < s->n; k++) {
            double x = p->xlog2 ? log2(s->pts[k].x) : s->pts[k].x;
            fprintf(f, "%s%.1f,%.1f", k ? " " : "", SX(x), SY(s->pts[k].y[0]));
        }
        fputs("\"/>\n", f);
        for (unsigned k = 0; k < s->n; k++) {
            double x = p->xlog2 ? log2(s->pts[k].x) : s->pts[k].x;
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\" stroke=\"%s\"/>\n",
                    SX(x), SY(s->pts[k].y[0]), s->pts[k].hollow ? "#fff" : color, color);
        }
        fprintf(f,
                "</g>\n<g class=\"legend\"><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                "stroke=\"%s\" stroke-width=\"2\"%s/><text x=\"%.1f\" y=\"%.1f\" "
                "font-size=\"11\">",
                lx, ly - 4, lx + 26, ly - 4, color, dash, lx + 32, ly);
        sp_plot_escape(f, s->name);
        fputs("</text></g>\n", f);
    }
    if (p->dropped)
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">(%u points beyond the plot's "
                "capacity left out)</text>\n",
                ox, oy + h + 60 + ((p->n + 1) / 2) * 17, p->dropped);
    fputs("</g>\n", f);
#undef SX
#undef SY
}

static double sp_plot_num(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(o, a);

    if (b != NULL)
        v = json_object_get(v, b);
    return json_is_number(v) ? json_number_value(v) : 0;
}

/* runs[i].phases.<phase>.<key> */
static double sp_plot_phase(const json_t *run, const char *phase, const char *key)
{
    return sp_plot_num(json_object_get(run, "phases"), phase, key);
}

static const char *sp_plot_str(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_string(v) ? json_string_value(v) : "";
}

sp_status_t sp_bench_plot_svg(const char *path, const json_t *runs)
{
    sp_plot_panel_t *size = calloc(1, sizeof(*size)), *ranks = calloc(1, sizeof(*ranks));
    const char *first_codec = NULL;
    double first_n = 0;
    bool mixed = false;
    char tmp[4096];
    const json_t *run;
    size_t i;
    FILE *f = NULL;
    sp_status_t st = SP_OK;

    if (size == NULL || ranks == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the plot");
        goto out;
    }
    size->title = "Throughput vs data size (per executor)";
    size->xlabel = "data per executor (log scale)";
    size->ylabel = "GB/s per executor (log scale)";
    size->xlog2 = true;
    ranks->title = "Throughput vs ranks (no spill; hollow: oversubscribed)";
    ranks->xlabel = "ranks (executors)";
    ranks->ylabel = "aggregate GB/s (log scale)";
    /* Runs on several executor counts: one size series per count, limits on the right only. */
    json_array_foreach(runs, i, run)
    {
        double n = sp_plot_num(json_object_get(run, "config"), "executors", NULL);
        if (first_n == 0)
            first_n = n;
        mixed |= n != first_n;
    }
    if (mixed)
        size->title = "Throughput vs data size (per executor, by executors)";
    json_array_foreach(runs, i, run)
    {
        const json_t *cfg = json_object_get(run, "config");
        const char *codec = sp_plot_str(run, "config", "codec");
        const char *label = sp_plot_str(run, "config", "label");
        bool spill = json_is_true(json_object_get(cfg, "spill"));
        bool over = json_is_true(json_object_get(cfg, "oversubscribed"));
        double x = sp_plot_num(cfg, "size_per_executor", NULL);
        double n = sp_plot_num(cfg, "executors", NULL);
        char name[96], pre[48];

        if (!json_is_true(json_object_get(run, "succeeded")))
            continue;
        if (first_codec == NULL)
            first_codec = codec;
        snprintf(pre, sizeof(pre), "%s%s", spill ? ", spill" : "", mixed ? ", " : "");
        if (mixed)
            snprintf(pre + strlen(pre), sizeof(pre) - strlen(pre), "%g exec", n);
        snprintf(name, sizeof(name), "spate map write, %s%s", codec, pre);
        sp_plot_add(size, name, false, 0, x, sp_plot_phase(run, "map", "gbps_per_executor"), false);
        snprintf(name, sizeof(name), "spate exchange+reduce, %s%s", codec, pre);
        sp_plot_add(size, name, false, 1, x, sp_plot_phase(run, "exchange", "gbps_per_executor"),
                    false);
        if (!mixed) {
            sp_plot_add(size, "limit: memcpy, 1 thread", true, 2, x,
                        sp_plot_num(run, "limits", "memcpy_gbps"), false);
            sp_plot_add(size, "limit: bare fi_read one way", true, 2, x,
                        sp_plot_num(run, "limits", "fi_read_gbps"), false);
            sp_plot_add(size, "limit: bare fi_read both ways", true, 2, x,
                        sp_plot_num(run, "limits", "fi_read_both_ways_gbps"), false);
            sp_plot_add(size, "limit: MPI_Alltoallv per rank", true, 2, x,
                        sp_plot_num(run, "limits", "alltoallv_gbps_per_rank"), false);
            sp_plot_add(size, "limit: local_dirs write (whole disk)", true, 2, x,
                        sp_plot_num(run, "limits", "disk_write_gbps"), false);
        }
        if (spill || strcmp(codec, first_codec) != 0)
            continue;
        snprintf(pre, sizeof(pre), "%s%scodec %s:", label, label[0] ? ", " : "", codec);
        snprintf(name, sizeof(name), "%s map write", pre);
        sp_plot_add(ranks, name, false, 0, n, sp_plot_phase(run, "map", "gbps_aggregate"), over);
        snprintf(name, sizeof(name), "%s exchange+reduce", pre);
        sp_plot_add(ranks, name, false, 1, n, sp_plot_phase(run, "exchange", "gbps_aggregate"),
                    over);
        snprintf(name, sizeof(name), "%s total", pre);
        sp_plot_add(ranks, name, false, 2, n, sp_plot_phase(run, "total", "gbps_aggregate"), over);
        sp_plot_add(ranks, "limit: MPI_Alltoallv, all ranks", true, 2, n,
                    sp_plot_num(run, "limits", "alltoallv_gbps_per_rank") * n, over);
        sp_plot_add(ranks, "limit: memcpy x ranks", true, 2, n,
                    sp_plot_num(run, "limits", "memcpy_gbps") * n, over);
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp)) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "plot path %s is too long", path);
        goto out;
    }
    if ((f = fopen(tmp, "w")) == NULL) {
        st = SP_RAISE(SP_ERR_IO, "cannot write the plot %s: %s", tmp, strerror(errno));
        goto out;
    }
    {
        unsigned rows = SP_MAX((size->n + 1) / 2, (ranks->n + 1) / 2);
        double height = 90 + 340 + 70 + rows * 17 + 20;
        fprintf(f,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1240\" height=\"%.0f\" "
                "viewBox=\"0 0 1240 %.0f\" font-family=\"sans-serif\">\n"
                "<title>spate-bench</title>\n"
                "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
                "<text x=\"620\" y=\"28\" font-size=\"17\" text-anchor=\"middle\">spate-bench: "
                "spate's shuffle against the limits measured in the same runs "
                "(median of repeats)</text>\n",
                height, height);
        sp_plot_panel_draw(f, size, 80, 80, 480, 340);
        sp_plot_panel_draw(f, ranks, 710, 80, 480, 340);
        fputs("</svg>\n", f);
    }
    if (fclose(f) != 0) {
        f = NULL;
        st = SP_RAISE(SP_ERR_IO, "cannot write the plot %s: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        st = SP_RAISE(SP_ERR_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
    }
out:
    free(size);
    free(ranks);
    return st;
}
