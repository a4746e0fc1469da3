/*
 * Postgres store: claiming steps (tasker.claim), the claimer and worker
 * threads of worker mode, poll-mode claims, lease heartbeats and giving
 * claims back.
 *
 * A claim is pinned while something refers to it: the store holding its
 * lease (until its completion is recorded or refused), the worker thread
 * running its handler, a thread waiting for its flush, the heartbeat.
 * Unpinned claims are retired: kept readable in a bounded list (accessors
 * on a completed handle keep working for a while), then freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "run/engine.h"
#include "store/pg_internal.h"

/* ---- claims ------------------------------------------------------------- */

static size_t backlog_target(const tk_pg *pg);

void tk_pg_claim_free(tk_pgclaim *cl)
{
    if (!cl)
        return;
    tk_pg *pg = cl->pg;
    tk_free(cl->result);
    tk_free(cl->f_class);
    tk_free(cl->f_message);
    tk_free(cl->f_context);
    tk_free(cl->err);
    tk_free(cl->mem);
    tk_free(cl);
    tk_pg_unref(pg);
}

void tk_pg_unhold_locked(tk_pg *pg, tk_pgclaim *cl)
{
    if (!(cl->pins & TK_PIN_HELD))
        return;
    if (cl->prev)
        cl->prev->next = cl->next;
    else
        pg->held = cl->next;
    if (cl->next)
        cl->next->prev = cl->prev;
    cl->prev = cl->next = NULL;
    pg->n_held--;
}

tk_pgclaim *tk_pg_unpin_locked(tk_pg *pg, tk_pgclaim *cl, unsigned pin)
{
    if (pin & TK_PIN_HELD)
        tk_pg_unhold_locked(pg, cl);
    cl->pins &= ~pin;
    if (cl->pins)
        return NULL;
    if (pg->closed)
        return cl; /* nobody will look it up any more */
    cl->qnext = NULL;
    if (pg->ret_tail)
        pg->ret_tail->qnext = cl;
    else
        pg->ret_head = cl;
    pg->ret_tail = cl;
    if (++pg->n_ret <= TK_PG_RETAIN_MAX)
        return NULL;
    tk_pgclaim *old = pg->ret_head;
    pg->ret_head = old->qnext;
    if (!pg->ret_head)
        pg->ret_tail = NULL;
    pg->n_ret--;
    old->qnext = NULL;
    return old;
}

static char *put(char **o, const char *s, size_t n)
{
    char *d = *o;
    memcpy(d, s, n);
    d[n] = '\0';
    *o += n + 1;
    return d;
}

/* Builds one claim from row `i` of a result whose claim columns (those of
 * tasker.claim) start at column `off`. */
