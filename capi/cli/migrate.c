/* The migration runner (see migrate.h). */
#include "migrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Same key as the migrations' own pg_advisory_xact_lock (re-entrant within
 * a session, so holding it here does not block them). */
#define MIGRATE_LOCK "7366231101"

static void set_err(char *err, size_t errlen, const char *what, const char *msg)
{
    snprintf(err, errlen, "%s: %s", what, msg && *msg ? msg : "unknown error");
    /* One line: libpq messages end with a newline and may span several. */
    for (char *p = err; *p; p++)
        if (*p == '\n')
            *p = (p[1] ? ' ' : '\0');
}

int tk_schema_version(PGconn *conn, char *err, size_t errlen)
{
    PGresult *r = PQexec(conn, "SELECT CASE WHEN to_regclass('tasker.schema_version') IS NULL "
                               "THEN NULL ELSE 1 END");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "reading the schema version", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    int exists = !PQgetisnull(r, 0, 0);
    PQclear(r);
    if (!exists)
        return 0;
    r = PQexec(conn, "SELECT coalesce(max(version), 0) FROM tasker.schema_version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "reading the schema version", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    int v = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Whether migration `version` is recorded. */
static int applied_already(PGconn *conn, int version, char *err, size_t errlen)
{
    PGresult *r = PQexec(conn, "SELECT to_regclass('tasker.schema_version') IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "reading tasker.schema_version", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    int exists = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!exists)
        return 0;
    char v[16];
    snprintf(v, sizeof v, "%d", version);
    const char *vals[] = {v};
    r = PQexecParams(conn, "SELECT 1 FROM tasker.schema_version WHERE version = $1::int", 1, NULL,
                     vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "reading tasker.schema_version", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    int n = PQntuples(r);
    PQclear(r);
    return n > 0;
}

int tk_migrate(PGconn *conn, int *applied, int *version, char *err, size_t errlen,
               void (*progress)(const tk_migration *m, void *ud), void *ud)
{
    *applied = 0;
    *version = 0;
    err[0] = '\0';
    PGresult *r = PQexec(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK ")");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "taking the migration lock", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    int rc = 0;
    for (size_t i = 0; i < tk_n_migrations && rc == 0; i++) {
        const tk_migration *m = &tk_migrations[i];
        int done = applied_already(conn, m->version, err, errlen);
        if (done < 0) {
            rc = -1;
            break;
        }
        if (done)
            continue;
        if (progress)
            progress(m, ud);
        /* A file is several statements including its own BEGIN/COMMIT,
         * so it goes through the simple query protocol; it holds no user
         * data. */
        r = PQexec(conn, m->sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
            char what[128];
            snprintf(what, sizeof what, "migration %04d_%s", m->version, m->name);
            set_err(err, errlen, what, PQresultErrorMessage(r));
            rc = -1;
        } else {
            (*applied)++;
        }
        PQclear(r);
        if (rc)
            PQclear(PQexec(conn, "ROLLBACK"));
    }
    if (rc == 0) {
        int v = tk_schema_version(conn, err, errlen);
        if (v < 0)
            rc = -1;
        else
            *version = v;
    }
    PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK ")"));
    return rc;
}
