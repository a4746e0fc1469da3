/*
 * pg_worker - one worker process of the postgres benchmarks (bench_pg).
 *
 *   pg_worker --database-url URL [--threads T] [--async] [--claim-batch B]
 *             [--flush-max F] [--record FILE]
 *
 * Opens its own coordinator on the database (store = postgres), registers
 * the no-op C handler "noop" and runs T worker threads until SIGTERM or
 * SIGINT.  It is a program of its own, started by bench_pg once per worker,
 * because that is how tasker is deployed: separate processes sharing one
 * PostgreSQL, with no state in common but the database.
 *
 * Once the threads run it writes "ready\n" on stdout (bench_pg waits for it).
 * With --record, the handler notes the wall-clock time (CLOCK_REALTIME, the
 * clock PostgreSQL's now() reads on this machine) at which it started each
 * step; on exit the list is written to FILE as tab-separated lines
 * "step_uuid<TAB>unix_ns<TAB>attempt", which bench_pg loads into the database
 * to compare with steps.enqueued_at.  On exit a line of counters
 * ("stats ...") goes to stderr when BENCH_PG_VERBOSE is set.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <time.h>

#include "store/postgres.h" /* tk_pg_stats: round trips, for BENCH_PG_VERBOSE */
#include "tasker.h"

typedef struct rec {
    char uuid[TASKER_UUID_BUFSIZE];
    uint32_t attempt;
    int64_t at_ns;
} rec;

static struct {
    pthread_mutex_t mu;
    rec *v;
    size_t n, cap;
    int on;
    int oom;
} recs = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, 0, 0};

static void die(const char *what)
{
    const tasker_error *e = tasker_error_last();
    fprintf(stderr, "pg_worker: %s: %s (%s)\n", what, e->message, tasker_strerror(e->code));
    exit(1);
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The benchmarked handler: does nothing but succeed.  Recording is one
 * clock read and a short critical section, a few hundred nanoseconds next
 * to the milliseconds a database round trip takes. */
static int noop(tasker_step *step, void *ud)
{
    (void)ud;
    if (recs.on) {
        int64_t t = wall_ns();
        pthread_mutex_lock(&recs.mu);
        if (recs.n == recs.cap) {
            size_t cap = recs.cap ? recs.cap * 2 : 65536;
            rec *v = realloc(recs.v, cap * sizeof *v);
            if (v) {
                recs.v = v;
                recs.cap = cap;
            }
        }
        if (recs.n < recs.cap) {
            rec *r = &recs.v[recs.n++];
            snprintf(r->uuid, sizeof r->uuid, "%s", tasker_step_uuid(step));
            r->attempt = tasker_step_attempt(step);
            r->at_ns = t;
        } else {
            recs.oom = 1;
        }
        pthread_mutex_unlock(&recs.mu);
    }
    return tasker_step_succeed(step, NULL, 0);
}

static void set(tasker_config *cfg, const char *key, const char *value)
{
    if (tasker_config_set(cfg, key, value))
        die(key);
}

int main(int argc, char **argv)
{
    const char *url = NULL, *record = NULL, *claim_batch = NULL, *flush_max = NULL;
    int threads = 16, async = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--database-url") && more)
            url = argv[++i];
        else if (!strcmp(a, "--threads") && more)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--claim-batch") && more)
            claim_batch = argv[++i];
        else if (!strcmp(a, "--flush-max") && more)
            flush_max = argv[++i];
        else if (!strcmp(a, "--record") && more)
            record = argv[++i];
        else if (!strcmp(a, "--async"))
            async = 1;
        else {
            fprintf(stderr, "usage: pg_worker --database-url URL [--threads T] [--async] "
                            "[--claim-batch B] [--flush-max F] [--record FILE]\n");
            return 2;
        }
    }
    if (!url || threads < 1 || threads > 256) {
        fprintf(stderr, "pg_worker: --database-url is required and --threads must be 1..256\n");
        return 2;
    }
    recs.on = record != NULL;
    /* bench_pg always stops its workers; if it dies first (killed, crashed),
     * its workers go with it rather than linger, whatever they are doing. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        return 1;

    /* Signals are taken synchronously by the main thread; every thread the
     * library starts inherits the blocked mask. */
    sigset_t set_;
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set_, NULL);

    tasker_config *cfg;
    tasker_coordinator *coord;
    if (tasker_config_new(&cfg))
        die("config");
    set(cfg, "store", "postgres");
    set(cfg, "database.url", url);
    set(cfg, "postgres.async_complete", async ? "true" : "false");
    if (claim_batch)
        set(cfg, "postgres.claim_batch", claim_batch);
    if (flush_max)
        set(cfg, "postgres.flush_max", flush_max);
    if (tasker_coordinator_open(&coord, cfg))
        die("open");
    tasker_config_free(cfg);
    if (tasker_handler_register(coord, "noop", noop, NULL, NULL))
        die("handler");
    if (tasker_coordinator_start(coord, (unsigned)threads))
        die("start");
    printf("ready\n");
    fflush(stdout);

    int sig;
    sigwait(&set_, &sig);
    /* Finish what is in flight (nothing is, once the benchmark saw every
     * task final), then close. */
    tasker_coordinator_stop(coord, 5000);
    if (getenv("BENCH_PG_VERBOSE")) {
        tk_pg_stat st;
        if (tk_pg_stats(coord, &st) == TASKER_OK)
            fprintf(stderr,
                    "stats worker=%d claimed=%lu claim_calls=%lu completed=%lu flushes=%lu "
                    "fenced=%lu\n",
                    st.worker_id, st.claimed, st.claim_calls, st.completed, st.flush_calls,
                    st.fenced);
    }
    tasker_coordinator_close(coord);

    if (record) {
        FILE *f = fopen(record, "w");
        if (!f) {
            perror(record);
            return 1;
        }
        for (size_t i = 0; i < recs.n; i++)
            fprintf(f, "%s\t%lld\t%u\n", recs.v[i].uuid, (long long)recs.v[i].at_ns,
                    recs.v[i].attempt);
        if (fclose(f) != 0) {
            perror(record);
            return 1;
        }
        if (recs.oom) {
            fprintf(stderr, "pg_worker: out of memory while recording start times\n");
            return 1;
        }
    }
    free(recs.v);
    return 0;
}
