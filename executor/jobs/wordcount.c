/*
 * The wordcount job: how often each word occurs in a text, one
 * "word<TAB>count" line per distinct word, sorted by word in each output
 * file (part-r-NNNNN holds the words of one hash partition).
 *
 * Words. A word is a maximal run of bytes that are not ASCII whitespace
 * (space, \t, \n, \v, \f, \r); every other byte, UTF-8 included, is part of
 * a word. Words are compared as bytes (memcmp, then the shorter first).
 *
 * Input. --input DIR takes every regular file of DIR whose name does not
 * start with '.' or '_' (not subdirectories), in name order; --input FILE
 * takes that file. Each file is cut into byte ranges of 32 MiB (--job-arg
 * split_size=SIZE), one map task each. A range owns the words that START in
 * it: a range that does not start at offset 0 skips the rest of a word begun
 * before it (the byte before its start is not whitespace), and every range
 * reads past its end to finish its last word; so each word is counted once,
 * whatever the split size (Hadoop's line rule, applied to words). A word
 * longer than 16 MiB is bad input (SP_ERR_BAD_INPUT, naming the file, the
 * word's offset and the limit): the same bytes fail every attempt, so the
 * job fails at once rather than after task.max_failures attempts.
 *
 * Generated input. Without --input, --size BYTES generates a text of that
 * size instead: words of a fixed vocabulary of 8192 made-up words drawn with
 * Zipf-like frequencies (the word of rank r about 1/(r+1) of the time),
 * separated by spaces and a newline every 12 words, deterministic for
 * --job-arg seed=N (default 0). The text is a concatenation of independent
 * 32 MiB blocks (one per map task) that each end on a separator, so no word
 * crosses a block and map tasks generate their block without reading.
 * --job-arg vocabulary=N (1 .. 2^26) draws instead uniformly from N words:
 * word r spells r in base 26 over as many letters as N - 1 needs (at least
 * three; so words are distinct), then 0..4 letters more, fixed per word.
 * A text of W words then holds about N (1 - e^(-W/N)) distinct words: a
 * 200 MB text (about 23M words) with N = 4M holds 4M, the many-distinct
 * word count that aggregation is measured on (spate-bench wordcount).
 *
 * Data path. A graph job (<spate/graph.h>): a generated source with one
 * partition per byte range emits (word, u64 1 little-endian) for every word
 * of its range (the scanner and the text generator below, unchanged from the
 * two-stage job this was); reduce_by_key with the summing combiner counts
 * them: the map side combines in a hash table and writes each partition
 * sorted by word, the reduce side merges the sorted runs and sums equal words
 * as they stream past, in constant memory; a map formats each (word, count)
 * as "word<TAB>count" and the action saves the lines, in word order in each
 * part file. Hash aggregation on the reduce side would return words in hash
 * order and have to hold every distinct word of a partition to sort them.
 * The same partitioner (XXH3 of the word) and order as before: the output
 * files are byte for byte those of the two-stage job.
 *
 * Counters: words (sum of the counts written), distinct words (lines
 * written), map words (words emitted by maps), input bytes (bytes of the
 * splits, or generated). finish() checks words == map words.
 */
#include "bytes.h"
#include "common_int.h"
#include "executor/executor_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SP_WC_SPLIT_BYTES (32ull << 20)
#define SP_WC_CHUNK_BYTES (1u << 20)
#define SP_WC_TAIL_BYTES  (16u << 10)
#define SP_WC_MAX_WORD    (16u << 20)
/* Generated text: vocabulary size, and resolution of the rank table. */
#define SP_WC_VOCAB      8192u
#define SP_WC_RANK_BITS  18u
#define SP_WC_WORD_MAX   12u
#define SP_WC_LINE_WORDS 12u
/* Uniform vocabulary (vocabulary=N): its largest N, and the most letters of a word. */
#define SP_WC_UNIFORM_MAX  (1u << 26)
#define SP_WC_UNIFORM_WORD 16u

enum {
    SP_WC_WORDS = 0,
    SP_WC_DISTINCT = 1,
    SP_WC_MAP_WORDS = 2,
    SP_WC_INPUT_BYTES = 3,
};

/*
 * Calls fn for every word owned by the byte range [offset, offset+length) of
 * path under the rule above; *bytes_p gets the bytes of the range that exist.
 * Not static: tests/executor/test_jobs.c checks the rule through it.
 */
