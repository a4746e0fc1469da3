/*
 * Task and step lifecycle on the postgres store: retries with backoff and
 * retry_after, retries exhausted -> error -> dead letter -> manual retry,
 * permanent failure -> manual resolve, cancel while a handler runs,
 * idempotency keys (also concurrent), names that look like SQL injection
 * stored literally, what a handler sees, and the API's error codes.
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static tasker_coordinator *coord;
static const char *url;

/* ---- handlers ---------------------------------------------------------- */

/* Fails attempts 1..fail_until-1 (retryable), records when each started. */
typedef struct flaky {
    pthread_mutex_t mu;
    int fail_until; /* attempts below this fail */
    int permanent;  /* fail with retryable = 0 */
    int64_t retry_after;
    double started[16];
    int n;
} flaky;

static flaky fl = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int flaky_handler(tasker_step *step, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&fl.mu);
    if (fl.n < 16)
        fl.started[fl.n++] = th_now_ms();
    int fail = (int)tasker_step_attempt(step) < fl.fail_until;
    int permanent = fl.permanent;
    int64_t after = fl.retry_after;
    pthread_mutex_unlock(&fl.mu);
    if (fail) {
        tasker_failure f = TASKER_FAILURE_INIT;
        f.error_class = "FlakyError";
        f.message = "not yet";
        f.retryable = !permanent;
        f.retry_after_ms = after;
        f.context_json = "{\"why\": \"testing\"}";
        int rc = tasker_step_fail(step, &f);
        if (rc)
            th_problem("flaky: fail = %d", rc);
        return TASKER_OK;
    }
    const char *dep = NULL;
    size_t len = 0;
    char buf[512] = "{\"ok\": true}";
    if (tasker_step_dependency_count(step) == 1 &&
        tasker_step_dependency_result(&dep, &len, step, tasker_step_dependency_name(step, 0)) == 0)
        snprintf(buf, sizeof buf, "{\"ok\": true, \"got\": %.*s}", (int)len, dep);
    int rc = tasker_step_succeed(step, buf, 0);
    if (rc)
        th_problem("flaky: succeed = %d", rc);
    return TASKER_OK;
}

/* Blocks until released; then tries to succeed and records the result. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, open, rc;
} gate;

static gate gt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static int gate_handler(tasker_step *step, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&gt.mu);
    gt.entered++;
    pthread_cond_broadcast(&gt.cv);
    while (!gt.open)
        pthread_cond_wait(&gt.cv, &gt.mu);
    pthread_mutex_unlock(&gt.mu);
    int rc = tasker_step_succeed(step, "{\"late\": true}", 0);
    pthread_mutex_lock(&gt.mu);
    gt.rc = rc;
    gt.entered = -1;
    pthread_cond_broadcast(&gt.cv);
    pthread_mutex_unlock(&gt.mu);
    return TASKER_OK;
}

/* Checks what a handler sees; set once the handler is done. */
static _Atomic int seen_ok;
static int inspect_handler(tasker_step *step, void *ud)
{
    (void)ud;
    size_t len = 0;
    const char *ctx = tasker_step_context(step, &len);
    json_t *j = json_loadb(ctx, len, 0, NULL);
    int ok = json_integer_value(json_object_get(j, "order")) == 42 &&
             !strcmp(tasker_step_namespace(step), "life") &&
             !strcmp(tasker_step_template_name(step), "inspect") &&
             !strcmp(tasker_step_name(step), "look") && !strcmp(tasker_step_handler_name(step), "inspect") &&
             tasker_step_attempt(step) == 1 && tasker_step_max_attempts(step) == 4 &&
             strlen(tasker_step_uuid(step)) == 36 && strlen(tasker_step_task_uuid(step)) == 36 &&
             tasker_step_dependency_count(step) == 0;
    json_decref(j);
    const char *r;
    if (tasker_step_dependency_result(&r, NULL, step, "nope") != TASKER_ENOTFOUND)
        ok = 0;
    void *p;
    if (tasker_step_dependency_pointer(&p, step, "nope") != TASKER_ENOTSUP)
        ok = 0;
    /* Malformed JSON is refused and the step stays ours. */
    if (tasker_step_succeed(step, "{nope", 0) != TASKER_EINVAL)
        ok = 0;
    char res[128];
    snprintf(res, sizeof res, "{\"step_uuid\": \"%s\"}", tasker_step_uuid(step));
    if (tasker_step_succeed(step, res, 0) != TASKER_OK)
        ok = 0;
    if (tasker_step_succeed(step, "1", 0) != TASKER_ESTATE)
        ok = 0;
    seen_ok = ok ? 1 : -1;
    return TASKER_OK;
}

