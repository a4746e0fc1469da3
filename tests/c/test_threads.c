/*
 * Threads: one and several workers, deferred completion from other threads,
 * and concurrent task creation (with and without idempotency keys).
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *diamond =
    "{\"namespace\":\"thr\",\"name\":\"diamond\",\"steps\":["
    "{\"name\":\"top\",\"handler\":\"node\"},"
    "{\"name\":\"l\",\"handler\":\"node\",\"depends_on\":[\"top\"]},"
    "{\"name\":\"r\",\"handler\":\"node\",\"depends_on\":[\"top\"]},"
    "{\"name\":\"bottom\",\"handler\":\"node\",\"depends_on\":[\"l\",\"r\"]}]}";

static void run_diamonds(unsigned threads, int *max_parallel)
{
    th_recorder rec;
    th_recorder_init(&rec);
    tasker_coordinator *c = th_open(NULL);
    th_register(c, diamond);
    th_handler(c, "node", th_handler_node, &rec);
    th_ok(tasker_coordinator_start(c, threads));
    assert_int_equal(tasker_coordinator_start(c, threads), TASKER_EBUSY);
    enum { N = 40 };
    char uuids[N][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < N; i++)
        th_create(uuids[i], c, "thr", "diamond", NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
        json_t *task = th_task(c, uuids[i]);
        json_t *res = json_object_get(th_step(task, "bottom"), "result");
        /* top 1, l and r 2 each, bottom 1 + 2 + 2 */
        assert_int_equal(json_integer_value(json_object_get(res, "v")), 5);
        json_decref(task);
        long top_done = th_recorder_find(&rec, uuids[i], "top", 1);
        assert_true(top_done >= 0);
        assert_true(th_recorder_find(&rec, uuids[i], "l", 0) > top_done);
        assert_true(th_recorder_find(&rec, uuids[i], "r", 0) > top_done);
        long bottom = th_recorder_find(&rec, uuids[i], "bottom", 0);
        assert_true(bottom > th_recorder_find(&rec, uuids[i], "l", 1));
        assert_true(bottom > th_recorder_find(&rec, uuids[i], "r", 1));
    }
    assert_int_equal(th_recorder_count(&rec, NULL, NULL, 0), 4 * N);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
    *max_parallel = rec.max_in_handler;
    th_recorder_destroy(&rec);
}

static void one_worker_runs_one_handler_at_a_time(void **state)
{
    (void)state;
    int max_parallel = 0;
    run_diamonds(1, &max_parallel);
    assert_int_equal(max_parallel, 1);
}

static void several_workers(void **state)
{
    (void)state;
    int max_parallel = 0;
    /* Order and results are checked inside; parallelism has its own test. */
    run_diamonds(4, &max_parallel);
}

/* Handlers that only return once `want` of them are inside at the same time:
 * the task finishes only if the workers really run them in parallel. */
typedef struct rendezvous {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inside, want, timed_out;
} rendezvous;

static int rendezvous_handler(tasker_step *step, void *ud)
{
    rendezvous *r = ud;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += th_wait_ms() / 1000 / 4;
    pthread_mutex_lock(&r->mu);
    r->inside++;
    pthread_cond_broadcast(&r->cv);
    while (r->inside < r->want) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &deadline) != 0) {
            r->timed_out = 1;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return tasker_step_succeed(step, NULL, 0) == TASKER_OK ? TASKER_OK : -1;
}

static void workers_run_in_parallel(void **state)
{
    (void)state;
    rendezvous r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 3, 0};
    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"thr\",\"name\":\"fan\",\"steps\":["
                   "{\"name\":\"x\",\"handler\":\"meet\"},{\"name\":\"y\",\"handler\":\"meet\"},"
                   "{\"name\":\"z\",\"handler\":\"meet\"}]}");
    th_handler(c, "meet", rendezvous_handler, &r);
    th_ok(tasker_coordinator_start(c, 3));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "thr", "fan", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(r.timed_out, 0);
    assert_int_equal(r.inside, 3);
    th_ok(tasker_coordinator_close(c));
}

/* ---- deferred completion --------------------------------------------------- */

typedef struct handoff {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tasker_step *queue[64];
    int head, tail, stop;
    th_counter handled;
} handoff;

