/*
 * Postgres store: lease heartbeats.  A thread renews, every lease/3, the
 * lease of every step this store holds (claimed and not completed, whether
 * queued locally, running in a handler or being flushed).  A lease the
 * database no longer knows (expired, taken over, cancelled) marks the claim
 * lost, so its completion is refused at once without a round trip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "store/pg_internal.h"

/* ---- handler time limits ---------------------------------------------- */

int tk_pg_timeout_fill_locked(tk_pg *pg, tk_pgclaim *cl)
{
    char msg[96];
    snprintf(msg, sizeof msg, "handler did not finish within %u ms", cl->timeout_ms);
    char *cls = tk_strdup("tasker.TimeoutError"), *m = tk_strdup(msg);
    if (!cls || !m) {
        tk_free(cls);
        tk_free(m);
        return -1; /* tried again at the next tick */
    }
    tk_free(cl->result);
    tk_free(cl->f_class);
    tk_free(cl->f_message);
    tk_free(cl->f_context);
    cl->result = NULL;
    cl->f_context = NULL;
    cl->f_class = cls;
    cl->f_message = m;
    cl->ok = 0;
    cl->f_retryable = 1;
    cl->f_after = -1;
    cl->timed_out = 1;
    cl->ended_mono = cl->due_mono;
    atomic_fetch_add(&pg->n_timeouts, 1);
    return 0;
}

int64_t tk_pg_timeouts_locked(tk_pg *pg, int64_t now)
{
    int64_t next = 0;
    for (tk_pgclaim *cl = pg->held; cl; cl = cl->next) {
        if (cl->state != TK_CL_RUNNING || cl->base.done || cl->timed_out || !cl->due_mono)
            continue;
        /* The handler keeps running (a thread cannot be stopped safely);
         * its attempt fails now and its completion will be refused. */
        if (now >= cl->due_mono && !pg->closed && tk_pg_timeout_fill_locked(pg, cl) == 0) {
            tk_pg_flush_push_locked(pg, cl);
            continue;
        }
        if (!next || cl->due_mono < next)
            next = cl->due_mono;
    }
    pg->tmo_next = next;
    return next;
}

