/*
 * Configuration errors: a file with several bad lines reports every one at
 * once (line, key, message with the allowed range) and applies nothing;
 * environment variables with the prefix that name no key are errors; valid
 * files and variables apply, and a coordinator opened from them behaves
 * accordingly; the documented keys and defaults exist.
 */
#define _GNU_SOURCE
#include "obs_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

typedef struct fixture {
    tasker_config *cfg;
    char path[256];
} fixture;

static int setup(void **state)
{
    fixture *x = calloc(1, sizeof *x);
    const char *dir = getenv("TMPDIR");
    snprintf(x->path, sizeof x->path, "%s/tasker-obscfg-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(x->path);
    assert_true(fd >= 0);
    close(fd);
    th_ok(tasker_config_new(&x->cfg));
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fixture *x = *state;
    tasker_config_free(x->cfg);
    unlink(x->path);
    free(x);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* The value of `key` in `cfg` (static buffer). */
static const char *get(const tasker_config *cfg, const char *key)
{
    static char buf[512];
    char *v = NULL;
    th_ok(tasker_config_get(&v, cfg, key));
    snprintf(buf, sizeof buf, "%s", v);
    tasker_free(v);
    return buf;
}

/* The entry of the last error's context "errors" whose `field` is `value`
 * (a line number when `value` is NULL and line > 0). */
static json_t *error_entry(json_t *errors, const char *field, const char *value, int line)
{
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        if (value == NULL && json_integer_value(json_object_get(e, "line")) == line)
            return e;
        if (value != NULL && json_is_string(json_object_get(e, field)) &&
            strcmp(json_string_value(json_object_get(e, field)), value) == 0)
            return e;
    }
    return NULL;
}

static const char *msg(json_t *e)
{
    const char *m = json_string_value(json_object_get(e, "message"));
    return m ? m : "";
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("\"%s\" does not mention \"%s\"", haystack, needle);
}

static void file_reports_every_bad_line(void **state)
{
    fixture *x = *state;
    write_file(x->path, "# a comment\n"                          /* 1 */
                        "breaker.window = 10\n"                  /* 2 valid */
                        "no.such.key = 1\n"                      /* 3 unknown key */
                        "breaker.failure_rate_percent = 150\n"   /* 4 out of range */
                        "this line has no equals sign\n"         /* 5 malformed */
                        "log.level = loud\n"                     /* 6 not an allowed value */
                        "breaker.open_ms = abc\n"                /* 7 not an integer */
                        "\n"                                     /* 8 */
                        "   # indented comment\n"                /* 9 */
                        "breaker.half_open_max = 0\n");          /* 10 out of range */
    int rc = tasker_config_load_file(x->cfg, x->path);
    assert_int_equal(rc, TASKER_ECONFIG);
    const tasker_error *err = tasker_error_last();
    assert_int_equal(err->code, TASKER_ECONFIG);
    assert_int_equal(err->category, TASKER_CATEGORY_CONFIG);
    assert_true(strlen(err->message) > 0);
    json_t *ctx = th_error_context();
    json_t *errors = json_object_get(ctx, "errors");
    assert_true(json_is_array(errors));
    if (json_array_size(errors) != 6)
        fail_msg("%zu errors reported, expected 6: %s", json_array_size(errors),
                 tasker_error_last()->context_json);

    json_t *e = error_entry(errors, NULL, NULL, 3);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")), "no.such.key");
    assert_true(strlen(msg(e)) > 0);

    e = error_entry(errors, NULL, NULL, 4);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")),
                        "breaker.failure_rate_percent");
    assert_contains(msg(e), "150");
    assert_contains(msg(e), "0..100");

    e = error_entry(errors, NULL, NULL, 5);
    assert_non_null(e);
    assert_true(strlen(msg(e)) > 0);

    e = error_entry(errors, NULL, NULL, 6);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")), "log.level");
    assert_contains(msg(e), "loud");
    assert_contains(msg(e), "warn");

    e = error_entry(errors, NULL, NULL, 7);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")), "breaker.open_ms");
    assert_contains(msg(e), "1..86400000");

    e = error_entry(errors, NULL, NULL, 10);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")), "breaker.half_open_max");
    assert_contains(msg(e), "1..1000");

    /* The good line 2 was not applied either. */
    assert_null(error_entry(errors, NULL, NULL, 2));
    json_decref(ctx);
    assert_string_equal(get(x->cfg, "breaker.window"), "20");
    assert_string_equal(get(x->cfg, "log.level"), "off");
    assert_string_equal(get(x->cfg, "breaker.half_open_max"), "1");
}

