/*
 * LSD radix sorts of the map side's record pointers (shuffle/radix_sort.h).
 *
 * A packed pointer keeps its partition in bits 63..40, so sorting pointers
 * by partition is a few stable counting passes over those 24 bits, least
 * significant digit first. Entries add the 8-byte key prefix below the
 * partition: passes over the prefix, then over the partition.
 *
 * Only bits that vary cost anything. The digits of a key cover the span
 * from its lowest to its highest varying bit: one digit of up to
 * RADIX_WIDE_BITS bits when the span fits, bytes otherwise, and a byte in
 * which nothing varies is never moved. All digits are counted in one read;
 * then each digit is one moving pass. So one partition moves nothing,
 * partition ids that differ only within 10 adjacent bits (fewer than 1024
 * partitions numbered from 0) move once, and zero-padded short keys skip
 * the prefix bytes they never reach.
 *
 * Pointers learn which bits vary from a first read that ORs each word's XOR
 * with the first word (vectorized, a fifth of a counting read), and count
 * only the digits that plan needs. Entries count all eleven bytes in their
 * first read and read the varying bits off the buckets in use; a second,
 * counting read happens only when a key's span turns out to fit one wide
 * digit. A separate OR read of 16-byte entries cost more than it saved.
 *
 * Measured on a Zen 4 (32 KiB L1d): a scatter to 512 or 1024 buckets costs
 * about what 256 cost, 2048 buckets twice that and three times out of
 * cache; hence RADIX_WIDE_BITS = 10, and bytes above that span, since three
 * byte passes beat two passes of 12 bits.
 *
 * Invariants: each moving pass reads one buffer and writes the other
 * (ping-pong between a and tmp) in input order, so it is stable and the
 * buffer written last holds the result; with no pass, a is returned and tmp
 * is not touched. No allocation and no failure: the counters (at most 3072
 * size_t) live on the stack.
 */
#include "shuffle/radix_sort.h"

#include <spate/shuffle.h>

#include <string.h>

/* Widest single digit; its counters must stay in L1 (see the note above). */
#define RADIX_WIDE_BITS    10u
#define RADIX_WIDE_BUCKETS ((size_t)1 << RADIX_WIDE_BITS)
#define RADIX_BYTE_BUCKETS ((size_t)256)

#define PARTITION_SHIFT (SP_PAGE_NUMBER_BITS + SP_PAGE_OFFSET_BITS)
#define PARTITION_MASK  (((UINT64_C(1) << SP_PARTITION_BITS) - 1) << PARTITION_SHIFT)

/* Digits a key can need: a wide one, or bytes over its bits. */
#define PTR_MAX_DIGITS    ((SP_PARTITION_BITS + 7) / 8)
#define PREFIX_MAX_DIGITS 8
#define PTR_HIST_SIZE     SP_MAX(RADIX_WIDE_BUCKETS, PTR_MAX_DIGITS *RADIX_BYTE_BUCKETS)
/* Entries: the prefix's counters, then the partition's, each byte or wide. */
#define ENTRY_PTR_HIST  (PREFIX_MAX_DIGITS * RADIX_BYTE_BUCKETS)
#define ENTRY_BYTE_HIST (ENTRY_PTR_HIST + PTR_MAX_DIGITS * RADIX_BYTE_BUCKETS)
#define ENTRY_HIST_SIZE (ENTRY_PTR_HIST + RADIX_WIDE_BUCKETS)

_Static_assert(PARTITION_SHIFT + SP_PARTITION_BITS == 64, "the partition must be the top bits");
_Static_assert(PTR_MAX_DIGITS == 3, "entries_count_bytes counts three partition bytes");
_Static_assert(RADIX_WIDE_BUCKETS >= PTR_MAX_DIGITS * RADIX_BYTE_BUCKETS &&
                   RADIX_WIDE_BUCKETS <= ENTRY_PTR_HIST,
               "ENTRY_HIST_SIZE assumes the partition's widest counters are the wide digit");

/*
 * The digits of one key: digit k is (key >> (shift + 8 k)) & mask, for k
 * below digits (0 for a key that is the same in every element; 1 with a
 * mask of up to RADIX_WIDE_BITS bits for a wide digit; else bytes). moves
 * has bit k set when digit k varies and so needs its pass.
 */
