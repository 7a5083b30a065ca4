/*
 * gensort and valsort, compatible byte for byte with the sort benchmark's
 * tools (version 1.5), written from their published description and source.
 *
 * Generator. rand16 is the 128-bit LCG x' = a x + c mod 2^128 started at 0;
 * record n is built from the values x(n+1) .. x(n+10), where x(k) is the
 * k-th value after 0. Skip-ahead composes the step's powers of two (f^(2^i)
 * is again an LCG step, with a and c squared along), so a generator can start
 * at any record in about a microsecond, and a sample of keys spread over a
 * range costs one skip each. Consecutive records then cost one step each:
 * the ten-value window slides by one per record, so a batch of B records
 * needs B + 9 values, computed into a small array first, and each record is
 * ten big-endian stores of 10 bytes. Nothing is allocated.
 *
 * Checksums. valsort sums zlib's crc32(0, record, 100) over the records in
 * 128 bits; ISA-L's crc32_gzip_refl computes the same CRC (the test checks
 * the standard check value). A sum of CRCs needs every record's own CRC, and
 * one library call per 100-byte record is latency-bound (a chain of carry-
 * less multiplications, then the reduction, about 12-16 ns here against
 * 2-3 ns per 100 bytes for one long buffer). sp__gensort_checksum() therefore
 * computes the CRCs of four records at once with AVX-512 VPCLMULQDQ where the
 * CPU has it: each 16-byte block of a record is multiplied by x to the power
 * of its distance from the record's end (mod P, the constants below), which
 * needs no chain at all; the four records' blocks are xor-folded to one
 * 128-bit lane each and reduced to 32 bits together (Barrett). The first
 * load starts 28 bytes before a record with those bytes masked off, which
 * AVX-512 never reads, so the record's leading 4 bytes form a zero-padded
 * block (zeros in front change no CRC) and the register's initial value is
 * xored into them. The result equals ISA-L's, record by record; other CPUs
 * and the last 0-3 records of a call use ISA-L. Callers hand over batches
 * of records that they have just read or written, so the bytes are in cache.
 *
 * Validator. A summary (count, duplicates, unordered records, the first
 * unordered index, checksum, first and last record) describes a run of
 * consecutive records and two adjacent summaries merge into one, which is how
 * valsort -s combines partitions; sp__valsort_files() checks files on
 * several threads that way and merges the summaries in file order. A file is
 * read in 4 MB pieces with pread (a fault-injection point).
 */
#include "executor/jobs/gensort.h"

#include "common_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SP_GENSORT_X86 1
#else
#define SP_GENSORT_X86 0
#endif
#include <isa-l/crc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SP_U128(hi, lo) (((sp__u128_t)(hi) << 64) | (sp__u128_t)(lo))

/* The LCG's multiplier (L'Ecuyer) and increment, as gensort's rand16.c defines them. */
#define SP_RAND16_A SP_U128(0x2360ed051fc65da4ull, 0x4385df649fccf645ull)
#define SP_RAND16_C SP_U128(0x4a696d4772617952ull, 0x4950202020202001ull)

/* Records generated per batch of sp__gensort_fill(). */
#define SP_GENSORT_BATCH 64u
/* Records read per pread by the validator (4 MB). */
#define SP_VALSORT_CHUNK_RECORDS 40000u
/* Records the validator checksums and then compares while they are in L1 (6.4 KB). */
#define SP_VALSORT_BATCH 64u

/*
 * What gensort 1.5 xors into the random value behind each 10-byte part of a
 * record (only the top 80 bits matter); the key (part 0) is taken as it is.
 */
static const sp__u128_t sp_gensort_xor[10] = {
    0,
    SP_U128(0xF0E8E4E2E1D8D4D2ull, 0xD1CC000000000000ull),
    SP_U128(0xCAC9C6C5C3B8B4B2ull, 0xB1AC000000000000ull),
    SP_U128(0xAAA9A6A5A39C9A99ull, 0x9695000000000000ull),
    SP_U128(0x938E8D8B87787472ull, 0x716C000000000000ull),
    SP_U128(0x6A696665635C5A59ull, 0x5655000000000000ull),
    SP_U128(0x534E4D4B473C3A39ull, 0x3635000000000000ull),
    SP_U128(0x332E2D2B271E1D1Bull, 0x170F000000000000ull),
    SP_U128(0xC8C4C2C198949291ull, 0x8CE0000000000000ull),
    SP_U128(0x170F332E2D2B271Eull, 0x1D1B000000000000ull),
};

