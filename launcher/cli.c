/*
 * Helpers that the spate command's subcommands share (cli.h), kept out of
 * main.c so that other programs built on the launcher (spate-bench) link
 * the subcommands without spate's main.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int sp_cli_fail(const char *what)
{
    fprintf(stderr, "spate: %s: %s\n", what,
            sp_last_error()[0] != '\0' ? sp_last_error() : sp_status_str(sp_last_error_status()));
    return 1;
}

bool sp_cli_parse_u32(const char *text, uint32_t min, uint32_t max, uint32_t *v_p)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v < min || v > max)
        return false;
    *v_p = (uint32_t)v;
    return true;
}
