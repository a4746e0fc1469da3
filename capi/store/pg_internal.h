/*
 * Internals of the postgres store (store/postgres.c and store/pg_*.c).
 *
 * Threads of one store:
 *   listener   LISTENs for 'tasker_ready' / 'tasker_done' and wakes the
 *              claimer, the poll-mode descriptor and tasker_task_wait.
 *   claimer    claims batches for handlers with a callback into a local
 *              queue (worker mode only).
 *   workers    run those handlers.
 *   flusher    records queued completions, many per transaction.
 *   heartbeat  renews the leases of claimed steps not yet completed, and
 *              fails attempts that run past their step's timeout_ms.
 * Each thread has its own connection; calls from application threads
 * (task create/get/cancel..., poll-mode claims) borrow one from a pool.
 *
 * One mutex (pg->mu) protects every field marked [mu] and every claim's
 * bookkeeping; it is never held during a database round trip or while a
 * handler runs.
 */
#ifndef TASKER_STORE_PG_INTERNAL_H
#define TASKER_STORE_PG_INTERNAL_H

#include "store/pq_dl.h" /* libpq through dlopen: PQ* calls go via tk_pq */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "run/engine.h" /* struct tasker_step */
#include "store/postgres.h"

/* The schema version this library needs (sql/NNNN_*.sql). */
#define TK_PG_SCHEMA_VERSION 8

#define TK_PG_POOL_MAX 4
#define TK_PG_RETAIN_MAX 4096 /* finished handles kept readable */

/* Prepared statements, prepared on a connection the first time it runs them. */
typedef enum tk_ps {
    TK_PS_CLAIM,
    TK_PS_COMPLETE,
    TK_PS_COMPLETE_CLAIM,
    TK_PS_HEARTBEAT,
    TK_PS_RELEASE,
    TK_PS_NEXT_DUE,
    TK_PS_CREATE,
    TK_PS_TASK_STATE,
    TK_PS_TASK_JSON,
    TK_PS_CANCEL,
    TK_PS_RETRY,
    TK_PS_RESOLVE,
    TK_PS_FORGET,
    TK_PS_PROBE,
    TK_PS_NOTIFY,
    TK_PS_COUNT
} tk_ps;

typedef struct tk_pgconn {
    PGconn *conn;
    uint32_t prepared; /* bit i: statement i is prepared on this connection */
} tk_pgconn;

/* Lifecycle of a claim. */
enum {
    TK_CL_QUEUED = 0, /* in the local queue, no handler has it yet */
    TK_CL_RUNNING,    /* given to a handler or a poll-mode caller */
    TK_CL_FLUSHING,   /* completion queued for the flusher */
    TK_CL_FINISHED    /* recorded, refused, or released */
};

/* One claimed attempt.  The handle handlers see is `base` (first member). */
typedef struct tk_pgclaim {
    struct tasker_step base;
    tk_claim_view view;
    struct tk_pg *pg;
    struct tk_pgclaim *prev, *next; /* held list [mu] */
    struct tk_pgclaim *qnext;       /* local queue, flush queue or retained list [mu] */
    int64_t task_id;
    int32_t idx;
    int64_t deadline_mono; /* local lease expiry (ns), never later than the database's [mu] */
    uint8_t state;         /* TK_CL_* [mu] */
    uint8_t lost;          /* heartbeat found the lease gone [mu] */
    uint8_t poll;          /* claimed in poll mode */
    uint8_t waiter;        /* a completing thread waits for the flush result [mu] */
    unsigned pins;         /* reasons the claim must not be retired [mu] */
    /* The completion request, valid in TK_CL_FLUSHING. */
    uint8_t ok;
    uint8_t f_retryable;
    int64_t f_after;
    char *result; /* JSON text or NULL */
    char *f_class, *f_message, *f_context;
    int status; /* result of the flush: 0, 1 stale, 2 cancelled, <0 TASKER_E* */
    char *err;  /* the flusher's error message when status < 0 */
    char *mem;  /* the view's strings */
    /* Observability and resilience (pg_obs.c, pg_round.c). */
    const char *tversion;      /* the template version (in mem) */
    const struct tk_reg *reg;  /* this process's registration of that version, or NULL */
    struct tk_handler *h;      /* the handler here (set when admitted) */
    uint32_t timeout_ms;       /* the step's handler time limit, 0 none */
    uint8_t brk;               /* the handler's circuit was asked (tk_breaker_allow) */
    uint8_t timed_out;         /* the attempt ran past timeout_ms [mu] */
    uint8_t task_finished;     /* flush result: this batch finished the task */
    int8_t step_state, task_state; /* flush result: states afterwards (-1 unknown) */
    double queue_wait_ms;      /* ready -> claimed, from the database */
    double task_age_ms;        /* flush result: the task's age when it finished */
    int64_t claimed_mono, started_mono, ended_mono; /* claim, handler start, completion */
    int64_t due_mono;          /* handler time limit (monotonic ns), 0 none [mu] */
} tk_pgclaim;

