/*
 * hello_workflow.c - the quickstart's first workflow: fetch -> (count, shout) -> report.
 * See docs/quickstart.md, which walks through this file.
 */
#include <tasker.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fetch: reads the task's context and passes it on inside its JSON result. */
static int fetch(tasker_step *step, void *userdata)
{
    (void)userdata;
    size_t len = 0;
    const char *context = tasker_step_context(step, &len); /* {"who": "world"} */
    char result[512];
    int n = snprintf(result, sizeof result, "{\"greeting\": \"hello\", \"input\": %.*s}",
                     (int)len, context);
    if (n < 0 || (size_t)n >= sizeof result) {
        tasker_failure failure = TASKER_FAILURE_INIT;
        failure.error_class = "InputTooLarge";
        failure.message = "the context does not fit this example's buffer";
        failure.retryable = 0; /* retrying cannot help: fail for good */
        return tasker_step_fail(step, &failure);
    }
    return tasker_step_succeed(step, result, 0); /* 0: use strlen() */
}

/* count and shout both read fetch's result. */
static int count(tasker_step *step, void *userdata)
{
    (void)userdata;
    const char *json = NULL;
    size_t len = 0;
    int rc = tasker_step_dependency_result(&json, &len, step, "fetch");
    if (rc != TASKER_OK) {
        return rc; /* fails the attempt; tasker retries it */
    }
    char result[64];
    snprintf(result, sizeof result, "{\"fetch_result_bytes\": %zu}", len);
    return tasker_step_succeed(step, result, 0);
}

static int shout(tasker_step *step, void *userdata)
{
    (void)userdata;
    if (tasker_step_attempt(step) == 1) {
        /* Fail the first attempt to show a retry in the task JSON. */
        tasker_failure failure = TASKER_FAILURE_INIT;
        failure.error_class = "Flaky";
        failure.message = "first attempts always fail in this example";
        failure.retry_after_ms = 10;
        return tasker_step_fail(step, &failure);
    }
    return tasker_step_succeed(step, "{\"text\": \"HELLO\"}", 0);
}

static int report(tasker_step *step, void *userdata)
{
    (void)userdata;
    return tasker_step_succeed(step, NULL, 0); /* no result */
}

static void check(int rc, const char *what)
{
    if (rc != TASKER_OK) {
        const tasker_error *e = tasker_error_last();
        fprintf(stderr, "%s: %s: %s %s\n", what, tasker_strerror(rc), e->message,
                e->context_json);
        exit(1);
    }
}

static const char TEMPLATE[] =
    "{\"namespace\": \"demo\", \"name\": \"hello\", \"version\": \"1\","
    " \"steps\": [{\"name\": \"fetch\"},"
    "             {\"name\": \"count\", \"depends_on\": [\"fetch\"]},"
    "             {\"name\": \"shout\", \"depends_on\": [\"fetch\"],"
    "              \"retry\": {\"max_attempts\": 3, \"backoff\": \"linear\", \"base_ms\": 5}},"
    "             {\"name\": \"report\", \"depends_on\": [\"count\", \"shout\"]}]}";

int main(void)
{
    tasker_coordinator *coord = NULL;
    check(tasker_coordinator_open(&coord, NULL), "open"); /* NULL: memory store */

    check(tasker_handler_register(coord, "fetch", fetch, NULL, NULL), "register fetch");
    check(tasker_handler_register(coord, "count", count, NULL, NULL), "register count");
    check(tasker_handler_register(coord, "shout", shout, NULL, NULL), "register shout");
    check(tasker_handler_register(coord, "report", report, NULL, NULL), "register report");
    check(tasker_template_register_json(coord, TEMPLATE, 0), "register template");
    check(tasker_coordinator_start(coord, 2), "start"); /* two worker threads */

    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "demo";
    req.name = "hello";
    req.context_json = "{\"who\": \"world\"}";
    char uuid[TASKER_UUID_BUFSIZE];
    check(tasker_task_create(uuid, coord, &req), "create");

    tasker_task_state state;
    check(tasker_task_wait(&state, coord, uuid, 5000), "wait");
    printf("task %s: %s\n", uuid, tasker_task_state_name(state));

    char *json = NULL;
    check(tasker_task_get(&json, coord, uuid), "get");
    printf("%s\n", json);
    tasker_free(json); /* strings from tasker are freed with tasker_free */

    check(tasker_coordinator_close(coord), "close"); /* stops the workers too */
    return state == TASKER_TASK_COMPLETE ? 0 : 1;
}