static tk_pgclaim *claim_from_row(tk_pg *pg, PGresult *r, int i, int off, int64_t deadline)
{
    char **dn = NULL, **dr = NULL, *dn_mem = NULL, *dr_mem = NULL;
    size_t *dn_len = NULL, *dr_len = NULL;
    tk_pgclaim *cl = NULL;
    long nd = tk_pg_parse_array(PQgetvalue(r, i, off + 11), &dn, &dn_len, &dn_mem);
    long nr = tk_pg_parse_array(PQgetvalue(r, i, off + 12), &dr, &dr_len, &dr_mem);
    if (nd < 0 || nr != nd)
        goto out;
    size_t size = (size_t)PQgetlength(r, i, off + 13) + 1;
    for (int k = 4; k <= 10; k++)
        size += (size_t)PQgetlength(r, i, off + k) + 1;
    for (long k = 0; k < nd; k++)
        size += dn_len[k] + 1 + (dr[k] ? dr_len[k] : 4) + 1;
    size_t arrays = (size_t)nd * (2 * sizeof(char *) + sizeof(size_t));
    cl = tk_calloc(1, sizeof *cl);
    char *mem = cl ? tk_malloc(arrays + size + 1) : NULL;
    if (!mem) {
        tk_free(cl);
        cl = NULL;
        goto out;
    }
    cl->mem = mem;
    const char **names = (const char **)(void *)mem;
    const char **results = names + nd;
    size_t *lens = (size_t *)(void *)(results + nd);
    char *o = mem + arrays;
    tk_claim_view *v = &cl->view;
    v->uuid = put(&o, PQgetvalue(r, i, off + 4), (size_t)PQgetlength(r, i, off + 4));
    v->task_uuid = put(&o, PQgetvalue(r, i, off + 5), (size_t)PQgetlength(r, i, off + 5));
    v->name = put(&o, PQgetvalue(r, i, off + 6), (size_t)PQgetlength(r, i, off + 6));
    v->handler = put(&o, PQgetvalue(r, i, off + 7), (size_t)PQgetlength(r, i, off + 7));
    v->ns = put(&o, PQgetvalue(r, i, off + 8), (size_t)PQgetlength(r, i, off + 8));
    v->template_name = put(&o, PQgetvalue(r, i, off + 9), (size_t)PQgetlength(r, i, off + 9));
    v->context_len = (size_t)PQgetlength(r, i, off + 10);
    v->context = put(&o, PQgetvalue(r, i, off + 10), v->context_len);
    cl->tversion = put(&o, PQgetvalue(r, i, off + 13), (size_t)PQgetlength(r, i, off + 13));
    cl->timeout_ms = (uint32_t)strtoul(PQgetvalue(r, i, off + 14), NULL, 10);
    cl->queue_wait_ms = strtod(PQgetvalue(r, i, off + 15), NULL);
    cl->step_state = cl->task_state = -1;
    for (long k = 0; k < nd; k++) {
        names[k] = put(&o, dn[k], dn_len[k]);
        /* A dependency that succeeded without a result reads as "null". */
        results[k] = dr[k] ? put(&o, dr[k], dr_len[k]) : put(&o, "null", 4);
        lens[k] = dr[k] ? dr_len[k] : 4;
    }
    v->n_deps = (size_t)nd;
    v->dep_names = names;
    v->dep_results = results;
    v->dep_result_lens = lens;
    v->max_attempts = (uint32_t)strtoul(PQgetvalue(r, i, off + 3), NULL, 10);
    cl->task_id = strtoll(PQgetvalue(r, i, off + 0), NULL, 10);
    cl->idx = (int32_t)strtol(PQgetvalue(r, i, off + 1), NULL, 10);
    cl->base.view = &cl->view;
    cl->base.attempt = (uint32_t)strtoul(PQgetvalue(r, i, off + 2), NULL, 10);
    cl->deadline_mono = deadline;
    cl->claimed_mono = tk_mono_ns();
    cl->pg = pg;
    cl->pins = TK_PIN_HELD;
    atomic_fetch_add(&pg->refs, 1);
out:
    tk_free(dn);
    tk_free(dn_len);
    tk_free(dn_mem);
    tk_free(dr);
    tk_free(dr_len);
    tk_free(dr_mem);
    return cl;
}

size_t tk_pg_claims_from_result(tk_pg *pg, PGresult *r, int off, int kind_col, int64_t deadline,
                                int poll, tk_pgclaim **list)
{
    int rows = PQntuples(r);
    tk_pgclaim *head = NULL, *tail = NULL;
    size_t n = 0;
    for (int i = 0; i < rows; i++) {
        if (kind_col >= 0 && strcmp(PQgetvalue(r, i, kind_col), "1") != 0)
            continue;
        /* Out of memory: the step stays claimed in the database and runs
         * again when its lease expires. */
        tk_pgclaim *cl = claim_from_row(pg, r, i, off, deadline);
        if (!cl)
            continue;
        cl->poll = (uint8_t)poll;
        cl->state = poll ? TK_CL_RUNNING : TK_CL_QUEUED;
        if (tail)
            tail->qnext = cl;
        else
            head = cl;
        tail = cl;
        n++;
    }
    pthread_mutex_lock(&pg->mu);
    for (tk_pgclaim *cl = head; cl; cl = cl->qnext) {
        cl->next = pg->held;
        if (pg->held)
            pg->held->prev = cl;
        pg->held = cl;
        pg->n_held++;
    }
    if (poll)
        pg->n_out += n;
    pthread_mutex_unlock(&pg->mu);
    atomic_fetch_add(&pg->n_claimed, n);
    *list = head;
    return n;
}

