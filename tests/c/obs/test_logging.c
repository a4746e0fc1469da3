/*
 * Structured logs (log.level, log.sink): one JSON object per line with time,
 * level, event and the task/step correlation ids; the level filters what is
 * written; an unwritable sink makes tasker_coordinator_open fail with
 * TASKER_ECONFIG naming log.sink.
 *
 * Lines are read after tasker_coordinator_close, which delivers what the
 * log subscription buffered and closes the file.
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct fixture {
    char path[256];
} fixture;

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    const char *dir = getenv("TMPDIR");
    snprintf(x->path, sizeof x->path, "%s/tasker-obslog-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(x->path);
    assert_true(fd >= 0);
    close(fd);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    unlink(x->path);
    free(x);
    th_assert_no_problems();
    return 0;
}

static tasker_coordinator *open_logged(const char *level, const char *path)
{
    tasker_coordinator *c = th_open("log.level", level, "log.sink", path, NULL);
    th_handler(c, "ok", th_handler_noop, NULL);
    th_handler(c, "flaky", obs_scripted, NULL);
    th_handler(c, "perm", obs_scripted, NULL);
    th_register(c, "{\"namespace\":\"lg\",\"name\":\"ok\",\"steps\":[{\"name\":\"s\","
                   "\"handler\":\"ok\"}]}");
    th_register(c, "{\"namespace\":\"lg\",\"name\":\"flaky\",\"steps\":[{\"name\":\"f\","
                   "\"handler\":\"flaky\",\"retry\":{\"max_attempts\":2,\"backoff\":\"none\","
                   "\"base_ms\":0,\"max_ms\":0}}]}");
    th_register(c, "{\"namespace\":\"lg\",\"name\":\"perm\",\"steps\":[{\"name\":\"p\","
                   "\"handler\":\"perm\"}]}");
    th_ok(tasker_coordinator_start(c, 2));
    return c;
}

typedef struct run_ids {
    char ok[TASKER_UUID_BUFSIZE], flaky[TASKER_UUID_BUFSIZE], perm[TASKER_UUID_BUFSIZE];
    char flaky_step[TASKER_UUID_BUFSIZE], perm_step[TASKER_UUID_BUFSIZE];
} run_ids;

/* One success, one retry-then-success, one permanent failure, then the ok
 * handler's circuit forced open and closed; closes the coordinator. */
static void run_workload(tasker_coordinator *c, run_ids *ids)
{
    th_create(ids->ok, c, "lg", "ok", NULL);
    assert_int_equal(th_wait_final(c, ids->ok), TASKER_TASK_COMPLETE);
    th_create(ids->flaky, c, "lg", "flaky", "{\"fail_until\": 1, \"class\": \"FlakyError\"}");
    assert_int_equal(th_wait_final(c, ids->flaky), TASKER_TASK_COMPLETE);
    th_create(ids->perm, c, "lg", "perm",
              "{\"fail_until\": 9, \"retryable\": false, \"class\": \"PermError\"}");
    assert_int_equal(th_wait_final(c, ids->perm), TASKER_TASK_ERROR);
    json_t *t = th_task(c, ids->flaky);
    snprintf(ids->flaky_step, sizeof ids->flaky_step, "%s", obs_step_uuid(t, "f"));
    json_decref(t);
    t = th_task(c, ids->perm);
    snprintf(ids->perm_step, sizeof ids->perm_step, "%s", obs_step_uuid(t, "p"));
    json_decref(t);
    th_ok(tasker_circuit_force(c, "handler:ok", TASKER_CIRCUIT_FORCE_OPEN));
    th_ok(tasker_circuit_force(c, "handler:ok", TASKER_CIRCUIT_FORCE_CLOSED));
    th_ok(tasker_coordinator_close(c));
}

/* "2026-11-23T17:11:07.123456Z" or without the fraction. */
static int is_iso_time(const char *s)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return 0;
    }
    s += strlen(shape);
    if (*s == '.') {
        s++;
        if (!isdigit((unsigned char)*s))
            return 0;
        while (isdigit((unsigned char)*s))
            s++;
    }
    return s[0] == 'Z' && s[1] == '\0';
}

