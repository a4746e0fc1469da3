/* Step handles: what a handler reads, and how it completes an attempt. */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "run/engine.h"

void tk_closed_release(tasker_coordinator *c, struct tasker_step *cl);

/* The coordinator a step belongs to is reached through its registration;
 * steps do not store it to stay small, so the task keeps it. */
static tasker_coordinator *coord_of(const struct tasker_step *cl);

static const tk_tstep *tstep(const tasker_step *cl)
{
    const tk_step *s = cl->step;
    return &s->task->reg->tmpl->steps[s->idx];
}

const char *tasker_step_name(const tasker_step *step)
{
    return !step ? NULL : step->view ? step->view->name : tstep(step)->name;
}

const char *tasker_step_handler_name(const tasker_step *step)
{
    return !step ? NULL : step->view ? step->view->handler : tstep(step)->handler;
}

const char *tasker_step_uuid(const tasker_step *step)
{
    return !step ? NULL : step->view ? step->view->uuid : step->step->uuid;
}

const char *tasker_step_task_uuid(const tasker_step *step)
{
    return !step ? NULL : step->view ? step->view->task_uuid : step->step->task->uuid;
}

const char *tasker_step_namespace(const tasker_step *step)
{
    return !step ? NULL : step->view ? step->view->ns : step->step->task->reg->tmpl->ns;
}

const char *tasker_step_template_name(const tasker_step *step)
{
    return !step         ? NULL
           : step->view ? step->view->template_name
                        : step->step->task->reg->tmpl->name;
}

uint32_t tasker_step_attempt(const tasker_step *step)
{
    return step ? step->attempt : 0;
}

uint32_t tasker_step_max_attempts(const tasker_step *step)
{
    return !step ? 0 : step->view ? step->view->max_attempts : step->step->budget;
}

const char *tasker_step_context(const tasker_step *step, size_t *len_out)
{
    if (!step) {
        if (len_out)
            *len_out = 0;
        return NULL;
    }
    if (step->view) {
        if (len_out)
            *len_out = step->view->context_len;
        return step->view->context;
    }
    const tk_task *t = step->step->task;
    if (len_out)
        *len_out = t->context ? t->context_len : 2;
    return t->context ? t->context : "{}";
}

size_t tasker_step_dependency_count(const tasker_step *step)
{
    return !step ? 0 : step->view ? step->view->n_deps : tstep(step)->n_deps;
}

const char *tasker_step_dependency_name(const tasker_step *step, size_t i)
{
    if (!step || i >= tasker_step_dependency_count(step))
        return NULL;
    return step->view ? step->view->dep_names[i] : tstep(step)->deps[i];
}

static int find_dep(const tk_step **out, const tasker_step *step, const char *dep)
{
    const tk_tstep *ts = tstep(step);
    for (uint32_t i = 0; i < ts->n_deps; i++) {
        if (strcmp(ts->deps[i], dep) == 0) {
            *out = &step->step->task->steps[ts->dep_idx[i]];
            return TASKER_OK;
        }
    }
    return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                  json_pack("{s:s, s:s}", "step", ts->name, "dependency", dep),
                  "'%s' is not a dependency of step '%s'", dep, ts->name);
}

int tasker_step_dependency_result(const char **json_out, size_t *len_out, const tasker_step *step,
                                  const char *dep_name)
{
    if (!json_out || !step || !dep_name)
        return tk_einval("tasker_step_dependency_result: json_out, step and dep_name must not be "
                         "NULL");
    *json_out = NULL;
    if (len_out)
        *len_out = 0;
    if (step->view) {
        for (size_t i = 0; i < step->view->n_deps; i++) {
            if (strcmp(step->view->dep_names[i], dep_name) == 0) {
                *json_out = step->view->dep_results[i];
                if (len_out)
                    *len_out = step->view->dep_result_lens[i];
                return TASKER_OK;
            }
        }
        return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s, s:s}", "step", step->view->name, "dependency", dep_name),
                      "'%s' is not a dependency of step '%s'", dep_name, step->view->name);
    }
    const tk_step *d;
    int rc = find_dep(&d, step, dep_name);
    if (rc)
        return rc;
    if (d->result_kind == TK_RESULT_POINTER)
        return tk_err(TASKER_ENOTSUP, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s}", "dependency", dep_name),
                      "dependency '%s' has an in-process result; use "
                      "tasker_step_dependency_pointer",
                      dep_name);
    *json_out = d->result ? d->result : "null";
    if (len_out)
        *len_out = d->result ? d->result_len : 4;
    return TASKER_OK;
}

