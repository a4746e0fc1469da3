/*
 * Leases and fencing on the postgres store: two coordinators (two
 * workers) racing for the same rows, a lease that expires while its worker
 * still runs the step (the late completion is refused and counted), a
 * heartbeat that keeps a long step's lease, poll mode through the
 * descriptor, and a claim still held when its coordinator closes.
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres.h"

static const char *url;

static const char *POLL_TEMPLATE =
    "{\"namespace\":\"lease\",\"name\":\"one\",\"steps\":[{\"name\":\"only\","
    "\"handler\":\"polled\",\"retry\":{\"max_attempts\":3,\"backoff\":\"none\"}}]}";

/* Expires the lease of every leased step, as if its worker had stopped
 * renewing it long ago. */
static void expire_leases(void)
{
    pgt_exec("UPDATE tasker.queue SET visible_at = now() - interval '1 second' "
             "WHERE leased_by IS NOT NULL");
}

static tasker_coordinator *poll_worker(void)
{
    tasker_coordinator *c = pgt_open_tuned(url, 0, 100);
    th_handler(c, "polled", NULL, NULL);
    th_register(c, POLL_TEMPLATE);
    return c;
}

static void test_two_workers_race(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = pgt_open(url), *b = pgt_open(url);
    th_handler(a, "node", th_handler_node, NULL);
    th_handler(b, "node", th_handler_node, NULL);
    const char *tmpl = "{\"namespace\":\"lease\",\"name\":\"diamond\",\"steps\":["
                       "{\"name\":\"a\",\"handler\":\"node\"},"
                       "{\"name\":\"b\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
                       "{\"name\":\"c\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
                       "{\"name\":\"d\",\"handler\":\"node\",\"depends_on\":[\"b\",\"c\"]}]}";
    th_register(a, tmpl);
    th_register(b, tmpl);
    th_ok(tasker_coordinator_start(a, 3));
    th_ok(tasker_coordinator_start(b, 3));
    enum { N = 300 };
    static char uuids[N][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < N; i++)
        th_create(uuids[i], i % 2 ? a : b, "lease", "diamond", NULL);
    for (int i = 0; i < N; i++)
        assert_int_equal(th_wait_final(a, uuids[i]), TASKER_TASK_COMPLETE);
    th_assert_no_problems();
    tk_pg_stat sa, sb;
    th_ok(tk_pg_stats(a, &sa));
    th_ok(tk_pg_stats(b, &sb));
    char ida[16], idb[16];
    snprintf(ida, sizeof ida, "%d", sa.worker_id);
    snprintf(idb, sizeof idb, "%d", sb.worker_id);
    long long by_a = pgt_num("SELECT count(*) FROM tasker.history t JOIN tasker.tasks k "
                             "ON k.id = t.task_id JOIN tasker.templates p ON p.id = k.template_id "
                             "WHERE p.name = 'diamond' AND reason = 9 AND worker_id = $1::int", ida);
    long long by_b = pgt_num("SELECT count(*) FROM tasker.history t JOIN tasker.tasks k "
                             "ON k.id = t.task_id JOIN tasker.templates p ON p.id = k.template_id "
                             "WHERE p.name = 'diamond' AND reason = 9 AND worker_id = $1::int", idb);
    print_message("[   INFO   ] worker %d ran %lld steps, worker %d ran %lld\n", sa.worker_id, by_a,
                  sb.worker_id, by_b);
    assert_int_equal(by_a + by_b, N * 4);
    assert_true(by_a > 0 && by_b > 0);
    /* Each step claimed once and recorded once. */
    assert_int_equal(pgt_num("SELECT count(*) FROM (SELECT task_id, step_idx FROM tasker.history "
                             "WHERE reason IN (8, 9) GROUP BY 1, 2 HAVING count(*) <> 2) x"),
                     0);
    assert_int_equal(sa.fenced + sb.fenced, 0);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
}

