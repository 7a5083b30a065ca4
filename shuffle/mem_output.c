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
 * Storage memory is granted only from the free storage region
 * (sp_memory_manager_acquire_storage_region): these bytes cannot be evicted
 * yet, so they never take memory execution may need back. When the region
 * is full the writer materializes the output as a regular file before it
 * commits (sp__mem_file_materialize): the data is on disk as with
 * shuffle.output=disk, the task did not fail.
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct sp_mem_output {
    struct sp_mem_output *next;
    char *path;
    int keep;
    uint64_t bytes;
    sp_memory_manager_t *mm;
} sp_mem_output_t;

static pthread_mutex_t sp_mem_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_mem_output_t *sp_mem_head;
static uint64_t sp_mem_count; /* outputs held, one descriptor each */

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

sp_status_t sp__mem_file_materialize(const char *path, int keep, bool sync)
{
    char tmp[PATH_MAX + 8];
    sp_file_writer_t fw;
    struct stat sb;
    sp_status_t st;

    if (fstat(keep, &sb) != 0)
        st = SP_RAISE(SP_ERR_IO, "stat the in-memory file of %s: %s", path, strerror(errno));
    else if ((size_t)snprintf(tmp, sizeof(tmp), "%s.disk", path) >= sizeof(tmp))
        st = SP_RAISE(SP_ERR_INVALID_PARAM, "path too long: %s", path);
    else
        st = sp__file_writer_open(&fw, tmp, 64 * 1024);
    if (st == SP_OK) {
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
    }
    close(keep);
    if (st != SP_OK) {
        /* The bytes are gone with keep: so is the link to them. */
        unlink(path);
        sp__tempfile_forget(path);
    }
    return st;
}

sp_status_t sp__mem_output_hold(const char *data_path, int keep, uint64_t bytes,
                                sp_memory_manager_t *mm)
{
    sp_mem_output_t *o = sp__calloc(1, sizeof(*o));

    if (o == NULL || (o->path = sp__strdup(data_path)) == NULL) {
        sp__free(o);
        return SP_RAISE(SP_ERR_NOMEM, "no memory to hold %s", data_path);
    }
    o->keep = keep;
    o->bytes = bytes;
    o->mm = mm;
    pthread_mutex_lock(&sp_mem_lock);
    o->next = sp_mem_head;
    sp_mem_head = o;
    sp_mem_count++;
    pthread_mutex_unlock(&sp_mem_lock);
    return SP_OK;
}

void sp__mem_output_drop(const char *data_path)
{
    sp_mem_output_t **pp, *o = NULL;

    pthread_mutex_lock(&sp_mem_lock);
    for (pp = &sp_mem_head; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->path, data_path) == 0) {
            o = *pp;
            *pp = o->next;
            sp_mem_count--;
            break;
        }
    }
    pthread_mutex_unlock(&sp_mem_lock);
    if (o == NULL)
        return;
    close(o->keep);
    if (o->mm != NULL)
        sp_memory_manager_release_storage(o->mm, o->bytes);
    sp__free(o->path);
    sp__free(o);
}
