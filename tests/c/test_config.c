/* tasker_config_*: defaults, set/get, files, environment, validation, and the
 * limits a coordinator takes from its config. */
#define _GNU_SOURCE
#include "th.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

static void expect_cfg(tasker_config *cfg, const char *key, const char *want)
{
    char *v = NULL;
    int rc = tasker_config_get(&v, cfg, key);
    if (rc != TASKER_OK)
        fail_msg("tasker_config_get(%s) = %d", key, rc);
    assert_non_null(v);
    if (strcmp(v, want) != 0)
        fail_msg("config %s = \"%s\", expected \"%s\"", key, v, want);
    tasker_free(v);
}

/* The last error (message or context) mentions `what`. */
static void error_mentions(const char *what)
{
    const tasker_error *e = tasker_error_last();
    if (strstr(e->message, what) == NULL && strstr(e->context_json, what) == NULL)
        fail_msg("last error does not mention \"%s\": message \"%s\", context %s", what,
                 e->message, e->context_json);
}

static void defaults(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    assert_non_null(cfg);
    expect_cfg(cfg, "store", "memory");
    expect_cfg(cfg, "template.max_json_bytes", "16777216");
    expect_cfg(cfg, "template.max_steps", "1000000");
    expect_cfg(cfg, "task.max_context_bytes", "16777216");
    expect_cfg(cfg, "memory.retain_finished", "0");
    char *v = NULL;
    assert_int_equal(tasker_config_get(&v, cfg, "database.url"), TASKER_OK);
    assert_non_null(v);
    tasker_free(v);
    assert_int_equal(tasker_config_validate(cfg), TASKER_OK);
    tasker_config_free(cfg);
    tasker_config_free(NULL);
}

static void set_and_get(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    th_ok(tasker_config_set(cfg, "template.max_steps", "50"));
    expect_cfg(cfg, "template.max_steps", "50");
    th_ok(tasker_config_set(cfg, "template.max_json_bytes", "4096"));
    expect_cfg(cfg, "template.max_json_bytes", "4096");
    th_ok(tasker_config_set(cfg, "task.max_context_bytes", "100"));
    expect_cfg(cfg, "task.max_context_bytes", "100");
    th_ok(tasker_config_set(cfg, "memory.retain_finished", "7"));
    expect_cfg(cfg, "memory.retain_finished", "7");
    th_ok(tasker_config_set(cfg, "database.url", "host=/tmp dbname=tasker"));
    expect_cfg(cfg, "database.url", "host=/tmp dbname=tasker");
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    expect_cfg(cfg, "store", "postgres");
    th_ok(tasker_config_set(cfg, "store", "memory"));
    expect_cfg(cfg, "store", "memory");
    tasker_config_free(cfg);
}

static void bad_keys_and_values(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    th_ok(tasker_config_set(cfg, "template.max_steps", "50"));

    tasker_error_clear();
    assert_int_equal(tasker_config_set(cfg, "template.max_stepz", "5"), TASKER_ECONFIG);
    assert_int_equal(tasker_error_last()->code, TASKER_ECONFIG);
    assert_int_equal(tasker_error_last()->category, TASKER_CATEGORY_CONFIG);
    error_mentions("template.max_stepz");
    char *v = NULL;
    assert_int_equal(tasker_config_get(&v, cfg, "no.such.key"), TASKER_ECONFIG);
    assert_null(v);

    const char *bad_numbers[] = {"abc", "-5", "12abc", "", " ", "1e3", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad_numbers / sizeof bad_numbers[0]; i++) {
        int rc = tasker_config_set(cfg, "template.max_steps", bad_numbers[i]);
        if (rc != TASKER_ECONFIG)
            fail_msg("template.max_steps = \"%s\" gave %d, expected TASKER_ECONFIG",
                     bad_numbers[i], rc);
        error_mentions("template.max_steps");
        /* A refused value leaves the config as it was. */
        expect_cfg(cfg, "template.max_steps", "50");
    }
    assert_int_equal(tasker_config_set(cfg, "memory.retain_finished", "-1"), TASKER_ECONFIG);
    expect_cfg(cfg, "memory.retain_finished", "0");
    assert_int_equal(tasker_config_set(cfg, "store", "mysql"), TASKER_ECONFIG);
    error_mentions("store");
    expect_cfg(cfg, "store", "memory");
    tasker_config_free(cfg);
}

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/tasker-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void load_file(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    char *path = write_temp("# tasker settings\n"
                            "\n"
                            "template.max_steps = 77\n"
                            "   # indented comment\n"
                            "memory.retain_finished=5\n"
                            "  database.url   =   host=/tmp dbname=x  \n");
    th_ok(tasker_config_load_file(cfg, path));
    expect_cfg(cfg, "template.max_steps", "77");
    expect_cfg(cfg, "memory.retain_finished", "5");
    expect_cfg(cfg, "database.url", "host=/tmp dbname=x");
    unlink(path);
    free(path);
    tasker_config_free(cfg);
}

