/*
 * Map outputs held in memory (shuffle.output=memory): the data file of a
 * committed map output is an in-memory file (memfd) whose bytes are counted
 * in the executor's storage region, instead of a file in shuffle.local_dirs
 * that the kernel writes back to disk.
 *
 * The output stays a file: its data path in the output directory is a
 * symbolic link to /proc/<pid>/fd/<fd> of the writing process, so the
 * commit protocol (temporary name, flock, rename, index last), the index
 * check, sp_map_output_open, the local fetcher's in-place mapping, the
 * transport's file registration and the local backend's reads by path all
 * work on it unchanged, and readers in other processes of this host open
 * the same memory through the link. Index and checksum files are small and
 * stay regular files.
 *
 * The memory belongs to the process: when it exits, or is killed, the
 * kernel frees it and the link dangles, which readers see as a lost output
 * (recomputed like a lost file). An output in memory is held here, by data
 * path, with one descriptor that keeps it alive and the storage memory it
 * was granted; removing the output (sp_shuffle_remove_output,
 * sp_shuffle_remove) drops it.
 *
 * Storage memory: where the executor's memory manager has a block store,
 * the output is a held block of it (sp_block_store_put_held): granted like a
 * cached block (free storage, free execution memory, evicting other blocks)
 * and evicted, least recently committed first, when execution needs the
 * memory back or storage is over its region. Eviction (sp_mem_evict, with
 * the manager's and the store's locks held) copies the bytes to a regular
 * file beside the link and renames it over the link, then closes the
 * in-memory file: readers that open the path from then on read the disk
 * file, with the same bytes; those that hold the in-memory file mapped keep
 * reading it. The count of evictions (sp_shuffle_outputs_evicted) tells the
 * executor to serve the output from its new file and to report its new
 * status. Without a block store the grant comes only from the free storage
 * region (sp_memory_manager_acquire_storage_region), where nothing needs it
 * back. When the grant is refused the writer materializes the output as a
 * regular file before it commits (sp__mem_file_materialize): the data is on
 * disk as with shuffle.output=disk, the task did not fail.
 *
 * Locks: the manager's, then the store's, then sp_mem_lock (eviction); a
 * drop takes sp_mem_lock alone, then the store's to remove the block. A held
 * output stays pending (not evictable) from its grant until its commit.
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum sp_mem_state {
    SP_MEM_PENDING = 0, /* granted, not committed yet: eviction skips it */
    SP_MEM_HELD = 1,    /* committed, in the table */
    SP_MEM_GONE = 2,    /* dropped: its grant is being given back */
} sp_mem_state_t;

struct sp__mem_output {
    struct sp__mem_output *next;
    char path[PATH_MAX]; /* the committed data path once held */
    char id[64];         /* its block in bs */
    int keep;
    uint64_t bytes;
    sp_memory_manager_t *mm; /* region grant (no block store) */
    sp_block_store_t *bs;    /* held block, or NULL */
    bool sync;
    sp_mem_state_t state;
};

static pthread_mutex_t sp_mem_lock = PTHREAD_MUTEX_INITIALIZER;
static sp__mem_output_t *sp_mem_head;
static uint64_t sp_mem_count; /* outputs held, one descriptor each */
static _Atomic uint64_t sp_mem_evicted;
/*
 * Held outputs may take at most half of the process's descriptors: the rest
 * stay for sockets, spills and the files readers open. Past that, outputs
 * go to disk.
 */
static bool sp_mem_room(void)
{
    struct rlimit rl;
    uint64_t cap = 512;
    bool ok;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        cap = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur / 2;
    pthread_mutex_lock(&sp_mem_lock);
    ok = sp_mem_count < cap;
    pthread_mutex_unlock(&sp_mem_lock);
    return ok;
}

