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

#endif
