/*
 * The output committer: how a job's reduce output becomes OUTPUT/part-r-NNNNN
 * and OUTPUT/_SUCCESS. Hadoop's FileOutputCommitter (algorithm 2) with a run
 * id is the model. While run R works in OUTPUT:
 *
 *   OUTPUT/_temporary/_lock                       which run holds OUTPUT
 *   OUTPUT/_temporary/R/.part-r-NNNNN.attempt-A   a reduce attempt, writing
 *   OUTPUT/_temporary/R/part-r-NNNNN              a reduce task's committed output
 *   OUTPUT/part-r-NNNNN, then OUTPUT/_SUCCESS     published by the driver at the end
 *
 * Invariants:
 * - One run at a time holds OUTPUT. The lock (docs/FORMATS.md) names the
 *   run, its pid, host and the pid's start time; it appears whole (written to
 *   a private name, then link()ed to _lock, which fails when a lock is
 *   there). A lock whose holder is alive refuses the directory with
 *   SP_ERR_EXISTS naming the holder; on this host "alive" means the pid
 *   exists and started when the lock says (a reused pid is not the holder);
 *   a holder on another host cannot be checked and counts as alive. A lock
 *   of a dead run is taken over with a warning (renamed away first, so two
 *   runs never both take it), and only that run's _temporary/<its id> goes.
 * - Under the lock, a directory that holds a finished job's output
 *   (_SUCCESS or part-r-*) is refused: a run never mixes its parts with
 *   another's.
 * - A run writes only under _temporary/<its id>, publishes each part with
 *   one rename that never replaces a file, syncs the directory, and creates
 *   _SUCCESS last, so _SUCCESS means every part is there.
 * - Abort removes only what this run wrote: its _temporary/<id>, the parts
 *   it published (it keeps their list), _SUCCESS if it made it. Release,
 *   after the run's executors are gone, sweeps _temporary/<id> again (a
 *   straggling attempt may have written after the abort), removes the lock
 *   when it is still this run's, and _temporary when nothing else is left.
 *
 * All of it is a handful of metadata operations per run and per partition.
 * The one data path here is a task attempt's part file (sp__part_file_t):
 * its bytes go through a 1 MiB buffer into the attempt file, which commit
 * fsyncs and renames into _temporary/<run id>; reduce tasks and graph
 * actions that save both write through it.
 */
#include "executor_int.h"

#include "common_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SP_OUTPUT_LOCK_MAGIC   "spate-output-lock"
#define SP_OUTPUT_LOCK_VERSION 1
#define SP_OUTPUT_LOCK_MAX     4096
/* Rounds of take-the-lock before giving up on a directory that keeps changing under us. */
#define SP_OUTPUT_LOCK_TRIES 16

struct sp__output {
    char *dir;
    char *tmp;     /* dir/_temporary */
    char *run_dir; /* dir/_temporary/<run id> */
    char *lock;    /* dir/_temporary/_lock */
    char *run_id;
    bool locked;     /* the lock is ours */
    bool *published; /* per partition: this run moved part-r-NNNNN into dir */
    uint32_t npublished;
    bool success;  /* this run created _SUCCESS */
    bool created;  /* this run created dir */
    bool finished; /* succeed() or abort() ran */
};

/* What a lock file says. */
typedef struct sp_output_lock {
    char run[128];
    char host[256];
    long pid;
    unsigned long long start; /* the pid's start time in clock ticks after boot; 0: unknown */
} sp_output_lock_t;

/* ------------------------------------------------------------------------ */
/* Paths                                                                     */
/* ------------------------------------------------------------------------ */

/* Run ids name a directory: letters, digits, '-', '_', '.', not starting with '.' or '_'. */
static bool sp_output_run_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n >= sizeof(((sp_output_lock_t *)0)->run) || id[0] == '.' || id[0] == '_')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

sp_status_t sp__output_attempt_path(const char *dir, const char *run_id, uint32_t partition,
                                    uint32_t attempt, char **path_p)
{
    char *p = NULL;

    if (run_id == NULL || !sp_output_run_id_ok(run_id))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "output %s: run id '%s' cannot name a directory", dir,
                        run_id != NULL ? run_id : "(none)");
    if (asprintf(&p, "%s/_temporary/%s/.part-r-%05u.attempt-%u", dir, run_id, partition, attempt) <
        0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an output path under %s", dir);
    *path_p = p;
    return SP_OK;
}

