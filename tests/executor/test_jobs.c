/*
 * Job lookup and the built-in jobs. The registry: every built-in loads by
 * name, an unknown name is refused with the list of built-ins, and plugins
 * with one flaw each (tests/executor/plugins/bad_plugin.c) are refused with
 * a message that names the plugin and the flaw. sp_job_arg: the last
 * KEY=VALUE wins. wordcount: the split rule against a plain tokenizer over
 * random texts, for every split size of small texts and random ones of
 * texts larger than its read chunk (the words must come out in text order,
 * each once); whole runs through sp__job_run_serial against a reference
 * count, output sorted by word in each file; the generated text. shuffle:
 * its end-to-end check in every order, with and without skew, and that
 * finish() catches a mismatch. The example plugin: loaded and run, its
 * counts against a reference.
 */
/* LABELS: unit */
#include "common_int.h"
#include "executor/executor_int.h"
#include "run_test_util.h"
#include "job_env_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Test hook of executor/jobs/wordcount.c: the words a byte range owns. */
typedef sp_status_t (*sp__wordcount_word_fn_t)(void *arg, const void *word, size_t len);
sp_status_t sp__wordcount_scan(const char *path, uint64_t offset, uint64_t length,
                               sp__wordcount_word_fn_t fn, void *arg, uint64_t *bytes_p);
/* Test hook of executor/jobs/wordcount.c: its byte ranges (a graph job has no plan callback). */
sp_status_t sp__wordcount_plan(const sp_job_params_t *params, sp_job_plan_t *plan);

static char dir[256];

static uint64_t rng_state = 42;

static uint64_t rnd(void) { return je_rnd(&rng_state); }

static void sh(const char *fmt, const char *arg) { je_sh(fmt, arg); }

static void path_of(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", dir, name);
}

/* ---- an executor's parts for sp__job_run_serial (job_env_util.h) ---- */

typedef je_env_t env_t;

static void env_open(env_t *e, const char *executor)
{
    je_env_open(e, dir, executor, "64k");
    je_env_start(e);
}

static void env_close(env_t *e) { je_env_close(e); }

static sp_job_params_t params_of(const env_t *e, const char *const *args, size_t nargs)
{
    return (sp_job_params_t){
        .slots = 2, .executors = 1, .args = args, .nargs = nargs, .conf = e->conf};
}

/* ---- registry ---- */

static void test_registry_loads_every_builtin(void **state)
{
    const sp_job_t *const *all;
    size_t count = 0;

    (void)state;
    all = sp__job_builtins(&count);
    assert_int_equal(count, 6);
    for (size_t i = 0; i < count; i++) {
        const sp_job_t *job = NULL;
        void *handle = (void *)1;

        assert_int_equal(sp__job_load(all[i]->name, &job, &handle), SP_OK);
        assert_ptr_equal(job, all[i]);
        assert_null(handle);
        assert_int_equal(job->abi_version, SP_JOB_ABI_VERSION);
        assert_int_equal(job->size, sizeof(sp_job_t));
        assert_non_null(job->summary);
        if (job->build != NULL) { /* a graph job (pagerank, join, groupby) */
            sp__job_unload(handle);
            continue;
        }
        assert_non_null(job->plan);
        assert_non_null(job->map);
        assert_non_null(job->reduce);
        sp__job_unload(handle);
    }
    {
        const sp_job_t *job = NULL;
        void *handle = NULL;

        assert_int_equal(sp__job_load("terasort", &job, &handle), SP_OK);
        assert_ptr_equal(job, &sp__job_terasort);
        assert_int_equal(sp__job_load("wordcount", &job, &handle), SP_OK);
        assert_ptr_equal(job, &sp__job_wordcount);
        assert_int_equal(sp__job_load("shuffle", &job, &handle), SP_OK);
        assert_ptr_equal(job, &sp__job_shuffle);
    }
}

static void test_registry_unknown_name_lists_builtins(void **state)
{
    const sp_job_t *const *all;
    const sp_job_t *job = NULL;
    void *handle = NULL;
    size_t count = 0;

    (void)state;
    assert_int_equal(sp__job_load("no-such-job", &job, &handle), SP_ERR_NOT_FOUND);
    assert_null(job);
    assert_non_null(strstr(sp_last_error(), "no-such-job"));
    all = sp__job_builtins(&count);
    for (size_t i = 0; i < count; i++)
        assert_non_null(strstr(sp_last_error(), all[i]->name));
    assert_int_equal(sp__job_load("", &job, &handle), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp__job_load(NULL, &job, &handle), SP_ERR_INVALID_PARAM);
    assert_null(job);
}

static void test_registry_missing_plugin_file(void **state)
{
    const sp_job_t *job = NULL;
    void *handle = NULL;

    (void)state;
    assert_int_equal(sp__job_load("/no/such/dir/plugin.so", &job, &handle), SP_ERR_NOT_FOUND);
    assert_non_null(strstr(sp_last_error(), "/no/such/dir/plugin.so"));
    /* Without a '/', the loader's search path: not found there either. */
    assert_int_equal(sp__job_load("libspate-no-such-plugin.so", &job, &handle), SP_ERR_NOT_FOUND);
    assert_non_null(strstr(sp_last_error(), "libspate-no-such-plugin.so"));
    assert_null(job);
    assert_null(handle);
}

