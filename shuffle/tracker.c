/*
 * The driver's map output tracker: for each registered shuffle, one slot per
 * map task holding a private copy of its committed output's status, or NULL
 * while the output is missing (not yet computed, or lost with its executor).
 *
 * Shuffles are kept in an array sorted by shuffle id and found by binary
 * search: a driver tracks tens to thousands of shuffles and looks them up
 * far more often than it registers them. One mutex guards everything; the
 * work done under it is a lookup plus a pointer swap, a scan of the slots,
 * or the building of a block list. Status copies, and the frees of single
 * replaced statuses, happen outside it; remove_executor, a rare event,
 * frees what it drops while holding it. Block lists are built under the
 * lock because they read statuses that a concurrent register_output or
 * remove_executor may free; a list owns its strings, so it stays valid
 * after the lock is dropped.
 */
#include "shuffle_int.h"

#include <pthread.h>
#include <string.h>

typedef struct sp_tracked_shuffle {
    uint64_t id;
    uint32_t maps;
    uint32_t partitions;
    sp_map_status_t **outputs; /* maps slots; NULL: missing */
} sp_tracked_shuffle_t;

struct sp_map_output_tracker {
    pthread_mutex_t lock;
    sp_tracked_shuffle_t *shuffles; /* sorted by id */
    size_t count, cap;
};

#define SP_TRACKER_MAX_PARTITIONS (UINT32_C(1) << 24)

