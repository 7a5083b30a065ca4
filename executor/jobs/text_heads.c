/*
 * The first non-empty row of each file of a text input (text_heads.h). The
 * graph jobs call this from build() and from a task's begin(): it reads a
 * few KiB of each file, in the file order of sp_graph_text(), so the driver
 * and every executor see the same rows of the same shared input. Rows
 * longer than SP__TEXT_HEAD_MAX are bad input rather than read without
 * bound; a file with no non-empty row contributes nothing.
 */
#include "text_heads.h"

#include "common_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int sp_heads_visible(const struct dirent *de)
{
    return de->d_name[0] != '.' && de->d_name[0] != '_';
}

static int sp_heads_name_cmp(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

void sp__text_heads_clear(sp__text_heads_t *heads)
{
    if (heads == NULL)
        return;
    for (size_t i = 0; i < heads->count; i++)
        sp__free(heads->rows[i]);
    sp__free(heads->rows);
    sp__free(heads->lens);
    memset(heads, 0, sizeof(*heads));
}

/* Appends the first non-empty row of file path to heads (nothing when it has none). */
static sp_status_t sp_heads_file(const char *path, const char *what, sp__text_heads_t *heads)
{
    char *row = NULL, **rows;
    size_t len = 0, cap = 0, *lens;
    sp_status_t st = SP_OK;
    bool found = false;
    FILE *f;
    int c;

    if ((f = fopen(path, "rb")) == NULL)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "%s %s: %s (errno %d)",
                        what, path, strerror(errno), errno);
    while (!found && (c = getc(f)) != EOF) {
        if (c != '\n') {
            if (len + 1 >= cap) {
                size_t ncap = cap ? 2 * cap : 256;
                char *grown;
                if (ncap > SP__TEXT_HEAD_MAX + 2) {
                    st = SP_RAISE(SP_ERR_BAD_INPUT,
                                  "%s %s: its first row is longer than %u bytes, the most read "
                                  "of a first row",
                                  what, path, SP__TEXT_HEAD_MAX);
                    break;
                }
                if ((grown = sp__realloc(row, ncap)) == NULL) {
                    st = SP_RAISE(SP_ERR_NOMEM, "%s %s: no memory for its first row", what, path);
                    break;
                }
                row = grown;
                cap = ncap;
            }
            row[len++] = (char)c;
            continue;
        }
        if (len > 0 && row[len - 1] == '\r')
            len--;
        found = len > 0;
        if (!found)
            len = 0;
    }
    if (st == SP_OK && ferror(f))
        st = SP_RAISE(SP_ERR_IO, "%s %s: read failed (errno %d)", what, path, errno);
    fclose(f);
    if (st == SP_OK && !found && len > 0) { /* a last row without '\n' */
        if (row[len - 1] == '\r')
            len--;
        found = len > 0;
    }
    if (st != SP_OK || !found) {
        sp__free(row);
        return st;
    }
    row[len] = '\0';
    rows = sp__realloc(heads->rows, (heads->count + 1) * sizeof(*rows));
    if (rows != NULL)
        heads->rows = rows;
    lens = rows != NULL ? sp__realloc(heads->lens, (heads->count + 1) * sizeof(*lens)) : NULL;
    if (lens == NULL) {
        sp__free(row);
        return SP_RAISE(SP_ERR_NOMEM, "%s: no memory for its first rows", what);
    }
    heads->lens = lens;
    heads->rows[heads->count] = row;
    heads->lens[heads->count++] = len;
    return SP_OK;
}

sp_status_t sp__text_heads_read(const char *path, size_t max, const char *what,
                                sp__text_heads_t *heads_p)
{
    sp__text_heads_t heads = {0};
    struct dirent **names = NULL;
    sp_status_t st = SP_OK;
    struct stat sb;
    int n;

    if (path == NULL || path[0] == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "%s: no path given", what);
    if (stat(path, &sb) != 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "%s %s: %s (errno %d)",
                        what, path, strerror(errno), errno);
    if (!S_ISDIR(sb.st_mode)) {
        if (max > 0 && (st = sp_heads_file(path, what, &heads)) != SP_OK)
            goto err_heads;
        *heads_p = heads;
        return SP_OK;
    }
    if ((n = scandir(path, &names, sp_heads_visible, sp_heads_name_cmp)) < 0)
        return SP_RAISE(SP_ERR_IO, "%s %s: cannot list the directory: %s (errno %d)", what, path,
                        strerror(errno), errno);
    for (int i = 0; i < n; i++) {
        char *full = NULL;
        struct stat fs;

        if (st == SP_OK && heads.count < max) {
            if (asprintf(&full, "%s/%s", path, names[i]->d_name) < 0) {
                full = NULL;
                st = SP_RAISE(SP_ERR_NOMEM, "%s: no memory for a path", what);
            } else if (stat(full, &fs) == 0 && S_ISREG(fs.st_mode)) {
                st = sp_heads_file(full, what, &heads);
            }
        }
        free(full);
        free(names[i]);
    }
    free(names);
    if (st != SP_OK)
        goto err_heads;
    *heads_p = heads;
    return SP_OK;

err_heads:
    sp__text_heads_clear(&heads);
    return st;
}
