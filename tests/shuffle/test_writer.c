/*
 * The map output writer against a reference model: for many seeds, record
 * counts, record sizes, partition counts, skew, key ordering, codecs,
 * checksums and both paths, decode the committed output and compare it per
 * partition with a qsort reference, byte for byte and in order. Forced
 * spills (few records per spill, tiny executors) must give the same output
 * as no spill. Also: bad input, commit of two attempts, damaged outputs.
 */
/* LABELS: unit */
#include "writer_test_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

static char dir[256];

typedef struct env {
    sp_conf_t *conf;
    sp_memory_manager_t *mm;
    sp_task_memory_t *task;
} env_t;

static void env_open(env_t *e, const char *executor, const char *page, const char *spill_records)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(sp_conf_create(&e->conf), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.page_size", page), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.local_dirs", dir), SP_OK);
    assert_int_equal(sp_conf_set(e->conf, "shuffle.spill_records", spill_records), SP_OK);
    assert_int_equal(sp_memory_manager_create(e->conf, NULL, 0, &e->mm), SP_OK);
    assert_int_equal(sp_task_memory_create(e->mm, 1, &e->task), SP_OK);
}

static void env_close(env_t *e)
{
    sp_task_memory_stats_t ts;
    sp_memory_stats_t ms;

    sp_task_memory_destroy(e->task, &ts);
    assert_int_equal(ts.leaked_bytes, 0);
    sp_memory_manager_stats(e->mm, &ms);
    assert_int_equal(ms.execution_used, 0);
    sp_memory_manager_destroy(e->mm);
    sp_conf_destroy(e->conf);
}

static void remove_outputs(void)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static unsigned count_tmp_files(void)
{
    char cmd[512];
    FILE *f;
    unsigned n = 0;

    snprintf(cmd, sizeof(cmd), "ls %s 2>/dev/null | grep -c tmp", dir);
    f = popen(cmd, "r");
    assert_non_null(f);
    if (fscanf(f, "%u", &n) != 1)
        n = 0;
    pclose(f);
    return n;
}

static void run_case(const ref_case_t *c, sp_shuffle_write_stats_t *stats_p)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_map_status_t *status = NULL;
    ref_record_t *ref = ref_generate(c);
    env_t e;

    env_open(&e, c->executor, c->page_size, c->spill_records);
    assert_int_equal(sp_shuffle_writer_options_init(&o, e.conf), SP_OK);
    o.shuffle_id = 3;
    o.map_id = c->seed;
    o.partitions = c->partitions;
    o.key_ordering = c->key_ordering;
    o.codec = c->codec;
    o.checksum = c->checksum;
    o.path = c->path;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    for (size_t i = 0; i < c->records; i++)
        assert_int_equal(sp_shuffle_writer_write(w, ref[i].partition, ref[i].key, ref[i].klen,
                                                 ref[i].value, ref[i].vlen),
                         SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, &status), SP_OK);
    sp_shuffle_writer_stats(w, stats_p);
    assert_int_equal(stats_p->records, c->records);
    sp_shuffle_writer_close(w);
    assert_int_equal(status->partitions, c->partitions);
    assert_int_equal(status->codec, c->codec);
    ref_check_output(status, ref, c->records, c->key_ordering);
    assert_int_equal(count_tmp_files(), 0);
    sp_map_status_destroy(status);
    env_close(&e);
    ref_free(ref, c->records);
    remove_outputs();
}

static void test_writer_matches_reference_across_shapes(void **state)
{
    static const uint32_t parts[] = {1, 7, 200, 201, 10000};
    static const size_t counts[] = {0, 1, 3000};
    static const sp_codec_t codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4, SP_CODEC_ZSTD};
    unsigned seed = 1;

    (void)state;
    for (size_t pi = 0; pi < sizeof(parts) / sizeof(parts[0]); pi++) {
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
            for (int ordering = 0; ordering < 2; ordering++) {
                ref_case_t c = {.partitions = parts[pi],
                                .records = counts[ci],
                                .max_key = 12,
                                .max_value = 300,
                                .key_ordering = ordering != 0,
                                .codec = codecs[seed % 3],
                                .checksum = seed % 2 ? SP_CHECKSUM_CRC32C : SP_CHECKSUM_XXH3,
                                .path = SP_WRITER_AUTO,
                                .executor = "64m",
                                .page_size = "64k",
                                .spill_records = "0",
                                .seed = seed++};
                sp_shuffle_write_stats_t s;
                run_case(&c, &s);
                assert_int_equal(s.bypass, !ordering && parts[pi] <= 200);
                assert_int_equal(s.spills, 0);
            }
        }
    }
}

