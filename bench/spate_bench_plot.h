/* spate-bench's SVG plot of its runs (spate_bench_plot.c). */
#ifndef SPATE_BENCH_PLOT_H
#define SPATE_BENCH_PLOT_H

#include <spate/common.h>

#include <jansson.h>

/*
 * Draws runs (a JSON array of spate-bench run objects, as --json writes
 * them, from one or many invocations) to path as SVG: on the left, GB/s per
 * executor against data size per executor for each phase, codec and spill
 * setting, with the limits measured in the same runs; on the right,
 * aggregate GB/s against ranks (executors), oversubscribed runs marked. A
 * point is the median of the runs that share its series and abscissa.
 * Writes atomically (temporary name, then rename).
 */
sp_status_t sp_bench_plot_svg(const char *path, const json_t *runs);

#endif /* SPATE_BENCH_PLOT_H */