typedef sp_status_t (*sp__wordcount_word_fn_t)(void *arg, const void *word, size_t len);
sp_status_t sp__wordcount_scan(const char *path, uint64_t offset, uint64_t length,
                               sp__wordcount_word_fn_t fn, void *arg, uint64_t *bytes_p);

/* ------------------------------------------------------------------------ */
/* Words                                                                     */
/* ------------------------------------------------------------------------ */

static bool sp_wc_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* The combiner: sum of u64 little-endian counts. */
static size_t sp_wc_sum(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                        const void *b, size_t b_len, void *out, size_t cap)
{
    SP_UNUSED(arg);
    SP_UNUSED(key);
    SP_UNUSED(key_len);
    SP_UNUSED(a_len);
    SP_UNUSED(b_len);
    /* Values are 8 bytes: map emits them so, and reduce refuses any other length. */
    if (cap >= 8)
        sp__le_put_u64((unsigned char *)out, sp__le_get_u64((const unsigned char *)a) +
                                                 sp__le_get_u64((const unsigned char *)b));
    return 8;
}

static const sp_combiner_t sp_wc_combiner = {.combine = sp_wc_sum, .arg = NULL};

/* Appends bytes to the word (starting at offset word_at of path) that crosses a chunk boundary. */
static sp_status_t sp_wc_carry(unsigned char **buf, size_t *len, size_t *cap, const void *bytes,
                               size_t n, const char *path, uint64_t word_at)
{
    if (*len + n > SP_WC_MAX_WORD)
        return SP_RAISE(SP_ERR_BAD_INPUT,
                        "wordcount: %s: the word at offset %" PRIu64
                        " is longer than %u bytes (16 MiB), the longest word wordcount counts",
                        path, word_at, SP_WC_MAX_WORD);
    if (*len + n > *cap) {
        size_t want = SP_MAX(*len + n, 2 * *cap);
        unsigned char *grown = sp__realloc(*buf, want);

        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for a word of %zu bytes", *len + n);
        *buf = grown;
        *cap = want;
    }
    memcpy(*buf + *len, bytes, n);
    *len += n;
    return SP_OK;
}

sp_status_t sp__wordcount_scan(const char *path, uint64_t offset, uint64_t length,
                               sp__wordcount_word_fn_t fn, void *arg, uint64_t *bytes_p)
{
    const uint64_t end = offset + length;
    unsigned char *chunk, *carry = NULL;
    size_t carry_len = 0, carry_cap = 0;
    uint64_t pos, size, word_at = 0;
    bool in_word = false, skipping = false, done = false;
    struct stat st;
    sp_status_t status = SP_OK;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO,
                        "wordcount: open %s: %s (errno %d)", path, strerror(errno), errno);
    if (fstat(fd, &st) != 0) {
        status =
            SP_RAISE(SP_ERR_IO, "wordcount: stat %s: %s (errno %d)", path, strerror(errno), errno);
        goto out_fd;
    }
    size = (uint64_t)st.st_size;
    chunk = sp__malloc(SP_WC_CHUNK_BYTES);
    if (chunk == NULL) {
        status = SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for a read buffer");
        goto out_fd;
    }
    /* A range that starts inside a word leaves that word to the range before. */
    pos = offset;
    if (offset > 0 && offset <= size) {
        status = sp__pread_all(fd, chunk, 1, offset - 1, path);
        if (status != SP_OK)
            goto out_chunk;
        skipping = !sp_wc_space(chunk[0]);
    }
    while (!done && pos < size) {
        /* Up to the range's end, then small reads to finish the last word. */
        uint64_t want = pos < end ? end - pos : SP_WC_TAIL_BYTES;
        size_t n = (size_t)SP_MIN(SP_MIN((uint64_t)SP_WC_CHUNK_BYTES, want), size - pos);
        size_t start = 0; /* of the current word in this chunk */

        status = sp__pread_all(fd, chunk, n, pos, path);
        if (status != SP_OK)
            break;
        for (size_t i = 0; i < n; i++) {
            if (sp_wc_space(chunk[i])) {
                skipping = false;
                if (in_word) {
                    in_word = false;
                    if (carry_len > 0) {
                        status =
                            sp_wc_carry(&carry, &carry_len, &carry_cap, chunk, i, path, word_at);
                        if (status == SP_OK)
                            status = fn(arg, carry, carry_len);
                        carry_len = 0;
                    } else {
                        status = fn(arg, chunk + start, i - start);
                    }
                    if (status != SP_OK)
                        goto out_carry;
                }
                if (pos + i >= end) {
                    done = true;
                    break;
                }
            } else if (!in_word && !skipping) {
                if (pos + i >= end) {
                    done = true; /* a word that starts past the range is the next range's */
                    break;
                }
                in_word = true;
                start = i;
                word_at = pos + i;
            }
        }
        if (!done && in_word) {
            status = sp_wc_carry(&carry, &carry_len, &carry_cap, chunk + start, n - start, path,
                                 word_at);
            if (status != SP_OK)
                goto out_carry;
        }
        if (!done && skipping && pos + n >= end)
            done = true; /* the whole rest of the range is a word begun before it */
        pos += n;
    }
    if (status == SP_OK && in_word)
        status = fn(arg, carry, carry_len); /* the file ends inside the last word */
    if (status == SP_OK && bytes_p != NULL)
        *bytes_p = offset >= size ? 0 : SP_MIN(length, size - offset);
