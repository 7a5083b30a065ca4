/*
 * The k-way merge of the shuffle: merges inputs that are each sorted by
 * (rank, key) into one stream in that order. Used by the sorter's merge of
 * key-ordered runs (the writer's sort path and the reduce side's external
 * sort), by merged reads of key-sorted map outputs (one input per fetched
 * block: 65-129 for a TeraSort partition), and by the aggregator's merge of
 * its runs (ranked by key hash).
 *
 * A tournament (loser) tree over the inputs: each internal node keeps the
 * loser of the match played there and node 0 the overall winner, so after
 * the winner's input moves on, one walk from its leaf to the root replays
 * ceil(log2 k) matches, half the comparisons of a binary heap's sift-down
 * (two per level). Records are ordered by (rank, key by the comparator,
 * input index): equal keys come out in input order, so a merge of runs
 * written in order is stable. Exhausted inputs lose every match.
 *
 * When the comparator is NULL (byte order), each input caches the first 8
 * bytes of its current key as a big-endian integer, zero-padded: a match
 * first compares ranks, then these prefixes (one integer compare, which
 * decides almost every match on random keys such as TeraSort's) and only
 * on equal prefixes the whole keys. Zero padding keeps the prefix order
 * consistent with byte order: a shorter key that pads to a greater prefix
 * cannot exist, since padding is the least byte. A custom comparator is
 * called on every match; the rank is a 64-bit prefix of the order, 0 for
 * stored segments.
 *
 * next() returns the winner's current record and advances that input only
 * on the following call, so the pointers stay valid until then. Inputs are
 * either stored segments in memory (mmap'd files or fetched blocks),
 * decoded through a bounded window by a segment reader per input, or
 * sources: a callback that produces the next record (the aggregator's run
 * cursors, which read their runs chunk by chunk). An input whose order goes
 * down is reported rather than merged wrongly: its new record is checked
 * against a copy of the one returned last (by prefix first, like a match).
 */
#include "shuffle_int.h"
#include "radix_sort.h"

#include <string.h>

typedef struct sp_kmerge_input {
    /* Hot in every match: the current record's order and whether there is one. */
    uint64_t rank;
    uint64_t prefix; /* sp__key_prefix of key; 0 unless byte order */
    bool done;       /* no current record: loses every match */
    const void *key, *value;
    size_t klen, vlen;
    sp_segment_reader_t *reader; /* kept for reuse; NULL until a segment needs one */
    sp_kmerge_next_fn_t next;    /* a source; NULL: the segment of reader */
    void *arg;
} sp_kmerge_input_t;

struct sp_kmerge {
    sp_codec_t codec;
    sp_key_compare_fn_t compare;
    void *compare_arg;
    bool bytes; /* compare is NULL: byte order, prefixes cached */
    sp_kmerge_input_t *in;
    size_t n, cap; /* inputs added, room */
    /* tree[0]: the winner; tree[1..n-1]: the loser of the match at that
     * node, whose children are 2j and 2j+1; input i is leaf n+i. */
    size_t *tree;
    bool started;
    size_t last; /* input returned by the previous next(), or SIZE_MAX */
    /* Copy of the rank, prefix and key returned last: each input must not go below them. */
    uint64_t last_rank, last_prefix;
    unsigned char *last_key;
    size_t last_klen, last_cap;
    size_t bad_input; /* input found out of order, or SIZE_MAX */
};