/* A thread in tasker_task_wait. */
typedef struct tk_pgwaiter {
    struct tk_pgwaiter *next;
    char uuid[TASKER_UUID_BUFSIZE];
    int signaled;
} tk_pgwaiter;

struct tk_pg {
    tasker_coordinator *coord; /* NULL once closed */
    char *conninfo;
    char *target;   /* "user@host:port/db" for messages: never the password */
    char *password; /* scrubbed from any message we pass on; NULL if none */
    int worker_id;  /* tasker.workers row of this store */
    /* postgres.namespaces as a JSON array of names (NULL: every
     * namespace); each connection sets it as tasker.namespaces, which
     * restricts the claims of tasker.claim_ns (sql/0007_history.sql). */
    char *namespaces;

    /* tuning (see tk_pg_tune) */
    int lease_ms, poll_ms, claim_batch, flush_max, async_complete;

    pthread_mutex_t mu;
    atomic_int refs; /* 1 for the coordinator + 1 per claim not yet freed */
    int closing, closed; /* [mu] */

    tk_pgconn *pool[TK_PG_POOL_MAX]; /* idle connections [mu] */
    int n_pool;

    tk_pgclaim *held; /* claims whose lease this store holds [mu] */
    size_t n_held;
    size_t n_out;              /* claims given out and not completed [mu] */
    pthread_cond_t drain_cv;   /* n_out decreased */

    /* worker mode [mu] */
    tk_pgclaim *lq_head, *lq_tail; /* local queue */
    size_t n_lq;
    pthread_cond_t work_cv;
    pthread_t *workers;
    unsigned n_workers;
    pthread_t claimer;
    int claimer_on;
    int stopping;
    pthread_cond_t claimer_cv;
    unsigned handlers_seen; /* handler count the cached lists were built from */
    char *worker_handlers;  /* text[] literal of handlers with a callback */
    char *poll_handlers;    /* ... and without */

    /* wakeups [mu] */
    uint64_t ready_seq;  /* bumped by every 'tasker_ready' notification */
    int64_t next_due_ms; /* earliest announced due time (Unix ms), 0 none */
    atomic_llong due_asked_mono; /* last tasker.next_due query (monotonic ns), 0 never */

    /* listener */
    pthread_t listener;
    int listener_on, listener_quit;
    int wake_fd;                /* eventfd: wakes the listener to exit */
    tk_pgwaiter *waiters;       /* [mu] */
    pthread_cond_t waiters_cv;  /* a waiter was signaled */
    uint64_t reconnects;        /* listener reconnections: waiters re-check [mu] */

    /* flusher [mu] */
    tk_pgclaim *fq_head, *fq_tail;
    size_t n_fq;
    pthread_cond_t flush_cv;   /* work for the flusher */
    pthread_cond_t flushed_cv; /* results for waiting completers */
    pthread_t flusher;
    int flusher_on, flush_quit;
    int flush_busy; /* a batch is being recorded (the claimer leaves claiming to it) */

    /* heartbeat [mu] */
    pthread_t heart;
    int heart_on, heart_quit;
    pthread_cond_t heart_cv;

