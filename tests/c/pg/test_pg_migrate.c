/*
 * Schema and connections: migrations from an empty database and applied
 * again (no change), the `tasker migrate` command twice, a database
 * without the schema, a malformed URL, and a server that is down -- the
 * errors say what is wrong and never show the password.
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate.h"

#define SECRET "Sup3r-s3cret_pw"

/* Everything that describes the schema: a change would show here. */
static char *schema_fingerprint(void)
{
    return pgt_str("SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ("
                   " SELECT 'r:' || c.relname || ':' || c.relkind::text AS x FROM pg_class c"
                   "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tasker'"
                   " UNION ALL SELECT 'f:' || p.proname || ':' || md5(p.prosrc) FROM pg_proc p"
                   "  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tasker'"
                   " UNION ALL SELECT 'v:' || version || ':' || name FROM tasker.schema_version"
                   ") s");
}

static void test_migrate_from_empty_and_again(void **state)
{
    (void)state;
    const char *url = pgt_fresh_db("migrate", 0);
    PGconn *c = pgt_conn();
    char err[1024];
    assert_int_equal(tk_schema_version(c, err, sizeof err), 0);

    int applied = -1, version = -1;
    if (tk_migrate(c, &applied, &version, err, sizeof err, NULL, NULL) != 0)
        fail_msg("first migration failed: %s", err);
    assert_int_equal(applied, (int)tk_n_migrations);
    assert_int_equal(version, tk_migrations[tk_n_migrations - 1].version);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.schema_version"), (long long)tk_n_migrations);
    for (size_t i = 0; i < tk_n_migrations; i++)
        assert_int_equal(tk_migrations[i].version, (int)i + 1);
    char *before = schema_fingerprint();

    if (tk_migrate(c, &applied, &version, err, sizeof err, NULL, NULL) != 0)
        fail_msg("second migration failed: %s", err);
    assert_int_equal(applied, 0);
    char *after = schema_fingerprint();
    assert_string_equal(before, after);

    /* Each file is idempotent on its own too (psql -f twice). */
    for (size_t i = 0; i < tk_n_migrations; i++) {
        PGresult *r = PQexec(c, tk_migrations[i].sql);
        assert_true(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
        PQclear(r);
    }
    char *again = schema_fingerprint();
    assert_string_equal(before, again);
    free(before);
    free(after);
    free(again);

    /* The schema works: a coordinator opens on it. */
    tasker_coordinator *coord = pgt_open(url);
    th_ok(tasker_coordinator_close(coord));
}

static void test_cli_migrate_twice(void **state)
{
    (void)state;
    const char *url = pgt_fresh_db("climig", 0);
    char out[8192], err[8192];
    const char *a1[] = {"migrate", "--database-url", url, NULL};
    int rc = pgt_cli(out, sizeof out, err, sizeof err, a1);
    if (rc != 0)
        fail_msg("tasker migrate exited %d: %s", rc, err);
    assert_non_null(strstr(out, "applying 0001_schema"));
    assert_int_equal(pgt_num("SELECT max(version) FROM tasker.schema_version"),
                     tk_migrations[tk_n_migrations - 1].version);
    char *before = schema_fingerprint();
    rc = pgt_cli(out, sizeof out, err, sizeof err, a1);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "nothing to do"));
    assert_null(strstr(out, "applying"));
    char *after = schema_fingerprint();
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* --help everywhere, exit 0. */
    const char *cmds[][4] = {{"--help", NULL},           {"migrate", "--help", NULL},
                             {"task", "--help", NULL},   {"task", "create", "--help", NULL},
                             {"status", "--help", NULL}, {"dlq", "--help", NULL},
                             {"graph", "--help", NULL},  {"prune", "--help", NULL}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        rc = pgt_cli(out, sizeof out, err, sizeof err, cmds[i]);
        if (rc != 0 || !strstr(out, "usage:"))
            fail_msg("tasker %s %s: exit %d, stdout '%s'", cmds[i][0], cmds[i][1] ? cmds[i][1] : "",
                     rc, out);
    }
    /* Usage errors exit 2 and say what was wrong. */
    const char *bad[] = {"task", "get", "not-a-uuid", "--database-url", url, NULL};
    rc = pgt_cli(out, sizeof out, err, sizeof err, bad);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "not-a-uuid"));
    const char *nodb[] = {"status", NULL};
    rc = pgt_cli(out, sizeof out, err, sizeof err, nodb);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "TASKER_DATABASE_URL"));
}