/* Every line of the file parsed; fails the test on a line that is not a
 * JSON object with time, level and event. */
static json_t *read_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    json_t *lines = json_array();
    char buf[8192];
    int n = 0;
    while (fgets(buf, sizeof buf, f)) {
        n++;
        size_t len = strlen(buf);
        if (len == 0 || buf[len - 1] != '\n') {
            fclose(f);
            fail_msg("log line %d is not newline-terminated: %s", n, buf);
        }
        json_error_t jerr;
        json_t *o = json_loads(buf, 0, &jerr);
        if (!json_is_object(o)) {
            fclose(f);
            fail_msg("log line %d is not a JSON object (%s): %s", n, jerr.text, buf);
        }
        const char *time = json_string_value(json_object_get(o, "time"));
        const char *level = json_string_value(json_object_get(o, "level"));
        const char *event = json_string_value(json_object_get(o, "event"));
        if (!time || !is_iso_time(time) || !level || !event) {
            fclose(f);
            fail_msg("log line %d lacks time (ISO 8601 UTC), level or event: %s", n, buf);
        }
        json_array_append_new(lines, o);
    }
    fclose(f);
    return lines;
}

static const char *field(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* Index of the first line with `event` for task `task` (NULL any), from `from`. */
static size_t find_line(json_t *lines, const char *event, const char *task, size_t from)
{
    for (size_t i = from; i < json_array_size(lines); i++) {
        json_t *o = json_array_get(lines, i);
        if (!strcmp(field(o, "event"), event) && (!task || !strcmp(field(o, "task_uuid"), task)))
            return i;
    }
    fail_msg("no \"%s\" log line for task %s", event, task ? task : "(any)");
    return 0;
}

static void assert_failure_line(json_t *o, const char *level, const char *task, const char *step,
                                const char *step_uuid, const char *cls)
{
    assert_string_equal(field(o, "level"), level);
    assert_string_equal(field(o, "task_uuid"), task);
    assert_string_equal(field(o, "step"), step);
    assert_string_equal(field(o, "step_uuid"), step_uuid);
    assert_string_equal(field(o, "error_class"), cls);
    assert_string_equal(field(o, "error_message"), "boom on attempt 1");
}

static void warn_level_lines(void **state)
{
    fixture *x = *state;
    run_ids ids;
    run_workload(open_logged("warn", x->path), &ids);
    json_t *lines = read_lines(x->path);
    /* flaky: failed + retry scheduled; perm: failed + dead-lettered + task
     * failed; the circuit: open + closed.  Nothing at info or debug. */
    assert_int_equal(json_array_size(lines), 7);
    for (size_t i = 0; i < 7; i++) {
        json_t *o = json_array_get(lines, i);
        const char *level = field(o, "level");
        if (strcmp(level, "warn") != 0 && strcmp(level, "error") != 0)
            fail_msg("line %zu has level %s with log.level=warn", i + 1, level);
        /* The successful task left no trace. */
        assert_string_not_equal(field(o, "task_uuid"), ids.ok);
    }
    size_t i = find_line(lines, "step_failed", ids.flaky, 0);
    assert_failure_line(json_array_get(lines, i), "warn", ids.flaky, "f", ids.flaky_step,
                        "FlakyError");
    size_t r = find_line(lines, "step_retry_scheduled", ids.flaky, 0);
    assert_true(r > i);
    assert_string_equal(field(json_array_get(lines, r), "level"), "warn");
    assert_string_equal(field(json_array_get(lines, r), "step"), "f");

    size_t pf = find_line(lines, "step_failed", ids.perm, 0);
    assert_failure_line(json_array_get(lines, pf), "warn", ids.perm, "p", ids.perm_step,
                        "PermError");
    size_t pd = find_line(lines, "step_dead_lettered", ids.perm, 0);
    assert_true(pd > pf);
    assert_failure_line(json_array_get(lines, pd), "error", ids.perm, "p", ids.perm_step,
                        "PermError");
    size_t tf = find_line(lines, "task_failed", ids.perm, 0);
    assert_true(tf > pd);
    assert_string_equal(field(json_array_get(lines, tf), "level"), "error");
    assert_string_equal(field(json_array_get(lines, tf), "namespace"), "lg");

    size_t co = find_line(lines, "circuit_changed", NULL, 0);
    size_t cc = find_line(lines, "circuit_changed", NULL, co + 1);
    assert_string_equal(field(json_array_get(lines, co), "circuit"), "handler:ok");
    assert_string_equal(field(json_array_get(lines, co), "circuit_state"), "open");
    assert_string_equal(field(json_array_get(lines, cc), "circuit_state"), "closed");
    assert_string_equal(field(json_array_get(lines, cc), "level"), "warn");
    json_decref(lines);
}

static void error_level_lines(void **state)
{
    fixture *x = *state;
    run_ids ids;
    run_workload(open_logged("error", x->path), &ids);
    json_t *lines = read_lines(x->path);
    assert_int_equal(json_array_size(lines), 2);
    assert_string_equal(field(json_array_get(lines, 0), "event"), "step_dead_lettered");
    assert_string_equal(field(json_array_get(lines, 1), "event"), "task_failed");
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(field(json_array_get(lines, i), "level"), "error");
        assert_string_equal(field(json_array_get(lines, i), "task_uuid"), ids.perm);
    }
    assert_string_equal(field(json_array_get(lines, 0), "error_class"), "PermError");
    json_decref(lines);
}

