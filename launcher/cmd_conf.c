/* `spate conf`: the key table (Markdown) or the effective value of keys. */
#include "cli.h"
#include "conf_int.h"

#include <stdio.h>
#include <string.h>

static void sp_cmd_conf_usage(FILE *out)
{
    fprintf(out, "usage: spate [--conf K=V ...] conf [--markdown] [KEY ...]\n"
                 "\n"
                 "Without arguments, prints every key with its effective value.\n"
                 "  --markdown   print the documented table of keys (as in the README)\n"
                 "  KEY ...      print only these keys' values\n");
}

static int sp_cmd_conf_print(sp_cli_t *cli, const sp_conf_def_t *def)
{
    char buf[64];

    switch (def->type) {
    case SP_CONF_SIZE: {
        uint64_t v = 0;
        sp_conf_get_size(cli->conf, def->key, &v);
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
        break;
    }
    case SP_CONF_DURATION: {
        uint64_t v = 0;
        sp_conf_get_duration(cli->conf, def->key, &v);
        snprintf(buf, sizeof(buf), "%lluns", (unsigned long long)v);
        break;
    }
    case SP_CONF_INT: {
        int64_t v = 0;
        sp_conf_get_int(cli->conf, def->key, &v);
        snprintf(buf, sizeof(buf), "%lld", (long long)v);
        break;
    }
    case SP_CONF_DOUBLE: {
        double v = 0;
        sp_conf_get_double(cli->conf, def->key, &v);
        snprintf(buf, sizeof(buf), "%g", v);
        break;
    }
    case SP_CONF_BOOL: {
        bool v = false;
        sp_conf_get_bool(cli->conf, def->key, &v);
        snprintf(buf, sizeof(buf), "%s", v ? "true" : "false");
        break;
    }
    case SP_CONF_STRING:
    case SP_CONF_ENUM: {
        const char *v = "";
        sp_conf_get_string(cli->conf, def->key, &v);
        printf("%s = %s%s\n", def->key, v,
               sp_conf_is_set(cli->conf, def->key) ? "" : "  (default)");
        return 0;
    }
    }
    printf("%s = %s%s\n", def->key, buf, sp_conf_is_set(cli->conf, def->key) ? "" : "  (default)");
    return 0;
}

int sp_cmd_conf(sp_cli_t *cli, int argc, char **argv)
{
    int nkeys = 0;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            sp_cmd_conf_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--markdown") == 0) {
            sp_conf_write_markdown(stdout);
            return 0;
        }
        if (argv[i][0] == '-') {
            fprintf(stderr, "spate conf: unknown option '%s'\n", argv[i]);
            sp_cmd_conf_usage(stderr);
            return 2;
        }
        nkeys++;
    }
    for (size_t k = 0; k < sp__conf_ndefs; k++) {
        bool wanted = nkeys == 0;
        for (int i = 0; i < argc && !wanted; i++)
            wanted = strcmp(argv[i], sp__conf_defs[k].key) == 0;
        if (wanted)
            sp_cmd_conf_print(cli, &sp__conf_defs[k]);
    }
    for (int i = 0; i < argc; i++) {
        bool known = false;
        for (size_t k = 0; k < sp__conf_ndefs && !known; k++)
            known = strcmp(argv[i], sp__conf_defs[k].key) == 0;
        if (!known) {
            fprintf(stderr, "spate conf: unknown conf key '%s'\n", argv[i]);
            return 1;
        }
    }
    return 0;
}
