/*
 * The k-way merge heap of the shuffle: merges inputs that are each sorted
 * by (rank, key) into one stream in that order. Used by the sorter's merge
 * of key-ordered runs (the writer's sort path and the reduce side's
 * external sort), by merged reads of key-sorted map outputs, and by the
 * aggregator's merge of its runs (ranked by key hash).
 *
 * A binary min-heap of input indices ordered by (current rank, current key
 * by the comparator, input index): equal keys come out in input order, so a
 * merge of runs written in order is stable. The comparator NULL means byte
 * order, compared inline (the merges of the sort path); the rank is a
 * 64-bit prefix of the order, 0 for stored segments. next() returns the
 * chosen input's current record and advances that input only on the
 * following call, so the pointers stay valid until then.
 *
 * Inputs are either stored segments in memory (mmap'd files or fetched
 * blocks), decoded through a bounded window by a segment reader per input,
 * or sources: a callback that produces the next record (the aggregator's
 * run cursors, which read their runs chunk by chunk). An input whose order
 * goes down is reported rather than merged wrongly.
 */
#include "shuffle_int.h"

#include <string.h>

typedef struct sp_kmerge_input {
    sp_segment_reader_t *reader; /* kept for reuse; NULL until a segment needs one */
    sp_kmerge_next_fn_t next;    /* a source; NULL: the segment of reader */
    void *arg;
    uint64_t rank;
    const void *key, *value;
    size_t klen, vlen;
} sp_kmerge_input_t;

struct sp_kmerge {
    sp_codec_t codec;
    sp_key_compare_fn_t compare;
    void *compare_arg;
    sp_kmerge_input_t *in;
    size_t n, cap; /* inputs added, room */
    size_t *heap;
    size_t heap_len;
    bool started;
    size_t last; /* input returned by the previous next(), or SIZE_MAX */
    /* Copy of the rank and key returned last: each input must not go below them. */
    uint64_t last_rank;
    unsigned char *last_key;
    size_t last_klen, last_cap;
    size_t bad_input; /* input found out of order, or SIZE_MAX */
};

int sp__bytes_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = alen != 0 && blen != 0 ? memcmp(a, b, SP_MIN(alen, blen)) : 0;

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static int sp_kmerge_key_compare(const sp_kmerge_t *m, const void *a, size_t alen, const void *b,
                                 size_t blen)
{
    return m->compare != NULL ? m->compare(a, alen, b, blen, m->compare_arg)
                              : sp__bytes_compare(a, alen, b, blen);
}

static bool sp_kmerge_less(const sp_kmerge_t *m, size_t a, size_t b)
{
    const sp_kmerge_input_t *x = &m->in[a], *y = &m->in[b];
    int c;

    if (x->rank != y->rank)
        return x->rank < y->rank;
    c = m->compare != NULL ? m->compare(x->key, x->klen, y->key, y->klen, m->compare_arg)
                           : sp__bytes_compare(x->key, x->klen, y->key, y->klen);
    return c < 0 || (c == 0 && a < b);
}

static void sp_kmerge_sift_down(sp_kmerge_t *m, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i, tmp;

        if (l < m->heap_len && sp_kmerge_less(m, m->heap[l], m->heap[best]))
            best = l;
        if (r < m->heap_len && sp_kmerge_less(m, m->heap[r], m->heap[best]))
            best = r;
        if (best == i)
            return;
        tmp = m->heap[i];
        m->heap[i] = m->heap[best];
        m->heap[best] = tmp;
        i = best;
    }
}

sp_status_t sp__kmerge_create(sp_codec_t codec, sp_key_compare_fn_t compare, void *compare_arg,
                              sp_kmerge_t **m_p)
{
    sp_kmerge_t *m = sp__calloc(1, sizeof(*m));

    if (m == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a k-way merge");
    m->codec = codec;
    m->compare = compare;
    m->compare_arg = compare_arg;
    m->last = SIZE_MAX;
    m->bad_input = SIZE_MAX;
    *m_p = m;
    return SP_OK;
}

size_t sp__kmerge_bad_input(const sp_kmerge_t *m) { return m->bad_input; }

void sp__kmerge_destroy(sp_kmerge_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->cap; i++)
        sp_segment_reader_destroy(m->in[i].reader);
    sp__free(m->in);
    sp__free(m->heap);
    sp__free(m->last_key);
    sp__free(m);
}

void sp__kmerge_reset(sp_kmerge_t *m)
{
    m->n = 0;
    m->heap_len = 0;
    m->started = false;
    m->last = SIZE_MAX;
    m->bad_input = SIZE_MAX;
}

