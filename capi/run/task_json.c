/* tasker_task_get's JSON: the task, its steps and the transition history. */
#include <jansson.h>
#include <string.h>

#include "core/clock.h"
#include "core/states.h"
#include "run/engine.h"

static json_t *iso_or_null(int64_t ns)
{
    if (!ns)
        return json_null();
    char buf[TK_ISO_BUFSIZE];
    tk_iso8601(buf, ns);
    return json_string(buf);
}

static json_t *ms_between(int64_t a, int64_t b)
{
    return a && b && b >= a ? json_real((double)(b - a) / 1e6) : json_null();
}

/* Parses stored JSON text; it was validated when stored. */
static json_t *raw(const char *text, size_t len)
{
    if (!text)
        return json_null();
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    return j ? j : json_null();
}

static json_t *step_json(const tk_task *t, const tk_step *s)
{
    const tk_tstep *ts = &t->reg->tmpl->steps[s->idx];
    json_t *deps = json_array();
    for (uint32_t d = 0; d < ts->n_deps; d++)
        json_array_append_new(deps, json_string(ts->deps[d]));
    json_t *errors = json_array();
    for (const tk_failure_rec *f = s->failures; f; f = f->next) {
        json_t *ctx = f->context ? raw(f->context, strlen(f->context)) : json_null();
        json_array_append_new(errors, json_pack("{s:i, s:s, s:s, s:b, s:o, s:o}", "attempt",
                                                f->attempt, "class", f->error_class, "message",
                                                f->message, "retryable", f->retryable, "context",
                                                ctx, "at", iso_or_null(f->at)));
    }
    static const char *const kinds[] = {"none", "json", "pointer"};
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o}",
                     "name", ts->name, "uuid", s->uuid, "handler", ts->handler, "state",
                     tasker_step_state_name((tasker_step_state)s->state), "attempts", s->attempts,
                     "max_attempts", s->budget, "depends_on", deps, "result",
                     s->result_kind == TK_RESULT_JSON ? raw(s->result, s->result_len)
                                                      : json_null(),
                     "result_kind", kinds[s->result_kind], "errors", errors, "enqueued_at",
                     iso_or_null(s->enqueued_at), "started_at", iso_or_null(s->started_at),
                     "finished_at", iso_or_null(s->finished_at), "duration_ms",
                     ms_between(s->started_at, s->finished_at));
}

char *tk_task_json(const tk_task *t)
{
    const tasker_template *tm = t->reg->tmpl;
    json_t *steps = json_array();
    for (uint32_t i = 0; i < t->n_steps; i++)
        json_array_append_new(steps, step_json(t, &t->steps[i]));
    json_t *trans = json_array();
    for (size_t i = 0; i < t->n_trans; i++) {
        const tk_transition *tr = &t->trans[i];
        const char *from = tr->step < 0 ? tasker_task_state_name((tasker_task_state)tr->from)
                                        : tasker_step_state_name((tasker_step_state)tr->from);
        const char *to = tr->step < 0 ? tasker_task_state_name((tasker_task_state)tr->to)
                                      : tasker_step_state_name((tasker_step_state)tr->to);
        json_array_append_new(
            trans, json_pack("{s:o, s:o, s:s?, s:s?, s:i, s:s}", "at", iso_or_null(tr->at), "step",
                             tr->step < 0 ? json_null() : json_string(tm->steps[tr->step].name),
                             "from", from, "to", to, "attempt", tr->attempt, "reason",
                             tk_reason_name((tk_reason)tr->reason)));
    }
    json_t *ctx = t->context ? raw(t->context, t->context_len) : json_object();
    json_t *root = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:i, s:s?, s:o, s:o, s:o, s:o, s:o, s:o}", "uuid", t->uuid,
        "namespace", tm->ns, "name", tm->name, "version", tm->version, "state",
        tasker_task_state_name((tasker_task_state)t->state), "priority", t->priority,
        "idempotency_key", t->idem_key, "context", ctx, "created_at", iso_or_null(t->created_at),
        "finished_at", iso_or_null(t->finished_at), "duration_ms",
        ms_between(t->created_at, t->finished_at), "steps", steps, "transitions", trans);
    if (!root)
        return NULL;
    char *out = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(root);
    return out;
}
