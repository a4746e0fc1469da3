/*
 * Every public call with NULL or garbage arguments: TASKER_EINVAL (or the
 * documented code), a last error that says so, and never a crash.  Runs
 * under ASan/UBSan and valgrind, which catch any bad read the checks miss.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EINVAL_OF(expr) _einval_of(__FILE__, __LINE__, #expr, (expr))
static void _einval_of(const char *file, int line, const char *what, int rc)
{
    if (rc != TASKER_EINVAL) {
        print_error("%s:%d: %s returned %d, expected TASKER_EINVAL\n", file, line, what, rc);
        _fail(file, line);
    }
    const tasker_error *e = tasker_error_last();
    if (e->code != TASKER_EINVAL || e->category != TASKER_CATEGORY_ARGUMENT ||
        e->message == NULL || e->message[0] == '\0') {
        print_error("%s:%d: %s: last error code %d category %d message \"%s\"\n", file, line,
                    what, e->code, e->category, e->message ? e->message : "(null)");
        _fail(file, line);
    }
    tasker_error_clear();
}

static const char *garbage_uuids[] = {
    "", "x", "not-a-uuid", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
    "01a20971-d565-7244-9d69-381a866a5f9", /* 35 characters */
    "01a20971-d565-7244-9d69-381a866a5f933", /* 37 characters */
    "01a20971d56572449d69381a866a5f93xxxx",
};
#define N_GARBAGE (sizeof garbage_uuids / sizeof garbage_uuids[0])
static const char *unknown_uuid = "00000000-0000-7000-8000-000000000000";

static void free_counter(void *p)
{
    (*(int *)p)++;
}

static void config_args(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    char *v = NULL;
    EINVAL_OF(tasker_config_new(NULL));
    th_ok(tasker_config_new(&cfg));
    EINVAL_OF(tasker_config_set(NULL, "store", "memory"));
    EINVAL_OF(tasker_config_set(cfg, NULL, "memory"));
    EINVAL_OF(tasker_config_set(cfg, "store", NULL));
    EINVAL_OF(tasker_config_get(NULL, cfg, "store"));
    EINVAL_OF(tasker_config_get(&v, NULL, "store"));
    EINVAL_OF(tasker_config_get(&v, cfg, NULL));
    assert_null(v);
    EINVAL_OF(tasker_config_load_file(NULL, "/dev/null"));
    EINVAL_OF(tasker_config_load_file(cfg, NULL));
    EINVAL_OF(tasker_config_load_env(NULL, "X_"));
    EINVAL_OF(tasker_config_validate(NULL));
    tasker_config_free(NULL);
    tasker_config_free(cfg);
    tasker_free(NULL);
}

static void coordinator_args(void **state)
{
    (void)state;
    EINVAL_OF(tasker_coordinator_open(NULL, NULL));
    assert_int_equal(tasker_coordinator_close(NULL), TASKER_OK);
    tasker_coordinator *c = th_open(NULL);
    EINVAL_OF(tasker_coordinator_start(NULL, 1));
    EINVAL_OF(tasker_coordinator_start(c, 0));
    EINVAL_OF(tasker_coordinator_start(c, 257));
    EINVAL_OF(tasker_coordinator_stop(NULL, 0));
    int fd = -1;
    EINVAL_OF(tasker_coordinator_fd(NULL, c));
    EINVAL_OF(tasker_coordinator_fd(&fd, NULL));
    tasker_step *steps[4];
    size_t n = 0;
    EINVAL_OF(tasker_coordinator_claim(NULL, &n, c, 4));
    EINVAL_OF(tasker_coordinator_claim(steps, NULL, c, 4));
    EINVAL_OF(tasker_coordinator_claim(steps, &n, NULL, 4));

    /* free_userdata runs when registration fails, so nothing leaks. */
    int freed = 0;
    EINVAL_OF(tasker_handler_register(NULL, "h", th_handler_noop, &freed, free_counter));
    assert_int_equal(freed, 1);
    EINVAL_OF(tasker_handler_register(c, NULL, th_handler_noop, &freed, free_counter));
    assert_int_equal(freed, 2);
    EINVAL_OF(tasker_handler_register(c, "", th_handler_noop, &freed, free_counter));
    assert_int_equal(freed, 3);
    th_ok(tasker_handler_register(c, "h", th_handler_noop, &freed, free_counter));
    assert_int_equal(freed, 3);
    assert_int_equal(tasker_handler_register(c, "h", NULL, &freed, free_counter), TASKER_EEXIST);
    assert_int_equal(freed, 4);
    /* The registered one's userdata goes when the coordinator does. */
    th_ok(tasker_coordinator_close(c));
    assert_int_equal(freed, 5);
}

