/*
 * Handler timeouts (step option timeout_ms): a timed-out attempt fails as
 * retryable with class "tasker.TimeoutError", the retry runs, the late
 * completion of the timed-out attempt is refused with TASKER_ESTALE, the
 * metrics and the task history say "timed_out"; in poll mode the descriptor
 * wakes for the retry; a timeout on the last attempt puts the step in error.
 *
 * Handlers that must outlive their timeout block on a gate the test opens,
 * so "still running when the timeout fired" does not depend on sleeps.
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOW(name, timeout, attempts)                                                        \
    "{\"namespace\":\"to\",\"name\":\"" name "\",\"steps\":[{\"name\":\"t\",\"handler\":"   \
    "\"" name "\",\"timeout_ms\":" #timeout ",\"retry\":{\"max_attempts\":" #attempts         \
    ",\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}}]}"

/* Attempt 1 blocks at the gate (or sleeps sleep_ms), then completes late;
 * later attempts succeed at once with {"late": false}. */
typedef struct slow {
    obs_gate gate;
    unsigned sleep_ms;  /* instead of the gate when not 0 */
    int late_fails;     /* complete late with tasker_step_fail instead of succeed */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    double start_at[8];
    unsigned attempt_seen[8];
    int late_done, late_rc, late_code;
} slow;

typedef struct fixture {
    tasker_coordinator *coord;
    slow s;
    obs_collector col; /* here, not on a test's stack: see teardown */
} fixture;

static int slow_handler(tasker_step *step, void *ud)
{
    slow *s = ud;
    unsigned attempt = tasker_step_attempt(step);
    pthread_mutex_lock(&s->mu);
    int i = s->calls++;
    if (i < 8) {
        s->start_at[i] = th_now_ms();
        s->attempt_seen[i] = attempt;
    }
    pthread_mutex_unlock(&s->mu);
    if (attempt == 1) {
        if (s->sleep_ms)
            th_sleep_ms(s->sleep_ms);
        else
            obs_gate_pass(&s->gate);
        int rc = s->late_fails ? tasker_step_fail(step, NULL)
                               : tasker_step_succeed(step, "{\"late\": true}", 0);
        int code = tasker_error_last()->code;
        pthread_mutex_lock(&s->mu);
        s->late_rc = rc;
        s->late_code = code;
        s->late_done = 1;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return TASKER_OK;
    }
    int rc = tasker_step_succeed(step, "{\"late\": false}", 0);
    if (rc != TASKER_OK)
        th_problem("attempt %u: tasker_step_succeed = %d", attempt, rc);
    return TASKER_OK;
}

/* Waits for attempt 1's late completion; returns its result code. */
static int wait_late(slow *s, int *code)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += th_wait_ms() / 1000 + 1;
    pthread_mutex_lock(&s->mu);
    int w = 0;
    while (!s->late_done && w != ETIMEDOUT)
        w = pthread_cond_timedwait(&s->cv, &s->mu, &dl);
    int done = s->late_done, rc = s->late_rc;
    *code = s->late_code;
    pthread_mutex_unlock(&s->mu);
    if (!done)
        fail_msg("the timed-out attempt never completed");
    return rc;
}

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    obs_gate_init(&x->s.gate, 1);
    pthread_mutex_init(&x->s.mu, NULL);
    pthread_cond_init(&x->s.cv, NULL);
    obs_collector_init(&x->col, NULL);
    x->coord = th_open(NULL);
    th_handler(x->coord, "slow", slow_handler, &x->s);
    th_handler(x->coord, "slow1", slow_handler, &x->s);
    th_handler(x->coord, "polled", NULL, NULL);
    th_handler(x->coord, "quick", th_handler_noop, NULL);
    th_register(x->coord, SLOW("slow", 100, 2));
    th_register(x->coord, SLOW("slow1", 100, 1));
    th_register(x->coord, SLOW("polled", 100, 2));
    th_register(x->coord, SLOW("quick", 5000, 2));
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    /* A handler still at the gate would keep close from joining its worker. */
    obs_gate_open(&x->s.gate);
    th_ok(tasker_coordinator_close(x->coord));
    obs_collector_destroy(&x->col);
    obs_gate_destroy(&x->s.gate);
    pthread_mutex_destroy(&x->s.mu);
    pthread_cond_destroy(&x->s.cv);
    free(x);
    th_assert_no_problems();
    return 0;
}

static double attempts_metric(prom_doc *doc, const char *handler, const char *outcome)
{
    return prom_get(doc, "tasker_step_attempts_total", "handler", handler, "outcome", outcome,
                    NULL);
}

