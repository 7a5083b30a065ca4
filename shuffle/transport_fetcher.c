/*
 * The shuffle over a transport. Serving: a committed data file, its index and
 * its checksum file are registered with the transport for remote reads (which
 * maps them, in chunks, shared by every registration of a file); their packed
 * keys, as one key set, and the executor's transport address (hex) go into
 * the map status. Fetching: each remote block of an exact status is read at
 * its exact offset into a buffer of its own registered for the read; one of
 * an approximate (compact) status first reads its two index entries and its
 * checksum (two small reads), then itself. Blocks with no address are read
 * in place by a local fetcher. Posts the transport refuses as back-pressure wait in a queue
 * and are retried from progress(). Completions carry the owner's checksum,
 * which the reader verifies.
 *
 * Several fetchers share one transport (a reduce task each, on the
 * executor's worker threads), and a transport's completions are not sorted
 * by who posted them. So fetchers of one transport share a router: whoever
 * polls routes each completion to the queue of the fetcher that posted it,
 * and every fetcher runs its callbacks on its own thread from its own queue.
 * A fetcher destroyed with reads still in flight (its reduce task failed)
 * leaves them orphaned: their buffers stay registered until the transport
 * completes them, then whoever routes the completion frees them. A read
 * that timed out while the provider still holds its buffer (a completion
 * with held set) fails its block at once, and its request lives on as an
 * orphan with its buffer and registration until the transport releases it
 * (a completion with released set), so nothing is freed under the
 * provider. The
 * router also keeps the transport's peer table, so that each address is
 * added to the transport once, not once per reduce task.
 *
 * A block's buffer of 2 MiB or more is a mapping of its own, aligned to
 * 2 MiB and madvised for transparent huge pages: such a buffer is fresh
 * memory every time (malloc gives memory that big back to the OS when it is
 * freed), and fresh memory faulted in 2 MiB at a time costs about a third
 * of what 4 KiB faults cost on the VMs this is tuned on (a reduce task of a
 * word count faulted its fetched blocks in 4 KiB at a time: 14,000 faults).
 */
#include "shuffle_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spate/transport.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct sp_served_output {
    sp_mr_t *mr[3]; /* data, index, checksum */
};

static const char sp_hex[] = "0123456789abcdef";

#define SP_TF_HUGE ((size_t)2 << 20) /* buffers this big are huge-page mappings */

static size_t sp_tf_huge_round(size_t len) { return (len + SP_TF_HUGE - 1) & ~(SP_TF_HUGE - 1); }

