/*
 * Postgres store: completions.  tasker_step_succeed/fail queue the
 * attempt's outcome; a flusher thread records everything queued in one
 * call of tasker.complete_steps (one transaction, each entry atomic and
 * fenced by its lease), then hands each caller its own status.  Many
 * completions share a commit, which is what makes synchronous_commit
 * affordable.
 *
 * By default the completing thread waits for its entry's status, so the
 * return code is exact (TASKER_ESTALE for a lost lease, TASKER_ESTATE for a
 * cancelled step).  With async_complete (tk_pg_tune) it returns once the
 * local checks pass; refusals are then only counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "store/pg_internal.h"

enum { ST_OK = 0, ST_STALE = 1, ST_CANCELLED = 2 };

static int status_error(const tk_pgclaim *cl, int status)
{
    const tk_claim_view *v = &cl->view;
    switch (status) {
    case ST_OK:
        return TASKER_OK;
    case ST_STALE:
        return tk_err(TASKER_ESTALE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:i}", "task", v->task_uuid, "step", v->name,
                                "attempt", (int)cl->base.attempt),
                      "step '%s' attempt %u no longer holds its lease; completion refused",
                      v->name, cl->base.attempt);
    case ST_CANCELLED:
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:s}", "task", v->task_uuid, "step", v->name,
                                "state", "cancelled"),
                      "step '%s' was cancelled; its result is discarded", v->name);
    default:
        return tk_err(status, TASKER_CATEGORY_DATABASE,
                      json_pack("{s:s, s:s}", "task", v->task_uuid, "step", v->name),
                      "step '%s': recording the completion failed (the step runs again when "
                      "its lease expires): %s",
                      v->name, cl->err ? cl->err : "database error");
    }
}

/* Marks a claim finished and drops the store's hold (lock held); returns a
 * claim to free after unlocking, or NULL. */
static tk_pgclaim *finish_locked(tk_pg *pg, tk_pgclaim *cl)
{
    cl->state = TK_CL_FINISHED;
    if (pg->n_out)
        pg->n_out--;
    pthread_cond_broadcast(&pg->drain_cv);
    return tk_pg_unpin_locked(pg, cl, TK_PIN_HELD);
}

/* The outcome of an attempt, checked and copied before anything changes: a
 * malformed result leaves the step in progress. */
typedef struct outcome {
    char *res, *cls, *msg, *ctx;
} outcome;

static void outcome_free(outcome *o)
{
    tk_free(o->res);
    tk_free(o->cls);
    tk_free(o->msg);
    tk_free(o->ctx);
    memset(o, 0, sizeof *o);
}

static int prepare(outcome *o, const tk_pgclaim *cl, int ok, const char *result, size_t len,
                   const tasker_failure *failure)
{
    memset(o, 0, sizeof *o);
    if (ok) {
        if (result && len && !(len == 4 && !memcmp(result, "null", 4))) {
            json_error_t jerr;
            json_t *j = json_loadb(result, len, JSON_DECODE_ANY, &jerr);
            if (!j)
                return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT,
                              json_pack("{s:s, s:s}", "step", cl->view.name, "message", jerr.text),
                              "step '%s': result is not valid JSON: %s", cl->view.name,
                              jerr.text);
            json_decref(j);
            if (!(o->res = tk_strndup(result, len)))
                return tk_enomem();
        }
        return TASKER_OK;
    }
    if (failure->context_json) {
        json_t *j = json_loads(failure->context_json, 0, NULL);
        int is_obj = json_is_object(j);
        json_decref(j);
        if (!is_obj)
            return tk_einval("tasker_step_fail: context_json must be a JSON object");
    }
    o->cls = tk_strdup(failure->error_class ? failure->error_class : "Error");
    o->msg = tk_strdup(failure->message ? failure->message : "");
    o->ctx = failure->context_json ? tk_strdup(failure->context_json) : NULL;
    if (!o->cls || !o->msg || (failure->context_json && !o->ctx)) {
        outcome_free(o);
        return tk_enomem();
    }
    return TASKER_OK;
}

/* Hands a completion to the flusher (lock held).  Returns 1 when queued
 * (the caller then waits unless completions are asynchronous), else a
 * status code: the completion was settled here without a round trip. */