sp__u128_t sp__rand16_next(sp__u128_t x) { return SP_RAND16_A * x + SP_RAND16_C; }

sp__u128_t sp__rand16_skip(sp__u128_t steps)
{
    sp__u128_t x = 0, a = SP_RAND16_A, c = SP_RAND16_C;

    /* (a, c) is f^(2^i); squaring it gives f^(2^(i+1)) = (a^2, a c + c). */
    while (steps != 0) {
        if (steps & 1)
            x = a * x + c;
        c = a * c + c;
        a = a * a;
        steps >>= 1;
    }
    return x;
}

static inline uint64_t sp_be64(uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

static inline uint16_t sp_be16(uint16_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap16(v);
#else
    return v;
#endif
}

/* The top 10 bytes of v, most significant first. */
static inline void sp_gensort_put10(unsigned char *p, sp__u128_t v)
{
    uint64_t hi = sp_be64((uint64_t)(v >> 64));
    uint16_t lo = sp_be16((uint16_t)((uint64_t)v >> 48));

    memcpy(p, &hi, sizeof(hi));
    memcpy(p + 8, &lo, sizeof(lo));
}

static inline unsigned char sp_gensort_hex_digit(unsigned d)
{
    return (unsigned char)(d >= 10 ? 'A' + d - 10 : '0' + d);
}

/* gensort 1.2's record: key from x, then the fixed and record-number parts. */
static void sp_gensort_v12_record(unsigned char *rec, sp__u128_t x, sp__u128_t number)
{
    uint64_t lo = (uint64_t)x;

    sp_gensort_put10(rec, x);
    rec[10] = 0x00;
    rec[11] = 0x11;
    for (unsigned i = 0; i < 32; i++)
        rec[12 + i] = sp_gensort_hex_digit((unsigned)(number >> (124 - 4 * i)) & 0xF);
    rec[44] = 0x88;
    rec[45] = 0x99;
    rec[46] = 0xAA;
    rec[47] = 0xBB;
    for (unsigned i = 0; i < 12; i++)
        memset(rec + 48 + 4 * i, sp_gensort_hex_digit((unsigned)(lo >> (44 - 4 * i)) & 0xF), 4);
    rec[96] = 0xCC;
    rec[97] = 0xDD;
    rec[98] = 0xEE;
    rec[99] = 0xFF;
}

void sp__gensort_init(sp__gensort_t *gen, sp__gensort_layout_t layout, sp__u128_t start)
{
    gen->layout = layout;
    gen->record = start;
    gen->window[0] = sp__rand16_next(sp__rand16_skip(start));
    for (unsigned k = 1; k < 10; k++)
        gen->window[k] = sp__rand16_next(gen->window[k - 1]);
}

void sp__gensort_fill(sp__gensort_t *gen, void *buf, size_t count)
{
    sp__u128_t x[SP_GENSORT_BATCH + 10];
    unsigned char *out = buf;

    while (count > 0) {
        size_t n = SP_MIN(count, (size_t)SP_GENSORT_BATCH);

        /* x[i .. i+9] is record (gen->record + i)'s window, x[n .. n+9] the next one's. */
        memcpy(x, gen->window, sizeof(gen->window));
        for (size_t i = 10; i < n + 10; i++)
            x[i] = sp__rand16_next(x[i - 1]);
        if (gen->layout == SP__GENSORT_V15) {
            for (size_t i = 0; i < n; i++, out += SP__GENSORT_RECORD_SIZE)
                for (unsigned k = 0; k < 10; k++)
                    sp_gensort_put10(out + 10 * k, x[i + k] ^ sp_gensort_xor[k]);
        } else {
            for (size_t i = 0; i < n; i++, out += SP__GENSORT_RECORD_SIZE)
                sp_gensort_v12_record(out, x[i], gen->record + i);
        }
        memcpy(gen->window, x + n, sizeof(gen->window));
        gen->record += n;
        count -= n;
    }
}

void sp__gensort_key(sp__u128_t record, unsigned char key[SP__GENSORT_KEY_SIZE])
{
    sp_gensort_put10(key, sp__rand16_skip(record + 1));
}

uint32_t sp__gensort_crc32(const void *record)
{
    return crc32_gzip_refl(0, record, SP__GENSORT_RECORD_SIZE);
}

/* The sum of the CRC-32s of count records, one ISA-L call each. */
static uint64_t sp_gensort_crc_sum_isal(const unsigned char *rec, size_t count)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < count; i++, rec += SP__GENSORT_RECORD_SIZE)
        sum += crc32_gzip_refl(0, rec, SP__GENSORT_RECORD_SIZE);
    return sum;
}

