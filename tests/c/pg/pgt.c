#define _GNU_SOURCE
#include "pgt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate.h"
#include "store/postgres.h"

#define MAX_DBS 8

static char *dbs[MAX_DBS];
static int n_dbs;
static char *last_url;
static PGconn *last_conn;
static int registered;

void pgt_require(void)
{
    const char *u = getenv("TASKER_TEST_DATABASE_URL");
    if (!u || !*u) {
        print_message("[  SKIP    ] TASKER_TEST_DATABASE_URL is not set\n");
        skip();
    }
}

/* Quotes a conninfo value: 'v' with \ and ' escaped. */
static void quote_into(char *out, size_t cap, const char *v)
{
    size_t o = 0;
    if (o < cap - 1)
        out[o++] = '\'';
    for (; *v && o < cap - 3; v++) {
        if (*v == '\'' || *v == '\\')
            out[o++] = '\\';
        out[o++] = *v;
    }
    out[o++] = '\'';
    out[o] = '\0';
}

char *pgt_url_with_db(const char *url, const char *dbname)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    if (!opts) {
        print_error("TASKER_TEST_DATABASE_URL does not parse: %s\n", err ? err : "?");
        if (err)
            PQfreemem(err);
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *out = calloc(1, cap);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (!strcmp(o->keyword, "dbname"))
            v = dbname;
        if (!v || !*v)
            continue;
        char q[1024];
        quote_into(q, sizeof q, v);
        len += (size_t)snprintf(out + len, cap - len, "%s%s=%s", len ? " " : "", o->keyword, q);
    }
    PQconninfoFree(opts);
    return out;
}

static PGconn *connect_or_fail(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        print_error("cannot connect to the test database: %s\n", PQerrorMessage(c));
        PQfinish(c);
        fail();
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return c;
}

void pgt_finish(void)
{
    if (last_conn) {
        PQfinish(last_conn);
        last_conn = NULL;
    }
    const char *base = getenv("TASKER_TEST_DATABASE_URL");
    if (!base || !n_dbs)
        return;
    PGconn *c = PQconnectdb(base);
    if (PQstatus(c) == CONNECTION_OK) {
        PQclear(PQexec(c, "SET client_min_messages = warning"));
        for (int i = 0; i < n_dbs; i++) {
            const char *vals[] = {dbs[i]};
            /* The name is ours (letters, digits, '_'); the identifier is
             * quoted by the server with quote_ident. */
            PGresult *r = PQexecParams(c, "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident($1) || ' WITH (FORCE)'",
                                       1, NULL, vals, NULL, NULL, 0);
            if (PQresultStatus(r) == PGRES_TUPLES_OK)
                PQclear(PQexec(c, PQgetvalue(r, 0, 0)));
            PQclear(r);
            free(dbs[i]);
        }
    }
    PQfinish(c);
    n_dbs = 0;
    free(last_url);
    last_url = NULL;
}

const char *pgt_fresh_db(const char *tag, int migrate)
{
    pgt_require();
    if (!registered) {
        atexit(pgt_finish);
        registered = 1;
    }
    const char *base = getenv("TASKER_TEST_DATABASE_URL");
    char name[96];
    snprintf(name, sizeof name, "tasker_t_%s_%d_%d", tag, (int)getpid(), n_dbs);
    PGconn *c = connect_or_fail(base);
    const char *vals[] = {name};
    PGresult *r = PQexecParams(c, "SELECT 'CREATE DATABASE ' || quote_ident($1)", 1, NULL, vals,
                               NULL, NULL, 0);
    PGresult *r2 = PQexec(c, PQgetvalue(r, 0, 0));
    if (PQresultStatus(r2) != PGRES_COMMAND_OK) {
        print_error("CREATE DATABASE %s failed: %s\n", name, PQresultErrorMessage(r2));
        PQclear(r);
        PQclear(r2);
        PQfinish(c);
        fail();
    }
    PQclear(r);
    PQclear(r2);
    PQfinish(c);
    if (n_dbs < MAX_DBS)
        dbs[n_dbs++] = strdup(name);
    free(last_url);
    last_url = pgt_url_with_db(base, name);
    assert_non_null(last_url);
    if (last_conn)
        PQfinish(last_conn);
    last_conn = connect_or_fail(last_url);
    if (migrate) {
        int applied = 0, version = 0;
        char err[1024];
        if (tk_migrate(last_conn, &applied, &version, err, sizeof err, NULL, NULL) != 0) {
            print_error("migrating %s failed: %s\n", name, err);
            fail();
        }
    }
    return last_url;
}

