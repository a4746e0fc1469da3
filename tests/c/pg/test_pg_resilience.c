/*
 * Resilience of the postgres store (issue 5): handler timeouts (the
 * attempt fails as a retryable tasker.TimeoutError with reason timed_out,
 * the late completion is refused and counted), the handler circuit (an
 * open circuit stops claiming that handler's steps, then recovers), and
 * namespace isolation: a namespace whose queue operations fail (a trigger
 * raising an exception when its queue rows are claimed) does not block
 * another namespace, opens its own circuit, and recovers when repaired.
 */
#define _GNU_SOURCE
#include "obs_util.h"
#include "pgt.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres.h"

static const char *url;

#define SLOW(name, handler, timeout, attempts)                                                  \
    "{\"namespace\":\"to\",\"name\":\"" name "\",\"steps\":[{\"name\":\"t\",\"handler\":\""     \
    handler "\",\"timeout_ms\":" #timeout ",\"retry\":{\"max_attempts\":" #attempts               \
    ",\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}}]}"

/* Attempt 1 blocks at the gate, then completes late; later attempts
 * succeed at once. */
typedef struct slow {
    obs_gate gate;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int late_done, late_rc;
} slow;

static int slow_handler(tasker_step *step, void *ud)
{
    slow *s = ud;
    if (tasker_step_attempt(step) == 1) {
        obs_gate_pass(&s->gate);
        int rc = tasker_step_succeed(step, "{\"late\": true}", 0);
        pthread_mutex_lock(&s->mu);
        s->late_rc = rc;
        s->late_done = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return TASKER_OK;
    }
    if (tasker_step_succeed(step, "{\"late\": false}", 0) != TASKER_OK)
        th_problem("attempt %u: succeed failed", tasker_step_attempt(step));
    return TASKER_OK;
}

static int wait_late(slow *s)
{
    double until = th_now_ms() + th_wait_ms();
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int done = s->late_done, rc = s->late_rc;
        pthread_mutex_unlock(&s->mu);
        if (done)
            return rc;
        if (th_now_ms() > until)
            fail_msg("the timed-out attempt never completed");
        th_sleep_ms(10);
    }
}

static double attempts_metric(tasker_coordinator *c, const char *handler, const char *outcome)
{
    prom_doc d;
    obs_metrics(c, &d);
    double v = prom_get(&d, "tasker_step_attempts_total", "handler", handler, "outcome", outcome,
                        NULL);
    prom_doc_free(&d);
    return v;
}

static double plain_metric(tasker_coordinator *c, const char *name)
{
    prom_doc d;
    obs_metrics(c, &d);
    double v = prom_get(&d, name, NULL);
    prom_doc_free(&d);
    return v;
}