out_carry:
    sp__free(carry);
out_chunk:
    sp__free(chunk);
out_fd:
    close(fd);
    return status;
}

/* ------------------------------------------------------------------------ */
/* Generated text                                                            */
/* ------------------------------------------------------------------------ */

static struct {
    pthread_once_t once;
    unsigned char len[SP_WC_VOCAB];
    char word[SP_WC_VOCAB][SP_WC_WORD_MAX];
    uint16_t rank[1u << SP_WC_RANK_BITS]; /* uniform SP_WC_RANK_BITS bits -> rank */
} sp_wc_gen = {.once = PTHREAD_ONCE_INIT};

static uint64_t sp_wc_mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/*
 * The vocabulary and the rank table. Word r is three letters spelling r in
 * base 26 (so words are distinct), then 0..8 letters more, fewer for the
 * frequent ranks, as in natural text. The rank table gives rank r to about
 * 2^18 * (1/(r+1)) / H slots (H the harmonic sum), every rank at least one.
 */
static void sp_wc_gen_init(void)
{
    const double slots = (double)(1u << SP_WC_RANK_BITS);
    double harmonic = 0, cum = 0;
    uint64_t s = 0x5eed;
    uint32_t next = 0;

    for (uint32_t r = 0; r < SP_WC_VOCAB; r++) {
        unsigned extra = 0, bits = 0;
        char *w = sp_wc_gen.word[r];

        w[0] = (char)('a' + r % 26);
        w[1] = (char)('a' + r / 26 % 26);
        w[2] = (char)('a' + r / 676 % 26);
        while ((r + 1) >> bits)
            bits++;
        extra = (unsigned)(sp_wc_mix(&s) % (1 + SP_MIN(bits, 8u)));
        for (unsigned i = 0; i < extra; i++)
            w[3 + i] = "etaoinshrdlucmfwypvbgkjqxz"[sp_wc_mix(&s) % 26];
        sp_wc_gen.len[r] = (unsigned char)(3 + extra);
        harmonic += 1.0 / (r + 1);
    }
    for (uint32_t r = 0; r < SP_WC_VOCAB; r++) {
        /* Slots left must cover one per rank still to place. */
        uint32_t limit = (1u << SP_WC_RANK_BITS) - (SP_WC_VOCAB - 1 - r);
        uint32_t upto;

        cum += 1.0 / (r + 1) / harmonic;
        upto = (uint32_t)(cum * slots + 0.5);
        upto = SP_MAX(upto, next + 1);
        upto = SP_MIN(upto, limit);
        if (r == SP_WC_VOCAB - 1)
            upto = 1u << SP_WC_RANK_BITS;
        for (; next < upto; next++)
            sp_wc_gen.rank[next] = (uint16_t)r;
    }
}

/* Calls fn for the words of generated block [offset, offset+length). */
static sp_status_t sp_wc_generate(sp__wordcount_word_fn_t fn, void *arg, uint64_t seed,
                                  uint64_t offset, uint64_t length)
{
    uint64_t s = seed ^ (offset * 0xd1b54a32d192ed03ull), used = 0;

    pthread_once(&sp_wc_gen.once, sp_wc_gen_init);
    for (;;) {
        uint64_t x = sp_wc_mix(&s);
        uint32_t r = sp_wc_gen.rank[x & ((1u << SP_WC_RANK_BITS) - 1)];
        sp_status_t status;

        /* The word and its separator must fit; the rest of the block is padding. */
        if (used + sp_wc_gen.len[r] + 1 > length)
            break;
        if ((status = fn(arg, sp_wc_gen.word[r], sp_wc_gen.len[r])) != SP_OK)
            return status;
        used += sp_wc_gen.len[r] + 1u;
    }
    return SP_OK;
}

