/* Postgres store: connections, prepared statements, error reporting that
 * never shows a password, and text-array literals. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "store/pg_internal.h"

/* Every statement calls one function of sql/000N_*.sql with text
 * parameters; casts make the types explicit so a prepared plan never
 * depends on guessing. */
static const struct {
    const char *name;
    const char *sql;
} stmts[TK_PS_COUNT] = {
    [TK_PS_CLAIM] = {"tk_claim", "SELECT * FROM tasker.claim_ns($1::int, $2::text[], $3::int, "
                                 "$4::int, $5::text[], $6::text)"},
    [TK_PS_COMPLETE] = {"tk_complete",
                        "SELECT * FROM tasker.complete_steps_ev($1::int, $2::bigint[], $3::int[], "
                        "$4::int[], $5::boolean[], $6::text[], $7::text[], $8::text[], "
                        "$9::boolean[], $10::bigint[], $11::text[], $12::boolean[])"},
    [TK_PS_COMPLETE_CLAIM] = {"tk_complete_claim",
                              "SELECT * FROM tasker.complete_and_claim_ns($1::int, $2::bigint[], "
                              "$3::int[], $4::int[], $5::boolean[], $6::text[], $7::text[], "
                              "$8::text[], $9::boolean[], $10::bigint[], $11::text[], "
                              "$12::boolean[], $13::text[], $14::int, $15::int, $16::text[])"},
    [TK_PS_HEARTBEAT] = {"tk_heartbeat", "SELECT * FROM tasker.heartbeat($1::int, $2::bigint[], "
                                         "$3::int[], $4::int[], $5::int)"},
    [TK_PS_RELEASE] = {"tk_release", "SELECT tasker.release_steps($1::int, $2::bigint[], "
                                     "$3::int[], $4::int[], $5::boolean[])"},
    [TK_PS_NEXT_DUE] = {"tk_next_due",
                        "SELECT (extract(epoch FROM tasker.next_due($1::text[])) * 1000)::bigint"},
    [TK_PS_CREATE] = {"tk_create", "SELECT * FROM tasker.create_task($1::text, $2::text, "
                                   "$3::text, $4::text, $5::text, $6::int)"},
    /* tasks_current: a task whose steps are claimed on their queue rows
     * alone is running (sql/0008_lean_claim.sql). */
    [TK_PS_TASK_STATE] = {"tk_task_state",
                          "SELECT state FROM tasker.tasks_current WHERE uuid = $1::uuid"},
    [TK_PS_TASK_JSON] = {"tk_task_json", "SELECT tasker.task_json($1::uuid)"},
    [TK_PS_CANCEL] = {"tk_cancel", "SELECT * FROM tasker.cancel_task_ev($1::uuid)"},
    [TK_PS_RETRY] = {"tk_retry", "SELECT * FROM tasker.retry_task($1::uuid)"},
    [TK_PS_RESOLVE] = {"tk_resolve",
                       "SELECT * FROM tasker.resolve_step($1::uuid, $2::text, $3::text)"},
    [TK_PS_FORGET] = {"tk_forget", "SELECT * FROM tasker.forget_task($1::uuid)"},
    [TK_PS_NOTIFY] = {"tk_notify", "SELECT tasker.notify_after($1::text[], $2::text[])"},
    /* Every namespace with its ready rows, the oldest one's age and the
     * rows waiting for a retry (health and metrics). */
    [TK_PS_PROBE] = {"tk_probe",
                     "SELECT n.name, coalesce(s.ready, 0), s.oldest_ready_age_ms, "
                     "coalesce(s.delayed, 0) FROM tasker.namespaces n "
                     "LEFT JOIN tasker.queue_stats() s ON s.namespace = n.name ORDER BY n.name"},
};

/* ---- messages without passwords ---------------------------------------- */

char *tk_pg_scrub(const tk_pg *pg, const char *msg)
{
    return tk_scrub(msg, pg ? pg->password : NULL);
}

