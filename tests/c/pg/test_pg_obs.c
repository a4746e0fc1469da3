/*
 * Events, metrics, health and status of the postgres store (issue 5):
 * the lifecycle events of this process's own actions through the usual
 * subscriptions, none for what another process did, a Prometheus text
 * that parses and counts a known workload (queue depth read from SQL),
 * and the health and status reports read from the database.
 */
#define _GNU_SOURCE
#include "obs_util.h"
#include "pgt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres.h"

static const char *url;

static const char *DIAMOND =
    "{\"namespace\":\"pgev\",\"name\":\"diamond\",\"steps\":["
    "{\"name\":\"a\",\"handler\":\"node\"},"
    "{\"name\":\"b\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
    "{\"name\":\"c\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
    "{\"name\":\"d\",\"handler\":\"node\",\"depends_on\":[\"b\",\"c\"]}]}";
static const char *ONE =
    "{\"namespace\":\"pgev\",\"name\":\"one\",\"steps\":[{\"name\":\"s\",\"handler\":\"scripted\","
    "\"retry\":{\"max_attempts\":3,\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}}]}";
static const char *PERM =
    "{\"namespace\":\"pgev\",\"name\":\"perm\",\"steps\":[{\"name\":\"s\",\"handler\":\"scripted\","
    "\"retry\":{\"max_attempts\":1}}]}";
static const char *WAIT =
    "{\"namespace\":\"pgev\",\"name\":\"wait\",\"steps\":[{\"name\":\"w\",\"handler\":\"polled\"}]}";

static tasker_coordinator *open_worker(int register_handlers)
{
    tasker_coordinator *c = pgt_open(url);
    if (register_handlers) {
        th_handler(c, "node", th_handler_node, NULL);
        th_handler(c, "scripted", obs_scripted, NULL);
        th_handler(c, "polled", NULL, NULL);
    }
    th_register(c, DIAMOND);
    th_register(c, ONE);
    th_register(c, PERM);
    th_register(c, WAIT);
    return c;
}

/* Events of `type` for task `task` (NULL: any task). */
static size_t count_for(obs_collector *col, uint32_t type, const char *task)
{
    size_t n = 0;
    pthread_mutex_lock(&col->mu);
    for (size_t i = 0; i < col->n; i++)
        if (col->ev[i].type == type && (!task || !strcmp(col->ev[i].task, task)))
            n++;
    pthread_mutex_unlock(&col->mu);
    return n;
}

/* Index of the first event of `type` for task/step; -1 if none. */
static long find_for(obs_collector *col, uint32_t type, const char *task, const char *step)
{
    long found = -1;
    pthread_mutex_lock(&col->mu);
    for (size_t i = 0; i < col->n && found < 0; i++)
        if (col->ev[i].type == type && !strcmp(col->ev[i].task, task) &&
            (!step || !strcmp(col->ev[i].step, step)))
            found = (long)i;
    pthread_mutex_unlock(&col->mu);
    return found;
}

static void wait_events(obs_collector *col, size_t n)
{
    double until = th_now_ms() + th_wait_ms();
    while (th_now_ms() < until) {
        pthread_mutex_lock(&col->mu);
        size_t have = col->n;
        pthread_mutex_unlock(&col->mu);
        if (have >= n)
            return;
        th_sleep_ms(10);
    }
    fail_msg("fewer than %zu events arrived", n);
}

