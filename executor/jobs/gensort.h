/*
 * The sort benchmark's input generator and output validator, byte for byte
 * compatible with gensort and valsort 1.5 (sortbenchmark.org, Chris Nyberg):
 * the 128-bit linear congruential generator "rand16" with skip-ahead, the
 * 100-byte binary records gensort writes, the sum of the records' CRC-32s
 * that `gensort -c` and valsort print, and valsort's checks (order, record
 * count, duplicate keys). Used by the terasort job and `spate gensort` /
 * `spate valsort`. Not installed.
 */
#ifndef SPATE_EXECUTOR_JOBS_GENSORT_H
#define SPATE_EXECUTOR_JOBS_GENSORT_H

#include <spate/common.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SP__GENSORT_RECORD_SIZE 100u
#define SP__GENSORT_KEY_SIZE    10u
#define SP__GENSORT_VALUE_SIZE  (SP__GENSORT_RECORD_SIZE - SP__GENSORT_KEY_SIZE)

/* gensort's record numbers, random values and checksum sums are 128 bits. */
__extension__ typedef unsigned __int128 sp__u128_t;

/* Buffer sizes for sp__u128_hex() and sp__u128_dec(), terminator included. */
#define SP__U128_HEX_SIZE 33u
#define SP__U128_DEC_SIZE 40u

/* ------------------------------------------------------------------------ */
/* rand16: x' = (a * x + c) mod 2^128, from x = 0                             */
/* ------------------------------------------------------------------------ */

/* One step of the generator. */
sp__u128_t sp__rand16_next(sp__u128_t x);

/*
 * The value after `steps` steps from 0 (steps = 0 gives 0), in 128 squarings
 * of the step at most: about a microsecond, whatever steps is.
 */
sp__u128_t sp__rand16_skip(sp__u128_t steps);

/* ------------------------------------------------------------------------ */
/* Records                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum sp__gensort_layout {
    /*
     * gensort 1.4/1.5 binary records (`gensort N FILE`): record n is made of
     * the ten random values n+1 .. n+10; the key is the top 10 bytes of the
     * first, each following 10 bytes the top 10 bytes of the next one xor'ed
     * with a constant of its position. Every byte is pseudo-random.
     */
    SP__GENSORT_V15 = 0,
    /*
     * gensort 1.0 - 1.2 binary records, the layout Hadoop's TeraGen still
     * writes: the same key, 0x00 0x11, the record number in 32 upper-case hex
     * digits, 0x88 0x99 0xAA 0xBB, 48 bytes of filler (the low 48 bits of the
     * random value, each hex digit four times), 0xCC 0xDD 0xEE 0xFF.
     */
    SP__GENSORT_V12 = 1,
} sp__gensort_layout_t;

/*
 * A generator positioned at a record: consecutive records come out of
 * sp__gensort_fill() at one generator step each. Plain data: copy it, keep
 * it on the stack; one thread at a time.
 */
typedef struct sp__gensort {
    sp__gensort_layout_t layout;
    sp__u128_t record;     /* number of the next record */
    sp__u128_t window[10]; /* random values record+1 .. record+10 */
} sp__gensort_t;

/* Positions gen at record `start` (skip-ahead, about a microsecond). */
void sp__gensort_init(sp__gensort_t *gen, sp__gensort_layout_t layout, sp__u128_t start);

/*
 * Writes the next count records (count * 100 bytes) to buf, which needs no
 * alignment, and advances gen past them.
 */
void sp__gensort_fill(sp__gensort_t *gen, void *buf, size_t count);

/* The key of record `record` alone (the same in both layouts), by skip-ahead. */
void sp__gensort_key(sp__u128_t record, unsigned char key[SP__GENSORT_KEY_SIZE]);

/* ------------------------------------------------------------------------ */
/* Checksums: the sum of zlib's crc32() of each record, mod 2^128             */
/* ------------------------------------------------------------------------ */

/* CRC-32 of one record: zlib's crc32(0, rec, 100), computed with ISA-L. */
uint32_t sp__gensort_crc32(const void *record);

/* The sum of the CRC-32s of count consecutive records. */
sp__u128_t sp__gensort_checksum(const void *records, size_t count);

/* Lower-case hex without leading zeros ("0" for zero), as gensort -c and valsort print. */
const char *sp__u128_hex(sp__u128_t v, char buf[SP__U128_HEX_SIZE]);
/* Decimal. */
const char *sp__u128_dec(sp__u128_t v, char buf[SP__U128_DEC_SIZE]);
/*
 * Parses a decimal number of 1 to 39 digits that fits in 128 bits (nothing
 * else: no sign, no blanks). SP_ERR_INVALID_PARAM (naming what, the text)
 * otherwise; *v_p is set only on success.
 */
sp_status_t sp__u128_parse(const char *text, const char *what, sp__u128_t *v_p);

/* ------------------------------------------------------------------------ */
/* valsort                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * What valsort finds in a sequence of records read in order (across files):
 * a key smaller than the previous key is unordered, an equal key a
 * duplicate. Summaries of consecutive pieces merge into the summary of the
 * whole (valsort -s), so pieces can be checked in parallel.
 */
typedef struct sp__valsort {
    uint64_t records;
    uint64_t duplicates;      /* records whose key equals the previous key */
    uint64_t unordered;       /* records whose key is below the previous key */
    uint64_t first_unordered; /* index (from 0) of the first unordered record; 0: none */
    sp__u128_t checksum;      /* sum of the records' CRC-32s */
    unsigned char first[SP__GENSORT_RECORD_SIZE]; /* first record, when records > 0 */
    unsigned char last[SP__GENSORT_RECORD_SIZE];  /* last record, when records > 0 */
} sp__valsort_t;

void sp__valsort_init(sp__valsort_t *v);

/* Consumes the next count records. */
void sp__valsort_add(sp__valsort_t *v, const void *records, size_t count);

/* Appends the summary of the records that follow v's (valsort -s). */
void sp__valsort_merge(sp__valsort_t *v, const sp__valsort_t *next);

/*
 * Consumes every record of the file at path. A file whose length is not a
 * whole number of records is SP_ERR_BAD_FORMAT and consumes nothing; an empty
 * file consumes nothing and is fine. I/O errors as sp__pread_all().
 */
sp_status_t sp__valsort_file(sp__valsort_t *v, const char *path);

/*
 * Checks count files, in that order, as one sequence, on up to `threads`
 * threads (0: one per online CPU), into *v_p. On error *v_p is untouched and
 * the message is the first failing file's.
 */
sp_status_t sp__valsort_files(const char *const *paths, size_t count, unsigned threads,
                              sp__valsort_t *v_p);

/*
 * The files valsort reads for path: path itself when it is a file; for a
 * directory its part-r-* files when it has any, else its part-* files (never
 * hidden ones), in name order. SP_ERR_NOT_FOUND when path does not exist or a
 * directory has no part files. The array and its strings are malloc'ed: free
 * with sp__valsort_paths_free().
 */
sp_status_t sp__valsort_paths(const char *path, char ***paths_p, size_t *count_p);
void sp__valsort_paths_free(char **paths, size_t count);

/*
 * Writes valsort's report: "First unordered record is record N" when there
 * is one, "Records: N", "Checksum: HEX", then either "ERROR - there are N
 * unordered records" or "Duplicate keys: N" and "SUCCESS - all records are in
 * order".
 */
void sp__valsort_report(const sp__valsort_t *v, FILE *out);

#endif /* SPATE_EXECUTOR_JOBS_GENSORT_H */
