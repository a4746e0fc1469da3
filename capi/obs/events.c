#include "obs/events.h"

#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/alloc.h"
#include "core/error.h"
#include "core/uuid.h"
#include "run/engine.h"

static const char *const circuit_names[] = {"closed", "open", "half_open"};

void tk_event_push(struct tasker_subscription *sub, const tk_evrec *ev)
{
    size_t tail;
    tk_evslot *r = tk_event_slot(sub, &tail);
    if (!r) {
        tk_free(ev->side.err_class);
        tk_free(ev->side.err_msg);
        return;
    }
    *r = ev->slot;
    r->has_side = ev->side.err_class || ev->side.err_msg || !ev->slot.reg;
    if (r->has_side)
        sub->side[tail & sub->slot_mask] = ev->side;
    tk_event_commit(sub, tail);
}

/* Moves a resting delivery thread (state `sleeping`, not AWAKE) to AWAKE
 * and signals it; nothing if its state changed meanwhile.  Moving the state
 * first means one nap or sleep gets at most one signal. */
static void wake(struct tasker_subscription *sub, int sleeping)
{
    if (!atomic_compare_exchange_strong_explicit(&sub->sleeping, &sleeping, TK_SUB_AWAKE,
                                                 memory_order_relaxed, memory_order_relaxed))
        return; /* it woke meanwhile */
    atomic_fetch_add_explicit(&sub->wakeups, 1, memory_order_relaxed);
    pthread_mutex_lock(&sub->m);
    pthread_cond_signal(&sub->cv);
    pthread_mutex_unlock(&sub->m);
}

/* The slow path of tk_event_commit: the delivery thread is not awake.  A
 * sleeping thread is woken; a napping one wakes by itself within NAP_MS, so
 * it is woken early only when the buffer is filling up.  head_seen may be
 * far behind (it is refreshed only when the buffer looks full), so the fill
 * is measured against a fresh head before deciding. */
void tk_event_wake(struct tasker_subscription *sub, int sleeping, size_t tail)
{
    if (sleeping == TK_SUB_NAPPING) {
        if (tail < sub->nap_end)
            return;
        tk_event_seen(sub, atomic_load_explicit(&sub->head, memory_order_acquire));
        if (tail < sub->nap_end)
            return;
    }
    wake(sub, sleeping);
}

void tk_events_flush(tasker_coordinator *c)
{
    for (struct tasker_subscription *sub = c->subs; sub; sub = sub->next) {
        int sl = atomic_load_explicit(&sub->sleeping, memory_order_relaxed);
        if (sl == TK_SUB_AWAKE)
            continue;
        size_t tail = atomic_load_explicit(&sub->tail, memory_order_relaxed);
        tk_event_seen(sub, atomic_load_explicit(&sub->head, memory_order_acquire));
        if (sub->head_seen != tail)
            wake(sub, sl);
    }
}

#if defined(__SSE2__)
/* The 32 hex digits of a UUID at once: split each byte into its two nibbles,
 * interleave them, and turn 0..15 into '0'..'9', 'a'..'f' sixteen at a time.
 * This runs for two UUIDs of nearly every event, on the delivery thread. */
void tk_event_uuid_text(const uint8_t b[16], char out[TASKER_UUID_BUFSIZE])
{
    const __m128i low4 = _mm_set1_epi8(0x0f), nine = _mm_set1_epi8(9);
    const __m128i zero = _mm_set1_epi8('0'), gap = _mm_set1_epi8('a' - '0' - 10);
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)b);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4), lo = _mm_and_si128(v, low4);
    __m128i d0 = _mm_unpacklo_epi8(hi, lo), d1 = _mm_unpackhi_epi8(hi, lo);
    d0 = _mm_add_epi8(_mm_add_epi8(d0, zero), _mm_and_si128(_mm_cmpgt_epi8(d0, nine), gap));
    d1 = _mm_add_epi8(_mm_add_epi8(d1, zero), _mm_and_si128(_mm_cmpgt_epi8(d1, nine), gap));
    char hex[32];
    _mm_storeu_si128((__m128i *)(void *)hex, d0);
    _mm_storeu_si128((__m128i *)(void *)(hex + 16), d1);
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
}
#else
void tk_event_uuid_text(const uint8_t b[16], char out[TASKER_UUID_BUFSIZE])
{
    tk_uuid_format(b, out);
}
#endif

