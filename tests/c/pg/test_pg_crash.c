/*
 * The crash test: three worker processes (pg_crash_worker) run 1,000
 * diamond-10 tasks (root -> 8 parallel -> sink); one of them is killed with
 * SIGKILL while it holds claimed steps, restarted, and killed again the same
 * way.  Afterwards, from the database alone:
 *   - every task is complete and every step has its result;
 *   - every step was recorded as succeeded exactly once, by the worker that
 *     held that attempt's claim (so no step was completed by two workers);
 *   - the killed worker's steps were reclaimed after their leases expired
 *     (tasker.LeaseExpired failures exist), and every result reached its
 *     dependents (the sink's value is 1 + 8 * 2).
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TASKS 1000
#define STEPS 10
#define WORKERS 3
#define THREADS "4"
#define LEASE_MS "2500"

typedef struct worker {
    pid_t pid;
    int id; /* tasker.workers id */
    FILE *out;
} worker;

static const char *url;

static void spawn(worker *w)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(TASKER_CRASH_WORKER_PATH, "pg_crash_worker", url, THREADS, LEASE_MS, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    w->pid = pid;
    w->out = fdopen(p[0], "r");
    char line[128] = "";
    if (!fgets(line, sizeof line, w->out) || sscanf(line, "ready %d", &w->id) != 1)
        fail_msg("worker %d did not start (said '%s')", (int)pid, line);
}

static long long completed_steps(void)
{
    return pgt_num("SELECT count(*) FROM tasker.history WHERE reason = 9");
}

/* Waits until `n` steps are done and worker `w` holds claimed steps, then
 * kills it: its in-flight attempts die mid-step. */
static void kill_mid_step(worker *w, long long n)
{
    char id[16];
    snprintf(id, sizeof id, "%d", w->id);
    double deadline = th_now_ms() + th_wait_ms();
    for (;;) {
        if (completed_steps() >= n &&
            pgt_num("SELECT count(*) FROM tasker.queue WHERE leased_by = $1::int", id) > 0)
            break;
        if (th_now_ms() > deadline)
            fail_msg("worker %d never held a claim after %lld steps", w->id, n);
        th_sleep_ms(2);
    }
    long long held = pgt_num("SELECT count(*) FROM tasker.queue WHERE leased_by = $1::int", id);
    assert_int_equal(kill(w->pid, SIGKILL), 0);
    int st;
    waitpid(w->pid, &st, 0);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    fclose(w->out);
    print_message("[   INFO   ] killed worker %d holding %lld claim(s) after %lld steps\n", w->id,
                  held, completed_steps());
}

static void test_crash(void **state)
{
    (void)state;
    url = pgt_fresh_db("crash", 1);

    /* A producer: registers the template and creates the tasks; it has
     * no handlers, the worker processes run them. */
    tasker_coordinator *prod = pgt_open(url);
    char json[4096];
    int o = snprintf(json, sizeof json,
                     "{\"namespace\":\"crash\",\"name\":\"diamond10\",\"steps\":["
                     "{\"name\":\"root\",\"handler\":\"node\","
                     "\"retry\":{\"max_attempts\":5,\"backoff\":\"none\"}}");
    for (int i = 0; i < 8; i++)
        o += snprintf(json + o, sizeof json - (size_t)o,
                      ",{\"name\":\"mid%d\",\"handler\":\"node\",\"depends_on\":[\"root\"],"
                      "\"retry\":{\"max_attempts\":5,\"backoff\":\"none\"}}",
                      i);
    o += snprintf(json + o, sizeof json - (size_t)o,
                  ",{\"name\":\"sink\",\"handler\":\"node\",\"depends_on\":[\"mid0\",\"mid1\","
                  "\"mid2\",\"mid3\",\"mid4\",\"mid5\",\"mid6\",\"mid7\"],"
                  "\"retry\":{\"max_attempts\":5,\"backoff\":\"none\"}}]}");
    th_register(prod, json);
    for (int i = 0; i < TASKS; i++) {
        char uuid[TASKER_UUID_BUFSIZE];
        th_create(uuid, prod, "crash", "diamond10", NULL);
    }

    worker w[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        spawn(&w[i]);
    kill_mid_step(&w[0], TASKS * STEPS / 5);
    spawn(&w[0]);
    kill_mid_step(&w[0], TASKS * STEPS / 2);
    spawn(&w[0]);

    double deadline = th_now_ms() + th_wait_ms() * 4;
    while (pgt_num("SELECT count(*) FROM tasker.tasks WHERE state <> 2") > 0) {
        if (th_now_ms() > deadline)
            fail_msg("tasks still unfinished: %lld", 
                     pgt_num("SELECT count(*) FROM tasker.tasks WHERE state <> 2"));
        th_sleep_ms(100);
    }
    for (int i = 0; i < WORKERS; i++) {
        kill(w[i].pid, SIGTERM);
        int st;
        waitpid(w[i].pid, &st, 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        fclose(w[i].out);
    }

    /* Every task complete, every step complete with its result. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.tasks WHERE state = 2"), TASKS);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps WHERE state = 4 AND result IS NOT NULL"),
                     TASKS * STEPS);
    /* Recorded once: one 'succeeded' transition per step. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.history WHERE reason = 9"),
                     TASKS * STEPS);
    assert_int_equal(pgt_num("SELECT count(*) FROM (SELECT task_id, step_idx FROM "
                             "tasker.history WHERE reason = 9 GROUP BY 1, 2 "
                             "HAVING count(*) <> 1) x"),
                     0);
    /* By the worker that held the claim of that attempt. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.history s "
                             "JOIN tasker.history c ON c.task_id = s.task_id "
                             " AND c.step_idx = s.step_idx AND c.attempt = s.attempt "
                             " AND c.reason = 8 "
                             "WHERE s.reason = 9 AND c.worker_id IS DISTINCT FROM s.worker_id"),
                     0);
    /* No step has results from two workers: every claim of a step that did
     * not succeed ended in a lease expiry, never in a second success. */
    assert_int_equal(pgt_num("SELECT count(*) FROM (SELECT task_id, step_idx FROM "
                             "tasker.history WHERE reason = 9 GROUP BY 1, 2 "
                             "HAVING count(DISTINCT worker_id) > 1) x"),
                     0);
    /* The kills hit steps in flight, and those were taken over. */
    long long expired = pgt_num("SELECT count(*) FROM tasker.step_errors "
                                "WHERE class = 'tasker.LeaseExpired'");
    print_message("[   INFO   ] %lld attempt(s) lost with the killed workers were reclaimed; "
                  "%lld completion(s) fenced\n",
                  expired, pgt_num("SELECT count(*) FROM tasker.fenced"));
    assert_true(expired >= 2);
    /* Every result reached its dependents. */
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.steps WHERE idx = 9 "
                             "AND (result->>'v')::int = 17"),
                     TASKS);
    assert_int_equal(pgt_num("SELECT count(*) FROM tasker.queue"), 0);
    th_ok(tasker_coordinator_close(prod));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
