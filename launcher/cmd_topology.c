/* `spate topology`: placeholder until the topology module lands in this series. */
#include "cli.h"

#include <stdio.h>

int sp_cmd_topology(sp_cli_t *cli, int argc, char **argv)
{
    (void)cli;
    (void)argc;
    (void)argv;
    fprintf(stderr, "spate topology: not built yet\n");
    return 1;
}