#if SP_GENSORT_X86
#define SP_GENSORT_SIMD __attribute__((target("avx512f,avx512vl,avx512bw,vpclmulqdq")))

/*
 * K(e) = bit-reflected (x^e mod P) shifted left by one, P the CRC-32
 * polynomial 0x04C11DB7 (the constants of Intel's "Fast CRC Computation
 * Using PCLMULQDQ", generalised to any distance): a 16-byte block d blocks
 * before the last one folds with K(128 d + 32) on its low and K(128 d - 32)
 * on its high 64 bits. Each macro is one lane's (low, high) pair.
 */
#define SP_GK_D1 0x01751997d0LL, 0x00ccaa009eLL
#define SP_GK_D2 0x00f1da05aaLL, 0x015a546366LL
#define SP_GK_D3 0x003db1ecdcLL, 0x0174359406LL
#define SP_GK_D4 0x0154442bd4LL, 0x01c6e41596LL
#define SP_GK_D5 0x01c7569e54LL, 0x00ae0b5394LL
#define SP_GK_D6 0x00df068dc2LL, 0x018cb44e58LL
/* Expands the pairs first: GCC's _mm512_setr_epi64 is a macro that counts its arguments. */
#define SP_GK_SET(...) _mm512_setr_epi64(__VA_ARGS__)
#define SP_GK_R5       0x0163cd6124LL                 /* K(64): from 64 bits to 32 */
#define SP_GK_MU       0x01db710641LL, 0x01f7011641LL /* P and floor(x^64 / P), reflected */

/*
 * One record's blocks, each multiplied to the record's end: four 128-bit
 * lanes whose xor has the record's CRC register (from the initial ~0) as
 * its 16-byte remainder. Lanes of z0: masked off (nothing read), the head
 * (12 zero bytes, then the record's first 4 xored with ~0), bytes 4-19 and
 * 20-35; of z1: bytes 36-51, 52-67, 68-83, and 84-99 taken as they are.
 */
SP_GENSORT_SIMD static inline __m512i sp_gensort_fold(const unsigned char *rec)
{
    const __m512i k0 = SP_GK_SET(0, 0, SP_GK_D6, SP_GK_D5, SP_GK_D4);
    const __m512i k1 = SP_GK_SET(SP_GK_D3, SP_GK_D2, SP_GK_D1, 0, 0);
    const __m512i init = _mm512_setr_epi64(0, 0, 0, (long long)0xFFFFFFFF00000000ull, 0, 0, 0, 0);
    /* The address is formed as an integer: 28 bytes before an array is no valid pointer. */
    __m512i z0 = _mm512_maskz_loadu_epi8(~(__mmask64)0 << 28, (const void *)((uintptr_t)rec - 28));
    __m512i z1 = _mm512_loadu_si512((const void *)(rec + 36));
    __m512i f;

    z0 = _mm512_xor_si512(z0, init);
    f = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(z0, k0, 0x00),
                                  _mm512_clmulepi64_epi128(z0, k0, 0x11),
                                  _mm512_clmulepi64_epi128(z1, k1, 0x00), 0x96);
    return _mm512_ternarylogic_epi64(f, _mm512_clmulepi64_epi128(z1, k1, 0x11),
                                     _mm512_maskz_mov_epi64(0xC0, z1), 0x96);
}

/* Lane i of the result: the xor of the four lanes of the i-th argument. */
SP_GENSORT_SIMD static inline __m512i sp_gensort_xor_lanes(__m512i a, __m512i b, __m512i c,
                                                           __m512i d)
{
    __m512i u =
        _mm512_xor_si512(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_shuffle_i64x2(a, b, 0xEE));
    __m512i v =
        _mm512_xor_si512(_mm512_shuffle_i64x2(c, d, 0x44), _mm512_shuffle_i64x2(c, d, 0xEE));

    return _mm512_xor_si512(_mm512_shuffle_i64x2(u, v, 0x88), _mm512_shuffle_i64x2(u, v, 0xDD));
}

