/*
 * bench_obs.c - the cost of observability on the memory store.
 *
 *  obs.overhead   memory.diamond10 (1,000 diamond-10 tasks, one worker, no-op
 *                 handlers) with everything off (metrics.enabled=false, no
 *                 subscriber, no breaker) against everything on (metrics, a
 *                 subscriber to every event, breakers with a failure threshold
 *                 and a failure rate).  Runs alternate off/on on fresh
 *                 coordinators; value = 1 - median(on) / median(off), in %.
 *  obs.events     events delivered to an in-process subscriber per second:
 *                 10,000 diamond-10 tasks with a subscriber to every event;
 *                 wall time from the first task created to the subscription's
 *                 buffer drained (tasker_unsubscribe returned).
 *
 * Output: JSON lines as DESIGN.md section 8.  Usage: bench_obs [--repeats N]
 */
#define _GNU_SOURCE

#include <tasker.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static int noop(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, NULL, 0);
}

static atomic_ulong seen;

static void count_event(const tasker_event *ev, void *ud)
{
    (void)ev;
    (void)ud;
    atomic_fetch_add_explicit(&seen, 1, memory_order_relaxed);
}

static tasker_coordinator *open_diamond(int everything_on)
{
    tasker_config *cfg;
    check(tasker_config_new(&cfg), "config");
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

/* Creates `n` diamond tasks and waits for all; returns wall seconds. */
static double run_tasks(tasker_coordinator *c, int n, char (*uuids)[TASKER_UUID_BUFSIZE])
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "bench";
    req.name = "diamond10";
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        check(tasker_task_create(uuids[i], c, &req), "create");
    for (int i = 0; i < n; i++) {
        tasker_task_state st;
        check(tasker_task_wait(&st, c, uuids[i], -1), "wait");
        if (st != TASKER_TASK_COMPLETE) {
            fprintf(stderr, "bench_obs: a task ended %s\n", tasker_task_state_name(st));
            exit(1);
        }
    }
    return now_s() - t0;
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
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = (unsigned)atoi(argv[++i]);
    if (repeats < 1)
        repeats = 1;

    enum { TASKS = 1000, EVENT_TASKS = 10000 };
    char(*uuids)[TASKER_UUID_BUFSIZE] = malloc(sizeof *uuids * EVENT_TASKS);
    double *off = malloc(sizeof(double) * repeats), *on = malloc(sizeof(double) * repeats);
    if (!uuids || !off || !on)
        return 1;

    for (unsigned r = 0; r < repeats; r++) {
        for (int mode = 0; mode < 2; mode++) {
            tasker_coordinator *c = open_diamond(mode);
            tasker_subscription *sub = NULL;
            if (mode)
                check(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, count_event, NULL, NULL),
                      "subscribe");
            check(tasker_coordinator_start(c, 1), "start");
            double s = run_tasks(c, TASKS, uuids);
            (mode ? on : off)[r] = TASKS * 10 / s;
            check(tasker_unsubscribe(sub), "unsubscribe");
            check(tasker_coordinator_close(c), "close");
        }
    }
    double moff = median(off, repeats), mon = median(on, repeats);
    char params[512];
    snprintf(params, sizeof params,
             "{\"tasks\": %d, \"workers\": 1, \"repeats\": %u, \"off_steps_per_s\": %.0f, "
             "\"on_steps_per_s\": %.0f, \"on\": \"metrics + subscriber to every event + "
             "breakers (threshold 5, rate 50%%)\"}",
             TASKS, repeats, moff, mon);
    line("obs.overhead", "overhead", 100.0 * (1.0 - mon / moff), "%", params);

    double *rate = off; /* reuse */
    unsigned long dropped_max = 0, events = 0;
    for (unsigned r = 0; r < repeats; r++) {
        tasker_coordinator *c = open_diamond(1);
        tasker_subscription *sub;
        atomic_store(&seen, 0);
        check(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, count_event, NULL, NULL),
              "subscribe");
        check(tasker_coordinator_start(c, 1), "start");
        double t0 = now_s();
        run_tasks(c, EVENT_TASKS, uuids);
        unsigned long dropped = (unsigned long)tasker_subscription_dropped(sub);
        check(tasker_unsubscribe(sub), "unsubscribe");
        double s = now_s() - t0;
        events = atomic_load(&seen);
        rate[r] = (double)events / s;
        if (dropped > dropped_max)
            dropped_max = dropped;
        check(tasker_coordinator_close(c), "close");
    }
    snprintf(params, sizeof params,
             "{\"tasks\": %d, \"workers\": 1, \"repeats\": %u, \"events_per_run\": %lu, "
             "\"dropped_max\": %lu, \"buffer_events\": 65536}",
             EVENT_TASKS, repeats, events, dropped_max);
    line("obs.events", "throughput", median(rate, repeats), "events/s", params);
    free(uuids);
    free(off);
    free(on);
    return 0;
}
