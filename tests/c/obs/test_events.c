/*
 * Events: what a subscriber sees of a run (types, counts, fields, order),
 * failure details, mask filtering, a blocked subscriber that must not stall
 * execution (bounded buffer, dropped counter), draining on unsubscribe,
 * argument checks and circuit events.
 *
 * Events are delivered on the subscription's own thread, so a test never
 * counts them right after a task finishes: it either waits for the counts
 * or unsubscribes first (which delivers what is buffered).  Every event of a
 * task is emitted before the task's final state is visible, so after
 * th_wait_final + tasker_unsubscribe the collection is complete.
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIAMOND                                                                              \
    "{\"namespace\":\"ev\",\"name\":\"diamond\",\"steps\":["                                 \
    "{\"name\":\"a\",\"handler\":\"node\"},"                                                 \
    "{\"name\":\"b\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"                          \
    "{\"name\":\"c\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"                          \
    "{\"name\":\"d\",\"handler\":\"join\",\"depends_on\":[\"b\",\"c\"]}]}"

/* One scripted step with up to 3 attempts and no delay between them. */
#define ONE                                                                                  \
    "{\"namespace\":\"ev\",\"name\":\"one\",\"steps\":[{\"name\":\"s\",\"handler\":"        \
    "\"scripted\",\"retry\":{\"max_attempts\":3,\"backoff\":\"none\",\"base_ms\":0,"         \
    "\"max_ms\":0}}]}"

/* A scripted step with 2 attempts and a dependent that only runs if it succeeds. */
#define PERMDEP                                                                              \
    "{\"namespace\":\"ev\",\"name\":\"permdep\",\"steps\":[{\"name\":\"p\",\"handler\":"    \
    "\"scripted\",\"retry\":{\"max_attempts\":2,\"backoff\":\"none\",\"base_ms\":0,"         \
    "\"max_ms\":0}},{\"name\":\"after\",\"handler\":\"node\",\"depends_on\":[\"p\"]}]}"

#define CHAIN                                                                                \
    "{\"namespace\":\"ev\",\"name\":\"chain\",\"steps\":[{\"name\":\"x\",\"handler\":"      \
    "\"node\"},{\"name\":\"y\",\"handler\":\"node\",\"depends_on\":[\"x\"]},"                \
    "{\"name\":\"z\",\"handler\":\"node\",\"depends_on\":[\"y\"]}]}"

/* Poll-mode steps nobody claims, for cancellation. */
#define POLLPAIR                                                                             \
    "{\"namespace\":\"ev\",\"name\":\"pollpair\",\"steps\":[{\"name\":\"x\",\"handler\":"   \
    "\"polled\"},{\"name\":\"y\",\"handler\":\"polled\",\"depends_on\":[\"x\"]}]}"

/* Collectors and the gate live in the fixture, not on a test's stack: if a
 * test fails half-way, its subscriptions still deliver until teardown closes
 * the coordinator. */
typedef struct fixture {
    tasker_coordinator *c;
    obs_gate gate;
    obs_collector col[3];
} fixture;

static tasker_coordinator *open_default(void)
{
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "node", th_handler_node, NULL);
    th_handler(c, "join", th_handler_node, NULL);
    th_handler(c, "scripted", obs_scripted, NULL);
    th_handler(c, "polled", NULL, NULL);
    th_register(c, DIAMOND);
    th_register(c, ONE);
    th_register(c, PERMDEP);
    th_register(c, CHAIN);
    th_register(c, POLLPAIR);
    return c;
}

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    obs_gate_init(&x->gate, 1);
    for (int i = 0; i < 3; i++)
        obs_collector_init(&x->col[i], NULL);
    x->c = open_default();
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    obs_gate_open(&x->gate); /* a callback blocked at the gate would stall close */
    th_ok(tasker_coordinator_close(x->c));
    for (int i = 0; i < 3; i++)
        obs_collector_destroy(&x->col[i]);
    obs_gate_destroy(&x->gate);
    free(x);
    th_assert_no_problems();
    return 0;
}