/* The refusal of a completion that came after the attempt's time limit. */
static int timed_out_error(const tk_pgclaim *cl)
{
    return tk_err(TASKER_ESTALE, TASKER_CATEGORY_STATE,
                  json_pack("{s:s, s:s, s:i, s:i}", "task", cl->view.task_uuid, "step",
                            cl->view.name, "attempt", (int)cl->base.attempt, "timeout_ms",
                            (int)cl->timeout_ms),
                  "step '%s' attempt %u ran past its timeout_ms (%u); completion refused",
                  cl->view.name, cl->base.attempt, cl->timeout_ms);
}

void tk_pg_flush_push_locked(tk_pg *pg, tk_pgclaim *cl)
{
    cl->state = TK_CL_FLUSHING;
    cl->qnext = NULL;
    if (pg->fq_tail)
        pg->fq_tail->qnext = cl;
    else
        pg->fq_head = cl;
    pg->fq_tail = cl;
    pg->n_fq++;
    pthread_cond_signal(&pg->flush_cv);
}

static int submit_locked(tk_pg *pg, tk_pgclaim *cl, int ok, outcome *o,
                         const tasker_failure *failure, tk_pgclaim **gone)
{
    if (cl->base.done)
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:i}", "task", cl->view.task_uuid, "step",
                                cl->view.name, "attempt", (int)cl->base.attempt),
                      "step '%s' attempt %u was already completed", cl->view.name,
                      cl->base.attempt);
    cl->base.done = 1;
    if (cl->timed_out) {
        /* The time limit passed first; its failure is (being) recorded. */
        atomic_fetch_add(&pg->n_fenced, 1);
        return timed_out_error(cl);
    }
    if (pg->closed) {
        *gone = finish_locked(pg, cl);
        return tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL,
                      "coordinator was closed; the step's result is discarded");
    }
    int64_t now = tk_mono_ns();
    if (cl->lost || now >= cl->deadline_mono) {
        /* The lease is known to be gone: no round trip needed. */
        atomic_fetch_add(&pg->n_fenced, 1);
        *gone = finish_locked(pg, cl);
        return status_error(cl, ST_STALE);
    }
    if (cl->due_mono && now >= cl->due_mono && tk_pg_timeout_fill_locked(pg, cl) == 0) {
        /* Its time ran out before anybody noticed: the timeout happened
         * first, so this result is late (as in the memory store). */
        tk_pg_flush_push_locked(pg, cl);
        atomic_fetch_add(&pg->n_fenced, 1);
        return timed_out_error(cl);
    }
    cl->ended_mono = now;
    cl->ok = (uint8_t)(ok != 0);
    cl->result = o->res;
    cl->f_class = o->cls;
    cl->f_message = o->msg;
    cl->f_context = o->ctx;
    memset(o, 0, sizeof *o);
    cl->f_retryable = (uint8_t)(!ok && failure->retryable != 0);
    cl->f_after = ok ? -1 : failure->retry_after_ms;
    tk_pg_flush_push_locked(pg, cl);
    if (!pg->async_complete)
        cl->pins |= TK_PIN_WAITER;
    return 1;
}

/* Waits for a queued completion's status (lock held; it is released while
 * the error is formatted). */
static int wait_locked(tk_pg *pg, tk_pgclaim *cl, tk_pgclaim **gone)
{
    while (cl->state != TK_CL_FINISHED)
        pthread_cond_wait(&pg->flushed_cv, &pg->mu);
    int rc = TASKER_OK;
    if (cl->status != ST_OK) {
        /* status_error reads the claim: it stays pinned until then. */
        pthread_mutex_unlock(&pg->mu);
        rc = status_error(cl, cl->status);
        pthread_mutex_lock(&pg->mu);
    }
    *gone = tk_pg_unpin_locked(pg, cl, TK_PIN_WAITER);
    return rc;
}

int tk_pg_step_complete(tasker_step *step, int ok, const char *result, size_t len,
                        const tasker_failure *failure)
{
    tk_pgclaim *cl = (tk_pgclaim *)(void *)step;
    tk_pg *pg = cl->pg;
    outcome o;
    int rc = prepare(&o, cl, ok, result, len, failure);
    if (rc)
        return rc;
    tk_pgclaim *gone = NULL;
    pthread_mutex_lock(&pg->mu);
    rc = submit_locked(pg, cl, ok, &o, failure, &gone);
    if (rc == 1)
        rc = pg->async_complete ? TASKER_OK : wait_locked(pg, cl, &gone);
    pthread_mutex_unlock(&pg->mu);
    outcome_free(&o);
    tk_pg_claim_free(gone);
    return rc;
}

