/* The `spate` command: subcommands share the parsed global options. */
#ifndef SPATE_CLI_H
#define SPATE_CLI_H

#include <spate/conf.h>
#include <spate/memory.h>

/* Global options parsed before the subcommand. */
typedef struct sp_cli {
    sp_conf_t *conf; /* defaults < --conf-file < SPATE_CONF_* < --conf */
    const char *prog;
} sp_cli_t;

/* Each subcommand gets the arguments after its name; returns the exit code. */
int sp_cmd_run(sp_cli_t *cli, int argc, char **argv);
int sp_cmd_executor(sp_cli_t *cli, int argc, char **argv);
int sp_cmd_topology(sp_cli_t *cli, int argc, char **argv);
int sp_cmd_conf(sp_cli_t *cli, int argc, char **argv);
int sp_cmd_gensort(sp_cli_t *cli, int argc, char **argv);
int sp_cmd_valsort(sp_cli_t *cli, int argc, char **argv);

/* Prints "spate: <message>" for the calling thread's last error; returns 1. */
int sp_cli_fail(const char *what);

#endif
