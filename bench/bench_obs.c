/*
 * bench_obs.c - the cost of observability on the memory store.
 *
 *  obs.overhead   memory.diamond10 (rounds of 1,000 diamond-10 tasks, one
 *                 worker, no-op handlers) with everything off
 *                 (metrics.enabled=false, no subscriber, no breaker) against
 *                 everything on (metrics, a subscriber to every event,
 *                 breakers with a failure threshold and a failure rate).
 *                 A round creates 1,000 tasks and waits for all of them; the
 *                 coordinator forgets finished tasks beyond 2,000 by itself
 *                 (memory.retain_finished, on both sides), so memory stays
 *                 flat and nothing is left untimed.  A chunk is 10 rounds
 *                 back to back and, when on, the wait for the subscriber to
 *                 have received every event so far; all of it is timed.  A
 *                 pair opens an "off" and an "on" coordinator side by side
 *                 and alternates their chunks (off-on, on-off, ...) until
 *                 each side has 0.5 s of them, so that other load on this
 *                 shared machine hits both sides alike (after one chunk per
 *                 side that is not counted).  Each repeat is two pairs; one
 *                 pair first warms up, not counted.
 *                 value = 100 * (1 - median over pairs of on/off), in %;
 *                 params carry the medians of each side, the spread of the
 *                 pair ratios, and the median pair ratio of CPU time (all
 *                 threads) per step, on/off.
 *  obs.events     events delivered to an in-process subscriber per second:
 *                 rounds of 10,000 diamond-10 tasks (32 events each) with a
 *                 subscriber to every event.  A round is timed from its first
 *                 task created to the subscriber having received every event
 *                 of the round (tasker_subscription_delivered); forgetting
 *                 the tasks in between is not timed.  Each run does rounds
 *                 until the timed part reaches 0.5 s; value = median rate.
 *
 * Output: JSON lines as DESIGN.md section 8.  Usage: bench_obs [--repeats N]
 * (default 9: 2N pairs for obs.overhead, N runs for obs.events).
 * For profilers (callgrind counts instructions per step):
 *   bench_obs --profile off|on [--rounds R]   one chunk of R rounds (default 5)
 */
#define _GNU_SOURCE

#include <tasker.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_RUN_S 0.5
#define EVENTS_PER_TASK 32 /* task created + completed, 10 x enqueued/started/succeeded */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the whole process (every thread), in seconds. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check(int rc, const char *what)
{
    if (rc == TASKER_OK)
        return;
    fprintf(stderr, "bench_obs: %s: %s: %s\n", what, tasker_strerror(rc),
            tasker_error_last()->message);
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts a copy). */
static double median(const double *v, size_t n)
{
    double *s = malloc(n * sizeof *s);
    if (!s)
        exit(1);
    memcpy(s, v, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_double);
    double m = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;
    free(s);
    return m;
}