sp_status_t sp__output_task_path(const char *dir, const char *run_id, uint32_t partition,
                                 char **path_p)
{
    char *p = NULL;

    if (run_id == NULL || !sp_output_run_id_ok(run_id))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "output %s: run id '%s' cannot name a directory", dir,
                        run_id != NULL ? run_id : "(none)");
    if (asprintf(&p, "%s/_temporary/%s/part-r-%05u", dir, run_id, partition) < 0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an output path under %s", dir);
    *path_p = p;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* A task attempt's part file                                                */
/* ------------------------------------------------------------------------ */

#define SP_PART_BUFFER (1u << 20)

sp_status_t sp__part_file_open(sp__part_file_t *f, const char *dir, const char *run_id,
                               uint32_t partition, uint32_t attempt)
{
    sp_status_t st;

    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->dir = dir;
    f->run_id = run_id;
    f->partition = partition;
    if (dir == NULL)
        return SP_OK;
    if ((st = sp__output_attempt_path(dir, run_id, partition, attempt, &f->path)) != SP_OK)
        return st;
    f->fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0)
        return sp__write_error("create", f->path, errno);
    f->buf = sp__malloc(SP_PART_BUFFER);
    if (f->buf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the output buffer of %s", f->path);
    return SP_OK;
}

static sp_status_t sp_part_file_flush(sp__part_file_t *f)
{
    sp_status_t st;

    if (f->len == 0)
        return SP_OK;
    if ((st = sp__pwrite_all(f->fd, f->buf, f->len, f->offset, f->path)) != SP_OK)
        return st;
    f->offset += f->len;
    f->len = 0;
    return SP_OK;
}

sp_status_t sp__part_file_write(sp__part_file_t *f, const void *buf, size_t len)
{
    sp_status_t st;

    f->bytes += len;
    if (f->fd < 0)
        return SP_OK; /* no --output: counted only */
    if (f->len + len > SP_PART_BUFFER) {
        if ((st = sp_part_file_flush(f)) != SP_OK)
            return st;
        if (len > SP_PART_BUFFER) {
            st = sp__pwrite_all(f->fd, buf, len, f->offset, f->path);
            if (st == SP_OK)
                f->offset += len;
            return st;
        }
    }
    memcpy(f->buf + f->len, buf, len);
    f->len += len;
    return SP_OK;
}

sp_status_t sp__part_file_commit(sp__part_file_t *f)
{
    char *final = NULL;
    sp_status_t st;

    if (f->fd < 0)
        return SP_OK;
    if ((st = sp_part_file_flush(f)) != SP_OK)
        return st;
    if (sp__fsync(f->fd) != 0)
        return sp__write_error("fsync", f->path, errno);
    if (close(f->fd) != 0) {
        f->fd = -1;
        return sp__write_error("close", f->path, errno);
    }
    f->fd = -1;
    if ((st = sp__output_task_path(f->dir, f->run_id, f->partition, &final)) != SP_OK)
        return st;
    /* A second successful attempt replaces the first with identical content. */
    if (rename(f->path, final) != 0)
        st = sp__write_error("rename", f->path, errno);
    free(final);
    if (st == SP_OK) {
        sp__free(f->path);
        f->path = NULL; /* committed: abort leaves it */
    }
    return st;
}

void sp__part_file_abort(sp__part_file_t *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    if (f->path != NULL)
        unlink(f->path);
    sp__free(f->path);
    f->path = NULL;
    sp__free(f->buf);
    f->buf = NULL;
}

/* ------------------------------------------------------------------------ */
/* mkdir -p and rm -r                                                        */
/* ------------------------------------------------------------------------ */

sp_status_t sp__mkdirs(const char *dir)
{
    char *copy = sp__strdup(dir);
    sp_status_t st = SP_OK;

    if (copy == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the path %s", dir);
    for (char *p = copy + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(copy, 0755) != 0 && errno != EEXIST) {
                st = sp__write_error("mkdir", copy, errno);
                break;
            }
            *p = c;
            if (c == '\0')
                break;
        }
    }
    sp__free(copy);
    return st;
}

