/*
 * The postgres store: opening and closing, templates, and the task calls
 * (create, wait, get, cancel, retry, resolve, forget).  Steps are claimed
 * in pg_claim.c and completed in pg_flush.c; the SQL they call is in sql/.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/template.h"
#include "core/uuid.h"
#include "run/engine.h"
#include "store/pg_internal.h"

/* ---- lifetime ------------------------------------------------------------ */

static void pg_free(tk_pg *pg)
{
    tk_free(pg->namespaces);
    for (int i = 0; i < pg->n_pool; i++)
        tk_pg_disconnect(pg->pool[i]);
    pg->n_pool = 0;
    if (pg->epfd >= 0)
        close(pg->epfd);
    if (pg->evfd >= 0)
        close(pg->evfd);
    if (pg->tfd >= 0)
        close(pg->tfd);
    if (pg->wake_fd >= 0)
        close(pg->wake_fd);
    tk_pg_disconnect(pg->probe);
    pthread_mutex_destroy(&pg->probe_mu);
    pthread_mutex_destroy(&pg->mu);
    pthread_cond_destroy(&pg->drain_cv);
    pthread_cond_destroy(&pg->work_cv);
    pthread_cond_destroy(&pg->claimer_cv);
    pthread_cond_destroy(&pg->waiters_cv);
    pthread_cond_destroy(&pg->flush_cv);
    pthread_cond_destroy(&pg->flushed_cv);
    pthread_cond_destroy(&pg->heart_cv);
    tk_free(pg->worker_handlers);
    tk_free(pg->poll_handlers);
    tk_free(pg->conninfo);
    tk_free(pg->target);
    if (pg->password) {
        memset(pg->password, 0, strlen(pg->password));
        tk_free(pg->password);
    }
    tk_free(pg);
}

/* The store's memory lives until the coordinator has closed it and the
 * last claim handed out has been released. */
void tk_pg_unref(tk_pg *pg)
{
    if (atomic_fetch_sub(&pg->refs, 1) == 1)
        pg_free(pg);
}

static int check_schema(tk_pg *pg, tk_pgconn *c)
{
    PGresult *r = PQexec(c->conn, "SELECT max(version) FROM tasker.schema_version");
    int rc = TASKER_OK;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (st && (!strcmp(st, "42P01") || !strcmp(st, "3F000")))
            rc = tk_err(TASKER_EDATABASE, TASKER_CATEGORY_CONFIG,
                        json_pack("{s:s, s:i}", "database", pg->target, "schema_required",
                                  TK_PG_SCHEMA_VERSION),
                        "database %s has no tasker schema; run `tasker migrate "
                        "--database-url URL` first",
                        pg->target);
        else
            rc = tk_pg_error(pg, c, r, "checking the schema version");
    } else {
        int v = PQgetisnull(r, 0, 0) ? 0 : atoi(PQgetvalue(r, 0, 0));
        if (v < TK_PG_SCHEMA_VERSION)
            rc = tk_err(TASKER_EDATABASE, TASKER_CATEGORY_CONFIG,
                        json_pack("{s:s, s:i, s:i}", "database", pg->target, "schema_version", v,
                                  "schema_required", TK_PG_SCHEMA_VERSION),
                        "database %s has tasker schema version %d, this library needs %d; run "
                        "`tasker migrate --database-url URL`",
                        pg->target, v, TK_PG_SCHEMA_VERSION);
    }
    PQclear(r);
    return rc;
}

static int register_worker(tk_pg *pg, tk_pgconn *c)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    const char *vals[] = {host, pid};
    PGresult *r = PQexecParams(c->conn, "SELECT tasker.worker_register($1, $2::int)", 2, NULL,
                               vals, NULL, NULL, 0);
    int rc = TASKER_OK;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = tk_pg_error(pg, c, r, "registering this worker");
    else
        pg->worker_id = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

/* postgres.namespaces: names separated by commas (spaces around them are
 * dropped), kept as a JSON array for the connections' tasker.namespaces. */
