/*
 * An executor's parts for running a job in this test's process
 * (sp__job_run_serial, sp__graph_run_local): a configuration and a memory
 * manager with the whole executor memory unified (nothing reserved), pages
 * of page_size, no NUMA binding, and shuffle.local_dirs in DIR/shuffle,
 * which je_env_close() removes. Shared by test_jobs.c, test_job_plan.c,
 * test_graph_ops.c and test_graph_jobs.c. Include after <cmocka.h>.
 */
#ifndef SPATE_TEST_JOB_ENV_UTIL_H
#define SPATE_TEST_JOB_ENV_UTIL_H

#include <spate/spate.h>

#include <stdio.h>
#include <stdlib.h>

/* splitmix64: the next of the tests' reproducible random numbers from *state. */
static inline uint64_t je_rnd(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Runs the shell command fmt (one %s: arg); the test fails when it does. */
static inline void je_sh(const char *fmt, const char *arg)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), fmt, arg);
    assert_int_equal(system(cmd), 0);
}

typedef struct je_env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    char shuffle[300];
} je_env_t;

/* Opens e over dir with memory.executor = memory and memory.page_size = page_size. */
static inline void je_env_open(je_env_t *e, const char *dir, const char *memory,
                               const char *page_size)
{
    char cmd[400];

    snprintf(e->shuffle, sizeof(e->shuffle), "%s/shuffle", dir);
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", e->shuffle);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(sp_conf_create(&e->conf), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.executor", memory), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.page_size", page_size), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.local_dirs", e->shuffle), SP_OK);
}

/* Creates the memory manager once the test has set what else it needs in e->conf. */
static inline void je_env_start(je_env_t *e)
{
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
}

static inline void je_env_close(je_env_t *e)
{
    char cmd[400];

    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", e->shuffle);
    assert_int_equal(system(cmd), 0);
}

#endif /* SPATE_TEST_JOB_ENV_UTIL_H */