/* What the delivery thread keeps from one event to the next: the event it
 * hands out (only the fields that change are written per event), the
 * registration whose names it holds, and the text of recent task UUIDs.
 *
 * Runs of events of one task (a step succeeds and its dependents are
 * enqueued) find its text in `last`.  Beyond those, a worker's claims
 * interleave the steps of hundreds of tasks, so the task of an event is
 * often not the last one's but is nearly always one of the last few
 * hundred: the texts are kept in a direct-mapped table indexed by the
 * UUID's 12-bit counter (core/uuid.c), which differs between the tasks made
 * in one millisecond.  Each entry also keeps a step text that equals the
 * task's but for the four digits of the counter (digits 14-17), so the step
 * of a task whose UUIDs share all else (core/uuid.c makes them so) needs
 * only those rewritten. */
#define TEXTS 1024

typedef struct {
    uint64_t k0, k1; /* the UUID's bytes, as two native words; k0 0: empty */
    char text[TASKER_UUID_BUFSIZE];
    char step_text[TASKER_UUID_BUFSIZE];
} task_text;

typedef struct {
    tasker_event ev;
    int rare_set;             /* ev carries failure or circuit strings to clear */
    const struct tk_reg *reg; /* whose names ev->ns and ev->template_name hold */
    task_text *last;          /* the last event's task */
    char other_step[TASKER_UUID_BUFSIZE]; /* a step text not derived from its task's */
    task_text texts[TEXTS];
} dstate;

static void dstate_init(dstate *d)
{
    memset(d, 0, sizeof *d);
    d->ev = (tasker_event){.version = TASKER_EVENT_VERSION, .task_uuid = "", .step_uuid = "",
                           .ns = "", .template_name = "", .step_name = "", .handler = "",
                           .circuit = "", .circuit_state = "", .error_class = "",
                           .error_message = ""};
    d->last = &d->texts[0];
}

/* The bits of the first 8 bytes of a UUID, loaded as a native word, that
 * hold bytes 6 and 7 (the version nibble and the counter). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SHARED_BUT_COUNTER 0x000000000000ffffull
#else
#define SHARED_BUT_COUNTER 0xffff000000000000ull
#endif

/* The text of the task UUID `b` (k0, k1 its two words), from the table or
 * made and kept there. */
static task_text *task_text_of(dstate *d, const uint8_t *b, uint64_t k0, uint64_t k1)
{
    task_text *tt = &d->texts[((size_t)(b[6] & 0x0f) << 8 | b[7]) & (TEXTS - 1)];
    if (tt->k0 != k0 || tt->k1 != k1 || !k0) {
        tt->k0 = k0;
        tt->k1 = k1;
        tk_event_uuid_text(b, tt->text);
        memcpy(tt->step_text, tt->text, TASKER_UUID_BUFSIZE);
    }
    d->last = tt;
    return tt;
}

/* The rare parts of an event: strings of a failure to set, those of the
 * last event to clear, and circuit events whole (the only ones without a
 * registration; they always have a side entry).  Returns 1 when the event
 * is complete (a circuit event). */
static int deliver_rare(const tk_evslot *r, const tk_evside *e, dstate *d)
{
    tasker_event *ev = &d->ev;
    if (d->rare_set) {
        ev->circuit = ev->circuit_state = ev->error_class = ev->error_message = "";
        d->rare_set = 0;
    }
    if (!r->has_side)
        return 0;
    d->rare_set = 1;
    if (r->reg) {
        ev->error_class = e->err_class ? e->err_class : "";
        ev->error_message = e->err_msg ? e->err_msg : "";
        return 0;
    }
    ev->task_uuid = ev->step_uuid = ev->template_name = ev->step_name = ev->handler = "";
    d->reg = NULL; /* ns and template_name no longer hold a registration's */
    ev->circuit = e->circuit ? e->circuit : "";
    ev->ns = e->circuit_ns ? e->circuit_ns : "";
    ev->circuit_state = circuit_names[r->circuit_state % 3];
    return 1;
}

static inline void deliver(struct tasker_subscription *sub, const tk_evslot *r,
                           const tk_evside *e, dstate *d)
{
    tasker_event *ev = &d->ev;
    ev->type = r->type;
    ev->at_unix_ns = r->at;
    ev->attempt = r->attempt;
    if ((d->rare_set | r->has_side) && deliver_rare(r, e, d)) {
        sub->fn(ev, sub->userdata);
        return;
    }
    const tasker_template *t = r->reg->tmpl;
    if (r->reg != d->reg) {
        d->reg = r->reg;
        ev->ns = t->ns;
        ev->template_name = t->name;
    }
    uint64_t k0, k1;
    memcpy(&k0, r->task_uuid, 8);
    memcpy(&k1, r->task_uuid + 8, 8);
    task_text *tt = d->last;
    if (tt->k0 != k0 || tt->k1 != k1)
        tt = task_text_of(d, r->task_uuid, k0, k1);
    ev->task_uuid = tt->text;
    if (r->step >= 0) {
        uint64_t s0, s1;
        memcpy(&s0, r->step_uuid, 8);
        memcpy(&s1, r->step_uuid + 8, 8);
        /* A task's steps get their UUIDs in the same millisecond on the
         * same thread as the task (core/uuid.c): all but bytes 6-7 (the
         * counter) are then the task's, and so is the text but for the
         * four digits of those two bytes. */
        if (s1 == k1 && ((s0 ^ k0) & ~SHARED_BUT_COUNTER) == 0) {
            memcpy(tt->step_text + 14, tk_hex_pairs + 2 * r->step_uuid[6], 2);
            memcpy(tt->step_text + 16, tk_hex_pairs + 2 * r->step_uuid[7], 2);
            ev->step_uuid = tt->step_text;
        } else {
            tk_event_uuid_text(r->step_uuid, d->other_step);
            ev->step_uuid = d->other_step;
        }
        ev->step_name = t->steps[r->step].name;
        ev->handler = t->steps[r->step].handler;
    } else {
        ev->step_uuid = ev->step_name = ev->handler = "";
    }
    sub->fn(ev, sub->userdata);
}

