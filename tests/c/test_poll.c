/*
 * Poll mode: handlers registered without a callback are claimed through
 * tasker_coordinator_claim when tasker_coordinator_fd becomes readable, the
 * way an event loop (asyncio, libuv) drives tasker.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    *state = th_open(NULL);
    return 0;
}

static int teardown(void **state)
{
    tasker_coordinator_close(*state);
    return 0;
}

/* Claims up to max without waiting. */
static size_t claim(tasker_coordinator *c, tasker_step **out, size_t max)
{
    size_t n = 12345;
    th_ok(tasker_coordinator_claim(out, &n, c, max));
    assert_true(n <= max);
    return n;
}

static void fd_signals_ready_steps(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"ab\",\"steps\":[{\"name\":\"a\"},"
                   "{\"name\":\"b\",\"depends_on\":[\"a\"]}]}");
    th_handler(c, "a", NULL, NULL);
    th_handler(c, "b", NULL, NULL);
    int fd = -1, fd2 = -2;
    th_ok(tasker_coordinator_fd(&fd, c));
    assert_true(fd >= 0);
    th_ok(tasker_coordinator_fd(&fd2, c));
    assert_int_equal(fd, fd2);

    /* Nothing to do yet. */
    assert_false(th_fd_readable(c, 0));
    tasker_step *s[8];
    assert_int_equal(claim(c, s, 8), 0);

    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "poll", "ab", "{\"n\": 5}");
    assert_true(th_fd_readable(c, th_wait_ms()));
    assert_int_equal(claim(c, s, 8), 1);
    assert_string_equal(tasker_step_name(s[0]), "a");
    size_t len = 0;
    const char *ctx = tasker_step_context(s[0], &len);
    assert_non_null(ctx);
    json_t *j = json_loadb(ctx, len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(j, "n")), 5);
    json_decref(j);
    /* Claiming drained the queue: the descriptor is quiet again, so an event
     * loop does not spin. */
    assert_false(th_fd_readable(c, 0));
    assert_int_equal(claim(c, s, 8), 0);

    th_ok(tasker_step_succeed(s[0], "{\"from\": \"a\"}", 0));
    assert_true(th_fd_readable(c, th_wait_ms()));
    assert_int_equal(claim(c, s, 8), 1);
    assert_string_equal(tasker_step_name(s[0]), "b");
    const char *res = NULL;
    th_ok(tasker_step_dependency_result(&res, &len, s[0], "a"));
    j = json_loadb(res, len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "from")), "a");
    json_decref(j);
    th_ok(tasker_step_succeed(s[0], NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_false(th_fd_readable(c, 0));
}

static void claim_respects_max(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"five\",\"steps\":[{\"name\":\"s1\","
                   "\"handler\":\"h\"},{\"name\":\"s2\",\"handler\":\"h\"},{\"name\":\"s3\","
                   "\"handler\":\"h\"},{\"name\":\"s4\",\"handler\":\"h\"},{\"name\":\"s5\","
                   "\"handler\":\"h\"}]}");
    th_handler(c, "h", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "poll", "five", NULL);
    assert_true(th_fd_readable(c, th_wait_ms()));
    tasker_step *all[5], *s[3];
    size_t got = 0, n;
    static const size_t want[] = {2, 2, 1, 0};
    for (int round = 0; round < 4; round++) {
        /* Leftover ready steps keep the descriptor readable. */
        if (want[round] > 0)
            assert_true(th_fd_readable(c, th_wait_ms()));
        n = claim(c, s, 2);
        assert_int_equal(n, want[round]);
        for (size_t i = 0; i < n; i++)
            all[got++] = s[i];
    }
    assert_int_equal(got, 5);
    /* Five different steps, each in progress on its first attempt. */
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(tasker_step_attempt(all[i]), 1);
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(tasker_step_name(all[i]), tasker_step_name(all[k]));
    }
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "s3"), "in_progress");
    json_decref(task);
    for (size_t i = 0; i < 5; i++)
        th_ok(tasker_step_succeed(all[i], NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
}

static void fd_signals_due_retry(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"retry\",\"steps\":[{\"name\":\"a\","
                   "\"retry\":{\"max_attempts\":3,\"backoff\":\"linear\",\"base_ms\":300,"
                   "\"max_ms\":300}}]}");
    th_handler(c, "a", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "poll", "retry", NULL);
    assert_true(th_fd_readable(c, th_wait_ms()));
    tasker_step *s[2];
    assert_int_equal(claim(c, s, 2), 1);
    double failed_at = th_now_ms();
    th_ok(tasker_step_fail(s[0], NULL));
    /* Not due yet. */
    assert_int_equal(claim(c, s, 2), 0);
    /* The descriptor wakes the loop when the retry is due. */
    assert_true(th_fd_readable(c, th_wait_ms()));
    tasker_step *again = th_claim_one(c);
    double waited = th_now_ms() - failed_at;
    if (waited < 299.0)
        fail_msg("retry claimable after %.1f ms, before its 300 ms delay", waited);
    assert_int_equal(tasker_step_attempt(again), 2);
    assert_string_equal(tasker_step_name(again), "a");
    th_ok(tasker_step_succeed(again, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
}

static void poll_and_worker_handlers_mix(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"mix\",\"steps\":["
                   "{\"name\":\"cb\",\"handler\":\"node\"},"
                   "{\"name\":\"loop\",\"depends_on\":[\"cb\"]},"
                   "{\"name\":\"cb2\",\"handler\":\"node\",\"depends_on\":[\"loop\"]}]}");
    th_handler(c, "node", th_handler_node, NULL);
    th_handler(c, "loop", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "poll", "mix", NULL);
    /* Callback steps are never handed out by claim, even with no workers. */
    assert_false(th_fd_readable(c, 50));
    tasker_step *s[2];
    assert_int_equal(claim(c, s, 2), 0);
    th_ok(tasker_coordinator_start(c, 1));
    tasker_step *l = th_claim_one(c);
    assert_string_equal(tasker_step_name(l), "loop");
    const char *res = NULL;
    size_t len = 0;
    th_ok(tasker_step_dependency_result(&res, &len, l, "cb"));
    json_t *j = json_loadb(res, len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(j, "v")), 1);
    json_decref(j);
    th_ok(tasker_step_succeed(l, "{\"step\": \"loop\", \"v\": 10}", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    json_t *task = th_task(c, uuid);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(th_step(task, "cb2"),
                                                                        "result"), "v")), 11);
    json_decref(task);
    th_assert_no_problems();
}

