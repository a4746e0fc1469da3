/*
 * Internals of the observability hot path that the public API cannot show:
 * linked against the static library, with capi/ on the include path.
 *
 *  - wake-ups: the producer wakes a napping delivery thread only when its
 *    buffer is really a quarter full, and at most once per nap or sleep.
 *    (It used to compare against a stale view of the consumer's position and
 *    then signal on nearly every event while the thread napped: one futex
 *    call per event.)
 *  - histogram buckets: the table lookup finds the same bucket as a linear
 *    search through the bounds, at and around every bound.
 *  - UUID text on the delivery thread: the same as tk_uuid_format, and in
 *    every event of many tasks the same as the task's JSON shows (the
 *    delivery thread derives a step's text from its task's when they share
 *    all but the counter bytes).
 *  - 32-byte event slots: events that do not fit one (a time too long after
 *    the task's creation, step UUIDs not derived from the task's) go to the
 *    side entry in full and arrive the same as the others; with several
 *    worker threads every task's events arrive complete and in the order of
 *    its state changes.
 *  - task waiters: many threads waiting on tasks that worker threads finish
 *    (with a subscriber) all return, and closing right after is safe.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include "core/clock.h"
#include "core/uuid.h"
#include "obs/events.h"
#include "obs/metrics.h"
#include "run/engine.h"

#define CHAIN                                                                                \
    "{\"namespace\":\"in\",\"name\":\"chain\",\"steps\":[{\"name\":\"x\",\"handler\":"      \
    "\"node\"},{\"name\":\"y\",\"handler\":\"node\",\"depends_on\":[\"x\"]},"                \
    "{\"name\":\"z\",\"handler\":\"node\",\"depends_on\":[\"y\"]}]}"
#define CHAIN_EVENTS 11

static void count_ev(const tasker_event *e, void *ud)
{
    (void)e;
    (*(unsigned long *)ud)++; /* delivery thread only */
}

static void one_signal_per_rest(void **state)
{
    (void)state;
    enum { TASKS = 3000, BUFFER = 1024 };
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "node", th_handler_node, NULL);
    th_register(c, CHAIN);
    unsigned long got = 0;
    tasker_subscription *sub;
    th_ok(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, BUFFER, count_ev, &got, NULL));
    /* All tasks first, then the worker: it runs without going idle until the
     * end, so its flushes when idle (one per sleep) do not blur the count. */
    static char uuids[TASKS][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < TASKS; i++)
        th_create(uuids[i], c, "in", "chain", NULL);
    th_ok(tasker_coordinator_start(c, 1));
    for (int i = 0; i < TASKS; i++)
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
    const uint64_t emitted = (uint64_t)TASKS * CHAIN_EVENTS;
    double deadline = th_now_ms() + th_wait_ms();
    while (tasker_subscription_delivered(sub) + tasker_subscription_dropped(sub) < emitted &&
           th_now_ms() < deadline)
        th_sleep_ms(1);
    uint64_t wakeups = atomic_load(&sub->wakeups), rests = atomic_load(&sub->rests);
    uint64_t delivered = tasker_subscription_delivered(sub);
    uint64_t dropped = tasker_subscription_dropped(sub);
    th_ok(tasker_unsubscribe(sub));
    th_ok(tasker_coordinator_close(c));
    assert_int_equal(delivered + dropped, emitted);
    assert_int_equal(got, delivered);
    /* Every signal ends one nap or sleep the consumer announced. */
    if (wakeups > rests)
        fail_msg("%llu wake-up signals for %llu naps/sleeps (%llu events)",
                 (unsigned long long)wakeups, (unsigned long long)rests,
                 (unsigned long long)emitted);
    /* And a napping consumer is only woken when a quarter of the buffer is
     * waiting: that cannot happen more often than once per BUFFER/4 events. */
    if (wakeups > emitted / (BUFFER / 4) + 4) /* + the sleeps at start and end */
        fail_msg("%llu wake-up signals for %llu events with a %d-event buffer",
                 (unsigned long long)wakeups, (unsigned long long)emitted, BUFFER);
}

/* The definition: the first bucket whose bound is >= ns. */
static int linear_bucket(int64_t ns)
{
    static const int64_t b[TK_HIST_BUCKETS] = {
        10000,     50000,      100000,     500000,      1000000,      5000000,      10000000,
        50000000,  100000000,  500000000,  1000000000,  5000000000LL, 30000000000LL,
        120000000000LL};
    int i = 0;
    while (i < TK_HIST_BUCKETS && ns > b[i])
        i++;
    return i;
}