/* Waits until the subscription has delivered at least `n` events. */
static void wait_delivered(tasker_subscription *sub, uint64_t n)
{
    double deadline = th_now_ms() + th_wait_ms();
    while (tasker_subscription_delivered(sub) < n && th_now_ms() < deadline)
        th_sleep_ms(2);
    if (tasker_subscription_delivered(sub) < n)
        fail_msg("subscription delivered %llu events, expected %llu",
                 (unsigned long long)tasker_subscription_delivered(sub), (unsigned long long)n);
}

static void assert_type_counts(obs_collector *col, const uint32_t *types, const size_t *want,
                               size_t n_types)
{
    for (uint32_t bit = 1; bit & TASKER_EVENT_ALL; bit <<= 1) {
        size_t expected = 0;
        for (size_t i = 0; i < n_types; i++)
            if (types[i] == bit)
                expected = want[i];
        size_t got = obs_count(col, bit, NULL);
        if (got != expected)
            fail_msg("%zu %s events, expected %zu", got, obs_event_name(bit), expected);
    }
}

/* Index of the event; fails if absent. */
static size_t idx(obs_collector *col, uint32_t type, const char *step, size_t from)
{
    long i = obs_find(col, type, step, from);
    if (i < 0)
        fail_msg("no %s event for step %s after index %zu", obs_event_name(type),
                 step ? step : "(task)", from);
    return (size_t)i;
}

static void diamond_lifecycle(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, col);
    int64_t t0 = obs_real_ns();
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    int64_t t1 = obs_real_ns();

    wait_delivered(sub, 14);
    assert_int_equal(tasker_subscription_dropped(sub), 0);
    th_ok(tasker_unsubscribe(sub));
    assert_int_equal(tasker_subscription_dropped(NULL), 0);
    /* free_userdata runs once, after the last callback. */
    assert_int_equal(col->freed, 1);
    assert_int_equal(col->calls_at_free, col->n);
    assert_int_equal(col->n, 14);
    assert_false(col->other_thread);
    assert_false(pthread_equal(col->thread, pthread_self()));

    const uint32_t types[] = {TASKER_EVENT_TASK_CREATED, TASKER_EVENT_STEP_ENQUEUED,
                              TASKER_EVENT_STEP_STARTED, TASKER_EVENT_STEP_SUCCEEDED,
                              TASKER_EVENT_TASK_COMPLETED};
    const size_t want[] = {1, 4, 4, 4, 1};
    assert_type_counts(col, types, want, 5);

    json_t *task = th_task(c, uuid);
    for (size_t i = 0; i < col->n; i++) {
        obs_ev *e = &col->ev[i];
        assert_int_equal(e->version, TASKER_EVENT_VERSION);
        assert_string_equal(e->task, uuid);
        assert_string_equal(e->ns, "ev");
        assert_string_equal(e->tmpl, "diamond");
        assert_string_equal(e->circuit, "");
        assert_string_equal(e->cstate, "");
        assert_string_equal(e->eclass, "");
        assert_string_equal(e->emsg, "");
        /* at_unix_ns is wall-clock time of the change: within the run
         * (a second of slack for clock granularity). */
        if (e->at < t0 - 1000000000LL || e->at > t1 + 1000000000LL)
            fail_msg("event %zu (%s) at %lld, outside the run [%lld, %lld]", i,
                     obs_event_name(e->type), (long long)e->at, (long long)t0, (long long)t1);
        if (e->type == TASKER_EVENT_TASK_CREATED || e->type == TASKER_EVENT_TASK_COMPLETED) {
            assert_string_equal(e->step, "");
            assert_string_equal(e->step_uuid, "");
            assert_string_equal(e->handler, "");
            continue;
        }
        const char *uuid_in_json = obs_step_uuid(task, e->step);
        assert_non_null(uuid_in_json);
        assert_string_equal(e->step_uuid, uuid_in_json);
        assert_string_equal(e->handler, strcmp(e->step, "d") == 0 ? "join" : "node");
        /* Enqueued before the first claim (attempt 0); started and
         * succeeded in attempt 1. */
        assert_int_equal(e->attempt, e->type == TASKER_EVENT_STEP_ENQUEUED ? 0 : 1);
    }
    json_decref(task);

    /* Order: created first, completed last, each step enqueued -> started
     * -> succeeded, and no step enqueued before its dependencies succeeded. */
    assert_int_equal(idx(col, TASKER_EVENT_TASK_CREATED, NULL, 0), 0);
    assert_int_equal(idx(col, TASKER_EVENT_TASK_COMPLETED, NULL, 0), 13);
    const char *steps[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        size_t en = idx(col, TASKER_EVENT_STEP_ENQUEUED, steps[i], 0);
        size_t st = idx(col, TASKER_EVENT_STEP_STARTED, steps[i], 0);
        size_t ok = idx(col, TASKER_EVENT_STEP_SUCCEEDED, steps[i], 0);
        assert_true(en < st);
        assert_true(st < ok);
    }
    size_t a_ok = idx(col, TASKER_EVENT_STEP_SUCCEEDED, "a", 0);
    assert_true(a_ok < idx(col, TASKER_EVENT_STEP_ENQUEUED, "b", 0));
    assert_true(a_ok < idx(col, TASKER_EVENT_STEP_ENQUEUED, "c", 0));
    size_t d_en = idx(col, TASKER_EVENT_STEP_ENQUEUED, "d", 0);
    assert_true(idx(col, TASKER_EVENT_STEP_SUCCEEDED, "b", 0) < d_en);
    assert_true(idx(col, TASKER_EVENT_STEP_SUCCEEDED, "c", 0) < d_en);
}

