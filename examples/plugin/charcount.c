/*
 * charcount — an example job plugin: counts the bytes of a text by
 * character class (letters, digits, whitespace, punctuation, other; ASCII
 * classes, every byte >= 0x80 is "other").
 *
 *   spate run ./libspate_example_plugin.so --input DIR [--output OUT]
 *
 * plan()    splits every regular file of DIR (or the file INPUT) into byte
 *           ranges of 16 MiB, one map task each. Bytes have no boundaries to
 *           respect, so the ranges need no care at their ends.
 * map()     reads its range in 1 MiB chunks and emits, per chunk, one record
 *           per class: (class name, u64 little-endian count).
 * combiner  sums the counts of a class, so each map task's output holds at
 *           most one record per class whatever its size, and the reduce side
 *           aggregates with the same function (SP_READ_AGGREGATE).
 * reduce()  gets one record per class, writes "class<TAB>count" to its
 *           output and adds the count to the class's counter, which finish()
 *           prints.
 *
 * A plugin includes only <spate/spate.h> and links nothing: the functions it
 * calls (sp_job_emit, sp_job_write, ...) come from the process that loads it,
 * the spate executable or an application linked with libspate.so. See
 * README.md beside this file.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* pread, strdup */
#endif
#include <spate/spate.h>

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CC_SPLIT_BYTES (16u << 20)
#define CC_CHUNK_BYTES (1u << 20)

enum { CC_LETTER, CC_DIGIT, CC_SPACE, CC_PUNCT, CC_OTHER, CC_CLASSES };

static const char *const cc_class_names[CC_CLASSES] = {"letters", "digits", "whitespace",
                                                       "punctuation", "other"};

static unsigned cc_class(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return CC_LETTER;
    if (c >= '0' && c <= '9')
        return CC_DIGIT;
    if (c == ' ' || (c >= '\t' && c <= '\r'))
        return CC_SPACE;
    if (c >= '!' && c <= '~')
        return CC_PUNCT;
    return CC_OTHER;
}