static void hist_bucket_matches_linear_search(void **state)
{
    (void)state;
    static const int64_t b[TK_HIST_BUCKETS] = {
        10000,     50000,      100000,     500000,      1000000,      5000000,      10000000,
        50000000,  100000000,  500000000,  1000000000,  5000000000LL, 30000000000LL,
        120000000000LL};
    for (int i = 0; i < TK_HIST_BUCKETS; i++)
        for (int64_t d = -2; d <= 2; d++)
            assert_int_equal(tk_hist_bucket(b[i] + d), linear_bucket(b[i] + d));
    for (int64_t ns = -5; ns < 300000; ns++)
        if (tk_hist_bucket(ns) != linear_bucket(ns < 0 ? 0 : ns))
            fail_msg("bucket of %lld: %d, expected %d", (long long)ns, tk_hist_bucket(ns),
                     linear_bucket(ns));
    for (int bit = 0; bit < 63; bit++)
        for (int64_t d = -1; d <= 1; d++) {
            int64_t ns = ((int64_t)1 << bit) + d;
            if (ns >= 0)
                assert_int_equal(tk_hist_bucket(ns), linear_bucket(ns));
        }
    assert_int_equal(tk_hist_bucket(INT64_MAX), TK_HIST_BUCKETS);
    uint64_t x = 88172645463325252ull; /* xorshift: values of every magnitude */
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t ns = (int64_t)(x >> (1 + x % 63));
        if (tk_hist_bucket(ns) != linear_bucket(ns))
            fail_msg("bucket of %lld: %d, expected %d", (long long)ns, tk_hist_bucket(ns),
                     linear_bucket(ns));
    }
}

static void uuid_text_matches_format(void **state)
{
    (void)state;
    uint8_t b[16];
    char want[TASKER_UUID_BUFSIZE], got[TASKER_UUID_BUFSIZE + 4];
    for (int v = 0; v < 256; v++) { /* every byte value in every position */
        for (int i = 0; i < 16; i++)
            b[i] = (uint8_t)(v + 17 * i);
        tk_uuid_format(b, want);
        memset(got, 'x', sizeof got);
        tk_event_uuid_text(b, got);
        assert_string_equal(got, want);
        assert_int_equal(got[37], 'x'); /* nothing written past the NUL */
    }
    for (int i = 0; i < 1000; i++) {
        tk_uuid_new(b, want);
        tk_event_uuid_text(b, got);
        assert_string_equal(got, want);
    }
}

typedef struct {
    char task[TASKER_UUID_BUFSIZE], step[TASKER_UUID_BUFSIZE], name[8];
} seen_ev;

typedef struct {
    seen_ev *ev;
    size_t n, cap;
    int overflow;
} seen_list;

static void record_ev(const tasker_event *e, void *ud)
{
    seen_list *l = ud; /* delivery thread only; read after unsubscribe */
    if (l->n == l->cap) {
        l->overflow = 1;
        return;
    }
    seen_ev *x = &l->ev[l->n++];
    snprintf(x->task, sizeof x->task, "%s", e->task_uuid);
    snprintf(x->step, sizeof x->step, "%s", e->step_uuid);
    snprintf(x->name, sizeof x->name, "%s", e->step_name);
}

