/*
 * The block store of an executor: cached blocks by id, in storage memory
 * and/or in block files, with LRU eviction driven by the memory manager.
 *
 * Locking: the manager calls sp_bs_evict() with its own lock held, and the
 * evictor takes bs->lock; so no path here may hold bs->lock while calling
 * into the manager. Puts reserve the id under bs->lock (a pending entry), do
 * the memory and disk work unlocked, then publish the entry.
 *
 * Pinned blocks (handles from get, pending puts) are never evicted or
 * removed. Memory-only blocks are dropped when evicted; memory-and-disk
 * blocks are written to their file first and stay readable from disk.
 *
 * Held blocks (sp_block_store_put_held) are storage memory whose bytes live
 * with their owner, not here (a map output in an in-memory file): they are
 * granted, counted and ordered like memory blocks, and evicting one calls
 * its owner's evict function, which moves the bytes out (to disk) and says
 * whether they left; a held block has no handle (get refuses it) and is
 * gone from the store once evicted or removed.
 *
 * Block file layout (docs/FORMATS.md): a 24-byte header (magic "SPBK",
 * version, payload length, XXH3-64 of the payload) then the payload. Every
 * field is checked against the file when it is read back.
 */
#include "bytes.h"
#include "memory_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define SP_BLOCK_ID_MAX  200
#define SP_BLOCK_MAGIC   UINT32_C(0x4b425053) /* "SPBK" read as little-endian */
#define SP_BLOCK_VERSION 1
#define SP_BLOCK_HEADER  24

typedef struct sp_block_entry sp_block_entry_t;
struct sp_block_entry {
    char id[SP_BLOCK_ID_MAX + 1];
    sp_storage_level_t level;
    void *data; /* storage memory copy, or NULL */
    size_t size;
    bool on_disk;
    bool pending; /* reserved by a put in progress */
    bool held;    /* bytes kept by their owner: evict() moves them out */
    sp_block_evict_fn_t evict;
    void *evict_arg;
    unsigned pins;
    sp_block_entry_t *hnext;
    sp_block_entry_t *lru_prev, *lru_next; /* linked only while data != NULL or held */
};

struct sp_block {
    sp_block_store_t *bs;
    sp_block_entry_t *entry;
    const void *data;
    size_t size;
    void *owned; /* private copy read from disk, or NULL */
};

struct sp_block_store {
    sp_memory_manager_t *mm;
    sp_arena_t *arena;
    char *dir;
    pthread_mutex_t lock;
    sp_block_entry_t **buckets;
    size_t nbuckets, nentries;
    sp_block_entry_t *lru_head, *lru_tail; /* head: most recently used */
    sp_block_store_stats_t stats;
};

static sp_status_t sp_bs_check_id(const char *id)
{
    size_t len = id != NULL ? strnlen(id, SP_BLOCK_ID_MAX + 1) : 0;

    if (len == 0 || len > SP_BLOCK_ID_MAX)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block id must be 1 to %d bytes long",
                        SP_BLOCK_ID_MAX);
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || (c == '.' && i != 0)))
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "block id '%.*s' has a character outside [A-Za-z0-9_.-] at %zu",
                            (int)len, id, i);
    }
    return SP_OK;
}

static size_t sp_bs_bucket(const sp_block_store_t *bs, const char *id)
{
    return (size_t)(XXH3_64bits(id, strlen(id)) & (bs->nbuckets - 1));
}

static sp_block_entry_t *sp_bs_find(sp_block_store_t *bs, const char *id)
{
    for (sp_block_entry_t *e = bs->buckets[sp_bs_bucket(bs, id)]; e != NULL; e = e->hnext) {
        if (strcmp(e->id, id) == 0)
            return e;
    }
    return NULL;
}