int tk_pg_describe(tk_pg *pg, const char *conninfo, char **why)
{
    char *err = NULL;
    *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        /* The parser may quote the offending text; mask anything that
         * looks like a password in it before it reaches the caller. */
        const char *m = err ? err : "out of memory";
        char *copy = tk_strdup(m);
        if (copy) {
            char *p;
            if ((p = strstr(copy, "password=")))
                for (p += 9; *p && *p != ' ' && *p != '"'; p++)
                    *p = '*';
            if ((p = strstr(copy, "://")) && strchr(p, '@')) {
                char *colon = strchr(p + 3, ':'), *at = strchr(p + 3, '@');
                if (colon && colon < at)
                    for (p = colon + 1; p < at; p++)
                        *p = '*';
            }
            *why = tk_pg_scrub(NULL, copy);
            tk_free(copy);
        }
        if (err)
            PQfreemem(err);
        return -1;
    }
    const char *user = NULL, *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL;
    const char *pw = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (!strcmp(o->keyword, "user"))
            user = o->val;
        else if (!strcmp(o->keyword, "host"))
            host = o->val;
        else if (!strcmp(o->keyword, "hostaddr"))
            hostaddr = o->val;
        else if (!strcmp(o->keyword, "port"))
            port = o->val;
        else if (!strcmp(o->keyword, "dbname"))
            db = o->val;
        else if (!strcmp(o->keyword, "password"))
            pw = o->val;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s%s%s%s/%s", user ? user : "", user ? "@" : "",
             host ? host : hostaddr ? hostaddr : "localhost", port ? ":" : "", port ? port : "",
             db ? db : (user ? user : ""));
    tk_free(pg->password);
    pg->password = pw ? tk_strdup(pw) : NULL;
    tk_free(pg->target);
    pg->target = tk_pg_scrub(pg, buf);
    PQconninfoFree(opts);
    return pg->target && (!pw || pg->password) ? 0 : -1;
}

int tk_pg_error(tk_pg *pg, tk_pgconn *c, const PGresult *r, const char *what)
{
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if ((!msg || !*msg) && c && c->conn)
        msg = PQerrorMessage(c->conn);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    char *clean = tk_pg_scrub(pg, msg && *msg ? msg : "no message from the server");
    if (pg)
        atomic_fetch_add(&pg->n_errors, 1);
    int rc = tk_err(TASKER_EDATABASE, TASKER_CATEGORY_DATABASE,
                    json_pack("{s:s, s:s?, s:s}", "database", pg->target ? pg->target : "?",
                              "sqlstate", state, "operation", what),
                    "%s failed on %s: %s", what, pg->target ? pg->target : "the database",
                    clean ? clean : "?");
    tk_free(clean);
    return rc;
}

/* ---- connections --------------------------------------------------------- */

static void quiet_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

int tk_pg_connect(tk_pg *pg, tk_pgconn **out)
{
    return tk_pg_connect_within(pg, out, "10");
}

int tk_pg_connect_within(tk_pg *pg, tk_pgconn **out, const char *timeout_s)
{
    *out = NULL;
    /* Defaults first so that the connection string overrides them
     * (expand_dbname: later keywords win). */
    const char *const keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *const vals[] = {"tasker", timeout_s, pg->conninfo, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn)
        return tk_enomem();
    if (PQstatus(conn) != CONNECTION_OK) {
        atomic_fetch_add(&pg->n_connect_failures, 1);
        atomic_fetch_add(&pg->n_errors, 1);
        char *clean = tk_pg_scrub(pg, PQerrorMessage(conn));
        int rc = tk_err(TASKER_EDATABASE, TASKER_CATEGORY_NETWORK,
                        json_pack("{s:s}", "database", pg->target),
                        "could not connect to PostgreSQL at %s: %s", pg->target,
                        clean ? clean : "?");
        tk_free(clean);
        PQfinish(conn);
        return rc;
    }
    /* libpq prints server notices (and errors that arrive between
     * queries, like "terminating connection") to stderr by default; the
     * library never writes to stderr. */
    PQsetNoticeProcessor(conn, quiet_notices, NULL);
    /* The store's functions run the same statements over and over with
     * array parameters whose sizes the planner cannot see: planning them
     * anew on every call (custom plans) costs more than it gains. */
    /* tasker.quiet: the store's functions leave notifications to the
     * library, which sends them after the commit (tk_pg_notify; see
     * sql/0006_notify.sql). */
    PQclear(PQexec(conn, "SET plan_cache_mode = force_generic_plan; SET tasker.quiet = on"));
    if (pg->namespaces) {
        const char *v[] = {pg->namespaces};
        PQclear(PQexecParams(conn, "SELECT set_config('tasker.namespaces', $1, false)", 1, NULL, v,
                             NULL, NULL, 0));
    }
    tk_pgconn *c = tk_calloc(1, sizeof *c);
    if (!c) {
        PQfinish(conn);
        return tk_enomem();
    }
    c->conn = conn;
    *out = c;
    atomic_fetch_add(&pg->n_connects, 1);
    return TASKER_OK;
}

