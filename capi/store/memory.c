/*
 * The memory store: tasks and steps in uthash tables, ready queues by
 * priority, a min-heap of retry timers.  Every function here runs with the
 * coordinator's lock held.
 */
#include <stdio.h>
#include <string.h>
#include <utlist.h>

#include "core/alloc.h"
#include "core/backoff.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/uuid.h"
#include "obs/hot.h"
#include "run/engine.h"

tk_task *tk_task_find(tasker_coordinator *c, const char *uuid_text)
{
    uint8_t b[16];
    if (tk_uuid_parse(b, uuid_text) < 0)
        return NULL;
    tk_task *t;
    HASH_FIND(hh, c->tasks, b, 16, t);
    return t;
}

void tk_record(tk_task *t, int64_t at, int32_t step, uint8_t from, uint8_t to, tk_reason r,
               uint32_t attempt)
{
    if (t->n_trans == t->cap_trans) {
        size_t cap = t->cap_trans ? t->cap_trans * 2 : 16;
        tk_transition *n = tk_realloc(t->trans, cap * sizeof *n);
        if (!n)
            return; /* out of memory: the state change stands, its record is lost */
        t->trans = n;
        t->cap_trans = cap;
    }
    tk_transition *tr = &t->trans[t->n_trans++];
    tr->at = at;
    tr->step = step;
    tr->from = from;
    tr->to = to;
    tr->reason = (uint8_t)r;
    tr->attempt = attempt;
}

/* Every step state change goes through here: the audit trail, metrics,
 * events and the handler's circuit all hang off it. */
static void step_set(tk_step *s, uint8_t to, int64_t now, tk_reason r)
{
    uint8_t from = s->state;
    tk_record(s->task, now, (int32_t)s->idx, from, to, r, s->attempts);
    s->state = to;
    tasker_coordinator *c = s->task->coord;
    if (tk_obs_on(c))
        tk_obs_step(c, s, from, to, now, (int)r);
    if (from == TASKER_STEP_IN_PROGRESS) {
        tk_breaker *b = s->task->reg->handlers[s->idx]->breaker;
        if (to == TASKER_STEP_CANCELLED || to == TASKER_STEP_ENQUEUED)
            tk_breaker_release(c, b);
        else if (c->breakers_on || b->state != TASKER_CIRCUIT_CLOSED)
            tk_breaker_outcome(c, b, to == TASKER_STEP_COMPLETE);
    }
}

static void task_set(tk_task *t, uint8_t to, int64_t now, tk_reason r)
{
    tk_record(t, now, -1, t->state, to, r, 0);
    t->state = to;
    if (tk_obs_on(t->coord))
        tk_obs_task(t->coord, t, to, now);
}

/* ---- ready queues -------------------------------------------------------- */

static int queue_of(const tk_step *s)
{
    const tk_handler *h = s->task->reg->handlers[s->idx];
    return h->fn ? TK_Q_WORKER : TK_Q_POLL;
}

static void queue_push(tasker_coordinator *c, tk_step *s)
{
    int qi = queue_of(s);
    tk_bucket *b = s->task->bucket[qi];
    s->q_next = NULL;
    s->q_prev = b->tail;
    if (b->tail)
        b->tail->q_next = s;
    else
        b->head = s;
    b->tail = s;
    s->in_queue = (uint8_t)(qi + 1);
    c->q[qi].len++;
    s->task->reg->nsobj->depth++;
    if (qi == TK_Q_WORKER)
        atomic_store_explicit(&c->worker_ready, c->q[qi].len, memory_order_relaxed);
}

/* Takes a queued step out of its bucket without touching the namespace's depth. */
static void bucket_unlink(tasker_coordinator *c, tk_step *s)
{
    int qi = s->in_queue - 1;
    tk_bucket *b = s->task->bucket[qi];
    if (s->q_prev)
        s->q_prev->q_next = s->q_next;
    else
        b->head = s->q_next;
    if (s->q_next)
        s->q_next->q_prev = s->q_prev;
    else
        b->tail = s->q_prev;
    s->q_next = s->q_prev = NULL;
    s->in_queue = 0;
    c->q[qi].len--;
    if (qi == TK_Q_WORKER)
        atomic_store_explicit(&c->worker_ready, c->q[qi].len, memory_order_relaxed);
}

