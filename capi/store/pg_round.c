/*
 * Postgres store: claims under the circuit breakers (issue 5).
 *
 * Namespace circuits ("namespace:NAME") guard each namespace's queue
 * operations.  A claim round normally makes one query for every namespace,
 * leaving out those whose circuit holds them back.  When that query fails
 * for a reason other than the connection (a trigger, a privilege, a row
 * lock held too long on one namespace's rows), the round cannot tell which
 * namespace failed, so the store claims namespace by namespace from then
 * on: each namespace's query feeds its own circuit, the namespaces that
 * work keep being served, and the failing one opens its circuit (with
 * breaker.* configured) and is then left out.  Once every per-namespace
 * query of a round succeeds, one query serves all namespaces again.
 *
 * A connection failure is nobody's namespace: the database is away for all
 * of them.  It counts as a store error (health reports the store down) and
 * the reconnection backoff deals with it; circuits are not touched, so
 * work resumes as soon as the database is back.
 *
 * Handler circuits ("handler:NAME") work as in the memory store: steps of a
 * handler whose circuit is open are not claimed (the handler is left out
 * of the claim's handler list) and, half-open, only breaker.half_open_max
 * of them are let through at a time; extra claims are given back unused.
 *
 * Lock order: pg->mu before the coordinator's lock, never the other way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "run/engine.h"
#include "store/pg_internal.h"

int tk_pg_conn_failed(const tk_pgconn *c)
{
    return !c || !c->conn || PQstatus(c->conn) != CONNECTION_OK;
}

/* Closed and automatic: the breaker lets everything through and only
 * needs to hear outcomes when breakers are configured. */
static int quiet(const tk_breaker *b)
{
    return b->state == TASKER_CIRCUIT_CLOSED && b->mode == TASKER_CIRCUIT_AUTO;
}

/* Whether claiming for a handler may get a step through its circuit now
 * (tk_breaker_allow decides for real when the claim comes back). */
static int may_pass(const tasker_coordinator *c, const tk_breaker *b, int64_t mono)
{
    if (b->mode == TASKER_CIRCUIT_FORCE_CLOSED)
        return 1;
    if (b->mode == TASKER_CIRCUIT_FORCE_OPEN)
        return 0;
    switch (b->state) {
    case TASKER_CIRCUIT_CLOSED:
        return 1;
    case TASKER_CIRCUIT_HALF_OPEN:
        return b->half_open_inflight < (uint32_t)c->cfg.num[TK_CFG_BREAKER_HALF_OPEN_MAX];
    default:
        return mono >= b->open_until;
    }
}

void tk_pg_circuits_scan_locked(tk_pg *pg)
{
    tasker_coordinator *c = pg->coord;
    int plain = 1;
    int64_t due = 0;
    for (const tk_breaker *b = c->breakers; b; b = b->next_all) {
        if (!quiet(b))
            plain = 0;
        if (b->mode == TASKER_CIRCUIT_AUTO && b->state == TASKER_CIRCUIT_OPEN &&
            (!due || b->open_until < due))
            due = b->open_until;
    }
    atomic_store(&pg->plain, plain);
    atomic_store(&pg->brk_due, (long long)due);
}

/* ---- a round's plan ---------------------------------------------------- */

typedef struct nsent {
    tk_breaker *b;
    const char *name; /* the namespace object's: lives as long as the coordinator */
    uint8_t counted;  /* tk_breaker_allow said yes: it must hear an outcome or a release */
    uint8_t fed;
    uint8_t bad;      /* failing lately: asked last */
} nsent;

typedef struct plan {
    char *handlers; /* text[] literal, NULL: nothing to claim */
    char *skip;     /* namespaces held back by their circuit, NULL: none */
    char *known;    /* every namespace this process knows (the "rest" query skips them) */
    nsent *ns;
    size_t n_ns;
    int isolate;
} plan;

static void plan_free(plan *p)
{
    tk_free(p->handlers);
    tk_free(p->skip);
    tk_free(p->known);
    tk_free(p->ns);
    memset(p, 0, sizeof *p);
}

static char *buf_take(tk_buf *b)
{
    if (b->oom) {
        tk_buf_free(b);
        return NULL;
    }
    return b->p;
}

static int cmp_ns(const void *a, const void *b)
{
    const nsent *x = a, *y = b;
    return (int)x->bad - (int)y->bad;
}

