/*
 * The graph task runner: one task of one stage of a graph job, the same code
 * on an executor's worker thread and in the local runner.
 *
 * A task computes one partition of its stage's output dataset by pipelining
 * the chain of narrow operations from the chain's root, record by record,
 * with nothing materialized between operations (Spark's pipelining of narrow
 * dependencies). The chain is found by walking parents from the output
 * dataset until a source or a wide dataset; the root is that dataset, or the
 * nearest persisted dataset whose block for this partition is in the
 * executor's block store (then nothing before it runs). The root's records:
 * - a text source: the lines of a byte range (a line belongs to the split
 *   holding its first byte; a split that does not start a file skips
 *   through the first '\n' at or after its offset - 1);
 * - a records source: whole fixed-size records of the range;
 * - a generated source: the job's function;
 * - a wide dataset: its partition of the shuffle, read in the shuffle's
 *   order (aggregated with the combiner, merged, sorted and grouped, or as
 *   blocks arrive), and for group-by and cogroup handed to the job one key
 *   at a time with its values streamed from the reader;
 * - a cached block: its records.
 * The chain's last records go to the stage's sink: the shuffle writer of a
 * map stage (partition by hash, range bounds, round robin, or, for a
 * cogroup's shuffle, the hash of the key with one byte naming the input
 * appended, so the reduce side's sort puts a key's left values before its
 * right ones), or an action's (a part file, a count, collected records).
 *
 * Each emitter stands for one dataset of the chain: sp_emit() into it hands
 * a record of that dataset to the next operation (or the sink), and copies
 * it into a block buffer when the dataset is persisted and being computed;
 * the buffer goes into the block store when the task succeeds.
 *
 * Everything here is per task: the graph is only read.
 */
#include "graph_int.h"

#include "common_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define SP_GT_READ_CHUNK (1u << 20)
/* The longest line a text source takes: a longer one is bad input, not a reason to run dry. */
#define SP_GT_MAX_LINE    (64u << 20)
#define SP_GT_SAMPLE_SEED 0x9E3779B97F4A7C15ULL

typedef struct sp_gtask sp_gtask_t;

/* A growable byte buffer (block tee, collected records, scratch keys). */
typedef struct sp_gbuf {
    unsigned char *data;
    size_t len, cap;
} sp_gbuf_t;

struct sp_emitter {
    sp_gtask_t *task;
    const sp_dataset_t *ds;   /* whose records come in here */
    const sp_dataset_t *next; /* the operation they go to; NULL: the sink */
    uint32_t partition;
    uint64_t emitted;
    void *state;  /* next's map_partitions state */
    bool started; /* next's begin ran */
    bool tee;     /* ds is persisted and computed here: keep its records */
    sp_gbuf_t block;
    /* The block buffer's execution memory: given up (the block not cached) when refused. */
    sp_memory_consumer_t block_mem;
    bool block_mem_on;
};

/* The reader of a wide root, as groups of equal keys (group-by, cogroup). */
typedef struct sp_gread {
    sp_shuffle_reader_t *reader;
    bool tagged;
    bool have;     /* a record is loaded */
    bool consumed; /* and was handed out: advance before looking again */
    sp_status_t err;
    const void *k, *v;
    size_t kl, vl;
    sp_gbuf_t key; /* the group's key (tag removed) */
} sp_gread_t;

struct sp_values {
    sp_gread_t *r;
    int side; /* -1: any; 0 left; 1 right */
};

struct sp_gtask {
    const sp__graph_env_t *env;
    uint32_t stage, index, attempt;
    uint32_t partition; /* of the chain's datasets */
    sp_task_memory_t *memory;
    sp_emitter_t *em; /* chain: em[0] holds the root's records, em[n-1] the output's */
    uint32_t n;
    uint64_t records_in;
    /* sinks */
    const sp__graph_shuffle_t *shuffle; /* map stage */
    uint8_t tag;
    uint64_t rr; /* round robin position */
    sp_shuffle_writer_t *writer;
    sp_gbuf_t scratch;
    const sp__graph_action_t *action;
    sp__part_file_t out;
    uint64_t sink_records;
    sp_gbuf_t collected;
    bool sampling;
    uint32_t sample_want;
    uint64_t sample_seen, rng;
    sp_gbuf_t sample;
    size_t *sample_off; /* reservoir: offset of each kept key in sample */
    /* reads */
    sp_shuffle_reader_t *reader;
    sp_block_fetcher_t *fetcher;
    sp_block_list_t *blocks;
    uint64_t read_bytes, spills, remote_bytes, wait_ns;
    uint64_t counters[SP_JOB_COUNTERS];
    sp__graph_task_out_t *out_p;
};