static void worker_timeout_retries_and_late_result_is_stale(void **state)
{
    (void)state;
    pgt_require();
    slow s = {.late_done = 0};
    obs_gate_init(&s.gate, 1);
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    tasker_coordinator *c = pgt_open(url);
    th_handler(c, "slow", slow_handler, &s);
    th_register(c, SLOW("slow", "slow", 300, 2));
    obs_collector col;
    obs_collector_init(&col, NULL);
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_ALL, 0, &col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    double t0 = th_now_ms();
    th_create(uuid, c, "to", "slow", NULL);
    /* Attempt 1 is still at the gate: the timeout fails it and attempt 2
     * (on the other thread) finishes the task. */
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_true(th_now_ms() - t0 >= 300);
    obs_gate_open(&s.gate);
    assert_int_equal(wait_late(&s), TASKER_ESTALE);

    json_t *t = th_task(c, uuid);
    json_t *st = th_step(t, "t");
    assert_int_equal(json_integer_value(json_object_get(st, "attempts")), 2);
    assert_false(json_is_true(json_object_get(json_object_get(st, "result"), "late")));
    json_t *e = json_array_get(json_object_get(st, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")), "tasker.TimeoutError");
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "handler did not finish within 300 ms");
    assert_true(json_is_true(json_object_get(e, "retryable")));
    assert_int_equal(th_count_transitions(t, "t", "in_progress", "waiting_for_retry", "timed_out", 1),
                     1);
    json_decref(t);

    obs_assert_metric(attempts_metric(c, "slow", "timed_out"), 1);
    obs_assert_metric(attempts_metric(c, "slow", "failed"), 1);
    obs_assert_metric(attempts_metric(c, "slow", "succeeded"), 1);
    obs_assert_metric(plain_metric(c, "tasker_fenced_completions_total"), 1);
    assert_true(obs_wait_count(&col, TASKER_EVENT_STEP_RETRY_SCHEDULED, 1));
    long f = obs_find(&col, TASKER_EVENT_STEP_FAILED, "t", 0);
    assert_true(f >= 0);
    assert_string_equal(col.ev[f].eclass, "tasker.TimeoutError");
    assert_int_equal(col.ev[f].attempt, 1);
    th_ok(tasker_unsubscribe(sub));
    th_ok(tasker_coordinator_close(c));
    obs_collector_destroy(&col);
    obs_gate_destroy(&s.gate);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    th_assert_no_problems();
}

static void timeout_on_last_attempt_dead_letters(void **state)
{
    (void)state;
    pgt_require();
    slow s = {.late_done = 0};
    obs_gate_init(&s.gate, 1);
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    tasker_coordinator *c = pgt_open(url);
    th_handler(c, "slow1", slow_handler, &s);
    th_register(c, SLOW("slow1", "slow1", 200, 1));
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "to", "slow1", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    obs_gate_open(&s.gate);
    assert_int_equal(wait_late(&s), TASKER_ESTALE);
    json_t *t = th_task(c, uuid);
    assert_string_equal(th_step_state(t, "t"), "error");
    assert_int_equal(th_count_transitions(t, "t", "in_progress", "error", "timed_out", 1), 1);
    json_decref(t);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.dead_letters d JOIN tasker.tasks k "
                             "ON k.id = d.task_id WHERE k.uuid = $1::uuid AND d.reason = 15 "
                             "AND d.error_class = 'tasker.TimeoutError'", uuid),
                     1);
    th_ok(tasker_coordinator_close(c));
    obs_gate_destroy(&s.gate);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
}

static void poll_mode_timeout(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *c = pgt_open_tuned(url, 0, 100);
    th_handler(c, "polled", NULL, NULL);
    th_register(c, SLOW("polled", "polled", 150, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "to", "polled", NULL);
    tasker_step *s1 = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(s1), 1);
    th_sleep_ms(400);
    assert_int_equal(tasker_step_succeed(s1, NULL, 0), TASKER_ESTALE);
    tasker_step *s2 = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(s2), 2);
    th_ok(tasker_step_succeed(s2, "{\"ok\": 1}", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(c, uuid);
    assert_int_equal(th_count_transitions(t, "t", "in_progress", "waiting_for_retry", "timed_out", 1),
                     1);
    json_decref(t);
    obs_assert_metric(attempts_metric(c, "polled", "timed_out"), 1);
    th_ok(tasker_coordinator_close(c));
}

/* ---- handler circuit ----------------------------------------------------------- */

typedef struct flaky {
    atomic_int fail;
    atomic_int calls;
} flaky;

static int flaky_handler(tasker_step *step, void *ud)
{
    flaky *f = ud;
    atomic_fetch_add(&f->calls, 1);
    if (atomic_load(&f->fail)) {
        tasker_failure fl = TASKER_FAILURE_INIT;
        fl.error_class = "Flaky";
        fl.retryable = 0;
        return tasker_step_fail(step, &fl);
    }
    return tasker_step_succeed(step, NULL, 0);
}

static int wait_circuit(tasker_coordinator *c, const char *name, tasker_circuit_state want)
{
    double until = th_now_ms() + th_wait_ms();
    tasker_circuit_state st = TASKER_CIRCUIT_CLOSED;
    while (th_now_ms() < until) {
        if (tasker_circuit_get(&st, c, name) == TASKER_OK && st == want)
            return 1;
        th_sleep_ms(5);
    }
    return 0;
}

static void handler_circuit_stops_claims_and_recovers(void **state)
{
    (void)state;
    pgt_require();
    flaky f;
    atomic_init(&f.fail, 1);
    atomic_init(&f.calls, 0);
    tasker_coordinator *c =
        th_open("store", "postgres", "database.url", url, "breaker.failure_threshold", "2",
                "breaker.open_ms", "1500", NULL);
    th_handler(c, "flaky", flaky_handler, &f);
    th_register(c, "{\"namespace\":\"hc\",\"name\":\"one\",\"steps\":[{\"name\":\"s\","
                   "\"handler\":\"flaky\",\"retry\":{\"max_attempts\":1}}]}");
    obs_collector col;
    obs_collector_init(&col, NULL);
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_CIRCUIT_CHANGED, 0, &col);
    enum { N = 16 };
    char u[N][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < N; i++)
        th_create(u[i], c, "hc", "one", NULL);
    th_ok(tasker_coordinator_start(c, 1));
    assert_true(wait_circuit(c, "handler:flaky", TASKER_CIRCUIT_OPEN));
    /* Steps claimed before the circuit opened still run; nothing more is
     * claimed while it is open. */
    th_sleep_ms(300);
    int calls = atomic_load(&f.calls);
    th_sleep_ms(500);
    assert_int_equal(atomic_load(&f.calls), calls);
    assert_true(calls < N);
    json_t *h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "degraded");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(h, "circuits"), "handler:flaky"),
                            "state")),
                        "open");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(json_object_get(h, "namespaces"), "hc"),
                                           "queue_depth")),
        N - calls);
    json_decref(h);
    /* The handler is repaired: after breaker.open_ms a trial step goes
     * through, the circuit closes and the rest run. */
    atomic_store(&f.fail, 0);
    int complete = 0, failed = 0;
    for (int i = 0; i < N; i++) {
        tasker_task_state st = th_wait_final(c, u[i]);
        complete += st == TASKER_TASK_COMPLETE;
        failed += st == TASKER_TASK_ERROR;
    }
    assert_int_equal(failed, calls);
    assert_int_equal(complete, N - calls);
    assert_int_equal(atomic_load(&f.calls), N);
    assert_true(wait_circuit(c, "handler:flaky", TASKER_CIRCUIT_CLOSED));
    th_ok(tasker_unsubscribe(sub));
    /* open -> half_open -> closed, in that order. */
    assert_true(col.n >= 3);
    assert_string_equal(col.ev[0].cstate, "open");
    assert_string_equal(col.ev[col.n - 2].cstate, "half_open");
    assert_string_equal(col.ev[col.n - 1].cstate, "closed");
    for (size_t i = 0; i < col.n; i++)
        assert_string_equal(col.ev[i].circuit, "handler:flaky");
    th_ok(tasker_coordinator_close(c));
    obs_collector_destroy(&col);
    th_assert_no_problems();
}

