/*
 * Tests of the topology: counts and per-node facts of synthetic and XML
 * topologies (whose answers are known exactly), the executor plan against the
 * rules of its contract, rejection of bad sources, binding refused off this
 * machine, binding and locating on this machine, and every allocation
 * failure of create and plan answered with SP_ERR_NOMEM.
 *
 * LABELS: unit
 */
#include <spate/memory.h>

#include "common_int.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define SYNTH_4NODE   "synthetic:pack:2 node:2 core:4 pu:1"
#define SYNTH_NO_NUMA "synthetic:pack:1 core:4 pu:2"
#define GIB           (UINT64_C(1) << 30)

static sp_topology_t *topo_create_ok(const char *source)
{
    sp_topology_t *topo = NULL;
    sp_status_t st = sp_topology_create(source, &topo);

    if (st != SP_OK)
        fail_msg("sp_topology_create(%s): %s: %s", source != NULL ? source : "this machine",
                 sp_status_str(st), sp_last_error());
    assert_non_null(topo);
    return topo;
}

static sp_executor_plan_t *plan_ok(const sp_topology_t *topo, const sp_conf_t *conf, unsigned min)
{
    sp_executor_plan_t *plan = NULL;
    sp_status_t st = sp_topology_plan_executors(topo, conf, min, &plan);

    if (st != SP_OK)
        fail_msg("sp_topology_plan_executors: %s: %s", sp_status_str(st), sp_last_error());
    assert_non_null(plan);
    return plan;
}

/* Checks the plan's invariants: disjoint cpusets within their node, every core used once. */
static void plan_check_partition(const sp_topology_t *topo, const sp_executor_plan_t *plan)
{
    char seen[4096] = {0};
    unsigned total = 0;

    for (unsigned s = 0; s < plan->count; s++) {
        const sp_executor_slot_t *slot = &plan->slots[s];
        sp_numa_info_t info;
        const char *p = slot->cpuset;

        assert_int_equal(sp_topology_numa_info(topo, slot->numa_index, &info), SP_OK);
        assert_int_equal(slot->numa_os_index, info.os_index);
        assert_true(slot->cores >= 1);
        total += slot->cores;
        /* Parse "a-b,c" and mark each PU; a PU in two slots is a bug. */
        while (*p != '\0') {
            char *end;
            unsigned long lo = strtoul(p, &end, 10), hi = lo;
            if (*end == '-')
                hi = strtoul(end + 1, &end, 10);
            for (unsigned long pu = lo; pu <= hi; pu++) {
                assert_true(pu < sizeof(seen));
                assert_int_equal(seen[pu], 0);
                seen[pu] = 1;
            }
            p = *end == ',' ? end + 1 : end;
        }
    }
    assert_int_equal(total, sp_topology_core_count(topo));
}

static void test_topology_synthetic_counts(void **state)
{
    static const char *const cpusets[] = {"0-3", "4-7", "8-11", "12-15"};
    sp_topology_t *topo = topo_create_ok(SYNTH_4NODE);
    sp_numa_info_t info;
    unsigned numa;

    (void)state;
    assert_false(sp_topology_is_this_system(topo));
    assert_int_equal(sp_topology_numa_count(topo), 4);
    assert_int_equal(sp_topology_package_count(topo), 2);
    assert_int_equal(sp_topology_core_count(topo), 16);
    assert_int_equal(sp_topology_pu_count(topo), 16);
    assert_int_equal(sp_topology_cache_bytes(topo, 1), 0);
    assert_int_equal(sp_topology_cache_bytes(topo, 3), 0);
    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(sp_topology_numa_info(topo, i, &info), SP_OK);
        assert_int_equal(info.index, i);
        assert_int_equal(info.os_index, i);
        assert_int_equal(info.cores, 4);
        assert_int_equal(info.pus, 4);
        assert_true(info.memory_bytes > 0);
        assert_string_equal(info.cpuset, cpusets[i]);
    }
    for (unsigned c = 0; c < 16; c++) {
        assert_int_equal(sp_topology_core_numa(topo, c, &numa), SP_OK);
        assert_int_equal(numa, c / 4);
    }
    sp_topology_destroy(topo);
}

