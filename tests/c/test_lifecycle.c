/*
 * Coordinator lifecycle: close with steps in flight (completing later gives
 * TASKER_ECLOSED and leaks nothing: ASan and valgrind check), stop with
 * drain (and release of what is still in flight after it), restart,
 * forgetting tasks, retention, and waits that time out.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *one_step = "{\"namespace\":\"life\",\"name\":\"one\",\"steps\":[{\"name\":\"s\"}]}";
static const char *two_steps = "{\"namespace\":\"life\",\"name\":\"two\",\"steps\":[{\"name\":\"s\"},"
                               "{\"name\":\"t\",\"handler\":\"s\",\"depends_on\":[\"s\"]}]}";

static void close_with_claimed_steps(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, one_step);
    th_handler(c, "s", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "life", "one", "{\"big\": \"context\"}");
    th_create(uuid, c, "life", "one", NULL);
    th_create(uuid, c, "life", "one", NULL);
    tasker_step *a = th_claim_one(c), *b = th_claim_one(c);
    th_ok(tasker_coordinator_close(c));
    /* The handles outlive the coordinator until they are completed. */
    assert_string_equal(tasker_step_name(a), "s");
    assert_int_equal(tasker_step_attempt(b), 1);
    assert_non_null(tasker_step_context(a, NULL));
    assert_int_equal(tasker_step_succeed(a, "{\"late\": 1}", 0), TASKER_ECLOSED);
    assert_int_equal(tasker_error_last()->code, TASKER_ECLOSED);
    /* The last one releases what was left of the coordinator. */
    assert_int_equal(tasker_step_fail(b, NULL), TASKER_ECLOSED);
}

typedef struct stash {
    pthread_mutex_t mu;
    tasker_step *steps[64];
    int n;
} stash;

/* Keeps the step for the test to complete later (deferred completion). */
static int stash_handler(tasker_step *step, void *ud)
{
    stash *s = ud;
    pthread_mutex_lock(&s->mu);
    if (s->n < 64)
        s->steps[s->n++] = step;
    pthread_mutex_unlock(&s->mu);
    return TASKER_OK;
}

static int stash_count(stash *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void wait_stashed(stash *s, int n)
{
    double deadline = th_now_ms() + th_wait_ms();
    while (stash_count(s) < n && th_now_ms() < deadline)
        th_sleep_ms(1);
    assert_int_equal(stash_count(s), n);
}

static void close_with_deferred_steps(void **state)
{
    (void)state;
    stash st = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};
    tasker_coordinator *c = th_open(NULL);
    th_register(c, one_step);
    th_handler(c, "s", stash_handler, &st);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 3; i++)
        th_create(uuid, c, "life", "one", NULL);
    wait_stashed(&st, 3);
    /* Close must not wait for deferred steps (their owner may be the caller). */
    th_ok(tasker_coordinator_close(c));
    assert_int_equal(tasker_step_succeed(st.steps[0], NULL, 0), TASKER_ECLOSED);
    assert_int_equal(tasker_step_succeed_pointer(st.steps[1], NULL, NULL), TASKER_ECLOSED);
    tasker_failure f = TASKER_FAILURE_INIT;
    f.message = "too late";
    assert_int_equal(tasker_step_fail(st.steps[2], &f), TASKER_ECLOSED);
}

static int slow_handler(tasker_step *step, void *ud)
{
    (void)ud;
    th_sleep_ms(5);
    (void)tasker_step_succeed(step, "{\"slow\": true}", 0);
    return TASKER_OK;
}

static void close_while_workers_are_busy(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, two_steps);
    th_handler(c, "s", slow_handler, NULL);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 30; i++)
        th_create(uuid, c, "life", "two", NULL);
    th_sleep_ms(10);
    /* Workers finish the handler they are in; pending work is dropped. */
    double t0 = th_now_ms();
    th_ok(tasker_coordinator_close(c));
    assert_true(th_now_ms() - t0 < th_wait_ms());
}