static void test_lease_expires_while_worker_runs(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker(), *b = poll_worker();
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    tasker_step *sa = th_claim_one(a);
    assert_int_equal(tasker_step_attempt(sa), 1);
    /* A stalls; its lease runs out and B takes the step over. */
    expire_leases();
    tasker_step *sb = th_claim_one(b);
    assert_int_equal(tasker_step_attempt(sb), 2);
    assert_string_equal(tasker_step_uuid(sa), tasker_step_uuid(sb));
    /* A wakes up and completes: refused, nothing recorded. */
    assert_int_equal(tasker_step_succeed(sa, "{\"from\": \"a\"}", 0), TASKER_ESTALE);
    assert_int_equal(tasker_step_succeed(sa, "{\"from\": \"a\"}", 0), TASKER_ESTATE);
    tasker_task_state st;
    assert_int_equal(tasker_task_wait(&st, a, uuid, 0), TASKER_ETIMEOUT);
    assert_int_equal(tasker_step_succeed(sb, "{\"from\": \"b\"}", 0), TASKER_OK);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);

    json_t *t = th_task(a, uuid);
    json_t *s = th_step(t, "only");
    assert_string_equal(json_string_value(json_object_get(json_object_get(s, "result"), "from")), "b");
    assert_int_equal(json_integer_value(json_object_get(s, "attempts")), 2);
    json_t *e = json_array_get(json_object_get(s, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "class")), "tasker.LeaseExpired");
    assert_int_equal(th_count_transitions(t, "only", "in_progress", "complete", "succeeded", -1), 1);
    assert_int_equal(th_count_transitions(t, "only", "in_progress", "waiting_for_retry", "timed_out", 1),
                     1);
    json_decref(t);
    tk_pg_stat stat;
    th_ok(tk_pg_stats(a, &stat));
    assert_int_equal(stat.fenced, 1);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.fenced f JOIN tasker.tasks t ON "
                             "t.id = f.task_id WHERE t.uuid = $1::uuid AND f.attempt = 1",
                             uuid),
                     1);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
}