static void test_topology_index_out_of_range(void **state)
{
    sp_topology_t *topo = topo_create_ok(SYNTH_4NODE);
    sp_numa_info_t info = {.index = 77};
    unsigned numa = 77;

    (void)state;
    assert_int_equal(sp_topology_numa_info(topo, 4, &info), SP_ERR_INVALID_PARAM);
    assert_int_equal(info.index, 77);
    assert_int_equal(sp_topology_core_numa(topo, 16, &numa), SP_ERR_INVALID_PARAM);
    assert_int_equal(numa, 77);
    assert_int_equal(sp_topology_cache_bytes(topo, 0), 0);
    assert_int_equal(sp_topology_cache_bytes(topo, 4), 0);
    sp_topology_destroy(topo);
}

static void test_topology_synthetic_caches(void **state)
{
    sp_topology_t *topo = topo_create_ok("synthetic:pack:1 l3:1(size=16MiB) l2:2(size=1MiB) "
                                         "l1d:1(size=32KiB) core:1 pu:2");

    (void)state;
    assert_int_equal(sp_topology_cache_bytes(topo, 1), 32 << 10);
    assert_int_equal(sp_topology_cache_bytes(topo, 2), 1 << 20);
    assert_int_equal(sp_topology_cache_bytes(topo, 3), 16 << 20);
    sp_topology_destroy(topo);
}