/* Room for one more input; new slots start without a reader. */
static sp_status_t sp_kmerge_reserve(sp_kmerge_t *m)
{
    if (m->started)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "k-way merge: input added after the first record");
    if (m->n == m->cap) {
        size_t cap = m->cap != 0 ? 2 * m->cap : 8;
        sp_kmerge_input_t *in = sp__realloc(m->in, cap * sizeof(*in));
        size_t *heap;
        if (in == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu merge inputs", cap);
        memset(in + m->cap, 0, (cap - m->cap) * sizeof(*in));
        m->in = in;
        heap = sp__realloc(m->heap, cap * sizeof(*heap));
        if (heap == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu merge inputs", cap);
        m->heap = heap;
        m->cap = cap;
    }
    return SP_OK;
}

sp_status_t sp__kmerge_add(sp_kmerge_t *m, const void *segment, size_t len)
{
    sp_kmerge_input_t *in;
    sp_status_t st = sp_kmerge_reserve(m);

    if (st != SP_OK)
        return st;
    in = &m->in[m->n];
    if (in->reader == NULL && (st = sp_segment_reader_create(m->codec, &in->reader)) != SP_OK)
        return st;
    sp_segment_reader_reset(in->reader, segment, len);
    in->next = NULL;
    in->arg = NULL;
    in->rank = 0;
    m->n++;
    return SP_OK;
}

sp_status_t sp__kmerge_add_source(sp_kmerge_t *m, sp_kmerge_next_fn_t next, void *arg)
{
    sp_status_t st = sp_kmerge_reserve(m);

    if (st != SP_OK)
        return st;
    m->in[m->n].next = next;
    m->in[m->n].arg = arg;
    m->in[m->n].rank = 0;
    m->n++;
    return SP_OK;
}

/* Reads input i's next record; true when it has one. */
static sp_status_t sp_kmerge_advance(sp_kmerge_t *m, size_t i, bool *more_p)
{
    sp_kmerge_input_t *in = &m->in[i];

    if (in->next != NULL)
        return in->next(in->arg, &in->rank, &in->key, &in->klen, &in->value, &in->vlen, more_p);
    return sp_segment_reader_next(in->reader, &in->key, &in->klen, &in->value, &in->vlen, more_p);
}

/* Whether input i's current record comes before the one returned last. */
static bool sp_kmerge_below_last(const sp_kmerge_t *m, size_t i)
{
    const sp_kmerge_input_t *in = &m->in[i];

    if (in->rank != m->last_rank)
        return in->rank < m->last_rank;
    return sp_kmerge_key_compare(m, in->key, in->klen, m->last_key, m->last_klen) < 0;
}

sp_status_t sp__kmerge_next(sp_kmerge_t *m, const void **key_p, size_t *klen_p,
                            const void **value_p, size_t *vlen_p, bool *more_p)
{
    sp_kmerge_input_t *top;
    bool more = false;
    sp_status_t st;

    if (!m->started) {
        m->started = true;
        for (size_t i = 0; i < m->n; i++) {
            st = sp_kmerge_advance(m, i, &more);
            if (st != SP_OK)
                return st;
            if (more)
                m->heap[m->heap_len++] = i;
        }
        for (size_t i = m->heap_len / 2; i-- > 0;)
            sp_kmerge_sift_down(m, i);
    } else if (m->last != SIZE_MAX) {
        /* The input returned last time moves on now that its record is used. */
        st = sp_kmerge_advance(m, m->last, &more);
        if (st != SP_OK)
            return st;
        if (more && sp_kmerge_below_last(m, m->last)) {
            /* Its keys go down: it was not sorted by this comparator, or the
             * comparator is inconsistent. Stop rather than merge wrongly. */
            m->bad_input = m->last;
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "merge input %zu is not sorted by the comparator (an inconsistent "
                            "comparator, or a run not written in key order)",
                            m->last);
        }
        if (!more)
            m->heap[0] = m->heap[--m->heap_len];
        if (m->heap_len > 0)
            sp_kmerge_sift_down(m, 0);
    }
    if (m->heap_len == 0) {
        m->last = SIZE_MAX;
        *more_p = false;
        return SP_OK;
    }
    m->last = m->heap[0];
    top = &m->in[m->last];
    if (top->klen > m->last_cap || m->last_key == NULL) {
        /* Never NULL, even for empty keys: comparators get real pointers. */
        size_t cap = SP_MAX(SP_MAX(2 * m->last_cap, top->klen), 16);
        unsigned char *k = sp__realloc(m->last_key, cap);
        if (k == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for a key of %zu bytes", top->klen);
        m->last_key = k;
        m->last_cap = cap;
    }
    if (top->klen != 0)
        memcpy(m->last_key, top->key, top->klen);
    m->last_klen = top->klen;
    m->last_rank = top->rank;
    *key_p = top->key;
    *klen_p = top->klen;
    *value_p = top->value;
    *vlen_p = top->vlen;
    *more_p = true;
    return SP_OK;
}