/* ---- namespace isolation ----------------------------------------------------- */

/* Makes claiming queue rows of namespace `bad` fail, as a broken
 * partition, a revoked privilege or a faulty extension would. */
static void break_namespace(void)
{
    pgt_exec("CREATE OR REPLACE FUNCTION public.tk_test_break() RETURNS trigger "
             "LANGUAGE plpgsql AS $$ BEGIN "
             "IF NEW.leased_by IS NOT NULL AND OLD.leased_by IS NULL AND NEW.namespace_id = "
             "(SELECT id FROM tasker.namespaces WHERE name = 'bad') THEN "
             "RAISE EXCEPTION 'the queue of namespace bad is broken'; END IF; "
             "RETURN NEW; END $$");
    pgt_exec("DROP TRIGGER IF EXISTS tk_test_break ON tasker.queue");
    pgt_exec("CREATE TRIGGER tk_test_break BEFORE UPDATE ON tasker.queue "
             "FOR EACH ROW EXECUTE FUNCTION public.tk_test_break()");
}

static void repair_namespace(void)
{
    pgt_exec("DROP TRIGGER IF EXISTS tk_test_break ON tasker.queue");
}

static const char *JOB_BAD = "{\"namespace\":\"bad\",\"name\":\"job\",\"steps\":["
                             "{\"name\":\"a\",\"handler\":\"work\"},"
                             "{\"name\":\"b\",\"handler\":\"work\",\"depends_on\":[\"a\"]}]}";
static const char *JOB_GOOD = "{\"namespace\":\"good\",\"name\":\"job\",\"steps\":["
                              "{\"name\":\"a\",\"handler\":\"work\"},"
                              "{\"name\":\"b\",\"handler\":\"work\",\"depends_on\":[\"a\"]}]}";

