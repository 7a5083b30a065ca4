/*
 * The local block fetcher: blocks of map outputs committed on this host,
 * handed out in place. Each map output is opened (and validated) once and
 * its data file mapped read-only, so a block is a pointer into the page
 * cache: no copy, no heap memory. Completions run inside fetch().
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct sp_local_output {
    char *index_path;
    sp_map_output_t *mo;
    void *map;
    size_t map_len;
} sp_local_output_t;

typedef struct sp_local_fetcher {
    sp_block_fetcher_t base;
    sp_local_output_t *outputs;
    size_t n, cap;
} sp_local_fetcher_t;

/* The open output of index_path, opening and mapping it the first time. */
static sp_status_t sp_local_output(sp_local_fetcher_t *lf, const char *index_path,
                                   sp_local_output_t **out_p)
{
    sp_local_output_t *o;
    sp_segment_info_t last;
    sp_status_t st;
    struct stat sb;
    int fd;

    for (size_t i = 0; i < lf->n; i++) {
        if (strcmp(lf->outputs[i].index_path, index_path) == 0) {
            *out_p = &lf->outputs[i];
            return SP_OK;
        }
    }
    if (lf->n == lf->cap) {
        size_t cap = lf->cap != 0 ? 2 * lf->cap : 16;
        sp_local_output_t *outs = sp__realloc(lf->outputs, cap * sizeof(*outs));
        if (outs == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory to open map output %s", index_path);
        lf->outputs = outs;
        lf->cap = cap;
    }
    o = &lf->outputs[lf->n];
    memset(o, 0, sizeof(*o));
    o->index_path = sp__strdup(index_path);
    if (o->index_path == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to open map output %s", index_path);
    st = sp_map_output_open(index_path, &o->mo);
    if (st != SP_OK)
        goto err_free_path;
    sp_map_output_segment(o->mo, sp_map_output_partitions(o->mo) - 1, &last);
    o->map_len = (size_t)(last.offset + last.length);
    {
        char data[PATH_MAX];
        size_t len = strlen(index_path);
        snprintf(data, sizeof(data), "%.*s.data", (int)(len - 6), index_path);
        fd = open(data, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &sb) != 0 || (uint64_t)sb.st_size != o->map_len) {
            st = SP_RAISE(fd < 0 ? SP_ERR_IO : SP_ERR_CORRUPT,
                          "map data file %s: missing or changed since its index was read", data);
            if (fd >= 0)
                close(fd);
            goto err_close;
        }
        o->map = mmap(NULL, o->map_len, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (o->map == MAP_FAILED) {
            o->map = NULL;
            st = SP_RAISE(SP_ERR_IO, "map %s: %s (errno %d)", data, strerror(errno), errno);
            goto err_close;
        }
    }
    lf->n++;
    *out_p = o;
    return SP_OK;

err_close:
    sp_map_output_close(o->mo);
err_free_path:
    sp__free(o->index_path);
    return st;
}

static sp_status_t sp_local_fetch(sp_block_fetcher_t *f, const sp_block_ref_t *blocks, size_t n,
                                  sp_fetch_done_fn_t done, void *arg)
{
    sp_local_fetcher_t *lf = sp_container_of(f, sp_local_fetcher_t, base);

    for (size_t i = 0; i < n; i++) {
        const sp_block_ref_t *b = &blocks[i];
        sp_local_output_t *o = NULL;
        sp_segment_info_t seg;
        sp_status_t st;

        if (b->address != NULL) {
            st = SP_RAISE(SP_ERR_UNSUPPORTED, "block of map %llu is remote (%s): not local",
                          (unsigned long long)b->map_id, b->address);
        } else if (sp__fault_fire(SP_FAULT_READ)) {
            st = SP_RAISE(SP_ERR_IO, "read %s: injected read fault", b->index_path);
        } else {
            st = sp_local_output(lf, b->index_path, &o);
            if (st == SP_OK)
                st = sp_map_output_segment(o->mo, b->reduce_id, &seg);
        }
        if (st != SP_OK)
            done(arg, i, st, NULL, 0, 0);
        else
            done(arg, i, SP_OK, (const unsigned char *)o->map + seg.offset, (size_t)seg.length,
                 seg.checksum);
    }
    return SP_OK;
}

static sp_status_t sp_local_progress(sp_block_fetcher_t *f, int timeout_ms)
{
    SP_UNUSED(f);
    SP_UNUSED(timeout_ms);
    return SP_OK; /* everything completed inside fetch() */
}

static void sp_local_release(sp_block_fetcher_t *f, const void *data, size_t len)
{
    SP_UNUSED(f);
    SP_UNUSED(data);
    SP_UNUSED(len); /* in place: the mapping lives until destroy */
}

static void sp_local_destroy(sp_block_fetcher_t *f)
{
    sp_local_fetcher_t *lf = sp_container_of(f, sp_local_fetcher_t, base);

    for (size_t i = 0; i < lf->n; i++) {
        if (lf->outputs[i].map != NULL)
            munmap(lf->outputs[i].map, lf->outputs[i].map_len);
        sp_map_output_close(lf->outputs[i].mo);
        sp__free(lf->outputs[i].index_path);
    }
    sp__free(lf->outputs);
    sp__free(lf);
}

static const sp_block_fetcher_ops_t sp_local_fetcher_ops = {
    .size = sizeof(sp_block_fetcher_ops_t),
    .fetch = sp_local_fetch,
    .progress = sp_local_progress,
    .release = sp_local_release,
    .destroy = sp_local_destroy,
};

sp_status_t sp_block_fetcher_local_create(sp_block_fetcher_t **fetcher_p)
{
    sp_local_fetcher_t *lf = sp__calloc(1, sizeof(*lf));

    if (lf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a local block fetcher");
    lf->base.ops = &sp_local_fetcher_ops;
    *fetcher_p = &lf->base;
    return SP_OK;
}

void sp_block_fetcher_destroy(sp_block_fetcher_t *fetcher)
{
    if (fetcher != NULL)
        fetcher->ops->destroy(fetcher);
}