void tk_pg_enqueue_local_locked(tk_pg *pg, tk_pgclaim *list, size_t n)
{
    if (!n)
        return;
    for (tk_pgclaim *cl = list; cl; cl = cl->qnext) {
        if (pg->lq_tail)
            pg->lq_tail->qnext = cl;
        else
            pg->lq_head = cl;
        pg->lq_tail = cl;
    }
    pg->n_lq += n;
    /* One waiting thread per new claim: waking them all for a few claims
     * has most of them find nothing and wait again, each a context switch
     * the threads that do get a claim wait behind. */
    if (n >= pg->n_workers) {
        pthread_cond_broadcast(&pg->work_cv);
    } else {
        for (size_t i = 0; i < n; i++)
            pthread_cond_signal(&pg->work_cv);
    }
}

size_t tk_pg_backlog_want_locked(const tk_pg *pg)
{
    if (!pg->claimer_on || pg->stopping || pg->closing || !pg->worker_handlers ||
        !strcmp(pg->worker_handlers, "{}"))
        return 0;
    size_t target = backlog_target(pg);
    return pg->n_lq < target ? target - pg->n_lq : 0;
}

int tk_pg_claim_batch(tk_pg *pg, tk_pgconn *c, const char *handlers, const char *skip_ns,
                      const char *only_ns, size_t max, int poll, tk_pgclaim **list, size_t *n_out)
{
    *list = NULL;
    *n_out = 0;
    char worker[16], lim[24], lease[16];
    pthread_mutex_lock(&pg->mu);
    int lease_ms = pg->lease_ms;
    pthread_mutex_unlock(&pg->mu);
    snprintf(worker, sizeof worker, "%d", pg->worker_id);
    snprintf(lim, sizeof lim, "%zu", max);
    snprintf(lease, sizeof lease, "%d", lease_ms);
    const char *vals[] = {worker, handlers, lim, lease, skip_ns, only_ns};
    /* Read the clock before asking: the database starts the lease after
     * this, so the local deadline is never later than the real one. */
    int64_t deadline = tk_mono_ns() + (int64_t)lease_ms * 1000000;
    PGresult *r = tk_pg_run(pg, c, TK_PS_CLAIM, 6, vals, NULL);
    atomic_fetch_add(&pg->n_claim_calls, 1);
    if (!r)
        return tasker_error_last()->code;
    tk_pgclaim *head;
    size_t n = tk_pg_claims_from_result(pg, r, 0, -1, deadline, poll, &head);
    PQclear(r);
    *list = head;
    *n_out = n;
    return TASKER_OK;
}