static void worker_timeout_retries_and_late_result_is_stale(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    /* The attempt's clock starts when it is claimed, which is after this
     * (and maybe well before its handler notes the time). */
    double before = th_now_ms();
    th_create(uuid, c, "to", "slow", NULL);
    /* Attempt 1 is stuck at the gate; the timeout fails it and attempt 2
     * (on the other worker) completes the task. */
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(obs_gate_waiting(&x->s.gate), 1);
    pthread_mutex_lock(&x->s.mu);
    double gap = x->s.start_at[1] - before;
    unsigned second = x->s.attempt_seen[1];
    pthread_mutex_unlock(&x->s.mu);
    assert_int_equal(second, 2);
    if (gap < 99.0)
        fail_msg("attempt 2 started %.1f ms after the task was created, before the 100 ms "
                 "timeout of attempt 1",
                 gap);

    json_t *task = th_task(c, uuid);
    json_t *t = th_step(task, "t");
    assert_int_equal(json_integer_value(json_object_get(t, "attempts")), 2);
    json_t *errors = json_object_get(t, "errors");
    assert_int_equal(json_array_size(errors), 1);
    json_t *e = json_array_get(errors, 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")), "tasker.TimeoutError");
    assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
    assert_true(json_is_true(json_object_get(e, "retryable")));
    assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
    assert_true(json_is_false(json_object_get(json_object_get(t, "result"), "late")));
    assert_int_equal(
        th_count_transitions(task, "t", "in_progress", "waiting_for_retry", "timed_out", 1), 1);
    assert_int_equal(th_count_transitions(task, "t", NULL, NULL, "timed_out", -1), 1);
    json_decref(task);

    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(attempts_metric(&doc, "slow", "timed_out"), 1);
    obs_assert_metric(attempts_metric(&doc, "slow", "started"), 2);
    obs_assert_metric(attempts_metric(&doc, "slow", "succeeded"), 1);
    obs_assert_metric(attempts_metric(&doc, "slow", "failed"), 1);
    obs_assert_metric(prom_get(&doc, "tasker_step_retries_total", "handler", "slow", NULL), 1);
    obs_assert_metric(prom_get(&doc, "tasker_fenced_completions_total", NULL), 0);
    prom_doc_free(&doc);

    /* Now let attempt 1 finish: its result is refused and changes nothing. */
    obs_gate_open(&x->s.gate);
    int code;
    assert_int_equal(wait_late(&x->s, &code), TASKER_ESTALE);
    assert_int_equal(code, TASKER_ESTALE);
    task = th_task(c, uuid);
    t = th_step(task, "t");
    assert_true(json_is_false(json_object_get(json_object_get(t, "result"), "late")));
    assert_int_equal(json_integer_value(json_object_get(t, "attempts")), 2);
    assert_string_equal(json_string_value(json_object_get(task, "state")), "complete");
    json_decref(task);
    obs_metrics(c, &doc);
    obs_assert_metric(prom_get(&doc, "tasker_fenced_completions_total", NULL), 1);
    obs_assert_metric(attempts_metric(&doc, "slow", "timed_out"), 1);
    obs_assert_metric(attempts_metric(&doc, "slow", "succeeded"), 1);
    obs_assert_metric(prom_get(&doc, "tasker_steps_in_flight", NULL), 0);
    prom_doc_free(&doc);
}

/* With a single worker nothing else is running while the handler overruns;
 * its completion after the deadline must still be refused and retried. */
static void single_worker_late_completion_is_stale(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    x->s.sleep_ms = 400; /* 4 x timeout_ms */
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "to", "slow", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    int code;
    int rc = wait_late(&x->s, &code);
    if (rc != TASKER_ESTALE)
        fail_msg("completion 400 ms into a 100 ms timeout returned %d (%s), expected "
                 "TASKER_ESTALE",
                 rc, tasker_strerror(rc));
    json_t *task = th_task(c, uuid);
    json_t *t = th_step(task, "t");
    assert_int_equal(json_integer_value(json_object_get(t, "attempts")), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(t, "errors"), 0),
                                          "class")),
        "tasker.TimeoutError");
    assert_true(json_is_false(json_object_get(json_object_get(t, "result"), "late")));
    json_decref(task);
    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(attempts_metric(&doc, "slow", "timed_out"), 1);
    prom_doc_free(&doc);
}

/* Claims once the descriptor says so, without the periodic fallback of
 * th_claim_one: a missing wakeup fails here. */
static tasker_step *claim_when_readable(tasker_coordinator *c)
{
    double deadline = th_now_ms() + th_wait_ms();
    while (th_now_ms() < deadline) {
        int left = (int)(deadline - th_now_ms()) + 1;
        if (!th_fd_readable(c, left))
            break;
        tasker_step *s = NULL;
        size_t n = 0;
        th_ok(tasker_coordinator_claim(&s, &n, c, 1));
        if (n == 1)
            return s;
    }
    fail_msg("the poll descriptor did not offer a step within %d ms", th_wait_ms());
    return NULL;
}