/* Per lane: the CRC register of the lane's 16 bytes (from 0), in bits 32-63. */
SP_GENSORT_SIMD static inline __m512i sp_gensort_reduce(__m512i x)
{
    const __m512i d1 = SP_GK_SET(SP_GK_D1, SP_GK_D1, SP_GK_D1, SP_GK_D1);
    const __m512i r5 = SP_GK_SET(SP_GK_R5, 0, SP_GK_R5, 0, SP_GK_R5, 0, SP_GK_R5, 0);
    const __m512i mu = SP_GK_SET(SP_GK_MU, SP_GK_MU, SP_GK_MU, SP_GK_MU);
    const __m512i low32 =
        _mm512_setr_epi64(0xFFFFFFFFLL, 0, 0xFFFFFFFFLL, 0, 0xFFFFFFFFLL, 0, 0xFFFFFFFFLL, 0);
    __m512i t;

    /* 128 bits to 64, 64 to 32, then Barrett. */
    x = _mm512_xor_si512(_mm512_clmulepi64_epi128(x, d1, 0x10), _mm512_bsrli_epi128(x, 8));
    t = _mm512_and_si512(x, low32);
    x = _mm512_xor_si512(_mm512_bsrli_epi128(x, 4), _mm512_clmulepi64_epi128(t, r5, 0x00));
    t = _mm512_clmulepi64_epi128(_mm512_and_si512(x, low32), mu, 0x10);
    t = _mm512_clmulepi64_epi128(_mm512_and_si512(t, low32), mu, 0x00);
    return _mm512_xor_si512(x, t);
}

/* The sum of the CRC-32s of count records, count a multiple of 4 below 2^32. */
SP_GENSORT_SIMD static uint64_t sp_gensort_crc_sum_simd(const unsigned char *rec, size_t count)
{
    const __m512i reg = _mm512_setr_epi64(-1, 0, -1, 0, -1, 0, -1, 0);
    __m512i acc = _mm512_setzero_si512();
    uint64_t lanes[8];

    for (size_t i = 0; i < count; i += 4, rec += 4 * SP__GENSORT_RECORD_SIZE) {
        __m512i x = sp_gensort_xor_lanes(sp_gensort_fold(rec),
                                         sp_gensort_fold(rec + SP__GENSORT_RECORD_SIZE),
                                         sp_gensort_fold(rec + 2 * SP__GENSORT_RECORD_SIZE),
                                         sp_gensort_fold(rec + 3 * SP__GENSORT_RECORD_SIZE));
        acc = _mm512_add_epi64(acc,
                               _mm512_srli_epi64(_mm512_and_si512(sp_gensort_reduce(x), reg), 32));
    }
    _mm512_storeu_si512(lanes, acc);
    /* zlib's CRC is the register's complement: ~r = 0xFFFFFFFF - r. */
    return (uint64_t)count * 0xFFFFFFFFull - (lanes[0] + lanes[2] + lanes[4] + lanes[6]);
}

static bool sp_gensort_simd_usable(void)
{
    static atomic_int usable; /* 0: not asked yet, 1: no, 2: yes */
    int u = atomic_load_explicit(&usable, memory_order_relaxed);

    if (u == 0) {
        __builtin_cpu_init();
        u = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vpclmulqdq")
                ? 2
                : 1;
        atomic_store_explicit(&usable, u, memory_order_relaxed);
    }
    return u == 2;
}
#endif

/* At most this many records per 64-bit partial sum (no overflow: 2^24 x 2^32). */
#define SP_GENSORT_SUM_RECORDS ((size_t)1 << 24)

sp__u128_t sp__gensort_checksum(const void *records, size_t count)
{
    const unsigned char *rec = records;
    sp__u128_t sum = 0;

    while (count > 0) {
        size_t n = SP_MIN(count, SP_GENSORT_SUM_RECORDS), simd = 0;

#if SP_GENSORT_X86
        if (sp_gensort_simd_usable()) {
            simd = n & ~(size_t)3;
            sum += sp_gensort_crc_sum_simd(rec, simd);
        }
#endif
        sum += sp_gensort_crc_sum_isal(rec + simd * SP__GENSORT_RECORD_SIZE, n - simd);
        rec += n * SP__GENSORT_RECORD_SIZE;
        count -= n;
    }
    return sum;
}