bool sp__mem_file_is(const char *path, int keep)
{
    struct stat a, b;

    return stat(path, &a) == 0 && fstat(keep, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

sp_status_t sp__mem_file_create(const char *path, int *fd_p, int *keep_p)
{
    char target[64];
    int keep, fd;

    if (!sp_mem_room())
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "no in-memory file for %s: held outputs use half of the descriptors", path);
    keep = memfd_create("spate-map-output", MFD_CLOEXEC);
    if (keep < 0)
        return SP_RAISE(SP_ERR_UNSUPPORTED, "no in-memory file for %s: memfd_create: %s", path,
                        strerror(errno));
    snprintf(target, sizeof(target), "/proc/%ld/fd/%d", (long)getpid(), keep);
    if (symlink(target, path) != 0) {
        int err = errno;
        close(keep);
        return SP_RAISE(err == EEXIST ? SP_ERR_EXISTS : SP_ERR_IO, "link %s to %s: %s", path,
                        target, strerror(err));
    }
    /* The link must lead back to the file: /proc may be missing or foreign. */
    if (!sp__mem_file_is(path, keep) || (fd = fcntl(keep, F_DUPFD_CLOEXEC, 0)) < 0) {
        unlink(path);
        close(keep);
        return SP_RAISE(SP_ERR_UNSUPPORTED, "no in-memory file for %s: %s does not lead to it",
                        path, target);
    }
    *fd_p = fd;
    *keep_p = keep;
    return SP_OK;
}

/* Writes the bytes of keep to a regular file renamed over path; keep stays open. */
static sp_status_t sp_mem_copy_out(const char *path, int keep, bool sync)
{
    char tmp[PATH_MAX + 8];
    sp_file_writer_t fw;
    struct stat sb;
    sp_status_t st;

    if (fstat(keep, &sb) != 0)
        return SP_RAISE(SP_ERR_IO, "stat the in-memory file of %s: %s", path, strerror(errno));
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.disk", path) >= sizeof(tmp))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "path too long: %s", path);
    if ((st = sp__file_writer_open(&fw, tmp, 64 * 1024)) != SP_OK)
        return st;
    st = sp__file_copy_range(&fw, keep, path, 0, (uint64_t)sb.st_size, NULL);
    if (st == SP_OK)
        st = sp__file_writer_finish(&fw, sync);
    if (st == SP_OK && rename(tmp, path) != 0)
        st = SP_RAISE(SP_ERR_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
    if (st == SP_OK) {
        sp__tempfile_forget(tmp);
        sp__file_writer_release(&fw);
    } else {
        sp__file_writer_discard(&fw);
    }
    return st;
}

sp_status_t sp__mem_file_materialize(const char *path, int keep, bool sync)
{
    sp_status_t st = sp_mem_copy_out(path, keep, sync);

    close(keep);
    if (st != SP_OK) {
        /* The bytes are gone with keep: so is the link to them. */
        unlink(path);
        sp__tempfile_forget(path);
    }
    return st;
}

/*
 * The block store's evict function of a held output: its bytes go to disk
 * under its name, and the in-memory file is let go. Runs with the manager's
 * and the store's locks held.
 */
static bool sp_mem_evict(void *arg)
{
    sp__mem_output_t *o = arg, **pp;
    sp_status_t st;

    pthread_mutex_lock(&sp_mem_lock);
    if (o->state != SP_MEM_HELD) {
        pthread_mutex_unlock(&sp_mem_lock);
        return false;
    }
    if ((st = sp_mem_copy_out(o->path, o->keep, o->sync)) != SP_OK) {
        pthread_mutex_unlock(&sp_mem_lock);
        sp_warn("cannot move map output %s from memory to disk, it stays in memory: %s", o->path,
                sp_last_error());
        return false;
    }
    for (pp = &sp_mem_head; *pp != o; pp = &(*pp)->next)
        ;
    *pp = o->next;
    sp_mem_count--;
    pthread_mutex_unlock(&sp_mem_lock);
    sp_info("map output %s (%llu bytes) moved from memory to disk", o->path,
            (unsigned long long)o->bytes);
    close(o->keep);
    sp__free(o);
    atomic_fetch_add(&sp_mem_evicted, 1);
    return true;
}

sp_status_t sp__mem_output_grant(int keep, uint64_t bytes, sp_memory_manager_t *mm, const char *id,
                                 bool sync, sp__mem_output_t **o_p)
{
    sp__mem_output_t *o = sp__calloc(1, sizeof(*o));
    sp_status_t st = SP_OK;

    if (o == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to hold map output %s", id);
    snprintf(o->id, sizeof(o->id), "%s", id);
    o->keep = keep;
    o->bytes = bytes;
    o->sync = sync;
    o->bs = sp_memory_manager_block_store(mm);
    if (o->bs != NULL) {
        st = sp_block_store_put_held(o->bs, o->id, bytes, sp_mem_evict, o);
    } else if (sp_memory_manager_acquire_storage_region(mm, bytes)) {
        o->mm = mm;
    } else {
        st = SP_RAISE(SP_ERR_MEMORY_REFUSED, "map output %s: the storage region is full", id);
    }
    if (st != SP_OK) {
        sp__free(o);
        return st;
    }
    *o_p = o;
    return SP_OK;
}

/* Gives back an output's grant and its memory, and frees it. */
static void sp_mem_release(sp__mem_output_t *o)
{
    if (o->bs != NULL)
        sp_block_store_remove(o->bs, o->id); /* waits for an eviction in progress */
    else if (o->mm != NULL)
        sp_memory_manager_release_storage(o->mm, o->bytes);
    if (o->keep >= 0)
        close(o->keep);
    sp__free(o);
}

void sp__mem_output_abort(sp__mem_output_t *o)
{
    if (o != NULL)
        sp_mem_release(o);
}

void sp__mem_output_commit(sp__mem_output_t *o, const char *data_path)
{
    /* Another attempt's output won the commit: ours goes. */
    if (!sp__mem_file_is(data_path, o->keep) ||
        (size_t)snprintf(o->path, sizeof(o->path), "%s", data_path) >= sizeof(o->path)) {
        sp_mem_release(o);
        return;
    }
    pthread_mutex_lock(&sp_mem_lock);
    o->state = SP_MEM_HELD;
    o->next = sp_mem_head;
    sp_mem_head = o;
    sp_mem_count++;
    pthread_mutex_unlock(&sp_mem_lock);
}

void sp__mem_output_drop(const char *data_path)
{
    sp__mem_output_t **pp, *o = NULL;

    pthread_mutex_lock(&sp_mem_lock);
    for (pp = &sp_mem_head; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->path, data_path) == 0) {
            o = *pp;
            *pp = o->next;
            o->state = SP_MEM_GONE; /* an eviction waiting for the lock leaves it */
            sp_mem_count--;
            break;
        }
    }
    pthread_mutex_unlock(&sp_mem_lock);
    if (o != NULL)
        sp_mem_release(o);
}

uint64_t sp_shuffle_outputs_evicted(void) { return atomic_load(&sp_mem_evicted); }

bool sp_map_status_in_memory(const sp_map_status_t *status)
{
    struct stat sb;

    return status != NULL && status->data_path != NULL && lstat(status->data_path, &sb) == 0 &&
           S_ISLNK(sb.st_mode);
}
