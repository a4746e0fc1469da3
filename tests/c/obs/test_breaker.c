/*
 * Circuit breakers: consecutive-failure and failure-rate tripping, steps held
 * while a handler's circuit is open (and other handlers unaffected),
 * half-open trials, closing again, forcing, unknown circuits, and many
 * workers driving breakers concurrently.
 *
 * Timing: a circuit opens during the failing completion, so the handler notes
 * the monotonic time just before it calls tasker_step_fail; the circuit
 * opened at or after that instant.  "Still open" checks are made only while
 * that instant + open_ms has not passed (measured after the check), and the
 * next trial is checked from below (it may come late on a loaded machine,
 * never early).
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A handler whose outcome the test switches; it records when it ran. */
#define MAX_CALLS 64
typedef struct switchable {
    pthread_mutex_t mu;
    int fail;      /* 1: fail (retryable), 0: succeed */
    int calls;
    double call_at[MAX_CALLS];
    double fail_at[MAX_CALLS]; /* just before tasker_step_fail */
    tasker_circuit_state state_seen[MAX_CALLS];
    tasker_coordinator *coord; /* to read the handler's circuit while running */
} switchable;

static void switchable_init(switchable *s, tasker_coordinator *c, int fail)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->fail = fail;
    s->coord = c;
}

static void switchable_set(switchable *s, int fail)
{
    pthread_mutex_lock(&s->mu);
    s->fail = fail;
    pthread_mutex_unlock(&s->mu);
}

static int switchable_calls(switchable *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->calls;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static int switchable_handler(tasker_step *step, void *ud)
{
    switchable *s = ud;
    tasker_circuit_state st = (tasker_circuit_state)-1;
    char name[300];
    snprintf(name, sizeof name, "handler:%s", tasker_step_handler_name(step));
    if (tasker_circuit_get(&st, s->coord, name) != TASKER_OK)
        th_problem("tasker_circuit_get(%s) failed inside the handler", name);
    pthread_mutex_lock(&s->mu);
    int i = s->calls++;
    int fail = s->fail;
    if (i < MAX_CALLS) {
        s->call_at[i] = th_now_ms();
        s->state_seen[i] = st;
    }
    pthread_mutex_unlock(&s->mu);
    int rc;
    if (fail) {
        tasker_failure f = TASKER_FAILURE_INIT;
        f.error_class = "SwitchedOff";
        f.message = "failing on purpose";
        pthread_mutex_lock(&s->mu);
        if (i < MAX_CALLS)
            s->fail_at[i] = th_now_ms();
        pthread_mutex_unlock(&s->mu);
        rc = tasker_step_fail(step, &f);
    } else {
        rc = tasker_step_succeed(step, NULL, 0);
    }
    if (rc != TASKER_OK)
        th_problem("switchable: completing %s returned %d", tasker_step_name(step), rc);
    return TASKER_OK;
}

#define ONE_STEP(tmpl, handler, attempts)                                                     \
    "{\"namespace\":\"brk\",\"name\":\"" tmpl "\",\"steps\":[{\"name\":\"s\",\"handler\":\"" \
    handler "\",\"retry\":{\"max_attempts\":" #attempts ",\"backoff\":\"none\","               \
    "\"base_ms\":0,\"max_ms\":0}}]}"

typedef struct poller poller;

/* Everything a coordinator's handlers and subscriptions point to lives here,
 * so a test failing half-way leaves nothing dangling: teardown closes the
 * coordinator before freeing it. */
typedef struct fixture {
    tasker_coordinator *c;
    switchable sw;
    th_counter good;
    obs_collector col;
    poller *poll;
    pthread_t poll_thread;
} fixture;

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    th_counter_init(&x->good);
    obs_collector_init(&x->col, NULL);
    *state = x;
    return 0;
}

static void stop_poller(fixture *x);

static int teardown(void **state)
{
    fixture *x = *state;
    stop_poller(x);
    th_ok(tasker_coordinator_close(x->c));
    obs_collector_destroy(&x->col);
    free(x);
    th_assert_no_problems();
    return 0;
}

static tasker_circuit_state circuit(tasker_coordinator *c, const char *name)
{
    tasker_circuit_state st = (tasker_circuit_state)-1;
    th_ok(tasker_circuit_get(&st, c, name));
    return st;
}

