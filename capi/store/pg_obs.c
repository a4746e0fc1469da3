/*
 * Postgres store: events, metrics, health and status (issue 5).
 *
 * Events and counters come from this process's own actions, as the store
 * learns their outcome: a handler starting (worker thread or poll-mode
 * claim), a completion recorded by the flusher (with what it did: retried,
 * dead-lettered, task finished), a task created or cancelled here.  Steps
 * run by other processes produce their events there.  Everything is
 * pushed under the coordinator's lock, the single-producer rule of
 * obs/events.c, exactly as the memory store does; pg->mu is never held
 * then (lock order: pg->mu before the coordinator's lock).
 *
 * An event names its template and step through this process's
 * registration of the same template version (templates are immutable
 * per version); a process that did not register the template counts the
 * step but emits no event for it.
 *
 * Health and metrics read the database through a probe: one query on a
 * connection of its own with a 2 s connect and statement timeout, taken
 * before the coordinator's lock.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "core/uuid.h"
#include "run/engine.h"
#include "store/pg_internal.h"

enum { ST_OK = 0, ST_STALE = 1, ST_CANCELLED = 2 };

/* ---- events -------------------------------------------------------------- */

static void emit(tasker_coordinator *c, uint32_t type, const tk_reg *reg, int32_t step,
                 const char *task_uuid, const char *step_uuid, uint32_t attempt,
                 const char *err_class, const char *err_msg)
{
    if (!(c->event_mask & type) || !reg)
        return;
    tk_evrec r;
    memset(&r, 0, sizeof r);
    r.slot.type = type;
    r.slot.attempt = attempt;
    r.slot.at = tk_now_ns();
    r.slot.reg = reg;
    r.slot.step = step;
    if (tk_uuid_parse(r.slot.task_uuid, task_uuid) < 0)
        return;
    if (step >= 0 && (!step_uuid || tk_uuid_parse(r.slot.step_uuid, step_uuid) < 0))
        return;
    for (struct tasker_subscription *sub = c->subs; sub; sub = sub->next) {
        if (!(sub->mask & type))
            continue;
        r.side.err_class = err_class ? tk_strdup(err_class) : NULL;
        r.side.err_msg = err_msg ? tk_strdup(err_msg) : NULL;
        tk_event_push(sub, &r);
    }
}

/* A registration naming ns/name for task events (any version: they carry
 * no step). */
static const tk_reg *task_reg(tasker_coordinator *c, const tk_reg *known, const char *ns,
                              const char *name)
{
    if (known)
        return known;
    char key[600];
    snprintf(key, sizeof key, "%s/%s", ns, name);
    tk_latest *l;
    HASH_FIND_STR(c->latest, key, l);
    return l ? l->reg : NULL;
}

void tk_pg_obs_start_locked(tk_pg *pg, tk_pgclaim *cl)
{
    int64_t mono = tk_mono_ns();
    cl->started_mono = mono;
    if (cl->timeout_ms && !cl->base.done && !cl->timed_out) {
        cl->due_mono = mono + (int64_t)cl->timeout_ms * 1000000;
        if (!pg->tmo_next || cl->due_mono < pg->tmo_next) {
            pg->tmo_next = cl->due_mono;
            pthread_cond_broadcast(&pg->heart_cv); /* an earlier time limit to watch */
        }
    }
}

void tk_pg_obs_started(tk_pg *pg, tasker_step *const *steps, size_t n)
{
    tasker_coordinator *c = pg->coord;
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < n; i++) {
        tk_pgclaim *cl = (tk_pgclaim *)(void *)steps[i];
        if (c->metrics_on && cl->h) {
            tk_handler_metrics *m = &cl->h->metrics;
            m->started++;
            tk_hist_add(&m->queue_wait, (int64_t)(cl->queue_wait_ms * 1e6) +
                                            (cl->started_mono - cl->claimed_mono));
        }
        emit(c, TASKER_EVENT_STEP_STARTED, cl->reg, cl->idx, cl->view.task_uuid, cl->view.uuid,
             cl->base.attempt, NULL, NULL);
    }
    pthread_mutex_unlock(&c->lock);
}