static void higher_priority_is_claimed_first(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"prio\",\"steps\":[{\"name\":\"p\"}]}");
    th_handler(c, "p", NULL, NULL);
    static const int prios[] = {-5, 0, 1000000, 10, -1000000};
    char uuids[5][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 5; i++) {
        tasker_task_request req = TASKER_TASK_REQUEST_INIT;
        req.ns = "poll";
        req.name = "prio";
        req.priority = prios[i];
        th_ok(tasker_task_create(uuids[i], c, &req));
    }
    static const int order[] = {2, 3, 1, 0, 4};
    for (int i = 0; i < 5; i++) {
        tasker_step *s = th_claim_one(c);
        if (strcmp(tasker_step_task_uuid(s), uuids[order[i]]) != 0)
            fail_msg("claim %d got the task of priority other than %d", i, prios[order[i]]);
        th_ok(tasker_step_succeed(s, NULL, 0));
    }
    json_t *task = th_task(c, uuids[2]);
    assert_int_equal(json_integer_value(json_object_get(task, "priority")), 1000000);
    json_decref(task);
    /* Out of range priorities are refused. */
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "poll";
    req.name = "prio";
    req.priority = 1000001;
    char uuid[TASKER_UUID_BUFSIZE];
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_EINVAL);
    req.priority = -1000001;
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_EINVAL);
}