static void test_registry_refuses_a_file_that_is_no_library(void **state)
{
    const sp_job_t *job = NULL;
    void *handle = NULL;
    char path[300];

    (void)state;
    path_of(path, sizeof(path), "not-a-library.so");
    rt_write_file(path, "hello, loader\n", 14);
    assert_int_equal(sp__job_load(path, &job, &handle), SP_ERR_BAD_FORMAT);
    assert_non_null(strstr(sp_last_error(), path));
    assert_non_null(strstr(sp_last_error(), "cannot load"));
    unlink(path);
    assert_null(job);
}

static void test_registry_refuses_bad_plugins(void **state)
{
    static const struct {
        const char *flaw;
        const char *says;
    } cases[] = {
        {"abi", "ABI version"},
        {"size", "descriptor size 16"},
        {"no_symbol", "no symbol sp_job_descriptor"},
        {"null_desc", "returned NULL"},
        {"null_map", "map is NULL"},
        {"no_name", "has no name"},
        {"combiner", "combine function is NULL"},
        {"undefined", "sp_test_symbol_nobody_defines"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const sp_job_t *job = NULL;
        void *handle = NULL;
        char path[512];

        snprintf(path, sizeof(path), "%s/libtest_plugin_%s.so", TEST_PLUGIN_DIR, cases[i].flaw);
        assert_int_equal(sp__job_load(path, &job, &handle), SP_ERR_BAD_FORMAT);
        if (strstr(sp_last_error(), cases[i].says) == NULL || strstr(sp_last_error(), path) == NULL)
            fail_msg("plugin %s: message \"%s\" lacks \"%s\" or the path", cases[i].flaw,
                     sp_last_error(), cases[i].says);
        assert_null(job);
        assert_null(handle);
    }
}

static void test_job_arg_last_wins(void **state)
{
    const char *const args[] = {"records=5", "rec=1", "records=7", "empty=", "noequals", "a=b=c"};
    sp_job_params_t p = {.args = args, .nargs = 6};

    (void)state;
    assert_string_equal(sp_job_arg(&p, "records"), "7");
    assert_string_equal(sp_job_arg(&p, "rec"), "1");
    assert_string_equal(sp_job_arg(&p, "empty"), "");
    assert_string_equal(sp_job_arg(&p, "a"), "b=c");
    assert_null(sp_job_arg(&p, "noequals"));
    assert_null(sp_job_arg(&p, "record"));
    assert_null(sp_job_arg(&p, "absent"));
    p.nargs = 1;
    assert_string_equal(sp_job_arg(&p, "records"), "5");
    p = (sp_job_params_t){0};
    assert_null(sp_job_arg(&p, "records"));
    assert_null(sp_job_arg(NULL, "records"));
}

static void test_plan_clear(void **state)
{
    sp_job_plan_t plan = {.maps = 3, .partitions = 2};

    (void)state;
    plan.splits = calloc(3, sizeof(*plan.splits));
    assert_non_null(plan.splits);
    plan.splits[0].path = strdup("a");
    plan.splits[2].path = strdup("c");
    sp__job_plan_clear(&plan);
    assert_null(plan.splits);
    assert_int_equal(plan.partitions, 2);
    sp__job_plan_clear(&plan); /* twice is harmless */
    sp__job_plan_clear(NULL);
}

/* ---- wordcount: the split rule ---- */

static bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* A list of words, in order. */
typedef struct words {
    unsigned char *bytes;
    size_t len, cap;
    size_t *lens;
    size_t n, ncap;
} words_t;

static void words_add(words_t *w, const void *word, size_t len)
{
    if (w->len + len > w->cap) {
        w->cap = (w->len + len) * 2 + 64;
        w->bytes = realloc(w->bytes, w->cap);
        assert_non_null(w->bytes);
    }
    if (w->n == w->ncap) {
        w->ncap = w->ncap * 2 + 64;
        w->lens = realloc(w->lens, w->ncap * sizeof(*w->lens));
        assert_non_null(w->lens);
    }
    memcpy(w->bytes + w->len, word, len);
    w->len += len;
    w->lens[w->n++] = len;
}

static void words_free(words_t *w)
{
    free(w->bytes);
    free(w->lens);
    memset(w, 0, sizeof(*w));
}

static sp_status_t words_collect(void *arg, const void *word, size_t len)
{
    words_add(arg, word, len);
    return SP_OK;
}

/* The reference: a plain tokenizer. */
static void reference_words(const unsigned char *text, size_t len, words_t *w)
{
    size_t i = 0;

    while (i < len) {
        size_t start;

        while (i < len && is_space(text[i]))
            i++;
        start = i;
        while (i < len && !is_space(text[i]))
            i++;
        if (i > start)
            words_add(w, text + start, i - start);
    }
}

static void assert_words_equal(const words_t *a, const words_t *b, size_t split)
{
    if (a->n != b->n || a->len != b->len ||
        (a->n > 0 && memcmp(a->lens, b->lens, a->n * sizeof(size_t)) != 0) ||
        (a->len > 0 && memcmp(a->bytes, b->bytes, a->len) != 0))
        fail_msg("split size %zu: %zu words (%zu bytes) against %zu (%zu bytes) of the reference",
                 split, a->n, a->len, b->n, b->len);
}

/*
 * A random text of len bytes: words from a few letters (so they repeat),
 * bytes >= 0x80, runs of every whitespace byte, and now and then a long
 * word (long_word bytes at most).
 */
static unsigned char *random_text(size_t len, size_t long_word)
{
    static const char spaces[] = " \t\n\v\f\r";
    unsigned char *t = malloc(len + 1);
    size_t i = 0;

    assert_non_null(t);
    while (i < len) {
        uint64_t r = rnd();
        size_t n;

        if (r % 3 == 0) {
            n = 1 + (r >> 8) % 4;
            for (size_t k = 0; k < n && i < len; k++)
                t[i++] = (unsigned char)spaces[(r >> (16 + 3 * k)) % 6];
            continue;
        }
        n = (r >> 8) % 64 == 0 && long_word > 0 ? (size_t)((r >> 16) % long_word) + 1
                                                : 1 + (size_t)((r >> 8) % 7);
        for (size_t k = 0; k < n && i < len; k++) {
            uint64_t c = (r >> 24) + k * 7;
            t[i++] = c % 11 == 0 ? (unsigned char)(0x80 + c % 0x7f)
                                 : (unsigned char)("abcdeXYZ0!;"[c % 11]);
        }
    }
    return t;
}

/* Scans path in splits of split bytes and checks the words against the reference. */
static void check_splits(const char *path, const words_t *ref, size_t len, size_t split)
{
    words_t got = {0};
    uint64_t total = 0;

    for (uint64_t off = 0; off < len; off += split) {
        uint64_t bytes = UINT64_MAX;

        assert_int_equal(sp__wordcount_scan(path, off, split, words_collect, &got, &bytes), SP_OK);
        assert_int_equal(bytes, SP_MIN((uint64_t)split, len - off));
        total += bytes;
    }
    assert_int_equal(total, len);
    assert_words_equal(&got, ref, split);
    words_free(&got);
}

static void test_wordcount_every_split_size_of_small_texts(void **state)
{
    char path[300];

    (void)state;
    path_of(path, sizeof(path), "small.txt");
    for (int round = 0; round < 60; round++) {
        size_t len = (size_t)(rnd() % 300);
        unsigned char *text = random_text(len, 40);
        words_t ref = {0};

        /* Some texts start or end inside a word, some on whitespace. */
        if (round % 4 == 1 && len > 0)
            text[0] = ' ';
        if (round % 4 == 2 && len > 0)
            text[len - 1] = '\n';
        rt_write_file(path, text, len);
        reference_words(text, len, &ref);
        for (size_t split = 1; split <= len + 1; split++)
            check_splits(path, &ref, len, split);
        words_free(&ref);
        free(text);
    }
    unlink(path);
}

static void test_wordcount_random_splits_across_read_chunks(void **state)
{
    const size_t len = (5u << 20) / 2; /* more than two of the scanner's 1 MiB reads */
    unsigned char *text = random_text(len, 300000);
    words_t ref = {0};
    char path[300];

    (void)state;
    /* A word across each 1 MiB read boundary, whatever the random text did. */
    memset(text + (1u << 20) - 1000, 'w', 3000);
    memset(text + (2u << 20) - 5, 'v', 10);
    path_of(path, sizeof(path), "large.txt");
    rt_write_file(path, text, len);
    reference_words(text, len, &ref);
    check_splits(path, &ref, len, len);
    check_splits(path, &ref, len, 1u << 20);
    check_splits(path, &ref, len, (1u << 20) - 1);
    for (int round = 0; round < 6; round++)
        check_splits(path, &ref, len, 1 + (size_t)(rnd() % (len / 3)));
    for (int round = 0; round < 3; round++)
        check_splits(path, &ref, len, 1 + (size_t)(rnd() % 5000));
    words_free(&ref);
    free(text);
    unlink(path);
}

static void test_wordcount_scan_edges(void **state)
{
    static const char text[] = "alpha beta\tgamma\n";
    words_t got = {0};
    uint64_t bytes = 0;
    char path[300];

    (void)state;
    path_of(path, sizeof(path), "edges.txt");
    rt_write_file(path, text, sizeof(text) - 1);
    /* Past the end of the file: no words, no bytes. */
    assert_int_equal(sp__wordcount_scan(path, 100, 10, words_collect, &got, &bytes), SP_OK);
    assert_int_equal(got.n, 0);
    assert_int_equal(bytes, 0);
    /* A range inside one word owns nothing; one at its first byte owns it. */
    assert_int_equal(sp__wordcount_scan(path, 7, 2, words_collect, &got, &bytes), SP_OK);
    assert_int_equal(got.n, 0);
    assert_int_equal(sp__wordcount_scan(path, 6, 1, words_collect, &got, &bytes), SP_OK);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.lens[0], 4);
    assert_memory_equal(got.bytes, "beta", 4);
    words_free(&got);
    /* A missing file. */
    assert_int_equal(sp__wordcount_scan("/no/such/file", 0, 1, words_collect, &got, &bytes),
                     SP_ERR_NOT_FOUND);
    assert_non_null(strstr(sp_last_error(), "/no/such/file"));
    unlink(path);
}