static void test_topology_plan_one_executor_per_node(void **state)
{
    static const char *const cpusets[] = {"0-3", "4-7", "8-11", "12-15"};
    sp_topology_t *topo = topo_create_ok("synthetic:pack:2 node:2(memory=4GiB) core:4 pu:1");
    sp_executor_plan_t *plan = plan_ok(topo, NULL, 2);

    (void)state;
    assert_int_equal(plan->count, 4);
    for (unsigned s = 0; s < 4; s++) {
        assert_int_equal(plan->slots[s].numa_index, s);
        assert_int_equal(plan->slots[s].numa_os_index, s);
        assert_int_equal(plan->slots[s].cores, 4);
        assert_string_equal(plan->slots[s].cpuset, cpusets[s]);
        /* 3/4 of the node's 4 GiB. */
        assert_int_equal(plan->slots[s].memory_bytes, 3 * GIB);
    }
    plan_check_partition(topo, plan);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_plan_honours_memory_executor(void **state)
{
    sp_topology_t *topo = topo_create_ok(SYNTH_4NODE);
    sp_executor_plan_t *plan;
    sp_conf_t *conf;

    (void)state;
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", "1g"), SP_OK);
    plan = plan_ok(topo, conf, 2);
    assert_int_equal(plan->count, 4);
    for (unsigned s = 0; s < plan->count; s++)
        assert_int_equal(plan->slots[s].memory_bytes, GIB);
    sp_topology_plan_destroy(plan);
    sp_conf_destroy(conf);
    sp_topology_destroy(topo);
}

static void test_topology_plan_splits_to_minimum(void **state)
{
    sp_topology_t *topo = topo_create_ok("synthetic:pack:2 node:2(memory=4GiB) core:4 pu:1");
    sp_executor_plan_t *plan = plan_ok(topo, NULL, 6);
    unsigned per_node[4] = {0};

    (void)state;
    assert_true(plan->count >= 6);
    assert_true(plan->count <= 16);
    plan_check_partition(topo, plan);
    for (unsigned s = 0; s < plan->count; s++)
        per_node[plan->slots[s].numa_index]++;
    for (unsigned s = 0; s < plan->count; s++) {
        const sp_executor_slot_t *slot = &plan->slots[s];
        /* A node split in k shares its 3 GiB k ways and its 4 cores as evenly as it can. */
        assert_int_equal(slot->memory_bytes, 3 * GIB / per_node[slot->numa_index]);
        assert_true(slot->cores >= 4 / per_node[slot->numa_index]);
        assert_true(slot->cores <=
                    (4 + per_node[slot->numa_index] - 1) / per_node[slot->numa_index]);
    }
    sp_topology_plan_destroy(plan);

    /* More executors than cores asked: one per core, never more. */
    plan = plan_ok(topo, NULL, 100);
    assert_int_equal(plan->count, 16);
    for (unsigned s = 0; s < plan->count; s++)
        assert_int_equal(plan->slots[s].cores, 1);
    plan_check_partition(topo, plan);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

/* Loads tests/data/NAME through an "xml:" source. */
static sp_topology_t *topo_create_data(const char *name)
{
    const char *dir = getenv("SPATE_SOURCE_DIR");
    char source[4096];

    assert_non_null(dir);
    snprintf(source, sizeof(source), "xml:%s/tests/data/%s", dir, name);
    return topo_create_ok(source);
}

static void test_topology_plan_splits_largest_node_first(void **state)
{
    /* topo-uneven.xml: node 0 has cores 0-3, node 1 cores 4-5, 4 GiB each. */
    sp_topology_t *topo = topo_create_data("topo-uneven.xml");
    sp_executor_plan_t *plan;

    (void)state;
    assert_int_equal(sp_topology_core_count(topo), 6);
    plan = plan_ok(topo, NULL, 3);
    assert_int_equal(plan->count, 3);
    assert_string_equal(plan->slots[0].cpuset, "0-1");
    assert_string_equal(plan->slots[1].cpuset, "2-3");
    assert_string_equal(plan->slots[2].cpuset, "4-5");
    assert_int_equal(plan->slots[0].memory_bytes, 3 * GIB / 2);
    assert_int_equal(plan->slots[2].memory_bytes, 3 * GIB);
    sp_topology_plan_destroy(plan);

    /* Two cores per executor everywhere; the tie goes to the larger node. */
    plan = plan_ok(topo, NULL, 4);
    assert_int_equal(plan->count, 4);
    assert_int_equal(plan->slots[0].numa_index, 0);
    assert_int_equal(plan->slots[2].numa_index, 0);
    assert_int_equal(plan->slots[3].numa_index, 1);
    assert_string_equal(plan->slots[0].cpuset, "0-1");
    assert_string_equal(plan->slots[1].cpuset, "2");
    assert_string_equal(plan->slots[2].cpuset, "3");
    assert_string_equal(plan->slots[3].cpuset, "4-5");
    plan_check_partition(topo, plan);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_no_numa_is_one_node(void **state)
{
    sp_topology_t *topo = topo_create_ok(SYNTH_NO_NUMA);
    sp_executor_plan_t *plan;
    sp_numa_info_t info;

    (void)state;
    assert_int_equal(sp_topology_numa_count(topo), 1);
    assert_int_equal(sp_topology_core_count(topo), 4);
    assert_int_equal(sp_topology_pu_count(topo), 8);
    assert_int_equal(sp_topology_numa_info(topo, 0, &info), SP_OK);
    assert_int_equal(info.cores, 4);
    assert_int_equal(info.pus, 8);
    assert_string_equal(info.cpuset, "0-7");

    plan = plan_ok(topo, NULL, 2);
    assert_int_equal(plan->count, 2);
    assert_int_equal(plan->slots[0].cores, 2);
    assert_int_equal(plan->slots[1].cores, 2);
    assert_string_equal(plan->slots[0].cpuset, "0-3");
    assert_string_equal(plan->slots[1].cpuset, "4-7");
    assert_int_equal(plan->slots[0].memory_bytes, plan->slots[1].memory_bytes);
    plan_check_partition(topo, plan);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_without_cores_counts_pus(void **state)
{
    sp_topology_t *topo = topo_create_ok("synthetic:pack:2 pu:2");
    sp_executor_plan_t *plan;

    (void)state;
    assert_int_equal(sp_topology_core_count(topo), 4);
    plan = plan_ok(topo, NULL, 3);
    assert_int_equal(plan->count, 3);
    plan_check_partition(topo, plan);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_xml_file(void **state)
{
    sp_topology_t *topo = topo_create_data("topo-2node.xml");
    sp_executor_plan_t *plan;
    sp_numa_info_t info;

    (void)state;
    assert_false(sp_topology_is_this_system(topo));
    assert_int_equal(sp_topology_numa_count(topo), 2);
    assert_int_equal(sp_topology_package_count(topo), 2);
    assert_int_equal(sp_topology_core_count(topo), 4);
    assert_int_equal(sp_topology_pu_count(topo), 8);
    assert_int_equal(sp_topology_cache_bytes(topo, 1), 48 << 10);
    assert_int_equal(sp_topology_cache_bytes(topo, 2), 512 << 10);
    assert_int_equal(sp_topology_cache_bytes(topo, 3), 8 << 20);
    assert_int_equal(sp_topology_numa_info(topo, 1, &info), SP_OK);
    assert_int_equal(info.os_index, 1);
    assert_int_equal(info.cores, 2);
    assert_int_equal(info.pus, 4);
    assert_int_equal(info.memory_bytes, 2 * GIB);
    assert_string_equal(info.cpuset, "4-7");

    plan = plan_ok(topo, NULL, 2);
    assert_int_equal(plan->count, 2);
    assert_string_equal(plan->slots[0].cpuset, "0-3");
    assert_string_equal(plan->slots[1].cpuset, "4-7");
    assert_int_equal(plan->slots[1].memory_bytes, 3 * GIB / 2);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_plan_unknown_node_memory_uses_machine(void **state)
{
    const char *dir = getenv("SPATE_SOURCE_DIR");
    char path[4096], tmp[] = "/tmp/spate-topo-XXXXXX", source[64], line[1024];
    uint64_t machine = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    sp_executor_plan_t *plan;
    sp_topology_t *topo;
    sp_numa_info_t info;
    FILE *in, *out;
    int fd;

    (void)state;
    /* The 2-node export without its local_memory attributes: node sizes unknown. */
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/tests/data/topo-2node.xml", dir);
    in = fopen(path, "r");
    assert_non_null(in);
    fd = mkstemp(tmp);
    assert_true(fd >= 0);
    out = fdopen(fd, "w");
    assert_non_null(out);
    while (fgets(line, sizeof(line), in) != NULL) {
        char *attr = strstr(line, " local_memory=\"");
        if (attr != NULL) {
            char *end = strchr(attr + 15, '"');
            assert_non_null(end);
            memmove(attr, end + 1, strlen(end + 1) + 1);
        }
        fputs(line, out);
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
    snprintf(source, sizeof(source), "xml:%s", tmp);
    topo = topo_create_ok(source);
    unlink(tmp);
    assert_int_equal(sp_topology_numa_info(topo, 0, &info), SP_OK);
    assert_int_equal(info.memory_bytes, 0);
    plan = plan_ok(topo, NULL, 4);
    assert_int_equal(plan->count, 4);
    /* Two executors per node share 3/4 of this machine's memory. */
    for (unsigned s = 0; s < plan->count; s++)
        assert_int_equal(plan->slots[s].memory_bytes, machine / 4 * 3 / 2);
    sp_topology_plan_destroy(plan);
    sp_topology_destroy(topo);
}

static void test_topology_hwloc_synthetic_env(void **state)
{
    sp_topology_t *topo;

    (void)state;
    /* hwloc reads HWLOC_SYNTHETIC when spate asks for this machine. */
    assert_int_equal(setenv("HWLOC_SYNTHETIC", "pack:1 node:3 core:2 pu:1", 1), 0);
    topo = topo_create_ok("");
    unsetenv("HWLOC_SYNTHETIC");
    assert_false(sp_topology_is_this_system(topo));
    assert_int_equal(sp_topology_numa_count(topo), 3);
    assert_int_equal(sp_topology_core_count(topo), 6);
    sp_topology_destroy(topo);
}

static void test_topology_bad_source_is_bad_conf(void **state)
{
    static const char *const sources[] = {
        "bogus",
        "synthetic:",
        "synthetic:pack:two pu:1",
        "synthetic:nonsense:3",
        "xml:/nonexistent/spate-topology.xml",
        "xml:",
        "XML:/tmp/x.xml",
    };

    (void)state;
    for (size_t i = 0; i < SP_ARRAY_SIZE(sources); i++) {
        sp_topology_t *topo = (sp_topology_t *)&topo; /* must stay untouched */
        sp_status_t st = sp_topology_create(sources[i], &topo);
        if (st != SP_ERR_BAD_CONF)
            fail_msg("source '%s' gave %s", sources[i], sp_status_str(st));
        assert_ptr_equal(topo, (sp_topology_t *)&topo);
        if (strstr(sp_last_error(), sources[i]) == NULL)
            fail_msg("message '%s' does not name the source '%s'", sp_last_error(), sources[i]);
    }
}

static void test_topology_binding_off_this_system_is_unsupported(void **state)
{
    sp_topology_t *topo = topo_create_ok(SYNTH_4NODE);
    char buf[4096] = {0};
    unsigned out = 77;

    (void)state;
    assert_int_equal(sp_topology_bind_thread_core(topo, 0), SP_ERR_UNSUPPORTED);
    assert_non_null(strstr(sp_last_error(), "not this machine"));
    assert_int_equal(sp_topology_bind_thread_numa(topo, 1), SP_ERR_UNSUPPORTED);
    assert_int_equal(sp_topology_last_core(topo, &out), SP_ERR_UNSUPPORTED);
    assert_int_equal(sp_topology_bind_memory(topo, buf, sizeof(buf), 0), SP_ERR_UNSUPPORTED);
    assert_int_equal(sp_topology_memory_location(topo, buf, sizeof(buf), &out), SP_ERR_UNSUPPORTED);
    assert_int_equal(out, 77);
    /* Bad indexes are bad input before anything else. */
    assert_int_equal(sp_topology_bind_thread_core(topo, 16), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_topology_bind_thread_numa(topo, 4), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_topology_bind_memory(topo, buf, sizeof(buf), 4), SP_ERR_INVALID_PARAM);
    sp_topology_destroy(topo);
}

static void spin(void)
{
    volatile uint64_t x = 0;

    for (unsigned i = 0; i < 2000000; i++)
        x += i;
}

static void test_topology_this_machine_binds_threads(void **state)
{
    sp_topology_t *topo = topo_create_ok(NULL);
    cpu_set_t saved;
    unsigned cores = sp_topology_core_count(topo), core = 0, numa;

    (void)state;
    assert_true(sp_topology_numa_count(topo) >= 1);
    assert_true(cores >= 1);
    assert_true(sp_topology_pu_count(topo) >= cores);
    if (!sp_topology_is_this_system(topo)) {
        sp_topology_destroy(topo);
        skip(); /* HWLOC_SYNTHETIC or HWLOC_XMLFILE is set in the environment. */
    }
    assert_int_equal(pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved), 0);
    for (unsigned c = 0; c < cores; c++) {
        sp_status_t st = sp_topology_bind_thread_core(topo, c);
        if (st != SP_OK)
            fail_msg("binding to core %u: %s", c, sp_last_error());
        spin();
        assert_int_equal(sp_topology_last_core(topo, &core), SP_OK);
        assert_int_equal(core, c);
        assert_int_equal(sp_topology_core_numa(topo, c, &numa), SP_OK);
    }
    assert_int_equal(sp_topology_bind_thread_numa(topo, 0), SP_OK);
    spin();
    assert_int_equal(sp_topology_last_core(topo, &core), SP_OK);
    assert_int_equal(sp_topology_core_numa(topo, core, &numa), SP_OK);
    assert_int_equal(numa, 0);
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved), 0);
    sp_topology_destroy(topo);
}

static void test_topology_this_machine_binds_memory(void **state)
{
    sp_topology_t *topo = topo_create_ok(NULL);
    size_t len = 16 * (size_t)sysconf(_SC_PAGESIZE);
    unsigned numa = 77;
    sp_status_t st;
    char *mem;

    (void)state;
    if (!sp_topology_is_this_system(topo)) {
        sp_topology_destroy(topo);
        skip();
    }
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(mem != MAP_FAILED);
    /* Nothing touched yet: no node holds these pages. */
    st = sp_topology_memory_location(topo, mem, len, &numa);
    if (st == SP_ERR_UNSUPPORTED) {
        print_message("skipping: the OS cannot locate pages here: %s\n", sp_last_error());
        munmap(mem, len);
        sp_topology_destroy(topo);
        skip();
    }
    assert_int_equal(st, SP_ERR_NOT_FOUND);
    st = sp_topology_bind_memory(topo, mem, len, 0);
    if (st == SP_ERR_UNSUPPORTED) {
        print_message("skipping: the OS refuses memory binding here: %s\n", sp_last_error());
        munmap(mem, len);
        sp_topology_destroy(topo);
        skip();
    }
    assert_int_equal(st, SP_OK);
    memset(mem, 0xab, len);
    assert_int_equal(sp_topology_memory_location(topo, mem, len, &numa), SP_OK);
    assert_int_equal(numa, 0);
    assert_int_equal(sp_topology_bind_memory(topo, NULL, 4096, 0), SP_ERR_INVALID_PARAM);
    munmap(mem, len);
    sp_topology_destroy(topo);
}

static void test_topology_alloc_failures_are_nomem(void **state)
{
    unsigned n, failures = 0;

    (void)state;
    for (n = 1; n < 1000; n++) {
        uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);
        sp_executor_plan_t *plan = NULL;
        sp_topology_t *topo = NULL;
        sp_status_t st;

        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = sp_topology_create(SYNTH_4NODE, &topo);
        if (st == SP_OK)
            st = sp_topology_plan_executors(topo, NULL, 6, &plan);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (sp__fault_fired(SP_FAULT_ALLOC) == fired) {
            assert_int_equal(st, SP_OK);
            assert_true(plan->count >= 6);
            sp_topology_plan_destroy(plan);
            sp_topology_destroy(topo);
            break;
        }
        if (st != SP_ERR_NOMEM)
            fail_msg("allocation %u failing gave %s", n, sp_status_str(st));
        assert_null(plan);
        sp_topology_destroy(topo);
        failures++;
    }
    assert_true(n < 1000);
    /* Create and plan each take several allocations; all of them were failed once. */
    assert_true(failures >= 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topology_synthetic_counts),
        cmocka_unit_test(test_topology_index_out_of_range),
        cmocka_unit_test(test_topology_synthetic_caches),
        cmocka_unit_test(test_topology_plan_one_executor_per_node),
        cmocka_unit_test(test_topology_plan_honours_memory_executor),
        cmocka_unit_test(test_topology_plan_splits_to_minimum),
        cmocka_unit_test(test_topology_plan_splits_largest_node_first),
        cmocka_unit_test(test_topology_no_numa_is_one_node),
        cmocka_unit_test(test_topology_without_cores_counts_pus),
        cmocka_unit_test(test_topology_xml_file),
        cmocka_unit_test(test_topology_plan_unknown_node_memory_uses_machine),
        cmocka_unit_test(test_topology_hwloc_synthetic_env),
        cmocka_unit_test(test_topology_bad_source_is_bad_conf),
        cmocka_unit_test(test_topology_binding_off_this_system_is_unsupported),
        cmocka_unit_test(test_topology_this_machine_binds_threads),
        cmocka_unit_test(test_topology_this_machine_binds_memory),
        cmocka_unit_test(test_topology_alloc_failures_are_nomem),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
