/*
 * The postgres store, seen from the coordinator.  With store = postgres the
 * coordinator keeps its handler and template registries in memory (for
 * validation and to know which handlers this process runs) and sends every
 * task and step operation here.
 *
 * Step handles of this store are `struct tasker_step` with `view` set: the
 * claim's data (names, context, dependency results) is copied into the view
 * when the step is claimed, so accessors need no database round trip.
 */
#ifndef TASKER_STORE_POSTGRES_H
#define TASKER_STORE_POSTGRES_H

#include <stddef.h>

#include "core/config.h"
#include "tasker.h"

typedef struct tk_pg tk_pg;
struct tk_reg;

/* What a handler sees of a step claimed from PostgreSQL (owned by the claim). */
typedef struct tk_claim_view {
    const char *name, *handler, *uuid, *task_uuid, *ns, *template_name;
    const char *context;
    size_t context_len;
    uint32_t max_attempts;
    size_t n_deps;
    const char *const *dep_names;
    const char *const *dep_results; /* JSON text, "null" when none */
    const size_t *dep_result_lens;
} tk_claim_view;

/* Connects (and checks the schema version).  Errors name what was wrong;
 * the connection string's password never appears in them. */
int tk_pg_open(tk_pg **out, tasker_coordinator *coord, const struct tasker_config *cfg);
/* Stops the store's threads, releases the leases of steps not completed, disconnects. */
void tk_pg_close(tk_pg *pg);

/* Stores a registered (finalized) template; identical re-registration is a no-op. */
int tk_pg_template_register(tk_pg *pg, const tasker_template *tmpl);
int tk_pg_task_create(tk_pg *pg, const tasker_task_request *req, char *uuid_out);
int tk_pg_task_wait(tk_pg *pg, tasker_task_state *state_out, const char *uuid, int timeout_ms);
int tk_pg_task_get(tk_pg *pg, char **json_out, const char *uuid);
int tk_pg_task_cancel(tk_pg *pg, const char *uuid);
int tk_pg_task_retry(tk_pg *pg, const char *uuid);
int tk_pg_task_forget(tk_pg *pg, const char *uuid);
int tk_pg_step_resolve(tk_pg *pg, const char *uuid, const char *step_name, const char *result,
                       size_t len);

/* Worker threads for handlers with a callback; poll mode for the others. */
int tk_pg_start(tk_pg *pg, unsigned n_threads);
int tk_pg_stop(tk_pg *pg, int drain_ms);
int tk_pg_fd(tk_pg *pg, int *fd_out);
int tk_pg_claim(tk_pg *pg, tasker_step **steps_out, size_t *n_out, size_t max);

/* Completion of a claimed step (step->view != NULL).  `ok` succeed with
 * `result` (JSON or NULL), else fail with `failure`. */
int tk_pg_step_complete(tasker_step *step, int ok, const char *result, size_t len,
                        const tasker_failure *failure);
/* Successes of several claimed steps (all step->view != NULL), recorded in
 * one transaction: every completion is queued before any is waited for.
 * rc_out[i] is what tasker_step_succeed would have returned. */
int tk_pg_steps_succeed(int *rc_out, tasker_step *const *steps, const char *const *results,
                        const size_t *lens, size_t n);

/*
 * Internal tuning for tests and benchmarks (no config keys yet; see
 * notes/postgres-requests.md).  Fields <= 0 (async_complete < 0) keep the
 * current value.
 *   lease_ms        lease of a claimed step, renewed every lease_ms/3 (30000)
 *   poll_ms         fallback poll interval when no notification comes (1000)
 *   claim_batch     most steps one claim takes (64)
 *   flush_max       most completions recorded in one transaction (256)
 *   async_complete  1: tasker_step_succeed/fail return before the flush
 *                   (refusals are only counted); 0: they wait (default)
 */
typedef struct tk_pg_tuning {
    int lease_ms, poll_ms, claim_batch, flush_max, async_complete;
} tk_pg_tuning;
int tk_pg_tune(tasker_coordinator *coord, const tk_pg_tuning *t);

/* Counters of this process's store. */
typedef struct tk_pg_stat {
    int worker_id;        /* tasker.workers id of this coordinator */
    unsigned long fenced; /* completions refused because the lease was lost */
    unsigned long completed, claimed;
    unsigned long claim_calls, flush_calls; /* round trips: claimed/claim_calls = mean batch */
} tk_pg_stat;
int tk_pg_stats(tasker_coordinator *coord, tk_pg_stat *out);

/*
 * Observability hooks for capi/obs/metrics.c and status.c.  A probe is
 * taken without the coordinator's lock (one short query, on a connection
 * of its own, bounded by a 2 s connect and statement timeout) and then
 * read under it.
 */
struct json_t;
typedef struct tk_pg_probe {
    int reachable;               /* the probe query ran */
    struct json_t *namespaces;   /* {NS: {"queue_depth", "oldest_ready_age_ms"}}, never NULL
                                    after a take (values null when unreachable) */
    char *depth_text;            /* tasker_queue_depth samples ("" when unreachable) */
    char *text;                  /* the store's own metric families */
    size_t in_flight, delayed;   /* claims held here; queue rows waiting for a retry */
    unsigned long fenced, store_errors;
} tk_pg_probe;
void tk_pg_probe_take(tk_pg *pg, tk_pg_probe *out);
void tk_pg_probe_free(tk_pg_probe *p);
/* tasker_status_json for the postgres store (from the database). */
int tk_pg_status_json(tk_pg *pg, char **json_out);

#endif