/* Index of shuffle id, or where it would be inserted (with *found false). */
static size_t sp_tracker_find(const sp_map_output_tracker_t *t, uint64_t id, bool *found)
{
    size_t lo = 0, hi = t->count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (t->shuffles[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < t->count && t->shuffles[lo].id == id;
    return lo;
}

static sp_tracked_shuffle_t *sp_tracker_get(sp_map_output_tracker_t *t, uint64_t id)
{
    bool found;
    size_t i = sp_tracker_find(t, id, &found);

    return found ? &t->shuffles[i] : NULL;
}

static void sp_tracked_shuffle_clear(sp_tracked_shuffle_t *sh)
{
    for (uint32_t m = 0; m < sh->maps; m++)
        sp_map_status_destroy(sh->outputs[m]);
    sp__free(sh->outputs);
}

sp_status_t sp_map_output_tracker_create(sp_map_output_tracker_t **tracker_p)
{
    sp_map_output_tracker_t *t;
    int rc;

    if (tracker_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "sp_map_output_tracker_create: tracker_p is NULL");
    t = sp__calloc(1, sizeof(*t));
    if (t == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a map output tracker");
    rc = pthread_mutex_init(&t->lock, NULL);
    if (rc != 0) {
        sp__free(t);
        return SP_RAISE(SP_ERR_NO_RESOURCE, "map output tracker: pthread_mutex_init: %s (%d)",
                        strerror(rc), rc);
    }
    *tracker_p = t;
    return SP_OK;
}

void sp_map_output_tracker_destroy(sp_map_output_tracker_t *tracker)
{
    if (tracker == NULL)
        return;
    for (size_t i = 0; i < tracker->count; i++)
        sp_tracked_shuffle_clear(&tracker->shuffles[i]);
    sp__free(tracker->shuffles);
    pthread_mutex_destroy(&tracker->lock);
    sp__free(tracker);
}

sp_status_t sp_map_output_tracker_register_shuffle(sp_map_output_tracker_t *tracker,
                                                   uint64_t shuffle_id, uint32_t maps,
                                                   uint32_t partitions)
{
    sp_map_status_t **outputs;
    sp_status_t st = SP_OK;
    bool found;
    size_t i;

    if (tracker == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "register shuffle %llu: tracker is NULL",
                        (unsigned long long)shuffle_id);
    if (partitions == 0 || partitions > SP_TRACKER_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "register shuffle %llu: %u partitions, not in 1..%u",
                        (unsigned long long)shuffle_id, partitions, SP_TRACKER_MAX_PARTITIONS);
    /* Allocated before locking; at least one slot so that 0 maps is not a NULL array. */
    outputs = sp__calloc(maps > 0 ? maps : 1, sizeof(*outputs));
    if (outputs == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for the %u map slots of shuffle %llu", maps,
                        (unsigned long long)shuffle_id);

    pthread_mutex_lock(&tracker->lock);
    i = sp_tracker_find(tracker, shuffle_id, &found);
    if (found) {
        st = SP_RAISE(SP_ERR_EXISTS, "shuffle %llu is already registered",
                      (unsigned long long)shuffle_id);
        goto out_unlock;
    }
    if (tracker->count == tracker->cap) {
        size_t cap = tracker->cap > 0 ? 2 * tracker->cap : 8;
        sp_tracked_shuffle_t *grown = sp__realloc(tracker->shuffles, cap * sizeof(*grown));

        if (grown == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory to track %zu shuffles", cap);
            goto out_unlock;
        }
        tracker->shuffles = grown;
        tracker->cap = cap;
    }
    memmove(&tracker->shuffles[i + 1], &tracker->shuffles[i],
            (tracker->count - i) * sizeof(tracker->shuffles[0]));
    tracker->shuffles[i] = (sp_tracked_shuffle_t){
        .id = shuffle_id, .maps = maps, .partitions = partitions, .outputs = outputs};
    tracker->count++;
    outputs = NULL;
out_unlock:
    pthread_mutex_unlock(&tracker->lock);
    sp__free(outputs);
    return st;
}

void sp_map_output_tracker_unregister_shuffle(sp_map_output_tracker_t *tracker, uint64_t shuffle_id)
{
    sp_tracked_shuffle_t gone;
    bool found;
    size_t i;

    if (tracker == NULL)
        return;
    pthread_mutex_lock(&tracker->lock);
    i = sp_tracker_find(tracker, shuffle_id, &found);
    if (found) {
        gone = tracker->shuffles[i];
        memmove(&tracker->shuffles[i], &tracker->shuffles[i + 1],
                (tracker->count - i - 1) * sizeof(tracker->shuffles[0]));
        tracker->count--;
    }
    pthread_mutex_unlock(&tracker->lock);
    if (found)
        sp_tracked_shuffle_clear(&gone);
}

sp_status_t sp_map_output_tracker_register_output(sp_map_output_tracker_t *tracker,
                                                  const sp_map_status_t *status)
{
    sp_map_status_t *copy, *old = NULL;
    sp_tracked_shuffle_t *sh;
    sp_status_t st = SP_OK;

    if (tracker == NULL || status == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "register output: %s is NULL",
                        tracker == NULL ? "tracker" : "status");
    if (status->lengths == NULL || status->records == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "register output of shuffle %llu map %llu: the status has no %s",
                        (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                        status->lengths == NULL ? "lengths" : "records");
    /* Copy before locking: the copy is the expensive part. */
    st = sp_map_status_dup(status, &copy);
    if (st != SP_OK)
        return st;

    pthread_mutex_lock(&tracker->lock);
    sh = sp_tracker_get(tracker, status->shuffle_id);
    if (sh == NULL) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "register output of shuffle %llu map %llu: shuffle is not registered",
                      (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id);
    } else if (status->map_id >= sh->maps) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "register output of shuffle %llu map %llu: the shuffle has %u maps",
                      (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                      sh->maps);
    } else if (status->partitions != sh->partitions) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "register output of shuffle %llu map %llu: %u partitions, the shuffle has "
                      "%u",
                      (unsigned long long)status->shuffle_id, (unsigned long long)status->map_id,
                      status->partitions, sh->partitions);
    } else {
        old = sh->outputs[status->map_id];
        sh->outputs[status->map_id] = copy;
        copy = NULL;
    }
    pthread_mutex_unlock(&tracker->lock);
    sp_map_status_destroy(old);
    sp_map_status_destroy(copy);
    return st;
}

sp_status_t sp_map_output_tracker_unregister_output(sp_map_output_tracker_t *tracker,
                                                    uint64_t shuffle_id, uint64_t map_id)
{
    sp_map_status_t *old = NULL;
    sp_tracked_shuffle_t *sh;
    sp_status_t st = SP_OK;

    if (tracker == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "unregister output: tracker is NULL");
    pthread_mutex_lock(&tracker->lock);
    sh = sp_tracker_get(tracker, shuffle_id);
    if (sh == NULL) {
        st = SP_RAISE(SP_ERR_NOT_FOUND,
                      "unregister output of shuffle %llu map %llu: shuffle is not registered",
                      (unsigned long long)shuffle_id, (unsigned long long)map_id);
    } else if (map_id >= sh->maps) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "unregister output of shuffle %llu map %llu: the shuffle has %u maps",
                      (unsigned long long)shuffle_id, (unsigned long long)map_id, sh->maps);
    } else {
        /* Already missing is fine: a lost output may be reported more than once. */
        old = sh->outputs[map_id];
        sh->outputs[map_id] = NULL;
    }
    pthread_mutex_unlock(&tracker->lock);
    sp_map_status_destroy(old);
    return st;
}