/* Every field an event of this type does not use is "": the delivery thread
 * reuses one tasker_event, so what a failure, circuit or step event set must
 * not show in the next event. */
static void assert_unused_fields_empty(const obs_ev *e)
{
    int circuit = e->type == TASKER_EVENT_CIRCUIT_CHANGED;
    int task_ev = !circuit && (e->type & (TASKER_EVENT_TASK_CREATED | TASKER_EVENT_TASK_CANCELLED |
                                          TASKER_EVENT_TASK_COMPLETED | TASKER_EVENT_TASK_FAILED));
    int failure = e->type & (TASKER_EVENT_STEP_FAILED | TASKER_EVENT_STEP_DEAD_LETTERED);
    assert_int_equal(e->version, TASKER_EVENT_VERSION);
    if (!circuit) {
        assert_string_equal(e->circuit, "");
        assert_string_equal(e->cstate, "");
        assert_true(e->task[0] != '\0');
        assert_true(e->tmpl[0] != '\0');
    } else {
        assert_string_equal(e->task, "");
        assert_string_equal(e->tmpl, "");
    }
    if (circuit || task_ev) {
        assert_string_equal(e->step_uuid, "");
        assert_string_equal(e->step, "");
        assert_string_equal(e->handler, "");
    } else {
        assert_true(e->step_uuid[0] != '\0');
        assert_true(e->step[0] != '\0');
        assert_true(e->handler[0] != '\0');
    }
    if (!failure) {
        assert_string_equal(e->eclass, "");
        assert_string_equal(e->emsg, "");
    }
}

