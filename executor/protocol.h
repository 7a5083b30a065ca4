/*
 * The control protocol between the driver and its executors: message types
 * (on top of the channel's framing in control/ctl.h) and their payloads. Every
 * decoder checks each length and count against the bytes received and
 * answers SP_ERR_BAD_FORMAT naming the message and field; nothing read from
 * the wire is trusted. docs/FORMATS.md documents the layouts.
 *
 *   executor                         driver
 *   REGISTER {host, pid, name} ->
 *                              <-    JOB {id, job, params, conf, plan}
 *   READY {address, slots, ...} ->
 *                              <-    BOUNDS, TASK, MAP_OUTPUT, MAP_LOST, UNPERSIST
 *   RESULT, HEARTBEAT          ->
 *                              <-    PING (every heartbeat interval)
 *   FATAL {signal, task}       ->    (its crash handler, before it dies)
 *   OUTPUT_MOVED {status}      ->    (a map output evicted from memory to disk)
 *                              <-    SHUTDOWN
 *   BYE {peaks}                ->
 */
#ifndef SPATE_EXECUTOR_PROTOCOL_H
#define SPATE_EXECUTOR_PROTOCOL_H

#include "executor_int.h"

enum {
    SP_MSG_REGISTER = 16,
    SP_MSG_JOB = 17,
    SP_MSG_READY = 18,
    SP_MSG_BOUNDS = 19,
    SP_MSG_TASK = 20,
    SP_MSG_RESULT = 21,
    SP_MSG_MAP_OUTPUT = 22,
    SP_MSG_MAP_LOST = 23,
    SP_MSG_HEARTBEAT = 24,
    SP_MSG_SHUTDOWN = 25,
    SP_MSG_BYE = 26,
    SP_MSG_PING = 27,         /* driver -> executor, empty: the driver is alive */
    SP_MSG_FATAL = 28,        /* executor -> driver, from its fatal-signal handler */
    SP_MSG_OUTPUT_MOVED = 29, /* executor -> driver: a map output's status after eviction */
    SP_MSG_CANCEL = 30,       /* driver -> executor: give up a reduce task waiting for maps */
    SP_MSG_UNPERSIST = 31,    /* driver -> executor: drop a graph dataset's cached blocks */
};

/* Most cached blocks one RESULT names (one per persisted dataset of a task's pipeline). */
#define SP_MSG_MAX_CACHED 64u

/* Payload bytes of FATAL: signal u32, task id u64 (0: none); fixed, so a handler can fill it. */
#define SP_MSG_FATAL_LEN 12u

typedef enum sp__task_kind {
    SP_TASK_KIND_SAMPLE = 0,
    SP_TASK_KIND_MAP = 1,
    SP_TASK_KIND_REDUCE = 2,
} sp__task_kind_t;

typedef struct sp__msg_register {
    char host[256];
    uint32_t pid;
    char name[128]; /* given by whoever started it (a Mesos task id, a pod name); may be empty */
} sp__msg_register_t;

/* Everything an executor needs to run tasks of the job. Owns its strings. */
typedef struct sp__msg_job {
    uint32_t executor_id;
    uint64_t shuffle_id;
    char *app_id;
    char *job_name; /* built-in name or plugin path */
    char *input, *output;
    uint64_t size;
    uint32_t partitions, executors, slots;
    char **args;
    uint32_t nargs;
    char **conf_keys, **conf_values;
    uint32_t nconf;
    sp_job_plan_t plan;
} sp__msg_job_t;

typedef struct sp__msg_ready {
    char address[512]; /* transport address, hex; empty: none */
    uint32_t slots;
    uint64_t memory; /* executor memory (memory.executor) */
    uint32_t numa_node;
    char cpuset[256];
    uint64_t cpu_ns; /* the executor process's CPU time so far, every thread (ns) */
} sp__msg_ready_t;

typedef struct sp__msg_task {
    uint64_t task_id;
    uint8_t kind;
    uint32_t index; /* map id or partition */
    uint32_t attempt;
    uint32_t sample_count;
    uint32_t stage; /* graph jobs: the graph's stage (executor/graph_int.h); 0 otherwise */
} sp__msg_task_t;

