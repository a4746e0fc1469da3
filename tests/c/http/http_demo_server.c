/*
 * http_demo_server - a coordinator with something to show, behind the HTTP
 * endpoint, for the browser check (scripts/test.d/70-browser.sh).
 *
 * It runs, in namespace "shop":
 *   - 3 "ping" tasks that complete;
 *   - 2 "order" tasks whose "charge" step fails for good with the message
 *     DEMO_MESSAGE (so the page has recent failures and dead letters); with
 *     breaker.failure_threshold 2 the second failure opens the circuit
 *     "handler:charge", which stays open for an hour.
 * Then it starts the endpoint on 127.0.0.1 and a free port (or argv[1]),
 * prints "PORT <n>" on its own line, and serves until SIGTERM or SIGINT,
 * when it stops the endpoint, closes the coordinator and exits 0.  Any
 * setup failure prints the library's error and exits 1.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker.h"

/* Markup on purpose: the page must show it as text. */
#define DEMO_MESSAGE "card declined: amount > limit & <b>retry</b> later"

static int check(int rc, const char *what)
{
    if (rc != TASKER_OK) {
        const tasker_error *e = tasker_error_last();
        fprintf(stderr, "http_demo_server: %s: %s (%s) %s\n", what, tasker_strerror(rc),
                e->message, e->context_json);
        exit(1);
    }
    return rc;
}

static int ok_handler(tasker_step *step, void *ud)
{
    (void)ud;
    return tasker_step_succeed(step, "{\"ok\": true}", 0);
}

static int charge_handler(tasker_step *step, void *ud)
{
    (void)ud;
    tasker_failure f = TASKER_FAILURE_INIT;
    f.error_class = "PaymentDeclined";
    f.message = DEMO_MESSAGE;
    f.retryable = 0;
    return tasker_step_fail(step, &f);
}

static void run(tasker_coordinator *coord, const char *name, tasker_task_state expect)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "shop";
    req.name = name;
    char uuid[TASKER_UUID_BUFSIZE];
    check(tasker_task_create(uuid, coord, &req), "tasker_task_create");
    tasker_task_state st;
    check(tasker_task_wait(&st, coord, uuid, 30000), "tasker_task_wait");
    if (st != expect) {
        fprintf(stderr, "http_demo_server: task %s ended %s, expected %s\n", name,
                tasker_task_state_name(st), tasker_task_state_name(expect));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;

    /* Block the stop signals before any thread exists, so every thread
     * inherits the mask and sigwait below is the only receiver. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    tasker_config *cfg = NULL;
    check(tasker_config_new(&cfg), "tasker_config_new");
    check(tasker_config_set(cfg, "breaker.failure_threshold", "2"), "breaker.failure_threshold");
    check(tasker_config_set(cfg, "breaker.open_ms", "3600000"), "breaker.open_ms");
    tasker_coordinator *coord = NULL;
    check(tasker_coordinator_open(&coord, cfg), "tasker_coordinator_open");
    tasker_config_free(cfg);

    check(tasker_handler_register(coord, "validate", ok_handler, NULL, NULL), "register validate");
    check(tasker_handler_register(coord, "ping", ok_handler, NULL, NULL), "register ping");
    check(tasker_handler_register(coord, "charge", charge_handler, NULL, NULL), "register charge");
    check(tasker_handler_register(coord, "ship", ok_handler, NULL, NULL), "register ship");
    check(tasker_template_register_json(
              coord, "{\"namespace\":\"shop\",\"name\":\"ping\",\"steps\":[{\"name\":\"ping\"}]}",
              0),
          "register ping template");
    check(tasker_template_register_json(
              coord,
              "{\"namespace\":\"shop\",\"name\":\"order\",\"steps\":["
              "{\"name\":\"validate\"},"
              "{\"name\":\"charge\",\"depends_on\":[\"validate\"],\"retry\":{\"max_attempts\":1}},"
              "{\"name\":\"ship\",\"depends_on\":[\"charge\"]}]}",
              0),
          "register order template");
    check(tasker_coordinator_start(coord, 2), "tasker_coordinator_start");

    for (int i = 0; i < 3; i++)
        run(coord, "ping", TASKER_TASK_COMPLETE);
    for (int i = 0; i < 2; i++)
        run(coord, "order", TASKER_TASK_ERROR);
    tasker_circuit_state cs;
    check(tasker_circuit_get(&cs, coord, "handler:charge"), "tasker_circuit_get");
    if (cs != TASKER_CIRCUIT_OPEN) {
        fprintf(stderr, "http_demo_server: circuit handler:charge is %d, expected open\n", (int)cs);
        return 1;
    }

    tasker_http *http = NULL;
    check(tasker_http_start(&http, coord, "127.0.0.1", port), "tasker_http_start");
    printf("PORT %d\n", tasker_http_port(http));
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    tasker_http_stop(http);
    check(tasker_coordinator_close(coord), "tasker_coordinator_close");
    fprintf(stderr, "http_demo_server: stopped by signal %d\n", sig);
    return 0;
}