int tk_pg_steps_succeed(int *rc_out, tasker_step *const *steps, const char *const *results,
                        const size_t *lens, size_t n)
{
    /* Everything is queued before anybody waits, so the whole batch goes
     * into one flush (one transaction, one commit). */
    tk_pgclaim **gone = tk_calloc(n ? n : 1, sizeof *gone);
    uint8_t *queued = tk_calloc(n ? n : 1, 1);
    if (!gone || !queued) {
        tk_free(gone);
        tk_free(queued);
        for (size_t i = 0; i < n; i++)
            rc_out[i] = tasker_step_succeed(steps[i], results ? results[i] : NULL,
                                            results && results[i] && lens ? lens[i] : 0);
        return TASKER_OK;
    }
    for (size_t i = 0; i < n; i++) {
        tk_pgclaim *cl = (tk_pgclaim *)(void *)steps[i];
        if (!cl) {
            rc_out[i] = tk_einval("tasker_steps_succeed: step %zu is NULL", i);
            continue;
        }
        const char *r = results ? results[i] : NULL;
        size_t len = r ? (lens && lens[i] ? lens[i] : strlen(r)) : 0;
        outcome o;
        tasker_failure none = TASKER_FAILURE_INIT;
        if ((rc_out[i] = prepare(&o, cl, 1, r, len, NULL)) != TASKER_OK)
            continue;
        pthread_mutex_lock(&cl->pg->mu);
        int rc = submit_locked(cl->pg, cl, 1, &o, &none, &gone[i]);
        pthread_mutex_unlock(&cl->pg->mu);
        outcome_free(&o);
        queued[i] = rc == 1;
        rc_out[i] = rc == 1 ? TASKER_OK : rc;
    }
    for (size_t i = 0; i < n; i++) {
        tk_pgclaim *cl = (tk_pgclaim *)(void *)steps[i];
        if (!queued[i] || cl->pg->async_complete)
            continue;
        pthread_mutex_lock(&cl->pg->mu);
        rc_out[i] = wait_locked(cl->pg, cl, &gone[i]);
        pthread_mutex_unlock(&cl->pg->mu);
    }
    for (size_t i = 0; i < n; i++)
        tk_pg_claim_free(gone[i]);
    tk_free(gone);
    tk_free(queued);
    return TASKER_OK;
}

/* ---- the flusher ------------------------------------------------------------- */

#define N_ARRAYS 11

typedef struct arrays {
    tk_buf b[N_ARRAYS];
} arrays;

static int build(arrays *a, tk_pgclaim **cls, size_t n)
{
    for (int k = 0; k < N_ARRAYS; k++) {
        tk_buf_init(&a->b[k]);
        tk_buf_add(&a->b[k], "{", 1);
    }
    for (size_t i = 0; i < n; i++) {
        const tk_pgclaim *cl = cls[i];
        const char *sep = i ? "," : "";
        tk_buf_addf(&a->b[0], "%s%lld", sep, (long long)cl->task_id);
        tk_buf_addf(&a->b[1], "%s%d", sep, (int)cl->idx);
        tk_buf_addf(&a->b[2], "%s%u", sep, cl->base.attempt);
        tk_buf_addf(&a->b[3], "%s%s", sep, cl->ok ? "t" : "f");
        tk_buf_elem(&a->b[4], cl->result, i == 0);
        tk_buf_elem(&a->b[5], cl->f_class, i == 0);
        tk_buf_elem(&a->b[6], cl->f_message, i == 0);
        tk_buf_addf(&a->b[7], "%s%s", sep, cl->f_retryable ? "t" : "f");
        tk_buf_addf(&a->b[8], "%s%lld", sep, (long long)cl->f_after);
        tk_buf_elem(&a->b[9], cl->f_context, i == 0);
        tk_buf_addf(&a->b[10], "%s%s", sep, cl->timed_out ? "t" : "f");
    }
    int oom = 0;
    for (int k = 0; k < N_ARRAYS; k++) {
        tk_buf_add(&a->b[k], "}", 1);
        oom |= a->b[k].oom;
    }
    return oom ? -1 : 0;
}

