/*
 * Internal data model of a coordinator and its memory store.
 *
 * One mutex (coordinator.lock) protects every task, step, queue and counter
 * below; it is never held while a user callback runs.  Readiness is
 * incremental: each step counts its unfinished dependencies, and finishing a
 * step decrements its dependents' counters and enqueues those that reach 0.
 */
#ifndef TASKER_RUN_ENGINE_H
#define TASKER_RUN_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include "core/hash.h"

#include "core/config.h"
#include "core/states.h"
#include "core/template.h"
#include "obs/breaker.h"
#include "obs/events.h"
#include "obs/metrics.h"
#include "obs/status.h"
#include "store/postgres.h"
#include "tasker.h"

typedef struct tk_task tk_task;
typedef struct tk_step tk_step;

typedef struct tk_handler {
    char *name;
    tasker_handler_fn fn; /* NULL: poll mode */
    void *userdata;
    void (*free_userdata)(void *);
    tk_handler_metrics metrics;
    tk_breaker *breaker;
    UT_hash_handle hh;
} tk_handler;

/* A registered template and, once all are registered, its handlers. */
typedef struct tk_reg {
    char *key; /* ns/name@version, owned by tmpl */
    tasker_template *tmpl;
    tk_handler **handlers; /* per step; filled at first task creation */
    int handlers_resolved;
    tk_nsobj *nsobj;
    UT_hash_handle hh;
} tk_reg;

/* Highest version of ns/name. */
typedef struct tk_latest {
    char *key; /* ns/name */
    tk_reg *reg;
    UT_hash_handle hh;
} tk_latest;

/* One attempt's claim on a step: this is the handle handlers see. */
struct tasker_step {
    tk_step *step;                     /* memory store */
    const struct tk_claim_view *view;  /* postgres store (store/postgres.h) */
    struct tasker_step *older; /* earlier claims of the same step */
    uint32_t attempt;
    uint8_t done;
    int64_t run_at; /* when a worker thread called the handler (0: poll mode) */
};

struct tk_failure_rec;
typedef struct tk_failure_rec {
    struct tk_failure_rec *next;
    uint32_t attempt;
    uint8_t retryable;
    int64_t at;
    char *error_class;
    char *message;
    char *context; /* JSON or NULL */
} tk_failure_rec;

enum { TK_RESULT_NONE, TK_RESULT_JSON, TK_RESULT_POINTER };

struct tk_step {
    tk_task *task;
    tk_step *q_next, *q_prev; /* ready queue links */
    uint32_t idx;             /* index in the template */
    uint32_t remaining;       /* unfinished dependencies */
    uint32_t attempts;        /* attempts started */
    uint32_t budget;          /* attempts allowed (grows on manual retry) */
    uint8_t state;
    uint8_t result_kind;
    uint8_t in_queue;         /* 0, 1 + queue index, or TK_PARKED */
    uint32_t heap_pos;        /* 1 + position in the retry heap, 0 if absent */
    size_t result_len;
    char *result;
    void *result_ptr;
    void (*result_free)(void *);
    tk_failure_rec *failures, *failures_tail;
    int64_t enqueued_at, started_at, finished_at, due_mono;
    struct tasker_step claim0;
    struct tasker_step *claims; /* newest claim */
    uint8_t uuid_bytes[16];
    char uuid[TASKER_UUID_BUFSIZE];
};

#define TK_PARKED 3 /* held back by its handler's open circuit */

typedef struct tk_transition {
    int64_t at;
    int32_t step; /* -1: the task */
    uint8_t from, to, reason;
    uint32_t attempt;
} tk_transition;

typedef struct tk_bucket tk_bucket;

struct tk_task {
    UT_hash_handle hh;  /* by uuid bytes */
    UT_hash_handle ihh; /* by idempotency key */
    uint8_t uuid_bytes[16];
    char uuid[TASKER_UUID_BUFSIZE];
    tk_reg *reg;
    tasker_coordinator *coord;
    tk_bucket *bucket[2]; /* ready-queue buckets for this priority */
    tk_task *fin_next, *fin_prev; /* retention FIFO of finished tasks (utlist DL) */
    uint8_t in_fin;
    uint8_t state;
    uint8_t forgotten_pending;
    int32_t priority;
    uint32_t n_steps, n_done, n_active, n_error;
    uint32_t outstanding; /* claims handed out and not completed */
    uint32_t waiters;     /* threads in tasker_task_wait on this task */
    char *context;
    size_t context_len;
    char *idem_key;
    int64_t created_at, finished_at;
    tk_transition *trans;
    size_t n_trans, cap_trans;
    tk_step steps[];
};

/* Ready queue: buckets by priority, highest first; FIFO within a bucket. */
struct tk_bucket {
    int32_t priority;
    tk_bucket *next;
    tk_step *head, *tail;
};