/* The handler only queues the step and returns; another thread completes it. */
static int defer_handler(tasker_step *step, void *ud)
{
    handoff *h = ud;
    pthread_mutex_lock(&h->mu);
    h->queue[h->tail++ % 64] = step;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return TASKER_OK;
}

static void *completer(void *arg)
{
    handoff *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        while (h->head == h->tail && !h->stop)
            pthread_cond_wait(&h->cv, &h->mu);
        if (h->head == h->tail && h->stop) {
            pthread_mutex_unlock(&h->mu);
            return NULL;
        }
        tasker_step *s = h->queue[h->head++ % 64];
        pthread_mutex_unlock(&h->mu);
        /* Pass a value down the chain: each step adds one to its dependency's. */
        long v = 1;
        const char *dep = NULL;
        size_t len = 0;
        if (tasker_step_dependency_count(s) == 1 &&
            tasker_step_dependency_result(&dep, &len, s, tasker_step_dependency_name(s, 0)) ==
                TASKER_OK) {
            json_t *j = json_loadb(dep, len, 0, NULL);
            v += (long)json_integer_value(json_object_get(j, "v"));
            json_decref(j);
        }
        char buf[64];
        snprintf(buf, sizeof buf, "{\"v\": %ld}", v);
        int rc = tasker_step_succeed(s, buf, 0);
        if (rc != TASKER_OK)
            th_problem("deferred succeed of %s = %d", tasker_step_name(s), rc);
        /* The handle was completed: a second completion is refused. */
        if (tasker_step_succeed(s, buf, 0) != TASKER_ESTATE)
            th_problem("second deferred succeed was not refused");
        /* Counted last: the test closes the coordinator only after this. */
        th_counter_add(&h->handled, 1);
    }
}

static void deferred_completion_from_another_thread(void **state)
{
    (void)state;
    handoff h;
    memset(&h, 0, sizeof h);
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    th_counter_init(&h.handled);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, completer, &h), 0);

    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"thr\",\"name\":\"chain\",\"steps\":["
                   "{\"name\":\"a\",\"handler\":\"later\"},"
                   "{\"name\":\"b\",\"handler\":\"later\",\"depends_on\":[\"a\"]},"
                   "{\"name\":\"c\",\"handler\":\"later\",\"depends_on\":[\"b\"]}]}");
    th_handler(c, "later", defer_handler, &h);
    th_ok(tasker_coordinator_start(c, 2));
    char uuids[5][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 5; i++)
        th_create(uuids[i], c, "thr", "chain", NULL);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(th_wait_final(c, uuids[i]), TASKER_TASK_COMPLETE);
        json_t *task = th_task(c, uuids[i]);
        assert_int_equal(
            json_integer_value(json_object_get(json_object_get(th_step(task, "c"), "result"), "v")),
            3);
        json_decref(task);
    }
    double deadline = th_now_ms() + th_wait_ms();
    while (th_counter_get(&h.handled) < 15 && th_now_ms() < deadline)
        th_sleep_ms(2);
    assert_int_equal(th_counter_get(&h.handled), 15);
    th_ok(tasker_coordinator_stop(c, -1));
    th_ok(tasker_coordinator_close(c));
    pthread_mutex_lock(&h.mu);
    h.stop = 1;
    pthread_cond_signal(&h.cv);
    pthread_mutex_unlock(&h.mu);
    pthread_join(t, NULL);
    th_assert_no_problems();
}

/* ---- concurrent creation ------------------------------------------------------ */

enum { CREATORS = 8, PER_THREAD = 25, KEYS = 10 };

typedef struct creator {
    tasker_coordinator *coord;
    pthread_barrier_t *start;
    int idx;
    int mode; /* 0: no key; 1: one shared key; 2: KEYS keys shared by all */
    char uuids[PER_THREAD][TASKER_UUID_BUFSIZE];
} creator;