/* Doubles the table when it is full; keeps the old one if that fails. */
static void sp_bs_grow(sp_block_store_t *bs)
{
    size_t old_n = bs->nbuckets;
    sp_block_entry_t **old = bs->buckets, **nb;

    if (bs->nentries < old_n)
        return;
    nb = sp__calloc(old_n * 2, sizeof(*nb));
    if (nb == NULL)
        return;
    bs->buckets = nb;
    bs->nbuckets = old_n * 2;
    for (size_t i = 0; i < old_n; i++) {
        while (old[i] != NULL) {
            sp_block_entry_t *e = old[i];
            size_t b = sp_bs_bucket(bs, e->id);
            old[i] = e->hnext;
            e->hnext = nb[b];
            nb[b] = e;
        }
    }
    sp__free(old);
}

static void sp_bs_unhash(sp_block_store_t *bs, sp_block_entry_t *e)
{
    sp_block_entry_t **pp = &bs->buckets[sp_bs_bucket(bs, e->id)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    bs->nentries--;
}

static void sp_bs_lru_unlink(sp_block_store_t *bs, sp_block_entry_t *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        bs->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        bs->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void sp_bs_lru_push(sp_block_store_t *bs, sp_block_entry_t *e)
{
    e->lru_prev = NULL;
    e->lru_next = bs->lru_head;
    if (bs->lru_head != NULL)
        bs->lru_head->lru_prev = e;
    bs->lru_head = e;
    if (bs->lru_tail == NULL)
        bs->lru_tail = e;
}

static void sp_bs_path(const sp_block_store_t *bs, const char *id, const char *suffix, char *buf,
                       size_t len)
{
    snprintf(buf, len, "%s/%s.blk%s", bs->dir, id, suffix);
}

/* Writes the block file of id atomically (temporary name, then rename). */
static sp_status_t sp_bs_write_file(sp_block_store_t *bs, const char *id, const void *data,
                                    size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    unsigned char header[SP_BLOCK_HEADER];
    sp_status_t st;
    int fd;

    sp_bs_path(bs, id, "", path, sizeof(path));
    sp_bs_path(bs, id, ".tmp", tmp, sizeof(tmp));
    sp__le_put_u32(header, SP_BLOCK_MAGIC);
    sp__le_put_u16(header + 4, SP_BLOCK_VERSION);
    sp__le_put_u16(header + 6, 0);
    sp__le_put_u64(header + 8, len);
    sp__le_put_u64(header + 16, XXH3_64bits(data, len));
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "create block file %s: %s (errno %d)", tmp, strerror(errno),
                        errno);
    st = sp__pwrite_all(fd, header, sizeof(header), 0, tmp);
    if (st == SP_OK)
        st = sp__pwrite_all(fd, data, len, SP_BLOCK_HEADER, tmp);
    if (close(fd) != 0 && st == SP_OK)
        st = SP_RAISE(SP_ERR_IO, "close block file %s: %s (errno %d)", tmp, strerror(errno), errno);
    if (st == SP_OK && rename(tmp, path) != 0)
        st = SP_RAISE(SP_ERR_IO, "rename %s to %s: %s (errno %d)", tmp, path, strerror(errno),
                      errno);
    if (st != SP_OK)
        unlink(tmp);
    return st;
}

/* Reads and verifies the block file of id into a new heap buffer *data_p. */
static sp_status_t sp_bs_read_file(sp_block_store_t *bs, const char *id, size_t expect,
                                   void **data_p)
{
    unsigned char header[SP_BLOCK_HEADER];
    char path[PATH_MAX];
    uint64_t magic, version, len, sum;
    struct stat sb;
    void *data = NULL;
    sp_status_t st;
    int fd;

    sp_bs_path(bs, id, "", path, sizeof(path));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "open block file %s: %s (errno %d)", path, strerror(errno),
                        errno);
    if (fstat(fd, &sb) != 0) {
        st = SP_RAISE(SP_ERR_IO, "stat block file %s: %s (errno %d)", path, strerror(errno), errno);
        goto out_close;
    }
    if ((uint64_t)sb.st_size < SP_BLOCK_HEADER) {
        st = SP_RAISE(SP_ERR_CORRUPT, "block file %s has %lld bytes, less than its %d-byte header",
                      path, (long long)sb.st_size, SP_BLOCK_HEADER);
        goto out_close;
    }
    st = sp__pread_all(fd, header, sizeof(header), 0, path);
    if (st != SP_OK)
        goto out_close;
    magic = sp__le_get_u32(header);
    version = sp__le_get_u16(header + 4);
    len = sp__le_get_u64(header + 8);
    sum = sp__le_get_u64(header + 16);
    if (magic != SP_BLOCK_MAGIC || version != SP_BLOCK_VERSION) {
        st = SP_RAISE(SP_ERR_CORRUPT, "block file %s: bad magic 0x%08llx or version %llu", path,
                      (unsigned long long)magic, (unsigned long long)version);
        goto out_close;
    }
    if (len != (uint64_t)sb.st_size - SP_BLOCK_HEADER || len != expect) {
        st = SP_RAISE(SP_ERR_CORRUPT,
                      "block file %s: header says %llu payload bytes, file holds %llu, block has "
                      "%zu",
                      path, (unsigned long long)len,
                      (unsigned long long)sb.st_size - SP_BLOCK_HEADER, expect);
        goto out_close;
    }
    data = sp__malloc(len != 0 ? len : 1);
    if (data == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory to read block file %s (%llu bytes)", path,
                      (unsigned long long)len);
        goto out_close;
    }
    st = sp__pread_all(fd, data, len, SP_BLOCK_HEADER, path);
    if (st == SP_OK && XXH3_64bits(data, len) != sum)
        st = SP_RAISE(SP_ERR_CORRUPT, "block file %s: payload fails its XXH3 checksum", path);
    if (st != SP_OK) {
        sp__free(data);
        goto out_close;
    }
    *data_p = data;