void tk_breaker_park(tk_breaker *b, tk_step *s)
{
    s->q_next = NULL;
    s->q_prev = b->parked_tail;
    if (b->parked_tail)
        b->parked_tail->q_next = s;
    else
        b->parked_head = s;
    b->parked_tail = s;
    s->in_queue = TK_PARKED;
}

void tk_breaker_unlink(tk_breaker *b, tk_step *s)
{
    if (s->q_prev)
        s->q_prev->q_next = s->q_next;
    else
        b->parked_head = s->q_next;
    if (s->q_next)
        s->q_next->q_prev = s->q_prev;
    else
        b->parked_tail = s->q_prev;
    s->q_next = s->q_prev = NULL;
    s->in_queue = 0;
}

/* Puts parked steps back at the head of their buckets, oldest first. */
void tk_breaker_unpark_all(tasker_coordinator *c, tk_breaker *b)
{
    while (b->parked_tail) {
        tk_step *s = b->parked_tail;
        tk_breaker_unlink(b, s);
        int qi = queue_of(s);
        tk_bucket *bk = s->task->bucket[qi];
        s->q_prev = NULL;
        s->q_next = bk->head;
        if (bk->head)
            bk->head->q_prev = s;
        else
            bk->tail = s;
        bk->head = s;
        s->in_queue = (uint8_t)(qi + 1);
        c->q[qi].len++;
        if (qi == TK_Q_WORKER)
            atomic_store_explicit(&c->worker_ready, c->q[qi].len, memory_order_relaxed);
    }
}

void tk_queue_remove(tasker_coordinator *c, tk_step *s)
{
    if (!s->in_queue)
        return;
    if (s->in_queue == TK_PARKED)
        tk_breaker_unlink(s->task->reg->handlers[s->idx]->breaker, s);
    else
        bucket_unlink(c, s);
    s->task->reg->nsobj->depth--;
}

/* Pops the next step whose handler's circuit lets it through; steps held
 * back by an open circuit are parked on it until it half-opens. */
static tk_step *queue_pop(tasker_coordinator *c, int qi)
{
    int64_t mono = 0;
    while (c->q[qi].len) {
        tk_bucket *b = c->q[qi].buckets;
        while (b && !b->head)
            b = b->next;
        if (!b)
            return NULL;
        tk_step *s = b->head;
        bucket_unlink(c, s);
        tk_breaker *br = s->task->reg->handlers[s->idx]->breaker;
        if (br->state == TASKER_CIRCUIT_CLOSED && br->mode == TASKER_CIRCUIT_AUTO) {
            s->task->reg->nsobj->depth--;
            return s;
        }
        if (!mono)
            mono = tk_mono_ns();
        if (tk_breaker_allow(c, br, mono)) {
            s->task->reg->nsobj->depth--;
            return s;
        }
        tk_breaker_park(br, s);
    }
    return NULL;
}

/* Finds or makes the bucket of `priority` in queue `qi`. */
static tk_bucket *bucket_get(tasker_coordinator *c, int qi, int32_t priority)
{
    tk_bucket **pp = &c->q[qi].buckets;
    while (*pp && (*pp)->priority > priority)
        pp = &(*pp)->next;
    if (*pp && (*pp)->priority == priority)
        return *pp;
    tk_bucket *b = tk_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->priority = priority;
    b->next = *pp;
    *pp = b;
    return b;
}

/* ---- retry heap ---------------------------------------------------------- */

static void heap_swap(tasker_coordinator *c, size_t i, size_t j)
{
    tk_step *a = c->heap[i], *b = c->heap[j];
    c->heap[i] = b;
    c->heap[j] = a;
    b->heap_pos = (uint32_t)i + 1;
    a->heap_pos = (uint32_t)j + 1;
}

static void heap_up(tasker_coordinator *c, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (c->heap[p]->due_mono <= c->heap[i]->due_mono)
            break;
        heap_swap(c, i, p);
        i = p;
    }
}

static void heap_down(tasker_coordinator *c, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < c->heap_len && c->heap[l]->due_mono < c->heap[m]->due_mono)
            m = l;
        if (r < c->heap_len && c->heap[r]->due_mono < c->heap[m]->due_mono)
            m = r;
        if (m == i)
            break;
        heap_swap(c, i, m);
        i = m;
    }
}