static void events_of_own_actions(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *c = open_worker(1);
    obs_collector col;
    obs_collector_init(&col, NULL);
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, &col);
    th_ok(tasker_coordinator_start(c, 2));
    char dia[TASKER_UUID_BUFSIZE], one[TASKER_UUID_BUFSIZE], perm[TASKER_UUID_BUFSIZE],
        wait[TASKER_UUID_BUFSIZE];
    int64_t t0 = obs_real_ns();
    th_create(dia, c, "pgev", "diamond", NULL);
    th_create(one, c, "pgev", "one", "{\"fail_until\": 1}");
    th_create(perm, c, "pgev", "perm", "{\"fail_until\": 9, \"retryable\": false, \"class\": \"Boom\"}");
    th_create(wait, c, "pgev", "wait", NULL);
    assert_int_equal(th_wait_final(c, dia), TASKER_TASK_COMPLETE);
    assert_int_equal(th_wait_final(c, one), TASKER_TASK_COMPLETE);
    assert_int_equal(th_wait_final(c, perm), TASKER_TASK_ERROR);
    th_ok(tasker_task_cancel(c, wait));
    /* 4 created, 7 started, 5 succeeded, 2 failed, 1 retry, 1 dead letter,
     * 2 completed, 1 failed, 1 step cancelled, 1 task cancelled. */
    wait_events(&col, 25);
    th_sleep_ms(200); /* nothing more may come */
    int64_t t1 = obs_real_ns();
    th_ok(tasker_unsubscribe(sub));
    assert_int_equal(col.n, 25);
    assert_int_equal(count_for(&col, TASKER_EVENT_TASK_CREATED, NULL), 4);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_STARTED, NULL), 7);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_SUCCEEDED, NULL), 5);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_FAILED, NULL), 2);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_RETRY_SCHEDULED, one), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_DEAD_LETTERED, perm), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_TASK_COMPLETED, dia), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_TASK_COMPLETED, one), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_TASK_FAILED, perm), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_TASK_CANCELLED, wait), 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_CANCELLED, wait), 1);
    /* Enqueues happen inside the database's transactions (of any process):
     * the postgres store has no step_enqueued events. */
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_ENQUEUED, NULL), 0);

    /* Names, uuids and attempts as the memory store gives them. */
    json_t *task = th_task(c, dia);
    for (size_t i = 0; i < col.n; i++) {
        obs_ev *e = &col.ev[i];
        assert_string_equal(e->ns, "pgev");
        assert_string_equal(e->circuit, "");
        if (e->at < t0 - 1000000000LL || e->at > t1 + 1000000000LL)
            fail_msg("event %zu (%s) at %lld is outside the run", i, obs_event_name(e->type),
                     (long long)e->at);
        if (strcmp(e->task, dia) != 0)
            continue;
        assert_string_equal(e->tmpl, "diamond");
        if (e->type == TASKER_EVENT_TASK_CREATED || e->type == TASKER_EVENT_TASK_COMPLETED) {
            assert_string_equal(e->step, "");
            assert_string_equal(e->step_uuid, "");
            continue;
        }
        assert_string_equal(e->step_uuid, obs_step_uuid(task, e->step));
        assert_string_equal(e->handler, "node");
        assert_int_equal(e->attempt, 1);
    }
    json_decref(task);
    const char *steps[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        long st = find_for(&col, TASKER_EVENT_STEP_STARTED, dia, steps[i]);
        long ok = find_for(&col, TASKER_EVENT_STEP_SUCCEEDED, dia, steps[i]);
        assert_true(st >= 0 && ok > st);
    }
    assert_true(find_for(&col, TASKER_EVENT_STEP_SUCCEEDED, dia, "a") <
                find_for(&col, TASKER_EVENT_STEP_STARTED, dia, "b"));
    assert_true(find_for(&col, TASKER_EVENT_STEP_SUCCEEDED, dia, "d") <
                find_for(&col, TASKER_EVENT_TASK_COMPLETED, dia, NULL));
    assert_int_equal(find_for(&col, TASKER_EVENT_TASK_CREATED, dia, NULL) <
                         find_for(&col, TASKER_EVENT_STEP_STARTED, dia, "a"),
                     1);

    /* The retried step: failed on attempt 1 with its class and message,
     * retry scheduled, started again as attempt 2. */
    obs_ev *f = &col.ev[find_for(&col, TASKER_EVENT_STEP_FAILED, one, "s")];
    assert_string_equal(f->eclass, "ScriptedError");
    assert_string_equal(f->emsg, "boom on attempt 1");
    assert_string_equal(f->handler, "scripted");
    assert_int_equal(f->attempt, 1);
    obs_ev *r = &col.ev[find_for(&col, TASKER_EVENT_STEP_RETRY_SCHEDULED, one, "s")];
    assert_int_equal(r->attempt, 1);
    assert_int_equal(count_for(&col, TASKER_EVENT_STEP_STARTED, one), 2);
    obs_ev *d = &col.ev[find_for(&col, TASKER_EVENT_STEP_DEAD_LETTERED, perm, "s")];
    assert_string_equal(d->eclass, "Boom");
    assert_string_equal(d->emsg, "boom on attempt 1");
    assert_string_equal(d->tmpl, "perm");
    obs_ev *x = &col.ev[find_for(&col, TASKER_EVENT_TASK_CANCELLED, wait, NULL)];
    assert_string_equal(x->tmpl, "wait");
    assert_string_equal(x->step, "");
    long xs = find_for(&col, TASKER_EVENT_STEP_CANCELLED, wait, "w");
    assert_true(xs >= 0 && xs < find_for(&col, TASKER_EVENT_TASK_CANCELLED, wait, NULL));
    assert_string_equal(col.ev[xs].handler, "polled");
    assert_int_equal(col.ev[xs].attempt, 0);
    json_t *wt = th_task(c, wait);
    assert_string_equal(col.ev[xs].step_uuid, obs_step_uuid(wt, "w"));
    json_decref(wt);

    th_ok(tasker_coordinator_close(c));
    obs_collector_destroy(&col);
    th_assert_no_problems();
}