static int build_plan(tk_pg *pg, int poll, plan *p)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_lock(&pg->mu);
    tk_pg_handlers_refresh_locked(pg);
    const char *cached = poll ? pg->poll_handlers : pg->worker_handlers;
    p->handlers = cached && strcmp(cached, "{}") ? tk_strdup(cached) : NULL;
    p->isolate = pg->isolate;
    pthread_mutex_unlock(&pg->mu);
    if (!p->handlers)
        return 0;

    tasker_coordinator *c = pg->coord;
    tk_buf hb, sb, kb;
    tk_buf_init(&hb);
    tk_buf_init(&sb);
    tk_buf_init(&kb);
    tk_buf_add(&hb, "{", 1);
    tk_buf_add(&sb, "{", 1);
    tk_buf_add(&kb, "{", 1);
    int hfirst = 1, sfirst = 1, kfirst = 1, filtered = 0, skipped = 0;
    pthread_mutex_lock(&c->lock);
    int64_t mono = tk_mono_ns();
    /* Handlers: the cached list unless some circuit holds one back. */
    for (tk_handler *h = c->handlers; h && !filtered; h = h->hh.next)
        filtered = !quiet(h->breaker);
    if (filtered) {
        for (tk_handler *h = c->handlers; h; h = h->hh.next) {
            if ((poll ? h->fn != NULL : h->fn == NULL) || !may_pass(c, h->breaker, mono))
                continue;
            tk_buf_elem(&hb, h->name, hfirst);
            hfirst = 0;
        }
    }
    size_t n_ns = HASH_COUNT(c->namespaces);
    p->ns = n_ns ? tk_calloc(n_ns, sizeof *p->ns) : NULL;
    if (n_ns && !p->ns) {
        pthread_mutex_unlock(&c->lock);
        tk_buf_free(&hb);
        tk_buf_free(&sb);
        tk_buf_free(&kb);
        plan_free(p);
        return -1;
    }
    for (tk_nsobj *o = c->namespaces; o; o = o->hh.next) {
        tk_buf_elem(&kb, o->name, kfirst);
        kfirst = 0;
        tk_breaker *b = o->breaker;
        int counted = 0;
        if (!quiet(b)) {
            if (!tk_breaker_allow(c, b, mono)) {
                tk_buf_elem(&sb, o->name, sfirst);
                sfirst = 0;
                skipped = 1;
                continue;
            }
            counted = 1;
        }
        nsent *e = &p->ns[p->n_ns++];
        e->b = b;
        e->name = o->name;
        e->counted = (uint8_t)counted;
        e->bad = b->consecutive_failures > 0;
    }
    tk_pg_circuits_scan_locked(pg);
    pthread_mutex_unlock(&c->lock);
    tk_buf_add(&hb, "}", 1);
    tk_buf_add(&sb, "}", 1);
    tk_buf_add(&kb, "}", 1);
    if (filtered) {
        tk_free(p->handlers);
        p->handlers = hfirst ? NULL : buf_take(&hb); /* every handler held back */
        if (hfirst)
            tk_buf_free(&hb);
    } else {
        tk_buf_free(&hb);
    }
    p->skip = skipped ? buf_take(&sb) : NULL;
    if (!skipped)
        tk_buf_free(&sb);
    p->known = buf_take(&kb);
    /* Namespaces failing lately go last, so the healthy ones are served
     * first within a round. */
    if (p->n_ns > 1)
        qsort(p->ns, p->n_ns, sizeof *p->ns, cmp_ns);
    if ((skipped && !p->skip) || !p->known)
        return -1;
    return 0;
}

/* Gives each namespace of the plan its outcome (ok 1/0), or a release for
 * those that got none (ok -1 for all not yet fed). */
static void feed(tk_pg *pg, plan *p, size_t only, int ok)
{
    tasker_coordinator *c = pg->coord;
    int64_t mono = tk_mono_ns();
    pthread_mutex_lock(&c->lock);
    for (size_t i = 0; i < p->n_ns; i++) {
        nsent *e = &p->ns[i];
        if (e->fed || (only != (size_t)-1 && i != only))
            continue;
        e->fed = 1;
        if (ok >= 0 && (c->breakers_on || e->b->state != TASKER_CIRCUIT_CLOSED))
            tk_breaker_result(c, e->b, ok, mono);
        else if (e->counted)
            tk_breaker_release(c, e->b);
    }
    tk_pg_circuits_scan_locked(pg);
    pthread_mutex_unlock(&c->lock);
}

static void append(tk_pgclaim **list, size_t *n, tk_pgclaim *more, size_t k)
{
    tk_pgclaim **tail = list;
    while (*tail)
        tail = &(*tail)->qnext;
    *tail = more;
    *n += k;
}

/* ---- a round ------------------------------------------------------------------ */