void tk_pg_release(tk_pg *pg, tk_pgconn *c, tk_pgclaim **cls, size_t n, int uncount)
{
    if (!n)
        return;
    tk_buf t, i, a, u;
    tk_buf_init(&t);
    tk_buf_init(&i);
    tk_buf_init(&a);
    tk_buf_init(&u);
    tk_buf_add(&t, "{", 1);
    tk_buf_add(&i, "{", 1);
    tk_buf_add(&a, "{", 1);
    tk_buf_add(&u, "{", 1);
    for (size_t k = 0; k < n; k++) {
        tk_buf_addf(&t, "%s%lld", k ? "," : "", (long long)cls[k]->task_id);
        tk_buf_addf(&i, "%s%d", k ? "," : "", (int)cls[k]->idx);
        tk_buf_addf(&a, "%s%u", k ? "," : "", cls[k]->base.attempt);
        tk_buf_addf(&u, "%s%s", k ? "," : "", uncount ? "t" : "f");
    }
    tk_buf_add(&t, "}", 1);
    tk_buf_add(&i, "}", 1);
    tk_buf_add(&a, "}", 1);
    tk_buf_add(&u, "}", 1);
    if (!t.oom && !i.oom && !a.oom && !u.oom) {
        char worker[16];
        snprintf(worker, sizeof worker, "%d", pg->worker_id);
        const char *vals[] = {worker, t.p, i.p, a.p, u.p};
        /* If this fails the leases simply expire and the steps are
         * reclaimed then; nothing is lost. */
        PQclear(tk_pg_run(pg, c, TK_PS_RELEASE, 5, vals, NULL));
    }
    tk_buf_free(&t);
    tk_buf_free(&i);
    tk_buf_free(&a);
    tk_buf_free(&u);
}

void tk_pg_release_held(tk_pg *pg, int in_flight_only)
{
    pthread_mutex_lock(&pg->mu);
    size_t n = 0;
    for (tk_pgclaim *cl = pg->held; cl; cl = cl->next)
        n += !in_flight_only || (cl->state == TK_CL_RUNNING && !cl->base.done && !cl->lost);
    tk_pgclaim *keys = n ? tk_calloc(n, sizeof *keys) : NULL;
    tk_pgclaim **rel = keys ? tk_calloc(n, sizeof *rel) : NULL;
    size_t k = 0;
    if (rel)
        for (tk_pgclaim *cl = pg->held; cl && k < n; cl = cl->next) {
            if (in_flight_only && !(cl->state == TK_CL_RUNNING && !cl->base.done && !cl->lost))
                continue;
            cl->lost = 1;
            keys[k].task_id = cl->task_id;
            keys[k].idx = cl->idx;
            keys[k].base.attempt = cl->base.attempt;
            rel[k] = &keys[k];
            k++;
        }
    pthread_mutex_unlock(&pg->mu);
    tk_pgconn *c = NULL;
    if (k && tk_pg_pool_get(pg, &c) == TASKER_OK) {
        tk_pg_release(pg, c, rel, k, 0);
        tk_pg_pool_put(pg, c);
    }
    tk_free(rel);
    tk_free(keys);
}

/* ---- handler lists -------------------------------------------------------- */

