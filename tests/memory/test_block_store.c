/*
 * Tests of the block store: put/get/remove at every storage level, reads of
 * blocks evicted to disk, pinned blocks never evicted or removed, id
 * validation, damaged block files answered with SP_ERR_CORRUPT (never a
 * crash or wrong bytes), and concurrent use from several threads compared
 * with the bytes each thread put.
 */
/* LABELS: unit */
#include "mm_test_util.h"
#include "tests/test_dir_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/spate-test-bs-%d", (int)getpid());
    return 0;
}

static unsigned count_files(void) { return test_dir_count(dir); }

static void fill(char *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)(rand_r(&seed) & 0xff);
}

static void check_block(sp_block_store_t *bs, const char *id, const char *expect, size_t len)
{
    sp_block_t *b = NULL;

    assert_int_equal(sp_block_store_get(bs, id, &b), SP_OK);
    assert_int_equal(sp_block_size(b), len);
    assert_memory_equal(sp_block_data(b), expect, len);
    sp_block_store_release(b);
}

static void test_block_put_get_remove_each_level(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("64m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    sp_block_store_stats_t s;
    char data[3][5000];
    bool in_mem = false;
    struct stat sb;

    (void)state;
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    assert_int_equal(stat(dir, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    for (unsigned i = 0; i < 3; i++)
        fill(data[i], sizeof(data[i]), i + 1);
    assert_int_equal(sp_block_store_put(bs, "m", data[0], 5000, SP_STORAGE_MEMORY), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "md", data[1], 5000, SP_STORAGE_MEMORY_AND_DISK),
                     SP_OK);
    assert_int_equal(sp_block_store_put(bs, "d", data[2], 5000, SP_STORAGE_DISK), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "empty", NULL, 0, SP_STORAGE_DISK), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "m", data[0], 10, SP_STORAGE_MEMORY), SP_ERR_EXISTS);
    assert_true(sp_block_store_contains(bs, "m", &in_mem) && in_mem);
    assert_true(sp_block_store_contains(bs, "d", &in_mem) && !in_mem);
    assert_int_equal(count_files(), 2);
    check_block(bs, "m", data[0], 5000);
    check_block(bs, "md", data[1], 5000);
    check_block(bs, "d", data[2], 5000);
    check_block(bs, "empty", "", 0);
    sp_block_store_stats(bs, &s);
    assert_int_equal(s.puts, 4);
    assert_int_equal(s.blocks_in_memory, 2);
    assert_int_equal(s.blocks_on_disk, 2);
    assert_int_equal(s.memory_bytes, 10000);
    assert_int_equal(s.memory_hits, 2);
    assert_int_equal(s.disk_reads, 2);
    assert_int_equal(sp_block_store_remove(bs, "d"), SP_OK);
    assert_int_equal(sp_block_store_remove(bs, "d"), SP_ERR_NOT_FOUND);
    assert_int_equal(count_files(), 1);
    assert_int_equal(sp_block_store_remove(bs, "m"), SP_OK);
    {
        sp_memory_stats_t ms;
        sp_memory_manager_stats(mm, &ms);
        assert_int_equal(ms.storage_used, 5000);
    }
    assert_int_equal(sp_block_store_get(bs, "m", &(sp_block_t *){NULL}), SP_ERR_NOT_FOUND);
    sp_block_store_destroy(bs);
    assert_int_equal(count_files(), 0);
    sp_memory_manager_destroy(mm);
    rmdir(dir);
}