static void load_file_reports_every_bad_line(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    char *path = write_temp("template.max_steps = 11\n"   /* 1: fine */
                            "# comment\n"                  /* 2 */
                            "no.such.key = 1\n"            /* 3: unknown key */
                            "memory.retain_finished = 2\n" /* 4: fine */
                            "template.max_json_bytes = lots\n" /* 5: bad value */
                            "just some words\n");          /* 6: no '=' */
    assert_int_equal(tasker_config_load_file(cfg, path), TASKER_ECONFIG);
    json_t *ctx = th_error_context();
    json_t *errors = json_object_get(ctx, "errors");
    if (!json_is_array(errors))
        fail_msg("no \"errors\" array in context %s", tasker_error_last()->context_json);
    int seen[7] = {0};
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        json_int_t line = json_integer_value(json_object_get(e, "line"));
        assert_true(json_is_string(json_object_get(e, "message")));
        if (line >= 1 && line <= 6)
            seen[line]++;
    }
    assert_int_equal(json_array_size(errors), 3);
    assert_int_equal(seen[3], 1);
    assert_int_equal(seen[5], 1);
    assert_int_equal(seen[6], 1);
    json_decref(ctx);
    /* Nothing from a bad file is applied, not even its good lines. */
    expect_cfg(cfg, "template.max_steps", "1000000");
    expect_cfg(cfg, "memory.retain_finished", "0");
    unlink(path);

    /* A file that does not exist is an error, not a crash or a silent no-op. */
    int rc = tasker_config_load_file(cfg, path);
    assert_true(rc == TASKER_ECONFIG || rc == TASKER_EIO);
    free(path);
    tasker_config_free(cfg);
}

static void unset_prefixed(const char *prefix)
{
    /* Collect first: unsetenv while walking environ would skip entries. */
    char *names[256];
    size_t n = 0;
    for (char **e = environ; *e && n < 256; e++) {
        if (strncmp(*e, prefix, strlen(prefix)) == 0) {
            const char *eq = strchr(*e, '=');
            names[n++] = strndup(*e, eq ? (size_t)(eq - *e) : strlen(*e));
        }
    }
    for (size_t i = 0; i < n; i++) {
        unsetenv(names[i]);
        free(names[i]);
    }
}

static void load_env(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    unset_prefixed("TTEST_");
    setenv("TTEST_TEMPLATE_MAX_STEPS", "33", 1);
    setenv("TTEST_MEMORY_RETAIN_FINISHED", "4", 1);
    th_ok(tasker_config_load_env(cfg, "TTEST_"));
    expect_cfg(cfg, "template.max_steps", "33");
    expect_cfg(cfg, "memory.retain_finished", "4");

    /* One unknown variable spoils the lot: reported, nothing applied. */
    setenv("TTEST_TEMPLATE_MAX_STEPS", "44", 1);
    setenv("TTEST_BOGUS_SETTING", "1", 1);
    assert_int_equal(tasker_config_load_env(cfg, "TTEST_"), TASKER_ECONFIG);
    error_mentions("TTEST_BOGUS_SETTING");
    expect_cfg(cfg, "template.max_steps", "33");
    unset_prefixed("TTEST_");

    /* NULL prefix means TASKER_. */
    unset_prefixed("TASKER_");
    setenv("TASKER_TASK_MAX_CONTEXT_BYTES", "1234", 1);
    th_ok(tasker_config_load_env(cfg, NULL));
    expect_cfg(cfg, "task.max_context_bytes", "1234");
    unset_prefixed("TASKER_");
    tasker_config_free(cfg);
}

