/*
 * Retries: backoff policies (with short delays, checked as lower bounds on
 * the gap between a failure and the next attempt), caps, jitter,
 * retry_after_ms, permanent failures, exhaustion, manual retry and resolve.
 *
 * Gaps are only checked from below (plus generous upper bounds where a wrong
 * policy would be off by seconds): a loaded machine can make a retry late but
 * never early.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TRIES 16

typedef struct flaky {
    pthread_mutex_t mu;
    int fail_times;          /* attempts 1..fail_times fail */
    int retryable;
    int64_t retry_after_ms;  /* -1: none */
    int return_error;        /* fail by returning a negative code instead */
    int calls;
    unsigned attempt_seen[MAX_TRIES];
    double start_at[MAX_TRIES];
    double fail_at[MAX_TRIES];
} flaky;

static void flaky_init(flaky *f, int fail_times)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->fail_times = fail_times;
    f->retryable = 1;
    f->retry_after_ms = -1;
}

static int flaky_handler(tasker_step *step, void *ud)
{
    flaky *f = ud;
    double now = th_now_ms();
    pthread_mutex_lock(&f->mu);
    int i = f->calls++;
    if (i < MAX_TRIES) {
        f->start_at[i] = now;
        f->attempt_seen[i] = tasker_step_attempt(step);
    }
    int fail_now = i < f->fail_times;
    pthread_mutex_unlock(&f->mu);
    if (!fail_now)
        return tasker_step_succeed(step, "{\"done\": true}", 0) == TASKER_OK ? TASKER_OK : -1;
    if (f->return_error) {
        pthread_mutex_lock(&f->mu);
        f->fail_at[i] = th_now_ms();
        pthread_mutex_unlock(&f->mu);
        return TASKER_EINTERNAL;
    }
    tasker_failure fl = TASKER_FAILURE_INIT;
    fl.error_class = "FlakyError";
    fl.message = "try again";
    fl.retryable = f->retryable;
    fl.retry_after_ms = f->retry_after_ms;
    pthread_mutex_lock(&f->mu);
    f->fail_at[i] = th_now_ms(); /* before the call: the delay starts inside it */
    pthread_mutex_unlock(&f->mu);
    int rc = tasker_step_fail(step, &fl);
    if (rc != TASKER_OK)
        th_problem("tasker_step_fail = %d", rc);
    return TASKER_OK;
}

typedef struct fixture {
    tasker_coordinator *coord;
    flaky f;
} fixture;

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    x->coord = th_open(NULL);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    tasker_coordinator_close(x->coord);
    pthread_mutex_destroy(&x->f.mu);
    free(x);
    return 0;
}

/* Registers a one-step template whose step "s" uses `retry` and the flaky
 * handler, runs one task with worker threads and returns its final state. */
static tasker_task_state run_flaky(fixture *x, const char *name, const char *retry,
                                   char uuid[TASKER_UUID_BUFSIZE])
{
    char *json = th_fmt("{\"namespace\":\"retry\",\"name\":\"%s\",\"steps\":[{\"name\":\"s\","
                        "\"handler\":\"flaky\",\"retry\":%s}]}",
                        name, retry);
    th_register(x->coord, json);
    free(json);
    th_handler(x->coord, "flaky", flaky_handler, &x->f);
    th_ok(tasker_coordinator_start(x->coord, 2));
    th_create(uuid, x->coord, "retry", name, NULL);
    tasker_task_state st = th_wait_final(x->coord, uuid);
    th_assert_no_problems();
    return st;
}

/* The gap before attempt k+1 (0-based k) is at least `min_ms`. */
static void check_gap(flaky *f, int k, double min_ms)
{
    double gap = f->start_at[k + 1] - f->fail_at[k];
    /* 1 ms of slack: the library may round its due time to milliseconds. */
    if (gap < min_ms - 1.0)
        fail_msg("attempt %d started %.2f ms after attempt %d failed; expected >= %.0f ms", k + 2,
                 gap, k + 1, min_ms);
}

static void linear_backoff(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 4);
    assert_int_equal(run_flaky(x, "linear",
                               "{\"max_attempts\":5,\"backoff\":\"linear\",\"base_ms\":15,"
                               "\"max_ms\":1000}", uuid),
                     TASKER_TASK_COMPLETE);
    assert_int_equal(x->f.calls, 5);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(x->f.attempt_seen[k], (unsigned)k + 1);
        check_gap(&x->f, k, 15.0 * (k + 1));
    }
    json_t *task = th_task(x->coord, uuid);
    assert_int_equal(th_step_attempts(task, "s"), 5);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "s"), "errors")), 4);
    assert_int_equal(th_count_transitions(task, "s", NULL, "waiting_for_retry", "retry_scheduled",
                                          -1), 4);
    json_decref(task);
}