out_close:
    close(fd);
    return st;
}

static void sp_bs_unlink_file(sp_block_store_t *bs, const char *id)
{
    char path[PATH_MAX];

    sp_bs_path(bs, id, "", path, sizeof(path));
    if (unlink(path) != 0 && errno != ENOENT)
        sp_warn("cannot remove block file %s: %s (errno %d)", path, strerror(errno), errno);
}

/* The evictor: called by the manager with its lock held. */
static uint64_t sp_bs_evict(void *arg, uint64_t bytes, uint64_t *blocks_p)
{
    sp_block_store_t *bs = arg;
    sp_block_entry_t *e, *prev;
    uint64_t freed = 0, blocks = 0;

    pthread_mutex_lock(&bs->lock);
    for (e = bs->lru_tail; e != NULL && freed < bytes; e = prev) {
        prev = e->lru_prev;
        if (e->pins != 0)
            continue;
        if (e->held) {
            /* The owner moves its bytes out; it keeps them when it cannot. */
            if (!e->evict(e->evict_arg))
                continue;
            sp_bs_lru_unlink(bs, e);
            freed += e->size;
            blocks++;
            bs->stats.blocks_in_memory--;
            bs->stats.memory_bytes -= e->size;
            bs->stats.evicted_to_disk++;
            sp_bs_unhash(bs, e);
            sp__free(e);
            continue;
        }
        if (e->level == SP_STORAGE_MEMORY_AND_DISK && !e->on_disk) {
            /* Keep the block when its disk copy cannot be written. */
            if (sp_bs_write_file(bs, e->id, e->data, e->size) != SP_OK) {
                sp_warn("cannot evict block %s to disk: %s", e->id, sp_last_error());
                continue;
            }
            e->on_disk = true;
            bs->stats.blocks_on_disk++;
            bs->stats.disk_bytes += e->size;
            bs->stats.evicted_to_disk++;
        } else if (!e->on_disk) {
            bs->stats.evicted_dropped++;
        }
        sp_bs_lru_unlink(bs, e);
        sp_arena_free(bs->arena, e->data, e->size != 0 ? e->size : 1);
        e->data = NULL;
        freed += e->size;
        blocks++;
        bs->stats.blocks_in_memory--;
        bs->stats.memory_bytes -= e->size;
        if (!e->on_disk) {
            sp_bs_unhash(bs, e);
            sp__free(e);
        }
    }
    pthread_mutex_unlock(&bs->lock);
    *blocks_p = blocks;
    return freed;
}