typedef struct sp__msg_result {
    uint64_t task_id;
    uint8_t kind;
    uint32_t index;
    uint32_t attempt;
    int32_t status; /* sp_status_t */
    char message[1024];
    uint64_t failed_map; /* reduce fetch failure: UINT64_MAX when unknown */
    sp__task_metrics_t metrics;
    uint64_t cpu_ns;     /* the executor process's CPU time so far, every thread (ns) */
    const void *payload; /* map: serialized status; sample: packed keys (points into the message) */
    size_t payload_len;  /* graph action: its count or collected records */
    uint32_t stage;      /* graph jobs: the task's stage */
    uint32_t shuffle;    /* graph fetch failure: the shuffle (graph index); UINT32_MAX: none */
    uint32_t ncached;    /* graph jobs: datasets whose partition the task put in the block store */
    uint32_t cached[SP_MSG_MAX_CACHED];
} sp__msg_result_t;

typedef struct sp__msg_heartbeat {
    uint64_t execution_used; /* execution memory held now */
    uint64_t peak_rss;       /* process high-water mark (VmHWM), mapped files included */
    uint64_t peak_anon;      /* highest anonymous resident memory sampled (RssAnon) */
    uint32_t running;
    uint64_t cpu_ns;       /* the executor process's CPU time so far, every thread (ns) */
    uint64_t peak_storage; /* highest storage memory held (map outputs, cached blocks) */
} sp__msg_heartbeat_t;

typedef struct sp__msg_fatal {
    uint32_t signal;  /* that ends the executor */
    uint64_t task_id; /* the task whose thread took it; 0: none */
} sp__msg_fatal_t;

/* CANCEL: the task (its id) that is to give up while it waits for map outputs. */
typedef struct sp__msg_cancel {
    uint64_t task_id;
} sp__msg_cancel_t;

typedef struct sp__msg_map_lost {
    uint64_t shuffle_id;
    uint64_t map_id;
    uint32_t executor_id;
} sp__msg_map_lost_t;

/* Encoders return a malloc'ed payload in *buf_p, *len_p bytes. */
sp_status_t sp__msg_register_encode(const sp__msg_register_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_register_decode(const void *buf, size_t len, sp__msg_register_t *m);
sp_status_t sp__msg_job_encode(const sp__msg_job_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_job_decode(const void *buf, size_t len, sp__msg_job_t *m);
void sp__msg_job_clear(sp__msg_job_t *m);
sp_status_t sp__msg_ready_encode(const sp__msg_ready_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_ready_decode(const void *buf, size_t len, sp__msg_ready_t *m);
sp_status_t sp__msg_task_encode(const sp__msg_task_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_task_decode(const void *buf, size_t len, sp__msg_task_t *m);
sp_status_t sp__msg_result_encode(const sp__msg_result_t *m, void **buf_p, size_t *len_p);
/* payload points into buf. */
sp_status_t sp__msg_result_decode(const void *buf, size_t len, sp__msg_result_t *m);
sp_status_t sp__msg_heartbeat_encode(const sp__msg_heartbeat_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_heartbeat_decode(const void *buf, size_t len, sp__msg_heartbeat_t *m);
sp_status_t sp__msg_fatal_encode(const sp__msg_fatal_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_fatal_decode(const void *buf, size_t len, sp__msg_fatal_t *m);
sp_status_t sp__msg_map_lost_encode(const sp__msg_map_lost_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_map_lost_decode(const void *buf, size_t len, sp__msg_map_lost_t *m);
sp_status_t sp__msg_cancel_encode(const sp__msg_cancel_t *m, void **buf_p, size_t *len_p);
sp_status_t sp__msg_cancel_decode(const void *buf, size_t len, sp__msg_cancel_t *m);
/*
 * BOUNDS: the range bounds of a shuffle (0 for a two-stage job's, the graph's
 * index otherwise), the packed (u32 length, bytes) key list.
 */
sp_status_t sp__msg_bounds_encode(uint32_t shuffle, const sp_key_t *keys, uint32_t count,
                                  void **buf_p, size_t *len_p);
/* keys point into buf; *keys_p is malloc'ed. */
sp_status_t sp__msg_bounds_decode(const void *buf, size_t len, uint32_t *shuffle_p,
                                  sp_key_t **keys_p, uint32_t *count_p);
/* UNPERSIST: a graph dataset's id. */
sp_status_t sp__msg_unpersist_encode(uint32_t dataset, void **buf_p, size_t *len_p);
sp_status_t sp__msg_unpersist_decode(const void *buf, size_t len, uint32_t *dataset_p);

#endif /* SPATE_EXECUTOR_PROTOCOL_H */