void tk_pg_disconnect(tk_pgconn *c)
{
    if (!c)
        return;
    if (c->conn)
        PQfinish(c->conn);
    tk_free(c);
}

int tk_pg_pool_get(tk_pg *pg, tk_pgconn **out)
{
    pthread_mutex_lock(&pg->mu);
    tk_pgconn *c = pg->n_pool ? pg->pool[--pg->n_pool] : NULL;
    pthread_mutex_unlock(&pg->mu);
    if (c && PQstatus(c->conn) != CONNECTION_OK) {
        tk_pg_disconnect(c);
        c = NULL;
    }
    if (c) {
        *out = c;
        return TASKER_OK;
    }
    return tk_pg_connect(pg, out);
}

void tk_pg_pool_put(tk_pg *pg, tk_pgconn *c)
{
    if (!c)
        return;
    tk_pgconn *stale[TK_PG_POOL_MAX];
    int n_stale = 0;
    pthread_mutex_lock(&pg->mu);
    if (PQstatus(c->conn) == CONNECTION_OK && PQtransactionStatus(c->conn) == PQTRANS_IDLE) {
        if (pg->n_pool < TK_PG_POOL_MAX && !pg->closed) {
            pg->pool[pg->n_pool++] = c;
            c = NULL;
        }
    } else if (PQstatus(c->conn) != CONNECTION_OK) {
        /* A broken connection usually means the server went away: the
         * idle ones opened before are gone too, so do not hand them out. */
        n_stale = pg->n_pool;
        memcpy(stale, pg->pool, (size_t)n_stale * sizeof *stale);
        pg->n_pool = 0;
    }
    pthread_mutex_unlock(&pg->mu);
    for (int i = 0; i < n_stale; i++)
        tk_pg_disconnect(stale[i]);
    tk_pg_disconnect(c);
}

static int is_transient(const PGresult *r, const tk_pgconn *c)
{
    if (PQstatus(c->conn) != CONNECTION_OK)
        return 1;
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    /* deadlock_detected, serialization_failure, admin shutdown/crash
     * recovery (57P01-57P03), connection exceptions (08xxx). */
    return st && (!strcmp(st, "40P01") || !strcmp(st, "40001") || !strncmp(st, "57P0", 4) ||
                  !strncmp(st, "08", 2));
}

