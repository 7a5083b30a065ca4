/*
 * ofi_rxm's pools as the ofi backend sizes them (transport/ofi.c): the first
 * transport of a process sets FI_OFI_RXM_MSG_RX_SIZE where the environment
 * has none, which keeps an endpoint on tcp;ofi_rxm small, leaves the buffer
 * size (rxm's eager limit, which peers must agree on) and the user's
 * settings alone. libfabric reads them once per process, so each case runs
 * in a forked child that is the first to open libfabric; the parent never
 * does.
 */
/* LABELS: fabric */
#include <spate/transport.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * Anonymous memory an endpoint open may take (libfabric 1.17 on tcp): ~18 MiB
 * with spate's receive count in either mode, ~70 MiB with rxm's shared
 * receive queue of 4096 buffers. The buffer size is rxm's eager limit and
 * part of its protocol: spate leaves it alone in both modes.
 */
#define RXM_OPEN_MAX_KIB (32L << 10)

static long anon_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "RssAnon:", 8) == 0)
            kib = atol(line + 8);
    fclose(f);
    return kib;
}

static bool env_is(const char *name, const char *value)
{
    const char *v = getenv(name);
    return v != NULL && strcmp(v, value) == 0;
}

/*
 * In a child: opens a transport on tcp;ofi_rxm in mode with the given
 * FI_OFI_RXM_BUFFER_SIZE and FI_OFI_RXM_MSG_RX_SIZE (NULL: unset) and exits
 * with 0 when the environment afterwards holds buffer_after and
 * msg_rx_after (NULL: unset), and the open grew anonymous memory by at most
 * max_kib (0: not checked).
 */
static void child(const char *mode, const char *buffer, const char *msg_rx,
                  const char *buffer_after, const char *msg_rx_after, long max_kib)
{
    sp_conf_t *conf = NULL;
    sp_transport_t *t = NULL;
    long before, grown;

    if (buffer != NULL)
        setenv("FI_OFI_RXM_BUFFER_SIZE", buffer, 1);
    else
        unsetenv("FI_OFI_RXM_BUFFER_SIZE");
    if (msg_rx != NULL)
        setenv("FI_OFI_RXM_MSG_RX_SIZE", msg_rx, 1);
    else
        unsetenv("FI_OFI_RXM_MSG_RX_SIZE");
    if (sp_conf_create(&conf) != SP_OK ||
        sp_conf_set(conf, "transport.provider", "tcp;ofi_rxm") != SP_OK ||
        sp_conf_set(conf, "transport.ofi_mode", mode) != SP_OK ||
        sp_conf_set(conf, "transport.progress_thread", "false") != SP_OK)
        _exit(2);
    before = anon_kib();
    if (sp_transport_open(conf, &t) != SP_OK) {
        fprintf(stderr, "sp_transport_open: %s\n", sp_last_error());
        _exit(3);
    }
    grown = anon_kib() - before;
    if (buffer_after != NULL ? !env_is("FI_OFI_RXM_BUFFER_SIZE", buffer_after)
                             : getenv("FI_OFI_RXM_BUFFER_SIZE") != NULL)
        _exit(4);
    if (!env_is("FI_OFI_RXM_MSG_RX_SIZE", msg_rx_after))
        _exit(5);
    if (max_kib > 0 && grown > max_kib) {
        fprintf(stderr, "opening the endpoint took %ld KiB of anonymous memory\n", grown);
        _exit(6);
    }
    sp_transport_close(t);
    sp_conf_destroy(conf);
    _exit(0);
}

static int run_child(const char *mode, const char *buffer, const char *msg_rx,
                     const char *buffer_after, const char *msg_rx_after, long max_kib)
{
    int status = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0)
        child(mode, buffer, msg_rx, buffer_after, msg_rx_after, max_kib);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_ofi_rxm_rma_keeps_eager_buffers(void **state)
{
    (void)state;
    assert_int_equal(run_child("rma", NULL, NULL, NULL, "128", RXM_OPEN_MAX_KIB), 0);
}

static void test_ofi_rxm_msg_keeps_eager_buffers(void **state)
{
    (void)state;
    assert_int_equal(run_child("msg", NULL, NULL, NULL, "128", RXM_OPEN_MAX_KIB), 0);
}

static void test_ofi_rxm_user_setting_wins(void **state)
{
    (void)state;
    assert_int_equal(run_child("rma", "16384", "256", "16384", "256", 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ofi_rxm_rma_keeps_eager_buffers),
        cmocka_unit_test(test_ofi_rxm_msg_keeps_eager_buffers),
        cmocka_unit_test(test_ofi_rxm_user_setting_wins),
    };

    /* Loopback only, always. */
    setenv("FI_TCP_IFACE", "lo", 1);
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