/* ------------------------------------------------------------------------ */
/* Buffers                                                                   */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_gbuf_reserve(sp_gbuf_t *b, size_t more)
{
    size_t cap;
    unsigned char *grown;

    if (more <= b->cap - b->len)
        return SP_OK;
    if (more > SIZE_MAX / 2 - b->len)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a task buffer would exceed %zu bytes", SIZE_MAX / 2);
    cap = SP_MAX(b->cap * 2, b->len + more);
    cap = SP_MAX(cap, (size_t)4096);
    if ((grown = sp__realloc(b->data, cap)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a task buffer of %zu bytes", cap);
    b->data = grown;
    b->cap = cap;
    return SP_OK;
}

static void sp_gbuf_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t sp_gbuf_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Appends a packed record: u32 key length, u32 value length, key, value. */
static sp_status_t sp_gbuf_record(sp_gbuf_t *b, const void *k, size_t kl, const void *v, size_t vl)
{
    sp_status_t st;

    if (kl > UINT32_MAX || vl > UINT32_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a record of %zu + %zu bytes cannot be kept", kl, vl);
    if ((st = sp_gbuf_reserve(b, 8 + kl + vl)) != SP_OK)
        return st;
    sp_gbuf_put32(b->data + b->len, (uint32_t)kl);
    sp_gbuf_put32(b->data + b->len + 4, (uint32_t)vl);
    if (kl > 0)
        memcpy(b->data + b->len + 8, k, kl);
    if (vl > 0)
        memcpy(b->data + b->len + 8 + kl, v, vl);
    b->len += 8 + kl + vl;
    return SP_OK;
}

static void sp_gbuf_free(sp_gbuf_t *b)
{
    sp__free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------------ */
/* Sinks                                                                     */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_gt_sample(sp_gtask_t *t, const void *k, size_t kl)
{
    uint64_t seen = t->sample_seen++;
    size_t slot;
    sp_status_t st;

    if (kl > UINT32_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "a key of %zu bytes cannot be sampled", kl);
    if (seen < t->sample_want) {
        slot = (size_t)seen;
    } else {
        t->rng ^= t->rng << 13;
        t->rng ^= t->rng >> 7;
        t->rng ^= t->rng << 17;
        if (t->rng % (seen + 1) >= t->sample_want)
            return SP_OK;
        slot = (size_t)(t->rng % t->sample_want);
    }
    /* Appended; a replaced key's bytes stay behind until the compaction at the end. */
    if ((st = sp_gbuf_reserve(&t->sample, 4 + kl)) != SP_OK)
        return st;
    sp_gbuf_put32(t->sample.data + t->sample.len, (uint32_t)kl);
    memcpy(t->sample.data + t->sample.len + 4, k, kl);
    t->sample_off[slot] = t->sample.len;
    t->sample.len += 4 + kl;
    return SP_OK;
}

static sp_status_t sp_gt_shuffle_write(sp_gtask_t *t, const void *k, size_t kl, const void *v,
                                       size_t vl)
{
    const sp__graph_shuffle_t *sh = t->shuffle;
    uint32_t partition = 0;
    sp_status_t st;

    if (t->sampling)
        return sp_gt_sample(t, k, kl);
    if (sh->tagged) {
        partition = sp_shuffle_hash_partition(k, kl, sh->partitions);
        t->scratch.len = 0;
        if ((st = sp_gbuf_reserve(&t->scratch, kl + 1)) != SP_OK)
            return st;
        if (kl > 0)
            memcpy(t->scratch.data, k, kl);
        t->scratch.data[kl] = t->tag;
        return sp_shuffle_writer_write(t->writer, partition, t->scratch.data, kl + 1, v, vl);
    }
    if (sh->round_robin)
        partition = (uint32_t)(t->rr++ % sh->partitions);
    else if (sh->partitioner == SP_PARTITIONER_HASH)
        partition = sp_shuffle_hash_partition(k, kl, sh->partitions); /* empty keys too */
    /* RANGE: the writer finds the partition; GIVEN otherwise (one partition): 0. */
    return sp_shuffle_writer_write(t->writer, partition, k, kl, v, vl);
}

static sp_status_t sp_gt_save(sp_gtask_t *t, const void *k, size_t kl, const void *v, size_t vl)
{
    sp_status_t st;

    if (kl > 0 && (st = sp__part_file_write(&t->out, k, kl)) != SP_OK)
        return st;
    if (t->action->format == SP_SAVE_TEXT && kl > 0 && vl > 0 &&
        (st = sp__part_file_write(&t->out, "\t", 1)) != SP_OK)
        return st;
    if (vl > 0 && (st = sp__part_file_write(&t->out, v, vl)) != SP_OK)
        return st;
    if (t->action->format == SP_SAVE_TEXT)
        return sp__part_file_write(&t->out, "\n", 1);
    return SP_OK;
}

static sp_status_t sp_gt_sink(sp_gtask_t *t, const void *k, size_t kl, const void *v, size_t vl)
{
    t->sink_records++;
    if (t->shuffle != NULL)
        return sp_gt_shuffle_write(t, k, kl, v, vl);
    switch (t->action->kind) {
    case SP__ACTION_SAVE: return sp_gt_save(t, k, kl, v, vl);
    case SP__ACTION_COLLECT:
        if (t->sink_records > t->action->limit)
            return SP_OK;
        if (t->collected.len + 8 + kl + vl > SP__GRAPH_COLLECT_MAX)
            return SP_RAISE(SP_ERR_TOO_LARGE,
                            "collect: partition %u holds more than %llu bytes of records to "
                            "collect",
                            t->partition, (unsigned long long)SP__GRAPH_COLLECT_MAX);
        return sp_gbuf_record(&t->collected, k, kl, v, vl);
    default: return SP_OK; /* count */
    }
}

/* ------------------------------------------------------------------------ */
/* The pipeline                                                              */
/* ------------------------------------------------------------------------ */

/*
 * A persisted partition's block buffer is execution memory of the task until
 * the task ends and the block store takes a copy. When the task cannot have
 * more (it is refused, or another consumer of the task needs it back), the
 * buffer goes and the partition is not cached: it is computed again when
 * used, as an evicted one would be.
 */
static void sp_gt_tee_drop(sp_emitter_t *em, const char *why)
{
    if (em->tee)
        sp_info("partition %u of dataset %u is not cached (%s): it is computed again when used",
                em->partition, em->ds->id, why);
    em->tee = false;
    sp_gbuf_free(&em->block);
    if (em->block_mem_on && em->block_mem.used > 0)
        sp_memory_consumer_release(&em->block_mem, em->block_mem.used);
}

static uint64_t sp_gt_tee_spill(sp_memory_consumer_t *consumer, uint64_t bytes,
                                sp_memory_consumer_t *trigger)
{
    sp_emitter_t *em = sp_container_of(consumer, sp_emitter_t, block_mem);
    uint64_t held = consumer->used;

    (void)bytes;
    (void)trigger;
    sp_gt_tee_drop(em, "its task needed the memory");
    return held;
}

static const sp_memory_consumer_ops_t sp_gt_tee_ops = {.size = sizeof(sp_memory_consumer_ops_t),
                                                       .spill = sp_gt_tee_spill};

static sp_status_t sp_gt_tee(sp_emitter_t *em, const void *k, size_t kl, const void *v, size_t vl)
{
    sp_gbuf_t *b = &em->block;
    size_t need = 8 + kl + vl;

    if (need > b->cap - b->len) {
        size_t cap = SP_MAX(SP_MAX(b->cap * 2, b->len + need), (size_t)(64u << 10));
        uint64_t delta = cap - b->cap, got = sp_memory_consumer_acquire(&em->block_mem, delta);
        unsigned char *grown;
        if (!em->tee)
            return SP_OK; /* dropped while the memory was sought */
        if (got < delta) {
            sp_memory_consumer_release(&em->block_mem, got);
            sp_gt_tee_drop(em, "no execution memory for its block");
            return SP_OK;
        }
        if ((grown = sp__realloc(b->data, cap)) == NULL) {
            sp_gt_tee_drop(em, "no memory for its block");
            return SP_OK;
        }
        b->data = grown;
        b->cap = cap;
    }
    return sp_gbuf_record(b, k, kl, v, vl);
}

static sp_status_t sp_gt_push(sp_emitter_t *em, const void *k, size_t kl, const void *v, size_t vl)
{
    const sp_dataset_t *op = em->next;
    sp_emitter_t *out = em + 1;
    sp_status_t st;

    if (em->tee && (st = sp_gt_tee(em, k, kl, v, vl)) != SP_OK)
        return st;
    if (op == NULL)
        return sp_gt_sink(em->task, k, kl, v, vl);
    switch (op->kind) {
    case SP__DS_MAP: {
        uint64_t before = out->emitted;
        if ((st = op->record_fn(out, k, kl, v, vl, op->arg)) != SP_OK)
            return st;
        if (out->emitted != before + 1)
            return SP_RAISE(SP_ERR_INVALID_PARAM,
                            "map (dataset %u) emitted %llu records for one; a map emits exactly "
                            "one (use flat_map for any number)",
                            op->id, (unsigned long long)(out->emitted - before));
        return SP_OK;
    }
    case SP__DS_FLAT_MAP: return op->record_fn(out, k, kl, v, vl, op->arg);
    case SP__DS_FILTER:
        if (!op->filter_fn(k, kl, v, vl, op->arg))
            return SP_OK;
        out->emitted++;
        return sp_gt_push(out, k, kl, v, vl);
    case SP__DS_MAP_PARTITIONS:
        return op->partition_fns.record(out, em->state, k, kl, v, vl, op->arg);
    default:
        return SP_RAISE(SP_ERR_INTERNAL, "dataset %u (%s) in a pipeline", op->id,
                        sp__graph_kind_name(op->kind));
    }
}

sp_status_t sp_emit(sp_emitter_t *out, const void *key, size_t key_len, const void *value,
                    size_t value_len)
{
    out->emitted++;
    return sp_gt_push(out, key, key_len, value, value_len);
}

uint32_t sp_emitter_partition(const sp_emitter_t *out) { return out->partition; }

uint32_t sp_emitter_partitions(const sp_emitter_t *out) { return out->ds->partitions; }

const sp_job_params_t *sp_emitter_params(const sp_emitter_t *out) { return out->task->env->params; }

void sp_emitter_counter_add(sp_emitter_t *out, unsigned id, uint64_t value)
{
    if (id < SP_JOB_COUNTERS)
        out->task->counters[id] += value;
}

/* Runs the map_partitions begin callbacks, upstream first. */
static sp_status_t sp_gt_begin(sp_gtask_t *t)
{
    sp_status_t st;

    for (uint32_t i = 0; i < t->n; i++) {
        const sp_dataset_t *op = t->em[i].next;
        if (op == NULL || op->kind != SP__DS_MAP_PARTITIONS)
            continue;
        if (op->partition_fns.begin != NULL &&
            (st = op->partition_fns.begin(&t->em[i + 1], &t->em[i].state, op->arg)) != SP_OK)
            return st;
        t->em[i].started = true;
    }
    return SP_OK;
}

/* Runs the end callbacks, upstream first: what one emits flows through those below. */
static sp_status_t sp_gt_end(sp_gtask_t *t)
{
    sp_status_t st;

    for (uint32_t i = 0; i < t->n; i++) {
        const sp_dataset_t *op = t->em[i].next;
        if (op == NULL || op->kind != SP__DS_MAP_PARTITIONS)
            continue;
        t->em[i].started = false;
        if (op->partition_fns.end != NULL) {
            st = op->partition_fns.end(&t->em[i + 1], t->em[i].state, op->arg);
            t->em[i].state = NULL;
            if (st != SP_OK)
                return st;
        } else {
            free(t->em[i].state);
            t->em[i].state = NULL;
        }
    }
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Roots                                                                     */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_gt_read_error(const char *path, int err)
{
    return SP_RAISE(err == ENOENT ? SP_ERR_BAD_INPUT : SP_ERR_IO, "input %s: %s (errno %d)", path,
                    strerror(err), err);
}

/* The lines whose first byte lies in [offset, offset + length) of split's file. */
static sp_status_t sp_gt_read_text(sp_gtask_t *t, const sp_job_split_t *split)
{
    sp_gbuf_t buf = {0};
    uint64_t pos, end = split->offset + split->length;
    size_t start = 0; /* of the line being read, in buf */
    bool skip = split->offset > 0, eof = false;
    sp_status_t st = SP_OK;
    int fd;

    if (split->path == NULL || split->length == 0)
        return SP_OK;
    if ((fd = open(split->path, O_RDONLY | O_CLOEXEC)) < 0)
        return sp_gt_read_error(split->path, errno);
    pos = skip ? split->offset - 1 : split->offset;
    /* buf holds file bytes [pos - buf.len, pos); line_pos is the file offset of start. */
    uint64_t line_pos = pos;
    for (;;) {
        unsigned char *nl;
        if (start == buf.len || (nl = memchr(buf.data + start, '\n', buf.len - start)) == NULL) {
            ssize_t n;
            if (eof || (!skip && line_pos >= end))
                break;
            if (start > 0) {
                memmove(buf.data, buf.data + start, buf.len - start);
                buf.len -= start;
                start = 0;
            }
            if (buf.len > SP_GT_MAX_LINE) {
                st = SP_RAISE(SP_ERR_BAD_INPUT,
                              "input %s: the line at byte %llu is longer than %u MiB, the most a "
                              "text source takes",
                              split->path, (unsigned long long)line_pos, SP_GT_MAX_LINE >> 20);
                break;
            }
            if ((st = sp_gbuf_reserve(&buf, SP_GT_READ_CHUNK)) != SP_OK)
                break;
            n = pread(fd, buf.data + buf.len, SP_GT_READ_CHUNK, (off_t)pos);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                st = sp_gt_read_error(split->path, errno);
                break;
            }
            if (n == 0) {
                eof = true;
                /* A last line without '\n'. */
                if (!skip && buf.len > start && line_pos < end) {
                    t->records_in++;
                    st = sp_emit(&t->em[0], NULL, 0, buf.data + start, buf.len - start);
                }
                break;
            }
            buf.len += (size_t)n;
            pos += (uint64_t)n;
            continue;
        }
        {
            size_t len = (size_t)(nl - (buf.data + start));
            if (skip) {
                skip = false;
            } else {
                if (line_pos >= end)
                    break;
                t->records_in++;
                if ((st = sp_emit(&t->em[0], NULL, 0, buf.data + start, len)) != SP_OK)
                    break;
            }
            start += len + 1;
            line_pos += len + 1;
        }
    }
    sp_gbuf_free(&buf);
    close(fd);
    return st;
}

static sp_status_t sp_gt_read_records(sp_gtask_t *t, const sp_dataset_t *ds,
                                      const sp_job_split_t *split)
{
    size_t rs = ds->record_size, chunk = SP_GT_READ_CHUNK / rs * rs;
    uint64_t pos = split->offset, end = split->offset + split->length;
    unsigned char *buf;
    sp_status_t st = SP_OK;
    int fd;

    if (split->path == NULL || split->length == 0)
        return SP_OK;
    if (chunk == 0)
        chunk = rs;
    if ((fd = open(split->path, O_RDONLY | O_CLOEXEC)) < 0)
        return sp_gt_read_error(split->path, errno);
    if ((buf = sp__malloc(chunk)) == NULL) {
        close(fd);
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a read buffer of %zu bytes", chunk);
    }
    while (pos < end && st == SP_OK) {
        size_t want = (size_t)SP_MIN((uint64_t)chunk, end - pos);
        ssize_t n = pread(fd, buf, want, (off_t)pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = sp_gt_read_error(split->path, errno);
            break;
        }
        /* Whole records only; a file cut short since it was listed is bad input. */
        n -= (ssize_t)((size_t)n % rs);
        if (n == 0) {
            st = SP_RAISE(SP_ERR_BAD_INPUT,
                          "input %s ends at byte %llu or inside the record there, before %llu",
                          split->path, (unsigned long long)pos, (unsigned long long)end);
            break;
        }
        for (size_t off = 0; off < (size_t)n && st == SP_OK; off += rs) {
            t->records_in++;
            st = sp_emit(&t->em[0], buf + off, ds->key_size, buf + off + ds->key_size,
                         rs - ds->key_size);
        }
        pos += (uint64_t)n;
    }
    sp__free(buf);
    close(fd);
    return st;
}

/* Records of a cached block, checked against its bytes. */
static sp_status_t sp_gt_read_block(sp_gtask_t *t, const sp_block_t *block, const char *id)
{
    const unsigned char *p = sp_block_data(block);
    size_t len = sp_block_size(block), off = 0;
    sp_status_t st = SP_OK;

    while (off < len && st == SP_OK) {
        uint64_t kl, vl;
        if (len - off < 8)
            return SP_RAISE(SP_ERR_CORRUPT, "block %s is cut short at byte %zu", id, off);
        kl = sp_gbuf_get32(p + off);
        vl = sp_gbuf_get32(p + off + 4);
        if (kl + vl > len - off - 8)
            return SP_RAISE(SP_ERR_CORRUPT, "block %s: a record at byte %zu overruns it", id, off);
        t->records_in++;
        st = sp_emit(&t->em[0], p + off + 8, kl, p + off + 8 + kl, vl);
        off += 8 + kl + vl;
    }
    return st;
}

/* ---- group iteration over a sorted shuffle read ---- */

static size_t sp_gread_keylen(const sp_gread_t *r) { return r->tagged ? r->kl - 1 : r->kl; }

static void sp_gread_advance(sp_gread_t *r)
{
    bool more = false;
    sp_status_t st;

    r->consumed = false;
    if (!r->have)
        return;
    st = sp_shuffle_reader_next(r->reader, &r->k, &r->kl, &r->v, &r->vl, &more);
    if (st != SP_OK) {
        r->err = st;
        r->have = false;
        return;
    }
    if (more && r->tagged && r->kl == 0) {
        r->err = SP_RAISE(SP_ERR_CORRUPT, "a cogroup shuffle record without its input byte");
        more = false;
    }
    r->have = more;
}

static bool sp_gread_in_group(const sp_gread_t *r)
{
    size_t kl;

    if (!r->have)
        return false;
    kl = sp_gread_keylen(r);
    return kl == r->key.len && (kl == 0 || memcmp(r->k, r->key.data, kl) == 0);
}

bool sp_values_next(sp_values_t *values, const void **value_p, size_t *len_p)
{
    sp_gread_t *r = values->r;

    for (;;) {
        if (r->consumed)
            sp_gread_advance(r);
        if (!sp_gread_in_group(r))
            return false;
        if (values->side >= 0) {
            int tag = ((const unsigned char *)r->k)[r->kl - 1];
            if (tag < values->side) { /* right asked while left values remain: skip them */
                r->consumed = true;
                continue;
            }
            if (tag > values->side)
                return false;
        }
        r->consumed = true;
        *value_p = r->v;
        *len_p = r->vl;
        return true;
    }
}

/* Skips what the callback left of the group. */
static void sp_gread_skip_group(sp_gread_t *r)
{
    if (r->consumed)
        sp_gread_advance(r);
    while (sp_gread_in_group(r))
        sp_gread_advance(r);
}

/* A join's callback: pairs a key's left values (held) with its right ones (streamed). */
static sp_status_t sp_gt_join(sp_emitter_t *out, const void *key, size_t kl, sp_values_t *left,
                              sp_values_t *right, const sp_dataset_t *ds)
{
    sp_gbuf_t held = {0}, rec = {0};
    const void *v;
    size_t vl, n = 0;
    bool matched = false;
    sp_status_t st = SP_OK;

    while (sp_values_next(left, &v, &vl) && st == SP_OK) {
        st = sp_gbuf_record(&held, NULL, 0, v, vl);
        n++;
    }
    if (n == 0 || st != SP_OK)
        goto out; /* no left value: no output, whatever right holds */
    while (st == SP_OK && sp_values_next(right, &v, &vl)) {
        size_t off = 0;
        matched = true;
        for (size_t i = 0; i < n && st == SP_OK; i++) {
            size_t lvl = sp_gbuf_get32(held.data + off + 4);
            sp_rec_field_t f[2] = {{held.data + off + 8, lvl, false}, {v, vl, false}};
            size_t need = sp_rec_tuple_pack(NULL, 0, f, 2);
            rec.len = 0;
            if (need == SIZE_MAX)
                st = SP_RAISE(SP_ERR_TOO_LARGE, "a joined value of over 4 GiB");
            else if ((st = sp_gbuf_reserve(&rec, need)) == SP_OK) {
                sp_rec_tuple_pack(rec.data, need, f, 2);
                st = sp_emit(out, key, kl, rec.data, need);
            }
            off += 8 + lvl;
        }
    }
    if (!matched && st == SP_OK && ds->join == SP_JOIN_LEFT) {
        size_t off = 0;
        for (size_t i = 0; i < n && st == SP_OK; i++) {
            size_t lvl = sp_gbuf_get32(held.data + off + 4);
            sp_rec_field_t f[2] = {{held.data + off + 8, lvl, false}, {NULL, 0, true}};
            size_t need = sp_rec_tuple_pack(NULL, 0, f, 2);
            rec.len = 0;
            if ((st = sp_gbuf_reserve(&rec, need)) == SP_OK) {
                sp_rec_tuple_pack(rec.data, need, f, 2);
                st = sp_emit(out, key, kl, rec.data, need);
            }
            off += 8 + lvl;
        }
    }
out:
    sp_gbuf_free(&held);
    sp_gbuf_free(&rec);
    return st;
}

static sp_status_t sp_gt_read_groups(sp_gtask_t *t, const sp_dataset_t *ds)
{
    sp_gread_t r = {.reader = t->reader, .tagged = ds->kind != SP__DS_GROUP, .have = true};
    sp_emitter_t *out = &t->em[0];
    sp_status_t st = SP_OK;

    sp_gread_advance(&r);
    while (r.have && st == SP_OK) {
        size_t kl = sp_gread_keylen(&r);
        r.key.len = 0;
        if ((st = sp_gbuf_reserve(&r.key, kl + 1)) != SP_OK)
            break;
        if (kl > 0)
            memcpy(r.key.data, r.k, kl);
        r.key.len = kl;
        t->records_in++;
        if (ds->kind == SP__DS_GROUP) {
            sp_values_t values = {&r, -1};
            st = ds->group_fn(out, r.key.data, kl, &values, ds->arg);
        } else {
            sp_values_t left = {&r, 0}, right = {&r, 1};
            st = ds->kind == SP__DS_JOIN
                     ? sp_gt_join(out, r.key.data, kl, &left, &right, ds)
                     : ds->cogroup_fn(out, r.key.data, kl, &left, &right, ds->arg);
        }
        if (r.err == SP_OK && st == SP_OK)
            sp_gread_skip_group(&r);
    }
    if (r.err != SP_OK)
        st = r.err; /* the read failed under the callback: that is the task's error */
    sp_gbuf_free(&r.key);
    return st;
}

/*
 * reduce_by_key's read: a merge of key-sorted, map-combined runs, so equal
 * keys arrive next to each other; each run of them is combined into one
 * value (held in key/value buffers, since the reader's pointers move) and
 * emitted when the next key starts.
 */
static sp_status_t sp_gt_read_combined(sp_gtask_t *t, const sp_dataset_t *ds)
{
    const sp_combiner_t *c = &ds->combiner;
    sp_gbuf_t key = {0}, val = {0}, tmp = {0};
    bool have = false;
    sp_status_t st = SP_OK;

    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        bool more;
        if ((st = sp_shuffle_reader_next(t->reader, &k, &kl, &v, &vl, &more)) != SP_OK)
            break;
        t->records_in += more;
        if (more && have && kl == key.len && (kl == 0 || memcmp(k, key.data, kl) == 0)) {
            size_t need =
                c->combine(c->arg, key.data, key.len, val.data, val.len, v, vl, tmp.data, tmp.cap);
            if (need > tmp.cap) {
                tmp.len = 0;
                if ((st = sp_gbuf_reserve(&tmp, need)) != SP_OK)
                    break;
                need = c->combine(c->arg, key.data, key.len, val.data, val.len, v, vl, tmp.data,
                                  tmp.cap);
            }
            /* The combined value becomes the held one; the old buffer is the next scratch. */
            {
                sp_gbuf_t swap = val;
                val = tmp;
                val.len = need;
                tmp = swap;
            }
            continue;
        }
        if (have && (st = sp_emit(&t->em[0], key.data, key.len, val.data, val.len)) != SP_OK)
            break;
        if (!more)
            break;
        key.len = val.len = 0;
        if ((st = sp_gbuf_reserve(&key, kl + 1)) != SP_OK ||
            (st = sp_gbuf_reserve(&val, vl + 1)) != SP_OK)
            break;
        if (kl > 0)
            memcpy(key.data, k, kl);
        if (vl > 0)
            memcpy(val.data, v, vl);
        key.len = kl;
        val.len = vl;
        have = true;
    }
    sp_gbuf_free(&key);
    sp_gbuf_free(&val);
    sp_gbuf_free(&tmp);
    return st;
}

/* A wide root: partition t->partition of its shuffle, in the shuffle's order. */
static sp_status_t sp_gt_read_shuffle(sp_gtask_t *t, const sp_dataset_t *ds)
{
    const sp__graph_env_t *env = t->env;
    const sp__graph_shuffle_t *sh = &env->graph->shuffles[ds->shuffle];
    const sp_map_status_t *const *list = NULL;
    sp_shuffle_reader_options_t ro = {0};
    sp_shuffle_read_stats_t rs;
    size_t count = 0;
    sp_status_t st;

    st = env->statuses(env->arg, (uint32_t)ds->shuffle, &list, &count);
    if (st == SP_ERR_NOT_FOUND) {
        t->out_p->missing_shuffle = (uint64_t)ds->shuffle;
        return SP_RAISE(SP_ERR_FETCH_FAILED, "shuffle %d (under %s, dataset %u) is not computed",
                        ds->shuffle, sp__graph_kind_name(ds->kind), ds->id);
    }
    if (st != SP_OK)
        return st;
    for (size_t m = 0; m < count; m++)
        if (list[m] == NULL) {
            t->out_p->failed_map = m;
            t->out_p->failed_shuffle = (uint32_t)ds->shuffle;
            return SP_RAISE(SP_ERR_FETCH_FAILED, "shuffle %d: map output %zu is missing",
                            ds->shuffle, m);
        }
    if ((st = sp_block_list_from_statuses(list, count, t->partition, t->partition + 1,
                                          &t->blocks)) != SP_OK)
        return st;
    t->remote_bytes += sp__remote_bytes(env->executor_id, t->partition, list, count);
    if (env->transport != NULL &&
        (st = sp_block_fetcher_transport_create(env->transport, &t->fetcher)) != SP_OK)
        return st;
    ro.order = sh->order;
    ro.compare = sh->compare;
    ro.compare_arg = sh->compare_arg;
    ro.combiner = sh->combiner;
    ro.fetcher = t->fetcher;
    if ((st = sp_shuffle_reader_open(t->memory, env->conf, t->blocks, &ro, &t->reader)) != SP_OK)
        return st;
    if (ds->kind == SP__DS_GROUP || ds->kind == SP__DS_COGROUP || ds->kind == SP__DS_JOIN) {
        st = sp_gt_read_groups(t, ds);
    } else if (ds->kind == SP__DS_REDUCE) {
        st = sp_gt_read_combined(t, ds);
    } else {
        for (;;) {
            const void *k, *v;
            size_t kl, vl;
            bool more;
            if ((st = sp_shuffle_reader_next(t->reader, &k, &kl, &v, &vl, &more)) != SP_OK || !more)
                break;
            t->records_in++;
            if ((st = sp_emit(&t->em[0], k, kl, v, vl)) != SP_OK)
                break;
        }
    }
    if (st == SP_ERR_FETCH_FAILED) {
        uint64_t map;
        if (sp_shuffle_reader_failed_map(t->reader, &map)) {
            t->out_p->failed_map = map;
            t->out_p->failed_shuffle = (uint32_t)ds->shuffle;
        }
    }
    sp_shuffle_reader_stats(t->reader, &rs);
    t->read_bytes = rs.bytes;
    t->spills += rs.spills;
    t->wait_ns += rs.wait_ns;
    return st;
}

/* ------------------------------------------------------------------------ */
/* The task                                                                  */
/* ------------------------------------------------------------------------ */

static bool sp_gt_is_wide(const sp_dataset_t *ds) { return ds->shuffle >= 0; }

/*
 * The chain from root to out: em[0] gets the root's records. The root is the
 * nearest persisted dataset with a block here, else the first source or
 * wide dataset going up. *block_p: the cached block read (pinned), or NULL.
 */
static sp_status_t sp_gt_chain(sp_gtask_t *t, const sp_dataset_t *out, sp_block_t **block_p)
{
    const sp__graph_env_t *env = t->env;
    const sp_dataset_t *ds = out;
    uint32_t n = 1;
    char id[256];

    *block_p = NULL;
    /* Walk up to the root, stopping early at a cached block. */
    for (;;) {
        if (ds->persisted && env->blocks != NULL) {
            sp__graph_block_id(env->run_id, ds->id, t->partition, id, sizeof(id));
            if (sp_block_store_get(env->blocks, id, block_p) == SP_OK) {
                t->out_p->cache_hits++;
                break;
            }
        }
        if (ds->kind <= SP__DS_GENERATE || sp_gt_is_wide(ds))
            break;
        ds = ds->parent;
        n++;
    }
    t->em = sp__calloc(n, sizeof(*t->em));
    if (t->em == NULL) {
        sp_block_store_release(*block_p);
        *block_p = NULL;
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a pipeline of %u datasets", n);
    }
    t->n = n;
    /* Fill from the output end: em[n-1] is out's, em[i] is the parent of em[i+1]'s. */
    ds = out;
    for (uint32_t i = n; i-- > 0;) {
        sp_emitter_t *em = &t->em[i];
        em->task = t;
        em->ds = ds;
        em->next = i + 1 < n ? t->em[i + 1].ds : NULL;
        em->partition = t->partition;
        /* A persisted dataset computed here is kept, unless its block is the root's. */
        em->tee =
            ds->persisted && env->blocks != NULL && !(i == 0 && *block_p != NULL) && !t->sampling;
        if (em->tee) {
            sp_memory_consumer_init(&em->block_mem, t->memory, &sp_gt_tee_ops,
                                    "graph block buffer");
            em->block_mem_on = true;
        }
        ds = ds->parent;
    }
    return SP_OK;
}

static sp_status_t sp_gt_root(sp_gtask_t *t, const sp_block_t *block)
{
    const sp_dataset_t *root = t->em[0].ds;
    char id[256];

    if (block != NULL) {
        sp__graph_block_id(t->env->run_id, root->id, t->partition, id, sizeof(id));
        return sp_gt_read_block(t, block, id);
    }
    switch (root->kind) {
    case SP__DS_TEXT: return sp_gt_read_text(t, &root->splits[t->partition]);
    case SP__DS_RECORDS: return sp_gt_read_records(t, root, &root->splits[t->partition]);
    case SP__DS_GENERATE:
        /* Sampling the source a sort reads directly: its own sampler is cheaper. */
        if (t->sampling && root->sample != NULL && t->n == 1)
            return root->sample(&t->em[0], t->partition, t->sample_want, root->arg);
        {
            sp_status_t st = root->generate(&t->em[0], t->partition, root->partitions, root->arg);
            t->records_in += t->em[0].emitted;
            return st;
        }
    default: return sp_gt_read_shuffle(t, root);
    }
}

/* Puts the blocks of persisted datasets computed here into the block store. */
static void sp_gt_cache(sp_gtask_t *t)
{
    const sp__graph_env_t *env = t->env;
    char id[256];

    for (uint32_t i = 0; i < t->n; i++) {
        sp_emitter_t *em = &t->em[i];
        sp_status_t st;
        if (!em->tee)
            continue;
        sp__graph_block_id(env->run_id, em->ds->id, t->partition, id, sizeof(id));
        st = sp_block_store_put(env->blocks, id,
                                em->block.data != NULL ? (const void *)em->block.data : "",
                                em->block.len, em->ds->level);
        if (st == SP_OK || st == SP_ERR_EXISTS) {
            if (t->out_p->cached < SP__GRAPH_MAX_CACHED)
                t->out_p->cached_ids[t->out_p->cached] = em->ds->id;
            t->out_p->cached++;
        } else
            sp_info("partition %u of dataset %u is not cached (%s): it is computed again when "
                    "used",
                    t->partition, em->ds->id, sp_last_error());
    }
}

static sp_status_t sp_gt_open_sink(sp_gtask_t *t)
{
    const sp__graph_env_t *env = t->env;
    const sp__graph_shuffle_t *sh = t->shuffle;
    sp_shuffle_writer_options_t opts;
    const sp_key_t *bounds = NULL;
    sp_status_t st;

    if (sh == NULL) {
        if (t->action->kind == SP__ACTION_SAVE)
            return sp__part_file_open(&t->out, env->params->output, env->run_id, t->partition,
                                      t->attempt);
        return SP_OK;
    }
    if (t->sampling) {
        t->sample_off = sp__calloc(t->sample_want, sizeof(*t->sample_off));
        return t->sample_off != NULL
                   ? SP_OK
                   : SP_RAISE(SP_ERR_NOMEM, "no memory for a sample of %u keys", t->sample_want);
    }
    if (sh->partitioner == SP_PARTITIONER_RANGE &&
        (st = env->bounds(env->arg, (uint32_t)(sh - env->graph->shuffles), &bounds)) != SP_OK)
        return st;
    if ((st = sp_shuffle_writer_options_init(&opts, env->conf)) != SP_OK)
        return st;
    opts.shuffle_id = env->shuffle_base + (uint64_t)(sh - env->graph->shuffles);
    opts.map_id = t->index;
    opts.attempt = t->attempt;
    opts.partitions = sh->partitions;
    opts.partitioner = sh->partitioner;
    opts.split_keys = bounds;
    opts.key_ordering = sh->key_ordering;
    opts.compare = sh->compare;
    opts.compare_arg = sh->compare_arg;
    opts.combiner = sh->combiner;
    /* A hashed empty key goes through GIVEN (the writer wants keys to hash). */
    if (opts.partitioner == SP_PARTITIONER_HASH)
        opts.partitioner = SP_PARTITIONER_GIVEN;
    return sp_shuffle_writer_open(t->memory, env->conf, &opts, &t->writer);
}

/* The sample's kept keys, compacted in reservoir order (sp__range_bounds's input). */
static sp_status_t sp_gt_sample_out(sp_gtask_t *t)
{
    uint64_t kept = SP_MIN(t->sample_seen, (uint64_t)t->sample_want);
    sp_gbuf_t out = {0};
    sp_status_t st;

    for (uint64_t i = 0; i < kept; i++) {
        const unsigned char *p = t->sample.data + t->sample_off[i];
        size_t len = 4 + sp_gbuf_get32(p);
        if ((st = sp_gbuf_reserve(&out, len)) != SP_OK) {
            sp_gbuf_free(&out);
            return st;
        }
        memcpy(out.data + out.len, p, len);
        out.len += len;
    }
    t->out_p->payload = out.data;
    t->out_p->payload_len = out.len;
    return SP_OK;
}

static sp_status_t sp_gt_close_sink(sp_gtask_t *t, sp__task_metrics_t *metrics)
{
    sp__graph_task_out_t *o = t->out_p;
    sp_shuffle_write_stats_t ws;
    sp_status_t st;

    if (t->sampling)
        return sp_gt_sample_out(t);
    if (t->shuffle != NULL) {
        if ((st = sp_shuffle_writer_commit(t->writer, &o->status)) != SP_OK)
            return st;
        o->status->executor_id = t->env->executor_id;
        sp_shuffle_writer_stats(t->writer, &ws);
        metrics->bytes_out = ws.output_bytes;
        metrics->spills += ws.spills;
        metrics->spill_bytes += ws.spill_bytes;
        metrics->sort_ns = ws.sort_ns;
        metrics->spill_ns = ws.spill_ns;
        metrics->merge_ns = ws.merge_ns;
        return SP_OK;
    }
    switch (t->action->kind) {
    case SP__ACTION_SAVE: metrics->bytes_out = t->out.bytes; return sp__part_file_commit(&t->out);
    case SP__ACTION_COUNT:
        if ((o->payload = sp__malloc(8)) == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a count");
        sp_rec_put_u64(o->payload, t->sink_records);
        o->payload_len = 8;
        return SP_OK;
    default:
        o->payload = t->collected.data;
        o->payload_len = t->collected.len;
        memset(&t->collected, 0, sizeof(t->collected));
        return SP_OK;
    }
}

static void sp_gt_discard(sp_gtask_t *t)
{
    for (uint32_t i = 0; t->em != NULL && i < t->n; i++) {
        const sp_dataset_t *op = t->em[i].next;
        if (t->em[i].state != NULL) {
            if (op != NULL && op->partition_fns.discard != NULL)
                op->partition_fns.discard(t->em[i].state, op->arg);
            else
                free(t->em[i].state);
        }
        sp_gt_tee_drop(&t->em[i], "");
        if (t->em[i].block_mem_on)
            sp_memory_consumer_fini(&t->em[i].block_mem);
    }
    sp__free(t->em);
    sp_shuffle_reader_close(t->reader);
    sp_block_fetcher_destroy(t->fetcher);
    sp_block_list_destroy(t->blocks);
    sp_shuffle_writer_close(t->writer);
    sp__part_file_abort(&t->out);
    sp_gbuf_free(&t->scratch);
    sp_gbuf_free(&t->collected);
    sp_gbuf_free(&t->sample);
    sp__free(t->sample_off);
}

static const char *sp_gt_stage_name(const sp_graph_t *g, uint32_t stage, char *buf, size_t cap)
{
    if (stage < g->nshuffles)
        snprintf(buf, cap, "stage %u (shuffle for %s, dataset %u)", stage,
                 sp__graph_kind_name(g->shuffles[stage].ds->kind), g->shuffles[stage].ds->id);
    else
        snprintf(buf, cap, "stage %u (action %u)", stage, stage - g->nshuffles);
    return buf;
}

sp_status_t sp__graph_task_run(const sp__graph_env_t *env, uint32_t stage, uint32_t index,
                               uint32_t attempt, bool sample, uint32_t count,
                               sp__graph_task_out_t *out, sp__task_metrics_t *metrics)
{
    const sp_graph_t *g = env->graph;
    sp__task_metrics_t m = {0};
    sp_gtask_t t = {0};
    const sp_dataset_t *top;
    sp_block_t *block = NULL;
    sp_task_memory_stats_t ms;
    uint64_t t0 = sp__now_ns();
    char name[128];
    sp_status_t st;

    memset(out, 0, sizeof(*out));
    out->missing_shuffle = UINT64_MAX;
    out->failed_map = UINT64_MAX;
    if (index >= sp__graph_stage_tasks(g, stage))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "task %u of %s, which has %u", index,
                        sp_gt_stage_name(g, stage, name, sizeof(name)),
                        sp__graph_stage_tasks(g, stage));
    t.env = env;
    t.stage = stage;
    t.index = index;
    t.attempt = attempt;
    t.out_p = out;
    t.out.fd = -1;
    if (stage < g->nshuffles) {
        uint32_t input;
        t.shuffle = &g->shuffles[stage];
        sp__graph_map_input(t.shuffle, index, &input, &t.partition);
        t.tag = (uint8_t)input;
        top = t.shuffle->inputs[input];
        t.rr = XXH3_64bits(&index, sizeof(index));
        t.sampling = sample;
        t.sample_want = count > 0 ? count : 1000;
        t.rng = SP_GT_SAMPLE_SEED ^ ((uint64_t)index * 0xBF58476D1CE4E5B9ULL);
    } else {
        if (sample)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "a sample of an action's task");
        t.action = &g->actions[stage - g->nshuffles];
        top = t.action->ds;
        t.partition = index;
    }
    if ((st = sp_task_memory_create(env->mm, sp__task_memory_id(), &t.memory)) != SP_OK)
        return st;
    if ((st = sp_gt_chain(&t, top, &block)) != SP_OK || (st = sp_gt_open_sink(&t)) != SP_OK)
        goto out;
    sp_last_error_clear();
    if ((st = sp_gt_begin(&t)) == SP_OK && (st = sp_gt_root(&t, block)) == SP_OK)
        st = sp_gt_end(&t);
    if (st != SP_OK) {
        const char *msg = sp_last_error();
        if (st != SP_ERR_FETCH_FAILED)
            st = SP_RAISE(st, "task %u of %s of job %s failed: %s", index,
                          sp_gt_stage_name(g, stage, name, sizeof(name)), env->job->name,
                          msg[0] != '\0' ? msg : sp_status_str(st));
        goto out;
    }
    if ((st = sp_gt_close_sink(&t, &m)) != SP_OK)
        goto out;
    if (!t.sampling)
        sp_gt_cache(&t);
out:
    sp_block_store_release(block);
    sp_gt_discard(&t);
    sp_task_memory_destroy(t.memory, &ms);
    if (st != SP_OK) {
        sp__graph_task_out_clear(out); /* missing_shuffle and failed_map stay */
        return st;
    }
    m.records_in = t.records_in;
    m.records_out = t.sink_records;
    m.bytes_in = t.read_bytes;
    m.remote_bytes = t.remote_bytes;
    m.fetch_wait_ns = t.wait_ns;
    m.spills += t.spills;
    m.peak_memory = ms.peak_acquired_bytes;
    memcpy(m.counters, t.counters, sizeof(m.counters));
    m.run_ns = sp__now_ns() - t0;
    m.map_ns = m.run_ns - m.fetch_wait_ns;
    if (metrics != NULL)
        *metrics = m;
    return SP_OK;
}

void sp__graph_task_out_clear(sp__graph_task_out_t *out)
{
    sp_map_status_destroy(out->status);
    out->status = NULL;
    sp__free(out->payload);
    out->payload = NULL;
    out->payload_len = 0;
}