static void arrays_free(arrays *a)
{
    for (int k = 0; k < N_ARRAYS; k++)
        tk_buf_free(&a->b[k]);
}

/* What a batch asks to be announced once it has committed
 * (sql/0006_notify.sql): steps made ready, unless the batch's own claim
 * took them all; the earliest delayed retry; the tasks it finished (taken
 * from the claims, see flusher_main). */
typedef struct notes {
    int ready, claimed_all;
    long long due_ms;
} notes;

/* Runs one recording statement, trying again while the failure is
 * transient (connection lost, deadlock): the function recognises entries
 * an earlier, interrupted attempt already recorded.  *hard: it failed for
 * good with the connection fine (the statement itself failed). */
static PGresult *flush_call(tk_pg *pg, tk_pgconn **cp, const char *const *vals, int with_claim,
                            int *hard)
{
    PGresult *r = NULL;
    unsigned backoff = 0;
    *hard = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        int transient = 0;
        if (!*cp && tk_pg_connect(pg, cp) != TASKER_OK) {
            *cp = NULL;
            transient = 1;
        } else {
            r = with_claim ? tk_pg_run(pg, *cp, TK_PS_COMPLETE_CLAIM, 16, vals, &transient)
                           : tk_pg_run(pg, *cp, TK_PS_COMPLETE, 12, vals, &transient);
            atomic_fetch_add(&pg->n_flush_calls, 1);
            if (r)
                break;
            if (PQstatus((*cp)->conn) != CONNECTION_OK) {
                tk_pg_disconnect(*cp);
                *cp = NULL;
            }
        }
        atomic_store(&pg->up_flusher, *cp != NULL);
        if (!transient) {
            *hard = 1;
            break;
        }
        /* While closing, give up sooner: the leases will expire. */
        pthread_mutex_lock(&pg->mu);
        int quitting = pg->flush_quit;
        pthread_mutex_unlock(&pg->mu);
        if (quitting && attempt >= 3)
            break;
        static const int never = 0;
        backoff = tk_pg_backoff_sleep(pg, backoff, &never);
    }
    atomic_store(&pg->up_flusher, *cp != NULL);
    return r;
}

/* Records `n` completions (and claims up to `want` steps for `handlers`
 * in the same transaction when `handlers` is not NULL); writes each one's
 * status and what it did to the claims.  Returns 0, or -1 when the
 * statement itself failed (*hard) or the database could not be reached. */