static void test_block_evicted_to_disk_reads_back_and_recaches(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("16m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    char *a = malloc(6 * MiB), *b = malloc(6 * MiB), *c = malloc(6 * MiB);
    sp_block_store_stats_t s;
    bool in_mem = true;

    (void)state;
    fill(a, 6 * MiB, 1);
    fill(b, 6 * MiB, 2);
    fill(c, 6 * MiB, 3);
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "a", a, 6 * MiB, SP_STORAGE_MEMORY_AND_DISK), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "b", b, 6 * MiB, SP_STORAGE_MEMORY_AND_DISK), SP_OK);
    /* 16 MiB hold two: the third evicts "a" to disk. */
    assert_int_equal(sp_block_store_put(bs, "c", c, 6 * MiB, SP_STORAGE_MEMORY_AND_DISK), SP_OK);
    assert_true(sp_block_store_contains(bs, "a", &in_mem));
    assert_false(in_mem);
    sp_block_store_stats(bs, &s);
    assert_int_equal(s.evicted_to_disk, 1);
    /* Reading "a" brings it back into memory, evicting "b" (now the LRU). */
    check_block(bs, "a", a, 6 * MiB);
    assert_true(sp_block_store_contains(bs, "a", &in_mem) && in_mem);
    assert_true(sp_block_store_contains(bs, "b", &in_mem) && !in_mem);
    check_block(bs, "b", b, 6 * MiB);
    check_block(bs, "c", c, 6 * MiB);
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    free(a);
    free(b);
    free(c);
    rmdir(dir);
}

