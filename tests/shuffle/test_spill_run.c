/*
 * The spill-run writer and reader (shuffle/spill_run.c) against the records
 * that went in: a partitioned run (one segment per partition, some
 * partitions empty, records added one by one and as serialized blocks) and
 * an unpartitioned chunked run, read back both ways (mapped whole, and a
 * segment at a time with checksums verified), decoded with the segment
 * reader and compared record by record with the segment table's counts.
 * A damaged byte must fail the checksummed read as SP_ERR_CORRUPT naming
 * the run, a wrong header must fail opening, and an aborted run leaves no
 * file.
 */
/* LABELS: unit */
#include "common_int.h"
#include "tests/test_dir_util.h"
#include <spate/shuffle.h>
#include "shuffle/shuffle_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

/* Record i of partition p: key "p<p>-<i>", value of i % 50 bytes of p + i. */
static size_t make_record(uint32_t p, size_t i, char *key, unsigned char *value, size_t *vlen_p)
{
    int kl = snprintf(key, 32, "p%u-%zu", p, i);

    *vlen_p = i % 50;
    memset(value, (int)((p + i) & 0xff), *vlen_p);
    return (size_t)kl;
}

/* Checks that segment bytes decode to records [0, n) of partition p. */
static void check_segment(sp_codec_t codec, const void *data, size_t len, uint32_t p, size_t first,
                          size_t n)
{
    sp_segment_reader_t *r = NULL;
    size_t i = first;

    assert_int_equal(sp_segment_reader_create(codec, &r), SP_OK);
    sp_segment_reader_reset(r, data, len);
    for (;;) {
        const void *k, *v;
        size_t kl, vl, ekl, evl;
        char key[32];
        unsigned char value[64];
        bool more;

        assert_int_equal(sp_segment_reader_next(r, &k, &kl, &v, &vl, &more), SP_OK);
        if (!more)
            break;
        ekl = make_record(p, i, key, value, &evl);
        assert_int_equal(kl, ekl);
        assert_memory_equal(k, key, kl);
        assert_int_equal(vl, evl);
        if (vl != 0)
            assert_memory_equal(v, value, vl);
        i++;
    }
    assert_int_equal(i, first + n);
    sp_segment_reader_destroy(r);
}

static void test_spill_run_partitioned(void **state)
{
    sp_encoder_t *enc = NULL;
    sp_spill_run_writer_t rw;
    sp_spill_run_t run;
    const void *map = NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, counts[6] = {300, 0, 1, 0, 2000, 77};
    char path[300];
    int fd = -1;

    (void)state;
    snprintf(path, sizeof(path), "%s/run_partitioned.tmp", dir);
    assert_int_equal(sp__encoder_create(SP_CODEC_LZ4, 0, &enc), SP_OK);
    assert_int_equal(sp__spill_run_open(&rw, path, 4096, SP_CODEC_LZ4, SP_CHECKSUM_CRC32C, enc),
                     SP_OK);
    for (uint32_t p = 0; p < 6; p++) {
        if (counts[p] == 0)
            continue;
        assert_int_equal(sp__spill_run_begin(&rw, p), SP_OK);
        for (size_t i = 0; i < counts[p]; i++) {
            char key[32];
            unsigned char value[64], rec[128];
            size_t vl, kl = make_record(p, i, key, value, &vl);
            if (i % 2 == 0) {
                assert_int_equal(sp__spill_run_add(&rw, key, kl, value, vl), SP_OK);
            } else { /* a serialized record, as the sorter's gather hands them over */
                sp__le_put_u32(rec, (uint32_t)kl);
                sp__le_put_u32(rec + 4, (uint32_t)vl);
                memcpy(rec + 8, key, kl);
                memcpy(rec + 8 + kl, value, vl);
                assert_int_equal(sp__spill_run_write(&rw, rec, 8 + kl + vl, 1), SP_OK);
            }
        }
        assert_int_equal(sp__spill_run_end(&rw, NULL), SP_OK);
    }
    assert_int_equal(sp__spill_run_finish(&rw, false, &run), SP_OK);
    assert_int_equal(run.nsegs, 4);
    assert_int_equal(run.records, 300 + 1 + 2000 + 77);

    /* Mapped whole. */
    assert_int_equal(sp__spill_run_map(&run, &map), SP_OK);
    for (size_t s = 0; s < run.nsegs; s++) {
        const sp_spill_seg_t *seg = &run.segs[s];
        assert_int_equal(seg->records, counts[seg->partition]);
        assert_int_equal(sp__checksum_buf(SP_CHECKSUM_CRC32C,
                                          (const unsigned char *)map + seg->offset,
                                          (size_t)seg->length),
                         seg->checksum);
        check_segment(SP_CODEC_LZ4, (const unsigned char *)map + seg->offset, (size_t)seg->length,
                      seg->partition, 0, (size_t)seg->records);
    }
    sp__spill_run_unmap(&run, map);

    /* A segment at a time, checked. */
    assert_int_equal(sp__spill_run_open_read(&run, SP_CODEC_LZ4, SP_CHECKSUM_CRC32C, &fd), SP_OK);
    for (size_t s = 0; s < run.nsegs; s++) {
        assert_int_equal(sp__spill_run_read_segment(&run, fd, s, SP_CHECKSUM_CRC32C, &buf, &cap),
                         SP_OK);
        check_segment(SP_CODEC_LZ4, buf, (size_t)run.segs[s].length, run.segs[s].partition, 0,
                      (size_t)run.segs[s].records);
    }
    close(fd);

    /* The header names the codec: another codec does not open. */
    assert_int_equal(sp__spill_run_open_read(&run, SP_CODEC_ZSTD, SP_CHECKSUM_CRC32C, &fd),
                     SP_ERR_CORRUPT);

    /* A damaged byte fails its segment's checksum. */
    fd = open(run.path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "\xff", 1, (off_t)(run.segs[2].offset + run.segs[2].length / 2)),
                     1);
    assert_int_equal(sp__spill_run_read_segment(&run, fd, 2, SP_CHECKSUM_CRC32C, &buf, &cap),
                     SP_ERR_CORRUPT);
    assert_non_null(strstr(sp_last_error(), "run_partitioned.tmp"));
    close(fd);

    free(buf);
    sp__spill_run_drop(&run, true);
    sp__encoder_destroy(enc);
    assert_int_equal(test_dir_count(dir), 0);
}