static void template_args(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    tasker_template *t = NULL;
    char *json = NULL;
    tasker_step_options o;
    EINVAL_OF(tasker_step_options_init(NULL, TASKER_STEP_OPTIONS_VERSION));
    assert_true(tasker_step_options_init(&o, 0) < 0);
    assert_true(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION + 100) < 0);
    EINVAL_OF(tasker_template_new(NULL, "ns", "n", "1"));
    EINVAL_OF(tasker_template_new(&t, NULL, "n", "1"));
    EINVAL_OF(tasker_template_new(&t, "ns", NULL, "1"));
    assert_null(t);
    tasker_template_free(NULL);
    EINVAL_OF(tasker_template_add_step(NULL, "a", NULL, NULL, 0, NULL));
    th_ok(tasker_template_new(&t, "ns", "n", "1"));
    EINVAL_OF(tasker_template_add_step(t, NULL, NULL, NULL, 0, NULL));
    EINVAL_OF(tasker_template_add_step(t, "a", NULL, NULL, 2, NULL));
    const char *deps_with_null[] = {"x", NULL};
    EINVAL_OF(tasker_template_add_step(t, "a", NULL, deps_with_null, 2, NULL));
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    o.version = 0;
    assert_true(tasker_template_add_step(t, "a", NULL, NULL, 0, &o) < 0);
    /* None of the refused calls added anything. */
    th_ok(tasker_template_to_json(&json, t));
    json_t *j = json_loads(json, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "steps")), 0);
    json_decref(j);
    tasker_free(json);
    json = NULL;

    EINVAL_OF(tasker_template_to_json(NULL, t));
    EINVAL_OF(tasker_template_to_json(&json, NULL));
    assert_null(json);
    EINVAL_OF(tasker_template_from_json(NULL, "{}", 0));
    tasker_template *t2 = NULL;
    EINVAL_OF(tasker_template_from_json(&t2, NULL, 0));
    assert_null(t2);
    EINVAL_OF(tasker_template_register(NULL, t));
    EINVAL_OF(tasker_template_register(c, NULL));
    EINVAL_OF(tasker_template_register_json(NULL, "{}", 0));
    EINVAL_OF(tasker_template_register_json(c, NULL, 0));
    tasker_template_free(t);
    th_ok(tasker_coordinator_close(c));
}