static void test_writer_spills_give_the_same_output(void **state)
{
    static const sp_codec_t codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4, SP_CODEC_ZSTD};

    (void)state;
    for (int ordering = 0; ordering < 2; ordering++) {
        for (size_t ci = 0; ci < 3; ci++) {
            for (int csum = 0; csum < 2; csum++) {
                ref_case_t c = {.partitions = 301,
                                .records = 4000,
                                .max_key = 10,
                                .max_value = 200,
                                .key_ordering = ordering != 0,
                                .codec = codecs[ci],
                                .checksum = csum ? SP_CHECKSUM_XXH3 : SP_CHECKSUM_CRC32C,
                                .path = SP_WRITER_SORT,
                                .executor = "64m",
                                .page_size = "16k",
                                .spill_records = "333",
                                .seed = 100 + (unsigned)ci * 2 + (unsigned)csum};
                sp_shuffle_write_stats_t s;
                run_case(&c, &s);
                /* 12 at the threshold, and the last 4 records at commit. */
                assert_int_equal(s.spills, 4000 / 333 + 1);
            }
        }
    }
}

static void test_writer_memory_pressure_spills(void **state)
{
    /* 2 MiB of execution memory for ~6 MiB of records. */
    ref_case_t c = {.partitions = 50,
                    .records = 20000,
                    .max_key = 16,
                    .max_value = 600,
                    .codec = SP_CODEC_LZ4,
                    .checksum = SP_CHECKSUM_CRC32C,
                    .path = SP_WRITER_SORT,
                    .executor = "2m",
                    .page_size = "64k",
                    .spill_records = "0",
                    .seed = 7};
    sp_shuffle_write_stats_t s;

    (void)state;
    run_case(&c, &s);
    assert_true(s.spills >= 3);
    c.key_ordering = true;
    c.seed = 8;
    run_case(&c, &s);
    assert_true(s.spills >= 3);
    /* 20 runs, but memory for the decode windows of only about 8: runs are
     * merged in groups first, and the output is still exact (run_case). */
    c.spill_records = "1000";
    c.seed = 12;
    run_case(&c, &s);
    assert_true(s.spills >= 20);
    assert_true(s.merge_passes >= 1);
}

static void test_writer_skew_and_large_records(void **state)
{
    ref_case_t c = {.partitions = 1000,
                    .records = 40,
                    .max_key = 20,
                    .max_value = 3 << 20, /* multi-MiB values: pages of their own */
                    .skew = true,
                    .codec = SP_CODEC_ZSTD,
                    .checksum = SP_CHECKSUM_XXH3,
                    .path = SP_WRITER_SORT,
                    .executor = "64m",
                    .page_size = "1m",
                    .spill_records = "0",
                    .seed = 9};
    sp_shuffle_write_stats_t s;

    (void)state;
    run_case(&c, &s);
    c.key_ordering = true;
    c.executor = "16m"; /* spills as well */
    c.seed = 10;
    run_case(&c, &s);
    assert_true(s.spills > 0);
    c.path = SP_WRITER_BYPASS;
    c.key_ordering = false;
    c.partitions = 3;
    c.seed = 11;
    run_case(&c, &s);
    assert_true(s.bypass);
}

static void test_writer_rejects_bad_input(void **state)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    env_t e;
    char big = 0;

    (void)state;
    env_open(&e, "8m", "64k", "0");
    assert_int_equal(sp_shuffle_writer_options_init(&o, e.conf), SP_OK);
    o.shuffle_id = 1;
    o.map_id = 2;
    o.partitions = SP_MAX_PARTITIONS + 1;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_ERR_TOO_LARGE);
    assert_non_null(strstr(sp_last_error(), "16777217 partitions"));
    o.partitions = 0;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_ERR_TOO_LARGE);
    o.partitions = 10;
    o.partitioner = SP_PARTITIONER_RANGE;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_ERR_INVALID_PARAM);
    o.partitioner = SP_PARTITIONER_HASH;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    assert_int_equal(sp_shuffle_writer_write(w, 0, NULL, 0, "v", 1), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "empty key"));
    sp_shuffle_writer_close(w);
    o.partitioner = SP_PARTITIONER_GIVEN;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    assert_int_equal(sp_shuffle_writer_write(w, 10, "k", 1, "v", 1), SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "partition 10 is out of range [0, 10)"));
    assert_non_null(strstr(sp_last_error(), "shuffle 1 map 2"));
    sp_shuffle_writer_close(w);
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    /* A record larger than the executor's execution memory. */
    assert_int_equal(sp_shuffle_writer_write(w, 1, "k", 1, &big, (size_t)9 << 20),
                     SP_ERR_TOO_LARGE);
    assert_non_null(strstr(sp_last_error(), "larger than the executor's execution memory"));
    sp_shuffle_writer_close(w);
    /* An unwritable local dir. */
    assert_int_equal(sp_conf_set(e.conf, "shuffle.local_dirs", "/proc/spate-no-such"), SP_OK);
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_ERR_IO);
    assert_non_null(strstr(sp_last_error(), "/proc/spate-no-such"));
    env_close(&e);
    remove_outputs();
}