static int heap_push(tasker_coordinator *c, tk_step *s)
{
    if (c->heap_len == c->heap_cap) {
        size_t cap = c->heap_cap ? c->heap_cap * 2 : 64;
        tk_step **n = tk_realloc(c->heap, cap * sizeof *n);
        if (!n)
            return -1;
        c->heap = n;
        c->heap_cap = cap;
    }
    c->heap[c->heap_len] = s;
    s->heap_pos = (uint32_t)++c->heap_len;
    heap_up(c, c->heap_len - 1);
    return 0;
}

void tk_heap_remove(tasker_coordinator *c, tk_step *s)
{
    if (!s->heap_pos)
        return;
    size_t i = s->heap_pos - 1;
    s->heap_pos = 0;
    c->heap_len--;
    if (i == c->heap_len)
        return;
    c->heap[i] = c->heap[c->heap_len];
    c->heap[i]->heap_pos = (uint32_t)i + 1;
    heap_up(c, i);
    heap_down(c, c->heap[i]->heap_pos - 1);
}

static void attempt_failed(tasker_coordinator *c, tk_step *s, tk_failure_rec *failure,
                           int retryable, int64_t retry_after_ms, int64_t now, tk_reason why);

/* A handler ran past its step's timeout_ms: the attempt fails (retryable) and
 * the handler's late completion will be refused as stale. */
static void time_out(tasker_coordinator *c, tk_step *s, int64_t now)
{
    const tk_tstep *ts = &s->task->reg->tmpl->steps[s->idx];
    tk_failure_rec *f = tk_calloc(1, sizeof *f);
    if (f) {
        char msg[96];
        snprintf(msg, sizeof msg, "handler did not finish within %u ms", ts->opts.timeout_ms);
        f->retryable = 1;
        f->error_class = tk_strdup("tasker.TimeoutError");
        f->message = tk_strdup(msg);
        if (!f->error_class || !f->message) {
            tk_failure_free(f);
            f = NULL;
        }
    }
    s->finished_at = now;
    attempt_failed(c, s, f, 1, -1, now, TK_R_TIMED_OUT);
    tk_maybe_finalize(c, s->task, now);
}

size_t tk_promote_due(tasker_coordinator *c, int64_t mono_now)
{
    size_t n = 0;
    int64_t now = 0;
    while (c->heap_len && c->heap[0]->due_mono <= mono_now) {
        tk_step *s = c->heap[0];
        tk_heap_remove(c, s);
        if (!now)
            now = tk_now_ns();
        if (s->state == TASKER_STEP_IN_PROGRESS)
            time_out(c, s, now);
        else
            tk_step_enqueue(c, s, now, TK_R_RETRY_DUE);
        n++;
    }
    return n;
}

/* ---- steps --------------------------------------------------------------- */

void tk_step_enqueue(tasker_coordinator *c, tk_step *s, int64_t now, tk_reason r)
{
    tk_task *t = s->task;
    if (s->state == TASKER_STEP_PENDING)
        t->n_active++;
    else if (s->state == TASKER_STEP_ERROR) {
        t->n_error--;
        t->n_active++;
    }
    step_set(s, TASKER_STEP_ENQUEUED, now, r);
    s->enqueued_at = now;
    queue_push(c, s);
}

size_t tk_claim_batch(tasker_coordinator *c, int qi, tasker_step **out, size_t max, int64_t now,
                      int *oom)
{
    size_t n = 0;
    int64_t mono = 0;
    while (n < max) {
        tk_step *s = queue_pop(c, qi);
        if (!s)
            break;
        struct tasker_step *cl;
        if (s->attempts == 0) {
            cl = &s->claim0;
        } else if (!(cl = tk_calloc(1, sizeof *cl))) {
            queue_push(c, s); /* back in the queue, at the tail: fine under memory pressure */
            if (oom)
                *oom = 1;
            break;
        }
        tk_task *t = s->task;
        if (t->state == TASKER_TASK_PENDING)
            task_set(t, TASKER_TASK_RUNNING, now, TK_R_STARTED);
        s->attempts++;
        step_set(s, TASKER_STEP_IN_PROGRESS, now, TK_R_CLAIMED);
        s->started_at = now;
        /* A poll-mode claim hands the step to its handler now, so its time
         * limit starts now; a worker thread starts it when it calls the
         * handler (tk_start_timeout), not while the step waits in its batch. */
        uint32_t timeout = t->reg->tmpl->steps[s->idx].opts.timeout_ms;
        if (timeout && qi == TK_Q_POLL) {
            if (!mono)
                mono = tk_mono_ns();
            s->due_mono = mono + (int64_t)timeout * 1000000;
            heap_push(c, s); /* without memory for the timer the attempt simply has none */
        }
        cl->step = s;
        cl->attempt = s->attempts;
        cl->done = 0;
        cl->run_at = 0;
        if (cl != &s->claim0) {
            cl->older = s->claims;
            s->claims = cl;
        } else if (!s->claims) {
            s->claims = cl;
        }
        t->outstanding++;
        c->outstanding++;
        out[n++] = cl;
    }
    return n;
}