static void heartbeat_once(tk_pg *pg, tk_pgconn **cp)
{
    pthread_mutex_lock(&pg->mu);
    size_t n = 0;
    for (tk_pgclaim *cl = pg->held; cl; cl = cl->next)
        if (cl->state != TK_CL_FINISHED && !cl->lost)
            n++;
    tk_pgclaim **cls = n ? tk_calloc(n, sizeof *cls) : NULL;
    size_t k = 0;
    if (cls) {
        for (tk_pgclaim *cl = pg->held; cl; cl = cl->next) {
            if (cl->state != TK_CL_FINISHED && !cl->lost) {
                cl->pins |= TK_PIN_HEART;
                cls[k++] = cl;
            }
        }
    }
    int lease_ms = pg->lease_ms;
    pthread_mutex_unlock(&pg->mu);
    if (!k) {
        tk_free(cls);
        return;
    }
    tk_buf t, i, a;
    tk_buf_init(&t);
    tk_buf_init(&i);
    tk_buf_init(&a);
    tk_buf_add(&t, "{", 1);
    tk_buf_add(&i, "{", 1);
    tk_buf_add(&a, "{", 1);
    for (size_t x = 0; x < k; x++) {
        tk_buf_addf(&t, "%s%lld", x ? "," : "", (long long)cls[x]->task_id);
        tk_buf_addf(&i, "%s%d", x ? "," : "", (int)cls[x]->idx);
        tk_buf_addf(&a, "%s%u", x ? "," : "", cls[x]->base.attempt);
    }
    tk_buf_add(&t, "}", 1);
    tk_buf_add(&i, "}", 1);
    tk_buf_add(&a, "}", 1);
    PGresult *r = NULL;
    int64_t sent = tk_mono_ns();
    if (!t.oom && !i.oom && !a.oom) {
        if (!*cp && tk_pg_connect(pg, cp) == TASKER_OK && tk_pg_async_commit(pg, *cp) != TASKER_OK) {
            tk_pg_disconnect(*cp);
            *cp = NULL;
        }
        atomic_store(&pg->up_heart, *cp != NULL);
        if (*cp) {
            char worker[16], lease[16];
            snprintf(worker, sizeof worker, "%d", pg->worker_id);
            snprintf(lease, sizeof lease, "%d", lease_ms);
            const char *vals[] = {worker, t.p, i.p, a.p, lease};
            r = tk_pg_run(pg, *cp, TK_PS_HEARTBEAT, 5, vals, NULL);
            if (!r && PQstatus((*cp)->conn) != CONNECTION_OK) {
                tk_pg_disconnect(*cp);
                *cp = NULL;
                atomic_store(&pg->up_heart, 0);
            }
        }
    }
    tk_buf_free(&t);
    tk_buf_free(&i);
    tk_buf_free(&a);
    tk_pgclaim *gone = NULL;
    pthread_mutex_lock(&pg->mu);
    for (int row = 0; r && row < PQntuples(r); row++) {
        long ord = strtol(PQgetvalue(r, row, 0), NULL, 10);
        if (ord < 1 || (size_t)ord > k)
            continue;
        tk_pgclaim *cl = cls[ord - 1];
        if (PQgetvalue(r, row, 1)[0] == 't')
            cl->deadline_mono = sent + (int64_t)lease_ms * 1000000;
        else
            cl->lost = 1;
    }
    for (size_t x = 0; x < k; x++) {
        tk_pgclaim *g = tk_pg_unpin_locked(pg, cls[x], TK_PIN_HEART);
        if (g) {
            g->qnext = gone;
            gone = g;
        }
    }
    pthread_mutex_unlock(&pg->mu);
    PQclear(r);
    tk_free(cls);
    while (gone) {
        tk_pgclaim *nx = gone->qnext;
        tk_pg_claim_free(gone);
        gone = nx;
    }
}

static void *heart_main(void *arg)
{
    tk_pg *pg = arg;
    tk_pgconn *c = NULL;
    pthread_mutex_lock(&pg->mu);
    while (!pg->heart_quit) {
        /* Three renewals per lease: one lost round trip does not lose it.
         * Meanwhile the thread watches the handlers' time limits. */
        int64_t beat = tk_mono_ns() + (int64_t)pg->lease_ms / 3 * 1000000;
        for (;;) {
            int64_t now = tk_mono_ns();
            int64_t tmo = tk_pg_timeouts_locked(pg, now);
            if (pg->heart_quit || now >= beat)
                break;
            int64_t until = tmo && tmo < beat ? tmo : beat;
            struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
            pthread_cond_timedwait(&pg->heart_cv, &pg->mu, &ts);
        }
        if (pg->heart_quit)
            break;
        pthread_mutex_unlock(&pg->mu);
        heartbeat_once(pg, &c);
        pthread_mutex_lock(&pg->mu);
    }
    pthread_mutex_unlock(&pg->mu);
    tk_pg_disconnect(c);
    atomic_store(&pg->up_heart, 0);
    return NULL;
}

int tk_pg_heartbeat_start(tk_pg *pg)
{
    pg->heart_quit = 0;
    if (pthread_create(&pg->heart, NULL, heart_main, pg) != 0)
        return tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                      "could not start the heartbeat thread");
    pg->heart_on = 1;
    return TASKER_OK;
}

void tk_pg_heartbeat_stop(tk_pg *pg)
{
    pthread_mutex_lock(&pg->mu);
    int on = pg->heart_on;
    pg->heart_quit = 1;
    pg->heart_on = 0;
    pthread_cond_broadcast(&pg->heart_cv);
    pthread_mutex_unlock(&pg->mu);
    if (on)
        pthread_join(pg->heart, NULL);
}