void tk_pg_handlers_refresh_locked(tk_pg *pg)
{
    tasker_coordinator *c = pg->coord;
    if (!c)
        return;
    /* Handlers are never unregistered, so the count says whether the
     * cached lists are current. */
    pthread_mutex_lock(&c->lock);
    unsigned count = HASH_COUNT(c->handlers);
    if (count != pg->handlers_seen || !pg->worker_handlers) {
        tk_buf w, p;
        tk_buf_init(&w);
        tk_buf_init(&p);
        tk_buf_add(&w, "{", 1);
        tk_buf_add(&p, "{", 1);
        int wf = 1, pf = 1;
        for (tk_handler *h = c->handlers; h; h = h->hh.next) {
            if (h->fn) {
                tk_buf_elem(&w, h->name, wf);
                wf = 0;
            } else {
                tk_buf_elem(&p, h->name, pf);
                pf = 0;
            }
        }
        tk_buf_add(&w, "}", 1);
        tk_buf_add(&p, "}", 1);
        if (!w.oom && !p.oom) {
            tk_free(pg->worker_handlers);
            tk_free(pg->poll_handlers);
            pg->worker_handlers = w.p;
            pg->poll_handlers = p.p;
            pg->handlers_seen = count;
        } else {
            tk_buf_free(&w);
            tk_buf_free(&p);
        }
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- worker mode ---------------------------------------------------------------- */


/* Claims kept in the local queue: enough that no worker thread waits for
 * a round trip (each thread may finish one step while the next batch is
 * being fetched), few enough that other processes get a share. */
static size_t backlog_target(const tk_pg *pg)
{
    /* Asynchronous completions free a thread at once: the queue drains as
     * fast as handlers run, so keep a whole batch. */
    if (pg->async_complete)
        return (size_t)pg->claim_batch;
    size_t t = 2 * (size_t)pg->n_workers + 2;
    return t > (size_t)pg->claim_batch ? (size_t)pg->claim_batch : t;
}

static void *worker_main(void *arg)
{
    tk_pg *pg = arg;
    pthread_mutex_lock(&pg->mu);
    while (!pg->stopping) {
        tk_pgclaim *cl = pg->lq_head;
        if (!cl) {
            pthread_cond_wait(&pg->work_cv, &pg->mu);
            continue;
        }
        pg->lq_head = cl->qnext;
        if (!pg->lq_head)
            pg->lq_tail = NULL;
        cl->qnext = NULL;
        pg->n_lq--;
        if (pg->n_lq < backlog_target(pg))
            pthread_cond_signal(&pg->claimer_cv);
        cl->state = TK_CL_RUNNING;
        cl->pins |= TK_PIN_HANDLER;
        pg->n_out++;
        tk_pg_obs_start_locked(pg, cl);
        pthread_mutex_unlock(&pg->mu);

        /* Counts the start and emits step_started.  cl->h was found when
         * the claim was admitted; a handler's fn and userdata never change
         * once registered. */
        tasker_step *one = &cl->base;
        tk_pg_obs_started(pg, &one, 1);
        const tk_handler *h = cl->h;
        int rc = h && h->fn ? h->fn(&cl->base, h->userdata) : TASKER_EHANDLER;
        if (rc < 0) {
            pthread_mutex_lock(&pg->mu);
            int done = cl->base.done;
            pthread_mutex_unlock(&pg->mu);
            if (!done) {
                char msg[160];
                snprintf(msg, sizeof msg, "handler '%s' returned %s without completing the step",
                         cl->view.handler, tasker_strerror(rc));
                tasker_failure f = TASKER_FAILURE_INIT;
                f.error_class = "tasker.HandlerReturnedError";
                f.message = msg;
                tasker_step_fail(&cl->base, &f);
            }
        }
        pthread_mutex_lock(&pg->mu);
        tk_pgclaim *gone = tk_pg_unpin_locked(pg, cl, TK_PIN_HANDLER);
        if (gone) {
            pthread_mutex_unlock(&pg->mu);
            tk_pg_claim_free(gone);
            pthread_mutex_lock(&pg->mu);
        }
    }
    pthread_mutex_unlock(&pg->mu);
    return NULL;
}

/* Earliest time something may become claimable, as a monotonic deadline
 * capped at the poll interval. */
static int64_t idle_deadline_locked(tk_pg *pg, int64_t db_due_ms)
{
    int64_t now = tk_mono_ns();
    int64_t until = now + (int64_t)pg->poll_ms * 1000000;
    /* An open circuit holding claims back half-opens at brk_due. */
    int64_t brk = (int64_t)atomic_load(&pg->brk_due);
    if (brk && brk < until)
        until = brk > now ? brk : now;
    int64_t due = pg->next_due_ms;
    if (db_due_ms > 0 && (!due || db_due_ms < due))
        due = db_due_ms;
    if (due) {
        int64_t wall = tk_now_ns() / 1000000;
        int64_t at = now + (due - wall) * 1000000;
        if (at < until)
            until = at > now ? at : now;
        if (due <= wall)
            pg->next_due_ms = 0;
    }
    return until;
}

int64_t tk_pg_next_due(tk_pg *pg, tk_pgconn *c, const char *handlers)
{
    const char *vals[] = {handlers};
    PGresult *r = tk_pg_run(pg, c, TK_PS_NEXT_DUE, 1, vals, NULL);
    int64_t due = 0;
    if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        due = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return due;
}

static void *claimer_main(void *arg)
{
    tk_pg *pg = arg;
    tk_pgconn *c = NULL;
    unsigned backoff = 0;
    int drained = 0;
    uint64_t seq = 0;
    pthread_mutex_lock(&pg->mu);
    while (!pg->stopping) {
        size_t target = backlog_target(pg);
        if (pg->n_lq >= target) {
            pthread_cond_wait(&pg->claimer_cv, &pg->mu);
            continue;
        }
        /* Completions are being recorded: that transaction claims for the
         * worker threads too (pg_flush.c), so a claim of our own now would
         * mostly find the rows it is about to take, at the cost of a round
         * trip and a transaction.  The flusher wakes us when it goes idle. */
        if ((pg->fq_head || pg->flush_busy) && atomic_load(&pg->plain) && !pg->isolate) {
            pthread_cond_wait(&pg->claimer_cv, &pg->mu);
            continue;
        }
        tk_pg_handlers_refresh_locked(pg);
        int have = pg->worker_handlers && strcmp(pg->worker_handlers, "{}");
        size_t want = target - pg->n_lq;
        seq = pg->ready_seq;
        pthread_mutex_unlock(&pg->mu);

        tk_pgclaim *list = NULL;
        size_t n = 0;
        int64_t db_due = 0;
        int failed = 0;
        if (have) {
            if (!c && tk_pg_connect(pg, &c) == TASKER_OK && tk_pg_async_commit(pg, c) != TASKER_OK) {
                tk_pg_disconnect(c);
                c = NULL;
            }
            atomic_store(&pg->up_claimer, c != NULL);
            if (!c || tk_pg_claim_round(pg, c, 0, want, &list, &n, &db_due) != TASKER_OK)
                failed = 1;
        }
        if (failed) {
            if (c && PQstatus(c->conn) != CONNECTION_OK) {
                tk_pg_disconnect(c);
                c = NULL;
                atomic_store(&pg->up_claimer, 0);
            }
            backoff = tk_pg_backoff_sleep(pg, backoff, &pg->stopping);
            pthread_mutex_lock(&pg->mu);
            continue;
        }
        backoff = 0;
        pthread_mutex_lock(&pg->mu);
        tk_pg_enqueue_local_locked(pg, list, n);
        /* Fewer than asked: the queue is drained for now.  Sleep until a
         * notification, a due retry or lease expiry, or the poll interval. */
        drained = n < want;
        if (drained) {
            int64_t until = idle_deadline_locked(pg, db_due);
            struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
            while (!pg->stopping && pg->ready_seq == seq && tk_mono_ns() < until)
                if (pthread_cond_timedwait(&pg->claimer_cv, &pg->mu, &ts) != 0)
                    break;
        }
    }
    pthread_mutex_unlock(&pg->mu);
    tk_pg_disconnect(c);
    atomic_store(&pg->up_claimer, 0);
    return NULL;
}

int tk_pg_start(tk_pg *pg, unsigned n_threads)
{
    int rc = TASKER_OK, created = 0;
    pthread_mutex_lock(&pg->mu);
    if (pg->closing)
        rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    else if (pg->workers)
        rc = tk_err(TASKER_EBUSY, TASKER_CATEGORY_STATE, NULL,
                    "worker threads are already running (%u)", pg->n_workers);
    else if (!(pg->workers = tk_calloc(n_threads, sizeof *pg->workers)))
        rc = tk_enomem();
    else if ((rc = tk_pg_runtime_start_locked(pg)) == TASKER_OK)
        created = 1;
    else {
        tk_free(pg->workers);
        pg->workers = NULL;
    }
    if (created) {
        pg->stopping = 0;
        pg->n_workers = 0;
        for (unsigned i = 0; i < n_threads; i++) {
            if (pthread_create(&pg->workers[i], NULL, worker_main, pg) != 0) {
                rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                            "could not start worker thread %u of %u", i + 1, n_threads);
                break;
            }
            pg->n_workers++;
        }
        if (rc == TASKER_OK) {
            if (pthread_create(&pg->claimer, NULL, claimer_main, pg) != 0)
                rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                            "could not start the claimer thread");
            else
                pg->claimer_on = 1;
        }
    }
    /* Only a start that made threads undoes them: EBUSY leaves the
     * running workers alone. */
    int cleanup = rc != TASKER_OK && created;
    pthread_mutex_unlock(&pg->mu);
    if (cleanup)
        tk_pg_stop(pg, 0);
    return rc;
}