/* The aggregator's shape: one partition in chunks closed at a size. */
static void test_spill_run_chunked(void **state)
{
    sp_encoder_t *enc = NULL;
    sp_spill_run_writer_t rw;
    sp_spill_run_t run;
    unsigned char *buf = NULL;
    size_t cap = 0, next = 0;
    char path[300];
    int fd = -1;

    (void)state;
    snprintf(path, sizeof(path), "%s/run_chunked.tmp", dir);
    assert_int_equal(sp__encoder_create(SP_CODEC_ZSTD, 0, &enc), SP_OK);
    assert_int_equal(sp__spill_run_open(&rw, path, 4096, SP_CODEC_ZSTD, SP_CHECKSUM_XXH3, enc),
                     SP_OK);
    for (size_t i = 0; i < 5000; i++) {
        char key[32];
        unsigned char value[64];
        size_t vl, kl = make_record(0, i, key, value, &vl);
        if (!rw.in_segment)
            assert_int_equal(sp__spill_run_begin(&rw, 0), SP_OK);
        assert_int_equal(sp__spill_run_add(&rw, key, kl, value, vl), SP_OK);
        if (rw.raw >= 16 * 1024)
            assert_int_equal(sp__spill_run_end(&rw, NULL), SP_OK);
    }
    assert_int_equal(sp__spill_run_finish(&rw, false, &run), SP_OK); /* ends the open chunk */
    assert_true(run.nsegs > 5);
    assert_int_equal(run.records, 5000);
    assert_int_equal(sp__spill_run_open_read(&run, SP_CODEC_ZSTD, SP_CHECKSUM_XXH3, &fd), SP_OK);
    for (size_t s = 0; s < run.nsegs; s++) {
        assert_int_equal(run.segs[s].partition, 0);
        assert_int_equal(sp__spill_run_read_segment(&run, fd, s, SP_CHECKSUM_XXH3, &buf, &cap),
                         SP_OK);
        check_segment(SP_CODEC_ZSTD, buf, (size_t)run.segs[s].length, 0, next,
                      (size_t)run.segs[s].records);
        next += (size_t)run.segs[s].records;
    }
    assert_int_equal(next, 5000);
    close(fd);
    free(buf);
    sp__spill_run_drop(&run, true);
    sp__encoder_destroy(enc);
    assert_int_equal(test_dir_count(dir), 0);
}

static void test_spill_run_abort_removes_file(void **state)
{
    sp_encoder_t *enc = NULL;
    sp_spill_run_writer_t rw;
    char path[300];

    (void)state;
    snprintf(path, sizeof(path), "%s/run_aborted.tmp", dir);
    assert_int_equal(sp__encoder_create(SP_CODEC_NONE, 0, &enc), SP_OK);
    assert_int_equal(sp__spill_run_open(&rw, path, 4096, SP_CODEC_NONE, SP_CHECKSUM_CRC32C, enc),
                     SP_OK);
    assert_int_equal(sp__spill_run_begin(&rw, 3), SP_OK);
    assert_int_equal(sp__spill_run_add(&rw, "k", 1, "v", 1), SP_OK);
    assert_int_equal(test_dir_count(dir), 1);
    sp__spill_run_abort(&rw);
    assert_int_equal(test_dir_count(dir), 0);
    sp__encoder_destroy(enc);
}

static int setup(void **state)
{
    (void)state;
    test_dir_clear(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_spill_run_partitioned, setup),
        cmocka_unit_test_setup(test_spill_run_chunked, setup),
        cmocka_unit_test_setup(test_spill_run_abort_removes_file, setup),
    };
    int rc;

    snprintf(dir, sizeof(dir), "/tmp/spate-test-spill-run-%d", (int)getpid());
    mkdir(dir, 0700);
    sp_log_set_level(SP_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    test_dir_clear(dir);
    rmdir(dir);
    return rc;
}
