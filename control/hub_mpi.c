/*
 * The hub's MPI backend. MPI conns have no descriptor to poll and MPI gives
 * no wake-up a hub could sleep on, so every pass marks each MPI conn ready
 * (its try is an MPI_Iprobe, which also completes its sends in flight) and
 * bounds the pass's sleep in the poll backend instead: no sleep on the
 * first pass of a wait, then 50 us doubling to 200 us while nothing comes.
 * So a hub of MPI conns takes a message at most about 200 us after it arrives, at
 * the cost of at most 5,000 passes a second while idle, each probing every
 * MPI conn once.
 */
#include "control/hub_int.h"

typedef struct sp_ctl_hub_mpi {
    sp__ctl_hub_backend_t base;
    size_t n; /* conns it watches this pass */
} sp_ctl_hub_mpi_t;

static sp_ctl_hub_mpi_t *sp_ctl_hub_mpi(sp__ctl_hub_backend_t *b)
{
    return sp_container_of(b, sp_ctl_hub_mpi_t, base);
}

static sp_status_t sp_ctl_hub_mpi_prepare(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub,
                                          uint64_t now)
{
    sp_ctl_hub_mpi_t *m = sp_ctl_hub_mpi(b);

    (void)now;
    m->n = 0;
    for (size_t i = 0; i < hub->n; i++) {
        if (hub->entries[i].backend == b) {
            hub->entries[i].ready = true;
            m->n++;
        }
    }
    return SP_OK;
}

static uint64_t sp_ctl_hub_mpi_bound(const sp__ctl_hub_backend_t *b, const sp__ctl_hub_t *hub,
                                     unsigned pass, uint64_t wait_ns)
{
    const sp_ctl_hub_mpi_t *m = sp_container_of(b, const sp_ctl_hub_mpi_t, base);
    uint64_t pause = SP__CTL_PROBE_MIN_NS;

    (void)hub;
    if (m->n == 0)
        return wait_ns;
    if (pass == 0)
        return 0;
    for (unsigned k = 1; k < pass && pause < SP__CTL_PROBE_MAX_NS; k++)
        pause *= 2;
    return SP_MIN(wait_ns, SP_MIN(pause, (uint64_t)SP__CTL_PROBE_MAX_NS));
}

/* Nothing to wait on: prepare marked the conns. */
static sp_status_t sp_ctl_hub_mpi_wait(sp__ctl_hub_backend_t *b, sp__ctl_hub_t *hub,
                                       uint64_t wait_ns)
{
    (void)b;
    (void)hub;
    (void)wait_ns;
    return SP_OK;
}

static void sp_ctl_hub_mpi_destroy(sp__ctl_hub_backend_t *b) { sp__free(sp_ctl_hub_mpi(b)); }

static const sp__ctl_hub_ops_t sp_ctl_hub_mpi_ops = {
    .size = sizeof(sp__ctl_hub_ops_t),
    .name = "mpi",
    .prepare = sp_ctl_hub_mpi_prepare,
    .bound = sp_ctl_hub_mpi_bound,
    .wait = sp_ctl_hub_mpi_wait,
    .destroy = sp_ctl_hub_mpi_destroy,
};

sp_status_t sp__ctl_hub_mpi_create(sp__ctl_hub_backend_t **b_p)
{
    sp_ctl_hub_mpi_t *m = sp__calloc(1, sizeof(*m));

    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "control hub: out of memory");
    m->base.ops = &sp_ctl_hub_mpi_ops;
    *b_p = &m->base;
    return SP_OK;
}
