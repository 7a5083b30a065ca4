/*
 * The mpi backend on the ranks of one mpirun (CTest runs it on 2, 3 and 4),
 * once with transport.mpi_mode=rget and once with twosided (the same tests,
 * two cmocka groups). Every rank opens the transport (collective), serves a
 * 16 MiB region whose
 * bytes depend on its rank, and exchanges its address and packed key with
 * every other rank through MPI_Allgather. Then each rank fetches blocks of
 * every size at the first bytes, an odd offset and the region's last bytes
 * from every other rank and checks them against the owner's pattern; posts
 * 1000 small fetches with SP_ERR_BUSY as back-pressure; fetches again with
 * sp__mpi_count_max lowered, so that blocks travel as one derived datatype;
 * checks that bad requests are refused before anything is posted, that a key
 * whose region was deregistered fails, and that regions the window cannot
 * take (overlapping, over Open MPI's attach limit) are served two-sided
 * without wedging it. Two-sided only: a key forged to claim more than its
 * region is refused by the owner, and an owner that makes no transport call
 * still answers (its progress thread).
 *
 * cmocka runs in every rank (their output interleaves). Each test ends in a
 * barrier in its teardown, which cmocka runs after a failure too, so the
 * ranks stay in step; a rank with a failure exits non-zero, so mpirun fails.
 *
 * Not covered here: a malformed request on the private communicator (no test
 * can reach it), sp_transport_open in a process that never called
 * MPI_Init (SP_ERR_UNSUPPORTED; every rank of this program initializes MPI,
 * and MPI cannot be un-initialized), a peer that dies (Open MPI 4.1 aborts the
 * job) and SP_ERR_TIMED_OUT (an MPI read cannot be held back on purpose; a
 * two-sided read of an owner that does not poll can: test_mpi_timeout).
 */
/* LABELS: mpi */
#include <spate/transport.h>

#include "transport/transport_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REGION (16u << 20)
#define SMALL  1000

/* What one rank tells the others. */
typedef struct card {
    uint32_t alen, klen;
    unsigned char addr[SP_TRANSPORT_ADDR_MAX];
    unsigned char key[SP_TRANSPORT_RKEY_MAX];
} card_t;

static struct world {
    const char *mode; /* transport.mpi_mode of the group running */
    int rank, size;
    bool ready; /* the group setup finished on this rank */
    sp_conf_t *conf;
    sp_transport_t *t;
    unsigned char *region, *dest;
    sp_mr_t *region_mr, *dest_mr;
    card_t *cards; /* size of them, by rank */
} w;

/* Byte i of rank r's region: differs between ranks at every offset. */
static unsigned char pattern(int r, size_t i)
{
    return (unsigned char)((i * 7u + (i >> 12) + (unsigned)r * 31u + 1u) & 0xff);
}

static card_t *card_of(int r) { return &w.cards[r]; }

/* Waits for count completions, all successful, each with its context. */
static void drain(size_t count, void *context)
{
    time_t t0 = time(NULL);
    size_t got = 0;

    while (got < count) {
        sp_transport_completion_t done[16];
        size_t n = 0;
        assert_int_equal(sp_transport_poll(w.t, done, 16, 100, &n), SP_OK);
        for (size_t i = 0; i < n; i++) {
            if (done[i].status != SP_OK)
                fail_msg("rank %d: fetch failed: %s (raw %d): %s", w.rank,
                         sp_status_str(done[i].status), done[i].raw, sp_last_error());
            if (context != NULL)
                assert_ptr_equal(done[i].context, context);
        }
        got += n;
        if (time(NULL) - t0 > 60)
            fail_msg("rank %d: %zu of %zu fetches still missing after 60 s", w.rank, count - got,
                     count);
    }
}

static void check_bytes(int owner, uint64_t offset, const unsigned char *got, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (got[i] != pattern(owner, offset + i))
            fail_msg("rank %d: byte %zu of a %zu-byte fetch at %llu from rank %d is 0x%02x, not "
                     "0x%02x",
                     w.rank, i, len, (unsigned long long)offset, owner, got[i],
                     pattern(owner, offset + i));
    }
}

static void fetch_and_check(int peer, uint64_t offset, size_t len)
{
    card_t *c = card_of(peer);
    int context = 0;

    memset(w.dest, 0, len);
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)peer, c->key, c->klen, offset, len, w.dest,
                                        w.dest_mr, &context),
                     SP_OK);
    drain(1, &context);
    check_bytes(peer, offset, w.dest, len);
}

