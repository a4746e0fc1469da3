/*
 * Notifications on the postgres store (sql/0006_notify.sql).  The store's
 * durable transactions no longer notify: a transaction that has called
 * pg_notify holds a database-wide lock until its commit is on disk, so
 * notifying transactions could not share a disk flush.  The library sends
 * the notifications after the commit instead.  Checked here from a plain
 * libpq connection that LISTENs, as a worker in another process would:
 * every announcement still arrives (new task, steps made ready, a delayed
 * retry's due time, a finished task), and the SQL functions behave as
 * before for sessions that do not ask for quiet (psql, older libraries).
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *url;

/* ---- a listening connection ---------------------------------------------- */

typedef struct heard {
    int ready;      /* tasker_ready '' */
    long long due;  /* tasker_ready '<ms>': the largest seen */
    char done[8][TASKER_UUID_BUFSIZE];
    int n_done;
} heard;

static PGconn *listener(void)
{
    PGconn *c = PQconnectdb(url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, "LISTEN tasker_ready; LISTEN tasker_done");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    return c;
}

/* Collects notifications for up to `ms` (less once `until_done` uuids of
 * finished tasks have arrived, if > 0). */
static void collect(PGconn *c, heard *h, int ms, int until_done)
{
    double end = th_now_ms() + ms;
    for (;;) {
        PQconsumeInput(c);
        PGnotify *nt;
        while ((nt = PQnotifies(c)) != NULL) {
            if (!strcmp(nt->relname, "tasker_ready")) {
                if (nt->extra && nt->extra[0]) {
                    long long d = strtoll(nt->extra, NULL, 10);
                    if (d > h->due)
                        h->due = d;
                } else {
                    h->ready++;
                }
            } else if (!strcmp(nt->relname, "tasker_done") && h->n_done < 8) {
                snprintf(h->done[h->n_done++], TASKER_UUID_BUFSIZE, "%s",
                         nt->extra ? nt->extra : "");
            }
            PQfreemem(nt);
        }
        double left = end - th_now_ms();
        if (left <= 0 || (until_done > 0 && h->n_done >= until_done))
            return;
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        poll(&p, 1, (int)(left < 50 ? left : 50) + 1);
    }
}

static int ok_handler(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, "{\"ok\": true}", 0);
}

/* Fails its first attempt with retry_after 400 ms. */
static int later_handler(tasker_step *step, void *ud)
{
    (void)ud;
    if (tasker_step_attempt(step) == 1) {
        tasker_failure f = TASKER_FAILURE_INIT;
        f.error_class = "NotYet";
        f.message = "again later";
        f.retryable = 1;
        f.retry_after_ms = 400;
        return tasker_step_fail(step, &f);
    }
    return tasker_step_succeed(step, NULL, 0);
}

/* A worker in another process hears about new tasks, steps made ready and
 * finished tasks, although the transactions that made them did not notify. */
static void test_a_listener_hears_everything(void **state)
{
    (void)state;
    pgt_require();
    PGconn *l = listener();
    tasker_coordinator *coord = pgt_open(url);
    th_handler(coord, "ok", ok_handler, NULL);
    th_register(coord, "{\"namespace\":\"nt\",\"name\":\"chain\",\"steps\":["
                       "{\"name\":\"a\",\"handler\":\"ok\"},"
                       "{\"name\":\"b\",\"handler\":\"ok\",\"depends_on\":[\"a\"]}]}");
    /* Nothing runs the task yet: its creation alone is announced. */
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "nt", "chain", NULL);
    heard h = {0};
    collect(l, &h, 2000, 0);
    assert_true(h.ready >= 1);
    assert_int_equal(h.n_done, 0);

    th_ok(tasker_coordinator_start(coord, 2));
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    collect(l, &h, 5000, 1);
    assert_int_equal(h.n_done, 1);
    assert_string_equal(h.done[0], uuid);
    th_ok(tasker_coordinator_close(coord));
    PQfinish(l);
}

/* A delayed retry's due time is announced, so that idle workers elsewhere
 * arm a timer for it. */
static void test_a_delayed_retry_is_announced(void **state)
{
    (void)state;
    pgt_require();
    PGconn *l = listener();
    tasker_coordinator *coord = pgt_open(url);
    th_handler(coord, "later", later_handler, NULL);
    th_register(coord, "{\"namespace\":\"nt\",\"name\":\"later\",\"steps\":["
                       "{\"name\":\"s\",\"handler\":\"later\",\"retry\":{\"max_attempts\":3}}]}");
    th_ok(tasker_coordinator_start(coord, 1));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long before = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, coord, "nt", "later", NULL);
    assert_int_equal(th_wait_final(coord, uuid), TASKER_TASK_COMPLETE);
    heard h = {0};
    collect(l, &h, 5000, 1);
    assert_int_equal(h.n_done, 1);
    /* Due about 400 ms after the failure. */
    assert_true(h.due >= before + 300);
    assert_true(h.due <= before + 60000);
    th_ok(tasker_coordinator_close(coord));
    PQfinish(l);
}

/* At the SQL level: a quiet session's durable transactions notify nobody,
 * tasker.notify_after does; other sessions still notify inside the
 * transaction, as before. */
static void test_quiet_sessions_notify_after_the_commit(void **state)
{
    (void)state;
    pgt_require();
    PGconn *l = listener();
    tasker_coordinator *coord = pgt_open(url);
    th_handler(coord, "ok", ok_handler, NULL);
    th_register(coord, "{\"namespace\":\"nt\",\"name\":\"one\",\"steps\":["
                       "{\"name\":\"a\",\"handler\":\"ok\"}]}");
    th_ok(tasker_coordinator_close(coord));

    PGconn *q = PQconnectdb(url);
    assert_int_equal(PQstatus(q), CONNECTION_OK);
    PGresult *r = PQexec(q, "SET tasker.quiet = on");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexec(q, "SELECT status FROM tasker.create_task('nt', 'one', NULL, NULL, NULL, 0)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    heard h = {0};
    collect(l, &h, 500, 0);
    assert_int_equal(h.ready, 0);

    r = PQexec(q, "SELECT tasker.notify_after('{tasker_ready}', '{\"\"}')");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    collect(l, &h, 2000, 0);
    assert_int_equal(h.ready, 1);
    /* Its synchronous_commit = off ended with its transaction. */
    r = PQexec(q, "SHOW synchronous_commit");
    assert_string_equal(PQgetvalue(r, 0, 0), "on");
    PQclear(r);
    PQfinish(q);

    /* A session without the setting: notified by the transaction itself. */
    h.ready = 0;
    pgt_exec("SELECT tasker.create_task('nt', 'one', NULL, NULL, NULL, 0)");
    collect(l, &h, 2000, 0);
    assert_int_equal(h.ready, 1);
    PQfinish(l);
}

static int setup(void **state)
{
    (void)state;
    if (!getenv("TASKER_TEST_DATABASE_URL") || !*getenv("TASKER_TEST_DATABASE_URL"))
        return 0;
    url = pgt_fresh_db("notify", 1);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_listener_hears_everything),
        cmocka_unit_test(test_a_delayed_retry_is_announced),
        cmocka_unit_test(test_quiet_sessions_notify_after_the_commit),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, setup, NULL);
}