int tasker_step_dependency_pointer(void **ptr_out, const tasker_step *step, const char *dep_name)
{
    if (!ptr_out || !step || !dep_name)
        return tk_einval("tasker_step_dependency_pointer: ptr_out, step and dep_name must not be "
                         "NULL");
    *ptr_out = NULL;
    if (step->view)
        return tk_err(TASKER_ENOTSUP, TASKER_CATEGORY_ARGUMENT, NULL,
                      "in-process results exist only in the memory store");
    const tk_step *d;
    int rc = find_dep(&d, step, dep_name);
    if (rc)
        return rc;
    if (d->result_kind != TK_RESULT_POINTER)
        return tk_err(TASKER_ENOTSUP, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s}", "dependency", dep_name),
                      "dependency '%s' has a JSON result; use tasker_step_dependency_result",
                      dep_name);
    *ptr_out = d->result_ptr;
    return TASKER_OK;
}

/* ---- completion ------------------------------------------------------------ */

static tasker_coordinator *coord_of(const struct tasker_step *cl)
{
    return cl->step->task->coord;
}

/* Completes under the lock, handling a closed coordinator. */
static int complete(struct tasker_step *cl, int ok, char *result, size_t len, void *ptr,
                    void (*free_ptr)(void *), tk_failure_rec *f, int retryable, int64_t after)
{
    tasker_coordinator *c = coord_of(cl);
    pthread_mutex_lock(&c->lock);
    if (c->closed) {
        int was_done = cl->done;
        tk_closed_release(c, cl); /* unlocks, may free c */
        tk_free(result);
        tk_failure_free(f);
        if (free_ptr)
            free_ptr(ptr);
        return tk_err(was_done ? TASKER_ESTATE : TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL,
                      was_done ? "step was already completed"
                               : "coordinator was closed; the step's result is discarded");
    }
    int rc = tk_complete(c, cl, ok, result, len, ptr, free_ptr, f, retryable, after);
    if (rc == TASKER_OK)
        tk_notify(c);
    tk_task *g = c->graveyard;
    c->graveyard = NULL;
    int wake = rc == TASKER_OK && c->outstanding == 0 && c->done_waiters;
    if (wake)
        pthread_cond_broadcast(&c->done_cv);
    pthread_mutex_unlock(&c->lock);
    tk_free_tasks(g);
    if (rc) {
        tk_free(result);
        tk_failure_free(f);
        if (free_ptr)
            free_ptr(ptr);
    }
    return rc;
}

int tasker_step_succeed(tasker_step *step, const char *result_json, size_t len)
{
    if (!step)
        return tk_einval("tasker_step_succeed: step is NULL");
    if (step->view)
        return tk_pg_step_complete(step, 1, result_json, result_json && !len ? strlen(result_json) : len, NULL);
    char *copy = NULL;
    if (result_json) {
        if (!len)
            len = strlen(result_json);
        if (!(len == 4 && memcmp(result_json, "null", 4) == 0)) {
            json_error_t jerr;
            json_t *j = json_loadb(result_json, len, JSON_DECODE_ANY, &jerr);
            if (!j)
                return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT,
                              json_pack("{s:s, s:s}", "step", tstep(step)->name, "message",
                                        jerr.text),
                              "step '%s': result is not valid JSON: %s", tstep(step)->name,
                              jerr.text);
            json_decref(j);
            if (!(copy = tk_strndup(result_json, len)))
                return tk_enomem();
        } else {
            len = 0;
        }
    }
    return complete(step, 1, copy, copy ? len : 0, NULL, NULL, NULL, 0, -1);
}

