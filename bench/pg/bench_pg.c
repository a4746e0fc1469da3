/*
 * bench_pg - throughput of the postgres store.
 *
 *   bench_pg --database-url URL [--tasks N] [--workers W] [--threads T]
 *            [--shape diamond10|linear4|single] [--async] [--claim-batch B]
 *            [--flush-max F] [--keep]
 *
 * Creates a fresh database from URL (the role must be allowed to CREATE
 * DATABASE; it is dropped afterwards unless --keep), applies the schema,
 * registers the template, creates N tasks, then starts W worker processes
 * with T threads each running no-op C handlers, and measures from the first
 * claim to the last completion (timestamps recorded by the database).
 * Prints one JSON line in bench/run's format:
 *   {"bench": "postgres.diamond10", "metric": "throughput", "value": ...,
 *    "unit": "steps/s", "params": {...}}
 */
#define _GNU_SOURCE
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "migrate.h"
#include "store/postgres.h"
#include "tasker.h"

static struct {
    const char *url, *shape;
    int tasks, workers, threads, async, claim_batch, flush_max, keep;
} opt = {NULL, "diamond10", 1000, 1, 16, 0, 0, 0, 0};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "bench_pg: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int noop(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, NULL, 0);
}

static tasker_coordinator *open_coord(const char *url)
{
    tasker_config *cfg;
    tasker_coordinator *c = NULL;
    if (tasker_config_new(&cfg) || tasker_config_set(cfg, "store", "postgres") ||
        tasker_config_set(cfg, "database.url", url) || tasker_coordinator_open(&c, cfg))
        die("cannot open a coordinator: %s", tasker_error_last()->message);
    tasker_config_free(cfg);
    tk_pg_tuning t = {0, 0, opt.claim_batch, opt.flush_max, opt.async};
    tk_pg_tune(c, &t);
    return c;
}

static void template_json(char *out, size_t cap, int *steps)
{
    int o;
    if (!strcmp(opt.shape, "diamond10")) {
        o = snprintf(out, cap, "{\"namespace\":\"bench\",\"name\":\"diamond10\",\"steps\":["
                               "{\"name\":\"root\",\"handler\":\"noop\"}");
        for (int i = 0; i < 8; i++)
            o += snprintf(out + o, cap - (size_t)o,
                          ",{\"name\":\"m%d\",\"handler\":\"noop\",\"depends_on\":[\"root\"]}", i);
        snprintf(out + o, cap - (size_t)o,
                 ",{\"name\":\"sink\",\"handler\":\"noop\",\"depends_on\":[\"m0\",\"m1\",\"m2\","
                 "\"m3\",\"m4\",\"m5\",\"m6\",\"m7\"]}]}");
        *steps = 10;
    } else if (!strcmp(opt.shape, "linear4")) {
        snprintf(out, cap, "{\"namespace\":\"bench\",\"name\":\"linear4\",\"steps\":["
                           "{\"name\":\"a\",\"handler\":\"noop\"},"
                           "{\"name\":\"b\",\"handler\":\"noop\",\"depends_on\":[\"a\"]},"
                           "{\"name\":\"c\",\"handler\":\"noop\",\"depends_on\":[\"b\"]},"
                           "{\"name\":\"d\",\"handler\":\"noop\",\"depends_on\":[\"c\"]}]}");
        *steps = 4;
    } else if (!strcmp(opt.shape, "single")) {
        snprintf(out, cap, "{\"namespace\":\"bench\",\"name\":\"single\",\"steps\":["
                           "{\"name\":\"job\",\"handler\":\"noop\"}]}");
        *steps = 1;
    } else {
        die("unknown --shape %s (diamond10, linear4, single)", opt.shape);
    }
}

/* A worker process: runs until SIGTERM. */
static int worker(const char *url)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    tasker_coordinator *c = open_coord(url);
    if (tasker_handler_register(c, "noop", noop, NULL, NULL) ||
        tasker_coordinator_start(c, (unsigned)opt.threads))
        die("worker: %s", tasker_error_last()->message);
    int sig;
    sigwait(&set, &sig);
    tk_pg_stat st;
    tk_pg_stats(c, &st);
    if (getenv("BENCH_PG_VERBOSE"))
        fprintf(stderr, "worker %d: claimed %lu in %lu calls, completed %lu in %lu flushes, fenced %lu\n",
                st.worker_id, st.claimed, st.claim_calls, st.completed, st.flush_calls, st.fenced);
    tasker_coordinator_close(c);
    return 0;
}

static PGresult *q(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        die("%s", PQresultErrorMessage(r));
    return r;
}