static void exponential_backoff(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 4);
    assert_int_equal(run_flaky(x, "exp",
                               "{\"max_attempts\":5,\"backoff\":\"exponential\",\"base_ms\":10,"
                               "\"max_ms\":1000}", uuid),
                     TASKER_TASK_COMPLETE);
    assert_int_equal(x->f.calls, 5);
    /* 10, 20, 40, 80: the last two tell exponential from linear. */
    for (int k = 0; k < 4; k++)
        check_gap(&x->f, k, 10.0 * (1 << k));
}

static void max_ms_caps_the_delay(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 9);
    double t0 = th_now_ms();
    assert_int_equal(run_flaky(x, "capped",
                               "{\"max_attempts\":10,\"backoff\":\"exponential\",\"base_ms\":20,"
                               "\"max_ms\":20}", uuid),
                     TASKER_TASK_COMPLETE);
    double total = th_now_ms() - t0;
    assert_int_equal(x->f.calls, 10);
    for (int k = 0; k < 9; k++)
        check_gap(&x->f, k, 20.0);
    /* Uncapped this would wait 20 * (2^9 - 1) ms = 10.2 s; capped, 180 ms. */
    if (total > 6000.0)
        fail_msg("capped retries took %.0f ms: max_ms was not applied", total);
}

static void no_backoff_retries_at_once(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 3);
    assert_int_equal(run_flaky(x, "none",
                               "{\"max_attempts\":4,\"backoff\":\"none\",\"base_ms\":0,"
                               "\"max_ms\":0}", uuid),
                     TASKER_TASK_COMPLETE);
    assert_int_equal(x->f.calls, 4);
    json_t *task = th_task(x->coord, uuid);
    assert_string_equal(th_step_state(task, "s"), "complete");
    assert_int_equal(th_step_attempts(task, "s"), 4);
    json_decref(task);
}

static void jitter_stays_in_range(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 4);
    assert_int_equal(run_flaky(x, "jitter",
                               "{\"max_attempts\":5,\"backoff\":\"linear\",\"base_ms\":30,"
                               "\"max_ms\":1000,\"jitter\":0.5}", uuid),
                     TASKER_TASK_COMPLETE);
    /* Jitter 0.5 scales each delay by [0.5, 1]. */
    for (int k = 0; k < 4; k++)
        check_gap(&x->f, k, 0.5 * 30.0 * (k + 1));
}

static void retry_after_overrides_backoff(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 2);
    x->f.retry_after_ms = 150;
    /* Backoff "none" would retry at once; the server asked for 150 ms. */
    assert_int_equal(run_flaky(x, "after",
                               "{\"max_attempts\":3,\"backoff\":\"none\",\"base_ms\":0,"
                               "\"max_ms\":10000}", uuid),
                     TASKER_TASK_COMPLETE);
    assert_int_equal(x->f.calls, 3);
    check_gap(&x->f, 0, 150.0);
    check_gap(&x->f, 1, 150.0);
}

static void retry_after_is_capped(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 1);
    x->f.retry_after_ms = 600000; /* ten minutes, capped to 30 ms */
    double t0 = th_now_ms();
    assert_int_equal(run_flaky(x, "aftercap",
                               "{\"max_attempts\":2,\"backoff\":\"linear\",\"base_ms\":5,"
                               "\"max_ms\":30}", uuid),
                     TASKER_TASK_COMPLETE);
    check_gap(&x->f, 0, 30.0);
    assert_true(th_now_ms() - t0 < 60000.0);
}

static void permanent_failure_skips_retries(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 100);
    x->f.retryable = 0;
    assert_int_equal(run_flaky(x, "perm",
                               "{\"max_attempts\":5,\"backoff\":\"none\",\"base_ms\":0,"
                               "\"max_ms\":0}", uuid),
                     TASKER_TASK_ERROR);
    assert_int_equal(x->f.calls, 1);
    json_t *task = th_task(x->coord, uuid);
    json_t *s = th_step(task, "s");
    assert_string_equal(json_string_value(json_object_get(s, "state")), "error");
    assert_int_equal(json_integer_value(json_object_get(s, "attempts")), 1);
    json_t *e = json_array_get(json_object_get(s, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")), "FlakyError");
    assert_true(json_is_false(json_object_get(e, "retryable")));
    assert_int_equal(th_count_transitions(task, "s", "in_progress", "error", "permanent_failure",
                                          1), 1);
    assert_string_equal(json_string_value(json_object_get(task, "state")), "error");
    json_decref(task);
}

static void handler_error_return_is_a_retryable_failure(void **state)
{
    fixture *x = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    flaky_init(&x->f, 1);
    x->f.return_error = 1;
    assert_int_equal(run_flaky(x, "ret",
                               "{\"max_attempts\":2,\"backoff\":\"none\",\"base_ms\":0,"
                               "\"max_ms\":0}", uuid),
                     TASKER_TASK_COMPLETE);
    assert_int_equal(x->f.calls, 2);
    json_t *task = th_task(x->coord, uuid);
    json_t *e = json_array_get(json_object_get(th_step(task, "s"), "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")),
                        "tasker.HandlerReturnedError");
    assert_true(json_is_true(json_object_get(e, "retryable")));
    json_decref(task);
}

