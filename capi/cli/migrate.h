/*
 * Applies sql/NNNN_*.sql to a database (`tasker migrate`, and the tests).
 * The migrations are embedded at build time (embed_sql.cmake), so the
 * command needs no files at run time.  Uses libpq only.
 */
#ifndef TASKER_CLI_MIGRATE_H
#define TASKER_CLI_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct tk_migration {
    int version;
    const char *name;
    const char *sql; /* the whole file: BEGIN; ...; COMMIT; */
} tk_migration;

extern const tk_migration tk_migrations[];
extern const size_t tk_n_migrations;

/*
 * Applies every embedded migration the database has not recorded in
 * tasker.schema_version, in order, each in its own transaction, holding an
 * advisory lock so that concurrent migrators queue up.  Writes how many were
 * applied and the resulting version.  Returns 0, or -1 with a one-line
 * message in `err` (the server's message; it never contains the password
 * unless the server echoed it, so callers scrub it anyway).
 * `progress`, if not NULL, is called before each migration is applied.
 */
int tk_migrate(PGconn *conn, int *applied, int *version, char *err, size_t errlen,
               void (*progress)(const tk_migration *m, void *ud), void *ud);

/* The version recorded in the database (0: no tasker schema), or -1 with
 * `err` set. */
int tk_schema_version(PGconn *conn, char *err, size_t errlen);

#endif
