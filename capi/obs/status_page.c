/* The operator's status page: tasker_status_json() rendered as plain HTML.
 *
 * The page is built on the server so that it works without JavaScript (and
 * so that a Content-Security-Policy can forbid scripts outright).  Every
 * value that comes from the status JSON passes through put_esc(): template,
 * step and handler names and error messages are user data and may hold
 * markup. */
#include "obs/status_page.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/strbuf.h"
#include "tasker.h"

/* Seconds between the page's automatic reloads. */
#define REFRESH_SECONDS 5

typedef struct column {
    const char *key;   /* field in each JSON row */
    const char *label; /* column heading */
} column;

static const column failure_columns[] = {
    {"at", "at"},         {"namespace", "namespace"}, {"template", "template"},
    {"task_uuid", "task"}, {"step", "step"},           {"attempt", "attempt"},
    {"class", "class"},   {"message", "message"},
};

static const column dead_letter_columns[] = {
    {"namespace", "namespace"}, {"template", "template"}, {"task_uuid", "task"},
    {"step", "step"},           {"attempts", "attempts"}, {"class", "class"},
    {"message", "message"},
};

/* Appends `s` with the five characters that matter in HTML text and in
 * quoted attribute values replaced by entities.  Runs without them are copied
 * in one call so long messages cost little. */
static void put_esc(tk_sb *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *ent;
        switch (*s) {
        case '&': ent = "&amp;"; break;
        case '<': ent = "&lt;"; break;
        case '>': ent = "&gt;"; break;
        case '"': ent = "&quot;"; break;
        case '\'': ent = "&#39;"; break;
        default: continue;
        }
        if (s > run)
            tk_sb_printf(b, "%.*s", (int)(s - run), run);
        tk_sb_printf(b, "%s", ent);
        run = s + 1;
    }
    if (s > run)
        tk_sb_printf(b, "%.*s", (int)(s - run), run);
}

/* Appends any JSON value as escaped text: strings as they are, numbers in
 * decimal, null as nothing, objects and arrays as compact JSON. */
static void put_value(tk_sb *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        put_esc(b, json_string_value(v));
        break;
    case JSON_INTEGER:
        tk_sb_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        tk_sb_printf(b, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        tk_sb_printf(b, "true");
        break;
    case JSON_FALSE:
        tk_sb_printf(b, "false");
        break;
    case JSON_NULL:
        break;
    case JSON_OBJECT:
    case JSON_ARRAY: {
        char *text = json_dumps(v, JSON_COMPACT);
        if (!text) {
            b->oom = 1;
            break;
        }
        put_esc(b, text);
        /* json_dumps allocates with jansson's allocator, whichever it is. */
        json_free_t jfree;
        json_get_alloc_funcs(NULL, &jfree);
        jfree(text);
        break;
    }
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The keys of `obj` sorted, so rows keep their place between reloads.  NULL
 * with *n 0 for an empty object; NULL with *n > 0 when out of memory. */
static const char **sorted_keys(json_t *obj, size_t *n)
{
    *n = json_object_size(obj);
    if (*n == 0)
        return NULL;
    const char **keys = tk_malloc(*n * sizeof *keys);
    if (!keys)
        return NULL;
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        keys[i++] = k;
    }
    qsort(keys, *n, sizeof *keys, cmp_str);
    return keys;
}

/* Appends the string `name` to the array `list` unless it is there. */
static int add_unique(json_t *list, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        if (strcmp(json_string_value(v), name) == 0)
            return 0;
    }
    return json_array_append_new(list, json_string(name));
}

static void section_open(tk_sb *b, const char *id, const char *title, long count)
{
    tk_sb_printf(b, "<section id=\"%s\">\n<h2>%s", id, title);
    if (count >= 0)
        tk_sb_printf(b, " <span class=\"count\">%ld</span>", count);
    tk_sb_printf(b, "</h2>\n");
}

/* Tasks by state per namespace: the states tasker knows as columns in their
 * lifecycle order, then any other state the JSON names, then the total. */
