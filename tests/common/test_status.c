/*
 * Tests of status codes, the per-thread last error and logging. The list of
 * statuses below is the reference model: every code from -127 to 0 that is
 * not in it must print as unknown, so a status added to the enum and to
 * sp_status_str() without a test entry fails here, and the range predicates
 * are checked against the documented ranges on every integer around them.
 * Log output is captured by pointing file descriptor 2 at a temporary file;
 * the SPATE_LOG variable, read once at first use, is tested in a fresh image
 * of this program (fork, setenv, exec /proc/self/exe) so that no earlier
 * test has already fixed the level.
 */
/* LABELS: unit */
#include "common_int.h"

#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHILD_LOG_LEVEL_ARG "--child-report-log-level"
#define CHILD_RAISE_ARG     "--child-raise-first"

typedef enum category {
    CAT_OK,
    CAT_BAD_INPUT,
    CAT_NO_RESOURCE,
    CAT_IO,
    CAT_TRANSPORT,
    CAT_INTERNAL,
} category_t;

typedef struct status_case {
    sp_status_t status;
    const char *name;
    category_t category;
} status_case_t;

#define STATUS(s, cat)                                                                             \
    {                                                                                              \
        s, #s, cat                                                                                 \
    }
static const status_case_t all_statuses[] = {
    STATUS(SP_OK, CAT_OK),
    STATUS(SP_ERR_INVALID_PARAM, CAT_BAD_INPUT),
    STATUS(SP_ERR_BAD_CONF, CAT_BAD_INPUT),
    STATUS(SP_ERR_BAD_FORMAT, CAT_BAD_INPUT),
    STATUS(SP_ERR_TOO_LARGE, CAT_BAD_INPUT),
    STATUS(SP_ERR_NOT_FOUND, CAT_BAD_INPUT),
    STATUS(SP_ERR_EXISTS, CAT_BAD_INPUT),
    STATUS(SP_ERR_BAD_INPUT, CAT_BAD_INPUT),
    STATUS(SP_ERR_NOMEM, CAT_NO_RESOURCE),
    STATUS(SP_ERR_MEMORY_REFUSED, CAT_NO_RESOURCE),
    STATUS(SP_ERR_NO_RESOURCE, CAT_NO_RESOURCE),
    STATUS(SP_ERR_BUSY, CAT_NO_RESOURCE),
    STATUS(SP_ERR_IO, CAT_IO),
    STATUS(SP_ERR_NO_SPACE, CAT_IO),
    STATUS(SP_ERR_CORRUPT, CAT_IO),
    STATUS(SP_ERR_TRANSPORT, CAT_TRANSPORT),
    STATUS(SP_ERR_PEER_LOST, CAT_TRANSPORT),
    STATUS(SP_ERR_TIMED_OUT, CAT_TRANSPORT),
    STATUS(SP_ERR_FETCH_FAILED, CAT_TRANSPORT),
    STATUS(SP_ERR_CANCELED, CAT_TRANSPORT),
    STATUS(SP_ERR_UNSUPPORTED, CAT_INTERNAL),
    STATUS(SP_ERR_INTERNAL, CAT_INTERNAL),
};
#define NSTATUSES (sizeof(all_statuses) / sizeof(all_statuses[0]))

static const char unknown_prefix[] = "SP_ERR_UNKNOWN";

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

static void test_status_str_names_every_value(void **state)
{
    (void)state;
    for (size_t i = 0; i < NSTATUSES; i++) {
        const char *s = sp_status_str(all_statuses[i].status);
        size_t len = strlen(all_statuses[i].name);

        assert_non_null(s);
        /* "SP_ERR_NOMEM: out of memory": the enum name, a colon, a phrase. */
        if (strncmp(s, all_statuses[i].name, len) != 0 || s[len] != ':' || s[len + 1] != ' ' ||
            s[len + 2] == '\0')
            fail_msg("sp_status_str(%s) = '%s'", all_statuses[i].name, s);
        assert_true(strncmp(s, unknown_prefix, sizeof(unknown_prefix) - 1) != 0);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s, sp_status_str(all_statuses[j].status)) == 0)
                fail_msg("%s and %s share the string '%s'", all_statuses[i].name,
                         all_statuses[j].name, s);
    }
}

