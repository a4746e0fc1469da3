/* Status codes, tasker_strerror, the per-thread structured error, versions. */
#define _GNU_SOURCE
#include "th.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
} codes[] = {
    {TASKER_EINVAL, "TASKER_EINVAL"},     {TASKER_ENOMEM, "TASKER_ENOMEM"},
    {TASKER_ENOTFOUND, "TASKER_ENOTFOUND"}, {TASKER_EEXIST, "TASKER_EEXIST"},
    {TASKER_ESTATE, "TASKER_ESTATE"},     {TASKER_ETEMPLATE, "TASKER_ETEMPLATE"},
    {TASKER_ETIMEOUT, "TASKER_ETIMEOUT"}, {TASKER_ECLOSED, "TASKER_ECLOSED"},
    {TASKER_ESTALE, "TASKER_ESTALE"},     {TASKER_EVERSION, "TASKER_EVERSION"},
    {TASKER_EHANDLER, "TASKER_EHANDLER"}, {TASKER_ECONFIG, "TASKER_ECONFIG"},
    {TASKER_EDATABASE, "TASKER_EDATABASE"}, {TASKER_EBUSY, "TASKER_EBUSY"},
    {TASKER_ENOTSUP, "TASKER_ENOTSUP"},   {TASKER_EINTERNAL, "TASKER_EINTERNAL"},
    {TASKER_EIO, "TASKER_EIO"},
};
#define N_CODES (sizeof codes / sizeof codes[0])

static void strerror_names_every_code(void **state)
{
    (void)state;
    const char *seen[N_CODES + 1];
    seen[0] = tasker_strerror(TASKER_OK);
    assert_non_null(seen[0]);
    assert_true(strlen(seen[0]) > 0);
    for (size_t i = 0; i < N_CODES; i++) {
        const char *s = tasker_strerror(codes[i].code);
        assert_non_null(s);
        /* The code's macro name, so a log line can be searched for. */
        if (strstr(s, codes[i].name) == NULL)
            fail_msg("tasker_strerror(%d) = \"%s\" does not name %s", codes[i].code, s,
                     codes[i].name);
        /* No two codes share a description. */
        for (size_t j = 0; j <= i; j++)
            assert_string_not_equal(s, seen[j]);
        seen[i + 1] = s;
    }
}

static void strerror_unknown_codes(void **state)
{
    (void)state;
    const int unknown[] = {1, 42, -18, -1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        assert_string_equal(tasker_strerror(unknown[i]), "unknown tasker status");
}

static void category_names(void **state)
{
    (void)state;
    static const struct {
        tasker_error_category c;
        const char *name;
    } cats[] = {{TASKER_CATEGORY_ARGUMENT, "argument"}, {TASKER_CATEGORY_CONFIG, "config"},
                {TASKER_CATEGORY_TEMPLATE, "template"}, {TASKER_CATEGORY_STATE, "state"},
                {TASKER_CATEGORY_DATABASE, "database"}, {TASKER_CATEGORY_QUEUE, "queue"},
                {TASKER_CATEGORY_HANDLER, "handler"},   {TASKER_CATEGORY_NETWORK, "network"},
                {TASKER_CATEGORY_INTERNAL, "internal"}};
    for (size_t i = 0; i < sizeof cats / sizeof cats[0]; i++) {
        const char *n = tasker_error_category_name(cats[i].c);
        assert_non_null(n);
        assert_string_equal(n, cats[i].name);
    }
    assert_non_null(tasker_error_category_name(TASKER_CATEGORY_NONE));
    /* Out of range must not crash (any static string or NULL is fine). */
    (void)tasker_error_category_name((tasker_error_category)99);
    (void)tasker_error_category_name((tasker_error_category)-1);
}

static void check_clean_error(const tasker_error *e)
{
    assert_non_null(e);
    assert_int_equal(e->version, TASKER_ERROR_VERSION);
    assert_int_equal(e->code, TASKER_OK);
    assert_int_equal(e->category, TASKER_CATEGORY_NONE);
    assert_non_null(e->message);
    assert_non_null(e->context_json);
    json_t *ctx = json_loads(e->context_json, 0, NULL);
    assert_non_null(ctx);
    assert_true(json_is_object(ctx));
    json_decref(ctx);
}

static void *fresh_thread_error(void *arg)
{
    (void)arg;
    const tasker_error *e = tasker_error_last();
    if (e == NULL || e->code != TASKER_OK || e->message == NULL || e->context_json == NULL)
        th_problem("a new thread's last error is not a clean TASKER_OK");
    return NULL;
}

static void last_error_starts_clean(void **state)
{
    (void)state;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fresh_thread_error, NULL), 0);
    pthread_join(t, NULL);
    th_assert_no_problems();
    tasker_error_clear();
    check_clean_error(tasker_error_last());
}