static int render_tasks(tk_sb *b, json_t *tasks)
{
    if (!json_is_object(tasks))
        tasks = NULL;
    section_open(b, "tasks", "Tasks by state", -1);
    size_t n_ns = 0;
    const char **nss = tasks ? sorted_keys(tasks, &n_ns) : NULL;
    if (n_ns && !nss)
        return TASKER_ENOMEM;
    if (n_ns == 0) {
        tk_sb_printf(b, "<p class=\"empty\">No tasks.</p>\n</section>\n");
        return TASKER_OK;
    }
    int rc = TASKER_OK;
    json_t *cols = json_array();
    if (!cols) {
        rc = TASKER_ENOMEM;
        goto out;
    }
    for (int s = TASKER_TASK_PENDING; s <= TASKER_TASK_RESOLVED_MANUALLY; s++)
        if (add_unique(cols, tasker_task_state_name((tasker_task_state)s)) != 0) {
            rc = TASKER_ENOMEM;
            goto out;
        }
    for (size_t i = 0; i < n_ns; i++) {
        json_t *counts = json_object_get(tasks, nss[i]);
        const char *state;
        json_t *v;
        if (!json_is_object(counts))
            continue;
        json_object_foreach(counts, state, v) {
            if (add_unique(cols, state) != 0) {
                rc = TASKER_ENOMEM;
                goto out;
            }
        }
    }

    size_t ci;
    json_t *col;
    tk_sb_printf(b, "<table class=\"tasks\">\n<thead><tr><th scope=\"col\">namespace</th>");
    json_array_foreach(cols, ci, col) {
        tk_sb_printf(b, "<th scope=\"col\">");
        put_esc(b, json_string_value(col));
        tk_sb_printf(b, "</th>");
    }
    tk_sb_printf(b, "<th scope=\"col\">total</th></tr></thead>\n<tbody>\n");
    for (size_t i = 0; i < n_ns; i++) {
        json_t *counts = json_object_get(tasks, nss[i]);
        json_int_t total = 0;
        tk_sb_printf(b, "<tr data-namespace=\"");
        put_esc(b, nss[i]);
        tk_sb_printf(b, "\"><th scope=\"row\">");
        put_esc(b, nss[i]);
        tk_sb_printf(b, "</th>");
        json_array_foreach(cols, ci, col) {
            const char *state = json_string_value(col);
            json_t *v = json_is_object(counts) ? json_object_get(counts, state) : NULL;
            tk_sb_printf(b, "<td data-state=\"");
            put_esc(b, state);
            tk_sb_printf(b, "\"%s>", v && json_integer_value(v) ? "" : " class=\"zero\"");
            if (v)
                put_value(b, v);
            else
                tk_sb_printf(b, "0");
            tk_sb_printf(b, "</td>");
            if (json_is_integer(v))
                total += json_integer_value(v);
        }
        tk_sb_printf(b, "<td data-state=\"total\">%" JSON_INTEGER_FORMAT "</td></tr>\n", total);
    }
    tk_sb_printf(b, "</tbody>\n</table>\n</section>\n");
out:
    json_decref(cols);
    tk_free(nss);
    return rc;
}

/* A list of objects (recent failures, dead letters) as a table whose columns
 * are fixed; a field a row lacks stays empty. */
static void render_rows(tk_sb *b, const char *id, const char *title, json_t *rows,
                        const column *cols, size_t n_cols, const char *empty)
{
    size_t n = json_is_array(rows) ? json_array_size(rows) : 0;
    section_open(b, id, title, (long)n);
    if (n == 0) {
        tk_sb_printf(b, "<p class=\"empty\">%s</p>\n</section>\n", empty);
        return;
    }
    tk_sb_printf(b, "<table class=\"%s\">\n<thead><tr>", id);
    for (size_t c = 0; c < n_cols; c++)
        tk_sb_printf(b, "<th scope=\"col\">%s</th>", cols[c].label);
    tk_sb_printf(b, "</tr></thead>\n<tbody>\n");
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        tk_sb_printf(b, "<tr>");
        for (size_t c = 0; c < n_cols; c++) {
            json_t *v = json_is_object(row) ? json_object_get(row, cols[c].key) : NULL;
            tk_sb_printf(b, "<td class=\"%s\">", cols[c].key);
            if (v)
                put_value(b, v);
            tk_sb_printf(b, "</td>");
        }
        tk_sb_printf(b, "</tr>\n");
    }
    tk_sb_printf(b, "</tbody>\n</table>\n</section>\n");
}

static int is_known_circuit_state(const char *s)
{
    return s && (!strcmp(s, "closed") || !strcmp(s, "open") || !strcmp(s, "half_open"));
}

/* Circuits: one row per circuit, "state" first, then every other field any
 * circuit reports (mode, counters), so new fields show without a change here. */
