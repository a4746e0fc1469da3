/* Metrics hooks, the Prometheus text exposition and the health report. */
#include "obs/metrics.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "obs/breaker.h"
#include "obs/events.h"
#include "obs/hot.h"
#include "run/engine.h"

/* Upper bounds in seconds; chosen to separate microsecond steps from
 * second-long ones. */
static const double bounds[TK_HIST_BUCKETS] = {0.00001, 0.00005, 0.0001, 0.0005, 0.001,
                                               0.005,   0.01,    0.05,   0.1,    0.5,
                                               1,       5,       30,     120};

/* The same bounds in nanoseconds: adding a sample is integer compares only
 * (tk_hist_bucket_inline in metrics.h). */
const int64_t tk_hist_bounds_ns[TK_HIST_BUCKETS] = {
    10000,     50000,      100000,     500000,      1000000,      5000000,      10000000,
    50000000,  100000000,  500000000,  1000000000,  5000000000LL, 30000000000LL,
    120000000000LL};

/* For a sample of bit length L (1 + floor(log2 ns), 0 for 0): the first
 * bucket whose bound is at least 2^(L-1).  No two bounds share a power-of-two
 * interval, so at most one more compare finds the bucket; test_obs_internal
 * checks this against the plain linear search. */
const uint8_t tk_hist_first_bucket[65] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  1,  1,  2,  3,  3,  4,  5,
    5,  5,  6,  7,  7,  8,  9,  9,  10, 11, 11, 11, 12, 12, 13, 13, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14};

int tk_hist_bucket(int64_t ns)
{
    return tk_hist_bucket_inline(ns);
}

void tk_hist_add(tk_hist *h, int64_t ns)
{
    tk_hist_add_inline(h, ns);
}

tk_nsobj *tk_nsobj_get(tasker_coordinator *c, const char *name)
{
    tk_nsobj *o;
    HASH_FIND_STR(c->namespaces, name, o);
    if (o)
        return o;
    o = tk_calloc(1, sizeof *o);
    if (!o || !(o->name = tk_strdup(name)) ||
        !(o->breaker = tk_breaker_new(c, "namespace", name))) {
        if (o)
            tk_free(o->name);
        tk_free(o);
        return NULL;
    }
    tk_hash_oom = 0;
    HASH_ADD_KEYPTR(hh, c->namespaces, o->name, strlen(o->name), o);
    if (tk_hash_oom) {
        c->breakers = o->breaker->next_all; /* it was linked first */
        tk_breaker_free(o->breaker);
        tk_free(o->name);
        tk_free(o);
        return NULL;
    }
    return o;
}

void tk_nsobj_free_all(tasker_coordinator *c)
{
    tk_nsobj *o, *tmp;
    HASH_ITER(hh, c->namespaces, o, tmp) {
        HASH_DEL(c->namespaces, o);
        tk_free(o->name);
        tk_free(o);
    }
}

/* The general event writer (obs/hot.h has the hooks that call it): also
 * failure events, whose strings are copied per subscriber because each
 * record owns its own. */
void tk_obs_emit(tasker_coordinator *c, uint32_t type, const tk_task *t, const tk_step *s,
                 int64_t now)
{
    const tk_failure_rec *f = NULL;
    if (s && (type & (TASKER_EVENT_STEP_FAILED | TASKER_EVENT_STEP_DEAD_LETTERED)))
        f = s->failures_tail;
    for (struct tasker_subscription *sub = c->subs; sub; sub = sub->next) {
        if (!(sub->mask & type))
            continue;
        size_t tail;
        tk_evslot *r = tk_event_slot(sub, &tail);
        if (!r)
            continue; /* full: counted as dropped */
        tk_evslot_fill(r, type, t, s, now);
        r->has_side = f != NULL;
        if (f) {
            tk_evside *e = &sub->side[tail & sub->slot_mask];
            e->err_class = tk_strdup(f->error_class);
            e->err_msg = tk_strdup(f->message);
            e->circuit = e->circuit_ns = NULL;
        }
        tk_event_commit(sub, tail);
    }
}

/* The rarer step transitions (failures, cancellation): tk_obs_step's slow
 * path. */
