/* Templates: the builder, JSON in and out, and every rejection. */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    *state = th_open(NULL);
    return 0;
}

static int teardown(void **state)
{
    tasker_coordinator_close(*state);
    return 0;
}

static json_t *to_json(const tasker_template *t)
{
    char *text = NULL;
    th_ok(tasker_template_to_json(&text, t));
    assert_non_null(text);
    json_t *j = json_loads(text, 0, NULL);
    if (j == NULL)
        fail_msg("tasker_template_to_json gave unparsable JSON: %s", text);
    tasker_free(text);
    return j;
}

static json_t *find_step(json_t *tmpl, const char *name)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(tmpl, "steps"), i, s)
    {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) == 0)
            return s;
    }
    fail_msg("step %s missing from template JSON", name);
    return NULL;
}

/* Register `json`; expect ETEMPLATE with `reason` (and `step` when not NULL). */
#define reject(c, json, reason, step) _reject(__FILE__, __LINE__, (c), (json), (reason), (step))
static void _reject(const char *file, int line, tasker_coordinator *c, const char *json,
                    const char *reason, const char *step)
{
    tasker_error_clear();
    int rc = tasker_template_register_json(c, json, 0);
    if (rc != TASKER_ETEMPLATE) {
        print_error("%s:%d: expected TASKER_ETEMPLATE (%s), got %d for %s\n", file, line,
                    reason ? reason : "-", rc, json);
        _fail(file, line);
    }
    _th_assert_error(file, line, TASKER_ETEMPLATE, reason);
    if (tasker_error_last()->category != TASKER_CATEGORY_TEMPLATE) {
        print_error("%s:%d: category %d, expected template\n", file, line,
                    tasker_error_last()->category);
        _fail(file, line);
    }
    if (step != NULL) {
        json_t *ctx = th_error_context();
        const char *s = json_string_value(json_object_get(ctx, "step"));
        if (s == NULL || strcmp(s, step) != 0) {
            print_error("%s:%d: context names step \"%s\", expected \"%s\": %s\n", file, line,
                        s ? s : "(none)", step, tasker_error_last()->context_json);
            json_decref(ctx);
            _fail(file, line);
        }
        json_decref(ctx);
    }
}

static void builder_and_to_json(void **state)
{
    tasker_coordinator *c = *state;
    tasker_template *t = NULL;
    th_ok(tasker_template_new(&t, "shop", "order", "3"));
    assert_non_null(t);
    tasker_step_options o = TASKER_STEP_OPTIONS_INIT;
    o.max_attempts = 5;
    o.backoff = TASKER_BACKOFF_LINEAR;
    o.base_ms = 10;
    o.max_ms = 500;
    o.jitter = 0.25;
    o.timeout_ms = 1000;
    th_ok(tasker_template_add_step(t, "validate", NULL, NULL, 0, NULL));
    const char *deps1[] = {"validate"};
    th_ok(tasker_template_add_step(t, "reserve", "inventory.reserve", deps1, 1, &o));
    /* Dependencies may name steps added later. */
    const char *deps2[] = {"reserve", "charge"};
    th_ok(tasker_template_add_step(t, "ship", NULL, deps2, 2, NULL));
    th_ok(tasker_template_add_step(t, "charge", NULL, deps1, 1, NULL));

    json_t *j = to_json(t);
    assert_string_equal(json_string_value(json_object_get(j, "namespace")), "shop");
    assert_string_equal(json_string_value(json_object_get(j, "name")), "order");
    assert_string_equal(json_string_value(json_object_get(j, "version")), "3");
    assert_int_equal(json_array_size(json_object_get(j, "steps")), 4);
    /* Steps keep the order they were added in. */
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "steps"), 3), "name")),
        "charge");
    json_t *v = find_step(j, "validate");
    assert_string_equal(json_string_value(json_object_get(v, "handler")), "validate");
    assert_int_equal(json_array_size(json_object_get(v, "depends_on")), 0);
    json_t *r = find_step(j, "reserve");
    assert_string_equal(json_string_value(json_object_get(r, "handler")), "inventory.reserve");
    json_t *retry = json_object_get(r, "retry");
    assert_int_equal(json_integer_value(json_object_get(retry, "max_attempts")), 5);
    assert_string_equal(json_string_value(json_object_get(retry, "backoff")), "linear");
    assert_int_equal(json_integer_value(json_object_get(retry, "base_ms")), 10);
    assert_int_equal(json_integer_value(json_object_get(retry, "max_ms")), 500);
    assert_true(json_number_value(json_object_get(retry, "jitter")) == 0.25);
    assert_int_equal(json_integer_value(json_object_get(r, "timeout_ms")), 1000);
    json_t *ship = find_step(j, "ship");
    assert_string_equal(json_string_value(json_array_get(json_object_get(ship, "depends_on"), 0)),
                        "reserve");
    assert_string_equal(json_string_value(json_array_get(json_object_get(ship, "depends_on"), 1)),
                        "charge");
    json_decref(j);

    th_ok(tasker_template_register(c, t));
    /* The coordinator keeps its own copy: freeing ours changes nothing. */
    tasker_template_free(t);
    tasker_template_free(NULL);
    th_handler(c, "validate", th_handler_noop, NULL);
    th_handler(c, "inventory.reserve", th_handler_noop, NULL);
    th_handler(c, "ship", th_handler_noop, NULL);
    th_handler(c, "charge", th_handler_noop, NULL);
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "shop", "order", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    json_t *task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "version")), "3");
    assert_string_equal(
        json_string_value(json_object_get(th_step(task, "reserve"), "handler")),
        "inventory.reserve");
    assert_int_equal(json_integer_value(json_object_get(th_step(task, "reserve"), "max_attempts")),
                     5);
    json_decref(task);
}