static int render_circuits(tk_sb *b, json_t *circuits)
{
    if (!json_is_object(circuits))
        circuits = NULL;
    size_t n = 0;
    const char **names = circuits ? sorted_keys(circuits, &n) : NULL;
    if (n && !names)
        return TASKER_ENOMEM;
    long open = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(circuits, names[i]);
        const char *st = json_string_value(json_is_object(c) ? json_object_get(c, "state") : c);
        if (st && strcmp(st, "closed") != 0)
            open++;
    }
    section_open(b, "circuits", "Circuits", (long)n);
    if (n == 0) {
        tk_sb_printf(b, "<p class=\"empty\">No circuits yet.</p>\n</section>\n");
        return TASKER_OK;
    }
    tk_sb_printf(b, "<p class=\"summary\">%ld not closed.</p>\n", open);
    int rc = TASKER_OK;
    json_t *fields = json_array();
    if (!fields || add_unique(fields, "state") != 0) {
        rc = TASKER_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(circuits, names[i]);
        const char *k;
        json_t *v;
        if (!json_is_object(c))
            continue;
        json_object_foreach(c, k, v) {
            if (add_unique(fields, k) != 0) {
                rc = TASKER_ENOMEM;
                goto out;
            }
        }
    }
    size_t fi;
    json_t *f;
    tk_sb_printf(b, "<table class=\"circuits\">\n<thead><tr><th scope=\"col\">circuit</th>");
    json_array_foreach(fields, fi, f) {
        tk_sb_printf(b, "<th scope=\"col\">");
        put_esc(b, json_string_value(f));
        tk_sb_printf(b, "</th>");
    }
    tk_sb_printf(b, "</tr></thead>\n<tbody>\n");
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(circuits, names[i]);
        /* A circuit may be reported as a bare state string. */
        json_t *state = json_is_object(c) ? json_object_get(c, "state") : c;
        const char *st = json_string_value(state);
        tk_sb_printf(b, "<tr data-circuit=\"");
        put_esc(b, names[i]);
        tk_sb_printf(b, "\"");
        if (is_known_circuit_state(st))
            tk_sb_printf(b, " class=\"circuit-%s\"", st);
        tk_sb_printf(b, "><th scope=\"row\">");
        put_esc(b, names[i]);
        tk_sb_printf(b, "</th>");
        json_array_foreach(fields, fi, f) {
            const char *name = json_string_value(f);
            json_t *v = fi == 0 ? state : json_is_object(c) ? json_object_get(c, name) : NULL;
            tk_sb_printf(b, "<td data-field=\"");
            put_esc(b, name);
            tk_sb_printf(b, "\">");
            if (v)
                put_value(b, v);
            tk_sb_printf(b, "</td>");
        }
        tk_sb_printf(b, "</tr>\n");
    }
    tk_sb_printf(b, "</tbody>\n</table>\n</section>\n");
out:
    json_decref(fields);
    tk_free(names);
    return rc;
}

static const char page_head[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta http-equiv=\"refresh\" content=\"%d\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>tasker status</title>\n"
    "<style>\n"
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\n"
    "h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\n"
    ".meta,.empty,.summary{color:#666;margin:.2em 0}\n"
    ".count{color:#666;font-weight:normal}\n"
    "table{border-collapse:collapse}\n"
    "th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\n"
    "thead th{background:#f3f3f3}\n"
    "td.zero{color:#aaa}\n"
    "td.at,td.task_uuid{white-space:nowrap;font-family:ui-monospace,monospace;font-size:.9em}\n"
    "td.message{max-width:40em;white-space:pre-wrap;word-break:break-word}\n"
    "tr.circuit-open td[data-field=state]{background:#f8d7da;font-weight:bold}\n"
    "tr.circuit-half_open td[data-field=state]{background:#fff3cd}\n"
    "</style>\n</head>\n<body>\n";

int tk_status_page_render(char **html_out, size_t *len_out, const char *status_json)
{
    if (!html_out || !len_out || !status_json)
        return tk_einval("tk_status_page_render: arguments must not be NULL");
    *html_out = NULL;
    *len_out = 0;
    json_error_t jerr;
    json_t *root = json_loads(status_json, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return tk_err(TASKER_EINTERNAL, TASKER_CATEGORY_INTERNAL, NULL,
                      "status page: the status report is not a JSON object (%s)", jerr.text);
    }
    tk_sb b;
    tk_sb_init(&b, 16384);
    int rc = TASKER_OK;
    if (b.oom) {
        rc = TASKER_ENOMEM;
        goto out;
    }

    char generated[32] = "";
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm))
        strftime(generated, sizeof generated, "%Y-%m-%dT%H:%M:%SZ", &tm);
    tk_sb_printf(&b, page_head, REFRESH_SECONDS);
    tk_sb_printf(&b,
                 "<header>\n<h1>tasker status</h1>\n"
                 "<p class=\"meta\">tasker %s &middot; generated <time>%s</time> &middot; "
                 "reloads every %d&nbsp;s &middot; <a href=\"/status.json\">status.json</a> "
                 "&middot; <a href=\"/metrics\">metrics</a> &middot; "
                 "<a href=\"/health/ready\">health</a></p>\n</header>\n<main>\n",
                 tasker_version(), generated, REFRESH_SECONDS);
    rc = render_tasks(&b, json_object_get(root, "tasks"));
    if (rc != TASKER_OK)
        goto out;
    render_rows(&b, "recent-failures", "Recent failures", json_object_get(root, "recent_failures"),
                failure_columns, sizeof failure_columns / sizeof failure_columns[0],
                "No failed attempts.");
    render_rows(&b, "dead-letters", "Dead letters", json_object_get(root, "dead_letters"),
                dead_letter_columns, sizeof dead_letter_columns / sizeof dead_letter_columns[0],
                "No steps in error.");
    rc = render_circuits(&b, json_object_get(root, "circuits"));
    if (rc != TASKER_OK)
        goto out;
    tk_sb_printf(&b, "</main>\n</body>\n</html>\n");
    if (b.oom)
        rc = TASKER_ENOMEM;
out:
    json_decref(root);
    if (rc != TASKER_OK) {
        tk_free(b.buf);
        return rc == TASKER_ENOMEM ? tk_enomem() : rc;
    }
    *html_out = b.buf;
    *len_out = b.len;
    return TASKER_OK;
}