/* Every allocation and read of the scanner, failed in turn, is an error. */
static void test_wordcount_scan_faults(void **state)
{
    static const sp_fault_kind_t kinds[] = {SP_FAULT_ALLOC, SP_FAULT_READ};
    const size_t len = (3u << 20) + 777;
    unsigned char *text = random_text(len, 200000);
    char path[300];

    (void)state;
    path_of(path, sizeof(path), "faults.txt");
    rt_write_file(path, text, len);
    for (size_t k = 0; k < 2; k++) {
        uint64_t nth;

        for (nth = 1;; nth++) {
            uint64_t fired = sp__fault_fired(kinds[k]), bytes = 0;
            words_t got = {0};
            sp_status_t st;

            sp__fault_arm(kinds[k], nth);
            st = sp__wordcount_scan(path, 1000, len, words_collect, &got, &bytes);
            sp__fault_arm(kinds[k], 0);
            if (sp__fault_fired(kinds[k]) == fired) {
                /* Past the last event: the scan ran clean. */
                assert_int_equal(st, SP_OK);
                words_free(&got);
                break;
            }
            assert_int_equal(st, kinds[k] == SP_FAULT_ALLOC ? SP_ERR_NOMEM : SP_ERR_IO);
            words_free(&got);
        }
        assert_true(nth > 1);
    }
    free(text);
    unlink(path);
}