typedef struct radix_plan {
    unsigned shift;
    unsigned digits;
    unsigned moves;
    uint64_t mask;
} radix_plan_t;

static radix_plan_t radix_plan(uint64_t diff)
{
    radix_plan_t plan = {0, 0, 0, 0};
    unsigned span;

    if (diff == 0)
        return plan;
    plan.shift = (unsigned)__builtin_ctzll(diff);
    span = 64 - (unsigned)__builtin_clzll(diff) - plan.shift;
    if (span <= RADIX_WIDE_BITS) {
        plan.digits = 1;
        plan.moves = 1;
        plan.mask = (UINT64_C(1) << span) - 1;
        return plan;
    }
    plan.digits = (span + 7) / 8;
    plan.mask = RADIX_BYTE_BUCKETS - 1;
    for (unsigned k = 0; k < plan.digits; k++)
        if (((diff >> (plan.shift + 8 * k)) & plan.mask) != 0)
            plan.moves |= 1u << k;
    return plan;
}

/* Clears the counters of each digit of plan, laid out from hist on. */
static void radix_hist_init(const radix_plan_t *plan, size_t *hist, size_t **digit_hist)
{
    for (unsigned k = 0; k < plan->digits; k++) {
        digit_hist[k] = hist;
        memset(hist, 0, (plan->mask + 1) * sizeof(*hist));
        hist += plan->mask + 1;
    }
}

/* Turns counts into each bucket's first output index. */
static void radix_offsets(size_t *hist, uint64_t mask)
{
    size_t sum = 0;

    for (size_t b = 0; b <= mask; b++) {
        size_t c = hist[b];

        hist[b] = sum;
        sum += c;
    }
}

/* Bits that differ between some element and the first; four OR chains. */
static uint64_t ptrs_diff(const uint64_t *a, size_t n)
{
    const uint64_t first = a[0];
    uint64_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
    size_t i = 0;

    for (; i + 4 <= n; i += 4) {
        d0 |= a[i] ^ first;
        d1 |= a[i + 1] ^ first;
        d2 |= a[i + 2] ^ first;
        d3 |= a[i + 3] ^ first;
    }
    for (; i < n; i++)
        d0 |= a[i] ^ first;
    return d0 | d1 | d2 | d3;
}

/*
 * Counts digits 0 .. digits-1 of every pointer. digits is a constant at
 * each call, so that the loop keeps one variable shift and constant ones.
 */
static inline __attribute__((always_inline)) void ptrs_count(const uint64_t *restrict a, size_t n,
                                                             const radix_plan_t *plan,
                                                             unsigned digits,
                                                             size_t *const *restrict h)
{
    const unsigned shift = plan->shift;
    const uint64_t mask = plan->mask;

    for (size_t i = 0; i < n; i++) {
        uint64_t x = a[i] >> shift;

        h[0][x & mask]++;
        if (digits > 1)
            h[1][(x >> 8) & mask]++;
        if (digits > 2)
            h[2][(x >> 16) & mask]++;
    }
}

/* One stable pass: src[i] goes to dst[offs[its digit]++], in input order. */
static void ptrs_scatter(const uint64_t *restrict src, uint64_t *restrict dst, size_t n,
                         unsigned shift, uint64_t mask, size_t *restrict offs)
{
    size_t i = 0;

    /*
     * Four loads ahead of their stores: measured 10% faster than one at a
     * time. Software prefetch of source or destination measured no gain.
     */
    for (; i + 4 <= n; i += 4) {
        uint64_t v0 = src[i];
        uint64_t v1 = src[i + 1];
        uint64_t v2 = src[i + 2];
        uint64_t v3 = src[i + 3];

        dst[offs[(v0 >> shift) & mask]++] = v0;
        dst[offs[(v1 >> shift) & mask]++] = v1;
        dst[offs[(v2 >> shift) & mask]++] = v2;
        dst[offs[(v3 >> shift) & mask]++] = v3;
    }
    for (; i < n; i++) {
        uint64_t v = src[i];

        dst[offs[(v >> shift) & mask]++] = v;
    }
}