static void event_uuids_match_task_json(void **state)
{
    (void)state;
    enum { TASKS = 400 };
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "node", th_handler_node, NULL);
    th_register(c, CHAIN);
    seen_list l = {.cap = TASKS * CHAIN_EVENTS};
    l.ev = calloc(l.cap, sizeof *l.ev);
    assert_non_null(l.ev);
    tasker_subscription *sub;
    th_ok(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, record_ev, &l, NULL));
    th_ok(tasker_coordinator_start(c, 2));
    static char uuids[TASKS][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < TASKS; i++) {
        th_create(uuids[i], c, "in", "chain", NULL);
        if (i % 50 == 0)
            th_sleep_ms(2); /* tasks from several milliseconds */
    }
    for (int i = 0; i < TASKS; i++)
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
    th_ok(tasker_unsubscribe(sub));
    assert_false(l.overflow);
    assert_int_equal(l.n, (size_t)TASKS * CHAIN_EVENTS);
    size_t steps_checked = 0;
    for (int i = 0; i < TASKS; i++) {
        json_t *task = th_task(c, uuids[i]);
        size_t mine = 0;
        for (size_t k = 0; k < l.n; k++) {
            if (strcmp(l.ev[k].task, uuids[i]) != 0)
                continue;
            mine++;
            if (!l.ev[k].name[0]) {
                assert_string_equal(l.ev[k].step, "");
                continue;
            }
            const char *want =
                json_string_value(json_object_get(th_step(task, l.ev[k].name), "uuid"));
            assert_non_null(want);
            assert_string_equal(l.ev[k].step, want);
            steps_checked++;
        }
        assert_int_equal(mine, CHAIN_EVENTS);
        json_decref(task);
    }
    assert_int_equal(steps_checked, (size_t)TASKS * 9);
    th_ok(tasker_coordinator_close(c));
    free(l.ev);
}

/* ---- event order and the wide path -------------------------------------- */

typedef struct {
    uint32_t type;
    uint32_t attempt;
    int64_t at;
    char task[TASKER_UUID_BUFSIZE], step[TASKER_UUID_BUFSIZE], name[8];
} full_ev;

typedef struct {
    full_ev *ev;
    size_t n, cap;
    int overflow;
} full_list;

static void record_full(const tasker_event *e, void *ud)
{
    full_list *l = ud; /* delivery thread only; read after unsubscribe */
    if (l->n == l->cap) {
        l->overflow = 1;
        return;
    }
    full_ev *x = &l->ev[l->n++];
    x->type = e->type;
    x->attempt = e->attempt;
    x->at = e->at_unix_ns;
    snprintf(x->task, sizeof x->task, "%s", e->task_uuid);
    snprintf(x->step, sizeof x->step, "%s", e->step_uuid);
    snprintf(x->name, sizeof x->name, "%s", e->step_name);
}

/* The events of task `uuid` in `l`, in delivery order, must be exactly its
 * life: created first, completed last, each of the chain's steps enqueued,
 * started and succeeded in that order (x before y before z), attempt 1 once
 * started, the
 * step UUIDs its JSON shows, times within [t0, t1] and never going back. */
static void assert_chain_life(tasker_coordinator *c, const full_list *l, const char *uuid,
                              int64_t t0, int64_t t1)
{
    static const char *const names[3] = {"x", "y", "z"};
    static const uint32_t step_seq[3] = {TASKER_EVENT_STEP_ENQUEUED, TASKER_EVENT_STEP_STARTED,
                                         TASKER_EVENT_STEP_SUCCEEDED};
    json_t *task = th_task(c, uuid);
    size_t pos = 0;
    int64_t last_at = t0;
    for (size_t k = 0; k < l->n; k++) {
        const full_ev *e = &l->ev[k];
        if (strcmp(e->task, uuid) != 0)
            continue;
        uint32_t want_type;
        const char *want_name = "";
        if (pos == 0) {
            want_type = TASKER_EVENT_TASK_CREATED;
        } else if (pos == CHAIN_EVENTS - 1) {
            want_type = TASKER_EVENT_TASK_COMPLETED;
        } else {
            want_type = step_seq[(pos - 1) % 3];
            want_name = names[(pos - 1) / 3];
        }
        assert_int_equal(e->type, want_type);
        assert_string_equal(e->name, want_name);
        if (want_name[0]) {
            /* The attempt is counted when it starts: 0 while enqueued. */
            assert_int_equal(e->attempt, want_type == TASKER_EVENT_STEP_ENQUEUED ? 0 : 1);
            const char *su = json_string_value(json_object_get(th_step(task, want_name), "uuid"));
            assert_non_null(su);
            assert_string_equal(e->step, su);
        } else {
            assert_int_equal(e->attempt, 0);
            assert_string_equal(e->step, "");
        }
        assert_true(e->at >= last_at);
        assert_true(e->at <= t1);
        last_at = e->at;
        pos++;
    }
    assert_int_equal(pos, CHAIN_EVENTS);
    json_decref(task);
}

/* Four worker threads and tasks made by two threads: every task's events
 * arrive complete, once, and in the order of its state changes. */
typedef struct {
    tasker_coordinator *c;
    char (*uuids)[TASKER_UUID_BUFSIZE];
    int n;
} maker_arg;