static int parse_namespaces(tk_pg *pg, const char *list)
{
    if (!list || !*list)
        return TASKER_OK;
    json_t *arr = json_array();
    char *copy = tk_strdup(list);
    if (!arr || !copy) {
        json_decref(arr);
        tk_free(copy);
        return tk_enomem();
    }
    int rc = TASKER_OK;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        const char *why = tk_name_problem(tok, 0);
        if (why) {
            rc = tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                        json_pack("{s:s, s:s}", "key", "postgres.namespaces", "value", list),
                        "postgres.namespaces: namespace \"%s\" %s (expected names separated by "
                        "commas)",
                        tok, why);
            break;
        }
        if (json_array_append_new(arr, json_string(tok))) {
            rc = tk_enomem();
            break;
        }
    }
    tk_free(copy);
    if (rc == TASKER_OK && json_array_size(arr) > 0) {
        char *text = json_dumps(arr, JSON_COMPACT);
        pg->namespaces = text ? tk_strdup(text) : NULL;
        free(text);
        if (!pg->namespaces)
            rc = tk_enomem();
    }
    json_decref(arr);
    return rc;
}

int tk_pg_open(tk_pg **out, tasker_coordinator *coord, const struct tasker_config *cfg)
{
    *out = NULL;
    int rc = tk_pq_load();
    if (rc)
        return rc;
    const char *url = tk_config_str(cfg, TK_CFG_DATABASE_URL);
    if (!url || !*url)
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                      json_pack("{s:s}", "key", "database.url"),
                      "store = postgres needs database.url (a libpq connection string or "
                      "postgresql:// URL)");
    tk_pg *pg = tk_calloc(1, sizeof *pg);
    if (!pg)
        return tk_enomem();
    pg->epfd = pg->evfd = pg->tfd = pg->wake_fd = -1;
    pg->coord = coord;
    pg->lease_ms = 30000;
    pg->poll_ms = 1000;
    pg->claim_batch = 64;
    pg->flush_max = 256;
    atomic_init(&pg->refs, 1);
    atomic_init(&pg->plain, 1);
    pthread_mutex_init(&pg->probe_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&pg->mu, NULL);
    pthread_cond_init(&pg->drain_cv, &ca);
    pthread_cond_init(&pg->work_cv, &ca);
    pthread_cond_init(&pg->claimer_cv, &ca);
    pthread_cond_init(&pg->waiters_cv, &ca);
    pthread_cond_init(&pg->flush_cv, &ca);
    pthread_cond_init(&pg->flushed_cv, &ca);
    pthread_cond_init(&pg->heart_cv, &ca);
    pthread_condattr_destroy(&ca);

    char *why = NULL;
    tk_pgconn *c = NULL;
    if ((rc = parse_namespaces(pg, tk_config_str(cfg, TK_CFG_PG_NAMESPACES))))
        goto fail;
    if (!(pg->conninfo = tk_strdup(url))) {
        rc = tk_enomem();
        goto fail;
    }
    if (tk_pg_describe(pg, url, &why) < 0) {
        rc = tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                    json_pack("{s:s, s:s}", "key", "database.url", "message", why ? why : "?"),
                    "database.url is not a valid PostgreSQL connection string: %s",
                    why ? why : "out of memory");
        tk_free(why);
        goto fail;
    }
    if ((rc = tk_pg_connect(pg, &c)) || (rc = check_schema(pg, c)) ||
        (rc = register_worker(pg, c)))
        goto fail;
    tk_pg_pool_put(pg, c);
    c = NULL;
    if ((rc = tk_pg_listener_start(pg)))
        goto fail;
    *out = pg;
    return TASKER_OK;
fail:
    tk_pg_disconnect(c);
    pg_free(pg);
    return rc;
}

/* Frees retained handles (lock not held); returns how many. */
static void free_list(tk_pgclaim *l)
{
    while (l) {
        tk_pgclaim *n = l->qnext;
        tk_pg_claim_free(l);
        l = n;
    }
}

