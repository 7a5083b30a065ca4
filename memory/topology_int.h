/*
 * Private view of a topology for the rest of the memory module: the hwloc
 * handle and a node's nodeset, so that an arena's extent hook can bind fresh
 * memory without going through sp_topology_bind_memory(), which raises errors
 * into the caller's last-error slot from inside jemalloc.
 */
#ifndef SPATE_TOPOLOGY_INT_H
#define SPATE_TOPOLOGY_INT_H

#include <spate/memory.h>

#include <hwloc.h>

/* The loaded hwloc topology; owned by topo, valid until it is destroyed. */
hwloc_topology_t sp__topology_hwloc(const sp_topology_t *topo);

/* The nodeset of NUMA node numa_index (< sp_topology_numa_count), owned by topo. */
hwloc_const_nodeset_t sp__topology_numa_nodeset(const sp_topology_t *topo, unsigned numa_index);

#endif /* SPATE_TOPOLOGY_INT_H */
