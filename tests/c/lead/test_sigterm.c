/*
 * SIGTERM during a run on the memory store loses no step.
 *
 * A real child process runs 40 linear-3 tasks on two worker threads with
 * slow handlers.  Its signal thread waits for SIGTERM and answers it the way
 * a worker does: tasker_coordinator_stop() with a drain timeout.  The child
 * then reads every task back and reports, through a pipe, what it found:
 * no step left in_progress, how many steps had succeeded, and whether any
 * handler ran a step twice.  It then starts the workers again and reports
 * that every task completed, with each step's success recorded once.
 *
 * Two cases: handlers on the worker threads with a drain longer than a
 * handler (every running step finishes, no attempt is repeated), and
 * deferred completions that outlast a short drain (stop returns
 * TASKER_ETIMEOUT, the steps still running are released, their late
 * completions are refused, and they run again after the restart).
 *
 * The child never uses cmocka (a failed assertion would unwind into the
 * parent's test runner copy); it writes "FAIL <why>" instead.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tasker.h"

#define N_TASKS 40
#define N_STEPS 3

static const char *lin3 = "{\"namespace\":\"sig\",\"name\":\"lin3\",\"steps\":["
                          "{\"name\":\"a\",\"handler\":\"slow\"},"
                          "{\"name\":\"b\",\"handler\":\"slow\",\"depends_on\":[\"a\"]},"
                          "{\"name\":\"c\",\"handler\":\"slow\",\"depends_on\":[\"b\"]}]}";

typedef struct {
    pthread_mutex_t mu;
    int handler_ms;
    long finished;     /* handler calls that returned success */
    int ran_after_stop; /* handler calls that began while stopped */
    int stopped;
    int defer; /* complete from another thread, like an async binding */
} child_state;

typedef struct {
    child_state *s;
    tasker_step *step;
    int ms;
} deferred;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void finish(child_state *s, tasker_step *step, int ms)
{
    sleep_ms(ms);
    /* A released step's late completion is refused (TASKER_ESTALE). */
    if (tasker_step_succeed(step, NULL, 0) == TASKER_OK) {
        pthread_mutex_lock(&s->mu);
        s->finished++;
        pthread_mutex_unlock(&s->mu);
    }
}

static void *finish_later(void *arg)
{
    deferred *d = arg;
    finish(d->s, d->step, d->ms);
    free(d);
    return NULL;
}

static int slow_handler(tasker_step *step, void *ud)
{
    child_state *s = ud;
    pthread_mutex_lock(&s->mu);
    if (s->stopped)
        s->ran_after_stop++;
    int ms = s->handler_ms;
    int defer = s->defer;
    pthread_mutex_unlock(&s->mu);
    if (defer) {
        deferred *d = malloc(sizeof *d);
        pthread_t t;
        pthread_attr_t a;
        if (!d)
            return TASKER_ENOMEM;
        *d = (deferred){s, step, ms};
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &a, finish_later, d);
        pthread_attr_destroy(&a);
        if (rc != 0) {
            free(d);
            return TASKER_ENOMEM;
        }
        return TASKER_OK;
    }
    finish(s, step, ms);
    return TASKER_OK;
}

static void say(int fd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, buf + off, (size_t)(n - off));
        if (w <= 0)
            return;
        off += w;
    }
}

/* Reads every task: counts steps by interesting state and the successes
 * recorded in the transition history.  Returns 0, or -1 after saying why. */
