/*
 * Workflow shapes run end to end by worker threads: linear, diamond, tree,
 * mixed DAG, wide fan-out/fan-in (1 -> 1000 -> 1) and order fulfillment.
 * For each task: every step completes exactly once, no step starts before all
 * of its dependencies are done, and every result reaches its dependents.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct node {
    char *name;
    char **deps;
    size_t ndeps;
    long long v; /* expected result value; 0 = not computed yet */
} node;

typedef struct graph {
    node *n;
    size_t count;
} graph;

static node *graph_find(graph *g, const char *name)
{
    for (size_t i = 0; i < g->count; i++)
        if (strcmp(g->n[i].name, name) == 0)
            return &g->n[i];
    return NULL;
}

static node *graph_add(graph *g, const char *name)
{
    g->n = realloc(g->n, (g->count + 1) * sizeof *g->n);
    node *nd = &g->n[g->count++];
    memset(nd, 0, sizeof *nd);
    nd->name = strdup(name);
    return nd;
}

static void node_dep(node *nd, const char *dep)
{
    nd->deps = realloc(nd->deps, (nd->ndeps + 1) * sizeof *nd->deps);
    nd->deps[nd->ndeps++] = strdup(dep);
}

/* "a; b<a; c<a; d<b,c": steps separated by ';', dependencies after '<'. */
static graph graph_parse(const char *spec)
{
    graph g = {0};
    char *copy = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        while (*tok == ' ')
            tok++;
        char *lt = strchr(tok, '<');
        if (lt)
            *lt = '\0';
        node *nd = graph_add(&g, tok);
        if (lt) {
            char *s2 = NULL;
            for (char *d = strtok_r(lt + 1, ",", &s2); d; d = strtok_r(NULL, ",", &s2))
                node_dep(nd, d);
        }
    }
    free(copy);
    return g;
}

static void graph_free(graph *g)
{
    for (size_t i = 0; i < g->count; i++) {
        for (size_t k = 0; k < g->n[i].ndeps; k++)
            free(g->n[i].deps[k]);
        free(g->n[i].deps);
        free(g->n[i].name);
    }
    free(g->n);
}

/* The value th_handler_node computes: 1 + the sum of the dependencies'. */
static long long expected_v(graph *g, node *nd)
{
    if (nd->v == 0) {
        long long v = 1;
        for (size_t k = 0; k < nd->ndeps; k++)
            v += expected_v(g, graph_find(g, nd->deps[k]));
        nd->v = v;
    }
    return nd->v;
}

static void register_graph(tasker_coordinator *c, const char *name, graph *g)
{
    json_t *steps = json_array();
    for (size_t i = 0; i < g->count; i++) {
        json_t *deps = json_array();
        for (size_t k = 0; k < g->n[i].ndeps; k++)
            json_array_append_new(deps, json_string(g->n[i].deps[k]));
        json_array_append_new(steps, json_pack("{s:s, s:s, s:o}", "name", g->n[i].name,
                                               "handler", "node", "depends_on", deps));
    }
    json_t *t = json_pack("{s:s, s:s, s:o}", "namespace", "shapes", "name", name, "steps", steps);
    char *text = json_dumps(t, JSON_COMPACT);
    th_register(c, text);
    free(text);
    json_decref(t);
}

typedef struct fixture {
    tasker_coordinator *coord;
    th_recorder rec;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    th_recorder_init(&f->rec);
    f->coord = th_open(NULL);
    th_handler(f->coord, "node", th_handler_node, &f->rec);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    tasker_coordinator_close(f->coord);
    th_recorder_destroy(&f->rec);
    free(f);
    return 0;
}