/* health["circuits"][name][key] as a string. */
static const char *health_circuit(json_t *health, const char *name, const char *key)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(health, "circuits"), name), key));
}

static void threshold_opens_holds_and_recovers(void **state)
{
    fixture *x = *state;
    /* Long enough for the checks below on a loaded machine; the test waits
     * it out once. */
    const int open_ms = 2000;
    tasker_coordinator *c = x->c =
        th_open("breaker.failure_threshold", "3", "breaker.open_ms", "2000", NULL);
    switchable *bad = &x->sw;
    switchable_init(bad, c, 1);
    th_counter *good = &x->good;
    th_handler(c, "bad", switchable_handler, bad);
    th_handler(c, "good", th_handler_count, good);
    th_register(c, ONE_STEP("badone", "bad", 1));
    th_register(c, ONE_STEP("goodone", "good", 1));
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE];

    /* Two failures leave it closed; the third opens it. */
    for (int i = 1; i <= 3; i++) {
        th_create(uuid, c, "brk", "badone", NULL);
        assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
        if (i < 3)
            assert_int_equal(circuit(c, "handler:bad"), TASKER_CIRCUIT_CLOSED);
    }
    double opened_lb = bad->fail_at[2];
    tasker_circuit_state st = circuit(c, "handler:bad");
    int in_window = th_now_ms() < opened_lb + open_ms;
    if (in_window)
        assert_int_equal(st, TASKER_CIRCUIT_OPEN);
    else
        assert_true(st == TASKER_CIRCUIT_OPEN || st == TASKER_CIRCUIT_HALF_OPEN);
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_CLOSED);

    /* While open, bad's new step waits in the queue; good's tasks run. */
    switchable_set(bad, 0);
    char held[TASKER_UUID_BUFSIZE], other[TASKER_UUID_BUFSIZE];
    th_create(held, c, "brk", "badone", NULL);
    for (int i = 0; i < 3; i++) {
        th_create(other, c, "brk", "goodone", NULL);
        assert_int_equal(th_wait_final(c, other), TASKER_TASK_COMPLETE);
    }
    assert_int_equal(th_counter_get(good), 3);
    json_t *task = th_task(c, held);
    json_t *health = obs_health(c);
    prom_doc doc;
    obs_metrics(c, &doc);
    int calls = switchable_calls(bad);
    if (th_now_ms() < opened_lb + open_ms) {
        assert_string_equal(th_step_state(task, "s"), "enqueued");
        assert_int_equal(th_step_attempts(task, "s"), 0);
        assert_int_equal(calls, 3);
        assert_string_equal(json_string_value(json_object_get(health, "status")), "degraded");
        assert_string_equal(health_circuit(health, "handler:bad", "state"), "open");
        assert_string_equal(health_circuit(health, "handler:good", "state"), "closed");
        /* The held step is still a ready step of its namespace. */
        assert_int_equal(json_integer_value(json_object_get(
                             json_object_get(json_object_get(health, "namespaces"), "brk"),
                             "queue_depth")),
                         1);
        obs_assert_metric(prom_get(&doc, "tasker_circuit_state", "circuit", "handler:bad", NULL),
                          1);
        obs_assert_metric(prom_get(&doc, "tasker_queue_depth", "namespace", "brk", NULL), 1);
    } else {
        print_message("note: machine too slow to check the open window (%d ms): %.0f ms "
                      "passed\n",
                      open_ms, th_now_ms() - opened_lb);
    }
    obs_assert_metric(prom_get(&doc, "tasker_circuit_state", "circuit", "handler:good", NULL), 0);
    prom_doc_free(&doc);
    json_decref(health);
    json_decref(task);

    /* After open_ms a trial runs (half-open), succeeds, and closes it. */
    assert_int_equal(th_wait_final(c, held), TASKER_TASK_COMPLETE);
    assert_int_equal(switchable_calls(bad), 4);
    if (bad->call_at[3] < opened_lb + open_ms - 1.0)
        fail_msg("trial ran %.1f ms after the circuit opened; open_ms is %d",
                 bad->call_at[3] - opened_lb, open_ms);
    assert_int_equal(bad->state_seen[3], TASKER_CIRCUIT_HALF_OPEN);
    assert_int_equal(circuit(c, "handler:bad"), TASKER_CIRCUIT_CLOSED);
    health = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(health, "status")), "ok");
    assert_string_equal(health_circuit(health, "handler:bad", "state"), "closed");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(health, "circuits"), "handler:bad"),
                         "opened_total")),
                     1);
    json_decref(health);
    task = th_task(c, held);
    assert_int_equal(th_step_attempts(task, "s"), 1);
    json_decref(task);
}

