/* `tasker status`, `tasker dlq ...`, `tasker graph`, `tasker prune`. */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const STATUS_USAGE =
    "usage: tasker status [--json] [--database-url URL]\n"
    "\n"
    "Tasks by namespace and state; per namespace the queue: steps ready to\n"
    "claim, leased by a worker, waiting for a retry, and how long the oldest\n"
    "ready step has waited.\n";

static const char *const DLQ_USAGE =
    "usage: tasker dlq list [--limit N] [--namespace NS] [--json] [--database-url URL]\n"
    "       tasker dlq requeue ID... [--database-url URL]\n"
    "       tasker dlq purge [--older-than AGE] [--namespace NS] [--database-url URL]\n"
    "\n"
    "Dead letters are steps that failed for good (retries exhausted or a\n"
    "permanent failure).  requeue runs one again with a fresh attempt budget\n"
    "(its task runs again); purge removes entries from the list and leaves\n"
    "their steps in error.  AGE is a PostgreSQL interval: 30d, 12h, '7 days'.\n";

static const char *const GRAPH_USAGE =
    "usage: tasker graph TEMPLATE [--database-url URL]\n"
    "\n"
    "Prints the steps of TEMPLATE (namespace/name[@version]; without a version\n"
    "the highest) as a Graphviz DOT graph: tasker graph shop/order | dot -Tsvg\n";

static const char *const PRUNE_USAGE =
    "usage: tasker prune --older-than AGE [--batch N] [--include-errors] [--database-url URL]\n"
    "\n"
    "Deletes tasks that finished (complete, cancelled, resolved manually; with\n"
    "--include-errors also error) more than AGE ago, with their steps, history\n"
    "and dead letters, N tasks per transaction (default 1000).  AGE is a\n"
    "PostgreSQL interval: 30d, 12h, 90m, '2 weeks'.\n";

static int wants_help(int argc, char **argv, int from)
{
    for (int i = from; i < argc; i++)
        if (cli_is_help(argv[i]))
            return 1;
    return 0;
}