static void task_finished(tasker_coordinator *c, tk_pgclaim *cl)
{
    tk_nsobj *ns = c->metrics_on ? tk_nsobj_get(c, cl->view.ns) : NULL;
    const tk_reg *reg = task_reg(c, cl->reg, cl->view.ns, cl->view.template_name);
    int64_t age = (int64_t)(cl->task_age_ms * 1e6);
    if (cl->task_state == TASKER_TASK_COMPLETE) {
        if (ns) {
            ns->completed++;
            tk_hist_add(&ns->task_duration, age);
        }
        emit(c, TASKER_EVENT_TASK_COMPLETED, reg, -1, cl->view.task_uuid, NULL, 0, NULL, NULL);
    } else if (cl->task_state == TASKER_TASK_ERROR) {
        if (ns) {
            ns->failed++;
            tk_hist_add(&ns->task_duration, age);
        }
        emit(c, TASKER_EVENT_TASK_FAILED, reg, -1, cl->view.task_uuid, NULL, 0, NULL, NULL);
    }
}

/* One recorded outcome: the memory store's tk_obs_step and step_set. */
static void recorded(tasker_coordinator *c, tk_pgclaim *cl, int64_t mono)
{
    tk_handler *h = cl->h;
    tk_handler_metrics *m = c->metrics_on && h ? &h->metrics : NULL;
    int64_t dur = cl->started_mono && cl->ended_mono > cl->started_mono
                      ? cl->ended_mono - cl->started_mono
                      : 0;
    if (cl->ok) {
        if (m) {
            m->succeeded++;
            tk_hist_add(&m->duration, dur);
        }
        emit(c, TASKER_EVENT_STEP_SUCCEEDED, cl->reg, cl->idx, cl->view.task_uuid, cl->view.uuid,
             cl->base.attempt, NULL, NULL);
    } else {
        int retry = cl->step_state == TASKER_STEP_WAITING_FOR_RETRY;
        int dead = cl->step_state == TASKER_STEP_ERROR;
        if (m) {
            m->failed++;
            m->timed_out += cl->timed_out;
            tk_hist_add(&m->duration, dur);
            m->retried += retry;
            m->dead_lettered += dead;
        }
        emit(c, TASKER_EVENT_STEP_FAILED, cl->reg, cl->idx, cl->view.task_uuid, cl->view.uuid,
             cl->base.attempt, cl->f_class, cl->f_message);
        if (retry || dead)
            emit(c, retry ? TASKER_EVENT_STEP_RETRY_SCHEDULED : TASKER_EVENT_STEP_DEAD_LETTERED,
                 cl->reg, cl->idx, cl->view.task_uuid, cl->view.uuid, cl->base.attempt,
                 dead ? cl->f_class : NULL, dead ? cl->f_message : NULL);
    }
    if (h) {
        if (c->breakers_on || h->breaker->state != TASKER_CIRCUIT_CLOSED)
            tk_breaker_result(c, h->breaker, cl->ok, mono);
        else if (cl->brk)
            tk_breaker_release(c, h->breaker);
    }
    if (cl->task_finished)
        task_finished(c, cl);
}

void tk_pg_obs_flushed(tk_pg *pg, tk_pgclaim **cls, const int *status, size_t n, int attrib)
{
    tasker_coordinator *c = pg->coord;
    int64_t mono = tk_mono_ns();
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < n; i++) {
        tk_pgclaim *cl = cls[i];
        if (status[i] == ST_OK)
            recorded(c, cl, mono);
        else if (cl->brk && cl->h)
            tk_breaker_release(c, cl->h->breaker); /* no outcome: refused or not recorded */
    }
    if (attrib) {
        /* The batch was recorded namespace by namespace: each namespace
         * whose entries failed has broken queue operations. */
        for (size_t i = 0; i < n; i++) {
            size_t j = 0;
            while (j < i && strcmp(cls[j]->view.ns, cls[i]->view.ns))
                j++;
            if (j < i)
                continue;
            int ok = 1;
            for (size_t k = i; k < n; k++)
                if (!strcmp(cls[k]->view.ns, cls[i]->view.ns) && status[k] < 0)
                    ok = 0;
            tk_nsobj *o;
            HASH_FIND_STR(c->namespaces, cls[i]->view.ns, o);
            if (o && (c->breakers_on || o->breaker->state != TASKER_CIRCUIT_CLOSED))
                tk_breaker_result(c, o->breaker, ok, mono);
        }
    }
    tk_pg_circuits_scan_locked(pg);
    pthread_mutex_unlock(&c->lock);
}

void tk_pg_obs_released(tk_pg *pg, tk_pgclaim *list)
{
    int any = 0;
    for (tk_pgclaim *cl = list; cl && !any; cl = cl->qnext)
        any = cl->brk && cl->h;
    if (!any)
        return;
    tasker_coordinator *c = pg->coord;
    pthread_mutex_lock(&c->lock);
    for (tk_pgclaim *cl = list; cl; cl = cl->qnext) {
        if (cl->brk && cl->h)
            tk_breaker_release(c, cl->h->breaker);
        cl->brk = 0;
    }
    pthread_mutex_unlock(&c->lock);
}

