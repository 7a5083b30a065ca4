/*
 * Tests of the configuration module. A private definition table (below)
 * holds one key of every type, bounded and unbounded, so every parser and
 * range check is driven through sp__conf_create_defs with tables of good and
 * bad texts; each bad text must fail with SP_ERR_BAD_CONF, name its key, and
 * leave the previous value in place. The built-in table is checked for keys
 * whose defaults or bounds do not parse and for duplicate names; file and
 * environment loading run on temporary files and hand-built envp arrays
 * (what is not a conf file is refused: devices, sockets, files over 1 MiB,
 * a NUL byte anywhere; a pipe or FIFO is read up to that limit); the
 * precedence defaults < file < environment < --conf is checked end to end by
 * running the `spate` command ($SPATE_CLI). Allocation failures are injected
 * at every allocation of create and dup.
 */
/* LABELS: unit */
#include "conf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define assert_status(expr, expected)                                                              \
    do {                                                                                           \
        sp_status_t st_ = (expr);                                                                  \
        sp_status_t want_ = (expected);                                                            \
        if (st_ != want_)                                                                          \
            fail_msg("%s returned %s, expected %s (last error: %s)", #expr, sp_status_str(st_),    \
                     sp_status_str(want_), sp_last_error());                                       \
    } while (0)

#define assert_contains(haystack, needle)                                                          \
    do {                                                                                           \
        const char *h_ = (haystack), *n_ = (needle);                                               \
        if (strstr(h_, n_) == NULL)                                                                \
            fail_msg("'%s' does not contain '%s'", h_, n_);                                        \
    } while (0)

static const sp_conf_def_t test_defs[] = {
    {"t.bytes", SP_CONF_SIZE, "0", NULL, NULL, NULL, "unbounded size"},
    {"t.size", SP_CONF_SIZE, "4k", "1k", "1t", NULL, "bounded size"},
    {"t.any", SP_CONF_INT, "0", NULL, NULL, NULL, "unbounded int"},
    {"t.count", SP_CONF_INT, "10", "-5", "100", NULL, "bounded int"},
    {"t.real", SP_CONF_DOUBLE, "0", NULL, NULL, NULL, "unbounded double"},
    {"t.ratio", SP_CONF_DOUBLE, "0.5", "0", "100", NULL, "bounded double"},
    {"t.flag", SP_CONF_BOOL, "false", NULL, NULL, NULL, "a boolean"},
    {"t.wait", SP_CONF_DURATION, "1s", NULL, NULL, NULL, "unbounded duration"},
    {"t.timeout", SP_CONF_DURATION, "30s", "1ms", "1h", NULL, "bounded duration"},
    {"t.text", SP_CONF_STRING, "hello", NULL, NULL, NULL, "a string"},
    {"t.with-dash", SP_CONF_STRING, "", NULL, NULL, NULL, "a key with a dash"},
    {"t.mode", SP_CONF_ENUM, "fast", NULL, NULL, "fast|safe|off", "an enum"},
};
#define TEST_NDEFS (sizeof(test_defs) / sizeof(test_defs[0]))

#define KIB      UINT64_C(1024)
#define MIB      (KIB * 1024)
#define GIB      (MIB * 1024)
#define TIB      (GIB * 1024)
#define PIB      (TIB * 1024)
#define NS_PER_S UINT64_C(1000000000)

static int conf_setup(void **state)
{
    sp_conf_t *conf = NULL;

    if (sp__conf_create_defs(test_defs, TEST_NDEFS, &conf) != SP_OK)
        return -1;
    sp_last_error_clear();
    *state = conf;
    return 0;
}