/* Checks that `text` is a PostgreSQL interval (after connecting). */
static void check_interval(cli *c, const char *text, const char *opt, const char *usage)
{
    const char *vals[] = {text};
    PGresult *r = PQexecParams(c->conn, "SELECT $1::interval", 1, NULL, vals, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    if (!ok) {
        cli_disconnect(c);
        cli_usage_error(usage, "%s '%s' is not a duration (examples: 30d, 12h, 15m, '7 days')",
                        opt, text);
    }
}

/* ---- status ------------------------------------------------------------------- */

int cmd_status(cli *c, int argc, char **argv)
{
    if (wants_help(argc, argv, 1)) {
        fputs(STATUS_USAGE, stdout);
        return EXIT_OK;
    }
    for (int i = 1; i < argc; i++)
        if (!cli_common_opt(c, argc, argv, &i, STATUS_USAGE))
            cli_usage_error(STATUS_USAGE, "status: unexpected argument '%s'", argv[i]);
    cli_connect(c, 0);
    PGresult *t = cli_query(c, "counting tasks",
                            "SELECT namespace, state, tasks FROM tasker.task_counts()", 0, NULL);
    PGresult *q = cli_query(c, "reading the queue",
                            "SELECT namespace, ready, leased, delayed, "
                            "coalesce(round(oldest_ready_age_ms)::text, '') "
                            "FROM tasker.queue_stats()",
                            0, NULL);
    PGresult *d = cli_query(c, "counting dead letters",
                            "SELECT count(*) FROM tasker.dead_letters WHERE resolved_at IS NULL",
                            0, NULL);
    if (c->json) {
        json_t *root = json_object(), *tasks = json_object(), *queues = json_object();
        for (int i = 0; i < PQntuples(t); i++) {
            json_t *ns = json_object_get(tasks, PQgetvalue(t, i, 0));
            if (!ns)
                json_object_set_new(tasks, PQgetvalue(t, i, 0), ns = json_object());
            json_object_set_new(ns, PQgetvalue(t, i, 1),
                                json_integer(strtoll(PQgetvalue(t, i, 2), NULL, 10)));
        }
        for (int i = 0; i < PQntuples(q); i++) {
            const char *age = PQgetvalue(q, i, 4);
            json_object_set_new(
                queues, PQgetvalue(q, i, 0),
                json_pack("{s:I, s:I, s:I, s:o}", "ready",
                          (json_int_t)strtoll(PQgetvalue(q, i, 1), NULL, 10), "leased",
                          (json_int_t)strtoll(PQgetvalue(q, i, 2), NULL, 10), "delayed",
                          (json_int_t)strtoll(PQgetvalue(q, i, 3), NULL, 10),
                          "oldest_ready_age_ms",
                          *age ? json_integer(strtoll(age, NULL, 10)) : json_null()));
        }
        json_object_set_new(root, "tasks", tasks);
        json_object_set_new(root, "queues", queues);
        json_object_set_new(root, "dead_letters",
                            json_integer(strtoll(PQgetvalue(d, 0, 0), NULL, 10)));
        char *s = json_dumps(root, JSON_INDENT(2));
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(root);
    } else {
        printf("Tasks (%s)\n", c->target);
        printf("  %-24s %-18s %10s\n", "NAMESPACE", "STATE", "TASKS");
        for (int i = 0; i < PQntuples(t); i++)
            printf("  %-24s %-18s %10s\n", PQgetvalue(t, i, 0), PQgetvalue(t, i, 1),
                   PQgetvalue(t, i, 2));
        if (PQntuples(t) == 0)
            printf("  (no tasks)\n");
        printf("\nQueues\n");
        printf("  %-24s %10s %10s %10s %18s\n", "NAMESPACE", "READY", "LEASED", "DELAYED",
               "OLDEST READY (ms)");
        for (int i = 0; i < PQntuples(q); i++)
            printf("  %-24s %10s %10s %10s %18s\n", PQgetvalue(q, i, 0), PQgetvalue(q, i, 1),
                   PQgetvalue(q, i, 2), PQgetvalue(q, i, 3),
                   *PQgetvalue(q, i, 4) ? PQgetvalue(q, i, 4) : "-");
        if (PQntuples(q) == 0)
            printf("  (empty)\n");
        printf("\nDead letters: %s\n", PQgetvalue(d, 0, 0));
    }
    PQclear(t);
    PQclear(q);
    PQclear(d);
    return EXIT_OK;
}

/* ---- dead letters ------------------------------------------------------------------ */

static int dlq_list(cli *c, int argc, char **argv)
{
    const char *limit = "100", *ns = NULL;
    for (int i = 2; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, DLQ_USAGE))
            continue;
        if ((!strcmp(argv[i], "--limit") || !strcmp(argv[i], "--namespace")) && i + 1 >= argc)
            cli_usage_error(DLQ_USAGE, "%s needs a value", argv[i]);
        if (!strcmp(argv[i], "--limit"))
            limit = argv[++i];
        else if (!strcmp(argv[i], "--namespace"))
            ns = argv[++i];
        else
            cli_usage_error(DLQ_USAGE, "dlq list: unexpected argument '%s'", argv[i]);
    }
    char *end;
    long n = strtol(limit, &end, 10);
    if (*end || end == limit || n < 1 || n > 1000000)
        cli_usage_error(DLQ_USAGE, "--limit '%s' is not a number in 1..1000000", limit);
    cli_connect(c, 0);
    const char *vals[] = {limit, ns};
    PGresult *r = cli_query(c, "listing dead letters",
                            "SELECT id, task_uuid, namespace, template, step, handler, attempts, "
                            "error_class, error_message, reason, created_at "
                            "FROM tasker.dlq_list($1::int, $2)",
                            2, vals);
    if (c->json) {
        json_t *arr = json_array();
        for (int i = 0; i < PQntuples(r); i++)
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:i, s:s?, s:s?, s:s, s:s}", "id",
                               (json_int_t)strtoll(PQgetvalue(r, i, 0), NULL, 10), "task",
                               PQgetvalue(r, i, 1), "namespace", PQgetvalue(r, i, 2), "template",
                               PQgetvalue(r, i, 3), "step", PQgetvalue(r, i, 4), "handler",
                               PQgetvalue(r, i, 5), "attempts", atoi(PQgetvalue(r, i, 6)),
                               "error_class", PQgetisnull(r, i, 7) ? NULL : PQgetvalue(r, i, 7),
                               "error_message", PQgetisnull(r, i, 8) ? NULL : PQgetvalue(r, i, 8),
                               "reason", PQgetvalue(r, i, 9), "at", PQgetvalue(r, i, 10)));
        char *s = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", s ? s : "[]");
        free(s);
        json_decref(arr);
    } else if (PQntuples(r) == 0) {
        printf("no dead letters\n");
    } else {
        printf("%-6s %-36s %-20s %-16s %-8s %s\n", "ID", "TASK", "TEMPLATE", "STEP", "ATTEMPTS",
               "ERROR");
        for (int i = 0; i < PQntuples(r); i++) {
            char tmpl[512];
            snprintf(tmpl, sizeof tmpl, "%s/%s", PQgetvalue(r, i, 2), PQgetvalue(r, i, 3));
            printf("%-6s %-36s %-20s %-16s %-8s %s: %s\n", PQgetvalue(r, i, 0),
                   PQgetvalue(r, i, 1), tmpl, PQgetvalue(r, i, 4), PQgetvalue(r, i, 6),
                   PQgetvalue(r, i, 7), PQgetvalue(r, i, 8));
        }
    }
    PQclear(r);
    return EXIT_OK;
}