int tasker_steps_succeed(int *rc_out, tasker_step *const *steps, const char *const *results,
                         const size_t *lens, size_t n)
{
    if (!rc_out || (!steps && n))
        return tk_einval("tasker_steps_succeed: rc_out and steps must not be NULL");
    if (n == 0)
        return TASKER_OK;
    size_t n_pg = 0;
    for (size_t i = 0; i < n; i++)
        n_pg += steps[i] && steps[i]->view ? 1 : 0;
    if (n_pg == n) /* all from postgres: one transaction for all of them */
        return tk_pg_steps_succeed(rc_out, steps, results, lens, n);
    /* Memory-store steps of the first step's open coordinator go through one
     * lock; everything else (other coordinators, postgres steps, bad input)
     * takes the single-step path. */
    tasker_coordinator *c = NULL;
    for (size_t i = 0; i < n && !c; i++)
        if (steps[i] && !steps[i]->view)
            c = coord_of(steps[i]);
    char **copies = c ? tk_calloc(n, sizeof *copies) : NULL;
    size_t *clen = c ? tk_calloc(n, sizeof *clen) : NULL;
    uint8_t *mine = c ? tk_calloc(n, 1) : NULL;
    if (c && (!copies || !clen || !mine)) {
        tk_free(copies);
        tk_free(clen);
        tk_free(mine);
        copies = NULL;
        clen = NULL;
        mine = NULL;
        c = NULL; /* fall back to one call per step */
    }
    for (size_t i = 0; i < n; i++) {
        const char *r = results ? results[i] : NULL;
        size_t len = r ? (lens && lens[i] ? lens[i] : strlen(r)) : 0;
        if (!c || !steps[i] || steps[i]->view || coord_of(steps[i]) != c) {
            rc_out[i] = tasker_step_succeed(steps[i], r, len);
            continue;
        }
        rc_out[i] = TASKER_OK;
        if (r && !(len == 4 && memcmp(r, "null", 4) == 0)) {
            json_error_t jerr;
            json_t *j = json_loadb(r, len, JSON_DECODE_ANY, &jerr);
            if (!j) {
                rc_out[i] = tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT,
                                   json_pack("{s:s, s:s}", "step", tstep(steps[i])->name,
                                             "message", jerr.text),
                                   "step '%s': result is not valid JSON: %s",
                                   tstep(steps[i])->name, jerr.text);
                continue;
            }
            json_decref(j);
            if (!(copies[i] = tk_strndup(r, len))) {
                rc_out[i] = tk_enomem();
                continue;
            }
            clen[i] = len;
        }
        mine[i] = 1;
    }
    if (c) {
        pthread_mutex_lock(&c->lock);
        int closed = c->closed;
        if (!closed) {
            for (size_t i = 0; i < n; i++) {
                if (!mine[i])
                    continue;
                rc_out[i] =
                    tk_complete(c, steps[i], 1, copies[i], clen[i], NULL, NULL, NULL, 0, -1);
                if (rc_out[i] == TASKER_OK)
                    copies[i] = NULL;
            }
            tk_notify(c);
        }
        tk_task *g = c->graveyard;
        c->graveyard = NULL;
        if (!closed && c->outstanding == 0 && c->done_waiters)
            pthread_cond_broadcast(&c->done_cv);
        pthread_mutex_unlock(&c->lock);
        tk_free_tasks(g);
        for (size_t i = 0; i < n; i++) {
            if (closed && mine[i]) {
                rc_out[i] = complete(steps[i], 1, copies[i], clen[i], NULL, NULL, NULL, 0, -1);
                copies[i] = NULL;
            }
            tk_free(copies[i]);
        }
    }
    tk_free(copies);
    tk_free(clen);
    tk_free(mine);
    return TASKER_OK;
}