const char *sp__u128_hex(sp__u128_t v, char buf[SP__U128_HEX_SIZE])
{
    static const char digits[] = "0123456789abcdef";
    char tmp[SP__U128_HEX_SIZE];
    size_t n = 0, i = 0;

    do {
        tmp[n++] = digits[(unsigned)(v & 0xF)];
        v >>= 4;
    } while (v != 0);
    while (n > 0)
        buf[i++] = tmp[--n];
    buf[i] = '\0';
    return buf;
}

const char *sp__u128_dec(sp__u128_t v, char buf[SP__U128_DEC_SIZE])
{
    char tmp[SP__U128_DEC_SIZE];
    size_t n = 0, i = 0;

    do {
        tmp[n++] = (char)('0' + (unsigned)(v % 10));
        v /= 10;
    } while (v != 0);
    while (n > 0)
        buf[i++] = tmp[--n];
    buf[i] = '\0';
    return buf;
}

sp_status_t sp__u128_parse(const char *text, const char *what, sp__u128_t *v_p)
{
    const sp__u128_t max = ~(sp__u128_t)0;
    sp__u128_t v = 0;
    const char *p;

    if (text[0] == '\0')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "%s is empty", what);
    for (p = text; *p != '\0'; p++) {
        unsigned d = (unsigned)(*p - '0');

        if (*p < '0' || *p > '9')
            return SP_RAISE(SP_ERR_INVALID_PARAM, "%s '%s' is not a decimal number", what, text);
        if (v > (max - d) / 10)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "%s '%s' does not fit in 128 bits", what, text);
        v = v * 10 + d;
    }
    *v_p = v;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* valsort                                                                    */
/* ------------------------------------------------------------------------ */

void sp__valsort_init(sp__valsort_t *v) { memset(v, 0, sizeof(*v)); }

void sp__valsort_add(sp__valsort_t *v, const void *records, size_t count)
{
    const unsigned char *recs = records, *prev = v->last;
    size_t i = 0;

    if (count == 0)
        return;
    if (v->records == 0) {
        memcpy(v->first, recs, SP__GENSORT_RECORD_SIZE);
        prev = recs;
        i = 1;
        v->records = 1;
    }
    /* The checksum of a batch, then its order, while its records are in cache. */
    for (size_t batch = 0; batch < count; batch += SP_VALSORT_BATCH) {
        size_t end = SP_MIN(count, batch + SP_VALSORT_BATCH);

        v->checksum += sp__gensort_checksum(recs + batch * SP__GENSORT_RECORD_SIZE, end - batch);
        for (; i < end; i++) {
            const unsigned char *rec = recs + i * SP__GENSORT_RECORD_SIZE;
            int diff = memcmp(prev, rec, SP__GENSORT_KEY_SIZE);

            if (SP_UNLIKELY(diff != 0)) {
                if (diff > 0) {
                    if (v->unordered++ == 0)
                        v->first_unordered = v->records;
                }
            } else {
                v->duplicates++;
            }
            v->records++;
            prev = rec;
        }
    }
    if (prev != v->last)
        memcpy(v->last, prev, SP__GENSORT_RECORD_SIZE);
}

void sp__valsort_merge(sp__valsort_t *v, const sp__valsort_t *next)
{
    if (next->records == 0)
        return;
    if (v->records == 0) {
        *v = *next;
        return;
    }
    {
        int diff = memcmp(v->last, next->first, SP__GENSORT_KEY_SIZE);

        if (diff == 0) {
            v->duplicates++;
        } else if (diff > 0) {
            if (v->unordered++ == 0)
                v->first_unordered = v->records;
        }
    }
    /* The first unordered record of next is the first overall when v has none. */
    if (v->unordered == 0 && next->unordered != 0)
        v->first_unordered = v->records + next->first_unordered;
    v->unordered += next->unordered;
    v->duplicates += next->duplicates;
    v->records += next->records;
    v->checksum += next->checksum;
    memcpy(v->last, next->last, SP__GENSORT_RECORD_SIZE);
}