static void no_events_for_other_processes_actions(void **state)
{
    (void)state;
    pgt_require();
    /* A produces (no worker threads), B runs the steps. */
    tasker_coordinator *a = open_worker(1), *b = open_worker(1);
    obs_collector ca, cb;
    obs_collector_init(&ca, NULL);
    obs_collector_init(&cb, NULL);
    tasker_subscription *sa = obs_subscribe(a, TASKER_EVENT_ALL, 0, &ca);
    tasker_subscription *sb = obs_subscribe(b, TASKER_EVENT_ALL, 0, &cb);
    th_ok(tasker_coordinator_start(b, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "pgev", "diamond", NULL);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);
    wait_events(&cb, 9);
    th_sleep_ms(200);
    th_ok(tasker_unsubscribe(sa));
    th_ok(tasker_unsubscribe(sb));
    assert_int_equal(ca.n, 1);
    assert_int_equal(ca.ev[0].type, TASKER_EVENT_TASK_CREATED);
    assert_string_equal(ca.ev[0].task, uuid);
    assert_int_equal(cb.n, 9);
    assert_int_equal(count_for(&cb, TASKER_EVENT_TASK_CREATED, NULL), 0);
    assert_int_equal(count_for(&cb, TASKER_EVENT_STEP_STARTED, uuid), 4);
    assert_int_equal(count_for(&cb, TASKER_EVENT_STEP_SUCCEEDED, uuid), 4);
    assert_int_equal(count_for(&cb, TASKER_EVENT_TASK_COMPLETED, uuid), 1);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
    obs_collector_destroy(&ca);
    obs_collector_destroy(&cb);
    th_assert_no_problems();
}

static double metric(prom_doc *d, const char *name, const char *label, const char *value,
                     const char *label2, const char *value2)
{
    return label2 ? prom_get(d, name, label, value, label2, value2, NULL)
                  : label ? prom_get(d, name, label, value, NULL) : prom_get(d, name, NULL);
}

/* Waits until the metrics show `want` for a sample (the flusher counts
 * after the database has the outcome, so a waiter may be a moment ahead). */
static void wait_metric(tasker_coordinator *c, double want, const char *name, const char *label,
                        const char *value, const char *label2, const char *value2)
{
    double until = th_now_ms() + th_wait_ms(), got = NAN;
    while (th_now_ms() < until) {
        prom_doc d;
        obs_metrics(c, &d);
        got = metric(&d, name, label, value, label2, value2);
        prom_doc_free(&d);
        if (got == want)
            return;
        th_sleep_ms(20);
    }
    fail_msg("%s{%s=%s,%s=%s} is %g, expected %g", name, label ? label : "", value ? value : "",
             label2 ? label2 : "", value2 ? value2 : "", got, want);
}