/* ---- tests ------------------------------------------------------------------ */

static void reset_flaky(int fail_until, int permanent, int64_t after)
{
    pthread_mutex_lock(&fl.mu);
    fl.fail_until = fail_until;
    fl.permanent = permanent;
    fl.retry_after = after;
    fl.n = 0;
    pthread_mutex_unlock(&fl.mu);
}

static void test_retry_with_backoff(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"retry\",\"steps\":[{\"name\":\"s\","
                       "\"handler\":\"flaky\",\"retry\":{\"max_attempts\":3,\"backoff\":\"linear\","
                       "\"base_ms\":60,\"max_ms\":1000}}]}");
    reset_flaky(3, 0, -1);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "retry", NULL);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(coord, uuid);
    json_t *s = th_step(t, "s");
    assert_int_equal(json_integer_value(json_object_get(s, "attempts")), 3);
    json_t *errs = json_object_get(s, "errors");
    assert_int_equal(json_array_size(errs), 2);
    json_t *e0 = json_array_get(errs, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "class")), "FlakyError");
    assert_true(json_is_true(json_object_get(e0, "retryable")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(e0, "context"), "why")),
                        "testing");
    assert_int_equal(th_count_transitions(t, "s", "in_progress", "waiting_for_retry",
                                          "retry_scheduled", -1), 2);
    assert_int_equal(th_count_transitions(t, "s", "waiting_for_retry", "enqueued", "retry_due", -1), 2);
    char *path = th_transition_path(t, "s");
    assert_string_equal(path, "enqueued,in_progress,waiting_for_retry,enqueued,in_progress,"
                              "waiting_for_retry,enqueued,in_progress,complete");
    free(path);
    json_decref(t);
    /* linear: 60 ms after the first failure, 120 ms after the second */
    pthread_mutex_lock(&fl.mu);
    assert_int_equal(fl.n, 3);
    double d1 = fl.started[1] - fl.started[0], d2 = fl.started[2] - fl.started[1];
    pthread_mutex_unlock(&fl.mu);
    if (d1 < 55 || d2 < 115)
        fail_msg("retries came too early: %.1f ms, %.1f ms", d1, d2);
    th_assert_no_problems();
}

static void test_retry_after(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"after\",\"steps\":[{\"name\":\"s\","
                       "\"handler\":\"flaky\",\"retry\":{\"max_attempts\":2,\"backoff\":\"none\","
                       "\"max_ms\":5000}}]}");
    reset_flaky(2, 0, 300);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "after", NULL);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    pthread_mutex_lock(&fl.mu);
    double d = fl.started[1] - fl.started[0];
    pthread_mutex_unlock(&fl.mu);
    if (d < 290)
        fail_msg("retry_after_ms = 300 but the retry came after %.1f ms", d);
}