static void check_task(fixture *f, graph *g, const char *uuid)
{
    assert_int_equal(th_wait_final(f->coord, uuid), TASKER_TASK_COMPLETE);
    json_t *task = th_task(f->coord, uuid);
    assert_string_equal(json_string_value(json_object_get(task, "state")), "complete");
    assert_int_equal(json_array_size(json_object_get(task, "steps")), g->count);
    for (size_t i = 0; i < g->count; i++) {
        node *nd = &g->n[i];
        json_t *s = th_step(task, nd->name);
        /* Steps are listed in template order. */
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(json_object_get(task, "steps"), i),
                                              "name")),
            nd->name);
        assert_string_equal(json_string_value(json_object_get(s, "state")), "complete");
        assert_int_equal(json_integer_value(json_object_get(s, "attempts")), 1);
        json_t *res = json_object_get(s, "result");
        if (json_integer_value(json_object_get(res, "v")) != expected_v(g, nd))
            fail_msg("task %s step %s: result v=%lld, expected %lld", uuid, nd->name,
                     (long long)json_integer_value(json_object_get(res, "v")), expected_v(g, nd));
        assert_int_equal(th_recorder_count(&f->rec, uuid, nd->name, 0), 1);
        assert_int_equal(th_recorder_count(&f->rec, uuid, nd->name, 1), 1);
        long started = th_recorder_find(&f->rec, uuid, nd->name, 0);
        for (size_t k = 0; k < nd->ndeps; k++) {
            long dep_done = th_recorder_find(&f->rec, uuid, nd->deps[k], 1);
            if (dep_done < 0 || dep_done > started)
                fail_msg("task %s: %s started (event %ld) before dependency %s was done (%ld)",
                         uuid, nd->name, started, nd->deps[k], dep_done);
        }
    }
    json_decref(task);
}

static void run_shape(fixture *f, const char *name, graph *g, size_t n_tasks, unsigned threads)
{
    register_graph(f->coord, name, g);
    th_ok(tasker_coordinator_start(f->coord, threads));
    char (*uuids)[TASKER_UUID_BUFSIZE] = calloc(n_tasks, TASKER_UUID_BUFSIZE);
    for (size_t i = 0; i < n_tasks; i++)
        th_create(uuids[i], f->coord, "shapes", name, "{\"shape\": true}");
    for (size_t i = 0; i < n_tasks; i++)
        check_task(f, g, uuids[i]);
    th_assert_no_problems();
    free(uuids);
}

static void linear(void **state)
{
    graph g = graph_parse("a; b<a; c<b; d<c; e<d; f<e; g<f; h<g");
    run_shape(*state, "linear", &g, 10, 2);
    graph_free(&g);
}

static void diamond(void **state)
{
    graph g = graph_parse("top; left<top; right<top; bottom<left,right");
    run_shape(*state, "diamond", &g, 20, 2);
    graph_free(&g);
}

static void tree(void **state)
{
    /* An out-tree of depth 4 (15 nodes): each node feeds two children. */
    graph g = {0};
    graph_add(&g, "n1");
    for (int i = 2; i <= 15; i++) {
        char name[16], parent[16];
        snprintf(name, sizeof name, "n%d", i);
        snprintf(parent, sizeof parent, "n%d", i / 2);
        node_dep(graph_add(&g, name), parent);
    }
    run_shape(*state, "tree", &g, 10, 2);
    graph_free(&g);
}

static void mixed_dag(void **state)
{
    /* Edges that skip levels, two roots, a step listed before a dependency
     * of it, and a sink that joins everything. */
    graph g = graph_parse("a; i<h,g; b<a; c<a; d<b,c; e<a,d; f<c; g<e,f; h; "
                          "sink<a,b,c,d,e,f,g,h,i");
    run_shape(*state, "mixed", &g, 10, 2);
    graph_free(&g);
}

static void wide_fan_out_in(void **state)
{
    graph g = {0};
    graph_add(&g, "root");
    node *sink_deps = NULL;
    for (int i = 0; i < 1000; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%03d", i);
        node_dep(graph_add(&g, name), "root");
    }
    sink_deps = graph_add(&g, "sink");
    for (int i = 0; i < 1000; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%03d", i);
        node_dep(sink_deps, name);
    }
    run_shape(*state, "wide", &g, 2, 2);
    graph_free(&g);
}

