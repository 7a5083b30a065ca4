/*
 * Served files for the backends that register memory (ofi, mpi): a file
 * region given to sp_transport_mr_reg_file is mapped and registered by the
 * transport itself, in chunks of transport.register_chunk bytes at file
 * offsets that are multiples of it, so that no registration is larger than a
 * chunk (providers bound the size of one region: verbs, efa) and a huge
 * output does not pin one huge mapping.
 *
 * Chunks are cached per transport by (device, inode, chunk index): a second
 * registration of the same file (the same output served again, or another
 * part of it) shares the chunks it covers, which are unmapped and
 * deregistered with their last registration. A committed file never changes,
 * so a chunk's mapping stays right while it is shared; a chunk whose file
 * has another length now is not shared (the file was replaced).
 *
 * The key of a registration that is exactly one chunk (the whole of a file
 * smaller than a chunk, the common case) is that chunk's backend key, so its
 * reads cost nothing more. Any other is a chunked key (docs/FORMATS.md):
 * magic 'S' 'C', version 1, flags 0, u32 chunk count, u64 start of the region
 * in its first chunk, u64 region length, u64 chunk size, then per chunk a u16
 * length and the chunk's backend key. A read through a chunked key is checked
 * against the region, then posted to the backend as one read per chunk it
 * touches; a read that straddles a boundary becomes a split whose parts the
 * completion path (sp__split_part) gathers into one completion for the
 * caller, failed if any part failed. A part that failed while the provider
 * still holds its piece of the destination (a timeout) makes the split's
 * failure a held one once every part has ended or failed, and the split is
 * released when the last such part is: the caller hears of the failure at
 * once and gets its buffer back only when no part can write into it.
 * Slots: each part is posted as a fetch of its own; a part gives its slot
 * back when it is over (a held part: at its release), except the one whose
 * end ends the split, whose slot the split's final completion takes.
 *
 * A chunk's pages outlive its registration. A read is one-sided: the owner
 * never sees it, and a reader whose read timed out leaves it with its
 * provider, which may still be serving it from this process (tcp answers
 * reads from the target's progress) after the last registration went. Its
 * mapping is therefore not unmapped then but replaced, at the same address,
 * by read-only zero pages (MAP_FIXED anonymous: the file and its pages are
 * let go at once, the addresses stay valid), kept until the transport
 * closes, after its endpoint, or until SP_FILE_RETIRE_NS have passed. Such a
 * late read sends zeros, which the reader's checksum refuses, instead of
 * faulting inside the provider: a send from unmapped memory (EFAULT) broke
 * tcp;ofi_rxm's connection state, and the executor died of SIGSEGV in
 * rxm's error handling when it closed its endpoint (issue 13 case 8).
 *
 * A served file can be replaced by another with the same bytes
 * (sp_transport_file_rebind: a map output held in memory moved to disk):
 * each of its chunks maps the new file at the same addresses (MAP_FIXED),
 * so its registration, its keys and reads in flight stay good, and the old
 * file's pages are let go; the chunk is then cached under the new file's
 * identity, so a registration of it shares the chunk and gets the same
 * keys. A provider that pins pages (verbs without on-demand paging) keeps
 * serving the old pages, with the same bytes, until the chunk is
 * deregistered.
 *
 * Everything here runs with the transport's lock held.
 */
#include "bytes.h"
#include "transport_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define SP_CHUNK_KEY_HEADER 32
#define SP_FILE_BUCKETS     256
/* How long a deregistered chunk's addresses stay mapped (zero pages) at most. */
#define SP_FILE_RETIRE_NS (600ull * 1000000000ull)

typedef struct sp_file_chunk {
    struct sp_file_chunk *next; /* in its hash bucket */
    uint64_t dev, ino, index;
    void *map;
    size_t len; /* mapped: [index * chunk, + len) of the file */
    sp_mr_t *mr;
    unsigned refs;
} sp_file_chunk_t;

