/* Shared pieces of the `tasker` command: options, the connection, errors. */
#ifndef TASKER_CLI_H
#define TASKER_CLI_H

#include <libpq-fe.h>
#include <stddef.h>

/* Exit codes. */
#define EXIT_OK 0
#define EXIT_FAIL 1  /* the operation failed (database error, not found, wrong state) */
#define EXIT_USAGE 2 /* the command line was wrong */

typedef struct cli {
    const char *url;   /* --database-url or TASKER_DATABASE_URL */
    char *target;      /* "user@host:port/db": what messages name, never the password */
    char *password;    /* scrubbed from every message printed */
    PGconn *conn;
    int json;          /* --json output where supported */
} cli;

/* Prints "tasker: " + message (password scrubbed) to stderr and exits. */
void cli_die(cli *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
/* Prints a command's usage to stderr and exits with EXIT_USAGE. */
void cli_usage_error(const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/* Takes "--database-url URL", "--database-url=URL" or "--json" at argv[*i];
 * returns 1 if it consumed something. */
int cli_common_opt(cli *c, int argc, char **argv, int *i, const char *usage);
/* Whether argv[i] asks for help. */
int cli_is_help(const char *arg);

/* Connects (and, unless `for_migrate`, checks that the schema is there). */
void cli_connect(cli *c, int for_migrate);
void cli_disconnect(cli *c);

/* Runs a parameterized query; on failure prints the error and exits. */
PGresult *cli_query(cli *c, const char *what, const char *sql, int n, const char *const *vals);

/* Checks a UUID argument (exits with a usage error naming `usage`). */
void cli_check_uuid(const char *arg, const char *usage);
/* Splits "ns/name[@version]" into parts (static buffers); exits on error. */
void cli_template_ref(const char *arg, const char *usage, char **ns, char **name, char **version);

/* Commands. */
int cmd_task(cli *c, int argc, char **argv);
int cmd_status(cli *c, int argc, char **argv);
int cmd_dlq(cli *c, int argc, char **argv);
int cmd_graph(cli *c, int argc, char **argv);
int cmd_prune(cli *c, int argc, char **argv);
int cmd_config(cli *c, int argc, char **argv);
int cmd_serve(cli *c, int argc, char **argv);

#endif