static void retry_then_success_events(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "one", "{\"fail_until\": 1, \"class\": \"FlakyError\"}");
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_unsubscribe(sub));

    const uint32_t types[] = {TASKER_EVENT_TASK_CREATED,    TASKER_EVENT_STEP_ENQUEUED,
                              TASKER_EVENT_STEP_STARTED,    TASKER_EVENT_STEP_FAILED,
                              TASKER_EVENT_STEP_RETRY_SCHEDULED, TASKER_EVENT_STEP_SUCCEEDED,
                              TASKER_EVENT_TASK_COMPLETED};
    const size_t want[] = {1, 2, 2, 1, 1, 1, 1};
    assert_type_counts(col, types, want, 7);

    json_t *task = th_task(c, uuid);
    const char *step_uuid = obs_step_uuid(task, "s");
    size_t start1 = idx(col, TASKER_EVENT_STEP_STARTED, "s", 0);
    size_t failed = idx(col, TASKER_EVENT_STEP_FAILED, "s", 0);
    size_t retry = idx(col, TASKER_EVENT_STEP_RETRY_SCHEDULED, "s", 0);
    size_t enq2 = idx(col, TASKER_EVENT_STEP_ENQUEUED, "s", failed);
    size_t start2 = idx(col, TASKER_EVENT_STEP_STARTED, "s", enq2);
    size_t ok = idx(col, TASKER_EVENT_STEP_SUCCEEDED, "s", 0);
    assert_true(start1 < failed && failed < retry && retry < enq2 && enq2 < start2 &&
                start2 < ok);

    obs_ev *f = &col->ev[failed];
    assert_string_equal(f->step_uuid, step_uuid);
    assert_string_equal(f->handler, "scripted");
    assert_int_equal(f->attempt, 1);
    assert_string_equal(f->eclass, "FlakyError");
    assert_string_equal(f->emsg, "boom on attempt 1");
    /* Only failure and dead-letter events carry the error. */
    assert_string_equal(col->ev[retry].eclass, "");
    assert_string_equal(col->ev[retry].emsg, "");
    assert_int_equal(col->ev[retry].attempt, 1);
    assert_int_equal(col->ev[start1].attempt, 1);
    assert_int_equal(col->ev[enq2].attempt, 1);
    assert_int_equal(col->ev[start2].attempt, 2);
    assert_int_equal(col->ev[ok].attempt, 2);
    assert_string_equal(col->ev[ok].eclass, "");
    for (size_t i = 0; i < col->n; i++) {
        if (col->ev[i].step[0] != '\0')
            assert_string_equal(col->ev[i].step_uuid, step_uuid);
        assert_unused_fields_empty(&col->ev[i]);
    }
    json_decref(task);
}

/* Runs one permdep task with `ctx` and collects its events into `col`. */
static void run_permdep(tasker_coordinator *c, const char *ctx, obs_collector *col,
                        char uuid[TASKER_UUID_BUFSIZE])
{
    obs_collector_reset(col);
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, col);
    th_create(uuid, c, "ev", "permdep", ctx);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    th_ok(tasker_unsubscribe(sub));
    for (size_t i = 0; i < col->n; i++)
        assert_unused_fields_empty(&col->ev[i]);
}

static void failure_dead_letters(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];

    /* A permanent failure: no retry, straight to error. */
    run_permdep(c, "{\"fail_until\": 9, \"retryable\": false, \"class\": \"BadInput\"}", col,
                uuid);
    {
        const uint32_t types[] = {TASKER_EVENT_TASK_CREATED,        TASKER_EVENT_STEP_ENQUEUED,
                                  TASKER_EVENT_STEP_STARTED,        TASKER_EVENT_STEP_FAILED,
                                  TASKER_EVENT_STEP_DEAD_LETTERED, TASKER_EVENT_TASK_FAILED};
        const size_t want[] = {1, 1, 1, 1, 1, 1};
        assert_type_counts(col, types, want, 6);
        size_t f = idx(col, TASKER_EVENT_STEP_FAILED, "p", 0);
        size_t d = idx(col, TASKER_EVENT_STEP_DEAD_LETTERED, "p", 0);
        size_t tf = idx(col, TASKER_EVENT_TASK_FAILED, NULL, 0);
        assert_true(f < d && d < tf);
        assert_int_equal(tf, col->n - 1);
        json_t *task = th_task(c, uuid);
        for (size_t i = 0; i < col->n; i++)
            assert_string_equal(col->ev[i].task, uuid);
        assert_string_equal(col->ev[d].step_uuid, obs_step_uuid(task, "p"));
        assert_string_equal(col->ev[d].eclass, "BadInput");
        assert_string_equal(col->ev[d].emsg, "boom on attempt 1");
        assert_int_equal(col->ev[d].attempt, 1);
        assert_string_equal(col->ev[f].eclass, "BadInput");
        assert_string_equal(col->ev[tf].eclass, "");
        assert_string_equal(col->ev[tf].step, "");
        assert_string_equal(th_step_state(task, "p"), "error");
        assert_string_equal(th_step_state(task, "after"), "pending");
        json_decref(task);
    }

    /* Retryable failures until the attempts run out. */
    run_permdep(c, "{\"fail_until\": 9, \"class\": \"Flaky\"}", col, uuid);
    {
        const uint32_t types[] = {TASKER_EVENT_TASK_CREATED,        TASKER_EVENT_STEP_ENQUEUED,
                                  TASKER_EVENT_STEP_STARTED,        TASKER_EVENT_STEP_FAILED,
                                  TASKER_EVENT_STEP_RETRY_SCHEDULED,
                                  TASKER_EVENT_STEP_DEAD_LETTERED, TASKER_EVENT_TASK_FAILED};
        const size_t want[] = {1, 2, 2, 2, 1, 1, 1};
        assert_type_counts(col, types, want, 7);
        size_t f1 = idx(col, TASKER_EVENT_STEP_FAILED, "p", 0);
        size_t f2 = idx(col, TASKER_EVENT_STEP_FAILED, "p", f1 + 1);
        size_t d = idx(col, TASKER_EVENT_STEP_DEAD_LETTERED, "p", 0);
        assert_true(f2 < d);
        assert_int_equal(col->ev[f1].attempt, 1);
        assert_string_equal(col->ev[f1].emsg, "boom on attempt 1");
        assert_int_equal(col->ev[f2].attempt, 2);
        assert_string_equal(col->ev[f2].emsg, "boom on attempt 2");
        assert_int_equal(col->ev[d].attempt, 2);
        assert_string_equal(col->ev[d].eclass, "Flaky");
        assert_string_equal(col->ev[d].emsg, "boom on attempt 2");
    }
}

