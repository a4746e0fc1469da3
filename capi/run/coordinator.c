/* The coordinator: lifecycle, worker threads, poll mode, and the public task
 * calls that wrap the store. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/uuid.h"
#include "obs/log.h"
#include "run/engine.h"

int tk_task_cancel_locked(tasker_coordinator *c, tk_task *t);
int tk_task_retry_locked(tasker_coordinator *c, tk_task *t);
int tk_step_resolve_locked(tasker_coordinator *c, tk_task *t, uint32_t idx, char *result,
                           size_t len);

#define WORKER_BATCH 32

static inline void tk_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- wakeups ------------------------------------------------------------- */

int64_t tk_next_timer(tasker_coordinator *c)
{
    int64_t due = c->heap_len ? c->heap[0]->due_mono : 0;
    int64_t b = c->breakers ? tk_breaker_next_due(c) : 0;
    return b && (!due || b < due) ? b : due;
}

static void arm_timer(tasker_coordinator *c)
{
    if (c->tfd < 0)
        return;
    int64_t due = tk_next_timer(c);
    if (due == c->timer_due)
        return;
    struct itimerspec its = {0};
    if (due) {
        its.it_value.tv_sec = due / 1000000000;
        its.it_value.tv_nsec = due % 1000000000;
        if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
            its.it_value.tv_nsec = 1;
    }
    if (timerfd_settime(c->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        c->timer_due = due;
}

void tk_notify(tasker_coordinator *c)
{
    if (c->q[TK_Q_WORKER].len && c->idle_workers) {
        if (c->q[TK_Q_WORKER].len > 1 && c->idle_workers > 1)
            pthread_cond_broadcast(&c->work_cv);
        else
            pthread_cond_signal(&c->work_cv);
    } else if ((c->heap_len || c->breakers) && c->idle_workers) {
        /* A new timer may be earlier than the one a worker sleeps on. */
        pthread_cond_signal(&c->work_cv);
    }
    if (c->q[TK_Q_POLL].len && !c->ev_armed && c->evfd >= 0) {
        uint64_t one = 1;
        if (write(c->evfd, &one, sizeof one) == sizeof one)
            c->ev_armed = 1;
    }
    arm_timer(c);
}

/* ---- open / close ---------------------------------------------------------- */

static void free_all(tasker_coordinator *c);

int tasker_coordinator_open(tasker_coordinator **out, const tasker_config *cfg)
{
    if (!out)
        return tk_einval("tasker_coordinator_open: out is NULL");
    *out = NULL;
    int rc;
    if (cfg && (rc = tasker_config_validate(cfg)))
        return rc;
    tasker_coordinator *c = tk_calloc(1, sizeof *c);
    if (!c)
        return tk_enomem();
    c->epfd = c->evfd = c->tfd = -1;
    if (cfg)
        rc = tk_config_copy(&c->cfg, cfg);
    else {
        tk_config_defaults(&c->cfg);
        rc = TASKER_OK;
    }
    if (rc) {
        tk_free(c);
        return rc;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->work_cv, &ca);
    pthread_cond_init(&c->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    c->metrics_on = strcmp(tk_config_str(&c->cfg, TK_CFG_METRICS_ENABLED), "true") == 0;
    c->breakers_on = c->cfg.num[TK_CFG_BREAKER_FAILURE_THRESHOLD] > 0 ||
                     c->cfg.num[TK_CFG_BREAKER_FAILURE_RATE_PERCENT] > 0;
    if (strcmp(tk_config_str(&c->cfg, TK_CFG_STORE), "postgres") == 0 &&
        (rc = tk_pg_open(&c->pg, c, &c->cfg)) != TASKER_OK) {
        free_all(c);
        return rc;
    }
    if (c->pg) {
        tk_pg_tuning tune = {
            .lease_ms = (int)c->cfg.num[TK_CFG_PG_LEASE_MS],
            .poll_ms = (int)c->cfg.num[TK_CFG_PG_POLL_MS],
            .claim_batch = (int)c->cfg.num[TK_CFG_PG_CLAIM_BATCH],
            .flush_max = (int)c->cfg.num[TK_CFG_PG_FLUSH_MAX],
            .async_complete =
                strcmp(tk_config_str(&c->cfg, TK_CFG_PG_ASYNC_COMPLETE), "true") == 0};
        if ((rc = tk_pg_tune(c, &tune)) != TASKER_OK) {
            tasker_coordinator_close(c);
            return rc;
        }
    }
    if ((rc = tk_log_open(c)) != TASKER_OK) {
        tasker_coordinator_close(c);
        return rc;
    }
    *out = c;
    return TASKER_OK;
}

static void free_all(tasker_coordinator *c)
{
    tk_task *t, *tmp;
    HASH_CLEAR(ihh, c->by_key);
    HASH_ITER(hh, c->tasks, t, tmp) {
        HASH_DELETE(hh, c->tasks, t);
        tk_task_free(t);
    }
    tk_free_tasks(c->graveyard);
    tk_reg *r, *rtmp;
    HASH_ITER(hh, c->templates, r, rtmp) {
        HASH_DEL(c->templates, r);
        tasker_template_free(r->tmpl);
        tk_free(r->handlers);
        tk_free(r);
    }
    tk_latest *l, *ltmp;
    HASH_ITER(hh, c->latest, l, ltmp) {
        HASH_DEL(c->latest, l);
        tk_free(l->key);
        tk_free(l);
    }
    tk_handler *h, *htmp;
    HASH_ITER(hh, c->handlers, h, htmp) {
        HASH_DEL(c->handlers, h);
        if (h->free_userdata)
            h->free_userdata(h->userdata);
        tk_free(h->name);
        tk_free(h);
    }
    for (int qi = 0; qi < 2; qi++) {
        tk_bucket *b = c->q[qi].buckets;
        while (b) {
            tk_bucket *n = b->next;
            tk_free(b);
            b = n;
        }
    }
    tk_nsobj_free_all(c);
    tk_status_free(c);
    while (c->breakers) {
        tk_breaker *b = c->breakers->next_all;
        tk_breaker_free(c->breakers);
        c->breakers = b;
    }
    tk_free(c->heap);
    if (c->epfd >= 0)
        close(c->epfd);
    if (c->evfd >= 0)
        close(c->evfd);
    if (c->tfd >= 0)
        close(c->tfd);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->work_cv);
    pthread_cond_destroy(&c->done_cv);
    tk_config_clear(&c->cfg);
    tk_free(c);
}

int tasker_coordinator_close(tasker_coordinator *c)
{
    if (!c)
        return TASKER_OK;
    if (c->pg) {
        tk_pg_close(c->pg);
        c->pg = NULL;
    }
    tasker_coordinator_stop(c, 0);
    tk_events_close_all(c);
    pthread_mutex_lock(&c->lock);
    c->closed = 1;
    size_t left = c->outstanding;
    pthread_mutex_unlock(&c->lock);
    /* Steps still held by handlers keep everything alive; the last one to
     * complete frees the coordinator (see tk_step_finish_closed). */
    if (left == 0)
        free_all(c);
    return TASKER_OK;
}

/* Called by a step completion on a closed coordinator, lock held on entry;
 * returns with the lock released (and possibly the coordinator freed). */
void tk_closed_release(tasker_coordinator *c, struct tasker_step *cl)
{
    if (!cl->done) {
        cl->done = 1;
        cl->step->task->outstanding--;
        c->outstanding--;
    }
    size_t left = c->outstanding;
    pthread_mutex_unlock(&c->lock);
    if (left == 0)
        free_all(c);
}

/* ---- handlers -------------------------------------------------------------- */

int tasker_handler_register(tasker_coordinator *c, const char *name, tasker_handler_fn fn,
                            void *userdata, void (*free_userdata)(void *))
{
    int rc = TASKER_OK;
    const char *why;
    if (!c || !name) {
        rc = tk_einval("tasker_handler_register: coordinator and name must not be NULL");
        goto fail;
    }
    if ((why = tk_name_problem(name, 1))) {
        rc = tk_einval("tasker_handler_register: handler name %s", why);
        goto fail;
    }
    tk_handler *h = tk_calloc(1, sizeof *h);
    char *copy = tk_strdup(name);
    if (!h || !copy) {
        tk_free(h);
        tk_free(copy);
        rc = tk_enomem();
        goto fail;
    }
    h->name = copy;
    h->fn = fn;
    h->userdata = userdata;
    h->free_userdata = free_userdata;
    pthread_mutex_lock(&c->lock);
    tk_handler *old;
    HASH_FIND_STR(c->handlers, name, old);
    int added = 0;
    if (!old && (h->breaker = tk_breaker_new(c, "handler", name))) {
        tk_hash_oom = 0;
        HASH_ADD_KEYPTR(hh, c->handlers, h->name, strlen(h->name), h);
        if (tk_hash_oom) {
            c->breakers = h->breaker->next_all;
            tk_breaker_free(h->breaker);
        } else {
            added = 1;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (added)
        return TASKER_OK;
    tk_free(h->name);
    tk_free(h);
    rc = old ? tk_err(TASKER_EEXIST, TASKER_CATEGORY_HANDLER, json_pack("{s:s}", "handler", name),
                      "a handler named '%s' is already registered", name)
             : tk_enomem();
fail:
    if (free_userdata)
        free_userdata(userdata);
    return rc;
}

/* ---- templates ------------------------------------------------------------- */

int tasker_template_register(tasker_coordinator *c, const tasker_template *tmpl)
{
    if (!c || !tmpl)
        return tk_einval("tasker_template_register: coordinator and template must not be NULL");
    tasker_template *copy;
    int rc = tk_template_clone(&copy, tmpl);
    if (rc)
        return rc;
    if ((rc = tk_template_finalize(copy, (uint32_t)c->cfg.num[TK_CFG_TEMPLATE_MAX_STEPS])) ||
        (c->pg && (rc = tk_pg_template_register(c->pg, copy)))) {
        tasker_template_free(copy);
        return rc;
    }
    tk_reg *r = tk_calloc(1, sizeof *r);
    tk_handler **hs = tk_calloc(copy->n_steps, sizeof *hs);
    size_t lklen = strlen(copy->ns) + strlen(copy->name) + 2;
    char *lkey = tk_malloc(lklen);
    tk_latest *l = tk_calloc(1, sizeof *l);
    if (!r || !hs || !lkey || !l) {
        rc = tk_enomem();
        goto fail;
    }
    snprintf(lkey, lklen, "%s/%s", copy->ns, copy->name);
    r->tmpl = copy;
    r->key = copy->key;
    r->handlers = hs;
    pthread_mutex_lock(&c->lock);
    tk_reg *old;
    HASH_FIND_STR(c->templates, copy->key, old);
    if (old) {
        rc = tk_template_equal(old->tmpl, copy)
                 ? 1
                 : tk_err(TASKER_EEXIST, TASKER_CATEGORY_TEMPLATE,
                          json_pack("{s:s}", "template", copy->key),
                          "template %s is already registered with different steps; "
                          "register a new version",
                          copy->key);
    } else if (!(r->nsobj = tk_nsobj_get(c, copy->ns))) {
        rc = tk_enomem();
    } else {
        tk_latest *cur;
        HASH_FIND_STR(c->latest, lkey, cur);
        tk_hash_oom = 0;
        if (!cur) {
            l->key = lkey;
            l->reg = r;
            HASH_ADD_KEYPTR(hh, c->latest, l->key, strlen(l->key), l);
        }
        if (!tk_hash_oom) {
            HASH_ADD_KEYPTR(hh, c->templates, r->key, strlen(r->key), r);
            if (tk_hash_oom && !cur)
                HASH_DEL(c->latest, l);
        }
        if (tk_hash_oom) {
            rc = tk_enomem();
        } else {
            if (!cur) {
                l = NULL;
                lkey = NULL;
            } else if (tk_version_cmp(copy->version, cur->reg->tmpl->version) > 0) {
                cur->reg = r;
            }
            r = NULL;
            hs = NULL;
            copy = NULL;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (rc > 0)
        rc = TASKER_OK;
fail:
    tasker_template_free(copy);
    tk_free(r);
    tk_free(hs);
    tk_free(lkey);
    tk_free(l);
    return rc;
}

int tasker_template_register_json(tasker_coordinator *c, const char *json, size_t len)
{
    if (!c || !json)
        return tk_einval("tasker_template_register_json: coordinator and json must not be NULL");
    tasker_template *t;
    int rc = tk_template_parse(&t, json, len, (size_t)c->cfg.num[TK_CFG_TEMPLATE_MAX_JSON_BYTES]);
    if (rc)
        return rc;
    rc = tasker_template_register(c, t);
    tasker_template_free(t);
    return rc;
}

/* ---- tasks ------------------------------------------------------------------ */

int tasker_task_request_init(tasker_task_request *req, unsigned version)
{
    if (!req)
        return tk_einval("tasker_task_request_init: req is NULL");
    if (version != TASKER_TASK_REQUEST_VERSION)
        return tk_einval("tasker_task_request_init: unknown struct version %u (expected %u)",
                         version, TASKER_TASK_REQUEST_VERSION);
    tasker_task_request d = TASKER_TASK_REQUEST_INIT;
    *req = d;
    return TASKER_OK;
}

/* What every store requires of a request, checked before it sees it. */
static int check_request(const tasker_coordinator *c, const tasker_task_request *req)
{
    const char *why;
    if (req->version != TASKER_TASK_REQUEST_VERSION)
        return tk_einval("tasker_task_create: tasker_task_request.version is %u, expected %u",
                         req->version, TASKER_TASK_REQUEST_VERSION);
    if ((why = tk_name_problem(req->ns, 0)))
        return tk_einval("tasker_task_create: namespace %s", why);
    if ((why = tk_name_problem(req->name, 0)))
        return tk_einval("tasker_task_create: template name %s", why);
    if (req->template_version && (why = tk_name_problem(req->template_version, 0)))
        return tk_einval("tasker_task_create: template version %s", why);
    if (req->idempotency_key && (why = tk_name_problem(req->idempotency_key, 1)))
        return tk_einval("tasker_task_create: idempotency key %s", why);
    if (req->priority < -1000000 || req->priority > 1000000)
        return tk_einval("tasker_task_create: priority %d is outside -1000000..1000000",
                         (int)req->priority);
    if (req->context_json) {
        size_t clen = req->context_len ? req->context_len : strlen(req->context_json);
        if ((int64_t)clen > c->cfg.num[TK_CFG_TASK_MAX_CONTEXT_BYTES])
            return tk_einval("tasker_task_create: context is %zu bytes, more than "
                             "task.max_context_bytes (%lld)",
                             clen, (long long)c->cfg.num[TK_CFG_TASK_MAX_CONTEXT_BYTES]);
        json_error_t jerr;
        json_t *j = json_loadb(req->context_json, clen, 0, &jerr);
        int is_obj = json_is_object(j);
        json_decref(j);
        if (!is_obj)
            return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT,
                          json_pack("{s:s}", "message", j ? "not an object" : jerr.text),
                          "tasker_task_create: context must be a JSON object (%s)",
                          j ? "got another JSON value" : jerr.text);
    }
    return TASKER_OK;
}

int tasker_task_create(char uuid_out[TASKER_UUID_BUFSIZE], tasker_coordinator *c,
                       const tasker_task_request *req)
{
    if (!uuid_out || !c || !req)
        return tk_einval("tasker_task_create: uuid_out, coordinator and request must not be NULL");
    uuid_out[0] = '\0';
    int rc = check_request(c, req);
    if (rc)
        return rc;
    return c->pg ? tk_pg_task_create(c->pg, req, uuid_out) : tk_task_create(c, req, uuid_out);
}

static int not_found(const char *uuid)
{
    return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT, json_pack("{s:s}", "task", uuid),
                  "no task %s", uuid);
}

/* Looks up a task with the lock held; sets the error if absent. */
static int find_locked(tasker_coordinator *c, const char *uuid, tk_task **out)
{
    if (c->closed)
        return tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    *out = tk_task_find(c, uuid);
    return *out ? TASKER_OK : not_found(uuid);
}

static int check_uuid_arg(const char *fn, const char *uuid)
{
    uint8_t b[16];
    if (!uuid)
        return tk_einval("%s: task uuid is NULL", fn);
    if (tk_uuid_parse(b, uuid) < 0)
        return tk_err(TASKER_EINVAL, TASKER_CATEGORY_ARGUMENT, json_pack("{s:s%}", "task", uuid,
                                                                          strnlen(uuid, 64)),
                      "%s: '%.64s' is not a UUID", fn, uuid);
    return TASKER_OK;
}

int tasker_task_wait(tasker_task_state *state_out, tasker_coordinator *c, const char *uuid,
                     int timeout_ms)
{
    if (!state_out || !c)
        return tk_einval("tasker_task_wait: state_out and coordinator must not be NULL");
    int rc = check_uuid_arg("tasker_task_wait", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_task_wait(c->pg, state_out, uuid, timeout_ms);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
    }
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    for (;;) {
        if ((rc = find_locked(c, uuid, &t)))
            break;
        *state_out = (tasker_task_state)t->state;
        if (tasker_task_state_is_final(*state_out))
            break;
        if (timeout_ms == 0) {
            rc = TASKER_ETIMEOUT;
            break;
        }
        t->waiters++;
        int w = timeout_ms < 0 ? pthread_cond_wait(&c->done_cv, &c->lock)
                               : pthread_cond_timedwait(&c->done_cv, &c->lock, &deadline);
        t->waiters--; /* the task cannot be forgotten while it is not final */
        if (w == ETIMEDOUT) {
            if ((rc = find_locked(c, uuid, &t)) == TASKER_OK) {
                *state_out = (tasker_task_state)t->state;
                rc = tasker_task_state_is_final(*state_out) ? TASKER_OK : TASKER_ETIMEOUT;
            }
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == TASKER_ETIMEOUT)
        tk_err(TASKER_ETIMEOUT, TASKER_CATEGORY_STATE, json_pack("{s:s}", "task", uuid),
               "task %s did not finish within %d ms", uuid, timeout_ms);
    return rc;
}

int tasker_task_get(char **json_out, tasker_coordinator *c, const char *uuid)
{
    if (!json_out || !c)
        return tk_einval("tasker_task_get: json_out and coordinator must not be NULL");
    *json_out = NULL;
    int rc = check_uuid_arg("tasker_task_get", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_task_get(c->pg, json_out, uuid);
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    if ((rc = find_locked(c, uuid, &t)) == TASKER_OK) {
        *json_out = tk_task_json(t);
        if (!*json_out)
            rc = tk_enomem();
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int tasker_task_cancel(tasker_coordinator *c, const char *uuid)
{
    if (!c)
        return tk_einval("tasker_task_cancel: coordinator is NULL");
    int rc = check_uuid_arg("tasker_task_cancel", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_task_cancel(c->pg, uuid);
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    if ((rc = find_locked(c, uuid, &t)) == TASKER_OK)
        rc = tk_task_cancel_locked(c, t);
    tk_task *g = c->graveyard;
    c->graveyard = NULL;
    pthread_mutex_unlock(&c->lock);
    tk_free_tasks(g);
    return rc;
}

int tasker_task_retry(tasker_coordinator *c, const char *uuid)
{
    if (!c)
        return tk_einval("tasker_task_retry: coordinator is NULL");
    int rc = check_uuid_arg("tasker_task_retry", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_task_retry(c->pg, uuid);
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    if ((rc = find_locked(c, uuid, &t)) == TASKER_OK && (rc = tk_task_retry_locked(c, t)) == 0)
        tk_notify(c);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int tasker_step_resolve(tasker_coordinator *c, const char *uuid, const char *step_name,
                        const char *result_json, size_t len)
{
    if (!c || !step_name)
        return tk_einval("tasker_step_resolve: coordinator and step name must not be NULL");
    int rc = check_uuid_arg("tasker_step_resolve", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_step_resolve(c->pg, uuid, step_name, result_json, len);
    char *copy = NULL;
    if (result_json) {
        if (!len)
            len = strlen(result_json);
        json_error_t jerr;
        json_t *j = json_loadb(result_json, len, JSON_DECODE_ANY, &jerr);
        if (!j)
            return tk_einval("tasker_step_resolve: result is not valid JSON: %s", jerr.text);
        json_decref(j);
        if (!(copy = tk_strndup(result_json, len)))
            return tk_enomem();
    }
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    if ((rc = find_locked(c, uuid, &t)) == TASKER_OK) {
        int64_t idx = tk_template_find(t->reg->tmpl, step_name);
        if (idx < 0)
            rc = tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                        json_pack("{s:s, s:s}", "task", uuid, "step", step_name),
                        "task %s has no step '%s'", uuid, step_name);
        else if ((rc = tk_step_resolve_locked(c, t, (uint32_t)idx, copy, len)) == TASKER_OK) {
            copy = NULL;
            tk_notify(c);
        }
    }
    pthread_mutex_unlock(&c->lock);
    tk_free(copy);
    return rc;
}

int tasker_task_forget(tasker_coordinator *c, const char *uuid)
{
    if (!c)
        return tk_einval("tasker_task_forget: coordinator is NULL");
    int rc = check_uuid_arg("tasker_task_forget", uuid);
    if (rc)
        return rc;
    if (c->pg)
        return tk_pg_task_forget(c->pg, uuid);
    pthread_mutex_lock(&c->lock);
    tk_task *t = NULL;
    if ((rc = find_locked(c, uuid, &t)) == TASKER_OK) {
        if (!tasker_task_state_is_final((tasker_task_state)t->state))
            rc = tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                        json_pack("{s:s, s:s}", "task", uuid, "state",
                                  tasker_task_state_name((tasker_task_state)t->state)),
                        "task %s is %s; only a finished task can be forgotten", uuid,
                        tasker_task_state_name((tasker_task_state)t->state));
        else if (t->outstanding)
            rc = tk_err(TASKER_EBUSY, TASKER_CATEGORY_STATE,
                        json_pack("{s:s, s:i}", "task", uuid, "steps_held", t->outstanding),
                        "task %s: %u step(s) are still held by handlers", uuid, t->outstanding);
        else
            tk_task_bury(c, t);
    }
    tk_task *g = c->graveyard;
    c->graveyard = NULL;
    pthread_mutex_unlock(&c->lock);
    tk_free_tasks(g);
    return rc;
}

/* ---- worker threads ---------------------------------------------------------- */

int tk_run_handler(tasker_coordinator *c, struct tasker_step *cl);

static void *worker_main(void *arg)
{
    tasker_coordinator *c = arg;
    tasker_step *batch[WORKER_BATCH];
    pthread_mutex_lock(&c->lock);
    while (!c->stopping) {
        if (c->heap_len || c->breakers) {
            int64_t due = tk_next_timer(c), mono = due ? tk_mono_ns() : 0;
            if (due && due <= mono) {
                tk_promote_due(c, mono);
                tk_breaker_tick(c, mono);
            }
        }
        size_t len = c->q[TK_Q_WORKER].len;
        if (len == 0) {
            if (c->q[TK_Q_POLL].len)
                tk_notify(c);
            /* One worker at a time spins briefly before sleeping: work often
             * arrives within microseconds, and a futex sleep and wake-up
             * cost more than that.  More spinners would only take CPU from
             * the threads producing the work. */
            if (!c->spinning) {
                c->spinning++;
                pthread_mutex_unlock(&c->lock);
                for (int spin = 0; spin < 4000; spin++) {
                    if (atomic_load_explicit(&c->worker_ready, memory_order_relaxed) ||
                        atomic_load_explicit(&c->stop_flag, memory_order_relaxed))
                        break;
                    tk_cpu_relax();
                }
                pthread_mutex_lock(&c->lock);
                c->spinning--;
                if (c->q[TK_Q_WORKER].len || c->stopping)
                    continue;
            }
            /* Going to sleep: the events recorded so far should not wait
             * for their delivery thread's nap to end (but a worker that
             * finds work while spinning wakes no one). */
            if (c->subs)
                tk_events_flush(c);
            c->idle_workers++;
            int64_t due = tk_next_timer(c);
            if (due) {
                struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
                pthread_cond_timedwait(&c->work_cv, &c->lock, &ts);
            } else {
                pthread_cond_wait(&c->work_cv, &c->lock);
            }
            c->idle_workers--;
            continue;
        }
        /* Share the queue with the other workers rather than taking it all:
         * steps in one batch run one after another on this thread. */
        size_t want = (len + c->n_threads - 1) / c->n_threads;
        if (want > WORKER_BATCH)
            want = WORKER_BATCH;
        size_t n = tk_claim_batch(c, TK_Q_WORKER, batch, want, tk_now_ns(), NULL);
        if ((c->q[TK_Q_WORKER].len || c->heap_len) && c->idle_workers)
            tk_notify(c); /* more work, or a timeout timer a sleeping worker must watch */
        pthread_mutex_unlock(&c->lock);
        size_t i = 0;
        for (; i < n && !atomic_load_explicit(&c->stop_flag, memory_order_relaxed); i++)
            tk_run_handler(c, batch[i]);
        pthread_mutex_lock(&c->lock);
        if (i < n) {
            int64_t now = tk_now_ns();
            for (; i < n; i++)
                tk_release(c, batch[i], now);
            if (c->done_waiters)
                pthread_cond_broadcast(&c->done_cv);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int tasker_coordinator_start(tasker_coordinator *c, unsigned n_threads)
{
    if (!c)
        return tk_einval("tasker_coordinator_start: coordinator is NULL");
    if (n_threads < 1 || n_threads > 256)
        return tk_einval("tasker_coordinator_start: n_threads is %u, allowed 1..256", n_threads);
    if (c->pg)
        return tk_pg_start(c->pg, n_threads);
    pthread_mutex_lock(&c->lock);
    int rc = TASKER_OK, created = 0;
    if (c->closed)
        rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    else if (c->threads)
        rc = tk_err(TASKER_EBUSY, TASKER_CATEGORY_STATE, NULL,
                    "worker threads are already running (%u)", c->n_threads);
    else if (!(c->threads = tk_calloc(n_threads, sizeof *c->threads)))
        rc = tk_enomem();
    else
        created = 1;
    if (created) {
        c->stopping = 0;
        atomic_store(&c->stop_flag, 0);
        c->n_threads = 0;
        for (unsigned i = 0; i < n_threads; i++) {
            if (pthread_create(&c->threads[i], NULL, worker_main, c) != 0) {
                rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                            "could not start worker thread %u of %u", i + 1, n_threads);
                break;
            }
            c->n_threads++;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (rc && created) {
        /* Keep the error of the failed start, not the stop's. */
        tasker_coordinator_stop(c, 0);
        rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                    "could not start %u worker threads", n_threads);
    }
    return rc;
}

int tasker_coordinator_stop(tasker_coordinator *c, int drain_ms)
{
    if (!c)
        return tk_einval("tasker_coordinator_stop: coordinator is NULL");
    if (c->pg)
        return tk_pg_stop(c->pg, drain_ms);
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    atomic_store(&c->stop_flag, 1);
    pthread_cond_broadcast(&c->work_cv);
    pthread_t *threads = c->threads;
    unsigned n = c->n_threads;
    c->threads = NULL;
    c->n_threads = 0;
    pthread_mutex_unlock(&c->lock);
    for (unsigned i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    tk_free(threads);

    int rc = TASKER_OK;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (drain_ms > 0) {
        deadline.tv_sec += drain_ms / 1000;
        deadline.tv_nsec += (long)(drain_ms % 1000) * 1000000;
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
    }
    pthread_mutex_lock(&c->lock);
    while (c->outstanding && drain_ms != 0) {
        c->done_waiters++;
        int w = drain_ms < 0 ? pthread_cond_wait(&c->done_cv, &c->lock)
                             : pthread_cond_timedwait(&c->done_cv, &c->lock, &deadline);
        c->done_waiters--;
        if (w == ETIMEDOUT)
            break;
    }
    size_t left = c->outstanding;
    if (left && drain_ms != 0) {
        tk_release_in_flight(c, tk_now_ns());
        tk_notify(c);
    }
    c->stopping = 0;
    atomic_store(&c->stop_flag, 0);
    pthread_mutex_unlock(&c->lock);
    if (left && drain_ms != 0)
        rc = tk_err(TASKER_ETIMEOUT, TASKER_CATEGORY_STATE,
                    json_pack("{s:I}", "steps_released", (json_int_t)left),
                    "%zu step(s) were still in flight after %d ms; they were put back in the "
                    "queue and their handlers' late completions will be refused",
                    left, drain_ms);
    return rc;
}

/* ---- poll mode --------------------------------------------------------------- */

static int make_fd(tasker_coordinator *c)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int ev = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int tf = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event e1 = {.events = EPOLLIN, .data.fd = ev};
    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = tf};
    if (ep < 0 || ev < 0 || tf < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e1) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, tf, &e2) < 0) {
        int err = errno;
        if (ep >= 0)
            close(ep);
        if (ev >= 0)
            close(ev);
        if (tf >= 0)
            close(tf);
        return tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                      "could not create the poll-mode descriptor: %s", strerror(err));
    }
    c->epfd = ep;
    c->evfd = ev;
    c->tfd = tf;
    c->ev_armed = 0;
    c->timer_due = 0;
    return TASKER_OK;
}

int tasker_coordinator_fd(int *fd_out, tasker_coordinator *c)
{
    if (!fd_out || !c)
        return tk_einval("tasker_coordinator_fd: fd_out and coordinator must not be NULL");
    *fd_out = -1;
    if (c->pg)
        return tk_pg_fd(c->pg, fd_out);
    pthread_mutex_lock(&c->lock);
    int rc = TASKER_OK;
    if (c->closed)
        rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    else if (c->epfd < 0 && (rc = make_fd(c)) == TASKER_OK)
        tk_notify(c);
    if (rc == TASKER_OK)
        *fd_out = c->epfd;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int tasker_coordinator_claim(tasker_step **steps_out, size_t *n_out, tasker_coordinator *c,
                             size_t max)
{
    if (!steps_out || !n_out || !c)
        return tk_einval("tasker_coordinator_claim: steps_out, n_out and coordinator must not be "
                         "NULL");
    *n_out = 0;
    if (c->pg)
        return tk_pg_claim(c->pg, steps_out, n_out, max);
    pthread_mutex_lock(&c->lock);
    if (c->closed) {
        pthread_mutex_unlock(&c->lock);
        return tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    }
    if (c->evfd >= 0) {
        uint64_t v;
        if (c->ev_armed && read(c->evfd, &v, sizeof v) == sizeof v)
            c->ev_armed = 0;
        if (read(c->tfd, &v, sizeof v) == sizeof v)
            c->timer_due = 0;
    }
    if (c->heap_len || c->breakers) {
        int64_t mono = tk_mono_ns();
        tk_promote_due(c, mono);
        tk_breaker_tick(c, mono);
    }
    int rc = TASKER_OK;
    if (!c->stopping && max) {
        int oom = 0;
        *n_out = tk_claim_batch(c, TK_Q_POLL, steps_out, max, tk_now_ns(), &oom);
        if (*n_out == 0 && oom)
            rc = tk_enomem();
    }
    if (*n_out == 0 && c->subs)
        tk_events_flush(c); /* the caller goes back to waiting */
    tk_notify(c);
    pthread_mutex_unlock(&c->lock);
    return rc;
}