/* success_threshold 2, half_open_max 1: the first successful trial leaves
 * the circuit half-open, the second closes it, and every held step runs. */
static void success_threshold_needs_several_trials(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c =
        th_open("breaker.failure_threshold", "1", "breaker.open_ms", "100",
                "breaker.success_threshold", "2", "breaker.half_open_max", "1", NULL);
    switchable *h = &x->sw;
    switchable_init(h, c, 1);
    th_handler(c, "h", switchable_handler, h);
    th_register(c, ONE_STEP("hone", "h", 1));
    obs_collector *col = &x->col;
    tasker_subscription *sub = obs_subscribe(
        c, TASKER_EVENT_CIRCUIT_CHANGED | TASKER_EVENT_STEP_SUCCEEDED, 0, col);
    th_ok(tasker_coordinator_start(c, 2));
    char uuid[TASKER_UUID_BUFSIZE], t[3][TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "brk", "hone", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    switchable_set(h, 0);
    for (int i = 0; i < 3; i++)
        th_create(t[i], c, "brk", "hone", NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(th_wait_final(c, t[i]), TASKER_TASK_COMPLETE);
    assert_int_equal(circuit(c, "handler:h"), TASKER_CIRCUIT_CLOSED);
    th_ok(tasker_unsubscribe(sub));

    /* open, half_open, (success), (success), closed, (success) */
    long open = obs_find(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL, 0);
    assert_true(open >= 0);
    assert_string_equal(col->ev[open].cstate, "open");
    long half = obs_find(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL, (size_t)open + 1);
    assert_true(half > open);
    assert_string_equal(col->ev[half].cstate, "half_open");
    long closed = obs_find(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL, (size_t)half + 1);
    assert_true(closed > half);
    assert_string_equal(col->ev[closed].cstate, "closed");
    assert_int_equal(obs_count(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL), 3);
    long s1 = obs_find(col, TASKER_EVENT_STEP_SUCCEEDED, NULL, (size_t)half);
    long s2 = s1 >= 0 ? obs_find(col, TASKER_EVENT_STEP_SUCCEEDED, NULL, (size_t)s1 + 1) : -1;
    assert_true(s1 > half && s2 > s1 && s2 < closed);
    /* Both trials ran while half-open, one at a time (half_open_max 1). */
    assert_int_equal(h->state_seen[1], TASKER_CIRCUIT_HALF_OPEN);
    assert_int_equal(h->state_seen[2], TASKER_CIRCUIT_HALF_OPEN);
}

static void failure_rate_mode(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c =
        th_open("breaker.failure_threshold", "0", "breaker.failure_rate_percent", "75",
                "breaker.window", "4", "breaker.open_ms", "150", NULL);
    th_handler(c, "mixed", obs_scripted, NULL);
    th_register(c, ONE_STEP("mixedone", "mixed", 1));
    th_ok(tasker_coordinator_start(c, 2));
    const char *ok = "{}";
    const char *bad = "{\"fail_until\": 1}";
    /* S S S S F F: the last four calls are at most 50% failures, and
     * consecutive failures alone (threshold off) never trip it. */
    const char *seq[] = {ok, ok, ok, ok, bad, bad};
    char uuid[TASKER_UUID_BUFSIZE];
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        th_create(uuid, c, "brk", "mixedone", seq[i]);
        assert_int_equal(th_wait_final(c, uuid),
                         seq[i] == ok ? TASKER_TASK_COMPLETE : TASKER_TASK_ERROR);
        assert_int_equal(circuit(c, "handler:mixed"), TASKER_CIRCUIT_CLOSED);
    }
    /* S F F F: 75% of the window fails, which trips it. */
    th_create(uuid, c, "brk", "mixedone", bad);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    tasker_circuit_state st = circuit(c, "handler:mixed");
    assert_true(st == TASKER_CIRCUIT_OPEN || st == TASKER_CIRCUIT_HALF_OPEN);

    /* A failing trial opens it again; a succeeding one closes it. */
    th_create(uuid, c, "brk", "mixedone", bad);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    json_t *health = obs_health(c);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(health, "circuits"), "handler:mixed"),
                         "opened_total")),
                     2);
    json_decref(health);
    th_create(uuid, c, "brk", "mixedone", ok);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(circuit(c, "handler:mixed"), TASKER_CIRCUIT_CLOSED);
}

