#define _GNU_SOURCE
#include "obs_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Absolute CLOCK_REALTIME deadline `ms` from now, for pthread_cond_timedwait. */
static struct timespec deadline_in(int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- gate ------------------------------------------------------------------ */

void obs_gate_init(obs_gate *g, int closed)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->closed = closed;
    g->waiting = 0;
    g->passed = 0;
}

void obs_gate_destroy(obs_gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

void obs_gate_open(obs_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->closed = 0;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

void obs_gate_pass(obs_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->waiting++;
    pthread_cond_broadcast(&g->cv);
    while (g->closed)
        pthread_cond_wait(&g->cv, &g->mu);
    g->waiting--;
    g->passed++;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int obs_gate_wait_waiting(obs_gate *g, int n)
{
    struct timespec dl = deadline_in(th_wait_ms());
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (g->waiting < n && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&g->cv, &g->mu, &dl);
    int ok = g->waiting >= n;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

int obs_gate_waiting(obs_gate *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->waiting;
    pthread_mutex_unlock(&g->mu);
    return n;
}

/* ---- collector --------------------------------------------------------------- */

void obs_collector_init(obs_collector *c, obs_gate *gate)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->gate = gate;
}

static void ev_free(obs_ev *e)
{
    free(e->task);
    free(e->step_uuid);
    free(e->ns);
    free(e->tmpl);
    free(e->step);
    free(e->handler);
    free(e->circuit);
    free(e->cstate);
    free(e->eclass);
    free(e->emsg);
}

void obs_collector_destroy(obs_collector *c)
{
    for (size_t i = 0; i < c->n; i++)
        ev_free(&c->ev[i]);
    free(c->ev);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    memset(c, 0, sizeof *c);
}

void obs_collector_reset(obs_collector *c)
{
    obs_gate *gate = c->gate;
    obs_collector_destroy(c);
    obs_collector_init(c, gate);
}

/* A copy of an event string; the header promises "" rather than NULL. */
static char *copy_field(const char *s, const char *field, uint32_t type)
{
    if (s == NULL) {
        th_problem("event %s: field %s is NULL", obs_event_name(type), field);
        return strdup("(null)");
    }
    return strdup(s);
}

void obs_collect(const tasker_event *e, void *ud)
{
    obs_collector *c = ud;
    if (c->gate)
        obs_gate_pass(c->gate);
    obs_ev copy;
    memset(&copy, 0, sizeof copy);
    copy.version = e->version;
    copy.type = e->type;
    copy.at = e->at_unix_ns;
    copy.attempt = e->attempt;
    copy.task = copy_field(e->task_uuid, "task_uuid", e->type);
    copy.step_uuid = copy_field(e->step_uuid, "step_uuid", e->type);
    copy.ns = copy_field(e->ns, "ns", e->type);
    copy.tmpl = copy_field(e->template_name, "template_name", e->type);
    copy.step = copy_field(e->step_name, "step_name", e->type);
    copy.handler = copy_field(e->handler, "handler", e->type);
    copy.circuit = copy_field(e->circuit, "circuit", e->type);
    copy.cstate = copy_field(e->circuit_state, "circuit_state", e->type);
    copy.eclass = copy_field(e->error_class, "error_class", e->type);
    copy.emsg = copy_field(e->error_message, "error_message", e->type);
    pthread_mutex_lock(&c->mu);
    if (!c->have_thread) {
        c->thread = pthread_self();
        c->have_thread = 1;
    } else if (!pthread_equal(c->thread, pthread_self())) {
        c->other_thread = 1;
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        obs_ev *ev = realloc(c->ev, cap * sizeof *ev);
        if (!ev) {
            pthread_mutex_unlock(&c->mu);
            ev_free(&copy);
            th_problem("collector: out of memory");
            return;
        }
        c->ev = ev;
        c->cap = cap;
    }
    c->ev[c->n++] = copy;
    c->calls++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void obs_collector_freed(void *ud)
{
    obs_collector *c = ud;
    pthread_mutex_lock(&c->mu);
    c->freed++;
    c->calls_at_free = c->calls;
    pthread_mutex_unlock(&c->mu);
}

static int ev_matches(const obs_ev *e, uint32_t type, const char *step)
{
    return (type == 0 || e->type == type) && (step == NULL || strcmp(e->step, step) == 0);
}

size_t obs_count(obs_collector *c, uint32_t type, const char *step)
{
    size_t n = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        n += ev_matches(&c->ev[i], type, step);
    pthread_mutex_unlock(&c->mu);
    return n;
}

long obs_find(obs_collector *c, uint32_t type, const char *step, size_t from)
{
    long found = -1;
    pthread_mutex_lock(&c->mu);
    for (size_t i = from; i < c->n && found < 0; i++)
        if (ev_matches(&c->ev[i], type, step))
            found = (long)i;
    pthread_mutex_unlock(&c->mu);
    return found;
}

int obs_wait_count(obs_collector *c, uint32_t type, size_t n)
{
    struct timespec dl = deadline_in(th_wait_ms());
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        size_t have = 0;
        for (size_t i = 0; i < c->n; i++)
            have += ev_matches(&c->ev[i], type, NULL);
        if (have >= n || rc == ETIMEDOUT) {
            pthread_mutex_unlock(&c->mu);
            return have >= n;
        }
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    }
}

tasker_subscription *_obs_subscribe(const char *file, int line, tasker_coordinator *coord,
                                    uint32_t mask, size_t buffer_events, obs_collector *col)
{
    tasker_subscription *sub = NULL;
    _th_ok(file, line, "tasker_subscribe",
           tasker_subscribe(&sub, coord, mask, buffer_events, obs_collect, col,
                            obs_collector_freed));
    if (sub == NULL) {
        print_error("%s:%d: tasker_subscribe gave a NULL subscription\n", file, line);
        _fail(file, line);
    }
    return sub;
}

const char *obs_event_name(uint32_t type)
{
    static const char *const names[] = {
        "task_created",   "step_enqueued",  "step_started",         "step_succeeded",
        "step_failed",    "step_retry_scheduled", "step_dead_lettered", "step_cancelled",
        "task_cancelled", "task_completed", "task_failed",          "circuit_changed"};
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (type == (1u << i))
            return names[i];
    return "unknown";
}

/* ---- scripted handler ------------------------------------------------------------ */

int obs_scripted(tasker_step *step, void *ud)
{
    if (ud != NULL)
        th_counter_add(ud, 1);
    size_t len = 0;
    const char *ctx = tasker_step_context(step, &len);
    json_t *j = ctx ? json_loadb(ctx, len, 0, NULL) : NULL;
    if (j == NULL) {
        th_problem("scripted: step %s has an unreadable context", tasker_step_name(step));
        return TASKER_EINVAL;
    }
    long long fail_until = json_integer_value(json_object_get(j, "fail_until"));
    int retryable = !json_is_false(json_object_get(j, "retryable"));
    const char *cls = json_string_value(json_object_get(j, "class"));
    uint32_t attempt = tasker_step_attempt(step);
    char buf[96];
    int rc;
    if ((long long)attempt <= fail_until) {
        tasker_failure f = TASKER_FAILURE_INIT;
        snprintf(buf, sizeof buf, "boom on attempt %u", attempt);
        f.error_class = cls ? cls : "ScriptedError";
        f.message = buf;
        f.retryable = retryable;
        rc = tasker_step_fail(step, &f);
        if (rc != TASKER_OK)
            th_problem("scripted: tasker_step_fail(%s) = %d", tasker_step_name(step), rc);
    } else {
        snprintf(buf, sizeof buf, "{\"attempt\": %u}", attempt);
        rc = tasker_step_succeed(step, buf, 0);
        if (rc != TASKER_OK)
            th_problem("scripted: tasker_step_succeed(%s) = %d", tasker_step_name(step), rc);
    }
    json_decref(j);
    return TASKER_OK;
}

/* ---- metrics and JSON reports ------------------------------------------------------ */

void _obs_metrics(const char *file, int line, tasker_coordinator *coord, prom_doc *doc)
{
    char *text = NULL;
    char err[512];
    _th_ok(file, line, "tasker_metrics_text", tasker_metrics_text(&text, coord));
    if (text == NULL) {
        print_error("%s:%d: tasker_metrics_text gave NULL\n", file, line);
        _fail(file, line);
    }
    if (prom_parse(doc, text, err, sizeof err) != 0) {
        print_error("%s:%d: metrics text is not valid exposition format: %s\n%s\n", file, line,
                    err, text);
        tasker_free(text);
        _fail(file, line);
    }
    tasker_free(text);
}

json_t *_obs_json(const char *file, int line, tasker_coordinator *coord, int status)
{
    char *text = NULL;
    json_error_t jerr;
    const char *what = status ? "tasker_status_json" : "tasker_health_json";
    _th_ok(file, line, what,
           status ? tasker_status_json(&text, coord) : tasker_health_json(&text, coord));
    json_t *root = text ? json_loads(text, 0, &jerr) : NULL;
    if (root == NULL || !json_is_object(root)) {
        print_error("%s:%d: %s gave no JSON object: %.400s\n", file, line, what,
                    text ? text : "(NULL)");
        json_decref(root);
        tasker_free(text);
        _fail(file, line);
    }
    tasker_free(text);
    return root;
}

void _obs_assert_metric(const char *file, int line, const char *what, double value,
                        double expected)
{
    if (isnan(value)) {
        print_error("%s:%d: metric %s is missing (expected %g)\n", file, line, what, expected);
        _fail(file, line);
    }
    if (value != expected) {
        print_error("%s:%d: metric %s is %g, expected %g\n", file, line, what, value, expected);
        _fail(file, line);
    }
}

int64_t obs_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

const char *obs_step_uuid(json_t *task, const char *name)
{
    return json_string_value(json_object_get(th_step(task, name), "uuid"));
}