static void *complete_later(void *arg)
{
    stash *s = arg;
    th_sleep_ms(50);
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n; i++) {
        int rc = tasker_step_succeed(s->steps[i], "{\"drained\": true}", 0);
        if (rc != TASKER_OK)
            th_problem("completion during drain: %d (%s)", rc, tasker_error_last()->message);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static const char *once_step = "{\"namespace\":\"life\",\"name\":\"once\",\"steps\":[{\"name\":"
                                "\"s\",\"retry\":{\"max_attempts\":1}}]}";

static void stop_releases_steps_still_in_flight(void **state)
{
    (void)state;
    stash st = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};
    tasker_coordinator *c = th_open(NULL);
    th_register(c, once_step);
    th_handler(c, "s", stash_handler, &st);
    th_ok(tasker_coordinator_start(c, 2));
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE];
    th_create(u1, c, "life", "once", NULL);
    th_create(u2, c, "life", "once", NULL);
    wait_stashed(&st, 2);

    /* Two steps still in flight when the drain runs out: released. */
    double t0 = th_now_ms();
    assert_int_equal(tasker_coordinator_stop(c, 30), TASKER_ETIMEOUT);
    assert_true(th_now_ms() - t0 >= 29.0);
    assert_int_equal(tasker_step_succeed(st.steps[0], "{\"late\": true}", 0), TASKER_ESTALE);
    assert_int_equal(tasker_error_last()->code, TASKER_ESTALE);
    assert_int_equal(tasker_step_fail(st.steps[1], NULL), TASKER_ESTALE);
    json_t *task = th_task(c, u1);
    assert_string_equal(json_string_value(json_object_get(task, "state")), "running");
    assert_string_equal(th_step_state(task, "s"), "enqueued");
    assert_int_equal(th_count_transitions(task, "s", "in_progress", "enqueued", "released", 1), 1);
    assert_int_equal(json_array_size(json_object_get(th_step(task, "s"), "errors")), 0);
    json_decref(task);

    /* Work resumes with start; the release used up no attempt, so even with
     * max_attempts 1 both steps run again and complete. */
    pthread_mutex_lock(&st.mu);
    st.n = 0;
    pthread_mutex_unlock(&st.mu);
    th_ok(tasker_coordinator_start(c, 1));
    wait_stashed(&st, 2);
    for (int i = 0; i < 2; i++)
        th_ok(tasker_step_succeed(st.steps[i], "{\"again\": true}", 0));
    assert_int_equal(th_wait_final(c, u1), TASKER_TASK_COMPLETE);
    assert_int_equal(th_wait_final(c, u2), TASKER_TASK_COMPLETE);
    task = th_task(c, u2);
    assert_true(json_is_true(json_object_get(json_object_get(th_step(task, "s"), "result"),
                                             "again")));
    json_decref(task);
    th_ok(tasker_coordinator_close(c));
}

static void stop_drains_deferred_steps(void **state)
{
    (void)state;
    stash st = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};
    tasker_coordinator *c = th_open(NULL);
    th_register(c, one_step);
    th_handler(c, "s", stash_handler, &st);
    th_ok(tasker_coordinator_start(c, 2));
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE];
    th_create(u1, c, "life", "one", NULL);
    th_create(u2, c, "life", "one", NULL);
    wait_stashed(&st, 2);

    /* A drain that outlasts the completions returns OK once they are in. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, complete_later, &st), 0);
    th_ok(tasker_coordinator_stop(c, th_wait_ms()));
    pthread_join(t, NULL);
    th_assert_no_problems();
    assert_int_equal(th_wait_final(c, u1), TASKER_TASK_COMPLETE);
    assert_int_equal(th_wait_final(c, u2), TASKER_TASK_COMPLETE);
    json_t *task = th_task(c, u1);
    assert_true(json_is_true(json_object_get(json_object_get(th_step(task, "s"), "result"),
                                             "drained")));
    json_decref(task);
    /* Nothing in flight: stop is immediate, also when already stopped. */
    th_ok(tasker_coordinator_stop(c, 0));
    th_ok(tasker_coordinator_stop(c, -1));

    /* Stopped workers can be started again. */
    pthread_mutex_lock(&st.mu);
    st.n = 0;
    pthread_mutex_unlock(&st.mu);
    th_ok(tasker_coordinator_start(c, 1));
    th_create(u1, c, "life", "one", NULL);
    wait_stashed(&st, 1);
    th_ok(tasker_step_succeed(st.steps[0], NULL, 0));
    assert_int_equal(th_wait_final(c, u1), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(c));
}

