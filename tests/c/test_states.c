/*
 * Task and step state machines as recorded in tasker_task_get's JSON:
 * complete transition sequences, attempts, errors, and the illegal
 * transitions that must be refused with TASKER_ESTATE.  Poll mode (claim +
 * complete on the test thread) keeps every step deterministic.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *tmpl_ab =
    "{\"namespace\":\"st\",\"name\":\"ab\",\"steps\":["
    "{\"name\":\"a\",\"retry\":{\"max_attempts\":3,\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}},"
    "{\"name\":\"b\",\"depends_on\":[\"a\"],\"retry\":{\"base_ms\":60000,\"max_ms\":60000}},"
    "{\"name\":\"c\",\"depends_on\":[\"b\"]}]}";

static int setup(void **state)
{
    tasker_coordinator *c = th_open(NULL);
    th_register(c, tmpl_ab);
    th_register(c, "{\"namespace\":\"st\",\"name\":\"once\",\"steps\":[{\"name\":\"a\","
                   "\"retry\":{\"max_attempts\":1}},{\"name\":\"x\"}]}");
    th_handler(c, "a", NULL, NULL);
    th_handler(c, "b", NULL, NULL);
    th_handler(c, "c", NULL, NULL);
    th_handler(c, "x", NULL, NULL);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    tasker_coordinator_close(*state);
    return 0;
}

static void expect_path(json_t *task, const char *step, const char *want)
{
    char *got = th_transition_path(task, step);
    if (strcmp(got, want) != 0) {
        char *dump = json_dumps(json_object_get(task, "transitions"), JSON_COMPACT);
        fail_msg("transitions of %s: \"%s\", expected \"%s\"\n%s", step[0] ? step : "(task)", got,
                 want, dump);
    }
    free(got);
}

/* Each entry's "from" is the previous entry's "to" (the first's is the
 * initial state), "at" never goes backwards, and reasons are present. */
static void check_chain(json_t *task, const char *step, const char *initial)
{
    json_t *tr = json_object_get(task, "transitions");
    const char *prev_to = initial;
    const char *prev_at = "";
    size_t i;
    json_t *t;
    json_array_foreach(tr, i, t)
    {
        const char *at = json_string_value(json_object_get(t, "at"));
        assert_non_null(at);
        if (strcmp(at, prev_at) < 0)
            fail_msg("transition %zu at %s is earlier than the one before (%s)", i, at, prev_at);
        prev_at = at;
        json_t *s = json_object_get(t, "step");
        int mine = step[0] ? (json_is_string(s) && strcmp(json_string_value(s), step) == 0)
                           : json_is_null(s);
        if (!mine)
            continue;
        json_t *from = json_object_get(t, "from");
        if (prev_to == NULL)
            assert_true(json_is_null(from));
        else if (!json_is_string(from) || strcmp(json_string_value(from), prev_to) != 0)
            fail_msg("%s: transition %zu from %s, expected from %s", step, i,
                     json_string_value(from) ? json_string_value(from) : "null", prev_to);
        assert_non_null(json_string_value(json_object_get(t, "reason")));
        prev_to = json_string_value(json_object_get(t, "to"));
    }
}

static long transition_index(json_t *task, const char *step, const char *reason)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(task, "transitions"), i, t)
    {
        if (strcmp(json_string_value(json_object_get(t, "reason")), reason) == 0 &&
            json_is_string(json_object_get(t, "step")) &&
            strcmp(json_string_value(json_object_get(t, "step")), step) == 0)
            return (long)i;
    }
    return -1;
}