static void cancel_events(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    tasker_subscription *sub = obs_subscribe(
        c, TASKER_EVENT_STEP_CANCELLED | TASKER_EVENT_TASK_CANCELLED, 0, col);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "pollpair", NULL);
    th_ok(tasker_task_cancel(c, uuid));
    th_ok(tasker_unsubscribe(sub));
    /* Both unfinished steps (x enqueued, y pending) are cancelled, then the task. */
    assert_int_equal(col->n, 3);
    assert_int_equal(obs_count(col, TASKER_EVENT_STEP_CANCELLED, "x"), 1);
    assert_int_equal(obs_count(col, TASKER_EVENT_STEP_CANCELLED, "y"), 1);
    assert_int_equal(idx(col, TASKER_EVENT_TASK_CANCELLED, NULL, 0), 2);
    assert_string_equal(col->ev[2].task, uuid);
}

static void mask_filtering(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *none = &x->col[2];
    obs_collector *b = &x->col[1];
    obs_collector *a = &x->col[0];
    tasker_subscription *sa = obs_subscribe(
        c, TASKER_EVENT_STEP_SUCCEEDED | TASKER_EVENT_TASK_COMPLETED, 4, a);
    tasker_subscription *sb = obs_subscribe(c, TASKER_EVENT_TASK_CREATED, 0, b);
    tasker_subscription *sn = obs_subscribe(c, TASKER_EVENT_CIRCUIT_CHANGED, 0, none);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    /* Unselected events do not take buffer space: a's 4 slots need only
     * hold its own 5 events while it keeps up, so count, not assume. */
    th_ok(tasker_unsubscribe(sb));
    th_ok(tasker_unsubscribe(sn));
    wait_delivered(sa, 5 - tasker_subscription_dropped(sa));
    uint64_t a_dropped = tasker_subscription_dropped(sa);
    th_ok(tasker_unsubscribe(sa));
    assert_int_equal(a->n + a_dropped, 5);
    assert_int_equal(obs_count(a, TASKER_EVENT_STEP_SUCCEEDED, NULL) +
                         obs_count(a, TASKER_EVENT_TASK_COMPLETED, NULL),
                     a->n);
    assert_int_equal(b->n, 1);
    assert_int_equal(b->ev[0].type, TASKER_EVENT_TASK_CREATED);
    assert_string_equal(b->ev[0].task, uuid);
    assert_int_equal(none->n, 0);
    assert_int_equal(none->freed, 1);

    /* With a buffer that holds them all, the filtered count is exact. */
    obs_collector_reset(a);
    sa = obs_subscribe(c, TASKER_EVENT_STEP_SUCCEEDED | TASKER_EVENT_TASK_COMPLETED, 64, a);
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_unsubscribe(sa));
    assert_int_equal(a->n, 5);
    assert_int_equal(obs_count(a, TASKER_EVENT_STEP_SUCCEEDED, NULL), 4);
    assert_int_equal(obs_count(a, TASKER_EVENT_TASK_COMPLETED, NULL), 1);
}