/* The addresses of a deregistered chunk, zero pages now, until they are unmapped. */
typedef struct sp_file_retired {
    struct sp_file_retired *next;
    void *map;
    size_t len;
    uint64_t since_ns;
} sp_file_retired_t;

struct sp_file_cache {
    sp_file_chunk_t *buckets[SP_FILE_BUCKETS];
    size_t count;
    sp_file_retired_t *retired, *retired_tail; /* oldest first */
};

typedef struct sp_file_mr {
    sp_mr_t base;
    uint64_t chunk, start; /* chunk size; offset of the region in its first chunk */
    uint32_t nchunks;
    sp_file_chunk_t *chunks[]; /* nchunks, in file order */
} sp_file_mr_t;

/* A read split at chunk boundaries: one completion for its parts. */
struct sp_split {
    struct sp_split *next;
    void *context;
    uint32_t peer;
    size_t len;
    unsigned left; /* parts not completed, plus one while the parts are being posted */
    unsigned busy; /* parts failed while the provider holds their destination */
    bool reported; /* its held failure is in the ring; a release ends it */
    sp_status_t status;
    int raw;
    char msg[SP_TRANSPORT_MSG];
};

static size_t sp_file_bucket(uint64_t dev, uint64_t ino, uint64_t index)
{
    uint64_t h = dev * 0x9e3779b97f4a7c15u ^ ino * 0xc2b2ae3d27d4eb4fu ^ index;

    return (size_t)(h ^ (h >> 29)) % SP_FILE_BUCKETS;
}

/* Unmaps the retired addresses older than SP_FILE_RETIRE_NS (all: at close). */
static void sp_file_unmap_retired(struct sp_file_cache *files, bool all)
{
    uint64_t now = sp__now_ns();
    sp_file_retired_t *r;

    while ((r = files->retired) != NULL && (all || now - r->since_ns > SP_FILE_RETIRE_NS)) {
        files->retired = r->next;
        if (files->retired == NULL)
            files->retired_tail = NULL;
        munmap(r->map, r->len);
        sp__free(r);
    }
}

/*
 * Lets go of the file behind a deregistered chunk but keeps its addresses
 * mapped, to zero pages (see the design note). Where that cannot be done,
 * the chunk is unmapped as it was.
 */
static void sp_file_retire(sp_transport_t *t, void *map, size_t len)
{
    sp_file_retired_t *r = sp__malloc(sizeof(*r));

    if (r == NULL ||
        mmap(map, len, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED) {
        munmap(map, len);
        sp__free(r);
        return;
    }
    r->next = NULL;
    r->map = map;
    r->len = len;
    r->since_ns = sp__now_ns();
    if (t->files->retired_tail != NULL)
        t->files->retired_tail->next = r;
    else
        t->files->retired = r;
    t->files->retired_tail = r;
    sp_file_unmap_retired(t->files, false);
}

static void sp_file_chunk_unref(sp_transport_t *t, sp_file_chunk_t *c)
{
    sp_file_chunk_t **pp;

    if (--c->refs > 0)
        return;
    for (pp = &t->files->buckets[sp_file_bucket(c->dev, c->ino, c->index)]; *pp != c;
         pp = &(*pp)->next)
        ;
    *pp = c->next;
    t->files->count--;
    /* Unlinked first: a backend may let the lock go while it deregisters. */
    t->ops->mr_dereg(c->mr);
    sp_file_retire(t, c->map, c->len);
    sp__free(c);
}

/* The cached chunk index of the file (dev, ino) of length size, mapping and registering it. */
static sp_status_t sp_file_chunk_ref(sp_transport_t *t, int fd, uint64_t dev, uint64_t ino,
                                     uint64_t size, uint64_t index, sp_file_chunk_t **chunk_p)
{
    uint64_t chunk = t->register_chunk, at = index * chunk;
    size_t len = (size_t)SP_MIN(chunk, size - at);
    sp_file_chunk_t **bucket = &t->files->buckets[sp_file_bucket(dev, ino, index)], *c;
    sp_status_t st;

    for (c = *bucket; c != NULL; c = c->next) {
        if (c->dev == dev && c->ino == ino && c->index == index && c->len == len) {
            c->refs++;
            *chunk_p = c;
            return SP_OK;
        }
    }
    c = sp__calloc(1, sizeof(*c));
    if (c == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a chunk of a served file");
    c->map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)at);
    if (c->map == MAP_FAILED) {
        st = SP_RAISE(SP_ERR_IO, "map %zu bytes at %llu of file descriptor %d: %s (errno %d)", len,
                      (unsigned long long)at, fd, strerror(errno), errno);
        sp__free(c);
        return st;
    }
    if ((st = t->ops->mr_reg(t, c->map, len, true, &c->mr)) != SP_OK) {
        munmap(c->map, len);
        sp__free(c);
        return st;
    }
    c->dev = dev;
    c->ino = ino;
    c->index = index;
    c->len = len;
    c->refs = 1;
    c->next = *bucket;
    *bucket = c;
    t->files->count++;
    *chunk_p = c;
    return SP_OK;
}

