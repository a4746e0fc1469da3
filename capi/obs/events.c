#include "obs/events.h"

#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/uuid.h"
#include "run/engine.h"

static const char *const circuit_names[] = {"closed", "open", "half_open"};

void tk_event_push(struct tasker_subscription *sub, const tk_evrec *ev)
{
    size_t tail = atomic_load_explicit(&sub->tail, memory_order_relaxed);
    if (tail - sub->head_seen >= sub->cap) {
        sub->head_seen = atomic_load_explicit(&sub->head, memory_order_acquire);
        if (tail - sub->head_seen >= sub->cap) {
            atomic_fetch_add_explicit(&sub->dropped, 1, memory_order_relaxed);
            tk_free(ev->err_class);
            tk_free(ev->err_msg);
            return;
        }
    }
    sub->ring[tail & (sub->cap - 1)] = *ev;
    /* Release/relaxed rather than a full fence per event: a wake-up missed in
     * the race with a thread going to sleep costs at most its SLEEP_MS. */
    atomic_store_explicit(&sub->tail, tail + 1, memory_order_release);
    int sl = atomic_load_explicit(&sub->sleeping, memory_order_relaxed);
    /* A napping thread wakes by itself within NAP_MS; wake it early only when
     * the buffer is filling up.  A sleeping one must be woken. */
    if (sl == TK_SUB_ASLEEP ||
        (sl == TK_SUB_NAPPING && tail + 1 - sub->head_seen >= sub->cap / 4)) {
        pthread_mutex_lock(&sub->m);
        pthread_cond_signal(&sub->cv);
        pthread_mutex_unlock(&sub->m);
    }
}

/* Consecutive events often name the same task and step: their text forms
 * are kept from one event to the next (delivery thread only). */
typedef struct {
    uint8_t bytes[16];
    char text[TASKER_UUID_BUFSIZE];
    int valid;
} uuid_cache;

static const char *uuid_text(uuid_cache *c, const uint8_t bytes[16])
{
    if (!c->valid || memcmp(c->bytes, bytes, 16) != 0) {
        memcpy(c->bytes, bytes, 16);
        tk_uuid_format(bytes, c->text);
        c->valid = 1;
    }
    return c->text;
}

static void deliver(struct tasker_subscription *sub, const tk_evrec *r, uuid_cache *tc,
                    uuid_cache *sc)
{
    tasker_event ev = {.version = TASKER_EVENT_VERSION, .type = r->type, .at_unix_ns = r->at,
                       .task_uuid = "", .step_uuid = "", .ns = "",
                       .template_name = "", .step_name = "", .handler = "",
                       .attempt = r->attempt, .circuit = "", .circuit_state = "",
                       .error_class = r->err_class ? r->err_class : "",
                       .error_message = r->err_msg ? r->err_msg : ""};
    if (r->reg) {
        const tasker_template *t = r->reg->tmpl;
        ev.task_uuid = uuid_text(tc, r->task_uuid);
        ev.ns = t->ns;
        ev.template_name = t->name;
        if (r->step >= 0) {
            ev.step_uuid = uuid_text(sc, r->step_uuid);
            ev.step_name = t->steps[r->step].name;
            ev.handler = t->steps[r->step].handler;
        }
    } else {
        ev.circuit = r->circuit;
        ev.ns = r->circuit_ns ? r->circuit_ns : "";
        ev.circuit_state = circuit_names[r->circuit_state % 3];
    }
    sub->fn(&ev, sub->userdata);
}

#define NAP_MS 2
#define NAPS_BEFORE_SLEEP 50
#define SLEEP_MS 200

static void *sub_main(void *arg)
{
    struct tasker_subscription *sub = arg;
    int naps = 0;
    uuid_cache tc = {.valid = 0}, sc = {.valid = 0};
    for (;;) {
        size_t head = atomic_load_explicit(&sub->head, memory_order_relaxed);
        size_t tail = atomic_load_explicit(&sub->tail, memory_order_acquire);
        if (head != tail) {
            for (; head != tail; head++) {
                tk_evrec rec = sub->ring[head & (sub->cap - 1)];
                atomic_store_explicit(&sub->head, head + 1, memory_order_release);
                deliver(sub, &rec, &tc, &sc);
                tk_free(rec.err_class);
                tk_free(rec.err_msg);
                atomic_fetch_add_explicit(&sub->delivered, 1, memory_order_relaxed);
            }
            naps = 0;
            continue;
        }
        pthread_mutex_lock(&sub->m);
        int stop = sub->stop;
        if (!stop) {
            if (naps < NAPS_BEFORE_SLEEP) {
                atomic_store_explicit(&sub->sleeping, TK_SUB_NAPPING, memory_order_seq_cst);
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += NAP_MS * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&sub->cv, &sub->m, &ts);
                naps++;
            } else {
                atomic_store_explicit(&sub->sleeping, TK_SUB_ASLEEP, memory_order_seq_cst);
                if (atomic_load_explicit(&sub->tail, memory_order_seq_cst) == head && !sub->stop) {
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    ts.tv_sec += SLEEP_MS / 1000;
                    ts.tv_nsec += (SLEEP_MS % 1000) * 1000000L;
                    if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                    }
                    pthread_cond_timedwait(&sub->cv, &sub->m, &ts);
                }
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
    if (!sub || !(sub->ring = tk_malloc(cap * sizeof *sub->ring))) {
        rc = tk_enomem();
        goto fail;
    }
    sub->coord = c;
    sub->mask = mask;
    sub->fn = fn;
    sub->userdata = userdata;
    sub->free_userdata = free_userdata;
    sub->cap = cap;
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
    if (sub)
        tk_free(sub->ring);
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
    tk_free(sub->ring);
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