static void json_defaults(void **state)
{
    (void)state;
    tasker_template *t = NULL;
    th_ok(tasker_template_from_json(&t, "{\"namespace\":\"a\",\"name\":\"b\",\"steps\":[{\"name\":\"s\"}]}", 0));
    json_t *j = to_json(t);
    assert_string_equal(json_string_value(json_object_get(j, "version")), "1");
    json_t *s = find_step(j, "s");
    assert_string_equal(json_string_value(json_object_get(s, "handler")), "s");
    assert_int_equal(json_array_size(json_object_get(s, "depends_on")), 0);
    json_t *retry = json_object_get(s, "retry");
    assert_int_equal(json_integer_value(json_object_get(retry, "max_attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(retry, "backoff")), "exponential");
    assert_int_equal(json_integer_value(json_object_get(retry, "base_ms")), 100);
    assert_int_equal(json_integer_value(json_object_get(retry, "max_ms")), 30000);
    assert_true(json_number_value(json_object_get(retry, "jitter")) == 0.0);
    assert_int_equal(json_integer_value(json_object_get(s, "timeout_ms")), 0);
    json_decref(j);
    tasker_template_free(t);
}

static void json_round_trip(void **state)
{
    (void)state;
    const char *src =
        "{\"namespace\":\"etl\",\"name\":\"daily\",\"version\":\"7\",\"steps\":["
        "{\"name\":\"fetch\",\"handler\":\"http.get\",\"retry\":{\"max_attempts\":4,"
        "\"backoff\":\"none\",\"base_ms\":0,\"max_ms\":0,\"jitter\":0}},"
        "{\"name\":\"clean\",\"depends_on\":[\"fetch\"],\"timeout_ms\":2500},"
        "{\"name\":\"load\",\"depends_on\":[\"clean\",\"fetch\"],\"retry\":{\"backoff\":"
        "\"linear\",\"base_ms\":5,\"max_ms\":50,\"jitter\":0.5}}]}";
    tasker_template *t1 = NULL, *t2 = NULL;
    th_ok(tasker_template_from_json(&t1, src, strlen(src)));
    json_t *j1 = to_json(t1);
    char *text1 = json_dumps(j1, JSON_COMPACT);
    th_ok(tasker_template_from_json(&t2, text1, 0));
    json_t *j2 = to_json(t2);
    /* Parse -> print -> parse -> print is a fixed point. */
    assert_true(json_equal(j1, j2));
    /* And nothing of the source was lost on the way. */
    json_t *orig = json_loads(src, 0, NULL);
    json_t *fetch = find_step(j1, "fetch");
    assert_string_equal(json_string_value(json_object_get(fetch, "handler")), "http.get");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(fetch, "retry"), "backoff")), "none");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(fetch, "retry"),
                                                        "max_attempts")), 4);
    assert_int_equal(json_integer_value(json_object_get(find_step(j1, "clean"), "timeout_ms")),
                     2500);
    json_t *load = find_step(j1, "load");
    assert_true(json_equal(json_object_get(load, "depends_on"),
                           json_object_get(json_array_get(json_object_get(orig, "steps"), 2),
                                           "depends_on")));
    assert_true(json_number_value(json_object_get(json_object_get(load, "retry"), "jitter")) ==
                0.5);
    json_decref(orig);
    free(text1);
    json_decref(j1);
    json_decref(j2);
    tasker_template_free(t1);
    tasker_template_free(t2);
}

