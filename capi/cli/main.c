/*
 * tasker - operate tasker's PostgreSQL store: apply the schema, create and
 * inspect tasks, look at queues and dead letters, prune old tasks.
 *
 * Everything goes through the SQL functions of sql/ with parameterized
 * queries; the command never builds SQL from its arguments.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/strbuf.h"
#include "migrate.h"
#include "tasker.h"

static const char *const USAGE =
    "usage: tasker [--database-url URL] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  migrate                 create or update the tasker schema (safe to repeat)\n"
    "  task create TEMPLATE    start a task (TEMPLATE is namespace/name[@version])\n"
    "  task get UUID           print a task as JSON\n"
    "  task cancel UUID        cancel a task\n"
    "  task retry UUID         run the failed steps of a task in error again\n"
    "  task readiness UUID     which steps can run now, and why the others cannot\n"
    "  status                  tasks by namespace and state, queue depth\n"
    "  dlq list|requeue|purge  dead-lettered steps\n"
    "  graph TEMPLATE          the template's steps as a Graphviz DOT graph\n"
    "  prune --older-than AGE  delete finished tasks older than AGE\n"
    "  config check            report every bad configuration key or value\n"
    "  serve                   HTTP health, metrics and status page until SIGTERM\n"
    "  version                 print the version\n"
    "\n"
    "The database URL is a libpq connection string or postgresql:// URL, from\n"
    "--database-url or the environment variable TASKER_DATABASE_URL.\n"
    "Run `tasker COMMAND --help` for a command's options.\n"
    "Exit status: 0 success, 1 the operation failed, 2 the command line was wrong.\n";

static const char *const MIGRATE_USAGE =
    "usage: tasker migrate [--database-url URL]\n"
    "\n"
    "Applies the numbered migrations of tasker's schema that the database has\n"
    "not recorded yet, each in its own transaction.  Running it again changes\n"
    "nothing.  Concurrent runs wait for each other.\n";

/* ---- errors and scrubbing -------------------------------------------------- */

static char *scrub(const cli *c, const char *msg)
{
    return tk_scrub(msg, c ? c->password : NULL);
}

void cli_die(cli *c, int code, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *clean = scrub(c, buf);
    fprintf(stderr, "tasker: %s\n", clean ? clean : buf);
    free(clean);
    if (c)
        cli_disconnect(c);
    exit(code);
}

void cli_usage_error(const char *usage, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tasker: %s\n\n%s", buf, usage);
    exit(EXIT_USAGE);
}

int cli_is_help(const char *arg)
{
    return !strcmp(arg, "--help") || !strcmp(arg, "-h") || !strcmp(arg, "help");
}

int cli_common_opt(cli *c, int argc, char **argv, int *i, const char *usage)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--database-url")) {
        if (*i + 1 >= argc)
            cli_usage_error(usage, "--database-url needs a value");
        c->url = argv[++*i];
        return 1;
    }
    if (!strncmp(a, "--database-url=", 15)) {
        c->url = a + 15;
        return 1;
    }
    if (!strcmp(a, "--json")) {
        c->json = 1;
        return 1;
    }
    return 0;
}

/* ---- connection ---------------------------------------------------------------- */

/* Fills target/password from the URL; exits with a usage error if it does
 * not parse (libpq's message is masked: it may quote the string). */
static void describe(cli *c)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(c->url, &err);
    if (!opts) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err ? err : "out of memory");
        if (err)
            PQfreemem(err);
        char *p;
        if ((p = strstr(msg, "password=")))
            for (p += 9; *p && *p != ' ' && *p != '"'; p++)
                *p = '*';
        if ((p = strstr(msg, "://"))) {
            char *colon = strchr(p + 3, ':'), *at = strchr(p + 3, '@');
            if (colon && at && colon < at)
                for (p = colon + 1; p < at; p++)
                    *p = '*';
        }
        for (p = msg; *p; p++)
            if (*p == '\n')
                *p = ' ';
        fprintf(stderr, "tasker: the database URL is not a valid PostgreSQL connection string: %s\n",
                msg);
        exit(EXIT_USAGE);
    }
    const char *user = NULL, *host = NULL, *port = NULL, *db = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (!strcmp(o->keyword, "user"))
            user = o->val;
        else if (!strcmp(o->keyword, "host") || (!host && !strcmp(o->keyword, "hostaddr")))
            host = o->val;
        else if (!strcmp(o->keyword, "port"))
            port = o->val;
        else if (!strcmp(o->keyword, "dbname"))
            db = o->val;
        else if (!strcmp(o->keyword, "password"))
            c->password = strdup(o->val);
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s%s%s%s/%s", user ? user : "", user ? "@" : "",
             host ? host : "localhost", port ? ":" : "", port ? port : "",
             db ? db : (user ? user : ""));
    c->target = scrub(c, buf);
    PQconninfoFree(opts);
}