static void *make_tasks(void *arg)
{
    maker_arg *a = arg;
    for (int i = 0; i < a->n; i++)
        th_create(a->uuids[i], a->c, "in", "chain", NULL);
    return NULL;
}

static void events_in_order_with_many_workers(void **state)
{
    (void)state;
    enum { PER_MAKER = 1500, TASKS = 2 * PER_MAKER };
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "node", th_handler_node, NULL);
    th_register(c, CHAIN);
    full_list l = {.cap = TASKS * CHAIN_EVENTS};
    l.ev = calloc(l.cap, sizeof *l.ev);
    assert_non_null(l.ev);
    tasker_subscription *sub;
    /* A buffer that holds every event: none may be dropped here. */
    th_ok(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 65536, record_full, &l, NULL));
    th_ok(tasker_coordinator_start(c, 4));
    int64_t t0 = tk_now_ns();
    static char uuids[TASKS][TASKER_UUID_BUFSIZE];
    maker_arg a[2] = {{c, uuids, PER_MAKER}, {c, uuids + PER_MAKER, PER_MAKER}};
    pthread_t th[2];
    for (int k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&th[k], NULL, make_tasks, &a[k]), 0);
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    for (int i = 0; i < TASKS; i++)
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
    assert_int_equal(tasker_subscription_dropped(sub), 0);
    th_ok(tasker_unsubscribe(sub));
    int64_t t1 = tk_now_ns();
    assert_false(l.overflow);
    assert_int_equal(l.n, (size_t)TASKS * CHAIN_EVENTS);
    /* Group by task once (a linear scan per task would be quadratic). */
    full_list one = {.cap = CHAIN_EVENTS + 1};
    one.ev = calloc(one.cap, sizeof *one.ev);
    assert_non_null(one.ev);
    for (int i = 0; i < TASKS; i += 7) { /* a sample: every seventh task */
        one.n = 0;
        for (size_t k = 0; k < l.n && one.n < one.cap; k++)
            if (strcmp(l.ev[k].task, uuids[i]) == 0)
                one.ev[one.n++] = l.ev[k];
        assert_chain_life(c, &one, uuids[i], t0, t1);
    }
    free(one.ev);
    th_ok(tasker_coordinator_close(c));
    free(l.ev);
}

/* ---- task waiters ------------------------------------------------------------ */

typedef struct {
    tasker_coordinator *c;
    const char *uuid;
    tasker_task_state st;
    int rc;
} waiter_arg;

static void *wait_one(void *arg)
{
    waiter_arg *w = arg;
    w->rc = tasker_task_wait(&w->st, w->c, w->uuid, 30000);
    return NULL;
}

static void many_waiters_then_close(void **state)
{
    (void)state;
    enum { WAITERS = 16, ROUNDS = 20 };
    for (int r = 0; r < ROUNDS; r++) {
        tasker_coordinator *c = th_open(NULL);
        th_handler(c, "node", th_handler_node, NULL);
        th_register(c, CHAIN);
        unsigned long got = 0;
        tasker_subscription *sub;
        th_ok(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, count_ev, &got, NULL));
        char uuids[WAITERS][TASKER_UUID_BUFSIZE];
        waiter_arg w[WAITERS];
        pthread_t th[WAITERS];
        for (int i = 0; i < WAITERS; i++) {
            th_create(uuids[i], c, "in", "chain", NULL);
            w[i] = (waiter_arg){.c = c, .uuid = uuids[i], .rc = -1};
            assert_int_equal(pthread_create(&th[i], NULL, wait_one, &w[i]), 0);
        }
        th_ok(tasker_coordinator_start(c, 2));
        for (int i = 0; i < WAITERS; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(w[i].rc, TASKER_OK);
            assert_int_equal(w[i].st, TASKER_TASK_COMPLETE);
        }
        /* Straight after the last wake-up, with the subscription still
         * open: close stops it and delivers what is left. */
        th_ok(tasker_coordinator_close(c));
        assert_int_equal(got, (unsigned long)WAITERS * CHAIN_EVENTS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_signal_per_rest),
        cmocka_unit_test(hist_bucket_matches_linear_search),
        cmocka_unit_test(uuid_text_matches_format),
        cmocka_unit_test(event_uuids_match_task_json),
        cmocka_unit_test(events_in_order_with_many_workers),
        cmocka_unit_test(many_waiters_then_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