/* ---- order fulfillment -------------------------------------------------- */

typedef struct order_handler {
    const char *kind;
    th_recorder *rec;
} order_handler;

static json_t *dep_result(tasker_step *step, const char *dep)
{
    const char *json = NULL;
    size_t len = 0;
    if (tasker_step_dependency_result(&json, &len, step, dep) != TASKER_OK) {
        th_problem("%s: no result from %s", tasker_step_name(step), dep);
        return json_object();
    }
    json_t *j = json_loadb(json, len, 0, NULL);
    return j ? j : json_object();
}

static int order_step(tasker_step *step, void *ud)
{
    order_handler *h = ud;
    th_record(h->rec, step, 0);
    if (strcmp(tasker_step_namespace(step), "shop") != 0 ||
        strcmp(tasker_step_template_name(step), "order_fulfillment") != 0 ||
        strcmp(tasker_step_handler_name(step), h->kind) != 0 ||
        strcmp(tasker_step_name(step), h->kind) != 0)
        th_problem("%s: wrong namespace/template/handler on the step handle", h->kind);
    size_t clen = 0;
    const char *ctext = tasker_step_context(step, &clen);
    json_t *ctx = ctext ? json_loadb(ctext, clen, 0, NULL) : NULL;
    json_int_t order_id = json_integer_value(json_object_get(ctx, "order_id"));
    json_t *result = NULL;

    if (strcmp(h->kind, "validate") == 0) {
        json_int_t qty = 0;
        size_t i;
        json_t *it;
        json_array_foreach(json_object_get(ctx, "items"), i, it)
            qty += json_integer_value(json_object_get(it, "qty"));
        result = json_pack("{s:b, s:I}", "valid", qty > 0, "quantity", qty);
    } else if (strcmp(h->kind, "reserve_inventory") == 0) {
        json_t *v = dep_result(step, "validate");
        result = json_pack("{s:I}", "reserved", json_integer_value(json_object_get(v, "quantity")));
        json_decref(v);
    } else if (strcmp(h->kind, "authorize_payment") == 0) {
        json_t *v = dep_result(step, "validate");
        char auth[64];
        snprintf(auth, sizeof auth, "AUTH-%lld", (long long)order_id);
        result = json_pack("{s:s, s:I, s:b}", "auth", auth, "amount_cents",
                           json_integer_value(json_object_get(ctx, "amount_cents")), "valid",
                           json_is_true(json_object_get(v, "valid")));
        json_decref(v);
    } else if (strcmp(h->kind, "ship") == 0) {
        json_t *r = dep_result(step, "reserve_inventory");
        json_t *a = dep_result(step, "authorize_payment");
        char trk[96];
        snprintf(trk, sizeof trk, "TRK-%lld-%lld-%s", (long long)order_id,
                 (long long)json_integer_value(json_object_get(r, "reserved")),
                 json_string_value(json_object_get(a, "auth")) ? json_string_value(
                                                                      json_object_get(a, "auth"))
                                                                : "none");
        result = json_pack("{s:s}", "tracking", trk);
        json_decref(r);
        json_decref(a);
    } else { /* notify */
        json_t *s = dep_result(step, "ship");
        char to[64];
        snprintf(to, sizeof to, "customer-%lld", (long long)order_id);
        result = json_pack("{s:s, s:O}", "sent_to", to, "tracking",
                           json_object_get(s, "tracking") ? json_object_get(s, "tracking")
                                                          : json_null());
        json_decref(s);
    }
    char *text = json_dumps(result, JSON_COMPACT);
    th_record(h->rec, step, 1);
    int rc = tasker_step_succeed(step, text, strlen(text));
    if (rc != TASKER_OK)
        th_problem("%s: succeed = %d", h->kind, rc);
    free(text);
    json_decref(result);
    json_decref(ctx);
    return TASKER_OK;
}