static void *create_many(void *arg)
{
    creator *cr = arg;
    pthread_barrier_wait(cr->start);
    for (int i = 0; i < PER_THREAD; i++) {
        tasker_task_request req = TASKER_TASK_REQUEST_INIT;
        char key[32];
        req.ns = "thr";
        req.name = "one";
        if (cr->mode == 1)
            req.idempotency_key = "the-one-key";
        else if (cr->mode == 2) {
            snprintf(key, sizeof key, "key-%d", i % KEYS);
            req.idempotency_key = key;
        }
        int rc = tasker_task_create(cr->uuids[i], cr->coord, &req);
        if (rc != TASKER_OK)
            th_problem("creator %d: tasker_task_create = %d (%s)", cr->idx, rc,
                       tasker_error_last()->message);
    }
    return NULL;
}

static int cmp_uuid(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Creates tasks from CREATORS threads at once; returns the distinct UUIDs. */
static size_t concurrent_create(int mode, th_counter *runs, char (**distinct)[TASKER_UUID_BUFSIZE])
{
    tasker_coordinator *c = th_open(NULL);
    th_register(c, "{\"namespace\":\"thr\",\"name\":\"one\",\"steps\":[{\"name\":\"s\","
                   "\"handler\":\"count\"}]}");
    th_handler(c, "count", th_handler_count, runs);
    th_ok(tasker_coordinator_start(c, 2));
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CREATORS);
    creator *cr = calloc(CREATORS, sizeof *cr);
    pthread_t t[CREATORS];
    for (int i = 0; i < CREATORS; i++) {
        cr[i].coord = c;
        cr[i].start = &start;
        cr[i].idx = i;
        cr[i].mode = mode;
        assert_int_equal(pthread_create(&t[i], NULL, create_many, &cr[i]), 0);
    }
    for (int i = 0; i < CREATORS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    th_assert_no_problems();

    char(*all)[TASKER_UUID_BUFSIZE] = calloc(CREATORS * PER_THREAD, TASKER_UUID_BUFSIZE);
    for (int i = 0; i < CREATORS; i++)
        memcpy(all[i * PER_THREAD], cr[i].uuids, sizeof cr[i].uuids);
    qsort(all, CREATORS * PER_THREAD, TASKER_UUID_BUFSIZE, cmp_uuid);
    size_t n = 0;
    for (size_t i = 0; i < CREATORS * PER_THREAD; i++)
        if (n == 0 || strcmp(all[i], all[n - 1]) != 0)
            memmove(all[n++], all[i], TASKER_UUID_BUFSIZE);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(th_wait_final(c, all[i]), TASKER_TASK_COMPLETE);
    th_ok(tasker_coordinator_close(c));
    free(cr);
    *distinct = all;
    return n;
}

static void concurrent_create_without_key(void **state)
{
    (void)state;
    th_counter runs;
    th_counter_init(&runs);
    char(*uuids)[TASKER_UUID_BUFSIZE] = NULL;
    size_t n = concurrent_create(0, &runs, &uuids);
    assert_int_equal(n, CREATORS * PER_THREAD);
    assert_int_equal(th_counter_get(&runs), CREATORS * PER_THREAD);
    free(uuids);
}

static void concurrent_create_with_shared_key(void **state)
{
    (void)state;
    th_counter runs;
    th_counter_init(&runs);
    char(*uuids)[TASKER_UUID_BUFSIZE] = NULL;
    /* 200 creations racing on one key: exactly one task, run exactly once. */
    size_t n = concurrent_create(1, &runs, &uuids);
    assert_int_equal(n, 1);
    assert_int_equal(th_counter_get(&runs), 1);
    free(uuids);
}

static void concurrent_create_with_several_keys(void **state)
{
    (void)state;
    th_counter runs;
    th_counter_init(&runs);
    char(*uuids)[TASKER_UUID_BUFSIZE] = NULL;
    size_t n = concurrent_create(2, &runs, &uuids);
    assert_int_equal(n, KEYS);
    assert_int_equal(th_counter_get(&runs), KEYS);
    free(uuids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_worker_runs_one_handler_at_a_time),
        cmocka_unit_test(several_workers),
        cmocka_unit_test(workers_run_in_parallel),
        cmocka_unit_test(deferred_completion_from_another_thread),
        cmocka_unit_test(concurrent_create_without_key),
        cmocka_unit_test(concurrent_create_with_shared_key),
        cmocka_unit_test(concurrent_create_with_several_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