static int dlq_requeue(cli *c, int argc, char **argv)
{
    const char *ids[256];
    int n = 0;
    for (int i = 2; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, DLQ_USAGE))
            continue;
        char *end;
        long long v = strtoll(argv[i], &end, 10);
        if (*end || end == argv[i] || v < 1)
            cli_usage_error(DLQ_USAGE, "dlq requeue: '%s' is not a dead-letter id (see dlq list)",
                            argv[i]);
        if (n == 256)
            cli_usage_error(DLQ_USAGE, "dlq requeue: at most 256 ids at once");
        ids[n++] = argv[i];
    }
    if (!n)
        cli_usage_error(DLQ_USAGE, "dlq requeue: which dead letters? (ids from dlq list)");
    cli_connect(c, 0);
    int rc = EXIT_OK;
    for (int i = 0; i < n; i++) {
        const char *vals[] = {ids[i]};
        PGresult *r = cli_query(c, "requeueing a dead letter",
                                "SELECT status, state FROM tasker.dlq_requeue($1::bigint)", 1,
                                vals);
        int status = atoi(PQgetvalue(r, 0, 0));
        if (status == 0) {
            printf("dead letter %s requeued\n", ids[i]);
        } else if (status == 1) {
            fprintf(stderr, "tasker: no open dead letter %s\n", ids[i]);
            rc = EXIT_FAIL;
        } else {
            fprintf(stderr, "tasker: dead letter %s: its task is %s and cannot run again\n",
                    ids[i], PQgetvalue(r, 0, 1));
            rc = EXIT_FAIL;
        }
        PQclear(r);
    }
    return rc;
}

static int dlq_purge(cli *c, int argc, char **argv)
{
    const char *older = NULL, *ns = NULL;
    for (int i = 2; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, DLQ_USAGE))
            continue;
        if ((!strcmp(argv[i], "--older-than") || !strcmp(argv[i], "--namespace")) &&
            i + 1 >= argc)
            cli_usage_error(DLQ_USAGE, "%s needs a value", argv[i]);
        if (!strcmp(argv[i], "--older-than"))
            older = argv[++i];
        else if (!strcmp(argv[i], "--namespace"))
            ns = argv[++i];
        else
            cli_usage_error(DLQ_USAGE, "dlq purge: unexpected argument '%s'", argv[i]);
    }
    cli_connect(c, 0);
    if (older)
        check_interval(c, older, "--older-than", DLQ_USAGE);
    const char *vals[] = {older, ns};
    PGresult *r = cli_query(c, "purging dead letters",
                            "SELECT tasker.dlq_purge($1::interval, $2)", 2, vals);
    printf("%s dead letter(s) purged\n", PQgetvalue(r, 0, 0));
    PQclear(r);
    return EXIT_OK;
}

int cmd_dlq(cli *c, int argc, char **argv)
{
    if (argc < 2 || cli_is_help(argv[1])) {
        fputs(DLQ_USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (wants_help(argc, argv, 2)) {
        fputs(DLQ_USAGE, stdout);
        return EXIT_OK;
    }
    if (!strcmp(argv[1], "list"))
        return dlq_list(c, argc, argv);
    if (!strcmp(argv[1], "requeue"))
        return dlq_requeue(c, argc, argv);
    if (!strcmp(argv[1], "purge"))
        return dlq_purge(c, argc, argv);
    cli_usage_error(DLQ_USAGE, "dlq: unknown subcommand '%s'", argv[1]);
}

/* ---- graph ----------------------------------------------------------------------------- */

/* A DOT double-quoted string: only '"' and '\' need escaping. */
static void dot_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        putchar(*s);
    }
    putchar('"');
}

