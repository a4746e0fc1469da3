/*
 * tasker.h - the public C API of tasker, a workflow orchestration core.
 *
 * A *template* names steps and their dependencies.  A *task* is one run of a
 * template with a JSON context.  A *handler* is a function registered under a
 * name that does one step's work.  A *coordinator* owns a store, the
 * registered templates and handlers, and the worker threads.
 *
 * Conventions used by every call below:
 *
 *  - Fallible calls return int: TASKER_OK (0) or a negative TASKER_E* code.
 *    On failure the calling thread's last error (tasker_error_last()) holds a
 *    structured description.  A successful call does not clear it unless its
 *    comment says so.
 *  - Out-parameters come first, inputs after.
 *  - Strings are NUL-terminated UTF-8.  JSON payloads are pointer + length;
 *    a length of 0 with a non-NULL pointer means "use strlen()".
 *  - Memory the library hands out for the caller to own is released with
 *    tasker_free().  The library never frees a caller's pointer unless the
 *    caller passed a destructor for it.
 *  - NULL or otherwise invalid arguments return TASKER_EINVAL; no call
 *    aborts or crashes on bad arguments.
 *  - "Thread-safe" means the call may run concurrently with any other call on
 *    the same coordinator from any thread.
 *
 * Linux only for now (the poll-mode descriptor is an epoll fd).
 */
#ifndef TASKER_H
#define TASKER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TASKER_BUILDING_LIBRARY) && defined(__GNUC__)
#define TASKER_API __attribute__((visibility("default")))
#else
#define TASKER_API
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                 */
/* ------------------------------------------------------------------------ */

#define TASKER_VERSION_MAJOR 0
#define TASKER_VERSION_MINOR 1
#define TASKER_VERSION_PATCH 0
#define TASKER_VERSION_STRING "0.1.0"

/*
 * The ABI number.  It changes whenever a binary built against an older header
 * could misbehave with this library.  Bindings pass the number they were built
 * against to tasker_abi_check() at load time.
 */
#define TASKER_ABI_VERSION 1

/* The library's version string, e.g. "0.1.0".  Static storage; thread-safe. */
TASKER_API const char *tasker_version(void);

/* The library's ABI number (TASKER_ABI_VERSION of the build).  Thread-safe. */
TASKER_API int tasker_abi_version(void);

/*
 * Checks that a binding built against ABI `binding_abi` can use this library.
 * Returns TASKER_OK, or TASKER_EVERSION with a last error whose message names
 * both numbers and says how to rebuild.  Thread-safe.
 */
TASKER_API int tasker_abi_check(int binding_abi);

/* ------------------------------------------------------------------------ */
/* Status codes and errors                                                  */
/* ------------------------------------------------------------------------ */

#define TASKER_OK 0
#define TASKER_EINVAL (-1)     /* an argument is NULL, out of range or malformed */
#define TASKER_ENOMEM (-2)     /* an allocation failed; nothing was changed */
#define TASKER_ENOTFOUND (-3)  /* no such task, template, step or key */
#define TASKER_EEXIST (-4)     /* already registered with different content */
#define TASKER_ESTATE (-5)     /* illegal state transition (e.g. completed twice) */
#define TASKER_ETEMPLATE (-6)  /* template rejected (see the last error's context) */
#define TASKER_ETIMEOUT (-7)   /* a wait ran out of time */
#define TASKER_ECLOSED (-8)    /* the coordinator is closed or stopping */
#define TASKER_ESTALE (-9)     /* the step's lease was lost; completion refused */
#define TASKER_EVERSION (-10)  /* ABI mismatch between binding and library */
#define TASKER_EHANDLER (-11)  /* no handler registered under that name */
#define TASKER_ECONFIG (-12)   /* bad configuration key or value */
#define TASKER_EDATABASE (-13) /* the store's database failed */
#define TASKER_EBUSY (-14)     /* the resource is in use (e.g. already started) */
#define TASKER_ENOTSUP (-15)   /* not supported by this store or build */
#define TASKER_EINTERNAL (-16) /* a bug in tasker; please report it */
#define TASKER_EIO (-17)       /* an operating-system call failed */

/*
 * Short name of a status code ("TASKER_EINVAL: invalid argument").  Static
 * storage; unknown codes give "unknown tasker status".  Thread-safe.
 */
TASKER_API const char *tasker_strerror(int code);