static void order_fulfillment(void **state)
{
    fixture *f = *state;
    static const char *kinds[] = {"validate", "reserve_inventory", "authorize_payment", "ship",
                                  "notify"};
    order_handler hs[5];
    for (int i = 0; i < 5; i++) {
        hs[i].kind = kinds[i];
        hs[i].rec = &f->rec;
        th_handler(f->coord, kinds[i], order_step, &hs[i]);
    }
    th_register(f->coord,
                "{\"namespace\":\"shop\",\"name\":\"order_fulfillment\",\"steps\":["
                "{\"name\":\"validate\"},"
                "{\"name\":\"reserve_inventory\",\"depends_on\":[\"validate\"]},"
                "{\"name\":\"authorize_payment\",\"depends_on\":[\"validate\"]},"
                "{\"name\":\"ship\",\"depends_on\":[\"reserve_inventory\",\"authorize_payment\"]},"
                "{\"name\":\"notify\",\"depends_on\":[\"ship\"]}]}");
    th_ok(tasker_coordinator_start(f->coord, 2));
    char uuids[5][TASKER_UUID_BUFSIZE];
    for (int i = 0; i < 5; i++) {
        char *ctx = th_fmt("{\"order_id\": %d, \"items\": [{\"sku\": \"A1\", \"qty\": %d}, "
                           "{\"sku\": \"B2\", \"qty\": 1}], \"amount_cents\": %d}",
                           1000 + i, i + 1, 4599 + i);
        th_create(uuids[i], f->coord, "shop", "order_fulfillment", ctx);
        free(ctx);
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(th_wait_final(f->coord, uuids[i]), TASKER_TASK_COMPLETE);
        json_t *task = th_task(f->coord, uuids[i]);
        for (int k = 0; k < 5; k++)
            assert_string_equal(th_step_state(task, kinds[k]), "complete");
        char want[160];
        snprintf(want, sizeof want,
                 "{\"sent_to\": \"customer-%d\", \"tracking\": \"TRK-%d-%d-AUTH-%d\"}", 1000 + i,
                 1000 + i, i + 2, 1000 + i);
        json_t *w = json_loads(want, 0, NULL);
        json_t *got = json_object_get(th_step(task, "notify"), "result");
        if (!json_equal(w, got)) {
            char *g = json_dumps(got, JSON_COMPACT);
            fail_msg("order %d: notify result %s, expected %s", 1000 + i, g ? g : "null", want);
        }
        json_decref(w);
        json_t *auth = json_object_get(th_step(task, "authorize_payment"), "result");
        assert_int_equal(json_integer_value(json_object_get(auth, "amount_cents")), 4599 + i);
        json_decref(task);
        /* validate -> (reserve || authorize) -> ship -> notify */
        static const char *edges[][2] = {{"validate", "reserve_inventory"},
                                         {"validate", "authorize_payment"},
                                         {"reserve_inventory", "ship"},
                                         {"authorize_payment", "ship"},
                                         {"ship", "notify"}};
        for (int e = 0; e < 5; e++) {
            long done = th_recorder_find(&f->rec, uuids[i], edges[e][0], 1);
            long start = th_recorder_find(&f->rec, uuids[i], edges[e][1], 0);
            assert_true(done >= 0 && start >= 0);
            if (done > start)
                fail_msg("%s started before %s was done", edges[e][1], edges[e][0]);
        }
    }
    th_assert_no_problems();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(linear, setup, teardown),
        cmocka_unit_test_setup_teardown(diamond, setup, teardown),
        cmocka_unit_test_setup_teardown(tree, setup, teardown),
        cmocka_unit_test_setup_teardown(mixed_dag, setup, teardown),
        cmocka_unit_test_setup_teardown(wide_fan_out_in, setup, teardown),
        cmocka_unit_test_setup_teardown(order_fulfillment, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