static int conf_teardown(void **state)
{
    sp_conf_destroy(*state);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Values of every type                                                     */
/* ------------------------------------------------------------------------ */

typedef struct u64_case {
    const char *text;
    sp_status_t status;
    uint64_t value;
} u64_case_t;

static const u64_case_t size_cases[] = {
    {"0", SP_OK, 0},
    {"4096", SP_OK, 4096},
    {"4096b", SP_OK, 4096},
    {"4096B", SP_OK, 4096},
    {"64k", SP_OK, 64 * KIB},
    {"64K", SP_OK, 64 * KIB},
    {"64kb", SP_OK, 64 * KIB},
    {"64KiB", SP_OK, 64 * KIB},
    {"512m", SP_OK, 512 * MIB},
    {"512MiB", SP_OK, 512 * MIB},
    {"4g", SP_OK, 4 * GIB},
    {"4G", SP_OK, 4 * GIB},
    {"1t", SP_OK, TIB},
    {"3T", SP_OK, 3 * TIB},
    {"2p", SP_OK, 2 * PIB},
    {"16383p", SP_OK, 16383 * PIB},
    {"18446744073709551615", SP_OK, UINT64_MAX},
    {"18446744073709551616", SP_ERR_BAD_CONF, 0},
    {"99999999999999999999", SP_ERR_BAD_CONF, 0},
    {"16384p", SP_ERR_BAD_CONF, 0},
    {"12x", SP_ERR_BAD_CONF, 0},
    {"-1", SP_ERR_BAD_CONF, 0},
    {"", SP_ERR_BAD_CONF, 0},
    {"k", SP_ERR_BAD_CONF, 0},
    {"1.5k", SP_ERR_BAD_CONF, 0},
    {"4096bb", SP_ERR_BAD_CONF, 0},
    {"4096ib", SP_ERR_BAD_CONF, 0},
    {"64kk", SP_ERR_BAD_CONF, 0},
    {"64 kilobytes", SP_ERR_BAD_CONF, 0},
};

static const u64_case_t duration_cases[] = {
    {"250ms", SP_OK, 250 * UINT64_C(1000000)},
    {"30s", SP_OK, 30 * NS_PER_S},
    {"5m", SP_OK, 300 * NS_PER_S},
    {"2min", SP_OK, 120 * NS_PER_S},
    {"1h", SP_OK, 3600 * NS_PER_S},
    {"10us", SP_OK, 10000},
    {"100ns", SP_OK, 100},
    {"2", SP_OK, 2 * NS_PER_S},
    {"1.5", SP_OK, 1500 * UINT64_C(1000000)},
    {"0.5s", SP_OK, 500 * UINT64_C(1000000)},
    {"0", SP_OK, 0},
    {"-1s", SP_ERR_BAD_CONF, 0},
    {"-1", SP_ERR_BAD_CONF, 0},
    {"5 parsecs", SP_ERR_BAD_CONF, 0},
    {"", SP_ERR_BAD_CONF, 0},
    {"s", SP_ERR_BAD_CONF, 0},
    {"nan", SP_ERR_BAD_CONF, 0},
    {"inf", SP_ERR_BAD_CONF, 0},
    {"1e30s", SP_ERR_BAD_CONF, 0},
    {" 5s", SP_ERR_BAD_CONF, 0},
    {"5s later", SP_ERR_BAD_CONF, 0},
};

static void check_u64_cases(sp_conf_t *conf, const char *key, const u64_case_t *cases, size_t n,
                            sp_status_t (*get)(const sp_conf_t *, const char *, uint64_t *),
                            sp_status_t (*parse)(const char *, uint64_t *))
{
    for (size_t i = 0; i < n; i++) {
        uint64_t before = 0, got = 0, parsed = 12345;
        sp_status_t st;

        assert_status(get(conf, key, &before), SP_OK);
        st = sp_conf_set(conf, key, cases[i].text);
        if (st != cases[i].status)
            fail_msg("%s = '%s': got %s, expected %s (%s)", key, cases[i].text, sp_status_str(st),
                     sp_status_str(cases[i].status), sp_last_error());
        assert_status(get(conf, key, &got), SP_OK);
        if (st == SP_OK) {
            if (got != cases[i].value)
                fail_msg("%s = '%s': got %llu, expected %llu", key, cases[i].text,
                         (unsigned long long)got, (unsigned long long)cases[i].value);
            assert_status(parse(cases[i].text, &parsed), SP_OK);
            assert_true(parsed == cases[i].value);
        } else {
            /* The message names the key and the text; the old value stays. */
            assert_contains(sp_last_error(), key);
            assert_contains(sp_last_error(), cases[i].text);
            assert_true(got == before);
            assert_status(parse(cases[i].text, &parsed), SP_ERR_BAD_CONF);
            assert_true(parsed == 12345);
        }
    }
}

static void test_conf_size_parses_suffixes(void **state)
{
    check_u64_cases(*state, "t.bytes", size_cases, sizeof(size_cases) / sizeof(size_cases[0]),
                    sp_conf_get_size, sp_conf_parse_size);
}

static void test_conf_duration_parses_units(void **state)
{
    check_u64_cases(*state, "t.wait", duration_cases,
                    sizeof(duration_cases) / sizeof(duration_cases[0]), sp_conf_get_duration,
                    sp_conf_parse_duration);
}

static void test_conf_size_checks_range(void **state)
{
    sp_conf_t *conf = *state;
    uint64_t v = 0;

    assert_status(sp_conf_get_size(conf, "t.size", &v), SP_OK);
    assert_true(v == 4 * KIB);
    assert_status(sp_conf_set(conf, "t.size", "1k"), SP_OK);
    assert_status(sp_conf_set(conf, "t.size", "1t"), SP_OK);
    assert_status(sp_conf_get_size(conf, "t.size", &v), SP_OK);
    assert_true(v == TIB);
    assert_status(sp_conf_set(conf, "t.size", "1023"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.size': value '1023' is out of range [1k, 1t]");
    assert_status(sp_conf_set(conf, "t.size", "1025g"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.size': value '1025g' is out of range [1k, 1t]");
    assert_status(sp_conf_get_size(conf, "t.size", &v), SP_OK);
    assert_true(v == TIB);
}

static void test_conf_duration_checks_range(void **state)
{
    sp_conf_t *conf = *state;
    uint64_t v = 0;

    assert_status(sp_conf_get_duration(conf, "t.timeout", &v), SP_OK);
    assert_true(v == 30 * NS_PER_S);
    assert_status(sp_conf_set(conf, "t.timeout", "1ms"), SP_OK);
    assert_status(sp_conf_set(conf, "t.timeout", "60m"), SP_OK);
    assert_status(sp_conf_set(conf, "t.timeout", "999us"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.timeout': value '999us' is out of range [1ms, 1h]");
    assert_status(sp_conf_set(conf, "t.timeout", "3601"), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "[1ms, 1h]");
    assert_status(sp_conf_get_duration(conf, "t.timeout", &v), SP_OK);
    assert_true(v == 3600 * NS_PER_S);
}

static void test_conf_duration_bad_syntax_message(void **state)
{
    assert_status(sp_conf_set(*state, "t.wait", "5 parsecs"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "conf key 't.wait' (duration): '5 parsecs' is not a valid "
                                         "duration (like 250ms, 30s, 5m, 1h)");
    assert_int_equal(sp_last_error_status(), SP_ERR_BAD_CONF);
}

typedef struct int_case {
    const char *key;
    const char *text;
    sp_status_t status;
    int64_t value;
} int_case_t;

static void test_conf_int_parses_and_checks_range(void **state)
{
    static const int_case_t cases[] = {
        {"t.count", "0", SP_OK, 0},
        {"t.count", "42", SP_OK, 42},
        {"t.count", "-5", SP_OK, -5},
        {"t.count", "100", SP_OK, 100},
        {"t.count", "+7", SP_OK, 7},
        {"t.count", "101", SP_ERR_BAD_CONF, 0},
        {"t.count", "-6", SP_ERR_BAD_CONF, 0},
        {"t.count", "1.5", SP_ERR_BAD_CONF, 0},
        {"t.count", "12x", SP_ERR_BAD_CONF, 0},
        {"t.count", "0x10", SP_ERR_BAD_CONF, 0},
        {"t.count", "", SP_ERR_BAD_CONF, 0},
        {"t.count", " 5", SP_ERR_BAD_CONF, 0},
        {"t.count", "five", SP_ERR_BAD_CONF, 0},
        {"t.any", "-9223372036854775808", SP_OK, INT64_MIN},
        {"t.any", "9223372036854775807", SP_OK, INT64_MAX},
        {"t.any", "9223372036854775808", SP_ERR_BAD_CONF, 0},
        {"t.any", "-9223372036854775809", SP_ERR_BAD_CONF, 0},
        {"t.any", "99999999999999999999", SP_ERR_BAD_CONF, 0},
        {"t.any", "-1", SP_OK, -1},
    };
    sp_conf_t *conf = *state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t before = 0, got = 0;
        sp_status_t st;

        assert_status(sp_conf_get_int(conf, cases[i].key, &before), SP_OK);
        st = sp_conf_set(conf, cases[i].key, cases[i].text);
        if (st != cases[i].status)
            fail_msg("%s = '%s': got %s (%s)", cases[i].key, cases[i].text, sp_status_str(st),
                     sp_last_error());
        assert_status(sp_conf_get_int(conf, cases[i].key, &got), SP_OK);
        if (st == SP_OK) {
            assert_true(got == cases[i].value);
        } else {
            assert_contains(sp_last_error(), cases[i].key);
            assert_true(got == before);
        }
    }
    assert_status(sp_conf_set(conf, "t.count", "101"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.count': value '101' is out of range [-5, 100]");
    assert_status(sp_conf_set(conf, "t.count", "1.5"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "conf key 't.count' (int): '1.5' is not a valid integer");
}

typedef struct double_case {
    const char *key;
    const char *text;
    sp_status_t status;
    double value;
} double_case_t;

static void test_conf_double_parses_and_checks_range(void **state)
{
    static const double_case_t cases[] = {
        {"t.ratio", "0.25", SP_OK, 0.25},
        {"t.ratio", "0", SP_OK, 0.0},
        {"t.ratio", "100", SP_OK, 100.0},
        {"t.ratio", "1e2", SP_OK, 100.0},
        {"t.ratio", "1e3", SP_ERR_BAD_CONF, 0},
        {"t.ratio", "-0.5", SP_ERR_BAD_CONF, 0},
        {"t.ratio", "100.0001", SP_ERR_BAD_CONF, 0},
        {"t.real", "1e3", SP_OK, 1000.0},
        {"t.real", "-2.5", SP_OK, -2.5},
        {"t.real", "1e-3", SP_OK, 1e-3},
        {"t.real", "nan", SP_ERR_BAD_CONF, 0},
        {"t.real", "NaN", SP_ERR_BAD_CONF, 0},
        {"t.real", "inf", SP_ERR_BAD_CONF, 0},
        {"t.real", "-inf", SP_ERR_BAD_CONF, 0},
        {"t.real", "infinity", SP_ERR_BAD_CONF, 0},
        {"t.real", "1e999", SP_ERR_BAD_CONF, 0},
        {"t.real", "", SP_ERR_BAD_CONF, 0},
        {"t.real", "0.5x", SP_ERR_BAD_CONF, 0},
        {"t.real", "1,5", SP_ERR_BAD_CONF, 0},
    };
    sp_conf_t *conf = *state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double before = 0, got = 0;
        sp_status_t st;

        assert_status(sp_conf_get_double(conf, cases[i].key, &before), SP_OK);
        st = sp_conf_set(conf, cases[i].key, cases[i].text);
        if (st != cases[i].status)
            fail_msg("%s = '%s': got %s (%s)", cases[i].key, cases[i].text, sp_status_str(st),
                     sp_last_error());
        assert_status(sp_conf_get_double(conf, cases[i].key, &got), SP_OK);
        if (st == SP_OK) {
            if (got != cases[i].value)
                fail_msg("%s = '%s': got %g, expected %g", cases[i].key, cases[i].text, got,
                         cases[i].value);
        } else {
            assert_contains(sp_last_error(), cases[i].key);
            assert_true(got == before);
        }
    }
    assert_status(sp_conf_set(conf, "t.ratio", "1e3"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.ratio': value '1e3' is out of range [0, 100]");
    assert_status(sp_conf_set(conf, "t.real", "nan"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "conf key 't.real' (double): 'nan' is not a valid number");
}

static void test_conf_bool_accepts_every_spelling(void **state)
{
    static const char *const yes[] = {"true", "TRUE", "True", "yes", "YES", "on", "On", "1"};
    static const char *const no[] = {"false", "FALSE", "no", "No", "off", "OFF", "0"};
    static const char *const bad[] = {"maybe", "", "2", "t", "y", "yes please", " true", "-1"};
    sp_conf_t *conf = *state;
    bool v;

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        assert_status(sp_conf_set(conf, "t.flag", "false"), SP_OK);
        assert_status(sp_conf_set(conf, "t.flag", yes[i]), SP_OK);
        v = false;
        assert_status(sp_conf_get_bool(conf, "t.flag", &v), SP_OK);
        assert_true(v);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_status(sp_conf_set(conf, "t.flag", "true"), SP_OK);
        assert_status(sp_conf_set(conf, "t.flag", no[i]), SP_OK);
        v = true;
        assert_status(sp_conf_get_bool(conf, "t.flag", &v), SP_OK);
        assert_false(v);
    }
    assert_status(sp_conf_set(conf, "t.flag", "yes"), SP_OK);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_status(sp_conf_set(conf, "t.flag", bad[i]), SP_ERR_BAD_CONF);
        assert_contains(sp_last_error(), "t.flag");
        v = false;
        assert_status(sp_conf_get_bool(conf, "t.flag", &v), SP_OK);
        assert_true(v);
    }
    assert_status(sp_conf_set(conf, "t.flag", "maybe"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "conf key 't.flag' (bool): 'maybe' is not a valid boolean "
                                         "(true/false, yes/no, on/off, 1/0)");
}

static void test_conf_string_keeps_any_text(void **state)
{
    sp_conf_t *conf = *state;
    const char *v = NULL;
    char big[4000];

    assert_status(sp_conf_get_string(conf, "t.text", &v), SP_OK);
    assert_string_equal(v, "hello");
    assert_status(sp_conf_set(conf, "t.text", ""), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.text", &v), SP_OK);
    assert_string_equal(v, "");
    assert_status(sp_conf_set(conf, "t.text", " spaces = kept "), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.text", &v), SP_OK);
    assert_string_equal(v, " spaces = kept ");
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_status(sp_conf_set(conf, "t.text", big), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.text", &v), SP_OK);
    assert_string_equal(v, big);
    assert_true(v != big);
}

static void test_conf_enum_accepts_only_choices(void **state)
{
    static const char *const bad[] = {"FAST", "fas", "fastest", "", "fast|safe", "|", " off"};
    sp_conf_t *conf = *state;
    const char *v = NULL;

    assert_status(sp_conf_get_string(conf, "t.mode", &v), SP_OK);
    assert_string_equal(v, "fast");
    assert_status(sp_conf_set(conf, "t.mode", "safe"), SP_OK);
    assert_status(sp_conf_set(conf, "t.mode", "off"), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.mode", &v), SP_OK);
    assert_string_equal(v, "off");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_status(sp_conf_set(conf, "t.mode", bad[i]), SP_ERR_BAD_CONF);
        assert_contains(sp_last_error(), "t.mode");
        assert_contains(sp_last_error(), "fast|safe|off");
        assert_status(sp_conf_get_string(conf, "t.mode", &v), SP_OK);
        assert_string_equal(v, "off");
    }
    assert_status(sp_conf_set(conf, "t.mode", "fastest"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(),
                        "conf key 't.mode': 'fastest' is not one of fast|safe|off");
}

/* ------------------------------------------------------------------------ */
/* Keys, assignments, getters, copies                                       */
/* ------------------------------------------------------------------------ */

static void test_conf_set_rejects_unknown_key(void **state)
{
    sp_conf_t *conf = *state;

    sp_last_error_clear();
    assert_status(sp_conf_set(conf, "no.such_key", "1"), SP_ERR_BAD_CONF);
    assert_int_equal(sp_last_error_status(), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "'no.such_key'");
    assert_false(sp_conf_is_set(conf, "no.such_key"));
    /* Keys are matched exactly: no prefix, case or whitespace folding. */
    assert_status(sp_conf_set(conf, "t.coun", "1"), SP_ERR_BAD_CONF);
    assert_status(sp_conf_set(conf, "T.COUNT", "1"), SP_ERR_BAD_CONF);
    assert_status(sp_conf_set(conf, "t.count ", "1"), SP_ERR_BAD_CONF);
}

static void test_conf_set_failure_keeps_old_value(void **state)
{
    sp_conf_t *conf = *state;
    int64_t i = 0;
    const char *s = NULL;

    /* A key at its default stays at its default and stays unset. */
    assert_status(sp_conf_set(conf, "t.count", "lots"), SP_ERR_BAD_CONF);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 10);
    assert_false(sp_conf_is_set(conf, "t.count"));

    /* A set key keeps its value and its set flag. */
    assert_status(sp_conf_set(conf, "t.count", "42"), SP_OK);
    assert_status(sp_conf_set(conf, "t.count", "4200"), SP_ERR_BAD_CONF);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 42);
    assert_true(sp_conf_is_set(conf, "t.count"));

    /* The same holds when the copy of the text cannot be allocated. */
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_status(sp_conf_set(conf, "t.count", "7"), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_contains(sp_last_error(), "t.count");
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 42);
    sp__fault_arm(SP_FAULT_ALLOC, 1);
    assert_status(sp_conf_set(conf, "t.text", "new"), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "hello");
    assert_false(sp_conf_is_set(conf, "t.text"));
}

static void test_conf_assignment_trims_and_splits(void **state)
{
    sp_conf_t *conf = *state;
    int64_t i = 0;
    const char *s = NULL;
    char long_value[5000];

    assert_status(sp_conf_set_assignment(conf, "t.count=7"), SP_OK);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 7);
    assert_status(sp_conf_set_assignment(conf, "  t.count \t=  8  "), SP_OK);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 8);
    /* The first '=' splits; spaces inside the value stay. */
    assert_status(sp_conf_set_assignment(conf, "t.text = a = b  c "), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "a = b  c");
    assert_status(sp_conf_set_assignment(conf, "t.text="), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "");

    assert_status(sp_conf_set_assignment(conf, "t.count 9"), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "--conf: 't.count 9' is not key=value");
    assert_status(sp_conf_set_assignment(conf, ""), SP_ERR_BAD_CONF);
    assert_status(sp_conf_set_assignment(conf, " = 9"), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "empty key");
    assert_status(sp_conf_set_assignment(conf, "t.count="), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "t.count");
    assert_status(sp_conf_set_assignment(conf, "no.such=1"), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "no.such");
    memcpy(long_value, "t.text=", 7);
    memset(long_value + 7, 'v', sizeof(long_value) - 8);
    long_value[sizeof(long_value) - 1] = '\0';
    assert_status(sp_conf_set_assignment(conf, long_value), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "too long");

    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 8);
}

static void test_conf_getter_checks_type_and_key(void **state)
{
    sp_conf_t *conf = *state;
    uint64_t u = 77;
    int64_t i = 77;
    double d = 77.0;
    bool b = true;
    const char *s = "untouched";

    assert_status(sp_conf_get_size(conf, "t.count", &u), SP_ERR_INVALID_PARAM);
    assert_contains(sp_last_error(), "'t.count'");
    assert_contains(sp_last_error(), "int, not a size");
    assert_status(sp_conf_get_duration(conf, "t.bytes", &u), SP_ERR_INVALID_PARAM);
    assert_status(sp_conf_get_size(conf, "t.wait", &u), SP_ERR_INVALID_PARAM);
    assert_status(sp_conf_get_int(conf, "t.bytes", &i), SP_ERR_INVALID_PARAM);
    assert_status(sp_conf_get_double(conf, "t.count", &d), SP_ERR_INVALID_PARAM);
    assert_status(sp_conf_get_bool(conf, "t.ratio", &b), SP_ERR_INVALID_PARAM);
    assert_status(sp_conf_get_string(conf, "t.flag", &s), SP_ERR_INVALID_PARAM);
    assert_true(u == 77 && i == 77 && d == 77.0 && b);
    assert_string_equal(s, "untouched");

    assert_status(sp_conf_get_size(conf, "nope", &u), SP_ERR_NOT_FOUND);
    assert_string_equal(sp_last_error(), "unknown conf key 'nope'");
    assert_status(sp_conf_get_duration(conf, "nope", &u), SP_ERR_NOT_FOUND);
    assert_status(sp_conf_get_int(conf, "nope", &i), SP_ERR_NOT_FOUND);
    assert_status(sp_conf_get_double(conf, "nope", &d), SP_ERR_NOT_FOUND);
    assert_status(sp_conf_get_bool(conf, "nope", &b), SP_ERR_NOT_FOUND);
    assert_status(sp_conf_get_string(conf, "nope", &s), SP_ERR_NOT_FOUND);
    assert_true(u == 77 && i == 77 && d == 77.0 && b);
    assert_string_equal(s, "untouched");

    /* An enum reads as its string. */
    assert_status(sp_conf_get_string(conf, "t.mode", &s), SP_OK);
    assert_string_equal(s, "fast");
}

static void test_conf_is_set_tracks_assignments(void **state)
{
    sp_conf_t *conf = *state;

    for (size_t k = 0; k < TEST_NDEFS; k++)
        assert_false(sp_conf_is_set(conf, test_defs[k].key));
    /* Setting a key to its default value still marks it set. */
    assert_status(sp_conf_set(conf, "t.count", "10"), SP_OK);
    assert_true(sp_conf_is_set(conf, "t.count"));
    assert_false(sp_conf_is_set(conf, "t.any"));
    assert_false(sp_conf_is_set(conf, "unknown.key"));
}

static void test_conf_dup_copies_set_values(void **state)
{
    sp_conf_t *conf = *state, *copy = NULL;
    int64_t i = 0;
    uint64_t u = 0;
    const char *s = NULL;

    assert_status(sp_conf_set(conf, "t.count", "33"), SP_OK);
    assert_status(sp_conf_set(conf, "t.bytes", "2g"), SP_OK);
    assert_status(sp_conf_set(conf, "t.text", "copied"), SP_OK);
    assert_status(sp_conf_set(conf, "t.mode", "safe"), SP_OK);
    assert_status(sp_conf_dup(conf, &copy), SP_OK);
    assert_non_null(copy);

    /* The copy is independent of the original. */
    assert_status(sp_conf_set(conf, "t.count", "44"), SP_OK);
    assert_status(sp_conf_set(conf, "t.text", "changed"), SP_OK);
    assert_status(sp_conf_set(conf, "t.any", "5"), SP_OK);

    assert_status(sp_conf_get_int(copy, "t.count", &i), SP_OK);
    assert_true(i == 33);
    assert_status(sp_conf_get_size(copy, "t.bytes", &u), SP_OK);
    assert_true(u == 2 * GIB);
    assert_status(sp_conf_get_string(copy, "t.text", &s), SP_OK);
    assert_string_equal(s, "copied");
    assert_status(sp_conf_get_string(copy, "t.mode", &s), SP_OK);
    assert_string_equal(s, "safe");
    assert_true(sp_conf_is_set(copy, "t.count"));
    assert_true(sp_conf_is_set(copy, "t.mode"));
    assert_false(sp_conf_is_set(copy, "t.any"));
    assert_false(sp_conf_is_set(copy, "t.ratio"));
    assert_status(sp_conf_get_int(copy, "t.any", &i), SP_OK);
    assert_true(i == 0);
    sp_conf_destroy(copy);
    sp_conf_destroy(NULL);
}

static void test_conf_markdown_lists_every_key(void **state)
{
    static const sp_conf_def_t defs[] = {
        {"a.size", SP_CONF_SIZE, "4k", "1k", "1g", NULL, "A size."},
        {"a.flag", SP_CONF_BOOL, "true", NULL, NULL, NULL, "A flag."},
        {"a.mode", SP_CONF_ENUM, "fast", NULL, NULL, "fast|safe|off", "A mode."},
        {"a.text", SP_CONF_STRING, "", NULL, NULL, NULL, "Some text."},
    };
    const char *expected = "| Key | Type | Default | Range | Description |\n"
                           "|---|---|---|---|---|\n"
                           "| `a.size` | size | `4k` | 1k .. 1g | A size. |\n"
                           "| `a.flag` | bool | `true` | true, false | A flag. |\n"
                           "| `a.mode` | enum | `fast` | fast, safe, off | A mode. |\n"
                           "| `a.text` | string | (empty) | any | Some text. |\n";

    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);

    (void)state;
    assert_non_null(out);
    sp__conf_write_markdown_defs(defs, sizeof(defs) / sizeof(defs[0]), out);
    assert_int_equal(fclose(out), 0);
    assert_string_equal(buf, expected);
    free(buf);
}

/* ------------------------------------------------------------------------ */
/* Files                                                                    */
/* ------------------------------------------------------------------------ */

static char tmp_dir[64];

static int files_setup(void **state)
{
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/spate-test-conf.XXXXXX");
    if (mkdtemp(tmp_dir) == NULL)
        return -1;
    return conf_setup(state);
}

static int files_teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    if (system(cmd) != 0)
        return -1;
    return conf_teardown(state);
}

/* Writes text to tmp_dir/name and returns the path (static buffer). */
static const char *write_tmp(const char *name, const char *text)
{
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmp_dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_conf_load_file_reads_assignments(void **state)
{
    sp_conf_t *conf = *state;
    const char *path = write_tmp("good.conf", "# a comment line\n"
                                              "\n"
                                              "   \t\n"
                                              "t.count = 5\n"
                                              "   # an indented comment\n"
                                              "t.text=hello world  \n"
                                              "  t.flag\t=\tyes\r\n"
                                              "t.bytes = 64k\n"
                                              "t.mode = safe");
    int64_t i = 0;
    uint64_t u = 0;
    bool b = false;
    const char *s = NULL;

    assert_status(sp_conf_load_file(conf, path), SP_OK);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 5);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "hello world");
    assert_status(sp_conf_get_bool(conf, "t.flag", &b), SP_OK);
    assert_true(b);
    assert_status(sp_conf_get_size(conf, "t.bytes", &u), SP_OK);
    assert_true(u == 64 * KIB);
    assert_status(sp_conf_get_string(conf, "t.mode", &s), SP_OK);
    assert_string_equal(s, "safe");
    assert_true(sp_conf_is_set(conf, "t.count"));
    assert_false(sp_conf_is_set(conf, "t.any"));

    path = write_tmp("empty.conf", "");
    assert_status(sp_conf_load_file(conf, path), SP_OK);
}

static void test_conf_load_file_names_bad_line(void **state)
{
    sp_conf_t *conf = *state;
    char expected[256];
    const char *path;
    int64_t i = 0;

    path = write_tmp("bad_value.conf", "# header\n"
                                       "t.any = 3\n"
                                       "t.count = abc\n"
                                       "t.any = 4\n");
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected),
             "%s:3: conf key 't.count' (int): 'abc' is not a valid integer", path);
    assert_string_equal(sp_last_error(), expected);
    /* Lines before the bad one are applied, lines after it are not. */
    assert_status(sp_conf_get_int(conf, "t.any", &i), SP_OK);
    assert_true(i == 3);

    path = write_tmp("no_equals.conf", "t.any = 1\njust some words\n");
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected), "%s:2: 'just some words' is not key=value", path);
    assert_string_equal(sp_last_error(), expected);

    path = write_tmp("unknown.conf", "\n\n\nno.such.key = 1\n");
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected), "%s:4: ", path);
    assert_true(strncmp(sp_last_error(), expected, strlen(expected)) == 0);
    assert_contains(sp_last_error(), "'no.such.key'");

    path = write_tmp("range.conf", "t.count = 1000\n");
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected), "%s:1: conf key 't.count': value '1000' is out of range",
             path);
    assert_contains(sp_last_error(), expected);
}