static void test_block_pinned_is_never_evicted_or_removed(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("16m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    char *buf = calloc(1, 9 * MiB);
    sp_block_t *pin = NULL;

    (void)state;
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    assert_int_equal(sp_block_store_put(bs, "p", buf, 8 * MiB, SP_STORAGE_MEMORY), SP_OK);
    assert_int_equal(sp_block_store_get(bs, "p", &pin), SP_OK);
    assert_int_equal(sp_block_store_remove(bs, "p"), SP_ERR_BUSY);
    /* The only evictable block is pinned: a second 9 MiB block is refused. */
    assert_int_equal(sp_block_store_put(bs, "q", buf, 9 * MiB, SP_STORAGE_MEMORY),
                     SP_ERR_MEMORY_REFUSED);
    assert_true(sp_block_store_contains(bs, "p", NULL));
    sp_block_store_release(pin);
    assert_int_equal(sp_block_store_put(bs, "q", buf, 9 * MiB, SP_STORAGE_MEMORY), SP_OK);
    assert_false(sp_block_store_contains(bs, "p", NULL));
    sp_block_store_destroy(bs);
    sp_memory_manager_destroy(mm);
    free(buf);
    rmdir(dir);
}

static void test_block_ids_and_levels_are_validated(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("16m", "0.5", "1m");
    sp_block_store_t *bs = NULL, *bs2 = NULL;
    char long_id[300];

    (void)state;
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    /* One block store per manager. */
    assert_int_equal(sp_block_store_create(mm, dir, &bs2), SP_ERR_BUSY);
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    assert_int_equal(sp_block_store_put(bs, "", "x", 1, SP_STORAGE_MEMORY), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_put(bs, long_id, "x", 1, SP_STORAGE_MEMORY),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_put(bs, "../escape", "x", 1, SP_STORAGE_DISK),
                     SP_ERR_INVALID_PARAM);
    assert_non_null(strstr(sp_last_error(), "outside"));
    assert_int_equal(sp_block_store_put(bs, "a/b", "x", 1, SP_STORAGE_DISK), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_put(bs, ".hidden", "x", 1, SP_STORAGE_DISK),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_put(bs, "ok", "x", 1, (sp_storage_level_t)7),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_put(bs, "ok", NULL, 1, SP_STORAGE_MEMORY),
                     SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_create(mm, "", &bs2), SP_ERR_INVALID_PARAM);
    assert_int_equal(sp_block_store_create(mm, "/proc/no/such/dir", &bs2), SP_ERR_IO);
    assert_int_equal(count_files(), 0);
    sp_block_store_destroy(bs);
    sp_block_store_destroy(NULL);
    sp_block_store_release(NULL);
    sp_memory_manager_destroy(mm);
    rmdir(dir);
}

/* Rewrites bytes of the block file of id at offset. */
static void damage(const char *id, off_t offset, const void *bytes, size_t len, off_t truncate_to)
{
    char path[512];
    int fd;

    snprintf(path, sizeof(path), "%s/%s.blk", dir, id);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    if (len != 0)
        assert_int_equal(pwrite(fd, bytes, len, offset), (ssize_t)len);
    if (truncate_to >= 0)
        assert_int_equal(ftruncate(fd, truncate_to), 0);
    close(fd);
}

static void test_block_damaged_files_are_reported_corrupt(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("16m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    sp_block_t *b = NULL;
    char data[4096];
    static const char *const ids[] = {"payload", "magic", "version", "length", "short", "tiny"};

    (void)state;
    fill(data, sizeof(data), 9);
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        assert_int_equal(sp_block_store_put(bs, ids[i], data, sizeof(data), SP_STORAGE_DISK),
                         SP_OK);
    damage("payload", 24 + 100, "\xff\xfe", 2, -1);
    damage("magic", 0, "XXXX", 4, -1);
    damage("version", 4, "\x09\x00", 2, -1);
    damage("length", 8, "\xff\xff\xff\xff\xff\xff\xff\x7f", 8, -1);
    damage("short", 0, NULL, 0, 24 + 100);
    damage("tiny", 0, NULL, 0, 10);
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        assert_int_equal(sp_block_store_get(bs, ids[i], &b), SP_ERR_CORRUPT);
        assert_null(b);
        assert_non_null(strstr(sp_last_error(), ids[i]));
        /* The block stays known and removable; the error does not pin it. */
        assert_int_equal(sp_block_store_remove(bs, ids[i]), SP_OK);
    }
    sp_block_store_destroy(bs);
    assert_int_equal(count_files(), 0);
    sp_memory_manager_destroy(mm);
    rmdir(dir);
}

/* ---- concurrency ---- */

typedef struct conc_arg {
    sp_block_store_t *bs;
    unsigned index;
    int errors;
} conc_arg_t;

static void *conc_worker(void *p)
{
    conc_arg_t *a = p;
    char buf[64 * 1024], id[32];
    unsigned seed = a->index * 7919 + 1;

    for (int i = 0; i < 300; i++) {
        unsigned k = (unsigned)rand_r(&seed) % 20;
        size_t len = (size_t)(rand_r(&seed) % (int)sizeof(buf)) + 1;
        sp_block_t *b = NULL;

        snprintf(id, sizeof(id), "t%u_%u", a->index, k);
        fill(buf, len, k + a->index * 100 + (unsigned)len);
        switch (rand_r(&seed) % 3) {
        case 0:
            if (sp_block_store_put(a->bs, id, buf, len, (sp_storage_level_t)(rand_r(&seed) % 3)) ==
                SP_OK) {
                /* Only this thread touches its ids, so the block must read back. */
                if (sp_block_store_get(a->bs, id, &b) != SP_OK || sp_block_size(b) != len ||
                    memcmp(sp_block_data(b), buf, len) != 0)
                    a->errors++;
                sp_block_store_release(b);
            }
            break;
        case 1: (void)sp_block_store_remove(a->bs, id); break;
        default:
            if (sp_block_store_get(a->bs, id, &b) == SP_OK)
                sp_block_store_release(b);
            break;
        }
    }
    return NULL;
}

static void test_block_store_concurrent_threads(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("4m", "0.5", "64k");
    sp_block_store_t *bs = NULL;
    pthread_t th[4];
    conc_arg_t args[4];

    (void)state;
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    for (unsigned i = 0; i < 4; i++) {
        args[i] = (conc_arg_t){bs, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, conc_worker, &args[i]), 0);
    }
    for (unsigned i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].errors, 0);
    }
    sp_block_store_destroy(bs);
    {
        sp_memory_stats_t ms;
        sp_memory_manager_stats(mm, &ms);
        assert_int_equal(ms.storage_used, 0);
    }
    assert_int_equal(count_files(), 0);
    sp_memory_manager_destroy(mm);
    rmdir(dir);
}

/* An owner of held bytes: counts evictions and can refuse them. */
typedef struct holder {
    int evicted;
    bool refuse;
} holder_t;