void cli_connect(cli *c, int for_migrate)
{
    if (!c->url || !*c->url)
        c->url = getenv("TASKER_DATABASE_URL");
    if (!c->url || !*c->url) {
        fprintf(stderr, "tasker: no database given: pass --database-url URL or set "
                        "TASKER_DATABASE_URL\n");
        exit(EXIT_USAGE);
    }
    describe(c);
    const char *const keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *const vals[] = {"tasker-cli", "10", c->url, NULL};
    c->conn = PQconnectdbParams(keys, vals, 1);
    if (!c->conn || PQstatus(c->conn) != CONNECTION_OK)
        cli_die(c, EXIT_FAIL, "cannot connect to PostgreSQL at %s: %s", c->target,
                c->conn ? PQerrorMessage(c->conn) : "out of memory");
    PQclear(PQexec(c->conn, "SET client_min_messages = warning"));
    if (for_migrate)
        return;
    char err[512];
    int v = tk_schema_version(c->conn, err, sizeof err);
    if (v < 0)
        cli_die(c, EXIT_FAIL, "%s", err);
    if (v == 0)
        cli_die(c, EXIT_FAIL, "database %s has no tasker schema; run `tasker migrate` first",
                c->target);
    int need = (int)tk_migrations[tk_n_migrations - 1].version;
    if (v < need)
        cli_die(c, EXIT_FAIL,
                "database %s has tasker schema version %d, this tool needs %d; run `tasker "
                "migrate`",
                c->target, v, need);
}

void cli_disconnect(cli *c)
{
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
}

PGresult *cli_query(cli *c, const char *what, const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(c->conn, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        cli_die(c, EXIT_FAIL, "%s failed on %s: %s", what, c->target, msg);
    }
    return r;
}

void cli_check_uuid(const char *arg, const char *usage)
{
    int ok = strlen(arg) == 36;
    for (int i = 0; ok && i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ok = arg[i] == '-';
        else
            ok = isxdigit((unsigned char)arg[i]) != 0;
    }
    if (!ok)
        cli_usage_error(usage, "'%s' is not a task UUID (expected 8-4-4-4-12 hex digits)", arg);
}

void cli_template_ref(const char *arg, const char *usage, char **ns, char **name, char **version)
{
    static char buf[1024];
    if (strlen(arg) >= sizeof buf)
        cli_usage_error(usage, "template reference is too long");
    strcpy(buf, arg);
    char *slash = strchr(buf, '/');
    if (!slash || slash == buf || !slash[1])
        cli_usage_error(usage, "'%s' is not a template reference: expected namespace/name or "
                               "namespace/name@version",
                        arg);
    *slash = '\0';
    *ns = buf;
    *name = slash + 1;
    char *at = strchr(*name, '@');
    *version = NULL;
    if (at) {
        *at = '\0';
        *version = at + 1;
        if (!**version || !**name)
            cli_usage_error(usage, "'%s' is not a template reference: empty name or version",
                            arg);
    }
}

/* ---- migrate ------------------------------------------------------------------------ */

static void migrate_progress(const tk_migration *m, void *ud)
{
    (void)ud;
    printf("applying %04d_%s\n", m->version, m->name);
    fflush(stdout);
}

static int cmd_migrate(cli *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(MIGRATE_USAGE, stdout);
            return EXIT_OK;
        }
        if (!cli_common_opt(c, argc, argv, &i, MIGRATE_USAGE))
            cli_usage_error(MIGRATE_USAGE, "migrate: unexpected argument '%s'", argv[i]);
    }
    cli_connect(c, 1);
    int applied = 0, version = 0;
    char err[2048];
    if (tk_migrate(c->conn, &applied, &version, err, sizeof err, migrate_progress, NULL) != 0)
        cli_die(c, EXIT_FAIL, "migrating %s failed: %s", c->target, err);
    if (applied)
        printf("schema of %s is at version %d (%d migration%s applied)\n", c->target, version,
               applied, applied == 1 ? "" : "s");
    else
        printf("schema of %s is up to date (version %d); nothing to do\n", c->target, version);
    return EXIT_OK;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    cli c = {0};
    int i = 1;
    /* Global options before the command. */
    for (; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(USAGE, stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("tasker %s\n", tasker_version());
            return EXIT_OK;
        }
        if (argv[i][0] != '-')
            break;
        if (!cli_common_opt(&c, argc, argv, &i, USAGE))
            cli_usage_error(USAGE, "unknown option '%s'", argv[i]);
    }
    if (i >= argc)
        cli_usage_error(USAGE, "no command given");
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    int rc;
    if (!strcmp(cmd, "migrate"))
        rc = cmd_migrate(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "task"))
        rc = cmd_task(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "status"))
        rc = cmd_status(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "dlq"))
        rc = cmd_dlq(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "graph"))
        rc = cmd_graph(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "prune"))
        rc = cmd_prune(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "config"))
        rc = cmd_config(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "serve"))
        rc = cmd_serve(&c, sub_argc, sub_argv);
    else if (!strcmp(cmd, "version")) {
        printf("tasker %s\n", tasker_version());
        rc = EXIT_OK;
    } else
        cli_usage_error(USAGE, "unknown command '%s'", cmd);
    cli_disconnect(&c);
    free(c.target);
    free(c.password);
    return rc;
}
