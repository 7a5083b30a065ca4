/*
 * Machine topology on hwloc 2: the NUMA nodes, cores and caches spate plans
 * executors on, thread and memory binding, and the executor plan itself.
 *
 * Everything spate asks about a node is computed once, at create, into a
 * small array (counts, cpuset text, which node each core belongs to), so the
 * getters are plain loads and a topology is safe to share between threads:
 * hwloc allows concurrent readers and binding calls on a loaded topology.
 *
 * A "core" is an hwloc Core object; a topology that has none (a synthetic
 * description without a core level) counts each PU as a core, so that a plan
 * always has something to run on. hwloc 2 always reports at least one NUMA
 * node; if it ever reports none, the whole machine is taken as one node.
 * Every core belongs to exactly one node for planning: the first node whose
 * cpuset holds all its PUs (nodes that share a cpuset, as DDR and HBM nodes
 * do, would otherwise plan the same cores twice).
 *
 * Binding works only when the topology describes the running machine;
 * synthetic and XML topologies answer SP_ERR_UNSUPPORTED.
 */
#include "topology_int.h"

#include "common_int.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

typedef struct sp_topology_node {
    sp_numa_info_t info;           /* info.cpuset points at cpuset_text */
    char *cpuset_text;             /* owned */
    hwloc_const_cpuset_t cpuset;   /* owned by hwloc */
    hwloc_const_nodeset_t nodeset; /* owned by hwloc */
    unsigned plan_cores;           /* cores that plan on this node (see core_numa) */
} sp_topology_node_t;

struct sp_topology {
    hwloc_topology_t hw;
    bool this_system;
    hwloc_obj_type_t core_type; /* HWLOC_OBJ_CORE, or HWLOC_OBJ_PU when there are no cores */
    unsigned numa_count;
    unsigned package_count;
    unsigned core_count;
    unsigned pu_count;
    uint64_t cache_bytes[3]; /* L1 data/unified, L2, L3; 0 when absent */
    sp_topology_node_t *nodes;
    unsigned *core_numa; /* core logical index -> node index */
};

/* hwloc answers counts as int and -1 for "several depths"; spate wants unsigned. */
static unsigned sp_topology_nbobjs(hwloc_topology_t hw, hwloc_obj_type_t type)
{
    int n = hwloc_get_nbobjs_by_type(hw, type);

    return n > 0 ? (unsigned)n : 0;
}

/* The bitmap in list syntax ("0-3,8-11") in memory from sp__malloc, or NULL. */
static char *sp_topology_bitmap_text(hwloc_const_bitmap_t set)
{
    int len = hwloc_bitmap_list_snprintf(NULL, 0, set);
    char *text;

    if (len < 0)
        return NULL;
    text = sp__malloc((size_t)len + 1);
    if (text != NULL)
        hwloc_bitmap_list_snprintf(text, (size_t)len + 1, set);
    return text;
}

/* Human name of a source for messages. */
static const char *sp_topology_source_name(const char *source)
{
    return source == NULL || source[0] == '\0' ? "this machine" : source;
}

/* Points hwloc at the source and loads it; every refusal is a bad configuration. */
static sp_status_t sp_topology_load(hwloc_topology_t hw, const char *source)
{
    static const char synthetic[] = "synthetic:", xml[] = "xml:";
    int err;

    if (source == NULL || source[0] == '\0') {
        /* This machine; hwloc itself honours HWLOC_SYNTHETIC and HWLOC_XMLFILE. */
    } else if (strncmp(source, synthetic, sizeof(synthetic) - 1) == 0) {
        if (hwloc_topology_set_synthetic(hw, source + sizeof(synthetic) - 1) != 0) {
            err = errno;
            return SP_RAISE(SP_ERR_BAD_CONF,
                            "topology source '%s': hwloc rejects the synthetic description: %s "
                            "(errno %d)",
                            source, strerror(err), err);
        }
    } else if (strncmp(source, xml, sizeof(xml) - 1) == 0) {
        if (hwloc_topology_set_xml(hw, source + sizeof(xml) - 1) != 0) {
            err = errno;
            return SP_RAISE(SP_ERR_BAD_CONF,
                            "topology source '%s': hwloc cannot read the XML file: %s (errno %d)",
                            source, strerror(err), err);
        }
    } else {
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "topology source '%s' is none of \"\" (this machine), synthetic:DESC or "
                        "xml:PATH",
                        source);
    }
    if (hwloc_topology_load(hw) != 0) {
        err = errno;
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "topology source '%s': hwloc cannot load it: %s (errno %d)",
                        sp_topology_source_name(source), strerror(err), err);
    }
    return SP_OK;
}