PGconn *pgt_conn(void)
{
    assert_non_null(last_conn);
    return last_conn;
}

static PGresult *run(const char *file, int line, const char *const *sp)
{
    /* The server may have been restarted since (test_pg_restart). */
    if (PQstatus(pgt_conn()) != CONNECTION_OK)
        PQreset(pgt_conn());
    const char *sql = sp[0];
    int n = 0;
    while (sp[n + 1])
        n++;
    PGresult *r = PQexecParams(pgt_conn(), sql, n, NULL, sp + 1, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && PQstatus(pgt_conn()) != CONNECTION_OK) {
        /* The connection died with a server restart: once more on a new one. */
        PQclear(r);
        PQreset(pgt_conn());
        r = PQexecParams(pgt_conn(), sql, n, NULL, sp + 1, NULL, NULL, 0);
        st = PQresultStatus(r);
    }
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        print_error("%s:%d: SQL failed: %s\n  %s\n", file, line, PQresultErrorMessage(r), sql);
        PQclear(r);
        _fail(file, line);
    }
    return r;
}

long long _pgt_num(const char *file, int line, const char *const *sp)
{
    PGresult *r = run(file, line, sp);
    long long v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return v;
}

char *_pgt_str(const char *file, int line, const char *const *sp)
{
    PGresult *r = run(file, line, sp);
    char *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

void _pgt_exec(const char *file, int line, const char *const *sp)
{
    PQclear(run(file, line, sp));
}

tasker_coordinator *pgt_open_at(const char *file, int line, const char *url)
{
    tasker_coordinator *c = _th_open(file, line, "store", "postgres", "database.url", url, NULL);
    const char *a = getenv("PGT_ASYNC");
    if (a && *a == '1') {
        tk_pg_tuning t = {0, 0, 0, 0, 1};
        th_ok(tk_pg_tune(c, &t));
    }
    return c;
}

tasker_coordinator *pgt_open_tuned(const char *url, int lease_ms, int poll_ms)
{
    tasker_coordinator *c = pgt_open(url);
    tk_pg_tuning t = {lease_ms, poll_ms, 0, 0, -1};
    th_ok(tk_pg_tune(c, &t));
    return c;
}

int pgt_cli(char *out, size_t outn, char *errb, size_t errn, const char *const *args)
{
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        const char *argv[16] = {TASKER_CLI_PATH};
        int n = 1;
        for (; args[n - 1] && n < 15; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        unsetenv("TASKER_DATABASE_URL");
        execv(TASKER_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t o = 0, e = 0;
    ssize_t k;
    while ((k = read(po[0], out + o, outn - 1 - o)) > 0)
        o += (size_t)k;
    while ((k = read(pe[0], errb + e, errn - 1 - e)) > 0)
        e += (size_t)k;
    out[o] = errb[e] = '\0';
    close(po[0]);
    close(pe[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}


/* ---- stopping and starting the server --------------------------------------- */

int pgt_server_control(void)
{
    const char *ctl = getenv("TASKER_TEST_PGCTL"), *data = getenv("TASKER_TEST_PGDATA");
    return ctl && *ctl && data && *data;
}

/* Runs `pg_ctl -D DATA -w ARGS...` (as TASKER_TEST_PGUSER through runuser
 * when set) and returns its exit status. */
static int pg_ctl(const char *a1, const char *a2, const char *a3, const char *a4)
{
    const char *ctl = getenv("TASKER_TEST_PGCTL"), *data = getenv("TASKER_TEST_PGDATA");
    const char *user = getenv("TASKER_TEST_PGUSER");
    const char *argv[16];
    int n = 0;
    if (user && *user) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = user;
        argv[n++] = "--";
    }
    argv[n++] = ctl;
    argv[n++] = "-D";
    argv[n++] = data;
    argv[n++] = "-w";
    argv[n++] = "-t";
    argv[n++] = "60";
    const char *more[] = {a1, a2, a3, a4};
    for (int i = 0; i < 4 && more[i]; i++)
        argv[n++] = more[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int pgt_server_stop(void)
{
    return pg_ctl("-m", "fast", "stop", NULL);
}

int pgt_server_start(void)
{
    const char *log = getenv("TASKER_TEST_PGLOG");
    return log && *log ? pg_ctl("-l", log, "start", NULL) : pg_ctl("start", NULL, NULL, NULL);
}