static void claim_done(tasker_coordinator *c, struct tasker_step *cl)
{
    cl->done = 1;
    cl->step->task->outstanding--;
    c->outstanding--;
}

void tk_release(tasker_coordinator *c, struct tasker_step *cl, int64_t now)
{
    tk_step *s = cl->step;
    claim_done(c, cl);
    if (s->state != TASKER_STEP_IN_PROGRESS || cl->attempt != s->attempts)
        return;
    /* The attempt never reached a handler: it does not count. */
    s->attempts--;
    step_set(s, TASKER_STEP_ENQUEUED, now, TK_R_RELEASED);
    queue_push(c, s);
}

void tk_start_timeout(tasker_coordinator *c, struct tasker_step *cl)
{
    tk_step *s = cl->step;
    uint32_t timeout = s->task->reg->tmpl->steps[s->idx].opts.timeout_ms;
    if (!timeout || cl->done || s->state != TASKER_STEP_IN_PROGRESS ||
        cl->attempt != s->attempts || s->heap_pos)
        return;
    s->due_mono = tk_mono_ns() + (int64_t)timeout * 1000000;
    if (heap_push(c, s) == 0)
        tk_notify(c);
}

void tk_release_in_flight(tasker_coordinator *c, int64_t now)
{
    for (tk_task *t = c->tasks; t; t = t->hh.next) {
        if (!t->outstanding)
            continue;
        for (uint32_t i = 0; i < t->n_steps; i++) {
            tk_step *s = &t->steps[i];
            if (s->state != TASKER_STEP_IN_PROGRESS)
                continue;
            tk_heap_remove(c, s); /* its timeout */
            s->budget++;          /* the interrupted attempt does not count */
            step_set(s, TASKER_STEP_ENQUEUED, now, TK_R_RELEASED);
            s->enqueued_at = now;
            queue_push(c, s);
        }
    }
}

static void finish_ok(tasker_coordinator *c, tk_step *s, int64_t now)
{
    tk_task *t = s->task;
    t->n_done++;
    const tk_tstep *ts = &t->reg->tmpl->steps[s->idx];
    for (uint32_t i = 0; i < ts->n_dependents; i++) {
        tk_step *d = &t->steps[ts->dependents[i]];
        if (--d->remaining == 0 && d->state == TASKER_STEP_PENDING)
            tk_step_enqueue(c, d, now, TK_R_DEPENDENCIES_MET);
    }
}

/* Records a failed attempt and schedules the retry or puts the step in error.
 * `why` TK_R_COUNT means "the reason follows from the outcome". */
static void attempt_failed(tasker_coordinator *c, tk_step *s, tk_failure_rec *failure,
                           int retryable, int64_t retry_after_ms, int64_t now, tk_reason why)
{
    tk_task *t = s->task;
    if (failure) {
        failure->attempt = s->attempts;
        failure->at = now;
        if (s->failures_tail)
            s->failures_tail->next = failure;
        else
            s->failures = failure;
        s->failures_tail = failure;
        tk_status_record_failure(c, s, failure);
    }
    const tasker_step_options *o = &t->reg->tmpl->steps[s->idx].opts;
    if (retryable && s->attempts < s->budget) {
        uint64_t delay = tk_backoff_ms(o, s->attempts, retry_after_ms,
                                       (double)(tk_random_u64() >> 11) / 9007199254740992.0);
        step_set(s, TASKER_STEP_WAITING_FOR_RETRY, now,
                 why != TK_R_COUNT ? why : TK_R_RETRY_SCHEDULED);
        s->due_mono = tk_mono_ns() + (int64_t)delay * 1000000;
        if (delay == 0 || heap_push(c, s) < 0)
            tk_step_enqueue(c, s, now, TK_R_RETRY_DUE);
    } else {
        step_set(s, TASKER_STEP_ERROR, now,
                 why != TK_R_COUNT      ? why
                 : retryable ? TK_R_RETRIES_EXHAUSTED
                             : TK_R_PERMANENT_FAILURE);
        t->n_active--;
        t->n_error++;
    }
}

