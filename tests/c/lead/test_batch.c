/* tasker_steps_succeed: many completions under one lock, each with the
 * status a single tasker_step_succeed would have returned. */
#include "th.h"

#include <string.h>

static const char *fan =
    "{\"namespace\":\"batch\",\"name\":\"fan\",\"steps\":["
    "{\"name\":\"a\",\"handler\":\"p\"},{\"name\":\"b\",\"handler\":\"p\"},"
    "{\"name\":\"c\",\"handler\":\"p\"},"
    "{\"name\":\"sink\",\"handler\":\"p\",\"depends_on\":[\"a\",\"b\",\"c\"]}]}";

static size_t claim_all(tasker_coordinator *c, tasker_step **out, size_t want)
{
    size_t got = 0;
    double deadline = th_now_ms() + th_wait_ms();
    while (got < want && th_now_ms() < deadline) {
        size_t n = 0;
        th_ok(tasker_coordinator_claim(out + got, &n, c, want - got));
        got += n;
        if (got < want)
            th_sleep_ms(1);
    }
    return got;
}

static void batch_completes_each_step_once(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, fan);
    th_handler(c, "p", NULL, NULL);
    char u[TASKER_UUID_BUFSIZE];
    th_create(u, c, "batch", "fan", NULL);
    tasker_step *s[4];
    assert_int_equal(claim_all(c, s, 3), 3);

    /* One malformed result: that step alone is refused and stays in progress. */
    const char *results[] = {"{\"n\": 1}", "not json", NULL};
    int rc[3] = {99, 99, 99};
    th_ok(tasker_steps_succeed(rc, s, results, NULL, 3));
    assert_int_equal(rc[0], TASKER_OK);
    assert_int_equal(rc[1], TASKER_EINVAL);
    assert_int_equal(rc[2], TASKER_OK);
    json_t *task = th_task(c, u);
    assert_string_equal(th_step_state(task, "a"), "complete");
    assert_string_equal(th_step_state(task, "b"), "in_progress");
    assert_string_equal(th_step_state(task, "c"), "complete");
    assert_string_equal(th_step_state(task, "sink"), "pending");
    json_decref(task);

    /* Completing b (valid now) together with a again: a is refused as a
     * second completion, b goes through, and the sink becomes ready. */
    tasker_step *again[2] = {s[1], s[0]};
    const char *r2[] = {"2", "3"};
    size_t l2[] = {1, 1};
    th_ok(tasker_steps_succeed(rc, again, r2, l2, 2));
    assert_int_equal(rc[0], TASKER_OK);
    assert_int_equal(rc[1], TASKER_ESTATE);
    assert_int_equal(claim_all(c, s + 3, 1), 1);
    assert_string_equal(tasker_step_name(s[3]), "sink");
    const char *dep;
    size_t len;
    th_ok(tasker_step_dependency_result(&dep, &len, s[3], "b"));
    assert_int_equal(len, 1);
    assert_memory_equal(dep, "2", 1);
    th_ok(tasker_steps_succeed(rc, s + 3, NULL, NULL, 1));
    assert_int_equal(rc[0], TASKER_OK);
    assert_int_equal(th_wait_final(c, u), TASKER_TASK_COMPLETE);
    task = th_task(c, u);
    assert_int_equal(th_count_transitions(task, "a", "in_progress", "complete", NULL, -1), 1);
    json_decref(task);
    th_ok(tasker_coordinator_close(c));
}

static void batch_bad_arguments(void **state)
{
    (void)state;
    int rc[1];
    tasker_step *none[1] = {NULL};
    assert_int_equal(tasker_steps_succeed(NULL, none, NULL, NULL, 1), TASKER_EINVAL);
    assert_int_equal(tasker_steps_succeed(rc, NULL, NULL, NULL, 1), TASKER_EINVAL);
    th_ok(tasker_steps_succeed(rc, NULL, NULL, NULL, 0));
    th_ok(tasker_steps_succeed(rc, none, NULL, NULL, 1));
    assert_int_equal(rc[0], TASKER_EINVAL);
}

static void batch_after_close(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, fan);
    th_handler(c, "p", NULL, NULL);
    char u[TASKER_UUID_BUFSIZE];
    th_create(u, c, "batch", "fan", NULL);
    tasker_step *s[3];
    assert_int_equal(claim_all(c, s, 3), 3);
    th_ok(tasker_coordinator_close(c));
    int rc[3];
    /* The coordinator's memory goes with the last of these; no leak, no crash. */
    th_ok(tasker_steps_succeed(rc, s, NULL, NULL, 3));
    for (int i = 0; i < 3; i++)
        assert_int_equal(rc[i], TASKER_ECLOSED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_completes_each_step_once),
        cmocka_unit_test(batch_bad_arguments),
        cmocka_unit_test(batch_after_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
