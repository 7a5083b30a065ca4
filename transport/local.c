/*
 * The local backend: executors on one host read each other's committed map
 * outputs straight from the file system, with no network and no help from
 * the owner. It serves only files (sp_transport_mr_reg_file); plain memory
 * cannot be read across processes this way and is refused.
 *
 * An address is the host's identity (the kernel's boot id and the inode of
 * the mount namespace: two processes that agree on both open the same files
 * by the same paths) and the pid. A peer whose identity differs is refused
 * at add_peer with SP_ERR_UNSUPPORTED, which is how the composite of
 * transport.local (transport.c) tells same-host peers from the others.
 *
 * A packed key names no path: 40 bytes, magic 'S' 'L', version 1, flags 0,
 * 4 reserved, then u64 device, u64 inode, u64 offset of the region in the
 * file, u64 length. The reader opens the file by the path its map status
 * gives (sp_transport_fetch_file), checks that the device and inode are the
 * key's, that the read lies inside the key's region and inside the file,
 * and reads it with pread into the destination. A reader never sees more
 * than the registered region of the file the owner registered; a file that
 * was removed or replaced since fails the fetch with a message naming it.
 * Deregistering does not revoke a key here: a reader holding one can read
 * that part of the committed file while it exists (it is read-only and
 * final once committed).
 *
 * The read happens inside the fetch, without the transport's lock, so reader
 * threads read in parallel; its completion waits in the ring for poll. Reads
 * are synchronous, so there is nothing to progress and no progress thread.
 */
#include "bytes.h"
#include "transport_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SP_LOCAL_KEY_BYTES  40
#define SP_LOCAL_HOST_BYTES 24 /* boot id (16) and mount namespace inode (8) */
#define SP_LOCAL_ADDR_BYTES (SP_LOCAL_HOST_BYTES + 4)

typedef struct sp_local {
    sp_transport_t base;
    unsigned char host[SP_LOCAL_HOST_BYTES];
    uint32_t *pids; /* by peer id */
    uint32_t npeers, peers_cap;
} sp_local_t;

typedef struct sp_local_mr {
    sp_mr_t base;
    uint64_t dev, ino, file_offset;
    bool file; /* registered with its file: it can be served */
} sp_local_mr_t;

static sp_local_t *sp_local(sp_transport_t *t) { return sp_container_of(t, sp_local_t, base); }

/*
 * This host's identity: the boot id (hex digits of the kernel's uuid) and
 * the inode of our mount namespace. Without /proc, the host name stands in
 * for the boot id and the namespace is taken to be the host's.
 */
static sp_status_t sp_local_identity(unsigned char *host)
{
    char text[64] = "";
    struct stat sb;
    size_t n = 0;
    FILE *f;

    memset(host, 0, SP_LOCAL_HOST_BYTES);
    f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f != NULL) {
        if (fgets(text, sizeof(text), f) == NULL)
            text[0] = '\0';
        fclose(f);
    }
    for (const char *p = text; *p != '\0' && n < 32; p++) {
        const char *hex = "0123456789abcdef", *d = strchr(hex, *p);
        if (d == NULL || *d == '\0')
            continue;
        host[n / 2] = (unsigned char)(host[n / 2] << 4 | (unsigned char)(d - hex));
        n++;
    }
    if (n < 32 && gethostname((char *)host, 16) != 0)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "the local backend cannot tell this host: no boot id in /proc and no "
                        "host name (errno %d)",
                        errno);
    if (stat("/proc/self/ns/mnt", &sb) == 0)
        sp__le_put_u64(host + 16, (uint64_t)sb.st_ino);
    return SP_OK;
}

static void sp_local_close(sp_transport_t *t)
{
    sp_local_t *l = sp_local(t);

    sp__free(l->pids);
    sp__transport_fini_base(&l->base);
    sp__free(l);
}

static const sp_transport_ops_t sp_local_ops;