sp_status_t sp__file_rebind(sp_transport_t *t, uint64_t dev, uint64_t ino, int fd)
{
    sp_file_chunk_t *moved = NULL, *c, **pp;
    struct stat sb;
    sp_status_t st = SP_OK;

    if (fstat(fd, &sb) != 0)
        return SP_RAISE(SP_ERR_IO, "rebind to file descriptor %d: fstat: %s (errno %d)", fd,
                        strerror(errno), errno);
    if (t->files == NULL)
        return SP_OK;
    /* Take the file's chunks out of the cache, each mapping fd in place... */
    for (size_t b = 0; b < SP_FILE_BUCKETS; b++) {
        for (pp = &t->files->buckets[b]; (c = *pp) != NULL;) {
            uint64_t at = c->index * t->register_chunk;
            if (c->dev != dev || c->ino != ino) {
                pp = &c->next;
                continue;
            }
            if (st == SP_OK && (uint64_t)sb.st_size < at + c->len)
                st = SP_RAISE(SP_ERR_INVALID_PARAM,
                              "rebind a chunk of %zu bytes at %llu to a file of %lld bytes", c->len,
                              (unsigned long long)at, (long long)sb.st_size);
            if (st == SP_OK && mmap(c->map, c->len, PROT_READ, MAP_SHARED | MAP_FIXED, fd,
                                    (off_t)at) == MAP_FAILED)
                st = SP_RAISE(SP_ERR_IO, "map %zu bytes of file descriptor %d in place: %s", c->len,
                              fd, strerror(errno));
            if (st != SP_OK) {
                pp = &c->next; /* stays the old file's, mapped as it was */
                continue;
            }
            *pp = c->next;
            c->next = moved;
            moved = c;
        }
    }
    /* ...and back under fd's identity, so that registering fd's file shares them. */
    while ((c = moved) != NULL) {
        size_t b = sp_file_bucket((uint64_t)sb.st_dev, (uint64_t)sb.st_ino, c->index);
        moved = c->next;
        c->dev = (uint64_t)sb.st_dev;
        c->ino = (uint64_t)sb.st_ino;
        c->next = t->files->buckets[b];
        t->files->buckets[b] = c;
    }
    return st;
}

sp_status_t sp__file_range_stat(int fd, uint64_t file_offset, size_t len, struct stat *sb_p)
{
    if (fstat(fd, sb_p) != 0)
        return SP_RAISE(SP_ERR_IO, "serve file descriptor %d: fstat: %s (errno %d)", fd,
                        strerror(errno), errno);
    if (!S_ISREG(sb_p->st_mode) || file_offset > (uint64_t)sb_p->st_size ||
        len > (uint64_t)sb_p->st_size - file_offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "serve %zu bytes at offset %llu of file descriptor %d: not inside a "
                        "regular file of %lld bytes",
                        len, (unsigned long long)file_offset, fd, (long long)sb_p->st_size);
    return SP_OK;
}

