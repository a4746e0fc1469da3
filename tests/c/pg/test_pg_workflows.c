/*
 * Workflow shapes on the postgres store, run by worker threads through the
 * public API: linear, diamond, fan-out/fan-in and order fulfillment.  For
 * every task: it completes, each step ran once and succeeded once, no step
 * started before its dependencies were done, every result reached its
 * dependents, and tasker_task_get returns the documented JSON.
 */
#define _GNU_SOURCE
#include "pgt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tasker_coordinator *coord;
static th_recorder rec;

typedef struct node {
    char name[64];
    char deps[64][64];
    int ndeps;
} node;

typedef struct shape {
    node n[256];
    int count;
} shape;

/* "a; b<a; c<a; d<b,c" */
static void parse(shape *s, const char *spec)
{
    memset(s, 0, sizeof *s);
    char *copy = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        while (*tok == ' ')
            tok++;
        node *n = &s->n[s->count++];
        char *lt = strchr(tok, '<');
        if (lt)
            *lt = '\0';
        snprintf(n->name, sizeof n->name, "%s", tok);
        if (lt) {
            char *s2 = NULL;
            for (char *d = strtok_r(lt + 1, ",", &s2); d; d = strtok_r(NULL, ",", &s2))
                snprintf(n->deps[n->ndeps++], 64, "%s", d);
        }
    }
    free(copy);
}

static int find(const shape *s, const char *name)
{
    for (int i = 0; i < s->count; i++)
        if (!strcmp(s->n[i].name, name))
            return i;
    return -1;
}

static long long value(const shape *s, int i)
{
    long long v = 1;
    for (int d = 0; d < s->n[i].ndeps; d++)
        v += value(s, find(s, s->n[i].deps[d]));
    return v;
}

static char *template_json(const shape *s, const char *name)
{
    size_t cap = 1 << 20, o = 0;
    char *j = malloc(cap);
    o += (size_t)snprintf(j + o, cap - o, "{\"namespace\":\"shapes\",\"name\":\"%s\",\"steps\":[",
                          name);
    for (int i = 0; i < s->count; i++) {
        o += (size_t)snprintf(j + o, cap - o, "%s{\"name\":\"%s\",\"handler\":\"node\",\"depends_on\":[",
                              i ? "," : "", s->n[i].name);
        for (int d = 0; d < s->n[i].ndeps; d++)
            o += (size_t)snprintf(j + o, cap - o, "%s\"%s\"", d ? "," : "", s->n[i].deps[d]);
        o += (size_t)snprintf(j + o, cap - o, "]}");
    }
    snprintf(j + o, cap - o, "]}");
    return j;
}