int tk_complete(tasker_coordinator *c, struct tasker_step *cl, int ok, char *result,
                size_t result_len, void *ptr, void (*free_ptr)(void *), tk_failure_rec *failure,
                int retryable, int64_t retry_after_ms)
{
    tk_step *s = cl->step;
    tk_task *t = s->task;
    if (cl->done)
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:i}", "task", t->uuid, "step",
                                t->reg->tmpl->steps[s->idx].name, "attempt", cl->attempt),
                      "step '%s' attempt %u was already completed",
                      t->reg->tmpl->steps[s->idx].name, cl->attempt);
    if (s->state == TASKER_STEP_CANCELLED) {
        claim_done(c, cl);
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:s}", "task", t->uuid, "step",
                                t->reg->tmpl->steps[s->idx].name, "state", "cancelled"),
                      "step '%s' was cancelled; its result is discarded",
                      t->reg->tmpl->steps[s->idx].name);
    }
    if (s->state == TASKER_STEP_IN_PROGRESS && cl->attempt == s->attempts && s->heap_pos &&
        s->due_mono <= tk_mono_ns()) {
        /* Its time ran out while no thread was free to notice: the timeout
         * happened first, so this result is late. */
        tk_heap_remove(c, s);
        time_out(c, s, tk_now_ns());
    }
    if (s->state != TASKER_STEP_IN_PROGRESS || cl->attempt != s->attempts) {
        claim_done(c, cl);
        c->m_fenced++;
        return tk_err(TASKER_ESTALE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:i, s:i}", "task", t->uuid, "step",
                                t->reg->tmpl->steps[s->idx].name, "attempt", cl->attempt,
                                "current_attempt", s->attempts),
                      "step '%s' attempt %u no longer holds the step; completion refused",
                      t->reg->tmpl->steps[s->idx].name, cl->attempt);
    }
    claim_done(c, cl);
    tk_heap_remove(c, s); /* its timeout, if any */
    if (cl->run_at)
        s->started_at = cl->run_at;
    int64_t now = tk_now_ns();
    s->finished_at = now;
    if (ok) {
        s->result = result;
        s->result_len = result_len;
        s->result_ptr = ptr;
        s->result_free = free_ptr;
        s->result_kind = ptr ? TK_RESULT_POINTER : result ? TK_RESULT_JSON : TK_RESULT_NONE;
        step_set(s, TASKER_STEP_COMPLETE, now, TK_R_SUCCEEDED);
        t->n_active--;
        finish_ok(c, s, now);
    } else {
        attempt_failed(c, s, failure, retryable, retry_after_ms, now, TK_R_COUNT);
    }
    tk_maybe_finalize(c, t, now);
    return TASKER_OK;
}

/* ---- tasks --------------------------------------------------------------- */

void tk_failure_free(tk_failure_rec *f)
{
    while (f) {
        tk_failure_rec *n = f->next;
        tk_free(f->error_class);
        tk_free(f->message);
        tk_free(f->context);
        tk_free(f);
        f = n;
    }
}

void tk_task_free(tk_task *t)
{
    for (uint32_t i = 0; i < t->n_steps; i++) {
        tk_step *s = &t->steps[i];
        tk_free(s->result);
        if (s->result_free)
            s->result_free(s->result_ptr);
        tk_failure_free(s->failures);
        for (struct tasker_step *cl = s->claims; cl;) {
            struct tasker_step *o = cl->older;
            if (cl != &s->claim0)
                tk_free(cl);
            cl = o;
        }
    }
    tk_free(t->trans);
    tk_free(t->context);
    tk_free(t->idem_key);
    tk_free(t);
}