static void test_status_str_marks_unknown_values(void **state)
{
    const char *unknown = sp_status_str((sp_status_t)-8);

    (void)state;
    assert_string_equal(unknown, "SP_ERR_UNKNOWN: unknown status");
    assert_string_equal(sp_status_str((sp_status_t)1), unknown);
    assert_string_equal(sp_status_str((sp_status_t)-1000), unknown);
    /* Every code not in the list is unknown: the list is complete. */
    for (int code = -127; code <= 0; code++) {
        bool listed = false;

        for (size_t i = 0; i < NSTATUSES; i++)
            listed = listed || (int)all_statuses[i].status == code;
        if (!listed && strcmp(sp_status_str((sp_status_t)code), unknown) != 0)
            fail_msg("status %d has the string '%s' but is missing from this test's list", code,
                     sp_status_str((sp_status_t)code));
    }
}

static void test_status_predicates_classify_members(void **state)
{
    (void)state;
    for (size_t i = 0; i < NSTATUSES; i++) {
        sp_status_t s = all_statuses[i].status;
        category_t c = all_statuses[i].category;

        if (sp_status_is_bad_input(s) != (c == CAT_BAD_INPUT) ||
            sp_status_is_no_resource(s) != (c == CAT_NO_RESOURCE) ||
            sp_status_is_io(s) != (c == CAT_IO) ||
            sp_status_is_transport(s) != (c == CAT_TRANSPORT) ||
            sp_status_is_internal(s) != (c == CAT_INTERNAL))
            fail_msg("%s is classified wrongly", all_statuses[i].name);
    }
}

static void test_status_predicates_follow_documented_ranges(void **state)
{
    (void)state;
    for (int code = -120; code <= 5; code++) {
        sp_status_t s = (sp_status_t)code;
        int hits = sp_status_is_bad_input(s) + sp_status_is_no_resource(s) + sp_status_is_io(s) +
                   sp_status_is_transport(s) + sp_status_is_internal(s);

        assert_int_equal(sp_status_is_bad_input(s), code <= -1 && code >= -19);
        assert_int_equal(sp_status_is_no_resource(s), code <= -20 && code >= -39);
        assert_int_equal(sp_status_is_io(s), code <= -40 && code >= -59);
        assert_int_equal(sp_status_is_transport(s), code <= -60 && code >= -79);
        assert_int_equal(sp_status_is_internal(s), code <= -80 && code >= -99);
        assert_int_equal(hits, code <= -1 && code >= -99 ? 1 : 0);
    }
}

static void test_version_matches_macros(void **state)
{
    char expected[32];

    (void)state;
    snprintf(expected, sizeof(expected), "%d.%d.%d", SP_VERSION_MAJOR, SP_VERSION_MINOR,
             SP_VERSION_PATCH);
    assert_string_equal(sp_version(), expected);
}

/* ------------------------------------------------------------------------ */
/* Last error                                                               */
/* ------------------------------------------------------------------------ */

static void test_raise_sets_last_error(void **state)
{
    sp_status_t st;

    (void)state;
    sp_last_error_clear();
    assert_string_equal(sp_last_error(), "");
    assert_int_equal(sp_last_error_status(), SP_OK);

    st = SP_RAISE(SP_ERR_IO, "open %s: %s (errno %d)", "/x/y", "No such file", 2);
    assert_int_equal(st, SP_ERR_IO);
    assert_string_equal(sp_last_error(), "open /x/y: No such file (errno 2)");
    assert_int_equal(sp_last_error_status(), SP_ERR_IO);

    st = SP_RAISE(SP_ERR_PEER_LOST, "peer %d gone", 7);
    assert_int_equal(st, SP_ERR_PEER_LOST);
    assert_string_equal(sp_last_error(), "peer 7 gone");
    assert_int_equal(sp_last_error_status(), SP_ERR_PEER_LOST);

    sp_last_error_clear();
    assert_string_equal(sp_last_error(), "");
    assert_int_equal(sp_last_error_status(), SP_OK);
}

