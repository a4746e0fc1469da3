/*
 * th.h - shared helpers for tasker's C tests.
 *
 * Everything here goes through the public API only.  Helpers that assert do
 * so with the caller's file and line (they are macros around _th_* functions)
 * so a failure points at the test, not at this file.
 *
 * cmocka's assertions longjmp to the test runner, which is only safe on the
 * thread running the test.  Handlers run on worker threads, so they report
 * what went wrong with th_problem() and the test checks th_assert_no_problems()
 * on its own thread.
 */
#ifndef TASKER_TEST_TH_H
#define TASKER_TEST_TH_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>

#include "tasker.h"

/*
 * How long a test waits for something that should happen "soon".  Waits end
 * as soon as the thing happens, so a generous value costs nothing when the
 * library works; it only has to outlast a loaded 2-core machine running the
 * suite under valgrind.  TH_WAIT_MS overrides it.
 */
int th_wait_ms(void);

/* Monotonic clock in milliseconds (fractional). */
double th_now_ms(void);
void th_sleep_ms(unsigned ms);

/* ---- coordinators ------------------------------------------------------ */

/* Opens a coordinator; the variadic part is key, value pairs ended by NULL. */
#define th_open(...) _th_open(__FILE__, __LINE__, __VA_ARGS__)
tasker_coordinator *_th_open(const char *file, int line, const char *key, ...);

/* Registers template JSON; fails the test (printing the error) if refused. */
#define th_register(coord, json) _th_register(__FILE__, __LINE__, (coord), (json))
void _th_register(const char *file, int line, tasker_coordinator *coord, const char *json);

/* Registers handler `name` with a callback (NULL: poll mode). */
#define th_handler(coord, name, fn, ud) _th_handler(__FILE__, __LINE__, (coord), (name), (fn), (ud))
void _th_handler(const char *file, int line, tasker_coordinator *coord, const char *name,
                 tasker_handler_fn fn, void *ud);

/* Creates a task of ns/name (highest version) with context (NULL: {}). */
#define th_create(uuid, coord, ns, name, ctx) \
    _th_create(__FILE__, __LINE__, (uuid), (coord), (ns), (name), (ctx), NULL)
#define th_create_key(uuid, coord, ns, name, ctx, key) \
    _th_create(__FILE__, __LINE__, (uuid), (coord), (ns), (name), (ctx), (key))
void _th_create(const char *file, int line, char uuid[TASKER_UUID_BUFSIZE],
                tasker_coordinator *coord, const char *ns, const char *name, const char *ctx,
                const char *key);

/* Waits (th_wait_ms()) for the task to become final; returns the state. */
#define th_wait_final(coord, uuid) _th_wait_final(__FILE__, __LINE__, (coord), (uuid))
tasker_task_state _th_wait_final(const char *file, int line, tasker_coordinator *coord,
                                 const char *uuid);

/* Current state without waiting. */
tasker_task_state th_task_state(tasker_coordinator *coord, const char *uuid);

/* ---- task JSON ----------------------------------------------------------- */

/* tasker_task_get parsed with jansson; the caller json_decref()s it. */
#define th_task(coord, uuid) _th_task(__FILE__, __LINE__, (coord), (uuid))
json_t *_th_task(const char *file, int line, tasker_coordinator *coord, const char *uuid);

/* The step object named `name` in a task's "steps" (fails the test if absent). */
#define th_step(task, name) _th_step(__FILE__, __LINE__, (task), (name))
json_t *_th_step(const char *file, int line, json_t *task, const char *name);

/* Shorthands for a step's "state" and "attempts". */
const char *th_step_state(json_t *task, const char *name);
int th_step_attempts(json_t *task, const char *name);

/*
 * Counts transitions in the task's history matching the given fields; NULL
 * (or -1 for attempt) matches anything.  `step` "" matches task-level entries
 * (step null).
 */
size_t th_count_transitions(json_t *task, const char *step, const char *from, const char *to,
                            const char *reason, int attempt);

/* The sequence of "to" states of one step's transitions joined with ','
 * (task-level with step ""), e.g. "enqueued,in_progress,complete". */
char *th_transition_path(json_t *task, const char *step);

/* ---- errors ---------------------------------------------------------------- */

/* Asserts the thread's last error has `code` and, if `reason` is not NULL,
 * context {"reason": reason}. */
#define th_assert_error(code, reason) _th_assert_error(__FILE__, __LINE__, (code), (reason))
void _th_assert_error(const char *file, int line, int code, const char *reason);

/* The last error's context parsed (caller decrefs); never NULL. */
json_t *th_error_context(void);

/* Asserts rc == TASKER_OK, printing the last error if not. */
#define th_ok(expr) _th_ok(__FILE__, __LINE__, #expr, (expr))
void _th_ok(const char *file, int line, const char *what, int rc);

/* ---- problems reported from other threads ----------------------------------- */

void th_problem(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
#define th_assert_no_problems() _th_assert_no_problems(__FILE__, __LINE__)
void _th_assert_no_problems(const char *file, int line);

/* ---- execution order recorder -------------------------------------------------- */

/*
 * Records "start" and "done" events of steps in the order they happen, across
 * threads, so a test can check that no step started before each of its
 * dependencies was done.
 */
typedef struct th_event {
    char task[TASKER_UUID_BUFSIZE];
    char *step;
    int done; /* 0: handler started, 1: handler about to report success */
    unsigned attempt;
} th_event;

typedef struct th_recorder {
    pthread_mutex_t mu;
    th_event *ev;
    size_t n, cap;
    int in_handler; /* handlers running right now */
    int max_in_handler;
} th_recorder;

void th_recorder_init(th_recorder *r);
void th_recorder_destroy(th_recorder *r);
void th_record(th_recorder *r, const tasker_step *step, int done);
/* Index of the first event matching; -1 when none. */
long th_recorder_find(th_recorder *r, const char *task, const char *step, int done);
size_t th_recorder_count(th_recorder *r, const char *task, const char *step, int done);

/* ---- ready-made handlers ------------------------------------------------------- */

/* Succeeds at once with result null. */
int th_handler_noop(tasker_step *step, void *ud);

/*
 * The "node" handler used by the shape tests (userdata: th_recorder *).  Its
 * result is {"step": name, "v": 1 + sum of the dependencies' "v"}, read through
 * tasker_step_dependency_result, so a test can check that every result reached
 * its dependents.
 */
int th_handler_node(tasker_step *step, void *ud);

/* A counter a handler can bump from any thread. */
typedef struct th_counter {
    pthread_mutex_t mu;
    long n;
} th_counter;
void th_counter_init(th_counter *c);
void th_counter_add(th_counter *c, long d);
long th_counter_get(th_counter *c);
int th_handler_count(tasker_step *step, void *ud); /* counts, succeeds with null */

/* ---- poll mode ------------------------------------------------------------------ */

/* poll()s the coordinator's fd; returns 1 readable, 0 timed out. */
int th_fd_readable(tasker_coordinator *coord, int timeout_ms);

/*
 * Waits (th_wait_ms()) until a claim returns at least one step and returns it;
 * fails the test if none comes.
 */
#define th_claim_one(coord) _th_claim_one(__FILE__, __LINE__, (coord))
tasker_step *_th_claim_one(const char *file, int line, tasker_coordinator *coord);

/* A template JSON string built from a printf format (caller frees). */
char *th_fmt(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#endif
