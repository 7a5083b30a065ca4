/*
 * Files of the map side: the executor's local directories, the registry of
 * temporary files (removed at process exit as well as on commit and abort),
 * the buffered writer every spill and output byte goes through, positioned
 * reads and writes with fault injection, and CRC-32C combination so that a
 * merge can copy segments without reading them.
 *
 * The writer buffers small writes and passes writes of at least its buffer
 * size straight to write(2); it is tuned for streams of compressed
 * segments of kilobytes to megabytes.
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- local directories ---- */

sp_status_t sp__shuffle_dirs_create(const sp_conf_t *conf, sp_shuffle_dirs_t **dirs_p)
{
    const char *spec = NULL, *p;
    sp_shuffle_dirs_t *dirs;
    sp_status_t st;
    unsigned n = 1;

    st = sp_conf_get_string(conf, "shuffle.local_dirs", &spec);
    if (st != SP_OK)
        return st;
    for (p = spec; *p != '\0'; p++)
        n += *p == ',';
    dirs = sp__calloc(1, sizeof(*dirs));
    if (dirs == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for shuffle directories");
    dirs->dirs = sp__calloc(n, sizeof(*dirs->dirs));
    if (dirs->dirs == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for shuffle directories");
        goto err;
    }
    for (p = spec;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        char *dir;

        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '/'))
            len--;
        if (len == 0 || len > PATH_MAX - 128) {
            st = SP_RAISE(SP_ERR_BAD_CONF,
                          "shuffle.local_dirs='%s': empty or overlong directory in the list", spec);
            goto err;
        }
        dir = sp__malloc(len + 1);
        if (dir == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for shuffle directories");
            goto err;
        }
        memcpy(dir, p, len);
        dir[len] = '\0';
        dirs->dirs[dirs->count++] = dir;
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            st = SP_RAISE(SP_ERR_IO, "shuffle.local_dirs: cannot create %s: %s (errno %d)", dir,
                          strerror(errno), errno);
            goto err;
        }
        if (access(dir, W_OK | X_OK) != 0) {
            st = SP_RAISE(SP_ERR_IO, "shuffle.local_dirs: %s is not writable: %s (errno %d)", dir,
                          strerror(errno), errno);
            goto err;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    *dirs_p = dirs;
    return SP_OK;

err:
    sp__shuffle_dirs_destroy(dirs);
    return st;
}

void sp__shuffle_dirs_destroy(sp_shuffle_dirs_t *dirs)
{
    if (dirs == NULL)
        return;
    for (unsigned i = 0; dirs->dirs != NULL && i < dirs->count; i++)
        sp__free(dirs->dirs[i]);
    sp__free(dirs->dirs);
    sp__free(dirs);
}

const char *sp__shuffle_dirs_next(sp_shuffle_dirs_t *dirs)
{
    return dirs->dirs[dirs->next++ % dirs->count];
}

const char *sp__shuffle_dirs_output(const sp_shuffle_dirs_t *dirs, uint64_t shuffle_id,
                                    uint64_t map_id)
{
    uint64_t key[2] = {shuffle_id, map_id};

    return dirs->dirs[XXH3_64bits(key, sizeof(key)) % dirs->count];
}

/* ---- temporary file registry ---- */

typedef struct sp_tempfile {
    struct sp_tempfile *next;
    char path[];
} sp_tempfile_t;

static pthread_mutex_t sp_temp_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_tempfile_t *sp_temp_head;
static bool sp_temp_atexit;

static void sp_tempfile_cleanup(void)
{
    pthread_mutex_lock(&sp_temp_lock);
    for (sp_tempfile_t *t = sp_temp_head; t != NULL; t = t->next)
        unlink(t->path);
    pthread_mutex_unlock(&sp_temp_lock);
}

void sp__tempfile_register(const char *path)
{
    size_t len = strlen(path) + 1;
    /* Not counted by fault injection: losing track of a temporary only
     * means it may survive a crash, and malloc's failure is handled. */
    sp_tempfile_t *t = malloc(sizeof(*t) + len);

    if (t == NULL)
        return;
    memcpy(t->path, path, len);
    pthread_mutex_lock(&sp_temp_lock);
    if (!sp_temp_atexit)
        sp_temp_atexit = atexit(sp_tempfile_cleanup) == 0;
    t->next = sp_temp_head;
    sp_temp_head = t;
    pthread_mutex_unlock(&sp_temp_lock);
}

void sp__tempfile_forget(const char *path)
{
    sp_tempfile_t **pp, *t = NULL;

    pthread_mutex_lock(&sp_temp_lock);
    for (pp = &sp_temp_head; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->path, path) == 0) {
            t = *pp;
            *pp = t->next;
            break;
        }
    }
    pthread_mutex_unlock(&sp_temp_lock);
    free(t);
}

/* ---- positioned I/O ---- */

/* ---- buffered writer ---- */

sp_status_t sp__file_writer_open(sp_file_writer_t *fw, const char *path, size_t buffer)
{
    return sp__file_writer_open_fd(fw, path, -1, buffer);
}

