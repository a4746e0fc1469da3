/* The operator's status view: tasks by state, recent failures, dead letters. */
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"
#include "obs/breaker.h"
#include "obs/status.h"
#include "run/engine.h"

void tk_status_record_failure(tasker_coordinator *c, const tk_step *s, const tk_failure_rec *f)
{
    tk_recent_failure *r = &c->recent[c->recent_pos];
    tk_free(r->error_class);
    tk_free(r->message);
    memset(r, 0, sizeof *r);
    r->error_class = tk_strdup(f->error_class);
    r->message = tk_strndup(f->message, strnlen(f->message, 1024));
    r->at = f->at;
    r->attempt = f->attempt;
    r->reg = s->task->reg;
    r->step = s->idx;
    memcpy(r->task_uuid, s->task->uuid, TASKER_UUID_BUFSIZE);
    c->recent_pos = (c->recent_pos + 1) % TK_RECENT_FAILURES;
    if (c->recent_n < TK_RECENT_FAILURES)
        c->recent_n++;
}

void tk_status_free(tasker_coordinator *c)
{
    for (size_t i = 0; i < TK_RECENT_FAILURES; i++) {
        tk_free(c->recent[i].error_class);
        tk_free(c->recent[i].message);
    }
}

static json_t *iso(int64_t ns)
{
    char b[TK_ISO_BUFSIZE];
    tk_iso8601(b, ns);
    return json_string(b);
}

int tasker_status_json(char **json_out, tasker_coordinator *c)
{
    if (!json_out || !c)
        return tk_einval("tasker_status_json: json_out and coordinator must not be NULL");
    *json_out = NULL;
    if (c->pg) /* the postgres store reads it from the database */
        return tk_pg_status_json(c->pg, json_out);
    json_t *tasks = json_object(), *recent = json_array(), *dead = json_array(),
           *circuits = json_object();
    pthread_mutex_lock(&c->lock);
    for (tk_task *t = c->tasks; t; t = t->hh.next) {
        const char *ns = t->reg->tmpl->ns;
        json_t *per = json_object_get(tasks, ns);
        if (!per) {
            per = json_object();
            json_object_set_new(tasks, ns, per);
        }
        const char *st = tasker_task_state_name((tasker_task_state)t->state);
        json_object_set_new(per, st, json_integer(json_integer_value(json_object_get(per, st)) + 1));
        for (uint32_t i = 0; i < t->n_steps && json_array_size(dead) < 100; i++) {
            const tk_step *s = &t->steps[i];
            if (s->state != TASKER_STEP_ERROR)
                continue;
            const tk_failure_rec *f = s->failures_tail;
            json_array_append_new(
                dead, json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:s}", "task_uuid", t->uuid,
                                "namespace", ns, "template", t->reg->tmpl->name, "step",
                                t->reg->tmpl->steps[i].name, "attempts", s->attempts, "class",
                                f ? f->error_class : "", "message", f ? f->message : ""));
        }
    }
    for (size_t k = 0; k < c->recent_n; k++) {
        size_t i = (c->recent_pos + TK_RECENT_FAILURES - 1 - k) % TK_RECENT_FAILURES;
        const tk_recent_failure *r = &c->recent[i];
        json_array_append_new(
            recent, json_pack("{s:o, s:s, s:s, s:s, s:s, s:i, s:s, s:s}", "at", iso(r->at),
                              "task_uuid", r->task_uuid, "namespace", r->reg->tmpl->ns,
                              "template", r->reg->tmpl->name, "step",
                              r->reg->tmpl->steps[r->step].name, "attempt", r->attempt, "class",
                              r->error_class ? r->error_class : "", "message",
                              r->message ? r->message : ""));
    }
    tk_breaker_health(c, circuits);
    pthread_mutex_unlock(&c->lock);
    json_t *root = json_pack("{s:o, s:o, s:o, s:o}", "tasks", tasks, "recent_failures", recent,
                             "dead_letters", dead, "circuits", circuits);
    if (!root)
        return tk_enomem();
    *json_out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return *json_out ? TASKER_OK : tk_enomem();
}
