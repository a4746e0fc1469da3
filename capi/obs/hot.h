/*
 * The per-step observability hot path of the memory store, inlined into
 * store/memory.c: metrics of the common transitions (step enqueued, started,
 * succeeded; task created, completed) and their events written straight
 * into each subscriber's buffer.  Everything rarer (failures, cancellation)
 * goes to the out-of-line hooks in obs/metrics.c.  Lock held for all.
 *
 * With metrics off and no subscriber the whole hook is one test of two
 * fields the caller already has in cache (tk_obs_on).
 */
#ifndef TASKER_OBS_HOT_H
#define TASKER_OBS_HOT_H

#include <string.h>

#include "obs/events.h"
#include "obs/metrics.h"
#include "run/engine.h"

static inline int tk_obs_on(const tasker_coordinator *c)
{
    return c->metrics_on | (c->event_mask != 0);
}

/* Fills a reserved slot with a task event (s NULL) or a step event, no
 * side entry: the one place that knows how a task or step goes into a slot. */
static TK_HOT_INLINE void tk_evslot_fill(tk_evslot *r, uint32_t type, const tk_task *t,
                                         const tk_step *s, int64_t now)
{
    r->type = type;
    r->attempt = s ? s->attempts : 0;
    r->at = now;
    r->reg = t->reg;
    r->step = s ? (int32_t)s->idx : -1;
    r->circuit_state = 0;
    r->has_side = 0;
    memcpy(r->task_uuid, t->uuid_bytes, 16);
    if (s)
        memcpy(r->step_uuid, s->uuid_bytes, 16);
}

/* A task event (s NULL) or step event without failure strings, to every
 * subscriber that wants it. */
static TK_HOT_INLINE void tk_obs_emit_plain(tasker_coordinator *c, uint32_t type,
                                            const tk_task *t, const tk_step *s, int64_t now)
{
    for (struct tasker_subscription *sub = c->subs; sub; sub = sub->next) {
        if (!(sub->mask & type))
            continue;
        size_t tail;
        tk_evslot *r = tk_event_slot(sub, &tail);
        if (!r)
            continue; /* full: counted as dropped */
        tk_evslot_fill(r, type, t, s, now);
        tk_event_commit(sub, tail);
    }
}

/* A step went from `from` to `to` (only call when tk_obs_on). */
static inline void tk_obs_step(tasker_coordinator *c, tk_step *s, uint8_t from, uint8_t to,
                               int64_t now, int reason)
{
    uint32_t ev;
    switch (to) {
    case TASKER_STEP_ENQUEUED:
        ev = TASKER_EVENT_STEP_ENQUEUED;
        break;
    case TASKER_STEP_IN_PROGRESS:
        ev = TASKER_EVENT_STEP_STARTED;
        if (c->metrics_on) {
            tk_handler_metrics *m = &s->task->reg->handlers[s->idx]->metrics;
            m->started++;
            tk_hist_add_inline(&m->queue_wait, now - s->enqueued_at);
        }
        break;
    case TASKER_STEP_COMPLETE:
        ev = TASKER_EVENT_STEP_SUCCEEDED;
        if (c->metrics_on) {
            tk_handler_metrics *m = &s->task->reg->handlers[s->idx]->metrics;
            m->succeeded++;
            tk_hist_add_inline(&m->duration, now - s->started_at);
        }
        break;
    default:
        tk_obs_step_slow(c, s, from, to, now, reason);
        return;
    }
    if (ev & c->event_mask)
        tk_obs_emit_plain(c, ev, s->task, s, now);
}

/* A task reached state `to` (only call when tk_obs_on). */
static inline void tk_obs_task(tasker_coordinator *c, tk_task *t, uint8_t to, int64_t now)
{
    if (to == TASKER_TASK_COMPLETE) {
        if (c->metrics_on) {
            tk_nsobj *ns = t->reg->nsobj;
            ns->completed++;
            tk_hist_add_inline(&ns->task_duration, now - t->created_at);
        }
        if (c->event_mask & TASKER_EVENT_TASK_COMPLETED)
            tk_obs_emit_plain(c, TASKER_EVENT_TASK_COMPLETED, t, NULL, now);
    } else {
        tk_obs_task_slow(c, t, to, now);
    }
}

static inline void tk_obs_task_created(tasker_coordinator *c, tk_task *t, int64_t now)
{
    if (c->metrics_on)
        t->reg->nsobj->created++;
    if (c->event_mask & TASKER_EVENT_TASK_CREATED)
        tk_obs_emit_plain(c, TASKER_EVENT_TASK_CREATED, t, NULL, now);
}

#endif