sp_status_t sp__local_open(const sp_conf_t *conf, sp_transport_t **transport_p)
{
    sp_local_t *l = sp__calloc(1, sizeof(*l));
    sp_status_t st;

    if (l == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a local transport");
    if ((st = sp__transport_init_base(&l->base, conf, &sp_local_ops, "local")) != SP_OK ||
        (st = sp_local_identity(l->host)) != SP_OK) {
        sp_local_close(&l->base);
        return st;
    }
    snprintf(l->base.provider, sizeof(l->base.provider), "file system");
    *transport_p = &l->base;
    return SP_OK;
}

static sp_status_t sp_local_address(sp_transport_t *t, void *buf, size_t cap, size_t *len_p)
{
    sp_local_t *l = sp_local(t);
    unsigned char *b = buf;
    uint32_t pid = (uint32_t)getpid();

    if (cap < SP_LOCAL_ADDR_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a local address needs %d bytes, %zu given",
                        SP_LOCAL_ADDR_BYTES, cap);
    memcpy(b, l->host, SP_LOCAL_HOST_BYTES);
    sp__le_put_u32(b + SP_LOCAL_HOST_BYTES, pid);
    *len_p = SP_LOCAL_ADDR_BYTES;
    return SP_OK;
}

static sp_status_t sp_local_add_peer(sp_transport_t *t, const void *addr, size_t len,
                                     uint32_t *peer_p)
{
    sp_local_t *l = sp_local(t);
    const unsigned char *b = addr;
    uint32_t pid;

    if (len != SP_LOCAL_ADDR_BYTES)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "local peer address of %zu bytes (%d expected)", len,
                        SP_LOCAL_ADDR_BYTES);
    pid = sp__le_get_u32(b + SP_LOCAL_HOST_BYTES);
    if (memcmp(b, l->host, SP_LOCAL_HOST_BYTES) != 0)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "peer (pid %u) is on another host or in another mount namespace: the "
                        "local backend reads files of this host only",
                        pid);
    if (l->npeers == l->peers_cap) {
        uint32_t cap = l->peers_cap != 0 ? 2 * l->peers_cap : 16;
        uint32_t *p = sp__realloc(l->pids, cap * sizeof(*p));
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %u local peers", cap);
        l->pids = p;
        l->peers_cap = cap;
    }
    l->pids[l->npeers] = pid;
    *peer_p = l->npeers++;
    return SP_OK;
}

static sp_status_t sp_local_mr_new(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                   sp_local_mr_t **mr_p)
{
    sp_local_mr_t *m = sp__calloc(1, sizeof(*m));

    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a memory region");
    m->base.transport = t;
    m->base.addr = addr;
    m->base.len = len;
    m->base.remote_read = remote_read;
    t->stats.regions_registered++;
    *mr_p = m;
    return SP_OK;
}

static sp_status_t sp_local_mr_reg(sp_transport_t *t, void *addr, size_t len, bool remote_read,
                                   sp_mr_t **mr_p)
{
    sp_local_mr_t *m = NULL;
    sp_status_t st;

    if (remote_read)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "the local backend serves committed files only "
                        "(sp_transport_mr_reg_file), not %zu bytes of memory at %p",
                        len, addr);
    if ((st = sp_local_mr_new(t, addr, len, false, &m)) != SP_OK)
        return st;
    *mr_p = &m->base;
    return SP_OK;
}

static sp_status_t sp_local_mr_reg_file(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                                        sp_mr_t **mr_p)
{
    sp_local_mr_t *m = NULL;
    struct stat sb;
    sp_status_t st;

    if ((st = sp__file_range_stat(fd, file_offset, len, &sb)) != SP_OK)
        return st;
    if ((st = sp_local_mr_new(t, NULL, len, true, &m)) != SP_OK)
        return st;
    m->dev = (uint64_t)sb.st_dev;
    m->ino = (uint64_t)sb.st_ino;
    m->file_offset = file_offset;
    m->file = true;
    *mr_p = &m->base;
    return SP_OK;
}

static void sp_local_mr_dereg(sp_mr_t *mr) { sp__free(sp_container_of(mr, sp_local_mr_t, base)); }

static sp_status_t sp_local_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_local_mr_t *m = sp_container_of(mr, sp_local_mr_t, base);
    unsigned char *b = buf;

    if (!m->file)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "region at %p is not a served file", mr->addr);
    /* The file, not the transport, is the object: no chunks, any size. */
    if (cap < SP_LOCAL_KEY_BYTES)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a packed key needs %d bytes, %zu given",
                        SP_LOCAL_KEY_BYTES, cap);
    memset(b, 0, 8);
    b[0] = 'S';
    b[1] = 'L';
    b[2] = 1;
    sp__le_put_u64(b + 8, m->dev);
    sp__le_put_u64(b + 16, m->ino);
    sp__le_put_u64(b + 24, m->file_offset);
    sp__le_put_u64(b + 32, (uint64_t)mr->len);
    *len_p = SP_LOCAL_KEY_BYTES;
    return SP_OK;
}