#define SLOW_TASKS 40
#define CHAIN_EVENTS 11 /* created + 3 x (enqueued, started, succeeded) + completed */

static void slow_subscriber_does_not_stall(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *full = &x->col[1];
    obs_collector *slow = &x->col[0];
    slow->gate = &x->gate;
    tasker_subscription *ss = obs_subscribe(c, TASKER_EVENT_ALL, 8, slow);
    tasker_subscription *sf = obs_subscribe(c, TASKER_EVENT_ALL, 0, full);
    th_ok(tasker_coordinator_start(c, 2));

    char uuids[SLOW_TASKS][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < SLOW_TASKS; i++)
        th_create(uuids[i], c, "ev", "chain", NULL);
    /* The slow subscriber's callback is stuck on its first event ... */
    assert_true(obs_gate_wait_waiting(&x->gate, 1));
    /* ... and every task still runs to completion. */
    for (int i = 0; i < SLOW_TASKS; i++)
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
    assert_int_equal(obs_gate_waiting(&x->gate), 1);
    assert_int_equal(obs_count(slow, 0, NULL), 0);

    const uint64_t emitted = (uint64_t)SLOW_TASKS * CHAIN_EVENTS;
    /* At most the buffer (8) plus the event in the callback were kept. */
    uint64_t dropped = tasker_subscription_dropped(ss);
    if (dropped < emitted - 9)
        fail_msg("only %llu of %llu events dropped with a blocked subscriber and 8 slots",
                 (unsigned long long)dropped, (unsigned long long)emitted);
    /* The metric counts the same drops (the full subscriber drops none). */
    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(prom_get(&doc, "tasker_events_dropped_total", NULL), (double)dropped);
    prom_doc_free(&doc);

    obs_gate_open(&x->gate);
    double deadline = th_now_ms() + th_wait_ms();
    while (tasker_subscription_delivered(ss) + tasker_subscription_dropped(ss) < emitted &&
           th_now_ms() < deadline)
        th_sleep_ms(2);
    uint64_t delivered = tasker_subscription_delivered(ss);
    assert_int_equal(delivered + tasker_subscription_dropped(ss), emitted);
    assert_int_equal(tasker_subscription_dropped(ss), dropped); /* nothing new came */
    assert_true(delivered >= 1 && delivered <= 9);
    wait_delivered(sf, emitted);
    assert_int_equal(tasker_subscription_dropped(sf), 0);
    th_ok(tasker_unsubscribe(ss));
    th_ok(tasker_unsubscribe(sf));
    assert_int_equal(slow->n, delivered);
    /* What the slow subscriber got starts with the very first event. */
    assert_int_equal(slow->ev[0].type, TASKER_EVENT_TASK_CREATED);
    assert_string_equal(slow->ev[0].task, uuids[0]);

    assert_int_equal(full->n, emitted);
    assert_int_equal(obs_count(full, TASKER_EVENT_TASK_CREATED, NULL), SLOW_TASKS);
    assert_int_equal(obs_count(full, TASKER_EVENT_STEP_ENQUEUED, NULL), 3 * SLOW_TASKS);
    assert_int_equal(obs_count(full, TASKER_EVENT_STEP_STARTED, NULL), 3 * SLOW_TASKS);
    assert_int_equal(obs_count(full, TASKER_EVENT_STEP_SUCCEEDED, NULL), 3 * SLOW_TASKS);
    assert_int_equal(obs_count(full, TASKER_EVENT_TASK_COMPLETED, NULL), SLOW_TASKS);
}