void tk_pg_obs_task(tk_pg *pg, uint32_t type, const char *uuid, const char *ns, const char *name)
{
    tasker_coordinator *c = pg->coord;
    if (!c || !ns || !name)
        return;
    pthread_mutex_lock(&c->lock);
    tk_nsobj *o = c->metrics_on ? tk_nsobj_get(c, ns) : NULL;
    if (o && type == TASKER_EVENT_TASK_CREATED)
        o->created++;
    else if (o && type == TASKER_EVENT_TASK_CANCELLED)
        o->cancelled++;
    emit(c, type, task_reg(c, NULL, ns, name), -1, uuid, NULL, 0, NULL, NULL);
    pthread_mutex_unlock(&c->lock);
}

void tk_pg_obs_cancelled(tk_pg *pg, const char *uuid, PGresult *r)
{
    tasker_coordinator *c = pg->coord;
    if (!c || PQntuples(r) < 1 || PQgetisnull(r, 0, 2))
        return;
    const char *ns = PQgetvalue(r, 0, 2), *name = PQgetvalue(r, 0, 3);
    char key[800];
    snprintf(key, sizeof key, "%s/%s@%s", ns, name, PQgetvalue(r, 0, 4));
    pthread_mutex_lock(&c->lock);
    tk_reg *reg = NULL;
    HASH_FIND_STR(c->templates, key, reg);
    for (int i = 1; reg && i < PQntuples(r); i++) {
        int idx = atoi(PQgetvalue(r, i, 5));
        if (idx >= 0 && (uint32_t)idx < reg->tmpl->n_steps)
            emit(c, TASKER_EVENT_STEP_CANCELLED, reg, idx, uuid, PQgetvalue(r, i, 6),
                 (uint32_t)strtoul(PQgetvalue(r, i, 7), NULL, 10), NULL, NULL);
    }
    pthread_mutex_unlock(&c->lock);
    tk_pg_obs_task(pg, TASKER_EVENT_TASK_CANCELLED, uuid, ns, name);
}

/* ---- probe: health and metrics ------------------------------------------------ */

void tk_pg_probe_close(tk_pg *pg)
{
    pthread_mutex_lock(&pg->probe_mu);
    tk_pg_disconnect(pg->probe);
    pg->probe = NULL;
    pthread_mutex_unlock(&pg->probe_mu);
}

/* A label value with \, " and newline escaped (exposition format). */
static void esc_label(tk_sb *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            tk_sb_printf(b, "\\%c", *s);
        else if (*s == '\n')
            tk_sb_printf(b, "\\n");
        else
            tk_sb_printf(b, "%c", *s);
    }
}

/* The probe query; NULL when it failed (*reachable says whether the
 * database answered at all).  probe_mu held. */
static PGresult *probe_query(tk_pg *pg, int *reachable)
{
    *reachable = 0;
    /* A kept connection may have died with a server restart: one retry on
     * a fresh one tells "was restarted" from "is down". */
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!pg->probe) {
            if (tk_pg_connect_within(pg, &pg->probe, "2") != TASKER_OK) {
                pg->probe = NULL;
                return NULL;
            }
            if (tk_pg_simple(pg, pg->probe, "SET statement_timeout = 2000") != TASKER_OK) {
                tk_pg_disconnect(pg->probe);
                pg->probe = NULL;
                return NULL;
            }
        }
        PGresult *r = tk_pg_run(pg, pg->probe, TK_PS_PROBE, 0, NULL, NULL);
        if (r) {
            *reachable = 1;
            return r;
        }
        if (!tk_pg_conn_failed(pg->probe)) {
            *reachable = 1; /* it answered, with an error (e.g. the timeout) */
            return NULL;
        }
        tk_pg_disconnect(pg->probe);
        pg->probe = NULL;
    }
    return NULL;
}

