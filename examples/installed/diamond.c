/*
 * diamond.c - a C program that uses an *installed* tasker, the way a project
 * outside this repository would.  It is built twice by
 * scripts/test.d/60-languages.sh: once with pkg-config and once with CMake's
 * find_package(tasker) (see CMakeLists.txt beside it).
 *
 *            start            start = context.n
 *           /     \
 *        left     right       left = start * 2, right = start * 3
 *           \     /
 *            join             join = left + right
 *
 * With {"n": 5} the join step's result is 25.  A second template has one step
 * that fails (retryably) on its first attempt and succeeds on its second.
 * The program exits 0 only if both tasks end as expected.
 */
#include <tasker.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long join_value = -1;
static atomic_int flaky_attempts = 0;

/* Reports a failed call with the calling thread's structured error. */
static int check(int rc, const char *what)
{
    if (rc != TASKER_OK) {
        const tasker_error *err = tasker_error_last();
        fprintf(stderr, "%s failed: %s (%s): %s %s\n", what, tasker_strerror(rc),
                tasker_error_category_name(err->category), err->message, err->context_json);
    }
    return rc;
}

/* Reads a dependency whose result is a JSON integer. */
static int dep_int(long *out, const tasker_step *step, const char *dep)
{
    const char *json = NULL;
    size_t len = 0;
    char buf[64];
    char *end = NULL;
    int rc = tasker_step_dependency_result(&json, &len, step, dep);
    if (rc != TASKER_OK)
        return rc;
    if (len == 0 || len >= sizeof buf)
        return TASKER_EINVAL;
    memcpy(buf, json, len);
    buf[len] = '\0';
    *out = strtol(buf, &end, 10);
    return (end == buf || *end != '\0') ? TASKER_EINVAL : TASKER_OK;
}

static int succeed_int(tasker_step *step, long value)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", value);
    return tasker_step_succeed(step, buf, 0);
}

/* Fails the attempt permanently: a bad input will not get better on retry. */
static int fail_permanently(tasker_step *step, const char *why)
{
    tasker_failure failure = TASKER_FAILURE_INIT;
    failure.error_class = "BadInput";
    failure.message = why;
    failure.retryable = 0;
    return tasker_step_fail(step, &failure);
}

static int start_handler(tasker_step *step, void *userdata)
{
    (void)userdata;
    /* The context is {"n": <int>}; a real program would use a JSON parser. */
    const char *ctx = tasker_step_context(step, NULL);
    const char *n = ctx ? strstr(ctx, "\"n\"") : NULL;
    if (n == NULL || (n = strchr(n, ':')) == NULL)
        return fail_permanently(step, "context has no \"n\"");
    return succeed_int(step, strtol(n + 1, NULL, 10));
}

static int scale_handler(tasker_step *step, void *userdata)
{
    long factor = (long)(intptr_t)userdata;
    long start = 0;
    if (dep_int(&start, step, "start") != TASKER_OK)
        return fail_permanently(step, "start result is not an integer");
    return succeed_int(step, start * factor);
}

static int join_handler(tasker_step *step, void *userdata)
{
    (void)userdata;
    long left = 0, right = 0;
    if (dep_int(&left, step, "left") != TASKER_OK || dep_int(&right, step, "right") != TASKER_OK)
        return fail_permanently(step, "left/right results are not integers");
    atomic_store(&join_value, left + right);
    return succeed_int(step, left + right);
}

static int flaky_handler(tasker_step *step, void *userdata)
{
    (void)userdata;
    uint32_t attempt = tasker_step_attempt(step);
    atomic_store(&flaky_attempts, (int)attempt);
    if (attempt == 1) {
        tasker_failure failure = TASKER_FAILURE_INIT;
        failure.error_class = "TransientError";
        failure.message = "the first attempt fails on purpose";
        failure.retryable = 1;
        failure.retry_after_ms = 10;
        return tasker_step_fail(step, &failure);
    }
    return succeed_int(step, (long)attempt);
}

static const char *DIAMOND_JSON =
    "{\"namespace\": \"examples\", \"name\": \"diamond\", \"version\": \"1\", \"steps\": ["
    " {\"name\": \"start\"},"
    " {\"name\": \"left\", \"handler\": \"double\", \"depends_on\": [\"start\"]},"
    " {\"name\": \"right\", \"handler\": \"triple\", \"depends_on\": [\"start\"]},"
    " {\"name\": \"join\", \"depends_on\": [\"left\", \"right\"]}]}";

