/*
 * Step results as dependents see them: JSON results (including big and
 * non-ASCII ones and "no result"), in-process pointer results and their
 * destructors, and which accessor refuses which kind.
 */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *chain =
    "{\"namespace\":\"res\",\"name\":\"chain\",\"steps\":[{\"name\":\"a\"},{\"name\":\"b\"},"
    "{\"name\":\"c\",\"depends_on\":[\"a\",\"b\"]}]}";

static int setup(void **state)
{
    tasker_coordinator *c = th_open(NULL);
    th_register(c, chain);
    th_handler(c, "a", NULL, NULL);
    th_handler(c, "b", NULL, NULL);
    th_handler(c, "c", NULL, NULL);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    tasker_coordinator_close(*state);
    return 0;
}

/* Claims the roots a and b in whatever order they come. */
static void claim_ab(tasker_coordinator *c, tasker_step **a, tasker_step **b)
{
    tasker_step *x = th_claim_one(c), *y = th_claim_one(c);
    *a = strcmp(tasker_step_name(x), "a") == 0 ? x : y;
    *b = *a == x ? y : x;
}

typedef struct blob {
    int *freed;
    char payload[32];
} blob;

static void blob_free(void *p)
{
    blob *b = p;
    (*b->freed)++;
    free(b);
}

static void pointer_results(void **state)
{
    tasker_coordinator *c = *state;
    int freed = 0;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "res", "chain", NULL);
    tasker_step *a, *b;
    claim_ab(c, &a, &b);
    blob *data = malloc(sizeof *data);
    data->freed = &freed;
    snprintf(data->payload, sizeof data->payload, "dataframe");
    th_ok(tasker_step_succeed_pointer(a, data, blob_free));
    th_ok(tasker_step_succeed(b, "{\"rows\": 3}", 0));

    tasker_step *cs = th_claim_one(c);
    void *p = NULL;
    th_ok(tasker_step_dependency_pointer(&p, cs, "a"));
    /* The very same object, not a copy. */
    assert_ptr_equal(p, data);
    assert_string_equal(((blob *)p)->payload, "dataframe");
    const char *json = NULL;
    size_t len = 0;
    assert_int_equal(tasker_step_dependency_result(&json, &len, cs, "a"), TASKER_ENOTSUP);
    assert_int_equal(tasker_step_dependency_pointer(&p, cs, "b"), TASKER_ENOTSUP);
    assert_int_equal(tasker_step_dependency_pointer(&p, cs, "nope"), TASKER_ENOTFOUND);
    th_ok(tasker_step_dependency_result(&json, &len, cs, "b"));
    assert_int_equal(len, strlen(json));
    th_ok(tasker_step_succeed(cs, NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    assert_string_equal(json_string_value(json_object_get(th_step(task, "a"), "result_kind")),
                        "pointer");
    assert_string_equal(json_string_value(json_object_get(th_step(task, "b"), "result_kind")),
                        "json");
    json_decref(task);
    /* Freed exactly once, when the task goes. */
    assert_int_equal(freed, 0);
    th_ok(tasker_task_forget(c, uuid));
    assert_int_equal(freed, 1);
}

static void pointer_destructor_runs_when_refused(void **state)
{
    tasker_coordinator *c = *state;
    int freed = 0;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "res", "chain", NULL);
    tasker_step *a, *b;
    claim_ab(c, &a, &b);
    th_ok(tasker_step_succeed(a, NULL, 0));
    blob *data = malloc(sizeof *data);
    data->freed = &freed;
    /* Second completion: refused, and the pointer is not leaked. */
    assert_int_equal(tasker_step_succeed_pointer(a, data, blob_free), TASKER_ESTATE);
    assert_int_equal(freed, 1);
    th_ok(tasker_step_succeed(b, NULL, 0));
    th_ok(tasker_step_succeed(th_claim_one(c), NULL, 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
    assert_int_equal(freed, 1);
}

static void json_results_pass_intact(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "res", "chain", NULL);
    tasker_step *a, *b;
    claim_ab(c, &a, &b);

    /* ~1 MB of JSON with escapes and non-ASCII text. */
    json_t *big = json_object();
    json_t *arr = json_array();
    for (int i = 0; i < 20000; i++)
        json_array_append_new(arr, json_pack("{s:i, s:s}", "i", i, "t", "caf\xc3\xa9 \"q\" \\ \xe2\x98\x95"));
    json_object_set_new(big, "items", arr);
    char *text = json_dumps(big, JSON_COMPACT);
    assert_true(strlen(text) > 500000);
    th_ok(tasker_step_succeed(a, text, strlen(text)));
    /* No result at all reads as the text "null". */
    th_ok(tasker_step_succeed(b, NULL, 0));

    tasker_step *cs = th_claim_one(c);
    const char *got = NULL;
    size_t len = 0;
    th_ok(tasker_step_dependency_result(&got, &len, cs, "a"));
    json_t *back = json_loadb(got, len, 0, NULL);
    assert_non_null(back);
    assert_true(json_equal(back, big));
    json_decref(back);
    th_ok(tasker_step_dependency_result(&got, &len, cs, "b"));
    assert_int_equal(len, 4);
    assert_memory_equal(got, "null", 4);
    assert_int_equal(tasker_step_dependency_count(cs), 2);
    th_ok(tasker_step_succeed(cs, "\"\\u00e9t\\u00e9\"", 0));
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);

    json_t *task = th_task(c, uuid);
    assert_true(json_equal(json_object_get(th_step(task, "a"), "result"), big));
    assert_string_equal(json_string_value(json_object_get(th_step(task, "c"), "result")),
                        "\xc3\xa9t\xc3\xa9");
    json_decref(task);
    json_decref(big);
    free(text);
}

static void context_reaches_every_step(void **state)
{
    tasker_coordinator *c = *state;
    char uuid[TASKER_UUID_BUFSIZE];
    const char *ctx = "{\"user\": \"\\u00fcber\", \"n\": [1, 2.5, null, true]}";
    th_create(uuid, c, "res", "chain", ctx);
    json_t *want = json_loads(ctx, 0, NULL);
    for (int i = 0; i < 3; i++) {
        tasker_step *s = th_claim_one(c);
        size_t len = 0;
        const char *got = tasker_step_context(s, &len);
        assert_non_null(got);
        assert_int_equal(len, strlen(got));
        json_t *j = json_loadb(got, len, 0, NULL);
        assert_true(json_equal(j, want));
        json_decref(j);
        th_ok(tasker_step_succeed(s, NULL, 0));
    }
    json_decref(want);
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_COMPLETE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(pointer_results, setup, teardown),
        cmocka_unit_test_setup_teardown(pointer_destructor_runs_when_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(json_results_pass_intact, setup, teardown),
        cmocka_unit_test_setup_teardown(context_reaches_every_step, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