/* A buffer for len bytes of a block (see the note at the top); NULL when out of memory. */
static unsigned char *sp_tf_buf_alloc(size_t len)
{
    unsigned char *raw, *buf;
    size_t size, head;

    if (len < SP_TF_HUGE)
        return sp__malloc(len != 0 ? len : 1);
    if (SP_UNLIKELY(sp__fault_fire(SP_FAULT_ALLOC)))
        return NULL;
    size = sp_tf_huge_round(len);
    raw = mmap(NULL, size + SP_TF_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    buf = (unsigned char *)(((uintptr_t)raw + SP_TF_HUGE - 1) & ~(uintptr_t)(SP_TF_HUGE - 1));
    head = (size_t)(buf - raw);
    if (head != 0)
        munmap(raw, head);
    munmap(buf + size, SP_TF_HUGE - head);
    /* A kernel without transparent huge pages refuses: small pages, still correct. */
    (void)madvise(buf, size, MADV_HUGEPAGE);
    return buf;
}

/* Frees a buffer of sp_tf_buf_alloc(len); NULL is accepted. */
static void sp_tf_buf_free(unsigned char *buf, size_t len)
{
    if (buf == NULL)
        return;
    if (len < SP_TF_HUGE)
        sp__free(buf);
    else
        munmap(buf, sp_tf_huge_round(len));
}

/*
 * The key set of a served output, in the status's rkey: 'S' 'O', version 1,
 * flags 0, u16 lengths of the data, index and checksum keys, u16 reserved,
 * then the three keys. A status whose rkey does not start so holds the data
 * key alone (an executor from before the key set): its exact blocks are read
 * as ever, its approximate ones cannot be.
 */
#define SP_TF_KEYS_HEADER 12

typedef struct sp_tf_keys {
    const unsigned char *key[3];
    size_t len[3];
} sp_tf_keys_t;

/* Splits a status's rkey; false when it holds no key set (an older status). */
static bool sp_tf_keys_unpack(const unsigned char *rkey, size_t len, sp_tf_keys_t *k)
{
    size_t off = SP_TF_KEYS_HEADER;

    if (rkey == NULL || len < SP_TF_KEYS_HEADER || rkey[0] != 'S' || rkey[1] != 'O' ||
        rkey[2] != 1 || rkey[3] != 0)
        return false;
    for (int i = 0; i < 3; i++) {
        size_t n = sp__le_get_u16(rkey + 4 + 2 * i);
        if (n == 0 || n > len - off)
            return false;
        k->key[i] = rkey + off;
        k->len[i] = n;
        off += n;
    }
    return off == len;
}

/* Registers the whole of the file at path for remote reads. */
static sp_status_t sp_tf_serve_file(sp_transport_t *t, const char *path, off_t min, sp_mr_t **mr_p)
{
    struct stat sb;
    sp_status_t st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size < min) {
        st = SP_RAISE(SP_ERR_IO, "serve %s: cannot open it or it is too short: %s (errno %d)", path,
                      strerror(errno), errno);
        if (fd >= 0)
            close(fd);
        return st;
    }
    st = sp_transport_mr_reg_file(t, fd, 0, (size_t)sb.st_size, mr_p);
    close(fd);
    return st;
}

sp_status_t sp_map_output_serve(sp_transport_t *t, sp_map_status_t *status,
                                sp_served_output_t **served_p)
{
    static const size_t cap = SP_TRANSPORT_RKEY_MAX;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    const char *paths[3] = {status->data_path, status->index_path, status->checksum_path};
    const off_t mins[3] = {SP_DATA_HEADER, SP_INDEX_HEADER, SP_CSUM_HEADER};
    size_t alen = 0, klen = SP_TF_KEYS_HEADER;
    sp_served_output_t *s;
    unsigned char *rkey = NULL;
    char *hex = NULL;
    sp_status_t st = SP_OK;

    s = sp__calloc(1, sizeof(*s));
    rkey = sp__malloc(SP_TF_KEYS_HEADER + 3 * cap);
    if (s == NULL || rkey == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory to serve %s", status->data_path);
        goto err_free;
    }
    memset(rkey, 0, SP_TF_KEYS_HEADER);
    rkey[0] = 'S';
    rkey[1] = 'O';
    rkey[2] = 1;
    /* The index and checksum files too: approximate statuses are read through them. */
    for (int i = 0; i < 3 && st == SP_OK; i++) {
        size_t n = 0;
        if (paths[i] == NULL) {
            st = SP_RAISE(SP_ERR_INVALID_PARAM, "serve %s: the status names no %s file",
                          status->data_path, i == 1 ? "index" : "checksum");
            break;
        }
        if ((st = sp_tf_serve_file(t, paths[i], mins[i], &s->mr[i])) != SP_OK ||
            (st = sp_transport_mr_pack(s->mr[i], rkey + klen, cap, &n)) != SP_OK)
            break;
        if (n > UINT16_MAX) {
            st = SP_RAISE(SP_ERR_TOO_LARGE, "serve %s: a key of %zu bytes", paths[i], n);
            break;
        }
        sp__le_put_u16(rkey + 4 + 2 * i, (uint16_t)n);
        klen += n;
    }
    if (st != SP_OK || (st = sp_transport_address(t, addr, sizeof(addr), &alen)) != SP_OK)
        goto err_dereg;
    {
        unsigned char *shrunk = sp__realloc(rkey, klen);
        if (shrunk != NULL)
            rkey = shrunk;
    }
    hex = sp__malloc(2 * alen + 1);
    if (hex == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the key of %s", status->data_path);
        goto err_dereg;
    }
    for (size_t i = 0; i < alen; i++) {
        hex[2 * i] = sp_hex[addr[i] >> 4];
        hex[2 * i + 1] = sp_hex[addr[i] & 15];
    }
    hex[2 * alen] = '\0';
    sp__free(status->rkey);
    sp__free(status->address);
    status->rkey = rkey;
    status->rkey_len = klen;
    status->address = hex;
    *served_p = s;
    return SP_OK;

err_dereg:
    for (int i = 2; i >= 0; i--)
        sp_transport_mr_dereg(s->mr[i]);
err_free:
    sp__free(rkey);
    sp__free(s);
    return st;
}