typedef enum tasker_error_category {
    TASKER_CATEGORY_NONE = 0,
    TASKER_CATEGORY_ARGUMENT = 1, /* the caller passed something invalid */
    TASKER_CATEGORY_CONFIG = 2,
    TASKER_CATEGORY_TEMPLATE = 3,
    TASKER_CATEGORY_STATE = 4,
    TASKER_CATEGORY_DATABASE = 5,
    TASKER_CATEGORY_QUEUE = 6,
    TASKER_CATEGORY_HANDLER = 7,
    TASKER_CATEGORY_NETWORK = 8,
    TASKER_CATEGORY_INTERNAL = 9
} tasker_error_category;

/* Name of a category ("argument", "template", ...).  Static storage. */
TASKER_API const char *tasker_error_category_name(tasker_error_category category);

#define TASKER_ERROR_VERSION 1

/* The structured description of a failed call.  Owned by the library. */
typedef struct tasker_error {
    unsigned version;              /* TASKER_ERROR_VERSION */
    int code;                      /* a TASKER_E* code, or TASKER_OK */
    tasker_error_category category;
    const char *message;           /* human-readable, never NULL */
    const char *context_json;      /* JSON object with details, never NULL ("{}") */
} tasker_error;

/*
 * The calling OS thread's last error.  Never NULL: with no error recorded it
 * has code TASKER_OK.  The pointer and its strings stay valid until the next
 * tasker call on the same thread.  The error is per OS thread: a binding whose
 * runtime moves work between threads (Go) must read it on the thread that made
 * the failing call, before making another tasker call there.
 */
TASKER_API const tasker_error *tasker_error_last(void);

/* Resets the calling thread's last error to TASKER_OK. */
TASKER_API void tasker_error_clear(void);

/* Frees memory the library handed to the caller.  NULL is a no-op. */
TASKER_API void tasker_free(void *ptr);

/* ------------------------------------------------------------------------ */
/* States                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum tasker_task_state {
    TASKER_TASK_PENDING = 0,  /* created, no step started yet */
    TASKER_TASK_RUNNING = 1,
    TASKER_TASK_COMPLETE = 2, /* every step complete (or resolved manually) */
    TASKER_TASK_ERROR = 3,    /* a step failed for good and nothing else can run */
    TASKER_TASK_CANCELLED = 4,
    TASKER_TASK_RESOLVED_MANUALLY = 5
} tasker_task_state;

typedef enum tasker_step_state {
    TASKER_STEP_PENDING = 0,  /* waiting for dependencies */
    TASKER_STEP_ENQUEUED = 1, /* ready, waiting for a handler */
    TASKER_STEP_IN_PROGRESS = 2,
    TASKER_STEP_WAITING_FOR_RETRY = 3,
    TASKER_STEP_COMPLETE = 4,
    TASKER_STEP_ERROR = 5,    /* retries exhausted or a permanent failure */
    TASKER_STEP_CANCELLED = 6,
    TASKER_STEP_RESOLVED_MANUALLY = 7,
    TASKER_STEP_SKIPPED = 8   /* reserved for decision points */
} tasker_step_state;

/* Lower-case names as used in JSON ("in_progress").  Static storage; NULL for
 * values outside the enum. */
TASKER_API const char *tasker_task_state_name(tasker_task_state state);
TASKER_API const char *tasker_step_state_name(tasker_step_state state);

/* Non-zero when a task in `state` will not change again without an operator. */
TASKER_API int tasker_task_state_is_final(tasker_task_state state);

/* ------------------------------------------------------------------------ */
/* Opaque handles                                                           */
/* ------------------------------------------------------------------------ */

typedef struct tasker_config tasker_config;
typedef struct tasker_coordinator tasker_coordinator;
typedef struct tasker_template tasker_template;
typedef struct tasker_step tasker_step;

/* A UUID in its 36-character text form plus the NUL. */
#define TASKER_UUID_STRLEN 36
#define TASKER_UUID_BUFSIZE 37

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */
/* ------------------------------------------------------------------------ */