static bool twosided(void) { return strcmp(w.mode, "twosided") == 0; }

static int world_setup(void **state)
{
    sp_transport_stats_t s;
    card_t mine;
    size_t alen = 0, klen = 0;

    (void)state;
    w.ready = false;
    assert_int_equal(sp_conf_create(&w.conf), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.backend", "mpi"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.mpi_mode", w.mode), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.timeout", "20s"), SP_OK);
    assert_int_equal(sp_conf_set(w.conf, "transport.max_outstanding", "16"), SP_OK);
    assert_int_equal(sp_transport_open(w.conf, &w.t), SP_OK);
    assert_string_equal(sp_transport_backend(w.t), "mpi");
    assert_non_null(strstr(sp_transport_provider(w.t), "MPI"));

    w.region = malloc(REGION);
    w.dest = malloc(REGION);
    w.cards = calloc((size_t)w.size, sizeof(*w.cards));
    assert_non_null(w.region);
    assert_non_null(w.dest);
    assert_non_null(w.cards);
    for (size_t i = 0; i < REGION; i++)
        w.region[i] = pattern(w.rank, i);
    assert_int_equal(sp_transport_mr_reg(w.t, w.region, REGION, true, &w.region_mr), SP_OK);
    assert_int_equal(sp_transport_mr_reg(w.t, w.dest, REGION, false, &w.dest_mr), SP_OK);
    sp_transport_stats(w.t, &s);
    assert_int_equal(s.regions_registered, 2);

    memset(&mine, 0, sizeof(mine));
    assert_int_equal(sp_transport_address(w.t, mine.addr, sizeof(mine.addr), &alen), SP_OK);
    assert_int_equal(sp_transport_mr_pack(w.region_mr, mine.key, sizeof(mine.key), &klen), SP_OK);
    mine.alen = (uint32_t)alen;
    mine.klen = (uint32_t)klen;
    assert_int_equal(mine.key[3], twosided() ? 1 : 0); /* the key says how it is served */
    assert_int_equal(MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, w.cards, sizeof(mine), MPI_BYTE,
                                   MPI_COMM_WORLD),
                     MPI_SUCCESS);
    /* Every rank, this one too: the peer id of a rank is the rank. */
    for (int r = 0; r < w.size; r++) {
        uint32_t peer = UINT32_MAX;
        assert_int_equal(sp_transport_add_peer(w.t, card_of(r)->addr, card_of(r)->alen, &peer),
                         SP_OK);
        assert_int_equal(peer, (uint32_t)r);
    }
    w.ready = true;
    return 0;
}

static int setup_rget(void **state)
{
    w.mode = "rget";
    return world_setup(state);
}

static int setup_twosided(void **state)
{
    w.mode = "twosided";
    return world_setup(state);
}

