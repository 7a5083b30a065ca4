/*
 * Control conns over MPI (control/mpi.c) on the ranks of one mpirun
 * (CTest runs it on 2, 3 and 4), laid out as `spate run` lays them out: rank
 * 0 holds a hub with an MPI conn to every other rank and a socketpair conn
 * to an executor thread of its own. Every executor (each other rank, and
 * rank 0's thread) sends messages of random sizes, 0 B to 2 MiB of payload
 * after an 8-byte {rank, seq} prefix, from a sender thread while its main
 * thread takes the replies; rank 0 checks each message's bytes and order and
 * answers with a reply of another size, which the executor checks in turn.
 * Then every rank sends frames with bad headers straight through MPI_Send
 * with the control tag (bad magic, bad version, shorter than a header, an
 * empty message, a length that disagrees with the message, a length over
 * SP__CTL_MAX_PAYLOAD, a channel type); rank 0 sends its own to itself over
 * an MPI conn to its own rank. For each, rank 0's hub reports
 * SP_ERR_BAD_FORMAT for that conn's id with the right message and drops it;
 * rank 0 then adds a new conn to that rank and acknowledges through it, and
 * the rank sends the next one. Last, a send to a rank that takes nothing
 * returns at once, and the hub reports that rank lost by name once the
 * frame has waited the conn's send timeout, while the other conns go on.
 *
 * cmocka runs in every rank; each test ends in a barrier (its teardown),
 * and every wait has a timeout, so a failure on one rank fails the others
 * instead of hanging them.
 */
/* LABELS: mpi */
#include "common_int.h"
#include "control/ctl.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* control/mpi.c's SP_CTL_MPI_TAG: control frames travel with this tag. */
#define CTL_TAG 0x5350
/* Messages each executor sends. */
#define N 40
/* Generous wait for anything that should succeed (ms): ranks oversubscribe 2 cores. */
#define T 30000
/* Ids of rank 0's conns to itself over MPI (phase 2). */
#define SELF_ID 500

static struct world {
    int rank, size;
    MPI_Comm comm;
    sp__ctl_hub_t *hub;   /* rank 0 */
    sp__ctl_conn_t *mine; /* rank 0: the executor end of the socketpair */
    sp__ctl_conn_t *conn; /* other ranks: the conn to rank 0 */
} w;

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(unsigned char *p, size_t len, uint64_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(mix(seed + i / 8) >> (8 * (i % 8)));
}

static bool check_fill(const unsigned char *p, size_t len, uint64_t seed)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != (unsigned char)(mix(seed + i / 8) >> (8 * (i % 8))))
            return false;
    return true;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static bool contains(const char *text, const char *phrase)
{
    if (strstr(text, phrase) != NULL)
        return true;
    fprintf(stderr, "rank %d: expected \"%s\" in \"%s\"\n", w.rank, phrase, text);
    return false;
}

/* ------------------------------------------------------------------------ */
/* Messages and replies                                                      */
/* ------------------------------------------------------------------------ */

static const size_t special[] = {0, 1, 4, 4088, 4089, 65536, 1u << 20, 2u << 20};

/* Payload bytes after the {rank, seq} prefix of rank's message seq. */
static size_t msg_size(uint32_t rank, uint32_t seq)
{
    uint64_t r = mix(((uint64_t)rank << 32) | seq);

    if (seq < SP_ARRAY_SIZE(special))
        return special[(seq + rank) % SP_ARRAY_SIZE(special)];
    return (size_t)(r % 8 == 0 ? (r >> 8) % ((2u << 20) + 1) : (r >> 8) % 8192);
}

/* Bytes of rank 0's reply to it, after its {seq} prefix. */
static size_t reply_size(uint32_t rank, uint32_t seq) { return msg_size(rank + 7, seq * 3 + 1); }

static uint64_t msg_seed(uint32_t rank, uint32_t seq) { return mix(((uint64_t)rank << 32) ^ seq); }

static uint64_t reply_seed(uint32_t rank, uint32_t seq) { return ~msg_seed(rank, seq); }

/* An executor: a sender thread, and the caller taking replies. No cmocka asserts (a thread may run
 * it). */
typedef struct exec {
    sp__ctl_conn_t *conn;
    uint32_t rank;
    sp_status_t st, send_st;
    char err[1100], send_err[1100];
} exec_t;