static void check_task(const shape *s, const char *uuid)
{
    json_t *t = th_task(coord, uuid);
    assert_string_equal(json_string_value(json_object_get(t, "state")), "complete");
    assert_string_equal(json_string_value(json_object_get(t, "uuid")), uuid);
    const char *keys[] = {"namespace", "name", "version", "priority", "idempotency_key", "context",
                          "created_at", "finished_at", "duration_ms", "steps", "transitions"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (!json_object_get(t, keys[k]))
            fail_msg("task JSON has no \"%s\"", keys[k]);
    json_t *steps = json_object_get(t, "steps");
    assert_int_equal(json_array_size(steps), (size_t)s->count);
    for (int i = 0; i < s->count; i++) {
        const node *n = &s->n[i];
        json_t *st = json_array_get(steps, (size_t)i); /* template order */
        assert_string_equal(json_string_value(json_object_get(st, "name")), n->name);
        assert_string_equal(json_string_value(json_object_get(st, "state")), "complete");
        assert_int_equal(json_integer_value(json_object_get(st, "attempts")), 1);
        assert_string_equal(json_string_value(json_object_get(st, "result_kind")), "json");
        json_t *res = json_object_get(st, "result");
        assert_string_equal(json_string_value(json_object_get(res, "step")), n->name);
        assert_int_equal(json_integer_value(json_object_get(res, "v")), value(s, i));
        assert_int_equal(json_array_size(json_object_get(st, "depends_on")), (size_t)n->ndeps);
        assert_non_null(json_string_value(json_object_get(st, "started_at")));
        assert_int_equal(th_count_transitions(t, n->name, "in_progress", "complete", "succeeded", 1), 1);
        char *path = th_transition_path(t, n->name);
        assert_string_equal(path, "enqueued,in_progress,complete");
        free(path);
        /* Ran once, and only after each dependency was done. */
        assert_int_equal(th_recorder_count(&rec, uuid, n->name, 0), 1);
        long start = th_recorder_find(&rec, uuid, n->name, 0);
        for (int d = 0; d < n->ndeps; d++) {
            long done = th_recorder_find(&rec, uuid, n->deps[d], 1);
            if (done < 0 || done > start)
                fail_msg("%s started before its dependency %s was done", n->name, n->deps[d]);
        }
    }
    char *path = th_transition_path(t, "");
    assert_string_equal(path, "pending,running,complete");
    free(path);
    json_decref(t);
}

static void run_shape(const char *name, const char *spec, int tasks)
{
    pgt_require();
    shape *s = malloc(sizeof *s);
    parse(s, spec);
    char *json = template_json(s, name);
    th_register(coord, json);
    free(json);
    char (*uuids)[TASKER_UUID_BUFSIZE] = calloc((size_t)tasks, TASKER_UUID_BUFSIZE);
    for (int i = 0; i < tasks; i++)
        th_create(uuids[i], coord, "shapes", name, "{\"n\": 1}");
    for (int i = 0; i < tasks; i++)
        assert_int_equal(th_wait_final(coord, uuids[i]), TASKER_TASK_COMPLETE);
    th_assert_no_problems();
    for (int i = 0; i < tasks; i++)
        check_task(s, uuids[i]);
    free(uuids);
    free(s);
}

static void test_linear(void **state)
{
    (void)state;
    run_shape("linear", "a; b<a; c<b; d<c", 20);
}

static void test_diamond(void **state)
{
    (void)state;
    run_shape("diamond", "a; b<a; c<a; d<b,c", 20);
}

static void test_fan_out_fan_in(void **state)
{
    (void)state;
    char spec[8192];
    int o = snprintf(spec, sizeof spec, "root");
    for (int i = 0; i < 60; i++)
        o += snprintf(spec + o, sizeof spec - (size_t)o, "; w%d<root", i);
    o += snprintf(spec + o, sizeof spec - (size_t)o, "; join<");
    for (int i = 0; i < 60; i++)
        o += snprintf(spec + o, sizeof spec - (size_t)o, "%sw%d", i ? "," : "", i);
    run_shape("fanout", spec, 5);
}

static void test_order_fulfillment(void **state)
{
    (void)state;
    run_shape("order",
              "validate; reserve_stock<validate; charge_card<validate; "
              "pack<reserve_stock,charge_card; ship<pack; invoice<charge_card; "
              "notify<ship,invoice",
              20);
}

static int setup(void **state)
{
    (void)state;
    if (!getenv("TASKER_TEST_DATABASE_URL") || !*getenv("TASKER_TEST_DATABASE_URL"))
        return 0;
    const char *url = pgt_fresh_db("workflows", 1);
    th_recorder_init(&rec);
    coord = pgt_open(url);
    th_handler(coord, "node", th_handler_node, &rec);
    th_ok(tasker_coordinator_start(coord, 4));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (coord) {
        th_ok(tasker_coordinator_close(coord));
        th_recorder_destroy(&rec);
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_diamond),
        cmocka_unit_test(test_fan_out_fan_in),
        cmocka_unit_test(test_order_fulfillment),
    };
    if (getenv("PGT_FILTER"))
        cmocka_set_test_filter(getenv("PGT_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