void tk_pg_close(tk_pg *pg)
{
    if (!pg)
        return;
    pthread_mutex_lock(&pg->mu);
    pg->closing = 1;
    pthread_mutex_unlock(&pg->mu);
    /* Worker threads finish the handlers they run; claims they had not
     * started go back to the queue. */
    tk_pg_stop(pg, 0);

    /* Completions already queued are recorded; later ones get ECLOSED. */
    pthread_mutex_lock(&pg->mu);
    pg->closed = 1;
    pthread_mutex_unlock(&pg->mu);
    tk_pg_flusher_stop(pg);
    tk_pg_heartbeat_stop(pg);

    /* Steps still held (deferred or poll-mode completions): give their
     * leases back so another worker runs them now rather than after the
     * lease expires.  Their handles stay valid; completing one returns
     * TASKER_ECLOSED. */
    tk_pg_release_held(pg, 0);

    tk_pg_listener_stop(pg);
    tk_pg_probe_close(pg);
    tk_pgconn *c = NULL;
    if (tk_pg_pool_get(pg, &c) == TASKER_OK) {
        char id[16];
        snprintf(id, sizeof id, "%d", pg->worker_id);
        const char *vals[] = {id};
        PQclear(PQexecParams(c->conn, "SELECT tasker.worker_stopped($1::int)", 1, NULL, vals,
                             NULL, NULL, 0));
        tk_pg_disconnect(c);
    }
    pthread_mutex_lock(&pg->mu);
    for (int i = 0; i < pg->n_pool; i++)
        tk_pg_disconnect(pg->pool[i]);
    pg->n_pool = 0;
    pg->coord = NULL;
    tk_pgclaim *ret = pg->ret_head;
    pg->ret_head = pg->ret_tail = NULL;
    pg->n_ret = 0;
    pthread_mutex_unlock(&pg->mu);
    free_list(ret);
    tk_pg_unref(pg);
}

/* ---- internal tuning (tests, benchmarks) ------------------------------------ */

int tk_pg_tune(tasker_coordinator *coord, const tk_pg_tuning *t)
{
    if (!coord || !coord->pg || !t)
        return tk_einval("tk_pg_tune: not a postgres coordinator");
    tk_pg *pg = coord->pg;
    pthread_mutex_lock(&pg->mu);
    if (t->lease_ms > 0)
        pg->lease_ms = t->lease_ms;
    if (t->poll_ms > 0)
        pg->poll_ms = t->poll_ms;
    if (t->claim_batch > 0)
        pg->claim_batch = t->claim_batch;
    if (t->flush_max > 0)
        pg->flush_max = t->flush_max;
    if (t->async_complete >= 0)
        pg->async_complete = t->async_complete != 0;
    pthread_cond_broadcast(&pg->heart_cv);
    pthread_mutex_unlock(&pg->mu);
    return TASKER_OK;
}

int tk_pg_stats(tasker_coordinator *coord, tk_pg_stat *out)
{
    if (!coord || !coord->pg || !out)
        return tk_einval("tk_pg_stats: not a postgres coordinator");
    tk_pg *pg = coord->pg;
    out->worker_id = pg->worker_id;
    out->fenced = atomic_load(&pg->n_fenced);
    out->completed = atomic_load(&pg->n_completed);
    out->claimed = atomic_load(&pg->n_claimed);
    out->claim_calls = atomic_load(&pg->n_claim_calls);
    out->flush_calls = atomic_load(&pg->n_flush_calls);
    return TASKER_OK;
}

/* ---- templates ---------------------------------------------------------------- */