static int world_teardown(void **state)
{
    (void)state;
    if (!w.ready) {
        /* The others wait in a collective this rank will never reach. */
        fprintf(stderr, "rank %d: setup failed (%s); aborting the job\n", w.rank, sp_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    sp_transport_mr_dereg(w.region_mr);
    sp_transport_mr_dereg(w.dest_mr);
    sp_transport_close(w.t); /* collective */
    sp_conf_destroy(w.conf);
    free(w.region);
    free(w.dest);
    free(w.cards);
    return 0;
}

/* Every test ends with all ranks together, even after a failure. */
static int barrier(void **state)
{
    (void)state;
    return MPI_Barrier(MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : -1;
}

static void test_mpi_fetch_every_size_from_every_rank(void **state)
{
    static const size_t sizes[] = {1, 1024, 64 << 10, 1 << 20, 8 << 20};
    sp_transport_stats_t before, after;

    (void)state;
    sp_transport_stats(w.t, &before);
    MPI_Barrier(MPI_COMM_WORLD); /* no rank reads this one before its count starts */
    for (int k = 1; k < w.size; k++) {
        int peer = (w.rank + k) % w.size;
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            fetch_and_check(peer, 0, sizes[i]);
            fetch_and_check(peer, 12345, sizes[i]);
            fetch_and_check(peer, REGION - sizes[i], sizes[i]); /* the region's last bytes */
        }
    }
    sp_transport_stats(w.t, &after);
    assert_int_equal(after.fetches_completed - before.fetches_completed,
                     (uint64_t)(w.size - 1) * 15);
    assert_int_equal(after.fetches_failed, 0);
    /* Two-sided, every fetch was a request some rank answered; rget, none was. */
    {
        uint64_t served = after.requests_served - before.requests_served, total = 0;
        MPI_Barrier(MPI_COMM_WORLD); /* every rank's answers are sent */
        sp_transport_stats(w.t, &after);
        served = after.requests_served - before.requests_served;
        MPI_Allreduce(&served, &total, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
        assert_int_equal(total, twosided() ? (uint64_t)w.size * (uint64_t)(w.size - 1) * 15 : 0);
    }
}

static void test_mpi_small_fetches_with_back_pressure(void **state)
{
    size_t posted = 0, completed = 0, busy = 0;
    time_t t0 = time(NULL);

    (void)state;
    if (w.size < 2)
        skip();
    while (completed < SMALL) {
        sp_transport_completion_t done[16];
        size_t n = 0;
        while (posted < SMALL) {
            /* Round robin over the other ranks; offsets step by 1 KiB + 1. */
            int peer = (w.rank + 1 + (int)(posted % (size_t)(w.size - 1))) % w.size;
            card_t *c = card_of(peer);
            sp_status_t st = sp_transport_fetch(w.t, (uint32_t)peer, c->key, c->klen, posted * 1025,
                                                1024, w.dest + posted * 1024, w.dest_mr,
                                                (void *)(uintptr_t)(posted + 1));
            if (st == SP_ERR_BUSY) {
                busy++;
                break;
            }
            assert_int_equal(st, SP_OK);
            posted++;
        }
        assert_int_equal(sp_transport_poll(w.t, done, 16, 100, &n), SP_OK);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(done[i].status, SP_OK);
            assert_int_equal(done[i].length, 1024);
            assert_true((uintptr_t)done[i].context >= 1 && (uintptr_t)done[i].context <= SMALL);
        }
        completed += n;
        if (time(NULL) - t0 > 60)
            fail_msg("rank %d: %zu of %d fetches still missing after 60 s (%zu posted)", w.rank,
                     (size_t)SMALL - completed, SMALL, posted);
    }
    assert_true(busy > 0); /* 1000 posts against transport.max_outstanding = 16 */
    for (size_t f = 0; f < SMALL; f++) {
        int peer = (w.rank + 1 + (int)(f % (size_t)(w.size - 1))) % w.size;
        check_bytes(peer, f * 1025, w.dest + f * 1024, 1024);
    }
}

static void test_mpi_long_fetches_as_one_datatype(void **state)
{
    (void)state;
    /* An odd chunk: every block is chunks plus a remainder, as above INT_MAX. */
    sp__mpi_count_max = 4093;
    for (int k = 1; k < w.size; k++) {
        int peer = (w.rank + k) % w.size;
        fetch_and_check(peer, 0, 4093);                       /* one chunk */
        fetch_and_check(peer, 1, 4094);                       /* a chunk and one byte */
        fetch_and_check(peer, 777, 3 * 4093);                 /* chunks only */
        fetch_and_check(peer, 12345, (1 << 20) + 3);          /* many chunks and a remainder */
        fetch_and_check(peer, REGION - (8u << 20), 8u << 20); /* the region's last bytes */
    }
    sp__mpi_count_max = INT_MAX;
}

static void test_mpi_bad_requests_are_refused(void **state)
{
    int next = (w.rank + 1) % w.size, prev = (w.rank + w.size - 1) % w.size;
    card_t *c = card_of(next);
    unsigned char bad[SP_TRANSPORT_RKEY_MAX], addr[SP_TRANSPORT_ADDR_MAX];
    sp_transport_stats_t before, after;
    size_t alen = 0;
    uint32_t peer = 0;

    (void)state;
    sp_transport_stats(w.t, &before);
    /* Past the end of the key's region. */
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, c->key, c->klen, REGION - 10, 11,
                                        w.dest, w.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "past the end"));
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, c->key, c->klen, (uint64_t)1 << 62, 1,
                                        w.dest, w.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    /* Keys that do not unpack: wrong magic, short, an owner past the world. */
    memcpy(bad, c->key, c->klen);
    bad[0] ^= 1;
    assert_int_equal(
        sp_transport_fetch(w.t, (uint32_t)next, bad, c->klen, 0, 10, w.dest, w.dest_mr, NULL),
        SP_ERR_BAD_FORMAT);
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, c->key, c->klen - 1, 0, 10, w.dest,
                                        w.dest_mr, NULL),
                     SP_ERR_BAD_FORMAT);
    memcpy(bad, c->key, c->klen);
    bad[24] = (unsigned char)w.size; /* the owner rank, little endian */
    assert_int_equal(
        sp_transport_fetch(w.t, (uint32_t)next, bad, c->klen, 0, 10, w.dest, w.dest_mr, NULL),
        SP_ERR_BAD_FORMAT);
    /* A key of one rank fetched from another. */
    if (w.size > 2) {
        assert_int_equal(sp_transport_fetch(w.t, (uint32_t)prev, c->key, c->klen, 0, 10, w.dest,
                                            w.dest_mr, NULL),
                         SP_ERR_INVALID_PARAM);
        assert_non_null(strstr(sp_last_error(), "owner"));
    }
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, card_of(w.rank)->key,
                                        card_of(w.rank)->klen, 0, 10, w.dest, w.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    /* A rank that does not exist. */
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)w.size + 3, c->key, c->klen, 0, 10, w.dest,
                                        w.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "unknown peer"));
    /* A destination outside the local region. */
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, c->key, c->klen, 0, 10,
                                        w.dest + REGION - 5, w.dest_mr, NULL),
                     SP_ERR_INVALID_PARAM);
    sp_transport_stats(w.t, &after);
    assert_int_equal(after.fetches_posted, before.fetches_posted);
    assert_int_equal(after.fetches_failed, 0);

    /* Addresses: not an envelope, a rank past the world, a raw address of 5 bytes. */
    assert_int_equal(sp_transport_add_peer(w.t, "xyz", 3, &peer), SP_ERR_BAD_FORMAT);
    memcpy(addr, card_of(w.rank)->addr, card_of(w.rank)->alen);
    alen = card_of(w.rank)->alen;
    assert_int_equal(alen, 12);
    addr[8] = (unsigned char)w.size;
    addr[9] = addr[10] = addr[11] = 0;
    assert_int_equal(sp_transport_add_peer(w.t, addr, alen, &peer), SP_ERR_BAD_FORMAT);
    addr[4] = 5;
    addr[12] = 0;
    assert_int_equal(sp_transport_add_peer(w.t, addr, alen + 1, &peer), SP_ERR_BAD_FORMAT);
    /* A region that is not served has no key. */
    assert_int_equal(sp_transport_mr_pack(w.dest_mr, bad, sizeof(bad), &alen),
                     SP_ERR_INVALID_PARAM);
}