static int flush_some(tk_pg *pg, tk_pgconn **cp, tk_pgclaim **cls, size_t n, int *status,
                      char **err, const char *handlers, size_t want, int lease_ms,
                      tk_pgclaim **claims, size_t *n_claims, int *hard, notes *nt)
{
    *hard = 0;
    arrays a;
    if (build(&a, cls, n) < 0) {
        arrays_free(&a);
        for (size_t i = 0; i < n; i++)
            status[i] = TASKER_ENOMEM;
        tk_free(*err);
        *err = tk_strdup("out of memory");
        return -1;
    }
    char worker[16], lim[24], lease[16];
    snprintf(worker, sizeof worker, "%d", pg->worker_id);
    snprintf(lim, sizeof lim, "%zu", want);
    snprintf(lease, sizeof lease, "%d", lease_ms);
    const char *vals[16] = {worker};
    for (int k = 0; k < N_ARRAYS; k++)
        vals[k + 1] = a.b[k].p;
    /* Worker threads want more work: claim it in the same transaction
     * (only while every circuit is closed: see pg_round.c). */
    int with_claim = handlers && want > 0;
    vals[12] = handlers;
    vals[13] = lim;
    vals[14] = lease;
    vals[15] = NULL; /* no namespace left out */
    int64_t deadline = tk_mono_ns() + (int64_t)lease_ms * 1000000;
    PGresult *r = flush_call(pg, cp, vals, with_claim, hard);
    if (r) {
        /* complete_and_claim_ns: kind, then complete_steps_ev's columns
         * (ord, status, step_state, task_id, task_state, task_age_ms),
         * then the claim columns from 7.  complete_steps_ev's rows: every
         * entry's status, then the new state of failed steps, then the
         * tasks the batch finished. */
        int oc = with_claim ? 1 : 0;
        for (size_t i = 0; i < n; i++)
            status[i] = ST_STALE;
        for (int row = 0; row < PQntuples(r); row++) {
            if (with_claim && !strcmp(PQgetvalue(r, row, 0), "2")) {
                nt->claimed_all = 1;
                continue;
            }
            if (with_claim && strcmp(PQgetvalue(r, row, 0), "0") != 0)
                continue;
            if (PQgetisnull(r, row, oc)) {
                /* A finished task: the first entry of it that was recorded
                 * reports it (once per task). */
                long long tid = strtoll(PQgetvalue(r, row, oc + 3), NULL, 10);
                for (size_t i = 0; i < n; i++) {
                    if (cls[i]->task_id == tid && status[i] == ST_OK) {
                        cls[i]->task_finished = 1;
                        cls[i]->task_state = (int8_t)atoi(PQgetvalue(r, row, oc + 4));
                        cls[i]->task_age_ms = strtod(PQgetvalue(r, row, oc + 5), NULL);
                        break;
                    }
                }
                continue;
            }
            long ord = strtol(PQgetvalue(r, row, oc), NULL, 10);
            if (ord == 0) {
                /* What to announce: status 1 steps made ready, task_age_ms
                 * the due time of a delayed retry. */
                if (!PQgetisnull(r, row, oc + 1) && atoi(PQgetvalue(r, row, oc + 1)) == 1)
                    nt->ready = 1;
                if (!PQgetisnull(r, row, oc + 5)) {
                    long long d = (long long)strtod(PQgetvalue(r, row, oc + 5), NULL);
                    if (d > 0 && (!nt->due_ms || d < nt->due_ms))
                        nt->due_ms = d;
                }
                continue;
            }
            if (ord < 1 || (size_t)ord > n)
                continue;
            if (!PQgetisnull(r, row, oc + 1))
                status[ord - 1] = atoi(PQgetvalue(r, row, oc + 1));
            else if (!PQgetisnull(r, row, oc + 2))
                cls[ord - 1]->step_state = (int8_t)atoi(PQgetvalue(r, row, oc + 2));
        }
        if (with_claim) {
            *n_claims = tk_pg_claims_from_result(pg, r, 7, 0, deadline, 0, claims);
            atomic_fetch_add(&pg->n_claim_calls, 1);
        }
        PQclear(r);
        arrays_free(&a);
        return 0;
    }
    const tasker_error *e = tasker_error_last();
    for (size_t i = 0; i < n; i++)
        status[i] = e->code ? e->code : TASKER_EDATABASE;
    tk_free(*err);
    *err = tk_strdup(e->message);
    arrays_free(&a);
    return -1;
}

/* Records a batch.  When the statement fails for good, the failure is
 * narrowed down so that one namespace's broken queue operations do not
 * stop the others' completions: first without the piggybacked claim (the
 * claimer then finds the failing namespace, pg_round.c), then namespace
 * by namespace.  *attrib: statuses were obtained per namespace, so they
 * tell which namespaces' queue operations work. */
static void flush_batch(tk_pg *pg, tk_pgconn **cp, tk_pgclaim **cls, size_t n, int *status,
                        char **err, const char *handlers, size_t want, int lease_ms,
                        tk_pgclaim **claims, size_t *n_claims, int *attrib, notes *nt)
{
    *claims = NULL;
    *n_claims = 0;
    *err = NULL;
    *attrib = 0;
    int hard = 0;
    if (flush_some(pg, cp, cls, n, status, err, handlers, want, lease_ms, claims, n_claims,
                   &hard, nt) == 0 || !hard)
        return;
    if (handlers && want > 0) {
        if (flush_some(pg, cp, cls, n, status, err, NULL, 0, lease_ms, claims, n_claims, &hard,
                       nt) == 0) {
            pthread_mutex_lock(&pg->mu);
            pg->isolate = 1;
            pthread_mutex_unlock(&pg->mu);
            return;
        }
        if (!hard)
            return;
    }
    *attrib = 1;
    size_t n_ns = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < i && strcmp(cls[j]->view.ns, cls[i]->view.ns))
            j++;
        n_ns += j == i;
    }
    if (n_ns < 2)
        return;
    tk_pgclaim **sub = tk_calloc(n, sizeof *sub);
    int *sst = tk_calloc(n, sizeof *sst);
    uint8_t *seen = tk_calloc(n, 1);
    if (!sub || !sst || !seen) {
        tk_free(sub);
        tk_free(sst);
        tk_free(seen);
        return; /* every entry keeps the batch's error */
    }
    for (size_t i = 0; i < n; i++) {
        if (seen[i])
            continue;
        size_t k = 0;
        for (size_t j = i; j < n; j++) {
            if (!seen[j] && !strcmp(cls[j]->view.ns, cls[i]->view.ns)) {
                seen[j] = 1;
                sub[k++] = cls[j];
            }
        }
        tk_pgclaim *none = NULL;
        size_t n_none = 0;
        flush_some(pg, cp, sub, k, sst, err, NULL, 0, lease_ms, &none, &n_none, &hard, nt);
        for (size_t x = 0, j = i; x < k; j++)
            if (cls[j] == sub[x])
                status[j] = sst[x++];
    }
    tk_free(sub);
    tk_free(sst);
    tk_free(seen);
}