static void probe_text(tk_pg *pg, tk_pg_probe *out, int probe_up)
{
    tk_sb b;
    tk_sb_init(&b, 2048);
    const struct {
        const char *name;
        int up;
    } conns[] = {{"listener", atomic_load(&pg->up_listener)},
                 {"claimer", atomic_load(&pg->up_claimer)},
                 {"flusher", atomic_load(&pg->up_flusher)},
                 {"heartbeat", atomic_load(&pg->up_heart)},
                 {"probe", probe_up}};
    tk_sb_printf(&b, "# HELP tasker_store_connection_up 1 while the store's thread holds its "
                     "database connection (0: not connected, or the thread is not running).\n"
                     "# TYPE tasker_store_connection_up gauge\n");
    for (size_t i = 0; i < sizeof conns / sizeof conns[0]; i++)
        tk_sb_printf(&b, "tasker_store_connection_up{connection=\"%s\"} %d\n", conns[i].name,
                     conns[i].up);
    pthread_mutex_lock(&pg->mu);
    int idle = pg->n_pool;
    size_t local = pg->n_lq;
    pthread_mutex_unlock(&pg->mu);
    tk_sb_printf(&b, "# HELP tasker_store_pool_idle_connections Idle pooled connections for "
                     "application calls.\n# TYPE tasker_store_pool_idle_connections gauge\n"
                     "tasker_store_pool_idle_connections %d\n", idle);
    tk_sb_printf(&b, "# HELP tasker_store_connects_total Connection attempts to the database, by "
                     "outcome.\n# TYPE tasker_store_connects_total counter\n"
                     "tasker_store_connects_total{outcome=\"ok\"} %lu\n"
                     "tasker_store_connects_total{outcome=\"failed\"} %lu\n",
                 atomic_load(&pg->n_connects), atomic_load(&pg->n_connect_failures));
    tk_sb_printf(&b, "# HELP tasker_store_round_trips_total Claim and completion statements sent "
                     "to the database.\n# TYPE tasker_store_round_trips_total counter\n"
                     "tasker_store_round_trips_total{operation=\"claim\"} %lu\n"
                     "tasker_store_round_trips_total{operation=\"flush\"} %lu\n",
                 atomic_load(&pg->n_claim_calls), atomic_load(&pg->n_flush_calls));
    tk_sb_printf(&b, "# HELP tasker_steps_claimed_total Steps this process claimed from the "
                     "database.\n# TYPE tasker_steps_claimed_total counter\n"
                     "tasker_steps_claimed_total %lu\n", atomic_load(&pg->n_claimed));
    tk_sb_printf(&b, "# HELP tasker_steps_recorded_total Completions this process recorded in the "
                     "database.\n# TYPE tasker_steps_recorded_total counter\n"
                     "tasker_steps_recorded_total %lu\n", atomic_load(&pg->n_completed));
    tk_sb_printf(&b, "# HELP tasker_steps_claimed_queued Claimed steps waiting here for a worker "
                     "thread.\n# TYPE tasker_steps_claimed_queued gauge\n"
                     "tasker_steps_claimed_queued %zu\n", local);
    if (b.oom) {
        tk_free(b.buf);
        return;
    }
    out->text = b.buf;
}

void tk_pg_probe_take(tk_pg *pg, tk_pg_probe *out)
{
    memset(out, 0, sizeof *out);
    json_t *nss = json_object();
    tk_sb d;
    tk_sb_init(&d, 512);
    pthread_mutex_lock(&pg->probe_mu);
    int reachable = 0;
    PGresult *r = probe_query(pg, &reachable);
    int probe_up = pg->probe != NULL;
    pthread_mutex_unlock(&pg->probe_mu);
    out->reachable = reachable;
    for (int i = 0; r && i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        long long depth = strtoll(PQgetvalue(r, i, 1), NULL, 10);
        json_object_set_new(
            nss, name,
            json_pack("{s:I, s:o}", "queue_depth", (json_int_t)depth, "oldest_ready_age_ms",
                      PQgetisnull(r, i, 2) ? json_null()
                                           : json_real(strtod(PQgetvalue(r, i, 2), NULL))));
        out->delayed += (size_t)strtoull(PQgetvalue(r, i, 3), NULL, 10);
        tk_sb_printf(&d, "tasker_queue_depth{namespace=\"");
        esc_label(&d, name);
        tk_sb_printf(&d, "\"} %lld\n", depth);
    }
    PQclear(r);
    /* Namespaces registered here and not (yet) known to the database, or
     * all of them when it could not be asked: depth unknown. */
    tasker_coordinator *c = pg->coord;
    pthread_mutex_lock(&c->lock);
    for (tk_nsobj *o = c->namespaces; o; o = o->hh.next)
        if (!json_object_get(nss, o->name))
            json_object_set_new(nss, o->name,
                                json_pack("{s:n, s:n}", "queue_depth", "oldest_ready_age_ms"));
    pthread_mutex_unlock(&c->lock);
    out->namespaces = nss;
    if (d.oom) {
        tk_free(d.buf);
        d.buf = NULL;
    }
    out->depth_text = d.buf;
    pthread_mutex_lock(&pg->mu);
    out->in_flight = pg->n_out;
    pthread_mutex_unlock(&pg->mu);
    out->fenced = atomic_load(&pg->n_fenced);
    out->store_errors = atomic_load(&pg->n_errors);
    probe_text(pg, out, probe_up);
}