static sp_status_t sp_local_fetch(sp_transport_t *t, uint32_t peer, const void *rkey,
                                  size_t rkey_len, uint64_t offset, size_t len, void *dest,
                                  sp_mr_t *local, void *context)
{
    SP_UNUSED(peer);
    SP_UNUSED(rkey);
    SP_UNUSED(rkey_len);
    SP_UNUSED(offset);
    SP_UNUSED(dest);
    SP_UNUSED(local);
    SP_UNUSED(context);
    return SP_RAISE(SP_ERR_INVALID_PARAM,
                    "the %s backend reads files: a fetch of %zu bytes needs the file's path "
                    "(sp_transport_fetch_file)",
                    t->backend, len);
}

/* Reads len bytes at off of the file at path, which must be (dev, ino); a message on failure. */
static sp_status_t sp_local_read(const char *path, uint64_t dev, uint64_t ino, uint64_t off,
                                 size_t len, unsigned char *dest, char *msg, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    size_t got = 0;

    if (fd < 0) {
        snprintf(msg, cap, "open %s: %s (errno %d); the output was removed?", path, strerror(errno),
                 errno);
        return SP_ERR_FETCH_FAILED;
    }
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_dev != dev || (uint64_t)sb.st_ino != ino) {
        snprintf(msg, cap, "%s is not the file its key names (device and inode differ): replaced?",
                 path);
        close(fd);
        return SP_ERR_FETCH_FAILED;
    }
    if (off > (uint64_t)sb.st_size || len > (uint64_t)sb.st_size - off) {
        snprintf(msg, cap, "%s has %lld bytes, fewer than the %zu at %llu its key names", path,
                 (long long)sb.st_size, len, (unsigned long long)off);
        close(fd);
        return SP_ERR_FETCH_FAILED;
    }
    while (got < len) {
        ssize_t n = pread(fd, dest + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(msg, cap, "read %zu bytes at %llu of %s: %s (errno %d)", len,
                     (unsigned long long)off, path, n < 0 ? strerror(errno) : "end of file",
                     n < 0 ? errno : 0);
            close(fd);
            return SP_ERR_FETCH_FAILED;
        }
        got += (size_t)n;
    }
    close(fd);
    return SP_OK;
}

static sp_status_t sp_local_fetch_file(sp_transport_t *t, uint32_t peer, const void *rkey,
                                       size_t rkey_len, const char *path, uint64_t offset,
                                       size_t len, void *dest, sp_mr_t *local, void *context)
{
    sp_local_t *l = sp_local(t);
    const unsigned char *b = rkey;
    uint64_t dev, ino, file_offset, length;
    char msg[SP_TRANSPORT_MSG];
    sp_status_t st;

    SP_UNUSED(local); /* reads need no registration */
    if (path == NULL)
        return sp_local_fetch(t, peer, rkey, rkey_len, offset, len, dest, local, context);
    if (rkey_len != SP_LOCAL_KEY_BYTES || b[0] != 'S' || b[1] != 'L' || b[2] != 1 || b[3] != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key of %zu bytes does not unpack", rkey_len);
    dev = sp__le_get_u64(b + 8);
    ino = sp__le_get_u64(b + 16);
    file_offset = sp__le_get_u64(b + 24);
    length = sp__le_get_u64(b + 32);
    if (file_offset > UINT64_MAX - length)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "remote key names a region past the largest offset");
    if (peer >= l->npeers)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "fetch from unknown peer %u (%u known)", peer,
                        l->npeers);
    if (offset > length || len > length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)length);
    if ((st = sp__transport_admit(t)) != SP_OK)
        return st;
    sp__transport_posted(t); /* the slot is ours while the lock is let go */
    pthread_mutex_unlock(&t->lock);
    st = sp_local_read(path, dev, ino, file_offset + offset, len, dest, msg, sizeof(msg));
    pthread_mutex_lock(&t->lock);
    if (st == SP_OK)
        sp__transport_complete(t, context, len, peer);
    else
        sp__transport_fail(t, context, st, 0, peer, "fetch from peer %u (pid %u): %s", peer,
                           l->pids[peer], msg);
    return SP_OK;
}

/* Reads complete inside the fetch: nothing to progress. */
static sp_status_t sp_local_progress(sp_transport_t *t)
{
    SP_UNUSED(t);
    return SP_OK;
}

static const sp_transport_ops_t sp_local_ops = {
    .size = sizeof(sp_transport_ops_t),
    .close = sp_local_close,
    .address = sp_local_address,
    .add_peer = sp_local_add_peer,
    .mr_reg = sp_local_mr_reg,
    .mr_dereg = sp_local_mr_dereg,
    .mr_pack = sp_local_mr_pack,
    .fetch = sp_local_fetch,
    .progress = sp_local_progress,
    .mr_reg_file = sp_local_mr_reg_file,
    .fetch_file = sp_local_fetch_file,
};