/* Runs one task to a final state and returns that state (or -1). */
static int run_task(tasker_coordinator *coord, const char *name, const char *context)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    char uuid[TASKER_UUID_BUFSIZE];
    tasker_task_state state = TASKER_TASK_PENDING;
    char *json = NULL;

    req.ns = "examples";
    req.name = name;
    req.context_json = context;
    if (check(tasker_task_create(uuid, coord, &req), "tasker_task_create"))
        return -1;
    if (check(tasker_task_wait(&state, coord, uuid, 10000), "tasker_task_wait"))
        return -1;
    if (check(tasker_task_get(&json, coord, uuid), "tasker_task_get") == TASKER_OK) {
        printf("%s\n", json);
        tasker_free(json);
    }
    return (int)state;
}

int main(void)
{
    tasker_coordinator *coord = NULL;
    tasker_template *flaky = NULL;
    tasker_step_options retry = TASKER_STEP_OPTIONS_INIT;
    int diamond_state, flaky_state, ok;

    /* A binary built against this header must not run on an incompatible library. */
    if (check(tasker_abi_check(TASKER_ABI_VERSION), "tasker_abi_check"))
        return 2;
    printf("libtasker %s (ABI %d)\n", tasker_version(), tasker_abi_version());
    /* ...and one built against an older ABI is refused with a clear message. */
    if (tasker_abi_check(0) != TASKER_EVERSION) {
        fprintf(stderr, "tasker_abi_check(0) should return TASKER_EVERSION\n");
        return 1;
    }
    printf("ABI 0 refused as expected: %s\n", tasker_error_last()->message);

    if (check(tasker_coordinator_open(&coord, NULL), "tasker_coordinator_open"))
        return 1;
    if (check(tasker_handler_register(coord, "start", start_handler, NULL, NULL), "register start") ||
        check(tasker_handler_register(coord, "double", scale_handler, (void *)(intptr_t)2, NULL),
              "register double") ||
        check(tasker_handler_register(coord, "triple", scale_handler, (void *)(intptr_t)3, NULL),
              "register triple") ||
        check(tasker_handler_register(coord, "join", join_handler, NULL, NULL), "register join") ||
        check(tasker_handler_register(coord, "flaky", flaky_handler, NULL, NULL), "register flaky"))
        goto fail;

    /* The diamond from JSON, the retrying template with the builder. */
    if (check(tasker_template_register_json(coord, DIAMOND_JSON, 0), "register diamond"))
        goto fail;
    retry.max_attempts = 3;
    retry.backoff = TASKER_BACKOFF_NONE;
    if (check(tasker_template_new(&flaky, "examples", "flaky", "1"), "tasker_template_new") ||
        check(tasker_template_add_step(flaky, "flaky", NULL, NULL, 0, &retry), "add_step") ||
        check(tasker_template_register(coord, flaky), "register flaky template"))
        goto fail;
    tasker_template_free(flaky);
    flaky = NULL;

    if (check(tasker_coordinator_start(coord, 2), "tasker_coordinator_start"))
        goto fail;
    diamond_state = run_task(coord, "diamond", "{\"n\": 5}");
    flaky_state = run_task(coord, "flaky", NULL);
    if (check(tasker_coordinator_stop(coord, 5000), "tasker_coordinator_stop"))
        goto fail;
    check(tasker_coordinator_close(coord), "tasker_coordinator_close");
    coord = NULL;

    ok = diamond_state == TASKER_TASK_COMPLETE && atomic_load(&join_value) == 25 &&
         flaky_state == TASKER_TASK_COMPLETE && atomic_load(&flaky_attempts) == 2;
    printf("diamond: %s, join = %ld; flaky: %s after %d attempts\n",
           diamond_state >= 0 ? tasker_task_state_name((tasker_task_state)diamond_state) : "?",
           (long)atomic_load(&join_value),
           flaky_state >= 0 ? tasker_task_state_name((tasker_task_state)flaky_state) : "?",
           atomic_load(&flaky_attempts));
    printf("%s\n", ok ? "installed example: OK" : "installed example: WRONG OUTCOME");
    return ok ? 0 : 1;

fail:
    tasker_template_free(flaky);
    tasker_coordinator_close(coord);
    return 1;
}