static void poll_mode_timeout_wakes_descriptor(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    int fd;
    th_ok(tasker_coordinator_fd(&fd, c));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "to", "polled", NULL);
    double before = th_now_ms();
    tasker_step *first = claim_when_readable(c);
    assert_int_equal(tasker_step_attempt(first), 1);
    /* Nobody completes attempt 1: after timeout_ms the descriptor wakes
     * and the retry can be claimed. */
    tasker_step *second = claim_when_readable(c);
    double waited = th_now_ms() - before;
    assert_int_equal(tasker_step_attempt(second), 2);
    assert_string_equal(tasker_step_uuid(second), tasker_step_uuid(first));
    if (waited < 99.0)
        fail_msg("the retry was claimable %.1f ms after the claim, before the 100 ms timeout",
                 waited);
    assert_int_equal(tasker_step_succeed(first, "{\"late\": true}", 0), TASKER_ESTALE);
    th_assert_error(TASKER_ESTALE, NULL);
    th_ok(tasker_step_succeed(second, "{\"late\": false}", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    assert_int_equal(
        th_count_transitions(task, "t", "in_progress", "waiting_for_retry", "timed_out", 1), 1);
    assert_string_equal(
        json_string_value(json_object_get(
            json_array_get(json_object_get(th_step(task, "t"), "errors"), 0), "class")),
        "tasker.TimeoutError");
    json_decref(task);
    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(attempts_metric(&doc, "polled", "timed_out"), 1);
    obs_assert_metric(attempts_metric(&doc, "polled", "started"), 2);
    obs_assert_metric(prom_get(&doc, "tasker_fenced_completions_total", NULL), 1);
    obs_assert_metric(prom_get(&doc, "tasker_retry_timers", NULL), 0);
    prom_doc_free(&doc);
}

static void timeout_on_last_attempt_is_an_error(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    x->s.late_fails = 1;
    obs_collector *col = &x->col;
    tasker_subscription *sub = obs_subscribe(
        c, TASKER_EVENT_STEP_DEAD_LETTERED | TASKER_EVENT_TASK_FAILED, 0, col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "to", "slow1", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    assert_int_equal(obs_gate_waiting(&x->s.gate), 1); /* the handler is still running */
    th_ok(tasker_unsubscribe(sub));

    json_t *task = th_task(c, uuid);
    json_t *t = th_step(task, "t");
    assert_string_equal(json_string_value(json_object_get(t, "state")), "error");
    assert_int_equal(th_count_transitions(task, "t", "in_progress", "error", "timed_out", 1), 1);
    json_t *e = json_array_get(json_object_get(t, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")), "tasker.TimeoutError");
    json_decref(task);

    assert_int_equal(col->n, 2);
    assert_int_equal(col->ev[0].type, TASKER_EVENT_STEP_DEAD_LETTERED);
    assert_string_equal(col->ev[0].eclass, "tasker.TimeoutError");
    assert_int_equal(col->ev[0].attempt, 1);
    assert_int_equal(col->ev[1].type, TASKER_EVENT_TASK_FAILED);

    json_t *status = obs_status(c);
    json_t *dead = json_object_get(status, "dead_letters");
    assert_int_equal(json_array_size(dead), 1);
    json_t *d = json_array_get(dead, 0);
    assert_string_equal(json_string_value(json_object_get(d, "task_uuid")), uuid);
    assert_string_equal(json_string_value(json_object_get(d, "step")), "t");
    assert_string_equal(json_string_value(json_object_get(d, "class")), "tasker.TimeoutError");
    assert_int_equal(json_integer_value(json_object_get(d, "attempts")), 1);
    json_decref(status);

    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(attempts_metric(&doc, "slow1", "timed_out"), 1);
    obs_assert_metric(prom_get(&doc, "tasker_dead_letters_total", "handler", "slow1", NULL), 1);
    prom_doc_free(&doc);

    /* The late failure of the timed-out attempt is refused too. */
    obs_gate_open(&x->s.gate);
    int code;
    assert_int_equal(wait_late(&x->s, &code), TASKER_ESTALE);
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_ERROR);
}

static void no_timeout_when_in_time(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    /* A fast handler under a 5 s limit: one attempt, and its timer is gone. */
    for (int i = 0; i < 5; i++) {
        th_create(uuid, c, "to", "quick", NULL);
        assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    }
    json_t *task = th_task(c, uuid);
    assert_int_equal(th_step_attempts(task, "t"), 1);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "t"), "errors")), 0);
    json_decref(task);
    prom_doc doc;
    obs_metrics(c, &doc);
    obs_assert_metric(attempts_metric(&doc, "quick", "timed_out"), 0);
    obs_assert_metric(attempts_metric(&doc, "quick", "succeeded"), 5);
    obs_assert_metric(prom_get(&doc, "tasker_retry_timers", NULL), 0);
    prom_doc_free(&doc);

    /* A poll-mode step completed before its 100 ms limit stays complete. */
    th_create(uuid, c, "to", "polled", NULL);
    tasker_step *s = claim_when_readable(c);
    th_ok(tasker_step_succeed(s, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    th_sleep_ms(200);
    tasker_step *none[1];
    size_t n = 1;
    th_ok(tasker_coordinator_claim(none, &n, c, 1));
    assert_int_equal(n, 0);
    task = th_task(c, uuid);
    assert_int_equal(th_step_attempts(task, "t"), 1);
    assert_int_equal(th_count_transitions(task, "t", NULL, NULL, "timed_out", -1), 0);
    json_decref(task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(worker_timeout_retries_and_late_result_is_stale, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(single_worker_late_completion_is_stale, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(poll_mode_timeout_wakes_descriptor, setup, teardown),
        cmocka_unit_test_setup_teardown(timeout_on_last_attempt_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(no_timeout_when_in_time, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