static void duplicate_step(void **state)
{
    tasker_coordinator *c = *state;
    reject(c, "{\"namespace\":\"t\",\"name\":\"dup\",\"steps\":[{\"name\":\"a\"},"
              "{\"name\":\"b\"},{\"name\":\"a\",\"depends_on\":[\"b\"]}]}",
           "duplicate_step", "a");
    tasker_template *t = NULL;
    th_ok(tasker_template_new(&t, "t", "dup", "1"));
    th_ok(tasker_template_add_step(t, "a", NULL, NULL, 0, NULL));
    tasker_error_clear();
    assert_int_equal(tasker_template_add_step(t, "a", "other", NULL, 0, NULL), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "duplicate_step");
    /* The refused step was not added. */
    json_t *j = to_json(t);
    assert_int_equal(json_array_size(json_object_get(j, "steps")), 1);
    json_decref(j);
    tasker_template_free(t);
}

static void unknown_dependency(void **state)
{
    tasker_coordinator *c = *state;
    const char *json = "{\"namespace\":\"t\",\"name\":\"unk\",\"steps\":[{\"name\":\"a\"},"
                       "{\"name\":\"b\",\"depends_on\":[\"a\",\"zz\"]}]}";
    /* Parsing checks shape only; the graph is checked at registration. */
    tasker_template *t = NULL;
    th_ok(tasker_template_from_json(&t, json, 0));
    tasker_error_clear();
    assert_int_equal(tasker_template_register(c, t), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "unknown_dependency");
    tasker_template_free(t);
    reject(c, json, "unknown_dependency", "b");
    /* Nothing was registered: a task of it cannot be created. */
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "t";
    req.name = "unk";
    char uuid[TASKER_UUID_BUFSIZE];
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_ENOTFOUND);
}

/* The context's "cycle" is a closed path whose every hop is a real edge. */
static void check_cycle(json_t *tmpl_src, size_t want_len)
{
    json_t *ctx = th_error_context();
    json_t *cyc = json_object_get(ctx, "cycle");
    if (!json_is_array(cyc) || json_array_size(cyc) < 2)
        fail_msg("no cycle path in context %s", tasker_error_last()->context_json);
    size_t n = json_array_size(cyc);
    if (want_len)
        assert_int_equal(n, want_len);
    assert_string_equal(json_string_value(json_array_get(cyc, 0)),
                        json_string_value(json_array_get(cyc, n - 1)));
    for (size_t i = 0; i + 1 < n; i++) {
        const char *x = json_string_value(json_array_get(cyc, i));
        const char *y = json_string_value(json_array_get(cyc, i + 1));
        /* Either direction is a fair way to print a cycle, but it must be
         * one direction all the way round. */
        int x_dep_on_y = 0, y_dep_on_x = 0;
        size_t k;
        json_t *s;
        json_array_foreach(json_object_get(tmpl_src, "steps"), k, s)
        {
            const char *sn = json_string_value(json_object_get(s, "name"));
            size_t m;
            json_t *d;
            json_array_foreach(json_object_get(s, "depends_on"), m, d)
            {
                if (strcmp(sn, x) == 0 && strcmp(json_string_value(d), y) == 0)
                    x_dep_on_y = 1;
                if (strcmp(sn, y) == 0 && strcmp(json_string_value(d), x) == 0)
                    y_dep_on_x = 1;
            }
        }
        if (!x_dep_on_y && !y_dep_on_x)
            fail_msg("cycle hop %s -> %s is not an edge: %s", x, y,
                     tasker_error_last()->context_json);
    }
    json_decref(ctx);
}