size_t sp_map_output_tracker_remove_executor(sp_map_output_tracker_t *tracker, uint32_t executor_id)
{
    size_t dropped = 0;

    if (tracker == NULL)
        return 0;
    pthread_mutex_lock(&tracker->lock);
    for (size_t i = 0; i < tracker->count; i++) {
        sp_tracked_shuffle_t *sh = &tracker->shuffles[i];

        for (uint32_t m = 0; m < sh->maps; m++) {
            sp_map_status_t *s = sh->outputs[m];

            if (s != NULL && s->executor_id == executor_id) {
                sh->outputs[m] = NULL;
                sp_map_status_destroy(s);
                dropped++;
            }
        }
    }
    pthread_mutex_unlock(&tracker->lock);
    return dropped;
}

sp_status_t sp_map_output_tracker_missing(sp_map_output_tracker_t *tracker, uint64_t shuffle_id,
                                          uint64_t **map_ids_p, size_t *count_p)
{
    sp_tracked_shuffle_t *sh;
    uint64_t *ids = NULL;
    sp_status_t st = SP_OK;
    size_t n = 0;

    if (tracker == NULL || map_ids_p == NULL || count_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "missing outputs of shuffle %llu: %s is NULL",
                        (unsigned long long)shuffle_id,
                        tracker == NULL     ? "tracker"
                        : map_ids_p == NULL ? "map_ids_p"
                                            : "count_p");
    pthread_mutex_lock(&tracker->lock);
    sh = sp_tracker_get(tracker, shuffle_id);
    if (sh == NULL) {
        st = SP_RAISE(SP_ERR_NOT_FOUND, "missing outputs: shuffle %llu is not registered",
                      (unsigned long long)shuffle_id);
        goto out_unlock;
    }
    for (uint32_t m = 0; m < sh->maps; m++)
        n += sh->outputs[m] == NULL;
    if (n > 0) {
        size_t k = 0;

        ids = sp__malloc(n * sizeof(*ids));
        if (ids == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory to list %zu missing outputs of shuffle %llu", n,
                          (unsigned long long)shuffle_id);
            goto out_unlock;
        }
        for (uint32_t m = 0; m < sh->maps; m++)
            if (sh->outputs[m] == NULL)
                ids[k++] = m;
    }
    *map_ids_p = ids;
    *count_p = n;
out_unlock:
    pthread_mutex_unlock(&tracker->lock);
    return st;
}

sp_status_t sp_map_output_tracker_blocks(sp_map_output_tracker_t *tracker, uint64_t shuffle_id,
                                         uint32_t reduce_start, uint32_t reduce_end,
                                         uint32_t map_start, uint32_t map_end,
                                         sp_block_list_t **list_p)
{
    sp_tracked_shuffle_t *sh;
    sp_status_t st;

    if (tracker == NULL || list_p == NULL)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "blocks of shuffle %llu: %s is NULL",
                        (unsigned long long)shuffle_id, tracker == NULL ? "tracker" : "list_p");
    pthread_mutex_lock(&tracker->lock);
    sh = sp_tracker_get(tracker, shuffle_id);
    if (sh == NULL) {
        st = SP_RAISE(SP_ERR_NOT_FOUND, "blocks: shuffle %llu is not registered",
                      (unsigned long long)shuffle_id);
        goto out_unlock;
    }
    if (reduce_start > reduce_end || reduce_end > sh->partitions || map_start > map_end ||
        map_end > sh->maps) {
        st = SP_RAISE(SP_ERR_INVALID_PARAM,
                      "blocks of shuffle %llu: reduce range [%u, %u) or map range [%u, %u) is "
                      "not within its %u partitions and %u maps",
                      (unsigned long long)shuffle_id, reduce_start, reduce_end, map_start, map_end,
                      sh->partitions, sh->maps);
        goto out_unlock;
    }
    for (uint32_t m = map_start; m < map_end; m++) {
        if (sh->outputs[m] == NULL) {
            st = SP_RAISE(SP_ERR_FETCH_FAILED,
                          "shuffle %llu: no output registered for map %u (reduce partitions "
                          "[%u, %u))",
                          (unsigned long long)shuffle_id, m, reduce_start, reduce_end);
            goto out_unlock;
        }
    }
    /* The slots are the statuses in map order; the cast only adds const. */
    st = sp_block_list_from_statuses((const sp_map_status_t *const *)(sh->outputs + map_start),
                                     map_end - map_start, reduce_start, reduce_end, list_p);
out_unlock:
    pthread_mutex_unlock(&tracker->lock);
    return st;
}