static void valid_file_applies(void **state)
{
    fixture *x = *state;
    write_file(x->path, "# tasker\n"
                        "store = memory\n"
                        "  breaker.window = 10   # trailing comment\n"
                        "log.level = \"error\"\n"
                        "breaker.failure_threshold=1\n"
                        "breaker.open_ms = 60000\n"
                        "\n");
    th_ok(tasker_config_load_file(x->cfg, x->path));
    assert_string_equal(get(x->cfg, "breaker.window"), "10");
    assert_string_equal(get(x->cfg, "log.level"), "error");
    assert_string_equal(get(x->cfg, "breaker.failure_threshold"), "1");
    assert_string_equal(get(x->cfg, "store"), "memory");
    th_ok(tasker_config_validate(x->cfg));

    /* The coordinator uses it: with failure_threshold 1 a single failure
     * opens the handler's circuit.  (log.level error writes to stderr,
     * only on that failure.) */
    th_ok(tasker_config_set(x->cfg, "log.level", "off"));
    tasker_coordinator *c = NULL;
    th_ok(tasker_coordinator_open(&c, x->cfg));
    th_handler(c, "perm", obs_scripted, NULL);
    th_register(c, "{\"namespace\":\"cf\",\"name\":\"p\",\"steps\":[{\"name\":\"p\","
                   "\"handler\":\"perm\",\"retry\":{\"max_attempts\":1}}]}");
    th_ok(tasker_coordinator_start(c, 1));
    char uuid[TASKER_UUID_BUFSIZE];
    th_create(uuid, c, "cf", "p", "{\"fail_until\": 1}");
    assert_int_equal(th_wait_final(c, uuid), TASKER_TASK_ERROR);
    tasker_circuit_state st;
    th_ok(tasker_circuit_get(&st, c, "handler:perm"));
    assert_int_equal(st, TASKER_CIRCUIT_OPEN);
    th_ok(tasker_coordinator_close(c));
    th_assert_no_problems();
}

static void missing_file_is_an_error(void **state)
{
    fixture *x = *state;
    assert_int_equal(tasker_config_load_file(x->cfg, "/nonexistent-tasker-obstests/t.conf"),
                     TASKER_ECONFIG);
    assert_int_equal(tasker_error_last()->category, TASKER_CATEGORY_CONFIG);
    assert_int_equal(tasker_config_load_file(x->cfg, NULL), TASKER_EINVAL);
    assert_int_equal(tasker_config_load_file(NULL, x->path), TASKER_EINVAL);
    assert_string_equal(get(x->cfg, "breaker.window"), "20");
}

/* Removes every variable starting with `prefix` from this process. */
static void clear_env_prefix(const char *prefix)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            if (strncmp(*e, prefix, strlen(prefix)) == 0) {
                const char *eq = strchr(*e, '=');
                size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
                snprintf(name, sizeof name, "%.*s", (int)n, *e);
                break;
            }
        }
        if (!name[0])
            return;
        unsetenv(name);
    }
}

static void environment_errors_and_apply(void **state)
{
    fixture *x = *state;
    clear_env_prefix("TASKER_");
    setenv("TASKER_BREAKER_WINDOW", "7", 1);
    setenv("TASKER_NO_SUCH_THING", "1", 1);
    setenv("TASKER_BREAKER_OPEN_MS", "0", 1);
    assert_int_equal(tasker_config_load_env(x->cfg, NULL), TASKER_ECONFIG);
    json_t *ctx = th_error_context();
    json_t *errors = json_object_get(ctx, "errors");
    if (json_array_size(errors) != 2)
        fail_msg("expected 2 errors: %s", tasker_error_last()->context_json);
    json_t *e = error_entry(errors, "variable", "TASKER_NO_SUCH_THING", 0);
    assert_non_null(e);
    assert_true(strlen(msg(e)) > 0);
    e = error_entry(errors, "variable", "TASKER_BREAKER_OPEN_MS", 0);
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "key")), "breaker.open_ms");
    assert_contains(msg(e), "1..86400000");
    json_decref(ctx);
    /* Nothing applied, not even the valid variable. */
    assert_string_equal(get(x->cfg, "breaker.window"), "20");

    unsetenv("TASKER_NO_SUCH_THING");
    unsetenv("TASKER_BREAKER_OPEN_MS");
    th_ok(tasker_config_load_env(x->cfg, NULL));
    assert_string_equal(get(x->cfg, "breaker.window"), "7");
    unsetenv("TASKER_BREAKER_WINDOW");

    /* Another prefix: only its variables count. */
    clear_env_prefix("OBSTEST_");
    setenv("OBSTEST_LOG_LEVEL", "debug", 1);
    setenv("OBSTEST_BOGUS", "x", 1);
    setenv("TASKER_NOT_READ_WITH_THIS_PREFIX", "1", 1);
    assert_int_equal(tasker_config_load_env(x->cfg, "OBSTEST_"), TASKER_ECONFIG);
    ctx = th_error_context();
    errors = json_object_get(ctx, "errors");
    assert_int_equal(json_array_size(errors), 1);
    assert_non_null(error_entry(errors, "variable", "OBSTEST_BOGUS", 0));
    json_decref(ctx);
    unsetenv("OBSTEST_BOGUS");
    th_ok(tasker_config_load_env(x->cfg, "OBSTEST_"));
    assert_string_equal(get(x->cfg, "log.level"), "debug");
    unsetenv("OBSTEST_LOG_LEVEL");
    unsetenv("TASKER_NOT_READ_WITH_THIS_PREFIX");
}