/*
 * Keys (all optional):
 *   store                     "memory" (default) or "postgres"
 *   database.url              libpq connection string (postgres store)
 *   template.max_json_bytes   largest template JSON accepted (default 16777216)
 *   template.max_steps        most steps in one template (default 1000000)
 *   task.max_context_bytes    largest task context JSON (default 16777216)
 *   memory.retain_finished    finished tasks kept by the memory store before
 *                             the oldest are forgotten; 0 keeps all (default 0)
 *   postgres.lease_ms         lease of a claimed step, renewed every third (30000)
 *   postgres.poll_ms          poll interval when no notification arrives (1000)
 *   postgres.claim_batch      most steps one claim takes (64)
 *   postgres.flush_max        most completions recorded in one transaction (256)
 *   postgres.async_complete   false (default): tasker_step_succeed/fail return once
 *                             the completion is committed; true: they return at
 *                             once and a refused (fenced) completion is only counted
 *   postgres.namespaces       claim only steps of these namespaces, names separated
 *                             by commas (default empty: every namespace)
 *   metrics.enabled           true (default) or false: count for tasker_metrics_text
 *   log.level                 off (default), error, warn, info, debug
 *   log.sink                  stderr (default), stdout, or a file path (appended)
 *   breaker.failure_threshold consecutive failures that open a circuit; 0 = off
 *   breaker.failure_rate_percent  failure rate over the last breaker.window
 *                             calls that opens a circuit (1..100); 0 = off
 *   breaker.window            calls in the failure-rate window (default 20)
 *   breaker.open_ms           time a circuit stays open (default 30000)
 *   breaker.half_open_max     trial calls let through half-open (default 1)
 *   breaker.success_threshold trial successes that close it again (default 1)
 *
 * A config is not thread-safe: build it on one thread, then pass it to
 * tasker_coordinator_open(), which copies what it needs.
 */

/* Creates a config holding the defaults.  Free with tasker_config_free(). */
TASKER_API int tasker_config_new(tasker_config **out);

/* Frees a config.  NULL is a no-op. */
TASKER_API void tasker_config_free(tasker_config *cfg);

/*
 * Sets `key` to `value` (text; numbers in decimal).  Unknown keys and values
 * of the wrong type or out of range return TASKER_ECONFIG naming the key and
 * the allowed range; the config is then unchanged.
 */
TASKER_API int tasker_config_set(tasker_config *cfg, const char *key, const char *value);

/*
 * Reads the current value of `key` into a string the caller frees with
 * tasker_free().  Unknown key: TASKER_ECONFIG.
 */
TASKER_API int tasker_config_get(char **value_out, const tasker_config *cfg, const char *key);

/*
 * Loads `key = value` lines from a file ('#' starts a comment; blank lines are
 * ignored).  Every bad line is reported at once in the last error's context
 * ("errors": [{"line":N,"key":...,"message":...}]); on any error nothing from
 * the file is applied.
 */
TASKER_API int tasker_config_load_file(tasker_config *cfg, const char *path);

/*
 * Loads environment variables named PREFIX + key in upper case with '.'
 * written as '_' (TASKER_DATABASE_URL sets database.url).  `prefix` NULL means
 * "TASKER_".  Variables with the prefix that name no key are errors, all
 * reported at once; on any error nothing is applied.
 */
TASKER_API int tasker_config_load_env(tasker_config *cfg, const char *prefix);

/* Checks the config as a whole (e.g. postgres store without database.url). */
TASKER_API int tasker_config_validate(const tasker_config *cfg);

/* ------------------------------------------------------------------------ */
/* Coordinator                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Opens a coordinator.  `cfg` may be NULL for the defaults (memory store); the
 * coordinator copies what it needs, so the config may be freed afterwards.
 * Close with tasker_coordinator_close().
 */
TASKER_API int tasker_coordinator_open(tasker_coordinator **out, const tasker_config *cfg);

/*
 * Stops the worker threads (each finishes the handler it is running), cancels
 * nothing that has finished, and frees the coordinator.  NULL is a no-op.
 *
 * Steps claimed but not yet completed (deferred completion, poll mode) keep
 * their handles valid: completing one after close returns TASKER_ECLOSED and
 * releases it; the coordinator's memory goes once the last is released.
 * Every other handle and borrowed pointer from this coordinator is invalid
 * after close.  Must not be called from a handler.
 */
TASKER_API int tasker_coordinator_close(tasker_coordinator *coord);

/*
 * Starts `n_threads` (1..256) worker threads that run steps whose handler has
 * a callback.  TASKER_EBUSY when already started.  Thread-safe.
 */
TASKER_API int tasker_coordinator_start(tasker_coordinator *coord, unsigned n_threads);

/*
 * Stops claiming, waits for the worker threads to finish the handlers they are
 * running and joins them (steps claimed in a batch but not started go back to
 * the queue).  Steps whose completion was deferred may still be completed;
 * stop then waits up to `drain_ms` (negative: forever; 0: not at all) for
 * them.  If some are still in flight after a positive or negative drain, they
 * are released: put back in the queue without using up an attempt (postgres
 * store: the attempt number stays used, so the next claim fences the old
 * handler out), and their handlers' late completions are refused with
 * TASKER_ESTALE; stop then
 * returns TASKER_ETIMEOUT.  Work resumes with tasker_coordinator_start or
 * tasker_coordinator_claim.  Thread-safe; must not be called from a handler.
 */
