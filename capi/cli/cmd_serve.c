/*
 * tasker config check  - report every bad configuration key or value at once.
 * tasker serve         - run the HTTP endpoint (health, metrics, status page)
 *                        until SIGTERM or SIGINT, then shut down gracefully.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tasker.h"

/* Exit status of `serve` when steps were still in flight after the drain. */
#define EXIT_DRAIN_TIMEOUT 3

static const char *const CONFIG_USAGE =
    "usage: tasker config check [--config FILE]\n"
    "\n"
    "Builds the configuration as a coordinator would: the defaults, then FILE\n"
    "(`key = value` lines) if given, then the environment (TASKER_* variables,\n"
    "e.g. TASKER_DATABASE_URL for database.url).  Prints every unknown key and\n"
    "every bad value with its allowed range, and exits 1 if there is any.\n";

static const char *const SERVE_USAGE =
    "usage: tasker serve [--config FILE] [--database-url URL] [--bind ADDRESS] [--port N]\n"
    "                    [--drain-ms MS]\n"
    "\n"
    "Opens a coordinator (the configuration as in `tasker config check`; with a\n"
    "database URL the store is postgres) and serves /health/live, /health/ready,\n"
    "/metrics, /status.json and a status page on ADDRESS:N (default\n"
    "127.0.0.1:9464; --port 0 picks a free port, printed on stdout).  Logs JSON\n"
    "lines to stderr (log.level defaults to info here).\n"
    "\n"
    "On SIGTERM or SIGINT it stops claiming, lets running steps finish for up to\n"
    "--drain-ms (default 10000), releases what is left, and exits 0, or 3 when\n"
    "steps were still in flight after the drain.\n";

/* Prints the errors of the last failed configuration call, one per line. */
static void print_config_errors(const char *source)
{
    const tasker_error *e = tasker_error_last();
    json_t *ctx = json_loads(e->context_json, 0, NULL);
    json_t *errors = json_object_get(ctx, "errors");
    if (!json_is_array(errors) || json_array_size(errors) == 0) {
        fprintf(stderr, "tasker: %s: %s\n", source, e->message);
    } else {
        size_t i;
        json_t *err;
        json_array_foreach(errors, i, err) {
            const char *key = json_string_value(json_object_get(err, "key"));
            const char *var = json_string_value(json_object_get(err, "variable"));
            const char *msg = json_string_value(json_object_get(err, "message"));
            json_int_t line = json_integer_value(json_object_get(err, "line"));
            fprintf(stderr, "tasker: %s", source);
            if (line)
                fprintf(stderr, ":%lld", (long long)line);
            if (var)
                fprintf(stderr, ": %s", var);
            if (key)
                fprintf(stderr, ": %s", key);
            fprintf(stderr, ": %s\n", msg ? msg : "invalid");
        }
    }
    json_decref(ctx);
}

/* Defaults, then the file, then the environment; NULL with errors printed. */
static tasker_config *load_config(const char *file, const char *url, int for_serve)
{
    tasker_config *cfg = NULL;
    if (tasker_config_new(&cfg) != TASKER_OK) {
        fprintf(stderr, "tasker: out of memory\n");
        return NULL;
    }
    int bad = 0;
    if (for_serve)
        tasker_config_set(cfg, "log.level", "info");
    if (file && tasker_config_load_file(cfg, file) != TASKER_OK) {
        print_config_errors(file);
        bad = 1;
    }
    if (tasker_config_load_env(cfg, NULL) != TASKER_OK) {
        print_config_errors("environment");
        bad = 1;
    }
    if (url && (tasker_config_set(cfg, "database.url", url) != TASKER_OK ||
                tasker_config_set(cfg, "store", "postgres") != TASKER_OK)) {
        print_config_errors("--database-url");
        bad = 1;
    }
    if (!bad) {
        char *db = NULL;
        if (tasker_config_get(&db, cfg, "database.url") == TASKER_OK && db && *db)
            tasker_config_set(cfg, "store", "postgres");
        tasker_free(db);
        if (tasker_config_validate(cfg) != TASKER_OK) {
            print_config_errors("configuration");
            bad = 1;
        }
    }
    if (bad) {
        tasker_config_free(cfg);
        return NULL;
    }
    return cfg;
}

int cmd_config(cli *c, int argc, char **argv)
{
    (void)c;
    const char *file = NULL;
    if (argc < 2 || cli_is_help(argv[1])) {
        fputs(CONFIG_USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[1], "check") != 0)
        cli_usage_error(CONFIG_USAGE, "config: unknown subcommand '%s'", argv[1]);
    for (int i = 2; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(CONFIG_USAGE, stdout);
            return EXIT_OK;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            file = argv[++i];
        else
            cli_usage_error(CONFIG_USAGE, "config check: unexpected argument '%s'", argv[i]);
    }
    tasker_config *cfg = load_config(file, NULL, 0);
    if (!cfg)
        return EXIT_FAIL;
    tasker_config_free(cfg);
    printf("configuration is valid\n");
    return EXIT_OK;
}

int cmd_serve(cli *c, int argc, char **argv)
{
    const char *file = NULL, *bind = "127.0.0.1";
    int port = 9464, drain_ms = 10000;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(SERVE_USAGE, stdout);
            return EXIT_OK;
        }
        if (cli_common_opt(c, argc, argv, &i, SERVE_USAGE))
            continue;
        if (i + 1 >= argc)
            cli_usage_error(SERVE_USAGE, "serve: '%s' needs a value or is unknown", argv[i]);
        char *end;
        if (!strcmp(argv[i], "--config"))
            file = argv[++i];
        else if (!strcmp(argv[i], "--bind"))
            bind = argv[++i];
        else if (!strcmp(argv[i], "--port")) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 0 || v > 65535)
                cli_usage_error(SERVE_USAGE, "serve: --port must be 0..65535, got '%s'", argv[i]);
            port = (int)v;
        } else if (!strcmp(argv[i], "--drain-ms")) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 0 || v > 86400000)
                cli_usage_error(SERVE_USAGE, "serve: --drain-ms must be 0..86400000, got '%s'",
                                argv[i]);
            drain_ms = (int)v;
        } else
            cli_usage_error(SERVE_USAGE, "serve: unknown option '%s'", argv[i]);
    }
    const char *url = c->url;
    tasker_config *cfg = load_config(file, url, 1);
    if (!cfg)
        return EXIT_FAIL;

    /* Block the signals before any thread starts, so that every thread
     * inherits the mask and only sigwait below receives them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    tasker_coordinator *coord = NULL;
    int rc = tasker_coordinator_open(&coord, cfg);
    tasker_config_free(cfg);
    if (rc != TASKER_OK) {
        fprintf(stderr, "tasker: serve: %s\n", tasker_error_last()->message);
        return EXIT_FAIL;
    }
    tasker_http *http = NULL;
    if (tasker_http_start(&http, coord, bind, port) != TASKER_OK) {
        fprintf(stderr, "tasker: serve: %s\n", tasker_error_last()->message);
        tasker_coordinator_close(coord);
        return EXIT_FAIL;
    }
    printf("listening on %s:%d\n", bind, tasker_http_port(http));
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "tasker: serve: %s received; shutting down\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT");
    tasker_http_stop(http);
    int stop_rc = tasker_coordinator_stop(coord, drain_ms);
    tasker_coordinator_close(coord);
    return stop_rc == TASKER_ETIMEOUT ? EXIT_DRAIN_TIMEOUT : EXIT_OK;
}