void tk_task_bury(tasker_coordinator *c, tk_task *t)
{
    HASH_DELETE(hh, c->tasks, t);
    if (t->idem_key)
        HASH_DELETE(ihh, c->by_key, t);
    if (t->in_fin) {
        DL_DELETE2(c->fin_head, t, fin_prev, fin_next);
        t->in_fin = 0;
        c->n_finished_kept--;
    }
    t->fin_next = c->graveyard;
    c->graveyard = t;
}

void tk_free_tasks(tk_task *list)
{
    while (list) {
        tk_task *n = list->fin_next;
        tk_task_free(list);
        list = n;
    }
}

static void task_finished(tasker_coordinator *c, tk_task *t, int64_t now)
{
    t->finished_at = now;
    if (t->waiters)
        pthread_cond_broadcast(&c->done_cv);
    int64_t retain = c->cfg.num[TK_CFG_MEMORY_RETAIN_FINISHED];
    if (retain <= 0)
        return;
    if (!t->in_fin) {
        DL_APPEND2(c->fin_head, t, fin_prev, fin_next);
        t->in_fin = 1;
        c->n_finished_kept++;
    }
    tk_task *o = c->fin_head;
    while (o && c->n_finished_kept > (size_t)retain) {
        tk_task *next = o->fin_next;
        if (o->outstanding == 0)
            tk_task_bury(c, o);
        o = next;
    }
}

void tk_maybe_finalize(tasker_coordinator *c, tk_task *t, int64_t now)
{
    if (t->n_active != 0 || tasker_task_state_is_final((tasker_task_state)t->state))
        return;
    if (t->n_done == t->n_steps)
        task_set(t, TASKER_TASK_COMPLETE, now, TK_R_COMPLETED);
    else
        task_set(t, TASKER_TASK_ERROR, now, TK_R_FAILED);
    task_finished(c, t, now);
}

/* Called by cancel: every unfinished step becomes cancelled. */
int tk_task_cancel_locked(tasker_coordinator *c, tk_task *t)
{
    if (!tk_task_transition_ok((tasker_task_state)t->state, TASKER_TASK_CANCELLED))
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s}", "task", t->uuid, "state",
                                tasker_task_state_name((tasker_task_state)t->state)),
                      "task %s is %s and cannot be cancelled", t->uuid,
                      tasker_task_state_name((tasker_task_state)t->state));
    int64_t now = tk_now_ns();
    for (uint32_t i = 0; i < t->n_steps; i++) {
        tk_step *s = &t->steps[i];
        if (!tk_step_transition_ok((tasker_step_state)s->state, TASKER_STEP_CANCELLED))
            continue;
        tk_queue_remove(c, s);
        tk_heap_remove(c, s);
        if (s->state == TASKER_STEP_ERROR)
            t->n_error--;
        else if (s->state != TASKER_STEP_PENDING)
            t->n_active--;
        step_set(s, TASKER_STEP_CANCELLED, now, TK_R_CANCELLED);
        s->finished_at = now;
    }
    task_set(t, TASKER_TASK_CANCELLED, now, TK_R_CANCELLED);
    task_finished(c, t, now);
    return TASKER_OK;
}

int tk_task_retry_locked(tasker_coordinator *c, tk_task *t)
{
    if (t->state != TASKER_TASK_ERROR)
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s}", "task", t->uuid, "state",
                                tasker_task_state_name((tasker_task_state)t->state)),
                      "task %s is %s; only a task in error can be retried", t->uuid,
                      tasker_task_state_name((tasker_task_state)t->state));
    int64_t now = tk_now_ns();
    if (t->in_fin) {
        DL_DELETE2(c->fin_head, t, fin_prev, fin_next);
        t->in_fin = 0;
        c->n_finished_kept--;
    }
    task_set(t, TASKER_TASK_RUNNING, now, TK_R_MANUAL_RETRY);
    t->finished_at = 0;
    for (uint32_t i = 0; i < t->n_steps; i++) {
        tk_step *s = &t->steps[i];
        if (s->state != TASKER_STEP_ERROR)
            continue;
        s->budget = s->attempts + t->reg->tmpl->steps[i].opts.max_attempts;
        tk_step_enqueue(c, s, now, TK_R_MANUAL_RETRY);
    }
    return TASKER_OK;
}

