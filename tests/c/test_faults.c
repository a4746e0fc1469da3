/*
 * Allocation-failure injection (SQLite's malloc tests, curl's torture mode).
 *
 * A small but complete workflow (config, open, handlers, template from JSON
 * and from the builder, create with an idempotency key, claim, succeed,
 * fail + retry, dependency results, task JSON, forget, close) first runs
 * clean to count the library's allocations.  Then, for every allocation n,
 * it runs again with allocation n (and every later one) failing.  Each call
 * must either succeed or return TASKER_ENOMEM having changed nothing: the
 * test then lifts the fault and makes the same call again, which must now
 * succeed, and the workflow must end exactly as the clean run did.  Leaks
 * on any of these paths are reported by ASan (or valgrind) at exit.
 *
 * Uses the internal hook tasker__alloc_fail_after from capi/core/alloc.h, so
 * it links the static library.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

static const char *tmpl_json =
    "{\"namespace\":\"fault\",\"name\":\"wf\",\"steps\":["
    "{\"name\":\"a\"},"
    "{\"name\":\"b\",\"depends_on\":[\"a\"],\"retry\":{\"max_attempts\":3,\"backoff\":\"none\","
    "\"base_ms\":0,\"max_ms\":0}}]}";

typedef struct run {
    long point;     /* allocation that fails first; -1: none */
    int injecting;  /* the fault is still armed */
    int enomem;     /* calls that returned TASKER_ENOMEM */
    int registered; /* handler registrations attempted */
    int freed;      /* free_userdata calls seen */
} run;

static run R;

/*
 * Runs `expr`; on TASKER_ENOMEM while the fault is armed, checks the last
 * error, disarms the fault and runs `expr` again.  Anything but TASKER_OK in
 * the end fails the test, naming the call and the fault point.
 */