void tk_pg_probe_free(tk_pg_probe *p)
{
    json_decref(p->namespaces);
    tk_free(p->depth_text);
    tk_free(p->text);
    memset(p, 0, sizeof *p);
}

/* ---- status ----------------------------------------------------------------------- */

static PGresult *query(PGconn *conn, const char *sql, int *ok)
{
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        *ok = 0;
        PQclear(r);
        return NULL;
    }
    return r;
}

int tk_pg_status_json(tk_pg *pg, char **json_out)
{
    *json_out = NULL;
    tk_pgconn *c = NULL;
    int rc = tk_pg_pool_get(pg, &c);
    if (rc)
        return rc;
    int ok = 1;
    /* One snapshot for the three reads. */
    PQclear(PQexec(c->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"));
    PGresult *tasks = query(c->conn, "SELECT namespace, state, tasks FROM tasker.task_counts()", &ok);
    PGresult *recent = ok ? query(c->conn,
        "SELECT tasker.iso(e.at), t.uuid, n.name, tp.name, ts.name, e.attempt, e.class, "
        "left(e.message, 1024) FROM tasker.step_errors e "
        "JOIN tasker.tasks t ON t.id = e.task_id "
        "JOIN tasker.templates tp ON tp.id = t.template_id "
        "JOIN tasker.namespaces n ON n.id = t.namespace_id "
        "JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = e.step_idx "
        "ORDER BY e.at DESC, e.attempt DESC LIMIT 50", &ok) : NULL;
    PGresult *dead = ok ? query(c->conn,
        "SELECT t.uuid, n.name, tp.name, ts.name, d.attempts, coalesce(d.error_class, ''), "
        "coalesce(d.error_message, '') FROM tasker.dead_letters d "
        "JOIN tasker.tasks t ON t.id = d.task_id "
        "JOIN tasker.templates tp ON tp.id = t.template_id "
        "JOIN tasker.namespaces n ON n.id = d.namespace_id "
        "JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.step_idx "
        "WHERE d.resolved_at IS NULL ORDER BY d.created_at DESC, d.id DESC LIMIT 100", &ok) : NULL;
    if (!ok)
        rc = tk_pg_error(pg, c, NULL, "reading the status");
    PQclear(PQexec(c->conn, "COMMIT"));
    tk_pg_pool_put(pg, c);
    json_t *jt = json_object(), *jr = json_array(), *jd = json_array(), *jc = json_object();
    for (int i = 0; tasks && i < PQntuples(tasks); i++) {
        json_t *per = json_object_get(jt, PQgetvalue(tasks, i, 0));
        if (!per) {
            per = json_object();
            json_object_set_new(jt, PQgetvalue(tasks, i, 0), per);
        }
        json_object_set_new(per, PQgetvalue(tasks, i, 1),
                            json_integer(strtoll(PQgetvalue(tasks, i, 2), NULL, 10)));
    }
    for (int i = 0; recent && i < PQntuples(recent); i++)
        json_array_append_new(
            jr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s, s:s}", "at",
                          PQgetvalue(recent, i, 0), "task_uuid", PQgetvalue(recent, i, 1),
                          "namespace", PQgetvalue(recent, i, 2), "template",
                          PQgetvalue(recent, i, 3), "step", PQgetvalue(recent, i, 4), "attempt",
                          atoi(PQgetvalue(recent, i, 5)), "class", PQgetvalue(recent, i, 6),
                          "message", PQgetvalue(recent, i, 7)));
    for (int i = 0; dead && i < PQntuples(dead); i++)
        json_array_append_new(
            jd, json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:s}", "task_uuid",
                          PQgetvalue(dead, i, 0), "namespace", PQgetvalue(dead, i, 1), "template",
                          PQgetvalue(dead, i, 2), "step", PQgetvalue(dead, i, 3), "attempts",
                          atoi(PQgetvalue(dead, i, 4)), "class", PQgetvalue(dead, i, 5),
                          "message", PQgetvalue(dead, i, 6)));
    PQclear(tasks);
    PQclear(recent);
    PQclear(dead);
    tasker_coordinator *co = pg->coord;
    pthread_mutex_lock(&co->lock);
    tk_breaker_health(co, jc);
    pthread_mutex_unlock(&co->lock);
    json_t *root = json_pack("{s:o, s:o, s:o, s:o}", "tasks", jt, "recent_failures", jr,
                             "dead_letters", jd, "circuits", jc);
    if (rc || !root) {
        json_decref(root);
        return rc ? rc : tk_enomem();
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s || !(*json_out = tk_strdup(s)))
        rc = tk_enomem();
    free(s);
    return rc;
}