int tasker_step_succeed_pointer(tasker_step *step, void *ptr, void (*free_ptr)(void *))
{
    if (!step) {
        if (free_ptr)
            free_ptr(ptr);
        return tk_einval("tasker_step_succeed_pointer: step is NULL");
    }
    if (step->view) {
        if (free_ptr)
            free_ptr(ptr);
        return tk_err(TASKER_ENOTSUP, TASKER_CATEGORY_ARGUMENT, NULL,
                      "in-process results exist only in the memory store; return JSON");
    }
    if (!ptr)
        return complete(step, 1, NULL, 0, NULL, NULL, NULL, 0, -1);
    return complete(step, 1, NULL, 0, ptr, free_ptr, NULL, 0, -1);
}

int tasker_failure_init(tasker_failure *f, unsigned version)
{
    if (!f)
        return tk_einval("tasker_failure_init: failure is NULL");
    if (version != TASKER_FAILURE_VERSION)
        return tk_einval("tasker_failure_init: unknown struct version %u (expected %u)", version,
                         TASKER_FAILURE_VERSION);
    tasker_failure d = TASKER_FAILURE_INIT;
    *f = d;
    return TASKER_OK;
}

int tasker_step_fail(tasker_step *step, const tasker_failure *failure)
{
    if (!step)
        return tk_einval("tasker_step_fail: step is NULL");
    tasker_failure def = TASKER_FAILURE_INIT;
    if (!failure)
        failure = &def;
    if (failure->version != TASKER_FAILURE_VERSION)
        return tk_einval("tasker_step_fail: tasker_failure.version is %u, expected %u",
                         failure->version, TASKER_FAILURE_VERSION);
    if (step->view)
        return tk_pg_step_complete(step, 0, NULL, 0, failure);
    if (failure->retry_after_ms < -1)
        return tk_einval("tasker_step_fail: retry_after_ms is %lld; use -1 for none or a delay >= 0",
                         (long long)failure->retry_after_ms);
    if (failure->context_json) {
        json_error_t jerr;
        json_t *j = json_loads(failure->context_json, 0, &jerr);
        int ok = json_is_object(j);
        json_decref(j);
        if (!ok)
            return tk_einval("tasker_step_fail: context_json must be a JSON object");
    }
    tk_failure_rec *f = tk_calloc(1, sizeof *f);
    if (!f)
        return tk_enomem();
    f->retryable = failure->retryable != 0;
    f->error_class = tk_strdup(failure->error_class ? failure->error_class : "Error");
    f->message = tk_strdup(failure->message ? failure->message : "");
    f->context = failure->context_json ? tk_strdup(failure->context_json) : NULL;
    if (!f->error_class || !f->message || (failure->context_json && !f->context)) {
        tk_failure_free(f);
        return tk_enomem();
    }
    return complete(step, 0, NULL, 0, NULL, NULL, f, f->retryable, failure->retry_after_ms);
}

/* Runs a claimed step's handler on a worker thread. */
int tk_run_handler(tasker_coordinator *c, struct tasker_step *cl)
{
    const tk_handler *h = cl->step->task->reg->handlers[cl->step->idx];
    /* A batch is claimed at once; the handler's own start time makes the
     * step's duration the handler's run time, not its wait in the batch. */
    cl->run_at = tk_now_ns();
    if (cl->step->task->reg->tmpl->steps[cl->step->idx].opts.timeout_ms) {
        pthread_mutex_lock(&c->lock);
        tk_start_timeout(c, cl);
        pthread_mutex_unlock(&c->lock);
    }
    int rc = h->fn(cl, h->userdata);
    if (rc < 0) {
        pthread_mutex_lock(&c->lock);
        int done = cl->done;
        pthread_mutex_unlock(&c->lock);
        if (!done) {
            char msg[160];
            snprintf(msg, sizeof msg, "handler '%s' returned %s without completing the step",
                     h->name, tasker_strerror(rc));
            tasker_failure f = TASKER_FAILURE_INIT;
            f.error_class = "tasker.HandlerReturnedError";
            f.message = msg;
            tasker_step_fail(cl, &f);
        }
    }
    return rc;
}