static void *exec_sender(void *arg)
{
    exec_t *e = arg;

    for (uint32_t seq = 0; seq < N; seq++) {
        size_t len = 8 + msg_size(e->rank, seq);
        unsigned char *buf = malloc(len);
        sp_status_t st;

        if (buf == NULL) {
            e->send_st = SP_ERR_NOMEM;
            return NULL;
        }
        put32(buf, e->rank);
        put32(buf + 4, seq);
        fill(buf + 8, len - 8, msg_seed(e->rank, seq));
        st = sp__ctl_send(e->conn, (uint16_t)(16 + seq % 8), buf, len);
        free(buf);
        if (st != SP_OK) {
            e->send_st = st;
            snprintf(e->send_err, sizeof(e->send_err), "send %u: %s", seq, sp_last_error());
            return NULL;
        }
    }
    return NULL;
}

static void exec_fail(exec_t *e, sp_status_t st, const char *what, uint32_t seq)
{
    e->st = st != SP_OK ? st : SP_ERR_INTERNAL;
    snprintf(e->err, sizeof(e->err), "reply %u: %s (%s)", seq, what, sp_last_error());
}

static void exec_run(exec_t *e)
{
    pthread_t sender;

    if (pthread_create(&sender, NULL, exec_sender, e) != 0) {
        exec_fail(e, SP_ERR_NO_RESOURCE, "pthread_create", 0);
        return;
    }
    for (uint32_t seq = 0; seq < N; seq++) {
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st = sp__ctl_recv(e->conn, T, &type, &p, &len);

        if (st != SP_OK) {
            exec_fail(e, st, "receive", seq);
            break;
        }
        if (type != 17 + seq % 8 || len != 4 + reply_size(e->rank, seq) || get32(p) != seq ||
            !check_fill((unsigned char *)p + 4, len - 4, reply_seed(e->rank, seq))) {
            exec_fail(e, SP_OK, "wrong reply", seq);
            free(p);
            break;
        }
        free(p);
    }
    pthread_join(sender, NULL);
}

static void *exec_thread(void *arg)
{
    exec_run(arg);
    return NULL;
}

static void exec_check(const exec_t *e)
{
    if (e->st != SP_OK || e->send_st != SP_OK)
        fprintf(stderr, "executor of rank %u: %s %s\n", e->rank, e->err, e->send_err);
    assert_int_equal(e->send_st, SP_OK);
    assert_int_equal(e->st, SP_OK);
}

/* Rank 0: takes size * N messages from the hub, checks each, replies to each. */
static void serve(void)
{
    uint32_t next[64] = {0};
    size_t total = (size_t)w.size * N;

    assert_true(w.size <= 64);
    for (size_t got = 0; got < total; got++) {
        uint32_t id = UINT32_MAX, seq;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0, rlen;
        unsigned char *reply;
        sp_status_t st = sp__ctl_hub_wait(w.hub, T, &id, &type, &p, &len);

        if (st != SP_OK)
            fprintf(stderr, "rank 0: hub_wait after %zu messages: %s\n", got, sp_last_error());
        assert_int_equal(st, SP_OK);
        assert_true(id < (uint32_t)w.size);
        assert_true(len >= 8);
        assert_int_equal(get32(p), id);
        seq = get32((unsigned char *)p + 4);
        assert_int_equal(seq, next[id]);
        next[id]++;
        assert_int_equal(type, 16 + seq % 8);
        assert_int_equal(len, 8 + msg_size(id, seq));
        assert_true(check_fill((unsigned char *)p + 8, len - 8, msg_seed(id, seq)));
        free(p);

        rlen = 4 + reply_size(id, seq);
        reply = malloc(rlen);
        assert_non_null(reply);
        put32(reply, seq);
        fill(reply + 4, rlen - 4, reply_seed(id, seq));
        st = sp__ctl_send(sp__ctl_hub_conn(w.hub, id), (uint16_t)(17 + seq % 8), reply, rlen);
        free(reply);
        if (st != SP_OK)
            fprintf(stderr, "rank 0: reply to %u: %s\n", id, sp_last_error());
        assert_int_equal(st, SP_OK);
    }
    for (int r = 0; r < w.size; r++)
        assert_int_equal(next[r], N);
}

static void test_ctl_mpi_messages_of_random_sizes(void **state)
{
    (void)state;
    if (w.rank == 0) {
        exec_t e = {.conn = w.mine, .rank = 0};
        pthread_t tid;
        sp__ctl_stats_t s;

        assert_int_equal(pthread_create(&tid, NULL, exec_thread, &e), 0);
        serve();
        assert_int_equal(pthread_join(tid, NULL), 0);
        exec_check(&e);
        for (int r = 1; r < w.size; r++) {
            sp__ctl_conn_stats(sp__ctl_hub_conn(w.hub, (uint32_t)r), &s);
            assert_true(s.msgs_received == N && s.msgs_sent == N);
        }
    } else {
        exec_t e = {.conn = w.conn, .rank = (uint32_t)w.rank};

        exec_run(&e);
        exec_check(&e);
    }
}