int tk_pg_template_register(tk_pg *pg, const tasker_template *tmpl)
{
    char *json = NULL;
    int rc = tasker_template_to_json(&json, tmpl);
    if (rc)
        return rc;
    tk_pgconn *c = NULL;
    PGresult *r = NULL;
    if ((rc = tk_pg_pool_get(pg, &c)))
        goto out;
    /* The version comparison is done here (tk_version_cmp) with the
     * latest-version row locked, so concurrent registrations of several
     * versions settle on the highest. */
    if ((rc = tk_pg_simple(pg, c, "BEGIN")))
        goto out;
    const char *vals[] = {json};
    r = PQexecParams(c->conn,
                     "SELECT template_id, created, latest_version FROM "
                     "tasker.register_template($1::jsonb)",
                     1, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (st && !strcmp(st, "TK001"))
            rc = tk_err(TASKER_EEXIST, TASKER_CATEGORY_TEMPLATE,
                        json_pack("{s:s}", "template", tmpl->key),
                        "template %s is already registered with different steps; "
                        "register a new version",
                        tmpl->key);
        else
            rc = tk_pg_error(pg, c, r, "registering a template");
        PQclear(PQexec(c->conn, "ROLLBACK"));
        goto out;
    }
    const char *latest = PQgetisnull(r, 0, 2) ? NULL : PQgetvalue(r, 0, 2);
    if (latest && tk_version_cmp(tmpl->version, latest) > 0) {
        const char *v2[] = {PQgetvalue(r, 0, 0)};
        PGresult *u = PQexecParams(c->conn, "SELECT tasker.set_latest_template($1::int)", 1,
                                   NULL, v2, NULL, NULL, 0);
        if (PQresultStatus(u) != PGRES_TUPLES_OK) {
            rc = tk_pg_error(pg, c, u, "registering a template");
            PQclear(u);
            PQclear(PQexec(c->conn, "ROLLBACK"));
            goto out;
        }
        PQclear(u);
    }
    rc = tk_pg_simple(pg, c, "COMMIT");
out:
    PQclear(r);
    tk_pg_pool_put(pg, c);
    tk_free(json);
    return rc;
}

/* ---- tasks ---------------------------------------------------------------------- */

/* With handlers registered in this process, a task whose template is
 * registered here must have all of its handlers (as the memory store
 * requires).  A process with no handlers at all (a producer, the CLI)
 * creates tasks for workers elsewhere. */
