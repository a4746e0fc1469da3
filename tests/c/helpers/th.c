#define _GNU_SOURCE
#include "th.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int th_wait_ms(void)
{
    const char *env = getenv("TH_WAIT_MS");
    if (env != NULL && atoi(env) > 0)
        return atoi(env);
    return 120000;
}

double th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

void th_sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void print_last_error(const char *file, int line, const char *what, int rc)
{
    const tasker_error *e = tasker_error_last();
    print_error("%s:%d: %s returned %d (%s); last error: code %d, message \"%s\", context %s\n",
                file, line, what, rc, tasker_strerror(rc), e->code, e->message,
                e->context_json);
}

void _th_ok(const char *file, int line, const char *what, int rc)
{
    if (rc != TASKER_OK) {
        print_last_error(file, line, what, rc);
        _fail(file, line);
    }
}

tasker_coordinator *_th_open(const char *file, int line, const char *key, ...)
{
    tasker_config *cfg = NULL;
    tasker_coordinator *coord = NULL;
    va_list ap;
    _th_ok(file, line, "tasker_config_new", tasker_config_new(&cfg));
    va_start(ap, key);
    for (const char *k = key; k != NULL; k = va_arg(ap, const char *)) {
        const char *v = va_arg(ap, const char *);
        int rc = tasker_config_set(cfg, k, v);
        if (rc != TASKER_OK) {
            va_end(ap);
            print_last_error(file, line, k, rc);
            tasker_config_free(cfg);
            _fail(file, line);
        }
    }
    va_end(ap);
    int rc = tasker_coordinator_open(&coord, cfg);
    tasker_config_free(cfg);
    _th_ok(file, line, "tasker_coordinator_open", rc);
    if (coord == NULL) {
        print_error("%s:%d: tasker_coordinator_open gave a NULL coordinator\n", file, line);
        _fail(file, line);
    }
    return coord;
}

void _th_register(const char *file, int line, tasker_coordinator *coord, const char *json)
{
    _th_ok(file, line, "tasker_template_register_json",
           tasker_template_register_json(coord, json, 0));
}

void _th_handler(const char *file, int line, tasker_coordinator *coord, const char *name,
                 tasker_handler_fn fn, void *ud)
{
    _th_ok(file, line, "tasker_handler_register",
           tasker_handler_register(coord, name, fn, ud, NULL));
}

void _th_create(const char *file, int line, char uuid[TASKER_UUID_BUFSIZE],
                tasker_coordinator *coord, const char *ns, const char *name, const char *ctx,
                const char *key)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = ns;
    req.name = name;
    req.context_json = ctx;
    req.idempotency_key = key;
    memset(uuid, 0, TASKER_UUID_BUFSIZE);
    _th_ok(file, line, "tasker_task_create", tasker_task_create(uuid, coord, &req));
    if (strlen(uuid) != TASKER_UUID_STRLEN) {
        print_error("%s:%d: task uuid \"%s\" is not 36 characters\n", file, line, uuid);
        _fail(file, line);
    }
}

tasker_task_state _th_wait_final(const char *file, int line, tasker_coordinator *coord,
                                 const char *uuid)
{
    tasker_task_state st = (tasker_task_state)-1;
    int rc = tasker_task_wait(&st, coord, uuid, th_wait_ms());
    if (rc != TASKER_OK) {
        print_error("%s:%d: task %s not final after %d ms (state %s)\n", file, line, uuid,
                    th_wait_ms(), tasker_task_state_name(st) ? tasker_task_state_name(st) : "?");
        print_last_error(file, line, "tasker_task_wait", rc);
        _fail(file, line);
    }
    return st;
}

tasker_task_state th_task_state(tasker_coordinator *coord, const char *uuid)
{
    tasker_task_state st = (tasker_task_state)-1;
    (void)tasker_task_wait(&st, coord, uuid, 0);
    return st;
}

json_t *_th_task(const char *file, int line, tasker_coordinator *coord, const char *uuid)
{
    char *text = NULL;
    json_error_t jerr;
    _th_ok(file, line, "tasker_task_get", tasker_task_get(&text, coord, uuid));
    json_t *root = json_loads(text, 0, &jerr);
    if (root == NULL || !json_is_object(root)) {
        print_error("%s:%d: tasker_task_get gave unparsable JSON (%s): %.300s\n", file, line,
                    jerr.text, text);
        tasker_free(text);
        _fail(file, line);
    }
    tasker_free(text);
    return root;
}