/* ------------------------------------------------------------------------ */
/* Bad headers                                                               */
/* ------------------------------------------------------------------------ */

typedef struct bad {
    const char *name;
    uint32_t magic;
    uint16_t version, type;
    uint32_t len; /* what the header says */
    size_t bytes; /* what the MPI message holds, header included */
    const char *phrase;
} bad_t;

static const bad_t bads[] = {
    {"bad magic", 0x4d435058u, SP__CTL_VERSION, 16, 0, 12, "bad magic"},
    {"bad version", SP__CTL_MAGIC, 99, 16, 4, 16, "unsupported version 99"},
    {"shorter than a header", SP__CTL_MAGIC, SP__CTL_VERSION, 16, 0, 5,
     "5 bytes, shorter than a header"},
    {"empty", SP__CTL_MAGIC, SP__CTL_VERSION, 16, 0, 0, "0 bytes, shorter than a header"},
    {"length disagrees", SP__CTL_MAGIC, SP__CTL_VERSION, 16, 100, 12 + 50,
     "header says 100 payload bytes, the message has 50"},
    {"length over the limit", SP__CTL_MAGIC, SP__CTL_VERSION, 16, SP__CTL_MAX_PAYLOAD + 1, 12,
     "above the limit"},
    {"channel type", SP__CTL_MAGIC, SP__CTL_VERSION, SP__CTL_AUTH, 64, 12 + 64,
     "type 2 is reserved for the channel"},
};
#define NBAD SP_ARRAY_SIZE(bads)

/* The bytes of bad frame k, in buf (room for 12 + 64). */
static void bad_bytes(size_t k, unsigned char *buf)
{
    const bad_t *b = &bads[k];

    memset(buf, 0xab, SP__CTL_HEADER_SIZE + 64);
    put32(buf, b->magic);
    buf[4] = (unsigned char)b->version;
    buf[5] = (unsigned char)(b->version >> 8);
    buf[6] = (unsigned char)b->type;
    buf[7] = (unsigned char)(b->type >> 8);
    put32(buf + 8, b->len);
}

/* Rank 0: the hub's next event must be a bad frame; returns the id of the conn it dropped. */
static uint32_t expect_bad(void)
{
    uint32_t id = UINT32_MAX;
    uint16_t type = 0;
    void *p = NULL;
    size_t len = 0;
    sp_status_t st = sp__ctl_hub_wait(w.hub, T, &id, &type, &p, &len);

    if (st != SP_ERR_BAD_FORMAT)
        fprintf(stderr, "rank 0: expected a bad frame: %s\n", sp_last_error());
    assert_int_equal(st, SP_ERR_BAD_FORMAT);
    assert_null(sp__ctl_hub_conn(w.hub, id));
    return id;
}