static void cycles(void **state)
{
    tasker_coordinator *c = *state;
    const char *three = "{\"namespace\":\"t\",\"name\":\"cyc3\",\"steps\":["
                        "{\"name\":\"root\"},"
                        "{\"name\":\"a\",\"depends_on\":[\"root\",\"c\"]},"
                        "{\"name\":\"b\",\"depends_on\":[\"a\"]},"
                        "{\"name\":\"c\",\"depends_on\":[\"b\"]},"
                        "{\"name\":\"tail\",\"depends_on\":[\"c\"]}]}";
    reject(c, three, "cycle", NULL);
    json_t *src = json_loads(three, 0, NULL);
    check_cycle(src, 4);
    json_decref(src);

    const char *self = "{\"namespace\":\"t\",\"name\":\"cyc1\",\"steps\":["
                       "{\"name\":\"a\",\"depends_on\":[\"a\"]}]}";
    reject(c, self, "cycle", NULL);
    src = json_loads(self, 0, NULL);
    check_cycle(src, 2);
    json_decref(src);

    /* No root at all: every step waits on another. */
    const char *ring = "{\"namespace\":\"t\",\"name\":\"ring\",\"steps\":["
                       "{\"name\":\"x\",\"depends_on\":[\"y\"]},"
                       "{\"name\":\"y\",\"depends_on\":[\"x\"]}]}";
    reject(c, ring, "cycle", NULL);
    src = json_loads(ring, 0, NULL);
    check_cycle(src, 3);
    json_decref(src);
}

static void bad_retry_policies(void **state)
{
    tasker_coordinator *c = *state;
    static const char *bad[] = {
        "{\"max_attempts\":0}",       "{\"max_attempts\":1001}",
        "{\"backoff\":\"fibonacci\"}", "{\"base_ms\":-1}",
        "{\"base_ms\":86400001}",     "{\"base_ms\":500,\"max_ms\":100}",
        "{\"max_ms\":86400001}",      "{\"jitter\":1.5}",
        "{\"jitter\":-0.1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *json = th_fmt("{\"namespace\":\"t\",\"name\":\"retry%zu\",\"steps\":[{\"name\":"
                            "\"ok\"},{\"name\":\"bad\",\"retry\":%s}]}",
                            i, bad[i]);
        reject(c, json, "bad_retry_policy", "bad");
        free(json);
    }
    /* Wrong JSON types are refused too (the reason may be either). */
    assert_int_equal(tasker_template_register_json(
                         c, "{\"namespace\":\"t\",\"name\":\"rt\",\"steps\":[{\"name\":\"s\","
                            "\"retry\":{\"max_attempts\":\"3\"}}]}", 0),
                     TASKER_ETEMPLATE);
    assert_int_equal(tasker_template_register_json(
                         c, "{\"namespace\":\"t\",\"name\":\"rt\",\"steps\":[{\"name\":\"s\","
                            "\"timeout_ms\":86400001}]}", 0),
                     TASKER_ETEMPLATE);
    assert_int_equal(tasker_template_register_json(
                         c, "{\"namespace\":\"t\",\"name\":\"rt\",\"steps\":[{\"name\":\"s\","
                            "\"retry\":{\"max_attempts\":2.5}}]}", 0),
                     TASKER_ETEMPLATE);
    /* The edges of the ranges are accepted. */
    th_register(c, "{\"namespace\":\"t\",\"name\":\"edges\",\"steps\":[{\"name\":\"s\","
                   "\"retry\":{\"max_attempts\":1000,\"base_ms\":86400000,\"max_ms\":86400000,"
                   "\"jitter\":1.0},\"timeout_ms\":86400000},{\"name\":\"t\",\"retry\":{"
                   "\"max_attempts\":1,\"base_ms\":0,\"max_ms\":0,\"jitter\":0.0}}]}");

    /* The builder refuses the same through tasker_step_options. */
    tasker_template *t = NULL;
    th_ok(tasker_template_new(&t, "t", "opts", "1"));
    tasker_step_options o;
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    o.max_attempts = 0;
    assert_int_equal(tasker_template_add_step(t, "s", NULL, NULL, 0, &o), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "bad_retry_policy");
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    o.base_ms = 1000;
    o.max_ms = 10;
    assert_int_equal(tasker_template_add_step(t, "s", NULL, NULL, 0, &o), TASKER_ETEMPLATE);
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    o.jitter = 2.0;
    assert_int_equal(tasker_template_add_step(t, "s", NULL, NULL, 0, &o), TASKER_ETEMPLATE);
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    o.backoff = (tasker_backoff)9;
    assert_int_equal(tasker_template_add_step(t, "s", NULL, NULL, 0, &o), TASKER_ETEMPLATE);
    th_ok(tasker_step_options_init(&o, TASKER_STEP_OPTIONS_VERSION));
    th_ok(tasker_template_add_step(t, "s", NULL, NULL, 0, &o));
    tasker_template_free(t);
}