/* Adding context to an error quotes sp_last_error() in the new message. */
static void test_raise_may_quote_last_error(void **state)
{
    char inner[1500], expected[1024];

    (void)state;
    SP_RAISE(SP_ERR_BAD_CONF, "value 'x' is not a number");
    SP_RAISE(sp_last_error_status(), "conf key 'k': %s", sp_last_error());
    assert_string_equal(sp_last_error(), "conf key 'k': value 'x' is not a number");
    assert_int_equal(sp_last_error_status(), SP_ERR_BAD_CONF);

    /* The same with a message that fills the buffer. */
    memset(inner, 'i', sizeof(inner) - 1);
    inner[sizeof(inner) - 1] = '\0';
    SP_RAISE(SP_ERR_IO, "%s", inner);
    SP_RAISE(SP_ERR_IO, "outer: %s", sp_last_error());
    memcpy(expected, "outer: ", 7);
    memset(expected + 7, 'i', sizeof(expected) - 8);
    expected[sizeof(expected) - 1] = '\0';
    assert_string_equal(sp_last_error(), expected);
}

static void test_raise_truncates_long_message(void **state)
{
    char big[3000];

    (void)state;
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    big[0] = '<';
    SP_RAISE(SP_ERR_TOO_LARGE, "%s>", big);
    assert_int_equal(strlen(sp_last_error()), 1023);
    assert_int_equal(sp_last_error()[0], '<');
    assert_int_equal(sp_last_error()[1022], 'a');
    assert_int_equal(sp_last_error_status(), SP_ERR_TOO_LARGE);
}

typedef struct thread_report {
    char initial[64];
    sp_status_t initial_status;
    char after[64];
    sp_status_t after_status;
} thread_report_t;

static void *raise_in_thread(void *arg)
{
    thread_report_t *r = arg;

    snprintf(r->initial, sizeof(r->initial), "%s", sp_last_error());
    r->initial_status = sp_last_error_status();
    SP_RAISE(SP_ERR_TIMED_OUT, "thread error");
    snprintf(r->after, sizeof(r->after), "%s", sp_last_error());
    r->after_status = sp_last_error_status();
    return NULL;
}

static void test_last_error_is_per_thread(void **state)
{
    thread_report_t report;
    pthread_t t;

    (void)state;
    SP_RAISE(SP_ERR_CORRUPT, "main error");
    assert_int_equal(pthread_create(&t, NULL, raise_in_thread, &report), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(report.initial, "");
    assert_int_equal(report.initial_status, SP_OK);
    assert_string_equal(report.after, "thread error");
    assert_int_equal(report.after_status, SP_ERR_TIMED_OUT);
    assert_string_equal(sp_last_error(), "main error");
    assert_int_equal(sp_last_error_status(), SP_ERR_CORRUPT);
}

#define RACE_THREADS 4
#define RACE_ROUNDS  20000

typedef struct race_arg {
    pthread_barrier_t *barrier;
    int id;
    int mismatches;
} race_arg_t;

static void *raise_in_loop(void *p)
{
    race_arg_t *a = p;
    char expected[64];

    pthread_barrier_wait(a->barrier);
    for (int i = 0; i < RACE_ROUNDS; i++) {
        sp_status_t st = (sp_status_t)(-1 - a->id);

        SP_RAISE(st, "thread %d round %d", a->id, i);
        snprintf(expected, sizeof(expected), "thread %d round %d", a->id, i);
        if (strcmp(sp_last_error(), expected) != 0 || sp_last_error_status() != st)
            a->mismatches++;
    }
    return NULL;
}

static void test_last_error_survives_concurrent_raises(void **state)
{
    pthread_barrier_t barrier;
    pthread_t t[RACE_THREADS];
    race_arg_t args[RACE_THREADS];

    (void)state;
    assert_int_equal(pthread_barrier_init(&barrier, NULL, RACE_THREADS), 0);
    for (int i = 0; i < RACE_THREADS; i++) {
        args[i] = (race_arg_t){.barrier = &barrier, .id = i, .mismatches = 0};
        assert_int_equal(pthread_create(&t[i], NULL, raise_in_loop, &args[i]), 0);
    }
    for (int i = 0; i < RACE_THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(args[i].mismatches, 0);
    }
    pthread_barrier_destroy(&barrier);
}

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

static void test_log_level_parse_accepts_names(void **state)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const char *const bad[] = {"", "WARN", "warning", "verbose", "debug ", "0", "trace"};
    sp_log_level_t level;

    (void)state;
    for (int i = 0; i < 4; i++) {
        level = (sp_log_level_t)99;
        assert_int_equal(sp_log_level_parse(names[i], &level), SP_OK);
        assert_int_equal(level, i);
    }
    assert_int_equal(SP_LOG_ERROR, 0);
    assert_int_equal(SP_LOG_DEBUG, 3);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        level = SP_LOG_INFO;
        assert_int_equal(sp_log_level_parse(bad[i], &level), SP_ERR_INVALID_PARAM);
        assert_int_equal(level, SP_LOG_INFO);
        assert_non_null(strstr(sp_last_error(), "error|warn|info|debug"));
    }
    assert_int_equal(sp_log_level_parse("verbose", &level), SP_ERR_INVALID_PARAM);
    assert_string_equal(sp_last_error(), "log level 'verbose' is not one of error|warn|info|debug");
    assert_int_equal(sp_log_level_parse(NULL, &level), SP_ERR_INVALID_PARAM);
    assert_int_equal(level, SP_LOG_INFO);
}