static void force_modes(void **state)
{
    fixture *x = *state;
    /* Breakers are off by default (no threshold, no rate); forcing still works. */
    tasker_coordinator *c = x->c = th_open("breaker.open_ms", "100", NULL);
    th_counter *good = &x->good;
    th_handler(c, "good", th_handler_count, good);
    th_register(c, ONE_STEP("goodone", "good", 1));
    th_ok(tasker_coordinator_start(c, 2));
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_CLOSED);
    assert_int_equal(circuit(c, "namespace:brk"), TASKER_CIRCUIT_CLOSED);

    th_ok(tasker_circuit_force(c, "handler:good", TASKER_CIRCUIT_FORCE_OPEN));
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_OPEN);
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "brk", "goodone", NULL);
    /* Forced open has no timer: well past open_ms nothing has run. */
    th_sleep_ms(300);
    assert_int_equal(th_counter_get(good), 0);
    json_t *task = th_task(c, uuid);
    assert_string_equal(th_step_state(task, "s"), "enqueued");
    json_decref(task);
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_OPEN);
    json_t *health = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(health, "status")), "degraded");
    assert_string_equal(health_circuit(health, "handler:good", "mode"), "force_open");
    json_decref(health);

    th_ok(tasker_circuit_force(c, "handler:good", TASKER_CIRCUIT_FORCE_CLOSED));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_CLOSED);
    health = obs_health(c);
    assert_string_equal(json_string_value(json_object_get(health, "status")), "ok");
    assert_string_equal(health_circuit(health, "handler:good", "mode"), "force_closed");
    json_decref(health);

    /* Forced open, then back to AUTO: the breaker decides, and with nothing
     * failing the held step runs. */
    th_ok(tasker_circuit_force(c, "handler:good", TASKER_CIRCUIT_FORCE_OPEN));
    th_create(uuid, c, "brk", "goodone", NULL);
    th_ok(tasker_circuit_force(c, "handler:good", TASKER_CIRCUIT_AUTO));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_CLOSED);
    health = obs_health(c);
    assert_string_equal(health_circuit(health, "handler:good", "mode"), "auto");
    json_decref(health);
    x->c = NULL;
    th_ok(tasker_coordinator_close(c));

    /* FORCE_CLOSED lets failures through (only counting them); AUTO then
     * trips on the next failure. */
    c = x->c = th_open("breaker.failure_threshold", "1", "breaker.open_ms", "60000", NULL);
    switchable *bad = &x->sw;
    switchable_init(bad, c, 1);
    th_handler(c, "bad", switchable_handler, bad);
    th_register(c, ONE_STEP("badone", "bad", 1));
    th_ok(tasker_coordinator_start(c, 2));
    th_ok(tasker_circuit_force(c, "handler:bad", TASKER_CIRCUIT_FORCE_CLOSED));
    for (int i = 0; i < 3; i++) {
        th_create(uuid, c, "brk", "badone", NULL);
        assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
        assert_int_equal(circuit(c, "handler:bad"), TASKER_CIRCUIT_CLOSED);
    }
    assert_int_equal(switchable_calls(bad), 3);
    th_ok(tasker_circuit_force(c, "handler:bad", TASKER_CIRCUIT_AUTO));
    th_create(uuid, c, "brk", "badone", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    assert_int_equal(circuit(c, "handler:bad"), TASKER_CIRCUIT_OPEN);
    /* Held now (open for a minute) ... */
    th_create(uuid, c, "brk", "badone", NULL);
    th_sleep_ms(100);
    assert_int_equal(switchable_calls(bad), 4);
    /* ... until forced closed. */
    switchable_set(bad, 0);
    th_ok(tasker_circuit_force(c, "handler:bad", TASKER_CIRCUIT_FORCE_CLOSED));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
}