static void stop_leaves_pending_work_for_later(void **state)
{
    (void)state;
    th_counter runs;
    th_counter_init(&runs);
    tasker_coordinator *c = th_open(NULL);
    th_register(c, one_step);
    th_handler(c, "s", th_handler_count, &runs);
    th_ok(tasker_coordinator_start(c, 1));
    th_ok(tasker_coordinator_stop(c, -1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "life", "one", NULL);
    tasker_task_state st;
    assert_int_equal(tasker_task_wait(&st, c, uuid, 50), TASKER_ETIMEOUT);
    assert_int_equal(st, TASKER_TASK_PENDING);
    assert_int_equal(th_counter_get(&runs), 0);
    th_ok(tasker_coordinator_start(c, 1));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(th_counter_get(&runs), 1);
    th_ok(tasker_coordinator_close(c));
}

static void free_counter(void *p)
{
    (*(int *)p)++;
}

static void forget_tasks(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, two_steps);
    th_handler(c, "s", NULL, NULL);
    char done[TASKER_UUID_BUFSIZE], running[TASKER_UUID_BUFSIZE], cancelled[TASKER_UUID_BUFSIZE];
    int freed = 0;

    th_create(done, c, "life", "two", NULL);
    /* An in-process result is freed when its task is forgotten. */
    th_ok(tasker_step_succeed_pointer(th_claim_one(c), &freed, free_counter));
    th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
    assert_int_equal(th_wait_final(c, done), TASKER_TASK_COMPLETE);
    assert_int_equal(freed, 0);
    th_ok(tasker_task_forget(c, done));
    assert_int_equal(freed, 1);
    char *json = NULL;
    tasker_task_state st;
    assert_int_equal(tasker_task_get(&json, c, done), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_wait(&st, c, done, 0), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_forget(c, done), TASKER_ENOTFOUND);

    /* Not final: refused. */
    th_create(running, c, "life", "two", NULL);
    tasker_step *s = th_claim_one(c);
    assert_int_equal(tasker_task_forget(c, running), TASKER_ESTATE);
    /* Final, but a handler still holds a step: busy until it lets go. */
    th_ok(tasker_task_cancel(c, running));
    assert_int_equal(tasker_task_forget(c, running), TASKER_EBUSY);
    assert_int_equal(tasker_step_succeed(s, NULL, 0), TASKER_ESTATE);
    th_ok(tasker_task_forget(c, running));

    /* Pending and cancelled without any claim: forgettable at once. */
    th_create(cancelled, c, "life", "two", NULL);
    th_ok(tasker_task_cancel(c, cancelled));
    th_ok(tasker_task_forget(c, cancelled));
    assert_int_equal(freed, 1);

    /* A pointer result of a task never forgotten goes with the coordinator. */
    th_create(done, c, "life", "two", NULL);
    th_ok(tasker_step_succeed_pointer(th_claim_one(c), &freed, free_counter));
    th_ok(tasker_coordinator_close(c));
    assert_int_equal(freed, 2);
}

static void retention_forgets_oldest(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open("memory.retain_finished", "2", NULL);
    th_register(c, one_step);
    th_handler(c, "s", NULL, NULL);
    char u[5][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 5; i++) {
        th_create(u[i], c, "life", "one", NULL);
        th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
        assert_int_equal(th_wait_final(c, u[i]), TASKER_TASK_COMPLETE);
    }
    char *json = NULL;
    for (int i = 0; i < 3; i++)
        assert_int_equal(tasker_task_get(&json, c, u[i]), TASKER_ENOTFOUND);
    for (int i = 3; i < 5; i++) {
        json_t *t = th_task(c, u[i]);
        json_decref(t);
    }
    /* Unfinished tasks are never dropped by retention. */
    char live[TASKER_UUID_BUFSIZE];
    th_create(live, c, "life", "one", NULL);
    tasker_step *ls = th_claim_one(c);
    assert_string_equal(tasker_step_task_uuid(ls), live);
    for (int i = 0; i < 3; i++) {
        th_create(u[i], c, "life", "one", NULL);
        th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
        assert_int_equal(th_wait_final(c, u[i]), TASKER_TASK_COMPLETE);
    }
    assert_int_equal(th_task_state(c, live), TASKER_TASK_RUNNING);
    th_ok(tasker_step_succeed(ls, NULL, 0));
    /* Now it is the newest finished task; the two kept are u[2] and live. */
    assert_int_equal(th_task_state(c, live), TASKER_TASK_COMPLETE);
    json_t *t = th_task(c, u[2]);
    json_decref(t);
    assert_int_equal(tasker_task_get(&json, c, u[1]), TASKER_ENOTFOUND);
    th_ok(tasker_coordinator_close(c));
}

static void wait_times_out(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, one_step);
    th_handler(c, "s", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "life", "one", NULL);
    tasker_task_state st = (tasker_task_state)-1;
    double t0 = th_now_ms();
    assert_int_equal(tasker_task_wait(&st, c, uuid, 80), TASKER_ETIMEOUT);
    double waited = th_now_ms() - t0;
    assert_int_equal(st, TASKER_TASK_PENDING);
    if (waited < 79.0)
        fail_msg("tasker_task_wait(80 ms) returned after %.1f ms", waited);
    assert_int_equal(tasker_error_last()->code, TASKER_ETIMEOUT);
    th_ok(tasker_coordinator_close(c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(close_with_claimed_steps),
        cmocka_unit_test(close_with_deferred_steps),
        cmocka_unit_test(close_while_workers_are_busy),
        cmocka_unit_test(stop_releases_steps_still_in_flight),
        cmocka_unit_test(stop_drains_deferred_steps),
        cmocka_unit_test(stop_leaves_pending_work_for_later),
        cmocka_unit_test(forget_tasks),
        cmocka_unit_test(retention_forgets_oldest),
        cmocka_unit_test(wait_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