static uint64_t cc_load_u64(const void *p)
{
    const unsigned char *b = p;
    uint64_t v = 0;

    for (unsigned i = 0; i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

static void cc_store_u64(void *p, uint64_t v)
{
    unsigned char *b = p;

    for (unsigned i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* The combiner: the sum of two u64 little-endian counts. */
static size_t cc_sum(void *arg, const void *key, size_t key_len, const void *a, size_t a_len,
                     const void *b, size_t b_len, void *out, size_t cap)
{
    (void)arg;
    (void)key;
    (void)key_len;
    if (cap >= 8)
        cc_store_u64(out, (a_len == 8 ? cc_load_u64(a) : 0) + (b_len == 8 ? cc_load_u64(b) : 0));
    return 8;
}

static const sp_combiner_t cc_combiner = {.combine = cc_sum, .arg = NULL};

/* Appends the byte ranges of one file to plan->splits. */
static sp_status_t cc_add_file(sp_job_plan_t *plan, size_t *cap, const char *path, uint64_t size)
{
    for (uint64_t off = 0; off < size; off += CC_SPLIT_BYTES) {
        if (plan->maps == *cap) {
            size_t n = *cap ? 2 * *cap : 16;
            sp_job_split_t *grown = realloc(plan->splits, n * sizeof(*grown));

            if (grown == NULL)
                return SP_ERR_NOMEM;
            plan->splits = grown;
            *cap = n;
        }
        sp_job_split_t *s = &plan->splits[plan->maps];
        s->path = strdup(path);
        if (s->path == NULL)
            return SP_ERR_NOMEM;
        s->offset = off;
        s->length = size - off < CC_SPLIT_BYTES ? size - off : CC_SPLIT_BYTES;
        plan->maps++;
    }
    return SP_OK;
}

static sp_status_t cc_plan(const sp_job_params_t *params, sp_job_plan_t *plan)
{
    struct dirent *de;
    struct stat st;
    size_t cap = 0;
    sp_status_t status = SP_OK;
    DIR *dir;

    if (params->input == NULL || stat(params->input, &st) != 0) {
        fprintf(stderr, "charcount: needs --input DIR or FILE\n");
        return SP_ERR_INVALID_PARAM;
    }
    if (S_ISREG(st.st_mode)) {
        status = cc_add_file(plan, &cap, params->input, (uint64_t)st.st_size);
    } else if ((dir = opendir(params->input)) != NULL) {
        while (status == SP_OK && (de = readdir(dir)) != NULL) {
            char path[4096];

            if (de->d_name[0] == '.' || de->d_name[0] == '_')
                continue;
            snprintf(path, sizeof(path), "%s/%s", params->input, de->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
                status = cc_add_file(plan, &cap, path, (uint64_t)st.st_size);
        }
        closedir(dir);
    } else {
        status = SP_ERR_NOT_FOUND;
    }
    /* Even an empty input runs one (empty) map task. */
    if (status == SP_OK && plan->maps == 0) {
        plan->splits = calloc(1, sizeof(*plan->splits));
        status = plan->splits != NULL ? SP_OK : SP_ERR_NOMEM;
        plan->maps = plan->splits != NULL ? 1 : 0;
    }
    plan->partitions = 1;
    plan->partitioning = SP_JOB_HASH;
    plan->order = SP_READ_AGGREGATE;
    /*
     * Not needed for aggregation, and free with at most five records per
     * map task; it keeps the writer off its bypass path, which in this spate
     * does not combine (a map with a combiner and few partitions crashes).
     */
    plan->key_ordering = true;
    if (status != SP_OK) {
        /* A failed plan leaves nothing behind. */
        for (uint32_t i = 0; i < plan->maps; i++)
            free(plan->splits[i].path);
        free(plan->splits);
        plan->splits = NULL;
        plan->maps = 0;
        fprintf(stderr, "charcount: cannot plan the input %s\n", params->input);
    }
    return status;
}

static sp_status_t cc_map(sp_job_task_t *task, const sp_job_split_t *split)
{
    unsigned char *buf;
    sp_status_t status = SP_OK;
    int fd;

    if (split->path == NULL || split->length == 0)
        return SP_OK;
    fd = open(split->path, O_RDONLY);
    if (fd < 0)
        return SP_ERR_IO;
    buf = malloc(CC_CHUNK_BYTES);
    if (buf == NULL) {
        close(fd);
        return SP_ERR_NOMEM;
    }
    for (uint64_t done = 0; status == SP_OK && done < split->length;) {
        uint64_t counts[CC_CLASSES] = {0};
        uint64_t want =
            split->length - done < CC_CHUNK_BYTES ? split->length - done : CC_CHUNK_BYTES;
        ssize_t n = pread(fd, buf, (size_t)want, (off_t)(split->offset + done));

        if (n <= 0) {
            status = SP_ERR_IO; /* an error, or the file shrank under us */
            break;
        }
        for (ssize_t i = 0; i < n; i++)
            counts[cc_class(buf[i])]++;
        for (unsigned c = 0; status == SP_OK && c < CC_CLASSES; c++) {
            unsigned char value[8];

            if (counts[c] == 0)
                continue;
            cc_store_u64(value, counts[c]);
            status = sp_job_emit(task, cc_class_names[c], strlen(cc_class_names[c]), value, 8);
        }
        done += (uint64_t)n;
    }
    free(buf);
    close(fd);
    return status;
}

static sp_status_t cc_reduce(sp_job_task_t *task, const void *key, size_t key_len,
                             const void *value, size_t value_len)
{
    char line[64];
    uint64_t count;
    int n;

    if (value_len != 8)
        return SP_ERR_BAD_FORMAT;
    count = cc_load_u64(value);
    for (unsigned c = 0; c < CC_CLASSES; c++)
        if (strlen(cc_class_names[c]) == key_len && memcmp(cc_class_names[c], key, key_len) == 0)
            sp_job_counter_add(task, c, count);
    n = snprintf(line, sizeof(line), "%.*s\t%" PRIu64 "\n", (int)key_len, (const char *)key, count);
    return sp_job_write(task, line, (size_t)n);
}

static sp_status_t cc_finish(const sp_job_params_t *params, const sp_job_result_t *result,
                             void *report)
{
    (void)params;
    if (report == NULL)
        return SP_OK;
    for (unsigned c = 0; c < CC_CLASSES; c++)
        fprintf(report, "charcount: %-12s %" PRIu64 "\n", cc_class_names[c], result->counters[c]);
    return SP_OK;
}

static const sp_job_t charcount_job = {
    .abi_version = SP_JOB_ABI_VERSION,
    .size = sizeof(sp_job_t),
    .name = "charcount",
    .summary = "example plugin: bytes of the input per character class",
    .plan = cc_plan,
    .map = cc_map,
    .combiner = &cc_combiner,
    .reduce = cc_reduce,
    .finish = cc_finish,
    .counter_names = {"letters", "digits", "whitespace", "punctuation", "other"},
};

SP_JOB_EXPORT(charcount_job)