static void equal_priority_is_first_come_first_served(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"fifo\",\"steps\":[{\"name\":\"f\"}]}");
    th_handler(c, "f", NULL, NULL);
    char uuids[6][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 6; i++)
        th_create(uuids[i], c, "poll", "fifo", NULL);
    for (int i = 0; i < 6; i++) {
        tasker_step *s = th_claim_one(c);
        assert_string_equal(tasker_step_task_uuid(s), uuids[i]);
        th_ok(tasker_step_succeed(s, NULL, 0));
    }
}

static void batch_completion(void **state)
{
    tasker_coordinator *c = *state;
    th_register(c, "{\"namespace\":\"poll\",\"name\":\"batch\",\"steps\":[{\"name\":\"s1\","
                   "\"handler\":\"h\"},{\"name\":\"s2\",\"handler\":\"h\"},{\"name\":\"s3\","
                   "\"handler\":\"h\"},{\"name\":\"s4\",\"handler\":\"h\"},{\"name\":\"sink\","
                   "\"handler\":\"h\",\"depends_on\":[\"s1\",\"s2\",\"s3\",\"s4\"]}]}");
    th_handler(c, "h", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "poll", "batch", NULL);
    tasker_step *got[4];
    size_t n = 0;
    while (n < 4) {
        tasker_step *s = th_claim_one(c);
        got[n++] = s;
    }
    /* Five completions in one call: s1/s2 with results (one with an explicit
     * length), s3 malformed, s4 without a result, and s1 again. */
    tasker_step *batch[5] = {got[0], got[1], got[2], got[3], got[0]};
    char r0[32], r1[32];
    snprintf(r0, sizeof r0, "{\"who\": \"%s\"}", tasker_step_name(got[0]));
    snprintf(r1, sizeof r1, "{\"who\": \"%s\"}XYZ", tasker_step_name(got[1]));
    const char *results[5] = {r0, r1, "{\"broken\": ", NULL, "{}"};
    size_t lens[5] = {0, strlen(r1) - 3, 0, 0, 0};
    int rc[5] = {99, 99, 99, 99, 99};
    th_ok(tasker_steps_succeed(rc, batch, results, lens, 5));
    assert_int_equal(rc[0], TASKER_OK);
    assert_int_equal(rc[1], TASKER_OK);
    assert_int_equal(rc[2], TASKER_EINVAL);
    assert_int_equal(rc[3], TASKER_OK);
    assert_int_equal(rc[4], TASKER_ESTATE);

    json_t *task = th_task(c, uuid);
    const char *n0 = tasker_step_name(got[0]), *n1 = tasker_step_name(got[1]);
    const char *n2 = tasker_step_name(got[2]), *n3 = tasker_step_name(got[3]);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(th_step(task, n0), "result"), "who")), n0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(th_step(task, n1), "result"), "who")), n1);
    assert_string_equal(th_step_state(task, n2), "in_progress");
    assert_true(json_is_null(json_object_get(th_step(task, n3), "result")));
    assert_string_equal(th_step_state(task, "sink"), "pending");
    json_decref(task);

    /* The refused one is still ours to complete; then the sink runs. */
    int one_rc = 99;
    th_ok(tasker_steps_succeed(&one_rc, &got[2], NULL, NULL, 1));
    assert_int_equal(one_rc, TASKER_OK);
    tasker_step *sink = th_claim_one(c);
    assert_string_equal(tasker_step_name(sink), "sink");
    th_ok(tasker_steps_succeed(&one_rc, &sink, NULL, NULL, 1));
    assert_int_equal(one_rc, TASKER_OK);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    /* An empty batch is fine. */
    th_ok(tasker_steps_succeed(&one_rc, &sink, NULL, NULL, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(fd_signals_ready_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(claim_respects_max, setup, teardown),
        cmocka_unit_test_setup_teardown(fd_signals_due_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(poll_and_worker_handlers_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(higher_priority_is_claimed_first, setup, teardown),
        cmocka_unit_test_setup_teardown(equal_priority_is_first_come_first_served, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(batch_completion, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