void tk_pg_give_back(tk_pg *pg, tk_pgconn *c, tk_pgclaim *list)
{
    size_t n = 0;
    for (tk_pgclaim *cl = list; cl; cl = cl->qnext)
        n++;
    if (!n)
        return;
    tk_pgclaim **arr = tk_calloc(n, sizeof *arr);
    size_t k = 0;
    for (tk_pgclaim *cl = list; cl && arr; cl = cl->qnext)
        arr[k++] = cl;
    tk_pgconn *own = NULL;
    if (!c && tk_pg_pool_get(pg, &own) == TASKER_OK)
        c = own;
    /* If this fails the leases expire and the steps are reclaimed then. */
    if (c && k)
        tk_pg_release(pg, c, arr, k, 1);
    tk_pg_pool_put(pg, own);
    tk_free(arr);
    tk_pg_obs_released(pg, list); /* circuit trials end without an outcome */
    tk_pgclaim *gone = NULL;
    pthread_mutex_lock(&pg->mu);
    while (list) {
        tk_pgclaim *nx = list->qnext;
        list->qnext = NULL;
        tk_pgclaim *g = tk_pg_unpin_locked(pg, list, TK_PIN_HELD);
        if (g) {
            g->qnext = gone;
            gone = g;
        }
        list = nx;
    }
    pthread_mutex_unlock(&pg->mu);
    while (gone) {
        tk_pgclaim *nx = gone->qnext;
        tk_pg_claim_free(gone);
        gone = nx;
    }
}