uint64_t *sp__radix_sort_ptrs(uint64_t *a, uint64_t *tmp, size_t n)
{
    size_t hist[PTR_HIST_SIZE];
    size_t *h[PTR_MAX_DIGITS];
    uint64_t *src = a;
    uint64_t *dst = tmp;
    radix_plan_t plan;

    if (n < 2)
        return a;
    plan = radix_plan(ptrs_diff(a, n) & PARTITION_MASK);
    if (plan.digits == 0)
        return a;
    radix_hist_init(&plan, hist, h);
    switch (plan.digits) {
    case 1: ptrs_count(a, n, &plan, 1, h); break;
    case 2: ptrs_count(a, n, &plan, 2, h); break;
    default: ptrs_count(a, n, &plan, 3, h); break;
    }
    for (unsigned k = 0; k < plan.digits; k++) {
        uint64_t *t;

        if (!(plan.moves & (1u << k)))
            continue;
        radix_offsets(h[k], plan.mask);
        ptrs_scatter(src, dst, n, plan.shift + 8 * k, plan.mask, h[k]);
        t = src;
        src = dst;
        dst = t;
    }
    return src;
}

static inline void count_byte(size_t *restrict hist, uint64_t v, unsigned b)
{
    hist[RADIX_BYTE_BUCKETS * b + ((v >> (8 * b)) & 0xff)]++;
}

/*
 * Entries: counts all eleven bytes in one read. Byte b of the prefix counts
 * at hist[256 b], byte b of the partition at hist[ENTRY_PTR_HIST + 256 b].
 * Written out rather than as loops over b: -O2 keeps those loops, and the
 * whole sort measured 15 to 20% slower.
 */
static void entries_count_bytes(const sp_sort_entry_t *restrict a, size_t n, size_t *restrict hist)
{
    size_t *restrict hq = hist + ENTRY_PTR_HIST;

    for (size_t i = 0; i < n; i++) {
        uint64_t x = a[i].prefix;
        uint64_t y = a[i].ptr >> PARTITION_SHIFT;

        count_byte(hist, x, 0);
        count_byte(hist, x, 1);
        count_byte(hist, x, 2);
        count_byte(hist, x, 3);
        count_byte(hist, x, 4);
        count_byte(hist, x, 5);
        count_byte(hist, x, 6);
        count_byte(hist, x, 7);
        count_byte(hq, y, 0);
        count_byte(hq, y, 1);
        count_byte(hq, y, 2);
    }
}

/*
 * Plans one key of the entries from its byte counters at hist: the key is
 * `bytes` bytes from bit `shift` of its word, and first is the first
 * element's word. The bits that vary are read off the buckets in use. When
 * two or more bytes vary within RADIX_WIDE_BITS bits, the key becomes one
 * wide digit whose counters the caller fills in a second read (*wide_p
 * set); otherwise its digits are the bytes, and the varying ones move.
 */
static radix_plan_t entries_plan(const size_t *hist, unsigned bytes, unsigned shift, uint64_t first,
                                 bool *wide_p)
{
    radix_plan_t plan = {shift, bytes, 0, RADIX_BYTE_BUCKETS - 1};
    uint64_t diff = 0;
    unsigned lo, hi;

    *wide_p = false;
    for (unsigned b = 0; b < bytes; b++) {
        const size_t *h = hist + RADIX_BYTE_BUCKETS * b;
        unsigned v0 = (unsigned)(first >> (shift + 8 * b)) & 0xff;
        unsigned d = 0;

        for (unsigned v = 0; v < RADIX_BYTE_BUCKETS; v++)
            if (h[v] != 0)
                d |= v ^ v0;
        if (d != 0)
            plan.moves |= 1u << b;
        diff |= (uint64_t)d << (8 * b);
    }
    if (diff == 0 || (plan.moves & (plan.moves - 1)) == 0)
        return plan; /* no byte or one byte moves */
    lo = (unsigned)__builtin_ctzll(diff);
    hi = 64 - (unsigned)__builtin_clzll(diff);
    if (hi - lo <= RADIX_WIDE_BITS) {
        plan.shift = shift + lo;
        plan.digits = 1;
        plan.moves = 1;
        plan.mask = (UINT64_C(1) << (hi - lo)) - 1;
        *wide_p = true;
    }
    return plan;
}

