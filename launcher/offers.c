/*
 * The offer policy of Mesos mode, modelled on Spark's coarse-grained Mesos
 * backend: an executor needs executor.cores cpus and memory.executor plus
 * an overhead of max(10%, 384 MiB) mem; one offer may hold several; an
 * agent that saw SP__OFFER_MAX_AGENT_FAILURES executors fail gets none;
 * offers.constraints filters agents by attribute.
 *
 * Everything here is a pure function of its arguments (jansson values in,
 * a plan out), which is what makes the policy testable without a master;
 * the scheduler (mesos.c) owns the state: executors wanted, failures per
 * agent, and what it does with a plan (ACCEPT or DECLINE).
 *
 * Amounts are handled in thousandths (int64), as Mesos itself rounds
 * scalars to three decimals, so that taking 1.1 cpus three times out of
 * 3.3 leaves exactly 0 and not -4e-16. Launch resources are deep copies of
 * the offered objects with only "scalar.value" rewritten: a resource's
 * role, reservations, allocation_info, disk or revocable fields are part of
 * its identity to the master, which refuses a task whose resources it did
 * not offer.
 */
#include "offers.h"

#include "common_int.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Constraints                                                               */
/* ------------------------------------------------------------------------ */

typedef struct sp_constraint {
    char *name;
    char **values;
    size_t nvalues;
} sp_constraint_t;

struct sp__offer_constraints {
    sp_constraint_t *items;
    size_t n;
};

void sp__offer_constraints_destroy(sp__offer_constraints_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++) {
        for (size_t v = 0; v < c->items[i].nvalues; v++)
            sp__free(c->items[i].values[v]);
        sp__free(c->items[i].values);
        sp__free(c->items[i].name);
    }
    sp__free(c->items);
    sp__free(c);
}

/* A copy of [b, e) without the spaces around it. */
static char *sp_trim_dup(const char *b, const char *e)
{
    char *s;

    while (b < e && isspace((unsigned char)*b))
        b++;
    while (e > b && isspace((unsigned char)e[-1]))
        e--;
    if ((s = sp__malloc((size_t)(e - b) + 1)) == NULL)
        return NULL;
    memcpy(s, b, (size_t)(e - b));
    s[e - b] = '\0';
    return s;
}