static void task_args(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"args\",\"name\":\"t\",\"steps\":[{\"name\":\"a\"},"
                   "{\"name\":\"b\",\"handler\":\"missing\",\"depends_on\":[\"a\"]}]}");
    th_register(c, "{\"namespace\":\"args\",\"name\":\"ok\",\"steps\":[{\"name\":\"a\"}]}");
    th_handler(c, "a", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    tasker_task_request req;
    EINVAL_OF(tasker_task_request_init(NULL, TASKER_TASK_REQUEST_VERSION));
    th_ok(tasker_task_request_init(&req, TASKER_TASK_REQUEST_VERSION));
    assert_null(req.ns);
    assert_int_equal(req.priority, 0);
    req.ns = "args";
    req.name = "ok";
    EINVAL_OF(tasker_task_create(NULL, c, &req));
    EINVAL_OF(tasker_task_create(uuid, NULL, &req));
    EINVAL_OF(tasker_task_create(uuid, c, NULL));
    req.ns = NULL;
    EINVAL_OF(tasker_task_create(uuid, c, &req));
    req.ns = "args";
    req.name = NULL;
    EINVAL_OF(tasker_task_create(uuid, c, &req));
    req.name = "ok";
    req.version = 0;
    EINVAL_OF(tasker_task_create(uuid, c, &req));
    req.version = TASKER_TASK_REQUEST_VERSION;
    static const char *bad_ctx[] = {"[1, 2]", "42", "\"str\"", "{\"open\": ", "{} {}"};
    for (size_t i = 0; i < sizeof bad_ctx / sizeof bad_ctx[0]; i++) {
        req.context_json = bad_ctx[i];
        EINVAL_OF(tasker_task_create(uuid, c, &req));
    }
    req.context_json = NULL;
    req.name = "nope";
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_ENOTFOUND);
    /* Every handler must exist; the error names the missing one. */
    req.name = "t";
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_EHANDLER);
    const tasker_error *e = tasker_error_last();
    assert_int_equal(e->code, TASKER_EHANDLER);
    if (strstr(e->message, "missing") == NULL && strstr(e->context_json, "missing") == NULL)
        fail_msg("EHANDLER does not name the handler: %s / %s", e->message, e->context_json);
    req.name = "ok";
    th_ok(tasker_task_create(uuid, c, &req));

    tasker_task_state st;
    char *json = NULL;
    EINVAL_OF(tasker_task_wait(NULL, c, uuid, 0));
    EINVAL_OF(tasker_task_wait(&st, NULL, uuid, 0));
    EINVAL_OF(tasker_task_wait(&st, c, NULL, 0));
    EINVAL_OF(tasker_task_get(NULL, c, uuid));
    EINVAL_OF(tasker_task_get(&json, NULL, uuid));
    EINVAL_OF(tasker_task_get(&json, c, NULL));
    EINVAL_OF(tasker_task_cancel(NULL, uuid));
    EINVAL_OF(tasker_task_cancel(c, NULL));
    EINVAL_OF(tasker_task_retry(NULL, uuid));
    EINVAL_OF(tasker_task_retry(c, NULL));
    EINVAL_OF(tasker_task_forget(NULL, uuid));
    EINVAL_OF(tasker_task_forget(c, NULL));
    EINVAL_OF(tasker_step_resolve(NULL, uuid, "a", NULL, 0));
    EINVAL_OF(tasker_step_resolve(c, NULL, "a", NULL, 0));
    EINVAL_OF(tasker_step_resolve(c, uuid, NULL, NULL, 0));
    for (size_t i = 0; i < N_GARBAGE; i++) {
        const char *g = garbage_uuids[i];
        EINVAL_OF(tasker_task_wait(&st, c, g, 0));
        EINVAL_OF(tasker_task_get(&json, c, g));
        EINVAL_OF(tasker_task_cancel(c, g));
        EINVAL_OF(tasker_task_retry(c, g));
        EINVAL_OF(tasker_task_forget(c, g));
        EINVAL_OF(tasker_step_resolve(c, g, "a", NULL, 0));
    }
    assert_null(json);
    assert_int_equal(tasker_task_wait(&st, c, unknown_uuid, 0), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_get(&json, c, unknown_uuid), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_cancel(c, unknown_uuid), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_retry(c, unknown_uuid), TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_forget(c, unknown_uuid), TASKER_ENOTFOUND);
    assert_int_equal(tasker_step_resolve(c, unknown_uuid, "a", NULL, 0), TASKER_ENOTFOUND);
    /* The task is untouched by all of that. */
    assert_int_equal(th_task_state(c, uuid), TASKER_TASK_PENDING);
    th_ok(tasker_coordinator_close(c));
}