TASKER_API int tasker_coordinator_stop(tasker_coordinator *coord, int drain_ms);

/*
 * Poll mode.  Writes a file descriptor that becomes readable when steps whose
 * handler was registered without a callback are ready to claim (or a retry
 * becomes due).  Put it in an event loop (epoll, select, asyncio add_reader);
 * when readable, call tasker_coordinator_claim().  The descriptor belongs to
 * the coordinator: do not read from or close it.  Thread-safe.
 */
TASKER_API int tasker_coordinator_fd(int *fd_out, tasker_coordinator *coord);

/*
 * Claims up to `max` ready steps whose handler has no callback, without
 * blocking.  Writes the handles to `steps_out` and their number to `n_out`
 * (0 when none is ready).  Each claimed step is in_progress and must be
 * completed with tasker_step_succeed() or tasker_step_fail().  Re-arms the
 * descriptor from tasker_coordinator_fd().  Thread-safe.
 */
TASKER_API int tasker_coordinator_claim(tasker_step **steps_out, size_t *n_out,
                                        tasker_coordinator *coord, size_t max);

/* ------------------------------------------------------------------------ */
/* Handlers                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * A step handler.  It either completes the step before returning
 * (tasker_step_succeed / tasker_step_fail) or returns TASKER_OK and completes
 * it later from any thread (deferred completion).  Returning a negative code
 * without having completed the step fails the attempt as retryable with error
 * class "tasker.HandlerReturnedError".  Called on a worker thread with no
 * tasker lock held.
 */
typedef int (*tasker_handler_fn)(tasker_step *step, void *userdata);

/*
 * Registers handler `name`.  With `fn` NULL, steps for this handler are not run
 * by worker threads but claimed in poll mode (tasker_coordinator_claim).
 * `free_userdata`, if not NULL, is called with `userdata` when the coordinator
 * is freed (also when this call fails).  A name can be registered once:
 * TASKER_EEXIST afterwards.  Thread-safe.
 */
TASKER_API int tasker_handler_register(tasker_coordinator *coord, const char *name,
                                       tasker_handler_fn fn, void *userdata,
                                       void (*free_userdata)(void *));

/* ------------------------------------------------------------------------ */
/* Templates                                                                */
/* ------------------------------------------------------------------------ */

typedef enum tasker_backoff {
    TASKER_BACKOFF_NONE = 0,        /* retry at once */
    TASKER_BACKOFF_LINEAR = 1,      /* base_ms * attempt */
    TASKER_BACKOFF_EXPONENTIAL = 2  /* base_ms * 2^(attempt-1) */
} tasker_backoff;

#define TASKER_STEP_OPTIONS_VERSION 1

/*
 * Per-step options.  Initialise with TASKER_STEP_OPTIONS_INIT or
 * tasker_step_options_init() before setting fields.
 *   max_attempts  1..1000 attempts in all (1 = no retry)           default 3
 *   backoff       delay policy between attempts                    exponential
 *   base_ms       0..86400000                                       default 100
 *   max_ms        base_ms..86400000, caps every delay               default 30000
 *   jitter        0.0..1.0: the delay is scaled by a random factor
 *                 in [1 - jitter, 1]                                default 0
 *   timeout_ms    0 (none) .. 86400000, handler time limit          default 0
 */
typedef struct tasker_step_options {
    unsigned version;
    uint32_t max_attempts;
    tasker_backoff backoff;
    uint32_t base_ms;
    uint32_t max_ms;
    double jitter;
    uint32_t timeout_ms;
} tasker_step_options;

#define TASKER_STEP_OPTIONS_INIT \
    { TASKER_STEP_OPTIONS_VERSION, 3, TASKER_BACKOFF_EXPONENTIAL, 100, 30000, 0.0, 0 }

/* Fills `opts` with the defaults for struct version `version`. */
TASKER_API int tasker_step_options_init(tasker_step_options *opts, unsigned version);

/*
 * Template JSON:
 *   {"namespace": "shop", "name": "order", "version": "1",
 *    "steps": [
 *      {"name": "validate", "handler": "validate", "depends_on": [],
 *       "retry": {"max_attempts": 3, "backoff": "exponential",
 *                 "base_ms": 100, "max_ms": 30000, "jitter": 0.1},
 *       "timeout_ms": 0}, ...]}
 * "handler" defaults to the step name, "depends_on" to [], "retry" and
 * "timeout_ms" to the defaults above, "version" to "1".  Unknown keys are
 * errors.  Names are 1..255 bytes of UTF-8 without control characters; a
 * namespace or template name may not contain '/' or '@'.
 *
 * Rejections return TASKER_ETEMPLATE (TASKER_EINVAL for a NULL argument) with
 * the last error's context naming the problem: {"reason": "duplicate_step" |
 * "unknown_dependency" | "cycle" | "bad_retry_policy" | "malformed_json" |
 * "oversize" | "bad_name" | "empty" | "too_many_steps" | "unknown_key",
 * "step": "...", "cycle": ["a", "b", "a"], ...}.
 */

