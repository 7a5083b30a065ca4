/*
 * `spate topology`: the machine as spate sees it (packages, NUMA nodes,
 * cores, caches), the executors a local cluster would start on it and the
 * binding each would apply, as text for people or JSON for scripts. The
 * topology comes from memory.topology, so the layout of a cluster node can
 * be checked from a laptop with a synthetic description or an XML export.
 * Nothing is bound here: the command only reports what would be done.
 */
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The local cluster starts at least two executors (docs: one per NUMA node, at least two). */
#define SP_CMD_TOPOLOGY_DEFAULT_EXECUTORS 2u
#define SP_CMD_TOPOLOGY_MAX_EXECUTORS     1000000ul

typedef struct sp_cmd_topology_opts {
    bool json;
    unsigned min_executors;
} sp_cmd_topology_opts_t;

/* Everything the report prints, gathered once for both formats. */
typedef struct sp_cmd_topology_view {
    const char *source; /* "" for this machine */
    bool numa_bind;     /* memory.numa_bind */
    unsigned min_executors;
    const sp_topology_t *topo;
    const sp_executor_plan_t *plan;
} sp_cmd_topology_view_t;

static void sp_cmd_topology_usage(FILE *out)
{
    fprintf(out,
            "usage: spate [--conf K=V ...] topology [--json] [--executors N]\n"
            "\n"
            "Shows the machine as spate sees it (packages, NUMA nodes, cores, PUs, caches),\n"
            "the executors a local cluster would start on it, and the binding they would\n"
            "apply. The topology comes from memory.topology: empty for this machine,\n"
            "synthetic:DESC (hwloc synthetic description) or xml:PATH (hwloc XML export).\n"
            "\n"
            "  --json          print JSON instead of text\n"
            "  --executors N   plan at least N executors (default %u, the local cluster's\n"
            "                  minimum; never more than there are cores)\n"
            "  -h, --help      print this help and exit\n",
            SP_CMD_TOPOLOGY_DEFAULT_EXECUTORS);
}

/* Parses the value of --executors; false (message printed) when it is not 1 .. max. */
static bool sp_cmd_topology_parse_count(const char *value, unsigned *n_p)
{
    unsigned long n;
    char *end;

    errno = 0;
    n = strtoul(value, &end, 10);
    if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || n == 0 ||
        n > SP_CMD_TOPOLOGY_MAX_EXECUTORS) {
        fprintf(stderr, "spate topology: --executors '%s' is not a number from 1 to %lu\n", value,
                SP_CMD_TOPOLOGY_MAX_EXECUTORS);
        return false;
    }
    *n_p = (unsigned)n;
    return true;
}

/* Parses the options; returns -1 to go on, else the exit code. */
static int sp_cmd_topology_parse(int argc, char **argv, sp_cmd_topology_opts_t *opts)
{
    static const char executors_eq[] = "--executors=";

    opts->json = false;
    opts->min_executors = SP_CMD_TOPOLOGY_DEFAULT_EXECUTORS;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            sp_cmd_topology_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            opts->json = true;
        } else if (strncmp(argv[i], executors_eq, sizeof(executors_eq) - 1) == 0) {
            if (!sp_cmd_topology_parse_count(argv[i] + sizeof(executors_eq) - 1,
                                             &opts->min_executors))
                return 2;
        } else if (strcmp(argv[i], "--executors") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "spate topology: option --executors needs a value\n");
                return 2;
            }
            if (!sp_cmd_topology_parse_count(argv[++i], &opts->min_executors))
                return 2;
        } else {
            fprintf(stderr, "spate topology: unknown option '%s' (see spate topology --help)\n",
                    argv[i]);
            return 2;
        }
    }
    return -1;
}

/* "4 KiB", "1.5 GiB": binary units, one decimal when it is not whole; zero is zero_text. */
static const char *sp_cmd_topology_bytes(uint64_t bytes, const char *zero_text, char *buf,
                                         size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    unsigned u = 0;

    while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    if (bytes == 0)
        snprintf(buf, size, "%s", zero_text);
    else if (v == (double)(uint64_t)v)
        snprintf(buf, size, "%llu %s", (unsigned long long)v, units[u]);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
    return buf;
}