/* Byte order of two keys, shorter first on a common prefix: the reference. */
static int ref_key_cmp(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* The reverse of byte order: a job comparator for the range partitioner. */
static int reversed_key_cmp(const void *a, size_t alen, const void *b, size_t blen, void *arg)
{
    (void)arg;
    return ref_key_cmp(b, blen, a, alen);
}

/*
 * Range partitioning in byte order against a linear reference, with keys
 * whose first 8 bytes (the writer compares those as integers first) differ
 * from a split's or equal it, keys shorter than 8 bytes, zero bytes, and
 * keys equal to splits; then the same keys under a job comparator.
 */
static void test_writer_range_partitioner_long_keys(void **state)
{
    enum { NSPLIT = 9, NKEYS = 3000 };
    unsigned char split_bytes[NSPLIT][12], keys[NKEYS][12];
    size_t klen[NKEYS];
    sp_key_t splits[NSPLIT];
    uint64_t expect[NSPLIT + 1] = {0};
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_map_status_t *st = NULL;
    env_t e;
    unsigned seed = 77;

    (void)state;
    /* Splits: "prefix00" + a growing tail, some shorter, sorted by construction. */
    for (int i = 0; i < NSPLIT; i++) {
        memcpy(split_bytes[i], "prefix\0\0", 8);
        split_bytes[i][6] = (unsigned char)(i / 3); /* groups of three share their prefix */
        split_bytes[i][8] = (unsigned char)(20 * i);
        split_bytes[i][9] = (unsigned char)(i % 3);
        splits[i].data = split_bytes[i];
        splits[i].len = i == 0 ? 7 : 10; /* the first: shorter than 8, a prefix of the others */
    }
    for (int k = 0; k < NKEYS; k++) {
        seed = seed * 1103515245u + 12345u;
        memcpy(keys[k], "prefix\0\0", 8);
        keys[k][6] = (unsigned char)((seed >> 28) % 4);
        keys[k][8] = (unsigned char)(seed >> 16);
        keys[k][9] = (unsigned char)((seed >> 8) % 4);
        keys[k][10] = (unsigned char)(seed >> 24);
        klen[k] = 6 + (seed >> 4) % 6; /* 6 .. 11 bytes */
        if (k % 50 == 0) {             /* exactly a split key */
            memcpy(keys[k], split_bytes[k % NSPLIT], 10);
            klen[k] = splits[k % NSPLIT].len;
        }
        {
            size_t p = 0;
            while (p < NSPLIT && ref_key_cmp(split_bytes[p], splits[p].len, keys[k], klen[k]) < 0)
                p++;
            expect[p]++;
        }
    }
    env_open(&e, "8m", "64k", "0");
    assert_int_equal(sp_shuffle_writer_options_init(&o, e.conf), SP_OK);
    o.partitions = NSPLIT + 1;
    o.partitioner = SP_PARTITIONER_RANGE;
    o.split_keys = splits;
    o.path = SP_WRITER_SORT;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    for (int k = 0; k < NKEYS; k++)
        assert_int_equal(sp_shuffle_writer_write(w, 0, keys[k], klen[k], "v", 1), SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, &st), SP_OK);
    for (int p = 0; p <= NSPLIT; p++)
        assert_int_equal(st->records[p], expect[p]);
    sp_map_status_destroy(st);
    sp_shuffle_writer_close(w);

    /* A job comparator (reverse byte order, splits reversed): it decides every step. */
    {
        sp_key_t rsplits[NSPLIT];
        uint64_t rexpect[NSPLIT + 1] = {0};
        for (int i = 0; i < NSPLIT; i++)
            rsplits[i] = splits[NSPLIT - 1 - i];
        for (int k = 0; k < NKEYS; k++) {
            size_t p = 0;
            while (p < NSPLIT &&
                   reversed_key_cmp(rsplits[p].data, rsplits[p].len, keys[k], klen[k], NULL) < 0)
                p++;
            rexpect[p]++;
        }
        o.map_id = 1;
        o.split_keys = rsplits;
        o.compare = reversed_key_cmp;
        assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
        for (int k = 0; k < NKEYS; k++)
            assert_int_equal(sp_shuffle_writer_write(w, 0, keys[k], klen[k], "v", 1), SP_OK);
        assert_int_equal(sp_shuffle_writer_commit(w, &st), SP_OK);
        for (int p = 0; p <= NSPLIT; p++)
            assert_int_equal(st->records[p], rexpect[p]);
        sp_map_status_destroy(st);
        sp_shuffle_writer_close(w);
    }
    env_close(&e);
    remove_outputs();
}