static int check_handlers(tk_pg *pg, const tasker_task_request *req)
{
    tasker_coordinator *c = pg->coord;
    int rc = TASKER_OK;
    char key[800];
    pthread_mutex_lock(&c->lock);
    if (HASH_COUNT(c->handlers) > 0) {
        tk_reg *r = NULL;
        if (req->template_version) {
            snprintf(key, sizeof key, "%s/%s@%s", req->ns, req->name, req->template_version);
            HASH_FIND_STR(c->templates, key, r);
        } else {
            snprintf(key, sizeof key, "%s/%s", req->ns, req->name);
            tk_latest *l;
            HASH_FIND_STR(c->latest, key, l);
            r = l ? l->reg : NULL;
        }
        for (uint32_t i = 0; r && i < r->tmpl->n_steps; i++) {
            const tk_tstep *s = &r->tmpl->steps[i];
            tk_handler *h;
            HASH_FIND_STR(c->handlers, s->handler, h);
            if (!h) {
                rc = tk_err(TASKER_EHANDLER, TASKER_CATEGORY_HANDLER,
                            json_pack("{s:s, s:s, s:s}", "template", r->tmpl->key, "step",
                                      s->name, "handler", s->handler),
                            "no handler '%s' is registered for step '%s' of template '%s'",
                            s->handler, s->name, r->tmpl->key);
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int tk_pg_task_create(tk_pg *pg, const tasker_task_request *req, char *uuid_out)
{
    /* The request was checked by tasker_task_create. */
    char *ctx = NULL;
    if (req->context_json) {
        size_t clen = req->context_len ? req->context_len : strlen(req->context_json);
        if (!(ctx = tk_strndup(req->context_json, clen)))
            return tk_enomem();
    }
    int rc = check_handlers(pg, req);
    if (rc) {
        tk_free(ctx);
        return rc;
    }
    char prio[16];
    snprintf(prio, sizeof prio, "%d", (int)req->priority);
    const char *vals[] = {req->ns, req->name, req->template_version, ctx, req->idempotency_key,
                          prio};
    tk_pgconn *c = NULL;
    PGresult *r = NULL;
    for (int attempt = 0; attempt < 3; attempt++) {
        int transient = 0;
        if ((rc = tk_pg_pool_get(pg, &c)))
            break;
        r = tk_pg_run(pg, c, TK_PS_CREATE, 6, vals, &transient);
        if (r || !transient || PQstatus(c->conn) != CONNECTION_OK)
            break; /* a broken connection may have committed: do not repeat */
        tk_pg_pool_put(pg, c);
        c = NULL;
    }
    if (r) {
        int status = atoi(PQgetvalue(r, 0, 0));
        if (status == 0 || status == 1) {
            snprintf(uuid_out, TASKER_UUID_BUFSIZE, "%s", PQgetvalue(r, 0, 1));
            rc = TASKER_OK;
            if (status == 0) { /* a new task, not one found by its idempotency key */
                /* Its root steps are ready: wake the claimers, after the
                 * commit (sql/0006_notify.sql says why). */
                static const char *const ch[] = {"tasker_ready"}, *const pl[] = {""};
                tk_pg_notify(pg, c, 1, ch, pl);
                tk_pg_obs_task(pg, TASKER_EVENT_TASK_CREATED, uuid_out, req->ns, req->name);
            }
        } else if (status == 2) {
            rc = tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_TEMPLATE,
                        json_pack("{s:s, s:s, s:s?}", "namespace", req->ns, "name", req->name,
                                  "version", req->template_version),
                        "no template %s/%s%s%s is registered", req->ns, req->name,
                        req->template_version ? "@" : "",
                        req->template_version ? req->template_version : "");
        } else {
            rc = tk_err(TASKER_EEXIST, TASKER_CATEGORY_STATE,
                        json_pack("{s:s, s:s, s:s}", "idempotency_key", req->idempotency_key,
                                  "task", PQgetvalue(r, 0, 1), "template", PQgetvalue(r, 0, 2)),
                        "idempotency key '%s' is already used by task %s of template %s",
                        req->idempotency_key, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
        }
        PQclear(r);
    }
    tk_pg_pool_put(pg, c);
    tk_free(ctx);
    return rc;
}

static int no_task(const char *uuid)
{
    return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT, json_pack("{s:s}", "task", uuid),
                  "no task %s", uuid);
}

/* Runs a one-parameter-or-more statement on a pooled connection, trying
 * again on a transient failure.  Only for statements safe to repeat. */
static PGresult *run_pooled(tk_pg *pg, tk_ps ps, int n, const char *const *vals, int *rc)
{
    PGresult *r = NULL;
    for (int attempt = 0; attempt < 3; attempt++) {
        tk_pgconn *c = NULL;
        int transient = 0;
        if ((*rc = tk_pg_pool_get(pg, &c)))
            return NULL;
        r = tk_pg_run(pg, c, ps, n, vals, &transient);
        tk_pg_pool_put(pg, c);
        if (r || !transient)
            break;
    }
    *rc = r ? TASKER_OK : tasker_error_last()->code;
    return r;
}

static int task_state(tk_pg *pg, const char *uuid, tasker_task_state *st)
{
    int rc;
    const char *vals[] = {uuid};
    PGresult *r = run_pooled(pg, TK_PS_TASK_STATE, 1, vals, &rc);
    if (!r)
        return rc;
    if (PQntuples(r) == 0)
        rc = no_task(uuid);
    else
        *st = (tasker_task_state)atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

int tk_pg_task_wait(tk_pg *pg, tasker_task_state *state_out, const char *uuid, int timeout_ms)
{
    tk_pgwaiter w = {0};
    snprintf(w.uuid, sizeof w.uuid, "%s", uuid);
    /* Registered before the first read so a notification between the
     * read and the wait is not missed. */
    pthread_mutex_lock(&pg->mu);
    w.next = pg->waiters;
    pg->waiters = &w;
    pthread_mutex_unlock(&pg->mu);
    int64_t deadline = timeout_ms > 0 ? tk_mono_ns() + (int64_t)timeout_ms * 1000000 : 0;
    int rc;
    for (;;) {
        if ((rc = task_state(pg, uuid, state_out)))
            break;
        if (tasker_task_state_is_final(*state_out))
            break;
        int64_t now = tk_mono_ns();
        if (timeout_ms == 0 || (timeout_ms > 0 && now >= deadline)) {
            rc = TASKER_ETIMEOUT;
            break;
        }
        /* Notifications are the fast path; a read every 2 s covers any
         * that were lost with a connection. */
        int64_t until = now + 2000000000LL;
        if (timeout_ms > 0 && deadline < until)
            until = deadline;
        struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
        pthread_mutex_lock(&pg->mu);
        while (!w.signaled && !pg->closing && tk_mono_ns() < until)
            if (pthread_cond_timedwait(&pg->waiters_cv, &pg->mu, &ts) != 0)
                break;
        w.signaled = 0;
        int closing = pg->closing;
        pthread_mutex_unlock(&pg->mu);
        if (closing) {
            rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
            break;
        }
    }
    pthread_mutex_lock(&pg->mu);
    for (tk_pgwaiter **pp = &pg->waiters; *pp; pp = &(*pp)->next)
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    pthread_mutex_unlock(&pg->mu);
    if (rc == TASKER_ETIMEOUT)
        tk_err(TASKER_ETIMEOUT, TASKER_CATEGORY_STATE, json_pack("{s:s}", "task", uuid),
               "task %s did not finish within %d ms", uuid, timeout_ms);
    return rc;
}

int tk_pg_task_get(tk_pg *pg, char **json_out, const char *uuid)
{
    int rc;
    const char *vals[] = {uuid};
    PGresult *r = run_pooled(pg, TK_PS_TASK_JSON, 1, vals, &rc);
    if (!r)
        return rc;
    if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
        rc = no_task(uuid);
    } else {
        /* Re-encoded compactly, as the memory store writes it. */
        json_t *j = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!s)
            rc = tk_enomem();
        else if (!(*json_out = tk_strdup(s)))
            rc = tk_enomem();
        free(s);
    }
    PQclear(r);
    return rc;
}

/* Maps the (status, state) row of an operator function to a result. */
static int op_status(PGresult *r, const char *uuid, const char *what, const char *step)
{
    int status = atoi(PQgetvalue(r, 0, 0));
    const char *state = PQgetisnull(r, 0, 1) ? "?" : PQgetvalue(r, 0, 1);
    switch (status) {
    case 0:
        return TASKER_OK;
    case 1:
        return no_task(uuid);
    case 3:
        return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s, s:s}", "task", uuid, "step", step ? step : ""),
                      "task %s has no step '%s'", uuid, step ? step : "");
    default:
        if (step)
            return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                          json_pack("{s:s, s:s, s:s}", "task", uuid, "step", step, "state", state),
                          "step '%s' is %s; only a step in error can be resolved", step, state);
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s}", "task", uuid, "state", state), "task %s is %s; %s",
                      uuid, state, what);
    }
}