static void test_conf_load_file_rejects_long_line(void **state)
{
    char *text = malloc(6000);
    char expected[256];
    const char *path;

    assert_non_null(text);
    memcpy(text, "t.text = ", 9);
    memset(text + 9, 'x', 6000 - 11);
    text[6000 - 2] = '\n';
    text[6000 - 1] = '\0';
    path = write_tmp("long.conf", text);
    free(text);
    assert_status(sp_conf_load_file(*state, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected), "%s:1: line longer than", path);
    assert_contains(sp_last_error(), expected);
}

static void test_conf_load_file_reports_io_error(void **state)
{
    sp_conf_t *conf = *state;
    char path[128];

    snprintf(path, sizeof(path), "%s/does-not-exist.conf", tmp_dir);
    assert_status(sp_conf_load_file(conf, path), SP_ERR_IO);
    assert_contains(sp_last_error(), path);
    assert_contains(sp_last_error(), "No such file or directory");
    /* A directory opens but cannot be read. */
    assert_status(sp_conf_load_file(conf, tmp_dir), SP_ERR_IO);
    assert_contains(sp_last_error(), tmp_dir);
}

/* Writes len bytes of buf to tmp_dir/name and returns the path (static buffer). */
static const char *write_tmp_bytes(const char *name, const void *buf, size_t len)
{
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmp_dir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_conf_load_file_refuses_devices(void **state)
{
    static const char *const devices[] = {"/dev/zero", "/dev/null", "/dev/urandom"};
    sp_conf_t *conf = *state;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char expected[256];
    int fd;

    /* Each refused before it is read: /dev/zero once made the reader spin forever. */
    for (size_t i = 0; i < sizeof(devices) / sizeof(devices[0]); i++) {
        assert_status(sp_conf_load_file(conf, devices[i]), SP_ERR_BAD_CONF);
        snprintf(expected, sizeof(expected),
                 "conf file '%s' is a character device; a conf file is a regular file or a pipe",
                 devices[i]);
        assert_string_equal(sp_last_error(), expected);
    }
    /* A socket is not a conf file either. */
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/conf.sock", tmp_dir);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_status(sp_conf_load_file(conf, addr.sun_path), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "is a socket");
    close(fd);
}

static void test_conf_load_file_refuses_large_file(void **state)
{
    const size_t limit = 1u << 20;
    sp_conf_t *conf = *state;
    char *text = malloc(limit + 1);
    char expected[256];
    const char *path;
    int64_t i = 0;

    assert_non_null(text);
    /* Exactly the limit: comment lines, then one assignment. */
    memset(text, '#', limit);
    for (size_t at = 63; at < limit; at += 64)
        text[at] = '\n';
    memcpy(text + limit - 14, "\nt.count = 42\n", 14);
    path = write_tmp_bytes("limit.conf", text, limit);
    assert_status(sp_conf_load_file(conf, path), SP_OK);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 42);

    /* One byte more is refused before any line is applied. */
    memcpy(text + limit - 14, "\nt.count = 43\n#", 15);
    path = write_tmp_bytes("over.conf", text, limit + 1);
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected),
             "conf file '%s' is 1048577 bytes; a conf file is at most 1048576 bytes (1 MiB)", path);
    assert_string_equal(sp_last_error(), expected);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 42);
    free(text);
}

