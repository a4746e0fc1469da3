/*
 * Task and step history on the postgres store (sql/0007_history.sql).  A
 * step or task that goes the usual way writes no tasker.transitions rows:
 * its row's timestamps stand for them, and tasker.history (which the task
 * JSON reads) gives both kinds.  The first unusual change writes the rows a
 * row stood for, then its own.  Checked against the memory store, which
 * keeps every transition as it happens: the same workflow must show the
 * same history on both stores, and rows written before version 7 must keep
 * theirs.
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate.h"

static char *url; /* a copy: pgt_fresh_db reuses its string */

static const char *diamond = "{\"namespace\":\"hist\",\"name\":\"diamond\",\"steps\":["
                             "{\"name\":\"a\",\"handler\":\"ok\"},"
                             "{\"name\":\"b\",\"handler\":\"ok\",\"depends_on\":[\"a\"]},"
                             "{\"name\":\"c\",\"handler\":\"ok\",\"depends_on\":[\"a\"]},"
                             "{\"name\":\"d\",\"handler\":\"ok\",\"depends_on\":[\"b\",\"c\"]}]}";

/* Step "s" fails its first attempt (retryable, due at once); "t" succeeds. */
static const char *flaky = "{\"namespace\":\"hist\",\"name\":\"flaky\",\"steps\":["
                           "{\"name\":\"s\",\"handler\":\"once\",\"retry\":{\"max_attempts\":3}},"
                           "{\"name\":\"t\",\"handler\":\"ok\"},"
                           "{\"name\":\"u\",\"handler\":\"ok\",\"depends_on\":[\"s\",\"t\"]}]}";

static int ok_handler(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, "{\"ok\": true}", 0);
}

static int once_handler(tasker_step *step, void *ud)
{
    (void)ud;
    if (tasker_step_attempt(step) == 1) {
        tasker_failure f = TASKER_FAILURE_INIT;
        f.error_class = "Flaky";
        f.message = "first attempt fails";
        f.retryable = 1;
        return tasker_step_fail(step, &f);
    }
    return tasker_step_succeed(step, NULL, 0);
}

static void handlers(tasker_coordinator *coord)
{
    th_handler(coord, "ok", ok_handler, NULL);
    th_handler(coord, "once", once_handler, NULL);
}

/* One step's (or the task's, step "") transitions in order, as
 * "from>to/attempt/reason" joined with ' ', for comparing two stores. */
static char *path_of(json_t *task, const char *step)
{
    json_t *tr = json_object_get(task, "transitions");
    size_t i, len = 0;
    json_t *t;
    char *out = calloc(1, 8192);
    json_array_foreach(tr, i, t)
    {
        json_t *s = json_object_get(t, "step");
        const char *name = json_is_string(s) ? json_string_value(s) : "";
        if (strcmp(name, step) != 0)
            continue;
        const char *from = json_string_value(json_object_get(t, "from"));
        len += (size_t)snprintf(out + len, len < 8192 ? 8192 - len : 0, "%s%s>%s/%lld/%s",
                                len ? " " : "", from ? from : "-",
                                json_string_value(json_object_get(t, "to")),
                                json_integer_value(json_object_get(t, "attempt")),
                                json_string_value(json_object_get(t, "reason")));
    }
    return out;
}

/* Runs one task of `name` to its end on a coordinator and returns its JSON. */
static json_t *run_one(tasker_coordinator *coord, const char *name, char uuid[TASKER_UUID_BUFSIZE])
{
    th_create(uuid, coord, "hist", name, NULL);
    th_ok(tasker_coordinator_start(coord, 1));
    th_wait_final(coord, uuid);
    return th_task(coord, uuid);
}

/* The same task on the memory store, for reference. */
static json_t *memory_run(const char *tmpl, const char *name)
{
    tasker_coordinator *mem = th_open(NULL);
    handlers(mem);
    th_register(mem, tmpl);
    char uuid[TASKER_UUID_BUFSIZE];
    json_t *task = run_one(mem, name, uuid);
    th_ok(tasker_coordinator_close(mem));
    return task;
}

static void assert_same_history(json_t *pg, json_t *mem, const char *const *steps)
{
    for (size_t i = 0; steps[i]; i++) {
        char *a = path_of(pg, steps[i]);
        char *b = path_of(mem, steps[i]);
        if (strcmp(a, b) != 0)
            fail_msg("history of '%s' differs:\n  postgres: %s\n  memory:   %s", steps[i], a, b);
        free(a);
        free(b);
    }
    assert_int_equal(json_array_size(json_object_get(pg, "transitions")),
                     json_array_size(json_object_get(mem, "transitions")));
}