static void test_log_set_level_is_read_back(void **state)
{
    (void)state;
    for (int i = 3; i >= 0; i--) {
        sp_log_set_level((sp_log_level_t)i);
        assert_int_equal(sp_log_level(), i);
    }
    sp_log_set_level(SP_LOG_WARN);
}

/*
 * Runs fn with file descriptor 2 on a temporary file and returns what was
 * written (NUL-terminated, truncated to len - 1). Asserts only after stderr
 * is back, so that a failure message is not lost in the file.
 */
static void capture_stderr(void (*fn)(void *), void *arg, char *buf, size_t len)
{
    FILE *tmp = tmpfile();
    int saved, ok;
    size_t n;

    assert_non_null(tmp);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    ok = dup2(fileno(tmp), STDERR_FILENO) == STDERR_FILENO;
    if (ok)
        fn(arg);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    assert_true(ok);
    rewind(tmp);
    n = fread(buf, 1, len - 1, tmp);
    buf[n] = '\0';
    fclose(tmp);
}

static int count_lines(const char *text)
{
    int n = 0;

    for (; *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

/* Asserts that text matches the extended regular expression pattern. */
static void assert_matches(const char *text, const char *pattern)
{
    regex_t re;
    int rc;

    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    rc = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("'%s' does not match /%s/", text, pattern);
}

#define TS_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

typedef struct line_arg {
    int line;
    time_t before, after;
} line_arg_t;

static void log_one_warning(void *p)
{
    line_arg_t *a = p;

    a->before = time(NULL);
    a->line = __LINE__ + 1;
    sp_warn("hello %d from %s", 42, "the test");
    a->after = time(NULL);
}

static void test_log_line_has_timestamp_identity_and_location(void **state)
{
    line_arg_t a = {0};
    char out[1024], expected_tail[256];
    struct tm tm;
    time_t logged;
    int ms;

    (void)state;
    sp_log_set_level(SP_LOG_WARN);
    sp_log_set_identity("rank 3");
    capture_stderr(log_one_warning, &a, out, sizeof(out));
    sp_log_set_identity(NULL);

    assert_matches(out, "^" TS_RE " spate\\[rank 3\\] WARN  test_status\\.c:[0-9]+: "
                        "hello 42 from the test\n$");
    snprintf(expected_tail, sizeof(expected_tail),
             " WARN  test_status.c:%d: hello 42 from the test\n", a.line);
    assert_non_null(strstr(out, expected_tail));

    /* The timestamp is UTC wall-clock time of the call. */
    memset(&tm, 0, sizeof(tm));
    assert_int_equal(sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon,
                            &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
                     7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    logged = timegm(&tm);
    assert_true(logged >= a.before && logged <= a.after);
    assert_in_range(ms, 0, 999);
}

static void log_identity_line(void *p)
{
    (void)p;
    sp_error("identity check");
}

/* Logs one line and returns the text between "spate[" and "]". */
static void logged_identity(char *identity, size_t len)
{
    char out[1024];
    const char *b, *e;

    capture_stderr(log_identity_line, NULL, out, sizeof(out));
    b = strstr(out, "spate[");
    assert_non_null(b);
    b += 6;
    e = strchr(b, ']');
    assert_non_null(e);
    assert_true((size_t)(e - b) < len);
    memcpy(identity, b, (size_t)(e - b));
    identity[e - b] = '\0';
}

static void test_log_identity_defaults_to_pid_or_rank(void **state)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"};
    char *saved[3];
    char identity[64], expected[64];

    (void)state;
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v != NULL ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    sp_log_set_identity(NULL);
    logged_identity(identity, sizeof(identity));
    snprintf(expected, sizeof(expected), "pid %ld", (long)getpid());
    assert_string_equal(identity, expected);

    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    logged_identity(identity, sizeof(identity));
    assert_string_equal(identity, "rank 5");
    unsetenv("OMPI_COMM_WORLD_RANK");
    setenv("SLURM_PROCID", "12", 1);
    logged_identity(identity, sizeof(identity));
    assert_string_equal(identity, "rank 12");
    unsetenv("SLURM_PROCID");

    /* A set identity wins over the launcher's rank. */
    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    sp_log_set_identity("exec 1");
    logged_identity(identity, sizeof(identity));
    assert_string_equal(identity, "exec 1");
    sp_log_set_identity("an identity longer than thirty-one bytes");
    logged_identity(identity, sizeof(identity));
    assert_string_equal(identity, "an identity longer than thirty-");
    sp_log_set_identity(NULL);
    logged_identity(identity, sizeof(identity));
    assert_string_equal(identity, "rank 5");

    for (int i = 0; i < 3; i++) {
        if (saved[i] != NULL)
            setenv(vars[i], saved[i], 1);
        else
            unsetenv(vars[i]);
        free(saved[i]);
    }
}

typedef struct filter_arg {
    int evaluated;
} filter_arg_t;

static void log_every_level(void *p)
{
    filter_arg_t *a = p;

    sp_error("e %d", ++a->evaluated);
    sp_warn("w %d", ++a->evaluated);
    sp_info("i %d", ++a->evaluated);
    sp_debug("d %d", ++a->evaluated);
}

static void test_log_level_filters_lines(void **state)
{
    filter_arg_t a;
    char out[4096];

    (void)state;
    sp_log_set_identity("filter");

    sp_log_set_level(SP_LOG_ERROR);
    a.evaluated = 0;
    capture_stderr(log_every_level, &a, out, sizeof(out));
    assert_int_equal(count_lines(out), 1);
    assert_matches(out, "^" TS_RE " spate\\[filter\\] ERROR test_status\\.c:[0-9]+: e 1\n$");
    /* Arguments of a line that is off are not even evaluated. */
    assert_int_equal(a.evaluated, 1);

    sp_log_set_level(SP_LOG_WARN);
    a.evaluated = 0;
    capture_stderr(log_every_level, &a, out, sizeof(out));
    assert_int_equal(count_lines(out), 2);
    assert_matches(out,
                   "ERROR test_status\\.c:[0-9]+: e 1\n.* WARN  test_status\\.c:[0-9]+: w 2\n$");
    assert_int_equal(a.evaluated, 2);

    sp_log_set_level(SP_LOG_DEBUG);
    a.evaluated = 0;
    capture_stderr(log_every_level, &a, out, sizeof(out));
    assert_int_equal(count_lines(out), 4);
    assert_matches(out, "ERROR [^\n]*: e 1\n[^\n]* WARN  [^\n]*: w 2\n"
                        "[^\n]* INFO  [^\n]*: i 3\n[^\n]* DEBUG [^\n]*: d 4\n$");
    assert_int_equal(a.evaluated, 4);

    sp_log_set_level(SP_LOG_WARN);
    sp_log_set_identity(NULL);
}

static void raise_one(void *p)
{
    (void)p;
    SP_RAISE(SP_ERR_NO_SPACE, "disk full writing %s", "spill.0");
}

static void test_raise_logs_at_debug_level(void **state)
{
    char out[1024];

    (void)state;
    sp_log_set_level(SP_LOG_WARN);
    capture_stderr(raise_one, NULL, out, sizeof(out));
    assert_string_equal(out, "");
    assert_string_equal(sp_last_error(), "disk full writing spill.0");

    sp_log_set_level(SP_LOG_DEBUG);
    capture_stderr(raise_one, NULL, out, sizeof(out));
    sp_log_set_level(SP_LOG_WARN);
    assert_int_equal(count_lines(out), 1);
    assert_matches(out, " DEBUG status\\.c:[0-9]+: raised SP_ERR_NO_SPACE: no space left on "
                        "device at [^ ]*test_status\\.c:[0-9]+: disk full writing spill\\.0\n$");
}

#define LOG_THREADS 4
#define LOG_LINES   300

static void *log_many(void *p)
{
    int id = *(const int *)p;

    for (int i = 0; i < LOG_LINES; i++)
        sp_warn("thread %d line %d %s", id, i,
                "padding that makes each line long enough to be worth interleaving");
    return NULL;
}

static void log_from_threads(void *p)
{
    pthread_t t[LOG_THREADS];
    int ids[LOG_THREADS];

    (void)p;
    for (int i = 0; i < LOG_THREADS; i++) {
        ids[i] = i;
        if (pthread_create(&t[i], NULL, log_many, &ids[i]) != 0)
            return;
    }
    for (int i = 0; i < LOG_THREADS; i++)
        pthread_join(t[i], NULL);
}

static void test_log_lines_of_threads_do_not_interleave(void **state)
{
    static char out[LOG_THREADS * LOG_LINES * 256];
    int seen[LOG_THREADS] = {0};
    regex_t re;
    char *line, *save = NULL;

    (void)state;
    sp_log_set_level(SP_LOG_WARN);
    capture_stderr(log_from_threads, NULL, out, sizeof(out));
    assert_int_equal(count_lines(out), LOG_THREADS * LOG_LINES);
    assert_int_equal(regcomp(&re,
                             "^" TS_RE " spate\\[[^]]+\\] WARN  test_status\\.c:[0-9]+: thread "
                             "[0-9] line [0-9]+ padding that makes each line long enough to be "
                             "worth interleaving$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        const char *t = strstr(line, "thread ");
        int id, n;

        if (regexec(&re, line, 0, NULL, 0) != 0) {
            regfree(&re);
            fail_msg("mangled line: '%s'", line);
        }
        assert_int_equal(sscanf(t, "thread %d line %d", &id, &n), 2);
        assert_in_range(id, 0, LOG_THREADS - 1);
        /* Each thread's lines arrive in its own order. */
        assert_int_equal(n, seen[id]);
        seen[id]++;
    }
    regfree(&re);
    for (int i = 0; i < LOG_THREADS; i++)
        assert_int_equal(seen[i], LOG_LINES);
}

/*
 * Runs this program again with SPATE_LOG set to value (unset when NULL) and
 * the argument mode (one of the CHILD_ arguments, see main). Returns the
 * child's exit status; err receives its stderr.
 */
static int run_child(const char *mode, const char *value, char *err, size_t len)
{
    int pipe_fd[2], status = 0;
    size_t n = 0;
    ssize_t r;
    pid_t pid;

    assert_int_equal(pipe(pipe_fd), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *argv[] = {"test_status", (char *)mode, NULL};

        dup2(pipe_fd[1], STDERR_FILENO);
        close(pipe_fd[0]);
        close(pipe_fd[1]);
        if (value != NULL)
            setenv("SPATE_LOG", value, 1);
        else
            unsetenv("SPATE_LOG");
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(pipe_fd[1]);
    while ((r = read(pipe_fd[0], err + n, len - 1 - n)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0)
            n += (size_t)r;
    err[n] = '\0';
    close(pipe_fd[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("child with SPATE_LOG=%s: status 0x%x, stderr: %s",
                 value != NULL ? value : "(unset)", (unsigned)status, err);
    return WEXITSTATUS(status);
}

static int child_log_level(const char *value, char *err, size_t len)
{
    return run_child(CHILD_LOG_LEVEL_ARG, value, err, len);
}

/*
 * Child of CHILD_LOG_LEVEL_ARG: reports, in its exit status, the level found
 * at first use and the level after changing SPATE_LOG (10 * first + second).
 */
static int child_report_log_level(void)
{
    int first = (int)sp_log_level(), second;

    /* The variable is read once: changing it later has no effect. */
    setenv("SPATE_LOG", first == SP_LOG_ERROR ? "debug" : "error", 1);
    second = (int)sp_log_level();
    return 10 * first + second;
}

static void test_log_level_comes_from_env_at_first_use(void **state)
{
    char err[2048];

    (void)state;
    assert_int_equal(child_log_level("debug", err, sizeof(err)), 33);
    assert_string_equal(err, "");
    assert_int_equal(child_log_level("info", err, sizeof(err)), 22);
    assert_int_equal(child_log_level("error", err, sizeof(err)), 0);
    assert_int_equal(child_log_level("warn", err, sizeof(err)), 11);
    assert_int_equal(child_log_level(NULL, err, sizeof(err)), 11);
    assert_string_equal(err, "");
    assert_int_equal(child_log_level("", err, sizeof(err)), 11);
    assert_string_equal(err, "");

    /* A bad value falls back to warn, and says so once. */
    assert_int_equal(child_log_level("loud", err, sizeof(err)), 11);
    assert_int_equal(count_lines(err), 1);
    assert_matches(err,
                   "^" TS_RE " spate\\[[^]]+\\] WARN  log\\.c:[0-9]+: "
                   "SPATE_LOG='loud' is not one of error[|]warn[|]info[|]debug; using warn\n$");
}

/* Child of CHILD_RAISE_ARG: the first log-level lookup happens inside SP_RAISE. */
static int child_raise_first(void)
{
    SP_RAISE(SP_ERR_CORRUPT, "the original error");
    return strcmp(sp_last_error(), "the original error") == 0 &&
                   sp_last_error_status() == SP_ERR_CORRUPT
               ? 0
               : 1;
}

static void test_log_level_lookup_keeps_error_being_raised(void **state)
{
    char err[2048];

    (void)state;
    assert_int_equal(run_child(CHILD_RAISE_ARG, "loud", err, sizeof(err)), 0);
    assert_non_null(strstr(err, "SPATE_LOG='loud' is not one of"));
    assert_int_equal(run_child(CHILD_RAISE_ARG, "debug", err, sizeof(err)), 0);
    assert_non_null(strstr(err, "raised SP_ERR_CORRUPT: data fails its checksum at "));
    assert_int_equal(run_child(CHILD_RAISE_ARG, NULL, err, sizeof(err)), 0);
    assert_string_equal(err, "");
}

static void test_assert_logs_and_aborts(void **state)
{
    int pipe_fd[2], status = 0;
    char err[1024];
    size_t n = 0;
    ssize_t r;
    pid_t pid;

    (void)state;
    assert_int_equal(pipe(pipe_fd), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        volatile int two = 2;

        dup2(pipe_fd[1], STDERR_FILENO);
        close(pipe_fd[0]);
        close(pipe_fd[1]);
        signal(SIGABRT, SIG_DFL);
        SP_ASSERT(two == 3);
        _exit(0);
    }
    close(pipe_fd[1]);
    while ((r = read(pipe_fd[0], err + n, sizeof(err) - 1 - n)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0)
            n += (size_t)r;
    err[n] = '\0';
    close(pipe_fd[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    assert_matches(err, "ERROR test_status\\.c:[0-9]+: assertion failed: two == 3\n");
}

static void test_now_ns_is_monotonic(void **state)
{
    uint64_t prev = sp__now_ns();

    (void)state;
    assert_true(prev > 0);
    for (int i = 0; i < 1000; i++) {
        uint64_t now = sp__now_ns();
        assert_true(now >= prev);
        prev = now;
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_str_names_every_value),
        cmocka_unit_test(test_status_str_marks_unknown_values),
        cmocka_unit_test(test_status_predicates_classify_members),
        cmocka_unit_test(test_status_predicates_follow_documented_ranges),
        cmocka_unit_test(test_version_matches_macros),
        cmocka_unit_test(test_raise_sets_last_error),
        cmocka_unit_test(test_raise_may_quote_last_error),
        cmocka_unit_test(test_raise_truncates_long_message),
        cmocka_unit_test(test_last_error_is_per_thread),
        cmocka_unit_test(test_last_error_survives_concurrent_raises),
        cmocka_unit_test(test_log_level_parse_accepts_names),
        cmocka_unit_test(test_log_set_level_is_read_back),
        cmocka_unit_test(test_log_line_has_timestamp_identity_and_location),
        cmocka_unit_test(test_log_identity_defaults_to_pid_or_rank),
        cmocka_unit_test(test_log_level_filters_lines),
        cmocka_unit_test(test_raise_logs_at_debug_level),
        cmocka_unit_test(test_log_lines_of_threads_do_not_interleave),
        cmocka_unit_test(test_log_level_comes_from_env_at_first_use),
        cmocka_unit_test(test_log_level_lookup_keeps_error_being_raised),
        cmocka_unit_test(test_assert_logs_and_aborts),
        cmocka_unit_test(test_now_ns_is_monotonic),
    };

    if (argc == 2 && strcmp(argv[1], CHILD_LOG_LEVEL_ARG) == 0)
        return child_report_log_level();
    if (argc == 2 && strcmp(argv[1], CHILD_RAISE_ARG) == 0)
        return child_raise_first();
    return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