static void test_conf_load_file_refuses_nul_byte(void **state)
{
    static const char text[] = "t.any = 1\n"
                               "# a comment\n"
                               "t.text = ab\0cd\n"
                               "t.count = 7\n";
    sp_conf_t *conf = *state;
    char expected[256];
    const char *path;

    /* Text after the NUL byte was silently dropped; now the file is refused, naming the line. */
    path = write_tmp_bytes("nul.conf", text, sizeof(text) - 1);
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    snprintf(expected, sizeof(expected),
             "%s:3: a NUL byte (at byte 33 of the file); a conf file is text", path);
    assert_string_equal(sp_last_error(), expected);
    /* Nothing of it was applied, not even the lines before. */
    assert_false(sp_conf_is_set(conf, "t.any"));
    assert_false(sp_conf_is_set(conf, "t.count"));

    /* A NUL as the very first byte is line 1. */
    path = write_tmp_bytes("nul1.conf", "\0t.any = 1\n", 11);
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), ":1: a NUL byte (at byte 0 of the file)");
}

/*
 * Starts a child that writes count copies of chunk (len bytes) to fd and
 * exits; a reader that stops early makes it end on EPIPE. other_end (or -1)
 * is closed in the child, so that the reader's close is the pipe's last.
 */
static pid_t start_writer(int fd, int other_end, const char *chunk, size_t len, size_t count)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGPIPE, SIG_IGN);
        if (other_end >= 0)
            close(other_end);
        for (size_t i = 0; i < count; i++)
            for (size_t off = 0; off < len;) {
                ssize_t n = write(fd, chunk + off, len - off);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    _exit(0);
                off += (size_t)n;
            }
        _exit(0);
    }
    return pid;
}

