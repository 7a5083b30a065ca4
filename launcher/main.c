/*
 * Entry point of the `spate` command: global options (--conf, --conf-file,
 * --log), then a subcommand. Configuration is assembled once here, in
 * precedence order, and every error is printed once, from sp_last_error().
 *
 * Before anything else main() takes back the fatal signals from a library
 * that is not spate's: libinfinipath (loaded with libfabric's psm provider,
 * so before main) installs, from its constructor, handlers for SIGSEGV,
 * SIGBUS, SIGILL, SIGABRT, SIGINT and SIGTERM that write a
 * `spate.<time>-<pid>,<host>.btr` backtrace file into the working directory
 * and make SIGINT and SIGTERM exit 1. Its constructor skips them when
 * IPATH_NO_BACKTRACE is in the environment: spate sets it (keeping a user's
 * own value) for the processes it starts, executors included, and resets
 * the handlers this process already got, found by the library they live in,
 * so that any other handler (a sanitizer's) stays. A crash then leaves
 * nothing in the user's directory and reaches spate's own reporting.
 */
#include "cli.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

typedef struct sp_cli_command {
    const char *name;
    int (*run)(sp_cli_t *cli, int argc, char **argv);
    const char *summary;
} sp_cli_command_t;

static const sp_cli_command_t sp_cli_commands[] = {
    {"run", sp_cmd_run, "run a job (a built-in such as terasort, or a plugin) on executors"},
    {"executor", sp_cmd_executor, "start one executor that joins a running driver"},
    {"topology", sp_cmd_topology, "show NUMA nodes, cores, memory and the executor layout"},
    {"conf", sp_cmd_conf, "show configuration keys and their values"},
    {"gensort", sp_cmd_gensort, "write sort benchmark input (gensort records) to part files"},
    {"valsort", sp_cmd_valsort, "check that sort benchmark records are in order, like valsort"},
};

static void sp_cli_usage(FILE *out)
{
    fprintf(out,
            "usage: spate [global options] <command> [command options]\n"
            "\n"
            "spate %s: executor and shuffle subsystem for HPC clusters.\n"
            "\n"
            "commands:\n",
            sp_version());
    for (size_t i = 0; i < sizeof(sp_cli_commands) / sizeof(sp_cli_commands[0]); i++)
        fprintf(out, "  %-10s %s\n", sp_cli_commands[i].name, sp_cli_commands[i].summary);
    fprintf(out,
            "\n"
            "global options:\n"
            "  --conf KEY=VALUE   set a configuration key (repeatable; highest precedence)\n"
            "  --conf-file FILE   read 'key = value' lines from FILE\n"
            "  --log LEVEL        error|warn|info|debug (default: $SPATE_LOG or warn)\n"
            "  --version          print the version and exit\n"
            "  -h, --help         print this help and exit\n"
            "\n"
            "Configuration precedence, lowest first: defaults, --conf-file, SPATE_CONF_<KEY>\n"
            "environment variables (memory.executor -> SPATE_CONF_MEMORY_EXECUTOR), --conf.\n"
            "`spate conf` lists every key. `spate <command> --help` shows a command's options.\n");
}

/* Libraries whose signal handlers spate removes (file name prefixes). */
static const char *const sp_cli_foreign_handler_libs[] = {"libinfinipath.so"};

/* Whether the signal action sa runs code of one of sp_cli_foreign_handler_libs. */
static bool sp_cli_action_is_foreign(const struct sigaction *sa)
{
    const char *base;
    Dl_info info;
    void *addr;

    if ((sa->sa_flags & SA_SIGINFO) == 0 &&
        (sa->sa_handler == SIG_DFL || sa->sa_handler == SIG_IGN))
        return false;
    /* POSIX lets a function pointer convert to void * (dlsym relies on it). */
    if ((sa->sa_flags & SA_SIGINFO) != 0)
        memcpy(&addr, &sa->sa_sigaction, sizeof(addr));
    else
        memcpy(&addr, &sa->sa_handler, sizeof(addr));
    if (dladdr(addr, &info) == 0 || info.dli_fname == NULL)
        return false;
    base = strrchr(info.dli_fname, '/');
    base = base != NULL ? base + 1 : info.dli_fname;
    for (size_t i = 0; i < sizeof(sp_cli_foreign_handler_libs) / sizeof(char *); i++)
        if (strncmp(base, sp_cli_foreign_handler_libs[i], strlen(sp_cli_foreign_handler_libs[i])) ==
            0)
            return true;
    return false;
}

/* Keeps libinfinipath's backtrace handlers out of this process and of those it starts. */
static void sp_cli_drop_foreign_handlers(void)
{
    setenv("IPATH_NO_BACKTRACE", "1", 0);
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;

        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) != 0 ||
            !sp_cli_action_is_foreign(&sa))
            continue;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, NULL);
    }
}

/* sp_cli_option() for the global options: a missing value ends the program. */
static const char *sp_cli_value(int argc, char **argv, int *i, const char *opt)
{
    bool missing = false;
    const char *value = sp_cli_option(argc, argv, i, opt, &missing);

    if (missing) {
        fprintf(stderr, "spate: option %s needs a value\n", opt);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv)
{
    sp_cli_t cli = {.prog = argv[0]};
    const char *conf_file = NULL, *value;
    int i, first_assignment = 0, ret;

    sp_cli_drop_foreign_handlers();
    /* Pass 1: options that do not depend on the configuration. */
    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            sp_cli_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("spate %s\n", sp_version());
            return 0;
        } else if ((value = sp_cli_value(argc, argv, &i, "--log")) != NULL) {
            sp_log_level_t level;
            if (sp_log_level_parse(value, &level) != SP_OK)
                return sp_cli_fail("--log");
            sp_log_set_level(level);
        } else if ((value = sp_cli_value(argc, argv, &i, "--conf-file")) != NULL) {
            conf_file = value;
        } else if ((value = sp_cli_value(argc, argv, &i, "--conf")) != NULL) {
            if (first_assignment == 0)
                first_assignment = i;
        } else {
            fprintf(stderr, "spate: unknown option '%s' (see spate --help)\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        sp_cli_usage(stderr);
        return 2;
    }

    if (sp_conf_create(&cli.conf) != SP_OK)
        return sp_cli_fail("configuration");
    if (conf_file != NULL && sp_conf_load_file(cli.conf, conf_file) != SP_OK) {
        sp_cli_fail("--conf-file");
        ret = 2; /* bad configuration: a usage error */
        goto out;
    }
    if (sp_conf_load_env(cli.conf, environ) != SP_OK) {
        sp_cli_fail("environment");
        ret = 2; /* bad configuration: a usage error */
        goto out;
    }
    /* Pass 2: --conf assignments, in order, last one wins. */
    for (int j = 1; first_assignment != 0 && j < i; j++) {
        if ((value = sp_cli_value(argc, argv, &j, "--conf")) != NULL &&
            sp_conf_set_assignment(cli.conf, value) != SP_OK) {
            sp_cli_fail("--conf");
            ret = 2; /* bad configuration: a usage error */
            goto out;
        }
    }

    for (size_t c = 0; c < sizeof(sp_cli_commands) / sizeof(sp_cli_commands[0]); c++) {
        if (strcmp(argv[i], sp_cli_commands[c].name) == 0) {
            ret = sp_cli_commands[c].run(&cli, argc - i - 1, argv + i + 1);
            goto out;
        }
    }
    fprintf(stderr, "spate: unknown command '%s' (see spate --help)\n", argv[i]);
    ret = 2;
out:
    sp_conf_destroy(cli.conf);
    return ret;
}
