#include "obs/breaker.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/error.h"
#include "obs/events.h"
#include "run/engine.h"

static const char *const state_names[] = {"closed", "open", "half_open"};
static const char *const mode_names[] = {"auto", "force_open", "force_closed"};

tk_breaker *tk_breaker_new(tasker_coordinator *c, const char *kind, const char *name)
{
    tk_breaker *b = tk_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    size_t n = strlen(kind) + strlen(name) + 2;
    b->window_len = (uint32_t)c->cfg.num[TK_CFG_BREAKER_WINDOW];
    b->name = tk_malloc(n);
    b->window = tk_calloc(b->window_len, 1);
    if (!b->name || !b->window) {
        tk_breaker_free(b);
        return NULL;
    }
    snprintf(b->name, n, "%s:%s", kind, name);
    if (strcmp(kind, "namespace") == 0)
        b->ns = b->name + strlen(kind) + 1;
    b->next_all = c->breakers;
    c->breakers = b;
    return b;
}

void tk_breaker_free(tk_breaker *b)
{
    if (!b)
        return;
    tk_free(b->name);
    tk_free(b->window);
    tk_free(b);
}

static void set_state(tasker_coordinator *c, tk_breaker *b, uint8_t to, int64_t mono_now)
{
    if (b->state == to)
        return;
    if (!mono_now)
        mono_now = tk_mono_ns();
    b->state = to;
    if (to == TASKER_CIRCUIT_OPEN) {
        b->open_until = mono_now + c->cfg.num[TK_CFG_BREAKER_OPEN_MS] * 1000000;
        b->opened_total++;
    }
    if (to != TASKER_CIRCUIT_HALF_OPEN) {
        b->half_open_inflight = 0;
        b->half_open_successes = 0;
    }
    if (to == TASKER_CIRCUIT_CLOSED) {
        b->consecutive_failures = 0;
        memset(b->window, 0, b->window_len);
        b->window_pos = b->window_count = b->window_failures = 0;
    }
    if (c->event_mask & TASKER_EVENT_CIRCUIT_CHANGED) {
        tk_evrec r = {.slot = {.type = TASKER_EVENT_CIRCUIT_CHANGED, .at = tk_now_ns(),
                               .reg = NULL, .step = -1, .circuit_state = to},
                      .side = {.circuit = b->name, .circuit_ns = b->ns}};
        for (struct tasker_subscription *s = c->subs; s; s = s->next)
            if (s->mask & TASKER_EVENT_CIRCUIT_CHANGED)
                tk_event_push(s, &r);
    }
    if (to != TASKER_CIRCUIT_OPEN)
        tk_breaker_unpark_all(c, b);
}

/* Open turns half-open once its open time is over. */
static void refresh(tasker_coordinator *c, tk_breaker *b, int64_t mono_now)
{
    if (b->mode == TASKER_CIRCUIT_AUTO && b->state == TASKER_CIRCUIT_OPEN &&
        mono_now >= b->open_until)
        set_state(c, b, TASKER_CIRCUIT_HALF_OPEN, mono_now);
}

int tk_breaker_allow(tasker_coordinator *c, tk_breaker *b, int64_t mono_now)
{
    if (b->mode == TASKER_CIRCUIT_FORCE_CLOSED)
        return 1;
    if (b->mode == TASKER_CIRCUIT_FORCE_OPEN)
        return 0;
    refresh(c, b, mono_now);
    if (b->state == TASKER_CIRCUIT_CLOSED)
        return 1;
    if (b->state == TASKER_CIRCUIT_HALF_OPEN &&
        b->half_open_inflight < (uint32_t)c->cfg.num[TK_CFG_BREAKER_HALF_OPEN_MAX]) {
        b->half_open_inflight++;
        return 1;
    }
    return 0;
}

void tk_breaker_result(tasker_coordinator *c, tk_breaker *b, int ok, int64_t mono_now)
{
    int64_t threshold = c->cfg.num[TK_CFG_BREAKER_FAILURE_THRESHOLD];
    int64_t rate = c->cfg.num[TK_CFG_BREAKER_FAILURE_RATE_PERCENT];
    if (b->window_count == b->window_len)
        b->window_failures -= b->window[b->window_pos];
    else
        b->window_count++;
    b->window[b->window_pos] = ok ? 0 : 1;
    b->window_failures += ok ? 0 : 1;
    if (++b->window_pos == b->window_len) /* not %: a division on every step */
        b->window_pos = 0;
    b->consecutive_failures = ok ? 0 : b->consecutive_failures + 1;
    if (b->mode != TASKER_CIRCUIT_AUTO)
        return;
    if (b->state == TASKER_CIRCUIT_HALF_OPEN) {
        if (b->half_open_inflight)
            b->half_open_inflight--;
        if (!ok)
            set_state(c, b, TASKER_CIRCUIT_OPEN, mono_now);
        else if (++b->half_open_successes >= (uint32_t)c->cfg.num[TK_CFG_BREAKER_SUCCESS_THRESHOLD])
            set_state(c, b, TASKER_CIRCUIT_CLOSED, mono_now);
        else
            tk_breaker_unpark_all(c, b); /* a trial slot is free: parked steps may try it */
        return;
    }
    if (b->state != TASKER_CIRCUIT_CLOSED || ok)
        return;
    int trip = threshold > 0 && b->consecutive_failures >= (uint64_t)threshold;
    if (!trip && rate > 0 && b->window_count == b->window_len)
        trip = (int64_t)b->window_failures * 100 >= rate * (int64_t)b->window_len;
    if (trip)
        set_state(c, b, TASKER_CIRCUIT_OPEN, mono_now);
}