int tk_pg_claim_round(tk_pg *pg, tk_pgconn *c, int poll, size_t want, tk_pgclaim **list,
                      size_t *n, int64_t *db_due)
{
    *list = NULL;
    *n = 0;
    *db_due = 0;
    plan p;
    if (build_plan(pg, poll, &p) < 0)
        return tk_enomem();
    if (!p.handlers) {
        feed(pg, &p, (size_t)-1, -1);
        plan_free(&p);
        return TASKER_OK;
    }
    tk_pgclaim *got = NULL, *more;
    size_t n_got = 0, k;
    int rc = TASKER_OK;
    if (!p.isolate) {
        rc = tk_pg_claim_batch(pg, c, p.handlers, p.skip, NULL, want, poll, &got, &n_got);
        if (rc == TASKER_OK) {
            feed(pg, &p, (size_t)-1, 1);
        } else if (tk_pg_conn_failed(c)) {
            feed(pg, &p, (size_t)-1, -1);
        } else {
            /* Somebody's queue operation fails: find out whose. */
            pthread_mutex_lock(&pg->mu);
            pg->isolate = 1;
            pthread_mutex_unlock(&pg->mu);
            p.isolate = 1;
        }
    }
    if (p.isolate) {
        int all_ok = 1, any_ok = 0, conn = 0;
        size_t left = p.n_ns + 1;
        for (size_t i = 0; i < p.n_ns && !conn; i++, left--) {
            size_t room = want > n_got ? want - n_got : 0;
            size_t lim = (room + left - 1) / left;
            if (lim < 1)
                lim = 1; /* every namespace is asked: that is how a failing one recovers */
            more = NULL;
            k = 0;
            int r = tk_pg_claim_batch(pg, c, p.handlers, NULL, p.ns[i].name, lim, poll, &more, &k);
            if (r == TASKER_OK) {
                append(&got, &n_got, more, k);
                feed(pg, &p, i, 1);
                any_ok = 1;
            } else if (tk_pg_conn_failed(c)) {
                conn = 1;
                rc = r;
            } else {
                feed(pg, &p, i, 0);
                all_ok = 0;
                rc = r;
            }
        }
        feed(pg, &p, (size_t)-1, -1);
        if (!conn) {
            /* Namespaces this process has no object for (templates
             * registered elsewhere): one query for all of them. */
            size_t room = want > n_got ? want - n_got : 1;
            more = NULL;
            k = 0;
            int r = tk_pg_claim_batch(pg, c, p.handlers, p.known, NULL, room, poll, &more, &k);
            if (r == TASKER_OK) {
                append(&got, &n_got, more, k);
                any_ok = 1;
            } else {
                all_ok = 0;
                rc = r;
                conn = tk_pg_conn_failed(c);
            }
        }
        if (all_ok && !conn) {
            pthread_mutex_lock(&pg->mu);
            pg->isolate = 0;
            pthread_mutex_unlock(&pg->mu);
        }
        if (any_ok)
            rc = TASKER_OK; /* some namespaces were served; the failures are counted */
    }
    size_t kept = tk_pg_admit(pg, c, &got, n_got);
    /* Drained: when does something become claimable (a delayed retry, a
     * lease expiring)?  Asked at most once per poll interval: delayed
     * retries are also announced, and an idle claimer polls anyway. */
    if (rc == TASKER_OK && n_got < want && !tk_pg_conn_failed(c)) {
        int64_t now = tk_mono_ns(), last = (int64_t)atomic_load(&pg->due_asked_mono);
        if (!last || now - last >= (int64_t)pg->poll_ms * 1000000) {
            atomic_store(&pg->due_asked_mono, (long long)now);
            *db_due = tk_pg_next_due(pg, c, p.handlers);
        }
    }
    *list = got;
    *n = kept;
    plan_free(&p);
    return rc;
}

/* ---- admission through the handler circuits ----------------------------------- */

size_t tk_pg_admit(tk_pg *pg, tk_pgconn *c, tk_pgclaim **list, size_t n)
{
    if (!*list || !n)
        return 0;
    tasker_coordinator *co = pg->coord;
    tk_pgclaim *keep = NULL, **kt = &keep, *refused = NULL;
    size_t kept = 0;
    int64_t mono = 0;
    char key[800];
    pthread_mutex_lock(&co->lock);
    for (tk_pgclaim *cl = *list, *nx; cl; cl = nx) {
        nx = cl->qnext;
        cl->qnext = NULL;
        tk_handler *h;
        HASH_FIND_STR(co->handlers, cl->view.handler, h);
        cl->h = h;
        tk_reg *reg = NULL;
        snprintf(key, sizeof key, "%s/%s@%s", cl->view.ns, cl->view.template_name, cl->tversion);
        HASH_FIND_STR(co->templates, key, reg);
        /* Step events name the step through this process's registration of
         * the same (immutable) template version. */
        cl->reg = reg && cl->idx >= 0 && (uint32_t)cl->idx < reg->tmpl->n_steps ? reg : NULL;
        int ok = h != NULL;
        if (h && !quiet(h->breaker)) {
            if (!mono)
                mono = tk_mono_ns();
            ok = tk_breaker_allow(co, h->breaker, mono);
            cl->brk = (uint8_t)ok;
        }
        if (ok) {
            *kt = cl;
            kt = &cl->qnext;
            kept++;
        } else {
            cl->qnext = refused;
            refused = cl;
        }
    }
    pthread_mutex_unlock(&co->lock);
    *list = keep;
    if (refused) {
        pthread_mutex_lock(&pg->mu);
        for (tk_pgclaim *cl = refused; cl; cl = cl->qnext) {
            if (cl->poll && pg->n_out)
                pg->n_out--;
            cl->state = TK_CL_FINISHED; /* the heartbeat leaves them alone */
        }
        pthread_cond_broadcast(&pg->drain_cv);
        pthread_mutex_unlock(&pg->mu);
        /* The attempts never reached a handler: they do not count. */
        tk_pg_give_back(pg, tk_pg_conn_failed(c) ? NULL : c, refused);
    }
    return kept;
}