static void oversize_json(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open("template.max_json_bytes", "256", NULL);
    char *small = th_fmt("{\"namespace\":\"t\",\"name\":\"small\",\"steps\":[{\"name\":\"a\"}]}");
    th_register(c, small);
    /* A valid template, just too long. */
    char *big = th_fmt("{\"namespace\":\"t\",\"name\":\"big\",\"steps\":[{\"name\":\"%0300d\"}]}", 0);
    reject(c, big, "oversize", NULL);
    free(small);
    free(big);
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

static void malformed_json(void **state)
{
    tasker_coordinator *c = *state;
    static const char *bad[] = {
        "{",  "{\"namespace\": ", "[1, 2", "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":[}",
        "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":[{\"name\":\"a\"}]} trailing",
        "{'namespace': 't'}", "not json at all",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        reject(c, bad[i], "malformed_json", NULL);
    /* Valid JSON of the wrong shape is refused (any template reason). */
    static const char *shape[] = {
        "[]", "null", "42", "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":{}}",
        "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":[42]}",
        "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":[{\"name\":\"a\",\"depends_on\":\"b\"}]}",
        "{\"namespace\":7,\"name\":\"x\",\"steps\":[{\"name\":\"a\"}]}",
        "{\"name\":\"x\",\"steps\":[{\"name\":\"a\"}]}",
        "{\"namespace\":\"t\",\"steps\":[{\"name\":\"a\"}]}",
        "{\"namespace\":\"t\",\"name\":\"x\",\"steps\":[{\"handler\":\"a\"}]}",
    };
    for (size_t i = 0; i < sizeof shape / sizeof shape[0]; i++) {
        int rc = tasker_template_register_json(c, shape[i], 0);
        if (rc != TASKER_ETEMPLATE)
            fail_msg("%s gave %d, expected TASKER_ETEMPLATE", shape[i], rc);
        th_assert_error(TASKER_ETEMPLATE, NULL);
    }
    /* An explicit length shorter than the text cuts it: malformed. */
    const char *ok = "{\"namespace\":\"t\",\"name\":\"cut\",\"steps\":[{\"name\":\"a\"}]}";
    assert_int_equal(tasker_template_register_json(c, ok, 20), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "malformed_json");
}

static void unknown_keys(void **state)
{
    tasker_coordinator *c = *state;
    reject(c, "{\"namespace\":\"t\",\"name\":\"k1\",\"colour\":\"red\",\"steps\":[{\"name\":\"a\"}]}",
           "unknown_key", NULL);
    reject(c, "{\"namespace\":\"t\",\"name\":\"k2\",\"steps\":[{\"name\":\"a\",\"retries\":3}]}",
           "unknown_key", "a");
    reject(c, "{\"namespace\":\"t\",\"name\":\"k3\",\"steps\":[{\"name\":\"a\",\"retry\":"
              "{\"maxAttempts\":3}}]}",
           "unknown_key", "a");
}

static void empty_template(void **state)
{
    tasker_coordinator *c = *state;
    reject(c, "{\"namespace\":\"t\",\"name\":\"e\",\"steps\":[]}", "empty", NULL);
    tasker_template *t = NULL;
    th_ok(tasker_template_new(&t, "t", "e2", "1"));
    assert_int_equal(tasker_template_register(c, t), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "empty");
    tasker_template_free(t);
}

static void bad_names(void **state)
{
    tasker_coordinator *c = *state;
    char long_name[300];
    memset(long_name, 'n', sizeof long_name);
    long_name[256] = '\0';
    char *j;
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n1\",\"steps\":[{\"name\":\"\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n2\",\"steps\":[{\"name\":\"%s\"}]}", long_name);
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n3\",\"steps\":[{\"name\":\"a\\tb\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"t/u\",\"name\":\"n4\",\"steps\":[{\"name\":\"a\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n@5\",\"steps\":[{\"name\":\"a\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"\",\"name\":\"n6\",\"steps\":[{\"name\":\"a\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n7\",\"steps\":[{\"name\":\"a\",\"handler\":\"\"}]}");
    reject(c, j, "bad_name", NULL);
    free(j);

    /* 255 bytes is the longest accepted name; UTF-8 is fine. */
    long_name[255] = '\0';
    j = th_fmt("{\"namespace\":\"t\",\"name\":\"n8\",\"steps\":[{\"name\":\"%s\"},"
               "{\"name\":\"caf\\u00e9 \\u2615\"},{\"name\":\"with/slash@ok\"}]}",
               long_name);
    th_register(c, j);
    free(j);

    /* The builder checks names the same way, including invalid UTF-8. */
    tasker_template *t = NULL;
    assert_int_equal(tasker_template_new(&t, "bad/ns", "x", "1"), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "bad_name");
    assert_int_equal(tasker_template_new(&t, "ns", "x@1", "1"), TASKER_ETEMPLATE);
    assert_int_equal(tasker_template_new(&t, "ns", "", "1"), TASKER_ETEMPLATE);
    th_ok(tasker_template_new(&t, "ns", "x", "1"));
    assert_int_equal(tasker_template_add_step(t, "\xff\xfe", NULL, NULL, 0, NULL),
                     TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "bad_name");
    assert_int_equal(tasker_template_add_step(t, "a\nb", NULL, NULL, 0, NULL), TASKER_ETEMPLATE);
    assert_int_equal(tasker_template_add_step(t, long_name, NULL, NULL, 0, NULL), TASKER_OK);
    long_name[255] = 'n';
    assert_int_equal(tasker_template_add_step(t, long_name, NULL, NULL, 0, NULL),
                     TASKER_ETEMPLATE);
    tasker_template_free(t);
}

static void too_many_steps(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open("template.max_steps", "5", NULL);
    th_register(c, "{\"namespace\":\"t\",\"name\":\"five\",\"steps\":[{\"name\":\"a\"},"
                   "{\"name\":\"b\"},{\"name\":\"c\"},{\"name\":\"d\"},{\"name\":\"e\"}]}");
    reject(c, "{\"namespace\":\"t\",\"name\":\"six\",\"steps\":[{\"name\":\"a\"},{\"name\":\"b\"},"
              "{\"name\":\"c\"},{\"name\":\"d\"},{\"name\":\"e\"},{\"name\":\"f\"}]}",
           "too_many_steps", NULL);
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

static void reregister(void **state)
{
    tasker_coordinator *c = *state;
    const char *v1 = "{\"namespace\":\"t\",\"name\":\"re\",\"version\":\"1\",\"steps\":["
                     "{\"name\":\"a\"},{\"name\":\"b\",\"depends_on\":[\"a\"]}]}";
    th_register(c, v1);
    /* Identical: a no-op, also when spelled differently (defaults written out,
     * keys reordered, whitespace). */
    th_register(c, v1);
    th_register(c, "{ \"steps\": [ {\"name\": \"a\", \"handler\": \"a\", \"depends_on\": []},\n"
                   "  {\"depends_on\": [\"a\"], \"name\": \"b\", \"retry\": {\"max_attempts\": 3}}],"
                   " \"name\": \"re\", \"namespace\": \"t\"}");
    tasker_template *t = NULL;
    th_ok(tasker_template_new(&t, "t", "re", "1"));
    th_ok(tasker_template_add_step(t, "a", NULL, NULL, 0, NULL));
    const char *dep[] = {"a"};
    th_ok(tasker_template_add_step(t, "b", NULL, dep, 1, NULL));
    th_ok(tasker_template_register(c, t));
    tasker_template_free(t);

    /* Different content under the same namespace/name@version. */
    const char *diffs[] = {
        "{\"namespace\":\"t\",\"name\":\"re\",\"steps\":[{\"name\":\"a\"}]}",
        "{\"namespace\":\"t\",\"name\":\"re\",\"steps\":[{\"name\":\"a\"},{\"name\":\"b\"}]}",
        "{\"namespace\":\"t\",\"name\":\"re\",\"steps\":[{\"name\":\"a\"},{\"name\":\"b\","
        "\"depends_on\":[\"a\"],\"retry\":{\"max_attempts\":4}}]}",
        "{\"namespace\":\"t\",\"name\":\"re\",\"steps\":[{\"name\":\"a\",\"handler\":\"z\"},"
        "{\"name\":\"b\",\"depends_on\":[\"a\"]}]}",
    };
    for (size_t i = 0; i < sizeof diffs / sizeof diffs[0]; i++) {
        tasker_error_clear();
        int rc = tasker_template_register_json(c, diffs[i], 0);
        if (rc != TASKER_EEXIST)
            fail_msg("re-registering different content gave %d: %s", rc, diffs[i]);
        assert_int_equal(tasker_error_last()->code, TASKER_EEXIST);
    }
    /* Another version of the same name is a new template. */
    th_register(c, "{\"namespace\":\"t\",\"name\":\"re\",\"version\":\"2\",\"steps\":["
                   "{\"name\":\"only\"}]}");
    th_handler(c, "only", th_handler_noop, NULL);
    th_handler(c, "a", th_handler_noop, NULL);
    th_handler(c, "b", th_handler_noop, NULL);
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    /* No version asked for: the highest registered one runs. */
    th_create(uuid, c, "t", "re", NULL);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    json_t *task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "version")), "2");
    assert_int_equal(json_array_size(json_object_get(task, "steps")), 1);
    json_decref(task);
    /* Version 1 is still there when asked for by name. */
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "t";
    req.name = "re";
    req.template_version = "1";
    th_ok(tasker_task_create(uuid, c, &req));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "version")), "1");
    assert_int_equal(json_array_size(json_object_get(task, "steps")), 2);
    json_decref(task);
    req.template_version = "3";
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(builder_and_to_json, setup, teardown),
        cmocka_unit_test(json_defaults),
        cmocka_unit_test(json_round_trip),
        cmocka_unit_test_setup_teardown(duplicate_step, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_dependency, setup, teardown),
        cmocka_unit_test_setup_teardown(cycles, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_retry_policies, setup, teardown),
        cmocka_unit_test(oversize_json),
        cmocka_unit_test_setup_teardown(malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_template, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_names, setup, teardown),
        cmocka_unit_test(too_many_steps),
        cmocka_unit_test_setup_teardown(reregister, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