int tk_pg_stop(tk_pg *pg, int drain_ms)
{
    pthread_mutex_lock(&pg->mu);
    pg->stopping = 1;
    pthread_cond_broadcast(&pg->work_cv);
    pthread_cond_broadcast(&pg->claimer_cv);
    pthread_t *workers = pg->workers;
    unsigned n = pg->n_workers;
    int claimer = pg->claimer_on;
    pg->workers = NULL;
    pg->n_workers = 0;
    pg->claimer_on = 0;
    pthread_mutex_unlock(&pg->mu);
    if (claimer)
        pthread_join(pg->claimer, NULL);
    for (unsigned i = 0; i < n; i++)
        pthread_join(workers[i], NULL);
    tk_free(workers);

    /* Claims no handler started go back to the queue; they do not count
     * as attempts. */
    pthread_mutex_lock(&pg->mu);
    tk_pgclaim *lq = pg->lq_head;
    for (tk_pgclaim *cl = lq; cl; cl = cl->qnext)
        cl->state = TK_CL_FINISHED; /* the heartbeat leaves them alone */
    pg->lq_head = pg->lq_tail = NULL;
    pg->n_lq = 0;
    pthread_mutex_unlock(&pg->mu);
    tk_pg_give_back(pg, NULL, lq);

    int rc = TASKER_OK;
    int64_t deadline = tk_mono_ns() + (int64_t)(drain_ms > 0 ? drain_ms : 0) * 1000000;
    struct timespec ts = {.tv_sec = deadline / 1000000000, .tv_nsec = deadline % 1000000000};
    pthread_mutex_lock(&pg->mu);
    while (pg->n_out && drain_ms != 0) {
        int w = drain_ms < 0 ? pthread_cond_wait(&pg->drain_cv, &pg->mu)
                             : pthread_cond_timedwait(&pg->drain_cv, &pg->mu, &ts);
        if (w != 0)
            break;
    }
    size_t left = pg->n_out;
    pg->stopping = 0;
    pthread_mutex_unlock(&pg->mu);
    /* Still in flight after the drain: released, so that another worker
     * runs them now instead of after their lease expires.  The attempt
     * stays counted: a handler still holds its number, and the next claim
     * must fence it out. */
    if (left && drain_ms != 0) {
        tk_pg_release_held(pg, 1);
        rc = tk_err(TASKER_ETIMEOUT, TASKER_CATEGORY_STATE,
                    json_pack("{s:I}", "steps_in_flight", (json_int_t)left),
                    "%zu step(s) were still in flight after %d ms", left, drain_ms);
    }
    return rc;
}