static const char *sp_cmd_topology_plural(unsigned n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

static bool sp_cmd_topology_binds(const sp_cmd_topology_view_t *v)
{
    return sp_topology_is_this_system(v->topo) && v->numa_bind;
}

/* Why nothing would be bound, or NULL when binding applies. */
static const char *sp_cmd_topology_no_binding(const sp_cmd_topology_view_t *v)
{
    if (!sp_topology_is_this_system(v->topo))
        return "none: topology is not this machine";
    if (!v->numa_bind)
        return "off: memory.numa_bind=false";
    return NULL;
}

static int sp_cmd_topology_text(const sp_cmd_topology_view_t *v)
{
    const sp_topology_t *topo = v->topo;
    unsigned numa = sp_topology_numa_count(topo), cores = sp_topology_core_count(topo);
    unsigned packages = sp_topology_package_count(topo), pus = sp_topology_pu_count(topo);
    const char *no_binding = sp_cmd_topology_no_binding(v);
    char b1[32], b2[32], b3[32];

    printf("topology of %s\n", v->source[0] != '\0' ? v->source : "this machine");
    printf("machine: %u %s, %u NUMA %s, %u %s, %u %s\n", packages,
           sp_cmd_topology_plural(packages, "package", "packages"), numa,
           sp_cmd_topology_plural(numa, "node", "nodes"), cores,
           sp_cmd_topology_plural(cores, "core", "cores"), pus,
           sp_cmd_topology_plural(pus, "PU", "PUs"));
    printf("caches:  L1 %s, L2 %s, L3 %s\n",
           sp_cmd_topology_bytes(sp_topology_cache_bytes(topo, 1), "none", b1, sizeof(b1)),
           sp_cmd_topology_bytes(sp_topology_cache_bytes(topo, 2), "none", b2, sizeof(b2)),
           sp_cmd_topology_bytes(sp_topology_cache_bytes(topo, 3), "none", b3, sizeof(b3)));

    printf("\nNUMA nodes:\n");
    printf("  %5s %5s %6s %6s %12s  %s\n", "index", "os", "cores", "PUs", "memory", "cpuset");
    for (unsigned i = 0; i < numa; i++) {
        sp_numa_info_t info;
        if (sp_topology_numa_info(topo, i, &info) != SP_OK)
            return sp_cli_fail("topology");
        printf("  %5u %5u %6u %6u %12s  %s\n", info.index, info.os_index, info.cores, info.pus,
               sp_cmd_topology_bytes(info.memory_bytes, "unknown", b1, sizeof(b1)), info.cpuset);
    }

    printf("\nexecutor layout (%u %s, at least %u asked):\n", v->plan->count,
           sp_cmd_topology_plural(v->plan->count, "executor", "executors"), v->min_executors);
    for (unsigned s = 0; s < v->plan->count; s++) {
        const sp_executor_slot_t *slot = &v->plan->slots[s];
        printf("  executor %u: NUMA node %u (os %u), %u %s, cpuset %s, memory %s\n", s,
               slot->numa_index, slot->numa_os_index, slot->cores,
               sp_cmd_topology_plural(slot->cores, "core", "cores"), slot->cpuset,
               sp_cmd_topology_bytes(slot->memory_bytes, "unknown", b1, sizeof(b1)));
    }

    printf("\nbinding:");
    if (no_binding != NULL) {
        printf(" %s\n", no_binding);
        return 0;
    }
    printf("\n");
    for (unsigned s = 0; s < v->plan->count; s++) {
        const sp_executor_slot_t *slot = &v->plan->slots[s];
        printf("  executor %u: threads bound to cpuset %s, memory bound to NUMA node %u (os %u)\n",
               s, slot->cpuset, slot->numa_index, slot->numa_os_index);
    }
    return 0;
}

/* json_object_set_new that remembers a failure in *ok (jansson frees value on error). */
static void sp_json_set(json_t *obj, const char *key, json_t *value, bool *ok)
{
    if (json_object_set_new(obj, key, value) != 0)
        *ok = false;
}

static json_t *sp_json_uint(uint64_t v) { return json_integer((json_int_t)v); }

static json_t *sp_cmd_topology_json_nodes(const sp_topology_t *topo, bool *ok)
{
    json_t *nodes = json_array();

    for (unsigned i = 0; nodes != NULL && i < sp_topology_numa_count(topo); i++) {
        json_t *node = json_object();
        sp_numa_info_t info;

        if (node == NULL || sp_topology_numa_info(topo, i, &info) != SP_OK) {
            json_decref(node);
            *ok = false;
            break;
        }
        sp_json_set(node, "index", sp_json_uint(info.index), ok);
        sp_json_set(node, "os_index", sp_json_uint(info.os_index), ok);
        sp_json_set(node, "cpuset", json_string(info.cpuset), ok);
        sp_json_set(node, "cores", sp_json_uint(info.cores), ok);
        sp_json_set(node, "pus", sp_json_uint(info.pus), ok);
        sp_json_set(node, "memory_bytes", sp_json_uint(info.memory_bytes), ok);
        if (json_array_append_new(nodes, node) != 0)
            *ok = false;
    }
    if (nodes == NULL)
        *ok = false;
    return nodes;
}

static json_t *sp_cmd_topology_json_executors(const sp_cmd_topology_view_t *v, bool *ok)
{
    json_t *execs = json_array();
    bool binds = sp_cmd_topology_binds(v);

    for (unsigned s = 0; execs != NULL && s < v->plan->count; s++) {
        const sp_executor_slot_t *slot = &v->plan->slots[s];
        json_t *e = json_object();

        if (e == NULL) {
            *ok = false;
            break;
        }
        sp_json_set(e, "index", sp_json_uint(s), ok);
        sp_json_set(e, "numa_node", sp_json_uint(slot->numa_index), ok);
        sp_json_set(e, "numa_os_index", sp_json_uint(slot->numa_os_index), ok);
        sp_json_set(e, "cores", sp_json_uint(slot->cores), ok);
        sp_json_set(e, "cpuset", json_string(slot->cpuset), ok);
        sp_json_set(e, "memory_bytes", sp_json_uint(slot->memory_bytes), ok);
        sp_json_set(e, "bind_threads", json_boolean(binds), ok);
        sp_json_set(e, "bind_memory", json_boolean(binds), ok);
        if (json_array_append_new(execs, e) != 0)
            *ok = false;
    }
    if (execs == NULL)
        *ok = false;
    return execs;
}

static int sp_cmd_topology_json(const sp_cmd_topology_view_t *v)
{
    const sp_topology_t *topo = v->topo;
    const char *no_binding = sp_cmd_topology_no_binding(v);
    json_t *root = json_object(), *caches = json_object();
    bool ok = root != NULL && caches != NULL;
    int ret = 0;

    if (!ok) {
        json_decref(caches);
        goto out;
    }
    sp_json_set(caches, "l1_bytes", sp_json_uint(sp_topology_cache_bytes(topo, 1)), &ok);
    sp_json_set(caches, "l2_bytes", sp_json_uint(sp_topology_cache_bytes(topo, 2)), &ok);
    sp_json_set(caches, "l3_bytes", sp_json_uint(sp_topology_cache_bytes(topo, 3)), &ok);
    sp_json_set(root, "source", json_string(v->source), &ok);
    sp_json_set(root, "this_system", json_boolean(sp_topology_is_this_system(topo)), &ok);
    sp_json_set(root, "packages", sp_json_uint(sp_topology_package_count(topo)), &ok);
    sp_json_set(root, "numa_count", sp_json_uint(sp_topology_numa_count(topo)), &ok);
    sp_json_set(root, "cores", sp_json_uint(sp_topology_core_count(topo)), &ok);
    sp_json_set(root, "pus", sp_json_uint(sp_topology_pu_count(topo)), &ok);
    sp_json_set(root, "caches", caches, &ok);
    sp_json_set(root, "numa_nodes", sp_cmd_topology_json_nodes(topo, &ok), &ok);
    sp_json_set(root, "min_executors", sp_json_uint(v->min_executors), &ok);
    sp_json_set(root, "numa_bind", json_boolean(v->numa_bind), &ok);
    sp_json_set(root, "binding",
                json_string(no_binding != NULL ? no_binding
                                               : "on: threads to the executor's "
                                                 "cpuset, memory to its NUMA node"),
                &ok);
    sp_json_set(root, "executors", sp_cmd_topology_json_executors(v, &ok), &ok);
    if (ok && json_dumpf(root, stdout, JSON_INDENT(2)) == 0 && fputc('\n', stdout) != EOF)
        goto out;
    ok = false;
out:
    if (!ok) {
        fprintf(stderr, "spate topology: cannot build or write the JSON report\n");
        ret = 1;
    }
    json_decref(root);
    return ret;
}

int sp_cmd_topology(sp_cli_t *cli, int argc, char **argv)
{
    sp_cmd_topology_opts_t opts;
    sp_cmd_topology_view_t view = {0};
    sp_executor_plan_t *plan = NULL;
    sp_topology_t *topo = NULL;
    int ret;

    ret = sp_cmd_topology_parse(argc, argv, &opts);
    if (ret >= 0)
        return ret;
    if (sp_conf_get_string(cli->conf, "memory.topology", &view.source) != SP_OK ||
        sp_conf_get_bool(cli->conf, "memory.numa_bind", &view.numa_bind) != SP_OK)
        return sp_cli_fail("configuration");
    if (sp_topology_create(view.source, &topo) != SP_OK)
        return sp_cli_fail("topology");
    if (sp_topology_plan_executors(topo, cli->conf, opts.min_executors, &plan) != SP_OK) {
        ret = sp_cli_fail("executor plan");
        goto out_destroy_topo;
    }
    view.min_executors = opts.min_executors;
    view.topo = topo;
    view.plan = plan;
    ret = opts.json ? sp_cmd_topology_json(&view) : sp_cmd_topology_text(&view);
    if (fflush(stdout) != 0 && ret == 0) {
        fprintf(stderr, "spate topology: cannot write the report: %s\n", strerror(errno));
        ret = 1;
    }
    sp_topology_plan_destroy(plan);
out_destroy_topo:
    sp_topology_destroy(topo);
    return ret;
}
