/*
 * The postgres store when the database goes away (issues 4 and 5):
 *  - the server is stopped (pg_ctl -m fast) and started again while worker
 *    threads run: while it is down, health says "down", /health/ready
 *    answers 503 and tasker_store_up is 0; after it is back every task
 *    finishes and every step's success is recorded exactly once;
 *  - the database is dropped under a running coordinator: health "down".
 * The restart needs TASKER_TEST_PGCTL and TASKER_TEST_PGDATA
 * (scripts/test.d/40-postgres.sh exports them); without them it is skipped.
 */
#define _GNU_SOURCE
#include "obs_util.h"
#include "pgt.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store/postgres.h"

static const char *url;

static const char *CHAIN = "{\"namespace\":\"rs\",\"name\":\"chain\",\"steps\":["
                           "{\"name\":\"a\",\"handler\":\"work\"},"
                           "{\"name\":\"b\",\"handler\":\"work\",\"depends_on\":[\"a\"]},"
                           "{\"name\":\"c\",\"handler\":\"work\",\"depends_on\":[\"b\"]}]}";

static atomic_int refused; /* completions refused while the database was away */

/* A few milliseconds of work, so that the run lasts long enough to be
 * interrupted; the result is 1 + the dependencies' "v" (as th_handler_node).
 * A completion may be refused around the restart: TASKER_ESTALE when the
 * lease ran out meanwhile (another attempt runs the step), TASKER_EDATABASE
 * if it could not be recorded (the step runs again when its lease expires). */
static int work(tasker_step *step, void *ud)
{
    (void)ud;
    th_sleep_ms(3);
    long long v = 1;
    for (size_t i = 0; i < tasker_step_dependency_count(step); i++) {
        const char *json = NULL;
        size_t len = 0;
        if (tasker_step_dependency_result(&json, &len, step,
                                          tasker_step_dependency_name(step, i)) != TASKER_OK) {
            th_problem("%s: no dependency result", tasker_step_name(step));
            return TASKER_EINVAL;
        }
        json_t *j = json_loadb(json, len, 0, NULL);
        v += json_integer_value(json_object_get(j, "v"));
        json_decref(j);
    }
    char buf[64];
    snprintf(buf, sizeof buf, "{\"v\": %lld}", v);
    int rc = tasker_step_succeed(step, buf, 0);
    if (rc == TASKER_ESTALE || rc == TASKER_EDATABASE)
        atomic_fetch_add(&refused, 1);
    else if (rc != TASKER_OK)
        th_problem("%s: tasker_step_succeed = %d", tasker_step_name(step), rc);
    return TASKER_OK;
}

/* The status code of GET `path` on 127.0.0.1:port, -1 if no answer. */
static int http_status(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char buf[64] = {0};
    size_t got = 0;
    ssize_t k;
    while (got < sizeof buf - 1 && (k = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)k;
    close(fd);
    int code = -1;
    if (sscanf(buf, "HTTP/%*s %d", &code) != 1)
        return -1;
    return code;
}

static json_t *health(tasker_coordinator *c)
{
    return obs_health(c);
}

static void assert_down(tasker_coordinator *c, tasker_http *http)
{
    json_t *h = health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "down");
    assert_false(json_is_true(json_object_get(json_object_get(h, "store"), "reachable")));
    json_decref(h);
    prom_doc d;
    obs_metrics(c, &d);
    obs_assert_metric(prom_get(&d, "tasker_store_up", "store", "postgres", NULL), 0);
    obs_assert_metric(prom_get(&d, "tasker_store_connection_up", "connection", "probe", NULL), 0);
    prom_doc_free(&d);
    if (http) {
        assert_int_equal(http_status(tasker_http_port(http), "/health/ready"), 503);
        assert_int_equal(http_status(tasker_http_port(http), "/health/live"), 200);
    }
}

static void assert_up(tasker_coordinator *c, tasker_http *http)
{
    /* The first look after a restart may still find a dead connection;
     * the probe reconnects within the same call. */
    json_t *h = health(c);
    assert_string_equal(json_string_value(json_object_get(h, "status")), "ok");
    assert_true(json_is_true(json_object_get(json_object_get(h, "store"), "reachable")));
    json_decref(h);
    if (http)
        assert_int_equal(http_status(tasker_http_port(http), "/health/ready"), 200);
}

