/*
 * The offer policy of `spate run --master mesos://...`: which Mesos offers
 * get executors and with which resources. Pure functions on the offers'
 * JSON (jansson), so that the policy is tested without a master.
 */
#ifndef SPATE_LAUNCHER_OFFERS_H
#define SPATE_LAUNCHER_OFFERS_H

#include <spate/common.h>

#include <jansson.h>
#include <stdint.h>

/* An agent whose executors failed this many times gets no more of them. */
#define SP__OFFER_MAX_AGENT_FAILURES 2

/* ------------------------------------------------------------------------ */
/* Attribute constraints                                                     */
/* ------------------------------------------------------------------------ */

typedef struct sp__offer_constraints sp__offer_constraints_t;

/*
 * Parses offers.constraints: "name:v1,v2;name2:v" (spaces around names and
 * values are ignored; "name" or "name:" alone asks only that the attribute
 * exists). NULL or "" gives an empty set, which every offer meets. Returns
 * SP_ERR_BAD_CONF naming the broken part, or SP_ERR_NOMEM. *c_p is owned by
 * the caller.
 */
sp_status_t sp__offer_constraints_parse(const char *text, sp__offer_constraints_t **c_p);

/* Accepts NULL. */
void sp__offer_constraints_destroy(sp__offer_constraints_t *c);

/*
 * Whether an offer's "attributes" array (NULL: none) meets every
 * constraint, like Spark's Mesos backend: an attribute named by a
 * constraint must exist; with values, a TEXT attribute must equal one of
 * them, a SCALAR must be at least one of them, a RANGES attribute must
 * contain one of them, and a SET must hold all of them. An attribute of
 * another or a malformed type does not match. c NULL matches everything.
 */
bool sp__offer_constraints_match(const sp__offer_constraints_t *c, const json_t *attributes);

/* ------------------------------------------------------------------------ */
/* Sizing                                                                    */
/* ------------------------------------------------------------------------ */

/* mem (MB) one executor asks for: memory + max(10% of it, 384 MiB), rounded up. */
double sp__offer_executor_mem(uint64_t memory_bytes);

/*
 * Executors to run: requested, capped by max_executors and by max_cores /
 * cores (a cap of 0 is none). SP_ERR_BAD_CONF, saying which cap, when the
 * caps leave none; SP_ERR_INVALID_PARAM when requested or cores is 0.
 */
sp_status_t sp__offer_wanted(uint32_t requested, uint32_t cores, int64_t max_cores,
                             int64_t max_executors, uint32_t *wanted_p);

/* ------------------------------------------------------------------------ */
/* One offer                                                                 */
/* ------------------------------------------------------------------------ */

/* What one executor needs from an offer. */
typedef struct sp__offer_need {
    double cpus;                                /* per executor */
    double mem;                                 /* MB per executor, overhead included */
    const sp__offer_constraints_t *constraints; /* NULL: none */
} sp__offer_need_t;

typedef enum sp__offer_verdict {
    SP_OFFER_LAUNCH = 0,       /* launch plan.executors executors */
    SP_OFFER_MALFORMED = 1,    /* fields missing or of the wrong type */
    SP_OFFER_UNNEEDED = 2,     /* no executor is wanted now */
    SP_OFFER_AGENT_FAILED = 3, /* the agent had SP__OFFER_MAX_AGENT_FAILURES failed executors */
    SP_OFFER_CONSTRAINTS = 4,  /* the agent's attributes fail offers.constraints */
    SP_OFFER_TOO_SMALL = 5,    /* not enough cpus or mem for one executor */
} sp__offer_verdict_t;

typedef struct sp__offer_plan {
    sp__offer_verdict_t verdict;
    unsigned executors; /* launched from this offer (SP_OFFER_LAUNCH: >= 1) */
    /*
     * SP_OFFER_LAUNCH: an array of `executors` arrays, each the resources
     * of one executor: copies of the offered resource objects (role,
     * reservations, allocation_info and every other field kept) with only
     * their scalar amounts changed. NULL otherwise. Owned by the plan.
     */
    json_t *resources;
    char why[200]; /* every other verdict: why, for the log */
} sp__offer_plan_t;

/*
 * Decides one offer, in this order: malformed (no id, agent_id or
 * resources array), unneeded (room == 0: executors still wanted),
 * failed agent (agent_failures >= SP__OFFER_MAX_AGENT_FAILURES),
 * constraints, then as many executors as its cpus and mem hold, at most
 * room. Amounts are counted in thousandths, as Mesos rounds them; resources
 * with a reservation are used before unreserved ones. Only SP_ERR_NOMEM is
 * an error; every verdict is SP_OK with *plan_p filled (clear it after).
 */
sp_status_t sp__offer_plan(const json_t *offer, const sp__offer_need_t *need, unsigned room,
                           unsigned agent_failures, sp__offer_plan_t *plan_p);

/* Frees what a plan holds; accepts a zeroed plan. */
void sp__offer_plan_clear(sp__offer_plan_t *plan);

/* Short name of a verdict ("too small"). */
const char *sp__offer_verdict_str(sp__offer_verdict_t verdict);

/* The offer's id.value and agent_id.value; NULL when missing or not strings. */
const char *sp__offer_id(const json_t *offer);
const char *sp__offer_agent_id(const json_t *offer);

/* The sum of the offer's SCALAR resources called name (0 when none). */
double sp__offer_scalar(const json_t *offer, const char *name);

#endif /* SPATE_LAUNCHER_OFFERS_H */
