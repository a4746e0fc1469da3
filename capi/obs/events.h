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

/* One buffered event: exactly one cache line, so writing an event touches
 * one line of the buffer.  Task and step events carry the UUIDs as bytes
 * (formatted on the delivery thread).  What the rare failure and circuit
 * events carry besides lives beside the buffer (tasker_subscription.side),
 * in the entry of the same index. */
typedef struct tk_evslot {
    uint32_t type;
    uint32_t attempt;
    int64_t at;
    const struct tk_reg *reg; /* NULL for circuit events */
    int32_t step;             /* template index, -1 for task events */
    uint8_t circuit_state;    /* circuit events */
    uint8_t has_side;         /* side[index] holds this event's strings */
    uint16_t unused;
    uint8_t task_uuid[16];
    uint8_t step_uuid[16];
} tk_evslot;

_Static_assert(sizeof(tk_evslot) == 64, "an event slot is one cache line");

typedef struct tk_evside {
    char *err_class, *err_msg; /* failure events: owned while has_side */
    const char *circuit;       /* circuit events (live as long as the coordinator) */
    const char *circuit_ns;
} tk_evside;

/* An event as a producer outside the hot path describes it (tk_event_push):
 * the postgres store, circuit changes.  slot.has_side is worked out by the
 * push; side.err_class and side.err_msg are owned by the record. */
typedef struct tk_evrec {
    tk_evslot slot;
    tk_evside side;
} tk_evrec;

struct tasker_subscription {
    struct tasker_coordinator *coord;
    struct tasker_subscription *next; /* coordinator's list, under its lock */
    uint32_t mask;
    tasker_event_fn fn;
    void *userdata;
    void (*free_userdata)(void *);
    tk_evslot *ring; /* cap slots, 64-byte aligned inside ring_mem */
    void *ring_mem;
    tk_evside *side; /* cap entries, used by failure and circuit events only */
    void *dstate;    /* the delivery thread's own state (events.c) */
    size_t cap;      /* a power of two */
    /* The padding keeps the groups below on different cache lines, so that
     * the consumer's per-event stores (head, delivered) never take the line
     * the producer reads on every event (sleeping) or writes (tail).
     * (Padding rather than _Alignas: the allocator only promises malloc's
     * alignment.) */
    char pad0[64];
    /* Producer side (written under the coordinator's lock). */
    atomic_size_t tail;
    size_t head_seen; /* the producer's last look at head */
    /* Worked out from head_seen whenever it changes (tk_event_seen), so
     * that each event tests its position against one field: the first
     * position that would overwrite an undelivered event, and the first at
     * which a napping delivery thread may have a quarter of the buffer
     * waiting. */
    size_t room_end, nap_end;
    size_t slot_mask; /* cap - 1 */
    atomic_uint_fast64_t dropped;
    char pad1[64];
    /* Written by the consumer only when it naps, sleeps or wakes; read by
     * the producer after every event. */
    atomic_int sleeping; /* TK_SUB_AWAKE, TK_SUB_NAPPING or TK_SUB_ASLEEP */
    char pad2[64];
    /* Consumer side. */
    atomic_size_t head;
    atomic_uint_fast64_t delivered;
    /* For tests: signals the producer sent, and times the consumer went to
     * nap or sleep (each of which may take at most one signal). */
    atomic_uint_fast64_t wakeups, rests;
    char pad3[64];
    int stop;
    pthread_mutex_t m;
    pthread_cond_t cv;
    pthread_t thread;
};

/* The delivery thread naps (a short timed wait the producer need not end)
 * while events keep coming, and sleeps (until signalled) once idle.  The
 * producer signals a sleeping thread, and a napping one only when its buffer
 * is a quarter full or when the producer runs out of work (tk_events_flush);
 * either way it first moves the state back to TK_SUB_AWAKE, so one nap or
 * sleep gets at most one signal. */
enum { TK_SUB_AWAKE = 0, TK_SUB_NAPPING = 1, TK_SUB_ASLEEP = 2 };

#if defined(__GNUC__)
#define TK_HOT_INLINE inline __attribute__((always_inline))
#else
#define TK_HOT_INLINE inline
#endif

/* Producer side: records the producer's look at the consumer's position. */
static TK_HOT_INLINE void tk_event_seen(struct tasker_subscription *sub, size_t head)
{
    sub->head_seen = head;
    sub->room_end = head + sub->cap;
    sub->nap_end = head + sub->cap / 4;
}

/* Producer side, with the coordinator's lock held: the slot for the next
 * event, or NULL when the buffer is full (the drop is counted).  `*tail`
 * receives the position to pass to tk_event_commit once the slot is filled
 * (and, for a failure or circuit event, sub->side at the same index). */
static TK_HOT_INLINE tk_evslot *tk_event_slot(struct tasker_subscription *sub, size_t *tail_out)
{
    size_t tail = atomic_load_explicit(&sub->tail, memory_order_relaxed);
    if (tail >= sub->room_end) {
        tk_event_seen(sub, atomic_load_explicit(&sub->head, memory_order_acquire));
        if (tail >= sub->room_end) {
            atomic_fetch_add_explicit(&sub->dropped, 1, memory_order_relaxed);
            return NULL;
        }
    }
    *tail_out = tail;
    return &sub->ring[tail & sub->slot_mask];
}

void tk_event_wake(struct tasker_subscription *sub, int sleeping, size_t tail);

/* Publishes the slot tk_event_slot() gave (at `tail`) and wakes the delivery
 * thread if it must be woken. */
static TK_HOT_INLINE void tk_event_commit(struct tasker_subscription *sub, size_t tail)
{
    tail++;
    /* Release/relaxed rather than a full fence per event: a wake-up missed in
     * the race with a thread going to sleep costs at most its SLEEP_MS. */
    atomic_store_explicit(&sub->tail, tail, memory_order_release);
    int sl = atomic_load_explicit(&sub->sleeping, memory_order_relaxed);
    if (sl == TK_SUB_AWAKE)
        return;
    /* A napping thread wakes by itself; the slow path looks closer only once
     * the buffer may be a quarter full. */
    if (sl == TK_SUB_NAPPING && tail < sub->nap_end)
        return;
    tk_event_wake(sub, sl, tail);
}

/* A producer is about to go idle (a worker thread with nothing to run, a
 * poll-mode claim that found nothing): wakes every resting delivery thread
 * that has events waiting, so the last events of a burst are delivered now
 * rather than when its nap ends.  Lock held. */
void tk_events_flush(struct tasker_coordinator *c);

/* Producer side: called with the coordinator's lock held.  Takes the
 * record's strings; frees them if the event is dropped. */
void tk_event_push(struct tasker_subscription *sub, const tk_evrec *ev);

/* The text form of a UUID (what tk_uuid_format writes), faster. */
void tk_event_uuid_text(const uint8_t b[16], char out[TASKER_UUID_BUFSIZE]);

/* Name of one event type bit ("step_failed"). */
const char *tk_event_name(uint32_t type);

/* Stops and frees every subscription left (coordinator close). */
void tk_events_close_all(struct tasker_coordinator *c);

#endif