static void set_reports_key_and_range(void **state)
{
    fixture *x = *state;
    static const struct {
        const char *key, *value, *mention;
    } bad[] = {
        {"breaker.window", "0", "1..10000"},
        {"breaker.window", "12abc", "1..10000"},
        {"breaker.failure_rate_percent", "101", "0..100"},
        {"breaker.failure_threshold", "-1", "0..1000000"},
        {"breaker.open_ms", "86400001", "1..86400000"},
        {"breaker.success_threshold", "0", "1..1000"},
        {"log.level", "verbose", "debug"},
        {"breaker.nope", "1", "breaker.nope"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tasker_config_set(x->cfg, bad[i].key, bad[i].value), TASKER_ECONFIG);
        const tasker_error *e = tasker_error_last();
        assert_int_equal(e->category, TASKER_CATEGORY_CONFIG);
        assert_contains(e->message, bad[i].key);
        assert_contains(e->message, bad[i].mention);
        json_t *ctx = th_error_context();
        assert_string_equal(json_string_value(json_object_get(ctx, "key")), bad[i].key);
        json_decref(ctx);
    }
    /* Unchanged by the refused values. */
    assert_string_equal(get(x->cfg, "breaker.window"), "20");
    assert_string_equal(get(x->cfg, "log.level"), "off");
    assert_int_equal(tasker_config_set(x->cfg, NULL, "1"), TASKER_EINVAL);
    assert_int_equal(tasker_config_set(x->cfg, "breaker.window", NULL), TASKER_EINVAL);
}

static void documented_keys_and_defaults(void **state)
{
    fixture *x = *state;
    /* Every key tasker.h lists, with the defaults it documents. */
    static const struct {
        const char *key, *def;
    } keys[] = {
        {"store", "memory"},
        {"database.url", NULL},
        {"template.max_json_bytes", "16777216"},
        {"template.max_steps", "1000000"},
        {"task.max_context_bytes", "16777216"},
        {"memory.retain_finished", "0"},
        {"log.level", "off"},
        {"log.sink", "stderr"},
        {"breaker.failure_threshold", NULL},
        {"breaker.failure_rate_percent", NULL},
        {"breaker.window", "20"},
        {"breaker.open_ms", "30000"},
        {"breaker.half_open_max", "1"},
        {"breaker.success_threshold", "1"},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = get(x->cfg, keys[i].key);
        if (keys[i].def && strcmp(v, keys[i].def) != 0)
            fail_msg("default of %s is \"%s\", documented \"%s\"", keys[i].key, v, keys[i].def);
    }
    /* Off means 0 for the two tripping rules. */
    assert_string_equal(get(x->cfg, "breaker.failure_threshold"), "0");
    assert_string_equal(get(x->cfg, "breaker.failure_rate_percent"), "0");
    char *v = NULL;
    assert_int_equal(tasker_config_get(&v, x->cfg, "breaker.unknown"), TASKER_ECONFIG);
    assert_null(v);
}

static void whole_config_validation(void **state)
{
    fixture *x = *state;
    th_ok(tasker_config_set(x->cfg, "store", "postgres"));
    assert_int_equal(tasker_config_validate(x->cfg), TASKER_ECONFIG);
    json_t *ctx = th_error_context();
    json_t *errors = json_object_get(ctx, "errors");
    assert_non_null(error_entry(errors, "key", "database.url", 0));
    json_decref(ctx);
    tasker_coordinator *c = (tasker_coordinator *)x; /* must be reset */
    assert_int_equal(tasker_coordinator_open(&c, x->cfg), TASKER_ECONFIG);
    assert_null(c);
    assert_contains(tasker_error_last()->message, "database.url");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(file_reports_every_bad_line, setup, teardown),
        cmocka_unit_test_setup_teardown(valid_file_applies, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_file_is_an_error, setup, teardown),
        cmocka_unit_test_setup_teardown(environment_errors_and_apply, setup, teardown),
        cmocka_unit_test_setup_teardown(set_reports_key_and_range, setup, teardown),
        cmocka_unit_test_setup_teardown(documented_keys_and_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(whole_config_validation, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
