/*
 * Helpers that the spate command's subcommands share (cli.h), kept out of
 * main.c so that other programs built on the launcher (spate-bench) link
 * the subcommands without spate's main.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sp_cli_fail(const char *what)
{
    fprintf(stderr, "spate: %s: %s\n", what,
            sp_last_error()[0] != '\0' ? sp_last_error() : sp_status_str(sp_last_error_status()));
    return 1;
}

const char *sp_cli_option(int argc, char **argv, int *i, const char *opt, bool *missing_p)
{
    size_t len = strlen(opt);

    if (strncmp(argv[*i], opt, len) != 0)
        return NULL;
    if (argv[*i][len] == '=')
        return argv[*i] + len + 1;
    if (argv[*i][len] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing_p = true;
        return NULL;
    }
    return argv[++(*i)];
}

void sp_cli_human(char *buf, size_t cap, double bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    unsigned u = 0;

    while (bytes >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
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