sp_status_t sp__valsort_file(sp__valsort_t *v, const char *path)
{
    const size_t chunk = (size_t)SP_VALSORT_CHUNK_RECORDS * SP__GENSORT_RECORD_SIZE;
    unsigned char *buf = NULL;
    sp_status_t st = SP_OK;
    uint64_t size, offset;
    struct stat sb;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "open %s: %s (errno %d)",
                        path, strerror(errno), errno);
    if (fstat(fd, &sb) != 0) {
        st = SP_RAISE(SP_ERR_IO, "stat %s: %s (errno %d)", path, strerror(errno), errno);
        goto out_close;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = SP_RAISE(SP_ERR_BAD_FORMAT, "%s is not a regular file", path);
        goto out_close;
    }
    size = (uint64_t)sb.st_size;
    if (size % SP__GENSORT_RECORD_SIZE != 0) {
        st = SP_RAISE(SP_ERR_BAD_FORMAT,
                      "%s is %llu bytes, not a whole number of %u-byte records (%llu bytes "
                      "past the last whole record: truncated or not sort records)",
                      path, (unsigned long long)size, SP__GENSORT_RECORD_SIZE,
                      (unsigned long long)(size % SP__GENSORT_RECORD_SIZE));
        goto out_close;
    }
    if (size == 0)
        goto out_close;
    buf = sp__malloc((size_t)SP_MIN(size, (uint64_t)chunk));
    if (buf == NULL) {
        st =
            SP_RAISE(SP_ERR_NOMEM, "valsort %s: no memory for a %zu-byte read buffer", path, chunk);
        goto out_close;
    }
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (offset = 0; offset < size;) {
        size_t len = (size_t)SP_MIN(size - offset, (uint64_t)chunk);

        if ((st = sp__pread_all(fd, buf, len, offset, path)) != SP_OK)
            goto out_free;
        sp__valsort_add(v, buf, len / SP__GENSORT_RECORD_SIZE);
        offset += len;
    }
out_free:
    sp__free(buf);
out_close:
    close(fd);
    return st;
}

/* Shared state of sp__valsort_files(): workers take files by index. */
typedef struct sp_valsort_job {
    const char *const *paths;
    size_t count;
    sp__valsort_t *parts; /* one summary per file */
    atomic_size_t next;
    atomic_bool failed;
    pthread_mutex_t lock; /* guards the error below */
    size_t error_index;   /* lowest failing file, count when none */
    sp_status_t error;
    char message[512];
} sp_valsort_job_t;

static void *sp_valsort_worker(void *arg)
{
    sp_valsort_job_t *job = arg;
    size_t i;

    while (!atomic_load(&job->failed) && (i = atomic_fetch_add(&job->next, 1)) < job->count) {
        sp_status_t st;

        sp__valsort_init(&job->parts[i]);
        st = sp__valsort_file(&job->parts[i], job->paths[i]);
        if (st != SP_OK) {
            pthread_mutex_lock(&job->lock);
            if (i < job->error_index) {
                job->error_index = i;
                job->error = st;
                snprintf(job->message, sizeof(job->message), "%s", sp_last_error());
            }
            pthread_mutex_unlock(&job->lock);
            atomic_store(&job->failed, true);
        }
    }
    return NULL;
}

sp_status_t sp__valsort_files(const char *const *paths, size_t count, unsigned threads,
                              sp__valsort_t *v_p)
{
    sp_valsort_job_t job = {.paths = paths, .count = count, .error_index = count};
    pthread_t *tids = NULL;
    unsigned started = 0;
    sp__valsort_t sum;

    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1u;
    }
    threads = (unsigned)SP_MIN((size_t)threads, SP_MAX(count, (size_t)1));
    job.parts = sp__calloc(SP_MAX(count, (size_t)1), sizeof(*job.parts));
    tids = sp__calloc(threads, sizeof(*tids));
    if (job.parts == NULL || tids == NULL) {
        sp__free(job.parts);
        sp__free(tids);
        return SP_RAISE(SP_ERR_NOMEM, "valsort: no memory for %zu file summaries", count);
    }
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, false);
    pthread_mutex_init(&job.lock, NULL);
    /* This thread is one of the workers; the others are extra. */
    for (; started + 1 < threads; started++) {
        if (pthread_create(&tids[started], NULL, sp_valsort_worker, &job) != 0)
            break;
    }
    sp_valsort_worker(&job);
    for (unsigned t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&job.lock);
    sp__free(tids);
    if (job.error_index < count) {
        sp__free(job.parts);
        return SP_RAISE(job.error, "%s", job.message);
    }
    sp__valsort_init(&sum);
    for (size_t i = 0; i < count; i++)
        sp__valsort_merge(&sum, &job.parts[i]);
    sp__free(job.parts);
    *v_p = sum;
    return SP_OK;
}