int64_t tk_breaker_next_due(tasker_coordinator *c)
{
    int64_t due = 0;
    for (tk_breaker *b = c->breakers; b; b = b->next_all)
        if (b->state == TASKER_CIRCUIT_OPEN && b->mode == TASKER_CIRCUIT_AUTO && b->parked_head &&
            (!due || b->open_until < due))
            due = b->open_until;
    return due;
}

void tk_breaker_tick(tasker_coordinator *c, int64_t mono_now)
{
    for (tk_breaker *b = c->breakers; b; b = b->next_all)
        refresh(c, b, mono_now);
}

void tk_breaker_release(tasker_coordinator *c, tk_breaker *b)
{
    if (b->state == TASKER_CIRCUIT_HALF_OPEN && b->half_open_inflight) {
        b->half_open_inflight--;
        tk_breaker_unpark_all(c, b);
    }
}

void tk_breaker_metrics(tasker_coordinator *c, tk_sb *sb)
{
    for (tk_breaker *b = c->breakers; b; b = b->next_all) {
        char e[600];
        size_t j = 0;
        for (const char *p = b->name; *p && j + 2 < sizeof e; p++) {
            if (*p == '\\' || *p == '"')
                e[j++] = '\\';
            e[j++] = *p;
        }
        e[j] = '\0';
        tk_sb_printf(sb, "tasker_circuit_state{circuit=\"%s\"} %d\n", e, b->state);
    }
}

int tk_breaker_health(tasker_coordinator *c, json_t *circuits)
{
    int any_open = 0;
    for (tk_breaker *b = c->breakers; b; b = b->next_all) {
        if (b->state != TASKER_CIRCUIT_CLOSED)
            any_open = 1;
        json_object_set_new(circuits, b->name,
                            json_pack("{s:s, s:s, s:I}", "state", state_names[b->state], "mode",
                                      mode_names[b->mode], "opened_total",
                                      (json_int_t)b->opened_total));
    }
    return any_open;
}

static tk_breaker *find(tasker_coordinator *c, const char *name)
{
    for (tk_breaker *b = c->breakers; b; b = b->next_all)
        if (strcmp(b->name, name) == 0)
            return b;
    return NULL;
}

int tasker_circuit_get(tasker_circuit_state *state_out, tasker_coordinator *c, const char *name)
{
    if (!state_out || !c || !name)
        return tk_einval("tasker_circuit_get: arguments must not be NULL");
    pthread_mutex_lock(&c->lock);
    tk_breaker *b = find(c, name);
    if (b) {
        refresh(c, b, tk_mono_ns());
        *state_out = (tasker_circuit_state)b->state;
    }
    pthread_mutex_unlock(&c->lock);
    if (!b)
        return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s}", "circuit", name),
                      "no circuit '%s' (names are \"handler:NAME\" or \"namespace:NAME\")", name);
    return TASKER_OK;
}

int tasker_circuit_force(tasker_coordinator *c, const char *name, tasker_circuit_mode mode)
{
    if (!c || !name)
        return tk_einval("tasker_circuit_force: coordinator and circuit must not be NULL");
    if (mode != TASKER_CIRCUIT_AUTO && mode != TASKER_CIRCUIT_FORCE_OPEN &&
        mode != TASKER_CIRCUIT_FORCE_CLOSED)
        return tk_einval("tasker_circuit_force: mode %d is not AUTO, FORCE_OPEN or FORCE_CLOSED",
                         (int)mode);
    pthread_mutex_lock(&c->lock);
    tk_breaker *b = find(c, name);
    if (b) {
        int64_t now = tk_mono_ns();
        b->mode = TASKER_CIRCUIT_AUTO; /* so that set_state's bookkeeping runs */
        if (mode == TASKER_CIRCUIT_FORCE_OPEN)
            set_state(c, b, TASKER_CIRCUIT_OPEN, now);
        else if (mode == TASKER_CIRCUIT_FORCE_CLOSED)
            set_state(c, b, TASKER_CIRCUIT_CLOSED, now);
        b->mode = (uint8_t)mode;
        if (mode != TASKER_CIRCUIT_FORCE_OPEN)
            tk_breaker_unpark_all(c, b);
        tk_notify(c);
    }
    pthread_mutex_unlock(&c->lock);
    if (!b)
        return tk_err(TASKER_ENOTFOUND, TASKER_CATEGORY_ARGUMENT,
                      json_pack("{s:s}", "circuit", name),
                      "no circuit '%s' (names are \"handler:NAME\" or \"namespace:NAME\")", name);
    return TASKER_OK;
}
