/*
 * pg_crash_worker URL THREADS [LEASE_MS]
 *
 * A worker process for the crash test (test_pg_crash.c): runs handler
 * "node" on THREADS worker threads against the postgres store at URL until
 * SIGTERM or SIGINT, then closes cleanly.  Prints "ready <worker id>" once
 * it is claiming, so the test can find its leases in the database.
 *
 * "node" computes {"step": name, "v": 1 + the sum of its dependencies' v},
 * so the test can check that every result reached its dependents, and
 * takes 0.2-2 ms so that a SIGKILL usually lands in the middle of steps.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/postgres.h"
#include "tasker.h"

static int node(tasker_step *step, void *ud)
{
    (void)ud;
    long long v = 1;
    for (size_t i = 0; i < tasker_step_dependency_count(step); i++) {
        const char *json;
        size_t len;
        if (tasker_step_dependency_result(&json, &len, step, tasker_step_dependency_name(step, i)))
            return TASKER_EINVAL; /* fails the attempt: the test sees it */
        json_t *j = json_loadb(json, len, 0, NULL);
        v += json_integer_value(json_object_get(j, "v"));
        json_decref(j);
    }
    struct timespec ts = {0, (200 + rand() % 1800) * 1000L};
    nanosleep(&ts, NULL);
    char buf[600];
    snprintf(buf, sizeof buf, "{\"step\":\"%s\",\"v\":%lld}", tasker_step_name(step), v);
    return tasker_step_succeed(step, buf, 0) == TASKER_OK ? TASKER_OK : TASKER_ESTALE;
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "pg_crash_worker: %s: %s (%s)\n", what, tasker_strerror(rc),
            tasker_error_last()->message);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pg_crash_worker URL THREADS [LEASE_MS]\n");
        return 2;
    }
    srand((unsigned)getpid());
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* the threads inherit it */

    tasker_config *cfg;
    int rc;
    tasker_coordinator *coord = NULL;
    if ((rc = tasker_config_new(&cfg)) || (rc = tasker_config_set(cfg, "store", "postgres")) ||
        (rc = tasker_config_set(cfg, "database.url", argv[1])))
        return die("config", rc);
    rc = tasker_coordinator_open(&coord, cfg);
    tasker_config_free(cfg);
    if (rc)
        return die("open", rc);
    tk_pg_tuning t = {argc > 3 ? atoi(argv[3]) : 3000, 200, 16, 0, -1};
    if ((rc = tk_pg_tune(coord, &t)) || (rc = tasker_handler_register(coord, "node", node, NULL, NULL)) ||
        (rc = tasker_coordinator_start(coord, (unsigned)atoi(argv[2]))))
        return die("start", rc);
    tk_pg_stat st;
    tk_pg_stats(coord, &st);
    printf("ready %d\n", st.worker_id);
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    tasker_coordinator_close(coord);
    return 0;
}