int sp__bytes_compare(const void *a, size_t alen, const void *b, size_t blen)
{
    int c = alen != 0 && blen != 0 ? memcmp(a, b, SP_MIN(alen, blen)) : 0;

    return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* Order of two records by (rank, prefix, key); the prefixes count only in byte order. */
static inline int sp_kmerge_order(const sp_kmerge_t *m, uint64_t arank, uint64_t aprefix,
                                  const void *a, size_t alen, uint64_t brank, uint64_t bprefix,
                                  const void *b, size_t blen)
{
    if (arank != brank)
        return arank < brank ? -1 : 1;
    if (!m->bytes)
        return m->compare(a, alen, b, blen, m->compare_arg);
    if (aprefix != bprefix)
        return aprefix < bprefix ? -1 : 1;
    if (alen <= 8 || blen <= 8) /* equal prefixes cover the shorter key whole */
        return (alen > blen) - (alen < blen);
    return sp__bytes_compare((const unsigned char *)a + 8, alen - 8, (const unsigned char *)b + 8,
                             blen - 8);
}

/* Whether input a's current record comes before input b's (ties: the lower input). */
static inline bool sp_kmerge_less(const sp_kmerge_t *m, size_t a, size_t b)
{
    const sp_kmerge_input_t *x = &m->in[a], *y = &m->in[b];
    int c;

    if (x->done || y->done)
        return !x->done || (y->done && a < b);
    c = sp_kmerge_order(m, x->rank, x->prefix, x->key, x->klen, y->rank, y->prefix, y->key,
                        y->klen);
    return c < 0 || (c == 0 && a < b);
}

/* Replays the matches on input i's path to the root after its record changed. */
static inline void sp_kmerge_replay(sp_kmerge_t *m, size_t i)
{
    size_t w = i;

    for (size_t node = (m->n + i) / 2; node > 0; node /= 2) {
        size_t l = m->tree[node];
        if (sp_kmerge_less(m, l, w)) {
            m->tree[node] = w;
            w = l;
        }
    }
    m->tree[0] = w;
}

/* Plays every match once the inputs have their first records. */
static sp_status_t sp_kmerge_build(sp_kmerge_t *m)
{
    /* win[j]: winner below node j; leaves n..2n-1 are the inputs. */
    size_t *win;

    if (m->n == 0)
        return SP_OK;
    win = sp__malloc(2 * m->n * sizeof(*win));
    if (win == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a merge tree of %zu inputs", m->n);
    for (size_t i = 0; i < m->n; i++)
        win[m->n + i] = i;
    for (size_t j = m->n - 1; j > 0; j--) {
        size_t a = win[2 * j], b = win[2 * j + 1];
        bool a_wins = sp_kmerge_less(m, a, b);
        win[j] = a_wins ? a : b;
        m->tree[j] = a_wins ? b : a;
    }
    m->tree[0] = win[1]; /* n == 1: the one leaf */
    sp__free(win);
    return SP_OK;
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
    m->bytes = compare == NULL;
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
    sp__free(m->tree);
    sp__free(m->last_key);
    sp__free(m);
}

void sp__kmerge_reset(sp_kmerge_t *m)
{
    m->n = 0;
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
        size_t *tree;
        if (in == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu merge inputs", cap);
        memset(in + m->cap, 0, (cap - m->cap) * sizeof(*in));
        m->in = in;
        tree = sp__realloc(m->tree, cap * sizeof(*tree));
        if (tree == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "no memory for %zu merge inputs", cap);
        m->tree = tree;
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

/* Reads input i's next record and caches its prefix; done at the end. */
static sp_status_t sp_kmerge_advance(sp_kmerge_t *m, size_t i)
{
    sp_kmerge_input_t *in = &m->in[i];
    bool more = false;
    sp_status_t st;

    if (in->next != NULL)
        st = in->next(in->arg, &in->rank, &in->key, &in->klen, &in->value, &in->vlen, &more);
    else
        st = sp_segment_reader_next(in->reader, &in->key, &in->klen, &in->value, &in->vlen, &more);
    if (st != SP_OK)
        return st;
    in->done = !more;
    if (more && m->bytes)
        in->prefix = sp__key_prefix(in->key, in->klen);
    return SP_OK;
}

/* Whether input i's current record comes before the one returned last. */
static bool sp_kmerge_below_last(const sp_kmerge_t *m, size_t i)
{
    const sp_kmerge_input_t *in = &m->in[i];

    return sp_kmerge_order(m, in->rank, in->prefix, in->key, in->klen, m->last_rank, m->last_prefix,
                           m->last_key, m->last_klen) < 0;
}

sp_status_t sp__kmerge_next(sp_kmerge_t *m, const void **key_p, size_t *klen_p,
                            const void **value_p, size_t *vlen_p, bool *more_p)
{
    sp_kmerge_input_t *top;
    sp_status_t st;

    if (!m->started) {
        m->started = true;
        for (size_t i = 0; i < m->n; i++)
            if ((st = sp_kmerge_advance(m, i)) != SP_OK)
                return st;
        if ((st = sp_kmerge_build(m)) != SP_OK)
            return st;
    } else if (m->last != SIZE_MAX) {
        /* The input returned last time moves on now that its record is used. */
        if ((st = sp_kmerge_advance(m, m->last)) != SP_OK)
            return st;
        if (!m->in[m->last].done && sp_kmerge_below_last(m, m->last)) {
            /* Its keys go down: it was not sorted by this comparator, or the
             * comparator is inconsistent. Stop rather than merge wrongly. */
            m->bad_input = m->last;
            return SP_RAISE(SP_ERR_BAD_FORMAT,
                            "merge input %zu is not sorted by the comparator (an inconsistent "
                            "comparator, or a run not written in key order)",
                            m->last);
        }
        sp_kmerge_replay(m, m->last);
    }
    if (m->n == 0 || m->in[m->tree[0]].done) {
        m->last = SIZE_MAX;
        *more_p = false;
        return SP_OK;
    }
    m->last = m->tree[0];
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
    m->last_prefix = top->prefix;
    *key_p = top->key;
    *klen_p = top->klen;
    *value_p = top->value;
    *vlen_p = top->vlen;
    *more_p = true;
    return SP_OK;
}