static char *url_with_db(const char *url, const char *db)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &err);
    if (!o)
        die("bad --database-url: %s", err ? err : "?");
    size_t cap = 4096, len = 0;
    char *out = calloc(1, cap);
    for (PQconninfoOption *p = o; p->keyword; p++) {
        const char *v = strcmp(p->keyword, "dbname") ? p->val : db;
        if (!v || !*v)
            continue;
        len += (size_t)snprintf(out + len, cap - len, "%s%s='", len ? " " : "", p->keyword);
        for (; *v; v++) {
            if (*v == '\'' || *v == '\\')
                out[len++] = '\\';
            out[len++] = *v;
        }
        out[len++] = '\'';
    }
    PQconninfoFree(o);
    return out;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--database-url") && v)
            opt.url = argv[++i];
        else if (!strcmp(a, "--tasks") && v)
            opt.tasks = atoi(argv[++i]);
        else if (!strcmp(a, "--workers") && v)
            opt.workers = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && v)
            opt.threads = atoi(argv[++i]);
        else if (!strcmp(a, "--shape") && v)
            opt.shape = argv[++i];
        else if (!strcmp(a, "--claim-batch") && v)
            opt.claim_batch = atoi(argv[++i]);
        else if (!strcmp(a, "--flush-max") && v)
            opt.flush_max = atoi(argv[++i]);
        else if (!strcmp(a, "--async"))
            opt.async = 1;
        else if (!strcmp(a, "--keep"))
            opt.keep = 1;
        else {
            fprintf(stderr, "usage: bench_pg --database-url URL [--tasks N] [--workers W] "
                            "[--threads T] [--shape diamond10|linear4|single] [--async] "
                            "[--claim-batch B] [--flush-max F] [--keep]\n");
            return 2;
        }
    }
    if (!opt.url)
        opt.url = getenv("TASKER_DATABASE_URL");
    if (!opt.url)
        die("%s", "no --database-url");

    char db[64];
    snprintf(db, sizeof db, "tasker_bench_%d", (int)getpid());
    PGconn *admin = PQconnectdb(opt.url);
    if (PQstatus(admin) != CONNECTION_OK)
        die("%s", PQerrorMessage(admin));
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
    PQclear(q(admin, sql));
    char *url = url_with_db(opt.url, db);
    PGconn *c = PQconnectdb(url);
    int applied, version;
    char err[1024];
    if (PQstatus(c) != CONNECTION_OK || tk_migrate(c, &applied, &version, err, sizeof err, NULL, NULL))
        die("migrate: %s", err);

    tasker_coordinator *prod = open_coord(url);
    char tj[4096];
    int steps;
    template_json(tj, sizeof tj, &steps);
    if (tasker_template_register_json(prod, tj, 0))
        die("template: %s", tasker_error_last()->message);
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "bench";
    req.name = opt.shape;
    char uuid[TASKER_UUID_BUFSIZE];
    double t0 = now_s();
    for (int i = 0; i < opt.tasks; i++)
        if (tasker_task_create(uuid, prod, &req))
            die("create: %s", tasker_error_last()->message);
    double create_s = now_s() - t0;
    PQclear(q(c, "VACUUM ANALYZE"));

    pid_t *pids = calloc((size_t)opt.workers, sizeof *pids);
    for (int w = 0; w < opt.workers; w++) {
        pids[w] = fork();
        if (pids[w] == 0) /* the parent's connections are left alone: PQfinish
                           * would end the parent's sessions */
            _exit(worker(url));
    }
    double start = now_s();
    for (;;) {
        PGresult *r = q(c, "SELECT count(*) FROM tasker.tasks WHERE state <> 2");
        int left = atoi(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!left)
            break;
        if (now_s() - start > 600)
            die("%s", "not finished after 600 s");
        usleep(20000);
    }
    double wall = now_s() - start;
    for (int w = 0; w < opt.workers; w++) {
        kill(pids[w], SIGTERM);
        waitpid(pids[w], NULL, 0);
    }
    PGresult *r = q(c, "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM tasker.steps");
    double span = atof(PQgetvalue(r, 0, 0));
    PQclear(r);
    r = q(c, "SELECT current_setting('synchronous_commit')");
    char sync[32];
    snprintf(sync, sizeof sync, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    long total = (long)opt.tasks * steps;
    printf("{\"bench\": \"postgres.%s\", \"metric\": \"throughput\", \"value\": %.0f, "
           "\"unit\": \"steps/s\", \"params\": {\"tasks\": %d, \"steps\": %ld, \"workers\": %d, "
           "\"threads\": %d, \"async_complete\": %s, \"synchronous_commit\": \"%s\", "
           "\"span_s\": %.3f, \"wall_s\": %.3f, \"create_tasks_per_s\": %.0f}}\n",
           opt.shape, total / span, opt.tasks, total, opt.workers, opt.threads,
           opt.async ? "true" : "false", sync, span, wall, opt.tasks / create_s);
    tasker_coordinator_close(prod);
    PQfinish(c);
    if (!opt.keep) {
        snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", db);
        PQclear(q(admin, sql));
    }
    PQfinish(admin);
    free(url);
    free(pids);
    return 0;
}