/* Builder.  Creates an empty template; free with tasker_template_free(). */
TASKER_API int tasker_template_new(tasker_template **out, const char *ns, const char *name,
                                   const char *version);

/* Frees a template built or parsed by the caller.  NULL is a no-op. */
TASKER_API void tasker_template_free(tasker_template *tmpl);

/*
 * Adds a step.  `handler` NULL means the step name.  `depends_on` lists
 * `n_deps` step names (they may be added later; they are checked by
 * tasker_template_register).  `opts` NULL means the defaults.  Duplicate names
 * and bad options are refused here.  Not thread-safe on the same template.
 */
TASKER_API int tasker_template_add_step(tasker_template *tmpl, const char *name,
                                        const char *handler, const char *const *depends_on,
                                        size_t n_deps, const tasker_step_options *opts);

/* Parses template JSON into a template (checks shape, not the graph). */
TASKER_API int tasker_template_from_json(tasker_template **out, const char *json, size_t len);

/* Writes the template as JSON; the caller frees it with tasker_free(). */
TASKER_API int tasker_template_to_json(char **json_out, const tasker_template *tmpl);

/*
 * Checks the whole graph (unknown dependencies, cycles) and registers a copy
 * of the template with the coordinator.  Registering the same
 * namespace/name@version again with identical steps is a no-op returning
 * TASKER_OK; with different steps it is TASKER_EEXIST.  Thread-safe.
 */
TASKER_API int tasker_template_register(tasker_coordinator *coord, const tasker_template *tmpl);

/* tasker_template_from_json + tasker_template_register in one call. */
TASKER_API int tasker_template_register_json(tasker_coordinator *coord, const char *json,
                                             size_t len);

/* ------------------------------------------------------------------------ */
/* Tasks                                                                    */
/* ------------------------------------------------------------------------ */

#define TASKER_TASK_REQUEST_VERSION 1

/*
 * What to run.  Initialise with TASKER_TASK_REQUEST_INIT or
 * tasker_task_request_init().  Strings are borrowed for the call only.
 */
typedef struct tasker_task_request {
    unsigned version;
    const char *ns;               /* template namespace (required) */
    const char *name;             /* template name (required) */
    const char *template_version; /* NULL: the highest registered version */
    const char *context_json;     /* the task's input, a JSON object; NULL = {} */
    size_t context_len;           /* 0: strlen(context_json) */
    const char *idempotency_key;  /* NULL: none */
    int32_t priority;             /* higher runs first; -1000000..1000000 */
} tasker_task_request;

#define TASKER_TASK_REQUEST_INIT { TASKER_TASK_REQUEST_VERSION, NULL, NULL, NULL, NULL, 0, NULL, 0 }

TASKER_API int tasker_task_request_init(tasker_task_request *req, unsigned version);

/*
 * Creates a task and enqueues its root steps; writes its UUID to `uuid_out`.
 * With an idempotency key already used for a task of the same template, writes
 * that task's UUID and returns TASKER_OK without creating another; the same
 * key with another template is TASKER_EEXIST.  Every step's handler must be
 * registered (TASKER_EHANDLER names the first one missing).  Thread-safe.
 */
TASKER_API int tasker_task_create(char uuid_out[TASKER_UUID_BUFSIZE], tasker_coordinator *coord,
                                  const tasker_task_request *req);

/*
 * Waits until the task reaches a final state or `timeout_ms` passes (negative:
 * forever; 0: just read the state).  Writes the state reached either way and
 * returns TASKER_OK if final, TASKER_ETIMEOUT if not.  Thread-safe.
 */
TASKER_API int tasker_task_wait(tasker_task_state *state_out, tasker_coordinator *coord,
                                const char *task_uuid, int timeout_ms);

/*
 * Writes the task as JSON (uuid, template, state, context, priority, timings,
 * steps with state, attempts, result, errors, timings, and the transition
 * history).  The caller frees it with tasker_free().  Thread-safe.
 */
TASKER_API int tasker_task_get(char **json_out, tasker_coordinator *coord, const char *task_uuid);

