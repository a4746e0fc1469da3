/* Event subscriptions: a ring buffer per subscriber, filled under the
 * coordinator's lock (so there is one producer at a time) and drained by the
 * subscription's own thread. */
#ifndef TASKER_OBS_EVENTS_H
#define TASKER_OBS_EVENTS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "tasker.h"

struct tk_reg;

typedef struct tk_evrec {
    uint32_t type;
    uint32_t attempt;
    int64_t at;
    const struct tk_reg *reg; /* NULL for circuit events */
    int32_t step;             /* template index, -1 for task events */
    uint8_t task_uuid[16];
    uint8_t step_uuid[16];
    const char *circuit;      /* circuit events */
    const char *circuit_ns;
    uint8_t circuit_state;
    char *err_class, *err_msg; /* failure events: owned by the record */
} tk_evrec;

struct tasker_subscription {
    struct tasker_coordinator *coord;
    struct tasker_subscription *next; /* coordinator's list, under its lock */
    uint32_t mask;
    tasker_event_fn fn;
    void *userdata;
    void (*free_userdata)(void *);
    tk_evrec *ring;
    size_t cap; /* a power of two */
    /* Producer side (written under the coordinator's lock).  The padding keeps
     * the producer's and the consumer's counters on different cache lines. */
    atomic_size_t tail;
    size_t head_seen; /* the producer's last look at head */
    char pad1[64];
    /* Consumer side. */
    atomic_size_t head;
    atomic_int sleeping; /* TK_SUB_AWAKE, TK_SUB_NAPPING or TK_SUB_ASLEEP */
    char pad2[64];
    atomic_uint_fast64_t dropped, delivered;
    int stop;
    pthread_mutex_t m;
    pthread_cond_t cv;
    pthread_t thread;
};

/* The delivery thread naps (a short timed wait the producer need not end)
 * while events keep coming, and sleeps (until signalled) once idle. */
enum { TK_SUB_AWAKE = 0, TK_SUB_NAPPING = 1, TK_SUB_ASLEEP = 2 };

/* Producer side: called with the coordinator's lock held.  Takes the
 * record's strings; frees them if the event is dropped. */
void tk_event_push(struct tasker_subscription *sub, const tk_evrec *ev);

/* Name of one event type bit ("step_failed"). */
const char *tk_event_name(uint32_t type);

/* Stops and frees every subscription left (coordinator close). */
void tk_events_close_all(struct tasker_coordinator *c);

#endif