/* ---- poll-mode scenarios: exhaustion, manual retry, resolve -------------- */

static const char *branchy =
    "{\"namespace\":\"retry\",\"name\":\"branchy\",\"steps\":["
    "{\"name\":\"a\",\"retry\":{\"max_attempts\":2,\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}},"
    "{\"name\":\"b\"},"
    "{\"name\":\"c\",\"depends_on\":[\"a\",\"b\"]}]}";

static void poll_setup(tasker_coordinator *c)
{
    th_register(c, branchy);
    th_handler(c, "a", NULL, NULL);
    th_handler(c, "b", NULL, NULL);
    th_handler(c, "c", NULL, NULL);
}

/* Claims the two roots; returns a's and b's handles. */
static void claim_roots(tasker_coordinator *c, tasker_step **a, tasker_step **b)
{
    tasker_step *s1 = th_claim_one(c), *s2 = th_claim_one(c);
    *a = strcmp(tasker_step_name(s1), "a") == 0 ? s1 : s2;
    *b = *a == s1 ? s2 : s1;
    assert_string_equal(tasker_step_name(*a), "a");
    assert_string_equal(tasker_step_name(*b), "b");
}

static void exhausted_error_waits_for_independent_branch(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    poll_setup(c);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "retry", "branchy", NULL);
    tasker_step *a, *b;
    claim_roots(c, &a, &b);
    th_ok(tasker_step_fail(a, NULL));
    a = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(a), 2);
    th_ok(tasker_step_fail(a, NULL));

    /* a is out of attempts, but b is still running: the task is not final. */
    tasker_task_state st = (tasker_task_state)-1;
    assert_int_equal(tasker_task_wait(&st, c, uuid, 0), TASKER_ETIMEOUT);
    assert_int_equal(st, TASKER_TASK_RUNNING);
    assert_int_equal(tasker_task_wait(&st, c, uuid, 50), TASKER_ETIMEOUT);
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "error");
    assert_string_equal(th_step_state(task, "b"), "in_progress");
    assert_int_equal(th_count_transitions(task, "a", "in_progress", "error", "retries_exhausted",
                                          2), 1);
    json_decref(task);

    th_ok(tasker_step_succeed(b, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "b"), "complete");
    assert_int_equal(th_step_attempts(task, "c"), 0);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "a"), "errors")), 2);
    json_decref(task);
}

static void manual_retry(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    poll_setup(c);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "retry", "branchy", NULL);
    tasker_step *a, *b;
    claim_roots(c, &a, &b);
    th_ok(tasker_step_succeed(b, "{\"b\": 1}", 0));
    th_ok(tasker_step_fail(a, NULL));
    th_ok(tasker_step_fail(th_claim_one(c), NULL));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);

    th_ok(tasker_task_retry(c, uuid));
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_RUNNING);
    /* A fresh budget: a may fail once more and still be retried. */
    a = th_claim_one(c);
    assert_string_equal(tasker_step_name(a), "a");
    assert_int_equal(tasker_step_attempt(a), 3);
    th_ok(tasker_step_fail(a, NULL));
    json_t *task = th_task(c, uuid);
    assert_string_not_equal(th_step_state(task, "a"), "error");
    json_decref(task);
    a = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(a), 4);
    th_ok(tasker_step_succeed(a, "{\"a\": 2}", 0));
    tasker_step *cs = th_claim_one(c);
    assert_string_equal(tasker_step_name(cs), "c");
    th_ok(tasker_step_succeed(cs, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    task = th_task(c, uuid);
    assert_int_equal(th_count_transitions(task, "", "error", "running", "manual_retry", -1), 1);
    assert_int_equal(th_count_transitions(task, "a", "error", "enqueued", "manual_retry", -1), 1);
    assert_int_equal(th_step_attempts(task, "a"), 4);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "a"), "errors")), 3);
    /* b was not run again. */
    assert_int_equal(th_step_attempts(task, "b"), 1);
    json_decref(task);
    assert_int_equal(tasker_task_retry(c, uuid), TASKER_ESTATE);
}