PGresult *tk_pg_run(tk_pg *pg, tk_pgconn *c, tk_ps ps, int n, const char *const *values,
                    int *transient)
{
    if (transient)
        *transient = 0;
    if (!(c->prepared & (1u << ps))) {
        PGresult *p = PQprepare(c->conn, stmts[ps].name, stmts[ps].sql, 0, NULL);
        if (PQresultStatus(p) != PGRES_COMMAND_OK) {
            if (transient)
                *transient = is_transient(p, c);
            tk_pg_error(pg, c, p, stmts[ps].name + 3);
            PQclear(p);
            return NULL;
        }
        PQclear(p);
        c->prepared |= 1u << ps;
    }
    PGresult *r = PQexecPrepared(c->conn, stmts[ps].name, n, values, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    if (transient)
        *transient = is_transient(r, c);
    tk_pg_error(pg, c, r, stmts[ps].name + 3);
    PQclear(r);
    return NULL;
}

void tk_pg_notify(tk_pg *pg, tk_pgconn *c, size_t n, const char *const *channels,
                  const char *const *payloads)
{
    if (!n)
        return;
    tk_buf ch, pl;
    tk_buf_init(&ch);
    tk_buf_init(&pl);
    tk_buf_add(&ch, "{", 1);
    tk_buf_add(&pl, "{", 1);
    for (size_t i = 0; i < n; i++) {
        tk_buf_elem(&ch, channels[i], i == 0);
        tk_buf_elem(&pl, payloads[i], i == 0);
    }
    tk_buf_add(&ch, "}", 1);
    tk_buf_add(&pl, "}", 1);
    if (!ch.oom && !pl.oom) {
        /* A lost notification only delays: claimers and waiters also poll. */
        const char *vals[] = {ch.p, pl.p};
        PQclear(tk_pg_run(pg, c, TK_PS_NOTIFY, 2, vals, NULL));
    }
    tk_buf_free(&ch);
    tk_buf_free(&pl);
}

int tk_pg_simple(tk_pg *pg, tk_pgconn *c, const char *sql)
{
    PGresult *r = PQexec(c->conn, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? TASKER_OK : tk_pg_error(pg, c, r, sql);
    PQclear(r);
    return rc;
}

/*
 * The claimer's and the heartbeat's transactions do not wait for their
 * commit to reach disk.  Losing one in a server crash is harmless: a lost
 * claim leaves the step claimable and the worker's completion is refused
 * (its attempt number is unknown to the database), a lost renewal only
 * shortens a lease.  Completions, which must not be lost, keep the
 * server's synchronous_commit.  This takes the fsync off the claim path.
 */
int tk_pg_async_commit(tk_pg *pg, tk_pgconn *c)
{
    return tk_pg_simple(pg, c, "SET synchronous_commit = off");
}

unsigned tk_pg_backoff_sleep(tk_pg *pg, unsigned n, const int *stop)
{
    long ms = 50L << (n < 7 ? n : 7);
    if (ms > 5000)
        ms = 5000;
    /* Sleep in slices so a stop request is seen within 50 ms. */
    for (long slept = 0; slept < ms; slept += 50) {
        pthread_mutex_lock(&pg->mu);
        int s = *stop;
        pthread_mutex_unlock(&pg->mu);
        if (s)
            break;
        struct timespec ts = {0, 50 * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    return n + 1;
}

/* ---- text buffers and array literals ----------------------------------------- */

void tk_buf_init(tk_buf *b)
{
    memset(b, 0, sizeof *b);
}

void tk_buf_free(tk_buf *b)
{
    tk_free(b->p);
    tk_buf_init(b);
}

static int buf_reserve(tk_buf *b, size_t more)
{
    if (b->oom)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = tk_realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void tk_buf_add(tk_buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void tk_buf_addf(tk_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        tk_buf_add(b, tmp, (size_t)n);
        return;
    }
    if (buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void tk_buf_elem(tk_buf *b, const char *s, int first)
{
    if (!first)
        tk_buf_add(b, ",", 1);
    if (!s) {
        tk_buf_add(b, "NULL", 4);
        return;
    }
    size_t n = strlen(s);
    if (buf_reserve(b, n * 2 + 2))
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            *o++ = '\\';
        *o++ = s[i];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

long tk_pg_parse_array(const char *text, char ***elems, size_t **lens, char **out_mem)
{
    *elems = NULL;
    *lens = NULL;
    *out_mem = NULL;
    if (!text || text[0] != '{')
        return -1;
    size_t n = strlen(text);
    /* Count elements: commas outside quotes, plus one unless empty. */
    size_t count = 0;
    int inq = 0;
    for (size_t i = 1; i < n; i++) {
        char ch = text[i];
        if (inq) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                inq = 0;
        } else if (ch == '"') {
            inq = 1;
        } else if (ch == ',') {
            count++;
        }
    }
    if (n > 2)
        count++;
    char *mem = tk_malloc(n + 1);
    char **e = tk_calloc(count ? count : 1, sizeof *e);
    size_t *l = tk_calloc(count ? count : 1, sizeof *l);
    if (!mem || !e || !l) {
        tk_free(mem);
        tk_free(e);
        tk_free(l);
        return -1;
    }
    size_t k = 0, o = 0, i = 1;
    while (k < count && i < n) {
        size_t start = o;
        if (text[i] == '"') {
            for (i++; i < n && text[i] != '"'; i++) {
                if (text[i] == '\\' && i + 1 < n)
                    i++;
                mem[o++] = text[i];
            }
            i++; /* closing quote */
            mem[o++] = '\0';
            e[k] = mem + start;
            l[k] = o - start - 1;
        } else {
            while (i < n && text[i] != ',' && text[i] != '}')
                mem[o++] = text[i++];
            mem[o++] = '\0';
            if (o - start - 1 == 4 && memcmp(mem + start, "NULL", 4) == 0) {
                e[k] = NULL;
                l[k] = 0;
            } else {
                e[k] = mem + start;
                l[k] = o - start - 1;
            }
        }
        k++;
        i++; /* the comma or the closing brace */
    }
    *elems = e;
    *lens = l;
    *out_mem = mem;
    return (long)count;
}