static void *open_gate_later(void *arg)
{
    th_sleep_ms(100);
    obs_gate_open(arg);
    return NULL;
}

static void unsubscribe_drains(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    col->gate = &x->gate;
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 64, col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_true(obs_gate_wait_waiting(&x->gate, 1));
    /* 13 events wait in the buffer behind the blocked one.  Unsubscribing
     * now must deliver them all, not discard them. */
    assert_int_equal(obs_count(col, 0, NULL), 0);
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_later, &x->gate), 0);
    th_ok(tasker_unsubscribe(sub));
    pthread_join(opener, NULL);
    assert_int_equal(col->n, 14);
    assert_int_equal(tasker_subscription_dropped(NULL), 0);
    assert_int_equal(col->freed, 1);
    assert_int_equal(col->calls_at_free, 14);
    assert_int_equal(col->ev[13].type, TASKER_EVENT_TASK_COMPLETED);
    /* No callback after unsubscribe returned. */
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    th_sleep_ms(20);
    assert_int_equal(col->n, 14);
}

static void close_unsubscribes(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    obs_collector *col = &x->col[0];
    (void)obs_subscribe(c, TASKER_EVENT_ALL, 0, col);
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "ev", "diamond", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    x->c = NULL; /* closed here, not in teardown */
    th_ok(tasker_coordinator_close(c));
    /* Close delivered the buffered events and released the subscriber. */
    assert_int_equal(col->freed, 1);
    assert_int_equal(col->n, 14);
    assert_int_equal(col->calls_at_free, 14);
}

static int freed_count;
static void count_free(void *ud)
{
    assert_ptr_equal(ud, &freed_count);
    freed_count++;
}

static void ignore_event(const tasker_event *e, void *ud)
{
    (void)e;
    (void)ud;
}

static void subscribe_bad_args(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c;
    struct {
        const char *what;
        tasker_coordinator *coord;
        int null_out;
        uint32_t mask;
        size_t buffer;
        tasker_event_fn fn;
    } cases[] = {
        {"mask 0", c, 0, 0, 0, ignore_event},
        {"unknown bit 12", c, 0, 1u << 12, 0, ignore_event},
        {"known and unknown bits", c, 0, TASKER_EVENT_ALL | (1u << 31), 0, ignore_event},
        {"NULL fn", c, 0, TASKER_EVENT_ALL, 0, NULL},
        {"huge buffer", c, 0, TASKER_EVENT_ALL, SIZE_MAX, ignore_event},
        {"buffer of 2^40 events", c, 0, TASKER_EVENT_ALL, (size_t)1 << 40, ignore_event},
        {"NULL coordinator", NULL, 0, TASKER_EVENT_ALL, 0, ignore_event},
        {"NULL out", c, 1, TASKER_EVENT_ALL, 0, ignore_event},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tasker_subscription *sub = (tasker_subscription *)&cases[i];
        freed_count = 0;
        tasker_error_clear();
        int rc = tasker_subscribe(cases[i].null_out ? NULL : &sub, cases[i].coord, cases[i].mask,
                                  cases[i].buffer, cases[i].fn, &freed_count, count_free);
        if (rc != TASKER_EINVAL)
            fail_msg("%s: tasker_subscribe returned %d, expected TASKER_EINVAL", cases[i].what,
                     rc);
        th_assert_error(TASKER_EINVAL, NULL);
        assert_int_equal(tasker_error_last()->category, TASKER_CATEGORY_ARGUMENT);
        if (!cases[i].null_out && sub != NULL)
            fail_msg("%s: out was not set to NULL", cases[i].what);
        if (freed_count != 1)
            fail_msg("%s: free_userdata called %d times, expected 1", cases[i].what,
                     freed_count);
    }
    /* A refused subscription selects nothing: the run emits to nobody. */
    th_ok(tasker_unsubscribe(NULL));
    assert_int_equal(tasker_subscription_delivered(NULL), 0);
    assert_int_equal(tasker_subscription_dropped(NULL), 0);

    /* Every single known bit is accepted. */
    for (uint32_t bit = 1; bit & TASKER_EVENT_ALL; bit <<= 1) {
        tasker_subscription *sub = NULL;
        freed_count = 0;
        th_ok(tasker_subscribe(&sub, c, bit, 1, ignore_event, &freed_count, count_free));
        th_ok(tasker_unsubscribe(sub));
        assert_int_equal(freed_count, 1);
    }
}