#define NAP_MS 2
#define PUBLISH 16
#define NAPS_BEFORE_SLEEP 50
#define SLEEP_MS 200

static void *sub_main(void *arg)
{
    struct tasker_subscription *sub = arg;
    int naps = 0;
    uint64_t delivered = 0;
    dstate *d = sub->dstate;
    dstate_init(d);
    for (;;) {
        size_t head = atomic_load_explicit(&sub->head, memory_order_relaxed);
        size_t tail = atomic_load_explicit(&sub->tail, memory_order_acquire);
        if (head != tail) {
            /* In locals: the callback is opaque, so fields read through sub
             * would be loaded again after every call. */
            const tk_evslot *ring = sub->ring;
            const size_t first = head;
            tk_evside *side = sub->side;
            size_t mask = sub->cap - 1;
            /* head and delivered are published every PUBLISH events and
             * after the last one of a run (every event in a buffer too small
             * for that to leave the producer room). */
            size_t publish = sub->cap >= 8 * PUBLISH ? PUBLISH - 1 : 0;
            for (; head != tail;) {
                size_t i = head & mask;
                const tk_evslot *rec = &ring[i];
                /* Delivered from its slot, which is free once the callback
                 * returned.  head's cache line is the consumer's own: the
                 * producer reads it only when the buffer looks full. */
                deliver(sub, rec, &side[i], d);
                if (rec->has_side) {
                    tk_free(side[i].err_class);
                    tk_free(side[i].err_msg);
                }
                if ((head & publish) == publish || head + 1 == tail) {
                    atomic_store_explicit(&sub->head, head + 1, memory_order_release);
                    /* Only this thread writes it: a store, not a locked add. */
                    atomic_store_explicit(&sub->delivered, delivered + (head + 1 - first),
                                          memory_order_relaxed);
                }
                head++;
            }
            delivered += head - first;
            naps = 0;
            continue;
        }
        pthread_mutex_lock(&sub->m);
        int stop = sub->stop;
        if (!stop) {
            int nap = naps < NAPS_BEFORE_SLEEP;
            atomic_fetch_add_explicit(&sub->rests, 1, memory_order_relaxed);
            atomic_store_explicit(&sub->sleeping, nap ? TK_SUB_NAPPING : TK_SUB_ASLEEP,
                                  memory_order_seq_cst);
            /* An event published before the state change was seen by a
             * producer that did not know it had to wake us: look again. */
            if (atomic_load_explicit(&sub->tail, memory_order_seq_cst) == head && !sub->stop) {
                long ms = nap ? NAP_MS : SLEEP_MS;
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += ms / 1000;
                ts.tv_nsec += (ms % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&sub->cv, &sub->m, &ts);
                if (nap)
                    naps++;
            }
            atomic_store_explicit(&sub->sleeping, TK_SUB_AWAKE, memory_order_relaxed);
        }
        pthread_mutex_unlock(&sub->m);
        if (stop && atomic_load_explicit(&sub->tail, memory_order_acquire) == head)
            break;
    }
    return NULL;
}

