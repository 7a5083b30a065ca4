/*
 * Helpers that the spate command's subcommands share (cli.h), kept out of
 * main.c so that other programs built on the launcher (spate-bench) link
 * the subcommands without spate's main.
 */
#include "cli.h"

#include <stdio.h>

int sp_cli_fail(const char *what)
{
    fprintf(stderr, "spate: %s: %s\n", what,
            sp_last_error()[0] != '\0' ? sp_last_error() : sp_status_str(sp_last_error_status()));
    return 1;
}