static void circuit_changed_events(void **state)
{
    fixture *x = *state;
    /* This test needs breakers on: replace the fixture's coordinator. */
    th_ok(tasker_coordinator_close(x->c));
    x->c = NULL;
    tasker_coordinator *c = x->c =
        th_open("breaker.failure_threshold", "2", "breaker.open_ms", "100", NULL);
    th_handler(c, "cb", obs_scripted, NULL);
    th_register(c, "{\"namespace\":\"evc\",\"name\":\"cbt\",\"steps\":[{\"name\":\"s\","
                   "\"handler\":\"cb\",\"retry\":{\"max_attempts\":3,\"backoff\":\"none\","
                   "\"base_ms\":0,\"max_ms\":0}}]}");
    obs_collector *col = &x->col[0];
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    /* Two failures open the circuit; the retry waits for half-open, succeeds
     * and closes it. */
    th_create(uuid, c, "evc", "cbt", "{\"fail_until\": 2}");
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_true(obs_wait_count(col, TASKER_EVENT_CIRCUIT_CHANGED, 3));

    th_ok(tasker_circuit_force(c, "namespace:evc", TASKER_CIRCUIT_FORCE_OPEN));
    th_ok(tasker_circuit_force(c, "namespace:evc", TASKER_CIRCUIT_FORCE_CLOSED));
    th_ok(tasker_unsubscribe(sub));

    assert_int_equal(obs_count(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL), 5);
    assert_int_equal(obs_count(col, TASKER_EVENT_STEP_STARTED, NULL), 3);
    const char *want[5][2] = {{"handler:cb", "open"},
                              {"handler:cb", "half_open"},
                              {"handler:cb", "closed"},
                              {"namespace:evc", "open"},
                              {"namespace:evc", "closed"}};
    size_t at = 0;
    long pos[5];
    for (int i = 0; i < 5; i++) {
        pos[i] = obs_find(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL, at);
        assert_true(pos[i] >= 0);
        obs_ev *e = &col->ev[pos[i]];
        assert_string_equal(e->circuit, want[i][0]);
        assert_string_equal(e->cstate, want[i][1]);
        assert_string_equal(e->task, "");
        assert_string_equal(e->step_uuid, "");
        assert_string_equal(e->step, "");
        assert_string_equal(e->tmpl, "");
        assert_string_equal(e->eclass, "");
        /* A handler circuit has no namespace; a namespace circuit names its own. */
        assert_string_equal(e->ns, i < 3 ? "" : "evc");
        at = (size_t)pos[i] + 1;
    }
    /* Circuit events among failure, step and task events: no field of one
     * shows in another. */
    for (size_t i = 0; i < col->n; i++)
        assert_unused_fields_empty(&col->ev[i]);
    /* Attempt 3 started only once the circuit was half-open, and closed it. */
    long third = -1;
    for (size_t i = 0; i < col->n; i++)
        if (col->ev[i].type == TASKER_EVENT_STEP_STARTED && col->ev[i].attempt == 3)
            third = (long)i;
    assert_true(third > pos[1] && third < pos[2]);
    assert_true(obs_find(col, TASKER_EVENT_STEP_STARTED, NULL, (size_t)pos[0]) == third);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(diamond_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_then_success_events, setup, teardown),
        cmocka_unit_test_setup_teardown(failure_dead_letters, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_events, setup, teardown),
        cmocka_unit_test_setup_teardown(mask_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_subscriber_does_not_stall, setup, teardown),
        cmocka_unit_test_setup_teardown(unsubscribe_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(close_unsubscribes, setup, teardown),
        cmocka_unit_test_setup_teardown(subscribe_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(circuit_changed_events, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