static bool holder_evict(void *arg)
{
    holder_t *h = arg;

    if (h->refuse)
        return false;
    h->evicted++;
    return true;
}

/*
 * Held blocks: granted and counted as storage, refused to get, evicted least
 * recently used first through their owner (who may keep them), touched to
 * the front, and removed without an eviction.
 */
static void test_block_held_by_owner_is_evicted_through_it(void **state)
{
    sp_memory_manager_t *mm = mm_test_create("16m", "0.5", "1m");
    sp_block_store_t *bs = NULL;
    sp_block_store_stats_t s;
    sp_memory_stats_t ms;
    holder_t h[4] = {{0}};
    sp_block_t *b = NULL;
    bool in_mem = false;

    (void)state;
    assert_int_equal(sp_block_store_create(mm, dir, &bs), SP_OK);
    /* Four blocks of 4 MiB fill the whole 16 MiB pool (the region is 8). */
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof(id), "held%d", i);
        assert_int_equal(sp_block_store_put_held(bs, id, 4 << 20, holder_evict, &h[i]), SP_OK);
    }
    assert_int_equal(sp_block_store_put_held(bs, "held0", 1, holder_evict, &h[0]), SP_ERR_EXISTS);
    assert_int_equal(sp_block_store_put_held(bs, "x", 1, NULL, NULL), SP_ERR_INVALID_PARAM);
    assert_true(sp_block_store_contains(bs, "held1", &in_mem));
    assert_true(in_mem);
    assert_int_equal(sp_block_store_get(bs, "held1", &b), SP_ERR_INVALID_PARAM);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.storage_used, 16 << 20);
    /* No room left and nothing evictable for more held bytes beyond the pool. */
    assert_int_equal(sp_block_store_put_held(bs, "more", 17 << 20, holder_evict, &h[0]),
                     SP_ERR_MEMORY_REFUSED);
    /* held0 is the least recently used, but touched it goes to the front; held1 refuses. */
    sp_block_store_touch(bs, "held0");
    h[1].refuse = true;
    /* Execution takes 8 MiB back down to the region: held2 and held3 go, held1 stays. */
    assert_int_equal(sp_memory_manager_acquire_execution(mm, 1, 8 << 20), 8 << 20);
    assert_int_equal(h[0].evicted, 0);
    assert_int_equal(h[1].evicted, 0);
    assert_int_equal(h[2].evicted, 1);
    assert_int_equal(h[3].evicted, 1);
    assert_false(sp_block_store_contains(bs, "held2", NULL));
    assert_false(sp_block_store_contains(bs, "held3", NULL));
    assert_true(sp_block_store_contains(bs, "held1", NULL));
    sp_block_store_stats(bs, &s);
    assert_int_equal(s.blocks_in_memory, 2);
    assert_int_equal(s.memory_bytes, 8 << 20);
    assert_int_equal(s.evicted_to_disk, 2);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.storage_used, 8 << 20);
    /* Removing drops it without asking its owner. */
    assert_int_equal(sp_block_store_remove(bs, "held0"), SP_OK);
    assert_int_equal(h[0].evicted, 0);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.storage_used, 4 << 20);
    sp_memory_manager_release_all_execution(mm, 1);
    sp_block_store_destroy(bs);
    sp_memory_manager_stats(mm, &ms);
    assert_int_equal(ms.storage_used, 0);
    sp_memory_manager_destroy(mm);
    assert_int_equal(count_files(), 0);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_block_put_get_remove_each_level, setup),
        cmocka_unit_test_setup(test_block_evicted_to_disk_reads_back_and_recaches, setup),
        cmocka_unit_test_setup(test_block_pinned_is_never_evicted_or_removed, setup),
        cmocka_unit_test_setup(test_block_ids_and_levels_are_validated, setup),
        cmocka_unit_test_setup(test_block_damaged_files_are_reported_corrupt, setup),
        cmocka_unit_test_setup(test_block_store_concurrent_threads, setup),
        cmocka_unit_test_setup(test_block_held_by_owner_is_evicted_through_it, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