static void test_expired_lease_refused_before_reclaim(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker(), *b = poll_worker();
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    tasker_step *sa = th_claim_one(a);
    expire_leases();
    /* Nobody took the step yet, but the lease is gone: refused. */
    assert_int_equal(tasker_step_fail(sa, NULL), TASKER_ESTALE);
    tasker_step *sb = th_claim_one(b);
    assert_int_equal(tasker_step_attempt(sb), 2);
    assert_int_equal(tasker_step_succeed(sb, NULL, 0), TASKER_OK);
    assert_int_equal(th_wait_final(b, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(b, uuid);
    assert_string_equal(json_string_value(json_object_get(th_step(t, "only"), "result_kind")), "none");
    json_decref(t);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
}

static void test_heartbeat_keeps_a_long_step(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker(), *b = poll_worker();
    tk_pg_tuning tune = {1500, 0, 0, 0, -1}; /* renewed every 500 ms */
    th_ok(tk_pg_tune(a, &tune));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    tasker_step *sa = th_claim_one(a);
    /* Held for two lease lengths: B never gets it. */
    for (int i = 0; i < 15; i++) {
        th_sleep_ms(200);
        tasker_step *sb = NULL;
        size_t n = 0;
        th_ok(tasker_coordinator_claim(&sb, &n, b, 1));
        assert_int_equal(n, 0);
    }
    assert_int_equal(tasker_step_succeed(sa, "true", 0), TASKER_OK);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
}

static void test_poll_mode_descriptor(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker();
    int fd = -1;
    th_ok(tasker_coordinator_fd(&fd, a));
    assert_true(fd >= 0);
    /* Drain whatever is there, then the descriptor goes quiet... */
    tasker_step *steps[8];
    size_t n = 0;
    th_ok(tasker_coordinator_claim(steps, &n, a, 8));
    assert_int_equal(n, 0);
    /* ...until a task is created. */
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    assert_true(th_fd_readable(a, th_wait_ms()));
    tasker_step *s = th_claim_one(a);
    assert_string_equal(tasker_step_task_uuid(s), uuid);
    assert_string_equal(tasker_step_name(s), "only");
    assert_string_equal(tasker_step_handler_name(s), "polled");
    assert_int_equal(tasker_step_succeed(s, "[1,2,3]", 0), TASKER_OK);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(a));
}

static void test_claim_held_at_close(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker(), *b = poll_worker();
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    tasker_step *sa = th_claim_one(a);
    th_ok(tasker_coordinator_close(a));
    /* The handle is still readable; completing it says the coordinator
     * is gone.  Its lease was given back, so B runs the step at once. */
    assert_string_equal(tasker_step_name(sa), "only");
    tasker_step *sb = th_claim_one(b);
    assert_int_equal(tasker_step_succeed(sa, NULL, 0), TASKER_ECLOSED);
    assert_int_equal(tasker_step_succeed(sb, NULL, 0), TASKER_OK);
    assert_int_equal(th_wait_final(b, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(b, uuid);
    assert_int_equal(th_count_transitions(t, "only", "in_progress", "enqueued", "released", -1), 1);
    json_decref(t);
    th_ok(tasker_coordinator_close(b));
}

/* A step still in flight when stop's drain runs out (SIGTERM in a worker)
 * is released: another worker claims it at once, not after the lease
 * expires, and the first handler's late completion is refused. */
static void test_stop_releases_after_the_drain(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker(), *b = poll_worker();
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, a, "lease", "one", NULL);
    tasker_step *sa = th_claim_one(a);
    uint32_t attempt = tasker_step_attempt(sa);
    assert_int_equal(tasker_coordinator_stop(a, 200), TASKER_ETIMEOUT);
    /* The lease (30 s by default) has not expired: B gets the step only
     * because A gave it back. */
    tasker_step *sb = NULL;
    size_t n = 0;
    double end = th_now_ms() + 3000;
    while (!n && th_now_ms() < end) {
        th_ok(tasker_coordinator_claim(&sb, &n, b, 1));
        if (!n)
            th_sleep_ms(20);
    }
    assert_int_equal(n, 1);
    assert_true(tasker_step_attempt(sb) > attempt);
    assert_int_equal(tasker_step_succeed(sa, NULL, 0), TASKER_ESTALE);
    assert_int_equal(tasker_step_succeed(sb, NULL, 0), TASKER_OK);
    assert_int_equal(th_wait_final(b, uuid), TASKER_TASK_COMPLETE);
    json_t *t = th_task(b, uuid);
    assert_int_equal(th_count_transitions(t, "only", "in_progress", "enqueued", "released", -1), 1);
    json_decref(t);
    th_ok(tasker_coordinator_close(a));
    th_ok(tasker_coordinator_close(b));
}

/* Claims go by priority, then by the age of the task: a step made ready by
 * a completion comes before the first step of a task created later, so
 * work under way finishes first (and stays with the worker whose
 * completion claims it). */
static void test_claims_prefer_tasks_under_way(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = poll_worker();
    th_register(a, "{\"namespace\":\"lease\",\"name\":\"two\",\"steps\":["
                   "{\"name\":\"first\",\"handler\":\"polled\"},"
                   "{\"name\":\"second\",\"handler\":\"polled\",\"depends_on\":[\"first\"]}]}");
    char older[TASKER_UUID_BUFSIZE], newer[TASKER_UUID_BUFSIZE];
    th_create(older, a, "lease", "two", NULL);
    tasker_step *s1 = th_claim_one(a);
    assert_string_equal(tasker_step_name(s1), "first");
    th_sleep_ms(20);
    th_create(newer, a, "lease", "one", NULL);
    th_ok(tasker_step_succeed(s1, NULL, 0));
    /* Both are ready now; "only" was ready first, "second" belongs to the
     * older task. */
    tasker_step *s2 = th_claim_one(a);
    assert_string_equal(tasker_step_name(s2), "second");
    tasker_step *s3 = th_claim_one(a);
    assert_string_equal(tasker_step_name(s3), "only");
    th_ok(tasker_step_succeed(s2, NULL, 0));
    th_ok(tasker_step_succeed(s3, NULL, 0));
    assert_int_equal(th_wait_final(a, older), TASKER_TASK_COMPLETE);
    assert_int_equal(th_wait_final(a, newer), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(a));
}

static void test_stop_drains_and_restarts(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = pgt_open(url);
    th_counter cnt;
    th_counter_init(&cnt);
    th_handler(a, "count", th_handler_count, &cnt);
    th_register(a, "{\"namespace\":\"lease\",\"name\":\"counted\",\"steps\":[{\"name\":\"x\","
                   "\"handler\":\"count\"}]}");
    char uuid[TASKER_UUID_BUFSIZE];
    th_ok(tasker_coordinator_start(a, 2));
    th_create(uuid, a, "lease", "counted", NULL);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_stop(a, 1000));
    /* Stopped: nothing runs. */
    th_create(uuid, a, "lease", "counted", NULL);
    tasker_task_state st;
    assert_int_equal(tasker_task_wait(&st, a, uuid, 300), TASKER_ETIMEOUT);
    assert_int_equal(th_counter_get(&cnt), 1);
    th_ok(tasker_coordinator_start(a, 2));
    assert_int_equal(tasker_coordinator_start(a, 2), TASKER_EBUSY);
    assert_int_equal(th_wait_final(a, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(th_counter_get(&cnt), 2);
    th_ok(tasker_coordinator_close(a));
}

/* Kills every connection of this database's tasker sessions, as a server
 * restart would; returns how many. */
static long long kill_tasker_connections(void)
{
    return pgt_num("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND application_name = 'tasker' "
                   "AND pid <> pg_backend_pid()");
}

static void test_connections_lost_mid_run(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *a = pgt_open_tuned(url, 2000, 200);
    th_handler(a, "node", th_handler_node, NULL);
    th_register(a, "{\"namespace\":\"lease\",\"name\":\"diamond\",\"steps\":["
                   "{\"name\":\"a\",\"handler\":\"node\"},"
                   "{\"name\":\"b\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
                   "{\"name\":\"c\",\"handler\":\"node\",\"depends_on\":[\"a\"]},"
                   "{\"name\":\"d\",\"handler\":\"node\",\"depends_on\":[\"b\",\"c\"]}]}");
    enum { N = 200 };
    static char uuids[N][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < N; i++)
        th_create(uuids[i], a, "lease", "diamond", NULL);
    th_ok(tasker_coordinator_start(a, 8));
    /* Twice, while steps are running: every connection of the store dies. */
    long long killed = 0;
    for (int round = 0; round < 2; round++) {
        double deadline = th_now_ms() + th_wait_ms();
        long long want = (round + 1) * N; /* steps done before this round */
        while (pgt_num("SELECT count(*) FROM tasker.steps s JOIN tasker.tasks t ON "
                       "t.id = s.task_id JOIN tasker.templates p ON p.id = t.template_id "
                       "WHERE p.name = 'diamond' AND s.state = 4 AND t.created_at > now() - "
                       "interval '10 minutes'") < want &&
               th_now_ms() < deadline)
            th_sleep_ms(5);
        killed += kill_tasker_connections();
    }
    assert_true(killed > 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(th_wait_final(a, uuids[i]), TASKER_TASK_COMPLETE);
    th_assert_no_problems();
    for (int i = 0; i < N; i++) {
        json_t *t = th_task(a, uuids[i]);
        const char *steps[] = {"a", "b", "c", "d"};
        for (int k = 0; k < 4; k++)
            assert_int_equal(th_count_transitions(t, steps[k], "in_progress", "complete",
                                                  "succeeded", -1), 1);
        json_decref(t);
    }
    print_message("[   INFO   ] %lld connection(s) killed; all %d tasks completed\n", killed, N);
    th_ok(tasker_coordinator_close(a));
}

/* ---- plans: a batch is one key lookup per entry ---------------------------- */

static void keep_notice(void *arg, const char *message)
{
    char *buf = arg;
    size_t have = strlen(buf);
    snprintf(buf + have, 65536 - have, "%s", message);
}

/* A completion batch and a heartbeat look each entry up by its key, however
 * many other steps are leased.  Comparing the lease's expiry as plain
 * visible_at > now() let the planner scan the claim index for every leased
 * row instead (guessing one) and test each batch entry against each of
 * them: quadratic in the batch, the slowest statement of a completion.
 * Checked on the plans PostgreSQL reports for the functions' statements
 * (auto_explain), not on timings. */
static void test_batches_look_up_each_key(void **state)
{
    (void)state;
    pgt_require();
    tasker_coordinator *coord = poll_worker();
    th_ok(tasker_coordinator_close(coord));
    PGconn *c = pgt_conn();
    pgt_exec("SELECT count(*) FROM generate_series(1, 600) g CROSS JOIN LATERAL "
             "tasker.create_task('lease', 'one', NULL, '{\"i\": ' || g || '}', NULL, 0)");
    long long w = pgt_num("SELECT tasker.worker_register('plan-test', 1)");
    char ws[24];
    snprintf(ws, sizeof ws, "%lld", w);
    pgt_exec("CREATE TEMP TABLE plan_claims AS SELECT * FROM tasker.claim_ns($1::int, "
             "ARRAY['polled'], 500, 60000, NULL, NULL)",
             ws);
    assert_int_equal(pgt_num("SELECT count(*) FROM plan_claims"), 500);
    pgt_exec("ANALYZE tasker.queue");

    char *notices = calloc(1, 65536);
    PQnoticeProcessor old = PQsetNoticeProcessor(c, keep_notice, notices);
    pgt_exec("LOAD 'auto_explain'");
    pgt_exec("SET auto_explain.log_min_duration = 0");
    pgt_exec("SET auto_explain.log_nested_statements = on");
    pgt_exec("SET auto_explain.log_level = notice");
    pgt_exec("SET client_min_messages = notice");
    pgt_exec("SELECT count(*) FROM tasker.heartbeat($1::int, "
             "(SELECT array_agg(task_id) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg(step_idx) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg(attempt) FROM (SELECT * FROM plan_claims LIMIT 200) x), 60000)",
             ws);
    pgt_exec("SELECT count(*) FROM tasker.complete_steps_ev($1::int, "
             "(SELECT array_agg(task_id) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg(step_idx) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg(attempt) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg(true) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "(SELECT array_agg('{}'::text) FROM (SELECT * FROM plan_claims LIMIT 200) x), "
             "NULL, NULL, NULL, NULL, NULL, NULL)",
             ws);
    pgt_exec("SET auto_explain.log_min_duration = -1");
    PQsetNoticeProcessor(c, old, NULL);

    /* Both statements were explained, and neither used the claim index. */
    assert_non_null(strstr(notices, "DELETE FROM tasker.queue q"));
    assert_non_null(strstr(notices, "UPDATE tasker.queue q SET visible_at"));
    if (strstr(notices, "queue_claim"))
        fail_msg("a batch statement scans the claim index:\n%s", notices);
    free(notices);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.queue q JOIN plan_claims p ON "
                             "p.task_id = q.task_id AND p.step_idx = q.step_idx"),
                     300);
    pgt_exec("DROP TABLE plan_claims");
    pgt_exec("DELETE FROM tasker.queue WHERE leased_by = $1::int", ws);
}

/* ---- postgres.namespaces -------------------------------------------------------- */

/* postgres.namespaces restricts the claims themselves: a worker for one
 * namespace leaves the steps of another alone although it has a handler of
 * that name.  A bad name is refused at open, naming the key. */
static void test_namespaces_key_limits_claims(void **state)
{
    (void)state;
    pgt_require();
    tasker_config *cfg = NULL;
    th_ok(tasker_config_new(&cfg));
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    th_ok(tasker_config_set(cfg, "database.url", url));
    th_ok(tasker_config_set(cfg, "postgres.namespaces", "ns_a, bad/name"));
    tasker_coordinator *bad = NULL;
    assert_int_equal(tasker_coordinator_open(&bad, cfg), TASKER_ECONFIG);
    assert_null(bad);
    assert_non_null(strstr(tasker_error_last()->message, "postgres.namespaces"));
    assert_non_null(strstr(tasker_error_last()->message, "bad/name"));
    tasker_config_free(cfg);

    th_counter n;
    th_counter_init(&n);
    tasker_coordinator *only_b =
        th_open("store", "postgres", "database.url", url, "postgres.namespaces", " ns_b ", NULL);
    th_handler(only_b, "shared", th_handler_count, &n);
    th_register(only_b, "{\"namespace\":\"ns_a\",\"name\":\"t\",\"steps\":["
                        "{\"name\":\"s\",\"handler\":\"shared\"}]}");
    th_register(only_b, "{\"namespace\":\"ns_b\",\"name\":\"t\",\"steps\":["
                        "{\"name\":\"s\",\"handler\":\"shared\"}]}");
    char ua[TASKER_UUID_BUFSIZE], ub[TASKER_UUID_BUFSIZE];
    th_create(ua, only_b, "ns_a", "t", NULL);
    th_create(ub, only_b, "ns_b", "t", NULL);
    th_ok(tasker_coordinator_start(only_b, 2));
    assert_int_equal(th_wait_final(only_b, ub), TASKER_TASK_COMPLETE);
    th_sleep_ms(500);
    assert_int_equal(th_task_state(only_b, ua), TASKER_TASK_PENDING);
    assert_int_equal(th_counter_get(&n), 1);
    th_ok(tasker_coordinator_close(only_b));

    tasker_coordinator *any = pgt_open(url);
    th_handler(any, "shared", th_handler_count, &n);
    th_ok(tasker_coordinator_start(any, 1));
    assert_int_equal(th_wait_final(any, ua), TASKER_TASK_COMPLETE);
    assert_int_equal(th_counter_get(&n), 2);
    th_ok(tasker_coordinator_close(any));
}

static int setup(void **state)
{
    (void)state;
    if (getenv("TASKER_TEST_DATABASE_URL") && *getenv("TASKER_TEST_DATABASE_URL"))
        url = pgt_fresh_db("leases", 1);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_workers_race),
        cmocka_unit_test(test_lease_expires_while_worker_runs),
        cmocka_unit_test(test_expired_lease_refused_before_reclaim),
        cmocka_unit_test(test_heartbeat_keeps_a_long_step),
        cmocka_unit_test(test_poll_mode_descriptor),
        cmocka_unit_test(test_claim_held_at_close),
        cmocka_unit_test(test_stop_releases_after_the_drain),
        cmocka_unit_test(test_claims_prefer_tasks_under_way),
        cmocka_unit_test(test_stop_drains_and_restarts),
        cmocka_unit_test(test_connections_lost_mid_run),
        cmocka_unit_test(test_batches_look_up_each_key),
        cmocka_unit_test(test_namespaces_key_limits_claims),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, setup, NULL);
}