/* Fills topo->nodes[i] (except the cpuset text) from hwloc's NUMA node i or the machine. */
static void sp_topology_describe_node(sp_topology_t *topo, unsigned i)
{
    sp_topology_node_t *node = &topo->nodes[i];
    hwloc_obj_t obj = hwloc_get_obj_by_type(topo->hw, HWLOC_OBJ_NUMANODE, i);
    int pus;

    if (obj != NULL) {
        node->info.os_index = obj->os_index;
        node->info.memory_bytes = obj->attr->numanode.local_memory;
    } else {
        obj = hwloc_get_root_obj(topo->hw);
        node->info.os_index = 0;
        node->info.memory_bytes = obj->total_memory;
    }
    node->info.index = i;
    node->cpuset = obj->cpuset;
    node->nodeset = obj->nodeset;
    pus = hwloc_bitmap_weight(obj->cpuset);
    node->info.pus = pus > 0 ? (unsigned)pus : 0;
    for (unsigned c = 0; c < topo->core_count; c++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(topo->hw, topo->core_type, c);
        if (hwloc_bitmap_isincluded(core->cpuset, obj->cpuset))
            node->info.cores++;
    }
}

/* Assigns every core to one node for planning (see the note at the top). */
static void sp_topology_assign_cores(sp_topology_t *topo)
{
    for (unsigned c = 0; c < topo->core_count; c++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(topo->hw, topo->core_type, c);
        unsigned owner = topo->numa_count, touching = topo->numa_count;

        for (unsigned i = 0; i < topo->numa_count && owner == topo->numa_count; i++) {
            if (hwloc_bitmap_isincluded(core->cpuset, topo->nodes[i].cpuset))
                owner = i;
            else if (touching == topo->numa_count &&
                     hwloc_bitmap_intersects(core->cpuset, topo->nodes[i].cpuset))
                touching = i;
        }
        /* A core split across nodes goes with the first node it touches. */
        if (owner == topo->numa_count)
            owner = touching < topo->numa_count ? touching : 0;
        topo->core_numa[c] = owner;
        topo->nodes[owner].plan_cores++;
    }
}

static uint64_t sp_topology_first_cache(hwloc_topology_t hw, hwloc_obj_type_t type)
{
    hwloc_obj_t obj = hwloc_get_obj_by_type(hw, type, 0);

    return obj != NULL ? obj->attr->cache.size : 0;
}