void tk_obs_step_slow(tasker_coordinator *c, tk_step *s, uint8_t from, uint8_t to, int64_t now,
                      int reason)
{
    tk_handler_metrics *m = c->metrics_on ? &s->task->reg->handlers[s->idx]->metrics : NULL;
    uint32_t ev = 0, ev2 = 0;
    switch (to) {
    case TASKER_STEP_WAITING_FOR_RETRY:
    case TASKER_STEP_ERROR:
        if (from != TASKER_STEP_IN_PROGRESS)
            break;
        ev = TASKER_EVENT_STEP_FAILED;
        ev2 = to == TASKER_STEP_ERROR ? TASKER_EVENT_STEP_DEAD_LETTERED
                                      : TASKER_EVENT_STEP_RETRY_SCHEDULED;
        if (m) {
            m->failed++;
            if (reason == TK_R_TIMED_OUT)
                m->timed_out++;
            tk_hist_add(&m->duration, now - s->started_at);
            if (to == TASKER_STEP_ERROR)
                m->dead_lettered++;
            else
                m->retried++;
        }
        break;
    case TASKER_STEP_CANCELLED:
        ev = TASKER_EVENT_STEP_CANCELLED;
        break;
    default:
        break;
    }
    if (ev & c->event_mask)
        tk_obs_emit(c, ev, s->task, s, now);
    if (ev2 & c->event_mask)
        tk_obs_emit(c, ev2, s->task, s, now);
}

void tk_obs_task_slow(tasker_coordinator *c, tk_task *t, uint8_t to, int64_t now)
{
    tk_nsobj *ns = c->metrics_on ? t->reg->nsobj : NULL;
    uint32_t ev = 0;
    switch (to) {
    case TASKER_TASK_COMPLETE:
        ev = TASKER_EVENT_TASK_COMPLETED;
        if (ns) {
            ns->completed++;
            tk_hist_add(&ns->task_duration, now - t->created_at);
        }
        break;
    case TASKER_TASK_ERROR:
        ev = TASKER_EVENT_TASK_FAILED;
        if (ns) {
            ns->failed++;
            tk_hist_add(&ns->task_duration, now - t->created_at);
        }
        break;
    case TASKER_TASK_CANCELLED:
        ev = TASKER_EVENT_TASK_CANCELLED;
        if (ns)
            ns->cancelled++;
        break;
    default:
        break;
    }
    if (ev & c->event_mask)
        tk_obs_emit(c, ev, t, NULL, now);
}

/* ---- Prometheus text --------------------------------------------------------- */

#define put tk_sb_printf
typedef tk_sb sbuf;

/* A label value with \, " and newline escaped as the exposition format asks. */
static const char *esc(const char *s, char *out, size_t outlen)
{
    size_t j = 0;
    for (; *s && j + 2 < outlen; s++) {
        if (*s == '\\' || *s == '"') {
            out[j++] = '\\';
            out[j++] = *s;
        } else if (*s == '\n') {
            out[j++] = '\\';
            out[j++] = 'n';
        } else {
            out[j++] = *s;
        }
    }
    out[j] = '\0';
    return out;
}

static void hist(sbuf *b, const char *name, const char *label, const char *value, const tk_hist *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < TK_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", name, label, value, bounds[i],
            (unsigned long long)cum);
    }
    cum += h->counts[TK_HIST_BUCKETS];
    put(b, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label, value, (unsigned long long)cum);
    put(b, "%s_sum{%s=\"%s\"} %.9g\n", name, label, value, (double)h->sum_ns / 1e9);
    put(b, "%s_count{%s=\"%s\"} %llu\n", name, label, value, (unsigned long long)cum);
}