static void test_ctl_mpi_bad_headers_are_reported(void **state)
{
    unsigned char buf[SP__CTL_HEADER_SIZE + 64];

    (void)state;
    if (w.rank == 0) {
        size_t k_of[64] = {0}, left = (size_t)w.size * NBAD, k0 = 0;
        sp__ctl_conn_t *self = NULL;
        MPI_Request req;

        /* Rank 0's own bad frames go to itself, over an MPI conn to its own rank. */
        assert_int_equal(sp__ctl_conn_mpi(w.comm, 0, &self), SP_OK);
        assert_string_equal(sp__ctl_peer_name(self), "rank 0");
        assert_int_equal(sp__ctl_hub_add(w.hub, self, SELF_ID), SP_OK);
        bad_bytes(k0, buf);
        assert_int_equal(MPI_Isend(buf, (int)bads[k0].bytes, MPI_BYTE, 0, CTL_TAG, w.comm, &req),
                         MPI_SUCCESS);
        while (left > 0) {
            uint32_t id = expect_bad(), rank;
            size_t k;

            /* Which rank, and which of its frames, the id stands for. */
            if (id >= SELF_ID && id < SELF_ID + NBAD) {
                rank = 0;
                k = id - SELF_ID;
                assert_int_equal(k, k0);
            } else {
                rank = id % 1000;
                k = id / 1000;
                assert_true(rank >= 1 && rank < (uint32_t)w.size);
                assert_int_equal(k, k_of[rank]);
            }
            assert_true(contains(sp_last_error(), bads[k].phrase));
            {
                char name[32];

                snprintf(name, sizeof(name), "rank %u", rank);
                assert_true(contains(sp_last_error(), name));
            }
            left--;
            if (rank == 0) {
                assert_int_equal(MPI_Wait(&req, MPI_STATUS_IGNORE), MPI_SUCCESS);
                if (++k0 < NBAD) {
                    assert_int_equal(sp__ctl_conn_mpi(w.comm, 0, &self), SP_OK);
                    assert_int_equal(sp__ctl_hub_add(w.hub, self, SELF_ID + (uint32_t)k0), SP_OK);
                    bad_bytes(k0, buf);
                    assert_int_equal(
                        MPI_Isend(buf, (int)bads[k0].bytes, MPI_BYTE, 0, CTL_TAG, w.comm, &req),
                        MPI_SUCCESS);
                }
            } else {
                /* A new conn to that rank, and the go-ahead through it. */
                sp__ctl_conn_t *c = NULL;
                uint32_t nid = rank + 1000u * (uint32_t)(k + 1);

                k_of[rank] = k + 1;
                assert_int_equal(sp__ctl_conn_mpi(w.comm, (int)rank, &c), SP_OK);
                assert_int_equal(sp__ctl_hub_add(w.hub, c, nid), SP_OK);
                assert_int_equal(sp__ctl_send(c, 30, "next", 4), SP_OK);
            }
        }
        for (int r = 1; r < w.size; r++)
            assert_int_equal(k_of[r], NBAD);
        /* What is left: the socketpair, and the last conn to each other rank. */
        assert_int_equal(sp__ctl_hub_count(w.hub), (size_t)w.size);
        {
            uint32_t id = 0;
            uint16_t type = 0;
            void *p = NULL;
            size_t len = 0;

            assert_int_equal(sp__ctl_hub_wait(w.hub, 50, &id, &type, &p, &len), SP_ERR_TIMED_OUT);
        }
    } else {
        for (size_t k = 0; k < NBAD; k++) {
            uint16_t type = 0;
            void *p = NULL;
            size_t len = 0;
            sp_status_t st;

            bad_bytes(k, buf);
            assert_int_equal(MPI_Send(buf, (int)bads[k].bytes, MPI_BYTE, 0, CTL_TAG, w.comm),
                             MPI_SUCCESS);
            /* The go-ahead comes from rank 0's new conn, to this rank's old one. */
            st = sp__ctl_recv(w.conn, T, &type, &p, &len);
            if (st != SP_OK)
                fprintf(stderr, "rank %d: after bad frame %zu: %s\n", w.rank, k, sp_last_error());
            assert_int_equal(st, SP_OK);
            assert_int_equal(type, 30);
            assert_int_equal(len, 4);
            assert_memory_equal(p, "next", 4);
            free(p);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* A rank that takes nothing                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Rank 1 takes nothing (it waits in a barrier on another communicator)
 * while rank 0 sends it a frame far above any eager limit on a conn whose
 * send timeout is 300 ms: the send returns at once, and once the frame has
 * waited the send timeout the hub reports that conn lost, naming rank 1,
 * while the other conns go on; removing the id again repeats the cause.
 * Then rank 1 takes the frame whole (rank 0 keeps it alive after the conn
 * closed) and answers through its old conn.
 */
static void test_ctl_mpi_send_to_a_silent_rank_is_bounded(void **state)
{
    enum { BIG = 4u << 20, SILENT_ID = 9001, BIG_TYPE = 40, ACK_TYPE = 41 };

    (void)state;
    if (w.rank == 0) {
        unsigned char *big = malloc(BIG);
        sp__ctl_conn_t *c = NULL;
        uint32_t id = 0;
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st;

        assert_non_null(big);
        fill(big, BIG, 99);
        assert_int_equal(sp__ctl_conn_mpi(w.comm, 1, &c), SP_OK);
        sp__ctl_set_send_timeout(c, 300);
        assert_int_equal(sp__ctl_hub_add(w.hub, c, SILENT_ID), SP_OK);
        st = sp__ctl_send(c, BIG_TYPE, big, BIG);
        if (st != SP_OK)
            fprintf(stderr, "rank 0: send to a silent rank: %s\n", sp_last_error());
        assert_int_equal(st, SP_OK);
        /*
         * The executor on rank 0's socketpair is still heard meanwhile; its
         * message and the loss of rank 1 may come in either order.
         */
        assert_int_equal(sp__ctl_send(w.mine, 42, "still here", 10), SP_OK);
        for (int events = 0, heard = 0, lost = 0; events < 2; events++) {
            st = sp__ctl_hub_wait(w.hub, T, &id, &type, &p, &len);
            if (st == SP_OK) {
                assert_int_equal(heard++, 0);
                assert_int_equal(id, 0);
                assert_int_equal(type, 42);
                free(p);
                p = NULL;
                continue;
            }
            if (st != SP_ERR_PEER_LOST)
                fprintf(stderr, "rank 0: expected rank 1 lost: %s\n", sp_last_error());
            assert_int_equal(st, SP_ERR_PEER_LOST);
            assert_int_equal(lost++, 0);
            assert_int_equal(id, SILENT_ID);
            assert_true(contains(sp_last_error(), "rank 1 took no control message for 300 ms"));
        }
        assert_null(sp__ctl_hub_conn(w.hub, SILENT_ID));
        assert_int_equal(sp__ctl_hub_remove(w.hub, SILENT_ID), SP_ERR_NOT_FOUND);
        assert_true(contains(sp_last_error(), "rank 1 took no control message"));
        MPI_Barrier(MPI_COMM_WORLD);
        /* Rank 1 takes the frame now and acknowledges through its old conn. */
        do {
            st = sp__ctl_hub_wait(w.hub, T, &id, &type, &p, &len);
            if (st != SP_OK)
                fprintf(stderr, "rank 0: waiting for rank 1's ack: %s\n", sp_last_error());
            assert_int_equal(st, SP_OK);
        } while (id == 0);
        assert_int_equal(id % 1000, 1);
        assert_int_equal(type, ACK_TYPE);
        assert_int_equal(len, 2);
        assert_memory_equal(p, "ok", 2);
        free(p);
        free(big);
    } else if (w.rank == 1) {
        uint16_t type = 0;
        void *p = NULL;
        size_t len = 0;
        sp_status_t st;

        MPI_Barrier(MPI_COMM_WORLD);
        st = sp__ctl_recv(w.conn, T, &type, &p, &len);
        if (st != SP_OK)
            fprintf(stderr, "rank 1: the big frame: %s\n", sp_last_error());
        assert_int_equal(st, SP_OK);
        assert_int_equal(type, BIG_TYPE);
        assert_int_equal(len, BIG);
        assert_true(check_fill(p, len, 99));
        free(p);
        assert_int_equal(sp__ctl_send(w.conn, ACK_TYPE, "ok", 2), SP_OK);
    } else {
        MPI_Barrier(MPI_COMM_WORLD);
    }
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                     */
/* ------------------------------------------------------------------------ */

static int barrier(void **state)
{
    (void)state;
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (w.rank == 0) {
        sp__ctl_conn_t *drv = NULL;

        if (sp__ctl_hub_create(&w.hub) != SP_OK || sp__ctl_pair(NULL, 0, &drv, &w.mine) != SP_OK ||
            sp__ctl_hub_add(w.hub, drv, 0) != SP_OK)
            goto fail;
        for (int r = 1; r < w.size; r++) {
            sp__ctl_conn_t *c = NULL;

            if (sp__ctl_conn_mpi(w.comm, r, &c) != SP_OK ||
                sp__ctl_hub_add(w.hub, c, (uint32_t)r) != SP_OK)
                goto fail;
        }
    } else if (sp__ctl_conn_mpi(w.comm, 0, &w.conn) != SP_OK) {
        goto fail;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
fail:
    fprintf(stderr, "rank %d: setup failed: %s\n", w.rank, sp_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    MPI_Barrier(MPI_COMM_WORLD);
    sp__ctl_hub_destroy(w.hub);
    sp__ctl_close(w.mine);
    sp__ctl_close(w.conn);
    return 0;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_ctl_mpi_messages_of_random_sizes, barrier),
        cmocka_unit_test_teardown(test_ctl_mpi_bad_headers_are_reported, barrier),
        cmocka_unit_test_teardown(test_ctl_mpi_send_to_a_silent_rank_is_bounded, barrier),
    };
    int provided = 0, failed;

    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return 2;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
    if (provided < MPI_THREAD_MULTIPLE) {
        fprintf(stderr, "rank %d: MPI gives thread level %d; control conns need %d\n", w.rank,
                provided, MPI_THREAD_MULTIPLE);
        MPI_Finalize();
        return 1;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &w.comm);
    sp_log_set_level(SP_LOG_ERROR);
    failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    if (failed != 0)
        fprintf(stderr, "rank %d: %d test(s) failed\n", w.rank, failed);
    MPI_Comm_free(&w.comm);
    MPI_Finalize();
    return failed != 0 ? 1 : 0;
}