    /* poll-mode descriptor [mu] */
    int epfd, evfd, tfd;
    int ev_armed;
    int64_t tfd_due_ms; /* the timer's armed time (Unix ms), 0 disarmed */

    /* finished handles kept readable a while (see TK_PG_RETAIN_MAX) [mu] */
    tk_pgclaim *ret_head, *ret_tail;
    size_t n_ret;

    /* handler timeouts: earliest due_mono the heartbeat thread waits for [mu] */
    int64_t tmo_next;

    /* circuits (pg_round.c) [mu] */
    int isolate;        /* claim namespace by namespace (one failed the others) */
    atomic_int plain;   /* every circuit closed and not isolating: the flusher may claim */
    atomic_llong brk_due; /* earliest monotonic ns an open circuit half-opens, 0 none */

    /* health probe: its own connection, one probe at a time */
    pthread_mutex_t probe_mu;
    tk_pgconn *probe;

    /* connection state for metrics: 1 while the thread holds a connection */
    atomic_int up_listener, up_claimer, up_flusher, up_heart;

    /* counters */
    atomic_ulong n_fenced, n_completed, n_claimed, n_claim_calls, n_flush_calls;
    atomic_ulong n_errors, n_connects, n_connect_failures, n_timeouts;
};

/* ---- pg_conn.c: connections and statements ---- */

/* Connects; on failure sets a TASKER_EDATABASE error naming pg->target. */
int tk_pg_connect(tk_pg *pg, tk_pgconn **out);
/* The same with libpq's connect_timeout (seconds, text). */
int tk_pg_connect_within(tk_pg *pg, tk_pgconn **out, const char *timeout_s);
void tk_pg_disconnect(tk_pgconn *c);
/* A pooled connection (connecting if none is idle) / its return; a broken
 * connection is closed instead of being pooled. */
int tk_pg_pool_get(tk_pg *pg, tk_pgconn **out);
void tk_pg_pool_put(tk_pg *pg, tk_pgconn *c);
/* Runs prepared statement `ps` with text parameters (NULL = SQL NULL).
 * Returns the result (PQclear it) or NULL with the error set; *transient
 * (if not NULL) tells whether trying again may work (connection lost,
 * deadlock, serialization failure). */
PGresult *tk_pg_run(tk_pg *pg, tk_pgconn *c, tk_ps ps, int n, const char *const *values,
                    int *transient);
/* Makes a connection's commits not wait for the disk (claims and lease
 * renewals only; see pg_conn.c). */
int tk_pg_async_commit(tk_pg *pg, tk_pgconn *c);
/* Runs a statement without parameters (BEGIN, COMMIT, ...). */
int tk_pg_simple(tk_pg *pg, tk_pgconn *c, const char *sql);
/* Sends n notifications (channel, payload) in a transaction of their own
 * whose commit does not wait for the disk (tasker.notify_after).  Best
 * effort: a failure is counted, not reported. */
void tk_pg_notify(tk_pg *pg, tk_pgconn *c, size_t n, const char *const *channels,
                  const char *const *payloads);
/* Sets a TASKER_EDATABASE error from a failed result or connection. */
int tk_pg_error(tk_pg *pg, tk_pgconn *c, const PGresult *r, const char *what);
/* Copies `msg` with every occurrence of the password replaced by "***". */
char *tk_pg_scrub(const tk_pg *pg, const char *msg);
/* Fills target/password from a connection string; -1 if it does not parse
 * (then *why is libpq's message, scrubbed, to tk_free). */
int tk_pg_describe(tk_pg *pg, const char *conninfo, char **why);
/* Sleeps for the n-th reconnection backoff (50 ms doubling to 5 s) unless
 * `*stop` becomes set; returns the next n. */
unsigned tk_pg_backoff_sleep(tk_pg *pg, unsigned n, const int *stop);