static void full_history_of_a_clean_run(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", "{\"order\": 7, \"tags\": [\"x\"]}");
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_PENDING);

    tasker_step *s = th_claim_one(c);
    assert_string_equal(tasker_step_name(s), "a");
    assert_string_equal(tasker_step_task_uuid(s), uuid);
    assert_int_equal(tasker_step_attempt(s), 1);
    assert_int_equal(tasker_step_max_attempts(s), 3);
    char a_uuid[TASKER_UUID_BUFSIZE];
    snprintf(a_uuid, sizeof a_uuid, "%s", tasker_step_uuid(s));
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_RUNNING);
    th_ok(tasker_step_succeed(s, "{\"ok\": true}", 0));
    s = th_claim_one(c);
    assert_string_equal(tasker_step_name(s), "b");
    th_ok(tasker_step_succeed(s, NULL, 0));
    s = th_claim_one(c);
    assert_string_equal(tasker_step_name(s), "c");
    th_ok(tasker_step_succeed(s, "null", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "uuid")), uuid);
    assert_string_equal(json_string_value(json_object_get(task, "namespace")), "st");
    assert_string_equal(json_string_value(json_object_get(task, "name")), "ab");
    assert_string_equal(json_string_value(json_object_get(task, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(task, "state")), "complete");
    assert_int_equal(json_integer_value(json_object_get(task, "priority")), 0);
    assert_true(json_is_null(json_object_get(task, "idempotency_key")));
    json_t *want_ctx = json_loads("{\"order\": 7, \"tags\": [\"x\"]}", 0, NULL);
    assert_true(json_equal(json_object_get(task, "context"), want_ctx));
    json_decref(want_ctx);
    assert_true(json_is_string(json_object_get(task, "created_at")));
    assert_true(json_is_string(json_object_get(task, "finished_at")));
    assert_true(json_number_value(json_object_get(task, "duration_ms")) >= 0.0);
    assert_true(json_is_number(json_object_get(task, "duration_ms")));

    json_t *a = th_step(task, "a");
    assert_string_equal(json_string_value(json_object_get(a, "uuid")), a_uuid);
    assert_string_equal(json_string_value(json_object_get(a, "handler")), "a");
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 1);
    assert_int_equal(json_integer_value(json_object_get(a, "max_attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(a, "result_kind")), "json");
    assert_true(json_is_true(json_object_get(json_object_get(a, "result"), "ok")));
    assert_int_equal(json_array_size(json_object_get(a, "errors")), 0);
    assert_int_equal(json_array_size(json_object_get(a, "depends_on")), 0);
    static const char *times[] = {"enqueued_at", "started_at", "finished_at"};
    for (int i = 0; i < 3; i++)
        assert_true(json_is_string(json_object_get(a, times[i])));
    assert_true(json_is_number(json_object_get(a, "duration_ms")));
    json_t *b = th_step(task, "b");
    assert_string_equal(json_string_value(json_array_get(json_object_get(b, "depends_on"), 0)),
                        "a");
    assert_true(json_is_null(json_object_get(b, "result")));
    assert_string_equal(json_string_value(json_object_get(b, "result_kind")), "none");
    assert_string_not_equal(json_string_value(json_object_get(b, "uuid")), a_uuid);

    expect_path(task, "", "pending,running,complete");
    assert_int_equal(th_count_transitions(task, "", NULL, "pending", "created", -1), 1);
    assert_int_equal(th_count_transitions(task, "", "pending", "running", "started", -1), 1);
    assert_int_equal(th_count_transitions(task, "", "running", "complete", "completed", -1), 1);
    check_chain(task, "", NULL);
    static const char *steps[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        expect_path(task, steps[i], "enqueued,in_progress,complete");
        check_chain(task, steps[i], "pending");
        assert_int_equal(th_count_transitions(task, steps[i], "pending", "enqueued",
                                              "dependencies_met", 0), 1);
        assert_int_equal(th_count_transitions(task, steps[i], "enqueued", "in_progress",
                                              "claimed", 1), 1);
        assert_int_equal(th_count_transitions(task, steps[i], "in_progress", "complete",
                                              "succeeded", 1), 1);
    }
    /* b became ready only once a had succeeded. */
    assert_true(transition_index(task, "a", "succeeded") <
                transition_index(task, "b", "dependencies_met"));
    assert_true(transition_index(task, "b", "succeeded") <
                transition_index(task, "c", "dependencies_met"));
    json_decref(task);
}

static void history_with_retries(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    tasker_failure f = TASKER_FAILURE_INIT;
    f.error_class = "TimeoutError";
    f.message = "upstream slow";
    f.context_json = "{\"host\": \"db1\"}";
    tasker_step *s = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(s), 1);
    th_ok(tasker_step_fail(s, &f));
    s = th_claim_one(c);
    assert_string_equal(tasker_step_name(s), "a");
    assert_int_equal(tasker_step_attempt(s), 2);
    th_ok(tasker_step_fail(s, NULL)); /* NULL: a retryable "Error" */
    s = th_claim_one(c);
    assert_int_equal(tasker_step_attempt(s), 3);
    th_ok(tasker_step_succeed(s, NULL, 0));
    for (int i = 0; i < 2; i++)
        th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    json_t *a = th_step(task, "a");
    assert_int_equal(json_integer_value(json_object_get(a, "attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(a, "state")), "complete");
    json_t *errors = json_object_get(a, "errors");
    assert_int_equal(json_array_size(errors), 2);
    json_t *e1 = json_array_get(errors, 0), *e2 = json_array_get(errors, 1);
    assert_int_equal(json_integer_value(json_object_get(e1, "attempt")), 1);
    assert_string_equal(json_string_value(json_object_get(e1, "class")), "TimeoutError");
    assert_string_equal(json_string_value(json_object_get(e1, "message")), "upstream slow");
    assert_true(json_is_true(json_object_get(e1, "retryable")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(e1, "context"), "host")),
                        "db1");
    assert_true(json_is_string(json_object_get(e1, "at")));
    assert_int_equal(json_integer_value(json_object_get(e2, "attempt")), 2);
    assert_string_equal(json_string_value(json_object_get(e2, "class")), "Error");
    assert_string_equal(json_string_value(json_object_get(e2, "message")), "");
    assert_true(json_is_null(json_object_get(e2, "context")));

    expect_path(task, "a",
                "enqueued,in_progress,waiting_for_retry,enqueued,in_progress,waiting_for_retry,"
                "enqueued,in_progress,complete");
    check_chain(task, "a", "pending");
    for (int att = 1; att <= 2; att++) {
        assert_int_equal(th_count_transitions(task, "a", "in_progress", "waiting_for_retry",
                                              "retry_scheduled", att), 1);
        assert_int_equal(th_count_transitions(task, "a", "waiting_for_retry", "enqueued",
                                              "retry_due", att), 1);
    }
    assert_int_equal(th_count_transitions(task, "a", NULL, NULL, "claimed", -1), 3);
    assert_int_equal(th_count_transitions(task, "a", "in_progress", "complete", "succeeded", 3),
                     1);
    json_decref(task);
}

static void exhausted_goes_to_error(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "once", NULL);
    tasker_step *s[2];
    s[0] = th_claim_one(c);
    s[1] = th_claim_one(c);
    tasker_step *a = strcmp(tasker_step_name(s[0]), "a") == 0 ? s[0] : s[1];
    tasker_step *x = a == s[0] ? s[1] : s[0];
    th_ok(tasker_step_fail(a, NULL));
    th_ok(tasker_step_succeed(x, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "error");
    expect_path(task, "a", "enqueued,in_progress,error");
    assert_int_equal(th_count_transitions(task, "a", "in_progress", "error", "retries_exhausted",
                                          1), 1);
    expect_path(task, "", "pending,running,error");
    assert_int_equal(th_count_transitions(task, "", "running", "error", "failed", -1), 1);
    json_decref(task);
}

static void completing_twice_is_refused(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    tasker_step *s = th_claim_one(c);
    th_ok(tasker_step_succeed(s, "{\"first\": 1}", 0));
    tasker_error_clear();
    assert_int_equal(tasker_step_succeed(s, "{\"second\": 2}", 0), TASKER_ESTATE);
    assert_int_equal(tasker_error_last()->code, TASKER_ESTATE);
    assert_int_equal(tasker_error_last()->category, TASKER_CATEGORY_STATE);
    assert_int_equal(tasker_step_fail(s, NULL), TASKER_ESTATE);
    assert_int_equal(tasker_step_succeed_pointer(s, NULL, NULL), TASKER_ESTATE);

    /* A failed attempt cannot be completed again either. */
    tasker_step *b = th_claim_one(c);
    th_ok(tasker_step_fail(b, NULL));
    assert_int_equal(tasker_step_succeed(b, NULL, 0), TASKER_ESTATE);
    assert_int_equal(tasker_step_fail(b, NULL), TASKER_ESTATE);

    json_t *task = th_task(c, uuid);
    json_t *a = th_step(task, "a");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "result"), "first")), 1);
    assert_null(json_object_get(json_object_get(a, "result"), "second"));
    assert_int_equal(th_count_transitions(task, "a", NULL, NULL, "succeeded", -1), 1);
    assert_string_equal(th_step_state(task, "b"), "waiting_for_retry");
    assert_int_equal(th_step_attempts(task, "b"), 1);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "b"), "errors")), 1);
    json_decref(task);
}