static void test_exhausted_dead_letter_manual_retry(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"dlq\",\"steps\":[{\"name\":\"a\","
                       "\"handler\":\"flaky\",\"retry\":{\"max_attempts\":2,\"backoff\":\"none\"}},"
                       "{\"name\":\"b\",\"handler\":\"flaky\",\"depends_on\":[\"a\"]}]}");
    reset_flaky(100, 0, -1);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "dlq", NULL);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_ERROR);
    json_t *t = th_task(coord, uuid);
    assert_string_equal(th_step_state(t, "a"), "error");
    assert_string_equal(th_step_state(t, "b"), "pending");
    assert_int_equal(th_count_transitions(t, "a", "in_progress", "error", "retries_exhausted", 2), 1);
    json_decref(t);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.dead_letters d JOIN tasker.tasks t "
                             "ON t.id = d.task_id WHERE t.uuid = $1::uuid AND d.resolved_at IS NULL",
                             uuid),
                     1);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.queue q JOIN tasker.tasks t "
                             "ON t.id = q.task_id WHERE t.uuid = $1::uuid", uuid),
                     0);
    /* Manual retry: a fresh budget, and this time it works. */
    reset_flaky(0, 0, -1);
    assert_int_equal(tasker_task_retry(coord, uuid), TASKER_OK);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    t = th_task(coord, uuid);
    assert_int_equal(th_step_attempts(t, "a"), 3);
    assert_int_equal(th_count_transitions(t, "a", "error", "enqueued", "manual_retry", -1), 1);
    assert_int_equal(th_count_transitions(t, "", "error", "running", "manual_retry", -1), 1);
    json_decref(t);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.dead_letters d JOIN tasker.tasks t "
                             "ON t.id = d.task_id WHERE t.uuid = $1::uuid AND d.resolved_at IS NULL",
                             uuid),
                     0);
    assert_int_equal(tasker_task_retry(coord, uuid), TASKER_ESTATE);
}

static void test_permanent_failure_then_resolve(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"resolve\",\"steps\":[{\"name\":\"a\","
                       "\"handler\":\"flaky\"},{\"name\":\"b\",\"handler\":\"flaky\","
                       "\"depends_on\":[\"a\"]}]}");
    reset_flaky(100, 1, -1);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "resolve", NULL);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_ERROR);
    json_t *t = th_task(coord, uuid);
    assert_int_equal(th_step_attempts(t, "a"), 1);
    assert_int_equal(th_count_transitions(t, "a", "in_progress", "error", "permanent_failure", 1), 1);
    json_decref(t);
    assert_int_equal(tasker_step_resolve(coord, uuid, "b", NULL, 0), TASKER_ESTATE);
    assert_int_equal(tasker_step_resolve(coord, uuid, "nope", NULL, 0), TASKER_ENOTFOUND);
    assert_int_equal(tasker_step_resolve(coord, uuid, "a", "{bad", 0), TASKER_EINVAL);
    reset_flaky(0, 0, -1);
    assert_int_equal(tasker_step_resolve(coord, uuid, "a", "{\"manual\": 1}", 0), TASKER_OK);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    t = th_task(coord, uuid);
    assert_string_equal(th_step_state(t, "a"), "resolved_manually");
    json_t *b = th_step(t, "b");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(b, "result"),
                                                                          "got"),
                                                        "manual")),
                     1);
    json_decref(t);
}

static void test_cancel_while_running(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"cancel\",\"steps\":[{\"name\":\"slow\","
                       "\"handler\":\"gate\"},{\"name\":\"after\",\"handler\":\"flaky\","
                       "\"depends_on\":[\"slow\"]}]}");
    pthread_mutex_lock(&gt.mu);
    gt.entered = 0;
    gt.open = 0;
    pthread_mutex_unlock(&gt.mu);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "cancel", NULL);
    pthread_mutex_lock(&gt.mu);
    while (gt.entered == 0)
        pthread_cond_wait(&gt.cv, &gt.mu);
    pthread_mutex_unlock(&gt.mu);
    assert_int_equal(tasker_task_cancel(coord, uuid), TASKER_OK);
    tasker_task_state st;
    assert_int_equal(tasker_task_wait(&st, coord, uuid, 0), TASKER_OK);
    assert_int_equal(st, TASKER_TASK_CANCELLED);
    pthread_mutex_lock(&gt.mu);
    gt.open = 1;
    pthread_cond_broadcast(&gt.cv);
    while (gt.entered != -1)
        pthread_cond_wait(&gt.cv, &gt.mu);
    int rc = gt.rc;
    pthread_mutex_unlock(&gt.mu);
    assert_int_equal(rc, TASKER_ESTATE); /* the handler's late result is refused */
    json_t *t = th_task(coord, uuid);
    assert_string_equal(th_step_state(t, "slow"), "cancelled");
    assert_string_equal(th_step_state(t, "after"), "cancelled");
    assert_int_equal(th_count_transitions(t, "slow", "in_progress", "cancelled", "cancelled", -1), 1);
    json_decref(t);
    assert_int_equal(tasker_task_cancel(coord, uuid), TASKER_ESTATE);
}

