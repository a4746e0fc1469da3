/* Structured JSON logs: an internal event subscription that writes one JSON
 * object per line to the configured sink, so logging never blocks steps. */
#include "obs/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/error.h"
#include "obs/events.h"
#include "run/engine.h"

typedef struct {
    FILE *f;
    int owned;
} sink;

static const char *level_of(uint32_t type)
{
    switch (type) {
    case TASKER_EVENT_TASK_FAILED:
    case TASKER_EVENT_STEP_DEAD_LETTERED:
        return "error";
    case TASKER_EVENT_STEP_FAILED:
    case TASKER_EVENT_STEP_RETRY_SCHEDULED:
    case TASKER_EVENT_CIRCUIT_CHANGED:
    case TASKER_EVENT_TASK_CANCELLED:
        return "warn";
    case TASKER_EVENT_TASK_CREATED:
    case TASKER_EVENT_TASK_COMPLETED:
        return "info";
    default:
        return "debug";
    }
}

static uint32_t mask_for(const char *level)
{
    uint32_t m = TASKER_EVENT_TASK_FAILED | TASKER_EVENT_STEP_DEAD_LETTERED;
    if (!strcmp(level, "error"))
        return m;
    m |= TASKER_EVENT_STEP_FAILED | TASKER_EVENT_STEP_RETRY_SCHEDULED |
         TASKER_EVENT_CIRCUIT_CHANGED | TASKER_EVENT_TASK_CANCELLED;
    if (!strcmp(level, "warn"))
        return m;
    m |= TASKER_EVENT_TASK_CREATED | TASKER_EVENT_TASK_COMPLETED;
    if (!strcmp(level, "info"))
        return m;
    return TASKER_EVENT_ALL;
}

static void set_nonempty(json_t *o, const char *k, const char *v)
{
    if (v && *v)
        json_object_set_new(o, k, json_string(v));
}

static void write_line(const tasker_event *e, void *ud)
{
    sink *s = ud;
    char at[TK_ISO_BUFSIZE];
    tk_iso8601(at, e->at_unix_ns);
    json_t *o = json_pack("{s:s, s:s, s:s}", "time", at, "level", level_of(e->type), "event",
                          tk_event_name(e->type));
    if (!o)
        return;
    set_nonempty(o, "task_uuid", e->task_uuid);
    set_nonempty(o, "step_uuid", e->step_uuid);
    set_nonempty(o, "namespace", e->ns);
    set_nonempty(o, "template", e->template_name);
    set_nonempty(o, "step", e->step_name);
    set_nonempty(o, "handler", e->handler);
    if (e->step_name && *e->step_name)
        json_object_set_new(o, "attempt", json_integer(e->attempt));
    set_nonempty(o, "circuit", e->circuit);
    set_nonempty(o, "circuit_state", e->circuit_state);
    set_nonempty(o, "error_class", e->error_class);
    set_nonempty(o, "error_message", e->error_message);
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (line) {
        fprintf(s->f, "%s\n", line);
        fflush(s->f);
        free(line);
    }
}

static void close_sink(void *ud)
{
    sink *s = ud;
    if (s->owned)
        fclose(s->f);
    tk_free(s);
}

int tk_log_open(tasker_coordinator *c)
{
    const char *level = tk_config_str(&c->cfg, TK_CFG_LOG_LEVEL);
    if (!strcmp(level, "off"))
        return TASKER_OK;
    const char *where = tk_config_str(&c->cfg, TK_CFG_LOG_SINK);
    sink *s = tk_calloc(1, sizeof *s);
    if (!s)
        return tk_enomem();
    if (!strcmp(where, "stderr"))
        s->f = stderr;
    else if (!strcmp(where, "stdout"))
        s->f = stdout;
    else if ((s->f = fopen(where, "a")))
        s->owned = 1;
    else {
        int err = errno;
        tk_free(s);
        return tk_err(TASKER_ECONFIG, TASKER_CATEGORY_CONFIG,
                      json_pack("{s:s, s:s, s:s}", "key", "log.sink", "value", where, "message",
                                strerror(err)),
                      "log.sink: cannot open '%s' for appending: %s", where, strerror(err));
    }
    tasker_subscription *sub;
    return tasker_subscribe(&sub, c, mask_for(level), 0, write_line, s, close_sink);
}