static void metrics_health_and_status(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *c = open_worker(1);
    th_ok(tasker_coordinator_start(c, 2));
    char u[10][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 3; i++)
        th_create(u[i], c, "pgev", "diamond", NULL);
    th_create(u[3], c, "pgev", "one", "{\"fail_until\": 1}");
    th_create(u[4], c, "pgev", "perm", "{\"fail_until\": 9, \"retryable\": false, \"class\": \"Boom\"}");
    for (int i = 5; i < 10; i++)
        th_create(u[i], c, "pgev", "wait", NULL); /* poll mode: nobody claims them */
    for (int i = 0; i < 5; i++)
        assert_int_equal(th_wait_final(c, u[i]), i == 4 ? TASKER_TASK_ERROR : TASKER_TASK_COMPLETE);
    wait_metric(c, 4, "tasker_tasks_total", "namespace", "pgev", "outcome", "completed");

    prom_doc d;
    obs_metrics(c, &d);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "node", "outcome", "started"), 12);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "node", "outcome", "succeeded"), 12);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "scripted", "outcome", "started"), 3);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "scripted", "outcome", "succeeded"), 1);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "scripted", "outcome", "failed"), 2);
    obs_assert_metric(metric(&d, "tasker_step_attempts_total", "handler", "scripted", "outcome", "timed_out"), 0);
    obs_assert_metric(metric(&d, "tasker_step_retries_total", "handler", "scripted", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_dead_letters_total", "handler", "scripted", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_tasks_total", "namespace", "pgev", "outcome", "created"), 10);
    obs_assert_metric(metric(&d, "tasker_tasks_total", "namespace", "pgev", "outcome", "failed"), 1);
    obs_assert_metric(metric(&d, "tasker_queue_wait_seconds_count", "handler", "node", NULL, NULL), 12);
    obs_assert_metric(metric(&d, "tasker_handler_duration_seconds_count", "handler", "scripted", NULL, NULL), 3);
    obs_assert_metric(metric(&d, "tasker_task_duration_seconds_count", "namespace", "pgev", NULL, NULL), 5);
    /* From SQL: the five steps nobody claims. */
    obs_assert_metric(metric(&d, "tasker_queue_depth", "namespace", "pgev", NULL, NULL), 5);
    obs_assert_metric(metric(&d, "tasker_store_up", "store", "postgres", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_store_connection_up", "connection", "listener", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_store_connection_up", "connection", "flusher", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_store_connection_up", "connection", "probe", NULL, NULL), 1);
    obs_assert_metric(metric(&d, "tasker_steps_claimed_total", NULL, NULL, NULL, NULL), 15);
    obs_assert_metric(metric(&d, "tasker_steps_recorded_total", NULL, NULL, NULL, NULL), 15);
    obs_assert_metric(metric(&d, "tasker_steps_in_flight", NULL, NULL, NULL, NULL), 0);
    obs_assert_metric(metric(&d, "tasker_fenced_completions_total", NULL, NULL, NULL, NULL), 0);
    obs_assert_metric(metric(&d, "tasker_store_errors_total", NULL, NULL, NULL, NULL), 0);
    obs_assert_metric(metric(&d, "tasker_circuit_state", "circuit", "namespace:pgev", NULL, NULL), 0);
    assert_true(metric(&d, "tasker_store_connects_total", "outcome", "ok", NULL, NULL) >= 4);
    prom_doc_free(&d);

    json_t *h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "ok");
    json_t *store = json_object_get(h, "store");
    assert_string_equal(json_string_value(json_object_get(store, "kind")), "postgres");
    assert_true(json_is_true(json_object_get(store, "reachable")));
    json_t *ns = json_object_get(json_object_get(h, "namespaces"), "pgev");
    assert_int_equal(json_integer_value(json_object_get(ns, "queue_depth")), 5);
    assert_true(json_real_value(json_object_get(ns, "oldest_ready_age_ms")) > 0);
    assert_non_null(json_object_get(json_object_get(h, "circuits"), "namespace:pgev"));
    assert_non_null(json_object_get(json_object_get(h, "circuits"), "handler:scripted"));
    json_decref(h);

    json_t *s = obs_status(c);
    json_t *tasks = json_object_get(json_object_get(s, "tasks"), "pgev");
    assert_int_equal(json_integer_value(json_object_get(tasks, "complete")), 4);
    assert_int_equal(json_integer_value(json_object_get(tasks, "error")), 1);
    assert_int_equal(json_integer_value(json_object_get(tasks, "pending")), 5);
    json_t *recent = json_object_get(s, "recent_failures");
    assert_int_equal(json_array_size(recent), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *e = json_array_get(recent, i);
        assert_string_equal(json_string_value(json_object_get(e, "namespace")), "pgev");
        assert_string_equal(json_string_value(json_object_get(e, "step")), "s");
        assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
    }
    /* Newest first: perm's failure came after one's (both attempt 1),
     * unless they were recorded in one batch; either way both are there. */
    const char *c0 = json_string_value(json_object_get(json_array_get(recent, 0), "class"));
    const char *c1 = json_string_value(json_object_get(json_array_get(recent, 1), "class"));
    assert_true((!strcmp(c0, "Boom") && !strcmp(c1, "ScriptedError")) ||
                (!strcmp(c1, "Boom") && !strcmp(c0, "ScriptedError")));
    json_t *dead = json_object_get(s, "dead_letters");
    assert_int_equal(json_array_size(dead), 1);
    json_t *dl = json_array_get(dead, 0);
    assert_string_equal(json_string_value(json_object_get(dl, "task_uuid")), u[4]);
    assert_string_equal(json_string_value(json_object_get(dl, "template")), "perm");
    assert_string_equal(json_string_value(json_object_get(dl, "class")), "Boom");
    assert_int_equal(json_integer_value(json_object_get(dl, "attempts")), 1);
    assert_non_null(json_object_get(json_object_get(s, "circuits"), "handler:node"));
    json_decref(s);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

/* A late completion after the lease was lost is refused and counted in
 * tasker_fenced_completions_total, as in the memory store. */
static void fenced_completions_are_counted(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *c = pgt_open_tuned(url, 0, 100);
    th_handler(c, "polled", NULL, NULL);
    th_register(c, WAIT);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "pgev", "wait", NULL);
    tasker_step *s1 = th_claim_one(c);
    pgt_exec("UPDATE tasker.queue SET visible_at = now() - interval '1 second' "
             "WHERE leased_by IS NOT NULL");
    tasker_step *s2 = th_claim_one(c);
    assert_int_equal(tasker_step_succeed(s1, NULL, 0), TASKER_ESTALE);
    th_ok(tasker_step_succeed(s2, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    prom_doc d;
    obs_metrics(c, &d);
    obs_assert_metric(metric(&d, "tasker_fenced_completions_total", NULL, NULL, NULL, NULL), 1);
    prom_doc_free(&d);
    th_ok(tasker_coordinator_close(c));
}

static int setup(void **state)
{
    (void)state;
    if (getenv("TASKER_TEST_DATABASE_URL"))
        url = pgt_fresh_db("obs", 1);
    return 0;
}

/* Each test starts from empty tables: counts in the database are exact. */
static int clean(void **state)
{
    (void)state;
    if (url)
        pgt_exec("TRUNCATE tasker.tasks, tasker.steps, tasker.queue, tasker.queue_archive, "
                 "tasker.dead_letters, tasker.step_errors, tasker.transitions, tasker.fenced");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(events_of_own_actions, clean),
        cmocka_unit_test_setup(no_events_for_other_processes_actions, clean),
        cmocka_unit_test_setup(metrics_health_and_status, clean),
        cmocka_unit_test_setup(fenced_completions_are_counted, clean),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
