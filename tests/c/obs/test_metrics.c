/*
 * Metrics, health and status: tasker_metrics_text parses as the Prometheus
 * text exposition format (checked by obs_prom.c, which is itself tested here
 * against texts it must reject), its counters, gauges and histograms match a
 * known workload, label values are escaped; tasker_health_json and
 * tasker_status_json report queue depth, circuits, recent failures and dead
 * letters.
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the checker itself -------------------------------------------------------- */

static void checker_accepts_valid_text(void **state)
{
    (void)state;
    const char *text = "# HELP a_total Things, with \\\\ and \\n escapes.\n"
                       "# TYPE a_total counter\n"
                       "a_total{x=\"1\"} 3\n"
                       "a_total{x=\"q\\\"b\\\\s\\nz\",y=\"\"} 0\n"
                       "# a plain comment\n"
                       "\n"
                       "# TYPE g gauge\n"
                       "g -1.5e3 1700000000000\n"
                       "# TYPE h histogram\n"
                       "h_bucket{k=\"v\",le=\"0.1\"} 1\n"
                       "h_bucket{k=\"v\",le=\"1\"} 2\n"
                       "h_bucket{k=\"v\",le=\"+Inf\"} 3\n"
                       "h_sum{k=\"v\"} 1.5\n"
                       "h_count{k=\"v\"} 3\n";
    prom_doc doc;
    char err[256];
    if (prom_parse(&doc, text, err, sizeof err) != 0)
        fail_msg("valid text rejected: %s", err);
    assert_int_equal(doc.n, 8);
    assert_true(prom_get(&doc, "a_total", "x", "1", NULL) == 3);
    /* Values are compared unescaped. */
    assert_true(prom_get(&doc, "a_total", "x", "q\"b\\s\nz", "y", "", NULL) == 0);
    assert_true(prom_get(&doc, "g", NULL) == -1500);
    assert_true(prom_get(&doc, "h_count", "k", "v", NULL) == 3);
    assert_true(isnan(prom_get(&doc, "h_count", NULL)));
    assert_int_equal(prom_count(&doc, "h_bucket"), 3);
    prom_doc_free(&doc);
}