int cmd_graph(cli *c, int argc, char **argv)
{
    if (wants_help(argc, argv, 1)) {
        fputs(GRAPH_USAGE, stdout);
        return EXIT_OK;
    }
    const char *ref = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, GRAPH_USAGE))
            continue;
        if (argv[i][0] == '-' || ref)
            cli_usage_error(GRAPH_USAGE, "graph: unexpected argument '%s'", argv[i]);
        ref = argv[i];
    }
    if (!ref)
        cli_usage_error(GRAPH_USAGE, "graph: which template? (namespace/name[@version])");
    char *ns, *name, *version;
    cli_template_ref(ref, GRAPH_USAGE, &ns, &name, &version);
    cli_connect(c, 0);
    const char *vals[] = {ns, name, version};
    PGresult *t = cli_query(
        c, "reading the template",
        "SELECT t.id, t.version FROM tasker.templates t "
        "JOIN tasker.namespaces n ON n.id = t.namespace_id "
        "LEFT JOIN tasker.template_latest l ON l.namespace_id = t.namespace_id AND l.name = t.name "
        "WHERE n.name = $1 AND t.name = $2 AND ($3::text IS NULL AND l.template_id = t.id "
        "OR t.version = $3)",
        3, vals);
    if (PQntuples(t) == 0) {
        PQclear(t);
        cli_die(c, EXIT_FAIL, "no template %s/%s%s%s is registered in %s", ns, name,
                version ? "@" : "", version ? version : "", c->target);
    }
    char id[32], ver[512];
    snprintf(id, sizeof id, "%s", PQgetvalue(t, 0, 0));
    snprintf(ver, sizeof ver, "%s", PQgetvalue(t, 0, 1));
    PQclear(t);
    const char *v2[] = {id};
    PGresult *s = cli_query(c, "reading the template's steps",
                            "SELECT idx, name, handler, max_attempts, "
                            "array_to_json(dep_names)::text FROM tasker.template_steps "
                            "WHERE template_id = $1::int ORDER BY idx",
                            1, v2);
    char title[2048];
    snprintf(title, sizeof title, "%s/%s@%s", ns, name, ver);
    printf("digraph ");
    dot_str(title);
    printf(" {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for (int i = 0; i < PQntuples(s); i++) {
        const char *step = PQgetvalue(s, i, 1), *handler = PQgetvalue(s, i, 2);
        printf("  ");
        dot_str(step);
        if (strcmp(step, handler)) {
            size_t n = strlen(step) + strlen(handler) + 16;
            char *label = malloc(n);
            if (label) {
                snprintf(label, n, "%s\n(%s)", step, handler);
                printf(" [label=");
                /* keep the newline as DOT's \n escape */
                putchar('"');
                for (const char *p = label; *p; p++) {
                    if (*p == '\n') {
                        fputs("\\n", stdout);
                        continue;
                    }
                    if (*p == '"' || *p == '\\')
                        putchar('\\');
                    putchar(*p);
                }
                putchar('"');
                printf("]");
                free(label);
            }
        }
        printf(";\n");
    }
    for (int i = 0; i < PQntuples(s); i++) {
        json_t *deps = json_loads(PQgetvalue(s, i, 4), 0, NULL);
        size_t k;
        json_t *d;
        json_array_foreach(deps, k, d)
        {
            printf("  ");
            dot_str(json_string_value(d));
            printf(" -> ");
            dot_str(PQgetvalue(s, i, 1));
            printf(";\n");
        }
        json_decref(deps);
    }
    printf("}\n");
    PQclear(s);
    return EXIT_OK;
}

/* ---- prune -------------------------------------------------------------------------------- */

int cmd_prune(cli *c, int argc, char **argv)
{
    if (wants_help(argc, argv, 1)) {
        fputs(PRUNE_USAGE, stdout);
        return EXIT_OK;
    }
    const char *older = NULL, *batch = "1000";
    int errors = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_common_opt(c, argc, argv, &i, PRUNE_USAGE))
            continue;
        if ((!strcmp(argv[i], "--older-than") || !strcmp(argv[i], "--batch")) && i + 1 >= argc)
            cli_usage_error(PRUNE_USAGE, "%s needs a value", argv[i]);
        if (!strcmp(argv[i], "--older-than"))
            older = argv[++i];
        else if (!strcmp(argv[i], "--batch"))
            batch = argv[++i];
        else if (!strcmp(argv[i], "--include-errors"))
            errors = 1;
        else
            cli_usage_error(PRUNE_USAGE, "prune: unexpected argument '%s'", argv[i]);
    }
    if (!older)
        cli_usage_error(PRUNE_USAGE, "prune: --older-than AGE is required");
    char *end;
    long b = strtol(batch, &end, 10);
    if (*end || end == batch || b < 1 || b > 100000)
        cli_usage_error(PRUNE_USAGE, "--batch '%s' is not a number in 1..100000", batch);
    cli_connect(c, 0);
    check_interval(c, older, "--older-than", PRUNE_USAGE);
    const char *vals[] = {older, batch, errors ? "t" : "f"};
    long long total = 0;
    for (;;) {
        /* One short transaction per batch, so pruning never holds many
         * locks or a long snapshot. */
        PGresult *r = cli_query(c, "pruning",
                                "SELECT tasker.prune($1::interval, $2::int, $3::boolean)", 3, vals);
        long n = atol(PQgetvalue(r, 0, 0));
        PQclear(r);
        total += n;
        if (n < b)
            break;
    }
    printf("%lld task(s) pruned\n", total);
    return EXIT_OK;
}