static long long rows_of(const char *uuid, const char *step)
{
    if (!step)
        return pgt_num("SELECT count(*) FROM tasker.transitions tr JOIN tasker.tasks t "
                       "ON t.id = tr.task_id WHERE t.uuid = $1::uuid",
                       uuid);
    return pgt_num("SELECT count(*) FROM tasker.transitions tr JOIN tasker.tasks t ON t.id = "
                   "tr.task_id JOIN tasker.template_steps ts ON ts.template_id = t.template_id "
                   "AND ts.idx = tr.step_idx WHERE t.uuid = $1::uuid AND ts.name = $2",
                   uuid, step);
}

/* A task whose steps all go the usual way: not one row written, and the
 * history (from the timestamps) is the memory store's. */
static void test_usual_task_writes_no_rows(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *coord = pgt_open(url);
    handlers(coord);
    th_register(coord, diamond);
    char uuid[TASKER_UUID_BUFSIZE];
    json_t *pg = run_one(coord, "diamond", uuid);
    assert_string_equal(json_string_value(json_object_get(pg, "state")), "complete");
    json_t *mem = memory_run(diamond, "diamond");
    assert_same_history(pg, mem, (const char *const[]){"", "a", "b", "c", "d", NULL});
    assert_int_equal(rows_of(uuid, NULL), 0);
    /* Each step was started by this coordinator's worker, per the view. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.history h JOIN tasker.tasks t ON t.id = "
                             "h.task_id WHERE t.uuid = $1::uuid AND h.reason IN (8, 9) "
                             "AND h.worker_id IS NULL",
                             uuid),
                     0);
    json_decref(pg);
    json_decref(mem);
    th_ok(tasker_coordinator_close(coord));
}

/* A failed attempt writes the rows its step stood for, then its own; the
 * steps that went the usual way still write none, and the whole history
 * is the memory store's. */
static void test_a_failure_writes_what_the_row_stood_for(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *coord = pgt_open(url);
    handlers(coord);
    th_register(coord, flaky);
    char uuid[TASKER_UUID_BUFSIZE];
    json_t *pg = run_one(coord, "flaky", uuid);
    assert_string_equal(json_string_value(json_object_get(pg, "state")), "complete");
    json_t *mem = memory_run(flaky, "flaky");
    assert_same_history(pg, mem, (const char *const[]){"", "s", "t", "u", NULL});
    char *p = path_of(pg, "s");
    assert_string_equal(p, "pending>enqueued/0/dependencies_met "
                           "enqueued>in_progress/1/claimed "
                           "in_progress>waiting_for_retry/1/retry_scheduled "
                           "waiting_for_retry>enqueued/1/retry_due "
                           "enqueued>in_progress/2/claimed "
                           "in_progress>complete/2/succeeded");
    free(p);
    /* Every row of s is written; t, u and the task wrote none. */
    assert_int_equal(rows_of(uuid, "s"), 6);
    assert_int_equal(rows_of(uuid, "t"), 0);
    assert_int_equal(rows_of(uuid, "u"), 0);
    assert_int_equal(rows_of(uuid, NULL), 6);
    json_decref(pg);
    json_decref(mem);
    th_ok(tasker_coordinator_close(coord));
}

/* Cancelling a task that never ran: the task and its steps write what they
 * stood for (created, enqueued), then the cancellation. */
static void test_cancel_writes_what_the_rows_stood_for(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *coord = pgt_open(url);
    handlers(coord);
    th_register(coord, diamond);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "hist", "diamond", NULL);
    th_ok(tasker_task_cancel(coord, uuid));
    json_t *pg = th_task(coord, uuid);

    tasker_coordinator *mem = th_open(NULL);
    handlers(mem);
    th_register(mem, diamond);
    char muuid[TASKER_UUID_BUFSIZE];
    th_create(muuid, mem, "hist", "diamond", NULL);
    th_ok(tasker_task_cancel(mem, muuid));
    json_t *m = th_task(mem, muuid);
    assert_same_history(pg, m, (const char *const[]){"", "a", "b", "c", "d", NULL});
    /* All of it is written now, and nothing twice. */
    assert_int_equal(rows_of(uuid, NULL), (long long)json_array_size(json_object_get(pg, "transitions")));
    json_decref(pg);
    json_decref(m);
    th_ok(tasker_coordinator_close(mem));
    th_ok(tasker_coordinator_close(coord));
}

/* A task created under version 6 (every transition written) and finished
 * under version 7: its history is whole and nothing shows twice. */