void sp_map_output_unserve(sp_served_output_t *served)
{
    if (served == NULL)
        return;
    for (int i = 2; i >= 0; i--)
        sp_transport_mr_dereg(served->mr[i]);
    sp__free(served);
}

/* ---- the fetcher ---- */

struct sp_tfetcher;

/*
 * What a request reads now. A block of an exact status is read at once; one
 * of an approximate status (no offsets or checksums) reads its two index
 * entries (where it starts and ends), then its checksum, then itself.
 */
typedef enum sp_tf_stage { SP_TF_DATA, SP_TF_INDEX, SP_TF_CHECKSUM } sp_tf_stage_t;

typedef struct sp_tf_req {
    struct sp_tf_req *next;
    struct sp_tf_req *prev_posted, *next_posted; /* the owner's posted list */
    struct sp_tfetcher *owner;                   /* NULL: orphaned */
    sp_status_t status;                          /* once routed */
    sp_fetch_done_fn_t done;
    void *arg;
    size_t index;
    unsigned char *buf;
    size_t buf_len; /* what buf was allocated for (sp_tf_buf_free) */
    size_t len;
    sp_mr_t *mr;
    uint64_t expected, offset;
    uint32_t peer;
    sp_tf_keys_t keys;      /* into the block list: data, index, checksum (or the data key alone) */
    const char *index_path; /* of the map output, in the block list */
    sp_tf_stage_t stage;
    uint64_t shuffle_id, map_id;
    uint32_t reduce_id;
    bool lent; /* failed, and the transport still holds buf (router lock) */
} sp_tf_req_t;

typedef struct sp_tf_peer {
    char *address;
    uint32_t peer;
} sp_tf_peer_t;

/* What the fetchers of one transport share; lives while a fetcher or an orphan needs it. */
typedef struct sp_tf_router {
    struct sp_tf_router *next; /* sp_tf_routers */
    sp_transport_t *t;
    pthread_mutex_t lock; /* polls, routing, the queues, posted lists and peers */
    unsigned refs;        /* fetchers */
    sp_tf_peer_t *peers;
    size_t npeers, peers_cap;
} sp_tf_router_t;

static pthread_mutex_t sp_tf_routers_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_tf_router_t *sp_tf_routers;

typedef struct sp_tfetcher {
    sp_block_fetcher_t base;
    sp_transport_t *t;
    sp_tf_router_t *router;
    sp_block_fetcher_t *local;
    sp_tf_req_t *waiting, *waiting_tail; /* refused by back-pressure, to post again */
    sp_tf_req_t *posted;                 /* in flight (router lock) */
    sp_tf_req_t *ready, *ready_tail;     /* routed, callbacks not yet run (router lock) */
    sp_tf_req_t *held;                   /* completed, buffers lent to the reader */
} sp_tfetcher_t;

static sp_tfetcher_t *sp_tf(sp_block_fetcher_t *f)
{
    return sp_container_of(f, sp_tfetcher_t, base);
}