static void test_conf_load_file_reads_pipes_up_to_limit(void **state)
{
    static const char good[] = "t.count = 7\nt.text = from a pipe\n";
    static const char comment[64] = "# a comment line that goes on and on and on and on and on\n";
    static const char zeros[4096];
    sp_conf_t *conf = *state;
    char fifo[128], path[64];
    const char *s = NULL;
    int64_t i = 0;
    int fds[2], status;
    pid_t pid;

    /* A pipe, as `--conf-file <(...)` gives: read whole. */
    assert_int_equal(pipe(fds), 0);
    pid = start_writer(fds[1], fds[0], good, sizeof(good) - 1, 1);
    close(fds[1]);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fds[0]);
    assert_status(sp_conf_load_file(conf, path), SP_OK);
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 7);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "from a pipe");

    /* A pipe that never ends (`cat /dev/zero |`): read up to the limit, then refused. */
    assert_int_equal(pipe(fds), 0);
    pid = start_writer(fds[1], fds[0], zeros, sizeof(zeros), SIZE_MAX);
    close(fds[1]);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fds[0]);
    assert_status(sp_conf_load_file(conf, path), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "is longer than 1048576 bytes (1 MiB)");
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);

    /* A FIFO of 2 MiB of comments: refused at the limit, whatever the content. */
    snprintf(fifo, sizeof(fifo), "%s/conf.fifo", tmp_dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int w = open(fifo, O_WRONLY);
        if (w < 0)
            _exit(1);
        waitpid(start_writer(w, -1, comment, sizeof(comment), (2u << 20) / sizeof(comment)), NULL,
                0);
        _exit(0);
    }
    assert_status(sp_conf_load_file(conf, fifo), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), fifo);
    assert_contains(sp_last_error(), "is longer than 1048576 bytes");
    assert_int_equal(waitpid(pid, &status, 0), pid);
}

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