static void validate_whole_config(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    assert_int_equal(tasker_config_validate(cfg), TASKER_ECONFIG);
    error_mentions("database.url");
    th_ok(tasker_config_set(cfg, "database.url", "host=/tmp dbname=tasker"));
    assert_int_equal(tasker_config_validate(cfg), TASKER_OK);
    tasker_config_free(cfg);
}

static const char *four_steps =
    "{\"namespace\":\"cfg\",\"name\":\"four\",\"steps\":[{\"name\":\"a\"},{\"name\":\"b\"},"
    "{\"name\":\"c\"},{\"name\":\"d\"}]}";

static void coordinator_copies_config(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    tasker_coordinator *c = NULL;
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    th_ok(tasker_config_set(cfg, "template.max_steps", "3"));
    th_ok(tasker_coordinator_open(&c, cfg));
    /* Changing or freeing the config afterwards does not reach the coordinator. */
    th_ok(tasker_config_set(cfg, "template.max_steps", "100"));
    tasker_config_free(cfg);
    assert_int_equal(tasker_template_register_json(c, four_steps, 0), TASKER_ETEMPLATE);
    th_assert_error(TASKER_ETEMPLATE, "too_many_steps");
    th_ok(tasker_template_register_json(
        c, "{\"namespace\":\"cfg\",\"name\":\"three\",\"steps\":[{\"name\":\"a\"},"
           "{\"name\":\"b\"},{\"name\":\"c\"}]}",
        0));
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

static void context_size_limit(void **state)
{
    (void)state;
    tasker_coordinator *c = th_open("task.max_context_bytes", "64", NULL);
    th_register(c, "{\"namespace\":\"cfg\",\"name\":\"one\",\"steps\":[{\"name\":\"a\"}]}");
    th_handler(c, "a", th_handler_noop, NULL);
    char big[200];
    memset(big, 'x', sizeof big);
    memcpy(big, "{\"pad\":\"", 8);
    memcpy(big + sizeof big - 3, "\"}", 3);
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = "cfg";
    req.name = "one";
    req.context_json = big;
    char uuid[TASKER_UUID_BUFSIZE];
    assert_int_equal(tasker_task_create(uuid, c, &req), TASKER_EINVAL);
    req.context_json = "{\"small\": 1}";
    th_ok(tasker_task_create(uuid, c, &req));
    assert_int_equal(tasker_coordinator_close(c), TASKER_OK);
}

static void open_rejects_invalid_config(void **state)
{
    (void)state;
    tasker_config *cfg = NULL;
    tasker_coordinator *c = (tasker_coordinator *)&cfg; /* must be left alone or NULLed */
    assert_int_equal(tasker_config_new(&cfg), TASKER_OK);
    th_ok(tasker_config_set(cfg, "store", "postgres"));
    /* postgres without database.url cannot open. */
    int rc = tasker_coordinator_open(&c, cfg);
    assert_int_equal(rc, TASKER_ECONFIG);
    assert_true(c == NULL || c == (tasker_coordinator *)&cfg);
    tasker_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),
        cmocka_unit_test(set_and_get),
        cmocka_unit_test(bad_keys_and_values),
        cmocka_unit_test(load_file),
        cmocka_unit_test(load_file_reports_every_bad_line),
        cmocka_unit_test(load_env),
        cmocka_unit_test(validate_whole_config),
        cmocka_unit_test(coordinator_copies_config),
        cmocka_unit_test(context_size_limit),
        cmocka_unit_test(open_rejects_invalid_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