int tasker_subscribe(tasker_subscription **out, tasker_coordinator *c, uint32_t mask,
                     size_t buffer_events, tasker_event_fn fn, void *userdata,
                     void (*free_userdata)(void *))
{
    int rc = TASKER_OK;
    struct tasker_subscription *sub = NULL;
    if (out)
        *out = NULL;
    if (!out || !c || !fn) {
        rc = tk_einval("tasker_subscribe: out, coordinator and fn must not be NULL");
        goto fail;
    }
    if (mask == 0 || (mask & ~TASKER_EVENT_ALL)) {
        rc = tk_einval("tasker_subscribe: mask 0x%x selects no known event (allowed bits 0x%x)",
                       mask, TASKER_EVENT_ALL);
        goto fail;
    }
    if (buffer_events == 0)
        buffer_events = 65536;
    if (buffer_events > ((size_t)1 << 24)) {
        rc = tk_einval("tasker_subscribe: buffer_events %zu is more than 16777216",
                       buffer_events);
        goto fail;
    }
    size_t cap = 1;
    while (cap < buffer_events)
        cap <<= 1;
    sub = tk_calloc(1, sizeof *sub);
    /* The slots on cache-line boundaries (the allocator only promises
     * malloc's alignment), so each event is written to one line.  side is
     * only touched by failure and circuit events: its pages mostly stay
     * unmapped. */
    if (!sub || !(sub->ring_mem = tk_malloc(cap * sizeof *sub->ring + 63)) ||
        !(sub->side = tk_malloc(cap * sizeof *sub->side)) ||
        !(sub->dstate = tk_malloc(sizeof(dstate)))) {
        rc = tk_enomem();
        goto fail;
    }
    sub->ring = (tk_evslot *)(((uintptr_t)sub->ring_mem + 63) & ~(uintptr_t)63);
    sub->coord = c;
    sub->mask = mask;
    sub->fn = fn;
    sub->userdata = userdata;
    sub->free_userdata = free_userdata;
    sub->cap = cap;
    sub->slot_mask = cap - 1;
    tk_event_seen(sub, 0);
    pthread_mutex_init(&sub->m, NULL);
    pthread_cond_init(&sub->cv, NULL);
    if (pthread_create(&sub->thread, NULL, sub_main, sub) != 0) {
        pthread_mutex_destroy(&sub->m);
        pthread_cond_destroy(&sub->cv);
        rc = tk_err(TASKER_EIO, TASKER_CATEGORY_INTERNAL, NULL,
                    "tasker_subscribe: could not start the delivery thread");
        goto fail;
    }
    pthread_mutex_lock(&c->lock);
    sub->next = c->subs;
    c->subs = sub;
    c->event_mask |= mask;
    pthread_mutex_unlock(&c->lock);
    *out = sub;
    return TASKER_OK;
fail:
    if (sub) {
        tk_free(sub->ring_mem);
        tk_free(sub->side);
        tk_free(sub->dstate);
    }
    tk_free(sub);
    if (free_userdata)
        free_userdata(userdata);
    return rc;
}

static void sub_stop_free(struct tasker_subscription *sub)
{
    pthread_mutex_lock(&sub->m);
    sub->stop = 1;
    pthread_cond_signal(&sub->cv);
    pthread_mutex_unlock(&sub->m);
    pthread_join(sub->thread, NULL);
    if (sub->free_userdata)
        sub->free_userdata(sub->userdata);
    pthread_mutex_destroy(&sub->m);
    pthread_cond_destroy(&sub->cv);
    tk_free(sub->ring_mem);
    tk_free(sub->side);
    tk_free(sub->dstate);
    tk_free(sub);
}

int tasker_unsubscribe(tasker_subscription *sub)
{
    if (!sub)
        return TASKER_OK;
    tasker_coordinator *c = sub->coord;
    pthread_mutex_lock(&c->lock);
    uint32_t mask = 0;
    for (struct tasker_subscription **pp = &c->subs; *pp;) {
        if (*pp == sub)
            *pp = sub->next;
        else {
            mask |= (*pp)->mask;
            pp = &(*pp)->next;
        }
    }
    c->event_mask = mask;
    pthread_mutex_unlock(&c->lock);
    sub_stop_free(sub);
    return TASKER_OK;
}

void tk_events_close_all(tasker_coordinator *c)
{
    pthread_mutex_lock(&c->lock);
    struct tasker_subscription *list = c->subs;
    c->subs = NULL;
    c->event_mask = 0;
    pthread_mutex_unlock(&c->lock);
    while (list) {
        struct tasker_subscription *n = list->next;
        sub_stop_free(list);
        list = n;
    }
}

uint64_t tasker_subscription_dropped(const tasker_subscription *sub)
{
    return sub ? atomic_load(&((tasker_subscription *)sub)->dropped) : 0;
}

uint64_t tasker_subscription_delivered(const tasker_subscription *sub)
{
    return sub ? atomic_load(&((tasker_subscription *)sub)->delivered) : 0;
}

const char *tk_event_name(uint32_t type)
{
    static const char *const names[] = {
        "task_created",  "step_enqueued",  "step_started",   "step_succeeded",
        "step_failed",   "step_retry_scheduled", "step_dead_lettered", "step_cancelled",
        "task_cancelled", "task_completed", "task_failed",    "circuit_changed"};
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (type == (1u << i))
            return names[i];
    return "unknown";
}