static void info_level_adds_task_lifecycle(void **state)
{
    fixture *x = *state;
    run_ids ids;
    run_workload(open_logged("info", x->path), &ids);
    json_t *lines = read_lines(x->path);
    /* The 7 warn/error lines plus created and completed/failed per task. */
    assert_int_equal(json_array_size(lines), 7 + 3 + 2);
    size_t cr = find_line(lines, "task_created", ids.ok, 0);
    size_t done = find_line(lines, "task_completed", ids.ok, 0);
    assert_true(cr < done);
    assert_string_equal(field(json_array_get(lines, cr), "level"), "info");
    assert_string_equal(field(json_array_get(lines, done), "level"), "info");
    for (size_t i = 0; i < json_array_size(lines); i++) {
        const char *level = field(json_array_get(lines, i), "level");
        if (!strcmp(level, "debug"))
            fail_msg("debug line written with log.level=info");
    }
    json_decref(lines);
}

static void off_writes_nothing(void **state)
{
    fixture *x = *state;
    run_ids ids;
    run_workload(open_logged("off", x->path), &ids);
    json_t *lines = read_lines(x->path);
    assert_int_equal(json_array_size(lines), 0);
    json_decref(lines);
}

static void unwritable_sink_fails_open(void **state)
{
    (void)state;
    const char *bad[] = {"/nonexistent-tasker-obstests/dir/x.log", "/"};
    for (size_t i = 0; i < 2; i++) {
        tasker_config *cfg = NULL;
        th_ok(tasker_config_new(&cfg));
        th_ok(tasker_config_set(cfg, "log.level", "warn"));
        th_ok(tasker_config_set(cfg, "log.sink", bad[i]));
        tasker_coordinator *c = (tasker_coordinator *)cfg; /* must be reset to NULL */
        int rc = tasker_coordinator_open(&c, cfg);
        tasker_config_free(cfg);
        if (rc != TASKER_ECONFIG)
            fail_msg("log.sink=%s: tasker_coordinator_open returned %d, expected "
                     "TASKER_ECONFIG",
                     bad[i], rc);
        assert_null(c);
        const tasker_error *e = tasker_error_last();
        assert_int_equal(e->code, TASKER_ECONFIG);
        assert_int_equal(e->category, TASKER_CATEGORY_CONFIG);
        if (!strstr(e->message, "log.sink") && !strstr(e->context_json, "log.sink"))
            fail_msg("the error does not name log.sink: %s %s", e->message, e->context_json);
        json_t *ctx = th_error_context();
        assert_true(json_is_object(ctx));
        json_decref(ctx);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(warn_level_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(error_level_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(info_level_adds_task_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(off_writes_nothing, setup, teardown),
        cmocka_unit_test(unwritable_sink_fails_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
