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
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/uuid.h"
#include "obs/events.h"
#include "obs/metrics.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_signal_per_rest),
        cmocka_unit_test(hist_bucket_matches_linear_search),
        cmocka_unit_test(uuid_text_matches_format),
        cmocka_unit_test(event_uuids_match_task_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