static void last_error_describes_failure(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    tasker_error_clear();
    assert_int_equal(tasker_template_register_json(c, "{\"namespace\": ", 0), TASKER_ETEMPLATE);
    const tasker_error *e = tasker_error_last();
    assert_int_equal(e->version, TASKER_ERROR_VERSION);
    assert_int_equal(e->code, TASKER_ETEMPLATE);
    assert_int_equal(e->category, TASKER_CATEGORY_TEMPLATE);
    assert_non_null(e->message);
    assert_true(strlen(e->message) > 0);
    th_assert_error(TASKER_ETEMPLATE, "malformed_json");

    /* A successful call leaves the last error alone... */
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    tasker_config_free(cfg);
    assert_int_equal(tasker_error_last()->code, TASKER_ETEMPLATE);
    /* ...and tasker_error_clear resets it. */
    tasker_error_clear();
    check_clean_error(tasker_error_last());

    /* An argument error is categorised as such. */
    assert_int_equal(tasker_template_register_json(c, NULL, 0), TASKER_EINVAL);
    assert_int_equal(tasker_error_last()->code, TASKER_EINVAL);
    assert_int_equal(tasker_error_last()->category, TASKER_CATEGORY_ARGUMENT);
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

struct thread_err {
    tasker_coordinator *coord;
    int code_seen_before;
    int code_after;
};

static void *fail_in_thread(void *arg)
{
    struct thread_err *te = arg;
    te->code_seen_before = tasker_error_last()->code;
    (void)tasker_template_register_json(te->coord, "[1,2", 0);
    te->code_after = tasker_error_last()->code;
    return NULL;
}

static void last_error_is_per_thread(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open(NULL);
    /* The main thread fails with EINVAL; the other thread must not see it. */
    assert_int_equal(tasker_task_get(NULL, c, "x"), TASKER_EINVAL);
    struct thread_err te = {c, 12345, 12345};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, &te), 0);
    pthread_join(t, NULL);
    assert_int_equal(te.code_seen_before, TASKER_OK);
    assert_int_equal(te.code_after, TASKER_ETEMPLATE);
    /* ...and the other thread's failure did not overwrite ours. */
    assert_int_equal(tasker_error_last()->code, TASKER_EINVAL);
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

/* True when `msg` holds `n` as a whole decimal number. */
static int names_number(const char *msg, long n)
{
    for (const char *p = msg; *p; p++) {
        if (!isdigit((unsigned char)*p) || (p > msg && isdigit((unsigned char)p[-1])))
            continue;
        if (strtol(p, NULL, 10) == n)
            return 1;
    }
    return 0;
}

static void abi_check(void **state)
{
    (void)state;
    assert_int_equal(tasker_abi_version(), TASKER_ABI_VERSION);
    tasker_error_clear();
    assert_int_equal(tasker_abi_check(TASKER_ABI_VERSION), TASKER_OK);

    const int others[] = {TASKER_ABI_VERSION - 1, TASKER_ABI_VERSION + 7};
    for (size_t i = 0; i < 2; i++) {
        tasker_error_clear();
        assert_int_equal(tasker_abi_check(others[i]), TASKER_EVERSION);
        const tasker_error *e = tasker_error_last();
        assert_int_equal(e->code, TASKER_EVERSION);
        if (!names_number(e->message, others[i]) || !names_number(e->message, TASKER_ABI_VERSION))
            fail_msg("ABI mismatch message does not name both %d and %d: \"%s\"", others[i],
                     TASKER_ABI_VERSION, e->message);
        if (strcasestr(e->message, "build") == NULL)
            fail_msg("ABI mismatch message does not say how to rebuild: \"%s\"", e->message);
    }
}

static void versions(void **state)
{
    (void)state;
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", TASKER_VERSION_MAJOR, TASKER_VERSION_MINOR,
             TASKER_VERSION_PATCH);
    assert_string_equal(TASKER_VERSION_STRING, expect);
    assert_non_null(tasker_version());
    assert_string_equal(tasker_version(), TASKER_VERSION_STRING);
}

static void state_names(void **state)
{
    (void)state;
    static const char *tasks[] = {"pending", "running", "complete", "error", "cancelled",
                                  "resolved_manually"};
    static const char *steps[] = {"pending",  "enqueued", "in_progress",       "waiting_for_retry",
                                  "complete", "error",    "cancelled",         "resolved_manually",
                                  "skipped"};
    for (int i = 0; i < 6; i++)
        assert_string_equal(tasker_task_state_name((tasker_task_state)i), tasks[i]);
    for (int i = 0; i < 9; i++)
        assert_string_equal(tasker_step_state_name((tasker_step_state)i), steps[i]);
    assert_null(tasker_task_state_name((tasker_task_state)6));
    assert_null(tasker_task_state_name((tasker_task_state)-1));
    assert_null(tasker_step_state_name((tasker_step_state)9));
    assert_null(tasker_step_state_name((tasker_step_state)-1));

    assert_false(tasker_task_state_is_final(TASKER_TASK_PENDING));
    assert_false(tasker_task_state_is_final(TASKER_TASK_RUNNING));
    assert_true(tasker_task_state_is_final(TASKER_TASK_COMPLETE));
    assert_true(tasker_task_state_is_final(TASKER_TASK_ERROR));
    assert_true(tasker_task_state_is_final(TASKER_TASK_CANCELLED));
    assert_true(tasker_task_state_is_final(TASKER_TASK_RESOLVED_MANUALLY));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(strerror_names_every_code),
        cmocka_unit_test(strerror_unknown_codes),
        cmocka_unit_test(category_names),
        cmocka_unit_test(last_error_starts_clean),
        cmocka_unit_test(last_error_describes_failure),
        cmocka_unit_test(last_error_is_per_thread),
        cmocka_unit_test(abi_check),
        cmocka_unit_test(versions),
        cmocka_unit_test(state_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