/* ---- wordcount: plans and whole runs ---- */

static void test_wordcount_plan(void **state)
{
    const char *const args[] = {"split_size=100"};
    const char *const bad[] = {"split_size=lots"};
    sp_job_params_t p = {.slots = 3, .args = args, .nargs = 1};
    sp_job_plan_t plan = {0};
    char in[300], path[400];
    uint64_t covered[2] = {0, 0};

    (void)state;
    assert_int_equal(sp__wordcount_plan(&p, &plan), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "wordcount needs --input DIR"));
    assert_null(plan.splits);

    path_of(in, sizeof(in), "plan-in");
    sh("rm -rf %s", in);
    sh("mkdir -p %s/sub", in);
    snprintf(path, sizeof(path), "%s/b.txt", in);
    rt_write_file(path, "x", 1);
    snprintf(path, sizeof(path), "%s/a.txt", in);
    {
        char text[250];
        memset(text, 'a', sizeof(text));
        rt_write_file(path, text, sizeof(text));
    }
    snprintf(path, sizeof(path), "%s/empty.txt", in);
    rt_write_file(path, "", 0);
    snprintf(path, sizeof(path), "%s/_SUCCESS", in);
    rt_write_file(path, "", 0);
    snprintf(path, sizeof(path), "%s/.hidden", in);
    rt_write_file(path, "hidden words", 12);
    snprintf(path, sizeof(path), "%s/sub/c.txt", in);
    rt_write_file(path, "nested", 6);

    p.input = in;
    assert_int_equal(sp__wordcount_plan(&p, &plan), SP_OK);
    /* a.txt in 100-byte ranges, then b.txt; nothing else. */
    assert_int_equal(plan.maps, 4);
    assert_int_equal(plan.partitions, 3);
    assert_int_equal(plan.partitioning, SP_JOB_HASH);
    assert_true(plan.key_ordering);
    assert_int_equal(plan.order, SP_READ_MERGE);
    for (uint32_t m = 0; m < plan.maps; m++) {
        const sp_job_split_t *s = &plan.splits[m];
        int file = strstr(s->path, "/a.txt") != NULL ? 0 : 1;

        assert_non_null(strstr(s->path, file == 0 ? "/a.txt" : "/b.txt"));
        assert_int_equal(s->offset, covered[file]);
        covered[file] += s->length;
    }
    assert_int_equal(covered[0], 250);
    assert_int_equal(covered[1], 1);
    sp__job_plan_clear(&plan);

    p.input = "/no/such/input";
    assert_int_equal(sp__wordcount_plan(&p, &plan), SP_ERR_NOT_FOUND);
    assert_non_null(strstr(sp_last_error(), "/no/such/input"));
    p.input = in;
    p.args = bad;
    assert_int_equal(sp__wordcount_plan(&p, &plan), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "split_size=lots"));
    sh("rm -rf %s", in);
}