static void test_open_without_schema(void **state)
{
    (void)state;
    const char *url = pgt_fresh_db("noschema", 0);
    tasker_config *cfg;
    th_ok(tasker_config_new(&cfg));
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    th_ok(tasker_config_set(cfg, "database.url", url));
    tasker_coordinator *coord = NULL;
    int rc = tasker_coordinator_open(&coord, cfg);
    tasker_config_free(cfg);
    assert_int_equal(rc, TASKER_EDATABASE);
    assert_null(coord);
    assert_non_null(strstr(tasker_error_last()->message, "tasker migrate"));
}

/* A TCP port on 127.0.0.1 with nothing listening. */
static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    close(s);
    return port;
}

static void expect_open_error(const char *url, int code, const char *must_contain)
{
    tasker_config *cfg;
    th_ok(tasker_config_new(&cfg));
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    th_ok(tasker_config_set(cfg, "database.url", url));
    tasker_coordinator *coord = NULL;
    int rc = tasker_coordinator_open(&coord, cfg);
    tasker_config_free(cfg);
    const tasker_error *e = tasker_error_last();
    if (rc != code)
        fail_msg("open(%s) = %d (%s), expected %d", must_contain, rc, e->message, code);
    assert_null(coord);
    if (strstr(e->message, SECRET) || strstr(e->context_json, SECRET))
        fail_msg("the error shows the password: %s %s", e->message, e->context_json);
    if (must_contain && !strstr(e->message, must_contain))
        fail_msg("the error does not name '%s': %s", must_contain, e->message);
}

static void test_bad_url_and_database_down(void **state)
{
    (void)state;
    pgt_require();
    int port = free_port();
    char url[512];
    /* Down: nothing listens on the port. */
    snprintf(url, sizeof url, "postgresql://tasker:%s@127.0.0.1:%d/tasker", SECRET, port);
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    expect_open_error(url, TASKER_EDATABASE, where);
    snprintf(url, sizeof url, "host=127.0.0.1 port=%d user=tasker password=%s dbname=tasker", port,
             SECRET);
    expect_open_error(url, TASKER_EDATABASE, where);
    /* Malformed. */
    snprintf(url, sizeof url, "postgresql://tasker:%s@127.0.0.1:%d/tasker?no_such_option=1",
             SECRET, port);
    expect_open_error(url, TASKER_ECONFIG, "database.url");
    snprintf(url, sizeof url, "host=127.0.0.1 password=%s 'unterminated", SECRET);
    expect_open_error(url, TASKER_ECONFIG, "database.url");
    /* A real server, a database that does not exist. */
    char *base = pgt_url_with_db(getenv("TASKER_TEST_DATABASE_URL"), "tasker_no_such_db");
    size_t n = strlen(base) + 64;
    char *withpw = malloc(n);
    snprintf(withpw, n, "%s password=%s", base, SECRET);
    expect_open_error(withpw, TASKER_EDATABASE, "tasker_no_such_db");
    free(base);
    free(withpw);

    /* The CLI: same rules, exit codes 2 (bad URL) and 1 (cannot connect). */
    char out[4096], err[4096];
    snprintf(url, sizeof url, "postgresql://tasker:%s@127.0.0.1:%d/tasker", SECRET, port);
    const char *a1[] = {"status", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, a1), 1);
    assert_null(strstr(err, SECRET));
    assert_non_null(strstr(err, where));
    snprintf(url, sizeof url, "postgresql://tasker:%s@127.0.0.1:%d/tasker?bogus=1", SECRET, port);
    const char *a2[] = {"migrate", "--database-url", url, NULL};
    assert_int_equal(pgt_cli(out, sizeof out, err, sizeof err, a2), 2);
    assert_null(strstr(err, SECRET));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_from_empty_and_again),
        cmocka_unit_test(test_cli_migrate_twice),
        cmocka_unit_test(test_open_without_schema),
        cmocka_unit_test(test_bad_url_and_database_down),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