static void run_isolation(tasker_coordinator *c, int with_breaker)
{
    th_counter calls;
    th_counter_init(&calls);
    th_handler(c, "work", th_handler_count, &calls);
    th_register(c, JOB_BAD);
    th_register(c, JOB_GOOD);
    obs_collector col;
    obs_collector_init(&col, NULL);
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_CIRCUIT_CHANGED, 0, &col);
    break_namespace();
    enum { NB = 10, NG = 40 };
    char bad[NB][TASKER_UUID_BUFSIZE], good[NG][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < NB; i++)
        th_create(bad[i], c, "bad", "job", NULL);
    th_ok(tasker_coordinator_start(c, 2));
    for (int i = 0; i < NG; i++)
        th_create(good[i], c, "good", "job", NULL);
    for (int i = 0; i < NG; i++)
        assert_int_equal(th_wait_final(c, good[i]), TASKER_TASK_COMPLETE);
    for (int i = 0; i < NB; i++)
        assert_int_equal(th_task_state(c, bad[i]), TASKER_TASK_PENDING);
    assert_int_equal(th_counter_get(&calls), 2 * NG);
    assert_true(plain_metric(c, "tasker_store_errors_total") >= 1);
    tasker_circuit_state st;
    th_ok(tasker_circuit_get(&st, c, "namespace:good"));
    assert_int_equal(st, TASKER_CIRCUIT_CLOSED);
    if (with_breaker) {
        assert_true(wait_circuit(c, "namespace:bad", TASKER_CIRCUIT_OPEN));
        json_t *h = obs_health(c);
        assert_string_equal(json_string_value(json_object_get(h, "status")), "degraded");
        json_t *nb = json_object_get(json_object_get(h, "namespaces"), "bad");
        assert_int_equal(json_integer_value(json_object_get(nb, "queue_depth")), NB);
        json_decref(h);
        long i = obs_find(&col, TASKER_EVENT_CIRCUIT_CHANGED, NULL, 0);
        assert_true(i >= 0);
        assert_string_equal(col.ev[i].circuit, "namespace:bad");
        assert_string_equal(col.ev[i].ns, "bad");
        assert_string_equal(col.ev[i].cstate, "open");
    } else {
        th_ok(tasker_circuit_get(&st, c, "namespace:bad"));
        assert_int_equal(st, TASKER_CIRCUIT_CLOSED); /* no breaker configured */
    }
    /* Good keeps going while bad is broken. */
    char late[TASKER_UUID_BUFSIZE];
    th_create(late, c, "good", "job", NULL);
    assert_int_equal(th_wait_final(c, late), TASKER_TASK_COMPLETE);
    /* Repaired: bad's tasks run (after breaker.open_ms with a breaker). */
    repair_namespace();
    for (int i = 0; i < NB; i++)
        assert_int_equal(th_wait_final(c, bad[i]), TASKER_TASK_COMPLETE);
    assert_int_equal(th_counter_get(&calls), 2 * (NG + 1 + NB));
    if (with_breaker)
        assert_true(wait_circuit(c, "namespace:bad", TASKER_CIRCUIT_CLOSED));
    th_ok(tasker_unsubscribe(sub));
    for (size_t i = 0; i < col.n; i++)
        assert_string_equal(col.ev[i].circuit, "namespace:bad");
    th_ok(tasker_coordinator_close(c));
    obs_collector_destroy(&col);
    th_assert_no_problems();
}

static void failing_namespace_does_not_block_another(void **state)
{
    (void)state;
    pgt_require();
    run_isolation(pgt_open(url), 0);
}

static void failing_namespace_opens_its_circuit(void **state)
{
    (void)state;
    pgt_require();
    run_isolation(th_open("store", "postgres", "database.url", url, "breaker.failure_threshold",
                          "2", "breaker.open_ms", "700", NULL),
                  1);
}

static int setup(void **state)
{
    (void)state;
    if (getenv("TASKER_TEST_DATABASE_URL"))
        url = pgt_fresh_db("res", 1);
    return 0;
}

static int clean(void **state)
{
    (void)state;
    if (url) {
        repair_namespace();
        pgt_exec("TRUNCATE tasker.tasks, tasker.steps, tasker.queue, tasker.queue_archive, "
                 "tasker.dead_letters, tasker.step_errors, tasker.transitions, tasker.fenced");
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(worker_timeout_retries_and_late_result_is_stale, clean),
        cmocka_unit_test_setup(timeout_on_last_attempt_dead_letters, clean),
        cmocka_unit_test_setup(poll_mode_timeout, clean),
        cmocka_unit_test_setup(handler_circuit_stops_claims_and_recovers, clean),
        cmocka_unit_test_setup(failing_namespace_does_not_block_another, clean),
        cmocka_unit_test_setup(failing_namespace_opens_its_circuit, clean),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