static int sp_output_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    SP_UNUSED(sb);
    SP_UNUSED(flag);
    SP_UNUSED(ftw);
    remove(path);
    return 0;
}

/* Removes path and everything below it (best effort: what cannot go stays). */
static void sp_output_rmtree(const char *path)
{
    nftw(path, sp_output_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ------------------------------------------------------------------------ */
/* The lock                                                                  */
/* ------------------------------------------------------------------------ */

/* The start time of pid (field 22 of /proc/PID/stat, clock ticks after boot); 0: unknown. */
static unsigned long long sp_output_proc_start(long pid)
{
    char path[64], buf[1024], *p;
    unsigned long long start = 0;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count from the last ')'. */
    if ((p = strrchr(buf, ')')) == NULL)
        return 0;
    p++;
    for (int field = 3; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    if (p == NULL || sscanf(p, " %llu", &start) != 1)
        return 0;
    return start;
}

static void sp_output_hostname(char *host, size_t cap)
{
    if (gethostname(host, cap - 1) != 0)
        snprintf(host, cap, "unknown");
    host[cap - 1] = '\0';
}

/* Reads and parses a lock file. SP_ERR_NOT_FOUND when there is none. */
static sp_status_t sp_output_lock_read(const char *path, sp_output_lock_t *lock)
{
    char buf[SP_OUTPUT_LOCK_MAX], *save = NULL;
    unsigned version = 0;
    ssize_t n;
    int fd;

    memset(lock, 0, sizeof(*lock));
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        if (errno == ENOENT)
            return SP_ERR_NOT_FOUND;
        return SP_RAISE(SP_ERR_IO, "output lock %s: %s (errno %d)", path, strerror(errno), errno);
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return SP_RAISE(SP_ERR_IO, "output lock %s: %s (errno %d)", path, strerror(errno), errno);
    buf[n] = '\0';
    if (strlen(buf) != (size_t)n)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "output lock %s holds a NUL byte", path);
    for (char *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(line, ' ');
        const char *value;
        if (sp == NULL)
            continue;
        *sp = '\0';
        value = sp + 1;
        if (strcmp(line, SP_OUTPUT_LOCK_MAGIC) == 0)
            version = (unsigned)strtoul(value, NULL, 10);
        else if (version == 0)
            break; /* the magic line comes first */
        else if (strcmp(line, "run") == 0)
            snprintf(lock->run, sizeof(lock->run), "%s", value);
        else if (strcmp(line, "host") == 0)
            snprintf(lock->host, sizeof(lock->host), "%s", value);
        else if (strcmp(line, "pid") == 0)
            lock->pid = strtol(value, NULL, 10);
        else if (strcmp(line, "start") == 0)
            lock->start = strtoull(value, NULL, 10);
    }
    if (version != SP_OUTPUT_LOCK_VERSION)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "output lock %s is not a version %d spate lock", path,
                        SP_OUTPUT_LOCK_VERSION);
    if (lock->run[0] == '\0' || lock->host[0] == '\0' || lock->pid <= 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "output lock %s lacks its run, host or pid", path);
    return SP_OK;
}

/* Whether the lock's run may still be running (on another host it cannot be checked: yes). */
static bool sp_output_lock_alive(const sp_output_lock_t *lock, const char *host)
{
    unsigned long long start;

    if (strcmp(lock->host, host) != 0)
        return true;
    if (kill((pid_t)lock->pid, 0) != 0 && errno == ESRCH)
        return false;
    /* The pid exists; it is the holder unless it started at another time (a reused pid). */
    start = sp_output_proc_start(lock->pid);
    return lock->start == 0 || start == 0 || start == lock->start;
}

/*
 * Writes this run's lock to a private name and links it to _lock: the lock
 * appears complete or not at all. *held_p: false when a lock was there.
 */
static sp_status_t sp_output_lock_create(sp__output_t *out, bool *held_p)
{
    char host[256], text[SP_OUTPUT_LOCK_MAX], *mine = NULL;
    sp_status_t st = SP_OK;
    int n, fd;

    *held_p = false;
    sp_output_hostname(host, sizeof(host));
    n = snprintf(text, sizeof(text), "%s %d\nrun %s\npid %ld\nhost %s\nstart %llu\n",
                 SP_OUTPUT_LOCK_MAGIC, SP_OUTPUT_LOCK_VERSION, out->run_id, (long)getpid(), host,
                 sp_output_proc_start((long)getpid()));
    if (n < 0 || (size_t)n >= sizeof(text))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "output lock of run %s is too long", out->run_id);
    if (asprintf(&mine, "%s/.lock-%s", out->tmp, out->run_id) < 0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an output path under %s", out->dir);
    unlink(mine); /* this run's own leftover of an earlier round */
    if ((fd = open(mine, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
        st = errno == ENOENT ? SP_ERR_NOT_FOUND : sp__write_error("create", mine, errno);
        goto out;
    }
    st = sp__pwrite_all(fd, text, (size_t)n, 0, mine);
    if (st == SP_OK && sp__fsync(fd) != 0)
        st = sp__write_error("fsync", mine, errno);
    close(fd);
    if (st != SP_OK)
        goto out_unlink;
    if (link(mine, out->lock) == 0) {
        out->locked = true;
    } else if (errno == EEXIST) {
        *held_p = true;
    } else if (errno == ENOENT) {
        st = SP_ERR_NOT_FOUND; /* _temporary went away under us: the caller makes it again */
    } else if (errno == EPERM || errno == ENOTSUP || errno == ENOSYS) {
        /* A file system without hard links: create the lock itself exclusively. */
        if ((fd = open(out->lock, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) {
            if (errno == EEXIST)
                *held_p = true;
            else
                st = sp__write_error("create", out->lock, errno);
        } else {
            out->locked = true;
            st = sp__pwrite_all(fd, text, (size_t)n, 0, out->lock);
            close(fd);
        }
    } else {
        st = sp__write_error("link", out->lock, errno);
    }
out_unlink:
    unlink(mine);
out:
    free(mine);
    return st;
}

/*
 * The lock's holder is dead: move its lock away (only one run can), check it
 * is still the one judged dead, and remove that run's temporary files.
 */
static void sp_output_lock_take_over(sp__output_t *out, const sp_output_lock_t *dead)
{
    sp_output_lock_t moved;
    char *aside = NULL, *files = NULL;

    if (asprintf(&aside, "%s/.stale-%s", out->tmp, out->run_id) < 0)
        return;
    if (rename(out->lock, aside) != 0)
        goto out; /* another run moved it first: look again */
    if (sp_output_lock_read(aside, &moved) != SP_OK || strcmp(moved.run, dead->run) != 0 ||
        moved.pid != dead->pid) {
        /* A live run's lock replaced the dead one meanwhile: give it back. */
        if (link(aside, out->lock) != 0 && errno != EEXIST)
            sp_warn("output %s: could not put back the lock of run %s: %s", out->dir, moved.run,
                    strerror(errno));
        unlink(aside);
        goto out;
    }
    sp_warn("output directory %s was locked by run %s (pid %ld on %s), which is no longer "
            "running: taking the lock over and removing that run's temporary files",
            out->dir, dead->run, dead->pid, dead->host);
    if (sp_output_run_id_ok(dead->run) && strcmp(dead->run, out->run_id) != 0) {
        if (asprintf(&files, "%s/%s", out->tmp, dead->run) >= 0)
            sp_output_rmtree(files);
        free(files);
        if (asprintf(&files, "%s/.lock-%s", out->tmp, dead->run) >= 0)
            unlink(files);
        free(files);
    }
    unlink(aside);
out:
    free(aside);
}

/* Takes the directory's lock, or says which live run holds it (SP_ERR_EXISTS). */
static sp_status_t sp_output_lock_acquire(sp__output_t *out)
{
    char host[256];
    sp_status_t st;

    sp_output_hostname(host, sizeof(host));
    for (int round = 0; round < SP_OUTPUT_LOCK_TRIES; round++) {
        sp_output_lock_t holder;
        bool held;

        if (mkdir(out->tmp, 0755) != 0 && errno != EEXIST) {
            if (errno != ENOENT)
                return sp__write_error("mkdir", out->tmp, errno);
            /* A run that made dir and failed may have removed it meanwhile. */
            if ((st = sp__mkdirs(out->dir)) != SP_OK)
                return st;
            continue;
        }
        st = sp_output_lock_create(out, &held);
        if (st == SP_ERR_NOT_FOUND)
            continue;
        if (st != SP_OK || !held)
            return st;
        st = sp_output_lock_read(out->lock, &holder);
        if (st == SP_ERR_NOT_FOUND)
            continue; /* released meanwhile */
        if (st == SP_ERR_BAD_FORMAT)
            return SP_RAISE(SP_ERR_EXISTS,
                            "output directory %s is locked (%s): %s; remove the lock if no run "
                            "uses the directory",
                            out->dir, out->lock, sp_last_error());
        if (st != SP_OK)
            return st;
        if (sp_output_lock_alive(&holder, host)) {
            if (strcmp(holder.host, host) != 0)
                return SP_RAISE(SP_ERR_EXISTS,
                                "output directory %s is in use by run %s (pid %ld on host %s, "
                                "which cannot be checked from %s); choose another output, or "
                                "remove %s if that run is gone",
                                out->dir, holder.run, holder.pid, holder.host, host, out->lock);
            return SP_RAISE(SP_ERR_EXISTS,
                            "output directory %s is in use by run %s (pid %ld on this host); "
                            "choose another output or wait for that run to end",
                            out->dir, holder.run, holder.pid);
        }
        sp_output_lock_take_over(out, &holder);
    }
    return SP_RAISE(SP_ERR_IO, "output directory %s: its lock %s kept changing; giving up",
                    out->dir, out->lock);
}

/* Removes the lock when it is still this run's. */
static void sp_output_lock_release(sp__output_t *out)
{
    sp_output_lock_t lock;

    if (!out->locked)
        return;
    out->locked = false;
    if (sp_output_lock_read(out->lock, &lock) == SP_OK && strcmp(lock.run, out->run_id) == 0 &&
        lock.pid == (long)getpid())
        unlink(out->lock);
}

/* ------------------------------------------------------------------------ */
/* The committer                                                             */
/* ------------------------------------------------------------------------ */

/* SP_ERR_EXISTS when dir holds a finished job's output. */
static sp_status_t sp_output_check_empty(const char *dir)
{
    struct dirent *e;
    DIR *d;

    if ((d = opendir(dir)) == NULL)
        return SP_RAISE(SP_ERR_IO, "output directory %s: %s", dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, "_SUCCESS") == 0 || strncmp(e->d_name, "part-r-", 7) == 0) {
            sp_status_t exists = SP_RAISE(SP_ERR_EXISTS,
                                          "output directory %s already holds a job's output "
                                          "(%s); remove it or choose another",
                                          dir, e->d_name);
            closedir(d); /* e points into d */
            return exists;
        }
    }
    closedir(d);
    return SP_OK;
}

sp_status_t sp__output_prepare(const char *dir, const char *run_id, sp__output_t **out_p)
{
    sp__output_t *out;
    struct stat sb;
    bool created;
    sp_status_t st;

    if (run_id == NULL || !sp_output_run_id_ok(run_id))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "output %s: run id '%s' cannot name a directory", dir,
                        run_id != NULL ? run_id : "(none)");
    created = stat(dir, &sb) != 0 && errno == ENOENT;
    if ((st = sp__mkdirs(dir)) != SP_OK)
        return st;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return SP_RAISE(SP_ERR_IO, "output %s is not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0)
        return SP_RAISE(SP_ERR_IO, "output directory %s is not writable: %s", dir, strerror(errno));
    if ((out = sp__calloc(1, sizeof(*out))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the output committer");
    out->finished = true; /* nothing to abort until the run's directory exists */
    out->created = created;
    if ((out->dir = sp__strdup(dir)) == NULL || (out->run_id = sp__strdup(run_id)) == NULL ||
        asprintf(&out->tmp, "%s/_temporary", dir) < 0 ||
        asprintf(&out->run_dir, "%s/_temporary/%s", dir, run_id) < 0 ||
        asprintf(&out->lock, "%s/_temporary/_lock", dir) < 0) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the paths of output %s", dir);
        goto err;
    }
    if ((st = sp_output_lock_acquire(out)) != SP_OK)
        goto err;
    if ((st = sp_output_check_empty(dir)) != SP_OK)
        goto err;
    sp_output_rmtree(out->run_dir); /* run ids are unique; this is only ever our own */
    if (mkdir(out->run_dir, 0755) != 0) {
        st = sp__write_error("mkdir", out->run_dir, errno);
        goto err;
    }
    out->finished = false;
    *out_p = out;
    return SP_OK;
err:
    sp__output_release(out);
    return st;
}

sp_status_t sp__output_publish(sp__output_t *out, uint32_t partitions)
{
    int dfd;

    if (out->published == NULL && partitions > 0) {
        if ((out->published = sp__calloc(partitions, sizeof(*out->published))) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory to publish %u partitions", partitions);
        out->npublished = partitions;
    }
    for (uint32_t p = 0; p < partitions && p < out->npublished; p++) {
        char *from = NULL, *to = NULL;
        sp_status_t st = SP_OK;
        int rc;

        if (out->published[p])
            continue;
        if ((st = sp__output_task_path(out->dir, out->run_id, p, &from)) != SP_OK)
            return st;
        if (asprintf(&to, "%s/part-r-%05u", out->dir, p) < 0) {
            free(from);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for an output path under %s", out->dir);
        }
        /* Never replace a file: a part in the output that this run did not put there stays. */
        rc = renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
        if (rc != 0 && (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP)) {
            if (access(to, F_OK) == 0) {
                errno = EEXIST;
            } else {
                rc = rename(from, to);
            }
        }
        if (rc == 0)
            out->published[p] = true;
        else if (errno == EEXIST)
            st = SP_RAISE(SP_ERR_IO, "publish %s: %s appeared while this run held the directory",
                          from, to);
        else
            st = SP_RAISE(SP_ERR_IO, "publish %s as %s: %s (errno %d)", from, to, strerror(errno),
                          errno);
        free(from);
        free(to);
        if (st != SP_OK)
            return st;
    }
    /* The renames reach the disk before _SUCCESS can say they happened. */
    if ((dfd = open(out->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return SP_OK;
}

sp_status_t sp__output_succeed(sp__output_t *out)
{
    char *path = NULL;
    sp_status_t st = SP_OK;
    int fd;

    if (asprintf(&path, "%s/_SUCCESS", out->dir) < 0)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for an output path under %s", out->dir);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = sp__write_error("create", path, errno);
    } else {
        close(fd);
        out->success = true;
        out->finished = true;
        sp_output_rmtree(out->run_dir);
    }
    free(path);
    return st;
}

void sp__output_abort(sp__output_t *out)
{
    char *path = NULL;

    if (out == NULL)
        return;
    out->finished = true;
    sp_output_rmtree(out->run_dir);
    if (out->success && asprintf(&path, "%s/_SUCCESS", out->dir) >= 0) {
        unlink(path);
        free(path);
        path = NULL;
    }
    out->success = false;
    for (uint32_t p = 0; p < out->npublished; p++) {
        if (!out->published[p] || asprintf(&path, "%s/part-r-%05u", out->dir, p) < 0)
            continue;
        unlink(path);
        free(path);
        path = NULL;
        out->published[p] = false;
    }
}

void sp__output_release(sp__output_t *out)
{
    if (out == NULL)
        return;
    if (!out->finished)
        sp__output_abort(out);
    if (out->run_dir != NULL && out->locked)
        sp_output_rmtree(out->run_dir); /* what a straggling attempt wrote after the end */
    sp_output_lock_release(out);
    if (out->tmp != NULL)
        rmdir(out->tmp); /* only when no other run's files are left in it */
    if (out->created && !out->success && out->dir != NULL)
        rmdir(out->dir); /* a failed run leaves no directory it made, unless something is in it */
    sp__free(out->published);
    free(out->lock);
    free(out->run_dir);
    free(out->tmp);
    sp__free(out->run_id);
    sp__free(out->dir);
    sp__free(out);
}