sp_status_t sp__file_mr_reg(sp_transport_t *t, int fd, uint64_t file_offset, size_t len,
                            sp_mr_t **mr_p)
{
    uint64_t chunk = t->register_chunk, first, last;
    sp_file_mr_t *m;
    struct stat sb;
    sp_status_t st = SP_OK;

    if ((st = sp__file_range_stat(fd, file_offset, len, &sb)) != SP_OK)
        return st;
    first = file_offset / chunk;
    last = (file_offset + len - 1) / chunk;
    if (last - first >= UINT16_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "serving %zu bytes takes %llu chunks of %llu bytes; raise "
                        "transport.register_chunk",
                        len, (unsigned long long)(last - first + 1), (unsigned long long)chunk);
    if (t->files == NULL && (t->files = sp__calloc(1, sizeof(*t->files))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the served-file cache");
    m = sp__calloc(1, sizeof(*m) + (size_t)(last - first + 1) * sizeof(m->chunks[0]));
    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to serve %zu bytes of a file", len);
    for (uint64_t k = first; k <= last && st == SP_OK; k++) {
        st = sp_file_chunk_ref(t, fd, (uint64_t)sb.st_dev, (uint64_t)sb.st_ino,
                               (uint64_t)sb.st_size, k, &m->chunks[m->nchunks]);
        if (st == SP_OK)
            m->nchunks++;
    }
    if (st != SP_OK) {
        while (m->nchunks > 0)
            sp_file_chunk_unref(t, m->chunks[--m->nchunks]);
        sp__free(m);
        return st;
    }
    m->chunk = chunk;
    m->start = file_offset - first * chunk;
    m->base.transport = t;
    m->base.len = len;
    m->base.remote_read = true;
    m->base.file = true;
    *mr_p = &m->base;
    return SP_OK;
}

void sp__file_mr_dereg(sp_mr_t *mr)
{
    sp_file_mr_t *m = sp_container_of(mr, sp_file_mr_t, base);

    for (uint32_t i = 0; i < m->nchunks; i++)
        sp_file_chunk_unref(mr->transport, m->chunks[i]);
    sp__free(m);
}

sp_status_t sp__file_mr_pack(const sp_mr_t *mr, void *buf, size_t cap, size_t *len_p)
{
    const sp_file_mr_t *m = sp_container_of(mr, sp_file_mr_t, base);
    sp_transport_t *t = mr->transport;
    unsigned char *b = buf;
    size_t at = SP_CHUNK_KEY_HEADER;
    uint64_t fields[3] = {m->start, (uint64_t)mr->len, m->chunk};

    if (m->nchunks == 1 && m->start == 0 && mr->len == m->chunks[0]->len)
        return t->ops->mr_pack(m->chunks[0]->mr, buf, cap, len_p);
    if (cap < SP_CHUNK_KEY_HEADER)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a chunked key needs more than %zu bytes", cap);
    for (uint32_t i = 0; i < m->nchunks; i++) {
        size_t klen = 0;
        sp_status_t st;
        if (cap - at < 2)
            return SP_RAISE(SP_ERR_TOO_LARGE, "the key of %u chunks needs more than %zu bytes",
                            m->nchunks, cap);
        if ((st = t->ops->mr_pack(m->chunks[i]->mr, b + at + 2, cap - at - 2, &klen)) != SP_OK)
            return st;
        sp__le_put_u16(b + at, (uint16_t)klen);
        at += 2 + klen;
    }
    memset(b, 0, 8);
    b[0] = 'S';
    b[1] = 'C';
    b[2] = 1;
    sp__le_put_u32(b + 4, m->nchunks);
    for (int f = 0; f < 3; f++)
        sp__le_put_u64(b + 8 + 8 * f, fields[f]);
    *len_p = at;
    return SP_OK;
}

void sp__file_fini(sp_transport_t *t)
{
    while (t->splits != NULL) {
        sp_split_t *s = t->splits;
        t->splits = s->next;
        sp__free(s);
    }
    if (t->files == NULL)
        return;
    if (t->files->count > 0)
        sp_warn("%s transport closed with %zu chunks of served files still registered", t->backend,
                t->files->count);
    /* The backend closed its endpoint: nothing reads the retired chunks any more. */
    sp_file_unmap_retired(t->files, true);
    sp__free(t->files);
    t->files = NULL;
}

bool sp__is_chunked_key(const void *rkey, size_t len)
{
    const unsigned char *b = rkey;

    return len >= 2 && b[0] == 'S' && b[1] == 'C';
}

/* Where chunk i's backend key is in a chunked key; false when the key does not unpack. */
static bool sp_chunk_key_at(const unsigned char *b, size_t len, uint32_t nchunks, uint32_t i,
                            const unsigned char **key_p, size_t *klen_p)
{
    size_t at = SP_CHUNK_KEY_HEADER;

    for (uint32_t k = 0; k < nchunks; k++) {
        size_t klen;
        if (len - at < 2)
            return false;
        klen = sp__le_get_u16(b + at);
        if (klen == 0 || klen > len - at - 2)
            return false;
        if (k == i) {
            *key_p = b + at + 2;
            *klen_p = klen;
        }
        at += 2 + klen;
    }
    return at == len;
}

/* Posts one part of a read: len bytes at off of chunk i into dest. */
static sp_status_t sp_chunk_post(sp_transport_t *t, uint32_t peer, const unsigned char *b,
                                 size_t klen_all, uint32_t nchunks, uint32_t i, uint64_t off,
                                 size_t len, unsigned char *dest, sp_mr_t *local, void *context)
{
    const unsigned char *key = NULL;
    size_t klen = 0;

    if (!sp_chunk_key_at(b, klen_all, nchunks, i, &key, &klen))
        return SP_RAISE(SP_ERR_BAD_FORMAT, "chunked key of %zu bytes does not unpack", klen_all);
    return t->ops->fetch(t, peer, key, klen, off, len, dest, local, context);
}

static void sp_split_unlink(sp_transport_t *t, sp_split_t *s)
{
    sp_split_t **pp = &t->splits;

    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
}

/*
 * The split's final completion (its release, after a held failure);
 * holds_slot: the part that ends it hands its slot over.
 */
static void sp_split_finish(sp_transport_t *t, sp_split_t *s, bool holds_slot)
{
    sp_split_unlink(t, s);
    if (!holds_slot)
        sp__transport_posted(t);
    if (s->reported)
        sp__transport_push(t, s->context, SP_ERR_CANCELED, 0, 0, s->peer, NULL, SP_DONE_RELEASED);
    else if (s->status == SP_OK)
        sp__transport_push(t, s->context, SP_OK, 0, s->len, s->peer, NULL, SP_DONE_FINAL);
    else
        sp__transport_push(t, s->context, s->status, s->raw, 0, s->peer, s->msg, SP_DONE_FINAL);
    sp__free(s);
}

/* Every part has ended or failed, some still held: the caller hears of the failure now. */
static void sp_split_report_held(sp_transport_t *t, sp_split_t *s)
{
    if (s->left == 0 && s->busy > 0 && !s->reported) {
        s->reported = true;
        sp__transport_push(t, s->context, s->status, s->raw, 0, s->peer, s->msg, SP_DONE_HELD);
    }
}

bool sp__split_part(sp_transport_t *t, void *context, sp_status_t st, int raw, const char *msg,
                    sp_done_kind_t kind)
{
    sp_split_t *s;

    for (s = t->splits; s != NULL && s != context; s = s->next)
        ;
    if (s == NULL)
        return false;
    if (kind != SP_DONE_RELEASED && st != SP_OK && s->status == SP_OK) {
        s->status = st;
        s->raw = raw;
        snprintf(s->msg, sizeof(s->msg), "%s", msg != NULL ? msg : sp_status_str(st));
    }
    if (kind == SP_DONE_RELEASED) {
        SP_ASSERT(s->busy > 0);
        s->busy--;
    } else {
        SP_ASSERT(s->left > 0);
        s->left--;
        if (kind == SP_DONE_HELD)
            s->busy++;
    }
    if (s->left == 0 && s->busy == 0) {
        sp_split_finish(t, s, true);
        return true;
    }
    sp_split_report_held(t, s);
    if (kind != SP_DONE_HELD) {
        /* This part is over and not handed to the caller: its slot is free now. */
        t->outstanding--;
        t->stats.fetches_posted--;
    }
    return true;
}

sp_status_t sp__chunked_fetch(sp_transport_t *t, uint32_t peer, const void *rkey, size_t rkey_len,
                              uint64_t offset, size_t len, void *dest, sp_mr_t *local,
                              void *context)
{
    const unsigned char *b = rkey;
    uint64_t start, length, chunk, abs;
    uint32_t nchunks, first, last, posted = 0;
    sp_split_t *s;
    sp_status_t st = SP_OK;

    if (rkey_len < SP_CHUNK_KEY_HEADER || b[2] != 1 || b[3] != 0)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "chunked key of %zu bytes does not unpack", rkey_len);
    nchunks = sp__le_get_u32(b + 4);
    start = sp__le_get_u64(b + 8);
    length = sp__le_get_u64(b + 16);
    chunk = sp__le_get_u64(b + 24);
    /* The chunks must be the ones the region needs, exactly. */
    if (chunk == 0 || start >= chunk || length == 0 || length > UINT64_MAX - start ||
        nchunks == 0 || (start + length - 1) / chunk + 1 != nchunks)
        return SP_RAISE(SP_ERR_BAD_FORMAT,
                        "chunked key names %llu bytes at %llu in %u chunks of %llu bytes",
                        (unsigned long long)length, (unsigned long long)start, nchunks,
                        (unsigned long long)chunk);
    if (offset > length || len > length - offset)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "fetch of %zu bytes at offset %llu from peer %u is past the end of its "
                        "%llu-byte region",
                        len, (unsigned long long)offset, peer, (unsigned long long)length);
    abs = start + offset;
    first = (uint32_t)(abs / chunk);
    last = len == 0 ? first : (uint32_t)((abs + len - 1) / chunk);
    if (first == last)
        return sp_chunk_post(t, peer, b, rkey_len, nchunks, first, abs - (uint64_t)first * chunk,
                             len, dest, local, context);
    if (last - first + 1 > t->max_outstanding)
        return SP_RAISE(SP_ERR_TOO_LARGE,
                        "fetch of %zu bytes spans %u chunks of %llu bytes, more than "
                        "transport.max_outstanding (%u)",
                        len, last - first + 1, (unsigned long long)chunk, t->max_outstanding);
    if (t->outstanding + (last - first + 1) > t->max_outstanding)
        return SP_RAISE(SP_ERR_BUSY,
                        "%u fetches outstanding, and this one spans %u chunks; poll first",
                        t->outstanding, last - first + 1);
    s = sp__calloc(1, sizeof(*s));
    if (s == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a fetch across chunks");
    s->context = context;
    s->peer = peer;
    s->len = len;
    s->left = last - first + 2; /* the parts, and this loop */
    s->next = t->splits;
    t->splits = s;
    for (uint32_t k = first; k <= last; k++) {
        uint64_t from = SP_MAX(abs, (uint64_t)k * chunk),
                 to = SP_MIN(abs + len, (uint64_t)(k + 1) * chunk);
        st = sp_chunk_post(t, peer, b, rkey_len, nchunks, k, from - (uint64_t)k * chunk,
                           (size_t)(to - from), (unsigned char *)dest + (from - abs), local, s);
        if (st != SP_OK)
            break;
        posted++;
    }
    if (posted == 0) {
        sp_split_unlink(t, s);
        sp__free(s);
        return st;
    }
    if (st != SP_OK) {
        /* The parts posted complete; the read fails with this. */
        s->status = st;
        snprintf(s->msg, sizeof(s->msg), "%s", sp_last_error());
    }
    s->left -= (last - first + 1 - posted) + 1;
    if (s->left == 0 && s->busy == 0)
        sp_split_finish(t, s, false);
    else
        sp_split_report_held(t, s);
    return SP_OK;
}