static void unknown_circuits_and_bad_args(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c = th_open(NULL);
    th_handler(c, "good", th_handler_noop, NULL);
    th_register(c, ONE_STEP("goodone", "good", 1));
    const char *unknown[] = {"handler:nope", "namespace:nope", "bogus", "", "handler:",
                             "good", "brk", "handler:good:x"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        tasker_circuit_state st;
        tasker_error_clear();
        if (tasker_circuit_get(&st, c, unknown[i]) != TASKER_ENOTFOUND)
            fail_msg("tasker_circuit_get(\"%s\") is not TASKER_ENOTFOUND", unknown[i]);
        th_assert_error(TASKER_ENOTFOUND, NULL);
        if (tasker_circuit_force(c, unknown[i], TASKER_CIRCUIT_FORCE_OPEN) != TASKER_ENOTFOUND)
            fail_msg("tasker_circuit_force(\"%s\") is not TASKER_ENOTFOUND", unknown[i]);
        th_assert_error(TASKER_ENOTFOUND, NULL);
    }
    tasker_circuit_state st;
    assert_int_equal(tasker_circuit_get(NULL, c, "handler:good"), TASKER_EINVAL);
    assert_int_equal(tasker_circuit_get(&st, NULL, "handler:good"), TASKER_EINVAL);
    assert_int_equal(tasker_circuit_get(&st, c, NULL), TASKER_EINVAL);
    assert_int_equal(tasker_circuit_force(NULL, "handler:good", TASKER_CIRCUIT_AUTO),
                     TASKER_EINVAL);
    assert_int_equal(tasker_circuit_force(c, NULL, TASKER_CIRCUIT_AUTO), TASKER_EINVAL);
    assert_int_equal(tasker_circuit_force(c, "handler:good", (tasker_circuit_mode)3),
                     TASKER_EINVAL);
    assert_int_equal(tasker_circuit_force(c, "handler:good", (tasker_circuit_mode)-1),
                     TASKER_EINVAL);
    th_assert_error(TASKER_EINVAL, NULL);
    /* A refused force changed nothing. */
    assert_int_equal(circuit(c, "handler:good"), TASKER_CIRCUIT_CLOSED);
}

/* ---- many workers ------------------------------------------------------------ */

#define MIX_TASKS 30
#define BAD_TASKS 15

struct poller {
    tasker_coordinator *coord;
    int stop; /* under mu */
    pthread_mutex_t mu;
    long rounds;
};

/* Reads circuits, health, status and metrics while the workers run. */
static void *poll_main(void *arg)
{
    poller *p = arg;
    const char *names[] = {"handler:alt", "handler:ok", "handler:bad", "namespace:brk"};
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        for (int i = 0; i < 4; i++) {
            tasker_circuit_state st;
            if (tasker_circuit_get(&st, p->coord, names[i]) != TASKER_OK ||
                (unsigned)st > TASKER_CIRCUIT_HALF_OPEN)
                th_problem("tasker_circuit_get(%s) failed or gave %d", names[i], (int)st);
        }
        char *text = NULL;
        char err[256];
        if (tasker_metrics_text(&text, p->coord) != TASKER_OK) {
            th_problem("tasker_metrics_text failed during the run");
        } else {
            prom_doc doc;
            if (prom_parse(&doc, text, err, sizeof err) != 0)
                th_problem("metrics during the run: %s", err);
            else
                prom_doc_free(&doc);
            tasker_free(text);
        }
        if (tasker_health_json(&text, p->coord) != TASKER_OK)
            th_problem("tasker_health_json failed during the run");
        tasker_free(text);
        if (tasker_status_json(&text, p->coord) != TASKER_OK)
            th_problem("tasker_status_json failed during the run");
        tasker_free(text);
        pthread_mutex_lock(&p->mu);
        p->rounds++;
        pthread_mutex_unlock(&p->mu);
        th_sleep_ms(1);
    }
    return NULL;
}

