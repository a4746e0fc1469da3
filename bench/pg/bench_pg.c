/*
 * bench_pg - benchmarks of the postgres store (issue 4), run by
 * `bench/run postgres`.
 *
 *   bench_pg [MODE] --database-url URL [options]
 *
 * MODE (default throughput):
 *   throughput  N tasks of --shape (diamond10, linear4, single) are created
 *               beforehand, in one SQL statement calling tasker.create_task
 *               (the function tasker_task_create calls); then --workers
 *               pg_worker processes with --threads threads each run them with
 *               no-op C handlers.  Measured from the first claim
 *               (min(steps.started_at), the database's clock) to the moment
 *               this program has seen every task final (the last
 *               'tasker_done' notification, this machine's clock -- the same
 *               clock).  Bench name postgres.<shape> (postgres.jobs for
 *               single), unit steps/s.
 *   latency     Paced load: diamond-10 tasks are created with
 *               tasker_task_create at --rate steps/s (--rate/10 tasks/s) for
 *               --duration seconds by --producers threads while --workers
 *               pg_worker processes run them.  Each worker notes when its
 *               handler started each step; the latency of a step is that
 *               time minus steps.enqueued_at (when the transaction that made
 *               it ready began).  Prints p50 and p99 (bench
 *               postgres.ready_to_start, unit ms).
 *   e2e         One pg_worker process, an otherwise idle server; --runs
 *               times: tasker_task_create of one --shape (linear4) task, then
 *               tasker_task_wait until it is final, timed by this process.
 *               Prints p50 (bench postgres.<shape>.e2e, unit ms).
 *   readiness   The same 1,000-step DAG (100 diamond-10 blocks in a chain,
 *               1,699 edges): (a) on a memory coordinator, create one task
 *               and complete every step in dependency order with poll-mode
 *               claim / tasker_steps_succeed -- the incremental dependency
 *               counters decide readiness after every completion; (b) in the
 *               database, one call of the SQL readiness function
 *               tasker.step_readiness(task) over a task of that template.
 *               Prints (b) / (a) (bench postgres.readiness, unit ratio).
 *   jobs        throughput of --tasks (20,000) single-step tasks at 1, 2 and
 *               4 workers (bench postgres.jobs, unit jobs/s), then, with
 *               --graphile-dir, graphile-worker on the same server
 *               (bench/pg/graphile/bench.js, configurations "fast" and
 *               "unbatched") and the ratios tasker / graphile-worker.
 *   suite       everything bench/run postgres reports, in one run: the
 *               diamond-10 throughput at 1, 2, 4 workers (asynchronous and
 *               waiting completions), the sustained peak (--concurrent, at
 *               1, 2, 4 workers), ready->start latency at half of the
 *               sustained peak with 1, 2 and 4 workers, readiness,
 *               linear-4 end to end, jobs.
 *
 * throughput --concurrent creates the tasks while the workers run, from
 * --producers threads calling tasker_task_create as fast as they can, and
 * times from the first create (bench postgres.<shape>.concurrent_create).
 *
 * Every mode repeats its measurement --repeats times, each time in a fresh
 * database (CREATE DATABASE + migrations; the role must be allowed to create
 * databases; dropped afterwards unless --keep), and prints ONE JSON line per
 * metric in bench/run's format (DESIGN.md section 8): "value" is the median
 * of the repeats, params carry every repeat, the best, the server settings
 * that matter and the load average.
 *
 * Options: --shape S  --tasks N  --workers W  --threads T  --async
 *          --claim-batch B  --flush-max F  --repeats R  --rate STEPS_PER_S
 *          --duration S  --producers P  --runs N  --peak STEPS_PER_S
 *          --concurrent  --worker-bin PATH  --graphile-dir DIR  --keep
 * --async sets postgres.async_complete=true in the workers (completion calls
 * return before the flush commits; the commit itself still waits for the
 * disk).  --peak is only recorded in the latency line's params.  The suite
 * uses --repeats for the diamond-10 throughput with asynchronous completions
 * and min(--repeats, 3) for everything else.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "migrate.h"
#include "tasker.h"

#ifndef TASKER_BENCH_BUILD_TYPE
#define TASKER_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef TASKER_BENCH_C_FLAGS
#define TASKER_BENCH_C_FLAGS ""
#endif

static struct {
    const char *url, *mode, *shape, *worker_bin;
    int tasks, workers, threads, async, claim_batch, flush_max, repeats, keep;
    double rate, duration, peak;
    int producers, runs, concurrent;
    const char *basis;        /* latency: what --peak is the peak of */
    const char *graphile_dir; /* jobs/suite: bench/pg/graphile with node_modules */
} opt = {NULL, "throughput", NULL, NULL, 0, 1, 16, 0, 0, 0, 1, 0, 0, 10, 0, 8, 200, 0, NULL, NULL};