static void checker_rejects_invalid_text(void **state)
{
    (void)state;
    static const struct {
        const char *why;
        const char *text;
    } bad[] = {
        {"no final newline", "# TYPE a counter\na 1"},
        {"sample without TYPE", "a 1\n"},
        {"bad escape in a label", "# TYPE a counter\na{x=\"\\t\"} 1\n"},
        {"unterminated label value", "# TYPE a counter\na{x=\"1} 1\n"},
        {"unquoted label value", "# TYPE a counter\na{x=1} 1\n"},
        {"label twice", "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n"},
        {"bad label name", "# TYPE a counter\na{1x=\"1\"} 1\n"},
        {"value not a number", "# TYPE a counter\na one\n"},
        {"hex value", "# TYPE a gauge\na 0x10\n"},
        {"missing value", "# TYPE a gauge\na\n"},
        {"negative counter", "# TYPE a counter\na -1\n"},
        {"fractional timestamp", "# TYPE a counter\na 1 12.5\n"},
        {"TYPE twice", "# TYPE a counter\n# TYPE a counter\na 1\n"},
        {"HELP twice", "# HELP a x\n# HELP a y\n# TYPE a counter\na 1\n"},
        {"bad HELP escape", "# HELP a bad \\t escape\n# TYPE a counter\na 1\n"},
        {"unknown type", "# TYPE a countr\na 1\n"},
        {"bad metric name", "# TYPE 1a counter\n"},
        {"interleaved families",
         "# TYPE a counter\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n"},
        {"same series twice", "# TYPE a counter\na{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n"},
        {"histogram sample without suffix", "# TYPE h histogram\nh 1\n"},
        {"bucket count decreases",
         "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n"
         "h_count 1\n"},
        {"le does not grow",
         "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"0.5\"} 1\n"
         "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
        {"no +Inf bucket", "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n"},
        {"_count differs from +Inf",
         "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
        {"bucket without le", "# TYPE h histogram\nh_bucket 2\nh_sum 1\nh_count 2\n"},
        {"histogram without _count", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        prom_doc doc;
        char err[256];
        if (prom_parse(&doc, bad[i].text, err, sizeof err) == 0) {
            prom_doc_free(&doc);
            fail_msg("checker accepted text with %s", bad[i].why);
        }
        assert_int_equal(doc.n, 0);
        if (strncmp(err, "line ", 5) != 0)
            fail_msg("%s: error without a line number: %s", bad[i].why, err);
    }
}

/* ---- workload ------------------------------------------------------------------- */

#define RETRY2                                                                               \
    "\"retry\":{\"max_attempts\":2,\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0}"

static tasker_coordinator *open_workload(void)
{
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "ok", th_handler_noop, NULL);
    th_handler(c, "flaky", obs_scripted, NULL);
    th_handler(c, "perm", obs_scripted, NULL);
    th_handler(c, "later", NULL, NULL);
    th_register(c, "{\"namespace\":\"met\",\"name\":\"pair\",\"steps\":[{\"name\":\"a\","
                   "\"handler\":\"ok\"},{\"name\":\"b\",\"handler\":\"ok\",\"depends_on\":"
                   "[\"a\"]}]}");
    th_register(c, "{\"namespace\":\"met\",\"name\":\"flaky\",\"steps\":[{\"name\":\"f\","
                   "\"handler\":\"flaky\"," RETRY2 "}]}");
    th_register(c, "{\"namespace\":\"met\",\"name\":\"perm\",\"steps\":[{\"name\":\"p\","
                   "\"handler\":\"perm\"," RETRY2 "}]}");
    th_register(c, "{\"namespace\":\"met\",\"name\":\"held\",\"steps\":[{\"name\":\"w\","
                   "\"handler\":\"later\"}]}");
    th_register(c, "{\"namespace\":\"idle\",\"name\":\"wait\",\"steps\":[{\"name\":\"w\","
                   "\"handler\":\"later\"}]}");
    return c;
}

#define PERM_CTX "{\"fail_until\": 9, \"retryable\": false, \"class\": \"PermError\"}"

static void run_one(tasker_coordinator *c, const char *name, const char *ctx,
                    tasker_task_state want, char uuid[TASKER_UUID_BUFSIZE])
{
    th_create(uuid, c, "met", name, ctx);
    assert_int_equal(th_wait_final(c, uuid), want);
}

static double attempts(prom_doc *d, const char *handler, const char *outcome)
{
    return prom_get(d, "tasker_step_attempts_total", "handler", handler, "outcome", outcome,
                    NULL);
}

static double tasks_total(prom_doc *d, const char *ns, const char *outcome)
{
    return prom_get(d, "tasker_tasks_total", "namespace", ns, "outcome", outcome, NULL);
}

static void metrics_match_known_workload(void **state)
{
    (void)state;
    tasker_coordinator *c = open_workload();
    prom_doc d;
    obs_metrics(c, &d);
    /* Before anything ran: every series exists at zero. */
    obs_assert_metric(tasks_total(&d, "met", "created"), 0);
    obs_assert_metric(attempts(&d, "ok", "started"), 0);
    obs_assert_metric(prom_get(&d, "tasker_queue_wait_seconds_count", "handler", "ok", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_steps_in_flight", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_store_up", "store", "memory", NULL), 1);
    prom_doc_free(&d);

    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 3; i++)
        run_one(c, "pair", NULL, TASKER_TASK_COMPLETE, uuid);
    for (int i = 0; i < 2; i++)
        run_one(c, "flaky", "{\"fail_until\": 1}", TASKER_TASK_COMPLETE, uuid);
    run_one(c, "perm", PERM_CTX, TASKER_TASK_ERROR, uuid);
    th_create(uuid, c, "met", "held", NULL);
    th_ok(tasker_task_cancel(c, uuid));

    obs_metrics(c, &d);
    obs_assert_metric(tasks_total(&d, "met", "created"), 7);
    obs_assert_metric(tasks_total(&d, "met", "completed"), 5);
    obs_assert_metric(tasks_total(&d, "met", "failed"), 1);
    obs_assert_metric(tasks_total(&d, "met", "cancelled"), 1);
    obs_assert_metric(tasks_total(&d, "idle", "created"), 0);

    struct {
        const char *h;
        double started, succeeded, failed, retries, dead;
    } want[] = {
        {"ok", 6, 6, 0, 0, 0},
        {"flaky", 4, 2, 2, 2, 0},
        {"perm", 1, 0, 1, 0, 1},
        {"later", 0, 0, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *h = want[i].h;
        obs_assert_metric(attempts(&d, h, "started"), want[i].started);
        obs_assert_metric(attempts(&d, h, "succeeded"), want[i].succeeded);
        obs_assert_metric(attempts(&d, h, "failed"), want[i].failed);
        obs_assert_metric(attempts(&d, h, "timed_out"), 0);
        obs_assert_metric(prom_get(&d, "tasker_step_retries_total", "handler", h, NULL),
                          want[i].retries);
        obs_assert_metric(prom_get(&d, "tasker_dead_letters_total", "handler", h, NULL),
                          want[i].dead);
        /* One queue wait per attempt started, one duration per attempt ended. */
        obs_assert_metric(prom_get(&d, "tasker_queue_wait_seconds_count", "handler", h, NULL),
                          want[i].started);
        obs_assert_metric(
            prom_get(&d, "tasker_handler_duration_seconds_count", "handler", h, NULL),
            want[i].succeeded + want[i].failed);
        double sum = prom_get(&d, "tasker_handler_duration_seconds_sum", "handler", h, NULL);
        assert_false(isnan(sum));
        assert_true(sum >= 0);
        obs_assert_metric(prom_get(&d, "tasker_circuit_state", "circuit",
                                   h[0] == 'o'   ? "handler:ok"
                                   : h[0] == 'f' ? "handler:flaky"
                                   : h[0] == 'p' ? "handler:perm"
                                                 : "handler:later",
                                   NULL),
                          0);
    }
    /* Task latency: at least every task that finished by running. */
    double tcount = prom_get(&d, "tasker_task_duration_seconds_count", "namespace", "met", NULL);
    assert_false(isnan(tcount));
    assert_true(tcount >= 6 && tcount <= 7);
    obs_assert_metric(prom_get(&d, "tasker_queue_depth", "namespace", "met", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_steps_in_flight", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_fenced_completions_total", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_events_dropped_total", NULL), 0);
    prom_doc_free(&d);

    /* Gauges: two ready poll-mode steps, then one claimed. */
    char w1[TASKER_UUID_BUFSIZE], w2[TASKER_UUID_BUFSIZE];
    th_create(w1, c, "idle", "wait", NULL);
    th_create(w2, c, "idle", "wait", NULL);
    obs_metrics(c, &d);
    obs_assert_metric(prom_get(&d, "tasker_queue_depth", "namespace", "idle", NULL), 2);
    prom_doc_free(&d);
    tasker_step *s = th_claim_one(c);
    obs_metrics(c, &d);
    obs_assert_metric(prom_get(&d, "tasker_queue_depth", "namespace", "idle", NULL), 1);
    obs_assert_metric(prom_get(&d, "tasker_steps_in_flight", NULL), 1);
    prom_doc_free(&d);
    th_ok(tasker_step_succeed(s, NULL, 0));
    th_ok(tasker_task_cancel(c, strcmp(tasker_step_task_uuid(s), w1) == 0 ? w2 : w1));
    obs_metrics(c, &d);
    obs_assert_metric(prom_get(&d, "tasker_queue_depth", "namespace", "idle", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_steps_in_flight", NULL), 0);
    obs_assert_metric(tasks_total(&d, "idle", "completed"), 1);
    obs_assert_metric(tasks_total(&d, "idle", "cancelled"), 1);
    obs_assert_metric(attempts(&d, "later", "succeeded"), 1);
    prom_doc_free(&d);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

static void label_values_are_escaped(void **state)
{
    (void)state;
    /* Handler q"b\s in namespace n"s\x (both legal names). */
    const char *handler = "q\"b\\s";
    const char *ns = "n\"s\\x";
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, handler, th_handler_noop, NULL);
    th_register(c, "{\"namespace\":\"n\\\"s\\\\x\",\"name\":\"esc\",\"steps\":[{\"name\":"
                   "\"s\",\"handler\":\"q\\\"b\\\\s\"}]}");
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, ns, "esc", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    char *text = NULL;
    th_ok(tasker_metrics_text(&text, c));
    assert_non_null(strstr(text, "handler=\"q\\\"b\\\\s\""));
    assert_non_null(strstr(text, "namespace=\"n\\\"s\\\\x\""));
    assert_non_null(strstr(text, "circuit=\"handler:q\\\"b\\\\s\""));
    assert_non_null(strstr(text, "circuit=\"namespace:n\\\"s\\\\x\""));
    tasker_free(text);

    prom_doc d;
    obs_metrics(c, &d);
    obs_assert_metric(attempts(&d, handler, "succeeded"), 1);
    obs_assert_metric(tasks_total(&d, ns, "completed"), 1);
    obs_assert_metric(prom_get(&d, "tasker_queue_wait_seconds_count", "handler", handler, NULL),
                      1);
    obs_assert_metric(prom_get(&d, "tasker_task_duration_seconds_count", "namespace", ns, NULL),
                      1);
    obs_assert_metric(prom_get(&d, "tasker_circuit_state", "circuit", "handler:q\"b\\s", NULL),
                      0);
    prom_doc_free(&d);

    json_t *health = obs_health(c);
    assert_non_null(json_object_get(json_object_get(health, "namespaces"), ns));
    assert_non_null(json_object_get(json_object_get(health, "circuits"), "handler:q\"b\\s"));
    json_decref(health);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

/* ---- health ------------------------------------------------------------------------ */

static json_t *dig(json_t *root, const char *a, const char *b, const char *k)
{
    json_t *v = json_object_get(root, a);
    if (b)
        v = json_object_get(v, b);
    return json_object_get(v, k);
}

static void health_json_fields(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    th_handler(c, "w", th_handler_noop, NULL);
    th_register(c, "{\"namespace\":\"hq\",\"name\":\"t\",\"steps\":[{\"name\":\"s\","
                   "\"handler\":\"w\"}]}");
    char uuids[3][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 3; i++)
        th_create(uuids[i], c, "hq", "t", NULL);
    th_sleep_ms(50);

    /* No workers yet: three ready steps wait. */
    json_t *h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(h, "version")), tasker_version());
    assert_string_equal(json_string_value(dig(h, "store", NULL, "kind")), "memory");
    assert_true(json_is_true(dig(h, "store", NULL, "reachable")));
    assert_true(json_is_true(dig(h, "config", NULL, "valid")));
    assert_int_equal(json_integer_value(dig(h, "namespaces", "hq", "queue_depth")), 3);
    json_t *age = dig(h, "namespaces", "hq", "oldest_ready_age_ms");
    assert_true(json_is_number(age));
    if (json_number_value(age) < 40.0)
        fail_msg("oldest_ready_age_ms is %g after waiting 50 ms", json_number_value(age));
    assert_string_equal(json_string_value(dig(h, "circuits", "handler:w", "state")), "closed");
    assert_string_equal(json_string_value(dig(h, "circuits", "handler:w", "mode")), "auto");
    assert_string_equal(json_string_value(dig(h, "circuits", "namespace:hq", "state")),
                        "closed");
    json_decref(h);

    /* An open circuit degrades the report. */
    th_ok(tasker_circuit_force(c, "handler:w", TASKER_CIRCUIT_FORCE_OPEN));
    h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "degraded");
    assert_string_equal(json_string_value(dig(h, "circuits", "handler:w", "state")), "open");
    json_decref(h);
    th_ok(tasker_circuit_force(c, "namespace:hq", TASKER_CIRCUIT_FORCE_OPEN));
    th_ok(tasker_circuit_force(c, "handler:w", TASKER_CIRCUIT_FORCE_CLOSED));
    h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "degraded");
    json_decref(h);
    th_ok(tasker_circuit_force(c, "namespace:hq", TASKER_CIRCUIT_FORCE_CLOSED));
    h = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "ok");
    json_decref(h);

    /* Once the steps ran, nothing is waiting. */
    th_ok(tasker_coordinator_start(c, 2));
    for (int i = 0; i < 3; i++)
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
    h = obs_health(c);
    assert_int_equal(json_integer_value(dig(h, "namespaces", "hq", "queue_depth")), 0);
    assert_true(json_is_null(dig(h, "namespaces", "hq", "oldest_ready_age_ms")));
    json_decref(h);

    char *text = NULL;
    assert_int_equal(tasker_health_json(NULL, c), TASKER_EINVAL);
    assert_int_equal(tasker_health_json(&text, NULL), TASKER_EINVAL);
    assert_int_equal(tasker_status_json(NULL, c), TASKER_EINVAL);
    assert_int_equal(tasker_metrics_text(NULL, c), TASKER_EINVAL);
    assert_int_equal(tasker_metrics_text(&text, NULL), TASKER_EINVAL);
    th_ok(tasker_coordinator_close(c));
}

/* ---- status --------------------------------------------------------------------------- */

static void assert_failure_entry(json_t *e, const char *task, const char *tmpl, const char *step,
                                 const char *cls)
{
    assert_string_equal(json_string_value(json_object_get(e, "task_uuid")), task);
    assert_string_equal(json_string_value(json_object_get(e, "namespace")), "met");
    assert_string_equal(json_string_value(json_object_get(e, "template")), tmpl);
    assert_string_equal(json_string_value(json_object_get(e, "step")), step);
    assert_string_equal(json_string_value(json_object_get(e, "class")), cls);
    assert_string_equal(json_string_value(json_object_get(e, "message")), "boom on attempt 1");
}

static void status_json_failures_and_dead_letters(void **state)
{
    (void)state;
    tasker_coordinator *c = open_workload();
    th_ok(tasker_coordinator_start(c, 2));
    char f1[TASKER_UUID_BUFSIZE], f2[TASKER_UUID_BUFSIZE], p1[TASKER_UUID_BUFSIZE];
    run_one(c, "flaky", "{\"fail_until\": 1}", TASKER_TASK_COMPLETE, f1);
    run_one(c, "flaky", "{\"fail_until\": 1}", TASKER_TASK_COMPLETE, f2);
    run_one(c, "perm", PERM_CTX, TASKER_TASK_ERROR, p1);

    json_t *st = obs_status(c);
    json_t *recent = json_object_get(st, "recent_failures");
    assert_int_equal(json_array_size(recent), 3);
    /* Newest first. */
    assert_failure_entry(json_array_get(recent, 0), p1, "perm", "p", "PermError");
    assert_failure_entry(json_array_get(recent, 1), f2, "flaky", "f", "ScriptedError");
    assert_failure_entry(json_array_get(recent, 2), f1, "flaky", "f", "ScriptedError");
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(recent, i);
        assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
        const char *at = json_string_value(json_object_get(e, "at"));
        assert_non_null(at);
        assert_true(strlen(at) >= 20 && at[4] == '-' && at[10] == 'T' &&
                    at[strlen(at) - 1] == 'Z');
    }
    json_t *dead = json_object_get(st, "dead_letters");
    assert_int_equal(json_array_size(dead), 1);
    json_t *d = json_array_get(dead, 0);
    assert_failure_entry(d, p1, "perm", "p", "PermError");
    assert_int_equal(json_integer_value(json_object_get(d, "attempts")), 1);
    assert_int_equal(json_integer_value(dig(st, "tasks", "met", "complete")), 2);
    assert_int_equal(json_integer_value(dig(st, "tasks", "met", "error")), 1);
    assert_string_equal(json_string_value(dig(st, "circuits", "handler:perm", "state")),
                        "closed");
    json_decref(st);

    /* recent_failures keeps the newest 50. */
    char last[TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 55; i++)
        run_one(c, "perm", PERM_CTX, TASKER_TASK_ERROR, last);
    st = obs_status(c);
    recent = json_object_get(st, "recent_failures");
    assert_int_equal(json_array_size(recent), 50);
    assert_failure_entry(json_array_get(recent, 0), last, "perm", "p", "PermError");
    for (size_t i = 0; i < 50; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(recent, i), "class")),
            "PermError");
    assert_int_equal(json_array_size(json_object_get(st, "dead_letters")), 56);
    json_decref(st);

    /* A dead letter resolved by an operator is no longer one. */
    th_ok(tasker_step_resolve(c, p1, "p", "{\"by\": \"operator\"}", 0));
    st = obs_status(c);
    dead = json_object_get(st, "dead_letters");
    assert_int_equal(json_array_size(dead), 55);
    for (size_t i = 0; i < json_array_size(dead); i++)
        assert_string_not_equal(
            json_string_value(json_object_get(json_array_get(dead, i), "task_uuid")), p1);
    assert_int_equal(json_integer_value(dig(st, "tasks", "met", "error")), 55);
    json_decref(st);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(checker_accepts_valid_text),
        cmocka_unit_test(checker_rejects_invalid_text),
        cmocka_unit_test(metrics_match_known_workload),
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(health_json_fields),
        cmocka_unit_test(status_json_failures_and_dead_letters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