static int survey(int fd, tasker_coordinator *c, char uuids[][TASKER_UUID_BUFSIZE],
                  int *in_progress, int *succeeded, int *max_success_per_step,
                  int *max_attempts)
{
    *in_progress = *succeeded = *max_success_per_step = *max_attempts = 0;
    for (int i = 0; i < N_TASKS; i++) {
        char *js = NULL;
        if (tasker_task_get(&js, c, uuids[i]) != TASKER_OK) {
            say(fd, "FAIL tasker_task_get: %s", tasker_error_last()->message);
            return -1;
        }
        json_error_t jerr;
        json_t *t = json_loads(js, 0, &jerr);
        tasker_free(js);
        if (!t) {
            say(fd, "FAIL task JSON: %s", jerr.text);
            return -1;
        }
        size_t k, m;
        json_t *st, *tr;
        json_array_foreach(json_object_get(t, "steps"), k, st)
        {
            const char *state = json_string_value(json_object_get(st, "state"));
            const char *name = json_string_value(json_object_get(st, "name"));
            int attempts = (int)json_integer_value(json_object_get(st, "attempts"));
            if (attempts > *max_attempts)
                *max_attempts = attempts;
            if (state && strcmp(state, "in_progress") == 0)
                (*in_progress)++;
            int successes = 0;
            json_array_foreach(json_object_get(t, "transitions"), m, tr)
            {
                const char *sn = json_string_value(json_object_get(tr, "step"));
                const char *to = json_string_value(json_object_get(tr, "to"));
                if (sn && name && to && strcmp(sn, name) == 0 && strcmp(to, "complete") == 0)
                    successes++;
            }
            *succeeded += successes;
            if (successes > *max_success_per_step)
                *max_success_per_step = successes;
        }
        json_decref(t);
    }
    return 0;
}

/* The child: never returns. */
static void run_child(int fd, int handler_ms, int drain_ms, int defer)
{
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    /* Blocked before any thread exists, so only sigwait() below sees it. */
    pthread_sigmask(SIG_BLOCK, &term, NULL);

    child_state s = {PTHREAD_MUTEX_INITIALIZER, handler_ms, 0, 0, 0, defer};
    tasker_coordinator *c = NULL;
    static char uuids[N_TASKS][TASKER_UUID_BUFSIZE];
    if (tasker_coordinator_open(&c, NULL) != TASKER_OK ||
        tasker_template_register_json(c, lin3, strlen(lin3)) != TASKER_OK ||
        tasker_handler_register(c, "slow", slow_handler, &s, NULL) != TASKER_OK) {
        say(fd, "FAIL setup: %s", tasker_error_last()->message);
        _exit(1);
    }
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "sig";
    req.name = "lin3";
    for (int i = 0; i < N_TASKS; i++) {
        if (tasker_task_create(uuids[i], c, &req) != TASKER_OK) {
            say(fd, "FAIL create: %s", tasker_error_last()->message);
            _exit(1);
        }
    }
    if (tasker_coordinator_start(c, 2) != TASKER_OK) {
        say(fd, "FAIL start: %s", tasker_error_last()->message);
        _exit(1);
    }
    /* Tell the parent once the run is well under way. */
    for (;;) {
        pthread_mutex_lock(&s.mu);
        long f = s.finished;
        pthread_mutex_unlock(&s.mu);
        if (f >= 6)
            break;
        sleep_ms(1);
    }
    say(fd, "RUNNING");
    int sig = 0;
    if (sigwait(&term, &sig) != 0 || sig != SIGTERM) {
        say(fd, "FAIL sigwait");
        _exit(1);
    }
    int stop_rc = tasker_coordinator_stop(c, drain_ms);
    pthread_mutex_lock(&s.mu);
    s.stopped = 1;
    long finished_at_stop = s.finished;
    pthread_mutex_unlock(&s.mu);

    int in_progress, succeeded, max_succ, max_att;
    if (survey(fd, c, uuids, &in_progress, &succeeded, &max_succ, &max_att) != 0)
        _exit(1);
    /* Stopped means stopped: nothing may start while the workers are down. */
    sleep_ms(3 * handler_ms + 20);
    int in_progress2, succeeded2, max_succ2, max_att2;
    if (survey(fd, c, uuids, &in_progress2, &succeeded2, &max_succ2, &max_att2) != 0)
        _exit(1);
    say(fd, "STOPPED rc=%d in_progress=%d succeeded=%d handler_ok=%ld max_success=%d "
            "still=%d",
        stop_rc, in_progress, succeeded, finished_at_stop, max_succ,
        succeeded2 == succeeded && in_progress2 == 0);

    pthread_mutex_lock(&s.mu);
    s.stopped = 0;
    s.handler_ms = 5; /* the rest only needs to finish */
    pthread_mutex_unlock(&s.mu);
    if (tasker_coordinator_start(c, 2) != TASKER_OK) {
        say(fd, "FAIL restart: %s", tasker_error_last()->message);
        _exit(1);
    }
    int complete = 0;
    for (int i = 0; i < N_TASKS; i++) {
        tasker_task_state ts;
        if (tasker_task_wait(&ts, c, uuids[i], 60000) == TASKER_OK &&
            ts == TASKER_TASK_COMPLETE)
            complete++;
    }
    if (survey(fd, c, uuids, &in_progress, &succeeded, &max_succ, &max_att) != 0)
        _exit(1);
    say(fd, "AFTER complete=%d succeeded=%d max_success=%d max_attempts=%d ran_while_stopped=%d",
        complete, succeeded, max_succ, max_att, s.ran_after_stop);
    tasker_coordinator_close(c);
    close(fd);
    _exit(0);
}