/* Parses one "name[:v1,v2]" into c's next item. */
static sp_status_t sp_constraint_parse(sp__offer_constraints_t *c, const char *b, const char *e,
                                       const char *text)
{
    const char *colon = memchr(b, ':', (size_t)(e - b));
    sp_constraint_t *it = &c->items[c->n];

    if ((it->name = sp_trim_dup(b, colon != NULL ? colon : e)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for offers.constraints");
    c->n++;
    if (it->name[0] == '\0')
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "offers.constraints '%s': '%.*s' has no attribute name (want "
                        "name:value,value;name2:value)",
                        text, (int)(e - b), b);
    if (colon == NULL)
        return SP_OK;
    for (const char *v = colon + 1; v <= e;) {
        const char *comma = memchr(v, ',', (size_t)(e - v));
        const char *ve = comma != NULL ? comma : e;
        char *value = sp_trim_dup(v, ve);
        char **values;

        if (value == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for offers.constraints");
        if (value[0] == '\0') {
            sp__free(value); /* "a:" or "a:x,,y": nothing to match there */
        } else if ((values = sp__realloc(it->values, (it->nvalues + 1) * sizeof(*values))) ==
                   NULL) {
            sp__free(value);
            return SP_RAISE(SP_ERR_NOMEM, "no memory for offers.constraints");
        } else {
            it->values = values;
            it->values[it->nvalues++] = value;
        }
        v = ve + 1;
    }
    return SP_OK;
}

sp_status_t sp__offer_constraints_parse(const char *text, sp__offer_constraints_t **c_p)
{
    sp__offer_constraints_t *c;
    size_t parts = 1;
    sp_status_t st;

    if ((c = sp__calloc(1, sizeof(*c))) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for offers.constraints");
    if (text == NULL)
        text = "";
    for (const char *p = text; *p != '\0'; p++)
        parts += *p == ';';
    if ((c->items = sp__calloc(parts, sizeof(*c->items))) == NULL) {
        sp__free(c);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for offers.constraints");
    }
    for (const char *b = text; *b != '\0';) {
        const char *e = strchr(b, ';');
        const char *s;

        if (e == NULL)
            e = b + strlen(b);
        for (s = b; s < e && isspace((unsigned char)*s); s++)
            ;
        if (s < e && (st = sp_constraint_parse(c, b, e, text)) != SP_OK) {
            sp__offer_constraints_destroy(c);
            return st;
        }
        b = *e == ';' ? e + 1 : e;
    }
    *c_p = c;
    return SP_OK;
}

static bool sp_parse_double(const char *s, double *v_p)
{
    char *end;

    errno = 0;
    *v_p = strtod(s, &end);
    return errno == 0 && end != s && *end == '\0' && isfinite(*v_p);
}

static bool sp_parse_i64(const char *s, long long *v_p)
{
    char *end;

    errno = 0;
    *v_p = strtoll(s, &end, 10);
    return errno == 0 && end != s && *end == '\0';
}

static bool sp_value_matches(const json_t *attr, const sp_constraint_t *k)
{
    const char *type = json_string_value(json_object_get(attr, "type"));

    if (k->nvalues == 0)
        return true; /* only the attribute's presence was asked for */
    if (type == NULL)
        return false;
    if (strcmp(type, "TEXT") == 0) {
        const char *text =
            json_string_value(json_object_get(json_object_get(attr, "text"), "value"));
        for (size_t i = 0; text != NULL && i < k->nvalues; i++)
            if (strcmp(k->values[i], text) == 0)
                return true;
        return false;
    }
    if (strcmp(type, "SCALAR") == 0) {
        json_t *v = json_object_get(json_object_get(attr, "scalar"), "value");
        double want;
        if (!json_is_number(v))
            return false;
        for (size_t i = 0; i < k->nvalues; i++)
            if (sp_parse_double(k->values[i], &want) && want <= json_number_value(v))
                return true;
        return false;
    }
    if (strcmp(type, "RANGES") == 0) {
        json_t *ranges = json_object_get(json_object_get(attr, "ranges"), "range");
        for (size_t i = 0; i < k->nvalues; i++) {
            long long want;
            size_t r;
            json_t *range;
            if (!sp_parse_i64(k->values[i], &want))
                continue;
            json_array_foreach(ranges, r, range)
            {
                json_t *b = json_object_get(range, "begin"), *e = json_object_get(range, "end");
                if (json_is_integer(b) && json_is_integer(e) && json_integer_value(b) <= want &&
                    want <= json_integer_value(e))
                    return true;
            }
        }
        return false;
    }
    if (strcmp(type, "SET") == 0) {
        json_t *items = json_object_get(json_object_get(attr, "set"), "item");
        if (!json_is_array(items))
            return false;
        for (size_t i = 0; i < k->nvalues; i++) {
            bool found = false;
            size_t j;
            json_t *item;
            json_array_foreach(items, j, item)
            {
                if (json_is_string(item) && strcmp(json_string_value(item), k->values[i]) == 0)
                    found = true;
            }
            if (!found)
                return false;
        }
        return true;
    }
    return false;
}

bool sp__offer_constraints_match(const sp__offer_constraints_t *c, const json_t *attributes)
{
    for (size_t i = 0; c != NULL && i < c->n; i++) {
        const json_t *attr = NULL;
        size_t j;
        json_t *a;

        json_array_foreach(attributes, j, a)
        {
            const char *name = json_string_value(json_object_get(a, "name"));
            if (attr == NULL && name != NULL && strcmp(name, c->items[i].name) == 0)
                attr = a;
        }
        if (attr == NULL || !sp_value_matches(attr, &c->items[i]))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Sizing                                                                    */
/* ------------------------------------------------------------------------ */

double sp__offer_executor_mem(uint64_t memory_bytes)
{
    const uint64_t mib = 1ull << 20;
    uint64_t overhead = SP_MAX(memory_bytes / 10, 384 * mib);
    uint64_t mb = (memory_bytes + overhead + mib - 1) / mib; /* whole MB, rounded up */

    return (double)mb;
}

sp_status_t sp__offer_wanted(uint32_t requested, uint32_t cores, int64_t max_cores,
                             int64_t max_executors, uint32_t *wanted_p)
{
    uint32_t n = requested;

    if (requested == 0 || cores == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "Mesos mode needs at least one executor of at least one core (asked for "
                        "%u of %u)",
                        requested, cores);
    if (max_executors > 0 && (uint64_t)max_executors < n)
        n = (uint32_t)max_executors;
    if (max_cores > 0 && (uint64_t)max_cores / cores < n)
        n = (uint32_t)((uint64_t)max_cores / cores);
    if (n == 0)
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "offers.max_cores %lld is less than one executor's %u cores "
                        "(executor.cores)",
                        (long long)max_cores, cores);
    *wanted_p = n;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* One offer                                                                 */
/* ------------------------------------------------------------------------ */

const char *sp__offer_id(const json_t *offer)
{
    return json_string_value(json_object_get(json_object_get(offer, "id"), "value"));
}

const char *sp__offer_agent_id(const json_t *offer)
{
    return json_string_value(json_object_get(json_object_get(offer, "agent_id"), "value"));
}

const char *sp__offer_verdict_str(sp__offer_verdict_t verdict)
{
    switch (verdict) {
    case SP_OFFER_LAUNCH: return "launch";
    case SP_OFFER_MALFORMED: return "malformed";
    case SP_OFFER_UNNEEDED: return "unneeded";
    case SP_OFFER_AGENT_FAILED: return "failed agent";
    case SP_OFFER_CONSTRAINTS: return "constraints unmet";
    case SP_OFFER_TOO_SMALL: return "too small";
    }
    return "unknown";
}

/* The thousandths of a usable SCALAR resource called name; -1 when r is not one. */
static int64_t sp_res_millis(const json_t *r, const char *name)
{
    const char *n = json_string_value(json_object_get(r, "name"));
    const char *type = json_string_value(json_object_get(r, "type"));
    json_t *v = json_object_get(json_object_get(r, "scalar"), "value");
    double d;

    if (n == NULL || strcmp(n, name) != 0 || type == NULL || strcmp(type, "SCALAR") != 0 ||
        !json_is_number(v))
        return -1;
    d = json_number_value(v);
    if (!isfinite(d) || d <= 0 || d > 1e15)
        return -1;
    return (int64_t)llround(d * 1000.0);
}

static int64_t sp_total_millis(const json_t *resources, const char *name)
{
    int64_t total = 0, m;
    size_t i;
    json_t *r;

    json_array_foreach(resources, i, r)
    {
        if ((m = sp_res_millis(r, name)) > 0)
            total += m;
    }
    return total;
}

double sp__offer_scalar(const json_t *offer, const char *name)
{
    return (double)sp_total_millis(json_object_get(offer, "resources"), name) / 1000.0;
}

/* Reserved resources (reservations, or a role other than "*") go first, as in Spark. */
static bool sp_res_reserved(const json_t *r)
{
    const char *role = json_string_value(json_object_get(r, "role"));

    return json_array_size(json_object_get(r, "reservations")) > 0 ||
           json_is_object(json_object_get(r, "reservation")) ||
           (role != NULL && strcmp(role, "*") != 0);
}

/*
 * Moves want thousandths of name out of remaining (copies of the offered
 * objects) into out: a copy of each object drawn from, holding what was
 * drawn from it. The caller checked that remaining holds enough.
 */
static sp_status_t sp_res_take(json_t *remaining, const char *name, int64_t want, json_t *out)
{
    for (int pass = 0; pass < 2 && want > 0; pass++) {
        size_t i;
        json_t *r;

        json_array_foreach(remaining, i, r)
        {
            int64_t have = sp_res_millis(r, name), take;
            json_t *copy, *scalar;

            if (want == 0)
                break;
            if (have <= 0 || sp_res_reserved(r) != (pass == 0))
                continue;
            take = SP_MIN(have, want);
            if ((copy = json_deep_copy(r)) == NULL ||
                (scalar = json_object_get(copy, "scalar")) == NULL ||
                json_object_set_new(scalar, "value", json_real((double)take / 1000.0)) != 0 ||
                json_array_append_new(out, copy) != 0 ||
                json_object_set_new(json_object_get(r, "scalar"), "value",
                                    json_real((double)(have - take) / 1000.0)) != 0)
                return SP_RAISE(SP_ERR_NOMEM, "no memory for launch resources");
            want -= take;
        }
    }
    return want == 0
               ? SP_OK
               : SP_RAISE(SP_ERR_INTERNAL, "%s: %lld thousandths short", name, (long long)want);
}

SP_PRINTF(3, 4)
static sp_status_t sp_plan_decline(sp__offer_plan_t *plan, sp__offer_verdict_t verdict,
                                   const char *fmt, ...)
{
    va_list ap;

    plan->verdict = verdict;
    va_start(ap, fmt);
    vsnprintf(plan->why, sizeof(plan->why), fmt, ap);
    va_end(ap);
    return SP_OK;
}

sp_status_t sp__offer_plan(const json_t *offer, const sp__offer_need_t *need, unsigned room,
                           unsigned agent_failures, sp__offer_plan_t *plan_p)
{
    sp__offer_plan_t plan = {0};
    const json_t *resources = json_object_get(offer, "resources");
    int64_t cpus, mem, need_cpus, need_mem;
    json_t *remaining = NULL, *all = NULL;
    uint64_t n;
    sp_status_t st;

    *plan_p = plan;
    if (sp__offer_id(offer) == NULL)
        return sp_plan_decline(plan_p, SP_OFFER_MALFORMED, "the offer has no id.value");
    if (sp__offer_agent_id(offer) == NULL)
        return sp_plan_decline(plan_p, SP_OFFER_MALFORMED, "the offer has no agent_id.value");
    if (!json_is_array(resources))
        return sp_plan_decline(plan_p, SP_OFFER_MALFORMED, "the offer has no resources array");
    if (room == 0)
        return sp_plan_decline(plan_p, SP_OFFER_UNNEEDED, "every executor wanted is running");
    if (agent_failures >= SP__OFFER_MAX_AGENT_FAILURES)
        return sp_plan_decline(plan_p, SP_OFFER_AGENT_FAILED,
                               "%u executors failed on agent %s already", agent_failures,
                               sp__offer_agent_id(offer));
    if (!sp__offer_constraints_match(need->constraints, json_object_get(offer, "attributes")))
        return sp_plan_decline(plan_p, SP_OFFER_CONSTRAINTS,
                               "agent %s's attributes do not meet offers.constraints",
                               sp__offer_agent_id(offer));
    cpus = sp_total_millis(resources, "cpus");
    mem = sp_total_millis(resources, "mem");
    need_cpus = (int64_t)llround(need->cpus * 1000.0);
    need_mem = (int64_t)llround(need->mem * 1000.0);
    n = need_cpus > 0 && need_mem > 0 ? (uint64_t)SP_MIN(cpus / need_cpus, mem / need_mem) : 0;
    n = SP_MIN(n, (uint64_t)room);
    if (n == 0)
        return sp_plan_decline(plan_p, SP_OFFER_TOO_SMALL,
                               "%.3f cpus and %.0f MB mem offered; an executor needs %.3f cpus "
                               "and %.0f MB",
                               (double)cpus / 1000.0, (double)mem / 1000.0, need->cpus, need->mem);
    if ((remaining = json_deep_copy(resources)) == NULL || (all = json_array()) == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for launch resources");
        goto err;
    }
    for (uint64_t e = 0; e < n; e++) {
        json_t *mine = json_array();
        if (mine == NULL || json_array_append_new(all, mine) != 0) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for launch resources");
            goto err;
        }
        if ((st = sp_res_take(remaining, "cpus", need_cpus, mine)) != SP_OK ||
            (st = sp_res_take(remaining, "mem", need_mem, mine)) != SP_OK)
            goto err;
    }
    json_decref(remaining);
    plan_p->verdict = SP_OFFER_LAUNCH;
    plan_p->executors = (unsigned)n;
    plan_p->resources = all;
    return SP_OK;
err:
    json_decref(all);
    json_decref(remaining);
    return st;
}

void sp__offer_plan_clear(sp__offer_plan_t *plan)
{
    json_decref(plan->resources);
    plan->resources = NULL;
    plan->executors = 0;
}