static void step_args(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"args\",\"name\":\"s\",\"steps\":[{\"name\":\"a\"},"
                   "{\"name\":\"b\",\"depends_on\":[\"a\"]}]}");
    th_handler(c, "a", NULL, NULL);
    th_handler(c, "b", NULL, NULL);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "args", "s", NULL);
    th_ok(tasker_step_succeed(th_claim_one(c), "{\"x\": 1}", 0));
    tasker_step *s = th_claim_one(c);

    /* Accessors on NULL give NULL / 0. */
    assert_null(tasker_step_name(NULL));
    assert_null(tasker_step_handler_name(NULL));
    assert_null(tasker_step_uuid(NULL));
    assert_null(tasker_step_task_uuid(NULL));
    assert_null(tasker_step_namespace(NULL));
    assert_null(tasker_step_template_name(NULL));
    assert_int_equal(tasker_step_attempt(NULL), 0);
    assert_int_equal(tasker_step_max_attempts(NULL), 0);
    size_t len = 99;
    assert_null(tasker_step_context(NULL, &len));
    assert_null(tasker_step_context(NULL, NULL));
    assert_int_equal(tasker_step_dependency_count(NULL), 0);
    assert_null(tasker_step_dependency_name(NULL, 0));
    assert_null(tasker_step_dependency_name(s, 1));
    assert_null(tasker_step_dependency_name(s, (size_t)-1));
    assert_string_equal(tasker_step_dependency_name(s, 0), "a");
    /* Context without a length pointer. */
    assert_string_equal(tasker_step_context(s, NULL), "{}");

    const char *res = NULL;
    void *ptr = NULL;
    EINVAL_OF(tasker_step_dependency_result(NULL, &len, s, "a"));
    EINVAL_OF(tasker_step_dependency_result(&res, &len, NULL, "a"));
    EINVAL_OF(tasker_step_dependency_result(&res, &len, s, NULL));
    assert_int_equal(tasker_step_dependency_result(&res, &len, s, "b"), TASKER_ENOTFOUND);
    assert_int_equal(tasker_step_dependency_result(&res, &len, s, "zz"), TASKER_ENOTFOUND);
    EINVAL_OF(tasker_step_dependency_pointer(NULL, s, "a"));
    EINVAL_OF(tasker_step_dependency_pointer(&ptr, NULL, "a"));
    EINVAL_OF(tasker_step_dependency_pointer(&ptr, s, NULL));

    tasker_failure f;
    EINVAL_OF(tasker_failure_init(NULL, TASKER_FAILURE_VERSION));
    th_ok(tasker_failure_init(&f, TASKER_FAILURE_VERSION));
    assert_int_equal(f.retryable, 1);
    assert_int_equal(f.retry_after_ms, -1);
    assert_true(tasker_failure_init(&f, 0) < 0);

    EINVAL_OF(tasker_step_succeed(NULL, NULL, 0));
    int rcs[2] = {99, 99};
    tasker_step *pair[2] = {NULL, NULL};
    EINVAL_OF(tasker_steps_succeed(NULL, pair, NULL, NULL, 2));
    EINVAL_OF(tasker_steps_succeed(rcs, NULL, NULL, NULL, 2));
    /* NULL handles inside a batch are reported one by one. */
    th_ok(tasker_steps_succeed(rcs, pair, NULL, NULL, 2));
    assert_int_equal(rcs[0], TASKER_EINVAL);
    assert_int_equal(rcs[1], TASKER_EINVAL);
    EINVAL_OF(tasker_step_fail(NULL, NULL));
    int freed = 0;
    EINVAL_OF(tasker_step_succeed_pointer(NULL, &freed, free_counter));
    assert_int_equal(freed, 1); /* the destructor runs when the call fails */

    /* Bad failures are refused and leave the step in progress. */
    th_ok(tasker_failure_init(&f, TASKER_FAILURE_VERSION));
    f.context_json = "{\"broken\": ";
    EINVAL_OF(tasker_step_fail(s, &f));
    f.context_json = "[1]";
    EINVAL_OF(tasker_step_fail(s, &f));
    th_ok(tasker_failure_init(&f, TASKER_FAILURE_VERSION));
    f.retry_after_ms = -2;
    EINVAL_OF(tasker_step_fail(s, &f));
    th_ok(tasker_failure_init(&f, TASKER_FAILURE_VERSION));
    f.version = 0;
    assert_true(tasker_step_fail(s, &f) < 0);
    EINVAL_OF(tasker_step_succeed(s, "nope", 0));
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "b"), "in_progress");
    assert_int_equal(json_array_size(json_object_get(th_step(task, "b"), "errors")), 0);
    json_decref(task);
    /* An explicit length takes only that much of the text. */
    th_ok(tasker_step_succeed(s, "{\"y\": 2}GARBAGE", 8));
    task = th_task(c, uuid);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(th_step(task, "b"),
                                                                        "result"), "y")), 2);
    json_decref(task);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_args),
        cmocka_unit_test(coordinator_args),
        cmocka_unit_test(template_args),
        cmocka_unit_test(task_args),
        cmocka_unit_test(step_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
