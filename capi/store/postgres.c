/* Placeholder until the postgres store lands: refuses to open, so that
 * store = postgres fails with a clear error instead of misbehaving. */
#include "store/postgres.h"

#include "core/error.h"

int tk_pg_open(tk_pg **out, tasker_coordinator *coord, const struct tasker_config *cfg)
{
    (void)coord;
    (void)cfg;
    *out = NULL;
    return tk_err(TASKER_ENOTSUP, TASKER_CATEGORY_CONFIG, json_pack("{s:s}", "key", "store"),
                  "store 'postgres' is not available in this build; use store = memory");
}

void tk_pg_close(tk_pg *pg) { (void)pg; }
int tk_pg_template_register(tk_pg *pg, const tasker_template *t) { (void)pg; (void)t; return TASKER_ENOTSUP; }
int tk_pg_task_create(tk_pg *pg, const tasker_task_request *r, char *u) { (void)pg; (void)r; (void)u; return TASKER_ENOTSUP; }
int tk_pg_task_wait(tk_pg *pg, tasker_task_state *s, const char *u, int t) { (void)pg; (void)s; (void)u; (void)t; return TASKER_ENOTSUP; }
int tk_pg_task_get(tk_pg *pg, char **j, const char *u) { (void)pg; (void)j; (void)u; return TASKER_ENOTSUP; }
int tk_pg_task_cancel(tk_pg *pg, const char *u) { (void)pg; (void)u; return TASKER_ENOTSUP; }
int tk_pg_task_retry(tk_pg *pg, const char *u) { (void)pg; (void)u; return TASKER_ENOTSUP; }
int tk_pg_task_forget(tk_pg *pg, const char *u) { (void)pg; (void)u; return TASKER_ENOTSUP; }
int tk_pg_step_resolve(tk_pg *pg, const char *u, const char *s, const char *r, size_t l) { (void)pg; (void)u; (void)s; (void)r; (void)l; return TASKER_ENOTSUP; }
int tk_pg_start(tk_pg *pg, unsigned n) { (void)pg; (void)n; return TASKER_ENOTSUP; }
int tk_pg_stop(tk_pg *pg, int d) { (void)pg; (void)d; return TASKER_ENOTSUP; }
int tk_pg_fd(tk_pg *pg, int *f) { (void)pg; (void)f; return TASKER_ENOTSUP; }
int tk_pg_claim(tk_pg *pg, tasker_step **s, size_t *n, size_t m) { (void)pg; (void)s; (void)n; (void)m; return TASKER_ENOTSUP; }
int tk_pg_step_complete(tasker_step *s, int ok, const char *r, size_t l, const tasker_failure *f) { (void)s; (void)ok; (void)r; (void)l; (void)f; return TASKER_ENOTSUP; }