/* Sends what a committed batch asks to announce (see notes), and wakes this
 * process's own claimers and waiters at once.  `done` lists the uuids of
 * the tasks the batch finished. */
static void announce(tk_pg *pg, tk_pgconn *c, const notes *nt, char (*done)[TASKER_UUID_BUFSIZE],
                     size_t n_done)
{
    int ready = nt->ready && !nt->claimed_all;
    size_t n = n_done + (size_t)ready + (nt->due_ms > 0);
    if (!n)
        return;
    const char **ch = tk_calloc(n, sizeof *ch), **pl = tk_calloc(n, sizeof *pl);
    char due[24];
    size_t k = 0;
    if (ch && pl) {
        if (ready) {
            ch[k] = "tasker_ready";
            pl[k++] = "";
        }
        if (nt->due_ms > 0) {
            snprintf(due, sizeof due, "%lld", nt->due_ms);
            ch[k] = "tasker_ready";
            pl[k++] = due;
        }
        for (size_t i = 0; i < n_done; i++) {
            ch[k] = "tasker_done";
            pl[k++] = done[i];
        }
    }
    pthread_mutex_lock(&pg->mu);
    if (ready)
        tk_pg_wake_ready_locked(pg);
    for (size_t i = 0; i < n_done; i++)
        tk_pg_wake_waiters_locked(pg, done[i]);
    pthread_mutex_unlock(&pg->mu);
    if (c && k)
        tk_pg_notify(pg, c, k, ch, pl);
    tk_free(ch);
    tk_free(pl);
}