static void resolve_step_manually(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    poll_setup(c);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "retry", "branchy", NULL);
    tasker_step *a, *b;
    claim_roots(c, &a, &b);
    th_ok(tasker_step_succeed(b, NULL, 0));
    tasker_failure f = TASKER_FAILURE_INIT;
    f.retryable = 0;
    th_ok(tasker_step_fail(a, &f));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);

    assert_int_equal(tasker_step_resolve(c, uuid, "a", "{\"manual\": ", 0), TASKER_EINVAL);
    th_ok(tasker_step_resolve(c, uuid, "a", "{\"manual\": 42}", 0));
    assert_int_equal(tasker_step_resolve(c, uuid, "a", NULL, 0), TASKER_ESTATE);
    tasker_step *cs = th_claim_one(c);
    assert_string_equal(tasker_step_name(cs), "c");
    const char *res = NULL;
    size_t len = 0;
    th_ok(tasker_step_dependency_result(&res, &len, cs, "a"));
    json_t *r = json_loadb(res, len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(r, "manual")), 42);
    json_decref(r);
    th_ok(tasker_step_succeed(cs, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "resolved_manually");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(th_step(task, "a"),
                                                                        "result"), "manual")), 42);
    assert_int_equal(th_count_transitions(task, "a", "error", "resolved_manually",
                                          "manual_resolve", -1), 1);
    assert_int_equal(th_count_transitions(task, "", NULL, NULL, "manual_resolve", -1), 1);
    json_decref(task);
}

static void handler_timeout(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->coord;
    th_register(c, "{\"namespace\":\"retry\",\"name\":\"slow\",\"steps\":[{\"name\":\"t\","
                   "\"timeout_ms\":100,\"retry\":{\"max_attempts\":2,\"backoff\":\"none\","
                   "\"base_ms\":0,\"max_ms\":0}}]}");
    th_handler(c, "t", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "retry", "slow", NULL);
    tasker_step *first = th_claim_one(c);
    double claimed_at = th_now_ms();
    /* The first attempt never reports back; after 100 ms it is timed out
     * and the step is handed out again. */
    tasker_step *second = th_claim_one(c);
    double waited = th_now_ms() - claimed_at;
    if (waited < 99.0)
        fail_msg("attempt 2 came %.1f ms after attempt 1, before its 100 ms timeout", waited);
    assert_int_equal(tasker_step_attempt(second), 2);
    /* The late completion of the timed-out attempt is refused. */
    assert_int_equal(tasker_step_succeed(first, "{\"late\": true}", 0), TASKER_ESTALE);
    assert_int_equal(tasker_error_last()->code, TASKER_ESTALE);
    th_ok(tasker_step_succeed(second, "{\"late\": false}", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    json_t *t = th_step(task, "t");
    assert_true(json_is_false(json_object_get(json_object_get(t, "result"), "late")));
    assert_int_equal(json_integer_value(json_object_get(t, "attempts")), 2);
    assert_int_equal(th_count_transitions(task, "t", "in_progress", "waiting_for_retry",
                                          "timed_out", 1), 1);
    json_t *e = json_array_get(json_object_get(t, "errors"), 0);
    assert_non_null(e);
    assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
    assert_true(json_is_true(json_object_get(e, "retryable")));
    assert_non_null(strstr(json_string_value(json_object_get(e, "class")), "Timeout"));
    json_decref(task);

    /* Out of attempts, a timeout is final for the step. */
    th_create(uuid, c, "retry", "slow", NULL);
    first = th_claim_one(c);
    second = th_claim_one(c);
    /* Turn the poll loop the way an event loop would until the timeout has
     * been noticed: nothing more to claim, and the task ends in error. */
    double deadline = th_now_ms() + th_wait_ms();
    tasker_task_state st = TASKER_TASK_RUNNING;
    while (tasker_task_wait(&st, c, uuid, 0) == TASKER_ETIMEOUT && th_now_ms() < deadline) {
        tasker_step *none[1];
        size_t n = 0;
        (void)th_fd_readable(c, 200);
        th_ok(tasker_coordinator_claim(none, &n, c, 1));
        assert_int_equal(n, 0);
    }
    assert_int_equal(st, TASKER_TASK_ERROR);
    assert_int_equal(tasker_step_fail(first, NULL), TASKER_ESTALE);
    assert_int_equal(tasker_step_succeed(second, NULL, 0), TASKER_ESTALE);
    task = th_task(c, uuid);
    assert_int_equal(th_count_transitions(task, "t", "in_progress", "error", "timed_out", 2), 1);
    json_decref(task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(linear_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(exponential_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(max_ms_caps_the_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(no_backoff_retries_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(jitter_stays_in_range, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_after_overrides_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(retry_after_is_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(permanent_failure_skips_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(handler_error_return_is_a_retryable_failure, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(exhausted_error_waits_for_independent_branch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(manual_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(resolve_step_manually, setup, teardown),
        cmocka_unit_test_setup_teardown(handler_timeout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