sp_status_t sp_topology_create(const char *source, sp_topology_t **topo_p)
{
    const char *name = sp_topology_source_name(source);
    sp_topology_t *topo;
    unsigned hw_numa;
    sp_status_t st;

    topo = sp__calloc(1, sizeof(*topo));
    if (topo == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the topology of %s", name);
    if (hwloc_topology_init(&topo->hw) != 0) {
        st = SP_RAISE(SP_ERR_NOMEM, "hwloc cannot initialise a topology for %s", name);
        goto err_free_topo;
    }
    st = sp_topology_load(topo->hw, source);
    if (st != SP_OK)
        goto err_destroy_hwloc;

    topo->this_system = hwloc_topology_is_thissystem(topo->hw) != 0;
    topo->package_count = sp_topology_nbobjs(topo->hw, HWLOC_OBJ_PACKAGE);
    topo->pu_count = sp_topology_nbobjs(topo->hw, HWLOC_OBJ_PU);
    topo->core_count = sp_topology_nbobjs(topo->hw, HWLOC_OBJ_CORE);
    topo->core_type = HWLOC_OBJ_CORE;
    if (topo->core_count == 0) {
        topo->core_type = HWLOC_OBJ_PU;
        topo->core_count = topo->pu_count;
    }
    topo->cache_bytes[0] = sp_topology_first_cache(topo->hw, HWLOC_OBJ_L1CACHE);
    topo->cache_bytes[1] = sp_topology_first_cache(topo->hw, HWLOC_OBJ_L2CACHE);
    topo->cache_bytes[2] = sp_topology_first_cache(topo->hw, HWLOC_OBJ_L3CACHE);
    hw_numa = sp_topology_nbobjs(topo->hw, HWLOC_OBJ_NUMANODE);
    topo->numa_count = hw_numa > 0 ? hw_numa : 1;

    topo->nodes = sp__calloc(topo->numa_count, sizeof(*topo->nodes));
    if (topo->nodes == NULL) {
        st =
            SP_RAISE(SP_ERR_NOMEM, "no memory for the %u NUMA nodes of %s", topo->numa_count, name);
        goto err_destroy_hwloc;
    }
    topo->core_numa =
        sp__calloc(topo->core_count > 0 ? topo->core_count : 1, sizeof(*topo->core_numa));
    if (topo->core_numa == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the %u cores of %s", topo->core_count, name);
        goto err_free_nodes;
    }
    for (unsigned i = 0; i < topo->numa_count; i++) {
        sp_topology_describe_node(topo, i);
        topo->nodes[i].cpuset_text = sp_topology_bitmap_text(topo->nodes[i].cpuset);
        if (topo->nodes[i].cpuset_text == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for the cpuset of NUMA node %u of %s", i, name);
            goto err_free_texts;
        }
        topo->nodes[i].info.cpuset = topo->nodes[i].cpuset_text;
    }
    sp_topology_assign_cores(topo);
    *topo_p = topo;
    return SP_OK;

err_free_texts:
    for (unsigned i = 0; i < topo->numa_count; i++)
        sp__free(topo->nodes[i].cpuset_text);
    sp__free(topo->core_numa);
err_free_nodes:
    sp__free(topo->nodes);
err_destroy_hwloc:
    hwloc_topology_destroy(topo->hw);
err_free_topo:
    sp__free(topo);
    return st;
}

void sp_topology_destroy(sp_topology_t *topo)
{
    if (topo == NULL)
        return;
    for (unsigned i = 0; i < topo->numa_count; i++)
        sp__free(topo->nodes[i].cpuset_text);
    sp__free(topo->core_numa);
    sp__free(topo->nodes);
    hwloc_topology_destroy(topo->hw);
    sp__free(topo);
}

bool sp_topology_is_this_system(const sp_topology_t *topo) { return topo->this_system; }
unsigned sp_topology_numa_count(const sp_topology_t *topo) { return topo->numa_count; }
unsigned sp_topology_package_count(const sp_topology_t *topo) { return topo->package_count; }
unsigned sp_topology_core_count(const sp_topology_t *topo) { return topo->core_count; }
unsigned sp_topology_pu_count(const sp_topology_t *topo) { return topo->pu_count; }

uint64_t sp_topology_cache_bytes(const sp_topology_t *topo, unsigned level)
{
    return level >= 1 && level <= 3 ? topo->cache_bytes[level - 1] : 0;
}

sp_status_t sp_topology_numa_info(const sp_topology_t *topo, unsigned index, sp_numa_info_t *info_p)
{
    if (index >= topo->numa_count)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "NUMA node %u is out of range (the topology has %u)",
                        index, topo->numa_count);
    *info_p = topo->nodes[index].info;
    return SP_OK;
}

sp_status_t sp_topology_core_numa(const sp_topology_t *topo, unsigned core_index, unsigned *numa_p)
{
    if (core_index >= topo->core_count)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "core %u is out of range (the topology has %u)",
                        core_index, topo->core_count);
    *numa_p = topo->core_numa[core_index];
    return SP_OK;
}

hwloc_topology_t sp__topology_hwloc(const sp_topology_t *topo) { return topo->hw; }

hwloc_const_nodeset_t sp__topology_numa_nodeset(const sp_topology_t *topo, unsigned numa_index)
{
    SP_ASSERT(numa_index < topo->numa_count);
    return topo->nodes[numa_index].nodeset;
}