typedef struct idem_arg {
    const char *key;
    char uuid[TASKER_UUID_BUFSIZE];
    int rc;
} idem_arg;

static void *idem_thread(void *p)
{
    idem_arg *a = p;
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "life";
    req.name = "retry";
    req.idempotency_key = a->key;
    a->rc = tasker_task_create(a->uuid, coord, &req);
    return NULL;
}

static void test_idempotency(void **state)
{
    (void)state;
    pgt_require();
    reset_flaky(0, 0, -1);
    char u1[TASKER_UUID_BUFSIZE], u2[TASKER_UUID_BUFSIZE];
    th_create_key(u1, coord, "life", "retry", NULL, "order-1");
    th_create_key(u2, coord, "life", "retry", "{\"other\": 1}", "order-1");
    assert_string_equal(u1, u2);
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "life";
    req.name = "after";
    req.idempotency_key = "order-1";
    assert_int_equal(tasker_task_create(u2, coord, &req), TASKER_EEXIST);
    /* Eight threads racing with one new key make one task. */
    pthread_t th[8];
    idem_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i].key = "race-key";
        pthread_create(&th[i], NULL, idem_thread, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].rc, TASKER_OK);
        assert_string_equal(args[i].uuid, args[0].uuid);
    }
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.tasks WHERE idempotency_key = 'race-key'"), 1);
    assert_int_equal(th_wait_final(coord, args[0].uuid), TASKER_TASK_COMPLETE);
}

static void test_names_that_look_like_sql(void **state)
{
    (void)state;
    pgt_require();
    const char *ns = "ns'; DROP TABLE tasker.tasks; --";
    const char *name = "t\"); DELETE FROM tasker.steps; --";
    const char *step = "s'||(SELECT 1)||'\\\\ \\\"q\\\" ; --";
    const char *handler = "h'; TRUNCATE tasker.queue; --";
    th_handler(coord, handler, flaky_handler, NULL);
    json_t *tj = json_pack("{s:s, s:s, s:[{s:s, s:s}, {s:s, s:s, s:[s]}]}", "namespace", ns, "name",
                           name, "steps", "name", step, "handler", handler, "name", "after",
                           "handler", "flaky", "depends_on", step);
    char *tjs = json_dumps(tj, 0);
    th_register(coord, tjs);
    free(tjs);
    reset_flaky(0, 0, -1);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create_key(uuid, coord, ns, name, "{\"q\": \"'; DROP SCHEMA tasker CASCADE; --\"}",
                  "key'); DROP TABLE tasker.steps; --");
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    /* Stored literally, and nothing was dropped. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.namespaces WHERE name = $1", ns), 1);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.templates WHERE name = $1", name), 1);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.template_steps WHERE name = $1 AND handler = $2",
                             step, handler),
                     1);
    json_t *t = th_task(coord, uuid);
    assert_string_equal(json_string_value(json_object_get(t, "namespace")), ns);
    assert_string_equal(th_step_state(t, step), "complete");
    assert_string_equal(json_string_value(json_object_get(json_object_get(t, "context"), "q")),
                        "'; DROP SCHEMA tasker CASCADE; --");
    json_decref(t);
    assert_true(pgt_num("SELECT count(*) FROM tasker.tasks") > 0);
    json_decref(tj);

    /* The CLI prints it as a valid DOT graph (quotes escaped). */
    char ref[512];
    snprintf(ref, sizeof ref, "%s/%s", ns, name);
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        execl(TASKER_CLI_PATH, "tasker", "graph", ref, "--database-url", url, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char out[8192];
    size_t o = 0;
    ssize_t k;
    while ((k = read(p[0], out + o, sizeof out - 1 - o)) > 0)
        o += (size_t)k;
    out[o] = '\0';
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(out, "digraph"));
    assert_non_null(strstr(out, "t\\\"); DELETE FROM tasker.steps; --"));
    assert_non_null(strstr(out, "-> \"after\""));
}