static void test_mpi_deregistered_region_fails(void **state)
{
    const size_t len = 64 << 10;
    /* Whole pages, so that no other attachment shares them with this one. */
    unsigned char *page = aligned_alloc(4096, len);
    int next = (w.rank + 1) % w.size;
    card_t *cards = calloc((size_t)w.size, sizeof(*cards));
    card_t mine;
    sp_mr_t *mr = NULL;
    size_t klen = 0;
    sp_status_t st;

    (void)state;
    assert_non_null(page);
    assert_non_null(cards);
    for (size_t i = 0; i < len; i++)
        page[i] = pattern(w.rank, i);
    memset(&mine, 0, sizeof(mine));
    assert_int_equal(sp_transport_mr_reg(w.t, page, len, true, &mr), SP_OK);
    assert_int_equal(sp_transport_mr_pack(mr, mine.key, sizeof(mine.key), &klen), SP_OK);
    mine.klen = (uint32_t)klen;
    assert_int_equal(
        MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, cards, sizeof(mine), MPI_BYTE, MPI_COMM_WORLD),
        MPI_SUCCESS);
    memset(w.dest, 0, len);
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, cards[next].key, cards[next].klen, 0,
                                        len, w.dest, w.dest_mr, NULL),
                     SP_OK);
    drain(1, NULL);
    check_bytes(next, 0, w.dest, len);
    MPI_Barrier(MPI_COMM_WORLD);
    sp_transport_mr_dereg(mr);
    MPI_Barrier(MPI_COMM_WORLD);
    /* The stale key fails, at the post or in its completion, and never hangs:
     * one-sided, MPI finds no region; two-sided, its owner refuses. */
    st = sp_transport_fetch(w.t, (uint32_t)next, cards[next].key, cards[next].klen, 0, len, w.dest,
                            w.dest_mr, NULL);
    if (st == SP_OK) {
        sp_transport_completion_t done;
        size_t n = 0;
        time_t t0 = time(NULL);
        while (n == 0 && time(NULL) - t0 < 30)
            assert_int_equal(sp_transport_poll(w.t, &done, 1, 100, &n), SP_OK);
        assert_int_equal(n, 1);
        st = done.status;
        if (!twosided())
            assert_int_not_equal(done.raw, 0);
    }
    assert_int_equal(st, SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), twosided() ? "refused" : "raw"));
    free(cards);
    free(page);
}