sp_status_t sp__file_writer_open_fd(sp_file_writer_t *fw, const char *path, int fd, size_t buffer)
{
    memset(fw, 0, sizeof(*fw));
    fw->fd = -1;
    fw->path = sp__strdup(path);
    fw->buf = sp__malloc(buffer);
    if (fw->path == NULL || fw->buf == NULL) {
        if (fd >= 0) { /* the caller's file is ours: it goes with the failure */
            close(fd);
            unlink(path);
        }
        sp__free(fw->path);
        sp__free(fw->buf);
        fw->path = NULL;
        fw->buf = NULL;
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the write buffer of %s", path);
    }
    fw->cap = buffer;
    sp__tempfile_register(path);
    fw->fd = fd >= 0 ? fd : open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fw->fd < 0) {
        int err = errno;
        sp__tempfile_forget(path);
        sp__free(fw->path);
        sp__free(fw->buf);
        fw->path = NULL;
        fw->buf = NULL;
        return sp__write_error("create", path, err);
    }
    return SP_OK;
}

sp_status_t sp__file_writer_flush(sp_file_writer_t *fw)
{
    uint64_t at = fw->offset - fw->len;
    sp_status_t st;

    if (fw->len == 0)
        return SP_OK;
    st = sp__pwrite_all(fw->fd, fw->buf, fw->len, at, fw->path);
    fw->len = 0;
    return st;
}

sp_status_t sp__file_writer_write(sp_file_writer_t *fw, const void *data, size_t len)
{
    sp_status_t st;

    if (fw->len + len <= fw->cap) {
        memcpy(fw->buf + fw->len, data, len);
        fw->len += len;
        fw->offset += len;
        return SP_OK;
    }
    st = sp__file_writer_flush(fw);
    if (st != SP_OK)
        return st;
    if (len >= fw->cap) {
        st = sp__pwrite_all(fw->fd, data, len, fw->offset, fw->path);
        fw->offset += len;
        return st;
    }
    memcpy(fw->buf, data, len);
    fw->len = len;
    fw->offset += len;
    return SP_OK;
}

sp_status_t sp__file_writer_sink(void *arg, const void *buf, size_t len)
{
    sp_file_writer_t *fw = arg;

    if (fw->checksumming)
        sp__checksum_update(&fw->cs, buf, len);
    return sp__file_writer_write(fw, buf, len);
}

sp_status_t sp__file_writer_finish(sp_file_writer_t *fw, bool sync)
{
    sp_status_t st = sp__file_writer_flush(fw);

    if (st == SP_OK && sync && sp__fsync(fw->fd) != 0)
        st = SP_RAISE(SP_ERR_IO, "fsync %s: %s (errno %d)", fw->path, strerror(errno), errno);
    if (close(fw->fd) != 0 && st == SP_OK)
        st = sp__write_error("close", fw->path, errno);
    fw->fd = -1;
    return st;
}

void sp__file_writer_discard(sp_file_writer_t *fw)
{
    if (fw->path == NULL)
        return;
    if (fw->fd >= 0)
        close(fw->fd);
    fw->fd = -1;
    unlink(fw->path);
    sp__tempfile_forget(fw->path);
    sp__file_writer_release(fw);
}

void sp__file_writer_release(sp_file_writer_t *fw)
{
    sp__free(fw->buf);
    sp__free(fw->path);
    fw->buf = NULL;
    fw->path = NULL;
}

sp_status_t sp__data_header_write(sp_file_writer_t *fw, sp_codec_t codec, sp_checksum_kind_t kind)
{
    unsigned char h[SP_DATA_HEADER];

    sp__le_put_u32(h, SP_DATA_MAGIC);
    h[4] = SP_DATA_VERSION;
    h[5] = 0;
    h[6] = (unsigned char)codec;
    h[7] = (unsigned char)kind;
    return sp__file_writer_write(fw, h, sizeof(h));
}

/*
 * ---- CRC-32C combination ----
 * zlib 1.2.12's method: crc(A || B) = crc(A) * x^(8 len(B)) mod P xor
 * crc(B), in the reflected bit order, with x^(2^k) mod P from a table made
 * once. A combine costs one multiplication per set bit of len(B), about a
 * microsecond; the older matrix-squaring method took some 30 and was a
 * sixth of a spilling map task's time (a combine per segment per spill).
 */
#define SP_CRC32C_POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t sp_crc32c_x2n[3 + 64]; /* x^(2^k) mod P, k up to 8 x UINT64_MAX */
static pthread_once_t sp_crc32c_once = PTHREAD_ONCE_INIT;

/* a * b mod P; bit 31 is x^0. */
static uint32_t sp_crc32c_multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = UINT32_C(1) << 31, p = 0;

    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ SP_CRC32C_POLY : b >> 1;
    }
    return p;
}

static void sp_crc32c_make_table(void)
{
    uint32_t p = UINT32_C(1) << 30; /* x^1 */

    sp_crc32c_x2n[0] = p;
    for (size_t k = 1; k < SP_ARRAY_SIZE(sp_crc32c_x2n); k++)
        sp_crc32c_x2n[k] = p = sp_crc32c_multmodp(p, p);
}

uint32_t sp__crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    uint32_t xn = UINT32_C(1) << 31; /* x^0 */

    pthread_once(&sp_crc32c_once, sp_crc32c_make_table);
    /* x^(8 len_b): bit k of len_b contributes x^(2^(k+3)). */
    for (unsigned k = 3; len_b != 0; len_b >>= 1, k++) {
        if (len_b & 1)
            xn = sp_crc32c_multmodp(sp_crc32c_x2n[k], xn);
    }
    return sp_crc32c_multmodp(xn, crc_a) ^ crc_b;
}
