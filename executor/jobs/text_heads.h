/*
 * The first row of each file of a text input, for graph jobs that need it
 * before their tasks see the rows: groupby's header rows, join's count of the
 * right input's columns. Internal to the built-in jobs.
 */
#ifndef SPATE_EXECUTOR_JOBS_TEXT_HEADS_H
#define SPATE_EXECUTOR_JOBS_TEXT_HEADS_H

#include <spate/common.h>

#include <stddef.h>

/* At most this many bytes of a first row are read; a longer row is bad input. */
#define SP__TEXT_HEAD_MAX (64u << 10)

/* First rows of an input, one per file that has one, in file name order. */
typedef struct sp__text_heads {
    char **rows; /* NUL-terminated, without the '\n' and a trailing '\r' */
    size_t *lens;
    size_t count;
} sp__text_heads_t;

/*
 * The first non-empty row of every file of path (a file, or a directory's
 * regular files in name order, skipping names that start with '.' or '_':
 * the files sp_graph_text() reads), stopping after max files that have one.
 * what names the input in messages ("groupby input", "join right input").
 * Free with sp__text_heads_clear().
 */
sp_status_t sp__text_heads_read(const char *path, size_t max, const char *what,
                                sp__text_heads_t *heads_p);
void sp__text_heads_clear(sp__text_heads_t *heads);

#endif /* SPATE_EXECUTOR_JOBS_TEXT_HEADS_H */