json_t *_th_step(const char *file, int line, json_t *task, const char *name)
{
    json_t *steps = json_object_get(task, "steps");
    size_t i;
    json_t *s;
    json_array_foreach(steps, i, s)
    {
        const char *n = json_string_value(json_object_get(s, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return s;
    }
    print_error("%s:%d: step \"%s\" not in the task JSON\n", file, line, name);
    _fail(file, line);
    return NULL;
}

const char *th_step_state(json_t *task, const char *name)
{
    return json_string_value(json_object_get(th_step(task, name), "state"));
}

int th_step_attempts(json_t *task, const char *name)
{
    return (int)json_integer_value(json_object_get(th_step(task, name), "attempts"));
}

static int field_matches(json_t *obj, const char *key, const char *want)
{
    if (want == NULL)
        return 1;
    json_t *v = json_object_get(obj, key);
    if (want[0] == '\0')
        return v == NULL || json_is_null(v);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

size_t th_count_transitions(json_t *task, const char *step, const char *from, const char *to,
                            const char *reason, int attempt)
{
    json_t *tr = json_object_get(task, "transitions");
    size_t i, n = 0;
    json_t *t;
    json_array_foreach(tr, i, t)
    {
        if (!field_matches(t, "step", step) || !field_matches(t, "from", from) ||
            !field_matches(t, "to", to) || !field_matches(t, "reason", reason))
            continue;
        if (attempt >= 0 && json_integer_value(json_object_get(t, "attempt")) != attempt)
            continue;
        n++;
    }
    return n;
}

char *th_transition_path(json_t *task, const char *step)
{
    json_t *tr = json_object_get(task, "transitions");
    size_t i, len = 0;
    json_t *t;
    char *out = calloc(1, 4096);
    json_array_foreach(tr, i, t)
    {
        if (!field_matches(t, "step", step))
            continue;
        const char *to = json_string_value(json_object_get(t, "to"));
        len += (size_t)snprintf(out + len, len < 4096 ? 4096 - len : 0, "%s%s", len ? "," : "",
                                to ? to : "?");
        if (len >= 4000)
            break;
    }
    return out;
}

json_t *th_error_context(void)
{
    const tasker_error *e = tasker_error_last();
    json_t *ctx = json_loads(e->context_json ? e->context_json : "", 0, NULL);
    return ctx ? ctx : json_object();
}

void _th_assert_error(const char *file, int line, int code, const char *reason)
{
    const tasker_error *e = tasker_error_last();
    if (e == NULL) {
        print_error("%s:%d: tasker_error_last() returned NULL\n", file, line);
        _fail(file, line);
    }
    if (e->code != code) {
        print_error("%s:%d: last error code %d (%s), expected %d (%s); message \"%s\"\n", file,
                    line, e->code, tasker_strerror(e->code), code, tasker_strerror(code),
                    e->message);
        _fail(file, line);
    }
    if (e->message == NULL || e->context_json == NULL) {
        print_error("%s:%d: last error has a NULL message or context\n", file, line);
        _fail(file, line);
    }
    json_t *ctx = json_loads(e->context_json, 0, NULL);
    if (ctx == NULL || !json_is_object(ctx)) {
        print_error("%s:%d: last error context is not a JSON object: %s\n", file, line,
                    e->context_json);
        json_decref(ctx);
        _fail(file, line);
    }
    if (reason != NULL) {
        const char *r = json_string_value(json_object_get(ctx, "reason"));
        if (r == NULL || strcmp(r, reason) != 0) {
            print_error("%s:%d: last error reason \"%s\", expected \"%s\" (context %s)\n", file,
                        line, r ? r : "(none)", reason, e->context_json);
            json_decref(ctx);
            _fail(file, line);
        }
    }
    json_decref(ctx);
}

/* ---- problems ------------------------------------------------------------ */

static pthread_mutex_t problem_mu = PTHREAD_MUTEX_INITIALIZER;
static char problem_text[2048];
static int problem_count;

void th_problem(const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&problem_mu);
    if (problem_count++ == 0) {
        va_start(ap, fmt);
        vsnprintf(problem_text, sizeof problem_text, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&problem_mu);
}

void _th_assert_no_problems(const char *file, int line)
{
    pthread_mutex_lock(&problem_mu);
    int n = problem_count;
    char text[sizeof problem_text];
    memcpy(text, problem_text, sizeof text);
    problem_count = 0;
    problem_text[0] = '\0';
    pthread_mutex_unlock(&problem_mu);
    if (n != 0) {
        print_error("%s:%d: %d problem(s) reported from handlers; first: %s\n", file, line, n,
                    text);
        _fail(file, line);
    }
}

/* ---- recorder ---------------------------------------------------------------- */

void th_recorder_init(th_recorder *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

void th_recorder_destroy(th_recorder *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->ev[i].step);
    free(r->ev);
    pthread_mutex_destroy(&r->mu);
    memset(r, 0, sizeof *r);
}

void th_record(th_recorder *r, const tasker_step *step, int done)
{
    const char *task = tasker_step_task_uuid(step);
    const char *name = tasker_step_name(step);
    if (task == NULL || name == NULL) {
        th_problem("step handle without task uuid or name");
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 256;
        th_event *ev = realloc(r->ev, cap * sizeof *ev);
        if (ev == NULL) {
            pthread_mutex_unlock(&r->mu);
            th_problem("out of memory in the recorder");
            return;
        }
        r->ev = ev;
        r->cap = cap;
    }
    th_event *e = &r->ev[r->n++];
    snprintf(e->task, sizeof e->task, "%s", task);
    e->step = strdup(name);
    e->done = done;
    e->attempt = tasker_step_attempt(step);
    if (!done) {
        if (++r->in_handler > r->max_in_handler)
            r->max_in_handler = r->in_handler;
    } else {
        r->in_handler--;
    }
    pthread_mutex_unlock(&r->mu);
}

long th_recorder_find(th_recorder *r, const char *task, const char *step, int done)
{
    long found = -1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        th_event *e = &r->ev[i];
        if (e->done == done && strcmp(e->task, task) == 0 && strcmp(e->step, step) == 0) {
            found = (long)i;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

size_t th_recorder_count(th_recorder *r, const char *task, const char *step, int done)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        th_event *e = &r->ev[i];
        if (e->done == done && (task == NULL || strcmp(e->task, task) == 0) &&
            (step == NULL || strcmp(e->step, step) == 0))
            n++;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- handlers ------------------------------------------------------------------ */

int th_handler_noop(tasker_step *step, void *ud)
{
    (void)ud;
    int rc = tasker_step_succeed(step, NULL, 0);
    if (rc != TASKER_OK)
        th_problem("noop: tasker_step_succeed(%s) = %d", tasker_step_name(step), rc);
    return TASKER_OK;
}

int th_handler_node(tasker_step *step, void *ud)
{
    th_recorder *rec = ud;
    const char *name = tasker_step_name(step);
    long long v = 1;
    char buf[600];

    if (rec != NULL)
        th_record(rec, step, 0);
    size_t n = tasker_step_dependency_count(step);
    for (size_t i = 0; i < n; i++) {
        const char *dep = tasker_step_dependency_name(step, i);
        const char *json = NULL;
        size_t len = 0;
        if (dep == NULL) {
            th_problem("%s: dependency %zu has no name", name, i);
            continue;
        }
        int rc = tasker_step_dependency_result(&json, &len, step, dep);
        if (rc != TASKER_OK || json == NULL) {
            th_problem("%s: dependency_result(%s) = %d", name, dep, rc);
            continue;
        }
        json_t *res = json_loadb(json, len, 0, NULL);
        const char *from = json_string_value(json_object_get(res, "step"));
        if (!json_is_integer(json_object_get(res, "v")) || from == NULL || strcmp(from, dep) != 0)
            th_problem("%s: dependency %s gave result %.*s", name, dep, (int)len, json);
        else
            v += json_integer_value(json_object_get(res, "v"));
        json_decref(res);
    }
    if (tasker_step_dependency_name(step, n) != NULL)
        th_problem("%s: dependency_name(count) is not NULL", name);
    snprintf(buf, sizeof buf, "{\"step\": \"%s\", \"v\": %lld}", name, v);
    if (rec != NULL)
        th_record(rec, step, 1);
    int rc = tasker_step_succeed(step, buf, 0);
    if (rc != TASKER_OK)
        th_problem("%s: tasker_step_succeed = %d", name, rc);
    return TASKER_OK;
}

void th_counter_init(th_counter *c)
{
    pthread_mutex_init(&c->mu, NULL);
    c->n = 0;
}

void th_counter_add(th_counter *c, long d)
{
    pthread_mutex_lock(&c->mu);
    c->n += d;
    pthread_mutex_unlock(&c->mu);
}

long th_counter_get(th_counter *c)
{
    pthread_mutex_lock(&c->mu);
    long n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int th_handler_count(tasker_step *step, void *ud)
{
    th_counter_add(ud, 1);
    int rc = tasker_step_succeed(step, NULL, 0);
    if (rc != TASKER_OK)
        th_problem("count: tasker_step_succeed(%s) = %d", tasker_step_name(step), rc);
    return TASKER_OK;
}

/* ---- poll mode ------------------------------------------------------------------- */

int th_fd_readable(tasker_coordinator *coord, int timeout_ms)
{
    int fd = -1;
    if (tasker_coordinator_fd(&fd, coord) != TASKER_OK || fd < 0)
        return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    do {
        rc = poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    return rc > 0 && (p.revents & POLLIN);
}

tasker_step *_th_claim_one(const char *file, int line, tasker_coordinator *coord)
{
    double deadline = th_now_ms() + th_wait_ms();
    for (;;) {
        tasker_step *s = NULL;
        size_t n = 0;
        _th_ok(file, line, "tasker_coordinator_claim", tasker_coordinator_claim(&s, &n, coord, 1));
        if (n == 1 && s != NULL)
            return s;
        double left = deadline - th_now_ms();
        if (left <= 0)
            break;
        /* Wait on the descriptor the way an event loop would, but wake now and
         * then so a missed wakeup shows up as a slow test, not a hang. */
        (void)th_fd_readable(coord, left > 200 ? 200 : (int)left + 1);
    }
    print_error("%s:%d: no step became claimable within %d ms\n", file, line, th_wait_ms());
    _fail(file, line);
    return NULL;
}

char *th_fmt(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}