/* The peer id of a hex address, adding the peer the first time. */
static sp_status_t sp_tf_peer_locked(sp_tf_router_t *tf, const char *hex, uint32_t *peer_p)
{
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    size_t len = strlen(hex), n = len / 2;
    sp_status_t st;

    for (size_t i = 0; i < tf->npeers; i++) {
        if (strcmp(tf->peers[i].address, hex) == 0) {
            *peer_p = tf->peers[i].peer;
            return SP_OK;
        }
    }
    if (len % 2 != 0 || n == 0 || n > sizeof(addr))
        return SP_RAISE(SP_ERR_BAD_FORMAT, "executor address '%.40s' is not a hex address", hex);
    for (size_t i = 0; i < n; i++) {
        const char *hi = strchr(sp_hex, hex[2 * i]), *lo = strchr(sp_hex, hex[2 * i + 1]);
        if (hi == NULL || lo == NULL || *hi == '\0' || *lo == '\0')
            return SP_RAISE(SP_ERR_BAD_FORMAT, "executor address '%.40s' is not a hex address",
                            hex);
        addr[i] = (unsigned char)((hi - sp_hex) << 4 | (lo - sp_hex));
    }
    if (tf->npeers == tf->peers_cap) {
        size_t cap = tf->peers_cap != 0 ? 2 * tf->peers_cap : 8;
        sp_tf_peer_t *p = sp__realloc(tf->peers, cap * sizeof(*p));
        if (p == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu peers", cap);
        tf->peers = p;
        tf->peers_cap = cap;
    }
    tf->peers[tf->npeers].address = sp__strdup(hex);
    if (tf->peers[tf->npeers].address == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a peer address");
    st = sp_transport_add_peer(tf->t, addr, n, &tf->peers[tf->npeers].peer);
    if (st != SP_OK) {
        sp__free(tf->peers[tf->npeers].address);
        return st;
    }
    *peer_p = tf->peers[tf->npeers++].peer;
    return SP_OK;
}

static sp_status_t sp_tf_peer(sp_tfetcher_t *tf, const char *hex, uint32_t *peer_p)
{
    sp_status_t st;

    pthread_mutex_lock(&tf->router->lock);
    st = sp_tf_peer_locked(tf->router, hex, peer_p);
    pthread_mutex_unlock(&tf->router->lock);
    return st;
}

static void sp_tf_req_free(sp_tf_req_t *r)
{
    sp_transport_mr_dereg(r->mr);
    sp_tf_buf_free(r->buf, r->buf_len);
    sp__free(r);
}

/*
 * Frees a request whose read is over, or, while the transport still holds
 * its buffer, orphans it: routing its release frees it.
 */
static void sp_tf_req_drop(sp_tf_router_t *router, sp_tf_req_t *r)
{
    bool lent;

    pthread_mutex_lock(&router->lock);
    lent = r->lent;
    if (lent)
        r->owner = NULL;
    pthread_mutex_unlock(&router->lock);
    if (!lent)
        sp_tf_req_free(r);
}

static void sp_tf_unlink_posted(sp_tfetcher_t *tf, sp_tf_req_t *r)
{
    if (r->prev_posted != NULL)
        r->prev_posted->next_posted = r->next_posted;
    else if (tf->posted == r)
        tf->posted = r->next_posted;
    if (r->next_posted != NULL)
        r->next_posted->prev_posted = r->prev_posted;
    r->prev_posted = r->next_posted = NULL;
}

/*
 * The file beside an index path ("x.index" -> "x.data" with suffix ".data")
 * into buf; NULL when it does not fit or the path is not an index path.
 */
static const char *sp_tf_sibling_path(const char *index_path, const char *suffix, char *buf,
                                      size_t cap)
{
    size_t n = index_path != NULL ? strlen(index_path) : 0, sn = strlen(suffix);

    if (n < 6 || n - 6 + sn + 1 > cap || strcmp(index_path + n - 6, ".index") != 0)
        return NULL;
    memcpy(buf, index_path, n - 6);
    memcpy(buf + n - 6, suffix, sn + 1);
    return buf;
}

/* Posts r; false when back-pressure says later. Errors complete r. */
static bool sp_tf_post(sp_tfetcher_t *tf, sp_tf_req_t *r)
{
    char pathbuf[4096];
    const char *path;
    uint64_t offset = r->offset;
    size_t len = r->len;
    int k = 0;
    sp_status_t st;

    switch (r->stage) {
    case SP_TF_DATA:
        path = sp_tf_sibling_path(r->index_path, ".data", pathbuf, sizeof(pathbuf));
        break;
    case SP_TF_INDEX: /* offset[reduce] and offset[reduce + 1] */
        k = 1;
        path = r->index_path;
        offset = SP_INDEX_HEADER + 8 * (uint64_t)r->reduce_id;
        len = 16;
        break;
    case SP_TF_CHECKSUM:
    default:
        k = 2;
        path = sp_tf_sibling_path(r->index_path, ".checksum", pathbuf, sizeof(pathbuf));
        offset = SP_CSUM_HEADER + 8 * (uint64_t)r->reduce_id;
        len = 8;
        break;
    }
    /* Posted and linked under the router's lock, so no poll routes r before it is linked.
     * The file's path lets a transport that reads files (local) open it. */
    pthread_mutex_lock(&tf->router->lock);
    st = sp_transport_fetch_file(tf->t, r->peer, r->keys.key[k], r->keys.len[k], path, offset, len,
                                 r->buf, r->mr, r);
    if (st == SP_OK) {
        r->owner = tf;
        r->prev_posted = NULL;
        r->next_posted = tf->posted;
        if (tf->posted != NULL)
            tf->posted->prev_posted = r;
        tf->posted = r;
    }
    pthread_mutex_unlock(&tf->router->lock);
    if (st == SP_ERR_BUSY)
        return false;
    if (st != SP_OK) {
        r->done(r->arg, r->index, st, NULL, 0, 0);
        sp_tf_req_free(r);
    }
    return true;
}

/* Local blocks complete inside the local fetcher: re-index them. */
typedef struct sp_tf_local {
    sp_fetch_done_fn_t done;
    void *arg;
    size_t index;
} sp_tf_local_t;

static void sp_tf_local_done(void *arg, size_t i, sp_status_t status, const void *data, size_t len,
                             uint64_t expected)
{
    sp_tf_local_t *l = arg;

    SP_UNUSED(i);
    l->done(l->arg, l->index, status, data, len, expected);
}

/* Posts r, or queues it behind the others refused by back-pressure. */
static void sp_tf_submit(sp_tfetcher_t *tf, sp_tf_req_t *r)
{
    if (tf->waiting != NULL || !sp_tf_post(tf, r)) {
        r->next = NULL;
        if (tf->waiting_tail != NULL)
            tf->waiting_tail->next = r;
        else
            tf->waiting = r;
        tf->waiting_tail = r;
    }
}

/*
 * An approximate block's index entries or checksum arrived: take what they
 * say and read on. The entries come from the wire: a block that would end
 * before it starts, or start inside the data file's header, fails the read
 * (SP_ERR_CORRUPT); one past the data file's end is refused by the transport
 * against the key. Errors complete r.
 */
static void sp_tf_advance(sp_tfetcher_t *tf, sp_tf_req_t *r)
{
    sp_status_t st = SP_OK;

    if (r->stage == SP_TF_INDEX) {
        uint64_t start = sp__le_get_u64(r->buf), end = sp__le_get_u64(r->buf + 8);

        if (start < SP_DATA_HEADER || end < start || end - start > SIZE_MAX / 2) {
            st = SP_RAISE(SP_ERR_CORRUPT,
                          "block of shuffle %llu map %llu reduce %u: the index of %s says it "
                          "spans [%llu, %llu)",
                          (unsigned long long)r->shuffle_id, (unsigned long long)r->map_id,
                          r->reduce_id, r->index_path, (unsigned long long)start,
                          (unsigned long long)end);
        } else {
            r->offset = start;
            r->len = (size_t)(end - start);
            r->stage = SP_TF_CHECKSUM; /* into the same 16 bytes */
            sp_tf_submit(tf, r);
            return;
        }
    } else {
        unsigned char *buf;
        sp_mr_t *mr = NULL;

        r->expected = sp__le_get_u64(r->buf);
        buf = sp_tf_buf_alloc(r->len);
        if (buf == NULL)
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a block of %zu bytes", r->len);
        else if ((st = sp_transport_mr_reg(tf->t, buf, r->len != 0 ? r->len : 1, false, &mr)) !=
                 SP_OK)
            sp_tf_buf_free(buf, r->len);
        if (st == SP_OK) {
            sp_transport_mr_dereg(r->mr);
            sp_tf_buf_free(r->buf, r->buf_len);
            r->buf = buf;
            r->buf_len = r->len;
            r->mr = mr;
            r->stage = SP_TF_DATA;
            if (r->len == 0) { /* nothing to read */
                r->next = tf->held;
                tf->held = r;
                r->done(r->arg, r->index, SP_OK, r->buf, 0, r->expected);
                return;
            }
            sp_tf_submit(tf, r);
            return;
        }
    }
    r->done(r->arg, r->index, st, NULL, 0, 0);
    sp_tf_req_free(r);
}

static sp_status_t sp_tf_fetch(sp_block_fetcher_t *f, const sp_block_ref_t *blocks, size_t n,
                               sp_fetch_done_fn_t done, void *arg)
{
    sp_tfetcher_t *tf = sp_tf(f);

    for (size_t i = 0; i < n; i++) {
        const sp_block_ref_t *b = &blocks[i];
        sp_tf_keys_t keys;
        sp_tf_req_t *r;
        size_t alloc;
        sp_status_t st;

        if (b->address == NULL) {
            sp_tf_local_t l = {done, arg, i};
            st = tf->local->ops->fetch(tf->local, b, 1, sp_tf_local_done, &l);
            if (st != SP_OK)
                done(arg, i, st, NULL, 0, 0);
            continue;
        }
        if (b->rkey == NULL || (!b->exact && !sp_tf_keys_unpack(b->rkey, b->rkey_len, &keys))) {
            SP_RAISE(SP_ERR_UNSUPPORTED,
                     "block of shuffle %llu map %llu reduce %u: remote reads need a remote key, "
                     "and for an approximate status the keys of its index and checksum files "
                     "(served by an older executor?)",
                     (unsigned long long)b->shuffle_id, (unsigned long long)b->map_id,
                     b->reduce_id);
            done(arg, i, SP_ERR_UNSUPPORTED, NULL, 0, 0);
            continue;
        }
        if (!sp_tf_keys_unpack(b->rkey, b->rkey_len, &keys)) {
            keys.key[0] = b->rkey; /* the data key alone */
            keys.len[0] = b->rkey_len;
        }
        /* An approximate block starts with its index entries, 16 bytes. */
        alloc = b->exact ? (size_t)b->size : 16;
        r = sp__calloc(1, sizeof(*r));
        if (r == NULL || (r->buf = sp_tf_buf_alloc(alloc)) == NULL) {
            sp__free(r);
            SP_RAISE(SP_ERR_NOMEM, "no memory for a block of %llu bytes",
                     (unsigned long long)b->size);
            done(arg, i, SP_ERR_NOMEM, NULL, 0, 0);
            continue;
        }
        r->buf_len = alloc;
        r->done = done;
        r->arg = arg;
        r->index = i;
        r->len = (size_t)b->size;
        r->expected = b->checksum;
        r->offset = b->offset;
        r->keys = keys;
        r->index_path = b->index_path;
        r->stage = b->exact ? SP_TF_DATA : SP_TF_INDEX;
        r->shuffle_id = b->shuffle_id;
        r->map_id = b->map_id;
        r->reduce_id = b->reduce_id;
        if ((st = sp_tf_peer(tf, b->address, &r->peer)) != SP_OK ||
            (st = sp_transport_mr_reg(tf->t, r->buf, alloc != 0 ? alloc : 1, false, &r->mr)) !=
                SP_OK) {
            done(arg, i, st, NULL, 0, 0);
            sp_tf_req_free(r);
            continue;
        }
        sp_tf_submit(tf, r);
    }
    return SP_OK;
}

/* Routes what the transport completed to the fetchers that posted it; router lock held. */
static sp_status_t sp_tf_route(sp_tf_router_t *router, int timeout_ms)
{
    sp_transport_completion_t done[16];
    size_t n = 0;
    sp_status_t st;

    st = sp_transport_poll(router->t, done, 16, timeout_ms, &n);
    if (st != SP_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        sp_tf_req_t *r = done[i].context;
        sp_tfetcher_t *owner = r->owner;

        if (done[i].released) {
            /* The transport gave the buffer of a failed read back. Orphaned
             * (its failure was delivered, or its fetcher is gone): free it;
             * else its owner frees it once it has delivered the failure. */
            r->lent = false;
            if (owner == NULL)
                sp_tf_req_free(r);
            continue;
        }
        if (done[i].held)
            r->lent = true;
        if (owner == NULL) { /* its fetcher is gone: nobody wants the bytes */
            if (!r->lent)
                sp_tf_req_free(r);
            continue;
        }
        sp_tf_unlink_posted(owner, r);
        r->status = done[i].status;
        r->next = NULL;
        if (owner->ready_tail != NULL)
            owner->ready_tail->next = r;
        else
            owner->ready = r;
        owner->ready_tail = r;
    }
    return SP_OK;
}

static sp_status_t sp_tf_progress(sp_block_fetcher_t *f, int timeout_ms)
{
    sp_tfetcher_t *tf = sp_tf(f);
    uint64_t deadline = sp__now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    sp_tf_req_t *list = NULL;
    sp_status_t st = SP_OK;

    /*
     * Take each request's successor before posting it: once posted, another
     * fetcher's poll may route its completion and reuse its next pointer (or
     * a failed post frees it), and the rest of the queue would be lost.
     */
    while (tf->waiting != NULL) {
        sp_tf_req_t *r = tf->waiting, *next = r->next;
        if (!sp_tf_post(tf, r))
            break;
        tf->waiting = next;
        if (next == NULL)
            tf->waiting_tail = NULL;
    }
    for (;;) {
        pthread_mutex_lock(&tf->router->lock);
        /* Polls wait at most a millisecond with the lock held, so fetchers take turns. */
        if (tf->ready == NULL)
            st = sp_tf_route(tf->router, timeout_ms > 0 ? 1 : 0);
        list = tf->ready;
        tf->ready = tf->ready_tail = NULL;
        pthread_mutex_unlock(&tf->router->lock);
        if (st != SP_OK || list != NULL || sp__now_ns() >= deadline)
            break;
    }
    while (list != NULL) {
        sp_tf_req_t *r = list;
        list = r->next;
        if (r->status == SP_OK && r->stage != SP_TF_DATA) {
            sp_tf_advance(tf, r);
            continue;
        }
        if (r->status != SP_OK) {
            r->done(r->arg, r->index, r->status, NULL, 0, 0);
            sp_tf_req_drop(tf->router, r);
            continue;
        }
        r->next = tf->held;
        tf->held = r;
        r->done(r->arg, r->index, SP_OK, r->buf, r->len, r->expected);
    }
    return st;
}

static void sp_tf_release(sp_block_fetcher_t *f, const void *data, size_t len)
{
    sp_tfetcher_t *tf = sp_tf(f);

    for (sp_tf_req_t **pp = &tf->held; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->buf == data) {
            sp_tf_req_t *r = *pp;
            *pp = r->next;
            sp_tf_req_free(r);
            return;
        }
    }
    tf->local->ops->release(tf->local, data, len);
}

static void sp_tf_router_unref(sp_tf_router_t *router)
{
    pthread_mutex_lock(&sp_tf_routers_lock);
    if (--router->refs == 0) {
        for (sp_tf_router_t **pp = &sp_tf_routers; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == router) {
                *pp = router->next;
                break;
            }
        }
        for (size_t i = 0; i < router->npeers; i++)
            sp__free(router->peers[i].address);
        sp__free(router->peers);
        pthread_mutex_destroy(&router->lock);
        sp__free(router);
    }
    pthread_mutex_unlock(&sp_tf_routers_lock);
}