typedef struct {
    int stop_rc, in_progress, succeeded, max_success, still;
    long handler_ok;
    int complete, succeeded_after, max_success_after, max_attempts, ran_while_stopped;
} report;

static int read_line(FILE *f, char *buf, size_t n)
{
    if (!fgets(buf, (int)n, f))
        return -1;
    if (strncmp(buf, "FAIL", 4) == 0) {
        print_error("child: %s", buf);
        return -1;
    }
    return 0;
}

static void run_case(int handler_ms, int drain_ms, int defer, report *r)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        run_child(p[1], handler_ms, drain_ms, defer);
    }
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    assert_non_null(f);
    char line[512];
    assert_int_equal(read_line(f, line, sizeof line), 0);
    assert_string_equal(line, "RUNNING\n");
    /* A real signal to a real process, mid-run. */
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(read_line(f, line, sizeof line), 0);
    assert_int_equal(sscanf(line,
                            "STOPPED rc=%d in_progress=%d succeeded=%d handler_ok=%ld "
                            "max_success=%d still=%d",
                            &r->stop_rc, &r->in_progress, &r->succeeded, &r->handler_ok,
                            &r->max_success, &r->still),
                     6);
    assert_int_equal(read_line(f, line, sizeof line), 0);
    assert_int_equal(sscanf(line,
                            "AFTER complete=%d succeeded=%d max_success=%d max_attempts=%d "
                            "ran_while_stopped=%d",
                            &r->complete, &r->succeeded_after, &r->max_success_after,
                            &r->max_attempts, &r->ran_while_stopped),
                     5);
    fclose(f);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void sigterm_with_a_drain_longer_than_a_handler(void **state)
{
    (void)state;
    report r;
    run_case(20, 10000, 0, &r);
    assert_int_equal(r.stop_rc, TASKER_OK);
    /* Every step that was running finished inside the drain. */
    assert_int_equal(r.in_progress, 0);
    assert_int_equal(r.succeeded, (int)r.handler_ok);
    assert_true(r.succeeded < N_TASKS * N_STEPS); /* it really was mid-run */
    assert_int_equal(r.max_success, 1);
    assert_int_equal(r.still, 1);
    /* After a restart every task completes; no step succeeded twice and
     * none needed a second attempt. */
    assert_int_equal(r.complete, N_TASKS);
    assert_int_equal(r.succeeded_after, N_TASKS * N_STEPS);
    assert_int_equal(r.max_success_after, 1);
    assert_int_equal(r.max_attempts, 1);
    assert_int_equal(r.ran_while_stopped, 0);
}

/* Handlers that complete from their own threads (deferred completion, as the
 * Python, Go and Rust bindings do) and outlast the drain. */
static void sigterm_with_a_drain_shorter_than_a_handler(void **state)
{
    (void)state;
    report r;
    run_case(400, 50, 1, &r);
    /* The drain ran out: the steps still running were released, not lost. */
    assert_int_equal(r.stop_rc, TASKER_ETIMEOUT);
    assert_int_equal(r.in_progress, 0);
    assert_true(r.succeeded < N_TASKS * N_STEPS);
    assert_int_equal(r.max_success, 1);
    assert_int_equal(r.still, 1);
    assert_int_equal(r.complete, N_TASKS);
    assert_int_equal(r.succeeded_after, N_TASKS * N_STEPS);
    assert_int_equal(r.max_success_after, 1);
    /* A released step runs again as a new attempt. */
    assert_int_equal(r.max_attempts, 2);
    assert_int_equal(r.ran_while_stopped, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sigterm_with_a_drain_longer_than_a_handler),
        cmocka_unit_test(sigterm_with_a_drain_shorter_than_a_handler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