/* Registers len bytes at addr for remote reads and shares its key: cards[r] is rank r's. */
static sp_mr_t *serve_and_share(void *addr, size_t len, card_t *cards)
{
    card_t mine;
    sp_mr_t *mr = NULL;
    size_t klen = 0;

    memset(&mine, 0, sizeof(mine));
    assert_int_equal(sp_transport_mr_reg(w.t, addr, len, true, &mr), SP_OK);
    assert_int_equal(sp_transport_mr_pack(mr, mine.key, sizeof(mine.key), &klen), SP_OK);
    mine.klen = (uint32_t)klen;
    assert_int_equal(
        MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, cards, sizeof(mine), MPI_BYTE, MPI_COMM_WORLD),
        MPI_SUCCESS);
    return mr;
}

/* Fetches len bytes at offset of the region behind card from peer and checks them. */
static void fetch_card_and_check(int peer, const card_t *card, uint64_t offset, size_t len,
                                 uint64_t owner_offset)
{
    memset(w.dest, 0, len);
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)peer, card->key, card->klen, offset, len,
                                        w.dest, w.dest_mr, NULL),
                     SP_OK);
    drain(1, NULL);
    check_bytes(peer, owner_offset, w.dest, len);
}

static void test_mpi_overlap_and_attach_limit_served_two_sided(void **state)
{
    enum { MANY = 200 };
    sp_mr_t *mrs[MANY], *overlap = NULL, *mr = NULL;
    unsigned char *pages = aligned_alloc(4096, (size_t)MANY * 4096);
    card_t *cards = calloc((size_t)w.size, sizeof(*cards));
    int next = (w.rank + 1) % w.size, flagged = 0;

    (void)state;
    assert_non_null(pages);
    assert_non_null(cards);
    /* Part of the served region again: MPI cannot attach it twice, so it is
     * served two-sided, and reads of it see the region's bytes. */
    overlap = serve_and_share(w.region + 4096, 100000, cards);
    assert_int_equal(cards[w.rank].key[3], 1);
    fetch_card_and_check(next, &cards[next], 5, 99995, 4096 + 5);
    /* As a local destination it is fine too: nothing is attached. */
    assert_int_equal(sp_transport_mr_reg(w.t, w.region + 4096, 100, false, &mr), SP_OK);
    sp_transport_mr_dereg(mr);
    /* Page after page, past the window's limit if this MPI has one. */
    for (int n = 0; n < MANY; n++) {
        unsigned char key[SP_TRANSPORT_RKEY_MAX];
        size_t klen = 0;
        for (size_t i = 0; i < 4096; i++)
            pages[(size_t)n * 4096 + i] = pattern(w.rank, (size_t)n * 4096 + i);
        assert_int_equal(sp_transport_mr_reg(w.t, pages + (size_t)n * 4096, 4096, true, &mrs[n]),
                         SP_OK);
        assert_int_equal(sp_transport_mr_pack(mrs[n], key, sizeof(key), &klen), SP_OK);
        flagged += key[3];
    }
    /* Open MPI 4.1's window takes 32 by default (osc_rdma_max_attach). */
    if (!twosided() && strstr(sp_transport_provider(w.t), "Open MPI") != NULL)
        assert_true(flagged > 0 && flagged < MANY);
    print_message("rank %d: %d of %d pages served two-sided\n", w.rank, flagged, MANY);
    /* The first page and the last, whichever way each is served. */
    for (int n = 0; n < MANY; n += MANY - 1) {
        card_t mine;
        size_t klen = 0;
        memset(&mine, 0, sizeof(mine));
        assert_int_equal(sp_transport_mr_pack(mrs[n], mine.key, sizeof(mine.key), &klen), SP_OK);
        mine.klen = (uint32_t)klen;
        assert_int_equal(MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, cards, sizeof(mine), MPI_BYTE,
                                       MPI_COMM_WORLD),
                         MPI_SUCCESS);
        fetch_card_and_check(next, &cards[next], 0, 4096, (size_t)n * 4096);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (int i = 0; i < MANY; i++)
        sp_transport_mr_dereg(mrs[i]);
    sp_transport_mr_dereg(overlap);
    free(pages);
    free(cards);
    /* The window still serves: read every rank again. */
    MPI_Barrier(MPI_COMM_WORLD);
    for (int k = 1; k < w.size; k++)
        fetch_and_check((w.rank + k) % w.size, 4097, 1 << 20);
}