static void malformed_result_keeps_step_in_progress(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    tasker_step *s = th_claim_one(c);
    assert_int_equal(tasker_step_succeed(s, "{\"broken\": ", 0), TASKER_EINVAL);
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "in_progress");
    json_decref(task);
    th_ok(tasker_step_succeed(s, "[1, 2, 3]", 0));
    task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "complete");
    assert_int_equal(json_array_size(json_object_get(th_step(task, "a"), "result")), 3);
    json_decref(task);
}

static void complete_after_cancel_is_refused(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    tasker_step *s = th_claim_one(c);
    th_ok(tasker_task_cancel(c, uuid));
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_CANCELLED);
    assert_int_equal(tasker_step_succeed(s, "{\"late\": true}", 0), TASKER_ESTATE);
    assert_int_equal(tasker_step_fail(s, NULL), TASKER_ESTATE);

    json_t *task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "state")), "cancelled");
    assert_string_equal(th_step_state(task, "a"), "cancelled");
    assert_string_equal(th_step_state(task, "b"), "cancelled");
    assert_string_equal(th_step_state(task, "c"), "cancelled");
    assert_true(json_is_null(json_object_get(th_step(task, "a"), "result")));
    expect_path(task, "a", "enqueued,in_progress,cancelled");
    expect_path(task, "b", "cancelled");
    assert_int_equal(th_count_transitions(task, "b", "pending", "cancelled", "cancelled", -1), 1);
    assert_int_equal(th_count_transitions(task, "", "running", "cancelled", "cancelled", -1), 1);
    assert_true(json_is_string(json_object_get(task, "finished_at")));
    json_decref(task);
    /* Nothing of a cancelled task is claimable. */
    tasker_step *none = NULL;
    size_t n = 99;
    th_ok(tasker_coordinator_claim(&none, &n, c, 1));
    assert_int_equal(n, 0);
}