/* Binding only means something on the machine the topology describes. */
static sp_status_t sp_topology_check_this_system(const sp_topology_t *topo, const char *what)
{
    if (!topo->this_system)
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "cannot %s: the topology is not this machine (synthetic or XML)", what);
    return SP_OK;
}

/* Binds the calling thread to set; the message names what (a core, a node) and errno. */
static sp_status_t sp_topology_bind_thread_set(const sp_topology_t *topo, hwloc_const_cpuset_t set,
                                               const char *what, unsigned index)
{
    char pus[256];
    int err;

    if (hwloc_set_cpubind(topo->hw, set, HWLOC_CPUBIND_THREAD) == 0)
        return SP_OK;
    err = errno;
    hwloc_bitmap_list_snprintf(pus, sizeof(pus), set);
    return SP_RAISE(SP_ERR_UNSUPPORTED,
                    "cannot bind the calling thread to %s %u (PUs %s): %s (errno %d)", what, index,
                    pus, strerror(err), err);
}

sp_status_t sp_topology_bind_thread_core(const sp_topology_t *topo, unsigned core_index)
{
    hwloc_obj_t core;
    sp_status_t st;

    if (core_index >= topo->core_count)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot bind to core %u: out of range (the topology has %u cores)",
                        core_index, topo->core_count);
    st = sp_topology_check_this_system(topo, "bind a thread to a core");
    if (st != SP_OK)
        return st;
    core = hwloc_get_obj_by_type(topo->hw, topo->core_type, core_index);
    return sp_topology_bind_thread_set(topo, core->cpuset, "core", core_index);
}

sp_status_t sp_topology_bind_thread_numa(const sp_topology_t *topo, unsigned numa_index)
{
    sp_status_t st;

    if (numa_index >= topo->numa_count)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot bind to NUMA node %u: out of range (the topology has %u nodes)",
                        numa_index, topo->numa_count);
    if (topo->nodes[numa_index].info.pus == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot bind to NUMA node %u: it has no PUs (memory-only node)",
                        numa_index);
    st = sp_topology_check_this_system(topo, "bind a thread to a NUMA node");
    if (st != SP_OK)
        return st;
    return sp_topology_bind_thread_set(topo, topo->nodes[numa_index].cpuset, "NUMA node",
                                       numa_index);
}

sp_status_t sp_topology_last_core(const sp_topology_t *topo, unsigned *core_p)
{
    hwloc_bitmap_t set;
    hwloc_obj_t pu, core;
    sp_status_t st;
    int err, first;

    st = sp_topology_check_this_system(topo, "tell where the thread ran");
    if (st != SP_OK)
        return st;
    set = hwloc_bitmap_alloc();
    if (set == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a cpuset");
    if (hwloc_get_last_cpu_location(topo->hw, set, HWLOC_CPUBIND_THREAD) != 0) {
        err = errno;
        st = SP_RAISE(SP_ERR_UNSUPPORTED,
                      "cannot tell where the calling thread last ran: %s (errno %d)", strerror(err),
                      err);
        goto out_free_set;
    }
    first = hwloc_bitmap_first(set);
    pu = first >= 0 ? hwloc_get_pu_obj_by_os_index(topo->hw, (unsigned)first) : NULL;
    core = pu;
    if (pu != NULL && topo->core_type != HWLOC_OBJ_PU)
        core = hwloc_get_ancestor_obj_by_type(topo->hw, topo->core_type, pu);
    if (core == NULL) {
        st = SP_RAISE(SP_ERR_UNSUPPORTED,
                      "the calling thread last ran on PU %d, which is not in the topology", first);
        goto out_free_set;
    }
    *core_p = core->logical_index;
out_free_set:
    hwloc_bitmap_free(set);
    return st;
}

sp_status_t sp_topology_bind_memory(const sp_topology_t *topo, void *addr, size_t len,
                                    unsigned numa_index)
{
    sp_status_t st;
    int err;

    if (numa_index >= topo->numa_count)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "cannot bind memory to NUMA node %u: out of range (the topology has %u)",
                        numa_index, topo->numa_count);
    if (addr == NULL && len != 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "cannot bind %zu bytes at NULL", len);
    st = sp_topology_check_this_system(topo, "bind memory");
    if (st != SP_OK || len == 0)
        return st;
    if (hwloc_set_area_membind(topo->hw, addr, len, topo->nodes[numa_index].nodeset,
                               HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET) != 0) {
        err = errno;
        return SP_RAISE(SP_ERR_UNSUPPORTED,
                        "cannot bind %zu bytes at %p to NUMA node %u (os %u): %s (errno %d)", len,
                        addr, numa_index, topo->nodes[numa_index].info.os_index, strerror(err),
                        err);
    }
    return SP_OK;
}