static void test_mpi_owner_refuses_a_forged_key(void **state)
{
    int next = (w.rank + 1) % w.size;
    card_t forged = *card_of(next);
    sp_transport_completion_t done;
    size_t n = 0;
    time_t t0 = time(NULL);

    (void)state;
    if (!twosided())
        skip(); /* one-sided, only MPI's own bounds stand between */
    /* Claim twice the region's length: the reader's check passes, the owner's does not. */
    forged.key[16 + 3] = (unsigned char)((2 * REGION) >> 24);
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, forged.key, forged.klen, REGION - 10,
                                        20, w.dest, w.dest_mr, NULL),
                     SP_OK);
    while (n == 0 && time(NULL) - t0 < 30)
        assert_int_equal(sp_transport_poll(w.t, &done, 1, 100, &n), SP_OK);
    assert_int_equal(n, 1);
    assert_int_equal(done.status, SP_ERR_FETCH_FAILED);
    assert_non_null(strstr(sp_last_error(), "refused"));
    /* A region id that was never given out. */
    forged = *card_of(next);
    forged.key[4] ^= 0x55;
    forged.key[7] = 0x7f;
    assert_int_equal(sp_transport_fetch(w.t, (uint32_t)next, forged.key, forged.klen, 0, 20, w.dest,
                                        w.dest_mr, NULL),
                     SP_OK);
    n = 0;
    while (n == 0 && time(NULL) - t0 < 30)
        assert_int_equal(sp_transport_poll(w.t, &done, 1, 100, &n), SP_OK);
    assert_int_equal(n, 1);
    assert_int_equal(done.status, SP_ERR_FETCH_FAILED);
    /* The owner still answers honest reads. */
    fetch_and_check(next, 0, 1024);
}

static void test_mpi_idle_owner_answers_from_its_progress_thread(void **state)
{
    int provided = 0;

    (void)state;
    MPI_Query_thread(&provided);
    if (!twosided() || provided != MPI_THREAD_MULTIPLE)
        skip(); /* one-sided reads need no owner; without the thread, the owner must poll */
    /*
     * Rank 0 makes no transport call until every other rank has read from it:
     * it goes straight to the teardown's barrier, which the others reach once
     * their reads are checked, so only its progress thread can answer them.
     */
    MPI_Barrier(MPI_COMM_WORLD);
    if (w.rank != 0) {
        fetch_and_check(0, 333, 1 << 20);
        fetch_and_check(0, 0, 64 << 10);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_mpi_fetch_every_size_from_every_rank, barrier),
        cmocka_unit_test_teardown(test_mpi_small_fetches_with_back_pressure, barrier),
        cmocka_unit_test_teardown(test_mpi_long_fetches_as_one_datatype, barrier),
        cmocka_unit_test_teardown(test_mpi_bad_requests_are_refused, barrier),
        cmocka_unit_test_teardown(test_mpi_deregistered_region_fails, barrier),
        cmocka_unit_test_teardown(test_mpi_overlap_and_attach_limit_served_two_sided, barrier),
        cmocka_unit_test_teardown(test_mpi_owner_refuses_a_forged_key, barrier),
        cmocka_unit_test_teardown(test_mpi_idle_owner_answers_from_its_progress_thread, barrier),
    };
    int provided = 0, failed;

    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
    if (w.rank == 0)
        printf("test_mpi: %d ranks, thread level %d provided (%d asked)\n", w.size, provided,
               MPI_THREAD_MULTIPLE);
    sp_log_set_level(SP_LOG_ERROR);
    failed = cmocka_run_group_tests_name("rget", tests, setup_rget, world_teardown);
    /* Two-sided, an owner answers from its progress thread while its tests
     * wait in collectives: without MPI_THREAD_MULTIPLE they would hang. */
    if (provided == MPI_THREAD_MULTIPLE)
        failed += cmocka_run_group_tests_name("twosided", tests, setup_twosided, world_teardown);
    if (failed != 0)
        fprintf(stderr, "rank %d: %d test(s) failed\n", w.rank, failed);
    MPI_Finalize();
    return failed != 0 ? 1 : 0;
}
