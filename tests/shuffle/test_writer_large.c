/*
 * Large cases of the map output writer: a million records against the
 * reference model, the full 2^24 partitions, and a spill storm (200 MB
 * through an executor so small that it spills more than a hundred times)
 * whose committed output must equal the no-spill output byte for byte,
 * with execution memory never above what the task was granted.
 */
/* LABELS: slow */
#include "writer_test_util.h"

#include <sys/stat.h>

static char dir[256];

static sp_conf_t *make_conf(const char *executor, const char *page)
{
    sp_conf_t *conf = NULL;

    assert_int_equal(sp_conf_create(&conf), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.executor", executor), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.reserved", "0"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.fraction", "1"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.page_size", page), SP_OK);
    assert_int_equal(sp_conf_set(conf, "memory.numa_bind", "false"), SP_OK);
    assert_int_equal(sp_conf_set(conf, "shuffle.local_dirs", dir), SP_OK);
    return conf;
}

/* Writes the records of c through a fresh executor; returns the status. */
static sp_map_status_t *write_all(sp_conf_t *conf, const ref_case_t *c, ref_record_t *ref,
                                  uint64_t map_id, sp_shuffle_write_stats_t *stats_p,
                                  uint64_t *peak_p, uint64_t *unified_p)
{
    sp_memory_manager_t *mm = NULL;
    sp_task_memory_t *task = NULL;
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *w = NULL;
    sp_map_status_t *status = NULL;
    sp_memory_layout_t layout;
    sp_memory_stats_t ms;

    assert_int_equal(sp_memory_manager_create(conf, NULL, 0, &mm), SP_OK);
    assert_int_equal(sp_task_memory_create(mm, 1, &task), SP_OK);
    assert_int_equal(sp_shuffle_writer_options_init(&o, conf), SP_OK);
    o.shuffle_id = 2;
    o.map_id = map_id;
    o.partitions = c->partitions;
    o.codec = c->codec;
    o.checksum = c->checksum;
    o.key_ordering = c->key_ordering;
    o.path = c->path;
    assert_int_equal(sp_shuffle_writer_open(task, conf, &o, &w), SP_OK);
    for (size_t i = 0; i < c->records; i++)
        assert_int_equal(sp_shuffle_writer_write(w, ref[i].partition, ref[i].key, ref[i].klen,
                                                 ref[i].value, ref[i].vlen),
                         SP_OK);
    assert_int_equal(sp_shuffle_writer_commit(w, &status), SP_OK);
    sp_shuffle_writer_stats(w, stats_p);
    sp_shuffle_writer_close(w);
    sp_task_memory_destroy(task, NULL);
    sp_memory_manager_stats(mm, &ms);
    sp_memory_manager_layout(mm, &layout);
    *peak_p = ms.peak_execution_used;
    *unified_p = layout.unified_bytes;
    assert_int_equal(ms.execution_used, 0);
    sp_memory_manager_destroy(mm);
    return status;
}

static void remove_status(sp_map_status_t *s)
{
    unlink(s->data_path);
    unlink(s->index_path);
    unlink(s->checksum_path);
    sp_map_status_destroy(s);
}

static void test_writer_million_records(void **state)
{
    sp_conf_t *conf = make_conf("256m", "1m");

    (void)state;
    for (int ordering = 0; ordering < 2; ordering++) {
        ref_case_t c = {.partitions = 10000,
                        .records = 1000000,
                        .max_key = 10,
                        .max_value = 40,
                        .key_ordering = ordering != 0,
                        .codec = ordering ? SP_CODEC_ZSTD : SP_CODEC_LZ4,
                        .checksum = SP_CHECKSUM_CRC32C,
                        .seed = 77};
        ref_record_t *ref = ref_generate(&c);
        sp_shuffle_write_stats_t s;
        uint64_t peak, unified;
        sp_map_status_t *st = write_all(conf, &c, ref, 1, &s, &peak, &unified);

        ref_check_output(st, ref, c.records, c.key_ordering);
        remove_status(st);
        ref_free(ref, c.records);
    }
    sp_conf_destroy(conf);
}

static void test_writer_all_2_pow_24_partitions(void **state)
{
    sp_conf_t *conf = make_conf("1g", "1m");
    ref_case_t c = {.partitions = SP_MAX_PARTITIONS,
                    .records = 5000,
                    .max_key = 8,
                    .max_value = 16,
                    .codec = SP_CODEC_LZ4,
                    .checksum = SP_CHECKSUM_CRC32C,
                    .seed = 78};
    ref_record_t *ref = ref_generate(&c);
    sp_shuffle_write_stats_t s;
    uint64_t peak, unified;
    sp_map_status_t *st;

    (void)state;
    ref[0].partition = SP_MAX_PARTITIONS - 1; /* the last partition is used */
    st = write_all(conf, &c, ref, 1, &s, &peak, &unified);
    assert_int_equal(st->partitions, SP_MAX_PARTITIONS);
    ref_check_output(st, ref, c.records, false);
    remove_status(st);
    ref_free(ref, c.records);
    sp_conf_destroy(conf);
}

static bool files_equal(const char *a, const char *b)
{
    char cmd[2048];

    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static void test_writer_spill_storm_equals_no_spill(void **state)
{
    ref_case_t c = {.partitions = 500,
                    .records = 400000, /* ~200 MB of records */
                    .max_key = 16,
                    .max_value = 1000,
                    .codec = SP_CODEC_NONE, /* byte-identical output is then expected */
                    .checksum = SP_CHECKSUM_CRC32C,
                    .path = SP_WRITER_SORT,
                    .seed = 79};
    ref_record_t *ref = ref_generate(&c);
    sp_conf_t *big = make_conf("1g", "1m"), *tiny = make_conf("2m", "64k");
    sp_shuffle_write_stats_t s_big, s_tiny;
    uint64_t peak, unified;
    sp_map_status_t *a, *b;

    (void)state;
    a = write_all(big, &c, ref, 1, &s_big, &peak, &unified);
    assert_int_equal(s_big.spills, 0);
    b = write_all(tiny, &c, ref, 2, &s_tiny, &peak, &unified);
    assert_true(s_tiny.spills >= 100);
    /* Execution memory never exceeded the executor's pool. */
    assert_true(peak <= unified);
    /* Same partitions, same bytes: spilling changes nothing. */
    assert_memory_equal(a->lengths, b->lengths, 8 * (size_t)c.partitions);
    assert_memory_equal(a->records, b->records, 8 * (size_t)c.partitions);
    assert_memory_equal(a->checksums, b->checksums, 8 * (size_t)c.partitions);
    assert_true(files_equal(a->data_path, b->data_path));
    ref_check_output(b, ref, c.records, false);
    remove_status(a);
    remove_status(b);
    /* With key ordering (the k-way merge of the spills) and a real codec,
     * frames differ but the records must not. */
    c.key_ordering = true;
    c.codec = SP_CODEC_LZ4;
    c.records = 100000;
    b = write_all(tiny, &c, ref, 4, &s_tiny, &peak, &unified);
    assert_true(s_tiny.spills >= 20);
    assert_true(s_tiny.merge_passes >= 1);
    assert_true(peak <= unified);
    ref_check_output(b, ref, c.records, true);
    remove_status(b);
    sp_conf_destroy(big);
    sp_conf_destroy(tiny);
    ref_free(ref, 400000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_million_records),
        cmocka_unit_test(test_writer_all_2_pow_24_partitions),
        cmocka_unit_test(test_writer_spill_storm_equals_no_spill),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-writer-large-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return rc;
}