/* Compares two words like the job sorts them: bytes, then the shorter first. */
static int word_compare(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    int c = memcmp(a, b, SP_MIN(alen, blen));

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

typedef struct word_ref {
    const unsigned char *p;
    size_t len;
} word_ref_t;

static int word_ref_compare(const void *a, const void *b)
{
    const word_ref_t *x = a, *y = b;

    return word_compare(x->p, x->len, y->p, y->len);
}

/* Output lines of every part file of out, checked sorted in each file; appended to w with counts.
 */
static void read_wordcount_output(const char *out, uint32_t partitions, words_t *w,
                                  uint64_t **counts_p)
{
    uint64_t *counts = NULL;
    size_t ncounts = 0;

    for (uint32_t p = 0; p < partitions; p++) {
        char path[400];
        const unsigned char *prev = NULL;
        size_t prev_len = 0, len, i = 0;
        unsigned char *data;

        snprintf(path, sizeof(path), "%s/part-r-%05u", out, p);
        data = (unsigned char *)rt_read_file(path, &len);
        assert_non_null(data);
        while (i < len) {
            size_t start = i, wlen;
            uint64_t count = 0;

            while (i < len && data[i] != '\t')
                i++;
            assert_true(i < len);
            wlen = i - start;
            assert_true(wlen > 0);
            for (i++; i < len && data[i] != '\n'; i++) {
                assert_true(data[i] >= '0' && data[i] <= '9');
                count = count * 10 + (uint64_t)(data[i] - '0');
            }
            assert_true(i < len);
            i++;
            if (prev != NULL && word_compare(prev, prev_len, data + start, wlen) >= 0)
                fail_msg("%s: \"%.*s\" does not sort after \"%.*s\"", path, (int)wlen, data + start,
                         (int)prev_len, prev);
            prev = data + start;
            prev_len = wlen;
            words_add(w, data + start, wlen);
            counts = realloc(counts, (ncounts + 1) * sizeof(*counts));
            assert_non_null(counts);
            counts[ncounts++] = count;
        }
        free(data);
    }
    *counts_p = counts;
}

/* Reference counts: the sorted distinct words of ref and their counts. */
static size_t reference_counts(const words_t *ref, word_ref_t **distinct_p, uint64_t **counts_p)
{
    word_ref_t *all = calloc(ref->n + 1, sizeof(*all));
    uint64_t *counts = calloc(ref->n + 1, sizeof(*counts));
    size_t off = 0, n = 0;

    assert_non_null(all);
    assert_non_null(counts);
    for (size_t i = 0; i < ref->n; i++) {
        all[i] = (word_ref_t){ref->bytes + off, ref->lens[i]};
        off += ref->lens[i];
    }
    qsort(all, ref->n, sizeof(*all), word_ref_compare);
    for (size_t i = 0; i < ref->n; i++) {
        if (n > 0 && word_ref_compare(&all[n - 1], &all[i]) == 0) {
            counts[n - 1]++;
        } else {
            all[n] = all[i];
            counts[n++] = 1;
        }
    }
    *distinct_p = all;
    *counts_p = counts;
    return n;
}

/* Checks output words and counts (any partition) against the reference. */
static void check_against_reference(const words_t *got, const uint64_t *got_counts,
                                    const words_t *ref)
{
    word_ref_t *want, *have = calloc(got->n + 1, sizeof(*have));
    uint64_t *want_counts, *order = calloc(got->n + 1, sizeof(*order));
    size_t n = reference_counts(ref, &want, &want_counts), off = 0;

    assert_non_null(have);
    assert_non_null(order);
    assert_int_equal(got->n, n);
    /* Sort the output's words (files are each sorted, not the union) with their counts. */
    for (size_t i = 0; i < got->n; i++) {
        have[i] = (word_ref_t){got->bytes + off, got->lens[i]};
        off += got->lens[i];
    }
    for (size_t i = 0; i < got->n; i++) {
        size_t j = i;
        word_ref_t w = have[i];
        uint64_t c = got_counts[i];

        order[i] = c;
        while (j > 0 && word_ref_compare(&have[j - 1], &w) > 0) {
            have[j] = have[j - 1];
            order[j] = order[j - 1];
            j--;
        }
        have[j] = w;
        order[j] = c;
    }
    for (size_t i = 0; i < n; i++) {
        if (word_ref_compare(&have[i], &want[i]) != 0 || order[i] != want_counts[i])
            fail_msg("word %zu: \"%.*s\" x%" PRIu64 ", the reference \"%.*s\" x%" PRIu64, i,
                     (int)have[i].len, have[i].p, order[i], (int)want[i].len, want[i].p,
                     want_counts[i]);
    }
    free(want);
    free(want_counts);
    free(have);
    free(order);
}

static void test_wordcount_run_matches_reference(void **state)
{
    env_t e = {0};
    char in[300], out[300], path[400], split_arg[64];
    const char *const args[] = {split_arg};
    words_t ref = {0}, got = {0};
    uint64_t bytes = 0, *counts = NULL;
    sp_job_result_t result;

    (void)state;
    env_open(&e, "256m");
    path_of(in, sizeof(in), "wc-in");
    path_of(out, sizeof(out), "wc-out");
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    sh("mkdir -p %s", in);
    for (int f = 0; f < 3; f++) {
        size_t len = f == 2 ? 0 : 3000 + (size_t)(rnd() % 20000);
        unsigned char *text = random_text(len, 200);

        snprintf(path, sizeof(path), "%s/part-%d.txt", in, f);
        rt_write_file(path, text, len);
        reference_words(text, len, &ref);
        bytes += len;
        free(text);
    }
    snprintf(split_arg, sizeof(split_arg), "split_size=%u", 500 + (unsigned)(rnd() % 3000));
    sp_job_params_t p = params_of(&e, args, 1);
    p.input = in;
    p.output = out;
    p.partitions = 3;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    assert_int_equal(result.partitions, 3);
    assert_int_equal(result.counters[0], ref.n);
    assert_int_equal(result.counters[2], ref.n);
    assert_int_equal(result.counters[3], bytes);
    assert_int_equal(result.map_records, ref.n);

    read_wordcount_output(out, 3, &got, &counts);
    assert_int_equal(result.counters[1], got.n);
    check_against_reference(&got, counts, &ref);
    snprintf(path, sizeof(path), "%s/_SUCCESS", out);
    assert_int_equal(access(path, F_OK), 0);

    free(counts);
    words_free(&got);
    words_free(&ref);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
}

static void test_wordcount_single_file_and_empty_input(void **state)
{
    env_t e = {0};
    char in[300];
    sp_job_result_t result;
    unsigned char *text = random_text(10000, 50);
    words_t ref = {0};

    (void)state;
    env_open(&e, "256m");
    reference_words(text, 10000, &ref);
    path_of(in, sizeof(in), "one.txt");
    rt_write_file(in, text, 10000);
    sp_job_params_t p = params_of(&e, NULL, 0);
    p.input = in;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    assert_int_equal(result.counters[0], ref.n);
    assert_int_equal(result.partitions, 2); /* the slots */
    assert_true(result.counters[1] > 0 && result.counters[1] <= ref.n);
    unlink(in);

    /* An empty directory: one empty map task, no words. */
    path_of(in, sizeof(in), "empty-dir");
    sh("mkdir -p %s", in);
    p.input = in;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    assert_int_equal(result.counters[0], 0);
    assert_int_equal(result.counters[1], 0);
    sh("rm -rf %s", in);
    words_free(&ref);
    free(text);
    env_close(&e);
}

static void test_wordcount_generated_text(void **state)
{
    env_t e = {0};
    char out[300];
    const char *const args[] = {"split_size=256k", "seed=7"};
    sp_job_result_t result, again;
    words_t got = {0};
    uint64_t *counts = NULL, sum = 0, top = 0;
    size_t top_i = 0, off = 0;

    (void)state;
    env_open(&e, "256m");
    path_of(out, sizeof(out), "gen-out");
    sh("rm -rf %s", out);
    sp_job_params_t p = params_of(&e, args, 2);
    p.size = 1u << 20;
    p.output = out;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    assert_int_equal(result.counters[3], 1u << 20);
    /* Words of 3..11 letters and a separator each. */
    assert_true(result.counters[0] > (1u << 20) / 12 && result.counters[0] < (1u << 20) / 4);
    assert_true(result.counters[1] > 1000 && result.counters[1] <= 8192);
    read_wordcount_output(out, 2, &got, &counts);
    assert_int_equal(got.n, result.counters[1]);
    for (size_t i = 0; i < got.n; i++) {
        sum += counts[i];
        if (counts[i] > top) {
            top = counts[i];
            top_i = i;
        }
    }
    assert_int_equal(sum, result.counters[0]);
    /* The word of rank 0 ("aaa") is the most frequent, about 1/H(8192) ~ 10% of all. */
    for (size_t i = 0; i < top_i; i++)
        off += got.lens[i];
    assert_int_equal(got.lens[top_i], 3);
    assert_memory_equal(got.bytes + off, "aaa", 3);
    assert_true(top > sum / 14 && top < sum / 7);
    free(counts);
    words_free(&got);
    sh("rm -rf %s", out);

    /* The same seed gives the same text. */
    p.output = NULL;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &again), SP_OK);
    assert_memory_equal(again.counters, result.counters, sizeof(result.counters));
    env_close(&e);
}