static int task_op(tk_pg *pg, tk_ps ps, const char *uuid, const char *what)
{
    int rc;
    const char *vals[] = {uuid};
    PGresult *r = run_pooled(pg, ps, 1, vals, &rc);
    if (!r)
        return rc;
    rc = op_status(r, uuid, what, NULL);
    PQclear(r);
    return rc;
}

int tk_pg_task_cancel(tk_pg *pg, const char *uuid)
{
    int rc;
    const char *vals[] = {uuid};
    PGresult *r = run_pooled(pg, TK_PS_CANCEL, 1, vals, &rc);
    if (!r)
        return rc;
    rc = op_status(r, uuid, "it cannot be cancelled", NULL);
    /* tasker.cancel_task_ev adds the task's names and the steps it
     * cancelled, for the events. */
    if (rc == TASKER_OK)
        tk_pg_obs_cancelled(pg, uuid, r);
    PQclear(r);
    return rc;
}

int tk_pg_task_retry(tk_pg *pg, const char *uuid)
{
    return task_op(pg, TK_PS_RETRY, uuid, "only a task in error can be retried");
}

int tk_pg_step_resolve(tk_pg *pg, const char *uuid, const char *step_name, const char *result,
                       size_t len)
{
    char *copy = NULL;
    if (result) {
        if (!len)
            len = strlen(result);
        json_error_t jerr;
        json_t *j = json_loadb(result, len, JSON_DECODE_ANY, &jerr);
        if (!j)
            return tk_einval("tasker_step_resolve: result is not valid JSON: %s", jerr.text);
        json_decref(j);
        if (!(len == 4 && !memcmp(result, "null", 4)) && !(copy = tk_strndup(result, len)))
            return tk_enomem();
    }
    int rc;
    const char *vals[] = {uuid, step_name, copy};
    PGresult *r = run_pooled(pg, TK_PS_RESOLVE, 3, vals, &rc);
    if (r) {
        rc = op_status(r, uuid, NULL, step_name);
        PQclear(r);
    }
    tk_free(copy);
    return rc;
}

