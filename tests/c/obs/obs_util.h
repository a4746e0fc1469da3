/*
 * obs_util.h - helpers shared by the observability tests (tests/c/obs):
 * an event collector, a gate a handler or subscriber can block on, a handler
 * scripted by the task context, and metrics read through the Prometheus
 * checker.  Public API only, like th.h, whose conventions these follow:
 * code running on library threads reports problems with th_problem().
 */
#ifndef TASKER_TEST_OBS_UTIL_H
#define TASKER_TEST_OBS_UTIL_H

#include <math.h>

#include "obs_prom.h"
#include "th.h"

/* ---- gate ------------------------------------------------------------------ */

/* Blocks whoever calls obs_gate_pass() while closed. */
typedef struct obs_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int closed;
    int waiting; /* threads blocked in obs_gate_pass right now */
    int passed;  /* calls of obs_gate_pass that returned */
} obs_gate;

void obs_gate_init(obs_gate *g, int closed);
void obs_gate_destroy(obs_gate *g);
void obs_gate_open(obs_gate *g);
void obs_gate_pass(obs_gate *g);
/* Waits (th_wait_ms()) until `n` threads are blocked at the gate; 1 if so. */
int obs_gate_wait_waiting(obs_gate *g, int n);
int obs_gate_waiting(obs_gate *g);

/* ---- event collector ----------------------------------------------------------- */

/* A copy of one delivered event. */
typedef struct obs_ev {
    unsigned version;
    uint32_t type;
    int64_t at;
    uint32_t attempt;
    char *task, *step_uuid, *ns, *tmpl, *step, *handler, *circuit, *cstate, *eclass, *emsg;
} obs_ev;

typedef struct obs_collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    obs_ev *ev;
    size_t n, cap;
    size_t calls;
    obs_gate *gate;        /* if not NULL, every callback first passes it */
    pthread_t thread;      /* the thread of the first callback */
    int have_thread;
    int other_thread;      /* a callback ran on a different thread */
    int freed;             /* free_userdata calls */
    size_t calls_at_free;  /* callbacks made before free_userdata ran */
} obs_collector;

void obs_collector_init(obs_collector *c, obs_gate *gate);
void obs_collector_destroy(obs_collector *c);
/* Forgets the collected events and counters (keeps the gate).  Only while
 * no subscription delivers to it. */
void obs_collector_reset(obs_collector *c);
/* The tasker_event_fn and the free_userdata for a collector. */
void obs_collect(const tasker_event *e, void *ud);
void obs_collector_freed(void *ud);
/* Events of `type` (0: any) for step `step` (NULL: any). */
size_t obs_count(obs_collector *c, uint32_t type, const char *step);
/* Index of the first event at or after `from` matching; -1 if none. */
long obs_find(obs_collector *c, uint32_t type, const char *step, size_t from);
/* Waits (th_wait_ms()) until obs_count(c, type, NULL) >= n; 1 if it did. */
int obs_wait_count(obs_collector *c, uint32_t type, size_t n);

/* Subscribes a collector; fails the test if refused. */
#define obs_subscribe(coord, mask, buf, col) \
    _obs_subscribe(__FILE__, __LINE__, (coord), (mask), (buf), (col))
tasker_subscription *_obs_subscribe(const char *file, int line, tasker_coordinator *coord,
                                    uint32_t mask, size_t buffer_events, obs_collector *col);

/* "step_failed" for TASKER_EVENT_STEP_FAILED, ... */
const char *obs_event_name(uint32_t type);

/* ---- a handler driven by the task's context -------------------------------------- */

/*
 * Context keys (all optional):
 *   "fail_until": N    attempts 1..N fail (default 0: succeed at once)
 *   "retryable": bool  the failures' retryable flag (default true)
 *   "class": "..."     their error class (default "ScriptedError")
 * A failure's message is "boom on attempt N".  Success has the result
 * {"attempt": N}.  `ud`, if not NULL, is a th_counter bumped on every call.
 */
int obs_scripted(tasker_step *step, void *ud);

/* ---- metrics -------------------------------------------------------------------- */

/* tasker_metrics_text parsed with prom_parse; fails the test (showing the
 * checker's complaint and the text) if the text is not valid. */
#define obs_metrics(coord, doc) _obs_metrics(__FILE__, __LINE__, (coord), (doc))
void _obs_metrics(const char *file, int line, tasker_coordinator *coord, prom_doc *doc);

/* tasker_health_json / tasker_status_json parsed; the caller decrefs. */
#define obs_health(coord) _obs_json(__FILE__, __LINE__, (coord), 0)
#define obs_status(coord) _obs_json(__FILE__, __LINE__, (coord), 1)
json_t *_obs_json(const char *file, int line, tasker_coordinator *coord, int status);

/* Asserts a metric value (NAN means the sample is missing). */
#define obs_assert_metric(value, expected) \
    _obs_assert_metric(__FILE__, __LINE__, #value, (value), (expected))
void _obs_assert_metric(const char *file, int line, const char *what, double value,
                        double expected);

/* CLOCK_REALTIME in nanoseconds, the clock of tasker_event.at_unix_ns. */
int64_t obs_real_ns(void);

/* The "uuid" of step `name` in a task's JSON. */
const char *obs_step_uuid(json_t *task, const char *name);

#endif