static void head(sbuf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int tasker_metrics_text(char **text_out, tasker_coordinator *c)
{
    if (!text_out || !c)
        return tk_einval("tasker_metrics_text: text_out and coordinator must not be NULL");
    *text_out = NULL;
    sbuf b;
    tk_sb_init(&b, 8192);
    if (b.oom)
        return tk_enomem();
    char e1[512];
    /* The postgres store reads the database first (no lock held). */
    tk_pg_probe probe = {0};
    if (c->pg)
        tk_pg_probe_take(c->pg, &probe);
    pthread_mutex_lock(&c->lock);
    tk_nsobj *ns, *ntmp;
    tk_handler *h, *htmp;

    head(&b, "tasker_tasks_total", "counter", "Tasks by namespace and outcome.");
    HASH_ITER(hh, c->namespaces, ns, ntmp) {
        esc(ns->name, e1, sizeof e1);
        put(&b, "tasker_tasks_total{namespace=\"%s\",outcome=\"created\"} %llu\n", e1,
            (unsigned long long)ns->created);
        put(&b, "tasker_tasks_total{namespace=\"%s\",outcome=\"completed\"} %llu\n", e1,
            (unsigned long long)ns->completed);
        put(&b, "tasker_tasks_total{namespace=\"%s\",outcome=\"failed\"} %llu\n", e1,
            (unsigned long long)ns->failed);
        put(&b, "tasker_tasks_total{namespace=\"%s\",outcome=\"cancelled\"} %llu\n", e1,
            (unsigned long long)ns->cancelled);
    }
    head(&b, "tasker_step_attempts_total", "counter", "Step attempts by handler and outcome.");
    HASH_ITER(hh, c->handlers, h, htmp) {
        esc(h->name, e1, sizeof e1);
        const tk_handler_metrics *m = &h->metrics;
        put(&b, "tasker_step_attempts_total{handler=\"%s\",outcome=\"started\"} %llu\n", e1,
            (unsigned long long)m->started);
        put(&b, "tasker_step_attempts_total{handler=\"%s\",outcome=\"succeeded\"} %llu\n", e1,
            (unsigned long long)m->succeeded);
        put(&b, "tasker_step_attempts_total{handler=\"%s\",outcome=\"failed\"} %llu\n", e1,
            (unsigned long long)m->failed);
        put(&b, "tasker_step_attempts_total{handler=\"%s\",outcome=\"timed_out\"} %llu\n", e1,
            (unsigned long long)m->timed_out);
    }
    head(&b, "tasker_step_retries_total", "counter", "Retries scheduled, by handler.");
    HASH_ITER(hh, c->handlers, h, htmp)
        put(&b, "tasker_step_retries_total{handler=\"%s\"} %llu\n", esc(h->name, e1, sizeof e1),
            (unsigned long long)h->metrics.retried);
    head(&b, "tasker_dead_letters_total", "counter",
         "Steps put in error with no retry left, by handler.");
    HASH_ITER(hh, c->handlers, h, htmp)
        put(&b, "tasker_dead_letters_total{handler=\"%s\"} %llu\n", esc(h->name, e1, sizeof e1),
            (unsigned long long)h->metrics.dead_lettered);
    head(&b, "tasker_queue_wait_seconds", "histogram",
         "Time from a step becoming ready to its handler starting.");
    HASH_ITER(hh, c->handlers, h, htmp)
        hist(&b, "tasker_queue_wait_seconds", "handler", esc(h->name, e1, sizeof e1),
             &h->metrics.queue_wait);
    head(&b, "tasker_handler_duration_seconds", "histogram", "Handler run time per attempt.");
    HASH_ITER(hh, c->handlers, h, htmp)
        hist(&b, "tasker_handler_duration_seconds", "handler", esc(h->name, e1, sizeof e1),
             &h->metrics.duration);
    head(&b, "tasker_task_duration_seconds", "histogram",
         "Time from task creation to its final state.");
    HASH_ITER(hh, c->namespaces, ns, ntmp)
        hist(&b, "tasker_task_duration_seconds", "namespace", esc(ns->name, e1, sizeof e1),
             &ns->task_duration);
    head(&b, "tasker_queue_depth", "gauge", "Steps ready and waiting for a handler.");
    if (c->pg)
        put(&b, "%s", probe.depth_text ? probe.depth_text : "");
    else
        HASH_ITER(hh, c->namespaces, ns, ntmp)
            put(&b, "tasker_queue_depth{namespace=\"%s\"} %zu\n", esc(ns->name, e1, sizeof e1),
                ns->depth);
    head(&b, "tasker_steps_in_flight", "gauge", "Steps held by handlers right now.");
    put(&b, "tasker_steps_in_flight %zu\n", c->pg ? probe.in_flight : c->outstanding);
    head(&b, "tasker_retry_timers", "gauge", "Steps waiting for a retry or a timeout timer.");
    put(&b, "tasker_retry_timers %zu\n", c->pg ? probe.delayed : c->heap_len);
    head(&b, "tasker_fenced_completions_total", "counter",
         "Completions refused because the attempt no longer held the step.");
    put(&b, "tasker_fenced_completions_total %llu\n",
        (unsigned long long)(c->m_fenced + probe.fenced));
    head(&b, "tasker_store_errors_total", "counter", "Failed store operations.");
    put(&b, "tasker_store_errors_total %llu\n",
        (unsigned long long)(c->m_store_errors + probe.store_errors));
    head(&b, "tasker_events_dropped_total", "counter",
         "Events dropped because a subscriber's buffer was full.");
    uint64_t dropped = 0;
    for (struct tasker_subscription *s = c->subs; s; s = s->next)
        dropped += atomic_load(&s->dropped);
    put(&b, "tasker_events_dropped_total %llu\n", (unsigned long long)dropped);
    head(&b, "tasker_circuit_state", "gauge", "Circuit state: 0 closed, 1 open, 2 half-open.");
    tk_breaker_metrics(c, &b);
    head(&b, "tasker_store_up", "gauge", "1 when the store is reachable.");
    put(&b, "tasker_store_up{store=\"%s\"} %d\n", c->pg ? "postgres" : "memory",
        c->pg ? probe.reachable : 1);
    if (probe.text)
        put(&b, "%s", probe.text);
    pthread_mutex_unlock(&c->lock);
    tk_pg_probe_free(&probe);
    if (b.oom) {
        tk_free(b.buf);
        return tk_enomem();
    }
    *text_out = b.buf;
    return TASKER_OK;
}

/* ---- health ------------------------------------------------------------------ */

int tasker_health_json(char **json_out, tasker_coordinator *c)
{
    if (!json_out || !c)
        return tk_einval("tasker_health_json: json_out and coordinator must not be NULL");
    *json_out = NULL;
    json_t *nss = json_object();
    json_t *circuits = json_object();
    int64_t now = tk_now_ns();
    int degraded = 0;
    /* The postgres store reads its queues and reachability first. */
    tk_pg_probe probe = {0};
    if (c->pg)
        tk_pg_probe_take(c->pg, &probe);
    pthread_mutex_lock(&c->lock);
    tk_nsobj *ns, *ntmp, *nshead = c->pg ? NULL : c->namespaces;
    HASH_ITER(hh, nshead, ns, ntmp) {
        /* Oldest ready step: the queues are FIFO per priority, so the first
         * step of each namespace in each bucket is the oldest of that bucket. */
        int64_t oldest = 0;
        for (int qi = 0; qi < 2 && ns->depth; qi++)
            for (tk_bucket *bk = c->q[qi].buckets; bk; bk = bk->next)
                for (tk_step *s = bk->head; s; s = s->q_next)
                    if (s->task->reg->nsobj == ns) {
                        if (!oldest || s->enqueued_at < oldest)
                            oldest = s->enqueued_at;
                        break;
                    }
        json_object_set_new(nss, ns->name,
                            json_pack("{s:I, s:o}", "queue_depth", (json_int_t)ns->depth,
                                      "oldest_ready_age_ms",
                                      oldest ? json_real((double)(now - oldest) / 1e6)
                                             : json_null()));
    }
    degraded = tk_breaker_health(c, circuits);
    pthread_mutex_unlock(&c->lock);
    int reachable = c->pg ? probe.reachable : 1;
    if (probe.namespaces)
        json_object_update(nss, probe.namespaces);
    tk_pg_probe_free(&probe);
    json_t *root = json_pack("{s:s, s:s, s:{s:s, s:b}, s:o, s:o, s:{s:b}}", "status",
                             !reachable ? "down" : degraded ? "degraded" : "ok", "version",
                             TASKER_VERSION_STRING, "store", "kind",
                             c->pg ? "postgres" : "memory", "reachable", reachable,
                             "namespaces", nss, "circuits", circuits, "config", "valid", 1);
    if (!root)
        return tk_enomem();
    *json_out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return *json_out ? TASKER_OK : tk_enomem();
}