int tk_pg_task_forget(tk_pg *pg, const char *uuid)
{
    /* A handle this process still holds keeps its task.  Completions being
     * recorded right now are not "held": the task may already show as
     * finished before the flusher has handed their status back, so wait
     * for them. */
    size_t held;
    pthread_mutex_lock(&pg->mu);
    for (;;) {
        size_t flushing = 0;
        held = 0;
        for (tk_pgclaim *cl = pg->held; cl; cl = cl->next) {
            if (cl->state == TK_CL_FINISHED || strcmp(cl->view.task_uuid, uuid))
                continue;
            if (cl->state == TK_CL_FLUSHING)
                flushing++;
            else
                held++;
        }
        if (!flushing)
            break;
        pthread_cond_wait(&pg->flushed_cv, &pg->mu);
    }
    pthread_mutex_unlock(&pg->mu);
    tasker_task_state st;
    if (held && task_state(pg, uuid, &st) == TASKER_OK && !tasker_task_state_is_final(st))
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s}", "task", uuid, "state", tasker_task_state_name(st)),
                      "task %s is %s; only a finished task can be forgotten", uuid,
                      tasker_task_state_name(st));
    if (held)
        return tk_err(TASKER_EBUSY, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:I}", "task", uuid, "steps_held", (json_int_t)held),
                      "task %s: %zu step(s) are still held by handlers", uuid, held);
    int rc;
    const char *vals[] = {uuid};
    PGresult *r = run_pooled(pg, TK_PS_FORGET, 1, vals, &rc);
    if (!r)
        return rc;
    rc = op_status(r, uuid, "only a finished task can be forgotten", NULL);
    PQclear(r);
    if (rc)
        return rc;
    /* Finished handles of the task go now. */
    tk_pgclaim *gone = NULL;
    pthread_mutex_lock(&pg->mu);
    tk_pgclaim **pp = &pg->ret_head, *last = NULL;
    while (*pp) {
        tk_pgclaim *cl = *pp;
        if (!strcmp(cl->view.task_uuid, uuid)) {
            *pp = cl->qnext;
            cl->qnext = gone;
            gone = cl;
            pg->n_ret--;
        } else {
            last = cl;
            pp = &cl->qnext;
        }
    }
    pg->ret_tail = last;
    pthread_mutex_unlock(&pg->mu);
    free_list(gone);
    return TASKER_OK;
}