static void test_writer_hash_and_range_partitioners(void **state)
{
    static const sp_key_t splits[] = {{"b", 1}, {"d", 1}, {"d", 1}, {"f", 1}};
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_map_status_t *st = NULL;
    static const char *const keys[] = {"a", "b", "c", "d", "e", "f", "g", "zz"};
    static const uint64_t expect[5] = {2, 2, 0, 2, 2};
    env_t e;

    (void)state;
    env_open(&e, "8m", "64k", "0");
    assert_int_equal(sp_shuffle_writer_options_init(&o, e.conf), SP_OK);
    o.partitions = 5;
    o.partitioner = SP_PARTITIONER_RANGE;
    o.split_keys = splits;
    o.path = SP_WRITER_SORT;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    for (int i = 0; i < 8; i++)
        assert_int_equal(sp_shuffle_writer_write(w, 99, keys[i], strlen(keys[i]), "", 0), SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, &st), SP_OK);
    for (int p = 0; p < 5; p++)
        assert_int_equal(st->records[p], expect[p]);
    sp_map_status_destroy(st);
    sp_shuffle_writer_close(w);
    /* Unsorted split keys are refused. */
    {
        static const sp_key_t bad[] = {{"d", 1}, {"b", 1}};
        o.partitions = 3;
        o.map_id = 1;
        o.split_keys = bad;
        assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_ERR_INVALID_PARAM);
    }
    /* Hash: the same key always lands in the same partition. */
    o.partitioner = SP_PARTITIONER_HASH;
    o.partitions = 16;
    o.map_id = 2;
    assert_int_equal(sp_shuffle_writer_open(e.task, e.conf, &o, &w), SP_OK);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sp_shuffle_writer_write(w, 0, "same", 4, "v", 1), SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, &st), SP_OK);
    {
        int nonempty = 0;
        for (int p = 0; p < 16; p++)
            nonempty += st->records[p] != 0;
        assert_int_equal(nonempty, 1);
    }
    sp_map_status_destroy(st);
    sp_shuffle_writer_close(w);
    env_close(&e);
    remove_outputs();
}

/* ---- two attempts ---- */

typedef struct attempt_arg {
    env_t *env;
    uint32_t attempt;
    sp_map_status_t *status;
    sp_status_t st;
} attempt_arg_t;

static void *attempt_run(void *p)
{
    attempt_arg_t *a = p;
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_task_memory_t *task = NULL;
    char v[64];

    assert_int_equal(sp_task_memory_create(a->env->mm, 10 + a->attempt, &task), SP_OK);
    assert_int_equal(sp_shuffle_writer_options_init(&o, a->env->conf), SP_OK);
    o.shuffle_id = 9;
    o.map_id = 4;
    o.attempt = a->attempt;
    o.partitions = 300;
    assert_int_equal(sp_shuffle_writer_open(task, a->env->conf, &o, &w), SP_OK);
    for (uint32_t i = 0; i < 5000; i++) {
        memset(v, (int)a->attempt, sizeof(v));
        assert_int_equal(sp_shuffle_writer_write(w, i % 300, "key", 3, v, sizeof(v)), SP_OK);
    }
    a->st = sp_shuffle_writer_commit(w, &a->status);
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    return NULL;
}