/*
 * Cancels a task: steps not yet finished become cancelled (a handler still
 * running one gets TASKER_ESTATE when it completes), and the task becomes
 * cancelled.  A task already final returns TASKER_ESTATE.  Thread-safe.
 */
TASKER_API int tasker_task_cancel(tasker_coordinator *coord, const char *task_uuid);

/*
 * Manual retry of a task in error: each step in error is enqueued again with
 * a fresh attempt budget and the task runs again.  Thread-safe.
 */
TASKER_API int tasker_task_retry(tasker_coordinator *coord, const char *task_uuid);

/*
 * Marks step `step_name` of a task, which must be in error, resolved_manually
 * with result `result_json` (NULL: null); its dependents may then run.
 * Thread-safe.
 */
TASKER_API int tasker_step_resolve(tasker_coordinator *coord, const char *task_uuid,
                                   const char *step_name, const char *result_json, size_t len);

/*
 * Forgets a task in a final state, freeing its memory (memory store).  Any
 * step handle of the task is invalid afterwards.  A task with a handler still
 * holding a step returns TASKER_EBUSY.  Thread-safe.
 */
TASKER_API int tasker_task_forget(tasker_coordinator *coord, const char *task_uuid);

/* ------------------------------------------------------------------------ */
/* Steps, as seen by a handler                                              */
/* ------------------------------------------------------------------------ */

/*
 * A step handle is given to a handler (or returned by claim) for one attempt.
 * It stays valid until its task is forgotten or the coordinator closed (see
 * tasker_coordinator_close for steps in flight at close).  The accessors may
 * be called from any thread; the strings they return stay valid as long as the
 * handle.  A NULL handle gives NULL / 0.
 */
TASKER_API const char *tasker_step_name(const tasker_step *step);
TASKER_API const char *tasker_step_handler_name(const tasker_step *step);
TASKER_API const char *tasker_step_uuid(const tasker_step *step);
TASKER_API const char *tasker_step_task_uuid(const tasker_step *step);
TASKER_API const char *tasker_step_namespace(const tasker_step *step);
TASKER_API const char *tasker_step_template_name(const tasker_step *step);
/* 1 for the first attempt. */
TASKER_API uint32_t tasker_step_attempt(const tasker_step *step);
TASKER_API uint32_t tasker_step_max_attempts(const tasker_step *step);

/* The task's context JSON; its length goes to `len_out` if not NULL. */
TASKER_API const char *tasker_step_context(const tasker_step *step, size_t *len_out);

/*
 * The result of dependency `dep_name` as JSON (the text "null" for a step that
 * succeeded without a result).  Borrowed: valid as long as the handle.
 * TASKER_ENOTFOUND if `dep_name` is not a dependency of this step;
 * TASKER_ENOTSUP if its result is an in-process pointer (see
 * tasker_step_dependency_pointer).
 */
TASKER_API int tasker_step_dependency_result(const char **json_out, size_t *len_out,
                                             const tasker_step *step, const char *dep_name);

/*
 * The in-process result of dependency `dep_name` set with
 * tasker_step_succeed_pointer(); TASKER_ENOTSUP if it has a JSON result.
 */
TASKER_API int tasker_step_dependency_pointer(void **ptr_out, const tasker_step *step,
                                              const char *dep_name);

/* Number of direct dependencies and the name of the i-th (0-based). */
TASKER_API size_t tasker_step_dependency_count(const tasker_step *step);
TASKER_API const char *tasker_step_dependency_name(const tasker_step *step, size_t i);

/*
 * Completes the attempt successfully with a JSON result (copied; NULL or
 * "null" for none).  Exactly once per attempt, from any thread: a second call,
 * or a call after the task was cancelled, returns TASKER_ESTATE and changes
 * nothing; a call after the attempt timed out or its lease was released
 * returns TASKER_ESTALE.  Malformed JSON returns TASKER_EINVAL and leaves the
 * step in progress.  Thread-safe.
 */
TASKER_API int tasker_step_succeed(tasker_step *step, const char *result_json, size_t len);

/*
 * Completes `n` attempts successfully in one call, taking the coordinator's
 * lock once (event loops and bindings that batch use it).  `results` NULL
 * means no result for any; otherwise results[i] / lens[i] (lens NULL: all
 * strlen) as in tasker_step_succeed.  rc_out[i] receives each step's status
 * exactly as tasker_step_succeed would have returned it; the call itself
 * returns TASKER_OK, or TASKER_EINVAL for NULL rc_out or steps.  Thread-safe.
 */
TASKER_API int tasker_steps_succeed(int *rc_out, tasker_step *const *steps,
                                    const char *const *results, const size_t *lens, size_t n);