int tk_step_resolve_locked(tasker_coordinator *c, tk_task *t, uint32_t idx, char *result,
                           size_t len)
{
    tk_step *s = &t->steps[idx];
    const char *name = t->reg->tmpl->steps[idx].name;
    if (s->state != TASKER_STEP_ERROR)
        return tk_err(TASKER_ESTATE, TASKER_CATEGORY_STATE,
                      json_pack("{s:s, s:s, s:s}", "task", t->uuid, "step", name, "state",
                                tasker_step_state_name((tasker_step_state)s->state)),
                      "step '%s' is %s; only a step in error can be resolved", name,
                      tasker_step_state_name((tasker_step_state)s->state));
    int64_t now = tk_now_ns();
    tk_free(s->result);
    s->result = result;
    s->result_len = len;
    s->result_kind = result ? TK_RESULT_JSON : TK_RESULT_NONE;
    s->finished_at = now;
    step_set(s, TASKER_STEP_RESOLVED_MANUALLY, now, TK_R_MANUAL_RESOLVE);
    t->n_error--;
    uint32_t active_before = t->n_active;
    finish_ok(c, s, now);
    if (t->state == TASKER_TASK_ERROR) {
        if (t->n_active > active_before) {
            if (t->in_fin) {
                DL_DELETE2(c->fin_head, t, fin_prev, fin_next);
                t->in_fin = 0;
                c->n_finished_kept--;
            }
            task_set(t, TASKER_TASK_RUNNING, now, TK_R_MANUAL_RESOLVE);
            t->finished_at = 0;
        } else if (t->n_done == t->n_steps) {
            task_set(t, TASKER_TASK_RESOLVED_MANUALLY, now, TK_R_MANUAL_RESOLVE);
            task_finished(c, t, now);
        }
    }
    return TASKER_OK;
}

/* ---- creation -------------------------------------------------------------- */

static int resolve_handlers(tasker_coordinator *c, tk_reg *r)
{
    if (r->handlers_resolved)
        return TASKER_OK;
    const tasker_template *t = r->tmpl;
    for (uint32_t i = 0; i < t->n_steps; i++) {
        if (r->handlers[i])
            continue;
        tk_handler *h;
        HASH_FIND_STR(c->handlers, t->steps[i].handler, h);
        if (!h)
            return tk_err(TASKER_EHANDLER, TASKER_CATEGORY_HANDLER,
                          json_pack("{s:s, s:s, s:s}", "template", t->key, "step",
                                    t->steps[i].name, "handler", t->steps[i].handler),
                          "no handler '%s' is registered for step '%s' of template '%s'",
                          t->steps[i].handler, t->steps[i].name, t->key);
        r->handlers[i] = h;
    }
    r->handlers_resolved = 1;
    return TASKER_OK;
}

static tk_reg *find_reg(tasker_coordinator *c, const tasker_task_request *req)
{
    char key[800];
    tk_reg *r = NULL;
    if (req->template_version) {
        snprintf(key, sizeof key, "%s/%s@%s", req->ns, req->name, req->template_version);
        HASH_FIND_STR(c->templates, key, r);
    } else {
        snprintf(key, sizeof key, "%s/%s", req->ns, req->name);
        tk_latest *l;
        HASH_FIND_STR(c->latest, key, l);
        r = l ? l->reg : NULL;
    }
    return r;
}

/* Looks up the template and an existing task for the idempotency key.
 * Returns 1 if an existing task was found (its uuid copied), 0 to go on, or
 * a negative error. */
static int lookup_locked(tasker_coordinator *c, const tasker_task_request *req, tk_reg **reg_out,
                         char *uuid_out)
{
    tk_reg *r = find_reg(c, req);
    if (!r)
        return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_TEMPLATE,
                      json_pack("{s:s, s:s, s:s?}", "namespace", req->ns, "name", req->name,
                                "version", req->template_version),
                      "no template %s/%s%s%s is registered", req->ns, req->name,
                      req->template_version ? "@" : "",
                      req->template_version ? req->template_version : "");
    int rc = resolve_handlers(c, r);
    if (rc)
        return rc;
    *reg_out = r;
    if (req->idempotency_key) {
        tk_task *t;
        HASH_FIND(ihh, c->by_key, req->idempotency_key, strlen(req->idempotency_key), t);
        if (t) {
            if (t->reg != r)
                return tk_err(TASKER_EEXIST, TASKER_CATEGORY_STATE,
                              json_pack("{s:s, s:s, s:s}", "idempotency_key",
                                        req->idempotency_key, "task", t->uuid, "template",
                                        t->reg->key),
                              "idempotency key '%s' is already used by task %s of template %s",
                              req->idempotency_key, t->uuid, t->reg->key);
            memcpy(uuid_out, t->uuid, TASKER_UUID_BUFSIZE);
            return 1;
        }
    }
    return 0;
}