static void test_rows_from_before_keep_their_history(void **state)
{
    (void)state;
    pgt_require();
    /* The template's stored definition, as this library registers it. */
    tasker_coordinator *coord = pgt_open(url);
    handlers(coord);
    th_register(coord, diamond);
    char *def = pgt_str("SELECT definition::text FROM tasker.templates WHERE name = 'diamond'");
    assert_non_null(def);
    th_ok(tasker_coordinator_close(coord));

    const char *old_url = pgt_fresh_db("hist_v6", 0);
    PGconn *c = PQconnectdb(old_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    assert_true(tk_n_migrations >= 7);
    for (size_t i = 0; i < tk_n_migrations && tk_migrations[i].version <= 6; i++) {
        PGresult *r = PQexec(c, tk_migrations[i].sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
            fail_msg("migration %d: %s", tk_migrations[i].version, PQresultErrorMessage(r));
        PQclear(r);
    }
    const char *p1[] = {def};
    PGresult *r = PQexecParams(c, "SELECT template_id FROM tasker.register_template($1::jsonb)", 1,
                               NULL, p1, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    r = PQexec(c, "SELECT tasker.set_latest_template(id) FROM tasker.templates");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    r = PQexec(c, "SELECT task_uuid FROM tasker.create_task('hist', 'diamond', NULL, '{}', NULL, 0)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char uuid[TASKER_UUID_BUFSIZE];
    snprintf(uuid, sizeof uuid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    free(def);
    /* Version 7 on top, then the task runs. */
    for (size_t i = 0; i < tk_n_migrations; i++) {
        if (tk_migrations[i].version <= 6)
            continue;
        r = PQexec(c, tk_migrations[i].sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
            fail_msg("migration %d: %s", tk_migrations[i].version, PQresultErrorMessage(r));
        PQclear(r);
    }
    PQfinish(c);

    coord = pgt_open(old_url);
    handlers(coord);
    th_register(coord, diamond);
    th_ok(tasker_coordinator_start(coord, 1));
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    json_t *pg = th_task(coord, uuid);
    json_t *mem = memory_run(diamond, "diamond");
    assert_same_history(pg, mem, (const char *const[]){"", "a", "b", "c", "d", NULL});
    /* Every row of it was written: the old rows and, their flags being
     * set, the new ones. */
    assert_int_equal(rows_of(uuid, NULL), (long long)json_array_size(json_object_get(pg, "transitions")));
    json_decref(pg);
    json_decref(mem);
    th_ok(tasker_coordinator_close(coord));
}

static const char *one = "{\"namespace\":\"hist\",\"name\":\"one\",\"steps\":["
                         "{\"name\":\"x\",\"handler\":\"polled\"}]}";

/* A coordinator whose step x is claimed by the test (a polled handler). */
static tasker_coordinator *poller(tasker_coordinator *coord)
{
    th_handler(coord, "polled", NULL, NULL);
    th_register(coord, one);
    return coord;
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* A step's first attempt is claimed on its queue row alone
 * (sql/0008_lean_claim.sql): the step row stays enqueued and the task row
 * pending, yet every reader sees the step in progress and the task
 * running, and the finished task's history is the memory store's. */
static void test_a_claim_writes_the_queue_row_only(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *coord = poller(pgt_open(url));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "hist", "one", NULL);
    tasker_step *step = th_claim_one(coord);

    assert_int_equal(pgt_num("SELECT s.state FROM tasker.steps s JOIN tasker.tasks t "
                             "ON t.id = s.task_id WHERE t.uuid = $1::uuid",
                             uuid),
                     1);
    assert_int_equal(pgt_num("SELECT state FROM tasker.tasks WHERE uuid = $1::uuid", uuid), 0);
    assert_int_equal(th_task_state(coord, uuid), TASKER_TASK_RUNNING);
    json_t *t = th_task(coord, uuid);
    assert_string_equal(jstr(t, "state"), "running");
    assert_string_equal(th_step_state(t, "x"), "in_progress");
    assert_int_equal(th_step_attempts(t, "x"), 1);
    char *started = strdup(jstr(th_step(t, "x"), "started_at"));
    char *p = path_of(t, "x");
    assert_string_equal(p, "pending>enqueued/0/dependencies_met enqueued>in_progress/1/claimed");
    free(p);
    p = path_of(t, "");
    assert_string_equal(p, "->pending/0/created pending>running/0/started");
    free(p);
    json_decref(t);
    char *why = pgt_str("SELECT reason FROM tasker.step_readiness($1::uuid)", uuid);
    assert_string_equal(why, "in progress (attempt 1)");
    free(why);
    assert_int_equal(pgt_num("SELECT tasks FROM tasker.task_counts() "
                             "WHERE namespace = 'hist' AND state = 'running'"),
                     1);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.task_counts() "
                             "WHERE namespace = 'hist' AND state = 'pending'"),
                     0);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps_current s JOIN tasker.tasks t "
                             "ON t.id = s.task_id WHERE t.uuid = $1::uuid AND s.state = 2 "
                             "AND s.worker_id IS NOT NULL",
                             uuid),
                     1);

    th_ok(tasker_step_succeed(step, "{\"ok\": true}", 0));
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    json_t *pg = th_task(coord, uuid);
    assert_string_equal(jstr(th_step(pg, "x"), "started_at"), started);
    free(started);
    tasker_coordinator *m = poller(th_open(NULL));
    char muuid[TASKER_UUID_BUFSIZE];
    th_create(muuid, m, "hist", "one", NULL);
    th_ok(tasker_step_succeed(th_claim_one(m), "{\"ok\": true}", 0));
    assert_int_equal(th_wait_final(m, muuid), TASKER_TASK_COMPLETE);
    json_t *mem = th_task(m, muuid);
    th_ok(tasker_coordinator_close(m));
    assert_same_history(pg, mem, (const char *const[]){"", "x", NULL});
    assert_int_equal(rows_of(uuid, NULL), 0);
    json_decref(pg);
    json_decref(mem);
    th_ok(tasker_coordinator_close(coord));
}

/* Cancelling a task whose step is claimed on its queue row: the claim is
 * written first, so the history is the memory store's (claimed, then
 * cancelled), and the late result is refused on both. */
static void test_cancel_of_a_claim_on_the_queue_row(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *stores[2] = {poller(pgt_open(url)), poller(th_open(NULL))};
    json_t *tasks[2];
    for (int i = 0; i < 2; i++) {
        char uuid[TASKER_UUID_BUFSIZE];
        th_create(uuid, stores[i], "hist", "one", NULL);
        tasker_step *step = th_claim_one(stores[i]);
        th_ok(tasker_task_cancel(stores[i], uuid));
        assert_int_equal(tasker_step_succeed(step, NULL, 0), TASKER_ESTATE);
        tasks[i] = th_task(stores[i], uuid);
        assert_string_equal(jstr(tasks[i], "state"), "cancelled");
        if (i == 0)
            assert_int_equal(rows_of(uuid, NULL),
                             (long long)json_array_size(json_object_get(tasks[i], "transitions")));
    }
    char *p = path_of(tasks[0], "x");
    assert_string_equal(p, "pending>enqueued/0/dependencies_met enqueued>in_progress/1/claimed "
                           "in_progress>cancelled/1/cancelled");
    free(p);
    assert_same_history(tasks[0], tasks[1], (const char *const[]){"", "x", NULL});
    for (int i = 0; i < 2; i++) {
        json_decref(tasks[i]);
        th_ok(tasker_coordinator_close(stores[i]));
    }
}

/* A claim on the queue row released at close (the attempt counts), then
 * claimed again by another coordinator and completed: released and
 * claimed again in the history. */
static void test_release_of_a_claim_on_the_queue_row(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poller(pgt_open(url));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "hist", "one", NULL);
    tasker_step *step = th_claim_one(a);
    th_ok(tasker_coordinator_close(a)); /* the step still held: released */
    assert_int_equal(tasker_step_succeed(step, NULL, 0), TASKER_ECLOSED);
    tasker_coordinator *b = poller(pgt_open(url));
    tasker_step *again = th_claim_one(b);
    assert_int_equal(tasker_step_attempt(again), 2);
    th_ok(tasker_step_succeed(again, NULL, 0));
    assert_int_equal(th_wait_final(b, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(b, uuid);
    char *p = path_of(t, "x");
    assert_string_equal(p, "pending>enqueued/0/dependencies_met enqueued>in_progress/1/claimed "
                           "in_progress>enqueued/1/released enqueued>in_progress/2/claimed "
                           "in_progress>complete/2/succeeded");
    free(p);
    json_decref(t);
    th_ok(tasker_coordinator_close(b));
}

static int setup(void **state)
{
    (void)state;
    if (!getenv("TASKER_TEST_DATABASE_URL") || !*getenv("TASKER_TEST_DATABASE_URL"))
        return 0;
    url = strdup(pgt_fresh_db("history", 1));
    return url ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usual_task_writes_no_rows),
        cmocka_unit_test(test_a_failure_writes_what_the_row_stood_for),
        cmocka_unit_test(test_cancel_writes_what_the_rows_stood_for),
        cmocka_unit_test(test_a_claim_writes_the_queue_row_only),
        cmocka_unit_test(test_cancel_of_a_claim_on_the_queue_row),
        cmocka_unit_test(test_release_of_a_claim_on_the_queue_row),
        /* Last: it leaves the helpers' queries on another database. */
        cmocka_unit_test(test_rows_from_before_keep_their_history),
    };
    int rc = cmocka_run_group_tests(tests, setup, NULL);
    pgt_finish();
    free(url);
    return rc;
}
