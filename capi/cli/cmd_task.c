/* `tasker task create|get|cancel|retry|readiness`. */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const TASK_USAGE =
    "usage: tasker task create TEMPLATE [--context JSON|@FILE] [--idempotency-key KEY]\n"
    "                          [--priority N] [--database-url URL]\n"
    "       tasker task get UUID [--database-url URL]\n"
    "       tasker task cancel UUID [--database-url URL]\n"
    "       tasker task retry UUID [--database-url URL]\n"
    "       tasker task readiness UUID [--json] [--database-url URL]\n"
    "\n"
    "TEMPLATE is namespace/name (the highest registered version) or\n"
    "namespace/name@version.  --context is the task's input, a JSON object\n"
    "(@FILE reads it from a file, @- from standard input).  create prints the\n"
    "task's UUID; with an idempotency key already used for this template it\n"
    "prints that task's UUID instead.  Templates are registered by the\n"
    "programs that run their handlers (tasker_template_register).\n";

static char *read_all(FILE *f)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
    }
    buf[len] = '\0';
    return buf;
}

static int task_create(cli *c, int argc, char **argv)
{
    const char *tmpl = NULL, *context = NULL, *key = NULL, *prio = "0";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (cli_common_opt(c, argc, argv, &i, TASK_USAGE))
            continue;
        if ((!strcmp(a, "--context") || !strcmp(a, "--idempotency-key") ||
             !strcmp(a, "--priority")) &&
            i + 1 >= argc)
            cli_usage_error(TASK_USAGE, "%s needs a value", a);
        if (!strcmp(a, "--context"))
            context = argv[++i];
        else if (!strcmp(a, "--idempotency-key"))
            key = argv[++i];
        else if (!strcmp(a, "--priority"))
            prio = argv[++i];
        else if (a[0] == '-')
            cli_usage_error(TASK_USAGE, "task create: unknown option '%s'", a);
        else if (!tmpl)
            tmpl = a;
        else
            cli_usage_error(TASK_USAGE, "task create: unexpected argument '%s'", a);
    }
    if (!tmpl)
        cli_usage_error(TASK_USAGE, "task create: which template? (namespace/name[@version])");
    char *ns, *name, *version;
    cli_template_ref(tmpl, TASK_USAGE, &ns, &name, &version);
    char *end;
    long p = strtol(prio, &end, 10);
    if (*end || end == prio || p < -1000000 || p > 1000000)
        cli_usage_error(TASK_USAGE, "--priority '%s' is not an integer in -1000000..1000000",
                        prio);
    char *ctx_text = NULL;
    if (context && context[0] == '@') {
        FILE *f = !strcmp(context, "@-") ? stdin : fopen(context + 1, "rb");
        if (!f)
            cli_usage_error(TASK_USAGE, "--context: cannot read '%s'", context + 1);
        ctx_text = read_all(f);
        if (f != stdin)
            fclose(f);
        if (!ctx_text)
            cli_die(c, EXIT_FAIL, "out of memory reading %s", context + 1);
    } else if (context) {
        ctx_text = strdup(context);
    }
    if (ctx_text) {
        json_error_t jerr;
        json_t *j = json_loads(ctx_text, 0, &jerr);
        int obj = json_is_object(j);
        json_decref(j);
        if (!obj)
            cli_usage_error(TASK_USAGE, "--context must be a JSON object (%s)",
                            j ? "got another JSON value" : jerr.text);
    }
    cli_connect(c, 0);
    char prio_s[16];
    snprintf(prio_s, sizeof prio_s, "%ld", p);
    const char *vals[] = {ns, name, version, ctx_text, key, prio_s};
    PGresult *r = cli_query(c, "creating the task",
                            "SELECT status, task_uuid, detail FROM tasker.create_task($1, $2, $3, "
                            "$4, $5, $6::int)",
                            6, vals);
    int status = atoi(PQgetvalue(r, 0, 0));
    int rc = EXIT_OK;
    if (status == 0) {
        printf("%s\n", PQgetvalue(r, 0, 1));
    } else if (status == 1) {
        printf("%s\n", PQgetvalue(r, 0, 1));
        fprintf(stderr, "tasker: idempotency key '%s' was used before: existing task\n", key);
    } else if (status == 2) {
        fprintf(stderr, "tasker: no template %s/%s%s%s is registered in %s\n", ns, name,
                version ? "@" : "", version ? version : "", c->target);
        rc = EXIT_FAIL;
    } else {
        fprintf(stderr, "tasker: idempotency key '%s' is already used by task %s of template %s\n",
                key, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
        rc = EXIT_FAIL;
    }
    PQclear(r);
    free(ctx_text);
    return rc;
}