/* Text-array literals for parameters ('{"a","b",NULL}'). */
typedef struct tk_buf {
    char *p;
    size_t len, cap;
    int oom;
} tk_buf;
void tk_buf_init(tk_buf *b);
void tk_buf_free(tk_buf *b);
void tk_buf_add(tk_buf *b, const char *s, size_t n);
void tk_buf_addf(tk_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` as one element (comma first unless first) quoted; NULL -> NULL. */
void tk_buf_elem(tk_buf *b, const char *s, int first);
/* Parses a text[] value; elements point into `out_mem` (tk_free it) and
 * SQL NULLs come back as NULL.  Returns the count or -1. */
long tk_pg_parse_array(const char *text, char ***elems, size_t **lens, char **out_mem);

/* ---- pg_listen.c ---- */
int tk_pg_listener_start(tk_pg *pg);
void tk_pg_listener_stop(tk_pg *pg);
/* Wakes the waiters of task `uuid` (NULL: every waiter) (lock held). */
void tk_pg_wake_waiters_locked(tk_pg *pg, const char *uuid);
/* Wakes everything that waits for ready steps (lock held). */
void tk_pg_wake_ready_locked(tk_pg *pg);
/* Arms the poll descriptor: now (ready) and/or a timer at `due_ms`. */
void tk_pg_poll_arm_locked(tk_pg *pg, int ready, int64_t due_ms);

/* ---- pg_claim.c ---- */
/* Claims up to `max` steps for `handlers` (a text[] literal) on `c`, not
 * from the namespaces in `skip_ns` (text[] literal or NULL) and, if
 * `only_ns` is not NULL, from that namespace only; the new claims are held
 * and returned in a list linked by qnext. */
int tk_pg_claim_batch(tk_pg *pg, tk_pgconn *c, const char *handlers, const char *skip_ns,
                      const char *only_ns, size_t max, int poll, tk_pgclaim **list, size_t *n);
/* Builds and holds the claims in a result (columns of tasker.claim from
 * `off`; only rows whose column `kind_col` is 1 when kind_col >= 0).
 * Returns how many, linked by qnext. */
size_t tk_pg_claims_from_result(tk_pg *pg, PGresult *r, int off, int kind_col, int64_t deadline,
                                int poll, tk_pgclaim **list);
/* The earliest time (Unix ms) a queue row for `handlers` becomes visible, 0 none. */
int64_t tk_pg_next_due(tk_pg *pg, tk_pgconn *c, const char *handlers);
/* Appends claims to the local queue for the worker threads (lock held). */
void tk_pg_enqueue_local_locked(tk_pg *pg, tk_pgclaim *list, size_t n);
/* How many more claims worker mode wants queued locally (lock held). */
size_t tk_pg_backlog_want_locked(const tk_pg *pg);
/* Gives claims no handler has seen back to the queue (lock not held;
 * `c` may be NULL: a pooled connection is used) and drops them. */
void tk_pg_give_back(tk_pg *pg, tk_pgconn *c, tk_pgclaim *list);
/* Gives claims back to the queue (lock not held). */
void tk_pg_release(tk_pg *pg, tk_pgconn *c, tk_pgclaim **cls, size_t n, int uncount);
/* Gives back, attempt counted, the leases of the steps this store holds:
 * all of them, or with `in_flight_only` those a handler still runs.  They
 * are marked lost, so a late completion is refused without a round trip.
 * Their keys are copied under the lock (a late completion may free a claim
 * as soon as it is let go). */
void tk_pg_release_held(tk_pg *pg, int in_flight_only);
/* Refreshes the cached handler lists from the coordinator (lock held). */
void tk_pg_handlers_refresh_locked(tk_pg *pg);
/* Drops a pin; when nothing pins the claim any more it is retired (kept
 * readable in the retained list).  Returns a claim to free with
 * tk_pg_claim_free once the lock is released, or NULL. */
tk_pgclaim *tk_pg_unpin_locked(tk_pg *pg, tk_pgclaim *cl, unsigned pin);
/* Frees a claim's memory (lock not needed: nobody else refers to it). */
void tk_pg_claim_free(tk_pgclaim *cl);
int tk_pg_heartbeat_start(tk_pg *pg);
void tk_pg_heartbeat_stop(tk_pg *pg);
/* Removes a claim from the held list (lock held). */
void tk_pg_unhold_locked(tk_pg *pg, tk_pgclaim *cl);

/* Pin reasons (bits of tk_pgclaim.pins). */
enum {
    TK_PIN_HELD = 1u,    /* the store still holds its lease */
    TK_PIN_HANDLER = 2u, /* a worker thread is running its handler */
    TK_PIN_WAITER = 4u,  /* a completing thread waits for the flush */
    TK_PIN_HEART = 8u    /* the heartbeat thread is renewing its lease */
};

/* ---- pg_flush.c ---- */
int tk_pg_flusher_start(tk_pg *pg);
/* Starts the flusher and heartbeat threads if not running (lock held). */
int tk_pg_runtime_start_locked(tk_pg *pg);
/* Records everything queued, then stops the flusher. */
void tk_pg_flusher_stop(tk_pg *pg);
/* Queues a claim whose completion is filled in for the flusher (lock held). */
void tk_pg_flush_push_locked(tk_pg *pg, tk_pgclaim *cl);

/* ---- pg_round.c: claims under the circuits ---- */
/* One claim round for worker mode (poll 0) or poll mode (poll 1): skips
 * handlers and namespaces whose circuit is open, feeds the namespace
 * circuits, and claims namespace by namespace while one of them fails.
 * Claims refused by their handler's circuit are given back.  *db_due: the
 * next due time (Unix ms) when fewer than `want` were found, else 0. */
int tk_pg_claim_round(tk_pg *pg, tk_pgconn *c, int poll, size_t want, tk_pgclaim **list,
                      size_t *n, int64_t *db_due);
/* Lets claims through their handler's circuit and resolves what metrics
 * and events need (coordinator lock taken here; pg->mu not held).  Claims
 * refused are unlinked from *list and given back; returns how many remain. */
size_t tk_pg_admit(tk_pg *pg, tk_pgconn *c, tk_pgclaim **list, size_t n);
/* Whether an error on `c` is the connection's (not the statement's). */
int tk_pg_conn_failed(const tk_pgconn *c);
/* Recomputes pg->plain and pg->brk_due (coordinator lock held). */
void tk_pg_circuits_scan_locked(tk_pg *pg);

/* ---- pg_obs.c: events, metrics, health ---- */
/* A handler starts (worker thread) or a poll-mode claim is handed out:
 * first, with pg->mu held, its start time and time limit are set; then,
 * with no lock held, it is counted and step_started is emitted. */
void tk_pg_obs_start_locked(tk_pg *pg, tk_pgclaim *cl);
void tk_pg_obs_started(tk_pg *pg, tasker_step *const *steps, size_t n);
/* Completions recorded (status[i] as in pg_flush.c); `attrib`: a batch
 * failed and was recorded namespace by namespace, so statuses say which
 * namespaces' queue operations work.  No lock held; claims pinned. */
void tk_pg_obs_flushed(tk_pg *pg, tk_pgclaim **cls, const int *status, size_t n, int attrib);
/* Claims given back without an outcome (their circuit trial ends). */
void tk_pg_obs_released(tk_pg *pg, tk_pgclaim *list);
void tk_pg_obs_task(tk_pg *pg, uint32_t type, const char *uuid, const char *ns,
                    const char *name);
/* A task this process cancelled: step_cancelled for each step the
 * cancellation stopped, then task_cancelled (`r`: tasker.cancel_task_ev). */
void tk_pg_obs_cancelled(tk_pg *pg, const char *uuid, PGresult *r);
void tk_pg_probe_close(tk_pg *pg);

/* ---- pg_heartbeat.c: handler time limits ---- */
/* Turns attempts past their time limit into TimeoutError failures queued
 * for the flusher (lock held); returns the next due time, 0 none. */
int64_t tk_pg_timeouts_locked(tk_pg *pg, int64_t now);
/* Makes `cl` a TimeoutError failure (lock held; the caller queues it);
 * -1 when out of memory (nothing changed). */
int tk_pg_timeout_fill_locked(tk_pg *pg, tk_pgclaim *cl);

/* ---- postgres.c ---- */
void tk_pg_unref(tk_pg *pg);

#endif