static PGconn *admin;
static char settings_json[1024]; /* the server's version and settings, for params */
static int db_seq;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_pg: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void die_tasker(const char *what)
{
    const tasker_error *e = tasker_error_last();
    die("%s: %s (%s)", what, e->message, tasker_strerror(e->code));
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wall clock, comparable with PostgreSQL's now() on the same machine. */
static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double loadavg_1m(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* ---- statistics ----------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentile p (0..100) of v[0..n) by linear interpolation between closest
 * ranks; sorts v. */
static double pct(double *v, size_t n, double p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    double r = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)r;
    if (lo + 1 >= n)
        return v[n - 1];
    return v[lo] + (r - (double)lo) * (v[lo + 1] - v[lo]);
}

static double median(const double *v, size_t n)
{
    double *c = malloc((n ? n : 1) * sizeof *c);
    memcpy(c, v, n * sizeof *c);
    double m = pct(c, n, 50);
    free(c);
    return m;
}

static double maxof(const double *v, size_t n)
{
    double m = n ? v[0] : 0;
    for (size_t i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static double minof(const double *v, size_t n)
{
    double m = n ? v[0] : 0;
    for (size_t i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

/* ---- output ----------------------------------------------------------------- */

typedef struct params {
    char s[16384];
    size_t n;
} params;

static void pf(params *p, const char *fmt, ...)
{
    if (p->n >= sizeof p->s - 1)
        return;
    if (p->n)
        p->n += (size_t)snprintf(p->s + p->n, sizeof p->s - p->n, ", ");
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(p->s + p->n, sizeof p->s - p->n, fmt, ap);
    va_end(ap);
    if (k > 0)
        p->n += (size_t)k;
    if (p->n > sizeof p->s - 1)
        p->n = sizeof p->s - 1;
}

/* "key": [a, b, c] */
static void pf_list(params *p, const char *key, const double *v, size_t n, const char *fmt)
{
    char buf[4096];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof buf - o, "\"%s\": [", key);
    for (size_t i = 0; i < n && o < sizeof buf - 64; i++) {
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s", i ? ", " : "");
        o += (size_t)snprintf(buf + o, sizeof buf - o, fmt, v[i]);
    }
    snprintf(buf + o, sizeof buf - o, "]");
    pf(p, "%s", buf);
}

/* Set while the paired rounds of mode_jobs run: their single runs are
 * reported only as the round's figures. */
static int quiet;

static void emit(const char *bench, const char *metric, double value, const char *unit,
                 const params *p)
{
    if (quiet)
        return;
    printf("{\"bench\": \"%s\", \"metric\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", "
           "\"params\": {%s%s\"stat\": \"median\", \"repeats\": %d, %s, \"build_type\": \"%s\", "
           "\"c_flags\": \"%s\", \"tasker_version\": \"%s\", \"loadavg_1m\": %.2f}}\n",
           bench, metric, value, unit, p->s, p->n ? ", " : "", opt.repeats, settings_json,
           TASKER_BENCH_BUILD_TYPE, TASKER_BENCH_C_FLAGS, tasker_version(), loadavg_1m());
    fflush(stdout);
}

/* ---- database ------------------------------------------------------------------ */

static PGresult *q(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        die("%s: %s", sql, PQresultErrorMessage(r));
    return r;
}

static PGresult *qp(PGconn *c, const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        die("%s: %s", sql, PQresultErrorMessage(r));
    return r;
}

static double q_double(PGconn *c, const char *sql)
{
    PGresult *r = q(c, sql);
    double v = PQgetisnull(r, 0, 0) ? 0 : atof(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* `url` with dbname replaced, as a key=value conninfo string. */
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
        for (; *v && len < cap - 4; v++) {
            if (*v == '\'' || *v == '\\')
                out[len++] = '\\';
            out[len++] = *v;
        }
        out[len++] = '\'';
    }
    PQconninfoFree(o);
    return out;
}

typedef struct benchdb {
    char name[64];
    char *url;
    PGconn *c;
} benchdb;

static void db_open(benchdb *d, int migrate)
{
    snprintf(d->name, sizeof d->name, "tasker_bench_%d_%d", (int)getpid(), ++db_seq);
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", d->name);
    PQclear(q(admin, sql));
    d->url = url_with_db(opt.url, d->name);
    d->c = PQconnectdb(d->url);
    if (PQstatus(d->c) != CONNECTION_OK)
        die("connect: %s", PQerrorMessage(d->c));
    int applied, version;
    char err[1024];
    if (migrate && tk_migrate(d->c, &applied, &version, err, sizeof err, NULL, NULL))
        die("migrate: %s", err);
}

static void db_close(benchdb *d)
{
    PQfinish(d->c);
    d->c = NULL;
    if (!opt.keep) {
        char sql[256];
        snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", d->name);
        PQclear(q(admin, sql));
    } else {
        fprintf(stderr, "bench_pg: kept database %s\n", d->name);
    }
    free(d->url);
    d->url = NULL;
}

static void read_settings(void)
{
    PGresult *r = q(admin, "SELECT current_setting('server_version'), "
                           "current_setting('synchronous_commit'), current_setting('fsync'), "
                           "current_setting('wal_sync_method'), current_setting('shared_buffers'), "
                           "current_setting('max_connections'), current_setting('wal_level'), "
                           "current_setting('full_page_writes'), current_setting('autovacuum')");
    snprintf(settings_json, sizeof settings_json,
             "\"pg\": {\"server_version\": \"%s\", \"synchronous_commit\": \"%s\", "
             "\"fsync\": \"%s\", \"wal_sync_method\": \"%s\", \"shared_buffers\": \"%s\", "
             "\"max_connections\": %s, \"wal_level\": \"%s\", \"full_page_writes\": \"%s\", "
             "\"autovacuum\": \"%s\"}",
             PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
             PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5), PQgetvalue(r, 0, 6), PQgetvalue(r, 0, 7),
             PQgetvalue(r, 0, 8));
    PQclear(r);
}

/* ---- templates ------------------------------------------------------------------ */

static int shape_steps(const char *shape)
{
    if (!strcmp(shape, "diamond10"))
        return 10;
    if (!strcmp(shape, "linear4"))
        return 4;
    if (!strcmp(shape, "single"))
        return 1;
    if (!strcmp(shape, "chain1000"))
        return 1000;
    die("unknown shape '%s' (diamond10, linear4, single)", shape);
    return 0;
}

static void add_step(tasker_template *t, const char *name, const char *const *deps, size_t n)
{
    /* One attempt and no timeout: a benchmark step never fails, and the
     * options are the same for both stores. */
    if (tasker_template_add_step(t, name, "noop", deps, n, NULL))
        die_tasker("template_add_step");
}

/* Builds template bench/<shape>.  chain1000 is 100 diamond-10 blocks, the
 * root of each block depending on the sink of the one before. */
static tasker_template *make_template(const char *shape)
{
    tasker_template *t;
    if (tasker_template_new(&t, "bench", shape, "1"))
        die_tasker("template_new");
    char name[32], prev[32], mids[8][32];
    const char *deps[8];
    if (!strcmp(shape, "diamond10") || !strcmp(shape, "chain1000")) {
        int blocks = !strcmp(shape, "diamond10") ? 1 : 100;
        prev[0] = '\0';
        for (int b = 0; b < blocks; b++) {
            char root[32];
            snprintf(root, sizeof root, "b%d_root", b);
            deps[0] = prev;
            add_step(t, root, deps, prev[0] ? 1 : 0);
            for (int m = 0; m < 8; m++) {
                snprintf(mids[m], sizeof mids[m], "b%d_m%d", b, m);
                deps[0] = root;
                add_step(t, mids[m], deps, 1);
            }
            for (int m = 0; m < 8; m++)
                deps[m] = mids[m];
            snprintf(name, sizeof name, "b%d_sink", b);
            add_step(t, name, deps, 8);
            snprintf(prev, sizeof prev, "%s", name);
        }
    } else if (!strcmp(shape, "linear4")) {
        const char *names[] = {"a", "b", "c", "d"};
        for (int i = 0; i < 4; i++) {
            deps[0] = i ? names[i - 1] : NULL;
            add_step(t, names[i], deps, i ? 1 : 0);
        }
    } else if (!strcmp(shape, "single")) {
        add_step(t, "job", NULL, 0);
    } else {
        die("unknown shape '%s'", shape);
    }
    return t;
}

static tasker_coordinator *open_pg_coord(const char *url)
{
    tasker_config *cfg;
    tasker_coordinator *c = NULL;
    if (tasker_config_new(&cfg) || tasker_config_set(cfg, "store", "postgres") ||
        tasker_config_set(cfg, "database.url", url) || tasker_coordinator_open(&c, cfg))
        die_tasker("cannot open a postgres coordinator");
    tasker_config_free(cfg);
    return c;
}

static void register_template(tasker_coordinator *c, const char *shape)
{
    tasker_template *t = make_template(shape);
    if (tasker_template_register(c, t))
        die_tasker("template_register");
    tasker_template_free(t);
}

/* ---- worker processes ------------------------------------------------------------ */

typedef struct workers {
    int n;
    pid_t pid[64];
    char record[64][PATH_MAX];
} workers;

static void workers_start(workers *w, const char *url, int n, const char *record_dir)
{
    if (n < 1 || n > 64)
        die("--workers must be 1..64");
    memset(w, 0, sizeof *w);
    char threads[16], cb[16], fm[16];
    snprintf(threads, sizeof threads, "%d", opt.threads);
    snprintf(cb, sizeof cb, "%d", opt.claim_batch);
    snprintf(fm, sizeof fm, "%d", opt.flush_max);
    int fds[64];
    for (int i = 0; i < n; i++) {
        int p[2];
        if (pipe(p) != 0)
            die("pipe: %s", strerror(errno));
        if (record_dir)
            snprintf(w->record[i], sizeof w->record[i], "%s/worker%d.tsv", record_dir, i);
        const char *argv[20];
        int a = 0;
        argv[a++] = opt.worker_bin;
        argv[a++] = "--database-url";
        argv[a++] = url;
        argv[a++] = "--threads";
        argv[a++] = threads;
        if (opt.async)
            argv[a++] = "--async";
        if (opt.claim_batch > 0) {
            argv[a++] = "--claim-batch";
            argv[a++] = cb;
        }
        if (opt.flush_max > 0) {
            argv[a++] = "--flush-max";
            argv[a++] = fm;
        }
        if (record_dir) {
            argv[a++] = "--record";
            argv[a++] = w->record[i];
        }
        argv[a] = NULL;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            die("fork: %s", strerror(errno));
        if (pid == 0) {
            /* The child only execs: nothing of this process (connections,
             * threads) is used in it. */
            dup2(p[1], STDOUT_FILENO);
            close(p[0]);
            close(p[1]);
            execv(opt.worker_bin, (char *const *)argv);
            _exit(127);
        }
        close(p[1]);
        fds[i] = p[0];
        w->pid[i] = pid;
        w->n++;
    }
    for (int i = 0; i < n; i++) {
        char buf[16] = {0};
        ssize_t k = read(fds[i], buf, sizeof buf - 1);
        close(fds[i]);
        if (k <= 0 || strncmp(buf, "ready", 5) != 0)
            die("worker %d (%s) did not start", i, opt.worker_bin);
    }
}

static void workers_stop(workers *w)
{
    for (int i = 0; i < w->n; i++)
        kill(w->pid[i], SIGTERM);
    for (int i = 0; i < w->n; i++) {
        int st;
        if (waitpid(w->pid[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            die("worker %d did not exit cleanly (status %d)", i, st);
    }
}

/* ---- waiting for tasks -------------------------------------------------------------- */

static void listen_done(PGconn *c)
{
    PQclear(q(c, "LISTEN tasker_done"));
}

/* Waits until `n` tasks have finished: counts 'tasker_done' notifications
 * (sent when a task's final transaction commits), and every 250 ms without
 * progress asks the database, in case one was missed.  Returns the wall
 * time at which the last one was seen. */
static double wait_done(PGconn *c, long n, double timeout_s)
{
    long seen = 0;
    double start = mono_s(), last_check = start;
    int sock = PQsocket(c);
    for (;;) {
        PGnotify *nt;
        while ((nt = PQnotifies(c))) {
            seen++;
            PQfreemem(nt);
        }
        if (seen >= n)
            return wall_s();
        double now = mono_s();
        if (now - last_check > 0.25) {
            last_check = now;
            double left = q_double(c, "SELECT count(*) FROM tasker.tasks WHERE finished_at IS NULL");
            if (left == 0)
                return wall_s();
        }
        if (now - start > timeout_s)
            die("tasks not finished after %.0f s (%ld of %ld seen)", timeout_s, seen, n);
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(sock, &rd);
        struct timeval tv = {0, 50000};
        if (select(sock + 1, &rd, NULL, NULL, &tv) > 0 && !PQconsumeInput(c))
            die("connection lost: %s", PQerrorMessage(c));
    }
}

/* Creates `n` tasks of bench/<shape> in one statement (setup, not timed):
 * the function tasker_task_create calls, once per task.  The context
 * refers to the row so each task is its own call. */
static void bulk_create(PGconn *c, const char *shape, long n)
{
    char ns[24];
    snprintf(ns, sizeof ns, "%ld", n);
    const char *vals[] = {ns, shape};
    PGresult *r = qp(c,
                     "SELECT count(*) FILTER (WHERE t.status = 0) FROM generate_series(1, $1::int) g "
                     "CROSS JOIN LATERAL tasker.create_task('bench', $2::text, NULL, "
                     "'{\"i\":' || g || '}', NULL, 0) t",
                     2, vals);
    long made = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (made != n)
        die("created %ld tasks, wanted %ld", made, n);
}

/* ---- producers ------------------------------------------------------------------------ */

typedef struct pacer {
    tasker_coordinator **coords;
    int n_coords;
    atomic_long next;
    long total;
    double t0, interval;
    double *late; /* per task: start of the create call minus its due time */
    double *create_s;
    double last_done;
    pthread_mutex_t mu;
    const char *shape;
} pacer;

/* Opens `n` producer coordinators (tasker_task_create borrows connections
 * from a pool of at most four per coordinator). */
static tasker_coordinator **producers_open(const char *url, const char *shape, int *n_out)
{
    int n = (opt.producers + 3) / 4;
    tasker_coordinator **coords = calloc((size_t)n, sizeof *coords);
    for (int i = 0; i < n; i++) {
        coords[i] = open_pg_coord(url);
        register_template(coords[i], shape);
    }
    *n_out = n;
    return coords;
}

static void producers_close(tasker_coordinator **coords, int n)
{
    for (int i = 0; i < n; i++)
        tasker_coordinator_close(coords[i]);
    free(coords);
}

static void *producer_main(void *arg);

/* Creates pc->total tasks from opt.producers threads, task k not before
 * pc->t0 + k * pc->interval (interval 0: as fast as they can). */
static void producers_run(pacer *pc)
{
    pc->late = calloc((size_t)pc->total, sizeof(double));
    pc->create_s = calloc((size_t)pc->total, sizeof(double));
    pthread_t *th = calloc((size_t)opt.producers, sizeof *th);
    for (int i = 0; i < opt.producers; i++)
        if (pthread_create(&th[i], NULL, producer_main, pc) != 0)
            die("pthread_create failed");
    for (int i = 0; i < opt.producers; i++)
        pthread_join(th[i], NULL);
    free(th);
}

static void *producer_main(void *arg)
{
    pacer *pc = arg;
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "bench";
    req.name = pc->shape;
    char uuid[TASKER_UUID_BUFSIZE];
    for (;;) {
        long k = atomic_fetch_add(&pc->next, 1);
        if (k >= pc->total)
            break;
        double due = pc->t0 + (double)k * pc->interval;
        sleep_s(due - mono_s());
        double s = mono_s();
        if (tasker_task_create(uuid, pc->coords[k % pc->n_coords], &req))
            die_tasker("task_create");
        double e = mono_s();
        pc->late[k] = s - due;
        pc->create_s[k] = e - s;
        pthread_mutex_lock(&pc->mu);
        if (e > pc->last_done)
            pc->last_done = e;
        pthread_mutex_unlock(&pc->mu);
    }
    return NULL;
}

/* ---- throughput ------------------------------------------------------------------------- */

/* Returns the median rate. */
static double mode_throughput(void)
{
    const char *shape = opt.shape ? opt.shape : "diamond10";
    int spt = shape_steps(shape);
    long tasks = opt.tasks > 0 ? opt.tasks : 1000;
    long steps = tasks * spt;
    int R = opt.repeats;
    double *rate = calloc((size_t)R, sizeof *rate);
    double *span = calloc((size_t)R, sizeof *span);
    double *dbspan = calloc((size_t)R, sizeof *dbspan);
    double *creates = calloc((size_t)R, sizeof *creates);
    double *walb = calloc((size_t)R, sizeof *walb), *walr = calloc((size_t)R, sizeof *walr);
    for (int rep = 0; rep < R; rep++) {
        benchdb d;
        db_open(&d, 1);
        int n_coords = 0;
        tasker_coordinator **coords = producers_open(d.url, shape, &n_coords);
        if (!opt.concurrent) {
            producers_close(coords, n_coords);
            coords = NULL;
            bulk_create(d.c, shape, tasks);
        }
        PQclear(q(d.c, "VACUUM ANALYZE"));
        listen_done(d.c);
        /* WAL written while the workers run (cluster-wide counters: the
         * benchmark is alone on its server; backends report at exit, so the
         * second reading comes after the workers stopped). */
        PGresult *wr = q(d.c, "SELECT wal_bytes, wal_records FROM pg_stat_wal");
        double wal_b0 = atof(PQgetvalue(wr, 0, 0)), wal_r0 = atof(PQgetvalue(wr, 0, 1));
        PQclear(wr);
        workers w;
        workers_start(&w, d.url, opt.workers, NULL);
        double start_wall = 0;
        if (opt.concurrent) {
            /* Created while the workers run, as fast as opt.producers
             * threads can: the clock starts with the first create. */
            pacer pc = {coords, n_coords, 0, tasks, 0, 0, NULL, NULL, 0, PTHREAD_MUTEX_INITIALIZER,
                        shape};
            start_wall = wall_s();
            pc.t0 = mono_s();
            producers_run(&pc);
            creates[rep] = (double)tasks / (pc.last_done - pc.t0);
            free(pc.late);
            free(pc.create_s);
        }
        double end = wait_done(d.c, tasks, 600);
        if (!opt.concurrent)
            start_wall = q_double(d.c, "SELECT extract(epoch FROM min(started_at)) FROM tasker.steps");
        dbspan[rep] = q_double(d.c, "SELECT extract(epoch FROM max(finished_at) - min(started_at)) "
                                    "FROM tasker.steps");
        workers_stop(&w);
        if (coords)
            producers_close(coords, n_coords);
        wr = q(d.c, "SELECT wal_bytes, wal_records FROM pg_stat_wal");
        walb[rep] = (atof(PQgetvalue(wr, 0, 0)) - wal_b0) / (double)steps;
        walr[rep] = (atof(PQgetvalue(wr, 0, 1)) - wal_r0) / (double)steps;
        PQclear(wr);
        double bad = q_double(d.c, "SELECT count(*) FROM tasker.steps WHERE state <> 4 OR attempts <> 1");
        if (bad)
            die("%.0f steps not complete after exactly one attempt", bad);
        span[rep] = end - start_wall;
        rate[rep] = (double)steps / span[rep];
        fprintf(stderr, "bench_pg: %s workers=%d threads=%d async=%d%s repeat %d: %.0f steps/s (%.3f s)\n",
                shape, opt.workers, opt.threads, opt.async, opt.concurrent ? " concurrent" : "", rep + 1,
                rate[rep], span[rep]);
        db_close(&d);
    }
    params p = {0};
    pf(&p, "\"shape\": \"%s\", \"tasks\": %ld, \"steps_per_task\": %d, \"steps\": %ld", shape, tasks,
       spt, steps);
    pf(&p, "\"workers\": %d, \"threads\": %d, \"async_complete\": %s, \"claim_batch\": %d, "
           "\"flush_max\": %d",
       opt.workers, opt.threads, opt.async ? "true" : "false", opt.claim_batch ? opt.claim_batch : 64,
       opt.flush_max ? opt.flush_max : 256);
    if (opt.concurrent) {
        pf(&p, "\"tasks_created\": \"concurrently, tasker_task_create from %d threads, unpaced\"",
           opt.producers);
        pf(&p, "\"from\": \"first tasker_task_create\", \"to\": \"last task final (its notification)\"");
        pf_list(&p, "create_tasks_per_s_all", creates, (size_t)R, "%.0f");
    } else {
        pf(&p, "\"tasks_created\": \"beforehand (one SQL statement calling tasker.create_task per task)\"");
        pf(&p, "\"from\": \"first claim (min steps.started_at)\", \"to\": \"last task final (its "
               "notification)\"");
    }
    pf(&p, "\"handlers\": \"C no-op\"");
    pf(&p, "\"best\": %.0f, \"worst\": %.0f", maxof(rate, (size_t)R), minof(rate, (size_t)R));
    pf_list(&p, "all", rate, (size_t)R, "%.0f");
    pf_list(&p, "span_s", span, (size_t)R, "%.3f");
    pf_list(&p, "db_span_s", dbspan, (size_t)R, "%.3f");
    pf(&p, "\"wal_bytes_per_step\": %.0f, \"wal_records_per_step\": %.1f%s", median(walb, (size_t)R),
       median(walr, (size_t)R), opt.concurrent ? ", \"wal_includes\": \"task creation\"" : "");
    char bench[96];
    snprintf(bench, sizeof bench, "postgres.%s%s", !strcmp(shape, "single") ? "jobs" : shape,
             opt.concurrent ? ".concurrent_create" : "");
    double m = median(rate, (size_t)R);
    emit(bench, "throughput", m, !strcmp(shape, "single") ? "jobs/s" : "steps/s", &p);
    free(rate);
    free(span);
    free(dbspan);
    free(creates);
    free(walb);
    free(walr);
    return m;
}

/* Loads the workers' start records into bench_start (uuid, at_ns, attempt). */
static long load_records(PGconn *c, const workers *w)
{
    PQclear(q(c, "CREATE TEMP TABLE bench_start (uuid uuid, at_ns bigint, attempt int)"));
    PGresult *r = PQexec(c, "COPY bench_start FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN)
        die("COPY: %s", PQresultErrorMessage(r));
    PQclear(r);
    long lines = 0;
    char buf[65536];
    for (int i = 0; i < w->n; i++) {
        FILE *f = fopen(w->record[i], "r");
        if (!f)
            die("%s: %s", w->record[i], strerror(errno));
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, f)) > 0) {
            for (size_t j = 0; j < k; j++)
                lines += buf[j] == '\n';
            if (PQputCopyData(c, buf, (int)k) != 1)
                die("COPY: %s", PQerrorMessage(c));
        }
        fclose(f);
        unlink(w->record[i]);
    }
    if (PQputCopyEnd(c, NULL) != 1)
        die("COPY: %s", PQerrorMessage(c));
    while ((r = PQgetResult(c))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("COPY: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    return lines;
}

/* Returns the median p99 (ms). */
static double mode_latency(void)
{
    if (opt.rate <= 0 || opt.duration <= 0)
        die("latency needs --rate STEPS_PER_S and --duration S");
    const int spt = 10;
    double task_rate = opt.rate / spt;
    long tasks = (long)(task_rate * opt.duration + 0.5);
    if (tasks < 1)
        tasks = 1;
    int R = opt.repeats;
    double *p50 = calloc((size_t)R, sizeof(double)), *p90 = calloc((size_t)R, sizeof(double));
    double *p99 = calloc((size_t)R, sizeof(double)), *pmax = calloc((size_t)R, sizeof(double));
    double *c50 = calloc((size_t)R, sizeof(double)), *c99 = calloc((size_t)R, sizeof(double));
    double *offered = calloc((size_t)R, sizeof(double)), *late99 = calloc((size_t)R, sizeof(double));
    double *thr = calloc((size_t)R, sizeof(double));
    char tmpl[] = "/tmp/bench_pg.XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (!dir)
        die("mkdtemp: %s", strerror(errno));
    chmod(dir, 0755);
    for (int rep = 0; rep < R; rep++) {
        benchdb d;
        db_open(&d, 1);
        int n_coords = 0;
        tasker_coordinator **coords = producers_open(d.url, "diamond10", &n_coords);
        PQclear(q(d.c, "VACUUM ANALYZE"));
        listen_done(d.c);
        workers w;
        workers_start(&w, d.url, opt.workers, dir);
        pacer pc = {coords, n_coords, 0, tasks, 0, 1.0 / task_rate, NULL, NULL, 0,
                    PTHREAD_MUTEX_INITIALIZER, "diamond10"};
        pc.t0 = mono_s() + 0.2;
        producers_run(&pc);
        wait_done(d.c, tasks, 600);
        workers_stop(&w);
        long n = load_records(d.c, &w);
        if (n != tasks * spt)
            die("%ld handler starts recorded, wanted %ld", n, tasks * spt);
        PGresult *r = q(d.c,
                        "SELECT count(*), "
                        "percentile_cont(0.5) WITHIN GROUP (ORDER BY l), "
                        "percentile_cont(0.9) WITHIN GROUP (ORDER BY l), "
                        "percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l), "
                        "percentile_cont(0.5) WITHIN GROUP (ORDER BY cl), "
                        "percentile_cont(0.99) WITHIN GROUP (ORDER BY cl), "
                        "extract(epoch FROM max(fin) - min(st)) "
                        "FROM (SELECT (b.at_ns / 1e6 - extract(epoch FROM s.enqueued_at) * 1e3)::float8 AS l, "
                        "             extract(epoch FROM s.started_at - s.enqueued_at)::float8 * 1e3 AS cl, "
                        "             s.started_at AS st, s.finished_at AS fin "
                        "      FROM bench_start b JOIN tasker.steps s ON s.uuid = b.uuid "
                        "      WHERE b.attempt = 1 AND s.attempts = 1) x");
        if (atol(PQgetvalue(r, 0, 0)) != tasks * spt)
            die("only %s of %ld steps matched their start record", PQgetvalue(r, 0, 0), tasks * spt);
        p50[rep] = atof(PQgetvalue(r, 0, 1));
        p90[rep] = atof(PQgetvalue(r, 0, 2));
        p99[rep] = atof(PQgetvalue(r, 0, 3));
        pmax[rep] = atof(PQgetvalue(r, 0, 4));
        c50[rep] = atof(PQgetvalue(r, 0, 5));
        c99[rep] = atof(PQgetvalue(r, 0, 6));
        thr[rep] = (double)(tasks * spt) / atof(PQgetvalue(r, 0, 7));
        PQclear(r);
        offered[rep] = (double)(tasks * spt) / (pc.last_done - pc.t0);
        late99[rep] = pct(pc.late, (size_t)tasks, 99) * 1e3;
        fprintf(stderr,
                "bench_pg: latency rate=%.0f repeat %d: p50 %.2f ms p90 %.2f p99 %.2f max %.1f "
                "(offered %.0f steps/s, producer lateness p99 %.1f ms)\n",
                opt.rate, rep + 1, p50[rep], p90[rep], p99[rep], pmax[rep], offered[rep], late99[rep]);
        free(pc.late);
        free(pc.create_s);
        producers_close(coords, n_coords);
        db_close(&d);
    }
    rmdir(dir);
    params p = {0};
    pf(&p, "\"shape\": \"diamond10\", \"target_rate_steps_per_s\": %.0f, \"peak_steps_per_s\": %.0f, "
           "\"load_fraction\": %.3f, \"peak_basis\": \"%s\"",
       opt.rate, opt.peak, opt.peak > 0 ? opt.rate / opt.peak : 0, opt.basis ? opt.basis : "given");
    pf(&p, "\"duration_s\": %.1f, \"tasks\": %ld, \"steps\": %ld, \"producers\": %d", opt.duration, tasks,
       tasks * spt, opt.producers);
    pf(&p, "\"workers\": %d, \"threads\": %d, \"async_complete\": %s", opt.workers, opt.threads,
       opt.async ? "true" : "false");
    pf(&p, "\"tasks_created\": \"concurrently, paced, tasker_task_create\"");
    pf(&p, "\"from\": \"steps.enqueued_at (start of the transaction that made the step ready)\"");
    pf(&p, "\"to\": \"handler entry (CLOCK_REALTIME in the worker process)\"");
    pf_list(&p, "p50_ms_all", p50, (size_t)R, "%.3f");
    pf_list(&p, "p90_ms_all", p90, (size_t)R, "%.3f");
    pf_list(&p, "p99_ms_all", p99, (size_t)R, "%.3f");
    pf_list(&p, "max_ms_all", pmax, (size_t)R, "%.3f");
    pf_list(&p, "ready_to_claim_p50_ms_all", c50, (size_t)R, "%.3f");
    pf_list(&p, "ready_to_claim_p99_ms_all", c99, (size_t)R, "%.3f");
    pf_list(&p, "offered_steps_per_s_all", offered, (size_t)R, "%.0f");
    pf_list(&p, "completed_steps_per_s_all", thr, (size_t)R, "%.0f");
    pf_list(&p, "producer_lateness_p99_ms_all", late99, (size_t)R, "%.2f");
    emit("postgres.ready_to_start", "latency_p50", median(p50, (size_t)R), "ms", &p);
    double m99 = median(p99, (size_t)R);
    emit("postgres.ready_to_start", "latency_p99", m99, "ms", &p);
    free(p50);
    free(p90);
    free(p99);
    free(pmax);
    free(c50);
    free(c99);
    free(offered);
    free(late99);
    free(thr);
    return m99;
}

/* ---- end-to-end latency on an idle system -------------------------------------------------- */

/* Returns the median p50 (ms). */
static double mode_e2e(void)
{
    const char *shape = opt.shape ? opt.shape : "linear4";
    int spt = shape_steps(shape);
    int R = opt.repeats, N = opt.runs;
    double *p50 = calloc((size_t)R, sizeof(double)), *p90 = calloc((size_t)R, sizeof(double));
    double *p99 = calloc((size_t)R, sizeof(double)), *db50 = calloc((size_t)R, sizeof(double));
    double *v = calloc((size_t)N, sizeof(double));
    for (int rep = 0; rep < R; rep++) {
        benchdb d;
        db_open(&d, 1);
        tasker_coordinator *c = open_pg_coord(d.url);
        register_template(c, shape);
        workers w;
        workers_start(&w, d.url, 1, NULL);
        tasker_task_request req = TASKER_TASK_REQUEST_INIT;
        req.ns = "bench";
        req.name = shape;
        char uuid[TASKER_UUID_BUFSIZE];
        tasker_task_state st;
        /* Warm-up: connections and prepared statements on both sides. */
        for (int i = 0; i < 20; i++)
            if (tasker_task_create(uuid, c, &req) || tasker_task_wait(&st, c, uuid, 10000) ||
                st != TASKER_TASK_COMPLETE)
                die_tasker("warm-up task");
        PQclear(q(d.c, "DELETE FROM tasker.transitions; DELETE FROM tasker.steps; "
                       "DELETE FROM tasker.tasks"));
        PQclear(q(d.c, "VACUUM ANALYZE"));
        sleep_s(0.2);
        for (int i = 0; i < N; i++) {
            double t0 = mono_s();
            if (tasker_task_create(uuid, c, &req))
                die_tasker("task_create");
            if (tasker_task_wait(&st, c, uuid, 10000) || st != TASKER_TASK_COMPLETE)
                die_tasker("task_wait");
            v[i] = (mono_s() - t0) * 1e3;
            /* Idle between runs: each task runs on a quiet system. */
            sleep_s(0.01);
        }
        p50[rep] = pct(v, (size_t)N, 50);
        p90[rep] = pct(v, (size_t)N, 90);
        p99[rep] = pct(v, (size_t)N, 99);
        db50[rep] = q_double(d.c, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY "
                                  "extract(epoch FROM finished_at - created_at) * 1e3) FROM tasker.tasks");
        double ok = q_double(d.c, "SELECT count(*) FROM tasker.tasks WHERE state = 2");
        if (ok != N)
            die("%.0f of %d tasks complete", ok, N);
        fprintf(stderr, "bench_pg: e2e %s repeat %d: p50 %.2f ms p90 %.2f p99 %.2f (database %.2f)\n", shape,
                rep + 1, p50[rep], p90[rep], p99[rep], db50[rep]);
        workers_stop(&w);
        tasker_coordinator_close(c);
        db_close(&d);
    }
    params p = {0};
    pf(&p, "\"shape\": \"%s\", \"steps_per_task\": %d, \"runs\": %d, \"workers\": 1, \"threads\": %d, "
           "\"async_complete\": %s",
       shape, spt, N, opt.threads, opt.async ? "true" : "false");
    pf(&p, "\"from\": \"before tasker_task_create\", \"to\": \"tasker_task_wait returned complete\", "
           "\"pause_between_runs_ms\": 10, \"producer\": \"separate process from the worker\"");
    pf_list(&p, "p50_ms_all", p50, (size_t)R, "%.3f");
    pf_list(&p, "p90_ms_all", p90, (size_t)R, "%.3f");
    pf_list(&p, "p99_ms_all", p99, (size_t)R, "%.3f");
    pf_list(&p, "db_created_to_finished_p50_ms_all", db50, (size_t)R, "%.3f");
    char bench[64];
    snprintf(bench, sizeof bench, "postgres.%s.e2e", shape);
    double m = median(p50, (size_t)R);
    emit(bench, "latency_p50", m, "ms", &p);
    free(p50);
    free(p90);
    free(p99);
    free(db50);
    free(v);
    return m;
}

/* ---- readiness: C counters vs the SQL function ------------------------------------------------ */

/* One run of the 1,000-step DAG on a memory coordinator, poll mode. */
static double c_readiness_run(tasker_coordinator *c, size_t *claims_out)
{
    static tasker_step *steps[1024];
    static int rcs[1024];
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "bench";
    req.name = "chain1000";
    char uuid[TASKER_UUID_BUFSIZE];
    size_t done = 0, calls = 0;
    double t0 = mono_s();
    if (tasker_task_create(uuid, c, &req))
        die_tasker("memory task_create");
    for (;;) {
        size_t n = 0;
        if (tasker_coordinator_claim(steps, &n, c, 1024))
            die_tasker("claim");
        calls++;
        if (!n)
            break;
        if (tasker_steps_succeed(rcs, steps, NULL, NULL, n))
            die_tasker("steps_succeed");
        for (size_t i = 0; i < n; i++)
            if (rcs[i])
                die("succeed returned %s", tasker_strerror(rcs[i]));
        done += n;
    }
    double t = mono_s() - t0;
    tasker_task_state st;
    if (tasker_task_wait(&st, c, uuid, 0) || st != TASKER_TASK_COMPLETE || done != 1000)
        die("memory run: %zu steps done, task not complete", done);
    if (tasker_task_forget(c, uuid))
        die_tasker("forget");
    *claims_out = calls;
    return t;
}

/* Returns the ratio. */
static double mode_readiness(void)
{
    /* (a) C: memory coordinator, poll mode. */
    tasker_coordinator *mc;
    if (tasker_coordinator_open(&mc, NULL))
        die_tasker("memory coordinator");
    if (tasker_handler_register(mc, "noop", NULL, NULL, NULL))
        die_tasker("handler");
    register_template(mc, "chain1000");
    int RC = opt.runs > 0 ? opt.runs : 200;
    double *cv = calloc((size_t)RC, sizeof(double));
    size_t claims = 0;
    for (int i = 0; i < 20; i++)
        c_readiness_run(mc, &claims);
    for (int i = 0; i < RC; i++)
        cv[i] = c_readiness_run(mc, &claims);
    tasker_coordinator_close(mc);
    double c_med = median(cv, (size_t)RC), c_best = minof(cv, (size_t)RC);

    /* (b) SQL: tasker.step_readiness over a task of the same template. */
    int R = opt.repeats;
    const int K = 30;
    double *sv = calloc((size_t)R * (size_t)K, sizeof(double)), *exe = calloc((size_t)R, sizeof(double));
    for (int rep = 0; rep < R; rep++) {
        benchdb d;
        db_open(&d, 1);
        tasker_coordinator *c = open_pg_coord(d.url);
        register_template(c, "chain1000");
        tasker_task_request req = TASKER_TASK_REQUEST_INIT;
        req.ns = "bench";
        req.name = "chain1000";
        char uuid[TASKER_UUID_BUFSIZE];
        if (tasker_task_create(uuid, c, &req))
            die_tasker("task_create");
        tasker_coordinator_close(c);
        PQclear(q(d.c, "VACUUM ANALYZE"));
        const char *vals[] = {uuid};
        PGresult *pr = PQprepare(d.c, "rd", "SELECT * FROM tasker.step_readiness($1::uuid)", 1, NULL);
        if (PQresultStatus(pr) != PGRES_COMMAND_OK)
            die("prepare: %s", PQresultErrorMessage(pr));
        PQclear(pr);
        for (int k = -3; k < K; k++) {
            double t0 = mono_s();
            PGresult *r = PQexecPrepared(d.c, "rd", 1, vals, NULL, NULL, 0);
            double t = mono_s() - t0;
            if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1000)
                die("step_readiness: %s (%d rows)", PQresultErrorMessage(r), PQntuples(r));
            int ready = 0;
            for (int i = 0; i < 1000; i++)
                ready += PQgetvalue(r, i, 2)[0] == 't';
            if (ready != 1)
                die("step_readiness says %d steps are ready, expected 1", ready);
            PQclear(r);
            if (k >= 0)
                sv[rep * K + k] = t;
        }
        PGresult *r = qp(d.c, "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM tasker.step_readiness($1::uuid)",
                         1, vals);
        const char *ej = PQgetvalue(r, 0, 0), *x = strstr(ej, "\"Execution Time\":");
        exe[rep] = x ? atof(x + strlen("\"Execution Time\":")) : 0;
        PQclear(r);
        db_close(&d);
    }
    double s_med = median(sv, (size_t)R * (size_t)K), s_best = minof(sv, (size_t)R * (size_t)K);
    double ratio = s_med / c_med;
    fprintf(stderr, "bench_pg: readiness: C whole DAG %.1f us (best %.1f), SQL one call %.2f ms (best %.2f): %.0fx\n",
            c_med * 1e6, c_best * 1e6, s_med * 1e3, s_best * 1e3, ratio);
    params p = {0};
    pf(&p, "\"dag\": \"100 diamond-10 blocks in a chain\", \"steps\": 1000, \"edges\": 1699");
    pf(&p, "\"c\": \"memory coordinator, poll mode: create the task, then claim / tasker_steps_succeed every "
           "step in dependency order (%zu claim calls); timed from create to the last completion\"",
       claims);
    pf(&p, "\"sql\": \"one call SELECT * FROM tasker.step_readiness(task) on a fresh task of the same "
           "template, all 1,000 rows fetched (client round trip)\"");
    pf(&p, "\"c_whole_dag_us\": %.2f, \"c_whole_dag_best_us\": %.2f, \"c_runs\": %d", c_med * 1e6,
       c_best * 1e6, RC);
    pf(&p, "\"sql_one_call_ms\": %.3f, \"sql_one_call_best_ms\": %.3f, \"sql_calls\": %d", s_med * 1e3,
       s_best * 1e3, R * K);
    pf_list(&p, "sql_server_execution_ms_all", exe, (size_t)R, "%.3f");
    pf(&p, "\"c_per_step_ns\": %.1f, \"sql_per_step_us\": %.2f", c_med * 1e9 / 1000, s_med * 1e6 / 1000);
    emit("postgres.readiness", "speedup", ratio, "ratio", &p);
    free(cv);
    free(sv);
    free(exe);
    return ratio;
}

/* ---- single-step jobs vs graphile-worker --------------------------------------------------- */

/* `url` with dbname replaced, as a postgres:// URL for node-postgres. */
static char *node_url(const char *db)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(opt.url, &err);
    if (!o)
        die("bad --database-url: %s", err ? err : "?");
    const char *host = NULL, *port = NULL, *user = NULL, *pass = NULL;
    for (PQconninfoOption *p = o; p->keyword; p++) {
        if (!p->val || !*p->val)
            continue;
        if (!strcmp(p->keyword, "host") || (!strcmp(p->keyword, "hostaddr") && !host))
            host = p->val;
        else if (!strcmp(p->keyword, "port"))
            port = p->val;
        else if (!strcmp(p->keyword, "user"))
            user = p->val;
        else if (!strcmp(p->keyword, "password"))
            pass = p->val;
    }
    char *out = calloc(1, 4096);
    size_t n = 0;
    const char *parts[] = {user, pass, host, db};
    char enc[4][1024];
    for (int k = 0; k < 4; k++) {
        enc[k][0] = '\0';
        size_t e = 0;
        for (const char *c = parts[k]; c && *c && e < sizeof enc[k] - 4; c++) {
            if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                strchr("-._~", *c))
                enc[k][e++] = *c;
            else
                e += (size_t)snprintf(enc[k] + e, sizeof enc[k] - e, "%%%02X", (unsigned char)*c);
        }
        enc[k][e] = '\0';
    }
    n += (size_t)snprintf(out + n, 4096 - n, "postgres://%s%s%s%s", enc[0], pass ? ":" : "",
                          enc[1], user ? "@" : "");
    if (host && host[0] == '/') /* a socket directory goes in the query string */
        n += (size_t)snprintf(out + n, 4096 - n, "/%s?host=%s%s%s", enc[3], enc[2], port ? "&port=" : "",
                              port ? port : "");
    else
        snprintf(out + n, 4096 - n, "%s%s%s/%s", host ? enc[2] : "localhost", port ? ":" : "",
                 port ? port : "", enc[3]);
    PQconninfoFree(o);
    return out;
}

/* Runs bench/pg/graphile/bench.js in a fresh database: `repeats` timed runs
 * after one untimed run in the same process (its first run is slower: the
 * JIT warms up).  Passes its JSON line through and returns its value (0 if
 * it could not run). */
static double graphile(const char *config, long jobs, int repeats)
{
    if (!opt.graphile_dir)
        return 0;
    benchdb d;
    db_open(&d, 0);
    char *url = node_url(d.name);
    char js[24], rs[16], script[PATH_MAX];
    snprintf(js, sizeof js, "%ld", jobs);
    snprintf(rs, sizeof rs, "%d", repeats);
    snprintf(script, sizeof script, "%s/bench.js", opt.graphile_dir);
    int p[2];
    if (pipe(p) != 0)
        die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        close(p[0]);
        close(p[1]);
        if (chdir(opt.graphile_dir) != 0)
            _exit(127);
        execlp("node", "node", script, "--database-url", url, "--jobs", js, "--repeats", rs,
               "--warmup", "1", "--config", config, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char buf[8192];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof buf - 1 && (k = read(p[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = '\0';
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    free(url);
    db_close(&d);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_pg: graphile-worker (%s) failed, status %d\n", config, st);
        return 0;
    }
    json_error_t je;
    json_t *j = json_loads(buf, JSON_DISABLE_EOF_CHECK, &je);
    double v = j ? json_number_value(json_object_get(j, "value")) : 0;
    json_decref(j);
    if (v <= 0) {
        fprintf(stderr, "bench_pg: no result from graphile-worker (%s): %s\n", config, buf);
        return 0;
    }
    if (!quiet)
        fputs(buf, stdout);
    if (n && buf[n - 1] != '\n')
        fputs("\n", stdout);
    fflush(stdout);
    return v;
}

static void jobs_ratio(double tasker, double other, const char *config, long jobs)
{
    params p = {0};
    pf(&p, "\"tasker_jobs_per_s\": %.0f, \"graphile_worker_jobs_per_s\": %.0f", tasker, other);
    pf(&p, "\"graphile_worker_config\": \"%s\", \"jobs\": %ld", config, jobs);
    pf(&p, "\"meaning\": \"tasker single-step jobs/s divided by graphile-worker jobs/s, medians, same "
           "server, same run\"");
    emit("postgres.jobs", !strcmp(config, "unbatched") ? "ratio_vs_graphile_worker_unbatched"
                                                       : "ratio_vs_graphile_worker_fastest",
         tasker / other, "ratio", &p);
}

/* The worker process counts the suite and the jobs line try. */
static const int worker_counts[] = {1, 2, 4};
#define N_WORKER_COUNTS (sizeof worker_counts / sizeof worker_counts[0])

/* mode_throughput at each worker count; the best median (and, if asked,
 * its worker count). */
static double throughput_by_workers(int *best_workers)
{
    double best = 0;
    for (size_t i = 0; i < N_WORKER_COUNTS; i++) {
        opt.workers = worker_counts[i];
        double v = mode_throughput();
        if (v > best && best_workers)
            *best_workers = worker_counts[i];
        best = v > best ? v : best;
    }
    return best;
}

/* tasker and graphile-worker fastest back to back, opt.repeats rounds,
 * the order alternating: this machine's speed drifts from minute to
 * minute, so a ratio is taken within a round, not between two series run
 * minutes apart.  The figure is the median of the rounds' ratios. */
static void jobs_rounds(long jobs, int workers)
{
    int R = opt.repeats;
    double *t = calloc((size_t)R, sizeof *t), *g = calloc((size_t)R, sizeof *g);
    double *ratio = calloc((size_t)R, sizeof *ratio);
    opt.repeats = 1;
    opt.workers = workers;
    quiet = 1;
    for (int r = 0; r < R; r++) {
        if (r % 2 == 0)
            t[r] = mode_throughput();
        g[r] = graphile("fast", jobs, 1);
        if (r % 2 == 1)
            t[r] = mode_throughput();
        ratio[r] = g[r] > 0 ? t[r] / g[r] : 0;
        fprintf(stderr, "bench_pg: jobs round %d: tasker %.0f, graphile-worker %.0f, ratio %.3f\n",
                r + 1, t[r], g[r], ratio[r]);
    }
    quiet = 0;
    opt.repeats = R;
    params p = {0};
    pf(&p, "\"tasker_workers\": %d, \"graphile_worker_config\": \"local_queue+batched_completion\", "
           "\"jobs\": %ld", workers, jobs);
    pf(&p, "\"meaning\": \"tasker single-step jobs/s (at its best worker count) divided by "
           "graphile-worker jobs/s, run back to back in each round (order alternating); median of "
           "the rounds\"");
    pf_list(&p, "all", ratio, (size_t)R, "%.3f");
    pf_list(&p, "tasker_jobs_per_s_all", t, (size_t)R, "%.0f");
    pf_list(&p, "graphile_worker_jobs_per_s_all", g, (size_t)R, "%.0f");
    emit("postgres.jobs", "ratio_vs_graphile_worker_fastest_paired", median(ratio, (size_t)R), "ratio",
         &p);
    free(t);
    free(g);
    free(ratio);
}

/* tasker single-step jobs at 1, 2 and 4 worker processes, then
 * graphile-worker fastest and unbatched, then the ratios; then paired
 * rounds at tasker's best worker count. */
static void mode_jobs(void)
{
    long jobs = opt.tasks > 0 ? opt.tasks : 20000;
    opt.shape = "single";
    opt.tasks = (int)jobs;
    opt.concurrent = 0;
    int workers = 1;
    double best = throughput_by_workers(&workers);
    double fast = graphile("fast", jobs, opt.repeats);
    double plain = graphile("unbatched", jobs, opt.repeats);
    if (fast > 0)
        jobs_ratio(best, fast, "local_queue+batched_completion", jobs);
    if (plain > 0)
        jobs_ratio(best, plain, "unbatched", jobs);
    if (fast > 0)
        jobs_rounds(jobs, workers);
}

/* ---- the whole suite (bench/run postgres) -------------------------------------------------- */

static void mode_suite(void)
{
    int R = opt.repeats, R3 = opt.repeats < 3 ? opt.repeats : 3;
    /* 1. postgres.diamond10 at 1, 2, 4 worker processes, asynchronous
     *    completions (the fastest configuration), 16 threads each. */
    opt.shape = "diamond10";
    opt.tasks = 1000;
    opt.threads = 16;
    opt.async = 1;
    opt.concurrent = 0;
    throughput_by_workers(NULL);
    /* 2. The same with the default (waiting) completions, 128 threads each
     *    (a flush holds as many completions as threads wait). */
    opt.async = 0;
    opt.threads = 128;
    opt.repeats = R3;
    throughput_by_workers(NULL);
    /* 3. Sustained peak: tasks created while the workers run, at 1, 2 and
     *    4 worker processes (on a small machine the producers, the workers
     *    and the server share the CPUs, so the best count can differ). */
    opt.async = 1;
    opt.threads = 16;
    opt.concurrent = 1;
    double sustained = throughput_by_workers(NULL);
    opt.concurrent = 0;
    /* 4. Ready -> start latency at half of the sustained peak (the highest
     *    rate the system keeps up with while it also creates the tasks), at
     *    1, 2 and 4 worker processes: the best worker count for latency need
     *    not be the one for throughput.  (Half of the created-beforehand peak
     *    is more than the system sustains while creating tasks: that would
     *    measure a growing queue.) */
    opt.duration = 8;
    opt.peak = sustained;
    opt.rate = sustained / 2;
    opt.basis = "postgres.diamond10.concurrent_create (tasks created while running, best "
                "worker count)";
    for (size_t i = 0; i < N_WORKER_COUNTS; i++) {
        opt.workers = worker_counts[i];
        mode_latency();
    }
    /* 5. Readiness: C counters vs the SQL function. */
    opt.repeats = R3;
    mode_readiness();
    /* 6. linear-4 end to end on an idle system, default configuration. */
    opt.async = 0;
    opt.threads = 16;
    opt.shape = "linear4";
    opt.runs = 200;
    mode_e2e();
    /* 7. Single-step jobs vs graphile-worker. */
    opt.async = 1;
    opt.threads = 16;
    opt.claim_batch = 256;
    opt.tasks = 20000;
    mode_jobs();
    (void)R;
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_pg [throughput|latency|e2e|readiness|jobs|suite] --database-url URL\n"
            "       [--shape diamond10|linear4|single] [--tasks N] [--workers W] [--threads T]\n"
            "       [--async] [--claim-batch B] [--flush-max F] [--repeats R] [--rate STEPS_PER_S]\n"
            "       [--duration S] [--producers P] [--runs N] [--peak STEPS_PER_S]\n"
            "       [--concurrent] [--worker-bin PATH] [--graphile-dir DIR] [--keep]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int i = 1;
    if (argc > 1 && argv[1][0] != '-') {
        opt.mode = argv[1];
        i = 2;
    }
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("--database-url"))
            opt.url = v;
        else if (ARG("--shape"))
            opt.shape = v;
        else if (ARG("--tasks"))
            opt.tasks = atoi(v);
        else if (ARG("--workers"))
            opt.workers = atoi(v);
        else if (ARG("--threads"))
            opt.threads = atoi(v);
        else if (ARG("--claim-batch"))
            opt.claim_batch = atoi(v);
        else if (ARG("--flush-max"))
            opt.flush_max = atoi(v);
        else if (ARG("--repeats"))
            opt.repeats = atoi(v);
        else if (ARG("--rate"))
            opt.rate = atof(v);
        else if (ARG("--duration"))
            opt.duration = atof(v);
        else if (ARG("--producers"))
            opt.producers = atoi(v);
        else if (ARG("--runs"))
            opt.runs = atoi(v);
        else if (ARG("--peak"))
            opt.peak = atof(v);
        else if (ARG("--worker-bin"))
            opt.worker_bin = v;
        else if (ARG("--graphile-dir"))
            opt.graphile_dir = v;
        else if (!strcmp(a, "--concurrent"))
            opt.concurrent = 1;
        else if (!strcmp(a, "--async"))
            opt.async = 1;
        else if (!strcmp(a, "--keep"))
            opt.keep = 1;
        else
            usage();
#undef ARG
    }
    if (!opt.url)
        opt.url = getenv("TASKER_DATABASE_URL");
    if (!opt.url)
        die("no --database-url (or TASKER_DATABASE_URL)");
    if (opt.repeats < 1 || opt.threads < 1 || opt.producers < 1 || opt.runs < 1)
        usage();
    /* The worker program sits next to this one. */
    static char bin[PATH_MAX];
    if (!opt.worker_bin) {
        ssize_t k = readlink("/proc/self/exe", bin, sizeof bin - 16);
        if (k <= 0)
            die("cannot find my own path; pass --worker-bin");
        bin[k] = '\0';
        snprintf(strrchr(bin, '/') ? strrchr(bin, '/') + 1 : bin, 16, "pg_worker");
        opt.worker_bin = bin;
    }
    if (strcmp(opt.mode, "readiness") && access(opt.worker_bin, X_OK) != 0)
        die("worker program %s: %s", opt.worker_bin, strerror(errno));

    admin = PQconnectdb(opt.url);
    if (PQstatus(admin) != CONNECTION_OK)
        die("%s", PQerrorMessage(admin));
    read_settings();
    if (!strcmp(opt.mode, "throughput"))
        mode_throughput();
    else if (!strcmp(opt.mode, "latency"))
        mode_latency();
    else if (!strcmp(opt.mode, "e2e"))
        mode_e2e();
    else if (!strcmp(opt.mode, "readiness"))
        mode_readiness();
    else if (!strcmp(opt.mode, "jobs"))
        mode_jobs();
    else if (!strcmp(opt.mode, "suite"))
        mode_suite();
    else
        usage();
    PQfinish(admin);
    return 0;
}
