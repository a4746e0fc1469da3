/* Counters and latency histograms, updated under the coordinator's lock
 * (plain, exact counts: the lock is held for the state change anyway). */
#ifndef TASKER_OBS_METRICS_H
#define TASKER_OBS_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "core/hash.h"

#define TK_HIST_BUCKETS 14

/* The sample count is the sum of the buckets, added up when the metrics
 * are read rather than kept per sample. */
typedef struct tk_hist {
    uint64_t counts[TK_HIST_BUCKETS + 1]; /* the last one is +Inf */
    int64_t sum_ns;
} tk_hist;

void tk_hist_add(tk_hist *h, int64_t ns);
/* Index in counts[] of a sample of `ns` nanoseconds (the first bucket whose
 * upper bound is >= ns; TK_HIST_BUCKETS for +Inf). */
int tk_hist_bucket(int64_t ns);

extern const int64_t tk_hist_bounds_ns[TK_HIST_BUCKETS];
/* For a sample of bit length L (1 + floor(log2 ns), 0 for 0): the first
 * bucket whose bound is at least 2^(L-1). */
extern const uint8_t tk_hist_first_bucket[65];

/* No two bounds share a power-of-two interval, so after the table one more
 * compare finds the bucket (test_obs_internal checks it against the plain
 * linear search). */
static inline int tk_hist_bucket_inline(int64_t ns)
{
    if (ns <= 0)
        return 0;
#if defined(__GNUC__)
    int i = tk_hist_first_bucket[64 - __builtin_clzll((unsigned long long)ns)];
    if (i < TK_HIST_BUCKETS && ns > tk_hist_bounds_ns[i])
        i++;
#else
    int i = 0;
    while (i < TK_HIST_BUCKETS && ns > tk_hist_bounds_ns[i])
        i++;
#endif
    return i;
}

static inline void tk_hist_add_inline(tk_hist *h, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    h->counts[tk_hist_bucket_inline(ns)]++;
    h->sum_ns += ns;
}

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

/* Hooks from the memory store, lock held (obs/hot.h has the inline fast
 * paths; these are their out-of-line parts).  `from` and `to` are state
 * values. */
void tk_obs_step_slow(struct tasker_coordinator *c, struct tk_step *s, uint8_t from, uint8_t to,
                      int64_t now, int reason);
void tk_obs_task_slow(struct tasker_coordinator *c, struct tk_task *t, uint8_t to, int64_t now);
/* Writes one task or step event to every subscriber whose mask has it. */
void tk_obs_emit(struct tasker_coordinator *c, uint32_t type, const struct tk_task *t,
                 const struct tk_step *s, int64_t now);

/* Finds or makes the namespace object (lock held); NULL when out of memory. */
tk_nsobj *tk_nsobj_get(struct tasker_coordinator *c, const char *name);
void tk_nsobj_free_all(struct tasker_coordinator *c);

#endif
