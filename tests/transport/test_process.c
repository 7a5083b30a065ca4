/*
 * The transport's process-wide calls (transport/transport_proc.h), which the
 * launcher and spate-bench use instead of one backend's internals:
 * sp__transport_clear_dead_process removes what a dead process's endpoints
 * left on this host (the shm provider's "PID:..." regions in /dev/shm) and
 * nothing of any other process; sp__transport_prepare_env sets ofi_rxm's
 * receive count where the environment has none and leaves the user's value.
 */
/* LABELS: unit */
#include "transport/transport_proc.h"
#include <spate/conf.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The pid of a child that has exited and been reaped: a process that is gone. */
static pid_t dead_pid(void)
{
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    return pid;
}

static void make_file(const char *path)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, "x", 1), 1);
    close(fd);
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void test_process_clear_dead_removes_only_its_shm(void **state)
{
    pid_t pid = dead_pid();
    char mine[2][64], others[3][64];

    (void)state;
    /* shm names its regions "PID:N:M"; a longer pid with the same digits is another process. */
    snprintf(mine[0], sizeof(mine[0]), "/dev/shm/%ld:0:0", (long)pid);
    snprintf(mine[1], sizeof(mine[1]), "/dev/shm/%ld:3:17", (long)pid);
    snprintf(others[0], sizeof(others[0]), "/dev/shm/%ld0:0:0", (long)pid);
    snprintf(others[1], sizeof(others[1]), "/dev/shm/%ld:0:0", (long)getpid());
    snprintf(others[2], sizeof(others[2]), "/dev/shm/spate-test-%ld:0:0", (long)pid);
    for (int i = 0; i < 2; i++)
        make_file(mine[i]);
    for (int i = 0; i < 3; i++)
        make_file(others[i]);

    sp__transport_clear_dead_process((long)pid);

    for (int i = 0; i < 2; i++)
        assert_false(exists(mine[i]));
    for (int i = 0; i < 3; i++) {
        assert_true(exists(others[i]));
        unlink(others[i]);
    }
}

static void test_process_clear_dead_without_leftovers(void **state)
{
    (void)state;
    /* Nothing to remove is no error, and removes nothing else. */
    sp__transport_clear_dead_process((long)dead_pid());
}

static void test_process_prepare_env_sets_default(void **state)
{
    sp_conf_t *conf = NULL;
    const char *v;

    (void)state;
    assert_int_equal(sp_conf_create(&conf), SP_OK);
    unsetenv("FI_OFI_RXM_MSG_RX_SIZE");
    sp__transport_prepare_env(conf);
    v = getenv("FI_OFI_RXM_MSG_RX_SIZE");
    assert_non_null(v);
    assert_string_equal(v, "128");
    /* Whatever the backend: the variable is read by whoever opens libfabric first. */
    unsetenv("FI_OFI_RXM_MSG_RX_SIZE");
    assert_int_equal(sp_conf_set(conf, "transport.backend", "mpi"), SP_OK);
    sp__transport_prepare_env(conf);
    v = getenv("FI_OFI_RXM_MSG_RX_SIZE");
    assert_non_null(v);
    assert_string_equal(v, "128");
    unsetenv("FI_OFI_RXM_MSG_RX_SIZE");
    sp__transport_prepare_env(NULL);
    v = getenv("FI_OFI_RXM_MSG_RX_SIZE");
    assert_non_null(v);
    assert_string_equal(v, "128");
    sp_conf_destroy(conf);
}

static void test_process_prepare_env_user_setting_wins(void **state)
{
    const char *v;

    (void)state;
    setenv("FI_OFI_RXM_MSG_RX_SIZE", "256", 1);
    sp__transport_prepare_env(NULL);
    v = getenv("FI_OFI_RXM_MSG_RX_SIZE");
    assert_non_null(v);
    assert_string_equal(v, "256");
    unsetenv("FI_OFI_RXM_MSG_RX_SIZE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_process_clear_dead_removes_only_its_shm),
        cmocka_unit_test(test_process_clear_dead_without_leftovers),
        cmocka_unit_test(test_process_prepare_env_sets_default),
        cmocka_unit_test(test_process_prepare_env_user_setting_wins),
    };

    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