static void start_poller(fixture *x)
{
    x->poll = calloc(1, sizeof *x->poll);
    x->poll->coord = x->c;
    pthread_mutex_init(&x->poll->mu, NULL);
    if (pthread_create(&x->poll_thread, NULL, poll_main, x->poll) != 0) {
        free(x->poll);
        x->poll = NULL;
        fail_msg("could not start the poller thread");
    }
}

/* Also called by teardown, in case the test failed with the poller running. */
static void stop_poller(fixture *x)
{
    if (!x->poll)
        return;
    pthread_mutex_lock(&x->poll->mu);
    x->poll->stop = 1;
    pthread_mutex_unlock(&x->poll->mu);
    pthread_join(x->poll_thread, NULL);
    pthread_mutex_destroy(&x->poll->mu);
    free(x->poll);
    x->poll = NULL;
}

/* Sums over the tasks: attempts and error entries of steps run by `handler`,
 * and how many of them completed. */
static void tally(tasker_coordinator *c, char (*uuids)[TASKER_UUID_BUFSIZE], size_t n,
                  const char *handler, long *attempts, long *errors, long *completed)
{
    for (size_t i = 0; i < n; i++) {
        json_t *task = th_task(c, uuids[i]);
        size_t k;
        json_t *s;
        json_array_foreach(json_object_get(task, "steps"), k, s)
        {
            if (strcmp(json_string_value(json_object_get(s, "handler")), handler) != 0)
                continue;
            *attempts += (long)json_integer_value(json_object_get(s, "attempts"));
            *errors += (long)json_array_size(json_object_get(s, "errors"));
            *completed += strcmp(json_string_value(json_object_get(s, "state")), "complete") == 0;
        }
        json_decref(task);
    }
}

/* Circuit events of one circuit must follow the state machine. */
static void assert_valid_transitions(obs_collector *col, const char *circuit_name)
{
    const char *prev = "closed";
    for (size_t i = 0; i < col->n; i++) {
        obs_ev *e = &col->ev[i];
        if (e->type != TASKER_EVENT_CIRCUIT_CHANGED || strcmp(e->circuit, circuit_name) != 0)
            continue;
        const char *to = e->cstate;
        int ok = (!strcmp(prev, "closed") && !strcmp(to, "open")) ||
                 (!strcmp(prev, "open") && !strcmp(to, "half_open")) ||
                 (!strcmp(prev, "half_open") && (!strcmp(to, "open") || !strcmp(to, "closed")));
        if (!ok)
            fail_msg("circuit %s went %s -> %s (event %zu)", circuit_name, prev, to, i);
        prev = to;
    }
}

