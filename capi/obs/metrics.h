/* Counters and latency histograms, updated under the coordinator's lock. */
#ifndef TASKER_OBS_METRICS_H
#define TASKER_OBS_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "core/hash.h"

#define TK_HIST_BUCKETS 14

typedef struct tk_hist {
    uint64_t counts[TK_HIST_BUCKETS + 1]; /* the last one is +Inf */
    uint64_t n;
    int64_t sum_ns;
} tk_hist;

void tk_hist_add(tk_hist *h, int64_t ns);

typedef struct tk_handler_metrics {
    uint64_t started, succeeded, failed, timed_out, retried, dead_lettered;
    tk_hist queue_wait, duration;
} tk_handler_metrics;

/* What a namespace has: its counters, queue depth and its circuit. */
typedef struct tk_nsobj {
    char *name;
    uint64_t created, completed, failed, cancelled;
    size_t depth;
    tk_hist task_duration;
    struct tk_breaker *breaker;
    UT_hash_handle hh;
} tk_nsobj;

struct tasker_coordinator;
struct tk_step;
struct tk_task;

/* Hooks from the store, lock held.  `from` and `to` are state values. */
void tk_obs_step(struct tasker_coordinator *c, struct tk_step *s, uint8_t from, uint8_t to,
                 int64_t now, int reason);
void tk_obs_task(struct tasker_coordinator *c, struct tk_task *t, uint8_t to, int64_t now);
void tk_obs_task_created(struct tasker_coordinator *c, struct tk_task *t, int64_t now);

/* Finds or makes the namespace object (lock held); NULL when out of memory. */
tk_nsobj *tk_nsobj_get(struct tasker_coordinator *c, const char *name);
void tk_nsobj_free_all(struct tasker_coordinator *c);

#endif
