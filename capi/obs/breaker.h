/* Circuit breakers: closed -> open -> half-open -> closed, around each
 * handler and each namespace's queue operations.  All calls with the
 * coordinator's lock held. */
#ifndef TASKER_OBS_BREAKER_H
#define TASKER_OBS_BREAKER_H

#include <jansson.h>
#include <stdint.h>

#include "core/strbuf.h"
#include "tasker.h"

struct tk_step;

typedef struct tk_breaker {
    struct tk_breaker *next_all; /* coordinator's list */
    char *name;                  /* "handler:NAME" or "namespace:NAME" */
    const char *ns;              /* namespace breakers: the namespace */
    uint8_t state;               /* tasker_circuit_state */
    uint8_t mode;                /* tasker_circuit_mode */
    uint32_t consecutive_failures;
    uint32_t half_open_inflight, half_open_successes;
    int64_t open_until;          /* monotonic ns */
    uint8_t *window;             /* last outcomes (1 = failure), breaker.window long */
    uint32_t window_len, window_pos, window_count, window_failures;
    uint64_t opened_total;
    struct tk_step *parked_head, *parked_tail; /* steps held back while open */
} tk_breaker;

/* Makes a breaker and links it into the coordinator (lock held). */
tk_breaker *tk_breaker_new(struct tasker_coordinator *c, const char *kind, const char *name);
void tk_breaker_free(tk_breaker *b);

/* May a call pass now?  Moves open -> half-open when the open time is over. */
int tk_breaker_allow(struct tasker_coordinator *c, tk_breaker *b, int64_t mono_now);
/* Records the outcome of a call that was allowed (`mono_now` 0: read the
 * clock only if the circuit changes state). */
void tk_breaker_result(struct tasker_coordinator *c, tk_breaker *b, int ok, int64_t mono_now);
/* tk_breaker_result with the clock left unread, and inline for the common
 * case: a success while the circuit is closed only moves the window. */
static inline void tk_breaker_outcome(struct tasker_coordinator *c, tk_breaker *b, int ok)
{
    if (ok && b->state == TASKER_CIRCUIT_CLOSED && b->mode == TASKER_CIRCUIT_AUTO) {
        if (b->window_count == b->window_len)
            b->window_failures -= b->window[b->window_pos];
        else
            b->window_count++;
        b->window[b->window_pos] = 0;
        if (++b->window_pos == b->window_len)
            b->window_pos = 0;
        b->consecutive_failures = 0;
        return;
    }
    tk_breaker_result(c, b, ok, 0);
}
/* A call that was allowed ended with no outcome (cancelled, released). */
void tk_breaker_release(struct tasker_coordinator *c, tk_breaker *b);
/* Earliest monotonic time at which an open breaker turns half-open; 0 if none. */
int64_t tk_breaker_next_due(struct tasker_coordinator *c);
/* Turns due open breakers half-open (and lets their parked steps go). */
void tk_breaker_tick(struct tasker_coordinator *c, int64_t mono_now);

void tk_breaker_metrics(struct tasker_coordinator *c, tk_sb *b);
/* Adds {"name": {"state", "mode", "opened_total"}} entries; returns 1 if any is open. */
int tk_breaker_health(struct tasker_coordinator *c, json_t *circuits);

/* Parked steps (store/memory.c provides the queue side). */
void tk_breaker_park(tk_breaker *b, struct tk_step *s);
void tk_breaker_unpark_all(struct tasker_coordinator *c, tk_breaker *b);
void tk_breaker_unlink(tk_breaker *b, struct tk_step *s);

#endif