/*
 * Completes the attempt with an in-process result (memory store only): the
 * dependents receive `ptr` itself through tasker_step_dependency_pointer.
 * `free_ptr`, if not NULL, is called once when the task is forgotten or the
 * coordinator freed (also when this call fails).  Thread-safe.
 */
TASKER_API int tasker_step_succeed_pointer(tasker_step *step, void *ptr, void (*free_ptr)(void *));

#define TASKER_FAILURE_VERSION 1

/*
 * Why an attempt failed.  Initialise with TASKER_FAILURE_INIT or
 * tasker_failure_init().  Strings are copied.
 */
typedef struct tasker_failure {
    unsigned version;
    const char *error_class;  /* e.g. "TimeoutError"; NULL = "Error" */
    const char *message;      /* NULL = "" */
    int retryable;            /* 0: permanent, no retry */
    int64_t retry_after_ms;   /* >= 0 overrides the backoff (capped by max_ms); -1 none */
    const char *context_json; /* JSON object with details, NULL = none */
} tasker_failure;

#define TASKER_FAILURE_INIT { TASKER_FAILURE_VERSION, NULL, NULL, 1, -1, NULL }

TASKER_API int tasker_failure_init(tasker_failure *failure, unsigned version);

/*
 * Completes the attempt as failed.  Retryable with attempts left: the step
 * waits (backoff, or retry_after_ms) and is enqueued again.  Otherwise the step
 * goes to error; the task goes to error once nothing else can run.  `failure`
 * NULL means a retryable "Error".  Same exactly-once rules as
 * tasker_step_succeed.  Thread-safe.
 */
TASKER_API int tasker_step_fail(tasker_step *step, const tasker_failure *failure);

/* ------------------------------------------------------------------------ */
/* Events                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct tasker_subscription tasker_subscription;

#define TASKER_EVENT_TASK_CREATED (1u << 0)
#define TASKER_EVENT_STEP_ENQUEUED (1u << 1)
#define TASKER_EVENT_STEP_STARTED (1u << 2)
#define TASKER_EVENT_STEP_SUCCEEDED (1u << 3)
#define TASKER_EVENT_STEP_FAILED (1u << 4)          /* an attempt failed */
#define TASKER_EVENT_STEP_RETRY_SCHEDULED (1u << 5)
#define TASKER_EVENT_STEP_DEAD_LETTERED (1u << 6)   /* step in error: no retry left */
#define TASKER_EVENT_STEP_CANCELLED (1u << 7)
#define TASKER_EVENT_TASK_CANCELLED (1u << 8)
#define TASKER_EVENT_TASK_COMPLETED (1u << 9)
#define TASKER_EVENT_TASK_FAILED (1u << 10)         /* task in error */
#define TASKER_EVENT_CIRCUIT_CHANGED (1u << 11)
#define TASKER_EVENT_ALL 0xfffu

#define TASKER_EVENT_VERSION 1

/* One event, borrowed by the subscriber for the duration of the callback. */
typedef struct tasker_event {
    unsigned version;
    uint32_t type;             /* one TASKER_EVENT_* bit */
    int64_t at_unix_ns;
    const char *task_uuid;     /* "" for circuit events */
    const char *step_uuid;     /* "" for task and circuit events */
    const char *ns;            /* namespace; for circuit events the circuit's, or "" */
    const char *template_name; /* "" for circuit events */
    const char *step_name;     /* "" for task and circuit events */
    const char *handler;       /* "" for task events */
    uint32_t attempt;
    const char *circuit;       /* circuit events: "handler:NAME" or "namespace:NAME"; else "" */
    const char *circuit_state; /* circuit events: "closed", "open", "half_open"; else "" */
    const char *error_class;   /* STEP_FAILED and STEP_DEAD_LETTERED: the failure; else "" */
    const char *error_message;
} tasker_event;

typedef void (*tasker_event_fn)(const tasker_event *event, void *userdata);

/*
 * Subscribes `fn` to the events whose bit is in `mask`.  Events are copied
 * into a buffer of `buffer_events` entries (0: 65536) and delivered in order
 * on a thread of the subscription's own, so a slow or failing subscriber never
 * stalls execution: when the buffer is full, new events for it are dropped and
 * counted (tasker_subscription_dropped).  `free_userdata` is called after the
 * last callback.  Thread-safe.
 */
TASKER_API int tasker_subscribe(tasker_subscription **out, tasker_coordinator *coord,
                                uint32_t mask, size_t buffer_events, tasker_event_fn fn,
                                void *userdata, void (*free_userdata)(void *));

