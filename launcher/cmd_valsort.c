/*
 * `spate valsort`: checks sort output the way valsort 1.5 does and prints
 * its report, on standard error as valsort does: the record count, the sum
 * of the records' CRC-32s (compare it with `gensort -c` of the input), and
 * either the duplicate key count and SUCCESS or the unordered record count,
 * preceded by the first unordered record's index. A directory is read as the
 * concatenation of its part-r-* files (a spate job's output) or else its
 * part-* files (`spate gensort` output), in name order; the files are checked
 * on several threads and their summaries merged as valsort -s merges
 * partition summaries.
 */
#include "cli.h"
#include "common_int.h"
#include "executor/jobs/gensort.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SP_VALSORT_MAX_THREADS 1024ul

static void sp_cmd_valsort_usage(FILE *out)
{
    fprintf(out, "usage: spate valsort [-q] [--threads N] PATH\n"
                 "\n"
                 "Checks that sort benchmark records (100 bytes, 10-byte keys) are in key order,\n"
                 "like valsort 1.5, and prints valsort's report on standard error: Records,\n"
                 "Checksum (the sum of the records' CRC-32s, as `gensort -c` prints it for the\n"
                 "input), then Duplicate keys and \"SUCCESS - all records are in order\", or the\n"
                 "first unordered record and the number of unordered records.\n"
                 "\n"
                 "PATH is a file, or a directory whose part-r-* files (else part-* files) are\n"
                 "read in name order as one sequence.\n"
                 "\n"
                 "  -q            print no report; the exit code tells\n"
                 "  --threads N   checking threads (default: one per online CPU)\n"
                 "  -h, --help    print this help and exit\n"
                 "\n"
                 "Exit code: 0 all in order, 1 unordered records, no records, or a file that\n"
                 "cannot be read or is not whole records; 2 bad usage.\n");
}

int sp_cmd_valsort(sp_cli_t *cli, int argc, char **argv)
{
    const char *path = NULL, *threads_text = NULL;
    unsigned long threads = 0;
    bool quiet = false;
    char **paths = NULL;
    size_t count = 0;
    sp__valsort_t v;
    int ret;

    (void)cli;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            sp_cmd_valsort_usage(stdout);
            return 0;
        } else if (strcmp(arg, "-q") == 0) {
            quiet = true;
        } else if (strncmp(arg, "--threads=", 10) == 0) {
            threads_text = arg + 10;
        } else if (strcmp(arg, "--threads") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "spate valsort: option --threads needs a value\n");
                return 2;
            }
            threads_text = argv[++i];
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "spate valsort: unknown option '%s' (see spate valsort --help)\n", arg);
            return 2;
        } else if (path == NULL) {
            path = arg;
        } else {
            fprintf(stderr, "spate valsort: unexpected argument '%s' (see spate valsort --help)\n",
                    arg);
            return 2;
        }
    }
    if (threads_text != NULL) {
        char *end;
        threads = strtoul(threads_text, &end, 10);
        if (threads_text[0] < '0' || threads_text[0] > '9' || *end != '\0' || threads == 0 ||
            threads > SP_VALSORT_MAX_THREADS) {
            fprintf(stderr, "spate valsort: --threads '%s' is not a number from 1 to %lu\n",
                    threads_text, SP_VALSORT_MAX_THREADS);
            return 2;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "spate valsort: PATH is missing (see spate valsort --help)\n");
        return 2;
    }

    if (sp__valsort_paths(path, &paths, &count) != SP_OK)
        return sp_cli_fail("valsort");
    if (sp__valsort_files((const char *const *)paths, count, (unsigned)threads, &v) != SP_OK) {
        ret = sp_cli_fail("valsort");
        goto out;
    }
    if (v.records == 0) {
        /* valsort's own words for it. */
        fprintf(stderr, "spate valsort: %s: there must be at least one record to be validated\n",
                path);
        ret = 1;
        goto out;
    }
    if (!quiet)
        sp__valsort_report(&v, stderr);
    ret = v.unordered != 0 ? 1 : 0;
out:
    sp__valsort_paths_free(paths, count);
    return ret;
}
