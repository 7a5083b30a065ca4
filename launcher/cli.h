/* The `spate` command: subcommands share the parsed global options. */
#ifndef SPATE_CLI_H
#define SPATE_CLI_H

#include <spate/conf.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

/*
 * The job's secret from file (its bytes, trailing newline dropped; at least
 * 16) or, when file is NULL, from the environment variable env (NULL:
 * SPATE_SECRET). *secret_p is malloc'ed.
 */
sp_status_t sp_cli_secret_load(const char *file, const char *env, void **secret_p, size_t *len_p);

/* A whole decimal number in [min, max] (no sign, no blanks); false otherwise. */
bool sp_cli_parse_u32(const char *text, uint32_t min, uint32_t max, uint32_t *v_p);

/*
 * The value of option opt at argv[*i], given as "--opt VALUE" (advancing *i
 * past VALUE) or "--opt=VALUE". NULL when argv[*i] is not opt, and when it
 * is but VALUE is missing: then *missing_p is set to true.
 */
const char *sp_cli_option(int argc, char **argv, int *i, const char *opt, bool *missing_p);

/* bytes in binary units ("512 B", "1.5 GiB") into buf. */
void sp_cli_human(char *buf, size_t cap, double bytes);

/* Prints "spate: <message>" for the calling thread's last error; returns 1. */
int sp_cli_fail(const char *what);

#endif