int tk_task_create(tasker_coordinator *c, const tasker_task_request *req, char *uuid_out)
{
    /* The request was checked by tasker_task_create. */
    size_t clen = req->context_json ? (req->context_len ? req->context_len
                                                        : strlen(req->context_json))
                                    : 0;

    tk_reg *r = NULL;
    pthread_mutex_lock(&c->lock);
    int rc = c->closed ? tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed")
                       : lookup_locked(c, req, &r, uuid_out);
    pthread_mutex_unlock(&c->lock);
    if (rc)
        return rc > 0 ? TASKER_OK : rc;

    /* Build the task outside the lock: other threads keep running steps. */
    const tasker_template *tm = r->tmpl;
    tk_task *t = tk_calloc(1, sizeof *t + (size_t)tm->n_steps * sizeof(tk_step));
    if (!t)
        return tk_enomem();
    t->cap_trans = (size_t)tm->n_steps * 4 + 8;
    t->trans = tk_malloc(t->cap_trans * sizeof *t->trans);
    if (req->context_json)
        t->context = tk_strndup(req->context_json, clen);
    if (req->idempotency_key)
        t->idem_key = tk_strdup(req->idempotency_key);
    if (!t->trans || (req->context_json && !t->context) ||
        (req->idempotency_key && !t->idem_key)) {
        tk_task_free(t);
        return tk_enomem();
    }
    t->context_len = clen;
    t->reg = r;
    t->coord = c;
    t->n_steps = tm->n_steps;
    t->priority = req->priority;
    t->state = TASKER_TASK_PENDING;
    int64_t now = tk_now_ns();
    tk_uuid_new_at(t->uuid_bytes, t->uuid, now);
    for (uint32_t i = 0; i < tm->n_steps; i++) {
        tk_step *s = &t->steps[i];
        s->task = t;
        s->idx = i;
        s->remaining = tm->steps[i].n_deps;
        s->budget = tm->steps[i].opts.max_attempts;
        tk_uuid_new_at(s->uuid_bytes, s->uuid, now);
    }
    t->created_at = now;
    tk_record(t, now, -1, 255, TASKER_TASK_PENDING, TK_R_CREATED, 0);

    pthread_mutex_lock(&c->lock);
    tk_task *other = NULL;
    if (c->closed) {
        rc = tk_err(TASKER_ECLOSED, TASKER_CATEGORY_STATE, NULL, "coordinator is closed");
    } else if (req->idempotency_key) {
        HASH_FIND(ihh, c->by_key, req->idempotency_key, strlen(req->idempotency_key), other);
        if (other && other->reg != r)
            rc = lookup_locked(c, req, &r, uuid_out); /* sets the EEXIST error */
        else if (other)
            memcpy(uuid_out, other->uuid, TASKER_UUID_BUFSIZE);
    }
    if (!rc && !other) {
        for (int qi = 0; qi < 2; qi++)
            if (!(t->bucket[qi] = bucket_get(c, qi, t->priority)))
                rc = tk_enomem();
    }
    if (!rc && !other) {
        tk_hash_oom = 0;
        HASH_ADD(hh, c->tasks, uuid_bytes, 16, t);
        if (!tk_hash_oom && t->idem_key) {
            HASH_ADD_KEYPTR(ihh, c->by_key, t->idem_key, strlen(t->idem_key), t);
            if (tk_hash_oom)
                HASH_DELETE(hh, c->tasks, t);
        }
        if (tk_hash_oom)
            rc = tk_enomem();
    }
    if (!rc && !other) {
        if (tk_obs_on(c))
            tk_obs_task_created(c, t, now);
        for (uint32_t i = 0; i < tm->n_roots; i++)
            tk_step_enqueue(c, &t->steps[tm->roots[i]], now, TK_R_DEPENDENCIES_MET);
        memcpy(uuid_out, t->uuid, TASKER_UUID_BUFSIZE);
        tk_notify(c);
        t = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (t)
        tk_task_free(t);
    return rc < 0 ? rc : TASKER_OK;
}
