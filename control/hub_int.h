/*
 * The hub's private header: the hub object, shared by its event loop (hub.c)
 * and the backends it waits through (hub_poll.c, hub_mpi.c), in the manner
 * of Redis's ae.c and ae_epoll.c. Nothing outside control/ includes it.
 *
 * One pass of sp__ctl_hub_wait asks every backend, in turn, to prepare (note
 * what it watches this pass), to bound the pass's sleep, and to wait; the
 * backends mark what is ready (an entry's ready flag, joining_ready[],
 * lready), and the loop serves what is marked. The poll backend watches the
 * listener, the joining connections and every conn with a descriptor, and
 * is the one that sleeps; the MPI backend has nothing to sleep on, so it
 * marks its conns ready on every pass and bounds the sleep instead.
 */
#ifndef SPATE_CONTROL_HUB_INT_H
#define SPATE_CONTROL_HUB_INT_H

#include "control/control_int.h"

/* Dropped conns whose reason a hub keeps for sp__ctl_hub_remove. */
#define SP__CTL_HUB_GONE 16
/* Backends of a hub: poll and MPI. */
#define SP__CTL_HUB_BACKENDS 2

typedef struct sp__ctl_hub_backend sp__ctl_hub_backend_t;

/* A backend's ops (size first; every slot is filled). */
typedef struct sp__ctl_hub_ops {
    size_t size; /* sizeof(sp__ctl_hub_ops_t) */
    const char *name;
    /*
     * Notes what the backend watches this pass (the hub's state at now) and
     * marks what it knows is ready without waiting. SP_ERR_NOMEM (raised)
     * when it cannot.
     */
    sp_status_t (*prepare)(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub, uint64_t now);
    /*
     * How long this pass may sleep as far as the backend is concerned:
     * wait_ns or less (0: not at all). pass counts the passes of this
     * sp__ctl_hub_wait call from 0.
     */
    uint64_t (*bound)(const sp__ctl_hub_backend_t *b, const sp__ctl_hub_t *hub, unsigned pass,
                      uint64_t wait_ns);
    /* Waits at most wait_ns for what it watches and marks what is ready. */
    sp_status_t (*wait)(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub, uint64_t wait_ns);
    /* Frees the backend. */
    void (*destroy)(sp__ctl_hub_backend_t *b);
} sp__ctl_hub_ops_t;

/* The part every backend shares; a backend embeds it first. */
struct sp__ctl_hub_backend {
    const sp__ctl_hub_ops_t *ops;
};

/* The backend of the conns with a descriptor, the listener and the handshakes (hub_poll.c). */
sp_status_t sp__ctl_hub_poll_create(sp__ctl_hub_backend_t **b_p);
/* The backend of the conns without one: MPI (hub_mpi.c). */
sp_status_t sp__ctl_hub_mpi_create(sp__ctl_hub_backend_t **b_p);

typedef struct sp__ctl_hub_entry {
    sp__ctl_conn_t *conn;
    uint32_t id;
    sp__ctl_hub_backend_t *backend; /* the backend that watches it */
    int slot;                       /* the backend's own index for it this pass; -1 if none */
    bool ready;                     /* marked by its backend: try it this pass */
} sp__ctl_hub_entry_t;

/* A conn hub_wait dropped, and why: what sp__ctl_hub_remove then says. */
typedef struct sp__ctl_hub_gone {
    bool used;
    uint32_t id;
    char why[SP__CTL_WHY];
} sp__ctl_hub_gone_t;

struct sp__ctl_hub {
    sp__ctl_hub_entry_t *entries; /* in the order they were added */
    size_t n, cap;
    size_t cursor; /* the entry served first in the next pass */
    /* The listener and the handshakes it runs. */
    int lfd;
    bool lready; /* marked by the poll backend: accept this pass */
    unsigned char *secret;
    size_t slen;
    int hs_timeout_ms;
    sp__ctl_sock_t *joining[SP__CTL_HUB_MAX_JOINING]; /* handshake under way */
    bool joining_ready[SP__CTL_HUB_MAX_JOINING];      /* marked: step it this pass */
    size_t njoining;
    sp__ctl_conn_t **joined; /* handshake done, waiting for sp__ctl_hub_accept */
    size_t njoined, joined_cap;
    /* Running out of descriptors (EMFILE): the reserve, and the listener's rest. */
    int reserve_fd;            /* /dev/null, given up to shed connections; -1 if none */
    uint64_t listen_resume_ns; /* the listener is not polled before this */
    uint64_t accept_backoff_ns;
    /* Warnings about connections that never joined: at most one a second. */
    uint64_t warn_next_ns;
    uint64_t warn_quiet; /* held back since the last one written */
    sp__ctl_hub_gone_t gone[SP__CTL_HUB_GONE];
    size_t gone_next;
    sp__ctl_hub_stats_t stats;
    /* The backends, in the order a pass asks them. */
    sp__ctl_hub_backend_t *poll, *mpi;
    sp__ctl_hub_backend_t *backends[SP__CTL_HUB_BACKENDS];
};

/*
 * When the listener may be polled again (0: now). It rests after accept ran
 * out of descriptors, and while every handshake slot holds a connection
 * younger than the time it is given to answer.
 */
uint64_t sp__ctl_hub_listen_at(const sp__ctl_hub_t *hub);

#endif /* SPATE_CONTROL_HUB_INT_H */