static void database_restart_mid_run(void **state)
{
    (void)state;
    pgt_require();
    if (!pgt_server_control()) {
        print_message("[  SKIP    ] TASKER_TEST_PGCTL / TASKER_TEST_PGDATA are not set\n");
        skip();
    }
    tasker_coordinator *c = pgt_open_tuned(url, 3000, 200);
    th_handler(c, "work", work, NULL);
    th_register(c, CHAIN);
    tasker_http *http = NULL;
    if (tasker_http_start(&http, c, NULL, 0) != TASKER_OK) {
        print_message("[   INFO   ] no HTTP endpoint (%s); checking health JSON only\n",
                      tasker_error_last()->message);
        http = NULL;
    }
    assert_up(c, http);
    enum { N = 400 };
    static char u[N][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < N; i++)
        th_create(u[i], c, "rs", "chain", NULL);
    th_ok(tasker_coordinator_start(c, 4));
    /* Stop the server once the run is well under way. */
    double until = th_now_ms() + th_wait_ms();
    long long done = 0;
    while ((done = pgt_num("SELECT count(*) FROM tasker.steps WHERE state = 4")) < N * 3 / 10 &&
           th_now_ms() < until)
        th_sleep_ms(5);
    assert_int_equal(pgt_server_stop(), 0);
    long long total = 3 * N;
    print_message("[   INFO   ] server stopped with %lld of %lld steps done\n", done, total);
    assert_true(done < total);
    assert_down(c, http);
    th_sleep_ms(1500); /* workers, flusher and listener keep trying meanwhile */
    assert_down(c, http);
    assert_int_equal(pgt_server_start(), 0);

    for (int i = 0; i < N; i++)
        assert_int_equal(th_wait_final(c, u[i]), TASKER_TASK_COMPLETE);
    assert_up(c, http);
    /* Nothing lost, nothing twice: every step succeeded exactly once, with
     * the right result at the end of each chain. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps WHERE state = 4"), total);
    assert_int_equal(pgt_num("SELECT count(*) FROM (SELECT task_id, step_idx FROM "
                             "tasker.history WHERE to_state = 4 GROUP BY 1, 2 "
                             "HAVING count(*) <> 1) x"),
                     0);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps WHERE idx = 2 AND "
                             "(result->>'v')::int <> 3"),
                     0);
    print_message("[   INFO   ] %d completion(s) refused around the restart\n",
                  atomic_load(&refused));
    prom_doc d;
    obs_metrics(c, &d);
    assert_true(prom_get(&d, "tasker_store_errors_total", NULL) > 0);
    assert_true(prom_get(&d, "tasker_store_connects_total", "outcome", "failed", NULL) > 0);
    obs_assert_metric(prom_get(&d, "tasker_store_up", "store", "postgres", NULL), 1);
    prom_doc_free(&d);
    tasker_http_stop(http);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

/* Runs last: it takes its own database away. */
static void health_when_database_dropped(void **state)
{
    (void)state;
    pgt_require();
    const char *gone_url = pgt_fresh_db("gone", 1);
    char *name = pgt_str("SELECT current_database()");
    tasker_coordinator *c = pgt_open(gone_url);
    th_handler(c, "work", work, NULL);
    th_register(c, CHAIN);
    tasker_http *http = NULL;
    if (tasker_http_start(&http, c, NULL, 0) != TASKER_OK)
        http = NULL;
    assert_up(c, http);
    PGconn *admin = PQconnectdb(getenv("TASKER_TEST_DATABASE_URL"));
    assert_int_equal(PQstatus(admin), CONNECTION_OK);
    const char *vals[] = {name};
    PGresult *r = PQexecParams(admin,
                               "SELECT 'DROP DATABASE ' || quote_ident($1) || ' WITH (FORCE)'",
                               1, NULL, vals, NULL, NULL, 0);
    PGresult *r2 = PQexec(admin, PQgetvalue(r, 0, 0));
    assert_int_equal(PQresultStatus(r2), PGRES_COMMAND_OK);
    PQclear(r);
    PQclear(r2);
    PQfinish(admin);
    assert_down(c, http);
    json_t *h = health(c);
    /* The namespaces it knows are listed with their depth unknown. */
    json_t *ns = json_object_get(json_object_get(h, "namespaces"), "rs");
    assert_non_null(ns);
    assert_true(json_is_null(json_object_get(ns, "queue_depth")));
    json_decref(h);
    tasker_http_stop(http);
    th_ok(tasker_coordinator_close(c));
    free(name);
}

static int setup(void **state)
{
    (void)state;
    if (getenv("TASKER_TEST_DATABASE_URL"))
        url = pgt_fresh_db("restart", 1);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(database_restart_mid_run),
        cmocka_unit_test(health_when_database_dropped),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