static void *flusher_main(void *arg)
{
    tk_pg *pg = arg;
    tk_pgconn *c = NULL;
    size_t cap = 0;
    tk_pgclaim **cls = NULL;
    int *status = NULL;
    char(*done)[TASKER_UUID_BUFSIZE] = NULL;
    pthread_mutex_lock(&pg->mu);
    for (;;) {
        while (!pg->fq_head && !pg->flush_quit)
            pthread_cond_wait(&pg->flush_cv, &pg->mu);
        if (!pg->fq_head)
            break;
        size_t max = (size_t)pg->flush_max;
        if (cap < max) {
            tk_pgclaim **nc = tk_realloc(cls, max * sizeof *nc);
            int *ns = nc ? tk_realloc(status, max * sizeof *ns) : NULL;
            char(*nd)[TASKER_UUID_BUFSIZE] = ns ? tk_realloc(done, max * sizeof *nd) : NULL;
            if (nc)
                cls = nc;
            if (ns)
                status = ns;
            if (nd)
                done = nd;
            if (nc && ns && nd)
                cap = max;
        }
        size_t n = 0;
        while (pg->fq_head && n < cap) {
            tk_pgclaim *cl = pg->fq_head;
            pg->fq_head = cl->qnext;
            cl->qnext = NULL;
            cls[n++] = cl;
        }
        if (!pg->fq_head)
            pg->fq_tail = NULL;
        pg->n_fq -= n;
        tk_pg_handlers_refresh_locked(pg);
        /* Claims ride along only while no circuit needs the claimer's
         * namespace-by-namespace care. */
        size_t want = atomic_load(&pg->plain) && !pg->isolate ? tk_pg_backlog_want_locked(pg) : 0;
        char *handlers = want ? tk_strdup(pg->worker_handlers) : NULL;
        int lease_ms = pg->lease_ms;
        pg->flush_busy = n > 0;
        if (n == 0) {
            tk_free(handlers);
            /* No memory for the batch array: fail the first entry. */
            tk_pgclaim *cl = pg->fq_head;
            pg->fq_head = cl->qnext;
            if (!pg->fq_head)
                pg->fq_tail = NULL;
            pg->n_fq--;
            cl->status = TASKER_ENOMEM;
            tk_pgclaim *g = finish_locked(pg, cl);
            pthread_cond_broadcast(&pg->flushed_cv);
            pthread_mutex_unlock(&pg->mu);
            tk_pg_claim_free(g);
            pthread_mutex_lock(&pg->mu);
            continue;
        }
        pthread_mutex_unlock(&pg->mu);

        char *err = NULL;
        tk_pgclaim *claims = NULL;
        size_t n_claims = 0;
        int attrib = 0;
        notes nt = {0};
        flush_batch(pg, &c, cls, n, status, &err, handlers, handlers ? want : 0, lease_ms,
                    &claims, &n_claims, &attrib, &nt);
        /* The finished tasks' uuids, while the claims are still pinned. */
        size_t n_done = 0;
        for (size_t i = 0; i < n; i++)
            if (status[i] == ST_OK && cls[i]->task_finished)
                snprintf(done[n_done++], TASKER_UUID_BUFSIZE, "%s", cls[i]->view.task_uuid);
        tk_free(handlers);
        /* Counters, events and circuits, while the claims are still pinned. */
        tk_pg_obs_flushed(pg, cls, status, n, attrib);
        if (n_claims)
            n_claims = tk_pg_admit(pg, c, &claims, n_claims);

        tk_pgclaim *gone = NULL;
        size_t n_ok = 0, fenced = 0;
        pthread_mutex_lock(&pg->mu);
        for (size_t i = 0; i < n; i++) {
            tk_pgclaim *cl = cls[i];
            cl->status = status[i];
            if (status[i] < 0 && err)
                cl->err = tk_strdup(err);
            n_ok += status[i] == ST_OK;
            /* A refused time-limit record is no late completion. */
            fenced += status[i] == ST_STALE && !cl->timed_out;
            tk_pgclaim *g = finish_locked(pg, cl);
            if (g) {
                g->qnext = gone;
                gone = g;
            }
        }
        pthread_cond_broadcast(&pg->flushed_cv);
        pg->flush_busy = 0;
        if (!pg->fq_head) /* idle: claiming is the claimer's again */
            pthread_cond_broadcast(&pg->claimer_cv);
        /* Claims fetched with the batch go to the worker threads, unless
         * they stopped while it was in flight: then they go back. */
        int give_back = n_claims && (!pg->claimer_on || pg->stopping);
        if (n_claims && !give_back)
            tk_pg_enqueue_local_locked(pg, claims, n_claims);
        if (give_back)
            for (tk_pgclaim *cl = claims; cl; cl = cl->qnext)
                cl->state = TK_CL_FINISHED; /* the heartbeat leaves them alone */
        pthread_mutex_unlock(&pg->mu);
        if (give_back)
            tk_pg_give_back(pg, c, claims);
        announce(pg, c, &nt, done, n_done);
        atomic_fetch_add(&pg->n_completed, n_ok);
        atomic_fetch_add(&pg->n_fenced, fenced);
        tk_free(err);
        while (gone) {
            tk_pgclaim *nx = gone->qnext;
            tk_pg_claim_free(gone);
            gone = nx;
        }
        pthread_mutex_lock(&pg->mu);
    }
    pthread_mutex_unlock(&pg->mu);
    tk_free(cls);
    tk_free(status);
    tk_free(done);
    tk_pg_disconnect(c);
    atomic_store(&pg->up_flusher, 0);
    return NULL;
}

int tk_pg_flusher_start(tk_pg *pg)
{
    pg->flush_quit = 0;
    if (pthread_create(&pg->flusher, NULL, flusher_main, pg) != 0)
        return tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                      "could not start the completion flusher thread");
    pg->flusher_on = 1;
    return TASKER_OK;
}

void tk_pg_flusher_stop(tk_pg *pg)
{
    pthread_mutex_lock(&pg->mu);
    int on = pg->flusher_on;
    pg->flush_quit = 1;
    pg->flusher_on = 0;
    pthread_cond_broadcast(&pg->flush_cv);
    pthread_mutex_unlock(&pg->mu);
    if (on)
        pthread_join(pg->flusher, NULL);
}