/* Second read, only for wide digits: counts them in place of the bytes. */
static void entries_count_wide(const sp_sort_entry_t *restrict a, size_t n, const radix_plan_t *pp,
                               bool prefix_wide, const radix_plan_t *qp, bool ptr_wide,
                               size_t *restrict hist)
{
    size_t *restrict hp = hist;
    size_t *restrict hq = hist + ENTRY_PTR_HIST;
    const unsigned ps = pp->shift, qs = qp->shift;
    const uint64_t pm = pp->mask, qm = qp->mask;

    if (prefix_wide)
        memset(hp, 0, (pm + 1) * sizeof(*hp));
    if (ptr_wide)
        memset(hq, 0, (qm + 1) * sizeof(*hq));
    if (prefix_wide && ptr_wide) {
        for (size_t i = 0; i < n; i++) {
            hp[(a[i].prefix >> ps) & pm]++;
            hq[(a[i].ptr >> qs) & qm]++;
        }
    } else if (prefix_wide) {
        for (size_t i = 0; i < n; i++)
            hp[(a[i].prefix >> ps) & pm]++;
    } else {
        for (size_t i = 0; i < n; i++)
            hq[(a[i].ptr >> qs) & qm]++;
    }
}

/*
 * One stable pass on a digit of the pointer (on_ptr) or of the prefix;
 * on_ptr is a constant at each call, so each keeps one loop.
 */
static inline __attribute__((always_inline)) void
entries_scatter_on(const sp_sort_entry_t *restrict src, sp_sort_entry_t *restrict dst, size_t n,
                   bool on_ptr, unsigned shift, uint64_t mask, size_t *restrict offs)
{
    size_t i = 0;

    /* Unrolled as for pointers: measured 3 to 7% faster. */
    for (; i + 4 <= n; i += 4) {
        sp_sort_entry_t e0 = src[i];
        sp_sort_entry_t e1 = src[i + 1];
        sp_sort_entry_t e2 = src[i + 2];
        sp_sort_entry_t e3 = src[i + 3];

        dst[offs[((on_ptr ? e0.ptr : e0.prefix) >> shift) & mask]++] = e0;
        dst[offs[((on_ptr ? e1.ptr : e1.prefix) >> shift) & mask]++] = e1;
        dst[offs[((on_ptr ? e2.ptr : e2.prefix) >> shift) & mask]++] = e2;
        dst[offs[((on_ptr ? e3.ptr : e3.prefix) >> shift) & mask]++] = e3;
    }
    for (; i < n; i++) {
        sp_sort_entry_t e = src[i];

        dst[offs[((on_ptr ? e.ptr : e.prefix) >> shift) & mask]++] = e;
    }
}

static void entries_scatter(const sp_sort_entry_t *restrict src, sp_sort_entry_t *restrict dst,
                            size_t n, bool on_ptr, unsigned shift, uint64_t mask,
                            size_t *restrict offs)
{
    if (on_ptr)
        entries_scatter_on(src, dst, n, true, shift, mask, offs);
    else
        entries_scatter_on(src, dst, n, false, shift, mask, offs);
}

sp_sort_entry_t *sp__radix_sort_entries(sp_sort_entry_t *a, sp_sort_entry_t *tmp, size_t n)
{
    size_t hist[ENTRY_HIST_SIZE];
    sp_sort_entry_t *src = a;
    sp_sort_entry_t *dst = tmp;
    radix_plan_t plans[2];
    bool wide[2];

    if (n < 2)
        return a;
    memset(hist, 0, ENTRY_BYTE_HIST * sizeof(*hist));
    entries_count_bytes(a, n, hist);
    plans[0] = entries_plan(hist, 8, 0, a[0].prefix, &wide[0]);
    plans[1] =
        entries_plan(hist + ENTRY_PTR_HIST, PTR_MAX_DIGITS, PARTITION_SHIFT, a[0].ptr, &wide[1]);
    if (wide[0] || wide[1])
        entries_count_wide(a, n, &plans[0], wide[0], &plans[1], wide[1], hist);
    /* The prefix first: LSD order ends with the most significant key. */
    for (unsigned key = 0; key < 2; key++) {
        const radix_plan_t *plan = &plans[key];
        size_t *base = key ? hist + ENTRY_PTR_HIST : hist;

        for (unsigned k = 0; k < plan->digits; k++) {
            size_t *offs = base + k * (plan->mask + 1);
            sp_sort_entry_t *t;

            if (!(plan->moves & (1u << k)))
                continue;
            radix_offsets(offs, plan->mask);
            entries_scatter(src, dst, n, key == 1, plan->shift + 8 * k, plan->mask, offs);
            t = src;
            src = dst;
            dst = t;
        }
    }
    return src;
}