/*
 * Delivers what is buffered, stops the subscription's thread and frees it.
 * NULL is a no-op.  Must not be called from the subscription's own callback.
 * tasker_coordinator_close unsubscribes those left.
 */
TASKER_API int tasker_unsubscribe(tasker_subscription *sub);

/* Events dropped because the buffer was full / delivered so far.  Thread-safe. */
TASKER_API uint64_t tasker_subscription_dropped(const tasker_subscription *sub);
TASKER_API uint64_t tasker_subscription_delivered(const tasker_subscription *sub);

/* ------------------------------------------------------------------------ */
/* Metrics and health                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Writes the coordinator's metrics in the Prometheus text exposition format
 * (counters by namespace, handler and outcome; queue-wait, handler-duration
 * and task latency histograms; queue depth; steps in flight; retries; dead
 * letters; fenced completions; circuit states).  The caller frees the text
 * with tasker_free().  Thread-safe.
 */
TASKER_API int tasker_metrics_text(char **text_out, tasker_coordinator *coord);

/*
 * Writes a health report as JSON: {"status": "ok"|"degraded"|"down",
 * "version", "store": {"kind", "reachable"}, "namespaces": {NS: {"queue_depth",
 * "oldest_ready_age_ms"}}, "circuits": {...}, "config": {"valid": true}}.
 * The caller frees it with tasker_free().  Thread-safe.
 */
TASKER_API int tasker_health_json(char **json_out, tasker_coordinator *coord);

/*
 * Writes what an operator's status page shows, as JSON: {"tasks": {NS: {STATE:
 * count}}, "recent_failures": [{"at", "task_uuid", "namespace", "template",
 * "step", "attempt", "class", "message"}] (newest first, at most 50),
 * "dead_letters": [{"task_uuid", "namespace", "template", "step", "attempts",
 * "class", "message"}] (steps in error, at most 100), "circuits": {...}}.
 * The caller frees it with tasker_free().  Thread-safe.
 */
TASKER_API int tasker_status_json(char **json_out, tasker_coordinator *coord);

/* ------------------------------------------------------------------------ */
/* HTTP endpoint                                                            */
/* ------------------------------------------------------------------------ */

typedef struct tasker_http tasker_http;

/*
 * Serves /health/live, /health/ready (503 when the store is unreachable),
 * /metrics (Prometheus text), /status.json (tasker_status_json) and a
 * read-only status page at / on `bind_address` (NULL: "127.0.0.1") and `port`
 * (0: any free port; read it back with tasker_http_port).  Runs on its own
 * thread.  Stop it with tasker_http_stop before closing the coordinator.
 */
TASKER_API int tasker_http_start(tasker_http **out, tasker_coordinator *coord,
                                 const char *bind_address, int port);
/* The port the endpoint listens on; 0 for NULL. */
TASKER_API int tasker_http_port(const tasker_http *http);
/* Stops the endpoint and frees it.  NULL is a no-op. */
TASKER_API void tasker_http_stop(tasker_http *http);

/* ------------------------------------------------------------------------ */
/* Circuit breakers                                                         */
/* ------------------------------------------------------------------------ */

typedef enum tasker_circuit_state {
    TASKER_CIRCUIT_CLOSED = 0,
    TASKER_CIRCUIT_OPEN = 1,
    TASKER_CIRCUIT_HALF_OPEN = 2
} tasker_circuit_state;

typedef enum tasker_circuit_mode {
    /* The breaker decides.  After FORCE_OPEN it stays open until breaker.open_ms
     * has passed since it was forced; FORCE_CLOSED lets parked steps go at once. */
    TASKER_CIRCUIT_AUTO = 0,
    TASKER_CIRCUIT_FORCE_OPEN = 1,   /* nothing passes until AUTO again */
    TASKER_CIRCUIT_FORCE_CLOSED = 2  /* everything passes, failures are only counted */
} tasker_circuit_mode;

/*
 * Each handler has a circuit named "handler:NAME" and each namespace one named
 * "namespace:NAME" around its queue operations.  Configure them with the
 * breaker.* keys (see tasker_config_set).  While a handler's circuit is open its
 * steps stay enqueued; after breaker.open_ms it lets breaker.half_open_max
 * trial steps through, and closes after breaker.success_threshold successes.
 */
TASKER_API int tasker_circuit_get(tasker_circuit_state *state_out, tasker_coordinator *coord,
                                  const char *circuit);
TASKER_API int tasker_circuit_force(tasker_coordinator *coord, const char *circuit,
                                    tasker_circuit_mode mode);

#ifdef __cplusplus
}
#endif

#endif /* TASKER_H */