/* vocabulary=N: words drawn uniformly from N, each spelled over enough letters to be distinct. */
static void test_wordcount_generated_vocabulary(void **state)
{
    env_t e = {0};
    char out[300];
    const char *args[] = {"split_size=256k", "seed=3", "vocabulary=1000"};
    sp_job_result_t result;
    words_t got = {0};
    uint64_t *counts = NULL, sum = 0;

    (void)state;
    env_open(&e, "256m");
    path_of(out, sizeof(out), "vocab-out");
    sh("rm -rf %s", out);
    sp_job_params_t p = params_of(&e, args, 3);
    p.size = 1u << 20;
    p.output = out;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    /* About 130k words over 1000: every word of the vocabulary occurs, and no other. */
    assert_int_equal(result.counters[1], 1000);
    read_wordcount_output(out, 2, &got, &counts);
    assert_int_equal(got.n, 1000);
    for (size_t i = 0; i < got.n; i++)
        sum += counts[i];
    assert_int_equal(sum, result.counters[0]);
    assert_int_equal(sum, result.counters[2]);
    free(counts);
    words_free(&got);
    sh("rm -rf %s", out);

    /* 100000 words need four letters each; 130k draws leave about 1 - 1/e^1.3 of them seen. */
    args[2] = "vocabulary=100000";
    p = params_of(&e, args, 3);
    p.size = 1u << 20;
    p.output = out;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result), SP_OK);
    assert_true(result.counters[1] > 60000 && result.counters[1] < 85000);
    read_wordcount_output(out, 2, &got, &counts);
    assert_int_equal(got.n, result.counters[1]);
    for (size_t i = 0; i < got.n; i++)
        assert_true(got.lens[i] >= 4 && got.lens[i] <= 8);
    free(counts);
    words_free(&got);
    sh("rm -rf %s", out);

    /* Out of range: refused when the job is planned. */
    args[2] = "vocabulary=0";
    p = params_of(&e, args, 3);
    p.size = 1u << 20;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "vocabulary=0 is out of range"));
    args[2] = "vocabulary=67108865";
    p = params_of(&e, args, 3);
    p.size = 1u << 20;
    assert_int_equal(sp__job_run_serial(&sp__job_wordcount, &p, e.mm, &result),
                     SP_ERR_INVALID_PARAM);
    env_close(&e);
}