static void test_what_a_handler_sees(void **state)
{
    (void)state;
    pgt_require();
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"inspect\",\"steps\":[{\"name\":\"look\","
                       "\"handler\":\"inspect\",\"retry\":{\"max_attempts\":4}}]}");
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "life", "inspect", "{\"order\": 42}");
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    /* The task can be complete before the handler has returned. */
    double deadline = th_now_ms() + th_wait_ms();
    while (seen_ok == 0 && th_now_ms() < deadline)
        th_sleep_ms(1);
    assert_int_equal(seen_ok, 1);
    json_t *t = th_task(coord, uuid);
    json_t *s = th_step(t, "look");
    assert_string_equal(json_string_value(json_object_get(json_object_get(s, "result"), "step_uuid")),
                        json_string_value(json_object_get(s, "uuid")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "context"), "order")), 42);
    json_decref(t);
}

static void test_api_errors(void **state)
{
    (void)state;
    pgt_require();
    char uuid[TASKER_UUID_BUFSIZE];
    char *json = NULL;
    assert_int_equal(tasker_task_get(&json, coord, "01234567-89ab-7def-8123-456789abcdef"),
                     TASKER_ENOTFOUND);
    assert_int_equal(tasker_task_cancel(coord, "01234567-89ab-7def-8123-456789abcdef"),
                     TASKER_ENOTFOUND);
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "life";
    req.name = "no_such_template";
    assert_int_equal(tasker_task_create(uuid, coord, &req), TASKER_ENOTFOUND);
    req.name = "retry";
    req.context_json = "[1, 2]";
    assert_int_equal(tasker_task_create(uuid, coord, &req), TASKER_EINVAL);
    req.context_json = NULL;
    req.template_version = "9";
    assert_int_equal(tasker_task_create(uuid, coord, &req), TASKER_ENOTFOUND);
    /* A template whose handler this process does not have. */
    th_register(coord, "{\"namespace\":\"life\",\"name\":\"orphan\",\"steps\":[{\"name\":\"x\","
                       "\"handler\":\"nobody\"}]}");
    req.name = "orphan";
    req.template_version = NULL;
    assert_int_equal(tasker_task_create(uuid, coord, &req), TASKER_EHANDLER);
    /* Same version, other steps. */
    assert_int_equal(tasker_template_register_json(
                         coord,
                         "{\"namespace\":\"life\",\"name\":\"orphan\",\"steps\":[{\"name\":\"y\"}]}",
                         0),
                     TASKER_EEXIST);
    /* Wait on an unfinished task with no time: ETIMEOUT; forget it: ESTATE. */
    pthread_mutex_lock(&gt.mu);
    gt.entered = 0;
    gt.open = 0;
    pthread_mutex_unlock(&gt.mu);
    th_create(uuid, coord, "life", "cancel", NULL);
    tasker_task_state st;
    assert_int_equal(tasker_task_wait(&st, coord, uuid, 0), TASKER_ETIMEOUT);
    assert_int_equal(tasker_task_wait(&st, coord, uuid, 50), TASKER_ETIMEOUT);
    assert_int_equal(tasker_task_forget(coord, uuid), TASKER_ESTATE);
    pthread_mutex_lock(&gt.mu);
    gt.open = 1;
    pthread_cond_broadcast(&gt.cv);
    pthread_mutex_unlock(&gt.mu);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    pthread_mutex_lock(&gt.mu);
    while (gt.entered != -1)
        pthread_cond_wait(&gt.cv, &gt.mu);
    pthread_mutex_unlock(&gt.mu);
    assert_int_equal(tasker_task_forget(coord, uuid), TASKER_OK);
    assert_int_equal(tasker_task_get(&json, coord, uuid), TASKER_ENOTFOUND);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps s JOIN tasker.tasks t ON "
                             "t.id = s.task_id WHERE t.uuid = $1::uuid", uuid),
                     0);
}