/* Parses "task VERB UUID [options]"; returns the UUID. */
static const char *uuid_arg(cli *c, int argc, char **argv)
{
    const char *uuid = NULL;
    for (int i = 2; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, TASK_USAGE))
            continue;
        if (argv[i][0] == '-')
            cli_usage_error(TASK_USAGE, "task %s: unknown option '%s'", argv[1], argv[i]);
        if (uuid)
            cli_usage_error(TASK_USAGE, "task %s: unexpected argument '%s'", argv[1], argv[i]);
        uuid = argv[i];
    }
    if (!uuid)
        cli_usage_error(TASK_USAGE, "task %s: which task? (its UUID)", argv[1]);
    cli_check_uuid(uuid, TASK_USAGE);
    return uuid;
}

static int task_get(cli *c, int argc, char **argv)
{
    const char *uuid = uuid_arg(c, argc, argv);
    cli_connect(c, 0);
    const char *vals[] = {uuid};
    PGresult *r = cli_query(c, "reading the task", "SELECT tasker.task_json($1::uuid)", 1, vals);
    if (PQgetisnull(r, 0, 0)) {
        PQclear(r);
        cli_die(c, EXIT_FAIL, "no task %s in %s", uuid, c->target);
    }
    json_t *j = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
    char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    printf("%s\n", s ? s : PQgetvalue(r, 0, 0));
    free(s);
    json_decref(j);
    PQclear(r);
    return EXIT_OK;
}

static int task_op(cli *c, int argc, char **argv, const char *sql, const char *done,
                   const char *why)
{
    const char *uuid = uuid_arg(c, argc, argv);
    cli_connect(c, 0);
    const char *vals[] = {uuid};
    PGresult *r = cli_query(c, argv[1], sql, 1, vals);
    int status = atoi(PQgetvalue(r, 0, 0));
    char state[64];
    snprintf(state, sizeof state, "%s", PQgetisnull(r, 0, 1) ? "?" : PQgetvalue(r, 0, 1));
    PQclear(r);
    if (status == 1)
        cli_die(c, EXIT_FAIL, "no task %s in %s", uuid, c->target);
    if (status != 0)
        cli_die(c, EXIT_FAIL, "task %s is %s; %s", uuid, state, why);
    printf("task %s %s\n", uuid, done);
    return EXIT_OK;
}

static int task_readiness(cli *c, int argc, char **argv)
{
    const char *uuid = uuid_arg(c, argc, argv);
    cli_connect(c, 0);
    const char *vals[] = {uuid};
    PGresult *r = cli_query(c, "reading the task",
                            "SELECT step, state, ready, reason FROM tasker.step_readiness($1::uuid)",
                            1, vals);
    if (PQntuples(r) == 0) {
        PQclear(r);
        cli_die(c, EXIT_FAIL, "no task %s in %s", uuid, c->target);
    }
    if (c->json) {
        json_t *arr = json_array();
        for (int i = 0; i < PQntuples(r); i++)
            json_array_append_new(arr, json_pack("{s:s, s:s, s:b, s:s}", "step",
                                                 PQgetvalue(r, i, 0), "state", PQgetvalue(r, i, 1),
                                                 "ready", PQgetvalue(r, i, 2)[0] == 't', "reason",
                                                 PQgetvalue(r, i, 3)));
        char *s = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", s ? s : "[]");
        free(s);
        json_decref(arr);
    } else {
        printf("%-24s %-18s %-5s %s\n", "STEP", "STATE", "READY", "REASON");
        for (int i = 0; i < PQntuples(r); i++)
            printf("%-24s %-18s %-5s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetvalue(r, i, 2)[0] == 't' ? "yes" : "no", PQgetvalue(r, i, 3));
    }
    PQclear(r);
    return EXIT_OK;
}

int cmd_task(cli *c, int argc, char **argv)
{
    if (argc < 2 || cli_is_help(argv[1])) {
        fputs(TASK_USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    for (int i = 2; i < argc; i++)
        if (cli_is_help(argv[i])) {
            fputs(TASK_USAGE, stdout);
            return EXIT_OK;
        }
    const char *verb = argv[1];
    if (!strcmp(verb, "create"))
        return task_create(c, argc, argv);
    if (!strcmp(verb, "get"))
        return task_get(c, argc, argv);
    if (!strcmp(verb, "cancel"))
        return task_op(c, argc, argv, "SELECT status, state FROM tasker.cancel_task($1::uuid)",
                       "cancelled", "it cannot be cancelled");
    if (!strcmp(verb, "retry"))
        return task_op(c, argc, argv, "SELECT status, state FROM tasker.retry_task($1::uuid)",
                       "is running again", "only a task in error can be retried");
    if (!strcmp(verb, "readiness"))
        return task_readiness(c, argc, argv);
    cli_usage_error(TASK_USAGE, "task: unknown subcommand '%s'", verb);
}