/* ---- shuffle ---- */

static void run_shuffle(env_t *e, const char *order, const char *skew, const char *key_size,
                        bool output)
{
    char a_order[64], a_skew[64], a_key[64], out[300];
    const char *const args[] = {"records=6000", "maps=3", a_order, a_skew, a_key, "seed=3"};
    sp_job_result_t result;
    uint64_t klen = strtoull(key_size, NULL, 10), rec = klen + 90;

    snprintf(a_order, sizeof(a_order), "order=%s", order);
    snprintf(a_skew, sizeof(a_skew), "skew=%s", skew);
    snprintf(a_key, sizeof(a_key), "key_size=%s", key_size);
    path_of(out, sizeof(out), "shuffle-out");
    sh("rm -rf %s", out);
    sp_job_params_t p = params_of(e, args, 6);
    p.partitions = 4;
    p.output = output ? out : NULL;
    assert_int_equal(sp__job_run_serial(&sp__job_shuffle, &p, e->mm, &result), SP_OK);
    assert_int_equal(result.map_records, 6000);
    assert_int_equal(result.reduce_records, 6000);
    assert_int_equal(result.counters[0], 6000);
    assert_int_equal(result.counters[3], 6000);
    assert_int_equal(result.counters[1], 6000 * rec);
    assert_int_equal(result.counters[2], result.counters[5]);
    assert_int_equal(result.output_bytes, output ? 6000 * rec : 0);
    if (output) {
        size_t sizes[4];

        for (uint32_t part = 0; part < 4; part++) {
            char path[400];
            unsigned char *data;

            snprintf(path, sizeof(path), "%s/part-r-%05u", out, part);
            data = (unsigned char *)rt_read_file(path, &sizes[part]);
            assert_non_null(data);
            assert_int_equal(sizes[part] % rec, 0);
            /* merge and sort: the records of a partition come in key order. */
            if (strcmp(order, "unordered") != 0)
                for (size_t i = rec; i < sizes[part]; i += rec)
                    assert_true(memcmp(data + i - rec, data + i, klen) <= 0);
            free(data);
        }
        if (strtod(skew, NULL) >= 1)
            assert_true(sizes[0] > 2 * sizes[3]);
    }
    sh("rm -rf %s", out);
}

static void test_shuffle_every_order_checks_out(void **state)
{
    static const char *const orders[] = {"unordered", "merge", "sort"};
    env_t e = {0};

    (void)state;
    env_open(&e, "256m");
    for (size_t i = 0; i < 3; i++) {
        run_shuffle(&e, orders[i], "0", "10", false);
        run_shuffle(&e, orders[i], "0", "10", true);
        run_shuffle(&e, orders[i], "1.5", "10", true);
        run_shuffle(&e, orders[i], "0", "1", true); /* many equal keys */
    }
    env_close(&e);
}

static void test_shuffle_plan_and_arguments(void **state)
{
    sp_job_plan_t plan = {0};
    uint64_t next = 0;

    (void)state;
    {
        const char *const args[] = {"records=10", "maps=100"};
        sp_job_params_t p = {.slots = 3, .args = args, .nargs = 2};

        assert_int_equal(sp__job_shuffle.plan(&p, &plan), SP_OK);
        assert_int_equal(plan.maps, 10); /* no more maps than records */
        assert_int_equal(plan.partitions, 6);
        assert_int_equal(plan.partitioning, SP_JOB_HASH);
        assert_int_equal(plan.order, SP_READ_UNORDERED);
        assert_false(plan.key_ordering);
        for (uint32_t m = 0; m < plan.maps; m++) {
            assert_null(plan.splits[m].path);
            assert_int_equal(plan.splits[m].offset, next);
            next += plan.splits[m].length;
        }
        assert_int_equal(next, 10);
        sp__job_plan_clear(&plan);
    }
    {
        /* From --size: 64 MiB of records per map. */
        const char *const args[] = {"order=merge", "skew=0.5"};
        sp_job_params_t p = {.slots = 1, .size = 200u << 20, .args = args, .nargs = 2};

        assert_int_equal(sp__job_shuffle.plan(&p, &plan), SP_OK);
        assert_int_equal(plan.maps, 4);
        assert_int_equal(plan.partitioning, SP_JOB_GIVEN);
        assert_int_equal(plan.order, SP_READ_MERGE);
        assert_true(plan.key_ordering);
        next = 0;
        for (uint32_t m = 0; m < plan.maps; m++)
            next += plan.splits[m].length;
        assert_int_equal(next, (200u << 20) / 100);
        sp__job_plan_clear(&plan);
    }
    {
        static const char *const bad[] = {"key_size=0", "order=backwards", "skew=-1",
                                          "records=many", "value_size=99999999999"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            sp_job_params_t p = {.slots = 1, .args = &bad[i], .nargs = 1};

            assert_int_equal(sp__job_shuffle.plan(&p, &plan), SP_ERR_INVALID_PARAM);
            assert_null(plan.splits);
        }
    }
    {
        const char *const args[] = {"order=aggregate"};
        sp_job_params_t p = {.slots = 1, .args = args, .nargs = 1};

        assert_int_equal(sp__job_shuffle.plan(&p, &plan), SP_ERR_UNSUPPORTED);
        assert_non_null(strstr(sp_last_error(), "aggregate"));
    }
}

