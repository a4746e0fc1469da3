/*
 * pgt.h - helpers for the postgres-store tests.
 *
 * Every test program works in a database of its own, created from
 * TASKER_TEST_DATABASE_URL (which must allow CREATE DATABASE) and dropped
 * when the program ends, so tests never touch an existing database and can
 * run in any order.  Without TASKER_TEST_DATABASE_URL every test is skipped.
 * PGT_FILTER=pattern runs only the matching tests of a program.
 */
#ifndef TASKER_TEST_PGT_H
#define TASKER_TEST_PGT_H

#include <libpq-fe.h>

#include "th.h"

/* Skips the calling test unless TASKER_TEST_DATABASE_URL is set. */
void pgt_require(void);

/*
 * Creates a fresh database named after `tag` and the process, applies the
 * migrations unless `migrate` is 0, and returns its connection string
 * (static storage, valid until pgt_finish).  Calls pgt_require().
 */
const char *pgt_fresh_db(const char *tag, int migrate);

/* Drops every database pgt_fresh_db created (registered with atexit too). */
void pgt_finish(void);

/* A connection to the last fresh database, for checks in SQL. */
PGconn *pgt_conn(void);

/* pgt_num(SQL, PARAM...): runs SQL with text parameters and returns the
 * first column of the first row as a number (0 if NULL or no row); fails
 * the test on an error. */
#define pgt_num(...) _pgt_num(__FILE__, __LINE__, (const char *[]){__VA_ARGS__, NULL})
long long _pgt_num(const char *file, int line, const char *const *sql_and_params);
/* Same, the first column as a string the caller frees (NULL if none). */
#define pgt_str(...) _pgt_str(__FILE__, __LINE__, (const char *[]){__VA_ARGS__, NULL})
char *_pgt_str(const char *file, int line, const char *const *sql_and_params);
/* Runs SQL whose result is not needed; fails the test on an error. */
#define pgt_exec(...) _pgt_exec(__FILE__, __LINE__, (const char *[]){__VA_ARGS__, NULL})
void _pgt_exec(const char *file, int line, const char *const *sql_and_params);

/* Opens a coordinator on the postgres store at `url`.  PGT_ASYNC=1 in the
 * environment switches it to asynchronous completions (a manual check:
 * tests that expect exact return codes from late completions then fail). */
#define pgt_open(url) pgt_open_at(__FILE__, __LINE__, (url))
tasker_coordinator *pgt_open_at(const char *file, int line, const char *url);

/* Opens with short leases and poll interval for tests that wait for them. */
tasker_coordinator *pgt_open_tuned(const char *url, int lease_ms, int poll_ms);

/* Runs the `tasker` command (TASKER_CLI_PATH) with `args` (NULL-ended,
 * without argv[0]) and TASKER_DATABASE_URL unset; captures stdout and
 * stderr; returns the exit status (-1 if it did not exit). */
int pgt_cli(char *out, size_t outn, char *err, size_t errn, const char *const *args);

/* `url` with dbname replaced (malloc'ed). */
char *pgt_url_with_db(const char *url, const char *dbname);

/* Stopping and starting the test server (scripts/test.d/40-postgres.sh
 * exports TASKER_TEST_PGCTL, TASKER_TEST_PGDATA, TASKER_TEST_PGLOG and,
 * when the server runs as another user, TASKER_TEST_PGUSER).
 * pgt_server_control() is 0 when they are not set.  Stop is
 * `pg_ctl -m fast stop`; both wait and return pg_ctl's exit status.  The
 * connection of pgt_conn() reconnects by itself afterwards. */
int pgt_server_control(void);
int pgt_server_stop(void);
int pgt_server_start(void);

#endif
