/*
 * bench_soak.c - a run of minutes with everything on, to show that memory
 * does not grow: diamond-10 tasks are created, run by two worker threads with
 * a subscriber to every event, metrics and circuit breakers on, and some
 * steps failing once (so retries, failure records and recent-failure
 * history are exercised); finished tasks are forgotten.  VmRSS is sampled
 * every --sample-s seconds.
 *
 * Output (DESIGN.md section 8): one line per sample (metric "rss") and a
 * final line "soak.rss_growth": RSS of the last sample minus the first sample
 * taken after the warm-up, in KiB, with the sample series in params.
 *
 * Usage: bench_soak [--seconds N] [--sample-s N]
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

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static void check(int rc, const char *what)
{
    if (rc == TASKER_OK)
        return;
    fprintf(stderr, "bench_soak: %s: %s: %s\n", what, tasker_strerror(rc),
            tasker_error_last()->message);
    exit(1);
}

static atomic_ulong attempts;

/* Every 7th attempt fails once (retryable, no delay): retries stay busy. */
static int flaky(tasker_step *step, void *ud)
{
    (void)ud;
    if (atomic_fetch_add(&attempts, 1) % 7 == 0 && tasker_step_attempt(step) == 1) {
        tasker_failure f = TASKER_FAILURE_INIT;
        f.error_class = "SoakError";
        f.message = "fails once on purpose";
        return tasker_step_fail(step, &f);
    }
    return tasker_step_succeed(step, "{\"ok\":true}", 0);
}

static atomic_ulong events;
static void on_event(const tasker_event *ev, void *ud)
{
    (void)ev;
    (void)ud;
    atomic_fetch_add_explicit(&events, 1, memory_order_relaxed);
}

int main(int argc, char **argv)
{
    double seconds = 120, sample_s = 10;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--sample-s"))
            sample_s = atof(argv[++i]);
    }
    tasker_config *cfg;
    check(tasker_config_new(&cfg), "config");
    check(tasker_config_set(cfg, "breaker.failure_rate_percent", "90"), "config");
    tasker_coordinator *c;
    check(tasker_coordinator_open(&c, cfg), "open");
    tasker_config_free(cfg);
    tasker_subscription *sub;
    check(tasker_subscribe(&sub, c, TASKER_EVENT_ALL, 0, on_event, NULL, NULL), "subscribe");
    check(tasker_handler_register(c, "flaky", flaky, NULL, NULL), "handler");
    tasker_template *t;
    check(tasker_template_new(&t, "soak", "diamond10", "1"), "template");
    tasker_step_options o = TASKER_STEP_OPTIONS_INIT;
    o.backoff = TASKER_BACKOFF_NONE;
    check(tasker_template_add_step(t, "root", "flaky", NULL, 0, &o), "step");
    const char *root[] = {"root"};
    char names[8][8];
    const char *mids[8];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "m%d", i);
        mids[i] = names[i];
        check(tasker_template_add_step(t, names[i], "flaky", root, 1, &o), "step");
    }
    check(tasker_template_add_step(t, "sink", "flaky", mids, 8, &o), "step");
    check(tasker_template_register(c, t), "register");
    tasker_template_free(t);
    check(tasker_coordinator_start(c, 2), "start");

    enum { BATCH = 500 };
    static char uuids[BATCH][TASKER_UUID_BUFSIZE];
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "soak";
    req.name = "diamond10";
    req.context_json = "{\"order\": 42, \"items\": [1, 2, 3]}";
    double t0 = now_s(), next_sample = t0 + sample_s;
    unsigned long tasks = 0;
    long samples[4096];
    int n_samples = 0;
    while (now_s() - t0 < seconds) {
        for (int i = 0; i < BATCH; i++)
            check(tasker_task_create(uuids[i], c, &req), "create");
        for (int i = 0; i < BATCH; i++) {
            tasker_task_state st;
            check(tasker_task_wait(&st, c, uuids[i], -1), "wait");
            if (st != TASKER_TASK_COMPLETE) {
                fprintf(stderr, "bench_soak: a task ended %s\n", tasker_task_state_name(st));
                return 1;
            }
            check(tasker_task_forget(c, uuids[i]), "forget");
        }
        tasks += BATCH;
        if (now_s() >= next_sample && n_samples < 4096) {
            long kib = rss_kib();
            samples[n_samples++] = kib;
            printf("{\"bench\": \"soak.rss\", \"metric\": \"rss\", \"value\": %ld, \"unit\": "
                   "\"KiB\", \"params\": {\"elapsed_s\": %.1f, \"tasks\": %lu, \"events\": "
                   "%lu}}\n",
                   kib, now_s() - t0, tasks, (unsigned long)atomic_load(&events));
            fflush(stdout);
            next_sample += sample_s;
        }
    }
    check(tasker_unsubscribe(sub), "unsubscribe");
    check(tasker_coordinator_close(c), "close");
    if (n_samples < 3) {
        fprintf(stderr, "bench_soak: too few samples (run longer than 3 sample periods)\n");
        return 1;
    }
    /* The first sample is warm-up (allocator arenas, the event ring). */
    long first = samples[1], last = samples[n_samples - 1], max = first;
    for (int i = 1; i < n_samples; i++)
        if (samples[i] > max)
            max = samples[i];
    printf("{\"bench\": \"soak.rss_growth\", \"metric\": \"growth\", \"value\": %ld, \"unit\": "
           "\"KiB\", \"params\": {\"seconds\": %.0f, \"tasks\": %lu, \"steps\": %lu, "
           "\"rss_after_warmup_kib\": %ld, \"rss_last_kib\": %ld, \"rss_max_kib\": %ld, "
           "\"samples\": %d, \"workers\": 2, \"on\": \"metrics, subscriber to every event, "
           "breakers, 1 in 7 attempts failing once\"}}\n",
           last - first, seconds, tasks, tasks * 10, first, last, max, n_samples);
    return 0;
}
