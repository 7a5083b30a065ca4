/*
 * The shuffle the remote-read tests write and check: map m's record i has
 * key "k%03u" of key_of(m, i), value m * 1e6 + i, and goes to partition
 * key % PARTS. A reduce partition read back must hold, per key, the count
 * and value total that the model computes from the same records.
 */
#ifndef SPATE_TEST_SHUFFLE_MODEL_H
#define SPATE_TEST_SHUFFLE_MODEL_H

#include <spate/shuffle.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define PARTS   7
#define RECORDS 3000
#define KEYS    400

static inline unsigned key_of(unsigned m, unsigned i) { return (m * 7919u + i * 104729u) % KEYS; }

/* Writes and commits map m of shuffle shuffle_id, key-ordered, in a task of its own. */
static inline sp_map_status_t *model_write_map(const sp_conf_t *conf, sp_memory_manager_t *mm,
                                               uint32_t shuffle_id, unsigned m)
{
    sp_shuffle_writer_options_t o;
    sp_shuffle_writer_t *wr = NULL;
    sp_task_memory_t *task = NULL;
    sp_map_status_t *st = NULL;

    assert_int_equal(sp_task_memory_create(mm, m, &task), SP_OK);
    assert_int_equal(sp_shuffle_writer_options_init(&o, conf), SP_OK);
    o.shuffle_id = shuffle_id;
    o.map_id = m;
    o.partitions = PARTS;
    o.key_ordering = true;
    assert_int_equal(sp_shuffle_writer_open(task, conf, &o, &wr), SP_OK);
    for (unsigned i = 0; i < RECORDS; i++) {
        char key[8];
        uint64_t v = (uint64_t)m * 1000000u + i;
        unsigned k = key_of(m, i);
        snprintf(key, sizeof(key), "k%03u", k);
        assert_int_equal(sp_shuffle_writer_write(wr, k % PARTS, key, 4, &v, sizeof(v)), SP_OK);
    }
    assert_int_equal(sp_shuffle_writer_commit(wr, &st), SP_OK);
    sp_shuffle_writer_close(wr);
    sp_task_memory_destroy(task, NULL);
    return st;
}

/* The key number of a record read back ("k" and three digits, not NUL-terminated). */
static inline unsigned model_key(const void *k, size_t kl)
{
    const char *kc = k;
    unsigned key;

    assert_int_equal(kl, 4);
    key = (unsigned)((kc[1] - '0') * 100 + (kc[2] - '0') * 10 + (kc[3] - '0'));
    assert_true(key < KEYS);
    return key;
}

/* Per key of partition r, the records and value total of maps 0 .. maps-1. */
static inline void model_expect(unsigned maps, uint32_t r, uint64_t *count, uint64_t *total)
{
    memset(count, 0, KEYS * sizeof(*count));
    memset(total, 0, KEYS * sizeof(*total));
    for (unsigned m = 0; m < maps; m++) {
        for (unsigned i = 0; i < RECORDS; i++) {
            unsigned k = key_of(m, i);
            if (k % PARTS != r)
                continue;
            count[k]++;
            total[k] += (uint64_t)m * 1000000u + i;
        }
    }
}

#endif /* SPATE_TEST_SHUFFLE_MODEL_H */
