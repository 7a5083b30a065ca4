/*
 * `spate executor --driver HOST:PORT`: one executor that registers with a
 * running driver and runs its tasks until the driver shuts it down. The
 * secret that proves it belongs to the job comes from the environment
 * (SPATE_SECRET, hex) or a file (--secret-file), never from the command
 * line, where other users could read it. `spate run` starts its local
 * executors this way; external launchers (ssh, systemd, Kubernetes pods)
 * can do the same.
 */
#include "cli.h"

#include "common_int.h"
#include "control/control.h"
#include "executor/executor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sp_executor_usage(FILE *out)
{
    fprintf(out,
            "usage: spate [global options] executor --driver HOST:PORT [options]\n"
            "\n"
            "Starts one executor that registers with the driver at HOST:PORT and runs its\n"
            "tasks until the job ends. The job's secret is read from $SPATE_SECRET (or the\n"
            "variable named by --secret-env), or from --secret-file.\n"
            "\n"
            "options:\n"
            "  --driver HOST:PORT  the driver's control address (required)\n"
            "  --secret-env VAR    environment variable holding the secret (default SPATE_SECRET)\n"
            "  --secret-file FILE  read the secret from FILE instead\n"
            "  --index I --of N    this executor is the I-th of N on its host (NUMA placement)\n"
            "  --name NAME         how the driver reports it (default: $SPATE_EXECUTOR_NAME)\n"
            "  -h, --help          print this help\n"
            "\n"
            "exit codes: 0 the driver ended the executor, 1 it failed, 2 bad command line.\n");
}

static sp_status_t sp_cli_secret_file(const char *path, void **secret_p, size_t *len_p)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return SP_RAISE(SP_ERR_IO, "secret file %s: %s", path, strerror(errno));
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    if (n == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "secret file %s is empty", path);
    if (n < 16)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "secret file %s holds fewer than 16 bytes", path);
    if ((*secret_p = malloc(n)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the secret");
    memcpy(*secret_p, buf, n);
    *len_p = n;
    return SP_OK;
}

sp_status_t sp_cli_secret_load(const char *file, const char *env, void **secret_p, size_t *len_p)
{
    if (file != NULL)
        return sp_cli_secret_file(file, secret_p, len_p);
    return sp__ctl_secret_from_env(env != NULL ? env : "SPATE_SECRET", secret_p, len_p);
}

int sp_cmd_executor(sp_cli_t *cli, int argc, char **argv)
{
    const char *driver = NULL, *secret_env = "SPATE_SECRET", *secret_file = NULL;
    const char *name = getenv("SPATE_EXECUTOR_NAME");
    uint32_t index = 0, of = 1;
    sp__ctl_conn_t *conn = NULL;
    void *secret = NULL;
    size_t secret_len = 0;
    uint64_t timeout_ns;
    sp_status_t st;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            sp_executor_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "spate executor: unknown option or missing value: '%s'\n", a);
            return 2;
        }
        if (strcmp(a, "--driver") == 0)
            driver = argv[++i];
        else if (strcmp(a, "--secret-env") == 0)
            secret_env = argv[++i];
        else if (strcmp(a, "--secret-file") == 0)
            secret_file = argv[++i];
        else if (strcmp(a, "--index") == 0 || strcmp(a, "--of") == 0) {
            uint32_t *v = a[2] == 'i' ? &index : &of;
            if (!sp_cli_parse_u32(argv[++i], a[2] == 'i' ? 0 : 1, 65536, v)) {
                fprintf(stderr, "spate executor: %s '%s' is not a number from %d to 65536\n", a,
                        argv[i], a[2] == 'i' ? 0 : 1);
                return 2;
            }
        } else if (strcmp(a, "--name") == 0)
            name = argv[++i];
        else {
            fprintf(stderr, "spate executor: unknown option '%s' (see spate executor --help)\n", a);
            return 2;
        }
    }
    if (driver == NULL || of == 0 || index >= of) {
        fprintf(stderr, "spate executor: --driver HOST:PORT is required, and --index < --of\n");
        return 2;
    }
    if ((st = sp_cli_secret_load(secret_file, secret_env, &secret, &secret_len)) != SP_OK) {
        fprintf(stderr, "spate executor: %s\n", sp_last_error());
        return 2;
    }
    if ((st = sp_conf_get_duration(cli->conf, "executor.register_timeout", &timeout_ns)) != SP_OK)
        goto out;
    if ((st = sp__ctl_connect(driver, secret, secret_len, (int)(timeout_ns / 1000000), &conn)) !=
        SP_OK)
        goto out;
    sp__executor_opts_t opts = {.own_process = true,
                                .conn = conn,
                                .conf = cli->conf,
                                .transport = true,
                                .local_index = index,
                                .local_executors = of,
                                .name = name,
                                .register_timeout_ms = (int)(timeout_ns / 1000000)};
    st = sp__executor_run(&opts);
out:
    if (st != SP_OK)
        fprintf(stderr, "spate executor: %s\n", sp_last_error());
    sp__ctl_close(conn);
    free(secret);
    return st == SP_OK ? 0 : 1;
}