static void concurrent_workers_stay_consistent(void **state)
{
    fixture *x = *state;
    tasker_coordinator *c = x->c =
        th_open("breaker.failure_threshold", "3", "breaker.open_ms", "30",
                "breaker.half_open_max", "2", NULL);
    th_handler(c, "alt", obs_scripted, NULL);
    th_handler(c, "ok", th_handler_noop, NULL);
    th_handler(c, "bad", obs_scripted, NULL);
    th_register(c, "{\"namespace\":\"brk\",\"name\":\"mix\",\"steps\":[{\"name\":\"a\","
                   "\"handler\":\"alt\",\"retry\":{\"max_attempts\":3,\"backoff\":\"none\","
                   "\"base_ms\":0,\"max_ms\":0}},{\"name\":\"b\",\"handler\":\"ok\","
                   "\"depends_on\":[\"a\"]}]}");
    th_register(c, ONE_STEP("badtwo", "bad", 2));
    obs_collector *col = &x->col;
    tasker_subscription *sub = obs_subscribe(c, TASKER_EVENT_CIRCUIT_CHANGED, 0, col);
    start_poller(x);
    th_ok(tasker_coordinator_start(c, 4));

    char mix[MIX_TASKS][TASKER_UUID_BUFSIZE], bad[BAD_TASKS][TASKER_UUID_BUFSIZE];
    long alt_failures = 0;
    for (int i = 0; i < MIX_TASKS; i++) {
        char ctx[64];
        snprintf(ctx, sizeof ctx, "{\"fail_until\": %d}", i % 3);
        alt_failures += i % 3;
        th_create(mix[i], c, "brk", "mix", ctx);
        if (i % 2 == 0)
            th_create(bad[i / 2], c, "brk", "badtwo", "{\"fail_until\": 99}");
    }
    for (int i = 0; i < MIX_TASKS; i++)
        assert_int_equal(th_wait_final(c, mix[i]), TASKER_TASK_COMPLETE);
    for (int i = 0; i < BAD_TASKS; i++)
        assert_int_equal(th_wait_final(c, bad[i]), TASKER_TASK_ERROR);

    stop_poller(x);
    th_assert_no_problems();

    prom_doc doc;
    obs_metrics(c, &doc);
    struct {
        const char *handler;
        char (*uuids)[TASKER_UUID_BUFSIZE];
        size_t n;
        long started, succeeded, failed, retries, dead;
    } want[] = {
        {"alt", mix, MIX_TASKS, MIX_TASKS + alt_failures, MIX_TASKS, alt_failures, alt_failures,
         0},
        {"ok", mix, MIX_TASKS, MIX_TASKS, MIX_TASKS, 0, 0, 0},
        {"bad", bad, BAD_TASKS, 2 * BAD_TASKS, 0, 2 * BAD_TASKS, BAD_TASKS, BAD_TASKS},
    };
    for (size_t i = 0; i < 3; i++) {
        const char *h = want[i].handler;
        double started =
            prom_get(&doc, "tasker_step_attempts_total", "handler", h, "outcome", "started", NULL);
        double succeeded = prom_get(&doc, "tasker_step_attempts_total", "handler", h, "outcome",
                                    "succeeded", NULL);
        double failed =
            prom_get(&doc, "tasker_step_attempts_total", "handler", h, "outcome", "failed", NULL);
        /* Nothing in flight: every attempt that started has ended. */
        obs_assert_metric(started, succeeded + failed);
        obs_assert_metric(started, (double)want[i].started);
        obs_assert_metric(succeeded, (double)want[i].succeeded);
        obs_assert_metric(failed, (double)want[i].failed);
        obs_assert_metric(prom_get(&doc, "tasker_step_retries_total", "handler", h, NULL),
                          (double)want[i].retries);
        obs_assert_metric(prom_get(&doc, "tasker_dead_letters_total", "handler", h, NULL),
                          (double)want[i].dead);
        /* The same numbers from the tasks themselves. */
        long attempts = 0, errors = 0, completed = 0;
        tally(c, want[i].uuids, want[i].n, h, &attempts, &errors, &completed);
        obs_assert_metric(started, (double)attempts);
        obs_assert_metric(failed, (double)errors);
        obs_assert_metric(succeeded, (double)completed);
    }
    obs_assert_metric(prom_get(&doc, "tasker_steps_in_flight", NULL), 0);
    obs_assert_metric(prom_get(&doc, "tasker_queue_depth", "namespace", "brk", NULL), 0);
    obs_assert_metric(prom_get(&doc, "tasker_tasks_total", "namespace", "brk", "outcome",
                               "completed", NULL),
                      MIX_TASKS);
    obs_assert_metric(prom_get(&doc, "tasker_tasks_total", "namespace", "brk", "outcome",
                               "failed", NULL),
                      BAD_TASKS);
    prom_doc_free(&doc);

    th_ok(tasker_unsubscribe(sub));
    assert_true(obs_count(col, TASKER_EVENT_CIRCUIT_CHANGED, NULL) >= 1); /* bad opened */
    assert_valid_transitions(col, "handler:alt");
    assert_valid_transitions(col, "handler:ok");
    assert_valid_transitions(col, "handler:bad");
    /* Every event names one of the handlers' circuits. */
    for (size_t i = 0; i < col->n; i++)
        assert_true(!strcmp(col->ev[i].circuit, "handler:alt") ||
                    !strcmp(col->ev[i].circuit, "handler:ok") ||
                    !strcmp(col->ev[i].circuit, "handler:bad"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(threshold_opens_holds_and_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(success_threshold_needs_several_trials, setup, teardown),
        cmocka_unit_test_setup_teardown(failure_rate_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(force_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_circuits_and_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(concurrent_workers_stay_consistent, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