static void test_conf_load_env_maps_names(void **state)
{
    char *envp[] = {
        "PATH=/usr/bin:/bin",
        "SPATE_LOG=debug",
        "SPATE_CONFIG=ignored",
        "SPATE_CONF_MEMORY_STORAGE_FRACTION=0.25",
        "SPATE_CONF_MEMORY_PAGE_SIZE=8m",
        "SPATE_CONF_NO_EQUALS_SIGN",
        "HOME=/root",
        NULL,
    };
    sp_conf_t *conf = NULL;
    double d = 0;
    uint64_t u = 0;

    (void)state;
    assert_status(sp_conf_create(&conf), SP_OK);
    assert_status(sp_conf_load_env(conf, envp), SP_OK);
    assert_status(sp_conf_get_double(conf, "memory.storage_fraction", &d), SP_OK);
    assert_true(d == 0.25);
    assert_true(sp_conf_is_set(conf, "memory.storage_fraction"));
    assert_status(sp_conf_get_size(conf, "memory.page_size", &u), SP_OK);
    assert_true(u == 8 * MIB);
    assert_false(sp_conf_is_set(conf, "memory.fraction"));
    assert_status(sp_conf_load_env(conf, NULL), SP_OK);
    sp_conf_destroy(conf);
}

static void test_conf_load_env_maps_dashes_and_values(void **state)
{
    char *envp[] = {"SPATE_CONF_T_WITH_DASH=a=b", "SPATE_CONF_T_COUNT=12", NULL};
    sp_conf_t *conf = *state;
    const char *s = NULL;
    int64_t i = 0;

    assert_status(sp_conf_load_env(conf, envp), SP_OK);
    assert_status(sp_conf_get_string(conf, "t.with-dash", &s), SP_OK);
    assert_string_equal(s, "a=b");
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 12);
}

static void test_conf_load_env_rejects_unknown_and_bad(void **state)
{
    char *unknown[] = {"SPATE_CONF_X=1", NULL};
    char *lower[] = {"SPATE_CONF_t_count=1", NULL};
    char *empty[] = {"SPATE_CONF_=1", NULL};
    char *bad[] = {"SPATE_CONF_T_ANY=3", "SPATE_CONF_T_COUNT=x", "SPATE_CONF_T_TEXT=after", NULL};
    sp_conf_t *conf = *state;
    const char *s = NULL;
    int64_t i = 0;

    assert_status(sp_conf_load_env(conf, unknown), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "environment SPATE_CONF_X names no conf key");
    assert_status(sp_conf_load_env(conf, lower), SP_ERR_BAD_CONF);
    assert_contains(sp_last_error(), "SPATE_CONF_t_count");
    assert_status(sp_conf_load_env(conf, empty), SP_ERR_BAD_CONF);
    assert_status(sp_conf_load_env(conf, bad), SP_ERR_BAD_CONF);
    assert_string_equal(sp_last_error(), "environment SPATE_CONF_T_COUNT: conf key 't.count' "
                                         "(int): 'x' is not a valid integer");
    assert_status(sp_conf_get_int(conf, "t.any", &i), SP_OK);
    assert_true(i == 3);
    assert_status(sp_conf_get_int(conf, "t.count", &i), SP_OK);
    assert_true(i == 10);
    assert_status(sp_conf_get_string(conf, "t.text", &s), SP_OK);
    assert_string_equal(s, "hello");
}

/* ------------------------------------------------------------------------ */
/* The built-in table                                                       */
/* ------------------------------------------------------------------------ */

static void env_name(const char *key, char *buf, size_t len)
{
    size_t i;

    for (i = 0; key[i] != '\0' && i + 1 < len; i++)
        buf[i] = key[i] == '.' || key[i] == '-'
                     ? '_'
                     : (char)(key[i] >= 'a' && key[i] <= 'z' ? key[i] - 'a' + 'A' : key[i]);
    buf[i] = '\0';
}