static void test_writer_concurrent_attempts_keep_one_output(void **state)
{
    attempt_arg_t a[2];
    pthread_t th[2];
    env_t e;

    (void)state;
    env_open(&e, "64m", "64k", "0");
    for (uint32_t i = 0; i < 2; i++) {
        a[i] = (attempt_arg_t){.env = &e, .attempt = i + 1};
        assert_int_equal(pthread_create(&th[i], NULL, attempt_run, &a[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(a[0].st, SP_OK);
    assert_int_equal(a[1].st, SP_OK);
    /* Both report the one surviving output. */
    assert_int_equal(a[0].status->attempt, a[1].status->attempt);
    assert_string_equal(a[0].status->index_path, a[1].status->index_path);
    assert_memory_equal(a[0].status->lengths, a[1].status->lengths, 300 * 8);
    assert_memory_equal(a[0].status->checksums, a[1].status->checksums, 300 * 8);
    {
        sp_map_output_t *mo = NULL;
        void *data = NULL;
        size_t len = 0;
        assert_int_equal(sp_map_output_open(a[0].status->index_path, &mo), SP_OK);
        assert_int_equal(sp_map_output_read_segment(mo, 7, &data, &len), SP_OK);
        free(data);
        sp_map_output_close(mo);
    }
    assert_int_equal(count_tmp_files(), 0);
    sp_map_status_destroy(a[0].status);
    sp_map_status_destroy(a[1].status);
    env_close(&e);
    remove_outputs();
}

/* ---- damaged outputs ---- */

static void write_output(env_t *e, sp_map_status_t **status_p)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;

    assert_int_equal(sp_shuffle_writer_options_init(&o, e->conf), SP_OK);
    o.shuffle_id = 5;
    o.partitions = 4;
    assert_int_equal(sp_shuffle_writer_open(e->task, e->conf, &o, &w), SP_OK);
    for (uint32_t i = 0; i < 1000; i++)
        assert_int_equal(sp_shuffle_writer_write(w, i % 4, "key", 3, "value", 5), SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, status_p), SP_OK);
    sp_shuffle_writer_close(w);
}

static void patch(const char *path, off_t at, const char *bytes, size_t n, off_t truncate_to)
{
    int fd = open(path, O_WRONLY);

    assert_true(fd >= 0);
    if (n != 0)
        assert_int_equal(pwrite(fd, bytes, n, at), (ssize_t)n);
    if (truncate_to >= 0)
        assert_int_equal(ftruncate(fd, truncate_to), 0);
    close(fd);
}

static void test_map_output_detects_damage(void **state)
{
    struct {
        int file; /* 0 index, 1 data, 2 checksum */
        off_t at;
        const char *bytes;
        off_t truncate_to;
        sp_status_t open_status;
    } cases[] = {
        {0, 0, "XXXX", -1, SP_ERR_CORRUPT},  /* index magic */
        {0, 4, "\x07", -1, SP_ERR_CORRUPT},  /* index version */
        {0, 24, "\x01", -1, SP_ERR_CORRUPT}, /* an offset: fails the index checksum */
        {0, 0, NULL, 40, SP_ERR_CORRUPT},    /* truncated index */
        {1, 0, NULL, 30, SP_ERR_CORRUPT},    /* truncated data */
        {2, 0, "XXXX", -1, SP_ERR_CORRUPT},  /* checksum file magic */
        {1, 20, "\xff\xff\xff", -1, SP_OK},  /* flipped data: found on read */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sp_map_status_t *st = NULL;
        sp_map_output_t *mo = NULL;
        const char *paths[3];
        env_t e;

        env_open(&e, "8m", "64k", "0");
        write_output(&e, &st);
        paths[0] = st->index_path;
        paths[1] = st->data_path;
        paths[2] = st->checksum_path;
        patch(paths[cases[i].file], cases[i].at, cases[i].bytes,
              cases[i].bytes != NULL ? strlen(cases[i].bytes) : 0, cases[i].truncate_to);
        assert_int_equal(sp_map_output_open(st->index_path, &mo), cases[i].open_status);
        if (cases[i].open_status != SP_OK) {
            /* The message names the damaged file. */
            assert_non_null(strstr(sp_last_error(), strrchr(paths[cases[i].file], '/') + 1));
        } else {
            void *data = NULL;
            size_t len = 0;
            assert_int_equal(sp_map_output_read_segment(mo, 0, &data, &len), SP_ERR_CORRUPT);
            assert_non_null(strstr(sp_last_error(), "partition 0"));
            sp_map_output_close(mo);
        }
        sp_map_status_destroy(st);
        env_close(&e);
        remove_outputs();
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_matches_reference_across_shapes),
        cmocka_unit_test(test_writer_spills_give_the_same_output),
        cmocka_unit_test(test_writer_memory_pressure_spills),
        cmocka_unit_test(test_writer_skew_and_large_records),
        cmocka_unit_test(test_writer_rejects_bad_input),
        cmocka_unit_test(test_writer_hash_and_range_partitioners),
        cmocka_unit_test(test_writer_range_partitioner_long_keys),
        cmocka_unit_test(test_writer_concurrent_attempts_keep_one_output),
        cmocka_unit_test(test_map_output_detects_damage),
    };
    snprintf(dir, sizeof(dir), "/tmp/spate-test-writer-%d", (int)getpid());
    sp_log_set_level(SP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