static void test_cli_operations(void **state)
{
    (void)state;
    pgt_require();
    char out[65536], err[4096];
    reset_flaky(0, 0, -1);
    const char *create[] = {"task", "create", "life/retry", "--context", "{\"x\": 1}",
                            "--idempotency-key", "cli-1", "--database-url", url, NULL};
    int rc = pgt_cli(out, sizeof out, err, sizeof err, create);
    if (rc != 0)
        fail_msg("task create: exit %d: %s", rc, err);
    char uuid[TASKER_UUID_BUFSIZE];
    snprintf(uuid, sizeof uuid, "%.36s", out);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, create), 0);
    assert_memory_equal(out, uuid, 36);
    assert_non_null(strstr(err, "existing"));

    const char *get[] = {"task", "get", uuid, "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, get), 0);
    json_t *t = json_loads(out, 0, NULL);
    assert_non_null(t);
    assert_string_equal(json_string_value(json_object_get(t, "state")), "complete");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "context"), "x")), 1);
    json_decref(t);

    const char *status[] = {"status", "--json", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, status), 0);
    json_t *st = json_loads(out, 0, NULL);
    assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(st, "tasks"),
                                                                     "life"),
                                                   "complete")) >= 1);
    json_decref(st);

    const char *cancel[] = {"task", "cancel", uuid, "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, cancel), 1);
    assert_non_null(strstr(err, "is complete"));

    /* A dead letter, listed and requeued from the command line. */
    reset_flaky(100, 1, -1);
    char failing[TASKER_UUID_BUFSIZE];
    th_create(failing, coord, "life", "dlq", NULL);
    assert_int_equal(th_wait_final(coord, failing), TASKER_TASK_ERROR);
    const char *list[] = {"dlq", "list", "--json", "--namespace", "life", "--database-url", url,
                          NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, list), 0);
    json_t *dl = json_loads(out, 0, NULL);
    json_t *mine = NULL, *e;
    size_t i;
    json_array_foreach(dl, i, e)
    {
        if (!strcmp(json_string_value(json_object_get(e, "task")), failing))
            mine = e;
    }
    assert_non_null(mine);
    assert_string_equal(json_string_value(json_object_get(mine, "error_class")), "FlakyError");
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)json_integer_value(json_object_get(mine, "id")));
    json_decref(dl);
    reset_flaky(0, 0, -1);
    const char *requeue[] = {"dlq", "requeue", id, "--database-url", url, NULL};
    rc = pgt_cli(out, sizeof out, err, sizeof err, requeue);
    if (rc != 0)
        fail_msg("dlq requeue: exit %d: %s", rc, err);
    assert_int_equal(th_wait_final(coord, failing), TASKER_TASK_COMPLETE);
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, requeue), 1);

    const char *purge[] = {"dlq", "purge", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, purge), 0);
    assert_non_null(strstr(out, "purged"));
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.dead_letters WHERE resolved_at IS NULL"), 0);

    const char *graph[] = {"graph", "life/dlq", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, graph), 0);
    assert_non_null(strstr(out, "\"a\" -> \"b\";"));

    const char *readiness[] = {"task", "readiness", uuid, "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, readiness), 0);
    assert_non_null(strstr(out, "complete"));

    /* Retention: finished tasks go, with their rows. */
    const char *prune[] = {"prune", "--older-than", "0s", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, prune), 0);
    assert_non_null(strstr(out, "pruned"));
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, get), 1);
    assert_non_null(strstr(err, "no task"));
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.history tr JOIN tasker.tasks t "
                             "ON t.id = tr.task_id WHERE t.uuid = $1::uuid", uuid),
                     0);
}

static int setup(void **state)
{
    (void)state;
    if (!getenv("TASKER_TEST_DATABASE_URL") || !*getenv("TASKER_TEST_DATABASE_URL"))
        return 0;
    url = pgt_fresh_db("lifecycle", 1);
    coord = pgt_open(url);
    th_handler(coord, "flaky", flaky_handler, NULL);
    th_handler(coord, "gate", gate_handler, NULL);
    th_handler(coord, "inspect", inspect_handler, NULL);
    th_ok(tasker_coordinator_start(coord, 4));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (coord)
        th_ok(tasker_coordinator_close(coord));
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_with_backoff),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_exhausted_dead_letter_manual_retry),
        cmocka_unit_test(test_permanent_failure_then_resolve),
        cmocka_unit_test(test_cancel_while_running),
        cmocka_unit_test(test_idempotency),
        cmocka_unit_test(test_names_that_look_like_sql),
        cmocka_unit_test(test_what_a_handler_sees),
        cmocka_unit_test(test_api_errors),
        cmocka_unit_test(test_cli_operations),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