static void test_conf_builtin_defaults_parse(void **state)
{
    sp_conf_t *conf = NULL;

    (void)state;
    assert_true(sp__conf_ndefs > 0);
    assert_status(sp_conf_create(&conf), SP_OK);
    for (size_t k = 0; k < sp__conf_ndefs; k++) {
        const sp_conf_def_t *d = &sp__conf_defs[k];
        uint64_t u;
        int64_t i;
        double x;
        bool b;
        const char *s;
        sp_status_t st = SP_ERR_INTERNAL;

        switch (d->type) {
        case SP_CONF_SIZE: st = sp_conf_get_size(conf, d->key, &u); break;
        case SP_CONF_DURATION: st = sp_conf_get_duration(conf, d->key, &u); break;
        case SP_CONF_INT: st = sp_conf_get_int(conf, d->key, &i); break;
        case SP_CONF_DOUBLE: st = sp_conf_get_double(conf, d->key, &x); break;
        case SP_CONF_BOOL: st = sp_conf_get_bool(conf, d->key, &b); break;
        case SP_CONF_STRING:
        case SP_CONF_ENUM: st = sp_conf_get_string(conf, d->key, &s); break;
        }
        if (st != SP_OK)
            fail_msg("built-in key %s: %s", d->key, sp_last_error());
        assert_false(sp_conf_is_set(conf, d->key));
        assert_string_not_equal(sp__conf_type_name(d->type), "?");
        assert_non_null(d->doc);
        assert_true(strlen(d->doc) > 0);
        assert_null(strchr(d->doc, '|'));
        assert_null(strchr(d->doc, '\n'));
        assert_true(d->type == SP_CONF_ENUM ? d->choices != NULL : d->choices == NULL);
    }
    sp_conf_destroy(conf);
}

static void test_conf_builtin_keys_are_unique(void **state)
{
    (void)state;
    for (size_t a = 0; a < sp__conf_ndefs; a++) {
        const char *key = sp__conf_defs[a].key;
        char env_a[128], env_b[128];

        assert_non_null(key);
        assert_non_null(strchr(key, '.'));
        for (const char *p = key; *p != '\0'; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '_'))
                fail_msg("built-in key '%s' has a character outside [a-z0-9._]", key);
        env_name(key, env_a, sizeof(env_a));
        for (size_t b = a + 1; b < sp__conf_ndefs; b++) {
            if (strcmp(key, sp__conf_defs[b].key) == 0)
                fail_msg("built-in key '%s' is defined twice (entries %zu and %zu)", key, a, b);
            /* Two keys with one environment name could not both be set. */
            env_name(sp__conf_defs[b].key, env_b, sizeof(env_b));
            if (strcmp(env_a, env_b) == 0)
                fail_msg("built-in keys '%s' and '%s' share SPATE_CONF_%s", key,
                         sp__conf_defs[b].key, env_a);
        }
    }
}

/*
 * The range check skips a bound that does not parse, so a typo in a bound
 * would silently disable it: every bound must be a valid value of its key's
 * type, and min <= default <= max.
 */