static void cancel_pending_task(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    th_ok(tasker_task_cancel(c, uuid));
    json_t *task = th_task(c, uuid);
    expect_path(task, "", "pending,cancelled");
    expect_path(task, "a", "enqueued,cancelled");
    assert_string_equal(th_step_state(task, "c"), "cancelled");
    json_decref(task);
    tasker_step *none = NULL;
    size_t n = 99;
    th_ok(tasker_coordinator_claim(&none, &n, c, 4));
    assert_int_equal(n, 0);
}

static void cancel_final_task_is_refused(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    for (int i = 0; i < 3; i++)
        th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    tasker_error_clear();
    assert_int_equal(tasker_task_cancel(c, uuid), TASKER_ESTATE);
    assert_int_equal(tasker_error_last()->code, TASKER_ESTATE);
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_COMPLETE);

    /* Cancelled is final too. */
    th_create(uuid, c, "st", "ab", NULL);
    th_ok(tasker_task_cancel(c, uuid));
    assert_int_equal(tasker_task_cancel(c, uuid), TASKER_ESTATE);
    json_t *task = th_task(c, uuid);
    assert_int_equal(th_count_transitions(task, "", NULL, "cancelled", NULL, -1), 1);
    json_decref(task);

    /* Unknown and malformed task ids. */
    assert_int_equal(tasker_task_cancel(c, "00000000-0000-7000-8000-000000000000"),
                     TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_cancel(c, "not-a-uuid"), TASKER_EINVAL);
}

static void manual_operations_need_error_state(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "st", "ab", NULL);
    tasker_step *s = th_claim_one(c);
    /* Running task: nothing to retry; a in progress: nothing to resolve. */
    assert_int_equal(tasker_task_retry(c, uuid), TASKER_ESTATE);
    assert_int_equal(tasker_step_resolve(c, uuid, "a", NULL, 0), TASKER_ESTATE);
    assert_int_equal(tasker_step_resolve(c, uuid, "b", NULL, 0), TASKER_ESTATE);
    assert_int_equal(tasker_step_resolve(c, uuid, "nope", NULL, 0), TASKER_ENOTFOUND);
    th_ok(tasker_step_succeed(s, NULL, 0));
    assert_int_equal(tasker_step_resolve(c, uuid, "a", NULL, 0), TASKER_ESTATE);
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "a"), "complete");
    assert_int_equal(th_count_transitions(task, NULL, NULL, NULL, "manual_retry", -1), 0);
    json_decref(task);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(full_history_of_a_clean_run, setup, teardown),
        cmocka_unit_test_setup_teardown(history_with_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(exhausted_goes_to_error, setup, teardown),
        cmocka_unit_test_setup_teardown(completing_twice_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(malformed_result_keeps_step_in_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(complete_after_cancel_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_pending_task, setup, teardown),
        cmocka_unit_test_setup_teardown(cancel_final_task_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(manual_operations_need_error_state, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