sp_status_t sp_block_store_create(sp_memory_manager_t *mm, const char *dir, sp_block_store_t **bs_p)
{
    pthread_mutexattr_t attr;
    sp_block_store_t *bs;
    sp_status_t st;

    if (dir == NULL || *dir == '\0' || strlen(dir) > PATH_MAX - SP_BLOCK_ID_MAX - 16)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block store directory is empty or too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return SP_RAISE(SP_ERR_IO, "create block directory %s: %s (errno %d)", dir, strerror(errno),
                        errno);
    bs = sp__calloc(1, sizeof(*bs));
    if (bs == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a block store");
    bs->mm = mm;
    bs->arena = sp_memory_manager_arena(mm);
    bs->dir = sp__strdup(dir);
    bs->nbuckets = 64;
    bs->buckets = sp__calloc(bs->nbuckets, sizeof(*bs->buckets));
    if (bs->dir == NULL || bs->buckets == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a block store");
        goto err_free;
    }
    pthread_mutexattr_init(&attr);
    if (pthread_mutex_init(&bs->lock, &attr) != 0) {
        pthread_mutexattr_destroy(&attr);
        st = SP_RAISE(SP_ERR_NO_RESOURCE, "cannot create the block store's lock");
        goto err_free;
    }
    pthread_mutexattr_destroy(&attr);
    st = sp__memory_manager_set_evictor(mm, sp_bs_evict, bs);
    if (st != SP_OK)
        goto err_destroy_lock;
    *bs_p = bs;
    return SP_OK;

err_destroy_lock:
    pthread_mutex_destroy(&bs->lock);
err_free:
    sp__free(bs->buckets);
    sp__free(bs->dir);
    sp__free(bs);
    return st;
}

/* Frees an unhashed entry's memory and file and returns its storage bytes. */
static uint64_t sp_bs_entry_drop(sp_block_store_t *bs, sp_block_entry_t *e)
{
    uint64_t storage = 0;

    if (e->held) {
        sp_bs_lru_unlink(bs, e);
        storage = e->size;
        bs->stats.blocks_in_memory--;
        bs->stats.memory_bytes -= e->size;
    } else if (e->data != NULL) {
        sp_bs_lru_unlink(bs, e);
        sp_arena_free(bs->arena, e->data, e->size != 0 ? e->size : 1);
        storage = e->size;
        bs->stats.blocks_in_memory--;
        bs->stats.memory_bytes -= e->size;
    }
    if (e->on_disk) {
        sp_bs_unlink_file(bs, e->id);
        bs->stats.blocks_on_disk--;
        bs->stats.disk_bytes -= e->size;
    }
    sp__free(e);
    return storage;
}

void sp_block_store_destroy(sp_block_store_t *bs)
{
    uint64_t storage = 0;

    if (bs == NULL)
        return;
    sp__memory_manager_clear_evictor(bs->mm);
    pthread_mutex_lock(&bs->lock);
    for (size_t i = 0; i < bs->nbuckets; i++) {
        while (bs->buckets[i] != NULL) {
            sp_block_entry_t *e = bs->buckets[i];
            bs->buckets[i] = e->hnext;
            if (e->pins != 0 && !e->pending)
                sp_warn("block %s destroyed while pinned %u time(s)", e->id, e->pins);
            storage += sp_bs_entry_drop(bs, e);
        }
    }
    pthread_mutex_unlock(&bs->lock);
    sp_memory_manager_release_storage(bs->mm, storage);
    pthread_mutex_destroy(&bs->lock);
    sp__free(bs->buckets);
    sp__free(bs->dir);
    sp__free(bs);
}

/* Reserves id for a put in progress: a pending, pinned entry. */
static sp_status_t sp_bs_reserve(sp_block_store_t *bs, sp_block_entry_t *e)
{
    pthread_mutex_lock(&bs->lock);
    if (sp_bs_find(bs, e->id) != NULL) {
        pthread_mutex_unlock(&bs->lock);
        return SP_RAISE(SP_ERR_EXISTS, "block %s is already stored", e->id);
    }
    sp_bs_grow(bs);
    e->pending = true;
    e->pins = 1;
    e->hnext = bs->buckets[sp_bs_bucket(bs, e->id)];
    bs->buckets[sp_bs_bucket(bs, e->id)] = e;
    bs->nentries++;
    pthread_mutex_unlock(&bs->lock);
    return SP_OK;
}

sp_status_t sp_block_store_put(sp_block_store_t *bs, const char *id, const void *data, size_t len,
                               sp_storage_level_t level)
{
    sp_block_entry_t *e;
    void *copy = NULL;
    sp_status_t st;

    if ((st = sp_bs_check_id(id)) != SP_OK)
        return st;
    if (level != SP_STORAGE_MEMORY && level != SP_STORAGE_MEMORY_AND_DISK &&
        level != SP_STORAGE_DISK)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block %s: unknown storage level %d", id, (int)level);
    if (data == NULL && len != 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block %s: NULL data of %zu bytes", id, len);
    e = sp__calloc(1, sizeof(*e));
    if (e == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for block %s", id);
    memcpy(e->id, id, strlen(id) + 1);
    e->level = level;
    e->size = len;
    /* Reserve the id so that concurrent puts of it cannot clobber its file. */
    if ((st = sp_bs_reserve(bs, e)) != SP_OK) {
        sp__free(e);
        return st;
    }

    if (level != SP_STORAGE_DISK) {
        if (sp_memory_manager_acquire_storage(bs->mm, len)) {
            copy = sp_arena_alloc(bs->arena, len != 0 ? len : 1);
            if (copy == NULL) {
                sp_memory_manager_release_storage(bs->mm, len);
                st = SP_RAISE(SP_ERR_NOMEM, "no memory for the %zu bytes of block %s", len, id);
                goto err_unreserve;
            }
            memcpy(copy, data, len);
        } else if (level == SP_STORAGE_MEMORY) {
            st = SP_RAISE(SP_ERR_MEMORY_REFUSED,
                          "block %s: no storage memory for %zu bytes (level memory only)", id, len);
            goto err_unreserve;
        }
    }
    if (copy == NULL) {
        st = sp_bs_write_file(bs, id, data, len);
        if (st != SP_OK)
            goto err_unreserve;
    }

    pthread_mutex_lock(&bs->lock);
    e->pending = false;
    e->pins = 0;
    e->data = copy;
    bs->stats.puts++;
    if (copy != NULL) {
        sp_bs_lru_push(bs, e);
        bs->stats.blocks_in_memory++;
        bs->stats.memory_bytes += len;
    } else {
        e->on_disk = true;
        bs->stats.blocks_on_disk++;
        bs->stats.disk_bytes += len;
    }
    pthread_mutex_unlock(&bs->lock);
    return SP_OK;

err_unreserve:
    pthread_mutex_lock(&bs->lock);
    sp_bs_unhash(bs, e);
    pthread_mutex_unlock(&bs->lock);
    sp__free(e);
    return st;
}

sp_status_t sp_block_store_put_held(sp_block_store_t *bs, const char *id, size_t len,
                                    sp_block_evict_fn_t evict, void *arg)
{
    sp_block_entry_t *e;
    sp_status_t st;

    if ((st = sp_bs_check_id(id)) != SP_OK)
        return st;
    if (evict == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "held block %s without an evict function", id);
    e = sp__calloc(1, sizeof(*e));
    if (e == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for block %s", id);
    memcpy(e->id, id, strlen(id) + 1);
    e->level = SP_STORAGE_MEMORY;
    e->size = len;
    e->evict = evict;
    e->evict_arg = arg;
    if ((st = sp_bs_reserve(bs, e)) != SP_OK) {
        sp__free(e);
        return st;
    }
    if (!sp_memory_manager_acquire_storage(bs->mm, len)) {
        pthread_mutex_lock(&bs->lock);
        sp_bs_unhash(bs, e);
        pthread_mutex_unlock(&bs->lock);
        sp__free(e);
        return SP_RAISE(SP_ERR_MEMORY_REFUSED, "block %s: no storage memory for %zu bytes", id,
                        len);
    }
    pthread_mutex_lock(&bs->lock);
    e->pending = false;
    e->pins = 0;
    e->held = true;
    bs->stats.puts++;
    sp_bs_lru_push(bs, e);
    bs->stats.blocks_in_memory++;
    bs->stats.memory_bytes += len;
    pthread_mutex_unlock(&bs->lock);
    return SP_OK;
}

void sp_block_store_touch(sp_block_store_t *bs, const char *id)
{
    sp_block_entry_t *e;

    if (sp_bs_check_id(id) != SP_OK)
        return;
    pthread_mutex_lock(&bs->lock);
    e = sp_bs_find(bs, id);
    if (e != NULL && !e->pending && (e->data != NULL || e->held)) {
        sp_bs_lru_unlink(bs, e);
        sp_bs_lru_push(bs, e);
    }
    pthread_mutex_unlock(&bs->lock);
}

/* Makes the handle of a pinned entry whose bytes are data. */
static sp_status_t sp_bs_handle(sp_block_store_t *bs, sp_block_entry_t *e, const void *data,
                                void *owned, sp_block_t **block_p)
{
    sp_block_t *b = sp__calloc(1, sizeof(*b));

    if (b == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a handle of block %s", e->id);
    b->bs = bs;
    b->entry = e;
    b->data = data;
    b->size = e->size;
    b->owned = owned;
    *block_p = b;
    return SP_OK;
}

static void sp_bs_unpin(sp_block_store_t *bs, sp_block_entry_t *e)
{
    pthread_mutex_lock(&bs->lock);
    SP_ASSERT(e->pins > 0);
    e->pins--;
    pthread_mutex_unlock(&bs->lock);
}

sp_status_t sp_block_store_get(sp_block_store_t *bs, const char *id, sp_block_t **block_p)
{
    sp_block_entry_t *e;
    void *buf = NULL, *copy = NULL;
    sp_status_t st;

    if ((st = sp_bs_check_id(id)) != SP_OK)
        return st;
    pthread_mutex_lock(&bs->lock);
    e = sp_bs_find(bs, id);
    if (e == NULL || e->pending) {
        pthread_mutex_unlock(&bs->lock);
        return SP_RAISE(SP_ERR_NOT_FOUND, "block %s is not stored", id);
    }
    if (e->held) {
        pthread_mutex_unlock(&bs->lock);
        return SP_RAISE(SP_ERR_INVALID_PARAM, "block %s is held by its owner, not readable here",
                        id);
    }
    e->pins++;
    if (e->data != NULL) {
        /* Served from memory: most recently used now. */
        sp_bs_lru_unlink(bs, e);
        sp_bs_lru_push(bs, e);
        bs->stats.memory_hits++;
        pthread_mutex_unlock(&bs->lock);
        st = sp_bs_handle(bs, e, e->data, NULL, block_p);
        if (st != SP_OK)
            sp_bs_unpin(bs, e);
        return st;
    }
    bs->stats.disk_reads++;
    pthread_mutex_unlock(&bs->lock);

    /* On disk only: read it back, pinned so that nobody removes it meanwhile. */
    st = sp_bs_read_file(bs, id, e->size, &buf);
    if (st != SP_OK)
        goto err_unpin;
    if (e->level == SP_STORAGE_MEMORY_AND_DISK &&
        sp_memory_manager_acquire_storage(bs->mm, e->size)) {
        copy = sp_arena_alloc(bs->arena, e->size != 0 ? e->size : 1);
        if (copy == NULL) {
            sp_memory_manager_release_storage(bs->mm, e->size);
        } else {
            memcpy(copy, buf, e->size);
            pthread_mutex_lock(&bs->lock);
            if (e->data == NULL) {
                e->data = copy;
                sp_bs_lru_push(bs, e);
                bs->stats.blocks_in_memory++;
                bs->stats.memory_bytes += e->size;
                copy = NULL;
            }
            pthread_mutex_unlock(&bs->lock);
            if (copy != NULL) { /* another reader cached it first */
                sp_arena_free(bs->arena, copy, e->size != 0 ? e->size : 1);
                sp_memory_manager_release_storage(bs->mm, e->size);
            }
            sp__free(buf);
            st = sp_bs_handle(bs, e, e->data, NULL, block_p);
            if (st != SP_OK)
                goto err_unpin;
            return SP_OK;
        }
    }
    st = sp_bs_handle(bs, e, buf, buf, block_p);
    if (st != SP_OK)
        goto err_free_buf;
    return SP_OK;

err_free_buf:
    sp__free(buf);
err_unpin:
    sp_bs_unpin(bs, e);
    return st;
}

const void *sp_block_data(const sp_block_t *block) { return block->data; }

size_t sp_block_size(const sp_block_t *block) { return block->size; }

void sp_block_store_release(sp_block_t *block)
{
    if (block == NULL)
        return;
    sp_bs_unpin(block->bs, block->entry);
    sp__free(block->owned);
    sp__free(block);
}

sp_status_t sp_block_store_remove(sp_block_store_t *bs, const char *id)
{
    sp_block_entry_t *e;
    uint64_t storage;
    sp_status_t st;

    if ((st = sp_bs_check_id(id)) != SP_OK)
        return st;
    pthread_mutex_lock(&bs->lock);
    e = sp_bs_find(bs, id);
    if (e == NULL || e->pending) {
        pthread_mutex_unlock(&bs->lock);
        return SP_RAISE(SP_ERR_NOT_FOUND, "block %s is not stored", id);
    }
    if (e->pins != 0) {
        unsigned pins = e->pins;
        pthread_mutex_unlock(&bs->lock);
        return SP_RAISE(SP_ERR_BUSY, "block %s is pinned by %u reader(s)", id, pins);
    }
    sp_bs_unhash(bs, e);
    storage = sp_bs_entry_drop(bs, e);
    pthread_mutex_unlock(&bs->lock);
    /* Outside bs->lock: the manager's lock comes first in the lock order. */
    sp_memory_manager_release_storage(bs->mm, storage);
    return SP_OK;
}

bool sp_block_store_contains(sp_block_store_t *bs, const char *id, bool *in_memory_p)
{
    sp_block_entry_t *e;
    bool found;

    if (sp_bs_check_id(id) != SP_OK)
        return false;
    pthread_mutex_lock(&bs->lock);
    e = sp_bs_find(bs, id);
    found = e != NULL && !e->pending;
    if (found && in_memory_p != NULL)
        *in_memory_p = e->data != NULL || e->held;
    pthread_mutex_unlock(&bs->lock);
    return found;
}

void sp_block_store_stats(sp_block_store_t *bs, sp_block_store_stats_t *stats_p)
{
    pthread_mutex_lock(&bs->lock);
    *stats_p = bs->stats;
    pthread_mutex_unlock(&bs->lock);
}