static void test_shuffle_finish_catches_a_mismatch(void **state)
{
    sp_job_params_t p = {0};
    sp_job_result_t r = {.partitions = 2};

    (void)state;
    r.counters[0] = r.counters[3] = 10;
    r.counters[1] = r.counters[4] = 1000;
    r.counters[2] = r.counters[5] = 0x1234;
    assert_int_equal(sp__job_shuffle.finish(&p, &r, NULL), SP_OK);
    r.counters[5] += 1; /* a damaged record */
    assert_int_equal(sp__job_shuffle.finish(&p, &r, NULL), SP_ERR_CORRUPT);
    assert_non_null(strstr(sp_last_error(), "reduce side read"));
    r.counters[5] -= 1;
    r.counters[3] -= 1; /* a lost one */
    assert_int_equal(sp__job_shuffle.finish(&p, &r, NULL), SP_ERR_CORRUPT);
}

/* ---- the example plugin ---- */

static void test_example_plugin_runs(void **state)
{
    const sp_job_t *job = NULL;
    void *handle = NULL;
    env_t e = {0};
    char in[300], out[300], path[400];
    uint64_t want[5] = {0};
    unsigned char *text, *data;
    sp_job_result_t result;
    size_t len = 3u << 20, out_len = 0;

    (void)state;
    assert_int_equal(sp__job_load(TEST_EXAMPLE_PLUGIN, &job, &handle), SP_OK);
    assert_non_null(handle);
    assert_string_equal(job->name, "charcount");
    assert_non_null(job->combiner);

    env_open(&e, "256m");
    path_of(in, sizeof(in), "cc-in");
    path_of(out, sizeof(out), "cc-out");
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    sh("mkdir -p %s", in);
    text = malloc(len);
    assert_non_null(text);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)(rnd() & 0xff);

        text[i] = c;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            want[0]++;
        else if (c >= '0' && c <= '9')
            want[1]++;
        else if (c == ' ' || (c >= '\t' && c <= '\r'))
            want[2]++;
        else if (c >= '!' && c <= '~')
            want[3]++;
        else
            want[4]++;
    }
    snprintf(path, sizeof(path), "%s/random.bin", in);
    rt_write_file(path, text, len);
    sp_job_params_t p = params_of(&e, NULL, 0);
    p.input = in;
    p.output = out;
    assert_int_equal(sp__job_run_serial(job, &p, e.mm, &result), SP_OK);
    assert_memory_equal(result.counters, want, sizeof(want));
    /* The map side combined each class to one record per map task. */
    assert_true(result.reduce_records <= 5);
    snprintf(path, sizeof(path), "%s/part-r-00000", out);
    data = (unsigned char *)rt_read_file(path, &out_len);
    assert_non_null(data);
    data[out_len] = '\0';
    snprintf(path, sizeof(path), "letters\t%" PRIu64 "\n", want[0]);
    assert_non_null(strstr((char *)data, path));
    snprintf(path, sizeof(path), "other\t%" PRIu64 "\n", want[4]);
    assert_non_null(strstr((char *)data, path));
    free(data);
    free(text);
    sh("rm -rf %s", in);
    sh("rm -rf %s", out);
    env_close(&e);
    sp__job_unload(handle);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_loads_every_builtin),
        cmocka_unit_test(test_registry_unknown_name_lists_builtins),
        cmocka_unit_test(test_registry_missing_plugin_file),
        cmocka_unit_test(test_registry_refuses_a_file_that_is_no_library),
        cmocka_unit_test(test_registry_refuses_bad_plugins),
        cmocka_unit_test(test_job_arg_last_wins),
        cmocka_unit_test(test_plan_clear),
        cmocka_unit_test(test_wordcount_every_split_size_of_small_texts),
        cmocka_unit_test(test_wordcount_random_splits_across_read_chunks),
        cmocka_unit_test(test_wordcount_scan_edges),
        cmocka_unit_test(test_wordcount_scan_faults),
        cmocka_unit_test(test_wordcount_plan),
        cmocka_unit_test(test_wordcount_run_matches_reference),
        cmocka_unit_test(test_wordcount_single_file_and_empty_input),
        cmocka_unit_test(test_wordcount_generated_text),
        cmocka_unit_test(test_wordcount_generated_vocabulary),
        cmocka_unit_test(test_shuffle_every_order_checks_out),
        cmocka_unit_test(test_shuffle_plan_and_arguments),
        cmocka_unit_test(test_shuffle_finish_catches_a_mismatch),
        cmocka_unit_test(test_example_plugin_runs),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-jobs-%d", (int)getpid());
    sh("mkdir -p %s", dir);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    sh("rm -rf %s", dir);
    return rc;
}