#define CALL(expr)                                                    \
    do {                                                              \
        if (!_call_check(__FILE__, __LINE__, #expr, (expr)))          \
            _call_retry(__FILE__, __LINE__, #expr, (expr));           \
    } while (0)

static int _call_check(const char *file, int line, const char *what, int rc)
{
    if (getenv("TH_FAULT_VERBOSE") && getenv("TH_FAULT_POINT"))
        print_message("  %s -> %d (allocations so far %ld)\n", what, rc, R.point);
    if (rc == TASKER_OK)
        return 1;
    if (rc == TASKER_ENOMEM && R.injecting) {
        const tasker_error *e = tasker_error_last();
        if (e->code != TASKER_ENOMEM) {
            tasker__alloc_fail_after(-1);
            print_error("%s:%d: %s returned ENOMEM but the last error has code %d\n", file, line,
                        what, e->code);
            _fail(file, line);
        }
        R.enomem++;
        R.injecting = 0;
        if (getenv("TH_FAULT_VERBOSE"))
            print_message("fault point %ld: %s returned ENOMEM\n", R.point, what);
        tasker__alloc_fail_after(-1);
        return 0; /* run it again */
    }
    tasker__alloc_fail_after(-1);
    print_error("%s:%d: %s returned %d (%s) with allocation %ld failing; message: %s\n", file,
                line, what, rc, tasker_strerror(rc), R.point, tasker_error_last()->message);
    _fail(file, line);
    return 1;
}

static void _call_retry(const char *file, int line, const char *what, int rc)
{
    if (rc != TASKER_OK) {
        print_error("%s:%d: %s failed with %d (%s) on the retry after ENOMEM at allocation %ld "
                    "(the failed call changed something): %s\n",
                    file, line, what, rc, tasker_strerror(rc), R.point,
                    tasker_error_last()->message);
        _fail(file, line);
    }
}

static void count_free(void *p)
{
    (void)p;
    R.freed++;
}

/* Every attempt hands over a destructor, which runs exactly once: when the
 * registration fails, or when the coordinator is freed. */
static int register_handler(tasker_coordinator *c, const char *name)
{
    R.registered++;
    return tasker_handler_register(c, name, NULL, &R, count_free);
}

/* Claims one step, waiting on the descriptor while none is ready. */
static tasker_step *claim_one(tasker_coordinator *c)
{
    double deadline = th_now_ms() + th_wait_ms();
    for (;;) {
        tasker_step *s = NULL;
        size_t n = 0;
        CALL(tasker_coordinator_claim(&s, &n, c, 1));
        if (n == 1)
            return s;
        if (th_now_ms() > deadline) {
            tasker__alloc_fail_after(-1);
            fail_msg("no step became ready (fault point %ld)", R.point);
        }
        (void)th_fd_readable(c, 10);
    }
}

typedef struct outcome {
    char *task_json;
    char *dep_result;
    char uuid[TASKER_UUID_BUFSIZE];
} outcome;

static void workflow(outcome *out)
{
    tasker_config *cfg = NULL;
    tasker_coordinator *c = NULL;
    tasker_template *t = NULL;
    char *text = NULL;

    CALL(tasker_config_new(&cfg));
    CALL(tasker_config_set(cfg, "template.max_steps", "100"));
    CALL(tasker_config_get(&text, cfg, "template.max_steps"));
    tasker_free(text);
    CALL(tasker_coordinator_open(&c, cfg));
    tasker_config_free(cfg);

    CALL(register_handler(c, "a"));
    CALL(register_handler(c, "b"));
    CALL(tasker_template_register_json(c, tmpl_json, 0));

    /* The same template again through the builder: identical, so OK. */
    CALL(tasker_template_new(&t, "fault", "wf", "1"));
    CALL(tasker_template_add_step(t, "a", NULL, NULL, 0, NULL));
    tasker_step_options o = TASKER_STEP_OPTIONS_INIT;
    o.backoff = TASKER_BACKOFF_NONE;
    o.base_ms = 0;
    o.max_ms = 0;
    const char *deps[] = {"a"};
    CALL(tasker_template_add_step(t, "b", NULL, deps, 1, &o));
    CALL(tasker_template_register(c, t));
    CALL(tasker_template_to_json(&text, t));
    tasker_free(text);
    tasker_template_free(t);

    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "fault";
    req.name = "wf";
    req.context_json = "{\"order\": 1}";
    req.idempotency_key = "fault-key";
    CALL(tasker_task_create(out->uuid, c, &req));
    char again[TASKER_UUID_BUFSIZE];
    CALL(tasker_task_create(again, c, &req));
    if (strcmp(again, out->uuid) != 0) {
        tasker__alloc_fail_after(-1);
        fail_msg("idempotent create gave a second task (fault point %ld)", R.point);
    }

    tasker_step *a = claim_one(c);
    if (strcmp(tasker_step_name(a), "a") != 0) {
        tasker__alloc_fail_after(-1);
        fail_msg("claimed %s, expected a (fault point %ld)", tasker_step_name(a), R.point);
    }
    CALL(tasker_step_succeed(a, "{\"x\": 1}", 0));
    tasker_step *b = claim_one(c);
    const char *dep = NULL;
    size_t len = 0;
    CALL(tasker_step_dependency_result(&dep, &len, b, "a"));
    out->dep_result = strndup(dep, len);
    tasker_failure f = TASKER_FAILURE_INIT;
    f.error_class = "Flaky";
    f.message = "once";
    f.context_json = "{\"why\": \"test\"}";
    CALL(tasker_step_fail(b, &f));
    b = claim_one(c);
    CALL(tasker_step_succeed(b, NULL, 0));

    tasker_task_state st;
    CALL(tasker_task_wait(&st, c, out->uuid, 0));
    CALL(tasker_task_get(&out->task_json, c, out->uuid));
    CALL(tasker_task_forget(c, out->uuid));
    CALL(tasker_coordinator_close(c));
}

static void check_outcome(outcome *o)
{
    json_t *task = json_loads(o->task_json, 0, NULL);
    if (task == NULL)
        fail_msg("fault point %ld: unparsable task JSON", R.point);
    if (strcmp(json_string_value(json_object_get(task, "state")), "complete") != 0 ||
        strcmp(th_step_state(task, "a"), "complete") != 0 ||
        strcmp(th_step_state(task, "b"), "complete") != 0 || th_step_attempts(task, "a") != 1 ||
        th_step_attempts(task, "b") != 2 ||
        json_array_size(json_object_get(th_step(task, "b"), "errors")) != 1 ||
        json_integer_value(json_object_get(json_object_get(th_step(task, "a"), "result"), "x")) !=
            1 ||
        json_integer_value(json_object_get(json_object_get(task, "context"), "order")) != 1)
        fail_msg("fault point %ld: the workflow ended differently:\n%s", R.point, o->task_json);
    /* Nothing lost from the history, nothing duplicated. */
    if (th_count_transitions(task, "", NULL, NULL, NULL, -1) != 3 ||
        th_count_transitions(task, "a", NULL, NULL, NULL, -1) != 3 ||
        th_count_transitions(task, "b", NULL, NULL, NULL, -1) != 6)
        fail_msg("fault point %ld: transition history is wrong:\n%s", R.point, o->task_json);
    json_decref(task);
    json_t *dep = json_loads(o->dep_result, 0, NULL);
    if (json_integer_value(json_object_get(dep, "x")) != 1)
        fail_msg("fault point %ld: dependency result %s", R.point, o->dep_result);
    json_decref(dep);
    if (R.freed != R.registered)
        fail_msg("fault point %ld: free_userdata ran %d times for %d registrations", R.point,
                 R.freed, R.registered);
}

static void each_allocation_fails_in_turn(void **state)
{
    (void)state;
    outcome clean = {0};
    memset(&R, 0, sizeof R);
    R.point = -1;
    tasker__alloc_fail_after(-1); /* resets the counter */
    workflow(&clean);
    long total = tasker__alloc_fail_after(-1);
    check_outcome(&clean);
    tasker_free(clean.task_json);
    free(clean.dep_result);
    print_message("clean workflow: %ld allocations\n", total);
    assert_true(total > 10);

    /* TH_FAULT_POINT=n runs only that point (to reproduce one failure);
     * TH_FAULT_VERBOSE=1 prints which call reported each failure. */
    long first = 0, last = total + 5;
    if (getenv("TH_FAULT_POINT")) {
        first = atol(getenv("TH_FAULT_POINT"));
        last = first + 1;
    }
    int reported = 0;
    for (long n = first; n < last; n++) {
        outcome o = {0};
        memset(&R, 0, sizeof R);
        R.point = n;
        R.injecting = 1;
        tasker__alloc_fail_after(n);
        workflow(&o);
        tasker__alloc_fail_after(-1);
        check_outcome(&o);
        reported += R.enomem;
        tasker_free(o.task_json);
        free(o.dep_result);
    }
    print_message("%ld fault points, %d reported TASKER_ENOMEM\n", total, reported);
    /* Most failures must surface; a few may be absorbed (e.g. an optional
     * cache), but not the majority. */
    assert_true(reported * 2 > last - first - 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(each_allocation_fails_in_turn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