typedef struct tk_queue {
    tk_bucket *buckets;
    size_t len;
} tk_queue;

enum { TK_Q_WORKER = 0, TK_Q_POLL = 1 };

struct tasker_coordinator {
    struct tk_pg *pg; /* store = postgres: task and step operations go there */
    pthread_mutex_t lock;
    pthread_cond_t work_cv;  /* workers wait for ready steps */
    pthread_cond_t done_cv;  /* task waiters and drain wait */
    struct tasker_config cfg;

    tk_handler *handlers;
    tk_reg *templates;
    tk_latest *latest;
    tk_task *tasks;
    tk_task *by_key;
    tk_task *fin_head;
    tk_task *graveyard; /* forgotten tasks to free once the lock is released */
    size_t n_finished_kept;

    tk_queue q[2];
    atomic_size_t worker_ready; /* q[TK_Q_WORKER].len, readable without the lock */
    tk_step **heap; /* retry timers, min-heap on due_mono */
    size_t heap_len, heap_cap;

    pthread_t *threads;
    unsigned n_threads;
    unsigned idle_workers;
    unsigned spinning; /* workers spinning for work; at most one at a time */
    unsigned done_waiters;
    int stopping;
    atomic_int stop_flag;
    int closed;
    size_t outstanding; /* claims handed out and not completed, all tasks */

    tk_nsobj *namespaces;
    tk_breaker *breakers;
    int breakers_on; /* a failure threshold or rate is configured */
    int metrics_on;  /* metrics.enabled */
    struct tasker_subscription *subs;
    uint32_t event_mask; /* union of the subscriptions' masks */
    uint64_t m_fenced, m_store_errors;
    tk_recent_failure recent[TK_RECENT_FAILURES];
    size_t recent_pos, recent_n;

    int epfd, evfd, tfd;
    int ev_armed;          /* eventfd holds a count */
    int64_t timer_due;     /* timerfd's armed due time (mono ns), 0 = disarmed */
};

/* ---- memory store operations (store/memory.c); lock held for all ---- */

tk_task *tk_task_find(tasker_coordinator *c, const char *uuid_text);
void tk_record(tk_task *t, int64_t at, int32_t step, uint8_t from, uint8_t to, tk_reason r,
               uint32_t attempt);
/* Makes a pending/waiting/error step ready and queues it. */
void tk_step_enqueue(tasker_coordinator *c, tk_step *s, int64_t now, tk_reason r);
/* Pops up to `max` steps from queue `qi` into claims; returns how many. */
size_t tk_claim_batch(tasker_coordinator *c, int qi, tasker_step **out, size_t max, int64_t now,
                      int *oom);
/* Moves retries that are due into the ready queues. Returns how many. */
size_t tk_promote_due(tasker_coordinator *c, int64_t mono_now);
/* Finishes a claimed attempt.  `ok` succeed, else fail with `f`. */
int tk_complete(tasker_coordinator *c, struct tasker_step *claim, int ok, char *result,
                size_t result_len, void *ptr, void (*free_ptr)(void *),
                tk_failure_rec *failure, int retryable, int64_t retry_after_ms);
/* Starts the time limit of a step a worker thread is about to run (lock held). */
void tk_start_timeout(tasker_coordinator *c, struct tasker_step *claim);
/* Puts every step still held by a handler back in the queue without using
 * up an attempt; the handlers' late completions are refused as stale. */
void tk_release_in_flight(tasker_coordinator *c, int64_t now);
/* Puts a claimed, not yet started attempt back in the queue. */
void tk_release(tasker_coordinator *c, struct tasker_step *claim, int64_t now);
void tk_task_free(tk_task *t);
/* Unlinks a final task with nothing outstanding and adds it to the graveyard. */
void tk_task_bury(tasker_coordinator *c, tk_task *t);
/* Frees the graveyard; call with the lock released. */
void tk_free_tasks(tk_task *list);
/* Creates a task (store/memory.c). */
int tk_task_create(tasker_coordinator *c, const tasker_task_request *req, char *uuid_out);
void tk_maybe_finalize(tasker_coordinator *c, tk_task *t, int64_t now);
void tk_queue_remove(tasker_coordinator *c, tk_step *s);
void tk_heap_remove(tasker_coordinator *c, tk_step *s);
/* Wakes whoever needs to learn about new ready steps / timers. */
void tk_notify(tasker_coordinator *c);
/* Earliest timer (retry, timeout or circuit) in monotonic ns; 0 if none. */
int64_t tk_next_timer(tasker_coordinator *c);
void tk_failure_free(tk_failure_rec *f);

/* JSON of a task (run/task_json.c), lock held. */
char *tk_task_json(const tk_task *t);

#endif
