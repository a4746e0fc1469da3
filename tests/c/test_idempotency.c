/*
 * Idempotency keys: the same key returns the same task and never runs a
 * second one.  (Racing creators on one key are in test_threads.)
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"idem\",\"name\":\"pay\",\"steps\":[{\"name\":\"charge\"}]}");
    th_register(c, "{\"namespace\":\"idem\",\"name\":\"refund\",\"steps\":[{\"name\":\"back\"}]}");
    th_handler(c, "charge", NULL, NULL);
    th_handler(c, "back", NULL, NULL);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    tasker_coordinator_close(*state);
    return 0;
}

static int create(char uuid[TASKER_UUID_BUFSIZE], tasker_coordinator *c, const char *name,
                  const char *key, const char *ctx)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "idem";
    req.name = name;
    req.idempotency_key = key;
    req.context_json = ctx;
    memset(uuid, 0, TASKER_UUID_BUFSIZE);
    return tasker_task_create(uuid, c, &req);
}

/* Claims everything ready now; returns how many steps. */
static size_t drain(tasker_coordinator *c)
{
    size_t total = 0;
    for (;;) {
        tasker_step *s[16];
        size_t n = 0;
        th_ok(tasker_coordinator_claim(s, &n, c, 16));
        for (size_t i = 0; i < n; i++)
            th_ok(tasker_step_succeed(s[i], NULL, 0));
        total += n;
        if (n == 0)
            return total;
    }
}

static void same_key_same_task(void **state)
{
    tasker_coordinator *c = *state;
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE], u3[TASKER_UUID_BUFSIZE];
    th_ok(create(u1, c, "pay", "order-17", "{\"amount\": 10}"));
    th_ok(create(u2, c, "pay", "order-17", "{\"amount\": 10}"));
    assert_string_equal(u1, u2);
    /* A different context under the same key is still the first task. */
    th_ok(create(u3, c, "pay", "order-17", "{\"amount\": 99}"));
    assert_string_equal(u1, u3);
    assert_true(th_fd_readable(c, th_wait_ms()));
    assert_int_equal(drain(c), 1);
    assert_int_equal(th_wait_final(c, u1), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, u1);
    assert_string_equal(json_string_value(json_object_get(task, "idempotency_key")), "order-17");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(task, "context"),
                                                        "amount")), 10);
    json_decref(task);

    /* After it finished the key still names it; nothing runs again. */
    th_ok(create(u2, c, "pay", "order-17", NULL));
    assert_string_equal(u1, u2);
    assert_int_equal(drain(c), 0);
    assert_int_equal(th_task_state(c, u1), TASKER_TASK_COMPLETE);
}

static void same_key_other_template_is_refused(void **state)
{
    tasker_coordinator *c = *state;
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE];
    th_ok(create(u1, c, "pay", "k-1", NULL));
    tasker_error_clear();
    assert_int_equal(create(u2, c, "refund", "k-1", NULL), TASKER_EEXIST);
    assert_int_equal(tasker_error_last()->code, TASKER_EEXIST);
    assert_int_equal(drain(c), 1);
}

static void different_keys_and_no_key(void **state)
{
    tasker_coordinator *c = *state;
    char u[6][TASKER_UUID_BUFSIZE];
    th_ok(create(u[0], c, "pay", "a", NULL));
    th_ok(create(u[1], c, "pay", "b", NULL));
    th_ok(create(u[2], c, "pay", NULL, NULL));
    th_ok(create(u[3], c, "pay", NULL, NULL));
    /* Keys are compared exactly: no case folding or trimming. */
    th_ok(create(u[4], c, "pay", "A", NULL));
    th_ok(create(u[5], c, "pay", "a ", NULL));
    for (int i = 0; i < 6; i++)
        for (int k = 0; k < i; k++)
            assert_string_not_equal(u[i], u[k]);
    assert_int_equal(drain(c), 6);
    json_t *task = th_task(c, u[2]);
    assert_true(json_is_null(json_object_get(task, "idempotency_key")));
    json_decref(task);
}

static void key_of_cancelled_task(void **state)
{
    tasker_coordinator *c = *state;
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE];
    th_ok(create(u1, c, "pay", "cancel-me", NULL));
    th_ok(tasker_task_cancel(c, u1));
    /* The key keeps naming the cancelled task: a retrying client must not
     * start the work the operator cancelled. */
    th_ok(create(u2, c, "pay", "cancel-me", NULL));
    assert_string_equal(u1, u2);
    assert_int_equal(th_task_state(c, u2), TASKER_TASK_CANCELLED);
    assert_int_equal(drain(c), 0);
}

static void many_keys(void **state)
{
    tasker_coordinator *c = *state;
    enum { N = 500 };
    char(*u)[TASKER_UUID_BUFSIZE] = calloc(N, TASKER_UUID_BUFSIZE);
    char key[32];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            char uuid[TASKER_UUID_BUFSIZE];
            snprintf(key, sizeof key, "key-%d", i);
            th_ok(create(uuid, c, "pay", key, NULL));
            if (round == 0)
                memcpy(u[i], uuid, sizeof uuid);
            else if (strcmp(u[i], uuid) != 0)
                fail_msg("key-%d gave %s, then %s", i, u[i], uuid);
        }
    }
    assert_int_equal(drain(c), N);
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(same_key_same_task, setup, teardown),
        cmocka_unit_test_setup_teardown(same_key_other_template_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(different_keys_and_no_key, setup, teardown),
        cmocka_unit_test_setup_teardown(key_of_cancelled_task, setup, teardown),
        cmocka_unit_test_setup_teardown(many_keys, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