static int sp_valsort_name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void sp__valsort_paths_free(char **paths, size_t count)
{
    if (paths == NULL)
        return;
    for (size_t i = 0; i < count; i++)
        sp__free(paths[i]);
    sp__free(paths);
}

/* Appends a copy of "dir/name" to *paths (capacity *cap); false when out of memory. */
static bool sp_valsort_paths_push(char ***paths, size_t *count, size_t *cap, const char *dir,
                                  const char *name)
{
    size_t len = strlen(dir) + 1 + strlen(name) + 1;
    char *p;

    if (*count == *cap) {
        size_t ncap = *cap == 0 ? 16 : *cap * 2;
        char **n = sp__realloc(*paths, ncap * sizeof(*n));
        if (n == NULL)
            return false;
        *paths = n;
        *cap = ncap;
    }
    if ((p = sp__malloc(len)) == NULL)
        return false;
    snprintf(p, len, "%s/%s", dir, name);
    (*paths)[(*count)++] = p;
    return true;
}

sp_status_t sp__valsort_paths(const char *path, char ***paths_p, size_t *count_p)
{
    char **paths = NULL;
    size_t count = 0, cap = 0, reduce_count = 0;
    struct dirent *de;
    struct stat sb;
    DIR *dir;

    if (stat(path, &sb) != 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO, "%s: %s (errno %d)", path,
                        strerror(errno), errno);
    if (!S_ISDIR(sb.st_mode)) {
        paths = sp__calloc(1, sizeof(*paths));
        if (paths == NULL || (paths[0] = sp__strdup(path)) == NULL) {
            sp__free(paths);
            return SP_RAISE(SP_ERR_NOMEM, "valsort: no memory for the path %s", path);
        }
        *paths_p = paths;
        *count_p = 1;
        return SP_OK;
    }
    if ((dir = opendir(path)) == NULL)
        return SP_RAISE(SP_ERR_IO, "opendir %s: %s (errno %d)", path, strerror(errno), errno);
    /* Every part-* name; part-r-* ones are kept apart at the end. */
    while ((errno = 0, de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "part-", 5) != 0)
            continue;
        if (!sp_valsort_paths_push(&paths, &count, &cap, path, de->d_name)) {
            closedir(dir);
            sp__valsort_paths_free(paths, count);
            return SP_RAISE(SP_ERR_NOMEM, "valsort: no memory for the file list of %s", path);
        }
        reduce_count += strncmp(de->d_name, "part-r-", 7) == 0;
    }
    if (errno != 0) {
        int err = errno;
        closedir(dir);
        sp__valsort_paths_free(paths, count);
        return SP_RAISE(SP_ERR_IO, "readdir %s: %s (errno %d)", path, strerror(err), err);
    }
    closedir(dir);
    if (reduce_count > 0) {
        size_t kept = 0;
        for (size_t i = 0; i < count; i++) {
            const char *name = paths[i] + strlen(path) + 1;
            if (strncmp(name, "part-r-", 7) == 0)
                paths[kept++] = paths[i];
            else
                sp__free(paths[i]);
        }
        count = kept;
    }
    if (count == 0) {
        sp__valsort_paths_free(paths, count);
        return SP_RAISE(SP_ERR_NOT_FOUND, "%s holds no part-r-* or part-* files", path);
    }
    qsort(paths, count, sizeof(*paths), sp_valsort_name_cmp);
    *paths_p = paths;
    *count_p = count;
    return SP_OK;
}

void sp__valsort_report(const sp__valsort_t *v, FILE *out)
{
    char buf[SP__U128_HEX_SIZE];

    if (v->unordered != 0)
        fprintf(out, "First unordered record is record %llu\n",
                (unsigned long long)v->first_unordered);
    fprintf(out, "Records: %llu\n", (unsigned long long)v->records);
    fprintf(out, "Checksum: %s\n", sp__u128_hex(v->checksum, buf));
    if (v->unordered != 0) {
        fprintf(out, "ERROR - there are %llu unordered records\n",
                (unsigned long long)v->unordered);
    } else {
        fprintf(out, "Duplicate keys: %llu\n", (unsigned long long)v->duplicates);
        fprintf(out, "SUCCESS - all records are in order\n");
    }
}