static void test_conf_builtin_bounds_parse(void **state)
{
    (void)state;
    for (size_t k = 0; k < sp__conf_ndefs; k++) {
        sp_conf_def_t d = sp__conf_defs[k];
        const char *bounds[2] = {d.min, d.max};
        sp_conf_t *conf = NULL;

        if (d.type == SP_CONF_BOOL || d.type == SP_CONF_STRING || d.type == SP_CONF_ENUM) {
            assert_null(d.min);
            assert_null(d.max);
            continue;
        }
        for (size_t j = 0; j < 2; j++) {
            if (bounds[j] == NULL)
                continue;
            d.def = bounds[j];
            if (sp__conf_create_defs(&d, 1, &conf) != SP_OK)
                fail_msg("built-in key %s: bound '%s' is invalid: %s", d.key, bounds[j],
                         sp_last_error());
            sp_conf_destroy(conf);
            conf = NULL;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                      */
/* ------------------------------------------------------------------------ */

static void test_conf_create_fails_cleanly_on_nomem(void **state)
{
    static char sentinel_storage;
    sp_conf_t *const sentinel = (sp_conf_t *)(void *)&sentinel_storage;
    sp_conf_t *conf = sentinel;
    sp_status_t st = SP_ERR_INTERNAL;
    uint64_t n, failures = 0;

    (void)state;
    for (n = 1; n < 10000; n++) {
        uint64_t fired = sp__fault_fired(SP_FAULT_ALLOC);

        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = sp_conf_create(&conf);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (st == SP_OK) {
            assert_true(sp__fault_fired(SP_FAULT_ALLOC) == fired);
            break;
        }
        assert_status(st, SP_ERR_NOMEM);
        assert_int_equal(sp_last_error_status(), SP_ERR_NOMEM);
        assert_true(sp__fault_fired(SP_FAULT_ALLOC) == fired + 1);
        assert_ptr_equal(conf, sentinel);
        failures++;
    }
    assert_status(st, SP_OK);
    assert_true(conf != sentinel);
    /* The conf, its entry array and one copied text per key. */
    assert_true(failures >= sp__conf_ndefs + 2);
    sp_conf_destroy(conf);
}

static void test_conf_dup_fails_cleanly_on_nomem(void **state)
{
    static char sentinel_storage;
    sp_conf_t *conf = *state, *const sentinel = (sp_conf_t *)(void *)&sentinel_storage;
    sp_conf_t *copy = sentinel;
    sp_status_t st = SP_ERR_INTERNAL;
    uint64_t n, failures = 0;
    const char *s = NULL;

    assert_status(sp_conf_set(conf, "t.text", "dup me"), SP_OK);
    assert_status(sp_conf_set(conf, "t.count", "-2"), SP_OK);
    for (n = 1; n < 10000; n++) {
        sp__fault_arm(SP_FAULT_ALLOC, n);
        st = sp_conf_dup(conf, &copy);
        sp__fault_arm(SP_FAULT_ALLOC, 0);
        if (st == SP_OK)
            break;
        assert_status(st, SP_ERR_NOMEM);
        assert_ptr_equal(copy, sentinel);
        failures++;
    }
    assert_status(st, SP_OK);
    /* Defaults of every key plus the two set values are copied. */
    assert_true(failures >= TEST_NDEFS + 2 + 2);
    assert_status(sp_conf_get_string(copy, "t.text", &s), SP_OK);
    assert_string_equal(s, "dup me");
    assert_true(sp_conf_is_set(copy, "t.count"));
    sp_conf_destroy(copy);
}

/* ------------------------------------------------------------------------ */
/* Precedence through the spate command                                     */
/* ------------------------------------------------------------------------ */

/* Reads fd to EOF into buf (NUL-terminated, truncated to len - 1). */
static void read_all(int fd, char *buf, size_t len)
{
    size_t n = 0;
    ssize_t r;

    while ((r = read(fd, buf + n, len - 1 - n)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0)
            n += (size_t)r;
    buf[n] = '\0';
}

/*
 * Runs $SPATE_CLI with argv (argv[0] included) and this process's
 * environment minus every SPATE_CONF_ variable plus extra_env. Returns the
 * exit status; out and err receive stdout and stderr.
 */
static int run_cli(char *const argv[], char *const extra_env[], char *out, size_t out_len,
                   char *err, size_t err_len)
{
    const char *cli = getenv("SPATE_CLI");
    char *envp[512];
    size_t n = 0;
    int out_pipe[2], err_pipe[2], status = 0;
    pid_t pid;

    if (cli == NULL || *cli == '\0')
        fail_msg("SPATE_CLI is not set; run this test through ctest");
    for (char **e = environ; *e != NULL && n < 500; e++)
        if (strncmp(*e, "SPATE_CONF_", 11) != 0)
            envp[n++] = *e;
    for (size_t i = 0; extra_env[i] != NULL && n < 510; i++)
        envp[n++] = extra_env[i];
    envp[n] = NULL;

    assert_int_equal(pipe(out_pipe), 0);
    assert_int_equal(pipe(err_pipe), 0);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(err_pipe[1], STDERR_FILENO);
        close(out_pipe[0]);
        close(out_pipe[1]);
        close(err_pipe[0]);
        close(err_pipe[1]);
        execve(cli, argv, envp);
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    /* The outputs are small: stdout fits the pipe while stderr is read. */
    read_all(err_pipe[0], err, err_len);
    read_all(out_pipe[0], out, out_len);
    close(out_pipe[0]);
    close(err_pipe[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_conf_cli_precedence(void **state)
{
    const char *file = write_tmp("precedence.conf", "memory.fraction = 0.3\n"
                                                    "memory.storage_fraction = 0.3\n");
    char *env[] = {"SPATE_CONF_MEMORY_FRACTION=0.65", "SPATE_CONF_MEMORY_STORAGE_FRACTION=0.4",
                   NULL};
    char *no_env[] = {NULL};
    char out[4096], err[4096];
    int rc;

    (void)state;
    {
        /* --conf beats the environment; the environment beats the file. */
        char *argv[] = {"spate",
                        "--conf-file",
                        (char *)file,
                        "--conf",
                        "memory.fraction=0.7",
                        "conf",
                        "memory.fraction",
                        "memory.storage_fraction",
                        NULL};
        rc = run_cli(argv, env, out, sizeof(out), err, sizeof(err));
        assert_string_equal(err, "");
        assert_int_equal(rc, 0);
        assert_string_equal(out, "memory.fraction = 0.7\nmemory.storage_fraction = 0.4\n");
    }
    {
        /* Without --conf the environment wins over the file. */
        char *argv[] = {"spate", "--conf-file", (char *)file, "conf", "memory.fraction", NULL};
        rc = run_cli(argv, env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 0);
        assert_string_equal(out, "memory.fraction = 0.65\n");
    }
    {
        /* The file beats the defaults; unset keys are marked. */
        char *argv[] = {"spate",           "--conf-file",      (char *)file, "conf",
                        "memory.fraction", "memory.page_size", NULL};
        rc = run_cli(argv, no_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 0);
        assert_string_equal(out, "memory.fraction = 0.3\nmemory.page_size = 4194304  (default)\n");
    }
    {
        /* The last of several --conf wins. */
        char *argv[] = {"spate",
                        "--conf",
                        "memory.fraction=0.8",
                        "--conf=memory.fraction=0.9",
                        "conf",
                        "memory.fraction",
                        NULL};
        rc = run_cli(argv, env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 0);
        assert_string_equal(out, "memory.fraction = 0.9\n");
    }
}

static void test_conf_cli_reports_bad_values_once(void **state)
{
    char *no_env[] = {NULL};
    char *bad_env[] = {"SPATE_CONF_MEMORY_FRACTON=0.5", NULL};
    char out[4096], err[4096];
    int rc;

    (void)state;
    {
        char *argv[] = {"spate", "--conf", "memory.fraction=abc", "conf", NULL};
        rc = run_cli(argv, no_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 2); /* a bad configuration is a usage error */
        assert_string_equal(out, "");
        assert_string_equal(
            err,
            "spate: --conf: conf key 'memory.fraction' (double): 'abc' is not a valid number\n");
    }
    {
        char *argv[] = {"spate", "conf", NULL};
        rc = run_cli(argv, bad_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 2); /* a bad configuration is a usage error */
        assert_string_equal(err,
                            "spate: environment: environment SPATE_CONF_MEMORY_FRACTON names no "
                            "conf key\n");
    }
    {
        const char *file = write_tmp("cli_bad.conf", "\nmemory.page_size = 1k\n");
        char expected[512];
        char *argv[] = {"spate", "--conf-file", (char *)file, "conf", NULL};
        rc = run_cli(argv, no_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 2); /* a bad configuration is a usage error */
        snprintf(expected, sizeof(expected),
                 "spate: --conf-file: %s:2: conf key 'memory.page_size': value '1k' is out of "
                 "range [4k, 128m]\n",
                 file);
        assert_string_equal(err, expected);
    }
}

static void test_conf_cli_refuses_device_conf_file(void **state)
{
    char *no_env[] = {NULL};
    char out[4096], err[4096];
    int rc;

    (void)state;
    {
        /* It spun forever reading NUL bytes. */
        char *argv[] = {"spate", "--conf-file", "/dev/zero", "conf", NULL};
        rc = run_cli(argv, no_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 2); /* a bad configuration is a usage error */
        assert_string_equal(out, "");
        assert_string_equal(err, "spate: --conf-file: conf file '/dev/zero' is a character "
                                 "device; a conf file is a regular file or a pipe\n");
    }
    {
        const char *file = write_tmp_bytes("cli_nul.conf", "memory.fraction = 0.5\0junk\n", 27);
        char expected[512];
        char *argv[] = {"spate", "--conf-file", (char *)file, "conf", NULL};
        rc = run_cli(argv, no_env, out, sizeof(out), err, sizeof(err));
        assert_int_equal(rc, 2);
        snprintf(expected, sizeof(expected),
                 "spate: --conf-file: %s:1: a NUL byte (at byte 21 of the file); a conf file is "
                 "text\n",
                 file);
        assert_string_equal(err, expected);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_conf_size_parses_suffixes, conf_setup, conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_duration_parses_units, conf_setup, conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_size_checks_range, conf_setup, conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_duration_checks_range, conf_setup, conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_duration_bad_syntax_message, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_int_parses_and_checks_range, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_double_parses_and_checks_range, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_bool_accepts_every_spelling, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_string_keeps_any_text, conf_setup, conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_enum_accepts_only_choices, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_set_rejects_unknown_key, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_set_failure_keeps_old_value, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_assignment_trims_and_splits, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_getter_checks_type_and_key, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_is_set_tracks_assignments, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_dup_copies_set_values, conf_setup, conf_teardown),
        cmocka_unit_test(test_conf_markdown_lists_every_key),
        cmocka_unit_test_setup_teardown(test_conf_load_file_reads_assignments, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_names_bad_line, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_rejects_long_line, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_refuses_devices, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_refuses_large_file, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_refuses_nul_byte, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_reads_pipes_up_to_limit, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_file_reports_io_error, files_setup,
                                        files_teardown),
        cmocka_unit_test(test_conf_load_env_maps_names),
        cmocka_unit_test_setup_teardown(test_conf_load_env_maps_dashes_and_values, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_load_env_rejects_unknown_and_bad, conf_setup,
                                        conf_teardown),
        cmocka_unit_test(test_conf_builtin_defaults_parse),
        cmocka_unit_test(test_conf_builtin_keys_are_unique),
        cmocka_unit_test(test_conf_builtin_bounds_parse),
        cmocka_unit_test(test_conf_create_fails_cleanly_on_nomem),
        cmocka_unit_test_setup_teardown(test_conf_dup_fails_cleanly_on_nomem, conf_setup,
                                        conf_teardown),
        cmocka_unit_test_setup_teardown(test_conf_cli_precedence, files_setup, files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_cli_reports_bad_values_once, files_setup,
                                        files_teardown),
        cmocka_unit_test_setup_teardown(test_conf_cli_refuses_device_conf_file, files_setup,
                                        files_teardown),
    };

    return cmocka_run_group_tests_name("conf", tests, NULL, NULL);
}