static double min_of(const double *v, size_t n)
{
    double m = v[0];
    for (size_t i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double max_of(const double *v, size_t n)
{
    double m = v[0];
    for (size_t i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static int noop(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, NULL, 0);
}

static atomic_ulong seen;

/* The subscriber: counts what it gets.  Only its delivery thread writes the
 * count, so a plain load and store (no locked add) keep it exact. */
static void count_event(const tasker_event *ev, void *ud)
{
    (void)ev;
    (void)ud;
    atomic_store_explicit(&seen, atomic_load_explicit(&seen, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* `retain`: memory.retain_finished (0: keep every finished task). */
static tasker_coordinator *open_diamond(int everything_on, int retain)
{
    tasker_config *cfg;
    check(tasker_config_new(&cfg), "config");
    if (retain) {
        char v[32];
        snprintf(v, sizeof v, "%d", retain);
        check(tasker_config_set(cfg, "memory.retain_finished", v), "config");
    }
    if (everything_on) {
        check(tasker_config_set(cfg, "breaker.failure_threshold", "5"), "config");
        check(tasker_config_set(cfg, "breaker.failure_rate_percent", "50"), "config");
    } else {
        check(tasker_config_set(cfg, "metrics.enabled", "false"), "config");
    }
    tasker_coordinator *c;
    check(tasker_coordinator_open(&c, cfg), "open");
    tasker_config_free(cfg);
    check(tasker_handler_register(c, "noop", noop, NULL, NULL), "handler");
    tasker_template *t;
    check(tasker_template_new(&t, "bench", "diamond10", "1"), "template");
    check(tasker_template_add_step(t, "root", "noop", NULL, 0, NULL), "step");
    const char *root[] = {"root"};
    char names[8][8];
    const char *mids[8];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "m%d", i);
        mids[i] = names[i];
        check(tasker_template_add_step(t, names[i], "noop", root, 1, NULL), "step");
    }
    check(tasker_template_add_step(t, "sink", "noop", mids, 8, NULL), "step");
    check(tasker_template_register(c, t), "register");
    tasker_template_free(t);
    return c;
}

/* Creates `n` diamond tasks and waits for all; returns wall seconds.  The
 * newest task is waited for first, as in the core benchmark
 * (bench_memory.c): one worker finishes them in about the order they were
 * made, so the waiting thread wakes about once per round.  Waiting oldest
 * first woke it at every task's end, and its wake-ups took the CPU from the
 * worker and the event delivery thread, on two CPUs. */
static double run_tasks(tasker_coordinator *c, int n, char (*uuids)[TASKER_UUID_BUFSIZE])
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "bench";
    req.name = "diamond10";
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        check(tasker_task_create(uuids[i], c, &req), "create");
    for (int i = n - 1; i >= 0; i--) {
        tasker_task_state st;
        check(tasker_task_wait(&st, c, uuids[i], -1), "wait");
        if (st != TASKER_TASK_COMPLETE) {
            fprintf(stderr, "bench_obs: a task ended %s\n", tasker_task_state_name(st));
            exit(1);
        }
    }
    return now_s() - t0;
}

static void forget_tasks(tasker_coordinator *c, int n, char (*uuids)[TASKER_UUID_BUFSIZE])
{
    for (int i = 0; i < n; i++)
        check(tasker_task_forget(c, uuids[i]), "forget");
}

/* Waits until the subscription has handled `target` events (delivered or
 * dropped). */
static void wait_delivered(tasker_subscription *sub, uint64_t target)
{
    while (tasker_subscription_delivered(sub) + tasker_subscription_dropped(sub) < target)
        sched_yield();
}

/* One side of the comparison: a coordinator with everything off or on, and
 * what its chunks have measured so far. */
typedef struct side {
    tasker_coordinator *c;
    tasker_subscription *sub;
    double s, cpu; /* timed wall and process CPU seconds */
    long rounds;
    uint64_t target; /* events emitted so far */
} side;

#define RETAIN 2000 /* finished tasks kept: two rounds */

static void side_open(side *x, int on)
{
    memset(x, 0, sizeof *x);
    x->c = open_diamond(on, RETAIN);
    if (on)
        check(tasker_subscribe(&x->sub, x->c, TASKER_EVENT_ALL, 0, count_event, NULL, NULL),
              "subscribe");
    check(tasker_coordinator_start(x->c, 1), "start");
}

/* One chunk, all of it timed: `rounds` rounds back to back (a round creates
 * `tasks` tasks and waits for all of them; the coordinator forgets finished
 * tasks beyond RETAIN by itself, on both sides alike), then, when on, the
 * wait for the subscriber to have received every event so far, so that its
 * work counts in full. */
static void side_chunk(side *x, int rounds, int tasks, char (*uuids)[TASKER_UUID_BUFSIZE])
{
    double c0 = cpu_s(), t0 = now_s();
    for (int r = 0; r < rounds; r++)
        run_tasks(x->c, tasks, uuids);
    x->target += (uint64_t)rounds * tasks * EVENTS_PER_TASK;
    if (x->sub)
        wait_delivered(x->sub, x->target);
    x->s += now_s() - t0;
    x->cpu += cpu_s() - c0;
    x->rounds += rounds;
}

static void side_close(side *x)
{
    check(tasker_unsubscribe(x->sub), "unsubscribe");
    check(tasker_coordinator_close(x->c), "close");
}

static double side_rate(const side *x, int tasks)
{
    return (double)x->rounds * tasks * 10 / x->s;
}

static double side_cpu_per_step(const side *x, int tasks)
{
    return x->cpu / ((double)x->rounds * tasks * 10);
}

#define CHUNK_ROUNDS 10 /* about 50 ms */

/* One obs.overhead pair: an "off" and an "on" coordinator side by side, on
 * fresh coordinators, their chunks alternating off-on, on-off, off-on, ...
 * until each side has MIN_RUN_S of timed chunks.  Load from elsewhere on the
 * machine that lasts longer than a chunk or two then slows both sides alike,
 * so the pair's ratio keeps little of it.  The idle side's threads sleep
 * meanwhile. */
static void overhead_pair(side *off, side *on, int tasks, char (*uuids)[TASKER_UUID_BUFSIZE])
{
    side_open(off, 0);
    side_open(on, 1);
    /* A fresh coordinator's first chunk is slower (tables growing, memory
     * first touched): one chunk each, not counted, so that the side that
     * goes first does not carry it. */
    side_chunk(off, CHUNK_ROUNDS, tasks, uuids);
    side_chunk(on, CHUNK_ROUNDS, tasks, uuids);
    off->s = off->cpu = on->s = on->cpu = 0;
    off->rounds = on->rounds = 0;
    for (int k = 0; off->s < MIN_RUN_S || on->s < MIN_RUN_S; k++) {
        side_chunk(k % 2 ? on : off, CHUNK_ROUNDS, tasks, uuids);
        side_chunk(k % 2 ? off : on, CHUNK_ROUNDS, tasks, uuids);
    }
    side_close(off);
    side_close(on);
}

static void line(const char *bench, const char *metric, double value, const char *unit,
                 const char *params)
{
    printf("{\"bench\": \"%s\", \"metric\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", "
           "\"params\": %s}\n",
           bench, metric, value, unit, params);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned repeats = 9;
    const char *profile = NULL;
    int profile_rounds = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile") && i + 1 < argc)
            profile = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            profile_rounds = atoi(argv[++i]);
    }
    if (repeats < 1)
        repeats = 1;

    enum { TASKS = 1000, EVENT_TASKS = 10000 };
    char(*uuids)[TASKER_UUID_BUFSIZE] = malloc(sizeof *uuids * EVENT_TASKS);
    size_t nalloc = 2 * (size_t)repeats;
    double *off = malloc(sizeof(double) * nalloc), *on = malloc(sizeof(double) * nalloc);
    double *ratio = malloc(sizeof(double) * nalloc);
    double *cpu_ratio = malloc(sizeof(double) * nalloc);
    if (!uuids || !off || !on || !ratio || !cpu_ratio)
        return 1;

    if (profile) {
        side x;
        side_open(&x, !strcmp(profile, "on"));
        side_chunk(&x, profile_rounds > 0 ? profile_rounds : 1, TASKS, uuids);
        side_close(&x);
        fprintf(stderr, "bench_obs: %s: %.0f steps/s, %.0f ns CPU per step\n", profile,
                side_rate(&x, TASKS), side_cpu_per_step(&x, TASKS) * 1e9);
        free(uuids);
        free(off);
        free(on);
        free(ratio);
        free(cpu_ratio);
        return 0;
    }

    side a, b;
    overhead_pair(&a, &b, TASKS, uuids); /* warm-up, not counted */
    unsigned pairs = 2 * repeats;
    for (unsigned r = 0; r < pairs; r++) {
        overhead_pair(&a, &b, TASKS, uuids);
        off[r] = side_rate(&a, TASKS);
        on[r] = side_rate(&b, TASKS);
        ratio[r] = on[r] / off[r];
        cpu_ratio[r] = side_cpu_per_step(&b, TASKS) / side_cpu_per_step(&a, TASKS);
    }
    double moff = median(off, pairs), mon = median(on, pairs);
    double mratio = median(ratio, pairs);
    char params[1024];
    snprintf(params, sizeof params,
             "{\"tasks_per_round\": %d, \"rounds_per_chunk\": %d, \"retain_finished\": %d, "
             "\"min_s_per_side\": %.1f, \"workers\": 1, \"pairs\": %u, "
             "\"wait_order\": \"newest task first\", "
             "\"off_steps_per_s\": %.0f, \"on_steps_per_s\": %.0f, "
             "\"on_off_ratio_median\": %.4f, \"on_off_ratio_min\": %.4f, "
             "\"on_off_ratio_max\": %.4f, \"cpu_per_step_on_off_ratio_median\": %.4f, "
             "\"on\": \"metrics + subscriber to every event + "
             "breakers (threshold 5, rate 50%%)\"}",
             TASKS, CHUNK_ROUNDS, RETAIN, MIN_RUN_S, pairs, moff, mon, mratio,
             min_of(ratio, pairs),
             max_of(ratio, pairs), median(cpu_ratio, pairs));
    line("obs.overhead", "overhead", 100.0 * (1.0 - mratio), "%", params);

    /* obs.events: runs of rounds of EVENT_TASKS tasks, each run until its
     * timed part lasts MIN_RUN_S; one warm-up run first, not counted. */
    double *rate = off; /* reuse */
    unsigned long dropped_max = 0, events_min = 0;
    for (unsigned r = 0; r < repeats + 1; r++) {
        tasker_coordinator *c = open_diamond(1, 0);
        tasker_subscription *sub;
        atomic_store(&seen, 0);
        check(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, count_event, NULL, NULL),
              "subscribe");
        check(tasker_coordinator_start(c, 1), "start");
        double s = 0;
        uint64_t target = 0;
        while (s < MIN_RUN_S) {
            double t0 = now_s();
            run_tasks(c, EVENT_TASKS, uuids);
            target += (uint64_t)EVENT_TASKS * EVENTS_PER_TASK;
            wait_delivered(sub, target);
            s += now_s() - t0;
            forget_tasks(c, EVENT_TASKS, uuids);
        }
        unsigned long dropped = (unsigned long)tasker_subscription_dropped(sub);
        check(tasker_unsubscribe(sub), "unsubscribe");
        check(tasker_coordinator_close(c), "close");
        unsigned long events = atomic_load(&seen);
        if (events + dropped != target) {
            fprintf(stderr, "bench_obs: %lu events delivered + %lu dropped, expected %llu\n",
                    events, dropped, (unsigned long long)target);
            return 1;
        }
        if (r == 0)
            continue;
        rate[r - 1] = (double)events / s;
        if (dropped > dropped_max)
            dropped_max = dropped;
        if (!events_min || events < events_min)
            events_min = events;
    }
    snprintf(params, sizeof params,
             "{\"tasks_per_round\": %d, \"min_run_s\": %.1f, \"workers\": 1, "
             "\"repeats\": %u, \"events_per_run_min\": %lu, \"dropped_max\": %lu, "
             "\"buffer_events\": 65536, \"min_events_per_s\": %.0f, "
             "\"max_events_per_s\": %.0f}",
             EVENT_TASKS, MIN_RUN_S, repeats, events_min, dropped_max, min_of(rate, repeats),
             max_of(rate, repeats));
    line("obs.events", "throughput", median(rate, repeats), "events/s", params);
    free(uuids);
    free(off);
    free(on);
    free(ratio);
    free(cpu_ratio);
    return 0;
}