/* ---- poll mode ---------------------------------------------------------------- */

int tk_pg_claim(tk_pg *pg, tasker_step **steps_out, size_t *n_out, size_t max)
{
    *n_out = 0;
    pthread_mutex_lock(&pg->mu);
    if (pg->closing) {
        pthread_mutex_unlock(&pg->mu);
        return tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    }
    if (pg->evfd >= 0) {
        uint64_t v;
        if (pg->ev_armed && read(pg->evfd, &v, sizeof v) == sizeof v)
            pg->ev_armed = 0;
        if (read(pg->tfd, &v, sizeof v) == sizeof v)
            pg->tfd_due_ms = 0;
    }
    tk_pg_handlers_refresh_locked(pg);
    int have = pg->poll_handlers && strcmp(pg->poll_handlers, "{}") && max && !pg->stopping;
    int rc = have ? tk_pg_runtime_start_locked(pg) : TASKER_OK;
    pthread_mutex_unlock(&pg->mu);
    if (!have || rc)
        return rc;
    tk_pgconn *c = NULL;
    tk_pgclaim *list = NULL;
    size_t n = 0;
    int64_t db_due = 0;
    if ((rc = tk_pg_pool_get(pg, &c)) == TASKER_OK)
        rc = tk_pg_claim_round(pg, c, 1, max, &list, &n, &db_due);
    tk_pg_pool_put(pg, c);
    for (tk_pgclaim *cl = list, *nx; cl; cl = nx) {
        nx = cl->qnext;
        cl->qnext = NULL; /* reused by the flush queue and the retained list */
        steps_out[(*n_out)++] = &cl->base;
    }
    /* Handed out now: their time limits start (the heartbeat thread may
     * act on them from here on). */
    pthread_mutex_lock(&pg->mu);
    for (size_t i = 0; i < *n_out; i++)
        tk_pg_obs_start_locked(pg, (tk_pgclaim *)(void *)steps_out[i]);
    pthread_mutex_unlock(&pg->mu);
    tk_pg_obs_started(pg, steps_out, *n_out);
    pthread_mutex_lock(&pg->mu);
    if (rc == TASKER_OK && n == max) {
        tk_pg_poll_arm_locked(pg, 1, 0); /* there may be more */
    } else {
        /* Try again at the next known due time, or after the poll
         * interval (this also retries after an error). */
        int64_t due = tk_now_ns() / 1000000 + pg->poll_ms;
        int64_t known = pg->next_due_ms;
        if (db_due > 0 && (!known || db_due < known))
            known = db_due;
        if (known > 0 && known < due)
            due = known;
        tk_pg_poll_arm_locked(pg, 0, due);
    }
    pthread_mutex_unlock(&pg->mu);
    return rc;
}

int tk_pg_runtime_start_locked(tk_pg *pg)
{
    int rc = TASKER_OK;
    if (!pg->flusher_on)
        rc = tk_pg_flusher_start(pg);
    if (rc == TASKER_OK && !pg->heart_on)
        rc = tk_pg_heartbeat_start(pg);
    return rc;
}