sp_status_t sp_topology_memory_location(const sp_topology_t *topo, const void *addr, size_t len,
                                        unsigned *numa_p)
{
    hwloc_nodeset_t set;
    sp_status_t st;
    int err, weight;

    if (addr == NULL || len == 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "no pages at %p (%zu bytes) to locate", addr, len);
    st = sp_topology_check_this_system(topo, "locate memory");
    if (st != SP_OK)
        return st;
    set = hwloc_bitmap_alloc();
    if (set == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a nodeset");
    if (hwloc_get_area_memlocation(topo->hw, addr, len, set, HWLOC_MEMBIND_BYNODESET) != 0) {
        err = errno;
        st = SP_RAISE(SP_ERR_UNSUPPORTED, "cannot locate %zu bytes at %p: %s (errno %d)", len, addr,
                      strerror(err), err);
        goto out_free_set;
    }
    weight = hwloc_bitmap_weight(set);
    if (weight != 1) {
        char nodes[128];
        hwloc_bitmap_list_snprintf(nodes, sizeof(nodes), set);
        st = SP_RAISE(SP_ERR_NOT_FOUND,
                      "%zu bytes at %p are on %s NUMA node (os nodes '%s'), not on one", len, addr,
                      weight == 0 ? "no known" : "more than one", nodes);
        goto out_free_set;
    }
    for (unsigned i = 0; i < topo->numa_count; i++) {
        if (hwloc_bitmap_isincluded(set, topo->nodes[i].nodeset)) {
            *numa_p = i;
            goto out_free_set;
        }
    }
    st = SP_RAISE(SP_ERR_NOT_FOUND,
                  "%zu bytes at %p are on os node %d, which is not in the topology", len, addr,
                  hwloc_bitmap_first(set));
out_free_set:
    hwloc_bitmap_free(set);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Executor plan                                                            */
/* ------------------------------------------------------------------------ */

/* Memory of the running machine; the fallback for a node of unknown size. */
static uint64_t sp_topology_machine_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);

    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

/*
 * Gives one more executor to the node whose executors would otherwise have
 * the most cores each (the largest node first), never more executors than a
 * node has cores. False when every core has its own executor already.
 */
static bool sp_topology_split_one(const sp_topology_t *topo, unsigned *execs)
{
    unsigned best = topo->numa_count;

    for (unsigned i = 0; i < topo->numa_count; i++) {
        const sp_topology_node_t *n = &topo->nodes[i];
        if (execs[i] == 0 || execs[i] >= n->plan_cores)
            continue;
        if (best == topo->numa_count) {
            best = i;
            continue;
        }
        /* Compare cores per executor, n/e, by cross-multiplying; ties go to the larger node. */
        uint64_t mine = (uint64_t)n->plan_cores * execs[best];
        uint64_t theirs = (uint64_t)topo->nodes[best].plan_cores * execs[i];
        if (mine > theirs || (mine == theirs && n->plan_cores > topo->nodes[best].plan_cores))
            best = i;
    }
    if (best == topo->numa_count)
        return false;
    execs[best]++;
    return true;
}

/*
 * Fills the slots of node i, from slots[0]: its cores in logical order cut
 * into execs contiguous runs whose sizes differ by at most one.
 */
static sp_status_t sp_topology_fill_node_slots(const sp_topology_t *topo, unsigned i,
                                               unsigned execs, uint64_t executor_bytes,
                                               hwloc_bitmap_t set, sp_executor_slot_t *slots)
{
    const sp_topology_node_t *node = &topo->nodes[i];
    unsigned base = node->plan_cores / execs, extra = node->plan_cores % execs;
    unsigned slot = 0, in_slot = 0;
    uint64_t memory = executor_bytes;

    if (memory == 0) {
        uint64_t node_bytes = node->info.memory_bytes;
        if (node_bytes == 0)
            node_bytes = sp_topology_machine_memory();
        /* 3/4 without overflowing for nodes near 2^64 bytes. */
        memory = (node_bytes / 4 * 3 + node_bytes % 4 * 3 / 4) / execs;
    }
    hwloc_bitmap_zero(set);
    for (unsigned c = 0; c < topo->core_count && slot < execs; c++) {
        hwloc_obj_t core;
        unsigned want = base + (slot < extra ? 1 : 0);

        if (topo->core_numa[c] != i)
            continue;
        core = hwloc_get_obj_by_type(topo->hw, topo->core_type, c);
        hwloc_bitmap_or(set, set, core->cpuset);
        if (++in_slot < want)
            continue;
        slots[slot].cpuset = sp_topology_bitmap_text(set);
        if (slots[slot].cpuset == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for the cpuset of an executor on NUMA node %u",
                            i);
        slots[slot].numa_index = i;
        slots[slot].numa_os_index = node->info.os_index;
        slots[slot].cores = in_slot;
        slots[slot].memory_bytes = memory;
        slot++;
        in_slot = 0;
        hwloc_bitmap_zero(set);
    }
    SP_ASSERT(slot == execs);
    return SP_OK;
}

sp_status_t sp_topology_plan_executors(const sp_topology_t *topo, const sp_conf_t *conf,
                                       unsigned min_executors, sp_executor_plan_t **plan_p)
{
    uint64_t executor_bytes = 0;
    sp_executor_plan_t *plan;
    unsigned *execs, count = 0, target, first = 0;
    hwloc_bitmap_t set;
    sp_status_t st;

    if (conf != NULL) {
        st = sp_conf_get_size(conf, "memory.executor", &executor_bytes);
        if (st != SP_OK)
            return st;
    }
    if (topo->core_count == 0)
        return SP_RAISE(SP_ERR_NOT_FOUND, "the topology has no cores to plan executors on");

    execs = sp__calloc(topo->numa_count, sizeof(*execs));
    if (execs == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory to plan executors on %u NUMA nodes",
                        topo->numa_count);
    for (unsigned i = 0; i < topo->numa_count; i++) {
        execs[i] = topo->nodes[i].plan_cores > 0 ? 1 : 0;
        count += execs[i];
    }
    target = SP_MIN(SP_MAX(min_executors, count), topo->core_count);
    while (count < target && sp_topology_split_one(topo, execs))
        count++;

    plan = sp__calloc(1, sizeof(*plan));
    if (plan == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a plan of %u executors", count);
        goto err_free_execs;
    }
    plan->slots = sp__calloc(count, sizeof(*plan->slots));
    if (plan->slots == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a plan of %u executors", count);
        goto err_free_plan;
    }
    plan->count = count;
    set = hwloc_bitmap_alloc();
    if (set == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for a cpuset");
        goto err_free_slots;
    }
    for (unsigned i = 0; i < topo->numa_count; i++) {
        if (execs[i] == 0)
            continue;
        st = sp_topology_fill_node_slots(topo, i, execs[i], executor_bytes, set,
                                         &plan->slots[first]);
        if (st != SP_OK)
            goto err_free_set;
        first += execs[i];
    }
    hwloc_bitmap_free(set);
    sp__free(execs);
    *plan_p = plan;
    return SP_OK;

err_free_set:
    hwloc_bitmap_free(set);
err_free_slots:
    /* Slots not reached yet are zeroed by calloc; freeing their NULL text is harmless. */
    for (unsigned s = 0; s < count; s++)
        sp__free((char *)plan->slots[s].cpuset);
    sp__free(plan->slots);
err_free_plan:
    sp__free(plan);
err_free_execs:
    sp__free(execs);
    return st;
}

void sp_topology_plan_destroy(sp_executor_plan_t *plan)
{
    if (plan == NULL)
        return;
    for (unsigned s = 0; s < plan->count; s++)
        sp__free((char *)plan->slots[s].cpuset);
    sp__free(plan->slots);
    sp__free(plan);
}