static sp_status_t sp_tf_router_ref(sp_transport_t *t, sp_tf_router_t **router_p)
{
    sp_tf_router_t *router;

    pthread_mutex_lock(&sp_tf_routers_lock);
    for (router = sp_tf_routers; router != NULL && router->t != t; router = router->next)
        ;
    if (router == NULL) {
        if ((router = sp__calloc(1, sizeof(*router))) == NULL) {
            pthread_mutex_unlock(&sp_tf_routers_lock);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a transport fetch router");
        }
        router->t = t;
        pthread_mutex_init(&router->lock, NULL);
        router->next = sp_tf_routers;
        sp_tf_routers = router;
    }
    router->refs++;
    pthread_mutex_unlock(&sp_tf_routers_lock);
    *router_p = router;
    return SP_OK;
}

static void sp_tf_destroy(sp_block_fetcher_t *f)
{
    sp_tfetcher_t *tf = sp_tf(f);
    sp_tf_req_t *r, *ready;

    /* Reads still in flight write into their buffers until they complete: orphan them. */
    pthread_mutex_lock(&tf->router->lock);
    while ((r = tf->posted) != NULL) {
        tf->posted = r->next_posted;
        r->owner = NULL;
        r->prev_posted = r->next_posted = NULL;
    }
    ready = tf->ready;
    tf->ready = tf->ready_tail = NULL;
    pthread_mutex_unlock(&tf->router->lock);
    while ((r = ready) != NULL) {
        ready = r->next;
        sp_tf_req_drop(tf->router, r);
    }
    while ((r = tf->held) != NULL) {
        tf->held = r->next;
        sp_tf_req_free(r);
    }
    while ((r = tf->waiting) != NULL) {
        tf->waiting = r->next;
        sp_tf_req_free(r);
    }
    sp_tf_router_unref(tf->router);
    sp_block_fetcher_destroy(tf->local);
    sp__free(tf);
}

static const sp_block_fetcher_ops_t sp_tf_ops = {
    .size = sizeof(sp_block_fetcher_ops_t),
    .fetch = sp_tf_fetch,
    .progress = sp_tf_progress,
    .release = sp_tf_release,
    .destroy = sp_tf_destroy,
};

sp_status_t sp_block_fetcher_transport_create(sp_transport_t *transport,
                                              sp_block_fetcher_t **fetcher_p)
{
    sp_tfetcher_t *tf = sp__calloc(1, sizeof(*tf));
    sp_status_t st;

    if (tf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a transport block fetcher");
    st = sp_block_fetcher_local_create(&tf->local);
    if (st != SP_OK) {
        sp__free(tf);
        return st;
    }
    if ((st = sp_tf_router_ref(transport, &tf->router)) != SP_OK) {
        sp_block_fetcher_destroy(tf->local);
        sp__free(tf);
        return st;
    }
    tf->base.ops = &sp_tf_ops;
    tf->t = transport;
    *fetcher_p = &tf->base;
    return SP_OK;
}