/* Word r of a uniform vocabulary whose words spell r over digits letters; its length. */
static size_t sp_wc_uniform_word(uint32_t r, unsigned digits, char *w)
{
    uint64_t h = 0x7a11 ^ ((uint64_t)r << 20);
    size_t n = 0, extra;

    for (uint32_t v = r; n < digits; v /= 26)
        w[n++] = (char)('a' + v % 26);
    h = sp_wc_mix(&h);
    extra = (size_t)(h % 5);
    for (size_t i = 0; i < extra; i++, h >>= 5)
        w[n++] = "etaoinshrdlucmfwypvbgkjqxz"[(h >> 3) % 26];
    return n;
}

/* Calls fn for the words of generated block [offset, offset+length) drawn uniformly from vocab. */
static sp_status_t sp_wc_generate_uniform(sp__wordcount_word_fn_t fn, void *arg, uint64_t seed,
                                          uint32_t vocab, uint64_t offset, uint64_t length)
{
    uint64_t s = seed ^ (offset * 0xd1b54a32d192ed03ull), used = 0;
    unsigned digits = 3;
    char w[SP_WC_UNIFORM_WORD];

    for (uint64_t span = 26 * 26 * 26; span < vocab; span *= 26)
        digits++;
    for (;;) {
        uint32_t r = (uint32_t)((sp_wc_mix(&s) >> 32) * vocab >> 32);
        size_t len = sp_wc_uniform_word(r, digits, w);
        sp_status_t status;

        if (used + len + 1 > length)
            break;
        if ((status = fn(arg, w, len)) != SP_OK)
            return status;
        used += len + 1;
    }
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Plan                                                                      */
/* ------------------------------------------------------------------------ */

static sp_status_t sp_wc_add_split(sp_job_plan_t *plan, size_t *cap, const char *path,
                                   uint64_t offset, uint64_t length)
{
    sp_job_split_t *s;

    if (plan->maps == UINT32_MAX)
        return SP_RAISE(SP_ERR_TOO_LARGE, "wordcount: more than %u splits", UINT32_MAX);
    if (plan->maps == *cap) {
        size_t n = *cap ? 2 * *cap : 64;
        sp_job_split_t *grown = realloc(plan->splits, n * sizeof(*grown));

        if (grown == NULL)
            return SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for %zu splits", n);
        plan->splits = grown;
        *cap = n;
    }
    s = &plan->splits[plan->maps];
    s->path = NULL;
    if (path != NULL && (s->path = strdup(path)) == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for a split's path");
    s->offset = offset;
    s->length = length;
    plan->maps++;
    return SP_OK;
}

static sp_status_t sp_wc_add_file(sp_job_plan_t *plan, size_t *cap, const char *path, uint64_t size,
                                  uint64_t split)
{
    sp_status_t status = SP_OK;

    for (uint64_t off = 0; off < size && status == SP_OK; off += split)
        status = sp_wc_add_split(plan, cap, path, off, SP_MIN(split, size - off));
    return status;
}

static int sp_wc_visible(const struct dirent *de)
{
    return de->d_name[0] != '.' && de->d_name[0] != '_';
}

static sp_status_t sp_wc_add_dir(sp_job_plan_t *plan, size_t *cap, const char *dir, uint64_t split)
{
    struct dirent **names;
    sp_status_t status = SP_OK;
    int n;

    n = scandir(dir, &names, sp_wc_visible, alphasort);
    if (n < 0)
        return SP_RAISE(SP_ERR_IO, "wordcount: cannot list %s: %s (errno %d)", dir, strerror(errno),
                        errno);
    for (int i = 0; i < n; i++) {
        char *path = NULL;
        struct stat st;

        if (status == SP_OK && asprintf(&path, "%s/%s", dir, names[i]->d_name) < 0) {
            path = NULL;
            status = SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for a path");
        }
        if (status == SP_OK && stat(path, &st) == 0 && S_ISREG(st.st_mode))
            status = sp_wc_add_file(plan, cap, path, (uint64_t)st.st_size, split);
        free(path);
        free(names[i]);
    }
    free(names);
    return status;
}

static sp_status_t sp_wc_u64_arg(const sp_job_params_t *params, const char *key, uint64_t dflt,
                                 bool size, uint64_t *value_p)
{
    const char *text = sp_job_arg(params, key);
    char *end;

    *value_p = dflt;
    if (text == NULL)
        return SP_OK;
    if (size) {
        if (sp_conf_parse_size(text, value_p) != SP_OK)
            return SP_RAISE(SP_ERR_INVALID_PARAM, "wordcount: --job-arg %s=%s is not a size", key,
                            text);
        return SP_OK;
    }
    errno = 0;
    *value_p = strtoull(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-')
        return SP_RAISE(SP_ERR_INVALID_PARAM, "wordcount: --job-arg %s=%s is not a number", key,
                        text);
    return SP_OK;
}

/* The vocabulary=N argument: *vocab_p 0 when absent (the Zipf vocabulary). */
static sp_status_t sp_wc_vocabulary(const sp_job_params_t *params, uint64_t *vocab_p)
{
    sp_status_t status = sp_wc_u64_arg(params, "vocabulary", 0, false, vocab_p);

    if (status == SP_OK && sp_job_arg(params, "vocabulary") != NULL &&
        (*vocab_p == 0 || *vocab_p > SP_WC_UNIFORM_MAX))
        status = SP_RAISE(SP_ERR_INVALID_PARAM,
                          "wordcount: --job-arg vocabulary=%s is out of range (1 .. %u words)",
                          sp_job_arg(params, "vocabulary"), SP_WC_UNIFORM_MAX);
    return status;
}

/*
 * The byte ranges (one source partition each) and the partition count.
 * Not static: tests/executor/test_jobs.c checks the split rule through it.
 */
sp_status_t sp__wordcount_plan(const sp_job_params_t *params, sp_job_plan_t *plan);
sp_status_t sp__wordcount_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    uint64_t split, vocab;
    struct stat st;
    size_t cap = 0;
    sp_status_t status;

    if (params->input == NULL && params->size == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "wordcount needs --input DIR (or --size BYTES for "
                                              "a generated text)");
    status = sp_wc_u64_arg(params, "split_size", SP_WC_SPLIT_BYTES, true, &split);
    if (status != SP_OK)
        return status;
    if (split == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "wordcount: split_size must be at least 1 byte");
    status = sp_wc_vocabulary(params, &vocab);
    if (status != SP_OK)
        return status;

    plan->maps = 0;
    plan->splits = NULL;
    if (params->input != NULL) {
        if (stat(params->input, &st) != 0)
            return SP_RAISE(errno == ENOENT ? SP_ERR_NOT_FOUND : SP_ERR_IO,
                            "wordcount: --input %s: %s (errno %d)", params->input, strerror(errno),
                            errno);
        if (S_ISDIR(st.st_mode))
            status = sp_wc_add_dir(plan, &cap, params->input, split);
        else
            status = sp_wc_add_file(plan, &cap, params->input, (uint64_t)st.st_size, split);
    } else {
        status = sp_wc_add_file(plan, &cap, NULL, params->size, split);
    }
    /* No bytes at all still runs one empty map task: the job then writes empty output. */
    if (status == SP_OK && plan->maps == 0)
        status = sp_wc_add_split(plan, &cap, NULL, 0, 0);
    if (status != SP_OK) {
        sp__job_plan_clear(plan);
        plan->maps = 0;
        return status;
    }
    plan->partitions = params->partitions ? params->partitions : SP_MAX(params->slots, 1u);
    plan->partitioning = SP_JOB_HASH;
    plan->key_ordering = true;
    plan->order = SP_READ_MERGE;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* The graph                                                                 */
/* ------------------------------------------------------------------------ */

/* What the source's tasks need: the plan's byte ranges and the generator's arguments. */
typedef struct sp_wc_state {
    sp_job_plan_t plan;
    const sp_job_params_t *params;
    uint64_t seed, vocab;
} sp_wc_state_t;

static void sp_wc_state_free(void *arg)
{
    sp_wc_state_t *w = arg;

    sp__job_plan_clear(&w->plan);
    sp__free(w);
}

typedef struct sp_wc_map {
    sp_emitter_t *out;
    uint64_t words;
} sp_wc_map_t;

static sp_status_t sp_wc_emit(void *arg, const void *word, size_t len)
{
    static const unsigned char one[8] = {1};
    sp_wc_map_t *m = arg;

    m->words++;
    return sp_emit(m->out, word, len, one, sizeof(one));
}

/* The source: partition p emits (word, u64 1) for every word of split p. */
static sp_status_t sp_wc_source(sp_emitter_t *out, uint32_t partition, uint32_t partitions,
                                void *arg)
{
    const sp_wc_state_t *w = arg;
    const sp_job_split_t *split = &w->plan.splits[partition];
    sp_wc_map_t m = {.out = out};
    uint64_t bytes = 0;
    sp_status_t status = SP_OK;

    SP_UNUSED(partitions);
    if (split->path != NULL) {
        status =
            sp__wordcount_scan(split->path, split->offset, split->length, sp_wc_emit, &m, &bytes);
    } else if (w->params->input == NULL && split->length > 0) {
        status = w->vocab > 0
                     ? sp_wc_generate_uniform(sp_wc_emit, &m, w->seed, (uint32_t)w->vocab,
                                              split->offset, split->length)
                     : sp_wc_generate(sp_wc_emit, &m, w->seed, split->offset, split->length);
        bytes = split->length;
    } /* else: the empty split of an empty input */
    if (status != SP_OK)
        return status;
    sp_emitter_counter_add(out, SP_WC_MAP_WORDS, m.words);
    sp_emitter_counter_add(out, SP_WC_INPUT_BYTES, bytes);
    return SP_OK;
}

/* (word, u64 count) -> (word, decimal count): saved as "word<TAB>count" lines. */
static sp_status_t sp_wc_format(sp_emitter_t *out, const void *key, size_t key_len,
                                const void *value, size_t value_len, void *arg)
{
    char digits[24];
    size_t n = sizeof(digits);
    uint64_t count, v;

    SP_UNUSED(arg);
    if (value_len != 8)
        return SP_RAISE(SP_ERR_BAD_FORMAT, "wordcount: a count of %zu bytes, not 8", value_len);
    count = v = sp__le_get_u64((const unsigned char *)value);
    do {
        digits[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    sp_emitter_counter_add(out, SP_WC_WORDS, count);
    sp_emitter_counter_add(out, SP_WC_DISTINCT, 1);
    return sp_emit(out, key, key_len, digits + n, sizeof(digits) - n);
}

static sp_status_t sp_wc_build(sp_graph_t *graph, const sp_job_params_t *params)
{
    sp_wc_state_t *w = sp__calloc(1, sizeof(*w));
    sp_dataset_t *words;
    sp_status_t status;

    if (w == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "wordcount: no memory for its state");
    w->params = params;
    if ((status = sp__wordcount_plan(params, &w->plan)) != SP_OK ||
        (params->input == NULL &&
         ((status = sp_wc_u64_arg(params, "seed", 0, false, &w->seed)) != SP_OK ||
          (status = sp_wc_vocabulary(params, &w->vocab)) != SP_OK))) {
        sp_wc_state_free(w);
        return status;
    }
    sp_graph_keep(graph, w, sp_wc_state_free);
    words = sp_graph_generate(graph, w->plan.maps, sp_wc_source, w);
    words = sp_ds_reduce_by_key(words, &sp_wc_combiner, w->plan.partitions);
    (void)sp_ds_save(sp_ds_map(words, sp_wc_format, NULL), SP_SAVE_TEXT);
    return sp_graph_status(graph);
}

static sp_status_t sp_wc_finish(const sp_graph_t *graph, const sp_job_params_t *params,
                                const sp_job_result_t *result, void *report)
{
    const uint64_t *c = result->counters;

    SP_UNUSED(graph);
    SP_UNUSED(params);
    if (report != NULL)
        fprintf(report,
                "wordcount: %" PRIu64 " words, %" PRIu64 " distinct, %" PRIu64
                " input bytes, %u output files\n",
                c[SP_WC_WORDS], c[SP_WC_DISTINCT], c[SP_WC_INPUT_BYTES], result->partitions);
    if (c[SP_WC_WORDS] != c[SP_WC_MAP_WORDS])
        return SP_RAISE(SP_ERR_INTERNAL,
                        "wordcount: the reduce side counted %" PRIu64
                        " words, the map side emitted %" PRIu64,
                        c[SP_WC_WORDS], c[SP_WC_MAP_WORDS]);
    return SP_OK;
}

const sp_job_t sp__job_wordcount = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "wordcount",
    .summary = "counts the words of --input DIR (or of a generated --size text: --job-arg seed=, "
               "vocabulary=), sorted by word",
    .build = sp_wc_build,
    .finish_graph = sp_wc_finish,
    .counter_names = {"words", "distinct words", "map words", "input bytes"},
};
